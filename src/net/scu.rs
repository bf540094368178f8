//! A blocking SCU association over a std `TcpStream` (TCP_NODELAY, read/write timeouts), in
//! clear or with DICOM TLS (PS3.15 Annex B, rustls through [`crate::tls`]): the requestor side
//! shared by the forwarder and the load generator (`tools/loadgen`).
//!
//! Why blocking std I/O and not the per-core runtimes of [`crate::rt`]: an SCU drives one
//! association at a time, in lock step (send a request, wait for its response), from a thread
//! of its own; a runtime would add nothing but a second I/O path to keep correct.
//!
//! Association PDUs are small and built and parsed with dicom-ul ([`write_pdu`], [`read_pdu`]).
//! The data phase uses dicom-gw's own framing ([`encode_message`]): each message is cut into
//! P-DATA-TF PDUs of the peer's Maximum Length, and whole batches of PDUs (up to
//! [`WRITE_BATCH`] bytes: the command and, for typical objects, the entire dataset) go out in
//! one `write`. A dataset is framed from memory ([`Association::send`]) or streamed from a file
//! with positional reads ([`Association::send_dataset_from`]); both go through the same framer,
//! and only one batch of a file is ever in memory, whatever the object's size. Responses are
//! read with [`peek_header`], [`check_length`] and [`split_pdata`].

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dicom_ul::pdu::{
    read_pdu, write_pdu, AssociationRQ, Pdu, PresentationContextProposed,
    PresentationContextResultReason, UserVariableItem, MAXIMUM_PDU_SIZE,
};

use crate::config::Destination;
use crate::net::dimse::assembly::{Fragment, MessageAssembler};
use crate::net::dimse::command::{encode_store_rq, Command, CommandField};
use crate::net::ul::association::{max_length, DICOM_APPLICATION_CONTEXT};
use crate::net::ul::pdata::{
    check_length, encode_message, peek_header, split_pdata, PduType, Pdv, PDU_HEADER_LEN,
    PDV_HEADER_LEN,
};
use crate::tls::TlsError;

/// Largest number of bytes framed into one `write` call, and so the most of a dataset held in
/// memory at once: big enough that per-call overhead vanishes next to the copy, small enough
/// that a 1 GiB object costs no more memory than a 1 MiB one.
pub const WRITE_BATCH: usize = 1 << 20;

/// PS3.8 §9.3.2.2: presentation context IDs are the odd numbers 1–255, so at most 128 can be
/// proposed on one association.
pub const MAX_PROPOSED_CONTEXTS: usize = 128;

/// Everything needed to open an association: where, who, and what we intend to send.
#[derive(Debug, Clone)]
pub struct AssocParams {
    /// Peer address.
    pub addr: SocketAddr,
    /// Our AE title (Calling AE), which the peer may check against its access list.
    pub calling: String,
    /// Peer AE title (Called AE), which the peer may require to be its own.
    pub called: String,
    /// Maximum Length we announce: the largest P-DATA-TF body we accept, and so the bound on
    /// our read buffer (0 = unlimited).
    pub max_pdu: u32,
    /// Read and write timeout (and the connect timeout unless `connect_timeout` is set): a
    /// silent peer costs at most this long per step.
    pub timeout: Duration,
    /// TCP connect timeout, when it should differ from `timeout` (a host that is down should
    /// be noticed sooner than a slow archive's response).
    pub connect_timeout: Option<Duration>,
    /// Proposed presentation contexts: (abstract syntax, transfer syntaxes), given IDs 1, 3,
    /// 5, … in this order (at most [`MAX_PROPOSED_CONTEXTS`]).
    pub contexts: Vec<(String, Vec<String>)>,
    /// Implementation Class UID we announce (PS3.7 D.3.3.2): each program using this module
    /// (the gateway's forwarder, the load generator) identifies itself, so a peer's logs say
    /// who sent what.
    pub implementation_class_uid: String,
    /// Implementation Version Name we announce (PS3.7 D.3.3.2), for the same reason.
    pub implementation_version_name: String,
}

/// DICOM TLS towards the peer: the client configuration ([`crate::tls::client_config`]) and
/// the name its certificate must carry (a DNS name or an IP address).
#[derive(Debug, Clone)]
pub struct ScuTls {
    /// rustls client configuration (BCP 195 profile, trusted CAs, our certificate if any).
    pub config: Arc<rustls::ClientConfig>,
    /// Name verified in the peer's certificate.
    pub server_name: String,
}

/// A presentation context the peer accepted: what [`Association::context`] looks up to pick
/// the ID a message goes out on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    /// Presentation context ID.
    pub id: u8,
    /// Abstract syntax (as we proposed it; the A-ASSOCIATE-AC does not repeat it).
    pub abstract_syntax: String,
    /// The transfer syntax the peer chose; datasets on this context must be encoded in it.
    pub transfer_syntax: String,
}

/// Errors of an SCU association. The variants say who failed (the network, the peer, our own
/// source file) so a caller can decide whether a retry makes sense; [`ScuError::kind`] names
/// them for error counters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScuError {
    /// TCP connect failed (peer down, wrong address, firewall).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Peer address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The TLS handshake failed (certificates, versions, a peer that does not speak TLS).
    #[error("TLS to {addr}: {source}")]
    Tls {
        /// Peer address.
        addr: SocketAddr,
        /// Why.
        source: TlsError,
    },
    /// A-ASSOCIATE-RJ received.
    #[error("association rejected by {addr}: {why}")]
    Rejected {
        /// Peer address.
        addr: SocketAddr,
        /// Result "rejected-transient" (PS3.8 Table 9-21): the peer expects the same request
        /// to succeed later (e.g. its association limit), so it is worth retrying; permanent
        /// rejections (unknown AE title, …) will not go away by themselves.
        transient: bool,
        /// Result, source and reason, for logs.
        why: String,
    },
    /// A-ABORT received.
    #[error("association aborted by the peer ({0})")]
    Aborted(String),
    /// No data within the timeout.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// The peer's host name does not resolve (DNS, a typo in the configuration).
    #[error("cannot resolve {host}: {why}")]
    Resolve {
        /// Host as configured.
        host: String,
        /// Why.
        why: String,
    },
    /// The operation did not finish within the caller's overall deadline (each step may
    /// have been within its timeout: a peer that answers slowly but steadily).
    #[error("did not finish within {0:?}")]
    Deadline(Duration),
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// Other I/O error on the connection.
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
    /// More presentation contexts proposed than PS3.8 allows (a caller bug; nothing was sent).
    #[error("{0} presentation contexts proposed, at most {MAX_PROPOSED_CONTEXTS} are possible")]
    TooManyContexts(usize),
    /// Reading the dataset to send from its local file failed (I/O error, or the file ends
    /// before the announced length). The fault is ours, not the peer's: the message could not
    /// be completed, so the association has been aborted.
    #[error("cannot read the dataset to send: {0}")]
    Source(io::Error),
}

impl ScuError {
    /// Short name used as error counter key.
    pub fn kind(&self) -> &'static str {
        match self {
            ScuError::Connect { .. } => "connect",
            ScuError::Tls { .. } => "tls",
            ScuError::Rejected { .. } => "rejected",
            ScuError::Aborted(_) => "aborted",
            ScuError::Timeout => "timeout",
            ScuError::Resolve { .. } => "resolve",
            ScuError::Deadline(_) => "deadline",
            ScuError::Closed => "closed",
            ScuError::Io(_) => "io",
            ScuError::Protocol(_) => "protocol",
            ScuError::NoContext { .. } => "no-context",
            ScuError::TooManyContexts(_) => "too-many-contexts",
            ScuError::Source(_) => "source",
        }
    }
}

impl From<io::Error> for ScuError {
    /// Errors on the connection: timeouts and resets get their own variants because callers
    /// count and retry them differently from other I/O errors.
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

/// A received DIMSE message (a response); dataset bytes are counted, not kept, because no
/// caller so far needs them and a C-FIND peer may send many.
#[derive(Debug, Clone)]
pub struct Message {
    /// The decoded command set.
    pub command: Command,
    /// Error Comment (0000,0902), trimmed, when the response carries one: the peer's own words
    /// on a failure status, worth logging next to the code.
    pub error_comment: Option<String>,
    /// Length of the dataset that followed (0 if none).
    pub dataset_len: u64,
}

/// The outcome of a C-STORE, as [`Association::c_store_from_file`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreResponse {
    /// Status (0000,0900) of the C-STORE-RSP; the caller maps it (success, warning, failure)
    /// with the storage service's status table.
    pub status: u16,
    /// Error Comment (0000,0902), if the peer gave one.
    pub error_comment: Option<String>,
}

/// The connection under an association: TCP, or TLS over TCP (as the client, or as the
/// server of an association we accept: a Storage Commitment report).
enum Link {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    TlsServer(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Plain(s) => f.debug_tuple("Plain").field(s).finish(),
            Link::Tls(s) => f.debug_tuple("Tls").field(&s.sock).finish(),
            Link::TlsServer(s) => f.debug_tuple("TlsServer").field(&s.sock).finish(),
        }
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(buf),
            Link::Tls(s) => s.read(buf),
            Link::TlsServer(s) => s.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.write(buf),
            Link::Tls(s) => s.write(buf),
            Link::TlsServer(s) => s.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Link::Plain(s) => s.write_all(buf),
            // rustls' stream encrypts into a bounded buffer and writes to the socket as it
            // goes; the flush sends the last records now, not at the next call.
            Link::Tls(s) => {
                s.write_all(buf)?;
                s.flush()
            }
            Link::TlsServer(s) => {
                s.write_all(buf)?;
                s.flush()
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(s) => s.flush(),
            Link::Tls(s) => s.flush(),
            Link::TlsServer(s) => s.flush(),
        }
    }
}

impl Link {
    /// The TCP socket under the link.
    fn socket(&self) -> &TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Tls(s) => &s.sock,
            Link::TlsServer(s) => &s.sock,
        }
    }

    /// Shuts the connection down both ways (after close_notify on TLS, best effort).
    fn shutdown(&mut self) {
        let sock = match self {
            Link::Plain(s) => s,
            Link::Tls(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
                &s.sock
            }
            Link::TlsServer(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
                &s.sock
            }
        };
        let _ = sock.shutdown(Shutdown::Both);
    }
}

/// Drives a TLS handshake (either side) to its end on `sock`, bounded by the socket's
/// timeouts; a failure closes the socket.
fn finish_handshake<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut TcpStream,
    addr: SocketAddr,
) -> Result<(), ScuError> {
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(sock) {
            let _ = sock.shutdown(Shutdown::Both);
            return Err(match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ScuError::Timeout,
                _ => ScuError::Tls {
                    addr,
                    source: TlsError::from_blocking_io(e),
                },
            });
        }
    }
    Ok(())
}

/// A connection rustls refused to set up, as a TLS error towards `addr`.
fn tls_setup_error(addr: SocketAddr, e: rustls::Error) -> ScuError {
    ScuError::Tls {
        addr,
        source: TlsError::from_blocking_io(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// The server side of the TLS handshake on an accepted socket.
fn tls_accept(
    mut sock: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    addr: SocketAddr,
) -> Result<Link, ScuError> {
    let mut conn =
        rustls::ServerConnection::new(config.clone()).map_err(|e| tls_setup_error(addr, e))?;
    finish_handshake(&mut conn, &mut sock, addr)?;
    Ok(Link::TlsServer(Box::new(rustls::StreamOwned::new(
        conn, sock,
    ))))
}

/// The TLS handshake on a connected socket.
fn tls_handshake(mut sock: TcpStream, tls: &ScuTls, addr: SocketAddr) -> Result<Link, ScuError> {
    let name = crate::tls::server_name(&tls.server_name)
        .map_err(|source| ScuError::Tls { addr, source })?;
    let mut conn = rustls::ClientConnection::new(tls.config.clone(), name)
        .map_err(|e| tls_setup_error(addr, e))?;
    finish_handshake(&mut conn, &mut sock, addr)?;
    Ok(Link::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
}

/// The association parameters and TLS towards a configured destination: its resolved
/// address, AE title, timeouts and Maximum Length, with our `calling` AE title (the callers'
/// rules differ: the forwarder's configured one, the AE the requestor called, …) and the
/// `contexts` to propose. Every path that opens a link to a destination comes through here,
/// so they reach it the same way. The TLS files are read on each call: a renewed certificate
/// or CA is picked up without a restart, and a broken one fails with the file named.
pub fn destination_params(
    dest: &Destination,
    calling: String,
    contexts: Vec<(String, Vec<String>)>,
) -> Result<(AssocParams, Option<ScuTls>), ScuError> {
    let resolve = |why: String| ScuError::Resolve {
        host: dest.host.clone(),
        why,
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(dest.host.as_str(), dest.port))
        .map_err(|e| resolve(e.to_string()))?
        .next()
        .ok_or_else(|| resolve("no address".into()))?;
    let tls = match &dest.tls {
        None => None,
        Some(t) => Some(ScuTls {
            config: crate::tls::client_config(
                Some(&t.ca_file),
                t.client.as_ref().map(|c| c.0.as_path()),
                t.client.as_ref().map(|c| c.1.as_path()),
            )
            .map_err(|source| ScuError::Tls { addr, source })?,
            server_name: t.verify_name(&dest.host).to_owned(),
        }),
    };
    let params = AssocParams {
        addr,
        calling,
        called: dest.ae_title.clone(),
        max_pdu: dest.max_pdu_length,
        timeout: dest.dimse_timeout,
        connect_timeout: Some(dest.connect_timeout),
        contexts,
        implementation_class_uid: crate::IMPLEMENTATION_CLASS_UID.to_owned(),
        implementation_version_name: crate::IMPLEMENTATION_VERSION_NAME.to_owned(),
    };
    Ok((params, tls))
}

/// Opens an association to a configured destination ([`destination_params`]), proposing
/// `contexts` and an SCP/SCU Role Selection sub-item for each `(SOP class, SCU role, SCP
/// role)` of `roles` (none for a plain storage or verification SCU).
pub fn link_to(
    dest: &Destination,
    calling: String,
    contexts: Vec<(String, Vec<String>)>,
    roles: &[(String, bool, bool)],
) -> Result<Association, ScuError> {
    let (params, tls) = destination_params(dest, calling, contexts)?;
    Association::open_with_role_items(&params, tls.as_ref(), roles)
}

/// An established association.
#[derive(Debug)]
pub struct Association {
    stream: Link,
    our_max_pdu: u32,
    peer_max_pdu: u32,
    accepted: Vec<AcceptedContext>,
    rbuf: BytesMut,
    tmp: Box<[u8]>,
    wbuf: BytesMut,
    /// Joins pieces of an in-memory dataset, or holds one batch read from a file.
    scratch: Vec<u8>,
    pdvs: VecDeque<Pdv>,
    /// The same message assembly as the acceptor's: context checks, command size cap.
    assembler: MessageAssembler,
}

const RELEASE_RQ: [u8; 10] = [0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0];
const ABORT_RQ: [u8; 10] = [0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0];

impl Association {
    /// Connects and negotiates; fails with [`ScuError::Rejected`] / [`ScuError::Aborted`] if
    /// the peer refuses.
    pub fn open(p: &AssocParams) -> Result<Association, ScuError> {
        Association::open_with_tls(p, None)
    }

    /// Like [`Association::open`], over DICOM TLS when `tls` is given: the TLS handshake
    /// (bounded by the read/write timeout) comes between the TCP connect and the
    /// A-ASSOCIATE-RQ, and fails with [`ScuError::Tls`] saying why.
    pub fn open_with_tls(p: &AssocParams, tls: Option<&ScuTls>) -> Result<Association, ScuError> {
        Association::open_with_roles(p, tls, &[])
    }

    /// Like [`Association::open_with_tls`], proposing an SCP/SCU Role Selection sub-item
    /// (PS3.7 D.3.3.4; the SCP role, not the SCU role) for each SOP class of `scp_role`: a
    /// C-GET SCU must, to receive the C-STOREs of its sub-operations on its own association.
    pub fn open_with_roles(
        p: &AssocParams,
        tls: Option<&ScuTls>,
        scp_role: &[String],
    ) -> Result<Association, ScuError> {
        // The SCP role only: the C-GET requestor receives, it does not store.
        let roles: Vec<(String, bool, bool)> = scp_role
            .iter()
            .map(|uid| (uid.clone(), false, true))
            .collect();
        Association::open_with_role_items(p, tls, &roles)
    }

    /// Like [`Association::open_with_tls`], proposing an SCP/SCU Role Selection sub-item for
    /// each `(SOP class, SCU role, SCP role)` of `roles` (Storage Commitment reports on a new
    /// association propose the SCP role, PS3.4 J.3.3.1.3).
    pub fn open_with_role_items(
        p: &AssocParams,
        tls: Option<&ScuTls>,
        roles: &[(String, bool, bool)],
    ) -> Result<Association, ScuError> {
        if p.contexts.len() > MAX_PROPOSED_CONTEXTS {
            return Err(ScuError::TooManyContexts(p.contexts.len()));
        }
        let stream = TcpStream::connect_timeout(&p.addr, p.connect_timeout.unwrap_or(p.timeout))
            .map_err(|source| ScuError::Connect {
                addr: p.addr,
                source,
            })?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(p.timeout))?;
        stream.set_write_timeout(Some(p.timeout))?;
        let link = match tls {
            None => Link::Plain(stream),
            Some(t) => tls_handshake(stream, t, p.addr)?,
        };
        let mut a = Association::with_link(link, p.max_pdu);
        let rq = AssociationRQ {
            protocol_version: 1,
            calling_ae_title: p.calling.clone(),
            called_ae_title: p.called.clone(),
            application_context_name: DICOM_APPLICATION_CONTEXT.to_owned(),
            presentation_contexts: p
                .contexts
                .iter()
                .zip((1u8..=255).step_by(2))
                .map(|((abs, ts), id)| PresentationContextProposed {
                    id,
                    abstract_syntax: abs.clone(),
                    transfer_syntaxes: ts.clone(),
                })
                .collect(),
            // Sub-items in item-type order (51H, 52H, 54H, 55H, PS3.7 D.3.3).
            user_variables: [
                UserVariableItem::MaxLength(p.max_pdu),
                UserVariableItem::ImplementationClassUID(p.implementation_class_uid.clone()),
            ]
            .into_iter()
            .chain(roles.iter().map(|(uid, scu, scp)| {
                UserVariableItem::ScuScpRoleSelectionSubItem(
                    uid.clone(),
                    dicom_ul::pdu::RequestorRoles {
                        scu: *scu,
                        scp: *scp,
                    },
                )
            }))
            .chain([UserVariableItem::ImplementationVersionName(
                p.implementation_version_name.clone(),
            )])
            .collect(),
        };
        let mut out = Vec::with_capacity(512);
        write_pdu(&mut out, &Pdu::AssociationRQ(rq)).map_err(protocol)?;
        // With TLS 1.3 the server checks our certificate after the client's side of the
        // handshake is done: its refusal arrives as an alert on the first read.
        let late = |e: ScuError| match e {
            ScuError::Io(io) if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
                ScuError::Tls {
                    addr: p.addr,
                    source: TlsError::from_blocking_io(io),
                }
            }
            other => other,
        };
        a.stream.write_all(&out).map_err(|e| late(e.into()))?;
        let (_, pdu) = a.read_raw().map_err(late)?;
        // Control PDUs were already bounded by `check_length`; dicom-ul only needs a valid limit.
        match read_pdu(&pdu[..], MAXIMUM_PDU_SIZE, false).map_err(protocol)? {
            Some(Pdu::AssociationAC(ac)) => {
                a.peer_max_pdu = max_length(&ac.user_variables);
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
                let transient = rj.result == AssociationRJResult::Transient;
                let kind = if transient { "transient" } else { "permanent" };
                Err(ScuError::Rejected {
                    addr: p.addr,
                    transient,
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

    /// An association on `stream` before negotiation (also how the tests get one on a socket
    /// pair without a handshake).
    #[cfg(test)]
    fn with_stream(stream: TcpStream, our_max_pdu: u32) -> Association {
        Association::with_link(Link::Plain(stream), our_max_pdu)
    }

    fn with_link(stream: Link, our_max_pdu: u32) -> Association {
        Association {
            stream,
            our_max_pdu,
            peer_max_pdu: 0,
            accepted: Vec::new(),
            rbuf: BytesMut::with_capacity(64 * 1024),
            tmp: vec![0u8; 64 * 1024].into_boxed_slice(),
            wbuf: BytesMut::with_capacity(64 * 1024),
            scratch: Vec::new(),
            pdvs: VecDeque::new(),
            assembler: MessageAssembler::default(),
        }
    }

    /// Sets the read timeout of the steps that follow (at least 1 ms): a caller with an
    /// overall deadline bounds its last waits by what is left of it.
    pub fn set_read_timeout(&mut self, d: Duration) -> Result<(), ScuError> {
        let d = d.max(Duration::from_millis(1));
        self.stream.socket().set_read_timeout(Some(d))?;
        Ok(())
    }

    /// The peer's Maximum Length (0 = unlimited): the PDU size our messages are cut to.
    pub fn peer_max_pdu(&self) -> u32 {
        self.peer_max_pdu
    }

    /// Accepted presentation contexts, for callers that choose among several themselves.
    pub fn accepted(&self) -> &[AcceptedContext] {
        &self.accepted
    }

    /// The accepted context for `abstract_syntax` in exactly `ts`: a stored object goes out in
    /// the transfer syntax it is encoded in, since its bytes are sent verbatim.
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

    /// The first accepted context for `abstract_syntax`, whatever its transfer syntax: for
    /// messages we encode ourselves (C-FIND identifiers) in whichever syntax was chosen.
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
    /// The dataset comes in two parts so a caller can prepend patched bytes to shared ones
    /// without joining them first. After an error the message is incomplete: abort.
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

    /// Sends a command and then, as its dataset, the `len` bytes of `file` starting at
    /// `offset`, verbatim, on context `pc`.
    ///
    /// This is how a stored object is forwarded without loading it: the bytes are read with
    /// positional reads (`read_at`, so the file's cursor is neither used nor moved and the
    /// handle may be shared) one batch of ≤ [`WRITE_BATCH`] bytes at a time, framed into
    /// P-DATA-TF PDUs no larger than the peer's Maximum Length (when the peer announced 0 =
    /// unlimited, each batch becomes one PDU) and written before the next batch is read.
    ///
    /// If the file cannot be read or ends before `offset + len`, the message cannot be
    /// completed: the association is aborted (A-ABORT, then the connection is shut down) and
    /// [`ScuError::Source`] is returned, telling our own file's problem apart from the peer's.
    /// Other errors come from the connection; the message is incomplete then too, so abort.
    pub fn send_dataset_from(
        &mut self,
        pc: u8,
        command: &[u8],
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<(), ScuError> {
        let mut source = FileRange {
            file,
            offset,
            len,
            buf: &mut self.scratch,
        };
        let stream = &mut self.stream;
        let sent = match offset.checked_add(len) {
            None => Err(FrameError::Source(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("dataset range {offset} + {len} overflows"),
            ))),
            Some(_) => frame_pieces(
                &mut self.wbuf,
                pc,
                command,
                Some(&mut source),
                self.peer_max_pdu,
                &mut |b| stream.write_all(b),
            ),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(FrameError::Sink(e)) => Err(e.into()),
            Err(FrameError::Source(e)) => {
                self.abort_in_place();
                Err(ScuError::Source(e))
            }
        }
    }

    /// One C-STORE of a dataset held in a file: sends a C-STORE-RQ (`message_id`, SOP class and
    /// instance, medium priority) with the `len` bytes of `file` at `offset` as its dataset
    /// (see [`Association::send_dataset_from`] for how, and for [`ScuError::Source`]), then
    /// waits for the C-STORE-RSP.
    ///
    /// `pc` must be a context accepted for `sop_class_uid` in the transfer syntax the bytes are
    /// encoded in (see [`Association::context`]). Returns the response's status and error
    /// comment; interpreting the status (success, warning, failure) is the caller's business.
    #[allow(clippy::too_many_arguments)] // the request's fields and a byte range, all plain
    pub fn c_store_from_file(
        &mut self,
        pc: u8,
        message_id: u16,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<StoreResponse, ScuError> {
        let command = encode_store_rq(message_id, sop_class_uid, sop_instance_uid);
        self.send_dataset_from(pc, &command, file, offset, len)?;
        self.store_response(message_id, sop_instance_uid)
    }

    /// [`Association::c_store_from_file`] with a command set of the caller's (a C-MOVE
    /// sub-operation's C-STORE-RQ carries the Move Originator, see
    /// [`crate::net::dimse::command::encode_store_rq_for_move`]).
    #[allow(clippy::too_many_arguments)] // as c_store_from_file, plus the command
    pub fn c_store_command_from_file(
        &mut self,
        pc: u8,
        message_id: u16,
        command: &[u8],
        sop_instance_uid: &str,
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<StoreResponse, ScuError> {
        self.send_dataset_from(pc, command, file, offset, len)?;
        self.store_response(message_id, sop_instance_uid)
    }

    /// Reads and frames, into `out`, the message [`Association::send_dataset_from`] would
    /// send, without sending it, when it fits in one write batch (≤ [`WRITE_BATCH`] bytes of
    /// dataset): `Ok(true)`, and [`Association::send_staged`] writes it later in one call.
    /// `Ok(false)` (nothing read) for a larger dataset, which is streamed instead.
    ///
    /// Why: a sender of many objects can read and frame the next one while the peer is still
    /// storing the current one, so the peer's response is followed at once by the next
    /// request instead of by our file read (C-MOVE sub-operations). A file that cannot be
    /// read is [`ScuError::Source`] here, before anything is written, so unlike a failed
    /// [`Association::send_dataset_from`] it leaves the association usable.
    pub fn stage_from_file(
        &mut self,
        out: &mut BytesMut,
        pc: u8,
        command: &[u8],
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<bool, ScuError> {
        if len > batch_len(self.peer_max_pdu) as u64 {
            return Ok(false);
        }
        let mut source = FileRange {
            file,
            offset,
            len,
            buf: &mut self.scratch,
        };
        // One batch: frame_pieces leaves the whole message in `out` and calls the sink once.
        match frame_pieces(
            out,
            pc,
            command,
            Some(&mut source),
            self.peer_max_pdu,
            &mut |_| Ok(()),
        ) {
            Ok(()) => Ok(true),
            Err(FrameError::Source(e) | FrameError::Sink(e)) => {
                out.clear();
                Err(ScuError::Source(e))
            }
        }
    }

    /// Writes a message staged by [`Association::stage_from_file`] on this association. The
    /// C-STORE-RSP is then awaited with [`Association::c_store_response`]; staging the next
    /// object in between is the point. After an error the message may be incomplete: abort.
    pub fn send_staged(&mut self, staged: &[u8]) -> Result<(), ScuError> {
        self.stream.write_all(staged)?;
        Ok(())
    }

    /// Waits for the C-STORE-RSP to `message_id` about `sop_instance_uid`, for a request sent
    /// with [`Association::send_staged`] (see [`Association::c_store_from_file`]).
    pub fn c_store_response(
        &mut self,
        message_id: u16,
        sop_instance_uid: &str,
    ) -> Result<StoreResponse, ScuError> {
        self.store_response(message_id, sop_instance_uid)
    }

    /// Receives the next message whatever it is (a response, or a request the peer sends us:
    /// the C-STOREs of a C-GET), handing its dataset, fragment by fragment, to `sink`: so an
    /// object of any size costs one PDU of memory. Returns the command and its context ID.
    pub fn receive_any(
        &mut self,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(Command, u8), ScuError> {
        let (command, pc) = loop {
            match self.next_fragment()? {
                Fragment::Partial => {}
                Fragment::Command(cmd, pc) => break (cmd, pc),
                Fragment::Data { .. } => {
                    return Err(protocol("dataset fragment before its command"))
                }
            }
        };
        if command.has_dataset {
            loop {
                match self.next_fragment()? {
                    Fragment::Data { data, last } => {
                        sink(&data).map_err(ScuError::Io)?;
                        if last {
                            break;
                        }
                    }
                    _ => return Err(protocol("command fragment inside a dataset")),
                }
            }
        }
        Ok((command, pc))
    }

    /// One C-STORE of a dataset held in memory (an object converted to the transfer syntax of
    /// context `pc`, see [`crate::dicom::transcode`]); otherwise as
    /// [`Association::c_store_from_file`].
    pub fn c_store(
        &mut self,
        pc: u8,
        message_id: u16,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        dataset: &[u8],
    ) -> Result<StoreResponse, ScuError> {
        let command = encode_store_rq(message_id, sop_class_uid, sop_instance_uid);
        if let Err(e) = self.send(pc, &command, Some((dataset, &[]))) {
            // The message is incomplete: the peer must not wait for the rest.
            self.abort_in_place();
            return Err(e);
        }
        self.store_response(message_id, sop_instance_uid)
    }

    /// Waits for the C-STORE-RSP to `message_id` and checks it is about `sop_instance_uid`.
    fn store_response(
        &mut self,
        message_id: u16,
        sop_instance_uid: &str,
    ) -> Result<StoreResponse, ScuError> {
        let rsp = self.receive(message_id)?;
        let c = &rsp.command;
        if c.command_field != CommandField::CStoreRsp as u16 {
            return Err(protocol(format!(
                "expected C-STORE-RSP to message {message_id}, got command field 0x{:04X}",
                c.command_field
            )));
        }
        // A response about another instance would mean the peer mixed up objects: better to
        // stop than to mark the wrong one as delivered.
        if let Some(uid) = &c.affected_sop_instance_uid {
            if uid != sop_instance_uid.trim_end_matches('\0') {
                return Err(protocol(format!(
                    "C-STORE-RSP for instance {uid} while {sop_instance_uid} was sent"
                )));
            }
        }
        let status = c
            .status
            .ok_or_else(|| protocol("C-STORE-RSP without Status (0000,0900)"))?;
        Ok(StoreResponse {
            status,
            error_comment: rsp.error_comment,
        })
    }

    fn fill(&mut self) -> Result<(), ScuError> {
        let n = self.stream.read(&mut self.tmp)?;
        if n == 0 {
            return Err(ScuError::Closed);
        }
        self.rbuf.extend_from_slice(&self.tmp[..n]);
        Ok(())
    }

    /// Reads one whole PDU (header included), its length checked before it is buffered.
    fn read_raw(&mut self) -> Result<(PduType, Bytes), ScuError> {
        let limit = if self.our_max_pdu == 0 {
            u32::MAX
        } else {
            self.our_max_pdu
        };
        loop {
            if let Some(h) = peek_header(&self.rbuf) {
                let ty = check_length(h, limit).map_err(protocol)?;
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
                    let why = match read_pdu(&pdu[..], MAXIMUM_PDU_SIZE, false) {
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
        self.receive_keeping(message_id, None)
    }

    /// [`Association::receive`], keeping the dataset (at most `cap` bytes; more is a protocol
    /// error): a C-FIND SCU needs each response's identifier.
    pub fn receive_with_dataset(
        &mut self,
        message_id: u16,
        cap: usize,
        dataset: &mut Vec<u8>,
    ) -> Result<Message, ScuError> {
        dataset.clear();
        self.receive_keeping(message_id, Some((cap, dataset)))
    }

    fn receive_keeping(
        &mut self,
        message_id: u16,
        mut keep: Option<(usize, &mut Vec<u8>)>,
    ) -> Result<Message, ScuError> {
        let command = loop {
            match self.next_fragment()? {
                Fragment::Partial => {}
                Fragment::Command(cmd, _) => break cmd,
                // The assembler refuses these itself; kept as errors, never as panics.
                Fragment::Data { .. } => {
                    return Err(protocol("dataset fragment before its command"))
                }
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
                match self.next_fragment()? {
                    Fragment::Data { data, last } => {
                        dataset_len += data.len() as u64;
                        if let Some((cap, buf)) = keep.as_mut() {
                            if buf.len() + data.len() > *cap {
                                return Err(protocol(format!(
                                    "response dataset larger than {cap} bytes"
                                )));
                            }
                            buf.extend_from_slice(&data);
                        }
                        if last {
                            break;
                        }
                    }
                    _ => return Err(protocol("command fragment inside a dataset")),
                }
            }
        }
        Ok(Message {
            error_comment: command.error_comment.clone(),
            command,
            dataset_len,
        })
    }

    /// The next PDV through the message assembler: on a context we proposed and the peer
    /// accepted, in order, a command set no larger than the cap.
    fn next_fragment(&mut self) -> Result<Fragment, ScuError> {
        let pdv = self.next_pdv()?;
        let accepted = self.accepted.iter().any(|c| c.id == pdv.pc_id);
        self.assembler.push(pdv, accepted).map_err(protocol)
    }

    /// A-RELEASE-RQ, then waits (bounded by the read timeout) for A-RELEASE-RP: the orderly
    /// end, after which the peer has finished with everything it acknowledged.
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

    /// Sends A-ABORT and closes (best effort): the way out after any error, since the peer
    /// then discards a half-received message instead of waiting for the rest.
    pub fn abort(mut self) {
        self.abort_in_place();
    }

    /// A-ABORT, then shuts the connection down both ways, so any later use of this
    /// association fails at once instead of talking to a peer that has forgotten it.
    fn abort_in_place(&mut self) {
        let _ = self.stream.write_all(&ABORT_RQ);
        self.stream.shutdown();
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

/// Dataset bytes framed per `write`: a whole number of full PDVs up to [`WRITE_BATCH`], so
/// every PDU but the message's last is as large as the peer allows; when one PDV would be
/// larger than that (peer limit above 1 MiB, or unlimited), [`WRITE_BATCH`], which keeps the
/// memory bound at the cost of PDUs below the peer's limit.
fn batch_len(peer_max_pdu: u32) -> usize {
    let payload = max_payload(peer_max_pdu);
    if payload >= WRITE_BATCH {
        WRITE_BATCH
    } else {
        WRITE_BATCH / payload * payload
    }
}

/// A message's dataset as the framer sees it: a known length, handed out piece by piece so
/// only one batch needs to be in memory.
trait DatasetPieces {
    /// Length of the whole dataset.
    fn total_len(&self) -> u64;
    /// The `n` bytes at `pos` (`pos + n` ≤ the total length).
    fn piece(&mut self, pos: u64, n: usize) -> io::Result<&[u8]>;
}

/// An in-memory dataset in two parts (`head ++ tail`): pieces within one part are borrowed,
/// the one piece straddling both is joined in `scratch`.
struct Slices<'a> {
    head: &'a [u8],
    tail: &'a [u8],
    scratch: &'a mut Vec<u8>,
}

impl DatasetPieces for Slices<'_> {
    fn total_len(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64
    }

    fn piece(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        let (pos, h) = (pos as usize, self.head.len());
        let end = pos + n;
        Ok(if end <= h {
            &self.head[pos..end]
        } else if pos >= h {
            &self.tail[pos - h..end - h]
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.head[pos..]);
            self.scratch.extend_from_slice(&self.tail[..end - h]);
            self.scratch
        })
    }
}

/// A dataset stored in a file at `offset`, read into `buf` one piece at a time.
struct FileRange<'a> {
    file: &'a File,
    offset: u64,
    len: u64,
    buf: &'a mut Vec<u8>,
}

impl DatasetPieces for FileRange<'_> {
    fn total_len(&self) -> u64 {
        self.len
    }

    fn piece(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        self.buf.resize(n, 0);
        let at = self.offset + pos;
        match self.file.read_exact_at(&mut self.buf[..n], at) {
            Ok(()) => Ok(&self.buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "file ends within bytes {at}..{} (dataset of {} bytes at offset {})",
                    at + n as u64,
                    self.len,
                    self.offset
                ),
            )),
            Err(e) => Err(e),
        }
    }
}

/// Why framing stopped: the dataset could not be read (our side) or the bytes could not be
/// written (the connection).
#[derive(Debug)]
enum FrameError {
    Source(io::Error),
    Sink(io::Error),
}

/// The one framer: the command as P-DATA-TF PDUs, then the dataset (if any) in batches of
/// [`batch_len`] bytes, each framed with [`frame_batch`] and handed to `write` as a whole
/// number of PDUs; the command goes out with the first batch. `wbuf` is reused.
fn frame_pieces(
    wbuf: &mut BytesMut,
    pc: u8,
    command: &[u8],
    dataset: Option<&mut dyn DatasetPieces>,
    peer_max_pdu: u32,
    write: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), FrameError> {
    wbuf.clear();
    encode_message(wbuf, pc, true, command, peer_max_pdu);
    let Some(dataset) = dataset else {
        return write(wbuf).map_err(FrameError::Sink);
    };
    let total = dataset.total_len();
    let batch = batch_len(peer_max_pdu) as u64;
    let mut pos = 0u64;
    loop {
        let n = (total - pos).min(batch) as usize;
        let data = dataset.piece(pos, n).map_err(FrameError::Source)?;
        pos += n as u64;
        frame_batch(wbuf, pc, data, peer_max_pdu, pos == total);
        write(wbuf).map_err(FrameError::Sink)?;
        if pos == total {
            return Ok(());
        }
        wbuf.clear();
    }
}

/// Frames a command and optional dataset (`head ++ tail`) into P-DATA-TF PDUs of at most
/// `peer_max_pdu` bytes and hands them to `write` in batches of whole PDUs: the command with
/// the first ≤ [`WRITE_BATCH`] bytes of dataset, then further batches. `wbuf` and `scratch`
/// are reused buffers (`scratch` joins the one batch that straddles head and tail). Public
/// and I/O-free so benchmarks and tests can drive it without a socket.
pub fn frame_message(
    wbuf: &mut BytesMut,
    scratch: &mut Vec<u8>,
    pc: u8,
    command: &[u8],
    dataset: Option<(&[u8], &[u8])>,
    peer_max_pdu: u32,
    mut write: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut slices = dataset.map(|(head, tail)| Slices {
        head,
        tail,
        scratch,
    });
    frame_pieces(
        wbuf,
        pc,
        command,
        slices.as_mut().map(|s| s as &mut dyn DatasetPieces),
        peer_max_pdu,
        &mut write,
    )
    .map_err(|e| match e {
        FrameError::Source(e) | FrameError::Sink(e) => e,
    })
}

/// Frames `data` (a piece of one dataset) as P-DATA-TF PDUs; when the piece is not the last
/// of its message, clears the "last fragment" bit that [`encode_message`] sets on its final
/// PDV.
pub fn frame_batch(out: &mut BytesMut, pc: u8, data: &[u8], peer_max_pdu: u32, is_last: bool) {
    encode_message(out, pc, false, data, peer_max_pdu);
    if !is_last && !data.is_empty() {
        let payload = max_payload(peer_max_pdu);
        let last_len = data.len() - (data.len() - 1) / payload * payload;
        let control = out.len() - last_len - 1;
        out[control] &= !0x02;
    }
}

/// The requests a Storage Commitment association needs beyond the forwarder's C-STORE: an
/// association that proposes SCP/SCU Role Selection (the SCP reporting on a new association
/// must propose the SCP role, PS3.4 J.3.3.1.3), receiving a *request* (an N-EVENT-REPORT-RQ
/// arrives unannounced, with the peer's message ID), and the acceptor side for an SCU that
/// listens for its report.
impl Association {
    /// Receives the next message, request or response, whatever its message ID, keeping its
    /// dataset (at most `cap` bytes). `Ok(None)`: the peer asked to release instead, and
    /// was answered (A-RELEASE-RP).
    pub fn receive_request(
        &mut self,
        cap: usize,
        dataset: &mut Vec<u8>,
    ) -> Result<Option<Message>, ScuError> {
        dataset.clear();
        let command = loop {
            if self.pdvs.is_empty() {
                let (ty, pdu) = self.read_raw()?;
                match ty {
                    PduType::PData => {
                        self.pdvs
                            .extend(split_pdata(pdu.slice(PDU_HEADER_LEN..)).map_err(protocol)?);
                        continue;
                    }
                    PduType::ReleaseRq => {
                        self.stream.write_all(&RELEASE_RP)?;
                        return Ok(None);
                    }
                    PduType::Abort => return Err(ScuError::Aborted("by the peer".into())),
                    other => return Err(protocol(format!("unexpected {other:?} PDU"))),
                }
            }
            match self.next_fragment()? {
                Fragment::Partial => {}
                Fragment::Command(cmd, _) => break cmd,
                Fragment::Data { .. } => {
                    return Err(protocol("dataset fragment before its command"))
                }
            }
        };
        let mut dataset_len = 0u64;
        if command.has_dataset {
            loop {
                match self.next_fragment()? {
                    Fragment::Data { data, last } => {
                        dataset_len += data.len() as u64;
                        if dataset.len() + data.len() > cap {
                            return Err(protocol(format!("dataset larger than {cap} bytes")));
                        }
                        dataset.extend_from_slice(&data);
                        if last {
                            break;
                        }
                    }
                    _ => return Err(protocol("command fragment inside a dataset")),
                }
            }
        }
        Ok(Some(Message {
            error_comment: command.error_comment.clone(),
            command,
            dataset_len,
        }))
    }

    /// The acceptor side on an accepted TCP connection: reads the A-ASSOCIATE-RQ (bounded by
    /// `timeout`), decides it with the pure [`crate::net::ul::association::negotiate`] and
    /// answers. Returns the association and what was agreed, or the rejection sent.
    pub fn accept(
        stream: TcpStream,
        timeout: Duration,
        policy: &crate::net::ul::association::AcceptorPolicy,
        offered: impl crate::net::ul::association::Offered,
    ) -> Result<(Association, crate::net::ul::association::Negotiated), ScuError> {
        Association::accept_with_tls(stream, None, timeout, policy, offered)
    }

    /// Like [`Association::accept`], over DICOM TLS when `tls` is given: the server side of
    /// the handshake (bounded by `timeout`) comes before the A-ASSOCIATE-RQ; a peer whose
    /// certificate the configuration refuses fails with [`ScuError::Tls`].
    pub fn accept_with_tls(
        stream: TcpStream,
        tls: Option<&Arc<rustls::ServerConfig>>,
        timeout: Duration,
        policy: &crate::net::ul::association::AcceptorPolicy,
        offered: impl crate::net::ul::association::Offered,
    ) -> Result<(Association, crate::net::ul::association::Negotiated), ScuError> {
        use crate::net::ul::association::{negotiate, Decision};
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let link = match tls {
            None => Link::Plain(stream),
            Some(cfg) => {
                let addr = stream.peer_addr()?;
                tls_accept(stream, cfg, addr)?
            }
        };
        let mut a = Association::with_link(link, policy.max_pdu_length);
        let (ty, pdu) = a.read_raw()?;
        if ty != PduType::AssociateRq {
            return Err(protocol(format!("expected A-ASSOCIATE-RQ, got {ty:?}")));
        }
        let rq = match read_pdu(&pdu[..], MAXIMUM_PDU_SIZE, false).map_err(protocol)? {
            Some(Pdu::AssociationRQ(rq)) => rq,
            _ => return Err(protocol("malformed A-ASSOCIATE-RQ")),
        };
        let mut out = Vec::with_capacity(512);
        match negotiate(&rq, policy, false, offered) {
            Decision::Accept(ac, negotiated) => {
                write_pdu(&mut out, &Pdu::AssociationAC(*ac)).map_err(protocol)?;
                a.stream.write_all(&out)?;
                a.peer_max_pdu = negotiated.peer_max_pdu_length;
                for (id, c) in &negotiated.contexts {
                    a.accepted.push(AcceptedContext {
                        id: *id,
                        abstract_syntax: c.abstract_syntax.clone(),
                        transfer_syntax: c.transfer_syntax.clone(),
                    });
                }
                Ok((a, *negotiated))
            }
            Decision::Reject(rj, why) => {
                write_pdu(&mut out, &Pdu::AssociationRJ(rj)).map_err(protocol)?;
                let _ = a.stream.write_all(&out);
                Err(protocol(format!("association rejected: {why}")))
            }
        }
    }
}

const RELEASE_RP: [u8; 10] = [0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dimse::command::{decode_command, encode_response};
    use dicom_ul::pdu::{
        AssociationAC, AssociationRJ, AssociationRJResult,
        AssociationRJServiceProviderPresentationReason, AssociationRJSource,
        PresentationContextResult,
    };
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    /// What a peer saw on the wire.
    #[derive(Debug, Default)]
    struct Received {
        command: Vec<u8>,
        dataset: Vec<u8>,
        /// Last-fragment flags seen (command and dataset).
        lasts: usize,
        /// Largest P-DATA-TF body.
        largest_pdu: u32,
        /// PDU types other than P-DATA-TF, in order.
        others: Vec<u8>,
    }

    /// Reassembles a framed byte stream, checking every P-DATA-TF against `max` (0 = no limit).
    fn unframe(mut buf: Bytes, max: u32) -> Received {
        let mut r = Received::default();
        while let Some(h) = peek_header(&buf) {
            let ty = check_length(h, if max == 0 { u32::MAX } else { max }).unwrap();
            assert!(buf.len() >= h.total_len(), "truncated PDU at the end");
            let pdu = buf.split_to(h.total_len());
            if ty != PduType::PData {
                r.others.push(h.pdu_type);
                continue;
            }
            r.largest_pdu = r.largest_pdu.max(h.length);
            for p in split_pdata(pdu.slice(PDU_HEADER_LEN..)).unwrap() {
                assert!(r.lasts < 2, "fragment after the dataset's last one");
                if p.is_last {
                    r.lasts += 1;
                }
                if p.is_command {
                    r.command.extend_from_slice(&p.data);
                } else {
                    r.dataset.extend_from_slice(&p.data);
                }
            }
        }
        assert!(buf.is_empty(), "trailing partial PDU header");
        r
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
                let r = unframe(Bytes::from(out), max);
                assert_eq!(r.command, b"cmd!");
                assert!(r.dataset == data, "max {max} split {split}");
                assert_eq!(
                    r.lasts, 2,
                    "one last flag for the command, one for the data"
                );
                assert!(r.others.is_empty());
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

    #[test]
    fn batches_stay_bounded_whatever_the_peer_limit() {
        for max in [0u32, 8, 1000, 16384, 1 << 20, (1 << 20) + 7, u32::MAX] {
            let b = batch_len(max);
            assert!(b <= WRITE_BATCH && b > 0, "max {max}: batch {b}");
            let p = max_payload(max);
            assert!(
                p >= WRITE_BATCH || b.is_multiple_of(p),
                "max {max}: batch of whole PDVs"
            );
        }
    }

    /// A connected (client, server) loopback TCP pair.
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    /// A peer that reads everything until EOF.
    fn sink_peer(mut s: TcpStream) -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        })
    }

    /// Everything `send_dataset_from` writes for a "store-rq" command and the `len` bytes of
    /// `file` at `offset`, to a peer whose Maximum Length is `max`.
    fn streamed(file: &File, max: u32, offset: u64, len: u64) -> Vec<u8> {
        let (c, s) = tcp_pair();
        let peer = sink_peer(s);
        let mut a = Association::with_stream(c, 16_384);
        a.peer_max_pdu = max;
        a.send_dataset_from(5, b"store-rq", file, offset, len)
            .unwrap();
        drop(a);
        peer.join().unwrap()
    }

    /// A temporary file of `n` pseudo-random bytes.
    fn temp_file(n: usize) -> (File, Vec<u8>) {
        let mut x = 0x1234_5678_9abc_def0u64;
        let bytes: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        (f, bytes)
    }

    #[test]
    fn send_dataset_from_delivers_the_file_range_verbatim() {
        let (file, bytes) = temp_file(2_500_000);
        let cases: &[(u32, u64, u64)] = &[
            // (peer max PDU, offset, len)
            (0, 777, 2_400_000),
            (16_384, 777, 2_400_000),
            (10_000, 1, 1_300_001), // 10_000 - 6 divides neither batch nor length
            (262_144, 0, 2_500_000),
            (u32::MAX, 3, 1_048_577),
            (16_384, 5, 0),
            (16_384, 2_499_999, 1),
        ];
        for &(max, offset, len) in cases {
            let r = unframe(Bytes::from(streamed(&file, max, offset, len)), max);
            let want = &bytes[offset as usize..(offset + len) as usize];
            assert_eq!(r.command, b"store-rq");
            assert!(r.dataset == want, "max {max} offset {offset} len {len}");
            assert_eq!(r.lasts, 2, "max {max}: command and dataset each end once");
            assert!(r.others.is_empty(), "max {max}: no other PDU");
            let cap = if max == 0 {
                WRITE_BATCH as u32 + 6
            } else {
                max
            };
            assert!(r.largest_pdu <= cap, "max {max}: PDU of {}", r.largest_pdu);
        }
    }

    #[test]
    fn staged_messages_are_the_bytes_send_dataset_from_sends() {
        let (file, _) = temp_file(2_500_000);
        let cases: &[(u32, u64, u64)] = &[
            // (peer max PDU, offset, len): all within one write batch
            (16_384, 777, 524_288),
            (10_000, 1, 999_990), // 10_000 - 6 divides neither batch nor length
            (0, 3, WRITE_BATCH as u64),
            (16_384, 5, 0),
        ];
        for &(max, offset, len) in cases {
            // What the streaming path writes...
            let streamed = streamed(&file, max, offset, len);
            // ...is what staging frames, and send_staged writes, twice in a row on one
            // association with the buffer reused.
            let (c, s) = tcp_pair();
            let peer = sink_peer(s);
            let mut a = Association::with_stream(c, 16_384);
            a.peer_max_pdu = max;
            let mut buf = BytesMut::new();
            for _ in 0..2 {
                let staged = a
                    .stage_from_file(&mut buf, 5, b"store-rq", &file, offset, len)
                    .unwrap();
                assert!(staged, "max {max} len {len} fits one batch");
                assert_eq!(
                    &buf[..],
                    &streamed[..],
                    "max {max} offset {offset} len {len}"
                );
                a.send_staged(&buf).unwrap();
            }
            drop(a);
            assert_eq!(
                peer.join().unwrap(),
                [&streamed[..], &streamed[..]].concat()
            );
        }
    }

    #[test]
    fn staging_declines_a_dataset_above_one_batch_and_a_short_file_keeps_the_association() {
        let (file, _) = temp_file(3 << 20);
        let (c, s) = tcp_pair();
        let peer = sink_peer(s);
        let mut a = Association::with_stream(c, 16_384);
        a.peer_max_pdu = 16_384;
        let mut buf = BytesMut::new();
        let big = batch_len(16_384) as u64 + 1;
        assert!(!a
            .stage_from_file(&mut buf, 1, b"rq", &file, 0, big)
            .unwrap());
        // The file ends before the range: our problem, reported before anything is written.
        let e = a
            .stage_from_file(&mut buf, 1, b"rq", &file, (3 << 20) - 10, 100)
            .unwrap_err();
        assert_eq!(e.kind(), "source");
        assert!(buf.is_empty(), "nothing half-framed is left to send");
        // The association was not touched: a message still goes out whole.
        a.send(1, b"next", None).unwrap();
        drop(a);
        let r = unframe(Bytes::from(peer.join().unwrap()), 16_384);
        assert_eq!(r.command, b"next");
        assert!(r.others.is_empty(), "no A-ABORT");
    }

    #[test]
    fn short_file_is_a_source_error_and_aborts() {
        let (file, _) = temp_file(3 << 20);
        let (c, s) = tcp_pair();
        let peer = sink_peer(s);
        let mut a = Association::with_stream(c, 16_384);
        a.peer_max_pdu = 16_384;
        // Three batches go out before the read hits the end of the file.
        let e = a
            .send_dataset_from(1, b"store-rq", &file, 1000, 4 << 20)
            .unwrap_err();
        match &e {
            ScuError::Source(io) => assert_eq!(io.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected a source error, got {other:?}"),
        }
        assert_eq!(e.kind(), "source");
        // The peer got the A-ABORT and EOF (no hang); the dataset never ended.
        let r = unframe(Bytes::from(peer.join().unwrap()), 16_384);
        assert_eq!(r.others, vec![PduType::Abort as u8]);
        assert_eq!(r.lasts, 1, "only the command is complete");
        assert!(r.dataset.len() < 3 << 20);
        // Later use fails at once.
        assert!(a.send(1, b"x", None).is_err());
    }

    #[test]
    fn error_comment_is_found_in_a_response() {
        let rq = decode_command(&encode_store_rq(9, "1.2.3", "1.2.3.4")).unwrap();
        let rsp = encode_response(&rq, 0x8001, 0xA700, Some("disk full"));
        let comment = |b: &[u8]| decode_command(b).unwrap().error_comment;
        assert_eq!(comment(&rsp).as_deref(), Some("disk full"));
        let rsp = encode_response(&rq, 0x8001, 0x0000, None);
        assert_eq!(comment(&rsp), None);
    }

    /// Reads one PDU from a blocking stream: (type, whole PDU).
    fn read_one(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; PDU_HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let len = peek_header(&h).unwrap().length as usize;
        let mut pdu = h.to_vec();
        pdu.resize(PDU_HEADER_LEN + len, 0);
        s.read_exact(&mut pdu[PDU_HEADER_LEN..]).unwrap();
        (h[0], pdu)
    }

    fn params(addr: SocketAddr) -> AssocParams {
        AssocParams {
            addr,
            calling: "SCU".into(),
            called: "PEER".into(),
            max_pdu: 16_384,
            timeout: Duration::from_secs(10),
            connect_timeout: None,
            contexts: vec![("1.2.3".into(), vec!["1.2.840.10008.1.2.1".into()])],
            implementation_class_uid: "1.2.3.999".into(),
            implementation_version_name: "SCU_TEST".into(),
        }
    }

    /// How a scripted peer answers an A-ASSOCIATE-RQ.
    type Answer = fn(&AssociationRQ) -> Pdu;

    /// A scripted SCP: answers the A-ASSOCIATE-RQ with `answer(rq)`, then (if it accepted)
    /// reads one C-STORE, replies A700 "disk full", and answers the release.
    fn scripted_peer(answer: Answer) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (_, pdu) = read_one(&mut s);
            let Ok(Some(Pdu::AssociationRQ(rq))) = read_pdu(&pdu[..], MAXIMUM_PDU_SIZE, false)
            else {
                panic!("expected A-ASSOCIATE-RQ");
            };
            let reply = answer(&rq);
            let mut out = Vec::new();
            write_pdu(&mut out, &reply).unwrap();
            s.write_all(&out).unwrap();
            if !matches!(reply, Pdu::AssociationAC(_)) {
                return Vec::new();
            }
            let mut wire = Vec::new();
            loop {
                let (ty, pdu) = read_one(&mut s);
                assert_eq!(ty, PduType::PData as u8);
                wire.extend_from_slice(&pdu);
                let r = unframe(Bytes::from(wire.clone()), 16_384);
                if r.lasts == 2 {
                    let rq = decode_command(&r.command).unwrap();
                    let rsp = encode_response(&rq, 0x8001, 0xA700, Some("disk full"));
                    let mut out = BytesMut::new();
                    encode_message(&mut out, 1, true, &rsp, 16_384);
                    s.write_all(&out).unwrap();
                    break;
                }
            }
            let (ty, _) = read_one(&mut s);
            assert_eq!(ty, PduType::ReleaseRq as u8);
            s.write_all(&[0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0]).unwrap();
            unframe(Bytes::from(wire), 16_384).dataset
        });
        (addr, h)
    }

    #[test]
    fn c_store_from_file_returns_status_and_error_comment() {
        let (file, bytes) = temp_file(100_000);
        let (addr, peer) = scripted_peer(|rq| {
            assert!(rq
                .user_variables
                .contains(&UserVariableItem::ImplementationClassUID(
                    "1.2.3.999".into()
                )));
            Pdu::AssociationAC(AssociationAC {
                protocol_version: 1,
                calling_ae_title: rq.calling_ae_title.clone(),
                called_ae_title: rq.called_ae_title.clone(),
                application_context_name: rq.application_context_name.clone(),
                presentation_contexts: vec![PresentationContextResult {
                    id: 1,
                    reason: PresentationContextResultReason::Acceptance,
                    transfer_syntax: "1.2.840.10008.1.2.1".into(),
                }],
                user_variables: vec![UserVariableItem::MaxLength(16_384)],
            })
        });
        let mut a = Association::open(&params(addr)).unwrap();
        assert_eq!(a.peer_max_pdu(), 16_384);
        let pc = a.context("1.2.3", "1.2.840.10008.1.2.1").unwrap();
        let rsp = a
            .c_store_from_file(pc, 7, "1.2.3", "1.2.3.4.5", &file, 10, 50_000)
            .unwrap();
        assert_eq!(
            rsp,
            StoreResponse {
                status: 0xA700,
                error_comment: Some("disk full".into())
            }
        );
        a.release().unwrap();
        assert!(peer.join().unwrap() == bytes[10..50_010]);
    }

    /// A hostile or broken destination: its response is checked by the same message
    /// assembly as the acceptor's. A command set past the cap and a PDV on a context that was
    /// never accepted are protocol errors, not memory growth or a misread response.
    #[test]
    fn responses_go_through_the_acceptors_message_assembly() {
        let accepted = || AcceptedContext {
            id: 1,
            abstract_syntax: "1.2.3".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
        };
        // 16 command fragments of 16 KiB, none the last: 256 KiB against a 64 KiB cap.
        let (c, mut s) = tcp_pair();
        let peer = std::thread::spawn(move || {
            let mut out = BytesMut::new();
            for _ in 0..16 {
                encode_message(&mut out, 1, true, &[0u8; 16_384], 1 << 20);
                // encode_message marks its last fragment; this peer never ends the command.
                let last = out.len() - 16_384 - 1;
                out[last] &= !0x02;
            }
            let _ = s.write_all(&out);
            s
        });
        let mut a = Association::with_stream(c, 1 << 20);
        a.accepted.push(accepted());
        match a.receive(1) {
            Err(ScuError::Protocol(m)) => assert!(m.contains("command"), "{m}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        drop(peer.join());

        // A whole response, but on context 3, which the association never accepted.
        let (c, mut s) = tcp_pair();
        let peer = std::thread::spawn(move || {
            let rq = decode_command(&encode_store_rq(1, "1.2.3", "1.2.3.4")).unwrap();
            let rsp = encode_response(&rq, 0x8001, 0x0000, None);
            let mut out = BytesMut::new();
            encode_message(&mut out, 3, true, &rsp, 16_384);
            let _ = s.write_all(&out);
            s
        });
        let mut a = Association::with_stream(c, 1 << 20);
        a.accepted.push(accepted());
        assert!(matches!(a.receive(1), Err(ScuError::Protocol(_))));
        drop(peer.join());
    }

    fn rejection(result: AssociationRJResult) -> Pdu {
        Pdu::AssociationRJ(AssociationRJ {
            result,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ),
        })
    }

    #[test]
    fn rejection_says_whether_it_is_transient() {
        let answers: [(Answer, bool); 2] = [
            (|_| rejection(AssociationRJResult::Transient), true),
            (|_| rejection(AssociationRJResult::Permanent), false),
        ];
        for (answer, want) in answers {
            let (addr, peer) = scripted_peer(answer);
            let e = Association::open(&params(addr)).unwrap_err();
            assert!(
                matches!(e, ScuError::Rejected { transient, .. } if transient == want),
                "{e}"
            );
            assert_eq!(e.kind(), "rejected");
            peer.join().unwrap();
        }
    }

    #[test]
    fn too_many_contexts_are_refused_before_connecting() {
        let mut p = params("127.0.0.1:9".parse().unwrap());
        p.contexts = vec![("1.2.3".into(), vec!["1.2.840.10008.1.2".into()]); 129];
        assert!(matches!(
            Association::open(&p),
            Err(ScuError::TooManyContexts(129))
        ));
    }
}
