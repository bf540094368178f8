//! Checks that every acknowledged object is stored byte for byte: the dataset bytes after the
//! file's meta group hash (blake3, streamed) to what was sent.
//!
//! Layouts: dicom-gw's `DATA_DIR/objects/<Study>/<Series>/<SOP>.dcm`, or a flat directory as
//! written by DCMTK `storescp -od DIR` (files named `<modality prefix>.<SOP Instance UID>`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dataset::dataset_hash;

/// An object the peer acknowledged (one line of a manifest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SentRecord {
    /// SOP Instance UID.
    pub sop_instance: String,
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID.
    pub series: String,
    /// blake3 of the dataset bytes, hex.
    pub blake3: String,
    /// Dataset length.
    pub len: u64,
}

/// How stored objects are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// dicom-gw: `objects/<Study>/<Series>/<SOP>.dcm`.
    Gw,
    /// DCMTK storescp: `<prefix>.<SOP>` anywhere under the directory.
    Flat,
}

/// Outcome of a verification.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    /// The directory checked.
    pub data_dir: String,
    /// Distinct objects expected.
    pub expected: u64,
    /// Stored byte-identically.
    pub identical: u64,
    /// Not found.
    pub missing: u64,
    /// Found but different (or not a readable Part-10 file).
    pub mismatched: u64,
    /// SOP Instance UIDs not found (first 100).
    pub missing_objects: Vec<String>,
    /// `SOP: path: why` of mismatched objects (first 100).
    pub mismatched_objects: Vec<String>,
}

const LIST_MAX: usize = 100;

impl VerifyReport {
    /// No missing and no mismatched object.
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.mismatched == 0
    }

    /// Human-readable lines.
    pub fn report(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "  verify       {}: {} expected, {} identical, {} missing, {} mismatched",
            self.data_dir, self.expected, self.identical, self.missing, self.mismatched
        );
        for m in &self.missing_objects {
            let _ = writeln!(o, "    missing    {m}");
        }
        for m in &self.mismatched_objects {
            let _ = writeln!(o, "    mismatch   {m}");
        }
        o
    }
}

/// Writes records as JSON lines.
pub fn write_manifest(path: &Path, records: &[SentRecord]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Reads a JSON-lines manifest.
pub fn read_manifest(path: &Path) -> std::io::Result<Vec<SentRecord>> {
    let r = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for (n, line) in r.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), n + 1),
            )
        })?);
    }
    Ok(out)
}

/// Index of a flat directory: SOP Instance UID → path.
fn flat_index(dir: &Path) -> HashMap<String, PathBuf> {
    let mut idx = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let name = name.strip_suffix(".dcm").unwrap_or(&name).to_owned();
                    if let Some((_, uid)) = name.split_once('.') {
                        idx.insert(uid.to_owned(), p.clone());
                    }
                    idx.insert(name, p);
                }
                _ => {}
            }
        }
    }
    idx
}

/// Checks every distinct record (last one per SOP Instance UID wins) against `dir`. Objects
/// not found, or found but not identical, are looked at again until `wait` has passed: the
/// SCP may still be committing, and a file can be seen while it is being written at its final
/// name (dicom-gw's checkpoint and DCMTK storescp both write that way; only dicom-gw's index
/// says when a file is complete). What still differs at the deadline is a mismatch.
pub fn verify(records: &[SentRecord], dir: &Path, layout: Layout, wait: Duration) -> VerifyReport {
    let mut by_sop: HashMap<&str, &SentRecord> = HashMap::new();
    let mut order = Vec::new();
    for r in records {
        if by_sop.insert(&r.sop_instance, r).is_none() {
            order.push(r.sop_instance.as_str());
        }
    }
    let mut rep = VerifyReport {
        data_dir: dir.display().to_string(),
        expected: order.len() as u64,
        ..Default::default()
    };
    let deadline = Instant::now() + wait;
    let mut todo: Vec<&str> = order;
    loop {
        let flat = (layout == Layout::Flat).then(|| flat_index(dir));
        // Not identical yet: (SOP, why), `None` for not found.
        let mut not_yet: Vec<(&str, Option<String>)> = Vec::new();
        for sop in todo {
            let r = by_sop[sop];
            let path = match &flat {
                None => Some(
                    dir.join("objects")
                        .join(&r.study)
                        .join(&r.series)
                        .join(format!("{sop}.dcm")),
                ),
                Some(idx) => idx.get(sop).cloned(),
            };
            let Some(path) = path.filter(|p| p.is_file()) else {
                not_yet.push((sop, None));
                continue;
            };
            let why = match dataset_hash(&path) {
                Ok((h, _)) if blake3::Hash::from(h).to_hex().as_str() == r.blake3 => {
                    rep.identical += 1;
                    continue;
                }
                Ok((h, len)) => format!(
                    "{sop}: {}: dataset of {len} bytes, blake3 {}; sent {} bytes, blake3 {}",
                    path.display(),
                    blake3::Hash::from(h).to_hex(),
                    r.len,
                    r.blake3
                ),
                Err(e) => format!("{sop}: {}: {e}", path.display()),
            };
            not_yet.push((sop, Some(why)));
        }
        if not_yet.is_empty() || Instant::now() >= deadline {
            for (sop, why) in not_yet {
                match why {
                    None => {
                        rep.missing += 1;
                        if rep.missing_objects.len() < LIST_MAX {
                            rep.missing_objects.push(sop.to_owned());
                        }
                    }
                    Some(why) => {
                        rep.mismatched += 1;
                        if rep.mismatched_objects.len() < LIST_MAX {
                            rep.mismatched_objects.push(why);
                        }
                    }
                }
            }
            return rep;
        }
        todo = not_yet.into_iter().map(|(sop, _)| sop).collect();
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{encode_meta, EXPLICIT_LE};

    fn store(dir: &Path, r: &SentRecord, data: &[u8]) -> PathBuf {
        let d = dir.join("objects").join(&r.study).join(&r.series);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(format!("{}.dcm", r.sop_instance));
        let mut bytes = encode_meta("1.2.3", &r.sop_instance, EXPLICIT_LE);
        bytes.extend_from_slice(data);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn rec(sop: &str, data: &[u8]) -> SentRecord {
        SentRecord {
            sop_instance: sop.into(),
            study: "1.1".into(),
            series: "1.2".into(),
            blake3: blake3::hash(data).to_hex().to_string(),
            len: data.len() as u64,
        }
    }

    #[test]
    fn detects_missing_and_corrupted() {
        let tmp = tempfile::tempdir().unwrap();
        let data = b"\x08\x00\x18\x00UI\x02\x001\0".to_vec();
        let (a, b, c) = (
            rec("1.5.1", &data),
            rec("1.5.2", &data),
            rec("1.5.3", &data),
        );
        store(tmp.path(), &a, &data);
        let mut bad = data.clone();
        bad[9] ^= 1;
        store(tmp.path(), &b, &bad);
        let rep = verify(
            &[a.clone(), b, c, a],
            tmp.path(),
            Layout::Gw,
            Duration::ZERO,
        );
        assert_eq!(
            (rep.expected, rep.identical, rep.missing, rep.mismatched),
            (3, 1, 1, 1)
        );
        assert_eq!(rep.missing_objects, vec!["1.5.3".to_string()]);
        assert!(rep.mismatched_objects[0].starts_with("1.5.2: "));
        assert!(!rep.ok());

        let m = tmp.path().join("m.jsonl");
        let recs = vec![rec("1.5.1", &data)];
        write_manifest(&m, &recs).unwrap();
        assert_eq!(read_manifest(&m).unwrap(), recs);
    }

    /// A file seen while it is being written (empty, then complete 300 ms later, as a
    /// receiver writing at the final name leaves it) is looked at again, not reported.
    #[test]
    fn a_file_still_being_written_is_looked_at_again() {
        let tmp = tempfile::tempdir().unwrap();
        let data = b"\x08\x00\x18\x00UI\x02\x001\0".to_vec();
        let r = rec("1.5.7", &data);
        let p = store(tmp.path(), &r, &data);
        std::fs::write(&p, b"").unwrap();
        let (root, d2, r2) = (tmp.path().to_path_buf(), data.clone(), r.clone());
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            store(&root, &r2, &d2);
        });
        let rep = verify(&[r], tmp.path(), Layout::Gw, Duration::from_secs(10));
        writer.join().unwrap();
        assert!(rep.ok(), "{rep:?}");
        assert_eq!(rep.identical, 1);
    }

    #[test]
    fn flat_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let data = b"\x08\x00\x18\x00UI\x02\x001\0".to_vec();
        let r = rec("1.5.9", &data);
        let mut bytes = encode_meta("1.2.3", "1.5.9", EXPLICIT_LE);
        bytes.extend_from_slice(&data);
        std::fs::write(tmp.path().join("CT.1.5.9"), bytes).unwrap();
        let rep = verify(&[r], tmp.path(), Layout::Flat, Duration::ZERO);
        assert!(rep.ok(), "{rep:?}");
    }
}
