//! Query/Retrieve C-FIND (issue 13, points 1, 2 and the `scu find` of 6) against real peers:
//! DCMTK `findscu -P`/`-S` at every level (exactly the stored entities, exactly the requested
//! keys), `findscu --cancel` (FE00), the `[query] max_results` cap over an index synthesized
//! with the library's own `put_instance`, a pynetdicom table-driven matching matrix with
//! relational queries with and without SOP Class Extended Negotiation, and pydicom's own
//! character-set files stored and found by their Patient's Name in their own repertoire, via
//! C-FIND (pynetdicom and `dicom-gw scu find`) and the admin API.
//!
//! pynetdicom (and pydicom, whose wheel carries the charset files) come from the test venv of
//! `util::python`; DCMTK from Debian.

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject};
use serde_json::{json, Value};
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const QR_SCU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer/qr_find.py");
const FIND_TIMEOUT: Duration = Duration::from_secs(120);

/// What one `findscu` run returned.
struct Found {
    responses: Vec<DefaultDicomObject>,
    log: String,
}

impl Found {
    fn values(&self, tag: Tag) -> BTreeSet<String> {
        self.responses.iter().map(|r| text(r, tag)).collect()
    }

    /// The tags of every response, each as a set.
    fn tag_sets(&self) -> Vec<BTreeSet<Tag>> {
        self.responses
            .iter()
            .map(|r| r.iter().map(|e| e.header().tag).collect())
            .collect()
    }

    fn final_status(&self) -> &str {
        self.log
            .lines()
            .rev()
            .find(|l| l.contains("Final Find Response"))
            .unwrap_or("")
    }
}

fn text(obj: &DefaultDicomObject, tag: Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| s.trim_end().to_owned()))
        .unwrap_or_default()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `findscu -v -P|-S -X -od OUT -k … [extra] 127.0.0.1 PORT`, responses read back.
fn findscu(port: u16, work: &Path, model: &str, keys: &[&str], extra: &[&str]) -> Found {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_dir = work.join(format!("find-{n}"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut cmd = Command::new("findscu");
    cmd.args([model, "-v", "-aec", "DICOM_GW", "-X", "-od"])
        .arg(&out_dir);
    for k in keys {
        cmd.args(["-k", k]);
    }
    cmd.args(extra).arg("127.0.0.1").arg(port.to_string());
    cmd.env("TCP_BUFFER_LENGTH", "65536");
    let (out, timed_out) = run_timeout(&mut cmd, FIND_TIMEOUT);
    assert!(!timed_out, "findscu timed out: {cmd:?}");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "findscu failed ({:?}):\n{log}",
        out.status
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let responses = files
        .iter()
        .map(|f| open_file(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect();
    Found { responses, log }
}

/// The tag of a findscu `-k` key (its name before `=`).
fn key_tag(k: &str) -> Tag {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    let name = k.split('=').next().unwrap();
    dicom_dictionary_std::StandardDataDictionary
        .by_name(name)
        .unwrap_or_else(|| panic!("{name}"))
        .tag_range()
        .inner()
}

/// Asserts every response holds exactly the requested keys plus Query/Retrieve Level.
fn assert_exact_keys(found: &Found, keys: &[&str]) {
    let mut want: BTreeSet<Tag> = keys.iter().map(|k| key_tag(k)).collect();
    want.insert(tags::QUERY_RETRIEVE_LEVEL);
    for got in found.tag_sets() {
        assert_eq!(
            got, want,
            "response keys differ from the request's:\n{}",
            found.log
        );
    }
}

/// A small archive: patient A with study 1 (CT series of 2, MR series of 1) and study 2 (CT),
/// patient B with study 3 (CT).
struct Corpus {
    s1: ObjSpec,
    s1_ct2: ObjSpec,
    s1_mr: ObjSpec,
    s2: ObjSpec,
    s3: ObjSpec,
}

impl Corpus {
    fn new() -> Corpus {
        let s1 = ObjSpec::new(1).patient("ALPHA^ANN", "PIDA");
        let s1_ct2 = ObjSpec::new(2).same_series_as(&s1);
        let mut s1_mr = ObjSpec::new(3).same_study_as(&s1).modality("MR");
        s1_mr.series_number = 2;
        let mut s2 = ObjSpec::new(4).patient("ALPHA^ANN", "PIDA");
        s2.study_date = "20240301".into();
        let s3 = ObjSpec::new(5).patient("BETA^BOB", "PIDB");
        Corpus {
            s1,
            s1_ct2,
            s1_mr,
            s2,
            s3,
        }
    }

    fn all(&self) -> [&ObjSpec; 5] {
        [&self.s1, &self.s1_ct2, &self.s1_mr, &self.s2, &self.s3]
    }

    fn store(&self, port: u16, dir: &Path) {
        let files: Vec<PathBuf> = self
            .all()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let f = dir.join(format!("obj{i}.dcm"));
                gen_part10(&f, s).unwrap();
                f
            })
            .collect();
        storescu(port, &files, &[]).assert_all_ok(&files);
    }
}

#[test]
fn findscu_patient_and_study_root_at_every_level_return_exactly_the_stored_entities_and_keys() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let mut gw = Daemon::start(BIN, w.join("data"), "epoll", &[]);
    let c = Corpus::new();
    c.store(gw.port, w);
    let port = gw.port;

    // Patient Root, PATIENT: both patients, with the computed counts.
    let keys = [
        "QueryRetrieveLevel=PATIENT",
        "PatientID",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ];
    let f = findscu(port, w, "-P", &keys, &[]);
    assert_exact_keys(&f, &keys);
    assert_eq!(
        f.values(tags::PATIENT_ID),
        set(&["PIDA", "PIDB"]),
        "{}",
        f.log
    );
    for r in &f.responses {
        let counts = (
            text(r, tags::NUMBER_OF_PATIENT_RELATED_STUDIES),
            text(r, tags::NUMBER_OF_PATIENT_RELATED_SERIES),
            text(r, tags::NUMBER_OF_PATIENT_RELATED_INSTANCES),
        );
        let want = if text(r, tags::PATIENT_ID) == "PIDA" {
            ("2", "3", "4")
        } else {
            ("1", "1", "1")
        };
        assert_eq!(
            (counts.0.as_str(), counts.1.as_str(), counts.2.as_str()),
            want
        );
    }

    // Patient Root, STUDY under patient A.
    let keys = [
        "QueryRetrieveLevel=STUDY",
        "PatientID=PIDA",
        "StudyInstanceUID",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ];
    let f = findscu(port, w, "-P", &keys, &[]);
    assert_exact_keys(&f, &keys);
    assert_eq!(
        f.values(tags::STUDY_INSTANCE_UID),
        set(&[&c.s1.study_instance_uid, &c.s2.study_instance_uid]),
        "{}",
        f.log
    );
    let s1 = f
        .responses
        .iter()
        .find(|r| text(r, tags::STUDY_INSTANCE_UID) == c.s1.study_instance_uid)
        .unwrap();
    assert_eq!(text(s1, tags::MODALITIES_IN_STUDY), "CT\\MR");
    assert_eq!(text(s1, tags::NUMBER_OF_STUDY_RELATED_SERIES), "2");
    assert_eq!(text(s1, tags::NUMBER_OF_STUDY_RELATED_INSTANCES), "3");
    assert_eq!(text(s1, tags::SOP_CLASSES_IN_STUDY), c.s1.sop_class_uid);
    assert_eq!(text(s1, tags::STUDY_DATE), c.s1.study_date);
    assert_eq!(text(s1, tags::ACCESSION_NUMBER), c.s1.accession_number);

    // Patient Root, SERIES and IMAGE.
    let study1 = format!("StudyInstanceUID={}", c.s1.study_instance_uid);
    let keys = [
        "QueryRetrieveLevel=SERIES",
        "PatientID=PIDA",
        &study1,
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    ];
    let f = findscu(port, w, "-P", &keys, &[]);
    assert_exact_keys(&f, &keys);
    assert_eq!(
        f.values(tags::SERIES_INSTANCE_UID),
        set(&[&c.s1.series_instance_uid, &c.s1_mr.series_instance_uid])
    );
    for r in &f.responses {
        let ct = text(r, tags::MODALITY) == "CT";
        assert_eq!(
            text(r, tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
            if ct { "2" } else { "1" }
        );
    }
    let series1 = format!("SeriesInstanceUID={}", c.s1.series_instance_uid);
    let keys = [
        "QueryRetrieveLevel=IMAGE",
        "PatientID=PIDA",
        &study1,
        &series1,
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ];
    let f = findscu(port, w, "-P", &keys, &[]);
    assert_exact_keys(&f, &keys);
    assert_eq!(
        f.values(tags::SOP_INSTANCE_UID),
        set(&[&c.s1.sop_instance_uid, &c.s1_ct2.sop_instance_uid])
    );
    assert_eq!(
        f.values(tags::INSTANCE_NUMBER),
        set(&[
            &c.s1.instance_number.to_string(),
            &c.s1_ct2.instance_number.to_string()
        ])
    );

    // Study Root: STUDY (all, and by name), SERIES, IMAGE.
    let keys = [
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
    ];
    let f = findscu(port, w, "-S", &keys, &[]);
    assert_exact_keys(&f, &keys);
    assert_eq!(f.responses.len(), 3, "{}", f.log);
    for r in &f.responses {
        let uid = text(r, tags::STUDY_INSTANCE_UID);
        let spec = c
            .all()
            .into_iter()
            .find(|s| s.study_instance_uid == uid)
            .unwrap();
        assert_eq!(text(r, tags::PATIENT_NAME), spec.patient_name);
        assert_eq!(text(r, tags::STUDY_DATE), spec.study_date);
        assert_eq!(text(r, tags::STUDY_TIME), spec.study_time);
        assert_eq!(text(r, tags::STUDY_ID), spec.study_id);
        assert_eq!(text(r, tags::STUDY_DESCRIPTION), spec.study_description);
    }
    let f = findscu(
        port,
        w,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientName=alpha*",
        ],
        &[],
    );
    assert_eq!(
        f.values(tags::STUDY_INSTANCE_UID),
        set(&[&c.s1.study_instance_uid, &c.s2.study_instance_uid])
    );
    let keys = [
        "QueryRetrieveLevel=SERIES",
        &study1,
        "SeriesInstanceUID",
        "Modality",
    ];
    let f = findscu(port, w, "-S", &keys, &[]);
    assert_exact_keys(&f, &keys);
    assert_eq!(f.values(tags::MODALITY), set(&["CT", "MR"]));
    let keys = [
        "QueryRetrieveLevel=IMAGE",
        &study1,
        &series1,
        "SOPInstanceUID",
    ];
    let f = findscu(port, w, "-S", &keys, &[]);
    assert_exact_keys(&f, &keys);
    assert_eq!(f.responses.len(), 2);
    // A key below the level is returned zero-length, not matched.
    let f = findscu(
        port,
        w,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "SOPInstanceUID=9.9",
        ],
        &[],
    );
    assert_eq!(f.responses.len(), 3, "{}", f.log);
    assert_eq!(f.values(tags::SOP_INSTANCE_UID), set(&[""]));

    // Refusals: PATIENT on Study Root; SERIES without the study (no relational negotiation).
    let f = findscu(
        port,
        w,
        "-S",
        &["QueryRetrieveLevel=PATIENT", "PatientID"],
        &[],
    );
    assert!(f.responses.is_empty());
    assert!(
        f.final_status().contains("DataSetDoesNotMatchSOPClass"),
        "A900 expected:\n{}",
        f.log
    );
    let f = findscu(
        port,
        w,
        "-S",
        &["QueryRetrieveLevel=SERIES", "Modality=MR"],
        &[],
    );
    assert!(f.responses.is_empty());
    assert!(
        f.final_status().contains("DataSetDoesNotMatchSOPClass"),
        "{}",
        f.log
    );
    gw.stop();
}

/// A quarantined object (its Study Instance UID 77 characters long) is found by C-FIND under
/// the substitute Study Instance UID it is indexed under, at every level down to IMAGE, and
/// never answers with the raw one: its object row is built after quarantine replaced the UID.
#[test]
fn findscu_finds_a_quarantined_object_under_its_substitute_study_uid() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let mut gw = Daemon::start(BIN, w.join("data"), "epoll", &[]);
    let mut q = ObjSpec::new(77).patient("GAMMA^GUS", "PIDQ");
    q.study_instance_uid = format!("1.2.{}", "3".repeat(73));
    let f = w.join("q.dcm");
    gen_part10(&f, &q).unwrap();
    storescu(gw.port, std::slice::from_ref(&f), &[]).assert_all_ok(std::slice::from_ref(&f));

    let keys = [
        "QueryRetrieveLevel=STUDY",
        "PatientID=PIDQ",
        "StudyInstanceUID",
    ];
    let found = findscu(gw.port, w, "-S", &keys, &[]);
    let studies = found.values(tags::STUDY_INSTANCE_UID);
    assert_eq!(studies.len(), 1, "{}", found.log);
    let substitute = studies.into_iter().next().unwrap();
    assert!(substitute.starts_with("2.25."), "{substitute}");

    let study_key = format!("StudyInstanceUID={substitute}");
    let series_key = format!("SeriesInstanceUID={}", q.series_instance_uid);
    let keys = [
        "QueryRetrieveLevel=IMAGE",
        study_key.as_str(),
        series_key.as_str(),
        "SOPInstanceUID",
        "PatientID",
    ];
    let found = findscu(gw.port, w, "-S", &keys, &[]);
    assert_eq!(
        found.values(tags::SOP_INSTANCE_UID),
        set(&[&q.sop_instance_uid]),
        "{}",
        found.log
    );
    assert_eq!(
        found.values(tags::STUDY_INSTANCE_UID),
        set(&[&substitute]),
        "{}",
        found.log
    );
    assert_eq!(found.values(tags::PATIENT_ID), set(&["PIDQ"]));
    gw.stop();
}

/// Synthesizes `n` studies (one instance each) into the index of `data` with the library's
/// `put_instance`, as ingest writes them: no files, which C-FIND never reads.
fn synthesize(data: &Path, n: usize) {
    use dicom_gw::store::attrs::IndexAttrs;
    use dicom_gw::store::index::{put_instance, Index, InstanceRecord};
    std::fs::create_dir_all(data).unwrap();
    let index = Index::open(&data.join("gateway.redb")).unwrap();
    let tx = index.database().begin_write().unwrap();
    for i in 0..n {
        let study = format!("1.2.826.0.1.3680043.10.1.{i}");
        let series = format!("{study}.1");
        let sop = format!("{study}.1.1");
        let rec = InstanceRecord {
            sop_instance_uid: sop.clone(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            study_instance_uid: study.clone(),
            series_instance_uid: series.clone(),
            instance_number: "1".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            file_size: 0,
            dataset_size: 0,
            dataset_blake3: String::new(),
            received_at_us: 0,
            calling_ae_title: "SYNTH".into(),
            called_ae_title: "GW".into(),
            path: format!("objects/synthetic/{i}.dcm"),
        };
        let attrs = IndexAttrs {
            sop_class_uid: rec.sop_class_uid.clone(),
            sop_instance_uid: sop,
            study_instance_uid: study,
            series_instance_uid: series,
            patient_name: format!("SYNTH^{i:05}"),
            patient_id: format!("S{i:05}"),
            study_date: format!("2025{:02}{:02}", 1 + i % 12, 1 + i % 28),
            modality: "CT".into(),
            ..IndexAttrs::default()
        };
        put_instance(&tx, &rec, &attrs, false).unwrap();
    }
    tx.commit().unwrap();
}

/// A downgrade and back: objects indexed by a version that kept no Query/Retrieve rows are
/// found by C-FIND once this version has started on the data directory again.
#[test]
fn findscu_finds_objects_an_older_version_indexed_without_their_rows() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let data = w.join("data");
    synthesize(&data, 10);
    // Five more studies as the older version wrote them: index rows, no Query/Retrieve rows.
    {
        let index = dicom_gw::store::index::Index::open(&data.join("gateway.redb")).unwrap();
        let tx = index.database().begin_write().unwrap();
        let mut objects = tx.open_table(dicom_gw::db::QR_OBJECTS).unwrap();
        let mut keys = tx.open_table(dicom_gw::db::QR_STUDY_KEYS).unwrap();
        let mut keys_of = tx.open_table(dicom_gw::db::QR_STUDY_KEYS_OF).unwrap();
        for i in 5..10 {
            let study = format!("1.2.826.0.1.3680043.10.1.{i}");
            let sop = format!("{study}.1.1");
            objects
                .remove((study.as_str(), format!("{study}.1").as_str(), sop.as_str()))
                .unwrap()
                .expect("the row synthesize wrote");
            keys.retain(|(_, _, st), _| st != study).unwrap();
            keys_of.remove(study.as_str()).unwrap();
        }
        drop((objects, keys, keys_of));
        tx.commit().unwrap();
    }
    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);
    let f = findscu(
        gw.port,
        w,
        "-S",
        &["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID"],
        &[],
    );
    let want: BTreeSet<String> = (0..10).map(|i| format!("S{i:05}")).collect();
    assert_eq!(f.values(tags::PATIENT_ID), want, "{}", f.final_status());
    // The mended study keys answer a query by name too.
    let f = findscu(
        gw.port,
        w,
        "-S",
        &["QueryRetrieveLevel=STUDY", "PatientName=SYNTH^00007"],
        &[],
    );
    assert_eq!(f.responses.len(), 1, "{}", f.final_status());
    assert!(
        gw.stderr().contains("Query/Retrieve index in step"),
        "{}",
        gw.stderr()
    );
    gw.stop();

    // Changes that leave the row counts equal (one row missing, one left over) are not seen
    // at start-up; `dicom-gw index --mend-query-rows` checks every row.
    {
        let index = dicom_gw::store::index::Index::open(&data.join("gateway.redb")).unwrap();
        let tx = index.database().begin_write().unwrap();
        let mut objects = tx.open_table(dicom_gw::db::QR_OBJECTS).unwrap();
        let study = "1.2.826.0.1.3680043.10.1.0";
        let row = objects
            .remove((
                study,
                format!("{study}.1").as_str(),
                format!("{study}.1.1").as_str(),
            ))
            .unwrap()
            .expect("the row synthesize wrote")
            .value()
            .to_vec();
        objects
            .insert(
                (study, format!("{study}.1").as_str(), "1.2.3.gone"),
                row.as_slice(),
            )
            .unwrap();
        drop(objects);
        tx.commit().unwrap();
    }
    let d = data.to_str().unwrap();
    let mend = || {
        gw_cli(&["index", "--mend-query-rows", "--data-dir", d])
            .ok()
            .json()
    };
    assert_eq!(mend(), json!({"added": 1, "removed": 1}));
    assert_eq!(mend(), json!({"added": 0, "removed": 0}));
}

#[test]
fn findscu_cancel_gets_fe00_and_max_results_caps_the_answer() {
    require_dcmtk();
    const N: usize = 5_000;
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let data = w.join("data");
    synthesize(&data, N);
    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);
    let f = findscu(
        gw.port,
        w,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientName",
        ],
        &["--cancel", "1"],
    );
    assert!(
        f.final_status().contains("Cancel"),
        "final status should be FE00 (cancel):\n{}",
        &f.log[f.log.len().saturating_sub(2000)..]
    );
    assert!(
        !f.responses.is_empty() && f.responses.len() < N / 2,
        "{} of {N} responses before the cancel took effect",
        f.responses.len()
    );
    // `dicom-gw scu find --cancel 3`: FE00, and exactly the first 3 matches kept, though more
    // were in flight when the C-CANCEL left.
    let out = Command::new(BIN)
        .args([
            "scu",
            "find",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID",
        ])
        .args([
            "--cancel",
            "3",
            "--aec",
            "GW",
            "127.0.0.1",
            &gw.port.to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("FE00"), "{stderr}");
    let kept: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(kept.as_array().unwrap().len(), 3, "{stderr}");
    // A date range is answered from the date keys: exactly the studies of that day.
    let f = findscu(
        gw.port,
        w,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "StudyDate=20250303",
        ],
        &[],
    );
    let want = (0..N)
        .filter(|i| 1 + i % 12 == 3 && 1 + i % 28 == 3)
        .count();
    assert_eq!(f.responses.len(), want, "{}", f.final_status());
    gw.stop();

    // [query] max_results = 100: the first 100, then success.
    let config = w.join("gw.toml");
    std::fs::write(&config, "[query]\nmax_results = 100\n").unwrap();
    let mut gw = Daemon::start(BIN, &data, "epoll", &["--config", config.to_str().unwrap()]);
    let f = findscu(
        gw.port,
        w,
        "-S",
        &["QueryRetrieveLevel=STUDY", "StudyInstanceUID"],
        &[],
    );
    assert_eq!(f.responses.len(), 100);
    assert!(f.final_status().contains("Success"), "{}", f.final_status());
    assert!(gw.stderr().contains("max_results"), "{}", gw.stderr());
    gw.stop();
}

/// Runs `tests/peer/qr_find.py` with a job; its results by query name.
fn qr_find(job: &Value) -> std::collections::BTreeMap<String, Value> {
    let python = pynetdicom_python();
    let mut cmd = Command::new(&python);
    cmd.arg(QR_SCU)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(job.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qr_find.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("qr_find.py output {stdout:?}: {e}"));
    results
        .into_iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r))
        .collect()
}

fn uids_of(result: &Value, key: &str) -> BTreeSet<String> {
    result["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[key].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn pynetdicom_matching_matrix_and_relational_queries() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let mut gw = Daemon::start(BIN, w.join("data"), "epoll", &[]);
    // Five studies, one instance each, differing in the keys under test.
    let mk = |i: u32, name: &str, date: &str, time: &str, acc: Option<&str>, m: &str| {
        let mut s = ObjSpec::new(100 + i)
            .patient(name, &format!("MX{i}"))
            .modality(m);
        s.study_date = date.into();
        s.study_time = time.into();
        match acc {
            Some(a) => s.accession_number = a.into(),
            None => s = s.omit(0x0008_0050),
        }
        s
    };
    let specs = [
        mk(1, "MATRIX^ALICE", "20240110", "083000", Some("ACC01"), "CT"),
        mk(
            2,
            "MATRIX^ALBERT",
            "20240131",
            "120000",
            Some("ACC02"),
            "MR",
        ),
        mk(3, "MATRIX^BOB", "20240201", "235959", Some(""), "CT"),
        mk(4, "OTHER^CAROL", "20231231", "000000", None, "US"),
        mk(5, "MATRIX^ALF", "20240615", "101500", Some("ACC51"), "CT").omit(0x0008_1030),
    ];
    let files: Vec<PathBuf> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let f = w.join(format!("m{i}.dcm"));
            gen_part10(&f, s).unwrap();
            f
        })
        .collect();
    storescu(gw.port, &files, &[]).assert_all_ok(&files);
    let uid = |i: usize| specs[i - 1].study_instance_uid.clone();
    let all: Vec<usize> = (1..=5).collect();
    // (name, keys beyond the level and return keys, expected studies by number)
    let matrix: Vec<(&str, Value, Vec<usize>)> = vec![
        ("single value", json!({"PatientID": "MX2"}), vec![2]),
        (
            "single value, no match",
            json!({"PatientID": "MX9"}),
            vec![],
        ),
        ("universal (empty)", json!({"PatientID": null}), all.clone()),
        ("universal (*)", json!({"PatientName": "*"}), all.clone()),
        (
            "wildcard *",
            json!({"PatientName": "MATRIX^AL*"}),
            vec![1, 2, 5],
        ),
        (
            "wildcard ?",
            json!({"AccessionNumber": "ACC0?"}),
            vec![1, 2],
        ),
        (
            "PN case-insensitive",
            json!({"PatientName": "matrix^bob"}),
            vec![3],
        ),
        ("date single", json!({"StudyDate": "20240131"}), vec![2]),
        (
            "date range",
            json!({"StudyDate": "20240101-20240131"}),
            vec![1, 2],
        ),
        (
            "date open start",
            json!({"StudyDate": "-20231231"}),
            vec![4],
        ),
        (
            "date open end",
            json!({"StudyDate": "20240201-"}),
            vec![3, 5],
        ),
        (
            "time range",
            json!({"StudyTime": "080000-120000"}),
            vec![1, 2, 5],
        ),
        (
            "uid list",
            json!({"StudyInstanceUID": [uid(1), uid(3)]}),
            vec![1, 3],
        ),
        (
            "empty value matching",
            json!({"AccessionNumber": "\"\""}),
            vec![3, 4],
        ),
        (
            "missing attribute never matches a value",
            json!({"StudyDescription": "Study*"}),
            vec![1, 2, 3, 4],
        ),
        ("computed key", json!({"ModalitiesInStudy": "MR"}), vec![2]),
        (
            "computed key list",
            json!({"ModalitiesInStudy": ["US", "MR"]}),
            vec![2, 4],
        ),
        (
            "two keys",
            json!({"PatientName": "MATRIX*", "StudyDate": "202401*"}),
            vec![],
        ),
        (
            "two keys ok",
            json!({"PatientName": "MATRIX*", "Modality": null, "StudyDate": "20240101-20240301"}),
            vec![1, 2, 3],
        ),
    ];
    let queries: Vec<Value> = matrix
        .iter()
        .map(|(name, keys, _)| {
            let mut k = keys.clone();
            k["QueryRetrieveLevel"] = json!("STUDY");
            if k.get("StudyInstanceUID").is_none() {
                k["StudyInstanceUID"] = Value::Null;
            }
            json!({"name": name, "keys": k})
        })
        .collect();
    let results = qr_find(&json!({"port": gw.port, "aec": "GW", "model": "S", "queries": queries}));
    for (name, _, want) in &matrix {
        let r = &results[*name];
        // "two keys": a wildcard in a date key is refused (C000), never matched.
        if *name == "two keys" {
            assert_eq!(r["status"], json!(0xC000), "{name}: {r}");
            continue;
        }
        assert_eq!(r["status"], json!(0), "{name}: {r}");
        let want: BTreeSet<String> = want.iter().map(|i| uid(*i)).collect();
        assert_eq!(uids_of(r, "StudyInstanceUID"), want, "{name}: {r}");
    }
    // A sequence key the index cannot match: universal, pending status FF01.
    let seq = qr_find(
        &json!({"port": gw.port, "model": "S", "queries": [{"name": "seq", "keys": {
        "QueryRetrieveLevel": "STUDY", "StudyInstanceUID": null,
        "ProcedureCodeSequence": {"CodeValue": "X1"}}}]}),
    );
    assert_eq!(seq["seq"]["status"], json!(0), "{}", seq["seq"]);
    let pending = seq["seq"]["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 5);
    assert!(
        pending.iter().all(|p| *p == json!(0xFF01)),
        "{}",
        seq["seq"]
    );
    // Empty values come back zero-length; a missing attribute too.
    let r = &results["empty value matching"];
    for m in r["matches"].as_array().unwrap() {
        assert_eq!(m["AccessionNumber"], json!(""), "{r}");
    }

    // Relational: a SERIES query without the Study Instance UID.
    let series_q = json!([{"name": "series", "keys": {
        "QueryRetrieveLevel": "SERIES", "Modality": "MR", "SeriesInstanceUID": null,
        "PatientName": "MATRIX*"}}]);
    let base = qr_find(&json!({"port": gw.port, "model": "S", "queries": series_q}));
    assert_eq!(
        base["series"]["status"],
        json!(0xA900),
        "{}",
        base["series"]
    );
    let rel =
        qr_find(&json!({"port": gw.port, "model": "S", "relational": true, "queries": series_q}));
    assert_eq!(rel["series"]["status"], json!(0), "{}", rel["series"]);
    assert_eq!(
        uids_of(&rel["series"], "SeriesInstanceUID"),
        set(&[&specs[1].series_instance_uid])
    );
    // Relational IMAGE query on Patient Root with a patient-level key only.
    let image_q = json!([{"name": "image", "keys": {
        "QueryRetrieveLevel": "IMAGE", "PatientID": "MX3", "SOPInstanceUID": null}}]);
    let rel =
        qr_find(&json!({"port": gw.port, "model": "P", "relational": true, "queries": image_q}));
    assert_eq!(
        uids_of(&rel["image"], "SOPInstanceUID"),
        set(&[&specs[2].sop_instance_uid])
    );
    let base = qr_find(&json!({"port": gw.port, "model": "P", "queries": image_q}));
    assert_eq!(base["image"]["status"], json!(0xA900));
    gw.stop();
}

/// pydicom's character-set files (in the wheel of the test venv).
fn charset_dir() -> PathBuf {
    let python = pynetdicom_python();
    let out = Command::new(&python)
        .args([
            "-c",
            "import pydicom, os; print(os.path.dirname(pydicom.__file__))",
        ])
        .output()
        .unwrap();
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("data/charset_files");
    assert!(dir.is_dir(), "{} missing", dir.display());
    dir
}

/// (file, Patient's Name as pydicom decodes it).
const CHARSET_FILES: &[(&str, &str)] = &[
    ("chrArab.dcm", "قباني^لنزار"),
    ("chrFren.dcm", "Buc^Jérôme"),
    ("chrGerm.dcm", "Äneas^Rüdiger"),
    ("chrGreek.dcm", "Διονυσιος"),
    ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("chrH32.dcm", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    ("chrHbrw.dcm", "שרון^דבורה"),
    ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동"),
    ("chrJapMulti.dcm", "やまだ^たろう"),
    ("chrKoreanMulti.dcm", "김희중"),
    ("chrRuss.dcm", "Люкceмбypг"),
    ("chrX1.dcm", "Wang^XiaoDong=王^小東"),
    ("chrX2.dcm", "Wang^XiaoDong=王^小东"),
];

/// The plain-ASCII query Clunie recommends for a name: its first component group with `?`
/// for every non-ASCII character.
fn ascii_pattern(name: &str) -> String {
    let first = name.split('=').next().unwrap();
    first
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// One worklist item per charset file, its Patient's Name in UTF-8 DICOM JSON, Accession
/// Number `W<i>`; written to `worklist.redb` before the daemon starts.
fn seed_worklist(data: &Path) {
    let items: Vec<Value> = CHARSET_FILES
        .iter()
        .enumerate()
        .map(|(i, (_, name))| {
            let mut groups = name.split('=');
            let mut pn = serde_json::Map::new();
            for key in ["Alphabetic", "Ideographic", "Phonetic"] {
                match groups.next() {
                    Some(g) if !g.is_empty() => {
                        pn.insert(key.into(), json!(g));
                    }
                    _ => {}
                }
            }
            json!({
                "00080050": {"vr": "SH", "Value": [format!("W{i}")]},
                "00100010": {"vr": "PN", "Value": [pn]},
                "00100020": {"vr": "LO", "Value": [format!("WP{i}")]},
                "0020000D": {"vr": "UI", "Value": [format!("1.2.826.0.1.3680043.10.2.{i}")]},
                "00400100": {"vr": "SQ", "Value": [{
                    "00080060": {"vr": "CS", "Value": ["CT"]},
                    "00400001": {"vr": "AE", "Value": ["CT01"]},
                    "00400002": {"vr": "DA", "Value": ["20261206"]},
                    "00400003": {"vr": "TM", "Value": ["120000"]},
                    "00400009": {"vr": "SH", "Value": [format!("SPS{i}")]}
                }]}
            })
        })
        .collect();
    let store = dicom_gw::worklist::WorklistStore::open_in(data).unwrap();
    let parsed = dicom_gw::worklist::model::parse_items(&Value::Array(items).to_string()).unwrap();
    store
        .create_many(parsed, dicom_gw::audit::no_audit)
        .unwrap();
}

/// Patient's Name as pydicom shows it, without the empty trailing groups.
fn pn(v: &Value) -> String {
    v.as_str().unwrap_or("").trim_end_matches('=').to_owned()
}

#[test]
fn charset_files_are_found_by_name_in_their_own_repertoire_via_c_find_scu_find_and_the_api() {
    require_dcmtk();
    let dir = charset_dir();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = cli_token(BIN, &data, "viewer");
    seed_worklist(&data);
    let mut gw = Daemon::start(BIN, &data, "epoll", &[]);
    let files: Vec<PathBuf> = CHARSET_FILES.iter().map(|(f, _)| dir.join(f)).collect();
    storescu(gw.port, &files, &[]).assert_all_ok(&files);
    let study_of = |f: &Path| {
        let obj = open_file(f).unwrap();
        text(&obj, tags::STUDY_INSTANCE_UID)
    };

    // C-FIND in the file's own repertoire (pydicom encodes the name under the file's
    // (0008,0005)), and by an ASCII pattern without (0008,0005).
    let mut queries = Vec::new();
    for (f, name) in CHARSET_FILES {
        let ascii = ascii_pattern(name);
        queries.push(json!({"name": format!("own {f}"), "from_file": dir.join(f),
            "file_keys": ["PatientName"],
            "keys": {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": null}}));
        queries.push(json!({"name": format!("ascii {f}"),
            "keys": {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": null,
                     "PatientName": ascii}}));
    }
    let results = qr_find(&json!({"port": gw.port, "model": "S", "queries": queries}));
    for (f, name) in CHARSET_FILES {
        let study = study_of(&dir.join(f));
        for kind in ["own", "ascii"] {
            let r = &results[&format!("{kind} {f}")];
            assert_eq!(r["status"], json!(0), "{kind} {f}: {r}");
            assert!(
                uids_of(r, "StudyInstanceUID").contains(&study),
                "{kind} {f}: {study} not found: {r}"
            );
            let m = r["matches"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["StudyInstanceUID"] == json!(study))
                .unwrap();
            assert_eq!(pn(&m["PatientName"]), *name, "{kind} {f}: {r}");
            // Non-ASCII text: (0008,0005) is in the answer even when not requested.
            assert!(
                m.get("SpecificCharacterSet").is_some(),
                "{kind} {f}: no (0008,0005) in {m}"
            );
        }
    }

    // Modality Worklist: the same names as worklist items, found by queries in each file's
    // repertoire (the same identifier decoding as Q/R).
    let queries: Vec<Value> = CHARSET_FILES
        .iter()
        .map(|(f, _)| {
            json!({"name": f, "from_file": dir.join(f), "file_keys": ["PatientName"],
                   "keys": {"AccessionNumber": null}})
        })
        .collect();
    let mwl = qr_find(&json!({"port": gw.worklist_port, "model": "W", "queries": queries}));
    for (i, (f, name)) in CHARSET_FILES.iter().enumerate() {
        let r = &mwl[*f];
        assert_eq!(r["status"], json!(0), "MWL {f}: {r}");
        let hit = r["matches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["AccessionNumber"] == json!(format!("W{i}")))
            .unwrap_or_else(|| panic!("MWL {f}: item W{i} not found: {r}"));
        assert_eq!(pn(&hit["PatientName"]), *name, "MWL {f}: {r}");
    }

    // `dicom-gw scu find` against the gateway itself: JSON, decoded names.
    let out = Command::new(BIN)
        .args([
            "scu",
            "find",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientName=Yamada^Tarou*",
            "-k",
            "StudyInstanceUID",
            "--aec",
            "GW",
            "127.0.0.1",
            &gw.port.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let matches: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeSet<String> = matches
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let v = &m["00100010"]["Value"][0];
            format!(
                "{}={}",
                v["Alphabetic"].as_str().unwrap_or(""),
                v["Ideographic"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(names, set(&["Yamada^Tarou=山田^太郎"]), "{matches}");

    // The admin API: ISO 2022 names shown decoded, and found by a Kanji pattern.
    let (code, body) = http_json(
        gw.http_port,
        "GET",
        "/api/v1/studies?patient_name=*%E5%B1%B1%E7%94%B0*&limit=100",
        Some(&token),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let text = body.to_string();
    let h31 = study_of(&dir.join("chrH31.dcm"));
    let h32 = study_of(&dir.join("chrH32.dcm"));
    assert!(text.contains(&h31) && text.contains(&h32), "{body}");
    assert!(
        text.contains("Yamada^Tarou=山田^太郎=やまだ^たろう") && !text.contains("\\u001b"),
        "{body}"
    );
    let (code, body) = http_json(
        gw.http_port,
        "GET",
        "/api/v1/studies?patient_name=*%ED%99%8D*&limit=100",
        Some(&token),
        None,
    );
    assert_eq!(code, 200);
    assert!(
        body.to_string().contains(&study_of(&dir.join("chrI2.dcm"))),
        "Korean 홍: {body}"
    );
    gw.stop();
}
