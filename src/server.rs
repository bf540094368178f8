//! Wires the daemon together: data directory, index, committer, one thread per core with its
//! own runtime and `SO_REUSEPORT` listener, and shutdown in phases.
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting; let associations finish for the grace period;
//! abort what is left; the committer finishes every object already handed to it (so each
//! association that got far enough is answered) and the process exits 0.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::commit::{Committer, CommitterConfig};
use crate::config::RetentionMode;
use crate::config::Settings;
use crate::control::{self, Ops};
use crate::http::{self, ApiState, HttpServer};
use crate::net::scp::{serve_association, CoreCtx, Phase};
use crate::net::services::storage::SopClassPolicy;
use crate::net::ul::association::AcceptorPolicy;
use crate::net::worklist_scp::{self, WorklistScp};
use crate::queue::forwarder::Forwarder;
use crate::queue::live::{self, LiveConfig};
use crate::queue::retention::Sweeper;
use crate::queue::routing::Routing;
use crate::queue::Queue;
use crate::rt::{self, Backend, Epoll, Io, Uring};
use crate::store::index::Index;
use crate::store::{DataDir, DiskGuard};
use crate::worklist::WorklistStore;
use arc_swap::ArcSwap;

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The index could not be opened.
    #[error("index {path}: {source}")]
    Index {
        /// The database file.
        path: std::path::PathBuf,
        /// Why.
        source: crate::store::index::IndexError,
    },
    /// The requested backend is unavailable.
    #[error(transparent)]
    Backend(#[from] rt::UringUnavailable),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    /// The stored (API-managed) configuration is unusable.
    #[error("stored configuration: {0}")]
    Config(String),
    /// The API's TLS certificate or key is unusable.
    #[error("admin API TLS: {0}")]
    Tls(String),
    /// The worklist database could not be opened.
    #[error("worklist database in {path}: {source}")]
    Worklist {
        /// The data directory.
        path: std::path::PathBuf,
        /// Why.
        source: crate::worklist::WorklistStoreError,
    },
}

/// Facts about a started daemon, for the caller's readiness report.
#[derive(Debug, Clone)]
pub struct Started {
    /// The store service's bound address (port resolved when 0 was asked); `None` with
    /// `--only worklist`.
    pub store_addr: Option<SocketAddr>,
    /// The worklist service's bound address; `None` with `--only store`.
    pub worklist_addr: Option<SocketAddr>,
    /// The I/O backend running.
    pub backend: Backend,
    /// The admin API's bound address.
    pub http_addr: SocketAddr,
    /// Whether the admin API speaks HTTPS.
    pub https: bool,
}

/// Runs the daemon until `shutdown` resolves, then shuts down in phases.
pub fn serve(
    settings: Settings,
    on_ready: impl FnOnce(&Started),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (data, removed) =
        DataDir::prepare(&settings.data_dir).map_err(|source| ServeError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
    if removed > 0 {
        warn!(
            removed,
            "removed leftover temporary files of unfinished receptions"
        );
    }
    let index_path = data.index_path();
    let index = Arc::new(
        Index::open(&index_path).map_err(|source| ServeError::Index {
            path: index_path.clone(),
            source,
        })?,
    );
    let backend = rt::resolve(settings.io)?;
    crate::metrics::init(settings.threads);
    info!(backend = backend.name(), threads = settings.threads, data_dir = %data.root().display(), durability = ?settings.durability, "starting");

    let gateway_mode = settings.retention.mode == RetentionMode::Gateway;
    let queue = Queue::new(index.clone(), gateway_mode);
    let (destinations, routes, from_db) = live::effective(
        &index,
        settings.destinations.clone(),
        settings.routes.clone(),
        &settings.store.ae_title,
    )
    .map_err(ServeError::Config)?;
    if from_db && (!settings.destinations.is_empty() || !settings.routes.is_empty()) {
        warn!("destinations and routes were changed through the admin API: the database copy is used and the config file's [[destinations]] and [[routes]] are ignored");
    }
    let forwarder = Forwarder::start(queue.clone(), data.clone(), destinations.clone())
        .map_err(ServeError::Thread)?;
    let (committer, committer_thread, _stats) = Committer::start(
        index.clone(),
        data.clone(),
        CommitterConfig {
            durability: settings.durability,
            duplicate_policy: settings.store.duplicate_policy,
            max_batch: settings.store.commit_max_batch,
            window: settings.store.commit_window,
            retire_unrouted: gateway_mode,
            wake: Some(forwarder.wake_handle()),
        },
    )
    .map_err(ServeError::Thread)?;
    let sweeper = if gateway_mode {
        Some(
            Sweeper::start(
                index.clone(),
                data.clone(),
                settings.retention.sweep_interval,
                settings.retention.delete_after,
            )
            .map_err(ServeError::Thread)?,
        )
    } else {
        None
    };
    // Without the socket the daemon still works; only the queue CLI cannot reach it.
    let control = control::bind(data.root())
        .inspect_err(|e| {
            warn!(path = %control::socket_path(data.root()).display(), error = %e,
                "cannot create the control socket; `dicom-gw queue` will not reach this daemon")
        })
        .ok();
    let routing = Arc::new(ArcSwap::from_pointee(Routing::new(routes.clone())));
    let live_config = Arc::new(LiveConfig::new(
        index.clone(),
        forwarder.shared().clone(),
        routing.clone(),
        settings.store.ae_title.clone(),
    ));
    let disk = DiskGuard::new(data.root(), settings.store.disk_high_water_percent);
    info!(
        destinations = destinations.len(),
        routes = routes.len(),
        retention = ?settings.retention.mode,
        "forwarding configured"
    );

    let store = &settings.store;
    let services = settings.services;
    let store_listen = store
        .net
        .listen
        .expect("TLS-only listeners are wired with the engine");
    let listeners = if services.store() {
        rt::bind_reuseport(store_listen, settings.threads).map_err(|source| ServeError::Bind {
            addr: store_listen,
            source,
        })?
    } else {
        Vec::new()
    };
    let store_addr = match listeners.first() {
        Some(l) => Some(l.local_addr().map_err(|source| ServeError::Bind {
            addr: store_listen,
            source,
        })?),
        None => None,
    };
    let worklist = if services.worklist() {
        let wl_store = Arc::new(WorklistStore::open_in(data.root()).map_err(|source| {
            ServeError::Worklist {
                path: data.root().to_path_buf(),
                source,
            }
        })?);
        let addr = settings
            .worklist
            .net
            .listen
            .expect("TLS-only listeners are wired with the engine");
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| ServeError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        info!(items = wl_store.count(), "worklist database open");
        Some((wl_store, listener, bound))
    } else {
        None
    };
    let worklist_addr = worklist.as_ref().map(|w| w.2);
    let worklist_store = worklist.as_ref().map(|w| w.0.clone());
    let mut ops = Ops::live(queue.clone(), forwarder.shared().clone());
    if let Some(w) = &worklist_store {
        ops = ops.with_worklist(w.clone());
    }
    let ops = Arc::new(ops);
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let active = Arc::new(AtomicUsize::new(0));
    let cores_listening = Arc::new(AtomicUsize::new(0));

    let tls = match &settings.http.tls {
        Some((cert, key)) => Some(http::tls_config(cert, key).map_err(ServeError::Tls)?),
        None => None,
    };
    let http_listener = http::bind(&settings.http).map_err(|source| ServeError::Bind {
        addr: settings.http.listen,
        source,
    })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            addr: settings.http.listen,
            source,
        })?;
    let api_state = Arc::new(ApiState {
        index: index.clone(),
        ops: ops.clone(),
        queue: queue.clone(),
        forwarder: forwarder.shared().clone(),
        live: live_config,
        data: data.clone(),
        disk: disk.clone(),
        cores_listening: cores_listening.clone(),
        cores: if services.store() {
            settings.threads
        } else {
            0
        },
        associations_active: active.clone(),
        io_backend: backend.name(),
        login_token_ttl: settings.http.login_token_ttl,
        started_at_us: crate::commit::timestamp_us(),
        worklist: worklist_store,
        pacer: http::pacer::Pacer::new(settings.http.max_requests_per_second),
    });
    let https = tls.is_some();
    let http_server =
        HttpServer::start(http_listener, tls, api_state).map_err(ServeError::Thread)?;
    http::announce(http_addr, https);
    let policy = AcceptorPolicy {
        ae_title: store.ae_title.clone(),
        require_called_ae_title: store.require_called_ae_title,
        allowed_calling_ae_titles: store.allowed_calling_ae_titles.clone(),
        max_pdu_length: store.max_pdu_length,
    };
    let sop_classes = Arc::new(SopClassPolicy::new(
        &store.extra_sop_classes,
        store.accept_any_storage_class,
    ));

    let mut cores = Vec::with_capacity(listeners.len());
    for (core, listener) in listeners.into_iter().enumerate() {
        let parts = CoreParts {
            core,
            policy: policy.clone(),
            sop_classes: sop_classes.clone(),
            max_associations: store.max_associations,
            active: active.clone(),
            listening: cores_listening.clone(),
            acse_timeout: store.acse_timeout,
            dimse_timeout: store.dimse_timeout,
            data: data.clone(),
            committer: committer.clone(),
            routing: routing.clone(),
            disk: disk.clone(),
            phase: phase_rx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("core-{core}"))
            .spawn(move || {
                let result = match backend {
                    Backend::Uring => run_core::<Uring>(listener, parts),
                    Backend::Epoll => run_core::<Epoll>(listener, parts),
                };
                if let Err(e) = result {
                    error!(core, error = %e, "core stopped with an error");
                }
            })
            .map_err(ServeError::Thread)?;
        cores.push(handle);
    }
    drop(committer);
    await_cores_listening(&cores, &cores_listening);
    let worklist_thread = match worklist {
        Some((wl_store, listener, _)) => {
            let w = &settings.worklist;
            let scp = Arc::new(WorklistScp {
                store: wl_store,
                policy: AcceptorPolicy {
                    ae_title: w.ae_title.clone(),
                    require_called_ae_title: w.require_called_ae_title,
                    allowed_calling_ae_titles: w.allowed_calling_ae_titles.clone(),
                    max_pdu_length: store.max_pdu_length,
                },
                max_associations: w.max_associations,
                active: Arc::new(AtomicUsize::new(0)),
                acse_timeout: store.acse_timeout,
                dimse_timeout: store.dimse_timeout,
                max_results: w.max_results,
                phase: phase_rx.clone(),
            });
            Some(worklist_scp::spawn(listener, scp).map_err(ServeError::Thread)?)
        }
        None => None,
    };

    // Wait for the stop signal on a small runtime of our own. `shutdown` is polled once before
    // readiness is reported, so the signal handlers it installs are in place by then (a SIGTERM
    // right after the ready line must mean a clean stop, not the default action).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Thread)?;
    rt.block_on(async {
        let mut shutdown = std::pin::pin!(shutdown);
        let early = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(shutdown.as_mut().poll(cx).is_ready())
        })
        .await;
        on_ready(&Started {
            store_addr,
            worklist_addr,
            backend,
            http_addr,
            https,
        });
        if let Some(addr) = store_addr {
            info!(%addr, ae_title = %store.ae_title, "store service listening");
        }
        if let Some(addr) = worklist_addr {
            info!(%addr, ae_title = %settings.worklist.ae_title, "worklist service listening");
        }
        if !early {
            match control {
                Some(control) => tokio::select! {
                    _ = shutdown => {}
                    _ = control::serve(control, ops) => {}
                },
                None => shutdown.await,
            }
        }
    });
    info!(grace = ?settings.grace_period, active = active.load(Ordering::Acquire), "stopping: no new associations");
    let _ = phase_tx.send(Phase::Draining);
    let deadline = Instant::now() + settings.grace_period;
    while active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = active.load(Ordering::Acquire);
    if left > 0 {
        warn!(
            associations = left,
            "grace period over: aborting associations"
        );
    }
    let _ = phase_tx.send(Phase::Abort);
    for c in cores {
        let _ = c.join();
    }
    if let Some(t) = worklist_thread {
        let _ = t.join();
    }
    // Every core has dropped its committer handle: the committer drains and ends.
    let _ = committer_thread.join();
    http_server.stop();
    forwarder.stop();
    if let Some(s) = sweeper {
        s.stop();
    }
    let _ = std::fs::remove_file(control::socket_path(data.root()));
    info!("stopped");
    Ok(())
}

/// What a core thread is given (all `Send`); it builds its `Rc<CoreCtx>` on its own thread.
struct CoreParts {
    core: usize,
    policy: AcceptorPolicy,
    sop_classes: Arc<SopClassPolicy>,
    max_associations: usize,
    active: Arc<AtomicUsize>,
    listening: Arc<AtomicUsize>,
    acse_timeout: Duration,
    dimse_timeout: Duration,
    data: DataDir,
    committer: Committer,
    routing: Arc<ArcSwap<Routing>>,
    disk: DiskGuard,
    phase: watch::Receiver<Phase>,
}

fn run_core<I: Io>(listener: std::net::TcpListener, p: CoreParts) -> std::io::Result<()> {
    I::block_on(async move {
        let listener = match I::listener(listener) {
            Ok(l) => l,
            Err(e) => {
                error!(core = p.core, error = %e, "cannot use listener");
                return;
            }
        };
        let mut phase = p.phase.clone();
        p.listening.fetch_add(1, Ordering::AcqRel);
        let listening = p.listening.clone();
        let ctx = Rc::new(CoreCtx {
            core: p.core,
            policy: p.policy,
            sop_classes: p.sop_classes,
            max_associations: p.max_associations,
            active: p.active,
            acse_timeout: p.acse_timeout,
            dimse_timeout: p.dimse_timeout,
            data: p.data,
            committer: p.committer,
            routing: p.routing,
            disk: p.disk,
            phase: p.phase,
            temp_seq: Cell::new(0),
        });
        let mut tasks = tokio::task::JoinSet::new();
        // One accept stays in flight across loop turns: dropping an io_uring accept does not
        // cancel it in the kernel, so recreating it each turn would orphan connections.
        let mut accept = Box::pin(I::accept(&listener));
        loop {
            tokio::select! {
                accepted = &mut accept => {
                    accept = Box::pin(I::accept(&listener));
                    match accepted {
                        Ok((stream, peer)) => {
                            tasks.spawn_local(serve_association::<I>(stream, peer, ctx.clone()));
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                _ = phase.wait_for(|p| *p != Phase::Running) => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        drop(accept);
        drop(listener);
        listening.fetch_sub(1, Ordering::AcqRel);
        while tasks.join_next().await.is_some() {}
    })
}

/// Waits (bounded) until every core thread accepts associations, so the ready line and
/// `/readyz` agree: a probe right after the ready line must not see "1 of 2 core threads".
/// A core that fails to start ends its thread; readiness then reports it, not this wait.
fn await_cores_listening(cores: &[std::thread::JoinHandle<()>], listening: &AtomicUsize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while listening.load(Ordering::Acquire) < cores.len()
        && !cores.iter().any(|c| c.is_finished())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}
