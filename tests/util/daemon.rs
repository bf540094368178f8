//! Running the dicom-gw daemon under test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::dcmtk::{drain, join_within, wait_timeout};

/// Prefix of the stdout line giving the admin API's address (printed before the ready line).
pub const HTTP_PREFIX: &str = "dicom-gw: http listening on ";
/// Prefix of the stdout line the daemon prints once it is ready.
pub const READY_PREFIX: &str = "dicom-gw: store listening on ";
/// Prefix of the worklist service's line (the ready line itself with `--only worklist`).
pub const WORKLIST_PREFIX: &str = "dicom-gw: worklist listening on ";
/// Prefix of the store service's DICOM TLS listener line (printed before the ready line).
pub const STORE_TLS_PREFIX: &str = "dicom-gw: store tls listening on ";
/// Prefix of the worklist service's DICOM TLS listener line (printed before the ready line).
pub const WORKLIST_TLS_PREFIX: &str = "dicom-gw: worklist tls listening on ";
/// How long start-up and graceful shutdown may take.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `dicom-gw serve`; SIGKILLed on drop (its stderr is printed if
/// the test is panicking).
pub struct Daemon {
    /// Store SCP port parsed from the ready line.
    pub port: u16,
    /// Admin API port (from the `http listening` line; 0 if the daemon printed none).
    pub http_port: u16,
    /// Worklist service port (from the `worklist listening` line; 0 if none, e.g. with
    /// `--only store`).
    pub worklist_port: u16,
    /// Store service's DICOM TLS port (from the `store tls listening` line; 0 if none).
    pub tls_port: u16,
    /// Worklist service's DICOM TLS port (from the `worklist tls listening` line; 0 if none).
    pub worklist_tls_port: u16,
    /// Process id.
    pub pid: u32,
    /// The `--data-dir` it was started with.
    pub data_dir: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Starts `BIN serve --data-dir DIR --store-listen 127.0.0.1:0 --io IO --http-listen
    /// 127.0.0.1:0 --worklist-listen 127.0.0.1:0 [extra_args]` and waits (30 s) for the ready line. Panics with the
    /// daemon's stderr if it exits or times out first.
    pub fn start(
        bin: impl AsRef<Path>,
        data_dir: impl AsRef<Path>,
        io: &str,
        extra_args: &[&str],
    ) -> Daemon {
        Daemon::try_start(bin, data_dir, io, extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Daemon::start`] but returns the failure (exit status, stdout,
    /// stderr in the message) instead of panicking, for negative tests.
    pub fn try_start(
        bin: impl AsRef<Path>,
        data_dir: impl AsRef<Path>,
        io: &str,
        extra_args: &[&str],
    ) -> Result<Daemon, String> {
        let dir = data_dir.as_ref();
        let mut args: Vec<std::ffi::OsString> = vec![
            "serve".into(),
            "--data-dir".into(),
            dir.into(),
            "--store-listen".into(),
            "127.0.0.1:0".into(),
            "--io".into(),
            io.into(),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--worklist-listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra_args.iter().map(|a| a.into()));
        Daemon::spawn(bin.as_ref(), &args, dir)
    }

    /// Spawns `bin` with exactly `args` and waits for the ready line (30 s): the store line,
    /// or with `--only worklist` the worklist line.
    pub fn spawn(
        bin: &Path,
        args: &[std::ffi::OsString],
        data_dir: &Path,
    ) -> Result<Daemon, String> {
        let mut child = Command::new(bin)
            .args(args)
            // Small journal segments: test daemons start by the hundred.
            .env("DICOM_GW_JOURNAL_SEGMENT_MIB", "4")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", bin.display()))?;
        let pid = child.id();
        let worklist_only = args
            .windows(2)
            .any(|w| w[0] == "--only" && w[1] == "worklist");
        let (stderr, he) = drain(child.stderr.take().unwrap());
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let (so, pipe) = (stdout.clone(), child.stdout.take().unwrap());
        let ho = std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        so.lock().unwrap().extend_from_slice(&line);
                        let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_string());
                    }
                }
            }
        });
        let mut d = Daemon {
            port: 0,
            http_port: 0,
            worklist_port: 0,
            tls_port: 0,
            worklist_tls_port: 0,
            pid,
            data_dir: data_dir.to_path_buf(),
            child,
            exited: None,
            stdout,
            stderr,
            threads: vec![ho, he],
        };
        let deadline = std::time::Instant::now() + DAEMON_TIMEOUT;
        let why = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let port_of = |addr: &str| {
                        addr.split_whitespace()
                            .next()
                            .and_then(|a| a.rsplit_once(':'))
                            .and_then(|(_, p)| p.parse().ok())
                            .unwrap_or(0)
                    };
                    if let Some(addr) = line.strip_prefix(STORE_TLS_PREFIX) {
                        d.tls_port = port_of(addr);
                    }
                    if let Some(addr) = line.strip_prefix(WORKLIST_TLS_PREFIX) {
                        d.worklist_tls_port = port_of(addr);
                    }
                    if let Some(addr) = line.strip_prefix(HTTP_PREFIX) {
                        d.http_port = addr
                            .split_whitespace()
                            .next()
                            .and_then(|a| a.rsplit_once(':'))
                            .and_then(|(_, p)| p.parse().ok())
                            .unwrap_or(0);
                    }
                    if let Some(addr) = line.strip_prefix(WORKLIST_PREFIX) {
                        d.worklist_port = addr
                            .split_whitespace()
                            .next()
                            .and_then(|a| a.rsplit_once(':'))
                            .and_then(|(_, p)| p.parse().ok())
                            .unwrap_or(0);
                        if worklist_only {
                            if d.worklist_port == 0 {
                                break format!("unparsable worklist line {line:?}");
                            }
                            return Ok(d);
                        }
                    }
                    if let Some(addr) = line.strip_prefix(READY_PREFIX) {
                        // "ADDR:PORT (io=BACKEND)": the address is the first word.
                        let addr = addr.split_whitespace().next().unwrap_or("");
                        match addr
                            .rsplit_once(':')
                            .and_then(|(_, p)| p.trim().parse::<u16>().ok())
                        {
                            Some(p) if p != 0 => {
                                d.port = p;
                                return Ok(d);
                            }
                            _ => break format!("unparsable ready line {line:?}"),
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break format!("no ready line within {DAEMON_TIMEOUT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break "stdout closed before ready line".into()
                }
            }
        };
        let status = match wait_timeout(&mut d.child, Duration::from_secs(2)) {
            Some(s) => s,
            None => d.kill9(),
        };
        d.exited = Some(status);
        for h in d.threads.drain(..) {
            join_within(h, Duration::from_secs(2));
        }
        Err(format!(
            "dicom-gw failed to start ({why}; exit: {status})\nargs: {args:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            d.stdout(),
            d.stderr()
        ))
    }

    /// The worklist service's address, 127.0.0.1:port.
    pub fn worklist_addr(&self) -> String {
        format!("127.0.0.1:{}", self.worklist_port)
    }

    /// 127.0.0.1:port as a string.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything the daemon wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Everything the daemon wrote to stderr (its logs) so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Sends signal `sig` (e.g. `libc::SIGHUP`) to the daemon.
    pub fn signal(&self, sig: i32) {
        if self.exited.is_none() {
            // SAFETY: plain kill(2) on our own child's pid, which is not yet reaped.
            unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => {
                self.exited = Some(s);
                false
            }
            _ => true,
        }
    }

    /// Waits up to `timeout` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let s = wait_timeout(&mut self.child, timeout)?;
        self.exited = Some(s);
        self.join_output();
        Some(s)
    }

    /// SIGTERM, then waits up to 30 s and returns the exit status; if it
    /// does not exit, SIGKILLs it and panics with its stderr.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(DAEMON_TIMEOUT) {
            Some(s) => s,
            None => {
                self.kill9();
                panic!(
                    "dicom-gw did not exit within {DAEMON_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// [`Daemon::terminate`] and panic (with stderr) unless the exit code is 0.
    pub fn stop(&mut self) {
        let s = self.terminate();
        assert!(
            s.code() == Some(0),
            "dicom-gw exited with {s} after SIGTERM; stderr:\n{}",
            self.stderr()
        );
    }

    /// SIGKILL (crash simulation); returns the exit status once reaped.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let _ = self.child.kill();
        let s = self.child.wait().expect("wait after SIGKILL");
        self.exited = Some(s);
        self.join_output();
        s
    }

    /// Waits (bounded) for the output drain threads after exit.
    fn join_output(&mut self) {
        for h in self.threads.drain(..) {
            join_within(h, Duration::from_secs(5));
        }
    }
}

impl Drop for Daemon {
    /// Kills the daemon if still running; dumps its stderr when the test panics.
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.exited = Some(ExitStatus::default());
            self.join_output();
        }
        if std::thread::panicking() {
            let e = self.stderr();
            let mut start = e.len().saturating_sub(20_000);
            while !e.is_char_boundary(start) {
                start += 1;
            }
            let tail = &e[start..];
            eprintln!(
                "--- dicom-gw (pid {}) stderr tail ---\n{tail}\n--- end ---",
                self.pid
            );
        }
    }
}

/// Peak resident set size (VmHWM, KiB) of a live process; panics if
/// unavailable (e.g. the process already exited; read it before terminate).
pub fn vm_hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// Current resident set size (VmRSS, KiB) of a live process.
pub fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Reads a "Key:   N kB" line from /proc/PID/status.
fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status (process exited?)"))
}
