//! C-FIND attribute matching (PS3.4 C.2.2.2) and return-key projection for the Modality
//! Worklist (and, next, Query/Retrieve), as pure functions over [`Dataset`]s.
//!
//! A C-FIND identifier is parsed once into a [`Query`] (every key's value checked and turned
//! into a pattern), then [`Query::matches`] runs per stored item and [`Query::project`]
//! builds each response. Parsing is where bad identifiers are refused ([`QueryError`], with
//! the status the SCP answers); matching itself cannot fail.
//!
//! Matching kinds, per key value:
//! - **Universal**: a zero-length value, or a lone `*` (any VR — many SCUs send `*` for "any
//!   date"), matches everything, including items without the attribute.
//! - **Single value**: exact, case-sensitive, for text VRs; leading/trailing padding is not
//!   significant. **PN is case-insensitive** (the standard lets an SCP choose; Orthanc and
//!   dcm4chee do the same by default, and a technologist typing `doe*` expects Doe): a key
//!   without `=` is compared with each component group of the name (alphabetic, ideographic,
//!   phonetic) and matches if one does; a key with `=` compares group by group, an empty key
//!   group matching anything. Trailing `^` and `=` are ignored on both sides. IS, DS and
//!   binary numbers compare as numbers.
//! - **Wildcard** `*` / `?` for AE, CS, LO, LT, PN, SH, ST, UC, UR, UT (not dates, times,
//!   UIDs, numbers or AS, where they are refused as malformed values).
//! - **Range** for DA, TM, DT: `a-b`, `-b`, `a-`. A reduced-precision bound covers what it
//!   names: `-1000` includes 10:00:59, `-202601` (DT) all of January. A single DA/TM/DT value
//!   is the range from itself to itself, so `1000` matches 10:00:00–10:00:59.999999 and
//!   `100000` matches `100000.000000`. Stored values are compared by the first instant they
//!   name. DT UTC offsets are checked and ignored; combined DA+TM (datetime) matching is not
//!   negotiated, so date and time keys match independently.
//! - **List of UID**: a UI key with several values matches any of them. Any other key with
//!   several values also matches if one value matches (an extension the standard allows only
//!   for UIDs, but harmless and useful for CS lists like `CT\MR`).
//! - **Sequence**: a SQ key holds one item whose keys must all match within at least one item
//!   of the stored sequence; the response holds only the matching items, each reduced to the
//!   requested keys. A SQ key with no item, or an empty item, is universal and returns the
//!   whole stored sequence.
//! - **Empty value** `""` (two quotation marks, PS3.4 C.2.2.2.1 as revised by CP 1786 for the
//!   "empty value matching"): matches items where the attribute is absent or zero-length.
//! - Multi-valued stored attributes match if any value matches.
//! - Keys this code cannot match (AT, OB, UN, unknown private tags) are return keys only, as
//!   PS3.4 C.2.2.1.1 prescribes for unsupported optional matching keys.
//!
//! Projection: the response holds exactly the identifier's attributes, nested too, with the
//! item's values, or zero-length if the item lacks them. Specific Character Set (0008,0005)
//! in an identifier says how the SCU wants the response encoded (C.2.2.2), so it is answered
//! with the SCU's own value when the returned text fits it (always when it is ASCII; `Müller`
//! fits `ISO_IR 100`), otherwise with `ISO_IR 192` (UTF-8); an identifier without it gets none
//! back unless the text is not ASCII, then `ISO_IR 192`. dicom-object's writer encodes the
//! text with the value it finds there.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::dataset::{dictionary_vr_ok, AttributePath, Dataset, DatasetError, Element, Value};
use super::vr::{self, DateNum, DateTimeNum};

mod prefilter;
pub use prefilter::{MatchHint, Prefilter};

/// Why an identifier was refused. The SCP answers [`QueryError::status`] with
/// [`QueryError::error_comment`] and [`QueryError::offending_element`], and keeps the
/// association.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The identifier holds something the model does not take (e.g. an OW element).
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A key's VR differs from the standard dictionary's.
    #[error("{path}: VR {found} given, the standard says {expected}")]
    WrongVr {
        /// Where.
        path: AttributePath,
        /// As sent.
        found: VR,
        /// The dictionary's VR(s).
        expected: String,
    },
    /// A sequence key with more than one item (PS3.4 C.2.2.2.6 requires one).
    #[error("{path}: a sequence key must have one item, it has {count}")]
    SequenceItems {
        /// Where.
        path: AttributePath,
        /// Items sent.
        count: usize,
    },
    /// A key value is malformed for its VR: a bad date, time or range, a bad UID, a
    /// wildcard where none is allowed, a non-number for IS/DS.
    #[error("{path}: {reason}")]
    BadValue {
        /// Where.
        path: AttributePath,
        /// What is wrong.
        reason: String,
    },
}

impl QueryError {
    /// The C-FIND-RSP status (PS3.4 K.4.1.1.4 and C.4.1.1.4): `A900` "Identifier does not
    /// match SOP Class" when the identifier's structure is wrong (VR, sequence shape,
    /// unsupported element), `C000` "Unable to process" when a key's value cannot be
    /// understood.
    pub fn status(&self) -> u16 {
        match self {
            QueryError::Dataset(_)
            | QueryError::WrongVr { .. }
            | QueryError::SequenceItems { .. } => 0xA900,
            QueryError::BadValue { .. } => 0xC000,
        }
    }

    /// The Error Comment (0000,0902): the message, cut to the 64 characters of its LO VR.
    pub fn error_comment(&self) -> String {
        self.to_string().chars().take(64).collect()
    }

    /// The top-level attribute at fault, for Offending Element (0000,0901).
    pub fn offending_element(&self) -> Option<Tag> {
        match self {
            QueryError::Dataset(e) => e.path().top_tag(),
            QueryError::WrongVr { path, .. }
            | QueryError::SequenceItems { path, .. }
            | QueryError::BadValue { path, .. } => path.top_tag(),
        }
    }
}

/// A parsed C-FIND identifier: its keys in tag order, each with how it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    keys: Vec<Key>,
    /// `Some(value)` if (0008,0005) was in the identifier (value possibly empty): it is then
    /// returned in every response.
    charset_requested: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Key {
    tag: Tag,
    /// The key's VR, for a zero-length answer when the item lacks the attribute.
    vr: VR,
    matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    /// Return key only.
    Universal,
    /// Matches if any pattern matches any stored value.
    Any(Vec<Pattern>),
    /// Sequence matching; `None` is the universal form (no item or an empty item).
    Sequence(Option<Box<Query>>),
}

#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    /// Exact text.
    Text(String),
    /// `*`/`?` pattern, case-sensitive.
    Wildcard(Vec<char>),
    /// Person name, lower-cased, per component group (`None` = any group of the stored name).
    PersonName(PnPattern),
    /// Inclusive date bounds (`None` = open).
    Date(Option<DateNum>, Option<DateNum>),
    /// Inclusive time bounds in microseconds since midnight.
    Time(Option<u64>, Option<u64>),
    /// Inclusive date-time bounds.
    DateTime(Option<DateTimeNum>, Option<DateTimeNum>),
    /// One UID of a list.
    Uid(String),
    /// IS or binary integer.
    Int(i64),
    /// DS or binary float.
    Decimal(f64),
    /// `""`: the attribute is absent or zero-length.
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
enum PnPattern {
    /// No `=` in the key: matched against each group of the stored name.
    AnyGroup(PnGroup),
    /// Groups given: each non-empty one must match the stored name's group at that place.
    Groups(Vec<Option<PnGroup>>),
}

#[derive(Debug, Clone, PartialEq)]
enum PnGroup {
    Exact(String),
    Wildcard(Vec<char>),
}

impl Query {
    /// Parses a C-FIND identifier as received.
    pub fn from_identifier(identifier: &InMemDicomObject) -> Result<Query, QueryError> {
        Query::from_dataset(&Dataset::from_dicom(identifier)?)
    }

    /// Parses an identifier already in the dataset model (tests, the admin API's search).
    pub fn from_dataset(identifier: &Dataset) -> Result<Query, QueryError> {
        let mut path = AttributePath::default();
        let mut query = parse_level(identifier, &mut path)?;
        if let Some(element) = identifier.get(tags::SPECIFIC_CHARACTER_SET) {
            let value = match &element.value {
                Value::Strs(v) => v.join("\\"),
                _ => String::new(),
            };
            query.charset_requested = Some(value);
        }
        Ok(query)
    }

    /// Whether an item matches every key.
    pub fn matches(&self, item: &Dataset) -> bool {
        self.keys.iter().all(|key| key.matches(item))
    }

    /// Whether the query constrains Scheduled Procedure Step Status (0040,0020) inside
    /// Scheduled Procedure Step Sequence. If it does not, the store leaves finished steps
    /// (completed, discontinued, cancelled) out: a modality asking "what is scheduled for me"
    /// should not be offered work that is done.
    pub fn constrains_sps_status(&self) -> bool {
        self.keys.iter().any(|key| {
            key.tag == tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE
                && matches!(&key.matcher, Matcher::Sequence(Some(sub))
                    if sub.keys.iter().any(|k| k.tag == tags::SCHEDULED_PROCEDURE_STEP_STATUS
                        && !matches!(k.matcher, Matcher::Universal)))
        })
    }

    /// The response dataset for a matching item: exactly the requested attributes (see the
    /// module documentation), Specific Character Set included when needed or requested.
    pub fn project(&self, item: &Dataset) -> Dataset {
        let mut out = self.project_level(item);
        let ascii = is_ascii(&out);
        let value = match &self.charset_requested {
            None if ascii => None,
            // ASCII is part of every character set an SCU can name.
            Some(v) if ascii && !v.is_empty() => Some(v.clone()),
            // The SCU's own set, when it can carry the text (Müller in ISO_IR 100).
            Some(v) if !ascii && representable(&out, v) => Some(v.clone()),
            _ => Some("ISO_IR 192".to_owned()),
        };
        if let Some(value) = value {
            let values = value.split('\\').map(str::to_owned).collect();
            out.put(tags::SPECIFIC_CHARACTER_SET, VR::CS, Value::Strs(values));
        }
        out
    }

    /// [`Query::matches`] then [`Query::project`], as the SCP wants it: the response
    /// identifier ready to encode, or `None`.
    pub fn respond(&self, item: &Dataset) -> Option<InMemDicomObject> {
        self.matches(item).then(|| self.project(item).to_dicom())
    }

    fn project_level(&self, item: &Dataset) -> Dataset {
        let mut out = Dataset::new();
        for key in &self.keys {
            let stored = item.get(key.tag);
            match (&key.matcher, stored) {
                (
                    Matcher::Sequence(Some(sub)),
                    Some(Element {
                        vr,
                        value: Value::Items(items),
                    }),
                ) => {
                    let constrained = sub.is_constraining();
                    let projected = items
                        .iter()
                        .filter(|i| !constrained || sub.matches(i))
                        .map(|i| sub.project_level(i))
                        .collect();
                    out.put(key.tag, *vr, Value::Items(projected));
                }
                (_, Some(element)) => {
                    out.put(key.tag, element.vr, element.value.clone());
                }
                (_, None) => {
                    out.put(key.tag, key.vr, Value::empty_for(key.vr));
                }
            }
        }
        out
    }

    /// Whether any key restricts matches (otherwise every item and every sequence item
    /// matches).
    fn is_constraining(&self) -> bool {
        self.keys.iter().any(|k| match &k.matcher {
            Matcher::Universal | Matcher::Sequence(None) => false,
            Matcher::Any(_) => true,
            Matcher::Sequence(Some(sub)) => sub.is_constraining(),
        })
    }
}

/// Whether every text value encodes in the single character set `code` (ISO 2022 code
/// extensions, i.e. several values, are not attempted).
fn representable(ds: &Dataset, code: &str) -> bool {
    use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
    fn all(ds: &Dataset, cs: &SpecificCharacterSet) -> bool {
        ds.iter().all(|(_, e)| match &e.value {
            Value::Strs(v) => v.iter().all(|s| cs.encode(s).is_ok()),
            Value::Items(items) => items.iter().all(|i| all(i, cs)),
            _ => true,
        })
    }
    // ISO 2022 sets are answered in UTF-8: dicom-parser encodes without escape sequences.
    match SpecificCharacterSet::from_code(code) {
        Some(cs) if !code.contains('\\') && !code.contains("2022") => all(ds, &cs),
        _ => false,
    }
}

fn is_ascii(ds: &Dataset) -> bool {
    ds.iter().all(|(_, e)| match &e.value {
        Value::Strs(v) => v.iter().all(|s| s.is_ascii()),
        Value::Items(items) => items.iter().all(is_ascii),
        _ => true,
    })
}

fn parse_level(identifier: &Dataset, path: &mut AttributePath) -> Result<Query, QueryError> {
    let mut keys = Vec::with_capacity(identifier.len());
    for (tag, element) in identifier.iter() {
        // Group lengths carry no key; Specific Character Set is never matched (C.2.2.2).
        if tag.1 == 0x0000 || tag == tags::SPECIFIC_CHARACTER_SET {
            continue;
        }
        path.push(tag);
        keys.push(parse_key(tag, element, path)?);
        path.pop();
    }
    Ok(Query {
        keys,
        charset_requested: None,
    })
}

fn parse_key(tag: Tag, element: &Element, path: &mut AttributePath) -> Result<Key, QueryError> {
    let vr = element.vr;
    if vr != VR::UN {
        dictionary_vr_ok(tag, vr).map_err(|expected| QueryError::WrongVr {
            path: path.clone(),
            found: vr,
            expected,
        })?;
    }
    let matcher = match &element.value {
        Value::Items(items) => match items.len() {
            0 => Matcher::Sequence(None),
            1 if items[0].is_empty() => Matcher::Sequence(None),
            1 => {
                path.set_item(0);
                let sub = parse_level(&items[0], path)?;
                path.set_item_none();
                Matcher::Sequence(Some(Box::new(sub)))
            }
            count => {
                return Err(QueryError::SequenceItems {
                    path: path.clone(),
                    count,
                })
            }
        },
        value if value.is_empty() => Matcher::Universal,
        Value::Strs(values) => {
            let mut patterns = Vec::with_capacity(values.len());
            let mut universal = false;
            for v in values {
                if v.is_empty() {
                    continue;
                }
                if v == "*" {
                    universal = true;
                    continue;
                }
                if v == "\"\"" {
                    patterns.push(Pattern::Empty);
                    continue;
                }
                match text_pattern(vr, v) {
                    Ok(Some(p)) => patterns.push(p),
                    Ok(None) => {
                        return Ok(Key {
                            tag,
                            vr,
                            matcher: Matcher::Universal,
                        })
                    }
                    Err(reason) => {
                        return Err(QueryError::BadValue {
                            path: path.clone(),
                            reason,
                        })
                    }
                }
            }
            if universal || patterns.is_empty() {
                Matcher::Universal
            } else {
                Matcher::Any(patterns)
            }
        }
        Value::Ints(values) => Matcher::Any(values.iter().map(|v| Pattern::Int(*v)).collect()),
        Value::Floats(values) => {
            Matcher::Any(values.iter().map(|v| Pattern::Decimal(*v)).collect())
        }
        // AT and opaque bytes: not matched, returned.
        Value::Tags(_) | Value::Bytes(_) => Matcher::Universal,
    };
    Ok(Key { tag, vr, matcher })
}

fn has_wildcard(v: &str) -> bool {
    v.contains(['*', '?'])
}

/// One key value → its pattern. `Ok(None)`: a VR this code does not match on (return key).
fn text_pattern(vr: VR, v: &str) -> Result<Option<Pattern>, String> {
    let no_wildcard = |what: &str| -> Result<(), String> {
        if has_wildcard(v) {
            Err(format!("wildcards are not allowed in a {what} key ({v:?})"))
        } else {
            Ok(())
        }
    };
    Ok(Some(match vr {
        VR::DA => {
            no_wildcard("date")?;
            let (lo, hi) = range(v, vr::date_bounds, "date (YYYYMMDD)")?;
            Pattern::Date(lo, hi)
        }
        VR::TM => {
            no_wildcard("time")?;
            let (lo, hi) = range(v, vr::time_bounds, "time (HH[MM[SS[.F]]])")?;
            Pattern::Time(lo, hi)
        }
        VR::DT => {
            no_wildcard("date-time")?;
            let (lo, hi) = datetime_range(v)?;
            Pattern::DateTime(lo, hi)
        }
        VR::UI => {
            no_wildcard("UID")?;
            crate::dicom::uid::validate_uid(v)
                .map_err(|e| format!("{v:?} is not a valid UID: {e}"))?;
            Pattern::Uid(v.to_owned())
        }
        VR::IS => {
            no_wildcard("IS")?;
            Pattern::Int(i64::from(
                vr::parse_integer_string(v)
                    .ok_or_else(|| format!("{v:?} is not an integer string"))?,
            ))
        }
        VR::DS => {
            no_wildcard("DS")?;
            if !vr::is_decimal_string(v) {
                return Err(format!("{v:?} is not a decimal string"));
            }
            Pattern::Decimal(
                v.parse()
                    .map_err(|_| format!("{v:?} is not a decimal string"))?,
            )
        }
        VR::AS => {
            no_wildcard("AS")?;
            Pattern::Text(v.to_owned())
        }
        VR::PN => Pattern::PersonName(pn_pattern(v)),
        VR::AE | VR::CS | VR::LO | VR::LT | VR::SH | VR::ST | VR::UC | VR::UR | VR::UT => {
            if has_wildcard(v) {
                Pattern::Wildcard(v.chars().collect())
            } else {
                Pattern::Text(v.to_owned())
            }
        }
        _ => return Ok(None),
    }))
}

/// Parses `a-b`, `-b`, `a-` or a single value with `bounds` (a single value is its own
/// range). Open ends are `None`.
fn range<T: Copy>(
    v: &str,
    bounds: fn(&str) -> Option<(T, T)>,
    what: &str,
) -> Result<(Option<T>, Option<T>), String> {
    let bad = |part: &str| format!("{part:?} is not a {what} in key {v:?}");
    match v.split_once('-') {
        None => bounds(v)
            .map(|(lo, hi)| (Some(lo), Some(hi)))
            .ok_or_else(|| bad(v)),
        Some(("", "")) => Err(format!("{v:?} is a range with neither start nor end")),
        Some((start, end)) => {
            let lo = if start.is_empty() {
                None
            } else {
                Some(bounds(start).ok_or_else(|| bad(start))?.0)
            };
            let hi = if end.is_empty() {
                None
            } else {
                Some(bounds(end).ok_or_else(|| bad(end))?.1)
            };
            Ok((lo, hi))
        }
    }
}

/// DT values may contain `-` in a UTC offset, so a range separator is a `-` that splits the
/// key into two valid (or empty) date-times; a value that is one valid DT is a single value.
fn datetime_range(v: &str) -> Result<(Option<DateTimeNum>, Option<DateTimeNum>), String> {
    if let Some((lo, hi)) = vr::datetime_bounds(v) {
        return Ok((Some(lo), Some(hi)));
    }
    for (i, _) in v.match_indices('-') {
        let (start, end) = (&v[..i], &v[i + 1..]);
        if start.is_empty() && end.is_empty() {
            break;
        }
        let lo = if start.is_empty() {
            None
        } else {
            match vr::datetime_bounds(start) {
                Some(b) => Some(b.0),
                None => continue,
            }
        };
        let hi = if end.is_empty() {
            None
        } else {
            match vr::datetime_bounds(end) {
                Some(b) => Some(b.1),
                None => continue,
            }
        };
        return Ok((lo, hi));
    }
    Err(format!(
        "{v:?} is not a date-time or date-time range (YYYY[MM[DD[HH[MM[SS[.F]]]]]])"
    ))
}

/// Lower-cases and drops trailing `^` (empty trailing components are not significant): the
/// form a person-name component group is compared in (and indexed in, `store::query`).
pub fn pn_normalize(group: &str) -> String {
    group.trim_end_matches(['^', ' ']).to_lowercase()
}

fn pn_group(group: &str) -> PnGroup {
    let g = pn_normalize(group);
    if has_wildcard(&g) {
        PnGroup::Wildcard(g.chars().collect())
    } else {
        PnGroup::Exact(g)
    }
}

fn pn_pattern(v: &str) -> PnPattern {
    let v = v.trim_end_matches('=');
    if v.contains('=') {
        PnPattern::Groups(
            v.split('=')
                .map(|g| (!g.is_empty()).then(|| pn_group(g)))
                .collect(),
        )
    } else {
        PnPattern::AnyGroup(pn_group(v))
    }
}

impl PnGroup {
    fn matches(&self, stored_group: &str) -> bool {
        let g = pn_normalize(stored_group);
        match self {
            PnGroup::Exact(e) => *e == g,
            PnGroup::Wildcard(p) => wildcard_match(p, &g),
        }
    }
}

impl Key {
    fn matches(&self, item: &Dataset) -> bool {
        match &self.matcher {
            Matcher::Universal | Matcher::Sequence(None) => true,
            Matcher::Sequence(Some(sub)) => match item.get(self.tag).map(|e| &e.value) {
                Some(Value::Items(items)) => {
                    !sub.is_constraining() || items.iter().any(|i| sub.matches(i))
                }
                _ => !sub.is_constraining(),
            },
            Matcher::Any(patterns) => match item.get(self.tag) {
                None => patterns.contains(&Pattern::Empty),
                Some(element) => patterns.iter().any(|p| p.matches(element)),
            },
        }
    }
}

impl Pattern {
    fn matches(&self, element: &Element) -> bool {
        if *self == Pattern::Empty {
            return element.value.is_empty();
        }
        match &element.value {
            Value::Strs(values) => values
                .iter()
                .filter(|v| !v.is_empty())
                .any(|v| self.matches_text(v)),
            Value::Ints(values) => values.iter().any(|v| match self {
                Pattern::Int(i) => i == v,
                Pattern::Decimal(d) => (*v as f64) == *d,
                _ => false,
            }),
            Value::Floats(values) => values.iter().any(|v| match self {
                Pattern::Decimal(d) => d == v,
                Pattern::Int(i) => (*i as f64) == *v,
                _ => false,
            }),
            _ => false,
        }
    }

    fn matches_text(&self, stored: &str) -> bool {
        match self {
            Pattern::Text(t) => t == stored,
            Pattern::Wildcard(p) => wildcard_match(p, stored),
            Pattern::Uid(u) => u == stored,
            Pattern::PersonName(PnPattern::AnyGroup(g)) => stored.split('=').any(|s| g.matches(s)),
            Pattern::PersonName(PnPattern::Groups(groups)) => {
                let stored: Vec<&str> = stored.split('=').collect();
                groups.iter().enumerate().all(|(i, g)| match g {
                    None => true,
                    Some(g) => g.matches(stored.get(i).copied().unwrap_or("")),
                })
            }
            Pattern::Date(lo, hi) => vr::parse_date(stored).is_some_and(|d| within(d, *lo, *hi)),
            Pattern::Time(lo, hi) => {
                vr::parse_time(stored).is_some_and(|t| within(t.micros, *lo, *hi))
            }
            Pattern::DateTime(lo, hi) => {
                vr::parse_datetime(stored).is_some_and(|(first, _)| within(first, *lo, *hi))
            }
            Pattern::Int(i) => stored.parse::<i64>().is_ok_and(|v| v == *i),
            Pattern::Decimal(d) => stored.parse::<f64>().is_ok_and(|v| v == *d),
            Pattern::Empty => stored.is_empty(),
        }
    }
}

fn within<T: PartialOrd>(v: T, lo: Option<T>, hi: Option<T>) -> bool {
    lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi)
}

/// `*` matches any run of characters (also none), `?` exactly one character. Greedy with one
/// backtrack point, so linear for typical keys and never exponential.
fn wildcard_match(pattern: &[char], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || (pattern[p] != '*' && pattern[p] == text[t]))
        {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::json::dataset_from_json;
    use dicom_core::{DataElement, PrimitiveValue};
    use serde_json::json;

    /// A stored item: Jane Doe, CT on station CT1 on 2026-01-15 at 10:30, status SCHEDULED.
    fn item() -> Dataset {
        dataset_from_json(&json!({
            "00080050": {"vr": "SH", "Value": ["ACC1"]},
            "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Welby^Marcus"}]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane^^^", "Ideographic": "山田^花子"}]},
            "00100020": {"vr": "LO", "Value": ["P1"]},
            "00100030": {"vr": "DA", "Value": ["19800102"]},
            "00100040": {"vr": "CS", "Value": ["F"]},
            "00101030": {"vr": "DS", "Value": [72.5]},
            "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
            "00321060": {"vr": "LO", "Value": ["CT Chest"]},
            "00400100": {"vr": "SQ", "Value": [{
                "00080060": {"vr": "CS", "Value": ["CT"]},
                "00400001": {"vr": "AE", "Value": ["CT1", "CT2"]},
                "00400002": {"vr": "DA", "Value": ["20260115"]},
                "00400003": {"vr": "TM", "Value": ["103000"]},
                "00400007": {"vr": "LO", "Value": ["Chest w/o contrast"]},
                "00400009": {"vr": "SH", "Value": ["SPS1"]},
                "00400020": {"vr": "CS", "Value": ["SCHEDULED"]},
                "00400008": {"vr": "SQ", "Value": [
                    {"00080100": {"vr": "SH", "Value": ["P1"]}, "00080102": {"vr": "SH", "Value": ["99X"]}},
                    {"00080100": {"vr": "SH", "Value": ["P2"]}, "00080102": {"vr": "SH", "Value": ["99X"]}}
                ]}
            }]},
            "00401001": {"vr": "SH", "Value": ["RP1"]}
        }))
        .unwrap()
    }

    fn query(identifier: serde_json::Value) -> Query {
        Query::from_dataset(&dataset_from_json(&identifier).unwrap()).unwrap()
    }

    fn query_err(identifier: serde_json::Value) -> QueryError {
        Query::from_dataset(&dataset_from_json(&identifier).unwrap()).unwrap_err()
    }

    fn key(tag: &str, vr: &str, value: &str) -> serde_json::Value {
        let v = if value.is_empty() {
            json!({"vr": vr})
        } else if vr == "PN" {
            json!({"vr": vr, "Value": [{"Alphabetic": value}]})
        } else {
            json!({"vr": vr, "Value": [value]})
        };
        json!({ tag: v })
    }

    fn matches(tag: &str, vr: &str, value: &str) -> bool {
        query(key(tag, vr, value)).matches(&item())
    }

    fn sps(keys: serde_json::Value) -> serde_json::Value {
        json!({"00400100": {"vr": "SQ", "Value": [keys]}})
    }

    /// Keys that bypass the JSON value checks (ranges and wildcards are not valid stored
    /// values), built the way the SCP gets them: from an InMemDicomObject.
    fn raw_query(elements: &[(Tag, VR, &str)]) -> Result<Query, QueryError> {
        let mut obj = InMemDicomObject::new_empty();
        for (tag, vr, value) in elements {
            obj.put(DataElement::new(*tag, *vr, PrimitiveValue::from(*value)));
        }
        Query::from_identifier(&obj)
    }

    fn raw_matches(tag: Tag, vr: VR, value: &str) -> bool {
        raw_query(&[(tag, vr, value)]).unwrap().matches(&item())
    }

    #[test]
    fn single_value_matching() {
        assert!(matches("00100020", "LO", "P1"));
        assert!(!matches("00100020", "LO", "P2"));
        assert!(!matches("00100020", "LO", "p1"), "LO is case-sensitive");
        assert!(matches("00080050", "SH", "ACC1"));
        assert!(matches("00100040", "CS", "F"));
        assert!(
            matches("00101030", "DS", "72.50"),
            "DS compares as a number"
        );
        assert!(!matches("00101030", "DS", "72"));
        assert!(
            raw_matches(tags::PATIENT_ID, VR::LO, "P1 "),
            "padding is not significant"
        );
        assert!(
            !matches("00100021", "LO", "X"),
            "absent attribute does not match a value"
        );
    }

    #[test]
    fn person_name_case_and_groups() {
        assert!(matches("00100010", "PN", "Doe^Jane"));
        assert!(matches("00100010", "PN", "DOE^JANE"));
        assert!(
            matches("00100010", "PN", "doe^jane^^"),
            "trailing ^ ignored"
        );
        assert!(
            !matches("00100010", "PN", "Doe"),
            "no implicit prefix matching"
        );
        assert!(matches("00100010", "PN", "doe*"));
        assert!(matches("00100010", "PN", "D?E^J*"));
        assert!(matches("00100010", "PN", "山田^花子"), "ideographic group");
        assert!(raw_matches(tags::PATIENT_NAME, VR::PN, "doe^jane=山田*"));
        assert!(!raw_matches(tags::PATIENT_NAME, VR::PN, "doe^jane=田中*"));
        assert!(
            raw_matches(tags::PATIENT_NAME, VR::PN, "=山田^花子"),
            "empty group matches any"
        );
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("00321060", "LO", "CT*"));
        assert!(matches("00321060", "LO", "*Chest"));
        assert!(matches("00321060", "LO", "C? C*t"));
        assert!(matches("00321060", "LO", "*"));
        assert!(
            !matches("00321060", "LO", "ct*"),
            "wildcards stay case-sensitive except PN"
        );
        assert!(!matches("00321060", "LO", "CT?"));
        assert!(wildcard_match(&['*', '*', 'a'], "bba"));
        assert!(wildcard_match(&['*'], ""));
        assert!(!wildcard_match(&['?'], ""));
        assert!(wildcard_match(
            &"a*b*c".chars().collect::<Vec<_>>(),
            "aXbYbZc"
        ));
    }

    #[test]
    fn universal_matching() {
        for tag in ["00100020", "00100021", "00321060"] {
            assert!(matches(tag, "LO", ""), "{tag}");
        }
        assert!(matches("00100030", "DA", ""));
        assert!(
            raw_matches(tags::PATIENT_BIRTH_DATE, VR::DA, "*"),
            "lone * on a date"
        );
        let q = query(sps(json!({})));
        assert!(q.matches(&item()));
        assert!(
            q.matches(&Dataset::new()),
            "an empty sequence key matches everything"
        );
    }

    #[test]
    fn date_ranges() {
        let step_date = |v: &str| {
            let mut obj = InMemDicomObject::new_empty();
            let mut step = InMemDicomObject::new_empty();
            step.put(DataElement::new(
                tags::SCHEDULED_PROCEDURE_STEP_START_DATE,
                VR::DA,
                PrimitiveValue::from(v),
            ));
            obj.put(DataElement::new(
                tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
                VR::SQ,
                dicom_core::value::DataSetSequence::from(vec![step]),
            ));
            Query::from_identifier(&obj).unwrap().matches(&item())
        };
        assert!(step_date("20260115"));
        assert!(!step_date("20260116"));
        assert!(step_date("20260101-20260131"));
        assert!(step_date("20260115-20260115"));
        assert!(!step_date("20260116-20260131"));
        assert!(step_date("-20260115"));
        assert!(!step_date("-20260114"));
        assert!(step_date("20260115-"));
        assert!(!step_date("20260116-"));
        assert!(
            !step_date("20260131-20260101"),
            "reversed range matches nothing"
        );
        assert!(raw_matches(
            tags::PATIENT_BIRTH_DATE,
            VR::DA,
            "19800101-19800131"
        ));
    }

    #[test]
    fn time_and_datetime_ranges() {
        let tm =
            |v: &str| query(sps(json!({"00400003": {"vr": "TM", "Value": [v]}}))).matches(&item());
        assert!(tm("103000"));
        assert!(tm("1030"), "reduced precision names the whole minute");
        assert!(tm("10"));
        assert!(!tm("11"));
        let tm_range = |v: &str| {
            let mut obj = InMemDicomObject::new_empty();
            let mut step = InMemDicomObject::new_empty();
            step.put(DataElement::new(
                tags::SCHEDULED_PROCEDURE_STEP_START_TIME,
                VR::TM,
                PrimitiveValue::from(v),
            ));
            obj.put(DataElement::new(
                tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
                VR::SQ,
                dicom_core::value::DataSetSequence::from(vec![step]),
            ));
            Query::from_identifier(&obj).unwrap().matches(&item())
        };
        assert!(tm_range("1000-1100"));
        assert!(tm_range("-1030"), "end bound includes its whole minute");
        assert!(!tm_range("-1029"));
        assert!(tm_range("1030-"));
        assert!(!tm_range("1031-"));

        let mut dt_item = Dataset::new();
        dt_item.put_str(tags::ACQUISITION_DATE_TIME, VR::DT, "20260115103000.5+0100");
        let dt = |v: &str| {
            raw_query(&[(tags::ACQUISITION_DATE_TIME, VR::DT, v)])
                .unwrap()
                .matches(&dt_item)
        };
        assert!(dt("2026"));
        assert!(dt("202601-202602"));
        assert!(dt("-20260115"));
        assert!(dt("2026011510-"));
        assert!(!dt("20260116-"));
        assert!(
            dt("20260115103000.5+0100"),
            "a DT with an offset is one value"
        );
        assert!(dt("20260115-0500"), "ambiguous: one DT with offset -0500");
    }

    #[test]
    fn uid_lists() {
        assert!(raw_matches(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4"));
        assert!(raw_matches(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            "1.2.3.5\\1.2.3.4"
        ));
        assert!(!raw_matches(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            "1.2.3.5\\1.2.3.6"
        ));
        assert!(!raw_matches(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"));
    }

    #[test]
    fn multiple_values_on_either_side() {
        // Key list (CS): any value; stored multi-valued AE: any value.
        let q = query(sps(
            json!({"00080060": {"vr": "CS", "Value": ["MR", "CT"]}}),
        ));
        assert!(q.matches(&item()));
        let q = query(sps(json!({"00400001": {"vr": "AE", "Value": ["CT2"]}})));
        assert!(q.matches(&item()));
    }

    #[test]
    fn sequence_matching_with_several_keys() {
        let q = |keys| query(sps(keys)).matches(&item());
        assert!(q(json!({
            "00400001": {"vr": "AE", "Value": ["CT1"]},
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00400002": {"vr": "DA", "Value": ["20260115"]}
        })));
        assert!(
            !q(json!({
                "00400001": {"vr": "AE", "Value": ["CT1"]},
                "00080060": {"vr": "CS", "Value": ["MR"]}
            })),
            "every key of the item must match"
        );
        assert!(!q(json!({"00400001": {"vr": "AE", "Value": ["MR1"]}})));
        assert!(q(
            json!({"00400001": {"vr": "AE", "Value": ["CT*"]}, "00400009": {"vr": "SH"}})
        ));
        // Nested sequence inside the step: one of the protocol codes.
        assert!(q(
            json!({"00400008": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["P2"]}}]}})
        ));
        assert!(!q(
            json!({"00400008": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["P3"]}}]}})
        ));
        // An item without the sequence does not match a constraining sequence key.
        let mut bare = item();
        bare.remove(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE);
        assert!(!query(sps(json!({"00080060": {"vr": "CS", "Value": ["CT"]}}))).matches(&bare));
        assert!(query(sps(json!({"00080060": {"vr": "CS"}}))).matches(&bare));
    }

    #[test]
    fn projection_returns_exactly_the_keys() {
        let q = query(json!({
            "00100010": {"vr": "PN"},
            "00100021": {"vr": "LO"},
            "0020000D": {"vr": "UI"},
            "00400100": {"vr": "SQ", "Value": [{
                "00400001": {"vr": "AE", "Value": ["CT1"]},
                "00400002": {"vr": "DA"},
                "00400011": {"vr": "SH"},
                "00400008": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["P2"]}, "00080104": {"vr": "LO"}}]}
            }]}
        }));
        let out = q.project(&item());
        let top: Vec<Tag> = out.iter().map(|(t, _)| t).collect();
        assert_eq!(
            top,
            vec![
                tags::SPECIFIC_CHARACTER_SET, // the ideographic name is not ASCII
                tags::PATIENT_NAME,
                tags::ISSUER_OF_PATIENT_ID,
                tags::STUDY_INSTANCE_UID,
                tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
            ]
        );
        assert_eq!(out.str(tags::SPECIFIC_CHARACTER_SET), Some("ISO_IR 192"));
        assert_eq!(out.str(tags::PATIENT_NAME), Some("Doe^Jane^^^=山田^花子"));
        let issuer = out.get(tags::ISSUER_OF_PATIENT_ID).unwrap();
        assert_eq!((issuer.vr, issuer.value.is_empty()), (VR::LO, true));
        let step = &out.items(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE).unwrap()[0];
        let step_tags: Vec<Tag> = step.iter().map(|(t, _)| t).collect();
        assert_eq!(
            step_tags,
            vec![
                tags::SCHEDULED_STATION_AE_TITLE,
                tags::SCHEDULED_PROCEDURE_STEP_START_DATE,
                tags::SCHEDULED_PROTOCOL_CODE_SEQUENCE,
                tags::SCHEDULED_PROCEDURE_STEP_LOCATION,
            ]
        );
        assert_eq!(
            step.get(tags::SCHEDULED_STATION_AE_TITLE).unwrap().value,
            Value::Strs(vec!["CT1".into(), "CT2".into()]),
            "the stored value is returned, all of it"
        );
        assert_eq!(
            step.str(tags::SCHEDULED_PROCEDURE_STEP_START_DATE),
            Some("20260115")
        );
        let codes = step.items(tags::SCHEDULED_PROTOCOL_CODE_SEQUENCE).unwrap();
        assert_eq!(codes.len(), 1, "only the matching code item");
        let code_tags: Vec<Tag> = codes[0].iter().map(|(t, _)| t).collect();
        assert_eq!(code_tags, vec![tags::CODE_VALUE, tags::CODE_MEANING]);
        assert_eq!(codes[0].str(tags::CODE_VALUE), Some("P2"));
    }

    #[test]
    fn projection_of_universal_sequence_returns_it_whole() {
        let out = query(json!({"00400100": {"vr": "SQ", "Value": []}})).project(&item());
        assert_eq!(
            out.get(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE),
            item().get(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE)
        );
        let out = query(json!({"00081110": {"vr": "SQ", "Value": []}})).project(&item());
        assert_eq!(
            out.get(tags::REFERENCED_STUDY_SEQUENCE).unwrap().value,
            Value::Items(vec![])
        );
    }

    /// `""` matches an absent or zero-length attribute and nothing else.
    #[test]
    fn empty_value_matching() {
        let q = |v: &str| {
            let mut id = Dataset::new();
            id.put_str(tags::ACCESSION_NUMBER, VR::SH, v);
            Query::from_dataset(&id).unwrap()
        };
        let mut with = Dataset::new();
        with.put_str(tags::ACCESSION_NUMBER, VR::SH, "A1");
        let mut empty = Dataset::new();
        empty.put(tags::ACCESSION_NUMBER, VR::SH, Value::Strs(vec![]));
        let absent = Dataset::new();
        let e = q("\"\"");
        assert!(!e.matches(&with));
        assert!(e.matches(&empty));
        assert!(e.matches(&absent));
        // A single value never matches an absent attribute; universal matches all.
        assert!(!q("A1").matches(&absent));
        assert!(q("A1").matches(&with));
        assert!(q("*").matches(&absent));
    }

    #[test]
    fn specific_character_set_rules() {
        let mut ascii_item = item();
        ascii_item.put_str(tags::PATIENT_NAME, VR::PN, "Doe^Jane");
        let out = query(json!({"00100010": {"vr": "PN"}})).project(&ascii_item);
        assert!(
            out.get(tags::SPECIFIC_CHARACTER_SET).is_none(),
            "not asked, not needed"
        );
        let q = query(
            json!({"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}, "00100010": {"vr": "PN"}}),
        );
        assert_eq!(
            q.project(&ascii_item).str(tags::SPECIFIC_CHARACTER_SET),
            Some("ISO_IR 100")
        );
        assert_eq!(
            q.project(&item()).str(tags::SPECIFIC_CHARACTER_SET),
            Some("ISO_IR 192")
        );
        // Latin-1 text in a Latin-1 request: answered in Latin-1, and encoded so.
        let mut latin = ascii_item.clone();
        latin.put_str(tags::PATIENT_NAME, VR::PN, "Müller^Jürgen");
        let out = q.project(&latin);
        assert_eq!(out.str(tags::SPECIFIC_CHARACTER_SET), Some("ISO_IR 100"));
        let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut bytes = Vec::new();
        out.to_dicom()
            .write_dataset_with_ts(&mut bytes, &ts)
            .unwrap();
        assert!(
            bytes.windows(2).any(|w| w == [b'M', 0xFC]),
            "ü as one Latin-1 byte"
        );
        let back = InMemDicomObject::read_dataset_with_ts(bytes.as_slice(), &ts).unwrap();
        assert_eq!(
            back.element(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
            "Müller^Jürgen"
        );
        let q = query(json!({"00080005": {"vr": "CS"}, "00100020": {"vr": "LO"}}));
        assert_eq!(
            q.project(&ascii_item).str(tags::SPECIFIC_CHARACTER_SET),
            Some("ISO_IR 192")
        );
        // (0008,0005) is never a matching key.
        assert!(q.matches(&ascii_item));
    }

    #[test]
    fn respond_encodes_a_dicom_object() {
        let q = query(json!({"00100020": {"vr": "LO", "Value": ["P1"]}, "00100010": {"vr": "PN"}}));
        let obj = q.respond(&item()).unwrap();
        assert_eq!(
            obj.element(tags::PATIENT_ID).unwrap().to_str().unwrap(),
            "P1"
        );
        assert!(query(key("00100020", "LO", "P9"))
            .respond(&item())
            .is_none());
    }

    #[test]
    fn status_constraint_detection() {
        assert!(!query(sps(json!({"00400020": {"vr": "CS"}}))).constrains_sps_status());
        assert!(query(sps(
            json!({"00400020": {"vr": "CS", "Value": ["COMPLETED"]}})
        ))
        .constrains_sps_status());
        assert!(!query(json!({"00100020": {"vr": "LO"}})).constrains_sps_status());
    }

    #[test]
    fn bad_identifiers_are_typed_errors() {
        let e = raw_query(&[(tags::PATIENT_BIRTH_DATE, VR::DA, "2026-01")]).unwrap_err();
        assert!(matches!(e, QueryError::BadValue { .. }), "{e}");
        assert_eq!(e.status(), 0xC000);
        assert_eq!(e.offending_element(), Some(tags::PATIENT_BIRTH_DATE));
        assert!(e.error_comment().chars().count() <= 64);
        for (tag, vr, v) in [
            (tags::PATIENT_BIRTH_DATE, VR::DA, "2026011*"),
            (tags::PATIENT_BIRTH_DATE, VR::DA, "-"),
            (tags::PATIENT_BIRTH_DATE, VR::DA, "20260101-2026"),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.*"),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2-1.3"),
            (tags::SCHEDULED_PROCEDURE_STEP_START_TIME, VR::TM, "25"),
            (tags::SCHEDULED_PROCEDURE_STEP_START_TIME, VR::TM, "10:30"),
            (tags::ACQUISITION_DATE_TIME, VR::DT, "2026-13"),
            (tags::NUMBER_OF_STUDY_RELATED_SERIES, VR::IS, "1-5"),
        ] {
            let e = raw_query(&[(tag, vr, v)]).unwrap_err();
            assert!(matches!(e, QueryError::BadValue { .. }), "{v}: {e}");
        }
        let e = raw_query(&[(tags::PATIENT_ID, VR::SH, "P1")]).unwrap_err();
        assert!(matches!(e, QueryError::WrongVr { .. }));
        assert_eq!(e.status(), 0xA900);
        let e = query_err(json!({"00400100": {"vr": "SQ", "Value": [{}, {}]}}));
        assert!(matches!(e, QueryError::SequenceItems { count: 2, .. }));
        assert_eq!(e.status(), 0xA900);
        let mut step = InMemDicomObject::new_empty();
        step.put(DataElement::new(
            tags::SCHEDULED_STATION_AE_TITLE,
            VR::LO,
            PrimitiveValue::from("X"),
        ));
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![step]),
        ));
        let e = Query::from_identifier(&obj).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ScheduledProcedureStepSequence (0040,0100) item 1 > ScheduledStationAETitle (0040,0001): VR LO given, the standard says AE"
        );
        assert_eq!(
            e.offending_element(),
            Some(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE)
        );
    }

    #[test]
    fn unmatched_vrs_are_return_keys() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            Tag(0x0009, 0x1001),
            VR::UN,
            PrimitiveValue::from(vec![1u8, 2]),
        ));
        let q = Query::from_identifier(&obj).unwrap();
        assert!(q.matches(&item()));
        let out = q.project(&item());
        assert_eq!(out.get(Tag(0x0009, 0x1001)).unwrap().vr, VR::UN);
    }

    /// The SCP's path end to end: an identifier encoded on the wire (Implicit VR LE, the
    /// default transfer syntax, ISO_IR 100 text) is decoded by dicom-object, matched, and the
    /// response with a non-ASCII name is encoded and decoded back intact, the writer using the
    /// Specific Character Set the projection put in.
    #[test]
    fn identifier_from_the_wire_and_response_encoding() {
        use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut step = InMemDicomObject::new_empty();
        step.put(DataElement::new(
            tags::SCHEDULED_STATION_AE_TITLE,
            VR::AE,
            PrimitiveValue::from("CT1 "),
        ));
        step.put(DataElement::new(
            tags::SCHEDULED_PROCEDURE_STEP_START_DATE,
            VR::DA,
            PrimitiveValue::from("20260101-20260131"),
        ));
        step.put(DataElement::new(
            tags::MODALITY,
            VR::CS,
            PrimitiveValue::Empty,
        ));
        let mut identifier = InMemDicomObject::new_empty();
        identifier.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::from("ISO_IR 100"),
        ));
        identifier.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("doe*"),
        ));
        identifier.put(DataElement::new(
            tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![step]),
        ));
        let mut wire = Vec::new();
        identifier.write_dataset_with_ts(&mut wire, &ts).unwrap();
        let received = InMemDicomObject::read_dataset_with_ts(wire.as_slice(), &ts).unwrap();

        let q = Query::from_identifier(&received).unwrap();
        let response = q.respond(&item()).expect("matches");
        let mut out = Vec::new();
        response.write_dataset_with_ts(&mut out, &ts).unwrap();
        let back = InMemDicomObject::read_dataset_with_ts(out.as_slice(), &ts).unwrap();
        assert_eq!(
            back.element(tags::SPECIFIC_CHARACTER_SET)
                .unwrap()
                .to_str()
                .unwrap(),
            "ISO_IR 192"
        );
        assert_eq!(
            back.element(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
            "Doe^Jane^^^=山田^花子"
        );
        let back = Dataset::from_dicom(&back).unwrap();
        let step = &back.items(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE).unwrap()[0];
        assert_eq!(step.str(tags::MODALITY), Some("CT"));
        assert_eq!(
            step.str(tags::SCHEDULED_PROCEDURE_STEP_START_DATE),
            Some("20260115")
        );
    }
}
