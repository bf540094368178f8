//! Wrappers around the DCMTK command line tools used as test peers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::part10::{dataset_bytes, meta_ts, parse_part10};

/// Default timeout for one storescu run (big objects included).
pub const STORESCU_TIMEOUT: Duration = Duration::from_secs(300);
/// Timeout for echoscu and the file conversion tools.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Transfer syntaxes the tests exercise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ts {
    /// 1.2.840.10008.1.2
    ImplicitLE,
    /// 1.2.840.10008.1.2.1
    ExplicitLE,
    /// 1.2.840.10008.1.2.2 (retired, still accepted by DCMTK)
    ExplicitBE,
    /// 1.2.840.10008.1.2.1.99
    Deflated,
    /// 1.2.840.10008.1.2.4.70 (JPEG Lossless, process 14, SV1)
    JpegLossless,
}

impl Ts {
    /// All five, in a stable order.
    pub const ALL: [Ts; 5] = [
        Ts::ImplicitLE,
        Ts::ExplicitLE,
        Ts::ExplicitBE,
        Ts::Deflated,
        Ts::JpegLossless,
    ];

    /// The transfer syntax UID.
    pub fn uid(self) -> &'static str {
        match self {
            Ts::ImplicitLE => "1.2.840.10008.1.2",
            Ts::ExplicitLE => "1.2.840.10008.1.2.1",
            Ts::ExplicitBE => "1.2.840.10008.1.2.2",
            Ts::Deflated => "1.2.840.10008.1.2.1.99",
            Ts::JpegLossless => "1.2.840.10008.1.2.4.70",
        }
    }

    /// Inverse of [`Ts::uid`].
    pub fn from_uid(uid: &str) -> Option<Ts> {
        Ts::ALL.into_iter().find(|t| t.uid() == uid)
    }
}

/// Spawns a thread copying `r` into a shared buffer until EOF, so a child's
/// pipe never fills up. Returns the buffer and the thread handle.
pub fn drain<R: Read + Send + 'static>(mut r: R) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b2 = buf.clone();
    let h = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => b2.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    (buf, h)
}

/// Polls `child.try_wait()` until it exits or `timeout` passes (None).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(e) => panic!("waitpid({}) failed: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Joins a drain thread, giving up after `timeout` (a grandchild may hold the pipe).
pub fn join_within(h: JoinHandle<()>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if h.is_finished() {
        let _ = h.join();
    }
}

/// Runs `cmd` with stdout/stderr captured; SIGKILLs it after `timeout`.
/// Returns (output, timed_out). Panics if the program cannot be started.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> (Output, bool) {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {desc}: {e} (DCMTK installed? apt-get install dcmtk)")
        });
    let (out, ho) = drain(child.stdout.take().unwrap());
    let (err, he) = drain(child.stderr.take().unwrap());
    let (status, timed_out) = match wait_timeout(&mut child, timeout) {
        Some(s) => (s, false),
        None => {
            let _ = child.kill();
            (child.wait().expect("wait after kill"), true)
        }
    };
    join_within(ho, Duration::from_secs(5));
    join_within(he, Duration::from_secs(5));
    let stdout = std::mem::take(&mut *out.lock().unwrap());
    let stderr = std::mem::take(&mut *err.lock().unwrap());
    (
        Output {
            status,
            stdout,
            stderr,
        },
        timed_out,
    )
}

/// Runs a conversion tool and panics with its output unless it exits 0.
fn run_tool(prog: &str, args: &[&std::ffi::OsStr]) {
    let (out, timed_out) = run_timeout(Command::new(prog).args(args), TOOL_TIMEOUT);
    if timed_out || !out.status.success() {
        panic!(
            "{prog} {args:?} failed ({}{}):\n{}{}",
            out.status,
            if timed_out { ", timed out" } else { "" },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Converts `src` to `dst` in transfer syntax `ts` with dcmconv (+ti/+te/+tb/+td)
/// or dcmcjpeg (default: lossless process 14 SV1). Checks the output's meta
/// TS and returns it. Deflated output of odd dataset length gets one trailing
/// 0x00, because DCMTK pads odd deflated streams on the wire: with it the
/// file's dataset bytes equal what storescu actually sends.
pub fn convert_ts(src: impl AsRef<Path>, dst: impl AsRef<Path>, ts: Ts) -> String {
    let (src, dst) = (src.as_ref().as_os_str(), dst.as_ref());
    match ts {
        Ts::JpegLossless => run_tool("dcmcjpeg", &[src, dst.as_os_str()]),
        _ => {
            let flag = match ts {
                Ts::ImplicitLE => "+ti",
                Ts::ExplicitLE => "+te",
                Ts::ExplicitBE => "+tb",
                _ => "+td",
            };
            run_tool("dcmconv", &[flag.as_ref(), src, dst.as_os_str()])
        }
    }
    if ts == Ts::Deflated {
        let info = parse_part10(dst).unwrap_or_else(|e| panic!("dcmconv output unreadable: {e}"));
        if (info.file_len - info.dataset_offset) % 2 == 1 {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(dst).unwrap();
            f.write_all(&[0]).unwrap();
        }
    }
    let got = meta_ts(dst);
    assert_eq!(
        got,
        ts.uid(),
        "conversion of {src:?} to {ts:?} produced TS {got}"
    );
    got
}

/// storescu flags that make it send a file of transfer syntax `ts`
/// verbatim (no re-encoding) to OUR SCP, which accepts the FIRST proposed TS
/// of each presentation context. Found experimentally (DCMTK 3.6.7):
/// `-R` proposes only the files' SOP classes (not ~120 storage classes), and
/// storescu then proposes two contexts per SOP class: [preferred] alone and
/// [the other uncompressed TSs]. `-x?` picks the preferred one, so context 1
/// is exactly [ts]; storescu picks the accepted context whose TS equals the
/// file's TS and sends it unchanged (dataset bytes identical, checked
/// against `storescp +B`). Without the right `-x?` storescu silently
/// converts (e.g. an Implicit file goes out as Explicit LE), and it cannot
/// decompress JPEG at all (store fails with 0006:020e, no response).
/// Use one storescu run per TS: with `-xd` every uncompressed file is
/// deflated, with `-xi` everything is sent implicit. Note: DCMTK's own
/// storescp picks by ITS preference list, not proposal order (with `+C -xb`
/// it accepts Explicit LE, ours accepts Big Endian), and it rejects
/// deflated/JPEG unless started with +xa/+xd/+xs.
pub fn storescu_flags_for(ts: Ts) -> Vec<&'static str> {
    let x = match ts {
        Ts::ImplicitLE => "-xi",
        Ts::ExplicitLE => "-xe",
        Ts::ExplicitBE => "-xb",
        Ts::Deflated => "-xd",
        Ts::JpegLossless => "-xs",
    };
    vec!["-R", x]
}

/// Outcome of one file in a storescu run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileResponse {
    /// The path as storescu printed it after "Sending file: ".
    pub file: PathBuf,
    /// DIMSE status of the C-STORE-RSP; None if no response was received
    /// (e.g. send failed, association aborted).
    pub status: Option<u16>,
}

/// Result of [`storescu`].
#[derive(Debug)]
pub struct StoreResult {
    /// storescu's exit status (DCMTK 3.6.7: 0 ok, 167 after a 0xA7xx
    /// failure with default halt, 1 if the association failed, ...).
    pub status: ExitStatus,
    /// True if the helper had to kill storescu after the timeout.
    pub timed_out: bool,
    /// storescu's log (stderr) followed by its stdout.
    pub output: String,
    /// One entry per "Sending file:" line, in order.
    pub responses: Vec<FileResponse>,
    /// Files that got a Success (0x0000) response.
    pub succeeded: Vec<PathBuf>,
}

impl StoreResult {
    /// Status of the last response for `file` (None: not sent / no response).
    pub fn status_of(&self, file: impl AsRef<Path>) -> Option<u16> {
        self.responses
            .iter()
            .rev()
            .find(|r| r.file == file.as_ref())
            .and_then(|r| r.status)
    }

    /// Panics with storescu's output unless every file in `files` got 0x0000
    /// and storescu exited 0.
    pub fn assert_all_ok<P: AsRef<Path>>(&self, files: &[P]) {
        let bad: Vec<_> = files
            .iter()
            .filter(|f| self.status_of(f) != Some(0))
            .map(|f| (f.as_ref().to_path_buf(), self.status_of(f)))
            .collect();
        if !bad.is_empty() || !self.status.success() {
            panic!(
                "storescu: {} (timed out: {}); files without success: {bad:?}\n--- output ---\n{}",
                self.status, self.timed_out, self.output
            );
        }
    }
}

/// Maps storescu's -v status text (DU_cstoreStatusString) to a
/// representative code; the exact code needs -d (which storescu() uses).
fn status_from_text(t: &str) -> Option<u16> {
    if let Some(h) = t.split("0x").nth(1) {
        return u16::from_str_radix(h.trim_end_matches(')').trim(), 16).ok();
    }
    Some(match t {
        "Success" => 0x0000,
        "Refused: OutOfResources" => 0xA700,
        "Refused: SOPClassNotSupported" => 0x0122,
        "Error: DataSetDoesNotMatchSOPClass" => 0xA900,
        "Error: CannotUnderstand" => 0xC000,
        "Warning: Coercion" | "Warning: CoercionOfDataElements" => 0xB000,
        "Warning: ElementsDiscarded" => 0xB006,
        "Warning: DataSetDoesNotMatchSOPClass" => 0xB007,
        _ => return None,
    })
}

/// Parses storescu's log: maps each "Sending file: X" to the status of the
/// following C-STORE response ("DIMSE Status : 0xa700: ..." with -d, or
/// "Received Store Response (Success)" with -v).
pub fn parse_storescu_log(log: &str) -> Vec<FileResponse> {
    let mut out: Vec<FileResponse> = Vec::new();
    for line in log.lines() {
        if let Some(i) = line.find("Sending file: ") {
            let f = &line[i + "Sending file: ".len()..];
            out.push(FileResponse {
                file: PathBuf::from(f),
                status: None,
            });
        } else if let Some(cur) = out.last_mut() {
            if cur.status.is_some() {
                continue;
            }
            if line.contains("DIMSE Status") {
                if let Some(h) = line.split("0x").nth(1) {
                    cur.status = u16::from_str_radix(&h[..h.len().min(4)], 16).ok();
                }
            } else if let Some(i) = line.find("Received Store Response (") {
                let t = line[i + "Received Store Response (".len()..].trim_end();
                cur.status = status_from_text(t.strip_suffix(')').unwrap_or(t));
            }
        }
    }
    out
}

/// Runs `storescu -d -aec DICOM_GW [extra_args] 127.0.0.1 PORT files...`
/// (extra args come after the defaults, so e.g. `-aec X` overrides) with
/// [`STORESCU_TIMEOUT`]. Note storescu halts after the first failed store
/// unless `-nh` is given; files never sent have no entry in `responses`.
pub fn storescu<P: AsRef<Path>>(port: u16, files: &[P], extra_args: &[&str]) -> StoreResult {
    storescu_timeout(port, files, extra_args, STORESCU_TIMEOUT)
}

/// [`storescu`] with an explicit timeout.
pub fn storescu_timeout<P: AsRef<Path>>(
    port: u16,
    files: &[P],
    extra_args: &[&str],
    timeout: Duration,
) -> StoreResult {
    let mut cmd = Command::new("storescu");
    cmd.args(["-d", "-aec", "DICOM_GW"])
        .args(extra_args)
        .arg("127.0.0.1")
        .arg(port.to_string());
    for f in files {
        cmd.arg(f.as_ref());
    }
    let (out, timed_out) = run_timeout(&mut cmd, timeout);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let responses = parse_storescu_log(&log);
    let succeeded = responses
        .iter()
        .filter(|r| r.status == Some(0))
        .map(|r| r.file.clone())
        .collect();
    StoreResult {
        status: out.status,
        timed_out,
        output: log + &String::from_utf8_lossy(&out.stdout),
        responses,
        succeeded,
    }
}

/// Runs `echoscu -v -aec DICOM_GW [extra_args] 127.0.0.1 PORT` (killed
/// after [`TOOL_TIMEOUT`]). Success: `output.status.success()`.
pub fn echoscu(port: u16, extra_args: &[&str]) -> Output {
    let mut cmd = Command::new("echoscu");
    cmd.args(["-v", "-aec", "DICOM_GW"])
        .args(extra_args)
        .arg("127.0.0.1")
        .arg(port.to_string());
    run_timeout(&mut cmd, TOOL_TIMEOUT).0
}

/// True if DCMTK's dcmftest says `path` is a valid Part-10 file.
pub fn dcmftest(path: impl AsRef<Path>) -> bool {
    let (out, _) = run_timeout(Command::new("dcmftest").arg(path.as_ref()), TOOL_TIMEOUT);
    out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("yes:")
}

/// `dcmdump` output of `path` (for diagnostics and tag checks); panics on failure.
pub fn dcmdump(path: impl AsRef<Path>) -> String {
    let (out, _) = run_timeout(Command::new("dcmdump").arg(path.as_ref()), TOOL_TIMEOUT);
    assert!(
        out.status.success(),
        "dcmdump {} failed: {}",
        path.as_ref().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics with "DCMTK not installed: apt-get install dcmtk" if any DCMTK
/// tool the tests need is not on PATH (tests must never pass without peers).
pub fn require_dcmtk() {
    let tools = [
        "storescu", "storescp", "echoscu", "dcmconv", "dcmcjpeg", "dcmftest", "dcmdump",
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<_> = tools
        .iter()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if !missing.is_empty() {
        panic!("DCMTK not installed: apt-get install dcmtk (missing: {missing:?})");
    }
}

/// Asks the kernel for a currently free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True if some socket is in LISTEN state on TCP `port` (from /proc/net/tcp{,6};
/// no connection is made, so the peer logs nothing).
pub fn is_listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|p| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
            })
    })
}

/// A DCMTK `storescp` peer (e.g. a forwarding destination), killed on drop.
pub struct Storescp {
    /// TCP port it listens on (all interfaces).
    pub port: u16,
    /// Output directory (`-od`).
    pub dir: PathBuf,
    child: Child,
    log: Arc<Mutex<Vec<u8>>>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Storescp {
    /// Starts `storescp -v +B +xa -od DIR [extra_args] PORT` on a free port
    /// (bit-preserving, accepts all TSs it knows; AE title not checked) and
    /// waits up to 10 s until it listens. Panics with its log on failure.
    pub fn start(dir: impl AsRef<Path>, extra_args: &[&str]) -> Storescp {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("storescp")
                .args(["-v", "+B", "+xa", "-od"])
                .arg(&dir)
                .args(extra_args)
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run storescp: {e} (apt-get install dcmtk)"));
            let (out, _) = drain(child.stdout.take().unwrap());
            let (log, _) = drain(child.stderr.take().unwrap());
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(st)) = child.try_wait() {
                    last_err = format!(
                        "storescp exited {st}: {}",
                        String::from_utf8_lossy(&log.lock().unwrap())
                    );
                    break;
                }
                if is_listening(port) {
                    return Storescp {
                        port,
                        dir,
                        child,
                        log,
                        out,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = "storescp did not listen within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("could not start storescp: {last_err}");
    }

    /// Files received so far (sorted).
    pub fn received(&self) -> Vec<PathBuf> {
        super::part10::list_files(&self.dir)
    }

    /// Waits up to `timeout` until at least `n` files were received; panics
    /// with storescp's log otherwise. Returns the files.
    pub fn wait_for_files(&self, n: usize, timeout: Duration) -> Vec<PathBuf> {
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.received();
            if f.len() >= n {
                return f;
            }
            if Instant::now() > deadline {
                panic!(
                    "storescp got {} of {n} files in {timeout:?}; log:\n{}",
                    f.len(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// storescp's log so far (stderr, then stdout).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
            + &String::from_utf8_lossy(&self.out.lock().unwrap())
    }
}

impl Drop for Storescp {
    /// Kills storescp.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True if the datasets (bytes after the meta group) of two Part-10 files
/// are identical; on mismatch prints lengths and first differing offset.
pub fn same_dataset(a: impl AsRef<Path>, b: impl AsRef<Path>) -> bool {
    let (x, y) = (dataset_bytes(a.as_ref()), dataset_bytes(b.as_ref()));
    if x == y {
        return true;
    }
    let first = x
        .iter()
        .zip(&y)
        .position(|(p, q)| p != q)
        .unwrap_or(x.len().min(y.len()));
    eprintln!(
        "dataset differs: {} ({} bytes) vs {} ({} bytes), first difference at {first}",
        a.as_ref().display(),
        x.len(),
        b.as_ref().display(),
        y.len()
    );
    false
}
