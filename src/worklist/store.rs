//! `worklist.redb`: worklist items and MPPS instances, in their own database file so the
//! worklist service can run in its own process (`--only worklist`) next to, or without, the
//! store service and its `gateway.redb`.
//!
//! Schema (values are postcard, each record an enum whose variant is its format version, so a
//! later format can be added without rewriting the file):
//!
//! | table | key | value |
//! |---|---|---|
//! | `items` | item id (u64, never reused) | `StoredItem::V1`: created/updated µs, the item's MWL dataset |
//! | `item_keys` | (Accession Number, Requested Procedure ID, Scheduled Procedure Step ID) | item id |
//! | `mpps` | MPPS SOP Instance UID | `StoredMpps::V1`: created/updated µs, dataset, linked item ids |
//! | `meta` | `next_item_id` | u64 |
//! | `audit_outbox`, `audit_outbox_meta` | outbox id; `next_id`, `epoch` | audit entries of changes, waiting to be moved to the audit log in `gateway.redb` ([`crate::audit::outbox`]) |
//!
//! `item_keys` makes the order key unique (a RIS re-sending an order updates it, see
//! [`WorklistStore::upsert_many`]). There is no index on query keys: a C-FIND matches every
//! item, kept decoded in memory (see [`WorklistStore`]); the unit test `find_scan_timing`
//! prints the cost for 10,000 items.
//!
//! Every change is one write transaction: an MPPS N-CREATE or N-SET and the status change of
//! the worklist items it links to commit together, so the worklist never shows a step STARTED
//! by an MPPS that was refused. The item changes of operators (create, import, update, cancel,
//! delete) take an [`AuditHook`] run in that transaction before the commit: the API and the
//! CLI write the change's audit entry to the audit outbox there, so the change and its pending
//! entry commit together (and an `Err` from the hook aborts the change).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::model::{self, generate_uid, ItemKey, NewItem, SpsStatus, WorklistItem};
use super::mpps::{self, MppsError, MppsInstance, PpsStatus};
use crate::audit::AuditHook;
use crate::dicom::dataset::Dataset;
use crate::dicom::matching::{MatchHint, Prefilter, Query};

/// The database file name inside the data directory.
pub const FILE_NAME: &str = "worklist.redb";

/// Item id → `StoredItem`.
const ITEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("items");
/// (Accession Number, Requested Procedure ID, Scheduled Procedure Step ID) → item id.
const ITEM_KEYS: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("item_keys");
/// MPPS SOP Instance UID → `StoredMpps`.
const MPPS: TableDefinition<&str, &[u8]> = TableDefinition::new("mpps");
/// Named counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ITEM_ID: &str = "next_item_id";

#[derive(Serialize, Deserialize)]
enum StoredItem {
    V1 {
        created_us: u64,
        updated_us: u64,
        dataset: Dataset,
    },
}

#[derive(Serialize, Deserialize)]
enum StoredMpps {
    V1 {
        created_us: u64,
        updated_us: u64,
        dataset: Dataset,
        linked_items: Vec<u64>,
    },
}

impl WorklistStoreError {
    /// Whether the database is unusable until it is opened again
    /// ([`crate::db::needs_reopen`]).
    pub fn needs_reopen(&self) -> bool {
        matches!(self, WorklistStoreError::Db(e) if crate::db::needs_reopen(e))
    }
}

/// Errors of the worklist database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorklistStoreError {
    /// redb failed (I/O, corruption, storage full).
    #[error("worklist database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode (written by an incompatible version?).
    #[error("worklist record {key} in table {table} does not decode: {source}")]
    Decode {
        /// Table name.
        table: &'static str,
        /// Key of the record.
        key: String,
        /// Decoder error.
        source: postcard::Error,
    },
    /// No item with this id.
    #[error("no worklist item {0}")]
    NotFound(u64),
    /// Another item already has this order key.
    #[error("worklist item {id} already has {key}")]
    DuplicateKey {
        /// The existing item.
        id: u64,
        /// The key.
        key: ItemKey,
    },
    /// Cancel of a step that a modality started or that is over.
    #[error("worklist item {id} is {status} and can no longer be cancelled")]
    CannotCancel {
        /// The item.
        id: u64,
        /// Its status.
        status: SpsStatus,
    },
    /// The change's audit entry could not be written, so the change was not made.
    #[error("{}", crate::audit::not_made(.0))]
    Audit(String),
}

/// Runs a change's audit hook inside its transaction; an `Err` is returned before the commit,
/// so the transaction is dropped (aborted) and nothing changes.
fn audit_in<R>(
    tx: &redb::WriteTransaction,
    r: &R,
    audit: impl AuditHook<R>,
) -> Result<(), WorklistStoreError> {
    audit(tx, r).map_err(|e| {
        tracing::error!(error = %e, "audit entry not written; the worklist change is rolled back");
        WorklistStoreError::Audit(e)
    })
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for WorklistStoreError {
            fn from(e: $t) -> Self {
                WorklistStoreError::Db(e.into())
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

/// Errors of an MPPS operation: the protocol's refusal, or the database's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MppsStoreError {
    /// Refused by the state machine; answer its status.
    #[error(transparent)]
    Refused(#[from] MppsError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] WorklistStoreError),
}

impl MppsStoreError {
    /// The N-CREATE/N-SET status: the refusal's, or 0110 Processing failure.
    pub fn status(&self) -> u16 {
        match self {
            MppsStoreError::Refused(e) => e.status(),
            MppsStoreError::Store(_) => 0x0110,
        }
    }
}

impl From<redb::StorageError> for MppsStoreError {
    fn from(e: redb::StorageError) -> Self {
        MppsStoreError::Store(e.into())
    }
}

/// A stored MPPS instance with its bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct MppsRecord {
    /// The instance.
    pub instance: MppsInstance,
    /// N-CREATE time, µs since the Unix epoch.
    pub created_us: u64,
    /// Last N-SET time.
    pub updated_us: u64,
    /// Worklist items linked at N-CREATE (see `mpps::links_to`); their status follows.
    pub linked_items: Vec<u64>,
}

impl MppsRecord {
    /// The instance's status.
    pub fn status(&self) -> PpsStatus {
        self.instance.status()
    }
}

/// Whether an upserted item was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// A new item was created.
    Created,
    /// An item with the same order key was replaced.
    Updated,
}

/// Decoded items by id: the cache every read of items is served from.
type Cache = BTreeMap<u64, Cached>;

/// A cached item, with what a C-FIND checks before matching it (kept inline in the map's
/// nodes, so a scan reads the hints without touching the scattered datasets).
#[derive(Debug)]
struct Cached {
    /// A finished step (completed, discontinued, cancelled): left out of default queries.
    finished: bool,
    hint: MatchHint,
    item: Arc<WorklistItem>,
}

impl Cached {
    fn new(item: WorklistItem) -> Self {
        Self {
            finished: item.status().is_final(),
            hint: MatchHint::of(&item.dataset),
            item: Arc::new(item),
        }
    }
}

impl std::ops::Deref for Cached {
    type Target = WorklistItem;

    fn deref(&self) -> &WorklistItem {
        &self.item
    }
}

/// The worklist database. Share one per process behind an `Arc` (redb itself lets only one
/// process open the file).
///
/// Items are also kept decoded in memory: a C-FIND then matches datasets directly instead of
/// reading and decoding every record (decoding was most of the cost of a scan). The cache is
/// loaded at open and changed only by this struct's writes, after their commit and in commit
/// order, so it always equals the committed table.
pub struct WorklistStore {
    db: Database,
    /// The committed items, decoded.
    items: RwLock<Cache>,
    /// Serialises writers from their transaction to their cache update.
    writer: Mutex<()>,
    /// Where a database that needs reopening is recorded as a vital failure.
    health: &'static crate::health::Registry,
}

impl std::fmt::Debug for WorklistStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorklistStore")
            .field("items", &self.count())
            .finish_non_exhaustive()
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn decode_item(id: u64, bytes: &[u8]) -> Result<WorklistItem, WorklistStoreError> {
    match postcard::from_bytes(bytes) {
        Ok(StoredItem::V1 {
            created_us,
            updated_us,
            dataset,
        }) => Ok(WorklistItem {
            id,
            created_us,
            updated_us,
            dataset,
        }),
        Err(source) => Err(WorklistStoreError::Decode {
            table: "items",
            key: id.to_string(),
            source,
        }),
    }
}

fn encode_item(item: &WorklistItem) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    postcard::to_allocvec(&StoredItemRef::V1 {
        created_us: item.created_us,
        updated_us: item.updated_us,
        dataset: &item.dataset,
    })
    .unwrap_or_default()
}

/// Borrowed twin of [`StoredItem`] for writing without cloning the dataset.
#[derive(Serialize)]
enum StoredItemRef<'a> {
    V1 {
        created_us: u64,
        updated_us: u64,
        dataset: &'a Dataset,
    },
}

fn decode_mpps(uid: &str, bytes: &[u8]) -> Result<MppsRecord, WorklistStoreError> {
    match postcard::from_bytes(bytes) {
        Ok(StoredMpps::V1 {
            created_us,
            updated_us,
            dataset,
            linked_items,
        }) => Ok(MppsRecord {
            instance: MppsInstance {
                sop_instance_uid: uid.to_owned(),
                dataset,
            },
            created_us,
            updated_us,
            linked_items,
        }),
        Err(source) => Err(WorklistStoreError::Decode {
            table: "mpps",
            key: uid.to_owned(),
            source,
        }),
    }
}

/// Borrowed twin of [`StoredMpps`].
#[derive(Serialize)]
enum StoredMppsRef<'a> {
    V1 {
        created_us: u64,
        updated_us: u64,
        dataset: &'a Dataset,
        linked_items: &'a [u64],
    },
}

fn encode_mpps(record: &MppsRecord) -> Vec<u8> {
    postcard::to_allocvec(&StoredMppsRef::V1 {
        created_us: record.created_us,
        updated_us: record.updated_us,
        dataset: &record.instance.dataset,
        linked_items: &record.linked_items,
    })
    .unwrap_or_default()
}

type ItemsTable<'txn> = redb::Table<'txn, u64, &'static [u8]>;
type KeysTable<'txn> = redb::Table<'txn, (&'static str, &'static str, &'static str), u64>;

fn key_tuple(key: &ItemKey) -> (&str, &str, &str) {
    (
        &key.accession_number,
        &key.requested_procedure_id,
        &key.scheduled_procedure_step_id,
    )
}

/// Item changes of a committed transaction, applied to the cache afterwards.
enum Change {
    Put(WorklistItem),
    Remove(u64),
}

impl WorklistStore {
    /// Opens (or creates) the database at `path` and its tables, and loads the items.
    pub fn open(path: &Path) -> Result<Self, WorklistStoreError> {
        Self::from_database(Database::create(path)?, crate::health::global())
    }

    /// [`WorklistStore::open`] on an opened database, recording vital failures into
    /// `health` (tests: their own, and a database on a test backend).
    pub fn from_database(
        db: Database,
        health: &'static crate::health::Registry,
    ) -> Result<Self, WorklistStoreError> {
        let tx = db.begin_write()?;
        {
            tx.open_table(ITEMS)?;
            tx.open_table(ITEM_KEYS)?;
            tx.open_table(MPPS)?;
            tx.open_table(META)?;
        }
        tx.commit()?;
        let mut items = BTreeMap::new();
        {
            let tx = db.begin_read()?;
            let table = tx.open_table(ITEMS)?;
            for entry in table.iter()? {
                let (id, bytes) = entry?;
                let item = decode_item(id.value(), bytes.value())?;
                items.insert(item.id, Cached::new(item));
            }
        }
        Ok(Self {
            db,
            items: RwLock::new(items),
            writer: Mutex::new(()),
            health,
        })
    }

    /// Opens `<data_dir>/worklist.redb`.
    pub fn open_in(data_dir: &Path) -> Result<Self, WorklistStoreError> {
        Self::open(&data_dir.join(FILE_NAME))
    }

    /// The database, for its audit outbox ([`crate::audit::outbox::drain`]). Items and MPPS
    /// instances must be changed only through this struct, which keeps its cache equal to
    /// the committed table.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs one write transaction under the writer lock, commits it, then applies its item
    /// changes to the cache — still under the lock, so the cache sees commits in order.
    fn write<T, E>(
        &self,
        body: impl FnOnce(&redb::WriteTransaction, &Cache) -> Result<(T, Vec<Change>), E>,
    ) -> Result<T, E>
    where
        E: From<WorklistStoreError>,
    {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = self
            .db
            .begin_write()
            .map_err(|e| E::from(self.vital_if_latched(e.into())))?;
        let (out, changes) = {
            let cache = self.items.read().unwrap_or_else(PoisonError::into_inner);
            body(&tx, &cache)?
        };
        tx.commit()
            .map_err(|e| E::from(self.vital_if_latched(e.into())))?;
        let mut cache = self.items.write().unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            match change {
                Change::Put(item) => {
                    cache.insert(item.id, Cached::new(item));
                }
                Change::Remove(id) => {
                    cache.remove(&id);
                }
            }
        }
        Ok(out)
    }

    /// After an I/O error redb fails every operation until the database is reopened: no MPPS
    /// message or item change could be stored any more (C-FIND still answers from the cache,
    /// which hides it). Recorded as a vital failure, so the daemon restarts and reopens it.
    fn vital_if_latched(&self, e: WorklistStoreError) -> WorklistStoreError {
        if e.needs_reopen() {
            self.health.fail(
                "worklist database",
                &format!("{e}; the next start reopens it"),
            );
        }
        e
    }

    /// Creates one item, audited (`audit`, given the items created) in the same transaction.
    pub fn create(
        &self,
        item: NewItem,
        audit: impl AuditHook<Vec<WorklistItem>>,
    ) -> Result<WorklistItem, WorklistStoreError> {
        Ok(self.create_many(vec![item], audit)?.remove(0))
    }

    /// Creates items in one transaction: all or none (an import either lands or not), audited
    /// (`audit`, given the items created) in the same transaction.
    pub fn create_many(
        &self,
        items: Vec<NewItem>,
        audit: impl AuditHook<Vec<WorklistItem>>,
    ) -> Result<Vec<WorklistItem>, WorklistStoreError> {
        let now = now_us();
        self.write(|tx, _| {
            let mut table = tx.open_table(ITEMS)?;
            let mut keys = tx.open_table(ITEM_KEYS)?;
            let mut meta = tx.open_table(META)?;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let id = next_id(&mut meta)?;
                out.push(insert_new(&mut table, &mut keys, id, item, now)?);
            }
            audit_in(tx, &out, audit)?;
            let changes = out.iter().cloned().map(Change::Put).collect();
            Ok((out, changes))
        })
    }

    /// Creates or replaces items by order key, in one transaction: an item whose Accession
    /// Number, Requested Procedure ID and Scheduled Procedure Step ID (all three as given)
    /// equal a stored item's replaces it (id and, if not given, Study Instance UID and status
    /// kept); any other is created. This is what makes re-importing a RIS export idempotent —
    /// for items that carry their Requested Procedure and Scheduled Procedure Step IDs.
    /// Audited (`audit`, given the results) in the same transaction.
    pub fn upsert_many(
        &self,
        items: Vec<NewItem>,
        audit: impl AuditHook<Vec<(WorklistItem, Upserted)>>,
    ) -> Result<Vec<(WorklistItem, Upserted)>, WorklistStoreError> {
        let now = now_us();
        self.write(|tx, _| {
            let mut table = tx.open_table(ITEMS)?;
            let mut keys = tx.open_table(ITEM_KEYS)?;
            let mut meta = tx.open_table(META)?;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let given = ItemKey::of(item.dataset());
                let existing = if given.requested_procedure_id.is_empty()
                    || given.scheduled_procedure_step_id.is_empty()
                {
                    None
                } else {
                    keys.get(key_tuple(&given))?.map(|v| v.value())
                };
                match existing {
                    Some(id) => {
                        let updated = replace(&mut table, &mut keys, id, item, now)?;
                        out.push((updated, Upserted::Updated));
                    }
                    None => {
                        let id = next_id(&mut meta)?;
                        let created = insert_new(&mut table, &mut keys, id, item, now)?;
                        out.push((created, Upserted::Created));
                    }
                }
            }
            audit_in(tx, &out, audit)?;
            let changes = out.iter().map(|(i, _)| Change::Put(i.clone())).collect();
            Ok((out, changes))
        })
    }

    /// Replaces an item's dataset (its id stays; Study Instance UID and status are kept when
    /// the new dataset leaves them out), audited (`audit`, given the new item) in the same
    /// transaction.
    pub fn update(
        &self,
        id: u64,
        item: NewItem,
        audit: impl AuditHook<WorklistItem>,
    ) -> Result<WorklistItem, WorklistStoreError> {
        self.write(|tx, _| {
            let mut table = tx.open_table(ITEMS)?;
            let mut keys = tx.open_table(ITEM_KEYS)?;
            let updated = replace(&mut table, &mut keys, id, item, now_us())?;
            audit_in(tx, &updated, audit)?;
            Ok((updated.clone(), vec![Change::Put(updated)]))
        })
    }

    /// Cancels a step that no modality has started: status CANCELED. The item stays (for the
    /// record and the API) but is no longer offered to modalities. Audited (`audit`, given the
    /// cancelled item and its status before) in the same transaction.
    pub fn cancel(
        &self,
        id: u64,
        audit: impl AuditHook<(WorklistItem, SpsStatus)>,
    ) -> Result<WorklistItem, WorklistStoreError> {
        self.write(|tx, _| {
            let mut table = tx.open_table(ITEMS)?;
            let mut item = get_item(&table, id)?.ok_or(WorklistStoreError::NotFound(id))?;
            let status = item.status();
            if !status.can_cancel() {
                return Err(WorklistStoreError::CannotCancel { id, status });
            }
            model::set_status(&mut item.dataset, SpsStatus::Canceled);
            item.updated_us = now_us();
            table.insert(id, encode_item(&item).as_slice())?;
            let done = (item, status);
            audit_in(tx, &done, audit)?;
            let (item, _) = done;
            Ok((item.clone(), vec![Change::Put(item)]))
        })
    }

    /// Deletes an item, audited (`audit`, given what was deleted) in the same transaction;
    /// returns what was deleted.
    pub fn delete(
        &self,
        id: u64,
        audit: impl AuditHook<WorklistItem>,
    ) -> Result<WorklistItem, WorklistStoreError> {
        self.write(|tx, _| {
            let mut table = tx.open_table(ITEMS)?;
            let mut keys = tx.open_table(ITEM_KEYS)?;
            let item = match table.remove(id)? {
                Some(bytes) => decode_item(id, bytes.value())?,
                None => return Err(WorklistStoreError::NotFound(id)),
            };
            keys.remove(key_tuple(&item.key()))?;
            audit_in(tx, &item, audit)?;
            Ok((item, vec![Change::Remove(id)]))
        })
    }

    /// One item.
    pub fn get(&self, id: u64) -> Option<Arc<WorklistItem>> {
        self.items
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .map(|c| Arc::clone(&c.item))
    }

    /// Items in id order, starting after `after` (for paging), at most `limit`.
    pub fn list(&self, after: Option<u64>, limit: usize) -> Vec<Arc<WorklistItem>> {
        let cache = self.items.read().unwrap_or_else(PoisonError::into_inner);
        let range = match after {
            Some(a) => cache.range((Bound::Excluded(a), Bound::Unbounded)),
            None => cache.range(..),
        };
        range
            .take(limit)
            .map(|(_, c)| Arc::clone(&c.item))
            .collect()
    }

    /// Number of items.
    pub fn count(&self) -> usize {
        self.items
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Runs a Modality Worklist C-FIND: the projected responses of the matching items, in id
    /// order, at most `limit`. Finished steps (completed, discontinued, cancelled) are left
    /// out unless the query constrains the step status (see
    /// [`Query::constrains_sps_status`]). Nothing is locked once it returns, so a slow peer
    /// holds nothing up; the SCP converts each response with `Dataset::to_dicom` as it sends
    /// it and stops at a C-CANCEL.
    pub fn find(&self, query: &Query, limit: Option<usize>) -> Vec<Dataset> {
        let show_finished = query.constrains_sps_status();
        let prefilter = Prefilter::of(query);
        let limit = limit.unwrap_or(usize::MAX);
        let cache = self.items.read().unwrap_or_else(PoisonError::into_inner);
        cache
            .values()
            .filter(|c| (show_finished || !c.finished) && prefilter.admits(&c.hint))
            .filter(|c| query.matches(&c.item.dataset))
            .take(limit)
            .map(|c| query.project(&c.item.dataset))
            .collect()
    }

    /// MPPS N-CREATE: creates the instance (see `mpps::n_create`), links the worklist items
    /// its Scheduled Step Attributes Sequence names and sets them STARTED — one transaction.
    pub fn mpps_create(
        &self,
        sop_instance_uid: &str,
        attributes: Dataset,
    ) -> Result<MppsRecord, MppsStoreError> {
        let now = now_us();
        self.write(|tx, cache| {
            let mut table = tx.open_table(MPPS).map_err(WorklistStoreError::from)?;
            let existing = match table.get(sop_instance_uid)? {
                Some(bytes) => Some(decode_mpps(sop_instance_uid, bytes.value())?),
                None => None,
            };
            let instance = mpps::n_create(
                existing.as_ref().map(|r| &r.instance),
                sop_instance_uid,
                attributes,
            )?;
            let refs = mpps::step_refs(&instance.dataset);
            let linked: Vec<u64> = cache
                .values()
                .filter(|item| mpps::links_to(&refs, &item.dataset))
                .map(|item| item.id)
                .collect();
            let mut items = tx.open_table(ITEMS).map_err(WorklistStoreError::from)?;
            let changes = set_items_status(
                &mut items,
                &linked,
                mpps::item_status_for(instance.status()),
                now,
            )?;
            let record = MppsRecord {
                instance,
                created_us: now,
                updated_us: now,
                linked_items: linked,
            };
            table.insert(
                record.instance.sop_instance_uid.as_str(),
                encode_mpps(&record).as_slice(),
            )?;
            Ok((record, changes))
        })
    }

    /// MPPS N-SET: applies the modification list (see `mpps::n_set`) and, when the status
    /// becomes COMPLETED or DISCONTINUED, sets the linked items' status — one transaction.
    pub fn mpps_set(
        &self,
        sop_instance_uid: &str,
        modifications: &Dataset,
    ) -> Result<MppsRecord, MppsStoreError> {
        let now = now_us();
        self.write(|tx, _| {
            let mut table = tx.open_table(MPPS).map_err(WorklistStoreError::from)?;
            let current = match table.get(sop_instance_uid)? {
                Some(bytes) => Some(decode_mpps(sop_instance_uid, bytes.value())?),
                None => None,
            };
            let instance = mpps::n_set(
                sop_instance_uid,
                current.as_ref().map(|r| &r.instance),
                modifications,
            )?;
            // n_set refused an unknown UID, so `current` is there.
            let current =
                current.ok_or_else(|| MppsError::NoSuchInstance(sop_instance_uid.into()))?;
            let status = instance.status();
            let changes = if status == current.status() {
                Vec::new()
            } else {
                let mut items = tx.open_table(ITEMS).map_err(WorklistStoreError::from)?;
                set_items_status(
                    &mut items,
                    &current.linked_items,
                    mpps::item_status_for(status),
                    now,
                )?
            };
            let record = MppsRecord {
                instance,
                created_us: current.created_us,
                updated_us: now,
                linked_items: current.linked_items,
            };
            table.insert(
                record.instance.sop_instance_uid.as_str(),
                encode_mpps(&record).as_slice(),
            )?;
            Ok((record, changes))
        })
    }

    /// One MPPS instance.
    pub fn mpps_get(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<MppsRecord>, WorklistStoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MPPS)?;
        match table.get(sop_instance_uid)? {
            Some(bytes) => Ok(Some(decode_mpps(sop_instance_uid, bytes.value())?)),
            None => Ok(None),
        }
    }

    /// MPPS instances in SOP Instance UID order, after `after` (paging), at most `limit`.
    pub fn mpps_list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MppsRecord>, WorklistStoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MPPS)?;
        let iter = match after {
            Some(a) => table.range::<&str>((Bound::Excluded(a), Bound::Unbounded))?,
            None => table.iter()?,
        };
        let mut out = Vec::new();
        for entry in iter.take(limit) {
            let (uid, bytes) = entry?;
            out.push(decode_mpps(uid.value(), bytes.value())?);
        }
        Ok(out)
    }
}

fn next_id(meta: &mut redb::Table<'_, &'static str, u64>) -> Result<u64, WorklistStoreError> {
    let id = meta.get(NEXT_ITEM_ID)?.map_or(1, |v| v.value());
    meta.insert(NEXT_ITEM_ID, id + 1)?;
    Ok(id)
}

fn get_item(table: &ItemsTable<'_>, id: u64) -> Result<Option<WorklistItem>, WorklistStoreError> {
    match table.get(id)? {
        Some(bytes) => Ok(Some(decode_item(id, bytes.value())?)),
        None => Ok(None),
    }
}

fn insert_new(
    table: &mut ItemsTable<'_>,
    keys: &mut KeysTable<'_>,
    id: u64,
    item: NewItem,
    now: u64,
) -> Result<WorklistItem, WorklistStoreError> {
    let dataset = item.complete(id, None, generate_uid);
    let key = ItemKey::of(&dataset);
    if let Some(existing) = keys.get(key_tuple(&key))? {
        return Err(WorklistStoreError::DuplicateKey {
            id: existing.value(),
            key,
        });
    }
    keys.insert(key_tuple(&key), id)?;
    let item = WorklistItem {
        id,
        created_us: now,
        updated_us: now,
        dataset,
    };
    table.insert(id, encode_item(&item).as_slice())?;
    Ok(item)
}

fn replace(
    table: &mut ItemsTable<'_>,
    keys: &mut KeysTable<'_>,
    id: u64,
    item: NewItem,
    now: u64,
) -> Result<WorklistItem, WorklistStoreError> {
    let previous = get_item(table, id)?.ok_or(WorklistStoreError::NotFound(id))?;
    let dataset = item.complete(id, Some(&previous.dataset), generate_uid);
    let old_key = previous.key();
    let key = ItemKey::of(&dataset);
    if key != old_key {
        if let Some(existing) = keys.get(key_tuple(&key))? {
            return Err(WorklistStoreError::DuplicateKey {
                id: existing.value(),
                key,
            });
        }
        keys.remove(key_tuple(&old_key))?;
        keys.insert(key_tuple(&key), id)?;
    }
    let item = WorklistItem {
        id,
        created_us: previous.created_us,
        updated_us: now,
        dataset,
    };
    table.insert(id, encode_item(&item).as_slice())?;
    Ok(item)
}

fn set_items_status(
    table: &mut ItemsTable<'_>,
    ids: &[u64],
    status: SpsStatus,
    now: u64,
) -> Result<Vec<Change>, WorklistStoreError> {
    let mut changes = Vec::with_capacity(ids.len());
    for id in ids {
        // An item deleted since the N-CREATE is simply gone.
        if let Some(mut item) = get_item(table, *id)? {
            model::set_status(&mut item.dataset, status);
            item.updated_us = now;
            table.insert(*id, encode_item(&item).as_slice())?;
            changes.push(Change::Put(item));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::no_audit;
    use crate::dicom::json::dataset_from_json;
    use crate::worklist::model::parse_items;
    use dicom_core::VR;
    use dicom_dictionary_std::tags;
    use serde_json::json;

    fn item_json(
        patient: &str,
        acc: &str,
        sps_id: Option<&str>,
        date: &str,
        ae: &str,
    ) -> serde_json::Value {
        let mut step = json!({
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00400001": {"vr": "AE", "Value": [ae]},
            "00400002": {"vr": "DA", "Value": [date]},
            "00400003": {"vr": "TM", "Value": ["0900"]}
        });
        if let Some(id) = sps_id {
            step["00400009"] = json!({"vr": "SH", "Value": [id]});
        }
        json!({
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": format!("{patient}^Test")}]},
            "00100020": {"vr": "LO", "Value": [patient]},
            "00080050": {"vr": "SH", "Value": [acc]},
            "00401001": {"vr": "SH", "Value": ["RP1"]},
            "00400100": {"vr": "SQ", "Value": [step]}
        })
    }

    fn new_item(patient: &str, acc: &str, sps_id: Option<&str>) -> NewItem {
        parse_items(&item_json(patient, acc, sps_id, "20260115", "CT1").to_string())
            .unwrap()
            .remove(0)
    }

    fn open() -> (tempfile::TempDir, WorklistStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = WorklistStore::open_in(dir.path()).unwrap();
        (dir, store)
    }

    fn find_all(store: &WorklistStore, identifier: serde_json::Value) -> Vec<Dataset> {
        let q = Query::from_dataset(&dataset_from_json(&identifier).unwrap()).unwrap();
        store.find(&q, None)
    }

    /// A sync of the worklist database fails (EIO): redb latches, every later write fails
    /// too, and the store records a vital failure so that the daemon restarts and reopens it.
    #[test]
    fn a_failed_sync_is_a_vital_failure() {
        let (backend, handle) = crate::store::crashdb::CrashBackend::from_image(Vec::new());
        let db = Database::builder().create_with_backend(backend).unwrap();
        let health: &'static crate::health::Registry = Box::leak(Box::default());
        let store = WorklistStore::from_database(db, health).unwrap();
        store
            .create(new_item("P1", "ACC1", None), no_audit)
            .unwrap();
        assert_eq!(health.failed(), None);
        handle.fail_sync_after(0);
        assert!(store
            .create(new_item("P2", "ACC2", None), no_audit)
            .is_err());
        let later = store.create(new_item("P3", "ACC3", None), no_audit);
        assert!(
            later.as_ref().is_err_and(WorklistStoreError::needs_reopen),
            "latched: {later:?}"
        );
        health.assert_fails_within("worklist database", std::time::Duration::ZERO);
    }

    #[test]
    fn crud_round_trip() {
        let (dir, store) = open();
        let a = store
            .create(new_item("P1", "ACC1", Some("S1")), no_audit)
            .unwrap();
        let b = store
            .create(new_item("P2", "ACC2", None), no_audit)
            .unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(a.status(), SpsStatus::Scheduled);
        assert_eq!(*store.get(1).unwrap(), a);
        assert_eq!(store.count(), 2);
        assert_eq!(
            store.list(None, 10),
            vec![Arc::new(a.clone()), Arc::new(b.clone())]
        );
        assert_eq!(store.list(Some(1), 10), vec![Arc::new(b.clone())]);
        assert_eq!(store.list(None, 1), vec![Arc::new(a.clone())]);

        // Update: new patient name, same id, Study UID kept.
        let mut changed = item_json("P1", "ACC1", Some("S1"), "20260116", "CT1");
        changed["00100010"]["Value"][0]["Alphabetic"] = json!("Renamed^Test");
        let updated = store
            .update(
                1,
                parse_items(&changed.to_string()).unwrap().remove(0),
                no_audit,
            )
            .unwrap();
        assert_eq!(updated.id, 1);
        assert_eq!(updated.created_us, a.created_us);
        assert_eq!(
            updated.dataset.str(tags::PATIENT_NAME),
            Some("Renamed^Test")
        );
        assert_eq!(
            updated.dataset.str(tags::STUDY_INSTANCE_UID),
            a.dataset.str(tags::STUDY_INSTANCE_UID)
        );

        // Cancel, then cancel again is refused.
        let cancelled = store.cancel(1, no_audit).unwrap();
        assert_eq!(cancelled.status(), SpsStatus::Canceled);
        assert!(matches!(
            store.cancel(1, no_audit),
            Err(WorklistStoreError::CannotCancel {
                id: 1,
                status: SpsStatus::Canceled
            })
        ));

        // Delete, and not-found errors.
        assert_eq!(store.delete(2, no_audit).unwrap().id, 2);
        assert!(store.get(2).is_none());
        assert!(matches!(
            store.delete(2, no_audit),
            Err(WorklistStoreError::NotFound(2))
        ));
        assert!(matches!(
            store.update(2, new_item("P2", "ACC2", None), no_audit),
            Err(WorklistStoreError::NotFound(2))
        ));

        // Reopen: everything persisted, ids never reused.
        drop(store);
        let store = WorklistStore::open_in(dir.path()).unwrap();
        assert_eq!(*store.get(1).unwrap(), cancelled);
        assert_eq!(
            store
                .create(new_item("P3", "ACC3", None), no_audit)
                .unwrap()
                .id,
            3
        );
    }

    #[test]
    fn order_keys_are_unique_and_upsert_uses_them() {
        let (_dir, store) = open();
        store
            .create(new_item("P1", "ACC1", Some("S1")), no_audit)
            .unwrap();
        let err = store
            .create(new_item("P1", "ACC1", Some("S1")), no_audit)
            .unwrap_err();
        assert!(
            matches!(err, WorklistStoreError::DuplicateKey { id: 1, .. }),
            "{err}"
        );
        // A failed batch writes nothing.
        let err = store
            .create_many(
                vec![
                    new_item("P9", "ACC9", Some("S9")),
                    new_item("P1", "ACC1", Some("S1")),
                ],
                no_audit,
            )
            .unwrap_err();
        assert!(matches!(err, WorklistStoreError::DuplicateKey { .. }));
        assert_eq!(store.count(), 1);

        let results = store
            .upsert_many(
                vec![
                    new_item("P1", "ACC1", Some("S1")),
                    new_item("P2", "ACC2", Some("S1")),
                ],
                no_audit,
            )
            .unwrap();
        assert_eq!(results[0].1, Upserted::Updated);
        assert_eq!(results[0].0.id, 1);
        assert_eq!(results[1].1, Upserted::Created);
        assert_eq!(store.count(), 2);
        // Changing an item's key onto another's is refused.
        let err = store
            .update(1, new_item("P2", "ACC2", Some("S1")), no_audit)
            .unwrap_err();
        assert!(matches!(err, WorklistStoreError::DuplicateKey { .. }));
    }

    #[test]
    fn find_matches_projects_and_hides_finished_steps() {
        let (_dir, store) = open();
        for (p, acc, date, ae) in [
            ("P1", "ACC1", "20260115", "CT1"),
            ("P2", "ACC2", "20260116", "CT1"),
            ("P3", "ACC3", "20260115", "MR1"),
        ] {
            let doc = item_json(p, acc, None, date, ae).to_string();
            store
                .create(parse_items(&doc).unwrap().remove(0), no_audit)
                .unwrap();
        }
        let found = find_all(
            &store,
            json!({
                "00100020": {"vr": "LO"},
                "00400100": {"vr": "SQ", "Value": [{
                    "00400001": {"vr": "AE", "Value": ["CT1"]},
                    "00400002": {"vr": "DA", "Value": ["20260115"]}
                }]}
            }),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].str(tags::PATIENT_ID), Some("P1"));
        assert_eq!(found[0].len(), 2, "only the requested keys");

        store.cancel(1, no_audit).unwrap();
        let everyone = json!({"00100020": {"vr": "LO"}});
        assert_eq!(
            find_all(&store, everyone.clone()).len(),
            2,
            "cancelled step hidden"
        );
        let cancelled = find_all(
            &store,
            json!({"00400100": {"vr": "SQ", "Value": [{"00400020": {"vr": "CS", "Value": ["CANCELED"]}}]}}),
        );
        assert_eq!(cancelled.len(), 1, "unless asked for by status");
        let q = Query::from_dataset(&dataset_from_json(&everyone).unwrap()).unwrap();
        assert_eq!(store.find(&q, Some(1)).len(), 1, "limit");
    }

    fn mpps_attrs(acc: &str, sps_id: &str) -> Dataset {
        dataset_from_json(&json!({
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00100020": {"vr": "LO", "Value": ["P1"]},
            "00400241": {"vr": "AE", "Value": ["CT1"]},
            "00400244": {"vr": "DA", "Value": ["20260115"]},
            "00400245": {"vr": "TM", "Value": ["091000"]},
            "00400252": {"vr": "CS", "Value": ["IN PROGRESS"]},
            "00400253": {"vr": "SH", "Value": ["PPS1"]},
            "00400270": {"vr": "SQ", "Value": [{
                "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
                "00080050": {"vr": "SH", "Value": [acc]},
                "00400009": {"vr": "SH", "Value": [sps_id]}
            }]}
        }))
        .unwrap()
    }

    fn status_set(status: &str) -> Dataset {
        let mut ds = Dataset::new();
        ds.put_str(tags::PERFORMED_PROCEDURE_STEP_STATUS, VR::CS, status);
        ds.put_str(tags::PERFORMED_PROCEDURE_STEP_END_DATE, VR::DA, "20260115");
        ds
    }

    #[test]
    fn mpps_moves_the_linked_item_through_its_states() {
        let (_dir, store) = open();
        let item = store
            .create(new_item("P1", "ACC1", Some("S1")), no_audit)
            .unwrap();
        let other = store
            .create(new_item("P2", "ACC2", Some("S1")), no_audit)
            .unwrap();

        let rec = store
            .mpps_create("1.2.3.100", mpps_attrs("ACC1", "S1"))
            .unwrap();
        assert_eq!(rec.linked_items, vec![item.id]);
        assert_eq!(rec.status(), PpsStatus::InProgress);
        assert_eq!(store.get(item.id).unwrap().status(), SpsStatus::Started);
        assert_eq!(store.get(other.id).unwrap().status(), SpsStatus::Scheduled);

        let err = store
            .mpps_create("1.2.3.100", mpps_attrs("ACC1", "S1"))
            .unwrap_err();
        assert_eq!(err.status(), 0x0111);

        let rec = store
            .mpps_set("1.2.3.100", &status_set("COMPLETED"))
            .unwrap();
        assert_eq!(rec.status(), PpsStatus::Completed);
        assert_eq!(
            rec.instance
                .dataset
                .str(tags::PERFORMED_PROCEDURE_STEP_END_DATE),
            Some("20260115")
        );
        assert_eq!(store.get(item.id).unwrap().status(), SpsStatus::Completed);

        let err = store
            .mpps_set("1.2.3.100", &status_set("DISCONTINUED"))
            .unwrap_err();
        assert_eq!(err.status(), 0x0110);
        assert_eq!(store.get(item.id).unwrap().status(), SpsStatus::Completed);
        assert_eq!(store.mpps_get("1.2.3.100").unwrap().unwrap(), rec);

        let err = store
            .mpps_set("1.2.3.101", &status_set("COMPLETED"))
            .unwrap_err();
        assert_eq!(err.status(), 0x0112);
    }

    #[test]
    fn refused_mpps_changes_nothing() {
        let (_dir, store) = open();
        let item = store
            .create(new_item("P1", "ACC1", Some("S1")), no_audit)
            .unwrap();
        let mut attrs = mpps_attrs("ACC1", "S1");
        attrs.put_str(tags::PERFORMED_PROCEDURE_STEP_STATUS, VR::CS, "COMPLETED");
        let err = store.mpps_create("1.2.3.100", attrs).unwrap_err();
        assert_eq!(err.status(), 0x0106);
        assert!(store.mpps_get("1.2.3.100").unwrap().is_none());
        assert_eq!(store.get(item.id).unwrap().status(), SpsStatus::Scheduled);
    }

    #[test]
    fn discontinued_and_unscheduled_mpps() {
        let (_dir, store) = open();
        let item = store
            .create(new_item("P1", "ACC1", Some("S1")), no_audit)
            .unwrap();
        store
            .mpps_create("1.2.3.100", mpps_attrs("ACC1", "S1"))
            .unwrap();
        store
            .mpps_set("1.2.3.100", &status_set("DISCONTINUED"))
            .unwrap();
        assert_eq!(
            store.get(item.id).unwrap().status(),
            SpsStatus::Discontinued
        );
        // No accession, no step ID: an unscheduled procedure links nothing.
        let rec = store.mpps_create("1.2.3.101", mpps_attrs("", "")).unwrap();
        assert!(rec.linked_items.is_empty());
        let all = store.mpps_list(None, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(store.mpps_list(Some("1.2.3.100"), 10).unwrap().len(), 1);
    }

    /// Not an assertion: prints how long one C-FIND scan of 10,000 items takes, so the cost
    /// of the index-less design is on record (`cargo test find_scan_timing -- --nocapture`).
    #[test]
    fn find_scan_timing() {
        let (_dir, store) = open();
        let items: Vec<NewItem> = (0..10_000)
            .map(|i| {
                let day = 10 + i % 20;
                let doc = item_json(
                    &format!("P{i}"),
                    &format!("ACC{i}"),
                    Some("S1"),
                    &format!("202601{day:02}"),
                    if i % 2 == 0 { "CT1" } else { "CT2" },
                )
                .to_string();
                parse_items(&doc).unwrap().remove(0)
            })
            .collect();
        store.create_many(items, no_audit).unwrap();
        // Built directly: a range is a valid key but not a valid stored DA, so not JSON.
        let mut identifier = dataset_from_json(&json!({
            "00100010": {"vr": "PN"},
            "00100020": {"vr": "LO"},
            "00080050": {"vr": "SH"},
            "00400100": {"vr": "SQ", "Value": [{
                "00400001": {"vr": "AE", "Value": ["CT1"]},
                "00400003": {"vr": "TM"},
                "00080060": {"vr": "CS"}
            }]}
        }))
        .unwrap();
        identifier
            .items_mut(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE)
            .unwrap()[0]
            .put_str(
                tags::SCHEDULED_PROCEDURE_STEP_START_DATE,
                VR::DA,
                "20260115-20260116",
            );
        let q = Query::from_dataset(&identifier).unwrap();
        let start = std::time::Instant::now();
        let runs = 5;
        let mut found = 0;
        for _ in 0..runs {
            found = store.find(&q, None).len();
        }
        let per_query = start.elapsed() / runs;
        assert_eq!(found, 500);
        println!("worklist C-FIND over 10000 items: {per_query:?} per query, {found} matches");
    }

    fn failing<R>(_: &redb::WriteTransaction, _: &R) -> Result<(), String> {
        Err("disk on fire".into())
    }

    /// A hook writing the change's audit entry to the outbox (as the API's and the CLI's do).
    fn to_outbox<R>(action: &'static str) -> impl AuditHook<R> {
        move |tx: &redb::WriteTransaction, _: &R| {
            crate::audit::outbox::put(
                tx,
                1,
                &crate::audit::AuditEvent {
                    actor: "alice",
                    source: "cli",
                    action,
                    details: json!({}),
                },
            )
            .map(drop)
        }
    }

    #[test]
    fn a_worklist_change_and_its_outbox_entry_commit_together_or_not_at_all() {
        let (dir, store) = open();
        let pending = |s: &WorklistStore| crate::audit::outbox::pending(s.database()).unwrap();
        let refused = |e: WorklistStoreError| {
            assert!(
                matches!(&e, WorklistStoreError::Audit(m) if m == "disk on fire"),
                "{e}"
            );
            assert!(e.to_string().contains("the change was not made"), "{e}");
        };
        // Every kind of change with a failing hook: nothing is stored, nothing is cached.
        refused(
            store
                .create(new_item("P1", "ACC1", Some("S1")), failing)
                .unwrap_err(),
        );
        refused(
            store
                .upsert_many(vec![new_item("P1", "ACC1", Some("S1"))], failing)
                .unwrap_err(),
        );
        assert_eq!(store.count(), 0);
        store
            .create(
                new_item("P1", "ACC1", Some("S1")),
                to_outbox("worklist.create"),
            )
            .unwrap();
        assert_eq!(pending(&store), 1);
        let before = store.get(1).unwrap();
        refused(
            store
                .update(1, new_item("P1", "ACC1", Some("S2")), failing)
                .unwrap_err(),
        );
        refused(store.cancel(1, failing).unwrap_err());
        refused(store.delete(1, failing).unwrap_err());
        assert_eq!(store.get(1).unwrap(), before);
        assert_eq!(pending(&store), 1);
        // Also on disk, not only in the cache.
        drop(store);
        let store = WorklistStore::open_in(dir.path()).unwrap();
        assert_eq!((store.count(), store.get(1).unwrap()), (1, before));
        assert_eq!(pending(&store), 1);

        // Working hooks: each change and its outbox entry.
        store
            .upsert_many(
                vec![new_item("P2", "ACC2", Some("S1"))],
                to_outbox("worklist.import"),
            )
            .unwrap();
        store
            .update(
                1,
                new_item("P1", "ACC1", Some("S2")),
                to_outbox("worklist.update"),
            )
            .unwrap();
        let mut previous = None;
        store
            .cancel(
                1,
                |tx: &redb::WriteTransaction, (item, was): &(WorklistItem, SpsStatus)| {
                    previous = Some((item.id, item.status(), *was));
                    to_outbox("worklist.cancel")(tx, &())
                },
            )
            .unwrap();
        assert_eq!(
            previous,
            Some((1, SpsStatus::Canceled, SpsStatus::Scheduled))
        );
        store.delete(2, to_outbox("worklist.delete")).unwrap();
        assert_eq!(pending(&store), 5);
        assert_eq!(store.count(), 1);
    }
}
