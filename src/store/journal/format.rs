//! The journal's bytes: pure encode and decode, no I/O (fuzzed by
//! `fuzz/fuzz_targets/journal_scan.rs`). The layout is described in the parent module.
//!
//! Decoding never allocates from a length field: a group header's lengths are checked
//! against the room left in the segment and the configured group limit before the caller
//! reads the body, and records are slices of bytes already in memory.

/// Alignment and padding unit of groups: one write of whole blocks at a block-aligned offset,
/// as `O_DIRECT` needs.
pub const BLOCK: usize = 4096;
/// Length of a group header.
pub const GROUP_HEADER_LEN: usize = 64;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 48;
/// First bytes of a group header.
pub const GROUP_MAGIC: [u8; 4] = *b"DGJG";
/// First bytes of a record header.
pub const RECORD_MAGIC: [u8; 4] = *b"DGJR";
/// Format version of groups and records.
pub const VERSION: u8 = 1;
/// Group flag: the group was written without a flush (`durability = "relaxed"`).
pub const GROUP_RELAXED: u16 = 1;

/// One record to append: the three opaque sections and the caller's flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordIn<'a> {
    /// Caller-defined flags, stored and replayed as they are.
    pub flags: u16,
    /// Index record, routing and duplicate outcome as the integrator encodes them.
    pub meta: &'a [u8],
    /// Part-10 header bytes (preamble, `DICM`, File Meta group).
    pub header: &'a [u8],
    /// Dataset bytes exactly as received.
    pub dataset: &'a [u8],
}

impl RecordIn<'_> {
    /// Encoded length of this record (header and sections, unpadded).
    pub fn encoded_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64
            + self.meta.len() as u64
            + self.header.len() as u64
            + self.dataset.len() as u64
    }
}

/// A record decoded from a group: slices of the group's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Sequence number (contiguous over the whole journal).
    pub seq: u64,
    /// The caller's flags.
    pub flags: u16,
    /// The `meta` section.
    pub meta: &'a [u8],
    /// The `header` section.
    pub header: &'a [u8],
    /// The `dataset` section.
    pub dataset: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// The same record as input for [`encode_group`] (round trips in tests and the fuzzer).
    pub fn as_input(&self) -> RecordIn<'a> {
        RecordIn {
            flags: self.flags,
            meta: self.meta,
            header: self.header,
            dataset: self.dataset,
        }
    }
}

/// What the writer puts in a group header besides the lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupMeta {
    /// The writer's epoch (one per lap of the ring and per opening of the journal).
    pub epoch: u32,
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// The previous group's checksum ([`GroupHeader::link`]), 0 for the first group ever.
    pub prev: u32,
    /// Group flags ([`GROUP_RELAXED`]).
    pub flags: u16,
}

/// What the scanner expects of the next group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// Its first sequence number (the previous group's last + 1).
    pub seq: u64,
    /// The previous group's epoch: epochs never go down along the journal.
    pub epoch_min: u32,
    /// The highest epoch the journal has ever handed out (stored before first use).
    pub epoch_max: u32,
    /// The previous group's checksum.
    pub link: u32,
}

/// Why bytes are not the expected next group. The scan stops at the first of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// Fewer bytes than a header, or than the header's lengths announce.
    #[error("short: {have} bytes, {need} needed")]
    Short {
        /// Bytes available.
        have: u64,
        /// Bytes needed.
        need: u64,
    },
    /// No group magic (zeros, garbage, or the middle of older data).
    #[error("no group magic")]
    Magic,
    /// A version or reserved field this build does not know.
    #[error("unknown version or non-zero reserved field")]
    Version,
    /// The group header's own checksum fails (torn or stale header).
    #[error("group header checksum mismatch")]
    HeaderChecksum,
    /// The epoch is below the previous group's or above any ever handed out (older lap, a
    /// rewritten timeline, or garbage).
    #[error("epoch {found} outside {min}..={max}")]
    Epoch {
        /// Epoch in the header.
        found: u32,
        /// Lowest acceptable.
        min: u32,
        /// Highest acceptable.
        max: u32,
    },
    /// The first sequence number is not the expected one.
    #[error("sequence {found}, expected {expected}")]
    Seq {
        /// In the header.
        found: u64,
        /// Expected.
        expected: u64,
    },
    /// The group does not name the previous group's checksum.
    #[error("link {found:08x}, expected {expected:08x}")]
    Link {
        /// In the header.
        found: u32,
        /// Expected.
        expected: u32,
    },
    /// Lengths that cannot be (no record, more than the room or the limit, overflow).
    #[error("group length {body_len} with {count} records does not fit ({limit} bytes allowed)")]
    Length {
        /// Body length in the header.
        body_len: u64,
        /// Record count in the header.
        count: u32,
        /// Room left (segment and group limit).
        limit: u64,
    },
    /// A record header is wrong (magic, version, sequence, epoch or lengths).
    #[error("record {index} of the group is malformed")]
    Record {
        /// Index of the record in its group.
        index: u32,
    },
    /// A record's checksum fails (torn write).
    #[error("record {index} checksum mismatch")]
    RecordChecksum {
        /// Index of the record in its group.
        index: u32,
    },
    /// The records do not fill the body exactly, or the body checksum fails.
    #[error("group body does not match its header")]
    Body,
}

/// A decoded, checked group header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHeader {
    /// Writer's epoch.
    pub epoch: u32,
    /// Number of records.
    pub count: u32,
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Length of the records' bytes after the header.
    pub body_len: u64,
    /// The previous group's checksum.
    pub prev: u32,
    /// Group flags.
    pub flags: u16,
    /// This group's checksum: the header CRC, which covers the body checksum, which covers
    /// every record's CRC. The next group names it.
    pub link: u32,
    body_crc: u32,
}

impl GroupHeader {
    /// Bytes the group occupies on disk, padding included.
    pub fn padded_len(&self) -> u64 {
        padded_len(self.body_len)
    }

    /// What the group after this one must carry.
    pub fn next(&self, epoch_max: u32) -> Expect {
        Expect {
            seq: self.first_seq + u64::from(self.count),
            epoch_min: self.epoch,
            epoch_max,
            link: self.link,
        }
    }
}

/// A decoded group: its header and records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<'a> {
    /// The header.
    pub header: GroupHeader,
    /// The records, in sequence order.
    pub records: Vec<RecordRef<'a>>,
}

/// Sum of the records' encoded lengths; `None` on overflow.
pub fn body_len(records: &[RecordIn<'_>]) -> Option<u64> {
    records
        .iter()
        .try_fold(0u64, |acc, r| acc.checked_add(r.encoded_len()))
}

/// Bytes a group with `body_len` bytes of records occupies: header + body, rounded up to
/// [`BLOCK`]. Saturates instead of overflowing (such a length is refused anyway).
pub fn padded_len(body_len: u64) -> u64 {
    let b = BLOCK as u64;
    body_len
        .saturating_add(GROUP_HEADER_LEN as u64)
        .saturating_add(b - 1)
        / b
        * b
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Encodes a group into `out[..padded_len]` (zero padding included) and returns the group
/// header as the decoder will read it.
///
/// # Panics
/// If `records` is empty, more than `u32::MAX` records, or `out` is shorter than the padded
/// length: the journal checks these before calling.
pub fn encode_group(out: &mut [u8], g: &GroupMeta, records: &[RecordIn<'_>]) -> GroupHeader {
    assert!(!records.is_empty(), "a group holds at least one record");
    let count = u32::try_from(records.len()).expect("record count fits u32");
    let body = body_len(records).expect("group length fits u64");
    let padded = padded_len(body) as usize;
    assert!(out.len() >= padded, "output buffer shorter than the group");

    let mut at = GROUP_HEADER_LEN;
    let mut body_crc = 0u32;
    for (i, r) in records.iter().enumerate() {
        let h = &mut out[at..at + RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&RECORD_MAGIC);
        h[4] = VERSION;
        h[5] = 0;
        h[6..8].copy_from_slice(&r.flags.to_le_bytes());
        h[8..16].copy_from_slice(&(g.first_seq + i as u64).to_le_bytes());
        h[16..20].copy_from_slice(&g.epoch.to_le_bytes());
        h[20..24].copy_from_slice(&(r.meta.len() as u32).to_le_bytes());
        h[24..28].copy_from_slice(&(r.header.len() as u32).to_le_bytes());
        h[28..32].copy_from_slice(&0u32.to_le_bytes());
        h[32..40].copy_from_slice(&(r.dataset.len() as u64).to_le_bytes());
        h[40..44].copy_from_slice(&0u32.to_le_bytes());
        let mut crc = crc32c::crc32c(&h[..44]);
        at += RECORD_HEADER_LEN;
        for section in [r.meta, r.header, r.dataset] {
            out[at..at + section.len()].copy_from_slice(section);
            crc = crc32c::crc32c_append(crc, section);
            at += section.len();
        }
        let start = at - r.encoded_len() as usize;
        out[start + 44..start + 48].copy_from_slice(&crc.to_le_bytes());
        body_crc = crc32c::crc32c_append(body_crc, &crc.to_le_bytes());
    }
    out[at..padded].fill(0);

    let h = &mut out[..GROUP_HEADER_LEN];
    h[0..4].copy_from_slice(&GROUP_MAGIC);
    h[4] = VERSION;
    h[5] = 0;
    h[6..8].copy_from_slice(&g.flags.to_le_bytes());
    h[8..12].copy_from_slice(&g.epoch.to_le_bytes());
    h[12..16].copy_from_slice(&count.to_le_bytes());
    h[16..24].copy_from_slice(&g.first_seq.to_le_bytes());
    h[24..32].copy_from_slice(&body.to_le_bytes());
    h[32..36].copy_from_slice(&g.prev.to_le_bytes());
    h[36..40].copy_from_slice(&body_crc.to_le_bytes());
    h[40..60].fill(0);
    let link = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&link.to_le_bytes());
    GroupHeader {
        epoch: g.epoch,
        count,
        first_seq: g.first_seq,
        body_len: body,
        prev: g.prev,
        flags: g.flags,
        link,
        body_crc,
    }
}

/// Checks a group header (the first [`GROUP_HEADER_LEN`] bytes of `bytes`) against what the
/// scan expects. `limit` is the most bytes the group may occupy, padding included: the room
/// left in the segment, capped by the configured group limit. Nothing is allocated.
pub fn decode_group_header(
    bytes: &[u8],
    expect: &Expect,
    limit: u64,
) -> Result<GroupHeader, Invalid> {
    let Some(h) = bytes.get(..GROUP_HEADER_LEN) else {
        return Err(Invalid::Short {
            have: bytes.len() as u64,
            need: GROUP_HEADER_LEN as u64,
        });
    };
    if h[0..4] != GROUP_MAGIC {
        return Err(Invalid::Magic);
    }
    let link = le32(h, 60);
    if crc32c::crc32c(&h[..60]) != link {
        return Err(Invalid::HeaderChecksum);
    }
    if h[4] != VERSION || h[5] != 0 || h[40..60].iter().any(|&b| b != 0) {
        return Err(Invalid::Version);
    }
    let header = GroupHeader {
        flags: le16(h, 6),
        epoch: le32(h, 8),
        count: le32(h, 12),
        first_seq: le64(h, 16),
        body_len: le64(h, 24),
        prev: le32(h, 32),
        body_crc: le32(h, 36),
        link,
    };
    if header.epoch < expect.epoch_min || header.epoch > expect.epoch_max {
        return Err(Invalid::Epoch {
            found: header.epoch,
            min: expect.epoch_min,
            max: expect.epoch_max,
        });
    }
    if header.first_seq != expect.seq {
        return Err(Invalid::Seq {
            found: header.first_seq,
            expected: expect.seq,
        });
    }
    if header.prev != expect.link {
        return Err(Invalid::Link {
            found: header.prev,
            expected: expect.link,
        });
    }
    let fits = header.count > 0
        && header.body_len / (RECORD_HEADER_LEN as u64) >= u64::from(header.count)
        && header.padded_len() <= limit
        && header
            .first_seq
            .checked_add(u64::from(header.count))
            .is_some();
    if !fits {
        return Err(Invalid::Length {
            body_len: header.body_len,
            count: header.count,
            limit,
        });
    }
    Ok(header)
}

/// Decodes and checks the records of a group whose header passed [`decode_group_header`];
/// `body` holds (at least) the `body_len` bytes after the header.
pub fn decode_group_body<'a>(
    header: &GroupHeader,
    body: &'a [u8],
) -> Result<Vec<RecordRef<'a>>, Invalid> {
    let Some(body) = body.get(..header.body_len as usize) else {
        return Err(Invalid::Short {
            have: body.len() as u64,
            need: header.body_len,
        });
    };
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut body_crc = 0u32;
    for index in 0..header.count {
        let bad = Invalid::Record { index };
        let h = body.get(at..at + RECORD_HEADER_LEN).ok_or(bad)?;
        let seq = header.first_seq + u64::from(index);
        if h[0..4] != RECORD_MAGIC
            || h[4] != VERSION
            || h[5] != 0
            || le64(h, 8) != seq
            || le32(h, 16) != header.epoch
            || le32(h, 28) != 0
            || le32(h, 40) != 0
        {
            return Err(bad);
        }
        let meta_len = u64::from(le32(h, 20));
        let header_len = u64::from(le32(h, 24));
        let dataset_len = le64(h, 32);
        let rest = (body.len() - at - RECORD_HEADER_LEN) as u64;
        let total = meta_len
            .checked_add(header_len)
            .and_then(|n| n.checked_add(dataset_len))
            .filter(|&n| n <= rest)
            .ok_or(bad)? as usize;
        let crc = le32(h, 44);
        let start = at + RECORD_HEADER_LEN;
        let sections = &body[start..start + total];
        if crc32c::crc32c_append(crc32c::crc32c(&h[..44]), sections) != crc {
            return Err(Invalid::RecordChecksum { index });
        }
        let (meta, rest) = sections.split_at(meta_len as usize);
        let (part10, dataset) = rest.split_at(header_len as usize);
        records.push(RecordRef {
            seq,
            flags: le16(h, 6),
            meta,
            header: part10,
            dataset,
        });
        body_crc = crc32c::crc32c_append(body_crc, &crc.to_le_bytes());
        at = start + total;
    }
    if at != body.len() || body_crc != header.body_crc {
        return Err(Invalid::Body);
    }
    Ok(records)
}

/// Decodes the group at the start of `bytes` (header, body; padding is not looked at).
pub fn decode_group<'a>(
    bytes: &'a [u8],
    expect: &Expect,
    limit: u64,
) -> Result<Group<'a>, Invalid> {
    let header = decode_group_header(bytes, expect, limit)?;
    let end = GROUP_HEADER_LEN as u64 + header.body_len;
    let body = bytes
        .get(GROUP_HEADER_LEN..end as usize)
        .ok_or(Invalid::Short {
            have: bytes.len() as u64,
            need: end,
        })?;
    let records = decode_group_body(&header, body)?;
    Ok(Group { header, records })
}

/// The valid groups of one segment image from `start`, and where and why the scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Each valid group with its offset, in order.
    pub groups: Vec<(u64, Group<'a>)>,
    /// Offset after the last valid group (where the next group would start).
    pub end: u64,
    /// What the group after them would have to carry.
    pub next: Expect,
    /// Why the scan stopped at `end` (`None`: the segment is full).
    pub stop: Option<Invalid>,
}

/// Scans one segment image the way replay does within a segment: group after group from
/// `start` (block-aligned), stopping at the first that is not the expected next one.
/// `max_group` caps a group's padded length.
pub fn scan(image: &[u8], start: u64, expect: Expect, max_group: u64) -> Scan<'_> {
    let mut groups = Vec::new();
    let mut at = start;
    let mut next = expect;
    let stop = loop {
        let room = (image.len() as u64).saturating_sub(at);
        if room < BLOCK as u64 {
            break None;
        }
        let bytes = &image[at as usize..];
        match decode_group(bytes, &next, room.min(max_group)) {
            Ok(g) => {
                next = g.header.next(expect.epoch_max);
                let len = g.header.padded_len();
                groups.push((at, g));
                at += len;
            }
            Err(e) => break Some(e),
        }
    };
    Scan {
        groups,
        end: at,
        next,
        stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        vec![
            (b"meta-1".to_vec(), vec![0u8; 132], vec![1u8; 700]),
            (Vec::new(), Vec::new(), Vec::new()),
            (
                vec![9u8; 300],
                b"DICM".to_vec(),
                (0..5000u32).map(|i| i as u8).collect(),
            ),
        ]
    }

    fn inputs(r: &[(Vec<u8>, Vec<u8>, Vec<u8>)]) -> Vec<RecordIn<'_>> {
        r.iter()
            .enumerate()
            .map(|(i, (m, h, d))| RecordIn {
                flags: i as u16 * 3,
                meta: m,
                header: h,
                dataset: d,
            })
            .collect()
    }

    const META: GroupMeta = GroupMeta {
        epoch: 3,
        first_seq: 41,
        prev: 0xdead_beef,
        flags: 0,
    };

    const EXPECT: Expect = Expect {
        seq: 41,
        epoch_min: 2,
        epoch_max: 5,
        link: 0xdead_beef,
    };

    fn encoded() -> (Vec<u8>, GroupHeader) {
        let r = records();
        let input = inputs(&r);
        let len = padded_len(body_len(&input).unwrap()) as usize;
        let mut out = vec![0xAAu8; len];
        let h = encode_group(&mut out, &META, &input);
        (out, h)
    }

    #[test]
    fn group_round_trips_and_is_block_padded() {
        let (bytes, h) = encoded();
        assert_eq!(bytes.len() % BLOCK, 0);
        assert_eq!(h.padded_len(), bytes.len() as u64);
        let g = decode_group(&bytes, &EXPECT, 1 << 20).unwrap();
        assert_eq!(g.header, h);
        let r = records();
        assert_eq!(g.records.len(), r.len());
        for (i, (got, (m, hd, d))) in g.records.iter().zip(&r).enumerate() {
            assert_eq!(got.seq, 41 + i as u64);
            assert_eq!(got.flags, i as u16 * 3);
            assert_eq!(
                (got.meta, got.header, got.dataset),
                (&m[..], &hd[..], &d[..])
            );
        }
        let end = GROUP_HEADER_LEN + h.body_len as usize;
        assert!(bytes[end..].iter().all(|&b| b == 0), "padding is zeros");
        assert_eq!(h.next(5).seq, 44);
    }

    #[test]
    fn every_byte_of_header_and_records_is_checked() {
        let (bytes, h) = encoded();
        let end = GROUP_HEADER_LEN + h.body_len as usize;
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[at] ^= flip;
                let r = decode_group(&b, &EXPECT, 1 << 20);
                if at < end {
                    assert!(
                        r.is_err(),
                        "flipping bit {flip:#x} of byte {at} went unnoticed"
                    );
                } else {
                    assert!(r.is_ok(), "padding byte {at} is not part of the group");
                }
            }
        }
    }

    #[test]
    fn expectations_are_enforced() {
        let (bytes, _) = encoded();
        let limit = 1 << 20;
        let with = |f: fn(&mut Expect)| {
            let mut e = EXPECT;
            f(&mut e);
            decode_group(&bytes, &e, limit).unwrap_err()
        };
        assert!(matches!(with(|e| e.seq = 40), Invalid::Seq { .. }));
        assert!(matches!(with(|e| e.epoch_min = 4), Invalid::Epoch { .. }));
        assert!(matches!(with(|e| e.epoch_max = 2), Invalid::Epoch { .. }));
        assert!(matches!(with(|e| e.link = 1), Invalid::Link { .. }));
        assert!(matches!(
            decode_group(&bytes, &EXPECT, bytes.len() as u64 - 1).unwrap_err(),
            Invalid::Length { .. }
        ));
        assert!(matches!(
            decode_group(&bytes[..bytes.len() / 2], &EXPECT, limit).unwrap_err(),
            Invalid::Short { .. }
        ));
        assert_eq!(
            decode_group(&[0u8; BLOCK], &EXPECT, limit),
            Err(Invalid::Magic)
        );
    }

    #[test]
    fn hostile_lengths_are_refused_from_the_header_alone() {
        // A header whose checksum is right but whose lengths claim gigabytes: refused by
        // decode_group_header, before a caller would read (or allocate) a body.
        for (count, body) in [
            (1u32, u64::MAX - 10),
            (1, 1 << 40),
            (u32::MAX, 4096),
            (0, 0),
        ] {
            let mut h = [0u8; GROUP_HEADER_LEN];
            h[0..4].copy_from_slice(&GROUP_MAGIC);
            h[4] = VERSION;
            h[8..12].copy_from_slice(&3u32.to_le_bytes());
            h[12..16].copy_from_slice(&count.to_le_bytes());
            h[16..24].copy_from_slice(&41u64.to_le_bytes());
            h[24..32].copy_from_slice(&body.to_le_bytes());
            h[32..36].copy_from_slice(&0xdead_beefu32.to_le_bytes());
            let crc = crc32c::crc32c(&h[..60]);
            h[60..64].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(
                decode_group_header(&h, &EXPECT, 1 << 24),
                Err(Invalid::Length { .. })
            ));
        }
    }

    #[test]
    fn scan_follows_the_chain_and_stops_at_the_first_break() {
        let r = records();
        let input = inputs(&r);
        let mut image = vec![0u8; 16 * BLOCK];
        let mut at = 0usize;
        let mut expect = EXPECT;
        let mut ends = Vec::new();
        for i in 0..3 {
            let g = GroupMeta {
                epoch: 3,
                first_seq: expect.seq,
                prev: expect.link,
                flags: 0,
            };
            let n = 1 + i % 3;
            let h = encode_group(&mut image[at..], &g, &input[..n]);
            expect = h.next(5);
            at += h.padded_len() as usize;
            ends.push(at as u64);
        }
        let s = scan(&image, 0, EXPECT, 1 << 20);
        assert_eq!(s.groups.len(), 3);
        assert_eq!(s.end, ends[2]);
        assert_eq!(s.next, expect);
        assert_eq!(s.stop, Some(Invalid::Magic));
        // Damage the second group: only the first is left.
        image[ends[0] as usize + GROUP_HEADER_LEN + RECORD_HEADER_LEN + 2] ^= 1;
        let s = scan(&image, 0, EXPECT, 1 << 20);
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.end, ends[0]);
        assert!(matches!(s.stop, Some(Invalid::RecordChecksum { index: 0 })));
    }
}
