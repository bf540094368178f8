//! The audit log: every change made through the API or the CLI (who, when, what, from where),
//! appended to a table where each entry is chained to the previous one by hash.
//!
//! Entries live in [`db::AUDIT`] under consecutive sequence numbers from 1. Each entry stores
//! the hash of its predecessor (`prev_hash`; 64 zeros for entry 1) and its own hash, a BLAKE3
//! (derive-key mode, context [`HASH_CONTEXT`]) over a length-prefixed encoding of every other
//! field, so no two different entries encode alike. The number of the last entry is also kept
//! in [`db::META`] under [`META_LAST_SEQ`], written in the same transaction as the entry.
//!
//! [`verify`] recomputes every hash and link. What it detects:
//! - an entry whose content (time, actor, source, action, details) or stored hashes were
//!   edited: its hash no longer matches (or, if its hash was recomputed too, the next entry's
//!   link no longer does);
//! - an entry deleted from the middle, or inserted: a gap or break in the sequence and links;
//! - entries swapped or moved: the key differs from the sequence number, or the links break;
//! - entries deleted from (or appended past) the end without the counter being changed: the
//!   count in `meta` disagrees with the last entry.
//!
//! What it cannot detect on its own: someone with write access to the database file who
//! rewrites the tail *consistently* (recomputing every later hash and the counter), or who
//! removes the whole log and the counter — the hashes use no secret. Against that, keep the
//! head hash that `dicom-gw audit verify` prints somewhere else (a ticket, another machine)
//! and pass it later as an anchor ([`verify_anchored`]): every entry up to the anchored one is
//! then covered by that hash through the chain.
//!
//! A change and its entry commit together or not at all, so a crash between them cannot leave
//! an unrecorded change (nor an entry for a change that did not happen). Changes to
//! `gateway.redb` (queue, destinations and routes, tokens, users) take an [`AuditHook`] that
//! their function runs inside its write transaction before the commit; the caller's hook calls
//! [`append`], and an `Err` from it aborts the transaction. A change to another database (the
//! worklist's) cannot share a transaction with this log: its hook writes the entry to that
//! database's [`outbox`] instead, and [`outbox::drain`] moves it here afterwards, exactly once.
//!
//! This module depends only on [`crate::db`] and [`crate::clock`], so every layer that changes
//! something can take an [`AuditHook`] without knowing who writes the entry.

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::db;

pub mod outbox;

/// Writes the audit entry of a change inside the change's own write transaction, given what
/// the change produced (typically by calling [`append`], or [`outbox::put`] for another
/// database): the function making the change runs it just before its commit, and an `Err`
/// aborts the transaction, so the change and its entry commit together or not at all.
/// [`no_audit`] for callers that record nothing (tests, start-up).
pub trait AuditHook<R>: FnOnce(&WriteTransaction, &R) -> Result<(), String> {}
impl<R, F: FnOnce(&WriteTransaction, &R) -> Result<(), String>> AuditHook<R> for F {}

/// The hook of a change that is not audited (tests, start-up).
pub fn no_audit<R>(_: &WriteTransaction, _: &R) -> Result<(), String> {
    Ok(())
}

/// The message of a change refused because its audit entry could not be written.
pub fn not_made(e: &str) -> String {
    format!("the audit log cannot be written ({e}); the change was not made")
}

/// The BLAKE3 derive-key context of entry hashes (domain separation, and a version: a new
/// encoding gets a new context).
pub const HASH_CONTEXT: &str = "dicom-gw 2025 audit log entry v1";

/// `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Key in [`db::META`] of the last sequence number written (detects a truncated tail).
pub const META_LAST_SEQ: &str = "audit_last_seq";

/// One change to record.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// Who: token label / user name, or `cli:<unix user>`.
    pub actor: &'a str,
    /// From where: the peer address, or `cli`.
    pub source: &'a str,
    /// What, as a stable verb, e.g. `queue.retry`, `destination.update`, `token.create`.
    pub action: &'a str,
    /// Details (parameters of the change; never secrets).
    pub details: serde_json::Value,
}

/// A stored entry (postcard in [`db::AUDIT`]; fields are only ever appended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number, from 1, without gaps; also the table key.
    pub seq: u64,
    /// When, µs since the Unix epoch.
    pub at_us: u64,
    /// Who ([`AuditEvent::actor`]).
    pub actor: String,
    /// From where ([`AuditEvent::source`]).
    pub source: String,
    /// What ([`AuditEvent::action`]).
    pub action: String,
    /// The details as compact JSON text — the exact bytes that were hashed.
    pub details: String,
    /// Hash of the previous entry (lowercase hex; [`GENESIS`] for entry 1).
    pub prev_hash: String,
    /// [`entry_hash`] of this entry (lowercase hex).
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry should have, from its content.
    pub fn expected_hash(&self) -> String {
        entry_hash(
            self.seq,
            self.at_us,
            &self.actor,
            &self.source,
            &self.action,
            &self.details,
            &self.prev_hash,
        )
    }

    /// The entry as JSON for the API and `dicom-gw audit list` (details as a JSON value).
    pub fn to_json(&self) -> Value {
        json!({
            "seq": self.seq,
            "at_us": self.at_us,
            "actor": self.actor,
            "source": self.source,
            "action": self.action,
            "details": serde_json::from_str::<Value>(&self.details)
                .unwrap_or_else(|_| Value::String(self.details.clone())),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        })
    }
}

/// The hash of an entry: BLAKE3 in derive-key mode over the sequence number and time (8 bytes
/// little-endian each), then each text field as its length (8 bytes little-endian) and its
/// UTF-8 bytes, in the order actor, source, action, details, previous hash.
pub fn entry_hash(
    seq: u64,
    at_us: u64,
    actor: &str,
    source: &str,
    action: &str,
    details: &str,
    prev_hash: &str,
) -> String {
    let mut h = blake3::Hasher::new_derive_key(HASH_CONTEXT);
    h.update(&seq.to_le_bytes());
    h.update(&at_us.to_le_bytes());
    for field in [actor, source, action, details, prev_hash] {
        h.update(&(field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |e| format!("audit log: {what}: {e}")
}

/// Appends an event inside the caller's write transaction (so a change and its entry can
/// commit together), stamped `at_us`. Returns its sequence number.
pub fn append(tx: &WriteTransaction, at_us: u64, event: &AuditEvent<'_>) -> Result<u64, String> {
    append_text(
        tx,
        at_us,
        event.actor,
        event.source,
        event.action,
        event.details.to_string(),
    )
}

/// [`append`] with the details already encoded as compact JSON text (as the outbox keeps
/// them: the entry then hashes exactly the bytes that were recorded at the change).
fn append_text(
    tx: &WriteTransaction,
    at_us: u64,
    actor: &str,
    source: &str,
    action: &str,
    details: String,
) -> Result<u64, String> {
    let mut t = tx.open_table(db::AUDIT).map_err(|e| err("open")(&e))?;
    let (seq, prev_hash) = match t.last().map_err(|e| err("read")(&e))? {
        Some((k, v)) => {
            let last: AuditEntry =
                postcard::from_bytes(v.value()).map_err(|e| err("decode last entry")(&e))?;
            (k.value() + 1, last.hash)
        }
        None => (1, GENESIS.to_owned()),
    };
    let hash = entry_hash(seq, at_us, actor, source, action, &details, &prev_hash);
    let entry = AuditEntry {
        seq,
        at_us,
        actor: actor.to_owned(),
        source: source.to_owned(),
        action: action.to_owned(),
        details,
        prev_hash,
        hash,
    };
    let bytes = postcard::to_allocvec(&entry).map_err(|e| err("encode")(&e))?;
    t.insert(seq, bytes.as_slice())
        .map_err(|e| err("write")(&e))?;
    let mut meta = tx.open_table(db::META).map_err(|e| err("open")(&e))?;
    meta.insert(META_LAST_SEQ, seq)
        .map_err(|e| err("write counter")(&e))?;
    Ok(seq)
}

/// Appends an event in its own (durable) write transaction; returns its sequence number. For
/// events that are not changes (a failed login); a change writes its entry in its own
/// transaction through an [`AuditHook`].
pub fn record(db: &Database, event: AuditEvent<'_>) -> Result<u64, String> {
    record_at(db, crate::clock::timestamp_us(), &event)
}

/// [`record`] with an explicit time (µs since the Unix epoch).
pub fn record_at(db: &Database, at_us: u64, event: &AuditEvent<'_>) -> Result<u64, String> {
    let tx = db.begin_write().map_err(|e| err("begin")(&e))?;
    let seq = append(&tx, at_us, event)?;
    tx.commit().map_err(|e| err("commit")(&e))?;
    Ok(seq)
}

/// Up to `limit` entries, oldest first, skipping the first `offset`.
pub fn list(db: &Database, offset: u64, limit: usize) -> Result<Vec<AuditEntry>, String> {
    let tx = db.begin_read().map_err(|e| err("begin")(&e))?;
    let t = tx.open_table(db::AUDIT).map_err(|e| err("open")(&e))?;
    let mut out = Vec::new();
    for row in t
        .range(offset.saturating_add(1)..)
        .map_err(|e| err("read")(&e))?
        .take(limit)
    {
        let (_, v) = row.map_err(|e| err("read")(&e))?;
        out.push(postcard::from_bytes(v.value()).map_err(|e| err("decode")(&e))?);
    }
    Ok(out)
}

/// Number of entries.
pub fn count(db: &Database) -> Result<u64, String> {
    let tx = db.begin_read().map_err(|e| err("begin")(&e))?;
    let t = tx.open_table(db::AUDIT).map_err(|e| err("open")(&e))?;
    t.len().map_err(|e| err("read")(&e))
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Entries in the table.
    pub entries: u64,
    /// Whether the whole chain checked out.
    pub ok: bool,
    /// The first entry found bad (or missing), if the problem is tied to one.
    pub first_bad: Option<u64>,
    /// What is wrong, for a human.
    pub problem: Option<String>,
    /// Hash of the last entry that checked out ([`GENESIS`] if none): the value to keep
    /// elsewhere and pass to [`verify_anchored`] later.
    pub head: String,
}

/// Recomputes every hash and link of the log (see the module documentation for what this
/// detects). `Err` only when the database cannot be read.
pub fn verify(db: &Database) -> Result<VerifyReport, String> {
    verify_anchored(db, None)
}

/// [`verify`], and also fails unless some entry of the (valid) chain has the hash `anchor` —
/// a head printed by an earlier verify, kept outside the database.
pub fn verify_anchored(db: &Database, anchor: Option<&str>) -> Result<VerifyReport, String> {
    let tx = db.begin_read().map_err(|e| err("begin")(&e))?;
    let t = tx.open_table(db::AUDIT).map_err(|e| err("open")(&e))?;
    let recorded_last = tx
        .open_table(db::META)
        .and_then(|m| Ok(m.get(META_LAST_SEQ)?.map(|g| g.value())))
        .map_err(|e| err("read counter")(&e))?;
    let entries = t.len().map_err(|e| err("read")(&e))?;
    let mut report = VerifyReport {
        entries,
        ok: true,
        first_bad: None,
        problem: None,
        head: GENESIS.to_owned(),
    };
    let fail = |report: &mut VerifyReport, seq: Option<u64>, problem: String| {
        report.ok = false;
        report.first_bad = seq;
        report.problem = Some(problem);
    };
    let mut anchor_found = anchor.is_none_or(|a| a == GENESIS);
    let mut expected = 1u64;
    for row in t.iter().map_err(|e| err("read")(&e))? {
        let (k, v) = row.map_err(|e| err("read")(&e))?;
        let key = k.value();
        if key != expected {
            let problem = if key > expected {
                if expected + 1 == key {
                    format!("entry {expected} is missing (deleted)")
                } else {
                    format!("entries {expected}..{} are missing (deleted)", key - 1)
                }
            } else {
                format!("unexpected entry key {key} (expected {expected})")
            };
            fail(&mut report, Some(expected), problem);
            break;
        }
        let entry: AuditEntry = match postcard::from_bytes(v.value()) {
            Ok(e) => e,
            Err(e) => {
                fail(
                    &mut report,
                    Some(key),
                    format!("entry {key} cannot be decoded ({e})"),
                );
                break;
            }
        };
        if entry.seq != key {
            fail(
                &mut report,
                Some(key),
                format!(
                    "entry {key} holds the record of entry {} (entries moved or swapped)",
                    entry.seq
                ),
            );
            break;
        }
        if entry.prev_hash != report.head {
            fail(
                &mut report,
                Some(key),
                if key == 1 {
                    "entry 1 does not start the chain (its previous hash is not zero)".to_owned()
                } else {
                    format!(
                        "entry {key} does not link to entry {} (one of them was changed or replaced)",
                        key - 1
                    )
                },
            );
            break;
        }
        if entry.expected_hash() != entry.hash {
            fail(
                &mut report,
                Some(key),
                format!("entry {key} was altered (its content does not match its hash)"),
            );
            break;
        }
        anchor_found |= anchor == Some(entry.hash.as_str());
        report.head = entry.hash;
        expected += 1;
    }
    if report.ok {
        let last = expected - 1;
        match recorded_last {
            Some(r) if r > last => fail(
                &mut report,
                Some(last + 1),
                format!(
                    "entries {}..={r} are missing at the end (the log was truncated)",
                    last + 1
                ),
            ),
            Some(r) if r < last => fail(
                &mut report,
                Some(r + 1),
                format!(
                    "entries {}..={last} were not written by the gateway (the counter says {r})",
                    r + 1
                ),
            ),
            None if last > 0 => fail(
                &mut report,
                None,
                format!("the entry counter ({META_LAST_SEQ} in meta) is missing"),
            ),
            _ => {}
        }
    }
    if report.ok && !anchor_found {
        fail(
            &mut report,
            None,
            format!(
                "no entry has the anchor hash {}: the log was rewritten or truncated since",
                anchor.unwrap_or_default()
            ),
        );
    }
    Ok(report)
}

/// Fault injection for tests of "the change and its audit entry commit together or not at
/// all" (unit and integration tests alike, hence public but hidden).
#[doc(hidden)]
pub mod fault {
    /// Makes the audit log unwritable the way a damaged database would: an entry at the end
    /// that does not decode, so appending after it fails. Returns its key, to repair it.
    pub fn break_audit_log(db: &redb::Database) -> u64 {
        let key = super::count(db).unwrap() + 1;
        let tx = db.begin_write().unwrap();
        tx.open_table(crate::db::AUDIT)
            .unwrap()
            .insert(key, [0xffu8; 3].as_slice())
            .unwrap();
        tx.commit().unwrap();
        key
    }

    /// Removes what [`break_audit_log`] put there.
    pub fn repair_audit_log(db: &redb::Database, key: u64) {
        let tx = db.begin_write().unwrap();
        tx.open_table(crate::db::AUDIT)
            .unwrap()
            .remove(key)
            .unwrap();
        tx.commit().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Index;

    fn open() -> (tempfile::TempDir, Index) {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("g.redb")).unwrap();
        (d, index)
    }

    fn add(db: &Database, n: u64) {
        for i in 0..n {
            let seq = record_at(
                db,
                1_000 + i,
                &AuditEvent {
                    actor: "cli:alice",
                    source: "cli",
                    action: "queue.retry",
                    details: json!({ "destination": "pacs", "job": i }),
                },
            )
            .unwrap();
            assert_eq!(seq, i + 1);
        }
    }

    fn get(db: &Database, seq: u64) -> AuditEntry {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(db::AUDIT).unwrap();
        let v = t.get(seq).unwrap().unwrap();
        postcard::from_bytes(v.value()).unwrap()
    }

    fn put(db: &Database, key: u64, e: &AuditEntry) {
        let tx = db.begin_write().unwrap();
        tx.open_table(db::AUDIT)
            .unwrap()
            .insert(key, postcard::to_allocvec(e).unwrap().as_slice())
            .unwrap();
        tx.commit().unwrap();
    }

    fn remove(db: &Database, key: u64) {
        let tx = db.begin_write().unwrap();
        tx.open_table(db::AUDIT).unwrap().remove(key).unwrap();
        tx.commit().unwrap();
    }

    fn bad_at(db: &Database) -> (Option<u64>, String) {
        let r = verify(db).unwrap();
        assert!(!r.ok, "{r:?}");
        (r.first_bad, r.problem.unwrap())
    }

    #[test]
    fn empty_log_verifies() {
        let (_d, index) = open();
        let r = verify(index.database()).unwrap();
        assert!(r.ok && r.entries == 0 && r.head == GENESIS, "{r:?}");
    }

    #[test]
    fn appended_entries_chain_and_verify() {
        let (_d, index) = open();
        let db = index.database();
        add(db, 5);
        let r = verify(db).unwrap();
        assert_eq!((r.ok, r.entries, r.first_bad), (true, 5, None), "{r:?}");
        let all = list(db, 0, 100).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].prev_hash, GENESIS);
        for w in all.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
        assert_eq!(r.head, all[4].hash);
        assert_eq!(all[2].details, r#"{"destination":"pacs","job":2}"#);
        assert_eq!(all[2].to_json()["details"]["job"], 2);
        let page = list(db, 3, 10).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(list(db, 1, 2).unwrap().len(), 2);
        assert_eq!(count(db).unwrap(), 5);
        // An anchor from an earlier verify is found while the chain holds it.
        let early = all[1].hash.clone();
        assert!(verify_anchored(db, Some(&early)).unwrap().ok);
        assert!(verify_anchored(db, Some(GENESIS)).unwrap().ok);
        let r = verify_anchored(db, Some(&"ab".repeat(32))).unwrap();
        assert!(!r.ok && r.problem.unwrap().contains("anchor"));
    }

    #[test]
    fn hash_encoding_is_unambiguous() {
        // Moving bytes between adjacent fields changes the hash.
        let a = entry_hash(1, 2, "ab", "c", "x", "{}", GENESIS);
        let b = entry_hash(1, 2, "a", "bc", "x", "{}", GENESIS);
        assert_ne!(a, b);
        assert_ne!(a, entry_hash(2, 1, "ab", "c", "x", "{}", GENESIS));
        assert_eq!(a, entry_hash(1, 2, "ab", "c", "x", "{}", GENESIS));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn an_edited_entry_fails_verification_naming_it() {
        let (_d, index) = open();
        let db = index.database();
        add(db, 5);
        let mut e = get(db, 3);
        e.details = r#"{"destination":"elsewhere","job":2}"#.into();
        put(db, 3, &e);
        let (seq, problem) = bad_at(db);
        assert_eq!(seq, Some(3), "{problem}");
        assert!(problem.contains("entry 3 was altered"), "{problem}");
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
        let (_d, index) = open();
        let db = index.database();
        add(db, 5);
        let mut e = get(db, 2);
        e.actor = "someone-else".into();
        e.hash = e.expected_hash();
        put(db, 2, &e);
        let (seq, problem) = bad_at(db);
        assert_eq!(seq, Some(3), "{problem}");
        assert!(problem.contains("does not link to entry 2"), "{problem}");
    }

    #[test]
    fn a_changed_prev_hash_fails() {
        let (_d, index) = open();
        let db = index.database();
        add(db, 4);
        let mut e = get(db, 4);
        e.prev_hash = GENESIS.into();
        put(db, 4, &e);
        assert_eq!(bad_at(db).0, Some(4));
        // Also when the entry's own hash is recomputed to match.
        e.hash = e.expected_hash();
        put(db, 4, &e);
        assert_eq!(bad_at(db).0, Some(4));
    }

    #[test]
    fn swapped_entries_fail() {
        let (_d, index) = open();
        let db = index.database();
        add(db, 5);
        let (two, four) = (get(db, 2), get(db, 4));
        put(db, 2, &four);
        put(db, 4, &two);
        let (seq, problem) = bad_at(db);
        assert_eq!(seq, Some(2), "{problem}");
        assert!(problem.contains("swapped"), "{problem}");
        // Renumbered to fit their new places, the links still break.
        let (mut two, mut four) = (two, four);
        two.seq = 4;
        four.seq = 2;
        put(db, 2, &four);
        put(db, 4, &two);
        assert_eq!(bad_at(db).0, Some(2));
    }

    #[test]
    fn deleted_entries_fail() {
        let (_d, index) = open();
        let db = index.database();
        add(db, 5);
        remove(db, 3);
        let (seq, problem) = bad_at(db);
        assert_eq!(seq, Some(3), "{problem}");
        assert!(problem.contains("missing"), "{problem}");
    }

    #[test]
    fn a_truncated_tail_is_caught_by_the_counter() {
        let (_d, index) = open();
        let db = index.database();
        add(db, 5);
        remove(db, 5);
        remove(db, 4);
        let (seq, problem) = bad_at(db);
        assert_eq!(seq, Some(4), "{problem}");
        assert!(problem.contains("truncated"), "{problem}");
        // A forged entry appended without the counter is caught too.
        let (_d2, index2) = open();
        let db2 = index2.database();
        add(db2, 2);
        let mut e = get(db2, 2);
        e.seq = 3;
        e.prev_hash = e.hash.clone();
        e.hash = e.expected_hash();
        put(db2, 3, &e);
        assert_eq!(bad_at(db2).0, Some(3));
    }

    #[test]
    fn garbage_in_an_entry_fails() {
        let (_d, index) = open();
        let db = index.database();
        add(db, 2);
        let tx = db.begin_write().unwrap();
        tx.open_table(db::AUDIT)
            .unwrap()
            .insert(2, [0xffu8; 3].as_slice())
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(bad_at(db).0, Some(2));
    }

    #[test]
    fn append_joins_the_callers_transaction() {
        let (_d, index) = open();
        let db = index.database();
        let tx = db.begin_write().unwrap();
        let ev = AuditEvent {
            actor: "a",
            source: "s",
            action: "x.y",
            details: json!({}),
        };
        assert_eq!(append(&tx, 1, &ev).unwrap(), 1);
        assert_eq!(append(&tx, 2, &ev).unwrap(), 2);
        tx.abort().unwrap();
        assert_eq!(count(db).unwrap(), 0);
        assert!(verify(db).unwrap().ok);
        assert_eq!(record(db, ev).unwrap(), 1);
        assert!(verify(db).unwrap().ok);
    }
}
