//! C-FIND identifiers from a small JSON file.
//!
//! Two forms are accepted, and may be mixed:
//! - keyword map: `{"PatientName": "", "ScheduledProcedureStepSequence": {"Modality": "CT"}}`
//!   — keys are keywords or tags (`00100010`, `(0010,0010)`), the VR comes from the standard
//!   dictionary; a value is `null`/`""` (universal match), a string, a number, an array of
//!   strings (multiple values), an object (a sequence with one item) or an array of objects;
//! - DICOM JSON (PS3.18 F.2): `{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^J"}]}}`.

use std::collections::BTreeMap;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::StandardDataDictionary;
use serde_json::Value;

use crate::dataset::{Encoder, Ts};

/// A query file that cannot be turned into a dataset.
#[derive(Debug, thiserror::Error)]
#[error("query: {0}")]
pub struct QueryError(String);

fn err<T>(m: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError(m.into()))
}

/// An element of the identifier, before encoding.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// VR and raw value (text, or little-endian binary to be swapped for big endian).
    Value([u8; 2], Vec<u8>),
    /// Sequence items.
    Seq(Vec<Item>),
}

type Item = BTreeMap<u32, Node>;

/// A parsed query, encodable in any of the uncompressed transfer syntaxes.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    root: Item,
}

fn parse_tag(key: &str) -> Option<u32> {
    let k = key.trim().trim_start_matches('(').trim_end_matches(')');
    let hex = k.replace(',', "");
    if hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u32::from_str_radix(&hex, 16).ok();
    }
    None
}

fn resolve(key: &str) -> Result<(u32, Option<[u8; 2]>), QueryError> {
    let dict_vr = |tag: u32| {
        StandardDataDictionary
            .by_tag(dicom_core::Tag((tag >> 16) as u16, tag as u16))
            .map(|e| e.vr().relaxed().to_bytes())
    };
    if let Some(tag) = parse_tag(key) {
        return Ok((tag, dict_vr(tag)));
    }
    match StandardDataDictionary.by_name(key) {
        Some(e) => {
            let t = e.tag();
            Ok((
                (u32::from(t.0) << 16) | u32::from(t.1),
                Some(e.vr().relaxed().to_bytes()),
            ))
        }
        None => err(format!("unknown keyword {key:?}")),
    }
}

/// Binary VRs and their value size.
fn binary_size(vr: [u8; 2]) -> Option<usize> {
    match &vr {
        b"US" | b"SS" => Some(2),
        b"UL" | b"SL" | b"FL" => Some(4),
        b"FD" | b"SV" | b"UV" => Some(8),
        _ => None,
    }
}

fn number_bytes(vr: [u8; 2], n: &serde_json::Number) -> Result<Vec<u8>, QueryError> {
    let bad = || {
        QueryError(format!(
            "{n} does not fit VR {}",
            String::from_utf8_lossy(&vr)
        ))
    };
    let i = || n.as_i64().ok_or_else(bad);
    Ok(match &vr {
        b"US" => u16::try_from(i()?)
            .map_err(|_| bad())?
            .to_le_bytes()
            .to_vec(),
        b"SS" => i16::try_from(i()?)
            .map_err(|_| bad())?
            .to_le_bytes()
            .to_vec(),
        b"UL" => u32::try_from(i()?)
            .map_err(|_| bad())?
            .to_le_bytes()
            .to_vec(),
        b"SL" => i32::try_from(i()?)
            .map_err(|_| bad())?
            .to_le_bytes()
            .to_vec(),
        b"SV" => i()?.to_le_bytes().to_vec(),
        b"UV" => n.as_u64().ok_or_else(bad)?.to_le_bytes().to_vec(),
        b"FL" => (n.as_f64().ok_or_else(bad)? as f32).to_le_bytes().to_vec(),
        b"FD" => n.as_f64().ok_or_else(bad)?.to_le_bytes().to_vec(),
        _ => n.to_string().into_bytes(),
    })
}

/// One JSON scalar as value bytes for `vr`.
fn scalar(vr: [u8; 2], v: &Value) -> Result<Vec<u8>, QueryError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if binary_size(vr).is_some() => match s.parse::<serde_json::Number>() {
            Ok(n) => number_bytes(vr, &n),
            Err(_) => err(format!("{s:?} is not a number")),
        },
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Number(n) => number_bytes(vr, n),
        // DICOM JSON person name.
        Value::Object(o) if vr == *b"PN" => Ok(["Alphabetic", "Ideographic", "Phonetic"]
            .iter()
            .map(|k| o.get(*k).and_then(Value::as_str).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("=")
            .trim_end_matches('=')
            .as_bytes()
            .to_vec()),
        other => err(format!("unsupported value {other}")),
    }
}

/// Several values: text joined with `\`, binary concatenated.
fn values(vr: [u8; 2], vs: &[Value]) -> Result<Vec<u8>, QueryError> {
    let parts = vs
        .iter()
        .map(|v| scalar(vr, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if binary_size(vr).is_some() {
        parts.concat()
    } else {
        parts.join(&b'\\')
    })
}

fn item(map: &serde_json::Map<String, Value>) -> Result<Item, QueryError> {
    let mut out = Item::new();
    for (k, v) in map {
        let (tag, dict_vr) = resolve(k)?;
        out.insert(tag, node(k, dict_vr, v)?);
    }
    Ok(out)
}

fn node(key: &str, dict_vr: Option<[u8; 2]>, v: &Value) -> Result<Node, QueryError> {
    // DICOM JSON attribute object.
    if let Value::Object(o) = v {
        if let Some(vr) = o.get("vr").and_then(Value::as_str) {
            let vr: [u8; 2] = vr
                .as_bytes()
                .try_into()
                .map_err(|_| QueryError(format!("{key}: bad vr {vr:?}")))?;
            let empty = Vec::new();
            let vals = match o.get("Value") {
                Some(Value::Array(a)) => a,
                None | Some(Value::Null) => &empty,
                Some(other) => return err(format!("{key}: Value must be an array, not {other}")),
            };
            if vr == *b"SQ" {
                let items = vals
                    .iter()
                    .map(|i| match i {
                        Value::Object(m) => item(m),
                        other => err(format!("{key}: sequence item {other} is not an object")),
                    })
                    .collect::<Result<_, _>>()?;
                return Ok(Node::Seq(items));
            }
            return Ok(Node::Value(vr, values(vr, vals)?));
        }
    }
    let Some(vr) = dict_vr else {
        return err(format!(
            "{key}: tag not in the dictionary; use the DICOM JSON form with \"vr\""
        ));
    };
    match v {
        Value::Object(m) => Ok(Node::Seq(vec![item(m)?])),
        Value::Array(a) if vr == *b"SQ" || a.iter().any(Value::is_object) => Ok(Node::Seq(
            a.iter()
                .map(|i| match i {
                    Value::Object(m) => item(m),
                    other => err(format!("{key}: sequence item {other} is not an object")),
                })
                .collect::<Result<_, _>>()?,
        )),
        Value::Array(a) => Ok(Node::Value(vr, values(vr, a)?)),
        _ if vr == *b"SQ" => match v {
            // Empty sequence: universal match of the sequence.
            Value::Null => Ok(Node::Seq(Vec::new())),
            Value::String(s) if s.is_empty() => Ok(Node::Seq(Vec::new())),
            other => err(format!("{key}: a sequence needs an object, not {other}")),
        },
        scalar_value => Ok(Node::Value(vr, scalar(vr, scalar_value)?)),
    }
}

impl Query {
    /// Parses a query from JSON text.
    pub fn parse(json: &str) -> Result<Query, QueryError> {
        let v: Value = serde_json::from_str(json).map_err(|e| QueryError(e.to_string()))?;
        match v {
            Value::Object(m) => Ok(Query { root: item(&m)? }),
            _ => err("top level must be a JSON object"),
        }
    }

    /// A default Modality Worklist query: every scheduled procedure step, returning patient,
    /// accession and the step's modality, station, date and time.
    pub fn default_worklist() -> Query {
        Query::parse(
            r#"{"AccessionNumber": "", "PatientName": "", "PatientID": "",
                "StudyInstanceUID": "",
                "ScheduledProcedureStepSequence": {"Modality": "", "ScheduledStationAETitle": "",
                  "ScheduledProcedureStepStartDate": "", "ScheduledProcedureStepStartTime": "",
                  "ScheduledProcedureStepID": ""}}"#,
        )
        .expect("built-in query is valid")
    }

    /// Encodes the identifier in `ts` (sequences and items with undefined length).
    pub fn encode(&self, ts: Ts) -> Vec<u8> {
        let mut e = Encoder::new(ts);
        encode_item(&mut e, &self.root, ts);
        e.buf
    }
}

fn encode_item(e: &mut Encoder, item: &Item, ts: Ts) {
    for (tag, n) in item {
        let (g, el) = ((tag >> 16) as u16, *tag as u16);
        match n {
            Node::Value(vr, v) => {
                let mut v = v.clone();
                if let (Ts::ExplicitBe, Some(sz)) = (ts, binary_size(*vr)) {
                    for c in v.chunks_mut(sz) {
                        c.reverse();
                    }
                }
                e.element(g, el, *vr, &v);
            }
            Node::Seq(items) => {
                e.sequence_start(g, el);
                for i in items {
                    e.item_start();
                    encode_item(e, i, ts);
                    e.item_end();
                }
                e.sequence_end();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_and_dicom_json_forms() {
        let q = Query::parse(
            r#"{"PatientName": "DOE*", "00100020": {"vr": "LO", "Value": ["42"]},
                "ScheduledProcedureStepSequence": {"Modality": "CT"},
                "(0008,0020)": null}"#,
        )
        .unwrap();
        let b = q.encode(Ts::ExplicitLe);
        // (0008,0020) DA empty first, in tag order.
        assert_eq!(&b[..8], b"\x08\x00\x20\x00DA\x00\x00");
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("PN\x04\x00DOE*"));
        assert!(text.contains("LO\x02\x0042"));
        // SQ with undefined length, one item, Modality inside.
        assert!(b
            .windows(12)
            .any(|w| w == b"\x40\x00\x00\x01SQ\x00\x00\xFF\xFF\xFF\xFF"));
        assert!(text.contains("CS\x02\x00CT"));
        assert!(b.ends_with(b"\xFE\xFF\xDD\xE0\x00\x00\x00\x00"));
        let i = q.encode(Ts::ImplicitLe);
        assert_eq!(&i[..8], b"\x08\x00\x20\x00\x00\x00\x00\x00");
    }

    #[test]
    fn errors_are_named() {
        assert!(Query::parse(r#"{"NoSuchKeyword": ""}"#)
            .unwrap_err()
            .to_string()
            .contains("NoSuchKeyword"));
        assert!(Query::parse("[1]").is_err());
        assert!(Query::parse(r#"{"00091001": "x"}"#).is_err());
        Query::parse(r#"{"00091001": {"vr": "LO", "Value": ["x"]}}"#).unwrap();
        let n = Query::parse(r#"{"Rows": 512}"#)
            .unwrap()
            .encode(Ts::ExplicitBe);
        assert_eq!(&n[n.len() - 2..], &[0x02, 0x00]);
        assert!(!Query::default_worklist().encode(Ts::ExplicitLe).is_empty());
    }
}
