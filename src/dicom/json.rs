//! DICOM JSON (PS3.18 Annex F, `application/dicom+json`) ↔ [`Dataset`], strict on entry.
//!
//! Why not the `dicom-json` crate (dicom-rs, 0.10.1 exists): its errors are serde messages
//! that do not name the attribute, it silently turns an unknown VR into UN and drops
//! `BulkDataURI` elements, and it enables serde_json's `preserve_order` feature, which would
//! change the key order of every JSON document the rest of the gateway writes (feature
//! unification). The worklist needs the opposite: refuse anything doubtful with the
//! attribute's keyword and tag, for a small set of VRs. This converter is that, and nothing
//! more.
//!
//! Accepted on entry: every text VR (values checked with [`vr::check_value`]), PN as
//! `{"Alphabetic", "Ideographic", "Phonetic"}` objects, IS/DS as JSON numbers (or strings that
//! are valid IS/DS, which some producers write), US/SS/UL/SL and FL/FD as numbers, AT as
//! `"GGGGEEEE"` strings, SQ as arrays of objects. A `null` in a text value array is an empty
//! value (PS3.18 F.2.5). Refused: other VRs, `InlineBinary`/`BulkDataURI`, unknown members,
//! command and file-meta groups, group-length elements, a VR that differs from the standard
//! dictionary's for a known tag. Tag keys may be upper- or lower-case hex.
//!
//! On output, keys are upper-case and sorted (serde_json's default map), a zero-length value
//! has no `"Value"`, IS/DS are written as numbers, OB/UN as `InlineBinary`.

use dicom_core::{Tag, VR};
use serde_json::{Map, Number, Value as Json};

use super::dataset::{dictionary_vr_ok, AttributePath, Dataset, Value, MAX_DEPTH};
use super::vr;

/// Why a DICOM JSON document was refused. Every variant about an attribute carries its path
/// ([`JsonError::path`]) so the API's 400 can name it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// Not JSON at all.
    #[error("not valid JSON (line {line}, column {column}): {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's description.
        message: String,
    },
    /// The document (or an element of the top-level array) is not a JSON object.
    #[error("expected a DICOM JSON dataset (an object keyed by tags) or an array of them")]
    NotADataset,
    /// An element of a top-level array is wrong; `source` says how.
    #[error("array index {index}: {source}")]
    InDataset {
        /// 0-based position in the array.
        index: usize,
        /// The error in that dataset.
        source: Box<JsonError>,
    },
    /// A key is not eight hex digits.
    #[error("{path}: {key:?} is not a tag (eight hex digits, e.g. \"00100010\")")]
    BadTagKey {
        /// The enclosing attribute (empty at top level).
        path: AttributePath,
        /// The key as written.
        key: String,
    },
    /// Command (0000), file meta (0002) or directory (0004) groups, or a group length.
    #[error("{path}: this attribute does not belong in a dataset")]
    ForbiddenTag {
        /// Where.
        path: AttributePath,
    },
    /// An attribute's JSON is not an object with `"vr"`.
    #[error("{path}: {reason}")]
    BadElement {
        /// Where.
        path: AttributePath,
        /// What is wrong with its structure.
        reason: String,
    },
    /// `"vr"` is not a VR name.
    #[error("{path}: unknown VR {vr:?}")]
    UnknownVr {
        /// Where.
        path: AttributePath,
        /// As written.
        vr: String,
    },
    /// A VR this converter does not take (OB, OW, UN, …).
    #[error("{path}: VR {vr} is not accepted in worklist items")]
    UnsupportedVr {
        /// Where.
        path: AttributePath,
        /// The VR.
        vr: VR,
    },
    /// The VR differs from the standard dictionary's for this tag.
    #[error("{path}: VR {found} given, the standard says {expected}")]
    WrongVr {
        /// Where.
        path: AttributePath,
        /// As written.
        found: VR,
        /// The dictionary's VR(s).
        expected: String,
    },
    /// A value is of the wrong JSON type or breaks the VR's rules (bad date, bad UID, too
    /// long, …).
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

impl JsonError {
    /// The attribute the error is about, if any.
    pub fn path(&self) -> Option<&AttributePath> {
        match self {
            JsonError::Syntax { .. } | JsonError::NotADataset => None,
            JsonError::InDataset { source, .. } => source.path(),
            JsonError::BadTagKey { path, .. }
            | JsonError::ForbiddenTag { path }
            | JsonError::BadElement { path, .. }
            | JsonError::UnknownVr { path, .. }
            | JsonError::UnsupportedVr { path, .. }
            | JsonError::WrongVr { path, .. }
            | JsonError::BadValue { path, .. }
            | JsonError::TooDeep { path } => Some(path),
        }
    }

    /// The position in a top-level array the error is about, if the document was an array.
    pub fn dataset_index(&self) -> Option<usize> {
        match self {
            JsonError::InDataset { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// Parses a DICOM JSON document: one dataset object or an array of them (what
/// `POST /api/v1/worklist` and the CLI import take). The first bad dataset fails the whole
/// document, so an import is all or nothing.
pub fn parse_datasets(text: &str) -> Result<Vec<Dataset>, JsonError> {
    let json: Json = serde_json::from_str(text).map_err(|e| JsonError::Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    match &json {
        Json::Object(_) => Ok(vec![dataset_from_json(&json)?]),
        Json::Array(array) => array
            .iter()
            .enumerate()
            .map(|(index, item)| {
                dataset_from_json(item).map_err(|e| JsonError::InDataset {
                    index,
                    source: Box::new(e),
                })
            })
            .collect(),
        _ => Err(JsonError::NotADataset),
    }
}

/// Converts one DICOM JSON dataset object.
pub fn dataset_from_json(json: &Json) -> Result<Dataset, JsonError> {
    let mut path = AttributePath::default();
    object_to_dataset(json, &mut path, 0)
}

fn object_to_dataset(
    json: &Json,
    path: &mut AttributePath,
    depth: usize,
) -> Result<Dataset, JsonError> {
    if depth > MAX_DEPTH {
        return Err(JsonError::TooDeep { path: path.clone() });
    }
    let Json::Object(map) = json else {
        return Err(if depth == 0 {
            JsonError::NotADataset
        } else {
            JsonError::BadElement {
                path: path.clone(),
                reason: "a sequence item must be a JSON object".into(),
            }
        });
    };
    let mut out = Dataset::new();
    for (key, element) in map {
        let tag = parse_tag(key).ok_or_else(|| JsonError::BadTagKey {
            path: path.clone(),
            key: key.clone(),
        })?;
        path.push(tag);
        if matches!(tag.0, 0x0000 | 0x0002 | 0x0004) || tag.1 == 0x0000 {
            return Err(JsonError::ForbiddenTag { path: path.clone() });
        }
        let (vr, value) = element_from_json(tag, element, path, depth)?;
        path.pop();
        out.put(tag, vr, value);
    }
    Ok(out)
}

/// `"00100010"` → (0010,0010).
pub fn parse_tag(key: &str) -> Option<Tag> {
    if key.len() != 8 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let raw = u32::from_str_radix(key, 16).ok()?;
    Some(Tag((raw >> 16) as u16, (raw & 0xFFFF) as u16))
}

fn element_from_json(
    tag: Tag,
    json: &Json,
    path: &mut AttributePath,
    depth: usize,
) -> Result<(VR, Value), JsonError> {
    let bad_element = |path: &AttributePath, reason: &str| JsonError::BadElement {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let Json::Object(members) = json else {
        return Err(bad_element(
            path,
            "an attribute must be a JSON object with \"vr\"",
        ));
    };
    for name in members.keys() {
        match name.as_str() {
            "vr" | "Value" => {}
            "InlineBinary" | "BulkDataURI" => {
                return Err(bad_element(
                    path,
                    &format!("\"{name}\" is not accepted in worklist items"),
                ))
            }
            other => return Err(bad_element(path, &format!("unknown member {other:?}"))),
        }
    }
    let vr_name = match members.get("vr") {
        Some(Json::String(s)) => s.as_str(),
        Some(_) => return Err(bad_element(path, "\"vr\" must be a string")),
        None => return Err(bad_element(path, "\"vr\" is missing")),
    };
    let vr: VR = vr_name.parse().map_err(|_| JsonError::UnknownVr {
        path: path.clone(),
        vr: vr_name.to_owned(),
    })?;
    dictionary_vr_ok(tag, vr).map_err(|expected| JsonError::WrongVr {
        path: path.clone(),
        found: vr,
        expected,
    })?;
    let values: &[Json] = match members.get("Value") {
        None => &[],
        Some(Json::Array(values)) => values,
        Some(_) => return Err(bad_element(path, "\"Value\" must be an array")),
    };
    let bad_value = |path: &AttributePath, reason: String| JsonError::BadValue {
        path: path.clone(),
        reason,
    };
    let value = match vr {
        VR::SQ => {
            let mut items = Vec::with_capacity(values.len());
            for (i, item) in values.iter().enumerate() {
                path.set_item(i);
                items.push(object_to_dataset(item, path, depth + 1)?);
            }
            path.set_item_none();
            Value::Items(items)
        }
        VR::US | VR::SS | VR::UL | VR::SL => {
            let (min, max): (i64, i64) = match vr {
                VR::US => (0, i64::from(u16::MAX)),
                VR::SS => (i64::from(i16::MIN), i64::from(i16::MAX)),
                VR::UL => (0, i64::from(u32::MAX)),
                _ => (i64::from(i32::MIN), i64::from(i32::MAX)),
            };
            let mut ints = Vec::with_capacity(values.len());
            for v in values {
                match v.as_i64() {
                    Some(n) if (min..=max).contains(&n) => ints.push(n),
                    _ => {
                        return Err(bad_value(
                            path,
                            format!("{v} is not a {vr} integer ({min}..={max})"),
                        ))
                    }
                }
            }
            Value::Ints(ints)
        }
        VR::FL | VR::FD => {
            let mut floats = Vec::with_capacity(values.len());
            for v in values {
                match v.as_f64() {
                    Some(f) if f.is_finite() => floats.push(f),
                    _ => return Err(bad_value(path, format!("{v} is not a number"))),
                }
            }
            Value::Floats(floats)
        }
        VR::AT => {
            let mut tags = Vec::with_capacity(values.len());
            for v in values {
                match v.as_str().and_then(parse_tag) {
                    Some(t) => tags.push((u32::from(t.0) << 16) | u32::from(t.1)),
                    None => return Err(bad_value(path, format!("{v} is not a tag \"GGGGEEEE\""))),
                }
            }
            Value::Tags(tags)
        }
        VR::AE
        | VR::AS
        | VR::CS
        | VR::DA
        | VR::DS
        | VR::DT
        | VR::IS
        | VR::LO
        | VR::LT
        | VR::PN
        | VR::SH
        | VR::ST
        | VR::TM
        | VR::UC
        | VR::UI
        | VR::UR
        | VR::UT => {
            if matches!(vr, VR::LT | VR::ST | VR::UT | VR::UR) && values.len() > 1 {
                return Err(bad_value(path, format!("{vr} is single-valued")));
            }
            let mut strs = Vec::with_capacity(values.len());
            for v in values {
                let s = text_value(vr, v).map_err(|reason| bad_value(path, reason))?;
                if !s.is_empty() {
                    vr::check_value(vr, &s).map_err(|reason| bad_value(path, reason))?;
                }
                strs.push(s);
            }
            Value::Strs(strs)
        }
        other => {
            return Err(JsonError::UnsupportedVr {
                path: path.clone(),
                vr: other,
            })
        }
    };
    Ok((vr, value))
}

/// One text value from its JSON form; `null` is an empty value.
fn text_value(vr: VR, v: &Json) -> Result<String, String> {
    match (vr, v) {
        (_, Json::Null) => Ok(String::new()),
        (VR::PN, Json::Object(groups)) => {
            let mut parts = [String::new(), String::new(), String::new()];
            for (name, value) in groups {
                let slot = match name.as_str() {
                    "Alphabetic" => 0,
                    "Ideographic" => 1,
                    "Phonetic" => 2,
                    other => return Err(format!("unknown person name member {other:?}")),
                };
                match value {
                    Json::String(s) => parts[slot] = s.clone(),
                    Json::Null => {}
                    _ => return Err(format!("person name member {name:?} must be a string")),
                }
            }
            let joined = parts.join("=");
            Ok(joined.trim_end_matches('=').to_owned())
        }
        (VR::PN, _) => Err(format!(
            "{v} is not a person name object ({{\"Alphabetic\": \"Family^Given\"}})"
        )),
        (VR::IS, Json::Number(n)) => match n.as_i64() {
            Some(i) => Ok(i.to_string()),
            None => Err(format!("{n} is not an integer")),
        },
        (VR::DS, Json::Number(n)) => Ok(n.to_string()),
        (_, Json::String(s)) => {
            // Padding belongs to the binary encoding, not to JSON values; the free-text VRs
            // keep trailing spaces only because they may be content there.
            let kept = if matches!(vr, VR::LT | VR::ST | VR::UT) {
                s.as_str()
            } else {
                s.trim_end_matches(['\0', ' '])
            };
            Ok(kept.to_owned())
        }
        _ => Err(format!("{v} is not a {vr} value (expected a string)")),
    }
}

/// Writes a dataset as DICOM JSON (for the API's GET and for MPPS listings).
pub fn dataset_to_json(ds: &Dataset) -> Json {
    let mut map = Map::new();
    for (tag, element) in ds.iter() {
        let mut member = Map::new();
        member.insert("vr".into(), Json::String(element.vr.to_string().to_owned()));
        if !element.value.is_empty() {
            match &element.value {
                Value::Bytes(bytes) => {
                    member.insert("InlineBinary".into(), Json::String(base64(bytes)));
                }
                value => {
                    member.insert(
                        "Value".into(),
                        Json::Array(values_to_json(element.vr, value)),
                    );
                }
            }
        }
        map.insert(format!("{:04X}{:04X}", tag.0, tag.1), Json::Object(member));
    }
    Json::Object(map)
}

fn values_to_json(vr: VR, value: &Value) -> Vec<Json> {
    match value {
        Value::Strs(strs) => strs.iter().map(|s| text_to_json(vr, s)).collect(),
        Value::Ints(ints) => ints.iter().map(|i| Json::from(*i)).collect(),
        Value::Floats(floats) => floats
            .iter()
            .map(|f| Number::from_f64(*f).map_or(Json::Null, Json::Number))
            .collect(),
        Value::Tags(tags) => tags
            .iter()
            .map(|t| Json::String(format!("{t:08X}")))
            .collect(),
        Value::Items(items) => items.iter().map(dataset_to_json).collect(),
        Value::Bytes(_) => Vec::new(),
    }
}

fn text_to_json(vr: VR, s: &str) -> Json {
    if s.is_empty() {
        return Json::Null;
    }
    match vr {
        VR::PN => {
            let mut obj = Map::new();
            for (name, group) in ["Alphabetic", "Ideographic", "Phonetic"]
                .iter()
                .zip(s.split('='))
            {
                if !group.is_empty() {
                    obj.insert((*name).into(), Json::String(group.to_owned()));
                }
            }
            Json::Object(obj)
        }
        VR::IS => s
            .parse::<i64>()
            .map_or_else(|_| Json::String(s.to_owned()), Json::from),
        VR::DS => s
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(|| Json::String(s.to_owned()), Json::Number),
        _ => Json::String(s.to_owned()),
    }
}

/// Standard base64 with padding (RFC 4648), for `InlineBinary`; too small a need for a
/// dependency.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3F) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;
    use serde_json::json;

    fn minimal() -> Json {
        json!({
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00100020": {"vr": "LO", "Value": ["P1"]},
            "00400100": {"vr": "SQ", "Value": [{
                "00080060": {"vr": "CS", "Value": ["CT"]},
                "00400002": {"vr": "DA", "Value": ["20260115"]}
            }]}
        })
    }

    fn err_of(doc: Json) -> JsonError {
        dataset_from_json(&doc).unwrap_err()
    }

    #[test]
    fn parses_nested_and_round_trips() {
        let ds = dataset_from_json(&minimal()).unwrap();
        assert_eq!(ds.str(tags::PATIENT_NAME), Some("Doe^Jane"));
        let sps = &ds.items(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE).unwrap()[0];
        assert_eq!(sps.str(tags::MODALITY), Some("CT"));
        assert_eq!(dataset_to_json(&ds), minimal());
    }

    #[test]
    fn person_name_groups_and_nulls() {
        let doc = json!({"00100010": {"vr": "PN", "Value": [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
            null
        ]}});
        let ds = dataset_from_json(&doc).unwrap();
        let Value::Strs(v) = &ds.get(tags::PATIENT_NAME).unwrap().value else {
            panic!()
        };
        assert_eq!(
            v,
            &[
                "Yamada^Tarou=山田^太郎=やまだ^たろう".to_owned(),
                String::new()
            ]
        );
        assert_eq!(dataset_to_json(&ds), doc);
    }

    #[test]
    fn numbers_for_is_ds_us() {
        let doc = json!({
            "00101030": {"vr": "DS", "Value": [72.5]},
            "00101020": {"vr": "DS", "Value": ["1.80"]},
            "00201208": {"vr": "IS", "Value": [3]},
            "001021C0": {"vr": "US", "Value": [4]}
        });
        let ds = dataset_from_json(&doc).unwrap();
        assert_eq!(ds.str(tags::PATIENT_WEIGHT), Some("72.5"));
        assert_eq!(ds.str(tags::PATIENT_SIZE), Some("1.80"));
        assert_eq!(
            ds.get(tags::PREGNANCY_STATUS).unwrap().value,
            Value::Ints(vec![4])
        );
        let out = dataset_to_json(&ds);
        assert_eq!(out["00101020"]["Value"][0], json!(1.8));
        assert_eq!(out["00201208"]["Value"][0], json!(3));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_datasets("{\"00100010\": ").unwrap_err();
        assert!(matches!(err, JsonError::Syntax { line: 1, .. }), "{err}");
        assert_eq!(parse_datasets("42").unwrap_err(), JsonError::NotADataset);
    }

    #[test]
    fn array_errors_name_the_dataset() {
        let doc = json!([minimal(), {"00100020": {"vr": "PN", "Value": ["x"]}}]).to_string();
        let err = parse_datasets(&doc).unwrap_err();
        assert_eq!(err.dataset_index(), Some(1));
        assert_eq!(
            err.path().and_then(AttributePath::tag),
            Some(tags::PATIENT_ID)
        );
        assert!(err.to_string().starts_with("array index 1: "), "{err}");
        assert!(err.to_string().contains("PatientID (0010,0020)"), "{err}");
        assert_eq!(
            parse_datasets(&json!([minimal(), minimal()]).to_string())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn wrong_vr_names_attribute() {
        let err = err_of(json!({"00100020": {"vr": "SH", "Value": ["P1"]}}));
        assert!(matches!(err, JsonError::WrongVr { found: VR::SH, .. }));
        assert_eq!(
            err.to_string(),
            "PatientID (0010,0020): VR SH given, the standard says LO"
        );
    }

    #[test]
    fn nested_errors_name_the_path() {
        let err = err_of(json!({"00400100": {"vr": "SQ", "Value": [{
            "00400002": {"vr": "DA", "Value": ["20261301"]}
        }]}}));
        assert_eq!(
            err.path().unwrap().to_string(),
            "ScheduledProcedureStepSequence (0040,0100) item 1 > ScheduledProcedureStepStartDate (0040,0002)"
        );
        assert!(err.to_string().contains("not a date"), "{err}");
    }

    #[test]
    fn structural_errors() {
        assert!(matches!(
            err_of(json!({"0010001": {"vr": "LO"}})),
            JsonError::BadTagKey { .. }
        ));
        assert!(matches!(
            err_of(json!({"00100020": {"Value": ["x"]}})),
            JsonError::BadElement { .. }
        ));
        assert!(matches!(
            err_of(json!({"00100020": {"vr": "XX"}})),
            JsonError::UnknownVr { .. }
        ));
        assert!(matches!(
            err_of(json!({"00100020": {"vr": "LO", "Value": "P1"}})),
            JsonError::BadElement { .. }
        ));
        assert!(matches!(
            err_of(json!({"00100020": {"vr": "LO", "Value": ["P1"], "value": 1}})),
            JsonError::BadElement { .. }
        ));
        assert!(matches!(
            err_of(json!({"00020010": {"vr": "UI", "Value": ["1.2"]}})),
            JsonError::ForbiddenTag { .. }
        ));
        assert!(matches!(
            err_of(json!({"00100000": {"vr": "UL", "Value": [4]}})),
            JsonError::ForbiddenTag { .. }
        ));
        assert!(matches!(
            err_of(json!({"7FE00010": {"vr": "OB", "InlineBinary": "AAAA"}})),
            JsonError::BadElement { .. }
        ));
        assert!(matches!(
            err_of(json!({"00091001": {"vr": "OB"}})),
            JsonError::UnsupportedVr { vr: VR::OB, .. }
        ));
        assert!(matches!(
            err_of(json!({"00400100": {"vr": "SQ", "Value": [1]}})),
            JsonError::BadElement { .. }
        ));
    }

    #[test]
    fn value_errors() {
        for (doc, needle) in [
            (
                json!({"0020000D": {"vr": "UI", "Value": ["1.2.03"]}}),
                "not a valid UID",
            ),
            (
                json!({"00100030": {"vr": "DA", "Value": ["2026-01-01"]}}),
                "not a date",
            ),
            (
                json!({"00400003": {"vr": "TM", "Value": ["25"]}}),
                "not a time",
            ),
            (
                json!({"00100010": {"vr": "PN", "Value": ["Doe^Jane"]}}),
                "person name object",
            ),
            (
                json!({"00080060": {"vr": "CS", "Value": ["ct"]}}),
                "contains 'c'",
            ),
            (
                json!({"00080050": {"vr": "SH", "Value": ["12345678901234567"]}}),
                "more than 16",
            ),
            (
                json!({"00201208": {"vr": "IS", "Value": [1.5]}}),
                "not an integer",
            ),
            (
                json!({"001021C0": {"vr": "US", "Value": [70000]}}),
                "not a US integer",
            ),
            (
                json!({"00100020": {"vr": "LO", "Value": [5]}}),
                "expected a string",
            ),
        ] {
            let err = err_of(doc);
            assert!(matches!(err, JsonError::BadValue { .. }), "{err}");
            assert!(
                err.to_string().contains(needle),
                "{err} should contain {needle}"
            );
        }
    }

    #[test]
    fn private_tags_take_any_vr_and_unknown_tags_pass() {
        let ds = dataset_from_json(&json!({"00091010": {"vr": "LO", "Value": ["x"]}})).unwrap();
        assert_eq!(ds.str(Tag(0x0009, 0x1010)), Some("x"));
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
