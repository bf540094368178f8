//! The redb table definitions of `gateway.redb`, in one place so that one write transaction
//! can span the index and the forwarding queue.
//!
//! Keys are UIDs (or UID pairs) as text; values are records encoded with postcard (see
//! `store::index` for the record types and `docs/design.md` for the schema). Also what both
//! databases (`gateway.redb`, `worklist.redb`) must know about redb's failures.

use redb::TableDefinition;

/// Whether a database is unusable until it is opened again: redb latches after any I/O error
/// of its file (a failed write, sync, read or resize, ENOSPC included), and every later
/// operation fails with `PreviousIo`.
pub fn needs_reopen(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

/// SOP Instance UID → `InstanceRecord`.
pub const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
/// (Study Instance UID, Series Instance UID) → `SeriesRecord`.
pub const SERIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("series");
/// Study Instance UID → `StudyRecord`.
pub const STUDIES: TableDefinition<&str, &[u8]> = TableDefinition::new("studies");
/// Patient ID → `PatientRecord`.
pub const PATIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("patients");

/// Waiting forward jobs: (destination, due time µs, job id) → `queue::JobRecord`. Pending
/// jobs (never tried) are due at their creation time, retries at their backoff time, so "the
/// next due jobs for destination D" is one range scan from `(D, 0, 0)` to `(D, now, MAX)`.
pub const QUEUE: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("queue");
/// Jobs a forwarder has claimed: job id → `queue::JobRecord`. Returned to `QUEUE` at start-up
/// (delivery is at-least-once).
pub const IN_FLIGHT: TableDefinition<u64, &[u8]> = TableDefinition::new("in_flight");
/// Dead letters: (destination, job id) → `queue::JobRecord` with the reason.
pub const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead");
/// (destination, state) → number of jobs, kept in step with the tables above so counts are
/// cheap; `done` counts delivered jobs, which are deleted (compacted) at once.
pub const QUEUE_COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("queue_counts");
/// SOP Instance UID → jobs of that instance not yet delivered (absent = none). Retention
/// deletes only objects without an entry.
pub const OUTSTANDING: TableDefinition<&str, u64> = TableDefinition::new("outstanding");
/// Every job by what it sends: (destination, SOP Instance UID, job id) → (), for each job in
/// `QUEUE`, `IN_FLIGHT` or `DEAD`, kept in step with them (added with the job, removed when it
/// is delivered). "Has D a job for this object?" is then one short range read, not a scan of
/// D's jobs, which an identical re-send asks inside a checkpoint even when an unreachable
/// archive has a backlog of millions. Checked against the job tables at every daemon start
/// (rebuilt if they differ), and built by the first reader of a database written before it
/// existed (`META` `jobs_of_built`).
pub const JOBS_OF: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("jobs_of");
/// Gateway-mode retention candidates: (received at µs, SOP Instance UID) → (), written when an
/// object's last job is delivered (or at ingest when no route matched).
pub const RETIRABLE: TableDefinition<(u64, &str), ()> = TableDefinition::new("retirable");
/// Paused destinations (name → ()), so a pause survives a restart.
pub const PAUSED: TableDefinition<&str, ()> = TableDefinition::new("paused");
/// Deliveries: (SOP Instance UID, destination) → when, µs. Lets an identical re-send be
/// routed to the destinations that never received the object, and no other.
pub const DELIVERED: TableDefinition<(&str, &str), u64> = TableDefinition::new("delivered");
/// Pending Storage Commitment requests: Transaction UID → `store::commitment::PendingCommitment`,
/// written before the N-ACTION-RSP, removed when the report is acknowledged.
pub const COMMITMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("commitments");
/// The schedule of each pending Storage Commitment request: Transaction UID →
/// `store::commitment::Scheduled` (calling AE, received at, attempts, next attempt), a few
/// dozen bytes, so the reporter's pass reads it without decoding the references (up to ~1 MB
/// a request). Kept in step with `COMMITMENTS` in the same write transactions.
pub const COMMITMENT_SCHEDULE: TableDefinition<&str, &[u8]> =
    TableDefinition::new("commitment_schedule");
/// Pending Storage Commitment requests per calling AE title (absent = none), kept in step with
/// `COMMITMENTS`, so the per-AE quota is one lookup.
pub const COMMITMENT_AE_COUNTS: TableDefinition<&str, u64> =
    TableDefinition::new("commitment_ae_counts");
/// Small named counters, e.g. `next_job_id`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Ingest journal checkpoints: journal name → the encoded `Position` after the last group
/// whose objects are materialized and indexed (written in the same commit as their rows).
pub const JOURNAL: TableDefinition<&str, &[u8]> = TableDefinition::new("journal");

/// API tokens: BLAKE3 hex of the token → `http::auth::TokenRecord`. Tokens are shown once and
/// only their hash is kept.
pub const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");
/// Users: user name → `http::auth::UserRecord` (role, Argon2id password hash).
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// The audit log: sequence number → `audit::AuditEntry`, each chained to the previous by hash.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Configuration changed through the admin API: `destinations` and `routes` → JSON arrays of
/// their TOML/JSON forms. Once present they replace the config file's lists at start-up.
pub const CONFIG: TableDefinition<&str, &str> = TableDefinition::new("config");

/// Query/Retrieve objects: (Study, Series, SOP Instance UID) → postcard `dicom::dataset::Dataset`
/// of the instance's small attributes (`store::attrs::IndexAttrs::attributes`), so C-FIND
/// answers without reading files and walks a study or a series by one range scan.
pub const QR_OBJECTS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("qr_objects");
/// Query/Retrieve study keys for range scans: (kind, value, Study Instance UID) → (). Kinds
/// (`store::query::KeyKind`): study date, each Patient's Name component group lower-cased,
/// Patient ID, Accession Number, each modality of the study.
pub const QR_STUDY_KEYS: TableDefinition<(u8, &str, &str), ()> =
    TableDefinition::new("qr_study_keys");
/// Study Instance UID → postcard `Vec<(u8, String)>`: the `QR_STUDY_KEYS` rows written for that
/// study, so a change or a removal deletes exactly them.
pub const QR_STUDY_KEYS_OF: TableDefinition<&str, &[u8]> = TableDefinition::new("qr_study_keys_of");
