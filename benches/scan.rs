//! The dataset structure scanner (`dicom::scan`) over two synthesized objects: a 512 KiB CT
//! (about 50 header elements, one nested sequence, 512×512×16-bit Pixel Data) and a 13 KiB
//! object whose cost is all headers (a worklist/MPPS-like dataset: text elements and 120
//! sequence items), each whole and pushed in chunks as a receiver would. Throughput in bytes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dicom_gw::dicom::scan::{check, Encoding, Limits, Scanner, StreamCheck};

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// Element encoder for Explicit or Implicit VR Little Endian.
struct Enc {
    explicit: bool,
    out: Vec<u8>,
}

impl Enc {
    fn new(explicit: bool) -> Self {
        Enc {
            explicit,
            out: Vec::new(),
        }
    }

    fn tag(&mut self, group: u16, elem: u16) {
        self.out.extend_from_slice(&group.to_le_bytes());
        self.out.extend_from_slice(&elem.to_le_bytes());
    }

    fn header(&mut self, group: u16, elem: u16, vr: &[u8; 2], len: u32) {
        self.tag(group, elem);
        let long = matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR");
        if !self.explicit {
            self.out.extend_from_slice(&len.to_le_bytes());
        } else if long {
            self.out.extend_from_slice(vr);
            self.out.extend_from_slice(&[0, 0]);
            self.out.extend_from_slice(&len.to_le_bytes());
        } else {
            self.out.extend_from_slice(vr);
            self.out.extend_from_slice(&(len as u16).to_le_bytes());
        }
    }

    fn el(&mut self, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
        let mut v = value.to_vec();
        if v.len() % 2 == 1 {
            v.push(if vr == b"UI" { 0 } else { b' ' });
        }
        self.header(group, elem, vr, v.len() as u32);
        self.out.extend_from_slice(&v);
    }

    fn item_tag(&mut self, elem: u16, len: u32) {
        self.tag(0xFFFE, elem);
        self.out.extend_from_slice(&len.to_le_bytes());
    }
}

/// A CT image: ~50 elements, one sequence, 512 KiB of pixels.
fn ct(explicit: bool) -> Vec<u8> {
    let mut e = Enc::new(explicit);
    e.el(0x0008, 0x0005, b"CS", b"ISO_IR 100");
    e.el(0x0008, 0x0008, b"CS", b"ORIGINAL\\PRIMARY\\AXIAL");
    e.el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2");
    e.el(0x0008, 0x0018, b"UI", b"1.2.826.0.1.3680043.2.1125.1.1");
    for (elem, v) in [
        (0x0020u16, "20260102"),
        (0x0021, "20260102"),
        (0x0022, "20260102"),
    ] {
        e.el(0x0008, elem, b"DA", v.as_bytes());
    }
    for elem in [0x0030u16, 0x0031, 0x0032] {
        e.el(0x0008, elem, b"TM", b"101500.000000");
    }
    e.el(0x0008, 0x0050, b"SH", b"ACC123456");
    e.el(0x0008, 0x0060, b"CS", b"CT");
    e.el(0x0008, 0x0070, b"LO", b"ACME Medical");
    e.el(0x0008, 0x0090, b"PN", b"Referring^Doctor");
    e.el(0x0008, 0x1030, b"LO", b"CT CHEST WITH CONTRAST");
    e.el(0x0008, 0x103E, b"LO", b"AXIAL 1.25MM");
    // Referenced Performed Procedure Step Sequence, one item of undefined length.
    e.header(0x0008, 0x1111, b"SQ", 0xFFFF_FFFF);
    e.item_tag(0xE000, 0xFFFF_FFFF);
    e.el(0x0008, 0x1150, b"UI", b"1.2.840.10008.3.1.2.3.3");
    e.el(0x0008, 0x1155, b"UI", b"1.2.826.0.1.3680043.2.1125.9.9");
    e.item_tag(0xE00D, 0);
    e.item_tag(0xE0DD, 0);
    e.el(0x0010, 0x0010, b"PN", b"Doe^Jane");
    e.el(0x0010, 0x0020, b"LO", b"PID-0001");
    e.el(0x0010, 0x0030, b"DA", b"19700101");
    e.el(0x0010, 0x0040, b"CS", b"F");
    e.el(0x0018, 0x0050, b"DS", b"1.25");
    e.el(0x0018, 0x0060, b"DS", b"120");
    e.el(0x0018, 0x1030, b"LO", b"CHEST");
    e.el(0x0018, 0x1151, b"IS", b"200");
    e.el(0x0018, 0x5100, b"CS", b"HFS");
    e.el(0x0020, 0x000D, b"UI", b"1.2.826.0.1.3680043.2.1125.2.1");
    e.el(0x0020, 0x000E, b"UI", b"1.2.826.0.1.3680043.2.1125.3.1");
    e.el(0x0020, 0x0010, b"SH", b"STUDY1");
    e.el(0x0020, 0x0011, b"IS", b"2");
    e.el(0x0020, 0x0013, b"IS", b"57");
    e.el(0x0020, 0x0032, b"DS", b"-250.0\\-250.0\\-71.25");
    e.el(0x0020, 0x0037, b"DS", b"1\\0\\0\\0\\1\\0");
    e.el(0x0020, 0x0052, b"UI", b"1.2.826.0.1.3680043.2.1125.4.1");
    e.el(0x0020, 0x1041, b"DS", b"-71.25");
    e.el(0x0028, 0x0002, b"US", &1u16.to_le_bytes());
    e.el(0x0028, 0x0004, b"CS", b"MONOCHROME2");
    e.el(0x0028, 0x0010, b"US", &512u16.to_le_bytes());
    e.el(0x0028, 0x0011, b"US", &512u16.to_le_bytes());
    e.el(0x0028, 0x0030, b"DS", b"0.9765625\\0.9765625");
    e.el(0x0028, 0x0100, b"US", &16u16.to_le_bytes());
    e.el(0x0028, 0x0101, b"US", &12u16.to_le_bytes());
    e.el(0x0028, 0x0102, b"US", &11u16.to_le_bytes());
    e.el(0x0028, 0x0103, b"US", &0u16.to_le_bytes());
    e.el(0x0028, 0x1050, b"DS", b"40");
    e.el(0x0028, 0x1051, b"DS", b"400");
    e.el(0x0028, 0x1052, b"DS", b"-1024");
    e.el(0x0028, 0x1053, b"DS", b"1");
    let pixels = 512 * 512 * 2;
    e.header(0x7FE0, 0x0010, b"OW", pixels as u32);
    e.out.resize(e.out.len() + pixels, 0x5A);
    e.out
}

/// A header-only object of about 13 KiB: 40 top-level text elements and 120 sequence items
/// (two levels), like a large MPPS N-SET or worklist response.
fn headers_13k(explicit: bool) -> Vec<u8> {
    let mut e = Enc::new(explicit);
    for i in 0..40u16 {
        e.el(0x0008, 0x1000 + i, b"LO", b"Some descriptive text value");
    }
    // Performed Series Sequence (0040,0340) of defined-length-free items.
    e.header(0x0040, 0x0340, b"SQ", 0xFFFF_FFFF);
    for i in 0..60u16 {
        e.item_tag(0xE000, 0xFFFF_FFFF);
        e.el(0x0008, 0x103E, b"LO", format!("SERIES {i}").as_bytes());
        e.el(
            0x0020,
            0x000E,
            b"UI",
            b"1.2.826.0.1.3680043.2.1125.3.123456",
        );
        // Referenced Image Sequence (0008,1140), one item.
        e.header(0x0008, 0x1140, b"SQ", 0xFFFF_FFFF);
        e.item_tag(0xE000, 0xFFFF_FFFF);
        e.el(0x0008, 0x1150, b"UI", b"1.2.840.10008.5.1.4.1.1.2");
        e.el(
            0x0008,
            0x1155,
            b"UI",
            b"1.2.826.0.1.3680043.2.1125.1.123456",
        );
        e.item_tag(0xE00D, 0);
        e.item_tag(0xE0DD, 0);
        e.item_tag(0xE00D, 0);
    }
    e.item_tag(0xE0DD, 0);
    e.out
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("scan");
    for (name, bytes, ts) in [
        ("ct_512k_explicit", ct(true), EXPLICIT_LE),
        ("ct_512k_implicit", ct(false), IMPLICIT_LE),
        ("headers_13k_explicit", headers_13k(true), EXPLICIT_LE),
        ("headers_13k_implicit", headers_13k(false), IMPLICIT_LE),
    ] {
        check(&bytes, ts, &limits).expect("the synthesized object scans");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("{name}_{}B", bytes.len()), |b| {
            b.iter(|| check(black_box(&bytes), ts, &limits).unwrap())
        });
        // Pushed in 1,400-byte chunks (a TCP segment's worth): the streaming cost.
        let enc = Encoding::for_transfer_syntax(ts).unwrap().0;
        g.bench_function(format!("{name}_chunked_1400"), |b| {
            b.iter(|| {
                let mut s = Scanner::new(enc, limits);
                for chunk in black_box(&bytes).chunks(1400) {
                    s.push(chunk).unwrap();
                }
                s.finish().unwrap()
            })
        });
        // What the C-STORE path runs per fragment (StreamCheck with the store's limits), and
        // BLAKE3 over the same bytes, which that path already pays, as the yardstick.
        let store_limits = dicom_gw::net::services::storage::STRUCTURE_LIMITS;
        g.bench_function(format!("{name}_stream_check_16k_pdus"), |b| {
            b.iter(|| {
                let mut s = StreamCheck::for_transfer_syntax(ts, store_limits).unwrap();
                for chunk in black_box(&bytes).chunks(16 * 1024) {
                    s.push(chunk);
                }
                s.finish().unwrap()
            })
        });
        g.bench_function(format!("{name}_blake3"), |b| {
            b.iter(|| blake3::hash(black_box(&bytes)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
