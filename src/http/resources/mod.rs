//! The `/api/v1` JSON resources.
//!
//! One table, [`ROUTES`], lists every path template with its methods and the role each needs;
//! the dispatcher matches a request against it (unknown path → 404, known path with another
//! method → 405 naming the allowed ones in `Allow`, role too low → 403) before any handler
//! runs, so a handler only ever sees requests its role check has passed. The same table is
//! checked against `docs/openapi.json` by a unit test, so the document cannot drift from the
//! code. Handlers are grouped by subject: `studies` (the index and downloads),
//! `forwarding` (destinations, routes, queue, stats), `worklist` (worklist items and MPPS)
//! and `admin` (tokens, users, audit log, login).
//!
//! Conventions: lists are paginated with `?offset=&limit=` (default 100, at most 1000) and
//! answer `{"items": [...], "total": N, "offset": O, "limit": L}`; unknown query parameters
//! and body fields are refused with a 400 naming them; every change is written to the audit
//! log ([`crate::audit`]) before the answer goes out; database work runs on the blocking pool,
//! never on the API thread's runtime.

mod admin;
pub mod console;
mod forwarding;
mod params;
mod retrieve;
mod studies;
mod worklist;

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use serde_json::{json, Value};

use super::auth::Role;
use super::{error_response, json_response, ApiError, ApiState, Body, Ctx};
pub use params::{decode_segment, from_value, parse_body, read_body, read_value, Query};
pub use worklist::{check_distinct_keys, item_json, mpps_json};

/// Default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;

/// What a method on a path does and who may call it.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    /// HTTP method (`HEAD` is served as `GET`).
    pub method: &'static str,
    /// Lowest role allowed; `None`: no token needed (login).
    pub role: Option<Role>,
    handler: H,
}

/// One path template under `/api/v1`; `{name}` segments are parameters.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The template, e.g. `/studies/{study_uid}`.
    pub path: &'static str,
    /// Its methods.
    pub methods: &'static [Op],
}

/// The handlers (one per path and method; the dispatcher's `match` is exhaustive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H {
    SearchStudies,
    GetStudy,
    ListSeries,
    ListInstances,
    GetInstance,
    DownloadInstance,
    ListDestinations,
    CreateDestination,
    GetDestination,
    PutDestination,
    DeleteDestination,
    PauseDestination,
    ResumeDestination,
    ListRoutes,
    PutRoutes,
    QueueStats,
    ListJobs,
    Retry,
    Replay,
    Stats,
    ListWorklist,
    CreateWorklist,
    GetWorklist,
    PutWorklist,
    DeleteWorklist,
    CancelWorklist,
    ListMpps,
    GetMpps,
    ListTokens,
    CreateToken,
    RevokeToken,
    ListUsers,
    CreateUser,
    GetUser,
    UpdateUser,
    DeleteUser,
    Audit,
    AuditVerify,
    EchoDestination,
    StatsHistory,
    Me,
    Login,
    MoveStudy,
    QueryDestination,
}

const fn op(method: &'static str, role: Role, handler: H) -> Op {
    Op {
        method,
        role: Some(role),
        handler,
    }
}

use Role::{Admin, Operator, Viewer};

/// Every `/api/v1` resource (except `/openapi.json`, which `http::handle` serves as is).
pub const ROUTES: &[Route] = &[
    Route {
        path: "/studies",
        methods: &[op("GET", Viewer, H::SearchStudies)],
    },
    Route {
        path: "/studies/{study_uid}",
        methods: &[op("GET", Viewer, H::GetStudy)],
    },
    Route {
        path: "/studies/{study_uid}/series",
        methods: &[op("GET", Viewer, H::ListSeries)],
    },
    Route {
        path: "/studies/{study_uid}/series/{series_uid}/instances",
        methods: &[op("GET", Viewer, H::ListInstances)],
    },
    Route {
        path: "/studies/{study_uid}/move",
        methods: &[op("POST", Operator, H::MoveStudy)],
    },
    Route {
        path: "/instances/{sop_uid}",
        methods: &[op("GET", Viewer, H::GetInstance)],
    },
    Route {
        path: "/instances/{sop_uid}/file",
        methods: &[op("GET", Viewer, H::DownloadInstance)],
    },
    Route {
        path: "/destinations",
        methods: &[
            op("GET", Viewer, H::ListDestinations),
            op("POST", Admin, H::CreateDestination),
        ],
    },
    Route {
        path: "/destinations/{name}",
        methods: &[
            op("GET", Viewer, H::GetDestination),
            op("PUT", Admin, H::PutDestination),
            op("DELETE", Admin, H::DeleteDestination),
        ],
    },
    Route {
        path: "/destinations/{name}/pause",
        methods: &[op("POST", Operator, H::PauseDestination)],
    },
    Route {
        path: "/destinations/{name}/resume",
        methods: &[op("POST", Operator, H::ResumeDestination)],
    },
    Route {
        path: "/destinations/{name}/echo",
        methods: &[op("POST", Operator, H::EchoDestination)],
    },
    Route {
        path: "/destinations/{name}/query",
        methods: &[op("POST", Operator, H::QueryDestination)],
    },
    Route {
        path: "/routes",
        methods: &[
            op("GET", Viewer, H::ListRoutes),
            op("PUT", Admin, H::PutRoutes),
        ],
    },
    Route {
        path: "/queue",
        methods: &[op("GET", Viewer, H::QueueStats)],
    },
    Route {
        path: "/queue/jobs",
        methods: &[op("GET", Viewer, H::ListJobs)],
    },
    Route {
        path: "/queue/retry",
        methods: &[op("POST", Operator, H::Retry)],
    },
    Route {
        path: "/queue/replay",
        methods: &[op("POST", Operator, H::Replay)],
    },
    Route {
        path: "/stats",
        methods: &[op("GET", Viewer, H::Stats)],
    },
    Route {
        path: "/stats/history",
        methods: &[op("GET", Viewer, H::StatsHistory)],
    },
    Route {
        path: "/worklist",
        methods: &[
            op("GET", Viewer, H::ListWorklist),
            op("POST", Operator, H::CreateWorklist),
        ],
    },
    Route {
        path: "/worklist/{id}",
        methods: &[
            op("GET", Viewer, H::GetWorklist),
            op("PUT", Operator, H::PutWorklist),
            op("DELETE", Operator, H::DeleteWorklist),
        ],
    },
    Route {
        path: "/worklist/{id}/cancel",
        methods: &[op("POST", Operator, H::CancelWorklist)],
    },
    Route {
        path: "/mpps",
        methods: &[op("GET", Viewer, H::ListMpps)],
    },
    Route {
        path: "/mpps/{uid}",
        methods: &[op("GET", Viewer, H::GetMpps)],
    },
    Route {
        path: "/tokens",
        methods: &[
            op("GET", Admin, H::ListTokens),
            op("POST", Admin, H::CreateToken),
        ],
    },
    Route {
        path: "/tokens/{id}",
        methods: &[op("DELETE", Admin, H::RevokeToken)],
    },
    Route {
        path: "/users",
        methods: &[
            op("GET", Admin, H::ListUsers),
            op("POST", Admin, H::CreateUser),
        ],
    },
    Route {
        path: "/users/{name}",
        methods: &[
            op("GET", Admin, H::GetUser),
            op("PATCH", Admin, H::UpdateUser),
            op("DELETE", Admin, H::DeleteUser),
        ],
    },
    Route {
        path: "/audit",
        methods: &[op("GET", Admin, H::Audit)],
    },
    Route {
        path: "/audit/verify",
        methods: &[op("GET", Admin, H::AuditVerify)],
    },
    Route {
        path: "/auth/me",
        methods: &[op("GET", Viewer, H::Me)],
    },
    Route {
        path: LOGIN_PATH,
        methods: &[Op {
            method: "POST",
            role: None,
            handler: H::Login,
        }],
    },
];

/// The login path (below `/api/v1`): the one resource that needs no token.
const LOGIN_PATH: &str = "/auth/login";

/// Path parameters of a matched route, decoded.
#[derive(Debug, Default)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value of parameter `name` (present by construction of the route).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Matches `path` (below `/api/v1`) against [`ROUTES`]. Literal segments compare raw (so an
/// encoded `%73tudies` is not `studies`); parameter segments are percent-decoded, which may
/// fail (400). An empty segment (`//`, trailing `/`) matches nothing.
fn find(path: &str) -> Result<Option<(&'static Route, Params)>, ApiError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Ok(None);
    };
    let segs: Vec<&str> = rest.split('/').collect();
    'routes: for r in ROUTES {
        let tpl: Vec<&'static str> = r.path[1..].split('/').collect();
        if tpl.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        for (t, s) in tpl.iter().zip(&segs) {
            if s.is_empty() {
                continue 'routes;
            }
            if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                params.push((name, (*s).to_owned()));
            } else if t != s {
                continue 'routes;
            }
        }
        // Decode only once the route is certain, so a bad escape in some other path is a 404.
        let params = params
            .into_iter()
            .map(|(k, v)| {
                decode_segment(&v)
                    .map(|d| (k, d))
                    .map_err(|e| ApiError::bad_request(format!("path parameter {k}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Some((r, Params(params))));
    }
    Ok(None)
}

/// The operation for `method` on route `r` (`HEAD` is `GET`).
fn method_of(r: &'static Route, method: &hyper::Method) -> Option<&'static Op> {
    let m = if method == hyper::Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    r.methods.iter().find(|o| o.method == m)
}

/// The 405 answer for route `r`, naming the allowed methods (also in `Allow`).
fn method_not_allowed(r: &'static Route, method: &hyper::Method) -> Response<Body> {
    let mut allowed: Vec<&str> = r.methods.iter().map(|o| o.method).collect();
    if allowed.contains(&"GET") {
        allowed.push("HEAD");
    }
    let allow = allowed.join(", ");
    let mut resp = error_response(&ApiError::method_not_allowed(format!(
        "{method} is not allowed on /api/v1{}; allowed: {allow}",
        r.path
    )));
    if let Ok(v) = hyper::header::HeaderValue::from_str(&allow) {
        resp.headers_mut().insert(hyper::header::ALLOW, v);
    }
    resp
}

/// Dispatches an authenticated `/api/v1` request.
pub async fn dispatch(req: Request<Incoming>, ctx: Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let full = req.uri().path().to_owned();
    let path = full.strip_prefix("/api/v1").unwrap_or(&full);
    let Some((route, p)) = find(path)? else {
        return Err(ApiError::not_found(format!(
            "no such resource {full} (the resources are listed in /api/v1/openapi.json)"
        )));
    };
    let Some(op) = method_of(route, req.method()) else {
        return Ok(method_not_allowed(route, req.method()));
    };
    if let Some(role) = op.role {
        ctx.principal.require(role)?;
    }
    let c = &ctx;
    match op.handler {
        H::SearchStudies => studies::search(&req, c).await,
        H::GetStudy => studies::get_study(&req, c, &p).await,
        H::ListSeries => studies::list_series(&req, c, &p).await,
        H::ListInstances => studies::list_instances(&req, c, &p).await,
        H::GetInstance => studies::get_instance(&req, c, &p).await,
        H::DownloadInstance => studies::download(&req, c, &p).await,
        H::ListDestinations => forwarding::list_destinations(&req, c).await,
        H::CreateDestination => forwarding::create_destination(req, c).await,
        H::GetDestination => forwarding::get_destination(&req, c, &p).await,
        H::PutDestination => forwarding::put_destination(req, c, &p).await,
        H::DeleteDestination => forwarding::delete_destination(&req, c, &p).await,
        H::PauseDestination => forwarding::pause(&req, c, &p, true).await,
        H::ResumeDestination => forwarding::pause(&req, c, &p, false).await,
        H::ListRoutes => forwarding::list_routes(&req, c).await,
        H::PutRoutes => forwarding::put_routes(req, c).await,
        H::QueueStats => forwarding::queue_stats(&req, c).await,
        H::ListJobs => forwarding::list_jobs(&req, c).await,
        H::Retry => forwarding::retry(req, c).await,
        H::Replay => forwarding::replay(req, c).await,
        H::Stats => forwarding::stats(&req, c).await,
        H::ListWorklist => worklist::list(&req, c).await,
        H::CreateWorklist => worklist::create(req, c).await,
        H::GetWorklist => worklist::get(&req, c, &p).await,
        H::PutWorklist => worklist::put(req, c, &p).await,
        H::DeleteWorklist => worklist::delete(&req, c, &p).await,
        H::CancelWorklist => worklist::cancel(&req, c, &p).await,
        H::ListMpps => worklist::list_mpps(&req, c).await,
        H::GetMpps => worklist::get_mpps(&req, c, &p).await,
        H::ListTokens => admin::list_tokens(&req, c).await,
        H::CreateToken => admin::create_token(req, c).await,
        H::RevokeToken => admin::revoke_token(&req, c, &p).await,
        H::ListUsers => admin::list_users(&req, c).await,
        H::CreateUser => admin::create_user(req, c).await,
        H::GetUser => admin::get_user(&req, c, &p).await,
        H::UpdateUser => admin::update_user(req, c, &p).await,
        H::DeleteUser => admin::delete_user(&req, c, &p).await,
        H::Audit => admin::audit_log(&req, c).await,
        H::AuditVerify => console::audit_verify(&req, c).await,
        H::EchoDestination => forwarding::echo(&req, c, &p).await,
        H::StatsHistory => console::stats_history(&req, c).await,
        H::Me => admin::me(&req, c),
        // Reached only if authenticated anyway (the unauthenticated path is `login` below).
        H::Login => admin::login(req, ctx.state, ctx.peer).await,
        H::MoveStudy => retrieve::move_study(req, c, &p).await,
        H::QueryDestination => retrieve::query(req, c, &p).await,
    }
}

/// `POST /api/v1/auth/login` (no token: it is how a user gets one).
pub async fn login(
    req: Request<Incoming>,
    state: &ApiState,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let route = ROUTES
        .iter()
        .find(|r| r.path == LOGIN_PATH)
        .expect("the login route is in the table");
    if method_of(route, req.method()).is_none() {
        return Ok(method_not_allowed(route, req.method()));
    }
    admin::login(req, state, peer).await
}

/// Runs database work on the blocking pool (redb transactions, Argon2, file system checks):
/// the API thread's single runtime stays free for other requests.
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker task failed: {e}")))?
}

/// The standard list answer.
fn page_response<T: Serialize>(
    items: &[T],
    total: u64,
    offset: u64,
    limit: usize,
) -> Response<Body> {
    json_response(
        200,
        &json!({ "items": items, "total": total, "offset": offset, "limit": limit }),
    )
}

/// A page of an in-memory list.
fn paginate<T: Serialize>(all: Vec<T>, offset: u64, limit: usize) -> Response<Body> {
    let total = all.len() as u64;
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    let items: Vec<T> = all.into_iter().skip(skip).take(limit).collect();
    page_response(&items, total, offset, limit)
}

/// Who makes a change, for the audit log (owned, so it can move to the blocking pool).
#[derive(Debug, Clone)]
struct Actor {
    name: String,
    token_id: String,
    source: String,
}

impl Actor {
    fn of(ctx: &Ctx<'_>) -> Self {
        Self {
            name: ctx.principal.name.clone(),
            token_id: ctx.principal.token_id.clone(),
            source: ctx.peer.to_string(),
        }
    }

    /// The event of a change by this caller; `details` gets the token id.
    fn event<'a>(&'a self, action: &'a str, mut details: Value) -> crate::audit::AuditEvent<'a> {
        if let Value::Object(m) = &mut details {
            m.insert("token_id".into(), Value::String(self.token_id.clone()));
        }
        crate::audit::AuditEvent {
            actor: &self.name,
            source: &self.source,
            action,
            details,
        }
    }

    /// Appends the audit entry of a change to `gateway.redb` inside the change's own write
    /// transaction `tx` (call it from the change's [`crate::audit::AuditHook`]): the change
    /// and its entry commit together, and an `Err` aborts the change.
    fn audit(
        &self,
        tx: &redb::WriteTransaction,
        action: &str,
        details: Value,
    ) -> Result<(), String> {
        crate::audit::append(
            tx,
            crate::clock::timestamp_us(),
            &self.event(action, details),
        )
        .map(drop)
    }

    /// Writes the audit entry of a worklist change to the audit outbox of `worklist.redb`
    /// inside the change's own write transaction `tx` (call it from the change's hook, then
    /// [`drain`] once the change is committed).
    fn to_outbox(
        &self,
        tx: &redb::WriteTransaction,
        action: &str,
        details: Value,
    ) -> Result<(), String> {
        crate::audit::outbox::put(
            tx,
            crate::clock::timestamp_us(),
            &self.event(action, details),
        )
        .map(drop)
    }
}

/// Moves the worklist's pending audit entries into the audit log right after a worklist
/// change ([`crate::control::drain_worklist_audit`]). If that fails the change stands and its
/// entry waits in the outbox for the next drain, and the caller hears about it (500), since a
/// change not in the audit log must not pass unnoticed.
fn drain(
    worklist: &crate::worklist::WorklistStore,
    gateway: &redb::Database,
) -> Result<(), ApiError> {
    crate::control::drain_worklist_audit(worklist, gateway)
        .map(drop)
        .map_err(ApiError::internal)
}

/// A 500 for an index failure.
fn index_err(e: crate::store::index::IndexError) -> ApiError {
    ApiError::internal(format!("index: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openapi() -> Value {
        serde_json::from_str(crate::http::OPENAPI).expect("docs/openapi.json is JSON")
    }

    #[test]
    fn every_route_is_in_the_openapi_document_and_nothing_else() {
        let doc = openapi();
        assert_eq!(doc["servers"][0]["url"], "/api/v1");
        let paths = doc["paths"].as_object().expect("paths");
        for r in ROUTES {
            let item = paths
                .get(r.path)
                .unwrap_or_else(|| panic!("{} is not in docs/openapi.json", r.path));
            for o in r.methods {
                let m = item.get(o.method.to_lowercase()).unwrap_or_else(|| {
                    panic!("{} {} is not in docs/openapi.json", o.method, r.path)
                });
                // Every path parameter is declared.
                let declared: Vec<String> = m["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(item["parameters"].as_array().into_iter().flatten())
                    .map(|p| match p["$ref"].as_str() {
                        Some(r) => doc.pointer(&r[1..]).unwrap_or(&Value::Null),
                        None => p,
                    })
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect();
                for seg in r.path.split('/') {
                    if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        assert!(
                            declared.iter().any(|d| d == name),
                            "{} {}: path parameter {name} not declared",
                            o.method,
                            r.path
                        );
                    }
                }
                // Security: login is open, everything else needs the bearer token.
                let open = m["security"].as_array().is_some_and(Vec::is_empty);
                assert_eq!(open, o.role.is_none(), "{} {}: security", o.method, r.path);
                let desc = m["description"].as_str().unwrap_or("");
                if let Some(role) = o.role {
                    assert!(
                        desc.contains(&format!("Role: {role}")),
                        "{} {}: the description should say 'Role: {role}'",
                        o.method,
                        r.path
                    );
                }
            }
        }
        // And the document lists nothing the dispatcher does not know.
        for (p, item) in paths {
            for (m, _) in item.as_object().unwrap() {
                if m == "parameters" {
                    continue;
                }
                if p == "/openapi.json" && m == "get" {
                    continue;
                }
                let known = ROUTES.iter().any(|r| {
                    r.path == p && r.methods.iter().any(|o| o.method.eq_ignore_ascii_case(m))
                });
                assert!(
                    known,
                    "docs/openapi.json has {m} {p}, which the dispatcher does not serve"
                );
            }
        }
        assert!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer");
    }

    #[test]
    fn openapi_references_resolve() {
        let doc = openapi();
        let text = crate::http::OPENAPI;
        let mut rest = text;
        while let Some(i) = rest.find("\"#/components/") {
            let tail = &rest[i + 2..];
            let end = tail.find('"').unwrap();
            let pointer = &tail[..end];
            assert!(
                doc.pointer(pointer).is_some(),
                "unresolved $ref #{pointer} in docs/openapi.json"
            );
            rest = &tail[end..];
        }
    }

    #[test]
    fn paths_match_templates_and_decode_parameters() {
        let (r, p) = find("/studies/1.2.3/series/4.5/instances")
            .unwrap()
            .unwrap();
        assert_eq!(r.path, "/studies/{study_uid}/series/{series_uid}/instances");
        assert_eq!((p.get("study_uid"), p.get("series_uid")), ("1.2.3", "4.5"));
        let (_, p) = find("/instances/%2e%2e%2Fetc/file").unwrap().unwrap();
        assert_eq!(p.get("sop_uid"), "../etc");
        for none in [
            "",
            "/",
            "/studies/",
            "/studies//series",
            "/instances/../etc/passwd",
            "/nope",
            "/%73tudies",
        ] {
            assert!(find(none).unwrap().is_none(), "{none}");
        }
        assert_eq!(find("/instances/%zz").unwrap_err().status, 400);
        assert_eq!(find("/instances/%ff%fe").unwrap_err().status, 400);
    }

    #[test]
    fn the_route_table_has_no_duplicates_and_sensible_roles() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(
                r.path.starts_with('/') && !r.path.ends_with('/'),
                "{}",
                r.path
            );
            for o in r.methods {
                assert!(
                    seen.insert((r.path, o.method)),
                    "{} {} twice",
                    o.method,
                    r.path
                );
                if o.method != "GET" && o.role.is_some() {
                    assert!(
                        o.role >= Some(Operator),
                        "{} {} changes state",
                        o.method,
                        r.path
                    );
                }
            }
        }
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let r = ROUTES
            .iter()
            .find(|r| r.path == "/destinations/{name}")
            .unwrap();
        assert!(method_of(r, &hyper::Method::POST).is_none());
        let resp = method_not_allowed(r, &hyper::Method::POST);
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET, PUT, DELETE, HEAD");
        assert_eq!(method_of(r, &hyper::Method::HEAD).unwrap().method, "GET");
    }
}
