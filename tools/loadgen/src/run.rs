//! The load loop: `concurrency` workers, each one OS thread driving one association at a time
//! over a blocking socket.
//!
//! Why threads and blocking I/O rather than an async runtime: DIMSE without asynchronous
//! operations allows one outstanding request per association, so a worker is a strict
//! send → wait → receive loop. One thread per association costs one `write` and one or two
//! `read`s per object and no reactor wake-ups; at the concurrency a DICOM gateway sees (tens
//! of associations) the thread count is harmless, the code stays linear, and timings are
//! taken right around the syscalls.
//!
//! Work is claimed from a shared counter: in closed loop a worker takes the next block of
//! `--per-association` objects (or one object), so associations carry consecutive objects and
//! their count is deterministic (`ceil(n / K)`); in open loop (`--rate R`) object `i` is
//! *intended* to be sent at `start + i / R` and its latency is measured from that instant,
//! not from when a worker got round to sending it — which corrects for coordinated omission:
//! a stalled server shows up as growing latency instead of a politely slowed-down client.
//!
//! Every worker first opens its association, then all wait on a barrier, and the clock starts:
//! initial association set-up is not part of the measured interval (reconnects are).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dicom_gw::net::dimse::command::{
    encode_echo_rq, encode_store_rq, tags, CommandBuilder, CommandField,
};
use dicom_gw::net::dimse::status::{category, Category};

use crate::dataset::{EXPLICIT_LE, IMPLICIT_LE};
use crate::query::Query;
use crate::scu::{AssocParams, Association, ScuError};
use crate::source::Source;
use crate::stats::Stats;
use crate::verify::SentRecord;

/// Verification SOP Class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Modality Worklist Information Model – FIND.
pub const MWL_FIND: &str = "1.2.840.10008.5.1.4.31";

/// What each request does.
#[derive(Debug, Clone)]
pub enum Operation {
    /// C-STORE the source's objects.
    Store(Arc<Source>),
    /// C-ECHO.
    Echo,
    /// C-FIND with a query, under an information model (SOP class UID).
    Find {
        /// Information model (abstract syntax).
        model: String,
        /// The identifier.
        query: Arc<Query>,
    },
}

impl Operation {
    /// Name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Store(_) => "store",
            Operation::Echo => "echo",
            Operation::Find { .. } => "find",
        }
    }

    /// Presentation contexts to propose.
    pub fn contexts(&self) -> Vec<(String, Vec<String>)> {
        let verification = (VERIFICATION.to_owned(), vec![IMPLICIT_LE.to_owned()]);
        match self {
            Operation::Store(src) => {
                let mut v: Vec<_> = src
                    .contexts()
                    .into_iter()
                    .map(|(a, t)| (a, vec![t]))
                    .collect();
                v.push(verification);
                v
            }
            Operation::Echo => vec![verification],
            Operation::Find { model, .. } => vec![(
                model.clone(),
                vec![EXPLICIT_LE.to_owned(), IMPLICIT_LE.to_owned()],
            )],
        }
    }
}

/// Run parameters.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Peer address.
    pub addr: SocketAddr,
    /// Calling AE title.
    pub calling: String,
    /// Called AE title.
    pub called: String,
    /// Concurrent associations (≥ 1).
    pub concurrency: usize,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Stop after this long (closed loop: no request starts later; open loop: no request is
    /// scheduled later).
    pub duration: Option<Duration>,
    /// Open loop: requests per second across all associations.
    pub rate: Option<f64>,
    /// Requests per association before release and reconnect.
    pub per_association: Option<u64>,
    /// Network timeout.
    pub timeout: Duration,
    /// Maximum Length we announce.
    pub max_pdu: u32,
    /// Keep a record (with blake3) of every acknowledged store, for verification.
    pub record_sent: bool,
    /// DICOM TLS towards the SCP, if set.
    pub tls: Option<crate::scu::ScuTls>,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunResult {
    /// Merged statistics.
    pub stats: Stats,
    /// Start signal → last response.
    pub elapsed: Duration,
    /// Set when the run stopped early (association refused, peer unreachable).
    pub fatal: Option<String>,
    /// Acknowledged stores (when `record_sent`).
    pub sent: Vec<SentRecord>,
}

struct Shared {
    cfg: RunConfig,
    op: Operation,
    params: AssocParams,
    next: AtomicU64,
    stop: AtomicBool,
    fatal: Mutex<Option<String>>,
    barrier: Barrier,
    start: OnceLock<Instant>,
    find_ids: Option<[Vec<u8>; 2]>,
}

impl Shared {
    fn fail(&self, why: String) {
        self.stop.store(true, Ordering::SeqCst);
        let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(why);
    }

    /// Claims the next block of object numbers; empty when the count is exhausted.
    fn claim(&self) -> Range<u64> {
        let block = match (self.cfg.rate, self.cfg.per_association) {
            (None, Some(k)) => k.max(1),
            _ => 1,
        };
        let a = self.next.fetch_add(block, Ordering::Relaxed);
        let end = a.saturating_add(block);
        match self.cfg.count {
            Some(n) => a.min(n)..end.min(n),
            None => a..end,
        }
    }

    fn open(&self, st: &mut Stats) -> Result<Association, ScuError> {
        let t = Instant::now();
        let a = Association::open_with_tls(&self.params, self.cfg.tls.as_ref())?;
        st.record_setup(t.elapsed());
        Ok(a)
    }
}

struct WorkerOut {
    stats: Stats,
    sent: Vec<SentRecord>,
    last_done: Option<Instant>,
}

/// Runs the load and returns the merged results. Blocks until every worker is done.
pub fn run(cfg: RunConfig, op: Operation) -> RunResult {
    let params = AssocParams {
        addr: cfg.addr,
        calling: cfg.calling.clone(),
        called: cfg.called.clone(),
        max_pdu: cfg.max_pdu,
        timeout: cfg.timeout,
        connect_timeout: None,
        contexts: op.contexts(),
        implementation_class_uid: crate::dataset::IMPLEMENTATION_CLASS_UID.to_owned(),
        implementation_version_name: crate::dataset::IMPLEMENTATION_VERSION_NAME.to_owned(),
    };
    let find_ids = match &op {
        Operation::Find { query, .. } => Some([
            query.encode(crate::dataset::Ts::ExplicitLe),
            query.encode(crate::dataset::Ts::ImplicitLe),
        ]),
        _ => None,
    };
    let c = cfg.concurrency.max(1);
    let shared = Arc::new(Shared {
        cfg,
        op,
        params,
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        fatal: Mutex::new(None),
        barrier: Barrier::new(c + 1),
        start: OnceLock::new(),
        find_ids,
    });
    let handles: Vec<_> = (0..c)
        .map(|w| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("loadgen-{w}"))
                .spawn(move || worker(&s))
                .expect("spawn worker thread")
        })
        .collect();
    shared.barrier.wait();
    let start = Instant::now();
    let _ = shared.start.set(start);
    let mut stats = Stats::new();
    let mut sent = Vec::new();
    let mut last = None::<Instant>;
    for h in handles {
        match h.join() {
            Ok(out) => {
                stats.merge(&out.stats);
                sent.extend(out.sent);
                last = last.max(out.last_done);
            }
            Err(_) => shared.fail("a worker thread panicked".into()),
        }
    }
    let elapsed = last
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(start);
    let fatal = shared
        .fatal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    RunResult {
        stats,
        elapsed,
        fatal,
        sent,
    }
}

/// Outcome of one request that got a final response.
struct Done {
    status: u16,
    pending: u64,
    bytes: u64,
}

fn worker(s: &Shared) -> WorkerOut {
    let mut st = Stats::new();
    let mut out = WorkerOut {
        stats: Stats::new(),
        sent: Vec::new(),
        last_done: None,
    };
    let mut range = s.claim();
    let mut assoc = None;
    if !range.is_empty() {
        match s.open(&mut st) {
            Ok(a) => assoc = Some(a),
            Err(e) => s.fail(e.to_string()),
        }
    }
    s.barrier.wait();
    let start = *s.start.wait();
    let deadline = s.cfg.duration.map(|d| start + d);
    let mut cursor = match &s.op {
        Operation::Store(src) => Some(src.cursor()),
        _ => None,
    };
    let mut on_assoc = 0u64;
    let mut msg_id = 0u16;
    loop {
        if s.stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(i) = range.next() else {
            range = s.claim();
            if range.is_empty() {
                break;
            }
            continue;
        };
        let intended = s
            .cfg
            .rate
            .map(|r| start + Duration::from_secs_f64(i as f64 / r));
        if let Some(dl) = deadline {
            if intended.unwrap_or_else(Instant::now) >= dl {
                break;
            }
        }
        if let Some(t) = intended {
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            }
        }
        if assoc.is_none() {
            match s.open(&mut st) {
                Ok(a) => {
                    assoc = Some(a);
                    on_assoc = 0;
                }
                Err(e) => {
                    s.fail(e.to_string());
                    break;
                }
            }
        }
        let Some(a) = assoc.as_mut() else { break };
        msg_id = msg_id.wrapping_add(1).max(1);
        st.requests += 1;
        let t0 = Instant::now();
        // t1 is taken as soon as the final response is in: hashing for the manifest is not
        // part of the latency.
        let (result, t1) = match &s.op {
            Operation::Store(_) => {
                let obj = cursor.as_mut().map(|c| c.object(i));
                let obj = obj.expect("store has a cursor");
                let r = store(a, msg_id, &obj);
                let t1 = Instant::now();
                if let (Ok(d), true) = (&r, s.cfg.record_sent) {
                    if matches!(category(d.status), Category::Success | Category::Warning) {
                        out.sent.push(SentRecord {
                            sop_instance: obj.sop_instance.to_owned(),
                            study: obj.study.to_owned(),
                            series: obj.series.to_owned(),
                            blake3: blake3::Hash::from(obj.hash()).to_hex().to_string(),
                            len: obj.len() as u64,
                        });
                    }
                }
                (r, t1)
            }
            Operation::Echo => (echo(a, msg_id), Instant::now()),
            Operation::Find { model, .. } => {
                (find(a, msg_id, model, s.find_ids.as_ref()), Instant::now())
            }
        };
        out.last_done = Some(t1);
        on_assoc += 1;
        match result {
            Ok(d) => {
                st.pending += d.pending;
                if st.status(d.status) {
                    st.bytes += d.bytes;
                }
                st.record(t1 - intended.unwrap_or(t0), t1 - t0);
            }
            Err(e) => {
                st.error(e.kind());
                // A missing presentation context leaves the association usable.
                if !matches!(e, ScuError::NoContext { .. }) {
                    if let Some(a) = assoc.take() {
                        a.abort();
                    }
                }
            }
        }
        if s.cfg.per_association.is_some_and(|k| on_assoc >= k) {
            if let Some(a) = assoc.take() {
                if let Err(e) = a.release() {
                    st.error(format!("release-{}", e.kind()));
                }
            }
        }
    }
    if let Some(a) = assoc.take() {
        if let Err(e) = a.release() {
            st.error(format!("release-{}", e.kind()));
        }
    }
    out.stats = st;
    out
}

fn store(a: &mut Association, id: u16, obj: &crate::source::Obj<'_>) -> Result<Done, ScuError> {
    let pc = a.context(obj.sop_class, obj.ts)?;
    let cmd = encode_store_rq(id, obj.sop_class, obj.sop_instance);
    a.send(pc, &cmd, Some((obj.head, obj.tail)))?;
    let rsp = a.receive(id)?;
    Ok(Done {
        status: final_status(&rsp.command)?,
        pending: 0,
        bytes: obj.len() as u64,
    })
}

fn echo(a: &mut Association, id: u16) -> Result<Done, ScuError> {
    let pc = a.context(VERIFICATION, IMPLICIT_LE)?;
    a.send(pc, &encode_echo_rq(id), None)?;
    let rsp = a.receive(id)?;
    Ok(Done {
        status: final_status(&rsp.command)?,
        pending: 0,
        bytes: 0,
    })
}

/// Upper bound on pending responses to one C-FIND (keeps a runaway peer bounded).
const MAX_PENDING: u64 = 10_000_000;

fn find(
    a: &mut Association,
    id: u16,
    model: &str,
    ids: Option<&[Vec<u8>; 2]>,
) -> Result<Done, ScuError> {
    let ctx = a.any_context(model)?;
    let (pc, explicit) = (ctx.id, ctx.transfer_syntax == EXPLICIT_LE);
    let ids = ids.expect("find has encoded identifiers");
    let identifier = if explicit { &ids[0] } else { &ids[1] };
    let (status, pending) = c_find(a, id, model, pc, identifier, MAX_PENDING)?;
    Ok(Done {
        status,
        pending,
        bytes: 0,
    })
}

/// One C-FIND of `identifier` (encoded in the transfer syntax of context `pc`) on
/// `sop_class`: (final status, pending responses). More than `max_pending` pending responses
/// is a protocol error (a runaway peer stays bounded).
pub fn c_find(
    a: &mut Association,
    id: u16,
    sop_class: &str,
    pc: u8,
    identifier: &[u8],
    max_pending: u64,
) -> Result<(u16, u64), ScuError> {
    let cmd = CommandBuilder::new()
        .uid(tags::AFFECTED_SOP_CLASS_UID, sop_class)
        .us(tags::COMMAND_FIELD, CommandField::CFindRq as u16)
        .us(tags::MESSAGE_ID, id)
        .us(tags::PRIORITY, 0)
        .us(tags::COMMAND_DATA_SET_TYPE, 0x0000)
        .build();
    a.send(pc, &cmd, Some((identifier, &[])))?;
    let mut pending = 0u64;
    loop {
        let rsp = a.receive(id)?;
        let c = &rsp.command;
        if c.command_field != CommandField::CFindRsp as u16 {
            return Err(ScuError::Protocol(format!(
                "expected C-FIND-RSP, got command field 0x{:04X}",
                c.command_field
            )));
        }
        let status = c
            .status
            .ok_or_else(|| ScuError::Protocol("response without Status (0000,0900)".into()))?;
        if category(status) != Category::Pending {
            return Ok((status, pending));
        }
        pending += 1;
        if pending > max_pending {
            return Err(ScuError::Protocol(format!(
                "more than {max_pending} pending responses"
            )));
        }
    }
}

fn final_status(c: &dicom_gw::net::dimse::command::Command) -> Result<u16, ScuError> {
    let expect_rsp = c.command_field & 0x8000 != 0;
    if !expect_rsp || c.command_field == CommandField::CCancelRq as u16 {
        return Err(ScuError::Protocol(format!(
            "expected a response, got command field 0x{:04X}",
            c.command_field
        )));
    }
    c.status
        .ok_or_else(|| ScuError::Protocol("response without Status (0000,0900)".into()))
}
