//! Helpers for the forwarding tests (tests/forward.rs): config files with destinations and
//! routes, the `dicom-gw queue …` / `dicom-gw index` command line, bounded waits, a DCMTK
//! `storescp` destination on a chosen port that can be stopped and restarted, and a small
//! tmpfs for disk-space tests.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::daemon::Daemon;
use super::dcmtk::{drain, free_port, is_listening, run_timeout, wait_timeout};
use super::part10::{list_files, meta_str, parse_part10, tag};

/// The daemon binary under test.
pub const GW_BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");

/// `dicom-gw scu ARGS` with a time limit (120 s): (exit code, stdout, stderr).
pub fn gw_scu(args: &[&str]) -> (i32, String, String) {
    let limit = Duration::from_secs(120);
    let mut cmd = Command::new(GW_BIN);
    cmd.arg("scu").args(args);
    let (out, timed_out) = run_timeout(&mut cmd, limit);
    assert!(
        !timed_out,
        "dicom-gw scu {args:?} did not finish within {limit:?}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
/// Longest a `dicom-gw queue …` / `index` command may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until `f` returns `Ok`, polling every 50 ms; after `timeout` panics with `what`
/// and the last `Err` message (which should describe the state seen).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last state:\n{last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `[[destinations]]` block for a local peer: `ae_title` is the upper-cased name, host
/// 127.0.0.1; `extra` is appended verbatim (one `key = value` per line).
pub fn dest_block(name: &str, port: u16, extra: &str) -> String {
    let ae: String = name.to_uppercase().chars().take(16).collect();
    format!(
        "[[destinations]]\nname = \"{name}\"\nae_title = \"{ae}\"\nhost = \"127.0.0.1\"\nport = {port}\n{extra}\n"
    )
}

/// A `[[routes]]` block: `match_inline` is a TOML inline table (e.g. `{ Modality = "CT" }`)
/// or empty for "every object".
pub fn route_block(name: &str, match_inline: &str, dests: &[&str]) -> String {
    let d: Vec<String> = dests.iter().map(|d| format!("\"{d}\"")).collect();
    let m = if match_inline.is_empty() {
        String::new()
    } else {
        format!("match = {match_inline}\n")
    };
    format!(
        "[[routes]]\nname = \"{name}\"\n{m}destinations = [{}]\n",
        d.join(", ")
    )
}

/// Writes `toml` to `dir/gw.toml` and returns its path.
pub fn write_gw_config(dir: &Path, toml: &str) -> PathBuf {
    let p = dir.join("gw.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// Writes `toml` to `dir/gw.toml` and starts `dicom-gw serve --config dir/gw.toml` on data
/// directory `data` with `--io epoll` and `extra` flags.
pub fn start_gw(dir: &Path, data: &Path, toml: &str, extra: &[&str]) -> Daemon {
    let cfg = write_gw_config(dir, toml);
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::start(GW_BIN, data, "epoll", &args)
}

/// Result of one `dicom-gw` command-line run.
#[derive(Debug)]
pub struct CliOut {
    /// Exit code (None: killed by a signal / timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The command, for messages.
    pub cmd: String,
}

impl CliOut {
    /// Panics with the output unless the exit code is 0.
    pub fn ok(self) -> CliOut {
        assert!(
            self.code == Some(0),
            "`{}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// stdout parsed as JSON lines (one object per non-empty line); panics on bad JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "`{}` printed a line that is not JSON ({e}): {l:?}\n--- stdout ---\n{}",
                        self.cmd, self.stdout
                    )
                })
            })
            .collect()
    }

    /// The single JSON object printed; panics if there is not exactly one line.
    pub fn json(&self) -> serde_json::Value {
        let mut v = self.json_lines();
        assert!(
            v.len() == 1,
            "`{}` should print one JSON line, got {}:\n{}",
            self.cmd,
            v.len(),
            self.stdout
        );
        v.remove(0)
    }
}

/// Runs `dicom-gw ARGS` (bounded by [`CLI_TIMEOUT`]).
pub fn gw_cli(args: &[&str]) -> CliOut {
    let mut cmd = Command::new(GW_BIN);
    cmd.args(args);
    let desc = format!("dicom-gw {}", args.join(" "));
    let (out, timed_out) = run_timeout(&mut cmd, CLI_TIMEOUT);
    assert!(!timed_out, "`{desc}` did not finish within {CLI_TIMEOUT:?}");
    CliOut {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        cmd: desc,
    }
}

/// Runs `dicom-gw queue SUB --data-dir DATA [rest…]`.
pub fn gw_queue(data: &Path, sub: &str, rest: &[&str]) -> CliOut {
    let d = data.to_str().unwrap();
    let mut args = vec!["queue", sub, "--data-dir", d];
    args.extend_from_slice(rest);
    gw_cli(&args)
}

/// One line of `dicom-gw queue stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStats {
    pub destination: String,
    pub pending: u64,
    pub retry: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub done: u64,
    pub paused: bool,
}

impl QueueStats {
    /// Jobs not yet delivered nor dead (pending + retry + in flight).
    pub fn outstanding(&self) -> u64 {
        self.pending + self.retry + self.in_flight
    }
}

/// Reads a u64 field of a JSON object, panicking with the object if absent.
pub fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("no unsigned integer {key:?} in {v}"))
}

/// Reads a string field of a JSON object, panicking with the object if absent.
pub fn json_str(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
        .to_string()
}

/// Reads a bool field of a JSON object, panicking with the object if absent.
pub fn json_bool(v: &serde_json::Value, key: &str) -> bool {
    v.get(key)
        .and_then(|x| x.as_bool())
        .unwrap_or_else(|| panic!("no bool {key:?} in {v}"))
}

/// `dicom-gw queue stats`, by destination name (must exit 0).
pub fn queue_stats(data: &Path) -> BTreeMap<String, QueueStats> {
    let out = gw_queue(data, "stats", &[]).ok();
    out.json_lines()
        .iter()
        .map(|v| {
            let s = QueueStats {
                destination: json_str(v, "destination"),
                pending: json_u64(v, "pending"),
                retry: json_u64(v, "retry"),
                in_flight: json_u64(v, "in_flight"),
                dead: json_u64(v, "dead"),
                done: json_u64(v, "done"),
                paused: json_bool(v, "paused"),
            };
            (s.destination.clone(), s)
        })
        .collect()
}

/// `queue stats` of one destination; panics if it is not listed.
pub fn dest_stats(data: &Path, dest: &str) -> QueueStats {
    let all = queue_stats(data);
    all.get(dest)
        .cloned()
        .unwrap_or_else(|| panic!("destination {dest:?} not in queue stats: {all:?}"))
}

/// Waits until destination `dest` has no outstanding job and `done` jobs delivered
/// (and `dead` dead letters); returns the final stats.
pub fn wait_settled(
    data: &Path,
    dest: &str,
    done: u64,
    dead: u64,
    timeout: Duration,
) -> QueueStats {
    wait_for(
        &format!("destination {dest}: done={done}, dead={dead}, nothing outstanding"),
        timeout,
        || {
            let s = dest_stats(data, dest);
            if s.outstanding() == 0 && s.done == done && s.dead == dead {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
}

/// `queue list --destination DEST [--state STATE]` as JSON objects.
pub fn queue_list(data: &Path, dest: &str, state: Option<&str>) -> Vec<serde_json::Value> {
    let mut rest = vec!["--destination", dest];
    if let Some(s) = state {
        rest.extend_from_slice(&["--state", s]);
    }
    gw_queue(data, "list", &rest).ok().json_lines()
}

/// `dicom-gw index --data-dir DATA` (daemon stopped): the SOP Instance UIDs listed.
pub fn index_uids(data: &Path) -> std::collections::BTreeSet<String> {
    let out = gw_cli(&["index", "--data-dir", data.to_str().unwrap()]).ok();
    out.json_lines()
        .iter()
        .map(|v| json_str(v, "sop_instance_uid"))
        .collect()
}

/// A DCMTK `storescp` used as a forwarding destination, on a port chosen by the test (so it
/// can be started late or restarted on the same port): `storescp -v +B +xa +uf --fork -od DIR
/// [extra] PORT` — bit-preserving, every transfer syntax, a unique file per received object
/// (so a duplicate delivery shows as an extra file), one process per association (so
/// concurrent associations are served). It runs in its own process group, killed as a whole
/// on [`DestScp::stop`] / drop.
pub struct DestScp {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<u8>>>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl DestScp {
    /// Starts storescp on `port` and waits (≤ 15 s, retrying while the port is still taken)
    /// until it listens. Panics with its log on failure.
    pub fn start(dir: &Path, port: u16, extra: &[&str]) -> DestScp {
        std::fs::create_dir_all(dir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut child = Command::new("storescp")
                .args(["-v", "+B", "+xa", "+uf", "--fork", "-od"])
                .arg(dir)
                .args(extra)
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run storescp: {e} (apt-get install dcmtk)"));
            let (out, _) = drain(child.stdout.take().unwrap());
            let (log, _) = drain(child.stderr.take().unwrap());
            let mut s = DestScp {
                port,
                dir: dir.to_path_buf(),
                child: Some(child),
                log,
                out,
            };
            let started = Instant::now();
            loop {
                if let Ok(Some(st)) = s.child.as_mut().unwrap().try_wait() {
                    last = format!("storescp exited {st}: {}", s.log());
                    s.child = None;
                    break;
                }
                if is_listening(port) {
                    return s;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    last = format!("storescp did not listen within 10 s: {}", s.log());
                    s.stop();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("could not start storescp on port {port}: {last}");
    }

    /// Starts on a free port.
    pub fn start_free(dir: &Path, extra: &[&str]) -> DestScp {
        DestScp::start(dir, free_port(), extra)
    }

    /// Kills storescp and its per-association children (SIGKILL to its process group).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the process group we created for this child (its pid).
            unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL) };
            let _ = c.kill();
            let _ = wait_timeout(&mut c, Duration::from_secs(10));
        }
    }

    /// storescp's log so far (stderr, then stdout).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
            + &String::from_utf8_lossy(&self.out.lock().unwrap())
    }

    /// Associations received so far (lines "I: Association Received…" in the log; with -d
    /// storescp also logs a "D: Association Received" line, not counted).
    pub fn associations(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.starts_with("I: Association Received"))
            .count()
    }

    /// Associations released by the peer so far ("Association Release" lines).
    pub fn releases(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.trim_end().ends_with("Association Release"))
            .count()
    }

    /// Most associations open at the same time, from the order of "Association Received" and
    /// release/abort lines in the log (each child logs its own; a release logged just after
    /// the next association's start can overcount by one).
    pub fn max_concurrent(&self) -> usize {
        let (mut open, mut max) = (0usize, 0usize);
        for l in self.log().lines() {
            if l.starts_with("I: Association Received") {
                open += 1;
                max = max.max(open);
            } else if l.trim_end().ends_with("Association Release")
                || l.contains("Association Aborted")
                || l.contains("aborting association")
            {
                open = open.saturating_sub(1);
            }
        }
        max
    }

    /// C-STORE requests received so far ("Received Store Request" lines).
    pub fn store_requests(&self) -> usize {
        self.log().matches("Received Store Request").count()
    }

    /// Files in the output directory.
    pub fn files(&self) -> Vec<PathBuf> {
        list_files(&self.dir)
    }

    /// Received files by SOP Instance UID (from each file's (0002,0003)). Call once the
    /// transfers are over (files are written in place, a file being written may not parse).
    pub fn by_uid(&self) -> BTreeMap<String, Vec<PathBuf>> {
        let mut m: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for f in self.files() {
            if let Err(e) = parse_part10(&f) {
                panic!(
                    "storescp wrote an unreadable file: {e}\nlog:\n{}",
                    self.log()
                );
            }
            let uid = meta_str(&f, tag(0x0002, 0x0003))
                .unwrap_or_else(|| panic!("no (0002,0003) in {}", f.display()));
            m.entry(uid).or_default().push(f);
        }
        m
    }

    /// Waits until at least `n` files were received; panics with the log otherwise.
    pub fn wait_files(&self, n: usize, timeout: Duration) -> Vec<PathBuf> {
        wait_for(
            &format!("{n} files at storescp port {}", self.port),
            timeout,
            || {
                let f = self.files();
                if f.len() >= n {
                    Ok(f)
                } else {
                    Err(format!("{} files; storescp log:\n{}", f.len(), self.log()))
                }
            },
        )
    }
}

impl Drop for DestScp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tmpfs mounted for a test, lazily unmounted on drop (needs root).
pub struct Tmpfs(std::ffi::CString);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "16m") on `dir`; Err(reason) where that is impossible.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        use std::ffi::CString;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        std::fs::create_dir_all(dir).unwrap();
        let target = CString::new(dir.to_str().unwrap()).unwrap();
        let fstype = CString::new("tmpfs").unwrap();
        let opts = CString::new(format!("size={size},mode=0755")).unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs on {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs(target))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// (total, available) bytes of the filesystem holding `path` (statvfs).
pub fn fs_space(path: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: statvfs fills the zeroed struct; c is a valid NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    let f = s.f_frsize as u64;
    (s.f_blocks as u64 * f, s.f_bavail as u64 * f)
}
