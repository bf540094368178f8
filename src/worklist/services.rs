//! The worklist behind the network services' ports: the MWL C-FIND service searches this
//! store ([`Worklist`]) and MPPS N-CREATE/N-SET run its state machine ([`ProcedureSteps`]).
//! The ports are defined by the services (`net` does not import the worklist); the tests here
//! run the services' pure parts against a real store.

use super::store::{MppsStoreError, WorklistStore};
use crate::dicom::dataset::Dataset;
use crate::dicom::matching::Query;
use crate::net::services::modality_performed_procedure_step::{ProcedureSteps, Refusal};
use crate::net::services::modality_worklist::Worklist;

impl Worklist for WorklistStore {
    fn find(&self, query: &Query, limit: Option<usize>) -> Vec<Dataset> {
        WorklistStore::find(self, query, limit)
    }
}

impl ProcedureSteps for WorklistStore {
    fn create(&self, instance: &str, attributes: Dataset) -> Result<(), Refusal> {
        self.mpps_create(instance, attributes)
            .map(drop)
            .map_err(|e| refusal(&e))
    }

    fn set(&self, instance: &str, modifications: &Dataset) -> Result<(), Refusal> {
        self.mpps_set(instance, modifications)
            .map(drop)
            .map_err(|e| refusal(&e))
    }
}

/// The state machine's refusal as the response states it; a database failure is 0110
/// Processing failure naming the database.
fn refusal(e: &MppsStoreError) -> Refusal {
    match e {
        MppsStoreError::Refused(r) => Refusal {
            status: r.status(),
            comment: r.error_comment(),
            error_id: r.error_id(),
            attributes: r.attributes(),
        },
        MppsStoreError::Store(s) => Refusal {
            status: 0x0110,
            comment: format!("database: {s}"),
            error_id: None,
            attributes: Vec::new(),
        },
    }
}

#[cfg(test)]
mod modality_worklist_tests {
    use crate::net::dimse::command::decode_command;
    use crate::net::dimse::command::Command;
    use crate::net::dimse::command::CommandField;
    use crate::net::services::modality_worklist::*;
    use crate::worklist::WorklistStore;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags as t;
    use dicom_object::InMemDicomObject;

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

#[cfg(test)]
mod modality_performed_procedure_step_tests {
    use crate::net::dimse::command::decode_command;
    use crate::net::dimse::command::{Command, CommandField};
    use crate::net::services::modality_performed_procedure_step::*;
    use crate::net::services::modality_worklist::write_dataset;
    use crate::worklist::WorklistStore;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags as t;
    use dicom_object::InMemDicomObject;

    const TS: &str = "1.2.840.10008.1.2";

    fn create_rq(uid: Option<&str>) -> Command {
        Command {
            command_field: CommandField::NCreateRq as u16,
            message_id: 3,
            affected_sop_class_uid: Some(SOP_CLASS.into()),
            affected_sop_instance_uid: uid.map(str::to_owned),
            has_dataset: true,
            ..Command::default()
        }
    }

    fn set_rq(uid: &str) -> Command {
        Command {
            command_field: CommandField::NSetRq as u16,
            message_id: 4,
            requested_sop_class_uid: Some(SOP_CLASS.into()),
            requested_sop_instance_uid: Some(uid.into()),
            has_dataset: true,
            ..Command::default()
        }
    }

    fn status_ds(status: &str) -> Vec<u8> {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            t::PERFORMED_PROCEDURE_STEP_STATUS,
            VR::CS,
            PrimitiveValue::from(status),
        ));
        write_dataset(&obj, TS).unwrap()
    }

    #[test]
    fn create_without_dataset_or_uid_and_set_after_completion() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorklistStore::open_in(dir.path()).unwrap();
        let a = n_create(&store, &create_rq(Some("1.2.3.4")), None, TS);
        assert_eq!(a.status, 0x0120);
        // A status other than IN PROGRESS at creation: 0106 naming the attribute, or a
        // missing required attribute first (the state machine decides which).
        let a = n_create(&store, &create_rq(None), Some(&status_ds("COMPLETED")), TS);
        assert_ne!(a.status, 0, "{a:?}");
        assert!(a.instance.starts_with("2.25."), "{a:?}");
        let rsp = decode_command(&response(&create_rq(None), &a)).unwrap();
        assert_eq!(rsp.command_field, 0x8140);
        assert_eq!(rsp.status, Some(a.status));
        assert_eq!(
            rsp.affected_sop_instance_uid.as_deref(),
            Some(a.instance.as_str())
        );
        // N-SET of an unknown instance: 0112.
        let a = n_set(
            &store,
            &set_rq("1.2.3.9"),
            Some(&status_ds("COMPLETED")),
            TS,
        );
        assert_eq!(a.status, 0x0112);
        assert_eq!(
            decode_command(&response(&set_rq("1.2.3.9"), &a))
                .unwrap()
                .command_field,
            0x8120
        );
        // Undecodable bytes: a processing failure, no panic.
        let truncated = [0x10, 0x00, 0x10, 0x00, 100, 0, 0, 0, b'A', b'B'];
        let a = n_set(&store, &set_rq("1.2.3.9"), Some(&truncated), TS);
        assert_eq!(a.status, 0x0110);
    }

    /// The log gets the whole comment; the wire value is cut to 64 characters (LO).
    #[test]
    fn a_long_comment_is_whole_in_the_answer_and_cut_on_the_wire() {
        let long = "x".repeat(100);
        let a = Answer::fail("1.2.3", status::PROCESSING_FAILURE, long.clone());
        assert_eq!(a.comment.as_deref(), Some(long.as_str()));
        let rsp = decode_command(&response(&create_rq(Some("1.2.3")), &a)).unwrap();
        assert_eq!(rsp.error_comment.as_deref(), Some(&long[..64]));
    }

    #[test]
    fn fresh_uids_are_valid_and_distinct() {
        let a = new_instance_uid();
        let b = new_instance_uid();
        assert_ne!(a, b);
        for u in [a, b] {
            assert!(u.len() <= 64);
            crate::dicom::uid::validate_uid(&u).unwrap();
        }
    }
}
