//! The write-ahead journal (issue 12): encoding a group, and `append_group` (encode + one
//! write + one flush) of groups of 1, 4 and 16 objects of 16 KiB on a real file segment.
//!
//! The ring (4 × 64 MiB, prepared once: fallocate + zeros + fsync) lives under Cargo's
//! target directory (`CARGO_TARGET_TMPDIR`), i.e. on the disk the target directory is on,
//! not on tmpfs. The same segments are reopened for each I/O path:
//! - `full/direct`: `O_DIRECT|O_DSYNC` (each write returns once durable; no separate flush),
//! - `full/buffered`: buffered `pwrite` + `fdatasync`,
//! - `relaxed`: buffered `pwrite`, no flush.
//!
//! Every append is released right away (the checkpoint follows the writer), so the ring
//! never fills; about every 950 groups of 16 the writer wraps, and that append also stores
//! the next epoch (a small file written, synced and renamed), which is part of the figures.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dicom_gw::config::Durability;
use dicom_gw::store::journal::format::{self, GroupMeta};
use dicom_gw::store::journal::{
    AlignedBuf, FileIo, FileStorage, IoMode, Journal, JournalConfig, Position, RecordIn,
};

const DATASET: usize = 16 * 1024;
const HEADER: usize = 330;
const META: usize = 800;
const GROUPS: [usize; 3] = [1, 4, 16];

struct Obj {
    meta: Vec<u8>,
    header: Vec<u8>,
    dataset: Vec<u8>,
}

fn objects(n: usize) -> Vec<Obj> {
    let mut rng = fastrand::Rng::with_seed(12);
    (0..n)
        .map(|_| Obj {
            meta: (0..META).map(|_| rng.u8(..)).collect(),
            header: (0..HEADER).map(|_| rng.u8(..)).collect(),
            dataset: (0..DATASET).map(|_| rng.u8(..)).collect(),
        })
        .collect()
}

fn inputs(objs: &[Obj]) -> Vec<RecordIn<'_>> {
    objs.iter()
        .map(|o| RecordIn {
            flags: 0,
            meta: &o.meta,
            header: &o.header,
            dataset: &o.dataset,
        })
        .collect()
}

fn ring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("journal-bench")
}

fn config(durability: Durability) -> JournalConfig {
    JournalConfig {
        segment_count: 4,
        segment_size: 64 << 20,
        max_group_bytes: 16 << 20,
        durability,
    }
}

fn bench_encode(c: &mut Criterion) {
    let objs = objects(16);
    let mut g = c.benchmark_group("journal/encode");
    for n in GROUPS {
        let recs = inputs(&objs[..n]);
        let len = format::padded_len(format::body_len(&recs).unwrap()) as usize;
        let mut buf = AlignedBuf::new(len);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("group_of_{n}"), |b| {
            b.iter(|| {
                format::encode_group(
                    &mut buf[..len],
                    black_box(&GroupMeta {
                        epoch: 1,
                        first_seq: 1,
                        prev: 0,
                        flags: 0,
                    }),
                    black_box(&recs),
                )
            })
        });
    }
    g.finish();
}

fn bench_append(c: &mut Criterion) {
    let objs = objects(16);
    let dir = ring_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let mut checkpoint: Option<Position> = None;
    let mut g = c.benchmark_group("journal/append_group");
    g.sample_size(50);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    for (name, durability, mode) in [
        ("full/direct", Durability::Full, IoMode::Direct),
        ("full/buffered", Durability::Full, IoMode::Buffered),
        ("relaxed", Durability::Relaxed, IoMode::Buffered),
    ] {
        let storage = match FileStorage::open(&dir, durability, mode) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("journal/append_group/{name}: skipped ({e})");
                continue;
            }
        };
        assert!(mode != IoMode::Direct || storage.io() == FileIo::DirectSync);
        let mut j = Journal::open(storage, config(durability), checkpoint)
            .unwrap()
            .finish()
            .unwrap();
        for n in GROUPS {
            let recs = inputs(&objs[..n]);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("{name}/group_of_{n}"), |b| {
                b.iter(|| {
                    let pos = j.append_group(black_box(&recs)).unwrap();
                    j.release_through(&pos).unwrap();
                    pos
                })
            });
        }
        checkpoint = Some(j.position());
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A record's meta section (index record, attributes, routing, decision) as the journal
/// writer encodes it for every object: UIDs of realistic length.
fn bench_record_meta(c: &mut Criterion) {
    use dicom_gw::ingest::record::{Decision, RecordMeta};
    use dicom_gw::store::attrs::IndexAttrs;
    use dicom_gw::store::index::InstanceRecord;
    let uid = |tail: &str| format!("1.2.826.0.1.3680043.8.498.{tail}");
    let (study, series, sop) = (
        uid("10203040506070809.1"),
        uid("10203040506070809.1.2"),
        uid("10203040506070809.1.2.345"),
    );
    let class = "1.2.840.10008.5.1.4.1.1.2".to_owned();
    let meta = RecordMeta {
        record: InstanceRecord {
            sop_instance_uid: sop.clone(),
            sop_class_uid: class.clone(),
            study_instance_uid: study.clone(),
            series_instance_uid: series.clone(),
            instance_number: "345".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            file_size: 16_722,
            dataset_size: 16_384,
            dataset_blake3: "ab".repeat(32),
            received_at_us: 1_765_152_000_000_000,
            calling_ae_title: "CT_SCANNER_1".into(),
            called_ae_title: "DICOM_GW".into(),
            path: format!("objects/{study}/{series}/{sop}.dcm"),
        },
        attrs: IndexAttrs {
            specific_character_set: "ISO_IR 100".into(),
            sop_class_uid: class,
            sop_instance_uid: sop,
            study_date: "20261208".into(),
            study_time: "101500".into(),
            accession_number: "ACC0012345".into(),
            modality: "CT".into(),
            referring_physician_name: "Doe^John".into(),
            study_description: "CT THORAX".into(),
            series_description: "AXIAL 1.25".into(),
            patient_name: "Müller^Anna".into(),
            patient_id: "PID0012345".into(),
            patient_birth_date: "19700101".into(),
            patient_sex: "F".into(),
            study_instance_uid: study,
            series_instance_uid: series,
            study_id: "1".into(),
            series_number: "2".into(),
            instance_number: "345".into(),
            // The short top-level attributes for C-FIND, postcard-encoded: about this much
            // for a CT slice.
            attributes: vec![0x5a; 1200],
            ..Default::default()
        },
        destinations: vec!["pacs".into()],
        decision: Decision::Place,
        staged: None,
    };
    let mut g = c.benchmark_group("journal/record_meta");
    g.bench_function("encode", |b| b.iter(|| black_box(&meta).encode()));
    g.finish();
}

criterion_group!(benches, bench_encode, bench_append, bench_record_meta);
criterion_main!(benches);
