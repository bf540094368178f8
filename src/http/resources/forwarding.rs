//! Destinations, routes, the forwarding queue and gateway statistics.
//!
//! Queue actions go through [`Ops`], the same code the `dicom-gw queue` command line uses;
//! configuration changes go through [`LiveConfig`], which validates exactly like the config
//! file, persists and applies at once. Everything that changes state is audited, in the
//! transaction that stores the change (both or neither).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    blocking, from_value, index_err, page_response, paginate, read_body, read_value, Actor, Params,
    Query,
};
use crate::config::{Destination, RawDestination, RawRoute};
use crate::control::{self, OpError, Ops, Request as OpRequest};
use crate::http::{json_response, ApiError, Body, Ctx};
use crate::queue::forwarder::Shared;
use crate::queue::live::{LiveConfig, LiveError};
use crate::queue::{DestinationStats, JobState};

/// Maps a queue operation's error. The handlers validate their input first (400 naming the
/// field), so a usage error left is the queue not finding what was named (a destination, a
/// dead job): `usage_status` says how to answer it (404 for a resource named in the path or
/// body, 400 for a query filter).
fn op_err(e: OpError, usage_status: u16) -> ApiError {
    match e {
        OpError::Usage(m) if usage_status == 404 => ApiError::not_found(m),
        OpError::Usage(m) => ApiError::bad_request(m),
        other => ApiError::internal(format!("queue: {other}")),
    }
}

fn live_err(e: LiveError) -> ApiError {
    match e {
        LiveError::Invalid { field, message } => {
            ApiError::bad_request(format!("{field}: {message}"))
        }
        LiveError::NotFound(m) => ApiError::not_found(m),
        LiveError::Conflict(m) => ApiError::conflict(m),
        other => ApiError::internal(other.to_string()),
    }
}

fn to_json(v: impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))
}

/// The queue's counts per destination.
fn counts(ops: &Ops) -> Result<BTreeMap<String, DestinationStats>, ApiError> {
    ops.execute(&OpRequest::Stats)
        .map_err(|e| op_err(e, 500))?
        .into_iter()
        .map(|v| {
            serde_json::from_value::<DestinationStats>(v)
                .map(|s| (s.destination.clone(), s))
                .map_err(|e| ApiError::internal(format!("queue stats: {e}")))
        })
        .collect()
}

fn queue_json(s: &DestinationStats) -> Value {
    json!({
        "pending": s.pending,
        "retry": s.retry,
        "in_flight": s.in_flight,
        "dead": s.dead,
        "done": s.done,
    })
}

/// A destination as the API shows it: its settings (the config file's keys), whether it is
/// paused, its queue counts and the associations opened to it since start.
fn destination_json(
    d: &Destination,
    forwarder: &Shared,
    counts: &BTreeMap<String, DestinationStats>,
) -> Result<Value, ApiError> {
    let mut v = to_json(RawDestination::from(d))?;
    let Value::Object(m) = &mut v else {
        return Err(ApiError::internal(
            "a destination does not encode as an object",
        ));
    };
    m.retain(|_, x| !x.is_null());
    let state = forwarder.destination(&d.name);
    let stats = counts.get(&d.name).cloned().unwrap_or_default();
    let paused = state.as_ref().map_or(stats.paused, |s| s.is_paused());
    m.insert("paused".into(), Value::Bool(paused));
    m.insert(
        "associations_opened".into(),
        json!(state.map_or(0, |s| s.associations_opened.load(Ordering::Relaxed))),
    );
    m.insert("queue".into(), queue_json(&stats));
    Ok(v)
}

/// What the handlers below need, owned (for the blocking pool).
#[derive(Clone)]
struct Fwd {
    live: Arc<LiveConfig>,
    ops: Arc<Ops>,
    forwarder: Arc<Shared>,
    index: Arc<crate::store::index::Index>,
}

impl Fwd {
    fn of(ctx: &Ctx<'_>) -> Self {
        Self {
            live: ctx.state.live.clone(),
            ops: ctx.state.ops.clone(),
            forwarder: ctx.state.forwarder.clone(),
            index: ctx.state.index.clone(),
        }
    }

    fn destination(&self, name: &str) -> Result<Value, ApiError> {
        let d = self
            .live
            .destinations()
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no destination {name:?}")))?;
        destination_json(&d, &self.forwarder, &counts(&self.ops)?)
    }

    fn require_destination(&self, name: &str) -> Result<(), ApiError> {
        if self.forwarder.destination(name).is_some() {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "no destination {name:?} (configured: {})",
                self.forwarder.names().join(", ")
            )))
        }
    }
}

/// `GET /destinations`.
pub async fn list_destinations(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    let (offset, limit) = Query::page_only(req.uri())?;
    let f = Fwd::of(ctx);
    let all = blocking(move || {
        let c = counts(&f.ops)?;
        f.live
            .destinations()
            .iter()
            .map(|d| destination_json(d, &f.forwarder, &c))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(paginate(all, offset, limit))
}

/// `GET /destinations/{name}`.
pub async fn get_destination(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let f = Fwd::of(ctx);
    let name = p.get("name").to_owned();
    let v = blocking(move || f.destination(&name)).await?;
    Ok(json_response(200, &v))
}

/// `POST /destinations`: adds a destination (409 if the name is taken).
pub async fn create_destination(
    req: Request<Incoming>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let raw: RawDestination = read_body(req).await?;
    if raw.name.is_none() {
        return Err(ApiError::bad_request("name: is required"));
    }
    let (f, actor) = (Fwd::of(ctx), Actor::of(ctx));
    let v = blocking(move || {
        let dest = f
            .live
            .create_destination(raw, |tx, dest| {
                actor.audit(
                    tx,
                    "destination.create",
                    json!({ "destination": RawDestination::from(dest) }),
                )
            })
            .map_err(live_err)?;
        f.destination(&dest.name)
    })
    .await?;
    Ok(json_response(201, &v))
}

/// `PUT /destinations/{name}`: adds or replaces a destination (201 / 200).
pub async fn put_destination(
    req: Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let raw: RawDestination = read_body(req).await?;
    let (f, actor) = (Fwd::of(ctx), Actor::of(ctx));
    let name = p.get("name").to_owned();
    let (v, existed) = blocking(move || {
        let (dest, existed) = f
            .live
            .upsert_destination(raw, Some(&name), |tx, (dest, existed)| {
                actor.audit(
                    tx,
                    if *existed {
                        "destination.update"
                    } else {
                        "destination.create"
                    },
                    json!({ "destination": RawDestination::from(dest) }),
                )
            })
            .map_err(live_err)?;
        Ok((f.destination(&dest.name)?, existed))
    })
    .await?;
    Ok(json_response(if existed { 200 } else { 201 }, &v))
}

/// `DELETE /destinations/{name}` (409 while a route uses it).
pub async fn delete_destination(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let (f, actor) = (Fwd::of(ctx), Actor::of(ctx));
    let name = p.get("name").to_owned();
    let v = blocking(move || {
        f.live
            .remove_destination(&name, |tx, _| {
                actor.audit(tx, "destination.delete", json!({ "destination": name }))
            })
            .map_err(live_err)?;
        Ok(json!({ "removed": name }))
    })
    .await?;
    Ok(json_response(200, &v))
}

/// `POST /destinations/{name}/pause` and `/resume` (persisted; take effect at once).
///
/// Queue actions are audited by [`Ops::execute_as`] itself (as for the CLI), with the same
/// action names (`queue.pause`, `queue.retry`, ...).
pub async fn pause(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
    paused: bool,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let (f, actor) = (Fwd::of(ctx), Actor::of(ctx));
    let name = p.get("name").to_owned();
    let v = blocking(move || {
        f.require_destination(&name)?;
        let op = if paused {
            OpRequest::Pause {
                destination: name.clone(),
            }
        } else {
            OpRequest::Resume {
                destination: name.clone(),
            }
        };
        let out = f
            .ops
            .execute_as(&op, &actor.name, &actor.source)
            .map_err(|e| op_err(e, 404))?;
        Ok(out
            .into_iter()
            .next()
            .unwrap_or_else(|| json!({ "destination": name, "paused": paused })))
    })
    .await?;
    Ok(json_response(200, &v))
}

/// `GET /routes`: the routing table in force, in order.
pub async fn list_routes(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    let (offset, limit) = Query::page_only(req.uri())?;
    let routes: Vec<RawRoute> = ctx.state.live.routes().iter().map(RawRoute::from).collect();
    Ok(paginate(routes, offset, limit))
}

/// `PUT /routes`: replaces the routing table. The body is the list of routes (as in the
/// config file's `[[routes]]`), or `{"routes": [...]}`.
pub async fn put_routes(req: Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let body = read_value(req).await?;
    let list = match body {
        Value::Array(a) => a,
        Value::Object(mut m) if m.len() == 1 && m.contains_key("routes") => {
            match m.remove("routes") {
                Some(Value::Array(a)) => a,
                _ => return Err(ApiError::bad_request("routes: must be a list of routes")),
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "request body: must be a list of routes, or {\"routes\": [...]}",
            ))
        }
    };
    let raws = list
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            from_value::<RawRoute>(&v)
                .map_err(|m| ApiError::bad_request(format!("routes[{i}]: {m}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (f, actor) = (Fwd::of(ctx), Actor::of(ctx));
    let routes = blocking(move || {
        let routes = f
            .live
            .set_routes(raws, |tx, routes| {
                let shown: Vec<RawRoute> = routes.iter().map(RawRoute::from).collect();
                actor.audit(tx, "routes.replace", json!({ "routes": shown }))
            })
            .map_err(|e| match e {
                LiveError::Invalid { field, message } => {
                    ApiError::bad_request(format!("routes{field}: {message}"))
                }
                other => live_err(other),
            })?;
        Ok(routes.iter().map(RawRoute::from).collect::<Vec<_>>())
    })
    .await?;
    let n = routes.len();
    Ok(page_response(&routes, n as u64, 0, n))
}

/// `GET /queue`: job counts per destination, and their totals.
pub async fn queue_stats(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    let (offset, limit) = Query::page_only(req.uri())?;
    let f = Fwd::of(ctx);
    let all = blocking(move || counts(&f.ops)).await?;
    let totals = totals(all.values());
    let total = all.len() as u64;
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    let items: Vec<&DestinationStats> = all.values().skip(skip).take(limit).collect();
    Ok(json_response(
        200,
        &json!({ "items": items, "total": total, "offset": offset, "limit": limit, "totals": totals }),
    ))
}

fn totals<'a>(all: impl Iterator<Item = &'a DestinationStats>) -> Value {
    let mut t = DestinationStats::default();
    for s in all {
        t.pending += s.pending;
        t.retry += s.retry;
        t.in_flight += s.in_flight;
        t.dead += s.dead;
        t.done += s.done;
    }
    queue_json(&t)
}

/// `GET /queue/jobs?destination=&state=&offset=&limit=`: jobs (waiting ones in due order,
/// the others by id); `total` is from the queue's counters.
pub async fn list_jobs(req: &Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let mut q = Query::parse(req.uri())?;
    let destination = q.text("destination");
    let state = q
        .text("state")
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|e| ApiError::bad_request(format!("query parameter state: {e}")))
        })
        .transpose()?;
    let (offset, limit) = q.page()?;
    q.finish()?;
    let f = Fwd::of(ctx);
    let (jobs, total) = blocking(move || {
        let want = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .saturating_add(limit)
            .min(control::MAX_LIST);
        let jobs = f
            .ops
            .execute(&OpRequest::List {
                destination: destination.clone(),
                state,
                limit: want,
            })
            .map_err(|e| match e {
                OpError::Usage(m) => {
                    ApiError::bad_request(format!("query parameter destination: {m}"))
                }
                other => op_err(other, 500),
            })?;
        let c = counts(&f.ops)?;
        let total: u64 = c
            .values()
            .filter(|s| destination.as_ref().is_none_or(|d| *d == s.destination))
            .map(|s| match state {
                None => s.pending + s.retry + s.in_flight + s.dead,
                Some(JobState::Pending) => s.pending,
                Some(JobState::Retry) => s.retry,
                Some(JobState::InFlight) => s.in_flight,
                Some(JobState::Dead) => s.dead,
            })
            .sum();
        Ok((jobs, total))
    })
    .await?;
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    let items: Vec<Value> = jobs.into_iter().skip(skip).take(limit).collect();
    Ok(page_response(&items, total, offset, limit))
}

/// Body of `POST /queue/retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    destination: String,
    job: Option<u64>,
}

/// `POST /queue/retry`: dead letters of a destination (all, or `job`) back to pending.
pub async fn retry(req: Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let body: RetryBody = read_body(req).await?;
    let (f, actor) = (Fwd::of(ctx), Actor::of(ctx));
    let v = blocking(move || {
        f.require_destination(&body.destination)?;
        let out = f
            .ops
            .execute_as(
                &OpRequest::Retry {
                    destination: body.destination.clone(),
                    job: body.job,
                },
                &actor.name,
                &actor.source,
            )
            .map_err(|e| op_err(e, 404))?;
        let v = out.into_iter().next().unwrap_or_else(|| json!({}));
        Ok(v)
    })
    .await?;
    Ok(json_response(200, &v))
}

/// Body of `POST /queue/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    destination: String,
    study: String,
}

/// `POST /queue/replay`: queue every stored instance of a study for a destination again.
pub async fn replay(req: Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let body: ReplayBody = read_body(req).await?;
    let study = crate::dicom::uid::validate_uid(&body.study)
        .map_err(|e| ApiError::bad_request(format!("study: {e}")))?
        .to_owned();
    let (f, actor) = (Fwd::of(ctx), Actor::of(ctx));
    let v = blocking(move || {
        f.require_destination(&body.destination)?;
        if f.index.study(&study).map_err(index_err)?.is_none() {
            return Err(ApiError::not_found(format!("no study {study}")));
        }
        let out = f
            .ops
            .execute_as(
                &OpRequest::Replay {
                    destination: body.destination.clone(),
                    study: study.clone(),
                },
                &actor.name,
                &actor.source,
            )
            .map_err(|e| op_err(e, 404))?;
        let v = out.into_iter().next().unwrap_or_else(|| json!({}));
        Ok(v)
    })
    .await?;
    Ok(json_response(200, &v))
}

/// `GET /stats`: what the gateway holds and does.
pub async fn stats(req: &Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let s = ctx.state;
    let f = Fwd::of(ctx);
    let (index, queue) = blocking(move || {
        let index = f.index.counts().map_err(index_err)?;
        let c = counts(&f.ops)?;
        let mut q = totals(c.values());
        if let Value::Object(m) = &mut q {
            m.insert("destinations".into(), json!(c.len()));
            m.insert(
                "paused".into(),
                json!(c.values().filter(|s| s.paused).count()),
            );
        }
        Ok((index, q))
    })
    .await?;
    let now = crate::clock::timestamp_us();
    let mut disk = Map::new();
    match s.disk.used_percent() {
        Ok(p) => {
            disk.insert("used_percent".into(), json!((p * 10.0).round() / 10.0));
        }
        Err(e) => {
            disk.insert("error".into(), json!(e.to_string()));
        }
    }
    disk.insert("accepting".into(), json!(s.disk.check().is_ok()));
    disk.insert(
        "high_water_percent".into(),
        json!(s.disk.high_water_percent()),
    );
    Ok(json_response(
        200,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at_us": s.started_at_us,
            "uptime_seconds": now.saturating_sub(s.started_at_us) / 1_000_000,
            "io_backend": s.io_backend,
            "cores": s.cores,
            "cores_listening": s.cores_listening.load(Ordering::Acquire),
            "associations_active": s.associations_active.load(Ordering::Acquire),
            "since_start": crate::metrics::global().totals(),
            "index": index,
            "queue": queue,
            "disk": disk,
        }),
    ))
}

/// Body of the answer of `POST /destinations/{name}/echo`.
#[derive(Debug, serde::Serialize)]
struct EchoOutcome {
    ok: bool,
    /// Status (0000,0900) of the C-ECHO-RSP, as 4 hex digits, when one came.
    status: Option<String>,
    /// Why it failed (connect, rejection, abort, status), for a human.
    error: Option<String>,
    elapsed_ms: u64,
}

/// Opens an association to `d` proposing Verification, sends one C-ECHO-RQ, waits for its
/// response and releases: the same path (address, AE titles, timeouts, TLS) a forwarding
/// worker takes, so a success here means the destination would take an association from us.
fn echo_destination(d: &Destination) -> EchoOutcome {
    use crate::net::dimse::command::encode_echo_rq;
    use crate::net::scu::{link_to, Association, ScuError};
    use dicom_dictionary_std::uids::{IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION};
    let start = std::time::Instant::now();
    let run = || -> Result<u16, ScuError> {
        let mut a = link_to(
            d,
            d.calling_ae_title.clone(),
            vec![(
                VERIFICATION.to_owned(),
                vec![IMPLICIT_VR_LITTLE_ENDIAN.to_owned()],
            )],
            &[],
        )?;
        let exchange = |a: &mut Association| -> Result<u16, ScuError> {
            let pc = a.context(VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN)?;
            a.send(pc, &encode_echo_rq(1), None)?;
            let rsp = a.receive(1)?;
            rsp.command
                .status
                .ok_or_else(|| ScuError::Protocol("C-ECHO-RSP without a status".into()))
        };
        match exchange(&mut a) {
            Ok(status) => {
                a.release()?;
                Ok(status)
            }
            Err(e) => {
                a.abort();
                Err(e)
            }
        }
    };
    let result = run();
    let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(status) => EchoOutcome {
            ok: status == 0,
            status: Some(format!("{status:04X}")),
            error: (status != 0).then(|| format!("C-ECHO answered status {status:04X}")),
            elapsed_ms,
        },
        Err(e) => EchoOutcome {
            ok: false,
            status: None,
            error: Some(e.to_string()),
            elapsed_ms,
        },
    }
}

/// `POST /destinations/{name}/echo`: a C-ECHO to the destination (Verification, PS3.4
/// Annex A). The answer is 200 whatever the peer did; `ok` says whether it answered success.
pub async fn echo(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let f = Fwd::of(ctx);
    let name = p.get("name").to_owned();
    let out = blocking(move || {
        let d = f
            .live
            .destinations()
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no destination {name:?}")))?;
        let out = echo_destination(&d);
        tracing::info!(destination = %d.name, ok = out.ok, elapsed_ms = out.elapsed_ms,
            error = out.error.as_deref().unwrap_or(""), "C-ECHO test from the API");
        Ok(out)
    })
    .await?;
    Ok(json_response(200, &to_json(out)?))
}
