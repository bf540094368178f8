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

fn imports(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import pynetdicom, pydicom"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The path of a python3 that can `import pynetdicom`; made on first use.
pub fn pynetdicom_python() -> PathBuf {
    let mut cached = VENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cached.as_ref() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("DICOM_GW_TEST_PYTHON") {
        let p = PathBuf::from(p);
        assert!(
            imports(&p),
            "$DICOM_GW_TEST_PYTHON={} cannot import pynetdicom",
            p.display()
        );
        *cached = Some(p.clone());
        return p;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pynetdicom-{PYNETDICOM}"));
    let python = dir.join("bin").join("python3");
    if !imports(&python) {
        let _ = std::fs::remove_dir_all(&dir);
        let (out, timed_out) = run_timeout(
            Command::new("python3").arg("-m").arg("venv").arg(&dir),
            Duration::from_secs(120),
        );
        assert!(
            !timed_out && out.status.success(),
            "cannot create a venv for pynetdicom (Debian: apt-get install python3-venv): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (out, timed_out) = run_timeout(
            Command::new(dir.join("bin").join("pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("pynetdicom=={PYNETDICOM}"),
            ]),
            Duration::from_secs(600),
        );
        assert!(
            !timed_out && out.status.success() && imports(&python),
            "cannot install pynetdicom {PYNETDICOM} from PyPI: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *cached = Some(python.clone());
    python
}
