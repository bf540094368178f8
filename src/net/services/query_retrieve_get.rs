//! Query/Retrieve C-GET SCP (PS3.4 C.4.3): the instances an identifier names are sent back
//! as C-STORE sub-operations on the requestor's own association, under the SCP role it
//! negotiated per storage class (SCP/SCU Role Selection).
//!
//! Skeleton (issue 13): the models it answers; the work is being built.

use dicom_dictionary_std::uids;

/// Patient Root Query/Retrieve Information Model – GET.
pub const PATIENT_ROOT: &str = uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET;
/// Study Root Query/Retrieve Information Model – GET.
pub const STUDY_ROOT: &str = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET;

/// Whether an abstract syntax is one of the GET models served.
pub fn is_get_model(abstract_syntax: &str) -> bool {
    matches!(abstract_syntax, PATIENT_ROOT | STUDY_ROOT)
}
