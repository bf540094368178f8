//! P-DATA-TF body splitting: invariants on success, and an encode → reframe → split
//! round-trip of the input treated as one message.
#![no_main]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use dicom_gw::net::ul::pdata::{
    check_length, encode_message, peek_header, split_pdata, PduType, PDU_HEADER_LEN, PDV_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 1. Arbitrary body: no panic; on success the PDVs tile the body exactly.
    if let Ok(pdvs) = split_pdata(Bytes::copy_from_slice(data)) {
        assert!(!pdvs.is_empty());
        let sum: usize = pdvs.iter().map(|p| p.data.len()).sum();
        assert_eq!(sum + PDV_HEADER_LEN * pdvs.len(), data.len());
        assert!(pdvs.iter().all(|p| p.pc_id % 2 == 1));
        black_box(&pdvs);
    }

    // 2. Round-trip: the input as a message, parameters taken from its first bytes.
    let (pc_id, is_command, peer_max) = match data {
        [a, b, c, ..] => (
            a | 1,
            b & 1 == 1,
            // 0 = unlimited, otherwise a small PDU size so that messages fragment.
            if c & 0x80 != 0 {
                0
            } else {
                8 + u32::from(*c) * 4
            },
        ),
        _ => (1, false, 16),
    };
    let mut out = BytesMut::new();
    encode_message(&mut out, pc_id, is_command, data, peer_max);
    let mut buf = out.freeze();
    let mut got = Vec::with_capacity(data.len());
    let mut lasts = 0usize;
    let mut seen_last = false;
    while !buf.is_empty() {
        let h = peek_header(&buf).expect("encoder wrote a whole header");
        assert_eq!(check_length(h, u32::MAX), Ok(PduType::PData));
        if peer_max != 0 {
            assert!(h.length <= peer_max.max(PDV_HEADER_LEN as u32 + 2));
        }
        assert!(
            h.total_len() <= buf.len(),
            "PDU overruns the encoded buffer"
        );
        let mut pdu = buf.split_to(h.total_len());
        let body = pdu.split_off(PDU_HEADER_LEN);
        for pdv in split_pdata(body).expect("encoder output splits") {
            assert!(!seen_last, "PDV after the last one");
            assert_eq!(pdv.pc_id, pc_id);
            assert_eq!(pdv.is_command, is_command);
            seen_last = pdv.is_last;
            lasts += usize::from(pdv.is_last);
            got.extend_from_slice(&pdv.data);
        }
    }
    assert_eq!(lasts, 1);
    assert_eq!(got, data);
});
