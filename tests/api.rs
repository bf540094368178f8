//! The admin API (issue 5) over real HTTP against the running daemon: every `/api/v1`
//! endpoint, every role boundary (401 without or with a bad token, 403 one role too low), bad
//! input answered 4xx naming the parameter or field, study search filters and pagination,
//! downloads byte for byte, and path traversal attempts that must never return a file from
//! outside the data directory.
//!
//! The client is a few lines of HTTP/1.1 over `TcpStream` (no HTTP dependency), which also
//! lets the traversal tests send request targets exactly as written (`..`, `%2e%2e`, encoded
//! slashes), with no client-side normalisation. The API does not depend on the DICOM I/O
//! backend, so the daemon runs with `epoll` only.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use util::*;

/// An empty JSON object as a request body.
const JSON_EMPTY: (&str, &[u8]) = ("application/json", b"{}");
/// How long forwarding outcomes (dead letters) may take to appear.
const SETTLE: Duration = Duration::from_secs(20);

impl Resp {
    /// Asserts an error answer: `status`, the `{"error": {"code", "message"}}` shape, and a
    /// message mentioning `mentions` (case-insensitive).
    #[track_caller]
    fn err(&self, status: u16, mentions: &str) -> Value {
        let v = self.ok(status);
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: error body without error.code: {v}", self.what));
        assert!(!code.is_empty(), "{}: empty error code: {v}", self.what);
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: error body without error.message: {v}", self.what));
        assert!(
            msg.to_lowercase().contains(&mentions.to_lowercase()),
            "{}: the message should mention {mentions:?}: {msg}",
            self.what
        );
        v
    }
}

/// The daemon under test with tokens of each role and a few stored objects.
struct Gw {
    _tmp: tempfile::TempDir,
    daemon: Daemon,
    data: PathBuf,
    viewer: String,
    operator: String,
    admin: String,
    /// Stored objects: see [`objects`].
    objs: Vec<ObjSpec>,
}

/// Five objects in three studies:
/// - 0, 1: DOE^JOHN (PID-A), study A, one CT series (instances 1 and 2), 20240115, ACC-A;
/// - 2: study A too, an MR series;
/// - 3: SMITH^JANE (PID-B), study B, MR, 20230601, ACC-B;
/// - 4: doe^jane (PID-C), study C, CT, 20240301, ACC-C.
fn objects() -> Vec<ObjSpec> {
    // Studies A and B are the retrieve tests' corpus, with accession numbers.
    let mut objs = two_studies();
    for a in &mut objs[..3] {
        a.accession_number = "ACC-A".into();
    }
    objs[3].accession_number = "ACC-B".into();
    let mut c = ObjSpec::new(4).patient("doe^jane", "PID-C").modality("CT");
    c.accession_number = "ACC-C".into();
    c.study_date = "20240301".into();
    objs.push(c);
    objs
}

impl Gw {
    /// Tokens first (the CLI opens the database, which the daemon then holds), then the
    /// daemon with two unreachable destinations — `pacs` dead-letters at the first failure,
    /// `archive` keeps retrying — and a route sending everything to both; then the objects.
    fn start() -> Gw {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let viewer = cli_token(GW_BIN, &data, "viewer");
        let operator = cli_token(GW_BIN, &data, "operator");
        let admin = cli_token(GW_BIN, &data, "admin");
        // Ports nothing listens on: connections are refused at once.
        let toml = format!(
            "{}{}{}",
            dest_block("pacs", free_port(), "max_attempts = 1"),
            dest_block(
                "archive",
                free_port(),
                "max_attempts = 100\nretry_initial_seconds = 600\nretry_max_seconds = 600"
            ),
            route_block("all", "", &["pacs", "archive"])
        );
        let cfg = write_gw_config(tmp.path(), &toml);
        let daemon = Daemon::start(GW_BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
        assert_ne!(daemon.http_port, 0, "no http listening line");
        let objs = objects();
        let files: Vec<PathBuf> = objs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let f = tmp.path().join(format!("in{i}.dcm"));
                gen_part10(&f, s).unwrap();
                f
            })
            .collect();
        storescu(daemon.port, &files, &[]).assert_all_ok(&files);
        Gw {
            _tmp: tmp,
            daemon,
            data,
            viewer,
            operator,
            admin,
            objs,
        }
    }

    fn http_port(&self) -> u16 {
        self.daemon.http_port
    }

    /// `METHOD /api/v1{path}` with `token` and an optional JSON body.
    fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
        let b = body.map(|v| serde_json::to_vec(v).unwrap());
        request(
            self.http_port(),
            method,
            &format!("/api/v1{path}"),
            Some(token),
            b.as_deref().map(|b| ("application/json", b)),
        )
    }

    /// Like [`Gw::call`] with a raw body (bad JSON).
    fn call_raw(&self, method: &str, path: &str, token: &str, body: &[u8]) -> Resp {
        request(
            self.http_port(),
            method,
            &format!("/api/v1{path}"),
            Some(token),
            Some(("application/json", body)),
        )
    }

    fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, token, None)
    }

    fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.call("POST", path, token, Some(body))
    }

    fn put(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.call("PUT", path, token, Some(body))
    }

    /// The audit log's API entries as (action, actor), in order (the CLI's, e.g. creating
    /// the test tokens, are left out).
    fn audit_actions(&self) -> Vec<(String, String)> {
        let v = self.get("/audit?limit=1000", &self.admin).ok(200);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !e["actor"].as_str().unwrap_or("").starts_with("cli"))
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["actor"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The audit entries with `action`.
    fn audited(&self, action: &str) -> Vec<Value> {
        let v = self.get("/audit?limit=1000", &self.admin).ok(200);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .cloned()
            .collect()
    }
}

fn uids(v: &Value, key: &str) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {v}"))
        .iter()
        .map(|x| x[key].as_str().unwrap().to_owned())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn every_role_boundary_is_enforced() {
    let gw = Gw::start();
    let port = gw.http_port();

    // 401: no token, a malformed header, an unknown token — on reads and on changes.
    for (method, path) in [
        ("GET", "/api/v1/studies"),
        ("GET", "/api/v1/stats"),
        ("POST", "/api/v1/queue/retry"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/nonexistent"),
    ] {
        let r = request(port, method, path, None, Some(JSON_EMPTY));
        r.err(401, "authorization");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer"),
            "{method} {path}"
        );
        let r = request(port, method, path, Some("dgw_0000"), Some(JSON_EMPTY));
        r.err(401, "token");
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 401"), "Basic auth: {raw}");
    }

    // 403: a viewer on operator calls, an operator on admin calls. The role is checked before
    // the body or the resource, so even nonsense gets 403.
    let viewer_denied: &[(&str, &str, Value)] = &[
        ("POST", "/queue/retry", json!({ "destination": "pacs" })),
        (
            "POST",
            "/queue/replay",
            json!({ "destination": "pacs", "study": "1.2" }),
        ),
        ("POST", "/destinations/pacs/pause", json!({})),
        ("POST", "/destinations/pacs/resume", json!({})),
        ("POST", "/destinations/nonexistent/pause", json!({})),
    ];
    let operator_denied: &[(&str, &str, Value)] = &[
        ("POST", "/destinations", json!({ "name": "x" })),
        ("PUT", "/destinations/pacs", json!({})),
        ("DELETE", "/destinations/pacs", json!({})),
        ("PUT", "/routes", json!([])),
        ("GET", "/tokens", json!({})),
        ("POST", "/tokens", json!({ "role": "admin", "name": "x" })),
        ("DELETE", "/tokens/00000000", json!({})),
        ("GET", "/users", json!({})),
        ("POST", "/users", json!({})),
        ("GET", "/users/x", json!({})),
        ("PATCH", "/users/x", json!({})),
        ("DELETE", "/users/x", json!({})),
        ("GET", "/audit", json!({})),
    ];
    for (m, p, b) in viewer_denied {
        gw.call(m, p, &gw.viewer, Some(b)).err(403, "operator");
    }
    for (m, p, b) in operator_denied {
        gw.call(m, p, &gw.operator, Some(b)).err(403, "admin");
        gw.call(m, p, &gw.viewer, Some(b)).err(403, "admin");
    }
    // Nothing was changed by the refused calls.
    let pacs = gw.get("/destinations/pacs", &gw.viewer).ok(200);
    assert_eq!(pacs["paused"], false);
    assert!(gw.audit_actions().is_empty(), "{:?}", gw.audit_actions());
    // One role up is allowed.
    gw.post("/destinations/archive/pause", &gw.operator, &json!({}))
        .ok(200);
    gw.post("/destinations/archive/resume", &gw.admin, &json!({}))
        .ok(200);
    gw.get("/tokens", &gw.admin).ok(200);

    // Who am I.
    let me = gw.get("/auth/me", &gw.operator).ok(200);
    assert_eq!(
        (me["role"].as_str(), me["name"].as_str()),
        (Some("operator"), Some("test-operator"))
    );

    // Unknown path: 404; known path, wrong method: 405 naming the allowed ones.
    gw.get("/nonexistent", &gw.viewer)
        .err(404, "/api/v1/nonexistent");
    gw.get("", &gw.viewer).err(404, "no such resource");
    gw.get("/studies/", &gw.viewer).err(404, "no such resource");
    let r = gw.call("DELETE", "/studies", &gw.admin, None);
    r.err(405, "GET");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = gw.call("POST", "/destinations/pacs", &gw.admin, Some(&json!({})));
    r.err(405, "PUT");
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE, HEAD"));
    let r = request(port, "GET", "/api/v1/auth/login", None, None);
    r.err(405, "POST");
    assert_eq!(r.header("allow"), Some("POST"));
    // HEAD is GET without the body.
    let r = request(port, "HEAD", "/api/v1/stats", Some(&gw.viewer), None);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // The OpenAPI document needs no token and lists the resources.
    let doc = request(port, "GET", "/api/v1/openapi.json", None, None).ok(200);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/studies"]["get"].is_object());
}

#[test]
fn tokens_users_login_and_audit() {
    let gw = Gw::start();
    let port = gw.http_port();

    // Tokens: create (shown once), use, list (never the token), revoke.
    let t = gw
        .post(
            "/tokens",
            &gw.admin,
            &json!({ "role": "viewer", "name": "dashboard", "expires_in_seconds": 3600 }),
        )
        .ok(201);
    let token = t["token"].as_str().unwrap().to_owned();
    let id = t["id"].as_str().unwrap().to_owned();
    assert!(
        token.starts_with("dgw_") && t["expires_at_us"].as_u64().unwrap() > 0,
        "{t}"
    );
    gw.get("/studies", &token).ok(200);
    gw.post("/queue/retry", &token, &json!({ "destination": "pacs" }))
        .err(403, "operator");
    let list = gw.get("/tokens", &gw.admin).ok(200);
    assert_eq!(list["total"], 4, "{list}");
    assert!(
        !list.to_string().contains(&token),
        "a token list shows a token"
    );
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == id.as_str()));
    // Bad bodies name the field.
    gw.post(
        "/tokens",
        &gw.admin,
        &json!({ "role": "root", "name": "x" }),
    )
    .err(400, "root");
    gw.post("/tokens", &gw.admin, &json!({ "name": "x" }))
        .err(400, "role");
    gw.post(
        "/tokens",
        &gw.admin,
        &json!({ "role": "viewer", "name": "" }),
    )
    .err(400, "name");
    gw.post(
        "/tokens",
        &gw.admin,
        &json!({ "role": "viewer", "name": "x", "scope": 1 }),
    )
    .err(400, "scope");
    gw.call_raw("POST", "/tokens", &gw.admin, b"{\"role\": ")
        .err(400, "json");
    gw.call("DELETE", "/tokens/not-hex!", &gw.admin, None)
        .err(400, "id");
    gw.call("DELETE", "/tokens/abcdef01", &gw.admin, None)
        .err(404, "abcdef01");
    gw.call("DELETE", &format!("/tokens/{id}"), &gw.admin, None)
        .ok(200);
    gw.get("/studies", &token).err(401, "token");

    // Users: add, show, log in (same 401 for every failure), change, remove.
    gw.post(
        "/users",
        &gw.admin,
        &json!({ "name": "alice", "role": "operator", "password": "correct horse battery" }),
    )
    .ok(201);
    gw.post(
        "/users",
        &gw.admin,
        &json!({ "name": "alice", "role": "viewer", "password": "another long password" }),
    )
    .err(409, "alice");
    gw.post(
        "/users",
        &gw.admin,
        &json!({ "name": "bob", "role": "viewer", "password": "short" }),
    )
    .err(400, "password");
    gw.post(
        "/users",
        &gw.admin,
        &json!({ "name": "bob", "role": "viewer" }),
    )
    .err(400, "password");
    let u = gw.get("/users/alice", &gw.admin).ok(200);
    assert_eq!(u["role"], "operator");
    assert!(!u.to_string().contains("argon2"), "{u}");
    assert_eq!(gw.get("/users", &gw.admin).ok(200)["total"], 1);
    gw.get("/users/nobody", &gw.admin).err(404, "nobody");

    let login = |name: &str, pw: &str| {
        let b = serde_json::to_vec(&json!({ "name": name, "password": pw })).unwrap();
        request(
            port,
            "POST",
            "/api/v1/auth/login",
            None,
            Some(("application/json", &b)),
        )
    };
    let l = login("alice", "correct horse battery").ok(200);
    let session = l["token"].as_str().unwrap().to_owned();
    assert_eq!(l["role"], "operator");
    assert!(l["expires_at_us"].as_u64().unwrap() > 0);
    let me = gw.get("/auth/me", &session).ok(200);
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("alice"), Some("operator"))
    );
    gw.post("/destinations/archive/pause", &session, &json!({}))
        .ok(200);
    let wrong = login("alice", "wrong password!!").err(401, "unknown user or wrong password");
    let unknown =
        login("mallory", "correct horse battery").err(401, "unknown user or wrong password");
    assert_eq!(
        wrong, unknown,
        "failed logins must not say which part was wrong"
    );
    request(
        port,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(("application/json", b"not json")),
    )
    .err(400, "json");
    request(
        port,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(("application/json", b"{\"name\": \"alice\"}")),
    )
    .err(400, "password");

    gw.call("PATCH", "/users/alice", &gw.admin, Some(&json!({})))
        .err(400, "nothing to change");
    gw.call(
        "PATCH",
        "/users/alice",
        &gw.admin,
        Some(&json!({ "role": "boss" })),
    )
    .err(400, "boss");
    gw.call(
        "PATCH",
        "/users/alice",
        &gw.admin,
        Some(&json!({ "password": "short" })),
    )
    .err(400, "password");
    let u = gw
        .call(
            "PATCH",
            "/users/alice",
            &gw.admin,
            Some(&json!({ "role": "viewer" })),
        )
        .ok(200);
    assert_eq!(u["role"], "viewer");
    // A role change ends the sessions that carried the old role.
    gw.get("/auth/me", &session).err(401, "token");
    gw.call(
        "PATCH",
        "/users/nobody",
        &gw.admin,
        Some(&json!({ "disabled": true })),
    )
    .err(404, "nobody");
    gw.call("DELETE", "/users/alice", &gw.admin, None).ok(200);
    gw.call("DELETE", "/users/alice", &gw.admin, None)
        .err(404, "alice");
    login("alice", "correct horse battery").err(401, "unknown user");

    // Every change is in the audit log, with who made it; no secrets.
    let actions = gw.audit_actions();
    let expect = [
        ("token.create", "test-admin"),
        ("token.revoke", "test-admin"),
        ("user.add", "test-admin"),
        ("auth.login", "alice"),
        ("queue.pause", "alice"),
        ("auth.login_failed", "alice"),
        ("auth.login_failed", "mallory"),
        ("user.update", "test-admin"),
        ("user.remove", "test-admin"),
        ("auth.login_failed", "alice"),
    ];
    let got: Vec<(&str, &str)> = actions
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(got, expect, "audit log");
    let log = gw.get("/audit", &gw.admin).ok(200);
    let text = log.to_string();
    assert!(
        !text.contains(&token) && !text.contains(&session),
        "a token is in the audit log"
    );
    assert!(
        !text.contains("correct horse"),
        "a password is in the audit log"
    );
    let created = gw.audited("token.create");
    let first = created.last().unwrap();
    assert_eq!(first["details"]["id"], id.as_str());
    assert!(
        first["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{first}"
    );
    let total = log["total"].as_u64().unwrap();
    let page = gw
        .get(&format!("/audit?offset={}&limit=1", total - 1), &gw.admin)
        .ok(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    // The last entry: the failed login of the removed user.
    assert_eq!(page["items"][0]["action"], "auth.login_failed");
    assert_eq!(page["items"][0]["seq"], total);
}

#[test]
fn study_search_filters_and_pagination() {
    let gw = Gw::start();
    let v = &gw.viewer;
    let o = &gw.objs;
    let (a, b, c) = (
        o[0].study_instance_uid.clone(),
        o[3].study_instance_uid.clone(),
        o[4].study_instance_uid.clone(),
    );
    let search = |q: &str| {
        uids(
            &gw.get(&format!("/studies{q}"), v).ok(200),
            "study_instance_uid",
        )
    };

    let all = gw.get("/studies", v).ok(200);
    assert_eq!(
        (
            all["total"].as_u64(),
            all["offset"].as_u64(),
            all["limit"].as_u64()
        ),
        (Some(3), Some(0), Some(100))
    );
    assert_eq!(
        sorted(uids(&all, "study_instance_uid")),
        sorted(vec![a.clone(), b.clone(), c.clone()])
    );
    let sa = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["study_instance_uid"] == a.as_str())
        .unwrap();
    assert_eq!(
        (sa["num_series"].as_u64(), sa["num_instances"].as_u64()),
        (Some(2), Some(3)),
        "{sa}"
    );
    assert_eq!(sa["modalities_in_study"], json!(["CT", "MR"]));

    // Filters.
    assert_eq!(search("?patient_id=PID-B"), vec![b.clone()]);
    assert_eq!(
        search("?patient_id=pid-b"),
        Vec::<String>::new(),
        "patient_id is exact"
    );
    assert_eq!(
        sorted(search("?patient_name=doe*")),
        sorted(vec![a.clone(), c.clone()])
    );
    assert_eq!(search("?patient_name=DOE%5EJ*N"), vec![a.clone()]);
    assert_eq!(
        sorted(search("?patient_name=*jane")),
        sorted(vec![b.clone(), c.clone()])
    );
    assert_eq!(
        search("?patient_name=doe"),
        Vec::<String>::new(),
        "no wildcard: whole name"
    );
    assert_eq!(search("?study_date=20240115"), vec![a.clone()]);
    assert_eq!(
        sorted(search("?study_date=20240101-")),
        sorted(vec![a.clone(), c.clone()])
    );
    assert_eq!(search("?study_date=-20231231"), vec![b.clone()]);
    assert_eq!(
        sorted(search("?study_date=20230601-20240115")),
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(search("?accession_number=ACC-C"), vec![c.clone()]);
    assert_eq!(
        sorted(search("?modality=MR")),
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(
        sorted(search("?modality=ct")),
        sorted(vec![a.clone(), c.clone()])
    );
    assert_eq!(search("?modality=CT&patient_name=*JANE"), vec![c.clone()]);
    assert_eq!(search("?modality=US"), Vec::<String>::new());
    let none = gw.get("/studies?patient_id=nobody", v).ok(200);
    assert_eq!(
        (
            none["total"].as_u64(),
            none["items"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );

    // Pagination: pages are disjoint, stable and cover everything.
    let mut seen = Vec::new();
    for off in 0..3 {
        let p = gw.get(&format!("/studies?offset={off}&limit=1"), v).ok(200);
        assert_eq!(
            (
                p["total"].as_u64(),
                p["offset"].as_u64(),
                p["limit"].as_u64()
            ),
            (Some(3), Some(off), Some(1))
        );
        seen.extend(uids(&p, "study_instance_uid"));
    }
    assert_eq!(seen, uids(&all, "study_instance_uid"));
    let p = gw.get("/studies?offset=2&limit=5", v).ok(200);
    assert_eq!(uids(&p, "study_instance_uid").len(), 1);
    let p = gw.get("/studies?offset=99", v).ok(200);
    assert_eq!(
        (p["total"].as_u64(), p["items"].as_array().map(Vec::len)),
        (Some(3), Some(0))
    );
    let p = gw
        .get("/studies?patient_name=doe*&limit=1&offset=1", v)
        .ok(200);
    assert_eq!(p["total"], 2);
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
    gw.get("/studies?limit=1000", v).ok(200);

    // Bad parameters name themselves.
    gw.get("/studies?limit=1001", v).err(400, "limit");
    gw.get("/studies?limit=ten", v).err(400, "limit");
    gw.get("/studies?offset=-1", v).err(400, "offset");
    gw.get("/studies?study_date=2024-01-15", v)
        .err(400, "study_date");
    gw.get("/studies?study_date=20241301", v)
        .err(400, "study_date");
    gw.get("/studies?study_date=20240201-20240101", v)
        .err(400, "study_date");
    gw.get("/studies?patient=DOE", v).err(400, "patient");
    gw.get("/studies?modality=CT&modality=MR", v)
        .err(400, "modality");
    gw.get("/studies?patient_name=%zz", v)
        .err(400, "patient_name");

    // One study, its series, their instances, one instance.
    let s = gw.get(&format!("/studies/{a}"), v).ok(200);
    assert_eq!(
        (s["patient_name"].as_str(), s["accession_number"].as_str()),
        (Some("DOE^JOHN"), Some("ACC-A"))
    );
    assert_eq!(s["patient"]["patient_id"], "PID-A");
    gw.get("/studies/1.2.3.999", v).err(404, "1.2.3.999");
    gw.get("/studies/1.2.abc", v).err(400, "study_uid");
    let series = gw.get(&format!("/studies/{a}/series"), v).ok(200);
    assert_eq!(series["total"], 2);
    assert_eq!(
        uids(&series, "series_instance_uid"),
        vec![
            o[0].series_instance_uid.clone(),
            o[2].series_instance_uid.clone()
        ],
        "by series number"
    );
    assert_eq!(series["items"][1]["modality"], "MR");
    let p = gw
        .get(&format!("/studies/{a}/series?offset=1&limit=1"), v)
        .ok(200);
    assert_eq!(
        uids(&p, "series_instance_uid"),
        vec![o[2].series_instance_uid.clone()]
    );
    gw.get("/studies/1.2.3.999/series", v).err(404, "1.2.3.999");
    let ct = &o[0].series_instance_uid;
    let inst = gw
        .get(&format!("/studies/{a}/series/{ct}/instances"), v)
        .ok(200);
    assert_eq!(
        uids(&inst, "sop_instance_uid"),
        vec![o[0].sop_instance_uid.clone(), o[1].sop_instance_uid.clone()],
        "by instance number"
    );
    let p = gw
        .get(
            &format!("/studies/{a}/series/{ct}/instances?offset=1&limit=1"),
            v,
        )
        .ok(200);
    assert_eq!(
        (p["total"].as_u64(), uids(&p, "sop_instance_uid")),
        (Some(2), vec![o[1].sop_instance_uid.clone()])
    );
    gw.get(&format!("/studies/{b}/series/{ct}/instances"), v)
        .err(404, "no series");
    gw.get(&format!("/studies/{a}/series/x/instances"), v)
        .err(400, "series_uid");
    let i = gw
        .get(&format!("/instances/{}", o[3].sop_instance_uid), v)
        .ok(200);
    assert_eq!(i["study_instance_uid"], b.as_str());
    assert_eq!(i["transfer_syntax_uid"], EXPLICIT_LE);
    gw.get("/instances/1.2.3.999", v).err(404, "1.2.3.999");
    gw.get("/instances/01.2", v).err(400, "sop_uid");

    // Stats count what is stored.
    let st = gw.get("/stats", v).ok(200);
    assert_eq!(
        st["index"],
        json!({ "patients": 3, "studies": 3, "series": 4, "instances": 5 })
    );
    assert_eq!(st["io_backend"], "epoll");
    assert!(
        st["uptime_seconds"].is_u64() && st["started_at_us"].as_u64().unwrap() > 0,
        "{st}"
    );
    assert_eq!(st["associations_active"], 0);
    // Counters since start: the five objects stored by C-STORE, all answered with success.
    assert_eq!(st["since_start"]["instances_received"], 5, "{st}");
    assert_eq!(st["since_start"]["cstore_success"], 5, "{st}");
    assert_eq!(st["since_start"]["cstore_failure"], 0, "{st}");
    assert!(
        st["since_start"]["dataset_bytes_received"]
            .as_u64()
            .unwrap()
            > 0,
        "{st}"
    );
    assert_eq!(st["queue"]["destinations"], 2);
    // The disk against its high-water mark (the default, 95 %), for the console's gauge.
    assert_eq!(st["disk"]["high_water_percent"], 95, "{st}");
    assert_eq!(st["disk"]["accepting"], true, "{st}");
    gw.get("/stats?x=1", v).err(400, "x");
}

#[test]
fn downloads_are_the_stored_bytes_and_nothing_else() {
    let gw = Gw::start();
    let port = gw.http_port();
    let v = &gw.viewer;
    for s in &gw.objs {
        let stored = std::fs::read(s.settled_path(&gw.data)).unwrap();
        let r = gw.get(&format!("/instances/{}/file", s.sop_instance_uid), v);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/dicom"));
        assert_eq!(
            r.header("content-length"),
            Some(stored.len().to_string().as_str())
        );
        assert!(
            r.body == stored,
            "downloaded bytes differ from the stored file of {}",
            s.sop_instance_uid
        );
    }
    // A bigger object crosses several chunks.
    let big = ObjSpec::new(50).pixel_bytes(3 << 20);
    let f = gw._tmp.path().join("big.dcm");
    gen_part10(&f, &big).unwrap();
    storescu(gw.daemon.port, &[&f], &[]).assert_all_ok(&[&f]);
    let r = gw.get(&format!("/instances/{}/file", big.sop_instance_uid), v);
    let stored = std::fs::read(big.settled_path(&gw.data)).unwrap();
    assert!(
        r.status == 200 && r.body == stored,
        "big download: {} {} bytes",
        r.status,
        r.body.len()
    );
    gw.get(
        &format!("/instances/{}/file", big.sop_instance_uid),
        "dgw_bad",
    )
    .err(401, "token");
    gw.get("/instances/1.2.3.999/file", v).err(404, "1.2.3.999");
    gw.get(&format!("/instances/{}/file?x=1", big.sop_instance_uid), v)
        .err(400, "x");
    // A file that vanished from under the index: 404, not 500.
    let gone = &gw.objs[4];
    std::fs::remove_file(gone.settled_path(&gw.data)).unwrap();
    gw.get(&format!("/instances/{}/file", gone.sop_instance_uid), v)
        .err(404, "not available");

    // Path traversal: files outside the data directory (and the database inside it) must
    // never come back, whatever the encoding.
    let marker = "TOP-SECRET-MARKER-OUTSIDE-DATA-DIR";
    let secret = gw._tmp.path().join("secret.dcm");
    std::fs::write(&secret, marker).unwrap();
    std::fs::write(gw.data.join("objects").join("secret.dcm"), marker).unwrap();
    let secret_abs = secret.to_str().unwrap().to_owned();
    let enc_abs = secret_abs.replace('/', "%2F");
    let long_uid = format!("1.{}", "2".repeat(70));
    let a = &gw.objs[0];
    let targets = [
        "/api/v1/instances/../../secret/file".to_owned(),
        "/api/v1/instances/../secret.dcm/file".to_owned(),
        "/api/v1/instances/%2e%2e/file".to_owned(),
        "/api/v1/instances/%2e%2e%2f%2e%2e%2fsecret/file".to_owned(),
        "/api/v1/instances/..%2F..%2Fsecret/file".to_owned(),
        "/api/v1/instances/..%252F..%252Fsecret/file".to_owned(),
        "/api/v1/instances/secret/file".to_owned(),
        "/api/v1/instances/secret.dcm/file".to_owned(),
        format!("/api/v1/instances/{enc_abs}/file"),
        format!("/api/v1/instances/{secret_abs}/file"),
        "/api/v1/instances/%2Fetc%2Fpasswd/file".to_owned(),
        "/api/v1/instances//etc/passwd/file".to_owned(),
        "/api/v1/instances/..%5C..%5Csecret/file".to_owned(),
        "/api/v1/instances/1.2.3%00/file".to_owned(),
        "/api/v1/instances/1.2.3%2F..%2F..%2Fgateway.redb/file".to_owned(),
        "/api/v1/instances/gateway.redb/file".to_owned(),
        format!("/api/v1/instances/{long_uid}/file"),
        format!(
            "/api/v1/instances/{}/../../../secret/file",
            a.sop_instance_uid
        ),
        format!(
            "/api/v1/instances/{}%2F..%2F..%2Fsecret/file",
            a.sop_instance_uid
        ),
        format!(
            "/api/v1/studies/{}/series/..%2F..%2F..%2Fsecret/instances",
            a.study_instance_uid
        ),
        "/api/v1/../../secret".to_owned(),
        "/api/v1/instances/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd/file".to_owned(),
    ];
    for t in &targets {
        let r = request(port, "GET", t, Some(v), None);
        assert!(
            r.status == 400 || r.status == 404,
            "{t}: expected 400 or 404, got {}: {}",
            r.status,
            r.text()
        );
        let body = r.text();
        assert!(
            !body.contains(marker) && !body.contains("root:") && !r.body.starts_with(b"redb"),
            "{t}: a file from outside the stored objects came back: {body}"
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{t}"
        );
        if r.status == 400 {
            r.err(400, "path parameter");
        }
    }
}

/// Waits until the queue shows `n` dead jobs for `dest`.
fn wait_dead(gw: &Gw, dest: &str, n: u64) -> Value {
    wait_for(&format!("{n} dead jobs for {dest}"), SETTLE, || {
        let q = gw.get(&format!("/destinations/{dest}"), &gw.viewer).ok(200);
        if q["queue"]["dead"].as_u64() == Some(n) {
            Ok(q)
        } else {
            Err(q.to_string())
        }
    })
}

#[test]
fn destinations_queue_and_operator_actions() {
    let gw = Gw::start();
    let (v, op) = (&gw.viewer, &gw.operator);
    let n = gw.objs.len() as u64;

    // Destinations: settings, state, queue counts.
    let pacs = wait_dead(&gw, "pacs", n);
    assert_eq!(pacs["name"], "pacs");
    assert_eq!(pacs["ae_title"], "PACS");
    assert_eq!(pacs["host"], "127.0.0.1");
    assert_eq!(pacs["max_attempts"], 1);
    assert_eq!(pacs["paused"], false);
    assert!(pacs.get("tls").is_none(), "{pacs}");
    let all = gw.get("/destinations", v).ok(200);
    assert_eq!(uids(&all, "name"), vec!["archive", "pacs"]);
    assert_eq!(all["total"], 2);
    let p = gw.get("/destinations?offset=1&limit=1", v).ok(200);
    assert_eq!(uids(&p, "name"), vec!["pacs"]);
    gw.get("/destinations/nope", v).err(404, "nope");
    let routes = gw.get("/routes", v).ok(200);
    assert_eq!(routes["total"], 1);
    assert_eq!(routes["items"][0]["name"], "all");
    assert_eq!(
        routes["items"][0]["destinations"],
        json!(["pacs", "archive"])
    );

    // Queue counts and jobs.
    let q = gw.get("/queue", v).ok(200);
    assert_eq!(uids(&q, "destination"), vec!["archive", "pacs"]);
    assert_eq!(q["totals"]["dead"], n);
    let archive = &q["items"][0];
    assert_eq!(
        archive["pending"].as_u64().unwrap()
            + archive["retry"].as_u64().unwrap()
            + archive["in_flight"].as_u64().unwrap(),
        n,
        "{q}"
    );
    let dead = gw.get("/queue/jobs?destination=pacs&state=dead", v).ok(200);
    assert_eq!(dead["total"], n);
    assert_eq!(
        sorted(uids(&dead, "sop_instance_uid")),
        sorted(gw.objs.iter().map(|s| s.sop_instance_uid.clone()).collect())
    );
    assert!(dead["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["state"] == "dead" && j["destination"] == "pacs"));
    let page = gw
        .get(
            "/queue/jobs?destination=pacs&state=dead&offset=1&limit=2",
            v,
        )
        .ok(200);
    assert_eq!(
        uids(&page, "sop_instance_uid"),
        uids(&dead, "sop_instance_uid")[1..3].to_vec()
    );
    let everything = gw.get("/queue/jobs", v).ok(200);
    assert_eq!(everything["total"], 2 * n);
    gw.get("/queue/jobs?state=lost", v).err(400, "state");
    gw.get("/queue/jobs?destination=nope", v)
        .err(400, "destination");
    gw.get("/queue/jobs?limit=5000", v).err(400, "limit");

    // Retry: body errors name the field; unknown destination or job is 404.
    gw.call_raw("POST", "/queue/retry", op, b"{not json")
        .err(400, "json");
    gw.call_raw("POST", "/queue/retry", op, b"")
        .err(400, "json");
    gw.post("/queue/retry", op, &json!({}))
        .err(400, "destination");
    gw.post("/queue/retry", op, &json!({ "destination": 7 }))
        .err(400, "destination");
    gw.post(
        "/queue/retry",
        op,
        &json!({ "destination": "pacs", "jobs": 1 }),
    )
    .err(400, "jobs");
    gw.post(
        "/queue/retry",
        op,
        &json!({ "destination": "pacs", "job": "one" }),
    )
    .err(400, "job");
    gw.post("/queue/retry", op, &json!({ "destination": "nope" }))
        .err(404, "nope");
    gw.post(
        "/queue/retry",
        op,
        &json!({ "destination": "pacs", "job": 999_999 }),
    )
    .err(404, "999999");
    let one = dead["items"][0]["id"].as_u64().unwrap();
    let r = gw
        .post(
            "/queue/retry",
            op,
            &json!({ "destination": "pacs", "job": one }),
        )
        .ok(200);
    assert_eq!(r["retried"], 1);
    wait_dead(&gw, "pacs", n);
    let r = gw
        .post("/queue/retry", op, &json!({ "destination": "pacs" }))
        .ok(200);
    assert_eq!(r["retried"], n);
    wait_dead(&gw, "pacs", n);

    // Replay a study.
    let study = &gw.objs[0].study_instance_uid;
    gw.post("/queue/replay", op, &json!({ "destination": "pacs" }))
        .err(400, "study");
    gw.post(
        "/queue/replay",
        op,
        &json!({ "destination": "pacs", "study": "../x" }),
    )
    .err(400, "study");
    gw.post(
        "/queue/replay",
        op,
        &json!({ "destination": "nope", "study": study }),
    )
    .err(404, "nope");
    gw.post(
        "/queue/replay",
        op,
        &json!({ "destination": "pacs", "study": "1.2.3.999" }),
    )
    .err(404, "1.2.3.999");
    let r = gw
        .post(
            "/queue/replay",
            op,
            &json!({ "destination": "pacs", "study": study }),
        )
        .ok(200);
    assert_eq!(r["queued"], 3);
    wait_dead(&gw, "pacs", n + 3);

    // Pause and resume: persisted, visible at once.
    gw.post("/destinations/nope/pause", op, &json!({}))
        .err(404, "nope");
    let r = gw
        .post("/destinations/archive/pause", op, &json!({}))
        .ok(200);
    assert_eq!(
        (r["destination"].as_str(), r["paused"].as_bool()),
        (Some("archive"), Some(true))
    );
    assert_eq!(gw.get("/destinations/archive", v).ok(200)["paused"], true);
    assert_eq!(gw.get("/queue", v).ok(200)["items"][0]["paused"], true);
    gw.post("/destinations/archive/pause?now=1", op, &json!({}))
        .err(400, "now");
    let r = gw
        .post("/destinations/archive/resume", op, &json!({}))
        .ok(200);
    assert_eq!(r["paused"], false);
    assert_eq!(gw.get("/destinations/archive", v).ok(200)["paused"], false);

    // Each action is audited with the operator's name and its parameters.
    let actions: Vec<String> = gw
        .audit_actions()
        .into_iter()
        .map(|(a, who)| {
            assert_eq!(who, "test-operator");
            a
        })
        .collect();
    assert_eq!(
        actions,
        [
            "queue.retry",
            "queue.retry",
            "queue.replay",
            "queue.pause",
            "queue.resume"
        ]
    );
    let replay = &gw.audited("queue.replay")[0];
    assert_eq!(replay["details"]["study"], study.as_str());
    assert_eq!(replay["details"]["destination"], "pacs");
    assert_eq!(gw.audited("queue.retry")[0]["details"]["job"], one);
}

#[test]
fn live_destination_and_route_changes() {
    let gw = Gw::start();
    let (v, ad) = (&gw.viewer, &gw.admin);
    let port = free_port();
    let new = json!({ "name": "extra", "ae_title": "EXTRA", "host": "127.0.0.1", "port": port });

    // Bad destinations are refused naming the field; nothing changes.
    gw.post(
        "/destinations",
        ad,
        &json!({ "ae_title": "X", "host": "h", "port": 1 }),
    )
    .err(400, "name");
    gw.post(
        "/destinations",
        ad,
        &json!({ "name": "extra", "ae_title": "EXTRA", "host": "127.0.0.1", "port": 0 }),
    )
    .err(400, "port");
    gw.post(
        "/destinations",
        ad,
        &json!({ "name": "bad name!", "ae_title": "X", "host": "h", "port": 1 }),
    )
    .err(400, "name");
    gw.post("/destinations", ad, &json!({ "name": "extra", "ae_title": "EXTRA", "host": "127.0.0.1", "port": 1, "colour": "red" }))
        .err(400, "colour");
    gw.post(
        "/destinations",
        ad,
        &json!({ "name": "extra", "ae_title": "EXTRA", "host": "127.0.0.1", "port": "x" }),
    )
    .err(400, "port");
    gw.call_raw("POST", "/destinations", ad, b"[1,")
        .err(400, "json");
    assert_eq!(gw.get("/destinations", v).ok(200)["total"], 2);

    // Create, conflict, read, replace.
    let d = gw.post("/destinations", ad, &new).ok(201);
    assert_eq!(
        (d["name"].as_str(), d["port"].as_u64()),
        (Some("extra"), Some(u64::from(port)))
    );
    assert_eq!(d["paused"], false);
    gw.post("/destinations", ad, &new).err(409, "extra");
    assert_eq!(gw.get("/destinations", v).ok(200)["total"], 3);
    let mut changed = new.clone();
    changed["max_associations"] = json!(3);
    let d = gw.put("/destinations/extra", ad, &changed).ok(200);
    assert_eq!(d["max_associations"], 3);
    gw.put("/destinations/other", ad, &changed).err(400, "name");
    let d = gw
        .put(
            "/destinations/later",
            ad,
            &json!({ "ae_title": "LATER", "host": "127.0.0.1", "port": port }),
        )
        .ok(201);
    assert_eq!(d["name"], "later");

    // Routes: replace (list or {"routes": [...]}), bad ones name the route and field.
    gw.put(
        "/routes",
        ad,
        &json!([{ "name": "r", "destinations": ["nope"] }]),
    )
    .err(400, "routes[0].destinations");
    gw.put(
        "/routes",
        ad,
        &json!([{ "name": "r", "destinations": ["extra"], "when": 1 }]),
    )
    .err(400, "routes[0]");
    gw.put("/routes", ad, &json!({ "rules": [] }))
        .err(400, "routes");
    gw.put("/routes", ad, &json!("all")).err(400, "routes");
    let r = gw
        .put(
            "/routes",
            ad,
            &json!({ "routes": [
                { "name": "ct", "match": { "Modality": "CT" }, "destinations": ["extra"] },
                { "name": "all", "destinations": ["pacs", "archive"] }
            ]}),
        )
        .ok(200);
    assert_eq!(r["total"], 2);
    let routes = gw.get("/routes", v).ok(200);
    assert_eq!(uids(&routes, "name"), vec!["ct", "all"]);
    assert_eq!(routes["items"][0]["match"]["Modality"], "CT");

    // A CT object now also goes to the new destination.
    let ct = ObjSpec::new(60).modality("CT");
    let f = gw._tmp.path().join("ct.dcm");
    gen_part10(&f, &ct).unwrap();
    storescu(gw.daemon.port, &[&f], &[]).assert_all_ok(&[&f]);
    let jobs = gw.get("/queue/jobs?destination=extra", v).ok(200);
    assert_eq!(
        uids(&jobs, "sop_instance_uid"),
        vec![ct.sop_instance_uid.clone()]
    );

    // An operator may pause the new destination at once.
    let r = gw
        .post("/destinations/extra/pause", &gw.operator, &json!({}))
        .ok(200);
    assert_eq!(r["paused"], true);

    // Removal: refused while routed to, then done.
    gw.call("DELETE", "/destinations/extra", ad, None)
        .err(409, "ct");
    gw.put(
        "/routes",
        ad,
        &json!([{ "name": "all", "destinations": ["pacs", "archive"] }]),
    )
    .ok(200);
    gw.call("DELETE", "/destinations/extra", ad, None).ok(200);
    gw.call("DELETE", "/destinations/extra", ad, None)
        .err(404, "extra");
    gw.get("/destinations/extra", v).err(404, "extra");

    let actions: Vec<String> = gw.audit_actions().into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        actions,
        [
            "destination.create",
            "destination.update",
            "destination.create",
            "routes.replace",
            "queue.pause",
            "routes.replace",
            "destination.delete"
        ]
    );
    let created = &gw.audited("destination.create")[0];
    assert_eq!(created["details"]["destination"]["port"], port);
    assert_eq!(created["actor"], "test-admin");
}
