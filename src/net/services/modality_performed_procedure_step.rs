//! Modality Performed Procedure Step SOP Class (PS3.4 Annex F.7): the N-CREATE and N-SET
//! SCP's pure part.
//!
//! The state machine and the worklist linking live above the network layer (`worklist::mpps`
//! and `worklist::store`, behind the [`ProcedureSteps`] port); this module decodes the
//! request's dataset, calls the port and builds the
//! response command with the status, Error Comment, Error ID and Attribute Identifier List the
//! standard asks for, so a modality's refusal log names what was wrong.

use dicom_core::Tag;

use super::modality_worklist::{ascii64, read_dataset};
use crate::dicom::dataset::Dataset;
use crate::net::dimse::command::{tags, Command, CommandBuilder, CommandField, NO_DATASET};

/// Where performed procedure steps are created and updated (the MPPS state machine and its
/// database). A port, so that the network layer does not depend on the worklist.
pub trait ProcedureSteps: Send + Sync + std::fmt::Debug {
    /// N-CREATE of `instance` with its attributes.
    fn create(&self, instance: &str, attributes: Dataset) -> Result<(), Refusal>;
    /// N-SET of `instance` with the Modification List.
    fn set(&self, instance: &str, modifications: &Dataset) -> Result<(), Refusal>;
}

/// Why a request was refused, in the response's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status (e.g. 0111, 0112, 0106, C310, or 0110 for a database failure).
    pub status: u16,
    /// Error Comment.
    pub comment: String,
    /// Error ID.
    pub error_id: Option<u16>,
    /// Attribute Identifier List.
    pub attributes: Vec<Tag>,
}

/// Modality Performed Procedure Step SOP Class UID.
pub const SOP_CLASS: &str = "1.2.840.10008.3.1.2.3.3";

/// Statuses this module answers itself (the state machine's come in a [`Refusal`]).
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

    fn refused(instance: &str, r: Refusal) -> Self {
        Answer {
            instance: instance.to_owned(),
            status: r.status,
            comment: Some(r.comment),
            error_id: r.error_id,
            attributes: r.attributes,
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
pub fn n_create(
    store: &dyn ProcedureSteps,
    cmd: &Command,
    data: Option<&[u8]>,
    ts: &str,
) -> Answer {
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
    match store.create(&instance, attributes) {
        Ok(()) => Answer::ok(&instance),
        Err(r) => Answer::refused(&instance, r),
    }
}

/// Handles an N-SET-RQ with its dataset (the Modification List).
pub fn n_set(store: &dyn ProcedureSteps, cmd: &Command, data: Option<&[u8]>, ts: &str) -> Answer {
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
    match store.set(&instance, &modifications) {
        Ok(()) => Answer::ok(&instance),
        Err(r) => Answer::refused(&instance, r),
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
    if !answer.instance.is_empty() && crate::dicom::uid::validate_uid(&answer.instance).is_ok() {
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
