//! DIMSE services, one module per PS3.4 service class, each owning its status table.

pub mod modality_performed_procedure_step;
pub mod modality_worklist;
pub mod storage;
mod storage_classes;
pub mod verification;
