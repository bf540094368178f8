//! Operations for operators: the queue (list jobs, counts, retry dead letters, replay a study,
//! pause and resume a destination), API tokens, users, the audit log and the worklist
//! import.
//!
//! The same [`Ops`] serve the CLI and the admin API. While the daemon runs, the database is
//! locked by it, so the CLI sends its request as one JSON line over a Unix socket
//! (`DATA_DIR/run/control.sock`) and the daemon executes it — pause and retry then take effect
//! at once. Without a daemon the CLI opens the database itself.
//!
//! Who may talk to the socket: the daemon's own user and root, nobody else. Two locks, because
//! each alone has a gap: the socket is created inside `DATA_DIR/run/`, a directory mode 0700
//! owned by the daemon's user, so no other user can even reach it (there is no window between
//! `bind` and a `chmod` in which the socket is open to all); and every connection's peer
//! credentials (`SO_PEERCRED`, from the kernel) are checked, so a descriptor passed on or a
//! directory made traversable by hand still does not let another uid in.
//!
//! Every change made through [`Ops::execute_as`] is written to the audit log with the caller
//! and where it came from, in the change's own transaction (see [`Ops::execute_as`]). The
//! caller is what the kernel says (`cli:uid=0(root)`), never what the client writes in its
//! request ([`ControlRequest::actor`] is kept for older CLIs and ignored for the audit log).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::timestamp_us;
use crate::queue::forwarder::Shared;
use crate::queue::{JobState, Queue, QueueError};

/// Most jobs one list returns.
pub const MAX_LIST: usize = 100_000;

/// Longest request line the daemon reads from the socket: a worklist import carries the
/// whole document (the socket is 0600, so only the daemon's own user can send one).
pub const MAX_REQUEST: u64 = 64 << 20;

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Job counts per destination.
    Stats,
    /// Jobs, filtered.
    List {
        /// Only this destination.
        destination: Option<String>,
        /// Only this state.
        state: Option<JobState>,
        /// At most this many.
        limit: usize,
    },
    /// Dead jobs back to pending.
    Retry {
        /// Destination.
        destination: String,
        /// One job, or all dead jobs of the destination.
        job: Option<u64>,
    },
    /// Queue a study's instances again.
    Replay {
        /// Destination.
        destination: String,
        /// Study Instance UID.
        study: String,
    },
    /// Pause a destination.
    Pause {
        /// Destination.
        destination: String,
    },
    /// Resume a destination.
    Resume {
        /// Destination.
        destination: String,
    },
    /// Create an API token (printed once).
    TokenCreate {
        /// Role it grants.
        role: crate::http::auth::Role,
        /// Label (who it is for).
        name: String,
    },
    /// List API and login tokens (never the tokens themselves).
    TokenList,
    /// Revoke a token by its public id.
    TokenRevoke {
        /// Token id (8 hex characters).
        id: String,
    },
    /// Add a user.
    UserAdd {
        /// User name.
        name: String,
        /// Role.
        role: crate::http::auth::Role,
        /// Password (travels over the 0600 socket; never logged).
        password: Secret,
    },
    /// List users (without password hashes).
    UserList,
    /// Set a user's password (ends the user's login sessions).
    UserPassword {
        /// User name.
        name: String,
        /// New password.
        password: Secret,
    },
    /// Remove a user (and its login sessions).
    UserRemove {
        /// User name.
        name: String,
    },
    /// Check the audit log's hash chain.
    AuditVerify {
        /// Fail unless the chain contains an entry with this hash (a head kept elsewhere).
        anchor: Option<String>,
    },
    /// Audit entries, oldest first.
    AuditList {
        /// Skip this many entries.
        offset: u64,
        /// At most this many.
        limit: usize,
    },
    /// Import worklist items: a DICOM JSON document (one dataset or an array), validated
    /// whole, then created or updated by order key in one transaction (see
    /// [`Ops::import_worklist`]).
    WorklistImport {
        /// The document as read (the daemon parses and validates it itself).
        document: String,
    },
    /// Worklist items in id order.
    WorklistList {
        /// Skip this many items.
        offset: u64,
        /// At most this many.
        limit: usize,
    },
}

impl Request {
    /// The audit action of a request that changes something; `None` for reads.
    pub fn audit_action(&self) -> Option<&'static str> {
        Some(match self {
            Request::Stats
            | Request::List { .. }
            | Request::TokenList
            | Request::UserList
            | Request::AuditVerify { .. }
            | Request::AuditList { .. }
            | Request::WorklistList { .. } => return None,
            Request::Retry { .. } => "queue.retry",
            Request::Replay { .. } => "queue.replay",
            Request::Pause { .. } => "queue.pause",
            Request::Resume { .. } => "queue.resume",
            Request::TokenCreate { .. } => "token.create",
            Request::TokenRevoke { .. } => "token.revoke",
            Request::UserAdd { .. } => "user.add",
            Request::UserPassword { .. } => "user.password",
            Request::UserRemove { .. } => "user.remove",
            Request::WorklistImport { .. } => "worklist.import",
        })
    }

    /// Whether the request needs the worklist database (`worklist.redb`) besides the
    /// gateway's.
    pub fn needs_worklist(&self) -> bool {
        matches!(
            self,
            Request::WorklistImport { .. } | Request::WorklistList { .. }
        )
    }

    /// Whether the request may create the database when none exists yet (bootstrapping the
    /// first admin on a fresh data directory).
    /// An import may too: loading the worklist before the first start is a normal set-up.
    pub fn may_create_database(&self) -> bool {
        matches!(
            self,
            Request::TokenCreate { .. } | Request::UserAdd { .. } | Request::WorklistImport { .. }
        )
    }
}

/// A secret inside a request (a password): serialized as is, hidden from `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What travels on the control socket: the request and who asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The operation.
    #[serde(flatten)]
    pub request: Request,
    /// Who the client says it is. Ignored by the daemon, which records the socket peer's
    /// kernel-verified uid ([`actor_for_uid`]); kept so requests of older CLIs still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// The audit actor of this CLI process, from its real uid (what the daemon would see through
/// `SO_PEERCRED`): `cli:uid=0(root)`. Environment variables such as `$USER` are not used:
/// anyone can set them.
pub fn cli_actor() -> String {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    actor_for_uid(unsafe { libc::getuid() })
}

/// The audit actor for a kernel-verified uid: `cli:uid=<uid>(<user name>)`, or
/// `cli:uid=<uid>` when the uid has no passwd entry.
pub fn actor_for_uid(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("cli:uid={uid}({name})"),
        None => format!("cli:uid={uid}"),
    }
}

/// The passwd name of `uid` (`getpwuid_r`), if it has one.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: `pw` and `buf` outlive the call; getpwuid_r writes only into them and sets
    // `result` to `&pw` on success or to NULL.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pw.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// Whether a peer with this uid may use the control socket: root, or the daemon's own
/// (effective) uid.
pub fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// The audit source of CLI requests.
pub const CLI_SOURCE: &str = "cli";

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// The request itself is wrong (unknown destination, no such job): exit code 2 / HTTP 4xx.
    #[error("{0}")]
    Usage(String),
    /// The database failed: exit code 1 / HTTP 5xx.
    #[error("{0}")]
    Failed(String),
}

impl From<QueueError> for OpError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NotFound(m) => OpError::Usage(m),
            other => OpError::Failed(other.to_string()),
        }
    }
}

/// The reply on the control socket: the output lines, or an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// JSON values, printed one per line.
    Ok(Vec<Value>),
    /// A usage error.
    Usage(String),
    /// A failure.
    Failed(String),
}

/// Executes operations against the queue, and against the running forwarder when there is one.
#[derive(Debug, Clone)]
pub struct Ops {
    queue: Queue,
    /// Destination names requests may use offline (configured ones and those in the queue);
    /// live, the forwarder's current names are used instead.
    known: Vec<String>,
    forwarder: Option<Arc<Shared>>,
    /// The worklist database, when this process runs the worklist service (or the CLI opened
    /// it offline).
    worklist: Option<Arc<crate::worklist::WorklistStore>>,
    /// Inside the daemon: requests wait for the checkpoint of every object acknowledged
    /// before them, so a job list or a count never misses one.
    settle: Option<crate::ingest::Settle>,
}

impl Ops {
    /// Operations inside the daemon: names are the forwarder's destinations.
    pub fn live(queue: Queue, forwarder: Arc<Shared>) -> Self {
        Self {
            queue,
            known: forwarder.names(),
            forwarder: Some(forwarder),
            worklist: None,
            settle: None,
        }
    }

    /// Makes every request wait for the ingest checkpoint first (see [`Ops`]).
    pub fn with_settle(mut self, settle: crate::ingest::Settle) -> Self {
        self.settle = Some(settle);
        self
    }

    /// Gives the operations the worklist store (the daemon when it runs the worklist service,
    /// the CLI offline); without it worklist requests are refused naming the reason.
    pub fn with_worklist(mut self, store: Arc<crate::worklist::WorklistStore>) -> Self {
        self.worklist = Some(store);
        self
    }

    fn worklist(&self) -> Result<&crate::worklist::WorklistStore, OpError> {
        self.worklist.as_deref().ok_or_else(|| {
            OpError::Usage(
                "the worklist service does not run in this daemon (started with --only store); \
                 run the command against the data directory of the process that runs it"
                    .into(),
            )
        })
    }

    /// The worklist import: validates the whole document (errors name the attribute and the
    /// array index) and refuses two items with the same complete order key, then upserts all
    /// items in one transaction — an item whose Accession Number, Requested Procedure ID and
    /// Scheduled Procedure Step ID equal a stored item's replaces it (id kept; Study Instance
    /// UID and status kept unless given), any other is created. So importing the same RIS
    /// export again updates instead of failing or duplicating, as long as its items carry
    /// their Requested Procedure and Scheduled Procedure Step IDs (an item without them gets
    /// its new id there and is created again; the answer counts those as `without_key`).
    /// Answer: `{"created", "updated", "without_key", "items": [{"id", "result"}]}`. With
    /// `who` (actor, source) the import is audited (details: the ids created and updated)
    /// through the worklist database's audit outbox, written in the import's transaction and
    /// drained into the audit log right after (see [`Ops::execute_as`]).
    pub fn import_worklist(
        &self,
        document: &str,
        who: Option<(&str, &str)>,
    ) -> Result<Value, OpError> {
        use crate::worklist::{ItemKey, Upserted};
        let store = self.worklist()?;
        let items = crate::worklist::model::parse_items(document)
            .map_err(|e| OpError::Usage(e.to_string()))?;
        if items.is_empty() {
            return Err(OpError::Usage(
                "the document is an empty array: nothing to import".into(),
            ));
        }
        crate::http::resources::check_distinct_keys(&items).map_err(OpError::Usage)?;
        let without_key = items
            .iter()
            .filter(|i| {
                let k = ItemKey::of(i.dataset());
                k.requested_procedure_id.is_empty() || k.scheduled_procedure_step_id.is_empty()
            })
            .count();
        let ids = |results: &[(crate::worklist::WorklistItem, Upserted)], which: Upserted| {
            results
                .iter()
                .filter(|(_, u)| *u == which)
                .map(|(i, _)| i.id)
                .collect::<Vec<u64>>()
        };
        let audit = |tx: &redb::WriteTransaction,
                     results: &Vec<(crate::worklist::WorklistItem, Upserted)>| {
            let Some((actor, source)) = who else {
                return Ok(());
            };
            let details = json!({
                "created": ids(results, Upserted::Created),
                "updated": ids(results, Upserted::Updated),
            });
            crate::audit::outbox::put(
                tx,
                timestamp_us(),
                &crate::audit::AuditEvent {
                    actor,
                    source,
                    action: "worklist.import",
                    details,
                },
            )
            .map(drop)
        };
        let results = store.upsert_many(items, audit).map_err(|e| match e {
            crate::worklist::WorklistStoreError::DuplicateKey { .. } => {
                OpError::Usage(e.to_string())
            }
            other => OpError::Failed(other.to_string()),
        })?;
        let (created, updated) = (
            ids(&results, Upserted::Created),
            ids(&results, Upserted::Updated),
        );
        tracing::info!(
            created = created.len(),
            updated = updated.len(),
            "worklist imported"
        );
        drain_worklist_audit(store, self.db()).map_err(OpError::Failed)?;
        Ok(json!({
            "created": created.len(),
            "updated": updated.len(),
            "without_key": without_key,
            "items": results.iter().map(|(i, u)| json!({
                "id": i.id,
                "result": if *u == Upserted::Created { "created" } else { "updated" },
            })).collect::<Vec<_>>(),
        }))
    }

    /// Operations on a database no daemon holds: `configured` names (from a config file, if
    /// one was given) plus every destination the queue has counted.
    pub fn offline(queue: Queue, configured: Vec<String>) -> Result<Self, OpError> {
        let mut known = configured;
        for s in queue.stats(&[])? {
            if !known.contains(&s.destination) {
                known.push(s.destination);
            }
        }
        Ok(Self {
            queue,
            known,
            forwarder: None,
            worklist: None,
            settle: None,
        })
    }

    /// The destination names requests may use now: in the daemon the forwarder's current
    /// ones (destinations can be added and removed at run time through the API).
    fn known(&self) -> Vec<String> {
        match &self.forwarder {
            Some(f) => f.names(),
            None => self.known.clone(),
        }
    }

    fn check(&self, dest: &str) -> Result<(), OpError> {
        let known = self.known();
        if known.iter().any(|k| k == dest) {
            Ok(())
        } else {
            Err(OpError::Usage(format!(
                "unknown destination {dest:?} (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )))
        }
    }

    fn wake(&self, dest: &str) {
        if let Some(f) = &self.forwarder {
            f.wake(dest);
        }
    }

    /// Runs one request without writing to the audit log (reads, tests); the result is the
    /// lines to print.
    pub fn execute(&self, req: &Request) -> Result<Vec<Value>, OpError> {
        self.run(req, None)
    }

    /// Runs one request for `actor` coming from `source` (`cli`, or the API peer's address)
    /// and, if it changes something, writes that to the audit log in the change's own
    /// transaction, so a crash between change and entry leaves both or neither. Queue, token
    /// and user changes append their entry to the audit log inside their `gateway.redb` write
    /// transaction (through an [`crate::audit::AuditHook`]); if it cannot be written the
    /// transaction is aborted and the answer is a failure: the change was not made. A worklist
    /// import lives in `worklist.redb`, so its entry goes to that database's audit outbox in
    /// the import's transaction, and the outbox is drained into the audit log right after (and
    /// at the daemon's start, see [`crate::audit::outbox`]); if that drain fails the import
    /// stands, its entry waits in the outbox for the next drain, and the answer is a failure
    /// saying so.
    pub fn execute_as(
        &self,
        req: &Request,
        actor: &str,
        source: &str,
    ) -> Result<Vec<Value>, OpError> {
        self.run(req, Some((actor, source)))
    }

    fn db(&self) -> &redb::Database {
        self.queue.index().database()
    }

    /// Runs one request: the lines to print. With `who` (actor, source), a change is audited
    /// in its own transaction ([`Ops::execute_as`]).
    fn run(&self, req: &Request, who: Option<(&str, &str)>) -> Result<Vec<Value>, OpError> {
        use crate::http::auth;
        let api = |e: crate::http::ApiError| {
            if e.status < 500 {
                OpError::Usage(e.message)
            } else {
                OpError::Failed(e.message)
            }
        };
        let now = timestamp_us();
        let db = self.db();
        // The audit entry of a change, written in its transaction.
        let hook = |details: Value| {
            move |tx: &redb::WriteTransaction| -> Result<(), String> {
                match (who, req.audit_action()) {
                    (Some((actor, source)), Some(action)) => crate::audit::append(
                        tx,
                        now,
                        &crate::audit::AuditEvent {
                            actor,
                            source,
                            action,
                            details,
                        },
                    )
                    .map(drop),
                    _ => Ok(()),
                }
            }
        };
        match req {
            Request::Stats => Ok(self
                .queue
                .stats(&self.known())?
                .into_iter()
                .map(|s| json!(s))
                .collect()),
            Request::List {
                destination,
                state,
                limit,
            } => {
                if let Some(d) = destination {
                    self.check(d)?;
                }
                Ok(self
                    .queue
                    .list(destination.as_deref(), *state, (*limit).min(MAX_LIST))?
                    .into_iter()
                    .map(|j| json!(j))
                    .collect())
            }
            Request::Retry { destination, job } => {
                self.check(destination)?;
                let n = self.queue.retry_dead(destination, *job, now, |tx, n| {
                    hook(json!({ "destination": destination, "job": job, "retried": n }))(tx)
                })?;
                self.wake(destination);
                tracing::info!(destination = %destination, jobs = n, "dead jobs queued again");
                Ok(vec![json!({ "retried": n })])
            }
            Request::Replay { destination, study } => {
                self.check(destination)?;
                crate::dicom::uid::validate_uid(study)
                    .map_err(|e| OpError::Usage(format!("study {study:?}: {e}")))?;
                let n = self.queue.replay_study(destination, study, now, |tx, n| {
                    hook(json!({ "destination": destination, "study": study, "queued": n }))(tx)
                })?;
                self.wake(destination);
                tracing::info!(destination = %destination, study = %study, jobs = n, "study replayed");
                Ok(vec![json!({ "queued": n })])
            }
            Request::Pause { destination } | Request::Resume { destination } => {
                self.check(destination)?;
                let paused = matches!(req, Request::Pause { .. });
                let v = json!({ "destination": destination, "paused": paused });
                let h = hook(v.clone());
                self.queue.set_paused(destination, paused, |tx, _| h(tx))?;
                if let Some(f) = &self.forwarder {
                    f.set_paused(destination, paused);
                }
                tracing::info!(destination = %destination, paused, "destination pause state changed");
                Ok(vec![v])
            }
            Request::TokenCreate { role, name } => {
                let (token, rec) = auth::create_token(db, *role, name, now, 0, |tx, rec| {
                    hook(json!({ "id": rec.id, "role": rec.role, "name": rec.name }))(tx)
                })
                .map_err(api)?;
                tracing::info!(id = %rec.id, role = %rec.role, name = %rec.name, "API token created");
                Ok(vec![
                    json!({ "token": token, "id": rec.id, "role": rec.role, "name": rec.name }),
                ])
            }
            Request::TokenList => Ok(auth::list_tokens(db)
                .map_err(api)?
                .into_iter()
                .map(|t| json!(t))
                .collect()),
            Request::TokenRevoke { id } => {
                let v = json!({ "id": id, "revoked": true });
                let h = hook(v.clone());
                if !auth::revoke_token(db, id, |tx, _| h(tx)).map_err(api)? {
                    return Err(OpError::Usage(format!("no token with id {id:?}")));
                }
                tracing::info!(id = %id, "API token revoked");
                Ok(vec![v])
            }
            Request::UserAdd {
                name,
                role,
                password,
            } => {
                let u = auth::add_user(db, name, *role, &password.0, |tx, u| {
                    hook(json!({ "name": u.name, "role": u.role }))(tx)
                })
                .map_err(api)?;
                tracing::info!(name = %u.name, role = %u.role, "user added");
                Ok(vec![json!(u.info())])
            }
            Request::UserList => Ok(auth::list_users(db)
                .map_err(api)?
                .into_iter()
                .map(|u| json!(u))
                .collect()),
            Request::UserPassword { name, password } => {
                let u = auth::set_password(db, name, &password.0, |tx, u| {
                    hook(json!({ "name": u.name }))(tx)
                })
                .map_err(api)?;
                tracing::info!(name = %u.name, "user password changed");
                Ok(vec![json!({ "name": u.name, "password_changed": true })])
            }
            Request::UserRemove { name } => {
                let v = json!({ "name": name, "removed": true });
                let h = hook(v.clone());
                if !auth::remove_user(db, name, |tx, _| h(tx)).map_err(api)? {
                    return Err(OpError::Usage(format!("no user {name:?}")));
                }
                tracing::info!(name = %name, "user removed");
                Ok(vec![v])
            }
            Request::AuditVerify { anchor } => {
                let r = crate::audit::verify_anchored(db, anchor.as_deref())
                    .map_err(OpError::Failed)?;
                Ok(vec![json!(r)])
            }
            Request::AuditList { offset, limit } => {
                Ok(crate::audit::list(db, *offset, (*limit).min(MAX_LIST))
                    .map_err(OpError::Failed)?
                    .iter()
                    .map(crate::audit::AuditEntry::to_json)
                    .collect())
            }
            Request::WorklistImport { document } => Ok(vec![self.import_worklist(document, who)?]),
            Request::WorklistList { offset, limit } => {
                let skip = usize::try_from(*offset).unwrap_or(usize::MAX);
                Ok(self
                    .worklist()?
                    .list(None, usize::MAX)
                    .iter()
                    .skip(skip)
                    .take((*limit).min(MAX_LIST))
                    .map(|i| crate::http::resources::item_json(i))
                    .collect())
            }
        }
    }

    /// Runs a request (without auditing) and wraps the result for the socket.
    pub fn reply(&self, req: &Request) -> Reply {
        Self::wrap(self.execute(req))
    }

    /// Runs a request for `actor` from `source` ([`Ops::execute_as`]) and wraps the result.
    pub fn reply_as(&self, req: &Request, actor: &str, source: &str) -> Reply {
        Self::wrap(self.execute_as(req, actor, source))
    }

    fn wrap(r: Result<Vec<Value>, OpError>) -> Reply {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(OpError::Usage(m)) => Reply::Usage(m),
            Err(OpError::Failed(m)) => Reply::Failed(m),
        }
    }
}

/// Moves the audit entries waiting in the worklist database's outbox into the audit log in
/// `gateway` ([`crate::audit::outbox::drain`]), each exactly once: after every worklist change
/// made by the API or the CLI, and at the daemon's start. The `Err` is the message to answer
/// with: the change was made and its entry waits in the outbox for the next drain.
pub fn drain_worklist_audit(
    worklist: &crate::worklist::WorklistStore,
    gateway: &redb::Database,
) -> Result<usize, String> {
    crate::audit::outbox::drain(worklist.database(), gateway).map_err(|e| {
        tracing::error!(error = %e, "worklist audit entries not moved to the audit log; they wait in the outbox of worklist.redb");
        format!(
            "the change was made, but its audit entry could not be moved from the outbox of \
             worklist.redb to the audit log ({e}); it stays in the outbox and is written to the \
             audit log at the next drain (the next worklist change, or the daemon's start)"
        )
    })
}

/// The private directory holding the control socket: mode 0700, owned by the daemon's user.
pub fn run_dir(data_root: &Path) -> PathBuf {
    data_root.join("run")
}

/// Where the control socket lives.
pub fn socket_path(data_root: &Path) -> PathBuf {
    run_dir(data_root).join("control.sock")
}

/// Creates (or re-secures) [`run_dir`]: mode 0700, and it must belong to us — a directory
/// someone else owns could be opened to others behind our back, so it is refused.
pub fn prepare_run_dir(data_root: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = run_dir(data_root);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != euid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory owned by uid {euid} (the daemon's user); remove it",
                dir.display()
            ),
        ));
    }
    // Whatever the umask was, and whatever mode an older version left.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Binds the control socket inside the private [`run_dir`] (replacing a stale one left by a
/// killed daemon). Only the daemon's user can traverse the directory, so the socket is never
/// reachable by others, not even between `bind` and the `chmod` that follows it.
pub fn bind(data_root: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    prepare_run_dir(data_root)?;
    let path = socket_path(data_root);
    let _ = std::fs::remove_file(&path);
    // The socket of versions before `run/` existed: a client could still find it.
    let _ = std::fs::remove_file(data_root.join("control.sock"));
    let l = std::os::unix::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves the control socket until the future is dropped: one request line, one reply line.
pub async fn serve(listener: std::os::unix::net::UnixListener, ops: Arc<Ops>) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "control socket unusable");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let ops = ops.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            // The kernel's word on who connected: the only identity that counts.
            let peer_uid = match stream.peer_cred() {
                Ok(c) => c.uid(),
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: no peer credentials; refused");
                    return;
                }
            };
            let (r, mut w) = stream.into_split();
            if !peer_allowed(peer_uid) {
                tracing::warn!(
                    uid = peer_uid,
                    "control socket: connection from a user other than root and the daemon's refused"
                );
                let reply = Reply::Failed(format!(
                    "refused: uid {peer_uid} is neither root nor the daemon's user"
                ));
                let mut out = serde_json::to_vec(&reply).unwrap_or_default();
                out.push(b'\n');
                let _ = w.write_all(&out).await;
                return;
            }
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r.take(MAX_REQUEST));
            let reply = match r.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<ControlRequest>(&line) {
                    // Operations are short redb transactions (or an Argon2 hash): run them
                    // off the runtime.
                    Ok(req) => {
                        if let Some(s) = &ops.settle {
                            s.settle(crate::ingest::READ_WAIT).await;
                        }
                        tokio::task::spawn_blocking(move || {
                            let actor = actor_for_uid(peer_uid);
                            ops.reply_as(&req.request, &actor, CLI_SOURCE)
                        })
                        .await
                        .unwrap_or_else(|e| Reply::Failed(e.to_string()))
                    }
                    Err(e) => Reply::Usage(format!("bad request: {e}")),
                },
                Err(e) => Reply::Failed(e.to_string()),
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
}

/// Sends a request to a running daemon (the daemon audits it with the socket peer's uid).
/// `Ok(None)`: no daemon answers on the socket.
pub fn request(data_root: &Path, req: &Request) -> std::io::Result<Option<Reply>> {
    request_as(data_root, req, None)
}

/// Sends a request on behalf of `actor` (for the audit log) to a running daemon. `Ok(None)`:
/// no daemon answers on the socket.
pub fn request_as(
    data_root: &Path,
    req: &Request,
    actor: Option<&str>,
) -> std::io::Result<Option<Reply>> {
    use std::io::ErrorKind;
    let mut s = match std::os::unix::net::UnixStream::connect(socket_path(data_root)) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(std::io::Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{}: {e}; only root and the daemon's user may use the control socket",
                    socket_path(data_root).display()
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    let envelope = ControlRequest {
        request: req.clone(),
        actor: actor.map(str::to_owned),
    };
    let mut line = serde_json::to_vec(&envelope).map_err(std::io::Error::other)?;
    if line.len() as u64 >= MAX_REQUEST {
        // The daemon would cut it off and answer a confusing parse error.
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the request is {} bytes, more than the {MAX_REQUEST} the daemon reads in one \
                 request; split the file",
                line.len()
            ),
        ));
    }
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    serde_json::from_str(&reply)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("bad reply from the daemon: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth::Role;

    fn ops() -> (tempfile::TempDir, Ops) {
        let d = tempfile::tempdir().unwrap();
        let index = crate::store::index::Index::open(&d.path().join("g.redb")).unwrap();
        let queue = Queue::new(Arc::new(index), false);
        let ops = Ops::offline(queue, vec!["pacs".into()]).unwrap();
        (d, ops)
    }

    #[test]
    fn requests_carry_an_optional_actor_and_hide_passwords() {
        let req = ControlRequest {
            request: Request::UserAdd {
                name: "alice".into(),
                role: Role::Admin,
                password: Secret("correct horse battery".into()),
            },
            actor: Some("cli:root".into()),
        };
        let line = serde_json::to_string(&req).unwrap();
        assert!(line.contains(r#""op":"user-add""#) && line.contains(r#""actor":"cli:root""#));
        assert_eq!(serde_json::from_str::<ControlRequest>(&line).unwrap(), req);
        assert!(!format!("{req:?}").contains("horse"));
        // A request without an actor (an older CLI) still parses.
        let old: ControlRequest =
            serde_json::from_str(r#"{"op":"pause","destination":"pacs"}"#).unwrap();
        assert_eq!(old.actor, None);
        assert_eq!(
            old.request,
            Request::Pause {
                destination: "pacs".into()
            }
        );
    }

    #[test]
    fn changes_are_audited_with_the_caller_and_reads_are_not() {
        let (_d, ops) = ops();
        let pause = Request::Pause {
            destination: "pacs".into(),
        };
        ops.execute_as(&pause, "cli:alice", CLI_SOURCE).unwrap();
        ops.execute_as(&Request::Stats, "cli:alice", CLI_SOURCE)
            .unwrap();
        ops.execute(&Request::Resume {
            destination: "pacs".into(),
        })
        .unwrap();
        let out = ops
            .execute_as(
                &Request::TokenCreate {
                    role: Role::Viewer,
                    name: "grafana".into(),
                },
                "cli:bob",
                CLI_SOURCE,
            )
            .unwrap();
        let token = out[0]["token"].as_str().unwrap().to_owned();
        // A failed change is not recorded.
        assert!(matches!(
            ops.execute_as(
                &Request::Pause {
                    destination: "nowhere".into()
                },
                "cli:alice",
                CLI_SOURCE
            ),
            Err(OpError::Usage(_))
        ));
        let log = crate::audit::list(ops.db(), 0, 10).unwrap();
        let seen: Vec<_> = log
            .iter()
            .map(|e| (e.actor.as_str(), e.source.as_str(), e.action.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("cli:alice", "cli", "queue.pause"),
                ("cli:bob", "cli", "token.create")
            ]
        );
        assert!(
            !log[1].details.contains(&token),
            "the token is never logged"
        );
        let v = ops.execute(&Request::AuditVerify { anchor: None }).unwrap();
        assert_eq!(
            (v[0]["ok"].as_bool(), v[0]["entries"].as_u64()),
            (Some(true), Some(2))
        );
    }

    fn worklist_doc(items: &[(&str, &str)]) -> String {
        let items: Vec<Value> = items
            .iter()
            .map(|(acc, sps)| {
                json!({
                    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
                    "00100020": {"vr": "LO", "Value": ["P1"]},
                    "00080050": {"vr": "SH", "Value": [acc]},
                    "00401001": {"vr": "SH", "Value": ["RP1"]},
                    "00400100": {"vr": "SQ", "Value": [{
                        "00080060": {"vr": "CS", "Value": ["CT"]},
                        "00400001": {"vr": "AE", "Value": ["CT1"]},
                        "00400002": {"vr": "DA", "Value": ["20260115"]},
                        "00400009": {"vr": "SH", "Value": [sps]}
                    }]}
                })
            })
            .collect();
        Value::Array(items).to_string()
    }

    #[test]
    fn worklist_import_upserts_by_order_key_and_is_audited() {
        let (d, ops) = ops();
        let import = |doc: String| Request::WorklistImport { document: doc };
        // Without the store: refused, naming why.
        let e = ops
            .execute_as(
                &import(worklist_doc(&[("A", "S1")])),
                "cli:alice",
                CLI_SOURCE,
            )
            .unwrap_err();
        assert!(
            matches!(&e, OpError::Usage(m) if m.contains("worklist service")),
            "{e}"
        );
        let store = Arc::new(crate::worklist::WorklistStore::open_in(d.path()).unwrap());
        let ops = ops.with_worklist(store.clone());

        let v = ops
            .execute_as(
                &import(worklist_doc(&[("A", "S1"), ("B", "S1")])),
                "cli:alice",
                CLI_SOURCE,
            )
            .unwrap();
        assert_eq!(
            (v[0]["created"].as_u64(), v[0]["updated"].as_u64()),
            (Some(2), Some(0))
        );
        // The same export again, plus one new order: nothing fails, nothing is duplicated.
        let v = ops
            .execute_as(
                &import(worklist_doc(&[("A", "S1"), ("B", "S1"), ("C", "S1")])),
                "cli:alice",
                CLI_SOURCE,
            )
            .unwrap();
        assert_eq!(
            (v[0]["created"].as_u64(), v[0]["updated"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(store.count(), 3);

        // Bad input changes nothing and names the attribute and the index.
        let mut bad: Value =
            serde_json::from_str(&worklist_doc(&[("D", "S1"), ("E", "S1")])).unwrap();
        bad[1]["00400100"]["Value"][0]["00400002"] = json!({"vr": "DA", "Value": ["2026-01-15"]});
        let e = ops
            .execute_as(&import(bad.to_string()), "cli:alice", CLI_SOURCE)
            .unwrap_err();
        assert!(
            matches!(&e, OpError::Usage(m) if m.contains("array index 1") && m.contains("ScheduledProcedureStepStartDate (0040,0002)")),
            "{e}"
        );
        let e = ops
            .execute_as(
                &import(worklist_doc(&[("D", "S1"), ("D", "S1")])),
                "cli:alice",
                CLI_SOURCE,
            )
            .unwrap_err();
        assert!(
            matches!(&e, OpError::Usage(m) if m.contains("array index 1: same order key as array index 0")),
            "{e}"
        );
        assert_eq!(store.count(), 3);

        let listed = ops
            .execute(&Request::WorklistList {
                offset: 1,
                limit: 10,
            })
            .unwrap();
        let ids: Vec<_> = listed.iter().map(|v| v["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [2, 3]);

        let log = crate::audit::list(ops.db(), 0, 10).unwrap();
        let seen: Vec<_> = log
            .iter()
            .map(|e| (e.actor.as_str(), e.action.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("cli:alice", "worklist.import"),
                ("cli:alice", "worklist.import")
            ]
        );
        assert!(
            log[1].details.contains("\"updated\":[1,2]"),
            "{}",
            log[1].details
        );
    }

    #[test]
    fn users_through_ops() {
        let (_d, ops) = ops();
        let add = Request::UserAdd {
            name: "alice".into(),
            role: Role::Admin,
            password: Secret("short".into()),
        };
        assert!(
            matches!(ops.execute_as(&add, "cli:root", CLI_SOURCE), Err(OpError::Usage(m)) if m.contains("password"))
        );
        let add = Request::UserAdd {
            name: "alice".into(),
            role: Role::Admin,
            password: Secret("long enough password".into()),
        };
        let v = ops.execute_as(&add, "cli:root", CLI_SOURCE).unwrap();
        assert_eq!(v[0]["name"], "alice");
        assert!(v[0].get("password_hash").is_none());
        assert!(matches!(
            ops.execute_as(&add, "cli:root", CLI_SOURCE),
            Err(OpError::Usage(_))
        ));
        let users = ops.execute(&Request::UserList).unwrap();
        assert_eq!(users.len(), 1);
        let rm = Request::UserRemove {
            name: "alice".into(),
        };
        ops.execute_as(&rm, "cli:root", CLI_SOURCE).unwrap();
        assert!(matches!(
            ops.execute_as(&rm, "cli:root", CLI_SOURCE),
            Err(OpError::Usage(_))
        ));
        let log = crate::audit::list(ops.db(), 0, 10).unwrap();
        let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["user.add", "user.remove"]);
        assert!(!log[0].details.contains("long enough"));
    }

    use crate::audit::fault::{break_audit_log, repair_audit_log};

    #[test]
    fn a_queue_change_whose_audit_entry_cannot_be_written_is_not_made() {
        let (_d, ops) = ops();
        let pause = Request::Pause {
            destination: "pacs".into(),
        };
        let broken = break_audit_log(ops.db());
        let e = ops.execute_as(&pause, "cli:alice", CLI_SOURCE).unwrap_err();
        assert!(
            matches!(&e, OpError::Failed(m) if m.contains("the change was not made")),
            "{e}"
        );
        let retry = Request::Retry {
            destination: "pacs".into(),
            job: None,
        };
        assert!(matches!(
            ops.execute_as(&retry, "cli:alice", CLI_SOURCE),
            Err(OpError::Failed(_))
        ));
        let stats = ops.execute(&Request::Stats).unwrap();
        assert_eq!(stats[0]["paused"], false, "not paused: {stats:?}");
        // Without an actor (execute) nothing is audited, so nothing stands in the way.
        ops.execute(&pause).unwrap();
        ops.execute(&Request::Resume {
            destination: "pacs".into(),
        })
        .unwrap();
        repair_audit_log(ops.db(), broken);
        ops.execute_as(&pause, "cli:alice", CLI_SOURCE).unwrap();
        let stats = ops.execute(&Request::Stats).unwrap();
        assert_eq!(stats[0]["paused"], true);
        let log = crate::audit::list(ops.db(), 0, 10).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].action, "queue.pause");
        assert!(crate::audit::verify(ops.db()).unwrap().ok);
    }

    #[test]
    fn a_worklist_import_whose_drain_fails_waits_in_the_outbox_and_is_audited_once_later() {
        let (d, ops) = ops();
        let store = Arc::new(crate::worklist::WorklistStore::open_in(d.path()).unwrap());
        let ops = ops.with_worklist(store.clone());
        let import = |acc: &str| Request::WorklistImport {
            document: worklist_doc(&[(acc, "S1")]),
        };
        let broken = break_audit_log(ops.db());
        let e = ops
            .execute_as(&import("A"), "cli:alice", CLI_SOURCE)
            .unwrap_err();
        // The import stands, the answer says where its entry is and when it will be written.
        assert!(
            matches!(&e, OpError::Failed(m) if m.contains("the change was made")
                && m.contains("outbox") && m.contains("next drain")),
            "{e}"
        );
        assert_eq!(store.count(), 1);
        assert_eq!(crate::audit::outbox::pending(store.database()).unwrap(), 1);
        repair_audit_log(ops.db(), broken);
        ops.execute_as(&import("B"), "cli:bob", CLI_SOURCE).unwrap();
        assert_eq!(crate::audit::outbox::pending(store.database()).unwrap(), 0);
        let log = crate::audit::list(ops.db(), 0, 10).unwrap();
        let seen: Vec<_> = log
            .iter()
            .map(|e| (e.actor.as_str(), e.action.as_str(), e.details.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "cli:alice",
                    "worklist.import",
                    r#"{"created":[1],"updated":[]}"#
                ),
                (
                    "cli:bob",
                    "worklist.import",
                    r#"{"created":[2],"updated":[]}"#
                )
            ]
        );
        assert!(crate::audit::verify(ops.db()).unwrap().ok);
    }
}
