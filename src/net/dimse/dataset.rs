//! Datasets that travel with a DIMSE message (identifiers, N-CREATE/N-SET/N-ACTION attribute
//! lists, responses), decoded and encoded in the presentation context's transfer syntax.
//!
//! Every dataset a peer sends goes through the iterative structure scan first
//! ([`crate::dicom::scan`]), so the recursive object builder only ever sees bounded input.

use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Decodes a dataset received in `ts` (a transfer syntax UID as negotiated). An odd length is
/// refused first: the parser would read the stray byte as a clean end of data.
pub fn read_dataset(bytes: &[u8], ts: &str) -> Result<InMemDicomObject, String> {
    if !bytes.len().is_multiple_of(2) {
        return Err(format!("dataset of odd length {}", bytes.len()));
    }
    // The decoder below builds nested sequences recursively: depth, element count and framing
    // are checked first, iteratively, so a hostile identifier gets an answer, not a stack
    // overflow (audit C1).
    crate::dicom::scan::check(
        bytes,
        ts,
        &crate::dicom::scan::Limits::before_dicom_object(),
    )
    .map_err(|e| e.error_comment())?;
    let syntax = TransferSyntaxRegistry
        .get(ts.trim_end_matches('\0'))
        .ok_or_else(|| format!("transfer syntax {ts} unknown"))?;
    InMemDicomObject::read_dataset_with_ts(bytes, syntax)
        .map_err(|e| format!("cannot decode the dataset: {e}"))
}

/// Encodes a response dataset in `ts`.
pub fn write_dataset(obj: &InMemDicomObject, ts: &str) -> Result<Vec<u8>, String> {
    let syntax = TransferSyntaxRegistry
        .get(ts.trim_end_matches('\0'))
        .ok_or_else(|| format!("transfer syntax {ts} unknown"))?;
    let mut out = Vec::with_capacity(512);
    obj.write_dataset_with_ts(&mut out, syntax)
        .map_err(|e| format!("cannot encode the dataset: {e}"))?;
    Ok(out)
}
