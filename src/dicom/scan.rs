//! A sans-I/O DICOM dataset structure scanner: it follows the element framing of a dataset's
//! bytes (PS3.5 §7) without building anything, and refuses, as early as the bytes allow,
//! what the object builders must never see: sequences nested deeper than a limit (dicom-object
//! builds nested sequences recursively, so a 5,000-level identifier overflows a thread's stack
//! and aborts the process — audit C1), too many elements, too many bytes, and framing errors
//! (odd lengths, values running past their item, data ending inside an element).
//!
//! Covered: Implicit VR Little Endian, Explicit VR Little and Big Endian (a deflated dataset is
//! inflated first by the caller, see [`inflate`]), defined and undefined lengths, sequences and
//! items with their delimiters (PS3.5 §7.5), encapsulated pixel data (basic offset table and
//! fragments, PS3.5 §A.4), the 2- and 4-byte length VRs (PS3.5 §7.1.2), and UN of undefined
//! length (PS3.5 §6.2.2, see [`UnUndefined`]). In Implicit VR a defined-length element is a
//! sequence when the standard dictionary says SQ — the same rule dicom-parser applies — so the
//! depth counted here is the depth the builder would reach.
//!
//! Design: the [`Scanner`] is fed bytes in any chunking ([`Scanner::push`]) and keeps an
//! explicit stack of open sequences and items (never recursion): memory is O(depth), nothing
//! is allocated per element and values are skipped, never copied. The only per-element work
//! is reading a header of 8 or 12 bytes. That makes it usable on the C-STORE path too, as a
//! dataset streams to disk.

use std::io::Read;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// Item (FFFE,E000).
const ITEM: Tag = Tag(0xFFFE, 0xE000);
/// Item Delimitation Item (FFFE,E00D).
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
/// Sequence Delimitation Item (FFFE,E0DD).
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);
/// Pixel Data (7FE0,0010): the only element that may be encapsulated (PS3.5 §A.4).
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
/// The undefined length (PS3.5 §7.1.1).
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Longest element header: tag, VR, reserved, 4-byte length (PS3.5 §7.1.2).
const MAX_HEADER: usize = 12;

/// Default deepest sequence nesting: what the worklist model accepts (`dicom::dataset`'s
/// `MAX_DEPTH`), far more than any IOD uses.
pub const DEFAULT_MAX_DEPTH: usize = 16;

/// Default element cap (data elements, items and fragments together).
pub const DEFAULT_MAX_ELEMENTS: usize = 1 << 20;

/// Hard cap on what [`check`] inflates for a deflated transfer syntax when the limits set no
/// smaller size: a deflate bomb cannot make it allocate more.
pub const DEFAULT_MAX_INFLATED: u64 = 256 * 1024 * 1024;

/// The byte encoding of a dataset (PS3.5 §7.1, §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Implicit VR Little Endian: tag, 4-byte length; the VR comes from the dictionary.
    ImplicitLittle,
    /// Explicit VR Little Endian (also every encapsulated transfer syntax).
    ExplicitLittle,
    /// Explicit VR Big Endian (retired).
    ExplicitBig,
}

impl Encoding {
    /// The encoding of a transfer syntax and whether the dataset is deflated (PS3.5 §A.5):
    /// every transfer syntax of PS3.6 Table A-1 that encodes a dataset as bytes (not the
    /// retired MIME and XML ones). Trailing NUL or space padding is ignored.
    pub fn for_transfer_syntax(uid: &str) -> Option<(Encoding, bool)> {
        use Encoding::{ExplicitBig, ExplicitLittle, ImplicitLittle};
        let uid = uid.trim_end_matches(['\0', ' ']);
        let rest = uid.strip_prefix("1.2.840.10008.1.2")?;
        Some(match rest {
            "" => (ImplicitLittle, false),
            // Explicit LE; Encapsulated Uncompressed Explicit VR LE.
            ".1" | ".1.98" => (ExplicitLittle, false),
            // Deflated Explicit VR LE; JPIP Referenced Deflate; JPIP HTJ2K Referenced Deflate.
            ".1.99" | ".4.95" | ".4.205" => (ExplicitLittle, true),
            ".2" => (ExplicitBig, false),
            // RLE; SMPTE ST 2110-20/-30; Deflated Image Frame Compression.
            ".5" | ".7.1" | ".7.2" | ".7.3" | ".8.1" => (ExplicitLittle, false),
            _ => {
                let jpeg = rest.strip_prefix(".4.")?;
                let (major, minor) = match jpeg.split_once('.') {
                    Some((a, b)) => (a, Some(b)),
                    None => (jpeg, None),
                };
                if major.is_empty()
                    || major.starts_with('0')
                    || !major.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                let n: u32 = major.parse().ok()?;
                let known = match minor {
                    // JPEG (incl. retired processes), JPEG-LS, JPEG 2000, JPIP, MPEG-2/4,
                    // HEVC, JPEG XL, HTJ2K.
                    None => matches!(
                        n,
                        50..=66 | 70 | 80 | 81 | 90..=94 | 100..=108 | 110..=112 | 201..=204
                    ),
                    // The fragmentable MPEG variants.
                    Some("1") => (100..=106).contains(&n),
                    Some(_) => false,
                };
                if !known {
                    return None;
                }
                (ExplicitLittle, false)
            }
        })
    }
}

/// How the content of a UN element of undefined length is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnUndefined {
    /// As PS3.5 §6.2.2 says: a sequence whose items are Implicit VR Little Endian. Not before
    /// dicom-object: bytes that nest one level read this way can nest 5,000 levels read its
    /// way (test `un_read_as_the_builder_reads_it_closes_a_depth_bypass`).
    ImplicitLittle,
    /// As a sequence in the enclosing encoding: what dicom-parser 0.10 does. Use this before
    /// handing the bytes to dicom-object, so the depth counted here is the depth it builds.
    AsOuter,
    /// Refused ([`ScanError::UndefinedLength`]).
    Refuse,
}

/// What a dataset may contain; checked before any value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest sequence nesting (a top-level sequence is level 1).
    pub max_depth: usize,
    /// Most data elements, sequence items and pixel fragments, counted together.
    pub max_elements: usize,
    /// Most bytes (after inflation for a deflated transfer syntax).
    pub max_size: u64,
    /// How UN of undefined length is read.
    pub un_undefined: UnUndefined,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_elements: DEFAULT_MAX_ELEMENTS,
            max_size: u64::MAX,
            un_undefined: UnUndefined::ImplicitLittle,
        }
    }
}

impl Limits {
    /// The limits for a dataset a peer sends that dicom-object will then build (a C-FIND
    /// identifier, an MPPS N-CREATE or N-SET dataset): 16 levels, 65,536 elements, UN of
    /// undefined length read the way dicom-parser reads it.
    pub const fn before_dicom_object() -> Limits {
        Limits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_elements: 65_536,
            max_size: u64::MAX,
            un_undefined: UnUndefined::AsOuter,
        }
    }
}

/// What a complete scan saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Bytes scanned.
    pub bytes: u64,
    /// Data elements, nested ones included (sequences count as elements).
    pub elements: usize,
    /// Sequence items.
    pub items: usize,
    /// Encapsulated pixel data items (the basic offset table included).
    pub fragments: usize,
    /// Deepest sequence nesting seen (0: no sequence).
    pub max_depth: usize,
}

/// Why a dataset was refused. Offsets count from the dataset's first byte (after inflation
/// for a deflated transfer syntax); `tag` is the element concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// A sequence would open below the deepest level allowed.
    #[error("sequence {tag} at offset {offset} nests deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// Where the sequence starts.
        offset: u64,
        /// The sequence.
        tag: Tag,
    },
    /// More elements, items and fragments than allowed.
    #[error("more than {limit} elements (at offset {offset})")]
    TooManyElements {
        /// The limit.
        limit: usize,
        /// Where the element over the limit starts.
        offset: u64,
    },
    /// The dataset is (or announces a value that makes it) larger than allowed.
    #[error("dataset larger than {limit} bytes (element at offset {offset})")]
    TooLarge {
        /// The limit.
        limit: u64,
        /// Where the element over the limit starts.
        offset: u64,
    },
    /// The data ends inside an element header, a value, an item or a sequence.
    #[error("data ends inside {} begun at offset {offset}", tag_or_header(*.tag))]
    Truncated {
        /// Where the unfinished element, item or sequence starts.
        offset: u64,
        /// Its tag (the sequence's for an item); `None` when the header itself is cut short
        /// before its tag.
        tag: Option<Tag>,
    },
    /// A defined length is odd: DICOM values, items and fragments have even lengths
    /// (PS3.5 §7.1.1).
    #[error("{tag} at offset {offset} has odd length {length}")]
    OddLength {
        /// Where the element starts.
        offset: u64,
        /// The element (an item tag for an item or fragment).
        tag: Tag,
        /// The length.
        length: u32,
    },
    /// The length of a value of fixed-size binary numbers (AT, FL, FD, SL, UL, SV, UV, OD,
    /// OF, OL, OV; the VR explicit or, in Implicit VR, from the dictionary) is not a multiple
    /// of their size (PS3.5 §6.2). dicom-parser 0.10 reads such a value short and loses the
    /// element framing; the next "length" it reads is then arbitrary and allocated at once.
    #[error("{tag} at offset {offset}: length {length} is not a multiple of {unit}")]
    BadValueLength {
        /// Where the element starts.
        offset: u64,
        /// The element.
        tag: Tag,
        /// The length.
        length: u32,
        /// The size of one value.
        unit: u8,
    },
    /// A value, item or header runs past the end of its enclosing defined-length item or
    /// sequence.
    #[error("{tag} at offset {offset} runs past the end of its enclosing item")]
    LengthOverflow {
        /// Where the element starts.
        offset: u64,
        /// The element.
        tag: Tag,
    },
    /// Explicit VR bytes that are not a VR (PS3.5 §6.2).
    #[error("{tag} at offset {offset} has an invalid VR {vr:02X?}")]
    BadVr {
        /// Where the element starts.
        offset: u64,
        /// The element.
        tag: Tag,
        /// The two bytes.
        vr: [u8; 2],
    },
    /// An undefined length where PS3.5 §7.1.2 allows none (only SQ, UN, encapsulated Pixel
    /// Data and items may have one; never a pixel fragment).
    #[error("{tag} at offset {offset} may not have an undefined length")]
    UndefinedLength {
        /// Where the element starts.
        offset: u64,
        /// The element.
        tag: Tag,
    },
    /// An item (or another group FFFE tag) where a data element must be: at the top level or
    /// directly inside an item.
    #[error("unexpected {tag} at offset {offset}: a data element must come here")]
    UnexpectedItem {
        /// Where it starts.
        offset: u64,
        /// The tag.
        tag: Tag,
    },
    /// A data element directly inside a sequence or encapsulated pixel data, where only items
    /// and the sequence delimiter may be.
    #[error("{tag} at offset {offset} is inside a sequence but not in an item")]
    ExpectedItem {
        /// Where it starts.
        offset: u64,
        /// The tag.
        tag: Tag,
    },
    /// A delimiter that closes nothing open, closes a defined-length item or sequence, or has
    /// a non-zero length.
    #[error("stray or malformed delimiter {tag} at offset {offset}")]
    BadDelimiter {
        /// Where it starts.
        offset: u64,
        /// The delimiter tag.
        tag: Tag,
    },
    /// A transfer syntax [`Encoding::for_transfer_syntax`] does not know.
    #[error("unknown transfer syntax {0}")]
    UnknownTransferSyntax(String),
    /// A deflated dataset that does not inflate.
    #[error("deflated dataset does not inflate: {0}")]
    Inflate(String),
    /// A deflated dataset that inflates to more than allowed.
    #[error("deflated dataset inflates to more than {limit} bytes")]
    InflatedTooLarge {
        /// The cap.
        limit: u64,
    },
    /// The dataset as sent has an odd number of bytes: every DICOM encoding, deflated ones
    /// included (PS3.5 §A.5 pads the stream to even length), makes it even.
    #[error("dataset of odd length {length}")]
    OddDatasetLength {
        /// The length received.
        length: u64,
    },
}

fn tag_or_header(tag: Option<Tag>) -> String {
    tag.map_or_else(|| "an element header".to_owned(), |t| t.to_string())
}

impl ScanError {
    /// A text for a DICOM Error Comment (0000,0902): printable ASCII, at most 64 characters.
    pub fn error_comment(&self) -> String {
        let s = match self {
            ScanError::TooDeep { limit, offset, .. } => {
                format!("nesting deeper than {limit} levels at offset {offset}")
            }
            ScanError::TooManyElements { limit, offset } => {
                format!("more than {limit} elements at offset {offset}")
            }
            ScanError::TooLarge { limit, offset } => {
                format!("larger than {limit} bytes at offset {offset}")
            }
            ScanError::Truncated {
                offset,
                tag: Some(t),
            } => format!("data ends inside {t} at offset {offset}"),
            ScanError::Truncated { offset, tag: None } => {
                format!("data ends inside a header at offset {offset}")
            }
            ScanError::OddLength { offset, tag, .. } => {
                format!("odd length of {tag} at offset {offset}")
            }
            ScanError::BadValueLength {
                offset,
                tag,
                length,
                unit,
            } => format!("{tag} length {length} not a multiple of {unit} at offset {offset}"),
            ScanError::LengthOverflow { offset, tag } => {
                format!("{tag} overruns its item at offset {offset}")
            }
            ScanError::BadVr { offset, tag, .. } => format!("bad VR of {tag} at offset {offset}"),
            ScanError::UndefinedLength { offset, tag } => {
                format!("undefined length of {tag} at offset {offset}")
            }
            ScanError::UnexpectedItem { offset, tag } => {
                format!("unexpected item {tag} at offset {offset}")
            }
            ScanError::ExpectedItem { offset, tag } => {
                format!("{tag} outside an item at offset {offset}")
            }
            ScanError::BadDelimiter { offset, tag } => {
                format!("bad delimiter {tag} at offset {offset}")
            }
            ScanError::UnknownTransferSyntax(_) => "unknown transfer syntax".to_owned(),
            ScanError::Inflate(_) => "deflated dataset does not inflate".to_owned(),
            ScanError::OddDatasetLength { length } => format!("dataset of odd length {length}"),
            ScanError::InflatedTooLarge { limit } => {
                format!("deflated dataset inflates beyond {limit} bytes")
            }
        };
        s.chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(64)
            .collect()
    }
}

/// What an explicit VR says about the length field and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VrKind {
    /// 2-byte length.
    Short,
    /// 4-byte length, a plain value.
    Long,
    /// OB or OW (4-byte length): encapsulated when Pixel Data has an undefined length.
    Binary,
    /// SQ.
    Sequence,
    /// UN (4-byte length): a sequence when the length is undefined.
    Unknown,
}

/// PS3.5 §7.1.2: which VRs have the 2-byte and which the 4-byte length; and the size of one
/// value of the binary-number VRs (PS3.5 §6.2), of which a length must be a multiple.
fn vr_kind(vr: [u8; 2]) -> Option<(VrKind, u8)> {
    use VrKind::*;
    Some(match &vr {
        b"AE" | b"AS" | b"CS" | b"DA" | b"DS" | b"DT" | b"IS" | b"LO" | b"LT" | b"PN" | b"SH"
        | b"ST" | b"TM" | b"UI" => (Short, 1),
        b"SS" | b"US" => (Short, 2),
        b"AT" | b"FL" | b"SL" | b"UL" => (Short, 4),
        b"FD" => (Short, 8),
        b"UC" | b"UR" | b"UT" => (Long, 1),
        b"OF" | b"OL" => (Long, 4),
        b"OD" | b"OV" | b"SV" | b"UV" => (Long, 8),
        b"OB" => (Binary, 1),
        b"OW" => (Binary, 2),
        b"SQ" => (Sequence, 1),
        b"UN" => (Unknown, 1),
        _ => return None,
    })
}

/// The size of one value of a VR as [`vr_kind`] gives it.
fn vr_unit(vr: VR) -> u8 {
    match vr {
        VR::SS | VR::US | VR::OW => 2,
        VR::AT | VR::FL | VR::SL | VR::UL | VR::OF | VR::OL => 4,
        VR::FD | VR::OD | VR::OV | VR::SV | VR::UV => 8,
        _ => 1,
    }
}

/// A decoded element or item header.
#[derive(Debug, Clone, Copy)]
struct Header {
    tag: Tag,
    /// `None` in Implicit VR and for group FFFE.
    vr: Option<VrKind>,
    /// Size of one value (1 when not a binary number; Implicit VR: see the dictionary).
    unit: u8,
    len: u32,
    /// Header size in bytes (8 or 12).
    size: usize,
}

fn read_tag(enc: Encoding, b: &[u8]) -> Tag {
    match enc {
        Encoding::ExplicitBig => Tag(
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ),
        _ => Tag(
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        ),
    }
}

fn read_u32(enc: Encoding, b: &[u8]) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    match enc {
        Encoding::ExplicitBig => u32::from_be_bytes(a),
        _ => u32::from_le_bytes(a),
    }
}

fn read_u16(enc: Encoding, b: &[u8]) -> u16 {
    match enc {
        Encoding::ExplicitBig => u16::from_be_bytes([b[0], b[1]]),
        _ => u16::from_le_bytes([b[0], b[1]]),
    }
}

/// Decodes the header at the start of `b`: `Ok(None)` when `b` is too short to hold it,
/// `Err(vr)` when an explicit VR is invalid.
fn parse_header(enc: Encoding, b: &[u8]) -> Result<Option<Header>, (Tag, [u8; 2])> {
    if b.len() < 4 {
        return Ok(None);
    }
    let tag = read_tag(enc, b);
    if enc == Encoding::ImplicitLittle || tag.0 == 0xFFFE {
        // Items and delimiters have no VR in any encoding (PS3.5 §7.5).
        if b.len() < 8 {
            return Ok(None);
        }
        return Ok(Some(Header {
            tag,
            vr: None,
            unit: 1,
            len: read_u32(enc, &b[4..]),
            size: 8,
        }));
    }
    if b.len() < 6 {
        return Ok(None);
    }
    let vr = [b[4], b[5]];
    let (kind, unit) = vr_kind(vr).ok_or((tag, vr))?;
    if kind == VrKind::Short {
        if b.len() < 8 {
            return Ok(None);
        }
        Ok(Some(Header {
            tag,
            vr: Some(kind),
            unit,
            len: u32::from(read_u16(enc, &b[6..])),
            size: 8,
        }))
    } else {
        if b.len() < 12 {
            return Ok(None);
        }
        Ok(Some(Header {
            tag,
            vr: Some(kind),
            unit,
            len: read_u32(enc, &b[8..]),
            size: 12,
        }))
    }
}

/// The VR the standard dictionary gives `tag` in Implicit VR (the rule dicom-parser's implicit
/// decoder applies, Pixel Data and Overlay Data being OW): whether a defined-length element
/// is a sequence, and the size of its values. `None`: unknown, read as UN. Private groups are
/// looked up too: the dictionary's ranges give e.g. every group length (gggg,0000) UL.
fn implicit_vr(tag: Tag) -> Option<VR> {
    if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
        return Some(VR::OW);
    }
    StandardDataDictionary.by_tag(tag).map(|e| e.vr().relaxed())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A sequence: items and (if of undefined length) its delimiter.
    Sequence,
    /// An item of a sequence: data elements and (if of undefined length) its delimiter.
    Item,
    /// Encapsulated pixel data: fragments and the sequence delimiter.
    Fragments,
}

/// An open sequence, item or encapsulated pixel data.
#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: Kind,
    /// The sequence's tag (for an item: its sequence's).
    tag: Tag,
    /// Where its header starts.
    start: u64,
    /// Where it ends, when its length is defined.
    end: Option<u64>,
    /// The nearest defined end of it or an ancestor: nothing inside may pass it.
    bound: u64,
    /// The encoding of what is inside (Implicit LE inside UN, PS3.5 §6.2.2).
    enc: Encoding,
}

/// An incremental dataset scanner: feed it the bytes in any chunking with [`Scanner::push`],
/// then call [`Scanner::finish`]. The first error is final: every later call returns it.
#[derive(Debug, Clone)]
pub struct Scanner {
    base: Encoding,
    limits: Limits,
    stack: Vec<Frame>,
    /// Open sequences on the stack.
    depth: usize,
    /// Offset of the next byte not yet consumed (buffered header bytes are not consumed).
    pos: u64,
    /// A header split across pushes.
    hdr: [u8; MAX_HEADER],
    hdr_len: usize,
    /// Value bytes still to skip, and the element they belong to.
    skip: u64,
    skipping: (u64, Tag),
    /// Elements, items and fragments seen.
    count: usize,
    summary: Summary,
    failed: Option<ScanError>,
}

impl Scanner {
    /// A scanner for a dataset in `enc`.
    pub fn new(enc: Encoding, limits: Limits) -> Self {
        Scanner {
            base: enc,
            limits,
            stack: Vec::with_capacity(
                limits
                    .max_depth
                    .saturating_mul(2)
                    .saturating_add(2)
                    .min(128),
            ),
            depth: 0,
            pos: 0,
            hdr: [0; MAX_HEADER],
            hdr_len: 0,
            skip: 0,
            skipping: (0, Tag(0, 0)),
            count: 0,
            summary: Summary::default(),
            failed: None,
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos + self.hdr_len as u64
    }

    /// Scans the next bytes of the dataset. Fails at the first header that breaks a rule or a
    /// limit, before the bytes of its value arrive.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ScanError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.push_inner(bytes);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// Ends the scan: fails if the data ended inside an element header, a value, an item or
    /// a sequence.
    pub fn finish(self) -> Result<Summary, ScanError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.hdr_len > 0 {
            let tag = (self.hdr_len >= 4).then(|| read_tag(self.enc(), &self.hdr));
            return Err(ScanError::Truncated {
                offset: self.pos,
                tag,
            });
        }
        if self.skip > 0 {
            return Err(ScanError::Truncated {
                offset: self.skipping.0,
                tag: Some(self.skipping.1),
            });
        }
        if let Some(f) = self.stack.last() {
            return Err(ScanError::Truncated {
                offset: f.start,
                tag: Some(f.tag),
            });
        }
        Ok(Summary {
            bytes: self.pos,
            ..self.summary
        })
    }

    /// The encoding of the next header.
    fn enc(&self) -> Encoding {
        self.stack.last().map_or(self.base, |f| f.enc)
    }

    fn push_inner(&mut self, mut data: &[u8]) -> Result<(), ScanError> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                data = &data[n as usize..];
                self.pos += n;
                self.skip -= n;
                if self.skip == 0 {
                    self.close_ended();
                }
                continue;
            }
            let enc = self.enc();
            let header = if self.hdr_len == 0 {
                match parse_header(enc, data) {
                    Ok(Some(h)) => {
                        data = &data[h.size..];
                        h
                    }
                    Ok(None) => {
                        // Shorter than a header: keep it for the next push.
                        self.hdr[..data.len()].copy_from_slice(data);
                        self.hdr_len = data.len();
                        return Ok(());
                    }
                    Err((tag, vr)) => return Err(self.bad_vr(tag, vr)),
                }
            } else {
                let have = self.hdr_len;
                let take = (MAX_HEADER - have).min(data.len());
                self.hdr[have..have + take].copy_from_slice(&data[..take]);
                match parse_header(enc, &self.hdr[..have + take]) {
                    Ok(Some(h)) => {
                        data = &data[h.size - have..];
                        self.hdr_len = 0;
                        h
                    }
                    Ok(None) => {
                        self.hdr_len += take;
                        return Ok(());
                    }
                    Err((tag, vr)) => return Err(self.bad_vr(tag, vr)),
                }
            };
            self.on_header(header, enc)?;
        }
        Ok(())
    }

    fn bad_vr(&self, tag: Tag, vr: [u8; 2]) -> ScanError {
        ScanError::BadVr {
            offset: self.pos,
            tag,
            vr,
        }
    }

    fn count(&mut self, offset: u64) -> Result<(), ScanError> {
        self.count += 1;
        if self.count > self.limits.max_elements {
            return Err(ScanError::TooManyElements {
                limit: self.limits.max_elements,
                offset,
            });
        }
        Ok(())
    }

    /// The end of a value of `len` bytes starting at `from`, checked against the enclosing
    /// bound and the size limit; `len` must be defined and even.
    fn value_end(
        &self,
        start: u64,
        tag: Tag,
        from: u64,
        len: u32,
        bound: u64,
    ) -> Result<u64, ScanError> {
        if len % 2 == 1 {
            return Err(ScanError::OddLength {
                offset: start,
                tag,
                length: len,
            });
        }
        let end = from + u64::from(len);
        if end > bound {
            return Err(ScanError::LengthOverflow { offset: start, tag });
        }
        if end > self.limits.max_size {
            return Err(ScanError::TooLarge {
                limit: self.limits.max_size,
                offset: start,
            });
        }
        Ok(end)
    }

    fn open_sequence(
        &mut self,
        tag: Tag,
        start: u64,
        end: Option<u64>,
        bound: u64,
        enc: Encoding,
    ) -> Result<(), ScanError> {
        if self.depth >= self.limits.max_depth {
            return Err(ScanError::TooDeep {
                limit: self.limits.max_depth,
                offset: start,
                tag,
            });
        }
        self.depth += 1;
        self.summary.max_depth = self.summary.max_depth.max(self.depth);
        self.stack.push(Frame {
            kind: Kind::Sequence,
            tag,
            start,
            end,
            bound: end.unwrap_or(bound),
            enc,
        });
        Ok(())
    }

    fn pop(&mut self) {
        if let Some(f) = self.stack.pop() {
            if f.kind == Kind::Sequence {
                self.depth -= 1;
            }
        }
    }

    /// Closes every defined-length frame that ends here.
    fn close_ended(&mut self) {
        while self.stack.last().is_some_and(|f| f.end == Some(self.pos)) {
            self.pop();
        }
    }

    fn on_header(&mut self, h: Header, enc: Encoding) -> Result<(), ScanError> {
        let start = self.pos;
        let top = self.stack.last().copied();
        let bound = top.map_or(u64::MAX, |f| f.bound);
        let from = start + h.size as u64;
        if from > bound {
            return Err(ScanError::LengthOverflow {
                offset: start,
                tag: h.tag,
            });
        }
        if from > self.limits.max_size {
            return Err(ScanError::TooLarge {
                limit: self.limits.max_size,
                offset: start,
            });
        }
        self.pos = from;
        let kind = top.map(|f| f.kind);
        if h.tag.0 == 0xFFFE {
            match (h.tag, top) {
                (ITEM, Some(seq)) if seq.kind == Kind::Sequence => {
                    self.count(start)?;
                    self.summary.items += 1;
                    let end = if h.len == UNDEFINED {
                        None
                    } else {
                        Some(self.value_end(start, h.tag, from, h.len, bound)?)
                    };
                    self.stack.push(Frame {
                        kind: Kind::Item,
                        tag: seq.tag,
                        start,
                        end,
                        bound: end.unwrap_or(bound),
                        enc: seq.enc,
                    });
                }
                (ITEM, Some(px)) if px.kind == Kind::Fragments => {
                    self.count(start)?;
                    self.summary.fragments += 1;
                    if h.len == UNDEFINED {
                        return Err(ScanError::UndefinedLength {
                            offset: start,
                            tag: h.tag,
                        });
                    }
                    self.value_end(start, h.tag, from, h.len, bound)?;
                    self.skip = u64::from(h.len);
                    self.skipping = (start, px.tag);
                }
                (ITEM_DELIMITER, Some(item))
                    if item.kind == Kind::Item && item.end.is_none() && h.len == 0 =>
                {
                    self.pop();
                }
                (SEQUENCE_DELIMITER, Some(seq))
                    if seq.kind != Kind::Item && seq.end.is_none() && h.len == 0 =>
                {
                    self.pop();
                }
                (ITEM_DELIMITER | SEQUENCE_DELIMITER, _) => {
                    return Err(ScanError::BadDelimiter {
                        offset: start,
                        tag: h.tag,
                    })
                }
                _ => {
                    return Err(ScanError::UnexpectedItem {
                        offset: start,
                        tag: h.tag,
                    })
                }
            }
            self.close_ended();
            return Ok(());
        }
        if matches!(kind, Some(Kind::Sequence | Kind::Fragments)) {
            return Err(ScanError::ExpectedItem {
                offset: start,
                tag: h.tag,
            });
        }
        self.count(start)?;
        self.summary.elements += 1;
        if h.len == UNDEFINED {
            let encapsulated = h.tag == PIXEL_DATA
                && matches!(h.vr, None | Some(VrKind::Binary | VrKind::Unknown));
            if encapsulated {
                self.stack.push(Frame {
                    kind: Kind::Fragments,
                    tag: h.tag,
                    start,
                    end: None,
                    bound,
                    enc,
                });
                return Ok(());
            }
            let inner = match h.vr {
                // Implicit VR: an undefined length can only be a sequence.
                None | Some(VrKind::Sequence) => enc,
                Some(VrKind::Unknown) => match self.limits.un_undefined {
                    UnUndefined::ImplicitLittle => Encoding::ImplicitLittle,
                    UnUndefined::AsOuter => enc,
                    UnUndefined::Refuse => {
                        return Err(ScanError::UndefinedLength {
                            offset: start,
                            tag: h.tag,
                        })
                    }
                },
                Some(_) => {
                    return Err(ScanError::UndefinedLength {
                        offset: start,
                        tag: h.tag,
                    })
                }
            };
            return self.open_sequence(h.tag, start, None, bound, inner);
        }
        let end = self.value_end(start, h.tag, from, h.len, bound)?;
        let (sequence, unit) = match h.vr {
            Some(v) => (v == VrKind::Sequence, h.unit),
            None => match implicit_vr(h.tag) {
                Some(vr) => (vr == VR::SQ, vr_unit(vr)),
                None => (false, 1),
            },
        };
        if !h.len.is_multiple_of(u32::from(unit)) {
            return Err(ScanError::BadValueLength {
                offset: start,
                tag: h.tag,
                length: h.len,
                unit,
            });
        }
        if sequence {
            self.open_sequence(h.tag, start, Some(end), bound, enc)?;
        } else {
            self.skip = u64::from(h.len);
            self.skipping = (start, h.tag);
        }
        self.close_ended();
        Ok(())
    }
}

/// Inflates a deflated dataset (raw deflate, PS3.5 §A.5) to at most `max_out` bytes.
pub fn inflate(deflated: &[u8], max_out: u64) -> Result<Vec<u8>, ScanError> {
    let mut out = Vec::with_capacity(
        deflated
            .len()
            .saturating_mul(4)
            .min(usize::try_from(max_out).unwrap_or(usize::MAX))
            .min(1 << 20),
    );
    let mut dec = flate2::read::DeflateDecoder::new(deflated).take(max_out.saturating_add(1));
    dec.read_to_end(&mut out)
        .map_err(|e| ScanError::Inflate(e.to_string()))?;
    if out.len() as u64 > max_out {
        return Err(ScanError::InflatedTooLarge { limit: max_out });
    }
    Ok(out)
}

/// The structure check of a dataset that arrives in pieces (a C-STORE's P-DATA fragments):
/// a [`Scanner`], behind a streaming inflater for the deflated transfer syntaxes, and the
/// even-length rule on the bytes as sent. Pushing never fails; the first error is kept and
/// [`StreamCheck::finish`] reports it, so the caller can keep draining the peer's fragments
/// and answer with a status instead of dropping the association.
#[derive(Debug)]
pub struct StreamCheck {
    scanner: Scanner,
    inflater: Option<Box<flate2::Decompress>>,
    /// Bytes received (as sent, before inflation).
    received: u64,
    /// Whether the deflate stream has ended (only padding may follow).
    inflate_done: bool,
    /// The inflated size cap.
    max_inflated: u64,
    error: Option<ScanError>,
}

impl StreamCheck {
    /// A check for a dataset in `transfer_syntax`; `None` for a syntax whose encoding is not
    /// known here (a private one): such a dataset is not checked. A deflated dataset inflates
    /// to at most `limits.max_size` or [`DEFAULT_MAX_INFLATED`] bytes.
    pub fn for_transfer_syntax(transfer_syntax: &str, limits: Limits) -> Option<Self> {
        let (enc, deflated) = Encoding::for_transfer_syntax(transfer_syntax)?;
        Some(StreamCheck {
            scanner: Scanner::new(enc, limits),
            inflater: deflated.then(|| Box::new(flate2::Decompress::new(false))),
            received: 0,
            inflate_done: false,
            max_inflated: limits.max_size.min(DEFAULT_MAX_INFLATED),
            error: None,
        })
    }

    /// Whether a problem was found already (the rest of the dataset need not be looked at).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Checks the next bytes of the dataset.
    pub fn push(&mut self, bytes: &[u8]) {
        self.received += bytes.len() as u64;
        if self.error.is_some() {
            return;
        }
        let r = match &mut self.inflater {
            None => self.scanner.push(bytes),
            Some(z) => Self::inflate_into(
                z,
                &mut self.scanner,
                &mut self.inflate_done,
                self.max_inflated,
                bytes,
            ),
        };
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    /// Inflates `input` in bounded steps, scanning what comes out; after the end of the
    /// deflate stream only NUL padding may follow.
    fn inflate_into(
        z: &mut flate2::Decompress,
        scanner: &mut Scanner,
        done: &mut bool,
        max_out: u64,
        mut input: &[u8],
    ) -> Result<(), ScanError> {
        let mut out = [0u8; 16 * 1024];
        while !input.is_empty() {
            if *done {
                return if input.iter().all(|b| *b == 0) {
                    Ok(())
                } else {
                    Err(ScanError::Inflate(
                        "data after the end of the deflate stream".into(),
                    ))
                };
            }
            let (in0, out0) = (z.total_in(), z.total_out());
            let status = z
                .decompress(input, &mut out, flate2::FlushDecompress::None)
                .map_err(|e| ScanError::Inflate(e.to_string()))?;
            let used = (z.total_in() - in0) as usize;
            let made = (z.total_out() - out0) as usize;
            input = &input[used..];
            if z.total_out() > max_out {
                return Err(ScanError::InflatedTooLarge { limit: max_out });
            }
            scanner.push(&out[..made])?;
            if status == flate2::Status::StreamEnd {
                *done = true;
            } else if used == 0 && made == 0 {
                // No progress with input left: the stream needs what never comes here.
                return Err(ScanError::Inflate("deflate stream stalled".into()));
            }
        }
        Ok(())
    }

    /// Ends the check: the first problem found, or the scan's summary.
    pub fn finish(self) -> Result<Summary, ScanError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.received % 2 == 1 {
            return Err(ScanError::OddDatasetLength {
                length: self.received,
            });
        }
        if self.inflater.is_some() && !self.inflate_done {
            return Err(ScanError::Inflate(
                "the deflate stream ends before its last block".into(),
            ));
        }
        self.scanner.finish()
    }
}

/// Scans a whole dataset received in `transfer_syntax` (inflating a deflated one first, to at
/// most `limits.max_size` or [`DEFAULT_MAX_INFLATED`] bytes).
pub fn check(bytes: &[u8], transfer_syntax: &str, limits: &Limits) -> Result<Summary, ScanError> {
    let (enc, deflated) = Encoding::for_transfer_syntax(transfer_syntax).ok_or_else(|| {
        ScanError::UnknownTransferSyntax(
            transfer_syntax
                .trim_end_matches('\0')
                .chars()
                .take(64)
                .collect(),
        )
    })?;
    let inflated;
    let bytes = if deflated {
        inflated = inflate(bytes, limits.max_size.min(DEFAULT_MAX_INFLATED))?;
        &inflated[..]
    } else {
        bytes
    };
    let mut scanner = Scanner::new(enc, *limits);
    scanner.push(bytes)?;
    scanner.finish()
}

#[cfg(test)]
mod tests;
