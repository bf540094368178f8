//! Interoperability of the store SCP with DCMTK's echoscu/storescu: C-ECHO, a transfer
//! syntax × size matrix (byte-exact storage, meta group, index rows), concurrent senders and
//! identical duplicates. Every test runs under both I/O backends (`gwtest!`).

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dicom_gw::store::index::{Index, InstanceRecord};
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");

/// Objects bigger than this are compared by streamed hash instead of in memory.
const IN_MEMORY_COMPARE_MAX: u64 = 8 << 20;

/// One object the test sent.
struct Sent {
    spec: ObjSpec,
    /// The file given to storescu (its dataset bytes are what goes on the wire).
    file: PathBuf,
    ts: Ts,
    /// Calling AE title storescu used for it.
    calling_ae: String,
}

/// Dataset length of a Part-10 file (bytes after the meta group).
fn dataset_len(path: &Path) -> u64 {
    let i = parse_part10(path).unwrap_or_else(|e| panic!("{e}"));
    i.file_len - i.dataset_offset
}

/// Opens the index of a stopped daemon.
fn open_index(data_dir: &Path) -> Index {
    Index::open(&data_dir.join("gateway.redb"))
        .unwrap_or_else(|e| panic!("cannot open index in {}: {e}", data_dir.display()))
}

/// Checks the stored file of `s`: present, dcmftest-valid, meta group as specified, dataset
/// bytes identical to the sent file's.
fn check_stored_file(data_dir: &Path, s: &Sent) {
    let stored = s.spec.settled_path(data_dir);
    assert!(
        stored.is_file(),
        "{:?} object {} not stored at {}",
        s.ts,
        s.spec.sop_instance_uid,
        stored.display()
    );
    assert!(
        dcmftest(&stored),
        "dcmftest rejects stored {}",
        stored.display()
    );
    let m = |t: u16| meta_str(&stored, tag(0x0002, t));
    assert_eq!(
        m(0x0010).as_deref(),
        Some(s.ts.uid()),
        "stored meta TS of {}",
        stored.display()
    );
    assert_eq!(m(0x0002).as_deref(), Some(s.spec.sop_class_uid.as_str()));
    assert_eq!(m(0x0003).as_deref(), Some(s.spec.sop_instance_uid.as_str()));
    assert_eq!(
        m(0x0012).as_deref(),
        Some(dicom_gw::IMPLEMENTATION_CLASS_UID)
    );
    assert_eq!(
        m(0x0016).as_deref(),
        Some(s.calling_ae.as_str()),
        "SourceApplicationEntityTitle of {}",
        stored.display()
    );
    if dataset_len(&s.file) <= IN_MEMORY_COMPARE_MAX {
        assert!(
            same_dataset(&stored, &s.file),
            "{:?}: stored dataset of {} differs from the sent one",
            s.ts,
            stored.display()
        );
    } else {
        assert_eq!(dataset_len(&stored), dataset_len(&s.file));
        assert_eq!(
            dataset_hash(&stored),
            dataset_hash(&s.file),
            "{:?}: stored dataset of {} differs from the sent one",
            s.ts,
            stored.display()
        );
    }
}

/// Checks the index row of `s` against the sent file and the stored file.
fn check_row(idx: &Index, data_dir: &Path, s: &Sent) -> InstanceRecord {
    let uid = &s.spec.sop_instance_uid;
    let r = idx
        .instance(uid)
        .unwrap()
        .unwrap_or_else(|| panic!("no index row for {:?} object {uid}", s.ts));
    assert_eq!(r.sop_instance_uid, *uid);
    assert_eq!(r.sop_class_uid, s.spec.sop_class_uid);
    assert_eq!(r.study_instance_uid, s.spec.study_instance_uid);
    assert_eq!(r.series_instance_uid, s.spec.series_instance_uid);
    assert_eq!(r.transfer_syntax_uid, s.ts.uid(), "row TS of {uid}");
    assert_eq!(
        r.dataset_size,
        dataset_len(&s.file),
        "row dataset_size of {uid}"
    );
    assert_eq!(
        r.dataset_blake3,
        dataset_hash(&s.file),
        "row blake3 of {:?} object {uid}",
        s.ts
    );
    assert_eq!(r.calling_ae_title.trim(), s.calling_ae);
    let stored = s.spec.settled_path(data_dir);
    assert_eq!(data_dir.join(&r.path), stored, "row path of {uid}");
    assert_eq!(
        r.file_size,
        std::fs::metadata(&stored).unwrap().len(),
        "row file_size of {uid}"
    );
    r
}

/// Files left in DIR/tmp.
fn tmp_files(data_dir: &Path) -> Vec<PathBuf> {
    list_files(data_dir.join("tmp"))
}

gwtest!(echoscu_succeeds, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = Daemon::start(BIN, tmp.path(), io, &[]);
    let out = echoscu(gw.port, &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "echoscu failed ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains("Success"),
        "no Success in echoscu output:\n{text}"
    );
    gw.stop();
});

// Several associations one after the other on a single core: each must be served. (With
// `--threads 1` every connection reaches the same accept loop, so a lost accept cannot hide
// behind the other core's listener.)
gwtest!(sequential_associations_are_all_served, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = Daemon::start(BIN, tmp.path(), io, &["--threads", "1"]);
    for i in 0..4 {
        // -ta: wait at most 10 s for the A-ASSOCIATE-AC (default 30 s).
        let out = echoscu(gw.port, &["-ta", "10"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("Success"),
            "association {} of 4 on one core was not served ({}):\n{text}",
            i + 1,
            out.status
        );
    }
    gw.stop();
});

/// Modality of the series of each transfer syntax in the matrix study.
fn modality_for(ts: Ts) -> &'static str {
    match ts {
        Ts::ImplicitLE => "CT",
        Ts::ExplicitLE => "MR",
        Ts::ExplicitBE => "US",
        Ts::Deflated => "CR",
        Ts::JpegLossless => "DX",
    }
}

/// Calling AE title used for the storescu run of each transfer syntax.
fn ae_for(ts: Ts) -> &'static str {
    match ts {
        Ts::ImplicitLE => "GWT_IMPLICIT",
        Ts::ExplicitLE => "GWT_EXPLICIT",
        Ts::ExplicitBE => "GWT_BIGENDIAN",
        Ts::Deflated => "GWT_DEFLATED",
        Ts::JpegLossless => "GWT_JPEGLL",
    }
}

gwtest!(transfer_syntax_size_matrix, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();

    // One study ("matrix") with one series per transfer syntax (own modality), each holding a
    // tiny and a ~1 MiB object; plus a 100 MiB Explicit LE object in a study of its own.
    let base = ObjSpec::new(100).patient("MATRIX^PATIENT", "PIDMATRIX");
    let mut sent: Vec<Sent> = Vec::new();
    for (k, ts) in Ts::ALL.into_iter().enumerate() {
        let k32 = k as u32;
        let tiny = ObjSpec::new(101 + 2 * k32)
            .same_study_as(&base)
            .series(&make_uid(&[9, k as u64 + 1]))
            .modality(modality_for(ts))
            .pixel_bytes(0);
        let mid = ObjSpec::new(102 + 2 * k32)
            .same_series_as(&tiny)
            .modality(modality_for(ts))
            .pixel_bytes(1 << 20);
        for (name, spec) in [("tiny", tiny), ("1mib", mid)] {
            let gen = src.join(format!("{name}_{ts:?}_gen.dcm"));
            gen_part10(&gen, &spec).unwrap();
            let file = if ts == Ts::ExplicitLE {
                gen // gen_part10 writes Explicit VR Little Endian
            } else {
                let f = src.join(format!("{name}_{ts:?}.dcm"));
                convert_ts(&gen, &f, ts);
                f
            };
            assert_eq!(meta_ts(&file), ts.uid());
            sent.push(Sent {
                spec,
                file,
                ts,
                calling_ae: ae_for(ts).into(),
            });
        }
    }
    for s in sent.iter().filter(|s| s.spec.pixel_bytes == 0) {
        let len = std::fs::metadata(&s.file).unwrap().len();
        assert!(len < 1024, "tiny {:?} file is {len} bytes", s.ts);
    }
    let big = ObjSpec::new(200)
        .patient("BIG^PATIENT", "PIDBIG")
        .pixel_bytes(100 << 20);
    let big_file = src.join("big_100mib.dcm");
    gen_part10(&big_file, &big).unwrap();
    sent.push(Sent {
        spec: big.clone(),
        file: big_file,
        ts: Ts::ExplicitLE,
        calling_ae: ae_for(Ts::ExplicitLE).into(),
    });

    let mut gw = Daemon::start(BIN, &data, io, &[]);
    // One storescu run per transfer syntax (see storescu_flags_for).
    for ts in Ts::ALL {
        let files: Vec<&Path> = sent
            .iter()
            .filter(|s| s.ts == ts)
            .map(|s| s.file.as_path())
            .collect();
        let mut flags = storescu_flags_for(ts);
        flags.extend(["-aet", ae_for(ts)]);
        storescu(gw.port, &files, &flags).assert_all_ok(&files);
    }
    for s in &sent {
        check_stored_file(&data, s);
    }
    gw.stop();

    assert!(
        tmp_files(&data).is_empty(),
        "tmp/ not empty: {:?}",
        tmp_files(&data)
    );
    let idx = open_index(&data);
    assert_eq!(idx.instance_count().unwrap(), sent.len() as u64);
    let rows = idx.instances().unwrap();
    let uids: BTreeSet<&str> = rows.iter().map(|r| r.sop_instance_uid.as_str()).collect();
    let want: BTreeSet<&str> = sent
        .iter()
        .map(|s| s.spec.sop_instance_uid.as_str())
        .collect();
    assert_eq!(uids, want, "indexed instances differ from sent ones");
    for s in &sent {
        check_row(&idx, &data, s);
    }

    let study = idx
        .study(&base.study_instance_uid)
        .unwrap()
        .expect("matrix study row");
    let mut mods: Vec<String> = Ts::ALL.iter().map(|t| modality_for(*t).into()).collect();
    mods.sort();
    assert_eq!(study.modalities_in_study, mods);
    assert_eq!(study.num_series, 5);
    assert_eq!(study.num_instances, 10);
    assert_eq!(study.patient_id, "PIDMATRIX");
    for ts in Ts::ALL {
        let s = sent.iter().find(|s| s.ts == ts).unwrap();
        let series = idx
            .series(&s.spec.study_instance_uid, &s.spec.series_instance_uid)
            .unwrap()
            .unwrap_or_else(|| panic!("no series row for {ts:?}"));
        assert_eq!(series.modality, modality_for(ts), "series modality {ts:?}");
        assert_eq!(series.num_instances, 2, "series instances {ts:?}");
    }
    let p = idx
        .patient("PIDMATRIX")
        .unwrap()
        .expect("matrix patient row");
    assert_eq!(p.num_studies, 1);
    assert_eq!(p.patient_name.trim(), "MATRIX^PATIENT");

    let bs = idx
        .study(&big.study_instance_uid)
        .unwrap()
        .expect("big study row");
    assert_eq!(bs.modalities_in_study, vec!["CT".to_string()]);
    assert_eq!((bs.num_series, bs.num_instances), (1, 1));
    let bser = idx
        .series(&big.study_instance_uid, &big.series_instance_uid)
        .unwrap()
        .expect("big series row");
    assert_eq!(bser.num_instances, 1);
    let bp = idx.patient("PIDBIG").unwrap().expect("big patient row");
    assert_eq!(bp.num_studies, 1);
});

gwtest!(concurrent_storescu, |io: &str| {
    require_dcmtk();
    const CLIENTS: u32 = 8;
    const PER_CLIENT: u32 = 25;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();

    // All objects in one study, one series per client: concurrent associations update the
    // same study/patient rows.
    let base = ObjSpec::new(500).patient("CONC^PATIENT", "PIDCONC");
    let mut sets: Vec<Vec<(ObjSpec, PathBuf)>> = Vec::new();
    for c in 0..CLIENTS {
        let first = ObjSpec::new(1000 + c * 100)
            .same_study_as(&base)
            .series(&make_uid(&[8, c as u64 + 1]));
        let mut set = Vec::new();
        for i in 0..PER_CLIENT {
            let spec = ObjSpec::new(1000 + c * 100 + i)
                .same_series_as(&first)
                .pixel_bytes(2048 + 512 * i as u64);
            let f = src.join(format!("c{c}_{i}.dcm"));
            gen_part10(&f, &spec).unwrap();
            set.push((spec, f));
        }
        sets.push(set);
    }

    let mut gw = Daemon::start(BIN, &data, io, &[]);
    let port = gw.port;
    let handles: Vec<_> = sets
        .iter()
        .map(|set| {
            let files: Vec<PathBuf> = set.iter().map(|(_, f)| f.clone()).collect();
            std::thread::spawn(move || {
                let r = storescu(port, &files, &storescu_flags_for(Ts::ExplicitLE));
                (files, r)
            })
        })
        .collect();
    for h in handles {
        let (files, r) = h.join().expect("storescu thread panicked");
        r.assert_all_ok(&files);
    }
    gw.stop();

    assert!(
        tmp_files(&data).is_empty(),
        "tmp/ not empty: {:?}",
        tmp_files(&data)
    );
    let total = (CLIENTS * PER_CLIENT) as u64;
    let stored_files = list_files(data.join("objects"));
    assert_eq!(stored_files.len() as u64, total, "files under objects/");
    let idx = open_index(&data);
    assert_eq!(idx.instance_count().unwrap(), total);
    for (c, set) in sets.iter().enumerate() {
        for (spec, f) in set {
            let s = Sent {
                spec: spec.clone(),
                file: f.clone(),
                ts: Ts::ExplicitLE,
                calling_ae: "STORESCU".into(),
            };
            check_stored_file(&data, &s);
            check_row(&idx, &data, &s);
        }
        let (spec, _) = &set[0];
        let series = idx
            .series(&spec.study_instance_uid, &spec.series_instance_uid)
            .unwrap()
            .unwrap_or_else(|| panic!("no series row for client {c}"));
        assert_eq!(series.num_instances, PER_CLIENT as u64, "client {c} series");
    }
    let study = idx
        .study(&base.study_instance_uid)
        .unwrap()
        .expect("study row");
    assert_eq!(study.num_instances, total);
    assert_eq!(study.num_series, CLIENTS as u64);
    assert_eq!(study.modalities_in_study, vec!["CT".to_string()]);
    assert_eq!(
        idx.patient("PIDCONC")
            .unwrap()
            .expect("patient")
            .num_studies,
        1
    );
});

gwtest!(identical_duplicate_is_stored_once, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let spec = ObjSpec::new(700).pixel_bytes(64 << 10);
    let f = tmp.path().join("dup.dcm");
    gen_part10(&f, &spec).unwrap();
    let copy = tmp.path().join("dup_copy.dcm");
    std::fs::copy(&f, &copy).unwrap();

    let mut gw = Daemon::start(BIN, &data, io, &[]);
    let flags = storescu_flags_for(Ts::ExplicitLE);
    // Twice in one association, then once more (a byte-identical copy) in another.
    let r = storescu(gw.port, &[&f, &f], &flags);
    let oks = r
        .responses
        .iter()
        .filter(|x| x.file == f && x.status == Some(0))
        .count();
    assert!(
        oks == 2 && r.status.success(),
        "expected 2 successes for the same object in one association, got {oks}:\n{}",
        r.output
    );
    storescu(gw.port, &[&copy], &flags).assert_all_ok(&[&copy]);
    let s = Sent {
        spec: spec.clone(),
        file: f.clone(),
        ts: Ts::ExplicitLE,
        calling_ae: "STORESCU".into(),
    };
    check_stored_file(&data, &s);
    gw.stop();

    assert!(
        tmp_files(&data).is_empty(),
        "tmp/ not empty: {:?}",
        tmp_files(&data)
    );
    assert_eq!(list_files(data.join("objects")).len(), 1);
    let idx = open_index(&data);
    assert_eq!(idx.instance_count().unwrap(), 1);
    check_row(&idx, &data, &s);
    let study = idx
        .study(&spec.study_instance_uid)
        .unwrap()
        .expect("study row");
    assert_eq!((study.num_series, study.num_instances), (1, 1));
    let series = idx
        .series(&spec.study_instance_uid, &spec.series_instance_uid)
        .unwrap()
        .expect("series row");
    assert_eq!(series.num_instances, 1);
    assert_eq!(
        idx.patient(&spec.patient_id)
            .unwrap()
            .expect("patient")
            .num_studies,
        1
    );
});
