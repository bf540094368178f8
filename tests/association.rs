//! Association-level behaviour of the store service: AE title checks, the association limit,
//! release, ARTIM and DIMSE timeouts, and SIGTERM with an open association. Every case runs
//! under both I/O backends (`gwtest!`), with DCMTK's echoscu as the well-behaved peer and the
//! scripted raw peer (tests/peer) where the exact PDU bytes matter.

mod peer;
mod util;

use std::path::{Path, PathBuf};

use peer::*;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");

/// Writes `toml` to `dir/gw.toml` and returns the `--config` arguments.
fn config(dir: &Path, toml: &str) -> Vec<String> {
    let p: PathBuf = dir.join("gw.toml");
    std::fs::write(&p, toml).unwrap();
    vec!["--config".into(), p.to_string_lossy().into_owned()]
}

/// Starts a daemon with a config file; the data directory is `dir/data`.
fn start(dir: &Path, io: &str, toml: &str) -> Daemon {
    let args = config(dir, toml);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(BIN, dir.join("data"), io, &args)
}

/// echoscu with `args` must succeed.
fn echo_ok(gw: &Daemon, args: &[&str], what: &str) {
    let out = echoscu(gw.port, args);
    assert!(
        out.status.success(),
        "{what}: echoscu {args:?} failed: {}\n{}\n--- daemon ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        gw.stderr()
    );
}

/// Expects an A-ASSOCIATE-RJ for `rq` and returns its (result, source, reason) bytes, after
/// checking the daemon closes once we do.
fn expect_reject(gw: &Daemon, rq: dicom_ul::pdu::AssociationRQ) -> (u8, u8, u8) {
    let (p, r) = Peer::request(gw.port, rq);
    let Received::Pdu(pdu_type::ASSOCIATE_RJ, b) = &r else {
        panic!("expected A-ASSOCIATE-RJ, got {r:?}");
    };
    assert_eq!(b.len(), 10, "A-ASSOCIATE-RJ is 10 bytes: {b:02X?}");
    assert_eq!(&b[1..6], &[0, 0, 0, 0, 4], "RJ header: {b:02X?}");
    let got = (b[7], b[8], b[9]);
    p.finish();
    got
}

/// Associates, retrying (at most 100 times, 100 ms apart) while the daemon answers with a
/// transient local-limit rejection.
fn associate_retrying(gw: &Daemon, rq: dicom_ul::pdu::AssociationRQ) -> Peer {
    for _ in 0..100 {
        let (p, r) = Peer::request(gw.port, rq.clone());
        match &r {
            Received::Pdu(pdu_type::ASSOCIATE_AC, _) => return p,
            Received::Pdu(pdu_type::ASSOCIATE_RJ, b) if b[7..10] == [2, 3, 2] => {
                p.finish();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => panic!("association: unexpected answer {other:?}"),
        }
    }
    panic!(
        "association still rejected after 100 tries:\n{}",
        gw.stderr()
    );
}

gwtest!(called_ae_title_enforced, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = start(
        tmp.path(),
        io,
        "[store]\nae_title = \"DICOM_GW\"\nrequire_called_ae_title = true\n",
    );
    let out = echoscu(gw.port, &["-aec", "WRONG"]);
    assert!(
        !out.status.success(),
        "echoscu with a wrong called AE title succeeded:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Permanent (1), service user (1), called AE title not recognized (7).
    let rq = association_rq("GWTEST", "WRONG", &default_contexts());
    assert_eq!(expect_reject(&gw, rq), (1, 1, 7));
    // Our AE title: accepted by the raw peer and by echoscu.
    let mut p = Peer::associate_with(
        gw.port,
        association_rq("GWTEST", "DICOM_GW", &default_contexts()),
    );
    assert_eq!(p.echo(1, 1), 0x0000);
    p.release();
    echo_ok(&gw, &[], "correct called AE title");
    gw.stop();
});

gwtest!(calling_ae_title_allow_list, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = start(
        tmp.path(),
        io,
        "[store]\nallowed_calling_ae_titles = [\"GOOD\"]\n",
    );
    // Permanent (1), service user (1), calling AE title not recognized (3).
    let rq = association_rq("BAD", "DICOM_GW", &default_contexts());
    assert_eq!(expect_reject(&gw, rq), (1, 1, 3));
    let out = echoscu(gw.port, &["-aet", "BAD"]);
    assert!(!out.status.success(), "echoscu -aet BAD was accepted");
    let mut p = Peer::associate_with(
        gw.port,
        association_rq("GOOD", "DICOM_GW", &default_contexts()),
    );
    assert_eq!(p.echo(1, 7), 0x0000);
    p.release();
    echo_ok(&gw, &["-aet", "GOOD"], "allowed calling AE title");
    gw.stop();
});

gwtest!(association_limit, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = start(tmp.path(), io, "[store]\nmax_associations = 1\n");
    let mut first = Peer::associate(gw.port);
    assert_eq!(first.echo(1, 1), 0x0000);
    // Transient (2), service provider presentation (3), local limit exceeded (2).
    let rq = association_rq("GWTEST", "DICOM_GW", &default_contexts());
    assert_eq!(expect_reject(&gw, rq.clone()), (2, 3, 2));
    let out = echoscu(gw.port, &[]);
    assert!(!out.status.success(), "echoscu got a second association");
    // The held association still works, and once released a new one is accepted.
    assert_eq!(first.echo(1, 2), 0x0000);
    first.release();
    // echoscu's rejected association may still be closing on the daemon's side (a rejected
    // association counts until its peer closes): retry transient rejections, bounded.
    let mut again = associate_retrying(&gw, rq);
    assert_eq!(again.echo(1, 3), 0x0000);
    again.release();
    echo_ok(&gw, &[], "after the limit freed up");
    gw.stop();
});

gwtest!(release_gets_release_rp, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = start(tmp.path(), io, "");
    let mut p = Peer::associate(gw.port);
    assert_eq!(
        p.context_result(1),
        dicom_ul::pdu::PresentationContextResultReason::Acceptance
    );
    p.send(&encode_pdu(&dicom_ul::pdu::Pdu::ReleaseRQ)).unwrap();
    let r = p.recv();
    let Received::Pdu(pdu_type::RELEASE_RP, b) = &r else {
        panic!("expected A-RELEASE-RP, got {r:?}");
    };
    assert_eq!(b, &[0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0], "A-RELEASE-RP bytes");
    p.finish();
    // Released straight after associating, and after a message.
    let mut p = Peer::associate(gw.port);
    assert_eq!(p.echo(1, 9), 0x0000);
    p.release();
    echo_ok(&gw, &[], "after release");
    gw.stop();
});

gwtest!(artim_closes_silent_connection, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = start(tmp.path(), io, "[store]\nacse_timeout_seconds = 1\n");
    let mut p = Peer::connect(gw.port);
    // ARTIM expiry in Sta2 is AA-2: close, no PDU. Bounded by the peer's 20 s read timeout.
    p.expect_close("connection without A-ASSOCIATE-RQ");
    drop(p);
    // A half-sent A-ASSOCIATE-RQ header is no better than silence.
    let mut p = Peer::connect(gw.port);
    p.send(&[0x01, 0x00, 0x00]).unwrap();
    let r = p.recv();
    assert!(
        matches!(r, Received::Closed { partial: 0, .. }) || r.pdu_type() == Some(pdu_type::ABORT),
        "partial A-ASSOCIATE-RQ: expected close or A-ABORT, got {r:?}"
    );
    // Sta13 after A-RELEASE-RP: a peer that never closes is closed on ARTIM expiry.
    let mut p = Peer::associate(gw.port);
    p.send(&encode_pdu(&dicom_ul::pdu::Pdu::ReleaseRQ)).unwrap();
    assert_eq!(p.recv().pdu_type(), Some(pdu_type::RELEASE_RP));
    p.expect_close("released association whose peer keeps the connection open");
    echo_ok(&gw, &[], "after ARTIM");
    gw.stop();
});

gwtest!(artim_after_reject, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = start(
        tmp.path(),
        io,
        "[store]\nacse_timeout_seconds = 1\nrequire_called_ae_title = true\n",
    );
    // Sta13 after A-ASSOCIATE-RJ: a peer that never closes is closed on ARTIM expiry.
    let (mut p, r) = Peer::request(
        gw.port,
        association_rq("GWTEST", "WRONG", &default_contexts()),
    );
    assert_eq!(r.pdu_type(), Some(pdu_type::ASSOCIATE_RJ), "{r:?}");
    p.expect_close("rejected association whose peer keeps the connection open");
    echo_ok(&gw, &[], "after ARTIM in Sta13");
    gw.stop();
});

gwtest!(dimse_idle_timeout_aborts, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = start(tmp.path(), io, "[store]\ndimse_timeout_seconds = 1\n");
    let mut p = Peer::associate(gw.port);
    p.expect_abort_and_close("idle association");
    // Activity keeps it alive: an echo right after associating is answered.
    let mut p = Peer::associate(gw.port);
    assert_eq!(p.echo(1, 1), 0x0000);
    p.expect_abort_and_close("idle after one echo");
    echo_ok(&gw, &[], "after DIMSE timeout");
    gw.stop();
});

gwtest!(sigterm_with_idle_association, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = start(tmp.path(), io, "grace_period_seconds = 1\n");
    let mut p = Peer::associate(gw.port);
    assert_eq!(p.echo(1, 1), 0x0000);
    let status = gw.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}\n{}",
        gw.stderr()
    );
    match p.recv() {
        Received::Pdu(pdu_type::ABORT, _) => p.expect_close("after A-ABORT on shutdown"),
        Received::Closed { partial: 0, .. } => {}
        other => panic!("expected A-ABORT or close on shutdown, got {other:?}"),
    }
});

gwtest!(sigterm_with_released_association_left_open, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    // ARTIM far longer than the grace period: shutdown must not wait for it.
    let mut gw = start(
        tmp.path(),
        io,
        "grace_period_seconds = 1\n[store]\nacse_timeout_seconds = 120\n",
    );
    let mut p = Peer::associate(gw.port);
    p.send(&encode_pdu(&dicom_ul::pdu::Pdu::ReleaseRQ)).unwrap();
    assert_eq!(p.recv().pdu_type(), Some(pdu_type::RELEASE_RP));
    // The peer keeps its end open (Sta13 on the daemon's side). terminate() waits 30 s at most.
    let status = gw.terminate();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
    p.expect_close("after shutdown");
});
