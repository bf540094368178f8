//! DIMSE: command sets and status codes (PS3.7), independent of any service.

pub mod assembly;
pub mod command;
pub mod dataset;
pub mod find;
pub mod status;
