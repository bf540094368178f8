//! The Modality Worklist and MPPS core, independent of the network: worklist items
//! (Scheduled Procedure Steps) in DICOM JSON, their database `worklist.redb`, PS3.4 C-FIND
//! matching with return-key projection, and the MPPS state machine.
//!
//! The MWL C-FIND SCP and MPPS SCP (`net`) and the admin API (`http`) are thin layers over
//! this module: the SCP turns an identifier into a [`matching::Query`](crate::dicom::matching::Query) and asks
//! [`store::WorklistStore::find`]; N-CREATE/N-SET go to [`store::WorklistStore::mpps_create`]
//! and [`store::WorklistStore::mpps_set`]; the API parses bodies with [`model::parse_items`]
//! and calls the store's create/update/cancel/delete. Every refusal is a typed error that
//! knows its DICOM status (`QueryError::status`, `MppsError::status`) or names the attribute
//! for a 400 (`ItemError::path`).
//!
//! The generic DICOM parts it builds on (the owned dataset model, value rules, DICOM JSON and
//! C-FIND matching) live in [`crate::dicom`], shared with Query/Retrieve.
//!
//! Modules, from the bottom up:
//! - [`model`] — worklist items, the required-attribute set, defaults, statuses.
//! - [`mpps`] — the MPPS state machine and worklist linking.
//! - [`store`] — `worklist.redb`.
//! - [`services`] — the network services' ports ([`crate::net::services`]) implemented by the
//!   store.

pub mod model;
pub mod mpps;
pub mod services;
pub mod store;

pub use crate::dicom::dataset::{AttributePath, Dataset, Element, Value};
pub use crate::dicom::matching::{Query, QueryError};
pub use model::{ItemError, ItemKey, NewItem, SpsStatus, WorklistItem};
pub use mpps::{MppsError, MppsInstance, PpsStatus};
pub use store::{MppsRecord, MppsStoreError, Upserted, WorklistStore, WorklistStoreError};
