//! DIMSE services, one module per PS3.4 service class, each owning its status table, and the
//! dispatch table that maps (abstract syntax, command) to the service that handles it.
//!
//! A port offers a set of services ([`Offer`]); the association engine negotiates with it and
//! routes every complete command through [`Offer::route`]. Adding a service is one module and
//! one arm here: the engine (PDUs, the state machine, message assembly, C-CANCEL, limits) is
//! shared by every port.

pub mod modality_performed_procedure_step;
pub mod modality_worklist;
pub mod query_retrieve_find;
pub mod query_retrieve_get;
pub mod query_retrieve_move;
pub mod storage;
mod storage_classes;
pub mod storage_commitment;
pub mod verification;

use std::sync::Arc;

use crate::net::dimse::command::CommandField;
use crate::rt::WorkPool;

/// The Basic Worklist Management service (MWL FIND) and MPPS, which share the worklist
/// database. Their work (matching, database writes) runs on `pool`, never on a core.
#[derive(Debug, Clone)]
pub struct WorklistScp {
    /// The scheduled procedure steps C-FIND searches.
    pub worklist: Arc<dyn modality_worklist::Worklist>,
    /// The performed procedure steps N-CREATE and N-SET change.
    pub steps: Arc<dyn modality_performed_procedure_step::ProcedureSteps>,
    /// Threads for matching and MPPS transactions.
    pub pool: WorkPool,
    /// Most responses per C-FIND (`None`: no cap).
    pub max_results: Option<usize>,
}

/// The destination table as the services that connect out see it (C-MOVE destinations,
/// Storage Commitment reports on a new association). A trait because the table lives above
/// `net` and changes at run time (admin API).
pub trait Destinations: Send + Sync + std::fmt::Debug {
    /// The destination whose AE title is `ae_title` (trimmed, case-sensitive), if any.
    fn by_ae_title(&self, ae_title: &str) -> Option<crate::config::Destination>;
}

/// The services one port offers.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// Storage SCP (C-STORE).
    pub storage: Option<storage::StorageScp>,
    /// Modality Worklist FIND and MPPS.
    pub worklist: Option<WorklistScp>,
    /// Query/Retrieve FIND (Patient Root and Study Root).
    pub query: Option<query_retrieve_find::QueryScp>,
    /// Query/Retrieve MOVE and GET (Patient Root and Study Root).
    pub retrieve: Option<query_retrieve_move::RetrieveScp>,
    /// Storage Commitment Push Model.
    pub commitment: Option<storage_commitment::CommitmentScp>,
}

/// The handler of one complete command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// C-ECHO (Verification).
    Echo,
    /// C-STORE (Storage).
    Store,
    /// C-FIND on Modality Worklist.
    WorklistFind,
    /// C-FIND on a Query/Retrieve information model.
    QueryFind,
    /// N-CREATE on MPPS.
    MppsCreate,
    /// N-SET on MPPS.
    MppsSet,
    /// C-MOVE on a Query/Retrieve MOVE model.
    QueryMove,
    /// C-GET on a Query/Retrieve GET model.
    QueryGet,
    /// N-ACTION on Storage Commitment Push Model.
    CommitAction,
    /// N-EVENT-REPORT-RSP on Storage Commitment: the requestor's answer to our report.
    CommitReportResponse,
    /// C-CANCEL whose operation has ended already (a running one is seen by the responder).
    LateCancel,
    /// Anything else: 0211 Unrecognized operation.
    Unsupported,
}

impl crate::net::ul::association::Offered for &Offer {
    fn supports(&self, abstract_syntax: &str) -> bool {
        Offer::supports(self, abstract_syntax)
    }

    fn requestor_may_be_scp(&self, sop_class: &str) -> bool {
        // C-GET sends its sub-operations as C-STOREs to the requestor on its association.
        self.retrieve.is_some()
            && self
                .storage
                .as_ref()
                .is_some_and(|s| s.sop_classes.supports(sop_class))
    }

    fn extended_negotiation(&self, sop_class: &str, proposed: &[u8]) -> Option<Vec<u8>> {
        (self.query.is_some() && query_retrieve_find::is_find_model(sop_class))
            .then(|| query_retrieve_find::extended_negotiation(proposed))
    }
}

impl Offer {
    /// Whether a proposed abstract syntax is accepted on this port.
    pub fn supports(&self, abstract_syntax: &str) -> bool {
        if abstract_syntax == verification::VERIFICATION_SOP_CLASS {
            return true;
        }
        if let Some(s) = &self.storage {
            if s.sop_classes.supports(abstract_syntax) {
                return true;
            }
        }
        if self.query.is_some() && query_retrieve_find::is_find_model(abstract_syntax) {
            return true;
        }
        if self.retrieve.is_some()
            && (query_retrieve_move::is_move_model(abstract_syntax)
                || query_retrieve_get::is_get_model(abstract_syntax))
        {
            return true;
        }
        if self.commitment.is_some() && abstract_syntax == storage_commitment::SOP_CLASS {
            return true;
        }
        self.worklist.is_some()
            && matches!(
                abstract_syntax,
                modality_worklist::SOP_CLASS | modality_performed_procedure_step::SOP_CLASS
            )
    }

    /// The dispatch table: which service handles `command_field` on a context of
    /// `abstract_syntax` (an accepted one).
    pub fn route(&self, abstract_syntax: &str, command_field: u16) -> Route {
        use CommandField as F;
        let is = |f: F| command_field == f as u16;
        let verification = abstract_syntax == verification::VERIFICATION_SOP_CLASS;
        if is(F::CEchoRq) {
            // Answered on any context, as DCMTK and most SCPs do.
            return Route::Echo;
        }
        if is(F::CCancelRq) {
            return Route::LateCancel;
        }
        if is(F::CStoreRq) && self.storage.is_some() && !verification {
            return Route::Store;
        }
        if is(F::CFindRq)
            && self.query.is_some()
            && query_retrieve_find::is_find_model(abstract_syntax)
        {
            return Route::QueryFind;
        }
        if self.retrieve.is_some() {
            if is(F::CMoveRq) && query_retrieve_move::is_move_model(abstract_syntax) {
                return Route::QueryMove;
            }
            if is(F::CGetRq) && query_retrieve_get::is_get_model(abstract_syntax) {
                return Route::QueryGet;
            }
        }
        if self.commitment.is_some() && abstract_syntax == storage_commitment::SOP_CLASS {
            if is(F::NActionRq) {
                return Route::CommitAction;
            }
            if is(F::NEventReportRsp) {
                return Route::CommitReportResponse;
            }
        }
        if self.worklist.is_some() {
            if is(F::CFindRq) && abstract_syntax == modality_worklist::SOP_CLASS {
                return Route::WorklistFind;
            }
            if abstract_syntax == modality_performed_procedure_step::SOP_CLASS {
                if is(F::NCreateRq) {
                    return Route::MppsCreate;
                }
                if is(F::NSetRq) {
                    return Route::MppsSet;
                }
            }
        }
        Route::Unsupported
    }
}
