//! Tokens, users, the audit log, and login.
//!
//! Secrets never leave through here except once: a new token is in the answer that creates
//! it (only its hash is stored), and passwords are only ever taken, never shown. Each change
//! is written to the audit log without secrets, in the change's own transaction (both or
//! neither are stored). Failed logins are audited too (`auth.login_failed`, under the name
//! tried) and backed off per name and per source address ([`auth::LoginThrottle`]).

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Deserialize;
use serde_json::json;

use super::{blocking, page_response, paginate, read_body, Actor, Params, Query};
use crate::http::auth::{self, Role, TokenRecord};
use crate::http::{json_response, ApiError, ApiState, Body, Ctx};

/// Logins checked at the same time: each costs an Argon2id verification (tens of
/// milliseconds of CPU and its memory), and login needs no token, so without a bound anyone
/// who can reach the port could keep every core busy.
const MAX_CONCURRENT_LOGINS: usize = 4;
/// Longest a login waits for its turn before the answer is 503.
const LOGIN_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Longest lifetime a token may be given (ten years; `0`/absent means no expiry at all).
const MAX_TOKEN_SECONDS: u64 = 10 * 365 * 86_400;

static LOGINS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_LOGINS);

/// Longest user name recorded for a failed login (the name is the caller's input).
const MAX_LOGGED_NAME: usize = 128;

impl Actor {
    /// The audit hook writing this actor's entry for `action` inside the change's
    /// transaction; `details` gets the token id.
    fn hook<'a, R>(
        &'a self,
        action: &'static str,
        details: impl FnOnce(&R) -> serde_json::Value + 'a,
    ) -> impl FnOnce(&redb::WriteTransaction, &R) -> Result<(), String> + 'a {
        move |tx, r| {
            let mut details = details(r);
            if let serde_json::Value::Object(m) = &mut details {
                m.insert("token_id".into(), json!(self.token_id));
            }
            crate::audit::append(
                tx,
                crate::clock::timestamp_us(),
                &crate::audit::AuditEvent {
                    actor: &self.name,
                    source: &self.source,
                    action,
                    details,
                },
            )
            .map(drop)
        }
    }
}

fn token_json(token: Option<&str>, rec: &TokenRecord) -> serde_json::Value {
    let mut v = json!({
        "id": rec.id,
        "role": rec.role,
        "name": rec.name,
        "created_at_us": rec.created_at_us,
        "expires_at_us": rec.expires_at_us,
    });
    if let Some(t) = token {
        v["token"] = json!(t);
    }
    v
}

/// Body of `POST /auth/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: String,
    password: String,
}

/// `POST /auth/login`: user name and password → a token with the user's role that expires
/// after the configured login lifetime. Every failure is the same 401.
pub async fn login(
    req: Request<Incoming>,
    state: &ApiState,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let body: LoginBody = read_body(req).await?;
    let throttle = auth::LoginThrottle::global();
    if let Err(wait) = throttle.check(&body.name, peer.ip(), std::time::Instant::now()) {
        let secs = wait.as_secs() + 1;
        let mut rsp = crate::http::error_response(&ApiError::new(
            429,
            "login_backoff",
            format!("too many failed logins for this name or address; retry in {secs} s"),
        ));
        if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
            rsp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        return Ok(rsp);
    }
    let _turn = tokio::time::timeout(LOGIN_QUEUE_WAIT, LOGINS.acquire())
        .await
        .map_err(|_| {
            ApiError::new(
                503,
                "busy",
                "too many logins are being checked; try again shortly",
            )
        })?
        .map_err(|e| ApiError::internal(format!("login queue: {e}")))?;
    let index = state.index.clone();
    let ttl = state.login_token_ttl;
    let v = blocking(move || {
        let db = index.database();
        let source = peer.to_string();
        let result = auth::login(
            db,
            &body.name,
            &body.password,
            crate::clock::timestamp_us(),
            ttl,
            |tx, rec: &TokenRecord| {
                crate::audit::append(
                    tx,
                    crate::clock::timestamp_us(),
                    &crate::audit::AuditEvent {
                        actor: &rec.name,
                        source: &source,
                        action: "auth.login",
                        details: json!({ "expires_at_us": rec.expires_at_us, "token_id": rec.id }),
                    },
                )
                .map(drop)
            },
        );
        match result {
            Ok((token, rec)) => {
                throttle.succeeded(&body.name);
                Ok(token_json(Some(&token), &rec))
            }
            Err(e) if e.status == 401 => {
                throttle.failed(&body.name, peer.ip(), std::time::Instant::now());
                let name: String = body.name.chars().take(MAX_LOGGED_NAME).collect();
                tracing::info!(name = %name, %peer, "failed login");
                if let Err(ae) = crate::audit::record(
                    db,
                    crate::audit::AuditEvent {
                        actor: &name,
                        source: &source,
                        action: "auth.login_failed",
                        details: json!({}),
                    },
                ) {
                    tracing::error!(error = %ae, "failed login not audited");
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    })
    .await?;
    Ok(json_response(200, &v))
}

/// `GET /auth/me`: who the token belongs to.
pub fn me(req: &Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let p = &ctx.principal;
    Ok(json_response(
        200,
        &json!({ "name": p.name, "role": p.role, "token_id": p.token_id }),
    ))
}

/// `GET /tokens`: every token's record (never the token itself).
pub async fn list_tokens(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    let (offset, limit) = Query::page_only(req.uri())?;
    let index = ctx.state.index.clone();
    let all = blocking(move || auth::list_tokens(index.database())).await?;
    let shown: Vec<_> = all.iter().map(|r| token_json(None, r)).collect();
    Ok(paginate(shown, offset, limit))
}

/// Body of `POST /tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    role: Role,
    name: String,
    expires_in_seconds: Option<u64>,
}

/// A label for a token: 1–64 printable characters.
fn check_label(name: &str) -> Result<(), ApiError> {
    let n = name.chars().count();
    if n == 0 || n > 64 || name.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "name: a token label has 1 to 64 characters (not only spaces), not {n}"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name: control characters are not allowed",
        ));
    }
    Ok(())
}

/// `POST /tokens`: a new token; the answer is the only place it is ever shown.
pub async fn create_token(
    req: Request<Incoming>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let body: TokenBody = read_body(req).await?;
    check_label(&body.name)?;
    let secs = body.expires_in_seconds.unwrap_or(0);
    if secs > MAX_TOKEN_SECONDS {
        return Err(ApiError::bad_request(format!(
            "expires_in_seconds: at most {MAX_TOKEN_SECONDS} (or 0 for no expiry)"
        )));
    }
    let (index, actor) = (ctx.state.index.clone(), Actor::of(ctx));
    let v = blocking(move || {
        let db = index.database();
        let now = crate::clock::timestamp_us();
        let expires = if secs == 0 { 0 } else { now + secs * 1_000_000 };
        let (token, rec) = auth::create_token(
            db,
            body.role,
            &body.name,
            now,
            expires,
            actor.hook("token.create", |rec| token_json(None, rec)),
        )?;
        Ok(token_json(Some(&token), &rec))
    })
    .await?;
    Ok(json_response(201, &v))
}

/// `DELETE /tokens/{id}`.
pub async fn revoke_token(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let id = p.get("id").to_owned();
    if id.len() != 8 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::bad_request(format!(
            "path parameter id: {id:?} is not a token id (8 lowercase hex digits)"
        )));
    }
    let (index, actor) = (ctx.state.index.clone(), Actor::of(ctx));
    let v = blocking(move || {
        let db = index.database();
        let details = json!({ "id": id });
        if !auth::revoke_token(db, &id, actor.hook("token.revoke", |_| details))? {
            return Err(ApiError::not_found(format!("no token with id {id}")));
        }
        Ok(json!({ "revoked": id }))
    })
    .await?;
    Ok(json_response(200, &v))
}

/// `GET /users`.
pub async fn list_users(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    let (offset, limit) = Query::page_only(req.uri())?;
    let index = ctx.state.index.clone();
    let all = blocking(move || auth::list_users(index.database())).await?;
    Ok(paginate(all, offset, limit))
}

/// Body of `POST /users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    name: String,
    role: Role,
    password: String,
}

/// `POST /users`: a user who can log in (409 if the name is taken).
pub async fn create_user(
    req: Request<Incoming>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let body: UserBody = read_body(req).await?;
    let (index, actor) = (ctx.state.index.clone(), Actor::of(ctx));
    let v = blocking(move || {
        let db = index.database();
        let user = auth::add_user(
            db,
            &body.name,
            body.role,
            &body.password,
            actor.hook(
                "user.add",
                |u: &auth::UserRecord| json!({ "name": u.name, "role": u.role }),
            ),
        )?;
        Ok(user.info())
    })
    .await?;
    Ok(json_response(201, &json!(v)))
}

/// `GET /users/{name}`.
pub async fn get_user(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let name = p.get("name").to_owned();
    let index = ctx.state.index.clone();
    let v = blocking(move || {
        auth::get_user(index.database(), &name)?
            .map(|u| u.info())
            .ok_or_else(|| ApiError::not_found(format!("no user {name:?}")))
    })
    .await?;
    Ok(json_response(200, &json!(v)))
}

/// Body of `PATCH /users/{name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    role: Option<Role>,
    disabled: Option<bool>,
    password: Option<String>,
}

/// `PATCH /users/{name}`: role, disabled flag and/or password; the user's login sessions end.
pub async fn update_user(
    req: Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let body: UserPatch = read_body(req).await?;
    if body.role.is_none() && body.disabled.is_none() && body.password.is_none() {
        return Err(ApiError::bad_request(
            "request body: nothing to change (give role, disabled and/or password)",
        ));
    }
    let name = p.get("name").to_owned();
    let (index, actor) = (ctx.state.index.clone(), Actor::of(ctx));
    let v = blocking(move || {
        let db = index.database();
        if auth::get_user(db, &name)?.is_none() {
            return Err(ApiError::not_found(format!("no user {name:?}")));
        }
        if let Some(pw) = &body.password {
            // Checked before any change, so a bad password changes nothing.
            auth::validate_password(pw)?;
        }
        // Audited like the CLI: `user.update` for role and state, `user.password` for the
        // password (never the password itself).
        let mut user = None;
        if body.role.is_some() || body.disabled.is_some() {
            let details = json!({ "name": name, "role": body.role, "disabled": body.disabled });
            user = Some(auth::update_user(
                db,
                &name,
                body.role,
                body.disabled,
                actor.hook("user.update", |_| details),
            )?);
        }
        if let Some(pw) = &body.password {
            let details = json!({ "name": name });
            user = Some(auth::set_password(
                db,
                &name,
                pw,
                actor.hook("user.password", |_| details),
            )?);
        }
        let user = user.expect("something was changed");
        Ok(user.info())
    })
    .await?;
    Ok(json_response(200, &json!(v)))
}

/// `DELETE /users/{name}`: the user and its login sessions.
pub async fn delete_user(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let name = p.get("name").to_owned();
    let (index, actor) = (ctx.state.index.clone(), Actor::of(ctx));
    let v = blocking(move || {
        let db = index.database();
        let details = json!({ "name": name });
        if !auth::remove_user(db, &name, actor.hook("user.remove", |_| details))? {
            return Err(ApiError::not_found(format!("no user {name:?}")));
        }
        Ok(json!({ "removed": name }))
    })
    .await?;
    Ok(json_response(200, &v))
}

/// `GET /audit`: the audit log, oldest first.
pub async fn audit_log(req: &Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let (offset, limit) = Query::page_only(req.uri())?;
    let index = ctx.state.index.clone();
    let (entries, total) = blocking(move || {
        let db = index.database();
        let e = |m: String| ApiError::internal(m);
        let entries = crate::audit::list(db, offset, limit).map_err(e)?;
        let total = crate::audit::count(db).map_err(e)?;
        Ok((entries, total))
    })
    .await?;
    let items: Vec<_> = entries
        .iter()
        .map(crate::audit::AuditEntry::to_json)
        .collect();
    Ok(page_response(&items, total, offset, limit))
}
