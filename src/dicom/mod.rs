//! The DICOM data model and rules every service shares: a leaf module (it imports nothing from
//! the rest of the crate), used by the network services, the worklist, the index and the API.
//!
//! - [`charset`] — Specific Character Set decoding, ISO 2022 code extensions included.
//! - [`uid`] — UID syntax (PS3.5 §9.1), the one check every path built from a UID relies on.
//! - [`vr`] — PS3.5 value rules; date/time parsing with precision.
//! - [`dataset`] — the owned dataset model (fast to store and match), conversions to and from
//!   `InMemDicomObject`, attribute paths for error messages.
//! - [`json`] — DICOM JSON (PS3.18 Annex F) ↔ dataset, strict on entry.
//! - [`matching`] — C-FIND matching (PS3.4 C.2.2.2) and return-key projection.
//! - [`scan`] — a sans-I/O, iterative dataset structure scanner (PS3.5 §7): element framing,
//!   sequences and items, encapsulated pixel data, with limits on nesting depth, element
//!   count and size, checked as the bytes arrive. It is what keeps a 5,000-level nested
//!   identifier away from the recursive object builder (audit C1).
//! - [`transcode`] — lossless conversion of a dataset between transfer syntaxes (uncompressed
//!   ones re-framed, RLE and JPEG decompressed), for destinations that refuse the original.

pub mod charset;
pub mod dataset;
pub mod json;
pub mod matching;
pub mod scan;
pub mod transcode;
pub mod uid;
pub mod vr;

pub use scan::{check, inflate, Encoding, Limits, ScanError, Scanner, Summary, UnUndefined};
