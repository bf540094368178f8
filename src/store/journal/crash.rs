//! `CrashStorage`: an in-memory [`Storage`] with the power-loss model the journal is tested
//! against.
//!
//! Every write lands in a "live" image (what reads see, like the page cache) and in a list of
//! unflushed writes. `flush` of a segment makes that segment's unflushed writes durable.
//! [`CrashStorage::crash`] returns what a machine would find after a power cut: the durable
//! images only, every unflushed write dropped, except that the last one may survive in part
//! ([`Tear`]). Preparing a segment and storing the state record are durable at once (the
//! file implementation syncs both before they become visible).
//!
//! Faults: a power cut at the n-th flush (that flush fails and every later operation too, the
//! disk is frozen for [`CrashStorage::crash`]), or one failing write or flush (EIO) on a disk
//! that keeps working, whose unflushed writes stay unflushed.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::storage::{Segment, Storage};

/// How much of the last unflushed write survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Nothing.
    None,
    /// Its first `n` bytes (byte-granular tearing; `n` at or past its length keeps it whole).
    Bytes(usize),
    /// Its first `n` 512-byte sectors.
    Sectors(usize),
    /// A pseudo-random subset of its 512-byte sectors, chosen by the seed (devices may
    /// persist the sectors of one write in any order).
    Scattered(u64),
}

/// Size of a sector for [`Tear::Sectors`] and [`Tear::Scattered`].
pub const SECTOR: usize = 512;

#[derive(Debug, Default, Clone)]
struct Image {
    durable: Vec<u8>,
    live: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Pending {
    segment: u32,
    offset: usize,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Disk {
    segments: Vec<Option<Image>>,
    pending: Vec<Pending>,
    state: Option<Vec<u8>>,
    writes: u64,
    flushes: u64,
    cut_at_flush: Option<u64>,
    fail_write: Option<u64>,
    fail_flush: Option<u64>,
    slow_write: Option<(u64, std::time::Duration)>,
    /// State writes still to fail with ENOSPC (storing nothing).
    state_enospc: u64,
    dead: bool,
}

fn power_lost() -> io::Error {
    io::Error::other("power lost (CrashStorage)")
}

/// In-memory journal storage that models power loss; cheap to clone (clones share the disk).
#[derive(Debug, Clone, Default)]
pub struct CrashStorage {
    disk: Arc<Mutex<Disk>>,
}

impl CrashStorage {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The power fails during the `n`-th flush counted from now (1 = the next one): it
    /// returns an error, nothing of it is durable, and every later operation fails.
    pub fn cut_power_at_flush(&self, n: u64) {
        let mut d = self.disk();
        d.cut_at_flush = Some(d.flushes + n);
    }

    /// The `n`-th write from now (1 = the next one) fails with EIO and writes nothing.
    pub fn fail_write(&self, n: u64) {
        let mut d = self.disk();
        d.fail_write = Some(d.writes + n);
    }

    /// The `n`-th write from now takes `delay` before it lands (or fails), without holding
    /// up other writes: a later group in flight can then reach the disk first.
    pub fn slow_write(&self, n: u64, delay: std::time::Duration) {
        let mut d = self.disk();
        d.slow_write = Some((d.writes + n, delay));
    }

    /// The `n`-th flush from now fails with EIO; its writes stay unflushed (a later crash
    /// drops them) while reads still see them, as after a failed writeback.
    pub fn fail_flush(&self, n: u64) {
        let mut d = self.disk();
        d.fail_flush = Some(d.flushes + n);
    }

    /// The next `n` state writes fail with ENOSPC and store nothing (a full filesystem: the
    /// state file is replaced through a new file).
    pub fn state_out_of_space(&self, n: u64) {
        self.disk().state_enospc = n;
    }

    /// Writes issued so far.
    pub fn writes(&self) -> u64 {
        self.disk().writes
    }

    /// Flushes issued so far (failed ones included).
    pub fn flushes(&self) -> u64 {
        self.disk().flushes
    }

    /// Length of the last unflushed write (0 if none).
    pub fn last_unflushed_len(&self) -> usize {
        self.disk().pending.last().map_or(0, |p| p.bytes.len())
    }

    /// What a reboot finds after a power cut now (this disk is left as it is).
    pub fn crash(&self, tear: Tear) -> CrashStorage {
        let d = self.disk();
        let mut segments: Vec<Option<Image>> = d
            .segments
            .iter()
            .map(|s| {
                s.as_ref().map(|i| Image {
                    durable: i.durable.clone(),
                    live: i.durable.clone(),
                })
            })
            .collect();
        if let Some(p) = d.pending.last() {
            let img = segments[p.segment as usize]
                .as_mut()
                .expect("written segment exists");
            let len = p.bytes.len();
            let mut keep = |from: usize, to: usize| {
                let to = to.min(len);
                if from < to {
                    img.durable[p.offset + from..p.offset + to].copy_from_slice(&p.bytes[from..to]);
                }
            };
            match tear {
                Tear::None => {}
                Tear::Bytes(n) => keep(0, n),
                Tear::Sectors(n) => keep(0, n.saturating_mul(SECTOR)),
                Tear::Scattered(seed) => {
                    let mut rng = fastrand::Rng::with_seed(seed);
                    for s in 0..len.div_ceil(SECTOR) {
                        if rng.bool() {
                            keep(s * SECTOR, (s + 1) * SECTOR);
                        }
                    }
                }
            }
            img.live = img.durable.clone();
        }
        CrashStorage {
            disk: Arc::new(Mutex::new(Disk {
                segments,
                state: d.state.clone(),
                ..Disk::default()
            })),
        }
    }

    /// The durable bytes of segment `index` (empty if it does not exist).
    pub fn durable_image(&self, index: u32) -> Vec<u8> {
        let d = self.disk();
        d.segments
            .get(index as usize)
            .and_then(Option::as_ref)
            .map_or_else(Vec::new, |i| i.durable.clone())
    }

    /// Removes segment `index`, as an operator deleting a file would.
    pub fn remove_segment(&self, index: u32) {
        if let Some(s) = self.disk().segments.get_mut(index as usize) {
            *s = None;
        }
    }

    /// Overwrites durable (and live) bytes of segment `index` at `offset`, to craft stale or
    /// hostile contents in tests.
    ///
    /// # Panics
    /// If the segment does not exist or the bytes do not fit in it.
    pub fn poke(&self, index: u32, offset: usize, bytes: &[u8]) {
        let mut d = self.disk();
        let img = d.segments[index as usize].as_mut().expect("segment exists");
        img.durable[offset..offset + bytes.len()].copy_from_slice(bytes);
        img.live[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
}

impl Storage for CrashStorage {
    type Segment = CrashSegment;

    fn segment(&mut self, index: u32, size: u64, create: bool) -> io::Result<CrashSegment> {
        let mut d = self.disk();
        if d.dead {
            return Err(power_lost());
        }
        let i = index as usize;
        if d.segments.len() <= i {
            d.segments.resize(i + 1, None);
        }
        if d.segments[i].is_none() {
            if !create {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            let zeros = vec![0u8; size as usize];
            d.segments[i] = Some(Image {
                durable: zeros.clone(),
                live: zeros,
            });
        }
        Ok(CrashSegment {
            disk: Arc::clone(&self.disk),
            index,
        })
    }

    fn load_state(&mut self) -> io::Result<Option<Vec<u8>>> {
        let d = self.disk();
        if d.dead {
            return Err(power_lost());
        }
        Ok(d.state.clone())
    }

    fn store_state(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut d = self.disk();
        if d.dead {
            return Err(power_lost());
        }
        if d.state_enospc > 0 {
            d.state_enospc -= 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        d.state = Some(bytes.to_vec());
        Ok(())
    }
}

/// A segment of a [`CrashStorage`].
#[derive(Debug)]
pub struct CrashSegment {
    disk: Arc<Mutex<Disk>>,
    index: u32,
}

impl CrashSegment {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Segment for CrashSegment {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.disk();
        if d.dead {
            return Err(power_lost());
        }
        d.writes += 1;
        let n = d.writes;
        if let Some((_, delay)) = d.slow_write.filter(|(k, _)| *k == n) {
            drop(d);
            std::thread::sleep(delay);
            d = self.disk();
        }
        if d.fail_write == Some(n) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let offset = offset as usize;
        let img = d.segments[self.index as usize]
            .as_mut()
            .expect("segment exists");
        let Some(dst) = img.live.get_mut(offset..offset + buf.len()) else {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        };
        dst.copy_from_slice(buf);
        d.pending.push(Pending {
            segment: self.index,
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut d = self.disk();
        if d.dead {
            return Err(power_lost());
        }
        d.flushes += 1;
        if d.cut_at_flush == Some(d.flushes) {
            d.dead = true;
            return Err(power_lost());
        }
        if d.fail_flush == Some(d.flushes) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut d.pending)
            .into_iter()
            .partition(|p| p.segment == self.index);
        d.pending = others;
        let img = d.segments[self.index as usize]
            .as_mut()
            .expect("segment exists");
        for p in mine {
            img.durable[p.offset..p.offset + p.bytes.len()].copy_from_slice(&p.bytes);
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.disk();
        if d.dead {
            return Err(power_lost());
        }
        let offset = offset as usize;
        let img = d.segments[self.index as usize]
            .as_ref()
            .expect("segment exists");
        let src = img
            .live
            .get(offset..offset + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.disk().segments[self.index as usize]
            .as_ref()
            .map_or(0, |i| i.live.len() as u64)
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let mut d = self.disk();
        if d.dead {
            return Err(power_lost());
        }
        let zeros = vec![0u8; len as usize];
        d.segments[self.index as usize] = Some(Image {
            durable: zeros.clone(),
            live: zeros,
        });
        Ok(())
    }
}
