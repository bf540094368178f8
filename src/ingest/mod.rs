//! The ingest pipeline behind the storage service (issue 12): record building, routing,
//! duplicate policy, durability and indexing, built on a write-ahead journal.
//!
//! ```text
//!  cores ──submit──▶ journal writer ──group: one write + one flush──▶ answers
//!                        │ (decisions in journal order, overlay)
//!                        └──▶ materializer ──checkpoint: files, syncfs, one redb commit──▶ index
//! ```
//! A C-STORE is answered once its group is durable in the journal ([`group`]); files under
//! `objects/`, index rows and forward jobs follow at the next checkpoint ([`checkpoint`]),
//! a few hundred milliseconds later. Until then the [`overlay`] answers duplicate decisions,
//! and readers that must see every acknowledged object (the admin API) wait for the
//! checkpoint that covers them ([`Settle`]). Start-up replays the journal before anything is
//! served ([`checkpoint::recover`]).
//!
//! [`Pipeline`] implements [`ObjectSink`], the interface the storage service is given, so
//! the network side imports none of this.

pub mod checkpoint;
pub mod group;
mod mailbox;
pub mod overlay;
pub mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use dicom_core::Tag;
use tokio::sync::{oneshot, watch};

use crate::clock::timestamp_us;
use crate::config::{DuplicatePolicy, Durability, SyncMethod};
use crate::metrics::DuplicateOutcome;
use crate::queue::routing::{RouteInput, Routing};
use crate::queue::Wake;
use crate::store::index::{Index, IndexError, InstanceRecord};
use crate::store::journal::{Journal, JournalConfig, JournalError, Storage};
use crate::store::sink::{Accepted, ObjectSink, ReceivedObject, SinkSnapshot, Submission};
use crate::store::{DataDir, StoreError};

pub use checkpoint::Recovered;
pub use group::Incoming;

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `Full`: a group is flushed before it is answered. `Relaxed`: not.
    pub durability: Durability,
    /// What to do with a second, different object under an existing SOP Instance UID.
    pub duplicate_policy: DuplicatePolicy,
    /// Most objects in one journal group.
    pub max_batch: usize,
    /// Journal groups written at once (lanes of the journal writer; 1 = each group waits
    /// for the previous one's flush).
    pub groups_in_flight: usize,
    /// Extra time to wait for more objects once one arrived (0 = take what is queued).
    pub window: Duration,
    /// Gateway-mode retention: an object no route sends anywhere is retirable at once.
    pub retire_unrouted: bool,
    /// Rung with a destination's name once a checkpoint created jobs for it.
    pub wake: Option<Wake>,
    /// Longest time an acknowledged object waits for its checkpoint.
    pub checkpoint_interval: Duration,
    /// A checkpoint starts at once when this many objects wait.
    pub checkpoint_objects: usize,
    /// Most acknowledged objects waiting for their checkpoint: each holds its bytes and its
    /// index rows in memory until then, so past this the journal writer waits for the
    /// checkpoint as it does for a full ring.
    pub max_pending_objects: usize,
    /// How long a group waits for room in a full journal before it is refused A700.
    pub full_wait: Duration,
    /// How files are made durable (checkpoints, large objects before their record).
    pub sync: SyncMethod,
    /// Where in-memory objects' buffers go once their files are written (the pool the
    /// storage service's writers take from).
    pub buffers: &'static crate::store::buffers::BufferPool,
    /// After this long without objects the pool's idle buffers are freed; under load, every
    /// this long, those no object needed meanwhile.
    pub trim_buffers_after: Duration,
    /// Where a vital failure is recorded: a journal that failed a write or flush, an index
    /// that needs reopening, a thread of ours that ended early. The daemon's registry stops
    /// the daemon (exit status 1, so its supervisor starts it again and the replay
    /// recovers); tests give each pipeline its own.
    pub health: &'static crate::health::Registry,
    /// Tests: this many of the journal writer's next syncs of large objects' files fail
    /// with EIO (after syncing), as a disk's write-back error would make them.
    #[cfg(test)]
    pub(crate) failing_syncs: Arc<std::sync::atomic::AtomicUsize>,
}

impl IngestConfig {
    /// Defaults around the given durability and policy.
    pub fn new(durability: Durability, duplicate_policy: DuplicatePolicy) -> Self {
        Self {
            durability,
            duplicate_policy,
            max_batch: 1024,
            groups_in_flight: 1,
            window: Duration::ZERO,
            retire_unrouted: false,
            wake: None,
            checkpoint_interval: Duration::from_millis(250),
            checkpoint_objects: 4096,
            max_pending_objects: 65_536,
            full_wait: Duration::from_secs(30),
            sync: SyncMethod::Syncfs,
            buffers: crate::store::buffers::BufferPool::objects(),
            trim_buffers_after: Duration::from_secs(1),
            health: crate::health::global(),
            #[cfg(test)]
            failing_syncs: Arc::default(),
        }
    }
}

/// Errors of start-up and recovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The journal could not be opened or replayed.
    #[error("ingest journal: {0}")]
    Journal(#[from] JournalError),
    /// The index could not be read or written.
    #[error("index: {0}")]
    Index(#[from] IndexError),
    /// A checkpoint during recovery failed.
    #[error("recovery checkpoint: {0}")]
    Store(#[from] StoreError),
    /// Anything else (a directory, a thread).
    #[error("{0}")]
    Io(String),
}

/// `<data>/journal/staged/`: large objects' files between their journal record and their
/// checkpoint.
pub fn staged_dir(data: &DataDir) -> PathBuf {
    data.root().join("journal").join("staged")
}

/// One journaled object on its way to the checkpoint.
#[derive(Debug, Clone)]
pub struct Item {
    /// Its journal sequence number.
    pub seq: u64,
    /// Record, attributes, routing and decision.
    pub meta: record::RecordMeta,
    /// The whole file (Part-10 header and dataset); `None` for a staged large object.
    pub bytes: Option<Bytes>,
}

/// Progress shared with readers, metrics and `/readyz`.
#[derive(Debug)]
pub struct Progress {
    acked: AtomicU64,
    materialized: watch::Sender<u64>,
    /// The materializer's mailbox, to ask it for a checkpoint now.
    kick: Mutex<Option<Arc<mailbox::Mailbox>>>,
    problems: Mutex<BTreeMap<&'static str, String>>,
}

impl Progress {
    fn new(start: u64) -> Self {
        Self {
            acked: AtomicU64::new(start),
            materialized: watch::Sender::new(start),
            kick: Mutex::new(None),
            problems: Mutex::new(BTreeMap::new()),
        }
    }

    fn acked(&self, seq: u64) {
        self.acked.store(seq, Ordering::Release);
        self.gauges();
    }

    fn materialized(&self, seq: u64) {
        self.materialized.send_replace(seq);
        self.gauges();
    }

    fn gauges(&self) {
        let pending = self
            .acked
            .load(Ordering::Acquire)
            .saturating_sub(*self.materialized.borrow());
        crate::metrics::global().journal_pending(pending);
    }

    fn problem(&self, what: &'static str, message: Option<String>) {
        let mut p = self
            .problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match message {
            Some(m) => p.insert(what, m),
            None => p.remove(what),
        };
    }

    /// `Ok` while the journal accepts objects and checkpoints succeed; else what is wrong.
    pub fn readiness(&self) -> Result<(), String> {
        let p = self
            .problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if p.is_empty() {
            return Ok(());
        }
        Err(p
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; "))
    }

    /// Objects acknowledged but not yet indexed.
    pub fn pending(&self) -> u64 {
        self.acked
            .load(Ordering::Acquire)
            .saturating_sub(*self.materialized.borrow())
    }
}

/// How long an admin API read or a control-socket request waits for the checkpoint.
pub const READ_WAIT: Duration = Duration::from_secs(10);

/// Lets a reader wait until every object acknowledged before it asked is indexed.
#[derive(Debug, Clone)]
pub struct Settle {
    progress: Arc<Progress>,
}

impl Settle {
    /// Waits (at most `limit`) for the checkpoint covering every object acknowledged so far,
    /// asking the materializer to run it now. Returns whether it came.
    pub async fn settle(&self, limit: Duration) -> bool {
        let target = self.progress.acked.load(Ordering::Acquire);
        let mut rx = self.progress.materialized.subscribe();
        if *rx.borrow() >= target {
            return true;
        }
        if let Some(k) = self
            .progress
            .kick
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            k.hurry();
        }
        let waited = tokio::time::timeout(limit, rx.wait_for(|m| *m >= target)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// The shared progress (for `/readyz` and tests).
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }
}

/// State shared by the writer, the materializer and the pipeline.
pub(crate) struct Shared<S: Storage> {
    journal: Mutex<Journal<S>>,
    /// Notified after every release of journal segments.
    released: Condvar,
    overlay: overlay::Overlay,
    index: Arc<Index>,
    data: DataDir,
    cfg: IngestConfig,
    progress: Arc<Progress>,
    max_group_bytes: u64,
    ring_bytes: u64,
}

impl<S: Storage> Shared<S> {
    fn journal(&self) -> MutexGuard<'_, Journal<S>> {
        self.journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn staged_dir(&self) -> PathBuf {
        staged_dir(&self.data)
    }
}

/// The running pipeline: its submit handle, its threads, what readers need.
pub struct Ingest {
    /// The storage service's sink (clone it into every port).
    pub pipeline: Pipeline,
    /// For readers that must see every acknowledged object.
    pub settle: Settle,
    /// What recovery did at start-up.
    pub recovered: Recovered,
    #[cfg(test)]
    health: &'static crate::health::Registry,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Ingest {
    /// Recovers the journal in `storage` (replaying and indexing what the last run
    /// acknowledged), then starts the journal writer and the materializer.
    pub fn start<S: Storage + Send + 'static>(
        storage: S,
        jcfg: JournalConfig,
        index: Arc<Index>,
        data: DataDir,
        cfg: IngestConfig,
        routing: Arc<ArcSwap<Routing>>,
    ) -> Result<Ingest, IngestError>
    where
        S::Segment: Send,
    {
        let started = std::time::Instant::now();
        // Before anything it will sync is written, the replay's files included.
        let mut placer = checkpoint::Placer::new(&data)
            .map_err(|e| IngestError::Io(format!("open {}: {e}", data.root().display())))?;
        let (journal, recovered) =
            checkpoint::recover(storage, jcfg.clone(), &index, &data, &cfg, &mut placer)?;
        if recovered.records > 0 {
            tracing::info!(
                records = recovered.records,
                groups = recovered.groups,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "journal replayed: objects acknowledged before the last stop are indexed"
            );
        }
        let start = journal.position().seq - 1;
        let progress = Arc::new(Progress::new(start));
        let shared = Arc::new(Shared {
            max_group_bytes: jcfg.max_group_bytes,
            ring_bytes: jcfg.segment_size * u64::from(jcfg.segment_count),
            journal: Mutex::new(journal),
            released: Condvar::new(),
            overlay: overlay::Overlay::default(),
            index,
            data,
            cfg,
            progress: progress.clone(),
        });
        let (tx, rx) = mpsc::channel::<group::Entry>();
        let mail = Arc::new(mailbox::Mailbox::new(
            shared.cfg.checkpoint_objects,
            shared.ring_bytes / 4,
        ));
        *progress
            .kick
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(mail.clone());
        let (s, m) = (shared.clone(), mail.clone());
        let materializer = std::thread::Builder::new()
            .name("materializer".into())
            .spawn(move || {
                // Background work: ingest answers first.
                crate::rt::lower_thread_priority(10);
                checkpoint::run(&m, s, placer)
            })
            .map_err(|e| IngestError::Io(format!("start the materializer: {e}")))?;
        #[cfg(test)]
        let health = shared.cfg.health;
        let s = shared.clone();
        let root = std::fs::File::open(shared.data.root());
        let writer = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || group::run(rx, s, &mail, root))
            .map_err(|e| IngestError::Io(format!("start the journal writer: {e}")))?;
        Ok(Ingest {
            pipeline: Pipeline { tx, routing },
            settle: Settle { progress },
            recovered,
            #[cfg(test)]
            health,
            threads: vec![writer, materializer],
        })
    }

    /// Waits for both threads; call after every [`Pipeline`] clone is dropped (the writer
    /// then drains, the materializer runs its last checkpoint).
    pub fn join(self) {
        drop(self.pipeline);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Whether the file at `path` was begun at or before `t` (its birth time where the
/// filesystem keeps one, else its last change). After a failed sync at `t`, such a file may
/// have lost a write-back that no later sync reports.
pub(crate) fn begun_before(path: &Path, t: std::time::SystemTime) -> bool {
    let Ok(m) = std::fs::metadata(path) else {
        return true;
    };
    m.created()
        .or_else(|_| m.modified())
        .map_or(true, |b| b <= t)
}

/// The journal configuration the daemon uses for `data`.
pub fn journal_config(segments: u32, segment_size: u64, durability: Durability) -> JournalConfig {
    JournalConfig {
        segment_count: segments,
        segment_size,
        max_group_bytes: segment_size.min(16 << 20),
        durability,
    }
}

/// Makes `files` (their data) and `dirs` (their entries) durable with `fdatasync`/`fsync`,
/// several at a time: concurrent flushes share the filesystem's journal commits.
pub fn fsync_all(files: &[PathBuf], dirs: &[PathBuf]) -> std::io::Result<()> {
    let work: Vec<(&Path, bool)> = files
        .iter()
        .map(|f| (f.as_path(), false))
        .chain(dirs.iter().map(|d| (d.as_path(), true)))
        .collect();
    if work.is_empty() {
        return Ok(());
    }
    let threads = work.len().clamp(1, 8);
    let chunk = work.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = work
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || -> std::io::Result<()> {
                    for (p, dir) in c {
                        let f = std::fs::File::open(p)?;
                        if *dir {
                            f.sync_all()?;
                        } else {
                            f.sync_data()?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked")))
        })
    })
}

/// `<data>/journal/core-0`.
pub fn journal_path(data: &Path) -> PathBuf {
    crate::store::journal::journal_dir(data, 0)
}

/// Routing plus the journal: the storage service's [`ObjectSink`].
#[derive(Debug, Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<group::Entry>,
    routing: Arc<ArcSwap<Routing>>,
}

impl std::fmt::Debug for group::Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entry")
    }
}

impl ObjectSink for Pipeline {
    fn snapshot(&self) -> Arc<dyn SinkSnapshot> {
        Arc::new(Snapshot {
            tx: self.tx.clone(),
            routing: self.routing.load_full(),
        })
    }
}

struct Snapshot {
    tx: mpsc::Sender<group::Entry>,
    routing: Arc<Routing>,
}

impl SinkSnapshot for Snapshot {
    fn wanted_tags(&self) -> &[Tag] {
        self.routing.wanted_tags()
    }

    fn submit(&self, obj: ReceivedObject) -> Submission {
        let attrs = obj.attrs;
        let record = InstanceRecord {
            sop_instance_uid: obj.sop_instance_uid,
            sop_class_uid: obj.sop_class_uid,
            study_instance_uid: attrs.study_instance_uid.clone(),
            series_instance_uid: attrs.series_instance_uid.clone(),
            instance_number: attrs.instance_number.clone(),
            transfer_syntax_uid: obj.transfer_syntax_uid,
            file_size: obj.file_size,
            dataset_size: obj.dataset_size,
            dataset_blake3: obj.dataset_blake3,
            received_at_us: timestamp_us(),
            calling_ae_title: obj.calling_ae_title,
            called_ae_title: obj.called_ae_title,
            path: obj.rel_path.to_string_lossy().into_owned(),
        };
        let lookup = |t| attrs.extra_value(t);
        let destinations = self.routing.destinations(&RouteInput {
            calling_ae_title: &record.calling_ae_title,
            called_ae_title: &record.called_ae_title,
            attribute: &lookup,
        });
        let (reply, rx) = oneshot::channel();
        let (sop, calling) = (
            record.sop_instance_uid.clone(),
            record.calling_ae_title.clone(),
        );
        let entry = group::Entry {
            obj: Incoming {
                record,
                attrs,
                destinations,
                body: obj.body,
                dataset_offset: obj.file_size - obj.dataset_size,
            },
            reply,
        };
        let sent = self.tx.send(entry).map_err(|mpsc::SendError(e)| {
            e.obj.body.discard();
            StoreError::Io("ingest has stopped".into())
        });
        Box::pin(async move {
            sent?;
            let outcome = rx
                .await
                .unwrap_or_else(|_| Err(StoreError::Io("ingest stopped before answering".into())));
            let duplicate = match &outcome {
                Ok(Accepted::Stored) | Ok(Accepted::Replaced) => {
                    matches!(outcome, Ok(Accepted::Replaced)).then_some(DuplicateOutcome::Replaced)
                }
                Ok(Accepted::IdenticalDuplicate) => Some(DuplicateOutcome::Identical),
                Ok(Accepted::KeptExisting) => Some(DuplicateOutcome::KeptExisting),
                Err(StoreError::Duplicate(_)) => Some(DuplicateOutcome::Rejected),
                Err(_) => None,
            };
            if let Some(d) = duplicate {
                duplicate_seen(d, &sop, &calling);
            }
            outcome
        })
    }
}

/// A re-sent SOP Instance UID is worth a line at WARN and a count: with `keep` a corrected
/// re-send is silently discarded otherwise, and an identical one can hide a routing mistake.
fn duplicate_seen(outcome: DuplicateOutcome, sop: &str, calling: &str) {
    crate::metrics::global().duplicate(outcome);
    let what = match outcome {
        DuplicateOutcome::Identical => "identical to the stored object: acknowledged, nothing new written",
        DuplicateOutcome::KeptExisting => "different from the stored object: kept the stored one, discarded the new one (duplicate_policy = \"keep\")",
        DuplicateOutcome::Replaced => "different from the stored object: the new one replaced it (duplicate_policy = \"replace\")",
        DuplicateOutcome::Rejected => "different from the stored object: refused 0111 (duplicate_policy = \"reject\")",
    };
    tracing::warn!(sop_instance_uid = %sop, calling = %calling, outcome = outcome.label(), "duplicate SOP Instance UID, {what}");
}

#[cfg(test)]
mod tests;
