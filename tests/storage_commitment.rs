//! Storage Commitment Push Model (issue 13, item 5) with a real SCU: pynetdicom sends the
//! N-ACTION for objects DCMTK `storescu` stored just before (read-your-writes: the
//! judgement waits for the ingest checkpoint), and receives the N-EVENT-REPORT on the same
//! association or, as SCP by role selection, on a new association to its listener. Failures
//! carry the standard reasons (0112 unknown instance, 0119 class/instance conflict); a
//! malformed N-ACTION gets its status and comment and the association stays usable; a request
//! whose daemon is `kill -9`ed between the N-ACTION-RSP and the report is reported after the
//! restart, on a new association.
//!
//! pynetdicom comes from PyPI into a venv kept under Cargo's target directory (see
//! `util::python`).

mod peer;
mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const SCU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer/commitment_scu.py");
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
/// The AE title the SCU calls from; reports on a new association go to it.
const SCU_AE: &str = "MODALITY1";

/// A config with `[store]` for the busy shared disk, the commitment section, and (with a
/// listener port) a destination for the SCU's AE title.
fn config(dir: &Path, report: &str, listener: Option<u16>) -> PathBuf {
    let mut toml = format!(
        "[store]\ndisk_high_water_percent = 100\n\n[storage_commitment]\nreport = \"{report}\"\n\n"
    );
    if let Some(p) = listener {
        toml.push_str(&format!(
            "[[destinations]]\nname = \"modality1\"\nae_title = \"{SCU_AE}\"\nhost = \"127.0.0.1\"\nport = {p}\n"
        ));
    }
    let path = dir.join("gw.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Stores `n` fresh CT objects with storescu; returns their specs.
fn store_objects(port: u16, dir: &Path, first: u32, n: u32) -> Vec<ObjSpec> {
    let specs: Vec<ObjSpec> = (first..first + n).map(ObjSpec::new).collect();
    let files: Vec<PathBuf> = specs
        .iter()
        .map(|s| {
            let f = dir.join(format!("obj{}.dcm", s.instance_number));
            gen_part10(&f, s).unwrap();
            f
        })
        .collect();
    storescu(port, &files, &[]).assert_all_ok(&files);
    specs
}

fn scu_command(
    python: &Path,
    port: u16,
    tx: &str,
    refs: &[(&str, &str)],
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(SCU)
        .arg(port.to_string())
        .args(["--ae", SCU_AE, "--tx", tx]);
    for (c, i) in refs {
        cmd.arg("--ref").arg(format!("{c}:{i}"));
    }
    cmd.args(extra);
    cmd
}

/// Runs the SCU to completion; its final JSON.
fn commit(python: &Path, port: u16, tx: &str, refs: &[(&str, &str)], extra: &[&str]) -> Value {
    let (out, timed_out) = run_timeout(
        &mut scu_command(python, port, tx, refs, extra),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!timed_out, "commitment_scu.py timed out: {stdout}");
    assert!(
        out.status.success(),
        "commitment_scu.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("commitment_scu.py output {stdout:?}: {e}"))
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn failed(v: &Value) -> Vec<(String, String, u64)> {
    let mut out: Vec<(String, String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
                p[2].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn owned(refs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = refs
        .iter()
        .map(|(c, i)| ((*c).to_owned(), (*i).to_owned()))
        .collect();
    v.sort();
    v
}

/// The one report of `r`, checked to be the only one.
fn only_report(r: &Value) -> &Value {
    let reports = r["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 1, "{r}");
    &reports[0]
}

gwtest!(
    same_association_report_lists_committed_and_failed,
    |io: &str| {
        require_dcmtk();
        let python = pynetdicom_python();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let cfg = config(tmp.path(), "auto", None);
        let gw = Daemon::start(BIN, &data, io, &["--config", cfg.to_str().unwrap()]);
        let objs = store_objects(gw.port, tmp.path(), 0, 3);
        let unknown = make_uid(&[9, 999]);
        let (a, b, c) = (
            objs[0].sop_instance_uid.as_str(),
            objs[1].sop_instance_uid.as_str(),
            objs[2].sop_instance_uid.as_str(),
        );

        // Stored, stored under another class, never stored: one report, Event Type 2.
        let tx = make_uid(&[8, 1]);
        let r = commit(
            &python,
            gw.port,
            &tx,
            &[(CT, a), (MR, b), (CT, &unknown)],
            &[],
        );
        assert_eq!(r["action"]["status"], 0, "{r}");
        let rep = only_report(&r);
        assert_eq!(rep["via"], "same", "{r}");
        assert_eq!(rep["event_type"], 2, "{r}");
        assert_eq!(rep["transaction"], tx.as_str(), "{r}");
        assert_eq!(rep["retrieve_ae"], "DICOM_GW", "{r}");
        assert_eq!(pairs(&rep["committed"]), owned(&[(CT, a)]), "{r}");
        let mut want = vec![
            (MR.to_owned(), b.to_owned(), 0x0119),
            (CT.to_owned(), unknown.clone(), 0x0112),
        ];
        want.sort();
        assert_eq!(failed(&rep["failed"]), want, "{r}");

        // Everything stored: Event Type 1, no Failed SOP Sequence.
        let tx = make_uid(&[8, 2]);
        let r = commit(&python, gw.port, &tx, &[(CT, a), (CT, b), (CT, c)], &[]);
        let rep = only_report(&r);
        assert_eq!(rep["event_type"], 1, "{r}");
        assert_eq!(
            pairs(&rep["committed"]),
            owned(&[(CT, a), (CT, b), (CT, c)]),
            "{r}"
        );
        assert!(rep["failed"].as_array().unwrap().is_empty(), "{r}");

        // Both acknowledged: counted by result, nothing left pending.
        let some_failed = r#"dicomgw_storage_commitment_requests_total{result="some_failed"}"#;
        let all_committed = r#"dicomgw_storage_commitment_requests_total{result="all_committed"}"#;
        assert_eq!(metric(&gw, some_failed), 1);
        assert_eq!(metric(&gw, all_committed), 1);
        assert_eq!(metric(&gw, "dicomgw_storage_commitment_pending"), 0);
    }
);

fn metric(gw: &Daemon, name_and_labels: &str) -> u64 {
    let r = request(gw.http_port, "GET", "/metrics", None, None);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels} not in /metrics:\n{}", r.text()))
}

#[test]
fn new_association_report_goes_to_the_requestors_listener() {
    require_dcmtk();
    let python = pynetdicom_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let listener = free_port();
    let cfg = config(tmp.path(), "new-association", Some(listener));
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let objs = store_objects(gw.port, tmp.path(), 10, 2);
    let (a, b) = (
        objs[0].sop_instance_uid.as_str(),
        objs[1].sop_instance_uid.as_str(),
    );
    let unknown = make_uid(&[9, 998]);
    let listen = listener.to_string();
    // The SCU releases at once and listens with explicit role selection (SCP role accepted).
    let tx = make_uid(&[8, 10]);
    let r = commit(
        &python,
        gw.port,
        &tx,
        &[(CT, a), (CT, &unknown)],
        &["--listen", &listen, "--release"],
    );
    assert_eq!(r["action"]["status"], 0, "{r}");
    let rep = only_report(&r);
    assert_eq!(rep["via"], "new", "{r}");
    // The report association calls from the AE title the modality called.
    assert_eq!(rep["calling_ae"], "DICOM_GW", "{r}");
    assert_eq!(rep["transaction"], tx.as_str(), "{r}");
    assert_eq!(rep["event_type"], 2, "{r}");
    assert_eq!(pairs(&rep["committed"]), owned(&[(CT, a)]), "{r}");
    assert_eq!(
        failed(&rep["failed"]),
        vec![(CT.to_owned(), unknown.clone(), 0x0112)],
        "{r}"
    );

    // A listener that answers the role selection with the default roles still gets it.
    let tx = make_uid(&[8, 11]);
    let r = commit(
        &python,
        gw.port,
        &tx,
        &[(CT, a), (CT, b)],
        &["--listen", &listen, "--release", "--default-roles"],
    );
    let rep = only_report(&r);
    assert_eq!(rep["via"], "new", "{r}");
    assert_eq!(rep["event_type"], 1, "{r}");
    assert_eq!(pairs(&rep["committed"]), owned(&[(CT, a), (CT, b)]), "{r}");
}

/// A requestor without a `[[destinations]]` entry: under `auto` (where the report may still
/// go on its own association) the request is taken and a report it left behind stays
/// pending with a warning saying what to add; under `new-association` (where the report could
/// never be delivered) the N-ACTION is refused at once with 0213, nothing kept.
#[test]
fn a_report_to_an_unknown_ae_stays_pending_under_auto_and_is_refused_under_new_association() {
    let python = pynetdicom_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = config(tmp.path(), "auto", None);
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let tx = make_uid(&[8, 20]);
    let r = commit(
        &python,
        gw.port,
        &tx,
        &[(CT, &make_uid(&[9, 997]))],
        &["--expect", "0", "--release"],
    );
    assert_eq!(r["action"]["status"], 0, "{r}");
    if r["reports"].as_array().is_some_and(|a| !a.is_empty()) {
        // The daemon judged before the A-RELEASE-RQ arrived: reported on the same association.
        eprintln!(
            "report went on the same association; the unknown-AE path was not exercised under auto"
        );
    } else {
        wait_for(
            "the undeliverable-report warning",
            Duration::from_secs(30),
            || {
                let e = gw.stderr();
                if e.contains("no [[destinations]] entry has AE title \\\"MODALITY1\\\"")
                    || e.contains("no [[destinations]] entry has AE title \"MODALITY1\"")
                {
                    Ok(())
                } else {
                    Err(e.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
                }
            },
        );
        assert_eq!(metric(&gw, "dicomgw_storage_commitment_pending"), 1);
    }
    drop(gw);

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = config(tmp.path(), "new-association", None);
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let r = commit(
        &python,
        gw.port,
        &make_uid(&[8, 21]),
        &[(CT, &make_uid(&[9, 997]))],
        &["--expect", "0"],
    );
    assert_eq!(r["action"]["status"], 0x0213, "{r}");
    let comment = r["action"]["comment"].as_str().unwrap_or("");
    assert!(
        comment.contains("no [[destinations]] entry for AE title MODALITY1"),
        "{r}"
    );
    assert_eq!(metric(&gw, "dicomgw_storage_commitment_pending"), 0);
    let refused = r#"dicomgw_storage_commitment_requests_total{result="refused"}"#;
    assert_eq!(metric(&gw, refused), 1);
}

#[test]
fn malformed_n_actions_get_their_status_and_the_association_stays_usable() {
    let python = pynetdicom_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = config(tmp.path(), "auto", None);
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let unknown = make_uid(&[9, 996]);
    for (i, (kind, status, comment)) in [
        ("no-seq", 0x0115, "Referenced SOP Sequence is missing"),
        ("bad-uid", 0x0115, "Transaction UID"),
        ("no-tx", 0x0115, "Transaction UID is missing"),
        ("action-2", 0x0123, "Action Type ID"),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = make_uid(&[8, 30 + i as u64]);
        let r = commit(
            &python,
            gw.port,
            &tx,
            &[(CT, &unknown)],
            &["--malformed", kind],
        );
        assert_eq!(r["malformed"]["status"], status, "{kind}: {r}");
        let got = r["malformed"]["comment"].as_str().unwrap_or("");
        assert!(got.contains(comment), "{kind}: {r}");
        // The same association goes on: a C-ECHO, then a valid request and its report.
        assert_eq!(r["echo_after"], 0, "{kind}: {r}");
        assert_eq!(r["action"]["status"], 0, "{kind}: {r}");
        let rep = only_report(&r);
        assert_eq!(rep["event_type"], 2, "{kind}: {r}");
    }
}

#[test]
fn kill9_between_the_action_and_the_report_reports_after_restart() {
    require_dcmtk();
    let python = pynetdicom_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let listener = free_port();
    let cfg = config(tmp.path(), "auto", Some(listener));
    // The first daemon holds every judgement back a minute (test-only knob), so the kill
    // falls between the N-ACTION-RSP and the report.
    let args: Vec<std::ffi::OsString> = [
        "DICOM_GW_TEST_COMMITMENT_DELAY_MS=60000",
        BIN,
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--store-listen",
        "127.0.0.1:0",
        "--io",
        "epoll",
        "--http-listen",
        "127.0.0.1:0",
        "--worklist-listen",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
    ]
    .iter()
    .map(Into::into)
    .collect();
    let mut gw = Daemon::spawn(Path::new("/usr/bin/env"), &args, &data).unwrap();
    let objs = store_objects(gw.port, tmp.path(), 20, 2);
    let (a, b) = (
        objs[0].sop_instance_uid.as_str(),
        objs[1].sop_instance_uid.as_str(),
    );
    let tx = make_uid(&[8, 40]);
    let mut scu = scu_command(
        &python,
        gw.port,
        &tx,
        &[(CT, a), (CT, b)],
        &["--listen", &listener.to_string(), "--wait", "90"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (tx_lines, lines) = mpsc::channel::<String>();
    let stdout = scu.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx_lines.send(l);
        }
    });
    let (stderr, _h) = drain(scu.stderr.take().unwrap());
    let first = lines
        .recv_timeout(Duration::from_secs(60))
        .expect("the N-ACTION-RSP within 60 s");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["action"]["status"], 0, "{first}");

    // While the first association still holds the request (its judgement is held back), the
    // same Transaction UID on another association is checked against the record: other
    // references are refused, the same ones accepted (and reported by the holder only).
    let other = commit(&python, gw.port, &tx, &[(CT, a)], &["--expect", "0"]);
    assert_eq!(other["action"]["status"], 0x0110, "{other}");
    let comment = other["action"]["comment"].as_str().unwrap_or("");
    assert!(comment.contains("other references"), "{other}");
    let again = commit(
        &python,
        gw.port,
        &tx,
        &[(CT, a), (CT, b)],
        &["--expect", "0"],
    );
    assert_eq!(again["action"]["status"], 0, "{again}");

    // Recorded before it was answered: killed now, the request must survive.
    gw.kill9();
    let _gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let status = wait_timeout(&mut scu, Duration::from_secs(100));
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        status.is_some_and(|s| s.success()),
        "commitment_scu.py: {status:?} {rest:?} {}",
        String::from_utf8_lossy(&stderr.lock().unwrap())
    );
    let r: Value = serde_json::from_str(rest.last().expect("final JSON")).unwrap();
    let rep = only_report(&r);
    assert_eq!(rep["via"], "new", "{r}");
    assert_eq!(rep["transaction"], tx.as_str(), "{r}");
    assert_eq!(rep["event_type"], 1, "{r}");
    assert_eq!(pairs(&rep["committed"]), owned(&[(CT, a), (CT, b)]), "{r}");
}

/// Runs `dicom-gw scu commit ARGS`; its exit code and JSON.
fn gw_commit(args: &[&str]) -> (i32, Value) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "scu",
        "commit",
        "--aet",
        SCU_AE,
        "--aec",
        "DICOM_GW",
        "--timeout",
        "30",
    ])
    .args(args);
    let (out, timed_out) = run_timeout(&mut cmd, Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!timed_out, "scu commit timed out: {stdout}");
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "scu commit output {stdout:?}: {e}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn scu_pairs(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["sop_class_uid"].as_str().unwrap().to_owned(),
                p["sop_instance_uid"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn scu_commit_gets_the_report_on_the_same_and_on_a_new_association() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = config(tmp.path(), "auto", None);
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let objs = store_objects(gw.port, tmp.path(), 30, 2);
    let (a, b) = (
        objs[0].sop_instance_uid.as_str(),
        objs[1].sop_instance_uid.as_str(),
    );
    let file_a = tmp
        .path()
        .join(format!("obj{}.dcm", objs[0].instance_number));
    let unknown = make_uid(&[9, 995]);
    let port = gw.port.to_string();

    // A file, a class mismatch and an unknown instance: exit 1, the report on the same
    // association with both reasons.
    let (code, v) = gw_commit(&[
        "-k",
        &format!("{MR}:{b}"),
        "-k",
        &format!("{CT}:{unknown}"),
        "127.0.0.1",
        &port,
        file_a.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["action_status"], 0, "{v}");
    let rep = &v["report"];
    assert_eq!(rep["via"], "same", "{v}");
    assert_eq!(rep["event_type"], 2, "{v}");
    assert_eq!(rep["transaction_uid"], v["transaction_uid"], "{v}");
    assert_eq!(scu_pairs(&rep["committed"]), owned(&[(CT, a)]), "{v}");
    let mut reasons: Vec<(String, u64)> = rep["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["sop_instance_uid"].as_str().unwrap().to_owned(),
                f["failure_reason"].as_u64().unwrap(),
            )
        })
        .collect();
    reasons.sort();
    let mut want = vec![(b.to_owned(), 0x0119), (unknown.clone(), 0x0112)];
    want.sort();
    assert_eq!(reasons, want, "{v}");
    drop(gw);

    // The daemon set to report on a new association, to our listener (a destination).
    let listener = free_port();
    let cfg = config(tmp.path(), "new-association", Some(listener));
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let port = gw.port.to_string();
    let (code, v) = gw_commit(&[
        "--port",
        &listener.to_string(),
        "-k",
        &format!("{CT}:{a}"),
        "-k",
        &format!("{CT}:{b}"),
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(code, 0, "{v}");
    let rep = &v["report"];
    assert_eq!(rep["via"], "new", "{v}");
    assert_eq!(rep["calling_ae_title"], "DICOM_GW", "{v}");
    assert_eq!(rep["event_type"], 1, "{v}");
    assert_eq!(
        scu_pairs(&rep["committed"]),
        owned(&[(CT, a), (CT, b)]),
        "{v}"
    );
}

#[test]
fn auto_reports_on_a_new_association_when_the_requestor_releases_at_once() {
    require_dcmtk();
    let python = pynetdicom_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let listener = free_port();
    let cfg = config(tmp.path(), "auto", Some(listener));
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let objs = store_objects(gw.port, tmp.path(), 40, 1);
    let a = objs[0].sop_instance_uid.as_str();
    let tx = make_uid(&[8, 50]);
    let r = commit(
        &python,
        gw.port,
        &tx,
        &[(CT, a)],
        &["--listen", &listener.to_string(), "--release"],
    );
    assert_eq!(r["action"]["status"], 0, "{r}");
    // Wherever it went first, the report reached the requestor, and on a new association
    // unless the daemon judged before the A-RELEASE-RQ arrived (then on the same one).
    let reports = r["reports"].as_array().unwrap();
    assert!(!reports.is_empty(), "{r}");
    for rep in reports {
        assert_eq!(rep["transaction"], tx.as_str(), "{r}");
        assert_eq!(rep["event_type"], 1, "{r}");
    }
}

#[test]
fn same_association_mode_reports_a_left_behind_request_on_the_next_n_action() {
    let python = pynetdicom_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = config(tmp.path(), "same-association", None);
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let unknown = make_uid(&[9, 994]);
    // The first requestor leaves right after the N-ACTION-RSP, before its report.
    let first = make_uid(&[8, 60]);
    let r = commit(
        &python,
        gw.port,
        &first,
        &[(CT, &unknown)],
        &["--release", "--expect", "0"],
    );
    assert_eq!(r["action"]["status"], 0, "{r}");
    // Its next N-ACTION gets both reports on its association.
    let second = make_uid(&[8, 61]);
    let r = commit(
        &python,
        gw.port,
        &second,
        &[(CT, &unknown)],
        &["--expect", "2"],
    );
    let mut txs: Vec<&str> = r["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rep| {
            assert_eq!(rep["via"], "same", "{r}");
            rep["transaction"].as_str().unwrap()
        })
        .collect();
    txs.sort();
    let mut want = vec![first.as_str(), second.as_str()];
    want.sort();
    assert_eq!(txs, want, "{r}");
}

/// An N-ACTION-RQ command set as a peer sends it (announcing a dataset or not).
fn raw_action(message_id: u16, instance: &str, with_dataset: bool) -> Vec<u8> {
    use dicom_gw::net::dimse::command::{tags as ct, CommandBuilder};
    CommandBuilder::new()
        .uid(ct::REQUESTED_SOP_CLASS_UID, "1.2.840.10008.1.20.1")
        .us(ct::COMMAND_FIELD, 0x0130)
        .us(ct::MESSAGE_ID, message_id)
        .us(
            ct::COMMAND_DATA_SET_TYPE,
            if with_dataset { 0x0000 } else { 0x0101 },
        )
        .uid(ct::REQUESTED_SOP_INSTANCE_UID, instance)
        .us(ct::ACTION_TYPE_ID, 1)
        .build()
}

#[test]
fn undecodable_or_incomplete_n_actions_from_a_raw_peer_are_refused_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = config(tmp.path(), "auto", None);
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let contexts = vec![
        (
            1,
            peer::VERIFICATION.to_owned(),
            vec![peer::TS_IMPLICIT_LE.to_owned()],
        ),
        (
            5,
            "1.2.840.10008.1.20.1".to_owned(),
            vec![peer::TS_IMPLICIT_LE.to_owned()],
        ),
    ];
    let mut p =
        peer::Peer::associate_with(gw.port, peer::association_rq(SCU_AE, "DICOM_GW", &contexts));
    let check = |rsp: &dicom_gw::net::dimse::command::Command, id: u16, status: u16| {
        assert_eq!(rsp.command_field, 0x8130, "{rsp:?}");
        assert_eq!(rsp.message_id, id, "{rsp:?}");
        assert_eq!(rsp.status, Some(status), "{rsp:?}");
        assert_eq!(rsp.action_type_id, Some(1), "{rsp:?}");
        assert_eq!(
            rsp.affected_sop_class_uid.as_deref(),
            Some("1.2.840.10008.1.20.1"),
            "{rsp:?}"
        );
        assert!(rsp.error_comment.is_some(), "{rsp:?}");
    };
    // A truncated element: 0110 Processing failure.
    p.send_message(5, true, &raw_action(1, "1.2.840.10008.1.20.1.1", true));
    p.send_message(
        5,
        false,
        &[0x08, 0x00, 0x95, 0x11, 100, 0, 0, 0, b'1', b'.'],
    );
    check(&p.read_response(), 1, 0x0110);
    // No dataset at all: 0115 Invalid argument value.
    p.send_message(5, true, &raw_action(2, "1.2.840.10008.1.20.1.1", false));
    check(&p.read_response(), 2, 0x0115);
    // Not the well-known instance: 0112 No such SOP instance.
    p.send_message(5, true, &raw_action(3, "1.2.3.4", false));
    check(&p.read_response(), 3, 0x0112);
    // The association is still usable.
    assert_eq!(p.echo(1, 4), 0);
    p.release();
}

/// A private Orthanc (Debian package) for one test: its own config, storage and ports, killed
/// on drop. `None` (and a SKIPPED line) when Orthanc is not installed.
struct Orthanc {
    http: u16,
    dicom: u16,
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Orthanc {
    fn start(dir: &Path, dicom: u16, modalities: serde_json::Value) -> Option<Orthanc> {
        let bin = Path::new("/usr/sbin/Orthanc");
        if !bin.is_file() {
            eprintln!("SKIPPED: Orthanc is not installed (apt-get install orthanc)");
            return None;
        }
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let http = free_port();
        let cfg = serde_json::json!({
            "Name": "dicom-gw-commitment-test",
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("storage"),
            "Plugins": [],
            "HttpPort": http,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomAet": "ORTHANC",
            "DicomPort": dicom,
            "DicomCheckCalledAet": false,
            "DicomAlwaysAllowStore": true,
            "DicomCheckModalityHost": false,
            "DicomModalities": modalities,
            "DicomScuTimeout": 30,
        });
        let path = dir.join("orthanc.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut child = Command::new(bin)
            .arg(&path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (log, _h) = drain(child.stderr.take().unwrap());
        let o = Orthanc {
            http,
            dicom,
            child,
            log,
        };
        wait_for("Orthanc's REST API", Duration::from_secs(60), || {
            if is_listening(http) && is_listening(dicom) {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&o.log.lock().unwrap()).into_owned())
            }
        });
        Some(o)
    }

    /// Orthanc's storage commitment report for `id`, once it is no longer pending.
    fn commitment_result(&self, id: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..600 {
            let r = request(
                self.http,
                "GET",
                &format!("/storage-commitment/{id}"),
                None,
                None,
            );
            if r.status == 200 {
                last = serde_json::from_slice(&r.body).unwrap();
                if last["Status"] != "Pending" {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "Orthanc's report {id} still pending: {last}\n{}",
            String::from_utf8_lossy(&self.log.lock().unwrap())
        );
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn orthanc_as_scu_and_as_scp() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let orthanc_dicom = free_port();
    let listener = free_port();
    // The gateway reports to Orthanc (a destination with Orthanc's AE title); Orthanc knows
    // the gateway as "gw" and `dicom-gw scu commit` as "modality1".
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndisk_high_water_percent = 100\n\n[[destinations]]\nname = \"orthanc\"\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\nport = {orthanc_dicom}\n"
        ),
    )
    .unwrap();
    let gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let Some(orthanc) = Orthanc::start(
        &tmp.path().join("orthanc"),
        orthanc_dicom,
        serde_json::json!({
            "gw": ["DICOM_GW", "127.0.0.1", gw.port],
            "modality1": [SCU_AE, "127.0.0.1", listener],
        }),
    ) else {
        return;
    };
    let objs = store_objects(gw.port, tmp.path(), 50, 1);
    let a = objs[0].sop_instance_uid.as_str();
    let unknown = make_uid(&[9, 993]);

    // Orthanc as the SCU: one stored, one unknown. It releases after the N-ACTION-RSP and
    // gets the report on a new association, which it shows as a failure listing both.
    let body = serde_json::json!({"DicomInstances": [
        {"SOPClassUID": CT, "SOPInstanceUID": a},
        {"SOPClassUID": CT, "SOPInstanceUID": unknown},
    ]});
    let r = request(
        orthanc.http,
        "POST",
        "/modalities/gw/storage-commitment",
        None,
        Some(("application/json", body.to_string().as_bytes())),
    )
    .ok(200);
    let res = orthanc.commitment_result(r["ID"].as_str().unwrap());
    assert_eq!(res["Status"], "Failure", "{res}");
    assert_eq!(res["Success"].as_array().unwrap().len(), 1, "{res}");
    assert_eq!(res["Success"][0]["SOPInstanceUID"], a, "{res}");
    assert_eq!(
        res["Failures"][0]["SOPInstanceUID"],
        unknown.as_str(),
        "{res}"
    );
    assert_eq!(res["Failures"][0]["FailureReason"], 0x0112, "{res}");
    // Everything stored: success.
    let body = serde_json::json!({"DicomInstances": [{"SOPClassUID": CT, "SOPInstanceUID": a}]});
    let r = request(
        orthanc.http,
        "POST",
        "/modalities/gw/storage-commitment",
        None,
        Some(("application/json", body.to_string().as_bytes())),
    )
    .ok(200);
    let res = orthanc.commitment_result(r["ID"].as_str().unwrap());
    assert_eq!(res["Status"], "Success", "{res}");

    // Orthanc as the SCP of `dicom-gw scu commit`: the object uploaded to it is committed,
    // the report comes on a new association from ORTHANC to our listener.
    let file = tmp
        .path()
        .join(format!("obj{}.dcm", objs[0].instance_number));
    request(
        orthanc.http,
        "POST",
        "/instances",
        None,
        Some(("application/dicom", &std::fs::read(&file).unwrap())),
    )
    .ok(200);
    let mut cmd = Command::new(BIN);
    cmd.args([
        "scu",
        "commit",
        "--aet",
        SCU_AE,
        "--aec",
        "ORTHANC",
        "--timeout",
        "30",
    ])
    .args(["--port", &listener.to_string(), "127.0.0.1"])
    .arg(orthanc.dicom.to_string())
    .arg(&file)
    .args(["-k", &format!("{CT}:{unknown}")]);
    let (out, timed_out) = run_timeout(&mut cmd, Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!timed_out, "{stdout}");
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{v}");
    let rep = &v["report"];
    assert_eq!(rep["via"], "new", "{v}");
    assert_eq!(rep["calling_ae_title"], "ORTHANC", "{v}");
    assert_eq!(scu_pairs(&rep["committed"]), owned(&[(CT, a)]), "{v}");
    assert_eq!(
        rep["failed"][0]["sop_instance_uid"],
        unknown.as_str(),
        "{v}"
    );
    assert_eq!(rep["failed"][0]["failure_reason"], 0x0112, "{v}");
}
