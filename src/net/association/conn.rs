//! The byte stream of one association: a reader task frames PDUs and hands them over a
//! one-slot channel; the association task writes.
//!
//! Reading in its own task is what lets the association see a C-CANCEL while it is still
//! sending C-FIND responses, and the one-slot channel is what bounds a peer that keeps sending
//! meanwhile: once one PDU waits in the slot and one in the reader, the reader stops reading
//! and TCP backpressure does the rest. Memory per association is therefore a few maximum PDU
//! lengths, whatever the peer does, and the read buffer grows only as bytes arrive (a header
//! announcing a large PDU reserves nothing by itself).

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, Pdu};
use tokio::sync::{mpsc, watch};

use super::Phase;
use crate::net::dimse::assembly::is_cancel_for;
use crate::net::ul::pdata::{check_length, encode_message, peek_header, FramingError, PduType};
use crate::rt::NetStream;

/// The most the read buffer grows by per read.
const READ_CHUNK: usize = 256 * 1024;

/// Why reading the next PDU stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Nothing arrived within the timeout (ARTIM or the DIMSE idle timeout).
    #[error("timed out waiting for the peer")]
    Timeout,
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(std::io::Error),
    /// The bytes are not a PDU we accept.
    #[error("invalid PDU: {0}")]
    Framing(FramingError),
    /// The daemon's grace period is over.
    #[error("daemon shutting down after its grace period")]
    Shutdown,
    /// Too many connections were waiting for association; this, the oldest, was closed.
    #[error("closed to make room: too many connections waiting for association")]
    Evicted,
}

type Item = Result<(PduType, Bytes), ReadError>;

/// What a C-FIND's sending loop saw arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// A C-CANCEL-RQ for the running C-FIND.
    Cancel,
    /// The peer aborted or the connection failed: stop sending.
    Gone,
}

/// One association's connection.
pub struct Conn<S: NetStream> {
    stream: Rc<S>,
    rx: mpsc::Receiver<Item>,
    /// A PDU (or read error) taken from the channel while looking for a C-CANCEL, to be
    /// handled next.
    held: Option<Item>,
    phase: watch::Receiver<Phase>,
    /// The peer's maximum PDU length (0 = unlimited), once negotiated.
    pub peer_max_pdu: u32,
}

impl<S: NetStream> Conn<S> {
    /// Starts reading `stream` in a task of the current runtime; P-DATA-TF PDUs longer than
    /// `max_pdata` (what we announce) are framing errors.
    pub fn start(stream: S, max_pdata: u32, phase: watch::Receiver<Phase>) -> Self {
        let stream = Rc::new(stream);
        let (tx, rx) = mpsc::channel(1);
        tokio::task::spawn_local(read_pdus(stream.clone(), max_pdata, tx));
        Conn {
            stream,
            rx,
            held: None,
            phase,
            peer_max_pdu: 0,
        }
    }

    /// The next PDU (header included) within `timeout`; `evicted` ends the wait early.
    pub async fn next_or_evicted(
        &mut self,
        timeout: Duration,
        evicted: &tokio::sync::Notify,
    ) -> Item {
        tokio::select! {
            r = self.next(timeout) => r,
            _ = evicted.notified() => Err(ReadError::Evicted),
        }
    }

    /// The next PDU (header included) within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Item {
        if let Some(item) = self.held.take() {
            return item;
        }
        let mut phase = self.phase.clone();
        tokio::select! {
            r = tokio::time::timeout(timeout, self.rx.recv()) => match r {
                Err(_) => Err(ReadError::Timeout),
                Ok(None) => Err(ReadError::Closed),
                Ok(Some(item)) => item,
            },
            _ = phase.wait_for(|p| *p == Phase::Abort) => Err(ReadError::Shutdown),
        }
    }

    /// Looks, without waiting, at what the peer sent meanwhile. A C-CANCEL-RQ for
    /// `message_id` cancels; an A-ABORT, a bad PDU or a lost connection ends the operation
    /// (and is handled next by the association loop); anything else is held for after the
    /// operation — and while it is held nothing more is read, so the peer meets TCP
    /// backpressure, not our memory.
    pub fn poll_cancel(&mut self, message_id: u16) -> Option<Interrupt> {
        if self.held.is_some() {
            return None;
        }
        match self.rx.try_recv() {
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.held = Some(Err(ReadError::Closed));
                Some(Interrupt::Gone)
            }
            Ok(Ok((PduType::PData, pdu))) if is_cancel_for(&pdu, message_id) => {
                Some(Interrupt::Cancel)
            }
            Ok(item) => {
                let gone = !matches!(item, Ok((PduType::PData | PduType::ReleaseRq, _)));
                self.held = Some(item);
                gone.then_some(Interrupt::Gone)
            }
        }
    }

    /// Whether the peer asked to release, aborted or went away, waiting at most `wait` for
    /// its next PDU (which stays held for the association loop). A Storage Commitment report
    /// is not sent to a peer that is leaving.
    pub async fn peer_leaving(&mut self, wait: Duration) -> bool {
        if self.held.is_none() {
            match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(item)) => self.held = Some(item),
                Ok(None) => self.held = Some(Err(ReadError::Closed)),
                Err(_) => {}
            }
        }
        !matches!(self.held, None | Some(Ok((PduType::PData, _))))
    }

    /// Sends raw bytes.
    pub async fn send(&self, bytes: Bytes) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends one control PDU.
    pub async fn send_pdu(&self, pdu: &Pdu) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(256);
        dicom_ul::pdu::write_pdu(&mut out, pdu)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.send(Bytes::from(out)).await
    }

    /// Sends a command set and, if given, its dataset on `pc_id`, in P-DATA-TF PDUs no
    /// longer than the peer's maximum.
    pub async fn send_message(
        &self,
        pc_id: u8,
        command: &[u8],
        data: Option<&[u8]>,
    ) -> std::io::Result<()> {
        let mut out = BytesMut::with_capacity(command.len() + data.map_or(0, <[u8]>::len) + 24);
        encode_message(&mut out, pc_id, true, command, self.peer_max_pdu);
        if let Some(d) = data {
            encode_message(&mut out, pc_id, false, d, self.peer_max_pdu);
        }
        self.send(out.freeze()).await
    }

    /// Sends an A-ABORT (best effort).
    pub async fn abort(&self, source: AbortRQSource) {
        let _ = self.send_pdu(&Pdu::AbortRQ { source }).await;
    }

    /// Sends an A-ABORT from the service provider (us) for `reason` (best effort).
    pub async fn provider_abort(&self, reason: AbortRQServiceProviderReason) {
        self.abort(AbortRQSource::ServiceProvider(reason)).await;
    }

    /// After A-RELEASE-RP or A-ASSOCIATE-RJ (Sta13): waits for the peer to close, at most
    /// `artim`, or until the grace period is over.
    pub async fn await_close(&mut self, artim: Duration) {
        let drain = async {
            loop {
                match self.rx.recv().await {
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        };
        let mut phase = self.phase.clone();
        tokio::select! {
            _ = tokio::time::timeout(artim, drain) => {}
            _ = phase.wait_for(|p| *p == Phase::Abort) => {}
        }
    }
}

impl<S: NetStream> Drop for Conn<S> {
    /// The association is over, however it ended: close the connection now. That also ends
    /// the reader task, whose read then fails.
    fn drop(&mut self) {
        self.stream.shutdown();
    }
}

/// Frames PDUs off `stream` into `tx` until the connection ends or the receiver is gone.
async fn read_pdus<S: NetStream>(stream: Rc<S>, max_pdata: u32, tx: mpsc::Sender<Item>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let item = loop {
            if let Some(h) = peek_header(&buf) {
                match check_length(h, max_pdata) {
                    Err(e) => break Err(ReadError::Framing(e)),
                    Ok(ty) => {
                        let total = h.total_len();
                        if buf.len() >= total {
                            break Ok((ty, buf.split_to(total).freeze()));
                        }
                        buf.reserve((total - buf.len()).min(READ_CHUNK));
                    }
                }
            }
            let (res, b) = stream.read_buf(std::mem::take(&mut buf)).await;
            buf = b;
            match res {
                Ok(0) => break Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) => break Err(ReadError::Io(e)),
            }
        };
        let last = item.is_err();
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}
