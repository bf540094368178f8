//! The Modality Worklist and MPPS core, independent of the network: worklist items
//! (Scheduled Procedure Steps) in DICOM JSON, their database `worklist.redb`, PS3.4 C-FIND
//! matching with return-key projection, and the MPPS state machine.
//!
//! The MWL C-FIND SCP and MPPS SCP (`net`) and the admin API (`http`) are thin layers over
//! this module: the SCP turns an identifier into a [`matching::Query`] and asks
//! [`store::WorklistStore::find`]; N-CREATE/N-SET go to [`store::WorklistStore::mpps_create`]
//! and [`store::WorklistStore::mpps_set`]; the API parses bodies with [`model::parse_items`]
//! and calls the store's create/update/cancel/delete. Every refusal is a typed error that
//! knows its DICOM status (`QueryError::status`, `MppsError::status`) or names the attribute
//! for a 400 (`ItemError::path`).
//!
//! Modules, from the bottom up:
//! - [`dataset`] — the owned dataset model (fast to store and match), conversions to and from
//!   `InMemDicomObject`, attribute paths for error messages.
//! - [`vr`] — PS3.5 value rules; date/time parsing with precision.
//! - [`json`] — DICOM JSON (PS3.18 Annex F) ↔ dataset, strict on entry.
//! - [`model`] — worklist items, the required-attribute set, defaults, statuses.
//! - [`matching`] — C-FIND matching and projection.
//! - [`mpps`] — the MPPS state machine and worklist linking.
//! - [`store`] — `worklist.redb`.

pub mod dataset;
pub mod json;
pub mod matching;
pub mod model;
pub mod mpps;
pub mod store;
pub mod vr;

pub use dataset::{AttributePath, Dataset, Element, Value};
pub use matching::{Query, QueryError};
pub use model::{ItemError, ItemKey, NewItem, SpsStatus, WorklistItem};
pub use mpps::{MppsError, MppsInstance, PpsStatus};
pub use store::{MppsRecord, MppsStoreError, Upserted, WorklistStore, WorklistStoreError};
