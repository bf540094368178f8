//! DIMSE command sets (PS3.7 §9.3, §E): decoding and encoding, always Implicit VR Little Endian.
//!
//! A command set is a flat list of group 0000 elements. [`decode_command`] is a pure function
//! over the reassembled command bytes; it keeps only the fields the services need and rejects
//! anything that would make a response ambiguous (odd lengths, overruns, other groups).
//! [`CommandBuilder`] writes a response with its Command Group Length computed.

/// Command Field values (PS3.7 §E.1), named as in the standard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
#[non_exhaustive]
pub enum CommandField {
    /// C-STORE-RQ
    CStoreRq = 0x0001,
    /// C-STORE-RSP
    CStoreRsp = 0x8001,
    /// C-GET-RQ
    CGetRq = 0x0010,
    /// C-GET-RSP
    CGetRsp = 0x8010,
    /// C-FIND-RQ
    CFindRq = 0x0020,
    /// C-FIND-RSP
    CFindRsp = 0x8020,
    /// C-MOVE-RQ
    CMoveRq = 0x0021,
    /// C-MOVE-RSP
    CMoveRsp = 0x8021,
    /// C-ECHO-RQ
    CEchoRq = 0x0030,
    /// C-ECHO-RSP
    CEchoRsp = 0x8030,
    /// C-CANCEL-RQ
    CCancelRq = 0x0FFF,
    /// N-SET-RQ
    NSetRq = 0x0120,
    /// N-SET-RSP
    NSetRsp = 0x8120,
    /// N-CREATE-RQ
    NCreateRq = 0x0140,
    /// N-CREATE-RSP
    NCreateRsp = 0x8140,
    /// N-EVENT-REPORT-RQ
    NEventReportRq = 0x0100,
    /// N-EVENT-REPORT-RSP
    NEventReportRsp = 0x8100,
    /// N-ACTION-RQ
    NActionRq = 0x0130,
    /// N-ACTION-RSP
    NActionRsp = 0x8130,
}

/// Command Data Set Type value meaning "no dataset follows" (PS3.7 §E.1).
pub const NO_DATASET: u16 = 0x0101;

/// Tags of the command group used here (PS3.7 Table E.1-1), as (group, element).
pub mod tags {
    /// Command Group Length
    pub const GROUP_LENGTH: (u16, u16) = (0x0000, 0x0000);
    /// Affected SOP Class UID
    pub const AFFECTED_SOP_CLASS_UID: (u16, u16) = (0x0000, 0x0002);
    /// Requested SOP Class UID (N-SET, N-GET, N-ACTION, N-DELETE)
    pub const REQUESTED_SOP_CLASS_UID: (u16, u16) = (0x0000, 0x0003);
    /// Command Field
    pub const COMMAND_FIELD: (u16, u16) = (0x0000, 0x0100);
    /// Message ID
    pub const MESSAGE_ID: (u16, u16) = (0x0000, 0x0110);
    /// Message ID Being Responded To
    pub const MESSAGE_ID_BEING_RESPONDED_TO: (u16, u16) = (0x0000, 0x0120);
    /// Priority
    pub const PRIORITY: (u16, u16) = (0x0000, 0x0700);
    /// Command Data Set Type
    pub const COMMAND_DATA_SET_TYPE: (u16, u16) = (0x0000, 0x0800);
    /// Status
    pub const STATUS: (u16, u16) = (0x0000, 0x0900);
    /// Offending Element
    pub const OFFENDING_ELEMENT: (u16, u16) = (0x0000, 0x0901);
    /// Error Comment
    pub const ERROR_COMMENT: (u16, u16) = (0x0000, 0x0902);
    /// Error ID
    pub const ERROR_ID: (u16, u16) = (0x0000, 0x0903);
    /// Affected SOP Instance UID
    pub const AFFECTED_SOP_INSTANCE_UID: (u16, u16) = (0x0000, 0x1000);
    /// Requested SOP Instance UID (N-SET, N-GET, N-ACTION, N-DELETE)
    pub const REQUESTED_SOP_INSTANCE_UID: (u16, u16) = (0x0000, 0x1001);
    /// Event Type ID (N-EVENT-REPORT)
    pub const EVENT_TYPE_ID: (u16, u16) = (0x0000, 0x1002);
    /// Action Type ID (N-ACTION)
    pub const ACTION_TYPE_ID: (u16, u16) = (0x0000, 0x1008);
    /// Attribute Identifier List
    pub const ATTRIBUTE_IDENTIFIER_LIST: (u16, u16) = (0x0000, 0x1005);
    /// Move Destination (C-MOVE-RQ)
    pub const MOVE_DESTINATION: (u16, u16) = (0x0000, 0x0600);
    /// Move Originator Application Entity Title
    pub const MOVE_ORIGINATOR_AE_TITLE: (u16, u16) = (0x0000, 0x1030);
    /// Move Originator Message ID
    pub const MOVE_ORIGINATOR_MESSAGE_ID: (u16, u16) = (0x0000, 0x1031);
    /// Number of Remaining Sub-operations (C-MOVE/C-GET responses)
    pub const NUMBER_OF_REMAINING_SUB_OPERATIONS: (u16, u16) = (0x0000, 0x1020);
    /// Number of Completed Sub-operations
    pub const NUMBER_OF_COMPLETED_SUB_OPERATIONS: (u16, u16) = (0x0000, 0x1021);
    /// Number of Failed Sub-operations
    pub const NUMBER_OF_FAILED_SUB_OPERATIONS: (u16, u16) = (0x0000, 0x1022);
    /// Number of Warning Sub-operations
    pub const NUMBER_OF_WARNING_SUB_OPERATIONS: (u16, u16) = (0x0000, 0x1023);
}

/// The fields of a received command that the services act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// Command Field (raw, so unsupported commands can be answered by value).
    pub command_field: u16,
    /// Message ID, echoed in the response.
    pub message_id: u16,
    /// Affected SOP Class UID, padding removed.
    pub affected_sop_class_uid: Option<String>,
    /// Affected SOP Instance UID, padding removed.
    pub affected_sop_instance_uid: Option<String>,
    /// Whether a dataset follows (Command Data Set Type ≠ 0101H).
    pub has_dataset: bool,
    /// Priority (0 medium, 1 high, 2 low).
    pub priority: u16,
    /// Move Destination (C-MOVE-RQ): the AE title the sub-operations go to, padding removed.
    pub move_destination: Option<String>,
    /// Move Originator AE Title, when the C-STORE is a sub-operation of a C-MOVE.
    pub move_originator_ae_title: Option<String>,
    /// Move Originator Message ID.
    pub move_originator_message_id: Option<u16>,
    /// Status (present in responses).
    pub status: Option<u16>,
    /// Requested SOP Class UID (N-SET and the other normalized requests on one instance).
    pub requested_sop_class_uid: Option<String>,
    /// Requested SOP Instance UID.
    pub requested_sop_instance_uid: Option<String>,
    /// Action Type ID (N-ACTION).
    pub action_type_id: Option<u16>,
    /// Event Type ID (N-EVENT-REPORT).
    pub event_type_id: Option<u16>,
    /// Error Comment (responses), padding removed; `None` when absent or empty. Read lossily:
    /// a peer's non-ASCII comment must not make its status unreadable.
    pub error_comment: Option<String>,
    /// Sub-operation counts of a C-MOVE/C-GET response.
    pub sub_operations: SubOperations,
}

/// The sub-operation counts of a C-MOVE/C-GET response (PS3.7 9.3.3.2, 9.3.4.2), each
/// present or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOperations {
    /// Number of Remaining Sub-operations (0000,1020).
    pub remaining: Option<u16>,
    /// Number of Completed Sub-operations (0000,1021).
    pub completed: Option<u16>,
    /// Number of Failed Sub-operations (0000,1022).
    pub failed: Option<u16>,
    /// Number of Warning Sub-operations (0000,1023).
    pub warning: Option<u16>,
}

/// Why a command set could not be decoded; the association is aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Fewer bytes than an element header or its value.
    #[error("command set truncated at offset {0}")]
    Truncated(usize),
    /// Element outside group 0000.
    #[error("command set holds element ({0:04X},{1:04X}) outside group 0000")]
    WrongGroup(u16, u16),
    /// Element value with an odd length (PS3.5 §7.1.1).
    #[error("command element ({0:04X},{1:04X}) has odd length {2}")]
    OddLength(u16, u16, u32),
    /// A US element that is not 2 bytes.
    #[error("command element ({0:04X},{1:04X}) should be 2 bytes, is {2}")]
    BadUsLength(u16, u16, u32),
    /// Command Field or Message ID missing.
    #[error("command set lacks required element {0}")]
    Missing(&'static str),
    /// A UID or AE value that is not ASCII.
    #[error("command element ({0:04X},{1:04X}) is not ASCII text")]
    NotText(u16, u16),
}

fn text(group: u16, elem: u16, v: &[u8]) -> Result<String, CommandError> {
    if !v.is_ascii() {
        return Err(CommandError::NotText(group, elem));
    }
    let s = std::str::from_utf8(v).map_err(|_| CommandError::NotText(group, elem))?;
    Ok(s.trim_end_matches(['\0', ' ']).trim_start().to_owned())
}

fn us(group: u16, elem: u16, v: &[u8]) -> Result<u16, CommandError> {
    match v {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(CommandError::BadUsLength(group, elem, v.len() as u32)),
    }
}

/// Decodes a complete command set (Implicit VR Little Endian, PS3.7 §6.3.1).
pub fn decode_command(bytes: &[u8]) -> Result<Command, CommandError> {
    let mut cmd = Command::default();
    let (mut field, mut message_id) = (None, None);
    let mut dataset_type = None;
    let mut pos = 0usize;
    while pos < bytes.len() {
        let header = bytes
            .get(pos..pos + 8)
            .ok_or(CommandError::Truncated(pos))?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        let elem = u16::from_le_bytes([header[2], header[3]]);
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if group != 0x0000 {
            return Err(CommandError::WrongGroup(group, elem));
        }
        if len % 2 != 0 {
            return Err(CommandError::OddLength(group, elem, len));
        }
        let start = pos + 8;
        let end = start
            .checked_add(len as usize)
            .ok_or(CommandError::Truncated(pos))?;
        let v = bytes.get(start..end).ok_or(CommandError::Truncated(pos))?;
        match (group, elem) {
            tags::AFFECTED_SOP_CLASS_UID => {
                cmd.affected_sop_class_uid = Some(text(group, elem, v)?)
            }
            tags::COMMAND_FIELD => field = Some(us(group, elem, v)?),
            tags::MESSAGE_ID => message_id = Some(us(group, elem, v)?),
            tags::PRIORITY => cmd.priority = us(group, elem, v)?,
            tags::COMMAND_DATA_SET_TYPE => dataset_type = Some(us(group, elem, v)?),
            tags::STATUS => cmd.status = Some(us(group, elem, v)?),
            tags::AFFECTED_SOP_INSTANCE_UID => {
                cmd.affected_sop_instance_uid = Some(text(group, elem, v)?)
            }
            tags::REQUESTED_SOP_CLASS_UID => {
                cmd.requested_sop_class_uid = Some(text(group, elem, v)?)
            }
            tags::REQUESTED_SOP_INSTANCE_UID => {
                cmd.requested_sop_instance_uid = Some(text(group, elem, v)?)
            }
            tags::MOVE_DESTINATION => cmd.move_destination = Some(text(group, elem, v)?),
            tags::MOVE_ORIGINATOR_AE_TITLE => {
                cmd.move_originator_ae_title = Some(text(group, elem, v)?)
            }
            tags::MOVE_ORIGINATOR_MESSAGE_ID => {
                cmd.move_originator_message_id = Some(us(group, elem, v)?)
            }
            tags::ACTION_TYPE_ID => cmd.action_type_id = Some(us(group, elem, v)?),
            tags::NUMBER_OF_REMAINING_SUB_OPERATIONS => {
                cmd.sub_operations.remaining = Some(us(group, elem, v)?)
            }
            tags::NUMBER_OF_COMPLETED_SUB_OPERATIONS => {
                cmd.sub_operations.completed = Some(us(group, elem, v)?)
            }
            tags::NUMBER_OF_FAILED_SUB_OPERATIONS => {
                cmd.sub_operations.failed = Some(us(group, elem, v)?)
            }
            tags::NUMBER_OF_WARNING_SUB_OPERATIONS => {
                cmd.sub_operations.warning = Some(us(group, elem, v)?)
            }
            tags::EVENT_TYPE_ID => cmd.event_type_id = Some(us(group, elem, v)?),
            tags::ERROR_COMMENT => {
                let c = String::from_utf8_lossy(v);
                let c = c.trim_matches(['\0', ' ']);
                cmd.error_comment = (!c.is_empty()).then(|| c.to_owned());
            }
            // In responses, a response's own "message id"; in a C-CANCEL-RQ (which has no
            // Message ID) the request it cancels.
            tags::MESSAGE_ID_BEING_RESPONDED_TO if message_id.is_none() => {
                message_id = Some(us(group, elem, v)?);
            }
            _ => {}
        }
        pos = end;
    }
    cmd.command_field = field.ok_or(CommandError::Missing("Command Field (0000,0100)"))?;
    cmd.message_id = message_id.ok_or(CommandError::Missing("Message ID (0000,0110)"))?;
    cmd.has_dataset = dataset_type
        .ok_or(CommandError::Missing("Command Data Set Type (0000,0800)"))?
        != NO_DATASET;
    Ok(cmd)
}

/// Builds a command set in Implicit VR LE; elements must be added in ascending tag order.
#[derive(Debug, Default)]
pub struct CommandBuilder {
    body: Vec<u8>,
}

impl CommandBuilder {
    /// An empty command set.
    pub fn new() -> Self {
        Self {
            body: Vec::with_capacity(160),
        }
    }

    fn header(&mut self, tag: (u16, u16), len: usize) {
        self.body.extend_from_slice(&tag.0.to_le_bytes());
        self.body.extend_from_slice(&tag.1.to_le_bytes());
        self.body.extend_from_slice(&(len as u32).to_le_bytes());
    }

    /// Adds a UI (UID) element, padded with NUL to even length.
    pub fn uid(mut self, tag: (u16, u16), value: &str) -> Self {
        let padded = value.len() + value.len() % 2;
        self.header(tag, padded);
        self.body.extend_from_slice(value.as_bytes());
        if value.len() % 2 == 1 {
            self.body.push(0);
        }
        self
    }

    /// Adds a text element (AE, LO), padded with a space to even length.
    pub fn text(mut self, tag: (u16, u16), value: &str) -> Self {
        let padded = value.len() + value.len() % 2;
        self.header(tag, padded);
        self.body.extend_from_slice(value.as_bytes());
        if value.len() % 2 == 1 {
            self.body.push(b' ');
        }
        self
    }

    /// Adds an AT element list (tags as group, element pairs).
    pub fn at(mut self, tag: (u16, u16), values: &[(u16, u16)]) -> Self {
        self.header(tag, values.len() * 4);
        for (g, e) in values {
            self.body.extend_from_slice(&g.to_le_bytes());
            self.body.extend_from_slice(&e.to_le_bytes());
        }
        self
    }

    /// Adds a US element.
    pub fn us(mut self, tag: (u16, u16), value: u16) -> Self {
        self.header(tag, 2);
        self.body.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Finishes the command set, prefixing the Command Group Length (0000,0000) UL.
    pub fn build(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 12);
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// Encodes a response (C-ECHO-RSP, C-STORE-RSP, …) to `rq` with the given status.
pub fn encode_response(
    rq: &Command,
    response_field: u16,
    status: u16,
    error_comment: Option<&str>,
) -> Vec<u8> {
    let mut b = CommandBuilder::new();
    if let Some(class) = &rq.affected_sop_class_uid {
        b = b.uid(tags::AFFECTED_SOP_CLASS_UID, class);
    }
    b = b
        .us(tags::COMMAND_FIELD, response_field)
        .us(tags::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id)
        .us(tags::COMMAND_DATA_SET_TYPE, NO_DATASET)
        .us(tags::STATUS, status);
    if let Some(comment) = error_comment {
        // Error Comment is LO: at most 64 characters.
        let comment: String = comment
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(64)
            .collect();
        b = b.text(tags::ERROR_COMMENT, &comment);
    }
    if let Some(instance) = &rq.affected_sop_instance_uid {
        b = b.uid(tags::AFFECTED_SOP_INSTANCE_UID, instance);
    }
    b.build()
}

/// Encodes a request with no dataset other than C-STORE (C-ECHO-RQ); used by SCUs and tests.
pub fn encode_echo_rq(message_id: u16) -> Vec<u8> {
    CommandBuilder::new()
        .uid(
            tags::AFFECTED_SOP_CLASS_UID,
            dicom_dictionary_std::uids::VERIFICATION,
        )
        .us(tags::COMMAND_FIELD, CommandField::CEchoRq as u16)
        .us(tags::MESSAGE_ID, message_id)
        .us(tags::COMMAND_DATA_SET_TYPE, NO_DATASET)
        .build()
}

/// Encodes a C-STORE-RQ announcing a dataset; used by SCUs (forwarder, load generator, tests).
pub fn encode_store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    CommandBuilder::new()
        .uid(tags::AFFECTED_SOP_CLASS_UID, sop_class)
        .us(tags::COMMAND_FIELD, CommandField::CStoreRq as u16)
        .us(tags::MESSAGE_ID, message_id)
        .us(tags::PRIORITY, 0)
        .us(tags::COMMAND_DATA_SET_TYPE, 0x0000)
        .uid(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance)
        .build()
}

/// Encodes a C-STORE-RQ that is a sub-operation of a C-MOVE: Move Originator Application
/// Entity Title (0000,1030) and Move Originator Message ID (0000,1031) tell the destination
/// which C-MOVE (and whose) it belongs to (PS3.7 9.3.1.1).
pub fn encode_store_rq_for_move(
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
    originator_ae_title: &str,
    originator_message_id: u16,
) -> Vec<u8> {
    CommandBuilder::new()
        .uid(tags::AFFECTED_SOP_CLASS_UID, sop_class)
        .us(tags::COMMAND_FIELD, CommandField::CStoreRq as u16)
        .us(tags::MESSAGE_ID, message_id)
        .us(tags::PRIORITY, 0)
        .us(tags::COMMAND_DATA_SET_TYPE, 0x0000)
        .uid(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance)
        .text(tags::MOVE_ORIGINATOR_AE_TITLE, originator_ae_title)
        .us(tags::MOVE_ORIGINATOR_MESSAGE_ID, originator_message_id)
        .build()
}

/// Encodes a C-MOVE-RSP or C-GET-RSP (`response_field`) to `rq`: the status, the sub-operation
/// counts that are given, an Error Comment, and whether an identifier (the Failed SOP
/// Instance UID List) follows.
pub fn encode_retrieve_response(
    rq: &Command,
    response_field: u16,
    status: u16,
    counts: SubOperations,
    error_comment: Option<&str>,
    has_dataset: bool,
    offending: Option<(u16, u16)>,
) -> Vec<u8> {
    let mut b = CommandBuilder::new();
    if let Some(class) = &rq.affected_sop_class_uid {
        b = b.uid(tags::AFFECTED_SOP_CLASS_UID, class);
    }
    b = b
        .us(tags::COMMAND_FIELD, response_field)
        .us(tags::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id)
        .us(
            tags::COMMAND_DATA_SET_TYPE,
            if has_dataset { 0x0000 } else { NO_DATASET },
        )
        .us(tags::STATUS, status);
    // A900's related field (PS3.4 C.4.2.1.5): which key did not match the model.
    if let Some(tag) = offending {
        b = b.at(tags::OFFENDING_ELEMENT, &[tag]);
    }
    if let Some(comment) = error_comment {
        let comment: String = comment
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(64)
            .collect();
        b = b.text(tags::ERROR_COMMENT, &comment);
    }
    for (tag, n) in [
        (tags::NUMBER_OF_REMAINING_SUB_OPERATIONS, counts.remaining),
        (tags::NUMBER_OF_COMPLETED_SUB_OPERATIONS, counts.completed),
        (tags::NUMBER_OF_FAILED_SUB_OPERATIONS, counts.failed),
        (tags::NUMBER_OF_WARNING_SUB_OPERATIONS, counts.warning),
    ] {
        if let Some(n) = n {
            b = b.us(tag, n);
        }
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_rq_roundtrip() {
        let bytes = encode_store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5");
        let cmd = decode_command(&bytes).unwrap();
        assert_eq!(cmd.command_field, CommandField::CStoreRq as u16);
        assert_eq!(cmd.message_id, 7);
        assert!(cmd.has_dataset);
        assert_eq!(
            cmd.affected_sop_class_uid.as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.2")
        );
        assert_eq!(cmd.affected_sop_instance_uid.as_deref(), Some("1.2.3.4.5"));
        // Group length covers everything after itself.
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            bytes.len() - 12
        );
    }

    #[test]
    fn retrieve_response_and_move_store_rq_roundtrip() {
        let rq = Command {
            command_field: CommandField::CMoveRq as u16,
            message_id: 9,
            affected_sop_class_uid: Some("1.2.840.10008.5.1.4.1.2.2.2".into()),
            has_dataset: true,
            ..Command::default()
        };
        let counts = SubOperations {
            remaining: Some(3),
            completed: Some(65535),
            failed: Some(1),
            warning: Some(0),
        };
        let rsp = decode_command(&encode_retrieve_response(
            &rq,
            CommandField::CMoveRsp as u16,
            0xFF00,
            counts,
            None,
            false,
            None,
        ))
        .unwrap();
        assert_eq!(rsp.sub_operations, counts);
        // A900 names the offending key: (0000,0901) AT (0020,000D), implicit VR LE.
        let refused = encode_retrieve_response(
            &rq,
            CommandField::CMoveRsp as u16,
            0xA900,
            SubOperations::default(),
            Some("StudyInstanceUID missing"),
            false,
            Some((0x0020, 0x000D)),
        );
        let at = [0x00, 0x00, 0x01, 0x09, 4, 0, 0, 0, 0x20, 0x00, 0x0D, 0x00];
        assert!(refused.windows(at.len()).any(|w| w == at));
        assert_eq!(decode_command(&refused).unwrap().status, Some(0xA900));
        assert_eq!(rsp.message_id, 9);
        assert!(!rsp.has_dataset);
        let st =
            decode_command(&encode_store_rq_for_move(4, "1.2.3", "1.2.3.4", "MOVER", 9)).unwrap();
        assert_eq!(st.move_originator_ae_title.as_deref(), Some("MOVER"));
        assert_eq!(st.move_originator_message_id, Some(9));
        assert_eq!(st.affected_sop_instance_uid.as_deref(), Some("1.2.3.4"));
    }

    #[test]
    fn response_echoes_message_id_and_status() {
        let rq = decode_command(&encode_echo_rq(42)).unwrap();
        assert!(!rq.has_dataset);
        let rsp = decode_command(&encode_response(
            &rq,
            CommandField::CEchoRsp as u16,
            0xA700,
            Some("disk full"),
        ))
        .unwrap();
        assert_eq!(rsp.command_field, 0x8030);
        assert_eq!(rsp.message_id, 42);
        assert_eq!(rsp.status, Some(0xA700));
    }

    #[test]
    fn rejects_malformed_commands() {
        let good = encode_echo_rq(1);
        assert!(matches!(
            decode_command(&good[..good.len() - 1]),
            Err(CommandError::Truncated(_))
        ));
        let mut odd = good.clone();
        odd[4] = 3; // group length element claims 3 bytes
        assert!(matches!(
            decode_command(&odd),
            Err(CommandError::OddLength(0, 0, 3))
        ));
        let mut wrong = good.clone();
        wrong[0] = 8;
        assert!(matches!(
            decode_command(&wrong),
            Err(CommandError::WrongGroup(8, 0))
        ));
        let huge = [0u8, 0, 0, 1, 0xFE, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            decode_command(&huge),
            Err(CommandError::Truncated(0))
        ));
        assert_eq!(
            decode_command(&[]),
            Err(CommandError::Missing("Command Field (0000,0100)"))
        );
    }
}
