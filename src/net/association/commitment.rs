//! Storage Commitment Push Model on an established association: the N-ACTION is recorded
//! and answered at once, the N-EVENT-REPORT follows on this association or a new one.
//!
//! The request is written to the pending table (durably) *before* the N-ACTION-RSP: a success
//! status promises a report, and the promise must outlive a crash. Then, depending on
//! `[storage_commitment] report`:
//! - `new-association`: the reporter thread delivers it ([`report::start_reporter`]);
//! - `auto` and `same-association`: the judgement runs on the service's pool (the association
//!   task awaits it without blocking its core), and the report goes out on this association
//!   unless the peer is already leaving. Its N-EVENT-REPORT-RSP comes back through the serve
//!   loop ([`Established::commitment_report_response`]), which forgets the request.
//!
//! A report this association could not deliver (the peer left first, or ended the
//! association before answering) is released to the reporter when the association ends
//! ([`Outstanding`]'s `Drop`): under `auto` it goes out on a new association at once; under
//! `same-association` it waits for the requestor's next N-ACTION, on whose association every
//! pending request of that AE title is reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{Established, Flow};
use crate::config::CommitmentReport;
use crate::net::dimse::command::Command;
use crate::net::dimse::dataset::write_dataset;
use crate::net::dimse::status::{category, Category};
use crate::net::services::query_retrieve_find::SETTLE_LIMIT;
use crate::net::services::storage_commitment::report::{
    self, action_rsp, event_report_rq, judge, report_dataset, Reports,
};
use crate::net::services::storage_commitment::{
    check_command, decode_request, status, CommitmentScp, Refusal,
};
use crate::rt::{NetStream, ObjFile};
use crate::store::commitment::{
    CommitmentStoreError, Commitments, PendingCommitment, MAX_PENDING_PER_AE,
};

/// How long after the N-ACTION-RSP a report on the same association waits for the requestor
/// to release instead (then the report goes on a new association under `auto`).
const REPORT_GRACE: Duration = Duration::from_millis(250);

/// The reports sent on one association and not yet answered: the association's one piece of
/// commitment state (a field of [`Established`]).
#[derive(Debug, Default)]
pub(super) struct Outstanding {
    /// Message ID of our next N-EVENT-REPORT-RQ on this association.
    next_message_id: u16,
    /// (Message ID, Transaction UID, Event Type ID) of each report awaiting its
    /// N-EVENT-REPORT-RSP.
    waiting: Vec<(u16, String, u16)>,
    /// Set on first use: whom to hand unanswered reports back to when the association ends.
    owner: Option<(Arc<Reports>, CommitmentReport)>,
}

impl Drop for Outstanding {
    /// The association ended: reports still unanswered go back to the reporter.
    fn drop(&mut self) {
        let Some((reports, mode)) = &self.owner else {
            return;
        };
        if self.waiting.is_empty() {
            return;
        }
        for (_, uid, _) in self.waiting.drain(..) {
            info!(transaction = %uid, "storage commitment report unanswered when the association ended; left pending");
            reports.release(&uid);
        }
        if *mode == CommitmentReport::Auto {
            reports.wake();
        }
    }
}

impl<F: ObjFile, S: NetStream> Established<F, S> {
    /// An N-ACTION-RQ on Storage Commitment with its dataset (`None`: it came without one).
    pub(super) async fn commitment_action(
        &mut self,
        cmd: Command,
        pc_id: u8,
        data: Option<Vec<u8>>,
    ) -> Flow {
        let scp = self
            .port
            .offer
            .commitment
            .clone()
            .expect("routed to Storage Commitment: offered");
        let (_, ts) = self.context(pc_id);
        let decoded = check_command(&cmd).and_then(|()| match data {
            None => Err(Refusal {
                status: status::INVALID_ARGUMENT_VALUE,
                comment: "N-ACTION-RQ without a dataset".into(),
                attribute: None,
            }),
            Some(d) => decode_request(&d, &ts),
        });
        let request = match decoded {
            Ok(r) => r,
            Err(r) => return self.commitment_refuse(&cmd, pc_id, &r).await,
        };
        let uid = request.transaction_uid.clone();
        let calling = self.negotiated.calling_ae_title.clone();
        if scp.report == CommitmentReport::NewAssociation
            && scp.destinations.by_ae_title(&calling).is_none()
        {
            // The report could never be delivered: refused now rather than kept pending
            // (and holding the requestor's quota) until it expires.
            warn!(transaction = %uid, requestor = %calling,
                "storage commitment request refused: no [[destinations]] entry has the requestor's AE title");
            let r = Refusal {
                status: status::RESOURCE_LIMITATION,
                comment: format!("no [[destinations]] entry for AE title {calling}"),
                attribute: None,
            };
            return self.commitment_refuse(&cmd, pc_id, &r).await;
        }
        let record = PendingCommitment {
            transaction_uid: uid.clone(),
            calling_ae_title: calling,
            called_ae_title: self.negotiated.called_ae_title.clone(),
            references: request
                .references
                .iter()
                .map(|r| (r.sop_class_uid.clone(), r.sop_instance_uid.clone()))
                .collect(),
            received_at_us: report::now_us(),
            attempts: 0,
            next_attempt_us: 0,
        };
        if !scp.reports.claim(&uid) {
            // The same Transaction UID on another association (or in the reporter) right
            // now: the durable put still checks it (other references: 0110; quotas: 0213)
            // and makes sure it is recorded, but whoever holds it reports it.
            if let Some(r) = commitment_record(&scp, &record).await {
                return self.commitment_refuse(&cmd, pc_id, &r).await;
            }
            info!(transaction = %uid, "storage commitment request repeated while another association or the reporter has it; recorded, reported by them");
            let rsp = action_rsp(cmd.message_id, status::SUCCESS, None, cmd.action_type_id);
            let flow = self.reply(pc_id, &rsp, None).await;
            if scp.report != CommitmentReport::SameAssociation {
                scp.reports.wake();
            }
            return flow;
        }
        if let Some(r) = commitment_record(&scp, &record).await {
            scp.reports.release(&uid);
            return self.commitment_refuse(&cmd, pc_id, &r).await;
        }
        info!(transaction = %uid, references = record.references.len(), report = ?scp.report,
            "storage commitment request recorded");
        let rsp = action_rsp(cmd.message_id, status::SUCCESS, None, cmd.action_type_id);
        let flow = self.reply(pc_id, &rsp, None).await;
        let answered = Instant::now();
        if matches!(flow, Flow::Stop) || scp.report == CommitmentReport::NewAssociation {
            scp.reports.release(&uid);
            scp.reports.wake();
            return flow;
        }
        let mut todo = vec![uid.clone()];
        if scp.report == CommitmentReport::SameAssociation {
            // Requests of this requestor whose association closed before their report.
            todo.extend(self.commitment_left_behind(&scp, &uid).await);
        }
        let mut first = Some(record);
        let mut todo = todo.into_iter();
        while let Some(u) = todo.next() {
            // The full record (up to ~1 MB of references) is read only when its turn comes.
            let p = match first.take() {
                Some(p) => Some(p),
                None => commitment_load(&scp, &u).await,
            };
            let Some(p) = p else {
                scp.reports.release(&u);
                continue;
            };
            if let Flow::Stop = self
                .commitment_report_here(&scp, pc_id, &ts, p, answered)
                .await
            {
                // The connection is gone: what was not reported here goes back.
                for rest in todo {
                    scp.reports.release(&rest);
                }
                if scp.report == CommitmentReport::Auto {
                    scp.reports.wake();
                }
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Other pending requests of this association's calling AE title that nobody is
    /// reporting, claimed for this association: their Transaction UIDs, from the schedule
    /// (no references decoded).
    async fn commitment_left_behind(&mut self, scp: &CommitmentScp, current: &str) -> Vec<String> {
        let index = scp.index.clone();
        let listed = scp
            .pool
            .run(move || Commitments::open(index.database())?.schedule())
            .await;
        let Ok(Ok(all)) = listed else {
            return Vec::new();
        };
        all.into_iter()
            .filter(|p| {
                p.transaction_uid != current
                    && p.calling_ae_title == self.negotiated.calling_ae_title
                    && scp.reports.claim(&p.transaction_uid)
            })
            .map(|p| p.transaction_uid)
            .collect()
    }

    /// Judges the claimed request `p` and sends its report on this association (context
    /// `pc_id`, transfer syntax `ts`), or hands it back to the reporter if the peer is
    /// leaving.
    async fn commitment_report_here(
        &mut self,
        scp: &CommitmentScp,
        pc_id: u8,
        ts: &str,
        p: PendingCommitment,
        answered: Instant,
    ) -> Flow {
        let uid = p.transaction_uid.clone();
        let hand_back = |why: &str| {
            debug!(transaction = %uid, why, "storage commitment report left to the reporter");
            scp.reports.release(&uid);
            if scp.report == CommitmentReport::Auto {
                scp.reports.wake();
            }
        };
        if let Some(d) = report::test_delay() {
            tokio::time::sleep(d).await;
        }
        if let Some(settle) = &scp.settle {
            if !settle.settle(SETTLE_LIMIT).await {
                warn!("the ingest checkpoint did not come in time: storage commitment judged on the index as it stands");
            }
        }
        let (index, root, refs) = (scp.index.clone(), scp.data_root.clone(), p.references);
        let judgement = match scp.pool.run(move || judge(&index, &root, &refs)).await {
            Ok(j) => j,
            Err(e) if e.is_busy() => {
                hand_back("the commitment pool is busy");
                return Flow::Continue;
            }
            Err(_) => {
                hand_back("judging the references failed");
                return Flow::Continue;
            }
        };
        // A requestor that releases right after the N-ACTION-RSP (as most modalities do) must
        // not get a report in the middle of its release: its A-RELEASE-RQ is awaited for a
        // moment (one round trip on most networks) before the report goes out here.
        let wait = REPORT_GRACE.saturating_sub(answered.elapsed());
        if self.conn.peer_leaving(wait).await {
            hand_back("the requestor is releasing the association");
            return Flow::Continue;
        }
        let ds = match write_dataset(&report_dataset(&uid, &judgement, &scp.ae_title), ts) {
            Ok(d) => d,
            Err(e) => {
                warn!(transaction = %uid, error = %e, "storage commitment report cannot be encoded");
                hand_back("encoding failed");
                return Flow::Continue;
            }
        };
        let out = &mut self.commitment;
        out.next_message_id = out.next_message_id.wrapping_add(1).max(1);
        let id = out.next_message_id;
        out.owner
            .get_or_insert_with(|| (scp.reports.clone(), scp.report));
        let event = judgement.event_type();
        out.waiting.push((id, uid.clone(), event));
        info!(transaction = %uid, event_type = event, committed = judgement.committed.len(),
            failed = judgement.failed.len(), "storage commitment report sent on the same association");
        self.reply(pc_id, &event_report_rq(id, event), Some(ds.into()))
            .await
    }

    async fn commitment_refuse(&mut self, cmd: &Command, pc_id: u8, r: &Refusal) -> Flow {
        warn!(status = format_args!("{:04X}", r.status), comment = %r.comment,
            attribute = ?r.attribute, "storage commitment request refused");
        crate::metrics::global().commitment_request_refused();
        let rsp = action_rsp(
            cmd.message_id,
            r.status,
            Some(&r.comment),
            cmd.action_type_id,
        );
        self.reply(pc_id, &rsp, None).await
    }

    /// The requestor's N-EVENT-REPORT-RSP to one of our reports: on success the request is
    /// forgotten; on a failure it stays pending (and under `auto` goes out again on a new
    /// association).
    pub(super) async fn commitment_report_response(&mut self, cmd: Command, _pc_id: u8) -> Flow {
        let Some(pos) = self
            .commitment
            .waiting
            .iter()
            .position(|(id, _, _)| *id == cmd.message_id)
        else {
            warn!(
                message_id = cmd.message_id,
                "N-EVENT-REPORT-RSP to no report of ours; ignored"
            );
            return Flow::Continue;
        };
        let (_, uid, event) = self.commitment.waiting.remove(pos);
        let Some(scp) = self.port.offer.commitment.clone() else {
            return Flow::Continue;
        };
        let st = cmd.status.unwrap_or(0xFFFF);
        if matches!(category(st), Category::Success | Category::Warning) {
            let index = scp.index.clone();
            let u = uid.clone();
            let removed = scp
                .pool
                .run(move || {
                    let c = Commitments::open(index.database())?;
                    c.remove(&u)?;
                    c.count()
                })
                .await;
            match removed {
                Ok(Ok(n)) => crate::metrics::global().commitment_pending(n),
                Ok(Err(e)) => {
                    warn!(transaction = %uid, error = %e, "storage commitment: report acknowledged but the request cannot be removed; it will be reported again")
                }
                Err(e) => {
                    warn!(transaction = %uid, error = %e, "storage commitment: report acknowledged but the request cannot be removed now; it will be reported again")
                }
            }
            info!(transaction = %uid, status = format_args!("{st:04X}"), "storage commitment report acknowledged");
            crate::metrics::global().commitment_reported(event == report::EVENT_ALL_COMMITTED);
            scp.reports.release(&uid);
        } else {
            warn!(transaction = %uid, status = format_args!("{st:04X}"),
                comment = cmd.error_comment.as_deref().unwrap_or(""),
                "the requestor refused our storage commitment report; left pending");
            scp.reports.release(&uid);
            if scp.report == CommitmentReport::Auto {
                let index = scp.index.clone();
                let u = uid.clone();
                let _ = scp
                    .pool
                    .run(move || {
                        Commitments::open(index.database())?.reschedule(
                            &u,
                            report::now_us() + report::backoff(0).as_micros() as u64,
                        )
                    })
                    .await;
                scp.reports.wake();
            }
        }
        Flow::Continue
    }
}

/// Records `p` durably on the pool; the refusal to answer if it cannot be (each with a
/// WARN line): 0213 when a bound is reached (the whole table, the requestor's quota, the
/// pool), 0110 for a reused Transaction UID or a storage failure.
async fn commitment_record(scp: &CommitmentScp, p: &PendingCommitment) -> Option<Refusal> {
    let index = scp.index.clone();
    let rec = p.clone();
    let put = scp
        .pool
        .run(move || {
            let c = Commitments::open(index.database())?;
            c.put(&rec)?;
            c.count()
        })
        .await;
    let uid = &p.transaction_uid;
    let (status, comment) = match put {
        Ok(Ok(n)) => {
            crate::metrics::global().commitment_pending(n);
            return None;
        }
        Ok(Err(e @ CommitmentStoreError::Full(_))) => {
            warn!(transaction = %uid, error = %e, "storage commitment request refused: too many pending");
            (
                status::RESOURCE_LIMITATION,
                "too many storage commitment requests pending".to_owned(),
            )
        }
        Ok(Err(e @ CommitmentStoreError::AeQuota { .. })) => {
            warn!(transaction = %uid, requestor = %p.calling_ae_title, error = %e,
                "storage commitment request refused: the requestor's quota is reached");
            (
                status::RESOURCE_LIMITATION,
                format!("quota of {MAX_PENDING_PER_AE} pending requests per AE title reached"),
            )
        }
        Ok(Err(e @ CommitmentStoreError::Duplicate(_))) => {
            warn!(transaction = %uid, error = %e, "storage commitment request refused");
            (
                status::PROCESSING_FAILURE,
                "Transaction UID already used for other references".to_owned(),
            )
        }
        Ok(Err(e)) => {
            warn!(transaction = %uid, error = %e, "storage commitment request cannot be recorded");
            (
                status::PROCESSING_FAILURE,
                "cannot record the request".to_owned(),
            )
        }
        Err(e) if e.is_busy() => {
            warn!(transaction = %uid, error = %e, "storage commitment request refused: the pool is busy");
            (status::RESOURCE_LIMITATION, e.to_string())
        }
        Err(e) => {
            warn!(transaction = %uid, error = %e, "storage commitment request cannot be recorded");
            (
                status::PROCESSING_FAILURE,
                "cannot record the request (the job failed)".to_owned(),
            )
        }
    };
    Some(Refusal {
        status,
        comment,
        attribute: None,
    })
}

/// The full record of the claimed request `uid`, read on the pool; `None` if it is gone
/// (acknowledged meanwhile) or cannot be read (logged; it stays pending).
async fn commitment_load(scp: &CommitmentScp, uid: &str) -> Option<PendingCommitment> {
    let index = scp.index.clone();
    let u = uid.to_owned();
    match scp
        .pool
        .run(move || Commitments::open(index.database())?.get(&u))
        .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            warn!(transaction = %uid, error = %e, "storage commitment: cannot read a pending request");
            None
        }
        Err(e) => {
            warn!(transaction = %uid, error = %e, "storage commitment: cannot read a pending request now");
            None
        }
    }
}
