//! A scripted raw-socket DICOM peer for protocol tests: it sends exactly the bytes a test
//! asks for (well-formed or not) and reports exactly what came back, PDU by PDU.
//!
//! Well-formed PDUs are encoded with dicom-ul's pure encoder and DIMSE command sets with the
//! library's encoders, so a test can build a valid association and then break one thing.
//! Every read is bounded by [`IO_TIMEOUT`]: a daemon that hangs makes the test fail, never
//! hang. Use with `mod peer;` at the top of a test file.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dicom_gw::net::dimse::command::{decode_command, encode_echo_rq, encode_store_rq, Command};
use dicom_gw::net::ul::pdata::encode_message;
use dicom_ul::pdu::{
    read_pdu, write_pdu, AssociationAC, AssociationRQ, Pdu, PresentationContextProposed,
    PresentationContextResultReason, UserVariableItem, MAXIMUM_PDU_SIZE,
};

/// Longest any single wait for the daemon may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Verification SOP Class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// CT Image Storage.
pub const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
/// MR Image Storage.
pub const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
/// Implicit VR Little Endian.
pub const TS_IMPLICIT_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const TS_EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// DICOM application context name.
pub const APP_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Maximum PDU length the peer announces.
pub const PEER_MAX_PDU: u32 = 16384;

/// PDU type bytes (PS3.8 §9.3.1).
pub mod pdu_type {
    /// A-ASSOCIATE-RQ
    pub const ASSOCIATE_RQ: u8 = 0x01;
    /// A-ASSOCIATE-AC
    pub const ASSOCIATE_AC: u8 = 0x02;
    /// A-ASSOCIATE-RJ
    pub const ASSOCIATE_RJ: u8 = 0x03;
    /// P-DATA-TF
    pub const P_DATA: u8 = 0x04;
    /// A-RELEASE-RQ
    pub const RELEASE_RQ: u8 = 0x05;
    /// A-RELEASE-RP
    pub const RELEASE_RP: u8 = 0x06;
    /// A-ABORT
    pub const ABORT: u8 = 0x07;
}

/// What one read from the daemon produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A whole PDU: its type and all its bytes, header included.
    Pdu(u8, Vec<u8>),
    /// The daemon closed the connection (EOF, or reset). `partial` bytes of an unfinished PDU
    /// may have arrived before.
    Closed { partial: usize, reset: bool },
    /// Nothing (complete) arrived within [`IO_TIMEOUT`].
    TimedOut,
}

impl Received {
    /// The PDU type, if a PDU arrived.
    pub fn pdu_type(&self) -> Option<u8> {
        match self {
            Received::Pdu(t, _) => Some(*t),
            _ => None,
        }
    }
}

/// The proposed presentation contexts of a default association: 1 = Verification (Implicit
/// LE), 3 = CT Image Storage (Explicit LE).
pub fn default_contexts() -> Vec<(u8, String, Vec<String>)> {
    vec![
        (1, VERIFICATION.into(), vec![TS_IMPLICIT_LE.into()]),
        (3, CT.into(), vec![TS_EXPLICIT_LE.into()]),
    ]
}

/// An A-ASSOCIATE-RQ with the given AE titles and presentation contexts
/// `(id, abstract syntax, transfer syntaxes)`, announcing [`PEER_MAX_PDU`].
pub fn association_rq(
    calling: &str,
    called: &str,
    contexts: &[(u8, String, Vec<String>)],
) -> AssociationRQ {
    AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: called.into(),
        application_context_name: APP_CONTEXT.into(),
        presentation_contexts: contexts
            .iter()
            .map(|(id, a, ts)| PresentationContextProposed {
                id: *id,
                abstract_syntax: a.clone(),
                transfer_syntaxes: ts.clone(),
            })
            .collect(),
        user_variables: vec![
            UserVariableItem::MaxLength(PEER_MAX_PDU),
            UserVariableItem::ImplementationClassUID("1.2.826.0.1.3680043.10.999.2".into()),
            UserVariableItem::ImplementationVersionName("GWTEST_PEER".into()),
        ],
    }
}

/// Encodes a PDU with dicom-ul.
pub fn encode_pdu(pdu: &Pdu) -> Vec<u8> {
    let mut out = Vec::new();
    write_pdu(&mut out, pdu).expect("encode PDU");
    out
}

/// One P-DATA-TF holding one PDV item (raw: any context id, any flags).
pub fn pdata_pdu(pc_id: u8, is_command: bool, is_last: bool, data: &[u8]) -> Vec<u8> {
    let pdv_len = data.len() as u32 + 2;
    let mut out = vec![pdu_type::P_DATA, 0];
    out.extend_from_slice(&(pdv_len + 4).to_be_bytes());
    out.extend_from_slice(&pdv_len.to_be_bytes());
    out.push(pc_id);
    out.push(u8::from(is_command) | (u8::from(is_last) << 1));
    out.extend_from_slice(data);
    out
}

/// Decodes the A-ABORT source and reason bytes of an A-ABORT PDU.
pub fn abort_source_reason(pdu: &[u8]) -> (u8, u8) {
    assert!(
        pdu.len() >= 10 && pdu[0] == pdu_type::ABORT,
        "not an A-ABORT: {pdu:02X?}"
    );
    (pdu[8], pdu[9])
}

/// A connection to the daemon.
pub struct Peer {
    stream: TcpStream,
    /// Maximum PDU length the daemon announced (0 until associated).
    pub daemon_max_pdu: u32,
    /// The A-ASSOCIATE-AC, once associated.
    pub ac: Option<AssociationAC>,
}

impl Peer {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> Peer {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Peer {
            stream,
            daemon_max_pdu: 0,
            ac: None,
        }
    }

    /// Connects to 127.0.0.1:`port` from the local address `from` (another loopback address
    /// such as 127.0.0.2 stands for a peer on another network).
    pub fn connect_from(port: u16, from: std::net::Ipv4Addr) -> Peer {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&std::net::SocketAddr::from((from, 0)).into())
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port} from {from}: {e}"));
        let stream: TcpStream = s.into();
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Peer {
            stream,
            daemon_max_pdu: 0,
            ac: None,
        }
    }

    /// Sends an A-ASSOCIATE-RQ on a connected peer; returns the daemon's first answer.
    pub fn send_rq(&mut self, rq: AssociationRQ) -> Received {
        self.send(&encode_pdu(&Pdu::AssociationRQ(rq)))
            .expect("send A-ASSOCIATE-RQ");
        self.recv()
    }

    /// Connects and sends an A-ASSOCIATE-RQ; returns the peer and the daemon's first answer.
    pub fn request(port: u16, rq: AssociationRQ) -> (Peer, Received) {
        let mut p = Peer::connect(port);
        p.send(&encode_pdu(&Pdu::AssociationRQ(rq)))
            .expect("send A-ASSOCIATE-RQ");
        let r = p.recv();
        if let Received::Pdu(pdu_type::ASSOCIATE_AC, bytes) = &r {
            match read_pdu(&bytes[..], MAXIMUM_PDU_SIZE, false) {
                Ok(Some(Pdu::AssociationAC(ac))) => {
                    p.daemon_max_pdu =
                        dicom_gw::net::ul::association::max_length(&ac.user_variables);
                    p.ac = Some(ac);
                }
                other => panic!("undecodable A-ASSOCIATE-AC: {other:?}"),
            }
        }
        (p, r)
    }

    /// Associates with the default AE titles and contexts; panics unless accepted.
    pub fn associate(port: u16) -> Peer {
        Peer::associate_with(
            port,
            association_rq("GWTEST", "DICOM_GW", &default_contexts()),
        )
    }

    /// Associates with `rq`; panics unless accepted.
    pub fn associate_with(port: u16, rq: AssociationRQ) -> Peer {
        let (p, r) = Peer::request(port, rq);
        assert_eq!(
            r.pdu_type(),
            Some(pdu_type::ASSOCIATE_AC),
            "association not accepted: {r:?}"
        );
        p
    }

    /// The daemon's result for presentation context `id` in the A-ASSOCIATE-AC.
    pub fn context_result(&self, id: u8) -> PresentationContextResultReason {
        self.ac
            .as_ref()
            .expect("not associated")
            .presentation_contexts
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no result for presentation context {id}"))
            .reason
            .clone()
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Fills `buf` before `deadline`; Err(read so far, reset?) on EOF/reset, Ok(false) on
    /// timeout.
    fn fill(&mut self, buf: &mut [u8], deadline: Instant) -> Result<bool, (usize, bool)> {
        let mut got = 0;
        while got < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => return Err((got, false)),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(false)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Err((got, true))
                }
                Err(e) => panic!("read from daemon: {e}"),
            }
        }
        Ok(true)
    }

    /// Reads the next whole PDU (or close, or timeout), waiting at most [`IO_TIMEOUT`].
    pub fn recv(&mut self) -> Received {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut header = [0u8; 6];
        match self.fill(&mut header, deadline) {
            Ok(true) => {}
            Ok(false) => return Received::TimedOut,
            Err((partial, reset)) => return Received::Closed { partial, reset },
        }
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        assert!(
            len <= 64 * 1024 * 1024,
            "daemon sent a PDU header announcing {len} bytes: {header:02X?}"
        );
        let mut pdu = vec![0u8; 6 + len];
        pdu[..6].copy_from_slice(&header);
        match self.fill(&mut pdu[6..], deadline) {
            Ok(true) => Received::Pdu(header[0], pdu),
            Ok(false) => Received::TimedOut,
            Err((partial, reset)) => Received::Closed {
                partial: 6 + partial,
                reset,
            },
        }
    }

    /// Expects the connection to end without a further PDU (a clean close or a reset), within
    /// [`IO_TIMEOUT`].
    pub fn expect_close(&mut self, what: &str) {
        match self.recv() {
            Received::Closed { partial: 0, .. } => {}
            other => panic!("{what}: expected the daemon to close the connection, got {other:?}"),
        }
    }

    /// Expects an A-ABORT PDU followed by the connection closing; returns (source, reason).
    pub fn expect_abort_and_close(&mut self, what: &str) -> (u8, u8) {
        let r = self.recv();
        let Received::Pdu(pdu_type::ABORT, bytes) = &r else {
            panic!("{what}: expected A-ABORT (0x07), got {r:?}");
        };
        assert_eq!(bytes.len(), 10, "{what}: A-ABORT length: {bytes:02X?}");
        let sr = abort_source_reason(bytes);
        self.expect_close(&format!("{what} (after A-ABORT)"));
        sr
    }

    /// Sends one P-DATA-TF with one PDV.
    pub fn send_pdv(&mut self, pc_id: u8, is_command: bool, is_last: bool, data: &[u8]) {
        self.send(&pdata_pdu(pc_id, is_command, is_last, data))
            .expect("send P-DATA-TF");
    }

    /// Sends `data` as dataset fragments within the daemon's maximum PDU length; the last
    /// fragment is flagged last only if `last`.
    pub fn send_fragments(&mut self, pc_id: u8, data: &[u8], last: bool) {
        let max = (self.daemon_max_pdu as usize).saturating_sub(6).max(2);
        let n = data.chunks(max).count();
        for (i, chunk) in data.chunks(max).enumerate() {
            self.send_pdv(pc_id, false, last && i + 1 == n, chunk);
        }
    }

    /// Sends a whole message (command or dataset) as the library's SCU side would.
    pub fn send_message(&mut self, pc_id: u8, is_command: bool, data: &[u8]) {
        let mut out = BytesMut::new();
        encode_message(&mut out, pc_id, is_command, data, self.daemon_max_pdu);
        self.send(&out).expect("send message");
    }

    /// Reads one complete DIMSE response command set (P-DATA-TF PDUs until the last command
    /// fragment) and decodes it; panics on anything else.
    pub fn read_response(&mut self) -> Command {
        let mut command = Vec::new();
        loop {
            let r = self.recv();
            let Received::Pdu(pdu_type::P_DATA, pdu) = &r else {
                panic!("expected a DIMSE response (P-DATA-TF), got {r:?}");
            };
            let mut body = &pdu[6..];
            while !body.is_empty() {
                assert!(body.len() >= 6, "short PDV item in response: {pdu:02X?}");
                let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
                let control = body[5];
                assert!(control & 1 == 1, "response holds a dataset fragment");
                command.extend_from_slice(&body[6..4 + len]);
                if control & 2 != 0 {
                    return decode_command(&command).expect("decode response command");
                }
                body = &body[4 + len..];
            }
        }
    }

    /// C-ECHO on `pc_id`; returns the response status.
    pub fn echo(&mut self, pc_id: u8, message_id: u16) -> u16 {
        self.send_message(pc_id, true, &encode_echo_rq(message_id));
        let rsp = self.read_response();
        assert_eq!(rsp.command_field, 0x8030, "not a C-ECHO-RSP: {rsp:?}");
        assert_eq!(rsp.message_id, message_id);
        rsp.status.expect("C-ECHO-RSP without status")
    }

    /// C-STORE of `dataset` (already in the context's transfer syntax) on `pc_id` with the given
    /// command UIDs; returns the response.
    pub fn store(
        &mut self,
        pc_id: u8,
        message_id: u16,
        sop_class: &str,
        sop_instance: &str,
        dataset: &[u8],
    ) -> Command {
        self.send_message(
            pc_id,
            true,
            &encode_store_rq(message_id, sop_class, sop_instance),
        );
        self.send_message(pc_id, false, dataset);
        let rsp = self.read_response();
        assert_eq!(rsp.command_field, 0x8001, "not a C-STORE-RSP: {rsp:?}");
        assert_eq!(rsp.message_id, message_id);
        rsp
    }

    /// A-RELEASE-RQ; expects A-RELEASE-RP, then half-closes and waits for the daemon to close
    /// (so the daemon has finished with the association when this returns).
    pub fn release(mut self) {
        self.send(&encode_pdu(&Pdu::ReleaseRQ))
            .expect("send A-RELEASE-RQ");
        let r = self.recv();
        assert_eq!(
            r.pdu_type(),
            Some(pdu_type::RELEASE_RP),
            "expected A-RELEASE-RP: {r:?}"
        );
        self.finish();
    }

    /// Half-closes and waits (bounded) for the daemon to close its side.
    pub fn finish(mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        self.expect_close("closing");
    }
}
