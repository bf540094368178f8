//! The admin API's retrieve side (issue 13, item 6): move a study to a destination through the
//! forwarding queue, and ask a configured remote AE what it holds (C-FIND SCU).
//!
//! A move is not a C-MOVE: the objects are already here, so each instance gets a forward job
//! and the forwarder delivers it with its retries, dead letters and metrics; the answer comes
//! once the jobs are durable (202), not once they are delivered. The remote query is a real
//! C-FIND on an association of its own, opened on the blocking pool (never on the API thread)
//! and bounded in time, since a silent peer must not hold an API request for long.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{blocking, index_err, read_body, Actor, Params, Query};
use crate::config::Destination;
use crate::dicom::dataset::Dataset;
use crate::http::{json_response, ApiError, Body, Ctx};
use crate::net::scu::{AssocParams, ScuError, ScuTls};
use crate::net::services::query_retrieve_find as qr;

/// Body of `POST /studies/{study_uid}/move`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    destination: String,
}

/// `POST /studies/{study_uid}/move`: every indexed instance of the study gets a forward job
/// to `destination` ([`crate::queue::Queue::enqueue_study`]: no job is doubled), audited as
/// `study.move` in the same transaction. 202 with how many jobs were queued.
pub async fn move_study(
    req: Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let study = crate::dicom::uid::validate_uid(p.get("study_uid"))
        .map_err(|e| ApiError::bad_request(format!("path parameter study_uid: {e}")))?
        .to_owned();
    let body: MoveBody = read_body(req).await?;
    let forwarder = ctx.state.forwarder.clone();
    if forwarder.destination(&body.destination).is_none() {
        return Err(ApiError::not_found(format!(
            "no destination {:?} (configured: {})",
            body.destination,
            forwarder.names().join(", ")
        )));
    }
    let (queue, actor) = (ctx.state.queue.clone(), Actor::of(ctx));
    let dest = body.destination.clone();
    let done = blocking(move || {
        let details = |n: &crate::queue::StudyEnqueued| {
            json!({ "study": study, "destination": dest, "queued": n.queued,
                    "already_queued": n.already_queued })
        };
        let r = queue
            .enqueue_study(&dest, &study, crate::clock::timestamp_us(), |tx, n| {
                actor.audit(tx, "study.move", details(n))
            })
            .map_err(|e| match e {
                crate::queue::QueueError::Index(e) => index_err(e),
                other => ApiError::internal(format!("queue: {other}")),
            })?;
        let Some(n) = r else {
            return Err(ApiError::not_found(format!("no study {study}")));
        };
        tracing::info!(study = %study, destination = %dest, queued = n.queued,
            already_queued = n.already_queued, actor = %actor.name, "study move queued");
        Ok((study, n))
    })
    .await?;
    if done.1.queued > 0 {
        forwarder.wake(&body.destination);
    }
    Ok(json_response(
        202,
        &json!({
            "study": done.0,
            "destination": body.destination,
            "queued": done.1.queued,
            "already_queued": done.1.already_queued,
        }),
    ))
}

/// Most matches one remote query returns: after this many the C-FIND is cancelled
/// (C-CANCEL, the peer answers FE00) and the answer says `"truncated": true`. A remote
/// archive may hold millions of studies and an API answer is held in memory.
pub const MAX_REMOTE_MATCHES: usize = 1000;

/// Longest one step (connect, each response) of a remote query may take, whatever the
/// destination's `dimse_timeout`: the whole exchange must fit in the API's request timeout.
pub const REMOTE_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the whole remote query may take before the API answers 502 (below the API's
/// 30 s request timeout, so the caller gets our reason rather than a bare 408).
pub const REMOTE_QUERY_TIMEOUT: Duration = Duration::from_secs(25);

/// Body of `POST /destinations/{name}/query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    /// Query/Retrieve Level: PATIENT, STUDY (default), SERIES or IMAGE.
    #[serde(default)]
    level: Option<String>,
    /// `study-root` (default) or `patient-root`.
    #[serde(default)]
    model: Option<String>,
    /// Keyword (or `ggggeeee`) → value: a string (matching value; `""` a return key), `null`
    /// (return key), a number, or an array of strings (several values).
    #[serde(default)]
    keys: Map<String, Value>,
}

/// The identifier of a remote query: level, keys. A 400 naming the key at fault otherwise.
fn identifier(level: &str, keys: &Map<String, Value>) -> Result<Dataset, ApiError> {
    use dicom_dictionary_std::tags;
    let mut id = Dataset::new();
    for (name, v) in keys {
        let text = match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(ApiError::bad_request(format!(
                        "keys.{name}: values must be strings or numbers"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join("\\"),
            Value::Bool(_) | Value::Object(_) => {
                return Err(ApiError::bad_request(format!(
                    "keys.{name}: a string, a number, an array of them or null"
                )))
            }
        };
        if name.contains('=') {
            return Err(ApiError::bad_request(format!(
                "keys.{name}: not an attribute keyword"
            )));
        }
        let (tag, vr, value) = qr::parse_key(&format!("{name}={text}"))
            .map_err(|e| ApiError::bad_request(format!("keys.{name}: {e}")))?;
        if tag == tags::QUERY_RETRIEVE_LEVEL {
            return Err(ApiError::bad_request(format!(
                "keys.{name}: give the level in \"level\""
            )));
        }
        if tag.group() < 0x0008 {
            return Err(ApiError::bad_request(format!(
                "keys.{name}: command and file meta attributes cannot be keys"
            )));
        }
        id.put(tag, vr, value);
    }
    id.put_str(tags::QUERY_RETRIEVE_LEVEL, dicom_core::VR::CS, level);
    Ok(id)
}

/// The association parameters (and TLS) towards a destination, with the step timeout capped
/// at [`REMOTE_STEP_TIMEOUT`].
fn params_for(d: &Destination, model: &str) -> Result<(AssocParams, Option<ScuTls>), ScuError> {
    use dicom_dictionary_std::uids::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
    let (mut params, tls) = crate::net::scu::destination_params(
        d,
        d.calling_ae_title.clone(),
        vec![(
            model.to_owned(),
            vec![
                EXPLICIT_VR_LITTLE_ENDIAN.to_owned(),
                IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
            ],
        )],
    )?;
    params.timeout = d.dimse_timeout.min(REMOTE_STEP_TIMEOUT);
    params.connect_timeout = Some(d.connect_timeout.min(REMOTE_STEP_TIMEOUT));
    Ok((params, tls))
}

/// A 502: the remote AE failed us (it refused, aborted, timed out or answered a failure).
fn bad_gateway(message: impl Into<String>) -> ApiError {
    ApiError::new(502, "bad_gateway", message)
}

/// `POST /destinations/{name}/query`: a C-FIND on the destination (PS3.4 C.4.1) with the
/// body's level, information model and keys; 200 with the final status and the matches as
/// DICOM JSON. A refused or failed association, a timeout or a failure status is a 502
/// naming the reason.
pub async fn query(
    req: Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let name = p.get("name").to_owned();
    let body: QueryBody = read_body(req).await?;
    let model = match body.model.as_deref().unwrap_or("study-root") {
        "study-root" => qr::STUDY_ROOT,
        "patient-root" => qr::PATIENT_ROOT,
        other => {
            return Err(ApiError::bad_request(format!(
                "field model: {other:?} is neither \"study-root\" nor \"patient-root\""
            )))
        }
    };
    let level = body
        .level
        .as_deref()
        .unwrap_or("STUDY")
        .to_ascii_uppercase();
    let levels: &[&str] = if model == qr::PATIENT_ROOT {
        &["PATIENT", "STUDY", "SERIES", "IMAGE"]
    } else {
        &["STUDY", "SERIES", "IMAGE"]
    };
    if !levels.contains(&level.as_str()) {
        return Err(ApiError::bad_request(format!(
            "field level: {level:?} is not a level of this model (one of {})",
            levels.join(", ")
        )));
    }
    let id = identifier(&level, &body.keys)?;
    let Some(d) = ctx
        .state
        .live
        .destinations()
        .into_iter()
        .find(|d| d.name == name)
    else {
        return Err(ApiError::not_found(format!("no destination {name:?}")));
    };
    let peer = format!("{} at {}:{}", d.ae_title, d.host, d.port);
    let actor = ctx.principal.name.clone();
    let task = tokio::task::spawn_blocking(move || {
        let (params, tls) = params_for(&d, model)?;
        // The same bound on the blocking call: it stops (C-CANCEL, then abort) instead of
        // reading a slow peer's answers after the API has given up on them.
        qr::scu_find_until(
            &params,
            tls.as_ref(),
            model,
            &id,
            Some(MAX_REMOTE_MATCHES),
            Some(REMOTE_QUERY_TIMEOUT),
        )
    });
    let found = match tokio::time::timeout(REMOTE_QUERY_TIMEOUT, task).await {
        Err(_) => {
            // The blocking task ends by itself: it has the same deadline.
            tracing::warn!(destination = %name, %peer, "remote C-FIND timed out");
            return Err(bad_gateway(format!(
                "{name} ({peer}) did not finish the C-FIND within {} s",
                REMOTE_QUERY_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(ApiError::internal(format!("worker task failed: {e}"))),
        Ok(Ok(Err(e))) => {
            tracing::warn!(destination = %name, %peer, error = %e, "remote C-FIND failed");
            return Err(bad_gateway(format!("C-FIND to {name} ({peer}): {e}")));
        }
        Ok(Ok(Ok(f))) => f,
    };
    let truncated = found.status == 0xFE00 && found.matches.len() >= MAX_REMOTE_MATCHES;
    tracing::info!(destination = %name, %peer, %actor, level = %level,
        status = format_args!("{:04X}", found.status), matches = found.matches.len(),
        truncated, "remote C-FIND from the API");
    if !(found.status == 0x0000 || truncated) {
        return Err(bad_gateway(format!(
            "{name} ({peer}) answered the C-FIND with status {:04X}{}",
            found.status,
            found
                .error_comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        )));
    }
    let matches: Vec<Value> = found
        .matches
        .iter()
        .map(crate::dicom::json::dataset_to_json)
        .collect();
    Ok(json_response(
        200,
        &json!({
            "destination": name,
            "status": format!("{:04X}", found.status),
            "truncated": truncated,
            "matches": matches,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

    fn keys(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn identifier_from_json_keys() {
        let id = identifier(
            "STUDY",
            &keys(
                json!({"PatientName": "Doe*", "StudyDate": "", "StudyInstanceUID": null,
                         "ModalitiesInStudy": ["CT", "MR"], "00100020": "PID-1"}),
            ),
        )
        .unwrap();
        assert_eq!(id.str(tags::QUERY_RETRIEVE_LEVEL), Some("STUDY"));
        assert_eq!(id.str(tags::PATIENT_NAME), Some("Doe*"));
        assert_eq!(id.str(tags::PATIENT_ID), Some("PID-1"));
        assert!(id.get(tags::STUDY_DATE).unwrap().value.is_empty());
        assert!(id.get(tags::STUDY_INSTANCE_UID).unwrap().value.is_empty());
        assert_eq!(
            id.get(tags::MODALITIES_IN_STUDY).unwrap().value,
            crate::dicom::dataset::Value::Strs(vec!["CT".into(), "MR".into()])
        );
        for (bad, says) in [
            (json!({"NoSuchKeyword": "x"}), "NoSuchKeyword"),
            (json!({"PatientName": {"x": 1}}), "PatientName"),
            (json!({"PatientName": true}), "PatientName"),
            (json!({"QueryRetrieveLevel": "SERIES"}), "level"),
            (json!({"00020010": ""}), "meta"),
            (json!({"PatientName=x": ""}), "keyword"),
            (json!({"ReferencedStudySequence": "x"}), "sequence"),
        ] {
            let e = identifier("STUDY", &keys(bad.clone())).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }
}
