//! DIMSE command decoding; a decoded command's response must decode with the same message ID.
#![no_main]

use std::hint::black_box;

use dicom_gw::net::dimse::command::{decode_command, encode_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rq) = decode_command(data) else {
        return;
    };
    let response_field = rq.command_field | 0x8000;
    let rsp_bytes = encode_response(&rq, response_field, 0x0000, Some("fuzz \u{1} comment"));
    let rsp = decode_command(&rsp_bytes).expect("our own response decodes");
    assert_eq!(rsp.message_id, rq.message_id);
    assert_eq!(rsp.command_field, response_field);
    assert_eq!(rsp.status, Some(0x0000));
    assert!(!rsp.has_dataset);
    black_box(rsp);
});
