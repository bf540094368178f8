//! Modality Worklist Information Model – FIND (PS3.4 Annex K): the C-FIND SCP's pure part.
//!
//! The identifier bytes arrive in the presentation context's transfer syntax; they are decoded
//! here, turned into a [`Query`] and run against the [`WorklistStore`] cache. A refused
//! identifier is answered with the standard failure status (A900 "Identifier does not match SOP
//! Class", C000 "Unable to process") and the association stays up — a modality with a bad key
//! gets an answer, not a dropped connection. The association engine's shared C-FIND responder
//! sends one pending response per match and honours C-CANCEL between them.

use dicom_core::Tag;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::net::dimse::command::Command;
use crate::net::dimse::find::FindAnswer;
use crate::worklist::{Dataset, Query, WorklistStore};

/// Modality Worklist Information Model – FIND SOP Class UID.
pub const SOP_CLASS: &str = "1.2.840.10008.5.1.4.31";

/// C-FIND statuses (PS3.4 K.4.1.1.4, PS3.7 C.4.1.1.4): the FIND services' common ones, and
/// this service's refusal of another SOP class.
pub mod status {
    pub use crate::net::dimse::find::status::*;
    /// SOP class not supported on this context.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
}

/// The outcome of one C-FIND-RQ.
#[derive(Debug)]
pub enum FindOutcome {
    /// The projected matches, in worklist order: one pending response each, then success.
    Matches(Vec<Dataset>),
    /// The request is refused with this final status.
    Refused {
        /// The status.
        status: u16,
        /// Error Comment (≤ 64 characters).
        comment: String,
        /// Offending Element, when one attribute is at fault.
        offending: Option<Tag>,
    },
}

/// Decodes a dataset received in `ts` (a transfer syntax UID as negotiated). An odd length is
/// refused first: the parser would read the stray byte as a clean end of data.
pub fn read_dataset(bytes: &[u8], ts: &str) -> Result<InMemDicomObject, String> {
    if !bytes.len().is_multiple_of(2) {
        return Err(format!("dataset of odd length {}", bytes.len()));
    }
    // The decoder below builds nested sequences recursively: depth, element count and framing
    // are checked first, iteratively, so a hostile identifier gets an answer, not a stack
    // overflow (audit C1).
    crate::dicom::scan::check(
        bytes,
        ts,
        &crate::dicom::scan::Limits::before_dicom_object(),
    )
    .map_err(|e| e.error_comment())?;
    let syntax = TransferSyntaxRegistry
        .get(ts.trim_end_matches('\0'))
        .ok_or_else(|| format!("transfer syntax {ts} unknown"))?;
    InMemDicomObject::read_dataset_with_ts(bytes, syntax)
        .map_err(|e| format!("cannot decode the dataset: {e}"))
}

/// Encodes a response dataset in `ts`.
pub fn write_dataset(obj: &InMemDicomObject, ts: &str) -> Result<Vec<u8>, String> {
    let syntax = TransferSyntaxRegistry
        .get(ts.trim_end_matches('\0'))
        .ok_or_else(|| format!("transfer syntax {ts} unknown"))?;
    let mut out = Vec::with_capacity(512);
    obj.write_dataset_with_ts(&mut out, syntax)
        .map_err(|e| format!("cannot encode the dataset: {e}"))?;
    Ok(out)
}

fn refused(status: u16, comment: impl Into<String>, offending: Option<Tag>) -> FindOutcome {
    FindOutcome::Refused {
        status,
        comment: comment.into().chars().take(64).collect(),
        offending,
    }
}

/// Runs a C-FIND-RQ: the command's SOP class, the identifier bytes in `ts`, at most `limit`
/// matches (the SCP's configured cap; `None`: all).
pub fn find(
    store: &WorklistStore,
    cmd: &Command,
    identifier: &[u8],
    ts: &str,
    limit: Option<usize>,
) -> FindOutcome {
    if cmd.affected_sop_class_uid.as_deref() != Some(SOP_CLASS) {
        return refused(
            status::SOP_CLASS_NOT_SUPPORTED,
            "only Modality Worklist FIND is served here",
            None,
        );
    }
    let obj = match read_dataset(identifier, ts) {
        Ok(o) => o,
        Err(e) => return refused(status::IDENTIFIER_DOES_NOT_MATCH, e, None),
    };
    match Query::from_identifier(&obj) {
        Ok(query) => FindOutcome::Matches(store.find(&query, limit)),
        Err(e) => refused(e.status(), e.error_comment(), e.offending_element()),
    }
}

pub use crate::net::dimse::find::{ascii64, final_response, pending_response};

/// Runs a C-FIND-RQ (on the worklist pool) and encodes each match in `ts`, so the core that
/// streams the responses only sends bytes.
pub fn find_encoded(
    store: &WorklistStore,
    cmd: &Command,
    identifier: &[u8],
    ts: &str,
    limit: Option<usize>,
) -> FindAnswer {
    match find(store, cmd, identifier, ts, limit) {
        FindOutcome::Refused {
            status,
            comment,
            offending,
        } => FindAnswer::Refused {
            status,
            comment,
            offending,
        },
        FindOutcome::Matches(matches) => {
            let mut out = Vec::with_capacity(matches.len());
            for ds in &matches {
                match write_dataset(&ds.to_dicom(), ts) {
                    Ok(b) => out.push(b),
                    Err(e) => {
                        return FindAnswer::Refused {
                            status: status::UNABLE_TO_PROCESS,
                            comment: e,
                            offending: None,
                        }
                    }
                }
            }
            FindAnswer::Matches(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dimse::command::decode_command;
    use crate::net::dimse::command::CommandField;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags as t;

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

    fn rq() -> Command {
        Command {
            command_field: CommandField::CFindRq as u16,
            message_id: 7,
            affected_sop_class_uid: Some(SOP_CLASS.into()),
            has_dataset: true,
            ..Command::default()
        }
    }

    fn store_with_items(dir: &std::path::Path) -> WorklistStore {
        let store = WorklistStore::open_in(dir).unwrap();
        let json = r#"[
          {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
           "00100020": {"vr": "LO", "Value": ["P1"]},
           "00080050": {"vr": "SH", "Value": ["ACC1"]},
           "00400100": {"vr": "SQ", "Value": [{
              "00080060": {"vr": "CS", "Value": ["CT"]},
              "00400001": {"vr": "AE", "Value": ["CT01"]},
              "00400002": {"vr": "DA", "Value": ["20261122"]}}]}},
          {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Roe^Rick"}]},
           "00100020": {"vr": "LO", "Value": ["P2"]},
           "00080050": {"vr": "SH", "Value": ["ACC2"]},
           "00400100": {"vr": "SQ", "Value": [{
              "00080060": {"vr": "CS", "Value": ["MR"]},
              "00400001": {"vr": "AE", "Value": ["MR01"]},
              "00400002": {"vr": "DA", "Value": ["20261123"]}}]}}
        ]"#;
        let items = crate::worklist::model::parse_items(json).unwrap();
        store.create_many(items, crate::audit::no_audit).unwrap();
        store
    }

    fn identifier(name: &str) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            t::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from(name),
        ));
        obj.put(DataElement::new(
            t::PATIENT_ID,
            VR::LO,
            PrimitiveValue::Empty,
        ));
        obj
    }

    #[test]
    fn finds_over_wire_bytes_in_both_little_endian_syntaxes() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_items(dir.path());
        for ts in [EXPLICIT_LE, IMPLICIT_LE] {
            let bytes = write_dataset(&identifier("doe*"), ts).unwrap();
            match find(&store, &rq(), &bytes, ts, None) {
                FindOutcome::Matches(m) => {
                    assert_eq!(m.len(), 1, "{ts}");
                    assert_eq!(m[0].str(t::PATIENT_ID), Some("P1"));
                    // Only the requested keys come back.
                    assert_eq!(m[0].len(), 2, "{ts}");
                    let back =
                        read_dataset(&write_dataset(&m[0].to_dicom(), ts).unwrap(), ts).unwrap();
                    assert_eq!(back.element(t::PATIENT_ID).unwrap().to_str().unwrap(), "P1");
                }
                other => panic!("{ts}: {other:?}"),
            }
        }
        let bytes = write_dataset(&identifier("*"), EXPLICIT_LE).unwrap();
        assert!(matches!(
            find(&store, &rq(), &bytes, EXPLICIT_LE, Some(1)),
            FindOutcome::Matches(m) if m.len() == 1
        ));
    }

    #[test]
    fn refusals_carry_standard_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_items(dir.path());
        // A truncated element (PatientName declaring 100 bytes, 2 present): A900, no panic.
        let truncated = [0x10, 0x00, 0x10, 0x00, b'P', b'N', 100, 0, b'A', b'B'];
        let out = find(&store, &rq(), &truncated, EXPLICIT_LE, None);
        assert!(
            matches!(out, FindOutcome::Refused { status: 0xA900, .. }),
            "{out:?}"
        );
        // Odd length: refused, not read as an empty (universal) identifier.
        let out = find(&store, &rq(), &[0x10, 0x00, 0x10], EXPLICIT_LE, None);
        assert!(
            matches!(out, FindOutcome::Refused { status: 0xA900, .. }),
            "{out:?}"
        );
        // A bad date range: C000 naming the element.
        let mut obj = identifier("");
        obj.put(DataElement::new(
            t::PATIENT_BIRTH_DATE,
            VR::DA,
            PrimitiveValue::from("2026-13-45"),
        ));
        let bytes = write_dataset(&obj, EXPLICIT_LE).unwrap();
        match find(&store, &rq(), &bytes, EXPLICIT_LE, None) {
            FindOutcome::Refused {
                status, offending, ..
            } => {
                assert_eq!(status, 0xC000);
                assert_eq!(offending, Some(t::PATIENT_BIRTH_DATE));
            }
            other => panic!("{other:?}"),
        }
        // Another SOP class on the command: 0122.
        let mut other = rq();
        other.affected_sop_class_uid = Some("1.2.840.10008.5.1.4.1.2.1.1".into());
        let bytes = write_dataset(&identifier(""), EXPLICIT_LE).unwrap();
        assert!(matches!(
            find(&store, &other, &bytes, EXPLICIT_LE, None),
            FindOutcome::Refused { status: 0x0122, .. }
        ));
    }

    #[test]
    fn responses_decode_as_c_find_rsp() {
        let p = decode_command(&pending_response(&rq())).unwrap();
        assert_eq!(p.command_field, 0x8020);
        assert_eq!(p.message_id, 7);
        assert_eq!(p.status, Some(0xFF00));
        assert!(p.has_dataset);
        let f = decode_command(&final_response(
            &rq(),
            0xC000,
            Some("bad key \u{1}é"),
            Some(t::PATIENT_ID),
        ))
        .unwrap();
        assert_eq!(f.status, Some(0xC000));
        assert!(!f.has_dataset);
    }
}
