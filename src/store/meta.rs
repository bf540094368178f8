//! The Part-10 header written in front of every stored dataset (PS3.10 §7.1).
//!
//! 128-byte preamble (zeros), `DICM`, then the File Meta Information group in Explicit VR
//! Little Endian, built with dicom-object's `FileMetaTableBuilder`. The Transfer Syntax UID is
//! the presentation context's, because the dataset bytes that follow are exactly those received.

use dicom_object::meta::FileMetaTableBuilder;

/// Length of the preamble before `DICM`.
pub const PREAMBLE_LEN: usize = 128;

/// Why a meta header could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the file meta group: {0}")]
pub struct MetaError(String);

/// Builds preamble + `DICM` + File Meta group for a dataset received on a presentation context
/// with transfer syntax `ts_uid`, sent by `source_ae`.
pub fn build_header(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    ts_uid: &str,
    source_ae: &str,
) -> Result<Vec<u8>, MetaError> {
    let mut builder = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(ts_uid)
        .implementation_class_uid(crate::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::IMPLEMENTATION_VERSION_NAME);
    let source_ae = source_ae.trim();
    if !source_ae.is_empty() {
        builder = builder.source_application_entity_title(source_ae);
    }
    let meta = builder.build().map_err(|e| MetaError(e.to_string()))?;
    let mut out = Vec::with_capacity(PREAMBLE_LEN + 4 + 256);
    out.resize(PREAMBLE_LEN, 0);
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

    #[test]
    fn dataset_offset_refuses_non_part10() {
        assert_eq!(dataset_offset(b"short"), None);
        assert_eq!(dataset_offset(&[0u8; 200]), None);
    }
}
