//! The admin API's retrieve endpoints (issue 13, item 6) against real peers:
//! `POST /api/v1/studies/{uid}/move` (roles, 400/404s, the jobs in the queue, no doubled jobs,
//! the audit entry, delivery byte for byte to DCMTK `storescp` and to Orthanc) and
//! `POST /api/v1/destinations/{name}/query` (a C-FIND SCU against a second dicom-gw daemon
//! and against Orthanc; refused, silent and failing peers answered 502 with the reason).
//!
//! The API does not depend on the DICOM I/O backend, so the daemons run with `epoll` only.

mod util;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use util::orthanc::{require_orthanc, Orthanc, ORTHANC_AET};
use util::*;

/// How long deliveries may take.
const SETTLE: Duration = Duration::from_secs(60);

/// `[store]` of every test config: the shared disk is busy.
const STORE: &str = "[store]\ndisk_high_water_percent = 100\n";

/// A daemon with tokens, started with `toml` (after `[store]`), holding `objs`.
struct Gw {
    daemon: Daemon,
    data: PathBuf,
    viewer: String,
    operator: String,
    admin: String,
}

impl Gw {
    fn start(dir: &Path, toml: &str, files: &[PathBuf]) -> Gw {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let viewer = cli_token(GW_BIN, &data, "viewer");
        let operator = cli_token(GW_BIN, &data, "operator");
        let admin = cli_token(GW_BIN, &data, "admin");
        let daemon = start_gw(dir, &data, &format!("{STORE}{toml}"), &[]);
        if !files.is_empty() {
            storescu(daemon.port, files, &[]).assert_all_ok(files);
        }
        Gw {
            daemon,
            data,
            viewer,
            operator,
            admin,
        }
    }

    fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
        let b = body.map(|v| serde_json::to_vec(v).unwrap());
        request(
            self.daemon.http_port,
            method,
            &format!("/api/v1{path}"),
            Some(token),
            b.as_deref().map(|b| ("application/json", b)),
        )
    }

    fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.call("POST", path, token, Some(body))
    }

    fn post_raw(&self, path: &str, token: &str, body: &[u8]) -> Resp {
        request(
            self.daemon.http_port,
            "POST",
            &format!("/api/v1{path}"),
            Some(token),
            Some(("application/json", body)),
        )
    }
}

/// Asserts an error answer with `status` whose message mentions `mentions`.
#[track_caller]
fn err(r: &Resp, status: u16, mentions: &str) {
    let v = r.ok(status);
    let msg = v["error"]["message"].as_str().unwrap_or_else(|| {
        panic!("{}: error body without error.message: {v}", r.what);
    });
    assert!(
        msg.to_lowercase().contains(&mentions.to_lowercase()),
        "{}: the message should mention {mentions:?}: {msg}",
        r.what
    );
}

/// The SOP Instance UIDs of the jobs of `dest` listed by the API.
fn job_sops(gw: &Gw, dest: &str) -> Vec<String> {
    let v = gw
        .call(
            "GET",
            &format!("/queue/jobs?destination={dest}&limit=1000"),
            &gw.viewer,
            None,
        )
        .ok(200);
    let mut s: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["sop_instance_uid"].as_str().unwrap().to_owned())
        .collect();
    s.sort();
    s
}

fn sorted(v: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().collect();
    v.sort();
    v
}

/// A DICOM JSON attribute's first value as text (PN: its Alphabetic group).
fn first(m: &Value, tag: &str) -> String {
    let v = &m[tag]["Value"][0];
    match v {
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

fn values(m: &Value, tag: &str) -> BTreeSet<String> {
    m[tag]["Value"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The study move: roles, every 4xx, the jobs (never doubled), the audit entries, and the
/// objects arriving byte for byte at DCMTK `storescp`; a delivered study moved again is sent
/// again.
#[test]
fn move_endpoint_queues_the_study_and_storescp_receives_it() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let objs = two_studies();
    let files = write_objects(tmp.path(), &objs);
    let scp = DestScp::start_free(&tmp.path().join("scp"), &[]);
    // No route: ingest queues nothing, only the move does.
    let gw = Gw::start(tmp.path(), &dest_block("pacs", scp.port, ""), &files);
    let study = objs[0].study_instance_uid.clone();
    let path = format!("/studies/{study}/move");
    let body = json!({ "destination": "pacs" });

    // Paused, so the jobs stay visible in the queue.
    gw.post("/destinations/pacs/pause", &gw.operator, &json!({}))
        .ok(200);

    // Roles and errors.
    err(&gw.post(&path, &gw.viewer, &body), 403, "operator");
    err(
        &gw.post("/studies/1.2.3.999/move", &gw.operator, &body),
        404,
        "no study",
    );
    err(
        &gw.post("/studies/not-a-uid/move", &gw.operator, &body),
        400,
        "study_uid",
    );
    err(
        &gw.post(&path, &gw.operator, &json!({ "destination": "nowhere" })),
        404,
        "nowhere",
    );
    err(&gw.post_raw(&path, &gw.operator, b"{"), 400, "JSON");
    err(
        &gw.post(&path, &gw.operator, &json!({})),
        400,
        "destination",
    );
    err(
        &gw.post(
            &path,
            &gw.operator,
            &json!({ "destination": "pacs", "x": 1 }),
        ),
        400,
        "unknown field",
    );
    err(
        &gw.post(&path, &gw.operator, &json!(["pacs"])),
        400,
        "object",
    );
    assert_eq!(gw.call("GET", &path, &gw.operator, None).status, 405);
    assert!(
        job_sops(&gw, "pacs").is_empty(),
        "a refused move queued jobs"
    );

    // The move: one job per instance of study A.
    let v = gw.post(&path, &gw.operator, &body).ok(202);
    assert_eq!(
        v,
        json!({ "study": study, "destination": "pacs", "queued": 3, "already_queued": 0 })
    );
    let study_a: Vec<String> = sorted(objs[..3].iter().map(|o| o.sop_instance_uid.clone()));
    assert_eq!(job_sops(&gw, "pacs"), study_a);
    // Again while they wait: nothing doubled.
    let v = gw.post(&path, &gw.admin, &body).ok(202);
    assert_eq!(
        (v["queued"].as_u64(), v["already_queued"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(job_sops(&gw, "pacs"), study_a);
    // Audited, with who and what.
    let audit = gw.call("GET", "/audit?limit=1000", &gw.admin, None).ok(200);
    let moves: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "study.move")
        .collect();
    assert_eq!(moves.len(), 2, "{audit}");
    assert_eq!(moves[0]["details"]["study"], study);
    assert_eq!(moves[0]["details"]["destination"], "pacs");
    assert_eq!(moves[0]["details"]["queued"], 3);
    assert_eq!(moves[1]["details"]["already_queued"], 3);

    // Delivery: the three objects of study A, byte for byte, nothing of study B.
    gw.post("/destinations/pacs/resume", &gw.operator, &json!({}))
        .ok(200);
    let got = scp.wait_files(3, SETTLE);
    wait_settled(&gw.data, "pacs", 3, 0, SETTLE);
    let by_uid = scp.by_uid();
    assert_eq!(sorted(by_uid.keys().cloned()), study_a);
    for (o, f) in objs.iter().zip(&files).take(3) {
        let received = &by_uid[&o.sop_instance_uid][0];
        assert!(same_dataset(f, received), "{} differs", received.display());
        assert_eq!(meta_ts(received), meta_ts(f));
    }
    assert_eq!(got.len(), 3);

    // Delivered objects moved again are sent again (an explicit request).
    let v = gw.post(&path, &gw.operator, &body).ok(202);
    assert_eq!(v["queued"], 3);
    scp.wait_files(6, SETTLE);
    wait_settled(&gw.data, "pacs", 6, 0, SETTLE);
}

/// Holds a TCP port that completes connections and never answers (the kernel's backlog): an
/// association request to it waits for an A-ASSOCIATE-AC that never comes.
fn silent_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// The remote query against a second dicom-gw daemon: study, patient and series levels,
/// matches equal to what that daemon holds; every 4xx; a C-FIND failure status, a refused
/// connection and a silent peer answered 502 naming the reason.
#[test]
fn remote_query_against_a_second_gw() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let objs = two_studies();
    let mut files = write_objects(tmp.path(), &objs);
    // A Japanese name in UTF-8 (ISO_IR 192), found by a query in its own script.
    let jp = ObjSpec::new(9)
        .patient("山田^太郎", "PID-J")
        .extra(0x0008_0005, "CS", b"ISO_IR 192");
    let jp_file = tmp.path().join("jp.dcm");
    gen_part10(&jp_file, &jp).unwrap();
    files.push(jp_file);
    let remote_dir = tmp.path().join("remote");
    std::fs::create_dir_all(&remote_dir).unwrap();
    // The remote lets in storescu and the local daemon's AE title, and no other.
    let remote = Gw::start(
        &remote_dir,
        "allowed_calling_ae_titles = [\"STORESCU\", \"DICOM_GW\"]\n",
        &files,
    );
    let local_dir = tmp.path().join("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    let (_silent, silent) = silent_port();
    let toml = format!(
        "{}{}{}{}",
        dest_block("peer", remote.daemon.port, ""),
        dest_block("down", free_port(), "connect_timeout_seconds = 2"),
        dest_block("mute", silent, "dimse_timeout_seconds = 2"),
        dest_block(
            "refused",
            remote.daemon.port,
            "calling_ae_title = \"INTRUDER\""
        ),
    );
    let gw = Gw::start(&local_dir, &toml, &[]);
    let q = |body: Value| gw.post("/destinations/peer/query", &gw.operator, &body);

    // Study level, wildcard on the name: study A with the requested keys.
    let v = q(json!({
        "level": "STUDY",
        "keys": {"PatientName": "DOE*", "StudyInstanceUID": null, "StudyDate": "",
                 "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": ""}
    }))
    .ok(200);
    assert_eq!(
        (v["status"].as_str(), v["truncated"].as_bool()),
        (Some("0000"), Some(false)),
        "{v}"
    );
    let m = v["matches"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(first(&m[0], "0020000D"), objs[0].study_instance_uid);
    assert_eq!(first(&m[0], "00100010"), "DOE^JOHN");
    assert_eq!(first(&m[0], "00080020"), "20240115");
    assert_eq!(first(&m[0], "00201208"), "3");
    assert_eq!(
        values(&m[0], "00080061"),
        ["CT", "MR"].map(String::from).into()
    );
    assert_eq!(first(&m[0], "00080052"), "STUDY");

    // Every study (defaults: STUDY, study-root).
    let v = q(json!({ "keys": {"StudyInstanceUID": ""} })).ok(200);
    let studies: BTreeSet<String> = v["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| first(m, "0020000D"))
        .collect();
    assert_eq!(
        studies,
        objs.iter()
            .chain([&jp])
            .map(|o| o.study_instance_uid.clone())
            .collect()
    );

    // Non-ASCII keys go out as ISO_IR 192; the answer comes back as Unicode text.
    let v = q(json!({ "keys": {"PatientName": "山田*", "StudyInstanceUID": ""} })).ok(200);
    let m = v["matches"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(first(&m[0], "00100010"), "山田^太郎");
    assert_eq!(first(&m[0], "0020000D"), jp.study_instance_uid);

    // Patient Root, PATIENT level.
    let v = q(json!({
        "level": "PATIENT", "model": "patient-root",
        "keys": {"PatientID": "", "PatientName": ""}
    }))
    .ok(200);
    let pids: BTreeSet<String> = v["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| first(m, "00100020"))
        .collect();
    assert_eq!(pids, ["PID-A", "PID-B", "PID-J"].map(String::from).into());

    // Series of study A.
    let v = q(json!({
        "level": "SERIES",
        "keys": {"StudyInstanceUID": objs[0].study_instance_uid, "SeriesInstanceUID": "",
                 "Modality": ""}
    }))
    .ok(200);
    let series: BTreeSet<String> = v["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| first(m, "0020000E"))
        .collect();
    assert_eq!(
        series,
        [&objs[0], &objs[2]]
            .iter()
            .map(|o| o.series_instance_uid.clone())
            .collect()
    );

    // The remote refuses a baseline SERIES query without the Study UID: A900, a 502.
    err(
        &q(json!({ "level": "SERIES", "keys": {"Modality": "CT"} })),
        502,
        "A900",
    );

    // Bad requests.
    err(&q(json!({ "level": "FOO" })), 400, "level");
    err(&q(json!({ "level": "PATIENT" })), 400, "level");
    err(&q(json!({ "model": "flat" })), 400, "model");
    err(&q(json!({ "keys": {"NoSuchKey": "x"} })), 400, "NoSuchKey");
    err(
        &q(json!({ "keys": {"PatientName": true} })),
        400,
        "PatientName",
    );
    err(
        &q(json!({ "keys": {"QueryRetrieveLevel": "SERIES"} })),
        400,
        "level",
    );
    err(&q(json!({ "keys": {}, "extra": 1 })), 400, "unknown field");
    err(
        &gw.post("/destinations/nowhere/query", &gw.operator, &json!({})),
        404,
        "nowhere",
    );
    err(
        &gw.post("/destinations/peer/query", &gw.viewer, &json!({})),
        403,
        "operator",
    );

    // Peers that fail: nothing listening, and a peer that never answers.
    err(
        &gw.post("/destinations/down/query", &gw.operator, &json!({})),
        502,
        "connect",
    );
    err(
        &gw.post("/destinations/mute/query", &gw.operator, &json!({})),
        502,
        "timed out",
    );
    // A-ASSOCIATE-RJ: the remote does not know our calling AE title.
    err(
        &gw.post("/destinations/refused/query", &gw.operator, &json!({})),
        502,
        "rejected",
    );
}

/// Orthanc as the remote: the query endpoint finds what was uploaded to Orthanc, and the move
/// endpoint delivers a study into Orthanc byte for byte.
#[test]
fn remote_query_and_move_with_orthanc() {
    if !require_orthanc("remote_query_and_move_with_orthanc") {
        return;
    }
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(&tmp.path().join("orthanc"), &[]);
    let objs = two_studies();
    let files = write_objects(tmp.path(), &objs);
    // Study B goes to Orthanc by REST; study A to dicom-gw by C-STORE.
    orthanc.upload(&files[3]);
    // dest_block's AE title is the upper-cased name: ORTHANC.
    assert_eq!(ORTHANC_AET, "ORTHANC");
    let toml = dest_block("orthanc", orthanc.dicom_port, "");
    let gw = Gw::start(tmp.path(), &toml, &files[..3]);

    let v = gw
        .post(
            "/destinations/orthanc/query",
            &gw.operator,
            &json!({ "keys": {"PatientName": "SMITH*", "StudyInstanceUID": "", "PatientID": ""} }),
        )
        .ok(200);
    let m = v["matches"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{v}\n{}", orthanc.log());
    assert_eq!(first(&m[0], "0020000D"), objs[3].study_instance_uid);
    assert_eq!(first(&m[0], "00100020"), "PID-B");

    let study = &objs[0].study_instance_uid;
    let v = gw
        .post(
            &format!("/studies/{study}/move"),
            &gw.operator,
            &json!({ "destination": "orthanc" }),
        )
        .ok(202);
    assert_eq!(v["queued"], 3);
    orthanc.wait_instances(4, SETTLE);
    wait_settled(&gw.data, "orthanc", 3, 0, SETTLE);
    let held = orthanc.files_by_sop_uid();
    for (o, f) in objs.iter().zip(&files).take(3) {
        let got = held
            .get(&o.sop_instance_uid)
            .unwrap_or_else(|| panic!("Orthanc lacks {}", o.sop_instance_uid));
        assert!(same_dataset(f, got), "{} differs", got.display());
    }
    // And Orthanc now answers the query for study A too.
    let v = gw
        .post(
            "/destinations/orthanc/query",
            &gw.operator,
            &json!({ "keys": {"StudyInstanceUID": study, "NumberOfStudyRelatedInstances": ""} }),
        )
        .ok(200);
    assert_eq!(v["matches"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(first(&v["matches"][0], "00201208"), "3");
}
