//! Upper-layer framing on the hot path: header peek + length check + P-DATA-TF split of a
//! 256 KiB PDU (one PDV, sixteen PDVs), and fragmenting a 512 KiB message into 16 KiB PDUs.

use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dicom_gw::net::ul::pdata::{
    check_length, encode_message, peek_header, split_pdata, PDU_HEADER_LEN, PDV_HEADER_LEN,
};

/// Our announced Maximum Length.
const MAX_PDU: u32 = 256 * 1024;

/// A whole P-DATA-TF PDU whose body is exactly `MAX_PDU` bytes, split into `pdvs` PDVs.
fn pdata_pdu(pdvs: usize) -> Bytes {
    let body_len = MAX_PDU as usize;
    let per_pdv = body_len / pdvs;
    let mut out = BytesMut::with_capacity(PDU_HEADER_LEN + body_len);
    out.put_u8(0x04);
    out.put_u8(0);
    out.put_u32(MAX_PDU);
    for i in 0..pdvs {
        let item = if i + 1 == pdvs {
            body_len - per_pdv * (pdvs - 1)
        } else {
            per_pdv
        };
        let data_len = item - PDV_HEADER_LEN;
        out.put_u32((data_len + 2) as u32);
        out.put_u8(3);
        out.put_u8(if i + 1 == pdvs { 0x02 } else { 0x00 });
        out.extend((0..data_len).map(|j| (j * 7 + i) as u8));
    }
    assert_eq!(out.len(), PDU_HEADER_LEN + body_len);
    out.freeze()
}

/// What the reader does per PDU: peek, check, split the body into PDVs.
fn frame(pdu: &Bytes) -> usize {
    let h = peek_header(pdu).expect("header");
    check_length(h, MAX_PDU).expect("within limits");
    let body = pdu.slice(PDU_HEADER_LEN..h.total_len());
    split_pdata(body).expect("valid P-DATA-TF").len()
}

fn bench_split(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing/split_pdata_256KiB");
    for pdvs in [1usize, 16] {
        let pdu = pdata_pdu(pdvs);
        assert_eq!(frame(&pdu), pdvs);
        g.throughput(Throughput::Bytes(pdu.len() as u64));
        g.bench_function(format!("{pdvs}_pdv"), |b| b.iter(|| frame(black_box(&pdu))));
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i * 13) as u8).collect();
    let mut out = BytesMut::with_capacity(data.len() + 64 * (PDU_HEADER_LEN + PDV_HEADER_LEN));
    let mut g = c.benchmark_group("framing/encode_message");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("512KiB_in_16KiB_pdus", |b| {
        b.iter(|| {
            out.clear();
            encode_message(&mut out, 1, false, black_box(&data), 16 * 1024);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_split, bench_encode);
criterion_main!(benches);
