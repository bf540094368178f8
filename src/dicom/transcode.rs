//! Lossless conversion of a dataset to another transfer syntax, for the forwarder when a
//! destination refuses the syntax an object was received in (issue 14).
//!
//! What "lossless" means here: every element value the sender gave is delivered with the same
//! decoded value. Between the uncompressed syntaxes (Implicit VR LE, Explicit VR LE, Explicit
//! VR BE, Deflated Explicit VR LE) only the framing changes: element headers are rewritten,
//! binary values swapped when the byte order changes, text and OB bytes copied untouched (no
//! character set is decoded, so no text can be altered), sequence and item lengths and group
//! lengths recomputed. Compressed pixel data is decompressed with the pure-Rust codecs of the
//! dicom-rs transfer-syntax registry: RLE Lossless and the JPEG lossless processes give back
//! exactly the encoded samples. JPEG baseline and extended (processes 1, 2 and 4) are lossy
//! *compressions*, but decompressing them adds no loss: the result is the image every viewer
//! decodes from those bytes (decoders may differ by one grey level, as ISO 10918-2 allows).
//! Such objects keep, or get, Lossy Image Compression (0028,2110) = "01", so the archive still
//! knows the image went through a lossy step. Nothing is ever *compressed* here.
//!
//! Pure and synchronous: bytes in, bytes out, in memory, bounded by a caller's limit on the
//! input, the inflated and the decoded sizes (an object above it is refused with a reason
//! instead of exhausting memory). The codec runs under `catch_unwind`: a damaged object is a
//! dead letter, never a dead forwarder thread.

use std::borrow::Cow;
use std::io::{Read, Write};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::adapters::{PixelDataObject, RawPixelData};
use dicom_encoding::Codec;
use dicom_transfer_syntax_registry::entries;

/// The transfer syntaxes this module reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Syntax {
    /// 1.2.840.10008.1.2, the default every SCP must accept.
    ImplicitVrLittleEndian,
    /// 1.2.840.10008.1.2.1
    ExplicitVrLittleEndian,
    /// 1.2.840.10008.1.2.2 (retired, still met).
    ExplicitVrBigEndian,
    /// 1.2.840.10008.1.2.1.99: Explicit VR LE, the whole dataset raw-deflated (PS3.5 A.5).
    DeflatedExplicitVrLittleEndian,
    /// 1.2.840.10008.1.2.5
    RleLossless,
    /// 1.2.840.10008.1.2.4.50, JPEG process 1 (lossy).
    JpegBaseline,
    /// 1.2.840.10008.1.2.4.51, JPEG processes 2 and 4 (lossy).
    JpegExtended,
    /// 1.2.840.10008.1.2.4.57, JPEG process 14 (lossless).
    JpegLossless,
    /// 1.2.840.10008.1.2.4.70, JPEG process 14, selection value 1 (lossless).
    JpegLosslessSv1,
}

impl Syntax {
    const ALL: [Syntax; 9] = [
        Syntax::ImplicitVrLittleEndian,
        Syntax::ExplicitVrLittleEndian,
        Syntax::ExplicitVrBigEndian,
        Syntax::DeflatedExplicitVrLittleEndian,
        Syntax::RleLossless,
        Syntax::JpegBaseline,
        Syntax::JpegExtended,
        Syntax::JpegLossless,
        Syntax::JpegLosslessSv1,
    ];

    /// The syntax of a transfer syntax UID (padding ignored), if this module handles it.
    pub fn from_uid(uid: &str) -> Option<Syntax> {
        let uid = uid.trim_end_matches(['\0', ' ']);
        Syntax::ALL.into_iter().find(|s| s.uid() == uid)
    }

    /// Its UID.
    pub fn uid(self) -> &'static str {
        match self {
            Syntax::ImplicitVrLittleEndian => "1.2.840.10008.1.2",
            Syntax::ExplicitVrLittleEndian => "1.2.840.10008.1.2.1",
            Syntax::ExplicitVrBigEndian => "1.2.840.10008.1.2.2",
            Syntax::DeflatedExplicitVrLittleEndian => "1.2.840.10008.1.2.1.99",
            Syntax::RleLossless => "1.2.840.10008.1.2.5",
            Syntax::JpegBaseline => "1.2.840.10008.1.2.4.50",
            Syntax::JpegExtended => "1.2.840.10008.1.2.4.51",
            Syntax::JpegLossless => "1.2.840.10008.1.2.4.57",
            Syntax::JpegLosslessSv1 => "1.2.840.10008.1.2.4.70",
        }
    }

    /// Its name, for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Syntax::ImplicitVrLittleEndian => "Implicit VR Little Endian",
            Syntax::ExplicitVrLittleEndian => "Explicit VR Little Endian",
            Syntax::ExplicitVrBigEndian => "Explicit VR Big Endian",
            Syntax::DeflatedExplicitVrLittleEndian => "Deflated Explicit VR Little Endian",
            Syntax::RleLossless => "RLE Lossless",
            Syntax::JpegBaseline => "JPEG Baseline",
            Syntax::JpegExtended => "JPEG Extended",
            Syntax::JpegLossless => "JPEG Lossless",
            Syntax::JpegLosslessSv1 => "JPEG Lossless SV1",
        }
    }

    /// Whether pixel data is native (not encapsulated): the syntaxes an object can be
    /// converted *to*.
    pub fn is_native(self) -> bool {
        matches!(
            self,
            Syntax::ImplicitVrLittleEndian
                | Syntax::ExplicitVrLittleEndian
                | Syntax::ExplicitVrBigEndian
                | Syntax::DeflatedExplicitVrLittleEndian
        )
    }

    /// Whether the compression itself lost information (the decompressed object must say so).
    fn is_lossy(self) -> bool {
        matches!(self, Syntax::JpegBaseline | Syntax::JpegExtended)
    }

    fn encoding(self) -> Enc {
        Enc {
            explicit: self != Syntax::ImplicitVrLittleEndian,
            big: self == Syntax::ExplicitVrBigEndian,
        }
    }
}

/// The syntaxes a converted object is offered in, best first: Explicit VR LE keeps every VR,
/// Implicit VR LE is the one every SCP must accept (PS3.5 §10.1). Big endian and deflate are
/// never needed by an archive that accepts neither of these.
pub const TARGETS: [Syntax; 2] = [
    Syntax::ExplicitVrLittleEndian,
    Syntax::ImplicitVrLittleEndian,
];

/// Why a dataset was not converted. Every variant reads as a dead-letter reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranscodeError {
    /// No lossless decoder for the object's transfer syntax (JPEG 2000, JPEG-LS, …).
    #[error(
        "no lossless conversion from transfer syntax {0} (only the uncompressed syntaxes, \
         deflate, RLE Lossless and JPEG processes 1, 2-4 and 14 are decoded)"
    )]
    UnsupportedSource(String),
    /// The target is not an uncompressed syntax (we never compress).
    #[error("conversion to transfer syntax {0} is not offered (only to uncompressed syntaxes)")]
    UnsupportedTarget(String),
    /// Above the configured size limit.
    #[error("the {what} is {size} bytes, above the destination's transcode_max_bytes ({limit})")]
    TooLarge {
        /// Which size: the stored dataset, the inflated dataset, the decoded pixel data, the
        /// converted dataset.
        what: &'static str,
        /// Its size (at least this many bytes).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The deflated dataset does not inflate.
    #[error("the deflated dataset does not inflate: {0}")]
    Inflate(String),
    /// The dataset's framing is broken.
    #[error("malformed dataset at byte {offset}: {what}")]
    Malformed {
        /// Offset in the (inflated) dataset.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// The pixel data cannot be decoded, or its attributes are missing or unsupported.
    #[error("the pixel data cannot be decompressed: {0}")]
    Pixel(String),
}

fn malformed(offset: usize, what: impl Into<String>) -> TranscodeError {
    TranscodeError::Malformed {
        offset,
        what: what.into(),
    }
}

/// Whether a dataset in `from` can be converted to `to` by [`transcode`].
pub fn can_convert(from: &str, to: &str) -> bool {
    matches!(
        (Syntax::from_uid(from), Syntax::from_uid(to)),
        (Some(f), Some(t)) if f != t && t.is_native()
    )
}

/// Converts `dataset` (the bytes after the file meta, as stored) from `from` to `to`.
/// `limit` bounds the input, the inflated dataset, the decoded pixel data and the output.
pub fn transcode(
    dataset: &[u8],
    from: Syntax,
    to: Syntax,
    limit: u64,
) -> Result<Vec<u8>, TranscodeError> {
    if !to.is_native() {
        return Err(TranscodeError::UnsupportedTarget(to.uid().to_owned()));
    }
    let too_large = |what, size: usize| TranscodeError::TooLarge {
        what,
        size: size as u64,
        limit,
    };
    if dataset.len() as u64 > limit {
        return Err(too_large("stored dataset", dataset.len()));
    }
    let inflated;
    let source: &[u8] = if from == Syntax::DeflatedExplicitVrLittleEndian {
        inflated = inflate(dataset, limit)?;
        &inflated
    } else {
        dataset
    };
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut w = Writer {
        out: Vec::with_capacity(source.len().min(limit_usize).saturating_add(1024)),
        enc: to.encoding(),
        limit: limit_usize,
    };
    let mut r = Reader {
        buf: source,
        pos: 0,
        enc: from.encoding(),
    };
    let mut top = Conversion {
        from,
        limit: limit_usize,
        image: Image::default(),
    };
    top.dataset(&mut r, &mut w, None, 0, true)?;
    let mut out = w.out;
    if to == Syntax::DeflatedExplicitVrLittleEndian {
        let mut enc = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(out.len() / 2),
            flate2::Compression::default(),
        );
        enc.write_all(&out)
            .and_then(|()| enc.finish())
            .map(|mut d| {
                // PS3.5 A.5: a deflated stream of odd length is padded with one 0x00.
                if d.len() % 2 == 1 {
                    d.push(0);
                }
                out = d;
            })
            .map_err(|e| TranscodeError::Inflate(format!("deflating failed: {e}")))?;
    }
    Ok(out)
}

/// Inflates a raw-deflate stream (PS3.5 A.5), refusing to grow past `limit`.
fn inflate(data: &[u8], limit: u64) -> Result<Vec<u8>, TranscodeError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(3));
    let mut dec = flate2::read::DeflateDecoder::new(data).take(limit.saturating_add(1));
    dec.read_to_end(&mut out)
        .map_err(|e| TranscodeError::Inflate(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(TranscodeError::TooLarge {
            what: "inflated dataset",
            size: out.len() as u64,
            limit,
        });
    }
    Ok(out)
}

/// How elements are framed: explicit or implicit VR, and the byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Enc {
    explicit: bool,
    big: bool,
}

/// Items inside an undefined-length UN element are Implicit VR LE (PS3.5 §6.2.2).
const IMPLICIT_LE: Enc = Enc {
    explicit: false,
    big: false,
};

const UNDEFINED: u32 = u32::MAX;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
/// Deeper nesting than any real object; a bound on the recursion.
const MAX_DEPTH: usize = 64;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    enc: Enc,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TranscodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| {
                malformed(
                    self.pos,
                    format!(
                        "{n} bytes needed, {} left",
                        self.buf.len().saturating_sub(self.pos)
                    ),
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, TranscodeError> {
        let b: [u8; 2] = self.take(2)?.try_into().expect("two bytes");
        Ok(if self.enc.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&mut self) -> Result<u32, TranscodeError> {
        let b: [u8; 4] = self.take(4)?.try_into().expect("four bytes");
        Ok(if self.enc.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn tag(&mut self) -> Result<Tag, TranscodeError> {
        Ok(Tag(self.u16()?, self.u16()?))
    }

    fn at_end(&self, end: Option<usize>) -> bool {
        self.pos >= end.unwrap_or(self.buf.len())
    }
}

struct Writer {
    out: Vec<u8>,
    enc: Enc,
    limit: usize,
}

impl Writer {
    fn bytes(&mut self, b: &[u8]) -> Result<(), TranscodeError> {
        if self.out.len().saturating_add(b.len()) > self.limit {
            return Err(TranscodeError::TooLarge {
                what: "converted dataset",
                size: (self.out.len() + b.len()) as u64,
                limit: self.limit as u64,
            });
        }
        self.out.extend_from_slice(b);
        Ok(())
    }

    fn u16(&mut self, v: u16) -> Result<(), TranscodeError> {
        if self.enc.big {
            self.bytes(&v.to_be_bytes())
        } else {
            self.bytes(&v.to_le_bytes())
        }
    }

    fn u32(&mut self, v: u32) -> Result<(), TranscodeError> {
        if self.enc.big {
            self.bytes(&v.to_be_bytes())
        } else {
            self.bytes(&v.to_le_bytes())
        }
    }

    fn tag(&mut self, t: Tag) -> Result<(), TranscodeError> {
        self.u16(t.0)?;
        self.u16(t.1)
    }

    /// An element header; returns the position of its length field (for [`Writer::patch`]).
    fn header(&mut self, tag: Tag, vr: VR, len: u32) -> Result<usize, TranscodeError> {
        self.tag(tag)?;
        if self.enc.explicit {
            self.bytes(vr.to_string().as_bytes())?;
            if long_length(vr) {
                self.bytes(&[0, 0])?;
            } else {
                let at = self.out.len();
                self.u16(u16::try_from(len).expect("checked by the caller"))?;
                return Ok(at);
            }
        }
        let at = self.out.len();
        self.u32(len)?;
        Ok(at)
    }

    /// Replaces the 32-bit length written at `at` with the bytes written since `from`.
    fn patch(&mut self, at: usize, from: usize) -> Result<(), TranscodeError> {
        let n = u32::try_from(self.out.len() - from)
            .ok()
            .filter(|n| *n != UNDEFINED)
            .ok_or_else(|| malformed(0, "a sequence or item grew beyond 4 GiB"))?;
        let b = if self.enc.big {
            n.to_be_bytes()
        } else {
            n.to_le_bytes()
        };
        self.out[at..at + 4].copy_from_slice(&b);
        Ok(())
    }
}

/// VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
fn long_length(vr: VR) -> bool {
    use VR::*;
    matches!(
        vr,
        OB | OD | OF | OL | OV | OW | SQ | UC | UR | UT | UN | SV | UV
    )
}

/// Size of the words a VR's value is made of, when the byte order matters.
fn word_size(vr: VR) -> usize {
    use VR::*;
    match vr {
        US | SS | OW | AT => 2,
        UL | SL | FL | OF | OL => 4,
        FD | OD | SV | UV | OV => 8,
        _ => 1,
    }
}

/// What the pixel data decoder needs, read from the top-level image attributes as they pass.
#[derive(Debug, Default, Clone)]
struct Image {
    rows: Option<u16>,
    columns: Option<u16>,
    samples_per_pixel: Option<u16>,
    bits_allocated: Option<u16>,
    bits_stored: Option<u16>,
    pixel_representation: Option<u16>,
    photometric: Option<String>,
    frames: Option<u32>,
}

/// One conversion's state.
struct Conversion {
    from: Syntax,
    limit: usize,
    /// Image attributes of the top-level dataset.
    image: Image,
}

/// Attributes the decompressed object gets, written in tag order at the top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// (0028,0004) → "RGB": the JPEG decoder returns RGB for YCbCr-coded colour.
    PhotometricRgb,
    /// (0028,0006) → 0: decoders return colour-by-pixel.
    PlanarConfiguration,
    /// (0028,2110) → "01" when absent: the image went through a lossy compression.
    LossyImageCompression,
}

impl Fix {
    fn tag(self) -> Tag {
        match self {
            Fix::PhotometricRgb => Tag(0x0028, 0x0004),
            Fix::PlanarConfiguration => Tag(0x0028, 0x0006),
            Fix::LossyImageCompression => Tag(0x0028, 0x2110),
        }
    }

    fn write(self, w: &mut Writer) -> Result<(), TranscodeError> {
        match self {
            Fix::PhotometricRgb => {
                w.header(self.tag(), VR::CS, 4)?;
                w.bytes(b"RGB ")
            }
            Fix::PlanarConfiguration => {
                w.header(self.tag(), VR::US, 2)?;
                w.u16(0)
            }
            Fix::LossyImageCompression => {
                w.header(self.tag(), VR::CS, 2)?;
                w.bytes(b"01")
            }
        }
    }
}

impl Conversion {
    fn decompressing(&self) -> bool {
        !self.from.is_native()
    }

    /// Converts elements until `end` (a defined length), an Item Delimitation Item (in an
    /// undefined-length item) or the end of the buffer (the top level).
    fn dataset(
        &mut self,
        r: &mut Reader,
        w: &mut Writer,
        end: Option<usize>,
        depth: usize,
        top: bool,
    ) -> Result<(), TranscodeError> {
        if depth > MAX_DEPTH {
            return Err(malformed(r.pos, "sequences nested too deep"));
        }
        // Attributes a decompressed image gets, planned once Samples per Pixel has passed.
        let mut pending: Vec<Fix> = Vec::new();
        let mut planned = !(top && self.decompressing());
        // A group length being recomputed: (group, position of its value, first byte after).
        let mut group_length: Option<(u16, usize, usize)> = None;
        let mut level = Image::default();
        while !r.at_end(end) {
            let start = r.pos;
            let tag = r.tag()?;
            if tag == ITEM_END {
                if end.is_some() || top {
                    return Err(malformed(
                        start,
                        "item delimiter outside an undefined-length item",
                    ));
                }
                r.u32()?;
                Self::close_group(w, &mut group_length)?;
                w.tag(ITEM_END)?;
                w.u32(0)?;
                return Ok(());
            }
            if tag.0 == 0xFFFE {
                return Err(malformed(start, format!("unexpected {tag} among elements")));
            }
            if group_length.is_some_and(|(g, _, _)| g != tag.0) {
                Self::close_group(w, &mut group_length)?;
            }
            if !planned && tag > Tag(0x0028, 0x0002) {
                planned = true;
                pending = self.plan_fixes();
            }
            // Fixes for absent attributes go in before this element, in tag order; a fix for
            // this very element replaces its value (Lossy Image Compression excepted: a
            // present one is the sender's word and is copied).
            let mut replace = None;
            while let Some(&f) = pending.first() {
                if f.tag() > tag {
                    break;
                }
                pending.remove(0);
                if f.tag() < tag {
                    f.write(w)?;
                } else if f != Fix::LossyImageCompression {
                    replace = Some(f);
                }
            }
            let (vr, len) = self.header(r, tag, &level)?;
            if tag == PIXEL_DATA && top && len == UNDEFINED {
                if !self.decompressing() {
                    return Err(malformed(
                        start,
                        "encapsulated pixel data in a native syntax",
                    ));
                }
                self.pixel_data(r, w, start)?;
                continue;
            }
            if vr == VR::SQ || len == UNDEFINED {
                if tag == PIXEL_DATA {
                    return Err(malformed(
                        start,
                        "encapsulated pixel data inside a sequence",
                    ));
                }
                // An undefined-length UN holds a sequence in Implicit VR LE (PS3.5 §6.2.2).
                let inner = if vr == VR::UN { IMPLICIT_LE } else { r.enc };
                self.sequence(r, w, tag, len, inner, depth)?;
                continue;
            }
            let value = r.take(len as usize)?;
            self.note(tag, vr, value, r.enc.big, &mut level, top);
            if let Some(f) = replace {
                f.write(w)?;
                continue;
            }
            if tag.1 == 0x0000 && vr == VR::UL && len == 4 {
                // Group length: its value is recomputed once the group has been written.
                w.header(tag, VR::UL, 4)?;
                let at = w.out.len();
                w.bytes(&[0; 4])?;
                group_length = Some((tag.0, at, w.out.len()));
                continue;
            }
            let mut vr_out = vr;
            if w.enc.explicit && !long_length(vr) && value.len() > 0xFFFF {
                // Only from Implicit VR: too long for a 2-byte length. UN keeps the bytes.
                if w.enc.big {
                    return Err(malformed(
                        start,
                        format!("{tag} {vr} value of {} bytes", value.len()),
                    ));
                }
                vr_out = VR::UN;
            }
            w.header(tag, vr_out, len)?;
            self.value(w, vr_out, value, r.enc.big, start)?;
        }
        Self::close_group(w, &mut group_length)?;
        if let Some(e) = end {
            if r.pos != e {
                return Err(malformed(r.pos, "an element crosses the end of its item"));
            }
        } else if !top {
            return Err(malformed(
                r.pos,
                "undefined-length item without its delimiter",
            ));
        }
        if !planned {
            pending = self.plan_fixes();
        }
        for f in pending {
            f.write(w)?;
        }
        Ok(())
    }

    /// Which attributes a decompressed image needs changed or added, in tag order.
    fn plan_fixes(&self) -> Vec<Fix> {
        let mut v = Vec::new();
        if self.image.samples_per_pixel.unwrap_or(1) > 1 {
            if self.from.is_lossy() {
                v.push(Fix::PhotometricRgb);
            }
            v.push(Fix::PlanarConfiguration);
        }
        if self.from.is_lossy() {
            v.push(Fix::LossyImageCompression);
        }
        v
    }

    fn close_group(
        w: &mut Writer,
        group_length: &mut Option<(u16, usize, usize)>,
    ) -> Result<(), TranscodeError> {
        if let Some((_, at, from)) = group_length.take() {
            w.patch(at, from)?;
        }
        Ok(())
    }

    /// Reads an element header after its tag: its VR (from the dictionary in implicit VR)
    /// and length.
    fn header(&self, r: &mut Reader, tag: Tag, level: &Image) -> Result<(VR, u32), TranscodeError> {
        if r.enc.explicit {
            let at = r.pos;
            let code: [u8; 2] = r.take(2)?.try_into().expect("two bytes");
            let vr = VR::from_binary(code).ok_or_else(|| {
                malformed(
                    at,
                    format!(
                        "{tag} has an unknown VR {:?}",
                        String::from_utf8_lossy(&code)
                    ),
                )
            })?;
            let len = if long_length(vr) {
                r.take(2)?;
                r.u32()?
            } else {
                u32::from(r.u16()?)
            };
            Ok((vr, len))
        } else {
            let len = r.u32()?;
            Ok((implicit_vr(tag, level, len), len))
        }
    }

    /// Records the image attributes the decoder and the fixes need.
    fn note(&mut self, tag: Tag, vr: VR, value: &[u8], big: bool, level: &mut Image, top: bool) {
        let us = || {
            (value.len() >= 2 && matches!(vr, VR::US | VR::SS | VR::OW | VR::UN)).then(|| {
                let b = [value[0], value[1]];
                if big {
                    u16::from_be_bytes(b)
                } else {
                    u16::from_le_bytes(b)
                }
            })
        };
        let text = || {
            String::from_utf8_lossy(value)
                .trim_matches(|c: char| c == ' ' || c == '\0')
                .to_owned()
        };
        match tag {
            Tag(0x0028, 0x0100) => level.bits_allocated = us(),
            Tag(0x0028, 0x0103) => level.pixel_representation = us(),
            _ => {}
        }
        if !top {
            return;
        }
        let img = &mut self.image;
        match tag {
            Tag(0x0028, 0x0002) => img.samples_per_pixel = us(),
            Tag(0x0028, 0x0004) => img.photometric = Some(text()),
            Tag(0x0028, 0x0008) => img.frames = text().parse().ok(),
            Tag(0x0028, 0x0010) => img.rows = us(),
            Tag(0x0028, 0x0011) => img.columns = us(),
            Tag(0x0028, 0x0100) => img.bits_allocated = us(),
            Tag(0x0028, 0x0101) => img.bits_stored = us(),
            Tag(0x0028, 0x0103) => img.pixel_representation = us(),
            _ => {}
        }
    }

    /// Writes a value, swapping its words when the byte order changes.
    fn value(
        &self,
        w: &mut Writer,
        vr: VR,
        value: &[u8],
        src_big: bool,
        start: usize,
    ) -> Result<(), TranscodeError> {
        let size = word_size(vr);
        if size == 1 || src_big == w.enc.big {
            return w.bytes(value);
        }
        if !value.len().is_multiple_of(size) {
            return Err(malformed(
                start,
                format!(
                    "{vr} value of {} bytes is not a whole number of words",
                    value.len()
                ),
            ));
        }
        let from = w.out.len();
        w.bytes(value)?;
        for word in w.out[from..].chunks_exact_mut(size) {
            word.reverse();
        }
        Ok(())
    }

    /// Converts a sequence (header already read): items with their lengths recomputed, or
    /// kept undefined.
    fn sequence(
        &mut self,
        r: &mut Reader,
        w: &mut Writer,
        tag: Tag,
        len: u32,
        inner: Enc,
        depth: usize,
    ) -> Result<(), TranscodeError> {
        let at = w.header(tag, VR::SQ, len)?;
        let body = w.out.len();
        let end = if len == UNDEFINED {
            None
        } else {
            Some(
                r.pos
                    .checked_add(len as usize)
                    .filter(|e| *e <= r.buf.len())
                    .ok_or_else(|| malformed(r.pos, format!("{tag} longer than the dataset")))?,
            )
        };
        let outer = r.enc;
        // Item headers and their contents share the items' encoding.
        r.enc = inner;
        let res = self.items(r, w, end, depth);
        r.enc = outer;
        res?;
        if len != UNDEFINED {
            w.patch(at, body)?;
        }
        Ok(())
    }

    /// The items of a sequence, up to `end` or its Sequence Delimitation Item.
    fn items(
        &mut self,
        r: &mut Reader,
        w: &mut Writer,
        end: Option<usize>,
        depth: usize,
    ) -> Result<(), TranscodeError> {
        loop {
            if let Some(e) = end {
                if r.pos == e {
                    return Ok(());
                }
                if r.pos > e {
                    return Err(malformed(r.pos, "an item crosses the end of its sequence"));
                }
            }
            let item_at = r.pos;
            let t = r.tag()?;
            let item_len = r.u32()?;
            if t == SEQUENCE_END {
                if end.is_some() {
                    return Err(malformed(
                        item_at,
                        "sequence delimiter in a defined-length sequence",
                    ));
                }
                w.tag(SEQUENCE_END)?;
                w.u32(0)?;
                return Ok(());
            }
            if t != ITEM {
                return Err(malformed(
                    item_at,
                    format!("{t} where an item was expected"),
                ));
            }
            w.tag(ITEM)?;
            let item_len_at = w.out.len();
            w.u32(item_len)?;
            let item_body = w.out.len();
            let item_end = if item_len == UNDEFINED {
                None
            } else {
                Some(
                    r.pos
                        .checked_add(item_len as usize)
                        .filter(|e| *e <= r.buf.len())
                        .ok_or_else(|| malformed(item_at, "item longer than the dataset"))?,
                )
            };
            self.dataset(r, w, item_end, depth + 1, false)?;
            if item_len != UNDEFINED {
                w.patch(item_len_at, item_body)?;
            }
        }
    }

    /// Reads encapsulated pixel data (header already read), decodes it and writes native
    /// Pixel Data.
    fn pixel_data(
        &mut self,
        r: &mut Reader,
        w: &mut Writer,
        start: usize,
    ) -> Result<(), TranscodeError> {
        let mut fragments: Vec<&[u8]> = Vec::new();
        let mut offset_table: Option<&[u8]> = None;
        loop {
            let at = r.pos;
            let t = r.tag()?;
            let len = r.u32()?;
            if t == SEQUENCE_END {
                break;
            }
            if t != ITEM || len == UNDEFINED {
                return Err(malformed(at, format!("{t} in encapsulated pixel data")));
            }
            let v = r.take(len as usize)?;
            if offset_table.is_none() {
                offset_table = Some(v);
            } else {
                fragments.push(v);
            }
        }
        if fragments.is_empty() {
            return Err(malformed(
                start,
                "encapsulated pixel data without fragments",
            ));
        }
        let img = &self.image;
        let need = |v: Option<u16>, name: &str| {
            v.ok_or_else(|| TranscodeError::Pixel(format!("{name} is missing")))
        };
        let (rows, cols, spp, bits) = (
            need(img.rows, "Rows (0028,0010)")?,
            need(img.columns, "Columns (0028,0011)")?,
            need(img.samples_per_pixel, "Samples per Pixel (0028,0002)")?,
            need(img.bits_allocated, "Bits Allocated (0028,0100)")?,
        );
        if bits != 8 && bits != 16 {
            return Err(TranscodeError::Pixel(format!(
                "Bits Allocated {bits} (only 8 and 16 are decoded)"
            )));
        }
        if !matches!(spp, 1 | 3) {
            return Err(TranscodeError::Pixel(format!(
                "Samples per Pixel {spp} (only 1 and 3 are decoded)"
            )));
        }
        let photometric = img.photometric.clone().unwrap_or_default();
        if spp == 3 && self.from.is_lossy() && !photometric.starts_with("YBR_FULL") {
            // The decoder picks the colour transform from the JPEG markers, not from the
            // dataset: only YCbCr-coded colour (the usual case) is known to come out right.
            return Err(TranscodeError::Pixel(format!(
                "lossy JPEG colour in Photometric Interpretation {photometric:?} (only \
                 YBR_FULL and YBR_FULL_422 are decoded)"
            )));
        }
        let frames = img.frames.unwrap_or(1).max(1);
        let expected = u64::from(rows)
            * u64::from(cols)
            * u64::from(spp)
            * u64::from(bits / 8)
            * u64::from(frames);
        if expected > self.limit as u64 {
            return Err(TranscodeError::TooLarge {
                what: "decoded pixel data",
                size: expected,
                limit: self.limit as u64,
            });
        }
        let object = Encapsulated {
            ts: self.from.uid(),
            image: img.clone(),
            fragments: &fragments,
            offset_table: offset_table
                .unwrap_or(&[])
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")))
                .collect(),
        };
        let mut native = decode(self.from, &object)?;
        if native.len() as u64 != expected {
            return Err(TranscodeError::Pixel(format!(
                "{} bytes decoded where {rows} × {cols} × {spp} samples × {bits} bits × \
                 {frames} frames make {expected}",
                native.len()
            )));
        }
        if native.len() % 2 == 1 {
            native.push(0); // PS3.5 §8.1.1: even length.
        }
        let vr = if bits > 8 { VR::OW } else { VR::OB };
        let len = u32::try_from(native.len())
            .map_err(|_| TranscodeError::Pixel("decoded pixel data above 4 GiB".into()))?;
        w.header(PIXEL_DATA, vr, len)?;
        // The codecs return little-endian samples.
        self.value(w, vr, &native, false, start)
    }
}

/// The VR of an element read in implicit VR: the dictionary's, resolved for the pixel
/// attributes seen so far; private creators are LO, other private and unknown elements UN.
fn implicit_vr(tag: Tag, level: &Image, len: u32) -> VR {
    if tag.1 == 0x0000 {
        return VR::UL;
    }
    if tag.0 % 2 == 1 {
        return if (0x0010..=0x00FF).contains(&tag.1) {
            VR::LO
        } else if len == UNDEFINED {
            VR::SQ
        } else {
            VR::UN
        };
    }
    let pixel = || {
        if level.bits_allocated.unwrap_or(16) > 8 {
            VR::OW
        } else {
            VR::OB
        }
    };
    match StandardDataDictionary.by_tag(tag).map(|e| e.vr()) {
        Some(VirtualVr::Exact(vr)) => vr,
        Some(VirtualVr::Xs) => {
            if level.pixel_representation == Some(1) {
                VR::SS
            } else {
                VR::US
            }
        }
        Some(VirtualVr::Ox) => VR::OW,
        Some(VirtualVr::Px) => pixel(),
        Some(VirtualVr::Lt) => {
            if len > 0xFFFF {
                VR::OW
            } else {
                VR::US
            }
        }
        _ if len == UNDEFINED => VR::SQ,
        _ => VR::UN,
    }
}

/// Encapsulated pixel data as the registry's decoders see it.
struct Encapsulated<'a> {
    ts: &'static str,
    image: Image,
    fragments: &'a [&'a [u8]],
    offset_table: Vec<u32>,
}

impl PixelDataObject for Encapsulated<'_> {
    fn transfer_syntax_uid(&self) -> &str {
        self.ts
    }
    fn rows(&self) -> Option<u16> {
        self.image.rows
    }
    fn cols(&self) -> Option<u16> {
        self.image.columns
    }
    fn samples_per_pixel(&self) -> Option<u16> {
        self.image.samples_per_pixel
    }
    fn bits_allocated(&self) -> Option<u16> {
        self.image.bits_allocated
    }
    fn bits_stored(&self) -> Option<u16> {
        self.image.bits_stored
    }
    fn photometric_interpretation(&self) -> Option<&str> {
        self.image.photometric.as_deref()
    }
    fn number_of_frames(&self) -> Option<u32> {
        self.image.frames
    }
    fn number_of_fragments(&self) -> Option<u32> {
        u32::try_from(self.fragments.len()).ok()
    }
    fn fragment(&self, fragment: usize) -> Option<Cow<'_, [u8]>> {
        self.fragments.get(fragment).map(|f| Cow::Borrowed(*f))
    }
    fn offset_table(&self) -> Option<Cow<'_, [u32]>> {
        Some(Cow::Borrowed(&self.offset_table))
    }
    fn raw_pixel_data(&self) -> Option<RawPixelData> {
        Some(RawPixelData {
            fragments: self.fragments.iter().map(|f| f.to_vec()).collect(),
            offset_table: self.offset_table.iter().copied().collect(),
        })
    }
}

/// Decodes every frame with the registry's codec for `from`, under `catch_unwind`.
fn decode(from: Syntax, object: &Encapsulated) -> Result<Vec<u8>, TranscodeError> {
    let ts = match from {
        Syntax::RleLossless => entries::RLE_LOSSLESS.erased(),
        Syntax::JpegBaseline => entries::JPEG_BASELINE.erased(),
        Syntax::JpegExtended => entries::JPEG_EXTENDED.erased(),
        Syntax::JpegLossless => entries::JPEG_LOSSLESS_NON_HIERARCHICAL.erased(),
        Syntax::JpegLosslessSv1 => {
            entries::JPEG_LOSSLESS_NON_HIERARCHICAL_FIRST_ORDER_PREDICTION.erased()
        }
        native => return Err(TranscodeError::UnsupportedSource(native.uid().to_owned())),
    };
    let Codec::EncapsulatedPixelData(Some(reader), _) = ts.codec() else {
        return Err(TranscodeError::UnsupportedSource(from.uid().to_owned()));
    };
    let mut out = Vec::new();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reader.decode(object, &mut out)
    }));
    match run {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(TranscodeError::Pixel(e.to_string())),
        Err(_) => Err(TranscodeError::Pixel(format!(
            "the {} decoder failed on these bytes",
            from.name()
        ))),
    }
}

#[cfg(test)]
mod tests;
