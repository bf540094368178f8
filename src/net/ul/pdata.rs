//! Zero-copy framing of the upper-layer byte stream (PS3.8 §9.3).
//!
//! Every PDU starts with a 6-byte header: PDU-type (1 byte), reserved (1 byte), PDU-length
//! (4 bytes, big endian). [`peek_header`] reads it and [`check_length`] enforces our limits
//! *before* a single byte of the body is buffered, so a peer announcing a 4 GiB PDU costs us
//! nothing. P-DATA-TF bodies are split by [`split_pdata`] into [`Pdv`]s whose `data` are
//! `Bytes` slices of the received buffer: the dataset bytes are never copied on their way to
//! disk. The other PDUs (association, release, abort) are small and decoded with dicom-ul.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the PDU header: type, reserved, 32-bit big-endian length (PS3.8 Table 9-22).
pub const PDU_HEADER_LEN: usize = 6;
/// Length of a PDV item header inside P-DATA-TF: 32-bit length, context ID, control header.
pub const PDV_HEADER_LEN: usize = 6;
/// Upper bound for the body of any PDU that is not P-DATA-TF. An A-ASSOCIATE-RQ with the
/// maximum of 128 presentation contexts, each proposing a dozen transfer syntaxes, is about
/// 40 KB (DCMTK's storescu sends about 14 KB); anything larger is hostile or broken, and this
/// is what an unassociated connection may make us buffer (audit H6, H7).
pub const MAX_CONTROL_PDU_LEN: u32 = 128 * 1024;

/// PDU types, with their wire values (PS3.8 §9.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PduType {
    /// A-ASSOCIATE-RQ
    AssociateRq = 0x01,
    /// A-ASSOCIATE-AC
    AssociateAc = 0x02,
    /// A-ASSOCIATE-RJ
    AssociateRj = 0x03,
    /// P-DATA-TF
    PData = 0x04,
    /// A-RELEASE-RQ
    ReleaseRq = 0x05,
    /// A-RELEASE-RP
    ReleaseRp = 0x06,
    /// A-ABORT
    Abort = 0x07,
}

impl PduType {
    /// Maps a wire value to a PDU type; `None` is an unrecognized PDU (PS3.8 Evt19).
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::AssociateRq,
            0x02 => Self::AssociateAc,
            0x03 => Self::AssociateRj,
            0x04 => Self::PData,
            0x05 => Self::ReleaseRq,
            0x06 => Self::ReleaseRp,
            0x07 => Self::Abort,
            _ => return None,
        })
    }
}

/// A decoded PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduHeader {
    /// Raw PDU-type byte (kept raw so unknown types can be reported).
    pub pdu_type: u8,
    /// Length of the body that follows the header.
    pub length: u32,
}

impl PduHeader {
    /// Header plus body, in bytes.
    pub fn total_len(&self) -> usize {
        PDU_HEADER_LEN + self.length as usize
    }
}

/// Framing errors: each one ends the association with an A-ABORT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The PDU-type byte is not one PS3.8 defines.
    #[error("unrecognized PDU type 0x{0:02X}")]
    UnknownPduType(u8),
    /// A P-DATA-TF longer than the maximum length we announced.
    #[error("P-DATA-TF of {length} bytes exceeds our maximum PDU length {max}")]
    PDataTooLong {
        /// Announced length.
        length: u32,
        /// Our limit.
        max: u32,
    },
    /// A control PDU longer than [`MAX_CONTROL_PDU_LEN`].
    #[error("PDU type 0x{pdu_type:02X} of {length} bytes exceeds the {max}-byte limit")]
    ControlPduTooLong {
        /// PDU type.
        pdu_type: u8,
        /// Announced length.
        length: u32,
        /// The limit.
        max: u32,
    },
    /// A P-DATA-TF must hold at least one PDV item.
    #[error("P-DATA-TF holds no PDV item")]
    EmptyPData,
    /// A PDV item length below 2 cannot hold context ID and control header.
    #[error("PDV item length {0} is too short")]
    PdvTooShort(u32),
    /// A PDV item longer than what is left of its PDU.
    #[error("PDV item of {length} bytes overruns its PDU ({remaining} bytes left)")]
    PdvOverrun {
        /// Item length announced.
        length: u32,
        /// Bytes left in the PDU body.
        remaining: usize,
    },
    /// PS3.8 §9.3.5.1: presentation context IDs are odd numbers.
    #[error("PDV presentation context ID {0} is not odd")]
    EvenContextId(u8),
}

/// Reads the 6-byte PDU header if enough bytes are there.
pub fn peek_header(buf: &[u8]) -> Option<PduHeader> {
    if buf.len() < PDU_HEADER_LEN {
        return None;
    }
    Some(PduHeader {
        pdu_type: buf[0],
        length: u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]),
    })
}

/// Enforces the length limits on a header: P-DATA-TF at most `max_pdata_len` (the Maximum
/// Length we announced), control PDUs at most [`MAX_CONTROL_PDU_LEN`].
pub fn check_length(header: PduHeader, max_pdata_len: u32) -> Result<PduType, FramingError> {
    let ty =
        PduType::from_u8(header.pdu_type).ok_or(FramingError::UnknownPduType(header.pdu_type))?;
    match ty {
        PduType::PData if header.length > max_pdata_len => Err(FramingError::PDataTooLong {
            length: header.length,
            max: max_pdata_len,
        }),
        PduType::PData => Ok(ty),
        _ if header.length > MAX_CONTROL_PDU_LEN => Err(FramingError::ControlPduTooLong {
            pdu_type: header.pdu_type,
            length: header.length,
            max: MAX_CONTROL_PDU_LEN,
        }),
        _ => Ok(ty),
    }
}

/// One presentation data value: a fragment of a command set or of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdv {
    /// Presentation context the fragment belongs to.
    pub pc_id: u8,
    /// Bit 0 of the message control header: command (true) or dataset (false).
    pub is_command: bool,
    /// Bit 1 of the message control header: last fragment of its command or dataset.
    pub is_last: bool,
    /// The fragment, a slice of the received PDU (no copy).
    pub data: Bytes,
}

/// Splits a P-DATA-TF body (the bytes after the 6-byte PDU header) into its PDVs.
pub fn split_pdata(mut body: Bytes) -> Result<Vec<Pdv>, FramingError> {
    if body.is_empty() {
        return Err(FramingError::EmptyPData);
    }
    let mut pdvs = Vec::with_capacity(1);
    while !body.is_empty() {
        if body.len() < PDV_HEADER_LEN {
            return Err(FramingError::PdvOverrun {
                length: PDV_HEADER_LEN as u32,
                remaining: body.len(),
            });
        }
        let length = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if length < 2 {
            return Err(FramingError::PdvTooShort(length));
        }
        let remaining = body.len() - 4;
        if length as usize > remaining {
            return Err(FramingError::PdvOverrun { length, remaining });
        }
        let pc_id = body[4];
        if pc_id.is_multiple_of(2) {
            return Err(FramingError::EvenContextId(pc_id));
        }
        let control = body[5];
        let mut item = body.split_to(4 + length as usize);
        let data = item.split_off(PDV_HEADER_LEN);
        pdvs.push(Pdv {
            pc_id,
            is_command: control & 0x01 != 0,
            is_last: control & 0x02 != 0,
            data,
        });
    }
    Ok(pdvs)
}

/// Appends `data` as one message (command or dataset) in P-DATA-TF PDUs of at most
/// `peer_max_pdu` bytes of body each (the Maximum Length the *peer* announced; 0 = unlimited),
/// one PDV per PDU, the last PDV flagged as last.
pub fn encode_message(
    out: &mut BytesMut,
    pc_id: u8,
    is_command: bool,
    data: &[u8],
    peer_max_pdu: u32,
) {
    let max_payload = if peer_max_pdu == 0 {
        usize::MAX
    } else {
        // Body = PDV header (6) + payload; the peer's minimum is far above 6.
        (peer_max_pdu as usize)
            .saturating_sub(PDV_HEADER_LEN)
            .max(2)
    };
    let mut chunks = data.chunks(max_payload).peekable();
    if data.is_empty() {
        push_pdv(out, pc_id, is_command, true, &[]);
        return;
    }
    while let Some(chunk) = chunks.next() {
        push_pdv(out, pc_id, is_command, chunks.peek().is_none(), chunk);
    }
}

fn push_pdv(out: &mut BytesMut, pc_id: u8, is_command: bool, is_last: bool, chunk: &[u8]) {
    let pdv_len = (chunk.len() + 2) as u32;
    out.reserve(PDU_HEADER_LEN + PDV_HEADER_LEN + chunk.len());
    out.put_u8(PduType::PData as u8);
    out.put_u8(0);
    out.put_u32(pdv_len + 4);
    out.put_u32(pdv_len);
    out.put_u8(pc_id);
    out.put_u8(u8::from(is_command) | (u8::from(is_last) << 1));
    out.put_slice(chunk);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_fragmented_message() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut out = BytesMut::new();
        encode_message(&mut out, 3, false, &data, 4096);
        let mut buf = out.freeze();
        let mut got = Vec::new();
        let mut lasts = 0;
        while let Some(h) = peek_header(&buf) {
            assert_eq!(check_length(h, 4096), Ok(PduType::PData));
            let mut pdu = buf.split_to(h.total_len());
            let body = pdu.split_off(PDU_HEADER_LEN);
            for pdv in split_pdata(body).unwrap() {
                assert_eq!(pdv.pc_id, 3);
                assert!(!pdv.is_command);
                lasts += usize::from(pdv.is_last);
                got.extend_from_slice(&pdv.data);
            }
        }
        assert_eq!(got, data);
        assert_eq!(lasts, 1);
    }

    #[test]
    fn several_pdvs_in_one_pdu() {
        let body = Bytes::from_static(&[
            0, 0, 0, 4, 1, 0x03, 0xAA, 0xBB, // command, last
            0, 0, 0, 3, 1, 0x00, 0xCC, // data, not last
        ]);
        let pdvs = split_pdata(body).unwrap();
        assert_eq!(pdvs.len(), 2);
        assert!(pdvs[0].is_command && pdvs[0].is_last);
        assert_eq!(&pdvs[0].data[..], &[0xAA, 0xBB]);
        assert!(!pdvs[1].is_command && !pdvs[1].is_last);
        assert_eq!(&pdvs[1].data[..], &[0xCC]);
    }

    #[test]
    fn rejects_malformed_items() {
        assert_eq!(split_pdata(Bytes::new()), Err(FramingError::EmptyPData));
        assert_eq!(
            split_pdata(Bytes::from_static(&[0, 0, 0, 1, 1, 0])),
            Err(FramingError::PdvTooShort(1))
        );
        assert_eq!(
            split_pdata(Bytes::from_static(&[0, 0, 0, 9, 1, 0, 1])),
            Err(FramingError::PdvOverrun {
                length: 9,
                remaining: 3
            })
        );
        assert_eq!(
            split_pdata(Bytes::from_static(&[0, 0, 0, 2, 2, 0])),
            Err(FramingError::EvenContextId(2))
        );
        assert_eq!(
            split_pdata(Bytes::from_static(&[0, 0])),
            Err(FramingError::PdvOverrun {
                length: 6,
                remaining: 2
            })
        );
    }

    #[test]
    fn limits_are_checked_on_the_header_alone() {
        let h = peek_header(&[4, 0, 0xFF, 0xFF, 0xFF, 0xFF]).unwrap();
        assert!(matches!(
            check_length(h, 262_144),
            Err(FramingError::PDataTooLong { .. })
        ));
        let h = peek_header(&[1, 0, 0x10, 0, 0, 0]).unwrap();
        assert!(matches!(
            check_length(h, 262_144),
            Err(FramingError::ControlPduTooLong { .. })
        ));
        let h = peek_header(&[9, 0, 0, 0, 0, 4]).unwrap();
        assert_eq!(
            check_length(h, 262_144),
            Err(FramingError::UnknownPduType(9))
        );
        assert_eq!(peek_header(&[4, 0, 0]), None);
    }
}
