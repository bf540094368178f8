//! The pure part of every C-FIND SCP (PS3.7 §9.1.2, PS3.4 C.4.1): what a service answers and
//! the response command sets. Modality Worklist uses it now and Query/Retrieve next; the
//! engine's responder (`net::association::find`) streams the answer.

use dicom_core::Tag;

use super::command::{tags, Command, CommandBuilder, CommandField, NO_DATASET};

/// C-FIND statuses common to the FIND services (PS3.4 C.4.1.1.4, K.4.1.1.4).
pub mod status {
    /// Matching is complete.
    pub const SUCCESS: u16 = 0x0000;
    /// Matches are continuing.
    pub const PENDING: u16 = 0xFF00;
    /// Matches are continuing, but one or more optional keys were not supported.
    pub const PENDING_OPTIONAL_KEYS_UNSUPPORTED: u16 = 0xFF01;
    /// Matching terminated due to a C-CANCEL.
    pub const CANCEL: u16 = 0xFE00;
    /// Refused: out of resources.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Identifier does not match SOP Class.
    pub const IDENTIFIER_DOES_NOT_MATCH: u16 = 0xA900;
    /// Unable to process.
    pub const UNABLE_TO_PROCESS: u16 = 0xC000;
}

/// What a C-FIND service answers.
#[derive(Debug)]
pub enum FindAnswer {
    /// The matches, each an identifier already encoded in the context's transfer syntax: one
    /// pending response each, then success.
    Matches(Vec<Vec<u8>>),
    /// As `Matches`, each pending response with this status (FF01: an optional key was not
    /// supported and treated as universal).
    MatchesWithStatus(u16, Vec<Vec<u8>>),
    /// The request is refused with this final status.
    Refused {
        /// The status.
        status: u16,
        /// Error Comment.
        comment: String,
        /// Offending Element, when one attribute is at fault.
        offending: Option<Tag>,
    },
}

/// An Error Comment value: printable ASCII, at most 64 characters (LO).
pub fn ascii64(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .take(64)
        .collect()
}

/// A pending C-FIND-RSP command set (an identifier follows).
pub fn pending_response(rq: &Command) -> Vec<u8> {
    pending_response_with(rq, status::PENDING)
}

/// A pending C-FIND-RSP command set with `pending` (FF00 or FF01).
pub fn pending_response_with(rq: &Command, pending: u16) -> Vec<u8> {
    CommandBuilder::new()
        .uid(
            tags::AFFECTED_SOP_CLASS_UID,
            rq.affected_sop_class_uid.as_deref().unwrap_or(""),
        )
        .us(tags::COMMAND_FIELD, CommandField::CFindRsp as u16)
        .us(tags::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id)
        .us(tags::COMMAND_DATA_SET_TYPE, 0x0000)
        .us(tags::STATUS, pending)
        .build()
}

/// The final C-FIND-RSP (success, cancel or a failure), without a dataset.
pub fn final_response(
    rq: &Command,
    status: u16,
    comment: Option<&str>,
    offending: Option<Tag>,
) -> Vec<u8> {
    let mut b = CommandBuilder::new()
        .uid(
            tags::AFFECTED_SOP_CLASS_UID,
            rq.affected_sop_class_uid.as_deref().unwrap_or(""),
        )
        .us(tags::COMMAND_FIELD, CommandField::CFindRsp as u16)
        .us(tags::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id)
        .us(tags::COMMAND_DATA_SET_TYPE, NO_DATASET)
        .us(tags::STATUS, status);
    if let Some(t) = offending {
        b = b.at(tags::OFFENDING_ELEMENT, &[(t.0, t.1)]);
    }
    if let Some(c) = comment {
        b = b.text(tags::ERROR_COMMENT, &ascii64(c));
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dimse::command::decode_command;

    /// A refusal's comment is kept whole for the log (a sequence-key message runs past 64
    /// characters); the final response carries the first 64 printable ASCII characters, as
    /// an LO holds (cargo-fuzz `mwl_identifier` checks this for every refusal).
    #[test]
    fn a_long_error_comment_is_cut_to_an_lo_on_the_wire() {
        let rq = Command {
            command_field: CommandField::CFindRq as u16,
            message_id: 7,
            affected_sop_class_uid: Some("1.2.840.10008.5.1.4.31".into()),
            has_dataset: true,
            ..Command::default()
        };
        let comment =
            "DoseReferenceSequence (300A,0010): a sequence key must have one item, it has 2";
        assert!(comment.len() > 64);
        let rsp = decode_command(&final_response(&rq, 0xA900, Some(comment), None)).unwrap();
        assert_eq!(rsp.status, Some(0xA900));
        // (The 64th is a space, which the decoder trims as LO padding.)
        assert_eq!(rsp.error_comment.as_deref(), Some(comment[..64].trim_end()));
        let odd = "Müller\u{7}: a \u{1b}[31mcoloured\u{1b}[0m value";
        let rsp = decode_command(&final_response(&rq, 0xC000, Some(odd), None)).unwrap();
        assert_eq!(
            rsp.error_comment.as_deref(),
            Some("Mller: a [31mcoloured[0m value")
        );
    }
}
