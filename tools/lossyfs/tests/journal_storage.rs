//! The journal's storage seam (issue 12) on lossyfs: which write path its probe picks on FUSE,
//! and that what it calls durable survives a power cut while what it did not flush is lost.
//! Needs /dev/fuse and root; skips without /dev/fuse.

use std::path::Path;

use dicom_gw::config::Durability;
use dicom_gw::store::journal::{AlignedBuf, FileIo, FileStorage, IoMode, Segment, Storage, BLOCK};
use lossyfs::Lossy;

const SEG: u64 = 64 * BLOCK as u64;

fn block(byte: u8) -> AlignedBuf {
    let mut b = AlignedBuf::new(BLOCK);
    b.fill(byte);
    b
}

fn run(mode: IoMode, want: FileIo) {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fs = Lossy::new();
    let session = fs.mount(&mnt).expect("mount lossyfs");
    // The data directory exists durably, as an installed appliance's would.
    std::fs::create_dir(mnt.join("data")).unwrap();
    fs.sync_all();
    let dir = mnt.join("data/journal/core-0");

    let mut st = FileStorage::open(&dir, Durability::Full, mode).unwrap();
    assert_eq!(st.io(), want, "{mode:?}");
    let seg = st.segment(0, SEG, true).unwrap();
    seg.write_at(&block(1), 0).unwrap();
    seg.flush().unwrap();
    seg.write_at(&block(2), BLOCK as u64).unwrap(); // not flushed
    st.store_state(b"state-1").unwrap();
    drop(seg);
    drop(st);

    fs.cut();
    lossyfs::unmount(session).unwrap();
    fs.power_on();
    let session = fs.mount(&mnt).unwrap();

    let mut st = FileStorage::open(&dir, Durability::Full, mode).unwrap();
    assert_eq!(st.load_state().unwrap().as_deref(), Some(&b"state-1"[..]));
    let seg = st
        .segment(0, SEG, false)
        .expect("the preallocated segment survives under its name");
    assert_eq!(seg.len(), SEG);
    let mut b = AlignedBuf::new(BLOCK);
    seg.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 1), "the flushed block survives");
    seg.read_at(&mut b, BLOCK as u64).unwrap();
    let second = b[0];
    assert!(b.iter().all(|&x| x == second));
    match want {
        // O_DSYNC: the kernel follows each write with FUSE_FSYNC(datasync): durable.
        FileIo::DirectSync => assert_eq!(second, 2, "an O_DSYNC write is durable"),
        FileIo::Buffered => assert_eq!(second, 0, "an unflushed buffered write is lost"),
    }
    drop(seg);
    drop(st);
    let c = fs.counters();
    assert!(c.fdatasync > 0 && c.fsyncdir > 0, "{c:?}");
    lossyfs::unmount(session).unwrap();
}

fn fuse() -> bool {
    let ok = Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("SKIP: /dev/fuse is absent");
    }
    ok
}

#[test]
fn o_direct_is_taken_on_fuse_and_o_dsync_writes_are_durable() {
    if fuse() {
        run(IoMode::Auto, FileIo::DirectSync);
    }
}

#[test]
fn buffered_segments_keep_what_was_flushed_only() {
    if fuse() {
        run(IoMode::Buffered, FileIo::Buffered);
    }
}
