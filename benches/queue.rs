//! The forwarding queue inside a checkpoint's write transaction:
//! - "has this destination a job for this object?" (`queue::reroute`, which an identical
//!   re-send asks) against a destination with a backlog: 100,000 waiting jobs (an archive
//!   that has been unreachable for a while), the asked-about object's job the last one due;
//! - writing one checkpoint's jobs (`NewJobs::flush` of 4,096 jobs, one per object), what
//!   every routed object costs;
//! - checking the job index against the 100,001 jobs (`Queue::mend_job_index` when it is
//!   whole, the daemon's start-up).
//!
//! One operation per iteration, in a write transaction that is aborted, so the database stays
//! as it is.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dicom_gw::queue::{reroute, NewJobs, Queue};
use dicom_gw::store::index::Index;

const BACKLOG: u64 = 100_000;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let index = std::sync::Arc::new(Index::open(&dir.path().join("gateway.redb")).unwrap());
    let db = index.database();
    let tx = db.begin_write().unwrap();
    let mut jobs = NewJobs::default();
    for k in 0..BACKLOG {
        jobs.add("archive", &format!("1.2.3.{k}"));
    }
    jobs.flush(&tx, 1).unwrap();
    // The asked-about object: due last.
    let mut last = NewJobs::default();
    last.add("archive", "1.2.9.9");
    last.flush(&tx, 2).unwrap();
    tx.commit().unwrap();
    // As the daemon's start does.
    let queue = Queue::new(index.clone(), false);
    queue.mend_job_index().unwrap();
    let dests = ["archive".to_owned()];
    c.bench_function("reroute, object queued, 100k backlog", |b| {
        b.iter(|| {
            let tx = db.begin_write().unwrap();
            let added = reroute(&tx, black_box("1.2.9.9"), &dests, 3).unwrap();
            assert!(added.is_empty());
            tx.abort().unwrap();
        })
    });
    c.bench_function("NewJobs::flush, 4096 jobs, 100k backlog", |b| {
        b.iter(|| {
            let tx = db.begin_write().unwrap();
            let mut jobs = NewJobs::default();
            for k in 0..4096 {
                jobs.add("archive", &format!("1.2.4.{k}"));
            }
            black_box(jobs.flush(&tx, 4).unwrap());
            tx.abort().unwrap();
        })
    });
    c.bench_function("mend_job_index (whole), 100k jobs", |b| {
        b.iter(|| assert!(black_box(queue.mend_job_index().unwrap()).is_none()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
