//! Storage Commitment N-ACTION-RQ datasets as production decodes them
//! (`storage_commitment::decode_request`: the structure scan with the limits used before
//! dicom-object, the decoder, UID checks), in the three uncompressed syntaxes.
//!
//! Oracle: an accepted request has a valid Transaction UID and at least one reference, every
//! UID of which is valid; a refusal is always one of the statuses the module documents.
#![no_main]

#[path = "common/alloc_guard.rs"]
mod alloc_guard;

use dicom_gw::dicom::uid::validate_uid;
use dicom_gw::net::services::storage_commitment::{decode_request, status};
use libfuzzer_sys::fuzz_target;

const SYNTAXES: [&str; 3] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
];

fuzz_target!(|data: &[u8]| {
    let [ts, bytes @ ..] = data else {
        return;
    };
    let ts = SYNTAXES[usize::from(*ts) % SYNTAXES.len()];
    match decode_request(bytes, ts) {
        Ok(r) => {
            assert!(validate_uid(&r.transaction_uid).is_ok());
            assert!(!r.references.is_empty());
            for x in &r.references {
                assert!(validate_uid(&x.sop_class_uid).is_ok());
                assert!(validate_uid(&x.sop_instance_uid).is_ok());
            }
        }
        Err(e) => assert!(
            matches!(
                e.status,
                status::PROCESSING_FAILURE | status::INVALID_ARGUMENT_VALUE
            ),
            "undocumented status {:04X}",
            e.status
        ),
    }
});
