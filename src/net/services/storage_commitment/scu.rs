//! The Storage Commitment SCU (`dicom-gw scu commit`): one N-ACTION, then the N-EVENT-REPORT,
//! on the same association or, when listening, on a new association the SCP opens.
//!
//! Two ways, chosen by the caller, because an SCU cannot know which one the SCP uses:
//! - without a listener the association stays open after the N-ACTION-RSP and the report is
//!   awaited on it (bounded by the association's read timeout);
//! - with a listener the association is released after the N-ACTION-RSP (as modalities do)
//!   and the report is awaited on the listener, whose association may propose the SCP role
//!   for the requestor (accepted: PS3.4 J.3.3.1.3) or use the default roles (also accepted).
//!
//! A report that cannot be decoded is answered 0110 Processing failure (dcm4chee #4263), so
//! the SCP keeps the request and tries again.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::{Reference, REQUEST_STORAGE_COMMITMENT, SOP_CLASS, WELL_KNOWN_INSTANCE};
use crate::net::dimse::command::{tags as ct, CommandBuilder, CommandField, NO_DATASET};
use crate::net::dimse::dataset::{read_dataset, write_dataset};
use crate::net::scu::{AssocParams, Association, ScuError, ScuTls};
use crate::net::ul::association::{AcceptorPolicy, Offered};

/// Largest report dataset accepted (a report lists UIDs: a few hundred bytes per object).
const MAX_REPORT_LEN: usize = 16 * 1024 * 1024;

/// A received N-EVENT-REPORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedReport {
    /// "same" or "new" association.
    pub via: &'static str,
    /// Calling AE title of the association it came on (ours on the same association).
    pub calling_ae_title: String,
    /// Event Type ID: 1 all committed, 2 failures exist.
    pub event_type: u16,
    /// Transaction UID echoed.
    pub transaction_uid: String,
    /// Committed (class, instance).
    pub committed: Vec<Reference>,
    /// Failed (class, instance) with their Failure Reason.
    pub failed: Vec<(Reference, u16)>,
}

/// What one `scu commit` got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// N-ACTION-RSP status.
    pub action_status: u16,
    /// Its Error Comment.
    pub action_comment: Option<String>,
    /// The report, if one arrived in time.
    pub report: Option<ReceivedReport>,
}

/// Why the SCU could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitScuError {
    /// The association failed.
    #[error(transparent)]
    Scu(#[from] ScuError),
    /// The listener could not be set up.
    #[error("cannot listen on port {port}: {source}")]
    Listen {
        /// Port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// The request could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// The listener's offer: the Storage Commitment class, the SCP role granted when proposed.
struct ReportOffer;

impl Offered for ReportOffer {
    fn supports(&self, abstract_syntax: &str) -> bool {
        abstract_syntax == SOP_CLASS
    }

    fn requestor_may_be_scp(&self, sop_class: &str) -> bool {
        sop_class == SOP_CLASS
    }
}

/// The N-ACTION-RQ command set.
fn action_rq(message_id: u16) -> Vec<u8> {
    CommandBuilder::new()
        .uid(ct::REQUESTED_SOP_CLASS_UID, SOP_CLASS)
        .us(ct::COMMAND_FIELD, CommandField::NActionRq as u16)
        .us(ct::MESSAGE_ID, message_id)
        .us(ct::COMMAND_DATA_SET_TYPE, 0x0000)
        .uid(ct::REQUESTED_SOP_INSTANCE_UID, WELL_KNOWN_INSTANCE)
        .us(ct::ACTION_TYPE_ID, REQUEST_STORAGE_COMMITMENT)
        .build()
}

/// The N-EVENT-REPORT-RSP to the request `rq`.
fn event_report_rsp(rq: &crate::net::dimse::command::Command, status: u16) -> Vec<u8> {
    let mut b = CommandBuilder::new()
        .uid(ct::AFFECTED_SOP_CLASS_UID, SOP_CLASS)
        .us(ct::COMMAND_FIELD, CommandField::NEventReportRsp as u16)
        .us(ct::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id)
        .us(ct::COMMAND_DATA_SET_TYPE, NO_DATASET)
        .us(ct::STATUS, status)
        .uid(ct::AFFECTED_SOP_INSTANCE_UID, WELL_KNOWN_INSTANCE);
    if let Some(e) = rq.event_type_id {
        b = b.us(ct::EVENT_TYPE_ID, e);
    }
    b.build()
}

fn request_dataset(transaction_uid: &str, refs: &[Reference]) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    o.put(DataElement::new(
        tags::TRANSACTION_UID,
        VR::UI,
        PrimitiveValue::from(transaction_uid),
    ));
    let items: Vec<InMemDicomObject> = refs
        .iter()
        .map(|r| {
            let mut it = InMemDicomObject::new_empty();
            it.put(DataElement::new(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(r.sop_class_uid.as_str()),
            ));
            it.put(DataElement::new(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(r.sop_instance_uid.as_str()),
            ));
            it
        })
        .collect();
    o.put(DataElement::new(
        tags::REFERENCED_SOP_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(items),
    ));
    o
}

fn text(o: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    o.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        .unwrap_or_default()
}

/// Decodes a report dataset; `None` if it is not one.
fn decode_report(
    bytes: &[u8],
    ts: &str,
    event_type: u16,
    via: &'static str,
    calling_ae_title: String,
) -> Option<ReceivedReport> {
    let o = read_dataset(bytes, ts).ok()?;
    let refs = |tag| -> Vec<&InMemDicomObject> {
        o.get(tag)
            .and_then(|e| e.items())
            .map(|i| i.iter().collect())
            .unwrap_or_default()
    };
    let reference = |it: &InMemDicomObject| Reference {
        sop_class_uid: text(it, tags::REFERENCED_SOP_CLASS_UID),
        sop_instance_uid: text(it, tags::REFERENCED_SOP_INSTANCE_UID),
    };
    Some(ReceivedReport {
        via,
        calling_ae_title,
        event_type,
        transaction_uid: text(&o, tags::TRANSACTION_UID),
        committed: refs(tags::REFERENCED_SOP_SEQUENCE)
            .into_iter()
            .map(reference)
            .collect(),
        failed: refs(tags::FAILED_SOP_SEQUENCE)
            .into_iter()
            .map(|it| {
                let reason = it
                    .get(tags::FAILURE_REASON)
                    .and_then(|e| e.to_int::<u16>().ok())
                    .unwrap_or(0);
                (reference(it), reason)
            })
            .collect(),
    })
}

/// Receives N-EVENT-REPORT-RQs on `a` until one names `transaction_uid` (answering each),
/// or the peer releases.
fn await_report(
    a: &mut Association,
    transaction_uid: &str,
    via: &'static str,
    calling_ae_title: &str,
) -> Result<Option<ReceivedReport>, ScuError> {
    let mut data = Vec::new();
    loop {
        let Some(msg) = a.receive_request(MAX_REPORT_LEN, &mut data)? else {
            return Ok(None);
        };
        let cmd = msg.command;
        if cmd.command_field != CommandField::NEventReportRq as u16 {
            continue;
        }
        let ctx = a.any_context(SOP_CLASS)?.clone();
        let report = decode_report(
            &data,
            &ctx.transfer_syntax,
            cmd.event_type_id.unwrap_or(0),
            via,
            calling_ae_title.to_owned(),
        );
        let status = if report.is_some() { 0x0000 } else { 0x0110 };
        a.send(ctx.id, &event_report_rsp(&cmd, status), None)?;
        if let Some(r) = report.filter(|r| r.transaction_uid == transaction_uid) {
            return Ok(Some(r));
        }
    }
}

/// Where the report is awaited when not on the N-ACTION's association: a port, and the TLS
/// server configuration if the reporting SCP connects with DICOM TLS.
#[derive(Debug, Clone)]
pub struct ReportListener {
    /// TCP port to listen on (all addresses).
    pub port: u16,
    /// DICOM TLS on the listener ([`crate::tls::server_config`]); `None`: plain.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Sends the N-ACTION for `refs` under `transaction_uid` (over `tls` if given) and waits for
/// the report: on the same association, or (with `listen`) on a new one accepted there within
/// `wait`.
pub fn commit(
    params: &AssocParams,
    tls: Option<&ScuTls>,
    transaction_uid: &str,
    refs: &[Reference],
    listen: Option<&ReportListener>,
    wait: Duration,
) -> Result<CommitOutcome, CommitScuError> {
    let listener = match listen {
        Some(l) => Some(
            TcpListener::bind(("0.0.0.0", l.port))
                .and_then(|t| t.set_nonblocking(true).map(|()| t))
                .map_err(|source| CommitScuError::Listen {
                    port: l.port,
                    source,
                })?,
        ),
        None => None,
    };
    let listener_tls = listen.and_then(|l| l.tls.as_ref());
    let mut a = Association::open_with_tls(params, tls)?;
    let ctx = a.any_context(SOP_CLASS)?.clone();
    let ds = write_dataset(
        &request_dataset(transaction_uid, refs),
        &ctx.transfer_syntax,
    )
    .map_err(CommitScuError::Encode)?;
    a.send(ctx.id, &action_rq(1), Some((&ds, &[])))?;
    let rsp = a.receive(1)?;
    let action_status = rsp.command.status.unwrap_or(0xFFFF);
    let mut outcome = CommitOutcome {
        action_status,
        action_comment: rsp.error_comment,
        report: None,
    };
    if action_status != 0x0000 {
        let _ = a.release();
        return Ok(outcome);
    }
    let Some(listener) = listener else {
        outcome.report = await_report(&mut a, transaction_uid, "same", &params.calling)?;
        let _ = a.release();
        return Ok(outcome);
    };
    let _ = a.release();
    let deadline = Instant::now() + wait;
    let policy = AcceptorPolicy {
        ae_title: params.calling.clone(),
        require_called_ae_title: false,
        allowed_calling_ae_titles: Vec::new(),
        max_pdu_length: params.max_pdu,
    };
    while Instant::now() < deadline {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(ScuError::from(e).into()),
        };
        stream.set_nonblocking(false).map_err(ScuError::from)?;
        let Ok((mut b, negotiated)) = Association::accept_with_tls(
            stream,
            listener_tls,
            params.timeout,
            &policy,
            ReportOffer,
        ) else {
            continue;
        };
        match await_report(&mut b, transaction_uid, "new", &negotiated.calling_ae_title) {
            Ok(Some(r)) => {
                // Let the SCP release (bounded by the read timeout).
                let mut rest = Vec::new();
                let _ = b.receive_request(MAX_REPORT_LEN, &mut rest);
                outcome.report = Some(r);
                return Ok(outcome);
            }
            Ok(None) | Err(_) => continue,
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dimse::command::decode_command;

    #[test]
    fn the_request_is_what_the_scp_side_decodes() {
        let c = decode_command(&action_rq(3)).unwrap();
        assert!(super::super::check_command(&c).is_ok());
        let refs = vec![Reference {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: "1.2.3.4".into(),
        }];
        let ts = "1.2.840.10008.1.2.1";
        let bytes = write_dataset(&request_dataset("1.2.5", &refs), ts).unwrap();
        let r = super::super::decode_request(&bytes, ts).unwrap();
        assert_eq!(r.transaction_uid, "1.2.5");
        assert_eq!(r.references, refs);
    }

    #[test]
    fn a_report_the_scp_side_encodes_decodes_here() {
        use super::super::report::{report_dataset, Judgement};
        let j = Judgement {
            committed: vec![("1.2.840.10008.5.1.4.1.1.2".into(), "1.2.3.1".into())],
            failed: vec![("1.2.840.10008.5.1.4.1.1.2".into(), "1.2.3.2".into(), 0x0112)],
        };
        let ts = "1.2.840.10008.1.2";
        let bytes = write_dataset(&report_dataset("1.2.9", &j, "GW"), ts).unwrap();
        let r = decode_report(&bytes, ts, 2, "same", "X".into()).unwrap();
        assert_eq!(r.transaction_uid, "1.2.9");
        assert_eq!(r.committed[0].sop_instance_uid, "1.2.3.1");
        assert_eq!(r.failed[0].1, 0x0112);
        assert!(decode_report(&[1, 2, 3], ts, 2, "same", "X".into()).is_none());
    }
}
