//! Orthanc 1.10.1 (Debian package) as a second real peer (issue 13, acceptance):
//! - as a C-FIND client of dicom-gw (REST `POST /modalities/gw/query`): the answers are what
//!   the test stored in dicom-gw;
//! - as a C-MOVE client (`POST /queries/{id}/answers/0/retrieve` to itself, dicom-gw knowing
//!   Orthanc's AE title as a destination): Orthanc ends up holding the study byte for byte;
//! - as a Query/Retrieve SCP for `dicom-gw scu find` and `dicom-gw scu move` (objects uploaded
//!   to Orthanc by REST `/instances`; the move brings them into dicom-gw byte for byte), and as
//!   the Verification and Storage SCP of `dicom-gw scu echo` and `scu store`.
//!
//! Each test runs its own `Orthanc` process (util::orthanc), never the system service; all are
//! skipped with a message when Orthanc is not installed. dicom-gw's C-FIND does not depend on
//! the I/O backend more than storage does; the `gwtest!` pair runs the Orthanc-as-client tests
//! on both.

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use util::orthanc::{require_orthanc, Modality, Orthanc, ORTHANC_AET};
use util::*;

const SETTLE: Duration = Duration::from_secs(60);

/// dicom-gw with `toml` (after a `[store]` with the disk mark at 100) on backend `io`.
fn start_gw_io(dir: &Path, io: &str, toml: &str) -> (Daemon, PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = write_gw_config(
        dir,
        &format!("[store]\ndisk_high_water_percent = 100\n{toml}"),
    );
    let d = Daemon::start(GW_BIN, &data, io, &["--config", cfg.to_str().unwrap()]);
    (d, data)
}

/// Orthanc's `POST /modalities/{m}/query`, then each answer's content (simplified tags).
fn orthanc_query(o: &Orthanc, modality: &str, level: &str, query: Value) -> (String, Vec<Value>) {
    let r = o.post_json(
        &format!("/modalities/{modality}/query"),
        &json!({ "Level": level, "Query": query }),
    );
    let id = r["ID"]
        .as_str()
        .unwrap_or_else(|| panic!("query answer without ID: {r}\n{}", o.log()))
        .to_owned();
    let n = o
        .get_json(&format!("/queries/{id}/answers"))
        .as_array()
        .unwrap()
        .len();
    let answers = (0..n)
        .map(|i| o.get_json(&format!("/queries/{id}/answers/{i}/content?simplify")))
        .collect();
    (id, answers)
}

fn field(v: &Value, name: &str) -> String {
    v[name].as_str().unwrap_or("").trim().to_owned()
}

gwtest!(orthanc_queries_gw_with_c_find, |io: &str| {
    if !require_orthanc("orthanc_queries_gw_with_c_find") {
        return;
    }
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let objs = two_studies();
    let files = write_objects(tmp.path(), &objs);
    let (gw, _data) = start_gw_io(tmp.path(), io, "");
    storescu(gw.port, &files, &[]).assert_all_ok(&files);
    let o = Orthanc::start(
        &tmp.path().join("orthanc"),
        &[Modality::new("gw", "DICOM_GW", gw.port)],
    );

    // Study level, wildcard on the name.
    let (_, answers) = orthanc_query(
        &o,
        "gw",
        "Study",
        json!({"PatientName": "DOE*", "StudyInstanceUID": "", "StudyDate": "",
               "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": ""}),
    );
    assert_eq!(answers.len(), 1, "{answers:?}\n{}", o.log());
    let a = &answers[0];
    assert_eq!(field(a, "StudyInstanceUID"), objs[0].study_instance_uid);
    assert_eq!(field(a, "PatientName"), "DOE^JOHN");
    assert_eq!(field(a, "StudyDate"), "20240115");
    assert_eq!(field(a, "NumberOfStudyRelatedInstances"), "3");
    assert_eq!(field(a, "ModalitiesInStudy"), "CT\\MR");

    // Every study; then the series of study A.
    let (_, answers) = orthanc_query(&o, "gw", "Study", json!({"StudyInstanceUID": ""}));
    let studies: BTreeSet<String> = answers
        .iter()
        .map(|a| field(a, "StudyInstanceUID"))
        .collect();
    assert_eq!(
        studies,
        objs.iter().map(|o| o.study_instance_uid.clone()).collect()
    );
    let (_, answers) = orthanc_query(
        &o,
        "gw",
        "Series",
        json!({"StudyInstanceUID": objs[0].study_instance_uid, "SeriesInstanceUID": "",
               "Modality": ""}),
    );
    let series: BTreeSet<(String, String)> = answers
        .iter()
        .map(|a| (field(a, "SeriesInstanceUID"), field(a, "Modality")))
        .collect();
    assert_eq!(
        series,
        [
            (objs[0].series_instance_uid.clone(), "CT".to_owned()),
            (objs[2].series_instance_uid.clone(), "MR".to_owned()),
        ]
        .into()
    );
});

gwtest!(orthanc_moves_a_study_from_gw, |io: &str| {
    if !require_orthanc("orthanc_moves_a_study_from_gw") {
        return;
    }
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let objs = two_studies();
    let files = write_objects(tmp.path(), &objs);
    // Orthanc first (its port goes into dicom-gw's destinations), then dicom-gw's address
    // into Orthanc's modalities.
    let o = Orthanc::start(&tmp.path().join("orthanc"), &[]);
    assert_eq!(ORTHANC_AET, "ORTHANC"); // dest_block's AE title is the upper-cased name
    let (gw, _data) = start_gw_io(tmp.path(), io, &dest_block("orthanc", o.dicom_port, ""));
    storescu(gw.port, &files, &[]).assert_all_ok(&files);
    o.add_modality(&Modality::new("gw", "DICOM_GW", gw.port));

    let (id, answers) = orthanc_query(
        &o,
        "gw",
        "Study",
        json!({"StudyInstanceUID": objs[0].study_instance_uid}),
    );
    assert_eq!(answers.len(), 1, "{answers:?}");
    let r = o.post_json(
        &format!("/queries/{id}/answers/0/retrieve"),
        &json!({ "TargetAet": ORTHANC_AET, "Synchronous": true }),
    );
    eprintln!("retrieve: {r}");
    o.wait_instances(3, SETTLE);
    let held = o.files_by_sop_uid();
    assert_eq!(
        held.keys().cloned().collect::<BTreeSet<_>>(),
        objs[..3]
            .iter()
            .map(|o| o.sop_instance_uid.clone())
            .collect(),
        "Orthanc holds exactly study A"
    );
    for (spec, sent) in objs.iter().zip(&files).take(3) {
        let got = &held[&spec.sop_instance_uid];
        assert!(same_dataset(sent, got), "{} differs", got.display());
        assert_eq!(meta_ts(got), meta_ts(sent));
    }
    drop(gw);
});

/// DICOM JSON first value as text (PN: Alphabetic).
fn first(m: &Value, tag: &str) -> String {
    match &m[tag]["Value"][0] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("Alphabetic")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[test]
fn gw_scu_find_against_orthanc() {
    if !require_orthanc("gw_scu_find_against_orthanc") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let objs = two_studies();
    let files = write_objects(tmp.path(), &objs);
    let o = Orthanc::start(&tmp.path().join("orthanc"), &[]);
    for f in &files {
        o.upload(f);
    }
    let port = o.dicom_port.to_string();
    let (code, out, err) = gw_scu(&[
        "find",
        "-S",
        "--aec",
        ORTHANC_AET,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientName=DOE*",
        "-k",
        "StudyInstanceUID",
        "-k",
        "PatientID",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(code, 0, "{err}\n{}", o.log());
    let v: Value = serde_json::from_str(&out).unwrap();
    let m = v.as_array().unwrap();
    assert_eq!(m.len(), 1, "{out}");
    assert_eq!(first(&m[0], "0020000D"), objs[0].study_instance_uid);
    assert_eq!(first(&m[0], "00100020"), "PID-A");
    assert!(err.contains("status 0000"), "{err}");

    // Patient Root, IMAGE level of study A's CT series.
    let (code, out, err) = gw_scu(&[
        "find",
        "-P",
        "--aec",
        ORTHANC_AET,
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        "PatientID=PID-A",
        "-k",
        &format!("StudyInstanceUID={}", objs[0].study_instance_uid),
        "-k",
        &format!("SeriesInstanceUID={}", objs[0].series_instance_uid),
        "-k",
        "SOPInstanceUID",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let sops: BTreeSet<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| first(m, "00080018"))
        .collect();
    assert_eq!(
        sops,
        [&objs[0], &objs[1]]
            .iter()
            .map(|o| o.sop_instance_uid.clone())
            .collect()
    );
}

/// `dicom-gw scu echo` and `scu store` with Orthanc as the SCP: the stored instances are the
/// files' datasets byte for byte, in their own transfer syntax.
#[test]
fn gw_scu_echo_and_store_to_orthanc() {
    if !require_orthanc("gw_scu_echo_and_store_to_orthanc") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let objs = two_studies();
    let files = write_objects(tmp.path(), &objs);
    let o = Orthanc::start(&tmp.path().join("orthanc"), &[]);
    let port = o.dicom_port.to_string();
    let (code, out, err) = gw_scu(&["echo", "--aec", ORTHANC_AET, "127.0.0.1", &port]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", o.log());
    let mut args = vec!["store", "--aec", ORTHANC_AET, "127.0.0.1", &port];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let (code, out, err) = gw_scu(&args);
    assert_eq!(code, 0, "{out}\n{err}\n{}", o.log());
    assert_eq!(out.lines().count(), files.len(), "{out}");
    for l in out.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["status"], "0000", "{v}");
    }
    o.wait_instances(files.len(), SETTLE);
    let held = o.files_by_sop_uid();
    for (spec, sent) in objs.iter().zip(&files) {
        let got = &held[&spec.sop_instance_uid];
        assert!(same_dataset(sent, got), "{} differs", got.display());
        assert_eq!(meta_ts(got), meta_ts(sent));
    }
}

/// `dicom-gw scu move` (built on the `retrieve` branch) asks Orthanc to send study A to the
/// test's dicom-gw; the objects arrive byte for byte.
#[test]
fn gw_scu_move_from_orthanc() {
    if !require_orthanc("gw_scu_move_from_orthanc") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let objs = two_studies();
    let files = write_objects(tmp.path(), &objs);
    let o = Orthanc::start(&tmp.path().join("orthanc"), &[]);
    for f in &files {
        o.upload(f);
    }
    let (gw, data) = start_gw_io(tmp.path(), "epoll", "");
    o.add_modality(&Modality::new("gw", "DICOM_GW", gw.port));
    let port = o.dicom_port.to_string();
    let (code, out, err) = gw_scu(&[
        "move",
        "-S",
        "--aec",
        ORTHANC_AET,
        "--move",
        "DICOM_GW",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        &format!("StudyInstanceUID={}", objs[0].study_instance_uid),
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", o.log());
    for (spec, sent) in objs.iter().zip(&files).take(3) {
        let stored = spec.settled_path(&data);
        assert!(
            stored.exists(),
            "dicom-gw did not store {}",
            spec.sop_instance_uid
        );
        assert!(same_dataset(sent, &stored), "{} differs", stored.display());
    }
    assert!(
        !objs[3].stored_path(&data).exists(),
        "study B was not asked for"
    );
    drop(gw);
}
