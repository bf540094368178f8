//! Forwarding failure classes (issue 14, items 4 and 5): an object the archive aborts every
//! time, while it stores the others, is that object's problem. It goes to the dead letters
//! after `max_object_attempts` (not the destination's `max_attempts`), the objects queued
//! behind it are delivered, and its dead letter is logged ("dead-lettered") and counted in
//! `dicomgw_forward_total{result="dead"}`. The archive is a pynetdicom SCP (a separate
//! process) that answers A-ABORT to one SOP Instance UID and stores the rest.

mod util;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::*;

/// A pynetdicom Storage SCP: aborts the association when asked to store `POISON`, answers
/// success otherwise; appends "store UID" / "abort UID" to EVENTS, in order.
const POISON_SCP: &str = r#"
import sys, threading
from pynetdicom import AE, evt, ALL_TRANSFER_SYNTAXES

port, events, poison = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()

def record(what, uid):
    with lock, open(events, "a") as f:
        f.write(f"{what} {uid}\n")

def handle_store(event):
    uid = event.request.AffectedSOPInstanceUID
    if uid == poison:
        record("abort", uid)
        event.assoc.abort()
        return 0xC000
    record("store", uid)
    return 0x0000

ae = AE(ae_title="POISONSCP")
ae.add_supported_context("1.2.840.10008.5.1.4.1.1.2", ALL_TRANSFER_SYNTAXES)
ae.add_supported_context("1.2.840.10008.1.1")
ae.maximum_associations = 8
ae.start_server(("127.0.0.1", port), block=True,
                evt_handlers=[(evt.EVT_C_STORE, handle_store)])
"#;

/// The SCP process, killed on drop.
struct PoisonScp(Child);

impl PoisonScp {
    fn start(dir: &Path, port: u16, poison: &str) -> PoisonScp {
        let script = dir.join("poison_scp.py");
        std::fs::write(&script, POISON_SCP).unwrap();
        let child = Command::new(pynetdicom_python())
            .arg(&script)
            .arg(port.to_string())
            .arg(dir.join("events.txt"))
            .arg(poison)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let scp = PoisonScp(child);
        wait_for(
            "the pynetdicom SCP to listen",
            Duration::from_secs(30),
            || {
                if is_listening(port) {
                    Ok(())
                } else {
                    Err("not listening".into())
                }
            },
        );
        scp
    }
}

impl Drop for PoisonScp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_object_the_archive_always_aborts_goes_dead_after_max_object_attempts() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let specs: Vec<ObjSpec> = (0..101).map(|i| ObjSpec::new(15_000 + i)).collect();
    let poison = specs[0].sop_instance_uid.clone();
    let files: Vec<_> = specs
        .iter()
        .map(|s| {
            let f = src.join(format!("{}.dcm", s.sop_instance_uid));
            gen_part10(&f, s).unwrap();
            f
        })
        .collect();

    let port = free_port();
    let scp_dir = tmp.path().join("scp");
    std::fs::create_dir_all(&scp_dir).unwrap();
    let _scp = PoisonScp::start(&scp_dir, port, &poison);
    // One association, so the poison object shares it with every other; the destination's
    // own retries (max_attempts) are many, the object's (max_object_attempts) three.
    let toml = dest_block(
        "archive",
        port,
        "max_associations = 1\nmax_attempts = 20\nmax_object_attempts = 3\n\
         retry_initial_seconds = 0.5\nretry_max_seconds = 1\n",
    ) + &route_block("all", "", &["archive"]);
    let gw = start_gw(tmp.path(), &data, &toml, &[]);

    // Queue the poison object first and the 100 others behind it, then let them go.
    gw_queue(&data, "pause", &["--destination", "archive"]).ok();
    storescu(gw.port, &files[..1], &["-R", "-xe"]).assert_all_ok(&files[..1]);
    storescu(gw.port, &files[1..], &["-R", "-xe"]).assert_all_ok(&files[1..]);
    let queued = queue_list(&data, "archive", Some("pending"));
    assert_eq!(queued.len(), 101);
    assert_eq!(
        json_str(&queued[0], "sop_instance_uid"),
        poison,
        "the poison object is first in line"
    );
    gw_queue(&data, "resume", &["--destination", "archive"]).ok();

    let s = wait_settled(&data, "archive", 100, 1, Duration::from_secs(120));
    assert_eq!(s.retry, 0, "{s:?}");

    // The SCP saw three attempts at the poison object and each other object once.
    let events = std::fs::read_to_string(scp_dir.join("events.txt")).unwrap();
    let mut stored: BTreeMap<&str, usize> = BTreeMap::new();
    let mut aborts = 0;
    for l in events.lines() {
        match l.split_once(' ') {
            Some(("store", uid)) => *stored.entry(uid).or_default() += 1,
            Some(("abort", uid)) => {
                assert_eq!(uid, poison);
                aborts += 1;
            }
            _ => panic!("odd event line {l:?}"),
        }
    }
    assert_eq!(aborts, 3, "attempts at the poison object:\n{events}");
    assert_eq!(stored.len(), 100);
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
    // The objects claimed with the poison object went on after its first abort.
    let lines: Vec<&str> = events.lines().collect();
    let first = lines.iter().position(|l| l.starts_with("abort")).unwrap();
    let second = first
        + 1
        + lines[first + 1..]
            .iter()
            .position(|l| l.starts_with("abort"))
            .unwrap();
    assert!(
        second - first > 1,
        "nothing was delivered between the first two aborts:\n{events}"
    );

    // The dead letter: attempts, reason.
    let dead = queue_list(&data, "archive", Some("dead"));
    assert_eq!(dead.len(), 1);
    assert_eq!(json_str(&dead[0], "sop_instance_uid"), poison);
    assert_eq!(json_u64(&dead[0], "attempts"), 3, "{}", dead[0]);
    let why = json_str(&dead[0], "last_error");
    assert!(
        why.contains("max_object_attempts = 3") && why.contains("aborted"),
        "{why}"
    );

    // The log line and the metric.
    let log = gw.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dead-lettered"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let l = lines[0];
    for want in [
        " WARN ",
        "destination=archive",
        &format!("sop={poison}"),
        "attempts=3",
        "reason=",
        "max_object_attempts",
    ] {
        assert!(l.contains(want), "no {want:?} in the dead-letter line: {l}");
    }
    let metric = |r: &str| {
        metric_value(
            gw.http_port,
            &format!("dicomgw_forward_total{{destination=\"archive\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(metric("dead"), Some(1.0));
    assert_eq!(metric("delivered"), Some(100.0));
    assert_eq!(metric("retry"), Some(2.0));
    drop(gw);
}

/// A destination-wide failure (nothing listens) is not the object's problem: its jobs keep
/// the destination's backoff up to `max_attempts`, then go dead with "gave up after", logged
/// and counted as dead (the last attempt used to be counted as a retry).
#[test]
fn an_unreachable_destination_dead_letters_after_max_attempts_and_counts_it() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let toml = dest_block(
        "gone",
        port,
        "max_attempts = 2\nmax_object_attempts = 1\nretry_initial_seconds = 0.2\n\
         retry_max_seconds = 0.2\nconnect_timeout_seconds = 2\n",
    ) + &route_block("all", "", &["gone"]);
    let gw = start_gw(tmp.path(), &data, &toml, &[]);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let files: Vec<_> = (0..2)
        .map(|i| {
            let s = ObjSpec::new(15_500 + i);
            let f = src.join(format!("{}.dcm", s.sop_instance_uid));
            gen_part10(&f, &s).unwrap();
            f
        })
        .collect();
    storescu(gw.port, &files, &["-R", "-xe"]).assert_all_ok(&files);
    wait_settled(&data, "gone", 0, 2, Duration::from_secs(60));
    for v in queue_list(&data, "gone", Some("dead")) {
        assert_eq!(json_u64(&v, "attempts"), 2, "{v}");
        assert!(
            json_str(&v, "last_error").starts_with("gave up after 2 attempts"),
            "{v}"
        );
    }
    let log = gw.stderr();
    assert_eq!(
        log.lines().filter(|l| l.contains("dead-lettered")).count(),
        2,
        "{log}"
    );
    // The last word on each job is its dead letter, not a "will retry".
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("destination=gone"))
        .unwrap();
    assert!(last.contains("dead-lettered"), "{log}");
    let metric = |r: &str| {
        metric_value(
            gw.http_port,
            &format!("dicomgw_forward_total{{destination=\"gone\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(metric("dead"), Some(2.0));
    assert_eq!(metric("retry"), Some(2.0));
    drop(gw);
}
