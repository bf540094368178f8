//! DICOM encoding helpers that build nothing: a leaf module (it imports nothing from the rest
//! of the crate) for checks that must run *before* a peer's bytes become objects.
//!
//! - [`scan`] — a sans-I/O, iterative dataset structure scanner (PS3.5 §7): element framing,
//!   sequences and items, encapsulated pixel data, with limits on nesting depth, element
//!   count and size, checked as the bytes arrive. It is what keeps a 5,000-level nested
//!   identifier away from the recursive object builder (audit C1).

pub mod scan;

pub use scan::{check, inflate, Encoding, Limits, ScanError, Scanner, Summary, UnUndefined};
