//! The wall clock, in the unit every stored time uses: microseconds since the Unix epoch.
//! A leaf, so that low layers (the audit log, the queue) can stamp times without depending on
//! ingest.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn timestamp_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
