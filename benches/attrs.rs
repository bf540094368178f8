//! Index-attribute extraction from the first bytes of a synthesized CT image: ~50 elements in
//! groups 0008–0028 (one nested sequence) followed by 512×512×16-bit Pixel Data. The prefix
//! handed to `extract` is the header plus the first 16 KiB of pixels, as the receiver sees it.

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dicom_gw::store::attrs::{extract, IndexAttrs};

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";

const PIXELS: usize = 512 * 512 * 2;
const PIXEL_PREFIX: usize = 16 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum Vr {
    Explicit,
    Implicit,
}

/// Element encoder for Explicit or Implicit VR Little Endian.
struct Enc {
    vr: Vr,
    out: Vec<u8>,
}

impl Enc {
    fn tag(&mut self, group: u16, elem: u16) {
        self.out.extend_from_slice(&group.to_le_bytes());
        self.out.extend_from_slice(&elem.to_le_bytes());
    }

    /// A primitive element; odd values are padded (NUL for UI, space for text).
    fn el(&mut self, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
        let mut v = value.to_vec();
        if v.len() % 2 == 1 {
            v.push(if vr == b"UI" { 0 } else { b' ' });
        }
        self.tag(group, elem);
        let long = matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR");
        match self.vr {
            Vr::Implicit => self.out.extend_from_slice(&(v.len() as u32).to_le_bytes()),
            Vr::Explicit if long => {
                self.out.extend_from_slice(vr);
                self.out.extend_from_slice(&[0, 0]);
                self.out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            }
            Vr::Explicit => {
                self.out.extend_from_slice(vr);
                self.out.extend_from_slice(&(v.len() as u16).to_le_bytes());
            }
        }
        self.out.extend_from_slice(&v);
    }

    fn us(&mut self, group: u16, elem: u16, value: u16) {
        self.el(group, elem, b"US", &value.to_le_bytes());
    }

    /// A sequence of undefined length with one item of undefined length.
    fn sq(&mut self, group: u16, elem: u16, item: impl FnOnce(&mut Self)) {
        self.tag(group, elem);
        if self.vr == Vr::Explicit {
            self.out.extend_from_slice(b"SQ\0\0");
        }
        self.out.extend_from_slice(&u32::MAX.to_le_bytes());
        self.tag(0xFFFE, 0xE000);
        self.out.extend_from_slice(&u32::MAX.to_le_bytes());
        item(self);
        self.tag(0xFFFE, 0xE00D);
        self.out.extend_from_slice(&0u32.to_le_bytes());
        self.tag(0xFFFE, 0xE0DD);
        self.out.extend_from_slice(&0u32.to_le_bytes());
    }
}

/// A whole CT dataset (header, then the Pixel Data element with its value).
fn ct_dataset(vr: Vr) -> Vec<u8> {
    let mut e = Enc {
        vr,
        out: Vec::with_capacity(PIXELS + 4096),
    };
    let study = "1.2.840.113619.2.55.3.604688119.969.1268071029.320";
    let series = "1.2.840.113619.2.55.3.604688119.969.1268071029.321";
    let sop = "1.2.840.113619.2.55.3.604688119.969.1268071029.322.17";
    e.el(0x0008, 0x0005, b"CS", b"ISO_IR 100");
    e.el(0x0008, 0x0008, b"CS", b"ORIGINAL\\PRIMARY\\AXIAL");
    e.el(0x0008, 0x0012, b"DA", b"20260102");
    e.el(0x0008, 0x0013, b"TM", b"101530.123456");
    e.el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2");
    e.el(0x0008, 0x0018, b"UI", sop.as_bytes());
    e.el(0x0008, 0x0020, b"DA", b"20260102");
    e.el(0x0008, 0x0021, b"DA", b"20260102");
    e.el(0x0008, 0x0022, b"DA", b"20260102");
    e.el(0x0008, 0x0023, b"DA", b"20260102");
    e.el(0x0008, 0x0030, b"TM", b"101203");
    e.el(0x0008, 0x0031, b"TM", b"101344");
    e.el(0x0008, 0x0032, b"TM", b"101402.5");
    e.el(0x0008, 0x0033, b"TM", b"101402.5");
    e.el(0x0008, 0x0050, b"SH", b"A2026010200042");
    e.el(0x0008, 0x0060, b"CS", b"CT");
    e.el(0x0008, 0x0070, b"LO", b"GE MEDICAL SYSTEMS");
    e.el(0x0008, 0x0080, b"LO", b"General Hospital");
    e.el(0x0008, 0x0090, b"PN", b"Smith^John^^Dr");
    e.el(0x0008, 0x1010, b"SH", b"CTAWP00001");
    e.el(0x0008, 0x1030, b"LO", b"CT CHEST W CONTRAST");
    e.el(0x0008, 0x103E, b"LO", b"AXIAL 1.25MM");
    e.el(0x0008, 0x1090, b"LO", b"Revolution CT");
    e.sq(0x0008, 0x1140, |e| {
        e.el(0x0008, 0x1150, b"UI", b"1.2.840.10008.5.1.4.1.1.2");
        e.el(
            0x0008,
            0x1155,
            b"UI",
            b"1.2.840.113619.2.55.3.604688119.969.1268071029.322.1",
        );
    });
    e.el(0x0010, 0x0010, b"PN", b"Doe^Jane");
    e.el(0x0010, 0x0020, b"LO", b"PID-0012345");
    e.el(0x0010, 0x0030, b"DA", b"19800214");
    e.el(0x0010, 0x0040, b"CS", b"F");
    e.el(0x0010, 0x1010, b"AS", b"045Y");
    e.el(0x0018, 0x0015, b"CS", b"CHEST");
    e.el(0x0018, 0x0050, b"DS", b"1.25");
    e.el(0x0018, 0x0060, b"DS", b"120");
    e.el(0x0018, 0x1020, b"LO", b"revo_ct_22.0");
    e.el(0x0018, 0x1150, b"IS", b"500");
    e.el(0x0018, 0x1151, b"IS", b"320");
    e.el(0x0018, 0x5100, b"CS", b"FFS");
    e.el(0x0020, 0x000D, b"UI", study.as_bytes());
    e.el(0x0020, 0x000E, b"UI", series.as_bytes());
    e.el(0x0020, 0x0010, b"SH", b"4711");
    e.el(0x0020, 0x0011, b"IS", b"3");
    e.el(0x0020, 0x0012, b"IS", b"1");
    e.el(0x0020, 0x0013, b"IS", b"17");
    e.el(0x0020, 0x0032, b"DS", b"-250\\-250\\-120.5");
    e.el(0x0020, 0x0037, b"DS", b"1\\0\\0\\0\\1\\0");
    e.el(
        0x0020,
        0x0052,
        b"UI",
        b"1.2.840.113619.2.55.3.604688119.969.1268071029.319",
    );
    e.el(0x0020, 0x1041, b"DS", b"-120.5");
    e.us(0x0028, 0x0002, 1);
    e.el(0x0028, 0x0004, b"CS", b"MONOCHROME2");
    e.us(0x0028, 0x0010, 512);
    e.us(0x0028, 0x0011, 512);
    e.el(0x0028, 0x0030, b"DS", b"0.976562\\0.976562");
    e.us(0x0028, 0x0100, 16);
    e.us(0x0028, 0x0101, 12);
    e.us(0x0028, 0x0102, 11);
    e.us(0x0028, 0x0103, 1);
    e.el(0x0028, 0x1050, b"DS", b"40");
    e.el(0x0028, 0x1051, b"DS", b"400");
    e.el(0x0028, 0x1052, b"DS", b"-1024");
    e.el(0x0028, 0x1053, b"DS", b"1");
    // 12-bit CT-like noise around a smooth ramp (compresses somewhat, as real CT does).
    let mut seed = 0x2545_F491u32;
    let mut px = Vec::with_capacity(PIXELS);
    for i in 0..PIXELS / 2 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let v = ((i % 512) as u16 * 4 + (seed & 0x3F) as u16) & 0x0FFF;
        px.extend_from_slice(&v.to_le_bytes());
    }
    e.el(0x7FE0, 0x0010, b"OW", &px);
    e.out
}

/// The dataset cut right after the first `PIXEL_PREFIX` bytes of the pixel data value.
fn prefix(ds: &[u8]) -> &[u8] {
    &ds[..ds.len() - PIXELS + PIXEL_PREFIX]
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn check(a: &IndexAttrs) {
    assert_eq!(a.modality, "CT");
    assert_eq!(a.patient_id, "PID-0012345");
    assert_eq!(a.instance_number, "17");
    assert_eq!(
        a.series_instance_uid,
        "1.2.840.113619.2.55.3.604688119.969.1268071029.321"
    );
}

fn bench_extract(c: &mut Criterion) {
    let explicit = ct_dataset(Vr::Explicit);
    let implicit = ct_dataset(Vr::Implicit);
    // Deflated: the whole explicit dataset deflated, of which the receiver holds a prefix
    // (the first 64 KiB of the deflated stream, far past the header).
    let deflated_all = deflate(&explicit);
    let deflated = &deflated_all[..deflated_all.len().min(64 * 1024)];

    let mut g = c.benchmark_group("attrs/extract");
    for (name, bytes, ts) in [
        ("explicit_le", prefix(&explicit), EXPLICIT_LE),
        ("implicit_le", prefix(&implicit), IMPLICIT_LE),
        ("deflated_le_64KiB_prefix", deflated, DEFLATED_LE),
    ] {
        check(&extract(bytes, ts, false).unwrap());
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| extract(black_box(bytes), ts, false).unwrap())
        });
    }
    // The whole explicit dataset as a complete object (stops at group 0028 all the same).
    check(&extract(&explicit, EXPLICIT_LE, true).unwrap());
    g.throughput(Throughput::Bytes(explicit.len() as u64));
    g.bench_function("explicit_le_complete_512KiB", |b| {
        b.iter(|| extract(black_box(&explicit), EXPLICIT_LE, true).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_extract);
criterion_main!(benches);
