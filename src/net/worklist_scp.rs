//! The worklist service's acceptor: Modality Worklist C-FIND, MPPS N-CREATE/N-SET and C-ECHO
//! on their own port (default 4243).
//!
//! Unlike the store service this runs on plain blocking threads, one per association: the
//! traffic is a few queries an hour per modality and the work is in-memory matching, so the
//! ingest cores' io_uring machinery would buy nothing, and a blocking socket makes C-CANCEL
//! simple — between two pending responses the socket is polled without waiting, and a
//! C-CANCEL-RQ found there ends the C-FIND with status FE00. The upper-layer pieces (PDU
//! framing, negotiation, DIMSE command sets) are the same pure functions the store service
//! uses.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, Pdu};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::dimse::assembly::{DimseError, Fragment, MessageAssembler};
use super::dimse::command::{decode_command, encode_response, Command, CommandField};
use super::dimse::status::UNRECOGNIZED_OPERATION;
use super::scp::{provider_abort, ActiveGuard, Phase};
use super::services::modality_performed_procedure_step as mpps;
use super::services::modality_worklist::{self as mwl, FindOutcome};
use super::services::verification;
use super::ul::association::{negotiate, AcceptorPolicy, Decision, Negotiated};
use super::ul::pdata::{
    check_length, encode_message, peek_header, split_pdata, FramingError, PduType, PDU_HEADER_LEN,
};
use crate::metrics::{FindResult, MppsOp, Service};
use crate::worklist::WorklistStore;

/// Identifiers and MPPS datasets are small; this bounds the memory one association may hold.
const MAX_DATASET_LEN: usize = 16 * 1024 * 1024;
/// How often blocked reads and the accept loop look at the shutdown phase.
const TICK: Duration = Duration::from_millis(200);
/// Metrics slot for these threads (the overflow slot: they are not ingest cores).
const METRICS_SLOT: usize = usize::MAX;
/// Nice value of the worklist threads: a modality's query takes milliseconds either way, but
/// when queries and ingest compete for the CPU, ingest wins (measured in
/// docs/benchmarks.md, "Modality Worklist C-FIND").
pub const WORKLIST_NICE: i32 = 10;
/// Kernel send buffer of a worklist association (Linux doubles it). Left to autotuning, the
/// buffer grows to megabytes and a fast C-FIND can queue its whole result set there before
/// the SCU's C-CANCEL arrives: queued responses cannot be taken back, so the cancel would
/// stop nothing. 64 KiB is still ample for small pending responses on a hospital LAN.
const SEND_BUFFER: usize = 64 * 1024;

/// Everything the worklist service needs; shared by its threads.
#[derive(Debug)]
pub struct WorklistScp {
    /// The worklist and MPPS database.
    pub store: Arc<WorklistStore>,
    /// Negotiation policy (our AE title on this port, allow-lists, maximum PDU).
    pub policy: AcceptorPolicy,
    /// Maximum concurrent associations.
    pub max_associations: usize,
    /// Associations open now.
    pub active: Arc<AtomicUsize>,
    /// ARTIM timeout.
    pub acse_timeout: Duration,
    /// DIMSE idle timeout.
    pub dimse_timeout: Duration,
    /// Most responses per C-FIND.
    pub max_results: Option<usize>,
    /// Shutdown phase.
    pub phase: watch::Receiver<Phase>,
}

/// The abstract syntaxes this port serves.
pub fn supports(abstract_syntax: &str) -> bool {
    matches!(
        abstract_syntax,
        mwl::SOP_CLASS | mpps::SOP_CLASS | verification::VERIFICATION_SOP_CLASS
    )
}

/// Starts the accept thread; it stops accepting when the phase leaves `Running` and returns
/// once every association thread has ended (they abort at `Abort`).
pub fn spawn(listener: TcpListener, scp: Arc<WorklistScp>) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("worklist-accept".into())
        .spawn(move || accept_loop(listener, scp))
}

fn phase(scp: &WorklistScp) -> Phase {
    *scp.phase.borrow()
}

/// Waits up to `timeout` for `fd` to become readable.
fn poll_readable(fd: i32, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0
}

fn accept_loop(listener: TcpListener, scp: Arc<WorklistScp>) {
    // Association threads inherit the accept thread's nice value.
    crate::rt::lower_thread_priority(WORKLIST_NICE);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while phase(&scp) == Phase::Running {
        if !poll_readable(listener.as_raw_fd(), TICK) {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                threads.retain(|t| !t.is_finished());
                let scp = scp.clone();
                let spawned = std::thread::Builder::new()
                    .name("worklist-assoc".into())
                    .spawn(move || serve_association(stream, peer, &scp));
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => warn!(error = %e, "cannot start an association thread"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "worklist accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(listener);
    for t in threads {
        let _ = t.join();
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
    Io(io::Error),
    #[error("invalid PDU: {0}")]
    Framing(FramingError),
    #[error("daemon shutting down after its grace period")]
    Shutdown,
}

/// The byte stream of one association.
struct Conn<'a> {
    stream: TcpStream,
    buf: BytesMut,
    max_pdata: u32,
    /// Complete PDUs read while looking for a C-CANCEL, to be handled next.
    deferred: VecDeque<(PduType, Bytes)>,
    scp: &'a WorklistScp,
}

impl Conn<'_> {
    /// A complete PDU at the front of the buffer, if there is one.
    fn take_buffered(&mut self) -> Result<Option<(PduType, Bytes)>, ReadError> {
        if let Some(h) = peek_header(&self.buf) {
            let ty = check_length(h, self.max_pdata).map_err(ReadError::Framing)?;
            let total = h.total_len();
            if self.buf.len() >= total {
                return Ok(Some((ty, self.buf.split_to(total).freeze())));
            }
        }
        Ok(None)
    }

    /// Appends what one `read` returns; `Ok(false)` when nothing was there (timeout or
    /// would-block).
    fn fill(&mut self) -> Result<bool, ReadError> {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadError::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Reads one whole PDU (header included) within `timeout`.
    fn next_pdu(&mut self, timeout: Duration) -> Result<(PduType, Bytes), ReadError> {
        if let Some(p) = self.deferred.pop_front() {
            return Ok(p);
        }
        let start = Instant::now();
        let _ = self.stream.set_read_timeout(Some(TICK));
        loop {
            if let Some(p) = self.take_buffered()? {
                return Ok(p);
            }
            if phase(self.scp) == Phase::Abort {
                return Err(ReadError::Shutdown);
            }
            if start.elapsed() >= timeout {
                return Err(ReadError::Timeout);
            }
            self.fill()?;
        }
    }

    /// Reads, without waiting, whatever the peer has sent meanwhile; returns the complete PDUs.
    fn poll_pdus(&mut self) -> Result<Vec<(PduType, Bytes)>, ReadError> {
        if poll_readable(self.stream.as_raw_fd(), Duration::ZERO) {
            self.stream.set_nonblocking(true).map_err(ReadError::Io)?;
            let filled = self.fill();
            self.stream.set_nonblocking(false).map_err(ReadError::Io)?;
            filled?;
        }
        let mut out = Vec::new();
        while let Some(p) = self.take_buffered()? {
            out.push(p);
        }
        Ok(out)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn send_pdu(&mut self, pdu: &Pdu) -> io::Result<()> {
        let mut out = Vec::with_capacity(256);
        dicom_ul::pdu::write_pdu(&mut out, pdu).map_err(|e| io::Error::other(e.to_string()))?;
        self.send(&out)
    }

    fn abort(&mut self, source: AbortRQSource) {
        let _ = self.send_pdu(&Pdu::AbortRQ { source });
    }

    /// After A-RELEASE-RP or A-ASSOCIATE-RJ: wait for the peer to close, at most ARTIM.
    fn await_close(&mut self) {
        let start = Instant::now();
        let _ = self.stream.set_read_timeout(Some(TICK));
        while start.elapsed() < self.scp.acse_timeout && phase(self.scp) != Phase::Abort {
            self.buf.clear();
            if self.fill().is_err() {
                return;
            }
        }
    }
}

/// Serves one association to its end.
fn serve_association(stream: TcpStream, peer: SocketAddr, scp: &WorklistScp) {
    let span = tracing::info_span!("worklist_association", %peer, calling = tracing::field::Empty);
    let _enter = span.enter();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(scp.dimse_timeout));
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(16 * 1024),
        max_pdata: scp.policy.max_pdu_length,
        deferred: VecDeque::new(),
        scp,
    };
    let (ty, bytes) = match conn.next_pdu(scp.acse_timeout) {
        Ok(x) => x,
        Err(e) => {
            if matches!(e, ReadError::Timeout | ReadError::Framing(_)) {
                conn.abort(provider_abort(
                    AbortRQServiceProviderReason::InvalidPduParameter,
                ));
            }
            debug!(error = %e, "connection ended before association");
            return;
        }
    };
    if ty != PduType::AssociateRq {
        warn!(pdu = ?ty, "unexpected PDU before A-ASSOCIATE-RQ; aborting");
        conn.abort(provider_abort(AbortRQServiceProviderReason::UnexpectedPdu));
        return;
    }
    let rq = match dicom_ul::pdu::read_pdu(&bytes[..], dicom_ul::pdu::MAXIMUM_PDU_SIZE, false) {
        Ok(Some(Pdu::AssociationRQ(rq))) => rq,
        other => {
            warn!(error = ?other.err(), "malformed A-ASSOCIATE-RQ; aborting");
            conn.abort(provider_abort(
                AbortRQServiceProviderReason::InvalidPduParameter,
            ));
            return;
        }
    };
    span.record("calling", rq.calling_ae_title.trim());
    let n = scp.active.fetch_add(1, Ordering::AcqRel) + 1;
    let guard = ActiveGuard(scp.active.clone());
    let negotiated = match negotiate(&rq, &scp.policy, n > scp.max_associations, supports) {
        Decision::Accept(ac, negotiated) => {
            if conn.send_pdu(&Pdu::AssociationAC(*ac)).is_err() {
                return;
            }
            info!(
                contexts = negotiated.contexts.len(),
                "worklist association accepted"
            );
            negotiated
        }
        Decision::Reject(rj, why) => {
            warn!(reason = %why, "worklist association rejected");
            crate::metrics::global().association_rejected(METRICS_SLOT, Service::Worklist);
            drop(guard);
            if conn.send_pdu(&Pdu::AssociationRJ(rj)).is_ok() {
                conn.await_close();
            }
            return;
        }
    };
    let metric = crate::metrics::global().association_accepted(METRICS_SLOT, Service::Worklist);
    let mut assoc = Association {
        conn,
        negotiated,
        assembler: MessageAssembler::default(),
        pending: None,
    };
    if assoc.run() {
        // Counted before the A-RELEASE-RP goes out, so a peer that has its answer sees it
        // in the metrics.
        metric.released();
        if assoc.conn.send_pdu(&Pdu::ReleaseRP).is_ok() {
            assoc.conn.await_close();
        }
        info!("worklist association released");
    }
}

/// A complete DIMSE message: the command, its context, and its dataset if it has one.
struct Message {
    cmd: Command,
    pc_id: u8,
    data: Option<Vec<u8>>,
}

/// An established association on the worklist port.
struct Association<'a> {
    conn: Conn<'a>,
    negotiated: Negotiated,
    assembler: MessageAssembler,
    /// A command whose dataset is being received.
    pending: Option<(Command, u8, Vec<u8>)>,
}

/// What a C-FIND's sending loop saw arrive.
enum Interrupt {
    /// A C-CANCEL-RQ for the running C-FIND.
    Cancel,
    /// The peer aborted or the connection failed: stop at once.
    Gone,
}

impl Association<'_> {
    /// Runs the association; `true` if the peer asked for an orderly release (the caller
    /// answers it).
    fn run(&mut self) -> bool {
        let timeout = self.conn.scp.dimse_timeout;
        loop {
            let (ty, bytes) = match self.conn.next_pdu(timeout) {
                Ok(x) => x,
                Err(e) => {
                    match e {
                        ReadError::Closed | ReadError::Io(_) => {
                            debug!(error = %e, "connection closed")
                        }
                        ReadError::Framing(_) => {
                            warn!(error = %e, "invalid PDU; aborting association");
                            self.conn.abort(provider_abort(
                                AbortRQServiceProviderReason::InvalidPduParameter,
                            ));
                        }
                        ReadError::Timeout | ReadError::Shutdown => {
                            warn!(error = %e, "aborting association");
                            self.conn.abort(AbortRQSource::ServiceUser);
                        }
                    }
                    return false;
                }
            };
            match ty {
                PduType::PData => {
                    let messages = match self.feed(bytes) {
                        Ok(m) => m,
                        Err(e) => {
                            warn!(error = %e, "DIMSE protocol error; aborting");
                            self.conn.abort(provider_abort(
                                AbortRQServiceProviderReason::UnexpectedPduParameter,
                            ));
                            return false;
                        }
                    };
                    for m in messages {
                        if !self.handle(m) {
                            return false;
                        }
                    }
                }
                PduType::ReleaseRq => {
                    if self.assembler.in_progress() {
                        warn!("A-RELEASE-RQ in the middle of a message; the message is dropped");
                    }
                    return true;
                }
                PduType::Abort => {
                    info!("association aborted by peer");
                    return false;
                }
                other => {
                    warn!(pdu = ?other, "unexpected PDU in an established association; aborting");
                    self.conn
                        .abort(provider_abort(AbortRQServiceProviderReason::UnexpectedPdu));
                    return false;
                }
            }
        }
    }

    /// Feeds one P-DATA-TF PDU; returns the messages it completed.
    fn feed(&mut self, pdu: Bytes) -> Result<Vec<Message>, DimseError> {
        let mut done = Vec::new();
        for pdv in split_pdata(pdu.slice(PDU_HEADER_LEN..))? {
            let accepted = self.negotiated.contexts.contains_key(&pdv.pc_id);
            match self.assembler.push(pdv, accepted)? {
                Fragment::Partial => {}
                Fragment::Command(cmd, pc_id) if cmd.has_dataset => {
                    self.pending = Some((cmd, pc_id, Vec::new()));
                }
                Fragment::Command(cmd, pc_id) => done.push(Message {
                    cmd,
                    pc_id,
                    data: None,
                }),
                Fragment::Data { data, last } => {
                    let Some((_, _, buf)) = &mut self.pending else {
                        return Err(DimseError::UnexpectedData);
                    };
                    if buf.len() + data.len() > MAX_DATASET_LEN {
                        return Err(DimseError::DatasetTooLarge(MAX_DATASET_LEN));
                    }
                    buf.extend_from_slice(&data);
                    if last {
                        let (cmd, pc_id, data) = self.pending.take().expect("matched above");
                        done.push(Message {
                            cmd,
                            pc_id,
                            data: Some(data),
                        });
                    }
                }
            }
        }
        Ok(done)
    }

    /// Sends a command (and a dataset) on `pc_id`.
    fn reply(&mut self, pc_id: u8, command: &[u8], data: Option<&[u8]>) -> bool {
        let max = self.negotiated.peer_max_pdu_length;
        let mut out = BytesMut::with_capacity(command.len() + data.map_or(0, <[u8]>::len) + 24);
        encode_message(&mut out, pc_id, true, command, max);
        if let Some(d) = data {
            encode_message(&mut out, pc_id, false, d, max);
        }
        match self.conn.send(&out) {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "cannot send a response; connection lost");
                false
            }
        }
    }

    /// Handles one complete message; `false` ends the association.
    fn handle(&mut self, m: Message) -> bool {
        let field = m.cmd.command_field;
        let context = &self.negotiated.contexts[&m.pc_id];
        let ts = context.transfer_syntax.clone();
        let abstract_syntax = context.abstract_syntax.clone();
        let store = self.conn.scp.store.clone();
        if field == CommandField::CEchoRq as u16 {
            return self.reply(m.pc_id, &verification::echo_response(&m.cmd), None);
        }
        if field == CommandField::CCancelRq as u16 {
            // Arrived after its C-FIND finished: nothing left to cancel.
            debug!(message_id = m.cmd.message_id, "late C-CANCEL ignored");
            return true;
        }
        if field == CommandField::CFindRq as u16 && abstract_syntax == mwl::SOP_CLASS {
            let Some(data) = m.data else {
                let rsp = mwl::final_response(
                    &m.cmd,
                    mwl::status::IDENTIFIER_DOES_NOT_MATCH,
                    Some("C-FIND-RQ without an identifier"),
                    None,
                );
                return self.reply(m.pc_id, &rsp, None);
            };
            let started = Instant::now();
            let outcome = mwl::find(&store, &m.cmd, &data, &ts, self.conn.scp.max_results);
            return self.send_find(&m.cmd, m.pc_id, &ts, outcome, started);
        }
        if mpps::handles(field) && abstract_syntax == mpps::SOP_CLASS {
            let answer = if field == CommandField::NCreateRq as u16 {
                mpps::n_create(&store, &m.cmd, m.data.as_deref(), &ts)
            } else {
                mpps::n_set(&store, &m.cmd, m.data.as_deref(), &ts)
            };
            let op = if field == CommandField::NCreateRq as u16 {
                MppsOp::Create
            } else {
                MppsOp::Set
            };
            crate::metrics::global().mpps(op, answer.status);
            if answer.status == 0 {
                info!(op = if field == CommandField::NCreateRq as u16 { "N-CREATE" } else { "N-SET" },
                    sop = %answer.instance, "MPPS");
            } else {
                warn!(sop = %answer.instance, status = format_args!("{:04X}", answer.status),
                    comment = answer.comment.as_deref().unwrap_or(""), "MPPS request refused");
            }
            return self.reply(m.pc_id, &mpps::response(&m.cmd, &answer), None);
        }
        warn!(
            command_field = format_args!("{field:04X}"),
            context = %abstract_syntax,
            "unsupported DIMSE command on the worklist port"
        );
        let rsp = encode_response(
            &m.cmd,
            field | 0x8000,
            UNRECOGNIZED_OPERATION,
            Some("operation not supported on this port"),
        );
        self.reply(m.pc_id, &rsp, None)
    }

    /// Sends a C-FIND's responses: one pending response per match, polling for a C-CANCEL
    /// between them, then the final status.
    fn send_find(
        &mut self,
        rq: &Command,
        pc_id: u8,
        ts: &str,
        outcome: FindOutcome,
        started: Instant,
    ) -> bool {
        let metrics = crate::metrics::global();
        let matches = match outcome {
            FindOutcome::Refused {
                status,
                comment,
                offending,
            } => {
                warn!(status = format_args!("{status:04X}"), %comment, "C-FIND refused");
                let rsp = mwl::final_response(rq, status, Some(&comment), offending);
                let sent = self.reply(pc_id, &rsp, None);
                metrics.worklist_find(FindResult::Failure, 0, started.elapsed());
                return sent;
            }
            FindOutcome::Matches(m) => m,
        };
        let total = matches.len();
        let pending = mwl::pending_response(rq);
        for (sent, ds) in matches.iter().enumerate() {
            match self.check_cancel(rq.message_id) {
                None => {}
                Some(Interrupt::Cancel) => {
                    info!(sent, total, "C-FIND cancelled by the SCU");
                    let rsp = mwl::final_response(rq, mwl::status::CANCEL, None, None);
                    let ok = self.reply(pc_id, &rsp, None);
                    metrics.worklist_find(FindResult::Cancel, sent, started.elapsed());
                    return ok;
                }
                Some(Interrupt::Gone) => return false,
            }
            let bytes = match mwl::write_dataset(&ds.to_dicom(), ts) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "cannot encode a worklist response");
                    let rsp =
                        mwl::final_response(rq, mwl::status::UNABLE_TO_PROCESS, Some(&e), None);
                    let ok = self.reply(pc_id, &rsp, None);
                    metrics.worklist_find(FindResult::Failure, sent, started.elapsed());
                    return ok;
                }
            };
            if !self.reply(pc_id, &pending, Some(&bytes)) {
                return false;
            }
        }
        let rsp = mwl::final_response(rq, mwl::status::SUCCESS, None, None);
        let ok = self.reply(pc_id, &rsp, None);
        let elapsed = started.elapsed();
        metrics.worklist_find(FindResult::Success, total, elapsed);
        debug!(
            matches = total,
            elapsed_us = elapsed.as_micros() as u64,
            "MWL C-FIND"
        );
        ok
    }

    /// Looks, without waiting, at what the peer sent meanwhile: a C-CANCEL-RQ for
    /// `message_id` cancels; an A-ABORT or a broken connection ends; anything else is kept for
    /// after the C-FIND.
    fn check_cancel(&mut self, message_id: u16) -> Option<Interrupt> {
        let pdus = match self.conn.poll_pdus() {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "connection lost during C-FIND");
                return Some(Interrupt::Gone);
            }
        };
        let mut cancel = false;
        for (ty, bytes) in pdus {
            match ty {
                PduType::Abort => {
                    info!("association aborted by peer during C-FIND");
                    return Some(Interrupt::Gone);
                }
                PduType::PData if !cancel && is_cancel(&bytes, message_id) => cancel = true,
                _ => self.conn.deferred.push_back((ty, bytes)),
            }
        }
        cancel.then_some(Interrupt::Cancel)
    }
}

/// Whether a P-DATA-TF PDU is exactly one whole C-CANCEL-RQ command for `message_id`.
fn is_cancel(pdu: &Bytes, message_id: u16) -> bool {
    let Ok(pdvs) = split_pdata(pdu.slice(PDU_HEADER_LEN..)) else {
        return false;
    };
    match pdvs.as_slice() {
        [pdv] if pdv.is_command && pdv.is_last => decode_command(&pdv.data).is_ok_and(|c| {
            c.command_field == CommandField::CCancelRq as u16 && c.message_id == message_id
        }),
        _ => false,
    }
}
