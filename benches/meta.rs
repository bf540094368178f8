//! Part-10 header (preamble + DICM + File Meta group), built once per stored object.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dicom_gw::store::meta::{build_header, dataset_offset};

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const SOP_INSTANCE: &str = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

fn bench_build_header(c: &mut Criterion) {
    let h = build_header(CT_IMAGE_STORAGE, SOP_INSTANCE, EXPLICIT_LE, "MODALITY1").unwrap();
    assert_eq!(dataset_offset(&h), Some(h.len()));

    let mut g = c.benchmark_group("meta");
    g.bench_function("build_header", |b| {
        b.iter(|| {
            build_header(
                black_box(CT_IMAGE_STORAGE),
                black_box(SOP_INSTANCE),
                black_box(EXPLICIT_LE),
                black_box("MODALITY1"),
            )
            .unwrap()
        })
    });
    g.bench_function("build_header_no_source_ae", |b| {
        b.iter(|| {
            build_header(
                black_box(CT_IMAGE_STORAGE),
                black_box(SOP_INSTANCE),
                black_box(EXPLICIT_LE),
                black_box("  "),
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_build_header);
criterion_main!(benches);
