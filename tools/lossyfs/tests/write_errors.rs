//! A disk write that fails while the power stays on, end to end: dicom-gw (relaxed
//! durability, checkpoints held back) keeps its data directory on an ext4 whose block device
//! (a loop device) lives on lossyfs, so lossyfs's `fail-writes` makes the device fail every
//! write as a failing disk would (ext4's own journal is on a second, healthy loop device, so
//! the filesystem itself survives). Large objects are acknowledged while their files are
//! still in the page cache; then the device fails while someone else's `syncfs` (an
//! administrator's `sync -f`, a backup agent) pushes those pages out and sees the error
//! first; the device heals; a read of the admin API makes the checkpoint run.
//!
//! The kernel reports a write-back error once to each descriptor opened before it (see
//! `failing_writes.rs`), so a checkpoint that opened the data directory afresh would see a
//! clean `syncfs` and index files whose bytes never reached the disk, and a retry that
//! trusted the page cache would too. What must happen instead:
//! - while the page cache still holds the bytes: the checkpoint fails once, its retry writes
//!   the files again, and on the device's own contents (remounted) every indexed object's
//!   file hashes to what was sent;
//! - when the page cache has let them go (`drop_caches`): the objects are reported lost
//!   (`dicomgw_ingest_lost_objects_total`, an ERROR line each), never indexed damaged.
//!
//! And in full durability, the journal's own write failing: nothing more is acknowledged,
//! the daemon stops with exit status 1 so that its supervisor starts it again, and that
//! start's replay indexes every object acknowledged before the failure, whole.
//!
//! Needs /dev/fuse, loop devices, mkfs.ext4 and root; skips without /dev/fuse or a free
//! loop device.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dicom_gw::store::syncfs;
use dicom_loadgen::dataset::dataset_hash;
use dicom_loadgen::run::{Operation, RunConfig, RunResult};
use dicom_loadgen::source::Source;
use dicom_loadgen::verify::SentRecord;

mod common;
use common::{ct_spec, hex, store_config, viewer_token, Gw, Mounted};

/// Relaxed durability, objects above 64 KiB staged to files, no checkpoint until asked.
const CONFIG: &str = "durability = \"relaxed\"\n\
[store]\n\
inline_max_kib = 64\n\
checkpoint_interval_ms = 600000\n\
checkpoint_objects = 1000000\n";

/// Stores `n` synthetic CT objects of the `sizes` mix over one association: the run, whose
/// `sent` are the acknowledged ones.
fn store(port: u16, n: u64, seed: u64, sizes: &str) -> RunResult {
    let spec = ct_spec(
        &format!("1.2.826.0.1.3680043.10.543.7.{seed}"),
        sizes,
        10,
        1,
    );
    let cfg = RunConfig {
        count: Some(n),
        ..store_config(port, "WRITE_ERRORS", 1)
    };
    let op = Operation::Store(Arc::new(Source::synthetic(spec)));
    dicom_loadgen::run::run(cfg, op)
}

/// The value of an unlabelled sample in the Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs a command; its trimmed stdout, or why it failed.
fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// An ext4 whose device can be made to fail: its image on lossyfs behind a loop device, its
/// journal on a healthy loop device beside.
struct Disk {
    lossy: Mounted,
    image: PathBuf,
    journal_loop: String,
    disk_loop: Option<String>,
    dir: PathBuf,
}

impl Disk {
    /// None (with a note) where no loop device can be set up.
    fn new(tmp: &Path) -> Option<Disk> {
        let mnt = tmp.join("lossy");
        let dir = tmp.join("ext4");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let lossy = Mounted::new(&mnt);
        let image = mnt.join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(128 << 20))
            .unwrap();
        let journal = tmp.join("journal.img");
        std::fs::File::create(&journal)
            .and_then(|f| f.set_len(16 << 20))
            .unwrap();
        sh(
            "mkfs.ext4",
            &["-q", "-O", "journal_dev", "-b", "4096", path(&journal)],
        )
        .unwrap();
        let journal_loop = match sh("losetup", &["-f", "--show", path(&journal)]) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("SKIP: no loop device: {e}");
                return None;
            }
        };
        let mut disk = Disk {
            lossy,
            image,
            journal_loop,
            disk_loop: None,
            dir,
        };
        let jdev = format!("device={}", disk.journal_loop);
        sh(
            "mkfs.ext4",
            &["-q", "-F", "-b", "4096", "-J", &jdev, path(&disk.image)],
        )
        .unwrap();
        disk.attach();
        Some(disk)
    }

    fn attach(&mut self) {
        let l = sh("losetup", &["-f", "--show", path(&self.image)]).unwrap();
        let opt = format!("journal_path={}", self.journal_loop);
        let mounted = sh("mount", &["-o", &opt, &l, path(&self.dir)]);
        self.disk_loop = Some(l);
        mounted.unwrap();
    }

    fn detach(&mut self) {
        let _ = sh("umount", &[path(&self.dir)]);
        if let Some(l) = self.disk_loop.take() {
            let _ = sh("losetup", &["-d", &l]);
        }
    }

    /// Mounted again on the device's own contents: no page of the old mounts is cached.
    fn remount(&mut self) {
        self.detach();
        self.lossy.remount();
        self.attach();
    }

    fn control(&self, cmd: &str) {
        self.lossy.fs.control(cmd).unwrap();
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.detach();
        let _ = sh("losetup", &["-d", &self.journal_loop]);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// What one run found, read back from the disk's own contents.
struct Outcome {
    sent: Vec<SentRecord>,
    /// SOP Instance UIDs the admin API shows, with the hash it shows.
    shown: Vec<String>,
    /// Index rows whose file (after a remount) does not hash to the row.
    damaged: Vec<String>,
    /// Index rows.
    rows: usize,
    lost_metric: f64,
    stderr: String,
}

/// One test at a time: each sets up its own devices and drops caches. None (with a note)
/// where there is no FUSE.
fn one_at_a_time() -> Option<MutexGuard<'static, ()>> {
    static ONE: Mutex<()> = Mutex::new(());
    let one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: /dev/fuse is absent: no FUSE here");
        return None;
    }
    Some(one)
}

/// The index as the device holds it (the daemon stopped; remounted, so no page of the old
/// mount is cached): its rows' SOP Instance UIDs, and those whose file does not hash to
/// the row.
fn read_back(disk: &mut Disk, data: &Path) -> (Vec<String>, Vec<String>) {
    disk.remount();
    let idx = dicom_gw::store::index::Index::open(&data.join("gateway.redb"))
        .unwrap_or_else(|e| panic!("cannot open the index: {e}"));
    let rows = idx.instances().unwrap();
    let damaged = rows
        .iter()
        .filter(|row| {
            !matches!(dataset_hash(&data.join(&row.path)),
                Ok((h, len)) if hex(&h) == row.dataset_blake3 && len == row.dataset_size)
        })
        .map(|row| row.sop_instance_uid.clone())
        .collect();
    (
        rows.into_iter().map(|r| r.sop_instance_uid).collect(),
        damaged,
    )
}

fn run(drop_cache: bool) -> Option<Outcome> {
    let _one = one_at_a_time()?;
    let tmp = tempfile::tempdir().unwrap();
    let mut disk = Disk::new(tmp.path())?;
    let data = disk.dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let config = tmp.path().join("gw.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let token = viewer_token(&data);
    let gw = Gw::start(&data, None, Some(&config));
    // Nothing else is dirty when the disk starts failing.
    syncfs(&std::fs::File::open(&data).unwrap()).expect("a healthy disk syncs");

    let sent = store(gw.port, 3, u64::from(drop_cache), "300k").sent;
    assert_eq!(sent.len(), 3, "acknowledged: {}", gw.stderr());

    // The disk fails; someone else's syncfs writes the staged files back and sees the error.
    // Writes of 64 KiB and more: the objects' data, not the filesystem's own 4 KiB metadata blocks
    // (a failed metadata write would abort ext4, another story).
    disk.control("fail-writes 65536");
    let other = syncfs(&std::fs::File::open(&data).unwrap());
    disk.control("heal");
    assert_eq!(
        other.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO)),
        "the failed write-back reaches the other syncfs"
    );
    assert!(disk.lossy.fs.counters().failed_writes > 0);
    if drop_cache {
        std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop the page cache (root)");
    }

    // A read of the index makes the checkpoint run (and its retry, 500 ms after a failure).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (shown, lost_metric) = loop {
        let shown: Vec<String> = sent
            .iter()
            .filter(|r| {
                let (status, body) =
                    gw.get(&format!("/api/v1/instances/{}", r.sop_instance), &token);
                status == 200 && body.contains(&r.blake3)
            })
            .map(|r| r.sop_instance.clone())
            .collect();
        let (_, metrics) = gw.get("/metrics", &token);
        let lost = metric(&metrics, "dicomgw_ingest_lost_objects_total").unwrap_or(0.0);
        let pending = metric(&metrics, "dicomgw_journal_pending_objects");
        if pending == Some(0.0) || Instant::now() > deadline {
            break (shown, lost);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = gw.stderr();
    gw.stop();

    // The disk's own contents, not the kernel's cache of them.
    let (rows, damaged) = read_back(&mut disk, &data);
    Some(Outcome {
        sent,
        shown,
        damaged,
        rows: rows.len(),
        lost_metric,
        stderr,
    })
}

/// The page cache still holds the bytes: the retry writes them to the disk, and every
/// object is indexed whole.
#[test]
fn a_failed_write_back_seen_elsewhere_fails_the_checkpoint_and_the_retry_writes_again() {
    let Some(o) = run(false) else { return };
    assert!(
        o.damaged.is_empty(),
        "indexed without their bytes on the disk: {:?}\n{}",
        o.damaged,
        o.stderr
    );
    assert!(
        o.stderr.contains("checkpoint failed"),
        "the checkpoint saw the write-back error; stderr:\n{}",
        o.stderr
    );
    assert_eq!(
        o.rows,
        o.sent.len(),
        "every acknowledged object indexed:\n{}",
        o.stderr
    );
    assert_eq!(o.shown.len(), o.sent.len(), "and shown by the API");
    assert_eq!(o.lost_metric, 0.0);
}

/// The page cache let the bytes go: the objects are reported lost, never indexed damaged.
#[test]
fn bytes_lost_to_a_failed_write_back_are_reported_never_indexed() {
    let Some(o) = run(true) else { return };
    assert!(
        o.damaged.is_empty(),
        "indexed without their bytes on the disk: {:?}\n{}",
        o.damaged,
        o.stderr
    );
    assert_eq!(o.rows, 0, "nothing indexed:\n{}", o.stderr);
    assert!(o.shown.is_empty());
    assert_eq!(
        o.lost_metric,
        o.sent.len() as f64,
        "each counted:\n{}",
        o.stderr
    );
    let lines = o
        .stderr
        .matches("acknowledged object lost to a failed disk write")
        .count();
    assert_eq!(lines, o.sent.len(), "an ERROR line each:\n{}", o.stderr);
}

/// Full durability, and the journal's own write fails: nothing more is acknowledged, and the
/// daemon stops with exit status 1 (a vital failure) so that its supervisor starts it again.
/// That start, on the healed disk, replays the journal: every object acknowledged before the
/// failure is indexed whole, none lost, and ingest resumes. (A daemon that kept running would
/// refuse every object until an operator restarted it.)
#[test]
fn a_failed_journal_write_stops_the_daemon_and_the_next_start_loses_nothing() {
    let Some(_one) = one_at_a_time() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut disk) = Disk::new(tmp.path()) else {
        return;
    };
    let data = disk.dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let config = tmp.path().join("gw.toml");
    // Objects up to 256 KiB through the journal, larger ones to their own files first; no
    // checkpoint until asked (the stop asks, and fails on the failing disk), so the objects
    // acknowledged before the failure are indexed by the next start's replay.
    std::fs::write(
        &config,
        "durability = \"full\"\n\
         [store]\n\
         inline_max_kib = 256\n\
         checkpoint_interval_ms = 600000\n\
         checkpoint_objects = 1000000\n",
    )
    .unwrap();
    let token = viewer_token(&data);
    let mut gw = Gw::start(&data, None, Some(&config));
    // 100 KiB objects through the journal (their files written back in writes the failing
    // disk refuses), 300 KiB ones synced to their own files before their record.
    let mix = "100k:2,300k:1";
    let before = store(gw.port, 6, 20, mix);
    assert_eq!(before.sent.len(), 6, "acknowledged: {}", gw.stderr());

    // The disk fails writes of 64 KiB and more: a journal group of a 100 KiB object, not
    // the filesystem's own 4 KiB metadata blocks (a failed metadata write aborts ext4, which
    // then needs an operator; here the disk comes back by itself).
    disk.control("fail-writes 65536");
    let during = store(gw.port, 3, 21, "100k");
    let stopped = gw.exited_within(Duration::from_secs(60));
    let stderr = gw.stderr();
    disk.control("heal");
    assert!(
        during.sent.is_empty(),
        "acknowledged while the disk failed its writes: {:?}\n{stderr}",
        during.sent
    );
    assert!(
        during.stats.errors > 0,
        "refused: {:?}",
        during.stats.statuses
    );
    assert_eq!(
        stopped.map(|s| s.code()),
        Some(Some(1)),
        "the daemon stops with status 1 on its own:\n{stderr}"
    );
    assert!(
        stderr.contains("ingest journal write failed"),
        "and says why:\n{stderr}"
    );

    // Its supervisor starts it again (systemd: Restart=on-failure).
    let gw = Gw::start(&data, None, Some(&config));
    assert!(
        gw.stderr().contains("journal replayed"),
        "the objects acknowledged before the failure come from the journal:\n{}",
        gw.stderr()
    );
    let after = store(gw.port, 3, 22, mix);
    assert_eq!(after.sent.len(), 3, "ingest resumes: {}", gw.stderr());
    let acked: Vec<&SentRecord> = before.sent.iter().chain(&after.sent).collect();
    for r in &acked {
        let (status, body) = gw.get(&format!("/api/v1/instances/{}", r.sop_instance), &token);
        assert!(
            status == 200 && body.contains(&r.blake3),
            "{} not shown after the restart: {status} {body}\n{}",
            r.sop_instance,
            gw.stderr()
        );
    }
    let stderr = gw.stderr();
    gw.stop();

    let (rows, damaged) = read_back(&mut disk, &data);
    assert!(
        damaged.is_empty(),
        "indexed without their bytes on the disk: {damaged:?}\n{stderr}"
    );
    for r in &acked {
        assert!(
            rows.contains(&r.sop_instance),
            "acknowledged, not on the device: {}\n{stderr}",
            r.sop_instance
        );
    }
    // Beside them at most the refused objects, whole (a refused record may replay).
    assert!(rows.len() <= acked.len() + 3, "{rows:?}");
}
