//! Where the storage service hands a received object: the seam between the network side and
//! ingest (record building, routing, duplicates, durability, indexing).
//!
//! The trait lives here, below `net`, so the storage service depends on an interface and the
//! ingest pipeline (above `net`) implements it: nothing low imports anything high, and the
//! storage service can be tested against any sink.

use std::future::Future;
use std::path::PathBuf;

pub use super::writer::Body;
use std::pin::Pin;
use std::sync::Arc;

use dicom_core::Tag;

use super::attrs::IndexAttrs;
use super::StoreError;

/// An object whose bytes have all arrived (in memory or in its temporary file), checked
/// against its command, with the attributes the index and routing need.
#[derive(Debug)]
pub struct ReceivedObject {
    /// Part-10 header + the dataset as received.
    pub body: Body,
    /// Size of the whole file.
    pub file_size: u64,
    /// Size of the dataset bytes.
    pub dataset_size: u64,
    /// BLAKE3 of the dataset bytes, hex.
    pub dataset_blake3: String,
    /// Affected SOP Class UID.
    pub sop_class_uid: String,
    /// Affected SOP Instance UID.
    pub sop_instance_uid: String,
    /// The presentation context's transfer syntax.
    pub transfer_syntax_uid: String,
    /// The association's calling AE title.
    pub calling_ae_title: String,
    /// The association's called AE title.
    pub called_ae_title: String,
    /// Path under `objects/`, from validated UIDs.
    pub rel_path: PathBuf,
    /// Index (and routing) attributes.
    pub attrs: IndexAttrs,
}

/// What became of an accepted object (for logs; every variant is a success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// New object, stored and indexed.
    Stored,
    /// The same bytes were already stored.
    IdenticalDuplicate,
    /// Different bytes under a stored SOP Instance UID; the stored object was kept.
    KeptExisting,
    /// Different bytes under a stored SOP Instance UID; the new object replaced it.
    Replaced,
}

/// The future a sink answers with; resolves once the object is durable (or refused).
pub type Submission = Pin<Box<dyn Future<Output = Result<Accepted, StoreError>> + Send>>;

/// Takes finished objects. One [`ObjectSink::snapshot`] serves one object from attribute
/// extraction to submission, so a routing table swapped meanwhile cannot split an object
/// between two tables.
pub trait ObjectSink: Send + Sync + std::fmt::Debug + 'static {
    /// The sink's view for one object.
    fn snapshot(&self) -> Arc<dyn SinkSnapshot>;
}

/// One object's view of the sink.
pub trait SinkSnapshot: Send + Sync {
    /// Attributes beyond the index's that must be extracted (routing keys).
    fn wanted_tags(&self) -> &[Tag];
    /// Hands the object over; resolves when the object is durable, indexed and queued.
    fn submit(&self, obj: ReceivedObject) -> Submission;
}
