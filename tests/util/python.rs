//! A Python with pynetdicom for tests that use it as a real DICOM peer (MPPS SCU).
//!
//! `$DICOM_GW_TEST_PYTHON` wins if set; otherwise a venv under Cargo's target tmp dir is made
//! once (`python3 -m venv`, then `pip install pynetdicom==PYNETDICOM`) and reused by later
//! runs. On a fresh Debian machine that needs the `python3-venv` package and access to PyPI,
//! which `.ci/run` provides; without them the test fails with a message saying so — never
//! passes without the peer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::dcmtk::run_timeout;

/// The pynetdicom release the tests are written against.
pub const PYNETDICOM: &str = "2.1.1";

static VENV: Mutex<Option<PathBuf>> = Mutex::new(None);

/// What a test venv holds: a pinned PyPI package, how to check it, and the environment
/// variable that may name a Python that already has it.
pub struct VenvSpec {
    /// PyPI name (also names the venv directory).
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// Python statement that succeeds once the package is usable.
    pub import: &'static str,
    /// Environment variable naming a ready Python instead.
    pub env_var: &'static str,
}

fn imports(python: &Path, import: &str) -> bool {
    Command::new(python)
        .args(["-c", import])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The path of a python3 with `spec`'s package, cached in `cache`: `$env_var` if set, else a
/// venv under Cargo's target tmp dir, made once and reused by later runs.
pub fn venv_python(cache: &Mutex<Option<PathBuf>>, spec: &VenvSpec) -> PathBuf {
    let VenvSpec {
        package,
        version,
        import,
        env_var,
    } = *spec;
    let mut cached = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cached.as_ref() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(
            imports(&p, import),
            "${env_var}={} cannot import {package}",
            p.display()
        );
        *cached = Some(p.clone());
        return p;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{package}-{version}"));
    let python = dir.join("bin").join("python3");
    if !imports(&python, import) {
        let _ = std::fs::remove_dir_all(&dir);
        let (out, timed_out) = run_timeout(
            Command::new("python3").arg("-m").arg("venv").arg(&dir),
            Duration::from_secs(120),
        );
        assert!(
            !timed_out && out.status.success(),
            "cannot create a venv for {package} (Debian: apt-get install python3-venv): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (out, timed_out) = run_timeout(
            Command::new(dir.join("bin").join("pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("{package}=={version}"),
            ]),
            Duration::from_secs(600),
        );
        assert!(
            !timed_out && out.status.success() && imports(&python, import),
            "cannot install {package} {version} from PyPI: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *cached = Some(python.clone());
    python
}

/// The path of a python3 that can `import pynetdicom`; made on first use.
pub fn pynetdicom_python() -> PathBuf {
    venv_python(
        &VENV,
        &VenvSpec {
            package: "pynetdicom",
            version: PYNETDICOM,
            import: "import pynetdicom, pydicom",
            env_var: "DICOM_GW_TEST_PYTHON",
        },
    )
}

/// Runs pynetdicom's python on `script` with `job` (JSON) written to its stdin, stdout piped
/// and `stderr` as given.
pub fn spawn_script(
    script: &str,
    job: &serde_json::Value,
    stderr: std::process::Stdio,
) -> std::process::Child {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(pynetdicom_python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(job.to_string().as_bytes()).unwrap();
    child
}

/// A long-running pynetdicom peer script (an SCP): started with a JSON job on its stdin,
/// ready once it prints `ready`, its stdout lines gathered as they come, killed on drop.
pub struct PyServer {
    child: std::process::Child,
    lines: std::sync::Arc<Mutex<Vec<String>>>,
}

impl PyServer {
    /// Starts `script` with `job`; waits (at most 60 s, the first run may build the venv's
    /// caches) for the line `ready`.
    pub fn start(script: &str, job: &serde_json::Value, ready: &str) -> PyServer {
        use std::io::{BufRead, BufReader};
        let mut child = spawn_script(script, job, std::process::Stdio::null());
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (out, l2) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let server = PyServer { child, lines };
        server.wait_line(ready, Duration::from_secs(60));
        server
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Whether `line` has been printed.
    pub fn has(&self, line: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l == line)
    }

    /// Waits (at most `timeout`, else panics with the lines so far) for `line`.
    pub fn wait_line(&self, line: &str, timeout: Duration) {
        super::wait_for(
            &format!("the peer script to print {line:?}"),
            timeout,
            || {
                if self.has(line) {
                    Ok(())
                } else {
                    Err(format!("lines so far: {:?}", self.lines()))
                }
            },
        );
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
