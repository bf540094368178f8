//! The journal writer: the thread (or threads: lanes) that turns the objects the cores
//! finished into journal groups, one write and one flush per group, and answers them once
//! that flush completed.
//!
//! Decisions come first, in journal order: whether the object is new, an identical re-send,
//! or a different object under a known SOP Instance UID (the duplicate policy), read from
//! the [overlay] of acknowledged but not yet indexed objects and then from
//! the index. They are written into the record, so replay repeats them. Then one append;
//! then every object of the group is answered, and the group goes to the materializer.
//!
//! One journal and one writer for all cores: every decision about a UID is taken in the order
//! the journal holds, so a re-send acknowledged on one core can never depend on a copy that
//! another core's journal failed to write. A group in flight collects the next one meanwhile,
//! so groups grow with load and an idle daemon answers after one flush. With more than one
//! lane (`[store] journal_groups_in_flight`) the next group is also *written* meanwhile; the
//! answers still go out in journal order (see `Lanes`).
//!
//! Faults: a failed write or flush poisons the journal. Nothing more is acknowledged (every
//! object is refused 0110 with a comment, `/readyz` says why); the failure is vital, so the
//! daemon stops and its next start replays what reached the disk. A full ring, or a backlog of
//! [`IngestConfig::max_pending_objects`](super::IngestConfig) acknowledged objects (held in
//! memory until their checkpoint), waits for the checkpoint (backpressure: the cores'
//! associations wait for their answers), and after
//! [`IngestConfig::full_wait`](super::IngestConfig) refuses A700.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::mailbox::Mailbox;
use super::overlay::{self, Undo};
use super::record::{Decision, RecordMeta};
use super::{Item, Shared};
use crate::config::{DuplicatePolicy, Durability};
use crate::metrics::JournalWait;
use crate::store::journal::{AlignedBuf, JournalError, RecordIn, Reserved, Storage};
use crate::store::sink::{Accepted, Body};
use crate::store::writer::remove_quietly;
use crate::store::{attrs::IndexAttrs, index::InstanceRecord, StoreError};

/// One finished object on its way into the journal.
#[derive(Debug)]
pub struct Incoming {
    /// The index record.
    pub record: InstanceRecord,
    /// Attributes for the patient/study/series rows.
    pub attrs: IndexAttrs,
    /// Destinations the routing rules chose.
    pub destinations: Vec<String>,
    /// Its bytes.
    pub body: Body,
    /// Where the dataset starts (the Part-10 header's length).
    pub dataset_offset: u64,
}

/// An object and where its answer goes.
pub(super) struct Entry {
    pub obj: Incoming,
    pub reply: oneshot::Sender<Result<Accepted, StoreError>>,
}

/// Bytes an entry adds to a group, an upper bound: record header, the meta section (the
/// record's and attributes' strings are bounded by their VRs: 4 KiB covers them; the
/// attribute list and routing values are counted), the inline bytes.
fn group_bytes(e: &Entry) -> u64 {
    let body = match &e.obj.body {
        Body::Inline(b) => b.len() as u64,
        Body::File(_) => 0,
    };
    let attrs = &e.obj.attrs;
    let extra: usize = attrs.extra.iter().map(|(_, v)| v.len() + 16).sum();
    48 + 4096 + (attrs.attributes.len() + extra) as u64 + body
}

/// Where the lanes meet: the submissions and the order groups are taken in (`front`, held
/// while a group is collected, decided and reserved), and the order they are answered in
/// (`back`).
struct Lanes<'a, S: Storage> {
    shared: &'a Shared<S>,
    mat: &'a Mailbox,
    root: Option<&'a std::fs::File>,
    front: Mutex<Front>,
    back: Mutex<Back>,
    answered: Condvar,
}

struct Front {
    rx: mpsc::Receiver<Entry>,
    carry: Option<Entry>,
    /// The ticket the next reserved group gets.
    ticket: u64,
    /// When a sync before an append last failed. A staged file begun before then may have
    /// lost a write-back that the failed sync reported (once) and no later one will, so its
    /// group is refused, not acknowledged.
    sync_failed_at: Option<std::time::SystemTime>,
}

struct Back {
    /// The ticket of the next group to answer.
    next: u64,
    /// Why the journal stopped (a failed write, flush or state write), once it has.
    poisoned: Option<String>,
}

/// Runs the journal writer: [`IngestConfig::groups_in_flight`](super::IngestConfig) lanes
/// (threads `journal`, `journal-2`, …). A lane collects what is queued, decides it and
/// reserves its place in the journal, all in journal order under one lock; then writes and
/// flushes it without the lock, while the next lane collects and writes the next group; then
/// answers it, in journal order, once every group before it was answered. With one lane
/// (the default) each group waits for the previous one's flush; with more, an object that
/// arrives during a flush is written at once, and the flushes overlap where the device lets
/// them (on the benchmark VM it did not pay: docs/benchmarks.md).
///
/// `root` is the data directory, opened before the first staged file this writer syncs was
/// written, and by this writer alone: `syncfs` reports a write-back error once to each
/// descriptor opened before it (see `checkpoint::Placer`).
pub(super) fn run<S: Storage + Send>(
    rx: mpsc::Receiver<Entry>,
    shared: Arc<Shared<S>>,
    mat: &Mailbox,
    root: std::io::Result<std::fs::File>,
) {
    let vital = crate::health::Vital::in_registry("journal writer", shared.cfg.health);
    let root = match root {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the data directory for syncfs");
            None
        }
    };
    let lanes = Lanes {
        shared: &shared,
        mat,
        root: root.as_ref(),
        front: Mutex::new(Front {
            rx,
            carry: None,
            ticket: 0,
            sync_failed_at: None,
        }),
        back: Mutex::new(Back {
            next: 0,
            poisoned: None,
        }),
        answered: Condvar::new(),
    };
    let n = shared.cfg.groups_in_flight.max(1);
    std::thread::scope(|scope| {
        for k in 2..=n {
            let lanes = &lanes;
            let started = std::thread::Builder::new()
                .name(format!("journal-{k}"))
                .spawn_scoped(scope, move || lanes.run());
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start another journal lane; fewer groups in flight");
            }
        }
        lanes.run();
    });
    // No core can submit any more: the materializer runs its last checkpoint and stops.
    mat.close();
    vital.done();
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One object's plan inside a group.
struct Plan {
    reply: oneshot::Sender<Result<Accepted, StoreError>>,
    outcome: Result<Accepted, StoreError>,
    /// The record to append (meta, and the inline bytes), if the object needs one.
    record: Option<(RecordMeta, Vec<u8>, Option<Bytes>, u64)>,
    staged: Option<PathBuf>,
}

fn refuse_all(batch: Vec<Entry>, err: impl Fn() -> StoreError) {
    for e in batch {
        e.obj.body.discard();
        let _ = e.reply.send(Err(err()));
    }
}

/// A group decided and reserved, to be written and answered by its lane.
struct Taken<G: crate::store::journal::Segment> {
    ticket: u64,
    plans: Vec<Plan>,
    undo: Undo,
    reserved: Reserved<G>,
    objects: usize,
    started: Instant,
}

impl<S: Storage + Send> Lanes<'_, S> {
    fn run(&self) {
        let mut buf = AlignedBuf::new(64 << 10);
        loop {
            let taken = {
                let mut front = lock(&self.front);
                let Some(batch) = self.collect(&mut front) else {
                    break;
                };
                let Some(taken) = self.take(&mut front, batch, &mut buf) else {
                    continue;
                };
                taken
            };
            let written = taken.reserved.write(&buf);
            self.answer(taken, written);
        }
    }

    /// The next group's objects: the first to arrive, then what is queued (or arrives within
    /// the window) up to the size limits. `None` once the cores are gone.
    fn collect(&self, front: &mut Front) -> Option<Vec<Entry>> {
        let first = match front.carry.take() {
            Some(e) => e,
            None => front.rx.recv().ok()?,
        };
        let limit = self.shared.max_group_bytes.saturating_sub(8192);
        let cfg = &self.shared.cfg;
        let mut bytes = group_bytes(&first);
        let mut batch = vec![first];
        let deadline = (!cfg.window.is_zero()).then(|| Instant::now() + cfg.window);
        while batch.len() < cfg.max_batch {
            let next = match deadline {
                Some(d) => front
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                    .ok(),
                None => front.rx.try_recv().ok(),
            };
            let Some(e) = next else { break };
            let b = group_bytes(&e);
            if bytes + b > limit {
                front.carry = Some(e);
                break;
            }
            bytes += b;
            batch.push(e);
        }
        Some(batch)
    }

    /// Decides a group and reserves its place (under the front lock: journal order). `None`
    /// when it was answered already (refused, or nothing to write).
    fn take(
        &self,
        front: &mut Front,
        batch: Vec<Entry>,
        buf: &mut AlignedBuf,
    ) -> Option<Taken<S::Segment>> {
        let shared = self.shared;
        let started = Instant::now();
        let objects = batch.len();
        if let Some(why) = lock(&self.back).poisoned.clone() {
            refuse_all(batch, || {
                StoreError::Io(format!(
                    "ingest journal unusable after a failed write ({why}); nothing is acknowledged until the daemon restarts and replays it"
                ))
            });
            return None;
        }
        let full = shared.cfg.durability == Durability::Full;
        let mut undo = Undo::default();
        let mut plans = Vec::with_capacity(batch.len());
        for e in batch {
            plans.push(plan(e, shared, &mut undo));
        }
        // Large objects' files must be on disk before a record names them.
        let staged = plans.iter().any(|p| p.staged.is_some());
        if staged && full {
            let synced = match (shared.cfg.sync, self.root) {
                (crate::config::SyncMethod::Fsync, _) => {
                    let files: Vec<PathBuf> =
                        plans.iter().filter_map(|p| p.staged.clone()).collect();
                    super::fsync_all(&files, &[shared.staged_dir()])
                }
                (_, Some(r)) => crate::store::syncfs(r),
                (_, None) => Err(std::io::Error::other("data directory not open")),
            };
            #[cfg(test)]
            let synced = synced.and_then(|()| {
                use std::sync::atomic::Ordering::SeqCst;
                let left = &shared.cfg.failing_syncs;
                match left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)) {
                    Ok(_) => Err(std::io::Error::from_raw_os_error(libc::EIO)),
                    Err(_) => Ok(()),
                }
            });
            if let Err(e) = synced {
                front.sync_failed_at = Some(std::time::SystemTime::now());
                tracing::error!(error = %e, "syncfs before the journal append failed; refusing the group");
                shared.overlay.undo(undo);
                fail(plans, || StoreError::from_io("syncfs", &e), true);
                return None;
            }
            let doubtful = front.sync_failed_at.is_some_and(|t| {
                plans
                    .iter()
                    .filter_map(|p| p.staged.as_deref())
                    .any(|f| super::begun_before(f, t))
            });
            if doubtful {
                tracing::error!(
                    "a large object's file was begun before a failed sync; refusing the group"
                );
                shared.overlay.undo(undo);
                fail(
                    plans,
                    || {
                        StoreError::Io("a disk write failed while this object was being received; send it again".into())
                    },
                    true,
                );
                return None;
            }
        }
        let ins: Vec<RecordIn<'_>> = plans
            .iter()
            .filter_map(|p| p.record.as_ref())
            .map(|(_, meta, bytes, off)| {
                let (header, dataset) = match bytes {
                    Some(b) => b.split_at(*off as usize),
                    None => (&[][..], &[][..]),
                };
                RecordIn {
                    flags: 0,
                    meta,
                    header,
                    dataset,
                }
            })
            .collect();
        let reserved = self.reserve(&ins, buf);
        drop(ins);
        match reserved {
            Ok(reserved) => {
                let ticket = front.ticket;
                front.ticket += 1;
                Some(Taken {
                    ticket,
                    plans,
                    undo,
                    reserved,
                    objects,
                    started,
                })
            }
            Err(None) => {
                shared.overlay.undo(undo);
                let msg = format!(
                    "{} acknowledged objects wait for the checkpoint (max_pending_objects)",
                    shared.cfg.max_pending_objects
                );
                fail(plans, || refusal(&msg, true), true);
                None
            }
            Err(Some(e)) => {
                shared.overlay.undo(undo);
                // A full ring, an oversized group, no room for a new lap's state: nothing
                // written, no poison.
                let full_ring = matches!(e, JournalError::Full);
                let nothing_written = e.wrote_nothing();
                if !nothing_written {
                    self.poisoned(&e);
                }
                let (msg, space) = (e.to_string(), full_ring || e.is_out_of_space());
                fail(plans, || refusal(&msg, space), nothing_written);
                None
            }
        }
    }

    /// Reserves the group's place, waiting for the checkpoint while the ring is full or the
    /// backlog at its bound (`Err(None)`: still at its bound when the wait ended).
    fn reserve(
        &self,
        ins: &[RecordIn<'_>],
        buf: &mut AlignedBuf,
    ) -> Result<Reserved<S::Segment>, Option<JournalError>> {
        let shared = self.shared;
        let deadline = Instant::now() + shared.cfg.full_wait;
        let mut journal = shared.journal();
        // Why and since when this group waits (it warns once), for the metrics at the end.
        let mut waiting: Option<(JournalWait, Instant)> = None;
        let bound = shared.cfg.max_pending_objects as u64;
        let waited = |w: Option<(JournalWait, Instant)>| {
            if let Some((why, since)) = w {
                crate::metrics::global().journal_waited(why, since.elapsed());
            }
        };
        loop {
            let backlog = shared.progress.pending() >= bound;
            let r = if backlog {
                Err(JournalError::Full)
            } else {
                journal.reserve(ins, buf)
            };
            match r {
                Err(JournalError::Full) if Instant::now() < deadline => {
                    if waiting.is_none() {
                        let (why, what) = if backlog {
                            (
                                JournalWait::MaxPendingObjects,
                                format!("{bound} objects wait for the checkpoint"),
                            )
                        } else {
                            (JournalWait::RingFull, "full".to_owned())
                        };
                        tracing::warn!(
                            "ingest journal {what}: waiting for the checkpoint (associations wait for their answers)"
                        );
                        shared.progress.problem(
                            "journal",
                            Some(format!("{what}: waiting for the checkpoint")),
                        );
                        waiting = Some((why, Instant::now()));
                    }
                    self.mat.hurry();
                    journal = shared
                        .released
                        .wait_timeout(journal, std::time::Duration::from_millis(100))
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                Err(JournalError::Full) if backlog => {
                    waited(waiting);
                    return Err(None);
                }
                r => {
                    waited(waiting);
                    if waiting.is_some() && r.is_ok() {
                        shared.progress.problem("journal", None);
                    }
                    return r.map_err(Some);
                }
            }
        }
    }

    /// The journal failed: it is poisoned, `/readyz` says so, every group not yet answered
    /// is refused, and the failure is recorded as vital: the daemon stops (exit status 1)
    /// and its supervisor starts it again, whose replay reads what reached the disk.
    /// Trusting the journal again in this process would need the same proof the replay
    /// gives; waiting for an operator would refuse every object meanwhile.
    fn poisoned(&self, e: &JournalError) {
        self.shared.journal().poison(e);
        let why = e.to_string();
        let mut back = lock(&self.back);
        if back.poisoned.is_none() {
            tracing::error!(error = %why, "ingest journal write failed: refusing every object; the daemon stops and its next start replays the journal");
            self.shared.progress.problem(
                "journal",
                Some(format!(
                    "write failed ({why}); the daemon stops and its next start replays the journal"
                )),
            );
            self.shared.cfg.health.fail(
                "ingest journal",
                &format!("write failed ({why}); the next start replays the journal"),
            );
            back.poisoned = Some(why);
        }
    }

    /// Answers a written group once every group reserved before it was answered: success
    /// only if its write and every earlier one succeeded.
    fn answer(&self, taken: Taken<S::Segment>, written: Result<(), JournalError>) {
        let Taken {
            ticket,
            mut plans,
            undo,
            reserved,
            objects,
            started,
        } = taken;
        let shared = self.shared;
        if let Err(e) = &written {
            self.poisoned(e);
        }
        let mut back = lock(&self.back);
        while back.next != ticket {
            back = self
                .answered
                .wait(back)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        match &back.poisoned {
            None => {
                let end = reserved.end;
                let count = plans.iter().filter(|p| p.record.is_some()).count() as u64;
                let mut seq = end.seq - count;
                let mut items = Vec::with_capacity(count as usize);
                let mut seqs = Vec::with_capacity(count as usize);
                for p in &mut plans {
                    if let Some((meta, _, bytes, _)) = p.record.take() {
                        if meta.decision == Decision::Place {
                            seqs.push((meta.record.sop_instance_uid.clone(), seq));
                        }
                        items.push(Item { seq, meta, bytes });
                        seq += 1;
                    }
                }
                shared.overlay.confirm(&seqs);
                if count > 0 {
                    shared.progress.acked(end.seq - 1);
                    self.mat.post(items, end);
                }
                for p in plans {
                    let _ = p.reply.send(p.outcome);
                }
            }
            Some(why) => {
                // This group or one before it failed: the journal may hold it (its staged
                // files stay for replay), but it is never answered success.
                shared.overlay.undo(undo);
                let msg = match &written {
                    Err(e) => e.to_string(),
                    Ok(()) => format!("an earlier journal write failed ({why})"),
                };
                let space = matches!(&written, Err(e) if e.is_out_of_space());
                fail(plans, || refusal(&msg, space), false);
            }
        }
        back.next += 1;
        drop(back);
        self.answered.notify_all();
        crate::metrics::global().commit_batch(objects, started.elapsed());
    }
}

/// What a group the journal could not take is answered: out of space (a full ring, ENOSPC:
/// A700) or an I/O failure (0110), with the journal's words.
fn refusal(msg: &str, out_of_space: bool) -> StoreError {
    if out_of_space {
        StoreError::DiskFull(msg.to_owned())
    } else {
        StoreError::Io(msg.to_owned())
    }
}

fn fail(plans: Vec<Plan>, err: impl Fn() -> StoreError, remove_staged: bool) {
    for p in plans {
        if remove_staged {
            if let Some(s) = &p.staged {
                remove_quietly(s);
            }
        }
        let out = match p.outcome {
            Ok(_) => Err(err()),
            Err(e) => Err(e),
        };
        let _ = p.reply.send(out);
    }
}

/// Decides what one object needs: a record (new, replacement, identical re-send), or only an
/// answer (kept existing, rejected).
fn plan<S: Storage>(e: Entry, shared: &Shared<S>, undo: &mut Undo) -> Plan {
    let Entry { obj, reply } = e;
    let done = |outcome: Result<Accepted, StoreError>, obj: &Incoming| {
        obj.body.discard();
        outcome
    };
    let sop = obj.record.sop_instance_uid.clone();
    let known = match shared.overlay.get(&sop) {
        Some(o) => Ok(Some((o.dataset_blake3, o.dataset_size))),
        None => shared
            .index
            .instance(&sop)
            .map(|r| r.map(|r| (r.dataset_blake3, r.dataset_size))),
    };
    let same =
        |(h, n): &(String, u64)| *h == obj.record.dataset_blake3 && *n == obj.record.dataset_size;
    let (decision, accepted) = match known {
        Err(e) => {
            let outcome = done(Err(StoreError::Index(e)), &obj);
            return Plan {
                reply,
                outcome,
                record: None,
                staged: None,
            };
        }
        Ok(None) => (Decision::Place, Accepted::Stored),
        Ok(Some(k)) if same(&k) => (Decision::Identical, Accepted::IdenticalDuplicate),
        Ok(Some(_)) => match shared.cfg.duplicate_policy {
            DuplicatePolicy::Keep => {
                let outcome = done(Ok(Accepted::KeptExisting), &obj);
                return Plan {
                    reply,
                    outcome,
                    record: None,
                    staged: None,
                };
            }
            DuplicatePolicy::Reject => {
                let outcome = done(Err(StoreError::Duplicate(sop)), &obj);
                return Plan {
                    reply,
                    outcome,
                    record: None,
                    staged: None,
                };
            }
            DuplicatePolicy::Replace => (Decision::Place, Accepted::Replaced),
        },
    };
    let (bytes, staged) = match obj.body {
        Body::Inline(b) => (Some(b), None),
        Body::File(temp) => {
            let name = temp
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let to = shared.staged_dir().join(&name);
            if let Err(e) = std::fs::rename(&temp, &to) {
                remove_quietly(&temp);
                let outcome = Err(StoreError::from_io("stage large object", &e));
                return Plan {
                    reply,
                    outcome,
                    record: None,
                    staged: None,
                };
            }
            (None, Some((name, to)))
        }
    };
    if decision == Decision::Place {
        shared.overlay.put(
            &sop,
            overlay::Entry {
                seq: 0,
                dataset_blake3: obj.record.dataset_blake3.clone(),
                dataset_size: obj.record.dataset_size,
            },
            undo,
        );
    }
    let meta = RecordMeta {
        record: obj.record,
        attrs: obj.attrs,
        destinations: obj.destinations,
        decision,
        staged: staged.as_ref().map(|(n, _)| n.clone()),
    };
    let encoded = meta.encode();
    Plan {
        reply,
        outcome: Ok(accepted),
        record: Some((meta, encoded, bytes, obj.dataset_offset)),
        staged: staged.map(|(_, p)| p),
    }
}
