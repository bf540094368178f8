//! Hostile and broken input: malformed PDUs, broken DIMSE messages, invalid UIDs, datasets
//! that do not match their command, duplicates, a full disk, leftovers of a crash and bad
//! config files. Each case checks the answer (status, A-ASSOCIATE-RJ/AC result or A-ABORT),
//! that nothing was stored or left half-written (objects/, tmp/, the index) and that the
//! daemon still serves the next peer. Network cases run under both I/O backends (`gwtest!`).

mod peer;
mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_gw::store::index::Index;
use dicom_ul::pdu::{Pdu, PresentationContextResultReason};
use peer::*;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const STUDY_INSTANCE_UID: u32 = tag(0x0020, 0x000D);

/// Writes `toml` to `dir/gw.toml` and starts a daemon on `dir/data` with it.
fn start(dir: &Path, io: &str, toml: &str) -> Daemon {
    start_on(dir, &dir.join("data"), io, toml)
}

/// Like [`start`] with an explicit data directory.
fn start_on(dir: &Path, data: &Path, io: &str, toml: &str) -> Daemon {
    let cfg = dir.join("gw.toml");
    std::fs::write(&cfg, toml).unwrap();
    Daemon::start(BIN, data, io, &["--config", cfg.to_str().unwrap()])
}

/// echoscu must succeed.
fn echo_ok(gw: &Daemon, what: &str) {
    let out = echoscu(gw.port, &[]);
    assert!(
        out.status.success(),
        "{what}: echoscu failed afterwards: {}\n{}\n--- daemon ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        gw.stderr()
    );
}

/// Every file under the data directory except the databases (index and worklist).
fn stray_files(data: &Path) -> Vec<PathBuf> {
    list_files(data)
        .into_iter()
        .filter(|p| p != &data.join("gateway.redb") && p != &data.join("worklist.redb"))
        // The ingest journal's ring (preallocated segments and their state file); objects
        // waiting in it are data, and large ones wait in journal/staged/, which counts.
        .filter(|p| !p.starts_with(data.join("journal").join("core-0")))
        .collect()
}

/// Files under `data/objects`, and entries of `data/tmp`.
fn objects_and_tmp(data: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let tmp = std::fs::read_dir(data.join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    (list_files(data.join("objects")), tmp)
}

/// Waits (at most 20 s) until `data/tmp` is empty; panics with what is left otherwise.
fn wait_tmp_empty(gw: &Daemon, data: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, tmp) = objects_and_tmp(data);
        if tmp.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: temporary files left behind: {tmp:?}\n--- daemon ---\n{}",
                gw.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts nothing but the index exists under the data directory.
fn assert_nothing_stored(gw: &Daemon, data: &Path, what: &str) {
    let stray = stray_files(data);
    assert!(
        stray.is_empty(),
        "{what}: files written: {stray:?}\n--- daemon ---\n{}",
        gw.stderr()
    );
}

/// Stops the daemon (exit 0) and opens its index.
fn stop_and_open_index(gw: &mut Daemon, data: &Path) -> Index {
    gw.stop();
    Index::open(&data.join("gateway.redb")).expect("open index after stop")
}

/// Generates `spec` under `dir/in/NAME.dcm`.
fn gen(dir: &Path, name: &str, spec: &ObjSpec) -> PathBuf {
    let d = dir.join("in");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(format!("{name}.dcm"));
    gen_part10(&p, spec).unwrap();
    p
}

/// The dataset bytes (Explicit VR LE) of `spec`, generated under `dir/in`.
fn dataset_of(dir: &Path, name: &str, spec: &ObjSpec) -> Vec<u8> {
    dataset_bytes(gen(dir, name, spec))
}

/// Associates and sends a C-STORE-RQ followed by the first half of its dataset (on context 3),
/// leaving the reception under way: the set-up of every interrupted-reception test.
fn begin_half_sent_store(gw: &Daemon, dir: &Path, pixel_bytes: u64) -> (ObjSpec, Peer) {
    let spec = ObjSpec::new(0).pixel_bytes(pixel_bytes);
    let ds = dataset_of(dir, "a", &spec);
    let mut p = Peer::associate(gw.port);
    p.send_message(
        3,
        true,
        &dicom_gw::net::dimse::command::encode_store_rq(1, CT, &spec.sop_instance_uid),
    );
    p.send_fragments(3, &ds[..ds.len() / 2], false);
    (spec, p)
}

/// storescu of one file; returns its status (None: no response).
fn store_one(gw: &Daemon, file: &Path) -> (Option<u16>, StoreResult) {
    let r = storescu(gw.port, &[file], &storescu_flags_for(Ts::ExplicitLE));
    assert!(!r.timed_out, "storescu timed out:\n{}", r.output);
    (r.status_of(file), r)
}

/// `/readyz` now.
fn readyz(gw: &Daemon) -> Resp {
    request(gw.http_port, "GET", "/readyz", None, None)
}

/// `/readyz` once it satisfies `want`, or as it is after 20 s.
fn readyz_when(gw: &Daemon, want: impl Fn(&Resp) -> bool) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = readyz(gw);
        if want(&r) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed PDUs and DIMSE messages: A-ABORT and close, never a hang.

/// One malformed-input case: what to send, before or after associating.
struct Case {
    name: &'static str,
    associate_first: bool,
    bytes: Vec<u8>,
}

fn pdu_cases() -> Vec<Case> {
    let echo = dicom_gw::net::dimse::command::encode_echo_rq(1);
    let store_rq = dicom_gw::net::dimse::command::encode_store_rq(1, CT, &make_uid(&[9, 1]));
    let rq = encode_pdu(&Pdu::AssociationRQ(association_rq(
        "GWTEST",
        "DICOM_GW",
        &default_contexts(),
    )));
    let mut cases = vec![
        Case {
            name: "P-DATA-TF announcing 0xFFFFFFF0 bytes (none sent)",
            associate_first: true,
            bytes: vec![0x04, 0, 0xFF, 0xFF, 0xFF, 0xF0],
        },
        Case {
            name: "unknown PDU type 0x09 in an association",
            associate_first: true,
            bytes: vec![0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0],
        },
        Case {
            name: "unknown PDU type 0x09 as the first PDU",
            associate_first: false,
            bytes: vec![0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0],
        },
        Case {
            name: "PDV with even presentation context id",
            associate_first: true,
            bytes: pdata_pdu(2, true, true, &echo),
        },
        Case {
            name: "PDV length overrunning its PDU",
            associate_first: true,
            // PDU body of 10 bytes; its one PDV claims 100.
            bytes: vec![0x04, 0, 0, 0, 0, 10, 0, 0, 0, 100, 1, 3, 0, 0, 0, 0],
        },
        Case {
            name: "P-DATA-TF with no PDV item",
            associate_first: true,
            bytes: vec![0x04, 0, 0, 0, 0, 0],
        },
        Case {
            name: "P-DATA-TF before A-ASSOCIATE-RQ",
            associate_first: false,
            bytes: pdata_pdu(1, true, true, &echo),
        },
        Case {
            name: "A-RELEASE-RQ before A-ASSOCIATE-RQ",
            associate_first: false,
            bytes: encode_pdu(&Pdu::ReleaseRQ),
        },
        Case {
            name: "A-ASSOCIATE-RQ body of 4 garbage bytes",
            associate_first: false,
            bytes: vec![0x01, 0, 0, 0, 0, 4, 0xDE, 0xAD, 0xBE, 0xEF],
        },
        Case {
            name: "A-ASSOCIATE-RQ body of 200 bytes 0xFF",
            associate_first: false,
            bytes: [vec![0x01, 0, 0, 0, 0, 200], vec![0xFF; 200]].concat(),
        },
        Case {
            name: "A-ASSOCIATE-RQ announcing 0xFFFFFFF0 bytes (none sent)",
            associate_first: false,
            bytes: vec![0x01, 0, 0xFF, 0xFF, 0xFF, 0xF0],
        },
        Case {
            name: "A-ASSOCIATE-RQ truncated inside its items",
            associate_first: false,
            bytes: {
                // A valid RQ cut short, with the PDU length fixed up to the cut.
                let mut b = rq[..rq.len() - 20].to_vec();
                let len = (b.len() - 6) as u32;
                b[2..6].copy_from_slice(&len.to_be_bytes());
                b
            },
        },
        Case {
            name: "second A-ASSOCIATE-RQ in an association",
            associate_first: true,
            bytes: rq.clone(),
        },
        Case {
            name: "A-ASSOCIATE-AC sent by the requestor",
            associate_first: false,
            bytes: vec![0x02, 0, 0, 0, 0, 4, 0, 0, 0, 0],
        },
        Case {
            name: "data PDV with no command",
            associate_first: true,
            bytes: pdata_pdu(
                3,
                false,
                true,
                &[0x08, 0, 0x18, 0, b'U', b'I', 2, 0, b'1', 0],
            ),
        },
        Case {
            name: "truncated command set",
            associate_first: true,
            bytes: pdata_pdu(1, true, true, &echo[..echo.len() - 3]),
        },
        Case {
            name: "garbage command set",
            associate_first: true,
            bytes: pdata_pdu(1, true, true, b"\xDE\xAD\xBE\xEF\x01\x02\x03\x04garbage!"),
        },
        Case {
            name: "command set without Command Field",
            associate_first: true,
            bytes: pdata_pdu(1, true, true, &[0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]),
        },
        Case {
            name: "PDV on a presentation context that was never proposed",
            associate_first: true,
            bytes: pdata_pdu(99, true, true, &echo),
        },
        Case {
            name: "P-DATA-TF one byte over the announced maximum length",
            associate_first: true,
            bytes: {
                let mut b = pdata_pdu(1, true, true, &vec![0u8; 262_140]);
                assert_eq!(b.len(), 6 + 262_146);
                b.truncate(6 + 1000); // header announces 262145; the rest is never sent
                b[2..6].copy_from_slice(&262_145u32.to_be_bytes());
                b
            },
        },
        Case {
            name: "A-ASSOCIATE-RQ with an empty body",
            associate_first: false,
            bytes: vec![0x01, 0, 0, 0, 0, 0],
        },
        Case {
            name: "command set larger than 64 KiB in fragments",
            associate_first: true,
            bytes: [
                pdata_pdu(1, true, false, &vec![0u8; 40_000]),
                pdata_pdu(1, true, false, &vec![0u8; 40_000]),
            ]
            .concat(),
        },
        Case {
            name: "command fragment in the middle of a dataset",
            associate_first: true,
            bytes: [
                pdata_pdu(3, true, true, &store_rq),
                pdata_pdu(3, false, false, &[0u8; 4000]),
                pdata_pdu(3, true, true, &echo),
            ]
            .concat(),
        },
        Case {
            name: "dataset fragment switching presentation context mid-message",
            associate_first: true,
            bytes: [
                pdata_pdu(3, true, true, &store_rq),
                pdata_pdu(3, false, false, &[0u8; 4000]),
                pdata_pdu(1, false, true, &[0u8; 4000]),
            ]
            .concat(),
        },
        Case {
            name: "command fragments switching presentation context",
            associate_first: true,
            bytes: [
                pdata_pdu(3, true, false, &store_rq[..20]),
                pdata_pdu(1, true, true, &store_rq[20..]),
            ]
            .concat(),
        },
    ];
    // A valid RQ whose first item length is absurd.
    let mut b = rq;
    let item = 6 + 68; // header + fixed fields: the application context item starts here
    assert_eq!(b[item], 0x10, "application context item");
    b[item + 2] = 0xFF;
    b[item + 3] = 0xF0;
    cases.push(Case {
        name: "A-ASSOCIATE-RQ item length overrunning the PDU",
        associate_first: false,
        bytes: b,
    });
    cases
}

gwtest!(malformed_pdus_abort, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    for case in pdu_cases() {
        let mut p = if case.associate_first {
            Peer::associate(gw.port)
        } else {
            Peer::connect(gw.port)
        };
        // The daemon may abort and close before it read everything: a failed write is fine.
        let _ = p.send(&case.bytes);
        p.expect_abort_and_close(case.name);
        wait_tmp_empty(&gw, &data, case.name);
        echo_ok(&gw, case.name);
    }
    assert_nothing_stored(&gw, &data, "malformed PDUs");
    gw.stop();
});

gwtest!(pdv_on_rejected_context_aborts, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = start(tmp.path(), io, "");
    let mut contexts = default_contexts();
    contexts.push((
        5,
        "1.2.826.0.1.3680043.10.999.77.1".into(),
        vec![TS_EXPLICIT_LE.into()],
    ));
    let rq = association_rq("GWTEST", "DICOM_GW", &contexts);
    let mut p = Peer::associate_with(gw.port, rq);
    // Unknown SOP class: rejected with reason 3 (abstract syntax not supported).
    assert_eq!(
        p.context_result(5),
        PresentationContextResultReason::AbstractSyntaxNotSupported
    );
    assert_eq!(
        p.context_result(1),
        PresentationContextResultReason::Acceptance
    );
    assert_eq!(
        p.context_result(3),
        PresentationContextResultReason::Acceptance
    );
    assert_eq!(p.echo(1, 1), 0x0000);
    p.send_message(5, true, &dicom_gw::net::dimse::command::encode_echo_rq(2));
    p.expect_abort_and_close("PDV on the rejected presentation context 5");
    echo_ok(&gw, "after PDV on rejected context");
    gw.stop();
});

// ---------------------------------------------------------------------------------------------
// Interrupted receptions.

gwtest!(connection_dropped_mid_dataset, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    let (spec, p) = begin_half_sent_store(&gw, tmp.path(), 2 << 20);
    // The reception is under way: its temporary file exists.
    let deadline = Instant::now() + Duration::from_secs(20);
    while objects_and_tmp(&data).1.is_empty() {
        assert!(Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(p);
    wait_tmp_empty(&gw, &data, "connection dropped mid-dataset");
    assert_nothing_stored(&gw, &data, "connection dropped mid-dataset");
    echo_ok(&gw, "after dropped connection");
    let index = stop_and_open_index(&mut gw, &data);
    assert!(index.instance(&spec.sop_instance_uid).unwrap().is_none());
    assert_eq!(index.instance_count().unwrap(), 0);
});

gwtest!(abort_mid_dataset_discards_object, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    let (_, mut p) = begin_half_sent_store(&gw, tmp.path(), 1 << 20);
    p.send(&encode_pdu(&Pdu::AbortRQ {
        source: dicom_ul::pdu::AbortRQSource::ServiceUser,
    }))
    .unwrap();
    // A-ABORT received: the daemon closes without answering.
    p.expect_close("A-ABORT from the peer mid-dataset");
    wait_tmp_empty(&gw, &data, "A-ABORT mid-dataset");
    assert_nothing_stored(&gw, &data, "A-ABORT mid-dataset");
    echo_ok(&gw, "after A-ABORT mid-dataset");
    let index = stop_and_open_index(&mut gw, &data);
    assert_eq!(index.instance_count().unwrap(), 0);
});

gwtest!(release_mid_dataset_discards_object, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    let (_, p) = begin_half_sent_store(&gw, tmp.path(), 1 << 20);
    p.release();
    wait_tmp_empty(&gw, &data, "release mid-dataset");
    assert_nothing_stored(&gw, &data, "release mid-dataset");
    echo_ok(&gw, "after release mid-dataset");
    let index = stop_and_open_index(&mut gw, &data);
    assert_eq!(index.instance_count().unwrap(), 0);
});

// ---------------------------------------------------------------------------------------------
// C-STORE refusals.

gwtest!(invalid_sop_instance_uid_raw, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    let too_long = format!("1.2.{}", "3".repeat(62));
    assert_eq!(too_long.len(), 66);
    let bad = [
        "1.2.03.4",
        "1.2.abc",
        "../../etc/passwd",
        "/etc/passwd",
        "1.2..3",
        too_long.as_str(),
    ];
    let mut p = Peer::associate(gw.port);
    for (i, uid) in bad.iter().enumerate() {
        let mut spec = ObjSpec::new(i as u32);
        spec.sop_instance_uid = uid.to_string();
        let ds = dataset_of(tmp.path(), &format!("bad{i}"), &spec);
        let rsp = p.store(3, i as u16 + 1, CT, uid, &ds);
        assert_eq!(
            rsp.status,
            Some(0xC000),
            "C-STORE with SOP Instance UID {uid:?}: {rsp:?}"
        );
        assert_nothing_stored(&gw, &data, uid);
    }
    // The association is still usable.
    let good = ObjSpec::new(100);
    let ds = dataset_of(tmp.path(), "good", &good);
    assert_eq!(
        p.store(3, 50, CT, &good.sop_instance_uid, &ds).status,
        Some(0)
    );
    p.release();
    assert!(!tmp.path().join("etc").exists() && !data.join("etc").exists());
    echo_ok(&gw, "after invalid UIDs");
    let index = stop_and_open_index(&mut gw, &data);
    for uid in bad {
        assert!(
            index.instance(uid).unwrap().is_none(),
            "index row for {uid:?}"
        );
    }
    assert_eq!(index.instance_count().unwrap(), 1);
    let want = vec![good.settled_path(&data)];
    assert_eq!(stray_files(&data), want);
});

gwtest!(invalid_sop_instance_uid_storescu, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    for (i, uid) in ["1.2.03.4", "1.2.abc"].iter().enumerate() {
        let mut spec = ObjSpec::new(i as u32);
        spec.sop_instance_uid = uid.to_string();
        let f = gen(tmp.path(), &format!("bad{i}"), &spec);
        let (status, r) = store_one(&gw, &f);
        assert_eq!(
            status,
            Some(0xC000),
            "storescu of a file with SOP Instance UID {uid:?}:\n{}",
            r.output
        );
        assert_nothing_stored(&gw, &data, uid);
    }
    echo_ok(&gw, "after invalid UIDs via storescu");
    let index = stop_and_open_index(&mut gw, &data);
    assert_eq!(index.instance_count().unwrap(), 0);
});

/// Study and Series UIDs that try to steer the object's path. Under
/// `accept_nonconformant = false` they are refused C000 with nothing written; by default they
/// are kept in quarantine under a hashed name inside `objects/quarantine/`, and no raw UID
/// ever becomes a path component.
fn path_tricks_case(io: &str, strict: bool) {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let toml = if strict {
        "[store]\naccept_nonconformant = false\n"
    } else {
        ""
    };
    let mut gw = start(tmp.path(), io, toml);
    let specs = [
        ObjSpec::new(0).study("../../../../tmp/gwtest-evil"),
        ObjSpec::new(1).series("1.2/../../x"),
        ObjSpec::new(2).study("1.2.abc"),
        ObjSpec::new(3).series(".."),
    ];
    for (i, spec) in specs.iter().enumerate() {
        let f = gen(tmp.path(), &format!("trick{i}"), spec);
        let (status, r) = store_one(&gw, &f);
        assert_eq!(
            status,
            Some(if strict { 0xC000 } else { 0x0000 }),
            "study {:?} series {:?}:\n{}",
            spec.study_instance_uid,
            spec.series_instance_uid,
            r.output
        );
        wait_tmp_empty(&gw, &data, "path trick");
        if strict {
            assert_nothing_stored(&gw, &data, "path trick");
        }
    }
    assert!(!Path::new("/tmp/gwtest-evil").exists());
    echo_ok(&gw, "after path tricks");
    // After the stop: its last checkpoint has put every acknowledged object in place.
    let index = stop_and_open_index(&mut gw, &data);
    let stored = stray_files(&data);
    if strict {
        assert_eq!(index.instance_count().unwrap(), 0);
        return;
    }
    assert_eq!(index.instance_count().unwrap(), 4);
    assert_eq!(stored.len(), 4, "{stored:?}");
    for f in stored {
        let rel = f.strip_prefix(&data).unwrap();
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        assert_eq!(parts.len(), 4, "{rel:?}");
        assert_eq!(&parts[..2], ["objects", "quarantine"], "{rel:?}");
        let name = parts[3].strip_suffix(".dcm").unwrap();
        assert!(
            name.len() == 64
                && name.bytes().all(|b| b.is_ascii_hexdigit())
                && name.starts_with(&parts[2]),
            "{rel:?}"
        );
    }
}

gwtest!(
    path_tricks_in_dataset_uids_refused_when_strict,
    |io: &str| { path_tricks_case(io, true) }
);
gwtest!(
    path_tricks_in_dataset_uids_quarantined_by_hash,
    |io: &str| { path_tricks_case(io, false) }
);

// Under `accept_nonconformant = false`; by default such an object is quarantined (tests/forward.rs
// `nonconformant_objects_are_quarantined_and_forwarded`).
gwtest!(dataset_without_study_uid_refused_when_strict, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "[store]\naccept_nonconformant = false\n");
    let spec = ObjSpec::new(0).omit(STUDY_INSTANCE_UID);
    let f = gen(tmp.path(), "nostudy", &spec);
    let (status, r) = store_one(&gw, &f);
    assert_eq!(status, Some(0xC000), "no StudyInstanceUID:\n{}", r.output);
    wait_tmp_empty(&gw, &data, "no StudyInstanceUID");
    assert_nothing_stored(&gw, &data, "no StudyInstanceUID");
    echo_ok(&gw, "after dataset without StudyInstanceUID");
    let index = stop_and_open_index(&mut gw, &data);
    assert!(index.instance(&spec.sop_instance_uid).unwrap().is_none());
    assert_eq!(index.instance_count().unwrap(), 0);
});

gwtest!(dataset_uid_differs_from_command, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    let a = ObjSpec::new(0);
    let b = ObjSpec::new(1);
    let ds = dataset_of(tmp.path(), "a", &a);
    let mut p = Peer::associate(gw.port);
    let rsp = p.store(3, 1, CT, &b.sop_instance_uid, &ds);
    assert_eq!(
        rsp.status,
        Some(0xA900),
        "SOP Instance UID mismatch: {rsp:?}"
    );
    wait_tmp_empty(&gw, &data, "UID mismatch");
    assert_nothing_stored(&gw, &data, "UID mismatch");
    // Same association, matching UIDs: stored.
    let rsp = p.store(3, 2, CT, &a.sop_instance_uid, &ds);
    assert_eq!(rsp.status, Some(0x0000), "{rsp:?}");
    p.release();
    echo_ok(&gw, "after UID mismatch");
    let index = stop_and_open_index(&mut gw, &data);
    assert!(index.instance(&b.sop_instance_uid).unwrap().is_none());
    assert!(index.instance(&a.sop_instance_uid).unwrap().is_some());
    assert_eq!(index.instance_count().unwrap(), 1);
});

gwtest!(sop_class_differs_from_context, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    let spec = ObjSpec::new(0).sop_class(MR).modality("MR");
    let ds = dataset_of(tmp.path(), "mr", &spec);
    let mut p = Peer::associate(gw.port);
    // Context 3 is CT Image Storage; the command says MR Image Storage.
    let rsp = p.store(3, 1, MR, &spec.sop_instance_uid, &ds);
    assert_eq!(
        rsp.status,
        Some(0x0122),
        "SOP class not negotiated: {rsp:?}"
    );
    assert_nothing_stored(&gw, &data, "SOP class mismatch");
    assert_eq!(p.echo(1, 2), 0x0000);
    p.release();
    echo_ok(&gw, "after SOP class mismatch");
    let index = stop_and_open_index(&mut gw, &data);
    assert_eq!(index.instance_count().unwrap(), 0);
});

// ---------------------------------------------------------------------------------------------
// Duplicates.

gwtest!(identical_duplicate_is_one_row, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    let spec = ObjSpec::new(0);
    let f = gen(tmp.path(), "a", &spec);
    for round in 0..2 {
        let (status, r) = store_one(&gw, &f);
        assert_eq!(status, Some(0x0000), "round {round}:\n{}", r.output);
    }
    assert!(same_dataset(spec.settled_path(&data), &f));
    let want = vec![spec.settled_path(&data)];
    assert_eq!(stray_files(&data), want);
    let index = stop_and_open_index(&mut gw, &data);
    assert_eq!(index.instance_count().unwrap(), 1);
});

/// Stores two different objects with the same SOP Instance UID under `policy` and checks the
/// second's status, which one is stored (file and index row) and that tmp/ is empty.
fn duplicate_case(io: &str, policy: &str, expect_second: u16, expect_stored_second: bool) {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(
        tmp.path(),
        io,
        &format!("[store]\nduplicate_policy = \"{policy}\"\n"),
    );
    let first = ObjSpec::new(0);
    let mut second = ObjSpec::new(0).patient("OTHER^NAME", "PID0");
    second.seed = 4242;
    let f1 = gen(tmp.path(), "first", &first);
    let f2 = gen(tmp.path(), "second", &second);
    assert_ne!(dataset_bytes(&f1), dataset_bytes(&f2));
    let (s1, r1) = store_one(&gw, &f1);
    assert_eq!(s1, Some(0x0000), "{policy}: first:\n{}", r1.output);
    let (s2, r2) = store_one(&gw, &f2);
    assert_eq!(
        s2,
        Some(expect_second),
        "{policy}: second, different bytes:\n{}",
        r2.output
    );
    let want = if expect_stored_second { &f2 } else { &f1 };
    // And an identical re-send of what is stored now.
    let (s3, r3) = store_one(&gw, want);
    assert_eq!(
        s3,
        Some(0x0000),
        "{policy}: identical re-send:\n{}",
        r3.output
    );
    wait_tmp_empty(&gw, &data, policy);
    // One file once the checkpoints are done: the first object's path, or for a replacement
    // a new, versioned name next to it (an indexed file is never overwritten in place).
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let files = stray_files(&data);
        let settled =
            files.len() == 1 && (policy != "replace" || files[0] != first.stored_path(&data));
        if settled || Instant::now() > deadline {
            assert_eq!(files.len(), 1, "{policy}: {files:?}");
            wait_complete(&files[0]);
            break files[0].clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        stored.parent(),
        first.stored_path(&data).parent(),
        "{policy}"
    );
    if policy == "replace" {
        let name = stored.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("{}.", first.sop_instance_uid)) && name.ends_with(".dcm"),
            "{policy}: {name}"
        );
    } else {
        assert_eq!(stored, first.stored_path(&data), "{policy}");
    }
    // Both duplicates are visible: a WARN line each and the counter by outcome.
    let label = match policy {
        "keep" => "kept_existing",
        "replace" => "replaced",
        _ => "rejected",
    };
    for (outcome, n) in [(label, 1.0), ("identical", 1.0)] {
        assert_eq!(
            metric_value(
                gw.http_port,
                &format!("dicomgw_duplicates_total{{outcome=\"{outcome}\"}}")
            ),
            Some(n),
            "{policy}: dicomgw_duplicates_total{{outcome={outcome}}}"
        );
    }
    let log = gw.stderr();
    let warned = |outcome: &str| {
        log.lines().any(|l| {
            l.contains("WARN")
                && l.contains("duplicate SOP Instance UID")
                && l.contains(outcome)
                && l.contains(&first.sop_instance_uid)
        })
    };
    assert!(
        warned(label) && warned("identical"),
        "{policy}: duplicate lines:\n{log}"
    );
    assert!(
        same_dataset(&stored, want),
        "{policy}: stored object is not the {} one",
        if expect_stored_second {
            "second"
        } else {
            "first"
        }
    );
    echo_ok(&gw, policy);
    let index = stop_and_open_index(&mut gw, &data);
    assert_eq!(index.instance_count().unwrap(), 1, "{policy}");
    let row = index.instance(&first.sop_instance_uid).unwrap().unwrap();
    assert_eq!(
        row.dataset_size,
        dataset_bytes(want).len() as u64,
        "{policy}: index row describes the wrong object"
    );
    assert_eq!(
        row.dataset_blake3,
        blake3::hash(&dataset_bytes(want)).to_hex().to_string(),
        "{policy}: index row hash"
    );
}

gwtest!(duplicate_keep, |io: &str| duplicate_case(
    io, "keep", 0x0000, false
));
gwtest!(duplicate_replace, |io: &str| duplicate_case(
    io, "replace", 0x0000, true
));
gwtest!(duplicate_reject, |io: &str| duplicate_case(
    io, "reject", 0x0111, false
));

// ---------------------------------------------------------------------------------------------
// Disk full.

gwtest!(disk_full_refuses_and_recovers, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let _mount = match Tmpfs::mount(&data, "4m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIP disk_full_refuses_and_recovers ({io}): {why}");
            return;
        }
    };
    // Declared after the mount: dropped (killed) before the unmount. The journal's ring
    // takes 2 MiB of the 4.
    let mut gw = start_on(
        tmp.path(),
        &data,
        io,
        "[store]\njournal_segments = 2\njournal_segment_mib = 1\n",
    );
    let big = ObjSpec::new(0).pixel_bytes(8 << 20);
    let fbig = gen(tmp.path(), "big", &big);
    let (status, r) = store_one(&gw, &fbig);
    assert_eq!(
        status,
        Some(0xA700),
        "8 MiB object on a 4 MiB disk:\n{}",
        r.output
    );
    wait_tmp_empty(&gw, &data, "disk full");
    let (objects, tmpfiles) = objects_and_tmp(&data);
    assert!(
        objects.is_empty() && tmpfiles.is_empty(),
        "{objects:?} {tmpfiles:?}"
    );
    assert_nothing_stored(&gw, &data, "disk full");
    // Recovered: a small object fits and is stored.
    let small = ObjSpec::new(1);
    let fsmall = gen(tmp.path(), "small", &small);
    let (status, r) = store_one(&gw, &fsmall);
    assert_eq!(
        status,
        Some(0x0000),
        "small object after disk full:\n{}",
        r.output
    );
    assert!(same_dataset(small.settled_path(&data), &fsmall));
    echo_ok(&gw, "after disk full");
    let index = stop_and_open_index(&mut gw, &data);
    assert!(index.instance(&big.sop_instance_uid).unwrap().is_none());
    assert!(index.instance(&small.sop_instance_uid).unwrap().is_some());
    assert_eq!(index.instance_count().unwrap(), 1);
    drop(index);
    drop(gw);
});

// Acknowledged objects wait in memory for their checkpoint; `[store] max_pending_objects`
// bounds how many (rule 3). With the checkpoint failing (the study's directory cannot be
// made), the C-STORE past the bound is not answered: its association waits and `/readyz`
// says why (503, "2 objects wait for the checkpoint"); once the checkpoint succeeds the same
// C-STORE is answered 0000, and all three objects are stored.
gwtest!(
    max_pending_objects_holds_the_next_object_until_the_checkpoint,
    |io: &str| {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let gw = start_on(
            tmp.path(),
            &data,
            io,
            "[store]\ncheckpoint_objects = 2\nmax_pending_objects = 2\n",
        );
        let study = "1.2.826.0.1.3680043.10.1234.77";
        let specs: Vec<ObjSpec> = (0..3)
            .map(|i| ObjSpec::new(700 + i).study(study).pixel_bytes(4096))
            .collect();
        let files: Vec<PathBuf> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| gen(tmp.path(), &format!("p{i}"), s))
            .collect();
        let blocker = data.join("objects").join(study);
        std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
        std::fs::write(&blocker, b"not a directory").unwrap();
        for f in &files[..2] {
            assert_eq!(
                store_one(&gw, f).0,
                Some(0),
                "acknowledged from the journal"
            );
        }
        std::thread::scope(|scope| {
            let third = scope.spawn(|| store_one(&gw, &files[2]));
            let rsp = readyz_when(&gw, |r| {
                r.text().contains("objects wait for the checkpoint")
            });
            assert_eq!(rsp.status, 503, "{}", rsp.text());
            assert!(
                rsp.text().contains("2 objects wait for the checkpoint"),
                "{}",
                rsp.text()
            );
            std::thread::sleep(Duration::from_millis(300));
            assert!(!third.is_finished(), "answered past the bound");
            assert!(!specs[0].stored_path(&data).exists());
            std::fs::remove_file(&blocker).unwrap();
            let (status, r) = third.join().unwrap();
            assert_eq!(status, Some(0), "{}", r.output);
        });
        for (s, f) in specs.iter().zip(&files) {
            assert!(
                same_dataset(s.settled_path(&data), f),
                "{}",
                s.sop_instance_uid
            );
        }
        let rsp = readyz_when(&gw, |r| r.status == 200);
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
    }
);

// A full disk under the materializer (issue 12, audit H4): objects the journal acknowledged
// wait in it while checkpoints fail on ENOSPC, `/readyz` says so (503, "ingest"), and once
// space is back the same process indexes them and takes more: no restart, nothing lost.
gwtest!(
    disk_full_under_the_checkpoint_recovers_without_restart,
    |io: &str| {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let _mount = match Tmpfs::mount(&data, "8m") {
            Ok(m) => m,
            Err(why) => {
                eprintln!(
                    "SKIP disk_full_under_the_checkpoint_recovers_without_restart ({io}): {why}"
                );
                return;
            }
        };
        let mut gw = start_on(
        tmp.path(),
        &data,
        io,
        "[store]\njournal_segments = 2\njournal_segment_mib = 1\ndisk_high_water_percent = 100\n",
    );
        let rsp = readyz(&gw);
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        // Fill the filesystem.
        let filler = data.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![0x55u8; 64 << 10];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.sync_all();
        }
        let specs: Vec<ObjSpec> = (0..3)
            .map(|i| ObjSpec::new(500 + i).pixel_bytes(8192))
            .collect();
        let files: Vec<PathBuf> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| gen(tmp.path(), &format!("w{i}"), s))
            .collect();
        for f in &files {
            let (status, r) = store_one(&gw, f);
            assert_eq!(
                status,
                Some(0),
                "acknowledged from the journal:\n{}",
                r.output
            );
        }
        // The checkpoint cannot place them: not ready, and says why.
        let rsp = readyz_when(&gw, |r| r.status == 503);
        assert_eq!(rsp.status, 503, "{}", rsp.text());
        let body = rsp.text();
        assert!(
            body.contains("ingest") && body.contains("checkpoint"),
            "{body}"
        );
        assert!(!specs[0].stored_path(&data).exists());
        // Space back: the same process catches up.
        std::fs::remove_file(&filler).unwrap();
        for (s, f) in specs.iter().zip(&files) {
            let placed = s.settled_path(&data);
            assert!(
                placed.exists(),
                "{} not placed after space came back; the daemon said:\n{}",
                s.sop_instance_uid,
                gw.stderr()
            );
            assert!(
                same_dataset(placed, f),
                "{} after space came back",
                s.sop_instance_uid
            );
        }
        let rsp = readyz_when(&gw, |r| r.status == 200);
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let more = ObjSpec::new(600);
        let fmore = gen(tmp.path(), "more", &more);
        assert_eq!(store_one(&gw, &fmore).0, Some(0));
        let index = stop_and_open_index(&mut gw, &data);
        for s in specs.iter().chain([&more]) {
            assert!(
                index.instance(&s.sop_instance_uid).unwrap().is_some(),
                "{}",
                s.sop_instance_uid
            );
        }
        assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
    }
);

// ---------------------------------------------------------------------------------------------
// Start-up and configuration.

gwtest!(leftover_temporary_files_removed_at_startup, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(tmp.path(), io, "");
    let spec = ObjSpec::new(0);
    let f = gen(tmp.path(), "a", &spec);
    let (status, r) = store_one(&gw, &f);
    assert_eq!(status, Some(0), "{}", r.output);
    gw.stop();
    drop(gw);
    // What a crash leaves: unfinished receptions in tmp/.
    let leftovers = [
        data.join("tmp").join("4242-0-0.part"),
        data.join("tmp").join("4242-1-7.part"),
        data.join("tmp").join("unrelated.tmp"),
    ];
    for (i, p) in leftovers.iter().enumerate() {
        std::fs::write(p, vec![i as u8; 1000 * (i + 1)]).unwrap();
    }
    let mut gw = start(tmp.path(), io, "");
    let (_, left) = objects_and_tmp(&data);
    assert!(
        left.is_empty(),
        "leftovers not removed at start-up: {left:?}"
    );
    assert!(
        same_dataset(spec.settled_path(&data), &f),
        "stored object changed"
    );
    let second = ObjSpec::new(1);
    let f2 = gen(tmp.path(), "b", &second);
    let (status, r) = store_one(&gw, &f2);
    assert_eq!(status, Some(0), "{}", r.output);
    let index = stop_and_open_index(&mut gw, &data);
    assert_eq!(index.instance_count().unwrap(), 2);
    assert!(index.instance(&spec.sop_instance_uid).unwrap().is_some());
});

/// Runs `dicom-gw check-config FILE` on `text`; returns (exit code, stdout, stderr).
fn check_config(text: &str) -> (Option<i32>, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("gw.toml");
    std::fs::write(&p, text).unwrap();
    let (out, timed_out) = run_timeout(
        std::process::Command::new(BIN).arg("check-config").arg(&p),
        Duration::from_secs(60),
    );
    assert!(!timed_out, "check-config hung");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_key_and_line() {
    // (config, key that must be named, line that must be named)
    let bad: &[(&str, &str, usize)] = &[
        // Unknown keys.
        (
            "grace_period_seconds = 5\n[store]\nae_title = \"GW\"\nae_titel = \"X\"\n",
            "ae_titel",
            4,
        ),
        ("durability = \"full\"\nthreds = 2\n", "threds", 2),
        // Values of the wrong type or outside the enumeration.
        (
            "[store]\nmax_associations = \"many\"\n",
            "max_associations",
            2,
        ),
        (
            "# policy\n[store]\n\nduplicate_policy = \"sometimes\"\n",
            "duplicate_policy",
            4,
        ),
        ("grace_period_seconds = -1\n", "grace_period_seconds", 1),
        // Values that parse but are invalid.
        (
            "[store]\nae_title = \"MUCH_TOO_LONG_AE_TITLE\"\n",
            "store.ae_title",
            2,
        ),
        (
            "[store]\n# no\nmax_associations = 0\n",
            "store.max_associations",
            3,
        ),
        ("[store]\nmax_pdu_length = 10\n", "store.max_pdu_length", 2),
        (
            "[store]\nacse_timeout_seconds = 0\n",
            "store.acse_timeout_seconds",
            2,
        ),
        (
            "[store]\nallowed_calling_ae_titles = [\"OK\", \"BAD\\\\AE\"]\n",
            "store.allowed_calling_ae_titles",
            2,
        ),
    ];
    for (text, key, line) in bad {
        let (code, stdout, stderr) = check_config(text);
        assert_eq!(
            code,
            Some(2),
            "check-config on {text:?}: exit {code:?}\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(key),
            "check-config on {text:?}: stderr does not name {key:?}:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("line {line}")),
            "check-config on {text:?}: stderr does not name line {line}:\n{stderr}"
        );
    }
    let good = "grace_period_seconds = 5\ndurability = \"relaxed\"\n\n[store]\nae_title = \"GW\"\n\
                require_called_ae_title = true\nallowed_calling_ae_titles = [\"A\", \"B\"]\n\
                max_associations = 4\nacse_timeout_seconds = 5\ndimse_timeout_seconds = 60\n\
                duplicate_policy = \"reject\"\nmax_pdu_length = 65536\n";
    let (code, stdout, stderr) = check_config(good);
    assert_eq!(code, Some(0), "good config refused:\n{stdout}\n{stderr}");
    let (code, _, stderr) = check_config("");
    assert_eq!(code, Some(0), "empty config refused:\n{stderr}");
}

#[test]
fn check_config_line_with_commented_section_header() {
    // A section header followed by a comment is valid TOML; the error must still give the line.
    let (code, _, stderr) = check_config("[store]  # the storage SCP\nmax_associations = 0\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("store.max_associations"), "{stderr}");
    assert!(stderr.contains("line 2"), "no line in: {stderr}");
}

/// Deflated Explicit VR Little Endian.
const TS_DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// Raw deflate (PS3.5 A.5) of `ds`, without padding.
fn deflate(ds: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(ds).unwrap();
    enc.finish().unwrap()
}

// The interoperability review's first finding: a CT object cut 1,001 bytes inside Pixel Data
// (odd length) and an odd-length deflated stream were answered 0000 and stored. Both are now
// refused C000 while they stream in (the structure check), nothing is stored, indexed or
// queued, and the same association stores valid objects, deflated ones included.
gwtest!(truncated_and_odd_length_datasets_are_refused, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut gw = start(
        tmp.path(),
        io,
        "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 9\n\n[[routes]]\ndestinations = [\"pacs\"]\n",
    );
    let mut contexts = default_contexts();
    contexts.push((5, CT.into(), vec![TS_DEFLATED.into()]));
    let mut p = Peer::associate_with(gw.port, association_rq("GWTEST", "DICOM_GW", &contexts));

    let cut = ObjSpec::new(0).pixel_bytes(20_000);
    let ds = dataset_of(tmp.path(), "cut", &cut);
    let truncated = &ds[..ds.len() - 1001];
    assert_eq!(truncated.len() % 2, 1);
    let rsp = p.store(3, 1, CT, &cut.sop_instance_uid, truncated);
    assert_eq!(rsp.status, Some(0xC000), "truncated CT: {rsp:?}");
    wait_tmp_empty(&gw, &data, "truncated CT");
    assert_nothing_stored(&gw, &data, "truncated CT");

    let odd = ObjSpec::new(1);
    let mut z = deflate(&dataset_of(tmp.path(), "odd", &odd));
    if z.len().is_multiple_of(2) {
        z.push(0); // a padding NUL too many: odd as sent
    }
    let rsp = p.store(5, 2, CT, &odd.sop_instance_uid, &z);
    assert_eq!(
        rsp.status,
        Some(0xC000),
        "odd-length deflated stream: {rsp:?}"
    );
    wait_tmp_empty(&gw, &data, "odd deflated");
    assert_nothing_stored(&gw, &data, "odd deflated");

    // Same association: a whole object, and a deflated one padded as PS3.5 A.5 says.
    let good = ObjSpec::new(2).pixel_bytes(20_000);
    let rsp = p.store(
        3,
        3,
        CT,
        &good.sop_instance_uid,
        &dataset_of(tmp.path(), "good", &good),
    );
    assert_eq!(rsp.status, Some(0), "{rsp:?}");
    let zgood = ObjSpec::new(3);
    let mut z = deflate(&dataset_of(tmp.path(), "zgood", &zgood));
    if z.len() % 2 == 1 {
        z.push(0);
    }
    let rsp = p.store(5, 4, CT, &zgood.sop_instance_uid, &z);
    assert_eq!(rsp.status, Some(0), "padded deflated stream: {rsp:?}");
    p.release();
    let log = gw.stderr();
    assert!(
        log.contains("malformed dataset") && log.contains("odd length"),
        "the refusals are logged with their reason:\n{log}"
    );
    echo_ok(&gw, "after malformed datasets");
    let index = stop_and_open_index(&mut gw, &data);
    assert_eq!(index.instance_count().unwrap(), 2);
    for s in [&cut, &odd] {
        assert!(index.instance(&s.sop_instance_uid).unwrap().is_none());
    }
    let mut stored = stray_files(&data);
    stored.sort();
    let mut want = vec![good.settled_path(&data), zgood.settled_path(&data)];
    want.sort();
    assert_eq!(stored, want);
    let jobs = dicom_gw::queue::Queue::new(std::sync::Arc::new(index), false)
        .stats(&["pacs".into()])
        .unwrap();
    assert_eq!(
        jobs[0].pending + jobs[0].retry + jobs[0].in_flight + jobs[0].dead,
        2,
        "{jobs:?}"
    );
});

/// SOP Instance UID of a Part-10 file, from its meta group.
fn sop_of(f: &Path) -> String {
    meta_str(f, tag(0x0002, 0x0003)).expect("(0002,0003)")
}

/// Sends the dataset of Part-10 file `f` as its bytes stand (no re-encoding, unlike DCMTK),
/// on a context of its own SOP class and transfer syntax; returns the C-STORE-RSP.
fn store_raw(gw: &Daemon, f: &Path) -> dicom_gw::net::dimse::command::Command {
    let info = parse_part10(f).unwrap();
    let class = meta_str(f, tag(0x0002, 0x0002)).expect("(0002,0002)");
    let bytes = std::fs::read(f).unwrap();
    let mut contexts = default_contexts();
    contexts.push((5, class.clone(), vec![info.ts.clone()]));
    let mut p = Peer::associate_with(gw.port, association_rq("GWTEST", "DICOM_GW", &contexts));
    let rsp = p.store(
        5,
        1,
        &class,
        &sop_of(f),
        &bytes[info.dataset_offset as usize..],
    );
    p.release();
    rsp
}

// Real-world objects (tests/data/samples: pydicom's test files, 17 transfer syntaxes and kinds)
// are all stored by DCMTK storescu with 0000; a real truncated one (cut inside Pixel Data),
// sent raw as a peer that does not check would send it, is refused C000 with nothing stored.
gwtest!(
    real_world_samples_are_stored_and_truncated_ones_refused,
    |io: &str| {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut gw = start(tmp.path(), io, "");
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/samples");
        let mut valid: Vec<PathBuf> = std::fs::read_dir(&samples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .filter(|p| !p.ends_with("MR_truncated.dcm"))
            .collect();
        valid.sort();
        assert!(valid.len() >= 15, "{valid:?}");
        // The RLE objects first, sent raw (DCMTK re-encodes what it sends): stored byte for
        // byte. Some samples share a SOP Instance UID (one object in several syntaxes), and
        // the first one stored is the one kept.
        const RLE: &str = "1.2.840.10008.1.2.5";
        for f in valid.iter().filter(|f| meta_ts(f) == RLE) {
            let rsp = store_raw(&gw, f);
            assert_eq!(rsp.status, Some(0), "{}: {rsp:?}", f.display());
        }
        let mut sops = BTreeSet::new();
        for f in &valid {
            // One run per file, proposing its SOP class with its own transfer syntax.
            let x = match meta_ts(f).as_str() {
                "1.2.840.10008.1.2" => "-xi",
                "1.2.840.10008.1.2.1" => "-xe",
                "1.2.840.10008.1.2.2" => "-xb",
                "1.2.840.10008.1.2.1.99" => "-xd",
                "1.2.840.10008.1.2.4.50" => "-xy",
                "1.2.840.10008.1.2.4.51" => "-xx",
                "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => "-xs",
                "1.2.840.10008.1.2.4.80" => "-xt",
                "1.2.840.10008.1.2.4.81" => "-xu",
                "1.2.840.10008.1.2.4.90" => "-xv",
                "1.2.840.10008.1.2.4.91" => "-xw",
                "1.2.840.10008.1.2.5" => "-xr",
                other => panic!("{}: no storescu option for {other}", f.display()),
            };
            let r = storescu(gw.port, &[f], &["-R", x]);
            assert_eq!(r.status_of(f), Some(0), "{}:\n{}", f.display(), r.output);
            sops.insert(sop_of(f));
        }

        let truncated = samples.join("MR_truncated.dcm");
        let rsp = store_raw(&gw, &truncated);
        assert_eq!(rsp.status, Some(0xC000), "MR_truncated: {rsp:?}");
        let sop = sop_of(&truncated);
        wait_tmp_empty(&gw, &data, "samples");
        let index = stop_and_open_index(&mut gw, &data);
        assert!(index.instance(&sop).unwrap().is_none() || sops.contains(&sop));
        assert_eq!(index.instance_count().unwrap(), sops.len() as u64);
        let mut rle = 0;
        for f in valid.iter().filter(|f| meta_ts(f) == RLE) {
            let rec = index.instance(&sop_of(f)).unwrap().expect("stored");
            assert_eq!(rec.transfer_syntax_uid, RLE);
            assert!(
                same_dataset(data.join(&rec.path), f),
                "{}: not stored byte for byte",
                f.display()
            );
            rle += 1;
        }
        assert!(rle >= 2);
    }
);
