//! Findings of the cargo-fuzz targets (fuzz/README.md), kept as tests through the public API.
//! Each names the target that found it. A finding in code the fuzz crate's owner does not own
//! is `#[ignore]`d with the reason until it is fixed; un-ignore it with the fix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use dicom_gw::dicom::json::{dataset_from_json, dataset_to_json, parse_datasets};
use dicom_gw::dicom::scan::{check, Limits, ScanError};
use dicom_gw::net::services::modality_worklist::read_dataset;
use dicom_gw::net::ul::association::{negotiate, AcceptorPolicy, Decision};
use dicom_ul::pdu::{
    AssociationRQ, PresentationContextProposed, PresentationContextResultReason, UserVariableItem,
};

/// Records the largest single allocation, so a test can say what a decoder asked for.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// Implicit VR LE element.
fn el(group: u16, elem: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// `mpps_dataset`, minimized by hand from a 2,373-byte input (an RT Plan): in Implicit VR,
/// (0000,0000) — UL in the dictionary — with a 6-byte value. dicom-parser 0.10 reads 4
/// bytes, takes the rest as the next header, and allocates the "length" it finds there
/// before checking it against the data: 1,953,722,985 bytes for the original input. The scan
/// refuses the value length, so `read_dataset` is never reached.
#[test]
fn a_short_binary_value_is_refused_before_dicom_parser_sees_it() {
    let mut ds = el(0x0008, 0x0020, b"20030711");
    ds.extend(el(0x0000, 0x0000, b"153557"));
    // Read 4 of the 6 bytes, the next "header" is "57" + "10 00", its "length" the next four
    // bytes, "10 00 12 00": 1,179,664 bytes allocated at once for a 72-byte dataset.
    ds.extend(el(0x0010, 0x0010, b"Last^First^mid^pre"));
    ds.extend(el(0x0010, 0x0020, b"id00001 "));
    assert_eq!(
        check(&ds, IMPLICIT_LE, &Limits::before_dicom_object()),
        Err(ScanError::BadValueLength {
            offset: 16,
            tag: dicom_core::Tag(0, 0),
            length: 6,
            unit: 4
        })
    );
    // What the scan protects against (dicom-parser's behaviour, measured, not asserted: a
    // fixed dicom-parser would make this test fail for the wrong reason).
    LARGEST.store(0, Ordering::Relaxed);
    let decoded = read_dataset(&ds, IMPLICIT_LE);
    eprintln!(
        "read_dataset without the scan: ok={} largest allocation {} bytes",
        decoded.is_ok(),
        LARGEST.load(Ordering::Relaxed)
    );
}

/// `mpps_dataset`, the next run (82 bytes, Implicit VR LE): a private group length
/// (0009,0000) of 50 bytes. The dictionary's range entry makes every (gggg,0000) UL, so
/// dicom-parser read 48 bytes, lost the framing and asked for a >64 MiB `SmallVec` in
/// `read_value_ul`. The scanner now looks private tags up in the dictionary as well.
#[test]
fn a_private_group_length_of_odd_size_is_refused() {
    let input = hex(
        "0009000000320000000000000000000000420000000000000000000000000000000000004         0ffffffffffffff81003d000000000000005555555555555505000000000000000000000000         000000802a00000000",
    );
    let (ts, ds) = (input[0], &input[1..]);
    assert_eq!(ts, 0, "the target's first byte: Implicit VR LE");
    assert_eq!(
        check(ds, IMPLICIT_LE, &Limits::before_dicom_object()),
        Err(ScanError::BadValueLength {
            offset: 0,
            tag: dicom_core::Tag(0x0009, 0x0000),
            length: 50,
            unit: 4
        })
    );
}

/// `mwl_identifier`, the same root cause (its run used a build from before the fix): the
/// first 149 bytes of a 1,169-byte RT Plan identifier whose (0007,0000) — a group length, UL —
/// has 6 bytes. dicom-parser asked for more than 64 MiB at once.
#[test]
fn an_identifier_with_an_odd_group_length_is_refused() {
    let input = hex(
        "00080012000800000032303033303930330800130006000000313530303331910016001e0000\
         00312e322e3834302e31303030382e352e312e342e312e312e3438312e3500080018002a0000\
         00312e322e3737372e3737372e37372e372e373737372e373737372e32303033303930333135\
         3030323300080020000800000032303033303731360700000006000000313533353537",
    );
    assert_eq!(input[0], 0, "the target's first byte: Implicit VR LE");
    assert_eq!(
        check(&input[1..], IMPLICIT_LE, &Limits::before_dicom_object()),
        Err(ScanError::BadValueLength {
            offset: 134,
            tag: dicom_core::Tag(0x0007, 0x0000),
            length: 6,
            unit: 4
        })
    );
}

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// `dicom_json`: `"Value": [null]` reads as one empty string and is written back as no value,
/// which reads as no string. Both are a zero-length value (PS3.18 F.2.5), so the output is
/// stable from the first round on, but the two `Dataset`s differ (`Strs([""])` against
/// `Strs([])`): anything comparing datasets (MPPS N-SET's "may not be changed" check) sees two
/// different values.
#[test]
fn json_null_value_round_trip_is_stable_after_one_round() {
    let text = r#"{"00400007": {"vr": "LO", "Value": [null]}}"#;
    let first = parse_datasets(text).unwrap().remove(0);
    let json = dataset_to_json(&first);
    let second = dataset_from_json(&json).unwrap();
    assert_eq!(dataset_to_json(&second), json);
    assert!(first
        .get(dicom_core::Tag(0x0040, 0x0007))
        .unwrap()
        .value
        .is_empty());
    assert!(second
        .get(dicom_core::Tag(0x0040, 0x0007))
        .unwrap()
        .value
        .is_empty());
}

fn rq_with(contexts: Vec<(u8, &str, Vec<&str>)>) -> AssociationRQ {
    AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "MODALITY".into(),
        called_ae_title: "DICOM_GW".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: contexts
            .into_iter()
            .map(|(id, a, ts)| PresentationContextProposed {
                id,
                abstract_syntax: a.into(),
                transfer_syntaxes: ts.into_iter().map(String::from).collect(),
            })
            .collect(),
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    }
}

/// `association_rq`: two presentation contexts with the same ID (PS3.8 §9.3.2.2 makes IDs
/// unique). `negotiate` answers both in the A-ASSOCIATE-AC and keeps the *last* one's
/// transfer syntax in `Negotiated::contexts`, while a peer reading the AC takes the first
/// result for the ID: the peer then sends Explicit VR and we decode Implicit VR.
/// Expected: one result per ID, and the negotiated transfer syntax is the one the AC states
/// for it (or the RQ is refused/aborted).
#[test]
fn duplicate_presentation_context_ids_get_one_consistent_answer() {
    const VERIFICATION: &str = "1.2.840.10008.1.1";
    let rq = rq_with(vec![
        (1, VERIFICATION, vec!["1.2.840.10008.1.2.1"]),
        (1, VERIFICATION, vec!["1.2.840.10008.1.2"]),
    ]);
    let policy = AcceptorPolicy {
        ae_title: "DICOM_GW".into(),
        require_called_ae_title: false,
        allowed_calling_ae_titles: vec![],
        max_pdu_length: 262_144,
    };
    match negotiate(&rq, &policy, false, |a: &str| a == VERIFICATION) {
        Decision::Accept(ac, negotiated) => {
            let answers: Vec<_> = ac
                .presentation_contexts
                .iter()
                .filter(|r| r.id == 1)
                .collect();
            assert_eq!(answers.len(), 1, "one result per presentation context ID");
            if answers[0].reason == PresentationContextResultReason::Acceptance {
                assert_eq!(
                    negotiated.contexts[&1].transfer_syntax,
                    answers[0].transfer_syntax
                );
            }
        }
        Decision::Reject(..) => {}
    }
}
