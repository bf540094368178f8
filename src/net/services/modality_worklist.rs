//! Modality Worklist Information Model – FIND (PS3.4 Annex K): the C-FIND SCP's pure part.
//!
//! The identifier bytes arrive in the presentation context's transfer syntax; they are decoded
//! here, turned into a [`Query`] and run against the [`Worklist`] (the worklist database,
//! implemented above the network layer: `worklist::WorklistStore`). A refused
//! identifier is answered with the standard failure status (A900 "Identifier does not match SOP
//! Class", C000 "Unable to process") and the association stays up — a modality with a bad key
//! gets an answer, not a dropped connection. The association engine's shared C-FIND responder
//! sends one pending response per match and honours C-CANCEL between them.

use dicom_core::Tag;

use crate::dicom::dataset::Dataset;
use crate::dicom::matching::Query;
use crate::net::dimse::command::Command;
use crate::net::dimse::find::FindAnswer;

/// What the service searches: the scheduled procedure steps. A port, so that the network layer
/// does not depend on the worklist's database.
pub trait Worklist: Send + Sync + std::fmt::Debug {
    /// The items `query` matches, projected onto its return keys, in worklist order; at most
    /// `limit` (`None`: all).
    fn find(&self, query: &Query, limit: Option<usize>) -> Vec<Dataset>;
}

/// Modality Worklist Information Model – FIND SOP Class UID.
pub const SOP_CLASS: &str = "1.2.840.10008.5.1.4.31";

/// C-FIND statuses (PS3.4 K.4.1.1.4, PS3.7 C.4.1.1.4): the FIND services' common ones, and
/// this service's refusal of another SOP class.
pub mod status {
    pub use crate::net::dimse::find::status::*;
    /// SOP class not supported on this context.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
}

/// The outcome of one C-FIND-RQ.
#[derive(Debug)]
pub enum FindOutcome {
    /// The projected matches, in worklist order: one pending response each, then success.
    Matches(Vec<Dataset>),
    /// The request is refused with this final status.
    Refused {
        /// The status.
        status: u16,
        /// Error Comment, whole: the log line carries it all; the response encoder cuts it to
        /// the 64 characters an LO holds.
        comment: String,
        /// Offending Element, when one attribute is at fault.
        offending: Option<Tag>,
    },
}

pub use crate::net::dimse::dataset::{read_dataset, write_dataset};

fn refused(status: u16, comment: impl Into<String>, offending: Option<Tag>) -> FindOutcome {
    FindOutcome::Refused {
        status,
        comment: comment.into(),
        offending,
    }
}

/// Runs a C-FIND-RQ: the command's SOP class, the identifier bytes in `ts`, at most `limit`
/// matches (the SCP's configured cap; `None`: all).
pub fn find(
    store: &dyn Worklist,
    cmd: &Command,
    identifier: &[u8],
    ts: &str,
    limit: Option<usize>,
) -> FindOutcome {
    if cmd.affected_sop_class_uid.as_deref() != Some(SOP_CLASS) {
        return refused(
            status::SOP_CLASS_NOT_SUPPORTED,
            "only Modality Worklist FIND is served here",
            None,
        );
    }
    // Decoded under its Specific Character Set, ISO 2022 code extensions included (issue 13).
    let ds = match super::query_retrieve_find::decode_identifier(identifier, ts) {
        Ok(ds) => ds,
        Err(r) => return refused(r.status, r.comment, r.offending),
    };
    match Query::from_dataset(&ds) {
        Ok(query) => FindOutcome::Matches(store.find(&query, limit)),
        Err(e) => refused(e.status(), e.to_string(), e.offending_element()),
    }
}

pub use crate::net::dimse::find::{ascii64, final_response, pending_response};

/// Runs a C-FIND-RQ (on the worklist pool) and encodes each match in `ts`, so the core that
/// streams the responses only sends bytes.
pub fn find_encoded(
    store: &dyn Worklist,
    cmd: &Command,
    identifier: &[u8],
    ts: &str,
    limit: Option<usize>,
) -> FindAnswer {
    match find(store, cmd, identifier, ts, limit) {
        FindOutcome::Refused {
            status,
            comment,
            offending,
        } => FindAnswer::Refused {
            status,
            comment,
            offending,
        },
        FindOutcome::Matches(matches) => {
            let mut out = Vec::with_capacity(matches.len());
            for ds in &matches {
                match write_dataset(&ds.to_dicom(), ts) {
                    Ok(b) => out.push(b),
                    Err(e) => {
                        return FindAnswer::Refused {
                            status: status::UNABLE_TO_PROCESS,
                            comment: e,
                            offending: None,
                        }
                    }
                }
            }
            FindAnswer::Matches(out)
        }
    }
}
