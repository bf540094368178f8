//! The N-EVENT-REPORT side of Storage Commitment: judging a request against the store,
//! encoding the report, and delivering it on a new association.
//!
//! A reference is committed only if its instance is durably stored *and* indexed with the
//! same SOP class and its file is there: the judgement runs after the ingest checkpoint that
//! covers everything acknowledged before it (the caller settles first), so "acknowledged but
//! not yet checkpointed" is never reported as missing, and never as committed before it is
//! indexed.
//!
//! Reports on a new association are the work of one reporter thread per daemon
//! ([`start_reporter`]): it delivers every pending request no open association is reporting,
//! at start-up (requests whose association died with the daemon) and whenever woken, with an
//! exponential backoff per request, logging each attempt. A request stays in the pending
//! table (`store::commitment`) until the requestor acknowledges a report with a success
//! status, or until it is older than `store::commitment::MAX_AGE` (then it is dropped with a
//! WARN line and counted as `expired`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use tracing::{debug, info, warn};

use super::{CommitmentScp, SOP_CLASS, WELL_KNOWN_INSTANCE};
use crate::config::CommitmentReport;
use crate::net::dimse::command::{tags as ct, CommandBuilder, CommandField};
use crate::net::dimse::dataset::write_dataset;
use crate::net::scu::ScuError;
use crate::store::commitment::{CommitmentStoreError, Commitments, PendingCommitment, MAX_AGE};
use crate::store::index::Index;

/// Failure Reason (0008,1197) values of the Failed SOP Sequence (PS3.4 J.3.2.1.1.2).
pub mod reason {
    /// Processing failure: the index could not be read, or the file is gone.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// No such object instance: never stored (or no longer held).
    pub const NO_SUCH_OBJECT_INSTANCE: u16 = 0x0112;
    /// Class/instance conflict: stored under another SOP class.
    pub const CLASS_INSTANCE_CONFLICT: u16 = 0x0119;
}

/// Event Type ID 1: every reference committed.
pub const EVENT_ALL_COMMITTED: u16 = 1;
/// Event Type ID 2: failures exist.
pub const EVENT_FAILURES: u16 = 2;

/// Transfer syntaxes a report association proposes (both little-endian, Explicit first).
const REPORT_SYNTAXES: [&str; 2] = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"];

/// The outcome of judging one request: every reference in exactly one of the two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// (SOP Class UID, SOP Instance UID) committed.
    pub committed: Vec<(String, String)>,
    /// (SOP Class UID, SOP Instance UID, Failure Reason) not committed.
    pub failed: Vec<(String, String, u16)>,
}

impl Judgement {
    /// Event Type ID of the report.
    pub fn event_type(&self) -> u16 {
        if self.failed.is_empty() {
            EVENT_ALL_COMMITTED
        } else {
            EVENT_FAILURES
        }
    }
}

/// Judges each reference against the index and the data directory `root`. Blocking (redb
/// reads, a `stat` per file): run it on a pool thread.
pub fn judge(index: &Index, root: &Path, references: &[(String, String)]) -> Judgement {
    let mut j = Judgement::default();
    for (class, instance) in references {
        let verdict = match index.instance(instance) {
            Err(e) => {
                warn!(sop = %instance, error = %e, "storage commitment: index read failed");
                Err(reason::PROCESSING_FAILURE)
            }
            Ok(None) => Err(reason::NO_SUCH_OBJECT_INSTANCE),
            Ok(Some(rec)) if rec.sop_class_uid != *class => {
                debug!(sop = %instance, stored = %rec.sop_class_uid, asked = %class,
                    "storage commitment: SOP class differs");
                Err(reason::CLASS_INSTANCE_CONFLICT)
            }
            Ok(Some(rec)) => match std::fs::metadata(root.join(&rec.path)) {
                Ok(m) if m.is_file() => Ok(()),
                _ => {
                    warn!(sop = %instance, path = %rec.path,
                        "storage commitment: indexed but the file is missing");
                    Err(reason::PROCESSING_FAILURE)
                }
            },
        };
        match verdict {
            Ok(()) => j.committed.push((class.clone(), instance.clone())),
            Err(r) => j.failed.push((class.clone(), instance.clone(), r)),
        }
    }
    j
}

fn ui(tag: dicom_core::Tag, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UI, PrimitiveValue::from(v))
}

/// The N-EVENT-REPORT-RQ dataset (PS3.4 J.3.3.1.1): Transaction UID, Retrieve AE Title, the
/// Referenced SOP Sequence (when something was committed) and the Failed SOP Sequence (when
/// something failed).
pub fn report_dataset(transaction_uid: &str, j: &Judgement, retrieve_ae: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    o.put(DataElement::new(
        tags::RETRIEVE_AE_TITLE,
        VR::AE,
        PrimitiveValue::from(retrieve_ae),
    ));
    o.put(ui(tags::TRANSACTION_UID, transaction_uid));
    if !j.failed.is_empty() {
        let items: Vec<InMemDicomObject> = j
            .failed
            .iter()
            .map(|(c, i, r)| {
                let mut it = InMemDicomObject::new_empty();
                it.put(ui(tags::REFERENCED_SOP_CLASS_UID, c));
                it.put(ui(tags::REFERENCED_SOP_INSTANCE_UID, i));
                it.put(DataElement::new(
                    tags::FAILURE_REASON,
                    VR::US,
                    PrimitiveValue::from(*r),
                ));
                it
            })
            .collect();
        o.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(items),
        ));
    }
    if !j.committed.is_empty() {
        let items: Vec<InMemDicomObject> = j
            .committed
            .iter()
            .map(|(c, i)| {
                let mut it = InMemDicomObject::new_empty();
                it.put(ui(tags::REFERENCED_SOP_CLASS_UID, c));
                it.put(ui(tags::REFERENCED_SOP_INSTANCE_UID, i));
                it
            })
            .collect();
        o.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(items),
        ));
    }
    o
}

/// The N-EVENT-REPORT-RQ command set (PS3.7 10.1.1.1), a dataset following.
pub fn event_report_rq(message_id: u16, event_type: u16) -> Vec<u8> {
    CommandBuilder::new()
        .uid(ct::AFFECTED_SOP_CLASS_UID, SOP_CLASS)
        .us(ct::COMMAND_FIELD, CommandField::NEventReportRq as u16)
        .us(ct::MESSAGE_ID, message_id)
        .us(ct::COMMAND_DATA_SET_TYPE, 0x0000)
        .uid(ct::AFFECTED_SOP_INSTANCE_UID, WELL_KNOWN_INSTANCE)
        .us(ct::EVENT_TYPE_ID, event_type)
        .build()
}

/// The N-ACTION-RSP (PS3.7 10.1.4.1): the well-known class and instance as Affected SOP
/// Class/Instance UID, the Action Type ID echoed, and an Error Comment on a failure.
pub fn action_rsp(
    message_id: u16,
    status: u16,
    comment: Option<&str>,
    action_type_id: Option<u16>,
) -> Vec<u8> {
    let mut b = CommandBuilder::new()
        .uid(ct::AFFECTED_SOP_CLASS_UID, SOP_CLASS)
        .us(ct::COMMAND_FIELD, CommandField::NActionRsp as u16)
        .us(ct::MESSAGE_ID_BEING_RESPONDED_TO, message_id)
        .us(
            ct::COMMAND_DATA_SET_TYPE,
            crate::net::dimse::command::NO_DATASET,
        )
        .us(ct::STATUS, status);
    if let Some(c) = comment {
        // Error Comment is LO: at most 64 characters.
        let c: String = c
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(64)
            .collect();
        b = b.text(ct::ERROR_COMMENT, &c);
    }
    b = b.uid(ct::AFFECTED_SOP_INSTANCE_UID, WELL_KNOWN_INSTANCE);
    if let Some(a) = action_type_id {
        b = b.us(ct::ACTION_TYPE_ID, a);
    }
    b.build()
}

/// µs since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Delay before delivery attempt `attempts + 1` on a new association: 2 s doubling per
/// failure, at most 5 minutes (a requestor that is down for hours is tried every 5 minutes).
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_mul(1 << attempts.min(8)).min(300))
}

/// Why a report could not be delivered on a new association.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// No destination has the requestor's AE title: nowhere to connect.
    #[error(
        "no [[destinations]] entry has AE title {0:?}: add one so the report can be delivered"
    )]
    UnknownAe(String),
    /// The association or the exchange failed.
    #[error("report association: {0}")]
    Scu(#[from] ScuError),
    /// The requestor answered the N-EVENT-REPORT with a failure status.
    #[error("the requestor answered the report with status {0:04X}")]
    Refused(u16),
    /// The report could not be encoded.
    #[error("cannot encode the report: {0}")]
    Encode(String),
    /// The pending table failed.
    #[error(transparent)]
    Store(#[from] CommitmentStoreError),
}

/// What open associations and the reporter thread share: which requests an association is
/// reporting itself (the reporter leaves those alone), and the reporter's wake-up call.
#[derive(Debug, Default)]
pub struct Reports {
    claimed: Mutex<HashSet<String>>,
    wake: Condvar,
    woken: Mutex<bool>,
}

impl Reports {
    /// An association takes `transaction_uid` over; false if another one already has it.
    pub fn claim(&self, transaction_uid: &str) -> bool {
        lock(&self.claimed).insert(transaction_uid.to_owned())
    }

    /// The association is done with `transaction_uid` (reported, or left to the reporter).
    pub fn release(&self, transaction_uid: &str) {
        lock(&self.claimed).remove(transaction_uid);
    }

    /// Asks the reporter to look at the pending requests now.
    pub fn wake(&self) {
        *lock(&self.woken) = true;
        self.wake.notify_all();
    }

    fn wait(&self, limit: Duration) {
        let guard = lock(&self.woken);
        let mut guard = self
            .wake
            .wait_timeout_while(guard, limit, |w| !*w)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
        *guard = false;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A test-only knob: `DICOM_GW_TEST_COMMITMENT_DELAY_MS` holds every judgement back this long,
/// so a test can kill the daemon between the N-ACTION-RSP and the report. Not for production.
pub fn test_delay() -> Option<Duration> {
    std::env::var("DICOM_GW_TEST_COMMITMENT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// Starts the reporter thread: delivers, on new associations, the pending requests no open
/// association is reporting; first at once (what a previous run left), then whenever woken
/// or a retry is due. With `report = "same-association"` it does nothing: requests wait for
/// the requestor's next N-ACTION.
pub fn start_reporter(scp: CommitmentScp) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("commitment-reporter".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(error = %e, "storage commitment reporter cannot start; pending reports wait for a restart");
                    return;
                }
            };
            loop {
                let next = deliver_due(&scp, &rt);
                scp.reports.wait(next);
            }
        })
}

/// One pass over the pending requests; returns how long to sleep before the next pass.
fn deliver_due(scp: &CommitmentScp, rt: &tokio::runtime::Runtime) -> Duration {
    const IDLE: Duration = Duration::from_secs(60);
    let store = match Commitments::open(scp.index.database()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "storage commitment: cannot read the pending requests");
            return Duration::from_secs(10);
        }
    };
    // Requests older than MAX_AGE are dropped first, in every mode (under
    // `same-association` a requestor that never comes back would hold them forever); one an
    // association is reporting right now is left to it.
    let mut taken = Vec::new();
    match store.remove_expired(now_us(), |s| {
        let got = scp.reports.claim(&s.transaction_uid);
        if got {
            taken.push(s.transaction_uid.clone());
        }
        got
    }) {
        Ok(gone) => {
            for s in gone {
                warn!(transaction = %s.transaction_uid, requestor = %s.calling_ae_title,
                    attempts = s.attempts, max_age_days = MAX_AGE.as_secs() / 86_400,
                    "storage commitment request expired undelivered; dropped");
                crate::metrics::global().commitment_expired();
            }
        }
        Err(e) => warn!(error = %e, "storage commitment: cannot drop expired requests"),
    }
    for uid in taken {
        scp.reports.release(&uid);
    }
    // The schedule only (a few dozen bytes a request): a full record is read when it is due.
    let pending = match store.schedule() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "storage commitment: cannot read the pending requests");
            return Duration::from_secs(10);
        }
    };
    crate::metrics::global().commitment_pending(pending.len() as u64);
    if scp.report == CommitmentReport::SameAssociation {
        return IDLE;
    }
    let mut next = IDLE;
    for p in pending {
        let now = now_us();
        if p.next_attempt_us > now {
            next = next.min(Duration::from_micros(p.next_attempt_us - now));
            continue;
        }
        // Claimed while delivering, so an association does not report it at the same time;
        // read again, since an association may have had it acknowledged since the listing.
        if !scp.reports.claim(&p.transaction_uid) {
            continue;
        }
        if let Some(wait) = deliver_one(scp, rt, &store, &p.transaction_uid) {
            next = next.min(wait);
        }
        scp.reports.release(&p.transaction_uid);
    }
    if let Ok(n) = store.count() {
        crate::metrics::global().commitment_pending(n);
    }
    next
}

/// Delivers the claimed request `uid` if it is still pending; the retry delay if it failed.
fn deliver_one(
    scp: &CommitmentScp,
    rt: &tokio::runtime::Runtime,
    store: &Commitments<'_>,
    uid: &str,
) -> Option<Duration> {
    let p = match store.get(uid) {
        Ok(Some(p)) => p,
        Ok(None) => return None,
        Err(e) => {
            warn!(transaction = %uid, error = %e, "storage commitment: cannot read the request");
            return Some(Duration::from_secs(10));
        }
    };
    if let Some(settle) = &scp.settle {
        if !rt.block_on(settle.settle(crate::net::services::query_retrieve_find::SETTLE_LIMIT)) {
            warn!("storage commitment: the ingest checkpoint did not come in time; judging the index as it stands");
        }
    }
    if let Some(d) = test_delay() {
        std::thread::sleep(d);
    }
    let attempt = p.attempts + 1;
    match deliver_new_association(scp, &p) {
        Ok(event) => {
            info!(transaction = %p.transaction_uid, requestor = %p.calling_ae_title,
                attempt, event_type = event, "storage commitment report delivered on a new association");
            if let Err(e) = store.remove(&p.transaction_uid) {
                warn!(transaction = %p.transaction_uid, error = %e,
                    "storage commitment: report delivered but the request cannot be removed; it will be reported again");
            }
            crate::metrics::global().commitment_reported(event == EVENT_ALL_COMMITTED);
            None
        }
        Err(e) => {
            let wait = backoff(p.attempts);
            warn!(transaction = %p.transaction_uid, requestor = %p.calling_ae_title,
                attempt, retry_in_s = wait.as_secs(), error = %e,
                "storage commitment report not delivered; will retry");
            if let Err(e) = store.reschedule(&p.transaction_uid, now_us() + wait.as_micros() as u64)
            {
                warn!(transaction = %p.transaction_uid, error = %e, "storage commitment: cannot reschedule");
            }
            Some(wait)
        }
    }
}

/// Judges `p` and delivers its report on a new association to the requestor's AE title,
/// proposing the Storage Commitment class with the SCP role for us (SCU role off, SCP role on,
/// PS3.4 J.3.3.1.3). A requestor that answers with the default roles still gets the report, as
/// Orthanc does (capabilities §2b); a requestor that refuses the context fails the attempt.
/// Returns the Event Type ID sent.
pub fn deliver_new_association(
    scp: &CommitmentScp,
    p: &PendingCommitment,
) -> Result<u16, DeliveryError> {
    let dest = scp
        .destinations
        .by_ae_title(&p.calling_ae_title)
        .ok_or_else(|| DeliveryError::UnknownAe(p.calling_ae_title.clone()))?;
    let j = judge(&scp.index, &scp.data_root, &p.references);
    // Calling AE: the AE the modality called (dcm4chee #3592: modalities check it).
    let calling = if p.called_ae_title.is_empty() {
        scp.ae_title.clone()
    } else {
        p.called_ae_title.clone()
    };
    let mut a = crate::net::scu::link_to(
        &dest,
        calling,
        vec![(
            SOP_CLASS.to_owned(),
            REPORT_SYNTAXES.iter().map(|s| (*s).to_owned()).collect(),
        )],
        &[(SOP_CLASS.to_owned(), false, true)],
    )?;
    let result = (|| {
        let ctx = a.any_context(SOP_CLASS)?.clone();
        let ds = write_dataset(
            &report_dataset(&p.transaction_uid, &j, &scp.ae_title),
            &ctx.transfer_syntax,
        )
        .map_err(DeliveryError::Encode)?;
        let event = j.event_type();
        a.send(ctx.id, &event_report_rq(1, event), Some((&ds, &[])))?;
        let rsp = a.receive(1)?;
        match rsp.command.status {
            Some(s)
                if crate::net::dimse::status::category(s)
                    != crate::net::dimse::status::Category::Failure =>
            {
                Ok(event)
            }
            Some(s) => Err(DeliveryError::Refused(s)),
            None => Err(DeliveryError::Refused(0xFFFF)),
        }
    })();
    match &result {
        Ok(_) => {
            let _ = a.release();
        }
        Err(_) => a.abort(),
    }
    result
}

/// Shares the pieces an association and the reporter need.
pub fn shared() -> Arc<Reports> {
    Arc::new(Reports::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dimse::dataset::read_dataset;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    #[test]
    fn a_report_names_every_reference_once_with_its_reason() {
        let j = Judgement {
            committed: vec![(CT.into(), "1.2.3.1".into())],
            failed: vec![
                (CT.into(), "1.2.3.2".into(), reason::NO_SUCH_OBJECT_INSTANCE),
                (CT.into(), "1.2.3.3".into(), reason::CLASS_INSTANCE_CONFLICT),
            ],
        };
        assert_eq!(j.event_type(), EVENT_FAILURES);
        let ts = "1.2.840.10008.1.2";
        let bytes = write_dataset(&report_dataset("1.2.9", &j, "DICOM_GW"), ts).unwrap();
        let o = read_dataset(&bytes, ts).unwrap();
        assert_eq!(
            o.get(tags::TRANSACTION_UID).unwrap().to_str().unwrap(),
            "1.2.9"
        );
        let failed = o.get(tags::FAILED_SOP_SEQUENCE).unwrap().items().unwrap();
        assert_eq!(failed.len(), 2);
        assert_eq!(
            failed[1]
                .get(tags::FAILURE_REASON)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            0x0119
        );
        let ok = o
            .get(tags::REFERENCED_SOP_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(ok.len(), 1);
        let all = Judgement {
            committed: j.committed.clone(),
            failed: vec![],
        };
        assert_eq!(all.event_type(), EVENT_ALL_COMMITTED);
        let bytes = write_dataset(&report_dataset("1.2.9", &all, "GW"), ts).unwrap();
        let o = read_dataset(&bytes, ts).unwrap();
        assert!(o.get(tags::FAILED_SOP_SEQUENCE).is_none());
    }

    #[test]
    fn the_commands_decode_as_a_peer_reads_them() {
        use crate::net::dimse::command::decode_command;
        let c = decode_command(&event_report_rq(7, 2)).unwrap();
        assert_eq!(c.command_field, CommandField::NEventReportRq as u16);
        assert_eq!(c.message_id, 7);
        assert_eq!(c.event_type_id, Some(2));
        assert!(c.has_dataset);
        assert_eq!(
            c.affected_sop_instance_uid.as_deref(),
            Some(WELL_KNOWN_INSTANCE)
        );
        let r = decode_command(&action_rsp(5, 0x0115, Some("bad"), Some(1))).unwrap();
        assert_eq!(r.status, Some(0x0115));
        assert_eq!(r.action_type_id, Some(1));
        assert_eq!(r.error_comment.as_deref(), Some("bad"));
        assert_eq!(r.affected_sop_class_uid.as_deref(), Some(SOP_CLASS));
        assert!(!r.has_dataset);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(1), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
