//! Index-attribute extraction over arbitrary dataset prefixes in four transfer syntaxes, and
//! the plain walk against dicom-parser: `extract_with` (which walks the plain cases itself)
//! must answer exactly as `extract_with_parser`.
#![no_main]

use dicom_core::Tag;
use dicom_gw::store::attrs::{extract_with, extract_with_parser};
use libfuzzer_sys::fuzz_target;

const SYNTAXES: [&str; 4] = [
    "1.2.840.10008.1.2",      // Implicit VR Little Endian
    "1.2.840.10008.1.2.1",    // Explicit VR Little Endian
    "1.2.840.10008.1.2.2",    // Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.1.99", // Deflated Explicit VR Little Endian
];

/// Routing tags past the indexed groups, as a route on Body Part Examined and Rows asks.
const WANTED: [Tag; 2] = [Tag(0x0018, 0x0015), Tag(0x0028, 0x0010)];

fuzz_target!(|data: &[u8]| {
    let [ts, flags, rest @ ..] = data else {
        return;
    };
    let ts = SYNTAXES[usize::from(*ts) % SYNTAXES.len()];
    let complete = flags & 1 == 1;
    let wanted: &[Tag] = if flags & 2 == 2 { &WANTED } else { &[] };
    assert_eq!(
        extract_with(rest, ts, complete, wanted),
        extract_with_parser(rest, ts, complete, wanted)
    );
});
