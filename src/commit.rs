//! The group committer: makes received objects durable and indexed in batches.
//!
//! Associations on every core hand finished objects (a complete temporary file plus its index
//! record) to one committer thread. It takes every request that is waiting, then, for the
//! whole batch, inside one redb write transaction: renames each file into
//! `objects/<Study>/<Series>/<SOP>.dcm`, calls `syncfs` once (the files' data and their new
//! directory entries reach the disk), and commits the index rows durably. Only then does each
//! association get its answer and send C-STORE-RSP. One journal flush pays for many objects:
//! durability without giving up throughput. While a batch commits the next one gathers, so
//! batches grow with load and no timer adds latency when idle.
//!
//! The index, not the directory, says what is stored: a crash between the rename and the
//! commit can leave a file under `objects/` without an index row. It was never acknowledged;
//! after a power cut it may be incomplete; the sender resends it and the new copy is renamed
//! over it. The one rename that would put unsynced bytes under an *indexed* name — a
//! replacement (`duplicate_policy = "replace"`) — is preceded by its own `syncfs`.
//!
//! `syncfs` on the data filesystem is the batched form of "fdatasync each file, then fsync its
//! directory": it flushes exactly those dirty pages and metadata, in one journal commit. With
//! `durability = "relaxed"` the syncs are skipped (the index commit stays durable): a process
//! crash loses nothing, a power cut may lose the data of recently acknowledged objects.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::config::{DuplicatePolicy, Durability};
use crate::store::attrs::IndexAttrs;
use crate::store::index::{self, Index, InstanceRecord};
use crate::store::writer::remove_quietly;
use crate::store::{syncfs, DataDir, StoreError};

/// What happened to an object handed to the committer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// New object, stored and indexed.
    Stored,
    /// Same SOP Instance UID and identical dataset bytes as a stored object: acknowledged,
    /// nothing new written.
    IdenticalDuplicate,
    /// Different bytes, policy `keep`: the stored object stays, the new one is discarded.
    KeptExisting,
    /// Different bytes, policy `replace`: the new object replaced the stored one.
    Replaced,
}

/// One finished object waiting for durability.
#[derive(Debug)]
pub struct CommitRequest {
    /// The complete temporary file.
    pub temp_path: PathBuf,
    /// The index record (its `path` is the final relative path).
    pub record: InstanceRecord,
    /// Attributes for the patient/study/series rows.
    pub attrs: IndexAttrs,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<CommitOutcome, StoreError>>,
}

/// Settings of the committer.
#[derive(Debug, Clone)]
pub struct CommitterConfig {
    /// Whether to sync files before acknowledging.
    pub durability: Durability,
    /// What to do with a second, different object under an existing SOP Instance UID.
    pub duplicate_policy: DuplicatePolicy,
    /// Most objects in one transaction.
    pub max_batch: usize,
    /// Extra time to wait for more objects once one arrived (0 = take what is queued).
    pub window: Duration,
}

/// Handle the cores use to submit objects; cloning is cheap. The committer thread ends when
/// every handle is dropped, after finishing what was submitted.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::Sender<CommitRequest>,
}

/// Counters of the committer, read by logs now and metrics later.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Batches committed.
    pub batches: std::sync::atomic::AtomicU64,
    /// Objects answered.
    pub objects: std::sync::atomic::AtomicU64,
}

impl Committer {
    /// Starts the committer thread.
    pub fn start(
        index: Arc<Index>,
        data: DataDir,
        cfg: CommitterConfig,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>, Arc<CommitStats>)> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let s = stats.clone();
        let root = std::fs::File::open(data.root())?;
        let handle = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || run(&rx, &index, &data, &root, &cfg, &s))?;
        Ok((Self { tx }, handle, stats))
    }

    /// Submits an object and waits until it is durable and indexed (or refused).
    pub async fn commit(
        &self,
        temp_path: PathBuf,
        record: InstanceRecord,
        attrs: IndexAttrs,
    ) -> Result<CommitOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest {
            temp_path,
            record,
            attrs,
            reply,
        };
        if let Err(mpsc::SendError(req)) = self.tx.send(req) {
            remove_quietly(&req.temp_path);
            return Err(StoreError::Io("committer has stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Io("committer stopped before answering".into())))
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch, for `received_at_us`.
pub fn timestamp_us() -> u64 {
    now_us()
}

fn run(
    rx: &mpsc::Receiver<CommitRequest>,
    index: &Index,
    data: &DataDir,
    root: &std::fs::File,
    cfg: &CommitterConfig,
    stats: &CommitStats,
) {
    let mut made_dirs: HashSet<PathBuf> = HashSet::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        if !cfg.window.is_zero() {
            let deadline = std::time::Instant::now() + cfg.window;
            while batch.len() < cfg.max_batch {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        while batch.len() < cfg.max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let n = batch.len();
        commit_batch(batch, index, data, root, cfg, &mut made_dirs);
        stats
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats
            .objects
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::trace!(objects = n, "group commit");
        if made_dirs.len() > 100_000 {
            made_dirs.clear();
        }
    }
}

/// One object's progress through a batch.
struct Item {
    req: CommitRequest,
    result: Option<Result<CommitOutcome, StoreError>>,
    /// Set once the file has been renamed into a path that did not hold an indexed object.
    created: Option<PathBuf>,
}

fn fail_all(items: &mut [Item], err: &StoreError) {
    for it in items
        .iter_mut()
        .filter(|it| matches!(it.result, None | Some(Ok(_))))
    {
        it.result = Some(Err(match err {
            StoreError::DiskFull(m) => StoreError::DiskFull(m.clone()),
            other => StoreError::Io(other.to_string()),
        }));
    }
}

fn commit_batch(
    batch: Vec<CommitRequest>,
    index: &Index,
    data: &DataDir,
    root: &std::fs::File,
    cfg: &CommitterConfig,
    made_dirs: &mut HashSet<PathBuf>,
) {
    let full = cfg.durability == Durability::Full;
    let mut items: Vec<Item> = batch
        .into_iter()
        .map(|req| Item {
            req,
            result: None,
            created: None,
        })
        .collect();

    let t0 = std::time::Instant::now();
    let mut marks = [Duration::ZERO; 3];
    let outcome = (|| -> Result<(), StoreError> {
        let mut tx = index
            .database()
            .begin_write()
            .map_err(index::IndexError::from)?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        // 1. Only a replacement renames over an *indexed* file: its new data must reach the
        //    disk before it takes that name. New objects need no sync yet (see step 3).
        if full && replaces_any(&items, &tx, cfg)? {
            syncfs(root).map_err(|e| StoreError::from_io("syncfs", &e))?;
        }
        marks[0] = t0.elapsed();
        // 2. Decide duplicates and rename, inside the transaction that will index them.
        for it in items.iter_mut().filter(|it| it.result.is_none()) {
            it.result = Some(place(it, &tx, data, cfg, made_dirs));
        }
        marks[1] = t0.elapsed();
        // 3. One sync for the batch: the files' data and their new directory entries reach
        //    the disk before the index points at them.
        if full
            && items.iter().any(|it| {
                it.created.is_some() || matches!(it.result, Some(Ok(CommitOutcome::Replaced)))
            })
        {
            syncfs(root).map_err(|e| StoreError::from_io("syncfs", &e))?;
        }
        marks[2] = t0.elapsed();
        // 4. One durable commit for the batch.
        tx.commit().map_err(index::IndexError::from)?;
        Ok(())
    })();
    tracing::debug!(
        objects = items.len(),
        sync_replaced_us = marks[0].as_micros() as u64,
        place_us = (marks[1] - marks[0]).as_micros() as u64,
        sync_us = marks[2].saturating_sub(marks[1]).as_micros() as u64,
        commit_us = t0.elapsed().saturating_sub(marks[2]).as_micros() as u64,
        "group commit"
    );

    if let Err(e) = outcome {
        tracing::error!(error = %e, objects = items.len(), "group commit failed; refusing the batch");
        for it in &items {
            if let Some(path) = &it.created {
                remove_quietly(path);
            }
        }
        fail_all(&mut items, &e);
    }
    for it in items {
        if let Some(Err(e)) = &it.result {
            // Whatever stage it failed at, its temporary file must not outlive the refusal.
            remove_quietly(&it.req.temp_path);
            tracing::warn!(sop = %it.req.record.sop_instance_uid, error = %e, "object refused");
        }
        let result = it
            .result
            .unwrap_or_else(|| Err(StoreError::Io("not processed".into())));
        let _ = it.req.reply.send(result);
    }
}

/// Whether any object of the batch will replace an indexed object with different bytes.
fn replaces_any(
    items: &[Item],
    tx: &redb::WriteTransaction,
    cfg: &CommitterConfig,
) -> Result<bool, StoreError> {
    if cfg.duplicate_policy != DuplicatePolicy::Replace {
        return Ok(false);
    }
    for it in items.iter().filter(|it| it.result.is_none()) {
        let rec = &it.req.record;
        if let Some(old) = index::get_instance_tx(tx, &rec.sop_instance_uid)? {
            if old.dataset_blake3 != rec.dataset_blake3 || old.dataset_size != rec.dataset_size {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn place(
    it: &mut Item,
    tx: &redb::WriteTransaction,
    data: &DataDir,
    cfg: &CommitterConfig,
    made_dirs: &mut HashSet<PathBuf>,
) -> Result<CommitOutcome, StoreError> {
    let rec = &it.req.record;
    let existing = index::get_instance_tx(tx, &rec.sop_instance_uid)?;
    let replaced = match existing {
        Some(old)
            if old.dataset_blake3 == rec.dataset_blake3 && old.dataset_size == rec.dataset_size =>
        {
            remove_quietly(&it.req.temp_path);
            return Ok(CommitOutcome::IdenticalDuplicate);
        }
        Some(_) => match cfg.duplicate_policy {
            DuplicatePolicy::Keep => {
                remove_quietly(&it.req.temp_path);
                return Ok(CommitOutcome::KeptExisting);
            }
            DuplicatePolicy::Reject => {
                remove_quietly(&it.req.temp_path);
                return Err(StoreError::Duplicate(rec.sop_instance_uid.clone()));
            }
            DuplicatePolicy::Replace => true,
        },
        None => false,
    };
    let dest = data.root().join(&rec.path);
    let dir = dest
        .parent()
        .expect("object paths have a directory")
        .to_path_buf();
    if !made_dirs.contains(&dir) {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            remove_quietly(&it.req.temp_path);
            return Err(StoreError::from_io("create directory", &e));
        }
        made_dirs.insert(dir.clone());
    }
    let mut renamed = std::fs::rename(&it.req.temp_path, &dest);
    if matches!(&renamed, Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        && it.req.temp_path.exists()
    {
        // The directory was removed behind our back (the cache above is stale): recreate it.
        renamed =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::rename(&it.req.temp_path, &dest));
    }
    if let Err(e) = renamed {
        remove_quietly(&it.req.temp_path);
        return Err(StoreError::from_io("rename into place", &e));
    }
    if !replaced {
        it.created = Some(dest);
    }
    index::put_instance(tx, rec, &it.req.attrs, replaced)?;
    Ok(if replaced {
        CommitOutcome::Replaced
    } else {
        CommitOutcome::Stored
    })
}
