//! Worklist items: the Scheduled Procedure Steps of the Modality Worklist Information Model
//! (PS3.4 Annex K, Table K.6-1), validated on entry.
//!
//! An item is a whole MWL dataset — patient, visit, imaging service request, requested
//! procedure — with exactly one item in Scheduled Procedure Step Sequence (0040,0100). One
//! C-FIND response describes one scheduled step, so a requested procedure with two steps is
//! two worklist items; keeping one step per item makes matching and return-key projection
//! unambiguous and gives each step its own status.
//!
//! The item's status is the Scheduled Procedure Step Status (0040,0020) inside that one
//! sequence item: there is no second copy that could disagree with what a C-FIND returns.
//!
//! Required on entry ([`validate`]), because a modality cannot do without them:
//! - Patient's Name (0010,0010) and Patient ID (0010,0020), with values;
//! - Accession Number (0008,0050) or Requested Procedure ID (0040,1001), at least one with a
//!   value (the modality copies them into every image; without either the images cannot be
//!   reconciled with the order);
//! - Scheduled Procedure Step Sequence (0040,0100) with exactly one item holding Modality
//!   (0008,0060), Scheduled Station AE Title (0040,0001) and Scheduled Procedure Step Start
//!   Date (0040,0002), with values (the keys modalities query by).
//!
//! Filled in when absent ([`NewItem::complete`]), because Table K.6-1 makes them Type 1 return
//! keys that a modality copies into its images: Study Instance UID (0020,000D, a new UUID-derived
//! UID), Requested Procedure ID and Scheduled Procedure Step ID (0040,0009, both the item id),
//! Scheduled Procedure Step Status (SCHEDULED). Specific Character Set (0008,0005) is dropped:
//! JSON text is Unicode, and the character set of a response is chosen when it is built.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use serde::{Deserialize, Serialize};

use crate::dicom::dataset::{AttributePath, Dataset, Value};
use crate::dicom::json::{self, JsonError};

/// Scheduled Procedure Step Status (0040,0020), the defined terms of PS3.3 C.4.10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SpsStatus {
    /// Scheduled, not yet begun (the default for a new item).
    Scheduled,
    /// The patient is available for the step.
    Arrived,
    /// All patient and other necessary preparation is done.
    Ready,
    /// Being performed: set when an MPPS N-CREATE (IN PROGRESS) refers to the step.
    Started,
    /// The patient is no longer available.
    Departed,
    /// Performed: set by an MPPS N-SET to COMPLETED.
    Completed,
    /// Begun but stopped: set by an MPPS N-SET to DISCONTINUED.
    Discontinued,
    /// Cancelled by the scheduler (the API's cancel) before it was performed.
    Canceled,
}

impl SpsStatus {
    /// The DICOM defined term.
    pub fn as_str(self) -> &'static str {
        match self {
            SpsStatus::Scheduled => "SCHEDULED",
            SpsStatus::Arrived => "ARRIVED",
            SpsStatus::Ready => "READY",
            SpsStatus::Started => "STARTED",
            SpsStatus::Departed => "DEPARTED",
            SpsStatus::Completed => "COMPLETED",
            SpsStatus::Discontinued => "DISCONTINUED",
            SpsStatus::Canceled => "CANCELED",
        }
    }

    /// Parses a defined term (exact, upper case, as CS values are).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "SCHEDULED" => SpsStatus::Scheduled,
            "ARRIVED" => SpsStatus::Arrived,
            "READY" => SpsStatus::Ready,
            "STARTED" => SpsStatus::Started,
            "DEPARTED" => SpsStatus::Departed,
            "COMPLETED" => SpsStatus::Completed,
            "DISCONTINUED" => SpsStatus::Discontinued,
            "CANCELED" => SpsStatus::Canceled,
            _ => return None,
        })
    }

    /// Whether the step is over (performed, stopped or cancelled). Finished steps are not
    /// offered to modalities unless a query asks for a status explicitly (see
    /// `matching::Query::constrains_sps_status`), and cannot be cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SpsStatus::Completed | SpsStatus::Discontinued | SpsStatus::Canceled
        )
    }

    /// Whether the step may still be cancelled through the API: only before a modality
    /// started it (afterwards MPPS owns the status).
    pub fn can_cancel(self) -> bool {
        matches!(
            self,
            SpsStatus::Scheduled | SpsStatus::Arrived | SpsStatus::Ready | SpsStatus::Departed
        )
    }
}

impl std::fmt::Display for SpsStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a worklist item was refused. Variants about an attribute carry its path (keyword and
/// tag in the message) for the API's 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemError {
    /// The DICOM JSON itself is wrong.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// A required attribute is absent.
    #[error("{path}: required attribute is missing")]
    Missing {
        /// Where it should be.
        path: AttributePath,
    },
    /// A required attribute is present without a value.
    #[error("{path}: required attribute has no value")]
    Empty {
        /// Where.
        path: AttributePath,
    },
    /// Neither Accession Number nor Requested Procedure ID has a value.
    #[error(
        "AccessionNumber (0008,0050) or RequestedProcedureID (0040,1001) is required (at least one with a value)"
    )]
    NoOrderNumber,
    /// Scheduled Procedure Step Sequence does not have exactly one item.
    #[error(
        "ScheduledProcedureStepSequence (0040,0100) must have exactly one item, it has {count}"
    )]
    StepCount {
        /// Items found.
        count: usize,
    },
    /// Scheduled Procedure Step Status is not a defined term.
    #[error("{path}: {value:?} is not a Scheduled Procedure Step Status (SCHEDULED, ARRIVED, READY, STARTED, DEPARTED, COMPLETED, DISCONTINUED, CANCELED)")]
    BadStatus {
        /// Where.
        path: AttributePath,
        /// As given.
        value: String,
    },
    /// A required single-valued attribute has several values.
    #[error("{path}: must have a single value")]
    MultipleValues {
        /// Where.
        path: AttributePath,
    },
    /// An element of a JSON array is invalid.
    #[error("array index {index}: {source}")]
    InDataset {
        /// 0-based position in the array.
        index: usize,
        /// What is wrong with it.
        source: Box<ItemError>,
    },
}

impl ItemError {
    /// The attribute the error is about, if one.
    pub fn path(&self) -> Option<&AttributePath> {
        match self {
            ItemError::Json(e) => e.path(),
            ItemError::Missing { path }
            | ItemError::Empty { path }
            | ItemError::BadStatus { path, .. }
            | ItemError::MultipleValues { path } => Some(path),
            ItemError::InDataset { source, .. } => source.path(),
            ItemError::NoOrderNumber | ItemError::StepCount { .. } => None,
        }
    }

    /// The position in a top-level JSON array, if the document was an array.
    pub fn dataset_index(&self) -> Option<usize> {
        match self {
            ItemError::InDataset { index, .. } => Some(*index),
            ItemError::Json(e) => e.dataset_index(),
            _ => None,
        }
    }
}

/// A validated item not yet stored (no id). Only [`validate`] makes one, so the store can rely
/// on the required attributes being there.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    dataset: Dataset,
}

/// Parses and validates a DICOM JSON document of worklist items (one object or an array).
/// All or nothing: the first invalid item fails the document.
pub fn parse_items(text: &str) -> Result<Vec<NewItem>, ItemError> {
    let datasets = json::parse_datasets(text)?;
    let many = datasets.len() > 1 || text.trim_start().starts_with('[');
    datasets
        .into_iter()
        .enumerate()
        .map(|(index, ds)| {
            validate(ds).map_err(|e| {
                if many {
                    ItemError::InDataset {
                        index,
                        source: Box::new(e),
                    }
                } else {
                    e
                }
            })
        })
        .collect()
}

/// Checks the required set (see the module documentation) and the status value.
pub fn validate(dataset: Dataset) -> Result<NewItem, ItemError> {
    require_single(
        &dataset,
        AttributePath::top(tags::PATIENT_ID),
        tags::PATIENT_ID,
    )?;
    require_single(
        &dataset,
        AttributePath::top(tags::PATIENT_NAME),
        tags::PATIENT_NAME,
    )?;
    if dataset.str(tags::ACCESSION_NUMBER).is_none()
        && dataset.str(tags::REQUESTED_PROCEDURE_ID).is_none()
    {
        return Err(ItemError::NoOrderNumber);
    }
    let sps_tag = tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE;
    let Some(element) = dataset.get(sps_tag) else {
        return Err(ItemError::Missing {
            path: AttributePath::top(sps_tag),
        });
    };
    let Value::Items(steps) = &element.value else {
        return Err(ItemError::Missing {
            path: AttributePath::top(sps_tag),
        });
    };
    if steps.len() != 1 {
        return Err(ItemError::StepCount { count: steps.len() });
    }
    let step = &steps[0];
    for tag in [
        tags::MODALITY,
        tags::SCHEDULED_STATION_AE_TITLE,
        tags::SCHEDULED_PROCEDURE_STEP_START_DATE,
    ] {
        require_single(step, AttributePath::nested(sps_tag, 0, tag), tag)?;
    }
    if let Some(status) = step.str(tags::SCHEDULED_PROCEDURE_STEP_STATUS) {
        if SpsStatus::parse(status).is_none() {
            return Err(ItemError::BadStatus {
                path: AttributePath::nested(sps_tag, 0, tags::SCHEDULED_PROCEDURE_STEP_STATUS),
                value: status.to_owned(),
            });
        }
    }
    Ok(NewItem { dataset })
}

fn require_single(ds: &Dataset, path: AttributePath, tag: Tag) -> Result<(), ItemError> {
    let Some(element) = ds.get(tag) else {
        return Err(ItemError::Missing { path });
    };
    if element.value.is_empty() {
        return Err(ItemError::Empty { path });
    }
    if let Value::Strs(values) = &element.value {
        if values.len() > 1 && tag != tags::SCHEDULED_STATION_AE_TITLE {
            // Scheduled Station AE Title is 1-n (a step may be open to several stations).
            return Err(ItemError::MultipleValues { path });
        }
    }
    Ok(())
}

impl NewItem {
    /// The dataset as validated.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The dataset to store under `id`, with the defaults of the module documentation filled
    /// in. On an update, `previous` is the stored dataset: its Study Instance UID and status
    /// are kept when the new one leaves them out, so a modality that already fetched the step
    /// keeps a consistent study.
    pub fn complete(
        self,
        id: u64,
        previous: Option<&Dataset>,
        new_uid: impl FnOnce() -> String,
    ) -> Dataset {
        let mut ds = self.dataset;
        ds.remove(tags::SPECIFIC_CHARACTER_SET);
        if ds.str(tags::STUDY_INSTANCE_UID).is_none() {
            let uid = previous
                .and_then(|p| p.str(tags::STUDY_INSTANCE_UID))
                .map_or_else(new_uid, str::to_owned);
            ds.put_str(tags::STUDY_INSTANCE_UID, VR::UI, uid);
        }
        if ds.str(tags::REQUESTED_PROCEDURE_ID).is_none() {
            ds.put_str(tags::REQUESTED_PROCEDURE_ID, VR::SH, id.to_string());
        }
        let previous_status = previous.and_then(status_of);
        if let Some(step) = ds
            .items_mut(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE)
            .and_then(|items| items.first_mut())
        {
            if step.str(tags::SCHEDULED_PROCEDURE_STEP_ID).is_none() {
                step.put_str(tags::SCHEDULED_PROCEDURE_STEP_ID, VR::SH, id.to_string());
            }
            if step.str(tags::SCHEDULED_PROCEDURE_STEP_STATUS).is_none() {
                let status = previous_status.unwrap_or(SpsStatus::Scheduled);
                step.put_str(
                    tags::SCHEDULED_PROCEDURE_STEP_STATUS,
                    VR::CS,
                    status.as_str(),
                );
            }
        }
        ds
    }
}

/// The one Scheduled Procedure Step Sequence item of an item's dataset.
pub fn step(ds: &Dataset) -> Option<&Dataset> {
    ds.items(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE)?.first()
}

/// The status of an item's dataset (its step's Scheduled Procedure Step Status).
pub fn status_of(ds: &Dataset) -> Option<SpsStatus> {
    SpsStatus::parse(step(ds)?.str(tags::SCHEDULED_PROCEDURE_STEP_STATUS)?)
}

/// Sets an item's status in its step item (MPPS and cancel).
pub fn set_status(ds: &mut Dataset, status: SpsStatus) {
    if let Some(step) = ds
        .items_mut(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE)
        .and_then(|items| items.first_mut())
    {
        step.put_str(
            tags::SCHEDULED_PROCEDURE_STEP_STATUS,
            VR::CS,
            status.as_str(),
        );
    }
}

/// The identifiers of a scheduled step in the order hierarchy (accession → requested
/// procedure → step). Two items may not share one: a RIS sending the same order again updates
/// it (the store's upsert) instead of duplicating it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ItemKey {
    /// Accession Number (0008,0050), may be empty.
    pub accession_number: String,
    /// Requested Procedure ID (0040,1001).
    pub requested_procedure_id: String,
    /// Scheduled Procedure Step ID (0040,0009).
    pub scheduled_procedure_step_id: String,
}

impl ItemKey {
    /// The key of a completed item dataset.
    pub fn of(ds: &Dataset) -> ItemKey {
        let text = |d: Option<&Dataset>, tag| d.and_then(|d| d.str(tag)).unwrap_or("").to_owned();
        ItemKey {
            accession_number: text(Some(ds), tags::ACCESSION_NUMBER),
            requested_procedure_id: text(Some(ds), tags::REQUESTED_PROCEDURE_ID),
            scheduled_procedure_step_id: text(step(ds), tags::SCHEDULED_PROCEDURE_STEP_ID),
        }
    }
}

impl std::fmt::Display for ItemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AccessionNumber {:?}, RequestedProcedureID {:?}, ScheduledProcedureStepID {:?}",
            self.accession_number, self.requested_procedure_id, self.scheduled_procedure_step_id
        )
    }
}

/// A stored worklist item.
#[derive(Debug, Clone, PartialEq)]
pub struct WorklistItem {
    /// Store-assigned id (the API's `/api/v1/worklist/{id}`); never reused.
    pub id: u64,
    /// When it was created, microseconds since the Unix epoch.
    pub created_us: u64,
    /// When it last changed (update, cancel, MPPS).
    pub updated_us: u64,
    /// The completed MWL dataset.
    pub dataset: Dataset,
}

impl WorklistItem {
    /// The step's status (SCHEDULED if the stored dataset somehow lacks one).
    pub fn status(&self) -> SpsStatus {
        status_of(&self.dataset).unwrap_or(SpsStatus::Scheduled)
    }

    /// The item's order key.
    pub fn key(&self) -> ItemKey {
        ItemKey::of(&self.dataset)
    }

    /// The dataset as DICOM JSON (what the API returns).
    pub fn to_json(&self) -> serde_json::Value {
        json::dataset_to_json(&self.dataset)
    }
}

/// A new UID under the UUID-derived root 2.25 (PS3.5 §B.2): no registered org root needed.
/// Used for Study Instance UIDs of items that come without one and MPPS instances an SCU asks
/// the SCP to name.
pub fn generate_uid() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness (should not happen): derive from time, pid and a counter instead,
        // which is still unique per process and call.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seed = format!(
            "{:?}-{}-{}",
            std::time::SystemTime::now(),
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        bytes.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..16]);
    }
    // RFC 4122 version 4, variant 1, as PS3.5 §B.2 asks of the UUID.
    bytes[6] = (bytes[6] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::uid::validate_uid;
    use serde_json::json;

    fn doc(extra_top: serde_json::Value, extra_step: serde_json::Value) -> String {
        let mut step = json!({
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00400001": {"vr": "AE", "Value": ["CT1"]},
            "00400002": {"vr": "DA", "Value": ["20260115"]}
        });
        for (k, v) in extra_step.as_object().unwrap() {
            step[k] = v.clone();
        }
        let mut top = json!({
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00100020": {"vr": "LO", "Value": ["P1"]},
            "00080050": {"vr": "SH", "Value": ["ACC1"]},
            "00400100": {"vr": "SQ", "Value": [step]}
        });
        for (k, v) in extra_top.as_object().unwrap() {
            if v.is_null() {
                top.as_object_mut().unwrap().remove(k);
            } else {
                top[k] = v.clone();
            }
        }
        top.to_string()
    }

    fn err(extra_top: serde_json::Value, extra_step: serde_json::Value) -> ItemError {
        parse_items(&doc(extra_top, extra_step)).unwrap_err()
    }

    #[test]
    fn valid_item_is_completed_with_defaults() {
        let items = parse_items(&doc(json!({}), json!({}))).unwrap();
        assert_eq!(items.len(), 1);
        let ds = items
            .into_iter()
            .next()
            .unwrap()
            .complete(7, None, generate_uid);
        assert!(validate_uid(ds.str(tags::STUDY_INSTANCE_UID).unwrap()).is_ok());
        assert_eq!(ds.str(tags::REQUESTED_PROCEDURE_ID), Some("7"));
        let step = step(&ds).unwrap();
        assert_eq!(step.str(tags::SCHEDULED_PROCEDURE_STEP_ID), Some("7"));
        assert_eq!(status_of(&ds), Some(SpsStatus::Scheduled));
        assert_eq!(
            ItemKey::of(&ds),
            ItemKey {
                accession_number: "ACC1".into(),
                requested_procedure_id: "7".into(),
                scheduled_procedure_step_id: "7".into()
            }
        );
    }

    #[test]
    fn update_keeps_previous_study_uid_and_status() {
        let first = parse_items(&doc(json!({}), json!({})))
            .unwrap()
            .remove(0)
            .complete(1, None, || "1.2.3".into());
        let mut previous = first.clone();
        set_status(&mut previous, SpsStatus::Arrived);
        let second = parse_items(&doc(json!({}), json!({})))
            .unwrap()
            .remove(0)
            .complete(1, Some(&previous), || panic!("must reuse the study UID"));
        assert_eq!(second.str(tags::STUDY_INSTANCE_UID), Some("1.2.3"));
        assert_eq!(status_of(&second), Some(SpsStatus::Arrived));
    }

    #[test]
    fn missing_required_attributes_are_named() {
        let e = err(json!({"00100020": null}), json!({}));
        assert_eq!(
            e.to_string(),
            "PatientID (0010,0020): required attribute is missing"
        );
        let e = err(json!({"00100010": {"vr": "PN"}}), json!({}));
        assert_eq!(
            e.to_string(),
            "PatientName (0010,0010): required attribute has no value"
        );
        let e = err(json!({"00080050": null}), json!({}));
        assert_eq!(e, ItemError::NoOrderNumber);
        let ok = parse_items(&doc(
            json!({"00080050": null, "00401001": {"vr": "SH", "Value": ["RP1"]}}),
            json!({}),
        ));
        assert!(ok.is_ok());
        let e = err(json!({"00400100": null}), json!({}));
        assert_eq!(
            e.to_string(),
            "ScheduledProcedureStepSequence (0040,0100): required attribute is missing"
        );
        let e = err(json!({"00400100": {"vr": "SQ", "Value": []}}), json!({}));
        assert_eq!(e, ItemError::StepCount { count: 0 });
        let e = err(json!({}), json!({"00400001": {"vr": "AE"}}));
        assert_eq!(
            e.to_string(),
            "ScheduledProcedureStepSequence (0040,0100) item 1 > ScheduledStationAETitle (0040,0001): required attribute has no value"
        );
        let e = err(
            json!({}),
            json!({"00080060": {"vr": "CS", "Value": ["CT", "MR"]}}),
        );
        assert!(matches!(e, ItemError::MultipleValues { .. }));
    }

    #[test]
    fn missing_step_keys_are_named() {
        for tag in ["00080060", "00400001", "00400002"] {
            let mut step = json!({
                "00080060": {"vr": "CS", "Value": ["CT"]},
                "00400001": {"vr": "AE", "Value": ["CT1"]},
                "00400002": {"vr": "DA", "Value": ["20260115"]}
            });
            step.as_object_mut().unwrap().remove(tag);
            let e = err(
                json!({"00400100": {"vr": "SQ", "Value": [step]}}),
                json!({}),
            );
            assert!(matches!(e, ItemError::Missing { .. }), "{e}");
            assert_eq!(e.path().unwrap().tag(), crate::dicom::json::parse_tag(tag));
        }
    }

    #[test]
    fn bad_status_and_json_errors() {
        let e = err(
            json!({}),
            json!({"00400020": {"vr": "CS", "Value": ["DONE"]}}),
        );
        assert!(matches!(e, ItemError::BadStatus { .. }), "{e}");
        let e = err(
            json!({"0020000D": {"vr": "UI", "Value": ["1.2.x"]}}),
            json!({}),
        );
        assert!(
            matches!(e, ItemError::Json(JsonError::BadValue { .. })),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("StudyInstanceUID (0020,000D)"),
            "{e}"
        );
    }

    #[test]
    fn arrays_report_the_index() {
        let good = doc(json!({}), json!({}));
        let bad = doc(json!({"00100020": null}), json!({}));
        let e = parse_items(&format!("[{good},{bad}]")).unwrap_err();
        assert_eq!(e.dataset_index(), Some(1));
        assert_eq!(e.path().unwrap().tag(), Some(tags::PATIENT_ID));
        assert_eq!(parse_items(&format!("[{good},{good}]")).unwrap().len(), 2);
    }

    #[test]
    fn generated_uids_are_valid_and_distinct() {
        let a = generate_uid();
        let b = generate_uid();
        assert_ne!(a, b);
        assert!(validate_uid(&a).is_ok(), "{a}");
        assert!(a.starts_with("2.25."));
    }

    #[test]
    fn status_terms_round_trip() {
        for s in [
            SpsStatus::Scheduled,
            SpsStatus::Arrived,
            SpsStatus::Ready,
            SpsStatus::Started,
            SpsStatus::Departed,
            SpsStatus::Completed,
            SpsStatus::Discontinued,
            SpsStatus::Canceled,
        ] {
            assert_eq!(SpsStatus::parse(s.as_str()), Some(s));
        }
        assert!(SpsStatus::Completed.is_final());
        assert!(!SpsStatus::Started.can_cancel());
    }
}
