//! Modality Performed Procedure Step SOP Class (PS3.4 Annex F.7): the N-CREATE and N-SET
//! SCP's pure part.
//!
//! The state machine and the worklist linking live in `worklist::mpps` and
//! `worklist::store`; this module decodes the request's dataset, calls them and builds the
//! response command with the status, Error Comment, Error ID and Attribute Identifier List the
//! standard asks for, so a modality's refusal log names what was wrong.

use dicom_core::Tag;

use super::modality_worklist::{ascii64, read_dataset};
use crate::net::dimse::command::{tags, Command, CommandBuilder, CommandField, NO_DATASET};
use crate::worklist::{Dataset, MppsStoreError, WorklistStore};

/// Modality Performed Procedure Step SOP Class UID.
pub const SOP_CLASS: &str = "1.2.840.10008.3.1.2.3.3";

/// Statuses used besides those of `worklist::MppsError`.
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Invalid attribute value.
    pub const INVALID_ATTRIBUTE_VALUE: u16 = 0x0106;
    /// No such SOP class.
    pub const NO_SUCH_SOP_CLASS: u16 = 0x0118;
    /// Missing attribute (here: the N-CREATE or N-SET carried no dataset).
    pub const MISSING_ATTRIBUTE: u16 = 0x0120;
    /// Resource limitation (PS3.7 C.5.13): the worklist's work queue is full.
    pub const RESOURCE_LIMITATION: u16 = 0x0213;
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The SOP Instance UID the response names (assigned by us when an N-CREATE had none).
    pub instance: String,
    /// The status.
    pub status: u16,
    /// Error Comment.
    pub comment: Option<String>,
    /// Error ID.
    pub error_id: Option<u16>,
    /// Attribute Identifier List.
    pub attributes: Vec<Tag>,
}

impl Answer {
    fn ok(instance: &str) -> Self {
        Answer {
            instance: instance.to_owned(),
            status: status::SUCCESS,
            comment: None,
            error_id: None,
            attributes: Vec::new(),
        }
    }

    /// A failure answer with a comment.
    pub fn fail(instance: &str, status: u16, comment: impl Into<String>) -> Self {
        Answer {
            instance: instance.to_owned(),
            status,
            comment: Some(comment.into()),
            error_id: None,
            attributes: Vec::new(),
        }
    }

    fn from_store(instance: &str, e: &MppsStoreError) -> Self {
        match e {
            MppsStoreError::Refused(r) => Answer {
                instance: instance.to_owned(),
                status: r.status(),
                comment: Some(r.error_comment()),
                error_id: r.error_id(),
                attributes: r.attributes(),
            },
            MppsStoreError::Store(s) => Answer::fail(
                instance,
                status::PROCESSING_FAILURE,
                format!("database: {s}"),
            ),
        }
    }
}

/// A fresh UID for an N-CREATE that left the SOP Instance UID to us (PS3.7 10.1.5.1.2):
/// the UUID-derived form of PS3.5 B.2, so it needs no registered root.
pub fn new_instance_uid() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        b = fastrand::u128(..).to_le_bytes();
    }
    format!("2.25.{}", u128::from_le_bytes(b))
}

/// Decodes the request's dataset into the worklist model; a failure names the attribute.
fn dataset(bytes: Option<&[u8]>, ts: &str, instance: &str) -> Result<Dataset, Answer> {
    let Some(bytes) = bytes else {
        return Err(Answer::fail(
            instance,
            status::MISSING_ATTRIBUTE,
            "the request carries no dataset",
        ));
    };
    let obj = read_dataset(bytes, ts)
        .map_err(|e| Answer::fail(instance, status::PROCESSING_FAILURE, e))?;
    Dataset::from_dicom(&obj).map_err(|e| {
        let mut a = Answer::fail(instance, status::INVALID_ATTRIBUTE_VALUE, e.to_string());
        a.attributes = e.path().top_tag().into_iter().collect();
        a
    })
}

/// Handles an N-CREATE-RQ with its dataset (`None`: the command announced none).
pub fn n_create(store: &WorklistStore, cmd: &Command, data: Option<&[u8]>, ts: &str) -> Answer {
    let instance = match cmd.affected_sop_instance_uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_owned(),
        _ => new_instance_uid(),
    };
    if cmd.affected_sop_class_uid.as_deref() != Some(SOP_CLASS) {
        return Answer::fail(
            &instance,
            status::NO_SUCH_SOP_CLASS,
            "not the MPPS SOP class",
        );
    }
    let attributes = match dataset(data, ts, &instance) {
        Ok(d) => d,
        Err(a) => return a,
    };
    match store.mpps_create(&instance, attributes) {
        Ok(_) => Answer::ok(&instance),
        Err(e) => Answer::from_store(&instance, &e),
    }
}

/// Handles an N-SET-RQ with its dataset (the Modification List).
pub fn n_set(store: &WorklistStore, cmd: &Command, data: Option<&[u8]>, ts: &str) -> Answer {
    let instance = cmd.requested_sop_instance_uid.clone().unwrap_or_default();
    if cmd.requested_sop_class_uid.as_deref() != Some(SOP_CLASS) {
        return Answer::fail(
            &instance,
            status::NO_SUCH_SOP_CLASS,
            "not the MPPS SOP class",
        );
    }
    let modifications = match dataset(data, ts, &instance) {
        Ok(d) => d,
        Err(a) => return a,
    };
    match store.mpps_set(&instance, &modifications) {
        Ok(_) => Answer::ok(&instance),
        Err(e) => Answer::from_store(&instance, &e),
    }
}

/// The N-CREATE-RSP or N-SET-RSP command for `answer` (never with a dataset: the SCU has
/// what it sent, and PS3.4 F.7.2 makes the returned attributes optional).
pub fn response(rq: &Command, answer: &Answer) -> Vec<u8> {
    let field = rq.command_field | 0x8000;
    let mut b = CommandBuilder::new()
        .uid(tags::AFFECTED_SOP_CLASS_UID, SOP_CLASS)
        .us(tags::COMMAND_FIELD, field)
        .us(tags::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id)
        .us(tags::COMMAND_DATA_SET_TYPE, NO_DATASET)
        .us(tags::STATUS, answer.status);
    if let Some(c) = &answer.comment {
        b = b.text(tags::ERROR_COMMENT, &ascii64(c));
    }
    if let Some(id) = answer.error_id {
        b = b.us(tags::ERROR_ID, id);
    }
    if !answer.instance.is_empty() && crate::store::uid::validate_uid(&answer.instance).is_ok() {
        b = b.uid(tags::AFFECTED_SOP_INSTANCE_UID, &answer.instance);
    }
    if !answer.attributes.is_empty() {
        let list: Vec<(u16, u16)> = answer.attributes.iter().map(|t| (t.0, t.1)).collect();
        b = b.at(tags::ATTRIBUTE_IDENTIFIER_LIST, &list);
    }
    b.build()
}

/// Whether `field` is one this module answers.
pub fn handles(field: u16) -> bool {
    field == CommandField::NCreateRq as u16 || field == CommandField::NSetRq as u16
}

#[cfg(test)]
mod tests {
    use super::super::modality_worklist::write_dataset;
    use super::*;
    use crate::net::dimse::command::decode_command;
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

    #[test]
    fn fresh_uids_are_valid_and_distinct() {
        let a = new_instance_uid();
        let b = new_instance_uid();
        assert_ne!(a, b);
        for u in [a, b] {
            assert!(u.len() <= 64);
            crate::store::uid::validate_uid(&u).unwrap();
        }
    }
}
