//! UID validation on typical 40–64 character UIDs (every received object checks three).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dicom_gw::dicom::uid::validate_uid;

const UIDS: [&str; 8] = [
    "1.2.840.113619.2.55.3.604688119.969.1268071029.320",
    "1.3.12.2.1107.5.1.4.73513.30000019073006283456700000012",
    "2.25.196374621758347126453918253411749120835",
    "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012\0",
    "1.2.392.200036.9116.2.6.1.48.1214245415.1523580011.984576",
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178",
    "1.2.840.10008.5.1.4.1.1.2.1234567890.1234567890.12345",
    "1.2.276.0.7230010.3.1.4.8323329.10034.1568212345.975011",
];

fn bench_validate(c: &mut Criterion) {
    for u in UIDS {
        let ok = validate_uid(u).unwrap();
        assert!((40..=64).contains(&ok.len()), "{ok} is {} long", ok.len());
    }
    let mut g = c.benchmark_group("uid");
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate_uid_one", |b| {
        b.iter(|| validate_uid(black_box(UIDS[0])).unwrap().len())
    });
    g.throughput(Throughput::Elements(UIDS.len() as u64));
    g.bench_function("validate_uid_8_mixed", |b| {
        b.iter(|| {
            black_box(&UIDS)
                .iter()
                .map(|u| validate_uid(u).unwrap().len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_validate);
criterion_main!(benches);
