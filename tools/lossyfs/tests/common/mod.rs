//! What the end-to-end tests on lossyfs share: the daemon as a child process, the mount.

#![allow(dead_code)] // each test binary uses its part

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dicom_loadgen::dataset::Ts;
use dicom_loadgen::run::RunConfig;
use dicom_loadgen::synth::{SizeMix, SynthSpec, UidRoot, CT_IMAGE_STORAGE};
use lossyfs::Lossy;

/// Synthetic explicit-VR CT objects of the `sizes` mix under UID root `root`.
pub fn ct_spec(root: &str, sizes: &str, series_size: u64, series_per_study: u64) -> SynthSpec {
    SynthSpec {
        root: UidRoot::new(root).unwrap(),
        ts: Ts::ExplicitLe,
        sop_class: CT_IMAGE_STORAGE.to_owned(),
        modality: "CT".to_owned(),
        sizes: SizeMix::parse(sizes).unwrap(),
        series_size,
        series_per_study,
    }
}

/// A closed-loop C-STORE run against the daemon's `port` that records what was acknowledged;
/// no count and no duration yet (the caller sets one).
pub fn store_config(port: u16, calling: &str, concurrency: usize) -> RunConfig {
    RunConfig {
        addr: ([127, 0, 0, 1], port).into(),
        calling: calling.to_owned(),
        called: "DICOM_GW".to_owned(),
        concurrency,
        count: None,
        duration: None,
        rate: None,
        per_association: None,
        timeout: Duration::from_secs(10),
        max_pdu: 262_144,
        record_sent: true,
        tls: None,
    }
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// The dicom-gw binary: `$DICOM_GW_BIN`, else `dicom-gw` in the directory above this test
/// executable's `deps/`.
pub fn gw_bin() -> PathBuf {
    let p = std::env::var_os("DICOM_GW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("dicom-gw")
        });
    assert!(
        p.is_file(),
        "dicom-gw binary not found at {} — build it with `cargo build -p dicom-gw` or set \
         DICOM_GW_BIN",
        p.display()
    );
    p
}

/// A running `dicom-gw serve`.
pub struct Gw {
    pub port: u16,
    pub http_port: u16,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Gw {
    pub fn start(data: &Path, preload: Option<(&Path, &Path)>, config: Option<&Path>) -> Gw {
        let mut cmd = Command::new(gw_bin());
        cmd.args(["serve", "--data-dir"])
            .arg(data)
            // Small journal segments: the ring is preallocated through FUSE.
            .env("DICOM_GW_JOURNAL_SEGMENT_MIB", "4")
            .args(["--store-listen", "127.0.0.1:0", "--io", "epoll"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--worklist-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        if let Some((shim, ctl)) = preload {
            cmd.env("LD_PRELOAD", shim).env("LOSSYFS_CTL", ctl);
        }
        let mut child = cmd.spawn().expect("spawn dicom-gw");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (e, mut pipe) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let port_of = |rest: &str| -> Option<u16> {
            let addr = rest.split_whitespace().next()?;
            addr.rsplit_once(':')?.1.parse().ok()
        };
        let mut http_port = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("dicom-gw: http listening on ") {
                        http_port = port_of(rest);
                    } else if let Some(rest) = line.strip_prefix("dicom-gw: store listening on ") {
                        return Gw {
                            port: port_of(rest).expect("store port"),
                            http_port: http_port.expect("http line before the ready line"),
                            child,
                            stderr,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "dicom-gw did not print its ready line on {}; stderr:\n{}",
                        data.display(),
                        String::from_utf8_lossy(&stderr.lock().unwrap())
                    );
                }
            }
        }
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and a clean exit within 30 s.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(
                    s.success(),
                    "dicom-gw exited {s}; stderr:\n{}",
                    self.stderr()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dicom-gw did not stop within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for the daemon to exit on its own: its exit status, or None if it
    /// still runs.
    pub fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the admin API (HTTP/1.0, so the body is not chunked): status and body.
    pub fn get(&self, path: &str, token: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        (status, body.to_owned())
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// lossyfs mounted on a temporary directory.
pub struct Mounted {
    pub fs: Lossy,
    dir: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    pub fn new(dir: &Path) -> Mounted {
        Mounted::with(Lossy::new(), dir)
    }

    /// Mounts `fs` on `dir`.
    pub fn with(fs: Lossy, dir: &Path) -> Mounted {
        let session = fs
            .mount(dir)
            .unwrap_or_else(|e| panic!("cannot mount lossyfs on {}: {e}", dir.display()));
        Mounted {
            fs,
            dir: dir.to_owned(),
            session: Some(session),
        }
    }

    /// Unmounts and mounts the (durable) state again, with the power on.
    pub fn remount(&mut self) {
        if let Some(s) = self.session.take() {
            lossyfs::unmount(s).expect("unmount lossyfs");
        }
        self.fs.power_on();
        self.session = Some(self.fs.mount(&self.dir).expect("mount lossyfs again"));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = lossyfs::unmount(s);
        }
    }
}

/// `dicom-gw token create --role viewer` (daemon stopped).
pub fn viewer_token(data: &Path) -> String {
    let out = Command::new(gw_bin())
        .args(["token", "create", "--data-dir"])
        .arg(data)
        .args(["--role", "viewer", "--name", "power-cut"])
        .output()
        .unwrap();
    assert!(out.status.success(), "token create: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .expect("token create prints the token")
        .to_owned()
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
