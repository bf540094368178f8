//! Authentication and roles of the admin API.
//!
//! Every `/api/v1` call carries `Authorization: Bearer <token>`. Tokens are 256 random bits
//! (from the OS), shown once when created and stored only as their BLAKE3 hash, so a copy of
//! the database does not hand out credentials; a fast hash is right here because the token
//! itself has full entropy (passwords, which do not, get Argon2id). Roles are ordered:
//! viewer (read) < operator (queue actions) < admin (configuration, users, tokens).
//!
//! Users ([`db::USERS`]) have an Argon2id password hash and a role; [`login`] trades a user
//! name and password for a short-lived token with the user's role, named after the user.
//! Changing a user's password or role, disabling or removing the user, revokes that user's
//! login tokens (the tokens carrying the user's name that expire; tokens created without
//! expiry are API tokens and stay).

use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::db;
use crate::http::error::ApiError;

/// Token prefix: makes a leaked token recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "dgw_";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also act on the queue (retry, replay, pause).
    Operator,
    /// Also change configuration, users and tokens.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("{s:?} is not viewer, operator or admin")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// A stored token (the token itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (first 8 hex characters of the hash), to list and revoke tokens.
    pub id: String,
    /// Role granted.
    pub role: Role,
    /// Who the token is for (a label, or the user name for login tokens).
    pub name: String,
    /// Creation time, µs since the Unix epoch.
    pub created_at_us: u64,
    /// Expiry, µs since the Unix epoch; 0 = never.
    pub expires_at_us: u64,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token label or user name, for the audit log.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Token id.
    pub token_id: String,
}

impl Principal {
    /// 403 unless the caller's role is at least `need`.
    pub fn require(&self, need: Role) -> Result<(), ApiError> {
        if self.role >= need {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {need} role; the token has {}",
                self.role
            )))
        }
    }
}

fn db_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("database: {e}"))
}

fn hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// A fresh random token.
pub fn new_token() -> Result<String, ApiError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{TOKEN_PREFIX}{hex}"))
}

pub use crate::audit::{no_audit, AuditHook};

/// Runs the audit hook; if it fails, the transaction is dropped (aborted) by the caller's `?`.
fn audit_in<R>(tx: &WriteTransaction, r: &R, audit: impl AuditHook<R>) -> Result<(), ApiError> {
    audit(tx, r).map_err(|e| {
        tracing::error!(error = %e, "audit entry not written; the change is rolled back");
        ApiError::internal(crate::audit::not_made(&e))
    })
}

/// Creates a token for `role`, valid until `expires_at_us` (0 = never), audited in the same
/// transaction. Returns the token (to show once) and its record.
pub fn create_token(
    db: &Database,
    role: Role,
    name: &str,
    now_us: u64,
    expires_at_us: u64,
    audit: impl AuditHook<TokenRecord>,
) -> Result<(String, TokenRecord), ApiError> {
    let tx = db.begin_write().map_err(db_err)?;
    let created = insert_token(&tx, role, name, now_us, expires_at_us)?;
    audit_in(&tx, &created.1, audit)?;
    tx.commit().map_err(db_err)?;
    Ok(created)
}

fn insert_token(
    tx: &WriteTransaction,
    role: Role,
    name: &str,
    now_us: u64,
    expires_at_us: u64,
) -> Result<(String, TokenRecord), ApiError> {
    let token = new_token()?;
    let h = hash(&token);
    let rec = TokenRecord {
        id: h[..8].to_owned(),
        role,
        name: name.to_owned(),
        created_at_us: now_us,
        expires_at_us,
    };
    let mut t = tx.open_table(db::API_TOKENS).map_err(db_err)?;
    let v = postcard::to_allocvec(&rec).map_err(db_err)?;
    t.insert(h.as_str(), v.as_slice()).map_err(db_err)?;
    Ok((token, rec))
}

/// Resolves the `Authorization` header value to a caller: 401 when missing, malformed, unknown
/// or expired.
pub fn authenticate(
    db: &Database,
    authorization: Option<&str>,
    now_us: u64,
) -> Result<Principal, ApiError> {
    let Some(value) = authorization else {
        return Err(ApiError::unauthorized(
            "missing Authorization: Bearer <token> header",
        ));
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header is not 'Bearer <token>'")
        })?;
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(db::API_TOKENS).map_err(db_err)?;
    let rec: TokenRecord = match t.get(hash(token).as_str()).map_err(db_err)? {
        Some(g) => postcard::from_bytes(g.value()).map_err(db_err)?,
        None => return Err(ApiError::unauthorized("unknown or revoked token")),
    };
    if rec.expires_at_us != 0 && rec.expires_at_us <= now_us {
        return Err(ApiError::unauthorized("the token has expired"));
    }
    Ok(Principal {
        name: rec.name,
        role: rec.role,
        token_id: rec.id,
    })
}

/// Every token record (for `GET /api/v1/tokens`).
pub fn list_tokens(db: &Database) -> Result<Vec<TokenRecord>, ApiError> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(db::API_TOKENS).map_err(db_err)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(db_err)? {
        let (_, v) = row.map_err(db_err)?;
        out.push(postcard::from_bytes(v.value()).map_err(db_err)?);
    }
    out.sort_by_key(|a: &TokenRecord| a.created_at_us);
    Ok(out)
}

/// Revokes the token with public id `id`, audited in the same transaction (if it existed).
/// Returns whether one existed.
pub fn revoke_token(db: &Database, id: &str, audit: impl AuditHook<()>) -> Result<bool, ApiError> {
    let tx = db.begin_write().map_err(db_err)?;
    let found;
    {
        let mut t = tx.open_table(db::API_TOKENS).map_err(db_err)?;
        let mut key = None;
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let rec: TokenRecord = postcard::from_bytes(v.value()).map_err(db_err)?;
            if rec.id == id {
                key = Some(k.value().to_owned());
                break;
            }
        }
        found = key.is_some();
        if let Some(k) = key {
            t.remove(k.as_str()).map_err(db_err)?;
        }
    }
    if found {
        audit_in(&tx, &(), audit)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(found)
}

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted, in bytes (bounds the hashing work an unauthenticated caller can
/// ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The one answer to a failed login, whether the user is unknown, disabled or the password
/// wrong: the API does not tell which user names exist.
pub const LOGIN_FAILED: &str = "unknown user or wrong password";

/// A stored user (postcard in [`db::USERS`], keyed by name; fields are only ever appended).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// User name: 1–64 characters `[A-Za-z0-9._-]`.
    pub name: String,
    /// Role granted to the user's login tokens.
    pub role: Role,
    /// Argon2id hash of the password, PHC string (`$argon2id$v=19$m=…`): the parameters travel
    /// with the hash, so stronger defaults later still verify old hashes.
    pub password_hash: String,
    /// Creation time, µs since the Unix epoch.
    pub created_at_us: u64,
    /// A disabled user cannot log in (kept rather than removed, for the audit trail).
    pub disabled: bool,
}

impl std::fmt::Debug for UserRecord {
    /// Leaves the password hash out (logs must not collect hashes to crack offline).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("created_at_us", &self.created_at_us)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

impl UserRecord {
    /// What may be shown (everything but the password hash).
    pub fn info(&self) -> UserInfo {
        UserInfo {
            name: self.name.clone(),
            role: self.role,
            created_at_us: self.created_at_us,
            disabled: self.disabled,
        }
    }
}

/// A user as the API and CLI show it: no password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Creation time, µs since the Unix epoch.
    pub created_at_us: u64,
    /// Whether login is refused.
    pub disabled: bool,
}

/// 400 unless `name` is 1–64 characters of `[A-Za-z0-9._-]`.
pub fn validate_user_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::bad_request(format!(
            "name: a user name has 1 to 64 characters, not {}",
            name.chars().count()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ApiError::bad_request(format!(
            "name: {c:?} is not allowed in a user name (letters, digits, '.', '_', '-')"
        )));
    }
    Ok(())
}

/// 400 unless the password has at least [`MIN_PASSWORD_CHARS`] characters and at most
/// [`MAX_PASSWORD_BYTES`] bytes.
pub fn validate_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(ApiError::bad_request(format!(
            "password: at least {MIN_PASSWORD_CHARS} characters are needed, it has {n}"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::bad_request(format!(
            "password: at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The Argon2id PHC hash of `password` (default parameters, 16 random salt bytes).
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let salt =
        SaltString::encode_b64(&raw).map_err(|e| ApiError::internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format!("password hashing: {e}")))
}

/// Whether `password` matches the PHC string (Argon2's own constant-time comparison).
fn password_matches(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .and_then(|h| Argon2::default().verify_password(password.as_bytes(), &h))
        .is_ok()
}

/// A hash to verify against when the user does not exist, so that answer takes as long as a
/// wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(b"dicom-gw:no-such-user").expect("fixed valid salt");
        Argon2::default()
            .hash_password(b"no user has this password", &salt)
            .map(|h| h.to_string())
            .expect("default Argon2 parameters hash")
    })
}

fn read_user(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<UserRecord>, ApiError> {
    match t.get(name).map_err(db_err)? {
        Some(g) => Ok(Some(postcard::from_bytes(g.value()).map_err(db_err)?)),
        None => Ok(None),
    }
}

fn write_user(tx: &WriteTransaction, user: &UserRecord) -> Result<(), ApiError> {
    let v = postcard::to_allocvec(user).map_err(db_err)?;
    tx.open_table(db::USERS)
        .map_err(db_err)?
        .insert(user.name.as_str(), v.as_slice())
        .map_err(db_err)?;
    Ok(())
}

/// Removes the login tokens of user `name` (those with its name that expire). Returns how many.
fn revoke_login_tokens(tx: &WriteTransaction, name: &str) -> Result<usize, ApiError> {
    remove_tokens_where(tx, |rec| rec.name == name && rec.expires_at_us != 0)
}

fn remove_tokens_where(
    tx: &WriteTransaction,
    pred: impl Fn(&TokenRecord) -> bool,
) -> Result<usize, ApiError> {
    let mut t = tx.open_table(db::API_TOKENS).map_err(db_err)?;
    let mut doomed = Vec::new();
    for row in t.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        // An undecodable record cannot authenticate anyone: leave it for an operator to see.
        if let Ok(rec) = postcard::from_bytes::<TokenRecord>(v.value()) {
            if pred(&rec) {
                doomed.push(k.value().to_owned());
            }
        }
    }
    for k in &doomed {
        t.remove(k.as_str()).map_err(db_err)?;
    }
    Ok(doomed.len())
}

/// Adds a user, audited in the same transaction. 400 for a bad name or password, 409 if the
/// name is taken.
pub fn add_user(
    db: &Database,
    name: &str,
    role: Role,
    password: &str,
    audit: impl AuditHook<UserRecord>,
) -> Result<UserRecord, ApiError> {
    validate_user_name(name)?;
    validate_password(password)?;
    // Hash before taking the write lock: it is the slow part.
    let user = UserRecord {
        name: name.to_owned(),
        role,
        password_hash: hash_password(password)?,
        created_at_us: crate::clock::timestamp_us(),
        disabled: false,
    };
    let tx = db.begin_write().map_err(db_err)?;
    {
        let t = tx.open_table(db::USERS).map_err(db_err)?;
        if read_user(&t, name)?.is_some() {
            return Err(ApiError::conflict(format!(
                "name: user {name:?} already exists"
            )));
        }
    }
    write_user(&tx, &user)?;
    audit_in(&tx, &user, audit)?;
    tx.commit().map_err(db_err)?;
    Ok(user)
}

/// One user, if it exists.
pub fn get_user(db: &Database, name: &str) -> Result<Option<UserRecord>, ApiError> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(db::USERS).map_err(db_err)?;
    read_user(&t, name)
}

/// Every user, by name, without password hashes.
pub fn list_users(db: &Database) -> Result<Vec<UserInfo>, ApiError> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(db::USERS).map_err(db_err)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(db_err)? {
        let (_, v) = row.map_err(db_err)?;
        out.push(
            postcard::from_bytes::<UserRecord>(v.value())
                .map_err(db_err)?
                .info(),
        );
    }
    Ok(out)
}

/// Reads user `name` in a write transaction, applies `change` and writes it back; 404 if the
/// user does not exist.
fn modify_user(
    db: &Database,
    name: &str,
    change: impl FnOnce(&mut UserRecord),
    audit: impl AuditHook<UserRecord>,
) -> Result<UserRecord, ApiError> {
    let tx = db.begin_write().map_err(db_err)?;
    let mut user = {
        let t = tx.open_table(db::USERS).map_err(db_err)?;
        read_user(&t, name)?.ok_or_else(|| ApiError::not_found(format!("no user {name:?}")))?
    };
    change(&mut user);
    write_user(&tx, &user)?;
    // Sessions opened with the old password or role end now.
    revoke_login_tokens(&tx, name)?;
    audit_in(&tx, &user, audit)?;
    tx.commit().map_err(db_err)?;
    Ok(user)
}

/// Sets a user's password (400 if too short or long, 404 if no such user) and ends the user's
/// login sessions.
pub fn set_password(
    db: &Database,
    name: &str,
    password: &str,
    audit: impl AuditHook<UserRecord>,
) -> Result<UserRecord, ApiError> {
    validate_password(password)?;
    let phc = hash_password(password)?;
    modify_user(db, name, |u| u.password_hash = phc, audit)
}

/// Changes a user's role and/or disabled flag (404 if no such user) and ends the user's login
/// sessions, which carry the old role.
pub fn update_user(
    db: &Database,
    name: &str,
    role: Option<Role>,
    disabled: Option<bool>,
    audit: impl AuditHook<UserRecord>,
) -> Result<UserRecord, ApiError> {
    modify_user(
        db,
        name,
        |u| {
            if let Some(r) = role {
                u.role = r;
            }
            if let Some(d) = disabled {
                u.disabled = d;
            }
        },
        audit,
    )
}

/// Removes a user and its login tokens. Returns whether it existed.
pub fn remove_user(db: &Database, name: &str, audit: impl AuditHook<()>) -> Result<bool, ApiError> {
    let tx = db.begin_write().map_err(db_err)?;
    let existed = tx
        .open_table(db::USERS)
        .map_err(db_err)?
        .remove(name)
        .map_err(db_err)?
        .is_some();
    if existed {
        revoke_login_tokens(&tx, name)?;
        audit_in(&tx, &(), audit)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(existed)
}

/// `POST /api/v1/auth/login`: checks `password` against user `name` and, if it matches and the
/// user is enabled, creates a token named after the user with the user's role, expiring at
/// `now_us + ttl`. Every failure is the same 401 ([`LOGIN_FAILED`]), and an unknown user costs
/// the same Argon2 verification as a wrong password, so neither the answer nor its timing says
/// which names exist. Expired tokens are swept in the same transaction.
///
/// This spends tens of milliseconds of CPU (Argon2id): call it from a blocking thread.
pub fn login(
    db: &Database,
    name: &str,
    password: &str,
    now_us: u64,
    ttl: Duration,
    audit: impl AuditHook<TokenRecord>,
) -> Result<(String, TokenRecord), ApiError> {
    let dummy = dummy_hash();
    let user = {
        let tx = db.begin_read().map_err(db_err)?;
        let t = tx.open_table(db::USERS).map_err(db_err)?;
        read_user(&t, name)?
    };
    let phc = user.as_ref().map_or(dummy, |u| u.password_hash.as_str());
    let matches = if password.len() <= MAX_PASSWORD_BYTES {
        password_matches(password, phc)
    } else {
        // Refused without hashing a huge input, but after the same work.
        let _ = password_matches("", dummy);
        false
    };
    let user = match user {
        Some(u) if matches && !u.disabled => u,
        _ => return Err(ApiError::unauthorized(LOGIN_FAILED)),
    };
    let ttl_us = u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX);
    let expires = now_us.saturating_add(ttl_us.max(1));
    let tx = db.begin_write().map_err(db_err)?;
    remove_tokens_where(&tx, |rec| {
        rec.expires_at_us != 0 && rec.expires_at_us <= now_us
    })?;
    let created = insert_token(&tx, user.role, &user.name, now_us, expires)?;
    audit_in(&tx, &created.1, audit)?;
    tx.commit().map_err(db_err)?;
    Ok(created)
}

/// Failed logins a user name may have before it is backed off.
pub const FREE_FAILURES_PER_USER: u32 = 3;
/// Failed logins one source address may have (over all names) before it is backed off:
/// more than per user, since several people may share an address (NAT, a proxy).
pub const FREE_FAILURES_PER_ADDRESS: u32 = 10;
/// The first back-off; it doubles with every further failure, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten (a success forgets them at once).
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60 * 60);
/// Most names and addresses remembered; beyond, the oldest entries are forgotten.
const MAX_TRACKED: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: std::time::Instant,
    blocked_until: Option<std::time::Instant>,
}

/// Back-off for failed logins, per user name and per source address: after the free
/// failures, each further one blocks the name (or address) for [`FIRST_BACKOFF`], doubling up
/// to [`MAX_BACKOFF`]. A blocked login is refused (429) *before* its password is checked, so
/// guessing costs the guesser time and not the daemon CPU (Argon2), and the audit log grows by
/// at most one entry per back-off step.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    users: std::sync::Mutex<std::collections::HashMap<String, Failures>>,
    addresses: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Failures>>,
}

impl LoginThrottle {
    /// The process's throttle (the API has one listener per process).
    pub fn global() -> &'static LoginThrottle {
        static T: OnceLock<LoginThrottle> = OnceLock::new();
        T.get_or_init(LoginThrottle::default)
    }

    /// `Err(retry_after)` if `name` or `addr` is backed off at `now`.
    pub fn check(
        &self,
        name: &str,
        addr: std::net::IpAddr,
        now: std::time::Instant,
    ) -> Result<(), Duration> {
        let wait = |f: Option<&Failures>| {
            f.and_then(|f| f.blocked_until)
                .map(|u| u.saturating_duration_since(now))
                .unwrap_or_default()
        };
        let u = wait(lock(&self.users).get(name));
        let a = wait(lock(&self.addresses).get(&addr));
        let w = u.max(a);
        if w.is_zero() {
            Ok(())
        } else {
            Err(w)
        }
    }

    /// Records a failed login.
    pub fn failed(&self, name: &str, addr: std::net::IpAddr, now: std::time::Instant) {
        bump(
            &mut lock(&self.users),
            name.to_owned(),
            FREE_FAILURES_PER_USER,
            now,
        );
        bump(
            &mut lock(&self.addresses),
            addr,
            FREE_FAILURES_PER_ADDRESS,
            now,
        );
    }

    /// Records a successful login: the name's failures are forgotten.
    pub fn succeeded(&self, name: &str) {
        lock(&self.users).remove(name);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump<K: std::hash::Hash + Eq>(
    map: &mut std::collections::HashMap<K, Failures>,
    key: K,
    free: u32,
    now: std::time::Instant,
) {
    if map.len() >= MAX_TRACKED {
        map.retain(|_, f| now.saturating_duration_since(f.last) < FAILURE_MEMORY);
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
    }
    let f = map.entry(key).or_insert(Failures {
        count: 0,
        last: now,
        blocked_until: None,
    });
    if now.saturating_duration_since(f.last) >= FAILURE_MEMORY {
        f.count = 0;
    }
    f.count += 1;
    f.last = now;
    if f.count >= free {
        let steps = (f.count - free).min(20);
        let backoff = FIRST_BACKOFF.saturating_mul(1u32 << steps).min(MAX_BACKOFF);
        f.blocked_until = Some(now + backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_with_their_role_until_they_expire_or_are_revoked() {
        let d = tempfile::tempdir().unwrap();
        let index = crate::store::index::Index::open(&d.path().join("g.redb")).unwrap();
        let db = index.database();
        let (tok, rec) = create_token(db, Role::Operator, "ops", 10, 0, no_audit).unwrap();
        assert!(tok.starts_with(TOKEN_PREFIX) && tok.len() == 4 + 64);
        let p = authenticate(db, Some(&format!("Bearer {tok}")), 20).unwrap();
        assert_eq!((p.role, p.name.as_str()), (Role::Operator, "ops"));
        assert!(p.require(Role::Viewer).is_ok() && p.require(Role::Operator).is_ok());
        assert_eq!(p.require(Role::Admin).unwrap_err().status, 403);
        for bad in [
            None,
            Some("Basic x"),
            Some("Bearer "),
            Some("Bearer dgw_nope"),
        ] {
            assert_eq!(
                authenticate(db, bad, 20).unwrap_err().status,
                401,
                "{bad:?}"
            );
        }
        let (short, _) = create_token(db, Role::Admin, "login", 10, 100, no_audit).unwrap();
        assert!(authenticate(db, Some(&format!("Bearer {short}")), 99).is_ok());
        assert_eq!(
            authenticate(db, Some(&format!("Bearer {short}")), 100)
                .unwrap_err()
                .status,
            401
        );
        // Only the hash is stored.
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(db::API_TOKENS).unwrap();
        assert!(t.get(tok.as_str()).unwrap().is_none());
        drop((t, tx));
        assert_eq!(list_tokens(db).unwrap().len(), 2);
        assert!(revoke_token(db, &rec.id, no_audit).unwrap());
        assert!(!revoke_token(db, &rec.id, no_audit).unwrap());
        assert_eq!(
            authenticate(db, Some(&format!("Bearer {tok}")), 20)
                .unwrap_err()
                .status,
            401
        );
    }

    fn open() -> (tempfile::TempDir, crate::store::index::Index) {
        let d = tempfile::tempdir().unwrap();
        let index = crate::store::index::Index::open(&d.path().join("g.redb")).unwrap();
        (d, index)
    }

    const PW: &str = "correct horse battery";

    #[test]
    fn users_log_in_for_a_short_lived_token_with_their_role() {
        let (_d, index) = open();
        let db = index.database();
        let u = add_user(db, "alice", Role::Operator, PW, no_audit).unwrap();
        assert!(
            u.password_hash.starts_with("$argon2id$v=19$"),
            "{}",
            u.password_hash
        );
        assert!(
            !format!("{u:?}").contains("argon2"),
            "Debug must not show the hash"
        );
        let ttl = Duration::from_secs(3600);
        let (tok, rec) = login(db, "alice", PW, 1_000, ttl, no_audit).unwrap();
        assert_eq!((rec.name.as_str(), rec.role), ("alice", Role::Operator));
        assert_eq!(rec.expires_at_us, 1_000 + 3_600_000_000);
        let bearer = format!("Bearer {tok}");
        let p = authenticate(db, Some(&bearer), 2_000).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("alice", Role::Operator));
        // Expired: 401.
        let e = authenticate(db, Some(&bearer), rec.expires_at_us).unwrap_err();
        assert_eq!(e.status, 401);
        // The next login sweeps it.
        login(db, "alice", PW, rec.expires_at_us + 1, ttl, no_audit).unwrap();
        assert_eq!(list_tokens(db).unwrap().len(), 1);
    }

    #[test]
    fn failed_logins_all_look_the_same() {
        let (_d, index) = open();
        let db = index.database();
        add_user(db, "alice", Role::Admin, PW, no_audit).unwrap();
        let ttl = Duration::from_secs(60);
        let wrong = login(db, "alice", "correct horse battery!", 1, ttl, no_audit).unwrap_err();
        let unknown = login(db, "mallory", PW, 1, ttl, no_audit).unwrap_err();
        let huge = login(
            db,
            "alice",
            &"x".repeat(MAX_PASSWORD_BYTES + 1),
            1,
            ttl,
            no_audit,
        )
        .unwrap_err();
        let empty = login(db, "", "", 1, ttl, no_audit).unwrap_err();
        for e in [&wrong, &unknown, &huge, &empty] {
            assert_eq!((e.status, e.message.as_str()), (401, LOGIN_FAILED));
        }
        assert_eq!(wrong, unknown);
        update_user(db, "alice", None, Some(true), no_audit).unwrap();
        assert_eq!(
            login(db, "alice", PW, 1, ttl, no_audit).unwrap_err(),
            unknown
        );
        update_user(db, "alice", None, Some(false), no_audit).unwrap();
        assert!(login(db, "alice", PW, 1, ttl, no_audit).is_ok());
        assert!(list_tokens(db).unwrap().len() == 1);
    }

    #[test]
    fn user_names_and_passwords_are_checked() {
        let (_d, index) = open();
        let db = index.database();
        for bad in ["", "a b", "ä", "x/y", &"n".repeat(65)] {
            let e = add_user(db, bad, Role::Viewer, PW, no_audit).unwrap_err();
            assert_eq!(e.status, 400, "{bad:?}");
            assert!(e.message.starts_with("name:"), "{e:?}");
        }
        for ok in ["a", "Bob.Smith_2-x", &"n".repeat(64)] {
            add_user(db, ok, Role::Viewer, PW, no_audit).unwrap();
        }
        let e = add_user(db, "carol", Role::Viewer, "elevenchars", no_audit).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("password:"), "{e:?}");
        // Twelve characters, fewer bytes would not do: characters count.
        add_user(db, "dora", Role::Viewer, "ääääääääääää", no_audit).unwrap();
        assert_eq!(
            add_user(db, "a", Role::Admin, PW, no_audit)
                .unwrap_err()
                .status,
            409
        );
        let names: Vec<_> = list_users(db)
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names.len(), 4);
        assert!(names.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn password_role_and_removal_end_login_sessions_but_not_api_tokens() {
        let (_d, index) = open();
        let db = index.database();
        add_user(db, "alice", Role::Admin, PW, no_audit).unwrap();
        let ttl = Duration::from_secs(600);
        let (api, _) = create_token(db, Role::Viewer, "alice", 1, 0, no_audit).unwrap();
        let auth = |t: &str| authenticate(db, Some(&format!("Bearer {t}")), 2);
        let (t1, _) = login(db, "alice", PW, 1, ttl, no_audit).unwrap();
        set_password(db, "alice", "another long password", no_audit).unwrap();
        assert_eq!(auth(&t1).unwrap_err().status, 401);
        assert_eq!(
            login(db, "alice", PW, 1, ttl, no_audit).unwrap_err().status,
            401
        );
        let (t2, _) = login(db, "alice", "another long password", 1, ttl, no_audit).unwrap();
        let u = update_user(db, "alice", Some(Role::Viewer), None, no_audit).unwrap();
        assert_eq!(u.role, Role::Viewer);
        assert_eq!(auth(&t2).unwrap_err().status, 401);
        let (t3, rec) = login(db, "alice", "another long password", 1, ttl, no_audit).unwrap();
        assert_eq!(rec.role, Role::Viewer);
        assert!(remove_user(db, "alice", no_audit).unwrap());
        assert!(!remove_user(db, "alice", no_audit).unwrap());
        assert_eq!(auth(&t3).unwrap_err().status, 401);
        assert!(auth(&api).is_ok(), "API tokens are not login sessions");
        assert_eq!(
            set_password(db, "alice", PW, no_audit).unwrap_err().status,
            404
        );
        assert_eq!(
            update_user(db, "nobody", None, None, no_audit)
                .unwrap_err()
                .status,
            404
        );
    }

    #[test]
    fn a_failing_audit_entry_rolls_the_change_back() {
        let d = tempfile::tempdir().unwrap();
        let index = crate::store::index::Index::open(&d.path().join("g.redb")).unwrap();
        let db = index.database();
        // The audit append fails inside the transaction (a crash between change and entry
        // has the same effect: nothing commits): the change is not made.
        let fail = |_: &WriteTransaction, _: &TokenRecord| Err("disk on fire".to_owned());
        let e = create_token(db, Role::Admin, "x", 1, 0, fail).unwrap_err();
        assert_eq!(e.status, 500);
        assert!(e.message.contains("was not made"), "{}", e.message);
        assert!(list_tokens(db).unwrap().is_empty());
        let e = add_user(
            db,
            "alice",
            Role::Admin,
            PW,
            |_: &WriteTransaction, _: &UserRecord| Err("no".to_owned()),
        )
        .unwrap_err();
        assert_eq!(e.status, 500);
        assert!(get_user(db, "alice").unwrap().is_none());
        assert_eq!(crate::audit::count(db).unwrap(), 0);
        // A working hook: the change and its entry are both there.
        let audited = |tx: &WriteTransaction, rec: &TokenRecord| {
            crate::audit::append(
                tx,
                5,
                &crate::audit::AuditEvent {
                    actor: "t",
                    source: "test",
                    action: "token.create",
                    details: serde_json::json!({ "id": rec.id }),
                },
            )
            .map(drop)
        };
        let (_, rec) = create_token(db, Role::Admin, "x", 1, 0, audited).unwrap();
        assert_eq!(list_tokens(db).unwrap().len(), 1);
        let log = crate::audit::list(db, 0, 10).unwrap();
        assert_eq!(log.len(), 1);
        assert!(log[0].details.contains(&rec.id));
    }

    #[test]
    fn failed_logins_back_off_per_user_and_per_address() {
        let t = LoginThrottle::default();
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let now = std::time::Instant::now();
        for _ in 0..FREE_FAILURES_PER_USER - 1 {
            assert_eq!(t.check("alice", a, now), Ok(()));
            t.failed("alice", a, now);
        }
        assert_eq!(t.check("alice", a, now), Ok(()));
        t.failed("alice", a, now);
        // Backed off, from any address; other names are not.
        assert_eq!(t.check("alice", b, now), Err(FIRST_BACKOFF));
        assert_eq!(t.check("bob", b, now), Ok(()));
        let later = now + FIRST_BACKOFF;
        assert_eq!(t.check("alice", a, later), Ok(()));
        t.failed("alice", a, later);
        assert_eq!(t.check("alice", a, later), Err(FIRST_BACKOFF * 2));
        // One address trying many names is backed off too.
        for i in 0..FREE_FAILURES_PER_ADDRESS {
            t.failed(&format!("user{i}"), b, now);
        }
        assert!(t.check("someone-new", b, now).is_err());
        assert!(t.check("someone-new", a, now).is_ok());
        // A success forgets the name's failures.
        t.succeeded("alice");
        assert_eq!(t.check("alice", b, later), Ok(()));
    }
}
