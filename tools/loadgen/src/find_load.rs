//! What the C-FIND loads (`mwl`, `qr`) share: the workers that draw and send the queries
//! ([`drive`]), the latency histogram, per-kind counters, the query-choice generator, and
//! (from `run`, which the `find` load uses too) one C-FIND exchange. Each load says only what
//! its queries are ([`Queries`]).

use hdrhistogram::Histogram;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dicom_loadgen::dataset::{EXPLICIT_LE, IMPLICIT_LE};
use dicom_loadgen::scu::{AssocParams, Association, ScuError};

/// Microseconds, 1 µs to 1 h, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// The association a C-FIND load opens per worker: one context for `sop_class`, explicit or
/// implicit VR little endian.
pub fn find_params(
    addr: SocketAddr,
    calling: &str,
    called: &str,
    max_pdu: u32,
    timeout: Duration,
    sop_class: &str,
) -> AssocParams {
    AssocParams {
        addr,
        calling: calling.to_owned(),
        called: called.to_owned(),
        max_pdu,
        timeout,
        connect_timeout: None,
        contexts: vec![(
            sop_class.to_owned(),
            vec![EXPLICIT_LE.to_owned(), IMPLICIT_LE.to_owned()],
        )],
        implementation_class_uid: dicom_loadgen::dataset::IMPLEMENTATION_CLASS_UID.to_owned(),
        implementation_version_name: dicom_loadgen::dataset::IMPLEMENTATION_VERSION_NAME.to_owned(),
    }
}

/// Cumulative weights of the kinds with a positive weight, for a draw in `[0, total)`.
pub fn cumulative<K: Copy>(mix: impl IntoIterator<Item = (K, f64)>) -> Vec<(K, f64)> {
    let mut acc = 0.0;
    mix.into_iter()
        .filter(|(_, w)| *w > 0.0)
        .map(|(k, w)| {
            acc += w;
            (k, acc)
        })
        .collect()
}

/// Per-kind counters of one worker (merged at the end).
#[derive(Debug, Clone)]
pub struct KindStats {
    /// Latency of the queries that got a final response, µs.
    pub latency: Histogram<u64>,
    /// Queries sent.
    pub queries: u64,
    /// Answered 0000 (with the expected count, when checked).
    pub ok: u64,
    /// Pending responses received.
    pub matches: u64,
    /// Queries whose match count differed from the expected one.
    pub mismatches: u64,
    /// Time spent in this kind's queries, µs (its responses per second of query time).
    pub busy_us: u64,
}

impl KindStats {
    /// Zero counters.
    pub fn new() -> Self {
        KindStats {
            latency: histogram(),
            queries: 0,
            ok: 0,
            matches: 0,
            mismatches: 0,
            busy_us: 0,
        }
    }

    /// Adds `o`'s counts.
    pub fn merge(&mut self, o: &KindStats) {
        let _ = self.latency.add(&o.latency);
        self.queries += o.queries;
        self.ok += o.ok;
        self.matches += o.matches;
        self.mismatches += o.mismatches;
        self.busy_us += o.busy_us;
    }
}

/// xorshift64*: cheap, deterministic query choice.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub use dicom_loadgen::run::c_find;

/// A C-FIND load's queries: how a drawn kind becomes a query, how it is sent, and what it
/// should find.
pub trait Queries: Sync {
    /// The kinds of the mix.
    type Kind: Copy + Ord + Send + Sync;
    /// One drawn query.
    type Query;
    /// Draws a query of `kind`.
    fn draw(&self, kind: Self::Kind, rng: &mut Rng) -> Self::Query;
    /// Sends `q` on `a` as message `id`: (final status, pending responses).
    fn send(&self, a: &mut Association, id: u16, q: &Self::Query) -> Result<(u16, u64), ScuError>;
    /// How many matches `q` should have, where the corpus says.
    fn expected(&self, q: &Self::Query) -> Option<u64>;
    /// The kind's name, in the error counts.
    fn name(&self, kind: Self::Kind) -> &'static str;
}

/// How a C-FIND load runs: the options both loads have.
#[derive(Debug, Clone)]
pub struct Drive {
    /// The association each worker opens (again after an error aborted it).
    pub params: AssocParams,
    /// Workers, one association each.
    pub concurrency: usize,
    /// Stop after this long, from the common start.
    pub duration: Option<Duration>,
    /// Stop after this many queries, all workers together.
    pub count: Option<u64>,
    /// Open loop: queries per second, all workers together; latency from each query's
    /// intended send time (coordinated omission corrected). None: closed loop.
    pub rate: Option<f64>,
    /// Seed of the query choice (worker `w` uses `seed + w`).
    pub seed: u64,
    /// Count a query whose match count differs from the expected one as a mismatch.
    pub expect: bool,
    /// Worker threads are named `<thread_name>-<w>`.
    pub thread_name: &'static str,
}

/// What the workers of a load counted, merged.
#[derive(Debug)]
pub struct Outcome<K> {
    /// Per kind.
    pub kinds: BTreeMap<K, KindStats>,
    /// Failures by kind: a status (`0xA700`), `mismatch-<kind>`, an error kind.
    pub errors: BTreeMap<String, u64>,
    /// Associations opened.
    pub associations: u64,
    /// From the common start to the last final response.
    pub elapsed: Duration,
    /// Why the load stopped early (an association refused, a worker panicked).
    pub fatal: Option<String>,
}

impl<K> Outcome<K> {
    /// Every kind's counters together.
    pub fn all(&self) -> KindStats {
        let mut all = KindStats::new();
        for s in self.kinds.values() {
            all.merge(s);
        }
        all
    }
}

struct Shared<'a, Q: Queries> {
    drive: &'a Drive,
    queries: &'a Q,
    cumulative: &'a [(Q::Kind, f64)],
    issued: AtomicU64,
    stop: AtomicBool,
    fatal: Mutex<Option<String>>,
    barrier: Barrier,
    start: OnceLock<Instant>,
}

impl<Q: Queries> Shared<'_, Q> {
    fn fail(&self, why: String) {
        self.stop.store(true, Ordering::SeqCst);
        let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(why);
    }
}

struct WorkerOut<K> {
    kinds: BTreeMap<K, KindStats>,
    errors: BTreeMap<String, u64>,
    associations: u64,
    last_done: Option<Instant>,
}

/// Runs the load: `concurrency` workers start together, each draws a kind by the
/// `cumulative` weights ([`cumulative`]) and a query of it, sends it and counts the answer,
/// until the duration, the count or a fatal error. Blocks until every worker is done.
pub fn drive<Q: Queries>(
    d: &Drive,
    queries: &Q,
    cumulative: &[(Q::Kind, f64)],
) -> Outcome<Q::Kind> {
    let c = d.concurrency.max(1);
    let shared = Shared {
        drive: d,
        queries,
        cumulative,
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        fatal: Mutex::new(None),
        barrier: Barrier::new(c + 1),
        start: OnceLock::new(),
    };
    let (start, joined) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..c)
            .map(|w| {
                let s = &shared;
                std::thread::Builder::new()
                    .name(format!("{}-{w}", d.thread_name))
                    .spawn_scoped(scope, move || worker(s, w as u64))
                    .expect("spawn worker thread")
            })
            .collect();
        shared.barrier.wait();
        let start = Instant::now();
        let _ = shared.start.set(start);
        let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (start, joined)
    });
    let mut out = Outcome {
        kinds: BTreeMap::new(),
        errors: BTreeMap::new(),
        associations: 0,
        elapsed: Duration::ZERO,
        fatal: None,
    };
    let mut last = None::<Instant>;
    for j in joined {
        match j {
            Ok(w) => {
                for (k, s) in &w.kinds {
                    out.kinds.entry(*k).or_insert_with(KindStats::new).merge(s);
                }
                for (k, v) in w.errors {
                    *out.errors.entry(k).or_default() += v;
                }
                out.associations += w.associations;
                last = last.max(w.last_done);
            }
            Err(_) => shared.fail("a worker thread panicked".into()),
        }
    }
    out.elapsed = last
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(start);
    out.fatal = shared
        .fatal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    out
}

fn open<Q: Queries>(s: &Shared<'_, Q>, out: &mut WorkerOut<Q::Kind>) -> Option<Association> {
    match Association::open(&s.drive.params) {
        Ok(a) => {
            out.associations += 1;
            Some(a)
        }
        Err(e) => {
            s.fail(e.to_string());
            None
        }
    }
}

fn worker<Q: Queries>(s: &Shared<'_, Q>, w: u64) -> WorkerOut<Q::Kind> {
    let d = s.drive;
    let mut out = WorkerOut {
        kinds: BTreeMap::new(),
        errors: BTreeMap::new(),
        associations: 0,
        last_done: None,
    };
    let mut assoc = open(s, &mut out);
    s.barrier.wait();
    let start = *s.start.wait();
    let deadline = d.duration.map(|dur| start + dur);
    let total = s.cumulative.last().map_or(0.0, |x| x.1);
    let mut rng = Rng((d.seed.wrapping_add(w))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .max(1));
    let mut msg_id = 0u16;
    while !s.stop.load(Ordering::Relaxed) {
        if deadline.is_some_and(|dl| Instant::now() >= dl) {
            break;
        }
        // Every query takes a number: it bounds -n and, in open loop, schedules the query.
        let i = s.issued.fetch_add(1, Ordering::Relaxed);
        if d.count.is_some_and(|n| i >= n) {
            break;
        }
        let intended = d
            .rate
            .map(|r| start + Duration::from_secs_f64(i as f64 / r));
        if let Some(t) = intended {
            if deadline.is_some_and(|dl| t >= dl) {
                break;
            }
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            }
        }
        let x = rng.unit() * total;
        let Some(kind) = s
            .cumulative
            .iter()
            .find(|(_, c)| x < *c)
            .or(s.cumulative.last())
            .map(|(k, _)| *k)
        else {
            break;
        };
        let q = s.queries.draw(kind, &mut rng);
        if assoc.is_none() {
            assoc = open(s, &mut out);
        }
        let Some(a) = assoc.as_mut() else { break };
        msg_id = msg_id.wrapping_add(1).max(1);
        let ks = out.kinds.entry(kind).or_insert_with(KindStats::new);
        ks.queries += 1;
        let sent = Instant::now();
        let r = s.queries.send(a, msg_id, &q);
        let t1 = Instant::now();
        out.last_done = Some(t1);
        ks.busy_us += (t1 - sent).as_micros() as u64;
        match r {
            Ok((status, pending)) => {
                ks.matches += pending;
                let t0 = intended.unwrap_or(sent);
                ks.latency
                    .saturating_record((t1 - t0).as_micros().clamp(1, 3_600_000_000) as u64);
                let want = s.queries.expected(&q);
                if status != 0x0000 {
                    *out.errors.entry(format!("0x{status:04X}")).or_default() += 1;
                } else if d.expect && want.is_some_and(|n| n != pending) {
                    ks.mismatches += 1;
                    *out.errors
                        .entry(format!("mismatch-{}", s.queries.name(kind)))
                        .or_default() += 1;
                } else {
                    ks.ok += 1;
                }
            }
            Err(e) => {
                *out.errors.entry(e.kind().to_owned()).or_default() += 1;
                if let Some(a) = assoc.take() {
                    a.abort();
                }
            }
        }
    }
    if let Some(a) = assoc.take() {
        if let Err(e) = a.release() {
            *out.errors
                .entry(format!("release-{}", e.kind()))
                .or_default() += 1;
        }
    }
    out
}
