//! Helpers for the dicom-loadgen integration tests: running the binary with a timeout, DCMTK
//! peers on free 127.0.0.1 ports, and the dicom-gw daemon.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Timeout for one dicom-loadgen or DCMTK tool run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Path of the dicom-loadgen binary under test.
pub fn loadgen_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dicom-loadgen")
}

/// Runs `cmd` to completion, killing it after `timeout` (then panics with its output).
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ho = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let he = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&he.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: ho.join().unwrap(),
        stderr: he.join().unwrap(),
    }
}

/// Runs `dicom-loadgen ARGS` (2 minutes at most).
pub fn loadgen(args: &[&str]) -> Output {
    run_timeout(Command::new(loadgen_bin()).args(args), RUN_TIMEOUT)
}

/// stdout + stderr of an output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}\n{s}", path.display()))
}

/// Panics with an install hint unless the DCMTK tools are on PATH.
pub fn require_tools(tools: &[&str]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<_> = tools
        .iter()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    assert!(
        missing.is_empty(),
        "DCMTK not installed: apt-get install dcmtk (missing: {missing:?})"
    );
}

/// A currently free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The socket inodes listening on TCP `port` (from /proc/net/tcp*, without connecting).
fn listening_inodes(port: u16) -> Vec<String> {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A").then(|| f[9].to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// True if a socket listens on TCP `port` (from /proc/net/tcp*, without connecting).
pub fn is_listening(port: u16) -> bool {
    !listening_inodes(port).is_empty()
}

/// True if process `pid` itself holds a socket listening on TCP `port`: a port taken from
/// `free_port` can be handed to a parallel test too, whose peer's listener must not count.
pub fn pid_listens(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| {
            let t = t.to_string_lossy();
            inodes.iter().any(|i| t == format!("socket:[{i}]"))
        })
    })
}

/// A DCMTK server process (storescp, wlmscpfs), killed on drop.
pub struct Peer {
    /// Its port.
    pub port: u16,
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Peer {
    /// Starts `tool ARGS PORT` on a free port with TCP_NODELAY=1 and waits (10 s) until it
    /// listens; retries with another port if it exits (port taken meanwhile).
    pub fn start(tool: &str, args: &[&str]) -> Peer {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(tool)
                .args(args)
                .arg(port.to_string())
                .env("TCP_NODELAY", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {tool}: {e} (apt-get install dcmtk)"));
            let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            for mut r in [
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                Box::new(child.stderr.take().unwrap()),
            ] {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(st)) = child.try_wait() {
                    last = format!(
                        "{tool} exited {st}: {}",
                        String::from_utf8_lossy(&log.lock().unwrap())
                    );
                    break;
                }
                if pid_listens(child.id(), port) {
                    return Peer { port, child, log };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("{tool} did not listen within 10 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("could not start {tool}: {last}");
    }

    /// 127.0.0.1:PORT.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dicom-gw binary: `$DICOM_GW_BIN`, else `<workspace>/target/debug/dicom-gw`. Panics
/// with the build command when it is absent.
pub fn gw_bin() -> PathBuf {
    let p = std::env::var_os("DICOM_GW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/dicom-gw")
        });
    assert!(
        p.is_file(),
        "dicom-gw binary not found at {} — build it with `cargo build -p dicom-gw` or set \
         DICOM_GW_BIN",
        p.display()
    );
    p
}

/// A running `dicom-gw serve`, SIGKILLed on drop.
pub struct Gw {
    /// Store port from the ready line.
    pub port: u16,
    /// Worklist port from the `worklist listening` line (printed before the ready line).
    pub worklist_port: u16,
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

/// Prefix of the line dicom-gw prints on stdout when ready.
const READY: &str = "dicom-gw: store listening on ";

impl Gw {
    /// Starts `dicom-gw serve --data-dir DIR --store-listen 127.0.0.1:0 --io epoll
    /// --http-listen 127.0.0.1:0 --worklist-listen 127.0.0.1:0` and waits
    /// (30 s) for its ready line.
    pub fn start(data_dir: &Path) -> Gw {
        let mut child = Command::new(gw_bin())
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--store-listen", "127.0.0.1:0", "--io", "epoll"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--worklist-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dicom-gw");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
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
        let mut worklist_port = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("dicom-gw: worklist listening on ") {
                        worklist_port = port_of(rest);
                    } else if let Some(rest) = line.strip_prefix(READY) {
                        let port =
                            port_of(rest).unwrap_or_else(|| panic!("bad ready line {line:?}"));
                        return Gw {
                            port,
                            worklist_port: worklist_port
                                .expect("worklist line before the store ready line"),
                            child,
                            stderr,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "dicom-gw did not print its ready line; stderr:\n{}",
                        String::from_utf8_lossy(&stderr.lock().unwrap())
                    );
                }
            }
        }
    }

    /// 127.0.0.1:PORT.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM and wait (30 s) for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(
                    s.success(),
                    "dicom-gw exited {s}; stderr:\n{}",
                    String::from_utf8_lossy(&self.stderr.lock().unwrap())
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
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every regular file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
