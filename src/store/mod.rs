//! Storage: UID validation, the Part-10 header, the streaming object writer, index-attribute
//! extraction, the redb index and the per-core write-ahead journal. Everything here is below
//! the network layer: it knows files and bytes, not associations.

pub mod attrs;
pub mod buffers;
pub mod commitment;
pub mod crashdb;
pub mod error;
pub mod index;
pub mod journal;
pub mod meta;
pub mod query;
pub mod sink;
pub mod summary;

pub mod writer;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

pub use error::StoreError;

/// Flushes every dirty page and metadata change of the filesystem holding `f` (`syncfs(2)`):
/// the batched form of fdatasync-per-file plus fsync-per-directory, one journal commit.
pub fn syncfs(f: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes a directory's entries durable (`fsync` on the directory): after creating or renaming
/// something in it that a later step relies on surviving a power cut.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Filesystem usage: (total bytes, bytes available to unprivileged writers).
pub fn disk_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    // SAFETY: `st` is plain old data filled by statvfs; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// The disk high-water mark: new objects are refused (A700) once the data filesystem is this
/// full, so the disk never fills under a sender and the index and queue keep room to work.
///
/// `statvfs` is not run per C-STORE: the answer is reused for up to [`DiskGuard::MAX_AGE`] and
/// until [`DiskGuard::admit`] has counted 0.5 % of the filesystem (at most 64 MiB) of new
/// objects since the last look. So the mark can be overshot by at most that much, and a
/// small-object stream pays one `statvfs` per thousands of objects instead of one each.
#[derive(Debug, Clone)]
pub struct DiskGuard {
    root: PathBuf,
    high_water_percent: u8,
    state: Arc<GuardState>,
}

/// The last look at the filesystem, shared by every core.
#[derive(Debug)]
struct GuardState {
    /// Monotonic origin of `looked_at_us`.
    epoch: std::time::Instant,
    /// When the last `statvfs` ran, µs after `epoch` (`u64::MAX`: never).
    looked_at_us: AtomicU64,
    /// Bytes admitted since then.
    admitted: AtomicU64,
    /// Bytes after which to look again.
    budget: AtomicU64,
    /// Percent used at the last look, as `f64` bits.
    used_bits: AtomicU64,
}

impl DiskGuard {
    /// Longest time a look at the filesystem is reused.
    pub const MAX_AGE: std::time::Duration = std::time::Duration::from_millis(100);

    /// Guards the filesystem holding `root`; 100 % disables the check.
    pub fn new(root: &Path, high_water_percent: u8) -> Self {
        Self {
            root: root.to_path_buf(),
            high_water_percent,
            state: Arc::new(GuardState {
                epoch: std::time::Instant::now(),
                looked_at_us: AtomicU64::new(u64::MAX),
                admitted: AtomicU64::new(0),
                budget: AtomicU64::new(0),
                used_bits: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// The mark, in percent (100: off).
    pub fn high_water_percent(&self) -> u8 {
        self.high_water_percent
    }

    /// Percent of the filesystem in use (reserved blocks count as used), looked up now.
    pub fn used_percent(&self) -> std::io::Result<f64> {
        let (total, avail) = disk_usage(&self.root)?;
        Ok(Self::percent(total, avail))
    }

    fn percent(total: u64, avail: u64) -> f64 {
        if total == 0 {
            100.0
        } else {
            100.0 * (total - avail.min(total)) as f64 / total as f64
        }
    }

    /// Counts `bytes` of new objects written since the last look.
    pub fn admit(&self, bytes: u64) {
        self.state.admitted.fetch_add(bytes, Relaxed);
    }

    /// `Err(DiskFull)` when usage is at or above the mark. A failing `statvfs` does not
    /// refuse objects: the write itself would then report the real problem.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.high_water_percent >= 100 {
            return Ok(());
        }
        let st = &self.state;
        let now = u64::try_from(st.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        let looked = st.looked_at_us.load(Relaxed);
        let fresh = looked != u64::MAX
            && now.saturating_sub(looked) < Self::MAX_AGE.as_micros() as u64
            && st.admitted.load(Relaxed) < st.budget.load(Relaxed);
        let used = if fresh {
            f64::from_bits(st.used_bits.load(Relaxed))
        } else {
            match disk_usage(&self.root) {
                Ok((total, avail)) => {
                    let used = Self::percent(total, avail);
                    st.used_bits.store(used.to_bits(), Relaxed);
                    st.budget.store((total / 200).min(64 << 20), Relaxed);
                    st.admitted.store(0, Relaxed);
                    st.looked_at_us.store(now, Relaxed);
                    used
                }
                Err(_) => return Ok(()),
            }
        };
        if used >= f64::from(self.high_water_percent) {
            Err(StoreError::DiskFull(format!(
                "data filesystem {:.1}% full, at or above the high-water mark of {}%",
                used, self.high_water_percent
            )))
        } else {
            Ok(())
        }
    }
}

/// Permission bits the daemon never grants on anything it creates: group write and every
/// bit for others. Objects and databases hold patient data, so their modes must not depend on
/// the umask the daemon happened to be started with: files come out 0640, directories 0750.
pub const UMASK: u32 = 0o027;

/// Mode of the data directory and its subdirectories.
pub const DIR_MODE: u32 = 0o750;

/// Mode of object files and databases.
pub const FILE_MODE: u32 = 0o640;

/// The layout of the data directory (see `docs/design.md`):
/// `objects/<Study>/<Series>/<SOPInstance>.dcm`, `tmp/` for objects being received (same
/// filesystem, so the final rename is atomic), `gateway.redb` for index and queue. While a
/// process uses it, it holds an exclusive `flock` on the directory itself, so a second daemon
/// on the same directory stops before it touches anything (and no lock file is left around).
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    /// The directory, open and locked; the lock goes when the last clone is dropped (or the
    /// process ends).
    _lock: std::sync::Arc<std::fs::File>,
    /// See [`DataDir::objects_lock`].
    objects_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

impl DataDir {
    /// Takes the directory's lock, creates the directories if needed and removes leftover
    /// temporary files (objects whose reception never completed: they were never
    /// acknowledged, so nothing is lost).
    ///
    /// The lock comes first: removing `tmp/` files under a running daemon would break the
    /// objects it is receiving. It also sets the process umask to [`UMASK`], so every file
    /// and directory created from here on (objects, temporary files, databases, the control
    /// socket) is at most 0640 / 0750 whatever the umask the daemon was started with, and
    /// re-secures the top-level entries an older version or a hand-made setup left wider.
    pub fn prepare(root: &Path) -> std::io::Result<(Self, usize)> {
        // SAFETY: umask(2) cannot fail; it only changes this process's file creation mask.
        unsafe { libc::umask(UMASK as libc::mode_t) };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(root)?;
        let lock = Self::lock(root)?;
        let dd = Self {
            root: root.to_path_buf(),
            _lock: std::sync::Arc::new(lock),
            objects_lock: Default::default(),
        };
        for dir in [dd.objects(), dd.tmp()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&dir)?;
        }
        dd.restrict_modes();
        // The new directories' names must survive a power cut before anything in them is
        // acknowledged (a filesystem without syncfs, e.g. FUSE, would otherwise lose them).
        fsync_dir(root)?;
        if let Some(parent) = root.parent() {
            let _ = fsync_dir(parent);
        }
        let mut removed = 0;
        for entry in std::fs::read_dir(dd.tmp())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok((dd, removed))
    }

    /// Opens the directory `root` and takes an exclusive, non-blocking `flock` on it.
    fn lock(root: &Path) -> std::io::Result<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(root)?;
        // SAFETY: flock only uses the descriptor, which `f` keeps open.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
                std::io::Error::other(format!(
                    "{} is in use by another dicom-gw process (it holds the directory's lock); \
                     stop it first, or give this one its own data directory",
                    root.display()
                ))
            } else {
                std::io::Error::new(e.kind(), format!("lock {}: {e}", root.display()))
            });
        }
        Ok(f)
    }

    /// Sets the modes of the top-level directories and databases to [`DIR_MODE`] /
    /// [`FILE_MODE`] (best effort: a failure is logged; new files get them from [`UMASK`]).
    fn restrict_modes(&self) {
        use std::os::unix::fs::PermissionsExt;
        let dirs = [self.root.clone(), self.objects(), self.tmp()];
        let files = ["gateway.redb", "worklist.redb"].map(|f| self.root.join(f));
        for (paths, mode) in [(&dirs[..], DIR_MODE), (&files[..], FILE_MODE)] {
            for p in paths {
                let Ok(meta) = std::fs::symlink_metadata(p) else {
                    continue;
                };
                if meta.permissions().mode() & 0o7777 == mode {
                    continue;
                }
                if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot restrict the mode of a data directory entry");
                }
            }
        }
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Held while files under `objects/` are created or removed together with their index
    /// rows (the ingest checkpoint, retention): a removal's late `unlink` can then never
    /// delete a file that a checkpoint has just put at the same path (audit H1).
    pub fn objects_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.objects_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where stored objects live.
    pub fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    /// Where objects being received are written.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The index and queue database.
    pub fn index_path(&self) -> PathBuf {
        self.root.join("gateway.redb")
    }

    /// Path of an object relative to the data directory. Every UID is validated first
    /// (PS3.5 §9.1: digits and dots only), so no UID can steer the path anywhere else.
    pub fn object_rel_path(study: &str, series: &str, sop: &str) -> Result<PathBuf, StoreError> {
        let study = crate::dicom::uid::validate_uid(study).map_err(|e| StoreError::InvalidUid {
            field: "StudyInstanceUID",
            source: e,
        })?;
        let series =
            crate::dicom::uid::validate_uid(series).map_err(|e| StoreError::InvalidUid {
                field: "SeriesInstanceUID",
                source: e,
            })?;
        let sop = crate::dicom::uid::validate_uid(sop).map_err(|e| StoreError::InvalidUid {
            field: "SOPInstanceUID",
            source: e,
        })?;
        Ok(Path::new("objects")
            .join(study)
            .join(series)
            .join(format!("{sop}.dcm")))
    }

    /// Path of a quarantined object (one without a usable Study or Series Instance UID):
    /// `objects/quarantine/<h>/<hash>.dcm`, named by `key` (a hash of its raw UIDs), never by
    /// the UIDs themselves. `quarantine` cannot be a UID (digits and dots only), so it never
    /// meets a study directory, and the object stays inside `objects/` for every reader.
    pub fn quarantine_rel_path(key: &blake3::Hash) -> PathBuf {
        let hex = key.to_hex();
        Path::new("objects")
            .join(QUARANTINE_DIR)
            .join(&hex[..2])
            .join(format!("{hex}.dcm"))
    }
}

/// The directory under `objects/` that holds quarantined objects.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Whether an index record's path is in quarantine.
pub fn is_quarantined(rel_path: &str) -> bool {
    Path::new(rel_path).starts_with(Path::new("objects").join(QUARANTINE_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `statvfs` is reused until it is [`DiskGuard::MAX_AGE`] old or the budget of
    /// admitted bytes is spent; the mark itself is still applied to what it saw.
    #[test]
    fn the_disk_guard_looks_again_after_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir.path(), 99);
        let looked = || g.state.looked_at_us.load(Relaxed);
        assert_eq!(looked(), u64::MAX);
        g.check().unwrap();
        let first = looked();
        assert_ne!(first, u64::MAX);
        std::thread::sleep(std::time::Duration::from_millis(2));
        g.check().unwrap();
        assert_eq!(looked(), first, "a fresh look is reused");
        g.admit(u64::MAX / 2);
        g.check().unwrap();
        assert!(looked() > first, "a spent budget forces a new look");
        // Any real filesystem is more than 0.0001 % used: a 1 % mark refuses, 100 % is off.
        assert!(matches!(
            DiskGuard::new(dir.path(), 1).check(),
            Err(StoreError::DiskFull(_))
        ));
        DiskGuard::new(dir.path(), 100).check().unwrap();
    }

    #[test]
    fn object_paths_come_only_from_valid_uids() {
        assert_eq!(
            DataDir::object_rel_path("1.2", "1.2.3", "1.2.3.4").unwrap(),
            Path::new("objects/1.2/1.2.3/1.2.3.4.dcm")
        );
        assert!(DataDir::object_rel_path("../..", "1.2", "1.3").is_err());
        assert!(DataDir::object_rel_path("1.2", "1.2/../../x", "1.3").is_err());
        assert!(DataDir::object_rel_path("1.2", "1.2", "").is_err());
    }

    #[test]
    fn prepare_removes_leftover_temporary_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tmp")).unwrap();
        std::fs::write(d.path().join("tmp/0-1.part"), b"half an object").unwrap();
        let (dd, removed) = DataDir::prepare(d.path()).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(std::fs::read_dir(dd.tmp()).unwrap().count(), 0);
        assert!(dd.objects().is_dir());
    }

    #[test]
    fn a_second_prepare_on_a_directory_in_use_fails_and_touches_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (first, _) = DataDir::prepare(d.path()).unwrap();
        std::fs::write(first.tmp().join("0-1.part"), b"being received").unwrap();
        let e = DataDir::prepare(d.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another dicom-gw"), "{e}");
        assert!(e.contains(&d.path().display().to_string()), "{e}");
        assert!(
            first.tmp().join("0-1.part").exists(),
            "the running one's file is kept"
        );
        drop(first);
        let (_again, removed) = DataDir::prepare(d.path()).unwrap();
        assert_eq!(removed, 1, "once the first is gone the directory is free");
    }
}
