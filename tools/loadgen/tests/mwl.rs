//! `dicom-loadgen mwl-items` + `dicom-loadgen mwl` against dicom-gw's worklist service (and
//! DCMTK wlmscpfs): the items import, every query kind runs over reused associations, the
//! match counts agree with the layout, and `--expect` catches a layout that does not.
//!
//! Needs the dicom-gw binary (`cargo build -p dicom-gw`, or `DICOM_GW_BIN`).

mod common;

use std::process::Command;

use common::*;

/// A small layout: 300 items, 8 stations (one per modality), 4 days around a fixed date.
const LAYOUT: [&str; 8] = [
    "--items",
    "300",
    "--stations",
    "8",
    "--days",
    "4",
    "--today",
    "20261122",
];

fn items(dir: &std::path::Path) {
    let json = dir.join("items.json");
    let wl = dir.join("wl/WLSCP");
    let mut args = vec![
        "mwl-items",
        "--json",
        json.to_str().unwrap(),
        "--wl-dir",
        wl.to_str().unwrap(),
    ];
    args.extend(LAYOUT);
    let o = loadgen(&args);
    assert!(o.status.success(), "{}", text(&o));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v.len(), 300);
    assert_eq!(
        std::fs::read_dir(&wl).unwrap().count(),
        301,
        "300 .wl + lockfile"
    );
}

fn mwl(addr: &str, aec: &str, extra: &[&str], json: &std::path::Path) -> std::process::Output {
    let mut args = vec!["mwl", addr, "--aec", aec, "--json", json.to_str().unwrap()];
    args.extend(LAYOUT);
    args.extend(extra);
    loadgen(&args)
}

#[test]
fn mwl_query_mix_against_dicom_gw() {
    let tmp = tempfile::tempdir().unwrap();
    items(tmp.path());
    let data = tmp.path().join("data");
    let o = run_timeout(
        Command::new(gw_bin())
            .args(["worklist", "import", "--data-dir"])
            .arg(&data)
            .arg(tmp.path().join("items.json")),
        RUN_TIMEOUT,
    );
    assert!(o.status.success(), "import: {}", text(&o));
    let gw = Gw::start(&data);
    let wl_port = gw.worklist_port;
    let addr = format!("127.0.0.1:{wl_port}");
    let json = tmp.path().join("m.json");
    let o = mwl(
        &addr,
        "DICOM_GW",
        &["-n", "200", "-c", "2", "--expect"],
        &json,
    );
    assert!(o.status.success(), "{}", text(&o));
    let j = read_json(&json);
    assert_eq!(j["operation"], "mwl");
    assert_eq!(
        (j["ok"].as_u64(), j["errors"].as_u64()),
        (Some(200), Some(0)),
        "{j}"
    );
    assert_eq!(
        j["associations_opened"], 2,
        "one association per worker, reused"
    );
    for k in ["station", "station-range", "modality", "patient"] {
        let s = &j["kinds"][k];
        assert!(s["queries"].as_u64().unwrap() > 0, "{k} never ran: {j}");
        assert!(s["mean_matches"].as_f64().unwrap() >= 1.0, "{k}: {j}");
        assert!(s["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    }
    // 300 items over 8 stations and 4 days: a station has 9 or 10 steps a day.
    let st = j["kinds"]["station"]["mean_matches"].as_f64().unwrap();
    assert!((9.0..=10.0).contains(&st), "{j}");
    assert!(j["queries_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["responses_per_s"].as_f64().unwrap() > j["queries_per_s"].as_f64().unwrap());

    // Station queries believing in twice the items: every count is off, exit status 1.
    let mut args = vec!["mwl", &addr, "-n", "20", "--expect", "--mix", "station"];
    args.extend([
        "--json",
        json.to_str().unwrap(),
        "--stations",
        "8",
        "--days",
        "4",
    ]);
    args.extend(["--today", "20261122", "--items", "600"]);
    let o = loadgen(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let j = read_json(&json);
    let mismatches: u64 = j["errors_by_kind"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("mismatch-"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert_eq!(mismatches, 20, "{j}");

    // Open loop: -n queries scheduled at --rate, all answered; the rate is in the summary.
    let o = mwl(
        &addr,
        "DICOM_GW",
        &["-n", "10", "-c", "2", "--rate", "200", "--expect"],
        &json,
    );
    assert!(o.status.success(), "{}", text(&o));
    let j = read_json(&json);
    assert_eq!(
        (j["ok"].as_u64(), j["rate"].as_f64()),
        (Some(10), Some(200.0)),
        "{j}"
    );
    gw.stop();
}

#[test]
fn mwl_against_wlmscpfs() {
    require_tools(&["wlmscpfs"]);
    let tmp = tempfile::tempdir().unwrap();
    items(tmp.path());
    let wl = tmp.path().join("wl");
    let scp = Peer::start("wlmscpfs", &["-dfp", wl.to_str().unwrap()]);
    let json = tmp.path().join("w.json");
    let o = mwl(
        &scp.addr(),
        "WLSCP",
        &["-n", "12", "-c", "2", "--expect"],
        &json,
    );
    assert!(o.status.success(), "{}\n{}", text(&o), scp.log());
    let j = read_json(&json);
    assert_eq!(
        (j["ok"].as_u64(), j["errors"].as_u64()),
        (Some(12), Some(0)),
        "{j}"
    );
}
