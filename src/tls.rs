//! DICOM TLS (PS3.15 Annex B, "BCP 195" secure transport connection profile) with rustls: the
//! configurations of both sides, and [`TlsStream`], a TLS connection over any [`NetStream`]
//! that is itself a [`NetStream`], so the association driver runs unchanged over TLS.
//!
//! Profile (PS3.15 B.9 / RFC 9325): TLS 1.2 and 1.3 only; ECDHE key exchange with AES-GCM
//! (TLS 1.3: AES_128_GCM_SHA256, AES_256_GCM_SHA384; TLS 1.2: ECDHE_{ECDSA,RSA}_WITH_AES_{128,256}
//! _GCM); the ring provider. A server with a client CA requires and verifies client
//! certificates (mutual TLS); a client always verifies the server against a configured CA —
//! there is no "accept anything" mode, since PHI crosses these connections.
//!
//! [`TlsStream`] drives rustls through its sans-I/O API (`read_tls` / `process_new_packets` /
//! `reader` / `writer` / `write_tls`) with owned buffers, as io_uring needs. Like the sockets
//! it wraps, it allows one reader and one writer at the same time (an association reads the
//! peer's next PDU while it sends responses). The rustls state sits in a `RefCell` that is never
//! borrowed across an `.await` (the runtimes are single-threaded, so borrows cannot overlap),
//! and every write of TLS records to the socket happens under one async lock: records produced
//! while reading (alerts, TLS 1.3 key updates, session tickets) go out through the same lock,
//! after the writer's current records, never interleaved with them. Memory per stream is
//! bounded: at most [`CIPHERTEXT_CHUNK`] bytes of ciphertext read ahead, and rustls' 64 KiB
//! limit on outgoing records; plaintext is decrypted only when the caller asks for it.
//!
//! This module sits at the bottom of the crate beside [`crate::rt`]: it imports only `rt` and
//! external crates.
#![allow(async_fn_in_trait)]

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::client::ClientConnection;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use rustls::{ClientConfig, Connection, RootCertStore, ServerConfig};

use crate::rt::NetStream;

/// Ciphertext read from the socket at a time, and so the most read ahead of what rustls has
/// consumed: a few TLS records (at most 16 KiB + 256 bytes each).
pub const CIPHERTEXT_CHUNK: usize = 64 * 1024;

/// Plaintext handed to rustls per round of a write: rustls encrypts it into records at once
/// (its outgoing buffer is capped at 64 KiB), and the records go out in one socket write.
const PLAINTEXT_CHUNK: usize = 64 * 1024;

/// The protocol versions of the BCP 195 profile (PS3.15 B.9): TLS 1.3 and 1.2, nothing older.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a TLS configuration could not be built or a TLS connection could not be established,
/// in words for an operator (logged at WARN with the peer address for handshakes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or CA file is missing, unreadable or unusable.
    #[error("{}: {what}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The settings do not make a usable configuration.
    #[error("{0}")]
    Config(String),
    /// The handshake did not finish in time.
    #[error("TLS handshake not finished within {0:?}")]
    Timeout(Duration),
    /// The connection ended before the handshake finished.
    #[error("the peer closed the connection during the TLS handshake{0}")]
    PeerClosed(&'static str),
    /// The peer does not speak TLS at all.
    #[error("not TLS: {0}")]
    NotTls(String),
    /// The handshake failed: certificates, versions, cipher suites, alerts.
    #[error("TLS handshake failed: {reason}")]
    Handshake {
        /// The reason, in words.
        reason: String,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// The connection failed during the handshake.
    #[error("I/O error during the TLS handshake: {0}")]
    Io(#[source] io::Error),
}

impl TlsError {
    /// Short name for error counters and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            TlsError::File { .. } => "file",
            TlsError::Config(_) => "config",
            TlsError::Timeout(_) => "timeout",
            TlsError::PeerClosed(_) => "peer-closed",
            TlsError::NotTls(_) => "not-tls",
            TlsError::Handshake { .. } => "handshake",
            TlsError::Io(_) => "io",
        }
    }

    fn handshake(e: rustls::Error) -> TlsError {
        TlsError::Handshake {
            reason: describe(&e),
            source: e,
        }
    }

    /// Classifies an error from a blocking rustls stream's handshake (`complete_io`): rustls
    /// wraps its own errors in `io::Error`s of kind `InvalidData`.
    pub fn from_blocking_io(e: io::Error) -> TlsError {
        if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
            let inner = e.into_inner().expect("checked above");
            let r = *inner.downcast::<rustls::Error>().expect("checked above");
            return TlsError::handshake(r);
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => TlsError::PeerClosed(PEER_CLOSED_HINT),
            _ => TlsError::Io(e),
        }
    }
}

const PEER_CLOSED_HINT: &str =
    " (it may not trust our certificate, require one we did not send, or not speak TLS)";

/// An operator's reading of a rustls error.
fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E, PeerIncompatible as P};
    match e {
        E::NoCertificatesPresented => "the client presented no certificate, and this port \
                                       requires one (mutual TLS: tls_client_ca_file is set)"
            .into(),
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the peer's certificate is not issued by a CA we trust".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the peer's certificate does not name the host we connected to (check server_name)"
                .into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the peer's certificate has expired".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the peer's certificate is not valid yet (check the clocks)".into()
        }
        E::InvalidCertificate(other) => {
            format!("the peer's certificate is not acceptable: {other:?}")
        }
        E::AlertReceived(a) => match a {
            A::UnknownCA => "the peer does not trust our certificate (alert unknown_ca)".into(),
            A::BadCertificate | A::UnsupportedCertificate => {
                format!("the peer refused our certificate (alert {a:?})")
            }
            A::CertificateRequired => "the peer requires a client certificate and we have \
                                       none configured (alert certificate_required)"
                .into(),
            A::ProtocolVersion => "the peer supports neither TLS 1.2 nor TLS 1.3 (alert \
                                   protocol_version)"
                .into(),
            A::HandshakeFailure | A::InsufficientSecurity => format!(
                "no cipher suite or key exchange in common with the peer (alert {a:?}); we allow \
                 only TLS 1.2/1.3 ECDHE with AES-GCM (BCP 195)"
            ),
            A::DecryptError => "the peer could not verify our key (alert decrypt_error)".into(),
            other => format!("the peer ended the handshake with alert {other:?}"),
        },
        E::PeerIncompatible(p) => match p {
            P::SupportedVersionsExtensionRequired
            | P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::ServerDoesNotSupportTls12Or13
            | P::ServerTlsVersionIsDisabledByOurConfig => {
                "the peer offers only TLS versions older than 1.2, which PS3.15 Annex B (BCP \
                 195) does not allow"
                    .into()
            }
            P::NoCipherSuitesInCommon | P::NoKxGroupsInCommon | P::NoSignatureSchemesInCommon => {
                format!(
                    "no cipher suite, key exchange or signature scheme in common with the peer \
                     ({p:?}); we allow only TLS 1.2/1.3 ECDHE with AES-GCM (BCP 195)"
                )
            }
            other => format!("the peer's TLS is incompatible with ours: {other:?}"),
        },
        E::InvalidMessage(m) => format!("the peer sent a malformed TLS message ({m:?})"),
        other => other.to_string(),
    }
}

/// The ring provider restricted to the BCP 195 suites and ECDHE groups.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider, kx_group};
    let mut p = default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(p)
}

fn file_err(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_err(path, format!("cannot read the {what}: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(
            path,
            format!("no PEM certificate (\"BEGIN CERTIFICATE\") in it; the {what} was expected"),
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        file_err(
            path,
            format!("cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from it: {e}"),
        )
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(load_certs(path, "CA certificates")?);
    if added == 0 {
        return Err(file_err(
            path,
            format!("none of its {ignored} certificate(s) is usable as a trust anchor"),
        ));
    }
    Ok(roots)
}

/// The configuration of a DICOM TLS listener: `cert` (PEM chain, leaf first) and `key` (PEM);
/// with `client_ca`, client certificates are required and must chain to one of its CAs.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let p = provider();
    let certs = load_certs(cert, "server certificate")?;
    let private = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), p)
                    .build()
                    .map_err(|e| file_err(ca, format!("cannot verify clients against it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cfg = builder.with_single_cert(certs, private).map_err(|e| {
        file_err(
            cert,
            format!("does not work with the key {}: {e}", key.display()),
        )
    })?;
    Ok(Arc::new(cfg))
}

/// The configuration of a DICOM TLS client: the peer is verified against `ca` (required: an
/// unverified TLS connection would only hide the problem); `cert` and `key` (both or neither)
/// are our client certificate, for peers that require one.
pub fn client_config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let ca = ca.ok_or_else(|| {
        TlsError::Config(
            "a CA file is required to verify the peer's certificate (ca_file)".to_owned(),
        )
    })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(load_roots(ca)?);
    let cfg = match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert, "client certificate")?, load_key(key)?)
            .map_err(|e| {
                file_err(
                    cert,
                    format!("does not work with the key {}: {e}", key.display()),
                )
            })?,
        _ => {
            return Err(TlsError::Config(
                "a client certificate needs both cert_file and key_file".to_owned(),
            ))
        }
    };
    Ok(Arc::new(cfg))
}

/// The name a server's certificate must carry: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| {
        TlsError::Config(format!(
            "{name:?} is neither a DNS name nor an IP address, so no certificate can match it"
        ))
    })
}

/// Whether `first_bytes` (what a peer sent first) look like a TLS ClientHello: a handshake
/// record (0x16) of TLS major version 3 (0x03 0x00..=0x04), carrying a ClientHello (0x01) when
/// enough bytes are there. A DICOM peer's first PDU starts 0x01 (A-ASSOCIATE-RQ), so a plain
/// port can tell "a TLS client on the wrong port" from garbage.
pub fn looks_like_tls_client_hello(first_bytes: &[u8]) -> bool {
    match first_bytes {
        [0x16, 0x03, minor, rest @ ..] if *minor <= 0x04 => rest.get(2).is_none_or(|&t| t == 0x01),
        [0x16, 0x03] | [0x16] => true,
        _ => false,
    }
}

/// What a non-TLS first byte means, for [`TlsError::NotTls`].
fn not_tls(first: &[u8], server: bool) -> TlsError {
    let hex: Vec<String> = first.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let hex = hex.join(" ");
    let pdu = match first.first() {
        Some(0x01) => Some("A-ASSOCIATE-RQ"),
        Some(0x02) => Some("A-ASSOCIATE-AC"),
        Some(0x03) => Some("A-ASSOCIATE-RJ"),
        Some(0x04) => Some("P-DATA-TF"),
        Some(0x05) => Some("A-RELEASE-RQ"),
        Some(0x06) => Some("A-RELEASE-RP"),
        Some(0x07) => Some("A-ABORT"),
        _ => None,
    };
    TlsError::NotTls(match (pdu, server) {
        (Some(p), true) => format!(
            "the peer sent a plain DICOM {p} PDU (bytes {hex}) to a TLS port; it must connect \
             with TLS or use the plain DICOM port"
        ),
        (Some(p), false) => format!(
            "the peer answered with a plain DICOM {p} PDU (bytes {hex}): the port does not speak \
             TLS"
        ),
        (None, _) => format!("the peer's first bytes ({hex}) are not a TLS record"),
    })
}

/// How many of the peer's first bytes are kept: a record header and the start of a
/// ClientHello, up to its version.
const FIRST_BYTES: usize = 16;

/// The highest version a ClientHello offers when it is older than TLS 1.2 (its
/// `client_version` < 3.3; TLS 1.2 and 1.3 clients both send 3.3 there).
fn old_client_hello(first: &[u8]) -> Option<&'static str> {
    match first {
        [0x16, 0x03, _, _, _, 0x01, _, _, _, 0x03, minor, ..] => match minor {
            0 => Some("SSL 3.0"),
            1 => Some("TLS 1.0"),
            2 => Some("TLS 1.1"),
            _ => None,
        },
        _ => None,
    }
}

/// Ciphertext read from the socket, not yet all given to rustls.
#[derive(Debug)]
struct Incoming {
    /// `None` while a socket read has it (or after such a read was cancelled).
    buf: Option<BytesMut>,
    /// How much of `buf` rustls has taken.
    pos: usize,
}

/// A TLS connection over a [`NetStream`], itself a [`NetStream`]; made by [`accept`] or
/// [`connect`]. One reader and one writer may use it at the same time.
pub struct TlsStream<S: NetStream> {
    io: S,
    conn: RefCell<Connection>,
    incoming: RefCell<Incoming>,
    /// The first bytes the peer sent, to tell a peer that does not speak TLS (or an old one).
    first: RefCell<Vec<u8>>,
    /// Held by whoever writes TLS records to `io`.
    write_lock: tokio::sync::Mutex<()>,
}

impl<S: NetStream> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

/// Outcome of one step of feeding rustls.
enum Fed {
    /// More input was processed.
    More,
    /// The socket reached end of file.
    Eof,
}

/// A failure while feeding rustls.
enum FeedError {
    Io(io::Error),
    Tls(rustls::Error),
}

impl From<FeedError> for io::Error {
    fn from(e: FeedError) -> io::Error {
        match e {
            FeedError::Io(e) => e,
            FeedError::Tls(e) => io::Error::new(io::ErrorKind::InvalidData, describe(&e)),
        }
    }
}

/// Takes whatever TLS records rustls has queued (bounded by its 64 KiB outgoing limit).
fn take_output(conn: &mut Connection) -> io::Result<Option<Bytes>> {
    if !conn.wants_write() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(16 * 1024);
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(Some(Bytes::from(out)))
}

impl<S: NetStream> TlsStream<S> {
    fn new(io: S, mut conn: Connection) -> TlsStream<S> {
        conn.set_buffer_limit(Some(64 * 1024));
        TlsStream {
            io,
            conn: RefCell::new(conn),
            incoming: RefCell::new(Incoming {
                buf: Some(BytesMut::with_capacity(CIPHERTEXT_CHUNK)),
                pos: 0,
            }),
            first: RefCell::new(Vec::new()),
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The negotiated protocol version and cipher suite, for logs ("TLSv1_3
    /// TLS13_AES_256_GCM_SHA384").
    pub fn describe_session(&self) -> String {
        let c = self.conn.borrow();
        let v = c
            .protocol_version()
            .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
        let s = c
            .negotiated_cipher_suite()
            .map_or_else(|| "?".to_owned(), |s| format!("{:?}", s.suite()));
        format!("{v} {s}")
    }

    /// The peer's certificate chain (leaf first), if it sent one.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        let c = self.conn.borrow();
        c.peer_certificates()
            .map(|cs| cs.iter().map(|c| c.clone().into_owned()).collect())
    }

    /// Writes out everything rustls has queued; the caller holds `write_lock`.
    async fn flush_locked(&self) -> io::Result<()> {
        loop {
            let out = take_output(&mut self.conn.borrow_mut())?;
            match out {
                None => return Ok(()),
                Some(b) => self.io.write_all(b).await?,
            }
        }
    }

    /// Writes out what rustls has queued while reading, unless a writer holds the lock: it
    /// then sends these records itself once its own are out (it drains rustls' queue until
    /// empty before letting go), so the reader never waits behind a writer stuck on a peer
    /// that does not read.
    async fn flush_if_idle(&self) -> io::Result<()> {
        if !self.conn.borrow().wants_write() {
            return Ok(());
        }
        match self.write_lock.try_lock() {
            Ok(_g) => self.flush_locked().await,
            Err(_) => Ok(()),
        }
    }

    /// Feeds rustls: ciphertext left from the last socket read first, else one socket read;
    /// processes the records, stopping as soon as plaintext is available so at most one
    /// buffer's worth is ever decrypted ahead of the caller.
    async fn feed(&self) -> Result<Fed, FeedError> {
        let empty = {
            let inc = self.incoming.borrow();
            inc.buf.as_ref().is_none_or(|b| inc.pos >= b.len())
        };
        if empty {
            let mut buf = {
                let mut inc = self.incoming.borrow_mut();
                inc.pos = 0;
                inc.buf.take().unwrap_or_default()
            };
            buf.clear();
            if buf.capacity() < CIPHERTEXT_CHUNK {
                buf.reserve(CIPHERTEXT_CHUNK);
            }
            let (res, buf) = self.io.read_buf(buf).await;
            let eof = buf.is_empty();
            {
                let mut first = self.first.borrow_mut();
                if first.is_empty() && !buf.is_empty() {
                    first.extend_from_slice(&buf[..buf.len().min(FIRST_BYTES)]);
                }
            }
            self.incoming.borrow_mut().buf = Some(buf);
            res.map_err(FeedError::Io)?;
            if eof {
                let mut c = self.conn.borrow_mut();
                let _ = c.read_tls(&mut io::empty());
                return Ok(Fed::Eof);
            }
        }
        let mut c = self.conn.borrow_mut();
        let mut inc = self.incoming.borrow_mut();
        let pos = inc.pos;
        let buf = inc.buf.as_ref().expect("put back above");
        let mut rest = &buf[pos..];
        let before = rest.len();
        while !rest.is_empty() {
            let read = c.read_tls(&mut rest);
            let state = c.process_new_packets().map_err(FeedError::Tls)?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                break;
            }
            match read {
                Ok(0) => break, // close_notify seen: nothing more is read
                Ok(_) => {}
                // rustls refuses input only while it holds plaintext (handled above) or an
                // oversized record (refused by process_new_packets): never loop on it.
                Err(e) => {
                    inc.pos = pos + (before - rest.len());
                    return Err(FeedError::Io(e));
                }
            }
        }
        inc.pos = pos + (before - rest.len());
        Ok(Fed::More)
    }

    /// Runs the handshake to its end, with the first bytes checked for being TLS at all.
    async fn drive_handshake(&self) -> Result<(), TlsError> {
        let server = matches!(&*self.conn.borrow(), Connection::Server(_));
        loop {
            {
                let _g = self.write_lock.lock().await;
                self.flush_locked().await.map_err(TlsError::Io)?;
            }
            if !self.conn.borrow().is_handshaking() {
                return Ok(());
            }
            let fed = self.feed().await;
            // Whatever rustls says of a peer that does not speak TLS, say that instead.
            {
                let first = self.first.borrow();
                if !first.is_empty() && !matches!(first[0], 0x14..=0x17) {
                    return Err(not_tls(&first, server));
                }
            }
            match fed {
                Ok(Fed::More) => {}
                Ok(Fed::Eof) => return Err(TlsError::PeerClosed(PEER_CLOSED_HINT)),
                Err(FeedError::Io(e)) => return Err(TlsError::from_blocking_io(e)),
                Err(FeedError::Tls(e)) => {
                    // Tell the peer why (rustls queued the alert), best effort.
                    let _ = self.flush_if_idle().await;
                    if let Some(v) = server
                        .then(|| old_client_hello(&self.first.borrow()))
                        .flatten()
                    {
                        return Err(TlsError::Handshake {
                            reason: format!(
                                "the client offers at most {v}, older than TLS 1.2, which \
                                 PS3.15 Annex B (BCP 195) requires"
                            ),
                            source: e,
                        });
                    }
                    return Err(TlsError::handshake(e));
                }
            }
        }
    }

    /// The handshake under `timeout`; on failure the socket is shut down (a read cancelled by
    /// the timeout would otherwise keep it open on io_uring).
    async fn handshake(self, timeout: Duration) -> Result<TlsStream<S>, TlsError> {
        let r = match tokio::time::timeout(timeout, self.drive_handshake()).await {
            Ok(r) => r,
            Err(_) => Err(TlsError::Timeout(timeout)),
        };
        match r {
            Ok(()) => Ok(self),
            Err(e) => {
                self.io.shutdown();
                Err(e)
            }
        }
    }

    /// Ends the TLS session in order: close_notify (after any records being written), then
    /// the socket is shut down. Waits at most `timeout` for the write.
    pub async fn close(&self, timeout: Duration) {
        let send = async {
            let _g = self.write_lock.lock().await;
            self.conn.borrow_mut().send_close_notify();
            let _ = self.flush_locked().await;
        };
        let _ = tokio::time::timeout(timeout, send).await;
        self.io.shutdown();
    }
}

impl<S: NetStream> NetStream for TlsStream<S> {
    /// Reads plaintext; 0 at the end of the stream. A TCP end without close_notify also reads
    /// as the end, not as an error: DICOM PDUs carry their own lengths, so a truncation is
    /// caught by the PDU layer, and many DICOM peers close TCP after A-RELEASE-RP without
    /// close_notify.
    async fn read_buf(&self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        if buf.capacity() == buf.len() {
            buf.reserve(64 * 1024);
        }
        loop {
            {
                let mut c = self.conn.borrow_mut();
                let mut r = c.reader();
                match r.fill_buf() {
                    Ok(chunk) => {
                        let n = chunk.len().min(buf.capacity() - buf.len());
                        buf.extend_from_slice(&chunk[..n]);
                        r.consume(n);
                        return (Ok(n), buf);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (Ok(0), buf),
                    Err(e) => return (Err(e), buf),
                }
            }
            if let Err(e) = self.flush_if_idle().await {
                return (Err(e), buf);
            }
            match self.feed().await {
                Ok(_) => {}
                Err(e) => {
                    let _ = self.flush_if_idle().await;
                    return (Err(e.into()), buf);
                }
            }
        }
    }

    async fn write_all(&self, data: Bytes) -> io::Result<()> {
        let _g = self.write_lock.lock().await;
        let mut pos = 0;
        while pos < data.len() {
            let end = data.len().min(pos + PLAINTEXT_CHUNK);
            let n = self.conn.borrow_mut().writer().write(&data[pos..end])?;
            if n == 0 && !self.conn.borrow().wants_write() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            pos += n;
            self.flush_locked().await?;
        }
        Ok(())
    }

    /// Queues close_notify and tries to send it without waiting (it goes out if the socket
    /// takes it at once and no write is in progress), then shuts the socket down. For an
    /// orderly end that waits for close_notify to be written, use [`TlsStream::close`].
    fn shutdown(&self) {
        // Outside a runtime (a drop during teardown) a socket write cannot even be started.
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        if let (true, Ok(_g)) = (in_runtime, self.write_lock.try_lock()) {
            let out = {
                let mut c = self.conn.borrow_mut();
                c.send_close_notify();
                take_output(&mut c).ok().flatten()
            };
            if let Some(out) = out {
                poll_once(self.io.write_all(out));
            }
        }
        self.io.shutdown();
    }
}

/// Polls `f` once with a waker that does nothing: a write the socket can take at once
/// completes; otherwise it is dropped (best effort, as for a close_notify on shutdown).
fn poll_once<F: Future>(f: F) {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = f.as_mut().poll(&mut cx);
}

/// Server side of a handshake on an accepted connection, within `timeout`.
pub async fn accept<S: NetStream>(
    stream: S,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<TlsStream<S>, TlsError> {
    let conn = ServerConnection::new(config).map_err(TlsError::handshake)?;
    TlsStream::new(stream, Connection::Server(conn))
        .handshake(timeout)
        .await
}

/// Client side of a handshake on a connected stream, within `timeout`; the server's
/// certificate must be valid for `server_name` (DNS name or IP address).
pub async fn connect<S: NetStream>(
    stream: S,
    config: Arc<ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<TlsStream<S>, TlsError> {
    let name = self::server_name(server_name)?;
    let conn = ClientConnection::new(config, name).map_err(TlsError::handshake)?;
    TlsStream::new(stream, Connection::Client(conn))
        .handshake(timeout)
        .await
}

#[cfg(test)]
#[path = "../tests/util/certs.rs"]
mod certs;

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::rc::Rc;
    use std::sync::OnceLock;

    use tokio::net::{TcpListener, TcpStream};

    use super::certs::{make, TestCerts};
    use super::*;
    use crate::rt::{Epoll, Io};

    const T: Duration = Duration::from_secs(10);

    /// One set of certificates per test process (openssl takes a moment per key).
    fn certs() -> &'static TestCerts {
        static C: OnceLock<(tempfile::TempDir, TestCerts)> = OnceLock::new();
        &C.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let c = make(dir.path());
            (dir, c)
        })
        .1
    }

    fn run<F: Future<Output = ()> + 'static>(f: F) {
        Epoll::block_on(f).unwrap();
    }

    fn server(mutual: bool) -> Arc<ServerConfig> {
        let c = certs();
        server_config(&c.server_cert, &c.server_key, mutual.then_some(&*c.ca)).unwrap()
    }

    fn client(with_cert: bool) -> Arc<ClientConfig> {
        let c = certs();
        if with_cert {
            client_config(Some(&c.ca), Some(&c.client_cert), Some(&c.client_key)).unwrap()
        } else {
            client_config(Some(&c.ca), None, None).unwrap()
        }
    }

    /// A connected loopback pair: (client side, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    type Both = (
        Result<TlsStream<TcpStream>, TlsError>,
        Result<TlsStream<TcpStream>, TlsError>,
    );

    /// Handshakes both sides over a real socket pair: (client, server).
    async fn tls_pair(s: Arc<ServerConfig>, c: Arc<ClientConfig>) -> Both {
        let (cs, ss) = pair().await;
        let srv = tokio::task::spawn_local(accept(ss, s, T));
        let cl = connect(cs, c, "127.0.0.1", T).await;
        (cl, srv.await.unwrap())
    }

    async fn read_exact(s: &impl NetStream, n: usize) -> Vec<u8> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let (r, b) = s.read_buf(buf).await;
            buf = b;
            let got = r.unwrap();
            assert!(got > 0, "EOF after {} of {n} bytes", out.len());
            out.extend_from_slice(&buf);
            buf.clear();
        }
        assert_eq!(out.len(), n, "read past the expected end");
        out
    }

    fn pattern(n: usize, seed: u8) -> Bytes {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn handshake_and_both_directions() {
        run(async {
            let (c, s) = tls_pair(server(false), client(false)).await;
            let (c, s) = (c.unwrap(), s.unwrap());
            assert!(
                c.describe_session().starts_with("TLSv1_3"),
                "{}",
                c.describe_session()
            );
            c.write_all(Bytes::from_static(b"A-ASSOCIATE-RQ"))
                .await
                .unwrap();
            assert_eq!(read_exact(&s, 14).await, b"A-ASSOCIATE-RQ");
            s.write_all(Bytes::from_static(b"A-ASSOCIATE-AC!"))
                .await
                .unwrap();
            assert_eq!(read_exact(&c, 15).await, b"A-ASSOCIATE-AC!");
            assert!(s.peer_certificates().is_none());
            // An orderly end reads as the end of the stream on the other side.
            c.close(T).await;
            let (r, _) = s.read_buf(BytesMut::with_capacity(16)).await;
            assert_eq!(r.unwrap(), 0);
        });
    }

    /// `shutdown()` (not async) still sends close_notify when the socket takes it at once:
    /// the other side sees an orderly TLS end, not a bare TCP close.
    #[test]
    fn shutdown_sends_close_notify() {
        run(async {
            let (c, s) = tls_pair(server(false), client(false)).await;
            let (c, s) = (c.unwrap(), s.unwrap());
            c.shutdown();
            let (r, _) = s.read_buf(BytesMut::with_capacity(16)).await;
            assert_eq!(r.unwrap(), 0);
            let mut one = [0u8; 1];
            let orderly = s.conn.borrow_mut().reader().read(&mut one);
            assert!(matches!(orderly, Ok(0)), "no close_notify: {orderly:?}");
        });
    }

    #[test]
    fn tls12_with_ecdhe_gcm_is_accepted() {
        run(async {
            let c = certs();
            let cfg = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(load_roots(&c.ca).unwrap())
                .with_no_client_auth();
            let (c, s) = tls_pair(server(false), Arc::new(cfg)).await;
            let (c, s) = (c.unwrap(), s.unwrap());
            let d = s.describe_session();
            assert!(d.starts_with("TLSv1_2") && d.contains("GCM"), "{d}");
            c.write_all(Bytes::from_static(b"x")).await.unwrap();
            assert_eq!(read_exact(&s, 1).await, b"x");
        });
    }

    /// Both sides send 8 MiB while reading 8 MiB, each with a reader task and a writer task
    /// on the same stream: neither direction waits for the other, and the bytes arrive intact.
    #[test]
    fn concurrent_read_and_write_of_large_transfers() {
        run(async {
            const N: usize = 8 << 20;
            let (c, s) = tls_pair(server(false), client(false)).await;
            let (c, s) = (Rc::new(c.unwrap()), Rc::new(s.unwrap()));
            let mut tasks = Vec::new();
            for (me, seed) in [(c.clone(), 1u8), (s.clone(), 2u8)] {
                let w = me.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    // Uneven pieces: records do not line up with writes.
                    let data = pattern(N, seed);
                    let mut pos = 0;
                    let mut step = 1000;
                    while pos < N {
                        let end = N.min(pos + step);
                        w.write_all(data.slice(pos..end)).await.unwrap();
                        pos = end;
                        step = step * 3 % 300_007 + 1;
                    }
                    Vec::new()
                }));
                tasks.push(tokio::task::spawn_local(async move {
                    read_exact(&*me, N).await
                }));
            }
            let mut got = Vec::new();
            for t in tasks {
                got.push(t.await.unwrap());
            }
            // The client read what the server wrote, and the other way round.
            assert!(got[1] == pattern(N, 2), "client received other bytes");
            assert!(got[3] == pattern(N, 1), "server received other bytes");
        });
    }

    /// The same over io_uring (tokio-uring streams): handshake, then 4 MiB each way at the
    /// same time. Where io_uring is disabled the test says so and checks nothing.
    #[test]
    fn concurrent_transfers_over_io_uring() {
        if let Err(e) = crate::rt::probe_uring() {
            eprintln!("io_uring unavailable ({e}): not tested on this machine");
            return;
        }
        crate::rt::Uring::block_on(async {
            const N: usize = 4 << 20;
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let l = tokio_uring::net::TcpListener::from_std(l);
            let c = tokio_uring::net::TcpStream::connect(addr).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            let srv = tokio::task::spawn_local(accept(s, server(true), T));
            let c = connect(c, client(true), "127.0.0.1", T).await.unwrap();
            let s = srv.await.unwrap().unwrap();
            let (c, s) = (Rc::new(c), Rc::new(s));
            let mut tasks = Vec::new();
            for (me, seed) in [(c.clone(), 3u8), (s.clone(), 4u8)] {
                let w = me.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    w.write_all(pattern(N, seed)).await.unwrap();
                    Vec::new()
                }));
                tasks.push(tokio::task::spawn_local(async move {
                    read_exact(&*me, N).await
                }));
            }
            let mut got = Vec::new();
            for t in tasks {
                got.push(t.await.unwrap());
            }
            assert!(got[1] == pattern(N, 4), "client received other bytes");
            assert!(got[3] == pattern(N, 3), "server received other bytes");
        })
        .unwrap();
    }

    #[test]
    fn mutual_tls_accepts_a_client_with_a_certificate_from_the_ca() {
        run(async {
            let (c, s) = tls_pair(server(true), client(true)).await;
            let (c, s) = (c.unwrap(), s.unwrap());
            assert_eq!(s.peer_certificates().map(|v| v.len()), Some(1));
            c.write_all(Bytes::from_static(b"ok")).await.unwrap();
            assert_eq!(read_exact(&s, 2).await, b"ok");
        });
    }

    #[test]
    fn mutual_tls_refuses_a_client_without_a_certificate() {
        run(async {
            let (c, s) = tls_pair(server(true), client(false)).await;
            let e = s.expect_err("the server refuses");
            assert!(e.to_string().contains("no certificate"), "{e}");
            // TLS 1.3: the client learns it at its first read (the server's alert).
            if let Ok(c) = c {
                let (r, _) = c.read_buf(BytesMut::with_capacity(16)).await;
                let e = r.expect_err("the client is told");
                assert!(e.to_string().contains("certificate"), "{e}");
            }
        });
    }

    #[test]
    fn mutual_tls_refuses_a_client_certificate_from_another_ca() {
        run(async {
            let k = certs();
            let other = client_config(
                Some(&k.ca),
                Some(&k.other_client_cert),
                Some(&k.other_client_key),
            )
            .unwrap();
            let (_, s) = tls_pair(server(true), other).await;
            let e = s.expect_err("the server refuses");
            assert!(e.to_string().contains("not issued by a CA we trust"), "{e}");
        });
    }

    #[test]
    fn client_refuses_a_server_from_an_unknown_ca_or_for_another_name() {
        run(async {
            let k = certs();
            let other = server_config(&k.other_server_cert, &k.other_server_key, None).unwrap();
            let (c, s) = tls_pair(other, client(false)).await;
            let e = c.expect_err("the client refuses");
            assert!(e.to_string().contains("not issued by a CA we trust"), "{e}");
            let e = s.expect_err("the server is told");
            assert!(
                e.to_string().contains("does not trust our certificate"),
                "{e}"
            );

            let (cs, ss) = pair().await;
            let srv = tokio::task::spawn_local(accept(ss, server(false), T));
            let e = connect(cs, client(false), "dicom.example.org", T)
                .await
                .expect_err("wrong name refused");
            assert!(e.to_string().contains("does not name the host"), "{e}");
            let _ = srv.await;
        });
    }

    #[test]
    fn plain_dicom_on_a_tls_accept_is_named_as_such() {
        run(async {
            let (c, s) = pair().await;
            let srv = tokio::task::spawn_local(accept(s, server(false), T));
            // The start of an A-ASSOCIATE-RQ.
            let mut rq = vec![0x01, 0x00, 0x00, 0x00, 0x00, 0xcd, 0x00, 0x01];
            rq.resize(0xcd + 6, 0x20);
            NetStream::write_all(&c, Bytes::from(rq)).await.unwrap();
            let e = srv.await.unwrap().expect_err("refused");
            assert!(matches!(e, TlsError::NotTls(_)), "{e:?}");
            assert!(e.to_string().contains("plain DICOM A-ASSOCIATE-RQ"), "{e}");
            // The server shut the connection.
            let (r, _) = NetStream::read_buf(&c, BytesMut::with_capacity(64)).await;
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        });
    }

    #[test]
    fn a_tls_client_meeting_a_plain_dicom_peer_is_told_so() {
        run(async {
            let (c, s) = pair().await;
            let peer = tokio::task::spawn_local(async move {
                let (_, _) = NetStream::read_buf(&s, BytesMut::with_capacity(4096)).await;
                // A-ABORT, as a plain DICOM port answers garbage.
                NetStream::write_all(&s, Bytes::from_static(&[7, 0, 0, 0, 0, 4, 0, 0, 2, 0]))
                    .await
                    .unwrap();
                s
            });
            let e = connect(c, client(false), "127.0.0.1", T)
                .await
                .expect_err("refused");
            assert!(e.to_string().contains("plain DICOM A-ABORT"), "{e}");
            drop(peer.await);
        });
    }

    /// A TLS 1.1 ClientHello (client_version 3.2, no extensions) is refused with a fatal
    /// alert and a reason naming the version.
    #[test]
    fn a_tls11_only_client_is_refused() {
        run(async {
            let (c, s) = pair().await;
            let srv = tokio::task::spawn_local(accept(s, server(false), T));
            let mut body = vec![0x03, 0x02];
            body.extend([0x5a; 32]); // random
            body.push(0); // session id
            body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE_RSA_AES128_CBC_SHA, RSA_AES128_CBC_SHA
            body.extend([0x01, 0x00]); // null compression; no extensions
            let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
            hs.extend(&body);
            let mut rec = vec![0x16, 0x03, 0x02, 0x00, hs.len() as u8];
            rec.extend(&hs);
            assert!(looks_like_tls_client_hello(&rec));
            NetStream::write_all(&c, Bytes::from(rec)).await.unwrap();
            let e = srv.await.unwrap().expect_err("refused");
            assert!(
                e.to_string()
                    .contains("at most TLS 1.1, older than TLS 1.2"),
                "{e}"
            );
            let (r, b) = NetStream::read_buf(&c, BytesMut::with_capacity(64)).await;
            assert!(r.unwrap() >= 7, "an alert record");
            assert_eq!(b[0], 0x15, "alert record: {b:?}");
            assert_eq!(b[5], 2, "a fatal alert: {b:?}");
        });
    }

    #[test]
    fn a_silent_peer_times_out() {
        run(async {
            let (_c, s) = pair().await;
            let e = accept(s, server(false), Duration::from_millis(200))
                .await
                .expect_err("times out");
            assert!(matches!(e, TlsError::Timeout(_)), "{e:?}");
        });
    }

    #[test]
    fn client_hello_detection() {
        assert!(looks_like_tls_client_hello(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0, 1, 0xfc
        ]));
        assert!(looks_like_tls_client_hello(&[0x16, 0x03]));
        assert!(!looks_like_tls_client_hello(&[
            0x01, 0x00, 0x00, 0x00, 0x00, 0xcd
        ]));
        assert!(!looks_like_tls_client_hello(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x02
        ]));
        assert!(!looks_like_tls_client_hello(b"GET / HTTP/1.1"));
        assert!(!looks_like_tls_client_hello(&[]));
    }

    #[test]
    fn configuration_errors_name_the_file_and_the_problem() {
        let k = certs();
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &k.server_key, None).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = server_config(&garbage, &k.server_key, None).unwrap_err();
        assert!(
            e.to_string().contains("garbage.pem") && e.to_string().contains("no PEM certificate"),
            "{e}"
        );
        let e = server_config(&k.server_cert, &garbage, None).unwrap_err();
        assert!(
            e.to_string().contains("garbage.pem") && e.to_string().contains("private key"),
            "{e}"
        );
        let e = server_config(&k.server_cert, &k.client_key, None).unwrap_err();
        assert!(e.to_string().contains("does not work with the key"), "{e}");
        let e = server_config(&k.server_cert, &k.server_key, Some(&garbage)).unwrap_err();
        assert!(e.to_string().contains("garbage.pem"), "{e}");
        let e = client_config(None, None, None).unwrap_err();
        assert!(e.to_string().contains("CA file is required"), "{e}");
        let e = client_config(Some(&k.ca), Some(&k.client_cert), None).unwrap_err();
        assert!(e.to_string().contains("both cert_file and key_file"), "{e}");
        assert!(server_name("bad name!").is_err());
        assert!(server_name("127.0.0.1").is_ok() && server_name("pacs.example.org").is_ok());
    }
}
