//! UID validation (PS3.5 §9.1) done *before* a UID is allowed anywhere near a file path.
//!
//! Object paths are built from Study, Series and SOP Instance UIDs received from the network.
//! A UID that passes [`validate_uid`] contains only ASCII digits and single dots, so it can never
//! contain `/`, `..`, NUL or any other character with meaning to the filesystem.

/// Why a UID was refused; carried into logs and the DICOM error comment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UidError {
    /// The UID is empty (after trimming the trailing NUL/space padding).
    #[error("UID is empty")]
    Empty,
    /// PS3.5 §9.1: a UID is at most 64 characters.
    #[error("UID is {0} characters long, more than 64")]
    TooLong(usize),
    /// Only digits and `.` are allowed.
    #[error("UID contains the invalid character {0:?}")]
    InvalidChar(char),
    /// Components are separated by exactly one dot and none is empty.
    #[error("UID has an empty component")]
    EmptyComponent,
    /// A component other than a single `0` starts with `0`.
    #[error("UID component {0:?} has a leading zero")]
    LeadingZero(String),
}

/// The longest UID PS3.5 allows.
pub const MAX_UID_LEN: usize = 64;

/// Strips the padding DICOM puts after a UID value (`\0` for UI, sometimes a space).
pub fn trim_uid(raw: &str) -> &str {
    raw.trim_end_matches(['\0', ' '])
}

/// Checks a UID against PS3.5 §9.1 and returns it without its padding.
///
/// Rules: 1 to 64 characters, digits and dots only, no empty component, no leading zero in a
/// component unless the component is exactly `0`.
pub fn validate_uid(raw: &str) -> Result<&str, UidError> {
    let uid = trim_uid(raw);
    if uid.is_empty() {
        return Err(UidError::Empty);
    }
    if uid.len() > MAX_UID_LEN {
        return Err(UidError::TooLong(uid.len()));
    }
    if let Some(c) = uid.chars().find(|c| !(c.is_ascii_digit() || *c == '.')) {
        return Err(UidError::InvalidChar(c));
    }
    for component in uid.split('.') {
        if component.is_empty() {
            return Err(UidError::EmptyComponent);
        }
        if component.len() > 1 && component.starts_with('0') {
            return Err(UidError::LeadingZero(component.to_owned()));
        }
    }
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_standard_uids() {
        assert_eq!(validate_uid("1.2.840.10008.1.2\0"), Ok("1.2.840.10008.1.2"));
        assert_eq!(validate_uid("1.2.0.3"), Ok("1.2.0.3"));
        let longest = format!("{}12", "1.".repeat(31));
        assert_eq!(longest.len(), 64);
        assert_eq!(validate_uid(&longest), Ok(longest.as_str()));
    }

    #[test]
    fn rejects_path_tricks_and_malformed_uids() {
        assert_eq!(validate_uid(""), Err(UidError::Empty));
        assert_eq!(validate_uid("\0"), Err(UidError::Empty));
        assert_eq!(validate_uid("../../etc"), Err(UidError::InvalidChar('/')));
        assert_eq!(validate_uid("1.2/3"), Err(UidError::InvalidChar('/')));
        assert_eq!(validate_uid("1.2.a"), Err(UidError::InvalidChar('a')));
        assert_eq!(validate_uid("1..2"), Err(UidError::EmptyComponent));
        assert_eq!(validate_uid(".1.2"), Err(UidError::EmptyComponent));
        assert_eq!(validate_uid("1.2."), Err(UidError::EmptyComponent));
        assert_eq!(
            validate_uid("1.02"),
            Err(UidError::LeadingZero("02".into()))
        );
        let long = format!("1.{}", "2".repeat(63));
        assert_eq!(validate_uid(&long), Err(UidError::TooLong(65)));
    }
}
