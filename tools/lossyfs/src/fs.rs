//! The FUSE face of the [`Model`]: every request is applied to the model under one lock, so a
//! power cut ([`Lossy::cut`]) falls between two requests. After a cut every request fails with
//! EIO (the disk is gone) until [`Lossy::power_on`]; remount before using the filesystem again,
//! so that the kernel's caches (attributes, pages, names) do not show the lost state.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::model::{self, Ino, Kind, Model};

/// Inode of the control file `/.lossyfs-ctl` (not listed by readdir).
pub const CTL_INO: u64 = 0x7fff_ffff_ffff_fff0;
/// Name of the control file at the root.
pub const CTL_NAME: &str = ".lossyfs-ctl";
const TTL: Duration = Duration::from_secs(1);
/// What statfs reports as the size of the filesystem (the model lives in memory).
const FS_BYTES: u64 = 64 << 30;

/// The model plus the power state.
#[derive(Debug, Default)]
pub struct State {
    /// The filesystem.
    pub model: Model,
    /// Power is off: every request fails with EIO.
    pub dead: bool,
    /// Requests the server did not understand (e.g. `Unknown FUSE opcode (50)` for
    /// FUSE_SYNCFS), as fuser logged them.
    pub unknown: Vec<String>,
    /// A failing disk that keeps its power: every write of at least this many bytes fails
    /// with EIO (and changes nothing) until `heal`. Under a loop device the failures are a
    /// block device's write errors; with the kernel's writeback cache
    /// ([`Lossy::with_writeback_cache`]) they reach processes as write-back errors, at their
    /// next `fsync`, `syncfs` or close.
    pub failing_writes: Option<u64>,
    /// Whether the next mount asks the kernel for its writeback cache.
    pub writeback_cache: bool,
}

/// A handle on a lossy filesystem, shared by its FUSE sessions and the test that drives it.
#[derive(Debug, Clone, Default)]
pub struct Lossy(Arc<Mutex<State>>);

impl Lossy {
    /// An empty filesystem.
    pub fn new() -> Lossy {
        Lossy::default()
    }

    /// Locks the state.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Power loss: the volatile state is gone, and every request fails with EIO until
    /// [`Lossy::power_on`].
    pub fn cut(&self) {
        let mut s = self.state();
        s.model.cut();
        s.dead = true;
    }

    /// The same filesystem, mounted with the kernel's writeback cache: writes stay in the
    /// page cache and reach the server later, as on a block device, so a failed write is a
    /// writeback error (see [`State::failing_writes`]). Otherwise writes are synchronous
    /// (the default, which the power-cut tests use).
    pub fn with_writeback_cache(self) -> Lossy {
        self.state().writeback_cache = true;
        self
    }

    /// Power back on (remount first: the kernel may cache what the cut took away).
    pub fn power_on(&self) {
        self.state().dead = false;
    }

    /// Everything durable, as syncfs would.
    pub fn sync_all(&self) {
        self.state().model.sync_all();
    }

    /// Request counters so far.
    pub fn counters(&self) -> model::Counters {
        self.state().model.counters.clone()
    }

    /// A summary of the state, as reading the control file shows it.
    pub fn status(&self) -> String {
        let s = self.state();
        let mut unknown: Vec<&String> = s.unknown.iter().collect();
        unknown.dedup();
        format!(
            "power {}\ninodes {}\nclean {}\n{:?}\nunknown {:?}\n",
            if s.dead { "off" } else { "on" },
            s.model.inode_count(),
            s.model.is_clean(),
            s.model.counters,
            unknown
        )
    }

    /// Runs one control command: `cut`, `power-on`, `sync`, `tear SEED`, `no-tear`,
    /// `fail-writes [MIN_BYTES]`, `heal`.
    pub fn control(&self, cmd: &str) -> Result<(), String> {
        let mut w = cmd.split_whitespace();
        match (w.next(), w.next()) {
            (Some("cut"), None) => self.cut(),
            (Some("power-on"), None) => self.power_on(),
            (Some("sync"), None) => self.sync_all(),
            (Some("tear"), Some(seed)) => {
                let seed = seed.parse().map_err(|e| format!("tear {seed}: {e}"))?;
                self.state().model.set_tear(Some(seed));
            }
            (Some("no-tear"), None) => self.state().model.set_tear(None),
            (Some("fail-writes"), min) => {
                let min = min
                    .map_or(Ok(0), str::parse)
                    .map_err(|e| format!("fail-writes: {e}"))?;
                self.state().failing_writes = Some(min);
            }
            (Some("heal"), None) => self.state().failing_writes = None,
            (None, _) => {}
            _ => return Err(format!("unknown command {cmd:?}")),
        }
        Ok(())
    }

    /// Mounts the filesystem at `mountpoint` in background threads; dropping the session (or
    /// [`unmount`]) unmounts it.
    pub fn mount(&self, mountpoint: &std::path::Path) -> std::io::Result<fuser::BackgroundSession> {
        install_logger(self.clone());
        fuser::spawn_mount(Fs(self.clone()), mountpoint, &config())
    }

    /// Mounts and serves in this thread until unmounted.
    pub fn mount_blocking(&self, mountpoint: &std::path::Path) -> std::io::Result<()> {
        install_logger(self.clone());
        fuser::mount(Fs(self.clone()), mountpoint, &config())
    }
}

/// Unmounts a session of [`Lossy::mount`] and waits for its thread.
///
/// The thread ends on its next read of `/dev/fuse` after the unmount, which normally fails with
/// ENODEV (fuser's clean end). Sometimes the kernel has torn the connection down first and
/// that read says ECONNABORTED instead (seen once in CI on kernel 6.18, in a test whose every
/// check had passed): after our own unmount that is the same clean end, not an error.
pub fn unmount(session: fuser::BackgroundSession) -> std::io::Result<()> {
    match session.umount_and_join() {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => Ok(()),
        r => r,
    }
}

fn config() -> fuser::Config {
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        fuser::MountOption::FSName("lossyfs".into()),
        fuser::MountOption::Subtype("lossyfs".into()),
        fuser::MountOption::RW,
    ];
    // One thread: requests are applied in the order the kernel hands them over.
    c.n_threads = Some(1);
    c
}

/// Records fuser's error lines (an unknown opcode is one) on the current filesystem, and prints
/// everything at `LOSSYFS_LOG=debug` or errors at `LOSSYFS_LOG=1`.
struct Logger;
static CURRENT: Mutex<Option<Lossy>> = Mutex::new(None);

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        let line = format!("{}", r.args());
        if r.level() <= log::Level::Error {
            if let Some(l) = CURRENT.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                l.state().unknown.push(line.clone());
            }
        }
        if std::env::var_os("LOSSYFS_LOG").is_some() {
            eprintln!("lossyfs {}: {line}", r.level());
        }
    }
    fn flush(&self) {}
}

fn install_logger(l: Lossy) {
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(l);
    if log::set_logger(&Logger).is_ok() {
        log::set_max_level(match std::env::var("LOSSYFS_LOG").as_deref() {
            Ok("debug") => log::LevelFilter::Debug,
            _ => log::LevelFilter::Warn,
        });
    }
}

struct Fs(Lossy);

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn uid_gid() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

fn attr(m: &Model, ino: Ino) -> Option<FileAttr> {
    let n = m.node(ino)?;
    let (uid, gid) = uid_gid();
    let size = n.size();
    Some(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: n.mtime,
        mtime: n.mtime,
        ctime: n.mtime,
        crtime: n.mtime,
        kind: match n.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
        },
        perm: n.mode as u16,
        nlink: m.nlink(ino),
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

fn ctl_attr() -> FileAttr {
    let (uid, gid) = uid_gid();
    FileAttr {
        ino: INodeNo(CTL_INO),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0o600,
        nlink: 1,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Fs {
    /// The state, or EIO while the power is off.
    fn live(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let s = self.0.state();
        if s.dead {
            return Err(Errno::EIO);
        }
        Ok(s)
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Ino, i32>) {
        match self.live() {
            Err(e) => reply.error(e),
            Ok(s) => match r.map(|ino| attr(&s.model, ino)) {
                Ok(Some(a)) => reply.entry(&TTL, &a, Generation(0)),
                Ok(None) => reply.error(Errno::ENOENT),
                Err(e) => reply.error(err(e)),
            },
        }
    }

    fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.0.state().writeback_cache {
            config
                .add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE)
                .map_err(|_| std::io::Error::other("the kernel offers no writeback cache"))?;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == model::ROOT && name == CTL_NAME {
            return reply.entry(&TTL, &ctl_attr(), Generation(0));
        }
        let r = match self.live() {
            Ok(s) => s.model.lookup(parent.0, name),
            Err(e) => return reply.error(e),
        };
        self.entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == CTL_INO {
            return reply.attr(&TTL, &ctl_attr());
        }
        match self.live() {
            Err(e) => reply.error(e),
            Ok(s) => match attr(&s.model, ino.0) {
                Some(a) => reply.attr(&TTL, &a),
                None => reply.error(Errno::ENOENT),
            },
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino.0 == CTL_INO {
            return reply.attr(&TTL, &ctl_attr());
        }
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let r = (|| {
            if let Some(m) = mode {
                s.model.chmod(ino.0, m)?;
            }
            if let Some(len) = size {
                s.model.set_len(ino.0, len)?;
            }
            Ok::<_, i32>(())
        })();
        match r.map(|()| attr(&s.model, ino.0)) {
            Ok(Some(a)) => reply.attr(&TTL, &a),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let r = match self.live() {
            Ok(mut s) => s.model.create(parent.0, name, Kind::File, mode & !umask),
            Err(e) => return reply.error(e),
        };
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = match self.live() {
            Ok(mut s) => s.model.create(parent.0, name, Kind::Dir, mode & !umask),
            Err(e) => return reply.error(e),
        };
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .live()
            .and_then(|mut s| s.model.unlink(parent.0, name).map_err(err));
        Self::empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .live()
            .and_then(|mut s| s.model.rmdir(parent.0, name).map_err(err));
        Self::empty(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = self.live().and_then(|mut s| {
            s.model
                .rename(parent.0, name, newparent.0, newname, noreplace)
                .map_err(err)
        });
        Self::empty(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == CTL_INO {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        if s.model.node(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        count_open(&mut s.model, flags.0);
        if flags.0 & libc::O_TRUNC != 0 {
            if let Err(e) = s.model.set_len(ino.0, 0) {
                return reply.error(err(e));
            }
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        count_open(&mut s.model, flags);
        let r = match s.model.lookup(parent.0, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(libc::EEXIST),
            Ok(ino) => {
                if flags & libc::O_TRUNC != 0 {
                    s.model.set_len(ino, 0).map(|()| ino)
                } else {
                    Ok(ino)
                }
            }
            Err(_) => s.model.create(parent.0, name, Kind::File, mode & !umask),
        };
        match r.map(|ino| attr(&s.model, ino)) {
            Ok(Some(a)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty())
            }
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == CTL_INO {
            let st = self.0.status().into_bytes();
            let a = (offset as usize).min(st.len());
            let b = (a + size as usize).min(st.len());
            return reply.data(&st[a..b]);
        }
        match self.live() {
            Err(e) => reply.error(e),
            Ok(s) => match s.model.read(ino.0, offset, size as u64) {
                Ok(d) => reply.data(d),
                Err(e) => reply.error(err(e)),
            },
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 == CTL_INO {
            let cmd = String::from_utf8_lossy(data);
            if cmd.trim() == "sync" && self.0.state().dead {
                // A syncfs after the cut fails: the disk is gone.
                return reply.error(Errno::EIO);
            }
            for line in cmd.lines() {
                if let Err(e) = self.0.control(line) {
                    log::warn!("{e}");
                    return reply.error(Errno::EINVAL);
                }
            }
            return reply.written(data.len() as u32);
        }
        match self.live().and_then(|mut s| {
            if s.failing_writes.is_some_and(|min| data.len() as u64 >= min) {
                s.model.counters.failed_writes += 1;
                return Err(Errno::EIO);
            }
            s.model.write(ino.0, offset, data).map_err(err)
        }) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 == CTL_INO {
            return reply.ok();
        }
        let r = self
            .live()
            .and_then(|mut s| s.model.fsync(ino.0, datasync).map_err(err));
        Self::empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.live() {
            Err(e) => reply.error(e),
            Ok(s) => match s.model.node(ino.0) {
                Some(n) if n.kind == Kind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
                Some(_) => reply.error(Errno::ENOTDIR),
                None => reply.error(Errno::ENOENT),
            },
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let entries = match s.model.readdir(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(err(e)),
        };
        let dots = [
            (OsStr::new(".").to_owned(), ino.0, Kind::Dir),
            (OsStr::new("..").to_owned(), ino.0, Kind::Dir),
        ];
        for (i, (name, child, kind)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            let t = match kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            if reply.add(INodeNo(child), (i + 1) as u64, t, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self
            .live()
            .and_then(|mut s| s.model.fsync(ino.0, datasync).map_err(err));
        Self::empty(reply, r);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let used: u64 = {
            let s = self.0.state();
            s.model.inode_count() as u64 * 4096
        };
        let blocks = FS_BYTES / 4096;
        let free = blocks.saturating_sub(used / 4096);
        reply.statfs(blocks, free, free, 1 << 24, 1 << 23, 4096, 255, 4096);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .live()
            .and_then(|mut s| s.model.fallocate(ino.0, offset, length, mode).map_err(err));
        Self::empty(reply, r);
    }
}

fn count_open(m: &mut Model, flags: i32) {
    if flags & libc::O_DIRECT != 0 {
        m.counters.open_direct += 1;
    }
    if flags & libc::O_DSYNC != 0 {
        m.counters.open_dsync += 1;
    }
}
