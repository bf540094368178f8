//! The forwarder: per destination, up to `max_associations` worker threads, each keeping one
//! association open and reusing it across objects, released after `idle_release` without work.
//!
//! Why blocking threads rather than the ingest cores' runtimes: outbound associations are few
//! and long-lived, each sends one object at a time and waits for its response, so a plain
//! thread with socket timeouts keeps the SCU state machine linear and the ingest cores free.
//!
//! A worker claims a batch of due jobs, proposes each object's SOP class in the object's
//! *original* transfer syntax (re-associating only when the batch needs a pair the current
//! association lacks) and, unless the destination says `transcode = "never"`, one more context
//! per SOP class with the uncompressed syntaxes an object can be converted to
//! ([`crate::dicom::transcode::TARGETS`]). An object goes out verbatim, streamed from its file
//! ([`crate::net::scu`]), whenever its original syntax was accepted; otherwise it is converted
//! losslessly in memory for this send (the stored file never changes), logged and counted.
//!
//! Outcomes are recorded in one durable transaction per batch. Status 0000 and warnings
//! (Bxxx, 0001) are delivered; a rejected presentation context without a possible conversion,
//! 0122, Cxxx and other failures go to the dead letters at once. Failures fall in two classes:
//! - *destination-wide*: the association cannot be opened (connection refused, timeout,
//!   A-ASSOCIATE-RJ): every job of the batch waits for the destination's backoff, up to
//!   `max_attempts`, and the destination is held until the earliest retry;
//! - *this object's*: an A-ABORT, a dropped connection, a timeout or an out-of-resources
//!   status (A7xx, 0213) on one C-STORE, after which the association is opened again at once
//!   and the rest of the batch goes on. Such a failure is a strike against the object once
//!   other objects have been delivered to the destination (in the same batch, or since the
//!   object's first failure); after `max_object_attempts` strikes the object is a dead letter.
//!   Without that evidence the failure counts like a destination-wide one.
//!
//! Every dead letter is logged ("dead-lettered", with destination, SOP Instance UID, attempts
//! and reason) and counted in `dicomgw_forward_total{result="dead"}`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::Wake;
use super::{Claimed, JobRecord, Outcome, Queue};
use crate::clock::timestamp_us;
use crate::config::{Destination, TranscodePolicy};
use crate::dicom::transcode::{self, Syntax, TranscodeError};
use crate::metrics::ForwardResult;
use crate::net::scu::{self, Association, ScuError};
use crate::store::index::InstanceRecord;
use crate::store::DataDir;

/// Jobs claimed per round trip to the queue.
pub const CLAIM_BATCH: usize = 32;
/// Longest a worker sleeps before looking at its destination again.
const MAX_NAP: Duration = Duration::from_secs(1);

/// Shared state of one destination.
#[derive(Debug)]
pub struct DestinationState {
    /// Its configuration.
    pub config: Destination,
    paused: AtomicBool,
    /// Replaced or removed by a configuration change: its workers end.
    retired: AtomicBool,
    /// After a connection-level failure, nobody tries before this time (µs).
    hold_until_us: AtomicU64,
    bell: Mutex<u64>,
    rung: Condvar,
    /// Associations opened so far (all workers), for logs and tests.
    pub associations_opened: AtomicU64,
    /// Objects delivered so far (all workers): the evidence that a failure is one object's.
    delivered: AtomicU64,
    /// Jobs with strikes (failures while the destination accepted others), by job id. In
    /// memory only: a restart gives a poison object a few more attempts, which is harmless.
    strikes: Mutex<HashMap<u64, Strikes>>,
}

/// One job's record of failures that may be its own.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    /// Failures that counted against the object.
    count: u32,
    /// `delivered` when the object first failed (at the start of that batch): any delivery
    /// after it shows the destination accepts other objects.
    delivered_before: u64,
}

impl DestinationState {
    fn ring(&self) {
        let mut g = self.bell.lock().unwrap_or_else(|e| e.into_inner());
        *g = g.wrapping_add(1);
        self.rung.notify_all();
    }

    fn generation(&self) -> u64 {
        *self.bell.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until rung after `seen`, or `timeout`.
    fn nap(&self, seen: u64, timeout: Duration) {
        let g = self.bell.lock().unwrap_or_else(|e| e.into_inner());
        if *g != seen {
            return;
        }
        let _ = self
            .rung
            .wait_timeout(g, timeout.min(MAX_NAP))
            .unwrap_or_else(|e| e.into_inner());
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.ring();
    }

    /// Whether forwarding to this destination is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    fn strikes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Strikes>> {
        self.strikes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the strikes of jobs that are delivered or dead.
    fn forget<'a>(&self, jobs: impl Iterator<Item = &'a u64>) {
        let mut s = self.strikes();
        if !s.is_empty() {
            for id in jobs {
                s.remove(id);
            }
        }
    }

    /// Classifies a failure of job `id` that may be the object's own, at the end of the batch
    /// it happened in (`delivered_at_start`: deliveries counted when the batch began). Returns
    /// the strikes against the object, or `None` if no other object has been delivered since
    /// its first failure (then the failure counts like a destination-wide one).
    fn strike(&self, id: u64, delivered_at_start: u64) -> Option<u32> {
        let now = self.delivered.load(Ordering::Acquire);
        let mut s = self.strikes();
        let e = s.entry(id).or_insert(Strikes {
            count: 0,
            delivered_before: delivered_at_start,
        });
        if now > e.delivered_before {
            e.count += 1;
            Some(e.count)
        } else {
            None
        }
    }
}

/// Everything the workers share.
#[derive(Debug)]
pub struct Shared {
    queue: Queue,
    data: DataDir,
    /// Destinations by name; replaced as a whole entry when the configuration changes (the
    /// old entry's workers see `retired` and end after their current object).
    dests: RwLock<HashMap<String, Arc<DestinationState>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop: AtomicBool,
    /// Where a queue database that needs reopening is recorded as a vital failure.
    health: &'static crate::health::Registry,
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<DestinationState>>> {
        self.dests.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The destination called `name`, if configured.
    pub fn destination(&self, name: &str) -> Option<Arc<DestinationState>> {
        self.read().get(name).cloned()
    }

    /// Configured destinations, sorted by name.
    pub fn destinations(&self) -> Vec<Destination> {
        let mut v: Vec<Destination> = self.read().values().map(|d| d.config.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Configured destination names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Wakes the workers of `name` (new or retried jobs).
    pub fn wake(&self, name: &str) {
        if let Some(d) = self.read().get(name) {
            d.ring();
        }
    }

    /// Pauses or resumes `name` in memory (the caller persists it); false if unknown.
    pub fn set_paused(&self, name: &str, paused: bool) -> bool {
        match self.read().get(name) {
            Some(d) => {
                d.paused.store(paused, Ordering::Release);
                if !paused {
                    d.hold_until_us.store(0, Ordering::Release);
                }
                d.ring();
                true
            }
            None => false,
        }
    }

    /// Adds a destination, or replaces the one of the same name (its workers finish the object
    /// they are sending and end; new workers with the new settings take over its jobs).
    pub fn upsert_destination(self: &Arc<Self>, config: Destination) -> std::io::Result<()> {
        let paused = self
            .queue
            .is_paused(&config.name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let state = Arc::new(DestinationState {
            config,
            paused: AtomicBool::new(paused),
            retired: AtomicBool::new(false),
            hold_until_us: AtomicU64::new(0),
            bell: Mutex::new(0),
            rung: Condvar::new(),
            associations_opened: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            strikes: Mutex::new(HashMap::new()),
        });
        let old = self
            .dests
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(state.config.name.clone(), state.clone());
        if let Some(old) = old {
            old.retire();
        }
        self.spawn_workers(&state)
    }

    /// Removes a destination: its workers end; its jobs stay in the queue (sent again if a
    /// destination of that name is configured later). Returns whether it existed.
    pub fn remove_destination(&self, name: &str) -> bool {
        let old = self
            .dests
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        match old {
            Some(d) => {
                d.retire();
                true
            }
            None => false,
        }
    }

    fn spawn_workers(self: &Arc<Self>, d: &Arc<DestinationState>) -> std::io::Result<()> {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        for k in 0..d.config.max_associations {
            let (s, d) = (self.clone(), d.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fwd-{}-{k}", d.config.name))
                    .spawn(move || worker(&s, &d))?,
            );
        }
        Ok(())
    }
}

/// The running forwarder.
#[derive(Debug)]
pub struct Forwarder {
    shared: Arc<Shared>,
}

impl Forwarder {
    /// Returns jobs left in flight by a previous run to waiting, then starts the workers.
    pub fn start(queue: Queue, data: DataDir, dests: Vec<Destination>) -> std::io::Result<Self> {
        Forwarder::start_in(queue, data, dests, crate::health::global())
    }

    /// [`Forwarder::start`], recording vital failures into `health` (tests: their own).
    pub fn start_in(
        queue: Queue,
        data: DataDir,
        dests: Vec<Destination>,
        health: &'static crate::health::Registry,
    ) -> std::io::Result<Self> {
        let io = |e: super::QueueError| std::io::Error::other(e.to_string());
        let back = queue.requeue_in_flight(timestamp_us()).map_err(io)?;
        if back > 0 {
            warn!(
                jobs = back,
                "jobs that were being sent when the daemon stopped are queued again"
            );
        }
        let shared = Arc::new(Shared {
            queue,
            data,
            dests: RwLock::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            health,
        });
        for d in dests {
            shared.upsert_destination(d)?;
        }
        Ok(Self { shared })
    }

    /// The state the control socket and the API act on.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The doorbell ingest rings after a checkpoint created jobs.
    pub fn wake_handle(&self) -> Wake {
        let s = self.shared.clone();
        Wake(Arc::new(move |name: &str| s.wake(name)))
    }

    /// Stops the workers: each finishes the object it is sending, puts its other claimed jobs
    /// back, releases its association and ends.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        for d in self.shared.read().values() {
            d.ring();
        }
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in threads {
            let _ = t.join();
        }
    }
}

/// One open association and what it was negotiated for.
struct Link {
    assoc: Association,
    proposed: HashSet<(String, String)>,
    /// Presentation contexts proposed (pairs plus conversion contexts), for the log.
    contexts: usize,
    last_used: Instant,
    next_message_id: u16,
}

impl Link {
    fn release(self, dest: &str) {
        if let Err(e) = self.assoc.release() {
            debug!(destination = dest, error = %e, "release failed");
        }
    }
}

/// After an I/O error redb fails every operation until the database is reopened
/// ([`crate::db::needs_reopen`]): no worker can claim or record
/// anything any more, ingest's checkpoints fail too, and only a restart helps. Recorded as
/// a vital failure, so the daemon stops and its supervisor starts it again, also when no
/// C-STORE arrives to fail a checkpoint.
fn vital_if_latched(shared: &Shared, e: &super::QueueError) {
    if let super::QueueError::Index(i) = e {
        if i.needs_reopen() {
            shared.health.fail(
                "forwarding queue",
                &format!("{i}; the next start reopens the index"),
            );
        }
    }
}

fn worker(shared: &Shared, d: &DestinationState) {
    let cfg = &d.config;
    let mut rng = fastrand::Rng::new();
    let mut link: Option<Link> = None;
    loop {
        let seen = d.generation();
        if shared.stop.load(Ordering::Acquire) || d.retired.load(Ordering::Acquire) {
            break;
        }
        if d.is_paused() {
            if let Some(l) = link.take() {
                l.release(&cfg.name);
            }
            d.nap(seen, MAX_NAP);
            continue;
        }
        let now = timestamp_us();
        let hold = d.hold_until_us.load(Ordering::Acquire);
        if now < hold {
            d.nap(seen, Duration::from_micros(hold - now));
            continue;
        }
        let claimed = match shared.queue.claim(&cfg.name, now, CLAIM_BATCH) {
            Ok(c) => c,
            Err(e) => {
                error!(destination = %cfg.name, error = %e, "cannot claim jobs");
                vital_if_latched(shared, &e);
                d.nap(seen, MAX_NAP);
                continue;
            }
        };
        if claimed.is_empty() {
            let idle_left = match &link {
                Some(l) if l.last_used.elapsed() >= cfg.idle_release => {
                    if let Some(l) = link.take() {
                        debug!(destination = %cfg.name, "releasing idle association");
                        l.release(&cfg.name);
                    }
                    MAX_NAP
                }
                Some(l) => cfg.idle_release - l.last_used.elapsed(),
                None => MAX_NAP,
            };
            let due_in = match shared.queue.next_due(&cfg.name) {
                Ok(Some(t)) => Duration::from_micros(t.saturating_sub(timestamp_us())),
                _ => MAX_NAP,
            };
            d.nap(seen, idle_left.min(due_in).max(Duration::from_millis(1)));
            continue;
        }
        let (results, link_failed) = send_batch(&mut link, claimed, d, shared);
        let delivered = results
            .iter()
            .filter(|(_, o)| *o == Outcome::Delivered)
            .count();
        let counted: Vec<(u64, ForwardResult)> = results
            .iter()
            .filter_map(|(j, o)| o.counted().map(|r| (j.id, r)))
            .collect();
        let retried: Vec<(u64, String, u32)> = results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Retry(_)))
            .map(|(j, _)| (j.id, j.sop_instance_uid.clone(), j.attempts + 1))
            .collect();
        let settled: Vec<u64> = results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Delivered | Outcome::Dead(_)))
            .map(|(j, _)| j.id)
            .collect();
        match shared
            .queue
            .finish(results, &cfg.retry, timestamp_us(), || rng.f64())
        {
            Ok(finished) => {
                let dead: HashSet<u64> = finished.dead.iter().map(|j| j.id).collect();
                // The attempt that sends a job to the dead letters counts as `dead`, also when
                // it was a retry that exhausted `max_attempts`.
                crate::metrics::global().forward_results(
                    &cfg.name,
                    counted.into_iter().map(|(id, r)| {
                        if dead.contains(&id) {
                            ForwardResult::Dead
                        } else {
                            r
                        }
                    }),
                );
                for j in &finished.dead {
                    warn!(destination = %cfg.name, sop = %j.sop_instance_uid, job = j.id, attempts = j.attempts, reason = %j.last_error, "dead-lettered");
                }
                let again = retried.iter().filter(|(id, _, _)| !dead.contains(id));
                if link_failed {
                    // One line for a destination-wide failure, however many jobs wait.
                    let n = again.count();
                    if n > 0 {
                        info!(destination = %cfg.name, jobs = n, "will retry after the destination's backoff");
                    }
                } else {
                    for (id, sop, attempts) in again {
                        info!(destination = %cfg.name, sop = %sop, job = id, attempts, "will retry");
                    }
                }
                d.forget(settled.iter().chain(dead.iter()));
                if link_failed {
                    if let Some(t) = finished.earliest {
                        d.hold_until_us.fetch_max(t, Ordering::AcqRel);
                    }
                }
            }
            Err(e) => {
                // The jobs stay in flight and are sent again after a restart (at-least-once).
                error!(destination = %cfg.name, error = %e, "cannot record forwarding results");
                vital_if_latched(shared, &e);
                d.nap(seen, MAX_NAP);
            }
        }
        debug!(destination = %cfg.name, delivered, "forward batch");
    }
    if let Some(l) = link.take() {
        l.release(&cfg.name);
    }
}

/// Maps a C-STORE response status to an outcome (PS3.4 Annex B.2.3 and PS3.7 Annex C).
pub fn classify(status: u16, comment: Option<&str>) -> Outcome {
    let why = |what: &str| match comment {
        Some(c) if !c.is_empty() => format!("{what} (status {status:04X}: {c})"),
        _ => format!("{what} (status {status:04X})"),
    };
    match status {
        0x0000 => Outcome::Delivered,
        0x0001 | 0xB000..=0xBFFF => Outcome::Delivered,
        0xA700..=0xA7FF | 0x0213 => Outcome::Retry(why("destination out of resources")),
        0x0122 => Outcome::Dead(why("destination does not support the SOP class")),
        0xA900..=0xA9FF => Outcome::Dead(why(
            "destination says the dataset does not match the SOP class",
        )),
        0xC000..=0xCFFF => Outcome::Dead(why("destination cannot understand the object")),
        0x0111 => Outcome::Dead(why(
            "destination already holds a different object with this SOP Instance UID",
        )),
        _ => Outcome::Dead(why("destination refused the object")),
    }
}

/// The presentation contexts for `pairs` (SOP class, original transfer syntax, sorted): one
/// per pair with the original syntax alone, so a destination that accepts it gets the bytes
/// verbatim (an SCP picks by its own preference among the syntaxes of one context); and, when
/// converting is allowed, one per SOP class with the syntaxes an object can be converted to.
fn proposed_contexts(
    policy: TranscodePolicy,
    pairs: &[&(String, String)],
) -> Vec<(String, Vec<String>)> {
    let mut contexts: Vec<(String, Vec<String>)> = pairs
        .iter()
        .map(|(class, ts)| (class.clone(), vec![ts.clone()]))
        .collect();
    if policy == TranscodePolicy::Lossless {
        let mut classes: Vec<&String> = pairs
            .iter()
            .filter(|(_, ts)| Syntax::from_uid(ts).is_some())
            .map(|(class, _)| class)
            .collect();
        classes.dedup();
        for class in classes {
            contexts.push((
                class.clone(),
                transcode::TARGETS
                    .iter()
                    .map(|t| t.uid().to_owned())
                    .collect(),
            ));
        }
    }
    contexts
}

fn open_link(cfg: &Destination, pairs: &HashSet<(String, String)>) -> Result<Link, ScuError> {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    let contexts = proposed_contexts(cfg.transcode, &sorted);
    let count = contexts.len();
    // The destination's configured calling AE title, always (its access list knows it).
    let assoc = scu::link_to(cfg, cfg.calling_ae_title.clone(), contexts, &[])?;
    Ok(Link {
        assoc,
        proposed: pairs.clone(),
        contexts: count,
        last_used: Instant::now(),
        next_message_id: 1,
    })
}

/// Whether a failure to associate or to send is worth retrying (everything here is: a refused
/// connection, a timeout, an abort, even a permanent A-ASSOCIATE-RJ — the latter is a
/// destination configuration problem, fixed on the destination, not in the object).
fn link_failure(e: &ScuError) -> String {
    match e {
        ScuError::Rejected {
            transient: false, ..
        } => {
            format!("{e} (check the destination's AE titles and access list)")
        }
        _ => e.to_string(),
    }
}

/// How one object goes out on the current association.
enum Plan {
    /// Its stored bytes, on this context.
    Verbatim(u8),
    /// Converted, on this context.
    Convert { pc: u8, from: Syntax, to: Syntax },
}

/// Picks the context for `rec`: its original syntax if accepted, else (when allowed) an
/// accepted syntax it can be converted to. `Err` is the dead-letter reason.
fn plan(assoc: &Association, rec: &InstanceRecord, cfg: &Destination) -> Result<Plan, String> {
    let (class, ts) = (&rec.sop_class_uid, &rec.transfer_syntax_uid);
    if let Ok(pc) = assoc.context(class, ts) {
        return Ok(Plan::Verbatim(pc));
    }
    let refused = format!(
        "the destination rejected the presentation context for SOP class {class} in transfer \
         syntax {ts}"
    );
    if cfg.transcode == TranscodePolicy::Never {
        return Err(format!(
            "{refused} (transcode = \"never\": the object is forwarded only in the syntax it \
             was received in)"
        ));
    }
    let Some(from) = Syntax::from_uid(ts) else {
        return Err(format!(
            "{refused}, and {}",
            TranscodeError::UnsupportedSource(ts.clone())
        ));
    };
    for to in transcode::TARGETS {
        if to != from {
            if let Ok(pc) = assoc.context(class, to.uid()) {
                return Ok(Plan::Convert { pc, from, to });
            }
        }
    }
    Err(format!(
        "{refused}, and none of the uncompressed syntaxes it could be converted to ({})",
        transcode::TARGETS
            .iter()
            .map(|t| format!("{} {}", t.name(), t.uid()))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Reads the stored dataset and converts it; `Err` is the dead-letter reason.
fn convert(
    file: &std::fs::File,
    rec: &InstanceRecord,
    from: Syntax,
    to: Syntax,
    limit: u64,
) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    let why = |e: &dyn std::fmt::Display| {
        format!(
            "the destination does not accept {} ({}); converting to {} failed: {e}",
            from.name(),
            from.uid(),
            to.name()
        )
    };
    if rec.dataset_size > limit {
        return Err(why(&TranscodeError::TooLarge {
            what: "stored dataset",
            size: rec.dataset_size,
            limit,
        }));
    }
    let mut bytes = vec![0u8; rec.dataset_size as usize];
    file.read_exact_at(&mut bytes, rec.file_size.saturating_sub(rec.dataset_size))
        .map_err(|e| why(&format!("cannot read the stored object: {e}")))?;
    transcode::transcode(&bytes, from, to, limit).map_err(|e| why(&e))
}

/// Sends a batch over `link` (opening or re-opening it as needed). Returns each job's outcome
/// and whether the destination could not be reached (it is then held until the earliest
/// retry).
fn send_batch(
    link: &mut Option<Link>,
    claimed: Vec<Claimed>,
    d: &DestinationState,
    shared: &Shared,
) -> (Vec<(JobRecord, Outcome)>, bool) {
    let cfg = &d.config;
    let metrics = crate::metrics::global().destination(&cfg.name);
    let delivered_at_start = d.delivered.load(Ordering::Acquire);
    let mut results = Vec::with_capacity(claimed.len());
    let mut todo = Vec::with_capacity(claimed.len());
    for c in claimed {
        match c.instance {
            Some(rec) => todo.push((c.job, rec)),
            None => {
                warn!(destination = %cfg.name, sop = %c.job.sop_instance_uid, "forward job for an object that is no longer stored");
                results.push((
                    c.job,
                    Outcome::Dead("the object is no longer stored".into()),
                ));
            }
        }
    }
    if todo.is_empty() {
        return (results, false);
    }
    let pairs: HashSet<(String, String)> = todo
        .iter()
        .map(|(_, r)| (r.sop_class_uid.clone(), r.transfer_syntax_uid.clone()))
        .collect();
    if link.as_ref().is_some_and(|l| !pairs.is_subset(&l.proposed)) {
        if let Some(l) = link.take() {
            l.release(&cfg.name);
        }
    }
    // Failures that may be the object's own: classified once the batch is over.
    let mut suspects: Vec<(JobRecord, String)> = Vec::new();
    let mut unreachable = false;
    let mut todo = todo.into_iter();
    while let Some((job, rec)) = todo.next() {
        if shared.stop.load(Ordering::Acquire) || d.retired.load(Ordering::Acquire) {
            results.push((job, Outcome::Unsent));
            continue;
        }
        if link.is_none() {
            match open_link(cfg, &pairs) {
                Ok(l) => {
                    let n = d.associations_opened.fetch_add(1, Ordering::Relaxed) + 1;
                    info!(destination = %cfg.name, contexts = l.contexts, accepted = l.assoc.accepted().len(), associations = n, "association opened");
                    *link = Some(l);
                }
                Err(e) => {
                    // Destination-wide: this job and the rest wait for the backoff, and so do
                    // the objects whose failure could not be told apart from this one.
                    let why = link_failure(&e);
                    let rest = 1 + todo.len();
                    warn!(destination = %cfg.name, error = %why, jobs = rest + suspects.len(), "cannot associate");
                    results.push((job, Outcome::Retry(why.clone())));
                    results.extend(todo.by_ref().map(|(j, _)| (j, Outcome::Retry(why.clone()))));
                    results.extend(suspects.drain(..).map(|(j, w)| (j, Outcome::Retry(w))));
                    unreachable = true;
                    break;
                }
            }
        }
        let l = link.as_mut().expect("opened above");
        let plan = match plan(&l.assoc, &rec, cfg) {
            Ok(p) => p,
            Err(why) => {
                warn!(destination = %cfg.name, sop = %rec.sop_instance_uid, "{why}");
                results.push((job, Outcome::Dead(why)));
                continue;
            }
        };
        let path = shared.data.root().join(&rec.path);
        // Object files are immutable: a replacement gets a new name and the old file goes
        // after the index names the new one. So a file that is gone, or not the size the
        // claimed record says, was replaced since the claim: the job is sent again with the
        // record as it is now, never the old offsets over new bytes (audit H3).
        let opened = std::fs::File::open(&path).and_then(|f| {
            let len = f.metadata()?.len();
            if len == rec.file_size {
                Ok(f)
            } else {
                Err(std::io::Error::other(format!(
                    "{len} bytes on disk, the record says {}",
                    rec.file_size
                )))
            }
        });
        let replaced = || {
            shared
                .queue
                .index()
                .instance(&rec.sop_instance_uid)
                .ok()
                .flatten()
                .is_some_and(|now| now.path != rec.path || now.dataset_blake3 != rec.dataset_blake3)
        };
        let file = match opened {
            Ok(f) => f,
            Err(_) if replaced() => {
                info!(destination = %cfg.name, sop = %rec.sop_instance_uid, "the object was replaced since this job was claimed: sending the new version");
                results.push((job, Outcome::Unsent));
                continue;
            }
            Err(e) => {
                let why = format!("cannot open the stored object {}: {e}", path.display());
                error!(destination = %cfg.name, "{why}");
                results.push((job, Outcome::Dead(why)));
                continue;
            }
        };
        let id = l.next_message_id;
        l.next_message_id = l.next_message_id.checked_add(1).unwrap_or(1);
        let sent_at = Instant::now();
        let sent = match plan {
            Plan::Verbatim(pc) => l.assoc.c_store_from_file(
                pc,
                id,
                &rec.sop_class_uid,
                &rec.sop_instance_uid,
                &file,
                rec.file_size.saturating_sub(rec.dataset_size),
                rec.dataset_size,
            ),
            Plan::Convert { pc, from, to } => {
                match convert(&file, &rec, from, to, cfg.transcode_max_bytes) {
                    Ok(bytes) => {
                        metrics.transcoded(from.uid(), to.uid());
                        info!(destination = %cfg.name, sop = %rec.sop_instance_uid, from = from.uid(), to = to.uid(), from_name = from.name(), to_name = to.name(), stored_bytes = rec.dataset_size, sent_bytes = bytes.len(), "transcoded: the destination does not accept the original transfer syntax");
                        l.assoc
                            .c_store(pc, id, &rec.sop_class_uid, &rec.sop_instance_uid, &bytes)
                    }
                    Err(why) => {
                        warn!(destination = %cfg.name, sop = %rec.sop_instance_uid, "{why}");
                        results.push((job, Outcome::Dead(why)));
                        continue;
                    }
                }
            }
        };
        match sent {
            Ok(rsp) => {
                l.last_used = Instant::now();
                metrics.observe(sent_at.elapsed());
                let outcome = classify(rsp.status, rsp.error_comment.as_deref());
                match outcome {
                    Outcome::Delivered => {
                        if rsp.status != 0 {
                            warn!(destination = %cfg.name, sop = %rec.sop_instance_uid, status = format!("{:04X}", rsp.status), comment = rsp.error_comment.as_deref().unwrap_or(""), "delivered with a warning");
                        }
                        d.delivered.fetch_add(1, Ordering::AcqRel);
                        results.push((job, Outcome::Delivered));
                    }
                    Outcome::Retry(why) => {
                        // Out of resources for this object while the association stays up.
                        warn!(destination = %cfg.name, sop = %rec.sop_instance_uid, reason = %why, "C-STORE refused");
                        suspects.push((job, why));
                    }
                    other => {
                        warn!(destination = %cfg.name, sop = %rec.sop_instance_uid, outcome = ?other, "C-STORE refused");
                        results.push((job, other));
                    }
                }
            }
            Err(ScuError::Source(e)) => {
                // Our file is shorter than its index record says: the association was aborted
                // (the message could not be completed); retrying cannot help.
                let why = format!("the stored object {} is damaged: {e}", path.display());
                error!(destination = %cfg.name, "{why}");
                results.push((job, Outcome::Dead(why)));
                *link = None;
            }
            Err(e) => {
                // The association broke on this object: open a new one for the rest; whether
                // the failure is the object's own is decided once the batch is over.
                let why = link_failure(&e);
                warn!(destination = %cfg.name, sop = %rec.sop_instance_uid, error = %why, "C-STORE failed; the association is opened again for the objects behind it");
                if let Some(l) = link.take() {
                    l.assoc.abort();
                }
                suspects.push((job, why));
            }
        }
    }
    for (job, why) in suspects {
        let outcome = match d.strike(job.id, delivered_at_start) {
            Some(n) if n >= cfg.max_object_attempts => Outcome::Dead(format!(
                "gave up after {n} attempts that the destination aborted or refused while it \
                 accepted other objects (max_object_attempts = {}): {why}",
                cfg.max_object_attempts
            )),
            _ => Outcome::Retry(why),
        };
        results.push((job, outcome));
    }
    // Whatever was not attempted (we are stopping) waits again without being charged.
    (results, unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_contexts_are_proposed_once_per_class_unless_never() {
        let ct = "1.2.840.10008.5.1.4.1.1.2".to_owned();
        let mr = "1.2.840.10008.5.1.4.1.1.4".to_owned();
        let pairs = [
            (ct.clone(), "1.2.840.10008.1.2.1".to_owned()),
            (ct.clone(), "1.2.840.10008.1.2.4.70".to_owned()),
            (mr.clone(), "1.2.840.10008.1.2.4.90".to_owned()),
        ];
        let refs: Vec<&(String, String)> = pairs.iter().collect();
        let c = proposed_contexts(TranscodePolicy::Lossless, &refs);
        // The originals alone (verbatim when accepted), then CT's conversion context; none
        // for MR: JPEG 2000 cannot be converted.
        assert_eq!(c.len(), 4, "{c:?}");
        for (i, (class, ts)) in pairs.iter().enumerate() {
            assert_eq!(c[i], (class.clone(), vec![ts.clone()]));
        }
        assert_eq!(
            c[3],
            (
                ct,
                vec![
                    "1.2.840.10008.1.2.1".to_owned(),
                    "1.2.840.10008.1.2".to_owned()
                ]
            )
        );
        assert_eq!(proposed_contexts(TranscodePolicy::Never, &refs).len(), 3);
    }

    /// The queue's database fails a sync (EIO) while a worker records its results: redb
    /// latches, no later claim or record can succeed, and the forwarder records a vital
    /// failure (the daemon restarts) instead of retrying forever with `/readyz` at 200.
    #[test]
    fn a_queue_database_that_needs_reopening_is_a_vital_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(dir.path()).unwrap();
        let (backend, handle) = crate::store::crashdb::CrashBackend::from_image(Vec::new());
        let db = redb::Database::builder()
            .create_with_backend(backend)
            .unwrap();
        let index = Arc::new(crate::store::index::Index::from_database(db).unwrap());
        let tx = index.database().begin_write().unwrap();
        super::super::enqueue(&tx, "a", "1.2.3.4", 0).unwrap();
        tx.commit().unwrap();
        let health: &'static crate::health::Registry = Box::leak(Box::default());
        let fwd = Forwarder::start_in(Queue::new(index, false), data, Vec::new(), health).unwrap();
        handle.fail_sync_after(0);
        // Nobody listens there: the attempt fails at once and its result is recorded.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dest = crate::config::resolve_destination(
            crate::config::RawDestination {
                name: Some("a".into()),
                ae_title: Some("A".into()),
                host: Some("127.0.0.1".into()),
                port: Some(closed),
                ..Default::default()
            },
            "GW",
        )
        .unwrap();
        fwd.shared().upsert_destination(dest).unwrap();
        health.assert_fails_within("forwarding queue", Duration::from_secs(20));
        fwd.stop();
    }

    #[test]
    fn strikes_need_other_deliveries_since_the_first_failure() {
        let d = DestinationState {
            config: crate::config::resolve_destination(
                crate::config::RawDestination {
                    name: Some("a".into()),
                    ae_title: Some("A".into()),
                    host: Some("h".into()),
                    port: Some(104),
                    ..Default::default()
                },
                "GW",
            )
            .unwrap(),
            paused: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            hold_until_us: AtomicU64::new(0),
            bell: Mutex::new(0),
            rung: Condvar::new(),
            associations_opened: AtomicU64::new(0),
            delivered: AtomicU64::new(10),
            strikes: Mutex::new(HashMap::new()),
        };
        // Nothing delivered during the batch: not (yet) the object's fault.
        assert_eq!(d.strike(7, 10), None);
        // Another object delivered since: a strike, and the next failures too.
        d.delivered.fetch_add(1, Ordering::AcqRel);
        assert_eq!(d.strike(7, 11), Some(1));
        assert_eq!(d.strike(7, 11), Some(2));
        // A job failing in a batch where others went through counts at once.
        assert_eq!(d.strike(8, 10), Some(1));
        d.forget([7u64, 8].iter());
        assert!(d.strikes().is_empty());
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify(0x0000, None), Outcome::Delivered);
        assert_eq!(classify(0xB000, None), Outcome::Delivered);
        assert_eq!(classify(0xB007, Some("coerced")), Outcome::Delivered);
        assert_eq!(classify(0x0001, None), Outcome::Delivered);
        assert!(matches!(classify(0xA700, None), Outcome::Retry(_)));
        assert!(matches!(classify(0xA7FF, None), Outcome::Retry(_)));
        assert!(matches!(classify(0x0213, None), Outcome::Retry(_)));
        for s in [0x0122u16, 0xA900, 0xC000, 0xCFFF, 0x0111, 0x0211] {
            assert!(matches!(classify(s, None), Outcome::Dead(_)), "{s:04X}");
        }
        match classify(0xC001, Some("bad pixel data")) {
            Outcome::Dead(m) => assert!(m.contains("C001") && m.contains("bad pixel data"), "{m}"),
            o => panic!("{o:?}"),
        }
    }
}
