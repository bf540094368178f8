//! The admin API's transport rules: HTTPS with rustls when a certificate is configured, refusal
//! of a non-loopback address without TLS, and the readiness probe's failing checks. Driven over
//! real HTTP(S) with `curl` against the running binary.

mod util;

use std::path::Path;
use std::process::Command;

use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");

/// `curl -s -o - -w '\n%{http_code}' ARGS URL` → (status, body); status 0 when no HTTP answer.
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A self-signed certificate for 127.0.0.1 and localhost made with the openssl CLI; `None`
/// (with a message) when openssl is missing.
fn self_signed(dir: &Path) -> Option<(String, String)> {
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
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match out {
        Ok(o) if o.status.success() => Some((
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )),
        other => {
            eprintln!("SKIPPED: cannot make a certificate with openssl: {other:?}");
            None
        }
    }
}

#[test]
fn https_when_a_certificate_is_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((cert, key)) = self_signed(tmp.path()) else {
        return;
    };
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!("[http]\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n"),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let mut gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    assert!(
        gw.stdout().contains("(https)"),
        "the http line says https: {}",
        gw.stdout()
    );
    let url = format!("https://127.0.0.1:{}/healthz", gw.http_port);
    let (code, body) = curl(&["--cacert", &cert], &url);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("alive"), "{body}");
    // The API needs a token over HTTPS too.
    let (code, body) = curl(
        &["--cacert", &cert],
        &format!("https://127.0.0.1:{}/api/v1/studies", gw.http_port),
    );
    assert_eq!(code, 401, "{body}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let (code, _) = curl(&[], &format!("http://127.0.0.1:{}/healthz", gw.http_port));
    assert_eq!(code, 0, "plain HTTP must not be served on the TLS port");
    // A client that does not trust the certificate refuses it.
    let (code, _) = curl(&[], &url);
    assert_eq!(code, 0);
    gw.stop();
}

#[test]
fn unusable_certificate_fails_start_up_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("garbage.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!("[http]\ntls_cert_file = {bad:?}\ntls_key_file = {bad:?}\n"),
    )
    .unwrap();
    let e = match Daemon::try_start(
        BIN,
        tmp.path().join("data"),
        "epoll",
        &["--config", cfg.to_str().unwrap()],
    ) {
        Ok(_) => panic!("started with a garbage certificate"),
        Err(e) => e,
    };
    assert!(
        e.contains("admin API TLS") && e.contains("garbage.pem"),
        "{e}"
    );
}

#[test]
fn non_loopback_without_tls_is_refused_unless_explicitly_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args([
            "--store-listen",
            "127.0.0.1:0",
            "--http-listen",
            "0.0.0.0:0",
            "--worklist-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains("TLS") && err.contains("command line"),
        "{err}"
    );
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(&cfg, "[http]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains("line 2"),
        "{err}"
    );
    std::fs::write(
        &cfg,
        "[http]\nlisten = \"0.0.0.0:8080\"\nallow_insecure_non_loopback = true\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn readiness_fails_with_the_failing_check_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gw.toml");
    // Any real filesystem is more than 1 % full... unless it is empty: then skip.
    std::fs::write(&cfg, "[store]\ndisk_high_water_percent = 1\n").unwrap();
    let data = tmp.path().join("data");
    let mut gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let base = format!("http://127.0.0.1:{}", gw.http_port);
    let (code, body) = curl(&[], &format!("{base}/healthz"));
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[], &format!("{base}/readyz"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    if v["checks"]["disk"]["ok"] == true {
        eprintln!("SKIPPED: the data filesystem is under 1 % full");
        gw.stop();
        return;
    }
    assert_eq!(code, 503, "{body}");
    assert_eq!(v["ready"], false);
    assert!(
        v["checks"]["disk"]["message"]
            .as_str()
            .unwrap()
            .contains("high-water mark"),
        "{body}"
    );
    assert_eq!(v["checks"]["database"]["ok"], true, "{body}");
    assert_eq!(v["checks"]["dicom_listeners"]["ok"], true, "{body}");
    // Wrong method on a probe: 405 with the JSON error body.
    let (code, body) = curl(&["-X", "POST"], &format!("{base}/healthz"));
    assert_eq!(code, 405, "{body}");
    assert!(body.contains("method_not_allowed"), "{body}");
    gw.stop();
    // With the mark off the daemon is ready.
    std::fs::write(&cfg, "[store]\ndisk_high_water_percent = 100\n").unwrap();
    let mut gw = Daemon::start(BIN, &data, "epoll", &["--config", cfg.to_str().unwrap()]);
    let (code, body) = curl(&[], &format!("http://127.0.0.1:{}/readyz", gw.http_port));
    assert_eq!(code, 200, "{body}");
    gw.stop();
}
