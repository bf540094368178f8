//! Hardening (issue 16; review findings M1, M7, H8, L1, L2, L4): who may use the control
//! socket, the admin API's timeouts and connection cap, authentication before pacing, file
//! modes whatever the umask, one daemon per data directory, failed logins in the audit log,
//! each change and its audit entry in one transaction (a crash between them leaves both or
//! neither).
//!
//! The control-socket test switches to the unprivileged `nobody` account with `setpriv`, so it
//! needs root; it is skipped (with a message) when not root, and fails under `CI=true`.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// `true` if the test may run as root; otherwise prints why it is skipped (and fails under
/// `CI=true`, where the suite runs as root).
fn need_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} needs root (it switches to the `nobody` account) and CI=true"
    );
    eprintln!("SKIPPED: {what} needs root (it switches to the `nobody` account)");
    false
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// `dicom-gw ARGS` as the test's own user; its stdout (asserting exit code 0).
fn cli(args: &[&str]) -> String {
    let (out, timed_out) = run_timeout(Command::new(BIN).args(args), HTTP_TIMEOUT);
    assert!(!timed_out, "dicom-gw {args:?} timed out");
    assert!(
        out.status.success(),
        "dicom-gw {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Python as `nobody` (uid 65534, no supplementary groups) connects to the control socket at
/// `sock` and sends a token-create request: prints `CONNECT-FAILED <errno name>` or the reply.
fn as_nobody_request_token(sock: &Path) -> String {
    let script = r#"
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("CONNECT-FAILED", errno.errorcode.get(e.errno, e.errno))
    sys.exit(0)
try:
    s.sendall(b'{"op":"token-create","role":"admin","name":"not-the-daemon-user"}\n')
except BrokenPipeError:
    pass  # the daemon may answer and close before reading anything
data = b""
while not data.endswith(b"\n"):
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
print("REPLY", data.decode().strip())
"#;
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        // The system Python: a per-user one (pyenv under /root) is out of nobody's reach.
        "/usr/bin/python3",
        "-c",
        script,
    ])
    .arg(sock);
    let (out, timed_out) = run_timeout(&mut cmd, Duration::from_secs(30));
    assert!(!timed_out, "the nobody client timed out");
    assert!(
        out.status.success(),
        "setpriv/python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_control_socket_admits_only_root_and_the_daemon_user_and_audits_the_kernel_uid() {
    if !need_root("the control-socket test") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);

    // The socket lives in a directory only the daemon's user may enter.
    let run = data.join("run");
    let sock = run.join("control.sock");
    assert_eq!(mode(&run), 0o700, "run/ is private");
    assert!(sock.exists(), "the socket is at {}", sock.display());
    assert!(
        !data.join("control.sock").exists(),
        "no socket at the old place"
    );

    // Even with every directory on the way open to all, nobody cannot reach the socket...
    chmod(tmp.path(), 0o755);
    chmod(&data, 0o755);
    let out = as_nobody_request_token(&sock);
    assert_eq!(
        out, "CONNECT-FAILED EACCES",
        "run/ (0700) stops other users"
    );

    // ...and if an operator opens run/ and the socket by mistake, the daemon still refuses
    // by the peer's credentials.
    chmod(&run, 0o755);
    chmod(&sock, 0o777);
    let out = as_nobody_request_token(&sock);
    assert!(
        out.starts_with("REPLY ") && out.contains("refused") && !out.contains("dgw_"),
        "the daemon refuses uid 65534: {out}"
    );

    // Root (the test) uses the CLI as before; the audit actor is the kernel's uid, not what
    // the client says.
    let token = cli(&[
        "token",
        "create",
        "--data-dir",
        d,
        "--role",
        "viewer",
        "--name",
        "grafana",
    ]);
    assert!(token.contains("dgw_"), "{token}");
    let tokens = json_lines(&cli(&["token", "list", "--data-dir", d]));
    assert_eq!(tokens.len(), 1, "only the CLI's token exists: {tokens:?}");
    let mut cmd = Command::new(BIN);
    cmd.args(["audit", "list", "--data-dir", d])
        .env("USER", "someone-else")
        .env("SUDO_USER", "someone-else");
    let (out, _) = run_timeout(&mut cmd, HTTP_TIMEOUT);
    let log = json_lines(&String::from_utf8_lossy(&out.stdout));
    let creates: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "token.create")
        .collect();
    assert_eq!(creates.len(), 1, "{log:?}");
    assert_eq!(creates[0]["actor"], "cli:uid=0(root)", "{log:?}");
    assert_eq!(creates[0]["source"], "cli");
    gw.stop();
}

/// A connection kind the slowloris review used.
#[derive(Debug, Clone, Copy)]
enum Idle {
    /// Connects and sends nothing.
    Silent,
    /// Sends half a request head.
    PartialHeader,
    /// Completes one keep-alive request, then stays.
    KeepAlive,
    /// Sends a head announcing a body, and only part of the body.
    StalledBody,
}

fn open_idle(port: u16, kind: Idle) -> TcpStream {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("connect {kind:?}: {e}"));
    // A reset by the server counts as closed too, so write errors are ignored.
    let _ = match kind {
        Idle::Silent => Ok(()),
        Idle::PartialHeader => s.write_all(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\n"),
        Idle::KeepAlive => s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        Idle::StalledBody => s.write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"name\":",
        ),
    };
    s
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (1,000 client sockets).
fn raise_nofile() {
    // SAFETY: plain get/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        assert!(
            r.rlim_cur >= 1200,
            "the hard RLIMIT_NOFILE ({}) is too small for 1,000 connections",
            r.rlim_cur
        );
    }
}

#[test]
fn a_thousand_idle_api_connections_are_closed_and_ingest_keeps_working() {
    require_dcmtk();
    raise_nofile();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The daemon gets 512 descriptors, as in the review's repro: without a connection cap
    // the idle connections used them all and storescu failed.
    let args: Vec<std::ffi::OsString> = [
        "--nofile=512:512",
        "--",
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
    ]
    .iter()
    .map(Into::into)
    .collect();
    let mut gw =
        Daemon::spawn(Path::new("prlimit"), &args, &data).unwrap_or_else(|e| panic!("{e}"));
    let port = gw.http_port;
    let kinds = [
        Idle::Silent,
        Idle::PartialHeader,
        Idle::KeepAlive,
        Idle::StalledBody,
    ];
    let mut conns: Vec<(Idle, TcpStream)> = (0..1000)
        .map(|i| {
            let k = kinds[i % kinds.len()];
            (k, open_idle(port, k))
        })
        .collect();

    // Ingest works while they are open.
    let f = tmp.path().join("a.dcm");
    gen_part10(&f, &ObjSpec::new(1).pixel_bytes(4096)).unwrap();
    storescu(gw.port, &[&f], &[]).assert_all_ok(&[&f]);

    // Every one of them is closed by the daemon (EOF or reset) within the timeouts.
    let deadline = Instant::now() + Duration::from_secs(90);
    for (_, s) in &conns {
        s.set_nonblocking(true).unwrap();
    }
    let mut buf = [0u8; 4096];
    while !conns.is_empty() && Instant::now() < deadline {
        conns.retain_mut(|(_, s)| loop {
            match s.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => continue, // a response (keep-alive, 408): drain it
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    let left: Vec<Idle> = conns.iter().map(|(k, _)| *k).collect();
    assert!(
        left.is_empty(),
        "{} connections still open after 90 s: {:?}",
        left.len(),
        &left[..left.len().min(10)]
    );
    // The API serves again, and ingest still works.
    let token = cli_token(BIN, &data, "viewer");
    let r = request(port, "GET", "/api/v1/stats", Some(&token), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let g = tmp.path().join("b.dcm");
    gen_part10(&g, &ObjSpec::new(2).pixel_bytes(4096)).unwrap();
    storescu(gw.port, &[&g], &[]).assert_all_ok(&[&g]);
    gw.stop();
}

#[test]
fn an_unauthenticated_flood_does_not_use_up_the_authenticated_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("gw.toml");
    // 5 requests per second: bursts of 20, and 10 more may wait their 2 s.
    std::fs::write(&cfg, "[http]\nmax_requests_per_second = 5\n").unwrap();
    let mut gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let port = gw.http_port;
    let token = cli_token(BIN, &data, "viewer");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeMap::<u16, usize>::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = request(port, "GET", "/api/v1/stats", Some("dgw_wrong"), None);
                    *seen.entry(r.status).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    // Let the flood fill its own queue first.
    std::thread::sleep(Duration::from_secs(3));
    // 20 authenticated requests at once fit the authenticated burst: every one is served,
    // none is refused for the flood's sake.
    let authed: Vec<_> = (0..20)
        .map(|_| {
            let token = token.clone();
            std::thread::spawn(move || request(port, "GET", "/api/v1/stats", Some(&token), None))
        })
        .collect();
    let statuses: Vec<u16> = authed
        .into_iter()
        .map(|h| h.join().unwrap().status)
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flood_seen = std::collections::BTreeMap::<u16, usize>::new();
    for h in flood {
        for (k, v) in h.join().unwrap() {
            *flood_seen.entry(k).or_default() += v;
        }
    }
    assert!(
        flood_seen.get(&503).copied().unwrap_or(0) > 0,
        "the flood exceeded its own budget: {flood_seen:?}"
    );
    assert!(
        flood_seen.keys().all(|s| *s == 401 || *s == 503),
        "{flood_seen:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "authenticated requests during the flood: {statuses:?} (flood: {flood_seen:?})"
    );
    // Probes stay exempt.
    assert_eq!(http_json(port, "GET", "/healthz", None, None).0, 200);
    gw.stop();
}

/// Every directory and file under `root` with its mode.
fn walk(root: &Path, out: &mut Vec<(PathBuf, bool, u32)>) {
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), md.is_dir(), md.permissions().mode() & 0o7777));
        if md.is_dir() {
            walk(&p, out);
        }
    }
}

#[test]
fn patient_files_are_0640_and_directories_0750_under_umask_000() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let script = "umask 000; exec \"$@\"";
    let args: Vec<std::ffi::OsString> = [
        "-c",
        script,
        "sh",
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
    ]
    .iter()
    .map(Into::into)
    .collect();
    let mut gw =
        Daemon::spawn(Path::new("/bin/sh"), &args, &data).unwrap_or_else(|e| panic!("{e}"));
    let files: Vec<PathBuf> = (1..=3)
        .map(|i| {
            let f = tmp.path().join(format!("{i}.dcm"));
            gen_part10(&f, &ObjSpec::new(i).patient("DOE^JANE", "PID-7")).unwrap();
            f
        })
        .collect();
    storescu(gw.port, &files, &[]).assert_all_ok(&files);
    gw.stop();

    let mut all = Vec::new();
    walk(&data, &mut all);
    let objects = all
        .iter()
        .filter(|(p, d, _)| !d && p.extension().is_some_and(|e| e == "dcm"))
        .count();
    assert_eq!(objects, 3, "{all:?}");
    for name in ["gateway.redb", "worklist.redb"] {
        assert!(data.join(name).exists(), "{name} was created");
    }
    assert_eq!(mode(&data), 0o750, "the data directory");
    for (p, is_dir, m) in &all {
        let want = if p.ends_with("run") {
            0o700
        } else if *is_dir {
            0o750
        } else {
            0o640
        };
        assert_eq!(*m, want, "{}: {:o}", p.display(), m);
    }
}

#[test]
fn a_second_serve_on_a_directory_in_use_stops_before_touching_it() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);
    // Stands for an object the running daemon is receiving.
    let part = data.join("tmp").join("in-flight.part");
    std::fs::write(&part, b"half an object").unwrap();

    let e = match Daemon::try_start(BIN, &data, "epoll", &[]) {
        Ok(mut second) => {
            second.stop();
            panic!("a second daemon started on {}", data.display())
        }
        Err(e) => e,
    };
    assert!(e.contains("in use by another dicom-gw"), "{e}");
    assert!(
        e.contains(data.to_str().unwrap()),
        "the error names the directory: {e}"
    );
    assert!(
        part.exists(),
        "the running daemon's temporary file was left alone"
    );
    assert!(
        data.join("run").join("control.sock").exists(),
        "the running daemon's control socket was left alone"
    );
    // The first one is unaffected.
    let f = tmp.path().join("a.dcm");
    gen_part10(&f, &ObjSpec::new(1)).unwrap();
    storescu(gw.port, &[&f], &[]).assert_all_ok(&[&f]);
    assert_eq!(
        cli(&["token", "list", "--data-dir", data.to_str().unwrap()]),
        ""
    );
    gw.stop();
}

#[test]
fn failed_logins_are_audited_and_backed_off() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.to_str().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "user",
        "add",
        "--data-dir",
        d,
        "--role",
        "admin",
        "--name",
        "alice",
    ])
    .env("DICOM_GW_PASSWORD", "a long enough password");
    let (out, _) = run_timeout(&mut cmd, HTTP_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);
    let port = gw.http_port;
    let login = |name: &str, password: &str| {
        http_json(
            port,
            "POST",
            "/api/v1/auth/login",
            None,
            Some(&json!({ "name": name, "password": password })),
        )
    };
    // Wrong passwords: 401, then, once the user's failures pile up, 429 with Retry-After
    // without checking the password at all.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(login("alice", "not the password").0);
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "back-off after repeated failures: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    // While backed off, even the right password is refused (the guesser learns nothing).
    let (code, body) = login("alice", "a long enough password");
    assert_eq!(code, 429, "{body}");
    // An unknown user's failure is audited too (under the name tried).
    assert_eq!(login("mallory", "whatever password").0, 401);

    let admin = cli_token(BIN, &data, "admin");
    let (code, audit) = http_json(port, "GET", "/api/v1/audit?limit=100", Some(&admin), None);
    assert_eq!(code, 200, "{audit}");
    let items = audit["items"].as_array().expect("items");
    let failed: Vec<&Value> = items
        .iter()
        .filter(|e| e["action"] == "auth.login_failed")
        .collect();
    assert!(
        failed.len() >= 3,
        "every checked failure is in the log: {items:?}"
    );
    assert!(failed.iter().any(|e| e["actor"] == "alice"), "{failed:?}");
    assert!(failed.iter().any(|e| e["actor"] == "mallory"), "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|e| e["source"].as_str().unwrap_or("").starts_with("127.0.0.1:")),
        "{failed:?}"
    );
    assert!(
        !audit.to_string().contains("not the password"),
        "no password in the log"
    );
    gw.stop();
}

/// A self-signed certificate for 127.0.0.1 made with the openssl CLI.
fn self_signed(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(out.status.success(), "{out:?}");
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

#[test]
fn idle_and_slow_https_connections_are_closed_after_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(tmp.path());
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!("[http]\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n"),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let mut gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let connect = format!("127.0.0.1:{}", gw.http_port);
    // Silent after the handshake, half a header, half a body: the review saw all three kept
    // open for minutes.
    let sends: [&[u8]; 3] = [
        b"",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{",
    ];
    let mut clients: Vec<std::process::Child> = sends
        .iter()
        .map(|send| {
            let mut c = Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &connect,
                    "-CAfile",
                    &cert,
                    "-verify_return_error",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl s_client");
            // Keep stdin open (no EOF from our side): only the server may end it.
            c.stdin.as_mut().unwrap().write_all(send).unwrap();
            c
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in &mut clients {
        let left = deadline.saturating_duration_since(Instant::now());
        let st = wait_timeout(c, left);
        assert!(st.is_some(), "an HTTPS connection is still open after 60 s");
        let mut out = String::new();
        c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "the handshake completed before the server closed: {out}"
        );
    }
    assert_eq!(http_json_tls_free(&gw), 0, "plain HTTP is still not served");
    gw.stop();
}

/// A plain-HTTP request to the TLS port: 0 (no HTTP answer), as before.
fn http_json_tls_free(gw: &Daemon) -> u16 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], gw.http_port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    if buf.starts_with(b"HTTP/1.1 ") {
        String::from_utf8_lossy(&buf[9..12]).parse().unwrap_or(0)
    } else {
        0
    }
}

use dicom_gw::audit::fault::{break_audit_log, repair_audit_log};

/// The audit log as (actor, action, details), in order.
fn audit_log(db: &redb::Database) -> Vec<(String, String, String)> {
    dicom_gw::audit::list(db, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| (e.actor, e.action, e.details))
        .collect()
}

/// A worklist item as a RIS would send it.
fn worklist_item(acc: &str) -> dicom_gw::worklist::model::NewItem {
    let doc = json!({
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00080050": {"vr": "SH", "Value": [acc]},
        "00401001": {"vr": "SH", "Value": ["RP1"]},
        "00400100": {"vr": "SQ", "Value": [{
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00400001": {"vr": "AE", "Value": ["CT1"]},
            "00400002": {"vr": "DA", "Value": ["20260115"]},
            "00400009": {"vr": "SH", "Value": ["S1"]}
        }]}
    });
    dicom_gw::worklist::model::parse_items(&doc.to_string())
        .unwrap()
        .remove(0)
}

/// Issue 16, "each change and its audit entry in one transaction": a crash between a change
/// and its audit entry leaves both or neither.
///
/// Changes to `gateway.redb` (a queue operation through the CLI/API operations, a destination,
/// the routes) write their entry inside the change's transaction: when the entry cannot be
/// written the change is not made (neither), and when it can, the hook runs before the commit
/// (the change is not visible yet from outside) and both appear together. A worklist change
/// (`worklist.redb`) writes its entry to that database's outbox in its transaction; the daemon
/// drains the outbox at start-up, so a crash after the worklist commit and before the drain, or
/// after the audit append and before the outbox delete, still yields the entry exactly once.
#[test]
fn a_crash_between_change_and_audit_leaves_both_or_neither() {
    use std::sync::{Arc, Mutex};

    use dicom_gw::audit::{self, outbox, AuditEvent};
    use dicom_gw::config::{RawDestination, RawRoute};
    use dicom_gw::control::{Ops, Request, CLI_SOURCE};
    use dicom_gw::queue::forwarder::Forwarder;
    use dicom_gw::queue::live::{self, LiveConfig};
    use dicom_gw::queue::routing::Routing;
    use dicom_gw::queue::Queue;
    use dicom_gw::store::index::Index;
    use dicom_gw::store::DataDir;
    use dicom_gw::worklist::WorklistStore;

    let tmp = tempfile::tempdir().unwrap();

    // 1. gateway.redb: a queue operation (the CLI's and the API's path), a destination, routes.
    let (data, _) = DataDir::prepare(&tmp.path().join("gw")).unwrap();
    let index = Arc::new(Index::open(&data.index_path()).unwrap());
    let db = index.database();
    let queue = Queue::new(index.clone(), false);
    let ops = Ops::offline(queue.clone(), vec!["pacs".into()]).unwrap();
    let fwd = Forwarder::start(queue.clone(), data, vec![]).unwrap();
    let routing = Arc::new(arc_swap::ArcSwap::from_pointee(Routing::default()));
    let live = LiveConfig::new(
        index.clone(),
        fwd.shared().clone(),
        routing.clone(),
        "GW".into(),
    );
    let dest = |port| RawDestination {
        name: Some("archive".into()),
        ae_title: Some("ARCH".into()),
        host: Some("127.0.0.1".into()),
        port: Some(port),
        ..Default::default()
    };
    let route = RawRoute {
        name: Some("all".into()),
        match_: None,
        destinations: Some(vec!["archive".into()]),
    };
    let pause = Request::Pause {
        destination: "pacs".into(),
    };
    // What each hook saw of the stored configuration (destination ports, route count) from
    // outside its transaction while it ran: the state before its change.
    let seen_inside: Seen = Arc::default();
    type Seen = Arc<Mutex<Vec<(Vec<u16>, usize)>>>;
    fn hook<R>(index: Arc<Index>, seen: Seen, action: &'static str) -> impl audit::AuditHook<R> {
        move |tx: &redb::WriteTransaction, _: &R| {
            let (d, r, _) = live::effective(&index, vec![], vec![], "GW").unwrap();
            seen.lock()
                .unwrap()
                .push((d.iter().map(|d| d.port).collect(), r.len()));
            audit::append(
                tx,
                1,
                &AuditEvent {
                    actor: "alice",
                    source: "127.0.0.1:1",
                    action,
                    details: json!({}),
                },
            )
            .map(drop)
        }
    }

    // (a) The audit log cannot be written: no change is made.
    let broken = break_audit_log(db);
    let e = ops
        .execute_as(&pause, "cli:uid=0(root)", CLI_SOURCE)
        .unwrap_err();
    assert!(e.to_string().contains("the change was not made"), "{e}");
    assert!(!queue.is_paused("pacs").unwrap(), "paused without an entry");
    let e = live
        .create_destination(
            dest(1),
            hook(index.clone(), seen_inside.clone(), "destination.create"),
        )
        .unwrap_err();
    assert!(e.to_string().contains("the change was not made"), "{e}");
    assert!(fwd.shared().names().is_empty(), "applied without an entry");
    assert!(
        !live::effective(&index, vec![], vec![], "GW").unwrap().2,
        "stored without an entry"
    );
    repair_audit_log(db, broken);
    assert!(audit_log(db).is_empty());

    // (b) It can: both, committed together.
    ops.execute_as(&pause, "cli:uid=0(root)", CLI_SOURCE)
        .unwrap();
    assert!(queue.is_paused("pacs").unwrap());
    live.create_destination(
        dest(1),
        hook(index.clone(), seen_inside.clone(), "destination.create"),
    )
    .unwrap();
    let broken = break_audit_log(db);
    let e = live
        .upsert_destination(
            dest(2),
            None,
            hook(index.clone(), seen_inside.clone(), "destination.update"),
        )
        .unwrap_err();
    assert!(e.to_string().contains("the change was not made"), "{e}");
    let e = live
        .set_routes(
            vec![route.clone()],
            hook(index.clone(), seen_inside.clone(), "routes.replace"),
        )
        .unwrap_err();
    assert!(e.to_string().contains("the change was not made"), "{e}");
    let (dests, routes, _) = live::effective(&index, vec![], vec![], "GW").unwrap();
    assert_eq!(
        (dests[0].port, routes.len()),
        (1, 0),
        "stored without an entry"
    );
    assert!(
        routing.load().routes().is_empty(),
        "applied without an entry"
    );
    repair_audit_log(db, broken);
    live.upsert_destination(
        dest(2),
        None,
        hook(index.clone(), seen_inside.clone(), "destination.update"),
    )
    .unwrap();
    live.set_routes(
        vec![route],
        hook(index.clone(), seen_inside.clone(), "routes.replace"),
    )
    .unwrap();
    assert_eq!(routing.load().routes().len(), 1);
    let (dests, routes, _) = live::effective(&index, vec![], vec![], "GW").unwrap();
    assert_eq!((dests[0].port, routes.len()), (2, 1));
    // Every hook ran inside its change's transaction, before the commit: what it saw from
    // outside was the state before the change.
    assert_eq!(
        *seen_inside.lock().unwrap(),
        [
            (vec![], 0),  // create, refused
            (vec![], 0),  // create
            (vec![1], 0), // update, refused
            (vec![1], 0), // routes, refused
            (vec![1], 0), // update
            (vec![2], 0), // routes
        ]
    );
    let actions: Vec<String> = audit_log(db).into_iter().map(|(_, a, _)| a).collect();
    assert_eq!(
        actions,
        [
            "queue.pause",
            "destination.create",
            "destination.update",
            "routes.replace"
        ]
    );
    assert!(audit::verify(db).unwrap().ok);
    fwd.stop();

    // 2. worklist.redb: the change and its outbox entry commit together; the daemon drains the
    // outbox at start-up.
    let data = tmp.path().join("wl");
    std::fs::create_dir_all(&data).unwrap();
    let index = Index::open(&data.join("gateway.redb")).unwrap();
    let store = WorklistStore::open_in(&data).unwrap();
    let to_outbox = |acc: &'static str| {
        move |tx: &redb::WriteTransaction, _: &_| {
            outbox::put(
                tx,
                1,
                &AuditEvent {
                    actor: "ris",
                    source: "10.0.0.9:4000",
                    action: "worklist.create",
                    details: json!({ "accession": acc }),
                },
            )
            .map(drop)
        }
    };
    // A failing outbox write: neither the item nor an entry.
    let failing = |_: &redb::WriteTransaction, _: &_| Err("disk on fire".to_owned());
    assert!(store.create(worklist_item("A0"), failing).is_err());
    assert_eq!(store.count(), 0);
    // A crash after the audit append and before the outbox delete (item A)...
    store.create(worklist_item("A"), to_outbox("A")).unwrap();
    let a = outbox::append_pending(store.database(), index.database())
        .unwrap()
        .unwrap();
    assert_eq!(a.appended, 1);
    // ... and one after the worklist commit and before the drain (item B).
    store.create(worklist_item("B"), to_outbox("B")).unwrap();
    assert_eq!(outbox::pending(store.database()).unwrap(), 2);
    assert_eq!(audit::count(index.database()).unwrap(), 1);
    drop((store, index));

    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);
    gw.stop();
    let index = Index::open(&data.join("gateway.redb")).unwrap();
    let store = WorklistStore::open_in(&data).unwrap();
    assert_eq!(store.count(), 2);
    assert_eq!(outbox::pending(store.database()).unwrap(), 0);
    let log = audit_log(index.database());
    let expected = |acc: &str| {
        (
            "ris".to_owned(),
            "worklist.create".to_owned(),
            format!(r#"{{"accession":"{acc}"}}"#),
        )
    };
    assert_eq!(log, [expected("A"), expected("B")], "each exactly once");
    assert!(audit::verify(index.database()).unwrap().ok);
}
