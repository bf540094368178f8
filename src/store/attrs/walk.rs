//! The plain case of the attribute scan, read straight from the bytes.
//!
//! dicom-parser's token reader spends most of the scan's time on machinery a little-endian
//! dataset with text in ISO 8859-1, UTF-8 or the default repertoire does not need: boxed decoders,
//! a text codec that decodes character by character, a value buffer per element. This walk
//! reads the same element headers with dicom-encoding's own header decoders, builds the same
//! `PrimitiveValue` the parser would for the top-level elements the scan uses, and hands them
//! to the same code ([`super::Collected`]).
//!
//! It answers only where it is sure to give the parser's answer: the first element, sequence
//! item or value that is anything but plain (an odd-sized binary value, a delimiter out of
//! place, an undefined length outside a sequence, another character set, text that is not
//! valid UTF-8 under ISO_IR 192, nesting deeper than [`MAX_DEPTH`]) makes it return `None`,
//! and the parser decides; so do bytes that end before the indexed groups do. A test compares the two over the sample corpus and cut-down copies of it;
//! a fuzz target compares them on arbitrary bytes.

use dicom_core::dictionary::{DataDictionary, VirtualVr};
use dicom_core::header::{DataElementHeader, Header, Length};
use dicom_core::value::{PrimitiveValue, C};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::decode::explicit_le::ExplicitVRLittleEndianDecoder;
use dicom_encoding::decode::implicit_le::ImplicitVRLittleEndianDecoder;
use dicom_encoding::decode::Decode;

use super::{keep, Collected, IndexAttrs};

/// Deepest sequence nesting walked; deeper ones are left to the parser.
pub const MAX_DEPTH: usize = 16;

/// How the element headers are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Explicit VR Little Endian (and what a deflated dataset inflates to).
    Explicit,
    /// Implicit VR Little Endian.
    Implicit,
}

const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const CHARSET: Tag = Tag(0x0008, 0x0005);
const PIXEL_REPRESENTATION: Tag = Tag(0x0028, 0x0103);

/// Why the walk stopped short of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The bytes ended (inside a sequence, or within a header or value).
    Truncated,
    /// Something other than the plain case: the parser decides.
    Decline,
}

/// [`super::extract_with`]'s answer for `bytes`, or `None` where the parser must decide.
/// `terms` are those of a dataset whose (0008,0005) the caller replaced (see
/// `charset::latin1_transparent`).
pub fn extract(
    bytes: &[u8],
    syntax: Syntax,
    complete: bool,
    wanted: &[Tag],
    last_group: u16,
    terms: Option<&[String]>,
) -> Option<IndexAttrs> {
    let mut w = Walk {
        bytes,
        pos: 0,
        syntax,
        signed: None,
        utf8: false,
    };
    let mut found = Collected::new(wanted, terms);
    // Past the indexed groups, the parser ends the scan where the bytes end (see
    // `super::scan`); before, it asks for more or finds the dataset malformed.
    let mut past = false;
    loop {
        // Fewer bytes than a tag: the parser ends the stream here.
        if bytes.len() - w.pos < 4 {
            return (complete || past).then(|| found.finish());
        }
        let Ok(h) = w.header() else {
            return past.then(|| found.finish());
        };
        let group = h.tag.group();
        if group == 0xFFFE {
            return None;
        }
        if h.vr == VR::SQ {
            if group >= 0x7FE0 {
                return None;
            }
            if group > last_group {
                past = true;
            }
            match w.sequence(h.len, 1) {
                Ok(()) => continue,
                Err(Stop::Truncated) if past => return Some(found.finish()),
                Err(_) => return None,
            }
        }
        if h.is_encapsulated_pixeldata() {
            return Some(found.finish());
        }
        let len = h.len.get()? as usize;
        if len > bytes.len() {
            // The parser's check of a value longer than all the bytes held.
            return (past || group > last_group).then(|| found.finish());
        }
        if group >= 0x7FE0 {
            return Some(found.finish());
        }
        if group > last_group {
            past = true;
        }
        // Before the bytes are there: the parser reads an odd-sized binary value short.
        check(h.vr, len).ok()?;
        let Some(raw) = bytes.get(w.pos..w.pos + len) else {
            return past.then(|| found.finish());
        };
        w.pos += len;
        if h.tag == CHARSET {
            w.utf8 = charset_is_utf8(h.vr, raw)?;
        }
        if h.tag == PIXEL_REPRESENTATION {
            w.pixel_representation(h.vr, raw);
        }
        if !past || keep(h.tag, h.vr, len as u32) {
            let v = w.value(h.vr, raw)?;
            found.take(h.tag, h.vr, len as u32, &v, past);
        }
    }
}

struct Walk<'a> {
    bytes: &'a [u8],
    pos: usize,
    syntax: Syntax,
    /// What the parser learns from (0028,0103): signed pixels make later `xs` elements SS.
    signed: Option<bool>,
    /// Text under ISO_IR 192 (else ISO 8859-1).
    utf8: bool,
}

impl Walk<'_> {
    /// The next element header, as the parser's decoder reads it. It fails only where the
    /// bytes end.
    fn header(&mut self) -> Result<DataElementHeader, Stop> {
        let mut src = &self.bytes[self.pos..];
        let before = src.len();
        let decoded = match self.syntax {
            Syntax::Explicit => ExplicitVRLittleEndianDecoder::default().decode_header(&mut src),
            Syntax::Implicit => ImplicitVRLittleEndianDecoder::default().decode_header(&mut src),
        };
        let (mut h, _) = decoded.map_err(|_| Stop::Truncated)?;
        self.pos += before - src.len();
        if self.signed == Some(true)
            && StandardDataDictionary.by_tag(h.tag).map(|e| e.vr) == Some(VirtualVr::Xs)
        {
            h.vr = VR::SS;
        }
        Ok(h)
    }

    /// An item or delimiter header (tag and 32-bit length, no VR in either syntax).
    fn item_header(&mut self) -> Result<(Tag, Length), Stop> {
        let b = self.advance(8)?;
        let tag = Tag(
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        );
        Ok((tag, Length(u32::from_le_bytes([b[4], b[5], b[6], b[7]]))))
    }

    /// The next `n` bytes, stepped over.
    fn advance(&mut self, n: usize) -> Result<&[u8], Stop> {
        let end = self.pos.checked_add(n).ok_or(Stop::Truncated)?;
        let b = self.bytes.get(self.pos..end).ok_or(Stop::Truncated)?;
        self.pos = end;
        Ok(b)
    }

    /// Skips a sequence whose header was just read, checking what the parser would. A length
    /// past the bytes is not refused up front: the parser reads the items until the bytes end.
    fn sequence(&mut self, len: Length, depth: usize) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Decline);
        }
        match len.get() {
            Some(n) => self.within(n, |w| match w.item_header()? {
                (ITEM, item_len) => w.item(item_len, depth),
                _ => Err(Stop::Decline),
            }),
            None => loop {
                let (tag, item_len) = self.item_header()?;
                match tag {
                    ITEM => self.item(item_len, depth)?,
                    SEQUENCE_END => return Ok(()),
                    _ => return Err(Stop::Decline),
                }
            },
        }
    }

    /// Repeats `step` over the next `n` bytes (a sequence's items, an item's elements); the
    /// parser finds content that runs past them inconsistent.
    fn within(
        &mut self,
        n: u32,
        mut step: impl FnMut(&mut Self) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        let end = self.pos.saturating_add(n as usize);
        while self.pos < end {
            step(self)?;
        }
        if self.pos == end {
            Ok(())
        } else {
            Err(Stop::Decline)
        }
    }

    /// Skips an item's elements.
    fn item(&mut self, len: Length, depth: usize) -> Result<(), Stop> {
        match len.get() {
            Some(n) => self.within(n, |w| w.nested_element(depth, false).map(drop)),
            None => loop {
                if self.nested_element(depth, true)? {
                    return Ok(());
                }
            },
        }
    }

    /// Skips one element inside an item; `true` for the item's end delimiter where one may
    /// come.
    fn nested_element(&mut self, depth: usize, delimited: bool) -> Result<bool, Stop> {
        if self.bytes.len() - self.pos < 4 {
            return Err(Stop::Truncated);
        }
        let h = self.header()?;
        if h.tag == ITEM_END && delimited {
            return Ok(true);
        }
        if h.tag.group() == 0xFFFE || h.is_encapsulated_pixeldata() {
            return Err(Stop::Decline);
        }
        if h.vr == VR::SQ {
            self.sequence(h.len, depth + 1)?;
            return Ok(false);
        }
        let len = h.len.get().ok_or(Stop::Decline)? as usize;
        // A nested character set or pixel representation changes the parser's state for
        // everything after it: leave those to the parser.
        if h.tag == CHARSET || h.tag == PIXEL_REPRESENTATION {
            return Err(Stop::Decline);
        }
        check(h.vr, len)?;
        self.advance(len)?;
        Ok(false)
    }

    fn pixel_representation(&mut self, vr: VR, raw: &[u8]) {
        // The parser reads (0028,0103) as US or OW values only; an empty one changes nothing.
        if matches!(vr, VR::US | VR::OW) && raw.len() >= 2 {
            self.signed = Some(u16::from_le_bytes([raw[0], raw[1]]) != 0);
        }
    }

    /// The value the parser builds for a (checked) value of this VR (its "preserved" reading:
    /// numbers in text stay text); `None` for text it would decode otherwise than we do here.
    fn value(&self, vr: VR, raw: &[u8]) -> Option<PrimitiveValue> {
        if raw.is_empty() {
            return Some(PrimitiveValue::Empty);
        }
        fn le<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> C<T> {
            raw.chunks_exact(N)
                .map(|c| f(c.try_into().unwrap_or([0; N])))
                .collect()
        }
        // AE, AS and CS are read in the default repertoire whatever the character set.
        let text = |b: &[u8]| match vr {
            VR::AE | VR::AS | VR::CS => Some(latin1(b)),
            _ if self.utf8 => std::str::from_utf8(b).ok().map(str::to_owned),
            _ => Some(latin1(b)),
        };
        Some(match vr {
            VR::AE
            | VR::AS
            | VR::PN
            | VR::SH
            | VR::LO
            | VR::UC
            | VR::UI
            | VR::IS
            | VR::DS
            | VR::DA
            | VR::TM
            | VR::DT
            | VR::CS => PrimitiveValue::Strs(
                raw.split(|b| *b == b'\\')
                    .map(text)
                    .collect::<Option<_>>()?,
            ),
            VR::UT | VR::ST | VR::UR | VR::LT => PrimitiveValue::Str(text(raw)?),
            VR::UN | VR::OB => PrimitiveValue::U8(raw.iter().copied().collect()),
            VR::US | VR::OW => PrimitiveValue::U16(le(raw, u16::from_le_bytes)),
            VR::SS => PrimitiveValue::I16(le(raw, i16::from_le_bytes)),
            VR::SL => PrimitiveValue::I32(le(raw, i32::from_le_bytes)),
            VR::UL | VR::OL => PrimitiveValue::U32(le(raw, u32::from_le_bytes)),
            VR::SV => PrimitiveValue::I64(le(raw, i64::from_le_bytes)),
            VR::UV | VR::OV => PrimitiveValue::U64(le(raw, u64::from_le_bytes)),
            VR::FL | VR::OF => PrimitiveValue::F32(le(raw, f32::from_le_bytes)),
            VR::FD | VR::OD => PrimitiveValue::F64(le(raw, f64::from_le_bytes)),
            VR::AT => PrimitiveValue::Tags(le(raw, |b: [u8; 4]| {
                Tag(
                    u16::from_le_bytes([b[0], b[1]]),
                    u16::from_le_bytes([b[2], b[3]]),
                )
            })),
            VR::SQ => return None,
        })
    }
}

/// Whether the parser reads a value of this VR and size whole: a binary value that is not a
/// whole number of its numbers leaves bytes behind that it then reads as the next header.
fn check(vr: VR, len: usize) -> Result<(), Stop> {
    let unit = match vr {
        VR::US | VR::OW | VR::SS => 2,
        VR::AT | VR::FL | VR::OF | VR::SL | VR::UL | VR::OL => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        VR::SQ => return Err(Stop::Decline),
        _ => 1,
    };
    if len.is_multiple_of(unit) {
        Ok(())
    } else {
        Err(Stop::Decline)
    }
}

/// How the parser decodes text after a top-level (0008,0005): as ISO 8859-1 (`false`; the
/// default repertoire decodes so in dicom-encoding too) or UTF-8 (`true`); `None` for any
/// other character set. The parser goes by the first value.
fn charset_is_utf8(vr: VR, raw: &[u8]) -> Option<bool> {
    if vr != VR::CS {
        return None;
    }
    let first = raw.split(|b| *b == b'\\').next().unwrap_or_default();
    match latin1(first).trim() {
        "" | "ISO_IR 6" | "ISO_IR 100" => Some(false),
        "ISO_IR 192" => Some(true),
        _ => None,
    }
}

/// Text bytes as ISO 8859-1, each byte the code point of its value.
fn latin1(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) if raw.is_ascii() => s.to_owned(),
        _ => raw.iter().map(|&b| char::from(b)).collect(),
    }
}
