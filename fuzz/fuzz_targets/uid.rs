//! UID validation: whatever passes is safe to put in a path.
#![no_main]

use std::hint::black_box;

use dicom_gw::dicom::uid::{validate_uid, MAX_UID_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(uid) = validate_uid(s) {
        assert!(!uid.is_empty());
        assert!(uid.len() <= MAX_UID_LEN);
        assert!(uid.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
        assert!(!uid.contains(".."));
        assert!(!uid.starts_with('.') && !uid.ends_with('.'));
        assert!(s.starts_with(uid));
        black_box(uid);
    }
});
