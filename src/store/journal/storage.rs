//! The storage seam under the journal: what it needs from a segment file, the real
//! implementation on files, and a block-aligned buffer for `O_DIRECT`.
//!
//! The test implementation that models power loss is [`super::CrashStorage`].

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use super::format::BLOCK;
use crate::config::Durability;

/// One segment of the ring: a preallocated file the journal overwrites in place.
///
/// Shared (`&self`, `Send + Sync`): two groups may be written at once, at different offsets
/// (see [`super::Journal::reserve`]).
pub trait Segment: Send + Sync {
    /// Writes all of `buf` at `offset` (block-aligned offset, length and buffer).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (`fdatasync`; nothing to do when writes are
    /// synchronous already). After an error nothing is known about those writes.
    fn flush(&self) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset` (block-aligned offset, length and buffer).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Length of the segment.
    fn len(&self) -> u64;
    /// Whether the segment has no bytes (not yet preallocated).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes the segment `len` bytes long with every byte written (zeros) and durable, so a
    /// later overwrite changes neither size nor extents and its flush needs no metadata commit.
    fn preallocate(&mut self, len: u64) -> io::Result<()>;
}

/// A journal directory: its segments and its small state record.
pub trait Storage {
    /// The segment type.
    type Segment: Segment;
    /// Opens segment `index`. If it does not exist and `create` is set, it is created and
    /// preallocated to `size` first (durably, before it is visible under its name); without
    /// `create` a missing segment is a `NotFound` error (a ring with a hole must not be used).
    fn segment(&mut self, index: u32, size: u64, create: bool) -> io::Result<Self::Segment>;
    /// The state record last stored, if any.
    fn load_state(&mut self) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the state record; durable when this returns.
    fn store_state(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// How segment files are written (see [`FileStorage::open`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT|O_DSYNC` where the filesystem takes it, else buffered + `fdatasync`.
    Auto,
    /// `O_DIRECT|O_DSYNC`, or an error where unsupported.
    Direct,
    /// Buffered `pwrite` + `fdatasync` (and never `O_DSYNC`).
    Buffered,
}

/// How segment files ended up being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileIo {
    /// `O_DIRECT|O_DSYNC`: each write is durable when it returns; flush does nothing.
    DirectSync,
    /// Buffered writes; flush is `fdatasync`.
    Buffered,
}

/// Segment files `seg-<k>` and the state file `state` in one directory
/// (`<data>/journal/core-<n>/`).
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    io: FileIo,
}

impl FileStorage {
    /// Opens (creating) the journal directory. With `Durability::Full` and [`IoMode::Auto`],
    /// `O_DIRECT` is probed on a scratch file: tmpfs and some other filesystems refuse it,
    /// and then writes are buffered and flushed with `fdatasync`. Relaxed durability never
    /// uses `O_DSYNC` (it must not wait for the disk).
    pub fn open(dir: &Path, durability: Durability, mode: IoMode) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(crate::store::DIR_MODE)
            .create(dir)?;
        // The directory entries of `journal/core-<n>` and `journal/` must be durable before a
        // flushed group can count on its segment being found.
        for d in dir.ancestors().skip(1).take(2) {
            if !d.as_os_str().is_empty() {
                File::open(d)?.sync_all()?;
            }
        }
        let io = match (durability, mode) {
            (Durability::Relaxed, _) | (_, IoMode::Buffered) => FileIo::Buffered,
            (Durability::Full, IoMode::Direct) => {
                probe_direct(dir)?;
                FileIo::DirectSync
            }
            (Durability::Full, IoMode::Auto) => match probe_direct(dir) {
                Ok(()) => FileIo::DirectSync,
                Err(e) => {
                    tracing::info!(dir = %dir.display(), error = %e, "journal: no O_DIRECT here, using buffered writes + fdatasync");
                    FileIo::Buffered
                }
            },
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            io,
        })
    }

    /// How segments are written.
    pub fn io(&self) -> FileIo {
        self.io
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_flags(&self) -> i32 {
        match self.io {
            FileIo::DirectSync => libc::O_DIRECT | libc::O_DSYNC,
            FileIo::Buffered => 0,
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// Creates a scratch file with `O_DIRECT|O_DSYNC` and writes one aligned block to it.
fn probe_direct(dir: &Path) -> io::Result<()> {
    let path = dir.join(".direct-probe");
    let result = (|| {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(&path)?;
        let buf = AlignedBuf::new(BLOCK);
        f.write_all_at(&buf, 0)
    })();
    let _ = std::fs::remove_file(&path);
    result
}

impl Storage for FileStorage {
    type Segment = FileSegment;

    fn segment(&mut self, index: u32, size: u64, create: bool) -> io::Result<FileSegment> {
        let path = self.dir.join(format!("seg-{index}"));
        if !path.exists() && create {
            // Prepared under a temporary name and renamed: a segment visible under its name
            // is always fully written, whatever moment a crash picked.
            let tmp = self.dir.join(format!("seg-{index}.tmp"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&tmp)?;
            let mut seg = FileSegment {
                file,
                io: FileIo::Buffered,
                len: 0,
            };
            seg.preallocate(size)?;
            drop(seg);
            std::fs::rename(&tmp, &path)?;
            self.sync_dir()?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(self.open_flags())
            .open(&path)?;
        let len = file.metadata()?.len();
        Ok(FileSegment {
            file,
            io: self.io,
            len,
        })
    }

    fn load_state(&mut self) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.dir.join("state")) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn store_state(&mut self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join("state.tmp");
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        f.write_all_at(bytes, 0)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join("state"))?;
        self.sync_dir()
    }
}

/// A segment file.
#[derive(Debug)]
pub struct FileSegment {
    file: File,
    io: FileIo,
    len: u64,
}

impl Segment for FileSegment {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        match self.io {
            FileIo::DirectSync => Ok(()),
            FileIo::Buffered => self.file.sync_data(),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        // SAFETY: fallocate only uses the descriptor, which `self.file` keeps open.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e);
            }
            self.file.set_len(len)?;
        }
        // Written, not just allocated: ext4/XFS keep fallocated extents "unwritten", and the
        // first overwrite of each would need a metadata commit (two device flushes, not one).
        let zeros = AlignedBuf::new(1 << 20);
        let mut at = 0;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.len = len;
        Ok(())
    }
}

/// A zeroed, [`BLOCK`]-aligned byte buffer (what `O_DIRECT` wants), grown on demand and
/// reused for every group.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to a whole block).
    pub fn new(len: usize) -> Self {
        let len = len.max(1).div_ceil(BLOCK) * BLOCK;
        let layout = Layout::from_size_align(len, BLOCK).expect("block-aligned layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        Self { ptr, len }
    }

    /// Makes the buffer at least `len` bytes long, keeping its contents.
    pub fn ensure(&mut self, len: usize) {
        if len > self.len {
            let mut bigger = Self::new(len.next_power_of_two());
            bigger[..self.len].copy_from_slice(self);
            *self = bigger;
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at allocation) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, BLOCK).expect("block-aligned layout");
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}
