//! DIMSE services, one module per PS3.4 service class, each owning its status table.

pub mod storage;
mod storage_classes;
pub mod verification;
