//! The group committer: makes received objects durable and indexed in batches.
//!
//! Associations on every core hand finished objects (a complete temporary file plus its index
//! record) to one committer thread. It takes every request that is waiting, then, for the
//! whole batch, inside one redb write transaction: renames each file into
//! `objects/<Study>/<Series>/<SOP>.dcm` and writes the index rows; then it runs one `syncfs`
//! (the files' data and their new directory entries reach the disk) *while* the transaction
//! commits durably, and answers the batch only when both are done. One journal flush pays for
//! many objects, and the two flushes overlap instead of adding up. While a batch commits the
//! next one gathers, so batches grow with load and no timer adds latency when idle.
//!
//! The index is the source of truth. Overlapping the sync and the commit means a crash can
//! make a batch's rows durable before its files' data: so the transaction also records the
//! batch's SOP Instance UIDs in `PENDING_SYNC` (deleted by the next batch, once this one is
//! answered), and start-up ([`recover_pending`]) verifies those files and removes the rows of
//! any that are incomplete — objects that were never acknowledged. A crash between the rename
//! and the commit can also leave a file under `objects/` without a row: never acknowledged,
//! overwritten when the sender resends it. The one rename that would put unsynced bytes under
//! an *indexed* name — a replacement (`duplicate_policy = "replace"`) — is preceded by its own
//! `syncfs`.
//!
//! `syncfs` on the data filesystem is the batched form of "fdatasync each file, then fsync its
//! directory": it flushes exactly those dirty pages and metadata, in one journal commit. With
//! `durability = "relaxed"` the syncs are skipped (the index commit stays durable): a process
//! crash loses nothing, a power cut may lose the data of recently acknowledged objects.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

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
    /// Destinations the routing rules chose: one forward job each, written with the rows.
    pub destinations: Vec<String>,
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
    /// Gateway-mode retention: an object no route sends anywhere is retirable at once.
    pub retire_unrouted: bool,
    /// Called with a destination's name after a commit that created jobs for it.
    pub wake: Option<Wake>,
}

/// The forwarder's doorbell, rung by the committer once new jobs are durable.
#[derive(Clone)]
pub struct Wake(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wake")
    }
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
        let (next_seq, removed) =
            recover_pending(&index, &data).map_err(|e| std::io::Error::other(e.to_string()))?;
        if removed > 0 {
            tracing::warn!(
                removed,
                "removed index rows of unacknowledged objects whose files were incomplete"
            );
        }
        let pending = Pending {
            next_seq,
            last: None,
        };
        let root = Syncer::start(root)?;
        let handle = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || run(&rx, &index, &data, &root, &cfg, &s, pending))?;
        Ok((Self { tx }, handle, stats))
    }

    /// Submits an object and waits until it is durable and indexed (or refused).
    pub async fn commit(
        &self,
        temp_path: PathBuf,
        record: InstanceRecord,
        attrs: IndexAttrs,
        destinations: Vec<String>,
    ) -> Result<CommitOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest {
            temp_path,
            record,
            attrs,
            destinations,
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

/// Microseconds since the Unix epoch, for `received_at_us` (kept here for its callers; the
/// clock itself is the leaf [`crate::clock`]).
pub use crate::clock::timestamp_us;

/// The committer's bookkeeping of `PENDING_SYNC` entries.
#[derive(Debug, Default)]
struct Pending {
    /// Key of the next batch's entry.
    next_seq: u64,
    /// The entry of the last batch whose sync completed, deleted by the next transaction.
    last: Option<u64>,
}

/// Start-up check of batches whose index rows may have become durable before their files'
/// data (a crash during an overlapped sync and commit): every file they renamed is verified
/// (size and BLAKE3 of the dataset bytes); a row whose file does not match is removed with its
/// file — that object was never acknowledged. Returns the next batch sequence and how many
/// rows were removed.
pub fn recover_pending(index: &Index, data: &DataDir) -> Result<(u64, usize), StoreError> {
    let tx = index
        .database()
        .begin_write()
        .map_err(index::IndexError::from)?;
    let mut entries: Vec<(u64, Vec<String>)> = Vec::new();
    {
        use redb::ReadableTable;
        let t = tx
            .open_table(crate::db::PENDING_SYNC)
            .map_err(index::IndexError::from)?;
        for row in t.iter().map_err(index::IndexError::from)? {
            let (k, v) = row.map_err(index::IndexError::from)?;
            // An undecodable entry verifies nothing: treat it as empty.
            entries.push((
                k.value(),
                postcard::from_bytes(v.value()).unwrap_or_default(),
            ));
        }
    }
    let next_seq = entries.iter().map(|(k, _)| k + 1).max().unwrap_or(0);
    let mut removed = 0;
    let mut removed_uids = HashSet::new();
    let mut touched_studies = HashSet::new();
    for uid in entries.iter().flat_map(|(_, uids)| uids) {
        let Some(rec) = index::get_instance_tx(&tx, uid)? else {
            continue;
        };
        let path = data.root().join(&rec.path);
        if file_matches(&path, &rec) {
            continue;
        }
        tracing::warn!(sop = %uid, path = %path.display(), "file of an unacknowledged object is incomplete after a crash; removing it from the index");
        index::remove_instance(&tx, uid)?;
        remove_quietly(&path);
        removed += 1;
        removed_uids.insert(uid.clone());
        touched_studies.insert(rec.study_instance_uid);
    }
    // Their forward jobs go too: those objects were never acknowledged.
    crate::queue::remove_jobs_of(&tx, &removed_uids).map_err(|e| StoreError::Io(e.to_string()))?;
    {
        let mut t = tx
            .open_table(crate::db::PENDING_SYNC)
            .map_err(index::IndexError::from)?;
        for (k, _) in &entries {
            t.remove(*k).map_err(index::IndexError::from)?;
        }
    }
    tx.commit().map_err(index::IndexError::from)?;
    index.refresh_studies(&touched_studies)?;
    Ok((next_seq, removed))
}

/// Whether the file at `path` holds exactly the object `rec` describes.
fn file_matches(path: &std::path::Path, rec: &InstanceRecord) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(meta) = f.metadata() else { return false };
    if meta.len() != rec.file_size || rec.dataset_size > rec.file_size {
        return false;
    }
    if f.seek(SeekFrom::Start(rec.file_size - rec.dataset_size))
        .is_err()
    {
        return false;
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(_) => return false,
        }
    }
    hasher.finalize().to_hex().as_str() == rec.dataset_blake3
}

/// Runs `syncfs` on a thread of its own, started once with the committer, so a batch's sync
/// overlaps its index commit without a thread spawn per batch: a spawn can fail (a task
/// limit, memory pressure), and the commit path must not depend on one (audit C2).
struct Syncer {
    root: Arc<std::fs::File>,
    go: mpsc::SyncSender<()>,
    done: mpsc::Receiver<std::io::Result<()>>,
}

impl Syncer {
    fn start(root: std::fs::File) -> std::io::Result<Syncer> {
        let root = Arc::new(root);
        let (go, go_rx) = mpsc::sync_channel::<()>(1);
        let (done_tx, done) = mpsc::sync_channel(1);
        let r = root.clone();
        std::thread::Builder::new()
            .name("committer-sync".into())
            .spawn(move || {
                while go_rx.recv().is_ok() {
                    if done_tx.send(syncfs(&r)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Syncer { root, go, done })
    }

    /// Syncs the filesystem while `meanwhile` runs; returns both results. If the sync thread
    /// is gone, the sync runs here, after `meanwhile`.
    fn sync_while<T>(&self, meanwhile: impl FnOnce() -> T) -> (std::io::Result<()>, T) {
        if self.go.send(()).is_err() {
            let t = meanwhile();
            return (syncfs(&self.root), t);
        }
        let t = meanwhile();
        let synced = self.done.recv().unwrap_or_else(|_| syncfs(&self.root));
        (synced, t)
    }

    fn sync(&self) -> std::io::Result<()> {
        syncfs(&self.root)
    }
}

fn run(
    rx: &mpsc::Receiver<CommitRequest>,
    index: &Index,
    data: &DataDir,
    root: &Syncer,
    cfg: &CommitterConfig,
    stats: &CommitStats,
    mut pending: Pending,
) {
    let vital = crate::health::Vital::new("committer");
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
        let started = std::time::Instant::now();
        commit_batch(batch, index, data, root, cfg, &mut made_dirs, &mut pending);
        crate::metrics::global().commit_batch(n, started.elapsed());
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
    // Every sender is gone: the daemon is stopping.
    vital.done();
}

/// One object's progress through a batch.
struct Item {
    req: CommitRequest,
    result: Option<Result<CommitOutcome, StoreError>>,
    /// Set once the file has been renamed into a path that did not hold an indexed object.
    created: Option<PathBuf>,
    /// Destinations an identical re-send was routed to (new jobs).
    rerouted: Vec<String>,
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
    root: &Syncer,
    cfg: &CommitterConfig,
    made_dirs: &mut HashSet<PathBuf>,
    pending: &mut Pending,
) {
    let full = cfg.durability == Durability::Full;
    let mut items: Vec<Item> = batch
        .into_iter()
        .map(|req| Item {
            req,
            result: None,
            created: None,
            rerouted: Vec::new(),
        })
        .collect();

    let t0 = std::time::Instant::now();
    let mut marks = [Duration::ZERO; 3];
    // Err((error, committed)): `committed` says the index rows became durable anyway (the
    // sync failed after the commit), so the files must stay for start-up verification.
    let outcome = (|| -> Result<(), (StoreError, bool)> {
        let early = |e: StoreError| (e, false);
        let db = |e: index::IndexError| early(e.into());
        let mut tx = index.database().begin_write().map_err(|e| db(e.into()))?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(|e| early(StoreError::Io(e.to_string())))?;
        // 1. Only a replacement renames over an *indexed* file: its new data must reach the
        //    disk before it takes that name. New objects need no sync yet (see step 3).
        if full && replaces_any(&items, &tx, cfg).map_err(early)? {
            root.sync()
                .map_err(|e| early(StoreError::from_io("syncfs", &e)))?;
        }
        marks[0] = t0.elapsed();
        // 2. Decide duplicates and rename, inside the transaction that will index them.
        for it in items.iter_mut().filter(|it| it.result.is_none()) {
            it.result = Some(place(it, &tx, data, cfg, made_dirs));
        }
        let renamed: Vec<&str> = items
            .iter()
            .filter(|it| {
                it.created.is_some() || matches!(it.result, Some(Ok(CommitOutcome::Replaced)))
            })
            .map(|it| it.req.record.sop_instance_uid.as_str())
            .collect();
        let sync_now = full && !renamed.is_empty();
        if full {
            // The previous batch's sync completed before it was answered: its entry goes.
            // This batch's entry lets start-up verify its files if we crash mid-commit.
            let mut t = tx
                .open_table(crate::db::PENDING_SYNC)
                .map_err(|e| db(e.into()))?;
            if let Some(prev) = pending.last.take() {
                t.remove(prev).map_err(|e| db(e.into()))?;
            }
            if sync_now {
                let uids = postcard::to_allocvec(&renamed).expect("encoding strings cannot fail");
                t.insert(pending.next_seq, uids.as_slice())
                    .map_err(|e| db(e.into()))?;
            }
        }
        marks[1] = t0.elapsed();
        // 3 and 4. One sync for the batch (the files' data and their new directory entries)
        //    runs while the index commits; the batch is answered only when both are done.
        let (synced, committed) = if sync_now {
            root.sync_while(|| tx.commit())
        } else {
            (Ok(()), tx.commit())
        };
        marks[2] = t0.elapsed();
        committed.map_err(|e| db(e.into()))?;
        synced.map_err(|e| (StoreError::from_io("syncfs", &e), true))?;
        if sync_now {
            pending.last = Some(pending.next_seq);
            pending.next_seq += 1;
        }
        Ok(())
    })();
    tracing::debug!(
        objects = items.len(),
        sync_replaced_us = marks[0].as_micros() as u64,
        place_us = (marks[1] - marks[0]).as_micros() as u64,
        sync_and_commit_us = marks[2].saturating_sub(marks[1]).as_micros() as u64,
        "group commit"
    );

    // Searches are served from the study summary: publish this batch's studies before anyone
    // is answered, so an acknowledged object is found. Failed or not, re-reading is harmless.
    let touched = items
        .iter()
        .filter(|it| {
            matches!(
                it.result,
                Some(Ok(CommitOutcome::Stored | CommitOutcome::Replaced))
            )
        })
        .map(|it| it.req.record.study_instance_uid.as_str());
    if let Err(e) = index.refresh_studies(touched) {
        tracing::error!(error = %e, "study summary refresh failed; study searches read the index until it reloads");
    }
    if let Err((e, committed)) = outcome {
        tracing::error!(error = %e, objects = items.len(), committed, "group commit failed; refusing the batch");
        if !committed {
            for it in &items {
                if let Some(path) = &it.created {
                    remove_quietly(path);
                }
            }
        }
        fail_all(&mut items, &e);
    }
    if let Some(wake) = &cfg.wake {
        let mut rung: Vec<&str> = Vec::new();
        for it in &items {
            let dests = match it.result {
                Some(Ok(CommitOutcome::Stored | CommitOutcome::Replaced)) => &it.req.destinations,
                // An identical re-send routed to destinations that had not received it.
                Some(Ok(CommitOutcome::IdenticalDuplicate)) => &it.rerouted,
                _ => continue,
            };
            for d in dests {
                if !rung.contains(&d.as_str()) {
                    rung.push(d);
                    (wake.0)(d);
                }
            }
        }
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
            // Routed again: destinations that match now and never received it get a job.
            let added = crate::queue::reroute(
                tx,
                &rec.sop_instance_uid,
                &it.req.destinations,
                timestamp_us(),
            )
            .map_err(|e| StoreError::Io(e.to_string()))?;
            if !added.is_empty() {
                tracing::info!(sop_instance_uid = %rec.sop_instance_uid, destinations = ?added,
                    "identical re-send routed to destinations that had not received it");
            }
            it.rerouted = added;
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
    if replaced {
        // The new bytes have been delivered nowhere yet.
        index::forget_deliveries(tx, &rec.sop_instance_uid)?;
    }
    let now = timestamp_us();
    for dest in &it.req.destinations {
        crate::queue::enqueue(tx, dest, &rec.sop_instance_uid, now)
            .map_err(|e| StoreError::Io(e.to_string()))?;
    }
    if it.req.destinations.is_empty() && cfg.retire_unrouted {
        crate::queue::mark_retirable(tx, rec.received_at_us, &rec.sop_instance_uid)
            .map_err(|e| StoreError::Io(e.to_string()))?;
    }
    Ok(if replaced {
        CommitOutcome::Replaced
    } else {
        CommitOutcome::Stored
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(data: &DataDir, n: u32, dataset: &[u8]) -> (InstanceRecord, IndexAttrs) {
        let sop = format!("1.2.3.{n}");
        let rel = DataDir::object_rel_path("1.2", "1.2.9", &sop).unwrap();
        let path = data.root().join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = vec![0u8; 132];
        bytes.extend_from_slice(dataset);
        std::fs::write(&path, &bytes).unwrap();
        let rec = InstanceRecord {
            sop_instance_uid: sop.clone(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.9".into(),
            instance_number: n.to_string(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            file_size: bytes.len() as u64,
            dataset_size: dataset.len() as u64,
            dataset_blake3: blake3::hash(dataset).to_hex().to_string(),
            received_at_us: 0,
            calling_ae_title: "T".into(),
            called_ae_title: "DICOM_GW".into(),
            path: rel.to_string_lossy().into_owned(),
        };
        let attrs = IndexAttrs {
            patient_id: "P1".into(),
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.9".into(),
            modality: "CT".into(),
            ..Default::default()
        };
        (rec, attrs)
    }

    /// A crash while a batch's sync and commit overlap can leave durable rows whose files are
    /// incomplete: start-up removes exactly those rows (and files), keeps the good ones, and
    /// clears the pending entries.
    #[test]
    fn recover_pending_removes_rows_of_incomplete_files() {
        let d = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(d.path()).unwrap();
        let index = Index::open(&data.index_path()).unwrap();
        let (good, ga) = object(&data, 1, b"complete dataset");
        let (bad, ba) = object(&data, 2, b"another dataset!");
        let tx = index.database().begin_write().unwrap();
        index::put_instance(&tx, &good, &ga, false).unwrap();
        index::put_instance(&tx, &bad, &ba, false).unwrap();
        {
            let mut t = tx.open_table(crate::db::PENDING_SYNC).unwrap();
            let uids = postcard::to_allocvec(&vec![
                good.sop_instance_uid.as_str(),
                bad.sop_instance_uid.as_str(),
            ])
            .unwrap();
            t.insert(7, uids.as_slice()).unwrap();
        }
        tx.commit().unwrap();
        // The power cut left the second file with zeros where its data should be.
        let bad_path = data.root().join(&bad.path);
        let mut bytes = std::fs::read(&bad_path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] = 0;
        std::fs::write(&bad_path, bytes).unwrap();

        assert_eq!(recover_pending(&index, &data).unwrap(), (8, 1));
        assert!(index.instance(&good.sop_instance_uid).unwrap().is_some());
        assert!(index.instance(&bad.sop_instance_uid).unwrap().is_none());
        assert!(!bad_path.exists());
        assert!(data.root().join(&good.path).exists());
        assert_eq!(
            index.series("1.2", "1.2.9").unwrap().unwrap().num_instances,
            1
        );
        assert_eq!(index.study("1.2").unwrap().unwrap().num_instances, 1);
        // Entries are cleared: a second start-up has nothing to verify.
        assert_eq!(recover_pending(&index, &data).unwrap(), (0, 0));
    }

    /// The jobs the routes chose are written by the same commit as the rows (an acknowledged
    /// object always has them), the forwarder is woken once per destination, and identical
    /// duplicates create no second job.
    #[test]
    fn jobs_commit_with_the_rows_and_wake_the_forwarder() {
        let d = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(d.path()).unwrap();
        let index = Arc::new(Index::open(&data.index_path()).unwrap());
        let rung = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let r = rung.clone();
        let (committer, thread, _) = Committer::start(
            index.clone(),
            data.clone(),
            CommitterConfig {
                durability: Durability::Full,
                duplicate_policy: DuplicatePolicy::Keep,
                max_batch: 16,
                window: Duration::ZERO,
                retire_unrouted: true,
                wake: Some(Wake(Arc::new(move |n: &str| {
                    r.lock().unwrap().push(n.to_owned())
                }))),
            },
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let submit = |n: u32, dests: &[&str]| {
            let (mut rec, attrs) = object(&data, n, b"dataset bytes!");
            let final_path = data.root().join(&rec.path);
            let temp = data.tmp().join(format!("{n}.part"));
            std::fs::rename(&final_path, &temp).unwrap();
            rec.received_at_us = 1000 + u64::from(n);
            rt.block_on(committer.commit(
                temp,
                rec,
                attrs,
                dests.iter().map(|s| s.to_string()).collect(),
            ))
            .unwrap()
        };
        assert_eq!(submit(1, &["a", "b"]), CommitOutcome::Stored);
        assert_eq!(submit(1, &["a", "b"]), CommitOutcome::IdenticalDuplicate);
        assert_eq!(submit(2, &[]), CommitOutcome::Stored);
        drop(committer);
        thread.join().unwrap();
        let q = crate::queue::Queue::new(index.clone(), true);
        let stats = q.stats(&[]).unwrap();
        assert_eq!(stats.len(), 2);
        assert!(stats.iter().all(|s| s.pending == 1), "{stats:?}");
        let jobs = q.list(None, None, 10).unwrap();
        assert!(jobs.iter().all(|j| j.job.sop_instance_uid == "1.2.3.1"));
        assert_eq!(*rung.lock().unwrap(), vec!["a".to_owned(), "b".to_owned()]);
        // Gateway mode: the unrouted object is retirable at once; the routed one is not.
        let tx = index.database().begin_read().unwrap();
        let t = tx.open_table(crate::db::RETIRABLE).unwrap();
        use redb::{ReadableDatabase, ReadableTable};
        let keys: Vec<(u64, String)> = t
            .iter()
            .unwrap()
            .map(|x| {
                let k = x.unwrap().0;
                (k.value().0, k.value().1.to_owned())
            })
            .collect();
        assert_eq!(keys, vec![(1002, "1.2.3.2".to_owned())]);
    }

    /// Searches are served from the study summary: an object is found there as soon as it is
    /// acknowledged, a replacement updates its study without counting twice, and start-up
    /// recovery's removals leave it too — without any refresh by the caller.
    #[test]
    fn the_study_summary_follows_every_commit_before_the_answer() {
        use crate::store::index::StudyFilter;
        let d = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(d.path()).unwrap();
        let index = Arc::new(Index::open(&data.index_path()).unwrap());
        let (committer, thread, _) = Committer::start(
            index.clone(),
            data.clone(),
            CommitterConfig {
                durability: Durability::Full,
                duplicate_policy: DuplicatePolicy::Replace,
                max_batch: 16,
                window: Duration::ZERO,
                retire_unrouted: false,
                wake: None,
            },
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let submit = |n: u32, dataset: &[u8], description: &str| {
            let (rec, mut attrs) = object(&data, n, dataset);
            attrs.study_description = description.into();
            let temp = data.tmp().join(format!("{n}.part"));
            std::fs::rename(data.root().join(&rec.path), &temp).unwrap();
            rt.block_on(committer.commit(temp, rec, attrs, Vec::new()))
                .unwrap()
        };
        let search = || {
            index
                .search_studies(
                    &StudyFilter {
                        modality: Some("CT".into()),
                        ..Default::default()
                    },
                    0,
                    10,
                )
                .unwrap()
        };
        assert_eq!(search().total, 0);
        assert_eq!(submit(1, b"first", "ONE"), CommitOutcome::Stored);
        let page = search();
        assert_eq!((page.total, page.items[0].num_instances), (1, 1));
        assert_eq!(page.items[0].study_description, "ONE");
        assert_eq!(submit(2, b"second", "TWO"), CommitOutcome::Stored);
        assert_eq!(search().items[0].num_instances, 2);
        assert_eq!(
            submit(2, b"second, replaced", "THREE"),
            CommitOutcome::Replaced
        );
        let page = search();
        assert_eq!(page.items[0].num_instances, 2);
        assert_eq!(page.items[0].study_description, "THREE");
        assert_eq!(
            submit(2, b"second, replaced", "FOUR"),
            CommitOutcome::IdenticalDuplicate
        );
        assert_eq!(search().items[0], index.study("1.2").unwrap().unwrap());
        drop(committer);
        thread.join().unwrap();

        // Start-up recovery removes a row whose file is incomplete: the summary follows.
        let (bad, ba) = object(&data, 3, b"third");
        let tx = index.database().begin_write().unwrap();
        index::put_instance(&tx, &bad, &ba, false).unwrap();
        {
            let mut t = tx.open_table(crate::db::PENDING_SYNC).unwrap();
            let uids = postcard::to_allocvec(&vec![bad.sop_instance_uid.as_str()]).unwrap();
            t.insert(40, uids.as_slice()).unwrap();
        }
        tx.commit().unwrap();
        index.refresh_studies(["1.2"]).unwrap();
        assert_eq!(search().items[0].num_instances, 3);
        std::fs::write(data.root().join(&bad.path), b"torn").unwrap();
        assert_eq!(recover_pending(&index, &data).unwrap(), (41, 1));
        assert_eq!(search().items[0].num_instances, 2);
        assert_eq!(search().items[0], index.study("1.2").unwrap().unwrap());
    }

    #[test]
    fn removing_the_last_instance_removes_series_study_and_patient() {
        let d = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(d.path()).unwrap();
        let index = Index::open(&data.index_path()).unwrap();
        let (rec, attrs) = object(&data, 1, b"x");
        let tx = index.database().begin_write().unwrap();
        index::put_instance(&tx, &rec, &attrs, false).unwrap();
        tx.commit().unwrap();
        let tx = index.database().begin_write().unwrap();
        assert!(index::remove_instance(&tx, &rec.sop_instance_uid)
            .unwrap()
            .is_some());
        assert!(index::remove_instance(&tx, &rec.sop_instance_uid)
            .unwrap()
            .is_none());
        tx.commit().unwrap();
        assert!(index.series("1.2", "1.2.9").unwrap().is_none());
        assert!(index.study("1.2").unwrap().is_none());
        assert!(index.patient("P1").unwrap().is_none());
    }
}
