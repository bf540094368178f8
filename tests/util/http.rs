//! A few lines of HTTP/1.1 over `TcpStream` for the admin API tests (no HTTP dependency, so
//! request targets, headers and bodies go out exactly as written; bounded by timeouts).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// Bound on one HTTP exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP response (a chunked body already decoded).
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// "METHOD target", for messages.
    pub what: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, asserting the status first.
    #[track_caller]
    pub fn ok(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}: expected {status}, got {}:\n{}",
            self.what,
            self.status,
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}):\n{}", self.what, self.text()))
    }
}

/// Sends one request (`Connection: close`) to 127.0.0.1:`port` with the target exactly as
/// given; `body` is (content type, bytes).
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Resp {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to the admin API on port {port}: {e}"));
    s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some((ct, b)) = body {
        head.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some((_, b)) = body {
        // The server may answer (413) and close before reading a large body.
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {target}: reading the response: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {target}: no header end in {raw:?}"));
    let head = String::from_utf8(raw[..split].to_vec()).expect("ASCII headers");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
        what: format!("{method} {target}"),
    }
}

/// Decodes a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&raw[..eol]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("hex chunk size");
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// [`request`] with an optional DICOM JSON body; returns the status and the body parsed as
/// JSON (a JSON string holding the text if it is not JSON).
pub fn http_json(
    port: u16,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let r = request(
        port,
        method,
        target,
        token,
        body.as_deref()
            .map(|b| ("application/dicom+json", b.as_bytes())),
    );
    let json = serde_json::from_slice(&r.body).unwrap_or_else(|_| Value::String(r.text()));
    (r.status, json)
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
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["token", "create", "--data-dir"])
        .arg(data_dir)
        .args(["--role", role, "--name", &format!("test-{role}")]);
    let (out, timed_out) = super::run_timeout(&mut cmd, HTTP_TIMEOUT);
    assert!(
        !timed_out,
        "token create did not finish within {HTTP_TIMEOUT:?}"
    );
    assert!(out.status.success(), "token create: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .expect("token create prints the token")
        .to_owned()
}
