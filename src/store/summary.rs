//! The in-memory study summary that serves the admin API's study search.
//!
//! A search has to look at every study (`total` counts all matches), and scanning the redb
//! study table decodes every record on every request: under a saturating search load that is
//! about a core of allocation and UTF-8 checking on a 2-vCPU gateway, taken from ingest (see
//! docs/benchmarks.md, issue 5). So the study rows are mirrored here, loaded once at start-up,
//! and a search only filters shared records under a read lock: no redb transaction, no
//! decoding.
//!
//! The index stays the source of truth. Every writer of study rows (the checkpoints, start-up
//! recovery, the retention sweep) calls [`StudySummary::refresh`] with the studies it touched
//! *after* its commit; the refresh re-reads exactly those rows. Refreshes are serialised and
//! each reads after its own commit, so once the last one returns the summary equals the
//! table. If a refresh fails the summary is marked stale: searches fall back to the redb scan
//! and the next refresh reloads everything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::index::{decode, IndexError, Page, StudyFilter, StudyRecord};
use crate::db;

/// Study rows by Study Instance UID (the redb table's order: byte order of the UID).
type Studies = BTreeMap<String, Arc<StudyRecord>>;

/// A read-mostly copy of the study table (see the module documentation).
pub struct StudySummary {
    studies: RwLock<Studies>,
    /// Serialises refreshes, so an older read can never overwrite a newer one.
    refresh: Mutex<()>,
    /// Set when a refresh failed: the copy may differ from the table until a reload.
    stale: AtomicBool,
}

impl std::fmt::Debug for StudySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StudySummary")
            .field("studies", &self.len())
            .field("stale", &self.is_stale())
            .finish()
    }
}

fn load_all(database: &Database) -> Result<Studies, IndexError> {
    let tx = database.begin_read()?;
    let t = tx.open_table(db::STUDIES)?;
    let mut out = Studies::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.insert(
            k.value().to_owned(),
            Arc::new(decode(k.value(), v.value())?),
        );
    }
    Ok(out)
}

impl StudySummary {
    /// Loads every study row (start-up: one read transaction).
    pub fn load(database: &Database) -> Result<Self, IndexError> {
        Ok(Self {
            studies: RwLock::new(load_all(database)?),
            refresh: Mutex::new(()),
            stale: AtomicBool::new(false),
        })
    }

    /// Number of studies held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no study is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a refresh failed since the last reload (searches must then use the table).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Studies> {
        // A panic while holding the lock cannot leave the map half-updated (inserts and
        // removes of whole entries), so a poisoned lock is still consistent.
        self.studies.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Studies passing `filter`, in Study Instance UID order, skipping `offset`, at most
    /// `limit`, with the number of matches: the semantics of `Index::search_studies`.
    pub fn search(&self, filter: &StudyFilter, offset: u64, limit: usize) -> Page<StudyRecord> {
        let page = self.search_shared(filter, offset, limit);
        Page {
            items: page.items.iter().map(|s| StudyRecord::clone(s)).collect(),
            total: page.total,
        }
    }

    /// [`StudySummary::search`] without copying the records: the page shares them with the
    /// summary. The read lock is held only while matching.
    pub fn search_shared(
        &self,
        filter: &StudyFilter,
        offset: u64,
        limit: usize,
    ) -> Page<Arc<StudyRecord>> {
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let studies = self.read();
        if *filter == StudyFilter::default() {
            return Page {
                items: studies.values().skip(skip).take(limit).cloned().collect(),
                total: studies.len() as u64,
            };
        }
        let mut items = Vec::new();
        let mut total = 0u64;
        for s in studies.values().filter(|s| filter.matches(s)) {
            if total >= offset && items.len() < limit {
                items.push(s.clone());
            }
            total += 1;
        }
        Page { items, total }
    }

    /// Re-reads the rows of `study_uids` from `database` (a row that is gone is dropped) and
    /// publishes them. Called by every writer of study rows after its commit, whether the
    /// commit succeeded or not (re-reading an unchanged row is harmless). On failure the
    /// summary is marked stale (searches fall back to the table) until a later refresh
    /// reloads it whole.
    pub fn refresh<I, S>(&self, database: &Database, study_uids: I) -> Result<(), IndexError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let _serial = self.refresh.lock().unwrap_or_else(|e| e.into_inner());
        let result = if self.is_stale() {
            load_all(database).map(|all| {
                *self.studies.write().unwrap_or_else(|e| e.into_inner()) = all;
            })
        } else {
            self.refresh_rows(database, study_uids)
        };
        self.stale.store(result.is_err(), Ordering::Release);
        result
    }

    fn refresh_rows<I, S>(&self, database: &Database, study_uids: I) -> Result<(), IndexError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let uids: BTreeSet<String> = study_uids
            .into_iter()
            .map(|u| u.as_ref().to_owned())
            .collect();
        if uids.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(uids.len());
        {
            let tx = database.begin_read()?;
            let t = tx.open_table(db::STUDIES)?;
            for uid in uids {
                let rec = t
                    .get(uid.as_str())?
                    .map(|g| decode::<StudyRecord>(&uid, g.value()))
                    .transpose()?;
                rows.push((uid, rec));
            }
        }
        let mut studies = self.studies.write().unwrap_or_else(|e| e.into_inner());
        for (uid, rec) in rows {
            match rec {
                Some(r) => {
                    studies.insert(uid, Arc::new(r));
                }
                None => {
                    studies.remove(&uid);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::attrs::IndexAttrs;
    use crate::store::index::{put_instance, remove_instance, Index, InstanceRecord};

    /// Instance `sop` of `study` (series `study.1`, patient `P<patient>`), with the given
    /// modality and date.
    fn obj(study: &str, sop: &str, patient: u32, modality: &str) -> (InstanceRecord, IndexAttrs) {
        let series = format!("{study}.1");
        let attrs = IndexAttrs {
            study_instance_uid: study.into(),
            series_instance_uid: series.clone(),
            sop_instance_uid: sop.into(),
            patient_id: format!("P{patient}"),
            patient_name: format!("DOE^{patient}"),
            study_date: format!("202401{:02}", patient % 28 + 1),
            accession_number: format!("A{patient}"),
            modality: modality.into(),
            ..Default::default()
        };
        let rec = InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            study_instance_uid: study.into(),
            series_instance_uid: series,
            instance_number: "1".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            file_size: 1,
            dataset_size: 1,
            dataset_blake3: String::new(),
            received_at_us: 0,
            calling_ae_title: String::new(),
            called_ae_title: String::new(),
            path: format!("objects/{study}/{sop}.dcm"),
        };
        (rec, attrs)
    }

    fn filters() -> Vec<StudyFilter> {
        let mut out = vec![StudyFilter::default()];
        out.push(StudyFilter {
            modality: Some("ct".into()),
            ..Default::default()
        });
        out.push(StudyFilter {
            modality: Some("MR".into()),
            ..Default::default()
        });
        out.push(StudyFilter {
            patient_name: Some("doe^1*".into()),
            ..Default::default()
        });
        out.push(StudyFilter {
            patient_id: Some("P3".into()),
            ..Default::default()
        });
        out.push(StudyFilter {
            study_date: Some(("20240105".into(), String::new())),
            accession_number: Some("A7".into()),
            ..Default::default()
        });
        out
    }

    /// The summary answers every filter and page exactly as the table scan does.
    fn assert_same_as_table(index: &Index) {
        assert!(!index.study_summary().is_stale());
        for f in filters() {
            for (offset, limit) in [(0, 1000), (0, 3), (2, 3), (7, 100), (1000, 10)] {
                let table = index.search_studies_in_table(&f, offset, limit).unwrap();
                let summary = index.study_summary().search(&f, offset, limit);
                assert_eq!(summary, table, "{f:?} offset {offset} limit {limit}");
                assert_eq!(index.search_studies(&f, offset, limit).unwrap(), table);
            }
        }
    }

    fn put(index: &Index, objs: &[(InstanceRecord, IndexAttrs)], replaced: bool) {
        let tx = index.database().begin_write().unwrap();
        for (rec, attrs) in objs {
            put_instance(&tx, rec, attrs, replaced).unwrap();
        }
        tx.commit().unwrap();
        index
            .refresh_studies(objs.iter().map(|(r, _)| r.study_instance_uid.as_str()))
            .unwrap();
    }

    fn remove(index: &Index, sops: &[&str]) {
        let tx = index.database().begin_write().unwrap();
        let mut studies = Vec::new();
        for sop in sops {
            studies.push(
                remove_instance(&tx, sop)
                    .unwrap()
                    .unwrap()
                    .study_instance_uid,
            );
        }
        tx.commit().unwrap();
        index.refresh_studies(&studies).unwrap();
    }

    fn many() -> Vec<(InstanceRecord, IndexAttrs)> {
        (0..30u32)
            .map(|n| {
                let modality = if n % 3 == 0 { "MR" } else { "CT" };
                obj(
                    &format!("1.{}", n % 12),
                    &format!("9.{n}"),
                    n % 12,
                    modality,
                )
            })
            .collect()
    }

    #[test]
    fn summary_follows_commits_replacements_and_removals() {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("g.redb")).unwrap();
        assert!(index.study_summary().is_empty());
        let objs = many();
        put(&index, &objs[..10], false);
        put(&index, &objs[10..], false);
        assert_eq!(index.study_summary().len(), 12);
        assert_same_as_table(&index);

        // A replacement (same SOP Instance UID, new attributes) changes the study, not its
        // counts.
        let (rec, mut attrs) = objs[4].clone();
        attrs.patient_name = "SMITH^JANE".into();
        attrs.accession_number = "A99".into();
        put(&index, &[(rec.clone(), attrs)], true);
        let s = index
            .search_studies(
                &StudyFilter {
                    accession_number: Some("A99".into()),
                    ..Default::default()
                },
                0,
                10,
            )
            .unwrap();
        assert_eq!(s.total, 1);
        assert_eq!(s.items[0].patient_name, "SMITH^JANE");
        assert_eq!(
            s.items[0].num_instances,
            index
                .study(&rec.study_instance_uid)
                .unwrap()
                .unwrap()
                .num_instances
        );
        assert_same_as_table(&index);

        // Removals: counts go down; a study whose last instance goes disappears.
        let before = index.study("1.5").unwrap().unwrap().num_instances;
        remove(&index, &["9.5"]);
        let p5 = StudyFilter {
            patient_id: Some("P5".into()),
            ..Default::default()
        };
        let page = index.study_summary().search(&p5, 0, 10);
        assert_eq!(page.items[0].study_instance_uid, "1.5");
        assert_eq!(page.items[0].num_instances, before - 1);
        assert_same_as_table(&index);
        remove(&index, &["9.17", "9.29"]);
        assert!(index.study("1.5").unwrap().is_none());
        assert_eq!(index.study_summary().len(), 11);
        assert_same_as_table(&index);
        // A refresh of an unknown or unchanged study is harmless.
        index.refresh_studies(["1.404", "1.1"]).unwrap();
        assert_same_as_table(&index);
    }

    #[test]
    fn start_up_load_equals_the_index() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("g.redb");
        {
            let index = Index::open(&path).unwrap();
            // Written without any refresh: as another process (or a crash) would leave it.
            let tx = index.database().begin_write().unwrap();
            for (rec, attrs) in many() {
                put_instance(&tx, &rec, &attrs, false).unwrap();
            }
            tx.commit().unwrap();
            assert!(index.study_summary().is_empty());
        }
        let index = Index::open(&path).unwrap();
        assert_eq!(index.study_summary().len(), 12);
        assert_same_as_table(&index);
    }

    #[test]
    fn a_stale_summary_falls_back_to_the_table_and_reloads_whole() {
        let d = tempfile::tempdir().unwrap();
        let index = Index::open(&d.path().join("g.redb")).unwrap();
        let objs = many();
        put(&index, &objs[..6], false);
        // Rows committed whose refresh did not happen (as after a failed refresh).
        let tx = index.database().begin_write().unwrap();
        for (rec, attrs) in &objs[6..] {
            put_instance(&tx, rec, attrs, false).unwrap();
        }
        tx.commit().unwrap();
        index.study_summary().stale.store(true, Ordering::Release);
        let all = index
            .search_studies(&StudyFilter::default(), 0, 100)
            .unwrap();
        assert_eq!(all.total, 12, "a stale summary must not answer");
        // The next refresh, whatever it names, reloads everything.
        index.refresh_studies(Vec::<String>::new()).unwrap();
        assert_same_as_table(&index);
    }
}
