//! Gateway-mode retention: objects every destination has received are deleted once they are
//! old enough, by a sweep on its own thread.
//!
//! Candidates come from the `RETIRABLE` table (written when an object's last job is
//! delivered, or at ingest when no route matched), keyed by reception time so the sweep is a
//! range scan up to "now minus the age". Each candidate is checked again inside the sweep's
//! transaction — still stored, same reception time, no undelivered job (a replay may have
//! added one) — then its index rows go, and its file is unlinked after the commit. A crash in
//! between leaves a file without rows: disk space, never a row without its file.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use redb::ReadableTable;
use tracing::{error, info};

use super::QueueError;
use crate::commit::timestamp_us;
use crate::db;
use crate::store::index::{self, Index};
use crate::store::DataDir;

/// Candidates handled per transaction.
const SWEEP_BATCH: usize = 256;

/// Deletes the objects that became retirable at least `min_age` before `now_us`. Returns how
/// many were deleted.
pub fn sweep(
    index: &Index,
    data: &DataDir,
    now_us: u64,
    min_age: Duration,
) -> Result<usize, QueueError> {
    let cutoff = now_us.saturating_sub(min_age.as_micros() as u64);
    let mut deleted = 0;
    loop {
        let tx = index.database().begin_write()?;
        let mut files: Vec<PathBuf> = Vec::new();
        let n;
        {
            let mut candidates: Vec<(u64, String)> = Vec::new();
            {
                let t = tx.open_table(db::RETIRABLE)?;
                for row in t.range((0u64, "")..(cutoff.saturating_add(1), ""))? {
                    let (k, _) = row?;
                    let (at, sop) = k.value();
                    candidates.push((at, sop.to_owned()));
                    if candidates.len() >= SWEEP_BATCH {
                        break;
                    }
                }
            }
            n = candidates.len();
            for (at, sop) in candidates {
                tx.open_table(db::RETIRABLE)?.remove((at, sop.as_str()))?;
                if tx.open_table(db::OUTSTANDING)?.get(sop.as_str())?.is_some() {
                    continue;
                }
                match index::get_instance_tx(&tx, &sop)? {
                    Some(rec) if rec.received_at_us == at => {
                        index::remove_instance(&tx, &sop)?;
                        files.push(data.root().join(&rec.path));
                    }
                    _ => {}
                }
            }
        }
        tx.commit()?;
        for f in &files {
            crate::store::writer::remove_quietly(f);
            // Empty series and study directories go too (errors: not empty, or raced).
            if let Some(series) = f.parent() {
                if std::fs::remove_dir(series).is_ok() {
                    if let Some(study) = series.parent() {
                        let _ = std::fs::remove_dir(study);
                    }
                }
            }
        }
        deleted += files.len();
        if n < SWEEP_BATCH {
            return Ok(deleted);
        }
    }
}

/// The sweep thread.
#[derive(Debug)]
pub struct Sweeper {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: JoinHandle<()>,
}

impl Sweeper {
    /// Sweeps every `interval` for objects older than `min_age`.
    pub fn start(
        index: Arc<Index>,
        data: DataDir,
        interval: Duration,
        min_age: Duration,
    ) -> std::io::Result<Self> {
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("retention".into())
            .spawn(move || loop {
                match sweep(&index, &data, timestamp_us(), min_age) {
                    Ok(0) => {}
                    Ok(n) => info!(deleted = n, "retention: deleted forwarded objects"),
                    Err(e) => error!(error = %e, "retention sweep failed"),
                }
                let (m, cv) = &*s;
                let g = m.lock().unwrap_or_else(|e| e.into_inner());
                let (g, _) = cv
                    .wait_timeout_while(g, interval, |stopped| !*stopped)
                    .unwrap_or_else(|e| e.into_inner());
                if *g {
                    return;
                }
            })?;
        Ok(Self { stop, thread })
    }

    /// Stops the thread.
    pub fn stop(self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        let _ = self.thread.join();
    }
}
