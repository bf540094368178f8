//! The instance index in redb: patients, studies, series and instances.
//!
//! Rows are written only by the group committer, inside the same transaction that (later)
//! also holds the forwarding jobs, so an acknowledged object always has its rows. Readers
//! (query/retrieve, the admin API, tests) use [`Index`].

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::attrs::IndexAttrs;
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

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, IndexError> {
    postcard::from_bytes(bytes).map_err(|source| IndexError::Decode {
        key: key.to_owned(),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encoding of plain records cannot fail")
}

/// Creates the tables if missing, so read transactions never see "table does not exist".
pub fn create_tables(tx: &WriteTransaction) -> Result<(), IndexError> {
    tx.open_table(db::INSTANCES)?;
    tx.open_table(db::SERIES)?;
    tx.open_table(db::STUDIES)?;
    tx.open_table(db::PATIENTS)?;
    tx.open_table(db::PENDING_SYNC)?;
    // The forwarding queue shares the database (and the committer's transactions).
    tx.open_table(db::QUEUE)?;
    tx.open_table(db::IN_FLIGHT)?;
    tx.open_table(db::DEAD)?;
    tx.open_table(db::QUEUE_COUNTS)?;
    tx.open_table(db::OUTSTANDING)?;
    tx.open_table(db::RETIRABLE)?;
    tx.open_table(db::PAUSED)?;
    tx.open_table(db::META)?;
    // Admin API tables.
    tx.open_table(db::API_TOKENS)?;
    tx.open_table(db::USERS)?;
    tx.open_table(db::AUDIT)?;
    Ok(())
}

/// Looks an instance up inside a write transaction (sees the transaction's own inserts, so two
/// copies of one instance in the same batch are recognised).
pub fn get_instance_tx(
    tx: &WriteTransaction,
    sop_instance_uid: &str,
) -> Result<Option<InstanceRecord>, IndexError> {
    let t = tx.open_table(db::INSTANCES)?;
    let v = t.get(sop_instance_uid)?;
    v.map(|g| decode(sop_instance_uid, g.value())).transpose()
}

/// Writes the rows of a newly stored instance (or of a replacement, `replaced = true`, which
/// leaves the counts alone).
pub fn put_instance(
    tx: &WriteTransaction,
    rec: &InstanceRecord,
    attrs: &IndexAttrs,
    replaced: bool,
) -> Result<(), IndexError> {
    let mut instances = tx.open_table(db::INSTANCES)?;
    instances.insert(rec.sop_instance_uid.as_str(), encode(rec).as_slice())?;
    drop(instances);

    let study_uid = rec.study_instance_uid.as_str();
    let series_uid = rec.series_instance_uid.as_str();
    let mut series_t = tx.open_table(db::SERIES)?;
    let existing = series_t
        .get((study_uid, series_uid))?
        .map(|g| decode::<SeriesRecord>(series_uid, g.value()))
        .transpose()?;
    let new_series = existing.is_none();
    let mut series = existing.unwrap_or_default();
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
    series_t.insert((study_uid, series_uid), encode(&series).as_slice())?;
    drop(series_t);

    let mut studies = tx.open_table(db::STUDIES)?;
    let existing = studies
        .get(study_uid)?
        .map(|g| decode::<StudyRecord>(study_uid, g.value()))
        .transpose()?;
    let new_study = existing.is_none();
    let mut study = existing.unwrap_or_default();
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
    studies.insert(study_uid, encode(&study).as_slice())?;
    drop(studies);

    let mut patients = tx.open_table(db::PATIENTS)?;
    let pid = attrs.patient_id.as_str();
    let mut patient = patients
        .get(pid)?
        .map(|g| decode::<PatientRecord>(pid, g.value()))
        .transpose()?
        .unwrap_or_default();
    patient.patient_id = pid.to_owned();
    patient.patient_name.clone_from(&attrs.patient_name);
    patient
        .patient_birth_date
        .clone_from(&attrs.patient_birth_date);
    patient.patient_sex.clone_from(&attrs.patient_sex);
    if new_study {
        patient.num_studies += 1;
    }
    patients.insert(pid, encode(&patient).as_slice())?;
    Ok(())
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
        }
    }
    Ok(Some(rec))
}

/// Read access to the index.
#[derive(Debug)]
pub struct Index {
    db: Database,
}

impl Index {
    /// Opens (creating if needed) the index database at `path` and its tables.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        create_tables(&tx)?;
        tx.commit()?;
        Ok(Self { db })
    }

    /// The underlying database, for the committer's write transactions.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// One instance by SOP Instance UID.
    pub fn instance(&self, sop_instance_uid: &str) -> Result<Option<InstanceRecord>, IndexError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(db::INSTANCES)?;
        let v = t.get(sop_instance_uid)?;
        v.map(|g| decode(sop_instance_uid, g.value())).transpose()
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
