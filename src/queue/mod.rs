//! The forwarding queue: durable jobs in redb, their state machine and backoff.
//!
//! A job is "send object S to destination D". Jobs are created by ingest's checkpoint in the
//! same transaction as the object's index rows ([`enqueue`]), so an acknowledged object always
//! has its jobs. States: pending → in-flight → done (deleted at once; only counted) | retry at
//! *t* → … → dead (after the destination's maximum attempts, or at once for a permanent
//! refusal). Waiting jobs (pending and retry) share one table keyed `(destination, due, id)`:
//! the next due jobs of a destination are one range scan. In-flight jobs found at start-up go
//! back to waiting: delivery is at-least-once. Every operation takes the time as a parameter,
//! so the schedule is tested with a controllable clock.

pub mod forwarder;
pub mod live;
pub mod retention;
pub mod routing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::audit::AuditHook;
use crate::config::RetryPolicy;
use crate::db;
use crate::store::index::{Index, IndexError, InstanceRecord};

/// Errors of the queue layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The database failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A stored job does not decode.
    #[error("job {0} does not decode: {1}")]
    Decode(u64, postcard::Error),
    /// No such job (or not in the state the operation needs).
    #[error("{0}")]
    NotFound(String),
    /// The change's audit entry could not be written, so the change was not made.
    #[error("{}", crate::audit::not_made(.0))]
    Audit(String),
}

/// Runs a change's audit hook inside its transaction; an `Err` is returned before the commit,
/// so the transaction is dropped (aborted) and nothing changes.
fn audit_in<R>(tx: &WriteTransaction, r: &R, audit: impl AuditHook<R>) -> Result<(), QueueError> {
    audit(tx, r).map_err(|e| {
        tracing::error!(error = %e, "audit entry not written; the queue change is rolled back");
        QueueError::Audit(e)
    })
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self {
                QueueError::Index(IndexError::Db(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Unique, increasing job id.
    pub id: u64,
    /// Destination name.
    pub destination: String,
    /// Object to send.
    pub sop_instance_uid: String,
    /// Failed attempts so far (0 = pending, never tried).
    pub attempts: u32,
    /// Creation time, µs since the Unix epoch.
    pub created_at_us: u64,
    /// When the job is (or was last) due, µs since the Unix epoch.
    pub due_at_us: u64,
    /// Why the last attempt failed (empty if none did).
    pub last_error: String,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting, never tried.
    Pending,
    /// Waiting for its backoff after failed attempts.
    Retry,
    /// Claimed by a forwarder.
    InFlight,
    /// Given up; kept with its reason until retried.
    Dead,
}

impl JobState {
    /// Key in `QUEUE_COUNTS`.
    fn counter(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Retry => "retry",
            JobState::InFlight => "in_flight",
            JobState::Dead => "dead",
        }
    }

    fn waiting(attempts: u32) -> JobState {
        if attempts == 0 {
            JobState::Pending
        } else {
            JobState::Retry
        }
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(JobState::Pending),
            "retry" => Ok(JobState::Retry),
            "in-flight" | "in_flight" => Ok(JobState::InFlight),
            "dead" => Ok(JobState::Dead),
            _ => Err(format!("{s:?} is not pending, retry, in-flight or dead")),
        }
    }
}

/// What [`Queue::enqueue_study`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StudyEnqueued {
    /// Jobs created (or dead ones back to pending).
    pub queued: usize,
    /// Instances that already had a waiting or in-flight job for the destination.
    pub already_queued: usize,
}

/// A job with its state, as listed by the CLI and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The job.
    #[serde(flatten)]
    pub job: JobRecord,
    /// Its state.
    pub state: JobState,
}

pub use crate::metrics::DestinationStats;

/// The forwarder's doorbell, rung by ingest once new jobs are durable.
#[derive(Clone)]
pub struct Wake(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wake")
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination answered success or a warning.
    Delivered,
    /// A transient failure (connection, timeout, out of resources): try again later.
    Retry(String),
    /// A permanent refusal (context rejected, 0122, Cxxx): dead letter at once.
    Dead(String),
    /// Not attempted (the association broke earlier in the batch, or the forwarder is
    /// stopping): back to waiting, due now, no attempt charged.
    Unsent,
}

impl Outcome {
    /// The attempt's result as the metrics count it (`Unsent` was no attempt).
    pub fn counted(&self) -> Option<crate::metrics::ForwardResult> {
        use crate::metrics::ForwardResult as R;
        match self {
            Outcome::Delivered => Some(R::Delivered),
            Outcome::Retry(_) => Some(R::Retry),
            Outcome::Dead(_) => Some(R::Dead),
            Outcome::Unsent => None,
        }
    }
}

/// What [`Queue::finish`] recorded beyond the jobs' new states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    /// The earliest new due time of a retried job.
    pub earliest: Option<u64>,
    /// The jobs that went to the dead letters, as recorded.
    pub dead: Vec<JobRecord>,
}

/// A claimed job with the stored object it refers to (`None`: the object is gone).
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job.
    pub job: JobRecord,
    /// The object's index record.
    pub instance: Option<InstanceRecord>,
}

/// The delay before retry number `attempts` (1 = after the first failure): `initial ×
/// multiplier^(attempts-1)`, capped at `max`, then scaled into 80–100 % by `jitter` ∈ [0, 1)
/// so that jobs failed together do not all come back in the same instant, and never beyond
/// the cap.
pub fn retry_delay(p: &RetryPolicy, attempts: u32, jitter: f64) -> Duration {
    let exp = f64::from(attempts.saturating_sub(1).min(1000) as u16);
    let nominal = (p.initial.as_secs_f64() * p.multiplier.powf(exp)).min(p.max.as_secs_f64());
    Duration::from_secs_f64(nominal * (1.0 - 0.2 * jitter.clamp(0.0, 1.0)))
}

fn decode_job(id: u64, bytes: &[u8]) -> Result<JobRecord, QueueError> {
    postcard::from_bytes(bytes).map_err(|e| QueueError::Decode(id, e))
}

fn encode_job(job: &JobRecord) -> Vec<u8> {
    postcard::to_allocvec(job).expect("postcard encoding of plain records cannot fail")
}

type Counts<'t> = Table<'t, (&'static str, &'static str), u64>;

fn bump(counts: &mut Counts<'_>, dest: &str, state: &str, delta: i64) -> Result<(), QueueError> {
    let old = counts.get((dest, state))?.map(|g| g.value()).unwrap_or(0);
    let new = old.saturating_add_signed(delta);
    counts.insert((dest, state), new)?;
    Ok(())
}

/// Takes `n` consecutive job ids; returns the first.
fn next_ids(tx: &WriteTransaction, n: u64) -> Result<u64, QueueError> {
    let mut meta = tx.open_table(db::META)?;
    let id = meta.get("next_job_id")?.map(|g| g.value()).unwrap_or(1);
    meta.insert("next_job_id", id + n)?;
    Ok(id)
}

/// Routes an identical re-send of a stored object: a job for each of `dests` (the routes'
/// choice now) that has neither received the object nor a job for it (pending, in flight or
/// dead), inside the caller's transaction. Returns the destinations that got one. This is how
/// a modality's "send again" fixes a routing mistake without sending anything twice.
pub fn reroute(
    tx: &WriteTransaction,
    sop: &str,
    dests: &[String],
    now_us: u64,
) -> Result<Vec<String>, QueueError> {
    let mut added = Vec::new();
    if dests.is_empty() {
        return Ok(added);
    }
    let outstanding = tx
        .open_table(db::OUTSTANDING)?
        .get(sop)?
        .map_or(0, |g| g.value());
    if outstanding > 0 {
        ensure_job_index(tx)?;
    }
    let delivered = tx.open_table(db::DELIVERED)?;
    for dest in dests {
        if delivered.get((sop, dest.as_str()))?.is_some() {
            continue;
        }
        if outstanding > 0 && !jobs_of(tx, dest, sop)?.is_empty() {
            continue;
        }
        enqueue(tx, dest, sop, now_us)?;
        added.push(dest.clone());
    }
    Ok(added)
}

/// Moves dead job `id` of `dest` back to the queue, due now, with its attempts reset;
/// whether it was there.
fn revive_dead(
    dead: &mut redb::Table<(&str, u64), &[u8]>,
    queue: &mut redb::Table<(&str, u64, u64), &[u8]>,
    counts: &mut Counts<'_>,
    dest: &str,
    id: u64,
    now_us: u64,
) -> Result<bool, QueueError> {
    let Some(g) = dead.remove((dest, id))? else {
        return Ok(false);
    };
    let mut j = decode_job(id, g.value())?;
    drop(g);
    j.attempts = 0;
    j.due_at_us = now_us;
    queue.insert((dest, now_us, id), encode_job(&j).as_slice())?;
    bump(counts, dest, "dead", -1)?;
    bump(counts, dest, "pending", 1)?;
    Ok(true)
}

/// The ids of `dest`'s jobs for `sop` (pending, in flight or dead), from [`db::JOBS_OF`]
/// (the caller has run [`ensure_job_index`] in this transaction).
fn jobs_of(tx: &WriteTransaction, dest: &str, sop: &str) -> Result<Vec<u64>, QueueError> {
    let t = tx.open_table(db::JOBS_OF)?;
    let mut ids = Vec::new();
    for row in t.range((dest, sop, 0u64)..=(dest, sop, u64::MAX))? {
        ids.push(row?.0.value().2);
    }
    Ok(ids)
}

/// `META` flag: [`db::JOBS_OF`] holds every job.
const JOBS_OF_BUILT: &str = "jobs_of_built";

/// Builds [`db::JOBS_OF`] from the job tables if this database was written before it existed
/// (once: a flag in `META` says it is complete; the daemon also rebuilds it at every start,
/// [`Queue::mend_job_index`]). Every job change keeps it in step, so it can only lack jobs
/// written by an older version, which this adds. Returns how many jobs it indexed, `None` if
/// the index was complete.
fn ensure_job_index(tx: &WriteTransaction) -> Result<Option<usize>, QueueError> {
    let mut meta = tx.open_table(db::META)?;
    if meta.get(JOBS_OF_BUILT)?.is_some() {
        return Ok(None);
    }
    let mut index = tx.open_table(db::JOBS_OF)?;
    let mut n = 0;
    let mut add = |j: JobRecord| -> Result<(), QueueError> {
        index.insert(
            (j.destination.as_str(), j.sop_instance_uid.as_str(), j.id),
            (),
        )?;
        n += 1;
        Ok(())
    };
    for row in tx.open_table(db::QUEUE)?.iter()? {
        let (k, v) = row?;
        add(decode_job(k.value().2, v.value())?)?;
    }
    for row in tx.open_table(db::IN_FLIGHT)?.iter()? {
        let (k, v) = row?;
        add(decode_job(k.value(), v.value())?)?;
    }
    for row in tx.open_table(db::DEAD)?.iter()? {
        let (k, v) = row?;
        add(decode_job(k.value().1, v.value())?)?;
    }
    meta.insert(JOBS_OF_BUILT, 1)?;
    Ok(Some(n))
}

/// Adds a pending job "send `sop` to `dest`" inside the caller's transaction (a checkpoint's,
/// so jobs and index rows become durable together). Returns the job id.
pub fn enqueue(
    tx: &WriteTransaction,
    dest: &str,
    sop: &str,
    now_us: u64,
) -> Result<u64, QueueError> {
    let mut jobs = NewJobs::default();
    jobs.add(dest, sop);
    Ok(jobs.flush(tx, now_us)?.start)
}

/// Pending jobs that a writer of many objects in one transaction adds (the checkpoint: one
/// per object and destination), written by [`NewJobs::flush`] with each table opened once
/// rather than four table opens per job. Flush before anything in the transaction reads the
/// jobs ([`reroute`]) and before the commit.
#[derive(Debug, Default)]
pub struct NewJobs(Vec<(String, String)>);

impl NewJobs {
    /// A job "send `sop` to `dest`".
    pub fn add(&mut self, dest: &str, sop: &str) {
        self.0.push((dest.to_owned(), sop.to_owned()));
    }

    /// Writes the jobs added, due `now_us`, with consecutive ids in the order they were added
    /// (what one [`enqueue`] each would write), and forgets them. Returns their ids.
    pub fn flush(
        &mut self,
        tx: &WriteTransaction,
        now_us: u64,
    ) -> Result<std::ops::Range<u64>, QueueError> {
        if self.0.is_empty() {
            return Ok(0..0);
        }
        let n = self.0.len() as u64;
        let first = next_ids(tx, n)?;
        let mut queue = tx.open_table(db::QUEUE)?;
        let mut counts = tx.open_table(db::QUEUE_COUNTS)?;
        let mut out = tx.open_table(db::OUTSTANDING)?;
        let mut index = tx.open_table(db::JOBS_OF)?;
        for (id, (destination, sop_instance_uid)) in (first..).zip(self.0.drain(..)) {
            let job = JobRecord {
                id,
                destination,
                sop_instance_uid,
                attempts: 0,
                created_at_us: now_us,
                due_at_us: now_us,
                last_error: String::new(),
            };
            let (dest, sop) = (job.destination.as_str(), job.sop_instance_uid.as_str());
            queue.insert((dest, now_us, id), encode_job(&job).as_slice())?;
            index.insert((dest, sop, id), ())?;
            bump(&mut counts, dest, "pending", 1)?;
            let k = out.get(sop)?.map(|g| g.value()).unwrap_or(0);
            out.insert(sop, k + 1)?;
        }
        Ok(first..first + n)
    }
}

/// Records that the object received at `received_at_us` has no undelivered job left, for the
/// gateway-mode retention sweep.
pub fn mark_retirable(
    tx: &WriteTransaction,
    received_at_us: u64,
    sop: &str,
) -> Result<(), QueueError> {
    tx.open_table(db::RETIRABLE)?
        .insert((received_at_us, sop), ())?;
    Ok(())
}

/// The queue operations of forwarders, the CLI and the API, over the gateway database.
#[derive(Debug, Clone)]
pub struct Queue {
    index: Arc<Index>,
    retire_delivered: bool,
}

impl Queue {
    /// Wraps the database; `retire_delivered` (gateway-mode retention) records objects whose
    /// jobs are all delivered for the retention sweep.
    pub fn new(index: Arc<Index>, retire_delivered: bool) -> Self {
        Self {
            index,
            retire_delivered,
        }
    }

    /// Checks the job index ([`db::JOBS_OF`]) against the job tables and rebuilds it if they
    /// differ (the daemon's start-up): derived state made whole once per start, whatever
    /// changed the job tables without it (a version from before it existed, run on this
    /// database after a newer one). The check reads every job once, a lookup each, and writes
    /// nothing when the index is whole. Returns `None` if it was, else how many jobs the
    /// rebuilt index holds.
    pub fn mend_job_index(&self) -> Result<Option<usize>, QueueError> {
        if self.job_index_is_whole()? {
            return Ok(None);
        }
        let tx = self.index.database().begin_write()?;
        tx.delete_table(db::JOBS_OF)?;
        tx.open_table(db::META)?.remove(JOBS_OF_BUILT)?;
        let n = ensure_job_index(&tx)?.unwrap_or(0);
        tx.commit()?;
        Ok(Some(n))
    }

    /// Whether [`db::JOBS_OF`] is complete (flag set) and holds exactly the jobs of `QUEUE`,
    /// `IN_FLIGHT` and `DEAD`: each job has its row, and there are no more rows than jobs.
    fn job_index_is_whole(&self) -> Result<bool, QueueError> {
        let rtx = self
            .index
            .database()
            .begin_read()
            .map_err(IndexError::from)?;
        let flag = rtx.open_table(db::META).map_err(IndexError::from)?;
        if flag.get(JOBS_OF_BUILT).map_err(IndexError::from)?.is_none() {
            return Ok(false);
        }
        let index = match rtx.open_table(db::JOBS_OF) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(IndexError::from(e).into()),
        };
        let mut jobs = 0u64;
        let mut indexed = |j: JobRecord| -> Result<bool, QueueError> {
            jobs += 1;
            let key = (j.destination.as_str(), j.sop_instance_uid.as_str(), j.id);
            Ok(index.get(key).map_err(IndexError::from)?.is_some())
        };
        for row in rtx
            .open_table(db::QUEUE)
            .map_err(IndexError::from)?
            .iter()
            .map_err(IndexError::from)?
        {
            let (k, v) = row.map_err(IndexError::from)?;
            if !indexed(decode_job(k.value().2, v.value())?)? {
                return Ok(false);
            }
        }
        for row in rtx
            .open_table(db::IN_FLIGHT)
            .map_err(IndexError::from)?
            .iter()
            .map_err(IndexError::from)?
        {
            let (k, v) = row.map_err(IndexError::from)?;
            if !indexed(decode_job(k.value(), v.value())?)? {
                return Ok(false);
            }
        }
        for row in rtx
            .open_table(db::DEAD)
            .map_err(IndexError::from)?
            .iter()
            .map_err(IndexError::from)?
        {
            let (k, v) = row.map_err(IndexError::from)?;
            if !indexed(decode_job(k.value().1, v.value())?)? {
                return Ok(false);
            }
        }
        Ok(index.len().map_err(IndexError::from)? == jobs)
    }

    /// The index this queue lives beside.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Moves up to `max` jobs of `dest` that are due at `now_us` to in-flight and returns them
    /// with their objects' records, earliest first. The claim commits without an fsync: lost
    /// in a crash, the jobs are simply still waiting, which is where start-up would put them.
    pub fn claim(&self, dest: &str, now_us: u64, max: usize) -> Result<Vec<Claimed>, QueueError> {
        let mut tx = self.index.database().begin_write()?;
        tx.set_durability(redb::Durability::None)?;
        let mut claimed = Vec::new();
        {
            let mut q = tx.open_table(db::QUEUE)?;
            let mut keys = Vec::new();
            for row in q.range((dest, 0u64, 0u64)..=(dest, now_us, u64::MAX))? {
                let (k, v) = row?;
                let (_, due, id) = k.value();
                keys.push((due, id, decode_job(id, v.value())?));
                if keys.len() >= max {
                    break;
                }
            }
            let mut flight = tx.open_table(db::IN_FLIGHT)?;
            let mut counts = tx.open_table(db::QUEUE_COUNTS)?;
            let instances = tx.open_table(db::INSTANCES)?;
            for (due, id, job) in keys {
                q.remove((dest, due, id))?;
                flight.insert(id, encode_job(&job).as_slice())?;
                bump(
                    &mut counts,
                    dest,
                    JobState::waiting(job.attempts).counter(),
                    -1,
                )?;
                bump(&mut counts, dest, "in_flight", 1)?;
                let instance =
                    match instances.get(job.sop_instance_uid.as_str())? {
                        Some(g) => Some(postcard::from_bytes(g.value()).map_err(|e| {
                            IndexError::Decode {
                                key: job.sop_instance_uid.clone(),
                                source: e,
                            }
                        })?),
                        None => None,
                    };
                claimed.push(Claimed { job, instance });
            }
        }
        tx.commit()?;
        Ok(claimed)
    }

    /// When the earliest waiting job of `dest` is due (None: nothing waits).
    pub fn next_due(&self, dest: &str) -> Result<Option<u64>, QueueError> {
        let tx = self
            .index
            .database()
            .begin_read()
            .map_err(IndexError::from)?;
        let q = tx.open_table(db::QUEUE).map_err(IndexError::from)?;
        let first = q
            .range((dest, 0u64, 0u64)..=(dest, u64::MAX, u64::MAX))
            .map_err(IndexError::from)?
            .next();
        Ok(match first {
            Some(row) => Some(row.map_err(IndexError::from)?.0.value().1),
            None => None,
        })
    }

    /// Records how attempts ended, in one durable transaction: delivered jobs are deleted and
    /// counted, transient failures wait for their backoff (or die after `max_attempts`),
    /// permanent ones die at once. `jitter` yields values in [0, 1). Returns the earliest new
    /// due time of a retried job and the jobs that went to the dead letters (as recorded: with
    /// their attempts and reason), so the caller can log and count each one.
    pub fn finish(
        &self,
        results: Vec<(JobRecord, Outcome)>,
        policy: &RetryPolicy,
        now_us: u64,
        mut jitter: impl FnMut() -> f64,
    ) -> Result<Finished, QueueError> {
        let tx = self.index.database().begin_write()?;
        let mut earliest: Option<u64> = None;
        let mut dead_letters = Vec::new();
        {
            let mut flight = tx.open_table(db::IN_FLIGHT)?;
            let mut q = tx.open_table(db::QUEUE)?;
            let mut dead = tx.open_table(db::DEAD)?;
            let mut counts = tx.open_table(db::QUEUE_COUNTS)?;
            let mut out = tx.open_table(db::OUTSTANDING)?;
            let mut retirable = tx.open_table(db::RETIRABLE)?;
            let mut delivered = tx.open_table(db::DELIVERED)?;
            let mut index = tx.open_table(db::JOBS_OF)?;
            let instances = tx.open_table(db::INSTANCES)?;
            for (mut job, outcome) in results {
                let dest = job.destination.clone();
                if flight.remove(job.id)?.is_none() {
                    // Not ours any more (e.g. already finished): nothing to record.
                    continue;
                }
                bump(&mut counts, &dest, "in_flight", -1)?;
                match outcome {
                    Outcome::Delivered => {
                        bump(&mut counts, &dest, "done", 1)?;
                        let sop = job.sop_instance_uid.as_str();
                        delivered.insert((sop, dest.as_str()), now_us)?;
                        index.remove((dest.as_str(), sop, job.id))?;
                        let left = out.get(sop)?.map(|g| g.value()).unwrap_or(1);
                        if left <= 1 {
                            out.remove(sop)?;
                            if self.retire_delivered {
                                let received = instances.get(sop)?.and_then(|g| {
                                    postcard::from_bytes::<InstanceRecord>(g.value()).ok()
                                });
                                if let Some(rec) = received {
                                    retirable.insert((rec.received_at_us, sop), ())?;
                                }
                            }
                        } else {
                            out.insert(sop, left - 1)?;
                        }
                    }
                    Outcome::Retry(reason) if job.attempts + 1 < policy.max_attempts => {
                        job.attempts += 1;
                        let due =
                            now_us + retry_delay(policy, job.attempts, jitter()).as_micros() as u64;
                        job.due_at_us = due;
                        job.last_error = reason;
                        q.insert((dest.as_str(), due, job.id), encode_job(&job).as_slice())?;
                        bump(&mut counts, &dest, "retry", 1)?;
                        earliest = Some(earliest.map_or(due, |e| e.min(due)));
                    }
                    Outcome::Retry(reason) => {
                        job.attempts += 1;
                        job.last_error =
                            format!("gave up after {} attempts: {reason}", job.attempts);
                        job.due_at_us = now_us;
                        dead.insert((dest.as_str(), job.id), encode_job(&job).as_slice())?;
                        bump(&mut counts, &dest, "dead", 1)?;
                        dead_letters.push(job);
                    }
                    Outcome::Unsent => {
                        job.due_at_us = now_us;
                        q.insert((dest.as_str(), now_us, job.id), encode_job(&job).as_slice())?;
                        bump(
                            &mut counts,
                            &dest,
                            JobState::waiting(job.attempts).counter(),
                            1,
                        )?;
                    }
                    Outcome::Dead(reason) => {
                        job.attempts += 1;
                        job.last_error = reason;
                        job.due_at_us = now_us;
                        dead.insert((dest.as_str(), job.id), encode_job(&job).as_slice())?;
                        bump(&mut counts, &dest, "dead", 1)?;
                        dead_letters.push(job);
                    }
                }
            }
        }
        tx.commit()?;
        Ok(Finished {
            earliest,
            dead: dead_letters,
        })
    }

    /// Returns every in-flight job to waiting, due now (start-up: whatever was being sent when
    /// the process stopped is sent again). Returns how many.
    pub fn requeue_in_flight(&self, now_us: u64) -> Result<usize, QueueError> {
        let tx = self.index.database().begin_write()?;
        let mut n = 0;
        {
            let mut flight = tx.open_table(db::IN_FLIGHT)?;
            let mut q = tx.open_table(db::QUEUE)?;
            let mut counts = tx.open_table(db::QUEUE_COUNTS)?;
            while let Some((k, v)) = flight.pop_first()? {
                let id = k.value();
                let mut job = decode_job(id, v.value())?;
                drop((k, v));
                job.due_at_us = now_us;
                q.insert(
                    (job.destination.as_str(), now_us, id),
                    encode_job(&job).as_slice(),
                )?;
                bump(&mut counts, &job.destination, "in_flight", -1)?;
                bump(
                    &mut counts,
                    &job.destination,
                    JobState::waiting(job.attempts).counter(),
                    1,
                )?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Lists jobs, filtered by destination and state, at most `limit` (waiting jobs in due
    /// order, the others by id).
    pub fn list(
        &self,
        dest: Option<&str>,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<JobView>, QueueError> {
        let tx = self
            .index
            .database()
            .begin_read()
            .map_err(IndexError::from)?;
        let mut out = Vec::new();
        let want = |s: JobState| state.is_none_or(|w| w == s);
        let dest_ok = |d: &str| dest.is_none_or(|w| w == d);
        if want(JobState::Pending) || want(JobState::Retry) {
            let q = tx.open_table(db::QUEUE).map_err(IndexError::from)?;
            let rows = match dest {
                Some(d) => q.range((d, 0u64, 0u64)..=(d, u64::MAX, u64::MAX)),
                None => q.range::<(&str, u64, u64)>(..),
            }
            .map_err(IndexError::from)?;
            for row in rows {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = row.map_err(IndexError::from)?;
                let job = decode_job(k.value().2, v.value())?;
                let s = JobState::waiting(job.attempts);
                if want(s) {
                    out.push(JobView { job, state: s });
                }
            }
        }
        if want(JobState::InFlight) {
            let t = tx.open_table(db::IN_FLIGHT).map_err(IndexError::from)?;
            for row in t.iter().map_err(IndexError::from)? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = row.map_err(IndexError::from)?;
                let job = decode_job(k.value(), v.value())?;
                if dest_ok(&job.destination) {
                    out.push(JobView {
                        job,
                        state: JobState::InFlight,
                    });
                }
            }
        }
        if want(JobState::Dead) {
            let t = tx.open_table(db::DEAD).map_err(IndexError::from)?;
            let rows = match dest {
                Some(d) => t.range((d, 0u64)..=(d, u64::MAX)),
                None => t.range::<(&str, u64)>(..),
            }
            .map_err(IndexError::from)?;
            for row in rows {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = row.map_err(IndexError::from)?;
                out.push(JobView {
                    job: decode_job(k.value().1, v.value())?,
                    state: JobState::Dead,
                });
            }
        }
        Ok(out)
    }

    /// Counts per destination: every name in `known` (the configured destinations), plus any
    /// other name the counters hold (e.g. a destination since removed from the config).
    pub fn stats(&self, known: &[String]) -> Result<Vec<DestinationStats>, QueueError> {
        let tx = self
            .index
            .database()
            .begin_read()
            .map_err(IndexError::from)?;
        let mut by: BTreeMap<String, DestinationStats> = BTreeMap::new();
        for k in known {
            by.entry(k.clone()).or_default();
        }
        let counts = tx.open_table(db::QUEUE_COUNTS).map_err(IndexError::from)?;
        for row in counts.iter().map_err(IndexError::from)? {
            let (k, v) = row.map_err(IndexError::from)?;
            let (dest, state) = k.value();
            let s = by.entry(dest.to_owned()).or_default();
            let n = v.value();
            match state {
                "pending" => s.pending = n,
                "retry" => s.retry = n,
                "in_flight" => s.in_flight = n,
                "dead" => s.dead = n,
                "done" => s.done = n,
                _ => {}
            }
        }
        let paused = tx.open_table(db::PAUSED).map_err(IndexError::from)?;
        for (name, s) in by.iter_mut() {
            s.destination = name.clone();
            s.paused = paused
                .get(name.as_str())
                .map_err(IndexError::from)?
                .is_some();
        }
        Ok(by.into_values().collect())
    }

    /// Moves dead jobs of `dest` (all, or the one with id `job`) back to pending with their
    /// attempts reset, due now, audited (`audit`, given how many) in the same transaction.
    /// Returns how many.
    pub fn retry_dead(
        &self,
        dest: &str,
        job: Option<u64>,
        now_us: u64,
        audit: impl AuditHook<usize>,
    ) -> Result<usize, QueueError> {
        let tx = self.index.database().begin_write()?;
        let mut n = 0;
        {
            let mut dead = tx.open_table(db::DEAD)?;
            let mut q = tx.open_table(db::QUEUE)?;
            let mut counts = tx.open_table(db::QUEUE_COUNTS)?;
            let ids: Vec<u64> = match job {
                Some(id) => {
                    if dead.get((dest, id))?.is_none() {
                        return Err(QueueError::NotFound(format!(
                            "no dead job {id} for destination {dest}"
                        )));
                    }
                    vec![id]
                }
                None => dead
                    .range((dest, 0u64)..=(dest, u64::MAX))?
                    .map(|r| r.map(|(k, _)| k.value().1))
                    .collect::<Result<_, _>>()?,
            };
            for id in ids {
                if revive_dead(&mut dead, &mut q, &mut counts, dest, id, now_us)? {
                    n += 1;
                }
            }
        }
        audit_in(&tx, &n, audit)?;
        tx.commit()?;
        Ok(n)
    }

    /// Queues every stored instance of `study` for `dest` again, audited (`audit`, given how
    /// many jobs) in the same transaction. Scans the instance table (an operator action, not a
    /// hot path). Returns how many jobs were created.
    pub fn replay_study(
        &self,
        dest: &str,
        study: &str,
        now_us: u64,
        audit: impl AuditHook<usize>,
    ) -> Result<usize, QueueError> {
        // The scan runs in a read transaction: inside the write transaction it would hold the
        // index's one writer, and every C-STORE's commit, for as long as it takes (audit L5).
        let mut sops = Vec::new();
        {
            let rtx = self
                .index
                .database()
                .begin_read()
                .map_err(IndexError::from)?;
            let t = rtx.open_table(db::INSTANCES).map_err(IndexError::from)?;
            for row in t.iter().map_err(IndexError::from)? {
                let (k, v) = row.map_err(IndexError::from)?;
                let rec: InstanceRecord =
                    postcard::from_bytes(v.value()).map_err(|e| IndexError::Decode {
                        key: k.value().to_owned(),
                        source: e,
                    })?;
                if rec.study_instance_uid == study {
                    sops.push(rec.sop_instance_uid);
                }
            }
        }
        let tx = self.index.database().begin_write()?;
        {
            // Only what is still stored: an instance removed since the scan gets no job.
            let t = tx.open_table(db::INSTANCES)?;
            let mut still = Vec::with_capacity(sops.len());
            for sop in sops {
                if t.get(sop.as_str())?.is_some() {
                    still.push(sop);
                }
            }
            sops = still;
        }
        for sop in &sops {
            enqueue(&tx, dest, sop, now_us)?;
        }
        audit_in(&tx, &sops.len(), audit)?;
        tx.commit()?;
        Ok(sops.len())
    }

    /// Queues every indexed instance of `study` for `dest`: the admin API's study move
    /// (`POST /studies/{uid}/move`). Unlike [`Queue::replay_study`] it never doubles a job: an
    /// instance that already has a waiting or in-flight job for `dest` is counted in
    /// `already_queued` and left alone, and a dead job goes back to pending (attempts reset)
    /// instead of being joined by a second one, so pressing "move" twice sends each object
    /// once. Delivered objects are queued again: a move is an explicit request to send now.
    /// `None` if the study is not in the index. The study's instances come from one range
    /// scan of `QR_OBJECTS` in a read transaction (the write transaction, which holds the
    /// index's one writer, only checks them and adds the jobs), audited (`audit`) in the same
    /// write transaction.
    pub fn enqueue_study(
        &self,
        dest: &str,
        study: &str,
        now_us: u64,
        audit: impl AuditHook<StudyEnqueued>,
    ) -> Result<Option<StudyEnqueued>, QueueError> {
        let mut sops = Vec::new();
        {
            let rtx = self.index.database().begin_read()?;
            if rtx.open_table(db::STUDIES)?.get(study)?.is_none() {
                return Ok(None);
            }
            let t = rtx.open_table(db::QR_OBJECTS)?;
            for row in t.range((study, "", "")..)? {
                let (k, _) = row?;
                let (st, _, sop) = k.value();
                if st != study {
                    break;
                }
                sops.push(sop.to_owned());
            }
        }
        let tx = self.index.database().begin_write()?;
        ensure_job_index(&tx)?;
        let mut done = StudyEnqueued::default();
        {
            let instances = tx.open_table(db::INSTANCES)?;
            for sop in &sops {
                // Only what is still stored: an instance removed since the scan gets no job.
                if instances.get(sop.as_str())?.is_none() {
                    continue;
                }
                // Its jobs for `dest`: one waiting or in flight is left alone, a dead one is
                // revived, none gets a new one.
                let mut dead_one = None;
                let mut busy = false;
                let ids = jobs_of(&tx, dest, sop)?;
                {
                    let dead = tx.open_table(db::DEAD)?;
                    for id in ids {
                        if dead.get((dest, id))?.is_some() {
                            dead_one = Some(id);
                        } else {
                            busy = true;
                        }
                    }
                }
                if busy {
                    done.already_queued += 1;
                    continue;
                }
                match dead_one {
                    Some(id) => {
                        let revived = revive_dead(
                            &mut tx.open_table(db::DEAD)?,
                            &mut tx.open_table(db::QUEUE)?,
                            &mut tx.open_table(db::QUEUE_COUNTS)?,
                            dest,
                            id,
                            now_us,
                        )?;
                        if !revived {
                            continue;
                        }
                    }
                    None => {
                        enqueue(&tx, dest, sop, now_us)?;
                    }
                }
                done.queued += 1;
            }
        }
        audit_in(&tx, &done, audit)?;
        tx.commit()?;
        Ok(Some(done))
    }

    /// Pauses or resumes a destination (persisted), audited in the same transaction.
    pub fn set_paused(
        &self,
        dest: &str,
        paused: bool,
        audit: impl AuditHook<()>,
    ) -> Result<(), QueueError> {
        let tx = self.index.database().begin_write()?;
        {
            let mut t = tx.open_table(db::PAUSED)?;
            if paused {
                t.insert(dest, ())?;
            } else {
                t.remove(dest)?;
            }
        }
        audit_in(&tx, &(), audit)?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a destination is paused.
    pub fn is_paused(&self, dest: &str) -> Result<bool, QueueError> {
        let tx = self
            .index
            .database()
            .begin_read()
            .map_err(IndexError::from)?;
        let t = tx.open_table(db::PAUSED).map_err(IndexError::from)?;
        Ok(t.get(dest).map_err(IndexError::from)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::no_audit;
    use crate::store::attrs::IndexAttrs;

    const S: u64 = 1_000_000;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            max_attempts,
        }
    }

    /// A database with `n` stored instances of study 1.2 (SOP UIDs 1.2.3.<k>).
    fn setup(n: u32, retire: bool) -> (tempfile::TempDir, Queue) {
        let d = tempfile::tempdir().unwrap();
        let index = Arc::new(Index::open(&d.path().join("gateway.redb")).unwrap());
        let tx = index.database().begin_write().unwrap();
        for k in 1..=n {
            let rec = InstanceRecord {
                sop_instance_uid: format!("1.2.3.{k}"),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                study_instance_uid: "1.2".into(),
                series_instance_uid: "1.2.9".into(),
                instance_number: k.to_string(),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                file_size: 200,
                dataset_size: 10,
                dataset_blake3: String::new(),
                received_at_us: 7 * S + u64::from(k),
                calling_ae_title: "M".into(),
                called_ae_title: "GW".into(),
                path: format!("objects/1.2/1.2.9/1.2.3.{k}.dcm"),
            };
            let attrs = IndexAttrs {
                patient_id: "P".into(),
                study_instance_uid: "1.2".into(),
                series_instance_uid: "1.2.9".into(),
                ..Default::default()
            };
            crate::store::index::put_instance(&tx, &rec, &attrs, false).unwrap();
        }
        tx.commit().unwrap();
        (d, Queue::new(index, retire))
    }

    fn add_job(q: &Queue, dest: &str, sop: &str, now: u64) -> u64 {
        let tx = q.index().database().begin_write().unwrap();
        let id = enqueue(&tx, dest, sop, now).unwrap();
        tx.commit().unwrap();
        id
    }

    fn stats(q: &Queue, dest: &str) -> DestinationStats {
        q.stats(&[dest.to_owned()])
            .unwrap()
            .into_iter()
            .find(|s| s.destination == dest)
            .unwrap()
    }

    fn counts(s: &DestinationStats) -> [u64; 5] {
        [s.pending, s.retry, s.in_flight, s.dead, s.done]
    }

    /// [`db::JOBS_OF`] holds exactly the jobs of `QUEUE`, `IN_FLIGHT` and `DEAD`.
    fn assert_job_index_exact(q: &Queue) {
        let rtx = q.index().database().begin_read().unwrap();
        let mut want = Vec::new();
        for r in rtx.open_table(db::QUEUE).unwrap().iter().unwrap() {
            let (k, v) = r.unwrap();
            let j = decode_job(k.value().2, v.value()).unwrap();
            want.push((j.destination, j.sop_instance_uid, j.id));
        }
        for r in rtx.open_table(db::IN_FLIGHT).unwrap().iter().unwrap() {
            let (k, v) = r.unwrap();
            let j = decode_job(k.value(), v.value()).unwrap();
            want.push((j.destination, j.sop_instance_uid, j.id));
        }
        for r in rtx.open_table(db::DEAD).unwrap().iter().unwrap() {
            let (k, v) = r.unwrap();
            let j = decode_job(k.value().1, v.value()).unwrap();
            want.push((j.destination, j.sop_instance_uid, j.id));
        }
        want.sort();
        let mut have: Vec<(String, String, u64)> = rtx
            .open_table(db::JOBS_OF)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| {
                let (k, _) = r.unwrap();
                let (d, s, id) = k.value();
                (d.to_owned(), s.to_owned(), id)
            })
            .collect();
        have.sort();
        assert_eq!(have, want, "the job index differs from the job tables");
    }

    /// A database written before the job index existed (its jobs not in it, no flag) gets it
    /// built by the first reader, and then answers as the scan did: a destination with a
    /// waiting, in-flight or dead job is not routed again; the others are. The start-up
    /// rebuild mends an index that drifted from the job tables (rows of delivered jobs, jobs
    /// without rows: what an older version running on this database would leave).
    #[test]
    fn the_job_index_is_built_for_an_older_database_and_rebuilt_at_start() {
        let (_d, q) = setup(3, false);
        add_job(&q, "a", "1.2.3.1", 0);
        add_job(&q, "b", "1.2.3.1", 0);
        add_job(&q, "a", "1.2.3.2", 0);
        add_job(&q, "c", "1.2.3.2", 0);
        let claimed = q.claim("b", 1, 10).unwrap();
        assert_eq!(claimed.len(), 1);
        let c = q.claim("c", 1, 10).unwrap();
        let results = c
            .into_iter()
            .map(|cl| (cl.job, Outcome::Dead("no".into())))
            .collect();
        q.finish(results, &policy(3), 2, || 0.0).unwrap();
        // As an older version left it: no job index, no flag.
        let tx = q.index().database().begin_write().unwrap();
        tx.delete_table(db::JOBS_OF).unwrap();
        tx.open_table(db::META)
            .unwrap()
            .remove(JOBS_OF_BUILT)
            .unwrap();
        tx.commit().unwrap();
        let tx = q.index().database().begin_write().unwrap();
        let all = ["a", "b", "c", "d"].map(String::from);
        assert_eq!(reroute(&tx, "1.2.3.1", &all, 3).unwrap(), ["c", "d"]);
        assert_eq!(reroute(&tx, "1.2.3.2", &all, 3).unwrap(), ["b", "d"]);
        tx.commit().unwrap();
        assert_job_index_exact(&q);
        assert_eq!(q.mend_job_index().unwrap(), None);
        // Drift: a row for a job that no longer exists, a job whose row is gone.
        let tx = q.index().database().begin_write().unwrap();
        {
            let mut t = tx.open_table(db::JOBS_OF).unwrap();
            t.insert(("a", "1.2.3.3", 999), ()).unwrap();
            let (dest, sop, id) = {
                let (k, _) = t.first().unwrap().unwrap();
                let (d, s, id) = k.value();
                (d.to_owned(), s.to_owned(), id)
            };
            t.remove((dest.as_str(), sop.as_str(), id)).unwrap();
        }
        tx.commit().unwrap();
        assert_eq!(q.mend_job_index().unwrap(), Some(8));
        assert_job_index_exact(&q);
        assert_eq!(q.mend_job_index().unwrap(), None, "whole: nothing written");
    }

    /// Two jobs of one object for one destination (a replay doubles them): delivering one
    /// leaves the other indexed, so the object still counts as queued there.
    #[test]
    fn the_job_index_keeps_a_second_job_of_the_same_object() {
        let (_d, q) = setup(1, false);
        q.replay_study("a", "1.2", 1, no_audit).unwrap();
        q.replay_study("a", "1.2", 2, no_audit).unwrap();
        // Claims one job of "a" at `now` and records it delivered.
        let deliver_one = |now: u64| {
            let c = q.claim("a", now, 1).unwrap();
            assert_eq!(c.len(), 1);
            let results = c
                .into_iter()
                .map(|cl| (cl.job, Outcome::Delivered))
                .collect();
            q.finish(results, &policy(3), now + 1, || 0.0).unwrap();
        };
        deliver_one(3);
        assert_job_index_exact(&q);
        let r = q.enqueue_study("a", "1.2", 5, no_audit).unwrap().unwrap();
        assert_eq!((r.queued, r.already_queued), (0, 1));
        deliver_one(6);
        assert_job_index_exact(&q);
        let r = q.enqueue_study("a", "1.2", 8, no_audit).unwrap().unwrap();
        assert_eq!((r.queued, r.already_queued), (1, 0));
        assert_job_index_exact(&q);
    }

    /// An identical re-send is routed only to destinations that neither received the object
    /// nor hold a job for it; a replacement (new bytes) has been delivered nowhere.
    #[test]
    fn reroute_reaches_only_destinations_that_never_received_the_object() {
        let (_d, q) = setup(1, false);
        let sop = "1.2.3.1";
        let reroute_now = |dests: &[&str]| {
            let tx = q.index().database().begin_write().unwrap();
            let dests: Vec<String> = dests.iter().map(|d| d.to_string()).collect();
            let added = reroute(&tx, sop, &dests, S).unwrap();
            tx.commit().unwrap();
            added
        };
        add_job(&q, "a", sop, S);
        let c = q.claim("a", S, 10).unwrap();
        q.finish(
            vec![(c[0].job.clone(), Outcome::Delivered)],
            &policy(5),
            S,
            || 0.0,
        )
        .unwrap();
        assert_eq!(reroute_now(&["a", "b"]), vec!["b".to_owned()]);
        // b now has a pending job: a second re-send adds nothing.
        assert!(reroute_now(&["a", "b"]).is_empty());
        // A dead job counts as a job too (the operator retries it).
        add_job(&q, "c", sop, S);
        let c = q.claim("c", S, 10).unwrap();
        q.finish(
            vec![(c[0].job.clone(), Outcome::Dead("refused".into()))],
            &policy(5),
            S,
            || 0.0,
        )
        .unwrap();
        assert!(reroute_now(&["c"]).is_empty());
        // New bytes under the same UID: delivered nowhere.
        let tx = q.index().database().begin_write().unwrap();
        crate::store::index::forget_deliveries(&tx, sop).unwrap();
        tx.commit().unwrap();
        assert_eq!(reroute_now(&["a"]), vec!["a".to_owned()]);
        // A removed instance leaves no delivery behind.
        let tx = q.index().database().begin_write().unwrap();
        tx.open_table(db::DELIVERED)
            .unwrap()
            .insert((sop, "z"), 1)
            .unwrap();
        crate::store::index::remove_instance(&tx, sop).unwrap();
        assert!(tx
            .open_table(db::DELIVERED)
            .unwrap()
            .get((sop, "z"))
            .unwrap()
            .is_none());
        assert_job_index_exact(&q);
    }

    /// Every row of the job tables, for comparing two databases.
    fn job_rows(q: &Queue) -> Vec<String> {
        let rtx = q.index().database().begin_read().unwrap();
        let mut rows = Vec::new();
        for r in rtx.open_table(db::QUEUE).unwrap().iter().unwrap() {
            let (k, v) = r.unwrap();
            let (dest, due, id) = k.value();
            rows.push(format!(
                "queue {dest} {due} {id} {:?}",
                decode_job(id, v.value())
            ));
        }
        for r in rtx.open_table(db::QUEUE_COUNTS).unwrap().iter().unwrap() {
            let (k, v) = r.unwrap();
            rows.push(format!("count {:?} {}", k.value(), v.value()));
        }
        for r in rtx.open_table(db::OUTSTANDING).unwrap().iter().unwrap() {
            let (k, v) = r.unwrap();
            rows.push(format!("outstanding {} {}", k.value(), v.value()));
        }
        let next = rtx
            .open_table(db::META)
            .unwrap()
            .get("next_job_id")
            .unwrap();
        rows.push(format!("next {:?}", next.map(|g| g.value())));
        rows
    }

    /// The checkpoint writes its jobs together ([`NewJobs`]): the rows are those that one
    /// [`enqueue`] per job writes, over a batch that repeats objects and destinations and
    /// follows jobs already there.
    #[test]
    fn jobs_written_together_equal_jobs_written_one_at_a_time() {
        let jobs = [
            ("a", "1.2.3.1"),
            ("b", "1.2.3.1"),
            ("a", "1.2.3.2"),
            ("a", "1.2.3.1"),
            ("c", "1.2.3.3"),
        ];
        let (_d1, one) = setup(3, false);
        let (_d2, many) = setup(3, false);
        for q in [&one, &many] {
            add_job(q, "a", "1.2.3.2", S);
        }
        let tx = one.index().database().begin_write().unwrap();
        let ids: Vec<u64> = jobs
            .iter()
            .map(|(d, s)| enqueue(&tx, d, s, 2 * S).unwrap())
            .collect();
        tx.commit().unwrap();
        let tx = many.index().database().begin_write().unwrap();
        let mut batch = NewJobs::default();
        for (d, s) in jobs {
            batch.add(d, s);
        }
        let range = batch.flush(&tx, 2 * S).unwrap();
        assert_eq!(
            batch.flush(&tx, 2 * S).unwrap(),
            0..0,
            "flushed jobs are forgotten"
        );
        tx.commit().unwrap();
        assert_eq!(range.collect::<Vec<_>>(), ids);
        let rows = job_rows(&many);
        assert_eq!(rows, job_rows(&one));
        assert!(
            rows.contains(&"outstanding 1.2.3.1 3".to_owned()),
            "{rows:?}"
        );
        assert!(
            rows.contains(&"count (\"a\", \"pending\") 4".to_owned()),
            "{rows:?}"
        );
    }

    #[test]
    fn backoff_grows_by_the_multiplier_up_to_the_cap_with_bounded_jitter() {
        let p = policy(20);
        let secs: Vec<f64> = (1..=6)
            .map(|a| retry_delay(&p, a, 0.0).as_secs_f64())
            .collect();
        assert_eq!(secs, vec![5.0, 10.0, 20.0, 40.0, 60.0, 60.0]);
        for a in 1..=6 {
            let nominal = retry_delay(&p, a, 0.0);
            for j in [0.25, 0.5, 0.999] {
                let d = retry_delay(&p, a, j);
                assert!(d <= nominal && d >= nominal.mul_f64(0.8), "{a} {j} {d:?}");
            }
        }
        // Huge attempt counts neither overflow nor exceed the cap.
        assert_eq!(retry_delay(&p, u32::MAX, 0.0), Duration::from_secs(60));
    }

    /// The schedule, driven by an explicit clock: each failure makes the job due exactly at
    /// the backoff, never earlier; after `max_attempts` it is a dead letter with the reason.
    #[test]
    fn retry_schedule_follows_the_backoff_then_dead_letters() {
        let (_d, q) = setup(1, false);
        let p = policy(4);
        let t0 = 100 * S;
        add_job(&q, "a", "1.2.3.1", t0);
        assert_eq!(counts(&stats(&q, "a")), [1, 0, 0, 0, 0]);
        let mut now = t0;
        for (attempt, wait) in [(1u32, 5u64), (2, 10), (3, 20)] {
            let c = q.claim("a", now, 10).unwrap();
            assert_eq!(c.len(), 1, "attempt {attempt}");
            assert_eq!(c[0].job.attempts, attempt - 1);
            assert!(c[0].instance.is_some());
            assert_eq!(counts(&stats(&q, "a"))[2], 1, "in flight");
            let due = q
                .finish(
                    vec![(
                        c[0].job.clone(),
                        Outcome::Retry("connection refused".into()),
                    )],
                    &p,
                    now,
                    || 0.0,
                )
                .unwrap();
            assert_eq!(due.earliest, Some(now + wait * S));
            assert!(due.dead.is_empty());
            assert_eq!(counts(&stats(&q, "a")), [0, 1, 0, 0, 0]);
            assert_eq!(q.next_due("a").unwrap(), Some(now + wait * S));
            // One microsecond early: nothing to do.
            assert!(q.claim("a", now + wait * S - 1, 10).unwrap().is_empty());
            now += wait * S;
        }
        let c = q.claim("a", now, 10).unwrap();
        assert_eq!(c[0].job.attempts, 3);
        let f = q
            .finish(
                vec![(
                    c[0].job.clone(),
                    Outcome::Retry("connection refused".into()),
                )],
                &p,
                now,
                || 0.0,
            )
            .unwrap();
        // The exhausted retry is reported as a dead letter, with its attempts and reason.
        assert_eq!(f.earliest, None);
        assert_eq!(f.dead.len(), 1);
        assert_eq!(f.dead[0].attempts, 4);
        assert!(f.dead[0].last_error.starts_with("gave up after 4 attempts"));
        assert_eq!(counts(&stats(&q, "a")), [0, 0, 0, 1, 0]);
        let dead = q.list(Some("a"), Some(JobState::Dead), 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].job.attempts, 4);
        assert!(
            dead[0].job.last_error.contains("gave up after 4 attempts")
                && dead[0].job.last_error.contains("connection refused"),
            "{}",
            dead[0].job.last_error
        );
        assert_eq!(q.next_due("a").unwrap(), None);
        assert_job_index_exact(&q);
    }

    #[test]
    fn jitter_spreads_jobs_failed_together() {
        let (_d, q) = setup(3, false);
        let p = policy(10);
        for k in 1..=3 {
            add_job(&q, "a", &format!("1.2.3.{k}"), 0);
        }
        let c = q.claim("a", 0, 10).unwrap();
        let mut j = [0.0, 0.5, 0.99].into_iter();
        q.finish(
            c.into_iter()
                .map(|c| (c.job, Outcome::Retry("x".into())))
                .collect(),
            &p,
            0,
            || j.next().unwrap(),
        )
        .unwrap();
        let dues: Vec<u64> = q
            .list(Some("a"), Some(JobState::Retry), 10)
            .unwrap()
            .iter()
            .map(|v| v.job.due_at_us)
            .collect();
        assert_eq!(dues, vec![4_010_000, 4_500_000, 5 * S]);
    }

    #[test]
    fn delivery_permanent_failure_unsent_and_claim_order() {
        let (_d, q) = setup(4, true);
        let p = policy(5);
        for k in 1..=4u64 {
            add_job(&q, "a", &format!("1.2.3.{k}"), k);
        }
        add_job(&q, "b", "1.2.3.1", 0);
        // Only due jobs of the asked destination, earliest first, at most `max`.
        let c = q.claim("a", 3, 2).unwrap();
        let sops: Vec<&str> = c.iter().map(|c| c.job.sop_instance_uid.as_str()).collect();
        assert_eq!(sops, vec!["1.2.3.1", "1.2.3.2"]);
        let c2 = q.claim("a", 10, 10).unwrap();
        assert_eq!(c2.len(), 2);
        q.finish(
            vec![
                (c[0].job.clone(), Outcome::Delivered),
                (c[1].job.clone(), Outcome::Dead("status 0122".into())),
                (c2[0].job.clone(), Outcome::Unsent),
                (c2[1].job.clone(), Outcome::Delivered),
            ],
            &p,
            20,
            || 0.0,
        )
        .unwrap();
        assert_eq!(counts(&stats(&q, "a")), [1, 0, 0, 1, 2]);
        assert_eq!(counts(&stats(&q, "b")), [1, 0, 0, 0, 0]);
        let unsent = q.list(Some("a"), Some(JobState::Pending), 10).unwrap();
        assert_eq!(unsent[0].job.attempts, 0, "an unsent job is not charged");
        assert_eq!(unsent[0].job.due_at_us, 20);
        // Finishing a job twice records nothing the second time.
        q.finish(vec![(c[0].job.clone(), Outcome::Delivered)], &p, 30, || 0.0)
            .unwrap();
        assert_eq!(counts(&stats(&q, "a"))[4], 2);
        // Retention: 1.2.3.4 has no job left; 1.2.3.1 still has one for "b".
        let tx = q.index().database().begin_read().unwrap();
        let r = tx.open_table(db::RETIRABLE).unwrap();
        let keys: Vec<String> = r
            .iter()
            .unwrap()
            .map(|x| x.unwrap().0.value().1.to_owned())
            .collect();
        assert_eq!(keys, vec!["1.2.3.4"]);
        let o = tx.open_table(db::OUTSTANDING).unwrap();
        assert_eq!(o.get("1.2.3.1").unwrap().unwrap().value(), 1);
        assert_job_index_exact(&q);
    }

    #[test]
    fn in_flight_jobs_return_at_start_up_and_dead_ones_on_retry() {
        let (_d, q) = setup(2, false);
        let p = policy(5);
        add_job(&q, "a", "1.2.3.1", 0);
        add_job(&q, "a", "1.2.3.2", 0);
        let c = q.claim("a", 0, 10).unwrap();
        q.finish(
            vec![(c[1].job.clone(), Outcome::Dead("rejected".into()))],
            &p,
            1,
            || 0.0,
        )
        .unwrap();
        // "Crash" with c[0] in flight.
        assert_eq!(q.requeue_in_flight(50).unwrap(), 1);
        assert_eq!(counts(&stats(&q, "a")), [1, 0, 0, 1, 0]);
        assert_eq!(q.claim("a", 50, 10).unwrap().len(), 1);
        assert!(matches!(
            q.retry_dead("a", Some(999), 60, no_audit),
            Err(QueueError::NotFound(_))
        ));
        assert_eq!(q.retry_dead("a", None, 60, no_audit).unwrap(), 1);
        let again = q.claim("a", 60, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].job.attempts, 0, "attempts reset");
        assert_eq!(again[0].job.last_error, "rejected", "history kept");
        assert_job_index_exact(&q);
    }

    #[test]
    fn replay_pause_and_missing_objects() {
        let (_d, q) = setup(3, false);
        assert_eq!(q.replay_study("a", "1.2", 5, no_audit).unwrap(), 3);
        assert_eq!(q.replay_study("a", "9.9", 5, no_audit).unwrap(), 0);
        assert_eq!(counts(&stats(&q, "a")), [3, 0, 0, 0, 0]);
        assert!(!q.is_paused("a").unwrap());
        q.set_paused("a", true, no_audit).unwrap();
        assert!(stats(&q, "a").paused);
        q.set_paused("a", false, no_audit).unwrap();
        assert!(!q.is_paused("a").unwrap());
        add_job(&q, "a", "4.5.6", 6);
        let c = q.claim("a", 10, 10).unwrap();
        assert_eq!(c.len(), 4);
        assert!(c.iter().any(|c| c.instance.is_none()));
        assert_job_index_exact(&q);
    }

    /// A study move queues each instance once: again while its job waits or is in flight
    /// changes nothing, a dead job goes back to pending rather than getting a twin, a
    /// delivered object is sent again; an unknown study is `None`.
    #[test]
    fn enqueue_study_never_doubles_a_job() {
        let (_d, q) = setup(3, false);
        let r = q.enqueue_study("a", "1.2", 5, no_audit).unwrap().unwrap();
        assert_eq!((r.queued, r.already_queued), (3, 0));
        assert_eq!(counts(&stats(&q, "a")), [3, 0, 0, 0, 0]);
        let r = q.enqueue_study("a", "1.2", 6, no_audit).unwrap().unwrap();
        assert_eq!((r.queued, r.already_queued), (0, 3));
        assert_eq!(counts(&stats(&q, "a")), [3, 0, 0, 0, 0]);
        // Another destination is independent.
        let r = q.enqueue_study("b", "1.2", 6, no_audit).unwrap().unwrap();
        assert_eq!((r.queued, r.already_queued), (3, 0));
        assert!(q.enqueue_study("a", "9.9", 6, no_audit).unwrap().is_none());
        // Claimed (in flight) jobs count as queued; then one delivered, one dead, one retry.
        let c = q.claim("a", 10, 10).unwrap();
        assert_eq!(c.len(), 3);
        let r = q.enqueue_study("a", "1.2", 11, no_audit).unwrap().unwrap();
        assert_eq!((r.queued, r.already_queued), (0, 3));
        let p = policy(1);
        let outcomes = [
            Outcome::Delivered,
            Outcome::Dead("refused".into()),
            Outcome::Delivered,
        ];
        let results = c.into_iter().map(|cl| cl.job).zip(outcomes).collect();
        q.finish(results, &p, 12, || 0.0).unwrap();
        assert_eq!(counts(&stats(&q, "a")), [0, 0, 0, 1, 2]);
        let r = q.enqueue_study("a", "1.2", 13, no_audit).unwrap().unwrap();
        assert_eq!((r.queued, r.already_queued), (3, 0));
        assert_eq!(counts(&stats(&q, "a")), [3, 0, 0, 0, 2]);
        let jobs = q.claim("a", 14, 10).unwrap();
        let mut sops: Vec<&str> = jobs
            .iter()
            .map(|c| c.job.sop_instance_uid.as_str())
            .collect();
        sops.sort_unstable();
        assert_eq!(sops, ["1.2.3.1", "1.2.3.2", "1.2.3.3"]);
        assert_job_index_exact(&q);
    }

    /// A hook that appends a real audit entry (as the control operations' do).
    fn audited<R: std::fmt::Debug>(action: &'static str) -> impl AuditHook<R> {
        move |tx: &WriteTransaction, r: &R| {
            crate::audit::append(
                tx,
                1,
                &crate::audit::AuditEvent {
                    actor: "cli:alice",
                    source: "cli",
                    action,
                    details: serde_json::json!({ "result": format!("{r:?}") }),
                },
            )
            .map(drop)
        }
    }

    fn failing<R>(_: &WriteTransaction, _: &R) -> Result<(), String> {
        Err("disk on fire".into())
    }

    #[test]
    fn a_queue_change_and_its_audit_entry_commit_together_or_not_at_all() {
        let (_d, q) = setup(2, false);
        let db = q.index().database();
        let p = policy(1);
        add_job(&q, "a", "1.2.3.1", 0);
        let c = q.claim("a", 0, 10).unwrap();
        q.finish(
            vec![(c[0].job.clone(), Outcome::Dead("no".into()))],
            &p,
            1,
            || 0.0,
        )
        .unwrap();
        let before = counts(&stats(&q, "a"));
        assert_eq!(before, [0, 0, 0, 1, 0]);

        // A failing hook (an audit append that cannot be written): nothing changes.
        for e in [
            q.retry_dead("a", None, 5, failing).unwrap_err(),
            q.replay_study("a", "1.2", 5, failing).unwrap_err(),
            q.set_paused("a", true, failing).unwrap_err(),
        ] {
            assert!(
                matches!(&e, QueueError::Audit(m) if m == "disk on fire"),
                "{e}"
            );
            assert!(e.to_string().contains("the change was not made"), "{e}");
        }
        assert_eq!(counts(&stats(&q, "a")), before);
        assert!(!q.is_paused("a").unwrap());
        assert_eq!(crate::audit::count(db).unwrap(), 0);

        // A working one: each change and its entry, in one commit.
        assert_eq!(
            q.retry_dead("a", None, 5, audited("queue.retry")).unwrap(),
            1
        );
        assert_eq!(counts(&stats(&q, "a")), [1, 0, 0, 0, 0]);
        assert_eq!(
            q.replay_study("a", "1.2", 5, audited("queue.replay"))
                .unwrap(),
            2
        );
        assert_eq!(counts(&stats(&q, "a")), [3, 0, 0, 0, 0]);
        q.set_paused("a", true, audited("queue.pause")).unwrap();
        assert!(q.is_paused("a").unwrap());
        let log = crate::audit::list(db, 0, 10).unwrap();
        let got: Vec<_> = log
            .iter()
            .map(|e| (e.action.as_str(), e.details.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("queue.retry", r#"{"result":"1"}"#),
                ("queue.replay", r#"{"result":"2"}"#),
                ("queue.pause", r#"{"result":"()"}"#)
            ]
        );
        assert!(crate::audit::verify(db).unwrap().ok);
    }
}
