//! Storage Commitment Push Model SOP Class (PS3.4 Annex J): the N-ACTION request's pure part.
//!
//! A modality asks the archive to take responsibility for instances it sent: an N-ACTION-RQ
//! with Action Type ID 1 ("Request Storage Commitment") on the well-known SOP instance
//! 1.2.840.10008.1.20.1.1, whose dataset carries a Transaction UID and the Referenced SOP
//! Sequence (class and instance of each object). The answer comes later, in an
//! N-EVENT-REPORT naming the committed and the failed references.
//!
//! This module checks the command and decodes that dataset, before anything is looked up: the
//! bytes are an untrusted peer's, so they go through the structure scan
//! ([`read_dataset`]: depth, element count, framing) and every UID is checked for syntax. A
//! malformed request is refused with the N-ACTION status the standard names (PS3.7 10.1.4.1.10)
//! and an Error Comment saying what and where, never with a dropped association.

pub mod report;
pub mod scu;

use dicom_core::value::Value as DicomValue;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::dicom::uid::validate_uid;
use crate::net::dimse::command::Command;
use crate::net::dimse::dataset::read_dataset;

/// The Storage Commitment SCP as a port offers it. The association engine answers the
/// N-ACTION (`net::association::commitment`); [`report`] judges and delivers.
#[derive(Debug, Clone)]
pub struct CommitmentScp {
    /// Read-your-writes: "durably stored and indexed" is judged after the checkpoint of
    /// everything acknowledged before the request.
    pub settle: Option<std::sync::Arc<dyn crate::net::services::query_retrieve_find::Settled>>,
    /// The index the references are checked against.
    pub index: std::sync::Arc<crate::store::index::Index>,
    /// Threads lookups and report associations run on (never a core).
    pub pool: crate::rt::WorkPool,
    /// Requestors' AE titles for reports on a new association: the destination table.
    pub destinations: std::sync::Arc<dyn crate::net::services::Destinations>,
    /// Our AE title (calling AE title of report associations).
    pub ae_title: String,
    /// Where reports go.
    pub report: crate::config::CommitmentReport,
    /// The data directory: an indexed instance is committed only if its file is there.
    pub data_root: std::path::PathBuf,
    /// Which requests open associations are reporting, and the reporter's wake-up call.
    pub reports: std::sync::Arc<report::Reports>,
}

/// Storage Commitment Push Model SOP Class UID.
pub const SOP_CLASS: &str = "1.2.840.10008.1.20.1";

/// The well-known SOP Instance UID every request names (PS3.4 J.3.5).
pub const WELL_KNOWN_INSTANCE: &str = "1.2.840.10008.1.20.1.1";

/// Most Referenced SOP Sequence items in one N-ACTION: the 1 MiB dataset bound alone lets a
/// request name ~15,000 references, each recorded, judged (an index read and a `stat`) and
/// reported; a request beyond it is refused with 0213 and nothing is recorded. A modality
/// commits a study or a series per request, far below it.
pub const MAX_REFERENCES: usize = 10_000;

/// Action Type ID of "Request Storage Commitment".
pub const REQUEST_STORAGE_COMMITMENT: u16 = 1;

/// N-ACTION statuses used here (PS3.7 10.1.4.1.10).
pub mod status {
    /// Success: the request is taken; the result follows in an N-EVENT-REPORT.
    pub const SUCCESS: u16 = 0x0000;
    /// Processing failure (the dataset cannot be decoded).
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// No such SOP Instance (the request does not name the well-known instance).
    pub const NO_SUCH_SOP_INSTANCE: u16 = 0x0112;
    /// Invalid argument value (a missing, empty or malformed attribute of the request).
    pub const INVALID_ARGUMENT_VALUE: u16 = 0x0115;
    /// No such SOP Class.
    pub const NO_SUCH_SOP_CLASS: u16 = 0x0118;
    /// No such action (an Action Type ID other than 1).
    pub const NO_SUCH_ACTION: u16 = 0x0123;
    /// Resource limitation (the service's work queue is full, a quota or a bound is reached,
    /// or the report could not be delivered).
    pub const RESOURCE_LIMITATION: u16 = 0x0213;
}

/// One object the requester wants committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Referenced SOP Class UID (0008,1150), padding removed.
    pub sop_class_uid: String,
    /// Referenced SOP Instance UID (0008,1155), padding removed.
    pub sop_instance_uid: String,
}

/// A decoded Storage Commitment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitmentRequest {
    /// Transaction UID (0008,1195): names the request in the N-EVENT-REPORT.
    pub transaction_uid: String,
    /// Referenced SOP Sequence (0008,1199), in the order received (never empty).
    pub references: Vec<Reference>,
}

/// Why a request is refused: the N-ACTION-RSP status, an Error Comment, and the attribute at
/// fault when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status.
    pub status: u16,
    /// Error Comment (≤ 64 characters once sent).
    pub comment: String,
    /// The attribute at fault (top level of the dataset).
    pub attribute: Option<Tag>,
}

impl Refusal {
    fn new(status: u16, comment: impl Into<String>, attribute: Option<Tag>) -> Self {
        Refusal {
            status,
            comment: comment.into(),
            attribute,
        }
    }
}

/// Checks an N-ACTION-RQ's command: the SOP class, the well-known instance and the action.
pub fn check_command(cmd: &Command) -> Result<(), Refusal> {
    if cmd.requested_sop_class_uid.as_deref() != Some(SOP_CLASS) {
        return Err(Refusal::new(
            status::NO_SUCH_SOP_CLASS,
            "not the Storage Commitment Push Model SOP class",
            None,
        ));
    }
    if cmd.requested_sop_instance_uid.as_deref() != Some(WELL_KNOWN_INSTANCE) {
        return Err(Refusal::new(
            status::NO_SUCH_SOP_INSTANCE,
            "the request must name the instance 1.2.840.10008.1.20.1.1",
            None,
        ));
    }
    if cmd.action_type_id != Some(REQUEST_STORAGE_COMMITMENT) {
        return Err(Refusal::new(
            status::NO_SUCH_ACTION,
            "only Action Type ID 1 (Request Storage Commitment)",
            None,
        ));
    }
    Ok(())
}

/// Decodes the N-ACTION-RQ dataset received in `ts` (a transfer syntax UID as negotiated).
pub fn decode_request(bytes: &[u8], ts: &str) -> Result<CommitmentRequest, Refusal> {
    let obj =
        read_dataset(bytes, ts).map_err(|e| Refusal::new(status::PROCESSING_FAILURE, e, None))?;
    let transaction_uid = uid(&obj, tags::TRANSACTION_UID, "Transaction UID")
        .map_err(|m| invalid(m, tags::TRANSACTION_UID))?;
    let seq = tags::REFERENCED_SOP_SEQUENCE;
    let items = match obj.get(seq).map(|e| e.value()) {
        Some(DicomValue::Sequence(s)) => s.items(),
        Some(_) => return Err(invalid("Referenced SOP Sequence is not a sequence", seq)),
        None => return Err(invalid("Referenced SOP Sequence is missing", seq)),
    };
    if items.is_empty() {
        return Err(invalid("Referenced SOP Sequence is empty", seq));
    }
    if items.len() > MAX_REFERENCES {
        // Before a reference is converted, recorded or judged: nothing is kept.
        return Err(Refusal::new(
            status::RESOURCE_LIMITATION,
            format!("more than {MAX_REFERENCES} references in one request"),
            Some(seq),
        ));
    }
    let references = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |tag, name| {
                uid(item, tag, name).map_err(|m| {
                    invalid(format!("Referenced SOP Sequence item {}: {m}", i + 1), seq)
                })
            };
            Ok(Reference {
                sop_class_uid: field(tags::REFERENCED_SOP_CLASS_UID, "Referenced SOP Class UID")?,
                sop_instance_uid: field(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    "Referenced SOP Instance UID",
                )?,
            })
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    Ok(CommitmentRequest {
        transaction_uid,
        references,
    })
}

fn invalid(comment: impl Into<String>, attribute: Tag) -> Refusal {
    Refusal::new(status::INVALID_ARGUMENT_VALUE, comment, Some(attribute))
}

/// A single-valued UID attribute of `obj`, padding removed and its syntax checked.
fn uid(obj: &InMemDicomObject, tag: Tag, name: &str) -> Result<String, String> {
    let e = obj.get(tag).ok_or_else(|| format!("{name} is missing"))?;
    let text = e
        .to_str()
        .map_err(|_| format!("{name} is not a text value"))?;
    if text.contains('\\') {
        return Err(format!("{name} has more than one value"));
    }
    let v = validate_uid(&text).map_err(|err| format!("{name}: {err}"))?;
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dimse::command::CommandField;
    use crate::net::dimse::dataset::write_dataset;
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    fn item(class: Option<&str>, instance: Option<&str>) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        if let Some(c) = class {
            o.put(DataElement::new(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(c),
            ));
        }
        if let Some(i) = instance {
            o.put(DataElement::new(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(i),
            ));
        }
        o
    }

    fn request(transaction: Option<&str>, items: Vec<InMemDicomObject>) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        if let Some(t) = transaction {
            o.put(DataElement::new(
                tags::TRANSACTION_UID,
                VR::UI,
                PrimitiveValue::from(t),
            ));
        }
        o.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(items),
        ));
        o
    }

    fn action(class: &str, instance: &str, action: Option<u16>) -> Command {
        Command {
            command_field: CommandField::NActionRq as u16,
            message_id: 1,
            requested_sop_class_uid: Some(class.into()),
            requested_sop_instance_uid: Some(instance.into()),
            action_type_id: action,
            has_dataset: true,
            ..Command::default()
        }
    }

    #[test]
    fn a_request_decodes_in_both_little_endian_syntaxes() {
        let obj = request(
            Some("1.2.3.99"),
            vec![
                item(Some(CT), Some("1.2.3.4.1")),
                item(Some(CT), Some("1.2.3.4.2")),
            ],
        );
        for ts in [IMPLICIT_LE, EXPLICIT_LE] {
            let bytes = write_dataset(&obj, ts).unwrap();
            let r = decode_request(&bytes, ts).unwrap();
            assert_eq!(r.transaction_uid, "1.2.3.99");
            assert_eq!(
                r.references,
                vec![
                    Reference {
                        sop_class_uid: CT.into(),
                        sop_instance_uid: "1.2.3.4.1".into()
                    },
                    Reference {
                        sop_class_uid: CT.into(),
                        sop_instance_uid: "1.2.3.4.2".into()
                    },
                ]
            );
        }
    }

    #[test]
    fn malformed_requests_are_refused_naming_what_is_wrong() {
        let refuse = |obj: InMemDicomObject| {
            decode_request(&write_dataset(&obj, EXPLICIT_LE).unwrap(), EXPLICIT_LE).unwrap_err()
        };
        let ok_item = || item(Some(CT), Some("1.2.3.4.1"));
        let r = refuse(request(None, vec![ok_item()]));
        assert_eq!(r.status, status::INVALID_ARGUMENT_VALUE);
        assert_eq!(r.attribute, Some(tags::TRANSACTION_UID));
        assert!(r.comment.contains("Transaction UID is missing"), "{r:?}");

        let r = refuse(request(Some("1.2.x"), vec![ok_item()]));
        assert_eq!(r.attribute, Some(tags::TRANSACTION_UID));

        let r = refuse(request(Some("1.2.3"), vec![]));
        assert!(r.comment.contains("empty"), "{r:?}");
        assert_eq!(r.attribute, Some(tags::REFERENCED_SOP_SEQUENCE));

        let r = refuse(request(
            Some("1.2.3"),
            vec![ok_item(), item(Some(CT), None)],
        ));
        assert!(
            r.comment
                .contains("item 2: Referenced SOP Instance UID is missing"),
            "{r:?}"
        );
        let r = refuse(request(
            Some("1.2.3"),
            vec![item(Some("1..2"), Some("1.2.3.4.1"))],
        ));
        assert!(
            r.comment.contains("item 1: Referenced SOP Class UID"),
            "{r:?}"
        );

        let mut no_seq = InMemDicomObject::new_empty();
        no_seq.put(DataElement::new(
            tags::TRANSACTION_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3"),
        ));
        let r = refuse(no_seq);
        assert!(
            r.comment.contains("Referenced SOP Sequence is missing"),
            "{r:?}"
        );
    }

    #[test]
    fn undecodable_or_hostile_bytes_are_a_processing_failure() {
        // Odd length, a truncated element, and 5,000 nested sequences (refused by the scan
        // before the recursive decoder sees them).
        assert_eq!(
            decode_request(&[0x08, 0x00, 0x95], IMPLICIT_LE)
                .unwrap_err()
                .status,
            status::PROCESSING_FAILURE
        );
        let truncated = [0x08, 0x00, 0x95, 0x11, 100, 0, 0, 0, b'1', b'.'];
        assert_eq!(
            decode_request(&truncated, IMPLICIT_LE).unwrap_err().status,
            status::PROCESSING_FAILURE
        );
        let mut nested = Vec::new();
        for _ in 0..5_000 {
            nested.extend_from_slice(&[0x08, 0x00, 0x99, 0x11, 0xff, 0xff, 0xff, 0xff]);
            nested.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff]);
        }
        let r = decode_request(&nested, IMPLICIT_LE).unwrap_err();
        assert_eq!(r.status, status::PROCESSING_FAILURE);
    }

    #[test]
    fn the_command_must_name_the_class_the_instance_and_the_action() {
        use crate::net::dimse::command::{decode_command, tags as ct, CommandBuilder};
        // As a peer sends it: the Action Type ID is read off the wire.
        let wire = CommandBuilder::new()
            .uid(ct::REQUESTED_SOP_CLASS_UID, SOP_CLASS)
            .us(ct::COMMAND_FIELD, CommandField::NActionRq as u16)
            .us(ct::MESSAGE_ID, 5)
            .us(ct::COMMAND_DATA_SET_TYPE, 0)
            .uid(ct::REQUESTED_SOP_INSTANCE_UID, WELL_KNOWN_INSTANCE)
            .us(ct::ACTION_TYPE_ID, 1)
            .build();
        let cmd = decode_command(&wire).unwrap();
        assert_eq!(cmd.action_type_id, Some(1));
        assert!(check_command(&cmd).is_ok());
        assert!(check_command(&action(SOP_CLASS, WELL_KNOWN_INSTANCE, Some(1))).is_ok());
        let status_of = |c: Command| check_command(&c).unwrap_err().status;
        assert_eq!(
            status_of(action(CT, WELL_KNOWN_INSTANCE, Some(1))),
            status::NO_SUCH_SOP_CLASS
        );
        assert_eq!(
            status_of(action(SOP_CLASS, "1.2.3", Some(1))),
            status::NO_SUCH_SOP_INSTANCE
        );
        assert_eq!(
            status_of(action(SOP_CLASS, WELL_KNOWN_INSTANCE, Some(2))),
            status::NO_SUCH_ACTION
        );
        assert_eq!(
            status_of(action(SOP_CLASS, WELL_KNOWN_INSTANCE, None)),
            status::NO_SUCH_ACTION
        );
    }

    #[test]
    fn a_request_with_too_many_references_is_a_resource_limitation() {
        let items = |n: usize| {
            (0..n)
                .map(|i| item(Some(CT), Some(&format!("1.2.3.{i}"))))
                .collect::<Vec<_>>()
        };
        let at = request(Some("1.2.3.99"), items(MAX_REFERENCES));
        let bytes = write_dataset(&at, IMPLICIT_LE).unwrap();
        assert_eq!(
            decode_request(&bytes, IMPLICIT_LE)
                .unwrap()
                .references
                .len(),
            MAX_REFERENCES
        );
        let over = request(Some("1.2.3.99"), items(MAX_REFERENCES + 1));
        let bytes = write_dataset(&over, IMPLICIT_LE).unwrap();
        assert!(bytes.len() < 1 << 20, "within the dataset bound");
        let r = decode_request(&bytes, IMPLICIT_LE).unwrap_err();
        assert_eq!(r.status, status::RESOURCE_LIMITATION);
        assert_eq!(r.attribute, Some(tags::REFERENCED_SOP_SEQUENCE));
        assert!(r.comment.contains("more than 10000 references"), "{r:?}");
        assert!(r.comment.len() <= 64);
    }
}
