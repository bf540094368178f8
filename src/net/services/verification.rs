//! Verification Service Class (PS3.4 Annex A): C-ECHO SCP.

use crate::net::dimse::command::{encode_response, Command, CommandField};

/// Verification SOP Class UID.
pub const VERIFICATION_SOP_CLASS: &str = dicom_dictionary_std::uids::VERIFICATION;

/// Statuses of the Verification service (PS3.4 Table A.4-1: success only; failures are the
/// general DIMSE ones).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
}

/// Builds the C-ECHO-RSP command set for a C-ECHO-RQ.
pub fn echo_response(rq: &Command) -> Vec<u8> {
    encode_response(rq, CommandField::CEchoRsp as u16, status::SUCCESS, None)
}
