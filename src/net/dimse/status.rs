//! DIMSE status codes (PS3.7 Annex C) used across services, and their categories.
//!
//! Services keep their own status tables (see `net::services::*`); this module holds the codes
//! shared by all of them and the classification an SCU acts on (success, warning, failure).

/// Success.
pub const SUCCESS: u16 = 0x0000;
/// Refused: SOP class not supported (PS3.7 C.5.13).
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Failure: duplicate SOP instance (PS3.7 Annex C, "Duplicate SOP Instance").
pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
/// Failure: unrecognized operation (PS3.7 C.5.16).
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// Failure: processing failure (PS3.7 C.5.12).
pub const PROCESSING_FAILURE: u16 = 0x0110;

/// How an SCU must treat a status (PS3.7 Annex C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// 0000
    Success,
    /// 0001, 0107, 0116, Bxxx
    Warning,
    /// FF00, FF01
    Pending,
    /// FE00
    Cancel,
    /// Everything else.
    Failure,
}

/// Classifies a status code.
pub fn category(status: u16) -> Category {
    match status {
        0x0000 => Category::Success,
        0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => Category::Warning,
        0xFF00 | 0xFF01 => Category::Pending,
        0xFE00 => Category::Cancel,
        _ => Category::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert_eq!(category(0x0000), Category::Success);
        assert_eq!(category(0xB007), Category::Warning);
        assert_eq!(category(0xFF01), Category::Pending);
        assert_eq!(category(0xA700), Category::Failure);
        assert_eq!(category(0xC000), Category::Failure);
    }
}
