//! A ~1 GiB object through storescu: stored byte-exact (streamed BLAKE3 of the dataset) and
//! indexed, while the daemon's peak resident memory stays far below the object's size.

mod util;

use dicom_gw::store::index::Index;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");

/// The daemon's peak RSS (VmHWM) must stay below this while receiving the object.
const MAX_HWM_KIB: u64 = 64 * 1024;

gwtest!(one_gib_object_streams_in_bounded_memory, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let spec = ObjSpec::new(1).pixel_bytes(1 << 30);
    let src = tmp.path().join("one_gib.dcm");
    let size = gen_part10(&src, &spec).unwrap();
    assert!(size > 1000 << 20, "generated only {size} bytes");
    let info = parse_part10(&src).unwrap();
    let sent_len = info.file_len - info.dataset_offset;
    let sent_hash = dataset_hash(&src);

    // This test is about memory; the machine's other work must not push it over the disk mark.
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(&cfg, "[store]\ndisk_high_water_percent = 100\n").unwrap();
    let mut gw = Daemon::start(BIN, &data, io, &["--config", cfg.to_str().unwrap()]);
    let flags = storescu_flags_for(Ts::ExplicitLE);
    storescu(gw.port, &[&src], &flags).assert_all_ok(&[&src]);
    let hwm = vm_hwm_kib(gw.pid);
    eprintln!("{io}: dicom-gw VmHWM after a {size}-byte object: {hwm} KiB");
    assert!(
        hwm < MAX_HWM_KIB,
        "dicom-gw peak RSS {hwm} KiB >= {MAX_HWM_KIB} KiB while receiving a {size}-byte object"
    );
    gw.stop();

    let stored = spec.settled_path(&data);
    assert!(stored.is_file(), "not stored at {}", stored.display());
    assert_eq!(meta_ts(&stored), Ts::ExplicitLE.uid());
    let st = parse_part10(&stored).unwrap();
    assert_eq!(
        st.file_len - st.dataset_offset,
        sent_len,
        "stored dataset size"
    );
    assert_eq!(dataset_hash(&stored), sent_hash, "stored dataset differs");
    assert!(list_files(data.join("tmp")).is_empty(), "tmp/ not empty");

    let idx = Index::open(&data.join("gateway.redb")).unwrap();
    assert_eq!(idx.instance_count().unwrap(), 1);
    let row = idx
        .instance(&spec.sop_instance_uid)
        .unwrap()
        .expect("index row of the 1 GiB object");
    assert_eq!(row.transfer_syntax_uid, Ts::ExplicitLE.uid());
    assert_eq!(row.dataset_size, sent_len);
    assert_eq!(row.dataset_blake3, sent_hash);
    assert_eq!(row.file_size, st.file_len);
    drop(idx);
    // Remove the two GiB-sized files now rather than at the end of the test binary.
    tmp.close().unwrap();
});
