//! The admin API, metrics and health probes: hyper on its own thread with a small
//! current-thread tokio runtime, so administration never competes with the ingest cores.
//!
//! Routes: `GET /healthz` (alive), `GET /readyz` (database, listeners, disk), `GET /metrics`
//! (Prometheus), `GET /api/v1/openapi.json`, and the JSON resources under `/api/v1/`
//! ([`resources`]), every one of which needs a bearer token ([`auth`]). HTTPS (rustls) when a
//! certificate is configured; without one the listener must be loopback (enforced by the
//! config).

pub mod auth;
pub mod error;
pub mod pacer;
pub mod resources;
pub mod ui;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use tracing::{debug, error, info, warn};

use crate::clock::timestamp_us;
use crate::config::HttpSettings;
use crate::control::Ops;
use crate::queue::forwarder::Shared as ForwarderShared;
use crate::store::index::Index;
use crate::store::{DataDir, DiskGuard};
pub use error::ApiError;

/// Response body: a whole buffer or a stream (file downloads).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// The OpenAPI document of `/api/v1`, kept in the repository and served as is.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// Largest request body accepted (JSON only: objects never come in over HTTP).
pub const MAX_BODY: usize = 1 << 20;

/// Everything a request handler may use.
#[derive(Debug)]
pub struct ApiState {
    /// The index (and the whole gateway database).
    pub index: Arc<Index>,
    /// Queue operations (shared with the CLI's control socket).
    pub ops: Arc<Ops>,
    /// The queue itself (counts for metrics).
    pub queue: crate::queue::Queue,
    /// The running forwarder.
    pub forwarder: Arc<ForwarderShared>,
    /// Destinations and routes, changeable at run time (validated, persisted, applied).
    pub live: Arc<crate::queue::live::LiveConfig>,
    /// The data directory.
    pub data: DataDir,
    /// The disk high-water mark.
    pub disk: DiskGuard,
    /// Core threads currently accepting DICOM associations.
    pub cores_listening: Arc<AtomicUsize>,
    /// Core threads started.
    pub cores: usize,
    /// Open DICOM associations (all cores).
    pub associations_active: Arc<AtomicUsize>,
    /// The I/O backend in use.
    pub io_backend: &'static str,
    /// Lifetime of login tokens.
    pub login_token_ttl: Duration,
    /// Process start, µs since the Unix epoch.
    pub started_at_us: u64,
    /// The worklist and MPPS store, when this process runs the worklist service (`None` with
    /// `--only store`: the worklist routes then answer 404 naming the reason).
    pub worklist: Option<Arc<crate::worklist::store::WorklistStore>>,
    /// Paces every request but the health probes (`[http] max_requests_per_second`).
    pub pacer: pacer::Pacer,
    /// Lets index reads wait for the checkpoint of every acknowledged object (`None`
    /// without a store service).
    pub settle: Option<crate::ingest::Settle>,
}

/// What a resource handler gets besides the request.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// Shared state.
    pub state: &'a ApiState,
    /// The authenticated caller.
    pub principal: auth::Principal,
    /// The peer's address (for the audit log).
    pub peer: SocketAddr,
}

/// A JSON response.
pub fn json_response(status: u16, value: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    bytes_response(status, "application/json", body)
}

/// A response from bytes.
pub fn bytes_response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static header names and values are valid")
}

/// The error's JSON response.
pub fn error_response(e: &ApiError) -> Response<Body> {
    if e.status >= 500 {
        error!(status = e.status, code = e.code, message = %e.message, "API error");
    } else {
        debug!(status = e.status, code = e.code, message = %e.message, "API request refused");
    }
    let mut r = json_response(e.status, &e.body());
    if e.status == 401 {
        r.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// Binds the API listener (before readiness, so a taken port fails start-up clearly).
pub fn bind(settings: &HttpSettings) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(settings.listen)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Loads the TLS certificate chain and key into a rustls server configuration.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key do not work together: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Nice value of the API thread and its blocking pool: administration yields the CPU to the
/// ingest cores and the journal writer when they compete (measured in docs/benchmarks.md: a
/// saturating study search at normal priority took about a core from ingest on 2 vCPUs).
pub const API_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`API_NICE`] (Linux: per-thread nice).
/// Best effort: if it fails, the API still works, at normal priority.
fn lower_priority() {
    crate::rt::lower_thread_priority(API_NICE);
}

/// The running API thread.
#[derive(Debug)]
pub struct HttpServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `listener` on a thread of its own.
    pub fn start(
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        state: Arc<ApiState>,
    ) -> std::io::Result<Self> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                lower_priority();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_start(lower_priority)
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(error = %e, "cannot start the API runtime");
                        return;
                    }
                };
                // The console's ingest history (GET /api/v1/stats/history).
                rt.spawn(resources::console::sample_loop());
                rt.block_on(accept_loop(listener, tls, state, stop_rx));
            })?;
        Ok(Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops accepting and ends the thread (open connections are dropped).
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Longest a client may take to send a request's headers (the slowloris defence; hyper's
/// own timer). Would be `[http] header_read_timeout_seconds` if it ever needs tuning.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a connection may stay without a byte read or written while no request is being
/// handled: idle keep-alive connections, silent ones that never send a request, clients that
/// stop reading a response. Would be `[http] idle_timeout_seconds`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest from a request's headers to its response's headers: covers reading the body (a
/// client trickling its body is cut off) and the handler. Answered 408. Would be
/// `[http] request_timeout_seconds`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Most API connections open at once (HTTP or HTTPS); more are closed right after `accept`.
/// The API shares the process's descriptor table with the DICOM listeners, so it must never
/// be able to use it up: this keeps the rest for ingest. Would be `[http] max_connections`.
pub const MAX_CONNECTIONS: usize = 256;

/// Longest a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<ApiState>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "API listener unusable");
            return;
        }
    };
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut last_full_warning: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closing at once costs nothing; keeping it would cost a descriptor.
            drop(stream);
            if last_full_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                warn!(%peer, max = MAX_CONNECTIONS, "API connection limit reached; new connections are closed");
                last_full_warning = Some(std::time::Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Arc::new(Activity::new());
            let stream = Tracked {
                inner: stream,
                activity: activity.clone(),
            };
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let busy = activity.busy();
                    async move {
                        let _busy = busy;
                        let rsp =
                            match tokio::time::timeout(REQUEST_TIMEOUT, handle(req, &state, peer))
                                .await
                            {
                                Ok(r) => r,
                                Err(_) => {
                                    debug!(%peer, "API request timed out");
                                    let mut r = error_response(&ApiError::new(
                                        408,
                                        "request_timeout",
                                        format!(
                                            "the request was not received and answered within {} s",
                                            REQUEST_TIMEOUT.as_secs()
                                        ),
                                    ));
                                    r.headers_mut().insert(
                                        hyper::header::CONNECTION,
                                        hyper::header::HeaderValue::from_static("close"),
                                    );
                                    r
                                }
                            };
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
                })
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let result = match acceptor {
                Some(a) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, a.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let conn =
                                builder.serve_connection(hyper_util::rt::TokioIo::new(s), service);
                            until_idle(conn, &activity).await
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    let conn =
                        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    until_idle(conn, &activity).await
                }
            };
            match result {
                Some(Err(e)) => debug!(%peer, error = %e, "API connection ended with an error"),
                Some(Ok(())) => {}
                None => debug!(%peer, "API connection closed: idle"),
            }
        });
    }
}

/// Drives a connection until it ends, or until it has been idle ([`IDLE_TIMEOUT`] without a
/// byte in either direction and no request being handled): then it is dropped (`None`).
async fn until_idle<F: std::future::Future>(conn: F, activity: &Activity) -> Option<F::Output> {
    tokio::pin!(conn);
    loop {
        let now = std::time::Instant::now();
        let deadline = if activity.handling() {
            now + IDLE_TIMEOUT
        } else {
            let last = activity.last();
            if now.saturating_duration_since(last) >= IDLE_TIMEOUT {
                return None;
            }
            last + IDLE_TIMEOUT
        };
        tokio::select! {
            r = &mut conn => return Some(r),
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

/// When a connection last moved a byte, and whether a request is being handled on it.
#[derive(Debug)]
struct Activity {
    start: std::time::Instant,
    /// Milliseconds from `start` to the last byte read or written.
    last_ms: std::sync::atomic::AtomicU64,
    /// Requests being handled (0 or 1 with HTTP/1.1).
    handling: Arc<AtomicUsize>,
}

/// Marks a request as being handled while it lives.
struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
            handling: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> std::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn busy(&self) -> Busy {
        self.handling.fetch_add(1, Ordering::AcqRel);
        Busy(self.handling.clone())
    }

    fn handling(&self) -> bool {
        self.handling.load(Ordering::Acquire) > 0
    }
}

/// A stream that records its [`Activity`] (under TLS too: it wraps the TCP stream).
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The 503 of a request whose turn would come too late.
fn busy_response(retry: Duration) -> Response<Body> {
    let mut rsp = error_response(&ApiError::new(
        503,
        "busy",
        format!(
            "more than [http] max_requests_per_second requests are waiting; retry in {} s",
            retry.as_secs() + 1
        ),
    ));
    if let Ok(v) = hyper::header::HeaderValue::from_str(&(retry.as_secs() + 1).to_string()) {
        rsp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    rsp
}

/// Waits for the request's turn: `Err` with the 503 if it would come too late.
async fn pace(reservation: Result<Duration, Duration>) -> Result<(), Response<Body>> {
    match reservation {
        Ok(wait) if wait.is_zero() => Ok(()),
        Ok(wait) => {
            tokio::time::sleep(wait).await;
            Ok(())
        }
        Err(retry) => Err(busy_response(retry)),
    }
}

/// Routes one request. Order: probes (never paced), then authentication (a BLAKE3 lookup),
/// then pacing — requests with a valid token in the shared budget, all others in their source
/// address's own budget ([`pacer`]) — then the handler.
async fn handle(req: Request<Incoming>, state: &ApiState, peer: SocketAddr) -> Response<Body> {
    let mut rsp = route(req, state, peer).await;
    ui::security_headers(rsp.headers_mut());
    rsp
}

/// Routes one request (the answer gets its security headers in [`handle`]).
async fn route(req: Request<Incoming>, state: &ApiState, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let get = method == hyper::Method::GET || method == hyper::Method::HEAD;
    // Console files are constant and public: not paced (see ui).
    if ui::is_console_path(&path) {
        return ui::serve(&method, &path, req.headers()).unwrap_or_else(|e| error_response(&e));
    }
    if path == "/healthz" && get {
        return json_response(200, &json!({ "status": "alive" }));
    }
    if path == "/readyz" && get {
        return readyz(state);
    }
    let api_call = (path == "/api/v1" || path.starts_with("/api/v1/"))
        && path != "/api/v1/auth/login"
        && path != "/api/v1/openapi.json";
    let principal = if api_call {
        let authorization = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        Some(auth::authenticate(
            state.index.database(),
            authorization,
            timestamp_us(),
        ))
    } else {
        None
    };
    let now = std::time::Instant::now();
    let reservation = match &principal {
        Some(Ok(_)) => state.pacer.reserve(now),
        _ => state.pacer.reserve_unauthenticated(peer.ip(), now),
    };
    if let Err(rsp) = pace(reservation).await {
        return rsp;
    }
    let result = match (path.as_str(), principal) {
        ("/metrics", _) if get => Ok(metrics(state)),
        ("/api/v1/openapi.json", _) if get => Ok(bytes_response(200, "application/json", OPENAPI)),
        ("/healthz" | "/readyz" | "/metrics" | "/api/v1/openapi.json", _) => Err(
            ApiError::method_not_allowed(format!("{path} supports GET only")),
        ),
        // Login is the one call that needs no token: it is how a user gets one.
        ("/api/v1/auth/login", _) => resources::login(req, state, peer).await,
        (_, Some(principal)) => match principal {
            Ok(principal) => api(req, state, peer, principal).await,
            Err(e) => Err(e),
        },
        _ => Err(ApiError::not_found(format!("no such path {path}"))),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

async fn api(
    req: Request<Incoming>,
    state: &ApiState,
    peer: SocketAddr,
    principal: auth::Principal,
) -> Result<Response<Body>, ApiError> {
    if reads_the_index(req.method(), req.uri().path()) {
        if let Some(s) = &state.settle {
            // Every object acknowledged before this request is indexed before it is answered.
            if !s.settle(crate::ingest::READ_WAIT).await {
                tracing::warn!("the ingest checkpoint did not come within {:?}: answering from the index as it stands", crate::ingest::READ_WAIT);
            }
        }
    }
    resources::dispatch(
        req,
        Ctx {
            state,
            principal,
            peer,
        },
    )
    .await
}

/// Reads that must see every acknowledged object: studies, series, instances (and their
/// files), patients, forwarding jobs; and a study move (`POST /studies/{uid}/move`), which
/// queues every instance of the study acknowledged so far.
fn reads_the_index(method: &hyper::Method, path: &str) -> bool {
    if method == hyper::Method::POST
        && path.starts_with("/api/v1/studies/")
        && path.ends_with("/move")
    {
        return true;
    }
    (method == hyper::Method::GET || method == hyper::Method::HEAD)
        && [
            "/api/v1/studies",
            "/api/v1/series",
            "/api/v1/instances",
            "/api/v1/patients",
            "/api/v1/queue",
        ]
        .iter()
        .any(|p| {
            path == *p || path.starts_with(&format!("{p}/")) || path.starts_with(&format!("{p}?"))
        })
}

fn readyz(state: &ApiState) -> Response<Body> {
    let (ok, checks) = ready_checks(state);
    json_response(
        if ok { 200 } else { 503 },
        &json!({ "ready": ok, "checks": checks }),
    )
}

/// The checks of `/readyz`: whether all pass, and each one's result.
fn ready_checks(state: &ApiState) -> (bool, serde_json::Map<String, Value>) {
    use redb::ReadableDatabase;
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    let mut check = |name: &str, result: Result<(), String>| {
        ok &= result.is_ok();
        checks.insert(
            name.to_owned(),
            match result {
                Ok(()) => json!({ "ok": true }),
                Err(m) => json!({ "ok": false, "message": m }),
            },
        );
    };
    check(
        "database",
        state
            .index
            .database()
            .begin_read()
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    let listening = state.cores_listening.load(Ordering::Acquire);
    check(
        "dicom_listeners",
        if listening == state.cores {
            Ok(())
        } else {
            Err(format!(
                "{listening} of {} core threads are accepting associations",
                state.cores
            ))
        },
    );
    check("disk", state.disk.check().map_err(|e| e.to_string()));
    if let Some(s) = &state.settle {
        check("ingest", s.progress().readiness());
    }
    check(
        "components",
        crate::health::failed().map_or(Ok(()), |f| Err(format!("failed: {f}"))),
    );
    (ok, checks)
}

fn metrics(state: &ApiState) -> Response<Body> {
    let queue = match state.queue.stats(&state.forwarder.names()) {
        Ok(q) => q,
        Err(e) => {
            error!(error = %e, "metrics: queue counts unavailable");
            Vec::new()
        }
    };
    let (disk_total_bytes, disk_free_bytes) =
        crate::store::disk_usage(state.data.root()).unwrap_or((0, 0));
    let mut text = crate::metrics::render(&crate::metrics::Snapshot {
        queue,
        disk_total_bytes,
        disk_free_bytes,
        io_backend: state.io_backend.to_owned(),
    });
    // What the alert rules need besides the counters (packaging/prometheus-alerts.yml):
    // readiness as /readyz sees it, and the high-water mark to compare disk usage with.
    let (ready, _) = ready_checks(state);
    text.push_str(&format!(
        "# HELP dicomgw_ready 1 when /readyz answers 200 (database, DICOM listeners, disk below the high-water mark).\n\
         # TYPE dicomgw_ready gauge\n\
         dicomgw_ready {}\n\
         # HELP dicomgw_disk_high_water_ratio [store] disk_high_water_percent as a ratio: C-STORE answers A700 once disk usage reaches it.\n\
         # TYPE dicomgw_disk_high_water_ratio gauge\n\
         dicomgw_disk_high_water_ratio {}\n",
        u8::from(ready),
        f64::from(state.disk.high_water_percent()) / 100.0
    ));
    bytes_response(200, "text/plain; version=0.0.4; charset=utf-8", text)
}

/// Logs that the API is up.
pub fn announce(addr: SocketAddr, https: bool) {
    info!(%addr, https, "admin API listening");
}
