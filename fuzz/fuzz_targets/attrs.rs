//! Index-attribute extraction over arbitrary dataset prefixes in four transfer syntaxes.
#![no_main]

use std::hint::black_box;

use dicom_gw::store::attrs::extract;
use libfuzzer_sys::fuzz_target;

const SYNTAXES: [&str; 4] = [
    "1.2.840.10008.1.2",      // Implicit VR Little Endian
    "1.2.840.10008.1.2.1",    // Explicit VR Little Endian
    "1.2.840.10008.1.2.2",    // Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.1.99", // Deflated Explicit VR Little Endian
];

fuzz_target!(|data: &[u8]| {
    let [ts, complete, rest @ ..] = data else {
        return;
    };
    let ts = SYNTAXES[usize::from(*ts) % SYNTAXES.len()];
    let complete = complete & 1 == 1;
    black_box(extract(rest, ts, complete).ok());
});
