//! The materializer and the checkpoint: acknowledged objects leave the journal for their
//! files under `objects/` and their index rows.
//!
//! A checkpoint, for every record since the last one, in journal order:
//! 1. places the object's file (inline bytes written at its final name, which nothing reads
//!    before step 3; a large object's staged file renamed) — a replacement under a new,
//!    versioned name (`<SOP>.<hash8>.dcm`), so an indexed file is never overwritten and a
//!    reader that opened a version reads that version whole (audit H2, H3);
//! 2. runs one `syncfs`: the files' data and directory entries are on disk (through a
//!    descriptor opened before any of them was written: see [`Placer`]);
//! 3. commits one redb transaction: the index rows (a replacement removes the old rows
//!    first, so a changed Study/Series moves the instance, audit M4), the forward jobs and
//!    the journal [`Position`] after the last record;
//! 4. removes the files of replaced versions, publishes the touched studies, releases the
//!    journal's segments, drops the overlay entries and wakes the forwarder.
//!
//! A crash anywhere before 3 leaves the position where it was: recovery places the same
//! files again (idempotent, the same names) and commits. A failure before 3 is retried. A
//! failed write-back leaves the page cache holding what the disk lacks, and a later sync has
//! nothing left to write, so nothing written before a failure is trusted: inline objects are
//! written from memory at every attempt anyway, and a large object whose file was begun
//! before the last failure is written again from its bytes if those still hash to what was
//! received, else reported lost (`dicomgw_ingest_lost_objects_total`), never indexed damaged.
//! A crash after 3 may leave a replaced version's file behind, which nothing indexes. Steps
//! 1–3 hold the data directory's objects lock, which retention also holds from its commit to
//! its last unlink.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::mailbox::Mailbox;
use super::record::{Decision, RecordMeta};
use super::{IngestConfig, Item, Shared};
use crate::clock::timestamp_us;
use crate::config::SyncMethod;
use crate::store::index::{self, Index, IndexError};
use crate::store::journal::{Journal, JournalConfig, Position, Storage};
use crate::store::writer::remove_quietly;
use crate::store::{DataDir, StoreError};

/// Name of the (single) ingest journal in the `JOURNAL` table and under `journal/`.
pub const JOURNAL_NAME: &str = "core-0";

/// What a checkpoint did, for the caller's bookkeeping.
#[derive(Debug, Default)]
pub struct Checkpointed {
    /// (SOP Instance UID, seq) of every record placed, or given up as lost: neither is
    /// pending any more.
    pub placed: Vec<(String, u64)>,
    /// Destinations that got jobs.
    pub destinations: Vec<String>,
}

/// Free space kept for the index commit: below it a checkpoint waits instead of letting
/// redb fail mid-commit (which latches the database until it is reopened, audit H4).
fn index_reserve(total: u64, items: usize) -> u64 {
    (total / 100).clamp(256 << 10, 8 << 20) + items as u64 * 16 * 1024
}

/// The versioned name a replacement gets: `<dir>/<SOP>.<first 8 hex of BLAKE3>.dcm`.
fn versioned(path: &str, blake3: &str) -> String {
    let stem = path.strip_suffix(".dcm").unwrap_or(path);
    format!("{stem}.{}.dcm", &blake3[..blake3.len().min(8)])
}

/// What the materializer keeps from one checkpoint to the next.
#[derive(Debug)]
pub struct Placer {
    /// The data directory, opened before anything a checkpoint syncs was written. `syncfs`
    /// reports a write-back error once to each descriptor opened before the error; one
    /// opened afterwards misses it if someone else saw it first (an administrator's
    /// `sync -f`, the journal writer's `syncfs` before a large object's record), and the
    /// checkpoint would index files whose bytes never reached the disk.
    root: std::fs::File,
    /// Directories known to exist.
    made_dirs: HashSet<PathBuf>,
    /// When the last checkpoint failed: a large object's file begun before then is written
    /// again (see the module doc).
    failed_at: Option<SystemTime>,
}

impl Placer {
    /// Opens the data directory: before the first object this placer will sync is written.
    pub fn new(data: &DataDir) -> std::io::Result<Placer> {
        Ok(Placer {
            root: std::fs::File::open(data.root())?,
            made_dirs: HashSet::new(),
            failed_at: None,
        })
    }

    /// A checkpoint failed: nothing written before now is trusted (see the module doc), and
    /// the directories are made again.
    fn failed(&mut self) {
        self.failed_at = Some(SystemTime::now());
        self.made_dirs.clear();
    }
}

/// Runs one checkpoint over `items` (journal order) ending at `end`. Nothing is released
/// or answered here: see [`Checkpointed`].
pub fn checkpoint(
    index: &Index,
    data: &DataDir,
    cfg: &IngestConfig,
    staged_dir: &Path,
    items: &[Item],
    end: Position,
    placer: &mut Placer,
) -> Result<Checkpointed, StoreError> {
    let _objects = data.objects_lock();
    let db = |e: IndexError| StoreError::Index(e);
    let tx = match index.database().begin_write() {
        Ok(tx) => tx,
        Err(e) => {
            placer.failed();
            return Err(db(e.into()));
        }
    };
    let mut out = Checkpointed {
        placed: Vec::with_capacity(items.len()),
        destinations: Vec::new(),
    };
    let mut created: Vec<PathBuf> = Vec::with_capacity(items.len());
    let early_writeback = cfg.durability == crate::config::Durability::Full;
    let mut replaced_files: Vec<PathBuf> = Vec::new();
    let mut touched: HashSet<String> = HashSet::new();
    let now = timestamp_us();
    let mut parents = index::ParentRows::default();
    let result = (|| -> Result<(), StoreError> {
        // Open across the objects; closed around anything else that opens them.
        let mut tables: Option<index::InstanceTables> = None;
        // Jobs are written together, before anything reads them and at the end.
        let mut jobs = crate::queue::NewJobs::default();
        let queue_err = |e: crate::queue::QueueError| StoreError::Io(e.to_string());
        for it in items {
            let meta = &it.meta;
            let sop = meta.record.sop_instance_uid.as_str();
            let existing = index::InstanceTables::held(&mut tables, &tx)?.get(sop)?;
            let intact = |old: &index::InstanceRecord| {
                old.dataset_blake3 == meta.record.dataset_blake3
                    && old.dataset_size == meta.record.dataset_size
                    && std::fs::metadata(data.root().join(&old.path))
                        .is_ok_and(|m| m.len() == old.file_size)
            };
            // An identical re-send whose stored copy was retired (or damaged) since is not
            // skipped: it restores the object.
            if meta.decision == Decision::Identical && existing.as_ref().is_some_and(intact) {
                jobs.flush(&tx, now).map_err(queue_err)?;
                let added =
                    crate::queue::reroute(&tx, sop, &meta.destinations, now).map_err(queue_err)?;
                if !added.is_empty() {
                    tracing::info!(sop_instance_uid = %sop, destinations = ?added,
                        "identical re-send routed to destinations that had not received it");
                }
                out.destinations.extend(added);
                if let Some(s) = &meta.staged {
                    remove_quietly(&staged_dir.join(s));
                }
                continue;
            }
            let mut rec = meta.record.clone();
            // Never overwrite an indexed file: a new version at the same place gets its own
            // name, and the old one goes once the new rows are committed.
            if existing.as_ref().is_some_and(|old| old.path == rec.path) {
                rec.path = versioned(&rec.path, &rec.dataset_blake3);
            }
            let dest = data.root().join(&rec.path);
            if let Placed::Lost(why) = place(it, staged_dir, &dest, placer, early_writeback)? {
                // Acknowledged, but its bytes are gone: say so, and never index it damaged.
                tracing::error!(sop_instance_uid = %sop, calling_ae_title = %rec.calling_ae_title,
                    received_at_us = rec.received_at_us, reason = %why,
                    "acknowledged object lost to a failed disk write; its sender must send it again");
                crate::metrics::global().ingest_lost_object();
                remove_quietly(&dest);
                out.placed.push((sop.to_owned(), it.seq));
                continue;
            }
            created.push(dest.clone());
            if let Some(old) = &existing {
                // remove_instance changes the series, study and patient rows itself, and
                // opens the instance tables.
                tables = None;
                parents.flush(&tx)?;
                jobs.flush(&tx, now).map_err(queue_err)?;
                index::remove_instance(&tx, sop)?;
                index::forget_deliveries(&tx, sop)?;
                touched.insert(old.study_instance_uid.clone());
                if old.path != rec.path {
                    let f = data.root().join(&old.path);
                    created.retain(|c| *c != f);
                    replaced_files.push(f);
                }
            }
            let t = index::InstanceTables::held(&mut tables, &tx)?;
            index::put_instance_into(&tx, t, &rec, &meta.attrs, false, &mut parents)?;
            touched.insert(rec.study_instance_uid.clone());
            for d in &meta.destinations {
                jobs.add(d, sop);
                out.destinations.push(d.clone());
            }
            if meta.destinations.is_empty() && cfg.retire_unrouted {
                crate::queue::mark_retirable(&tx, rec.received_at_us, sop).map_err(queue_err)?;
            }
            out.placed.push((sop.to_owned(), it.seq));
        }
        drop(tables);
        jobs.flush(&tx, now).map_err(queue_err)?;
        parents.flush(&tx)?;
        // Each touched study's query keys once, not once per object.
        for study in &touched {
            crate::store::query::sync_study_keys(&tx, study)?;
        }
        {
            let mut t = tx
                .open_table(crate::db::JOURNAL)
                .map_err(|e| db(e.into()))?;
            t.insert(JOURNAL_NAME, end.to_bytes().as_slice())
                .map_err(|e| db(e.into()))?;
        }
        // 2. The files first…
        match cfg.sync {
            SyncMethod::Syncfs => {
                crate::store::syncfs(&placer.root)
                    .map_err(|e| StoreError::from_io("syncfs", &e))?;
            }
            SyncMethod::Fsync => {
                // Each placed file, its directory, and the directories above it that may be new.
                let mut dirs: Vec<PathBuf> = Vec::new();
                for f in &created {
                    let mut d = f.parent();
                    for _ in 0..3 {
                        let Some(dir) = d else { break };
                        if !dirs.iter().any(|x| x == dir) {
                            dirs.push(dir.to_path_buf());
                        }
                        d = dir.parent();
                    }
                }
                super::fsync_all(&created, &dirs).map_err(|e| StoreError::from_io("fsync", &e))?;
            }
        }
        // …and room for the commit, so redb never fails half-way (and latches) on ENOSPC.
        let (total, avail) = crate::store::disk_usage(data.root())
            .map_err(|e| StoreError::from_io("statvfs", &e))?;
        let reserve = index_reserve(total, items.len());
        if avail < reserve {
            return Err(StoreError::DiskFull(format!(
                "{avail} bytes free; the index commit waits for {reserve} bytes"
            )));
        }
        Ok(())
    })();
    if let Err(e) = result.and_then(|()| tx.commit().map_err(|e| db(e.into()))) {
        // Dropping the transaction aborts it. Files placed under new names stay until the
        // retry places them again; none of them is indexed.
        placer.failed();
        return Err(e);
    }
    if placer.made_dirs.len() > 100_000 {
        placer.made_dirs.clear();
    }
    for f in &replaced_files {
        if !created.contains(f) {
            remove_quietly(f);
        }
    }
    if let Err(e) = index.refresh_studies(&touched) {
        tracing::error!(error = %e, "study summary refresh failed; study searches read the index until it reloads");
    }
    out.destinations.sort();
    out.destinations.dedup();
    Ok(out)
}

/// How placing a file went.
enum Placed {
    Placed,
    /// A large object's file is gone, or its bytes no longer hash to what was received (a
    /// failed write-back, or a power cut in relaxed durability): why.
    Lost(String),
}

/// Puts one object's file at `dest` (not synced: the checkpoint's `syncfs` does that).
fn place(
    it: &Item,
    staged_dir: &Path,
    dest: &Path,
    placer: &mut Placer,
    early_writeback: bool,
) -> Result<Placed, StoreError> {
    let dir = dest
        .parent()
        .expect("object paths have a directory")
        .to_path_buf();
    if !placer.made_dirs.contains(&dir) {
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::from_io("create directory", &e))?;
        placer.made_dirs.insert(dir);
    }
    match (&it.bytes, &it.meta.staged) {
        // Written at its final name, without a temporary file and a rename: nothing reads
        // `dest` before the commit that indexes it (an indexed file is never at `dest`: a new
        // version gets its own name), and a crash or a failure before that commit leaves at
        // worst a partial file that the retry or the replay overwrites.
        (Some(bytes), _) => write_object(dest, bytes, early_writeback)
            .map(|()| Placed::Placed)
            .map_err(|e| {
                remove_quietly(dest);
                StoreError::from_io("write object", &e)
            }),
        (None, Some(name)) => {
            let from = staged_dir.join(name);
            let size = it.meta.record.file_size;
            let doubtful = |dest: &Path| {
                placer
                    .failed_at
                    .is_some_and(|t| super::begun_before(dest, t))
            };
            let doubt = match std::fs::rename(&from, dest) {
                Ok(()) => doubtful(dest),
                // Placed by an earlier attempt whose checkpoint did not commit (or before a
                // crash): whole, unless a write-back failed since, or the power was cut
                // before it reached the disk (relaxed durability). (With the staged file
                // still there, it is the directory that is missing: an error, retried.)
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !from.exists() => {
                    match std::fs::metadata(dest) {
                        Ok(m) => m.len() != size || doubtful(dest),
                        Err(_) => {
                            return Ok(Placed::Lost(format!(
                                "its file is neither in {} nor in objects/",
                                staged_dir.display()
                            )))
                        }
                    }
                }
                Err(e) => return Err(StoreError::from_io("place large object", &e)),
            };
            if !doubt {
                return Ok(Placed::Placed);
            }
            let tmp = staged_dir.join(format!("{name}.rewrite"));
            let r = rewrite_checked(dest, &tmp, &it.meta.record);
            if !matches!(r, Ok(Placed::Placed)) {
                remove_quietly(&tmp);
            }
            r.map_err(|e| StoreError::from_io("write large object again", &e))
        }
        (None, None) => Err(StoreError::Io("journal record without bytes".into())),
    }
}

/// Writes a large object's file again, through `tmp` renamed over it, if its bytes still
/// hash to what was received: after a failed write-back the page cache may hold the bytes
/// the disk lacks (then this puts them on the disk), or have let them go (then the disk's
/// are read back, and do not match).
fn rewrite_checked(
    dest: &Path,
    tmp: &Path,
    rec: &crate::store::index::InstanceRecord,
) -> std::io::Result<Placed> {
    use std::io::{Read, Write};
    let mut from = std::fs::File::open(dest)?;
    let mut to = std::fs::File::create(tmp)?;
    let header = rec.file_size.saturating_sub(rec.dataset_size);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let skip = usize::try_from(header.saturating_sub(at))
            .unwrap_or(usize::MAX)
            .min(n);
        hasher.update(&chunk[skip..]);
        to.write_all(chunk)?;
        at += n as u64;
    }
    let hash = hasher.finalize().to_hex();
    if at != rec.file_size || hash.as_str() != rec.dataset_blake3 {
        return Ok(Placed::Lost(format!(
            "{at} of {} bytes read back, dataset BLAKE3 {} instead of {}",
            rec.file_size,
            &hash.as_str()[..16],
            &rec.dataset_blake3[..rec.dataset_blake3.len().min(16)]
        )));
    }
    drop(to);
    std::fs::rename(tmp, dest)?;
    Ok(Placed::Placed)
}

/// Writes a file and, with `early_writeback`, starts its writeback at once
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait): the device then takes
/// the checkpoint's data as it is produced, instead of all at once at its `syncfs`, where
/// the journal's flushes would queue behind tens of megabytes (the tail latency of the
/// answers). Without journal flushes (relaxed durability) there is nothing to queue behind,
/// and the writeback is left to the kernel's flusher and the `syncfs`, as storescp leaves it.
fn write_object(dest: &Path, bytes: &[u8], early_writeback: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::create(dest)?;
    f.write_all(bytes)?;
    if !early_writeback {
        return Ok(());
    }
    // SAFETY: sync_file_range only uses the descriptor, which `f` keeps open. Advisory: an
    // error only means the checkpoint's syncfs writes the data instead.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
    Ok(())
}

/// How often an idle materializer checks whether the index was latched.
pub(super) const LATCH_PROBE: Duration = Duration::from_secs(1);

/// The index needs reopening: no checkpoint can succeed in this process, a restart reopens it
/// and replays the journal.
fn index_latched(cfg: &IngestConfig, e: &IndexError) {
    cfg.health.fail(
        "index",
        &format!("{e}; the next start reopens it and replays the journal"),
    );
}

/// The materializer thread: gathers acknowledged groups and checkpoints them every
/// `checkpoint_interval`, every `checkpoint_objects` objects, when the ring fills, when a
/// reader asks (`Settle`) and at shutdown. A failed checkpoint is retried (its objects stay
/// in the journal and the overlay); `/readyz` says why meanwhile.
pub(super) fn run<S: Storage>(mail: &Mailbox, shared: Arc<Shared<S>>, mut placer: Placer) {
    let vital = crate::health::Vital::in_registry("materializer", shared.cfg.health);
    let cfg = &shared.cfg;
    let mut pending: Vec<Item> = Vec::new();
    let mut pending_bytes: u64 = 0;
    let mut end: Option<Position> = None;
    let mut since: Option<Instant> = None;
    let mut hurry = false;
    let mut closed = false;
    let mut failing_since: Option<Instant> = None;
    let mut last_objects = Instant::now();
    let mut last_trim = Instant::now();
    let mut last_probe = Instant::now();
    loop {
        let wait = match since {
            _ if closed => Duration::ZERO,
            Some(s) if failing_since.is_none() => {
                cfg.checkpoint_interval.saturating_sub(s.elapsed())
            }
            Some(_) => Duration::from_millis(500),
            None => Duration::from_secs(1),
        };
        if !closed {
            // Woken by the first group, a threshold, a hurry or shutdown; otherwise the
            // groups wait in the mailbox until `wait` (the interval) is up.
            let got = mail.take(wait, &mut pending, pending_bytes);
            if got.objects > 0 {
                since.get_or_insert_with(Instant::now);
                pending_bytes += got.bytes;
            }
            if got.end.is_some() {
                end = got.end;
            }
            hurry |= got.hurry;
            closed = got.closed;
        }
        if end.is_some() {
            last_objects = Instant::now();
        } else if last_objects.elapsed() >= cfg.trim_buffers_after {
            // Ingest went quiet: the buffers pooled for the next objects can go, and the
            // room the last backlog's records took.
            cfg.buffers.trim();
            pending.shrink_to_fit();
            mail.trim();
        }
        if last_trim.elapsed() >= cfg.trim_buffers_after {
            // Under load the pool keeps what the checkpoints give back; what no object
            // needed for a whole period goes.
            cfg.buffers.trim_unused();
            last_trim = Instant::now();
        }
        // The lag gauge: its age is taken when the metrics are read.
        crate::metrics::global()
            .journal_oldest(pending.first().map(|i| i.meta.record.received_at_us));
        let Some(e) = end else {
            if closed {
                break;
            }
            if last_probe.elapsed() >= LATCH_PROBE {
                // Idle: no checkpoint meets an I/O error another writer latched the index
                // with, so look for one.
                last_probe = Instant::now();
                if let Some(err) = shared.index.latched() {
                    index_latched(cfg, &err);
                }
            }
            continue;
        };
        let due = closed
            || hurry
            || pending.len() >= cfg.checkpoint_objects
            || pending_bytes >= shared.ring_bytes / 4
            || since.is_some_and(|s| s.elapsed() >= cfg.checkpoint_interval);
        if !due {
            continue;
        }
        let started = Instant::now();
        let staged_dir = shared.staged_dir();
        match checkpoint(
            &shared.index,
            &shared.data,
            cfg,
            &staged_dir,
            &pending,
            e,
            &mut placer,
        ) {
            Ok(done) => {
                // The objects are in their files: their buffers serve the next ones (before
                // anyone waiting for this checkpoint is let go).
                let objects = pending.len();
                for it in pending.drain(..) {
                    if let Some(b) = it.bytes {
                        cfg.buffers.give_bytes(b);
                    }
                }
                if let Err(err) = shared.journal().release_through(&e) {
                    tracing::error!(error = %err, "journal release failed");
                }
                shared.overlay.indexed(&done.placed);
                // Healthy again before anyone waiting for this checkpoint is let go.
                if failing_since.take().is_some() {
                    tracing::info!("checkpoints succeed again");
                    shared.progress.problem("checkpoint", None);
                }
                shared.progress.materialized(e.seq - 1);
                // The journal writer may wait for room in the ring or for the backlog.
                shared.released.notify_all();
                if let Some(w) = &cfg.wake {
                    for d in &done.destinations {
                        (w.0)(d);
                    }
                }
                tracing::debug!(
                    objects,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "checkpoint"
                );
                crate::metrics::global().checkpoint(objects, started.elapsed());

                pending_bytes = 0;
                end = None;
                since = None;
                hurry = false;
            }
            Err(err) => {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                }
                tracing::error!(error = %err, objects = pending.len(), "checkpoint failed; the objects stay in the journal and are retried");
                shared
                    .progress
                    .problem("checkpoint", Some(format!("failing: {err}")));
                if let StoreError::Index(e) = &err {
                    if e.needs_reopen() {
                        index_latched(cfg, e);
                    }
                }
                if closed {
                    tracing::error!("stopping with objects not yet indexed: the next start replays them from the journal");
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        if closed && pending.is_empty() {
            break;
        }
    }
    vital.done();
}

/// What recovery found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Records replayed and materialized.
    pub records: u64,
    /// Groups replayed.
    pub groups: u64,
}

/// Start-up: replays every valid group after the stored checkpoint, materializes and
/// indexes its records (idempotently: the same names, the same decisions), commits the new
/// checkpoint, removes staged files no record names, and returns the writer.
pub fn recover<S: Storage>(
    storage: S,
    jcfg: JournalConfig,
    index: &Index,
    data: &DataDir,
    cfg: &IngestConfig,
    placer: &mut Placer,
) -> Result<(Journal<S>, Recovered), super::IngestError> {
    let cp = read_checkpoint(index)?;
    let mut replay = Journal::open(storage, jcfg, cp)?;
    let staged_dir = super::staged_dir(data);
    std::fs::create_dir_all(&staged_dir)
        .and_then(|()| crate::store::fsync_dir(staged_dir.parent().unwrap_or(&staged_dir)))
        .map_err(|e| super::IngestError::Io(format!("create {}: {e}", staged_dir.display())))?;
    // What the last run wrote and did not checkpoint is not trusted: it may have been cut by
    // the power before reaching the disk (relaxed durability), or have lost a write-back
    // that the last run's syncs saw and this run's never will. Inline objects are written
    // again from the journal anyway; a large object's file is written again if it still
    // hashes to its record, else reported lost.
    placer.failed_at = Some(SystemTime::now());
    let mut rep = Recovered::default();
    let mut items: Vec<Item> = Vec::new();
    let mut bytes = 0u64;
    let mut end = None;
    while let Some(g) = replay.next_group()? {
        rep.groups += 1;
        for r in &g.records {
            let meta = match RecordMeta::decode(r.meta) {
                Ok(m) => m,
                Err(e) => {
                    // Its checksum held, so this is not a torn write: a record this version
                    // cannot read. Say so loudly; the rest still replays.
                    tracing::error!(seq = r.seq, error = %e, "journal record with an unreadable meta section skipped");
                    continue;
                }
            };
            let body = (meta.staged.is_none()).then(|| {
                let mut v = Vec::with_capacity(r.header.len() + r.dataset.len());
                v.extend_from_slice(r.header);
                v.extend_from_slice(r.dataset);
                Bytes::from(v)
            });
            bytes += body.as_ref().map_or(0, |b| b.len() as u64);
            items.push(Item {
                seq: r.seq,
                meta,
                bytes: body,
            });
        }
        end = Some(g.end);
        if bytes > 64 << 20 {
            let e = end.expect("set above");
            checkpoint(index, data, cfg, &staged_dir, &items, e, placer)?;
            rep.records += items.len() as u64;
            items.clear();
            bytes = 0;
        }
    }
    if let Some(stop) = replay.stop() {
        tracing::info!(at = ?stop.at, reason = ?stop.reason, "journal replay ended");
    }
    let mut journal = replay.finish()?;
    if let Some(e) = end {
        if !items.is_empty() {
            checkpoint(index, data, cfg, &staged_dir, &items, e, placer)?;
            rep.records += items.len() as u64;
        }
        journal.release_through(&e)?;
    }
    // Every record is materialized: what is left in staged/ belongs to groups that never
    // became durable (never acknowledged).
    if let Ok(rd) = std::fs::read_dir(&staged_dir) {
        for f in rd.flatten() {
            remove_quietly(&f.path());
        }
    }
    // Everything from before the start is indexed or gone: new files are trusted again.
    placer.failed_at = None;
    Ok((journal, rep))
}

/// The stored checkpoint of the journal, if it was ever checkpointed.
pub fn read_checkpoint(index: &Index) -> Result<Option<Position>, super::IngestError> {
    use redb::ReadableDatabase;
    let tx = index
        .database()
        .begin_read()
        .map_err(|e| super::IngestError::Index(e.into()))?;
    let t = match tx.open_table(crate::db::JOURNAL) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(super::IngestError::Index(e.into())),
    };
    let v = t
        .get(JOURNAL_NAME)
        .map_err(|e| super::IngestError::Index(e.into()))?;
    match v {
        None => Ok(None),
        Some(g) => Position::from_bytes(g.value()).map(Some).ok_or_else(|| {
            super::IngestError::Io("stored journal checkpoint does not decode".into())
        }),
    }
}
