//! The journal writer: one thread that turns the objects the cores finished into journal
//! groups, one write and one flush per group, and answers them once that flush completed.
//!
//! Decisions come first, in journal order: whether the object is new, an identical re-send,
//! or a different object under a known SOP Instance UID (the duplicate policy), read from
//! the [overlay](super::overlay) of acknowledged but not yet indexed objects and then from
//! the index. They are written into the record, so replay repeats them. Then one append;
//! then every object of the group is answered, and the group goes to the materializer.
//!
//! One journal and one writer for all cores: every decision about a UID is taken in the order
//! the journal holds, so a re-send acknowledged on one core can never depend on a copy that
//! another core's journal failed to write. A group in flight collects the next one meanwhile,
//! so groups grow with load and an idle daemon answers after one flush.
//!
//! Faults: a failed write or flush poisons the journal. Nothing more is acknowledged (every
//! object is refused 0110 with a comment, `/readyz` says why) until the process restarts
//! and recovery replays what reached the disk. A full ring waits for the checkpoint
//! (backpressure: the cores' associations wait for their answers), and after
//! [`IngestConfig::full_wait`](super::IngestConfig) refuses A700.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::overlay::{self, Undo};
use super::record::{Decision, RecordMeta};
use super::{Item, Msg, Shared};
use crate::config::{DuplicatePolicy, Durability};
use crate::store::journal::{JournalError, RecordIn, Storage};
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

pub(super) fn run<S: Storage>(
    rx: mpsc::Receiver<Entry>,
    shared: Arc<Shared<S>>,
    mat: mpsc::Sender<Msg>,
) {
    let vital = crate::health::Vital::new("journal writer");
    let root = match std::fs::File::open(shared.data.root()) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the data directory for syncfs");
            None
        }
    };
    let limit = shared.max_group_bytes.saturating_sub(8192);
    let mut poisoned: Option<String> = None;
    let mut carry: Option<Entry> = None;
    loop {
        let first = match carry.take() {
            Some(e) => e,
            None => match rx.recv() {
                Ok(e) => e,
                Err(_) => break,
            },
        };
        let mut bytes = group_bytes(&first);
        let mut batch = vec![first];
        let cfg = &shared.cfg;
        let deadline = (!cfg.window.is_zero()).then(|| Instant::now() + cfg.window);
        while batch.len() < cfg.max_batch {
            let next = match deadline {
                Some(d) => rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                    .ok(),
                None => rx.try_recv().ok(),
            };
            let Some(e) = next else { break };
            let b = group_bytes(&e);
            if bytes + b > limit {
                carry = Some(e);
                break;
            }
            bytes += b;
            batch.push(e);
        }
        let n = batch.len();
        let started = Instant::now();
        write_group(batch, &shared, &mat, root.as_ref(), &mut poisoned);
        crate::metrics::global().commit_batch(n, started.elapsed());
    }
    // No core can submit any more: let the materializer finish (it stops once every sender
    // of its channel is gone).
    shared.progress.stop_kicks();
    drop(mat);
    vital.done();
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

fn write_group<S: Storage>(
    batch: Vec<Entry>,
    shared: &Shared<S>,
    mat: &mpsc::Sender<Msg>,
    root: Option<&std::fs::File>,
    poisoned: &mut Option<String>,
) {
    if let Some(why) = poisoned {
        refuse_all(batch, || {
            StoreError::Io(format!(
                "ingest journal unusable after a failed write ({why}); nothing is acknowledged until the daemon restarts and replays it"
            ))
        });
        return;
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
        let synced = match (shared.cfg.sync, root) {
            (crate::config::SyncMethod::Fsync, _) => {
                let files: Vec<PathBuf> = plans.iter().filter_map(|p| p.staged.clone()).collect();
                super::fsync_all(&files, &[shared.staged_dir()])
            }
            (_, Some(r)) => crate::store::syncfs(r),
            (_, None) => Err(std::io::Error::other("data directory not open")),
        };
        if let Err(e) = synced {
            tracing::error!(error = %e, "syncfs before the journal append failed; refusing the group");
            shared.overlay.undo(undo);
            fail(plans, || StoreError::from_io("syncfs", &e), true);
            return;
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
    let appended = append(shared, mat, &ins);
    drop(ins);
    match appended {
        Ok(end) => {
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
                // The materializer only goes away at shutdown, after this thread.
                let _ = mat.send(Msg::Group { items, end });
            }
            for p in plans {
                let _ = p.reply.send(p.outcome);
            }
        }
        Err(e) => {
            shared.overlay.undo(undo);
            // Neither a full ring nor an oversized group wrote anything: no poison.
            let full_ring = matches!(e, JournalError::Full);
            let nothing_written = full_ring || matches!(e, JournalError::TooLarge { .. });
            if !nothing_written {
                let why = e.to_string();
                tracing::error!(error = %why, "ingest journal write failed: refusing every object until restart");
                shared.progress.problem(
                    "journal",
                    Some(format!(
                        "write failed ({why}); restart the daemon to replay the journal"
                    )),
                );
                *poisoned = Some(why);
            }
            let msg = e.to_string();
            // After a failed write the group may still be on disk (and replay would need its
            // staged files); after a full ring nothing was written.
            fail(
                plans,
                || {
                    if full_ring || e.is_out_of_space() {
                        StoreError::DiskFull(msg.clone())
                    } else {
                        StoreError::Io(msg.clone())
                    }
                },
                nothing_written,
            );
        }
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

/// Appends, waiting for the checkpoint while the ring is full.
fn append<S: Storage>(
    shared: &Shared<S>,
    mat: &mpsc::Sender<Msg>,
    ins: &[RecordIn<'_>],
) -> Result<crate::store::journal::Position, JournalError> {
    let deadline = Instant::now() + shared.cfg.full_wait;
    let mut journal = shared.journal();
    let mut warned = false;
    loop {
        match journal.append_group(ins) {
            Err(JournalError::Full) if Instant::now() < deadline => {
                if !warned {
                    tracing::warn!("ingest journal full: waiting for the checkpoint (associations wait for their answers)");
                    shared
                        .progress
                        .problem("journal", Some("full: waiting for the checkpoint".into()));
                    warned = true;
                }
                let _ = mat.send(Msg::Hurry);
                journal = shared
                    .released
                    .wait_timeout(journal, std::time::Duration::from_millis(100))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            r => {
                if warned && r.is_ok() {
                    shared.progress.problem("journal", None);
                }
                return r;
            }
        }
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
