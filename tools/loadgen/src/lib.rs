//! dicom-loadgen: a load generator for DICOM SCPs (dicom-gw first, but any Storage SCP,
//! Verification SCP or Worklist SCP will do).
//!
//! - [`dataset`]: hand-written encoding of uncompressed datasets and Part-10 meta groups.
//! - [`synth`]: synthetic objects from pre-encoded templates with fixed-length, patchable
//!   UIDs (making an object is a few digit writes; pixel data is shared).
//! - [`source`]: synthetic objects or a directory of Part-10 files sent verbatim.
//! - [`scu`]: the blocking SCU association, re-exported from `dicom_gw::net::scu` (shared
//!   with the gateway's forwarder).
//! - [`query`]: C-FIND identifiers from JSON.
//! - [`run`]: the workers, closed and open loop (see there for the threading rationale).
//! - [`stats`]: histograms, counters, JSON summary and human report.
//! - [`verify`]: checks that acknowledged objects are stored byte for byte.

pub mod ceiling;
pub mod dataset;
pub mod query;
pub mod run;
pub mod scu;
pub mod source;
pub mod stats;
pub mod synth;
pub mod verify;
