//! Power cuts under load, end to end: dicom-gw keeps its data directory on lossyfs, several
//! associations send objects, and at a random moment the power is cut (everything not flushed
//! is lost) and the daemon SIGKILLed at the same instant. The filesystem is remounted with what
//! was durable, the daemon restarted on it, and:
//! - it starts (ready line), and tmp/ is empty;
//! - every object acknowledged so far (this cycle and every earlier one) is stored byte for byte
//!   (the dataset after the meta group hashes to what was sent), has its index row with that
//!   hash, and the admin API shows it (`GET /api/v1/instances/{sop}`);
//! - every index row (every object the gateway shows) points at a complete file matching its
//!   hash; files under objects/ without a row are counted, never shown.
//!
//! Two models of the kernel:
//! - `strict`: what a FUSE server is told on this kernel. fsync, fdatasync and fsyncdir reach
//!   it; syncfs(2) does not (the kernel sends FUSE_SYNCFS to virtiofs only), so data flushed
//!   only by syncfs is lost at the cut.
//! - `syncfs`: as if syncfs were delivered: the daemon runs with an LD_PRELOAD shim (built here
//!   with `cc`) whose syncfs(fd) on lossyfs first writes `sync` to the control file.
//!
//! Needs /dev/fuse and root (the mount is a plain mount(2)), and the dicom-gw binary next to
//! this test's directory (`cargo build -p dicom-gw`, or `DICOM_GW_BIN`). Knobs:
//! `LOSSYFS_CYCLES` (default 3), `LOSSYFS_SEED`, `LOSSYFS_SETTLE` (make everything durable
//! once the daemon's first start is done: separates start-up durability from per-object).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_loadgen::dataset::dataset_hash;
use dicom_loadgen::run::{Operation, RunConfig};
use dicom_loadgen::source::Source;
use dicom_loadgen::verify::{verify, Layout, SentRecord};
mod common;
use common::{ct_spec, files_under, hex, store_config, viewer_token, Gw, Mounted};

const CLIENTS: usize = 4;

/// Builds the syncfs shim; None (with a note) without a C compiler.
fn build_shim(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("syncfs_shim.c");
    std::fs::write(&src, SHIM_C).unwrap();
    let so = dir.join("syncfs_shim.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output();
    match out {
        Ok(o) if o.status.success() => Some(so),
        Ok(o) => panic!(
            "cannot build the syncfs shim: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            eprintln!("SKIP: no C compiler (cc: {e}) for the syncfs shim");
            None
        }
    }
}

/// syncfs(fd) on the lossyfs mount whose control file is $LOSSYFS_CTL first tells lossyfs to
/// make everything durable (what FUSE_SYNCFS would do if the kernel sent it), then runs the
/// real syncfs.
const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
int syncfs(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    const char *ctl = getenv("LOSSYFS_CTL");
    struct stat a, b;
    if (ctl && fstat(fd, &a) == 0 && stat(ctl, &b) == 0 && a.st_dev == b.st_dev) {
        int c = open(ctl, O_WRONLY);
        if (c < 0) return -1;
        ssize_t n = write(c, "sync\n", 5);
        close(c);
        if (n != 5) return -1;
    }
    return real(fd);
}
"#;

/// One load: CLIENTS associations storing synthetic objects until the daemon goes away (or
/// 20 s). Returns the acknowledged objects.
fn load(port: u16, seed: u64) -> std::thread::JoinHandle<Vec<SentRecord>> {
    let root = format!("1.2.826.0.1.3680043.10.543.{}", seed % 1_000_000_000);
    let spec = ct_spec(&root, "2k,8k,32k,100k", 25, 2);
    let cfg = RunConfig {
        duration: Some(Duration::from_secs(20)),
        ..store_config(port, "LOADGEN", CLIENTS)
    };
    let op = Operation::Store(Arc::new(Source::synthetic(spec)));
    std::thread::spawn(move || dicom_loadgen::run::run(cfg, op).sent)
}

/// What the checks after one cut found.
#[derive(Debug, Default)]
struct Found {
    failures: Vec<String>,
    rows: usize,
    orphans: usize,
}

/// Restarts the daemon on `data` after a cut and checks every acknowledged object.
fn check(
    data: &Path,
    acked: &BTreeMap<String, SentRecord>,
    fresh: &std::collections::HashSet<String>,
    preload: Option<(&Path, &Path)>,
    config: Option<&Path>,
) -> Found {
    let mut f = Found::default();
    let token = viewer_token(data);
    let gw = Gw::start(data, preload, config);
    let tmp_left = files_under(&data.join("tmp"));
    if !tmp_left.is_empty() {
        f.failures
            .push(format!("tmp/ not empty after restart: {tmp_left:?}"));
    }
    let recs: Vec<SentRecord> = acked.values().cloned().collect();
    let rep = verify(&recs, data, Layout::Gw, Duration::ZERO);
    if !rep.ok() {
        let report = rep.report();
        let lines: Vec<&str> = report.lines().take(4).map(str::trim).collect();
        f.failures
            .push(format!("acknowledged objects lost: {}", lines.join("; ")));
    }
    // The API: every object acknowledged in this cycle, and every 20th earlier one (the index
    // rows of all of them are checked below).
    let mut api_missing = Vec::new();
    let shown = acked
        .values()
        .enumerate()
        .filter(|(i, r)| fresh.contains(&r.sop_instance) || i % 20 == 0)
        .map(|(_, r)| r);
    for r in shown {
        let (status, body) = gw.get(&format!("/api/v1/instances/{}", r.sop_instance), &token);
        if status != 200 || !body.contains(&r.blake3) {
            api_missing.push(format!("{} ({status})", r.sop_instance));
        }
    }
    if !api_missing.is_empty() {
        f.failures.push(format!(
            "{} acknowledged objects not shown by the admin API, e.g. {:?}",
            api_missing.len(),
            &api_missing[..api_missing.len().min(5)]
        ));
    }
    gw.stop();

    let idx = dicom_gw::store::index::Index::open(&data.join("gateway.redb"))
        .unwrap_or_else(|e| panic!("cannot open the index: {e}"));
    let rows = idx.instances().unwrap();
    f.rows = rows.len();
    let by_sop: HashMap<&str, _> = rows
        .iter()
        .map(|r| (r.sop_instance_uid.as_str(), r))
        .collect();
    let no_row: Vec<&str> = acked
        .keys()
        .filter(|s| !by_sop.contains_key(s.as_str()))
        .map(|s| s.as_str())
        .collect();
    if !no_row.is_empty() {
        f.failures.push(format!(
            "{} acknowledged objects without an index row, e.g. {:?}",
            no_row.len(),
            &no_row[..no_row.len().min(5)]
        ));
    }
    for r in acked.values() {
        if let Some(row) = by_sop.get(r.sop_instance.as_str()) {
            if row.dataset_blake3 != r.blake3 {
                f.failures
                    .push(format!("index row of {} has another hash", r.sop_instance));
            }
        }
    }
    let mut bad_rows = Vec::new();
    for row in &rows {
        let p = data.join(&row.path);
        match dataset_hash(&p) {
            Ok((h, len)) if hex(&h) == row.dataset_blake3 && len == row.dataset_size => {}
            Ok(_) => bad_rows.push(format!("{}: does not match its row", row.path)),
            Err(e) => bad_rows.push(format!("{}: {e}", row.path)),
        }
    }
    if !bad_rows.is_empty() {
        f.failures.push(format!(
            "{} of {} index rows (objects the gateway shows) without their complete file, \
             e.g. {:?}",
            bad_rows.len(),
            rows.len(),
            &bad_rows[..bad_rows.len().min(3)]
        ));
    }
    let indexed: std::collections::HashSet<PathBuf> =
        rows.iter().map(|r| data.join(&r.path)).collect();
    f.orphans = files_under(&data.join("objects"))
        .into_iter()
        .filter(|p| !indexed.contains(p))
        .count();
    f
}

/// Runs `cycles` load / cut / remount / check cycles; returns the failures per cycle.
fn cycles(strict: bool, cycles: usize) -> Option<Vec<String>> {
    // One at a time: each test loads the two cores on its own.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: /dev/fuse is absent: no FUSE here, the power-cut test cannot run");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shim = if strict {
        None
    } else {
        Some(build_shim(tmp.path())?)
    };
    let mnt_dir = tmp.path().join("mnt");
    std::fs::create_dir(&mnt_dir).unwrap();
    let mut mnt = Mounted::new(&mnt_dir);
    let ctl = mnt_dir.join(lossyfs::CTL_NAME);
    let preload = shim.as_deref().map(|s| (s, ctl.as_path()));
    // Strict: the daemon is told syncfs does nothing here and flushes file by file.
    let config = tmp.path().join("gw.toml");
    std::fs::write(&config, "[store]\nsync_method = \"fsync\"\n").unwrap();
    let config = strict.then_some(config.as_path());
    let data = mnt_dir.join("data");
    // The data directory itself exists durably, as an installed appliance's would.
    std::fs::create_dir(&data).unwrap();
    mnt.fs.sync_all();

    let seed = std::env::var("LOSSYFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mode = if strict { "strict" } else { "syncfs" };
    eprintln!("{mode}: seed {seed} (LOSSYFS_SEED)");
    let mut acked: BTreeMap<String, SentRecord> = BTreeMap::new();
    let mut failures = Vec::new();
    let settle = std::env::var_os("LOSSYFS_SETTLE").is_some();
    for cycle in 1..=cycles {
        let mut gw = Gw::start(&data, preload, config);
        if settle && cycle == 1 {
            // The daemon's first start is long past: its files and directories were written
            // back (isolates the per-object durability from the start-up's).
            mnt.fs.sync_all();
        }
        let h = load(gw.port, rng.u64(..));
        let wait = Duration::from_millis(rng.u64(300..2500));
        // Every other cut on average also tears the last unflushed write of each file.
        let tear = rng.bool().then(|| rng.u64(..));
        mnt.fs.state().model.set_tear(tear);
        std::thread::sleep(wait);
        mnt.fs.cut();
        gw.kill9();
        let sent = h.join().expect("load thread");
        let new = sent.len();
        let fresh: std::collections::HashSet<String> =
            sent.iter().map(|r| r.sop_instance.clone()).collect();
        for r in sent {
            acked.insert(r.sop_instance.clone(), r);
        }
        let counters = mnt.fs.counters();
        assert!(
            strict || counters.sync_all > 1,
            "the syncfs shim did not reach lossyfs: {counters:?}"
        );
        let stderr = gw.stderr();
        drop(gw);
        mnt.remount();
        let f = check(&data, &acked, &fresh, preload, config);
        eprintln!(
            "{mode} cycle {cycle}: cut after {wait:?} (tear {tear:?}), {new} acknowledged ({} in all), {} index \
             rows, {} unindexed files after restart; {counters:?}",
            acked.len(),
            f.rows,
            f.orphans
        );
        if !f.failures.is_empty() {
            let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join("\n");
            failures.push(format!(
                "cycle {cycle} (seed {seed}): {}\n  daemon stderr tail before the cut:\n{tail}",
                f.failures.join("\n  ")
            ));
            break;
        }
        if acked.is_empty() && cycle == cycles {
            failures.push("no object was acknowledged in any cycle".to_owned());
        }
    }
    drop(mnt);
    Some(failures)
}

fn cycle_count() -> usize {
    std::env::var("LOSSYFS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// The daemon as if the kernel delivered syncfs to the filesystem.
#[test]
fn acknowledged_objects_survive_power_cuts_with_syncfs() {
    if let Some(f) = cycles(false, cycle_count()) {
        assert!(f.is_empty(), "{}", f.join("\n"));
    }
}

/// The daemon on what FUSE really tells a server (only fsync, fdatasync and fsyncdir), with
/// `[store] sync_method = "fsync"`: checkpoints flush file by file and directory by directory.
#[test]
fn acknowledged_objects_survive_power_cuts_strict() {
    if let Some(f) = cycles(true, cycle_count()) {
        assert!(f.is_empty(), "{}", f.join("\n"));
    }
}
