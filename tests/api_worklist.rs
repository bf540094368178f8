//! The worklist admin API and CLI import (issue 6) against the running daemon over real HTTP:
//! items created one at a time and as arrays in DICOM JSON, every kind of invalid body
//! answered 400 naming the attribute (keyword, tag, sequence path, array index) with nothing
//! stored, every role boundary, get/replace/delete/cancel with their 404s and 409s, list
//! filters and pagination, the MPPS resources, `dicom-gw worklist import` with and without a
//! running daemon (re-importing updates instead of duplicating), the audit log, and the 404
//! of a process that runs no worklist service.
//!
//! The HTTP client is a few lines over `TcpStream` (no HTTP dependency), so bodies and
//! headers go out exactly as written. The API does not depend on the DICOM I/O backend, so
//! the daemon runs with `epoll` only.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use util::*;

impl Resp {
    /// Asserts an error answer with `status` whose message contains every one of `mentions`.
    #[track_caller]
    fn err(&self, status: u16, mentions: &[&str]) -> Value {
        let v = self.ok(status);
        assert!(
            v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{}: error body without error.code: {v}",
            self.what
        );
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: error body without error.message: {v}", self.what));
        for m in mentions {
            assert!(
                msg.contains(m),
                "{}: the message should mention {m:?}: {msg}",
                self.what
            );
        }
        v
    }
}

/// [`request`], asserting the answer is not chunked (JSON answers carry a Content-Length).
fn send(
    port: u16,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Resp {
    let r = request(port, method, target, token, body);
    assert!(
        !r.header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked")),
        "{}: JSON answers are not chunked",
        r.what
    );
    r
}

/// `POST /api/v1/worklist` declaring a `length`-byte body without sending it.
fn oversized(port: u16, token: &str, length: usize) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    write!(
        s,
        "POST /api/v1/worklist HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/dicom+json\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    Resp {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap(),
        headers: Vec::new(),
        body: raw[split + 4..].to_vec(),
        what: format!("POST /api/v1/worklist with Content-Length {length}"),
    }
}

/// The daemon under test with a token of each role.
struct Gw {
    tmp: tempfile::TempDir,
    daemon: Daemon,
    data: PathBuf,
    viewer: String,
    operator: String,
    admin: String,
}

impl Gw {
    /// Tokens first (the CLI opens the database, which the daemon then holds), then the
    /// daemon with `extra` arguments.
    fn start(extra: &[&str]) -> Gw {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let viewer = cli_token(GW_BIN, &data, "viewer");
        let operator = cli_token(GW_BIN, &data, "operator");
        let admin = cli_token(GW_BIN, &data, "admin");
        let daemon = Daemon::start(GW_BIN, &data, "epoll", extra);
        assert_ne!(daemon.http_port, 0, "no http listening line");
        Gw {
            tmp,
            daemon,
            data,
            viewer,
            operator,
            admin,
        }
    }

    /// `METHOD /api/v1{path}` with `token` and an optional DICOM JSON body.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Resp {
        let b = body.map(|v| serde_json::to_vec(v).unwrap());
        send(
            self.daemon.http_port,
            method,
            &format!("/api/v1{path}"),
            token,
            b.as_deref().map(|b| ("application/dicom+json", b)),
        )
    }

    /// Like [`Gw::call`] with a raw body and content type.
    fn raw(&self, method: &str, path: &str, token: &str, ct: &str, body: &[u8]) -> Resp {
        send(
            self.daemon.http_port,
            method,
            &format!("/api/v1{path}"),
            Some(token),
            Some((ct, body)),
        )
    }

    fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, Some(token), None)
    }

    fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.call("POST", path, Some(token), Some(body))
    }

    fn put(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.call("PUT", path, Some(token), Some(body))
    }

    fn delete(&self, path: &str, token: &str) -> Resp {
        self.call("DELETE", path, Some(token), None)
    }

    /// The number of stored items.
    fn count(&self) -> u64 {
        self.get("/worklist", &self.viewer).ok(200)["total"]
            .as_u64()
            .unwrap()
    }

    /// The audit entries whose action starts with `worklist.`, as (action, actor, details).
    fn worklist_audit(&self) -> Vec<(String, String, Value)> {
        let v = self.get("/audit?limit=1000", &self.admin).ok(200);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"].as_str().unwrap_or("").starts_with("worklist."))
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["actor"].as_str().unwrap().to_owned(),
                    e["details"].clone(),
                )
            })
            .collect()
    }
}

/// A valid worklist item in DICOM JSON. `ids`: explicit Requested Procedure ID and Scheduled
/// Procedure Step ID (the order key with the accession number), or none (the store fills
/// them with the item id).
fn item(
    patient: &str,
    accession: &str,
    ids: Option<(&str, &str)>,
    modality: &str,
    date: &str,
) -> Value {
    let step = json!({
        "00080060": {"vr": "CS", "Value": [modality]},
        "00400001": {"vr": "AE", "Value": [format!("{modality}_ROOM1")]},
        "00400002": {"vr": "DA", "Value": [date]},
        "00400003": {"vr": "TM", "Value": ["093000"]},
        "00400007": {"vr": "LO", "Value": ["Chest"]}
    });
    let mut d = json!({
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": format!("{patient}^Test")}]},
        "00100020": {"vr": "LO", "Value": [patient]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00080050": {"vr": "SH", "Value": [accession]},
        "00321060": {"vr": "LO", "Value": ["CT chest"]},
        "00400100": {"vr": "SQ", "Value": [step]}
    });
    if let Some((rp, sps)) = ids {
        d["00401001"] = json!({"vr": "SH", "Value": [rp]});
        d["00400100"]["Value"][0]["00400009"] = json!({"vr": "SH", "Value": [sps]});
    }
    d
}

/// The step item of a returned dataset.
fn step(dataset: &Value) -> &Value {
    &dataset["00400100"]["Value"][0]
}

/// A string value of a returned dataset.
fn text<'a>(dataset: &'a Value, tag: &str) -> &'a str {
    dataset[tag]["Value"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no string {tag} in {dataset}"))
}

fn ids(page: &Value) -> Vec<u64> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn worklist_items_crud_roles_and_audit() {
    let mut gw = Gw::start(&[]);
    let port = gw.daemon.http_port;
    let one = item("P1", "ACC1", None, "CT", "20260115");

    // 401 without a token or with an unknown one, on reads and changes alike.
    for (method, path) in [
        ("GET", "/worklist"),
        ("POST", "/worklist"),
        ("GET", "/worklist/1"),
        ("PUT", "/worklist/1"),
        ("DELETE", "/worklist/1"),
        ("POST", "/worklist/1/cancel"),
        ("GET", "/mpps"),
        ("GET", "/mpps/1.2.3"),
    ] {
        let r = gw.call(method, path, None, Some(&one));
        r.err(401, &[]);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        gw.call(method, path, Some("dgw_0000"), Some(&one))
            .err(401, &["token"]);
    }
    // 403: a viewer may not change anything, whatever the body or the id.
    for (method, path) in [
        ("POST", "/worklist"),
        ("PUT", "/worklist/1"),
        ("DELETE", "/worklist/1"),
        ("POST", "/worklist/1/cancel"),
        ("POST", "/worklist/999/cancel"),
    ] {
        gw.call(method, path, Some(&gw.viewer), Some(&one))
            .err(403, &["operator"]);
    }
    assert_eq!(gw.count(), 0, "refused calls stored nothing");
    assert!(gw.worklist_audit().is_empty());

    // Create one (operator): 201, the item with its id and the defaults filled in.
    let created = gw.post("/worklist", &gw.operator, &one).ok(201);
    assert_eq!(created["id"], 1);
    assert_eq!(created["status"], "SCHEDULED");
    let ds = &created["dataset"];
    assert_eq!(text(ds, "00080050"), "ACC1");
    assert_eq!(ds["00100010"]["Value"][0]["Alphabetic"], "P1^Test", "{ds}");
    assert_eq!(
        text(ds, "00401001"),
        "1",
        "Requested Procedure ID defaults to the id"
    );
    assert_eq!(text(step(ds), "00400009"), "1", "SPS ID defaults to the id");
    assert_eq!(text(step(ds), "00400020"), "SCHEDULED");
    let study_uid = text(ds, "0020000D").to_owned();
    assert!(study_uid.starts_with("2.25."), "{study_uid}");

    // Create an array (admin: one role up), answered as {"items"}; application/json works too.
    let two = json!([
        item("P2", "ACC2", Some(("RP2", "SPS2")), "MR", "20260116"),
        item("P3", "ACC3", Some(("RP3", "SPS3")), "CT", "20260117"),
    ]);
    let r = gw.raw(
        "POST",
        "/worklist",
        &gw.admin,
        "application/json; charset=utf-8",
        two.to_string().as_bytes(),
    );
    let v = r.ok(201);
    assert_eq!(ids(&v), [2, 3]);
    assert_eq!(text(&v["items"][0]["dataset"], "00401001"), "RP2");
    assert_eq!(gw.count(), 3);

    // Read back (viewer), identical to what the create answered.
    assert_eq!(gw.get("/worklist/1", &gw.viewer).ok(200), created);
    gw.get("/worklist/999", &gw.viewer).err(404, &["999"]);
    gw.get("/worklist/abc", &gw.viewer)
        .err(400, &["path parameter id", "abc"]);
    gw.get("/worklist/0", &gw.viewer).err(400, &["id"]);
    gw.get("/worklist/1?x=1", &gw.viewer).err(400, &["x"]);

    // The same order again: 409 naming the existing item; nothing stored.
    gw.post(
        "/worklist",
        &gw.operator,
        &item("P2", "ACC2", Some(("RP2", "SPS2")), "MR", "20260116"),
    )
    .err(409, &["worklist item 2", "ACC2"]);
    // Also inside an array: the whole array is refused.
    gw.post(
        "/worklist",
        &gw.operator,
        &json!([
            item("P9", "ACC9", None, "CT", "20260120"),
            item("P3", "ACC3", Some(("RP3", "SPS3")), "CT", "20260117")
        ]),
    )
    .err(409, &["worklist item 3"]);
    assert_eq!(gw.count(), 3, "all or nothing");

    // Replace: same id, new name, Study Instance UID and status kept.
    let mut renamed = one.clone();
    renamed["00100010"]["Value"][0]["Alphabetic"] = json!("Renamed^Test");
    let put = gw.put("/worklist/1", &gw.operator, &renamed).ok(200);
    assert_eq!(put["id"], 1);
    assert_eq!(
        put["dataset"]["00100010"]["Value"][0]["Alphabetic"],
        "Renamed^Test"
    );
    assert_eq!(text(&put["dataset"], "0020000D"), study_uid);
    assert_eq!(put["status"], "SCHEDULED");
    assert_eq!(put["created_at_us"], created["created_at_us"]);
    assert_eq!(gw.get("/worklist/1", &gw.viewer).ok(200), put);
    gw.put("/worklist/999", &gw.operator, &renamed)
        .err(404, &["999"]);
    gw.put("/worklist/1", &gw.operator, &json!([renamed]))
        .err(400, &["not an array"]);
    let mut bad = renamed.clone();
    bad.as_object_mut().unwrap().remove("00100020");
    let v = gw
        .put("/worklist/1", &gw.operator, &bad)
        .err(400, &["PatientID (0010,0020)"]);
    assert_eq!(v["error"]["attribute"]["tag"], "00100020");
    // Onto another item's order key: 409.
    gw.put(
        "/worklist/1",
        &gw.operator,
        &item("P2", "ACC2", Some(("RP2", "SPS2")), "MR", "20260116"),
    )
    .err(409, &["worklist item 2"]);
    assert_eq!(
        gw.get("/worklist/1", &gw.viewer).ok(200),
        put,
        "refused replacements changed nothing"
    );

    // Cancel: CANCELED once; again is a 409 naming the state; unknown id 404.
    let c = gw
        .post("/worklist/2/cancel", &gw.operator, &json!({}))
        .ok(200);
    assert_eq!(c["status"], "CANCELED");
    assert_eq!(text(step(&c["dataset"]), "00400020"), "CANCELED");
    gw.post("/worklist/2/cancel", &gw.operator, &json!({}))
        .err(409, &["CANCELED"]);
    gw.post("/worklist/999/cancel", &gw.operator, &json!({}))
        .err(404, &["999"]);
    assert_eq!(
        gw.get("/worklist/2", &gw.viewer).ok(200)["status"],
        "CANCELED"
    );

    // Delete: the item as it was; then 404 on every verb.
    let d = gw.delete("/worklist/3", &gw.operator).ok(200);
    assert_eq!(d["id"], 3);
    gw.get("/worklist/3", &gw.viewer).err(404, &["3"]);
    gw.delete("/worklist/3", &gw.operator).err(404, &["3"]);
    gw.put(
        "/worklist/3",
        &gw.operator,
        &item("P3", "ACC3", None, "CT", "20260117"),
    )
    .err(404, &["3"]);
    assert_eq!(gw.count(), 2);
    // A deleted id is not reused.
    let again = gw
        .post(
            "/worklist",
            &gw.operator,
            &item("P4", "ACC4", None, "CT", "20260118"),
        )
        .ok(201);
    assert_eq!(again["id"], 4);

    // 405 names the allowed methods.
    let r = gw.call("DELETE", "/worklist", Some(&gw.admin), None);
    r.err(405, &["GET"]);
    assert_eq!(r.header("allow"), Some("GET, POST, HEAD"));
    let r = gw.call("GET", "/worklist/1/cancel", Some(&gw.admin), None);
    r.err(405, &["POST"]);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = gw.call("POST", "/mpps", Some(&gw.admin), Some(&one));
    assert_eq!(r.status, 405);
    // HEAD is GET without the body.
    let r = send(port, "HEAD", "/api/v1/worklist", Some(&gw.viewer), None);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    // Every change is in the audit log with who made it, and nothing else is.
    let log = gw.worklist_audit();
    let seen: Vec<(&str, &str)> = log
        .iter()
        .map(|(a, who, _)| (a.as_str(), who.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("worklist.create", "test-operator"),
            ("worklist.create", "test-admin"),
            ("worklist.update", "test-operator"),
            ("worklist.cancel", "test-operator"),
            ("worklist.delete", "test-operator"),
            ("worklist.create", "test-operator"),
        ]
    );
    let ids_of = |d: &Value| -> Vec<u64> {
        d["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids_of(&log[1].2), [2, 3]);
    assert_eq!(log[1].2["items"][0]["key"]["accession_number"], "ACC2");
    assert_eq!(log[2].2["id"], 1);
    assert_eq!(log[3].2["previous_status"], "SCHEDULED");
    assert_eq!(log[4].2["id"], 3);
    // The audit log records the change and its order key, not the patient.
    let whole = gw.get("/audit?limit=1000", &gw.admin).ok(200).to_string();
    assert!(!whole.contains("Renamed"), "patient data in the audit log");
    // Each entry went through the worklist database's audit outbox (written with the change),
    // which the daemon drained: nothing waits there, and the chain verifies.
    let v = gw.get("/audit/verify", &gw.admin).ok(200);
    assert_eq!(v["ok"], true, "{v}");
    gw.daemon.stop();
    let store = dicom_gw::worklist::WorklistStore::open_in(&gw.data).unwrap();
    assert_eq!(
        dicom_gw::audit::outbox::pending(store.database()).unwrap(),
        0
    );
}

#[test]
fn invalid_bodies_are_refused_naming_the_attribute() {
    let gw = Gw::start(&[]);
    let good = item("P1", "ACC1", None, "CT", "20260115");
    let post = |body: &Value| gw.post("/worklist", &gw.operator, body);

    // Not JSON, not a dataset, an empty array.
    gw.raw(
        "POST",
        "/worklist",
        &gw.operator,
        "application/dicom+json",
        b"{\"0010",
    )
    .err(400, &["not valid JSON", "line 1"]);
    for v in [json!("x"), json!(42), json!([1])] {
        post(&v).err(400, &["DICOM JSON dataset"]);
    }
    post(&json!([])).err(400, &["empty"]);

    // Each kind of mistake, named by keyword and tag (with the sequence path when nested).
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &[&str], &str)] = &[
        (
            "wrong VR",
            |d| d["00100010"]["vr"] = json!("LO"),
            &["PatientName (0010,0010)", "VR LO given", "PN"],
            "00100010",
        ),
        (
            "unknown VR",
            |d| d["00100020"]["vr"] = json!("XX"),
            &["PatientID (0010,0020)", "unknown VR \"XX\""],
            "00100020",
        ),
        (
            "bad date value in the step",
            |d| d["00400100"]["Value"][0]["00400002"]["Value"][0] = json!("2026-01-15"),
            &[
                "ScheduledProcedureStepSequence (0040,0100) item 1 > ScheduledProcedureStepStartDate (0040,0002)",
            ],
            "00400002",
        ),
        (
            "missing Patient ID",
            |d| {
                d.as_object_mut().unwrap().remove("00100020");
            },
            &["PatientID (0010,0020)", "missing"],
            "00100020",
        ),
        (
            "empty Patient's Name",
            |d| {
                d["00100010"].as_object_mut().unwrap().remove("Value");
            },
            &["PatientName (0010,0010)", "no value"],
            "00100010",
        ),
        (
            "missing Modality in the step",
            |d| {
                d["00400100"]["Value"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("00080060");
            },
            &["ScheduledProcedureStepSequence (0040,0100) item 1 > Modality (0008,0060)", "missing"],
            "00080060",
        ),
        (
            "missing step sequence",
            |d| {
                d.as_object_mut().unwrap().remove("00400100");
            },
            &["ScheduledProcedureStepSequence (0040,0100)", "missing"],
            "00400100",
        ),
        (
            "bad status",
            |d| d["00400100"]["Value"][0]["00400020"] = json!({"vr": "CS", "Value": ["PLANNED"]}),
            &["ScheduledProcedureStepStatus (0040,0020)", "PLANNED"],
            "00400020",
        ),
        (
            "keyword instead of a tag",
            |d| d["PatientSex"] = json!({"vr": "CS", "Value": ["F"]}),
            &["\"PatientSex\" is not a tag"],
            "",
        ),
        (
            "unknown member",
            |d| d["00100040"] = json!({"vr": "CS", "Value": ["F"], "value": 1}),
            &["PatientSex (0010,0040)"],
            "00100040",
        ),
    ];
    for (what, edit, mentions, tag) in cases {
        let mut d = good.clone();
        edit(&mut d);
        let v = post(&d).err(400, mentions);
        if !tag.is_empty() {
            assert_eq!(v["error"]["attribute"]["tag"], *tag, "{what}: {v}");
        }
        assert!(
            v["error"].get("index").is_none(),
            "{what}: not an array: {v}"
        );
        // In an array the message and error.index name the position too; nothing is stored.
        let v = post(&json!([good.clone(), good.clone(), d])).err(400, mentions);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("array index 2"),
            "{what}: {v}"
        );
        assert_eq!(v["error"]["index"], 2, "{what}: {v}");
    }
    // Rules that are about the dataset rather than one attribute.
    let mut no_order = good.clone();
    no_order.as_object_mut().unwrap().remove("00080050");
    post(&no_order).err(
        400,
        &[
            "AccessionNumber (0008,0050)",
            "RequestedProcedureID (0040,1001)",
        ],
    );
    let mut two_steps = good.clone();
    let s = step(&good).clone();
    two_steps["00400100"]["Value"] = json!([s.clone(), s]);
    post(&two_steps).err(
        400,
        &[
            "ScheduledProcedureStepSequence (0040,0100)",
            "exactly one item",
        ],
    );
    // Two items with the same order key in one array.
    let dup = item("P5", "ACC5", Some(("RP5", "SPS5")), "CT", "20260115");
    post(&json!([dup.clone(), good.clone(), dup]))
        .err(400, &["array index 2", "same order key as array index 0"]);

    // Transport: content type, size, query.
    gw.raw(
        "POST",
        "/worklist",
        &gw.operator,
        "text/plain",
        good.to_string().as_bytes(),
    )
    .err(415, &["text/plain", "application/dicom+json"]);
    // A body declared larger than 1 MiB is refused before it is read (the body is not sent:
    // a server answering early and closing would reset the connection under a writing
    // client, and the answer could be lost).
    oversized(gw.daemon.http_port, &gw.operator, (1 << 20) + 1).err(413, &["worklist import"]);
    gw.post("/worklist?upsert=1", &gw.operator, &good)
        .err(400, &["upsert"]);

    assert_eq!(gw.count(), 0, "nothing was stored by any refused request");
    assert!(gw.worklist_audit().is_empty());
    // And a good one still goes in.
    gw.post("/worklist", &gw.operator, &good).ok(201);
}

#[test]
fn list_filters_pagination_and_mpps() {
    let gw = Gw::start(&[]);
    let items = json!([
        item("P1", "ACC1", None, "CT", "20260110"),
        item("P2", "ACC2", None, "MR", "20260111"),
        item("P3", "ACC3", None, "CT", "20260112"),
        item("P4", "ACC4", None, "CT", "20260113"),
        item("P5", "ACC5", None, "US", "20260114"),
    ]);
    gw.post("/worklist", &gw.operator, &items).ok(201);
    gw.post("/worklist/3/cancel", &gw.operator, &json!({}))
        .ok(200);

    let page = |q: &str| gw.get(&format!("/worklist{q}"), &gw.viewer).ok(200);
    let all = page("");
    assert_eq!(ids(&all), [1, 2, 3, 4, 5], "finished items are listed too");
    assert_eq!(
        (
            all["total"].as_u64(),
            all["offset"].as_u64(),
            all["limit"].as_u64()
        ),
        (Some(5), Some(0), Some(100))
    );
    // Pages: consecutive, no overlap, the total on each.
    let p1 = page("?limit=2");
    let p2 = page("?limit=2&offset=2");
    let p3 = page("?limit=2&offset=4");
    assert_eq!(
        (ids(&p1), ids(&p2), ids(&p3)),
        (vec![1, 2], vec![3, 4], vec![5])
    );
    assert!([&p1, &p2, &p3].iter().all(|p| p["total"] == 5));
    assert!(ids(&page("?offset=10")).is_empty());
    // Filters, alone and combined.
    assert_eq!(ids(&page("?status=CANCELED")), [3]);
    assert_eq!(ids(&page("?status=scheduled")), [1, 2, 4, 5]);
    assert_eq!(ids(&page("?modality=CT")), [1, 3, 4]);
    assert_eq!(ids(&page("?modality=CT&status=SCHEDULED")), [1, 4]);
    assert_eq!(ids(&page("?station_ae=MR_ROOM1")), [2]);
    assert_eq!(ids(&page("?date=20260112")), [3]);
    assert_eq!(ids(&page("?date=20260111-20260113")), [2, 3, 4]);
    assert_eq!(ids(&page("?date=20260113-")), [4, 5]);
    assert_eq!(ids(&page("?date=-20260110")), [1]);
    assert_eq!(ids(&page("?patient_id=P4")), [4]);
    assert_eq!(ids(&page("?accession_number=ACC5")), [5]);
    assert_eq!(page("?modality=CT&limit=1&offset=1")["total"], 3);
    assert_eq!(ids(&page("?modality=CT&limit=1&offset=1")), [3]);
    // Bad parameters name themselves.
    let bad = |q: &str, mentions: &[&str]| {
        gw.get(&format!("/worklist{q}"), &gw.viewer)
            .err(400, mentions);
    };
    bad("?status=PLANNED", &["status", "PLANNED"]);
    bad("?date=2026-01-12", &["date"]);
    bad(
        "?date=20260113-20260111",
        &["date", "ends before it starts"],
    );
    bad("?limit=1001", &["limit"]);
    bad("?offset=-1", &["offset"]);
    bad("?patient=P1", &["patient", "patient_id"]);

    // MPPS: none received yet (the DIMSE tests create them), but the resources answer.
    let m = gw.get("/mpps", &gw.viewer).ok(200);
    assert_eq!(m["total"], 0);
    assert_eq!(m["items"], json!([]));
    gw.get("/mpps?status=completed&limit=5", &gw.viewer).ok(200);
    gw.get("/mpps?status=in_progress", &gw.viewer).ok(200);
    gw.get("/mpps?status=DONE", &gw.viewer)
        .err(400, &["status", "DONE"]);
    gw.get("/mpps?state=COMPLETED", &gw.viewer)
        .err(400, &["state"]);
    gw.get("/mpps/1.2.840.10008.9", &gw.viewer)
        .err(404, &["1.2.840.10008.9"]);
    gw.get("/mpps/not-a-uid", &gw.viewer)
        .err(400, &["path parameter uid"]);
    gw.get("/mpps/1.02.3", &gw.viewer).err(400, &["uid"]);
}

/// Output of a CLI run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `dicom-gw worklist import --data-dir DATA -` with `input` on standard input.
fn import_stdin(data: &Path, input: &str) -> Run {
    let mut child = Command::new(GW_BIN)
        .args([
            "worklist",
            "import",
            "--data-dir",
            data.to_str().unwrap(),
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let status = wait_timeout(&mut child, CLI_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("worklist import did not finish within {CLI_TIMEOUT:?}")
    });
    let read = |mut r: Box<dyn Read>| {
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        s
    };
    Run {
        code: status.code(),
        stdout: read(Box::new(out)),
        stderr: read(Box::new(err)),
    }
}

fn import_file(data: &Path, file: &Path) -> CliOut {
    gw_cli(&[
        "worklist",
        "import",
        "--data-dir",
        data.to_str().unwrap(),
        file.to_str().unwrap(),
    ])
}

/// The one JSON line an import prints.
fn summary(stdout: &str) -> Value {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one summary line: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

#[test]
fn cli_import_offline_and_through_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let export = tmp.path().join("ris.json");
    let ris = json!([
        item("P1", "ACC1", Some(("RP1", "SPS1")), "CT", "20260115"),
        item("P2", "ACC2", Some(("RP2", "SPS1")), "MR", "20260115"),
    ]);
    std::fs::write(&export, ris.to_string()).unwrap();

    // Offline, on a fresh data directory: created.
    let out = import_file(&data, &export).ok();
    let s = summary(&out.stdout);
    assert_eq!(
        (s["created"].as_u64(), s["updated"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    // The same export again: updated, not failed, not duplicated.
    let s = summary(&import_file(&data, &export).ok().stdout);
    assert_eq!(
        (s["created"].as_u64(), s["updated"].as_u64()),
        (Some(0), Some(2)),
        "{s}"
    );
    let listed = gw_cli(&["worklist", "list", "--data-dir", data.to_str().unwrap()])
        .ok()
        .json_lines();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], 1);
    assert_eq!(text(&listed[1]["dataset"], "00080050"), "ACC2");

    // Bad input: exit 2, the attribute and index named, nothing changed.
    let mut bad = ris.clone();
    bad[1]["00400100"]["Value"][0]["00400001"]["vr"] = json!("SH");
    std::fs::write(&export, bad.to_string()).unwrap();
    let out = import_file(&data, &export);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("array index 1")
            && out.stderr.contains("ScheduledStationAETitle (0040,0001)"),
        "{}",
        out.stderr
    );
    let out = import_file(&data, &tmp.path().join("missing.json"));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("missing.json"), "{}", out.stderr);
    let out = import_stdin(&data, "[{\"00100010\": ");
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("not valid JSON"), "{}", out.stderr);
    assert_eq!(
        gw_cli(&["worklist", "list", "--data-dir", data.to_str().unwrap()])
            .ok()
            .json_lines()
            .len(),
        2
    );

    // Offline imports are audited with the CLI user.
    let audit = gw_cli(&["audit", "list", "--data-dir", data.to_str().unwrap()])
        .ok()
        .json_lines();
    let imports: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "worklist.import")
        .collect();
    assert_eq!(imports.len(), 2, "{audit:?}");
    assert!(imports[0]["actor"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(imports[0]["details"]["created"], json!([1, 2]));
    assert_eq!(imports[1]["details"]["updated"], json!([1, 2]));

    // Through the running daemon (which holds worklist.redb, so the CLI must use the
    // socket): one order changed, one new; the API sees the result at once.
    let viewer = cli_token(GW_BIN, &data, "viewer");
    let admin = cli_token(GW_BIN, &data, "admin");
    let daemon = Daemon::start(GW_BIN, &data, "epoll", &[]);
    let port = daemon.http_port;
    let mut changed = ris[1].clone();
    changed["00400100"]["Value"][0]["00400002"]["Value"][0] = json!("20260120");
    let doc = json!([
        changed,
        item("P3", "ACC3", Some(("RP3", "SPS1")), "CT", "20260121")
    ]);
    let out = import_stdin(&data, &doc.to_string());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let s = summary(&out.stdout);
    assert_eq!(
        (s["created"].as_u64(), s["updated"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(
        s["items"],
        json!([{"id": 2, "result": "updated"}, {"id": 3, "result": "created"}])
    );
    let page = send(port, "GET", "/api/v1/worklist", Some(&viewer), None).ok(200);
    assert_eq!(ids(&page), [1, 2, 3]);
    let two = send(port, "GET", "/api/v1/worklist/2", Some(&viewer), None).ok(200);
    assert_eq!(text(step(&two["dataset"]), "00400002"), "20260120");
    // Bad input through the daemon: exit 2 naming the attribute.
    let out = import_stdin(&data, &bad.to_string());
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("ScheduledStationAETitle"),
        "{}",
        out.stderr
    );
    let listed = gw_cli(&["worklist", "list", "--data-dir", data.to_str().unwrap()])
        .ok()
        .json_lines();
    assert_eq!(listed.len(), 3);
    // The daemon audited the import with the CLI user.
    let log = send(port, "GET", "/api/v1/audit?limit=1000", Some(&admin), None).ok(200);
    let imports: Vec<&Value> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "worklist.import")
        .collect();
    assert_eq!(imports.len(), 3, "{log}");
    assert!(imports[2]["actor"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(imports[2]["details"]["updated"], json!([2]));
    assert_eq!(imports[2]["details"]["created"], json!([3]));
}

#[test]
fn a_store_only_process_says_it_runs_no_worklist() {
    let gw = Gw::start(&["--only", "store"]);
    let one = item("P1", "ACC1", None, "CT", "20260115");
    for (method, path, token) in [
        ("GET", "/worklist", &gw.viewer),
        ("POST", "/worklist", &gw.operator),
        ("GET", "/worklist/1", &gw.viewer),
        ("PUT", "/worklist/1", &gw.operator),
        ("DELETE", "/worklist/1", &gw.operator),
        ("POST", "/worklist/1/cancel", &gw.operator),
        ("GET", "/mpps", &gw.viewer),
        ("GET", "/mpps/1.2.3", &gw.viewer),
    ] {
        gw.call(method, path, Some(token), Some(&one))
            .err(404, &["worklist service does not run in this process"]);
    }
    // Roles are still checked first.
    gw.call("POST", "/worklist", Some(&gw.viewer), Some(&one))
        .err(403, &["operator"]);
    // The CLI import through this daemon is refused the same way.
    let file = gw.tmp.path().join("one.json");
    std::fs::write(&file, one.to_string()).unwrap();
    let out = import_file(&gw.data, &file);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("worklist service"), "{}", out.stderr);
}
