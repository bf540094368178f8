//! Queue operations for operators: list jobs, counts, retry dead letters, replay a study,
//! pause and resume a destination.
//!
//! The same [`Ops`] serve the CLI and (later) the admin API. While the daemon runs, the
//! database is locked by it, so the CLI sends its request as one JSON line over a Unix socket
//! in the data directory (`control.sock`, mode 0600: only the daemon's user and root) and the
//! daemon executes it — pause and retry then take effect at once. Without a daemon the CLI
//! opens the database itself.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::forwarder::Shared;
use super::{JobState, Queue, QueueError};
use crate::commit::timestamp_us;

/// Most jobs one list returns.
pub const MAX_LIST: usize = 100_000;

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
}

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
    /// Destination names requests may use (configured ones; offline also those in the queue).
    known: Vec<String>,
    forwarder: Option<Arc<Shared>>,
}

impl Ops {
    /// Operations inside the daemon: names are the forwarder's destinations.
    pub fn live(queue: Queue, forwarder: Arc<Shared>) -> Self {
        Self {
            queue,
            known: forwarder.names(),
            forwarder: Some(forwarder),
        }
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
        })
    }

    fn check(&self, dest: &str) -> Result<(), OpError> {
        if self.known.iter().any(|k| k == dest) {
            Ok(())
        } else {
            Err(OpError::Usage(format!(
                "unknown destination {dest:?} (known: {})",
                if self.known.is_empty() {
                    "none".to_owned()
                } else {
                    self.known.join(", ")
                }
            )))
        }
    }

    fn wake(&self, dest: &str) {
        if let Some(f) = &self.forwarder {
            f.wake(dest);
        }
    }

    /// Runs one request; the result is the lines to print.
    pub fn execute(&self, req: &Request) -> Result<Vec<Value>, OpError> {
        let now = timestamp_us();
        match req {
            Request::Stats => Ok(self
                .queue
                .stats(&self.known)?
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
                let n = self.queue.retry_dead(destination, *job, now)?;
                self.wake(destination);
                tracing::info!(destination = %destination, jobs = n, "dead jobs queued again");
                Ok(vec![json!({ "retried": n })])
            }
            Request::Replay { destination, study } => {
                self.check(destination)?;
                crate::store::uid::validate_uid(study)
                    .map_err(|e| OpError::Usage(format!("study {study:?}: {e}")))?;
                let n = self.queue.replay_study(destination, study, now)?;
                self.wake(destination);
                tracing::info!(destination = %destination, study = %study, jobs = n, "study replayed");
                Ok(vec![json!({ "queued": n })])
            }
            Request::Pause { destination } | Request::Resume { destination } => {
                self.check(destination)?;
                let paused = matches!(req, Request::Pause { .. });
                self.queue.set_paused(destination, paused)?;
                if let Some(f) = &self.forwarder {
                    f.set_paused(destination, paused);
                }
                tracing::info!(destination = %destination, paused, "destination pause state changed");
                Ok(vec![
                    json!({ "destination": destination, "paused": paused }),
                ])
            }
            Request::TokenCreate { role, name } => {
                let (token, rec) = crate::http::auth::create_token(
                    self.queue.index().database(),
                    *role,
                    name,
                    now,
                    0,
                )
                .map_err(|e| OpError::Failed(e.message))?;
                tracing::info!(id = %rec.id, role = %rec.role, name = %rec.name, "API token created");
                Ok(vec![
                    json!({ "token": token, "id": rec.id, "role": rec.role, "name": rec.name }),
                ])
            }
        }
    }

    /// Runs a request and wraps the result for the socket.
    pub fn reply(&self, req: &Request) -> Reply {
        match self.execute(req) {
            Ok(v) => Reply::Ok(v),
            Err(OpError::Usage(m)) => Reply::Usage(m),
            Err(OpError::Failed(m)) => Reply::Failed(m),
        }
    }
}

/// Where the control socket lives.
pub fn socket_path(data_root: &Path) -> PathBuf {
    data_root.join("control.sock")
}

/// Binds the control socket (replacing a stale one left by a killed daemon), mode 0600.
pub fn bind(data_root: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_root);
    let _ = std::fs::remove_file(&path);
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
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r.take(1 << 20));
            let reply = match r.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<Request>(&line) {
                    // Queue operations are short redb transactions: run them off the runtime.
                    Ok(req) => tokio::task::spawn_blocking(move || ops.reply(&req))
                        .await
                        .unwrap_or_else(|e| Reply::Failed(e.to_string())),
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

/// Sends a request to a running daemon. `Ok(None)`: no daemon answers on the socket.
pub fn request(data_root: &Path, req: &Request) -> std::io::Result<Option<Reply>> {
    use std::io::ErrorKind;
    let mut s = match std::os::unix::net::UnixStream::connect(socket_path(data_root)) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    serde_json::from_str(&reply)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("bad reply from the daemon: {e}")))
}
