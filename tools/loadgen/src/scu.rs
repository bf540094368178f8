//! A blocking SCU association over a std `TcpStream` (TCP_NODELAY, read/write timeouts).
//!
//! Association PDUs are built and parsed with dicom-ul ([`write_pdu`], [`read_pdu`]); the data
//! phase uses dicom-gw's framing: [`encode_message`] cuts each message into P-DATA-TF PDUs of
//! the peer's Maximum Length, and a whole batch of PDUs (up to [`WRITE_BATCH`] bytes: the
//! command and, for typical objects, the entire dataset) goes out in one `write`. Responses are
//! read with [`peek_header`], [`check_length`] and [`split_pdata`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dicom_gw::net::dimse::command::{decode_command, Command};
use dicom_gw::net::ul::association::DICOM_APPLICATION_CONTEXT;
use dicom_gw::net::ul::pdata::{
    check_length, encode_message, peek_header, split_pdata, PduType, Pdv, PDU_HEADER_LEN,
    PDV_HEADER_LEN,
};
use dicom_ul::pdu::{
    read_pdu, write_pdu, AssociationRQ, Pdu, PresentationContextProposed,
    PresentationContextResultReason, UserVariableItem,
};

use crate::dataset::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// Largest number of bytes framed into one `write` call.
pub const WRITE_BATCH: usize = 1 << 20;

/// Everything needed to open an association.
#[derive(Debug, Clone)]
pub struct AssocParams {
    /// Peer address.
    pub addr: SocketAddr,
    /// Our AE title (Calling AE).
    pub calling: String,
    /// Peer AE title (Called AE).
    pub called: String,
    /// Maximum Length we announce (P-DATA-TF bodies we accept).
    pub max_pdu: u32,
    /// Connect, read and write timeout.
    pub timeout: Duration,
    /// Proposed presentation contexts: (abstract syntax, transfer syntaxes), IDs 1, 3, 5, …
    pub contexts: Vec<(String, Vec<String>)>,
}

/// A presentation context the peer accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    /// Presentation context ID.
    pub id: u8,
    /// Abstract syntax (as we proposed it).
    pub abstract_syntax: String,
    /// The transfer syntax the peer chose.
    pub transfer_syntax: String,
}

/// Errors of an SCU association. [`ScuError::kind`] names them for the error counters.
#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Peer address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// A-ASSOCIATE-RJ received.
    #[error("association rejected by {addr}: {why}")]
    Rejected {
        /// Peer address.
        addr: SocketAddr,
        /// Result and reason.
        why: String,
    },
    /// A-ABORT received.
    #[error("association aborted by the peer ({0})")]
    Aborted(String),
    /// No data within the timeout.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// Other I/O error.
    #[error("I/O error: {0}")]
    Io(io::Error),
    /// The peer broke the protocol (or sent something we do not handle).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer accepted no presentation context for what we want to send.
    #[error("no accepted presentation context for {abstract_syntax} in {transfer_syntax}")]
    NoContext {
        /// SOP class.
        abstract_syntax: String,
        /// Transfer syntax.
        transfer_syntax: String,
    },
}

impl ScuError {
    /// Short name used as error counter key.
    pub fn kind(&self) -> &'static str {
        match self {
            ScuError::Connect { .. } => "connect",
            ScuError::Rejected { .. } => "rejected",
            ScuError::Aborted(_) => "aborted",
            ScuError::Timeout => "timeout",
            ScuError::Closed => "closed",
            ScuError::Io(_) => "io",
            ScuError::Protocol(_) => "protocol",
            ScuError::NoContext { .. } => "no-context",
        }
    }
}

impl From<io::Error> for ScuError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ScuError::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ScuError::Closed,
            _ => ScuError::Io(e),
        }
    }
}

fn protocol(e: impl std::fmt::Display) -> ScuError {
    ScuError::Protocol(e.to_string())
}

/// A received DIMSE message (response); dataset bytes are counted, not kept.
#[derive(Debug, Clone)]
pub struct Message {
    /// The decoded command set.
    pub command: Command,
    /// Length of the dataset that followed (0 if none).
    pub dataset_len: u64,
}

/// An established association.
#[derive(Debug)]
pub struct Association {
    stream: TcpStream,
    our_max_pdu: u32,
    peer_max_pdu: u32,
    accepted: Vec<AcceptedContext>,
    rbuf: BytesMut,
    tmp: Box<[u8]>,
    wbuf: BytesMut,
    scratch: Vec<u8>,
    pdvs: VecDeque<Pdv>,
}

const RELEASE_RQ: [u8; 10] = [0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0];
const ABORT_RQ: [u8; 10] = [0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0];

impl Association {
    /// Connects and negotiates; fails with [`ScuError::Rejected`] / [`ScuError::Aborted`] if
    /// the peer refuses.
    pub fn open(p: &AssocParams) -> Result<Association, ScuError> {
        let stream =
            TcpStream::connect_timeout(&p.addr, p.timeout).map_err(|source| ScuError::Connect {
                addr: p.addr,
                source,
            })?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(p.timeout))?;
        stream.set_write_timeout(Some(p.timeout))?;
        let mut a = Association {
            stream,
            our_max_pdu: p.max_pdu,
            peer_max_pdu: 0,
            accepted: Vec::new(),
            rbuf: BytesMut::with_capacity(64 * 1024),
            tmp: vec![0u8; 64 * 1024].into_boxed_slice(),
            wbuf: BytesMut::with_capacity(64 * 1024),
            scratch: Vec::new(),
            pdvs: VecDeque::new(),
        };
        let rq = AssociationRQ {
            protocol_version: 1,
            calling_ae_title: p.calling.clone(),
            called_ae_title: p.called.clone(),
            application_context_name: DICOM_APPLICATION_CONTEXT.to_owned(),
            presentation_contexts: p
                .contexts
                .iter()
                .enumerate()
                .map(|(k, (abs, ts))| PresentationContextProposed {
                    id: (2 * k + 1) as u8,
                    abstract_syntax: abs.clone(),
                    transfer_syntaxes: ts.clone(),
                })
                .collect(),
            user_variables: vec![
                UserVariableItem::MaxLength(p.max_pdu),
                UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_owned()),
                UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_owned()),
            ],
        };
        let mut out = Vec::with_capacity(512);
        write_pdu(&mut out, &Pdu::AssociationRQ(rq)).map_err(protocol)?;
        a.stream.write_all(&out)?;
        let (_, pdu) = a.read_raw()?;
        match read_pdu(&pdu[..], p.max_pdu, false).map_err(protocol)? {
            Some(Pdu::AssociationAC(ac)) => {
                a.peer_max_pdu = dicom_gw::net::ul::association::max_length(&ac.user_variables);
                for r in &ac.presentation_contexts {
                    let k = (r.id as usize).saturating_sub(1) / 2;
                    if r.reason == PresentationContextResultReason::Acceptance
                        && r.id % 2 == 1
                        && k < p.contexts.len()
                    {
                        a.accepted.push(AcceptedContext {
                            id: r.id,
                            abstract_syntax: p.contexts[k].0.clone(),
                            transfer_syntax: r.transfer_syntax.trim_end_matches('\0').to_owned(),
                        });
                    }
                }
                Ok(a)
            }
            Some(Pdu::AssociationRJ(rj)) => {
                use dicom_ul::pdu::{AssociationRJResult, AssociationRJSource as S};
                let source = match &rj.source {
                    S::ServiceUser(r) => format!("service user: {r}"),
                    S::ServiceProviderASCE(r) => format!("service provider (ACSE): {r}"),
                    S::ServiceProviderPresentation(r) => {
                        format!("service provider (presentation): {r}")
                    }
                };
                let kind = match rj.result {
                    AssociationRJResult::Permanent => "permanent",
                    AssociationRJResult::Transient => "transient",
                };
                Err(ScuError::Rejected {
                    addr: p.addr,
                    why: format!("{kind}, {source}"),
                })
            }
            Some(Pdu::AbortRQ { source }) => Err(ScuError::Aborted(format!("{source:?}"))),
            Some(other) => Err(protocol(format!(
                "expected A-ASSOCIATE-AC, got {}",
                other.short_description()
            ))),
            None => Err(protocol("truncated A-ASSOCIATE response")),
        }
    }

    /// The peer's Maximum Length (0 = unlimited).
    pub fn peer_max_pdu(&self) -> u32 {
        self.peer_max_pdu
    }

    /// Accepted presentation contexts.
    pub fn accepted(&self) -> &[AcceptedContext] {
        &self.accepted
    }

    /// The accepted context for `abstract_syntax` in exactly `ts`.
    pub fn context(&self, abstract_syntax: &str, ts: &str) -> Result<u8, ScuError> {
        self.accepted
            .iter()
            .find(|c| c.abstract_syntax == abstract_syntax && c.transfer_syntax == ts)
            .map(|c| c.id)
            .ok_or_else(|| ScuError::NoContext {
                abstract_syntax: abstract_syntax.to_owned(),
                transfer_syntax: ts.to_owned(),
            })
    }

    /// The first accepted context for `abstract_syntax`, whatever its transfer syntax.
    pub fn any_context(&self, abstract_syntax: &str) -> Result<&AcceptedContext, ScuError> {
        self.accepted
            .iter()
            .find(|c| c.abstract_syntax == abstract_syntax)
            .ok_or_else(|| ScuError::NoContext {
                abstract_syntax: abstract_syntax.to_owned(),
                transfer_syntax: "any".to_owned(),
            })
    }

    /// Sends a command and, if `dataset` is given, the dataset `head ++ tail` on context
    /// `pc`: framed into the peer's PDU size, written in batches of ≤ [`WRITE_BATCH`] bytes.
    pub fn send(
        &mut self,
        pc: u8,
        command: &[u8],
        dataset: Option<(&[u8], &[u8])>,
    ) -> Result<(), ScuError> {
        let stream = &mut self.stream;
        frame_message(
            &mut self.wbuf,
            &mut self.scratch,
            pc,
            command,
            dataset,
            self.peer_max_pdu,
            |b| stream.write_all(b),
        )?;
        Ok(())
    }

    fn fill(&mut self) -> Result<(), ScuError> {
        let n = self.stream.read(&mut self.tmp)?;
        if n == 0 {
            return Err(ScuError::Closed);
        }
        self.rbuf.extend_from_slice(&self.tmp[..n]);
        Ok(())
    }

    /// Reads one whole PDU (header included).
    fn read_raw(&mut self) -> Result<(PduType, Bytes), ScuError> {
        loop {
            if let Some(h) = peek_header(&self.rbuf) {
                let ty = check_length(h, self.our_max_pdu).map_err(protocol)?;
                let total = h.total_len();
                if self.rbuf.len() >= total {
                    return Ok((ty, self.rbuf.split_to(total).freeze()));
                }
                self.rbuf.reserve(total - self.rbuf.len());
            }
            self.fill()?;
        }
    }

    fn next_pdv(&mut self) -> Result<Pdv, ScuError> {
        loop {
            if let Some(p) = self.pdvs.pop_front() {
                return Ok(p);
            }
            let (ty, pdu) = self.read_raw()?;
            match ty {
                PduType::PData => self
                    .pdvs
                    .extend(split_pdata(pdu.slice(PDU_HEADER_LEN..)).map_err(protocol)?),
                PduType::Abort => {
                    let why = match read_pdu(&pdu[..], self.our_max_pdu, false) {
                        Ok(Some(Pdu::AbortRQ { source })) => format!("{source:?}"),
                        _ => "unparsable A-ABORT".to_owned(),
                    };
                    return Err(ScuError::Aborted(why));
                }
                PduType::ReleaseRq => {
                    return Err(protocol("peer sent A-RELEASE-RQ while a response was due"))
                }
                other => return Err(protocol(format!("unexpected {other:?} PDU"))),
            }
        }
    }

    /// Receives the next message (command, then its dataset if it announces one) and checks
    /// that it responds to `message_id`.
    pub fn receive(&mut self, message_id: u16) -> Result<Message, ScuError> {
        let mut cmd = Vec::new();
        let command = loop {
            let pdv = self.next_pdv()?;
            if !pdv.is_command {
                return Err(protocol("dataset fragment before its command"));
            }
            cmd.extend_from_slice(&pdv.data);
            if pdv.is_last {
                break decode_command(&cmd).map_err(protocol)?;
            }
        };
        if command.message_id != message_id {
            return Err(protocol(format!(
                "response to message {} while waiting for {message_id}",
                command.message_id
            )));
        }
        let mut dataset_len = 0u64;
        if command.has_dataset {
            loop {
                let pdv = self.next_pdv()?;
                if pdv.is_command {
                    return Err(protocol("command fragment inside a dataset"));
                }
                dataset_len += pdv.data.len() as u64;
                if pdv.is_last {
                    break;
                }
            }
        }
        Ok(Message {
            command,
            dataset_len,
        })
    }

    /// A-RELEASE-RQ, then waits (bounded by the read timeout) for A-RELEASE-RP.
    pub fn release(mut self) -> Result<(), ScuError> {
        self.stream.write_all(&RELEASE_RQ)?;
        loop {
            let (ty, _) = self.read_raw()?;
            match ty {
                PduType::ReleaseRp => return Ok(()),
                PduType::Abort => return Err(ScuError::Aborted("during release".into())),
                // A late P-DATA (e.g. a response we gave up on) is skipped.
                PduType::PData => {}
                other => return Err(protocol(format!("unexpected {other:?} during release"))),
            }
        }
    }

    /// Sends A-ABORT and closes (best effort).
    pub fn abort(mut self) {
        let _ = self.stream.write_all(&ABORT_RQ);
    }
}

/// PDV payload bytes per PDU for a peer Maximum Length, as [`encode_message`] computes it.
fn max_payload(peer_max_pdu: u32) -> usize {
    if peer_max_pdu == 0 {
        usize::MAX
    } else {
        (peer_max_pdu as usize)
            .saturating_sub(PDV_HEADER_LEN)
            .max(2)
    }
}

/// Frames a command and optional dataset (`head ++ tail`) into P-DATA-TF PDUs of at most
/// `peer_max_pdu` bytes and hands them to `write` in batches of whole PDUs: the command with
/// the first ≤ [`WRITE_BATCH`] bytes of dataset, then further batches. `wbuf` and `scratch`
/// are reused buffers (the head and the start of the tail are joined in `scratch` so the
/// first batch is one contiguous message piece).
pub fn frame_message(
    wbuf: &mut BytesMut,
    scratch: &mut Vec<u8>,
    pc: u8,
    command: &[u8],
    dataset: Option<(&[u8], &[u8])>,
    peer_max_pdu: u32,
    mut write: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    wbuf.clear();
    encode_message(wbuf, pc, true, command, peer_max_pdu);
    let Some((head, tail)) = dataset else {
        return write(wbuf);
    };
    let payload = max_payload(peer_max_pdu);
    let total = head.len() + tail.len();
    // Every batch but the last is a whole number of full PDVs.
    let batch = if payload == usize::MAX {
        WRITE_BATCH
    } else {
        (WRITE_BATCH / payload).max(1) * payload
    };
    let first = if head.len() <= batch {
        batch
    } else if payload == usize::MAX {
        head.len()
    } else {
        head.len().div_ceil(payload) * payload
    }
    .min(total);
    let first_tail = first - head.len();
    if head.is_empty() {
        frame_batch(wbuf, pc, &tail[..first_tail], peer_max_pdu, first == total);
    } else {
        scratch.clear();
        scratch.extend_from_slice(head);
        scratch.extend_from_slice(&tail[..first_tail]);
        frame_batch(wbuf, pc, scratch, peer_max_pdu, first == total);
    }
    write(wbuf)?;
    let mut pos = first_tail;
    while pos < tail.len() {
        let end = (pos + batch).min(tail.len());
        wbuf.clear();
        frame_batch(wbuf, pc, &tail[pos..end], peer_max_pdu, end == tail.len());
        write(wbuf)?;
        pos = end;
    }
    Ok(())
}

/// Frames `data` (a piece of one dataset) as P-DATA-TF PDUs; when the piece is not the last
/// of its message, clears the "last fragment" bit that [`encode_message`] sets on its final
/// PDV.
fn frame_batch(out: &mut BytesMut, pc: u8, data: &[u8], peer_max_pdu: u32, is_last: bool) {
    encode_message(out, pc, false, data, peer_max_pdu);
    if !is_last && !data.is_empty() {
        let payload = max_payload(peer_max_pdu);
        let last_len = data.len() - (data.len() - 1) / payload * payload;
        let control = out.len() - last_len - 1;
        out[control] &= !0x02;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reassembles a framed byte stream: (command bytes, dataset bytes, last flags seen).
    fn unframe(mut buf: Bytes, max: u32) -> (Vec<u8>, Vec<u8>, usize) {
        let (mut c, mut d, mut lasts) = (Vec::new(), Vec::new(), 0);
        while let Some(h) = peek_header(&buf) {
            assert_eq!(
                check_length(h, if max == 0 { u32::MAX } else { max }).unwrap(),
                PduType::PData
            );
            assert!(max == 0 || h.length <= max);
            let pdu = buf.split_to(h.total_len());
            for p in split_pdata(pdu.slice(PDU_HEADER_LEN..)).unwrap() {
                assert!(lasts < 2, "fragment after the dataset's last one");
                if p.is_last {
                    lasts += 1;
                }
                if p.is_command {
                    c.extend_from_slice(&p.data);
                } else {
                    d.extend_from_slice(&p.data);
                }
            }
        }
        (c, d, lasts)
    }

    #[test]
    fn batched_framing_reassembles() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        for max in [0u32, 1024, 16384, 262_144] {
            for split in [0usize, 10, 5000, 2_000_000] {
                let (head, tail) = data.split_at(split);
                let (mut wbuf, mut scratch, mut out) = (BytesMut::new(), Vec::new(), Vec::new());
                let mut writes = 0;
                frame_message(
                    &mut wbuf,
                    &mut scratch,
                    1,
                    b"cmd!",
                    Some((head, tail)),
                    max,
                    |b| {
                        writes += 1;
                        out.extend_from_slice(b);
                        Ok(())
                    },
                )
                .unwrap();
                assert!(writes >= 2, "3 MB go out in several batches");
                let (c, d, lasts) = unframe(Bytes::from(out), max);
                assert_eq!(c, b"cmd!");
                assert!(d == data, "max {max} split {split}");
                assert_eq!(lasts, 2, "one last flag for the command, one for the data");
            }
        }
        let (mut wbuf, mut scratch, mut n) = (BytesMut::new(), Vec::new(), 0);
        frame_message(
            &mut wbuf,
            &mut scratch,
            3,
            b"cmd!",
            Some((b"ab", &[7u8; 16000])),
            16384,
            |_| {
                n += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(n, 1, "a 16 kB object is one write");
    }
}
