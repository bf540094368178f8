//! The acceptor side of an association: reads PDUs, runs them through the PS3.8 state machine
//! and dispatches DIMSE messages to the services. Generic over the I/O backend ([`Io`]), so the
//! same code runs on io_uring and epoll.
//!
//! Memory per association is bounded by our maximum PDU length: a P-DATA-TF is read whole
//! (≤ `max_pdu_length`), its data PDVs are written to the object's temporary file as `Bytes`
//! slices of the read buffer, and the buffer is reused.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, Pdu};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use super::dimse::assembly::{DimseError, Fragment, MessageAssembler};
use super::dimse::command::{encode_response, Command, CommandField};
use super::services::storage::{self, SopClassPolicy};
use super::services::verification;
use super::ul::association::{negotiate, AcceptorPolicy, Decision, Negotiated};
use super::ul::fsm::{transition, Action, Event, State};
use super::ul::pdata::{
    check_length, encode_message, peek_header, split_pdata, FramingError, PduType,
};
use crate::commit::{timestamp_us, Committer};
use crate::metrics::Service;
use crate::queue::routing::RouteInput;
use crate::rt::{Io, NetStream, ObjFile};
use crate::store::index::InstanceRecord;
use crate::store::writer::{read_dataset_prefix, ObjectWriter};
use crate::store::{meta, DataDir, StoreError};

/// Shutdown phases broadcast to every core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// Not accepting; associations may finish.
    Draining,
    /// Grace period over: abort what is left.
    Abort,
}

/// Everything an association on one core needs; shared by the core's associations.
#[derive(Debug)]
pub struct CoreCtx {
    /// Index of this core (names temporary files).
    pub core: usize,
    /// Negotiation policy.
    pub policy: AcceptorPolicy,
    /// Accepted abstract syntaxes.
    pub sop_classes: Arc<SopClassPolicy>,
    /// Maximum concurrent associations (all cores).
    pub max_associations: usize,
    /// Associations open now (all cores).
    pub active: Arc<AtomicUsize>,
    /// ARTIM timeout.
    pub acse_timeout: Duration,
    /// DIMSE idle timeout.
    pub dimse_timeout: Duration,
    /// The data directory.
    pub data: DataDir,
    /// Where finished objects go.
    pub committer: Committer,
    /// Routing rules, evaluated per object.
    pub routing: Arc<arc_swap::ArcSwap<crate::queue::routing::Routing>>,
    /// The disk high-water mark.
    pub disk: crate::store::DiskGuard,
    /// Shutdown phase.
    pub phase: watch::Receiver<Phase>,
    /// Counter for temporary file names.
    pub temp_seq: Cell<u64>,
}

impl CoreCtx {
    fn temp_path(&self) -> PathBuf {
        let n = self.temp_seq.get();
        self.temp_seq.set(n + 1);
        self.data
            .tmp()
            .join(format!("{}-{}-{}.part", std::process::id(), self.core, n))
    }
}

/// Why reading the next PDU stopped.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("connection closed by the peer")]
    Closed,
    #[error("connection error: {0}")]
    Io(std::io::Error),
    #[error("invalid PDU: {0}")]
    Framing(FramingError),
    #[error("daemon shutting down after its grace period")]
    Shutdown,
}

/// The byte stream of one association.
struct Conn<S: NetStream> {
    stream: S,
    buf: BytesMut,
    max_pdata: u32,
    phase: watch::Receiver<Phase>,
}

impl<S: NetStream> Conn<S> {
    /// Reads one whole PDU (header included) within `timeout`.
    async fn next_pdu(&mut self, timeout: Duration) -> Result<(PduType, Bytes), ReadError> {
        let mut phase = self.phase.clone();
        let read = async {
            loop {
                if let Some(h) = peek_header(&self.buf) {
                    let ty = check_length(h, self.max_pdata).map_err(ReadError::Framing)?;
                    let total = h.total_len();
                    if self.buf.len() >= total {
                        return Ok((ty, self.buf.split_to(total).freeze()));
                    }
                    self.buf.reserve(total - self.buf.len());
                } else {
                    self.buf.reserve(64 * 1024);
                }
                let buf = std::mem::take(&mut self.buf);
                let (res, buf) = self.stream.read_buf(buf).await;
                self.buf = buf;
                match res {
                    Ok(0) => return Err(ReadError::Closed),
                    Ok(_) => {}
                    Err(e) => return Err(ReadError::Io(e)),
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(timeout, read) => r.unwrap_or(Err(ReadError::Timeout)),
            _ = phase.wait_for(|p| *p == Phase::Abort) => Err(ReadError::Shutdown),
        }
    }

    async fn send(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    async fn send_pdu(&mut self, pdu: &Pdu) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(256);
        dicom_ul::pdu::write_pdu(&mut out, pdu)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.send(Bytes::from(out)).await
    }

    async fn abort(&mut self, source: AbortRQSource) {
        let _ = self.send_pdu(&Pdu::AbortRQ { source }).await;
    }

    /// After A-RELEASE-RP or A-ASSOCIATE-RJ (Sta13): wait for the peer to close, at most ARTIM.
    async fn await_close(&mut self, artim: Duration) {
        let mut phase = self.phase.clone();
        let drain = async {
            loop {
                let buf = std::mem::take(&mut self.buf);
                let (res, mut buf) = self.stream.read_buf(buf).await;
                buf.clear();
                self.buf = buf;
                if !matches!(res, Ok(n) if n > 0) {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(artim, drain) => {}
            // The grace period is over: do not wait for a peer that keeps its socket open.
            _ = phase.wait_for(|p| *p == Phase::Abort) => {}
        }
    }
}

impl<S: NetStream> Drop for Conn<S> {
    /// The association is over, however it ended: close the connection now, even if an
    /// abandoned read is still queued in io_uring.
    fn drop(&mut self) {
        self.stream.shutdown();
    }
}

fn event_for(ty: PduType) -> Event {
    match ty {
        PduType::AssociateRq => Event::Evt6,
        PduType::AssociateAc => Event::Evt3,
        PduType::AssociateRj => Event::Evt4,
        PduType::PData => Event::Evt10,
        PduType::ReleaseRq => Event::Evt12,
        PduType::ReleaseRp => Event::Evt13,
        PduType::Abort => Event::Evt16,
    }
}

fn event_for_error(e: &ReadError) -> Event {
    match e {
        ReadError::Timeout | ReadError::Shutdown => Event::Evt15, // we abort (local A-ABORT request)
        ReadError::Closed | ReadError::Io(_) => Event::Evt17,
        ReadError::Framing(_) => Event::Evt19,
    }
}

/// An A-ABORT from the service provider (us) for `reason`.
pub(super) fn provider_abort(reason: AbortRQServiceProviderReason) -> AbortRQSource {
    AbortRQSource::ServiceProvider(reason)
}

/// Decrements the association count when the association ends, however it ends.
pub(super) struct ActiveGuard(pub(super) Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one TCP connection from accept to close.
pub async fn serve_association<I: Io>(stream: I::Stream, peer: SocketAddr, ctx: Rc<CoreCtx>) {
    let span = tracing::info_span!("association", %peer, calling = tracing::field::Empty, called = tracing::field::Empty);
    run::<I>(stream, ctx).instrument(span).await;
}

async fn run<I: Io>(stream: I::Stream, ctx: Rc<CoreCtx>) {
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(64 * 1024),
        max_pdata: ctx.policy.max_pdu_length,
        phase: ctx.phase.clone(),
    };
    // Evt5 in Sta1 → AE-5: connection accepted, ARTIM started.
    let mut state = transition(State::Sta1, Event::Evt5)
        .expect("table: Evt5/Sta1")
        .next_state(true, false);

    let first = conn.next_pdu(ctx.acse_timeout).await;
    let (ty, pdu_bytes) = match first {
        Ok(x) => x,
        Err(e) => {
            let evt = if matches!(e, ReadError::Timeout) {
                Event::Evt18
            } else {
                event_for_error(&e)
            };
            if let Some(Action::Aa1) = transition(state, evt) {
                conn.abort(provider_abort(
                    AbortRQServiceProviderReason::InvalidPduParameter,
                ))
                .await;
            }
            debug!(error = %e, "connection ended before association");
            return;
        }
    };
    let evt = event_for(ty);
    match transition(state, evt) {
        Some(Action::Ae6) => {}
        action => {
            warn!(pdu = ?ty, ?action, "unexpected PDU before A-ASSOCIATE-RQ; aborting");
            if action == Some(Action::Aa1) {
                conn.abort(provider_abort(AbortRQServiceProviderReason::UnexpectedPdu))
                    .await;
            }
            return;
        }
    }
    let rq = match dicom_ul::pdu::read_pdu(&pdu_bytes[..], dicom_ul::pdu::MAXIMUM_PDU_SIZE, false) {
        Ok(Some(Pdu::AssociationRQ(rq))) => rq,
        other => {
            // Evt19 in Sta2 → AA-1.
            warn!(error = ?other.err(), "malformed A-ASSOCIATE-RQ; aborting");
            conn.abort(provider_abort(
                AbortRQServiceProviderReason::InvalidPduParameter,
            ))
            .await;
            return;
        }
    };
    tracing::Span::current()
        .record("calling", rq.calling_ae_title.trim())
        .record("called", rq.called_ae_title.trim());
    state = Action::Ae6.next_state(true, false); // Sta3: the local user decides

    let n = ctx.active.fetch_add(1, Ordering::AcqRel) + 1;
    let _guard = ActiveGuard(ctx.active.clone());
    let sop_classes = ctx.sop_classes.clone();
    let decision = negotiate(&rq, &ctx.policy, n > ctx.max_associations, |a| {
        sop_classes.supports(a)
    });
    let negotiated = match decision {
        Decision::Accept(ac, negotiated) => {
            state = transition(state, Event::Evt7)
                .expect("table: Evt7/Sta3")
                .next_state(true, false);
            if conn.send_pdu(&Pdu::AssociationAC(*ac)).await.is_err() {
                return;
            }
            info!(
                contexts = negotiated.contexts.len(),
                peer_max_pdu = negotiated.peer_max_pdu_length,
                "association accepted"
            );
            negotiated
        }
        Decision::Reject(rj, why) => {
            let _ = transition(state, Event::Evt8).expect("table: Evt8/Sta3");
            warn!(reason = %why, "association rejected");
            crate::metrics::global().association_rejected(ctx.core, Service::Store);
            drop(_guard); // a rejected association no longer counts against the limit
            if conn.send_pdu(&Pdu::AssociationRJ(rj)).await.is_ok() {
                conn.await_close(ctx.acse_timeout).await;
            }
            return;
        }
    };
    debug_assert_eq!(state, State::Sta6);
    let assoc_metric = crate::metrics::global().association_accepted(ctx.core, Service::Store);
    let mut dimse = Dimse::<I::File>::new(negotiated);
    loop {
        let next = conn.next_pdu(ctx.dimse_timeout).await;
        let (ty, pdu_bytes) = match next {
            Ok(x) => x,
            Err(e) => {
                match transition(state, event_for_error(&e)) {
                    Some(Action::Aa1) => {
                        warn!(error = %e, "aborting association");
                        conn.abort(AbortRQSource::ServiceUser).await;
                    }
                    Some(Action::Aa8) => {
                        warn!(error = %e, "invalid PDU; aborting association");
                        conn.abort(provider_abort(
                            AbortRQServiceProviderReason::InvalidPduParameter,
                        ))
                        .await;
                    }
                    _ => debug!(error = %e, "connection closed"),
                }
                return;
            }
        };
        match transition(state, event_for(ty)) {
            Some(Action::Dt2) => {
                let body = pdu_bytes.slice(super::ul::pdata::PDU_HEADER_LEN..);
                let pdvs = match split_pdata(body) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(error = %e, "malformed P-DATA-TF; aborting");
                        conn.abort(provider_abort(
                            AbortRQServiceProviderReason::InvalidPduParameter,
                        ))
                        .await;
                        return;
                    }
                };
                for pdv in pdvs {
                    match dimse.on_pdv(pdv, &ctx).await {
                        Ok(Some((pc_id, rsp))) => {
                            let mut out = BytesMut::with_capacity(rsp.len() + 12);
                            encode_message(
                                &mut out,
                                pc_id,
                                true,
                                &rsp,
                                dimse.negotiated.peer_max_pdu_length,
                            );
                            if conn.send(out.freeze()).await.is_err() {
                                return;
                            }
                            if let Some((t0, status)) = dimse.cstore_answer.take() {
                                crate::metrics::global().cstore_answered(
                                    ctx.core,
                                    status,
                                    t0.elapsed(),
                                );
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            warn!(error = %e, "DIMSE protocol error; aborting");
                            conn.abort(provider_abort(
                                AbortRQServiceProviderReason::UnexpectedPduParameter,
                            ))
                            .await;
                            return;
                        }
                    }
                }
            }
            Some(Action::Ar2) => {
                // Release requested: answer at once (Evt14 in Sta8 → AR-4), then wait for close.
                state = Action::Ar2.next_state(true, false);
                if dimse.in_progress() {
                    warn!(
                        "A-RELEASE-RQ in the middle of a message; the partial object is discarded"
                    );
                }
                drop(dimse);
                let _ = transition(state, Event::Evt14).expect("table: Evt14/Sta8");
                if conn.send_pdu(&Pdu::ReleaseRP).await.is_ok() {
                    conn.await_close(ctx.acse_timeout).await;
                }
                assoc_metric.released();
                info!("association released");
                return;
            }
            Some(Action::Aa3) => {
                let reason =
                    dicom_ul::pdu::read_pdu(&pdu_bytes[..], dicom_ul::pdu::MAXIMUM_PDU_SIZE, false)
                        .ok()
                        .flatten();
                info!(pdu = ?reason, "association aborted by peer");
                return;
            }
            action => {
                warn!(pdu = ?ty, ?action, "unexpected PDU in an established association; aborting");
                conn.abort(provider_abort(AbortRQServiceProviderReason::UnexpectedPdu))
                    .await;
                return;
            }
        }
    }
}

/// What happens to the dataset fragments of the current message.
enum DataOp<F: ObjFile> {
    /// Streamed to a temporary file (boxed: the writer holds the hasher and prefix).
    Store(Box<ObjectWriter<F>>),
    /// Dropped; the response is already decided.
    Discard { status: u16, comment: String },
}

/// A message whose dataset is being received.
struct Pending<F: ObjFile> {
    cmd: Command,
    pc_id: u8,
    op: DataOp<F>,
}

/// DIMSE message assembly for one association.
struct Dimse<F: ObjFile> {
    negotiated: Negotiated,
    assembler: MessageAssembler,
    /// The message whose dataset is being received, if its command asked for one.
    pending: Option<Pending<F>>,
    /// Metrics: when the current C-STORE-RQ's command set was decoded.
    cstore_started: Option<Instant>,
    /// Metrics: that start and the status of the C-STORE-RSP about to be sent.
    cstore_answer: Option<(Instant, u16)>,
}

type Reply = Option<(u8, Vec<u8>)>;

impl<F: ObjFile> Dimse<F> {
    fn new(negotiated: Negotiated) -> Self {
        Self {
            negotiated,
            assembler: MessageAssembler::default(),
            pending: None,
            cstore_started: None,
            cstore_answer: None,
        }
    }

    /// Whether a command or dataset is half received.
    fn in_progress(&self) -> bool {
        self.assembler.in_progress()
    }

    /// Handles one PDV; returns the response to send, if the message is complete.
    async fn on_pdv(
        &mut self,
        pdv: super::ul::pdata::Pdv,
        ctx: &CoreCtx,
    ) -> Result<Reply, DimseError> {
        let accepted = self.negotiated.contexts.contains_key(&pdv.pc_id);
        let (data, last) = match self.assembler.push(pdv, accepted)? {
            Fragment::Partial => return Ok(None),
            Fragment::Command(cmd, pc_id) => return self.on_command(cmd, pc_id, ctx).await,
            Fragment::Data { data, last } => (data, last),
        };
        // No pending operation: a command this service ignores (C-CANCEL) came with a
        // dataset; its fragments are dropped.
        let Some(pending) = &mut self.pending else {
            return Ok(None);
        };
        if let DataOp::Store(w) = &mut pending.op {
            w.write(data).await;
        }
        if !last {
            return Ok(None);
        }
        let Pending { cmd, pc_id, op } = self.pending.take().expect("checked above");
        let (status, comment) = match op {
            DataOp::Discard { status, comment } => (status, Some(comment)),
            DataOp::Store(w) => match self.finish_store(&cmd, pc_id, *w, ctx).await {
                Ok(()) => (storage::status::SUCCESS, None),
                Err(e) => {
                    warn!(sop = cmd.affected_sop_instance_uid.as_deref().unwrap_or(""), status = format_args!("{:04X}", e.status()), error = %e, "C-STORE refused");
                    (e.status(), Some(e.to_string()))
                }
            },
        };
        if cmd.command_field == CommandField::CStoreRq as u16 {
            self.cstore_answer = self.cstore_started.take().map(|t0| (t0, status));
        }
        Ok(Some((
            pc_id,
            encode_response(&cmd, cmd.command_field | 0x8000, status, comment.as_deref()),
        )))
    }

    async fn on_command(
        &mut self,
        cmd: Command,
        pc_id: u8,
        ctx: &CoreCtx,
    ) -> Result<Reply, DimseError> {
        let field = cmd.command_field;
        if field == CommandField::CEchoRq as u16 {
            debug!(message_id = cmd.message_id, "C-ECHO");
            if cmd.has_dataset {
                self.pending = Some(Pending {
                    cmd,
                    pc_id,
                    op: DataOp::Discard {
                        status: 0,
                        comment: String::new(),
                    },
                });
                return Ok(None);
            }
            return Ok(Some((pc_id, verification::echo_response(&cmd))));
        }
        if field == CommandField::CStoreRq as u16 {
            if !cmd.has_dataset {
                self.cstore_answer = Some((Instant::now(), storage::status::CANNOT_UNDERSTAND));
                let rsp = encode_response(
                    &cmd,
                    CommandField::CStoreRsp as u16,
                    storage::status::CANNOT_UNDERSTAND,
                    Some("C-STORE-RQ without a dataset"),
                );
                return Ok(Some((pc_id, rsp)));
            }
            self.cstore_started = Some(Instant::now());
            let op = self.start_store(&cmd, pc_id, ctx).await;
            self.pending = Some(Pending { cmd, pc_id, op });
            return Ok(None);
        }
        if field == CommandField::CCancelRq as u16 {
            return Ok(None); // nothing cancellable runs on this service yet
        }
        warn!(
            command_field = format_args!("{field:04X}"),
            "unsupported DIMSE command"
        );
        let rsp_field = field | 0x8000;
        if cmd.has_dataset {
            let comment = format!("command {field:04X} not supported");
            self.pending = Some(Pending {
                cmd,
                pc_id,
                op: DataOp::Discard {
                    status: super::dimse::status::UNRECOGNIZED_OPERATION,
                    comment,
                },
            });
            return Ok(None);
        }
        let rsp = encode_response(
            &cmd,
            rsp_field,
            super::dimse::status::UNRECOGNIZED_OPERATION,
            Some("operation not supported"),
        );
        Ok(Some((pc_id, rsp)))
    }

    /// Checks a C-STORE-RQ and opens its temporary file; a refusal discards the dataset.
    async fn start_store(&self, cmd: &Command, pc_id: u8, ctx: &CoreCtx) -> DataOp<F> {
        let discard = |e: StoreError| DataOp::Discard {
            status: e.status(),
            comment: e.to_string(),
        };
        let context = &self.negotiated.contexts[&pc_id];
        let class = cmd.affected_sop_class_uid.as_deref().unwrap_or("");
        if let Err(e) = ctx.disk.check() {
            warn!(error = %e, "C-STORE refused: disk above the high-water mark");
            return discard(e);
        }
        if class != context.abstract_syntax {
            return DataOp::Discard {
                status: storage::status::SOP_CLASS_NOT_SUPPORTED,
                comment: format!("SOP class {class} not negotiated on context {pc_id}"),
            };
        }
        let instance = match crate::store::uid::validate_uid(
            cmd.affected_sop_instance_uid.as_deref().unwrap_or(""),
        ) {
            Ok(uid) => uid,
            Err(source) => {
                return discard(StoreError::InvalidUid {
                    field: "AffectedSOPInstanceUID",
                    source,
                })
            }
        };
        let header = match meta::build_header(
            class,
            instance,
            &context.transfer_syntax,
            &self.negotiated.calling_ae_title,
        ) {
            Ok(h) => h,
            Err(e) => return discard(StoreError::CannotUnderstand(e.to_string())),
        };
        match ObjectWriter::<F>::create(ctx.temp_path(), header).await {
            Ok(w) => DataOp::Store(Box::new(w)),
            Err(e) => discard(StoreError::from_io("create temporary file", &e)),
        }
    }

    /// The last fragment landed: close, extract, check, commit.
    async fn finish_store(
        &self,
        cmd: &Command,
        pc_id: u8,
        w: ObjectWriter<F>,
        ctx: &CoreCtx,
    ) -> Result<(), StoreError> {
        let obj = w
            .finish()
            .await
            .map_err(|e| StoreError::from_io("write object", &e))?;
        let context = &self.negotiated.contexts[&pc_id];
        let class = cmd.affected_sop_class_uid.as_deref().unwrap_or("");
        let instance = cmd.affected_sop_instance_uid.as_deref().unwrap_or("");
        // One routing table for the whole object, even if the API swaps it meanwhile.
        let routing = ctx.routing.load_full();
        let checked = (|| {
            let attrs = storage::extract_attrs(
                &obj.prefix,
                obj.dataset_size,
                &context.transfer_syntax,
                routing.wanted_tags(),
                |len| read_dataset_prefix(&obj, len),
            )?;
            storage::check_dataset(&attrs, class, instance)?;
            let path = DataDir::object_rel_path(
                &attrs.study_instance_uid,
                &attrs.series_instance_uid,
                instance,
            )?;
            Ok::<_, StoreError>((attrs, path))
        })();
        let (attrs, path) = match checked {
            Ok(x) => x,
            Err(e) => {
                crate::store::writer::remove_quietly(&obj.temp_path);
                return Err(e);
            }
        };
        let record = InstanceRecord {
            sop_instance_uid: instance.to_owned(),
            sop_class_uid: class.to_owned(),
            study_instance_uid: attrs.study_instance_uid.clone(),
            series_instance_uid: attrs.series_instance_uid.clone(),
            instance_number: attrs.instance_number.clone(),
            transfer_syntax_uid: context.transfer_syntax.clone(),
            file_size: obj.file_size,
            dataset_size: obj.dataset_size,
            dataset_blake3: obj.dataset_blake3.clone(),
            received_at_us: timestamp_us(),
            calling_ae_title: self.negotiated.calling_ae_title.clone(),
            called_ae_title: self.negotiated.called_ae_title.clone(),
            path: path.to_string_lossy().into_owned(),
        };
        let lookup = |t| attrs.extra_value(t);
        let destinations = routing.destinations(&RouteInput {
            calling_ae_title: &self.negotiated.calling_ae_title,
            called_ae_title: &self.negotiated.called_ae_title,
            attribute: &lookup,
        });
        let outcome = ctx
            .committer
            .commit(obj.temp_path.clone(), record, attrs, destinations)
            .await?;
        crate::metrics::global().instance_received(ctx.core, obj.dataset_size);
        debug!(sop = instance, ?outcome, bytes = obj.file_size, "C-STORE");
        Ok(())
    }
}
