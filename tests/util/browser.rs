//! A real headless Chromium driven by Selenium, for the web console's tests.
//!
//! Debian's `chromium` and `chromium-driver` (installed by `.ci/run`) do the browsing; the
//! Selenium client comes from PyPI into a venv under Cargo's target tmp dir, made once and
//! reused (as `util::python` does for pynetdicom); `$DICOM_GW_TEST_SELENIUM_PYTHON` may
//! name a Python that already has it. Without Chromium the test is skipped with a message —
//! except under `CI=true`, where it fails: CI must never pass without having browsed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::util::dcmtk::run_timeout;

/// The Selenium release the console tests are written against.
pub const SELENIUM: &str = "4.51.0";

/// Where Debian puts the browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's `chromium-driver`.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

static VENV: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Whether Chromium and its driver are installed. When they are not: under `CI=true` this
/// panics (the test must fail), otherwise it prints why the test is skipped and returns false.
pub fn require_chromium(test: &str) -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} missing (Debian: apt-get install chromium chromium-driver)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}; under CI=true this is a failure, not a skip");
    }
    eprintln!("SKIP {test}: {why}");
    false
}

/// The path of a python3 that can `import selenium`; made on first use.
pub fn selenium_python() -> PathBuf {
    crate::util::python::venv_python(
        &VENV,
        &crate::util::python::VenvSpec {
            package: "selenium",
            version: SELENIUM,
            import: "import selenium",
            env_var: "DICOM_GW_TEST_SELENIUM_PYTHON",
        },
    )
}

/// Runs the Selenium `script` (Python source) with `env` set, bounded by `timeout`; returns
/// its stdout. Panics with stdout and stderr if it fails or times out.
pub fn run_browser_script(
    script: &str,
    work_dir: &Path,
    env: &[(&str, String)],
    timeout: Duration,
) -> String {
    let python = selenium_python();
    let file = work_dir.join("console_script.py");
    std::fs::write(&file, script).unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(&file)
        .env("CHROMIUM", CHROMIUM)
        .env("CHROMEDRIVER", CHROMEDRIVER);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (out, timed_out) = run_timeout(&mut cmd, timeout);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !timed_out && out.status.success(),
        "browser script {} (timed out: {timed_out}, {}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        file.display(),
        out.status
    );
    stdout
}
