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
use crate::clock::timestamp_us;
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
        let mut studies: Vec<String> = Vec::new();
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
                        studies.push(rec.study_instance_uid);
                    }
                    _ => {}
                }
            }
        }
        tx.commit()?;
        // Study searches are served from the summary: it must drop what was just deleted.
        if let Err(e) = index.refresh_studies(&studies) {
            error!(error = %e, "study summary refresh failed; study searches read the index until it reloads");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::attrs::IndexAttrs;
    use crate::store::index::{InstanceRecord, StudyFilter};

    /// The sweep's deletions reach the study summary that serves searches.
    #[test]
    fn the_study_summary_follows_retention_deletions() {
        let d = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(d.path()).unwrap();
        let index = Index::open(&data.index_path()).unwrap();
        let tx = index.database().begin_write().unwrap();
        // Study 1.1: two objects, one old enough to go; study 1.2: one old object.
        for (study, sop, at) in [
            ("1.1", "3.1", 10u64),
            ("1.1", "3.2", 5_000_000),
            ("1.2", "3.3", 20),
        ] {
            let attrs = IndexAttrs {
                study_instance_uid: study.into(),
                series_instance_uid: format!("{study}.1"),
                sop_instance_uid: sop.into(),
                patient_id: "P1".into(),
                modality: "CT".into(),
                ..Default::default()
            };
            let rec = InstanceRecord {
                sop_instance_uid: sop.into(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                study_instance_uid: study.into(),
                series_instance_uid: format!("{study}.1"),
                instance_number: "1".into(),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                file_size: 1,
                dataset_size: 1,
                dataset_blake3: String::new(),
                received_at_us: at,
                calling_ae_title: String::new(),
                called_ae_title: String::new(),
                path: format!("objects/{study}/{study}.1/{sop}.dcm"),
            };
            index::put_instance(&tx, &rec, &attrs, false).unwrap();
            crate::queue::mark_retirable(&tx, at, sop).unwrap();
        }
        tx.commit().unwrap();
        index.refresh_studies(["1.1", "1.2"]).unwrap();
        assert_eq!(index.study_summary().len(), 2);

        let deleted = sweep(&index, &data, 1_000_000, Duration::from_micros(500_000)).unwrap();
        assert_eq!(deleted, 2);
        let all = index
            .search_studies(&StudyFilter::default(), 0, 10)
            .unwrap();
        assert_eq!(all.total, 1);
        assert_eq!(all.items[0].study_instance_uid, "1.1");
        assert_eq!(all.items[0].num_instances, 1);
        assert_eq!(
            all,
            index
                .search_studies_in_table(&StudyFilter::default(), 0, 10)
                .unwrap()
        );
    }
}
