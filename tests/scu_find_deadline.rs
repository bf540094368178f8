//! The C-FIND SCU's overall deadline (`scu_find_until`, used by the API's remote query) against
//! a real peer that keeps sending pending responses slowly: a pynetdicom C-FIND SCP
//! (tests/peer/slow_find_scp.py) that would take 25 s to finish. Once the deadline passes
//! the SCU sends C-CANCEL; a peer that honours it answers FE00 and gets a clean release, a peer
//! that ignores it is aborted after the grace. Either way the caller gets
//! `ScuError::Deadline`, not the matches so far, and is not held for the peer's whole answer.

mod util;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dicom_gw::dicom::dataset::Dataset;
use dicom_gw::net::scu::{AssocParams, ScuError};
use dicom_gw::net::services::query_retrieve_find::{self as qr, CANCEL_GRACE};
use util::*;

const SLOW_FIND: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer/slow_find_scp.py");
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Short, so the test takes seconds; the API uses 25 s.
const DEADLINE: Duration = Duration::from_secs(2);
/// The peer's pace: one pending response every this long, [`RESPONSES`] of them (25 s).
const INTERVAL: f64 = 0.25;
/// Pending responses of the slow peer: enough that the whole answer takes far longer than
/// the deadline and its grace, few enough that an SCU without a deadline fails in 25 s.
const RESPONSES: u32 = 100;

/// The slow SCP with the default pace.
fn slow_scp(port: u16) -> PyServer {
    slow_scp_with(port, INTERVAL, RESPONSES)
}

/// `responses` pending responses, one every `interval` seconds.
fn slow_scp_with(port: u16, interval: f64, responses: u32) -> PyServer {
    let job = serde_json::json!({"port": port, "ae": "SLOW", "interval": interval,
        "responses": responses});
    PyServer::start(SLOW_FIND, &job, "LISTENING")
}

fn params(port: u16, calling: &str) -> AssocParams {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    AssocParams {
        addr,
        calling: calling.into(),
        called: "SLOW".into(),
        max_pdu: 65_536,
        // Each step is well within this: only the overall deadline can stop the exchange.
        timeout: Duration::from_secs(10),
        connect_timeout: None,
        contexts: vec![(qr::STUDY_ROOT.into(), vec![EXPLICIT_LE.into()])],
        implementation_class_uid: IMPL_CLASS_UID.into(),
        implementation_version_name: "GWTEST_FIND".into(),
    }
}

fn study_query() -> Dataset {
    let mut id = Dataset::new();
    let (tag, vr, value) = qr::parse_key("QueryRetrieveLevel=STUDY").unwrap();
    id.put(tag, vr, value);
    let (tag, vr, value) = qr::parse_key("StudyInstanceUID").unwrap();
    id.put(tag, vr, value);
    id
}

/// Runs one C-FIND with the deadline; the error and how long the call took.
fn find_with_deadline(port: u16, calling: &str) -> (ScuError, Duration) {
    let started = Instant::now();
    let r = qr::scu_find_until(
        &params(port, calling),
        None,
        qr::STUDY_ROOT,
        &study_query(),
        None,
        Some(DEADLINE),
    );
    let took = started.elapsed();
    match r {
        Err(e) => (e, took),
        Ok(f) => panic!(
            "the C-FIND finished ({:04X}, {} matches) although the peer needs 25 s",
            f.status,
            f.matches.len()
        ),
    }
}

#[test]
fn a_slow_peer_gets_a_c_cancel_at_the_deadline_and_an_abort_if_it_ignores_it() {
    let port = free_port();
    let scp = slow_scp(port);
    // The whole answer would take 100 × 0.25 s; the bound below is far from it, and only
    // says the call did not run on with the peer (not how fast it is).
    let bound = DEADLINE + CANCEL_GRACE + Duration::from_secs(5);

    // A peer that honours the C-CANCEL: FE00 comes, the association is released.
    let (e, took) = find_with_deadline(port, "HONOUR");
    assert!(matches!(e, ScuError::Deadline(d) if d == DEADLINE), "{e:?}");
    assert!(e.to_string().contains("did not finish within"), "{e}");
    assert!(took < bound, "the call ran on for {took:?}");
    scp.wait_line("CANCEL_SEEN HONOUR", Duration::from_secs(10));
    scp.wait_line("RELEASED HONOUR", Duration::from_secs(10));
    assert!(!scp.has("ABORTED HONOUR"));

    // A peer that ignores it and keeps sending pending responses: aborted after the grace.
    let (e, took) = find_with_deadline(port, "IGNORE");
    assert!(matches!(e, ScuError::Deadline(d) if d == DEADLINE), "{e:?}");
    assert!(took < bound, "the call ran on for {took:?}");
    scp.wait_line("CANCEL_SEEN IGNORE", Duration::from_secs(10));
    scp.wait_line("ABORTED IGNORE", Duration::from_secs(10));
    assert!(!scp.has("RELEASED IGNORE"));
}

/// Without a deadline (the CLI's `scu find`), a peer that finishes is answered as before.
#[test]
fn without_a_deadline_the_answer_is_complete() {
    let port = free_port();
    let scp = slow_scp_with(port, 0.0, 3);
    let f = qr::scu_find_until(
        &params(port, "HONOUR"),
        None,
        qr::STUDY_ROOT,
        &study_query(),
        None,
        None,
    )
    .unwrap();
    assert_eq!(f.status, 0x0000);
    assert_eq!(f.matches.len(), 3);
    scp.wait_line("RELEASED HONOUR", Duration::from_secs(10));
}
