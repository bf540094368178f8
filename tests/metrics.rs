//! `GET /metrics` (issue 5): after a storescu load of N objects the exposition shows N
//! instances and their dataset bytes, and `promtool check metrics` (Debian package
//! `prometheus`) accepts it. Without promtool the format check is skipped with a message;
//! the rest still runs. Every daemon test runs under both I/O backends (`gwtest!`).

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dicom_gw::metrics::{Metrics, Snapshot};
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");

/// Objects in the load.
const N: u32 = 12;

/// How long the counters may take to reach their values after storescu returns (the last
/// response and the release are recorded just after they are sent).
const SETTLE: Duration = Duration::from_secs(10);

/// A response to a plain HTTP/1.1 GET.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on 127.0.0.1:port with `Connection: close`, over a raw socket (no HTTP client
/// dependency); understands `Content-Length` and chunked bodies.
fn http_get(port: u16, path: &str) -> HttpResponse {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot connect to the admin API on port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the HTTP response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP header terminator");
    let head = String::from_utf8(raw[..split].to_vec()).expect("ASCII headers");
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_field = std::str::from_utf8(&b[..eol]).unwrap();
        let size_hex = size_field.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_hex, 16).expect("hex chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// `name{labels}` → value of every sample line.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// Runs `promtool check metrics` on `text`: `Some(Ok(()))` if accepted, `Some(Err(output))`
/// if not, `None` if promtool is not installed.
fn promtool_check(text: &str) -> Option<Result<(), String>> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool runs");
    if out.status.success() {
        Some(Ok(()))
    } else {
        Some(Err(format!(
            "promtool check metrics: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Asserts promtool accepts `text`, or says clearly that the check was skipped.
fn assert_promtool_accepts(text: &str) {
    match promtool_check(text) {
        Some(Ok(())) => {}
        Some(Err(why)) => panic!("{why}\n--- exposition ---\n{text}"),
        None => eprintln!(
            "SKIPPED: promtool not found on PATH; the exposition was not checked with \
             `promtool check metrics` (install the Debian package `prometheus`)"
        ),
    }
}

/// Dataset length of a Part-10 file (bytes after the meta group): what goes on the wire
/// when storescu sends it in its own transfer syntax.
fn dataset_len(path: &Path) -> u64 {
    let i = parse_part10(path).unwrap_or_else(|e| panic!("{e}"));
    i.file_len - i.dataset_offset
}

/// Scrapes until `done` holds for the samples (or [`SETTLE`] passes); returns the last body.
fn scrape_until(port: u16, done: impl Fn(&BTreeMap<String, f64>) -> bool) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = http_get(port, "/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}\n{}", r.status, r.body);
        let ct = r.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
            "content type {ct:?}"
        );
        if done(&samples(&r.body)) || Instant::now() >= deadline {
            return r.body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary directory with `data/` (the daemon's) and `in/` (the files to send).
fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (data, input) = (tmp.path().join("data"), tmp.path().join("in"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&input).unwrap();
    (tmp, data, input)
}

gwtest!(metrics_after_storescu_load, |io: &str| {
    require_dcmtk();
    let (_tmp, data, input) = dirs();
    let mut gw = Daemon::start(BIN, &data, io, &[]);
    assert_ne!(
        gw.http_port,
        0,
        "the daemon printed no `dicom-gw: http listening on` line; stdout:\n{}",
        gw.stdout()
    );

    // Sizes from a few KiB to beyond one PDU, so datasets arrive in several fragments.
    let files: Vec<PathBuf> = (0..N)
        .map(|i| {
            let spec = ObjSpec::new(i).pixel_bytes(8_192 + u64::from(i) * 40_000);
            let f = input.join(format!("{i}.dcm"));
            gen_part10(&f, &spec).unwrap();
            f
        })
        .collect();
    let bytes: u64 = files.iter().map(|f| dataset_len(f)).sum();
    storescu(gw.port, &files, &storescu_flags_for(Ts::ExplicitLE)).assert_all_ok(&files);

    let n = f64::from(N);
    let released = "dicomgw_associations_total{service=\"store\",result=\"released\"}";
    let body = scrape_until(gw.http_port, |s| {
        s.get("dicomgw_cstore_duration_seconds_count") == Some(&n) && s.get(released) == Some(&1.0)
    });
    let s = samples(&body);
    let get = |k: &str| {
        *s.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in\n{body}"))
    };
    assert_eq!(get("dicomgw_instances_received_total"), n, "{body}");
    #[allow(clippy::cast_precision_loss)] // a few MB
    let expected_bytes = bytes as f64;
    assert_eq!(
        get("dicomgw_bytes_received_total"),
        expected_bytes,
        "{body}"
    );
    assert_eq!(get("dicomgw_cstore_total{status=\"success\"}"), n);
    assert_eq!(get("dicomgw_cstore_total{status=\"failure\"}"), 0.0);
    assert_eq!(get("dicomgw_cstore_duration_seconds_count"), n);
    assert_eq!(
        get("dicomgw_cstore_duration_seconds_bucket{le=\"+Inf\"}"),
        n
    );
    assert_eq!(get(released), 1.0);
    assert_eq!(get("dicomgw_associations_active{service=\"store\"}"), 0.0);
    // Every object went through a group commit (batches may hold several).
    assert_eq!(get("dicomgw_commit_batch_objects_sum"), n);
    assert!(get("dicomgw_commit_batch_objects_count") >= 1.0);
    assert_eq!(
        get(&format!("dicomgw_io_backend_info{{backend=\"{io}\"}}")),
        1.0
    );
    assert_eq!(
        get(&format!(
            "dicomgw_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(get("dicomgw_disk_free_bytes") > 0.0, "{body}");

    assert_promtool_accepts(&body);
    gw.stop();
});

/// The library's rendering with every family populated (destinations, queue, histograms)
/// passes promtool, independently of the daemon's wiring.
#[test]
fn rendered_exposition_passes_promtool() {
    use dicom_gw::queue::{DestinationStats, Outcome};
    let m = Metrics::new(2);
    let a = m.association_accepted(0, dicom_gw::metrics::Service::Store);
    m.association_rejected(1, dicom_gw::metrics::Service::Store, "local_limit");
    m.instance_received(0, 123_456);
    m.instance_received(1, 42);
    m.cstore_answered(
        0,
        dicom_gw::metrics::StatusClass::Success,
        Duration::from_millis(4),
    );
    m.cstore_answered(
        1,
        dicom_gw::metrics::StatusClass::Failure,
        Duration::from_secs(3),
    );
    m.commit_batch(17, Duration::from_millis(2));
    m.forward_results(
        "archive",
        [Outcome::Delivered, Outcome::Retry("x".into())]
            .iter()
            .filter_map(Outcome::counted),
    );
    m.destination("archive").observe(Duration::from_millis(12));
    let snapshot = Snapshot {
        queue: vec![
            DestinationStats {
                destination: "archive".into(),
                pending: 3,
                dead: 1,
                ..Default::default()
            },
            DestinationStats {
                destination: "research-pacs".into(),
                paused: true,
                ..Default::default()
            },
        ],
        disk_total_bytes: 500 << 30,
        disk_free_bytes: 200 << 30,
        io_backend: "epoll".into(),
    };
    let text = m.render(&snapshot);
    drop(a);
    assert_promtool_accepts(&text);
}

/// Forwarding shows up per destination: every object routed to a DCMTK storescp counts as
/// `delivered`, each C-STORE is in the latency histogram, the queue drains to zero, and the
/// exposition with destination labels still passes promtool.
#[test]
fn forwarding_metrics_per_destination() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let scp = DestScp::start_free(&tmp.path().join("archive"), &[]);
    let toml = dest_block("archive", scp.port, "") + &route_block("everything", "", &["archive"]);
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let files: Vec<PathBuf> = (0..N)
        .map(|i| {
            let f = input.join(format!("{i}.dcm"));
            gen_part10(&f, &ObjSpec::new(i)).unwrap();
            f
        })
        .collect();
    storescu(gw.port, &files, &storescu_flags_for(Ts::ExplicitLE)).assert_all_ok(&files);

    let n = f64::from(N);
    let delivered = "dicomgw_forward_total{destination=\"archive\",result=\"delivered\"}";
    let body = scrape_until(gw.http_port, |s| s.get(delivered) == Some(&n));
    let s = samples(&body);
    let get = |k: &str| {
        *s.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in\n{body}"))
    };
    assert_eq!(get(delivered), n, "{body}");
    assert_eq!(
        get("dicomgw_forward_total{destination=\"archive\",result=\"dead\"}"),
        0.0
    );
    assert_eq!(
        get("dicomgw_forward_duration_seconds_count{destination=\"archive\"}"),
        n
    );
    assert_eq!(
        get("dicomgw_queue_jobs{destination=\"archive\",state=\"pending\"}"),
        0.0
    );
    assert_eq!(get("dicomgw_queue_paused{destination=\"archive\"}"), 0.0);
    assert_promtool_accepts(&body);
    gw.stop();
}

// `[store] checkpoint_interval_ms` and `checkpoint_objects` reach the materializer: with a
// ten-minute interval and a threshold of two objects, one acknowledged object stays in the
// journal (`dicomgw_journal_pending_objects` 1, well past the default 250 ms interval) and
// the second starts the checkpoint at once (0 pending, one checkpoint of both).
gwtest!(checkpoint_settings_reach_the_materializer, |io: &str| {
    require_dcmtk();
    let (tmp, data, input) = dirs();
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[store]\ncheckpoint_interval_ms = 600000\ncheckpoint_objects = 2\n",
    )
    .unwrap();
    let mut gw = Daemon::start(BIN, &data, io, &["--config", cfg.to_str().unwrap()]);
    let files: Vec<PathBuf> = (0..2)
        .map(|i| {
            let f = input.join(format!("{i}.dcm"));
            gen_part10(&f, &ObjSpec::new(i).pixel_bytes(4_096)).unwrap();
            f
        })
        .collect();
    let pending = "dicomgw_journal_pending_objects";
    let checkpoints = "dicomgw_checkpoint_objects_count";

    storescu(gw.port, &files[..1], &storescu_flags_for(Ts::ExplicitLE)).assert_all_ok(&files[..1]);
    let body = scrape_until(gw.http_port, |s| s.get(pending) == Some(&1.0));
    assert_eq!(samples(&body).get(pending), Some(&1.0), "{body}");
    // Six default intervals later it still waits for its checkpoint.
    std::thread::sleep(Duration::from_millis(1_500));
    let s = samples(&http_get(gw.http_port, "/metrics").body);
    assert_eq!(
        s.get(pending),
        Some(&1.0),
        "checkpointed before the threshold"
    );
    assert_eq!(s.get(checkpoints), Some(&0.0));

    storescu(gw.port, &files[1..], &storescu_flags_for(Ts::ExplicitLE)).assert_all_ok(&files[1..]);
    let body = scrape_until(gw.http_port, |s| {
        s.get(pending) == Some(&0.0) && s.get(checkpoints) == Some(&1.0)
    });
    let s = samples(&body);
    assert_eq!(s.get(pending), Some(&0.0), "{body}");
    assert_eq!(s.get(checkpoints), Some(&1.0), "{body}");
    assert_eq!(
        s.get("dicomgw_checkpoint_objects_sum"),
        Some(&2.0),
        "{body}"
    );
    gw.stop();
});
