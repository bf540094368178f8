//! The audit outbox: audit entries of changes to a database other than `gateway.redb` (the
//! worklist's `worklist.redb`), which cannot share a transaction with the audit log.
//!
//! A change writes its entry with [`put`] into the outbox tables of its own database, inside
//! its own write transaction: the change and its pending entry commit together or not at all.
//! [`drain`] then moves pending entries into the audit log: [`append_pending`] appends them
//! (stamped with the time of the change, not of the drain) in one `gateway.redb` transaction,
//! then [`delete_through`] deletes them from the outbox. Callers drain right after each change,
//! and the daemon drains at start-up before it serves anything, so an entry left behind by a
//! crash (or by an audit log that could not be written) is written by the next drain.
//!
//! Exactly once. Outbox ids increase and are never reused within one outbox (the counter is in
//! the outbox's own tables, written in the change's transaction, so ids follow commit order),
//! and each outbox has a random `epoch`, created with its first entry. The `gateway.redb`
//! transaction that appends entries also records in [`crate::db::META`], under
//! `audit_outbox_drained:<epoch>`, the highest id it appended; a drain appends only ids above
//! that mark. So a crash after the append and before the outbox delete does not append the
//! entries twice: the next drain finds them at or below the mark and only deletes them. A new
//! outbox (the worklist database removed and created again) has a new epoch, so its ids,
//! starting from 1 again, are not taken for drained ones. Concurrent drains are safe: the mark
//! is read and moved inside the append transaction, and redb runs write transactions one at a
//! time.

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use redb::{TableError, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::AuditEvent;
use crate::db;

/// Pending entries, in the database of the change: outbox id → postcard `Pending`.
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_outbox");
/// The outbox's counters: [`NEXT_ID`] and [`EPOCH`].
pub const OUTBOX_META: TableDefinition<&str, u64> = TableDefinition::new("audit_outbox_meta");
/// Key in [`OUTBOX_META`] of the next outbox id.
pub const NEXT_ID: &str = "next_id";
/// Key in [`OUTBOX_META`] of the outbox's random identity.
pub const EPOCH: &str = "epoch";
/// Prefix of the key in the audit database's [`crate::db::META`] holding the highest outbox id
/// already appended, followed by the outbox's epoch in 16 hex digits.
pub const META_DRAINED_PREFIX: &str = "audit_outbox_drained:";

/// Most entries one audit transaction appends.
const BATCH: usize = 256;

/// A pending entry, as stored (a format change gets a new variant).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Pending {
    V1 {
        at_us: u64,
        actor: String,
        source: String,
        action: String,
        /// Compact JSON text, the exact bytes the entry will hash.
        details: String,
    },
}

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |e| format!("audit outbox: {what}: {e}")
}

fn new_epoch() -> Result<u64, String> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|e| err("no randomness for its epoch")(&e))?;
    Ok(u64::from_le_bytes(raw).max(1))
}

fn drained_key(epoch: u64) -> String {
    format!("{META_DRAINED_PREFIX}{epoch:016x}")
}

/// Writes an event to the outbox of the database `tx` belongs to, inside the caller's write
/// transaction (the change's), stamped `at_us`. Returns its outbox id.
pub fn put(tx: &WriteTransaction, at_us: u64, event: &AuditEvent<'_>) -> Result<u64, String> {
    let id = {
        let mut meta = tx.open_table(OUTBOX_META).map_err(|e| err("open")(&e))?;
        if meta.get(EPOCH).map_err(|e| err("read")(&e))?.is_none() {
            meta.insert(EPOCH, new_epoch()?)
                .map_err(|e| err("write")(&e))?;
        }
        let id = meta
            .get(NEXT_ID)
            .map_err(|e| err("read")(&e))?
            .map_or(1, |g| g.value());
        meta.insert(NEXT_ID, id + 1).map_err(|e| err("write")(&e))?;
        id
    };
    let row = Pending::V1 {
        at_us,
        actor: event.actor.to_owned(),
        source: event.source.to_owned(),
        action: event.action.to_owned(),
        details: event.details.to_string(),
    };
    let bytes = postcard::to_allocvec(&row).map_err(|e| err("encode")(&e))?;
    tx.open_table(OUTBOX)
        .map_err(|e| err("open")(&e))?
        .insert(id, bytes.as_slice())
        .map_err(|e| err("write")(&e))?;
    Ok(id)
}

/// How many entries wait in the outbox of `db`.
pub fn pending(db: &Database) -> Result<u64, String> {
    let tx = db.begin_read().map_err(|e| err("begin")(&e))?;
    match tx.open_table(OUTBOX) {
        Ok(t) => t.len().map_err(|e| err("read")(&e)),
        Err(TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(err("open")(&e)),
    }
}

/// What [`append_pending`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Every outbox entry with an id up to this one is in the audit log: they may be deleted
    /// from the outbox ([`delete_through`]).
    pub through: u64,
    /// Entries appended now (the others were appended by an earlier drain that stopped before
    /// deleting them).
    pub appended: usize,
}

/// The first half of [`drain`]: appends up to a batch of the oldest entries of the outbox in
/// `outbox` to the audit log in `audit`, in one transaction that also moves the outbox's
/// drained mark; entries at or below the mark are already in the log and are skipped.
/// `None`: the outbox is empty.
pub fn append_pending(outbox: &Database, audit: &Database) -> Result<Option<Appended>, String> {
    let (epoch, rows) = {
        let tx = outbox.begin_read().map_err(|e| err("begin")(&e))?;
        let meta = match tx.open_table(OUTBOX_META) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(err("open")(&e)),
        };
        let Some(epoch) = meta
            .get(EPOCH)
            .map_err(|e| err("read")(&e))?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        let t = tx.open_table(OUTBOX).map_err(|e| err("open")(&e))?;
        let mut rows = Vec::new();
        for row in t.iter().map_err(|e| err("read")(&e))?.take(BATCH) {
            let (k, v) = row.map_err(|e| err("read")(&e))?;
            let id = k.value();
            let p: Pending = postcard::from_bytes(v.value())
                .map_err(|e| err(&format!("entry {id} does not decode"))(&e))?;
            rows.push((id, p));
        }
        (epoch, rows)
    };
    let Some(&(last, _)) = rows.last() else {
        return Ok(None);
    };
    let key = drained_key(epoch);
    let tx = audit.begin_write().map_err(|e| super::err("begin")(&e))?;
    let mark = tx
        .open_table(db::META)
        .and_then(|m| Ok(m.get(key.as_str())?.map_or(0, |g| g.value())))
        .map_err(|e| super::err("read the outbox mark")(&e))?;
    let mut appended = 0;
    for (id, row) in rows {
        if id <= mark {
            continue;
        }
        let Pending::V1 {
            at_us,
            actor,
            source,
            action,
            details,
        } = row;
        super::append_text(&tx, at_us, &actor, &source, &action, details)?;
        appended += 1;
    }
    if last > mark {
        tx.open_table(db::META)
            .and_then(|mut m| Ok(m.insert(key.as_str(), last).map(drop)?))
            .map_err(|e| super::err("write the outbox mark")(&e))?;
        tx.commit().map_err(|e| super::err("commit")(&e))?;
    } else {
        tx.abort().map_err(|e| super::err("abort")(&e))?;
    }
    Ok(Some(Appended {
        through: last.max(mark),
        appended,
    }))
}

/// The second half of [`drain`]: deletes the outbox entries with ids up to `through` (which
/// [`append_pending`] said are in the audit log).
pub fn delete_through(outbox: &Database, through: u64) -> Result<(), String> {
    let tx = outbox.begin_write().map_err(|e| err("begin")(&e))?;
    tx.open_table(OUTBOX)
        .map_err(|e| err("open")(&e))?
        .retain_in(..=through, |_, _| false)
        .map_err(|e| err("delete")(&e))?;
    tx.commit().map_err(|e| err("commit")(&e))
}

/// Moves every pending entry of the outbox in `outbox` into the audit log in `audit`, each
/// exactly once (see the module documentation). Returns how many entries were appended. On
/// `Err` the entries not yet moved stay in the outbox for the next drain.
pub fn drain(outbox: &Database, audit: &Database) -> Result<usize, String> {
    let mut n = 0;
    while let Some(a) = append_pending(outbox, audit)? {
        delete_through(outbox, a.through)?;
        n += a.appended;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Index;
    use serde_json::json;

    fn open() -> (tempfile::TempDir, Index, Database) {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("g.redb")).unwrap();
        let other = Database::create(d.path().join("w.redb")).unwrap();
        (d, index, other)
    }

    fn put_one(db: &Database, at_us: u64, n: u64) -> u64 {
        let tx = db.begin_write().unwrap();
        let id = put(
            &tx,
            at_us,
            &AuditEvent {
                actor: "alice",
                source: "10.0.0.1:5000",
                action: "worklist.create",
                details: json!({ "items": [n] }),
            },
        )
        .unwrap();
        tx.commit().unwrap();
        id
    }

    #[test]
    fn drained_entries_are_appended_once_with_the_time_of_the_change() {
        let (_d, index, other) = open();
        let audit = index.database();
        assert_eq!(pending(&other).unwrap(), 0);
        assert_eq!(drain(&other, audit).unwrap(), 0);
        assert_eq!((put_one(&other, 7, 1), put_one(&other, 8, 2)), (1, 2));
        assert_eq!(pending(&other).unwrap(), 2);
        assert_eq!(drain(&other, audit).unwrap(), 2);
        assert_eq!(pending(&other).unwrap(), 0);
        assert_eq!(drain(&other, audit).unwrap(), 0);
        let log = super::super::list(audit, 0, 10).unwrap();
        let got: Vec<_> = log
            .iter()
            .map(|e| {
                (
                    e.at_us,
                    e.actor.as_str(),
                    e.action.as_str(),
                    e.details.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (7, "alice", "worklist.create", r#"{"items":[1]}"#),
                (8, "alice", "worklist.create", r#"{"items":[2]}"#)
            ]
        );
        assert!(super::super::verify(audit).unwrap().ok);
        // Ids go on (never reused), and the next drain appends only the new one.
        assert_eq!(put_one(&other, 9, 3), 3);
        assert_eq!(drain(&other, audit).unwrap(), 1);
        assert_eq!(super::super::count(audit).unwrap(), 3);
    }

    #[test]
    fn a_crash_between_append_and_delete_does_not_append_twice() {
        let (d, index, other) = open();
        put_one(&other, 1, 1);
        put_one(&other, 2, 2);
        let a = append_pending(&other, index.database()).unwrap().unwrap();
        assert_eq!(
            a,
            Appended {
                through: 2,
                appended: 2
            }
        );
        // The process dies here: the entries are in the log and still in the outbox.
        drop((index, other));
        let index = Index::open(&d.path().join("g.redb")).unwrap();
        let other = Database::create(d.path().join("w.redb")).unwrap();
        assert_eq!(pending(&other).unwrap(), 2);
        put_one(&other, 3, 3);
        // The next drain skips the two, appends the third, and empties the outbox.
        assert_eq!(drain(&other, index.database()).unwrap(), 1);
        assert_eq!(pending(&other).unwrap(), 0);
        let log = super::super::list(index.database(), 0, 10).unwrap();
        assert_eq!(
            log.iter().map(|e| e.at_us).collect::<Vec<_>>(),
            [1, 2, 3],
            "each entry exactly once"
        );
        assert!(super::super::verify(index.database()).unwrap().ok);
    }

    #[test]
    fn a_new_outbox_is_not_taken_for_a_drained_one() {
        let (d, index, other) = open();
        put_one(&other, 1, 1);
        put_one(&other, 2, 2);
        drain(&other, index.database()).unwrap();
        // The other database is removed and created again: its ids start at 1 again.
        drop(other);
        std::fs::remove_file(d.path().join("w.redb")).unwrap();
        let other = Database::create(d.path().join("w.redb")).unwrap();
        assert_eq!(put_one(&other, 3, 3), 1);
        assert_eq!(drain(&other, index.database()).unwrap(), 1);
        assert_eq!(super::super::count(index.database()).unwrap(), 3);
    }

    #[test]
    fn a_failing_audit_log_keeps_the_entries_for_the_next_drain() {
        let (_d, index, other) = open();
        let audit = index.database();
        // An undecodable last entry: appending fails.
        let tx = audit.begin_write().unwrap();
        tx.open_table(db::AUDIT)
            .unwrap()
            .insert(1, [0xffu8; 3].as_slice())
            .unwrap();
        tx.commit().unwrap();
        put_one(&other, 1, 1);
        let e = drain(&other, audit).unwrap_err();
        assert!(e.contains("decode last entry"), "{e}");
        assert_eq!(pending(&other).unwrap(), 1);
        // Repaired, the next drain writes it.
        let tx = audit.begin_write().unwrap();
        tx.open_table(db::AUDIT).unwrap().remove(1).unwrap();
        tx.commit().unwrap();
        assert_eq!(drain(&other, audit).unwrap(), 1);
        assert_eq!(pending(&other).unwrap(), 0);
        assert_eq!(super::super::count(audit).unwrap(), 1);
    }

    #[test]
    fn more_than_a_batch_is_drained() {
        let (_d, index, other) = open();
        let tx = other.begin_write().unwrap();
        let ev = AuditEvent {
            actor: "a",
            source: "s",
            action: "x.y",
            details: json!({}),
        };
        for i in 0..(BATCH as u64 + 10) {
            put(&tx, i, &ev).unwrap();
        }
        tx.commit().unwrap();
        assert_eq!(drain(&other, index.database()).unwrap(), BATCH + 10);
        assert_eq!(pending(&other).unwrap(), 0);
        assert!(super::super::verify(index.database()).unwrap().ok);
    }
}
