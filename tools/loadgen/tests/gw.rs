//! dicom-loadgen against dicom-gw itself: stored objects verified byte for byte, and the
//! verifier catching a corrupted and a missing object.
//!
//! Needs the dicom-gw binary (`cargo build -p dicom-gw`, or `DICOM_GW_BIN`).

mod common;

use common::*;

#[test]
fn store_and_verify_against_dicom_gw() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let gw = Gw::start(&data);
    let json = tmp.path().join("s.json");
    let manifest = tmp.path().join("sent.jsonl");
    let o = loadgen(&[
        "store",
        &gw.addr(),
        "-n",
        "60",
        "-c",
        "3",
        "--series-size",
        "10",
        "--series-per-study",
        "2",
        "--size",
        "8k,100k",
        "--ts",
        "implicit",
        "--verify",
        data.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let j = read_json(&json);
    assert_eq!(
        (j["ok"].as_u64(), j["errors"].as_u64()),
        (Some(60), Some(0))
    );
    assert_eq!(j["verify"]["expected"], 60);
    assert_eq!(j["verify"]["identical"], 60, "{j}");
    // 60 objects, 10 per series, 2 series per study: 3 studies of 2 series each.
    let studies: Vec<_> = std::fs::read_dir(data.join("objects"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(studies.len(), 3);
    for s in &studies {
        assert_eq!(std::fs::read_dir(s.path()).unwrap().count(), 2);
    }

    // Explicit VR big endian and echo on the same daemon.
    let o = loadgen(&[
        "store",
        &gw.addr(),
        "-n",
        "10",
        "--ts",
        "bigendian",
        "--verify",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = loadgen(&["echo", &gw.addr(), "-n", "50", "-c", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    gw.stop();

    // The manifest re-verifies cleanly…
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            data.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        loadgen(&args)
    };
    let o = verify(&[]);
    assert!(o.status.success(), "{}", text(&o));

    // …until one stored object has a byte flipped in its dataset: named, exit 3.
    // Only objects of the first run are in the manifest.
    let listed: Vec<String> = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["sop_instance"].to_string())
        .collect();
    assert_eq!(listed.len(), 60);
    let stored: Vec<_> = files_under(&data.join("objects"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .filter(|p| listed.contains(&format!("{:?}", p.file_stem().unwrap().to_str().unwrap())))
        .collect();
    assert_eq!(stored.len(), 60);
    let victim = &stored[7];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();
    let sop = victim.file_stem().unwrap().to_str().unwrap().to_owned();
    let o = verify(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("1 mismatched"), "{out}");
    assert!(out.contains(&format!("mismatch   {sop}: ")), "{out}");

    // A deleted object is reported missing.
    let gone = &stored[20];
    std::fs::remove_file(gone).unwrap();
    let report = tmp.path().join("v.json");
    let o = verify(&["--json", report.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v = read_json(&report);
    assert_eq!(
        (v["missing"].as_u64(), v["mismatched"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        v["missing_objects"][0].as_str(),
        gone.file_stem().unwrap().to_str()
    );
}

/// `qr-index` writes a corpus the daemon answers for: `qr --expect` counts every query's
/// matches against the corpus, all kinds, two associations; told a larger corpus than the one
/// indexed, the same check reports the differences.
#[test]
fn qr_load_finds_the_corpus_it_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let corpus = |instances: &'static str| {
        [
            "--instances",
            instances,
            "--per-series",
            "10",
            "--series-per-study",
            "2",
        ]
    };
    let mut args = vec!["qr-index", "--data-dir", data.to_str().unwrap()];
    args.extend(corpus("2000"));
    let o = loadgen(&args);
    assert!(o.status.success(), "{}", text(&o));
    let gw = Gw::start(&data);
    let json = tmp.path().join("qr.json");
    let addr = gw.addr();
    let run = |instances: &'static str| {
        let mut args = vec![
            "qr",
            &addr,
            "-n",
            "240",
            "-c",
            "2",
            "--expect",
            "--mix",
            "patient-id,accession,name,study-uid,date,universal",
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend(corpus(instances));
        let o = loadgen(&args);
        (o, read_json(&json))
    };
    let (o, j) = run("2000");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        (j["ok"].as_u64(), j["errors"].as_u64()),
        (Some(240), Some(0)),
        "{j}"
    );
    for kind in [
        "patient-id",
        "accession",
        "name",
        "study-uid",
        "date",
        "universal",
    ] {
        let k = &j["kinds"][kind];
        assert!(k["queries"].as_u64() > Some(0), "{kind}: {j}");
        assert_eq!(k["mismatches"], 0, "{kind}: {j}");
    }
    // 2,000 instances, 10 per series, 2 series per study: 100 studies, one per date.
    assert_eq!(j["kinds"]["universal"]["mean_matches"], 100.0, "{j}");
    assert_eq!(j["kinds"]["date"]["mean_matches"], 1.0, "{j}");

    let (_, j) = run("4000");
    assert!(
        j["kinds"]["universal"]["mismatches"] == 0,
        "universal is never checked: {j}"
    );
    assert!(
        j["errors_by_kind"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("mismatch-")),
        "{j}"
    );
    gw.stop();
}
