//! Journal tests: replay after torn tails, older laps, power loss at every flush, poison,
//! backpressure, random workloads; all on `CrashStorage` except the file-storage ones.

use super::format::{self, GroupMeta, GROUP_HEADER_LEN};
use super::*;

const B: u64 = BLOCK as u64;

fn config(count: u32, blocks: u64, durability: Durability) -> JournalConfig {
    JournalConfig {
        segment_count: count,
        segment_size: blocks * B,
        max_group_bytes: blocks * B,
        durability,
    }
}

/// An object to journal, its bytes derived from `tag` so every record differs.
#[derive(Debug, Clone)]
struct Obj {
    flags: u16,
    meta: Vec<u8>,
    header: Vec<u8>,
    dataset: Vec<u8>,
}

impl Obj {
    fn new(tag: u64, meta: usize, header: usize, dataset: usize) -> Self {
        let fill = |salt: u64, n: usize| -> Vec<u8> {
            let mut rng = fastrand::Rng::with_seed(tag * 7919 + salt);
            (0..n).map(|_| rng.u8(..)).collect()
        };
        Self {
            flags: tag as u16,
            meta: fill(1, meta),
            header: fill(2, header),
            dataset: fill(3, dataset),
        }
    }

    fn input(&self) -> RecordIn<'_> {
        RecordIn {
            flags: self.flags,
            meta: &self.meta,
            header: &self.header,
            dataset: &self.dataset,
        }
    }

    fn record(&self, seq: u64) -> Record {
        Record {
            seq,
            flags: self.flags,
            meta: self.meta.clone(),
            header: self.header.clone(),
            dataset: self.dataset.clone(),
        }
    }
}

/// A group of `n` objects of about `size` bytes each.
fn group(tag: u64, n: usize, size: usize) -> Vec<Obj> {
    (0..n as u64)
        .map(|i| Obj::new(tag * 100 + i, 40 + i as usize, 20, size))
        .collect()
}

fn inputs(objs: &[Obj]) -> Vec<RecordIn<'_>> {
    objs.iter().map(Obj::input).collect()
}

/// Padded on-disk length and unpadded content length of a group.
fn lens(objs: &[Obj]) -> (u64, u64) {
    let body = format::body_len(&inputs(objs)).unwrap();
    (format::padded_len(body), GROUP_HEADER_LEN as u64 + body)
}

/// Appends and records what was acknowledged (the records with their seqs).
fn append(
    j: &mut Journal<CrashStorage>,
    objs: &[Obj],
    acked: &mut Vec<Record>,
) -> Result<Position, JournalError> {
    let pos = j.append_group(&inputs(objs))?;
    let first = pos.seq - objs.len() as u64;
    acked.extend(
        objs.iter()
            .enumerate()
            .map(|(i, o)| o.record(first + i as u64)),
    );
    Ok(pos)
}

fn fresh(cfg: &JournalConfig) -> (CrashStorage, Journal<CrashStorage>) {
    let storage = CrashStorage::new();
    let j = Journal::open(storage.clone(), cfg.clone(), None)
        .unwrap()
        .finish()
        .unwrap();
    (storage, j)
}

fn reopen(
    storage: &CrashStorage,
    cfg: &JournalConfig,
    checkpoint: Option<Position>,
) -> (Journal<CrashStorage>, Vec<Record>) {
    Journal::open(storage.clone(), cfg.clone(), checkpoint)
        .unwrap()
        .collect_all()
        .unwrap()
}

fn seqs(r: &[Record]) -> Vec<u64> {
    r.iter().map(|r| r.seq).collect()
}

#[test]
fn appends_replay_in_order_and_the_reopened_writer_continues_the_chain() {
    let cfg = config(3, 8, Durability::Full);
    let (storage, mut j) = fresh(&cfg);
    let mut acked = Vec::new();
    for (tag, n, size) in [
        (1, 1, 100),
        (2, 3, 2000),
        (3, 2, 9000),
        (4, 1, 0),
        (5, 4, 3000),
    ] {
        append(&mut j, &group(tag, n, size), &mut acked).unwrap();
    }
    assert_eq!(seqs(&acked), (1..=11).collect::<Vec<_>>());
    assert_eq!(storage.flushes(), 5, "one flush per group");
    drop(j);
    let disk = storage.crash(Tear::None);
    let (mut j, replayed) = reopen(&disk, &cfg, None);
    assert_eq!(replayed, acked);
    let pos = append(&mut j, &group(6, 2, 500), &mut acked).unwrap();
    assert_eq!(pos.seq, 14);
    drop(j);
    let disk = disk.crash(Tear::None);
    let (_, replayed) = reopen(&disk, &cfg, None);
    assert_eq!(replayed, acked);
}

/// Builds a journal with three flushed groups and a fourth whose write is in flight when the
/// power goes. Returns the disk, what was acknowledged and the in-flight group.
fn in_flight_fourth_group(cfg: &JournalConfig) -> (CrashStorage, Vec<Record>, Vec<Obj>) {
    let (storage, mut j) = fresh(cfg);
    let mut acked = Vec::new();
    append(&mut j, &group(1, 2, 1000), &mut acked).unwrap();
    append(&mut j, &group(2, 1, 5000), &mut acked).unwrap();
    append(&mut j, &group(3, 3, 300), &mut acked).unwrap();
    storage.cut_power_at_flush(1);
    let last = group(4, 3, 3000);
    let e = j.append_group(&inputs(&last)).unwrap_err();
    assert!(matches!(e, JournalError::Io { op: "flush", .. }), "{e}");
    (storage, acked, last)
}

fn check_torn(
    cfg: &JournalConfig,
    disk: &CrashStorage,
    checkpoint: Option<Position>,
    kept: u64,
    acked: &[Record],
    last: &[Obj],
) {
    let (_, content) = lens(last);
    let (mut j, replayed) = reopen(disk, cfg, checkpoint);
    let mut expected = acked.to_vec();
    if kept >= content {
        // Its bytes all reached the disk: it replays although it was never acknowledged.
        let first = acked.last().unwrap().seq + 1;
        expected.extend(
            last.iter()
                .enumerate()
                .map(|(i, o)| o.record(first + i as u64)),
        );
    }
    assert_eq!(
        seqs(&replayed),
        seqs(&expected),
        "kept {kept} of the last write"
    );
    assert_eq!(replayed, expected);
    // Appending after the valid prefix works and replays after it.
    let more = group(9, 1, 64);
    let pos = append(&mut j, &more, &mut expected).unwrap();
    assert_eq!(pos.seq, expected.last().unwrap().seq + 1);
    drop(j);
    let (_, again) = reopen(&disk.crash(Tear::None), cfg, checkpoint);
    assert_eq!(
        again, expected,
        "kept {kept}: the append after recovery replays"
    );
}

#[test]
fn torn_tail_at_every_byte_offset_replays_only_the_valid_prefix() {
    let cfg = config(3, 8, Durability::Full);
    let (storage, acked, last) = in_flight_fourth_group(&cfg);
    let (padded, _) = lens(&last);
    assert_eq!(storage.last_unflushed_len() as u64, padded);
    for n in 0..=padded as usize {
        let disk = storage.crash(Tear::Bytes(n));
        check_torn(&cfg, &disk, None, n as u64, &acked, &last);
    }
}

#[test]
fn torn_tail_at_every_sector_replays_only_the_valid_prefix() {
    let cfg = config(3, 8, Durability::Full);
    let (storage, acked, last) = in_flight_fourth_group(&cfg);
    let (padded, _) = lens(&last);
    for k in 0..=(padded as usize / crash::SECTOR) {
        let disk = storage.crash(Tear::Sectors(k));
        check_torn(&cfg, &disk, None, (k * crash::SECTOR) as u64, &acked, &last);
    }
    // Sectors persisted out of order: any missing sector of the content refuses the group.
    for seed in 0..200 {
        let disk = storage.crash(Tear::Scattered(seed));
        let (_, replayed) = reopen(&disk, &cfg, None);
        let mut expected = acked.clone();
        if replayed.len() > acked.len() {
            let first = acked.last().unwrap().seq + 1;
            expected.extend(
                last.iter()
                    .enumerate()
                    .map(|(i, o)| o.record(first + i as u64)),
            );
        }
        assert_eq!(replayed, expected, "seed {seed}");
    }
}

/// Fills a 3 × 4-block ring with 1-block groups, releases the first two segments, wraps into
/// segment 0 with two groups of the new lap and returns (disk, checkpoint, records after it,
/// last position). Segment 0 then holds [lap 2, lap 2, lap 1, lap 1].
fn wrapped_ring(cfg: &JournalConfig) -> (CrashStorage, Position, Vec<Record>, Position) {
    let (storage, mut j) = fresh(cfg);
    let mut acked = Vec::new();
    let mut positions = Vec::new();
    for tag in 1..=12 {
        positions.push(append(&mut j, &group(tag, 1, 1000), &mut acked).unwrap());
    }
    let lap1 = j.epoch();
    assert_eq!(positions[11].segment, 2);
    assert!(matches!(
        j.append_group(&inputs(&group(13, 1, 1000))),
        Err(JournalError::Full)
    ));
    let checkpoint = positions[9];
    j.release_through(&checkpoint).unwrap();
    let mut last = checkpoint;
    for tag in 13..=14 {
        last = append(&mut j, &group(tag, 1, 1000), &mut acked).unwrap();
    }
    assert_eq!((last.segment, last.offset), (0, 2 * B));
    assert!(j.epoch() > lap1, "a new lap takes a new epoch");
    let after: Vec<Record> = acked
        .into_iter()
        .filter(|r| r.seq >= checkpoint.seq)
        .collect();
    assert_eq!(seqs(&after), vec![11, 12, 13, 14]);
    (storage.crash(Tear::None), checkpoint, after, last)
}

#[test]
fn older_lap_records_behind_the_valid_prefix_never_replay() {
    let cfg = config(3, 4, Durability::Full);
    let (disk, checkpoint, after, last) = wrapped_ring(&cfg);
    // Right behind the valid prefix lies lap 1's third group, intact.
    let img = disk.durable_image(0);
    let stale = &img[2 * BLOCK..2 * BLOCK + GROUP_HEADER_LEN];
    assert_eq!(&stale[..4], b"DGJG");
    assert_eq!(u64::from_le_bytes(stale[16..24].try_into().unwrap()), 3);
    let mut replay = Journal::open(disk.clone(), cfg.clone(), Some(checkpoint)).unwrap();
    let mut got = Vec::new();
    while let Some(g) = replay.next_group().unwrap() {
        got.extend(g.records.iter().map(Record::from));
    }
    assert_eq!(got, after);
    let stop = *replay.stop().unwrap();
    assert_eq!(stop.at, last);
    assert!(
        matches!(
            stop.reason,
            Some(Invalid::Epoch { .. } | Invalid::Seq { .. })
        ),
        "{stop:?}"
    );
    // Appending after the prefix overwrites the old lap and replays.
    let (mut j, _) = Journal::open(disk.clone(), cfg.clone(), Some(checkpoint))
        .unwrap()
        .collect_all()
        .unwrap();
    let mut expected = after.clone();
    append(&mut j, &group(15, 1, 100), &mut expected).unwrap();
    drop(j);
    let (_, replayed) = reopen(&disk.crash(Tear::None), &cfg, Some(checkpoint));
    assert_eq!(replayed, expected);
}

#[test]
fn torn_tail_over_an_older_lap_at_every_byte_offset() {
    // The last group is torn while overwriting lap 1's groups 3 and 4 in segment 0: whatever
    // mix of new and old bytes the crash leaves, only the valid prefix replays.
    let cfg = config(3, 4, Durability::Full);
    let (disk, checkpoint, after, last_pos) = wrapped_ring(&cfg);
    let (mut j, replayed) = reopen(&disk, &cfg, Some(checkpoint));
    assert_eq!(replayed, after);
    disk.cut_power_at_flush(1);
    let last = group(20, 3, 2000);
    let (padded, _) = lens(&last);
    assert_eq!(padded, 2 * B);
    assert!(j.append_group(&inputs(&last)).is_err());
    assert_eq!(j.position(), last_pos);
    for n in 0..=padded as usize {
        let torn = disk.crash(Tear::Bytes(n));
        check_torn(&cfg, &torn, Some(checkpoint), n as u64, &after, &last);
    }
}

#[test]
fn crafted_stale_groups_behind_the_prefix_are_refused() {
    let cfg = config(3, 4, Durability::Full);
    let (disk, checkpoint, after, last) = wrapped_ring(&cfg);
    let objs = group(99, 1, 500);
    let (padded, _) = lens(&objs);
    let craft = |epoch: u32, seq: u64, prev: u32| {
        let mut buf = vec![0u8; padded as usize];
        format::encode_group(
            &mut buf,
            &GroupMeta {
                epoch,
                first_seq: seq,
                prev,
                flags: 0,
            },
            &inputs(&objs),
        );
        buf
    };
    let state_epoch = {
        let (j, _) = reopen(&disk.crash(Tear::None), &cfg, Some(checkpoint));
        j.epoch() - 1 // what was stored before this opening took a new one
    };
    let cases = [
        (
            "older epoch",
            craft(last.epoch - 1, last.seq, last.link),
            false,
        ),
        (
            "wrong link",
            craft(last.epoch, last.seq, last.link ^ 1),
            false,
        ),
        (
            "wrong seq",
            craft(last.epoch, last.seq + 1, last.link),
            false,
        ),
        (
            "epoch never handed out",
            craft(state_epoch + 2, last.seq, last.link),
            false,
        ),
        (
            "the genuine successor",
            craft(last.epoch, last.seq, last.link),
            true,
        ),
    ];
    for (what, bytes, valid) in cases {
        let d = disk.crash(Tear::None);
        d.poke(last.segment, last.offset as usize, &bytes);
        let (_, replayed) = reopen(&d, &cfg, Some(checkpoint));
        let want = after.len() + usize::from(valid);
        assert_eq!(replayed.len(), want, "{what}");
        assert_eq!(replayed[..after.len()], after[..], "{what}");
    }
}

#[test]
fn a_lost_groups_successor_never_follows_its_rewrite() {
    // Relaxed writes of groups A and B; the power goes, B (the last write) reached the disk,
    // A did not. After recovery C takes A's seqs and place; B now sits right behind C with
    // exactly the seq expected there. Only the new epoch (and the link) keeps B out.
    let full = config(3, 8, Durability::Full);
    let relaxed = JournalConfig {
        durability: Durability::Relaxed,
        ..full.clone()
    };
    let (storage, mut j) = fresh(&full);
    let mut acked = Vec::new();
    append(&mut j, &group(1, 1, 100), &mut acked).unwrap();
    drop(j);
    let (mut j, _) = reopen(&storage, &relaxed, None);
    let flushes = storage.flushes();
    let mut lost = Vec::new();
    append(&mut j, &group(2, 2, 700), &mut lost).unwrap();
    append(&mut j, &group(3, 1, 700), &mut lost).unwrap();
    assert_eq!(storage.flushes(), flushes, "relaxed mode does not flush");
    drop(j);
    let disk = storage.crash(Tear::Bytes(usize::MAX));
    let (mut j, replayed) = reopen(&disk, &full, None);
    assert_eq!(replayed, acked, "A is lost, so B does not count");
    append(&mut j, &group(4, 2, 700), &mut acked).unwrap();
    drop(j);
    let disk = disk.crash(Tear::None);
    let mut replay = Journal::open(disk.clone(), full.clone(), None).unwrap();
    let mut got = Vec::new();
    while let Some(g) = replay.next_group().unwrap() {
        got.extend(g.records.iter().map(Record::from));
    }
    assert_eq!(got, acked);
    let stop = replay.stop().unwrap();
    assert!(
        matches!(
            stop.reason,
            Some(Invalid::Epoch { .. } | Invalid::Link { .. })
        ),
        "B has the expected seq {}, so epoch or link must refuse it: {stop:?}",
        stop.at.seq
    );
}

/// A scripted workload: groups of varied sizes, some crossing segment ends, releases so the
/// ring wraps. Returns what was acknowledged and the last checkpoint; stops at the first
/// failed append (the power cut).
fn scripted(j: &mut Journal<CrashStorage>) -> (Vec<Record>, Position, Option<Vec<Obj>>) {
    let sizes = [
        (1, 500),
        (3, 2500),
        (1, 9000),
        (2, 100),
        (5, 1200),
        (1, 13000),
        (2, 4000),
        (4, 800),
        (1, 0),
        (3, 3500),
        (2, 7000),
        (1, 200),
        (6, 1000),
        (1, 6000),
        (2, 2000),
    ];
    let mut acked = Vec::new();
    let mut checkpoint = Position::GENESIS;
    let mut positions = Vec::new();
    for (i, &(n, size)) in sizes.iter().enumerate() {
        let objs = group(i as u64 + 1, n, size);
        if i % 3 == 2 {
            // The checkpoint trails the writer by two groups.
            checkpoint = positions[i - 2];
            j.release_through(&checkpoint).unwrap();
        }
        match append(j, &objs, &mut acked) {
            Ok(p) => positions.push(p),
            Err(JournalError::Io { .. }) => return (acked, checkpoint, Some(objs)),
            Err(e) => panic!("group {i}: {e}"),
        }
    }
    (acked, checkpoint, None)
}

#[test]
fn power_loss_at_every_flush_boundary_keeps_exactly_the_flushed_groups() {
    let cfg = config(4, 8, Durability::Full);
    let (storage, mut j) = fresh(&cfg);
    let (acked, _, failed) = scripted(&mut j);
    assert!(failed.is_none());
    let flushes = storage.flushes();
    assert_eq!(flushes, 15, "one flush per group");
    assert!(j.epoch() > 1, "the script wraps the ring");
    assert_eq!(acked.len(), 35);

    for k in 1..=flushes {
        let (storage, mut j) = fresh(&cfg);
        storage.cut_power_at_flush(k);
        let (acked, checkpoint, in_flight) = scripted(&mut j);
        let in_flight = in_flight.expect("the cut stops the script");
        assert!(j.is_poisoned());
        let (_, content) = lens(&in_flight);
        let len = storage.last_unflushed_len();
        let mut tears = vec![
            (Tear::None, 0),
            (Tear::Bytes(len), u64::MAX),
            (Tear::Bytes(len / 2), len as u64 / 2),
            (Tear::Bytes(content as usize - 1), content - 1),
            (Tear::Sectors(1), 512),
        ];
        for seed in 0..8 {
            tears.push((Tear::Scattered(k * 100 + seed), u64::MAX - 1));
        }
        for (tear, kept) in tears {
            let disk = storage.crash(tear);
            let (mut j2, replayed) = reopen(&disk, &cfg, Some(checkpoint));
            let mut expected: Vec<Record> = acked
                .iter()
                .filter(|r| r.seq >= checkpoint.seq)
                .cloned()
                .collect();
            let first = acked.last().map_or(1, |r| r.seq + 1);
            let whole: Vec<Record> = in_flight
                .iter()
                .enumerate()
                .map(|(i, o)| o.record(first + i as u64))
                .collect();
            if kept == u64::MAX - 1 {
                // Scattered sectors: either all of the content persisted or the group is out.
                if replayed.len() > expected.len() {
                    expected.extend(whole);
                }
            } else if kept >= content {
                expected.extend(whole);
            }
            assert_eq!(replayed, expected, "cut at flush {k}, {tear:?}");
            // And the recovered journal appends and replays after the prefix.
            let pos = append(&mut j2, &group(77, 1, 10), &mut expected).unwrap();
            assert_eq!(pos.seq, expected.last().unwrap().seq + 1);
            drop(j2);
            let (_, again) = reopen(&disk.crash(Tear::None), &cfg, Some(checkpoint));
            assert_eq!(
                again, expected,
                "cut at flush {k}, {tear:?}, after recovery"
            );
        }
    }
}

#[test]
fn failed_flush_poisons_until_reopen() {
    let cfg = config(3, 8, Durability::Full);
    let (storage, mut j) = fresh(&cfg);
    let mut acked = Vec::new();
    append(&mut j, &group(1, 1, 100), &mut acked).unwrap();
    storage.fail_flush(1);
    let e = j.append_group(&inputs(&group(2, 2, 100))).unwrap_err();
    assert!(matches!(e, JournalError::Io { op: "flush", .. }), "{e}");
    assert!(j.is_poisoned());
    let writes = storage.writes();
    for tag in 3..6 {
        let e = j.append_group(&inputs(&group(tag, 1, 100))).unwrap_err();
        assert!(matches!(e, JournalError::Poisoned("flush")), "{e}");
    }
    assert_eq!(
        storage.writes(),
        writes,
        "a poisoned journal writes nothing"
    );
    // Power lost before any recovery: the group whose flush failed is not there.
    let (_, replayed) = reopen(&storage.crash(Tear::None), &cfg, None);
    assert_eq!(replayed, acked);
}

#[test]
fn reopen_after_failed_flush_makes_the_replayed_prefix_durable() {
    let cfg = config(3, 8, Durability::Full);
    let (storage, mut j) = fresh(&cfg);
    let mut acked = Vec::new();
    append(&mut j, &group(1, 1, 100), &mut acked).unwrap();
    storage.fail_flush(1);
    let failed = group(2, 2, 3000);
    assert!(j.append_group(&inputs(&failed)).is_err());
    drop(j);
    // Reopened in the same process: the failed group is still readable (page cache) and
    // replays; recovery writes it again and flushes before appending anything.
    let (mut j, replayed) = reopen(&storage, &cfg, None);
    acked.extend(
        failed
            .iter()
            .enumerate()
            .map(|(i, o)| o.record(2 + i as u64)),
    );
    assert_eq!(replayed, acked);
    append(&mut j, &group(3, 1, 10), &mut acked).unwrap();
    drop(j);
    let (_, replayed) = reopen(&storage.crash(Tear::None), &cfg, None);
    assert_eq!(
        replayed, acked,
        "what recovery replayed survives a power cut"
    );
}

#[test]
fn failed_write_poisons() {
    let cfg = config(3, 8, Durability::Full);
    let (storage, mut j) = fresh(&cfg);
    let mut acked = Vec::new();
    append(&mut j, &group(1, 1, 100), &mut acked).unwrap();
    storage.fail_write(1);
    let e = j.append_group(&inputs(&group(2, 1, 100))).unwrap_err();
    assert!(matches!(e, JournalError::Io { op: "write", .. }), "{e}");
    let e = j.append_group(&inputs(&group(3, 1, 100))).unwrap_err();
    assert!(matches!(e, JournalError::Poisoned("write")), "{e}");
    let (mut j, replayed) = reopen(&storage, &cfg, None);
    assert_eq!(replayed, acked);
    append(&mut j, &group(4, 1, 100), &mut acked).unwrap();
}

/// A fresh ring filled with six one-block groups (tags 1 to 6), which is all that `cfg`
/// holds when it has three two-block segments: the records and each group's end position.
fn full_ring(
    cfg: &JournalConfig,
) -> (
    CrashStorage,
    Journal<CrashStorage>,
    Vec<Record>,
    Vec<Position>,
) {
    let (storage, mut j) = fresh(cfg);
    let mut acked = Vec::new();
    let mut positions = Vec::new();
    for tag in 1..=6 {
        positions.push(append(&mut j, &group(tag, 1, 1000), &mut acked).unwrap());
    }
    (storage, j, acked, positions)
}

#[test]
fn full_ring_refuses_until_released_and_never_overwrites() {
    let cfg = config(3, 2, Durability::Full);
    let (storage, mut j, mut acked, positions) = full_ring(&cfg);
    assert_eq!(j.free_segments(), 0);
    let writes = storage.writes();
    for _ in 0..3 {
        let e = j.append_group(&inputs(&group(7, 1, 1000))).unwrap_err();
        assert!(matches!(e, JournalError::Full), "{e}");
    }
    assert!(!j.is_poisoned(), "Full is backpressure, not a failure");
    assert_eq!(storage.writes(), writes, "nothing written while full");
    // Releasing inside segment 0 frees nothing; through its last group frees it.
    j.release_through(&positions[0]).unwrap();
    assert!(matches!(
        j.append_group(&inputs(&group(7, 1, 1000))),
        Err(JournalError::Full)
    ));
    j.release_through(&positions[1]).unwrap();
    assert_eq!(j.free_segments(), 1);
    append(&mut j, &group(7, 1, 1000), &mut acked).unwrap();
    // Everything after the checkpoint is still there.
    drop(j);
    let (_, replayed) = reopen(&storage.crash(Tear::None), &cfg, Some(positions[1]));
    assert_eq!(seqs(&replayed), vec![3, 4, 5, 6, 7]);
    assert_eq!(replayed[..], acked[2..]);
    // A position the journal has not reached is refused.
    let (mut j, _) = reopen(&storage, &cfg, Some(positions[1]));
    let beyond = Position {
        seq: 100,
        ..positions[1]
    };
    assert!(matches!(
        j.release_through(&beyond),
        Err(JournalError::BadPosition(_))
    ));
}

/// A new lap needs its epoch stored first; on a full filesystem that fails (ENOSPC). The
/// old state stands and nothing of the lap was written, so the group is refused without
/// poisoning the journal, and once there is room the next group starts the lap.
#[test]
fn a_new_laps_state_without_space_is_refused_without_poisoning() {
    let cfg = config(3, 2, Durability::Full);
    let (storage, mut j, mut acked, positions) = full_ring(&cfg);
    j.release_through(&positions[1]).unwrap();
    let (epoch, writes) = (j.epoch(), storage.writes());
    storage.state_out_of_space(2);
    for _ in 0..2 {
        let e = j.append_group(&inputs(&group(7, 1, 1000))).unwrap_err();
        assert!(
            matches!(e, JournalError::StateNoSpace(_)) && e.is_out_of_space() && e.wrote_nothing(),
            "{e}"
        );
    }
    assert!(!j.is_poisoned(), "out of space is a refusal, not a failure");
    assert_eq!(storage.writes(), writes, "nothing of the lap written");
    assert_eq!(j.epoch(), epoch);
    // Room again: the lap starts, under a new epoch.
    let last = append(&mut j, &group(7, 1, 1000), &mut acked).unwrap();
    assert_eq!((last.segment, j.epoch()), (0, epoch + 1));
    drop(j);
    let (_, replayed) = reopen(&storage.crash(Tear::None), &cfg, Some(positions[1]));
    assert_eq!(seqs(&replayed), vec![3, 4, 5, 6, 7]);
    assert_eq!(replayed[..], acked[2..]);
}

#[test]
fn oversized_group_is_refused_without_poisoning() {
    let cfg = JournalConfig {
        max_group_bytes: 2 * B,
        ..config(3, 4, Durability::Full)
    };
    let (storage, mut j) = fresh(&cfg);
    let e = j.append_group(&inputs(&group(1, 1, 9000))).unwrap_err();
    assert!(matches!(e, JournalError::TooLarge { len, limit } if len == 3 * B && limit == 2 * B));
    assert_eq!(storage.writes(), 0);
    let mut acked = Vec::new();
    append(&mut j, &group(2, 1, 5000), &mut acked).unwrap();
    assert_eq!(
        j.append_group(&[]).unwrap(),
        j.position(),
        "an empty group writes nothing"
    );
}

#[test]
fn a_missing_segment_is_refused_not_recreated() {
    let cfg = config(3, 4, Durability::Full);
    let (storage, mut j) = fresh(&cfg);
    append(&mut j, &group(1, 1, 10), &mut Vec::new()).unwrap();
    drop(j);
    storage.remove_segment(1);
    let e = Journal::open(storage, cfg.clone(), None).err().unwrap();
    assert!(
        matches!(&e, JournalError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{e}"
    );
    // The same on files.
    let dir = tempfile::tempdir().unwrap();
    let path = journal_dir(dir.path(), 0);
    drop(
        Journal::open_dir(&path, cfg.clone(), None)
            .unwrap()
            .finish()
            .unwrap(),
    );
    std::fs::remove_file(path.join("seg-2")).unwrap();
    let e = Journal::open_dir(&path, cfg, None).err().unwrap();
    assert!(
        matches!(&e, JournalError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{e}"
    );
}

#[test]
fn exhausted_sequence_numbers_are_an_error() {
    let cfg = config(3, 4, Durability::Full);
    let storage = CrashStorage::new();
    let last = Position {
        seq: u64::MAX,
        ..Position::GENESIS
    };
    let mut j = Journal::open(storage, cfg, Some(last))
        .unwrap()
        .finish()
        .unwrap();
    let e = j.append_group(&inputs(&group(1, 1, 10))).unwrap_err();
    assert!(matches!(e, JournalError::State(_)), "{e}");
    assert!(!j.is_poisoned());
}

#[test]
fn opening_without_checkpoint_after_a_wrap_is_refused() {
    let cfg = config(3, 4, Durability::Full);
    let (disk, checkpoint, _, _) = wrapped_ring(&cfg);
    assert!(matches!(
        Journal::open(disk.clone(), cfg.clone(), None),
        Err(JournalError::CheckpointRequired)
    ));
    assert!(Journal::open(disk, cfg, Some(checkpoint)).is_ok());
}

#[test]
fn a_different_geometry_or_foreign_position_is_refused() {
    let cfg = config(3, 4, Durability::Full);
    let (storage, _j) = fresh(&cfg);
    for other in [
        config(4, 4, Durability::Full),
        config(3, 8, Durability::Full),
    ] {
        assert!(matches!(
            Journal::open(storage.clone(), other, None),
            Err(JournalError::Config(_))
        ));
    }
    for bad in [
        Position {
            segment: 3,
            ..Position::GENESIS
        },
        Position {
            offset: 100,
            ..Position::GENESIS
        },
        Position {
            epoch: 1000,
            ..Position::GENESIS
        },
    ] {
        assert!(matches!(
            Journal::open(storage.clone(), cfg.clone(), Some(bad)),
            Err(JournalError::BadPosition(_))
        ));
    }
    let p = Position {
        epoch: 7,
        segment: 2,
        offset: 8192,
        seq: 1 << 40,
        link: 0xfeed_f00d,
    };
    assert_eq!(Position::from_bytes(&p.to_bytes()), Some(p));
    assert_eq!(Position::from_bytes(&[0u8; 27]), None);
}

#[test]
fn random_workloads_with_random_crashes() {
    // How often each situation came up over all seeds (all must, or the test proves little).
    let (mut cuts, mut fulls, mut laps, mut whole_in_flight) = (0, 0, 0, 0);
    for seed in 0..60u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let blocks = rng.u64(3..10);
        let cfg = JournalConfig {
            segment_count: rng.u32(2..5),
            segment_size: blocks * B,
            max_group_bytes: rng.u64(1..=blocks) * B,
            durability: Durability::Full,
        };
        let mut disk = CrashStorage::new();
        let mut checkpoint: Option<Position> = None;
        // Every acknowledged record not yet behind the checkpoint, and the group whose flush
        // was cut (it replays only if the crash kept all of its bytes).
        let mut acked: Vec<Record> = Vec::new();
        let mut in_flight: Vec<Record> = Vec::new();
        let mut tag = 0u64;
        let mut replayed_total = 0;
        for round in 0..5 {
            let (mut j, replayed) = reopen(&disk, &cfg, checkpoint);
            let from = checkpoint.map_or(1, |p| p.seq);
            acked.retain(|r| r.seq >= from);
            let mut with_in_flight = acked.clone();
            with_in_flight.extend(in_flight.iter().cloned());
            assert!(
                replayed == acked || replayed == with_in_flight,
                "seed {seed} round {round}: replayed {:?}, acknowledged {:?}, in flight {:?}",
                seqs(&replayed),
                seqs(&acked),
                seqs(&in_flight)
            );
            replayed_total += replayed.len();
            if !in_flight.is_empty() && replayed == with_in_flight {
                whole_in_flight += 1;
            }
            acked = replayed;
            in_flight.clear();
            let mut positions = vec![j.position()];
            if rng.bool() {
                disk.cut_power_at_flush(rng.u64(1..40));
            }
            for _ in 0..rng.usize(1..40) {
                tag += 1;
                let objs: Vec<Obj> = (0..rng.usize(1..5))
                    .map(|i| {
                        Obj::new(
                            tag * 10 + i as u64,
                            rng.usize(0..200),
                            rng.usize(0..200),
                            rng.usize(0..6000),
                        )
                    })
                    .collect();
                let first = j.position().seq;
                let mut release = rng.u8(..10) == 0;
                match append(&mut j, &objs, &mut acked) {
                    Ok(p) => positions.push(p),
                    Err(JournalError::TooLarge { .. }) => {}
                    // The materializer catches up (to a random acknowledged group).
                    Err(JournalError::Full) => {
                        fulls += 1;
                        release = true;
                    }
                    Err(JournalError::Io { .. }) => {
                        cuts += 1;
                        in_flight = objs
                            .iter()
                            .enumerate()
                            .map(|(i, o)| o.record(first + i as u64))
                            .collect();
                        break;
                    }
                    Err(e) => panic!("seed {seed}: {e}"),
                }
                if release {
                    let p = positions[rng.usize(..positions.len())];
                    if checkpoint.is_none_or(|c| c.seq <= p.seq) {
                        j.release_through(&p).unwrap();
                        checkpoint = Some(p);
                    }
                }
            }
            let tear = match rng.u8(..4) {
                0 => Tear::None,
                1 => Tear::Bytes(rng.usize(..20000)),
                2 => Tear::Sectors(rng.usize(..40)),
                _ => Tear::Scattered(rng.u64(..)),
            };
            if j.position().segment < positions[0].segment {
                laps += 1;
            }
            drop(j);
            disk = disk.crash(tear);
        }
        assert!(replayed_total > 0, "seed {seed} replayed nothing at all");
    }
    assert!(
        cuts > 20 && fulls > 20 && laps > 20 && whole_in_flight > 0,
        "cuts {cuts}, full {fulls}, wraps {laps}, whole in-flight groups replayed {whole_in_flight}"
    );
}

#[test]
fn file_storage_replays_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (durability, mode)) in [
        (Durability::Full, IoMode::Auto),
        (Durability::Full, IoMode::Buffered),
        (Durability::Relaxed, IoMode::Auto),
    ]
    .into_iter()
    .enumerate()
    {
        let path = journal_dir(dir.path(), i);
        let cfg = config(4, 16, durability);
        let storage = FileStorage::open(&path, durability, mode).unwrap();
        if mode == IoMode::Buffered || durability == Durability::Relaxed {
            assert_eq!(storage.io(), FileIo::Buffered);
        }
        let mut j = Journal::open(storage, cfg.clone(), None)
            .unwrap()
            .finish()
            .unwrap();
        let mut expected = Vec::new();
        let mut last = Position::GENESIS;
        for tag in 1..=10 {
            let objs = group(tag, tag as usize % 3 + 1, 7000);
            last = j.append_group(&inputs(&objs)).unwrap();
            let first = last.seq - objs.len() as u64;
            expected.extend(
                objs.iter()
                    .enumerate()
                    .map(|(k, o)| o.record(first + k as u64)),
            );
        }
        drop(j);
        for k in 0..4 {
            let meta = std::fs::metadata(path.join(format!("seg-{k}"))).unwrap();
            assert_eq!(meta.len(), 16 * B);
            use std::os::unix::fs::MetadataExt;
            assert!(meta.blocks() * 512 >= 16 * B, "segment {k} is allocated");
        }
        let (j, replayed) = Journal::open_dir(&path, cfg.clone(), None)
            .unwrap()
            .collect_all()
            .unwrap();
        assert_eq!(replayed, expected, "{durability:?} {mode:?}");
        assert_eq!(j.position().seq, last.seq);
    }
}

/// Two groups in flight (reserved in order, written in the other order): a power cut with
/// only the second on disk replays neither; with both, both; a failed write of the first
/// poisons the journal for every later reservation.
#[test]
fn groups_in_flight_replay_only_as_a_chain_from_the_checkpoint() {
    let cfg = config(3, 8, Durability::Full);
    let (storage, mut j) = fresh(&cfg);
    let mut acked = Vec::new();
    append(&mut j, &group(1, 2, 300), &mut acked).unwrap();
    let (a, b) = (group(2, 2, 900), group(3, 1, 900));
    let (mut buf_a, mut buf_b) = (AlignedBuf::new(B as usize), AlignedBuf::new(B as usize));
    let ra = j.reserve(&inputs(&a), &mut buf_a).unwrap();
    let rb = j.reserve(&inputs(&b), &mut buf_b).unwrap();
    assert_eq!(rb.end, j.position());
    assert_eq!(ra.end.seq + 1, rb.end.seq, "seqs follow reservation order");

    // B reached the disk, A never did.
    rb.write(&buf_b).unwrap();
    let (_, replayed) = reopen(&storage.crash(Tear::None), &cfg, None);
    assert_eq!(replayed, acked, "B without A is not part of the chain");

    // Both written: both replay, in reservation order.
    ra.write(&buf_a).unwrap();
    let first = ra.end.seq - a.len() as u64;
    let mut both = acked.clone();
    both.extend(
        a.iter()
            .enumerate()
            .map(|(i, o)| o.record(first + i as u64)),
    );
    both.extend(b.iter().map(|o| o.record(rb.end.seq - 1)));
    let (_, replayed) = reopen(&storage.crash(Tear::None), &cfg, None);
    assert_eq!(replayed, both);

    // A third in flight fails its write: the journal refuses every later reservation.
    storage.fail_write(1);
    let rc = j.reserve(&inputs(&group(4, 1, 100)), &mut buf_a).unwrap();
    let err = rc.write(&buf_a).unwrap_err();
    j.poison(&err);
    assert!(matches!(
        j.reserve(&inputs(&group(5, 1, 100)), &mut buf_b),
        Err(JournalError::Poisoned("write"))
    ));
}
