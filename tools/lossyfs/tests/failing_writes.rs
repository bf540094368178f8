//! A failing disk that keeps its power (`fail-writes`): with the kernel's writeback cache, a
//! failed write reaches processes as a writeback error, the way a block device's does.
//! Needs /dev/fuse and root; skips without /dev/fuse.

use std::io::Write;

use dicom_gw::store::syncfs;
use lossyfs::Lossy;

/// What dicom-gw's checkpoint relies on (`ingest::checkpoint::Placer`): a failed write-back
/// reaches `syncfs` once on every descriptor opened before it, and not at all on one opened
/// after someone else saw it; the bytes never reach the disk.
#[test]
fn a_failed_writeback_is_reported_once_to_each_descriptor_opened_before_it() {
    if !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: /dev/fuse is absent: no FUSE here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fs = Lossy::new().with_writeback_cache();
    let session = fs.mount(&mnt).expect("mount lossyfs");
    let early = std::fs::File::open(&mnt).unwrap();
    let other = std::fs::File::open(&mnt).unwrap();

    fs.control("fail-writes").unwrap();
    let mut f = std::fs::File::create(mnt.join("a")).unwrap();
    f.write_all(&[7u8; 16384])
        .expect("a write into the page cache succeeds");
    drop(f); // FUSE writes back at close: the write fails there
    let first = syncfs(&other);
    fs.control("heal").unwrap();
    let late = std::fs::File::open(&mnt).unwrap();
    let early_first = syncfs(&early);
    let late_first = syncfs(&late);
    let early_again = syncfs(&early);
    let failed = fs.counters().failed_writes;
    drop((early, other, late));
    lossyfs::unmount(session).unwrap();
    let session = fs.mount(&mnt).unwrap();
    let on_disk = std::fs::read(mnt.join("a")).unwrap();
    lossyfs::unmount(session).unwrap();

    assert!(failed > 0, "the server refused the write-back");
    let eio = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error()) == Some(libc::EIO);
    assert!(eio(first), "the first syncfs after the failure reports it");
    assert!(
        eio(early_first),
        "so does one on a descriptor opened before it"
    );
    assert!(early_again.is_ok(), "once per descriptor");
    assert!(
        late_first.is_ok(),
        "a descriptor opened after someone saw the error never sees it"
    );
    assert!(
        on_disk.is_empty(),
        "the disk has none: {} bytes",
        on_disk.len()
    );
}
