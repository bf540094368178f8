//! MPPS (issue 6) with a real SCU: pynetdicom's N-CREATE and N-SET against the worklist port
//! move a worklist item through its states, seen both through the admin API and through
//! DCMTK `findscu -W`; refused requests get the standard statuses (0111 duplicate, 0106
//! invalid status at creation, 0110 with Error ID A710 and the standard comment after
//! completion, 0112 unknown instance); `/api/v1/mpps` lists the instances.
//!
//! pynetdicom comes from PyPI into a venv kept under Cargo's target directory (see
//! `util::python`).

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const SCU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer/mpps_scu.py");

/// Runs one MPPS request with pynetdicom; returns its JSON result.
fn mpps(python: &Path, port: u16, action: &str, uid: &str, keys: &[&str]) -> Value {
    let mut cmd = Command::new(python);
    cmd.arg(SCU)
        .arg(port.to_string())
        .arg(action)
        .arg(uid)
        .args(keys);
    let (out, timed_out) = run_timeout(&mut cmd, Duration::from_secs(60));
    assert!(!timed_out, "mpps_scu.py timed out");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mpps_scu.py {action} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("mpps_scu.py output {stdout:?}: {e}"))
}

fn item(acc: &str, rp: &str, sps: &str, study: &str) -> Value {
    json!({
        "00080050": {"vr": "SH", "Value": [acc]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Mpps^Pat"}]},
        "00100020": {"vr": "LO", "Value": [format!("PID-{acc}")]},
        "0020000D": {"vr": "UI", "Value": [study]},
        "00401001": {"vr": "SH", "Value": [rp]},
        "00400100": {"vr": "SQ", "Value": [{
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00400001": {"vr": "AE", "Value": ["MODALITY1"]},
            "00400002": {"vr": "DA", "Value": ["20261122"]},
            "00400009": {"vr": "SH", "Value": [sps]}
        }]}
    })
}

/// Accession numbers `findscu -W` returns for a query on the step status (`None`: no
/// status key, i.e. what a modality asking for its work sees).
fn find_by_status(port: u16, dir: &Path, status: Option<&str>) -> Vec<String> {
    let out_dir = dir.join(format!(
        "find-{}",
        status.unwrap_or("any").replace(' ', "_")
    ));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let key = match status {
        Some(s) => format!("(0040,0100)[0].ScheduledProcedureStepStatus={s}"),
        None => "(0040,0100)[0].ScheduledProcedureStepStatus".to_owned(),
    };
    let mut cmd = Command::new("findscu");
    cmd.args(["-W", "-aec", "DICOM_GW", "-X", "-od"])
        .arg(&out_dir)
        .args(["-k", "AccessionNumber", "-k", &key])
        .arg("127.0.0.1")
        .arg(port.to_string());
    let (out, timed_out) = run_timeout(&mut cmd, Duration::from_secs(60));
    assert!(!timed_out && out.status.success(), "findscu: {out:?}");
    let mut accs: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| {
            let obj = dicom_object::open_file(e.unwrap().path()).unwrap();
            obj.element(dicom_dictionary_std::tags::ACCESSION_NUMBER)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end()
                .to_owned()
        })
        .collect();
    accs.sort();
    accs
}

#[test]
fn mpps_from_pynetdicom_moves_the_item_through_its_states() {
    require_dcmtk();
    let python = pynetdicom_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let viewer = cli_token(BIN, &data, "viewer");
    let operator = cli_token(BIN, &data, "operator");
    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);
    let (api, port) = (gw.http_port, gw.worklist_port);
    let (code, created) = http_json(
        api,
        "POST",
        "/api/v1/worklist",
        Some(&operator),
        Some(&json!([
            item("ACC-M1", "RP1", "SPS1", "1.2.826.0.7.1"),
            item("ACC-M2", "RP2", "SPS2", "1.2.826.0.7.2"),
        ])),
    );
    assert_eq!(code, 201, "{created}");
    let ids: Vec<u64> = created["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .collect();
    let status_of = |id: u64| {
        let (code, v) = http_json(
            api,
            "GET",
            &format!("/api/v1/worklist/{id}"),
            Some(&viewer),
            None,
        );
        assert_eq!(code, 200, "{v}");
        v["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(status_of(ids[0]), "SCHEDULED");
    assert_eq!(find_by_status(port, tmp.path(), None), ["ACC-M1", "ACC-M2"]);

    // N-CREATE IN PROGRESS, linked by study, accession and step IDs: the item is STARTED.
    let link = [
        "study=1.2.826.0.7.1",
        "accession=ACC-M1",
        "rp_id=RP1",
        "sps_id=SPS1",
        "patient_id=PID-ACC-M1",
        "patient_name=Mpps^Pat",
    ];
    let uid = "1.2.826.0.7.100";
    let r = mpps(&python, port, "create", uid, &link);
    assert_eq!(r["status"], 0, "{r}");
    assert_eq!(status_of(ids[0]), "STARTED");
    assert_eq!(
        status_of(ids[1]),
        "SCHEDULED",
        "the other item is untouched"
    );
    assert_eq!(
        find_by_status(port, tmp.path(), Some("STARTED")),
        ["ACC-M1"]
    );

    // The same UID again: 0111 Duplicate SOP Instance.
    let r = mpps(&python, port, "create", uid, &link);
    assert_eq!(r["status"], 0x0111, "{r}");
    // Created COMPLETED: 0106 Invalid attribute value, naming the status attribute.
    let r = mpps(&python, port, "create-completed", "1.2.826.0.7.101", &link);
    assert_eq!(r["status"], 0x0106, "{r}");
    assert!(
        r["comment"].as_str().unwrap_or("").contains("IN PROGRESS"),
        "{r}"
    );

    // N-SET COMPLETED: the item is COMPLETED and leaves the modality's default worklist.
    let r = mpps(&python, port, "set", uid, &["status=COMPLETED"]);
    assert_eq!(r["status"], 0, "{r}");
    assert_eq!(status_of(ids[0]), "COMPLETED");
    assert_eq!(find_by_status(port, tmp.path(), None), ["ACC-M2"]);
    assert_eq!(
        find_by_status(port, tmp.path(), Some("COMPLETED")),
        ["ACC-M1"]
    );

    // Any N-SET after completion: 0110 with Error ID A710 and the standard's comment.
    let r = mpps(&python, port, "set", uid, &["status=DISCONTINUED"]);
    assert_eq!(r["status"], 0x0110, "{r}");
    assert_eq!(r["error_id"], 0xA710, "{r}");
    assert_eq!(
        r["comment"], "Performed Procedure Step Object may no longer be updated",
        "{r}"
    );
    assert_eq!(
        status_of(ids[0]),
        "COMPLETED",
        "unchanged by the refused N-SET"
    );
    // N-SET of an instance nobody created: 0112 No such SOP instance.
    let r = mpps(
        &python,
        port,
        "set",
        "1.2.826.0.7.999",
        &["status=COMPLETED"],
    );
    assert_eq!(r["status"], 0x0112, "{r}");

    // The second item: started, then discontinued.
    let link2 = [
        "study=1.2.826.0.7.2",
        "accession=ACC-M2",
        "rp_id=RP2",
        "sps_id=SPS2",
    ];
    let uid2 = "1.2.826.0.7.200";
    assert_eq!(mpps(&python, port, "create", uid2, &link2)["status"], 0);
    assert_eq!(
        mpps(&python, port, "set", uid2, &["status=DISCONTINUED"])["status"],
        0
    );
    assert_eq!(status_of(ids[1]), "DISCONTINUED");

    // /api/v1/mpps lists both, with their states and links.
    let (code, list) = http_json(api, "GET", "/api/v1/mpps", Some(&viewer), None);
    assert_eq!(code, 200, "{list}");
    let got: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["sop_instance_uid"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (uid.to_owned(), "COMPLETED".to_owned()),
            (uid2.to_owned(), "DISCONTINUED".to_owned())
        ]
    );
    let (code, one) = http_json(
        api,
        "GET",
        &format!("/api/v1/mpps/{uid}"),
        Some(&viewer),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(one["linked_items"], json!([ids[0]]));

    // The metrics counted every answer by operation and outcome.
    let mpps_metric = |op: &str, status: &str| {
        metric_value(
            api,
            &format!("dicomgw_mpps_total{{operation=\"{op}\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(mpps_metric("n_create", "success"), Some(2.0));
    assert_eq!(mpps_metric("n_create", "failure"), Some(2.0));
    assert_eq!(mpps_metric("n_set", "success"), Some(2.0));
    assert_eq!(mpps_metric("n_set", "failure"), Some(2.0));
    gw.stop();
}
