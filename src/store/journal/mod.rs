//! The write-ahead journal of one core (issue 12): a ring of preallocated segments that
//! received objects are appended to, one write and one flush per group, so a group of
//! C-STOREs can be acknowledged once that flush completes.
//!
//! This module is the journal alone (`crate::ingest::group` drives it): format, append, replay, the
//! storage seam ([`Storage`], [`Segment`]) with the file implementation ([`FileStorage`]) and
//! the power-loss model it is tested against ([`CrashStorage`]).
//!
//! # Layout
//! `<data>/journal/core-<n>/` ([`journal_dir`]) holds `seg-0` … `seg-<count-1>`, each
//! `segment_size` bytes (production default 8 × 256 MiB, [`JournalConfig::production`]),
//! created once with `fallocate` *and written with zeros* and synced under a temporary name,
//! then renamed. Later overwrites change neither size nor extents, so a flush is one device
//! flush and no filesystem-journal commit. Segments are opened `O_DIRECT|O_DSYNC` where the
//! filesystem takes it, else written with buffered `pwrite` + `fdatasync` (tmpfs). A small
//! `state` file (replaced by rename, synced) holds the ring geometry and the highest epoch
//! ever handed out.
//!
//! # Format (all integers little endian; [`format`](mod@format) encodes and decodes, pure over bytes)
//! A *group* is what one append writes: a 64-byte group header, its records back to back,
//! zero padding to a multiple of 4 KiB. Groups start at 4 KiB-aligned offsets inside a
//! segment; one that does not fit in the rest of a segment goes to the start of the next.
//!
//! ```text
//! group header  0 magic "DGJG" | 4 version u8 = 1 | 5 0 | 6 flags u16 (1 = relaxed)
//!               8 epoch u32 | 12 count u32 | 16 first_seq u64 | 24 body_len u64
//!              32 prev u32 (the previous group's checksum) | 36 body_crc u32
//!              40 zeros[20] | 60 header_crc u32 = CRC32C(bytes 0..60)
//! record        0 magic "DGJR" | 4 version u8 = 1 | 5 0 | 6 flags u16 (caller's)
//!               8 seq u64 | 16 epoch u32 | 20 meta_len u32 | 24 header_len u32 | 28 0 u32
//!              32 dataset_len u64 | 40 0 u32 | 44 crc u32 = CRC32C(bytes 0..44, sections)
//!              48 meta | header | dataset
//! ```
//! `body_crc` is the CRC32C of the records' CRCs in order, so `header_crc` (the group's
//! checksum, its *link*) covers every byte of the group except the padding. `seq` is
//! contiguous over the whole journal (first record 1); the records of a group carry the
//! group's epoch and consecutive seqs. The sections are opaque here: `meta` is what the
//! integrator encodes (index record, routing, duplicate outcome, dataset BLAKE3), `header`
//! the Part-10 header bytes, `dataset` the bytes exactly as received.
//!
//! # Replay
//! [`Journal::open`] scans from the checkpoint ([`Position`]: segment, offset, next seq,
//! epoch and checksum of the group before it). The next group is valid only if its header
//! checksum holds, its lengths fit the room left and the group limit (checked before any
//! byte of the body is read, so a torn or hostile length costs at most one group limit of
//! buffer, never more), its first seq is
//! the expected one, it names the previous group's checksum, its epoch is at least the
//! previous group's and at most the highest ever handed out, and every record's header and
//! CRC hold. It is looked for at the end of the previous group, then at the start of the next
//! segment. The scan ends at the first group that fails (a torn tail, zeros, an older lap)
//! and never goes round the ring more than once. A group is valid as a whole or not at all.
//!
//! # Crash safety
//! * **A completed flush** (or `O_DSYNC` write) of a group makes the group durable. Groups
//!   may be in flight together ([`Journal::reserve`], then [`Reserved::write`] on any
//!   thread), so a later group can reach the disk before an earlier one; it replays only
//!   once the earlier one is there too (its link names it). Hence answers go out in
//!   reservation order, each once its group and every earlier group were written: the chain
//!   from the checkpoint to it then replays. [`Journal::append_group`] is both steps with
//!   one group in flight.
//! * **A torn write** (power lost mid-write, sectors persisted in any order) fails a checksum
//!   and ends the replay before that group; it was never acknowledged. A group whose write did
//!   reach the disk whole but whose flush never reported back may replay: its objects were
//!   received completely but not acknowledged, and a resend is then an identical duplicate.
//! * **Epochs**: every lap of the ring and every opening of the journal takes a new epoch,
//!   stored durably in `state` before the first write that uses it. Stale bytes behind the
//!   valid prefix were written earlier, so their epoch is lower (an older lap, or a timeline
//!   that a crash cut and the next opening overwrote with shorter groups), or they are the
//!   same timeline's older records with lower seqs; with the checksum link either is refused.
//!   Seqs alone would not do: after a crash the lost seqs are written again, and an older lap
//!   may hold a group with the very seq expected.
//! * **Poison**: after a failed write or flush nothing is known about what reached the disk
//!   (Linux may even mark the failed pages clean, so a second `fdatasync` succeeds without
//!   writing them). The journal then refuses every append until it is reopened; reopening
//!   replays the prefix and writes it again and flushes it before appending, so a replayed
//!   group is durable even if it was only in the page cache.
//! * **Relaxed** (`durability = "relaxed"`): groups are written without a flush; a process
//!   crash loses nothing (the page cache has them), a power cut may lose the last groups, and
//!   then replay ends where the first lost one was.
//! * **Full**: the writer only enters a segment none of whose records is unreleased; otherwise
//!   [`JournalError::Full`] and the caller stops reading from its sockets.
//!
//! # What the integrator must do
//! 1. Append each group, answer its objects only after `append_group` returned `Ok` (or,
//!    with groups in flight together, after its [`Reserved::write`] and those of every group
//!    reserved before it returned `Ok`, in reservation order); on an error answer the group
//!    and every later one with a failure, [poison](Journal::poison) the journal and stop
//!    acknowledging until it is reopened (process restart or [`Journal::open`] again).
//! 2. Checkpoint in this order: materialized files synced (`syncfs`), *then* one redb commit
//!    holding their index rows, forward jobs and the journal [`Position`] of the last group
//!    materialized, *then* [`Journal::release_through`] with that position. Releasing before
//!    the commit is durable could let the ring overwrite records a crash would still need.
//! 3. At start-up open every core's journal with the position stored in redb (`None` only for
//!    a journal that was never checkpointed; after the first lap `None` is refused), apply
//!    every replayed record idempotently, then [`Replay::finish`] to get the writer.

pub mod crash;
pub mod format;
pub mod storage;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crash::{CrashStorage, Tear};
pub use format::{Invalid, RecordIn, RecordRef, BLOCK};
pub use storage::{AlignedBuf, FileIo, FileStorage, IoMode, Segment, Storage};

use crate::config::Durability;
use format::{Expect, GroupMeta};

/// `<data>/journal/core-<core>`: the directory of one core's journal.
pub fn journal_dir(data_root: &Path, core: usize) -> PathBuf {
    data_root.join("journal").join(format!("core-{core}"))
}

/// Largest segment accepted (lengths inside the format are then far from overflowing).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// Ring geometry and durability of one journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Segments in the ring (at least 2).
    pub segment_count: u32,
    /// Bytes per segment: a multiple of 4 KiB, at most [`MAX_SEGMENT_SIZE`].
    pub segment_size: u64,
    /// Largest group, padding included: a multiple of 4 KiB, at most `segment_size`.
    pub max_group_bytes: u64,
    /// `Full`: flush every group before `append_group` returns. `Relaxed`: no flush.
    pub durability: Durability,
}

impl JournalConfig {
    /// The review's production ring: 8 × 256 MiB, groups up to 16 MiB, full durability.
    pub fn production() -> Self {
        Self {
            segment_count: 8,
            segment_size: 256 << 20,
            max_group_bytes: 16 << 20,
            durability: Durability::Full,
        }
    }

    fn validate(&self) -> Result<(), JournalError> {
        let b = BLOCK as u64;
        let problem = if self.segment_count < 2 {
            "segment_count must be at least 2"
        } else if !self.segment_size.is_multiple_of(b) || self.segment_size < b {
            "segment_size must be a positive multiple of 4 KiB"
        } else if self.segment_size > MAX_SEGMENT_SIZE {
            "segment_size must be at most 1 GiB"
        } else if !self.max_group_bytes.is_multiple_of(b)
            || self.max_group_bytes < b
            || self.max_group_bytes > self.segment_size
        {
            "max_group_bytes must be a multiple of 4 KiB between 4 KiB and segment_size"
        } else {
            return Ok(());
        };
        Err(JournalError::Config(problem.into()))
    }
}

/// A point in the journal: right after a group (where the next one goes), with what the next
/// group must carry. Returned by [`Journal::append_group`]; stored as the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Epoch of the group before this point.
    pub epoch: u32,
    /// Segment index.
    pub segment: u32,
    /// Offset in the segment (block-aligned).
    pub offset: u64,
    /// Sequence number of the next record: every record before this point has a lower one.
    pub seq: u64,
    /// Checksum of the group before this point (0 at the start).
    pub link: u32,
}

impl Position {
    /// The start of a journal that was never written.
    pub const GENESIS: Position = Position {
        epoch: 0,
        segment: 0,
        offset: 0,
        seq: 1,
        link: 0,
    };

    /// Length of [`Position::to_bytes`].
    pub const ENCODED_LEN: usize = 28;

    /// Fixed little-endian encoding (for a redb value).
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..4].copy_from_slice(&self.epoch.to_le_bytes());
        b[4..8].copy_from_slice(&self.segment.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.link.to_le_bytes());
        b
    }

    /// Reads [`Position::to_bytes`]; `None` if the length is wrong.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::ENCODED_LEN] = b.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Self {
            epoch: u32_at(0),
            segment: u32_at(4),
            offset: u64_at(8),
            seq: u64_at(16),
            link: u32_at(24),
        })
    }
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// No free segment: the checkpoint has not advanced far enough. Nothing was written;
    /// apply backpressure and try again after [`Journal::release_through`].
    #[error("journal full: no free segment until the checkpoint advances")]
    Full,
    /// An earlier write or flush failed; nothing more is appended until the journal is
    /// reopened (which replays and re-syncs what is there).
    #[error("journal unusable after a failed {0}; reopen it to recover")]
    Poisoned(&'static str),
    /// An I/O operation failed (after a write or flush failure the journal is poisoned).
    #[error("journal {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A new lap's epoch could not be stored for want of space: nothing was written and the
    /// journal is not poisoned; the next group tries again.
    #[error("journal state write: {0}")]
    StateNoSpace(io::Error),
    /// The group is larger than `max_group_bytes` (nothing was written).
    #[error("group of {len} bytes exceeds the journal's group limit of {limit} bytes")]
    TooLarge {
        /// Padded length of the group.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// Invalid configuration, or one that does not match the ring on disk.
    #[error("journal configuration: {0}")]
    Config(String),
    /// The `state` file does not decode.
    #[error("journal state file: {0}")]
    State(String),
    /// A position that cannot be this journal's.
    #[error("position {0:?} does not belong to this journal")]
    BadPosition(Position),
    /// The journal has gone round its ring, so it cannot be replayed from its start: a
    /// checkpoint is needed.
    #[error("journal has wrapped; opening it needs the checkpoint position")]
    CheckpointRequired,
}

impl JournalError {
    fn io(op: &'static str) -> impl FnOnce(io::Error) -> JournalError {
        move |source| JournalError::Io { op, source }
    }

    /// Whether the cause is a full filesystem or quota (answer A700, not 0110).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            JournalError::StateNoSpace(_) => true,
            JournalError::Io { source, .. } => no_space(source),
            _ => false,
        }
    }

    /// Whether the append wrote nothing and left the journal usable (a full ring, an
    /// oversized group, no room for a new lap's state): the group is refused, not the journal.
    pub fn wrote_nothing(&self) -> bool {
        matches!(
            self,
            JournalError::Full | JournalError::TooLarge { .. } | JournalError::StateNoSpace(_)
        )
    }
}

/// A full filesystem or quota.
fn no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The `state` file: ring geometry, highest epoch handed out, whether the ring has wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    epoch: u32,
    wrapped: bool,
    segment_count: u32,
    segment_size: u64,
    /// Largest group limit any writer used (replay accepts groups up to it).
    max_group_bytes: u64,
}

impl State {
    const MAGIC: [u8; 4] = *b"DGJS";
    const LEN: usize = 40;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&Self::MAGIC);
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..12].copy_from_slice(&self.epoch.to_le_bytes());
        b[12..16].copy_from_slice(&u32::from(self.wrapped).to_le_bytes());
        b[16..20].copy_from_slice(&self.segment_count.to_le_bytes());
        b[20..28].copy_from_slice(&self.segment_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.max_group_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Self, JournalError> {
        let bad = |what: &str| JournalError::State(what.into());
        let b: &[u8; Self::LEN] = b.try_into().map_err(|_| bad("wrong length"))?;
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if b[0..4] != Self::MAGIC || u32_at(4) != 1 {
            return Err(bad("unknown magic or version"));
        }
        if crc32c::crc32c(&b[..36]) != u32_at(36) {
            return Err(bad("checksum mismatch"));
        }
        Ok(Self {
            epoch: u32_at(8),
            wrapped: u32_at(12) != 0,
            segment_count: u32_at(16),
            segment_size: u64_at(20),
            max_group_bytes: u64_at(28),
        })
    }
}

/// A record read back by replay, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub seq: u64,
    /// The caller's flags.
    pub flags: u16,
    /// The `meta` section.
    pub meta: Vec<u8>,
    /// The `header` section.
    pub header: Vec<u8>,
    /// The `dataset` section.
    pub dataset: Vec<u8>,
}

impl From<&RecordRef<'_>> for Record {
    fn from(r: &RecordRef<'_>) -> Self {
        Self {
            seq: r.seq,
            flags: r.flags,
            meta: r.meta.to_vec(),
            header: r.header.to_vec(),
            dataset: r.dataset.to_vec(),
        }
    }
}

/// A group found by replay; its records borrow the replay's buffer.
#[derive(Debug)]
pub struct ReplayedGroup<'a> {
    /// The position right after the group (a checkpoint once it is materialized).
    pub end: Position,
    /// Its epoch.
    pub epoch: u32,
    /// Its records, in order.
    pub records: Vec<RecordRef<'a>>,
}

/// Where and why replay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// The position after the last valid group (where the writer continues).
    pub at: Position,
    /// Why the group there (or at the next segment's start) is not valid; `None` when the
    /// scan came round the whole ring.
    pub reason: Option<Invalid>,
}

/// A journal being replayed: [`Replay::next_group`] until `None`, then [`Replay::finish`].
pub struct Replay<S: Storage> {
    storage: S,
    segs: Vec<Arc<S::Segment>>,
    cfg: JournalConfig,
    state: State,
    checkpoint: Position,
    cursor: Position,
    expect: Expect,
    group_limit: u64,
    transitions: u32,
    seg_last: Vec<Option<u64>>,
    rewritten: Vec<bool>,
    buf: AlignedBuf,
    stop: Option<Stop>,
}

/// One core's journal, ready to append.
pub struct Journal<S: Storage> {
    storage: S,
    segs: Vec<Arc<S::Segment>>,
    cfg: JournalConfig,
    state: State,
    head: Position,
    released: u64,
    seg_last: Vec<Option<u64>>,
    buf: Option<AlignedBuf>,
    poisoned: Option<&'static str>,
}

/// A group's place in the ring, encoded and not yet written ([`Journal::reserve`]).
#[derive(Debug)]
pub struct Reserved<G: Segment> {
    seg: Arc<G>,
    offset: u64,
    len: usize,
    sync: bool,
    /// The position after the group (its records got the seqs just below `end.seq`).
    pub end: Position,
}

impl<G: Segment> Reserved<G> {
    /// Writes the group (the `buf` it was encoded into) and, with full durability, flushes
    /// it. May run on any thread, at the same time as the next group's write.
    pub fn write(&self, buf: &AlignedBuf) -> Result<(), JournalError> {
        if self.len == 0 {
            return Ok(());
        }
        self.seg
            .write_at(&buf[..self.len], self.offset)
            .map_err(JournalError::io("write"))?;
        if self.sync {
            self.seg.flush().map_err(JournalError::io("flush"))?;
        }
        Ok(())
    }
}

impl Journal<FileStorage> {
    /// Opens the journal in `dir` (created with its segments on first use) on files, with
    /// `O_DIRECT|O_DSYNC` where the filesystem supports it.
    pub fn open_dir(
        dir: &Path,
        cfg: JournalConfig,
        checkpoint: Option<Position>,
    ) -> Result<Replay<FileStorage>, JournalError> {
        let storage = FileStorage::open(dir, cfg.durability, IoMode::Auto)
            .map_err(JournalError::io("open"))?;
        Journal::open(storage, cfg, checkpoint)
    }
}

impl<S: Storage> Journal<S> {
    /// Opens the journal on `storage` (creating and preallocating its segments if it has
    /// none) and starts replay at `checkpoint` (`None`: from the very start, only allowed
    /// before the ring's first lap).
    pub fn open(
        mut storage: S,
        cfg: JournalConfig,
        checkpoint: Option<Position>,
    ) -> Result<Replay<S>, JournalError> {
        cfg.validate()?;
        let stored = storage
            .load_state()
            .map_err(JournalError::io("read state"))?
            .map(|b| State::decode(&b))
            .transpose()?;
        if let Some(s) = &stored {
            if (s.segment_count, s.segment_size) != (cfg.segment_count, cfg.segment_size) {
                return Err(JournalError::Config(format!(
                    "the ring on disk has {} segments of {} bytes, the configuration {} of {}",
                    s.segment_count, s.segment_size, cfg.segment_count, cfg.segment_size
                )));
            }
        }
        let mut segs = Vec::with_capacity(cfg.segment_count as usize);
        for k in 0..cfg.segment_count {
            // Segments are created only with the ring (no state yet): later, a missing one
            // means lost records, and replay must not silently run into fresh zeros.
            let seg = storage
                .segment(k, cfg.segment_size, stored.is_none())
                .map_err(JournalError::io("open segment"))?;
            if seg.len() != cfg.segment_size {
                return Err(JournalError::Config(format!(
                    "segment {k} has {} bytes, expected {}",
                    seg.len(),
                    cfg.segment_size
                )));
            }
            segs.push(Arc::new(seg));
        }
        let state = match stored {
            Some(s) => s,
            None => {
                let s = State {
                    epoch: 0,
                    wrapped: false,
                    segment_count: cfg.segment_count,
                    segment_size: cfg.segment_size,
                    max_group_bytes: cfg.max_group_bytes,
                };
                storage
                    .store_state(&s.encode())
                    .map_err(JournalError::io("store state"))?;
                s
            }
        };
        let checkpoint = match checkpoint {
            None if state.wrapped => return Err(JournalError::CheckpointRequired),
            None => Position::GENESIS,
            Some(p) => {
                let fits = p.segment < cfg.segment_count
                    && p.offset <= cfg.segment_size
                    && p.offset.is_multiple_of(BLOCK as u64)
                    && p.epoch <= state.epoch
                    && p.seq >= 1;
                if !fits {
                    return Err(JournalError::BadPosition(p));
                }
                p
            }
        };
        let n = cfg.segment_count as usize;
        Ok(Replay {
            expect: Expect {
                seq: checkpoint.seq,
                epoch_min: checkpoint.epoch,
                epoch_max: state.epoch,
                link: checkpoint.link,
            },
            group_limit: cfg.max_group_bytes.max(state.max_group_bytes),
            storage,
            segs,
            cfg,
            state,
            checkpoint,
            cursor: checkpoint,
            transitions: 0,
            seg_last: vec![None; n],
            rewritten: vec![false; n],
            buf: AlignedBuf::new(BLOCK),
            stop: None,
        })
    }

    /// Appends one group (one write, then one flush unless relaxed) and returns the position
    /// after it; its records got the seqs just below `returned.seq`. An empty group writes
    /// nothing. On a write or flush error the journal is poisoned.
    ///
    /// [`Journal::reserve`] and [`Reserved::write`] in one step, one group in flight.
    pub fn append_group(&mut self, records: &[RecordIn<'_>]) -> Result<Position, JournalError> {
        let mut buf = self.buf.take().unwrap_or_else(|| AlignedBuf::new(BLOCK));
        let before = (self.head, self.seg_last.clone());
        let result = match self.reserve(records, &mut buf) {
            Ok(r) => match r.write(&buf) {
                Ok(()) => Ok(r.end),
                Err(e) => {
                    // Nothing was reserved after it: the head goes back (the journal is
                    // poisoned either way).
                    (self.head, self.seg_last) = before;
                    self.poison(&e);
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        self.buf = Some(buf);
        result
    }

    /// Takes the next place in the ring for a group and encodes it into `buf`: the caller
    /// then writes it with [`Reserved::write`], without holding the journal, so the next
    /// group can be reserved and written while this one's flush is in flight.
    ///
    /// The journal's head moves at once; the group counts as written from here on. So the
    /// caller must answer reserved groups in reservation order, each only once it and every
    /// group before it were written: a group durable behind one that never reached the disk
    /// is not replayed (its link names the missing group). After a failed write the caller
    /// [poisons](Journal::poison) the journal and refuses every later group, written or not.
    /// An empty group reserves nothing (`Reserved::write` then does nothing).
    pub fn reserve(
        &mut self,
        records: &[RecordIn<'_>],
        buf: &mut AlignedBuf,
    ) -> Result<Reserved<S::Segment>, JournalError> {
        if let Some(what) = self.poisoned {
            return Err(JournalError::Poisoned(what));
        }
        let head = self.head;
        let sync = self.cfg.durability == Durability::Full;
        if records.is_empty() {
            return Ok(Reserved {
                seg: Arc::clone(&self.segs[head.segment as usize]),
                offset: head.offset,
                len: 0,
                sync,
                end: head,
            });
        }
        let limit = self.cfg.max_group_bytes;
        let padded = format::body_len(records).map_or(u64::MAX, format::padded_len);
        if padded > limit {
            return Err(JournalError::TooLarge { len: padded, limit });
        }
        if head.seq.checked_add(records.len() as u64).is_none() {
            return Err(JournalError::State("sequence numbers exhausted".into()));
        }
        let (segment, offset) = if head.offset + padded <= self.cfg.segment_size {
            (head.segment, head.offset)
        } else {
            let next = (head.segment + 1) % self.cfg.segment_count;
            if self.seg_last[next as usize].is_some() {
                return Err(JournalError::Full);
            }
            if next == 0 {
                // A new lap: a new epoch, durable before any byte of the lap is written.
                let state = State {
                    epoch: self.next_epoch()?,
                    wrapped: true,
                    ..self.state
                };
                if let Err(e) = self.storage.store_state(&state.encode()) {
                    // Out of space, the old state stands (the new one goes through a new
                    // file and a rename) and nothing of the lap is written: refuse this group
                    // and try again with the next, once there is room. Anything else leaves
                    // the state in doubt.
                    if no_space(&e) {
                        return Err(JournalError::StateNoSpace(e));
                    }
                    self.poisoned = Some("state write");
                    return Err(JournalError::Io {
                        op: "store state",
                        source: e,
                    });
                }
                self.state = state;
            }
            (next, 0)
        };
        let meta = GroupMeta {
            epoch: self.state.epoch,
            first_seq: head.seq,
            prev: head.link,
            flags: match self.cfg.durability {
                Durability::Full => 0,
                Durability::Relaxed => format::GROUP_RELAXED,
            },
        };
        buf.ensure(padded as usize);
        let group = format::encode_group(&mut buf[..padded as usize], &meta, records);
        let next = group.next(self.state.epoch);
        self.seg_last[segment as usize] = Some(next.seq - 1);
        self.head = Position {
            epoch: group.epoch,
            segment,
            offset: offset + padded,
            seq: next.seq,
            link: group.link,
        };
        Ok(Reserved {
            seg: Arc::clone(&self.segs[segment as usize]),
            offset,
            len: padded as usize,
            sync,
            end: self.head,
        })
    }

    /// A reserved group's write failed: nothing more is appended until the journal is
    /// reopened (see the crash-safety notes above).
    pub fn poison(&mut self, failed: &JournalError) {
        if self.poisoned.is_none() {
            self.poisoned = Some(match failed {
                JournalError::Io { op: "flush", .. } => "flush",
                _ => "write",
            });
        }
    }

    fn next_epoch(&self) -> Result<u32, JournalError> {
        self.state
            .epoch
            .checked_add(1)
            .ok_or_else(|| JournalError::State("epochs exhausted".into()))
    }

    /// The checkpoint moved to `pos` (its redb commit is durable): every segment whose
    /// records all lie before it is free again. Older positions are ignored.
    pub fn release_through(&mut self, pos: &Position) -> Result<(), JournalError> {
        if pos.seq > self.head.seq {
            return Err(JournalError::BadPosition(*pos));
        }
        if pos.seq <= self.released {
            return Ok(());
        }
        self.released = pos.seq;
        for (k, last) in self.seg_last.iter_mut().enumerate() {
            if k as u32 != self.head.segment && last.is_some_and(|l| l < pos.seq) {
                *last = None;
            }
        }
        Ok(())
    }

    /// Where the next group goes (the position after the last one).
    pub fn position(&self) -> Position {
        self.head
    }

    /// The epoch new groups are written with.
    pub fn epoch(&self) -> u32 {
        self.state.epoch
    }

    /// Whether a failed write or flush has stopped this journal.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Segments holding no unreleased record (the writer's own never counts as free).
    pub fn free_segments(&self) -> usize {
        self.seg_last
            .iter()
            .enumerate()
            .filter(|&(k, l)| l.is_none() && k as u32 != self.head.segment)
            .count()
    }

    /// The configuration.
    pub fn config(&self) -> &JournalConfig {
        &self.cfg
    }

    /// The storage (e.g. to see which I/O path [`FileStorage`] chose).
    pub fn storage(&self) -> &S {
        &self.storage
    }
}

impl<S: Storage> Replay<S> {
    /// The next valid group after the checkpoint, or `None` at the end of the valid prefix.
    /// With full durability each group is also written back in place (made durable again
    /// by [`Replay::finish`]).
    pub fn next_group(&mut self) -> Result<Option<ReplayedGroup<'_>>, JournalError> {
        if self.stop.is_some() {
            return Ok(None);
        }
        let size = self.cfg.segment_size;
        let n = self.cfg.segment_count;
        let block = BLOCK as u64;
        let here = (self.cursor.offset + block <= size).then_some(self.cursor.segment);
        // At most one lap: the writer may come back into the checkpoint's segment (once all of
        // it was released) but never past it, into segments holding what was just replayed.
        let next_seg = (self.transitions < n).then_some((self.cursor.segment + 1) % n);
        let mut reason = None;
        let mut found = None;
        for (segment, offset) in [
            here.map(|s| (s, self.cursor.offset)),
            next_seg.map(|s| (s, 0)),
        ]
        .into_iter()
        .flatten()
        {
            let limit = (size - offset).min(self.group_limit);
            let seg = &self.segs[segment as usize];
            seg.read_at(&mut self.buf[..BLOCK], offset)
                .map_err(JournalError::io("read"))?;
            let header = match format::decode_group_header(&self.buf[..BLOCK], &self.expect, limit)
            {
                Ok(h) => h,
                Err(e) => {
                    reason.get_or_insert(e);
                    continue;
                }
            };
            let padded = header.padded_len() as usize;
            self.buf.ensure(padded);
            if padded > BLOCK {
                seg.read_at(&mut self.buf[BLOCK..padded], offset + block)
                    .map_err(JournalError::io("read"))?;
            }
            let body = &self.buf[format::GROUP_HEADER_LEN..padded];
            match format::decode_group_body(&header, body) {
                Ok(_) => {
                    found = Some((segment, offset, header));
                    break;
                }
                Err(e) => {
                    reason.get_or_insert(e);
                }
            }
        }
        let Some((segment, offset, header)) = found else {
            self.stop = Some(Stop {
                at: self.cursor,
                reason,
            });
            return Ok(None);
        };
        let padded = header.padded_len();
        if self.cfg.durability == Durability::Full {
            self.segs[segment as usize]
                .write_at(&self.buf[..padded as usize], offset)
                .map_err(JournalError::io("rewrite"))?;
            self.rewritten[segment as usize] = true;
        }
        if segment != self.cursor.segment {
            self.transitions += 1;
        }
        self.expect = header.next(self.state.epoch);
        self.seg_last[segment as usize] = Some(self.expect.seq - 1);
        self.cursor = Position {
            epoch: header.epoch,
            segment,
            offset: offset + padded,
            seq: self.expect.seq,
            link: header.link,
        };
        let body = &self.buf[format::GROUP_HEADER_LEN..padded as usize];
        let records = format::decode_group_body(&header, body).expect("checked above");
        Ok(Some(ReplayedGroup {
            end: self.cursor,
            epoch: header.epoch,
            records,
        }))
    }

    /// Why and where the scan stopped (once `next_group` returned `None`).
    pub fn stop(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// The checkpoint replay started from.
    pub fn checkpoint(&self) -> Position {
        self.checkpoint
    }

    /// Replays what is left, makes the replayed prefix durable again (full durability),
    /// takes a new epoch and returns the writer, positioned after the valid prefix.
    pub fn finish(mut self) -> Result<Journal<S>, JournalError> {
        while self.next_group()?.is_some() {}
        for (seg, rewritten) in self.segs.iter().zip(&self.rewritten) {
            if *rewritten {
                seg.flush().map_err(JournalError::io("flush"))?;
            }
        }
        let epoch = self
            .state
            .epoch
            .checked_add(1)
            .ok_or_else(|| JournalError::State("epochs exhausted".into()))?;
        let state = State {
            epoch,
            max_group_bytes: self.state.max_group_bytes.max(self.cfg.max_group_bytes),
            ..self.state
        };
        self.storage
            .store_state(&state.encode())
            .map_err(JournalError::io("store state"))?;
        Ok(Journal {
            storage: self.storage,
            segs: self.segs,
            cfg: self.cfg,
            state,
            head: self.cursor,
            released: self.checkpoint.seq,
            seg_last: self.seg_last,
            buf: Some(self.buf),
            poisoned: None,
        })
    }

    /// Replays everything into owned records and returns the writer (tests, small tools).
    pub fn collect_all(mut self) -> Result<(Journal<S>, Vec<Record>), JournalError> {
        let mut out = Vec::new();
        while let Some(g) = self.next_group()? {
            out.extend(g.records.iter().map(Record::from));
        }
        Ok((self.finish()?, out))
    }
}
