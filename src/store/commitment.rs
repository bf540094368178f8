//! Pending Storage Commitment requests (PS3.4 Annex J), kept in `gateway.redb`.
//!
//! A request is written here, durably, *before* its N-ACTION-RSP goes out: from then on the
//! requester may release the association and count on a report, so the request must survive
//! a crash or a restart until an N-EVENT-REPORT-RSP with a success status says the report
//! arrived. The record keeps what a report on a new association needs (who asked, whom they
//! called, what they named) and the retry schedule of that delivery.

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

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
}

/// Most requests kept pending: a requestor that is never reachable (or a peer flooding
/// N-ACTIONs) cannot grow the table without bound. A request beyond it is refused (0213).
pub const MAX_PENDING: u64 = 10_000;

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

/// The pending requests in the index database.
#[derive(Debug, Clone, Copy)]
pub struct Commitments<'a> {
    db: &'a Database,
}

impl<'a> Commitments<'a> {
    /// The table in `db` (the index's `gateway.redb`), created if missing.
    pub fn open(db: &'a Database) -> Result<Self, CommitmentStoreError> {
        // A read first: creating is a durable write transaction, needed once per database.
        match db.begin_read()?.open_table(db::COMMITMENTS) {
            Ok(_) => return Ok(Commitments { db }),
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let tx = db.begin_write()?;
        tx.open_table(db::COMMITMENTS)?;
        tx.commit()?;
        Ok(Commitments { db })
    }

    /// Records `p` durably (a redb commit with the default, immediate durability). Recording
    /// the same request again (an SCU repeating an N-ACTION whose response it lost) is not an
    /// error; the same Transaction UID with other references is.
    pub fn put(&self, p: &PendingCommitment) -> Result<(), CommitmentStoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(db::COMMITMENTS)?;
            if let Some(old) = t.get(p.transaction_uid.as_str())? {
                let old = decode(&p.transaction_uid, old.value())?;
                if old.references != p.references {
                    return Err(CommitmentStoreError::Duplicate(p.transaction_uid.clone()));
                }
            } else {
                let n = t.len()?;
                if n >= MAX_PENDING {
                    return Err(CommitmentStoreError::Full(n));
                }
            }
            let bytes = postcard::to_allocvec(p).expect("a record always encodes");
            t.insert(p.transaction_uid.as_str(), bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One pending request.
    pub fn get(
        &self,
        transaction_uid: &str,
    ) -> Result<Option<PendingCommitment>, CommitmentStoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(db::COMMITMENTS)?;
        let v = t.get(transaction_uid)?;
        v.map(|g| decode(transaction_uid, g.value())).transpose()
    }

    /// How many requests are pending.
    pub fn count(&self) -> Result<u64, CommitmentStoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(db::COMMITMENTS)?.len()?)
    }

    /// Every pending request, in Transaction UID order.
    pub fn list(&self) -> Result<Vec<PendingCommitment>, CommitmentStoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(db::COMMITMENTS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Forgets a request whose report was acknowledged; whether it was there.
    pub fn remove(&self, transaction_uid: &str) -> Result<bool, CommitmentStoreError> {
        let tx = self.db.begin_write()?;
        let was = tx
            .open_table(db::COMMITMENTS)?
            .remove(transaction_uid)?
            .is_some();
        tx.commit()?;
        Ok(was)
    }

    /// Records a failed delivery attempt: `attempts` + 1, next try not before `next_attempt_us`.
    /// A request removed meanwhile (delivered another way) stays removed.
    pub fn reschedule(
        &self,
        transaction_uid: &str,
        next_attempt_us: u64,
    ) -> Result<(), CommitmentStoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(db::COMMITMENTS)?;
            let old = match t.get(transaction_uid)? {
                Some(v) => Some(decode(transaction_uid, v.value())?),
                None => None,
            };
            if let Some(mut p) = old {
                p.attempts = p.attempts.saturating_add(1);
                p.next_attempt_us = next_attempt_us;
                let bytes = postcard::to_allocvec(&p).expect("a record always encodes");
                t.insert(transaction_uid, bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<PendingCommitment, CommitmentStoreError> {
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
        let all = c.list().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].references[0].1, "1.2.3.4");
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
        assert_eq!(c.list().unwrap().len(), 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("g.redb")).unwrap();
        let c = Commitments::open(&db).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(db::COMMITMENTS).unwrap();
            for i in 0..MAX_PENDING {
                let key = format!("1.2.{i}");
                let bytes = postcard::to_allocvec(&rec(&key, &[])).unwrap();
                t.insert(key.as_str(), bytes.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
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
}
