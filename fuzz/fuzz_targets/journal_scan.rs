//! The journal's record decoder and scan (`store::journal::format`), and replay through the
//! journal itself, over arbitrary bytes: no panic, no allocation from a hostile length; what
//! is accepted is a well-formed chain that re-encodes to the same bytes; in a valid image
//! damaged by one flipped byte, exactly the groups before the damage are found.
#![no_main]

#[path = "common/alloc_guard.rs"]
mod alloc_guard;

use dicom_gw::config::Durability;
use dicom_gw::store::journal::format::{self, Expect, GroupMeta, RecordIn, BLOCK};
use dicom_gw::store::journal::{
    CrashStorage, Journal, JournalConfig, JournalError, Position, Storage, Tear,
};
use libfuzzer_sys::fuzz_target;

const MAX_GROUP: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    match mode % 3 {
        0 => raw_scan(rest),
        1 => damaged_chain(rest),
        _ => replay(rest),
    }
});

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut x = [0u8; 8];
    for (k, v) in x.iter_mut().enumerate() {
        *v = b.get(i + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(x)
}

/// Arbitrary bytes as a segment image, with an expectation taken from the first 16 bytes.
fn raw_scan(rest: &[u8]) {
    let (head, image) = rest.split_at(rest.len().min(16));
    let epoch_min = u64_at(head, 8) as u32 & 0xff;
    let expect = Expect {
        seq: u64_at(head, 0),
        epoch_min,
        epoch_max: epoch_min + (u64_at(head, 12) as u32 & 0xff),
        link: (u64_at(head, 8) >> 32) as u32,
    };
    let s = format::scan(image, 0, expect, MAX_GROUP);
    check_chain(image, &s, expect);
}

/// Everything `scan` accepted is a contiguous chain that re-encodes byte for byte.
fn check_chain(image: &[u8], s: &format::Scan<'_>, expect: Expect) {
    assert!(s.end as usize <= image.len());
    assert_eq!(s.end % BLOCK as u64, 0);
    let mut at = 0u64;
    let mut next = expect;
    for (off, g) in &s.groups {
        assert_eq!(*off, at);
        let h = &g.header;
        assert_eq!(h.first_seq, next.seq);
        assert_eq!(h.prev, next.link);
        assert!(h.epoch >= next.epoch_min && h.epoch <= next.epoch_max);
        assert_eq!(g.records.len(), h.count as usize);
        for (i, r) in g.records.iter().enumerate() {
            assert_eq!(r.seq, h.first_seq + i as u64);
        }
        let padded = h.padded_len() as usize;
        assert!(padded as u64 <= MAX_GROUP);
        let inputs: Vec<RecordIn<'_>> = g.records.iter().map(|r| r.as_input()).collect();
        let mut out = vec![0u8; padded];
        let again = format::encode_group(
            &mut out,
            &GroupMeta {
                epoch: h.epoch,
                first_seq: h.first_seq,
                prev: h.prev,
                flags: h.flags,
            },
            &inputs,
        );
        assert_eq!(&again, h);
        let content = format::GROUP_HEADER_LEN + h.body_len as usize;
        assert_eq!(
            out[..content],
            image[*off as usize..*off as usize + content]
        );
        next = h.next(expect.epoch_max);
        at += padded as u64;
    }
    assert_eq!(at, s.end);
    assert_eq!(s.next, next);
}

/// Groups built from the input, encoded back to back, then one byte flipped (or zeros from
/// an offset on): the scan finds the groups before the damage and nothing that was not
/// written.
fn damaged_chain(rest: &[u8]) {
    if rest.len() < 4 {
        return;
    }
    let (ctl, payload) = rest.split_at(4);
    let groups = usize::from(ctl[0] % 6) + 1;
    let mut sizes = payload.iter().copied().cycle();
    let mut fill = payload
        .iter()
        .copied()
        .chain(std::iter::repeat(0x5a))
        .cycle();
    let mut owned: Vec<Vec<(u16, Vec<u8>, Vec<u8>, Vec<u8>)>> = Vec::new();
    for _ in 0..groups {
        let n = usize::from(sizes.next().unwrap_or(0) % 4) + 1;
        let mut recs = Vec::new();
        for _ in 0..n {
            let s = usize::from(sizes.next().unwrap_or(0));
            let mut take = |len: usize| -> Vec<u8> { (&mut fill).take(len).collect() };
            recs.push((s as u16, take(s % 40), take(s % 17), take(s * 23 % 6000)));
        }
        owned.push(recs);
    }
    let epoch = u32::from(ctl[1] % 4);
    let start = Expect {
        seq: u64::from(ctl[2]) + 1,
        epoch_min: epoch,
        epoch_max: epoch + 1,
        link: u32::from(ctl[3]),
    };
    let mut image = vec![0u8; owned.len() * 8 * BLOCK];
    let mut at = 0usize;
    let mut next = start;
    let mut spans = Vec::new();
    for recs in &owned {
        let inputs: Vec<RecordIn<'_>> = recs
            .iter()
            .map(|(f, m, h, d)| RecordIn {
                flags: *f,
                meta: m,
                header: h,
                dataset: d,
            })
            .collect();
        let h = format::encode_group(
            &mut image[at..],
            &GroupMeta {
                epoch: next.epoch_min.max(epoch + (ctl[1] >> 7) as u32),
                first_seq: next.seq,
                prev: next.link,
                flags: 0,
            },
            &inputs,
        );
        spans.push((at, at + format::GROUP_HEADER_LEN + h.body_len as usize));
        next = h.next(start.epoch_max);
        at += h.padded_len() as usize;
    }
    let whole = format::scan(&image, 0, start, MAX_GROUP);
    assert_eq!(whole.groups.len(), owned.len());
    check_chain(&image, &whole, start);

    let damage = (u64_at(payload, 0) as usize) % at.max(1);
    let flip = ctl[1] & 0x40 == 0;
    if flip {
        image[damage] ^= ctl[2] | 1;
    } else {
        image[damage..].fill(0);
    }
    let s = format::scan(&image, 0, start, MAX_GROUP);
    check_chain(&image, &s, start);
    let intact = spans.iter().take_while(|(_, end)| *end <= damage).count();
    let hit = spans
        .iter()
        .position(|(a, end)| damage >= *a && damage < *end);
    if flip {
        // CRC32C catches every single-byte change; a flip in padding changes nothing.
        let want = hit.unwrap_or(owned.len());
        assert_eq!(s.groups.len(), want, "flip at {damage}");
    } else {
        assert!(s.groups.len() >= intact, "zeros from {damage}");
    }
    for (k, (_, g)) in s.groups.iter().enumerate() {
        assert_eq!(g.records.len(), owned[k].len());
        for (r, (f, m, h, d)) in g.records.iter().zip(&owned[k]) {
            assert_eq!(
                (r.flags, r.meta, r.header, r.dataset),
                (*f, &m[..], &h[..], &d[..])
            );
        }
    }
}

/// The bytes as segment 0 of a two-segment ring on `CrashStorage`, replayed by the journal
/// from a checkpoint taken from the input; then one append and a second replay.
fn replay(rest: &[u8]) {
    let (head, image) = rest.split_at(rest.len().min(12));
    let cfg = JournalConfig {
        segment_count: 2,
        segment_size: 16 * BLOCK as u64,
        max_group_bytes: 8 * BLOCK as u64,
        durability: Durability::Full,
    };
    let mut disk = CrashStorage::new();
    // Creates the ring (epoch 0) so the image can be put into segment 0.
    let _ = disk.segment(0, cfg.segment_size, true);
    let image = &image[..image.len().min(cfg.segment_size as usize)];
    disk.poke(0, 0, image);
    let checkpoint = Position {
        epoch: 0,
        segment: 0,
        offset: 0,
        seq: u64_at(head, 0).max(1),
        link: (u64_at(head, 4) >> 32) as u32,
    };
    let Ok(mut r) = Journal::open(disk.clone(), cfg.clone(), Some(checkpoint)) else {
        return;
    };
    let mut seen = Vec::new();
    while let Some(g) = r.next_group().expect("in-memory reads do not fail") {
        assert!(!g.records.is_empty());
        for rec in &g.records {
            seen.push((rec.seq, rec.dataset.to_vec()));
        }
    }
    let mut j = r.finish().expect("finish");
    let before = j.position();
    assert_eq!(before.seq, checkpoint.seq + seen.len() as u64);
    let added = match j.append_group(&[RecordIn {
        flags: 1,
        meta: b"m",
        header: b"h",
        dataset: head,
    }]) {
        Ok(p) => p,
        Err(JournalError::State(_)) if before.seq == u64::MAX => return,
        Err(e) => panic!("append after replay: {e}"),
    };
    drop(j);
    let (_, again) = Journal::open(disk.crash(Tear::None), cfg, Some(checkpoint))
        .expect("reopen")
        .collect_all()
        .expect("replay");
    // What the first replay saw, then the append. (Bytes behind it could only continue the
    // chain if the input forged a group of an epoch the journal had not handed out yet.)
    assert!(again.len() > seen.len());
    for (a, (seq, d)) in again.iter().zip(&seen) {
        assert_eq!((a.seq, &a.dataset), (*seq, d));
    }
    let mine = &again[seen.len()];
    assert_eq!((mine.seq, &mine.dataset[..]), (added.seq - 1, head));
}
