//! The Part-10 header written in front of every stored dataset (PS3.10 §7.1).
//!
//! 128-byte preamble (zeros), `DICM`, then the File Meta Information group in Explicit VR
//! Little Endian. The Transfer Syntax UID is the presentation context's, because the dataset
//! bytes that follow are exactly those received.
//!
//! The group is encoded here, element by element, rather than with dicom-object's
//! `FileMetaTableBuilder` and `FileMetaTable::write`: it is eight short elements, and going
//! through dicom-object's token writer cost about 3 % of the daemon's CPU per stored object.
//! A test and the `part10_header` fuzz target check that both give the same bytes. They
//! differ on purpose outside ASCII, where dicom-object writes Latin-1 (see [`build_header`]).

/// Length of the preamble before `DICM`.
pub const PREAMBLE_LEN: usize = 128;

/// Why a meta header could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the file meta group: {0}")]
pub struct MetaError(String);

/// Builds preamble + `DICM` + File Meta group for a dataset received on a presentation context
/// with transfer syntax `ts_uid`, sent by `source_ae` (left out when blank or not ASCII).
/// Values are padded to even length as dicom-object pads them: UIDs with a NUL, text with a
/// space. A UID outside ASCII or too long for its element is refused.
pub fn build_header(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    ts_uid: &str,
    source_ae: &str,
) -> Result<Vec<u8>, MetaError> {
    // An AE title is default repertoire (ASCII). One the peer sent outside it is left out:
    // Source AE Title is optional, and the index keeps the calling AE title anyway.
    let source_ae = Some(source_ae.trim())
        .filter(|a| a.is_ascii())
        .unwrap_or("");
    let elements: [(u16, &[u8; 2], &str, u8); 6] = [
        (0x0002, b"UI", sop_class_uid, 0),
        (0x0003, b"UI", sop_instance_uid, 0),
        (0x0010, b"UI", ts_uid, 0),
        (0x0012, b"UI", crate::IMPLEMENTATION_CLASS_UID, 0),
        (0x0013, b"SH", crate::IMPLEMENTATION_VERSION_NAME, b' '),
        (0x0016, b"AE", source_ae, b' '),
    ];
    let values: usize = elements.iter().map(|e| e.2.len() + 9).sum();
    let mut out = Vec::with_capacity(PREAMBLE_LEN + 4 + 12 + 14 + values);
    out.resize(PREAMBLE_LEN, 0);
    out.extend_from_slice(b"DICM");
    // (0002,0000) UL: the group's length, set below.
    let group = out.len();
    out.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 0, 0, 0, 0]);
    // (0002,0001) OB: File Meta Information Version 00 01.
    out.extend_from_slice(&[0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 1]);
    for (element, vr, value, pad) in elements {
        if element == 0x0016 && value.is_empty() {
            continue;
        }
        // UIDs are ASCII (digits and dots once validated); dicom-object's writer would
        // write Latin-1 bytes or refuse.
        if !value.is_ascii() {
            return Err(MetaError(format!(
                "(0002,{element:04X}) holds characters outside the default repertoire"
            )));
        }
        let odd = value.len() % 2;
        let len = u16::try_from(value.len() + odd).map_err(|_| {
            MetaError(format!(
                "(0002,{element:04X}) is {} bytes long, more than an element of VR {} holds",
                value.len(),
                String::from_utf8_lossy(vr)
            ))
        })?;
        out.extend_from_slice(&[0x02, 0x00]);
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(value.as_bytes());
        if odd == 1 {
            out.push(pad);
        }
    }
    let len = (out.len() - group - 12) as u32;
    out[group + 8..group + 12].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// The header as dicom-object's `FileMetaTableBuilder` and writer make it: what
/// [`build_header`] is checked against (tests and the `part10_header` fuzz target).
#[doc(hidden)]
pub fn build_header_with_dicom_object(
    class: &str,
    instance: &str,
    ts: &str,
    source_ae: &str,
) -> Result<Vec<u8>, MetaError> {
    let mut builder = dicom_object::meta::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax(ts)
        .implementation_class_uid(crate::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::IMPLEMENTATION_VERSION_NAME);
    if !source_ae.trim().is_empty() {
        builder = builder.source_application_entity_title(source_ae.trim());
    }
    let meta = builder.build().map_err(|e| MetaError(e.to_string()))?;
    let mut out = vec![0u8; PREAMBLE_LEN];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| MetaError(e.to_string()))?;
    Ok(out)
}

/// Returns the offset of the dataset in a Part-10 file that starts with `bytes`, read from the
/// File Meta Information Group Length; `None` if the header is not there or malformed.
pub fn dataset_offset(bytes: &[u8]) -> Option<usize> {
    let start = PREAMBLE_LEN + 4;
    if bytes.get(PREAMBLE_LEN..start)? != b"DICM" {
        return None;
    }
    // (0002,0000) UL, 4, value
    let el = bytes.get(start..start + 12)?;
    if el[0..6] != [0x02, 0x00, 0x00, 0x00, b'U', b'L'] {
        return None;
    }
    let len = u32::from_le_bytes([el[8], el[9], el[10], el[11]]) as usize;
    Some(start + 12 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parses_back_with_dicom_object() {
        let h = build_header(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4.5",
            "1.2.840.10008.1.2.1",
            "MODALITY1",
        )
        .unwrap();
        assert_eq!(&h[..128], &[0u8; 128][..]);
        assert_eq!(&h[128..132], b"DICM");
        assert_eq!(dataset_offset(&h), Some(h.len()));
        let meta = dicom_object::meta::FileMetaTable::from_reader(&h[128..]).unwrap();
        assert_eq!(
            meta.transfer_syntax().trim_end_matches('\0'),
            "1.2.840.10008.1.2.1"
        );
        assert_eq!(
            meta.media_storage_sop_instance_uid().trim_end_matches('\0'),
            "1.2.3.4.5"
        );
        assert_eq!(
            meta.implementation_class_uid().trim_end_matches('\0'),
            crate::IMPLEMENTATION_CLASS_UID
        );
        assert_eq!(
            meta.source_application_entity_title().map(str::trim),
            Some("MODALITY1")
        );
    }

    /// The header is dicom-object's, byte for byte: values of every length from empty to
    /// past 64 characters, odd and even, already padded or not, blank and padded AE titles.
    #[test]
    fn header_is_the_one_dicom_object_writes() {
        let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let alphabet = b"0123456789.0123456789. \0A";
        let mut value = |max: u64| -> String {
            let n = next() % (max + 1);
            (0..n)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect()
        };
        let fixed = [
            (
                "1.2.840.10008.5.1.4.1.1.2",
                "1.2.3.4.5",
                "1.2.840.10008.1.2.1",
                "MODALITY1",
            ),
            ("", "", "1.2.840.10008.1.2", ""),
            ("1.2", "1.2.3\0", "1.2.840.10008.1.2.4.50", "  CT 1  "),
        ];
        for (c, i, t, a) in fixed {
            assert_eq!(
                build_header(c, i, t, a).unwrap(),
                build_header_with_dicom_object(c, i, t, a).unwrap()
            );
        }
        for _ in 0..5000 {
            let (c, i, t, a) = (value(70), value(70), value(30), value(18));
            assert_eq!(
                build_header(&c, &i, &t, &a).unwrap(),
                build_header_with_dicom_object(&c, &i, &t, &a).unwrap(),
                "{c:?} {i:?} {t:?} {a:?}"
            );
        }
    }

    /// A UID outside ASCII is refused; a source AE title outside it is left out, and the
    /// header is then the one dicom-object writes without one.
    #[test]
    fn values_outside_ascii() {
        assert!(build_header("1.2\u{e9}", "1.2.3", "1.2.840.10008.1.2", "AE").is_err());
        assert!(build_header("1.2", "1.2.3\u{FFFD}", "1.2.840.10008.1.2", "AE").is_err());
        for ae in ["CT\u{e9}", "\u{3042}", " \u{FFFD} "] {
            assert_eq!(
                build_header("1.2", "1.2.3", "1.2.840.10008.1.2", ae).unwrap(),
                build_header_with_dicom_object("1.2", "1.2.3", "1.2.840.10008.1.2", "").unwrap(),
                "{ae:?}"
            );
        }
    }

    /// A value longer than an element with a 2-byte length holds is refused, not cut.
    #[test]
    fn a_value_too_long_for_its_element_is_refused() {
        let long = "1".repeat(70_000);
        let e = build_header(&long, "1.2", "1.2.840.10008.1.2", "").unwrap_err();
        assert!(e.to_string().contains("(0002,0002)"), "{e}");
    }

    #[test]
    fn dataset_offset_refuses_non_part10() {
        assert_eq!(dataset_offset(b"short"), None);
        assert_eq!(dataset_offset(&[0u8; 200]), None);
    }
}
