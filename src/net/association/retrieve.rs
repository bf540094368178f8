//! C-MOVE and C-GET on an established association: the identifier is matched on the
//! retrieve pool, sub-operations run (C-MOVE: a storage SCU association to the destination,
//! on the pool; C-GET: C-STOREs on this association, from this task), pending responses carry
//! the counts, a C-CANCEL stops after the current sub-operation.
//!
//! The C-MOVE job reports each sub-operation over a small channel; this task turns each
//! report into a pending response and looks for a C-CANCEL between them (and every
//! [`CANCEL_POLL`] while a slow sub-operation runs), so the core never blocks on the
//! destination. C-GET sub-operations are sent from here: the stored bytes are read on the pool
//! one [`crate::net::scu::WRITE_BATCH`] at a time, framed on this context, and the requestor's
//! C-STORE-RSP is read from this connection through the association's own message assembler;
//! the only other message accepted meanwhile is a C-CANCEL-RQ for the C-GET (anything else is
//! a protocol error: asynchronous operations are not negotiated).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource};
use tracing::{debug, info, warn};

use super::conn::Interrupt;
use super::{Established, Flow};
use crate::config::Destination;
use crate::metrics::QrOp;
use crate::net::dimse::assembly::Fragment;
use crate::net::dimse::command::{
    encode_retrieve_response, encode_store_rq, Command, CommandField, SubOperations,
};
use crate::net::scu::{frame_batch, WRITE_BATCH};
use crate::net::services::query_retrieve_move::{
    self as qr, open_stored, run_move, status, Originator, Outcome, RetrieveScp, Tally,
};
use crate::net::services::Route;
use crate::net::ul::pdata::{encode_message, split_pdata, PduType, PDU_HEADER_LEN};
use crate::rt::{NetStream, ObjFile};
use crate::store::index::InstanceRecord;

/// How often a C-MOVE looks for a C-CANCEL while no sub-operation ends.
const CANCEL_POLL: Duration = Duration::from_millis(200);

/// Shortest interval between two C-MOVE pending responses (the first goes out at once).
const PENDING_EVERY: Duration = Duration::from_millis(50);

/// How the sub-operations ended.
struct SubOpsEnd {
    tally: Tally,
    cancelled: bool,
    /// The peer aborted or the connection failed: no final response.
    gone: bool,
    /// The first failure's reason (the Error Comment of an A702).
    first_failure: Option<String>,
}

impl SubOpsEnd {
    fn new(total: usize) -> Self {
        SubOpsEnd {
            tally: Tally::new(total),
            cancelled: false,
            gone: false,
            first_failure: None,
        }
    }

    fn record(&mut self, sop: &str, outcome: &Outcome) {
        if let Outcome::Failed(why) = outcome {
            self.first_failure.get_or_insert_with(|| why.clone());
        }
        self.tally.record(sop, outcome);
    }
}

/// One of the [`qr::MAX_CONCURRENT_MOVES`] C-MOVE slots, released on drop.
struct MoveSlot(Arc<std::sync::atomic::AtomicUsize>);

impl MoveSlot {
    fn acquire(running: &Arc<std::sync::atomic::AtomicUsize>) -> Option<MoveSlot> {
        running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < qr::MAX_CONCURRENT_MOVES).then_some(n + 1)
            })
            .ok()
            .map(|_| MoveSlot(running.clone()))
    }
}

impl Drop for MoveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<F: ObjFile, S: NetStream> Established<F, S> {
    /// A C-MOVE-RQ or C-GET-RQ with its identifier (`None`: it came without one).
    pub(super) async fn query_retrieve(
        &mut self,
        route: Route,
        cmd: Command,
        pc_id: u8,
        identifier: Option<Vec<u8>>,
    ) -> Flow {
        let started = Instant::now();
        let (_, ts) = self.context(pc_id);
        let scp = self
            .port
            .offer
            .retrieve
            .clone()
            .expect("routed to retrieve: offered");
        let is_move = route == Route::QueryMove;
        let (op, field, metric) = if is_move {
            ("C-MOVE", CommandField::CMoveRsp as u16, QrOp::Move)
        } else {
            ("C-GET", CommandField::CGetRsp as u16, QrOp::Get)
        };
        let refuse_at = |status: u16, comment: &str, offending: Option<dicom_core::Tag>| {
            warn!(op, status = format_args!("{status:04X}"), %comment, "retrieve refused");
            crate::metrics::global().qr_request(metric, status);
            encode_retrieve_response(
                &cmd,
                field,
                status,
                SubOperations::default(),
                Some(comment),
                false,
                offending.map(|t| (t.group(), t.element())),
            )
        };
        let refuse = |status: u16, comment: &str| refuse_at(status, comment, None);
        let Some(identifier) = identifier else {
            let rsp = refuse(
                status::IDENTIFIER_DOES_NOT_MATCH,
                &format!("{op}-RQ without an identifier"),
            );
            return self.reply(pc_id, &rsp, None).await;
        };
        let dest = if is_move {
            let ae = cmd.move_destination.as_deref().unwrap_or("").trim();
            match scp.destinations.by_ae_title(ae) {
                Some(d) => Some(d),
                None => {
                    let comment = if ae.is_empty() {
                        "C-MOVE-RQ without a Move Destination".to_owned()
                    } else {
                        format!("Move Destination {ae} unknown: not in [[destinations]]")
                    };
                    let rsp = refuse(status::MOVE_DESTINATION_UNKNOWN, &comment);
                    return self.reply(pc_id, &rsp, None).await;
                }
            }
        } else {
            None
        };
        // Held until the sub-operations end (the job is awaited below).
        let _slot = match dest {
            Some(_) => match MoveSlot::acquire(&scp.moves) {
                Some(slot) => Some(slot),
                None => {
                    let rsp = refuse(
                        status::UNABLE_TO_PERFORM_SUB_OPERATIONS,
                        &format!(
                            "{} C-MOVEs are running, the most at once: retry later",
                            qr::MAX_CONCURRENT_MOVES
                        ),
                    );
                    return self.reply(pc_id, &rsp, None).await;
                }
            },
            None => None,
        };
        if let Some(settle) = &scp.settle {
            // What was acknowledged before this request can be retrieved by it.
            if !settle
                .settle(crate::net::services::query_retrieve_find::SETTLE_LIMIT)
                .await
            {
                warn!("the ingest checkpoint did not come in time: {op} selects from the index as it stands");
            }
        }
        let limit = scp.max_instances;
        let (index, class, ts2) = (
            scp.index.clone(),
            cmd.affected_sop_class_uid.clone().unwrap_or_default(),
            ts.clone(),
        );
        let items = match scp
            .pool
            .run(move || qr::select(&index, &class, &identifier, &ts2, limit))
            .await
        {
            Err(e) => {
                // A full pool is out of resources; a selection that panicked cannot be done.
                let st = if e.is_busy() {
                    status::UNABLE_TO_CALCULATE_MATCHES
                } else {
                    status::UNABLE_TO_PROCESS
                };
                let rsp = refuse(st, &e.to_string());
                return self.reply(pc_id, &rsp, None).await;
            }
            Ok(Err(r)) => {
                let rsp = refuse_at(r.status, &r.comment, r.offending);
                return self.reply(pc_id, &rsp, None).await;
            }
            Ok(Ok(items)) => items,
        };
        let total = items.len();
        if total > usize::from(u16::MAX) {
            warn!(op, total, "more than 65,535 sub-operations: the counts are clamped at 65,535 (US), never wrapped");
        }
        let end = match dest {
            Some(dest) => {
                info!(op, destination = %dest.name, ae_title = %dest.ae_title, instances = total, "C-MOVE started");
                self.move_sub_operations(&scp, &cmd, pc_id, field, dest, items)
                    .await
            }
            None => {
                info!(op, instances = total, "C-GET started");
                self.get_sub_operations(&scp, &cmd, pc_id, field, items)
                    .await
            }
        };
        let t = &end.tally;
        if end.gone {
            crate::metrics::global().qr_request(metric, status::UNABLE_TO_PROCESS);
            info!(
                op,
                completed = t.completed,
                failed = t.failed,
                "retrieve ended: the requestor is gone"
            );
            return Flow::Stop;
        }
        let st = end.tally.final_status(end.cancelled);
        let list = if st == status::SUCCESS {
            None
        } else {
            match end.tally.failed_list(&ts) {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "cannot encode the Failed SOP Instance UID List");
                    None
                }
            }
        };
        let comment = (st == status::UNABLE_TO_PERFORM_SUB_OPERATIONS)
            .then_some(end.first_failure.as_deref())
            .flatten();
        info!(
            op,
            status = format_args!("{st:04X}"),
            completed = t.completed,
            failed = t.failed,
            warning = t.warning,
            remaining = t.remaining(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "retrieve ended"
        );
        crate::metrics::global().qr_request(metric, st);
        let rsp = encode_retrieve_response(
            &cmd,
            field,
            st,
            end.tally.final_counts(end.cancelled),
            comment,
            list.is_some(),
            None,
        );
        self.reply(pc_id, &rsp, list.map(Bytes::from)).await
    }

    /// Sends a pending response with the tally's counts; whether the connection still works.
    async fn pending(&mut self, cmd: &Command, pc_id: u8, field: u16, tally: &Tally) -> bool {
        let rsp = encode_retrieve_response(
            cmd,
            field,
            status::PENDING,
            tally.pending_counts(),
            None,
            false,
            None,
        );
        // A requestor that stops reading must not hold this task (and, through the report
        // channel, a pool thread) forever: past the DIMSE timeout it counts as gone.
        matches!(
            tokio::time::timeout(
                self.port.dimse_timeout,
                self.conn.send_message(pc_id, &rsp, None)
            )
            .await,
            Ok(Ok(()))
        )
    }

    /// The C-MOVE sub-operations: a job on the retrieve pool, its reports turned into pending
    /// responses here.
    async fn move_sub_operations(
        &mut self,
        scp: &RetrieveScp,
        cmd: &Command,
        pc_id: u8,
        field: u16,
        dest: Destination,
        items: Vec<InstanceRecord>,
    ) -> SubOpsEnd {
        let mut end = SubOpsEnd::new(items.len());
        let uids: Vec<String> = items.iter().map(|r| r.sop_instance_uid.clone()).collect();
        let cancel = Arc::new(AtomicBool::new(false));
        // Small: the job waits for this task, not the other way round.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Outcome)>(8);
        let originator = Originator {
            ae_title: self.negotiated.calling_ae_title.clone(),
            message_id: cmd.message_id,
        };
        let (data, ae, stop) = (scp.data.clone(), scp.ae_title.clone(), cancel.clone());
        let stop_reports = cancel.clone();
        let job = scp.pool.run(move || {
            run_move(
                &data,
                &ae,
                &dest,
                &items,
                &originator,
                &stop,
                &mut |rec, outcome| {
                    // The receiver is gone only if the association task is (the daemon is
                    // shutting down): nobody to report to, so no more sub-operations.
                    if tx
                        .blocking_send((rec.sop_instance_uid.clone(), outcome))
                        .is_err()
                    {
                        stop_reports.store(true, Ordering::Relaxed);
                    }
                },
            );
        });
        tokio::pin!(job);
        let mut job_result = None;
        let stop_reading = |end: &mut SubOpsEnd, i: Option<Interrupt>| match i {
            Some(Interrupt::Cancel) => {
                info!(
                    "C-MOVE cancelled by the requestor: stopping after the current sub-operation"
                );
                end.cancelled = true;
                cancel.store(true, Ordering::Relaxed);
            }
            Some(Interrupt::Gone) => {
                end.gone = true;
                cancel.store(true, Ordering::Relaxed);
            }
            None => {}
        };
        let mut last_pending: Option<Instant> = None;
        loop {
            let watching = !end.cancelled && !end.gone;
            tokio::select! {
                r = &mut job, if job_result.is_none() => job_result = Some(r),
                m = rx.recv() => {
                    let Some((sop, outcome)) = m else { break };
                    end.record(&sop, &outcome);
                    if watching {
                        let i = self.conn.poll_cancel(cmd.message_id);
                        stop_reading(&mut end, i);
                        // Pending responses are optional (PS3.4 C.4.2.3.1): at most one per
                        // PENDING_EVERY, so a fast transfer of small objects does not spend
                        // as much CPU on progress reports as on the objects.
                        let due = last_pending.is_none_or(|t| t.elapsed() >= PENDING_EVERY);
                        if due && !end.cancelled && !end.gone && end.tally.remaining() > 0 {
                            last_pending = Some(Instant::now());
                            if !self.pending(cmd, pc_id, field, &end.tally).await {
                                stop_reading(&mut end, Some(Interrupt::Gone));
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(CANCEL_POLL), if watching => {
                    let i = self.conn.poll_cancel(cmd.message_id);
                    stop_reading(&mut end, i);
                }
            }
        }
        let result = match job_result {
            Some(r) => r,
            None => job.await,
        };
        if let Err(e) = result {
            // Busy: the job never ran, so no sub-operation started. Panicked: it stopped
            // part-way; those it did not report fail with the reason.
            let why = if e.is_busy() {
                format!("{e}: no sub-operation could start")
            } else {
                format!("the C-MOVE job failed: {e}; the sub-operation did not run")
            };
            warn!("C-MOVE: {why}");
            for u in uids
                .iter()
                .skip(end.tally.completed + end.tally.failed + end.tally.warning)
            {
                end.record(u, &Outcome::Failed(why.clone()));
            }
        }
        end
    }

    /// The C-GET sub-operations, on this association.
    async fn get_sub_operations(
        &mut self,
        scp: &RetrieveScp,
        cmd: &Command,
        pc_id: u8,
        field: u16,
        items: Vec<InstanceRecord>,
    ) -> SubOpsEnd {
        let mut end = SubOpsEnd::new(items.len());
        let mut message_id: u16 = 0;
        for rec in &items {
            match self.conn.poll_cancel(cmd.message_id) {
                Some(Interrupt::Cancel) => {
                    info!("C-GET cancelled by the requestor");
                    end.cancelled = true;
                    break;
                }
                Some(Interrupt::Gone) => {
                    end.gone = true;
                    break;
                }
                None => {}
            }
            message_id = message_id.wrapping_add(1).max(1);
            let Some((outcome, cancel_seen)) =
                self.get_one(scp, rec, message_id, cmd.message_id).await
            else {
                end.gone = true;
                break;
            };
            if let Outcome::Failed(why) = &outcome {
                warn!(sop = %rec.sop_instance_uid, "C-GET sub-operation failed: {why}");
            }
            end.record(&rec.sop_instance_uid, &outcome);
            if cancel_seen {
                info!("C-GET cancelled by the requestor");
                end.cancelled = true;
                break;
            }
            if end.tally.remaining() > 0 && !self.pending(cmd, pc_id, field, &end.tally).await {
                end.gone = true;
                break;
            }
        }
        end
    }

    /// One C-GET sub-operation: `None` when the association is over (aborted by either side);
    /// else the outcome, and whether a C-CANCEL-RQ arrived meanwhile.
    async fn get_one(
        &mut self,
        scp: &RetrieveScp,
        rec: &InstanceRecord,
        message_id: u16,
        get_message_id: u16,
    ) -> Option<(Outcome, bool)> {
        let (class, ts) = (&rec.sop_class_uid, &rec.transfer_syntax_uid);
        let pc = self
            .negotiated
            .contexts
            .iter()
            .filter(|(_, c)| &c.abstract_syntax == class && &c.transfer_syntax == ts)
            .map(|(id, _)| *id)
            .min();
        let Some(pc) = pc else {
            return Some((
                Outcome::Failed(format!(
                    "the requestor accepted no presentation context for SOP class {class} in transfer syntax {ts} (sent as stored, never converted)"
                )),
                false,
            ));
        };
        let role = self.negotiated.roles.get(class).is_some_and(|r| r.scp);
        if !role {
            if scp.get_requires_role_selection {
                return Some((
                    Outcome::Failed(format!(
                        "no SCP role agreed for SOP class {class} (SCP/SCU Role Selection; [query] get_requires_role_selection = true)"
                    )),
                    false,
                ));
            }
            debug!(sop_class = %class, "C-GET sub-operation without an agreed SCP role ([query] get_requires_role_selection = false)");
        }
        let (data, r) = (scp.data.clone(), rec.clone());
        let mut file = match scp.pool.run(move || open_stored(&data, &r)).await {
            Err(busy) => return Some((Outcome::Failed(busy.to_string()), false)),
            Ok(Err(e)) => return Some((Outcome::Failed(e), false)),
            Ok(Ok(f)) => f,
        };
        let command = encode_store_rq(message_id, class, &rec.sop_instance_uid);
        let mut pos = rec.file_size.saturating_sub(rec.dataset_size);
        let mut left = rec.dataset_size;
        let peer_max = self.conn.peer_max_pdu;
        let mut first = true;
        loop {
            let n = left.min(WRITE_BATCH as u64) as usize;
            let read = scp
                .pool
                .run(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n];
                    let r = file.read_exact_at(&mut buf, pos);
                    (file, buf, r)
                })
                .await;
            let (f, buf) = match read {
                Ok((f, buf, Ok(()))) => (f, buf),
                Ok((_, _, Err(e))) => {
                    let why = format!("reading the stored object: {e}");
                    if first {
                        return Some((Outcome::Failed(why), false));
                    }
                    // Half a message is on the wire: only an abort ends it.
                    warn!(sop = %rec.sop_instance_uid, "C-GET: {why}; aborting the association");
                    self.conn
                        .provider_abort(AbortRQServiceProviderReason::ReasonNotSpecified)
                        .await;
                    return None;
                }
                Err(busy) if first => return Some((Outcome::Failed(busy.to_string()), false)),
                Err(busy) => {
                    warn!(sop = %rec.sop_instance_uid, "C-GET: {busy} in the middle of an object; aborting the association");
                    self.conn
                        .provider_abort(AbortRQServiceProviderReason::ReasonNotSpecified)
                        .await;
                    return None;
                }
            };
            file = f;
            pos += n as u64;
            left -= n as u64;
            let mut out = BytesMut::with_capacity(buf.len() + 4096);
            if first {
                encode_message(&mut out, pc, true, &command, peer_max);
                first = false;
            }
            frame_batch(&mut out, pc, &buf, peer_max, left == 0);
            // A requestor that stops reading counts as gone after the DIMSE timeout.
            let sent =
                tokio::time::timeout(self.port.dimse_timeout, self.conn.send(out.freeze())).await;
            if !matches!(sent, Ok(Ok(()))) {
                return None;
            }
            if left == 0 {
                break;
            }
        }
        self.store_response(message_id, get_message_id).await
    }

    /// Reads the requestor's C-STORE-RSP to sub-operation `message_id`, noting a C-CANCEL-RQ
    /// for the C-GET `get_message_id` on the way.
    async fn store_response(
        &mut self,
        message_id: u16,
        get_message_id: u16,
    ) -> Option<(Outcome, bool)> {
        let mut cancel_seen = false;
        loop {
            let (ty, pdu) = match self.conn.next(self.port.dimse_timeout).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "C-GET: no C-STORE-RSP; aborting the association");
                    self.conn.abort(AbortRQSource::ServiceUser).await;
                    return None;
                }
            };
            match ty {
                PduType::PData => {}
                PduType::Abort => {
                    info!("association aborted by the peer during C-GET");
                    return None;
                }
                other => {
                    warn!(pdu = ?other, "unexpected PDU while a C-STORE-RSP was due; aborting");
                    self.conn
                        .provider_abort(AbortRQServiceProviderReason::UnexpectedPdu)
                        .await;
                    return None;
                }
            }
            let pdvs = match split_pdata(pdu.slice(PDU_HEADER_LEN..)) {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "malformed P-DATA-TF during C-GET; aborting");
                    self.conn
                        .provider_abort(AbortRQServiceProviderReason::InvalidPduParameter)
                        .await;
                    return None;
                }
            };
            let mut outcome = None;
            for pdv in pdvs {
                let accepted = self.negotiated.contexts.contains_key(&pdv.pc_id);
                let c = match self.assembler.push(pdv, accepted) {
                    Ok(Fragment::Partial) => continue,
                    Ok(Fragment::Command(c, _)) if !c.has_dataset => c,
                    Ok(_) => {
                        warn!("a dataset arrived while a C-STORE-RSP was due; aborting");
                        self.conn
                            .provider_abort(AbortRQServiceProviderReason::UnexpectedPduParameter)
                            .await;
                        return None;
                    }
                    Err(e) => {
                        warn!(error = %e, "DIMSE protocol error during C-GET; aborting");
                        self.conn
                            .provider_abort(AbortRQServiceProviderReason::UnexpectedPduParameter)
                            .await;
                        return None;
                    }
                };
                if c.command_field == CommandField::CStoreRsp as u16 && c.message_id == message_id {
                    let st = c.status.unwrap_or(status::UNABLE_TO_PROCESS);
                    outcome = Some(Outcome::of_status(st, c.error_comment.as_deref()));
                } else if c.command_field == CommandField::CCancelRq as u16
                    && c.message_id == get_message_id
                {
                    cancel_seen = true;
                } else {
                    warn!(
                        command_field = format_args!("{:04X}", c.command_field),
                        message_id = c.message_id,
                        "unexpected message while a C-STORE-RSP was due (asynchronous operations are not negotiated); aborting"
                    );
                    self.conn
                        .provider_abort(AbortRQServiceProviderReason::UnexpectedPduParameter)
                        .await;
                    return None;
                }
            }
            if let Some(o) = outcome {
                return Some((o, cancel_seen));
            }
        }
    }
}
