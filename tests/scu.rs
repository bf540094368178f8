//! The blocking SCU (`dicom_gw::net::scu`) against a real peer, DCMTK's `storescp`: objects
//! streamed from Part-10 files with `c_store_from_file` arrive with the identical dataset bytes.
//! Skipped (with a message) when `storescp` is not installed.

mod util;

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use dicom_gw::net::scu::{AssocParams, Association};
use util::*;

/// True if `prog` is an executable file on PATH.
fn on_path(prog: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(prog).is_file())
}

/// (offset, length) of the dataset of a Part-10 file.
fn dataset_range(path: &Path) -> (u64, u64) {
    let i = parse_part10(path).unwrap_or_else(|e| panic!("{e}"));
    (i.dataset_offset, i.file_len - i.dataset_offset)
}

#[test]
fn c_store_from_file_to_dcmtk_storescp() {
    if !on_path("storescp") {
        eprintln!("SKIPPED c_store_from_file_to_dcmtk_storescp: DCMTK storescp not on PATH");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let peer = Storescp::start(tmp.path().join("received"), &[]);

    // A small object and one of several batches (storescp announces 16 KiB PDUs).
    let specs = [
        ObjSpec::new(1).pixel_bytes(4096),
        ObjSpec::new(2).pixel_bytes(3 << 20),
    ];
    let mut files = Vec::new();
    for (k, spec) in specs.iter().enumerate() {
        let path = tmp.path().join(format!("in{k}.dcm"));
        gen_part10(&path, spec).unwrap();
        files.push(path);
    }

    let addr: SocketAddr = format!("127.0.0.1:{}", peer.port).parse().unwrap();
    let params = AssocParams {
        addr,
        calling: "GW_SCU_TEST".into(),
        called: "STORESCP".into(),
        max_pdu: 65_536,
        timeout: Duration::from_secs(60),
        connect_timeout: None,
        contexts: vec![(CT_IMAGE_STORAGE.into(), vec![EXPLICIT_LE.into()])],
        implementation_class_uid: IMPL_CLASS_UID.into(),
        implementation_version_name: "GWTEST_SCU".into(),
    };
    let mut a = Association::open(&params)
        .unwrap_or_else(|e| panic!("association with storescp: {e}\n{}", peer.log()));
    let pc = a.context(CT_IMAGE_STORAGE, EXPLICIT_LE).unwrap();
    for (k, (spec, path)) in specs.iter().zip(&files).enumerate() {
        let (offset, len) = dataset_range(path);
        let file = File::open(path).unwrap();
        let rsp = a
            .c_store_from_file(
                pc,
                k as u16 + 1,
                &spec.sop_class_uid,
                &spec.sop_instance_uid,
                &file,
                offset,
                len,
            )
            .unwrap_or_else(|e| panic!("C-STORE of {}: {e}\n{}", path.display(), peer.log()));
        assert_eq!(rsp.status, 0x0000, "{rsp:?}\n{}", peer.log());
        assert_eq!(rsp.error_comment, None);
    }
    a.release().unwrap();

    let received = peer.wait_for_files(specs.len(), Duration::from_secs(30));
    for (spec, sent) in specs.iter().zip(&files) {
        let got = received
            .iter()
            .find(|p| meta_str(p, tag(0x0002, 0x0003)).as_deref() == Some(&spec.sop_instance_uid))
            .unwrap_or_else(|| panic!("storescp did not store {}", spec.sop_instance_uid));
        assert!(
            same_dataset(sent, got),
            "{} differs from what was sent",
            got.display()
        );
        assert_eq!(meta_ts(got), EXPLICIT_LE);
    }
}
