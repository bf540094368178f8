//! Query/Retrieve Information Model – FIND (PS3.4 C.4.1): the C-FIND SCP of the Patient Root
//! and Study Root models, over the index built for it (`store::query`).
//!
//! The request's pure part lives here: the identifier is decoded (text under its Specific
//! Character Set, ISO 2022 code extensions included: [`decode_identifier`]), the
//! Query/Retrieve Level and the key rules are checked, the keys become a
//! `dicom::matching::Query` (the one matching engine, shared with the Modality Worklist), and
//! the index search returns the projected answers, which are encoded in the context's
//! transfer syntax. The engine's shared C-FIND responder streams them (one pending response
//! per match, C-CANCEL → FE00).
//!
//! Rules, as PS3.4 C.4.1.2 and C.2.2.1 state them and as implemented:
//! - (0008,0052) is required; PATIENT is a level of Patient Root only (Study Root: A900).
//! - Hierarchical (baseline) queries: every level above the query level carries its unique
//!   key as a single value; otherwise A900, unless relational queries were agreed by SOP
//!   Class Extended Negotiation (byte 1 of the application information, C.5.1.1), in which
//!   case any key at or above the level may constrain the search.
//! - Keys below the query level are not matched and come back zero-length (Orthanc does the
//!   same: real SCUs send them). Timezone Offset From UTC is returned, never matched.
//! - Sequence keys are not held by the index: an item with keys is an optional key this SCP
//!   cannot match, treated as universal, and the pending status is FF01 (C.2.2.1.1).
//! - The response holds exactly the requested keys, plus (0008,0052), and (0008,0005) =
//!   `ISO_IR 192` whenever it holds non-ASCII text (even if the request did not list it;
//!   the request's own set when it can carry the text).
//! - At most `[query] max_results` matches are returned; the search then stops and the final
//!   status is still 0000 (as the Modality Worklist's cap), with a warning in the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids};

use crate::dicom::charset;
use crate::dicom::dataset::{Dataset, Value};
use crate::dicom::matching::{Query, QueryError};
use crate::net::dimse::command::Command;
use crate::net::dimse::dataset::{read_dataset, write_dataset};
use crate::net::dimse::find::{status, FindAnswer};
use crate::rt::WorkPool;
use crate::store::index::Index;
use crate::store::query::{self as qr, Level};

/// Patient Root Query/Retrieve Information Model – FIND.
pub const PATIENT_ROOT: &str = uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND;
/// Study Root Query/Retrieve Information Model – FIND.
pub const STUDY_ROOT: &str = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND;

/// Default of `[query] max_results`.
pub const DEFAULT_MAX_RESULTS: usize = crate::config::DEFAULT_QUERY_MAX_RESULTS;

/// Waits until every object acknowledged so far is in the index: the ingest journal answers a
/// C-STORE before its checkpoint writes the rows, and a C-FIND must see what was acknowledged
/// before it (as the admin API's reads do). A port, implemented by the ingest layer.
pub trait Settled: Send + Sync + std::fmt::Debug {
    /// Waits at most `limit`; whether the index caught up.
    fn settle(
        &self,
        limit: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + '_>>;
}

/// Longest a C-FIND waits for the ingest checkpoint before answering from the index as it
/// stands.
pub const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The Query/Retrieve FIND service of the store port.
#[derive(Debug, Clone)]
pub struct QueryScp {
    /// Read-your-writes: waits for the checkpoint of acknowledged objects (`None`: the index
    /// is written before the acknowledgement).
    pub settle: Option<Arc<dyn Settled>>,
    /// The index searched.
    pub index: Arc<Index>,
    /// Threads the searches run on (never a core).
    pub pool: WorkPool,
    /// Most matches per C-FIND.
    pub max_results: usize,
    /// Retrieve AE Title (0008,0054) answered: the store port's AE title.
    pub ae_title: String,
}

/// Whether an abstract syntax is one of the FIND models served.
pub fn is_find_model(abstract_syntax: &str) -> bool {
    matches!(abstract_syntax, PATIENT_ROOT | STUDY_ROOT)
}

/// Our answer to SOP Class Extended Negotiation for a FIND model (C.5.1.1): relational
/// queries (byte 1) accepted when proposed; combined date-time matching, fuzzy semantic
/// matching of person names and timezone adjustment (bytes 2–4) declined.
pub fn extended_negotiation(proposed: &[u8]) -> Vec<u8> {
    proposed
        .iter()
        .enumerate()
        .map(|(i, b)| if i == 0 { *b & 1 } else { 0 })
        .collect()
}

/// Whether the agreed extended negotiation allows relational queries.
pub fn relational(agreed: Option<&Vec<u8>>) -> bool {
    agreed.and_then(|a| a.first()).copied() == Some(1)
}

/// Decodes a C-FIND identifier into the dataset model with every text value in Unicode: the
/// Specific Character Set applies as PS3.5 §6.1 says, ISO 2022 code extensions included
/// (dicom-parser alone reads only the first term and keeps escape sequences). Shared by the
/// Modality Worklist.
pub fn decode_identifier(bytes: &[u8], ts: &str) -> Result<Dataset, Refusal> {
    // (A deflated identifier is left to dicom-parser's own decoding: its bytes are not
    // elements until inflated.)
    let enc = crate::dicom::Encoding::for_transfer_syntax(ts)
        .filter(|(_, deflated)| !deflated)
        .map(|(e, _)| e);
    let transparent = enc.and_then(|e| charset::latin1_transparent(bytes, e));
    let (bytes, terms) = match &transparent {
        Some((copy, terms)) => (&copy[..], Some(terms.as_slice())),
        None => (bytes, None),
    };
    let obj = read_dataset(bytes, ts)
        .map_err(|e| Refusal::new(status::IDENTIFIER_DOES_NOT_MATCH, e, None))?;
    let mut ds = Dataset::from_dicom(&obj).map_err(|e| Refusal::from(&QueryError::from(e)))?;
    if let Some(terms) = terms {
        redecode(&mut ds, terms);
        // The text is Unicode now: say so, so that projection chooses the answer's set.
        let value = terms.join("\\");
        ds.put(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            Value::Strs(value.split('\\').map(str::to_owned).collect()),
        );
    }
    Ok(ds)
}

fn redecode(ds: &mut Dataset, terms: &[String]) {
    let tags: Vec<Tag> = ds.iter().map(|(t, _)| t).collect();
    for tag in tags {
        let Some(e) = ds.get(tag) else { continue };
        let vr = e.vr;
        let value = match &e.value {
            Value::Strs(v) if charset::is_charset_vr(vr) => Value::Strs(
                v.iter()
                    .map(|s| charset::redecode_latin1(s, terms))
                    .collect(),
            ),
            Value::Items(items) => {
                let mut items = items.clone();
                for i in &mut items {
                    redecode(i, terms);
                }
                Value::Items(items)
            }
            _ => continue,
        };
        ds.put(tag, vr, value);
    }
}

/// A refused request: final status, Error Comment, Offending Element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status.
    pub status: u16,
    /// Error Comment, whole (the response encoder cuts it to 64 characters).
    pub comment: String,
    /// Offending Element.
    pub offending: Option<Tag>,
}

impl Refusal {
    fn new(status: u16, comment: impl Into<String>, offending: Option<Tag>) -> Self {
        Refusal {
            status,
            comment: comment.into(),
            offending,
        }
    }
}

impl From<&QueryError> for Refusal {
    fn from(e: &QueryError) -> Self {
        Refusal::new(e.status(), e.to_string(), e.offending_element())
    }
}

impl From<Refusal> for FindAnswer {
    fn from(r: Refusal) -> Self {
        FindAnswer::Refused {
            status: r.status,
            comment: r.comment,
            offending: r.offending,
        }
    }
}

/// A checked request: the level, the identifier as decoded, the query to run, and whether an
/// optional key is treated as universal (FF01).
#[derive(Debug)]
pub struct Request {
    /// Query/Retrieve Level.
    pub level: Level,
    /// The decoded identifier.
    pub identifier: Dataset,
    /// The query (keys below the level and sequence keys made universal).
    pub query: Query,
    /// A key could not be matched and was treated as universal.
    pub optional_unsupported: bool,
}

/// Checks an identifier against the model's rules and builds the query (pure).
pub fn check(sop_class: &str, identifier: Dataset, relational: bool) -> Result<Request, Refusal> {
    let patient_root = match sop_class {
        PATIENT_ROOT => true,
        STUDY_ROOT => false,
        other => {
            return Err(Refusal::new(
                status::IDENTIFIER_DOES_NOT_MATCH,
                format!("SOP class {other} is not a Query/Retrieve FIND model"),
                None,
            ))
        }
    };
    let level = identifier
        .str(tags::QUERY_RETRIEVE_LEVEL)
        .and_then(Level::parse)
        .ok_or_else(|| {
            Refusal::new(
                status::IDENTIFIER_DOES_NOT_MATCH,
                "QueryRetrieveLevel (0008,0052) missing or not PATIENT/STUDY/SERIES/IMAGE",
                Some(tags::QUERY_RETRIEVE_LEVEL),
            )
        })?;
    if level == Level::Patient && !patient_root {
        return Err(Refusal::new(
            status::IDENTIFIER_DOES_NOT_MATCH,
            "PATIENT level is not part of the Study Root model",
            Some(tags::QUERY_RETRIEVE_LEVEL),
        ));
    }
    if !relational {
        let top = if patient_root {
            Level::Patient
        } else {
            Level::Study
        };
        for above in [Level::Patient, Level::Study, Level::Series] {
            if above < top || above >= level {
                continue;
            }
            let key = above.unique_key();
            let single = match identifier.get(key).map(|e| &e.value) {
                Some(Value::Strs(v)) => {
                    v.len() == 1 && !v[0].is_empty() && !v[0].contains(['*', '?'])
                }
                _ => false,
            };
            if !single {
                return Err(Refusal::new(
                    status::IDENTIFIER_DOES_NOT_MATCH,
                    format!(
                        "{} {key} must be one value above the {level:?} level (relational queries not negotiated)",
                        crate::dicom::dataset::keyword(key).unwrap_or("unique key")
                    ),
                    Some(key),
                ));
            }
        }
    }
    // The keys the matcher sees: level and retrieve keys dropped, keys below the level and
    // sequence keys universal.
    let mut keys = Dataset::new();
    let mut optional_unsupported = false;
    for (tag, e) in identifier.iter() {
        if tag == tags::QUERY_RETRIEVE_LEVEL {
            continue;
        }
        // Timezone Offset From UTC qualifies dates and times; it is not a key to match (an
        // SCU that sends it would otherwise miss every object recorded without one).
        let below = tag == tags::TIMEZONE_OFFSET_FROM_UTC
            || (tag != tags::SPECIFIC_CHARACTER_SET && qr::level_of(tag) > level);
        let sequence =
            matches!(&e.value, Value::Items(items) if items.iter().any(|i| !i.is_empty()));
        if sequence {
            optional_unsupported = true;
        }
        if below || sequence {
            keys.put(tag, e.vr, Value::empty_for(e.vr));
        } else {
            keys.put(tag, e.vr, e.value.clone());
        }
    }
    let query = Query::from_dataset(&keys).map_err(|e| Refusal::from(&e))?;
    Ok(Request {
        level,
        identifier,
        query,
        optional_unsupported,
    })
}

/// Runs a C-FIND-RQ (on the query pool): decode, check, search, encode every answer in `ts`.
pub fn find_encoded(
    scp: &QueryScp,
    cmd: &Command,
    identifier: &[u8],
    ts: &str,
    relational: bool,
) -> FindAnswer {
    let sop_class = cmd.affected_sop_class_uid.as_deref().unwrap_or("");
    let ds = match decode_identifier(identifier, ts) {
        Ok(ds) => ds,
        Err(r) => return r.into(),
    };
    let rq = match check(sop_class, ds, relational) {
        Ok(rq) => rq,
        Err(r) => return r.into(),
    };
    let search = qr::Search {
        level: rq.level,
        identifier: &rq.identifier,
        query: &rq.query,
        limit: scp.max_results,
        retrieve_ae_title: &scp.ae_title,
    };
    let found = match qr::find(scp.index.database(), &search) {
        Ok(f) => f,
        Err(e) => {
            return Refusal::new(status::UNABLE_TO_PROCESS, format!("index: {e}"), None).into()
        }
    };
    if found.truncated {
        tracing::warn!(
            max_results = scp.max_results,
            "C-FIND stopped at [query] max_results; the SCU sees the first matches only"
        );
    }
    let mut out = Vec::with_capacity(found.matches.len());
    for ds in &found.matches {
        match write_dataset(&ds.to_dicom(), ts) {
            Ok(b) => out.push(b),
            Err(e) => return Refusal::new(status::UNABLE_TO_PROCESS, e, None).into(),
        }
    }
    if rq.optional_unsupported {
        FindAnswer::MatchesWithStatus(status::PENDING_OPTIONAL_KEYS_UNSUPPORTED, out)
    } else {
        FindAnswer::Matches(out)
    }
}

/// The SCU side (`dicom-gw scu find`): what one C-FIND returned.
#[derive(Debug, Default)]
pub struct FindResult {
    /// The identifiers of the pending responses, decoded (text in Unicode).
    pub matches: Vec<Dataset>,
    /// The final status.
    pub status: u16,
    /// The final response's Error Comment, if any.
    pub error_comment: Option<String>,
}

/// Largest response identifier the SCU accepts.
const MAX_RESPONSE_IDENTIFIER: usize = 4 << 20;

/// Parses a `-k` key as DCMTK's findscu takes it: `TAG[=VALUE]`, the tag as a keyword
/// (`PatientName`), `gggg,eeee` or `(gggg,eeee)`; the VR from the standard dictionary;
/// several values separated by `\`. No value: a return key (zero-length).
pub fn parse_key(arg: &str) -> Result<(Tag, VR, Value), String> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    use dicom_dictionary_std::StandardDataDictionary;
    let (name, value) = match arg.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v)),
        None => (arg.trim(), None),
    };
    let hex = name
        .trim_start_matches('(')
        .trim_end_matches(')')
        .replace(',', "");
    let tag = if hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let n = u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
        Tag((n >> 16) as u16, (n & 0xFFFF) as u16)
    } else {
        StandardDataDictionary
            .by_name(name)
            .map(|e| e.tag_range().inner())
            .ok_or_else(|| format!("unknown attribute {name:?}"))?
    };
    let vr = StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr().relaxed())
        .unwrap_or(VR::LO);
    let value = match value {
        None | Some("") => Value::empty_for(vr),
        Some(v) => match vr {
            VR::US | VR::SS | VR::UL | VR::SL => Value::Ints(
                v.split('\\')
                    .map(|x| {
                        x.trim()
                            .parse()
                            .map_err(|_| format!("{name}: {x:?} is not a number"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            VR::SQ => return Err(format!("{name}: sequence keys are not supported here")),
            _ => Value::Strs(v.split('\\').map(str::to_owned).collect()),
        },
    };
    Ok((tag, vr, value))
}

/// Pending responses [`scu_find`] reads after its C-CANCEL before it gives up on the peer.
const MAX_AFTER_CANCEL: usize = 10_000;

/// How long [`scu_find_until`] waits, once its deadline has passed and its C-CANCEL is out,
/// for the peer's final response before it aborts.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Sends one C-FIND-RQ on `model` with `identifier` and gathers the answers; with
/// `cancel_after = Some(n)`, sends a C-CANCEL-RQ after the n-th pending response and keeps
/// no more than n.
pub fn scu_find(
    params: &crate::net::scu::AssocParams,
    tls: Option<&crate::net::scu::ScuTls>,
    model: &str,
    identifier: &Dataset,
    cancel_after: Option<usize>,
) -> Result<FindResult, crate::net::scu::ScuError> {
    scu_find_until(params, tls, model, identifier, cancel_after, None)
}

/// [`scu_find`] with an overall `deadline` from the call: each step is bounded by the
/// association's timeout, but a peer that keeps sending pending responses slowly would
/// otherwise hold the caller for as long as it likes. The deadline is checked between
/// responses; once it has passed, a C-CANCEL-RQ goes out, what still comes is dropped, and
/// after [`CANCEL_GRACE`] without the final response the association is aborted. Either way
/// the answer is [`ScuError::Deadline`](crate::net::scu::ScuError::Deadline) (the matches so far are not a complete answer).
pub fn scu_find_until(
    params: &crate::net::scu::AssocParams,
    tls: Option<&crate::net::scu::ScuTls>,
    model: &str,
    identifier: &Dataset,
    cancel_after: Option<usize>,
    deadline: Option<Duration>,
) -> Result<FindResult, crate::net::scu::ScuError> {
    use crate::net::dimse::command::{tags as ct, CommandBuilder, CommandField, NO_DATASET};
    use crate::net::scu::{Association, ScuError};
    let started = Instant::now();
    let mut a = Association::open_with_tls(params, tls)?;
    let ctx = a.any_context(model)?.clone();
    let mut id = identifier.clone();
    let ascii = id.iter().all(|(_, e)| match &e.value {
        Value::Strs(v) => v.iter().all(|s| s.is_ascii()),
        _ => true,
    });
    if !ascii && id.get(tags::SPECIFIC_CHARACTER_SET).is_none() {
        id.put_str(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    }
    let bytes = write_dataset(&id.to_dicom(), &ctx.transfer_syntax).map_err(ScuError::Protocol)?;
    let message_id = 1;
    let rq = CommandBuilder::new()
        .uid(ct::AFFECTED_SOP_CLASS_UID, model)
        .us(ct::COMMAND_FIELD, CommandField::CFindRq as u16)
        .us(ct::MESSAGE_ID, message_id)
        .us(ct::PRIORITY, 0)
        .us(ct::COMMAND_DATA_SET_TYPE, 0x0000)
        .build();
    if let Err(e) = a.send(ctx.id, &rq, Some((&bytes, &[]))) {
        a.abort();
        return Err(e);
    }
    let cancel = CommandBuilder::new()
        .us(ct::COMMAND_FIELD, CommandField::CCancelRq as u16)
        .us(ct::MESSAGE_ID_BEING_RESPONDED_TO, message_id)
        .us(ct::COMMAND_DATA_SET_TYPE, NO_DATASET)
        .build();
    let mut out = FindResult::default();
    let mut buf = Vec::new();
    let mut ignored = 0usize;
    let mut cancel_sent = false;
    // When the deadline passed: from then on only the final response is awaited.
    let mut expired: Option<Instant> = None;
    loop {
        if let Some(d) = deadline {
            if expired.is_none() && started.elapsed() >= d {
                tracing::debug!(after = ?d, "C-FIND SCU: deadline passed; sending C-CANCEL");
                if !cancel_sent {
                    if let Err(e) = a.send(ctx.id, &cancel, None) {
                        tracing::debug!(error = %e, "C-FIND SCU: the C-CANCEL could not be sent");
                        a.abort();
                        return Err(ScuError::Deadline(d));
                    }
                    cancel_sent = true;
                }
                expired = Some(Instant::now());
            }
            if let Some(t) = expired {
                let left = CANCEL_GRACE.saturating_sub(t.elapsed());
                if left.is_zero() || a.set_read_timeout(left).is_err() {
                    tracing::debug!("C-FIND SCU: no final response after the C-CANCEL; aborting");
                    a.abort();
                    return Err(ScuError::Deadline(d));
                }
            }
        }
        let msg = match a.receive_with_dataset(message_id, MAX_RESPONSE_IDENTIFIER, &mut buf) {
            Ok(m) => m,
            Err(e) => {
                a.abort();
                return Err(match (deadline, expired) {
                    (Some(d), Some(_)) => ScuError::Deadline(d),
                    _ => e,
                });
            }
        };
        let st = msg.command.status.unwrap_or(0xC000);
        if matches!(st, 0xFF00 | 0xFF01) {
            if expired.is_some() || cancel_after.is_some_and(|n| out.matches.len() >= n) {
                // Cancelled already: what still comes is dropped, and a peer that ignores the
                // C-CANCEL cannot make us keep reading for ever.
                ignored += 1;
                if ignored > MAX_AFTER_CANCEL {
                    a.abort();
                    return Err(ScuError::Protocol(format!(
                        "more than {MAX_AFTER_CANCEL} responses after our C-CANCEL"
                    )));
                }
                continue;
            }
            if msg.command.has_dataset {
                let ds = decode_identifier(&buf, &ctx.transfer_syntax)
                    .map_err(|r| ScuError::Protocol(r.comment))?;
                out.matches.push(ds);
            }
            if cancel_after == Some(out.matches.len()) {
                a.send(ctx.id, &cancel, None)?;
                cancel_sent = true;
            }
            continue;
        }
        out.status = st;
        out.error_comment = msg.error_comment;
        break;
    }
    if let (Some(d), Some(_)) = (deadline, expired) {
        // The peer honoured the C-CANCEL in time: a clean release, but not an answer.
        let _ = a.release();
        return Err(ScuError::Deadline(d));
    }
    a.release()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::json::dataset_from_json;
    use serde_json::json;

    fn id(v: serde_json::Value) -> Dataset {
        dataset_from_json(&v).unwrap()
    }

    #[test]
    fn key_rules() {
        // PATIENT on Study Root: A900.
        let r = check(
            STUDY_ROOT,
            id(json!({"00080052": {"vr": "CS", "Value": ["PATIENT"]}})),
            false,
        )
        .unwrap_err();
        assert_eq!(r.status, 0xA900);
        // SERIES without the Study UID: A900 unless relational.
        let series = json!({"00080052": {"vr": "CS", "Value": ["SERIES"]},
                            "00080060": {"vr": "CS", "Value": ["CT"]}});
        let r = check(STUDY_ROOT, id(series.clone()), false).unwrap_err();
        assert_eq!(r.status, 0xA900);
        assert_eq!(r.offending, Some(tags::STUDY_INSTANCE_UID));
        assert!(check(STUDY_ROOT, id(series.clone()), true).is_ok());
        // Patient Root STUDY needs the Patient ID.
        let study = json!({"00080052": {"vr": "CS", "Value": ["STUDY"]},
                           "0020000D": {"vr": "UI"}});
        assert!(check(PATIENT_ROOT, id(study.clone()), false).is_err());
        assert!(check(STUDY_ROOT, id(study), false).is_ok());
        // No level: A900.
        assert_eq!(
            check(STUDY_ROOT, id(json!({"00100010": {"vr": "PN"}})), false)
                .unwrap_err()
                .status,
            0xA900
        );
        // A sequence key with an item is FF01.
        let seq = json!({"00080052": {"vr": "CS", "Value": ["STUDY"]},
                         "00081032": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["X"]}}]}});
        assert!(
            check(STUDY_ROOT, id(seq), false)
                .unwrap()
                .optional_unsupported
        );
    }

    #[test]
    fn extended_negotiation_accepts_relational_only() {
        assert_eq!(extended_negotiation(&[1, 1, 1]), vec![1, 0, 0]);
        assert_eq!(extended_negotiation(&[0]), vec![0]);
        assert!(relational(Some(&vec![1, 0])));
        assert!(!relational(Some(&vec![0])));
        assert!(!relational(None));
    }
}
