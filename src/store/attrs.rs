//! Index-attribute extraction: the patient/study/series/instance attributes Query/Retrieve and
//! routing need, read with dicom-parser from the leading bytes of a received dataset.
//!
//! The indexed attributes are top-level elements of groups 0008, 0010 and 0020 (and the
//! routing keys asked for). The caller passes a prefix of the dataset: [`extract`] answers
//! [`ExtractError::NeedMore`] when the prefix ended before those groups did, and the caller
//! retries with more bytes (it has the whole dataset on disk). It is a pure function over
//! bytes, fuzzed and benchmarked.
//!
//! For Query/Retrieve the parse then goes on, within the same prefix, up to Pixel Data and
//! keeps every small top-level standard attribute in [`IndexAttrs::attributes`] (see
//! [`MAX_ATTRIBUTE_LEN`]), so C-FIND return keys never need the object file. What lies past
//! the prefix is not waited for: the index keys are complete, the attribute list may be cut.
//!
//! Little-endian datasets with text in the default repertoire, ISO 8859-1 or UTF-8 (nearly
//! all of them) are read by the `walk` module straight from the bytes, about twice as fast;
//! it leaves anything else to the parser, whose answers it is tested and fuzzed against.
//!
//! Text is decoded under the object's Specific Character Set, ISO 2022 code extensions
//! included (`dicom::charset`): a Japanese name is indexed as `山田^太郎`, not with its escape
//! sequences, so the admin API's search and C-FIND match it.

use std::borrow::Cow;
use std::io::Read;

use dicom_core::Tag;
use dicom_encoding::transfer_syntax::{Codec, Endianness, TransferSyntaxIndex};
use dicom_parser::dataset::read::DataSetReader;
use dicom_parser::dataset::DataToken;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde::{Deserialize, Serialize};

use crate::dicom::charset;
use crate::dicom::dataset::{trim_padding, Dataset, Value};

mod walk;

/// The longest value kept in [`IndexAttrs::attributes`]: names, dates, codes, descriptions
/// and UID lists fit; anything longer is bulk for a query's purposes.
pub const MAX_ATTRIBUTE_LEN: u32 = 1024;

/// The index attributes of one instance. Text values are trimmed of DICOM padding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexAttrs {
    /// (0008,0005) Specific Character Set, kept to interpret the names later.
    pub specific_character_set: String,
    /// (0008,0016) SOP Class UID.
    pub sop_class_uid: String,
    /// (0008,0018) SOP Instance UID.
    pub sop_instance_uid: String,
    /// (0008,0020) Study Date.
    pub study_date: String,
    /// (0008,0030) Study Time.
    pub study_time: String,
    /// (0008,0050) Accession Number.
    pub accession_number: String,
    /// (0008,0060) Modality.
    pub modality: String,
    /// (0008,0090) Referring Physician's Name.
    pub referring_physician_name: String,
    /// (0008,1030) Study Description.
    pub study_description: String,
    /// (0008,103E) Series Description.
    pub series_description: String,
    /// (0010,0010) Patient's Name.
    pub patient_name: String,
    /// (0010,0020) Patient ID.
    pub patient_id: String,
    /// (0010,0030) Patient's Birth Date.
    pub patient_birth_date: String,
    /// (0010,0040) Patient's Sex.
    pub patient_sex: String,
    /// (0020,000D) Study Instance UID.
    pub study_instance_uid: String,
    /// (0020,000E) Series Instance UID.
    pub series_instance_uid: String,
    /// (0020,0010) Study ID.
    pub study_id: String,
    /// (0020,0011) Series Number.
    pub series_number: String,
    /// (0020,0013) Instance Number.
    pub instance_number: String,
    /// Every top-level standard attribute before Pixel Data whose value is at most
    /// [`MAX_ATTRIBUTE_LEN`] bytes (no sequences, no OB/OW/UN bulk, no private or group-length
    /// elements), text decoded to Unicode: a postcard-encoded `dicom::dataset::Dataset`, read
    /// with [`IndexAttrs::attributes`]. Kept for C-FIND return keys and matching
    /// (`store::query`). Bytes rather than the dataset so the record stays `Eq`.
    #[serde(default)]
    pub attributes: Vec<u8>,
    /// The UIDs the scan completed [`IndexAttrs::attributes`] with ([`complete_row`]): while the object is indexed under
    /// exactly these, the list is its Query/Retrieve object row and the checkpoint stores it
    /// as it is instead of decoding and encoding it again. The UIDs themselves, not a flag:
    /// quarantine substitutes the UID fields above after the scan, and the row must then be
    /// built again. Not stored: a record read back from the journal takes the long way.
    #[serde(skip)]
    pub row_uids: Option<Box<RowUids>>,
    /// Values of the extra top-level attributes asked for (routing keys), in tag order of
    /// appearance; not stored in the index.
    #[serde(skip)]
    pub extra: Vec<(Tag, String)>,
}

impl IndexAttrs {
    /// The value of an extra attribute that was asked for and present.
    pub fn extra_value(&self, tag: Tag) -> Option<&str> {
        self.extra
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.as_str())
    }

    /// The decoded [`IndexAttrs::attributes`] (empty if absent or undecodable).
    pub fn attributes(&self) -> Dataset {
        postcard::from_bytes(&self.attributes).unwrap_or_default()
    }
}

/// Why attributes could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// The prefix ended before group 0020 did; call again with more bytes.
    #[error("dataset prefix too short for the index attributes")]
    NeedMore,
    /// The transfer syntax is not one dicom-parser knows.
    #[error("unknown transfer syntax {0}")]
    UnknownTransferSyntax(String),
    /// The dataset does not parse.
    #[error("dataset does not parse: {0}")]
    Malformed(String),
    /// Deflated data that does not inflate.
    #[error("deflated dataset does not inflate: {0}")]
    Inflate(String),
}

/// Whether the transfer syntax deflates the whole dataset (PS3.5 §A.5), which is then
/// inflated before parsing.
pub fn is_deflated(ts_uid: &str) -> bool {
    TransferSyntaxRegistry
        .get(ts_uid)
        .is_some_and(|ts| matches!(ts.codec(), Codec::Dataset(_)))
}

/// Inflates as much of a raw-deflate stream as `data` holds (it may be a prefix).
/// Most inflated bytes examined: the header groups of any sane object fit many times over,
/// and a deflate bomb cannot make us allocate more.
pub const MAX_INFLATED: u64 = 64 * 1024 * 1024;

/// Inflates as much of a raw-deflate stream as `data` holds (it may be a prefix), at most
/// [`MAX_INFLATED`] bytes. Returns the bytes and whether they are the whole dataset.
fn inflate_prefix(data: &[u8], complete: bool) -> Result<(Vec<u8>, bool), ExtractError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(1 << 20));
    let mut dec = flate2::read::DeflateDecoder::new(data).take(MAX_INFLATED);
    match dec.read_to_end(&mut out) {
        Ok(n) => Ok((out, complete && (n as u64) < MAX_INFLATED)),
        // A truncated stream ends with UnexpectedEof; what was inflated so far is usable.
        Err(_) if !complete => Ok((out, false)),
        Err(e) => Err(ExtractError::Inflate(e.to_string())),
    }
}

/// Extracts the index attributes from the first bytes of a dataset in transfer syntax
/// `ts_uid`. `complete` says whether `prefix` is the whole dataset.
pub fn extract(prefix: &[u8], ts_uid: &str, complete: bool) -> Result<IndexAttrs, ExtractError> {
    extract_with(prefix, ts_uid, complete, &[])
}

/// Like [`extract`], also collecting the top-level attributes `wanted` (sorted; groups below
/// 7FE0) into [`IndexAttrs::extra`]: the parse then continues to the highest wanted group.
pub fn extract_with(
    prefix: &[u8],
    ts_uid: &str,
    complete: bool,
    wanted: &[Tag],
) -> Result<IndexAttrs, ExtractError> {
    scan(prefix, ts_uid, complete, wanted, true)
}

/// [`extract_with`] with dicom-parser alone, never the plain walk (module `walk`): what the
/// walk is checked against (tests and the `attrs` fuzz target).
#[doc(hidden)]
pub fn extract_with_parser(
    prefix: &[u8],
    ts_uid: &str,
    complete: bool,
    wanted: &[Tag],
) -> Result<IndexAttrs, ExtractError> {
    scan(prefix, ts_uid, complete, wanted, false)
}

fn scan(
    prefix: &[u8],
    ts_uid: &str,
    complete: bool,
    wanted: &[Tag],
    try_walk: bool,
) -> Result<IndexAttrs, ExtractError> {
    let last_group = wanted
        .iter()
        .map(|t| t.group())
        .filter(|g| *g < 0x7FE0)
        .fold(0x0020, u16::max);
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| ExtractError::UnknownTransferSyntax(ts_uid.to_owned()))?;
    let inflated;
    let (bytes, ts, complete) = if matches!(ts.codec(), Codec::Dataset(_)) {
        let whole;
        (inflated, whole) = inflate_prefix(prefix, complete)?;
        let explicit = TransferSyntaxRegistry
            .get(dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .expect("explicit VR little endian is always registered");
        (&inflated[..], explicit, whole)
    } else {
        (prefix, ts, complete)
    };
    // Text under ISO 2022 code extensions (or a set dicom-parser does not know): parse a copy
    // whose (0008,0005) reads as Latin-1, byte for byte, and decode each text value here.
    // (A deflated dataset was inflated above: Explicit VR Little Endian.)
    let enc = crate::dicom::Encoding::for_transfer_syntax(ts_uid).map(|(e, _)| e);
    let transparent = enc.and_then(|e| charset::latin1_transparent(bytes, e));
    let (bytes, terms) = match &transparent {
        Some((copy, terms)) => (&copy[..], Some(terms.as_slice())),
        None => (bytes, None),
    };
    // Implicit VR Little Endian is the one implicit syntax; the walk leaves big endian alone.
    let syntax = match ts.endianness() {
        _ if ts.uid() == dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN => {
            Some(walk::Syntax::Implicit)
        }
        Endianness::Little => Some(walk::Syntax::Explicit),
        Endianness::Big => None,
    };
    if let Some(syntax) = syntax.filter(|_| try_walk) {
        if let Some(attrs) = walk::extract(bytes, syntax, complete, wanted, last_group, terms) {
            return Ok(attrs);
        }
    }
    let reader = DataSetReader::new_with_ts(bytes, ts)
        .map_err(|e| ExtractError::Malformed(e.to_string()))?;
    let mut found = Collected::new(wanted, terms);
    let mut depth = 0usize;
    let mut pending: Option<(Tag, dicom_core::VR, u32)> = None;
    // Past the last indexed group at the top level: the index keys are complete, and the
    // rest of the parse only gathers `attributes`, so running out of bytes there ends it.
    let mut past = false;
    for token in reader {
        let token = match token {
            Ok(t) => t,
            Err(_) if past => return Ok(found.finish()),
            Err(_) if !complete => return Err(ExtractError::NeedMore),
            Err(e) => return Err(ExtractError::Malformed(e.to_string())),
        };
        // A value longer than all the bytes we hold cannot be complete: refuse it *before*
        // the parser allocates a buffer of the announced (peer-controlled, up to 4 GiB) size.
        if let DataToken::ElementHeader(h) = &token {
            let beyond_data = h.len.get().is_some_and(|n| n as usize > bytes.len());
            if beyond_data {
                if past || (depth == 0 && h.tag.group() > last_group) {
                    return Ok(found.finish());
                }
                return Err(if complete {
                    ExtractError::Malformed(format!("element {} is longer than the dataset", h.tag))
                } else {
                    ExtractError::NeedMore
                });
            }
        }
        match token {
            // Pixel Data ends the parse.
            DataToken::PixelSequenceStart if depth == 0 => return Ok(found.finish()),
            DataToken::SequenceStart { tag, .. } => {
                if depth == 0 {
                    pending = None;
                    if tag.group() > last_group {
                        past = true;
                    }
                }
                depth += 1;
            }
            DataToken::PixelSequenceStart => depth += 1,
            DataToken::SequenceEnd => depth = depth.saturating_sub(1),
            DataToken::ElementHeader(h) if depth == 0 => {
                if h.tag.group() >= 0x7FE0 {
                    return Ok(found.finish());
                }
                if h.tag.group() > last_group {
                    past = true;
                }
                pending = Some((h.tag, h.vr, h.len.get().unwrap_or(u32::MAX)));
            }
            DataToken::PrimitiveValue(v) if depth == 0 => {
                if let Some((tag, vr, len)) = pending.take() {
                    found.take(tag, vr, len, &v, past);
                }
            }
            _ => {}
        }
    }
    // The token stream ended: the whole dataset was read, or the prefix ended exactly on an
    // element boundary.
    if complete || past {
        Ok(found.finish())
    } else {
        Err(ExtractError::NeedMore)
    }
}

/// The UIDs an object is indexed under (a quarantined object's are substitutes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowUids {
    /// SOP Class UID.
    pub sop_class: String,
    /// SOP Instance UID.
    pub sop_instance: String,
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID.
    pub series: String,
}

/// Makes an attribute list the Query/Retrieve object row: the indexed fields filled in where
/// the list lacks them (records from before the list existed, values over
/// [`MAX_ATTRIBUTE_LEN`]) and the UIDs the index files it under. Applying it twice with the
/// same UIDs changes nothing, which is what lets the scan apply it once for the checkpoint.
pub fn complete_row(ds: &mut Dataset, attrs: &IndexAttrs, uids: &RowUids) {
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    let fields = [
        (tags::STUDY_DATE, VR::DA, &attrs.study_date),
        (tags::STUDY_TIME, VR::TM, &attrs.study_time),
        (tags::ACCESSION_NUMBER, VR::SH, &attrs.accession_number),
        (tags::MODALITY, VR::CS, &attrs.modality),
        (
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            &attrs.referring_physician_name,
        ),
        (tags::STUDY_DESCRIPTION, VR::LO, &attrs.study_description),
        (tags::SERIES_DESCRIPTION, VR::LO, &attrs.series_description),
        (tags::PATIENT_NAME, VR::PN, &attrs.patient_name),
        (tags::PATIENT_ID, VR::LO, &attrs.patient_id),
        (tags::PATIENT_BIRTH_DATE, VR::DA, &attrs.patient_birth_date),
        (tags::PATIENT_SEX, VR::CS, &attrs.patient_sex),
        (tags::STUDY_ID, VR::SH, &attrs.study_id),
        (tags::SERIES_NUMBER, VR::IS, &attrs.series_number),
        (tags::INSTANCE_NUMBER, VR::IS, &attrs.instance_number),
    ];
    for (tag, vr, v) in fields {
        if !v.is_empty() && ds.get(tag).is_none() {
            ds.put_str(tag, vr, v.as_str());
        }
    }
    for (tag, uid) in [
        (tags::SOP_CLASS_UID, &uids.sop_class),
        (tags::SOP_INSTANCE_UID, &uids.sop_instance),
        (tags::STUDY_INSTANCE_UID, &uids.study),
        (tags::SERIES_INSTANCE_UID, &uids.series),
    ] {
        let same = ds.get(tag).is_some_and(|e| {
            e.vr == VR::UI && matches!(&e.value, Value::Strs(v) if v.len() == 1 && v[0] == *uid)
        });
        if !same {
            ds.put_str(tag, VR::UI, uid.as_str());
        }
    }
}

/// What a scan collects from the top-level elements (both scans use it): the index fields,
/// the routing values `wanted` and the attribute list. `terms`: see
/// `charset::latin1_transparent`.
struct Collected<'a> {
    attrs: IndexAttrs,
    kept: Dataset,
    wanted: &'a [Tag],
    terms: Option<&'a [String]>,
}

impl<'a> Collected<'a> {
    fn new(wanted: &'a [Tag], terms: Option<&'a [String]>) -> Self {
        Self {
            attrs: IndexAttrs::default(),
            kept: Dataset::new(),
            wanted,
            terms,
        }
    }

    /// Takes one element's value: its index field and routing value while the scan is not
    /// `past` the indexed groups, and its entry in [`IndexAttrs::attributes`].
    fn take(
        &mut self,
        tag: Tag,
        vr: dicom_core::VR,
        len: u32,
        v: &dicom_core::value::PrimitiveValue,
        past: bool,
    ) {
        let terms = self.terms;
        let redecode = |s: &str| match terms {
            Some(t) if charset::is_charset_vr(vr) => charset::redecode_latin1(s, t),
            _ => s.to_owned(),
        };
        if !past {
            if self.wanted.binary_search(&tag).is_ok() {
                let text = text_of(v);
                let t = text.trim_end_matches(['\0', ' ']).trim_start();
                self.attrs.extra.push((tag, redecode(t)));
            }
            if let Some(slot) = slot(&mut self.attrs, tag) {
                let text = redecode(&text_of(v));
                *slot = text.trim_end_matches(['\0', ' ']).trim_start().to_owned();
            }
        }
        if keep(tag, vr, len) {
            if let Some(value) = value_of(v, vr, &redecode) {
                self.kept.put(tag, vr, value);
            }
        }
    }

    /// The scan's result once the elements are read: the attribute list is encoded once, as
    /// the Query/Retrieve object row it becomes unless the object is indexed under other
    /// UIDs.
    fn finish(self) -> IndexAttrs {
        let Self {
            mut attrs,
            mut kept,
            ..
        } = self;
        let uids = RowUids {
            sop_class: attrs.sop_class_uid.clone(),
            sop_instance: attrs.sop_instance_uid.clone(),
            study: attrs.study_instance_uid.clone(),
            series: attrs.series_instance_uid.clone(),
        };
        complete_row(&mut kept, &attrs, &uids);
        attrs.attributes = postcard::to_allocvec(&kept).unwrap_or_default();
        attrs.row_uids = Some(Box::new(uids));
        attrs
    }
}

/// Whether an element goes into [`IndexAttrs::attributes`].
fn keep(tag: Tag, vr: dicom_core::VR, len: u32) -> bool {
    use dicom_core::VR;
    tag.group() >= 0x0008
        && tag.group().is_multiple_of(2)
        && tag.element() != 0
        && len <= MAX_ATTRIBUTE_LEN
        && !matches!(
            vr,
            VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN | VR::SQ
        )
}

/// A parsed value in the dataset model; text trimmed and decoded.
fn value_of(
    v: &dicom_core::value::PrimitiveValue,
    vr: dicom_core::VR,
    redecode: &dyn Fn(&str) -> String,
) -> Option<Value> {
    use dicom_core::value::PrimitiveValue as P;
    use dicom_core::VR;
    if matches!(v, P::Empty) {
        return Some(Value::empty_for(vr));
    }
    Some(match vr {
        VR::SS | VR::US | VR::SL | VR::UL | VR::SV => Value::Ints(v.to_multi_int::<i64>().ok()?),
        VR::UV => Value::Ints(
            v.to_multi_int::<u64>()
                .ok()?
                .into_iter()
                .map(|x| i64::try_from(x).unwrap_or(i64::MAX))
                .collect(),
        ),
        VR::FL | VR::FD => Value::Floats(v.to_multi_float64().ok()?),
        VR::AT => match v {
            P::Tags(t) => Value::Tags(
                t.iter()
                    .map(|t| (u32::from(t.0) << 16) | u32::from(t.1))
                    .collect(),
            ),
            _ => return None,
        },
        VR::LT | VR::ST | VR::UT => Value::Strs(vec![redecode(trim_padding(&v.to_str(), vr))]),
        // The parser already split multi-valued text at the backslashes (`Strs`): take each
        // part as it is, without the copies `to_multi_str` would make.
        _ => match v {
            P::Strs(parts) if parts.iter().all(|s| !s.contains('\\')) => Value::Strs(
                parts
                    .iter()
                    .map(|s| redecode(trim_padding(s, vr)))
                    .collect(),
            ),
            _ => Value::Strs(
                v.to_multi_str()
                    .iter()
                    .flat_map(|s| s.split('\\'))
                    .map(|s| redecode(trim_padding(s, vr)))
                    .collect(),
            ),
        },
    })
}

/// A value as text. Every attribute kept here is text (UI, CS, DA, PN, ...), but a sender may
/// encode it with VR UN or OB (explicit VR with an unknown VR, or implicit VR data on an
/// explicit context): the parser then holds bytes, whose `to_str` prints them as decimal
/// numbers (`49\46\57...`). Such bytes are the text, so they are read as text.
fn text_of(v: &dicom_core::value::PrimitiveValue) -> Cow<'_, str> {
    match v {
        dicom_core::value::PrimitiveValue::U8(bytes) => String::from_utf8_lossy(bytes),
        other => other.to_str(),
    }
}

/// The [`IndexAttrs`] field a top-level element fills, if any (most elements fill none, so
/// their text is never built).
fn slot(attrs: &mut IndexAttrs, tag: Tag) -> Option<&mut String> {
    Some(match (tag.group(), tag.element()) {
        (0x0008, 0x0005) => &mut attrs.specific_character_set,
        (0x0008, 0x0016) => &mut attrs.sop_class_uid,
        (0x0008, 0x0018) => &mut attrs.sop_instance_uid,
        (0x0008, 0x0020) => &mut attrs.study_date,
        (0x0008, 0x0030) => &mut attrs.study_time,
        (0x0008, 0x0050) => &mut attrs.accession_number,
        (0x0008, 0x0060) => &mut attrs.modality,
        (0x0008, 0x0090) => &mut attrs.referring_physician_name,
        (0x0008, 0x1030) => &mut attrs.study_description,
        (0x0008, 0x103E) => &mut attrs.series_description,
        (0x0010, 0x0010) => &mut attrs.patient_name,
        (0x0010, 0x0020) => &mut attrs.patient_id,
        (0x0010, 0x0030) => &mut attrs.patient_birth_date,
        (0x0010, 0x0040) => &mut attrs.patient_sex,
        (0x0020, 0x000D) => &mut attrs.study_instance_uid,
        (0x0020, 0x000E) => &mut attrs.series_instance_uid,
        (0x0020, 0x0010) => &mut attrs.study_id,
        (0x0020, 0x0011) => &mut attrs.series_number,
        (0x0020, 0x0013) => &mut attrs.instance_number,
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes one Explicit VR Little Endian element with a short (2-byte) length.
    fn el(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = value.to_vec();
        if v.len() % 2 == 1 {
            v.push(if vr == b"UI" { 0 } else { b' ' });
        }
        let mut out = Vec::new();
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&elem.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(&v);
        out
    }

    fn sample() -> Vec<u8> {
        let mut ds = Vec::new();
        ds.extend(el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2"));
        ds.extend(el(0x0008, 0x0018, b"UI", b"1.2.3.4.5.6"));
        ds.extend(el(0x0008, 0x0020, b"DA", b"20260102"));
        ds.extend(el(0x0008, 0x0050, b"SH", b"ACC1"));
        ds.extend(el(0x0008, 0x0060, b"CS", b"CT"));
        ds.extend(el(0x0010, 0x0010, b"PN", b"Doe^Jane"));
        ds.extend(el(0x0010, 0x0020, b"LO", b"PID-7"));
        ds.extend(el(0x0020, 0x000D, b"UI", b"1.2.3.4"));
        ds.extend(el(0x0020, 0x000E, b"UI", b"1.2.3.4.5"));
        ds.extend(el(0x0020, 0x0013, b"IS", b"3"));
        ds.extend(el(0x0028, 0x0010, b"US", &[4, 0]));
        // Pixel Data OW with a 4-byte length header (explicit VR long form).
        ds.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 8, 0, 0, 0]);
        ds.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        ds
    }

    /// (0008,0018) SOP Instance UID with VR UN (explicit VR, 4-byte length form).
    fn sop_instance_uid_as_un(uid: &[u8]) -> Vec<u8> {
        let mut out = vec![0x08, 0x00, 0x18, 0x00, b'U', b'N', 0, 0];
        out.extend_from_slice(&(uid.len() as u32).to_le_bytes());
        out.extend_from_slice(uid);
        out
    }

    /// A dataset whose attribute list lacks indexed values: its SOP Instance UID encoded as
    /// UN (bytes are not kept) and a Study Description over [`MAX_ATTRIBUTE_LEN`].
    pub(crate) fn values_the_list_lacks() -> Vec<u8> {
        let mut ds = Vec::new();
        ds.extend(el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2"));
        ds.extend(sop_instance_uid_as_un(b"1.9.999.1\0"));
        ds.extend(el(0x0008, 0x1030, b"LO", &[b'd'; 1200]));
        ds.extend(el(0x0020, 0x000D, b"UI", b"1.2.3.4"));
        ds.extend(el(0x0020, 0x000E, b"UI", b"1.2.3.4.5"));
        ds
    }

    /// A UID encoded as UN (or OB) is still its text: indexed as such, and a mismatch comment
    /// prints it as text, never as decimal bytes (interoperability review, D8).
    #[test]
    fn uids_encoded_as_bytes_are_read_as_text() {
        let mut ds = Vec::new();
        ds.extend(el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2"));
        ds.extend(sop_instance_uid_as_un(b"1.9.999.1\0"));
        ds.extend(el(0x0020, 0x000D, b"UI", b"1.2.3.4"));
        let a = extract(
            &ds,
            dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN,
            true,
        )
        .unwrap();
        assert_eq!(a.sop_instance_uid, "1.9.999.1");
        assert_eq!(a.study_instance_uid, "1.2.3.4");
    }

    #[test]
    fn extracts_top_level_attributes() {
        let a = extract(
            &sample(),
            dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN,
            true,
        )
        .unwrap();
        assert_eq!(a.sop_instance_uid, "1.2.3.4.5.6");
        assert_eq!(a.study_date, "20260102");
        assert_eq!(a.accession_number, "ACC1");
        assert_eq!(a.modality, "CT");
        assert_eq!(a.patient_name, "Doe^Jane");
        assert_eq!(a.patient_id, "PID-7");
        assert_eq!(a.study_instance_uid, "1.2.3.4");
        assert_eq!(a.series_instance_uid, "1.2.3.4.5");
        assert_eq!(a.instance_number, "3");
    }

    #[test]
    fn a_short_prefix_asks_for_more() {
        let ds = sample();
        let cut = ds.len() / 2;
        assert_eq!(
            extract(
                &ds[..cut],
                dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN,
                false
            ),
            Err(ExtractError::NeedMore)
        );
        // The same bytes presented as a whole dataset are malformed.
        assert!(matches!(
            extract(
                &ds[..cut],
                dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN,
                true
            ),
            Err(ExtractError::Malformed(_))
        ));
    }

    #[test]
    fn stops_before_pixel_data_even_if_truncated_there() {
        let ds = sample();
        let cut = ds.len() - 4; // inside the pixel data value
        let a = extract(
            &ds[..cut],
            dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN,
            false,
        )
        .unwrap();
        assert_eq!(a.series_instance_uid, "1.2.3.4.5");
    }

    #[test]
    fn inflates_deflated_datasets() {
        use std::io::Write;
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&sample()).unwrap();
        let deflated = enc.finish().unwrap();
        let uid = dicom_dictionary_std::uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
        assert!(is_deflated(uid));
        let a = extract(&deflated, uid, true).unwrap();
        assert_eq!(a.study_instance_uid, "1.2.3.4");
    }

    #[test]
    fn huge_announced_lengths_are_refused_before_allocating() {
        // Found by the `attrs` fuzz target: a private OB element announcing ~4 GiB.
        let explicit = [
            0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
        ];
        let ele = dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN;
        assert_eq!(extract(&explicit, ele, false), Err(ExtractError::NeedMore));
        assert!(matches!(
            extract(&explicit, ele, true),
            Err(ExtractError::Malformed(_))
        ));
        let implicit = [0x08, 0x00, 0x12, 0x00, 0xF0, 0xFF, 0xFF, 0xFF];
        let ile = dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN;
        assert_eq!(extract(&implicit, ile, false), Err(ExtractError::NeedMore));
    }

    #[test]
    fn encapsulated_pixel_data_ends_the_parse() {
        let mut ds = sample();
        let pixel_at = ds.len() - 20;
        ds.truncate(pixel_at);
        // Pixel Data OB, undefined length, then an item that the prefix cuts short.
        ds.extend_from_slice(&[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0x00, 0x00, 0x10, 0x00, 1, 2]);
        let a = extract(&ds, dicom_dictionary_std::uids::JPEG_BASELINE8_BIT, false).unwrap();
        assert_eq!(a.series_instance_uid, "1.2.3.4.5");
    }

    #[test]
    fn extra_attributes_for_routing() {
        let mut ds = sample();
        // Body Part Examined (0018,0015) goes before Study Instance UID (0020,000D); Rows
        // (0028,0010) is beyond group 0020, so asking for it makes the parse go further.
        let study = ds
            .windows(4)
            .position(|w| w == [0x20, 0x00, 0x0D, 0x00])
            .unwrap();
        let mut tail = ds.split_off(study);
        ds.extend(el(0x0018, 0x0015, b"CS", b"CHEST"));
        ds.append(&mut tail);
        let ele = dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN;
        let wanted = [
            Tag(0x0008, 0x0060),
            Tag(0x0018, 0x0015),
            Tag(0x0028, 0x0010),
        ];
        let a = extract_with(&ds, ele, true, &wanted).unwrap();
        assert_eq!(a.extra_value(Tag(0x0008, 0x0060)), Some("CT"));
        assert_eq!(a.extra_value(Tag(0x0018, 0x0015)), Some("CHEST"));
        assert_eq!(a.extra_value(Tag(0x0028, 0x0010)), Some("4"));
        assert_eq!(a.extra_value(Tag(0x0010, 0x0010)), None, "not asked for");
        // Without the group-0028 key the parse ends at group 0020 as before.
        let b = extract_with(&ds, ele, true, &wanted[..2]).unwrap();
        assert_eq!(b.extra_value(Tag(0x0028, 0x0010)), None);
        assert_eq!(b.series_instance_uid, "1.2.3.4.5");
    }

    /// ISO 2022 names are indexed decoded (PS3.5 H.3.1), and the attribute list keeps small
    /// attributes past group 0020 but neither bulk nor sequences.
    #[test]
    fn iso_2022_names_are_decoded_and_small_attributes_kept() {
        let mut ds = Vec::new();
        ds.extend(el(0x0008, 0x0005, b"CS", b"\\ISO 2022 IR 87"));
        ds.extend(el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2"));
        ds.extend(el(0x0008, 0x0018, b"UI", b"1.2.3.4.5.6"));
        ds.extend(el(
            0x0010,
            0x0010,
            b"PN",
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
        ));
        ds.extend(el(0x0020, 0x000D, b"UI", b"1.2.3.4"));
        ds.extend(el(0x0028, 0x0010, b"US", &[4, 0]));
        ds.extend(el(0x0029, 0x0010, b"LO", b"PRIVATE"));
        ds.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 2, 0, 0, 0, 1, 2]);
        let a = extract(
            &ds,
            dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN,
            true,
        )
        .unwrap();
        assert_eq!(a.patient_name, "Yamada^Tarou=山田^太郎=やまだ^たろう");
        let kept = a.attributes();
        assert_eq!(
            kept.str(dicom_dictionary_std::tags::PATIENT_NAME),
            Some("Yamada^Tarou=山田^太郎=やまだ^たろう")
        );
        assert_eq!(
            kept.get(dicom_dictionary_std::tags::ROWS).map(|e| &e.value),
            Some(&Value::Ints(vec![4]))
        );
        assert!(kept.get(Tag(0x0029, 0x0010)).is_none(), "private");
        assert!(kept.get(dicom_dictionary_std::tags::PIXEL_DATA).is_none());
        // A prefix cut after group 0020 still answers: the list is cut, the keys are whole.
        let cut = ds.len() - 6;
        let b = extract(
            &ds[..cut],
            dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN,
            false,
        )
        .unwrap();
        assert_eq!(b.study_instance_uid, "1.2.3.4");
    }

    /// The sample files' datasets and transfer syntaxes (tests/data/samples, and the shared
    /// corpus when it is there).
    pub(crate) fn sample_datasets() -> Vec<(String, Vec<u8>, String)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut out = Vec::new();
        for dir in [
            root.join("tests/data/samples"),
            root.join("../shared/dicom-samples"),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                let Some(offset) = crate::store::meta::dataset_offset(&bytes) else {
                    continue;
                };
                let Ok(meta) = dicom_object::meta::FileMetaTable::from_reader(&bytes[128..]) else {
                    continue;
                };
                let ts = meta.transfer_syntax().trim_end_matches('\0').to_owned();
                let name = path.display().to_string();
                out.push((name, bytes[offset..].to_vec(), ts));
            }
        }
        out
    }

    /// The plain walk answers as the parser does: over every sample, whole and cut at many
    /// places, and with bytes of its header changed (a fixed pseudo-random sequence), with
    /// and without routing tags past the indexed groups. It must also answer most of the
    /// plain cases itself, or it would only be untested code.
    #[test]
    fn the_plain_walk_answers_as_the_parser_does() {
        let samples = sample_datasets();
        assert!(samples.len() >= 15, "the samples in tests/data/samples");
        let wanted_sets: [&[Tag]; 2] = [&[], &[Tag(0x0018, 0x0015), Tag(0x0028, 0x0010)]];
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Cases compared; plain cases the parser answers Ok; those the walk answered.
        let (mut compared, mut found, mut walked) = (0usize, 0usize, 0usize);
        for (name, ds, ts) in &samples {
            let syntax = match ts.as_str() {
                "1.2.840.10008.1.2" => Some(walk::Syntax::Implicit),
                "1.2.840.10008.1.2.2" | "1.2.840.10008.1.2.1.99" => None,
                _ => Some(walk::Syntax::Explicit),
            };
            let header = ds.len().min(2048);
            let mut cases: Vec<(Vec<u8>, bool)> = vec![(ds.clone(), true)];
            for cut in (0..header).step_by(3) {
                cases.push((ds[..cut].to_vec(), cut % 2 == 0));
            }
            for _ in 0..200 {
                let mut bad = ds[..header.max(1).min(ds.len())].to_vec();
                if bad.is_empty() {
                    break;
                }
                let at = (next() as usize) % bad.len();
                bad[at] = next() as u8;
                cases.push((bad, next() % 2 == 0));
            }
            for (bytes, complete) in &cases {
                for wanted in wanted_sets {
                    let last_group = wanted.iter().map(|t| t.group()).fold(0x0020, u16::max);
                    let parsed = extract_with_parser(bytes, ts, *complete, wanted);
                    assert_eq!(
                        extract_with(bytes, ts, *complete, wanted),
                        parsed,
                        "{name}: {} bytes, complete {complete}",
                        bytes.len()
                    );
                    compared += 1;
                    // Where the bytes go to the walk as they are (no ISO 2022 copy).
                    let plain = crate::dicom::Encoding::for_transfer_syntax(ts)
                        .and_then(|(e, _)| charset::latin1_transparent(bytes, e))
                        .is_none();
                    if let Some(syntax) = syntax.filter(|_| plain) {
                        found += usize::from(parsed.is_ok());
                        if let Some(w) =
                            walk::extract(bytes, syntax, *complete, wanted, last_group, None)
                        {
                            assert_eq!(Ok(w), parsed, "{name}: walk, {} bytes", bytes.len());
                            walked += 1;
                        }
                    }
                }
            }
        }
        assert!(
            walked * 10 >= found * 9,
            "the walk answered {walked} of the {found} plain cases the parser found attributes \
             in ({compared} compared)"
        );
    }

    /// Found by the `attrs` fuzz target: the parser reads an odd-sized binary value as the
    /// whole numbers it holds, so a value cut short by one byte still reads; the walk must
    /// leave such a value to the parser, not end the scan before it.
    #[test]
    fn an_odd_sized_binary_value_cut_short_is_the_parsers() {
        let mut ds = vec![0x00, 0x09, 0x00, 0x80, b'S', b'S', 101, 0];
        ds.extend_from_slice(&[0xB7; 100]);
        let ts = "1.2.840.10008.1.2.1";
        let parsed = extract_with_parser(&ds, ts, false, &[]).unwrap();
        assert!(parsed.attributes().get(Tag(0x0900, 0x8000)).is_some());
        assert_eq!(extract_with(&ds, ts, false, &[]), Ok(parsed));
    }

    #[test]
    fn unknown_transfer_syntax_is_an_error() {
        assert!(matches!(
            extract(&sample(), "1.2.3.999", true),
            Err(ExtractError::UnknownTransferSyntax(_))
        ));
    }
}
