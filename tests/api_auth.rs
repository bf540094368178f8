//! Authentication and the audit log (issue 5), black-box: the first admin is bootstrapped on a
//! stopped data directory with `dicom-gw user add` and `dicom-gw token create`; against the
//! running daemon, `/api/v1` refuses missing and bad tokens (401) and too small a role (403),
//! `POST /api/v1/auth/login` trades a good password for a token and answers a bad one (or an
//! unknown user) with the same 401; CLI changes made while the daemon runs are audited under
//! the CLI user, `dicom-gw audit verify` passes, and after one entry is edited in the database
//! it fails naming that entry.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const PASSWORD: &str = "correct horse battery staple";

/// Runs `dicom-gw ARGS` as unix user "tester" (for the audit actor), writing `stdin` to it.
fn cli(args: &[&str], stdin: &str, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SUDO_USER")
        .env_remove("DICOM_GW_PASSWORD")
        .env("USER", "tester")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn dicom-gw");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let (out, timed_out) = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let timed_out = child.try_wait().unwrap().is_none();
        if timed_out {
            let _ = child.kill();
        }
        (child.wait_with_output().unwrap(), timed_out)
    };
    assert!(!timed_out, "dicom-gw {args:?} timed out");
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs the CLI and asserts exit code `code`; returns stdout.
fn cli_ok(args: &[&str], stdin: &str, code: i32) -> String {
    let out = cli(args, stdin, &[]);
    assert_eq!(
        out.status.code(),
        Some(code),
        "dicom-gw {args:?}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn token_create(dir: &str, role: &str) -> String {
    let out = cli_ok(
        &["token", "create", "--data-dir", dir, "--role", role],
        "",
        0,
    );
    let token = out.split_whitespace().last().expect("a token").to_owned();
    assert!(token.starts_with("dgw_"), "{out}");
    token
}

struct Http {
    status: u16,
    body: String,
}

impl Http {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close` over a raw socket.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Http {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin API");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    if !body.is_empty() {
        req += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    req += &body;
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = text(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(text(&rest[..eol]).trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 2 + n + 2..];
        }
        body = out;
    }
    Http {
        status,
        body: text(&body),
    }
}

fn login(port: u16, name: &str, password: &str) -> Http {
    http(
        port,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&json!({ "name": name, "password": password })),
    )
}

/// Edits the details of audit entry `seq` directly in the database (daemon stopped).
fn tamper(dir: &Path, seq: u64) {
    use redb::ReadableDatabase;
    let index = dicom_gw::store::index::Index::open(&dir.join("gateway.redb")).unwrap();
    let db = index.database();
    let mut entry: dicom_gw::audit::AuditEntry = {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(dicom_gw::db::AUDIT).unwrap();
        let v = t.get(seq).unwrap().expect("the entry exists");
        postcard::from_bytes(v.value()).unwrap()
    };
    entry.details = entry.details.replace("viewer", "admin");
    let tx = db.begin_write().unwrap();
    tx.open_table(dicom_gw::db::AUDIT)
        .unwrap()
        .insert(seq, postcard::to_allocvec(&entry).unwrap().as_slice())
        .unwrap();
    tx.commit().unwrap();
}

#[test]
fn bootstrap_login_roles_and_a_tamper_evident_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();

    // Bootstrap on a data directory that does not exist yet, daemon stopped.
    let add_admin = [
        "user",
        "add",
        "--data-dir",
        d,
        "--name",
        "root-admin",
        "--role",
        "admin",
    ];
    let out = cli(&add_admin, "", &[]);
    assert_eq!(out.status.code(), Some(2), "no password given: usage error");
    assert!(
        text(&out.stderr).contains("DICOM_GW_PASSWORD"),
        "{}",
        text(&out.stderr)
    );
    let with_stdin: Vec<&str> = add_admin
        .iter()
        .copied()
        .chain(["--password-stdin"])
        .collect();
    let out = cli(&with_stdin, "too short\n", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("password"),
        "{}",
        text(&out.stderr)
    );
    let out = cli_ok(&with_stdin, &format!("{PASSWORD}\n"), 0);
    assert!(out.contains("root-admin"), "{out}");
    // Also from the environment.
    let out = cli(
        &[
            "user",
            "add",
            "--data-dir",
            d,
            "--name",
            "ops",
            "--role",
            "operator",
        ],
        "",
        &[("DICOM_GW_PASSWORD", "operator password 1")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let admin = token_create(d, "admin");
    // Nothing on the command line of these processes carried a password; the names exist.
    let users = cli_ok(&["user", "list", "--data-dir", d], "", 0);
    assert_eq!(users.lines().count(), 2, "{users}");
    assert!(!users.contains("argon2"), "{users}");

    let mut gw = Daemon::start(BIN, &dir, "epoll", &[]);
    let port = gw.http_port;
    assert_ne!(port, 0, "the daemon printed its API address");

    // Changes through the running daemon (control socket) are audited too.
    let viewer = token_create(d, "viewer");

    // 401 without or with a bad token; 403 for too small a role; 200 for an admin.
    for t in [None, Some("dgw_00"), Some("nonsense")] {
        let r = http(port, "GET", "/api/v1/audit", t, None);
        assert_eq!(r.status, 401, "token {t:?}: {}", r.body);
    }
    let r = http(port, "GET", "/api/v1/audit", Some(&viewer), None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(port, "GET", "/api/v1/audit", Some(&admin), None);
    assert_eq!(r.status, 200, "{}", r.body);

    // Login: a good password gets a token with the user's role; a wrong password and an
    // unknown user get the same 401.
    let r = login(port, "root-admin", PASSWORD);
    assert_eq!(r.status, 200, "{}", r.body);
    let session = r.json()["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {}", r.body))
        .to_owned();
    let r = http(port, "GET", "/api/v1/audit", Some(&session), None);
    assert_eq!(r.status, 200, "the login token works: {}", r.body);
    let r = login(port, "ops", "operator password 1");
    assert_eq!(r.status, 200, "{}", r.body);
    let ops_session = r.json()["token"].as_str().unwrap().to_owned();
    let r = http(port, "GET", "/api/v1/audit", Some(&ops_session), None);
    assert_eq!(
        r.status, 403,
        "an operator may not read the audit log: {}",
        r.body
    );
    let wrong = login(port, "root-admin", "not the password at all");
    let unknown = login(port, "nobody", PASSWORD);
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert_eq!(
        wrong.json()["error"]["message"],
        unknown.json()["error"]["message"],
        "the answer does not tell which user names exist"
    );

    // The CLI's changes are in the log under the CLI user, and it verifies.
    let log = cli_ok(&["audit", "list", "--data-dir", d], "", 0);
    let entries: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cli_actions: Vec<&str> = entries
        .iter()
        .filter(|e| e["source"] == "cli")
        .map(|e| {
            // The actor comes from the kernel's peer credentials, not from the client.
            let uid = unsafe { libc::getuid() };
            assert!(
                e["actor"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("cli:uid={uid}")),
                "{e}"
            );
            e["action"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        cli_actions,
        ["user.add", "user.add", "token.create", "token.create"],
        "{log}"
    );
    assert!(
        !log.contains(&admin) && !log.contains(PASSWORD),
        "no secrets in the log"
    );
    let viewer_token_entry = entries
        .iter()
        .find(|e| e["action"] == "token.create" && e["details"]["role"] == "viewer")
        .expect("the viewer token's entry")["seq"]
        .as_u64()
        .unwrap();
    let out = cli_ok(&["audit", "verify", "--data-dir", d], "", 0);
    assert!(out.starts_with("audit log OK: "), "{out}");
    let head = out.trim().rsplit(' ').next().unwrap().to_owned();
    assert_eq!(head.len(), 64, "{out}");

    gw.stop();

    // Offline too, and with the head kept as an anchor.
    let out = cli_ok(
        &["audit", "verify", "--data-dir", d, "--anchor", &head],
        "",
        0,
    );
    assert!(out.starts_with("audit log OK: "), "{out}");

    // Edit one entry: verification fails and names it.
    tamper(&dir, viewer_token_entry);
    let out = cli_ok(&["audit", "verify", "--data-dir", d], "", 1);
    assert!(
        out.contains(&format!("at entry {viewer_token_entry}:")),
        "names entry {viewer_token_entry}: {out}"
    );
}
