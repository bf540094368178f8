//! Specific Character Set (0008,0005): text bytes → Unicode, including the ISO 2022 code
//! extensions (PS3.5 §6.1.2.5, Annex H–K) that dicom-parser does not handle.
//!
//! dicom-parser decodes every text value with the codec of the *first* value of (0008,0005)
//! and ignores escape sequences, so `\ISO 2022 IR 87` (Japanese), `ISO 2022 IR 13\ISO 2022 IR
//! 87`, `\ISO 2022 IR 149` (Korean) and `\ISO 2022 IR 58` (Chinese) names come out with their
//! escape sequences in them, and a Kanji key never matches. This module decodes them
//! properly:
//!
//! - [`decode`] interprets bytes under a list of terms: the first term sets the initial G0/G1
//!   sets, escape sequences (`ESC ( B`, `ESC $ B`, `ESC $ ( D`, `ESC ) I`, `ESC $ ) C`,
//!   `ESC $ ) A`, `ESC - A`…) switch them. The byte tables are `encoding_rs`'s (EUC-JP for
//!   JIS X 0201/0208/0212, EUC-KR for KS X 1001, GBK for GB 2312, the ISO 8859 family,
//!   windows-874 for TIS 620); only the ISO 2022 state machine is written here.
//! - [`parser_decodes`] says when dicom-parser's own decoding is right (one term it knows,
//!   without code extensions), so the common case costs nothing.
//! - [`latin1_transparent`] supports the trick the callers use for the other case: the
//!   (0008,0005) value in a copy of the dataset bytes is replaced by `ISO_IR 100`, which
//!   dicom-parser decodes byte for byte (byte `b` → `U+00bb`); [`redecode_latin1`] then turns
//!   each such string back into its bytes and decodes them here. That keeps one parser (and its
//!   structure checks) and adds no second text path through the dataset.
//!
//! Values are decoded one at a time (the callers split at `\` first), so the ISO 2022 state
//! starts afresh at each value, as PS3.5 §6.1.2.5.3 requires of the encoder. A multi-byte
//! character whose second byte is 0x5C would be split there: the same limitation as pydicom.

use encoding_rs::Encoding as Rs;

use super::scan::Encoding;

/// The terms of a (0008,0005) value: split at `\`, padding trimmed. The first may be empty
/// (the default repertoire, as in `\ISO 2022 IR 87`).
pub fn terms(value: &str) -> Vec<String> {
    value
        .split('\\')
        .map(|t| t.trim_matches([' ', '\0']).to_owned())
        .collect()
}

/// Whether dicom-parser decodes text under these terms correctly by itself: a single term
/// without code extensions, of a set dicom-encoding knows.
pub fn parser_decodes<S: AsRef<str>>(terms: &[S]) -> bool {
    match terms {
        [] => true,
        [one] => {
            let t = one.as_ref();
            t.is_empty()
                || (!t.contains("2022")
                    && dicom_encoding::text::SpecificCharacterSet::from_code(t).is_some())
        }
        _ => false,
    }
}

/// The G0 (bytes 0x21–0x7E) set in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G0 {
    /// ISO-IR 6 (ASCII), or ISO-IR 14 (JIS X 0201 Romaji, read as ASCII).
    Ascii,
    /// ISO-IR 87: JIS X 0208, two bytes per character.
    Jis0208,
    /// ISO-IR 159: JIS X 0212, two bytes per character.
    Jis0212,
}

/// The G1 (bytes 0xA1–0xFE) set in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G1 {
    /// None designated: high bytes are read as Latin-1 (lenient).
    None,
    /// A 96-character single-byte set (the ISO 8859 family, TIS 620).
    Single(&'static Rs),
    /// ISO-IR 13: JIS X 0201 Katakana.
    Katakana,
    /// A 94×94 two-byte set in EUC form (KS X 1001 as EUC-KR, GB 2312 as GBK).
    Double(&'static Rs),
}

/// The single-byte G1 set of a term (`ISO_IR 100`, `ISO 2022 IR 100`, …).
fn single_byte(term: &str) -> Option<&'static Rs> {
    let n = term
        .strip_prefix("ISO_IR ")
        .or_else(|| term.strip_prefix("ISO 2022 IR "))?;
    Some(match n {
        // Latin-1 as windows-1252: they differ only in C1 controls, which text never holds.
        "100" => encoding_rs::WINDOWS_1252,
        "101" => encoding_rs::ISO_8859_2,
        "109" => encoding_rs::ISO_8859_3,
        "110" => encoding_rs::ISO_8859_4,
        "144" => encoding_rs::ISO_8859_5,
        "127" => encoding_rs::ISO_8859_6,
        "126" => encoding_rs::ISO_8859_7,
        "138" => encoding_rs::ISO_8859_8,
        // ISO 8859-9 is windows-1254 in 0xA0–0xFF.
        "148" => encoding_rs::WINDOWS_1254,
        "166" => encoding_rs::WINDOWS_874,
        "203" => encoding_rs::ISO_8859_15,
        _ => return None,
    })
}

/// The initial G0/G1 sets a (first) term sets up.
fn initial(term: &str) -> (G0, G1) {
    if let Some(e) = single_byte(term) {
        return (G0::Ascii, G1::Single(e));
    }
    match term {
        "ISO_IR 13" | "ISO 2022 IR 13" => (G0::Ascii, G1::Katakana),
        "ISO 2022 IR 149" | "ISO_IR 149" => (G0::Ascii, G1::Double(encoding_rs::EUC_KR)),
        "ISO 2022 IR 58" => (G0::Ascii, G1::Double(encoding_rs::GBK)),
        _ => (G0::Ascii, G1::None),
    }
}

/// A whole-value encoding that is not ISO 2022 (UTF-8, GB18030, GBK).
fn whole_value(term: &str) -> Option<&'static Rs> {
    match term {
        "ISO_IR 192" => Some(encoding_rs::UTF_8),
        "GB18030" => Some(encoding_rs::GB18030),
        "GBK" => Some(encoding_rs::GBK),
        _ => None,
    }
}

/// Decodes one text value's bytes under the terms of (0008,0005).
pub fn decode<S: AsRef<str>>(bytes: &[u8], terms: &[S]) -> String {
    let first = terms.first().map_or("", |t| t.as_ref());
    if let Some(e) = whole_value(first) {
        return e.decode_without_bom_handling(bytes).0.into_owned();
    }
    let (mut g0, mut g1) = initial(first);
    let mut out = Out::default();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == 0x1B {
            if let Some((n, set)) = escape(&bytes[i + 1..]) {
                match set {
                    Designation::G0(s) => g0 = s,
                    Designation::G1(s) => g1 = s,
                }
                i += 1 + n;
                continue;
            }
            out.push(encoding_rs::WINDOWS_1252, &[b]);
            i += 1;
            continue;
        }
        if b < 0x80 {
            let pair = bytes
                .get(i + 1)
                .copied()
                .filter(|c| (0x21..0x7F).contains(c));
            match (g0, pair) {
                (G0::Jis0208, Some(c)) if (0x21..0x7F).contains(&b) => {
                    out.push(encoding_rs::EUC_JP, &[b | 0x80, c | 0x80]);
                    i += 2;
                }
                (G0::Jis0212, Some(c)) if (0x21..0x7F).contains(&b) => {
                    out.push(encoding_rs::EUC_JP, &[0x8F, b | 0x80, c | 0x80]);
                    i += 2;
                }
                _ => {
                    out.ascii(b);
                    i += 1;
                }
            }
            continue;
        }
        match g1 {
            G1::Single(e) => {
                out.push(e, &[b]);
                i += 1;
            }
            G1::Katakana => {
                out.push(encoding_rs::EUC_JP, &[0x8E, b]);
                i += 1;
            }
            G1::Double(e) => match bytes.get(i + 1) {
                Some(&c) if c >= 0x80 => {
                    out.push(e, &[b, c]);
                    i += 2;
                }
                _ => {
                    out.push(e, &[b]);
                    i += 1;
                }
            },
            G1::None => {
                out.push(encoding_rs::WINDOWS_1252, &[b]);
                i += 1;
            }
        }
    }
    out.finish()
}

enum Designation {
    G0(G0),
    G1(G1),
}

/// The escape sequence after an ESC byte (PS3.5 Tables 6.2-1/6.2-2, PS3.3 C.12.1.1.2):
/// how many bytes it has after the ESC, and what it designates.
fn escape(rest: &[u8]) -> Option<(usize, Designation)> {
    use Designation::{G0 as D0, G1 as D1};
    let g1_single = |e| Some((2, D1(G1::Single(e))));
    match rest {
        [b'(', b'B', ..] | [b'(', b'J', ..] => Some((2, D0(G0::Ascii))),
        [b')', b'I', ..] => Some((2, D1(G1::Katakana))),
        [b'$', b'B', ..] | [b'$', b'@', ..] => Some((2, D0(G0::Jis0208))),
        [b'$', b'(', b'D', ..] => Some((3, D0(G0::Jis0212))),
        [b'$', b')', b'C', ..] => Some((3, D1(G1::Double(encoding_rs::EUC_KR)))),
        [b'$', b')', b'A', ..] => Some((3, D1(G1::Double(encoding_rs::GBK)))),
        [b'-', b'A', ..] => g1_single(encoding_rs::WINDOWS_1252),
        [b'-', b'B', ..] => g1_single(encoding_rs::ISO_8859_2),
        [b'-', b'C', ..] => g1_single(encoding_rs::ISO_8859_3),
        [b'-', b'D', ..] => g1_single(encoding_rs::ISO_8859_4),
        [b'-', b'F', ..] => g1_single(encoding_rs::ISO_8859_7),
        [b'-', b'G', ..] => g1_single(encoding_rs::ISO_8859_6),
        [b'-', b'H', ..] => g1_single(encoding_rs::ISO_8859_8),
        [b'-', b'L', ..] => g1_single(encoding_rs::ISO_8859_5),
        [b'-', b'M', ..] => g1_single(encoding_rs::WINDOWS_1254),
        [b'-', b'T', ..] => g1_single(encoding_rs::WINDOWS_874),
        [b'-', b'b', ..] => g1_single(encoding_rs::ISO_8859_15),
        _ => None,
    }
}

/// Bytes gathered per target encoding, decoded a run at a time.
#[derive(Default)]
struct Out {
    text: String,
    run: Vec<u8>,
    enc: Option<&'static Rs>,
}

impl Out {
    fn push(&mut self, e: &'static Rs, bytes: &[u8]) {
        if self.enc != Some(e) {
            self.flush();
            self.enc = Some(e);
        }
        self.run.extend_from_slice(bytes);
    }

    /// An ASCII byte reads the same in every encoding used here: it joins the current run.
    fn ascii(&mut self, b: u8) {
        if self.enc.is_none() {
            self.text.push(char::from(b));
        } else {
            self.run.push(b);
        }
    }

    fn flush(&mut self) {
        if let Some(e) = self.enc.take() {
            self.text
                .push_str(&e.decode_without_bom_handling(&self.run).0);
            self.run.clear();
        }
    }

    fn finish(mut self) -> String {
        self.flush();
        self.text
    }
}

/// A string dicom-parser decoded as `ISO_IR 100` (after [`latin1_transparent`]) back into
/// its bytes, decoded under `terms`. A string with a character above U+00FF was not decoded
/// that way and is returned as it is.
pub fn redecode_latin1<S: AsRef<str>>(s: &str, terms: &[S]) -> String {
    if s.is_ascii() && !s.contains('\x1b') {
        return s.to_owned();
    }
    let mut bytes = Vec::with_capacity(s.len());
    for c in s.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) => bytes.push(b),
            Err(_) => return s.to_owned(),
        }
    }
    decode(&bytes, terms)
}

/// The VRs whose values the Specific Character Set applies to (PS3.5 §6.1.2.3).
pub fn is_charset_vr(vr: dicom_core::VR) -> bool {
    use dicom_core::VR;
    matches!(
        vr,
        VR::LO | VR::LT | VR::PN | VR::SH | VR::ST | VR::UC | VR::UT
    )
}

/// Where the value of the top-level (0008,0005) is in dataset bytes: a walk over the first
/// top-level elements (it sorts first after group lengths), `None` if it is absent or an
/// element before it cannot be skipped.
pub fn locate(bytes: &[u8], enc: Encoding) -> Option<std::ops::Range<usize>> {
    let big = enc == Encoding::ExplicitBig;
    let u16_at = |p: usize| -> Option<u16> {
        let b: [u8; 2] = bytes.get(p..p + 2)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |p: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(p..p + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let mut pos = 0usize;
    for _ in 0..64 {
        let tag = (u16_at(pos)?, u16_at(pos + 2)?);
        let (len, header) = if enc == Encoding::ImplicitLittle {
            (u32_at(pos + 4)?, 8)
        } else {
            let vr = bytes.get(pos + 4..pos + 6)?;
            if matches!(
                vr,
                b"OB"
                    | b"OD"
                    | b"OF"
                    | b"OL"
                    | b"OV"
                    | b"OW"
                    | b"SQ"
                    | b"SV"
                    | b"UC"
                    | b"UN"
                    | b"UR"
                    | b"UT"
                    | b"UV"
            ) {
                (u32_at(pos + 8)?, 12)
            } else {
                (u32::from(u16_at(pos + 6)?), 8)
            }
        };
        if len == u32::MAX {
            return None;
        }
        let start = pos + header;
        let end = start.checked_add(len as usize)?;
        if tag == (0x0008, 0x0005) {
            return (end <= bytes.len()).then_some(start..end);
        }
        if tag > (0x0008, 0x0005) {
            return None;
        }
        pos = end;
    }
    None
}

/// When dicom-parser would decode text under the dataset's (0008,0005) wrongly: a copy of
/// `bytes` with that value replaced by `ISO_IR 100` (space padded, same length), and the
/// original terms, for [`redecode_latin1`]. `None`: parse `bytes` as they are.
pub fn latin1_transparent(bytes: &[u8], enc: Encoding) -> Option<(Vec<u8>, Vec<String>)> {
    let range = locate(bytes, enc)?;
    let value = String::from_utf8_lossy(&bytes[range.clone()]).into_owned();
    let terms = terms(&value);
    if parser_decodes(&terms) || range.len() < 10 {
        return None;
    }
    let mut copy = bytes.to_vec();
    let slot = &mut copy[range];
    slot.fill(b' ');
    slot[..10].copy_from_slice(b"ISO_IR 100");
    Some((copy, terms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_iso_2022_ir_87_ps3_5_h_3_1() {
        let bytes =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        assert_eq!(
            decode(bytes, &["", "ISO 2022 IR 87"]),
            "Yamada^Tarou=山田^太郎=やまだ^たろう"
        );
    }

    #[test]
    fn japanese_katakana_and_kanji_ps3_5_h_3_2() {
        let bytes = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        assert_eq!(
            decode(bytes, &["ISO 2022 IR 13", "ISO 2022 IR 87"]),
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
        );
    }

    #[test]
    fn korean_iso_2022_ir_149_ps3_5_i_2() {
        let bytes = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        assert_eq!(
            decode(bytes, &["", "ISO 2022 IR 149"]),
            "Hong^Gildong=洪^吉洞=홍^길동"
        );
    }

    #[test]
    fn chinese_gb18030_utf8_and_single_byte_sets() {
        let name = "Wang^XiaoDong=王^小东";
        let (gb, _, _) = encoding_rs::GB18030.encode(name);
        assert_eq!(decode(&gb, &["GB18030"]), name);
        assert_eq!(decode(name.as_bytes(), &["ISO_IR 192"]), name);
        assert_eq!(decode(b"Buc^J\xe9r\xf4me", &["ISO_IR 100"]), "Buc^Jérôme");
        assert_eq!(decode(b"\xbb\xee\xda\xe1", &["ISO_IR 144"]), "Люкс");
        // ISO 2022 IR 58 (GB 2312 in G1).
        let (euc, _, _) = encoding_rs::GBK.encode("王");
        let mut bytes = b"\x1b$)A".to_vec();
        bytes.extend_from_slice(&euc);
        assert_eq!(decode(&bytes, &["", "ISO 2022 IR 58"]), "王");
    }

    #[test]
    fn the_parser_path_and_the_latin1_trick() {
        assert!(parser_decodes(&["ISO_IR 100"]));
        assert!(parser_decodes::<&str>(&[]));
        assert!(!parser_decodes(&["", "ISO 2022 IR 87"]));
        assert!(!parser_decodes(&["ISO 2022 IR 149"]));
        assert!(!parser_decodes(&["ISO_IR 148"]));
        let latin1: String = b"\x1b$B;3ED\x1b(B".iter().map(|b| char::from(*b)).collect();
        assert_eq!(redecode_latin1(&latin1, &["", "ISO 2022 IR 87"]), "山田");
    }

    #[test]
    fn locates_and_patches_the_value() {
        // (0008,0005) CS "\ISO 2022 IR 87", then (0010,0010).
        let mut ds = vec![0x08, 0x00, 0x05, 0x00, b'C', b'S', 16, 0];
        ds.extend_from_slice(b"\\ISO 2022 IR 87 ");
        ds.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 2, 0, b'A', b' ']);
        assert_eq!(locate(&ds, Encoding::ExplicitLittle), Some(8..24));
        let (copy, terms) = latin1_transparent(&ds, Encoding::ExplicitLittle).unwrap();
        assert_eq!(&copy[8..24], b"ISO_IR 100      ");
        assert_eq!(terms, ["", "ISO 2022 IR 87"]);
        // No (0008,0005): nothing to do.
        assert_eq!(locate(&ds[24..], Encoding::ExplicitLittle), None);
    }
}
