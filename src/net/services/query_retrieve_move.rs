//! Query/Retrieve C-MOVE SCP (PS3.4 C.4.2): the instances an identifier names are sent to a
//! destination AE title of the destination table, over sub-associations of the storage SCU.
//!
//! Skeleton (issue 13): the service's configuration and the models it answers; the work is
//! being built.

use std::sync::Arc;

use dicom_dictionary_std::uids;

use crate::net::services::query_retrieve_find::Settled;
use crate::rt::WorkPool;
use crate::store::index::Index;
use crate::store::DataDir;

/// Patient Root Query/Retrieve Information Model – MOVE.
pub const PATIENT_ROOT: &str = uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE;
/// Study Root Query/Retrieve Information Model – MOVE.
pub const STUDY_ROOT: &str = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE;

/// What C-MOVE and C-GET need: the index to select instances, the files to send, the
/// destination table.
#[derive(Debug, Clone)]
pub struct RetrieveScp {
    /// Read-your-writes: waits for the checkpoint of acknowledged objects.
    pub settle: Option<Arc<dyn Settled>>,
    /// The index the identifier is matched against.
    pub index: Arc<Index>,
    /// The stored objects.
    pub data: DataDir,
    /// Threads selection and C-MOVE sub-associations run on (never a core).
    pub pool: WorkPool,
    /// C-MOVE destinations: the `[[destinations]]` table, looked up by AE title.
    pub destinations: Arc<dyn crate::net::services::Destinations>,
    /// Our AE title (the calling AE title of C-MOVE sub-associations).
    pub ae_title: String,
    /// C-GET sub-operations need the SCP role agreed for their storage class.
    pub get_requires_role_selection: bool,
}

/// Whether an abstract syntax is one of the MOVE models served.
pub fn is_move_model(abstract_syntax: &str) -> bool {
    matches!(abstract_syntax, PATIENT_ROOT | STUDY_ROOT)
}
