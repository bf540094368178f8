//! Authentication and roles of the admin API.
//!
//! Every `/api/v1` call carries `Authorization: Bearer <token>`. Tokens are 256 random bits
//! (from the OS), shown once when created and stored only as their BLAKE3 hash, so a copy of
//! the database does not hand out credentials; a fast hash is right here because the token
//! itself has full entropy (passwords, which do not, get Argon2id). Roles are ordered:
//! viewer (read) < operator (queue actions) < admin (configuration, users, tokens).

use redb::{Database, ReadableDatabase, ReadableTable};
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

/// Creates a token for `role`, valid until `expires_at_us` (0 = never). Returns the token (to
/// show once) and its record.
pub fn create_token(
    db: &Database,
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
    let tx = db.begin_write().map_err(db_err)?;
    {
        let mut t = tx.open_table(db::API_TOKENS).map_err(db_err)?;
        let v = postcard::to_allocvec(&rec).map_err(db_err)?;
        t.insert(h.as_str(), v.as_slice()).map_err(db_err)?;
    }
    tx.commit().map_err(db_err)?;
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
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not 'Bearer <token>'"))?;
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
    out.sort_by(|a: &TokenRecord, b| a.created_at_us.cmp(&b.created_at_us));
    Ok(out)
}

/// Revokes the token with public id `id`. Returns whether one existed.
pub fn revoke_token(db: &Database, id: &str) -> Result<bool, ApiError> {
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
    tx.commit().map_err(db_err)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_with_their_role_until_they_expire_or_are_revoked() {
        let d = tempfile::tempdir().unwrap();
        let index = crate::store::index::Index::open(&d.path().join("g.redb")).unwrap();
        let db = index.database();
        let (tok, rec) = create_token(db, Role::Operator, "ops", 10, 0).unwrap();
        assert!(tok.starts_with(TOKEN_PREFIX) && tok.len() == 4 + 64);
        let p = authenticate(db, Some(&format!("Bearer {tok}")), 20).unwrap();
        assert_eq!((p.role, p.name.as_str()), (Role::Operator, "ops"));
        assert!(p.require(Role::Viewer).is_ok() && p.require(Role::Operator).is_ok());
        assert_eq!(p.require(Role::Admin).unwrap_err().status, 403);
        for bad in [None, Some("Basic x"), Some("Bearer "), Some("Bearer dgw_nope")] {
            assert_eq!(authenticate(db, bad, 20).unwrap_err().status, 401, "{bad:?}");
        }
        let (short, _) = create_token(db, Role::Admin, "login", 10, 100).unwrap();
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
        assert!(revoke_token(db, &rec.id).unwrap());
        assert!(!revoke_token(db, &rec.id).unwrap());
        assert_eq!(
            authenticate(db, Some(&format!("Bearer {tok}")), 20)
                .unwrap_err()
                .status,
            401
        );
    }
}
