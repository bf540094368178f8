//! Forwarding (issue 4) acceptance tests: objects received by C-STORE are routed at ingest,
//! queued durably and forwarded to DCMTK `storescp` destinations — verbatim, in their original
//! transfer syntax, over reused associations — with retries while a destination is down,
//! at-least-once delivery across `kill -9`, dead letters for rejections, the `dicom-gw queue`
//! command line (stats, list, retry, replay, pause, resume), gateway-mode retention and the
//! disk high-water mark. Forwarding does not depend on the ingest backend: the daemon runs
//! with `--io epoll`. Every test has its own directories, ports, AE titles and UIDs.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use util::*;

/// Fast retries, so a destination that comes back is used within about a second.
const FAST_RETRY: &str = "retry_initial_seconds = 0.5\nretry_max_seconds = 1\n";
/// A private storage SOP class (under the tests' UID root).
const PRIVATE_SOP_CLASS: &str = "1.2.826.0.1.3680043.10.999.77.1";

/// One generated object and the file sent for it.
struct Obj {
    spec: ObjSpec,
    file: PathBuf,
    ts: Ts,
}

/// Generates one Explicit VR LE Part-10 file per spec under `dir` (created).
fn gen_objs(dir: &Path, specs: impl IntoIterator<Item = ObjSpec>) -> Vec<Obj> {
    std::fs::create_dir_all(dir).unwrap();
    specs
        .into_iter()
        .map(|spec| {
            let file = dir.join(format!("{}.dcm", spec.sop_instance_uid));
            gen_part10(&file, &spec).unwrap();
            Obj {
                spec,
                file,
                ts: Ts::ExplicitLE,
            }
        })
        .collect()
}

/// Generates `spec` and converts it to `ts` (dcmconv / dcmcjpeg).
fn gen_in_ts(dir: &Path, spec: ObjSpec, ts: Ts) -> Obj {
    std::fs::create_dir_all(dir).unwrap();
    let raw = dir.join(format!("{}.raw.dcm", spec.sop_instance_uid));
    gen_part10(&raw, &spec).unwrap();
    let file = dir.join(format!("{}.{ts:?}.dcm", spec.sop_instance_uid));
    convert_ts(&raw, &file, ts);
    std::fs::remove_file(&raw).unwrap();
    Obj { spec, file, ts }
}

/// The files of `objs`.
fn files_of<'a>(objs: impl IntoIterator<Item = &'a Obj>) -> Vec<PathBuf> {
    objs.into_iter().map(|o| o.file.clone()).collect()
}

/// The SOP Instance UIDs of `objs`.
fn uids_of<'a>(objs: impl IntoIterator<Item = &'a Obj>) -> BTreeSet<String> {
    objs.into_iter()
        .map(|o| o.spec.sop_instance_uid.clone())
        .collect()
}

/// Sends `objs` (all of one transfer syntax) to the daemon in one storescu association,
/// with calling AE title `aet`; every store must succeed.
fn send(gw: &Daemon, objs: &[&Obj], aet: &str) {
    assert!(!objs.is_empty());
    let ts = objs[0].ts;
    assert!(
        objs.iter().all(|o| o.ts == ts),
        "one transfer syntax per storescu run"
    );
    let files = files_of(objs.iter().copied());
    let mut flags = storescu_flags_for(ts);
    flags.extend_from_slice(&["-aet", aet]);
    storescu(gw.port, &files, &flags).assert_all_ok(&files);
}

/// Sends `objs` (Explicit VR LE) over `k` concurrent storescu associations (the daemon's
/// group commit makes this much faster than one association); every store must succeed.
fn send_parallel(gw: &Daemon, objs: &[Obj], aet: &str, k: usize) {
    assert!(objs.iter().all(|o| o.ts == Ts::ExplicitLE));
    let chunk = objs.len().div_ceil(k);
    let port = gw.port;
    let runs: Vec<_> = objs
        .chunks(chunk)
        .map(|c| {
            let files = files_of(c);
            let aet = aet.to_string();
            std::thread::spawn(move || {
                let mut flags = storescu_flags_for(Ts::ExplicitLE);
                flags.extend_from_slice(&["-aet", &aet]);
                storescu(port, &files, &flags).assert_all_ok(&files);
            })
        })
        .collect();
    for r in runs {
        r.join().expect("storescu run failed");
    }
}

/// [`send`] for a slice of objects.
fn send_all(gw: &Daemon, objs: &[Obj], aet: &str) {
    let refs: Vec<&Obj> = objs.iter().collect();
    send(gw, &refs, aet);
}

/// Checks that `scp` received each of `objs` exactly `copies` times, with the dataset bytes
/// sent to the daemon and the original transfer syntax and SOP class in its file meta.
fn assert_received(scp: &DestScp, objs: &[&Obj], copies: usize) {
    let got = scp.by_uid();
    for o in objs {
        let uid = &o.spec.sop_instance_uid;
        let files = got.get(uid).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            files.len(),
            copies,
            "object {uid} ({:?}) received {} times by the destination on port {}, expected \
             {copies}; storescp log:\n{}",
            o.ts,
            files.len(),
            scp.port,
            scp.log()
        );
        for f in files {
            assert!(
                same_dataset(f, &o.file),
                "{uid}: dataset forwarded to port {} ({}) differs from what was sent to the \
                 gateway ({})",
                scp.port,
                f.display(),
                o.file.display()
            );
            assert_eq!(
                meta_ts(f),
                o.ts.uid(),
                "{uid}: forwarded in another transfer syntax than received ({})",
                f.display()
            );
            assert_eq!(
                meta_str(f, tag(0x0002, 0x0002)).as_deref(),
                Some(o.spec.sop_class_uid.as_str()),
                "{uid}: forwarded with another SOP class"
            );
        }
    }
}

/// Asserts the destination received exactly the objects `objs` (by SOP Instance UID), once.
fn assert_received_exactly(scp: &DestScp, objs: &[&Obj]) {
    let want: BTreeSet<String> = objs
        .iter()
        .map(|o| o.spec.sop_instance_uid.clone())
        .collect();
    let got: BTreeSet<String> = scp.by_uid().into_keys().collect();
    assert_eq!(
        got,
        want,
        "destination on port {} received other objects than routed to it (extra: {:?}, \
         missing: {:?})",
        scp.port,
        got.difference(&want).collect::<Vec<_>>(),
        want.difference(&got).collect::<Vec<_>>()
    );
    assert_received(scp, objs, 1);
}

/// Waits until every association storescp received was released by the peer (A-RELEASE).
fn wait_all_released(scp: &DestScp, timeout: Duration) {
    wait_for(
        &format!("idle associations to port {} released", scp.port),
        timeout,
        || {
            let (a, r) = (scp.associations(), scp.releases());
            if a > 0 && a == r {
                Ok(())
            } else {
                Err(format!(
                    "{a} associations, {r} released; log:\n{}",
                    scp.log()
                ))
            }
        },
    )
}

/// Waits until every association storescp received has ended (released or aborted).
fn wait_all_closed(scp: &DestScp, timeout: Duration) {
    wait_for(
        &format!("associations to port {} closed", scp.port),
        timeout,
        || {
            let log = scp.log();
            let (a, c) = (
                scp.associations(),
                scp.releases() + log.matches("Association Aborted").count(),
            );
            if a > 0 && a == c {
                Ok(())
            } else {
                Err(format!("{a} associations, {c} ended; log:\n{log}"))
            }
        },
    )
}

/// SOP Instance UIDs of the files storescp wrote in `dir`, skipping files that do not parse
/// (a storescp killed while receiving may leave one); returns (uid → copies, skipped).
fn uids_in_dir(dir: &Path) -> (BTreeMap<String, usize>, usize) {
    let mut m = BTreeMap::new();
    let mut skipped = 0;
    for f in list_files(dir) {
        if parse_part10(&f).is_err() {
            skipped += 1;
            continue;
        }
        match meta_str(&f, tag(0x0002, 0x0003)) {
            Some(u) => *m.entry(u).or_insert(0) += 1,
            None => skipped += 1,
        }
    }
    (m, skipped)
}

// ---------------------------------------------------------------------------------------------

/// Objects in every transfer syntax are forwarded with their SOP class in the transfer syntax
/// they were received in, dataset bytes verbatim; associations are reused across objects.
#[test]
fn forwards_verbatim_in_original_transfer_syntax_over_reused_associations() {
    require_dcmtk();
    const PER_TS: u32 = 6;
    const BULK: u32 = 30;
    const MAX_ASSOC: usize = 2;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let scp = DestScp::start_free(&tmp.path().join("archive-ts"), &[]);
    let toml = dest_block(
        "archive-ts",
        scp.port,
        &format!("max_associations = {MAX_ASSOC}\nidle_release_seconds = 30\n{FAST_RETRY}"),
    ) + &route_block("everything", "", &["archive-ts"]);
    let gw = start_gw(tmp.path(), &data, &toml, &[]);

    // Phase 1: six objects in each of the five transfer syntaxes, one storescu run each.
    let src = tmp.path().join("src");
    let mut objs = Vec::new();
    for (k, ts) in Ts::ALL.into_iter().enumerate() {
        let batch: Vec<Obj> = (0..PER_TS)
            .map(|i| {
                let spec =
                    ObjSpec::new(10_000 + k as u32 * 100 + i).pixel_bytes(2048 + 1024 * i as u64);
                gen_in_ts(&src, spec, ts)
            })
            .collect();
        send_all(&gw, &batch, "TS_SENDER");
        objs.extend(batch);
    }
    let n1 = objs.len() as u64;
    wait_settled(&data, "archive-ts", n1, 0, Duration::from_secs(60));
    let refs: Vec<&Obj> = objs.iter().collect();
    assert_received_exactly(&scp, &refs);
    let assoc1 = scp.associations();
    eprintln!("phase 1: {n1} objects in 5 transfer syntaxes over {assoc1} associations");
    assert!(
        assoc1 >= 1 && assoc1 <= MAX_ASSOC * Ts::ALL.len() + 2,
        "{n1} objects in {} transfer syntaxes took {assoc1} associations (expected at most \
         max_associations per syntax + 2: associations must be reused); log:\n{}",
        Ts::ALL.len(),
        scp.log()
    );

    // Phase 2: thirty more objects in one transfer syntax reuse the open associations (or
    // open at most max_associations + 1 new ones).
    let bulk = gen_objs(
        &src,
        (0..BULK).map(|i| ObjSpec::new(11_000 + i).pixel_bytes(4096)),
    );
    send_all(&gw, &bulk, "TS_SENDER");
    wait_settled(
        &data,
        "archive-ts",
        n1 + BULK as u64,
        0,
        Duration::from_secs(60),
    );
    let assoc2 = scp.associations() - assoc1;
    eprintln!("phase 2: {BULK} objects over {assoc2} new associations");
    assert!(
        assoc2 <= MAX_ASSOC + 1,
        "{BULK} objects of one transfer syntax took {assoc2} new associations (max_associations \
         = {MAX_ASSOC}): associations are not reused across objects; log:\n{}",
        scp.log()
    );
    let conc = scp.max_concurrent();
    eprintln!("at most {conc} associations at a time");
    assert!(
        conc <= MAX_ASSOC + 1,
        "{conc} associations open at the same time, max_associations = {MAX_ASSOC}; log:\n{}",
        scp.log()
    );
    objs.extend(bulk);
    let refs: Vec<&Obj> = objs.iter().collect();
    assert_received_exactly(&scp, &refs);
    assert_eq!(
        scp.store_requests(),
        objs.len(),
        "C-STORE requests at the destination"
    );
    let s = dest_stats(&data, "archive-ts");
    assert_eq!((s.dead, s.retry, s.paused), (0, 0, false), "{s:?}");
}

/// 500 objects arrive while the destination is down; when it comes up every one is delivered
/// exactly once.
#[test]
fn destination_down_then_up_delivers_500_exactly_once() {
    require_dcmtk();
    const N: u32 = 500;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port(); // nothing listens here until the destination is started
    let toml = dest_block(
        "archive-500",
        port,
        &format!("max_associations = 2\nmax_attempts = 100000\n{FAST_RETRY}"),
    ) + &route_block("everything", "", &["archive-500"]);
    let gw = start_gw(tmp.path(), &data, &toml, &[]);
    let objs = gen_objs(
        &tmp.path().join("src"),
        (0..N).map(|i| ObjSpec::new(20_000 + i).pixel_bytes(2048 + 16 * (i % 64) as u64)),
    );
    let t0 = std::time::Instant::now();
    send_parallel(&gw, &objs, "MODALITY_500", 8);
    eprintln!("ingest of {N} objects: {:?}", t0.elapsed());

    let before = dest_stats(&data, "archive-500");
    eprintln!("destination down, after ingest: {before:?}");
    assert_eq!(
        (before.done, before.dead, before.outstanding()),
        (0, 0, N as u64),
        "with the destination down every job must wait (pending/retry/in flight): {before:?}"
    );
    assert!(!is_listening(port), "port {port} got taken by someone else");
    // Refused connections are retried: jobs go to the retry state with the reason.
    let retrying = wait_for(
        "jobs in the retry state while the destination is down",
        Duration::from_secs(20),
        || {
            let r = queue_list(&data, "archive-500", Some("retry"));
            if r.is_empty() {
                Err(format!("{:?}", dest_stats(&data, "archive-500")))
            } else {
                Ok(r)
            }
        },
    );
    for v in &retrying {
        assert_eq!(json_str(v, "state"), "retry", "{v}");
        assert!(json_u64(v, "attempts") >= 1, "{v}");
        assert!(
            !json_str(v, "last_error").is_empty(),
            "retry without a reason: {v}"
        );
        assert!(
            json_u64(v, "due_at_us") >= json_u64(v, "created_at_us"),
            "{v}"
        );
    }
    eprintln!("while down, e.g.: {}", retrying[0]);
    assert_eq!(dest_stats(&data, "archive-500").dead, 0);

    let scp = DestScp::start(&tmp.path().join("archive-500"), port, &[]);
    let t1 = std::time::Instant::now();
    let s = wait_settled(&data, "archive-500", N as u64, 0, Duration::from_secs(180));
    eprintln!(
        "delivery of {N} objects once the destination is up: {:?}",
        t1.elapsed()
    );
    assert!(!s.paused);
    let refs: Vec<&Obj> = objs.iter().collect();
    assert_received_exactly(&scp, &refs);
    assert_eq!(
        scp.files().len(),
        N as usize,
        "files at the destination (duplicates?)"
    );
    assert_eq!(
        scp.store_requests(),
        N as usize,
        "C-STORE requests at the destination (duplicates?)"
    );
    let conc = scp.max_concurrent();
    eprintln!(
        "{} associations, at most {conc} at a time",
        scp.associations()
    );
    assert!(
        conc <= 3,
        "{conc} associations open at the same time, max_associations = 2; log:\n{}",
        scp.log()
    );
    drop(gw);
}

/// kill -9 of the daemon while forwarding; after a restart every object reaches the
/// destination: what was delivered before the crash is not sent again, duplicates only for
/// what was in flight.
#[test]
fn kill9_while_forwarding_then_restart_delivers_everything() {
    require_dcmtk();
    const N1: u32 = 70;
    const N: u32 = 300;
    const MAX_ASSOC: usize = 2;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let toml = dest_block(
        "archive-kill",
        port,
        &format!(
            "max_associations = {MAX_ASSOC}\nmax_attempts = 100000\nidle_release_seconds = 1\n\
             {FAST_RETRY}"
        ),
    ) + &route_block("everything", "", &["archive-kill"]);
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);
    let objs = gen_objs(
        &tmp.path().join("src"),
        (0..N).map(|i| ObjSpec::new(30_000 + i).pixel_bytes(2048 + 16 * (i % 64) as u64)),
    );
    let (early, late) = objs.split_at(N1 as usize);

    // Phase 1: the first objects are delivered normally.
    let fast_dir = tmp.path().join("archive-1");
    let mut fast = DestScp::start(&fast_dir, port, &[]);
    send_all(&gw, early, "MODALITY_KILL");
    wait_settled(&data, "archive-kill", N1 as u64, 0, Duration::from_secs(60));
    wait_all_closed(&fast, Duration::from_secs(20));
    fast.stop();

    // Phase 2: a slow destination (each store answered after 1 s); the daemon is killed
    // while it forwards the rest.
    let slow_dir = tmp.path().join("archive-2-slow");
    let mut slow = DestScp::start(&slow_dir, port, &["--sleep-after", "1"]);
    send_parallel(&gw, late, "MODALITY_KILL", 4);
    slow.wait_files(2, Duration::from_secs(60));
    // Jobs not listed as waiting are delivered; delivery is final, so they are still
    // delivered at the kill and must not be sent again after the restart.
    let mut waiting = BTreeSet::new();
    for state in ["pending", "retry", "in-flight"] {
        let out = gw_queue(
            &data,
            "list",
            &[
                "--destination",
                "archive-kill",
                "--state",
                state,
                "--limit",
                "100000",
            ],
        )
        .ok();
        waiting.extend(
            out.json_lines()
                .iter()
                .map(|v| json_str(v, "sop_instance_uid")),
        );
    }
    let at_kill = dest_stats(&data, "archive-kill");
    let status = gw.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "daemon was not killed by SIGKILL: {status}"
    );
    let delivered_before: BTreeSet<String> = uids_of(&objs).difference(&waiting).cloned().collect();
    eprintln!(
        "killed with {} files at the slow destination, {} jobs known delivered; stats just \
         before: {at_kill:?}",
        slow.files().len(),
        delivered_before.len()
    );
    assert!(
        delivered_before.is_superset(&uids_of(early)) && at_kill.done < N as u64,
        "expected the kill between deliveries: {} delivered, {at_kill:?}",
        delivered_before.len()
    );
    slow.stop();
    drop(gw);

    // Destination back at full speed, daemon restarted on the same data dir and config.
    let after_dir = tmp.path().join("archive-3");
    let after = DestScp::start(&after_dir, port, &[]);
    let gw = start_gw(tmp.path(), &data, &toml, &[]);
    wait_settled(&data, "archive-kill", N as u64, 0, Duration::from_secs(120));

    let early_refs: Vec<&Obj> = early.iter().collect();
    assert_received_exactly(&fast, &early_refs);
    let (during, skipped) = uids_in_dir(&slow_dir);
    let second = after.by_uid();
    let mut copies: BTreeMap<String, usize> = during.clone();
    for u in uids_of(early) {
        *copies.entry(u).or_insert(0) += 1;
    }
    for (u, f) in &second {
        *copies.entry(u.clone()).or_insert(0) += f.len();
    }
    let want = uids_of(&objs);
    let missing: Vec<&String> = want.iter().filter(|u| !copies.contains_key(*u)).collect();
    assert!(
        missing.is_empty(),
        "{} objects never reached the destination after kill -9 and restart: {missing:?}",
        missing.len()
    );
    let unknown: Vec<&String> = copies.keys().filter(|u| !want.contains(*u)).collect();
    assert!(unknown.is_empty(), "unknown objects delivered: {unknown:?}");
    let total: usize = copies.values().sum();
    let dups = total - want.len();
    eprintln!(
        "{total} deliveries for {N} objects ({dups} duplicates; {N1} before the slow phase, {} \
         during it, {} after the restart, {skipped} partial files of the killed destination)",
        during.values().sum::<usize>(),
        second.values().map(Vec::len).sum::<usize>()
    );
    let resent: Vec<&String> = second
        .keys()
        .filter(|u| delivered_before.contains(*u))
        .collect();
    assert!(
        resent.is_empty(),
        "jobs delivered before the crash were sent again after the restart: {resent:?}"
    );
    assert!(
        dups <= MAX_ASSOC * 64,
        "{dups} duplicate deliveries after one crash: more than what can have been in flight"
    );
    // What the restarted daemon sent is verbatim.
    for o in &objs {
        for f in second.get(&o.spec.sop_instance_uid).into_iter().flatten() {
            assert!(same_dataset(f, &o.file), "{} differs", f.display());
        }
    }
    drop(gw);
}

/// A destination that rejects the SOP class: the jobs are dead letters at once, with the
/// reason; once the destination accepts the class, `queue retry` delivers them.
#[test]
fn rejected_sop_class_goes_to_dead_letters_and_retry_delivers() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    // storescp without -pm rejects the presentation context of an unknown SOP class.
    let mut strict = DestScp::start(&tmp.path().join("pacs-strict"), port, &[]);
    // Retries would take a minute: only an immediate dead letter settles within the wait.
    let toml = format!("[store]\nextra_sop_classes = [\"{PRIVATE_SOP_CLASS}\"]\n\n")
        + &dest_block(
            "pacs",
            port,
            "max_associations = 2\nidle_release_seconds = 1\nretry_initial_seconds = 60\n\
             retry_max_seconds = 60\nmax_attempts = 20\n",
        )
        + &route_block("everything", "", &["pacs"]);
    let gw = start_gw(tmp.path(), &data, &toml, &[]);

    let src = tmp.path().join("src");
    let private = gen_objs(
        &src,
        (0..3).map(|i| ObjSpec::new(40_000 + i).sop_class(PRIVATE_SOP_CLASS)),
    );
    let ct = gen_objs(&src, (0..2).map(|i| ObjSpec::new(40_100 + i)));
    // storescu refuses unknown SOP classes unless told the presentation context explicitly.
    let cfg = tmp.path().join("storescu.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[[TransferSyntaxes]]\n[ExplicitLE]\nTransferSyntax1 = LocalEndianExplicit\n\
             [[PresentationContexts]]\n[Priv]\nPresentationContext1 = {PRIVATE_SOP_CLASS}\\ExplicitLE\n\
             [[Profiles]]\n[Default]\nPresentationContexts = Priv\n"
        ),
    )
    .unwrap();
    let pfiles = files_of(&private);
    storescu(
        gw.port,
        &pfiles,
        &[
            "-xf",
            cfg.to_str().unwrap(),
            "Default",
            "-aet",
            "PRIV_SENDER",
        ],
    )
    .assert_all_ok(&pfiles);
    send_all(&gw, &ct, "CT_SENDER");

    let s = wait_settled(&data, "pacs", 2, 3, Duration::from_secs(30));
    assert_eq!(s.retry, 0, "{s:?}");
    let dead = queue_list(&data, "pacs", Some("dead"));
    let dead_uids: BTreeSet<String> = dead
        .iter()
        .map(|v| json_str(v, "sop_instance_uid"))
        .collect();
    assert_eq!(dead_uids, uids_of(&private), "dead letters: {dead:?}");
    for v in &dead {
        assert_eq!(json_str(v, "state"), "dead", "{v}");
        assert_eq!(json_str(v, "destination"), "pacs", "{v}");
        let why = json_str(v, "last_error").to_lowercase();
        assert!(
            why.contains("reject") || why.contains("not supported"),
            "dead letter's last_error does not give the rejection as the reason: {v}"
        );
        assert!(json_u64(v, "attempts") <= 1, "rejection was retried: {v}");
    }
    let ct_refs: Vec<&Obj> = ct.iter().collect();
    assert_received_exactly(&strict, &ct_refs);

    // Fix the destination: restart it accepting unknown SOP classes, on the same port (once
    // the daemon has released its idle associations to the old one).
    wait_all_closed(&strict, Duration::from_secs(20));
    strict.stop();
    let fixed = DestScp::start(&tmp.path().join("pacs-fixed"), port, &["-pm"]);

    // One job by id, then the rest.
    let first_id = json_u64(&dead[0], "id");
    let first_uid = json_str(&dead[0], "sop_instance_uid");
    let id = first_id.to_string();
    let r = gw_queue(&data, "retry", &["--destination", "pacs", "--job", &id])
        .ok()
        .json();
    assert_eq!(json_u64(&r, "retried"), 1, "{r}");
    wait_settled(&data, "pacs", 3, 2, Duration::from_secs(30));
    let got: BTreeSet<String> = fixed.by_uid().into_keys().collect();
    assert_eq!(got, BTreeSet::from([first_uid]), "retry --job {id}");

    let r = gw_queue(&data, "retry", &["--destination", "pacs"])
        .ok()
        .json();
    assert_eq!(json_u64(&r, "retried"), 2, "{r}");
    wait_settled(&data, "pacs", 5, 0, Duration::from_secs(30));
    let p_refs: Vec<&Obj> = private.iter().collect();
    assert_received_exactly(&fixed, &p_refs);
    assert!(queue_list(&data, "pacs", Some("dead")).is_empty());
    drop(gw);
}

/// Routes by attribute (keyword and tag), by calling AE title with wildcards, with lists of
/// alternatives and with several keys: each destination receives exactly its objects.
#[test]
fn routes_send_each_destination_exactly_its_objects() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // -d: storescp logs the AE titles of each association request.
    let a = DestScp::start_free(&tmp.path().join("dest-a"), &["-d"]);
    let b = DestScp::start_free(&tmp.path().join("dest-b"), &["-d"]);
    let extra = format!("max_associations = 2\nidle_release_seconds = 1\n{FAST_RETRY}");
    let toml = "[store]\nae_title = \"GW_ROUTER\"\n\n".to_string()
        + &dest_block(
            "dest-a",
            a.port,
            &format!("calling_ae_title = \"GW_TO_A\"\n{extra}"),
        )
        + &dest_block("dest-b", b.port, &extra)
        + &route_block("ct", r#"{ Modality = "CT" }"#, &["dest-a"])
        + &route_block("mr", r#"{ Modality = "MR" }"#, &["dest-b"])
        + &route_block("us-rooms", r#"{ CallingAETitle = "US_*" }"#, &["dest-b"])
        + &route_block(
            "nuclear",
            r#"{ Modality = ["PT", "N?"] }"#,
            &["dest-a", "dest-b"],
        )
        + &route_block(
            "by-description",
            r#"{ "(0008,1030)" = "ROUTE ME*" }"#,
            &["dest-a"],
        )
        + &route_block(
            "dx-room",
            r#"{ Modality = "DX", CallingAETitle = "DX_??" }"#,
            &["dest-b"],
        );
    let gw = start_gw(tmp.path(), &data, &toml, &[]);

    let src = tmp.path().join("src");
    let mut n = 50_000;
    let mut batch = |count: u32, modality: &str, desc: Option<&str>| -> Vec<Obj> {
        let specs: Vec<ObjSpec> = (0..count)
            .map(|_| {
                n += 1;
                let s = ObjSpec::new(n).modality(modality);
                match desc {
                    Some(d) => s.extra(tag(0x0008, 0x1030), "LO", d.as_bytes()),
                    None => s,
                }
            })
            .collect();
        gen_objs(&src, specs)
    };
    let ct = batch(4, "CT", None); // → a
    let mr = batch(4, "MR", None); // → b
    let us_room = batch(3, "US", None); // from US_ROOM1 → b
    let us_other = batch(2, "US", None); // from USX → nowhere
    let pt = batch(2, "PT", None); // → a and b
    let nm = batch(2, "NM", None); // → a and b
    let described = batch(2, "OT", Some("ROUTE ME PLEASE")); // → a
    let not_described = batch(2, "OT", Some("DO NOT ROUTE")); // → nowhere
    let dx_room = batch(2, "DX", None); // from DX_01 → b
    let dx_other = batch(2, "DX", None); // from DX_001 → nowhere
    let ct_from_us = batch(2, "CT", None); // from US_ROOM2 → a (CT) and b (AE)

    send_all(&gw, &ct, "CT_ROOM");
    send_all(&gw, &mr, "MR_ROOM");
    send_all(&gw, &us_room, "US_ROOM1");
    send_all(&gw, &us_other, "USX");
    let mut nuclear: Vec<&Obj> = pt.iter().collect();
    nuclear.extend(nm.iter());
    send(&gw, &nuclear, "NM_ROOM");
    let mut ot: Vec<&Obj> = described.iter().collect();
    ot.extend(not_described.iter());
    send(&gw, &ot, "WORKSTATION");
    send_all(&gw, &dx_room, "DX_01");
    send_all(&gw, &dx_other, "DX_001");
    send_all(&gw, &ct_from_us, "US_ROOM2");

    let want_a: Vec<&Obj> = ct
        .iter()
        .chain(&pt)
        .chain(&nm)
        .chain(&described)
        .chain(&ct_from_us)
        .collect();
    let want_b: Vec<&Obj> = mr
        .iter()
        .chain(&us_room)
        .chain(&pt)
        .chain(&nm)
        .chain(&dx_room)
        .chain(&ct_from_us)
        .collect();
    wait_settled(
        &data,
        "dest-a",
        want_a.len() as u64,
        0,
        Duration::from_secs(60),
    );
    wait_settled(
        &data,
        "dest-b",
        want_b.len() as u64,
        0,
        Duration::from_secs(60),
    );
    assert_received_exactly(&a, &want_a);
    assert_received_exactly(&b, &want_b);
    // Objects no route matched were stored but not forwarded.
    let stats = queue_stats(&data);
    let all_jobs: u64 = stats
        .values()
        .map(|s| s.done + s.dead + s.outstanding())
        .sum();
    assert_eq!(all_jobs, (want_a.len() + want_b.len()) as u64, "{stats:?}");
    for o in us_other.iter().chain(&not_described).chain(&dx_other) {
        assert!(
            o.spec.settled_path(&data).is_file(),
            "unrouted object {} not stored",
            o.spec.sop_instance_uid
        );
    }
    // AE titles: the destination's ae_title as Called AE; calling_ae_title, or by default
    // our store AE title, as Calling AE.
    for (scp, calling, called) in [(&a, "GW_TO_A", "DEST-A"), (&b, "GW_ROUTER", "DEST-B")] {
        let log = scp.log();
        let field = |name: &str| -> BTreeSet<String> {
            log.lines()
                .filter_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .collect()
        };
        assert_eq!(
            field("D: Calling Application Name:"),
            BTreeSet::from([calling.to_string()]),
            "calling AE titles seen by the destination on port {}",
            scp.port
        );
        assert_eq!(
            field("D: Called Application Name:"),
            BTreeSet::from([called.to_string()]),
            "called AE titles seen by the destination on port {}",
            scp.port
        );
    }
    // Idle associations are released (idle_release_seconds = 1).
    wait_all_released(&a, Duration::from_secs(20));
    wait_all_released(&b, Duration::from_secs(20));
    drop(gw);
}

/// pause / resume / replay / list / stats, with the daemon running (control socket) and
/// stopped; unknown destinations are bad usage (exit 2).
#[test]
fn queue_pause_resume_replay_and_offline_cli() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let scp = DestScp::start_free(&tmp.path().join("ops"), &[]);
    let toml = dest_block(
        "ops",
        scp.port,
        &format!("max_associations = 2\n{FAST_RETRY}"),
    ) + &route_block("everything", "", &["ops"]);
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);

    let r = gw_queue(&data, "pause", &["--destination", "ops"])
        .ok()
        .json();
    assert_eq!(r, serde_json::json!({"destination": "ops", "paused": true}));
    let bad = gw_queue(&data, "pause", &["--destination", "no-such-dest"]);
    assert_eq!(
        bad.code,
        Some(2),
        "pause of an unknown destination while the daemon runs: {bad:?}"
    );

    let src = tmp.path().join("src");
    let s_first = ObjSpec::new(60_000);
    let study_s = gen_objs(
        &src,
        (0..3).map(|i| ObjSpec::new(60_000 + i).same_series_as(&s_first)),
    );
    let t_first = ObjSpec::new(60_100);
    let study_t = gen_objs(
        &src,
        (0..2).map(|i| ObjSpec::new(60_100 + i).same_series_as(&t_first)),
    );
    send_all(&gw, &study_s, "OPS_SENDER");
    send_all(&gw, &study_t, "OPS_SENDER");
    let all: Vec<&Obj> = study_s.iter().chain(&study_t).collect();

    // Paused: the jobs (written at ingest) wait as pending, never tried.
    let pending = queue_list(&data, "ops", Some("pending"));
    let pending_uids: BTreeSet<String> = pending
        .iter()
        .map(|v| json_str(v, "sop_instance_uid"))
        .collect();
    assert_eq!(pending_uids, uids_of(all.iter().copied()), "{pending:?}");
    for v in &pending {
        assert_eq!(json_str(v, "state"), "pending", "{v}");
        assert_eq!(json_str(v, "destination"), "ops", "{v}");
        assert_eq!(json_u64(v, "attempts"), 0, "paused job was tried: {v}");
    }
    let limited = gw_queue(&data, "list", &["--destination", "ops", "--limit", "2"])
        .ok()
        .json_lines();
    assert_eq!(limited.len(), 2, "list --limit 2: {limited:?}");
    let s = dest_stats(&data, "ops");
    assert_eq!((s.pending, s.done, s.paused), (5, 0, true), "{s:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        scp.files().is_empty() && scp.associations() == 0,
        "a paused destination was sent objects; log:\n{}",
        scp.log()
    );

    let r = gw_queue(&data, "resume", &["--destination", "ops"])
        .ok()
        .json();
    assert_eq!(
        r,
        serde_json::json!({"destination": "ops", "paused": false})
    );
    wait_settled(&data, "ops", 5, 0, Duration::from_secs(30));
    assert_received_exactly(&scp, &all);

    // Replay study S: its three instances are sent again.
    let study_uid = s_first.study_instance_uid.clone();
    let r = gw_queue(
        &data,
        "replay",
        &["--destination", "ops", "--study", &study_uid],
    )
    .ok()
    .json();
    assert_eq!(json_u64(&r, "queued"), 3, "{r}");
    wait_settled(&data, "ops", 8, 0, Duration::from_secs(30));
    let s_refs: Vec<&Obj> = study_s.iter().collect();
    let t_refs: Vec<&Obj> = study_t.iter().collect();
    assert_received(&scp, &s_refs, 2);
    assert_received(&scp, &t_refs, 1);
    let bad = gw_queue(
        &data,
        "replay",
        &["--destination", "no-such-dest", "--study", &study_uid],
    );
    assert_eq!(
        bad.code,
        Some(2),
        "replay to an unknown destination: {bad:?}"
    );

    // The command line works with the daemon stopped.
    gw.stop();
    drop(gw);
    let s = dest_stats(&data, "ops");
    assert_eq!(
        (s.pending, s.retry, s.in_flight, s.dead, s.done, s.paused),
        (0, 0, 0, 0, 8, false),
        "offline stats: {s:?}"
    );
    let left = queue_list(&data, "ops", None);
    assert!(
        left.is_empty(),
        "jobs listed although all are delivered: {left:?}"
    );
    let r = gw_queue(&data, "pause", &["--destination", "ops"])
        .ok()
        .json();
    assert_eq!(r, serde_json::json!({"destination": "ops", "paused": true}));

    // The pause made offline holds after a restart.
    let gw = start_gw(tmp.path(), &data, &toml, &[]);
    assert!(
        dest_stats(&data, "ops").paused,
        "offline pause lost at restart"
    );
    let late = gen_objs(&src, [ObjSpec::new(60_200)]);
    send_all(&gw, &late, "OPS_SENDER");
    let pending = queue_list(&data, "ops", Some("pending"));
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        json_str(&pending[0], "sop_instance_uid"),
        late[0].spec.sop_instance_uid
    );
    let r = gw_queue(&data, "resume", &["--destination", "ops"])
        .ok()
        .json();
    assert!(!json_bool(&r, "paused"), "{r}");
    wait_settled(&data, "ops", 9, 0, Duration::from_secs(30));
    assert_received(&scp, &[&late[0]], 1);
    drop(gw);
}

/// Gateway-mode retention: an object is deleted (file and index row) once every destination
/// it is routed to has it — not before.
#[test]
fn gateway_retention_deletes_only_what_every_destination_has() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let a = DestScp::start_free(&tmp.path().join("ret-a"), &[]);
    let b_port = free_port(); // dest-b is down at first
    let extra = format!("max_associations = 2\nmax_attempts = 100000\n{FAST_RETRY}");
    let toml =
        "[retention]\nmode = \"gateway\"\ndelete_after_seconds = 0\nsweep_interval_seconds = 1\n\n"
            .to_string()
            + &dest_block("ret-a", a.port, &extra)
            + &dest_block("ret-b", b_port, &extra)
            + &route_block("ct", r#"{ Modality = "CT" }"#, &["ret-a"])
            + &route_block("mr", r#"{ Modality = "MR" }"#, &["ret-a", "ret-b"]);
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);
    let src = tmp.path().join("src");
    let ct = gen_objs(
        &src,
        (0..3).map(|i| ObjSpec::new(70_000 + i).modality("CT")),
    );
    let mr = gen_objs(
        &src,
        (0..2).map(|i| ObjSpec::new(70_100 + i).modality("MR")),
    );
    send_all(&gw, &ct, "RET_SENDER");
    send_all(&gw, &mr, "RET_SENDER");

    wait_settled(&data, "ret-a", 5, 0, Duration::from_secs(30));
    let a_refs: Vec<&Obj> = ct.iter().chain(&mr).collect();
    assert_received_exactly(&a, &a_refs);
    // CT: every destination has it → deleted.
    wait_for(
        "CT objects deleted by retention",
        Duration::from_secs(30),
        || {
            let left: Vec<_> = ct
                .iter()
                .filter(|o| o.spec.stored_path(&data).exists())
                .map(|o| o.spec.sop_instance_uid.clone())
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still stored: {left:?}"))
            }
        },
    );
    // MR: ret-b does not have it → kept, over several more sweeps.
    std::thread::sleep(Duration::from_secs(3));
    for o in &mr {
        assert!(
            o.spec.settled_path(&data).is_file(),
            "{} deleted although destination ret-b does not have it",
            o.spec.sop_instance_uid
        );
    }
    gw.stop();
    drop(gw);
    let idx = index_uids(&data);
    for o in &ct {
        assert!(
            !idx.contains(&o.spec.sop_instance_uid),
            "deleted CT still indexed"
        );
    }
    for o in &mr {
        assert!(
            idx.contains(&o.spec.sop_instance_uid),
            "kept MR not indexed"
        );
    }
    assert!(list_files(data.join("tmp")).is_empty());

    // ret-b comes up: the MR objects reach it and are then deleted too.
    let b = DestScp::start(&tmp.path().join("ret-b"), b_port, &[]);
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);
    wait_settled(&data, "ret-b", 2, 0, Duration::from_secs(30));
    let mr_refs: Vec<&Obj> = mr.iter().collect();
    assert_received_exactly(&b, &mr_refs);
    wait_for(
        "MR objects deleted by retention",
        Duration::from_secs(30),
        || {
            let left = mr
                .iter()
                .filter(|o| o.spec.stored_path(&data).exists())
                .count();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} MR objects still stored"))
            }
        },
    );
    gw.stop();
    drop(gw);
    let idx = index_uids(&data);
    let left: Vec<String> = uids_of(ct.iter().chain(&mr))
        .into_iter()
        .filter(|u| idx.contains(u))
        .collect();
    assert!(left.is_empty(), "still indexed after retention: {left:?}");
}

/// Archive mode (the default): forwarded objects stay.
#[test]
fn archive_retention_keeps_forwarded_objects() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let a = DestScp::start_free(&tmp.path().join("keep"), &[]);
    let toml = "[retention]\nsweep_interval_seconds = 1\ndelete_after_seconds = 0\n\n".to_string()
        + &dest_block(
            "keep",
            a.port,
            &format!("max_associations = 2\n{FAST_RETRY}"),
        )
        + &route_block("everything", "", &["keep"]);
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);
    let objs = gen_objs(
        &tmp.path().join("src"),
        (0..3).map(|i| ObjSpec::new(75_000 + i)),
    );
    send_all(&gw, &objs, "KEEP_SENDER");
    wait_settled(&data, "keep", 3, 0, Duration::from_secs(30));
    let refs: Vec<&Obj> = objs.iter().collect();
    assert_received_exactly(&a, &refs);
    std::thread::sleep(Duration::from_secs(3)); // several sweep intervals
    for o in &objs {
        let p = o.spec.stored_path(&data);
        assert!(
            p.is_file() && same_dataset(&p, &o.file),
            "{} not kept",
            p.display()
        );
    }
    gw.stop();
    drop(gw);
    assert_eq!(index_uids(&data), uids_of(&objs));
}

/// Disk high-water mark: once the data filesystem is `disk_high_water_percent` full, C-STORE
/// answers A700 — before the disk is actually full — and leaves nothing behind; raising the
/// mark accepts objects again.
#[test]
fn disk_high_water_mark_refuses_with_a700_before_disk_full() {
    require_dcmtk();
    const OBJ: u64 = 512 << 10;
    const COUNT: u32 = 28; // 14 MiB on a 16 MiB filesystem
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let _mount = match Tmpfs::mount(&data, "16m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIP disk_high_water_mark_refuses_with_a700_before_disk_full: {why}");
            return;
        }
    };
    // Declared after the mount: dropped (killed) before the unmount.
    let mut gw = start_gw(
        tmp.path(),
        &data,
        "[store]\ndisk_high_water_percent = 50\njournal_segments = 2\njournal_segment_mib = 1\n",
        &[],
    );
    let (total, avail0) = fs_space(&data);
    eprintln!("tmpfs: {total} bytes, {avail0} available at start");
    assert!(
        (total - avail0) * 100 < total * 50,
        "filesystem already above the mark at start ({} of {total} used)",
        total - avail0
    );
    let objs = gen_objs(
        &tmp.path().join("src"),
        (0..COUNT).map(|i| ObjSpec::new(80_000 + i).pixel_bytes(OBJ)),
    );
    let files = files_of(&objs);
    let mut flags = storescu_flags_for(Ts::ExplicitLE);
    flags.push("-nh"); // keep going after a refusal
    let r = storescu(gw.port, &files, &flags);
    let statuses: Vec<Option<u16>> = files.iter().map(|f| r.status_of(f)).collect();
    eprintln!("statuses: {statuses:04x?}");
    let ok = statuses.iter().take_while(|s| **s == Some(0)).count();
    assert!(ok >= 1, "nothing accepted below the mark:\n{}", r.output);
    assert!(
        ok < files.len(),
        "all {COUNT} objects ({} MiB) accepted on a 16 MiB filesystem with a 50% mark:\n{}",
        (COUNT as u64 * OBJ) >> 20,
        r.output
    );
    assert!(
        statuses[ok..].iter().all(|s| *s == Some(0xA700)),
        "after the first refusal every object must get A700 (nothing was freed): {statuses:04x?}\n{}",
        r.output
    );
    let (_, avail) = fs_space(&data);
    assert!(
        avail >= 2 * OBJ,
        "refusals started only when the disk was full ({avail} bytes left)"
    );
    assert!(
        (total - avail) * 100 >= total * 45,
        "refused at {}% used, below the 50% mark",
        (total - avail) * 100 / total
    );
    wait_for("tmp/ empty after refusals", Duration::from_secs(10), || {
        let t = list_files(data.join("tmp"));
        if t.is_empty() {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
    for o in &objs[..ok] {
        assert!(same_dataset(o.spec.settled_path(&data), &o.file));
    }
    let stored = list_files(data.join("objects"));
    assert_eq!(
        stored.len(),
        ok,
        "stored files vs accepted objects: {stored:?}"
    );
    gw.stop();
    drop(gw);
    assert_eq!(index_uids(&data), uids_of(&objs[..ok]));

    // Raise the mark: objects are accepted again.
    let gw = start_gw(
        tmp.path(),
        &data,
        "[store]\ndisk_high_water_percent = 100\njournal_segments = 2\njournal_segment_mib = 1\n",
        &[],
    );
    let next = &objs[ok];
    let r = storescu(gw.port, &[&next.file], &storescu_flags_for(Ts::ExplicitLE));
    assert_eq!(
        r.status_of(&next.file),
        Some(0),
        "after raising the mark:\n{}",
        r.output
    );
    assert!(same_dataset(next.spec.settled_path(&data), &next.file));
    drop(gw);
}

/// Issue 14: objects that DCMTK `storescp` and Orthanc accept — no Study Instance UID, or a
/// 77-character one — are kept in quarantine by default (`accept_nonconformant = true`):
/// answered 0000, stored under a hashed name inside `objects/quarantine/` (never under the raw
/// UID), indexed under substitute UIDs, visible and downloadable through the API, forwarded
/// byte-identical per the routes, logged and counted. With `false` they are refused C000.
#[test]
fn nonconformant_objects_are_quarantined_and_forwarded() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let scp = DestScp::start_free(&tmp.path().join("archive-q"), &[]);
    let toml = dest_block("archive-q", scp.port, FAST_RETRY)
        + &route_block("everything", "", &["archive-q"]);
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);
    let long = format!("1.2.{}", "3".repeat(73));
    assert_eq!(long.len(), 77);
    let no_study = ObjSpec::new(700).omit(tag(0x0020, 0x000D));
    let mut long_study = ObjSpec::new(701);
    long_study.study_instance_uid = long.clone();
    let objs = gen_objs(&tmp.path().join("src"), [no_study, long_study]);
    send_all(&gw, &objs, "Q_SENDER");
    wait_settled(&data, "archive-q", 2, 0, Duration::from_secs(60));
    let refs: Vec<&Obj> = objs.iter().collect();
    assert_received(&scp, &refs, 1);

    // Stored inside objects/quarantine/ under hashed names, the bytes as received.
    let stored = list_files(data.join("objects"));
    assert_eq!(stored.len(), 2, "{stored:?}");
    for f in &stored {
        let rel = f
            .strip_prefix(&data)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(dicom_gw::store::is_quarantined(&rel), "{rel}");
        assert!(!rel.contains(&long), "{rel}");
    }
    let token = cli_token(env!("CARGO_BIN_EXE_dicom-gw"), &data, "viewer");
    for o in &objs {
        let sop = &o.spec.sop_instance_uid;
        let (code, v) = http_json(
            gw.http_port,
            "GET",
            &format!("/api/v1/instances/{sop}"),
            Some(&token),
            None,
        );
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["quarantined"], true, "{v}");
        let study = v["study_instance_uid"].as_str().unwrap();
        assert!(study.starts_with("2.25.") && study.len() <= 64, "{v}");
        // Listed under its substitute study, and downloadable byte for byte.
        let (code, s) = http_json(
            gw.http_port,
            "GET",
            &format!("/api/v1/studies/{study}"),
            Some(&token),
            None,
        );
        assert_eq!(code, 200, "{s}");
        let r = request(
            gw.http_port,
            "GET",
            &format!("/api/v1/instances/{sop}/file"),
            Some(&token),
            None,
        );
        assert_eq!(r.status, 200);
        let stored_file = data.join(v["path"].as_str().unwrap());
        assert_eq!(r.body, std::fs::read(&stored_file).unwrap());
        assert!(same_dataset(&stored_file, &o.file));
    }
    for reason in ["study_uid_missing", "study_uid_invalid"] {
        assert_eq!(
            metric_value(
                gw.http_port,
                &format!("dicomgw_nonconformant_total{{reason=\"{reason}\"}}")
            ),
            Some(1.0),
            "{reason}"
        );
    }
    let log = gw.stderr();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("quarantine"))
            .count(),
        2,
        "{log}"
    );
    gw.stop();

    // accept_nonconformant = false: both refused C000, nothing more stored.
    let toml = "[store]\naccept_nonconformant = false\n".to_owned() + &toml;
    let strict = start_gw(tmp.path(), &data, &toml, &[]);
    let files = files_of(&objs);
    let mut flags = storescu_flags_for(Ts::ExplicitLE);
    flags.push("-nh"); // keep going after a refusal
    let r = storescu(strict.port, &files, &flags);
    for f in &files {
        assert_eq!(r.status_of(f), Some(0xC000), "{}", r.output);
    }
    assert_eq!(list_files(data.join("objects")).len(), 2);
}

/// Issue 14: a modality's "send again" fixes a routing mistake. After the routes change, an
/// identical re-send creates jobs for the destinations that match now and never received the
/// object — and for no other (the first archive does not get it twice).
#[test]
fn identical_resend_after_a_route_change_reaches_the_new_destination_only() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let a = DestScp::start_free(&tmp.path().join("arch-a"), &[]);
    let b = DestScp::start_free(&tmp.path().join("arch-b"), &[]);
    let toml = dest_block("arch-a", a.port, FAST_RETRY)
        + &dest_block("arch-b", b.port, FAST_RETRY)
        + &route_block("everything", "", &["arch-a"]);
    let gw = start_gw(tmp.path(), &data, &toml, &[]);
    let objs = gen_objs(
        &tmp.path().join("src"),
        (0..3).map(|i| ObjSpec::new(900 + i)),
    );
    send_all(&gw, &objs, "MODALITY");
    wait_settled(&data, "arch-a", 3, 0, Duration::from_secs(60));
    let refs: Vec<&Obj> = objs.iter().collect();
    assert_received(&a, &refs, 1);

    // The routes now send everything to both archives.
    let admin = cli_token(env!("CARGO_BIN_EXE_dicom-gw"), &data, "admin");
    let routes =
        serde_json::json!([{ "name": "everything", "destinations": ["arch-a", "arch-b"] }]);
    let (code, v) = http_json(
        gw.http_port,
        "PUT",
        "/api/v1/routes",
        Some(&admin),
        Some(&routes),
    );
    assert_eq!(code, 200, "{v}");
    // The modality sends the first two again, byte for byte.
    send_all(&gw, &objs[..2], "MODALITY");
    wait_settled(&data, "arch-b", 2, 0, Duration::from_secs(60));
    b.wait_files(2, Duration::from_secs(30));
    assert_received(&b, &refs[..2], 1);
    assert_received_exactly(&b, &refs[..2]);
    // arch-a got nothing twice.
    assert_received(&a, &refs, 1);
    let log = gw.stderr();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("identical re-send routed"))
            .count(),
        2,
        "{log}"
    );
    // A third identical re-send: both have it, nothing more is queued (jobs are committed with
    // the C-STORE's answer, so they would be there when storescu returns).
    send_all(&gw, &objs[..1], "MODALITY");
    assert_eq!(dest_stats(&data, "arch-b").outstanding(), 0);
    assert_eq!(dest_stats(&data, "arch-a").outstanding(), 0);
    assert_received(&a, &refs, 1);
    assert_received(&b, &refs[..2], 1);
}
