//! Resource limits of the association engine (issue 11), as the audit attacked them
//! (shared/reviews/audit.md C1, C2, H5–H7, M6): each attack is made on a running daemon, which
//! must answer it and go on serving C-STORE and C-ECHO, without threads or memory growing with
//! what the peer sends. Also the access policy (`allowed_peers`) and exclusive listening ports.

mod peer;
mod util;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use dicom_gw::net::dimse::command::{tags, CommandBuilder, CommandField};
use peer::*;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const MWL_FIND: &str = "1.2.840.10008.5.1.4.31";
const MPPS: &str = "1.2.840.10008.3.1.2.3.3";

/// Worklist contexts: 1 Verification, 5 MWL FIND (explicit LE), 7 MPPS (implicit LE).
fn worklist_contexts() -> Vec<(u8, String, Vec<String>)> {
    vec![
        (1, VERIFICATION.into(), vec![TS_IMPLICIT_LE.into()]),
        (5, MWL_FIND.into(), vec![TS_EXPLICIT_LE.into()]),
        (7, MPPS.into(), vec![TS_IMPLICIT_LE.into()]),
    ]
}

fn find_rq(message_id: u16) -> Vec<u8> {
    CommandBuilder::new()
        .uid(tags::AFFECTED_SOP_CLASS_UID, MWL_FIND)
        .us(tags::COMMAND_FIELD, CommandField::CFindRq as u16)
        .us(tags::MESSAGE_ID, message_id)
        .us(tags::PRIORITY, 0)
        .us(tags::COMMAND_DATA_SET_TYPE, 0)
        .build()
}

fn n_create_rq(message_id: u16) -> Vec<u8> {
    CommandBuilder::new()
        .uid(tags::AFFECTED_SOP_CLASS_UID, MPPS)
        .us(tags::COMMAND_FIELD, CommandField::NCreateRq as u16)
        .us(tags::MESSAGE_ID, message_id)
        .uid(
            tags::AFFECTED_SOP_INSTANCE_UID,
            "1.2.826.0.1.3680043.2.1143.77",
        )
        .us(tags::COMMAND_DATA_SET_TYPE, 0)
        .build()
}

/// `levels` nested Scheduled Procedure Step Sequences of undefined length, each with one
/// item of undefined length: 36 bytes a level in explicit VR, 32 in implicit (audit C1).
fn nested_sequences(levels: usize, explicit: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..levels {
        out.extend_from_slice(&[0x40, 0x00, 0x00, 0x01]); // (0040,0100)
        if explicit {
            out.extend_from_slice(b"SQ\0\0");
        }
        out.extend_from_slice(&[0xFF; 4]);
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        // item
    }
    for _ in 0..levels {
        out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]); // item delimiter
        out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]); // sequence delimiter
    }
    out
}

/// (threads, VmRSS in KiB) of a process, from /proc.
fn threads_and_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} not in /proc/{pid}/status"))
    };
    (field("Threads:"), field("VmRSS:"))
}

/// The daemon still does its job: C-ECHO on both ports and a C-STORE of a fresh object.
fn still_serving(gw: &Daemon, dir: &Path, what: &str) {
    let out = echoscu(gw.port, &[]);
    assert!(
        out.status.success(),
        "{what}: C-ECHO on the store port failed: {out:?}"
    );
    let out = echoscu(gw.worklist_port, &[]);
    assert!(
        out.status.success(),
        "{what}: C-ECHO on the worklist port failed: {out:?}"
    );
    let file = dir.join(format!("still-{}.dcm", run_id()));
    gen_part10(&file, &ObjSpec::new(7)).unwrap();
    storescu(gw.port, &[&file], &[]).assert_all_ok(&[&file]);
}

fn metric(gw: &Daemon, name_and_labels: &str) -> u64 {
    let r = request(gw.http_port, "GET", "/metrics", None, None);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels} not in /metrics:\n{}", r.text()))
}

gwtest!(
    nested_sequences_are_refused_before_any_object_is_built,
    |io: &str| {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let gw = Daemon::start(BIN, tmp.path().join("data"), io, &[]);
        let rq = association_rq("GWTEST", "DICOM_GW", &worklist_contexts());
        for levels in [5_000, 100_000] {
            let mut p = Peer::associate_with(gw.worklist_port, rq.clone());
            // A C-FIND identifier (explicit VR LE): Identifier does not match, with a comment.
            p.send_message(5, true, &find_rq(1));
            p.send_message(5, false, &nested_sequences(levels, true));
            let rsp = p.read_response();
            // 5,000 levels (180 KB): too deep; 100,000 levels (3.6 MB): too large to be kept.
            let expected = if levels == 5_000 { 0xA900 } else { 0xC000 };
            assert_eq!(rsp.status, Some(expected), "{levels}-level C-FIND: {rsp:?}");
            // An MPPS N-CREATE dataset (implicit VR LE): processing failure, with a comment.
            p.send_message(7, true, &n_create_rq(2));
            p.send_message(7, false, &nested_sequences(levels, false));
            let rsp = p.read_response();
            assert_eq!(rsp.status, Some(0x0110), "{levels}-level N-CREATE: {rsp:?}");
            // Same association, still usable.
            assert_eq!(p.echo(1, 3), 0x0000);
            p.release();
        }
        let log = gw.stderr();
        assert!(
            log.contains("nesting deeper than 16 levels"),
            "the refusal names the reason: {log}"
        );
        still_serving(&gw, tmp.path(), "after nested sequences");
    }
);

gwtest!(
    idle_connections_cost_no_threads_and_bounded_memory,
    |io: &str| {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let gw = Daemon::start(BIN, tmp.path().join("data"), io, &[]);
        still_serving(&gw, tmp.path(), "before"); // warm: pools, first association
        let (threads0, rss0) = threads_and_rss(gw.pid);
        // 400 connections to each port, each announcing a 100 KB A-ASSOCIATE-RQ and sending 60 KB
        // of it, then going quiet (audit H6/H7 held 1 MB each this way).
        let mut held = Vec::new();
        for port in [gw.port, gw.worklist_port] {
            for _ in 0..400 {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let mut head = vec![0x01, 0x00];
                head.extend_from_slice(&100_000u32.to_be_bytes());
                s.write_all(&head).unwrap();
                s.write_all(&vec![0u8; 60_000]).unwrap();
                held.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let (threads1, rss1) = threads_and_rss(gw.pid);
        eprintln!("threads {threads0} -> {threads1}, VmRSS {rss0} -> {rss1} KiB");
        assert!(
            threads1 <= threads0,
            "threads grew with idle connections: {threads0} -> {threads1}"
        );
        assert!(
            rss1 < rss0 + 64 * 1024,
            "RSS grew by {} KiB for 800 idle connections",
            rss1 - rss0
        );
        // While they are held, the oldest were closed to make room, and real peers get through.
        still_serving(&gw, tmp.path(), "with 800 idle connections");
        assert!(metric(&gw, "dicomgw_connections_evicted_total{service=\"store\"}") >= 300);
        assert!(
            metric(
                &gw,
                "dicomgw_connections_evicted_total{service=\"worklist\"}"
            ) >= 300
        );
        drop(held);
        still_serving(&gw, tmp.path(), "after idle connections");
    }
);

/// A worklist of `n` items (the daemon must not be running).
fn seed_worklist(data_dir: &Path, n: usize) {
    use dicom_gw::worklist::model::parse_items;
    std::fs::create_dir_all(data_dir).unwrap();
    let items: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "00080050": {"vr": "SH", "Value": [format!("ACC{i}")]},
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": format!("Flood^Patient{i}")}]},
                "00100020": {"vr": "LO", "Value": [format!("P{i}")]},
                "0020000D": {"vr": "UI", "Value": [format!("1.2.826.0.1.9.{i}")]},
                "00401001": {"vr": "SH", "Value": [format!("RP{i}")]},
                "00400100": {"vr": "SQ", "Value": [{
                    "00080060": {"vr": "CS", "Value": ["CT"]},
                    "00400001": {"vr": "AE", "Value": ["CT01"]},
                    "00400002": {"vr": "DA", "Value": ["20261206"]},
                    "00400009": {"vr": "SH", "Value": [format!("SPS{i}")]}
                }]}
            })
        })
        .collect();
    let store = dicom_gw::worklist::WorklistStore::open_in(data_dir).unwrap();
    store
        .create_many(
            parse_items(&serde_json::Value::Array(items).to_string()).unwrap(),
            dicom_gw::audit::no_audit,
        )
        .unwrap();
}

gwtest!(
    a_peer_flooding_during_a_cfind_meets_backpressure,
    |io: &str| {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        seed_worklist(&data, 3_000);
        let gw = Daemon::start(BIN, &data, io, &[]);
        still_serving(&gw, tmp.path(), "before");
        let (_, rss0) = threads_and_rss(gw.pid);
        let p = Peer::associate_with(
            gw.worklist_port,
            association_rq("GWTEST", "DICOM_GW", &worklist_contexts()),
        );
        drop(p);
        // A raw association: a universal C-FIND (3,000 matches), then more C-FIND-RQs as fast as
        // the socket takes them, never reading a response (audit H5: 5 GB in 20 s).
        let mut s = TcpStream::connect(("127.0.0.1", gw.worklist_port)).unwrap();
        s.write_all(&encode_pdu(&dicom_ul::pdu::Pdu::AssociationRQ(
            association_rq("FLOODER", "DICOM_GW", &worklist_contexts()),
        )))
        .unwrap();
        let mut ac = [0u8; 6];
        s.read_exact(&mut ac).unwrap();
        assert_eq!(ac[0], 0x02, "associated");
        let len = u32::from_be_bytes([ac[2], ac[3], ac[4], ac[5]]) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        let identifier = {
            // (0010,0010) PN, empty: universal matching on Patient's Name.
            vec![0x10, 0x00, 0x10, 0x00, b'P', b'N', 0, 0]
        };
        let mut one = Vec::new();
        one.extend_from_slice(&pdata_pdu(5, true, true, &find_rq(1)));
        one.extend_from_slice(&pdata_pdu(5, false, true, &identifier));
        s.write_all(&one).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let chunk: Vec<u8> = (0..200).flat_map(|_| one.clone()).collect();
        let (mut sent, started) = (0usize, Instant::now());
        while started.elapsed() < Duration::from_secs(8) && sent < 512 * 1024 * 1024 {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break, // the daemon stopped reading: backpressure
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let (_, rss1) = threads_and_rss(gw.pid);
        eprintln!(
            "flooder sent {} KiB in {:?}; daemon VmRSS {rss0} -> {rss1} KiB",
            sent / 1024,
            started.elapsed()
        );
        assert!(
            sent < 64 * 1024 * 1024,
            "the daemon kept reading: {sent} bytes accepted"
        );
        assert!(
            rss1 < rss0 + 64 * 1024,
            "RSS grew by {} KiB",
            rss1.saturating_sub(rss0)
        );
        drop(s);
        still_serving(&gw, tmp.path(), "after the flood");
    }
);

gwtest!(a_thread_limit_leaves_ingest_working, |io: &str| {
    require_dcmtk();
    let cgroups = Path::new("/sys/fs/cgroup/pids");
    if !cgroups.join("cgroup.procs").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs the cgroup v1 pids controller for this test"
        );
        eprintln!("skipped: no cgroup v1 pids controller here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gw = Daemon::start(BIN, tmp.path().join("data"), io, &[]);
    still_serving(&gw, tmp.path(), "before the limit");
    let group = cgroups.join(format!("dicom-gw-test-{}-{io}", gw.pid));
    std::fs::create_dir(&group).unwrap();
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _remove = Remove(group.clone());
    let (threads, _) = threads_and_rss(gw.pid);
    // No thread may be started from now on (audit C2: the committer then panicked and every
    // C-STORE was answered 0110 while /readyz said 200).
    std::fs::write(group.join("pids.max"), threads.to_string()).unwrap();
    std::fs::write(group.join("cgroup.procs"), gw.pid.to_string()).unwrap();
    for i in 0..3 {
        let files: Vec<_> = (0..10)
            .map(|j| {
                let f = tmp.path().join(format!("limited-{i}-{j}.dcm"));
                gen_part10(&f, &ObjSpec::new(100 + i * 10 + j)).unwrap();
                f
            })
            .collect();
        storescu(gw.port, &files, &[]).assert_all_ok(&files);
        let out = echoscu(gw.worklist_port, &[]);
        assert!(out.status.success(), "C-ECHO on the worklist port: {out:?}");
    }
    let events = std::fs::read_to_string(group.join("pids.events")).unwrap_or_default();
    eprintln!("pids.events: {events}");
    // Ingest works, so readiness must say so (and must not be stuck on a dead component).
    let r = request(gw.http_port, "GET", "/readyz", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
});

#[test]
fn allowed_peers_rejects_other_networks_with_the_standard_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[store]\nallowed_peers = [\"127.0.0.2/32\"]\n[worklist]\nallowed_peers = [\"127.0.0.2\"]\n",
    )
    .unwrap();
    let gw = Daemon::start(
        BIN,
        tmp.path().join("data"),
        "epoll",
        &["--config", cfg.to_str().unwrap()],
    );
    for port in [gw.port, gw.worklist_port] {
        // From 127.0.0.1: rejected permanently by the service user, no reason given.
        let mut p = Peer::connect_from(port, Ipv4Addr::new(127, 0, 0, 1));
        match p.send_rq(association_rq("OUTSIDER", "DICOM_GW", &default_contexts())) {
            Received::Pdu(pdu_type::ASSOCIATE_RJ, bytes) => {
                // Result (byte 7), source (8), reason (9) of the A-ASSOCIATE-RJ.
                assert_eq!((bytes[7], bytes[8], bytes[9]), (1, 1, 1), "{bytes:?}");
            }
            other => panic!("expected A-ASSOCIATE-RJ, got {other:?}"),
        }
        // From 127.0.0.2: accepted.
        let mut p = Peer::connect_from(port, Ipv4Addr::new(127, 0, 0, 2));
        let r = p.send_rq(association_rq("INSIDER", "DICOM_GW", &default_contexts()));
        assert_eq!(r.pdu_type(), Some(pdu_type::ASSOCIATE_AC), "{r:?}");
        p.daemon_max_pdu = 16384;
        assert_eq!(p.echo(1, 1), 0x0000);
        p.release();
    }
    assert_eq!(
        metric(
            &gw,
            "dicomgw_association_rejects_total{service=\"store\",reason=\"peer_address\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &gw,
            "dicomgw_association_rejects_total{service=\"worklist\",reason=\"peer_address\"}"
        ),
        1
    );
    let log = gw.stderr();
    assert!(
        log.contains("peer address not allowed") && log.contains("calling=OUTSIDER"),
        "the rejection is logged with the peer: {log}"
    );
    // Plain text for journald and files: no terminal escape codes (stderr is a pipe here).
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");
    // Every association line names the peer and both AE titles, on both ports.
    let accepted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("association accepted"))
        .collect();
    assert_eq!(accepted.len(), 2, "{log}");
    for l in accepted {
        assert!(
            l.contains("peer=127.0.0.2:")
                && l.contains("calling=INSIDER")
                && l.contains("called=DICOM_GW"),
            "{l}"
        );
    }
}

#[test]
fn an_open_worklist_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let warning = "the worklist service answers any peer on the network";
    // On a loopback address: no warning.
    let mut gw = Daemon::start(BIN, tmp.path().join("a"), "epoll", &[]);
    gw.stop();
    assert!(!gw.stderr().contains(warning), "{}", gw.stderr());
    // On every interface with no allow-list: warned at start-up (audit M2).
    let dir = tmp.path().join("b");
    let args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--data-dir".into(),
        dir.clone().into_os_string(),
        "--store-listen".into(),
        "127.0.0.1:0".into(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
        "--io".into(),
        "epoll".into(),
        "--worklist-listen".into(),
        "0.0.0.0:0".into(),
    ];
    let mut gw = Daemon::spawn(Path::new(BIN), &args, &dir).unwrap();
    gw.stop();
    assert!(gw.stderr().contains(warning), "{}", gw.stderr());
}

#[test]
fn a_second_daemon_cannot_take_a_listening_port() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Daemon::start(BIN, tmp.path().join("a"), "epoll", &[]);
    for (flag, port) in [
        ("--store-listen", first.port),
        ("--worklist-listen", first.worklist_port),
    ] {
        let addr = format!("127.0.0.1:{port}");
        let other = if flag == "--store-listen" {
            "--worklist-listen"
        } else {
            "--store-listen"
        };
        let args = vec![
            "serve".into(),
            "--data-dir".into(),
            tmp.path().join("b").into_os_string(),
            other.into(),
            "127.0.0.1:0".into(),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--io".into(),
            "epoll".into(),
            flag.into(),
            addr.clone().into(),
        ];
        let err = match Daemon::spawn(Path::new(BIN), &args, &tmp.path().join("b")) {
            Ok(_) => panic!("a second daemon started on {addr}"),
            Err(e) => e,
        };
        assert!(
            err.contains(&format!("cannot listen on {addr}")),
            "the failure names the address: {err}"
        );
    }
    let out = echoscu(first.port, &[]);
    assert!(
        out.status.success(),
        "the first daemon still serves: {out:?}"
    );
}
