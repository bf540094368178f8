//! Synthetic objects: one pre-encoded template per size, patched per object.
//!
//! Every per-object value (SOP/Study/Series Instance UIDs, Patient ID and Name, Accession
//! Number, Series and Instance Number) has a fixed length within a run, so making object `i`
//! out of a template is a handful of in-place digit writes into a few hundred header bytes;
//! the pixel data (the bulk of the bytes) is shared, never copied or touched.
//!
//! UIDs are `<root>.<kind>.<10 digits>` where the root is a fresh UUID-derived UID
//! (`2.25.<random UUID>`, PS3.5 §B.2) per run, so runs never collide, and the 10 digits are
//! `1000000000 + n` (fixed width, no leading zero). Object `i` belongs to series
//! `i / series_size`, which belongs to study `series / series_per_study`; one patient per
//! study.

use std::io::Read;
use std::ops::Range;
use std::sync::Arc;

use crate::dataset::{Encoder, Ts};

/// CT Image Storage, the default SOP class.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

const SEQ_BASE: u64 = 1_000_000_000;
const SEQ_DIGITS: usize = 10;
/// Largest object/series/study number a fixed-width UID component can hold.
pub const MAX_SEQ: u64 = 9_999_999_999 - SEQ_BASE;
/// Longest UID root: `<root>.<kind>.<10 digits>` must fit in 64 characters.
pub const MAX_ROOT_LEN: usize = 64 - 3 - SEQ_DIGITS;

/// The per-run UID root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidRoot(String);

impl UidRoot {
    /// `2.25.<random version-4 UUID as an integer>`, from /dev/urandom (falls back to time and
    /// pid if that is unavailable).
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        let ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_ok();
        if !ok {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            b = (t ^ ((std::process::id() as u128) << 64)).to_be_bytes();
        }
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        UidRoot(format!("2.25.{}", u128::from_be_bytes(b)))
    }

    /// A user-given root: digits and dots, no empty or leading-zero component, at most
    /// [`MAX_ROOT_LEN`] characters.
    pub fn new(root: &str) -> Result<Self, String> {
        let ok_component = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        };
        if root.len() > MAX_ROOT_LEN {
            return Err(format!(
                "UID root {root:?} is longer than {MAX_ROOT_LEN} characters"
            ));
        }
        if !root.split('.').all(ok_component) {
            return Err(format!("UID root {root:?} is not a valid UID"));
        }
        Ok(UidRoot(root.to_owned()))
    }

    /// The root as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<root>.<kind>.<1000000000 + n>`.
    pub fn uid(&self, kind: u8, n: u64) -> String {
        format!("{}.{kind}.{}", self.0, SEQ_BASE + n)
    }
}

/// Dataset sizes to synthesize, with weights: object `i` uses entry `table[i % len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeMix {
    /// (target dataset size in bytes, weight).
    pub entries: Vec<(u64, u32)>,
}

impl SizeMix {
    /// Parses `16k`, `16k,512k`, `16k:9,512k:1` (suffixes k/m/g are powers of 1024; `KiB`,
    /// `MiB` also accepted; weights default to 1).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (size, weight) = match part.split_once(':') {
                Some((a, w)) => (
                    a,
                    w.parse::<u32>()
                        .ok()
                        .filter(|w| (1..=1000).contains(w))
                        .ok_or_else(|| format!("bad weight in {part:?} (1..=1000)"))?,
                ),
                None => (part, 1),
            };
            entries.push((parse_size(size)?, weight));
        }
        if entries.is_empty() {
            return Err("empty size list".into());
        }
        Ok(SizeMix { entries })
    }

    /// Index of the template object `i` uses.
    pub fn table(&self) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .flat_map(|(k, (_, w))| std::iter::repeat_n(k, *w as usize))
            .collect()
    }
}

/// Parses a byte size: `512`, `16k`, `16KiB`, `2m`, `1g`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let l = s.trim().to_ascii_lowercase();
    let l = l
        .strip_suffix("ib")
        .unwrap_or(l.strip_suffix('b').unwrap_or(&l));
    let (num, mul) = match l.chars().last() {
        Some('k') => (&l[..l.len() - 1], 1u64 << 10),
        Some('m') => (&l[..l.len() - 1], 1 << 20),
        Some('g') => (&l[..l.len() - 1], 1 << 30),
        _ => (l, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad size {s:?} (e.g. 512, 16k, 2m)"))?;
    let v = n
        .checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} too large"))?;
    if v > 3 << 30 {
        return Err(format!("size {s:?} above the 3 GiB limit"));
    }
    Ok(v)
}

/// How synthetic objects are made.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// UID root of this run.
    pub root: UidRoot,
    /// Transfer syntax of the datasets.
    pub ts: Ts,
    /// SOP Class UID.
    pub sop_class: String,
    /// Modality (0008,0060).
    pub modality: String,
    /// Dataset sizes.
    pub sizes: SizeMix,
    /// Instances per series (≥ 1).
    pub series_size: u64,
    /// Series per study (≥ 1).
    pub series_per_study: u64,
}

/// Where object `i` sits in the patient/study/series structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Object number (SOP Instance UID component).
    pub index: u64,
    /// Global series number (Series Instance UID component).
    pub series: u64,
    /// Global study number (Study Instance UID, Patient ID, Accession Number).
    pub study: u64,
    /// 1-based Series Number within its study.
    pub series_number: u64,
    /// 1-based Instance Number within its series.
    pub instance_number: u64,
}

impl SynthSpec {
    /// The position of object `i`.
    pub fn position(&self, i: u64) -> Position {
        let series = i / self.series_size;
        Position {
            index: i,
            series,
            study: series / self.series_per_study,
            series_number: series % self.series_per_study + 1,
            instance_number: i % self.series_size + 1,
        }
    }

    /// Builds one template per size of the mix.
    pub fn templates(&self) -> Vec<Template> {
        self.sizes
            .entries
            .iter()
            .enumerate()
            .map(|(k, (size, _))| Template::build(self, *size, k as u64 + 1))
            .collect()
    }
}

/// Byte ranges of the patchable values inside a template's head.
#[derive(Debug, Clone, Default)]
struct Slots {
    sop: Range<usize>,
    study: Range<usize>,
    series: Range<usize>,
    patient_id: Range<usize>,
    patient_name: Range<usize>,
    accession: Range<usize>,
    series_number: Range<usize>,
    instance_number: Range<usize>,
}

/// A pre-encoded dataset: `head` (every element before Pixel Data, and its header) with
/// patchable slots, and the shared Pixel Data value `tail`.
#[derive(Debug, Clone)]
pub struct Template {
    /// Dataset bytes up to and including the Pixel Data element header.
    pub head: Vec<u8>,
    /// The Pixel Data value.
    pub tail: Arc<[u8]>,
    /// Transfer syntax UID.
    pub ts: &'static str,
    /// SOP Class UID.
    pub sop_class: String,
    /// Ranges of the full UID values (sans padding) of SOP, Study, Series.
    uid_values: [Range<usize>; 3],
    slots: Slots,
}

/// Writes `v` right-aligned into `dst`, filling the left with `fill`. Panics if it does not
/// fit (the slot widths are chosen so it always does).
fn put_digits(dst: &mut [u8], mut v: u64, fill: u8) {
    let mut i = dst.len();
    loop {
        assert!(i > 0, "value does not fit its fixed-width slot");
        i -= 1;
        dst[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    dst[..i].fill(fill);
}

/// Today's date as YYYYMMDD (UTC).
fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    civil(days)
}

/// The date `days` after 1970-01-01 as YYYYMMDD.
pub fn civil(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// splitmix64, for incompressible pixel data.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Template {
    fn build(spec: &SynthSpec, target_size: u64, seed: u64) -> Template {
        let mut e = Encoder::new(spec.ts);
        let uid0 = |kind| spec.root.uid(kind, 0);
        let digits_of = |at: usize, value_len: usize| at + value_len - SEQ_DIGITS..at + value_len;
        let date = today();
        let mut s = Slots::default();
        let mut uid_values: [Range<usize>; 3] = Default::default();

        e.element(0x0008, 0x0008, *b"CS", b"ORIGINAL\\PRIMARY\\AXIAL");
        e.element(0x0008, 0x0016, *b"UI", spec.sop_class.as_bytes());
        let sop = uid0(3);
        let at = e.element(0x0008, 0x0018, *b"UI", sop.as_bytes());
        s.sop = digits_of(at, sop.len());
        uid_values[0] = at..at + sop.len();
        e.element(0x0008, 0x0020, *b"DA", date.as_bytes());
        e.element(0x0008, 0x0023, *b"DA", date.as_bytes());
        e.element(0x0008, 0x0030, *b"TM", b"120000");
        e.element(0x0008, 0x0033, *b"TM", b"120000");
        let at = e.element(0x0008, 0x0050, *b"SH", b"A000000000000000");
        s.accession = at + 1..at + 16;
        e.element(0x0008, 0x0060, *b"CS", spec.modality.as_bytes());
        e.element(0x0008, 0x0070, *b"LO", b"dicom-loadgen");
        e.element(0x0008, 0x1030, *b"LO", b"LOADGEN STUDY");
        e.element(0x0008, 0x103E, *b"LO", b"LOADGEN SERIES");
        let at = e.element(0x0010, 0x0010, *b"PN", b"LOADGEN^P0000000000");
        s.patient_name = at + 9..at + 19;
        let at = e.element(0x0010, 0x0020, *b"LO", b"LG00000000000000");
        s.patient_id = at + 2..at + 16;
        e.element(0x0010, 0x0030, *b"DA", b"19700101");
        e.element(0x0010, 0x0040, *b"CS", b"O");
        let study = uid0(1);
        let at = e.element(0x0020, 0x000D, *b"UI", study.as_bytes());
        s.study = digits_of(at, study.len());
        uid_values[1] = at..at + study.len();
        let series = uid0(2);
        let at = e.element(0x0020, 0x000E, *b"UI", series.as_bytes());
        s.series = digits_of(at, series.len());
        uid_values[2] = at..at + series.len();
        e.element(0x0020, 0x0010, *b"SH", b"1");
        let at = e.element(0x0020, 0x0011, *b"IS", b"     1");
        s.series_number = at..at + 6;
        let at = e.element(0x0020, 0x0013, *b"IS", b"         1");
        s.instance_number = at..at + 10;
        e.us(0x0028, 0x0002, 1);
        e.element(0x0028, 0x0004, *b"CS", b"MONOCHROME2");

        // Pixel Data sized so the whole dataset comes close to the target (below it by less
        // than one row): rows × cols × 2 bytes, near square.
        let rest = 6 * 10 + 12; // six US elements of 10 bytes, the Pixel Data header (≤ 12)
        let budget = target_size.saturating_sub((e.buf.len() + rest) as u64);
        let npix = (budget / 2).max(1);
        let cols = ((npix as f64).sqrt().ceil() as u64).clamp(1, 65_535);
        let rows = (npix / cols).clamp(1, 65_535);
        e.us(0x0028, 0x0010, rows as u16);
        e.us(0x0028, 0x0011, cols as u16);
        e.us(0x0028, 0x0100, 16);
        e.us(0x0028, 0x0101, 16);
        e.us(0x0028, 0x0102, 15);
        e.us(0x0028, 0x0103, 0);
        let len = rows * cols * 2;
        e.header(0x7FE0, 0x0010, *b"OW", len as u32);
        let mut st = seed;
        let mut tail = vec![0u8; len as usize];
        for c in tail.chunks_mut(8) {
            let r = splitmix(&mut st).to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
        Template {
            head: e.buf,
            tail: tail.into(),
            ts: spec.ts.uid(),
            sop_class: spec.sop_class.clone(),
            uid_values,
            slots: s,
        }
    }

    /// Total dataset length.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Whether the dataset is empty (never: a template always has its header elements).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rewrites the per-object values of `head` (a copy of this template's head) for `p`.
    pub fn patch(&self, head: &mut [u8], p: &Position) {
        let s = &self.slots;
        put_digits(&mut head[s.sop.clone()], SEQ_BASE + p.index, b'0');
        put_digits(&mut head[s.series.clone()], SEQ_BASE + p.series, b'0');
        put_digits(&mut head[s.study.clone()], SEQ_BASE + p.study, b'0');
        put_digits(&mut head[s.patient_id.clone()], p.study, b'0');
        put_digits(&mut head[s.patient_name.clone()], p.study, b'0');
        put_digits(&mut head[s.accession.clone()], p.study, b'0');
        put_digits(&mut head[s.series_number.clone()], p.series_number, b' ');
        put_digits(
            &mut head[s.instance_number.clone()],
            p.instance_number,
            b' ',
        );
    }

    /// SOP Instance, Study Instance and Series Instance UIDs in a patched `head`.
    pub fn uids<'a>(&self, head: &'a [u8]) -> [&'a str; 3] {
        self.uid_values.clone().map(|r| {
            // The slots only ever hold ASCII digits and dots.
            std::str::from_utf8(&head[r]).unwrap_or("")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ts: Ts, sizes: &str) -> SynthSpec {
        SynthSpec {
            root: UidRoot::new("1.2.3.4").unwrap(),
            ts,
            sop_class: CT_IMAGE_STORAGE.into(),
            modality: "CT".into(),
            sizes: SizeMix::parse(sizes).unwrap(),
            series_size: 10,
            series_per_study: 2,
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16k").unwrap(), 16384);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("x").is_err());
        let m = SizeMix::parse("16k:3,512k").unwrap();
        assert_eq!(m.entries, vec![(16384, 3), (524_288, 1)]);
        assert_eq!(m.table(), vec![0, 0, 0, 1]);
    }

    #[test]
    fn root_validation() {
        assert!(UidRoot::new("1.2.03").is_err());
        assert!(UidRoot::new("1..2").is_err());
        assert!(UidRoot::new(&"1.".repeat(30)).is_err());
        let r = UidRoot::random();
        assert!(r.as_str().starts_with("2.25.") && r.as_str().len() <= MAX_ROOT_LEN);
        assert!(UidRoot::new(r.as_str()).is_ok());
    }

    #[test]
    fn patching_keeps_lengths_and_sets_values() {
        for ts in [Ts::ImplicitLe, Ts::ExplicitLe, Ts::ExplicitBe] {
            let sp = spec(ts, "16k");
            let t = &sp.templates()[0];
            assert!(t.len() <= 16384 && t.len() > 16000, "{}", t.len());
            let mut head = t.head.clone();
            let p = sp.position(25);
            assert_eq!(
                (p.series, p.study, p.series_number, p.instance_number),
                (2, 1, 1, 6)
            );
            t.patch(&mut head, &p);
            assert_eq!(head.len(), t.head.len());
            let [sop, study, series] = t.uids(&head);
            assert_eq!(sop, "1.2.3.4.3.1000000025");
            assert_eq!(study, "1.2.3.4.1.1000000001");
            assert_eq!(series, "1.2.3.4.2.1000000002");
            let text = String::from_utf8_lossy(&head);
            assert!(text.contains("LOADGEN^P0000000001"));
            assert!(text.contains("LG00000000000001"));
            assert!(text.contains("         6"));
        }
    }

    #[test]
    fn digits() {
        let mut b = [0u8; 6];
        put_digits(&mut b, 42, b' ');
        assert_eq!(&b, b"    42");
        assert_eq!(today().len(), 8);
    }
}
