//! Minimal DICOM dataset encoding (the three uncompressed transfer syntaxes) and Part-10 file
//! helpers: writing a file meta group, locating the dataset of an existing file, hashing it.
//!
//! Hand-written rather than built on dicom-object so that synthetic datasets can be laid out
//! with fixed-length, patchable values (see [`crate::synth`]) and so that files are read as
//! raw bytes: what is sent is exactly what is on disk.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Implicit VR Little Endian.
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Explicit VR Big Endian (retired, still widely accepted).
pub const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";

/// Implementation Class UID written into synthesized files' meta group: a UUID-derived UID
/// (PS3.5 §B.2) fixed for dicom-loadgen.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.281365916470553371931146497166412785977";
/// Implementation Version Name (≤ 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("LOADGEN_", env!("CARGO_PKG_VERSION"));

/// The uncompressed transfer syntaxes synthetic objects can be encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ts {
    /// Implicit VR Little Endian.
    ImplicitLe,
    /// Explicit VR Little Endian.
    ExplicitLe,
    /// Explicit VR Big Endian.
    ExplicitBe,
}

impl Ts {
    /// The transfer syntax UID.
    pub fn uid(self) -> &'static str {
        match self {
            Ts::ImplicitLe => IMPLICIT_LE,
            Ts::ExplicitLe => EXPLICIT_LE,
            Ts::ExplicitBe => EXPLICIT_BE,
        }
    }

    /// Parses `implicit`, `explicit`, `bigendian` (or a transfer syntax UID).
    pub fn parse(s: &str) -> Option<Ts> {
        match s {
            "implicit" | "ile" | IMPLICIT_LE => Some(Ts::ImplicitLe),
            "explicit" | "ele" | EXPLICIT_LE => Some(Ts::ExplicitLe),
            "bigendian" | "big" | "ebe" | EXPLICIT_BE => Some(Ts::ExplicitBe),
            _ => None,
        }
    }

    /// Maps a transfer syntax UID to one of the three, if it is one.
    pub fn from_uid(uid: &str) -> Option<Ts> {
        [Ts::ImplicitLe, Ts::ExplicitLe, Ts::ExplicitBe]
            .into_iter()
            .find(|t| t.uid() == uid)
    }
}

/// VRs whose explicit-VR header has 2 reserved bytes and a 32-bit length (PS3.5 §7.1.2).
pub fn is_long_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

/// VRs padded with a space (text); all others are padded with NUL.
fn is_text_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"ST"
            | b"TM"
            | b"UC"
            | b"UR"
            | b"UT"
    )
}

/// Length value meaning "undefined length" (sequences and items).
pub const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

/// Appends elements in one transfer syntax to a byte buffer. Callers add elements in
/// ascending tag order.
#[derive(Debug)]
pub struct Encoder {
    ts: Ts,
    /// The encoded bytes so far.
    pub buf: Vec<u8>,
}

impl Encoder {
    /// An empty dataset in `ts`.
    pub fn new(ts: Ts) -> Self {
        Self {
            ts,
            buf: Vec::with_capacity(1024),
        }
    }

    fn be(&self) -> bool {
        self.ts == Ts::ExplicitBe
    }

    /// Appends a 16-bit value in the dataset's byte order.
    pub fn put_u16(&mut self, v: u16) {
        let b = if self.be() {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.buf.extend_from_slice(&b);
    }

    /// Appends a 32-bit value in the dataset's byte order.
    pub fn put_u32(&mut self, v: u32) {
        let b = if self.be() {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.buf.extend_from_slice(&b);
    }

    /// Appends an element header; `len` may be [`UNDEFINED_LENGTH`] for SQ.
    pub fn header(&mut self, group: u16, elem: u16, vr: [u8; 2], len: u32) {
        self.put_u16(group);
        self.put_u16(elem);
        if self.ts == Ts::ImplicitLe {
            self.put_u32(len);
        } else if is_long_vr(vr) {
            self.buf.extend_from_slice(&vr);
            self.buf.extend_from_slice(&[0, 0]);
            self.put_u32(len);
        } else {
            debug_assert!(len <= 0xFFFF, "value too long for a short VR");
            self.buf.extend_from_slice(&vr);
            self.put_u16(len as u16);
        }
    }

    /// Appends an element whose value bytes are already in the dataset's byte order, padded
    /// to even length. Returns the offset of the value in [`Encoder::buf`].
    pub fn element(&mut self, group: u16, elem: u16, vr: [u8; 2], value: &[u8]) -> usize {
        let odd = value.len() % 2;
        self.header(group, elem, vr, (value.len() + odd) as u32);
        let at = self.buf.len();
        self.buf.extend_from_slice(value);
        if odd == 1 {
            self.buf.push(if is_text_vr(vr) { b' ' } else { 0 });
        }
        at
    }

    /// Appends a US element.
    pub fn us(&mut self, group: u16, elem: u16, v: u16) {
        self.header(group, elem, *b"US", 2);
        self.put_u16(v);
    }

    /// Appends the header of an undefined-length sequence.
    pub fn sequence_start(&mut self, group: u16, elem: u16) {
        self.header(group, elem, *b"SQ", UNDEFINED_LENGTH);
    }

    /// Appends an undefined-length item header (FFFE,E000).
    pub fn item_start(&mut self) {
        self.delimiter(0xE000, UNDEFINED_LENGTH);
    }

    /// Appends an item delimitation item (FFFE,E00D).
    pub fn item_end(&mut self) {
        self.delimiter(0xE00D, 0);
    }

    /// Appends a sequence delimitation item (FFFE,E0DD).
    pub fn sequence_end(&mut self) {
        self.delimiter(0xE0DD, 0);
    }

    fn delimiter(&mut self, elem: u16, len: u32) {
        // Item tags carry no VR in any transfer syntax (PS3.5 §7.5).
        self.put_u16(0xFFFE);
        self.put_u16(elem);
        self.put_u32(len);
    }
}

/// Encodes the 128-byte preamble, `DICM` and the file meta group (always Explicit VR LE).
pub fn encode_meta(sop_class: &str, sop_instance: &str, ts_uid: &str) -> Vec<u8> {
    let mut g = Encoder::new(Ts::ExplicitLe);
    g.element(0x0002, 0x0001, *b"OB", &[0x00, 0x01]);
    g.element(0x0002, 0x0002, *b"UI", sop_class.as_bytes());
    g.element(0x0002, 0x0003, *b"UI", sop_instance.as_bytes());
    g.element(0x0002, 0x0010, *b"UI", ts_uid.as_bytes());
    g.element(0x0002, 0x0012, *b"UI", IMPLEMENTATION_CLASS_UID.as_bytes());
    g.element(
        0x0002,
        0x0013,
        *b"SH",
        IMPLEMENTATION_VERSION_NAME.as_bytes(),
    );
    let mut out = Encoder::new(Ts::ExplicitLe);
    out.buf.resize(128, 0);
    out.buf.extend_from_slice(b"DICM");
    out.element(0x0002, 0x0000, *b"UL", &(g.buf.len() as u32).to_le_bytes());
    out.buf.extend_from_slice(&g.buf);
    out.buf
}

/// What the file meta group of a Part-10 file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// (0002,0002) Media Storage SOP Class UID.
    pub sop_class: String,
    /// (0002,0003) Media Storage SOP Instance UID.
    pub sop_instance: String,
    /// (0002,0010) Transfer Syntax UID.
    pub transfer_syntax: String,
    /// Offset of the first dataset byte.
    pub dataset_offset: u64,
}

/// Why a file is not a usable Part-10 file.
#[derive(Debug, thiserror::Error)]
pub enum Part10Error {
    /// Could not read the file.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a Part-10 file or a malformed meta group.
    #[error("not a DICOM Part-10 file: {0}")]
    Format(String),
}

fn trim_uid(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_matches(|c| c == '\0' || c == ' ')
        .to_owned()
}

/// Reads the preamble and the file meta group (Explicit VR LE, walked element by element so
/// a missing or wrong group length does not matter) and returns it with the dataset offset.
pub fn read_meta(r: &mut impl Read) -> Result<Meta, Part10Error> {
    let fmt = |m: &str| Part10Error::Format(m.to_owned());
    let mut pre = [0u8; 132];
    r.read_exact(&mut pre)
        .map_err(|_| fmt("shorter than preamble"))?;
    if &pre[128..] != b"DICM" {
        return Err(fmt("no DICM prefix at offset 128"));
    }
    let mut meta = Meta {
        dataset_offset: 132,
        ..Meta::default()
    };
    // Peek element by element; the first non-group-2 tag ends the meta group, and we must not
    // consume it: the caller seeks to dataset_offset.
    loop {
        let mut h = [0u8; 8];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            // A dataset-less file (meta only) is malformed for our purposes.
            Err(_) => return Err(fmt("file ends inside or right after the meta group")),
        }
        let group = u16::from_le_bytes([h[0], h[1]]);
        if group != 0x0002 {
            break;
        }
        let elem = u16::from_le_bytes([h[2], h[3]]);
        let vr = [h[4], h[5]];
        let (hdr, len) = if is_long_vr(vr) {
            let mut l = [0u8; 4];
            r.read_exact(&mut l)
                .map_err(|_| fmt("truncated meta element"))?;
            (12u64, u32::from_le_bytes(l) as u64)
        } else {
            (8u64, u16::from_le_bytes([h[6], h[7]]) as u64)
        };
        if len > 1 << 20 {
            return Err(fmt("meta element longer than 1 MiB"));
        }
        let mut v = vec![0u8; len as usize];
        r.read_exact(&mut v)
            .map_err(|_| fmt("truncated meta element value"))?;
        match elem {
            0x0002 => meta.sop_class = trim_uid(&v),
            0x0003 => meta.sop_instance = trim_uid(&v),
            0x0010 => meta.transfer_syntax = trim_uid(&v),
            _ => {}
        }
        meta.dataset_offset += hdr + len;
    }
    if meta.transfer_syntax.is_empty() {
        return Err(fmt("meta group has no Transfer Syntax UID (0002,0010)"));
    }
    Ok(meta)
}

/// Reads the meta group of the file at `path`.
pub fn read_file_meta(path: &Path) -> Result<Meta, Part10Error> {
    read_meta(&mut BufReader::new(File::open(path)?))
}

/// Reads a whole Part-10 file: its meta and its dataset bytes.
pub fn read_part10(path: &Path) -> Result<(Meta, Vec<u8>), Part10Error> {
    let mut f = File::open(path)?;
    let meta = read_meta(&mut BufReader::new(&mut f))?;
    f.seek(SeekFrom::Start(meta.dataset_offset))?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    Ok((meta, data))
}

/// Streams the dataset of a Part-10 file through blake3: (hash, dataset length).
pub fn dataset_hash(path: &Path) -> Result<([u8; 32], u64), Part10Error> {
    let mut f = File::open(path)?;
    let meta = read_meta(&mut BufReader::new(&mut f))?;
    f.seek(SeekFrom::Start(meta.dataset_offset))?;
    let mut h = blake3::Hasher::new();
    let n = io::copy(&mut f, &mut h)?;
    Ok((*h.finalize().as_bytes(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_and_implicit_headers() {
        let mut e = Encoder::new(Ts::ExplicitLe);
        e.element(0x0010, 0x0010, *b"PN", b"ABC");
        assert_eq!(e.buf, b"\x10\x00\x10\x00PN\x04\x00ABC ");
        let mut i = Encoder::new(Ts::ImplicitLe);
        i.element(0x0008, 0x0018, *b"UI", b"1.2.3");
        assert_eq!(i.buf, b"\x08\x00\x18\x00\x06\x00\x00\x001.2.3\0");
        let mut b = Encoder::new(Ts::ExplicitBe);
        b.header(0x7FE0, 0x0010, *b"OW", 4);
        assert_eq!(b.buf, b"\x7F\xE0\x00\x10OW\x00\x00\x00\x00\x00\x04");
    }

    #[test]
    fn meta_roundtrip() {
        let mut bytes = encode_meta("1.2.3", "4.5.6.7", EXPLICIT_LE);
        let ds_at = bytes.len() as u64;
        bytes.extend_from_slice(b"\x08\x00\x18\x00UI\x02\x001\0");
        let m = read_meta(&mut &bytes[..]).unwrap();
        assert_eq!(m.sop_class, "1.2.3");
        assert_eq!(m.sop_instance, "4.5.6.7");
        assert_eq!(m.transfer_syntax, EXPLICIT_LE);
        assert_eq!(m.dataset_offset, ds_at);
        assert!(read_meta(&mut &b"short"[..]).is_err());
    }
}
