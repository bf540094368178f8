//! The group committer: one batch of 64 small objects submitted concurrently, from temporary
//! files to renamed, indexed objects, with `durability = "relaxed"` and `"full"`.
//!
//! Each iteration creates 64 fresh temporary files in `<data>/tmp` (setup, not timed), then
//! submits them all at once from a current-thread tokio runtime and waits for every answer
//! (timed). Objects accumulate in the index over the run, as they would in service.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dicom_gw::commit::{CommitOutcome, Committer, CommitterConfig};
use dicom_gw::config::{DuplicatePolicy, Durability};
use dicom_gw::store::attrs::IndexAttrs;
use dicom_gw::store::index::{Index, InstanceRecord};
use dicom_gw::store::DataDir;

const BATCH: usize = 64;
const OBJECT_SIZE: usize = 4 * 1024;
const STUDY: &str = "1.2.826.0.1.3680043.8.498.1";
const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

type Job = (PathBuf, InstanceRecord, IndexAttrs);

/// Writes the temporary files of batch `n` and returns what to submit for each.
fn make_batch(data: &DataDir, n: u64) -> Vec<Job> {
    let series = format!("{STUDY}.{}", n / 16 + 1);
    (0..BATCH)
        .map(|i| {
            let sop = format!("{series}.{}.{}", n + 1, i + 1);
            let temp = data.tmp().join(format!("{n}-{i}.part"));
            let body = vec![(i as u8) ^ (n as u8); OBJECT_SIZE];
            std::fs::write(&temp, &body).unwrap();
            let path = DataDir::object_rel_path(STUDY, &series, &sop).unwrap();
            let record = InstanceRecord {
                sop_instance_uid: sop.clone(),
                sop_class_uid: CT_IMAGE_STORAGE.into(),
                study_instance_uid: STUDY.into(),
                series_instance_uid: series.clone(),
                instance_number: (i + 1).to_string(),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                file_size: OBJECT_SIZE as u64,
                dataset_size: OBJECT_SIZE as u64 - 300,
                dataset_blake3: blake3::hash(sop.as_bytes()).to_hex().to_string(),
                received_at_us: dicom_gw::commit::timestamp_us(),
                calling_ae_title: "MODALITY1".into(),
                called_ae_title: "DICOM_GW".into(),
                path: path.to_string_lossy().into_owned(),
            };
            let attrs = IndexAttrs {
                sop_class_uid: CT_IMAGE_STORAGE.into(),
                sop_instance_uid: sop,
                modality: "CT".into(),
                patient_id: "PID-0012345".into(),
                patient_name: "Doe^Jane".into(),
                study_instance_uid: STUDY.into(),
                series_instance_uid: series.clone(),
                study_date: "20260102".into(),
                ..IndexAttrs::default()
            };
            (temp, record, attrs)
        })
        .collect()
}

/// Submits every job at once and waits for all answers.
async fn commit_all(committer: &Committer, jobs: Vec<Job>) {
    let mut set = tokio::task::JoinSet::new();
    for (temp, record, attrs) in jobs {
        let c = committer.clone();
        set.spawn(async move { c.commit(temp, record, attrs, Vec::new()).await });
    }
    for r in set.join_all().await {
        assert_eq!(r.unwrap(), CommitOutcome::Stored);
    }
}

fn bench_group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("group_commit");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, durability) in [("relaxed", Durability::Relaxed), ("full", Durability::Full)] {
        let dir = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(dir.path()).unwrap();
        let index = Arc::new(Index::open(&data.index_path()).unwrap());
        let cfg = CommitterConfig {
            durability,
            duplicate_policy: DuplicatePolicy::Keep,
            max_batch: 1024,
            window: Duration::ZERO,
            retire_unrouted: false,
            wake: None,
        };
        let (committer, handle, stats) =
            Committer::start(index.clone(), data.clone(), cfg).unwrap();
        let mut n = 0u64;
        g.bench_function(format!("batch_of_{BATCH}/{name}"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    make_batch(&data, n)
                },
                |jobs| rt.block_on(commit_all(&committer, jobs)),
                BatchSize::PerIteration,
            )
        });
        drop(committer);
        handle.join().unwrap();
        let (batches, objects) = (
            stats.batches.load(Ordering::Relaxed),
            stats.objects.load(Ordering::Relaxed),
        );
        assert_eq!(index.instance_count().unwrap(), objects);
        eprintln!(
            "group_commit/{name}: {objects} objects in {batches} committer batches \
             ({:.1} objects per batch)",
            objects as f64 / batches.max(1) as f64
        );
    }
    g.finish();
}

criterion_group!(benches, bench_group_commit);
criterion_main!(benches);
