//! The association engine: one driver for every DICOM port, on the per-core runtimes.
//!
//! A connection is accepted by a core and lives on it. The driver feeds every PDU through the
//! PS3.8 state machine ([`crate::net::ul::fsm`]), negotiates with the pure
//! [`negotiate`], assembles DIMSE messages with [`MessageAssembler`] and routes each complete
//! command through the port's dispatch table ([`Offer::route`]) to one service module. The
//! services decide what to answer; the driver does the I/O: it streams C-STORE datasets to
//! their temporary files, buffers small identifiers (bounded), runs blocking service work on
//! the service's pool, and streams C-FIND answers through the shared [`find::respond`].
//!
//! Resources an untrusted peer can make us spend are bounded before they are spent: the
//! connection is counted at accept ([`limits::Slots`]), the reader grows its buffer only as
//! bytes arrive and stops reading while a PDU waits to be handled ([`conn`]), command sets and
//! identifiers have size caps, and identifiers are depth-checked before any object is built.
//! No thread is started per connection or per request.

mod commitment;
pub mod conn;
pub mod find;
pub mod limits;
mod retrieve;

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRQ, Pdu,
    PresentationContextResultReason,
};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use self::conn::{Conn, ReadError};
use self::find::FindEnd;
use self::limits::{Slots, Waiting};
use crate::config::ListenerSettings;
use crate::metrics::{FindResult, MppsOp, Service};
use crate::net::dimse::assembly::{DimseError, Fragment, MessageAssembler};
use crate::net::dimse::command::{encode_response, Command, CommandField};
use crate::net::dimse::find::{final_response, status as find_status};
use crate::net::dimse::status::UNRECOGNIZED_OPERATION;
use crate::net::services::modality_performed_procedure_step as mpps;
use crate::net::services::modality_worklist as mwl;
use crate::net::services::query_retrieve_find;
use crate::net::services::storage::{self, Reception, StoreContext};
use crate::net::services::{verification, Offer, Route};
use crate::net::ul::association::{negotiate, reject_peer, AcceptorPolicy, Decision, Negotiated};
use crate::net::ul::fsm::{transition, Action, Event, State};
use crate::net::ul::pdata::{split_pdata, FramingError, PduType, PDU_HEADER_LEN};
use crate::rt::{NetStream, ObjFile};

/// Identifiers and MPPS datasets are small; a bigger one is refused without being kept.
pub const MAX_IDENTIFIER_LEN: usize = 1024 * 1024;

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

/// One DICOM service as every core serves it.
#[derive(Debug)]
pub struct Port {
    /// Which service (metrics label, logs).
    pub service: Service,
    /// Negotiation policy.
    pub policy: AcceptorPolicy,
    /// The services offered and their dispatch table.
    pub offer: Offer,
    /// Listeners and access (source networks).
    pub access: ListenerSettings,
    /// Connection and association counts.
    pub slots: Arc<Slots>,
    /// ARTIM: the wait for the A-ASSOCIATE-RQ, and for the peer to close.
    pub acse_timeout: Duration,
    /// How long an established association may stay silent.
    pub dimse_timeout: Duration,
    /// Kernel send buffer of each connection (`None`: the kernel's autotuning).
    pub send_buffer: Option<usize>,
    /// Shutdown phase.
    pub phase: watch::Receiver<Phase>,
}

/// What the associations of one core share.
#[derive(Debug)]
pub struct Core {
    /// Index of the core (metrics slot, temporary file names).
    pub index: usize,
    temp_seq: Cell<u64>,
    /// The process id, read once (`getpid` is a system call, and names every temporary file).
    pid: u32,
}

impl Core {
    /// Core number `index`.
    pub fn new(index: usize) -> Self {
        Core {
            index,
            temp_seq: Cell::new(0),
            pid: std::process::id(),
        }
    }

    fn temp_path(&self, dir: &std::path::Path) -> PathBuf {
        let n = self.temp_seq.get();
        self.temp_seq.set(n + 1);
        dir.join(format!("{}-{}-{}.part", self.pid, self.index, n))
    }
}

/// How the connection reached us (for the "TLS on a plain port" diagnosis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Plain,
    /// DICOM TLS.
    Tls,
}

/// The metrics class of a C-STORE status (PS3.7 Annex C).
fn status_class(status: u16) -> crate::metrics::StatusClass {
    use crate::metrics::StatusClass;
    use crate::net::dimse::status::{category, Category};
    match category(status) {
        Category::Success => StatusClass::Success,
        Category::Warning => StatusClass::Warning,
        // Pending and Cancel are not C-STORE answers; if one ever is, it did not store.
        Category::Failure | Category::Pending | Category::Cancel => StatusClass::Failure,
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
        // We abort: a local A-ABORT request.
        ReadError::Timeout | ReadError::Shutdown | ReadError::Evicted => Event::Evt15,
        ReadError::Closed | ReadError::Io(_) => Event::Evt17,
        ReadError::Framing(_) => Event::Evt19,
    }
}

/// Serves one accepted connection from accept to close, on the current core. `waiting`
/// counts it until it associates.
pub async fn serve<F: ObjFile, S: NetStream>(
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    port: Arc<Port>,
    core: Rc<Core>,
    waiting: Waiting,
) {
    let span = tracing::info_span!("association", service = %port.service.label(), %peer,
        calling = tracing::field::Empty, called = tracing::field::Empty);
    run::<F, S>(stream, peer, transport, port, core, waiting)
        .instrument(span)
        .await;
}

async fn run<F: ObjFile, S: NetStream>(
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    port: Arc<Port>,
    core: Rc<Core>,
    waiting: Waiting,
) {
    let mut conn = Conn::start(stream, port.policy.max_pdu_length, port.phase.clone());
    // Evt5 in Sta1 → AE-5: connection accepted, ARTIM started.
    let state = transition(State::Sta1, Event::Evt5)
        .expect("table: Evt5/Sta1")
        .next_state(true, false);
    let first = conn
        .next_or_evicted(port.acse_timeout, &waiting.evicted)
        .await;
    let (ty, pdu) = match first {
        Ok(x) => x,
        Err(e) => {
            if transport == Transport::Plain
                && matches!(e, ReadError::Framing(FramingError::UnknownPduType(0x16)))
            {
                warn!("TLS ClientHello on a plain DICOM port: the peer speaks TLS; point it at the TLS port or turn TLS off on the peer");
            } else if matches!(e, ReadError::Evicted) {
                crate::metrics::global().connection_evicted(port.service);
                warn!("connection closed before association: too many connections waiting for association");
            }
            let evt = if matches!(e, ReadError::Timeout) {
                Event::Evt18
            } else {
                event_for_error(&e)
            };
            if transition(state, evt) == Some(Action::Aa1) {
                conn.provider_abort(AbortRQServiceProviderReason::InvalidPduParameter)
                    .await;
            }
            debug!(error = %e, "connection ended before association");
            return;
        }
    };
    match transition(state, event_for(ty)) {
        Some(Action::Ae6) => {}
        action => {
            warn!(pdu = ?ty, ?action, "unexpected PDU before A-ASSOCIATE-RQ; aborting");
            if action == Some(Action::Aa1) {
                conn.provider_abort(AbortRQServiceProviderReason::UnexpectedPdu)
                    .await;
            }
            return;
        }
    }
    let rq = match dicom_ul::pdu::read_pdu(&pdu[..], dicom_ul::pdu::MAXIMUM_PDU_SIZE, false) {
        Ok(Some(Pdu::AssociationRQ(rq))) => rq,
        other => {
            // Evt19 in Sta2 → AA-1.
            warn!(error = ?other.err(), "malformed A-ASSOCIATE-RQ; aborting");
            conn.provider_abort(AbortRQServiceProviderReason::InvalidPduParameter)
                .await;
            return;
        }
    };
    tracing::Span::current()
        .record(
            "calling",
            tracing::field::display(rq.calling_ae_title.trim()),
        )
        .record("called", tracing::field::display(rq.called_ae_title.trim()));
    // Sta3: the local user decides.
    let state = Action::Ae6.next_state(true, false);
    let (active, over_limit) = port.slots.associate();
    let decision = if port.access.admits(peer.ip()) {
        negotiate(&rq, &port.policy, over_limit, &port.offer)
    } else {
        reject_peer()
    };
    let negotiated = match decision {
        Decision::Accept(ac, negotiated) => {
            let state = transition(state, Event::Evt7)
                .expect("table: Evt7/Sta3")
                .next_state(true, false);
            debug_assert_eq!(state, State::Sta6);
            if conn
                .send_pdu(&Pdu::AssociationAC(*ac.clone()))
                .await
                .is_err()
            {
                return;
            }
            log_refused_contexts(&rq, &ac.presentation_contexts);
            info!(
                contexts = negotiated.contexts.len(),
                peer_max_pdu = negotiated.peer_max_pdu_length,
                "association accepted"
            );
            *negotiated
        }
        Decision::Reject(rj, why) => {
            let _ = transition(state, Event::Evt8).expect("table: Evt8/Sta3");
            warn!(reason = %why, "association rejected");
            crate::metrics::global().association_rejected(core.index, port.service, why.label());
            drop(active); // a rejected association does not count against the limit
            if conn.send_pdu(&Pdu::AssociationRJ(rj)).await.is_ok() {
                conn.await_close(port.acse_timeout).await;
            }
            return;
        }
    };
    drop(waiting); // associated: no longer a waiting connection
    conn.peer_max_pdu = negotiated.peer_max_pdu_length;
    let metric = crate::metrics::global().association_accepted(core.index, port.service);
    let mut a = Established::<F, S> {
        conn,
        port,
        core,
        negotiated,
        assembler: MessageAssembler::default(),
        inbound: None,
        released: false,
        commitment: commitment::Outstanding::default(),
    };
    a.serve().await;
    if a.released {
        metric.released();
    }
    drop(active);
}

/// Logs every presentation context we refused, with its SOP class and the reason, so an
/// integration engineer sees at once why a modality's object "cannot be sent".
fn log_refused_contexts(rq: &AssociationRQ, results: &[dicom_ul::pdu::PresentationContextResult]) {
    use dicom_core::dictionary::UidDictionary;
    for r in results {
        if r.reason == PresentationContextResultReason::Acceptance {
            continue;
        }
        let uid = rq
            .presentation_contexts
            .iter()
            .find(|pc| pc.id == r.id)
            .map(|pc| pc.abstract_syntax.trim_end_matches('\0').trim())
            .unwrap_or("");
        let name = dicom_dictionary_std::sop_class::StandardSopClassDictionary
            .by_uid(uid)
            .map_or("unknown SOP class", |e| e.name);
        let reason = match r.reason {
            PresentationContextResultReason::AbstractSyntaxNotSupported => {
                "abstract syntax not supported on this port"
            }
            PresentationContextResultReason::TransferSyntaxesNotSupported => {
                "none of the proposed transfer syntaxes is supported"
            }
            PresentationContextResultReason::UserRejection => "rejected by the service",
            _ => "no reason given",
        };
        warn!(
            context = r.id,
            sop_class = uid,
            sop_class_name = name,
            reason,
            "presentation context refused"
        );
    }
}

/// What happens to the dataset fragments of the message being received.
enum Inbound<F: ObjFile> {
    /// A C-STORE: streamed to its temporary file, or refused.
    Store {
        cmd: Command,
        pc_id: u8,
        started: Instant,
        reception: Reception<F>,
    },
    /// An identifier or N-dataset, kept in memory up to [`MAX_IDENTIFIER_LEN`].
    Buffer {
        cmd: Command,
        pc_id: u8,
        route: Route,
        data: Vec<u8>,
        too_large: bool,
    },
    /// Dropped; the answer is already decided.
    Discard {
        cmd: Command,
        pc_id: u8,
        status: u16,
        comment: Option<String>,
    },
}

/// Whether the association goes on.
enum Flow {
    Continue,
    Stop,
}

/// An established association.
struct Established<F: ObjFile, S: NetStream> {
    conn: Conn<S>,
    port: Arc<Port>,
    core: Rc<Core>,
    negotiated: Negotiated,
    assembler: MessageAssembler,
    inbound: Option<Inbound<F>>,
    released: bool,
    /// Storage Commitment reports sent on this association and not yet answered.
    commitment: commitment::Outstanding,
}

impl<F: ObjFile, S: NetStream> Established<F, S> {
    async fn serve(&mut self) {
        let state = State::Sta6;
        loop {
            let (ty, pdu) = match self.conn.next(self.port.dimse_timeout).await {
                Ok(x) => x,
                Err(e) => {
                    match transition(state, event_for_error(&e)) {
                        Some(Action::Aa1) => {
                            warn!(error = %e, "aborting association");
                            self.conn.abort(AbortRQSource::ServiceUser).await;
                        }
                        Some(Action::Aa8) => {
                            warn!(error = %e, "invalid PDU; aborting association");
                            self.conn
                                .provider_abort(AbortRQServiceProviderReason::InvalidPduParameter)
                                .await;
                        }
                        _ => debug!(error = %e, "connection closed"),
                    }
                    return;
                }
            };
            match transition(state, event_for(ty)) {
                Some(Action::Dt2) => {
                    let pdvs = match split_pdata(pdu.slice(PDU_HEADER_LEN..)) {
                        Ok(p) => p,
                        Err(e) => {
                            warn!(error = %e, "malformed P-DATA-TF; aborting");
                            self.conn
                                .provider_abort(AbortRQServiceProviderReason::InvalidPduParameter)
                                .await;
                            return;
                        }
                    };
                    for pdv in pdvs {
                        let accepted = self.negotiated.contexts.contains_key(&pdv.pc_id);
                        let flow = match self.assembler.push(pdv, accepted) {
                            Ok(fragment) => self.on_fragment(fragment).await,
                            Err(e) => Err(e),
                        };
                        match flow {
                            Ok(Flow::Continue) => {}
                            Ok(Flow::Stop) => return,
                            Err(e) => {
                                warn!(error = %e, "DIMSE protocol error; aborting");
                                self.conn
                                    .provider_abort(
                                        AbortRQServiceProviderReason::UnexpectedPduParameter,
                                    )
                                    .await;
                                return;
                            }
                        }
                    }
                }
                Some(Action::Ar2) => {
                    // Release requested: answer at once (Evt14 in Sta8 → AR-4), then wait
                    // for the peer to close.
                    let state = Action::Ar2.next_state(true, false);
                    if self.assembler.in_progress() {
                        warn!("A-RELEASE-RQ in the middle of a message; the message is dropped");
                    }
                    self.inbound = None;
                    let _ = transition(state, Event::Evt14).expect("table: Evt14/Sta8");
                    // Counted before the A-RELEASE-RP goes out, so a peer that has its answer
                    // sees it in the metrics.
                    self.released = true;
                    if self.conn.send_pdu(&Pdu::ReleaseRP).await.is_ok() {
                        self.conn.await_close(self.port.acse_timeout).await;
                    }
                    info!("association released");
                    return;
                }
                Some(Action::Aa3) => {
                    let reason =
                        dicom_ul::pdu::read_pdu(&pdu[..], dicom_ul::pdu::MAXIMUM_PDU_SIZE, false)
                            .ok()
                            .flatten();
                    info!(pdu = ?reason, "association aborted by peer");
                    return;
                }
                action => {
                    warn!(pdu = ?ty, ?action, "unexpected PDU in an established association; aborting");
                    self.conn
                        .provider_abort(AbortRQServiceProviderReason::UnexpectedPdu)
                        .await;
                    return;
                }
            }
        }
    }

    async fn on_fragment(&mut self, fragment: Fragment) -> Result<Flow, DimseError> {
        let (data, last) = match fragment {
            Fragment::Partial => return Ok(Flow::Continue),
            Fragment::Command(cmd, pc_id) => return Ok(self.on_command(cmd, pc_id).await),
            Fragment::Data { data, last } => (data, last),
        };
        match &mut self.inbound {
            // A command we ignore (a late C-CANCEL) came with a dataset: dropped.
            None => {}
            Some(Inbound::Store {
                reception: Reception::Streaming(w),
                ..
            }) => w.write(data, last).await,
            Some(Inbound::Store { .. } | Inbound::Discard { .. }) => {}
            Some(Inbound::Buffer {
                data: buf,
                too_large,
                ..
            }) => {
                if *too_large || buf.len() + data.len() > MAX_IDENTIFIER_LEN {
                    // Refused at the end; nothing more is kept.
                    *too_large = true;
                    *buf = Vec::new();
                } else {
                    buf.extend_from_slice(&data);
                }
            }
        }
        if !last {
            return Ok(Flow::Continue);
        }
        match self.inbound.take() {
            None => Ok(Flow::Continue),
            Some(inbound) => Ok(self.complete(inbound).await),
        }
    }

    fn context(&self, pc_id: u8) -> (String, String) {
        let c = &self.negotiated.contexts[&pc_id];
        (c.abstract_syntax.clone(), c.transfer_syntax.clone())
    }

    async fn on_command(&mut self, cmd: Command, pc_id: u8) -> Flow {
        let (abstract_syntax, transfer_syntax) = self.context(pc_id);
        let route = self.port.offer.route(&abstract_syntax, cmd.command_field);
        match route {
            Route::Echo => {
                debug!(message_id = cmd.message_id, "C-ECHO");
                if cmd.has_dataset {
                    self.inbound = Some(Inbound::Discard {
                        cmd,
                        pc_id,
                        status: verification::status::SUCCESS,
                        comment: None,
                    });
                    return Flow::Continue;
                }
                self.reply(pc_id, &verification::echo_response(&cmd), None)
                    .await
            }
            Route::LateCancel => {
                debug!(
                    message_id = cmd.message_id,
                    "C-CANCEL for no running operation"
                );
                Flow::Continue
            }
            Route::Store => {
                let started = Instant::now();
                if !cmd.has_dataset {
                    let status = storage::status::CANNOT_UNDERSTAND;
                    let rsp = encode_response(
                        &cmd,
                        CommandField::CStoreRsp as u16,
                        status,
                        Some("C-STORE-RQ without a dataset"),
                    );
                    let flow = self.reply(pc_id, &rsp, None).await;
                    crate::metrics::global().cstore_answered(
                        self.core.index,
                        status_class(status),
                        started.elapsed(),
                    );
                    return flow;
                }
                let scp = self
                    .port
                    .offer
                    .storage
                    .as_ref()
                    .expect("routed to storage: offered");
                let temp = self.core.temp_path(&scp.data.tmp());
                let ctx = StoreContext {
                    abstract_syntax: &abstract_syntax,
                    transfer_syntax: &transfer_syntax,
                    calling_ae_title: &self.negotiated.calling_ae_title,
                    called_ae_title: &self.negotiated.called_ae_title,
                };
                let reception = scp.begin::<F>(&cmd, ctx, temp).await;
                self.inbound = Some(Inbound::Store {
                    cmd,
                    pc_id,
                    started,
                    reception,
                });
                Flow::Continue
            }
            Route::CommitReportResponse => {
                if cmd.has_dataset {
                    // Nothing in it is used; dropped as it arrives.
                    self.inbound = None;
                }
                self.commitment_report_response(cmd, pc_id).await
            }
            Route::WorklistFind
            | Route::MppsCreate
            | Route::MppsSet
            | Route::QueryFind
            | Route::QueryMove
            | Route::QueryGet
            | Route::CommitAction => {
                if cmd.has_dataset {
                    self.inbound = Some(Inbound::Buffer {
                        cmd,
                        pc_id,
                        route,
                        data: Vec::new(),
                        too_large: false,
                    });
                    return Flow::Continue;
                }
                self.buffered(route, cmd, pc_id, None).await
            }
            Route::Unsupported => {
                let field = cmd.command_field;
                warn!(
                    command_field = format_args!("{field:04X}"),
                    context = %abstract_syntax,
                    "unsupported DIMSE command"
                );
                let comment = format!("command {field:04X} not supported on this context");
                if cmd.has_dataset {
                    self.inbound = Some(Inbound::Discard {
                        cmd,
                        pc_id,
                        status: UNRECOGNIZED_OPERATION,
                        comment: Some(comment),
                    });
                    return Flow::Continue;
                }
                let rsp =
                    encode_response(&cmd, field | 0x8000, UNRECOGNIZED_OPERATION, Some(&comment));
                self.reply(pc_id, &rsp, None).await
            }
        }
    }

    /// The last fragment of a message landed.
    async fn complete(&mut self, inbound: Inbound<F>) -> Flow {
        match inbound {
            Inbound::Discard {
                cmd,
                pc_id,
                status,
                comment,
            } => {
                let rsp =
                    encode_response(&cmd, cmd.command_field | 0x8000, status, comment.as_deref());
                self.reply(pc_id, &rsp, None).await
            }
            Inbound::Buffer {
                cmd,
                pc_id,
                route,
                data,
                too_large,
            } => {
                if too_large {
                    return self.refuse_too_large(route, &cmd, pc_id).await;
                }
                self.buffered(route, cmd, pc_id, Some(data)).await
            }
            Inbound::Store {
                cmd,
                pc_id,
                started,
                reception,
            } => {
                let (status, comment) = self.finish_store(&cmd, pc_id, reception).await;
                let rsp = encode_response(
                    &cmd,
                    CommandField::CStoreRsp as u16,
                    status,
                    comment.as_deref(),
                );
                let flow = self.reply(pc_id, &rsp, None).await;
                crate::metrics::global().cstore_answered(
                    self.core.index,
                    status_class(status),
                    started.elapsed(),
                );
                flow
            }
        }
    }

    async fn finish_store(
        &mut self,
        cmd: &Command,
        pc_id: u8,
        reception: Reception<F>,
    ) -> (u16, Option<String>) {
        let sop = cmd.affected_sop_instance_uid.as_deref().unwrap_or("");
        let result = match reception {
            Reception::Refused(e) => Err(e),
            Reception::Streaming(w) => {
                let (abstract_syntax, transfer_syntax) = self.context(pc_id);
                let scp = self
                    .port
                    .offer
                    .storage
                    .as_ref()
                    .expect("routed to storage: offered");
                let ctx = StoreContext {
                    abstract_syntax: &abstract_syntax,
                    transfer_syntax: &transfer_syntax,
                    calling_ae_title: &self.negotiated.calling_ae_title,
                    called_ae_title: &self.negotiated.called_ae_title,
                };
                scp.end(cmd, ctx, *w).await
            }
        };
        match result {
            Ok((accepted, size)) => {
                crate::metrics::global().instance_received(self.core.index, size);
                debug!(sop, ?accepted, "C-STORE");
                (storage::status::SUCCESS, None)
            }
            Err(e) => {
                let status = e.status();
                warn!(sop, status = format_args!("{status:04X}"), error = %e, "C-STORE refused");
                (status, Some(e.to_string()))
            }
        }
    }

    /// A request whose identifier (or N-dataset) was buffered, complete: to its service.
    async fn buffered(
        &mut self,
        route: Route,
        cmd: Command,
        pc_id: u8,
        data: Option<Vec<u8>>,
    ) -> Flow {
        match route {
            Route::QueryFind => self.query_find(cmd, pc_id, data).await,
            Route::QueryMove | Route::QueryGet => {
                self.query_retrieve(route, cmd, pc_id, data).await
            }
            Route::CommitAction => self.commitment_action(cmd, pc_id, data).await,
            _ => self.worklist(route, cmd, pc_id, data).await,
        }
    }

    async fn refuse_too_large(&mut self, route: Route, cmd: &Command, pc_id: u8) -> Flow {
        let comment = format!("dataset larger than {MAX_IDENTIFIER_LEN} bytes");
        warn!(%comment, "request refused");
        let rsp = match route {
            Route::WorklistFind => {
                crate::metrics::global().worklist_find(FindResult::Failure, 0, Duration::ZERO);
                final_response(cmd, find_status::UNABLE_TO_PROCESS, Some(&comment), None)
            }
            Route::QueryFind => {
                final_response(cmd, find_status::UNABLE_TO_PROCESS, Some(&comment), None)
            }
            Route::QueryMove | Route::QueryGet => encode_response(
                cmd,
                cmd.command_field | 0x8000,
                find_status::UNABLE_TO_PROCESS,
                Some(&comment),
            ),
            Route::CommitAction => encode_response(
                cmd,
                cmd.command_field | 0x8000,
                crate::net::services::storage_commitment::status::PROCESSING_FAILURE,
                Some(&comment),
            ),
            _ => {
                let answer = mpps::Answer::fail(
                    cmd.affected_sop_instance_uid
                        .as_deref()
                        .or(cmd.requested_sop_instance_uid.as_deref())
                        .unwrap_or(""),
                    mpps::status::PROCESSING_FAILURE,
                    comment,
                );
                mpps::response(cmd, &answer)
            }
        };
        self.reply(pc_id, &rsp, None).await
    }

    /// A Query/Retrieve C-FIND, complete: the search runs on the query pool, the answers
    /// stream through the shared responder.
    async fn query_find(&mut self, cmd: Command, pc_id: u8, data: Option<Vec<u8>>) -> Flow {
        let (abstract_syntax, ts) = self.context(pc_id);
        let scp = self
            .port
            .offer
            .query
            .clone()
            .expect("routed to Query/Retrieve: offered");
        let started = Instant::now();
        let Some(identifier) = data else {
            let rsp = final_response(
                &cmd,
                find_status::IDENTIFIER_DOES_NOT_MATCH,
                Some("C-FIND-RQ without an identifier"),
                None,
            );
            return self.reply(pc_id, &rsp, None).await;
        };
        let relational =
            query_retrieve_find::relational(self.negotiated.extended.get(&abstract_syntax));
        if let Some(settle) = &scp.settle {
            // Every object acknowledged before this C-FIND is indexed before it is answered.
            if !settle.settle(query_retrieve_find::SETTLE_LIMIT).await {
                warn!("the ingest checkpoint did not come in time: C-FIND answers from the index as it stands");
            }
        }
        let rq = cmd.clone();
        let pool = scp.pool.clone();
        let answer = pool
            .run(move || query_retrieve_find::find_encoded(&scp, &rq, &identifier, &ts, relational))
            .await
            .unwrap_or_else(|e| find::pool_refusal(&e));
        let (end, sent) = find::respond(&mut self.conn, &cmd, pc_id, answer).await;
        let status = match end {
            FindEnd::Success => find_status::SUCCESS,
            FindEnd::Cancelled => find_status::CANCEL,
            FindEnd::Refused | FindEnd::Gone => find_status::UNABLE_TO_PROCESS,
        };
        crate::metrics::global().qr_request(crate::metrics::QrOp::Find, status);
        info!(
            matches = sent,
            elapsed_us = started.elapsed().as_micros() as u64,
            ?end,
            relational,
            "Q/R C-FIND"
        );
        if end == FindEnd::Gone {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// A worklist or MPPS request, complete: its work runs on the worklist pool.
    async fn worklist(
        &mut self,
        route: Route,
        cmd: Command,
        pc_id: u8,
        data: Option<Vec<u8>>,
    ) -> Flow {
        let (_, ts) = self.context(pc_id);
        let wl = self
            .port
            .offer
            .worklist
            .clone()
            .expect("routed to the worklist: offered");
        let metrics = crate::metrics::global();
        if route == Route::WorklistFind {
            let started = Instant::now();
            let Some(identifier) = data else {
                let rsp = final_response(
                    &cmd,
                    find_status::IDENTIFIER_DOES_NOT_MATCH,
                    Some("C-FIND-RQ without an identifier"),
                    None,
                );
                metrics.worklist_find(FindResult::Failure, 0, started.elapsed());
                return self.reply(pc_id, &rsp, None).await;
            };
            let (store, rq, limit) = (wl.worklist.clone(), cmd.clone(), wl.max_results);
            let answer = wl
                .pool
                .run(move || mwl::find_encoded(&*store, &rq, &identifier, &ts, limit))
                .await
                .unwrap_or_else(|e| find::pool_refusal(&e));
            let (end, sent) = find::respond(&mut self.conn, &cmd, pc_id, answer).await;
            let result = match end {
                FindEnd::Success => FindResult::Success,
                FindEnd::Cancelled => FindResult::Cancel,
                FindEnd::Refused | FindEnd::Gone => FindResult::Failure,
            };
            let elapsed = started.elapsed();
            metrics.worklist_find(result, sent, elapsed);
            debug!(
                matches = sent,
                elapsed_us = elapsed.as_micros() as u64,
                ?end,
                "MWL C-FIND"
            );
            return if end == FindEnd::Gone {
                Flow::Stop
            } else {
                Flow::Continue
            };
        }
        let create = route == Route::MppsCreate;
        let (store, rq) = (wl.steps.clone(), cmd.clone());
        let answer = wl
            .pool
            .run(move || {
                if create {
                    mpps::n_create(&*store, &rq, data.as_deref(), &ts)
                } else {
                    mpps::n_set(&*store, &rq, data.as_deref(), &ts)
                }
            })
            .await
            .unwrap_or_else(|e| {
                mpps::Answer::fail(
                    cmd.affected_sop_instance_uid
                        .as_deref()
                        .or(cmd.requested_sop_instance_uid.as_deref())
                        .unwrap_or(""),
                    if e.is_busy() {
                        mpps::status::RESOURCE_LIMITATION
                    } else {
                        mpps::status::PROCESSING_FAILURE
                    },
                    e.to_string(),
                )
            });
        let op = if create { MppsOp::Create } else { MppsOp::Set };
        metrics.mpps(op, answer.status);
        let name = if create { "N-CREATE" } else { "N-SET" };
        if answer.status == 0 {
            info!(op = name, sop = %answer.instance, "MPPS");
        } else {
            warn!(op = name, sop = %answer.instance, status = format_args!("{:04X}", answer.status),
                comment = answer.comment.as_deref().unwrap_or(""), "MPPS request refused");
        }
        self.reply(pc_id, &mpps::response(&cmd, &answer), None)
            .await
    }

    /// Sends a command (and dataset); a failed send ends the association.
    async fn reply(&mut self, pc_id: u8, command: &[u8], data: Option<Bytes>) -> Flow {
        match self
            .conn
            .send_message(pc_id, command, data.as_deref())
            .await
        {
            Ok(()) => Flow::Continue,
            Err(e) => {
                debug!(error = %e, "cannot send a response; connection lost");
                Flow::Stop
            }
        }
    }
}
