//! The instance index in redb: patients, studies, series and instances.
//!
//! Rows of new objects are written only by ingest's checkpoints (and the start-up replay),
//! inside the transaction that also holds their forwarding jobs and the journal position, so
//! an acknowledged object always has its rows once its checkpoint committed. Readers
//! (query/retrieve, the admin API, tests) use [`Index`].

use std::collections::HashMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::attrs::IndexAttrs;
use super::summary::StudySummary;
use crate::db;

/// Errors of the index layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// redb failed (I/O, corruption, storage full).
    #[error("index database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode (written by an incompatible version?).
    #[error("index record for {key} does not decode: {source}")]
    Decode {
        /// Key of the record.
        key: String,
        /// Decoder error.
        source: postcard::Error,
    },
}

impl IndexError {
    /// Whether the database is unusable until it is opened again ([`db::needs_reopen`]).
    pub fn needs_reopen(&self) -> bool {
        matches!(self, IndexError::Db(e) if db::needs_reopen(e))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self {
                IndexError::Db(e.into())
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

/// One stored instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// SOP Instance UID (from the C-STORE command; equals the dataset's).
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Instance Number (as received, IS text).
    pub instance_number: String,
    /// Transfer syntax the dataset was received (and is stored) in.
    pub transfer_syntax_uid: String,
    /// Size of the stored file in bytes (header included).
    pub file_size: u64,
    /// Size of the dataset bytes (as received).
    pub dataset_size: u64,
    /// BLAKE3 hash of the dataset bytes, hex.
    pub dataset_blake3: String,
    /// Reception time, microseconds since the Unix epoch.
    pub received_at_us: u64,
    /// Calling AE title of the association that sent it.
    pub calling_ae_title: String,
    /// Called AE title of that association.
    pub called_ae_title: String,
    /// Path relative to the data directory.
    pub path: String,
}

/// One series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesRecord {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Modality.
    pub modality: String,
    /// Series Number.
    pub series_number: String,
    /// Series Description.
    pub series_description: String,
    /// Instances stored in this series.
    pub num_instances: u64,
}

/// One study.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyRecord {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Patient ID.
    pub patient_id: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Study Date.
    pub study_date: String,
    /// Study Time.
    pub study_time: String,
    /// Accession Number.
    pub accession_number: String,
    /// Study Description.
    pub study_description: String,
    /// Study ID.
    pub study_id: String,
    /// Referring Physician's Name.
    pub referring_physician_name: String,
    /// Modalities in Study (distinct series modalities, sorted).
    pub modalities_in_study: Vec<String>,
    /// Series in the study.
    pub num_series: u64,
    /// Instances in the study.
    pub num_instances: u64,
}

/// One patient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientRecord {
    /// Patient ID.
    pub patient_id: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Patient's Birth Date.
    pub patient_birth_date: String,
    /// Patient's Sex.
    pub patient_sex: String,
    /// Studies of the patient.
    pub num_studies: u64,
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, IndexError> {
    postcard::from_bytes(bytes).map_err(|source| IndexError::Decode {
        key: key.to_owned(),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encoding of plain records cannot fail")
}

/// Creates the tables if missing, so read transactions never see "table does not exist".
/// Forgets where an object was delivered: it is gone, or its bytes were replaced (a new
/// version has been delivered nowhere).
pub fn forget_deliveries(tx: &WriteTransaction, sop_instance_uid: &str) -> Result<(), IndexError> {
    let mut t = tx.open_table(db::DELIVERED)?;
    let mut dests = Vec::new();
    for row in t.range((sop_instance_uid, "")..)? {
        let (k, _) = row?;
        let (sop, dest) = k.value();
        if sop != sop_instance_uid {
            break;
        }
        dests.push(dest.to_owned());
    }
    for d in dests {
        t.remove((sop_instance_uid, d.as_str()))?;
    }
    Ok(())
}

pub fn create_tables(tx: &WriteTransaction) -> Result<(), IndexError> {
    tx.open_table(db::INSTANCES)?;
    tx.open_table(db::SERIES)?;
    tx.open_table(db::STUDIES)?;
    tx.open_table(db::PATIENTS)?;
    tx.open_table(db::JOURNAL)?;
    // The forwarding queue shares the database (and the checkpoints' transactions).
    tx.open_table(db::QUEUE)?;
    tx.open_table(db::IN_FLIGHT)?;
    tx.open_table(db::DEAD)?;
    tx.open_table(db::QUEUE_COUNTS)?;
    tx.open_table(db::OUTSTANDING)?;
    tx.open_table(db::JOBS_OF)?;
    tx.open_table(db::RETIRABLE)?;
    tx.open_table(db::PAUSED)?;
    tx.open_table(db::DELIVERED)?;
    tx.open_table(db::META)?;
    // Admin API tables.
    tx.open_table(db::API_TOKENS)?;
    tx.open_table(db::USERS)?;
    tx.open_table(db::AUDIT)?;
    tx.open_table(db::CONFIG)?;
    // Storage Commitment's, here rather than by its reporter thread when it first looks:
    // that write ran beside ingest, and on a disk that had just filled up it failed and
    // latched the whole database (redb refuses everything after an I/O error).
    tx.open_table(db::COMMITMENTS)?;
    tx.open_table(db::COMMITMENT_SCHEDULE)?;
    tx.open_table(db::COMMITMENT_AE_COUNTS)?;
    super::query::create_tables(tx)?;
    Ok(())
}

/// Looks an instance up inside a write transaction (sees the transaction's own inserts, so two
/// copies of one instance in the same batch are recognised).
pub fn get_instance_tx(
    tx: &WriteTransaction,
    sop_instance_uid: &str,
) -> Result<Option<InstanceRecord>, IndexError> {
    instance_row(&tx.open_table(db::INSTANCES)?, sop_instance_uid)
}

/// An instance's row in an open `INSTANCES` table (of a read or a write transaction).
fn instance_row(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    sop_instance_uid: &str,
) -> Result<Option<InstanceRecord>, IndexError> {
    t.get(sop_instance_uid)?
        .map(|g| decode(sop_instance_uid, g.value()))
        .transpose()
}

/// Writes the rows of a newly stored instance (or of a replacement, `replaced = true`, which
/// leaves the counts alone).
pub fn put_instance(
    tx: &WriteTransaction,
    rec: &InstanceRecord,
    attrs: &IndexAttrs,
    replaced: bool,
) -> Result<(), IndexError> {
    let mut parents = ParentRows::default();
    let mut tables = InstanceTables::open(tx)?;
    put_instance_into(tx, &mut tables, rec, attrs, replaced, &mut parents)?;
    drop(tables);
    parents.flush(tx)?;
    super::query::sync_study_keys(tx, &rec.study_instance_uid)
}

/// The series, study and patient rows that a batch of new instances updates, held in memory
/// and written once by [`ParentRows::flush`], not once per instance: a checkpoint of
/// thousands of objects of one series reads and writes each of those rows once.
#[derive(Debug, Default)]
pub struct ParentRows {
    series: HashMap<(String, String), SeriesRecord>,
    studies: HashMap<String, StudyRecord>,
    patients: HashMap<String, PatientRecord>,
}

impl ParentRows {
    /// Writes the rows held and forgets them. Call it before anything else in the
    /// transaction reads or changes those rows ([`remove_instance`], the study keys) and
    /// before the commit.
    pub fn flush(&mut self, tx: &WriteTransaction) -> Result<(), IndexError> {
        if !self.series.is_empty() {
            let mut t = tx.open_table(db::SERIES)?;
            for ((study, series), row) in self.series.drain() {
                t.insert((study.as_str(), series.as_str()), encode(&row).as_slice())?;
            }
        }
        if !self.studies.is_empty() {
            let mut t = tx.open_table(db::STUDIES)?;
            for (study, row) in self.studies.drain() {
                t.insert(study.as_str(), encode(&row).as_slice())?;
            }
        }
        if !self.patients.is_empty() {
            let mut t = tx.open_table(db::PATIENTS)?;
            for (pid, row) in self.patients.drain() {
                t.insert(pid.as_str(), encode(&row).as_slice())?;
            }
        }
        Ok(())
    }
}

/// The row held under `key`, read by `load` the first time (a default row if there is none):
/// the row and whether it is new to the index.
fn held<K: std::hash::Hash + Eq, V: Default>(
    rows: &mut HashMap<K, V>,
    key: K,
    load: impl FnOnce() -> Result<Option<V>, IndexError>,
) -> Result<(&mut V, bool), IndexError> {
    Ok(match rows.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => (e.into_mut(), false),
        std::collections::hash_map::Entry::Vacant(e) => {
            let existing = load()?;
            let new = existing.is_none();
            (e.insert(existing.unwrap_or_default()), new)
        }
    })
}

/// The instance and Query/Retrieve object tables, which a checkpoint writes once per object,
/// opened once for a run of objects: opening a table costs about as much as the insert it
/// serves. While it is held nothing else in the transaction may open those two tables (redb
/// refuses): drop it before [`remove_instance`] and the study keys.
pub struct InstanceTables<'tx> {
    instances: redb::Table<'tx, &'static str, &'static [u8]>,
    objects: redb::Table<'tx, (&'static str, &'static str, &'static str), &'static [u8]>,
}

impl<'tx> InstanceTables<'tx> {
    /// Opens both tables in `tx`.
    pub fn open(tx: &'tx WriteTransaction) -> Result<Self, IndexError> {
        Ok(InstanceTables {
            instances: tx.open_table(db::INSTANCES)?,
            objects: tx.open_table(db::QR_OBJECTS)?,
        })
    }

    /// The tables held in `slot`, opened there first if they are not.
    pub fn held<'a>(
        slot: &'a mut Option<Self>,
        tx: &'tx WriteTransaction,
    ) -> Result<&'a mut Self, IndexError> {
        let tables = match slot.take() {
            Some(t) => t,
            None => Self::open(tx)?,
        };
        Ok(slot.insert(tables))
    }

    /// An instance's row, as [`get_instance_tx`] reads it.
    pub fn get(&self, sop_instance_uid: &str) -> Result<Option<InstanceRecord>, IndexError> {
        instance_row(&self.instances, sop_instance_uid)
    }
}

/// [`put_instance`] for a writer of many instances in one transaction (the checkpoint), into
/// `tables` held open across them: the series, study and patient rows stay in `parents`
/// until its [`ParentRows::flush`], and the study's Query/Retrieve key rows are the caller's
/// ([`super::query::sync_study_keys`] once per touched study, after the flush, before the
/// commit).
pub fn put_instance_into(
    tx: &WriteTransaction,
    tables: &mut InstanceTables<'_>,
    rec: &InstanceRecord,
    attrs: &IndexAttrs,
    replaced: bool,
    parents: &mut ParentRows,
) -> Result<(), IndexError> {
    tables
        .instances
        .insert(rec.sop_instance_uid.as_str(), encode(rec).as_slice())?;

    let study_uid = rec.study_instance_uid.as_str();
    let series_uid = rec.series_instance_uid.as_str();
    let key = (study_uid.to_owned(), series_uid.to_owned());
    let (series, new_series) = held(&mut parents.series, key, || {
        tx.open_table(db::SERIES)?
            .get((study_uid, series_uid))?
            .map(|g| decode::<SeriesRecord>(series_uid, g.value()))
            .transpose()
    })?;
    series.study_instance_uid = study_uid.to_owned();
    series.series_instance_uid = series_uid.to_owned();
    series.modality.clone_from(&attrs.modality);
    series.series_number.clone_from(&attrs.series_number);
    series
        .series_description
        .clone_from(&attrs.series_description);
    if !replaced {
        series.num_instances += 1;
    }

    let (study, new_study) = held(&mut parents.studies, study_uid.to_owned(), || {
        tx.open_table(db::STUDIES)?
            .get(study_uid)?
            .map(|g| decode::<StudyRecord>(study_uid, g.value()))
            .transpose()
    })?;
    study.study_instance_uid = study_uid.to_owned();
    study.patient_id.clone_from(&attrs.patient_id);
    study.patient_name.clone_from(&attrs.patient_name);
    study.study_date.clone_from(&attrs.study_date);
    study.study_time.clone_from(&attrs.study_time);
    study.accession_number.clone_from(&attrs.accession_number);
    study.study_description.clone_from(&attrs.study_description);
    study.study_id.clone_from(&attrs.study_id);
    study
        .referring_physician_name
        .clone_from(&attrs.referring_physician_name);
    if !attrs.modality.is_empty() && !study.modalities_in_study.contains(&attrs.modality) {
        study.modalities_in_study.push(attrs.modality.clone());
        study.modalities_in_study.sort();
    }
    if new_series {
        study.num_series += 1;
    }
    if !replaced {
        study.num_instances += 1;
    }

    let pid = attrs.patient_id.as_str();
    let (patient, _) = held(&mut parents.patients, pid.to_owned(), || {
        tx.open_table(db::PATIENTS)?
            .get(pid)?
            .map(|g| decode::<PatientRecord>(pid, g.value()))
            .transpose()
    })?;
    patient.patient_id = pid.to_owned();
    patient.patient_name.clone_from(&attrs.patient_name);
    patient
        .patient_birth_date
        .clone_from(&attrs.patient_birth_date);
    patient.patient_sex.clone_from(&attrs.patient_sex);
    if new_study {
        patient.num_studies += 1;
    }
    // Query/Retrieve rows (issue 13); the study keys are the caller's.
    super::query::insert_object_row(&mut tables.objects, rec, attrs)
}

/// Removes an instance's row and its contribution to the series, study and patient counts
/// (rows that drop to zero instances are removed). Returns the removed record.
pub fn remove_instance(
    tx: &WriteTransaction,
    sop_instance_uid: &str,
) -> Result<Option<InstanceRecord>, IndexError> {
    let mut instances = tx.open_table(db::INSTANCES)?;
    let Some(rec) = instances
        .remove(sop_instance_uid)?
        .map(|g| decode::<InstanceRecord>(sop_instance_uid, g.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    drop(instances);
    forget_deliveries(tx, sop_instance_uid)?;
    let (study_uid, series_uid) = (
        rec.study_instance_uid.as_str(),
        rec.series_instance_uid.as_str(),
    );
    let mut series_t = tx.open_table(db::SERIES)?;
    let series = series_t
        .get((study_uid, series_uid))?
        .map(|g| decode::<SeriesRecord>(series_uid, g.value()))
        .transpose()?;
    let mut series_gone = false;
    if let Some(mut s) = series {
        s.num_instances = s.num_instances.saturating_sub(1);
        if s.num_instances == 0 {
            series_t.remove((study_uid, series_uid))?;
            series_gone = true;
        } else {
            series_t.insert((study_uid, series_uid), encode(&s).as_slice())?;
        }
    }
    drop(series_t);
    let mut studies = tx.open_table(db::STUDIES)?;
    let study = studies
        .get(study_uid)?
        .map(|g| decode::<StudyRecord>(study_uid, g.value()))
        .transpose()?;
    if let Some(mut st) = study {
        st.num_instances = st.num_instances.saturating_sub(1);
        if series_gone {
            st.num_series = st.num_series.saturating_sub(1);
        }
        if st.num_instances == 0 {
            studies.remove(study_uid)?;
            drop(studies);
            let mut patients = tx.open_table(db::PATIENTS)?;
            let pid = st.patient_id.as_str();
            let patient = patients
                .get(pid)?
                .map(|g| decode::<PatientRecord>(pid, g.value()))
                .transpose()?;
            if let Some(mut pt) = patient {
                pt.num_studies = pt.num_studies.saturating_sub(1);
                if pt.num_studies == 0 {
                    patients.remove(pid)?;
                } else {
                    patients.insert(pid, encode(&pt).as_slice())?;
                }
            }
        } else {
            studies.insert(study_uid, encode(&st).as_slice())?;
            drop(studies); // closed before the Query/Retrieve hook opens it
        }
    } else {
        drop(studies);
    }
    // Query/Retrieve rows (issue 13).
    super::query::on_remove(tx, &rec)?;
    Ok(Some(rec))
}

/// Read access to the index, and the in-memory study summary that serves study searches.
#[derive(Debug)]
pub struct Index {
    db: Database,
    studies: StudySummary,
}

impl Index {
    /// Opens (creating if needed) the index database at `path` and its tables, and loads the
    /// study summary.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        Self::from_database(Database::create(path)?)
    }

    /// The index in an open database (e.g. on a test backend that models power loss),
    /// creating its tables.
    pub fn from_database(db: Database) -> Result<Self, IndexError> {
        let tx = db.begin_write()?;
        create_tables(&tx)?;
        tx.commit()?;
        let studies = StudySummary::load(&db)?;
        Ok(Self { db, studies })
    }

    /// Publishes the committed state of `study_uids` to the study summary. Every writer of
    /// study rows ([`put_instance`], [`remove_instance`]) must call this after its commit —
    /// before it acknowledges anything — or searches will not see its changes.
    pub fn refresh_studies<I, S>(&self, study_uids: I) -> Result<(), IndexError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.studies.refresh(&self.db, study_uids)
    }

    /// The study summary (for its size and tests).
    pub fn study_summary(&self) -> &StudySummary {
        &self.studies
    }

    /// Whether an I/O error of any writer (an API call, the retention sweep, the audit
    /// outbox, …) has latched the database ([`db::needs_reopen`]), found without waiting: a
    /// write transaction begun and abandoned. `None` also while another writer holds the
    /// write slot (it meets the latch itself).
    pub fn latched(&self) -> Option<IndexError> {
        let e: IndexError = match self.db.try_begin_write() {
            Ok(tx) => match tx.abort() {
                Ok(()) => return None,
                Err(e) => e.into(),
            },
            Err(redb::TransactionError::WouldBlock) => return None,
            Err(e) => e.into(),
        };
        e.needs_reopen().then_some(e)
    }

    /// The underlying database, for the checkpoints' write transactions.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// One instance by SOP Instance UID.
    pub fn instance(&self, sop_instance_uid: &str) -> Result<Option<InstanceRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        instance_row(&tx.open_table(db::INSTANCES)?, sop_instance_uid)
    }

    /// Number of stored instances.
    pub fn instance_count(&self) -> Result<u64, IndexError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(db::INSTANCES)?.len()?)
    }

    /// All instances (for tests and the `index` CLI; the API will paginate).
    pub fn instances(&self) -> Result<Vec<InstanceRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(db::INSTANCES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// One study by Study Instance UID.
    pub fn study(&self, study_uid: &str) -> Result<Option<StudyRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(db::STUDIES)?;
        let v = t.get(study_uid)?;
        v.map(|g| decode(study_uid, g.value())).transpose()
    }

    /// One series.
    pub fn series(
        &self,
        study_uid: &str,
        series_uid: &str,
    ) -> Result<Option<SeriesRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(db::SERIES)?;
        let v = t.get((study_uid, series_uid))?;
        v.map(|g| decode(series_uid, g.value())).transpose()
    }

    /// One patient.
    pub fn patient(&self, patient_id: &str) -> Result<Option<PatientRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(db::PATIENTS)?;
        let v = t.get(patient_id)?;
        v.map(|g| decode(patient_id, g.value())).transpose()
    }
}

/// Filters of a study search (the admin API's `GET /api/v1/studies`); `None` matches any value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyFilter {
    /// Patient ID, exact.
    pub patient_id: Option<String>,
    /// Patient's Name pattern, case-insensitive; `*` matches any run of characters, `?` one.
    pub patient_name: Option<String>,
    /// Study Date range `(from, to)`, inclusive, `YYYYMMDD`; an empty end is open. Studies
    /// without a date never match a date filter.
    pub study_date: Option<(String, String)>,
    /// Accession Number, exact.
    pub accession_number: Option<String>,
    /// A modality of the study (Modalities in Study), case-insensitive.
    pub modality: Option<String>,
}

impl StudyFilter {
    /// Whether `s` passes every filter.
    pub fn matches(&self, s: &StudyRecord) -> bool {
        if self.patient_id.as_ref().is_some_and(|p| *p != s.patient_id) {
            return false;
        }
        if self
            .accession_number
            .as_ref()
            .is_some_and(|a| *a != s.accession_number)
        {
            return false;
        }
        if let Some((from, to)) = &self.study_date {
            let d = s.study_date.as_str();
            if d.is_empty()
                || (!from.is_empty() && d < from.as_str())
                || (!to.is_empty() && d > to.as_str())
            {
                return false;
            }
        }
        if let Some(m) = &self.modality {
            if !s
                .modalities_in_study
                .iter()
                .any(|x| x.eq_ignore_ascii_case(m))
            {
                return false;
            }
        }
        if let Some(p) = &self.patient_name {
            if !wildcard_ci(p, &s.patient_name) {
                return false;
            }
        }
        true
    }
}

/// Case-insensitive match of `value` against `pattern` (`*` any run, `?` one character).
pub fn wildcard_ci(pattern: &str, value: &str) -> bool {
    crate::wildcard::matches_ci(pattern, value)
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of the page, at most the limit asked for.
    pub items: Vec<T>,
    /// How many items match in all (every page).
    pub total: u64,
}

/// Leading number of an IS/text value, for ordering ("10" after "9"); none sorts last.
fn number_key(s: &str) -> i64 {
    s.trim().parse().unwrap_or(i64::MAX)
}

fn page_of<T>(all: Vec<T>, offset: u64, limit: usize) -> Page<T> {
    let total = all.len() as u64;
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    Page {
        items: all.into_iter().skip(skip).take(limit).collect(),
        total,
    }
}

impl Index {
    /// Studies passing `filter`, in Study Instance UID order (stable across pages), skipping
    /// `offset` and returning at most `limit`, with the number of matches. Served from the
    /// in-memory study summary (no redb transaction, so a search load does not compete with
    /// ingest for decoding work); from the table only if the summary is stale.
    pub fn search_studies(
        &self,
        filter: &StudyFilter,
        offset: u64,
        limit: usize,
    ) -> Result<Page<StudyRecord>, IndexError> {
        if self.studies.is_stale() {
            return self.search_studies_in_table(filter, offset, limit);
        }
        Ok(self.studies.search(filter, offset, limit))
    }

    /// [`Index::search_studies`] by a scan of the study table in one read transaction: the
    /// fallback while the summary is stale, and the reference the summary is tested against.
    pub fn search_studies_in_table(
        &self,
        filter: &StudyFilter,
        offset: u64,
        limit: usize,
    ) -> Result<Page<StudyRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(db::STUDIES)?;
        let mut items = Vec::new();
        let mut total = 0u64;
        if *filter == StudyFilter::default() {
            total = t.len()?;
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            for row in t.iter()?.skip(skip).take(limit) {
                let (k, v) = row?;
                items.push(decode(k.value(), v.value())?);
            }
            return Ok(Page { items, total });
        }
        for row in t.iter()? {
            let (k, v) = row?;
            let s: StudyRecord = decode(k.value(), v.value())?;
            if filter.matches(&s) {
                if total >= offset && items.len() < limit {
                    items.push(s);
                }
                total += 1;
            }
        }
        Ok(Page { items, total })
    }

    /// The series of a study, by Series Number (then UID), paginated; `None` if the study is
    /// not in the index.
    pub fn series_of_study(
        &self,
        study_uid: &str,
        offset: u64,
        limit: usize,
    ) -> Result<Option<Page<SeriesRecord>>, IndexError> {
        let tx = self.db.begin_read()?;
        if tx.open_table(db::STUDIES)?.get(study_uid)?.is_none() {
            return Ok(None);
        }
        let t = tx.open_table(db::SERIES)?;
        let mut all: Vec<SeriesRecord> = Vec::new();
        for row in t.range((study_uid, "")..)? {
            let (k, v) = row?;
            let (study, series) = k.value();
            if study != study_uid {
                break;
            }
            all.push(decode(series, v.value())?);
        }
        all.sort_by(|a, b| {
            (number_key(&a.series_number), &a.series_instance_uid)
                .cmp(&(number_key(&b.series_number), &b.series_instance_uid))
        });
        Ok(Some(page_of(all, offset, limit)))
    }

    /// The instances of a series, by Instance Number (then UID), paginated; `None` if the
    /// series is not in the index.
    ///
    /// The instance table is keyed by SOP Instance UID alone, so this scans it (stopping once
    /// the series' known instance count is found): fine for an administrative listing; a
    /// `(study, series, sop)` secondary table would make it proportional to the series.
    pub fn instances_of_series(
        &self,
        study_uid: &str,
        series_uid: &str,
        offset: u64,
        limit: usize,
    ) -> Result<Option<Page<InstanceRecord>>, IndexError> {
        let tx = self.db.begin_read()?;
        let Some(series) = tx
            .open_table(db::SERIES)?
            .get((study_uid, series_uid))?
            .map(|g| decode::<SeriesRecord>(series_uid, g.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        let t = tx.open_table(db::INSTANCES)?;
        let mut all: Vec<InstanceRecord> = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let rec: InstanceRecord = decode(k.value(), v.value())?;
            if rec.series_instance_uid == series_uid && rec.study_instance_uid == study_uid {
                all.push(rec);
                if all.len() as u64 >= series.num_instances {
                    break;
                }
            }
        }
        all.sort_by(|a, b| {
            (number_key(&a.instance_number), &a.sop_instance_uid)
                .cmp(&(number_key(&b.instance_number), &b.sop_instance_uid))
        });
        Ok(Some(page_of(all, offset, limit)))
    }

    /// Numbers of patients, studies, series and instances in the index (one transaction).
    pub fn counts(&self) -> Result<IndexCounts, IndexError> {
        let tx = self.db.begin_read()?;
        Ok(IndexCounts {
            patients: tx.open_table(db::PATIENTS)?.len()?,
            studies: tx.open_table(db::STUDIES)?.len()?,
            series: tx.open_table(db::SERIES)?.len()?,
            instances: tx.open_table(db::INSTANCES)?.len()?,
        })
    }
}

/// Row counts of the index tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexCounts {
    /// Patients.
    pub patients: u64,
    /// Studies.
    pub studies: u64,
    /// Series.
    pub series: u64,
    /// Instances.
    pub instances: u64,
}

#[cfg(test)]
mod listing_tests {
    use super::*;

    #[test]
    fn wildcard_ci_matches_case_insensitively() {
        assert!(wildcard_ci("doe*", "DOE^JOHN"));
        assert!(wildcard_ci("*john", "DOE^JOHN"));
        assert!(wildcard_ci("d?e^*", "Doe^Jane"));
        assert!(!wildcard_ci("doe", "DOE^JOHN"));
        assert!(wildcard_ci("*", ""));
        assert!(!wildcard_ci("?", ""));
        assert!(wildcard_ci("müller*", "MÜLLER^HANS"));
    }

    fn instance(
        study: &str,
        series: &str,
        sop: &str,
        num: &str,
        name: &str,
    ) -> (InstanceRecord, IndexAttrs) {
        let attrs = IndexAttrs {
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            sop_instance_uid: sop.into(),
            instance_number: num.into(),
            series_number: num.into(),
            patient_id: format!("P-{name}"),
            patient_name: name.into(),
            modality: "CT".into(),
            ..Default::default()
        };
        let rec = InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            instance_number: num.into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            file_size: 1,
            dataset_size: 1,
            dataset_blake3: String::new(),
            received_at_us: 0,
            calling_ae_title: String::new(),
            called_ae_title: String::new(),
            path: format!("objects/{study}/{series}/{sop}.dcm"),
        };
        (rec, attrs)
    }

    fn put(tx: &WriteTransaction, study: &str, series: &str, sop: &str, num: &str, name: &str) {
        let (rec, attrs) = instance(study, series, sop, num, name);
        put_instance(tx, &rec, &attrs, false).unwrap();
    }

    #[test]
    fn batched_parent_rows_equal_the_rows_written_one_instance_at_a_time() {
        let batch = [
            ("1.1", "2.1", "3.1", "1", "A"),
            ("1.1", "2.1", "3.2", "2", "A"),
            ("1.1", "2.2", "3.3", "1", "A"),
            ("1.2", "2.3", "3.4", "1", "A"),
            ("1.3", "2.4", "3.5", "1", "B"),
            ("1.1", "2.1", "3.6", "3", "A"),
        ];
        let d = tempfile::tempdir().unwrap();
        let mut indexes = Vec::new();
        for batched in [false, true] {
            let index = Index::open(&d.path().join(format!("{batched}.redb"))).unwrap();
            // Rows that exist before the batch: read once, then updated in memory.
            let tx = index.database().begin_write().unwrap();
            put(&tx, "1.1", "2.1", "3.0", "0", "A");
            tx.commit().unwrap();
            let tx = index.database().begin_write().unwrap();
            let mut parents = ParentRows::default();
            let mut tables = None;
            for (study, series, sop, num, name) in batch {
                let (rec, attrs) = instance(study, series, sop, num, name);
                if batched {
                    let t = InstanceTables::held(&mut tables, &tx).unwrap();
                    put_instance_into(&tx, t, &rec, &attrs, false, &mut parents).unwrap();
                } else {
                    put_instance(&tx, &rec, &attrs, false).unwrap();
                }
            }
            drop(tables);
            parents.flush(&tx).unwrap();
            tx.commit().unwrap();
            indexes.push(index);
        }
        let [one, batched] = &indexes[..] else {
            unreachable!()
        };
        for (study, series, ..) in batch {
            assert_eq!(one.study(study).unwrap(), batched.study(study).unwrap());
            assert_eq!(
                one.series(study, series).unwrap(),
                batched.series(study, series).unwrap()
            );
        }
        for pid in ["P-A", "P-B"] {
            assert_eq!(one.patient(pid).unwrap(), batched.patient(pid).unwrap());
        }
        let study = batched.study("1.1").unwrap().unwrap();
        assert_eq!((study.num_instances, study.num_series), (5, 2));
        assert_eq!(batched.patient("P-A").unwrap().unwrap().num_studies, 2);
    }

    #[test]
    fn listings_paginate_in_a_stable_order() {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("g.redb")).unwrap();
        let tx = index.database().begin_write().unwrap();
        for s in 1..=5 {
            put(
                &tx,
                &format!("1.{s}"),
                "2.1",
                &format!("3.{s}"),
                "1",
                &format!("NAME{s}"),
            );
        }
        // Study 1.1: a second series, instance numbers out of UID order.
        put(&tx, "1.1", "2.2", "3.10", "10", "NAME1");
        put(&tx, "1.1", "2.2", "3.9", "9", "NAME1");
        put(&tx, "1.1", "2.2", "3.11", "", "NAME1");
        tx.commit().unwrap();
        index
            .refresh_studies(["1.1", "1.2", "1.3", "1.4", "1.5"])
            .unwrap();

        let all = index
            .search_studies(&StudyFilter::default(), 0, 100)
            .unwrap();
        assert_eq!(all.total, 5);
        let uids: Vec<_> = all
            .items
            .iter()
            .map(|s| s.study_instance_uid.as_str())
            .collect();
        assert_eq!(uids, ["1.1", "1.2", "1.3", "1.4", "1.5"]);
        let p = index
            .search_studies(&StudyFilter::default(), 3, 10)
            .unwrap();
        assert_eq!((p.total, p.items.len()), (5, 2));
        assert_eq!(p.items[0].study_instance_uid, "1.4");
        let f = StudyFilter {
            patient_name: Some("name*".into()),
            ..Default::default()
        };
        let p = index.search_studies(&f, 1, 2).unwrap();
        assert_eq!((p.total, p.items.len()), (5, 2));
        assert_eq!(p.items[0].study_instance_uid, "1.2");
        let f = StudyFilter {
            patient_id: Some("P-NAME3".into()),
            ..Default::default()
        };
        let p = index.search_studies(&f, 0, 10).unwrap();
        assert_eq!(p.total, 1);
        assert_eq!(p.items[0].study_instance_uid, "1.3");

        let s = index.series_of_study("1.1", 0, 10).unwrap().unwrap();
        assert_eq!(s.total, 2);
        assert_eq!(s.items[1].num_instances, 3);
        assert!(index.series_of_study("1.9", 0, 10).unwrap().is_none());

        let i = index
            .instances_of_series("1.1", "2.2", 0, 10)
            .unwrap()
            .unwrap();
        let sops: Vec<_> = i
            .items
            .iter()
            .map(|r| r.sop_instance_uid.as_str())
            .collect();
        assert_eq!((i.total, sops), (3, vec!["3.9", "3.10", "3.11"]));
        let i = index
            .instances_of_series("1.1", "2.2", 1, 1)
            .unwrap()
            .unwrap();
        assert_eq!(i.items[0].sop_instance_uid, "3.10");
        assert!(index
            .instances_of_series("1.1", "2.9", 0, 10)
            .unwrap()
            .is_none());
        assert!(index
            .instances_of_series("1.2", "2.2", 0, 10)
            .unwrap()
            .is_none());

        let c = index.counts().unwrap();
        assert_eq!((c.patients, c.studies, c.series, c.instances), (5, 5, 6, 8));
    }

    #[test]
    fn study_filter_checks_every_field() {
        let s = StudyRecord {
            study_instance_uid: "1.2".into(),
            patient_id: "P1".into(),
            patient_name: "DOE^JOHN".into(),
            study_date: "20240115".into(),
            accession_number: "A7".into(),
            modalities_in_study: vec!["CT".into(), "SR".into()],
            ..Default::default()
        };
        let f = |g: fn(&mut StudyFilter)| {
            let mut x = StudyFilter::default();
            g(&mut x);
            x.matches(&s)
        };
        assert!(f(|_| {}));
        assert!(f(|x| x.patient_id = Some("P1".into())));
        assert!(!f(|x| x.patient_id = Some("p1".into())));
        assert!(f(|x| x.patient_name = Some("doe^*".into())));
        assert!(!f(|x| x.patient_name = Some("smith*".into())));
        assert!(f(
            |x| x.study_date = Some(("20240115".into(), "20240115".into()))
        ));
        assert!(f(
            |x| x.study_date = Some(("20240101".into(), String::new()))
        ));
        assert!(f(
            |x| x.study_date = Some((String::new(), "20240131".into()))
        ));
        assert!(!f(
            |x| x.study_date = Some(("20240116".into(), String::new()))
        ));
        assert!(f(|x| x.accession_number = Some("A7".into())));
        assert!(!f(|x| x.accession_number = Some("A8".into())));
        assert!(f(|x| x.modality = Some("sr".into())));
        assert!(!f(|x| x.modality = Some("MR".into())));
    }
}
