//! DIMSE: command sets and status codes (PS3.7), independent of any service.

pub mod command;
pub mod status;
