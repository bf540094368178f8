//! The forwarding queue (issue: reliable forwarding). For now only the ingest-side job record:
//! what the committer will write, in the same transaction as the index rows, for every
//! destination a routing rule selects.

use serde::{Deserialize, Serialize};

/// A forwarding job as created at ingest time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardJob {
    /// Destination name (from the config).
    pub destination: String,
    /// SOP Instance UID of the object to send.
    pub sop_instance_uid: String,
    /// When the job was created, microseconds since the Unix epoch.
    pub created_at_us: u64,
}
