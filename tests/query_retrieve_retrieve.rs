//! Query/Retrieve C-MOVE and C-GET (issue 13, points 3, 4 and the `scu move|get` of 6)
//! against real peers: DCMTK `movescu` (Study Root and Patient Root) into DCMTK `storescp +B`
//! configured as a `[[destinations]]` entry — objects stored in two transfer syntaxes arrive
//! byte-identical, in their syntax, with the Move Originator; an unknown destination is A801, a
//! destination that is down is A702; `movescu --cancel` gets FE00 with consistent counts (the
//! destination, a pynetdicom storage SCP, holds its answers so the cancel has time to land);
//! DCMTK `getscu` retrieves a study byte-identical; a pynetdicom C-GET that offers CT but not
//! MR storage gets B000 and exactly the MR UIDs in the failed list, and one without role
//! selection gets A702 under the default policy; `dicom-gw scu move|get` against dicom-gw.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const QR_GET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer/qr_get.py");
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

/// Starts the gateway with `[store] disk_high_water_percent = 100` and `extra` TOML.
fn start(w: &Path, extra: &str) -> Daemon {
    start_io(w, extra, "epoll")
}

/// [`start`] on I/O backend `io`.
fn start_io(w: &Path, extra: &str, io: &str) -> Daemon {
    let toml = format!("[store]\ndisk_high_water_percent = 100\n\n{extra}");
    let cfg = w.join("gw.toml");
    std::fs::write(&cfg, toml).unwrap();
    Daemon::start(
        BIN,
        w.join("data"),
        io,
        &["--config", cfg.to_str().unwrap()],
    )
}

/// A `[[destinations]]` entry named `name`, AE title `ae`, on 127.0.0.1:`port`.
fn destination(name: &str, ae: &str, port: u16) -> String {
    format!(
        "[[destinations]]\nname = \"{name}\"\nae_title = \"{ae}\"\nhost = \"127.0.0.1\"\nport = {port}\n\n"
    )
}

/// Writes each spec as a Part-10 file in `ts` under `dir`, sends them with storescu; returns
/// the files (as sent: the reference the retrieved copies must equal).
fn store(port: u16, dir: &Path, specs: &[(&ObjSpec, Ts)]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (i, (s, ts)) in specs.iter().enumerate() {
        let raw = dir.join(format!("raw{}-{i}.dcm", s.sop_instance_uid));
        gen_part10(&raw, s).unwrap();
        let f = dir.join(format!("in{}-{i}.dcm", s.sop_instance_uid));
        convert_ts(&raw, &f, *ts);
        storescu(port, &[&f], &storescu_flags_for(*ts)).assert_all_ok(&[&f]);
        files.push(f);
    }
    files
}

/// Output of a DCMTK tool run, stdout and stderr joined.
fn run(cmd: &mut Command) -> String {
    let (out, timed_out) = run_timeout(cmd, RUN_TIMEOUT);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!timed_out, "{cmd:?} timed out:\n{log}");
    log
}

/// `movescu -d` with a model flag, keys and extra flags.
fn movescu(port: u16, model: &str, dest: &str, keys: &[String], extra: &[&str]) -> String {
    let mut cmd = Command::new("movescu");
    cmd.args([
        model, "-d", "-aet", "MOVER", "-aec", "DICOM_GW", "-aem", dest,
    ]);
    for k in keys {
        cmd.args(["-k", k]);
    }
    cmd.args(extra).arg("127.0.0.1").arg(port.to_string());
    run(&mut cmd)
}

/// The value printed after `label` in the last final C-MOVE/C-GET response of a DCMTK `-d`
/// log (e.g. "Number of Completed Suboperations : 3"); `None` if absent.
fn final_field(log: &str, label: &str) -> Option<String> {
    let start = log.rfind("C-MOVE RSP").max(log.rfind("C-GET RSP"))?;
    log[start..]
        .lines()
        .find(|l| l.contains(label))
        .and_then(|l| l.split_once(" : "))
        .map(|(_, v)| v.trim().to_owned())
}

/// The final status code in a DCMTK `-d` log: the hex after "DIMSE Status" of the last
/// response.
fn final_status(log: &str) -> String {
    let v = final_field(log, "DIMSE Status").unwrap_or_else(|| panic!("no status in:\n{log}"));
    v.split(':').next().unwrap_or("").trim().to_uppercase()
}

fn count(log: &str, label: &str) -> u64 {
    final_field(log, label)
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Files of `dir` by SOP Instance UID (from their meta group).
fn by_uid(dir: &Path) -> BTreeMap<String, PathBuf> {
    list_files(dir)
        .into_iter()
        .filter(|f| f.extension().is_none_or(|e| e != "tmp"))
        .map(|f| {
            let uid = meta_str(&f, tag(0x0002, 0x0003))
                .unwrap_or_else(|| panic!("no (0002,0003) in {}", f.display()));
            (uid, f)
        })
        .collect()
}

/// `movescu -S` of one study (STUDY level) to `dest`; its log.
fn move_study(port: u16, dest: &str, study_uid: &str) -> String {
    movescu(
        port,
        "-S",
        dest,
        &[
            "QueryRetrieveLevel=STUDY".into(),
            format!("StudyInstanceUID={study_uid}"),
        ],
        &[],
    )
}

/// The line of a DCMTK log that shows the Failed SOP Instance UID List (0008,0058).
fn failed_list(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("(0008,0058)"))
        .unwrap_or_else(|| panic!("no Failed SOP Instance UID List:\n{log}"))
}

/// Asserts `got` holds exactly the objects of `sent` (by SOP Instance UID), each with the same
/// transfer syntax and dataset bytes.
fn assert_identical(got: &BTreeMap<String, PathBuf>, sent: &[(&ObjSpec, &PathBuf)]) {
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        {
            let mut v: Vec<String> = sent
                .iter()
                .map(|(s, _)| s.sop_instance_uid.clone())
                .collect();
            v.sort();
            v
        },
        "retrieved instances differ from the ones named"
    );
    for (spec, file) in sent {
        let r = &got[&spec.sop_instance_uid];
        assert_eq!(
            meta_str(r, tag(0x0002, 0x0010)),
            meta_str(file, tag(0x0002, 0x0010)),
            "transfer syntax of {}",
            spec.sop_instance_uid
        );
        assert!(
            same_dataset(r, file),
            "dataset bytes of {} differ",
            spec.sop_instance_uid
        );
    }
}

#[test]
fn movescu_study_and_patient_root_deliver_byte_identical_objects_with_the_move_originator() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let dest = Storescp::start(w.join("dest"), &["-d"]);
    let mut gw = start(w, &destination("archive", "DEST", dest.port));
    // Study 1: a CT in Explicit VR LE and one in Implicit VR LE (two syntaxes, stored as
    // received); study 2: another study of the same patient, which must not move.
    let a = ObjSpec::new(1).patient("MOVE^ME", "PMOVE");
    let b = ObjSpec::new(2).same_series_as(&a);
    let c = ObjSpec::new(3).patient("MOVE^ME", "PMOVE");
    let files = store(
        gw.port,
        w,
        &[
            (&a, Ts::ExplicitLE),
            (&b, Ts::ImplicitLE),
            (&c, Ts::ExplicitLE),
        ],
    );

    let log = move_study(gw.port, "DEST", &a.study_instance_uid);
    assert_eq!(final_status(&log), "0X0000", "movescu log:\n{log}");
    assert_eq!(count(&log, "Completed Suboperations"), 2, "{log}");
    dest.wait_for_files(2, Duration::from_secs(30));
    let got = by_uid(&dest.dir);
    assert_identical(&got, &[(&a, &files[0]), (&b, &files[1])]);
    // storescp -d prints each C-STORE-RQ's command set.
    let dlog = dest.log();
    assert!(
        dlog.contains("Move Originator AE Title    : MOVER")
            || dlog.contains("Move Originator AE Title     : MOVER")
            || dlog
                .lines()
                .any(|l| l.contains("Move Originator AE Title") && l.contains("MOVER")),
        "storescp did not see the Move Originator:\n{dlog}"
    );

    // Patient Root, STUDY level: Patient ID above the level, the other study named.
    for f in list_files(&dest.dir) {
        std::fs::remove_file(f).unwrap();
    }
    let log = movescu(
        gw.port,
        "-P",
        "DEST",
        &[
            "QueryRetrieveLevel=STUDY".into(),
            "PatientID=PMOVE".into(),
            format!("StudyInstanceUID={}", c.study_instance_uid),
        ],
        &[],
    );
    assert_eq!(final_status(&log), "0X0000", "movescu log:\n{log}");
    dest.wait_for_files(1, Duration::from_secs(30));
    assert_identical(&by_uid(&dest.dir), &[(&c, &files[2])]);

    // Patient Root, PATIENT level: all three.
    for f in list_files(&dest.dir) {
        std::fs::remove_file(f).unwrap();
    }
    let log = movescu(
        gw.port,
        "-P",
        "DEST",
        &[
            "QueryRetrieveLevel=PATIENT".into(),
            "PatientID=PMOVE".into(),
        ],
        &[],
    );
    assert_eq!(final_status(&log), "0X0000", "movescu log:\n{log}");
    assert_eq!(count(&log, "Completed Suboperations"), 3, "{log}");
    dest.wait_for_files(3, Duration::from_secs(30));
    assert_identical(
        &by_uid(&dest.dir),
        &[(&a, &files[0]), (&b, &files[1]), (&c, &files[2])],
    );

    // Patient Root STUDY without the Patient ID: A900, nothing moved.
    let log = movescu(
        gw.port,
        "-P",
        "DEST",
        &[
            "QueryRetrieveLevel=STUDY".into(),
            format!("StudyInstanceUID={}", c.study_instance_uid),
        ],
        &[],
    );
    assert_eq!(final_status(&log), "0XA900", "movescu log:\n{log}");
    // Nothing matches: success with zero sub-operations.
    let log = move_study(gw.port, "DEST", "1.2.3.999");
    assert_eq!(final_status(&log), "0X0000", "movescu log:\n{log}");
    assert_eq!(count(&log, "Completed Suboperations"), 0, "{log}");
    gw.stop();
}

#[test]
fn movescu_unknown_destination_is_a801_and_a_destination_down_is_a702() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let down = free_port();
    let mut gw = start(w, &destination("gone", "GONE", down));
    let a = ObjSpec::new(10).patient("DOWN^X", "PDOWN");
    let b = ObjSpec::new(11).same_series_as(&a);
    store(gw.port, w, &[(&a, Ts::ExplicitLE), (&b, Ts::ExplicitLE)]);
    let keys = [
        "QueryRetrieveLevel=STUDY".to_owned(),
        format!("StudyInstanceUID={}", a.study_instance_uid),
    ];
    let log = movescu(gw.port, "-S", "NOSUCHAE", &keys, &[]);
    assert_eq!(final_status(&log), "0XA801", "movescu log:\n{log}");
    assert!(
        log.contains("NOSUCHAE unknown"),
        "Error Comment names it:\n{log}"
    );

    let log = movescu(gw.port, "-S", "GONE", &keys, &[]);
    assert_eq!(final_status(&log), "0XA702", "movescu log:\n{log}");
    assert_eq!(count(&log, "Failed Suboperations"), 2, "{log}");
    assert_eq!(count(&log, "Completed Suboperations"), 0, "{log}");
    assert!(
        log.contains(&a.sop_instance_uid) && log.contains(&b.sop_instance_uid),
        "the Failed SOP Instance UID List names both:\n{log}"
    );

    // A STUDY retrieve without its unique key: A900, naming the key.
    let no_key = [
        "QueryRetrieveLevel=STUDY".to_owned(),
        "PatientName=X".to_owned(),
    ];
    let log = movescu(gw.port, "-S", "GONE", &no_key, &[]);
    assert_eq!(final_status(&log), "0XA900", "movescu log:\n{log}");
    assert!(log.contains("(0020,000d)"), "Offending Element:\n{log}");
    gw.stop();

    // More matches than [query] max_retrieve_instances: A701 before any sub-operation.
    let limited = format!(
        "{}[query]\nmax_retrieve_instances = 1\n",
        destination("gone", "GONE", down)
    );
    let mut gw = start(w, &limited);
    let log = movescu(gw.port, "-S", "GONE", &keys, &[]);
    assert_eq!(final_status(&log), "0XA701", "movescu log:\n{log}");
    assert!(log.contains("max_retrieve_instances"), "{log}");
    assert_eq!(count(&log, "Failed Suboperations"), 0, "{log}");
    gw.stop();
}

/// A pynetdicom storage SCP from tests/peer/qr_get.py, killed on drop.
struct PyPeer(PyServer);

impl PyPeer {
    fn store_scp(
        port: u16,
        hold_after: u32,
        hold_seconds: f64,
        classes: Option<&[&str]>,
    ) -> PyPeer {
        let job = serde_json::json!({"mode": "store_scp", "port": port, "ae": "SLOW",
            "hold_after": hold_after, "hold_seconds": hold_seconds, "classes": classes});
        PyPeer(PyServer::start(QR_GET, &job, "LISTENING"))
    }

    fn stores(&self) -> Vec<Value> {
        self.0
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Runs qr_get.py in "get" mode; its JSON result.
fn py_get(job: Value) -> Value {
    let mut child = spawn_script(QR_GET, &job, Stdio::piped());
    let (out_buf, _) = drain(child.stdout.take().unwrap());
    let (err_buf, _) = drain(child.stderr.take().unwrap());
    let st = wait_timeout(&mut child, RUN_TIMEOUT);
    let out = String::from_utf8_lossy(&out_buf.lock().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&err_buf.lock().unwrap()).into_owned();
    assert!(
        st.is_some_and(|s| s.success()),
        "qr_get.py failed: {out}{err}"
    );
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("qr_get.py output {out:?}: {e}\n{err}"))
}

#[test]
fn movescu_cancel_gets_fe00_with_consistent_counts_and_the_originator_reaches_the_destination() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let port = free_port();
    // The destination answers the first two at once, then holds each answer 2 s: the cancel
    // sent after the second pending response lands while the third is held.
    let peer = PyPeer::store_scp(port, 2, 2.0, None);
    let mut gw = start(w, &destination("slow", "SLOW", port));
    let first = ObjSpec::new(20).patient("CANCEL^ME", "PCANCEL");
    let mut specs = vec![first.clone()];
    for i in 21..32 {
        specs.push(ObjSpec::new(i).same_series_as(&first));
    }
    let with_ts: Vec<(&ObjSpec, Ts)> = specs.iter().map(|s| (s, Ts::ExplicitLE)).collect();
    store(gw.port, w, &with_ts);
    let total = specs.len() as u64;
    let log = movescu(
        gw.port,
        "-S",
        "SLOW",
        &[
            "QueryRetrieveLevel=STUDY".into(),
            format!("StudyInstanceUID={}", first.study_instance_uid),
        ],
        &["--cancel", "2"],
    );
    assert_eq!(final_status(&log), "0XFE00", "movescu log:\n{log}");
    let (c, f, wn, r) = (
        count(&log, "Completed Suboperations"),
        count(&log, "Failed Suboperations"),
        count(&log, "Warning Suboperations"),
        count(&log, "Remaining Suboperations"),
    );
    assert_eq!(
        c + f + wn + r,
        total,
        "completed {c} + failed {f} + warning {wn} + remaining {r}:\n{log}"
    );
    assert!(r > 0, "the cancel stopped nothing:\n{log}");
    // Each C-STORE-RQ carried the Move Originator AE title and the C-MOVE's Message ID.
    let stores = peer.stores();
    assert_eq!(
        stores.len() as u64,
        c,
        "stores seen by the destination: {stores:?}"
    );
    for s in &stores {
        assert_eq!(s["originator_ae"], "MOVER", "{s}");
        assert!(s["originator_id"].as_u64().is_some(), "{s}");
    }
    gw.stop();
}

/// Each C-MOVE holds a retrieve-pool thread for its whole transfer: past
/// `MAX_CONCURRENT_MOVES` (3) running at once, another is refused with A702 at once (and one
/// thread stays free), and it succeeds again once they ended.
#[test]
fn a_fourth_concurrent_c_move_is_refused_with_a702_and_served_after() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let port = free_port();
    // The destination holds every answer 1 s: three moves of three objects each take ~3 s.
    let _peer = PyPeer::store_scp(port, 0, 1.0, None);
    let mut gw = start(w, &destination("slow", "SLOW", port));
    let mut studies = Vec::new();
    for s in 0..4u32 {
        let first = ObjSpec::new(60 + 10 * s).patient("BUSY^MOVE", "PBUSY");
        let specs = [
            first.clone(),
            ObjSpec::new(61 + 10 * s).same_series_as(&first),
            ObjSpec::new(62 + 10 * s).same_series_as(&first),
        ];
        let with_ts: Vec<(&ObjSpec, Ts)> = specs.iter().map(|s| (s, Ts::ExplicitLE)).collect();
        store(gw.port, w, &with_ts);
        studies.push(first.study_instance_uid.clone());
    }
    let keys = |uid: &str| {
        vec![
            "QueryRetrieveLevel=STUDY".to_owned(),
            format!("StudyInstanceUID={uid}"),
        ]
    };
    let gw_port = gw.port;
    let running: Vec<_> = studies[..3]
        .iter()
        .map(|uid| {
            let k = keys(uid);
            std::thread::spawn(move || movescu(gw_port, "-S", "SLOW", &k, &[]))
        })
        .collect();
    wait_for("three C-MOVEs to start", Duration::from_secs(30), || {
        let n = gw.stderr().matches("C-MOVE started").count();
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} started"))
        }
    });
    let log = movescu(gw.port, "-S", "SLOW", &keys(&studies[3]), &[]);
    assert_eq!(final_status(&log), "0XA702", "movescu log:\n{log}");
    assert!(log.contains("C-MOVEs are running"), "{log}");
    for t in running {
        let log = t.join().unwrap();
        assert_eq!(final_status(&log), "0X0000", "movescu log:\n{log}");
    }
    let log = movescu(gw.port, "-S", "SLOW", &keys(&studies[3]), &[]);
    assert_eq!(final_status(&log), "0X0000", "movescu log:\n{log}");
    gw.stop();
}

#[test]
fn movescu_to_a_destination_refusing_one_sop_class_gets_b000_listing_exactly_those() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let port = free_port();
    let peer = PyPeer::store_scp(port, 1 << 30, 0.0, Some(&[CT]));
    let mut gw = start(w, &destination("ctonly", "CTONLY", port));
    let ct1 = ObjSpec::new(30).patient("MOVE^PART", "PMPART");
    let ct2 = ObjSpec::new(31).same_series_as(&ct1);
    let mut mr = ObjSpec::new(32)
        .same_study_as(&ct1)
        .modality("MR")
        .sop_class(MR);
    mr.series_number = 2;
    store(
        gw.port,
        w,
        &[
            (&ct1, Ts::ExplicitLE),
            (&mr, Ts::ExplicitLE),
            (&ct2, Ts::ExplicitLE),
        ],
    );
    let log = move_study(gw.port, "CTONLY", &ct1.study_instance_uid);
    assert_eq!(final_status(&log), "0XB000", "movescu log:\n{log}");
    assert_eq!(count(&log, "Completed Suboperations"), 2, "{log}");
    assert_eq!(count(&log, "Failed Suboperations"), 1, "{log}");
    let list_line = failed_list(&log);
    assert!(list_line.contains(&mr.sop_instance_uid), "{list_line}");
    assert!(
        !list_line.contains(&ct1.sop_instance_uid) && !list_line.contains(&ct2.sop_instance_uid)
    );
    let mut stored: Vec<String> = peer
        .stores()
        .iter()
        .map(|s| s["sop"].as_str().unwrap().to_owned())
        .collect();
    stored.sort();
    let mut want = vec![ct1.sop_instance_uid.clone(), ct2.sop_instance_uid.clone()];
    want.sort();
    assert_eq!(stored, want);
    gw.stop();
}

/// Each sub-operation's object is read and framed while the destination stores the one
/// before it (one write each), except objects above one write batch, which are streamed: a
/// study mixing both, with one file gone from disk in the middle, delivers every other object
/// byte-identical on the same association and lists exactly the missing one.
#[test]
fn movescu_mixing_staged_and_streamed_objects_with_one_file_missing_fails_only_that_one() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let dest = Storescp::start(w.join("dest"), &["-d"]);
    let mut gw = start(w, &destination("archive", "DEST", dest.port));
    let first = ObjSpec::new(50).patient("MOVE^MIX", "PMIX");
    let specs: Vec<ObjSpec> = std::iter::once(first.clone())
        .chain((51..56).map(|n| {
            let s = ObjSpec::new(n).same_series_as(&first);
            // Two objects above the 1 MiB write batch: streamed, not staged.
            if n == 52 || n == 54 {
                s.pixel_bytes(3 << 20)
            } else {
                s
            }
        }))
        .collect();
    let with_ts: Vec<(&ObjSpec, Ts)> = specs.iter().map(|s| (s, Ts::ExplicitLE)).collect();
    let files = store(gw.port, w, &with_ts);
    let data = w.join("data");
    let gone = &specs[3];
    let path = gone.stored_path(&data);
    wait_for("the object file", Duration::from_secs(30), || {
        path.exists().then_some(()).ok_or("not yet".to_string())
    });
    std::fs::remove_file(&path).unwrap();

    let log = move_study(gw.port, "DEST", &first.study_instance_uid);
    assert_eq!(final_status(&log), "0XB000", "movescu log:\n{log}");
    assert_eq!(count(&log, "Completed Suboperations"), 5, "{log}");
    assert_eq!(count(&log, "Failed Suboperations"), 1, "{log}");
    let list_line = failed_list(&log);
    assert!(list_line.contains(&gone.sop_instance_uid), "{list_line}");
    dest.wait_for_files(5, Duration::from_secs(30));
    let sent: Vec<(&ObjSpec, &PathBuf)> = specs
        .iter()
        .zip(&files)
        .filter(|(s, _)| s.sop_instance_uid != gone.sop_instance_uid)
        .collect();
    assert_identical(&by_uid(&dest.dir), &sent);
    // One association carried them all: a missing file is not a broken association.
    let associations = dest.log().matches("I: Association Received").count();
    assert_eq!(associations, 1, "storescp log:\n{}", dest.log());
    gw.stop();
}

// C-GET sends from the association's own task: run on both I/O backends.
gwtest!(getscu_retrieves_a_study_byte_identical, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let mut gw = start_io(w, "", io);
    let a = ObjSpec::new(40).patient("GET^ME", "PGET");
    let b = ObjSpec::new(41).same_series_as(&a).pixel_bytes(3 << 20);
    let files = store(gw.port, w, &[(&a, Ts::ExplicitLE), (&b, Ts::ExplicitLE)]);
    let out = w.join("got");
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = Command::new("getscu");
    cmd.args(["-S", "-d", "-aec", "DICOM_GW", "+B", "-od"])
        .arg(&out)
        .args([
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={}", a.study_instance_uid),
            "127.0.0.1",
            &gw.port.to_string(),
        ]);
    let log = run(&mut cmd);
    assert_eq!(final_status(&log), "0X0000", "getscu log:\n{log}");
    assert_identical(&by_uid(&out), &[(&a, &files[0]), (&b, &files[1])]);
    gw.stop();
});

#[test]
fn pynetdicom_get_without_a_storage_context_or_role_fails_those_instances() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let mut gw = start(w, "");
    let ct1 = ObjSpec::new(50).patient("GET^PART", "PPART");
    let ct2 = ObjSpec::new(51).same_series_as(&ct1);
    let mut mr = ObjSpec::new(52)
        .same_study_as(&ct1)
        .modality("MR")
        .sop_class(MR);
    mr.series_number = 2;
    store(
        gw.port,
        w,
        &[
            (&ct1, Ts::ExplicitLE),
            (&ct2, Ts::ExplicitLE),
            (&mr, Ts::ExplicitLE),
        ],
    );
    let keys = serde_json::json!({"QueryRetrieveLevel": "STUDY",
        "StudyInstanceUID": ct1.study_instance_uid});
    // CT offered with the SCP role, MR not offered at all.
    let r = py_get(
        serde_json::json!({"mode": "get", "port": gw.port, "keys": keys,
        "contexts": [[CT, ["1.2.840.10008.1.2.1"]]], "roles": true}),
    );
    assert_eq!(r["status"], "B000", "{r}");
    assert_eq!(r["completed"], 2, "{r}");
    assert_eq!(r["failed"], 1, "{r}");
    assert_eq!(
        r["failed_uids"],
        serde_json::json!([mr.sop_instance_uid]),
        "{r}"
    );
    let mut received: Vec<String> = r["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    received.sort();
    let mut want = vec![ct1.sop_instance_uid.clone(), ct2.sop_instance_uid.clone()];
    want.sort();
    assert_eq!(received, want);
    // Both offered, but no role selection (GinkgoCADx-style): with the default
    // get_requires_role_selection = true every sub-operation fails, never a silent 0000.
    let r = py_get(
        serde_json::json!({"mode": "get", "port": gw.port, "keys": keys,
        "contexts": [[CT, ["1.2.840.10008.1.2.1"]], [MR, ["1.2.840.10008.1.2.1"]]],
        "roles": false}),
    );
    assert_eq!(r["status"], "A702", "{r}");
    assert_eq!(r["failed"], 3, "{r}");
    assert_eq!(r["failed_uids"].as_array().unwrap().len(), 3, "{r}");
    // Both counted by outcome.
    for (result, n) in [("warning", 1.0), ("failure", 1.0), ("success", 0.0)] {
        let sample = format!("dicomgw_qr_requests_total{{op=\"get\",result=\"{result}\"}}");
        assert_eq!(metric_value(gw.http_port, &sample), Some(n), "{sample}");
    }
    gw.stop();
}

gwtest!(
    pynetdicom_get_cancel_gets_fe00_with_consistent_counts,
    |io: &str| {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let w = tmp.path();
        let mut gw = start_io(w, "", io);
        let first = ObjSpec::new(80).patient("GET^CANCEL", "PGCANCEL");
        let mut specs = vec![first.clone()];
        for i in 81..88 {
            specs.push(ObjSpec::new(i).same_series_as(&first));
        }
        let with_ts: Vec<(&ObjSpec, Ts)> = specs.iter().map(|s| (s, Ts::ExplicitLE)).collect();
        store(gw.port, w, &with_ts);
        let keys = serde_json::json!({"QueryRetrieveLevel": "STUDY",
        "StudyInstanceUID": first.study_instance_uid});
        let r = py_get(
            serde_json::json!({"mode": "get", "port": gw.port, "keys": keys,
        "contexts": [[CT, ["1.2.840.10008.1.2.1"]]], "roles": true, "cancel_after": 3}),
        );
        assert_eq!(r["status"], "FE00", "{r}");
        // The cancel arrived while the third C-STORE-RSP was due: stopped right after it.
        assert_eq!(r["completed"], 3, "{r}");
        assert_eq!(r["failed"], 0, "{r}");
        assert_eq!(r["remaining"], specs.len() as u64 - 3, "{r}");
        assert_eq!(r["received"].as_array().unwrap().len(), 3, "{r}");
        // Nothing was left half-done: the next C-GET is served in full.
        let r = py_get(
            serde_json::json!({"mode": "get", "port": gw.port, "keys": keys,
        "contexts": [[CT, ["1.2.840.10008.1.2.1"]]], "roles": true}),
        );
        assert_eq!(r["status"], "0000", "{r}");
        assert_eq!(r["completed"], specs.len() as u64, "{r}");
        gw.stop();
    }
);

#[test]
fn a_get_requestor_that_aborts_mid_retrieve_leaves_the_gateway_serving() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let mut gw = start(w, "");
    let first = ObjSpec::new(90).patient("GET^ABORT", "PGABORT");
    let second = ObjSpec::new(91).same_series_as(&first);
    let third = ObjSpec::new(92).same_series_as(&first);
    store(
        gw.port,
        w,
        &[
            (&first, Ts::ExplicitLE),
            (&second, Ts::ExplicitLE),
            (&third, Ts::ExplicitLE),
        ],
    );
    let keys = serde_json::json!({"QueryRetrieveLevel": "STUDY",
        "StudyInstanceUID": first.study_instance_uid});
    let r = py_get(
        serde_json::json!({"mode": "get", "port": gw.port, "keys": keys,
        "contexts": [[CT, ["1.2.840.10008.1.2.1"]]], "roles": true, "abort_after": 1, "timeout": 5}),
    );
    assert!(
        r["status"].is_null(),
        "no final response after the abort: {r}"
    );
    wait_for(
        "the gateway to log the abort",
        Duration::from_secs(30),
        || {
            let log = gw.stderr();
            if log.contains("aborted by the peer during C-GET")
                || log.contains("retrieve ended: the requestor is gone")
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    let r = py_get(
        serde_json::json!({"mode": "get", "port": gw.port, "keys": keys,
        "contexts": [[CT, ["1.2.840.10008.1.2.1"]]], "roles": true}),
    );
    assert_eq!(r["status"], "0000", "{r}");
    assert_eq!(r["completed"], 3, "{r}");
    assert!(gw.is_running());
    gw.stop();
}

#[test]
fn pynetdicom_get_without_role_selection_is_served_when_the_policy_allows_it() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let mut gw = start(w, "[query]\nget_requires_role_selection = false\n");
    let ct1 = ObjSpec::new(60).patient("GET^LAX", "PLAX");
    store(gw.port, w, &[(&ct1, Ts::ExplicitLE)]);
    let keys = serde_json::json!({"QueryRetrieveLevel": "STUDY",
        "StudyInstanceUID": ct1.study_instance_uid});
    let r = py_get(
        serde_json::json!({"mode": "get", "port": gw.port, "keys": keys,
        "contexts": [[CT, ["1.2.840.10008.1.2.1"]]], "roles": false}),
    );
    // The gateway sends the C-STORE anyway; pynetdicom itself refuses C-STOREs on a context
    // for which it did not get the SCP role, so its failure status comes back and counts as
    // a failed sub-operation (A702) — proof that it was sent, not skipped by the policy.
    assert_eq!(r["status"], "A702", "{r}");
    assert_eq!(r["failed"], 1, "{r}");
    let log = gw.stderr();
    assert!(
        log.contains("C-GET sub-operation failed: C-STORE-RSP status"),
        "the sub-operation was not sent:\n{log}"
    );
    assert!(!log.contains("no SCP role agreed"), "{log}");
    gw.stop();
}

gwtest!(dicom_gw_scu_move_and_get_against_dicom_gw, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let dest = Storescp::start(w.join("dest"), &[]);
    let mut gw = start_io(w, &destination("archive", "DEST", dest.port), io);
    let a = ObjSpec::new(70).patient("SCU^ME", "PSCU");
    let b = ObjSpec::new(71).same_series_as(&a);
    let files = store(gw.port, w, &[(&a, Ts::ExplicitLE), (&b, Ts::ImplicitLE)]);
    let port = gw.port.to_string();
    let study = format!("StudyInstanceUID={}", a.study_instance_uid);
    let out = gw_cli(&[
        "scu",
        "move",
        "-S",
        "--move",
        "DEST",
        "--aec",
        "DICOM_GW",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        &study,
        "127.0.0.1",
        &port,
    ])
    .ok()
    .json();
    assert_eq!(out["status"], "0000", "{out}");
    assert_eq!(out["completed"], 2, "{out}");
    dest.wait_for_files(2, Duration::from_secs(30));
    assert_identical(&by_uid(&dest.dir), &[(&a, &files[0]), (&b, &files[1])]);

    let got = w.join("got");
    let out = gw_cli(&[
        "scu",
        "get",
        "-S",
        "--aec",
        "DICOM_GW",
        "--od",
        got.to_str().unwrap(),
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        &study,
        "-k",
        &format!("SeriesInstanceUID={}", a.series_instance_uid),
        "127.0.0.1",
        &port,
    ])
    .ok()
    .json();
    assert_eq!(out["status"], "0000", "{out}");
    assert_eq!(out["completed"], 2, "{out}");
    assert_identical(&by_uid(&got), &[(&a, &files[0]), (&b, &files[1])]);

    // Unknown destination: exit code 1, A801 in the JSON.
    let out = gw_cli(&[
        "scu",
        "move",
        "--move",
        "NOPE",
        "--aec",
        "DICOM_GW",
        "-k",
        &study,
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(out.json()["status"], "A801", "{out:?}");
    gw.stop();
});
