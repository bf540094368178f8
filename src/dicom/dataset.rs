//! A small owned dataset model for worklist items, C-FIND identifiers, MPPS instances and (next)
//! Query/Retrieve identifiers.
//! Why not keep `dicom_object::InMemDicomObject` everywhere: a C-FIND scans every stored item,
//! so the stored form must decode fast (postcard of this model: a sorted `Vec`, plain
//! `String`s) and the matching code must read values without conversions or error paths. The
//! network side still speaks `InMemDicomObject`: [`Dataset::from_dicom`] converts an identifier
//! or an N-CREATE/N-SET attribute list on the way in and [`Dataset::to_dicom`] builds a
//! response on the way out.
//!
//! Text values are kept as decoded Unicode strings without DICOM padding (trailing spaces and
//! NULs), one `String` per value (the backslash separator is gone). Person names keep the PS3.5
//! form `Alphabetic=Ideographic=Phonetic` with `^` between components.

use std::fmt;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value as DicomValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_object::InMemDicomObject;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The values of one element, grouped by how the worklist code reads them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Every text VR (AE, AS, CS, DA, DS, DT, IS, LO, LT, PN, SH, ST, TM, UC, UI, UR, UT): one
    /// string per value, padding removed. An empty `Vec` is a zero-length value.
    Strs(Vec<String>),
    /// Binary integers (SS, US, SL, UL, SV, UV), widened so one variant serves all of them.
    Ints(Vec<i64>),
    /// Binary floating point (FL, FD), kept because MPPS dose attributes use them.
    Floats(Vec<f64>),
    /// Attribute tags (AT), as `(group << 16) | element`.
    Tags(Vec<u32>),
    /// Opaque bytes (OB, UN), kept so an MPPS instance round-trips what the modality sent.
    Bytes(Vec<u8>),
    /// A sequence (SQ): one dataset per item.
    Items(Vec<Dataset>),
}

impl Value {
    /// Whether the value is zero-length (no values, or only empty strings); universal matching
    /// and the "required attribute has a value" checks both need this.
    pub fn is_empty(&self) -> bool {
        match self {
            Value::Strs(v) => v.iter().all(String::is_empty),
            Value::Ints(v) => v.is_empty(),
            Value::Floats(v) => v.is_empty(),
            Value::Tags(v) => v.is_empty(),
            Value::Bytes(v) => v.is_empty(),
            Value::Items(v) => v.is_empty(),
        }
    }

    /// The zero-length value of the right kind for `vr`, used when a requested return key is
    /// absent from an item.
    pub fn empty_for(vr: VR) -> Value {
        match vr {
            VR::SQ => Value::Items(Vec::new()),
            VR::SS | VR::US | VR::SL | VR::UL | VR::SV | VR::UV => Value::Ints(Vec::new()),
            VR::FL | VR::FD => Value::Floats(Vec::new()),
            VR::AT => Value::Tags(Vec::new()),
            VR::OB | VR::UN => Value::Bytes(Vec::new()),
            _ => Value::Strs(Vec::new()),
        }
    }
}

/// One data element: its VR (needed to answer with the right encoding and to choose the
/// matching rules) and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    /// Value representation as declared (checked against the dictionary on entry).
    pub vr: VR,
    /// The values.
    pub value: Value,
}

/// A dataset: elements sorted by tag, at most one per tag.
///
/// A sorted `Vec` rather than a map: datasets are small (tens of elements), built once and read
/// many times, and a `Vec` decodes from postcard without rebuilding a tree.
///
/// Its serde form is the compact storage form of `worklist.redb` (tag, VR, values), not DICOM
/// JSON: use `json::dataset_to_json` for anything a person or a RIS reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// Invariant: strictly increasing tags.
    elements: Vec<(Tag, Element)>,
}

impl Dataset {
    /// An empty dataset.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of top-level elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether there is no element at all.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// The element with this tag.
    pub fn get(&self, tag: Tag) -> Option<&Element> {
        self.elements
            .binary_search_by_key(&tag, |(t, _)| *t)
            .ok()
            .map(|i| &self.elements[i].1)
    }

    /// Inserts or replaces an element; returns the previous one.
    pub fn put(&mut self, tag: Tag, vr: VR, value: Value) -> Option<Element> {
        let element = Element { vr, value };
        // Elements mostly arrive in tag order (a parse): append without a search.
        if self.elements.last().is_none_or(|(last, _)| *last < tag) {
            self.elements.push((tag, element));
            return None;
        }
        match self.elements.binary_search_by_key(&tag, |(t, _)| *t) {
            Ok(i) => Some(std::mem::replace(&mut self.elements[i].1, element)),
            Err(i) => {
                self.elements.insert(i, (tag, element));
                None
            }
        }
    }

    /// Removes an element; returns it if it was there.
    pub fn remove(&mut self, tag: Tag) -> Option<Element> {
        match self.elements.binary_search_by_key(&tag, |(t, _)| *t) {
            Ok(i) => Some(self.elements.remove(i).1),
            Err(_) => None,
        }
    }

    /// The elements in tag order.
    pub fn iter(&self) -> impl Iterator<Item = (Tag, &Element)> + '_ {
        self.elements.iter().map(|(t, e)| (*t, e))
    }

    /// The first text value of an element, if it is a text element with a non-empty first
    /// value. Most worklist attributes are single-valued text, so this is the common reader.
    pub fn str(&self, tag: Tag) -> Option<&str> {
        match &self.get(tag)?.value {
            Value::Strs(v) => v.first().map(String::as_str).filter(|s| !s.is_empty()),
            _ => None,
        }
    }

    /// The items of a sequence element.
    pub fn items(&self, tag: Tag) -> Option<&[Dataset]> {
        match &self.get(tag)?.value {
            Value::Items(items) => Some(items),
            _ => None,
        }
    }

    /// Mutable access to the items of a sequence element (to update a status inside the
    /// Scheduled Procedure Step Sequence).
    pub fn items_mut(&mut self, tag: Tag) -> Option<&mut Vec<Dataset>> {
        let i = self.elements.binary_search_by_key(&tag, |(t, _)| *t).ok()?;
        match &mut self.elements[i].1.value {
            Value::Items(items) => Some(items),
            _ => None,
        }
    }

    /// Sets a single text value (used for defaults and status changes).
    pub fn put_str(&mut self, tag: Tag, vr: VR, value: impl Into<String>) {
        self.put(tag, vr, Value::Strs(vec![value.into()]));
    }

    /// Converts a dataset received from the network (a C-FIND identifier, an N-CREATE or
    /// N-SET attribute list). Text is taken as decoded by dicom-object (so already in Unicode,
    /// whatever the Specific Character Set) with the padding removed. Binary VRs this model
    /// does not keep (OW, OF, OD, OL, OV) and pixel data are refused, naming the attribute.
    pub fn from_dicom(obj: &InMemDicomObject) -> Result<Dataset, DatasetError> {
        let mut path = AttributePath::default();
        from_dicom_at(obj, &mut path, 0)
    }

    /// Builds the dataset dicom-object will encode in a response. Text values are written
    /// as they are; the caller puts a Specific Character Set that can carry them (see
    /// `matching::Query::project`).
    pub fn to_dicom(&self) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        for (tag, element) in self.iter() {
            obj.put(DataElement::new(tag, element.vr, to_dicom_value(element)));
        }
        obj
    }
}

/// Deepest sequence nesting accepted from the network or JSON: far more than the MWL and
/// MPPS models use, and small enough that recursion cannot exhaust the stack.
pub const MAX_DEPTH: usize = 16;

fn from_dicom_at(
    obj: &InMemDicomObject,
    path: &mut AttributePath,
    depth: usize,
) -> Result<Dataset, DatasetError> {
    if depth > MAX_DEPTH {
        return Err(DatasetError::TooDeep { path: path.clone() });
    }
    let mut out = Dataset::new();
    for element in obj.iter() {
        let tag = element.header().tag;
        let vr = element.header().vr;
        path.push(tag);
        let value = match element.value() {
            DicomValue::Sequence(seq) => {
                let mut items = Vec::with_capacity(seq.items().len());
                for (i, item) in seq.items().iter().enumerate() {
                    path.set_item(i);
                    items.push(from_dicom_at(item, path, depth + 1)?);
                }
                path.set_item_none();
                Value::Items(items)
            }
            DicomValue::PixelSequence(_) => {
                return Err(DatasetError::UnsupportedVr {
                    path: path.clone(),
                    vr,
                })
            }
            DicomValue::Primitive(p) => {
                primitive_to_value(vr, p).map_err(|reason| match reason {
                    None => DatasetError::UnsupportedVr {
                        path: path.clone(),
                        vr,
                    },
                    Some(reason) => DatasetError::BadValue {
                        path: path.clone(),
                        reason,
                    },
                })?
            }
        };
        path.pop();
        out.put(tag, vr, value);
    }
    Ok(out)
}

/// `Err(None)`: VR not kept by this model; `Err(Some(reason))`: value does not fit.
fn primitive_to_value(vr: VR, p: &PrimitiveValue) -> Result<Value, Option<String>> {
    if matches!(p, PrimitiveValue::Empty) {
        return Ok(Value::empty_for(vr));
    }
    Ok(match vr {
        VR::SS | VR::US | VR::SL | VR::UL | VR::SV => {
            Value::Ints(p.to_multi_int::<i64>().map_err(|e| Some(e.to_string()))?)
        }
        VR::UV => {
            let values = p.to_multi_int::<u64>().map_err(|e| Some(e.to_string()))?;
            Value::Ints(
                values
                    .into_iter()
                    .map(|v| i64::try_from(v).map_err(|_| Some(format!("{v} is too large"))))
                    .collect::<Result<_, _>>()?,
            )
        }
        VR::FL | VR::FD => Value::Floats(p.to_multi_float64().map_err(|e| Some(e.to_string()))?),
        VR::AT => match p {
            PrimitiveValue::Tags(tags) => Value::Tags(
                tags.iter()
                    .map(|t| (u32::from(t.0) << 16) | u32::from(t.1))
                    .collect(),
            ),
            _ => return Err(Some("AT value is not a list of tags".into())),
        },
        VR::OB | VR::UN => Value::Bytes(p.to_bytes().into_owned()),
        VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::SQ => return Err(None),
        VR::LT | VR::ST | VR::UT => {
            // Single-valued texts whose backslashes are characters, not separators.
            Value::Strs(vec![trim_padding(&p.to_str(), vr).to_owned()])
        }
        // A value built in memory may hold several values in one backslash-separated
        // string (the wire decoder splits them already): split either way.
        _ => Value::Strs(
            p.to_multi_str()
                .iter()
                .flat_map(|s| s.split('\\'))
                .map(|s| trim_padding(s, vr).to_owned())
                .collect(),
        ),
    })
}

/// Removes DICOM padding: trailing spaces and NULs always; leading spaces too for the VRs
/// where PS3.5 Table 6.2-1 says they are not significant (all but LT, ST, UT, UC and UR, whose
/// leading spaces are content).
pub fn trim_padding(s: &str, vr: VR) -> &str {
    let s = s.trim_end_matches(['\0', ' ']);
    match vr {
        VR::LT | VR::ST | VR::UT | VR::UC | VR::UR => s,
        _ => s.trim_start_matches(' '),
    }
}

fn to_dicom_value(element: &Element) -> DicomValue<InMemDicomObject> {
    let vr = element.vr;
    let primitive = match &element.value {
        Value::Items(items) => {
            let items: Vec<InMemDicomObject> = items.iter().map(Dataset::to_dicom).collect();
            return DicomValue::Sequence(DataSetSequence::new(items, Length::UNDEFINED));
        }
        v if v.is_empty() => PrimitiveValue::Empty,
        Value::Strs(values) => PrimitiveValue::Strs(values.iter().cloned().collect()),
        // Narrowing casts: the values came in as these VRs (checked on entry), so they fit.
        Value::Ints(values) => match vr {
            VR::SS => PrimitiveValue::I16(values.iter().map(|v| *v as i16).collect()),
            VR::US => PrimitiveValue::U16(values.iter().map(|v| *v as u16).collect()),
            VR::SL => PrimitiveValue::I32(values.iter().map(|v| *v as i32).collect()),
            VR::UL => PrimitiveValue::U32(values.iter().map(|v| *v as u32).collect()),
            VR::UV => PrimitiveValue::U64(values.iter().map(|v| *v as u64).collect()),
            _ => PrimitiveValue::I64(values.iter().copied().collect()),
        },
        Value::Floats(values) => match vr {
            VR::FL => PrimitiveValue::F32(values.iter().map(|v| *v as f32).collect()),
            _ => PrimitiveValue::F64(values.iter().copied().collect()),
        },
        Value::Tags(values) => PrimitiveValue::Tags(
            values
                .iter()
                .map(|v| Tag((v >> 16) as u16, (v & 0xFFFF) as u16))
                .collect(),
        ),
        Value::Bytes(bytes) => PrimitiveValue::U8(bytes.iter().copied().collect()),
    };
    DicomValue::Primitive(primitive)
}

/// Where an attribute sits in a dataset: the tags from the top level down, with the item
/// index inside each sequence. Errors carry one so a 400 or an Error Comment can name the
/// attribute by keyword and tag, e.g.
/// `ScheduledProcedureStepSequence (0040,0100) item 1 > Modality (0008,0060)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributePath {
    /// (tag, item index within that tag's sequence when the path goes inside it).
    steps: Vec<(Tag, Option<usize>)>,
}

impl AttributePath {
    /// A path to a top-level attribute.
    pub fn top(tag: Tag) -> Self {
        Self {
            steps: vec![(tag, None)],
        }
    }

    /// The path to `tag` inside item `item` (0-based) of sequence `seq`.
    pub fn nested(seq: Tag, item: usize, tag: Tag) -> Self {
        Self {
            steps: vec![(seq, Some(item)), (tag, None)],
        }
    }

    /// The tag the path ends at.
    pub fn tag(&self) -> Option<Tag> {
        self.steps.last().map(|(t, _)| *t)
    }

    /// The top-level tag (for an Offending Element list).
    pub fn top_tag(&self) -> Option<Tag> {
        self.steps.first().map(|(t, _)| *t)
    }

    /// The tags from the top down.
    pub fn tags(&self) -> impl Iterator<Item = Tag> + '_ {
        self.steps.iter().map(|(t, _)| *t)
    }

    pub(crate) fn push(&mut self, tag: Tag) {
        self.steps.push((tag, None));
    }

    pub(crate) fn pop(&mut self) {
        self.steps.pop();
    }

    pub(crate) fn set_item(&mut self, item: usize) {
        if let Some(last) = self.steps.last_mut() {
            last.1 = Some(item);
        }
    }

    pub(crate) fn set_item_none(&mut self) {
        if let Some(last) = self.steps.last_mut() {
            last.1 = None;
        }
    }
}

impl fmt::Display for AttributePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (tag, item)) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(" > ")?;
            }
            match keyword(*tag) {
                Some(k) => write!(f, "{k} ({:04X},{:04X})", tag.0, tag.1)?,
                None => write!(f, "({:04X},{:04X})", tag.0, tag.1)?,
            }
            if let Some(item) = item {
                write!(f, " item {}", item + 1)?;
            }
        }
        if self.steps.is_empty() {
            f.write_str("dataset")?;
        }
        Ok(())
    }
}

/// The standard keyword of a tag (`PatientName` for (0010,0010)), for messages.
pub fn keyword(tag: Tag) -> Option<&'static str> {
    StandardDataDictionary.by_tag(tag).map(|e| e.alias())
}

/// Whether `vr` is what the standard dictionary allows for `tag` (unknown and private tags:
/// anything). `Err` carries the dictionary's VR(s) for the message. Both JSON entry and C-FIND
/// identifiers are checked with it, so a key is matched with the rules of its real VR.
pub fn dictionary_vr_ok(tag: Tag, vr: VR) -> Result<(), String> {
    let Some(entry) = StandardDataDictionary.by_tag(tag) else {
        return Ok(());
    };
    let (ok, expected) = match entry.vr() {
        VirtualVr::Exact(v) => (v == vr, v.to_string().to_owned()),
        VirtualVr::Xs => (matches!(vr, VR::US | VR::SS), "US or SS".to_owned()),
        VirtualVr::Ox | VirtualVr::Px => (matches!(vr, VR::OB | VR::OW), "OB or OW".to_owned()),
        VirtualVr::Lt => (matches!(vr, VR::US | VR::OW), "US or OW".to_owned()),
        // A context-dependent VR added in a later dicom-core: trust the sender.
        _ => (true, String::new()),
    };
    if ok {
        Ok(())
    } else {
        Err(expected)
    }
}

/// Why a network dataset could not be taken into the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A VR this model does not keep (OW, OF, OD, OL, OV, encapsulated data).
    #[error("{path}: VR {vr} is not supported here")]
    UnsupportedVr {
        /// Where.
        path: AttributePath,
        /// The VR.
        vr: VR,
    },
    /// A value does not convert (e.g. an integer out of range).
    #[error("{path}: {reason}")]
    BadValue {
        /// Where.
        path: AttributePath,
        /// What is wrong.
        reason: String,
    },
    /// Sequences nested deeper than [`MAX_DEPTH`].
    #[error("{path}: sequences nested more than {MAX_DEPTH} deep")]
    TooDeep {
        /// Where.
        path: AttributePath,
    },
}

impl DatasetError {
    /// The attribute the error is about.
    pub fn path(&self) -> &AttributePath {
        match self {
            DatasetError::UnsupportedVr { path, .. }
            | DatasetError::BadValue { path, .. }
            | DatasetError::TooDeep { path } => path,
        }
    }
}

// ---- postcard form -------------------------------------------------------------------------
//
// Tag and VR have no serde support in dicom-core, so the stored form is a list of
// `(tag as u32, VR as two ASCII bytes, value)`. Changing it changes worklist.redb's format:
// see the versioned records in `store`.

/// The stored value, as written (borrowed). Variant order is the format: keep it in step with
/// [`WireValue`].
#[derive(Serialize)]
enum WireValueRef<'a> {
    Strs(&'a [String]),
    Ints(&'a [i64]),
    Floats(&'a [f64]),
    Tags(&'a [u32]),
    Bytes(&'a [u8]),
    Items(&'a [Dataset]),
}

/// The stored value, as read back.
#[derive(Deserialize)]
enum WireValue {
    Strs(Vec<String>),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Tags(Vec<u32>),
    Bytes(Vec<u8>),
    Items(Vec<Dataset>),
}

impl Serialize for Dataset {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.elements.len()))?;
        for (tag, element) in &self.elements {
            let value = match &element.value {
                Value::Strs(v) => WireValueRef::Strs(v),
                Value::Ints(v) => WireValueRef::Ints(v),
                Value::Floats(v) => WireValueRef::Floats(v),
                Value::Tags(v) => WireValueRef::Tags(v),
                Value::Bytes(v) => WireValueRef::Bytes(v),
                Value::Items(v) => WireValueRef::Items(v),
            };
            let tag = (u32::from(tag.0) << 16) | u32::from(tag.1);
            seq.serialize_element(&(tag, element.vr.to_bytes(), value))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Dataset {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wire = Vec::<(u32, [u8; 2], WireValue)>::deserialize(deserializer)?;
        let mut elements = Vec::with_capacity(wire.len());
        for (tag, vr, value) in wire {
            let tag = Tag((tag >> 16) as u16, (tag & 0xFFFF) as u16);
            let vr = VR::from_binary(vr).ok_or_else(|| D::Error::custom("invalid VR"))?;
            let value = match value {
                WireValue::Strs(v) => Value::Strs(v),
                WireValue::Ints(v) => Value::Ints(v),
                WireValue::Floats(v) => Value::Floats(v),
                WireValue::Tags(v) => Value::Tags(v),
                WireValue::Bytes(v) => Value::Bytes(v),
                WireValue::Items(v) => Value::Items(v),
            };
            elements.push((tag, Element { vr, value }));
        }
        if elements.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(D::Error::custom("dataset tags out of order"));
        }
        Ok(Dataset { elements })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

    fn sample() -> Dataset {
        let mut sps = Dataset::new();
        sps.put_str(tags::MODALITY, VR::CS, "CT");
        sps.put_str(tags::SCHEDULED_STATION_AE_TITLE, VR::AE, "CT1");
        let mut ds = Dataset::new();
        ds.put_str(tags::PATIENT_NAME, VR::PN, "Doe^Jane");
        ds.put_str(tags::PATIENT_ID, VR::LO, "P1");
        ds.put(tags::PREGNANCY_STATUS, VR::US, Value::Ints(vec![4]));
        ds.put(
            tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
            VR::SQ,
            Value::Items(vec![sps]),
        );
        ds
    }

    #[test]
    fn put_keeps_tag_order_and_replaces() {
        let mut ds = Dataset::new();
        ds.put_str(tags::PATIENT_ID, VR::LO, "B");
        ds.put_str(tags::ACCESSION_NUMBER, VR::SH, "A");
        ds.put_str(tags::PATIENT_ID, VR::LO, "C");
        let order: Vec<Tag> = ds.iter().map(|(t, _)| t).collect();
        assert_eq!(order, vec![tags::ACCESSION_NUMBER, tags::PATIENT_ID]);
        assert_eq!(ds.str(tags::PATIENT_ID), Some("C"));
        // Appended past the last tag, then one between, then the last replaced.
        ds.put_str(tags::STUDY_ID, VR::SH, "S");
        ds.put_str(tags::MODALITY, VR::CS, "CT");
        let old = ds.put(tags::STUDY_ID, VR::SH, Value::Strs(vec!["T".into()]));
        assert!(old.is_some_and(|e| e.value == Value::Strs(vec!["S".into()])));
        let order: Vec<Tag> = ds.iter().map(|(t, _)| t).collect();
        assert_eq!(
            order,
            vec![
                tags::ACCESSION_NUMBER,
                tags::MODALITY,
                tags::PATIENT_ID,
                tags::STUDY_ID
            ]
        );
        assert_eq!(ds.str(tags::STUDY_ID), Some("T"));
        assert!(ds.remove(tags::PATIENT_ID).is_some());
        assert_eq!(ds.len(), 3);
    }

    #[test]
    fn postcard_round_trip() {
        let ds = sample();
        let bytes = postcard::to_allocvec(&ds).unwrap();
        let back: Dataset = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ds);
    }

    #[test]
    fn dicom_round_trip_trims_padding() {
        let mut obj = sample().to_dicom();
        obj.put(DataElement::new(
            tags::ACCESSION_NUMBER,
            VR::SH,
            PrimitiveValue::from("ACC1 "),
        ));
        let back = Dataset::from_dicom(&obj).unwrap();
        assert_eq!(back.str(tags::ACCESSION_NUMBER), Some("ACC1"));
        let mut expected = sample();
        expected.put_str(tags::ACCESSION_NUMBER, VR::SH, "ACC1");
        assert_eq!(back, expected);
    }

    #[test]
    fn path_names_keyword_tag_and_item() {
        let path =
            AttributePath::nested(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE, 0, tags::MODALITY);
        assert_eq!(
            path.to_string(),
            "ScheduledProcedureStepSequence (0040,0100) item 1 > Modality (0008,0060)"
        );
        assert_eq!(
            AttributePath::top(Tag(0x0009, 0x1001)).to_string(),
            "(0009,1001)"
        );
    }

    #[test]
    fn unsupported_binary_vr_is_named() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            Tag(0x0009, 0x1001),
            VR::OW,
            PrimitiveValue::U16([1u16, 2].as_slice().into()),
        ));
        let err = Dataset::from_dicom(&obj).unwrap_err();
        assert!(matches!(
            err,
            DatasetError::UnsupportedVr { vr: VR::OW, .. }
        ));
        assert_eq!(err.path().tag(), Some(Tag(0x0009, 0x1001)));
    }
}
