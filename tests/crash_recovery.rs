//! Crash recovery: SIGKILL the daemon while four storescu loads are in flight, restart it on
//! the same data directory and check the durability invariants of docs/design.md: every
//! acknowledged object is on disk, complete and indexed; no partial file has a final name;
//! tmp/ is cleaned; unacknowledged objects can simply be sent again.

mod util;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_gw::store::index::Index;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const CLIENTS: usize = 4;
/// Objects per client in the first attempt; doubled on each retry.
const FIRST_PER_CLIENT: usize = 150;
/// Attempts before giving up on killing the daemon mid-load.
const ATTEMPTS: usize = 3;
/// Longest wait for the loads to get going before the kill.
const KILL_WAIT: Duration = Duration::from_secs(120);

/// One generated object.
struct Obj {
    spec: ObjSpec,
    file: PathBuf,
}

/// What one crash attempt produced.
struct Crashed {
    tmp: tempfile::TempDir,
    data: PathBuf,
    objs: Vec<Obj>,
    /// Indices into `objs` of the objects that got a success response before the kill.
    acked: BTreeSet<usize>,
    /// Files under objects/ when the kill was sent.
    files_at_kill: usize,
}

fn open_index(data: &Path) -> Index {
    Index::open(&data.join("gateway.redb"))
        .unwrap_or_else(|e| panic!("cannot open index in {}: {e}", data.display()))
}

/// Generates the objects, starts the daemon and the loads, SIGKILLs the daemon once some
/// objects have landed and collects which objects were acknowledged.
fn load_and_kill(io: &str, per_client: usize) -> Crashed {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut objs = Vec::new();
    for c in 0..CLIENTS {
        let first = ObjSpec::new((c * 10_000) as u32);
        for i in 0..per_client {
            let spec = ObjSpec::new((c * 10_000 + i) as u32)
                .same_series_as(&first)
                .pixel_bytes(4096 + 256 * (i % 16) as u64);
            let file = src.join(format!("c{c}_{i}.dcm"));
            gen_part10(&file, &spec).unwrap();
            objs.push(Obj { spec, file });
        }
    }

    let mut gw = Daemon::start(BIN, &data, io, &[]);
    let port = gw.port;
    let loads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let files: Vec<PathBuf> = objs[c * per_client..(c + 1) * per_client]
                .iter()
                .map(|o| o.file.clone())
                .collect();
            std::thread::spawn(move || storescu(port, &files, &storescu_flags_for(Ts::ExplicitLE)))
        })
        .collect();

    // Kill once a tenth of the objects have their final name (or the loads are over).
    let objects_dir = data.join("objects");
    let threshold = (objs.len() / 10).max(4);
    let deadline = Instant::now() + KILL_WAIT;
    let files_at_kill = loop {
        let n = list_files(&objects_dir).len();
        if n >= threshold || loads.iter().all(|h| h.is_finished()) {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} objects stored within {KILL_WAIT:?}; daemon stderr:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let status = gw.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "daemon was not killed by SIGKILL: {status}"
    );

    let by_file: HashMap<&Path, usize> = objs
        .iter()
        .enumerate()
        .map(|(i, o)| (o.file.as_path(), i))
        .collect();
    let mut acked = BTreeSet::new();
    for h in loads {
        let r = h.join().expect("storescu thread panicked");
        assert!(!r.timed_out, "storescu timed out:\n{}", r.output);
        for f in &r.succeeded {
            let i = *by_file
                .get(f.as_path())
                .unwrap_or_else(|| panic!("storescu reported unknown file {}", f.display()));
            acked.insert(i);
        }
    }
    drop(gw);
    Crashed {
        tmp,
        data,
        objs,
        acked,
        files_at_kill,
    }
}

/// Checks the data directory of a stopped daemon after the crash; returns how many files
/// under objects/ have no index row (complete but never acknowledged).
fn check_after_crash(c: &Crashed) -> usize {
    let data = &c.data;
    let tmp_left = list_files(data.join("tmp"));
    assert!(
        tmp_left.is_empty(),
        "tmp/ not empty after restart: {tmp_left:?}"
    );

    let by_path: HashMap<PathBuf, usize> = c
        .objs
        .iter()
        .enumerate()
        .map(|(i, o)| (o.spec.stored_path(data), i))
        .collect();
    let idx = open_index(data);
    let rows = idx.instances().unwrap();
    assert_eq!(idx.instance_count().unwrap(), rows.len() as u64);

    // 1. Every acknowledged object: at its path, byte-identical, indexed with its hash.
    for &i in &c.acked {
        let o = &c.objs[i];
        let stored = o.spec.stored_path(data);
        assert!(
            stored.is_file(),
            "acknowledged object {} missing after crash: {}",
            o.spec.sop_instance_uid,
            stored.display()
        );
        assert!(
            same_dataset(&stored, &o.file),
            "acknowledged object {} differs from what was sent",
            stored.display()
        );
        assert_eq!(meta_ts(&stored), Ts::ExplicitLE.uid());
        let row = idx
            .instance(&o.spec.sop_instance_uid)
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "acknowledged object {} has no index row after crash",
                    o.spec.sop_instance_uid
                )
            });
        assert_eq!(row.dataset_blake3, dataset_hash(&o.file));
        assert_eq!(data.join(&row.path), stored);
    }

    // 2. Every index row points at a complete file that matches its hash.
    for r in &rows {
        let p = data.join(&r.path);
        assert!(
            by_path.contains_key(&p),
            "index row for an object never sent: {r:?}"
        );
        assert!(p.is_file(), "index row without file: {}", p.display());
        let info = parse_part10(&p).unwrap_or_else(|e| panic!("indexed file is broken: {e}"));
        assert_eq!(
            info.file_len - info.dataset_offset,
            r.dataset_size,
            "indexed file {} has the wrong dataset size (partial?)",
            p.display()
        );
        assert_eq!(info.file_len, r.file_size, "file size of {}", p.display());
        assert_eq!(
            dataset_hash(&p),
            r.dataset_blake3,
            "indexed file {} does not match its BLAKE3 (partial?)",
            p.display()
        );
    }

    // 3. No partial file under a final name, indexed or not (design.md: data is synced before
    //    the rename, so even an unindexed leftover is a complete copy).
    let indexed: BTreeSet<PathBuf> = rows.iter().map(|r| data.join(&r.path)).collect();
    let mut orphans = 0;
    for f in list_files(data.join("objects")) {
        let i = *by_path
            .get(&f)
            .unwrap_or_else(|| panic!("unexpected file under objects/: {}", f.display()));
        if !indexed.contains(&f) {
            orphans += 1;
        }
        assert!(
            parse_part10(&f).is_ok() && same_dataset(&f, &c.objs[i].file),
            "partial or corrupt file under objects/: {} (indexed: {})",
            f.display(),
            indexed.contains(&f)
        );
    }
    orphans
}

gwtest!(
    kill9_during_load_loses_no_acknowledged_object,
    |io: &str| {
        require_dcmtk();
        let mut per_client = FIRST_PER_CLIENT;
        let mut crashed = None;
        for attempt in 1..=ATTEMPTS {
            let c = load_and_kill(io, per_client);
            let total = c.objs.len();
            eprintln!(
                "{io} attempt {attempt}: {total} objects, {} files at kill, {} acknowledged",
                c.files_at_kill,
                c.acked.len()
            );
            if !c.acked.is_empty() && c.acked.len() < total {
                crashed = Some(c);
                break;
            }
            per_client *= 2;
        }
        let c = crashed.unwrap_or_else(|| {
            panic!("could not kill the daemon mid-load in {ATTEMPTS} attempts (see stderr)")
        });
        let total = c.objs.len();
        assert!(!c.acked.is_empty() && c.acked.len() < total);

        // Restart on the same data directory: must come up cleanly.
        let mut gw = Daemon::start(BIN, &c.data, io, &[]);
        let left = list_files(c.data.join("tmp"));
        assert!(left.is_empty(), "tmp/ not cleaned at start-up: {left:?}");
        let echo = echoscu(gw.port, &[]);
        assert!(
            echo.status.success(),
            "restarted daemon does not answer C-ECHO: {}\n{}",
            String::from_utf8_lossy(&echo.stdout),
            String::from_utf8_lossy(&echo.stderr)
        );
        gw.stop();
        assert!(
            !gw.stderr().contains("ERROR"),
            "errors logged by the restarted daemon:\n{}",
            gw.stderr()
        );
        drop(gw);
        let orphans = check_after_crash(&c);
        eprintln!("{io}: {orphans} complete unindexed files after the crash");

        // The senders retry what was not acknowledged: everything must now be stored once.
        let retry: Vec<&Path> = (0..total)
            .filter(|i| !c.acked.contains(i))
            .map(|i| c.objs[i].file.as_path())
            .collect();
        let mut gw = Daemon::start(BIN, &c.data, io, &[]);
        storescu(gw.port, &retry, &storescu_flags_for(Ts::ExplicitLE)).assert_all_ok(&retry);
        gw.stop();
        drop(gw);
        let idx = open_index(&c.data);
        assert_eq!(idx.instance_count().unwrap(), total as u64);
        for o in &c.objs {
            let stored = o.spec.stored_path(&c.data);
            assert!(
                stored.is_file() && same_dataset(&stored, &o.file),
                "{} missing or different after the retry",
                stored.display()
            );
            let row = idx.instance(&o.spec.sop_instance_uid).unwrap().unwrap();
            assert_eq!(row.dataset_blake3, dataset_hash(&o.file));
        }
        assert_eq!(list_files(c.data.join("objects")).len(), total);
        assert!(list_files(c.data.join("tmp")).is_empty());
        for s in 0..CLIENTS {
            let spec = &c.objs[s * (total / CLIENTS)].spec;
            let series = idx
                .series(&spec.study_instance_uid, &spec.series_instance_uid)
                .unwrap()
                .expect("series row");
            assert_eq!(
                series.num_instances,
                (total / CLIENTS) as u64,
                "client {s} series"
            );
        }
        drop(idx);
        drop(c.tmp);
    }
);

// SIGTERM as soon as the ready line is out (what a supervisor may do) must be a clean stop
// (exit 0), every time: the ready line promises the daemon is fully up.
gwtest!(sigterm_right_after_ready_exits_cleanly, |io: &str| {
    const CYCLES: usize = 20;
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..CYCLES {
        let mut gw = Daemon::start(BIN, tmp.path(), io, &[]);
        let status = gw.terminate();
        assert!(
            status.code() == Some(0),
            "cycle {} of {CYCLES}: SIGTERM right after the ready line gave {status}, not exit 0 \
             (stdout: {:?}); stderr:\n{}",
            i + 1,
            gw.stdout(),
            gw.stderr()
        );
    }
});

/// Cycles per backend of the kill -9 loop (both backends run: 2 × 25 ≥ 50 in the suite;
/// `scripts/kill9-loop.sh` runs more).
const KILL_CYCLES: usize = 25;

// kill -9 at a random moment of a sustained load, KILL_CYCLES times on one data directory,
// every object routed to a destination (so each has a forward job). After every restart
// (whose recovery time is reported) the daemon is stopped and the data directory checked:
// every object acknowledged in any cycle so far is indexed, byte-identical, with its job;
// every indexed object is one that was sent, complete.
gwtest!(kill9_at_random_moments_many_cycles, |io: &str| {
    require_dcmtk();
    let cycles: usize = std::env::var("KILL9_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KILL_CYCLES);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let config = tmp.path().join("gw.toml");
    std::fs::write(
        &config,
        "[[destinations]]\nname = \"archive\"\nae_title = \"ARCHIVE\"\nhost = \"127.0.0.1\"\nport = 9\n\n[[routes]]\ndestinations = [\"archive\"]\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut acked: Vec<Obj> = Vec::new();
    let mut sent: HashMap<String, String> = HashMap::new();
    let mut recovery_ms = Vec::new();
    let mut rng = fastrand::Rng::with_seed(0x6b696c6c39 ^ io.len() as u64);
    for cycle in 0..cycles {
        // Two clients, 40 new objects each, sizes from 2 to 40 KiB.
        let mut batches: Vec<Vec<Obj>> = Vec::new();
        for c in 0..2 {
            let first = ObjSpec::new((100_000 + cycle * 1000 + c * 100) as u32);
            let mut b = Vec::new();
            for i in 0..40 {
                let spec = ObjSpec::new((100_000 + cycle * 1000 + c * 100 + i) as u32)
                    .same_series_as(&first)
                    .pixel_bytes(2048 + 1024 * rng.u64(0..38));
                let file = src.join(format!("{cycle}_{c}_{i}.dcm"));
                gen_part10(&file, &spec).unwrap();
                sent.insert(spec.sop_instance_uid.clone(), dataset_hash(&file));
                b.push(Obj { spec, file });
            }
            batches.push(b);
        }
        let started = Instant::now();
        let gw = Daemon::start(BIN, &data, io, &args);
        recovery_ms.push(started.elapsed().as_millis() as u64);
        let port = gw.port;
        let loads: Vec<_> = batches
            .iter()
            .map(|b| {
                let files: Vec<PathBuf> = b.iter().map(|o| o.file.clone()).collect();
                std::thread::spawn(move || {
                    storescu(port, &files, &storescu_flags_for(Ts::ExplicitLE))
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.u64(20..600)));
        let mut gw = gw;
        gw.kill9();
        for (h, b) in loads.into_iter().zip(batches) {
            let r = h.join().expect("storescu thread panicked");
            assert!(!r.timed_out, "storescu timed out:\n{}", r.output);
            let ok: BTreeSet<&Path> = r.succeeded.iter().map(|p| p.as_path()).collect();
            acked.extend(b.into_iter().filter(|o| ok.contains(o.file.as_path())));
        }
        drop(gw);
        // Restart (recovery runs before the ready line), stop cleanly, check everything.
        let started = Instant::now();
        let mut gw = Daemon::start(BIN, &data, io, &args);
        recovery_ms.push(started.elapsed().as_millis() as u64);
        gw.stop();
        assert!(
            !gw.stderr().contains("ERROR"),
            "cycle {cycle}: errors after recovery:\n{}",
            gw.stderr()
        );
        drop(gw);
        let idx = open_index(&data);
        let queue = dicom_gw::queue::Queue::new(std::sync::Arc::new(idx), false);
        let jobs: BTreeSet<String> = queue
            .list(Some("archive"), None, 1_000_000)
            .unwrap()
            .into_iter()
            .map(|j| j.job.sop_instance_uid)
            .collect();
        let idx = queue.index();
        for o in &acked {
            let row = idx
                .instance(&o.spec.sop_instance_uid)
                .unwrap()
                .unwrap_or_else(|| {
                    panic!(
                        "cycle {cycle}: acknowledged {} is not indexed",
                        o.spec.sop_instance_uid
                    )
                });
            let stored = data.join(&row.path);
            assert!(
                same_dataset(&stored, &o.file),
                "cycle {cycle}: {} differs from what was sent",
                stored.display()
            );
            assert!(
                jobs.contains(&o.spec.sop_instance_uid),
                "cycle {cycle}: acknowledged {} has no forward job",
                o.spec.sop_instance_uid
            );
        }
        for r in idx.instances().unwrap() {
            let want = sent
                .get(&r.sop_instance_uid)
                .unwrap_or_else(|| panic!("cycle {cycle}: indexed object never sent: {r:?}"));
            assert_eq!(
                &r.dataset_blake3, want,
                "cycle {cycle}: {}",
                r.sop_instance_uid
            );
            assert_eq!(
                &dataset_hash(data.join(&r.path)),
                want,
                "cycle {cycle}: file of {}",
                r.sop_instance_uid
            );
        }
    }
    recovery_ms.sort_unstable();
    eprintln!(
        "{io}: {cycles} kill -9 cycles, {} objects acknowledged; start-up (recovery included) median {} ms, max {} ms",
        acked.len(),
        recovery_ms[recovery_ms.len() / 2],
        recovery_ms.last().unwrap()
    );
    assert!(!acked.is_empty(), "no cycle acknowledged anything");
});
