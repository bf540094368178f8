//! The daemon's log output (issue 14, item 7): no ANSI escape codes when stderr is not a
//! terminal (journald, a file), in either format, while a terminal does get colours;
//! `[log] format = "json"` writes one JSON object per line with level, message and the
//! event's fields; a refused MWL C-FIND logs its whole Error Comment, not the 64 characters
//! that fit in the response.

mod util;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::*;

/// `dicom-gw serve` with stderr redirected to `log` (a plain file), `NO_COLOR` unset.
struct Gw {
    child: Child,
    store_port: u16,
    worklist_port: u16,
}

impl Gw {
    fn start(dir: &Path, config: &str, log: &Path) -> Gw {
        let cfg = dir.join("gw.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut child = Command::new(GW_BIN)
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--store-listen",
                "127.0.0.1:0",
                "--worklist-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--io",
                "epoll",
            ])
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let port = |line: &str, prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
        };
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut worklist_port = 0;
        let store_port = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "no ready line; log:\n{}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    )
                })
                .unwrap();
            if let Some(p) = port(&line, WORKLIST_PREFIX) {
                worklist_port = p;
            }
            if let Some(p) = port(&line, READY_PREFIX) {
                break p;
            }
        };
        // Keep draining stdout so the daemon never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Gw {
            child,
            store_port,
            worklist_port,
        }
    }

    /// SIGTERM and wait: every log line is written by then.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_timeout(&mut self.child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("dicom-gw did not stop after SIGTERM")
        });
        assert!(status.success(), "{status}");
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Some traffic: an echo, and an MWL C-FIND refused for a bad date range deep in a sequence
/// (its Error Comment runs past 64 characters). Returns findscu's output.
fn traffic(gw: &Gw) -> String {
    let echo = echoscu(gw.store_port, &[]);
    assert!(echo.status.success(), "{echo:?}");
    let out = Command::new("findscu")
        .args(["-v", "-W", "-aec", "DICOM_GW", "127.0.0.1"])
        .arg(gw.worklist_port.to_string())
        .args([
            "-k",
            "PatientName",
            "-k",
            "(0040,0100)[0].ScheduledProcedureStepStartDate=2026AB01-",
        ])
        .output()
        .expect("findscu (apt-get install dcmtk)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The comment of the refused C-FIND as the daemon logs it must hold the attribute named past
/// the 64th character.
const PAST_64: &str = "ScheduledProcedureStepStartDate";

#[test]
fn text_log_in_a_file_has_no_escape_codes_and_whole_comments() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("stderr.log");
    let gw = Gw::start(tmp.path(), "", &log);
    let findscu = traffic(&gw);
    gw.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() > 3, "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes in a redirected log:\n{text:?}"
    );
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("C-FIND refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{text}\nfindscu:\n{findscu}");
    let comment = refused[0].split("comment=").nth(1).unwrap_or("");
    assert!(
        comment.contains(PAST_64) && comment.chars().count() > 64,
        "the logged comment is cut: {}",
        refused[0]
    );
}

#[test]
fn json_log_is_one_object_per_line_without_escape_codes() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("stderr.log");
    let gw = Gw::start(tmp.path(), "[log]\nformat = \"json\"\n", &log);
    traffic(&gw);
    gw.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "{text:?}");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    assert!(events.len() > 3, "{text}");
    for e in &events {
        let o = e
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {e}"));
        for key in ["timestamp", "level", "message", "target"] {
            assert!(o.contains_key(key), "no {key:?} in {e}");
        }
    }
    // An event's fields sit beside the message, its association's fields in its span.
    let accepted = events
        .iter()
        .find(|e| e["message"] == "association accepted")
        .unwrap_or_else(|| panic!("no association line:\n{text}"));
    assert_eq!(accepted["level"], "INFO");
    assert!(accepted["contexts"].is_u64(), "{accepted}");
    assert!(accepted["span"]["calling"].is_string(), "{accepted}");
    let refused = events
        .iter()
        .find(|e| e["message"] == "C-FIND refused")
        .unwrap_or_else(|| panic!("no C-FIND refusal:\n{text}"));
    assert_eq!(refused["level"], "WARN");
    let comment = refused["comment"].as_str().unwrap();
    assert!(comment.contains(PAST_64), "{refused}");
}

/// The other side of the rule: on a terminal the same text log is coloured (so the absence
/// of escape codes above is the daemon's choice, not an accident). `script` gives the daemon
/// a pseudo-terminal; `timeout` stops it once its start-up lines are out.
#[test]
fn a_terminal_gets_colours() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cmd = format!(
        "timeout -s TERM 3 {GW_BIN} serve --data-dir {} --store-listen 127.0.0.1:0 \
         --worklist-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --io epoll",
        data.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("starting"), "{text}");
    assert!(text.contains('\x1b'), "no colours on a terminal:\n{text}");
}
