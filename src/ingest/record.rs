//! What the ingest journal keeps of each object besides its bytes: the `meta` section of a
//! journal record (postcard), decided before the append so replay repeats the decision.

use serde::{Deserialize, Serialize};

use crate::store::attrs::IndexAttrs;
use crate::store::index::InstanceRecord;

/// The decision taken when the object was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// A new object, or a replacement (`duplicate_policy = "replace"`): it becomes the
    /// indexed version of its SOP Instance UID.
    Place,
    /// The same bytes as the object indexed (or journaled) under its UID when it arrived:
    /// routed again, and restored if that object has been retired meanwhile.
    Identical,
}

/// The `meta` section of one journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// The index record (its `path` is the object's path for a first version).
    pub record: InstanceRecord,
    /// Attributes for the patient/study/series rows.
    pub attrs: IndexAttrs,
    /// Destinations the routing rules chose.
    pub destinations: Vec<String>,
    /// What to do with it.
    pub decision: Decision,
    /// For a large object: its file under `journal/staged/` (synced before the append); the
    /// record's header and dataset sections are then empty.
    pub staged: Option<String>,
}

impl RecordMeta {
    /// Encodes the section, into a vector sized once: grown from empty, as
    /// `postcard::to_allocvec` does, it was reallocated about eight times per record.
    pub fn encode(&self) -> Vec<u8> {
        let room = Vec::with_capacity(self.attrs.attributes.len() + 1024);
        postcard::to_extend(self, room).expect("encoding owned strings cannot fail")
    }

    /// Decodes a section written by [`RecordMeta::encode`].
    pub fn decode(b: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let m = RecordMeta {
            record: InstanceRecord {
                sop_instance_uid: "1.2.3".into(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                study_instance_uid: "1.2".into(),
                series_instance_uid: "1.2.9".into(),
                instance_number: "4".into(),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                file_size: 300,
                dataset_size: 100,
                dataset_blake3: "ab".repeat(32),
                received_at_us: 17,
                calling_ae_title: "MOD".into(),
                called_ae_title: "GW".into(),
                path: "objects/1.2/1.2.9/1.2.3.dcm".into(),
            },
            attrs: IndexAttrs {
                patient_id: "P".into(),
                ..Default::default()
            },
            destinations: vec!["pacs".into()],
            decision: Decision::Identical,
            staged: Some("0-1.part".into()),
        };
        assert_eq!(RecordMeta::decode(&m.encode()).unwrap(), m);
        assert!(RecordMeta::decode(b"\xff\xff").is_err());
    }
}
