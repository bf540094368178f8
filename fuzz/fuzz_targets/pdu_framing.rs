//! PDU header framing (peek_header + check_length) and dicom-ul's control-PDU decoder over
//! arbitrary bytes: neither may panic.
#![no_main]

use std::hint::black_box;

use dicom_gw::net::ul::pdata::{check_length, peek_header, PduType, PDU_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const MAX_PDATA: u32 = 262_144;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = peek_header(data) {
        assert!(data.len() >= PDU_HEADER_LEN);
        assert_eq!(h.total_len(), PDU_HEADER_LEN + h.length as usize);
        let checked = check_length(h, MAX_PDATA);
        if let Ok(ty) = checked {
            assert_eq!(ty as u8, h.pdu_type);
            if ty == PduType::PData {
                assert!(h.length <= MAX_PDATA);
            }
        }
        black_box(checked.ok());
    } else {
        assert!(data.len() < PDU_HEADER_LEN);
    }
    black_box(dicom_ul::pdu::read_pdu(data, MAX_PDATA, true).ok());
});
