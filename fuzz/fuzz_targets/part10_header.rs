//! The Part-10 header `store::meta::build_header` encodes itself, against dicom-object's
//! `FileMetaTableBuilder` and writer (`build_header_with_dicom_object`), over arbitrary SOP
//! Class/Instance UIDs, transfer syntaxes and source AE titles (they come from the peer's
//! command and association).
#![no_main]

use dicom_gw::store::meta::{build_header, build_header_with_dicom_object};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Four values separated by 0xFF (which is never part of UTF-8).
    let mut parts = data.split(|b| *b == 0xFF).map(String::from_utf8_lossy);
    let mut next = || parts.next().unwrap_or_default();
    let (class, instance, ts, ae) = (next(), next(), next(), next());
    let ours = build_header(&class, &instance, &ts, &ae);
    if [&class, &instance, &ts].iter().any(|v| !v.is_ascii()) {
        // A UID outside ASCII is refused (dicom-object writes Latin-1 or refuses).
        assert!(ours.is_err());
        return;
    }
    // A source AE title outside ASCII is left out.
    let ae = if ae.trim().is_ascii() { &ae[..] } else { "" };
    assert_eq!(
        ours.ok(),
        build_header_with_dicom_object(&class, &instance, &ts, ae).ok(),
        "{class:?} {instance:?} {ts:?} {ae:?}"
    );
});
