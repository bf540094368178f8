//! DIMSE message assembly from PDVs (PS3.7 §6.3.1 and PS3.8 §9.3.5.1), shared by both
//! acceptors.
//!
//! A message is a command set, in one or more command fragments, followed by the dataset
//! fragments of a command that announces one. The order rules are what a hostile or broken
//! peer gets wrong, so they live here once, as a pure state machine over PDVs. The assembler
//! keeps the command bytes but never the dataset: the store service streams dataset fragments
//! to disk as they come, and the worklist service keeps its small identifiers in memory.

use bytes::Bytes;

use super::command::{decode_command, Command, CommandError, CommandField};
use crate::net::ul::pdata::{split_pdata, FramingError, Pdv, PDU_HEADER_LEN};

/// Command sets are tiny; a bigger one is hostile.
pub const MAX_COMMAND_LEN: usize = 64 * 1024;

/// DIMSE protocol violations. Each ends the association with an A-ABORT: after one, the peer
/// and the SCP no longer agree on where a message starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DimseError {
    /// A PDV on a presentation context that was not accepted.
    #[error("PDV on presentation context {0}, which was not accepted")]
    UnknownContext(u8),
    /// A command fragment where the current message's dataset was expected.
    #[error("command fragment while a dataset was expected")]
    CommandDuringData,
    /// A dataset fragment with no command announcing a dataset.
    #[error("dataset fragment without a command announcing it")]
    UnexpectedData,
    /// The fragments of one message on two presentation contexts.
    #[error("fragment on context {got} inside a message on context {expected}")]
    ContextSwitch {
        /// The message's context.
        expected: u8,
        /// The fragment's.
        got: u8,
    },
    /// A command set over [`MAX_COMMAND_LEN`].
    #[error("command set larger than {0} bytes")]
    CommandTooLarge(usize),
    /// A dataset over what the service accepts (the worklist's identifiers).
    #[error("dataset larger than {0} bytes")]
    DatasetTooLarge(usize),
    /// A command set that does not decode.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A P-DATA-TF PDU whose PDV items do not add up.
    #[error("malformed P-DATA-TF: {0}")]
    Framing(#[from] FramingError),
}

/// What one PDV contributed to the current message.
#[derive(Debug)]
pub enum Fragment {
    /// A command fragment that did not end its command set.
    Partial,
    /// A whole command set on its context. If it announces a dataset, the next PDVs must be
    /// that dataset's fragments on the same context.
    Command(Command, u8),
    /// A fragment of the announced dataset; `last` ends the message.
    Data {
        /// The fragment's bytes (a slice of the received PDU).
        data: Bytes,
        /// Whether this fragment ends the dataset.
        last: bool,
    },
}

/// Whether a whole P-DATA-TF PDU (header included) is exactly one complete C-CANCEL-RQ
/// command for `message_id` (the Message ID Being Responded To). That is how DCMTK and
/// pynetdicom send it; the C-FIND responder looks for it between pending responses without
/// disturbing the assembler (no message is half-received while responses go out).
pub fn is_cancel_for(pdu: &Bytes, message_id: u16) -> bool {
    if pdu.len() < PDU_HEADER_LEN {
        return false;
    }
    let Ok(pdvs) = split_pdata(pdu.slice(PDU_HEADER_LEN..)) else {
        return false;
    };
    match pdvs.as_slice() {
        [pdv] if pdv.is_command && pdv.is_last => decode_command(&pdv.data).is_ok_and(|c| {
            c.command_field == CommandField::CCancelRq as u16 && c.message_id == message_id
        }),
        _ => false,
    }
}

/// The assembly state of one association.
#[derive(Debug, Default)]
pub struct MessageAssembler {
    command: Vec<u8>,
    /// The context of the command set being received.
    command_pc: Option<u8>,
    /// The context whose dataset is expected.
    data_pc: Option<u8>,
}

impl MessageAssembler {
    /// Takes the next PDV; `accepted` says whether its presentation context was accepted.
    pub fn push(&mut self, pdv: Pdv, accepted: bool) -> Result<Fragment, DimseError> {
        if !accepted {
            return Err(DimseError::UnknownContext(pdv.pc_id));
        }
        if !pdv.is_command {
            let Some(expected) = self.data_pc else {
                return Err(DimseError::UnexpectedData);
            };
            if expected != pdv.pc_id {
                return Err(DimseError::ContextSwitch {
                    expected,
                    got: pdv.pc_id,
                });
            }
            if pdv.is_last {
                self.data_pc = None;
            }
            return Ok(Fragment::Data {
                data: pdv.data,
                last: pdv.is_last,
            });
        }
        if self.data_pc.is_some() {
            return Err(DimseError::CommandDuringData);
        }
        match self.command_pc {
            Some(expected) if expected != pdv.pc_id => {
                return Err(DimseError::ContextSwitch {
                    expected,
                    got: pdv.pc_id,
                })
            }
            _ => self.command_pc = Some(pdv.pc_id),
        }
        if self.command.len() + pdv.data.len() > MAX_COMMAND_LEN {
            return Err(DimseError::CommandTooLarge(MAX_COMMAND_LEN));
        }
        self.command.extend_from_slice(&pdv.data);
        if !pdv.is_last {
            return Ok(Fragment::Partial);
        }
        let bytes = std::mem::take(&mut self.command);
        self.command_pc = None;
        let cmd = decode_command(&bytes)?;
        if cmd.has_dataset {
            self.data_pc = Some(pdv.pc_id);
        }
        Ok(Fragment::Command(cmd, pdv.pc_id))
    }

    /// Whether a message is half received (a release now drops it).
    pub fn in_progress(&self) -> bool {
        self.command_pc.is_some() || self.data_pc.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dimse::command::{encode_echo_rq, encode_store_rq};

    fn pdv(pc_id: u8, is_command: bool, is_last: bool, data: &[u8]) -> Pdv {
        Pdv {
            pc_id,
            is_command,
            is_last,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn a_fragmented_command_then_its_dataset() {
        let mut a = MessageAssembler::default();
        let rq = encode_store_rq(3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3");
        let (head, tail) = rq.split_at(10);
        assert!(matches!(
            a.push(pdv(1, true, false, head), true),
            Ok(Fragment::Partial)
        ));
        assert!(a.in_progress());
        let Ok(Fragment::Command(cmd, 1)) = a.push(pdv(1, true, true, tail), true) else {
            panic!("command expected");
        };
        assert_eq!(cmd.message_id, 3);
        assert!(a.in_progress(), "the dataset is still to come");
        let Ok(Fragment::Data { data, last: false }) = a.push(pdv(1, false, false, b"ab"), true)
        else {
            panic!("data expected");
        };
        assert_eq!(&data[..], b"ab");
        assert!(matches!(
            a.push(pdv(1, false, true, b"cd"), true),
            Ok(Fragment::Data { last: true, .. })
        ));
        assert!(!a.in_progress());
        // A command without a dataset completes the message by itself.
        assert!(matches!(
            a.push(pdv(3, true, true, &encode_echo_rq(4)), true),
            Ok(Fragment::Command(_, 3))
        ));
        assert!(!a.in_progress());
    }

    #[test]
    fn order_violations_are_typed_errors() {
        let store = encode_store_rq(1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3");
        let fresh = MessageAssembler::default;
        assert!(matches!(
            fresh().push(pdv(5, true, true, &store), false),
            Err(DimseError::UnknownContext(5))
        ));
        assert!(matches!(
            fresh().push(pdv(1, false, true, b"xx"), true),
            Err(DimseError::UnexpectedData)
        ));
        let mut a = fresh();
        a.push(pdv(1, true, true, &store), true).unwrap();
        assert!(matches!(
            a.push(pdv(1, true, true, &store), true),
            Err(DimseError::CommandDuringData)
        ));
        let mut a = fresh();
        a.push(pdv(1, true, true, &store), true).unwrap();
        assert!(matches!(
            a.push(pdv(3, false, true, b"xx"), true),
            Err(DimseError::ContextSwitch {
                expected: 1,
                got: 3
            })
        ));
        let mut a = fresh();
        a.push(pdv(1, true, false, &store[..4]), true).unwrap();
        assert!(matches!(
            a.push(pdv(3, true, true, &store[4..]), true),
            Err(DimseError::ContextSwitch {
                expected: 1,
                got: 3
            })
        ));
        let mut a = fresh();
        let big = vec![0u8; MAX_COMMAND_LEN];
        a.push(pdv(1, true, false, &big), true).unwrap();
        assert!(matches!(
            a.push(pdv(1, true, true, b"x"), true),
            Err(DimseError::CommandTooLarge(MAX_COMMAND_LEN))
        ));
        assert!(matches!(
            fresh().push(pdv(1, true, true, b"not a command"), true),
            Err(DimseError::Command(_))
        ));
    }
}
