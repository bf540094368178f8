//! Modality Performed Procedure Step (PS3.4 Annex F.7) as a pure state machine.
//!
//! ```text
//!              N-CREATE (status IN PROGRESS)
//!   (none) ─────────────────────────────────▶ IN PROGRESS ──N-SET (IN PROGRESS)──┐
//!                                               │    ▲───────────────────────────┘
//!                          N-SET (COMPLETED) ───┤
//!                       N-SET (DISCONTINUED) ───┘──▶ COMPLETED | DISCONTINUED (final)
//! ```
//!
//! [`n_create`] and [`n_set`] take the current instance (if any) and the request's attribute
//! list and return the new instance, or an [`MppsError`] whose [`MppsError::status`] is the
//! N-CREATE-RSP/N-SET-RSP status of PS3.4 F.7.2 / PS3.7 C.4. The store runs them inside its
//! write transaction and applies [`item_status_for`] to the linked worklist items
//! ([`links_to`]), so the instance and the items change together or not at all.
//!
//! Checks made, and why only these:
//! - N-CREATE: Performed Procedure Step Status must be IN PROGRESS (F.7.2.1.3 → 0106 with the
//!   attribute); the Type 1 attributes of Table F.7.2-1 that identify the step must be present
//!   (0120) and have a value (0121); an existing SOP Instance UID → 0111.
//! - N-SET: only while IN PROGRESS (F.7.2.2.3 → 0110, Error ID A710, comment "Performed
//!   Procedure Step Object may no longer be updated"); the new status must be one of the three
//!   (0106); the attributes that identify the step (those Table F.7.2-1 marks "Not allowed"
//!   in N-SET and that the worklist link depends on) may be repeated but not changed (0106).
//! - Not enforced: the Type 2 presence rules and the final-state requirements (e.g. Performed
//!   Series Sequence filled at COMPLETED). Modalities differ on them, and refusing a
//!   COMPLETED would leave the worklist item STARTED for ever; the data is kept as sent.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use serde::{Deserialize, Serialize};

use super::model::SpsStatus;
use crate::dicom::dataset::{keyword, Dataset, Value};
use crate::dicom::uid::validate_uid;

/// Performed Procedure Step Status (0040,0252), PS3.3 C.4.14.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PpsStatus {
    /// Started, not complete: the only state an N-CREATE may create, the only one N-SET may
    /// change.
    #[serde(rename = "IN PROGRESS")]
    InProgress,
    /// Successfully completed (final).
    Completed,
    /// Cancelled or unsuccessfully terminated (final).
    Discontinued,
}

impl PpsStatus {
    /// The DICOM enumerated value.
    pub fn as_str(self) -> &'static str {
        match self {
            PpsStatus::InProgress => "IN PROGRESS",
            PpsStatus::Completed => "COMPLETED",
            PpsStatus::Discontinued => "DISCONTINUED",
        }
    }

    /// Parses an enumerated value (exact).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "IN PROGRESS" => PpsStatus::InProgress,
            "COMPLETED" => PpsStatus::Completed,
            "DISCONTINUED" => PpsStatus::Discontinued,
            _ => return None,
        })
    }

    /// Whether no N-SET is accepted any more.
    pub fn is_final(self) -> bool {
        !matches!(self, PpsStatus::InProgress)
    }
}

impl std::fmt::Display for PpsStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The worklist status a linked Scheduled Procedure Step takes when its MPPS reaches `status`:
/// IN PROGRESS → STARTED (the SPS defined term for a step being performed), COMPLETED →
/// COMPLETED, DISCONTINUED → DISCONTINUED.
pub fn item_status_for(status: PpsStatus) -> SpsStatus {
    match status {
        PpsStatus::InProgress => SpsStatus::Started,
        PpsStatus::Completed => SpsStatus::Completed,
        PpsStatus::Discontinued => SpsStatus::Discontinued,
    }
}

/// The Error ID (0000,0903) PS3.4 Table F.7.2-2 gives the "may no longer be updated" failure.
pub const ERROR_ID_NO_LONGER_UPDATABLE: u16 = 0xA710;

/// The Error Comment PS3.4 Table F.7.2-2 gives it.
pub const COMMENT_NO_LONGER_UPDATABLE: &str =
    "Performed Procedure Step Object may no longer be updated";

/// Why an N-CREATE or N-SET was refused; each variant is one status of PS3.7 C.4 / PS3.4
/// F.7.2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MppsError {
    /// N-CREATE of a SOP Instance UID that exists (0111).
    #[error("MPPS instance {0} already exists")]
    DuplicateInstance(String),
    /// N-SET of an unknown SOP Instance UID (0112).
    #[error("no MPPS instance {0}")]
    NoSuchInstance(String),
    /// The SOP Instance UID is not a valid UID (0117).
    #[error("invalid SOP Instance UID {0:?}")]
    InvalidInstance(String),
    /// A required attribute is absent (0120).
    #[error("missing attribute {}", name(*.0))]
    MissingAttribute(Tag),
    /// A required attribute has no value (0121).
    #[error("missing value of {}", name(*.0))]
    MissingAttributeValue(Tag),
    /// An attribute's value is not acceptable (0106): a status other than IN PROGRESS at
    /// N-CREATE, an unknown status, a change to an attribute N-SET may not change.
    #[error("invalid value of {}: {reason}", name(*.tag))]
    InvalidAttributeValue {
        /// The attribute (goes in the response's attribute list).
        tag: Tag,
        /// Why.
        reason: String,
    },
    /// N-SET of an instance that is COMPLETED or DISCONTINUED (0110, Error ID A710).
    #[error("{COMMENT_NO_LONGER_UPDATABLE} (it is {0})")]
    NoLongerUpdatable(PpsStatus),
}

fn name(tag: Tag) -> String {
    match keyword(tag) {
        Some(k) => format!("{k} ({:04X},{:04X})", tag.0, tag.1),
        None => format!("({:04X},{:04X})", tag.0, tag.1),
    }
}

impl MppsError {
    /// The DIMSE status for the response.
    pub fn status(&self) -> u16 {
        match self {
            MppsError::DuplicateInstance(_) => 0x0111,
            MppsError::NoSuchInstance(_) => 0x0112,
            MppsError::InvalidInstance(_) => 0x0117,
            MppsError::MissingAttribute(_) => 0x0120,
            MppsError::MissingAttributeValue(_) => 0x0121,
            MppsError::InvalidAttributeValue { .. } => 0x0106,
            MppsError::NoLongerUpdatable(_) => 0x0110,
        }
    }

    /// Error Comment (0000,0902), whole: the log line carries all of it and the response
    /// encoder cuts the wire value to 64 characters (LO). For the final-state refusal it is
    /// exactly the standard's text.
    pub fn error_comment(&self) -> String {
        let text = match self {
            MppsError::NoLongerUpdatable(_) => return COMMENT_NO_LONGER_UPDATABLE.to_owned(),
            // The keyword and the reason, without the tag: the wire's 64 characters go fast.
            MppsError::InvalidAttributeValue { tag, reason } => match keyword(*tag) {
                Some(k) => format!("{k}: {reason}"),
                None => self.to_string(),
            },
            other => other.to_string(),
        };
        text
    }

    /// Error ID (0000,0903), where the standard defines one.
    pub fn error_id(&self) -> Option<u16> {
        match self {
            MppsError::NoLongerUpdatable(_) => Some(ERROR_ID_NO_LONGER_UPDATABLE),
            _ => None,
        }
    }

    /// The attribute(s) the response's Attribute List / Attribute Identifier List names.
    pub fn attributes(&self) -> Vec<Tag> {
        match self {
            MppsError::MissingAttribute(t) | MppsError::MissingAttributeValue(t) => vec![*t],
            MppsError::InvalidAttributeValue { tag, .. } => vec![*tag],
            _ => Vec::new(),
        }
    }
}

/// An MPPS instance: its UID and the attributes received (N-CREATE merged with every N-SET).
#[derive(Debug, Clone, PartialEq)]
pub struct MppsInstance {
    /// Affected/Requested SOP Instance UID.
    pub sop_instance_uid: String,
    /// The attributes, as received (text decoded to Unicode).
    pub dataset: Dataset,
}

impl MppsInstance {
    /// Its Performed Procedure Step Status (valid by construction: both transitions check it).
    pub fn status(&self) -> PpsStatus {
        self.dataset
            .str(tags::PERFORMED_PROCEDURE_STEP_STATUS)
            .and_then(PpsStatus::parse)
            .unwrap_or(PpsStatus::InProgress)
    }

    /// The attributes as DICOM JSON (for `/api/v1/mpps`).
    pub fn to_json(&self) -> serde_json::Value {
        crate::dicom::json::dataset_to_json(&self.dataset)
    }
}

/// Type 1 attributes of Table F.7.2-1 required at N-CREATE: they identify the step and its
/// performer, and the worklist link needs the Scheduled Step Attributes Sequence.
const CREATE_REQUIRED: [Tag; 7] = [
    tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE,
    tags::PERFORMED_PROCEDURE_STEP_ID,
    tags::PERFORMED_STATION_AE_TITLE,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
    tags::PERFORMED_PROCEDURE_STEP_START_TIME,
    tags::PERFORMED_PROCEDURE_STEP_STATUS,
    tags::MODALITY,
];

/// Attributes N-SET may not change (Table F.7.2-1 "Not allowed"), limited to those that
/// identify the step, its patient and its link to the worklist.
const SET_IMMUTABLE: [Tag; 8] = [
    tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE,
    tags::PATIENT_ID,
    tags::PERFORMED_PROCEDURE_STEP_ID,
    tags::PERFORMED_STATION_AE_TITLE,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
    tags::PERFORMED_PROCEDURE_STEP_START_TIME,
    tags::MODALITY,
    tags::SOP_INSTANCE_UID,
];

/// N-CREATE: `existing` is the stored instance with the same UID, if any.
pub fn n_create(
    existing: Option<&MppsInstance>,
    sop_instance_uid: &str,
    attributes: Dataset,
) -> Result<MppsInstance, MppsError> {
    let uid = validate_uid(sop_instance_uid)
        .map_err(|_| MppsError::InvalidInstance(sop_instance_uid.to_owned()))?;
    if existing.is_some() {
        return Err(MppsError::DuplicateInstance(uid.to_owned()));
    }
    for tag in CREATE_REQUIRED {
        let Some(element) = attributes.get(tag) else {
            return Err(MppsError::MissingAttribute(tag));
        };
        if element.value.is_empty() {
            return Err(MppsError::MissingAttributeValue(tag));
        }
    }
    let status = attributes
        .str(tags::PERFORMED_PROCEDURE_STEP_STATUS)
        .unwrap_or("");
    if PpsStatus::parse(status) != Some(PpsStatus::InProgress) {
        return Err(MppsError::InvalidAttributeValue {
            tag: tags::PERFORMED_PROCEDURE_STEP_STATUS,
            reason: format!("must be IN PROGRESS at N-CREATE, not {status:?}"),
        });
    }
    if let Some(steps) = attributes.items(tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE) {
        for step in steps {
            match step.get(tags::STUDY_INSTANCE_UID) {
                None => return Err(MppsError::MissingAttribute(tags::STUDY_INSTANCE_UID)),
                Some(e) if e.value.is_empty() => {
                    return Err(MppsError::MissingAttributeValue(tags::STUDY_INSTANCE_UID))
                }
                Some(_) => {}
            }
        }
    }
    let mut dataset = attributes;
    // The text was decoded to Unicode on receipt: the SCU's character set no longer applies.
    dataset.remove(tags::SPECIFIC_CHARACTER_SET);
    Ok(MppsInstance {
        sop_instance_uid: uid.to_owned(),
        dataset,
    })
}

/// N-SET: `current` is the stored instance (`None` if the UID is unknown); `modifications`
/// the request's Modification List. Attributes in it replace the stored ones whole
/// (sequences included, as F.7.2.2 asks the SCU to send all items); a zero-length value
/// empties the attribute.
pub fn n_set(
    sop_instance_uid: &str,
    current: Option<&MppsInstance>,
    modifications: &Dataset,
) -> Result<MppsInstance, MppsError> {
    let Some(current) = current else {
        return Err(MppsError::NoSuchInstance(sop_instance_uid.to_owned()));
    };
    let status = current.status();
    if status.is_final() {
        return Err(MppsError::NoLongerUpdatable(status));
    }
    if let Some(element) = modifications.get(tags::PERFORMED_PROCEDURE_STEP_STATUS) {
        let value = match &element.value {
            Value::Strs(v) if v.len() == 1 => v[0].as_str(),
            _ => "",
        };
        if PpsStatus::parse(value).is_none() {
            return Err(MppsError::InvalidAttributeValue {
                tag: tags::PERFORMED_PROCEDURE_STEP_STATUS,
                reason: format!("{value:?} is not IN PROGRESS, COMPLETED or DISCONTINUED"),
            });
        }
    }
    for tag in SET_IMMUTABLE {
        if let Some(new) = modifications.get(tag) {
            if current.dataset.get(tag) != Some(new) {
                return Err(MppsError::InvalidAttributeValue {
                    tag,
                    reason: "may not be changed by N-SET".into(),
                });
            }
        }
    }
    let mut dataset = current.dataset.clone();
    for (tag, element) in modifications.iter() {
        // Specific Character Set of the N-SET describes its own encoding (already decoded).
        if tag == tags::SPECIFIC_CHARACTER_SET {
            continue;
        }
        dataset.put(tag, element.vr, element.value.clone());
    }
    Ok(MppsInstance {
        sop_instance_uid: current.sop_instance_uid.clone(),
        dataset,
    })
}

/// The references of one Scheduled Step Attributes Sequence item, as far as linking needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepRef {
    /// Accession Number (0008,0050), may be empty (unscheduled case).
    pub accession_number: String,
    /// Requested Procedure ID (0040,1001).
    pub requested_procedure_id: String,
    /// Scheduled Procedure Step ID (0040,0009).
    pub scheduled_procedure_step_id: String,
}

/// The step references of an MPPS dataset.
pub fn step_refs(mpps: &Dataset) -> Vec<StepRef> {
    let text = |d: &Dataset, tag| d.str(tag).unwrap_or("").to_owned();
    mpps.items(tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE)
        .unwrap_or(&[])
        .iter()
        .map(|item| StepRef {
            accession_number: text(item, tags::ACCESSION_NUMBER),
            requested_procedure_id: text(item, tags::REQUESTED_PROCEDURE_ID),
            scheduled_procedure_step_id: text(item, tags::SCHEDULED_PROCEDURE_STEP_ID),
        })
        .collect()
}

/// Whether a worklist item is the step one of `refs` names. A reference links when it
/// names the step by Scheduled Procedure Step ID or Accession Number (at least one with a
/// value) and every identifier it gives equals the item's. The Study Instance UID is not
/// compared: some modalities make their own instead of copying the worklist's. A reference
/// with neither identifier is an unscheduled step and links to nothing.
pub fn links_to(refs: &[StepRef], item: &Dataset) -> bool {
    let item_sps_id = super::model::step(item)
        .and_then(|s| s.str(tags::SCHEDULED_PROCEDURE_STEP_ID))
        .unwrap_or("");
    let item_acc = item.str(tags::ACCESSION_NUMBER).unwrap_or("");
    let item_rp = item.str(tags::REQUESTED_PROCEDURE_ID).unwrap_or("");
    refs.iter().any(|r| {
        if r.scheduled_procedure_step_id.is_empty() && r.accession_number.is_empty() {
            return false;
        }
        let same = |given: &str, stored: &str| given.is_empty() || given == stored;
        same(&r.scheduled_procedure_step_id, item_sps_id)
            && same(&r.accession_number, item_acc)
            && same(&r.requested_procedure_id, item_rp)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::json::dataset_from_json;
    use dicom_core::VR;
    use serde_json::json;

    fn create_attrs(status: &str) -> Dataset {
        dataset_from_json(&json!({
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00100020": {"vr": "LO", "Value": ["P1"]},
            "00400241": {"vr": "AE", "Value": ["CT1"]},
            "00400244": {"vr": "DA", "Value": ["20260115"]},
            "00400245": {"vr": "TM", "Value": ["103100"]},
            "00400252": {"vr": "CS", "Value": [status]},
            "00400253": {"vr": "SH", "Value": ["PPS1"]},
            "00400250": {"vr": "DA"},
            "00400251": {"vr": "TM"},
            "00400270": {"vr": "SQ", "Value": [{
                "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
                "00080050": {"vr": "SH", "Value": ["ACC1"]},
                "00401001": {"vr": "SH", "Value": ["RP1"]},
                "00400009": {"vr": "SH", "Value": ["SPS1"]}
            }]}
        }))
        .unwrap()
    }

    fn created() -> MppsInstance {
        n_create(None, "1.2.3.9", create_attrs("IN PROGRESS")).unwrap()
    }

    fn set(status: &str) -> Dataset {
        dataset_from_json(&json!({
            "00400252": {"vr": "CS", "Value": [status]},
            "00400250": {"vr": "DA", "Value": ["20260115"]},
            "00400251": {"vr": "TM", "Value": ["104500"]}
        }))
        .unwrap()
    }

    #[test]
    fn create_in_progress() {
        let i = created();
        assert_eq!(i.status(), PpsStatus::InProgress);
        assert_eq!(i.sop_instance_uid, "1.2.3.9");
    }

    #[test]
    fn create_with_other_status_is_0106() {
        for status in ["COMPLETED", "DISCONTINUED", "SCHEDULED", ""] {
            let e = n_create(None, "1.2.3.9", create_attrs(status)).unwrap_err();
            let expected = if status.is_empty() { 0x0121 } else { 0x0106 };
            assert_eq!(e.status(), expected, "{status}: {e}");
            assert_eq!(e.attributes(), vec![tags::PERFORMED_PROCEDURE_STEP_STATUS]);
        }
    }

    #[test]
    fn duplicate_create_is_0111() {
        let first = created();
        let e = n_create(Some(&first), "1.2.3.9", create_attrs("IN PROGRESS")).unwrap_err();
        assert_eq!(e, MppsError::DuplicateInstance("1.2.3.9".into()));
        assert_eq!(e.status(), 0x0111);
    }

    #[test]
    fn create_checks_uid_and_required_attributes() {
        let e = n_create(None, "1.2.x", create_attrs("IN PROGRESS")).unwrap_err();
        assert_eq!(e.status(), 0x0117);
        let mut attrs = create_attrs("IN PROGRESS");
        attrs.remove(tags::PERFORMED_STATION_AE_TITLE);
        let e = n_create(None, "1.2.3.9", attrs).unwrap_err();
        assert_eq!(
            e,
            MppsError::MissingAttribute(tags::PERFORMED_STATION_AE_TITLE)
        );
        assert_eq!(e.status(), 0x0120);
        assert!(
            e.to_string()
                .contains("PerformedStationAETitle (0040,0241)"),
            "{e}"
        );
        let mut attrs = create_attrs("IN PROGRESS");
        attrs.put(tags::MODALITY, VR::CS, Value::Strs(vec![]));
        assert_eq!(
            n_create(None, "1.2.3.9", attrs).unwrap_err().status(),
            0x0121
        );
        let mut attrs = create_attrs("IN PROGRESS");
        attrs
            .items_mut(tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE)
            .unwrap()[0]
            .remove(tags::STUDY_INSTANCE_UID);
        assert_eq!(
            n_create(None, "1.2.3.9", attrs).unwrap_err(),
            MppsError::MissingAttribute(tags::STUDY_INSTANCE_UID)
        );
    }

    #[test]
    fn set_to_completed_merges_final_attributes() {
        let done = n_set("1.2.3.9", Some(&created()), &set("COMPLETED")).unwrap();
        assert_eq!(done.status(), PpsStatus::Completed);
        assert_eq!(
            done.dataset.str(tags::PERFORMED_PROCEDURE_STEP_END_TIME),
            Some("104500")
        );
        assert_eq!(
            done.dataset.str(tags::PATIENT_ID),
            Some("P1"),
            "untouched attributes stay"
        );
        let stopped = n_set("1.2.3.9", Some(&created()), &set("DISCONTINUED")).unwrap();
        assert_eq!(stopped.status(), PpsStatus::Discontinued);
    }

    #[test]
    fn set_in_progress_updates_and_stays_open() {
        let mut mods = Dataset::new();
        mods.put_str(tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION, VR::LO, "Chest");
        let i = n_set("1.2.3.9", Some(&created()), &mods).unwrap();
        assert_eq!(i.status(), PpsStatus::InProgress);
        let i = n_set("1.2.3.9", Some(&i), &set("IN PROGRESS")).unwrap();
        assert_eq!(
            i.dataset.str(tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION),
            Some("Chest")
        );
        let i = n_set("1.2.3.9", Some(&i), &set("COMPLETED")).unwrap();
        assert_eq!(i.status(), PpsStatus::Completed);
    }

    #[test]
    fn set_after_final_is_0110_with_the_standard_comment() {
        for final_status in ["COMPLETED", "DISCONTINUED"] {
            let done = n_set("1.2.3.9", Some(&created()), &set(final_status)).unwrap();
            for next in ["COMPLETED", "DISCONTINUED", "IN PROGRESS"] {
                let e = n_set("1.2.3.9", Some(&done), &set(next)).unwrap_err();
                assert_eq!(e.status(), 0x0110);
                assert_eq!(e.error_comment(), COMMENT_NO_LONGER_UPDATABLE);
                assert_eq!(e.error_id(), Some(0xA710));
            }
        }
    }

    #[test]
    fn set_errors() {
        let e = n_set("1.2.3.8", None, &set("COMPLETED")).unwrap_err();
        assert_eq!(e.status(), 0x0112);
        let e = n_set("1.2.3.9", Some(&created()), &set("SCHEDULED")).unwrap_err();
        assert_eq!(e.status(), 0x0106);
        assert_eq!(e.attributes(), vec![tags::PERFORMED_PROCEDURE_STEP_STATUS]);
        let mut mods = set("COMPLETED");
        mods.put_str(tags::PATIENT_ID, VR::LO, "OTHER");
        let e = n_set("1.2.3.9", Some(&created()), &mods).unwrap_err();
        assert_eq!(e.status(), 0x0106);
        assert_eq!(e.attributes(), vec![tags::PATIENT_ID]);
        // Repeating an unchanged immutable attribute is fine.
        let mut mods = set("COMPLETED");
        mods.put_str(tags::PATIENT_ID, VR::LO, "P1");
        assert!(n_set("1.2.3.9", Some(&created()), &mods).is_ok());
    }

    #[test]
    fn linking_rules() {
        let mut item = Dataset::new();
        item.put_str(tags::ACCESSION_NUMBER, VR::SH, "ACC1");
        item.put_str(tags::REQUESTED_PROCEDURE_ID, VR::SH, "RP1");
        let mut step = Dataset::new();
        step.put_str(tags::SCHEDULED_PROCEDURE_STEP_ID, VR::SH, "SPS1");
        item.put(
            tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
            VR::SQ,
            Value::Items(vec![step]),
        );
        let refs = step_refs(&create_attrs("IN PROGRESS"));
        assert!(links_to(&refs, &item));
        let r = |acc: &str, rp: &str, sps: &str| StepRef {
            accession_number: acc.into(),
            requested_procedure_id: rp.into(),
            scheduled_procedure_step_id: sps.into(),
        };
        assert!(links_to(&[r("ACC1", "", "")], &item));
        assert!(links_to(&[r("", "", "SPS1")], &item));
        assert!(!links_to(&[r("ACC1", "", "SPS2")], &item));
        assert!(!links_to(&[r("ACC2", "", "SPS1")], &item));
        assert!(
            !links_to(&[r("", "RP1", "")], &item),
            "RP ID alone is too weak"
        );
        assert!(!links_to(&[r("", "", "")], &item), "unscheduled");
        assert_eq!(item_status_for(PpsStatus::InProgress), SpsStatus::Started);
    }
}
