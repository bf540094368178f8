//! The index built for Query/Retrieve C-FIND (issue 13, point 2), and the search over it.
//!
//! Two kinds of rows, written by [`insert_object_row`] with [`sync_study_keys`] and by
//! [`on_remove`] (called from `index::put_instance` and `index::remove_instance`, so whatever
//! ingest path writes the index keeps them in step, in the same transaction; the checkpoint
//! syncs each touched study's keys once per transaction):
//!
//! - `QR_OBJECTS` (study, series, SOP) → the instance's small attributes (a postcard
//!   [`Dataset`], text decoded to Unicode, see `attrs::IndexAttrs::attributes`). A C-FIND
//!   answers from these, never from the files; the first object of a study or series is that
//!   entity's representative for attributes the study and series rows do not hold.
//! - `QR_STUDY_KEYS` (kind, value, study) → (): the study-level keys queries constrain —
//!   Study Date, each Patient's Name component group (lower-cased, as PN matching compares
//!   them), Patient ID, Accession Number, each modality — so a study-level query reads the
//!   range its most selective key names instead of every study. `QR_STUDY_KEYS_OF` lists the
//!   rows of each study, so a change replaces exactly them.
//!
//! The search ([`find`]) picks the candidate studies from those ranges (or the UIDs given),
//! walks series and objects below them by key range, builds each candidate's dataset at the
//! query level (attributes of that level and above, plus the computed keys requested) and
//! runs the one matching engine (`dicom::matching::Query`) on it.

use std::borrow::Cow;
use std::collections::BTreeSet;

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, WriteTransaction};

use super::index::{decode, IndexError, InstanceRecord, PatientRecord, SeriesRecord, StudyRecord};
use crate::db;
use crate::dicom::dataset::{Dataset, Value};
use crate::dicom::matching::{pn_normalize, Query};
use crate::store::attrs::{complete_row, IndexAttrs, RowUids};

/// The kinds of `QR_STUDY_KEYS` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyKind {
    /// Study Date (0008,0020), `YYYYMMDD`.
    StudyDate = b'D',
    /// A component group of Patient's Name (0010,0010), normalized by `pn_normalize`.
    PatientName = b'N',
    /// Patient ID (0010,0020).
    PatientId = b'P',
    /// Accession Number (0008,0050).
    Accession = b'A',
    /// A modality of the study's series (0008,0060).
    Modality = b'M',
}

/// Query/Retrieve levels (PS3.4 C.6), ordered from the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// PATIENT (Patient Root only).
    Patient,
    /// STUDY.
    Study,
    /// SERIES.
    Series,
    /// IMAGE.
    Image,
}

impl Level {
    /// The level named by Query/Retrieve Level (0008,0052).
    pub fn parse(value: &str) -> Option<Level> {
        match value.trim() {
            "PATIENT" => Some(Level::Patient),
            "STUDY" => Some(Level::Study),
            "SERIES" => Some(Level::Series),
            "IMAGE" => Some(Level::Image),
            _ => None,
        }
    }

    /// The unique key of the level (PS3.4 C.6.1.1 / C.6.2.1).
    pub fn unique_key(self) -> Tag {
        match self {
            Level::Patient => tags::PATIENT_ID,
            Level::Study => tags::STUDY_INSTANCE_UID,
            Level::Series => tags::SERIES_INSTANCE_UID,
            Level::Image => tags::SOP_INSTANCE_UID,
        }
    }
}

/// Patient's Name's attributes at the patient level of the Patient Root model; in the Study
/// Root model they are study-level attributes, which this ordering gives them too (PATIENT is
/// above STUDY).
///
/// The level an attribute belongs to, after PS3.4 C.6.1.1.2–5 and C.6.2.1.2–4 (the
/// Patient/Study/Series/Equipment modules' attributes); everything else is an IMAGE-level
/// attribute. Keys below the query level are not matched and come back zero-length.
pub fn level_of(tag: Tag) -> Level {
    let (g, e) = (tag.group(), tag.element());
    match (g, e) {
        // Patient Study module: study level.
        (0x0010, 0x1010 | 0x1020 | 0x1030 | 0x2180 | 0x21B0) => Level::Study,
        (0x0010, _) => Level::Patient,
        (0x0020, 0x1200 | 0x1202 | 0x1204) => Level::Patient,
        (
            0x0008,
            0x0020 | 0x0030 | 0x0050 | 0x0051 | 0x0061 | 0x0062 | 0x0063 | 0x0090 | 0x0096 | 0x1030
            | 0x1032 | 0x1048 | 0x1049 | 0x1060 | 0x1062 | 0x1080,
        ) => Level::Study,
        (0x0020, 0x000D | 0x0010 | 0x1070 | 0x1206 | 0x1208) => Level::Study,
        (0x0032, _) => Level::Study,
        (
            0x0008,
            0x0021 | 0x0031 | 0x0060 | 0x0070 | 0x0080 | 0x0081 | 0x1010 | 0x103E | 0x1040 | 0x1050
            | 0x1070 | 0x1090 | 0x1111,
        ) => Level::Series,
        (0x0018, 0x0015 | 0x1000 | 0x1020 | 0x1030 | 0x5100) => Level::Series,
        (0x0020, 0x000E | 0x0011 | 0x0060 | 0x1209) => Level::Series,
        (0x0040, 0x0244 | 0x0245 | 0x0253 | 0x0254 | 0x0275) => Level::Series,
        _ => Level::Image,
    }
}

/// Creates the tables (with the index's other tables).
pub fn create_tables(tx: &WriteTransaction) -> Result<(), IndexError> {
    tx.open_table(db::QR_OBJECTS)?;
    tx.open_table(db::QR_STUDY_KEYS)?;
    tx.open_table(db::QR_STUDY_KEYS_OF)?;
    Ok(())
}

/// The object row of an instance: its kept attributes, with the UIDs the index uses (a
/// quarantined object is indexed under substitute UIDs) and the indexed fields filled in when
/// the attribute list is absent (records from before it existed). The scan has usually built
/// it already for the UIDs the record has (`IndexAttrs::row_uids`), then it is borrowed as it
/// is.
fn object_row<'a>(rec: &InstanceRecord, attrs: &'a IndexAttrs) -> Cow<'a, [u8]> {
    let built_for_these = attrs.row_uids.as_deref().is_some_and(|u| {
        u.sop_class == rec.sop_class_uid
            && u.sop_instance == rec.sop_instance_uid
            && u.study == rec.study_instance_uid
            && u.series == rec.series_instance_uid
    });
    if built_for_these {
        return Cow::Borrowed(&attrs.attributes);
    }
    let mut ds = attrs.attributes();
    let uids = RowUids {
        sop_class: rec.sop_class_uid.clone(),
        sop_instance: rec.sop_instance_uid.clone(),
        study: rec.study_instance_uid.clone(),
        series: rec.series_instance_uid.clone(),
    };
    complete_row(&mut ds, attrs, &uids);
    Cow::Owned(postcard::to_allocvec(&ds).expect("postcard encoding of a dataset cannot fail"))
}

/// The `QR_OBJECTS` row of an instance, into the table the caller holds open (the index's
/// `InstanceTables`): a writer of many instances in one transaction
/// ([`crate::store::index::put_instance_into`]) syncs each study's keys once, with
/// [`sync_study_keys`], instead of once per instance.
pub fn insert_object_row(
    objects: &mut redb::Table<'_, (&'static str, &'static str, &'static str), &'static [u8]>,
    rec: &InstanceRecord,
    attrs: &IndexAttrs,
) -> Result<(), IndexError> {
    objects.insert(
        (
            rec.study_instance_uid.as_str(),
            rec.series_instance_uid.as_str(),
            rec.sop_instance_uid.as_str(),
        ),
        object_row(rec, attrs).as_ref(),
    )?;
    Ok(())
}

/// Hook of `index::remove_instance`, after the rows and counts are updated.
pub fn on_remove(tx: &WriteTransaction, rec: &InstanceRecord) -> Result<(), IndexError> {
    let mut objects = tx.open_table(db::QR_OBJECTS)?;
    objects.remove((
        rec.study_instance_uid.as_str(),
        rec.series_instance_uid.as_str(),
        rec.sop_instance_uid.as_str(),
    ))?;
    drop(objects);
    sync_study_keys(tx, &rec.study_instance_uid)
}

/// Rewrites the `QR_STUDY_KEYS` rows of a study from its current study and series rows.
pub fn sync_study_keys(tx: &WriteTransaction, study_uid: &str) -> Result<(), IndexError> {
    let study = tx
        .open_table(db::STUDIES)?
        .get(study_uid)?
        .map(|g| decode::<StudyRecord>(study_uid, g.value()))
        .transpose()?;
    let mut want: BTreeSet<(u8, String)> = BTreeSet::new();
    if let Some(s) = &study {
        if !s.study_date.is_empty() {
            want.insert((KeyKind::StudyDate as u8, s.study_date.clone()));
        }
        for group in s.patient_name.split('=') {
            let g = pn_normalize(group);
            if !g.is_empty() {
                want.insert((KeyKind::PatientName as u8, g));
            }
        }
        want.insert((KeyKind::PatientId as u8, s.patient_id.clone()));
        if !s.accession_number.is_empty() {
            want.insert((KeyKind::Accession as u8, s.accession_number.clone()));
        }
        let series = tx.open_table(db::SERIES)?;
        for row in series.range((study_uid, "")..)? {
            let (k, v) = row?;
            if k.value().0 != study_uid {
                break;
            }
            let r: SeriesRecord = decode(k.value().1, v.value())?;
            if !r.modality.is_empty() {
                want.insert((KeyKind::Modality as u8, r.modality));
            }
        }
    }
    let mut of = tx.open_table(db::QR_STUDY_KEYS_OF)?;
    let had: BTreeSet<(u8, String)> = match of.get(study_uid)? {
        Some(g) => decode::<Vec<(u8, String)>>(study_uid, g.value())?
            .into_iter()
            .collect(),
        None => BTreeSet::new(),
    };
    if had == want {
        return Ok(());
    }
    let mut keys = tx.open_table(db::QR_STUDY_KEYS)?;
    for (kind, value) in had.difference(&want) {
        keys.remove((*kind, value.as_str(), study_uid))?;
    }
    for (kind, value) in want.difference(&had) {
        keys.insert((*kind, value.as_str(), study_uid), ())?;
    }
    if want.is_empty() {
        of.remove(study_uid)?;
    } else {
        let list: Vec<(u8, String)> = want.into_iter().collect();
        of.insert(
            study_uid,
            postcard::to_allocvec(&list)
                .expect("postcard encoding cannot fail")
                .as_slice(),
        )?;
    }
    Ok(())
}

/// What [`mend`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Mended {
    /// Instances that had no object row and got one.
    pub added: u64,
    /// Object rows of instances the index no longer holds (or holds elsewhere), removed.
    pub removed: u64,
}

/// Brings the Query/Retrieve rows in step with the instance rows at start-up: an index written
/// before they existed (issue 13), or written meanwhile by an older version that did not keep
/// them (a downgrade, then this version again), would otherwise hide objects from C-FIND or
/// answer for objects no longer held.
///
/// Every writer of this version keeps one object row per instance and one key list per study,
/// so the check compares the tables' lengths (stored by redb: no scan) and does nothing when
/// both agree. When either differs, it looks up each instance's object row (building missing
/// ones from the instance, series, study and patient rows: the indexed attributes; the full
/// attribute list arrives only with objects ingested from now on) and each object row's
/// instance (removing rows of instances gone or moved), then rewrites the touched studies'
/// keys; one write transaction ([`mend_every_row`]). What the lengths cannot show goes
/// unnoticed: an older version that removed exactly as many objects as it added, and as many
/// studies; `dicom-gw index --mend-query-rows` checks every row on demand. Checking every row
/// at each start instead would cost about 2 s per million objects (0.20–0.27 s measured for
/// 100,000 in a release build; the length check: 10–50 µs).
pub fn mend(db: &Database) -> Result<Mended, IndexError> {
    {
        let tx = db.begin_read()?;
        let instances = table_len(&tx, db::INSTANCES)?;
        let objects = table_len(&tx, db::QR_OBJECTS)?;
        let studies = table_len(&tx, db::STUDIES)?;
        let keyed = table_len(&tx, db::QR_STUDY_KEYS_OF)?;
        if instances == objects && studies == keyed {
            return Ok(Mended::default());
        }
    }
    mend_every_row(db)
}

/// [`mend`] without the length check: every instance's object row and every object row's
/// instance are looked up.
pub fn mend_every_row(db: &Database) -> Result<Mended, IndexError> {
    let tx = db.begin_write()?;
    create_tables(&tx)?;
    let mut touched = BTreeSet::new();
    let mut mended = Mended::default();
    {
        // Streamed: one instance at a time from its rows into its object row.
        let instances = tx.open_table(db::INSTANCES)?;
        let series = tx.open_table(db::SERIES)?;
        let studies = tx.open_table(db::STUDIES)?;
        let patients = tx.open_table(db::PATIENTS)?;
        let mut objects = tx.open_table(db::QR_OBJECTS)?;
        for row in instances.iter()? {
            let (k, v) = row?;
            let rec: InstanceRecord = decode(k.value(), v.value())?;
            let (st, se) = (
                rec.study_instance_uid.as_str(),
                rec.series_instance_uid.as_str(),
            );
            if objects
                .get((st, se, rec.sop_instance_uid.as_str()))?
                .is_some()
            {
                continue;
            }
            let sr: SeriesRecord = match series.get((st, se))? {
                Some(g) => decode(se, g.value())?,
                None => SeriesRecord::default(),
            };
            let study: StudyRecord = match studies.get(st)? {
                Some(g) => decode(st, g.value())?,
                None => StudyRecord::default(),
            };
            let patient: PatientRecord = match patients.get(study.patient_id.as_str())? {
                Some(g) => decode(&study.patient_id, g.value())?,
                None => PatientRecord::default(),
            };
            let attrs = IndexAttrs {
                sop_class_uid: rec.sop_class_uid.clone(),
                sop_instance_uid: rec.sop_instance_uid.clone(),
                study_date: study.study_date,
                study_time: study.study_time,
                accession_number: study.accession_number,
                modality: sr.modality,
                referring_physician_name: study.referring_physician_name,
                study_description: study.study_description,
                series_description: sr.series_description,
                patient_name: study.patient_name,
                patient_id: study.patient_id,
                patient_birth_date: patient.patient_birth_date,
                patient_sex: patient.patient_sex,
                study_instance_uid: rec.study_instance_uid.clone(),
                series_instance_uid: rec.series_instance_uid.clone(),
                study_id: study.study_id,
                series_number: sr.series_number,
                instance_number: rec.instance_number.clone(),
                ..IndexAttrs::default()
            };
            objects.insert(
                (st, se, rec.sop_instance_uid.as_str()),
                object_row(&rec, &attrs).as_ref(),
            )?;
            if !touched.contains(st) {
                touched.insert(st.to_owned());
            }
            mended.added += 1;
        }
        // Rows whose instance is gone, or indexed under another study or series now, removed
        // as the scan meets them (an older version's retention may have retired many).
        let mut failed = None;
        objects.retain(|(st, se, sop), _| {
            let held = match instances.get(sop) {
                Ok(Some(g)) => match decode::<InstanceRecord>(sop, g.value()) {
                    Ok(rec) => rec.study_instance_uid == st && rec.series_instance_uid == se,
                    Err(e) => {
                        failed.get_or_insert(e);
                        true
                    }
                },
                Ok(None) => false,
                Err(e) => {
                    failed.get_or_insert(e.into());
                    true
                }
            };
            if !held {
                if !touched.contains(st) {
                    touched.insert(st.to_owned());
                }
                mended.removed += 1;
            }
            held
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    if touched.is_empty() {
        // Nothing to mend: no durable commit for an unchanged index.
        tx.abort()?;
        return Ok(mended);
    }
    for st in &touched {
        sync_study_keys(&tx, st)?;
    }
    tx.commit()?;
    Ok(mended)
}

/// A table's length as redb keeps it (no scan); 0 for a table not created yet.
fn table_len<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    table: redb::TableDefinition<K, V>,
) -> Result<u64, IndexError> {
    use redb::ReadableTableMetadata;
    match tx.open_table(table) {
        Ok(t) => Ok(t.len()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// One C-FIND over the index.
#[derive(Debug)]
pub struct Search<'a> {
    /// Query/Retrieve Level.
    pub level: Level,
    /// The identifier as received (decoded), to plan the scan from its key values.
    pub identifier: &'a Dataset,
    /// The parsed identifier (keys below the level already made universal).
    pub query: &'a Query,
    /// Most matches returned.
    pub limit: usize,
    /// Our AE title, the answer to Retrieve AE Title (0008,0054).
    pub retrieve_ae_title: &'a str,
}

/// What a search found: the projected responses, and whether the limit cut it.
#[derive(Debug, Default)]
pub struct Found {
    /// One response identifier per match, in index order.
    pub matches: Vec<Dataset>,
    /// More entities matched than the limit let through.
    pub truncated: bool,
}

struct Tables {
    objects: ReadOnlyTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    keys: ReadOnlyTable<(u8, &'static str, &'static str), ()>,
    studies: ReadOnlyTable<&'static str, &'static [u8]>,
    series: ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    patients: ReadOnlyTable<&'static str, &'static [u8]>,
}

impl Tables {
    fn open(tx: &redb::ReadTransaction) -> Result<Tables, IndexError> {
        Ok(Tables {
            objects: tx.open_table(db::QR_OBJECTS)?,
            keys: tx.open_table(db::QR_STUDY_KEYS)?,
            studies: tx.open_table(db::STUDIES)?,
            series: tx.open_table(db::SERIES)?,
            patients: tx.open_table(db::PATIENTS)?,
        })
    }
}

/// Runs a C-FIND over the index (one read transaction).
pub fn find(db: &Database, s: &Search) -> Result<Found, IndexError> {
    let tx = db.begin_read()?;
    let t = Tables::open(&tx)?;
    let mut found = Found::default();
    let emit = |ds: Dataset, found: &mut Found| -> bool {
        if !s.query.matches(&ds) {
            return true;
        }
        if found.matches.len() >= s.limit {
            found.truncated = true;
            return false;
        }
        let mut out = s.query.project(&ds);
        let level = match s.level {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        };
        out.put_str(tags::QUERY_RETRIEVE_LEVEL, VR::CS, level);
        found.matches.push(out);
        true
    };
    if s.level == Level::Patient {
        for pid in patient_candidates(&t, s.identifier)? {
            let Some(ds) = patient_dataset(&t, s, &pid)? else {
                continue;
            };
            if !emit(ds, &mut found) {
                break;
            }
        }
        return Ok(found);
    }
    'studies: for study in study_candidates(&t, s.identifier)? {
        match s.level {
            Level::Study => {
                if let Some(ds) = study_dataset(&t, s, &study)? {
                    if !emit(ds, &mut found) {
                        break;
                    }
                }
            }
            _ => {
                for series in series_of(&t, s.identifier, &study)? {
                    if s.level == Level::Series {
                        if let Some(ds) = series_dataset(&t, s, &study, &series)? {
                            if !emit(ds, &mut found) {
                                break 'studies;
                            }
                        }
                        continue;
                    }
                    for row in t.objects.range((study.as_str(), series.as_str(), "")..)? {
                        let (k, v) = row?;
                        let (st, se, sop) = k.value();
                        if st != study || se != series {
                            break;
                        }
                        let mut ds: Dataset = decode(sop, v.value())?;
                        add_retrieve_keys(s, &mut ds);
                        if !emit(ds, &mut found) {
                            break 'studies;
                        }
                    }
                }
            }
        }
    }
    Ok(found)
}

/// The entities a C-MOVE or C-GET identifier names by their unique keys (PS3.4 C.4.2.2.1),
/// as the retrieve service checked them: one value of each unique key above the level, one or
/// more at the level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Query/Retrieve Level.
    pub level: Level,
    /// Patient IDs (Patient Root: one above PATIENT, a list at PATIENT).
    pub patients: Vec<String>,
    /// Study Instance UIDs (empty at PATIENT level).
    pub studies: Vec<String>,
    /// Series Instance UIDs (SERIES and IMAGE levels).
    pub series: Vec<String>,
    /// SOP Instance UIDs (IMAGE level).
    pub instances: Vec<String>,
}

/// The instances a selection names, from the index (one read transaction), in study, series,
/// instance order, each once; `None` when more than `limit` match (counted during the scan,
/// so a patient-level request costs at most `limit` records of memory). A patient's studies
/// come from the same Patient ID rows of `QR_STUDY_KEYS` a C-FIND scans.
pub fn retrieve_instances(
    db: &Database,
    sel: &Selection,
    limit: usize,
) -> Result<Option<Vec<InstanceRecord>>, IndexError> {
    let tx = db.begin_read()?;
    let t = Tables::open(&tx)?;
    let instances = tx.open_table(db::INSTANCES)?;
    let mut studies: Vec<String> = Vec::new();
    if sel.level == Level::Patient {
        for pid in &sel.patients {
            let mut of_patient = BTreeSet::new();
            scan_keys(
                &t,
                KeyKind::PatientId as u8,
                pid,
                pid,
                false,
                &mut of_patient,
            )?;
            studies.extend(of_patient);
        }
    } else {
        studies.clone_from(&sel.studies);
    }
    let wanted: BTreeSet<&str> = sel.instances.iter().map(String::as_str).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for study in &studies {
        let Some(rec) = t.studies.get(study.as_str())? else {
            continue;
        };
        // Patient Root: the study must be the named patient's.
        if let [pid] = sel.patients.as_slice() {
            let rec: StudyRecord = decode(study, rec.value())?;
            if rec.patient_id.trim() != pid {
                continue;
            }
        }
        let series: Vec<&str> = if sel.series.is_empty() {
            vec![""]
        } else {
            sel.series.iter().map(String::as_str).collect()
        };
        for se in series {
            for row in t.objects.range((study.as_str(), se, "")..)? {
                let (k, _) = row?;
                let (st, row_series, sop) = k.value();
                if st != study || (!se.is_empty() && row_series != se) {
                    break;
                }
                if !wanted.is_empty() && !wanted.contains(sop) {
                    continue;
                }
                if !seen.insert(sop.to_owned()) {
                    continue;
                }
                if out.len() == limit {
                    return Ok(None);
                }
                if let Some(v) = instances.get(sop)? {
                    out.push(decode(sop, v.value())?);
                }
            }
        }
    }
    Ok(Some(out))
}

/// The single value of a key that names one entity exactly (no wildcard, not empty).
fn exact(identifier: &Dataset, tag: Tag) -> Option<Vec<String>> {
    match &identifier.get(tag)?.value {
        Value::Strs(v) => {
            let v: Vec<String> = v.iter().filter(|s| !s.is_empty()).cloned().collect();
            (!v.is_empty() && v.iter().all(|s| !s.contains(['*', '?']) && s != "\"\"")).then_some(v)
        }
        _ => None,
    }
}

fn patient_candidates(t: &Tables, identifier: &Dataset) -> Result<Vec<String>, IndexError> {
    if let Some(ids) = exact(identifier, tags::PATIENT_ID) {
        return Ok(ids);
    }
    let mut out = Vec::new();
    for row in t.patients.iter()? {
        out.push(row?.0.value().to_owned());
    }
    Ok(out)
}

/// The studies a query may match: the UIDs given, else the rows of the most selective
/// indexed key, else every study.
fn study_candidates(t: &Tables, identifier: &Dataset) -> Result<Vec<String>, IndexError> {
    if let Some(uids) = exact(identifier, tags::STUDY_INSTANCE_UID) {
        return Ok(uids);
    }
    let by_values = |kind: KeyKind, values: Vec<String>| -> Result<Vec<String>, IndexError> {
        let mut out = BTreeSet::new();
        for v in values {
            scan_keys(t, kind as u8, &v, &v, false, &mut out)?;
        }
        Ok(out.into_iter().collect())
    };
    if let Some(ids) = exact(identifier, tags::PATIENT_ID) {
        return by_values(KeyKind::PatientId, ids);
    }
    if let Some(acc) = exact(identifier, tags::ACCESSION_NUMBER) {
        return by_values(KeyKind::Accession, acc);
    }
    if let Some((lo, hi)) = date_range(identifier) {
        let mut out = BTreeSet::new();
        scan_keys(t, KeyKind::StudyDate as u8, &lo, &hi, false, &mut out)?;
        return Ok(out.into_iter().collect());
    }
    if let Some(prefix) = name_prefix(identifier) {
        let mut out = BTreeSet::new();
        scan_keys(
            t,
            KeyKind::PatientName as u8,
            &prefix,
            &prefix,
            true,
            &mut out,
        )?;
        return Ok(out.into_iter().collect());
    }
    if let Some(m) = exact(identifier, tags::MODALITIES_IN_STUDY) {
        return by_values(KeyKind::Modality, m);
    }
    let mut out = Vec::new();
    for row in t.studies.iter()? {
        out.push(row?.0.value().to_owned());
    }
    Ok(out)
}

/// Study UIDs of `QR_STUDY_KEYS` rows of `kind` with values in `lo..=hi` (or starting with
/// `lo` when `prefix`).
fn scan_keys(
    t: &Tables,
    kind: u8,
    lo: &str,
    hi: &str,
    prefix: bool,
    out: &mut BTreeSet<String>,
) -> Result<(), IndexError> {
    for row in t.keys.range((kind, lo, "")..)? {
        let (k, _) = row?;
        let (kd, value, study) = k.value();
        let inside = if prefix {
            value.starts_with(lo)
        } else {
            value <= hi
        };
        if kd != kind || !inside {
            break;
        }
        out.insert(study.to_owned());
    }
    Ok(())
}

/// A Study Date key as bounds on the indexed `YYYYMMDD` text, when both ends are full dates
/// (or open); other forms are left to the matcher over all studies.
fn date_range(identifier: &Dataset) -> Option<(String, String)> {
    let v = exact(identifier, tags::STUDY_DATE)?;
    let [v] = v.as_slice() else { return None };
    let full = |d: &str| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit());
    let (lo, hi) = match v.split_once('-') {
        None => (v.as_str(), v.as_str()),
        Some((a, b)) => (a, b),
    };
    if (lo.is_empty() || full(lo))
        && (hi.is_empty() || full(hi))
        && !(lo.is_empty() && hi.is_empty())
    {
        let hi = if hi.is_empty() { "99999999" } else { hi };
        Some((lo.to_owned(), hi.to_owned()))
    } else {
        None
    }
}

/// The literal start of a Patient's Name key without `=` (normalized as the index is).
fn name_prefix(identifier: &Dataset) -> Option<String> {
    let Value::Strs(v) = &identifier.get(tags::PATIENT_NAME)?.value else {
        return None;
    };
    let [v] = v.as_slice() else { return None };
    if v.contains('=') || v == "\"\"" {
        return None;
    }
    let lit: String = v.chars().take_while(|c| *c != '*' && *c != '?').collect();
    let whole = lit.len() == v.len();
    let p = if whole {
        pn_normalize(&lit)
    } else {
        lit.to_lowercase()
    };
    (!p.is_empty()).then_some(p)
}

/// Series UIDs of a study: those the identifier names, else all (by range).
fn series_of(t: &Tables, identifier: &Dataset, study: &str) -> Result<Vec<String>, IndexError> {
    if let Some(uids) = exact(identifier, tags::SERIES_INSTANCE_UID) {
        return Ok(uids);
    }
    let mut out = Vec::new();
    for row in t.series.range((study, "")..)? {
        let (k, _) = row?;
        let (st, se) = k.value();
        if st != study {
            break;
        }
        out.push(se.to_owned());
    }
    Ok(out)
}

/// The first object row at or under `(study[, series])`: the representative of that entity.
fn first_object(
    t: &Tables,
    study: &str,
    series: Option<&str>,
) -> Result<Option<Dataset>, IndexError> {
    let from = (study, series.unwrap_or(""), "");
    if let Some(row) = t.objects.range(from..)?.next() {
        let (k, v) = row?;
        let (st, se, sop) = k.value();
        if st == study && series.is_none_or(|s| s == se) {
            return Ok(Some(decode(sop, v.value())?));
        }
    }
    Ok(None)
}

/// Keeps the attributes of `level` and above.
fn at_level(ds: Dataset, level: Level) -> Dataset {
    let mut out = Dataset::new();
    for (tag, e) in ds.iter() {
        if level_of(tag) <= level {
            out.put(tag, e.vr, e.value.clone());
        }
    }
    out
}

fn wants(s: &Search, tag: Tag) -> bool {
    s.identifier.get(tag).is_some()
}

fn put_count(ds: &mut Dataset, tag: Tag, n: u64) {
    ds.put_str(tag, VR::IS, n.to_string());
}

fn add_retrieve_keys(s: &Search, ds: &mut Dataset) {
    if wants(s, tags::RETRIEVE_AE_TITLE) {
        ds.put_str(tags::RETRIEVE_AE_TITLE, VR::AE, s.retrieve_ae_title);
    }
    if wants(s, tags::INSTANCE_AVAILABILITY) {
        ds.put_str(tags::INSTANCE_AVAILABILITY, VR::CS, "ONLINE");
    }
}

fn study_dataset(t: &Tables, s: &Search, study: &str) -> Result<Option<Dataset>, IndexError> {
    let Some(rec) = t
        .studies
        .get(study)?
        .map(|g| decode::<StudyRecord>(study, g.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    let rep = first_object(t, study, None)?.unwrap_or_default();
    let mut ds = at_level(rep, Level::Study);
    ds.put_str(tags::STUDY_INSTANCE_UID, VR::UI, study);
    // The study row's attributes where the representative lacks them.
    for (tag, vr, v) in [
        (tags::PATIENT_NAME, VR::PN, &rec.patient_name),
        (tags::PATIENT_ID, VR::LO, &rec.patient_id),
        (tags::STUDY_DATE, VR::DA, &rec.study_date),
        (tags::STUDY_TIME, VR::TM, &rec.study_time),
        (tags::ACCESSION_NUMBER, VR::SH, &rec.accession_number),
        (tags::STUDY_DESCRIPTION, VR::LO, &rec.study_description),
        (tags::STUDY_ID, VR::SH, &rec.study_id),
        (
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            &rec.referring_physician_name,
        ),
    ] {
        if ds.get(tag).is_none() && !v.is_empty() {
            ds.put_str(tag, vr, v.as_str());
        }
    }
    put_count(
        &mut ds,
        tags::NUMBER_OF_STUDY_RELATED_SERIES,
        rec.num_series,
    );
    put_count(
        &mut ds,
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        rec.num_instances,
    );
    if wants(s, tags::MODALITIES_IN_STUDY) {
        let mut modalities = BTreeSet::new();
        for row in t.series.range((study, "")..)? {
            let (k, v) = row?;
            if k.value().0 != study {
                break;
            }
            let r: SeriesRecord = decode(k.value().1, v.value())?;
            if !r.modality.is_empty() {
                modalities.insert(r.modality);
            }
        }
        ds.put(
            tags::MODALITIES_IN_STUDY,
            VR::CS,
            Value::Strs(modalities.into_iter().collect()),
        );
    }
    if wants(s, tags::SOP_CLASSES_IN_STUDY) {
        let mut classes = BTreeSet::new();
        for row in t.objects.range((study, "", "")..)? {
            let (k, v) = row?;
            let (st, _, sop) = k.value();
            if st != study {
                break;
            }
            let o: Dataset = decode(sop, v.value())?;
            if let Some(c) = o.str(tags::SOP_CLASS_UID) {
                classes.insert(c.to_owned());
            }
        }
        ds.put(
            tags::SOP_CLASSES_IN_STUDY,
            VR::UI,
            Value::Strs(classes.into_iter().collect()),
        );
    }
    add_retrieve_keys(s, &mut ds);
    Ok(Some(ds))
}

fn series_dataset(
    t: &Tables,
    s: &Search,
    study: &str,
    series: &str,
) -> Result<Option<Dataset>, IndexError> {
    let Some(rec) = t
        .series
        .get((study, series))?
        .map(|g| decode::<SeriesRecord>(series, g.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    let rep = first_object(t, study, Some(series))?.unwrap_or_default();
    let mut ds = at_level(rep, Level::Series);
    ds.put_str(tags::STUDY_INSTANCE_UID, VR::UI, study);
    ds.put_str(tags::SERIES_INSTANCE_UID, VR::UI, series);
    put_count(
        &mut ds,
        tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        rec.num_instances,
    );
    add_retrieve_keys(s, &mut ds);
    Ok(Some(ds))
}

fn patient_dataset(t: &Tables, s: &Search, pid: &str) -> Result<Option<Dataset>, IndexError> {
    if t.patients
        .get(pid)?
        .map(|g| decode::<PatientRecord>(pid, g.value()))
        .transpose()?
        .is_none()
    {
        return Ok(None);
    }
    let mut studies = BTreeSet::new();
    scan_keys(t, KeyKind::PatientId as u8, pid, pid, false, &mut studies)?;
    let (mut n_series, mut n_instances) = (0u64, 0u64);
    let mut rep = None;
    for st in &studies {
        if let Some(r) = t
            .studies
            .get(st.as_str())?
            .map(|g| decode::<StudyRecord>(st, g.value()))
            .transpose()?
        {
            n_series += r.num_series;
            n_instances += r.num_instances;
        }
        if rep.is_none() {
            rep = first_object(t, st, None)?;
        }
    }
    let mut ds = at_level(rep.unwrap_or_default(), Level::Patient);
    ds.put_str(tags::PATIENT_ID, VR::LO, pid);
    put_count(
        &mut ds,
        tags::NUMBER_OF_PATIENT_RELATED_STUDIES,
        studies.len() as u64,
    );
    put_count(&mut ds, tags::NUMBER_OF_PATIENT_RELATED_SERIES, n_series);
    put_count(
        &mut ds,
        tags::NUMBER_OF_PATIENT_RELATED_INSTANCES,
        n_instances,
    );
    add_retrieve_keys(s, &mut ds);
    Ok(Some(ds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::{put_instance, remove_instance, Index};

    fn rec(study: &str, series: &str, sop: &str) -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            instance_number: "1".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            file_size: 0,
            dataset_size: 0,
            dataset_blake3: String::new(),
            received_at_us: 0,
            calling_ae_title: String::new(),
            called_ae_title: String::new(),
            path: String::new(),
        }
    }

    fn attrs(name: &str, date: &str, modality: &str) -> IndexAttrs {
        IndexAttrs {
            patient_name: name.into(),
            patient_id: "P1".into(),
            study_date: date.into(),
            modality: modality.into(),
            accession_number: "A1".into(),
            ..IndexAttrs::default()
        }
    }

    fn keys(index: &Index) -> Vec<(u8, String, String)> {
        let tx = index.database().begin_read().unwrap();
        let t = tx.open_table(db::QR_STUDY_KEYS).unwrap();
        t.iter()
            .unwrap()
            .map(|r| {
                let (k, _) = r.unwrap();
                let (a, b, c) = k.value();
                (a, b.to_owned(), c.to_owned())
            })
            .collect()
    }

    fn study_query(index: &Index, identifier: serde_json::Value) -> Vec<Dataset> {
        let id = crate::dicom::json::dataset_from_json(&identifier).unwrap();
        let q = Query::from_dataset(&id).unwrap();
        let s = Search {
            level: Level::Study,
            identifier: &id,
            query: &q,
            limit: 100,
            retrieve_ae_title: "GW",
        };
        find(index.database(), &s).unwrap().matches
    }

    /// The scan builds the object row once: for every sample, the attribute list the scan
    /// keeps is, byte for byte, the row built the long way (decoded, completed, encoded), and
    /// the index stores it as it is. Under substitute UIDs (quarantine, which also rewrites
    /// the attributes' UID fields after the scan) the row is built again and carries them.
    #[test]
    fn the_row_the_scan_keeps_is_the_row_built_from_the_attributes() {
        let mut n = 0;
        let mut samples = crate::store::attrs::tests::sample_datasets();
        samples.push((
            "values the list lacks".into(),
            crate::store::attrs::tests::values_the_list_lacks(),
            dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN.into(),
        ));
        for (name, ds, ts) in samples {
            let Ok(a) = crate::store::attrs::extract(&ds, &ts, true) else {
                continue;
            };
            n += 1;
            assert!(a.row_uids.is_some(), "{name}");
            let mut r = rec(
                &a.study_instance_uid,
                &a.series_instance_uid,
                &a.sop_instance_uid,
            );
            r.sop_class_uid.clone_from(&a.sop_class_uid);
            let kept = object_row(&r, &a);
            assert!(matches!(kept, Cow::Borrowed(_)), "{name}");
            let mut long = a.clone();
            long.row_uids = None;
            assert_eq!(kept, object_row(&r, &long), "{name}");
            let row: Dataset = postcard::from_bytes(&kept).unwrap();
            assert_eq!(
                row.str(tags::SOP_INSTANCE_UID),
                Some(r.sop_instance_uid.as_str()).filter(|s| !s.is_empty()),
                "{name}"
            );

            // Quarantine as `storage::quarantine` does it: the attributes' study and series
            // UIDs replaced after the scan, and the record built from them.
            let mut q = a.clone();
            q.study_instance_uid = "2.25.1".into();
            q.series_instance_uid = "2.25.2".into();
            let mut substitute = rec("2.25.1", "2.25.2", &q.sop_instance_uid);
            substitute.sop_class_uid.clone_from(&q.sop_class_uid);
            let moved = object_row(&substitute, &q);
            assert!(matches!(moved, Cow::Owned(_)), "{name}");
            let row: Dataset = postcard::from_bytes(&moved).unwrap();
            assert_eq!(row.str(tags::STUDY_INSTANCE_UID), Some("2.25.1"));
            assert_eq!(row.str(tags::SERIES_INSTANCE_UID), Some("2.25.2"));
        }
        assert!(n >= 10, "{n} samples scanned");
    }

    /// The range keys follow the study through ingest, a second series, removals and the
    /// study's end; computed keys are read from the current rows.
    #[test]
    fn keys_and_computed_attributes_follow_put_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("gateway.redb")).unwrap();
        let put = |r: &InstanceRecord, a: &IndexAttrs| {
            let tx = index.database().begin_write().unwrap();
            put_instance(&tx, r, a, false).unwrap();
            tx.commit().unwrap();
        };
        put(
            &rec("1.1", "1.1.1", "1.1.1.1"),
            &attrs("Doe^Jane=山田^花子", "20260101", "CT"),
        );
        put(
            &rec("1.1", "1.1.2", "1.1.2.1"),
            &attrs("Doe^Jane=山田^花子", "20260101", "MR"),
        );
        let k = keys(&index);
        let want = |kind: KeyKind, v: &str| (kind as u8, v.to_owned(), "1.1".to_owned());
        for row in [
            want(KeyKind::PatientName, "doe^jane"),
            want(KeyKind::PatientName, "山田^花子"),
            want(KeyKind::StudyDate, "20260101"),
            want(KeyKind::PatientId, "P1"),
            want(KeyKind::Accession, "A1"),
            want(KeyKind::Modality, "CT"),
            want(KeyKind::Modality, "MR"),
        ] {
            assert!(k.contains(&row), "{row:?} missing from {k:?}");
        }
        let m = study_query(
            &index,
            serde_json::json!({"00080061": {"vr": "CS", "Value": ["MR"]},
                               "00201208": {"vr": "IS"}, "00201206": {"vr": "IS"}}),
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].str(tags::NUMBER_OF_STUDY_RELATED_INSTANCES), Some("2"));
        assert_eq!(m[0].str(tags::NUMBER_OF_STUDY_RELATED_SERIES), Some("2"));
        // The MR series goes: its modality key and count go with it.
        let tx = index.database().begin_write().unwrap();
        remove_instance(&tx, "1.1.2.1").unwrap();
        tx.commit().unwrap();
        assert!(!keys(&index).contains(&want(KeyKind::Modality, "MR")));
        assert!(study_query(
            &index,
            serde_json::json!({"00080061": {"vr": "CS", "Value": ["MR"]}})
        )
        .is_empty());
        let m = study_query(
            &index,
            serde_json::json!({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE*"}]},
                               "00080061": {"vr": "CS"}}),
        );
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].get(tags::MODALITIES_IN_STUDY).unwrap().value,
            Value::Strs(vec!["CT".into()])
        );
        // The last instance goes: no key rows left, no object rows.
        let tx = index.database().begin_write().unwrap();
        remove_instance(&tx, "1.1.1.1").unwrap();
        tx.commit().unwrap();
        assert!(keys(&index).is_empty());
        let tx = index.database().begin_read().unwrap();
        assert!(tx
            .open_table(db::QR_OBJECTS)
            .unwrap()
            .iter()
            .unwrap()
            .next()
            .is_none());
        assert!(tx
            .open_table(db::QR_STUDY_KEYS_OF)
            .unwrap()
            .iter()
            .unwrap()
            .next()
            .is_none());
    }

    /// An index written before the Query/Retrieve rows existed gets them at start-up.
    #[test]
    fn backfill_builds_the_rows_of_an_older_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("gateway.redb")).unwrap();
        let tx = index.database().begin_write().unwrap();
        put_instance(
            &tx,
            &rec("2.1", "2.1.1", "2.1.1.1"),
            &attrs("Roe^Rick", "20250505", "US"),
            false,
        )
        .unwrap();
        // Forget the Query/Retrieve rows, as an older version never wrote them.
        tx.open_table(db::QR_OBJECTS)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        tx.open_table(db::QR_STUDY_KEYS)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        tx.open_table(db::QR_STUDY_KEYS_OF)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        tx.commit().unwrap();
        let by_name =
            serde_json::json!({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "roe*"}]}});
        assert!(study_query(&index, by_name).is_empty());
        assert_eq!(mend(index.database()).unwrap().added, 1);
        assert_eq!(mend(index.database()).unwrap(), Mended::default(), "once");
        let m = study_query(
            &index,
            serde_json::json!({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "roe*"}]},
                               "00080020": {"vr": "DA"}}),
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].str(tags::STUDY_DATE), Some("20250505"));
    }

    /// The three Query/Retrieve tables.
    type QrTables = (
        Vec<((String, String, String), Vec<u8>)>,
        Vec<(u8, String, String)>,
        Vec<(String, Vec<u8>)>,
    );

    fn qr_tables(index: &Index) -> QrTables {
        let tx = index.database().begin_read().unwrap();
        let objects = tx.open_table(db::QR_OBJECTS).unwrap();
        let keys = tx.open_table(db::QR_STUDY_KEYS).unwrap();
        let of = tx.open_table(db::QR_STUDY_KEYS_OF).unwrap();
        (
            objects
                .iter()
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    let (a, b, c) = k.value();
                    (
                        (a.to_owned(), b.to_owned(), c.to_owned()),
                        v.value().to_vec(),
                    )
                })
                .collect(),
            keys.iter()
                .unwrap()
                .map(|r| {
                    let (k, _) = r.unwrap();
                    let (a, b, c) = k.value();
                    (a, b.to_owned(), c.to_owned())
                })
                .collect(),
            of.iter()
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    (k.value().to_owned(), v.value().to_vec())
                })
                .collect(),
        )
    }

    /// Puts the Query/Retrieve tables back as `saved` had them, as if the changes since had
    /// been made by a version that does not keep them.
    fn restore_qr_tables(index: &Index, saved: &QrTables) {
        let tx = index.database().begin_write().unwrap();
        {
            let mut objects = tx.open_table(db::QR_OBJECTS).unwrap();
            objects.retain(|_, _| false).unwrap();
            for ((a, b, c), v) in &saved.0 {
                objects
                    .insert((a.as_str(), b.as_str(), c.as_str()), v.as_slice())
                    .unwrap();
            }
            let mut keys = tx.open_table(db::QR_STUDY_KEYS).unwrap();
            keys.retain(|_, _| false).unwrap();
            for (a, b, c) in &saved.1 {
                keys.insert((*a, b.as_str(), c.as_str()), ()).unwrap();
            }
            let mut of = tx.open_table(db::QR_STUDY_KEYS_OF).unwrap();
            of.retain(|_, _| false).unwrap();
            for (k, v) in &saved.2 {
                of.insert(k.as_str(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    /// A downgrade, then this version again: the older version stored objects without their
    /// rows (in a new study and in an existing one, with a new modality) and removed the only
    /// object of another study. At start-up `mend` makes the tables what this version would
    /// have written, and C-FIND answers accordingly.
    #[test]
    fn mend_catches_up_with_what_an_older_version_changed() {
        let dir = tempfile::tempdir().unwrap();
        let ours = Index::open(&dir.path().join("ours.redb")).unwrap();
        let older = Index::open(&dir.path().join("older.redb")).unwrap();
        let put = |index: &Index, st: &str, se: &str, sop: &str, name: &str, modality: &str| {
            let tx = index.database().begin_write().unwrap();
            put_instance(
                &tx,
                &rec(st, se, sop),
                &attrs(name, "20250505", modality),
                false,
            )
            .unwrap();
            tx.commit().unwrap();
        };
        let remove = |index: &Index, sop: &str| {
            let tx = index.database().begin_write().unwrap();
            remove_instance(&tx, sop).unwrap().unwrap();
            tx.commit().unwrap();
        };
        for index in [&ours, &older] {
            put(index, "1.1", "1.1.1", "1.1.1.1", "Roe^Rick", "CT");
            put(index, "1.1", "1.1.1", "1.1.1.2", "Roe^Rick", "CT");
            put(index, "2.1", "2.1.1", "2.1.1.1", "Poe^Pat", "CT");
        }
        assert_eq!(mend(older.database()).unwrap(), Mended::default());
        let before = qr_tables(&older);
        for index in [&ours, &older] {
            put(index, "3.1", "3.1.1", "3.1.1.1", "Doe^Dan", "CT");
            put(index, "1.1", "1.1.2", "1.1.2.1", "Roe^Rick", "MR");
            remove(index, "2.1.1.1");
        }
        restore_qr_tables(&older, &before);
        let name =
            |n: &str| serde_json::json!({"00100010": {"vr": "PN", "Value": [{"Alphabetic": n}]}});
        let by_modality = serde_json::json!({"00080061": {"vr": "CS", "Value": ["MR"]}});
        assert!(study_query(&older, name("doe*")).is_empty());
        assert!(study_query(&older, by_modality.clone()).is_empty());

        assert_eq!(mend(ours.database()).unwrap(), Mended::default());
        assert_eq!(
            mend(older.database()).unwrap(),
            Mended {
                added: 2,
                removed: 1
            }
        );
        assert_eq!(mend(older.database()).unwrap(), Mended::default(), "once");
        // The same rows; an object row built by `mend` has the indexed attributes only (the
        // older version kept no list), so those compare by key.
        let (mended, expected) = (qr_tables(&older), qr_tables(&ours));
        let keys = |t: &QrTables| t.0.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&mended), keys(&expected));
        assert_eq!((&mended.1, &mended.2), (&expected.1, &expected.2));
        assert_eq!(study_query(&older, name("doe*")).len(), 1);
        assert!(study_query(&older, name("poe*")).is_empty());
        assert_eq!(study_query(&older, by_modality).len(), 1);
    }

    /// What the start-up check cannot see, `mend_every_row` mends: an older version that
    /// stored one object without its row and removed another, leaving its row behind.
    #[test]
    fn mend_every_row_finds_what_equal_lengths_hide() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("gateway.redb")).unwrap();
        let put = |sop: &str| {
            let tx = index.database().begin_write().unwrap();
            put_instance(
                &tx,
                &rec("1.1", "1.1.1", sop),
                &attrs("Roe^Rick", "20250505", "CT"),
                false,
            )
            .unwrap();
            tx.commit().unwrap();
        };
        put("1.1.1.1");
        put("1.1.1.2");
        let before = qr_tables(&index);
        put("1.1.1.3");
        let tx = index.database().begin_write().unwrap();
        remove_instance(&tx, "1.1.1.2").unwrap().unwrap();
        tx.commit().unwrap();
        let after = qr_tables(&index);
        restore_qr_tables(&index, &before);
        assert_eq!(
            mend(index.database()).unwrap(),
            Mended::default(),
            "lengths agree"
        );
        assert_eq!(
            mend_every_row(index.database()).unwrap(),
            Mended {
                added: 1,
                removed: 1
            }
        );
        let keys = |t: &QrTables| t.0.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&qr_tables(&index)), keys(&after));
        assert_eq!(mend_every_row(index.database()).unwrap(), Mended::default());
    }

    #[test]
    fn levels_of_attributes() {
        assert_eq!(level_of(tags::PATIENT_NAME), Level::Patient);
        assert_eq!(level_of(tags::PATIENT_AGE), Level::Study);
        assert_eq!(level_of(tags::STUDY_DATE), Level::Study);
        assert_eq!(level_of(tags::MODALITY), Level::Series);
        assert_eq!(level_of(tags::SOP_INSTANCE_UID), Level::Image);
        assert_eq!(level_of(tags::INSTANCE_NUMBER), Level::Image);
    }

    /// The selection over a real index: each level, UID lists, the Patient Root ownership
    /// check, duplicates in a list, and unknown UIDs.
    #[test]
    fn selection_lists_exactly_the_named_instances() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("gateway.redb")).unwrap();
        let put = |study: &str, series: &str, sop: &str, pid: &str| {
            let rec = rec(study, series, sop);
            let attrs = IndexAttrs {
                patient_id: pid.into(),
                study_instance_uid: study.into(),
                series_instance_uid: series.into(),
                sop_instance_uid: sop.into(),
                modality: "CT".into(),
                ..IndexAttrs::default()
            };
            let tx = index.database().begin_write().unwrap();
            put_instance(&tx, &rec, &attrs, false).unwrap();
            tx.commit().unwrap();
        };
        put("1.1", "1.1.1", "1.1.1.1", "PA");
        put("1.1", "1.1.1", "1.1.1.2", "PA");
        put("1.1", "1.1.2", "1.1.2.1", "PA");
        put("1.2", "1.2.1", "1.2.1.1", "PA");
        put("2.1", "2.1.1", "2.1.1.1", "PB");
        let sops = |sel: Selection| -> Vec<String> {
            retrieve_instances(index.database(), &sel, 100)
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|r| r.sop_instance_uid)
                .collect()
        };
        let sel = |level, p: &[&str], st: &[&str], se: &[&str], i: &[&str]| Selection {
            level,
            patients: p.iter().map(|s| s.to_string()).collect(),
            studies: st.iter().map(|s| s.to_string()).collect(),
            series: se.iter().map(|s| s.to_string()).collect(),
            instances: i.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            sops(sel(
                Level::Study,
                &[],
                &["1.1", "2.1", "9.9", "1.1"],
                &[],
                &[]
            )),
            ["1.1.1.1", "1.1.1.2", "1.1.2.1", "2.1.1.1"]
        );
        assert_eq!(
            sops(sel(Level::Patient, &["PA"], &[], &[], &[])),
            ["1.1.1.1", "1.1.1.2", "1.1.2.1", "1.2.1.1"]
        );
        // Patient Root: a study of another patient is not selected.
        assert!(sops(sel(Level::Study, &["PB"], &["1.1"], &[], &[])).is_empty());
        assert_eq!(
            sops(sel(Level::Series, &[], &["1.1"], &["1.1.2", "1.2.1"], &[])),
            ["1.1.2.1"]
        );
        assert_eq!(
            sops(sel(
                Level::Image,
                &[],
                &["1.1"],
                &["1.1.1"],
                &["1.1.1.2", "2.1.1.1"]
            )),
            ["1.1.1.2"]
        );
        // The limit: exactly `limit` matches pass, one more is refused before it is kept.
        let patient = || sel(Level::Patient, &["PA"], &[], &[], &[]);
        assert_eq!(
            retrieve_instances(index.database(), &patient(), 4)
                .unwrap()
                .unwrap()
                .len(),
            4
        );
        assert!(retrieve_instances(index.database(), &patient(), 3)
            .unwrap()
            .is_none());
    }
}
