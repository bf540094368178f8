//! A redb storage backend that models power loss, for crash-consistency tests of the index
//! (issue 12 asks for "a storage layer under the journal and the index with a test
//! implementation that drops every write not yet flushed"; the journal's is
//! `store::journal::CrashStorage`, this is the index's).
//!
//! Writes land in a volatile image at once (the page cache: reads see them); only `sync_data`
//! makes the volatile image durable. The backend records, at every sync, the durable image and
//! then every operation issued until the next sync, so a test can rebuild the disk as power
//! loss would leave it at any flush boundary: the durable image plus a prefix of the later
//! operations, the last one possibly torn. Never anything that was not written.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

/// One operation issued after a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `write(offset, data)`.
    Write(u64, Vec<u8>),
    /// `set_len(len)`.
    SetLen(u64),
}

/// A flush boundary: the durable image right after a sync, and what was issued after it.
#[derive(Debug, Clone, Default)]
pub struct Boundary {
    /// The file as it is on the disk after the sync.
    pub durable: Vec<u8>,
    /// Operations issued after the sync, in order, until the next sync (or the end).
    pub after: Vec<Op>,
}

#[derive(Debug, Default)]
struct State {
    volatile: Vec<u8>,
    /// `history[0]` is the image the backend started from (before any sync).
    history: Vec<Boundary>,
    /// Syncs still to succeed before one fails with EIO (a disk's write-back error): that
    /// sync makes nothing durable.
    fail_sync_in: Option<usize>,
}

/// The backend; clone the [`CrashHandle`] first to look at its history.
#[derive(Debug)]
pub struct CrashBackend {
    state: Arc<Mutex<State>>,
}

/// Read access to a backend's history, kept after the database is dropped.
#[derive(Debug, Clone)]
pub struct CrashHandle {
    state: Arc<Mutex<State>>,
}

impl CrashBackend {
    /// A backend over `image` (empty: a new database), and its handle.
    pub fn from_image(image: Vec<u8>) -> (CrashBackend, CrashHandle) {
        let state = Arc::new(Mutex::new(State {
            volatile: image.clone(),
            history: vec![Boundary {
                durable: image,
                after: Vec::new(),
            }],
            fail_sync_in: None,
        }));
        (
            CrashBackend {
                state: state.clone(),
            },
            CrashHandle { state },
        )
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl CrashHandle {
    /// Syncs completed so far.
    pub fn syncs(&self) -> usize {
        self.with(|s| s.history.len() - 1)
    }

    /// The sync after the next `ok` ones fails with EIO and makes nothing durable.
    pub fn fail_sync_after(&self, ok: usize) {
        self.with(|s| s.fail_sync_in = Some(ok));
    }

    /// The flush boundaries seen so far (`[0]`: the starting image).
    pub fn boundaries(&self) -> Vec<Boundary> {
        self.with(|s| s.history.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Boundary {
    /// The disk after power loss at this boundary: the durable image, then the first `keep`
    /// later operations, then the first `torn` bytes of the next write (if there is one).
    pub fn image_after_crash(&self, keep: usize, torn: usize) -> Vec<u8> {
        let mut img = self.durable.clone();
        for op in self.after.iter().take(keep) {
            apply(&mut img, op);
        }
        if let Some(Op::Write(off, data)) = self.after.get(keep) {
            let cut = torn.min(data.len());
            apply(&mut img, &Op::Write(*off, data[..cut].to_vec()));
        }
        img
    }
}

fn apply(img: &mut Vec<u8>, op: &Op) {
    match op {
        Op::SetLen(len) => img.resize(*len as usize, 0),
        Op::Write(off, data) => {
            let end = *off as usize + data.len();
            if img.len() < end {
                img.resize(end, 0);
            }
            img[*off as usize..end].copy_from_slice(data);
        }
    }
}

impl redb::StorageBackend for CrashBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.with(|s| s.volatile.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.with(|s| {
            let start = offset as usize;
            let src = s
                .volatile
                .get(start..start + out.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
            out.copy_from_slice(src);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.with(|s| {
            let op = Op::SetLen(len);
            apply(&mut s.volatile, &op);
            if let Some(b) = s.history.last_mut() {
                b.after.push(op);
            }
        });
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.with(|s| {
            match s.fail_sync_in {
                Some(0) => {
                    s.fail_sync_in = None;
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                Some(n) => s.fail_sync_in = Some(n - 1),
                None => {}
            }
            let durable = s.volatile.clone();
            s.history.push(Boundary {
                durable,
                after: Vec::new(),
            });
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.with(|s| {
            let op = Op::Write(offset, data.to_vec());
            apply(&mut s.volatile, &op);
            if let Some(b) = s.history.last_mut() {
                b.after.push(op);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

    const ROWS: TableDefinition<u64, u64> = TableDefinition::new("rows");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

    /// Reads what a database made from `img` holds: the committed count and the rows, or why
    /// it would not open.
    fn recovered(img: Vec<u8>) -> Result<(u64, Vec<u64>), String> {
        let (backend, _) = CrashBackend::from_image(img);
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| e.to_string())?;
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let count = match tx.open_table(META) {
            Ok(t) => t
                .get("count")
                .map_err(|e| e.to_string())?
                .map_or(0, |g| g.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(e.to_string()),
        };
        let rows = match tx.open_table(ROWS) {
            Ok(t) => t
                .iter()
                .map_err(|e| e.to_string())?
                .map(|r| r.map(|(k, _)| k.value()).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?,
            Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        Ok((count, rows))
    }

    /// redb with `Durability::Immediate` under the power-loss model, at every flush boundary
    /// of a scripted workload and with every prefix of the writes issued after it (the last
    /// one torn at several points): every transaction whose commit returned before the
    /// boundary is there, each transaction is all or nothing, and the database always opens.
    /// This is the property the index relies on when ingest acknowledges after its commit.
    #[test]
    fn committed_transactions_survive_power_loss_at_every_flush_boundary() {
        let (backend, handle) = CrashBackend::from_image(Vec::new());
        let db = Database::builder().create_with_backend(backend).unwrap();
        let created = handle.syncs();
        // syncs_when_returned[i]: syncs completed when commit i returned.
        let mut syncs_when_returned = Vec::new();
        for i in 0..12u64 {
            let tx = db.begin_write().unwrap();
            {
                let mut rows = tx.open_table(ROWS).unwrap();
                // Two rows per transaction: a torn transaction would show one without the other.
                rows.insert(2 * i, i).unwrap();
                rows.insert(2 * i + 1, i).unwrap();
                tx.open_table(META).unwrap().insert("count", i + 1).unwrap();
            }
            tx.commit().unwrap();
            syncs_when_returned.push(handle.syncs());
        }
        drop(db);
        let boundaries = handle.boundaries();
        assert!(boundaries.len() > 12, "{} syncs", boundaries.len() - 1);
        let mut images = 0;
        for (b, boundary) in boundaries.iter().enumerate() {
            let n = boundary.after.len();
            let mut keeps: Vec<usize> = vec![0, 1, n / 2, n.saturating_sub(1), n];
            keeps.sort_unstable();
            keeps.dedup();
            for keep in keeps.into_iter().filter(|k| *k <= n) {
                for torn in [0, 1, 512, 4096 + 7] {
                    let img = boundary.image_after_crash(keep, torn);
                    if b < created {
                        // The database is still being created (its header is written last): a
                        // crash there leaves no database, which redb refuses to open — a
                        // failed creation, not a committed transaction lost.
                        continue;
                    }
                    images += 1;
                    let (count, rows) = recovered(img).unwrap_or_else(|e| {
                        panic!("boundary {b}, {keep} of {n} later writes, torn {torn}: {e}")
                    });
                    let must = syncs_when_returned.iter().filter(|s| **s <= b).count() as u64;
                    assert!(
                        count >= must,
                        "boundary {b}: {count} transactions survive, {must} had returned"
                    );
                    assert_eq!(
                        rows,
                        (0..2 * count).collect::<Vec<_>>(),
                        "boundary {b}, keep {keep}, torn {torn}: rows do not match the count"
                    );
                }
            }
        }
        assert!(images > 50, "only {images} crash images");
    }

    /// The model itself: a crash keeps what was synced and never what was not written.
    #[test]
    fn the_model_keeps_synced_data_and_drops_the_rest() {
        use redb::StorageBackend;
        let (b, h) = CrashBackend::from_image(vec![1, 2, 3]);
        b.write(1, &[9, 9]).unwrap();
        b.sync_data().unwrap();
        b.set_len(6).unwrap();
        b.write(4, &[7, 7]).unwrap();
        let mut out = [0u8; 6];
        b.read(0, &mut out).unwrap();
        assert_eq!(out, [1, 9, 9, 0, 7, 7], "reads see unsynced writes");
        let bs = h.boundaries();
        assert_eq!(bs.len(), 2);
        assert_eq!(bs[1].image_after_crash(0, 0), vec![1, 9, 9]);
        assert_eq!(bs[1].image_after_crash(1, 1), vec![1, 9, 9, 0, 7, 0]);
        assert_eq!(bs[1].image_after_crash(2, 0), vec![1, 9, 9, 0, 7, 7]);
    }
}
