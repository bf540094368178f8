//! DIMSE command sets: decoding a C-STORE-RQ and encoding its C-STORE-RSP.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dicom_gw::net::dimse::command::{decode_command, encode_response, encode_store_rq};

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const SOP_INSTANCE: &str = "1.2.840.113619.2.55.3.604688119.969.1268071029.320";

fn bench_command(c: &mut Criterion) {
    let rq_bytes = encode_store_rq(4242, CT_IMAGE_STORAGE, SOP_INSTANCE);
    let rq = decode_command(&rq_bytes).unwrap();
    assert_eq!(rq.message_id, 4242);
    assert!(rq.has_dataset);

    let mut g = c.benchmark_group("command");
    g.bench_function("decode_c_store_rq", |b| {
        b.iter(|| decode_command(black_box(&rq_bytes)).unwrap())
    });
    g.bench_function("encode_c_store_rsp", |b| {
        b.iter(|| encode_response(black_box(&rq), 0x8001, 0x0000, None))
    });
    g.bench_function("encode_c_store_rsp_with_comment", |b| {
        b.iter(|| {
            encode_response(
                black_box(&rq),
                0x8001,
                0xA700,
                Some("out of disk space: high-water mark reached"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench_command);
criterion_main!(benches);
