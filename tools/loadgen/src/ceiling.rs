//! The durable disk ceiling: how fast this filesystem takes the same bytes as files when one
//! sync pays for a batch of them — the bound a durable receiver with group commit can reach.
//!
//! `threads` writers each create files of `size` bytes (in their own directory, as a receiver
//! spreads objects over series directories), and after every `batch` files call `syncfs` on
//! the filesystem, like a group commit does. No network, no DICOM: only the disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_gw::store::syncfs;
use serde::Serialize;

/// What to write.
#[derive(Debug, Clone)]
pub struct CeilingConfig {
    /// Directory to write into (created); its filesystem is the one measured.
    pub dir: PathBuf,
    /// Bytes per file.
    pub size: usize,
    /// Stop after this many files in all.
    pub count: u64,
    /// Or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// Concurrent writers.
    pub threads: usize,
    /// Files per writer between two syncs.
    pub batch: usize,
}

/// The measured ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingReport {
    /// Files written and synced.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds from the first write to the last sync.
    pub elapsed_s: f64,
    /// Files per second.
    pub files_per_s: f64,
    /// Megabytes (10^6 B) per second.
    pub mb_per_s: f64,
    /// `syncfs` calls made.
    pub syncs: u64,
}

fn writer(
    dir: &Path,
    data: &[u8],
    cfg: &CeilingConfig,
    next: &AtomicU64,
    stop: &AtomicBool,
    syncs: &AtomicU64,
) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let fs = std::fs::File::open(dir)?;
    let mut done = 0u64;
    let mut unsynced = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= cfg.count {
            break;
        }
        let mut f = std::fs::File::create(dir.join(format!("{n}.dcm")))?;
        f.write_all(data)?;
        drop(f);
        unsynced += 1;
        if unsynced == cfg.batch {
            syncfs(&fs)?;
            syncs.fetch_add(1, Ordering::Relaxed);
            done += unsynced as u64;
            unsynced = 0;
        }
    }
    if unsynced > 0 {
        syncfs(&fs)?;
        syncs.fetch_add(1, Ordering::Relaxed);
        done += unsynced as u64;
    }
    Ok(done)
}

/// Runs the measurement.
pub fn run(cfg: &CeilingConfig) -> std::io::Result<CeilingReport> {
    let data: Arc<Vec<u8>> = Arc::new(
        (0..cfg.size)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..cfg.threads.max(1))
        .map(|t| {
            let (data, next, stop, syncs, cfg) = (
                data.clone(),
                next.clone(),
                stop.clone(),
                syncs.clone(),
                cfg.clone(),
            );
            std::thread::spawn(move || {
                writer(
                    &cfg.dir.join(format!("w{t}")),
                    &data,
                    &cfg,
                    &next,
                    &stop,
                    &syncs,
                )
            })
        })
        .collect();
    if let Some(d) = cfg.duration {
        while start.elapsed() < d && handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    }
    let mut files = 0;
    for h in handles {
        files += h
            .join()
            .map_err(|_| std::io::Error::other("writer thread panicked"))??;
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let bytes = files * cfg.size as u64;
    Ok(CeilingReport {
        files,
        bytes,
        elapsed_s,
        files_per_s: files as f64 / elapsed_s,
        mb_per_s: bytes as f64 / 1e6 / elapsed_s,
        syncs: syncs.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_counts_every_file() {
        let d = tempfile::tempdir().unwrap();
        let cfg = CeilingConfig {
            dir: d.path().join("c"),
            size: 1000,
            count: 25,
            duration: None,
            threads: 2,
            batch: 4,
        };
        let r = run(&cfg).unwrap();
        assert_eq!(r.files, 25);
        assert_eq!(r.bytes, 25_000);
        let on_disk: usize = ["w0", "w1"]
            .iter()
            .map(|w| std::fs::read_dir(cfg.dir.join(w)).unwrap().count())
            .sum();
        assert_eq!(on_disk, 25);
        // Each writer syncs after every 4 files and once at the end.
        assert!(
            r.syncs >= 25 / 4 && r.syncs <= 25 / 4 + 2,
            "{} syncs",
            r.syncs
        );
    }
}
