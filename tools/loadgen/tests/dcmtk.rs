//! dicom-loadgen against DCMTK: synthesized files checked by dcmftest/dcmdump, store/echo
//! counts against storescp, byte-exact directory mode, worklist C-FIND against wlmscpfs,
//! association rejection.

mod common;

#[path = "../../../tests/util/certs.rs"]
mod certs;

use common::*;

#[test]
fn synthesized_files_are_valid_part10_in_every_transfer_syntax() {
    require_tools(&["dcmftest", "dcmdump"]);
    let tmp = tempfile::tempdir().unwrap();
    for ts in ["implicit", "explicit", "bigendian"] {
        let out = tmp.path().join(ts);
        let o = loadgen(&[
            "synth",
            "--out",
            out.to_str().unwrap(),
            "-n",
            "5",
            "--ts",
            ts,
            "--size",
            "4k,40k",
            "--series-size",
            "2",
            "--uid-root",
            "1.2.826.0.1.3680043.10.999.77",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let files = files_under(&out);
        assert_eq!(files.len(), 5);
        let t = run_timeout(
            std::process::Command::new("dcmftest").args(&files),
            RUN_TIMEOUT,
        );
        let stdout = String::from_utf8_lossy(&t.stdout);
        assert!(t.status.success(), "dcmftest: {}", text(&t));
        assert_eq!(stdout.lines().filter(|l| l.starts_with("yes:")).count(), 5);
        // Object 3 is instance 2 of series 1 (series size 2), study 1 (one series per study).
        let root = "1.2.826.0.1.3680043.10.999.77";
        let f = out.join(format!("{root}.3.1000000003.dcm"));
        let d = run_timeout(std::process::Command::new("dcmdump").arg(&f), RUN_TIMEOUT);
        let dump = String::from_utf8_lossy(&d.stdout);
        assert!(d.status.success() && d.stderr.is_empty(), "{}", text(&d));
        for want in [
            format!("(0020,000d) UI [{root}.1.1000000001]"),
            format!("(0020,000e) UI [{root}.2.1000000001]"),
            format!("(0008,0018) UI [{root}.3.1000000003]"),
            "(0020,0013) IS [         2]".to_string(),
            "(0010,0020) LO [LG00000000000001]".to_string(),
        ] {
            assert!(dump.contains(&want), "{ts}: missing {want:?} in\n{dump}");
        }
    }
}

/// `store --tls-ca` against `storescp +tls`: every store succeeds over TLS; a CA that did not
/// sign the SCP's certificate fails the run with the reason.
#[test]
fn store_over_tls_against_storescp() {
    require_tools(&["storescp", "openssl"]);
    let tmp = tempfile::tempdir().unwrap();
    let k = certs::make(tmp.path());
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (key, cert) = (s(&k.server_key), s(&k.server_cert));
    let scp = Peer::start(
        "storescp",
        &["--fork", "--ignore", "+tls", &key, &cert, "-ic"],
    );
    let json = tmp.path().join("s.json");
    let o = loadgen(&[
        "store",
        &scp.addr(),
        "-n",
        "12",
        "-c",
        "2",
        "--size",
        "1k,300k",
        "--tls-ca",
        &s(&k.ca),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), scp.log());
    let j = read_json(&json);
    assert_eq!(
        (j["ok"].as_u64(), j["errors"].as_u64()),
        (Some(12), Some(0)),
        "{j}"
    );
    let o = loadgen(&["store", &scp.addr(), "-n", "1", "--tls-ca", &s(&k.other_ca)]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not issued by a CA we trust"),
        "{}",
        text(&o)
    );
}

#[test]
fn store_counts_against_storescp() {
    require_tools(&["storescp"]);
    let tmp = tempfile::tempdir().unwrap();
    let scp = Peer::start("storescp", &["--fork", "--ignore"]);
    let json = tmp.path().join("s.json");
    let o = loadgen(&[
        "store",
        &scp.addr(),
        "-n",
        "20",
        "-c",
        "2",
        "--per-association",
        "5",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), scp.log());
    let j = read_json(&json);
    assert_eq!(j["operation"], "store");
    assert_eq!(j["requests"], 20);
    assert_eq!(j["ok"], 20);
    assert_eq!(j["errors"], 0);
    assert_eq!(j["statuses"]["0x0000"], 20);
    assert_eq!(
        j["associations_opened"], 4,
        "20 objects / 5 per association"
    );
    assert_eq!(j["mode"], "closed");
    for k in ["p50", "p90", "p99", "p999", "max", "mean"] {
        assert!(
            j["latency_ms"][k].as_f64().unwrap() > 0.0,
            "latency {k}: {j}"
        );
    }
    assert_eq!(j["latency_ms"]["count"], 20);
    assert!(j["requests_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["bytes_sent"].as_u64().unwrap() > 20 * 16_000);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("instances/s") && stdout.contains("p99.9"));

    // Same with implicit VR, a size mix and one association per 7 objects at -c 1.
    let o = loadgen(&[
        "store",
        &scp.addr(),
        "-n",
        "15",
        "--per-association",
        "7",
        "--ts",
        "implicit",
        "--size",
        "1k,64k",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let j = read_json(&json);
    assert_eq!(
        (j["ok"].as_u64(), j["associations_opened"].as_u64()),
        (Some(15), Some(3))
    );
}

#[test]
fn open_loop_echo_and_duration() {
    require_tools(&["storescp"]);
    let tmp = tempfile::tempdir().unwrap();
    let scp = Peer::start("storescp", &["--fork", "--ignore"]);
    let json = tmp.path().join("e.json");
    let o = loadgen(&[
        "echo",
        &scp.addr(),
        "-d",
        "1",
        "--rate",
        "100",
        "-c",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let j = read_json(&json);
    assert_eq!(j["operation"], "echo");
    assert_eq!(j["mode"], "open");
    assert_eq!(j["rate"], 100.0);
    // Requests are scheduled at i/100 s for i/100 < 1 s: exactly 100.
    assert_eq!(j["requests"], 100, "{j}");
    assert_eq!(j["ok"], 100);
    assert!(j["service_time_ms"]["p50"].as_f64().unwrap() > 0.0);
    // Latency from the intended time is never below the service time.
    assert!(j["latency_ms"]["max"].as_f64() >= j["service_time_ms"]["max"].as_f64());
    let elapsed = j["elapsed_s"].as_f64().unwrap();
    assert!((0.98..5.0).contains(&elapsed), "elapsed {elapsed}");
}

#[test]
fn directory_mode_sends_files_verbatim() {
    require_tools(&["storescp"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // Two transfer syntaxes in one directory: two presentation contexts.
    for (ts, sub) in [("implicit", "a"), ("bigendian", "b")] {
        let o = loadgen(&[
            "synth",
            "--out",
            src.join(sub).to_str().unwrap(),
            "-n",
            "3",
            "--ts",
            ts,
            "--size",
            "20k",
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    std::fs::write(src.join("README.txt"), "not DICOM").unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // storescp +B writes the received dataset bit for bit; +xa accepts every TS it knows.
    let scp = Peer::start(
        "storescp",
        &["--fork", "+B", "+xa", "-od", out.to_str().unwrap()],
    );
    let json = tmp.path().join("d.json");
    let o = loadgen(&[
        "store",
        &scp.addr(),
        "--dir",
        src.to_str().unwrap(),
        "-c",
        "2",
        "--verify-flat",
        out.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), scp.log());
    assert!(String::from_utf8_lossy(&o.stderr).contains("skipped 1 non-DICOM file"));
    let j = read_json(&json);
    assert_eq!(j["requests"], 6, "one pass over the 6 files by default");
    assert_eq!(j["verify"]["expected"], 6);
    assert_eq!(j["verify"]["identical"], 6, "{j}");
}

/// A worklist entry for dump2dcm, with every attribute wlmscpfs requires (modelled on
/// DCMTK's example wklist1.dump; PatientID and AccessionNumber vary).
fn worklist_dump(i: u32) -> String {
    format!(
        "(0008,0005) CS  [ISO_IR 100]\n(0008,0050) SH  ACC{i}\n(0010,0010) PN  DOE^JOHN{i}\n\
         (0010,0020) LO  PID{i}\n(0010,0030) DA  19700101\n(0010,0040) CS  O\n\
         (0010,2000) LO  NONE\n(0010,2110) LO  NONE\n\
         (0020,000d) UI  1.2.826.0.1.3680043.10.999.5.{i}\n(0032,1032) PN  SMITH\n\
         (0032,1060) LO  EXAM{i}\n(0040,0100) SQ\n(fffe,e000) -\n(0008,0060) CS  CT\n\
         (0032,1070) LO  NONE\n(0040,0001) AE  CT1\n(0040,0002) DA  20240101\n\
         (0040,0003) TM  080000\n(0040,0006) PN  JOHNSON\n(0040,0007) LO  STEP{i}\n\
         (0040,0009) SH  SPS{i}\n(0040,0010) SH  STN1\n(0040,0011) SH  ROOM1\n\
         (0040,0012) LO\n(0040,0400) LT\n(fffe,e00d) -\n(fffe,e0dd) -\n\
         (0040,1001) SH  RP{i}\n(0040,1003) SH  LOW\n"
    )
}

#[test]
fn worklist_find_against_wlmscpfs() {
    require_tools(&["wlmscpfs", "dump2dcm"]);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("wl");
    let ae = db.join("WLSCP");
    std::fs::create_dir_all(&ae).unwrap();
    std::fs::write(ae.join("lockfile"), "").unwrap();
    for i in 1..=3 {
        let dump = tmp.path().join(format!("w{i}.dump"));
        std::fs::write(&dump, worklist_dump(i)).unwrap();
        let o = run_timeout(
            std::process::Command::new("dump2dcm")
                .arg(&dump)
                .arg(ae.join(format!("w{i}.wl"))),
            RUN_TIMEOUT,
        );
        assert!(o.status.success(), "dump2dcm: {}", text(&o));
    }
    let scp = Peer::start("wlmscpfs", &["-dfp", db.to_str().unwrap()]);
    let json = tmp.path().join("f.json");
    let o = loadgen(&[
        "find",
        &scp.addr(),
        "--aec",
        "WLSCP",
        "-n",
        "6",
        "-c",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}\n{}", text(&o), scp.log());
    let j = read_json(&json);
    assert_eq!(j["operation"], "find");
    assert_eq!((j["ok"].as_u64(), j["errors"].as_u64()), (Some(6), Some(0)));
    assert_eq!(j["find_matches"], 18, "6 queries x 3 worklist entries");

    let q = tmp.path().join("q.json");
    std::fs::write(
        &q,
        r#"{"PatientID": "PID2", "PatientName": "",
            "ScheduledProcedureStepSequence": {"Modality": "CT", "ScheduledStationAETitle": ""}}"#,
    )
    .unwrap();
    let o = loadgen(&[
        "find",
        &scp.addr(),
        "--aec",
        "WLSCP",
        "-n",
        "4",
        "--query",
        q.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read_json(&json)["find_matches"], 4, "one match per query");
}

#[test]
fn rejection_and_unreachable_peer_stop_the_run() {
    require_tools(&["storescp"]);
    let scp = Peer::start("storescp", &["--refuse"]);
    let o = loadgen(&["echo", &scp.addr(), "-n", "3"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("STOPPED: association rejected"), "{out}");
    drop(scp);
    let port = free_port();
    let o = loadgen(&[
        "store",
        &format!("127.0.0.1:{port}"),
        "-n",
        "3",
        "--timeout",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cannot connect"));
}
