//! Worklist items (`/worklist`) and MPPS instances (`/mpps`).
//!
//! Items go in and come out in the standard DICOM JSON model (PS3.18 Annex F): a RIS can send
//! `POST /worklist` what it already produces, with no private schema in between. A body is
//! validated whole before anything is stored ([`crate::worklist::model::parse_items`]): a
//! 400 names the attribute (keyword, tag, sequence path and, for an array, the index) and
//! also carries it in `error.attribute` / `error.index` for programs. An array is created in
//! one transaction, all or nothing.
//!
//! `POST` creates: an item whose order key (Accession Number, Requested Procedure ID,
//! Scheduled Procedure Step ID) is already stored is a 409, so a client learns it is sending
//! an order twice. Re-importing a whole RIS export, where "already there" is expected, is
//! what `dicom-gw worklist import` is for (it updates by order key).
//!
//! Every change is audited: its entry is written to the audit outbox of `worklist.redb` in the
//! change's own transaction, then moved into the audit log right after (see
//! [`crate::audit::outbox`]), so a crash in between loses nothing.
//!
//! When the process does not run the worklist service (`--only store`) every route here
//! answers 404 saying so, rather than pretending the worklist is empty.

use std::sync::Arc;

use dicom_dictionary_std::tags;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value as Json};

use super::{blocking, drain, paginate, Actor, Params, Query};
use crate::dicom::dataset::{keyword, Value};
use crate::dicom::vr::parse_date;
use crate::http::{json_response, ApiError, Body, Ctx, MAX_BODY};
use crate::worklist::model::{self, ItemError, ItemKey, NewItem, SpsStatus, WorklistItem};
use crate::worklist::mpps::PpsStatus;
use crate::worklist::store::{MppsRecord, WorklistStore, WorklistStoreError};

/// The content types a worklist body may be sent as (parameters such as `charset` aside).
const JSON_TYPES: [&str; 2] = ["application/dicom+json", "application/json"];

/// A worklist item as the API and `dicom-gw worklist list` show it: the store's bookkeeping
/// next to the dataset, which stays pure DICOM JSON.
pub fn item_json(item: &WorklistItem) -> Json {
    json!({
        "id": item.id,
        "status": item.status(),
        "created_at_us": item.created_us,
        "updated_at_us": item.updated_us,
        "dataset": item.to_json(),
    })
}

/// An MPPS instance as the API shows it.
pub fn mpps_json(rec: &MppsRecord) -> Json {
    json!({
        "sop_instance_uid": rec.instance.sop_instance_uid,
        "status": rec.status().as_str(),
        "created_at_us": rec.created_us,
        "updated_at_us": rec.updated_us,
        "linked_items": rec.linked_items,
        "dataset": rec.instance.to_json(),
    })
}

/// Refuses a batch in which two items give the same complete order key: in one transaction
/// the second would silently replace (import) or collide with (create) the first, and
/// either way the sender made a mistake worth naming. Items that leave Requested Procedure
/// ID or Scheduled Procedure Step ID out get their id there, so they cannot collide.
pub fn check_distinct_keys(items: &[NewItem]) -> Result<(), String> {
    let mut seen: std::collections::HashMap<ItemKey, usize> = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let key = ItemKey::of(item.dataset());
        if key.requested_procedure_id.is_empty() || key.scheduled_procedure_step_id.is_empty() {
            continue;
        }
        if let Some(first) = seen.insert(key.clone(), i) {
            return Err(format!(
                "array index {i}: same order key as array index {first} ({key})"
            ));
        }
    }
    Ok(())
}

/// The worklist store, or the 404 of a process that does not run the worklist service.
fn store(ctx: &Ctx<'_>) -> Result<Arc<WorklistStore>, ApiError> {
    ctx.state.worklist.clone().ok_or_else(|| {
        ApiError::not_found(
            "the worklist service does not run in this process (it was started with \
             --only store); use the gateway process that runs the worklist service",
        )
    })
}

/// Maps a store error: unknown id 404, order-key clash or a state that forbids the change
/// 409, the database 500.
fn store_err(e: WorklistStoreError) -> ApiError {
    match e {
        WorklistStoreError::NotFound(_) => ApiError::not_found(e.to_string()),
        WorklistStoreError::DuplicateKey { .. } | WorklistStoreError::CannotCancel { .. } => {
            ApiError::conflict(e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// The 400 for an invalid item document: the message names the attribute (and array index);
/// `error.attribute` and `error.index` repeat them for programs.
fn item_error_response(e: &ItemError) -> Response<Body> {
    let mut body = ApiError::bad_request(format!("request body: {e}")).body();
    if let Some(path) = e.path() {
        let mut attr = json!({ "path": path.to_string() });
        if let Some(tag) = path.tag() {
            attr["tag"] = json!(format!("{:04X}{:04X}", tag.0, tag.1));
            if let Some(k) = keyword(tag) {
                attr["keyword"] = json!(k);
            }
        }
        body["error"]["attribute"] = attr;
    }
    if let Some(i) = e.dataset_index() {
        body["error"]["index"] = json!(i);
    }
    json_response(400, &body)
}

/// The item id in the path: a positive integer.
fn item_id(p: &Params) -> Result<u64, ApiError> {
    let raw = p.get("id");
    raw.parse::<u64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "path parameter id: {raw:?} is not a worklist item id (a positive integer)"
        ))
    })
}

/// Reads a DICOM JSON body: the content type must be JSON (415 otherwise; none given is
/// taken as JSON), at most [`MAX_BODY`] bytes (413), UTF-8.
async fn read_document(req: Request<Incoming>) -> Result<String, ApiError> {
    if let Some(ct) = req.headers().get(hyper::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !JSON_TYPES.iter().any(|t| mime.eq_ignore_ascii_case(t)) {
            return Err(ApiError::new(
                415,
                "unsupported_media_type",
                format!(
                    "Content-Type {ct:?}: worklist items are sent as {}",
                    JSON_TYPES.join(" or ")
                ),
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            413,
            "payload_too_large",
            format!(
                "request body is larger than {MAX_BODY} bytes; import larger worklists with \
                 `dicom-gw worklist import`"
            ),
        )
    };
    // A declared length is checked before reading anything; a chunked body by the limit.
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::bad_request(format!("request body: {e}"))
            }
        })?
        .to_bytes();
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("request body is not UTF-8 text"))
}

/// Whether a document's top level is an array (decides the answer's shape).
fn is_array(text: &str) -> bool {
    text.trim_start().starts_with('[')
}

/// `GET /worklist`: items in id order, filtered by `status`, `modality`, `station_ae`,
/// `date` (the step's start date: `YYYYMMDD` or a range), `patient_id`, `accession_number`.
pub async fn list(req: &Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let mut q = Query::parse(req.uri())?;
    let (offset, limit) = q.page()?;
    let status = q
        .text("status")
        .map(|s| {
            SpsStatus::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "query parameter status: {s:?} is not SCHEDULED, ARRIVED, READY, STARTED, \
                     DEPARTED, COMPLETED, DISCONTINUED or CANCELED"
                ))
            })
        })
        .transpose()?;
    let modality = q.text("modality");
    let station = q.text("station_ae");
    let dates = q.text("date").map(|d| date_range(&d)).transpose()?;
    let patient_id = q.text("patient_id");
    let accession = q.text("accession_number");
    q.finish()?;
    let store = store(ctx)?;
    let all = blocking(move || {
        let matches = |item: &WorklistItem| {
            let ds = &item.dataset;
            let step = model::step(ds);
            let in_step = |tag| step.and_then(|s| s.str(tag));
            let stations = step
                .and_then(|s| s.get(tags::SCHEDULED_STATION_AE_TITLE))
                .map_or(&[][..], |e| match &e.value {
                    Value::Strs(v) => v.as_slice(),
                    _ => &[],
                });
            status.is_none_or(|s| item.status() == s)
                && modality
                    .as_deref()
                    .is_none_or(|m| in_step(tags::MODALITY) == Some(m))
                && station
                    .as_deref()
                    .is_none_or(|a| stations.iter().any(|x| x == a))
                && dates.is_none_or(|(from, to)| {
                    in_step(tags::SCHEDULED_PROCEDURE_STEP_START_DATE)
                        .and_then(parse_date)
                        .is_some_and(|d| from <= d && d <= to)
                })
                && patient_id
                    .as_deref()
                    .is_none_or(|p| ds.str(tags::PATIENT_ID) == Some(p))
                && accession
                    .as_deref()
                    .is_none_or(|a| ds.str(tags::ACCESSION_NUMBER) == Some(a))
        };
        Ok(store
            .list(None, usize::MAX)
            .iter()
            .filter(|item| matches(item))
            .map(|item| item_json(item))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(paginate(all, offset, limit))
}

/// `date`: `YYYYMMDD`, or `FROM-TO` with either end open; inclusive bounds.
fn date_range(v: &str) -> Result<(u32, u32), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "query parameter date: {v:?} is not YYYYMMDD or a range FROM-TO of them \
             (either end may be left open)"
        ))
    };
    let one = |s: &str, open: u32| {
        if s.is_empty() {
            Ok(open)
        } else {
            parse_date(s).ok_or_else(bad)
        }
    };
    match v.split_once('-') {
        None => parse_date(v).map(|d| (d, d)).ok_or_else(bad),
        Some(("", "")) => Err(bad()),
        Some((from, to)) => {
            let (from, to) = (one(from, 0)?, one(to, u32::MAX)?);
            if from > to {
                return Err(ApiError::bad_request(format!(
                    "query parameter date: the range {v:?} ends before it starts"
                )));
            }
            Ok((from, to))
        }
    }
}

/// `POST /worklist`: one DICOM JSON dataset (answer: the item) or an array (answer:
/// `{"items": [...]}`), validated whole, created in one transaction; 201.
pub async fn create(req: Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let store = store(ctx)?;
    let text = read_document(req).await?;
    let items = match model::parse_items(&text) {
        Ok(items) => items,
        Err(e) => return Ok(item_error_response(&e)),
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "request body: the array is empty (send one or more datasets)",
        ));
    }
    check_distinct_keys(&items).map_err(|m| ApiError::bad_request(format!("request body: {m}")))?;
    let (actor, index) = (Actor::of(ctx), ctx.state.index.clone());
    let created = blocking(move || {
        let created = store
            .create_many(items, |tx, created| {
                actor.to_outbox(
                    tx,
                    "worklist.create",
                    json!({ "items": created.iter().map(|i| json!({ "id": i.id, "key": i.key() })).collect::<Vec<_>>() }),
                )
            })
            .map_err(store_err)?;
        drain(&store, index.database())?;
        Ok(created)
    })
    .await?;
    let v = if is_array(&text) {
        json!({ "items": created.iter().map(item_json).collect::<Vec<_>>() })
    } else {
        item_json(&created[0])
    };
    Ok(json_response(201, &v))
}

/// `GET /worklist/{id}`.
pub async fn get(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let id = item_id(p)?;
    let store = store(ctx)?;
    let item = store
        .get(id)
        .ok_or(WorklistStoreError::NotFound(id))
        .map_err(store_err)?;
    Ok(json_response(200, &item_json(&item)))
}

/// `PUT /worklist/{id}`: replaces the item's dataset (validated like a new one; the id stays,
/// and Study Instance UID and status are kept when the new dataset leaves them out).
pub async fn put(
    req: Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let id = item_id(p)?;
    let store = store(ctx)?;
    let text = read_document(req).await?;
    if is_array(&text) {
        return Err(ApiError::bad_request(
            "request body: PUT takes one dataset object, not an array",
        ));
    }
    let item = match model::parse_items(&text) {
        Ok(mut items) if items.len() == 1 => items.remove(0),
        Ok(_) => return Err(ApiError::bad_request("request body: expected one dataset")),
        Err(e) => return Ok(item_error_response(&e)),
    };
    let (actor, index) = (Actor::of(ctx), ctx.state.index.clone());
    let updated = blocking(move || {
        let updated = store
            .update(id, item, |tx, updated| {
                actor.to_outbox(
                    tx,
                    "worklist.update",
                    json!({ "id": id, "key": updated.key() }),
                )
            })
            .map_err(store_err)?;
        drain(&store, index.database())?;
        Ok(updated)
    })
    .await?;
    Ok(json_response(200, &item_json(&updated)))
}

/// `DELETE /worklist/{id}`: answers the item as it was.
pub async fn delete(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let id = item_id(p)?;
    let store = store(ctx)?;
    let (actor, index) = (Actor::of(ctx), ctx.state.index.clone());
    let deleted = blocking(move || {
        let deleted = store
            .delete(id, |tx, deleted| {
                actor.to_outbox(
                    tx,
                    "worklist.delete",
                    json!({ "id": id, "key": deleted.key(), "status": deleted.status() }),
                )
            })
            .map_err(store_err)?;
        drain(&store, index.database())?;
        Ok(deleted)
    })
    .await?;
    Ok(json_response(200, &item_json(&deleted)))
}

/// `POST /worklist/{id}/cancel`: status CANCELED; 409 once a modality started the step or
/// it is over (MPPS then owns the status).
pub async fn cancel(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let id = item_id(p)?;
    let store = store(ctx)?;
    let (actor, index) = (Actor::of(ctx), ctx.state.index.clone());
    let cancelled = blocking(move || {
        let cancelled = store
            .cancel(id, |tx, (cancelled, previous)| {
                actor.to_outbox(
                    tx,
                    "worklist.cancel",
                    json!({ "id": id, "key": cancelled.key(), "previous_status": previous }),
                )
            })
            .map_err(store_err)?;
        drain(&store, index.database())?;
        Ok(cancelled)
    })
    .await?;
    Ok(json_response(200, &item_json(&cancelled)))
}

/// `GET /mpps`: MPPS instances in SOP Instance UID order, optionally by `status`
/// (`IN PROGRESS`, `COMPLETED`, `DISCONTINUED`; `IN_PROGRESS` is taken too).
pub async fn list_mpps(req: &Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let mut q = Query::parse(req.uri())?;
    let (offset, limit) = q.page()?;
    let status = q
        .text("status")
        .map(|s| {
            PpsStatus::parse(&s.to_ascii_uppercase().replace('_', " ")).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "query parameter status: {s:?} is not IN PROGRESS, COMPLETED or DISCONTINUED"
                ))
            })
        })
        .transpose()?;
    q.finish()?;
    let store = store(ctx)?;
    let all = blocking(move || {
        let records = store
            .mpps_list(None, usize::MAX)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(records
            .iter()
            .filter(|r| status.is_none_or(|s| r.status() == s))
            .map(mpps_json)
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(paginate(all, offset, limit))
}

/// `GET /mpps/{uid}` (the UID is checked first: 400 if it is not one).
pub async fn get_mpps(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let raw = p.get("uid");
    let uid = crate::dicom::uid::validate_uid(raw)
        .map_err(|e| ApiError::bad_request(format!("path parameter uid: {raw:?}: {e}")))?
        .to_owned();
    let store = store(ctx)?;
    let rec = blocking(move || {
        store
            .mpps_get(&uid)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| ApiError::not_found(format!("no MPPS instance {uid}")))
    })
    .await?;
    Ok(json_response(200, &mpps_json(&rec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(acc: &str, rp: Option<&str>, sps: Option<&str>) -> Json {
        let mut step = json!({
            "00080060": {"vr": "CS", "Value": ["CT"]},
            "00400001": {"vr": "AE", "Value": ["CT1"]},
            "00400002": {"vr": "DA", "Value": ["20260115"]}
        });
        if let Some(s) = sps {
            step["00400009"] = json!({"vr": "SH", "Value": [s]});
        }
        let mut d = json!({
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00100020": {"vr": "LO", "Value": ["P1"]},
            "00080050": {"vr": "SH", "Value": [acc]},
            "00400100": {"vr": "SQ", "Value": [step]}
        });
        if let Some(r) = rp {
            d["00401001"] = json!({"vr": "SH", "Value": [r]});
        }
        d
    }

    #[test]
    fn batch_keys_must_differ_when_complete() {
        let parse = |v: Json| model::parse_items(&v.to_string()).unwrap();
        let ok = parse(json!([
            doc("A", Some("R"), Some("S1")),
            doc("A", Some("R"), Some("S2")),
            doc("A", None, None),
            doc("A", None, None),
            doc("A", Some("R"), None),
            doc("A", Some("R"), None),
        ]));
        check_distinct_keys(&ok).unwrap();
        let bad = parse(json!([
            doc("A", Some("R"), Some("S1")),
            doc("B", Some("R"), Some("S1")),
            doc("A", Some("R"), Some("S1")),
        ]));
        let e = check_distinct_keys(&bad).unwrap_err();
        assert!(
            e.starts_with("array index 2: same order key as array index 0"),
            "{e}"
        );
    }

    #[test]
    fn date_filters() {
        assert_eq!(date_range("20260115").unwrap(), (20260115, 20260115));
        assert_eq!(date_range("20260115-").unwrap(), (20260115, u32::MAX));
        assert_eq!(date_range("-20260115").unwrap(), (0, 20260115));
        assert_eq!(
            date_range("20260101-20260131").unwrap(),
            (20260101, 20260131)
        );
        for bad in [
            "-",
            "2026",
            "20260230",
            "20260131-20260101",
            "x-y",
            "20260101--",
        ] {
            let e = date_range(bad).unwrap_err();
            assert!(e.status == 400 && e.message.contains("date"), "{bad}: {e}");
        }
    }

    #[test]
    fn item_errors_carry_the_attribute_and_index() {
        let mut d = doc("A", None, None);
        d["00400100"]["Value"][0]
            .as_object_mut()
            .unwrap()
            .remove("00080060");
        let e = model::parse_items(&json!([doc("A", None, None), d]).to_string()).unwrap_err();
        let resp = item_error_response(&e);
        assert_eq!(resp.status(), 400);
        let msg = e.to_string();
        assert!(
            msg.contains("array index 1") && msg.contains("Modality (0008,0060)"),
            "{msg}"
        );
    }
}
