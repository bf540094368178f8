//! Hand-written DICOM Part-10 encoding and decoding (no dicom crate), so the
//! tests check the daemon against an independent implementation.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Root under which every generated UID lives.
pub const UID_ROOT: &str = "1.2.826.0.1.3680043.10.999";
/// Implementation Class UID written into generated files' meta group.
pub const IMPL_CLASS_UID: &str = "1.2.826.0.1.3680043.10.999.1";
/// CT Image Storage, the default SOP class of generated objects.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Explicit VR Little Endian, the transfer syntax `gen_part10` writes.
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// Builds a DICOM tag number from group and element (`tag(0x0008, 0x0018)`).
pub const fn tag(group: u16, element: u16) -> u32 {
    ((group as u32) << 16) | element as u32
}

/// Process-wide run id (pid + start time): a UID component that differs
/// between test processes and never has a leading zero.
pub fn run_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // <= 8 digits of time, <= 7 digits of pid; +1 avoids a zero component.
        (secs % 100_000_000) * 10_000_000 + (std::process::id() as u64 % 10_000_000) + 1
    })
}

/// Makes a valid UID `UID_ROOT.<run-id>.<parts...>` (digits and dots, no
/// leading zeros, asserted to be <= 64 chars).
pub fn make_uid(parts: &[u64]) -> String {
    let mut s = format!("{UID_ROOT}.{}", run_id());
    for p in parts {
        s.push('.');
        s.push_str(&p.to_string());
    }
    assert!(s.len() <= 64, "generated UID too long ({}): {s}", s.len());
    s
}

/// An extra raw element to put into a generated dataset (value is padded to
/// even length with the VR's padding byte).
#[derive(Clone, Debug)]
pub struct RawElement {
    /// Tag number, see [`tag`].
    pub tag: u32,
    /// Two-letter VR, e.g. `*b"LO"`.
    pub vr: [u8; 2],
    /// Unpadded value bytes.
    pub value: Vec<u8>,
}

/// Description of a generated CT-like object. `ObjSpec::new(i)` gives
/// deterministic (per process) unique UIDs: same `i` => same UIDs, so two
/// specs built from the same index describe the same SOP instance.
#[derive(Clone, Debug)]
pub struct ObjSpec {
    /// (0008,0016) and (0002,0002).
    pub sop_class_uid: String,
    /// (0008,0018) and (0002,0003).
    pub sop_instance_uid: String,
    /// (0020,000D).
    pub study_instance_uid: String,
    /// (0020,000E).
    pub series_instance_uid: String,
    /// (0010,0010).
    pub patient_name: String,
    /// (0010,0020).
    pub patient_id: String,
    /// (0010,0030), YYYYMMDD.
    pub patient_birth_date: String,
    /// (0010,0040).
    pub patient_sex: String,
    /// (0008,0020), YYYYMMDD.
    pub study_date: String,
    /// (0008,0030), HHMMSS.
    pub study_time: String,
    /// (0008,0050).
    pub accession_number: String,
    /// (0008,0060).
    pub modality: String,
    /// (0008,1030).
    pub study_description: String,
    /// (0020,0010).
    pub study_id: String,
    /// (0020,0011).
    pub series_number: u32,
    /// (0020,0013).
    pub instance_number: u32,
    /// Requested Pixel Data size; actual is rows*cols*2 (see [`ObjSpec::dims`]).
    pub pixel_bytes: u64,
    /// Seed of the deterministic pseudo-random pixel content.
    pub seed: u64,
    /// Tags to leave out of the dataset (e.g. to provoke a failure status).
    pub omit: Vec<u32>,
    /// Extra elements merged into the dataset in tag order.
    pub extra: Vec<RawElement>,
}

impl ObjSpec {
    /// Object number `index`: its own study, series and instance, small image.
    pub fn new(index: u32) -> ObjSpec {
        let i = index as u64;
        ObjSpec {
            sop_class_uid: CT_IMAGE_STORAGE.to_string(),
            sop_instance_uid: make_uid(&[3, i + 1]),
            study_instance_uid: make_uid(&[1, i + 1]),
            series_instance_uid: make_uid(&[2, i + 1]),
            patient_name: format!("TEST^PATIENT{index}"),
            patient_id: format!("PID{index}"),
            patient_birth_date: "19700101".into(),
            patient_sex: "O".into(),
            study_date: "20240115".into(),
            study_time: "123456".into(),
            accession_number: format!("ACC{index}"),
            modality: "CT".into(),
            study_description: format!("Study {index}"),
            study_id: format!("S{index}"),
            series_number: 1,
            instance_number: index + 1,
            pixel_bytes: 64 * 64 * 2,
            seed: i + 1,
            omit: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Sets the requested pixel data size in bytes (0 gives a 1x1 image).
    pub fn pixel_bytes(mut self, n: u64) -> Self {
        self.pixel_bytes = n;
        self
    }

    /// Sets patient name and id.
    pub fn patient(mut self, name: &str, id: &str) -> Self {
        self.patient_name = name.into();
        self.patient_id = id.into();
        self
    }

    /// Sets the modality (CS, e.g. "MR").
    pub fn modality(mut self, m: &str) -> Self {
        self.modality = m.into();
        self
    }

    /// Sets the study instance UID.
    pub fn study(mut self, uid: &str) -> Self {
        self.study_instance_uid = uid.into();
        self
    }

    /// Sets the series instance UID.
    pub fn series(mut self, uid: &str) -> Self {
        self.series_instance_uid = uid.into();
        self
    }

    /// Puts this object into the same study, series and patient as `other`.
    pub fn same_series_as(mut self, other: &ObjSpec) -> Self {
        self.study_instance_uid = other.study_instance_uid.clone();
        self.series_instance_uid = other.series_instance_uid.clone();
        self.series_number = other.series_number;
        self.patient_name = other.patient_name.clone();
        self.patient_id = other.patient_id.clone();
        self.accession_number = other.accession_number.clone();
        self.study_id = other.study_id.clone();
        self
    }

    /// Puts this object into the same study and patient as `other` (own series).
    pub fn same_study_as(mut self, other: &ObjSpec) -> Self {
        self.study_instance_uid = other.study_instance_uid.clone();
        self.patient_name = other.patient_name.clone();
        self.patient_id = other.patient_id.clone();
        self.accession_number = other.accession_number.clone();
        self.study_id = other.study_id.clone();
        self
    }

    /// Sets the SOP class UID (dataset and meta).
    pub fn sop_class(mut self, uid: &str) -> Self {
        self.sop_class_uid = uid.into();
        self
    }

    /// Leaves `tag` out of the dataset.
    pub fn omit(mut self, t: u32) -> Self {
        self.omit.push(t);
        self
    }

    /// Adds an extra element (replaces a generated one with the same tag).
    pub fn extra(mut self, t: u32, vr: &str, value: &[u8]) -> Self {
        let vr: [u8; 2] = vr.as_bytes().try_into().expect("VR must be 2 letters");
        self.extra.push(RawElement {
            tag: t,
            vr,
            value: value.to_vec(),
        });
        self
    }

    /// (rows, columns) used for `pixel_bytes`: rows*cols*2 is the largest
    /// near-square size <= pixel_bytes (at least 1x1).
    pub fn dims(&self) -> (u16, u16) {
        let npix = (self.pixel_bytes / 2).max(1);
        let cols = ((npix as f64).sqrt().ceil() as u64).clamp(1, 65535);
        let rows = (npix / cols).clamp(1, 65535);
        (rows as u16, cols as u16)
    }

    /// Exact Pixel Data length in bytes (rows*cols*2).
    pub fn pixel_len(&self) -> u64 {
        let (r, c) = self.dims();
        r as u64 * c as u64 * 2
    }

    /// Where the daemon stores this object under `data_dir`, once it is there (waits up to
    /// 30 s for the ingest checkpoint: [`wait_complete`]).
    pub fn settled_path(&self, data_dir: &Path) -> PathBuf {
        let p = self.stored_path(data_dir);
        wait_complete(&p);
        p
    }

    /// Where the daemon stores this object (it may not be there yet: see
    /// [`ObjSpec::settled_path`]).
    pub fn stored_path(&self, data_dir: &Path) -> PathBuf {
        data_dir
            .join("objects")
            .join(&self.study_instance_uid)
            .join(&self.series_instance_uid)
            .join(format!("{}.dcm", self.sop_instance_uid))
    }
}

/// Waits (up to 30 s) until the daemon's file at `p` is there and complete. A C-STORE is
/// answered once the object is in the ingest journal; its file reaches objects/ at the next
/// checkpoint (a fraction of a second), which creates it at its final name and fills it with
/// one write (the index, which a test cannot read while the daemon holds it, names it only
/// after the sync). So a file seen at once may still be filling: it counts once its size held
/// for 50 ms.
pub fn wait_complete(p: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    let mut last = None;
    while std::time::Instant::now() < deadline {
        let now = len(p);
        if now.is_some_and(|n| n > 0) && now == last {
            return;
        }
        last = now;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// True for VRs with the 2 reserved bytes + 32-bit length in explicit VR.
fn long_vr(vr: [u8; 2]) -> bool {
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

/// Pads a value to even length (\0 for UI and binary VRs, space for text).
fn pad(vr: [u8; 2], mut v: Vec<u8>) -> Vec<u8> {
    if v.len() % 2 == 1 {
        let text = matches!(
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
        );
        v.push(if text { b' ' } else { 0 });
    }
    v
}

/// Appends the header of an Explicit VR Little Endian element.
fn put_header(out: &mut Vec<u8>, t: u32, vr: [u8; 2], len: u32) {
    out.extend_from_slice(&((t >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(t as u16).to_le_bytes());
    out.extend_from_slice(&vr);
    if long_vr(vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        assert!(len <= 0xFFFF, "value of {t:08X} too long for a short VR");
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
}

/// Appends a complete Explicit VR LE element (value padded to even length).
fn put_elem(out: &mut Vec<u8>, t: u32, vr: [u8; 2], value: &[u8]) {
    let v = pad(vr, value.to_vec());
    put_header(out, t, vr, v.len() as u32);
    out.extend_from_slice(&v);
}

/// Encodes the 128-byte preamble, "DICM" and the file meta group for the
/// given SOP class/instance and transfer syntax.
pub fn encode_meta(sop_class: &str, sop_instance: &str, ts: &str) -> Vec<u8> {
    let mut g = Vec::new();
    put_elem(&mut g, tag(0x0002, 0x0001), *b"OB", &[0x00, 0x01]);
    put_elem(&mut g, tag(0x0002, 0x0002), *b"UI", sop_class.as_bytes());
    put_elem(&mut g, tag(0x0002, 0x0003), *b"UI", sop_instance.as_bytes());
    put_elem(&mut g, tag(0x0002, 0x0010), *b"UI", ts.as_bytes());
    put_elem(
        &mut g,
        tag(0x0002, 0x0012),
        *b"UI",
        IMPL_CLASS_UID.as_bytes(),
    );
    put_elem(&mut g, tag(0x0002, 0x0013), *b"SH", b"GWTEST_1");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    put_elem(
        &mut out,
        tag(0x0002, 0x0000),
        *b"UL",
        &(g.len() as u32).to_le_bytes(),
    );
    out.extend_from_slice(&g);
    out
}

/// Encodes every dataset element of `spec` except Pixel Data, in tag order.
fn encode_dataset_head(spec: &ObjSpec) -> Vec<u8> {
    let (rows, cols) = spec.dims();
    let us = |v: u16| v.to_le_bytes().to_vec();
    let s = |v: &str| v.as_bytes().to_vec();
    let mut els: Vec<(u32, [u8; 2], Vec<u8>)> = vec![
        (tag(0x0008, 0x0016), *b"UI", s(&spec.sop_class_uid)),
        (tag(0x0008, 0x0018), *b"UI", s(&spec.sop_instance_uid)),
        (tag(0x0008, 0x0020), *b"DA", s(&spec.study_date)),
        (tag(0x0008, 0x0030), *b"TM", s(&spec.study_time)),
        (tag(0x0008, 0x0050), *b"SH", s(&spec.accession_number)),
        (tag(0x0008, 0x0060), *b"CS", s(&spec.modality)),
        (tag(0x0008, 0x1030), *b"LO", s(&spec.study_description)),
        (tag(0x0010, 0x0010), *b"PN", s(&spec.patient_name)),
        (tag(0x0010, 0x0020), *b"LO", s(&spec.patient_id)),
        (tag(0x0010, 0x0030), *b"DA", s(&spec.patient_birth_date)),
        (tag(0x0010, 0x0040), *b"CS", s(&spec.patient_sex)),
        (tag(0x0020, 0x000D), *b"UI", s(&spec.study_instance_uid)),
        (tag(0x0020, 0x000E), *b"UI", s(&spec.series_instance_uid)),
        (tag(0x0020, 0x0010), *b"SH", s(&spec.study_id)),
        (
            tag(0x0020, 0x0011),
            *b"IS",
            s(&spec.series_number.to_string()),
        ),
        (
            tag(0x0020, 0x0013),
            *b"IS",
            s(&spec.instance_number.to_string()),
        ),
        (tag(0x0028, 0x0002), *b"US", us(1)),
        (tag(0x0028, 0x0004), *b"CS", s("MONOCHROME2")),
        (tag(0x0028, 0x0010), *b"US", us(rows)),
        (tag(0x0028, 0x0011), *b"US", us(cols)),
        (tag(0x0028, 0x0100), *b"US", us(16)),
        (tag(0x0028, 0x0101), *b"US", us(16)),
        (tag(0x0028, 0x0102), *b"US", us(15)),
        (tag(0x0028, 0x0103), *b"US", us(0)),
    ];
    els.retain(|(t, _, _)| !spec.omit.contains(t) && !spec.extra.iter().any(|e| e.tag == *t));
    for e in &spec.extra {
        els.push((e.tag, e.vr, e.value.clone()));
    }
    els.sort_by_key(|(t, _, _)| *t);
    let mut out = Vec::new();
    for (t, vr, v) in &els {
        if *t >= tag(0x7FE0, 0x0010) {
            continue; // written after pixel data by gen_part10
        }
        put_elem(&mut out, *t, *vr, v);
    }
    out
}

/// Deterministic pseudo-random generator (splitmix64) for pixel content.
struct SplitMix(u64);

impl SplitMix {
    /// Next 64 pseudo-random bits.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Writes `spec` as a Part-10 file in Explicit VR Little Endian. Pixel Data
/// is streamed from a 1 MiB table, so multi-GiB files need no big buffers.
/// Returns the file size.
pub fn gen_part10(path: impl AsRef<Path>, spec: &ObjSpec) -> std::io::Result<u64> {
    let path = path.as_ref();
    let ctx = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("gen_part10({}): {e}", path.display()))
    };
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(ctx)?);
    let mut head = encode_meta(&spec.sop_class_uid, &spec.sop_instance_uid, EXPLICIT_LE);
    head.extend_from_slice(&encode_dataset_head(spec));
    let pix_tag = tag(0x7FE0, 0x0010);
    assert!(
        !spec.extra.iter().any(|e| e.tag == pix_tag),
        "ObjSpec.extra may not contain Pixel Data; use pixel_bytes/omit"
    );
    let mut total = head.len() as u64;
    if !spec.omit.contains(&pix_tag) {
        let len = spec.pixel_len();
        assert!(
            len < 0xFFFF_FFFF,
            "pixel data too large for a 32-bit length"
        );
        put_header(&mut head, pix_tag, *b"OW", len as u32);
        w.write_all(&head).map_err(ctx)?;
        // A 1 MiB pseudo-random table, written rotated by a pseudo-random
        // offset per chunk: incompressible within deflate's 32 KiB window,
        // chunk order detectable, and memcpy-fast even in debug builds.
        let mut rng = SplitMix(spec.seed);
        let table_len = len.min(1 << 20) as usize;
        let mut table = vec![0u8; table_len];
        for c in table.chunks_mut(8) {
            let r = rng.next().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
        let mut left = len;
        let mut off = 0usize;
        while left > 0 {
            let n = left.min(table_len as u64) as usize;
            let first = n.min(table_len - off);
            w.write_all(&table[off..off + first]).map_err(ctx)?;
            w.write_all(&table[..n - first]).map_err(ctx)?;
            left -= n as u64;
            off = (rng.next() % table_len as u64) as usize;
        }
        total += 12 + len;
    } else {
        w.write_all(&head).map_err(ctx)?;
    }
    // Extra elements after Pixel Data (e.g. trailing padding) go last.
    let mut tail = Vec::new();
    let mut extra: Vec<&RawElement> = spec.extra.iter().filter(|e| e.tag > pix_tag).collect();
    extra.sort_by_key(|e| e.tag);
    for e in extra {
        put_elem(&mut tail, e.tag, e.vr, &e.value);
    }
    w.write_all(&tail).map_err(ctx)?;
    total += tail.len() as u64;
    w.flush().map_err(ctx)?;
    Ok(total)
}

/// Parsed Part-10 header of a file.
#[derive(Clone, Debug)]
pub struct Part10Info {
    /// Meta elements in file order, starting with (0002,0000): (tag, raw value).
    pub meta: Vec<(u32, Vec<u8>)>,
    /// (0002,0000) value.
    pub group_length: u32,
    /// Transfer syntax UID from (0002,0010), \0 and spaces trimmed.
    pub ts: String,
    /// Byte offset where the dataset starts.
    pub dataset_offset: u64,
    /// Total file size.
    pub file_len: u64,
}

/// Reads preamble, "DICM" and the meta group (which must start with
/// (0002,0000) group length) of a Part-10 file; errors say what is wrong.
pub fn parse_part10(path: impl AsRef<Path>) -> Result<Part10Info, String> {
    let path = path.as_ref();
    let err = |m: String| format!("{}: {m}", path.display());
    let mut f = File::open(path).map_err(|e| err(format!("open: {e}")))?;
    let file_len = f.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut head = [0u8; 144];
    f.read_exact(&mut head)
        .map_err(|e| err(format!("too short for preamble+meta: {e}")))?;
    if &head[128..132] != b"DICM" {
        return Err(err("no DICM prefix at offset 128".into()));
    }
    let g = &head[132..144];
    if g[0..4] != [0x02, 0x00, 0x00, 0x00] || &g[4..6] != b"UL" || g[6..8] != [4, 0] {
        return Err(err(format!(
            "meta does not start with (0002,0000) UL 4: {g:02X?}"
        )));
    }
    let group_length = u32::from_le_bytes(g[8..12].try_into().unwrap());
    let mut meta_bytes = vec![0u8; group_length as usize];
    f.read_exact(&mut meta_bytes)
        .map_err(|e| err(format!("meta group length {group_length} beyond EOF: {e}")))?;
    let mut meta = vec![(tag(0x0002, 0x0000), g[8..12].to_vec())];
    let mut p = 0usize;
    while p < meta_bytes.len() {
        let b = &meta_bytes[p..];
        if b.len() < 8 {
            return Err(err(format!("truncated meta element at meta offset {p}")));
        }
        let t = tag(
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        );
        if t >> 16 != 0x0002 {
            return Err(err(format!(
                "non-group-2 tag {t:08X} inside meta group length"
            )));
        }
        let vr = [b[4], b[5]];
        let (hdr, len) = if long_vr(vr) {
            if b.len() < 12 {
                return Err(err(format!("truncated meta element {t:08X}")));
            }
            (
                12,
                u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize,
            )
        } else {
            (8, u16::from_le_bytes([b[6], b[7]]) as usize)
        };
        if hdr + len > b.len() {
            return Err(err(format!(
                "meta element {t:08X} length {len} overruns group"
            )));
        }
        meta.push((t, b[hdr..hdr + len].to_vec()));
        p += hdr + len;
    }
    let ts = meta
        .iter()
        .find(|(t, _)| *t == tag(0x0002, 0x0010))
        .map(|(_, v)| trim_value(v))
        .ok_or_else(|| err("no (0002,0010) transfer syntax in meta".into()))?;
    Ok(Part10Info {
        meta,
        group_length,
        ts,
        dataset_offset: 144 + group_length as u64,
        file_len,
    })
}

/// Value bytes as a string with trailing/leading \0 and spaces trimmed.
pub fn trim_value(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_matches(|c| c == '\0' || c == ' ')
        .to_string()
}

/// Panicking wrapper of [`parse_part10`].
fn info(path: &Path) -> Part10Info {
    parse_part10(path).unwrap_or_else(|e| panic!("not a valid Part-10 file: {e}"))
}

/// The dataset bytes (everything after the meta group). Panics if the file
/// is not Part-10. Loads the whole dataset: use [`dataset_hash`] for huge files.
pub fn dataset_bytes(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    let i = info(path);
    let mut f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.seek(SeekFrom::Start(i.dataset_offset)).unwrap();
    let mut v = Vec::with_capacity((i.file_len - i.dataset_offset) as usize);
    f.read_to_end(&mut v)
        .unwrap_or_else(|e| panic!("{}: read: {e}", path.display()));
    v
}

/// blake3 hex digest of the dataset bytes, streamed (fine for GiB files).
pub fn dataset_hash(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let i = info(path);
    let mut f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.seek(SeekFrom::Start(i.dataset_offset)).unwrap();
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut f, &mut h).unwrap_or_else(|e| panic!("{}: read: {e}", path.display()));
    h.finalize().to_hex().to_string()
}

/// Transfer syntax UID from the file's meta group. Panics if not Part-10.
pub fn meta_ts(path: impl AsRef<Path>) -> String {
    info(path.as_ref()).ts
}

/// Meta elements in file order, (0002,0000) first, as (tag, raw value).
/// Panics if not Part-10.
pub fn meta_elements(path: impl AsRef<Path>) -> Vec<(u32, Vec<u8>)> {
    info(path.as_ref()).meta
}

/// Trimmed string value of meta element `t`, if present.
pub fn meta_str(path: impl AsRef<Path>, t: u32) -> Option<String> {
    meta_elements(path)
        .into_iter()
        .find(|(x, _)| *x == t)
        .map(|(_, v)| trim_value(&v))
}

/// Recursively lists all regular files under `dir` (sorted); empty if absent.
pub fn list_files(dir: impl AsRef<Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.as_ref().to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The two-study corpus of the retrieve tests (API move, Orthanc): study A holds two CT
/// instances of DOE^JOHN in one series and an MR in a second series; study B one MR of
/// SMITH^JANE.
pub fn two_studies() -> Vec<ObjSpec> {
    let mut a0 = ObjSpec::new(0).patient("DOE^JOHN", "PID-A").modality("CT");
    a0.study_date = "20240115".into();
    a0.instance_number = 1;
    let mut a1 = ObjSpec::new(1).same_series_as(&a0).modality("CT");
    a1.study_date = a0.study_date.clone();
    a1.instance_number = 2;
    let mut a2 = ObjSpec::new(2).same_study_as(&a0).modality("MR");
    a2.study_date = a0.study_date.clone();
    a2.series_number = 2;
    let mut b = ObjSpec::new(3)
        .patient("SMITH^JANE", "PID-B")
        .modality("MR");
    b.study_date = "20230601".into();
    vec![a0, a1, a2, b]
}

/// Writes `objs` as Part-10 files `dir/in<i>.dcm`.
pub fn write_objects(dir: &Path, objs: &[ObjSpec]) -> Vec<PathBuf> {
    objs.iter()
        .enumerate()
        .map(|(i, s)| {
            let f = dir.join(format!("in{i}.dcm"));
            gen_part10(&f, s).unwrap();
            f
        })
        .collect()
}
