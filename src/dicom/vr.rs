//! Value rules of PS3.5 §6.2 for the VRs the worklist accepts, and the date/time parsing that
//! both entry validation and range matching need.
//!
//! Entry validation ([`check_value`]) is strict so that what the RIS puts in is what a
//! modality can take out: a value a modality's parser would reject is refused at the API with
//! the attribute's name instead of breaking a C-FIND response later. Dates and times are
//! turned into comparable numbers ([`date_bounds`], [`time_bounds`], [`datetime_bounds`]) with
//! an explicit precision, so `1000` (10:00) can stand for the whole minute in a range.

use dicom_core::VR;

use crate::dicom::uid::validate_uid;

/// Checks one value of a text VR; `Err` says what is wrong, for the caller to prefix with
/// the attribute's name. Lengths are counted in characters, as PS3.5 counts them for the
/// character-string VRs (the values here are already decoded Unicode).
pub fn check_value(vr: VR, value: &str) -> Result<(), String> {
    let chars = value.chars().count();
    let too_long = |max: usize| -> Result<(), String> {
        if chars > max {
            Err(format!(
                "{vr} value is {chars} characters long, more than {max}"
            ))
        } else {
            Ok(())
        }
    };
    match vr {
        VR::AE => {
            too_long(16)?;
            no_backslash_or_control(value)?;
            if !value.is_empty() && value.trim().is_empty() {
                return Err("AE value is only spaces".into());
            }
            Ok(())
        }
        VR::AS => {
            let b = value.as_bytes();
            if b.len() == 4 && b[..3].iter().all(u8::is_ascii_digit) && b"DWMY".contains(&b[3]) {
                Ok(())
            } else {
                Err(format!(
                    "{value:?} is not an age string (nnnD, nnnW, nnnM or nnnY)"
                ))
            }
        }
        VR::CS => {
            too_long(16)?;
            match value
                .chars()
                .find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == ' ' || *c == '_'))
            {
                Some(c) => Err(format!(
                    "CS value {value:?} contains {c:?} (only A-Z, 0-9, space and _ are allowed)"
                )),
                None => Ok(()),
            }
        }
        VR::DA => parse_date(value)
            .map(|_| ())
            .ok_or_else(|| format!("{value:?} is not a date (YYYYMMDD)")),
        VR::TM => parse_time(value)
            .map(|_| ())
            .ok_or_else(|| format!("{value:?} is not a time (HH[MM[SS[.FFFFFF]]])")),
        VR::DT => parse_datetime(value).map(|_| ()).ok_or_else(|| {
            format!("{value:?} is not a date-time (YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX])")
        }),
        VR::DS => {
            too_long(16)?;
            if is_decimal_string(value) {
                Ok(())
            } else {
                Err(format!("{value:?} is not a decimal string"))
            }
        }
        VR::IS => {
            too_long(12)?;
            parse_integer_string(value)
                .map(|_| ())
                .ok_or_else(|| format!("{value:?} is not an integer string in -2^31..2^31-1"))
        }
        VR::LO => {
            too_long(64)?;
            no_backslash_or_control(value)
        }
        VR::SH => {
            too_long(16)?;
            no_backslash_or_control(value)
        }
        VR::UC => no_backslash_or_control(value),
        VR::PN => check_person_name(value),
        VR::ST => {
            too_long(1024)?;
            text_controls(value)
        }
        VR::LT => {
            too_long(10240)?;
            text_controls(value)
        }
        VR::UT => text_controls(value),
        VR::UR => {
            if value.contains(' ') {
                Err("UR value contains a space".into())
            } else {
                Ok(())
            }
        }
        VR::UI => validate_uid(value)
            .map(|_| ())
            .map_err(|e| format!("{value:?} is not a valid UID: {e}")),
        other => Err(format!("{other} is not a text VR")),
    }
}

/// LO, SH, PN, AE, UC: no backslash (the value separator) and no control character other
/// than ESC (used by ISO 2022 code extensions; harmless in Unicode text).
fn no_backslash_or_control(value: &str) -> Result<(), String> {
    if value.contains('\\') {
        return Err("value contains a backslash, the DICOM value separator".into());
    }
    match value.chars().find(|c| c.is_control() && *c != '\u{1b}') {
        Some(c) => Err(format!("value contains the control character {c:?}")),
        None => Ok(()),
    }
}

/// ST, LT, UT: free text; TAB, LF, FF, CR and ESC are the control characters PS3.5 allows.
fn text_controls(value: &str) -> Result<(), String> {
    match value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\u{0c}' | '\r' | '\u{1b}'))
    {
        Some(c) => Err(format!("value contains the control character {c:?}")),
        None => Ok(()),
    }
}

/// PN: at most three component groups (`=`), each at most 64 characters and five components
/// (`^`).
fn check_person_name(value: &str) -> Result<(), String> {
    no_backslash_or_control(value)?;
    let groups: Vec<&str> = value.split('=').collect();
    if groups.len() > 3 {
        return Err(format!(
            "person name {value:?} has more than 3 component groups"
        ));
    }
    for group in groups {
        if group.chars().count() > 64 {
            return Err(format!(
                "person name component group {group:?} is longer than 64 characters"
            ));
        }
        if group.split('^').count() > 5 {
            return Err(format!(
                "person name component group {group:?} has more than 5 components"
            ));
        }
    }
    Ok(())
}

/// DS (PS3.5): an optional sign, digits with an optional decimal point, an optional
/// exponent; leading/trailing spaces are padding and were removed before.
pub fn is_decimal_string(value: &str) -> bool {
    let b = value.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

/// IS (PS3.5): an optional sign and digits, within a signed 32-bit integer.
pub fn parse_integer_string(value: &str) -> Option<i32> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<i32>().ok()
}

/// A calendar date as `YYYYMMDD` in one number (so dates compare as numbers).
pub type DateNum = u32;

/// Parses DA `YYYYMMDD`, checking the month and the day within that month.
pub fn parse_date(value: &str) -> Option<DateNum> {
    let b = value.as_bytes();
    if b.len() != 8 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let year = digits(&b[0..4]);
    let month = digits(&b[4..6]);
    let day = digits(&b[6..8]);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(year * 10_000 + month * 100 + day)
}

fn digits(b: &[u8]) -> u32 {
    b.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        _ => 28,
    }
}

/// A time of day in microseconds since midnight, with how many of its components were
/// given, so a reduced-precision time can stand for the whole interval it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeValue {
    /// Microseconds since midnight of the earliest instant the value names.
    pub micros: u64,
    /// Length of the interval the value names, minus one microsecond: `HH` names a whole
    /// hour, `HHMMSS.F` a tenth of a second.
    pub span: u64,
}

const MICROS_PER_SECOND: u64 = 1_000_000;
const MICROS_PER_DAY: u64 = 86_400 * MICROS_PER_SECOND;

/// Parses TM `HH[MM[SS[.F{1,6}]]]`. PS3.5 allows second 60 (leap second).
pub fn parse_time(value: &str) -> Option<TimeValue> {
    let (main, frac) = match value.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (value, None),
    };
    let b = main.as_bytes();
    if !matches!(b.len(), 2 | 4 | 6) || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hour = u64::from(digits(&b[0..2]));
    let minute = if b.len() >= 4 {
        u64::from(digits(&b[2..4]))
    } else {
        0
    };
    let second = if b.len() >= 6 {
        u64::from(digits(&b[4..6]))
    } else {
        0
    };
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut micros = (hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND;
    let span = match (b.len(), frac) {
        (2, None) => 3600 * MICROS_PER_SECOND,
        (4, None) => 60 * MICROS_PER_SECOND,
        (6, None) => MICROS_PER_SECOND,
        (6, Some(f)) => {
            let fb = f.as_bytes();
            if fb.is_empty() || fb.len() > 6 || !fb.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let scale = 10u64.pow(6 - fb.len() as u32);
            micros += u64::from(digits(fb)) * scale;
            scale
        }
        _ => return None,
    };
    Some(TimeValue {
        micros,
        span: span - 1,
    })
}

/// A date-time as (date, microseconds into that day): ordered as a tuple.
pub type DateTimeNum = (DateNum, u64);

/// Parses DT `YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]` into the first and last instants it
/// names. The UTC offset is checked and then ignored: times are compared as written (the
/// worklist does not negotiate timezone adjustment).
pub fn parse_datetime(value: &str) -> Option<(DateTimeNum, DateTimeNum)> {
    if !value.is_ascii() {
        // Also keeps the byte-offset slicing below on character boundaries.
        return None;
    }
    let main = match value.find(['+', '-']) {
        Some(i) => {
            let offset = &value.as_bytes()[i + 1..];
            if offset.len() != 4 || !offset.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let (hh, mm) = (digits(&offset[0..2]), digits(&offset[2..4]));
            if hh > 14 || mm > 59 {
                return None;
            }
            &value[..i]
        }
        None => value,
    };
    let (date_part, time_part) = main.split_at(main.len().min(8));
    let db = date_part.as_bytes();
    if !matches!(db.len(), 4 | 6 | 8) || !db.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let year = digits(&db[0..4]);
    let (first_month, last_month) = if db.len() >= 6 {
        let m = digits(&db[4..6]);
        (m, m)
    } else {
        (1, 12)
    };
    if !(1..=12).contains(&first_month) {
        return None;
    }
    let (first_day, last_day) = if db.len() == 8 {
        let d = digits(&db[6..8]);
        if d == 0 || d > days_in_month(year, first_month) {
            return None;
        }
        (d, d)
    } else {
        (1, days_in_month(year, last_month))
    };
    let first_date = year * 10_000 + first_month * 100 + first_day;
    let last_date = year * 10_000 + last_month * 100 + last_day;
    if time_part.is_empty() {
        return Some(((first_date, 0), (last_date, MICROS_PER_DAY - 1)));
    }
    if db.len() != 8 {
        return None;
    }
    let t = parse_time(time_part)?;
    Some(((first_date, t.micros), (first_date, t.micros + t.span)))
}

/// The inclusive bounds a DA value names (one day).
pub fn date_bounds(value: &str) -> Option<(DateNum, DateNum)> {
    parse_date(value).map(|d| (d, d))
}

/// The inclusive bounds a TM value names, in microseconds since midnight.
pub fn time_bounds(value: &str) -> Option<(u64, u64)> {
    parse_time(value).map(|t| (t.micros, t.micros + t.span))
}

/// The inclusive bounds a DT value names.
pub fn datetime_bounds(value: &str) -> Option<(DateTimeNum, DateTimeNum)> {
    parse_datetime(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("20260131"), Some(20260131));
        assert_eq!(parse_date("20240229"), Some(20240229));
        assert_eq!(parse_date("20250229"), None);
        assert_eq!(parse_date("20261301"), None);
        assert_eq!(parse_date("2026-01-01"), None);
        assert_eq!(parse_date("2026010"), None);
    }

    #[test]
    fn times_with_precision() {
        assert_eq!(time_bounds("10"), Some((36_000_000_000, 39_599_999_999)));
        assert_eq!(time_bounds("1030"), Some((37_800_000_000, 37_859_999_999)));
        assert_eq!(
            time_bounds("103000.5"),
            Some((37_800_500_000, 37_800_599_999))
        );
        assert_eq!(time_bounds("103000.123456").map(|b| b.1 - b.0), Some(0));
        assert_eq!(parse_time("2400"), None);
        assert_eq!(parse_time("10:30"), None);
        assert_eq!(parse_time("103"), None);
        assert_eq!(parse_time("1030.5"), None);
        assert_eq!(parse_time("103000.1234567"), None);
    }

    #[test]
    fn datetimes() {
        assert_eq!(
            datetime_bounds("2026"),
            Some(((20260101, 0), (20261231, MICROS_PER_DAY - 1)))
        );
        assert_eq!(
            datetime_bounds("202602"),
            Some(((20260201, 0), (20260228, MICROS_PER_DAY - 1)))
        );
        assert_eq!(
            datetime_bounds("2026020110+0100"),
            Some(((20260201, 36_000_000_000), (20260201, 39_599_999_999)))
        );
        assert_eq!(datetime_bounds("2026021"), None);
        assert_eq!(datetime_bounds("20260201+01"), None);
    }

    #[test]
    fn value_rules() {
        assert!(check_value(VR::CS, "CT").is_ok());
        assert!(check_value(VR::CS, "ct").is_err());
        assert!(check_value(VR::SH, "12345678901234567").is_err());
        assert!(check_value(VR::LO, "a\\b").is_err());
        assert!(check_value(VR::LT, "line 1\r\nline 2").is_ok());
        assert!(check_value(VR::LO, "line 1\nline 2").is_err());
        assert!(check_value(VR::PN, "Doe^Jane^^^=山田^太郎=やまだ^たろう").is_ok());
        assert!(check_value(VR::PN, "a=b=c=d").is_err());
        assert!(check_value(VR::PN, "a^b^c^d^e^f").is_err());
        assert!(check_value(VR::DS, "72.5").is_ok());
        assert!(check_value(VR::DS, "-1.5e3").is_ok());
        assert!(check_value(VR::DS, "1.2.3").is_err());
        assert!(check_value(VR::DS, ".").is_err());
        assert!(check_value(VR::IS, "-42").is_ok());
        assert!(check_value(VR::IS, "4.2").is_err());
        assert!(check_value(VR::IS, "99999999999").is_err());
        assert!(check_value(VR::AS, "045Y").is_ok());
        assert!(check_value(VR::AS, "45Y").is_err());
        assert!(check_value(VR::UI, "1.2.840.10008").is_ok());
        assert!(check_value(VR::UI, "1.02").is_err());
        assert!(check_value(VR::AE, "   ").is_err());
        assert!(check_value(VR::OB, "x").is_err());
    }

    #[test]
    fn parsers_never_panic_on_odd_input() {
        let odd = [
            "",
            "-",
            "+",
            ".",
            "é",
            "2026é",
            "20260101é",
            "2026010110é",
            "1é",
            "10.é",
            "100000.",
            "99999999",
            "00000000",
            "2026-",
            "+0000",
            "20260101+",
            "20260101-01é",
            "\u{0}",
            "12345678901234567890123456789",
        ];
        for v in odd {
            let _ = parse_date(v);
            let _ = parse_time(v);
            let _ = parse_datetime(v);
            let _ = parse_integer_string(v);
            let _ = is_decimal_string(v);
            for vr in [
                VR::AE,
                VR::AS,
                VR::CS,
                VR::DA,
                VR::DS,
                VR::DT,
                VR::IS,
                VR::PN,
                VR::TM,
                VR::UI,
            ] {
                let _ = check_value(vr, v);
            }
        }
    }
}
