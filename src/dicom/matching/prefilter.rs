//! A cheap necessary condition for [`Query::matches`], so a C-FIND does not walk every stored
//! dataset.
//!
//! Why: the worklist is matched in memory, but 10,000 decoded datasets are scattered over the
//! heap, and a full match touches several allocations per item. Profiled under an MWL load,
//! the scan was memory-bound: most of the daemon's CPU went to cache misses on the items, not
//! to the comparisons. A [`MatchHint`] is a few words per item, computed once when the item
//! enters the store's cache and kept next to it; a [`Prefilter`] is derived once per query
//! from the keys modalities actually use (Patient ID, Accession Number, and inside the
//! Scheduled Procedure Step Sequence: Modality, Scheduled Station AE Title, start date).
//!
//! The one rule: [`Prefilter::admits`] may let a non-matching item through (the full matcher
//! then decides) but never turns a matching one away. Anything the hint cannot state exactly
//! (a missing or multi-valued attribute, an unparsable date, several step items) is unknown
//! and admitted; a key with wildcards or other kinds of pattern sets no condition.

use std::hash::{DefaultHasher, Hash, Hasher};

use dicom_core::Tag;
use dicom_dictionary_std::tags;

use super::{within, Matcher, Pattern, Query};
use crate::dicom::dataset::{Dataset, Value};
use crate::dicom::vr::{self, DateNum};

/// Top-level text attributes the hint records (single-value, exact matching).
const TOP_TEXT: [Tag; 2] = [tags::PATIENT_ID, tags::ACCESSION_NUMBER];
/// Text attributes of the scheduled step the hint records.
const STEP_TEXT: [Tag; 2] = [tags::MODALITY, tags::SCHEDULED_STATION_AE_TITLE];

/// What the prefilter knows of one stored item. `None` everywhere means "unknown: admit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatchHint {
    /// Hashes of the single values of [`TOP_TEXT`].
    top: [Option<u64>; 2],
    /// Set only when the step sequence has exactly one item.
    step: Option<StepHint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StepHint {
    /// Hashes of the single values of [`STEP_TEXT`].
    text: [Option<u64>; 2],
    /// Scheduled Procedure Step Start Date, parsed.
    date: Option<DateNum>,
}

impl MatchHint {
    /// The hint of a stored item's dataset.
    pub fn of(item: &Dataset) -> MatchHint {
        let step = match item.items(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE) {
            Some([step]) => Some(StepHint {
                text: STEP_TEXT.map(|tag| single_text(step, tag).map(hash)),
                date: single_text(step, tags::SCHEDULED_PROCEDURE_STEP_START_DATE)
                    .and_then(vr::parse_date),
            }),
            _ => None,
        };
        MatchHint {
            top: TOP_TEXT.map(|tag| single_text(item, tag).map(hash)),
            step,
        }
    }
}

/// The conditions a query sets on [`MatchHint`]s. `None` everywhere admits every item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prefilter {
    /// Hashes one of which the attribute's value must have, per [`TOP_TEXT`] attribute.
    top: [Option<Vec<u64>>; 2],
    /// Conditions on the step, if the query constrains the step sequence.
    step: Option<StepFilter>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct StepFilter {
    text: [Option<Vec<u64>>; 2],
    /// Date ranges one of which must hold the step's start date.
    dates: Option<Vec<(Option<DateNum>, Option<DateNum>)>>,
}

impl Prefilter {
    /// The conditions `query` implies.
    pub fn of(query: &Query) -> Prefilter {
        let step = query.keys.iter().find_map(|key| match &key.matcher {
            Matcher::Sequence(Some(sub))
                if key.tag == tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE && sub.is_constraining() =>
            {
                Some(StepFilter {
                    text: STEP_TEXT.map(|tag| exact_texts(sub, tag)),
                    dates: patterns(sub, tags::SCHEDULED_PROCEDURE_STEP_START_DATE).and_then(
                        |ps| {
                            ps.iter()
                                .map(|p| match p {
                                    Pattern::Date(lo, hi) => Some((*lo, *hi)),
                                    _ => None,
                                })
                                .collect()
                        },
                    ),
                })
            }
            _ => None,
        });
        Prefilter {
            top: TOP_TEXT.map(|tag| exact_texts(query, tag)),
            step,
        }
    }

    /// `false` only if the item cannot match the query.
    pub fn admits(&self, hint: &MatchHint) -> bool {
        if !texts_admit(&self.top, &hint.top) {
            return false;
        }
        let (Some(filter), Some(step)) = (&self.step, &hint.step) else {
            return true;
        };
        if !texts_admit(&filter.text, &step.text) {
            return false;
        }
        match (&filter.dates, step.date) {
            (Some(ranges), Some(date)) => ranges.iter().any(|(lo, hi)| within(date, *lo, *hi)),
            _ => true,
        }
    }
}

fn texts_admit(wanted: &[Option<Vec<u64>>; 2], known: &[Option<u64>; 2]) -> bool {
    wanted
        .iter()
        .zip(known)
        .all(|(wanted, known)| match (wanted, known) {
            (Some(set), Some(h)) => set.contains(h),
            _ => true,
        })
}

/// The patterns of `tag`'s key at this level, if it is a matching key.
fn patterns(query: &Query, tag: Tag) -> Option<&[Pattern]> {
    query.keys.iter().find_map(|key| match &key.matcher {
        Matcher::Any(ps) if key.tag == tag => Some(ps.as_slice()),
        _ => None,
    })
}

/// Hashes of `tag`'s key values when every one is exact text (any wildcard: no condition).
fn exact_texts(query: &Query, tag: Tag) -> Option<Vec<u64>> {
    patterns(query, tag)?
        .iter()
        .map(|p| match p {
            Pattern::Text(t) => Some(hash(t)),
            _ => None,
        })
        .collect()
}

/// The value of a single-valued text attribute (what `Pattern::Text` compares with).
fn single_text(ds: &Dataset, tag: Tag) -> Option<&str> {
    match &ds.get(tag)?.value {
        Value::Strs(values) if values.len() == 1 => Some(values[0].as_str()),
        _ => None,
    }
}

fn hash(s: impl AsRef<str>) -> u64 {
    let mut h = DefaultHasher::new();
    s.as_ref().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::VR;

    fn strs(values: &[&str]) -> Value {
        Value::Strs(values.iter().map(|s| (*s).to_owned()).collect())
    }

    /// A stored item; `steps` is each step's (modality, station, date) values.
    fn item(pid: &[&str], acc: &[&str], steps: &[(&[&str], &[&str], &[&str])]) -> Dataset {
        let mut ds = Dataset::new();
        if !pid.is_empty() {
            ds.put(tags::PATIENT_ID, VR::LO, strs(pid));
        }
        if !acc.is_empty() {
            ds.put(tags::ACCESSION_NUMBER, VR::SH, strs(acc));
        }
        if !steps.is_empty() {
            let items = steps
                .iter()
                .map(|(modality, station, date)| {
                    let mut s = Dataset::new();
                    for (tag, vr, v) in [
                        (tags::MODALITY, VR::CS, modality),
                        (tags::SCHEDULED_STATION_AE_TITLE, VR::AE, station),
                        (tags::SCHEDULED_PROCEDURE_STEP_START_DATE, VR::DA, date),
                    ] {
                        if !v.is_empty() {
                            s.put(tag, vr, strs(v));
                        }
                    }
                    s
                })
                .collect();
            ds.put(
                tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
                VR::SQ,
                Value::Items(items),
            );
        }
        ds
    }

    /// A query; `None` leaves the key out, `Some("")` is a universal key.
    fn query(
        pid: Option<&str>,
        acc: Option<&str>,
        step: Option<(Option<&str>, Option<&str>, Option<&str>)>,
    ) -> Query {
        let mut ds = Dataset::new();
        let put = |ds: &mut Dataset, tag, vr, v: Option<&str>| {
            if let Some(v) = v {
                // Backslashes make lists, as on the wire.
                ds.put(tag, vr, strs(&v.split('\\').collect::<Vec<_>>()));
            }
        };
        put(&mut ds, tags::PATIENT_ID, VR::LO, pid);
        put(&mut ds, tags::ACCESSION_NUMBER, VR::SH, acc);
        if let Some((modality, station, date)) = step {
            let mut s = Dataset::new();
            put(&mut s, tags::MODALITY, VR::CS, modality);
            put(&mut s, tags::SCHEDULED_STATION_AE_TITLE, VR::AE, station);
            put(
                &mut s,
                tags::SCHEDULED_PROCEDURE_STEP_START_DATE,
                VR::DA,
                date,
            );
            ds.put(
                tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
                VR::SQ,
                Value::Items(vec![s]),
            );
        }
        Query::from_dataset(&ds).unwrap()
    }

    #[test]
    fn the_common_modality_query_rejects_other_stations_and_dates() {
        let q = query(None, None, Some((None, Some("CT01"), Some("20261122"))));
        let pre = Prefilter::of(&q);
        let hit = item(&["P1"], &["A1"], &[(&["CT"], &["CT01"], &["20261122"])]);
        let other_station = item(&["P1"], &["A1"], &[(&["CT"], &["CT02"], &["20261122"])]);
        let other_day = item(&["P1"], &["A1"], &[(&["CT"], &["CT01"], &["20261123"])]);
        assert!(pre.admits(&MatchHint::of(&hit)) && q.matches(&hit));
        assert!(!pre.admits(&MatchHint::of(&other_station)));
        assert!(!pre.admits(&MatchHint::of(&other_day)));
        // Patient ID and accession lists.
        let q = query(Some("P2\\P1"), Some("A1"), None);
        assert!(Prefilter::of(&q).admits(&MatchHint::of(&hit)));
        let q = query(Some("P2"), None, None);
        assert!(!Prefilter::of(&q).admits(&MatchHint::of(&hit)));
        // What the hint cannot state is admitted: two steps, a wildcard key.
        let two_steps = item(
            &["P1"],
            &[],
            &[
                (&["MR"], &["MR1"], &["20260101"]),
                (&["CT"], &["CT01"], &["20261122"]),
            ],
        );
        let q = query(None, None, Some((None, Some("CT01"), Some("20261122"))));
        assert!(Prefilter::of(&q).admits(&MatchHint::of(&two_steps)) && q.matches(&two_steps));
        let q = query(Some("P*"), None, Some((None, Some("CT0?"), None)));
        let unlike = item(&["Q9"], &["A9"], &[(&["MR"], &["XR9"], &["19990101"])]);
        assert!(Prefilter::of(&q).admits(&MatchHint::of(&unlike)) && !q.matches(&unlike));
    }

    /// The rule, over every combination of many items and queries: whatever the full matcher
    /// matches, the prefilter admits. The prefilter must also reject most non-matches, or it
    /// would be of no use (and this test could not tell).
    #[test]
    fn never_rejects_a_match() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pick = |rng: &mut fastrand::Rng, from: &[&'static str]| from[rng.usize(..from.len())];
        // Stored values, including the awkward: empty, multi-valued, unparsable dates.
        let ids: &[&[&str]] = &[&[], &["P1"], &["P2"], &["P1", "P2"], &[""]];
        let texts: &[&[&str]] = &[&[], &["CT"], &["MR"], &["CT01"], &["CT", "MR"], &[""]];
        let dates: &[&[&str]] = &[
            &[],
            &["20261122"],
            &["20261121"],
            &["bad"],
            &["20261122", "20261123"],
        ];
        let items: Vec<Dataset> = (0..400)
            .map(|_| {
                let steps: Vec<(&[&str], &[&str], &[&str])> = (0..rng.usize(0..=2))
                    .map(|_| {
                        (
                            texts[rng.usize(..texts.len())],
                            texts[rng.usize(..texts.len())],
                            dates[rng.usize(..dates.len())],
                        )
                    })
                    .collect();
                item(
                    ids[rng.usize(..ids.len())],
                    ids[rng.usize(..ids.len())],
                    &steps,
                )
            })
            .collect();
        let key_ids = [
            None,
            Some(""),
            Some("P1"),
            Some("P2"),
            Some("P*"),
            Some("P1\\P3"),
        ];
        let key_texts = [
            None,
            Some(""),
            Some("CT"),
            Some("MR"),
            Some("CT01"),
            Some("C*"),
            Some("CT\\MR"),
        ];
        let key_dates = [
            None,
            Some(""),
            Some("20261122"),
            Some("20261121-"),
            Some("-20261121"),
            Some("20261122\\20261121"),
        ];
        let (mut matched, mut rejected, mut pairs) = (0, 0, 0);
        for _ in 0..400 {
            let step = rng.bool().then(|| {
                (
                    pick(&mut rng, &["", "CT", "MR", "C*", "CT\\MR", "~"]),
                    key_texts[rng.usize(..key_texts.len())],
                    key_dates[rng.usize(..key_dates.len())],
                )
            });
            let q = query(
                key_ids[rng.usize(..key_ids.len())],
                key_ids[rng.usize(..key_ids.len())],
                step.map(|(m, s, d)| ((m != "~").then_some(m), s, d)),
            );
            let pre = Prefilter::of(&q);
            for it in &items {
                pairs += 1;
                let admits = pre.admits(&MatchHint::of(it));
                if q.matches(it) {
                    matched += 1;
                    assert!(
                        admits,
                        "rejected a match:\nquery {q:?}\nitem {it:?}\n{pre:?}"
                    );
                } else if !admits {
                    rejected += 1;
                }
            }
        }
        assert!(
            matched > 1000,
            "too few matches to mean anything: {matched}"
        );
        assert!(
            rejected * 2 > pairs - matched,
            "the prefilter rejected only {rejected} of {} non-matches",
            pairs - matched
        );
    }
}
