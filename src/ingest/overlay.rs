//! The overlay: acknowledged objects whose index rows the next checkpoint will write.
//!
//! Between the journal append that acknowledges an object and the checkpoint that indexes
//! it, the duplicate decision for a re-send of the same SOP Instance UID must still see it:
//! the journal writer looks here first, then in the index. Entries are added when the writer
//! decides (before the append, so a second copy in the same group sees the first), given
//! their journal sequence number once the append succeeded, taken back if it failed, and
//! dropped by the checkpoint that indexed them (unless a newer version replaced them).

use std::collections::HashMap;
use std::sync::Mutex;

/// What a duplicate decision needs of an acknowledged object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its journal sequence number (0 while its group is being written).
    pub seq: u64,
    /// BLAKE3 of its dataset, hex.
    pub dataset_blake3: String,
    /// Its dataset size.
    pub dataset_size: u64,
}

/// SOP Instance UID → the newest acknowledged, not yet indexed version.
#[derive(Debug, Default)]
pub struct Overlay {
    map: Mutex<HashMap<String, Entry>>,
}

/// How to take back the entries of a group whose append failed.
#[derive(Debug, Default)]
pub struct Undo(Vec<(String, Option<Entry>)>);

impl Overlay {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The newest acknowledged (or being acknowledged) version of `sop`, if not yet indexed.
    pub fn get(&self, sop: &str) -> Option<Entry> {
        self.map().get(sop).cloned()
    }

    /// Records a version being acknowledged; `undo` remembers what it hid.
    pub fn put(&self, sop: &str, entry: Entry, undo: &mut Undo) {
        let old = self.map().insert(sop.to_owned(), entry);
        undo.0.push((sop.to_owned(), old));
    }

    /// The group was appended: its entries get their sequence numbers.
    pub fn confirm(&self, seqs: &[(String, u64)]) {
        let mut m = self.map();
        for (sop, seq) in seqs {
            if let Some(e) = m.get_mut(sop) {
                if e.seq == 0 {
                    e.seq = *seq;
                }
            }
        }
    }

    /// The group failed: restores what it hid, newest first.
    pub fn undo(&self, undo: Undo) {
        let mut m = self.map();
        for (sop, old) in undo.0.into_iter().rev() {
            match old {
                Some(e) => m.insert(sop, e),
                None => m.remove(&sop),
            };
        }
    }

    /// A checkpoint indexed the records with these (UID, seq): their entries go, unless a
    /// newer version has taken their place.
    pub fn indexed(&self, done: &[(String, u64)]) {
        let mut m = self.map();
        for (sop, seq) in done {
            if m.get(sop).is_some_and(|e| e.seq == *seq) {
                m.remove(sop);
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64, h: &str) -> Entry {
        Entry {
            seq,
            dataset_blake3: h.into(),
            dataset_size: 1,
        }
    }

    #[test]
    fn undo_restores_what_a_failed_group_hid_and_checkpoints_keep_newer_versions() {
        let o = Overlay::default();
        let mut u = Undo::default();
        o.put("a", e(0, "1"), &mut u);
        o.confirm(&[("a".into(), 5)]);
        assert_eq!(o.get("a"), Some(e(5, "1")));
        let mut u = Undo::default();
        o.put("a", e(0, "2"), &mut u);
        o.put("b", e(0, "3"), &mut u);
        o.undo(u);
        assert_eq!(o.get("a"), Some(e(5, "1")));
        assert_eq!(o.get("b"), None);
        let mut u = Undo::default();
        o.put("a", e(0, "2"), &mut u);
        o.confirm(&[("a".into(), 9)]);
        // The checkpoint of seq 5 must not drop version 9.
        o.indexed(&[("a".into(), 5)]);
        assert_eq!(o.get("a"), Some(e(9, "2")));
        o.indexed(&[("a".into(), 9)]);
        assert!(o.is_empty());
    }
}
