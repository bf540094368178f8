//! Errors of the storage layer, mapped to C-STORE statuses in one place ([`StoreError::status`]).

use super::{attrs::ExtractError, index::IndexError};
use crate::dicom::scan::ScanError;
use crate::dicom::uid::UidError;

/// Why an object was not stored. Each variant maps to one PS3.4 Annex B status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The filesystem is full (ENOSPC/EDQUOT) or the disk high-water mark was reached.
    #[error("out of disk space: {0}")]
    DiskFull(String),
    /// Any other I/O failure while writing, syncing or renaming.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// A UID in the command or dataset is not a valid UID (PS3.5 §9.1).
    #[error("invalid {field}: {source}")]
    InvalidUid {
        /// Attribute keyword.
        field: &'static str,
        /// What is wrong with it.
        source: UidError,
    },
    /// The dataset's element framing is broken (it ends inside an element, has an odd length,
    /// a value runs past its item...): found while it streamed in, nothing is kept.
    #[error("malformed dataset: {0}")]
    Malformed(#[from] ScanError),
    /// The dataset does not parse (or lacks a required attribute).
    #[error("cannot understand dataset: {0}")]
    CannotUnderstand(String),
    /// The dataset's SOP Class/Instance UID differs from the command's.
    #[error("dataset does not match the command: {0}")]
    Mismatch(String),
    /// A different object with the same SOP Instance UID exists and the policy is `reject`.
    #[error("SOP Instance {0} already stored with different content")]
    Duplicate(String),
    /// The command's SOP class is not the abstract syntax of the context it came on.
    #[error("SOP class {class} not negotiated on this context (it carries {context})")]
    SopClassNotNegotiated {
        /// The command's Affected SOP Class UID.
        class: String,
        /// The context's abstract syntax.
        context: String,
    },
    /// The index could not be written.
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl StoreError {
    /// Classifies an I/O error: out-of-space conditions become [`StoreError::DiskFull`].
    pub fn from_io(context: &str, e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                StoreError::DiskFull(format!("{context}: {e}"))
            }
            _ => StoreError::Io(format!("{context}: {e}")),
        }
    }

    /// The C-STORE-RSP status for this error (PS3.4 Table B.2-1, PS3.7 Annex C).
    pub fn status(&self) -> u16 {
        match self {
            StoreError::DiskFull(_) => 0xA700, // Refused: Out of Resources
            StoreError::Mismatch(_) => 0xA900, // Error: Data Set does not match SOP Class
            StoreError::InvalidUid { .. }
            | StoreError::CannotUnderstand(_)
            | StoreError::Malformed(_) => 0xC000, // Error: Cannot understand
            StoreError::Duplicate(_) => 0x0111, // Failure: Duplicate SOP Instance
            StoreError::SopClassNotNegotiated { .. } => 0x0122, // Refused: SOP Class not supported
            StoreError::Io(_) => 0x0110,       // Failure: Processing failure
            StoreError::Index(IndexError::Db(redb::Error::Io(e)))
                if matches!(e.raw_os_error(), Some(libc::ENOSPC)) =>
            {
                0xA700
            }
            StoreError::Index(_) => 0x0110,
        }
    }
}

impl From<ExtractError> for StoreError {
    fn from(e: ExtractError) -> Self {
        StoreError::CannotUnderstand(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(StoreError::from_io("write", &full).status(), 0xA700);
        let other = std::io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(StoreError::from_io("write", &other).status(), 0x0110);
        assert_eq!(
            StoreError::InvalidUid {
                field: "SOPInstanceUID",
                source: UidError::Empty
            }
            .status(),
            0xC000
        );
        assert_eq!(StoreError::Duplicate("1.2".into()).status(), 0x0111);
        assert_eq!(StoreError::Mismatch("x".into()).status(), 0xA900);
    }
}
