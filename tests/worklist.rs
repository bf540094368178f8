//! The worklist service (issue 6) against real peers: DCMTK `findscu -W` for Modality
//! Worklist C-FIND (every matching kind, checked attribute by attribute; bad identifiers;
//! C-CANCEL mid-stream), `echoscu` on the worklist port, and the deployment modes
//! (`--only store`, `--only worklist`, both as two processes at once). MPPS with pynetdicom is
//! in `tests/mpps.rs`.
//!
//! Items are seeded straight into `worklist.redb` (DICOM JSON through the library's import
//! path) before the daemon starts: the admin API and CLI that do the same for operators are
//! tested in `tests/api_worklist.rs`.

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dicom_dictionary_std::tags;
use dicom_gw::worklist::model::parse_items;
use dicom_gw::worklist::WorklistStore;
use dicom_object::{open_file, DefaultDicomObject};
use serde_json::{json, Value};
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const FIND_TIMEOUT: Duration = Duration::from_secs(60);

/// One worklist item in DICOM JSON.
#[allow(clippy::too_many_arguments)]
fn item(
    acc: &str,
    pid: &str,
    name: &str,
    study_uid: &str,
    modality: &str,
    station: &str,
    date: &str,
    time: &str,
) -> Value {
    json!({
        "00080050": {"vr": "SH", "Value": [acc]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00100020": {"vr": "LO", "Value": [pid]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["O"]},
        "0020000D": {"vr": "UI", "Value": [study_uid]},
        "00321060": {"vr": "LO", "Value": [format!("{modality} exam {acc}")]},
        "00401001": {"vr": "SH", "Value": [format!("RP{acc}")]},
        "00400100": {"vr": "SQ", "Value": [{
            "00080060": {"vr": "CS", "Value": [modality]},
            "00400001": {"vr": "AE", "Value": [station]},
            "00400002": {"vr": "DA", "Value": [date]},
            "00400003": {"vr": "TM", "Value": [time]},
            "00400007": {"vr": "LO", "Value": [format!("step of {acc}")]},
            "00400009": {"vr": "SH", "Value": [format!("SPS{acc}")]}
        }]}
    })
}

/// The standard seed: six items with distinct patients, modalities, stations, dates, times.
fn seed_items() -> Vec<Value> {
    vec![
        item(
            "ACC1",
            "P1",
            "Doe^Jane",
            "1.2.826.0.1.1",
            "CT",
            "CT01",
            "20261120",
            "083000",
        ),
        item(
            "ACC2",
            "P2",
            "Doe^John",
            "1.2.826.0.1.2",
            "MR",
            "MR01",
            "20261121",
            "101500",
        ),
        item(
            "ACC3",
            "P3",
            "Roe^Rick",
            "1.2.826.0.1.3",
            "CT",
            "CT02",
            "20261122",
            "140000",
        ),
        item(
            "ACC4",
            "P4",
            "DOE^JANET",
            "1.2.826.0.1.4",
            "US",
            "US01",
            "20261123",
            "090000",
        ),
        item(
            "ACC5",
            "P5",
            "Smith^Ann",
            "1.2.826.0.1.5",
            "CT",
            "CT01",
            "20261124",
            "170000",
        ),
        item(
            "ACC6",
            "P6",
            "Dow^Jon",
            "1.2.826.0.1.6",
            "MR",
            "MR02",
            "20261125",
            "071500",
        ),
    ]
}

/// Writes `items` into DATA_DIR/worklist.redb (the daemon must not be running).
fn seed(data_dir: &Path, items: &[Value]) {
    std::fs::create_dir_all(data_dir).unwrap();
    let store = WorklistStore::open_in(data_dir).unwrap();
    let parsed = parse_items(&Value::Array(items.to_vec()).to_string()).unwrap();
    store
        .create_many(parsed, dicom_gw::audit::no_audit)
        .unwrap();
}

/// What one `findscu -W` run returned.
struct Found {
    /// The responses' identifiers, in order.
    responses: Vec<DefaultDicomObject>,
    /// findscu's log (stdout + stderr).
    log: String,
    /// Whether it exited 0.
    ok: bool,
}

impl Found {
    /// The Accession Numbers of the responses, sorted.
    fn accessions(&self) -> BTreeSet<String> {
        self.responses
            .iter()
            .map(|r| text(r, tags::ACCESSION_NUMBER))
            .collect()
    }
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| s.trim_end().to_owned()))
        .unwrap_or_default()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Runs `findscu -W -v -X -od OUT [-k key]... [extra] 127.0.0.1 PORT` and reads the
/// extracted responses.
fn findscu(port: u16, work: &Path, keys: &[&str], extra: &[&str]) -> Found {
    findscu_with(port, work, keys, extra, |_| {})
}

/// [`findscu`] with a hook to adjust the command (environment) before it runs.
fn findscu_with(
    port: u16,
    work: &Path,
    keys: &[&str],
    extra: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> Found {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_dir = work.join(format!("find-{n}"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut cmd = Command::new("findscu");
    cmd.args(["-W", "-v", "-aec", "DICOM_GW", "-X", "-od"])
        .arg(&out_dir);
    for k in keys {
        cmd.args(["-k", k]);
    }
    cmd.args(extra).arg("127.0.0.1").arg(port.to_string());
    adjust(&mut cmd);
    let (out, timed_out) = run_timeout(&mut cmd, FIND_TIMEOUT);
    assert!(!timed_out, "findscu timed out: {cmd:?}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let responses = files
        .iter()
        .map(|f| open_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect();
    Found {
        responses,
        log: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        ok: out.status.success(),
    }
}

/// Return keys asked in every matching query below (so projections can be checked).
const RETURN_KEYS: &[&str] = &[
    "AccessionNumber",
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "(0040,0100)[0].Modality",
    "(0040,0100)[0].ScheduledStationAETitle",
    "(0040,0100)[0].ScheduledProcedureStepStartDate",
    "(0040,0100)[0].ScheduledProcedureStepStartTime",
];

/// Runs a query: `keys` override/add to [`RETURN_KEYS`] (a key `Name=value` replaces the
/// empty `Name`).
fn query(port: u16, work: &Path, keys: &[&str]) -> Found {
    let mut all: Vec<&str> = RETURN_KEYS
        .iter()
        .copied()
        .filter(|r| !keys.iter().any(|k| k.split('=').next() == Some(*r)))
        .collect();
    all.extend_from_slice(keys);
    let f = findscu(port, work, &all, &[]);
    assert!(f.ok, "findscu failed:\n{}", f.log);
    f
}

#[test]
fn mwl_find_matches_every_kind_and_returns_exactly_the_keys() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    seed(&data, &seed_items());
    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);
    let port = gw.worklist_port;
    assert_ne!(port, 0, "no worklist line:\n{}", gw.stdout());
    let w = tmp.path();

    // Universal matching: every (scheduled) item.
    let all = query(port, w, &[]);
    assert_eq!(
        all.accessions(),
        set(&["ACC1", "ACC2", "ACC3", "ACC4", "ACC5", "ACC6"]),
        "{}",
        all.log
    );
    // Attribute by attribute, exactly the requested keys: one response checked whole.
    let one = query(port, w, &["PatientID=P3"]);
    assert_eq!(one.responses.len(), 1, "{}", one.log);
    let r = &one.responses[0];
    assert_eq!(text(r, tags::ACCESSION_NUMBER), "ACC3");
    assert_eq!(text(r, tags::PATIENT_NAME), "Roe^Rick");
    assert_eq!(text(r, tags::PATIENT_ID), "P3");
    assert_eq!(text(r, tags::STUDY_INSTANCE_UID), "1.2.826.0.1.3");
    let top: BTreeSet<_> = r.iter().map(|e| e.header().tag).collect();
    let want: BTreeSet<_> = [
        tags::ACCESSION_NUMBER,
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::STUDY_INSTANCE_UID,
        tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
    ]
    .into_iter()
    .collect();
    assert_eq!(
        top, want,
        "returned top-level keys differ from the requested ones"
    );
    assert!(
        r.element(tags::PATIENT_BIRTH_DATE).is_err(),
        "not requested"
    );
    let sps = r
        .element(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE)
        .unwrap()
        .items()
        .expect("a sequence")
        .to_vec();
    assert_eq!(sps.len(), 1);
    let s = &sps[0];
    let got = |t| {
        s.element(t)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end()
            .to_owned()
    };
    assert_eq!(got(tags::MODALITY), "CT");
    assert_eq!(got(tags::SCHEDULED_STATION_AE_TITLE), "CT02");
    assert_eq!(got(tags::SCHEDULED_PROCEDURE_STEP_START_DATE), "20261122");
    assert_eq!(got(tags::SCHEDULED_PROCEDURE_STEP_START_TIME), "140000");
    let inner: BTreeSet<_> = s.iter().map(|e| e.header().tag).collect();
    assert_eq!(
        inner.len(),
        4,
        "only the four requested SPS keys: {inner:?}"
    );
    assert!(s.element(tags::SCHEDULED_PROCEDURE_STEP_ID).is_err());

    // Single value matching.
    assert_eq!(
        query(port, w, &["AccessionNumber=ACC5"]).accessions(),
        set(&["ACC5"])
    );
    assert!(
        query(port, w, &["PatientID=P"]).responses.is_empty(),
        "no partial match"
    );
    // Wildcards: * and ?, and PN matched case-insensitively (Doe, DOE).
    assert_eq!(
        query(port, w, &["PatientName=doe*"]).accessions(),
        set(&["ACC1", "ACC2", "ACC4"])
    );
    assert_eq!(
        query(port, w, &["PatientName=D?e^J*"]).accessions(),
        set(&["ACC1", "ACC2", "ACC4"])
    );
    assert_eq!(
        query(port, w, &["PatientName=Do?^Jo*"]).accessions(),
        set(&["ACC2", "ACC6"])
    );
    assert_eq!(
        query(port, w, &["PatientName=doe^jane"]).accessions(),
        set(&["ACC1"])
    );
    // List of UIDs.
    assert_eq!(
        query(port, w, &["StudyInstanceUID=1.2.826.0.1.2\\1.2.826.0.1.5"]).accessions(),
        set(&["ACC2", "ACC5"])
    );
    // Sequence matching: modality, station AE title, both.
    assert_eq!(
        query(port, w, &["(0040,0100)[0].Modality=CT"]).accessions(),
        set(&["ACC1", "ACC3", "ACC5"])
    );
    assert_eq!(
        query(port, w, &["(0040,0100)[0].ScheduledStationAETitle=CT01"]).accessions(),
        set(&["ACC1", "ACC5"])
    );
    assert_eq!(
        query(
            port,
            w,
            &[
                "(0040,0100)[0].Modality=MR",
                "(0040,0100)[0].ScheduledStationAETitle=MR0*"
            ]
        )
        .accessions(),
        set(&["ACC2", "ACC6"])
    );
    // Date ranges inside the sequence: closed, open-ended both ways, single date.
    let date = "(0040,0100)[0].ScheduledProcedureStepStartDate";
    let d = |v: &str| format!("{date}={v}");
    assert_eq!(
        query(port, w, &[&d("20261121-20261123")]).accessions(),
        set(&["ACC2", "ACC3", "ACC4"])
    );
    assert_eq!(
        query(port, w, &[&d("20261124-")]).accessions(),
        set(&["ACC5", "ACC6"])
    );
    assert_eq!(
        query(port, w, &[&d("-20261120")]).accessions(),
        set(&["ACC1"])
    );
    assert_eq!(
        query(port, w, &[&d("20261122")]).accessions(),
        set(&["ACC3"])
    );
    // Time range, combined with the date (PS3.4 C.2.2.2.5.1: matched separately).
    let time = "(0040,0100)[0].ScheduledProcedureStepStartTime";
    assert_eq!(
        query(port, w, &[&format!("{time}=080000-100000")]).accessions(),
        set(&["ACC1", "ACC4"])
    );
    assert_eq!(
        query(
            port,
            w,
            &[&d("20261120-20261125"), &format!("{time}=-090000")]
        )
        .accessions(),
        set(&["ACC1", "ACC4", "ACC6"])
    );
    // Combined keys at both levels.
    assert_eq!(
        query(port, w, &["PatientName=D*", "(0040,0100)[0].Modality=CT"]).accessions(),
        set(&["ACC1"])
    );

    // A bad identifier: the standard failure status and the association released, not
    // aborted.
    let bad = findscu(port, w, &["PatientName", &d("2026-11-22")], &[]);
    assert!(bad.responses.is_empty());
    assert!(bad.log.contains("Failed: UnableToProcess"), "{}", bad.log);
    assert!(bad.log.contains("Releasing Association"), "{}", bad.log);
    assert!(!bad.log.contains("Abort"), "{}", bad.log);

    // C-ECHO on the worklist port.
    let echo = Command::new("echoscu")
        .args(["-aec", "DICOM_GW", "127.0.0.1", &port.to_string()])
        .output()
        .unwrap();
    assert!(echo.status.success(), "{echo:?}");
    gw.stop();
}

#[test]
fn c_cancel_stops_a_large_result_set() {
    require_dcmtk();
    const N: usize = 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let items: Vec<Value> = (0..N)
        .map(|i| {
            item(
                &format!("C{i:05}"),
                &format!("P{i}"),
                &format!("Patient^{i}"),
                &format!("1.2.826.0.2.{i}"),
                "CT",
                "CT01",
                "20261122",
                "120000",
            )
        })
        .collect();
    seed(&data, &items);
    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);
    let w = tmp.path();
    // Responses already in the socket buffers when the C-CANCEL arrives cannot be taken back.
    // The gateway caps its send buffer; DCMTK's receive buffer is capped here too
    // (TCP_BUFFER_LENGTH, bytes) because Linux would otherwise let it grow to megabytes, and
    // then a slow findscu would receive everything the fast SCP queued before its cancel.
    let found = findscu_with(
        gw.worklist_port,
        w,
        &["PatientName", "AccessionNumber"],
        &["--cancel", "5"],
        |cmd| {
            cmd.env("TCP_BUFFER_LENGTH", "65536");
        },
    );
    assert!(found.ok, "{}", found.log);
    assert!(
        found.log.contains("MatchingTerminatedDueToCancelRequest") || found.log.contains("FE00"),
        "final status should be Cancel (FE00):\n{}",
        &found.log[found.log.len().saturating_sub(3000)..]
    );
    let got = found.responses.len();
    eprintln!("C-CANCEL after 5: {got} of {N} responses arrived");
    assert!(
        got >= 5,
        "at least the 5 responses before the cancel, got {got}"
    );
    assert!(
        got < N / 2,
        "C-CANCEL should stop the responses well before all {N} ({got} arrived)"
    );
    // The association is still usable afterwards: a full query on a new one works too.
    let all = findscu(gw.worklist_port, w, &["AccessionNumber=C0000*"], &[]);
    assert_eq!(all.responses.len(), 10, "{}", all.log);
    assert!(gw.stderr().contains("C-FIND cancelled"), "{}", gw.stderr());
    // The metrics: one cancelled and one completed C-FIND, the 10 matches of the second
    // among the matches sent, and the worklist associations counted apart from the store's.
    let m = |sample: &str| metric_value(gw.http_port, sample).unwrap_or(-1.0);
    assert_eq!(m("dicomgw_worklist_find_total{result=\"cancel\"}"), 1.0);
    assert_eq!(m("dicomgw_worklist_find_total{result=\"success\"}"), 1.0);
    assert_eq!(m("dicomgw_worklist_find_total{result=\"failure\"}"), 0.0);
    let matches = m("dicomgw_worklist_matches_total");
    assert!(
        matches >= 15.0 && matches < (N / 2 + 10) as f64,
        "{matches}"
    );
    assert_eq!(m("dicomgw_worklist_find_duration_seconds_count"), 2.0);
    assert_eq!(
        m("dicomgw_associations_total{service=\"worklist\",result=\"released\"}"),
        2.0
    );
    assert_eq!(
        m("dicomgw_associations_total{service=\"store\",result=\"released\"}"),
        0.0
    );
    gw.stop();
}

#[test]
fn only_store_and_only_worklist_run_as_two_processes() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let wl_dir = tmp.path().join("worklist");
    seed(&wl_dir, &seed_items()[..2]);
    let mut store = Daemon::start(BIN, &store_dir, "epoll", &["--only", "store"]);
    let mut wl = Daemon::start(BIN, &wl_dir, "epoll", &["--only", "worklist"]);
    // The store process has no worklist port and no worklist database.
    assert_eq!(store.worklist_port, 0, "{}", store.stdout());
    assert!(!store.stdout().contains(WORKLIST_PREFIX));
    assert!(!store_dir.join("worklist.redb").exists());
    // The worklist process has no store port.
    assert!(!wl.stdout().contains(READY_PREFIX), "{}", wl.stdout());
    assert_ne!(wl.worklist_port, 0);
    // Both serve at the same time.
    let spec = ObjSpec::new(1);
    let f = tmp.path().join("o.dcm");
    gen_part10(&f, &spec).unwrap();
    storescu(store.port, &[&f], &[]).assert_all_ok(&[&f]);
    assert!(spec.settled_path(&store_dir).exists());
    let found = query(wl.worklist_port, tmp.path(), &[]);
    assert_eq!(found.accessions(), set(&["ACC1", "ACC2"]), "{}", found.log);
    // Each process's admin API says which services it runs.
    store.stop();
    wl.stop();
}

#[test]
fn default_mode_runs_both_services_in_one_process() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    seed(&data, &seed_items()[..1]);
    let mut gw = Daemon::start(BIN, &data, "uring", &[]);
    assert_ne!(gw.port, 0);
    assert_ne!(gw.worklist_port, 0);
    assert_ne!(gw.port, gw.worklist_port);
    let spec = ObjSpec::new(2);
    let f = tmp.path().join("o.dcm");
    gen_part10(&f, &spec).unwrap();
    storescu(gw.port, &[&f], &[]).assert_all_ok(&[&f]);
    let found = query(gw.worklist_port, tmp.path(), &["PatientID=P1"]);
    assert_eq!(found.accessions(), set(&["ACC1"]), "{}", found.log);
    // The store port does not serve the worklist (its SOP class is not negotiated there).
    let wrong = findscu(gw.port, tmp.path(), &["PatientID"], &[]);
    assert!(wrong.responses.is_empty());
    assert!(
        !wrong.ok || wrong.log.contains("No Acceptable Presentation Contexts"),
        "{}",
        wrong.log
    );
    gw.stop();
}
