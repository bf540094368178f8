//! The DICOM upper layer (PS3.8): PDU framing, the state machine, association negotiation.
//!
//! Association PDUs (A-ASSOCIATE-RQ/AC/RJ, A-RELEASE, A-ABORT) are encoded and decoded with
//! dicom-ul's types; P-DATA-TF, the hot path, is framed here without copying ([`pdata`]).

pub mod association;
pub mod fsm;
pub mod pdata;
