//! The ingest pipeline behind the storage service: builds the index record, evaluates the
//! routing rules and hands the object to the group committer, which makes it durable,
//! indexed and queued before the C-STORE is answered.
//!
//! It implements [`ObjectSink`], the interface the storage service is given at start-up, so
//! the network side never imports the committer or the queue.

use std::sync::Arc;

use arc_swap::ArcSwap;
use dicom_core::Tag;

use crate::commit::{timestamp_us, CommitOutcome, Committer};
use crate::metrics::DuplicateOutcome;
use crate::queue::routing::{RouteInput, Routing};
use crate::store::index::InstanceRecord;
use crate::store::sink::{Accepted, ObjectSink, ReceivedObject, SinkSnapshot, Submission};
use crate::store::StoreError;

/// Routing plus the group committer.
#[derive(Debug, Clone)]
pub struct Pipeline {
    committer: Committer,
    routing: Arc<ArcSwap<Routing>>,
}

impl Pipeline {
    /// A pipeline committing through `committer`, routing by the live table `routing`.
    pub fn new(committer: Committer, routing: Arc<ArcSwap<Routing>>) -> Self {
        Self { committer, routing }
    }
}

impl ObjectSink for Pipeline {
    fn snapshot(&self) -> Arc<dyn SinkSnapshot> {
        Arc::new(Snapshot {
            committer: self.committer.clone(),
            routing: self.routing.load_full(),
        })
    }
}

struct Snapshot {
    committer: Committer,
    routing: Arc<Routing>,
}

impl SinkSnapshot for Snapshot {
    fn wanted_tags(&self) -> &[Tag] {
        self.routing.wanted_tags()
    }

    fn submit(&self, obj: ReceivedObject) -> Submission {
        let attrs = obj.attrs;
        let record = InstanceRecord {
            sop_instance_uid: obj.sop_instance_uid,
            sop_class_uid: obj.sop_class_uid,
            study_instance_uid: attrs.study_instance_uid.clone(),
            series_instance_uid: attrs.series_instance_uid.clone(),
            instance_number: attrs.instance_number.clone(),
            transfer_syntax_uid: obj.transfer_syntax_uid,
            file_size: obj.file_size,
            dataset_size: obj.dataset_size,
            dataset_blake3: obj.dataset_blake3,
            received_at_us: timestamp_us(),
            calling_ae_title: obj.calling_ae_title,
            called_ae_title: obj.called_ae_title,
            path: obj.rel_path.to_string_lossy().into_owned(),
        };
        let lookup = |t| attrs.extra_value(t);
        let destinations = self.routing.destinations(&RouteInput {
            calling_ae_title: &record.calling_ae_title,
            called_ae_title: &record.called_ae_title,
            attribute: &lookup,
        });
        let committer = self.committer.clone();
        let temp_path = obj.temp_path;
        let (sop, calling) = (
            record.sop_instance_uid.clone(),
            record.calling_ae_title.clone(),
        );
        Box::pin(async move {
            let outcome = committer
                .commit(temp_path, record, attrs, destinations)
                .await;
            let (accepted, duplicate) = match outcome {
                Ok(CommitOutcome::Stored) => (Accepted::Stored, None),
                Ok(CommitOutcome::IdenticalDuplicate) => (
                    Accepted::IdenticalDuplicate,
                    Some(DuplicateOutcome::Identical),
                ),
                Ok(CommitOutcome::KeptExisting) => {
                    (Accepted::KeptExisting, Some(DuplicateOutcome::KeptExisting))
                }
                Ok(CommitOutcome::Replaced) => {
                    (Accepted::Replaced, Some(DuplicateOutcome::Replaced))
                }
                Err(e) => {
                    if matches!(e, StoreError::Duplicate(_)) {
                        duplicate_seen(DuplicateOutcome::Rejected, &sop, &calling);
                    }
                    return Err(e);
                }
            };
            if let Some(d) = duplicate {
                duplicate_seen(d, &sop, &calling);
            }
            Ok(accepted)
        })
    }
}

/// A re-sent SOP Instance UID is worth a line at WARN and a count: with `keep` a corrected
/// re-send is silently discarded otherwise, and an identical one can hide a routing mistake.
fn duplicate_seen(outcome: DuplicateOutcome, sop: &str, calling: &str) {
    crate::metrics::global().duplicate(outcome);
    let what = match outcome {
        DuplicateOutcome::Identical => "identical to the stored object: acknowledged, nothing new written",
        DuplicateOutcome::KeptExisting => "different from the stored object: kept the stored one, discarded the new one (duplicate_policy = \"keep\")",
        DuplicateOutcome::Replaced => "different from the stored object: the new one replaced it (duplicate_policy = \"replace\")",
        DuplicateOutcome::Rejected => "different from the stored object: refused 0111 (duplicate_policy = \"reject\")",
    };
    tracing::warn!(sop_instance_uid = %sop, calling = %calling, outcome = outcome.label(), "duplicate SOP Instance UID, {what}");
}
