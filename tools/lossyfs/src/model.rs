//! The pure model of a disk that loses what was not flushed: no FUSE, no I/O.
//!
//! Every inode keeps two states:
//! - *volatile*: what processes see now (every write, truncate, create, rename, unlink);
//! - *durable*: what the disk holds, i.e. what the last flush of that inode made durable.
//!
//! What makes state durable (and nothing else does; the kernel's periodic writeback is not
//! modelled, so unflushed data stays unflushed forever, the most pessimistic disk):
//! - [`Model::fsync`] of a regular file (fsync or fdatasync; O_DSYNC writes arrive as a write
//!   followed by one): its contents and size. Not its name: a new file's directory entry is
//!   durable only once its directory is flushed.
//! - [`Model::fsync`] of a directory (fsyncdir): its entries — names created, renamed into it,
//!   renamed out of it, unlinked. Only the names: the files' contents need their own flush.
//! - [`Model::sync_all`] (syncfs, or `sync` on the control file): everything.
//!
//! [`Model::cut`] is the power loss: every inode reverts to its durable state and inodes no
//! longer reachable from the root through durable entries are forgotten. A rename is two
//! directory changes, each durable with its own directory: flushing only the target directory
//! of a cross-directory rename can leave the file under both names after a cut (like a crash
//! between the two halves on a filesystem without a journal); flushing only the source can lose
//! it. Metadata other than names and sizes (mode, times) is kept as it is: the gateway's
//! guarantees do not depend on it.
//!
//! Optionally ([`Model::set_tear`]) the cut tears: the last write to a file since its flush
//! reaches the disk in part (a prefix of whole 512-byte sectors), as a write in flight would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};

/// Inode number. 1 is the root directory.
pub type Ino = u64;
/// The root directory's inode.
pub const ROOT: Ino = 1;
/// Granularity of the dirty tracking of file contents.
pub const PAGE: u64 = 4096;
const SECTOR: u64 = 512;

/// An errno value (libc::E*).
pub type Errno = i32;

/// Kind of inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
}

/// One inode, both states.
#[derive(Debug, Clone)]
pub struct Node {
    /// File or directory.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Last modification (volatile; informational).
    pub mtime: std::time::SystemTime,
    data: Vec<u8>,
    durable_data: Vec<u8>,
    /// Pages of `data` that may differ from `durable_data`.
    dirty: BTreeSet<u64>,
    /// The last write since the last flush: (offset, len), for tearing.
    last_write: Option<(u64, u64)>,
    entries: BTreeMap<OsString, Ino>,
    durable_entries: BTreeMap<OsString, Ino>,
}

impl Node {
    fn new(kind: Kind, mode: u32) -> Node {
        Node {
            kind,
            mode,
            mtime: std::time::SystemTime::now(),
            data: Vec::new(),
            durable_data: Vec::new(),
            dirty: BTreeSet::new(),
            last_write: None,
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
        }
    }

    /// Volatile size (files: bytes; directories: 0).
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// Whether anything of this inode is not durable.
    pub fn is_dirty(&self) -> bool {
        match self.kind {
            Kind::File => !self.dirty.is_empty() || self.data.len() != self.durable_data.len(),
            Kind::Dir => self.entries != self.durable_entries,
        }
    }

    fn mark(&mut self, from: u64, to: u64) {
        if to > from {
            for p in from / PAGE..to.div_ceil(PAGE) {
                self.dirty.insert(p);
            }
        }
    }

    fn make_durable(&mut self) {
        match self.kind {
            Kind::File => {
                let len = self.data.len();
                if self.dirty.len() as u64 * PAGE * 2 > len as u64 {
                    self.durable_data.clone_from(&self.data);
                } else {
                    self.durable_data.resize(len, 0);
                    for &p in &self.dirty {
                        let a = ((p * PAGE) as usize).min(len);
                        let b = (((p + 1) * PAGE) as usize).min(len);
                        self.durable_data[a..b].copy_from_slice(&self.data[a..b]);
                    }
                }
                self.dirty.clear();
                self.last_write = None;
            }
            Kind::Dir => self.durable_entries.clone_from(&self.entries),
        }
    }

    fn revert(&mut self, tear: Option<u64>) {
        match self.kind {
            Kind::File => {
                if let (Some(seed), Some((off, len))) = (tear, self.last_write) {
                    // A prefix of whole sectors of the last write reached the disk.
                    let sectors = len.div_ceil(SECTOR);
                    let keep = (seed % (sectors + 1)) * SECTOR;
                    let end = (off + keep.min(len)).min(self.data.len() as u64) as usize;
                    let off = (off as usize).min(end);
                    if self.durable_data.len() < end {
                        self.durable_data.resize(end, 0);
                    }
                    self.durable_data[off..end].copy_from_slice(&self.data[off..end]);
                }
                self.data.clone_from(&self.durable_data);
                self.dirty.clear();
                self.last_write = None;
            }
            Kind::Dir => self.entries.clone_from(&self.durable_entries),
        }
    }
}

/// What the filesystem was asked to do, by kind: the feasibility record of what the kernel
/// delivers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// write requests.
    pub writes: u64,
    /// fsync of a file with datasync = false.
    pub fsync: u64,
    /// fsync of a file with datasync = true (fdatasync, O_DSYNC).
    pub fdatasync: u64,
    /// fsyncdir.
    pub fsyncdir: u64,
    /// Whole-filesystem flushes (control `sync`).
    pub sync_all: u64,
    /// fallocate requests.
    pub fallocate: u64,
    /// renames.
    pub renames: u64,
    /// opens with O_DIRECT.
    pub open_direct: u64,
    /// opens with O_DSYNC or O_SYNC.
    pub open_dsync: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Writes refused with EIO (control `fail-writes`).
    pub failed_writes: u64,
}

/// The whole filesystem.
#[derive(Debug, Clone)]
pub struct Model {
    nodes: HashMap<Ino, Node>,
    next: Ino,
    tear: Option<u64>,
    /// Request counters.
    pub counters: Counters,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    /// An empty filesystem: a root directory, durable.
    pub fn new() -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new(Kind::Dir, 0o755));
        Model {
            nodes,
            next: ROOT + 1,
            tear: None,
            counters: Counters::default(),
        }
    }

    /// Tear the last unflushed write of each file at the next cut (a prefix of its sectors
    /// chosen from `seed` survives), or not (`None`, the default: unflushed writes vanish).
    pub fn set_tear(&mut self, seed: Option<u64>) {
        self.tear = seed;
    }

    /// The inode, if it exists.
    pub fn node(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&Node, Errno> {
        let n = self.nodes.get(&ino).ok_or(libc::ENOENT)?;
        if n.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(n)
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        let n = self.node_mut(ino)?;
        match n.kind {
            Kind::File => Ok(n),
            Kind::Dir => Err(libc::EISDIR),
        }
    }

    /// Number of inodes kept.
    pub fn inode_count(&self) -> usize {
        self.nodes.len()
    }

    /// Link count as stat shows it.
    pub fn nlink(&self, ino: Ino) -> u32 {
        match self.nodes.get(&ino) {
            Some(n) if n.kind == Kind::Dir => {
                2 + n
                    .entries
                    .values()
                    .filter(|c| self.nodes.get(c).map(|c| c.kind) == Some(Kind::Dir))
                    .count() as u32
            }
            Some(_) => 1,
            None => 0,
        }
    }

    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// Creates a file or directory `name` in `parent` (volatile until `parent` is flushed).
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        mode: u32,
    ) -> Result<Ino, Errno> {
        check_name(name)?;
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, Node::new(kind, mode & 0o7777));
        let p = self.node_mut(parent)?;
        p.entries.insert(name.to_owned(), ino);
        p.mtime = std::time::SystemTime::now();
        Ok(ino)
    }

    /// Removes the file entry `name` (the inode lives on while open; it is forgotten at a cut
    /// if no durable entry names it).
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if self.nodes[&ino].kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.node_mut(parent)?.entries.remove(name);
        Ok(())
    }

    /// Removes the empty directory `name`.
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let n = &self.nodes[&ino];
        if n.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        if !n.entries.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.node_mut(parent)?.entries.remove(name);
        Ok(())
    }

    /// Whether `ino` is `ancestor` or below it (volatile tree).
    fn is_within(&self, ino: Ino, ancestor: Ino) -> bool {
        if ino == ancestor {
            return true;
        }
        let mut stack = vec![ancestor];
        while let Some(d) = stack.pop() {
            if let Some(n) = self.nodes.get(&d) {
                for &c in n.entries.values() {
                    if c == ino {
                        return true;
                    }
                    if self.nodes.get(&c).map(|c| c.kind) == Some(Kind::Dir) {
                        stack.push(c);
                    }
                }
            }
        }
        false
    }

    /// rename(2); `noreplace` is RENAME_NOREPLACE. A replaced file's inode is dropped from
    /// the volatile tree like an unlink.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        check_name(newname)?;
        let src = self.lookup(parent, name)?;
        self.dir(newparent)?;
        let kind = self.nodes[&src].kind;
        if kind == Kind::Dir && self.is_within(newparent, src) {
            return Err(libc::EINVAL);
        }
        match self.lookup(newparent, newname) {
            Ok(dst) if dst == src => return Ok(()),
            Ok(_) if noreplace => return Err(libc::EEXIST),
            Ok(dst) => {
                let d = &self.nodes[&dst];
                match (kind, d.kind) {
                    (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                    (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                    (Kind::Dir, Kind::Dir) if !d.entries.is_empty() => return Err(libc::ENOTEMPTY),
                    _ => {}
                }
            }
            Err(_) => {}
        }
        self.counters.renames += 1;
        self.node_mut(parent)?.entries.remove(name);
        self.node_mut(newparent)?
            .entries
            .insert(newname.to_owned(), src);
        Ok(())
    }

    /// Entries of a directory (volatile), sorted by name.
    pub fn readdir(&self, dir: Ino) -> Result<Vec<(OsString, Ino, Kind)>, Errno> {
        Ok(self
            .dir(dir)?
            .entries
            .iter()
            .map(|(n, &i)| (n.clone(), i, self.nodes[&i].kind))
            .collect())
    }

    /// Reads up to `len` bytes at `off`.
    pub fn read(&self, ino: Ino, off: u64, len: u64) -> Result<&[u8], Errno> {
        let n = self.nodes.get(&ino).ok_or(libc::ENOENT)?;
        if n.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        let a = (off as usize).min(n.data.len());
        let b = (off.saturating_add(len) as usize).min(n.data.len());
        Ok(&n.data[a..b])
    }

    /// Writes `buf` at `off` (volatile), extending the file with zeros if `off` is past its end.
    pub fn write(&mut self, ino: Ino, off: u64, buf: &[u8]) -> Result<u64, Errno> {
        self.counters.writes += 1;
        let n = self.file_mut(ino)?;
        let end = off + buf.len() as u64;
        let old = n.data.len() as u64;
        if end > old {
            n.data.resize(end as usize, 0);
            n.mark(old, end);
        }
        n.data[off as usize..end as usize].copy_from_slice(buf);
        n.mark(off, end);
        n.last_write = Some((off, buf.len() as u64));
        n.mtime = std::time::SystemTime::now();
        Ok(buf.len() as u64)
    }

    /// Truncates or extends (zeros) the file to `len` (volatile).
    pub fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), Errno> {
        let n = self.file_mut(ino)?;
        let old = n.data.len() as u64;
        n.data.resize(len as usize, 0);
        n.mark(old.min(len), old.max(len));
        n.mtime = std::time::SystemTime::now();
        Ok(())
    }

    /// fallocate(2) modes 0 (allocate, extend size), FALLOC_FL_KEEP_SIZE, and
    /// FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE (zeros); others: EOPNOTSUPP.
    pub fn fallocate(&mut self, ino: Ino, off: u64, len: u64, mode: i32) -> Result<(), Errno> {
        self.counters.fallocate += 1;
        let n = self.file_mut(ino)?;
        let end = off.checked_add(len).ok_or(libc::EFBIG)?;
        match mode {
            0 => {
                if end > n.data.len() as u64 {
                    let old = n.data.len() as u64;
                    n.data.resize(end as usize, 0);
                    n.mark(old, end);
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                let e = (end as usize).min(n.data.len());
                let o = (off as usize).min(e);
                n.data[o..e].fill(0);
                n.mark(o as u64, e as u64);
                Ok(())
            }
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    /// Sets the permission bits.
    pub fn chmod(&mut self, ino: Ino, mode: u32) -> Result<(), Errno> {
        self.node_mut(ino)?.mode = mode & 0o7777;
        Ok(())
    }

    /// fsync/fdatasync of a file (its contents and size), fsync of a directory (its entries).
    pub fn fsync(&mut self, ino: Ino, datasync: bool) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        let kind = n.kind;
        n.make_durable();
        match (kind, datasync) {
            (Kind::Dir, _) => self.counters.fsyncdir += 1,
            (Kind::File, true) => self.counters.fdatasync += 1,
            (Kind::File, false) => self.counters.fsync += 1,
        }
        Ok(())
    }

    /// Everything durable (syncfs).
    pub fn sync_all(&mut self) {
        self.counters.sync_all += 1;
        for n in self.nodes.values_mut() {
            n.make_durable();
        }
    }

    /// Power loss: every inode reverts to its durable state; inodes not reachable from the
    /// root through durable entries are forgotten.
    pub fn cut(&mut self) {
        self.counters.cuts += 1;
        let tear = self.tear;
        for (&ino, n) in self.nodes.iter_mut() {
            n.revert(tear.map(|s| s ^ ino.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        }
        let mut live = BTreeSet::new();
        let mut stack = vec![ROOT];
        while let Some(i) = stack.pop() {
            if live.insert(i) {
                if let Some(n) = self.nodes.get(&i) {
                    stack.extend(n.entries.values().copied());
                }
            }
        }
        self.nodes.retain(|i, _| live.contains(i));
    }

    /// Whether nothing is volatile (every inode durable).
    pub fn is_clean(&self) -> bool {
        self.nodes.values().all(|n| !n.is_dirty())
    }

    /// Resolves a `/`-separated path from the root (volatile tree); for tests and tools.
    pub fn resolve(&self, path: &str) -> Result<Ino, Errno> {
        let mut ino = ROOT;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            ino = self.lookup(ino, OsStr::new(c))?;
        }
        Ok(ino)
    }

    /// The whole contents of a file (volatile).
    pub fn contents(&self, ino: Ino) -> Result<&[u8], Errno> {
        self.read(ino, 0, u64::MAX)
    }
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    if b.len() > 255 {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(m: &mut Model, dir: Ino, name: &str, data: &[u8]) -> Ino {
        let i = m.create(dir, n(name), Kind::File, 0o644).unwrap();
        m.write(i, 0, data).unwrap();
        i
    }

    fn cat(m: &Model, path: &str) -> Option<Vec<u8>> {
        let i = m.resolve(path).ok()?;
        Some(m.contents(i).ok()?.to_vec())
    }

    #[test]
    fn a_new_filesystem_is_clean_and_survives_a_cut_empty() {
        let mut m = Model::new();
        assert!(m.is_clean());
        m.cut();
        assert_eq!(m.readdir(ROOT).unwrap(), vec![]);
        assert_eq!(m.inode_count(), 1);
    }

    #[test]
    fn unflushed_create_and_data_are_lost() {
        let mut m = Model::new();
        file(&mut m, ROOT, "a", b"hello");
        assert_eq!(cat(&m, "a").unwrap(), b"hello");
        assert!(!m.is_clean());
        m.cut();
        assert_eq!(m.resolve("a"), Err(libc::ENOENT));
        assert_eq!(m.inode_count(), 1, "the unreachable inode is forgotten");
    }

    #[test]
    fn fsync_of_the_file_alone_does_not_keep_its_name() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", b"hello");
        m.fsync(a, true).unwrap();
        m.cut();
        assert_eq!(m.resolve("a"), Err(libc::ENOENT));
    }

    #[test]
    fn fsync_of_the_directory_alone_keeps_the_name_of_an_empty_file() {
        let mut m = Model::new();
        file(&mut m, ROOT, "a", b"hello");
        m.fsync(ROOT, false).unwrap();
        m.cut();
        assert_eq!(cat(&m, "a").unwrap(), b"", "name durable, data not");
    }

    #[test]
    fn file_and_directory_fsync_keep_both() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", b"hello");
        m.fsync(a, false).unwrap();
        m.fsync(ROOT, false).unwrap();
        m.write(a, 5, b" world").unwrap();
        assert_eq!(cat(&m, "a").unwrap(), b"hello world");
        m.cut();
        assert_eq!(
            cat(&m, "a").unwrap(),
            b"hello",
            "the later write was not flushed"
        );
        assert!(m.is_clean());
    }

    #[test]
    fn overwrites_and_truncation_revert_to_the_flushed_contents() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", &[7u8; 3 * PAGE as usize + 100]);
        m.fsync(a, true).unwrap();
        m.fsync(ROOT, true).unwrap();
        m.write(a, PAGE + 5, b"xyz").unwrap();
        m.set_len(a, 10).unwrap();
        m.set_len(a, 2 * PAGE).unwrap();
        m.cut();
        assert_eq!(cat(&m, "a").unwrap(), vec![7u8; 3 * PAGE as usize + 100]);
    }

    #[test]
    fn a_flush_after_shrink_and_regrow_keeps_the_zeros() {
        // Pages past the new end that still hold old durable bytes must not resurface.
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", &[7u8; 4 * PAGE as usize]);
        m.fsync(ROOT, true).unwrap();
        m.fsync(a, true).unwrap();
        m.set_len(a, 10).unwrap();
        m.set_len(a, 4 * PAGE).unwrap();
        m.write(a, 3 * PAGE, b"z").unwrap();
        m.fsync(a, true).unwrap();
        let want = m.contents(a).unwrap().to_vec();
        assert_eq!(&want[..10], &[7u8; 10]);
        assert!(want[10..3 * PAGE as usize].iter().all(|&b| b == 0));
        m.cut();
        assert_eq!(cat(&m, "a").unwrap(), want);
    }

    #[test]
    fn a_flush_of_a_few_pages_of_a_big_file_copies_only_those() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", &vec![1u8; 64 * PAGE as usize]);
        m.fsync(ROOT, true).unwrap();
        m.fsync(a, true).unwrap();
        m.write(a, 10 * PAGE + 7, b"abc").unwrap();
        m.write(a, 40 * PAGE - 1, b"de").unwrap();
        m.fsync(a, true).unwrap();
        m.write(a, 50 * PAGE, b"lost").unwrap();
        let mut want = vec![1u8; 64 * PAGE as usize];
        want[10 * PAGE as usize + 7..][..3].copy_from_slice(b"abc");
        want[40 * PAGE as usize - 1..][..2].copy_from_slice(b"de");
        m.cut();
        assert_eq!(cat(&m, "a").unwrap(), want);
    }

    #[test]
    fn writes_past_the_end_fill_with_zeros_and_are_lost_unflushed() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", b"ab");
        m.fsync(a, true).unwrap();
        m.fsync(ROOT, true).unwrap();
        m.write(a, 10, b"z").unwrap();
        assert_eq!(cat(&m, "a").unwrap(), b"ab\0\0\0\0\0\0\0\0z");
        m.cut();
        assert_eq!(cat(&m, "a").unwrap(), b"ab");
    }

    #[test]
    fn fallocate_extends_with_zeros_and_needs_a_flush_too() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "seg", b"");
        m.fsync(ROOT, true).unwrap();
        m.fallocate(a, 0, 3 * PAGE, 0).unwrap();
        assert_eq!(m.node(a).unwrap().size(), 3 * PAGE);
        m.fallocate(a, 0, 8 * PAGE, libc::FALLOC_FL_KEEP_SIZE)
            .unwrap();
        assert_eq!(m.node(a).unwrap().size(), 3 * PAGE);
        assert_eq!(
            m.fallocate(a, 0, 1, libc::FALLOC_FL_COLLAPSE_RANGE),
            Err(libc::EOPNOTSUPP)
        );
        m.cut();
        assert_eq!(cat(&m, "seg").unwrap(), b"");
        m.fallocate(a, 0, 3 * PAGE, 0).unwrap();
        m.write(a, PAGE, b"rec").unwrap();
        m.fsync(a, true).unwrap();
        m.fallocate(
            a,
            PAGE,
            2,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        )
        .unwrap();
        m.cut();
        let c = cat(&m, "seg").unwrap();
        assert_eq!(c.len() as u64, 3 * PAGE);
        assert_eq!(
            &c[PAGE as usize..PAGE as usize + 3],
            b"rec",
            "the punch was not flushed"
        );
    }

    #[test]
    fn a_rename_is_durable_with_its_directories() {
        let mut m = Model::new();
        let tmp = m.create(ROOT, n("tmp"), Kind::Dir, 0o755).unwrap();
        let obj = m.create(ROOT, n("obj"), Kind::Dir, 0o755).unwrap();
        m.fsync(ROOT, false).unwrap();
        let f = file(&mut m, tmp, "t1", b"data");
        m.fsync(f, true).unwrap();
        m.fsync(tmp, false).unwrap();
        m.rename(tmp, n("t1"), obj, n("o1"), false).unwrap();
        assert_eq!(cat(&m, "obj/o1").unwrap(), b"data");

        // Neither directory flushed: the file is back under its temporary name.
        let mut c = m.clone();
        c.cut();
        assert_eq!(cat(&c, "tmp/t1").unwrap(), b"data");
        assert_eq!(c.resolve("obj/o1"), Err(libc::ENOENT));

        // Only the target flushed: under both names (a crash between the halves).
        let mut c = m.clone();
        c.fsync(obj, false).unwrap();
        c.cut();
        assert_eq!(cat(&c, "tmp/t1").unwrap(), b"data");
        assert_eq!(cat(&c, "obj/o1").unwrap(), b"data");

        // Only the source flushed: lost.
        let mut c = m.clone();
        c.fsync(tmp, false).unwrap();
        c.cut();
        assert_eq!(c.resolve("tmp/t1"), Err(libc::ENOENT));
        assert_eq!(c.resolve("obj/o1"), Err(libc::ENOENT));
        assert_eq!(c.inode_count(), 3);

        // Both: renamed.
        m.fsync(tmp, false).unwrap();
        m.fsync(obj, false).unwrap();
        m.cut();
        assert_eq!(m.resolve("tmp/t1"), Err(libc::ENOENT));
        assert_eq!(cat(&m, "obj/o1").unwrap(), b"data");
    }

    #[test]
    fn a_new_directory_needs_its_parent_flushed_and_its_entries_its_own_flush() {
        let mut m = Model::new();
        let d = m.create(ROOT, n("d"), Kind::Dir, 0o755).unwrap();
        let e = m.create(d, n("e"), Kind::Dir, 0o755).unwrap();
        let f = file(&mut m, e, "f", b"x");
        m.fsync(f, true).unwrap();
        m.fsync(e, false).unwrap();
        m.fsync(d, false).unwrap();
        // The root was not flushed: the whole subtree is unreachable.
        let mut c = m.clone();
        c.cut();
        assert_eq!(c.resolve("d"), Err(libc::ENOENT));
        assert_eq!(c.inode_count(), 1);
        m.fsync(ROOT, false).unwrap();
        m.cut();
        assert_eq!(cat(&m, "d/e/f").unwrap(), b"x");
        assert_eq!(m.nlink(ROOT), 3);
    }

    #[test]
    fn unlink_and_replacing_rename_revert_unless_flushed() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", b"old");
        let b = file(&mut m, ROOT, "b", b"new");
        m.fsync(a, true).unwrap();
        m.fsync(b, true).unwrap();
        m.fsync(ROOT, true).unwrap();
        m.rename(ROOT, n("b"), ROOT, n("a"), false).unwrap();
        assert_eq!(cat(&m, "a").unwrap(), b"new");
        assert_eq!(m.resolve("b"), Err(libc::ENOENT));
        let mut c = m.clone();
        c.cut();
        assert_eq!(cat(&c, "a").unwrap(), b"old");
        assert_eq!(cat(&c, "b").unwrap(), b"new");
        m.fsync(ROOT, false).unwrap();
        m.unlink(ROOT, n("a")).unwrap();
        m.cut();
        assert_eq!(cat(&m, "a").unwrap(), b"new", "the unlink was not flushed");
        assert_eq!(m.resolve("b"), Err(libc::ENOENT));
    }

    #[test]
    fn an_unlinked_open_file_stays_usable_until_the_cut() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", b"x");
        m.unlink(ROOT, n("a")).unwrap();
        m.write(a, 1, b"y").unwrap();
        m.fsync(a, true).unwrap();
        assert_eq!(m.contents(a).unwrap(), b"xy");
        m.cut();
        assert!(m.node(a).is_none());
    }

    #[test]
    fn sync_all_makes_everything_durable() {
        let mut m = Model::new();
        let d = m.create(ROOT, n("d"), Kind::Dir, 0o755).unwrap();
        let f = file(&mut m, d, "f", b"abc");
        m.sync_all();
        assert!(m.is_clean());
        m.write(f, 0, b"X").unwrap();
        m.rename(d, n("f"), ROOT, n("g"), false).unwrap();
        m.cut();
        assert_eq!(cat(&m, "d/f").unwrap(), b"abc");
        assert_eq!(m.resolve("g"), Err(libc::ENOENT));
        assert_eq!(m.counters.sync_all, 1);
        assert_eq!(m.counters.cuts, 1);
    }

    #[test]
    fn a_torn_write_keeps_a_sector_prefix_of_the_last_write_only() {
        let data: Vec<u8> = (0..4 * SECTOR as usize)
            .map(|i| (i % 251) as u8 + 1)
            .collect();
        let mut seen = BTreeSet::new();
        for seed in 0..20u64 {
            let mut m = Model::new();
            let a = file(&mut m, ROOT, "j", &[0u8; 8 * SECTOR as usize]);
            m.fsync(a, true).unwrap();
            m.fsync(ROOT, true).unwrap();
            m.write(a, 0, &[9u8; 100]).unwrap(); // not the last write: lost
            m.write(a, SECTOR, &data).unwrap();
            m.set_tear(Some(seed));
            m.cut();
            let c = cat(&m, "j").unwrap();
            assert_eq!(c.len(), 8 * SECTOR as usize);
            assert!(c[..SECTOR as usize].iter().all(|&b| b == 0));
            let kept = c[SECTOR as usize..].iter().take_while(|&&b| b != 0).count();
            assert_eq!(kept as u64 % SECTOR, 0, "whole sectors");
            assert_eq!(&c[SECTOR as usize..][..kept], &data[..kept]);
            assert!(c[SECTOR as usize + kept..].iter().all(|&b| b == 0));
            seen.insert(kept);
        }
        assert!(seen.len() > 2, "tears vary with the seed: {seen:?}");
    }

    #[test]
    fn without_tear_the_last_unflushed_write_vanishes_whole() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "j", b"");
        m.fsync(ROOT, true).unwrap();
        m.fsync(a, true).unwrap();
        m.write(a, 0, &[5u8; 4096]).unwrap();
        m.cut();
        assert_eq!(cat(&m, "j").unwrap(), b"");
    }

    #[test]
    fn namespace_errors_are_the_posix_ones() {
        let mut m = Model::new();
        let d = m.create(ROOT, n("d"), Kind::Dir, 0o755).unwrap();
        let f = file(&mut m, d, "f", b"");
        file(&mut m, ROOT, "g", b"");
        assert_eq!(m.create(ROOT, n("d"), Kind::File, 0), Err(libc::EEXIST));
        assert_eq!(m.create(ROOT, n("a/b"), Kind::File, 0), Err(libc::EINVAL));
        assert_eq!(m.create(f, n("x"), Kind::File, 0), Err(libc::ENOTDIR));
        assert_eq!(m.rmdir(ROOT, n("d")), Err(libc::ENOTEMPTY));
        assert_eq!(m.rmdir(ROOT, n("g")), Err(libc::ENOTDIR));
        assert_eq!(m.unlink(ROOT, n("d")), Err(libc::EISDIR));
        assert_eq!(m.unlink(ROOT, n("nope")), Err(libc::ENOENT));
        assert_eq!(
            m.rename(ROOT, n("g"), ROOT, n("d"), false),
            Err(libc::EISDIR)
        );
        assert_eq!(
            m.rename(ROOT, n("d"), ROOT, n("g"), false),
            Err(libc::ENOTDIR)
        );
        assert_eq!(
            m.rename(ROOT, n("d"), d, n("sub"), false),
            Err(libc::EINVAL)
        );
        assert_eq!(m.rename(d, n("f"), ROOT, n("g"), true), Err(libc::EEXIST));
        assert_eq!(m.write(d, 0, b"x"), Err(libc::EISDIR));
        assert_eq!(m.read(d, 0, 1), Err(libc::EISDIR));
        m.rename(ROOT, n("g"), ROOT, n("g"), false).unwrap();
        m.unlink(d, n("f")).unwrap();
        m.rmdir(ROOT, n("d")).unwrap();
        assert_eq!(m.resolve("d"), Err(libc::ENOENT));
    }

    #[test]
    fn reads_are_clipped_to_the_size() {
        let mut m = Model::new();
        let a = file(&mut m, ROOT, "a", b"abcdef");
        assert_eq!(m.read(a, 2, 3).unwrap(), b"cde");
        assert_eq!(m.read(a, 4, 100).unwrap(), b"ef");
        assert_eq!(m.read(a, 100, 1).unwrap(), b"");
    }

    /// A random workload against a reference that replays only flushed state: after a cut the
    /// model must equal what the reference says survived.
    #[test]
    fn random_workloads_keep_exactly_what_was_flushed() {
        #[derive(Clone, Default, PartialEq, Debug)]
        struct Ref {
            files: BTreeMap<String, Vec<u8>>,
        }
        for seed in 0..200u64 {
            let mut rng = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = |k: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % k
            };
            let mut m = Model::new();
            // All files live in the root: the durable names are the root's durable entries.
            let mut vol = Ref::default();
            let mut dur_names: BTreeMap<String, Ino> = BTreeMap::new();
            let mut dur_data: HashMap<Ino, Vec<u8>> = HashMap::new();
            for _ in 0..60 {
                let name = format!("f{}", next(5));
                match next(8) {
                    0 | 1 => {
                        let ino = match m.lookup(ROOT, n(&name)) {
                            Ok(i) => i,
                            Err(_) => m.create(ROOT, n(&name), Kind::File, 0o644).unwrap(),
                        };
                        let off = next(3 * PAGE);
                        let len = next(2 * PAGE) as usize + 1;
                        let byte = next(255) as u8 + 1;
                        m.write(ino, off, &vec![byte; len]).unwrap();
                        let v = vol.files.entry(name).or_default();
                        if v.len() < off as usize + len {
                            v.resize(off as usize + len, 0);
                        }
                        v[off as usize..][..len].fill(byte);
                    }
                    2 => {
                        if let Ok(ino) = m.lookup(ROOT, n(&name)) {
                            let len = next(4 * PAGE);
                            m.set_len(ino, len).unwrap();
                            vol.files.get_mut(&name).unwrap().resize(len as usize, 0);
                        }
                    }
                    3 => {
                        if let Ok(ino) = m.lookup(ROOT, n(&name)) {
                            m.fsync(ino, next(2) == 0).unwrap();
                            dur_data.insert(ino, vol.files[&name].clone());
                        }
                    }
                    4 => {
                        m.fsync(ROOT, false).unwrap();
                        dur_names = m
                            .readdir(ROOT)
                            .unwrap()
                            .into_iter()
                            .map(|(n, i, _)| (n.to_string_lossy().into_owned(), i))
                            .collect();
                    }
                    5 => {
                        let to = format!("f{}", next(5));
                        if m.rename(ROOT, n(&name), ROOT, n(&to), false).is_ok() && name != to {
                            let v = vol.files.remove(&name).unwrap();
                            vol.files.insert(to, v);
                        }
                    }
                    6 => {
                        if m.unlink(ROOT, n(&name)).is_ok() {
                            vol.files.remove(&name);
                        }
                    }
                    _ => {
                        let got = m
                            .lookup(ROOT, n(&name))
                            .map(|i| m.contents(i).unwrap().to_vec())
                            .ok();
                        assert_eq!(got.as_ref(), vol.files.get(&name), "seed {seed}");
                    }
                }
            }
            m.cut();
            let want: BTreeMap<String, Vec<u8>> = dur_names
                .iter()
                .map(|(name, i)| (name.clone(), dur_data.get(i).cloned().unwrap_or_default()))
                .collect();
            let got: BTreeMap<String, Vec<u8>> = m
                .readdir(ROOT)
                .unwrap()
                .into_iter()
                .map(|(name, i, _)| {
                    (
                        name.to_string_lossy().into_owned(),
                        m.contents(i).unwrap().to_vec(),
                    )
                })
                .collect();
            assert_eq!(got, want, "seed {seed}");
            assert!(m.is_clean());
        }
    }
}
