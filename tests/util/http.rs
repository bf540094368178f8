//! A few lines of HTTP/1.1 over `TcpStream` for tests that only need JSON calls to the admin
//! API (no HTTP dependency; bounded by a timeout).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// `METHOD target` on 127.0.0.1:`port` with an optional bearer token and JSON body; returns
/// the status and the body parsed as JSON (a JSON string holding the text if it is not JSON).
pub fn http_json(
    port: u16,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to the admin API on port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/dicom+json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {target}: no header end"));
    let status = String::from_utf8_lossy(&raw[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let json = serde_json::from_slice(&raw[split + 4..])
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw[split + 4..]).into_owned()));
    (status, json)
}

/// The value of one sample (`name{labels}` exactly as exposed) in `GET /metrics`.
pub fn metric_value(http_port: u16, sample: &str) -> Option<f64> {
    let (code, body) = http_json(http_port, "GET", "/metrics", None, None);
    assert_eq!(code, 200);
    let text = body.as_str().unwrap_or_default().to_owned();
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `dicom-gw token create --data-dir DIR --role ROLE`: the token (the last word printed).
pub fn cli_token(bin: &str, data_dir: &std::path::Path, role: &str) -> String {
    let out = std::process::Command::new(bin)
        .args(["token", "create", "--data-dir"])
        .arg(data_dir)
        .args(["--role", role, "--name", &format!("test-{role}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "token create: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .expect("a token")
        .to_owned()
}
