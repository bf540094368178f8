//! Bad input on the worklist port (issue 6): every case gets the right DICOM answer or an
//! A-ABORT, never a hang or a crash, and the daemon keeps serving (each case ends with a
//! C-ECHO or a fresh association that works). Driven by the scripted raw-socket peer.

mod peer;
mod util;

use dicom_gw::net::dimse::command::{tags, CommandBuilder, CommandField, NO_DATASET};
use dicom_ul::pdu::PresentationContextResultReason;
use peer::*;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const MWL_FIND: &str = "1.2.840.10008.5.1.4.31";
const MPPS: &str = "1.2.840.10008.3.1.2.3.3";

/// Contexts: 1 Verification, 3 CT storage (not served here), 5 MWL FIND, 7 MPPS.
fn contexts() -> Vec<(u8, String, Vec<String>)> {
    vec![
        (1, VERIFICATION.into(), vec![TS_IMPLICIT_LE.into()]),
        (3, CT.into(), vec![TS_EXPLICIT_LE.into()]),
        (5, MWL_FIND.into(), vec![TS_EXPLICIT_LE.into()]),
        (7, MPPS.into(), vec![TS_IMPLICIT_LE.into()]),
    ]
}

fn associate(port: u16) -> Peer {
    Peer::associate_with(port, association_rq("GWTEST", "DICOM_GW", &contexts()))
}

fn find_rq(message_id: u16, has_dataset: bool) -> Vec<u8> {
    CommandBuilder::new()
        .uid(tags::AFFECTED_SOP_CLASS_UID, MWL_FIND)
        .us(tags::COMMAND_FIELD, CommandField::CFindRq as u16)
        .us(tags::MESSAGE_ID, message_id)
        .us(tags::PRIORITY, 0)
        .us(
            tags::COMMAND_DATA_SET_TYPE,
            if has_dataset { 0 } else { NO_DATASET },
        )
        .build()
}

#[test]
fn worklist_port_answers_bad_input_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = Daemon::start(BIN, tmp.path().join("data"), "epoll", &[]);
    let port = gw.worklist_port;

    // Not DICOM at all: A-ABORT (or a close), never a hang.
    let mut p = Peer::connect(port);
    p.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    match p.recv() {
        Received::Pdu(pdu_type::ABORT, _) | Received::Closed { .. } => {}
        other => panic!("HTTP on the worklist port: {other:?}"),
    }

    // Contexts: the storage class is refused, the worklist classes and Verification accepted.
    let mut p = associate(port);
    assert_eq!(
        p.context_result(3),
        PresentationContextResultReason::AbstractSyntaxNotSupported
    );
    for id in [1, 5, 7] {
        assert_eq!(
            p.context_result(id),
            PresentationContextResultReason::Acceptance
        );
    }
    // C-FIND without an identifier: A900, association kept.
    p.send_message(5, true, &find_rq(1, false));
    let rsp = p.read_response();
    assert_eq!(rsp.command_field, 0x8020);
    assert_eq!(rsp.status, Some(0xA900), "{rsp:?}");
    // An identifier of odd length: A900, association kept.
    p.send_message(5, true, &find_rq(2, true));
    p.send_message(5, false, &[0x10, 0x00, 0x10]);
    let rsp = p.read_response();
    assert_eq!(rsp.status, Some(0xA900), "{rsp:?}");
    // An identifier with a wrong VR for a key (PatientName as DA): A900.
    let mut ident = vec![0x10, 0x00, 0x10, 0x00, b'D', b'A', 8, 0];
    ident.extend_from_slice(b"20261122");
    p.send_message(5, true, &find_rq(3, true));
    p.send_message(5, false, &ident);
    let rsp = p.read_response();
    assert_eq!(rsp.status, Some(0xA900), "{rsp:?}");
    // A C-STORE on the Verification context: 0211 Unrecognized operation, dataset discarded.
    p.send_message(
        1,
        true,
        &dicom_gw::net::dimse::command::encode_store_rq(4, CT, "1.2.3.4"),
    );
    p.send_message(1, false, &[0u8; 64]);
    let rsp = p.read_response();
    assert_eq!(rsp.status, Some(0x0211), "{rsp:?}");
    // N-CREATE without a dataset: 0120 (missing attributes).
    let n_create = CommandBuilder::new()
        .uid(tags::AFFECTED_SOP_CLASS_UID, MPPS)
        .us(tags::COMMAND_FIELD, CommandField::NCreateRq as u16)
        .us(tags::MESSAGE_ID, 5)
        .us(tags::COMMAND_DATA_SET_TYPE, NO_DATASET)
        .uid(tags::AFFECTED_SOP_INSTANCE_UID, "1.2.3.5")
        .build();
    p.send_message(7, true, &n_create);
    let rsp = p.read_response();
    assert_eq!(rsp.command_field, 0x8140);
    assert_eq!(rsp.status, Some(0x0120), "{rsp:?}");
    assert_eq!(p.echo(1, 6), 0x0000, "association still usable");
    p.release();

    // A PDV on a context that was not accepted: A-ABORT.
    let mut p = associate(port);
    p.send_pdv(3, true, true, &find_rq(1, false));
    p.expect_abort_and_close("PDV on a rejected context");

    // A P-DATA-TF declaring 1 GiB: A-ABORT before anything is buffered.
    let mut p = associate(port);
    let mut huge = vec![pdu_type::P_DATA, 0];
    huge.extend_from_slice(&(1u32 << 30).to_be_bytes());
    huge.extend_from_slice(&[0u8; 32]);
    p.send(&huge).unwrap();
    p.expect_abort_and_close("oversized P-DATA-TF");

    // A dataset fragment with no command before it: A-ABORT.
    let mut p = associate(port);
    p.send_pdv(5, false, true, &[0u8; 8]);
    p.expect_abort_and_close("dataset without a command");

    // And the service is still there.
    let mut p = associate(port);
    assert_eq!(p.echo(1, 1), 0x0000);
    p.release();
    gw.stop();
}
