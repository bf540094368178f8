//! The redb table definitions of `gateway.redb`, in one place so that one write transaction
//! can span the index and the forwarding queue.
//!
//! Keys are UIDs (or UID pairs) as text; values are records encoded with postcard (see
//! `store::index` for the record types and `docs/design.md` for the schema).

use redb::TableDefinition;

/// SOP Instance UID → `InstanceRecord`.
pub const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
/// (Study Instance UID, Series Instance UID) → `SeriesRecord`.
pub const SERIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("series");
/// Study Instance UID → `StudyRecord`.
pub const STUDIES: TableDefinition<&str, &[u8]> = TableDefinition::new("studies");
/// Patient ID → `PatientRecord`.
pub const PATIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("patients");
