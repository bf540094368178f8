//! A-ASSOCIATE-RQ bytes → `dicom_ul::pdu::read_pdu` → `net::ul::association::negotiate`
//! (presentation contexts, user-information sub-items) under a few policies. Invariants on
//! an accept: every accepted context was proposed with an odd ID, an abstract syntax we
//! support and a transfer syntax among those proposed; the A-ASSOCIATE-AC encodes and reads
//! back.
#![no_main]

#[path = "common/alloc_guard.rs"]
mod alloc_guard;

use std::hint::black_box;

use dicom_gw::net::ul::association::{max_length, negotiate, AcceptorPolicy, Decision};
use dicom_ul::pdu::{read_pdu, write_pdu, Pdu, PresentationContextResultReason};
use libfuzzer_sys::fuzz_target;

const MAX_PDU: u32 = 262_144;

const SUPPORTED: [&str; 4] = [
    "1.2.840.10008.1.1",         // Verification
    "1.2.840.10008.5.1.4.31",    // Modality Worklist FIND
    "1.2.840.10008.3.1.2.3.3",   // MPPS
    "1.2.840.10008.5.1.4.1.1.2", // CT Image Storage
];

fuzz_target!(|data: &[u8]| {
    let [flags, pdu @ ..] = data else {
        return;
    };
    let Ok(Some(Pdu::AssociationRQ(rq))) = read_pdu(pdu, MAX_PDU, flags & 1 == 1) else {
        return;
    };
    // A repeated presentation context ID is answered once (the fixed finding of
    // tests/fuzz_regressions.rs): one result per distinct ID.
    let mut ids: Vec<u8> = rq.presentation_contexts.iter().map(|pc| pc.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let policy = AcceptorPolicy {
        ae_title: "DICOM_GW".into(),
        require_called_ae_title: flags & 2 != 0,
        allowed_calling_ae_titles: if flags & 4 != 0 {
            vec!["MODALITY".into()]
        } else {
            vec![]
        },
        max_pdu_length: MAX_PDU,
    };
    black_box(max_length(&rq.user_variables));
    match negotiate(&rq, &policy, flags & 8 != 0, |a: &str| {
        SUPPORTED.contains(&a)
    }) {
        Decision::Accept(ac, negotiated) => {
            assert_eq!(ac.presentation_contexts.len(), ids.len());
            for (id, ctx) in &negotiated.contexts {
                let answer = ac.presentation_contexts.iter().find(|r| r.id == *id);
                assert_eq!(
                    answer.map(|r| r.transfer_syntax.as_str()),
                    Some(ctx.transfer_syntax.as_str())
                );
            }
            for (id, ctx) in &negotiated.contexts {
                let proposed = rq
                    .presentation_contexts
                    .iter()
                    .find(|pc| pc.id == *id)
                    .expect("accepted context was proposed");
                assert!(SUPPORTED.contains(&ctx.abstract_syntax.as_str()));
                assert!(proposed
                    .transfer_syntaxes
                    .iter()
                    .any(|t| t.trim_end_matches('\0').trim() == ctx.transfer_syntax));
            }
            let accepted = ac
                .presentation_contexts
                .iter()
                .filter(|r| r.reason == PresentationContextResultReason::Acceptance)
                .count();
            assert!(negotiated.contexts.len() <= accepted);
            let mut out = Vec::new();
            let ac = Pdu::AssociationAC(*ac);
            if write_pdu(&mut out, &ac).is_ok() {
                let back = read_pdu(&out[..], MAX_PDU, false);
                assert!(matches!(back, Ok(Some(Pdu::AssociationAC(_)))), "{back:?}");
            }
        }
        Decision::Reject(rj, why) => {
            let mut out = Vec::new();
            write_pdu(&mut out, &Pdu::AssociationRJ(rj)).expect("an A-ASSOCIATE-RJ encodes");
            black_box(why.to_string());
        }
    }
});
