//! The ingest pipeline end to end in one process: the journal on [`CrashStorage`], the index
//! on [`CrashBackend`] (both drop what was not flushed), object files on a real directory.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::future::join_all;

use super::*;
use crate::store::attrs::IndexAttrs;
use crate::store::buffers::BufferPool;
use crate::store::crashdb::CrashBackend;
use crate::store::index::IndexError;
use crate::store::journal::{CrashStorage, Tear};
use crate::store::sink::Body;

fn jcfg() -> JournalConfig {
    JournalConfig {
        segment_count: 4,
        segment_size: 256 * 1024,
        max_group_bytes: 64 * 1024,
        durability: Durability::Full,
    }
}

/// Checkpoints only when asked (settle), at shutdown, or when the ring fills.
fn cfg(policy: DuplicatePolicy) -> IngestConfig {
    let mut c = IngestConfig::new(Durability::Full, policy);
    c.checkpoint_interval = Duration::from_secs(3600);
    c.checkpoint_objects = usize::MAX;
    c.full_wait = Duration::from_secs(5);
    // Two lanes: the crash and fault tests then also cover groups written at once and
    // answered in journal order.
    c.groups_in_flight = 2;
    // Each pipeline its own: a failure must stop its daemon, not every other test's.
    c.health = Box::leak(Box::default());
    c
}

/// One object: SOP `1.2.3.<n>`, a dataset that depends on `version`, in study `study`.
#[derive(Debug, Clone, Copy)]
struct Spec {
    n: u32,
    version: u8,
    study: &'static str,
}

impl Spec {
    fn sop(&self) -> String {
        format!("1.2.3.{}", self.n)
    }

    fn dataset(&self) -> Vec<u8> {
        let mut d = format!("dataset of {} version {} ", self.n, self.version)
            .repeat(20 + self.n as usize)
            .into_bytes();
        if d.len() % 2 == 1 {
            d.push(b' ');
        }
        d
    }

    fn blake3(&self) -> String {
        blake3::hash(&self.dataset()).to_hex().to_string()
    }

    fn object(&self) -> ReceivedObject {
        let dataset = self.dataset();
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICMheader");
        let header_len = file.len() as u64;
        file.extend_from_slice(&dataset);
        let series = format!("{}.1", self.study);
        ReceivedObject {
            body: Body::Inline(Bytes::from(file)),
            file_size: header_len + dataset.len() as u64,
            dataset_size: dataset.len() as u64,
            dataset_blake3: self.blake3(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: self.sop(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            calling_ae_title: "MOD".into(),
            called_ae_title: "GW".into(),
            rel_path: DataDir::object_rel_path(self.study, &series, &self.sop()).unwrap(),
            attrs: IndexAttrs {
                patient_id: "P1".into(),
                study_instance_uid: self.study.into(),
                series_instance_uid: series,
                sop_instance_uid: self.sop(),
                modality: "CT".into(),
                ..Default::default()
            },
        }
    }
}

const fn s(n: u32, version: u8, study: &'static str) -> Spec {
    Spec { n, version, study }
}

/// The scripted workload: rounds of concurrent C-STOREs, `true` = settle (checkpoint) after.
/// Identical re-sends, replacements (one moving to another study) and checkpoints between.
fn workload() -> Vec<(Vec<Spec>, bool)> {
    vec![
        (vec![s(1, 1, "1.5"), s(2, 1, "1.5"), s(3, 1, "1.5")], true),
        (vec![s(4, 1, "1.5"), s(5, 1, "1.5"), s(1, 1, "1.5")], false),
        (vec![s(2, 2, "1.5"), s(6, 1, "1.5")], true),
        (vec![s(7, 1, "1.6"), s(3, 2, "1.9")], false),
        (vec![s(8, 1, "1.6"), s(9, 1, "1.6")], true),
        (vec![s(10, 1, "1.6"), s(4, 2, "1.5")], false),
    ]
}

struct Run {
    /// SOP → BLAKE3 of the newest version answered with success.
    acked: BTreeMap<String, String>,
    /// Every version sent, in order: SOP → BLAKE3s.
    sent: BTreeMap<String, Vec<String>>,
    /// Whether any object was refused and a later one then acknowledged.
    success_after_failure: bool,
    /// Whether any object was refused.
    refused: bool,
    readiness: Result<(), String>,
}

impl Run {
    /// Nothing sent yet.
    fn new() -> Run {
        Run {
            acked: BTreeMap::new(),
            sent: BTreeMap::new(),
            success_after_failure: false,
            refused: false,
            readiness: Ok(()),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn start(
    storage: CrashStorage,
    db: redb::Database,
    data: &DataDir,
    policy: DuplicatePolicy,
) -> (Ingest, Arc<Index>) {
    let index = Arc::new(Index::from_database(db).unwrap());
    let routing = Arc::new(ArcSwap::from_pointee(Routing::new(Vec::new())));
    let ingest = Ingest::start(
        storage,
        jcfg(),
        index.clone(),
        data.clone(),
        cfg(policy),
        routing,
    )
    .unwrap();
    (ingest, index)
}

/// A fresh data directory, the journal on a new [`CrashStorage`], the index on a new
/// [`CrashBackend`] (with its handle, for the flush boundaries), ingest started on them.
fn crash_rig() -> (
    tempfile::TempDir,
    DataDir,
    CrashStorage,
    crate::store::crashdb::CrashHandle,
    Ingest,
    Arc<Index>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = DataDir::prepare(dir.path()).unwrap();
    let storage = CrashStorage::new();
    let (backend, handle) = CrashBackend::from_image(Vec::new());
    let db = redb::Database::builder()
        .create_with_backend(backend)
        .unwrap();
    let (ingest, index) = start(storage.clone(), db, &data, DuplicatePolicy::Replace);
    (dir, data, storage, handle, ingest, index)
}

/// The index's disk after a crash: what its last successful sync made durable.
fn last_sync(handle: &crate::store::crashdb::CrashHandle) -> Vec<u8> {
    handle.boundaries().pop().unwrap().image_after_crash(0, 0)
}

/// The next start, on `journal` and the index disk `image` as a crash left them.
fn restart(journal: CrashStorage, image: Vec<u8>, data: &DataDir) -> (Ingest, Arc<Index>) {
    let (backend, _) = CrashBackend::from_image(image);
    let db = redb::Database::builder()
        .create_with_backend(backend)
        .unwrap();
    start(journal, db, data, DuplicatePolicy::Replace)
}

fn run_workload(ingest: &Ingest, rt: &tokio::runtime::Runtime) -> Run {
    let mut run = Run::new();
    let mut failed = false;
    for (round, settle) in workload() {
        let snap = ingest.pipeline.snapshot();
        let futs: Vec<_> = round.iter().map(|o| snap.submit(o.object())).collect();
        let results = rt.block_on(join_all(futs));
        for (o, r) in round.iter().zip(results) {
            let versions = run.sent.entry(o.sop()).or_default();
            if !versions.contains(&o.blake3()) {
                versions.push(o.blake3());
            }
            match r {
                Ok(Accepted::Stored | Accepted::Replaced | Accepted::IdenticalDuplicate) => {
                    run.success_after_failure |= failed;
                    run.acked.insert(o.sop(), o.blake3());
                }
                Ok(Accepted::KeptExisting) => run.success_after_failure |= failed,
                Err(_) => failed = true,
            }
        }
        if settle {
            rt.block_on(ingest.settle.settle(Duration::from_secs(10)));
        }
    }
    run.readiness = ingest.settle.progress().readiness();
    run.refused = failed;
    run
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// After recovery: every acknowledged object is indexed in its newest acknowledged version,
/// with a complete file; nothing that was never sent is indexed. With `torn` the group being
/// written at the cut may have reached the disk whole (its flush never returned): its objects
/// were received completely, not acknowledged, and may then replay — so a version sent after
/// the newest acknowledged one is also accepted there, never an older one.
fn check_recovered(index: &Index, data: &DataDir, run: &Run, what: &str, torn: bool) {
    for (sop, want) in &run.acked {
        let rec = index
            .instance(sop)
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: acknowledged {sop} is not indexed"));
        let order = &run.sent[sop];
        let pos = |h: &String| order.iter().position(|x| x == h);
        if torn {
            assert!(
                pos(&rec.dataset_blake3) >= pos(want),
                "{what}: {sop} went back to an older version"
            );
        } else {
            assert_eq!(
                &rec.dataset_blake3, want,
                "{what}: {sop} is not its newest acknowledged version"
            );
        }
        let bytes = std::fs::read(data.root().join(&rec.path))
            .unwrap_or_else(|e| panic!("{what}: file of {sop}: {e}"));
        assert_eq!(bytes.len() as u64, rec.file_size, "{what}: {sop}");
        let ds = &bytes[(rec.file_size - rec.dataset_size) as usize..];
        assert_eq!(
            blake3::hash(ds).to_hex().to_string(),
            rec.dataset_blake3,
            "{what}: {sop} file bytes"
        );
    }
    for rec in index.instances().unwrap() {
        let sent = run.sent.get(&rec.sop_instance_uid);
        assert!(
            sent.is_some_and(|v| v.contains(&rec.dataset_blake3)),
            "{what}: {} indexed in a version never sent",
            rec.sop_instance_uid
        );
    }
    // The study counts follow the instances (a replacement moved 1.2.3.3 to study 1.9).
    let mut per_study: BTreeMap<String, u64> = BTreeMap::new();
    for rec in index.instances().unwrap() {
        *per_study.entry(rec.study_instance_uid).or_default() += 1;
    }
    for (study, n) in per_study {
        assert_eq!(
            index.study(&study).unwrap().unwrap().num_instances,
            n,
            "{what}: study {study}"
        );
    }
}

/// A power cut at every flush of the journal, combined with the index as it was at every one
/// of its flush boundaries (durable image, with none, some — the last one torn — or all of
/// the writes issued after it): recovery indexes every acknowledged object, in the version
/// acknowledged last, with its file, and nothing else. (The workload fits in the ring, so
/// any index image can meet any journal image.)
#[test]
fn power_loss_at_every_flush_boundary_loses_no_acknowledged_object() {
    let rt = runtime();
    // A clean run counts the journal's flushes.
    let flushes = {
        let (_dir, data, storage, _h, ingest, index) = crash_rig();
        let run = run_workload(&ingest, &rt);
        ingest.join();
        assert!(
            !run.success_after_failure && run.acked.len() == 10,
            "{:?}",
            run.acked
        );
        check_recovered(&index, &data, &run, "no crash", false);
        storage.flushes()
    };
    assert!(flushes >= 6, "{flushes} journal flushes");
    let mut recoveries = 0;
    for cut in 1..=flushes + 1 {
        let (dir, _data, storage, handle, ingest, index) = crash_rig();
        // Counted from now: recovery of the empty journal flushed nothing.
        storage.cut_power_at_flush(cut);
        let run = run_workload(&ingest, &rt);
        ingest.join();
        drop(index);
        assert!(
            !run.success_after_failure,
            "cut {cut}: a success after a failed flush"
        );
        // (Groups form differently from run to run: a late cut may never come.)
        if run.refused {
            assert!(
                run.readiness.is_err(),
                "cut {cut}: /readyz must say the journal failed"
            );
        }
        let journal_images = [
            (storage.crash(Tear::None), false),
            (storage.crash(Tear::Bytes(4096 + 100)), true),
        ];
        for b in handle.boundaries() {
            let n = b.after.len();
            for (keep, torn) in [(0, 0), (n / 2, 97), (n, 0)] {
                for (j, torn_journal) in &journal_images {
                    let what =
                        format!("cut at journal flush {cut}, index boundary keep {keep}/{n}");
                    let rdir = tempfile::tempdir().unwrap();
                    copy_tree(dir.path(), rdir.path());
                    let _ = std::fs::remove_file(rdir.path().join("gateway.redb"));
                    let (rdata, _) = DataDir::prepare(rdir.path()).unwrap();
                    let (backend, _) = CrashBackend::from_image(b.image_after_crash(keep, torn));
                    let Ok(db) = redb::Database::builder().create_with_backend(backend) else {
                        // A torn first commit: no database yet, so nothing was ever indexed
                        // (and no checkpoint: the journal replays from its start).
                        continue;
                    };
                    let (ingest, index) =
                        start(j.crash(Tear::None), db, &rdata, DuplicatePolicy::Replace);
                    ingest.join();
                    check_recovered(&index, &rdata, &run, &what, *torn_journal);
                    recoveries += 1;
                }
            }
        }
    }
    eprintln!("{flushes} journal flushes in the workload, {recoveries} crash images recovered and checked");
    assert!(recoveries > 50, "{recoveries} recoveries checked");
}

/// A flush that fails (EIO, the disk keeps working) is never followed by a success: its
/// group and every later object are refused and `/readyz` says why; after a restart the
/// acknowledged objects are all there (the refused group may replay: it was received whole).
#[test]
fn a_failed_flush_is_never_followed_by_a_success() {
    let rt = runtime();
    for k in 1..=6 {
        let (_dir, data, storage, handle, ingest, index) = crash_rig();
        storage.fail_flush(k);
        let run = run_workload(&ingest, &rt);
        assert!(
            !run.success_after_failure,
            "fail at flush {k}: success after the failure"
        );
        let why = run.readiness.clone().unwrap_err();
        assert!(why.contains("journal"), "{why}");
        // The daemon stops, and its next start replays the journal (as below).
        let vital = ingest.health.failed();
        assert!(
            vital
                .as_deref()
                .is_some_and(|f| f.starts_with("ingest journal: write failed")),
            "fail at flush {k}: the failure is recorded as vital: {vital:?}"
        );
        ingest.join();
        drop(index);
        let (ingest, index) = restart(storage.crash(Tear::None), last_sync(&handle), &data);
        assert_eq!(
            ingest.health.failed(),
            None,
            "fail at flush {k}: the replay"
        );
        ingest.join();
        // The failed group stays readable (page cache) and may replay, as if torn whole.
        check_recovered(&index, &data, &run, &format!("fail at flush {k}"), true);
    }
}

/// An index sync that fails (EIO) latches redb: every later operation fails until the
/// database is opened again, so no checkpoint can succeed in this process. The failure is
/// vital (the daemon stops and its supervisor starts it again), and the next start's replay
/// indexes every acknowledged object from the journal.
#[test]
fn a_failed_index_sync_is_vital_and_the_next_start_loses_nothing() {
    let rt = runtime();
    let (_dir, data, storage, handle, ingest, index) = crash_rig();
    let mut run = Run::new();
    let mut store_all = |ingest: &Ingest, ns: std::ops::Range<u32>| {
        for n in ns {
            let o = Spec {
                n,
                version: 1,
                study: "1.7",
            };
            run.sent.insert(o.sop(), vec![o.blake3()]);
            assert!(store(ingest, &rt, o).is_ok(), "{} acknowledged", o.sop());
            run.acked.insert(o.sop(), o.blake3());
        }
    };
    store_all(&ingest, 1..4);
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    assert_eq!(ingest.health.failed(), None, "a healthy checkpoint");
    handle.fail_sync_after(0);
    store_all(&ingest, 4..8);
    let settled = rt.block_on(ingest.settle.settle(Duration::from_secs(2)));
    assert!(!settled, "no checkpoint succeeds after the failed sync");
    ingest.health.assert_fails_within("index", Duration::ZERO);
    let readiness = ingest.settle.progress().readiness();
    assert!(
        readiness.as_ref().is_err_and(|w| w.contains("checkpoint")),
        "{readiness:?}"
    );
    ingest.join();
    drop(index);

    // The next start, on what the index's disk holds: the last successful sync.
    let (ingest, index) = restart(storage.crash(Tear::None), last_sync(&handle), &data);
    assert!(ingest.recovered.records >= 4, "{:?}", ingest.recovered);
    assert_eq!(ingest.health.failed(), None, "the replay");
    ingest.join();
    check_recovered(&index, &data, &run, "after a failed index sync", false);
}

/// Another writer of the index (an API call, the retention sweep, the audit outbox) meets
/// the I/O error that latches it while ingest is idle: no checkpoint would ever notice, so
/// the idle materializer looks, and the failure is vital (the restart reopens the index).
#[test]
fn an_index_latched_by_another_writer_is_vital_while_ingest_is_idle() {
    let rt = runtime();
    let (_dir, _data, _storage, handle, ingest, index) = crash_rig();
    assert!(store(&ingest, &rt, s(1, 1, "1.9")).is_ok());
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    assert_eq!(index.latched().map(|e| e.to_string()), None, "healthy");
    // Idle for longer than the probe's period: nothing is recorded.
    std::thread::sleep(checkpoint::LATCH_PROBE * 2);
    assert_eq!(ingest.health.failed(), None, "no failure while healthy");

    handle.fail_sync_after(0);
    let tx = index.database().begin_write().unwrap();
    {
        const OTHER: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("other");
        tx.open_table(OTHER).unwrap().insert("x", 1).unwrap();
    }
    let failed = tx.commit().expect_err("the sync fails");
    assert!(
        IndexError::from(failed).needs_reopen(),
        "the database is latched"
    );
    // The idle materializer finds the latch.
    ingest
        .health
        .assert_fails_within("index", Duration::from_secs(10));
    ingest.join();
}

/// The filesystem is full when the journal starts a new lap (its epoch is stored first, in a
/// new state file): that object is refused A700 "out of resources", the journal is not
/// poisoned and the daemon does not stop; the objects after it are acknowledged, the lap
/// begins once there is room, and a crash after it loses nothing acknowledged.
#[test]
fn no_room_for_a_new_laps_state_refuses_a700_and_ingest_goes_on() {
    let rt = runtime();
    let (_dir, data, storage, handle, ingest, index) = crash_rig();
    storage.state_out_of_space(1);
    let mut run = Run::new();
    let mut refused = Vec::new();
    // One group per object: the 1 MiB ring laps after about 256 (checkpoints free it).
    for n in 1..=400 {
        let o = s(n, 1, "1.8");
        run.sent.insert(o.sop(), vec![o.blake3()]);
        match store(&ingest, &rt, o) {
            Ok(_) => {
                run.acked.insert(o.sop(), o.blake3());
            }
            Err(e) => refused.push((n, e.status())),
        }
    }
    assert_eq!(
        refused.len(),
        1,
        "one object met the full disk: {refused:?}"
    );
    assert_eq!(refused[0].1, 0xA700, "out of resources");
    assert_eq!(ingest.health.failed(), None, "no vital failure");
    assert_eq!(ingest.settle.progress().readiness(), Ok(()));
    let journal = storage.crash(Tear::None);
    let image = last_sync(&handle);
    ingest.join();
    drop(index);
    let (ingest, index) = restart(journal, image, &data);
    ingest.join();
    check_recovered(&index, &data, &run, "after a full disk at a new lap", false);
}

fn file_rig(
    policy: DuplicatePolicy,
) -> (tempfile::TempDir, DataDir, CrashStorage, Ingest, Arc<Index>) {
    let mut c = cfg(policy);
    c.retire_unrouted = true;
    rig_with(c)
}

/// A pipeline with configuration `c` over crash storage and a real data directory.
fn rig_with(c: IngestConfig) -> (tempfile::TempDir, DataDir, CrashStorage, Ingest, Arc<Index>) {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = DataDir::prepare(dir.path()).unwrap();
    let storage = CrashStorage::new();
    let index = Arc::new(Index::open(&data.index_path()).unwrap());
    let routing = Arc::new(ArcSwap::from_pointee(Routing::new(Vec::new())));
    let ingest = Ingest::start(
        storage.clone(),
        jcfg(),
        index.clone(),
        data.clone(),
        c,
        routing,
    )
    .unwrap();
    (dir, data, storage, ingest, index)
}

fn store(ingest: &Ingest, rt: &tokio::runtime::Runtime, o: Spec) -> Result<Accepted, StoreError> {
    rt.block_on(ingest.pipeline.snapshot().submit(o.object()))
}

/// Audit H2 and M4: a replacement never touches the acknowledged original before its own
/// rows are committed — a failing checkpoint leaves the original indexed and whole, and is
/// retried without a restart once the cause is gone; a replacement that moves the instance
/// to another study gets a new file there, the old one goes, and both studies count right.
#[test]
fn a_replacement_keeps_the_original_until_it_is_committed_and_moves_studies_cleanly() {
    let rt = runtime();
    let (_dir, data, _storage, ingest, index) = file_rig(DuplicatePolicy::Replace);
    let v1 = s(1, 1, "1.5");
    assert_eq!(store(&ingest, &rt, v1).unwrap(), Accepted::Stored);
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    let old = index.instance(&v1.sop()).unwrap().unwrap();
    let old_bytes = std::fs::read(data.root().join(&old.path)).unwrap();
    // The new study's directory cannot be created: the checkpoint fails.
    let blocker = data.objects().join("1.9");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let v2 = s(1, 2, "1.9");
    assert_eq!(store(&ingest, &rt, v2).unwrap(), Accepted::Replaced);
    assert!(!rt.block_on(ingest.settle.settle(Duration::from_secs(2))));
    let why = ingest.settle.progress().readiness().unwrap_err();
    assert!(why.contains("checkpoint"), "{why}");
    assert_eq!(index.instance(&v1.sop()).unwrap().unwrap(), old);
    assert_eq!(
        std::fs::read(data.root().join(&old.path)).unwrap(),
        old_bytes
    );
    // A re-send of v2 meanwhile is decided against the overlay: identical, not a second copy.
    assert_eq!(
        store(&ingest, &rt, v2).unwrap(),
        Accepted::IdenticalDuplicate
    );
    std::fs::remove_file(&blocker).unwrap();
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    assert_eq!(ingest.settle.progress().readiness(), Ok(()));
    let new = index.instance(&v1.sop()).unwrap().unwrap();
    assert_eq!(new.dataset_blake3, v2.blake3());
    assert!(new.path.starts_with("objects/1.9/"), "{}", new.path);
    assert!(
        !data.root().join(&old.path).exists(),
        "the replaced file goes"
    );
    assert!(
        index.study("1.5").unwrap().is_none(),
        "the old study has no instance left"
    );
    assert_eq!(index.study("1.9").unwrap().unwrap().num_instances, 1);
    // Replaced again in the same place: a new, versioned name; the indexed file is never
    // overwritten in place (a reader holding it open reads one whole version, audit H3).
    let v3 = s(1, 3, "1.9");
    let held = std::fs::File::open(data.root().join(&new.path)).unwrap();
    assert_eq!(store(&ingest, &rt, v3).unwrap(), Accepted::Replaced);
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    let newest = index.instance(&v1.sop()).unwrap().unwrap();
    assert_ne!(newest.path, new.path);
    assert_eq!(newest.dataset_blake3, v3.blake3());
    let mut was = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut was).unwrap();
    assert_eq!(
        blake3::hash(&was[(new.file_size - new.dataset_size) as usize..])
            .to_hex()
            .to_string(),
        v2.blake3()
    );
    ingest.join();
}

/// Audit H1: gateway retention retires an object while an identical re-send of it is
/// acknowledged and waiting for its checkpoint; the checkpoint restores it (file, row) instead
/// of trusting the row the re-send was compared with.
#[test]
fn retention_cannot_lose_an_object_acknowledged_meanwhile() {
    let rt = runtime();
    let (_dir, data, _storage, ingest, index) = file_rig(DuplicatePolicy::Keep);
    let x = s(7, 1, "1.5");
    assert_eq!(store(&ingest, &rt, x).unwrap(), Accepted::Stored);
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    // The re-send is compared with the indexed row and acknowledged...
    assert_eq!(
        store(&ingest, &rt, x).unwrap(),
        Accepted::IdenticalDuplicate
    );
    // ...then retention retires the stored copy (unrouted: retirable at once)...
    let swept =
        crate::queue::retention::sweep(&index, &data, timestamp_us() + 1, Duration::ZERO).unwrap();
    assert_eq!(swept, 1);
    assert!(index.instance(&x.sop()).unwrap().is_none());
    // ...and the checkpoint puts back what was acknowledged.
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    let rec = index
        .instance(&x.sop())
        .unwrap()
        .expect("the acknowledged re-send is indexed");
    let bytes = std::fs::read(data.root().join(&rec.path)).unwrap();
    assert_eq!(bytes.len() as u64, rec.file_size);
    ingest.join();
}

/// Groups are cut by their encoded size, meta sections included (the attribute list can be
/// tens of KiB): many objects at once with large ones all get in, in several groups, and
/// the journal keeps working.
#[test]
fn groups_are_cut_by_size_with_large_meta_sections() {
    let rt = runtime();
    let (_dir, _data, storage, _h, ingest, index) = crash_rig();
    let snap = ingest.pipeline.snapshot();
    let objs: Vec<ReceivedObject> = (0..24)
        .map(|n| {
            let mut o = s(100 + n, 1, "1.7").object();
            o.attrs.attributes = vec![n as u8; 12 * 1024];
            o
        })
        .collect();
    let results = rt.block_on(join_all(objs.into_iter().map(|o| snap.submit(o))));
    assert!(
        results.iter().all(|r| matches!(r, Ok(Accepted::Stored))),
        "{results:?}"
    );
    // 24 × (12 KiB meta + ~2 KiB object) cannot fit one 64 KiB group.
    assert!(storage.flushes() >= 5, "{} flushes", storage.flushes());
    assert_eq!(ingest.settle.progress().readiness(), Ok(()));
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    assert_eq!(index.instance_count().unwrap(), 24);
    drop(snap);
    ingest.join();
}

/// Issue 12 item 7: an object received in memory is journaled and written from one buffer,
/// which the checkpoint hands back to the pool the storage service's writers take from (so
/// the next object reuses it instead of faulting in fresh pages); a buffer still shared
/// elsewhere is left alone.
#[test]
fn the_checkpoint_returns_object_buffers_to_the_pool() {
    let rt = runtime();
    let pool: &'static BufferPool = Box::leak(Box::default());
    let mut c = cfg(DuplicatePolicy::Keep);
    c.buffers = pool;
    c.trim_buffers_after = Duration::from_secs(3600);
    let (_dir, _data, _storage, ingest, index) = rig_with(c);
    let submit = |spec: Spec, keep: bool| {
        let mut o = spec.object();
        let Body::Inline(b) = &o.body else {
            unreachable!()
        };
        let mut v = pool.take(64 * 1024);
        v.extend_from_slice(b);
        let (addr, b) = (v.as_ptr() as usize, Bytes::from(v));
        let kept = keep.then(|| b.slice(0..1));
        o.body = Body::Inline(b);
        let r = rt.block_on(ingest.pipeline.snapshot().submit(o));
        assert_eq!(r.unwrap(), Accepted::Stored);
        (addr, kept)
    };
    let (first, _) = submit(s(1, 1, "1.5"), false);
    let (second, held) = submit(s(2, 1, "1.5"), true);
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    assert!(index.instance(&s(1, 1, "1.5").sop()).unwrap().is_some());
    // Held until the end, so no address can be handed out twice.
    let idle: Vec<Vec<u8>> = (0..pool.idle()).map(|_| pool.take(64 * 1024)).collect();
    let idle: Vec<usize> = idle.iter().map(|v| v.as_ptr() as usize).collect();
    assert_eq!(idle, vec![first], "only the unshared buffer came back");
    assert_ne!(first, second);
    drop(held);
    ingest.join();
}

/// ...and once ingest has been quiet for `trim_buffers_after`, the pool lets them go.
#[test]
fn a_quiet_pipeline_frees_the_pooled_buffers() {
    let pool: &'static BufferPool = Box::leak(Box::default());
    let mut c = cfg(DuplicatePolicy::Keep);
    c.buffers = pool;
    c.trim_buffers_after = Duration::ZERO;
    let (_dir, _data, _storage, ingest, _index) = rig_with(c);
    // (Taken at once: the trim may come any moment from now.)
    pool.give(Vec::with_capacity(4096));
    assert_eq!(pool.idle(), 1);
    // The materializer looks at least once a second while nothing is pending.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pool.idle() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool was never trimmed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ingest.join();
}

/// The checkpoint writes each file at its final name (no temporary file and rename): what a
/// crash or a failed checkpoint left there, not indexed, is overwritten whole, never kept or
/// appended to.
#[test]
fn a_partial_file_left_at_the_final_name_is_overwritten_by_the_checkpoint() {
    let rt = runtime();
    let (_dir, data, _storage, ingest, index) = file_rig(DuplicatePolicy::Keep);
    let x = s(11, 1, "1.5");
    let o = x.object();
    let Body::Inline(want) = &o.body else {
        unreachable!()
    };
    let want = want.to_vec();
    let dest = data.root().join(&o.rel_path);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    // Longer than the object: a write that did not truncate would leave its tail.
    std::fs::write(&dest, vec![0xAB; want.len() + 4096]).unwrap();
    assert_eq!(store(&ingest, &rt, x).unwrap(), Accepted::Stored);
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    let rec = index.instance(&x.sop()).unwrap().expect("indexed");
    assert_eq!(data.root().join(&rec.path), dest);
    assert_eq!(std::fs::read(&dest).unwrap(), want);
    ingest.join();
}

/// The checkpoint writes each touched study's Query/Retrieve keys once, after all its
/// objects (not once per object): afterwards they are exactly what a per-object sync gives,
/// for new studies, a study that grew, and the study a replacement left.
#[test]
fn a_checkpoint_leaves_every_touched_studys_query_keys_in_step() {
    use redb::{ReadableDatabase, ReadableTable};
    let rt = runtime();
    let (_dir, _data, _storage, ingest, index) = file_rig(DuplicatePolicy::Replace);
    for spec in [
        s(1, 1, "1.5"),
        s(2, 1, "1.5"),
        s(3, 1, "1.6"),
        s(4, 1, "1.7"),
    ] {
        store(&ingest, &rt, spec).unwrap();
    }
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    // One more object in 1.5, and object 4 replaced into study 1.5 (study 1.7 empties).
    store(&ingest, &rt, s(5, 1, "1.5")).unwrap();
    assert_eq!(
        store(&ingest, &rt, s(4, 2, "1.5")).unwrap(),
        Accepted::Replaced
    );
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    let keys_of = |study: &str| -> Option<Vec<u8>> {
        let r = index.database().begin_read().unwrap();
        let t = r.open_table(crate::db::QR_STUDY_KEYS_OF).unwrap();
        t.get(study).unwrap().map(|g| g.value().to_vec())
    };
    let all_keys = || -> Vec<(u8, String, String)> {
        let r = index.database().begin_read().unwrap();
        let t = r.open_table(crate::db::QR_STUDY_KEYS).unwrap();
        t.iter()
            .unwrap()
            .map(|e| {
                let k = e.unwrap().0;
                let (kind, value, study) = k.value();
                (kind, value.to_owned(), study.to_owned())
            })
            .collect()
    };
    let before: Vec<_> = ["1.5", "1.6", "1.7"].iter().map(|s| keys_of(s)).collect();
    let rows_before = all_keys();
    assert!(
        before[0].is_some() && before[1].is_some(),
        "studies with objects have keys"
    );
    assert!(before[2].is_none(), "the emptied study has none");
    assert!(rows_before
        .iter()
        .any(|(_, v, st)| v == "P1" && st == "1.5"));
    // A per-study sync now changes nothing.
    let tx = index.database().begin_write().unwrap();
    for study in ["1.5", "1.6", "1.7"] {
        crate::store::query::sync_study_keys(&tx, study).unwrap();
    }
    tx.commit().unwrap();
    let after: Vec<_> = ["1.5", "1.6", "1.7"].iter().map(|s| keys_of(s)).collect();
    assert_eq!(before, after);
    assert_eq!(rows_before, all_keys());
    ingest.join();
}

/// Two groups in flight: the first group's write is slow and fails, the second's lands
/// first. The second is still refused (answers go out in journal order, and nothing after a
/// failed write is acknowledged), so is everything after it, and `/readyz` says why.
#[test]
fn a_later_group_written_first_is_refused_when_an_earlier_one_fails() {
    let rt = runtime();
    let (_dir, _data, storage, ingest, _index) = rig_with(cfg(DuplicatePolicy::Keep));
    storage.slow_write(1, Duration::from_millis(400));
    storage.fail_write(1);
    let snap = ingest.pipeline.snapshot();
    let (a, b) = (s(1, 1, "1.5"), s(2, 1, "1.5"));
    let results = rt.block_on(async {
        let first = snap.submit(a.object());
        let second = async {
            // Submitted once the first group is taken and writing: it becomes group 2.
            tokio::time::sleep(Duration::from_millis(100)).await;
            snap.submit(b.object()).await
        };
        tokio::join!(first, second)
    });
    let writes = storage.writes();
    assert_eq!(writes, 2, "both groups were written");
    assert!(results.0.is_err(), "{:?}", results.0);
    assert!(
        results.1.is_err(),
        "group 2 reached the disk first but group 1 failed: {:?}",
        results.1
    );
    assert!(store(&ingest, &rt, s(3, 1, "1.5")).is_err());
    let why = ingest.settle.progress().readiness().unwrap_err();
    assert!(why.contains("journal"), "{why}");
    drop(snap);
    ingest.join();
}

/// The process-wide `dicomgw_journal_waits_total` and `…_wait_seconds_total` for
/// `reason="max_pending_objects"`.
fn backlog_waits() -> (f64, f64) {
    let out = crate::metrics::render(&crate::metrics::Snapshot::default());
    let value = |name: &str| {
        crate::metrics::tests::value(&out, &format!("{name}{{reason=\"max_pending_objects\"}}"))
    };
    (
        value("dicomgw_journal_waits_total"),
        value("dicomgw_journal_wait_seconds_total"),
    )
}

/// Rule 3: every acknowledged object holds its bytes and index rows in memory until its
/// checkpoint, so their number is bounded before the memory is spent. Past
/// `max_pending_objects` a new object waits for the checkpoint, as for a full ring; when
/// none comes within `full_wait` it is refused out of resources (A700 at the DICOM edge)
/// with a comment, unacknowledged, and `/readyz` says why; once the checkpoint runs, the
/// next one is taken. Both waits are counted in `dicomgw_journal_waits_total`.
#[test]
fn past_max_pending_objects_new_objects_wait_for_the_checkpoint() {
    let rt = runtime();
    let mut c = cfg(DuplicatePolicy::Keep);
    c.max_pending_objects = 3;
    c.full_wait = Duration::from_millis(300);
    let (_dir, data, _storage, ingest, index) = rig_with(c);
    // The checkpoint cannot run while this is held.
    let held = data.objects_lock();
    for n in 1..=3 {
        assert_eq!(
            store(&ingest, &rt, s(n, 1, "1.5")).unwrap(),
            Accepted::Stored
        );
    }
    assert_eq!(ingest.settle.progress().pending(), 3);
    let before = backlog_waits();
    let e = store(&ingest, &rt, s(4, 1, "1.5")).unwrap_err();
    assert!(
        matches!(&e, StoreError::DiskFull(m) if m.contains("max_pending_objects")),
        "{e:?}"
    );
    // The wait is counted, with its length (the metrics are process-wide: at least).
    let refused = backlog_waits();
    assert!(refused.0 > before.0, "{before:?} {refused:?}");
    assert!(refused.1 - before.1 >= 0.3, "{before:?} {refused:?}");
    let why = ingest.settle.progress().readiness().unwrap_err();
    assert!(why.contains("3 objects wait for the checkpoint"), "{why}");
    assert_eq!(
        ingest.settle.progress().pending(),
        3,
        "the refused one is not pending"
    );
    drop(held);
    // At the bound still: this one waits for the checkpoint it asks for, then is taken.
    assert_eq!(
        store(&ingest, &rt, s(5, 1, "1.5")).unwrap(),
        Accepted::Stored
    );
    assert_eq!(ingest.settle.progress().readiness(), Ok(()));
    assert!(
        backlog_waits().0 > refused.0,
        "the wait that ended in success counts too"
    );
    assert!(rt.block_on(ingest.settle.settle(Duration::from_secs(10))));
    for n in [1, 2, 3, 5] {
        assert!(
            index.instance(&s(n, 1, "1.5").sop()).unwrap().is_some(),
            "{n}"
        );
    }
    assert!(index.instance(&s(4, 1, "1.5").sop()).unwrap().is_none());
    ingest.join();
}

/// `o` received as a large object: its file under tmp/, begun now.
fn staged(data: &DataDir, o: Spec) -> ReceivedObject {
    let mut obj = o.object();
    let Body::Inline(b) = &obj.body else {
        unreachable!("Spec::object is inline")
    };
    let p = data.tmp().join(format!("{}-{}.part", o.n, o.version));
    std::fs::write(&p, b).unwrap();
    obj.body = Body::File(p);
    obj
}

/// A large object whose file was begun before a failed sync of the data directory is
/// refused, not acknowledged, even when its own sync succeeds: the failure may have been a
/// write-back of its file, which the kernel reports once per descriptor and no later sync
/// reports again. One begun after the failure is acknowledged; so is a re-send.
#[test]
fn a_large_object_begun_before_a_failed_sync_is_refused() {
    let rt = runtime();
    let c = cfg(DuplicatePolicy::Reject);
    let failing = c.failing_syncs.clone();
    let (_dir, data, _storage, ingest, index) = rig_with(c);
    let submit = |o: ReceivedObject| rt.block_on(ingest.pipeline.snapshot().submit(o));
    let (early, x, late) = (s(1, 1, "1.9"), s(2, 1, "1.9"), s(3, 1, "1.9"));
    let early_obj = staged(&data, early);
    // Timestamps are coarse (a few ms): the order must be plain.
    std::thread::sleep(Duration::from_millis(30));
    failing.store(1, std::sync::atomic::Ordering::SeqCst);
    let r = submit(staged(&data, x));
    assert!(
        r.as_ref().is_err_and(|e| e.to_string().contains("syncfs")),
        "{r:?}"
    );
    std::thread::sleep(Duration::from_millis(30));
    let late_obj = staged(&data, late);
    let r = submit(early_obj);
    assert!(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("send it again")),
        "begun before the failure: {r:?}"
    );
    assert!(submit(late_obj).is_ok(), "begun after the failure");
    assert!(submit(staged(&data, early)).is_ok(), "a re-send");
    let left: Vec<_> = std::fs::read_dir(data.tmp()).unwrap().flatten().collect();
    assert!(left.is_empty(), "refused files removed: {left:?}");
    ingest.join();
    let indexed: Vec<String> = index
        .instances()
        .unwrap()
        .into_iter()
        .map(|r| r.sop_instance_uid)
        .collect();
    assert_eq!(indexed.len(), 2, "{indexed:?}");
    assert!(indexed.contains(&early.sop()) && indexed.contains(&late.sop()));
}

/// Stores `inline` and then `large` (staged), cuts the power before any checkpoint (the
/// journal and the index as flushed), lets the shutdown's checkpoint place the files on this
/// test's real disk, lets `damage` change what it placed (the cut's disk would not have it
/// whole), starts again and lets the replay run: the recovered records and the index.
fn replay_after_damage(
    inline: &[Spec],
    large: &[Spec],
    damage: impl FnOnce(&DataDir),
) -> (tempfile::TempDir, DataDir, u64, Arc<Index>) {
    let rt = runtime();
    let (dir, data, storage, handle, ingest, index) = crash_rig();
    for o in inline {
        store(&ingest, &rt, *o).unwrap();
    }
    for o in large {
        rt.block_on(ingest.pipeline.snapshot().submit(staged(&data, *o)))
            .unwrap();
    }
    let journal = storage.crash(Tear::None);
    let image = last_sync(&handle);
    ingest.join();
    drop(index);
    damage(&data);
    let (ingest, index) = restart(journal, image, &data);
    let records = ingest.recovered.records;
    ingest.join();
    (dir, data, records, index)
}

/// Where the checkpoint puts `o` (study `o.study`, its series `.1`).
fn placed_at(data: &DataDir, o: Spec) -> std::path::PathBuf {
    let series = format!("{}.1", o.study);
    data.root()
        .join(DataDir::object_rel_path(o.study, &series, &o.sop()).unwrap())
}

/// A replayed large object whose file is gone (its journal record outlived it: a power cut
/// in relaxed durability, where large objects are not synced before their record) is
/// reported lost, and the start-up goes on with the rest; it used to stop the start-up.
#[test]
fn a_replayed_large_object_whose_file_is_gone_is_reported_lost() {
    let lost = || {
        let out = crate::metrics::render(&crate::metrics::Snapshot::default());
        crate::metrics::tests::value(&out, "dicomgw_ingest_lost_objects_total")
    };
    let before = lost();
    let (small, big) = (s(1, 1, "1.8"), s(2, 1, "1.8"));
    let (_dir, _data, records, index) = replay_after_damage(&[small], &[big], |data| {
        std::fs::remove_file(placed_at(data, big)).expect("the shutdown placed the large object")
    });
    assert_eq!(records, 2, "both records replayed");
    assert!(index.instance(&small.sop()).unwrap().is_some());
    assert!(
        index.instance(&big.sop()).unwrap().is_none(),
        "never indexed without its file"
    );
    assert!(lost() >= before + 1.0, "counted");
}

/// A replayed large object whose file has the right size but not the bytes received (a
/// write-back the last run lost, or a power cut that left zeros) is reported lost, never
/// indexed damaged; an intact one beside it is indexed.
#[test]
fn a_replayed_large_object_whose_bytes_differ_is_reported_lost() {
    let (whole, damaged) = (s(3, 1, "1.7"), s(4, 1, "1.7"));
    let (_dir, data, records, index) = replay_after_damage(&[], &[whole, damaged], |data| {
        let p = placed_at(data, damaged);
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::write(&p, vec![0u8; len as usize]).unwrap();
    });
    assert_eq!(records, 2, "both records replayed");
    let rec = index
        .instance(&whole.sop())
        .unwrap()
        .expect("the intact one is indexed");
    assert_eq!(rec.dataset_blake3, whole.blake3());
    let bytes = std::fs::read(data.root().join(&rec.path)).unwrap();
    assert_eq!(
        blake3::hash(&bytes[bytes.len() - whole.dataset().len()..])
            .to_hex()
            .as_str(),
        whole.blake3()
    );
    assert!(
        index.instance(&damaged.sop()).unwrap().is_none(),
        "never indexed damaged"
    );
    assert!(
        !placed_at(&data, damaged).exists(),
        "its damaged file removed"
    );
}
