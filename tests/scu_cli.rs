//! `dicom-gw scu echo|store|mwl|mpps` (issue 13, item 6) against real peers: DCMTK `storescp`
//! and the dicom-gw daemon (its Storage, Modality Worklist and MPPS SCPs). Checks the JSON on
//! stdout, the status on stderr and the exit codes (0 success, 1 DIMSE failure, 2 association
//! failure), and that `store` sends the files' dataset bytes verbatim in their own transfer
//! syntax.

mod util;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use util::*;

const LIMIT: Duration = Duration::from_secs(120);
const STORE: &str = "[store]\ndisk_high_water_percent = 100\n";

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn scu_echo_and_store_against_storescp() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let scp = DestScp::start_free(&tmp.path().join("scp"), &[]);
    let port = scp.port.to_string();

    let (code, out, err) = gw_scu(&["echo", "--aec", "STORESCP", "127.0.0.1", &port]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_lines(&out)[0]["status"], "0000");
    assert!(err.contains("C-ECHO status 0000"), "{err}");

    // Three objects: Explicit LE, Implicit LE and a 2 MiB one; plus a file that is not DICOM.
    let specs = [
        ObjSpec::new(0),
        ObjSpec::new(1),
        ObjSpec::new(2).pixel_bytes(2 << 20),
    ];
    let mut files = Vec::new();
    for (k, s) in specs.iter().enumerate() {
        let f = tmp.path().join(format!("in{k}.dcm"));
        gen_part10(&f, s).unwrap();
        if k == 1 {
            let g = tmp.path().join("in1-implicit.dcm");
            convert_ts(&f, &g, Ts::ImplicitLE);
            files.push(g);
        } else {
            files.push(f);
        }
    }
    let (code, out, err) = gw_scu(&[
        "store",
        "--aec",
        "STORESCP",
        "127.0.0.1",
        &port,
        files[0].to_str().unwrap(),
        files[1].to_str().unwrap(),
        files[2].to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", scp.log());
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{out}");
    for (l, s) in lines.iter().zip(&specs) {
        assert_eq!(l["status"], "0000", "{l}");
        assert_eq!(l["sop_instance_uid"], s.sop_instance_uid.as_str());
    }
    assert_eq!(lines[1]["transfer_syntax_uid"], Ts::ImplicitLE.uid());
    scp.wait_files(3, LIMIT);
    let by_uid = scp.by_uid();
    for (s, f) in specs.iter().zip(&files) {
        let got = &by_uid[&s.sop_instance_uid][0];
        assert!(same_dataset(f, got), "{} differs", got.display());
        assert_eq!(meta_ts(got), meta_ts(f), "sent in its own transfer syntax");
    }

    // Not a Part-10 file: its line says why, the others still go, exit 1.
    let junk = tmp.path().join("junk.dcm");
    std::fs::write(&junk, b"not dicom at all").unwrap();
    let (code, out, err) = gw_scu(&[
        "store",
        "--aec",
        "STORESCP",
        "127.0.0.1",
        &port,
        junk.to_str().unwrap(),
        files[0].to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    let lines = json_lines(&out);
    assert!(
        lines[0]["error"].as_str().unwrap().contains("Part-10"),
        "{out}"
    );
    assert_eq!(lines[1]["status"], "0000");

    // Nobody listening: exit 2 for echo and store.
    let closed = free_port().to_string();
    let (code, out, err) = gw_scu(&["echo", "--timeout", "5", "127.0.0.1", &closed]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("association failed"), "{err}");
    let (code, _, err) = gw_scu(&["store", "127.0.0.1", &closed, files[0].to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
}

/// A worklist item for the MWL test.
fn item() -> Value {
    json!({
        "00080050": {"vr": "SH", "Value": ["ACC1"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.1"]},
        "00401001": {"vr": "SH", "Value": ["RP1"]},
        "00400100": {"vr": "SQ", "Value": [{
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00400001": {"vr": "AE", "Value": ["CT01"]},
            "00400002": {"vr": "DA", "Value": ["20261120"]},
            "00400003": {"vr": "TM", "Value": ["083000"]},
            "00400009": {"vr": "SH", "Value": ["SPS1"]}
        }]}
    })
}

/// N-CREATE attributes of an MPPS in progress (PS3.4 F.7.2.1 Type 1 and 2 attributes).
fn mpps_create() -> Value {
    json!({
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00400241": {"vr": "AE", "Value": ["CT01"]},
        "00400244": {"vr": "DA", "Value": ["20261120"]},
        "00400245": {"vr": "TM", "Value": ["083100"]},
        "00400252": {"vr": "CS", "Value": ["IN PROGRESS"]},
        "00400253": {"vr": "SH", "Value": ["PPS1"]},
        "00400250": {"vr": "DA"},
        "00400251": {"vr": "TM"},
        "00400270": {"vr": "SQ", "Value": [{
            "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.1"]},
            "00080050": {"vr": "SH", "Value": ["ACC1"]},
            "00401001": {"vr": "SH", "Value": ["RP1"]},
            "00400009": {"vr": "SH", "Value": ["SPS1"]}
        }]}
    })
}

fn write_json(path: &Path, v: &Value) -> String {
    std::fs::write(path, serde_json::to_vec(v).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn scu_store_mwl_and_mpps_against_the_gateway() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The worklist item goes in before the daemon holds the database.
    let item_file = write_json(&tmp.path().join("item.json"), &item());
    gw_cli(&[
        "worklist",
        "import",
        "--data-dir",
        data.to_str().unwrap(),
        &item_file,
    ])
    .ok();
    let viewer = cli_token(GW_BIN, &data, "viewer");
    let gw = start_gw(tmp.path(), &data, STORE, &[]);
    let (port, wl) = (gw.port.to_string(), gw.worklist_port.to_string());

    // echo and store on the storage port; stored byte for byte.
    let (code, _, err) = gw_scu(&["echo", "--aec", "DICOM_GW", "127.0.0.1", &port]);
    assert_eq!(code, 0, "{err}");
    let spec = ObjSpec::new(7);
    let f = tmp.path().join("obj.dcm");
    gen_part10(&f, &spec).unwrap();
    let (code, out, err) = gw_scu(&["store", "127.0.0.1", &port, f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(json_lines(&out)[0]["status"], "0000");
    let stored = spec.settled_path(&data);
    assert!(same_dataset(&f, &stored), "{} differs", stored.display());

    // MWL: a key inside the Scheduled Procedure Step Sequence.
    let (code, out, err) = gw_scu(&[
        "mwl",
        "-k",
        "PatientName",
        "-k",
        "AccessionNumber",
        "-k",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "-k",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "127.0.0.1",
        &wl,
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let m = v.as_array().unwrap();
    assert_eq!(m.len(), 1, "{out}");
    assert_eq!(m[0]["00080050"]["Value"][0], "ACC1");
    assert_eq!(m[0]["00400100"]["Value"][0]["00400001"]["Value"][0], "CT01");
    let (code, out, _) = gw_scu(&[
        "mwl",
        "-k",
        "ScheduledProcedureStepSequence[0].Modality=MR",
        "127.0.0.1",
        &wl,
    ]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));

    // MPPS: create (attributes from a JSON file), then complete it with -k.
    let attrs = write_json(&tmp.path().join("mpps.json"), &mpps_create());
    let (code, out, err) = gw_scu(&["mpps", "create", "--json", &attrs, "127.0.0.1", &wl]);
    assert_eq!(code, 0, "{out}\n{err}");
    let created = &json_lines(&out)[0];
    assert_eq!(created["status"], "0000");
    let uid = created["sop_instance_uid"].as_str().unwrap().to_owned();
    assert!(uid.starts_with("2.25."), "{uid}");
    let (code, out, err) = gw_scu(&[
        "mpps",
        "set",
        "--uid",
        &uid,
        "-k",
        "PerformedProcedureStepStatus=COMPLETED",
        "-k",
        "PerformedProcedureStepEndDate=20261120",
        "-k",
        "PerformedProcedureStepEndTime=084500",
        "127.0.0.1",
        &wl,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(json_lines(&out)[0]["status"], "0000");
    // A second create of the same instance: 0111, exit 1; N-SET of a completed step: refused.
    let (code, out, _) = gw_scu(&[
        "mpps",
        "create",
        "--uid",
        &uid,
        "--json",
        &attrs,
        "127.0.0.1",
        &wl,
    ]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(json_lines(&out)[0]["status"], "0111");
    let (code, out, _) = gw_scu(&[
        "mpps",
        "set",
        "--uid",
        &uid,
        "-k",
        "PerformedProcedureStepStatus=DISCONTINUED",
        "127.0.0.1",
        &wl,
    ]);
    assert_eq!(code, 1, "{out}");
    // The step is COMPLETED in the API's view.
    let (status, v) = http_json(
        gw.http_port,
        "GET",
        &format!("/api/v1/mpps/{uid}"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("COMPLETED"), "{v}");

    // Bad usage: a key that is no attribute → exit 2 before any association.
    let (code, _, err) = gw_scu(&["mwl", "-k", "NoSuchKey=1", "127.0.0.1", &wl]);
    assert_eq!(code, 2, "{err}");
}
