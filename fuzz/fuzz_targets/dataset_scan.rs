//! The dataset structure scanner (`dicom::scan`): it never panics, and pushing the same bytes
//! in any chunking gives exactly what `check` gives on the whole.
#![no_main]

#[path = "common/alloc_guard.rs"]
mod alloc_guard;

use dicom_gw::dicom::scan::{check, Encoding, Limits, Scanner, UnUndefined};
use libfuzzer_sys::fuzz_target;

const SYNTAXES: [(&str, Encoding); 3] = [
    ("1.2.840.10008.1.2", Encoding::ImplicitLittle),
    ("1.2.840.10008.1.2.1", Encoding::ExplicitLittle),
    ("1.2.840.10008.1.2.2", Encoding::ExplicitBig),
];

fuzz_target!(|data: &[u8]| {
    let [mode, seed, rest @ ..] = data else {
        return;
    };
    // Bits 0-1: the encoding (3 = deflated explicit LE, whole-buffer only); bits 2-3: how UN
    // of undefined length is read; bits 4-7: a small depth limit (0 = the default 16).
    let un = match (mode >> 2) & 3 {
        0 | 3 => UnUndefined::ImplicitLittle,
        1 => UnUndefined::AsOuter,
        _ => UnUndefined::Refuse,
    };
    let depth = usize::from(mode >> 4);
    let limits = Limits {
        max_depth: if depth == 0 { 16 } else { depth - 1 },
        max_elements: 4096,
        max_size: 1 << 20,
        un_undefined: un,
    };
    if mode & 3 == 3 {
        let _ = check(rest, "1.2.840.10008.1.2.1.99", &limits);
        return;
    }
    let (ts, enc) = SYNTAXES[usize::from(mode & 3)];
    let whole = check(rest, ts, &limits);
    if let Ok(s) = &whole {
        assert_eq!(s.bytes, rest.len() as u64);
        assert!(s.max_depth <= limits.max_depth);
        assert!(s.elements + s.items + s.fragments <= limits.max_elements);
    }

    // The same bytes in chunks whose sizes follow a tiny PRNG seeded by `seed`.
    let mut state = u32::from(*seed) | 1;
    let mut scanner = Scanner::new(enc, limits);
    let mut at = 0;
    let mut pushed = Ok(());
    while at < rest.len() && pushed.is_ok() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = match state % 4 {
            0 => 1,
            1 => (state >> 8) as usize % 13,
            2 => (state >> 8) as usize % 64,
            _ => rest.len(),
        };
        let end = (at + n).min(rest.len());
        pushed = scanner.push(&rest[at..end]);
        assert!(scanner.position() <= end as u64);
        at = end;
    }
    let chunked = pushed.and_then(|()| scanner.finish());
    assert_eq!(chunked, whole);
});
