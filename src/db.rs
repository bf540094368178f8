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
/// Batch sequence → postcard `Vec<String>` of the SOP Instance UIDs whose files that batch
/// renamed into place. The committer writes this in the batch's transaction and runs the
/// batch's `syncfs` concurrently with its commit; the next batch deletes the entry. An entry
/// found at start-up means a crash may have made index rows durable before their files'
/// data: those files are verified and bad rows removed (see `commit::recover_pending`).
pub const PENDING_SYNC: TableDefinition<u64, &[u8]> = TableDefinition::new("pending_sync");
