//! Pending Storage Commitment requests (PS3.4 Annex J), kept in `gateway.redb`.
//!
//! A request is written here, durably, *before* its N-ACTION-RSP goes out: from then on the
//! requester may release the association and count on a report, so the request must survive
//! a crash or a restart until an N-EVENT-REPORT-RSP with a success status says the report
//! arrived. The record keeps what a report on a new association needs (who asked, whom they
//! called, what they named) and the retry schedule of that delivery.
//!
//! The schedule (calling AE, received at, attempts, next attempt) is also kept apart, in a
//! small row per request (`db::COMMITMENT_SCHEDULE`), so a pass over the pending requests
//! reads a few dozen bytes each and decodes a full record (up to ~1 MB of references) only
//! for the request it is about to report. A per-AE count (`db::COMMITMENT_AE_COUNTS`) makes
//! the per-requestor quota one lookup.

use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::db;

/// Errors of the pending-request table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitmentStoreError {
    /// redb failed (I/O, storage full, corruption).
    #[error("storage commitment table: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode (written by an incompatible version?).
    #[error("storage commitment record {key} does not decode: {source}")]
    Decode {
        /// Transaction UID of the record.
        key: String,
        /// Decoder error.
        source: postcard::Error,
    },
    /// The same Transaction UID is pending with other references: PS3.4 J.3.2 forbids reuse.
    #[error("Transaction UID {0} is already pending with other references")]
    Duplicate(String),
    /// [`MAX_PENDING`] requests are pending already (reports are not getting through).
    #[error("{0} storage commitment requests are pending already")]
    Full(u64),
    /// The calling AE title has [`MAX_PENDING_PER_AE`] requests pending already.
    #[error("AE title {ae:?} has {n} storage commitment requests pending already (quota {MAX_PENDING_PER_AE})")]
    AeQuota {
        /// The calling AE title.
        ae: String,
        /// Its pending requests.
        n: u64,
    },
}

/// Most requests kept pending: a requestor that is never reachable (or a peer flooding
/// N-ACTIONs) cannot grow the table without bound. A request beyond it is refused (0213).
pub const MAX_PENDING: u64 = 10_000;

/// Most requests kept pending for one calling AE title: one peer (unreachable, or flooding)
/// cannot take the whole of [`MAX_PENDING`] from every other requestor. Beyond it: 0213.
pub const MAX_PENDING_PER_AE: u64 = 1_000;

/// Age after which a request whose report never got through is dropped (a WARN line and
/// `dicomgw_storage_commitment_requests_total{result="expired"}`): without it, requests of a
/// requestor that is gone for good would hold their quota and the table forever.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for CommitmentStoreError {
            fn from(e: $t) -> Self {
                CommitmentStoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One pending request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCommitment {
    /// Transaction UID (0008,1195): the key, and what the report echoes.
    pub transaction_uid: String,
    /// Calling AE title of the N-ACTION's association: where a report on a new association
    /// goes (looked up in the destination table).
    pub calling_ae_title: String,
    /// Called AE title of that association: our calling AE title on the report association,
    /// since modalities check it (dcm4chee #3592).
    pub called_ae_title: String,
    /// (Referenced SOP Class UID, Referenced SOP Instance UID), in the request's order.
    pub references: Vec<(String, String)>,
    /// When the N-ACTION arrived, µs since the Unix epoch.
    pub received_at_us: u64,
    /// Delivery attempts on a new association so far (for the backoff and the logs).
    pub attempts: u32,
    /// Earliest time of the next delivery attempt on a new association, µs since the epoch.
    pub next_attempt_us: u64,
}

/// The schedule of one pending request, without its references: what a pass over the
/// pending requests needs to pick the due ones. The schedule table is authoritative for
/// `attempts` and `next_attempt_us`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    /// Transaction UID.
    pub transaction_uid: String,
    /// Calling AE title of the N-ACTION.
    pub calling_ae_title: String,
    /// When the N-ACTION arrived, µs since the epoch.
    pub received_at_us: u64,
    /// Delivery attempts on a new association so far.
    pub attempts: u32,
    /// Earliest time of the next delivery attempt, µs since the epoch.
    pub next_attempt_us: u64,
}

impl Scheduled {
    fn of(p: &PendingCommitment) -> Self {
        Scheduled {
            transaction_uid: p.transaction_uid.clone(),
            calling_ae_title: p.calling_ae_title.clone(),
            received_at_us: p.received_at_us,
            attempts: p.attempts,
            next_attempt_us: p.next_attempt_us,
        }
    }

    /// Whether the request is older than [`MAX_AGE`] at `now_us`.
    pub fn expired(&self, now_us: u64) -> bool {
        now_us.saturating_sub(self.received_at_us) >= MAX_AGE.as_micros() as u64
    }
}

/// The pending requests in the index database.
#[derive(Debug, Clone, Copy)]
pub struct Commitments<'a> {
    db: &'a Database,
}

impl<'a> Commitments<'a> {
    /// The tables in `db` (the index's `gateway.redb`), created if missing; the schedule and
    /// the per-AE counts are rebuilt from the records if they are out of step (a database
    /// written before they existed).
    pub fn open(db: &'a Database) -> Result<Self, CommitmentStoreError> {
        // A read first: creating is a durable write transaction, needed once per database.
        {
            let r = db.begin_read()?;
            let len = |d: redb::TableDefinition<&str, &[u8]>| match r.open_table(d) {
                Ok(t) => Ok(Some(t.len()?)),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(CommitmentStoreError::from(e)),
            };
            let (records, schedule) = (len(db::COMMITMENTS)?, len(db::COMMITMENT_SCHEDULE)?);
            let counts = match r.open_table(db::COMMITMENT_AE_COUNTS) {
                Ok(_) => true,
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(e.into()),
            };
            if counts && records.is_some() && records == schedule {
                return Ok(Commitments { db });
            }
        }
        let tx = db.begin_write()?;
        rebuild(&tx)?;
        tx.commit()?;
        Ok(Commitments { db })
    }

    /// Records `p` durably (a redb commit with the default, immediate durability). Recording
    /// the same request again (an SCU repeating an N-ACTION whose response it lost) is not an
    /// error (the record is kept, its next attempt set to `p`'s); the same Transaction UID
    /// with other references is. A new request beyond [`MAX_PENDING`] or beyond its calling
    /// AE title's [`MAX_PENDING_PER_AE`] is refused.
    pub fn put(&self, p: &PendingCommitment) -> Result<(), CommitmentStoreError> {
        let uid = p.transaction_uid.as_str();
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(db::COMMITMENTS)?;
            let mut s = tx.open_table(db::COMMITMENT_SCHEDULE)?;
            let mut c = tx.open_table(db::COMMITMENT_AE_COUNTS)?;
            let old = t.get(uid)?.map(|g| decode(uid, g.value())).transpose()?;
            if let Some(old) = old {
                if old.references != p.references {
                    return Err(CommitmentStoreError::Duplicate(p.transaction_uid.clone()));
                }
                let mut row = match s.get(uid)? {
                    Some(g) => decode_row(uid, g.value())?,
                    None => Scheduled::of(&old),
                };
                row.next_attempt_us = p.next_attempt_us;
                s.insert(uid, encode(&row).as_slice())?;
            } else {
                let n = t.len()?;
                if n >= MAX_PENDING {
                    return Err(CommitmentStoreError::Full(n));
                }
                let ae = p.calling_ae_title.as_str();
                let of_ae = c.get(ae)?.map_or(0, |g| g.value());
                if of_ae >= MAX_PENDING_PER_AE {
                    return Err(CommitmentStoreError::AeQuota {
                        ae: ae.to_owned(),
                        n: of_ae,
                    });
                }
                t.insert(uid, encode(p).as_slice())?;
                s.insert(uid, encode(&Scheduled::of(p)).as_slice())?;
                c.insert(ae, of_ae + 1)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// One pending request, with its current schedule.
    pub fn get(
        &self,
        transaction_uid: &str,
    ) -> Result<Option<PendingCommitment>, CommitmentStoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(db::COMMITMENTS)?;
        let Some(mut p) = t
            .get(transaction_uid)?
            .map(|g| decode(transaction_uid, g.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        let s = tx.open_table(db::COMMITMENT_SCHEDULE)?;
        if let Some(g) = s.get(transaction_uid)? {
            let row = decode_row(transaction_uid, g.value())?;
            p.attempts = row.attempts;
            p.next_attempt_us = row.next_attempt_us;
        }
        Ok(Some(p))
    }

    /// How many requests are pending.
    pub fn count(&self) -> Result<u64, CommitmentStoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(db::COMMITMENTS)?.len()?)
    }

    /// How many requests of `calling_ae_title` are pending.
    pub fn count_of(&self, calling_ae_title: &str) -> Result<u64, CommitmentStoreError> {
        let tx = self.db.begin_read()?;
        let c = tx.open_table(db::COMMITMENT_AE_COUNTS)?;
        Ok(c.get(calling_ae_title)?.map_or(0, |g| g.value()))
    }

    /// The schedule of every pending request, in Transaction UID order, without their
    /// references (cheap: a few dozen bytes a request).
    pub fn schedule(&self) -> Result<Vec<Scheduled>, CommitmentStoreError> {
        let tx = self.db.begin_read()?;
        let s = tx.open_table(db::COMMITMENT_SCHEDULE)?;
        let mut out = Vec::new();
        for row in s.iter()? {
            let (k, v) = row?;
            out.push(decode_row(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Forgets a request whose report was acknowledged; whether it was there.
    pub fn remove(&self, transaction_uid: &str) -> Result<bool, CommitmentStoreError> {
        let tx = self.db.begin_write()?;
        let was = remove_in(&tx, transaction_uid)?;
        tx.commit()?;
        Ok(was)
    }

    /// Drops, in one transaction, every request older than [`MAX_AGE`] at `now_us` for which
    /// `may_remove` says yes (the caller skips requests an association is reporting); returns
    /// the schedules of those dropped, for the caller's log lines and metrics.
    pub fn remove_expired(
        &self,
        now_us: u64,
        mut may_remove: impl FnMut(&Scheduled) -> bool,
    ) -> Result<Vec<Scheduled>, CommitmentStoreError> {
        let expired: Vec<Scheduled> = self
            .schedule()?
            .into_iter()
            .filter(|s| s.expired(now_us))
            .collect();
        if expired.is_empty() {
            return Ok(expired);
        }
        let tx = self.db.begin_write()?;
        let mut out = Vec::new();
        for s in expired {
            if may_remove(&s) && remove_in(&tx, &s.transaction_uid)? {
                out.push(s);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Records a failed delivery attempt: `attempts` + 1, next try not before `next_attempt_us`.
    /// A request removed meanwhile (delivered another way) stays removed. Touches the
    /// schedule row only.
    pub fn reschedule(
        &self,
        transaction_uid: &str,
        next_attempt_us: u64,
    ) -> Result<(), CommitmentStoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut s = tx.open_table(db::COMMITMENT_SCHEDULE)?;
            let old = match s.get(transaction_uid)? {
                Some(v) => Some(decode_row(transaction_uid, v.value())?),
                None => None,
            };
            if let Some(mut row) = old {
                row.attempts = row.attempts.saturating_add(1);
                row.next_attempt_us = next_attempt_us;
                s.insert(transaction_uid, encode(&row).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Removes one request from the three tables in `tx`; whether it was there.
fn remove_in(tx: &WriteTransaction, uid: &str) -> Result<bool, CommitmentStoreError> {
    let mut t = tx.open_table(db::COMMITMENTS)?;
    let mut s = tx.open_table(db::COMMITMENT_SCHEDULE)?;
    let mut c = tx.open_table(db::COMMITMENT_AE_COUNTS)?;
    let row = s
        .remove(uid)?
        .map(|g| decode_row(uid, g.value()))
        .transpose()?;
    let Some(record) = t.remove(uid)? else {
        return Ok(false);
    };
    let ae = match row {
        Some(r) => r.calling_ae_title,
        None => decode(uid, record.value())?.calling_ae_title,
    };
    let n = c.get(ae.as_str())?.map_or(0, |g| g.value());
    if n <= 1 {
        c.remove(ae.as_str())?;
    } else {
        c.insert(ae.as_str(), n - 1)?;
    }
    Ok(true)
}

/// Rewrites the schedule and the per-AE counts from the records. A record that does not
/// decode cannot be reported: it is dropped with a WARN line rather than left to block the
/// table.
fn rebuild(tx: &WriteTransaction) -> Result<(), CommitmentStoreError> {
    let mut t = tx.open_table(db::COMMITMENTS)?;
    let mut s = tx.open_table(db::COMMITMENT_SCHEDULE)?;
    let mut c = tx.open_table(db::COMMITMENT_AE_COUNTS)?;
    if t.len()? == s.len()? {
        return Ok(()); // another writer rebuilt them meanwhile
    }
    s.retain(|_, _| false)?;
    c.retain(|_, _| false)?;
    let mut bad = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        match decode(k.value(), v.value()) {
            Ok(p) => {
                s.insert(k.value(), encode(&Scheduled::of(&p)).as_slice())?;
                let n = c.get(p.calling_ae_title.as_str())?.map_or(0, |g| g.value());
                c.insert(p.calling_ae_title.as_str(), n + 1)?;
            }
            Err(e) => {
                warn!(error = %e, "storage commitment: undecodable pending request dropped");
                bad.push(k.value().to_owned());
            }
        }
    }
    for k in bad {
        t.remove(k.as_str())?;
    }
    Ok(())
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("a record always encodes")
}

fn decode(key: &str, bytes: &[u8]) -> Result<PendingCommitment, CommitmentStoreError> {
    postcard::from_bytes(bytes).map_err(|source| CommitmentStoreError::Decode {
        key: key.to_owned(),
        source,
    })
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<Scheduled, CommitmentStoreError> {
    postcard::from_bytes(bytes).map_err(|source| CommitmentStoreError::Decode {
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uid: &str, refs: &[(&str, &str)]) -> PendingCommitment {
        PendingCommitment {
            transaction_uid: uid.into(),
            calling_ae_title: "MODALITY".into(),
            called_ae_title: "DICOM_GW".into(),
            references: refs
                .iter()
                .map(|(c, i)| ((*c).to_owned(), (*i).to_owned()))
                .collect(),
            received_at_us: 1,
            attempts: 0,
            next_attempt_us: 0,
        }
    }

    #[test]
    fn requests_are_kept_across_reopening_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        {
            let db = Database::create(&path).unwrap();
            let c = Commitments::open(&db).unwrap();
            c.put(&rec("1.2.3", &[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")]))
                .unwrap();
            c.put(&rec("1.2.4", &[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5")]))
                .unwrap();
        }
        let db = Database::create(&path).unwrap();
        let c = Commitments::open(&db).unwrap();
        let all = c.schedule().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].transaction_uid, "1.2.3");
        assert_eq!(c.get("1.2.3").unwrap().unwrap().references[0].1, "1.2.3.4");
        c.reschedule("1.2.3", 99).unwrap();
        let p = c.get("1.2.3").unwrap().unwrap();
        assert_eq!((p.attempts, p.next_attempt_us), (1, 99));
        assert!(c.remove("1.2.3").unwrap());
        assert!(!c.remove("1.2.3").unwrap());
        c.reschedule("1.2.3", 5).unwrap();
        assert!(
            c.get("1.2.3").unwrap().is_none(),
            "rescheduling does not revive"
        );
        assert_eq!(c.schedule().unwrap().len(), 1);
        assert_eq!(c.count_of("MODALITY").unwrap(), 1);
    }

    /// The index creates the tables with its own, so the reporter's first look (at start,
    /// beside ingest) only reads: a write there on a disk that had just filled up latched
    /// the whole database.
    #[test]
    fn opening_the_tables_of_a_fresh_index_writes_nothing() {
        let (backend, handle) = crate::store::crashdb::CrashBackend::from_image(Vec::new());
        let db = Database::builder().create_with_backend(backend).unwrap();
        let index = crate::store::index::Index::from_database(db).unwrap();
        let syncs = handle.syncs();
        Commitments::open(index.database()).unwrap();
        assert_eq!(handle.syncs(), syncs, "no write transaction was committed");
    }

    #[test]
    fn the_table_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("g.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(db::COMMITMENTS).unwrap();
            for i in 0..MAX_PENDING {
                let key = format!("1.2.{i}");
                // Spread over AE titles, so the global bound is reached, not the per-AE one.
                let mut r = rec(&key, &[]);
                r.calling_ae_title = format!("AE{}", i % 100);
                let bytes = postcard::to_allocvec(&r).unwrap();
                t.insert(key.as_str(), bytes.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        // Written behind the store's back: reopening rebuilds the schedule and the counts.
        let c = Commitments::open(&db).unwrap();
        assert_eq!(c.schedule().unwrap().len() as u64, MAX_PENDING);
        assert_eq!(c.count().unwrap(), MAX_PENDING);
        assert!(matches!(
            c.put(&rec("1.3", &[])),
            Err(CommitmentStoreError::Full(n)) if n == MAX_PENDING
        ));
        // A request already pending may still be recorded again.
        c.put(&rec("1.2.7", &[])).unwrap();
    }

    #[test]
    fn a_transaction_uid_is_not_reused_for_other_references() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("g.redb")).unwrap();
        let c = Commitments::open(&db).unwrap();
        let a = rec("1.2.3", &[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")]);
        c.put(&a).unwrap();
        c.put(&a).unwrap();
        let b = rec("1.2.3", &[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.9")]);
        assert!(matches!(
            c.put(&b),
            Err(CommitmentStoreError::Duplicate(u)) if u == "1.2.3"
        ));
    }

    #[test]
    fn one_calling_ae_title_cannot_take_the_whole_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("g.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            // Written behind the store's back (1,000 durable commits are slow on a busy
            // disk); reopening rebuilds the schedule and the counts.
            let mut t = tx.open_table(db::COMMITMENTS).unwrap();
            for i in 0..MAX_PENDING_PER_AE {
                let key = format!("1.2.{i}");
                let bytes = postcard::to_allocvec(&rec(&key, &[])).unwrap();
                t.insert(key.as_str(), bytes.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        let c = Commitments::open(&db).unwrap();
        assert_eq!(c.count_of("MODALITY").unwrap(), MAX_PENDING_PER_AE);
        let over = rec("1.3", &[]);
        assert!(matches!(
            c.put(&over),
            Err(CommitmentStoreError::AeQuota { ref ae, n }) if ae == "MODALITY" && n == MAX_PENDING_PER_AE
        ));
        assert!(c.get("1.3").unwrap().is_none(), "nothing recorded");
        // A repeat of a pending request is still taken; another AE title is not affected.
        c.put(&rec("1.2.7", &[])).unwrap();
        let mut other = rec("1.4", &[]);
        other.calling_ae_title = "OTHER".into();
        c.put(&other).unwrap();
        // One acknowledged report frees one place.
        assert!(c.remove("1.2.0").unwrap());
        assert_eq!(c.count_of("MODALITY").unwrap(), MAX_PENDING_PER_AE - 1);
        c.put(&over).unwrap();
        assert!(c.put(&rec("1.5", &[])).is_err());
    }

    #[test]
    fn requests_older_than_the_maximum_age_are_dropped_unless_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("g.redb")).unwrap();
        let c = Commitments::open(&db).unwrap();
        let day = 24 * 3600 * 1_000_000u64;
        let now = 30 * day;
        let mut old = rec("1.2.1", &[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")]);
        old.received_at_us = now - MAX_AGE.as_micros() as u64;
        let mut claimed = rec("1.2.2", &[]);
        claimed.received_at_us = now - 8 * day;
        let mut young = rec("1.2.3", &[]);
        young.received_at_us = now - 6 * day;
        for p in [&old, &claimed, &young] {
            c.put(p).unwrap();
        }
        c.reschedule("1.2.1", now + 1).unwrap();
        let gone = c
            .remove_expired(now, |s| s.transaction_uid != "1.2.2")
            .unwrap();
        assert_eq!(
            gone.iter()
                .map(|s| s.transaction_uid.as_str())
                .collect::<Vec<_>>(),
            ["1.2.1"]
        );
        assert_eq!(gone[0].attempts, 1);
        assert!(c.get("1.2.1").unwrap().is_none());
        assert_eq!(c.count().unwrap(), 2);
        assert_eq!(c.count_of("MODALITY").unwrap(), 2);
        // Once the association lets go, the claimed one expires too; the young one stays.
        assert_eq!(c.remove_expired(now, |_| true).unwrap().len(), 1);
        assert_eq!(c.schedule().unwrap().len(), 1);
        assert!(c
            .remove_expired(now + day - 1, |_| true)
            .unwrap()
            .is_empty());
        assert_eq!(c.remove_expired(now + day, |_| true).unwrap().len(), 1);
        assert_eq!(c.count_of("MODALITY").unwrap(), 0);
    }
}
