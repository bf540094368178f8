//! Wires the daemon together: data directory, index, ingest pipeline, the DICOM ports (store and
//! worklist, plain and TLS) served by one thread per core with its own runtime, the admin API,
//! and shutdown in phases.
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting; let associations finish for the grace period;
//! abort what is left; the journal writer answers every object already handed to it (so each
//! association that got far enough is answered), the materializer runs its last checkpoint,
//! and the process exits 0 (1 after a vital failure, see `health`).

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::RetentionMode;
use crate::config::Settings;
use crate::control::{self, Ops};
use crate::http::{self, ApiState, HttpServer};
use crate::ingest::{Ingest, IngestConfig};
use crate::metrics::Service;
use crate::net::association::limits::Slots;
use crate::net::association::{self, Core, Phase, Port, Transport};
use crate::net::services::query_retrieve_find::QueryScp;
use crate::net::services::query_retrieve_move::RetrieveScp;
use crate::net::services::storage::{SopClassPolicy, StorageScp};
use crate::net::services::storage_commitment::CommitmentScp;
use crate::net::services::{Offer, WorklistScp};
use crate::net::ul::association::AcceptorPolicy;
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
    /// The ingest journal could not be opened or replayed.
    #[error("ingest journal: {0}")]
    Ingest(String),
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    /// The stored (API-managed) configuration is unusable.
    #[error("stored configuration: {0}")]
    Config(String),
    /// The API's TLS certificate or key is unusable.
    #[error("admin API TLS: {0}")]
    Tls(String),
    /// A vital component failed while serving (the daemon stopped; its supervisor should
    /// restart it).
    #[error("a vital component failed: {0}")]
    Failed(String),
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
    /// The store service's DICOM TLS address, if configured.
    pub store_tls_addr: Option<SocketAddr>,
    /// The worklist service's DICOM TLS address, if configured.
    pub worklist_tls_addr: Option<SocketAddr>,
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
    // A new index file's name, like the directories, must be durable before it is used.
    let _ = crate::store::fsync_dir(data.root());
    // Query/Retrieve rows for an index written before they existed (issue 13), or by an
    // older version since.
    match crate::store::query::mend(index.database()) {
        Ok(m) if m == crate::store::query::Mended::default() => {}
        Ok(m) => info!(
            added = m.added,
            removed = m.removed,
            "brought the Query/Retrieve index in step with the stored objects"
        ),
        Err(e) => {
            warn!(error = %e, "cannot bring the Query/Retrieve index in step with the stored objects; C-FIND may miss some or list removed ones")
        }
    }
    let backend = rt::resolve(settings.io)?;
    crate::metrics::init(settings.threads);
    info!(backend = backend.name(), threads = settings.threads, data_dir = %data.root().display(), durability = ?settings.durability, "starting");
    if settings.durability == crate::config::Durability::Full {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if !syncfs_reports_errors(release.trim()) {
            warn!(kernel = release.trim(), "this kernel's syncfs may not report writeback errors (Linux < 5.8): a failed write after a C-STORE's success could go unnoticed");
        }
    }

    let gateway_mode = settings.retention.mode == RetentionMode::Gateway;
    let queue = Queue::new(index.clone(), gateway_mode);
    match queue.mend_job_index() {
        Ok(None) => {}
        Ok(Some(jobs)) => info!(
            jobs,
            "rebuilt the forwarding queue's job index, which did not match its jobs"
        ),
        Err(e) => {
            warn!(error = %e, "cannot check the forwarding queue's job index; it stays as it was")
        }
    }
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
    let routing = Arc::new(ArcSwap::from_pointee(Routing::new(routes.clone())));
    // Recovery runs here, before any listener: objects acknowledged before the last stop
    // are indexed (and their jobs queued) before anything new is accepted.
    let ingest = {
        let mut cfg = IngestConfig::new(settings.durability, settings.store.duplicate_policy);
        cfg.max_batch = settings.store.commit_max_batch;
        cfg.groups_in_flight = settings.store.journal_groups_in_flight;
        cfg.window = settings.store.commit_window;
        cfg.retire_unrouted = gateway_mode;
        cfg.sync = settings.store.sync_method;
        cfg.checkpoint_interval = settings.store.checkpoint_interval;
        cfg.checkpoint_objects = settings.store.checkpoint_objects;
        cfg.max_pending_objects = settings.store.max_pending_objects;
        cfg.wake = Some(forwarder.wake_handle());
        let jcfg = crate::ingest::journal_config(
            settings.store.journal_segments,
            settings.store.journal_segment_size,
            settings.durability,
        );
        let dir = crate::ingest::journal_path(data.root());
        let storage = crate::store::journal::FileStorage::open(
            &dir,
            settings.durability,
            crate::store::journal::IoMode::Auto,
        )
        .map_err(|e| ServeError::Ingest(format!("open {}: {e}", dir.display())))?;
        Ingest::start(
            storage,
            jcfg,
            index.clone(),
            data.clone(),
            cfg,
            routing.clone(),
        )
        .map_err(|e| ServeError::Ingest(e.to_string()))?
    };
    let settle = ingest.settle.clone();
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
    let threads = settings.threads;
    let bind = |addr: SocketAddr| {
        rt::bind_shared(addr, threads).map_err(|source| ServeError::Bind { addr, source })
    };
    let local = |l: &[std::net::TcpListener], addr: SocketAddr| {
        l[0].local_addr()
            .map_err(|source| ServeError::Bind { addr, source })
    };
    // Listeners first: a port in use fails start-up before anything is served.
    let mut bound: Vec<(Service, Transport, Vec<std::net::TcpListener>)> = Vec::new();
    let (mut store_addr, mut store_tls_addr) = (None, None);
    let (mut worklist_addr, mut worklist_tls_addr) = (None, None);
    for (service, net, plain_out, tls_out) in [
        (
            Service::Store,
            &store.net,
            &mut store_addr,
            &mut store_tls_addr,
        ),
        (
            Service::Worklist,
            &settings.worklist.net,
            &mut worklist_addr,
            &mut worklist_tls_addr,
        ),
    ] {
        let wanted = match service {
            Service::Store => services.store(),
            _ => services.worklist(),
        };
        if !wanted {
            continue;
        }
        if let Some(addr) = net.listen {
            let l = bind(addr)?;
            *plain_out = Some(local(&l, addr)?);
            bound.push((service, Transport::Plain, l));
        }
        if let Some(tls) = &net.tls {
            let l = bind(tls.listen)?;
            *tls_out = Some(local(&l, tls.listen)?);
            bound.push((service, Transport::Tls, l));
        }
    }
    let worklist_store = if services.worklist() {
        let wl_store = Arc::new(WorklistStore::open_in(data.root()).map_err(|source| {
            ServeError::Worklist {
                path: data.root().to_path_buf(),
                source,
            }
        })?);
        info!(items = wl_store.count(), "worklist database open");
        // Audit entries of worklist changes that a crash (or a failing audit log) left in the
        // worklist database's outbox go to the audit log now, before anything is served. If
        // that fails the daemon still starts: they stay there for the next drain, and every
        // worklist change meanwhile answers a failure saying so.
        match control::drain_worklist_audit(&wl_store, index.database()) {
            Ok(0) => {}
            Ok(n) => info!(
                entries = n,
                "audit entries of earlier worklist changes moved to the audit log"
            ),
            Err(e) => error!(error = %e, "worklist audit outbox not drained at start-up"),
        }
        let w = &settings.worklist;
        let open = |a: Option<SocketAddr>| a.is_some_and(|a| !a.ip().is_loopback());
        if (open(w.net.listen) || open(w.net.tls.as_ref().map(|t| t.listen)))
            && w.net.allowed_peers.is_empty()
            && w.allowed_calling_ae_titles.is_empty()
        {
            // Audit M2: the worklist is PHI, and MPPS can discontinue a scheduled step.
            warn!("the worklist service answers any peer on the network (patient data, and MPPS can discontinue scheduled steps): set [worklist] allowed_peers or allowed_calling_ae_titles, and TLS");
        }
        Some(wl_store)
    } else {
        None
    };
    let mut ops = Ops::live(queue.clone(), forwarder.shared().clone()).with_settle(settle.clone());
    if let Some(w) = &worklist_store {
        ops = ops.with_worklist(w.clone());
    }
    let ops = Arc::new(ops);
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let cores_listening = Arc::new(AtomicUsize::new(0));

    let store_port = Arc::new(Port {
        service: Service::Store,
        policy: AcceptorPolicy {
            ae_title: store.ae_title.clone(),
            require_called_ae_title: store.require_called_ae_title,
            allowed_calling_ae_titles: store.allowed_calling_ae_titles.clone(),
            max_pdu_length: store.max_pdu_length,
        },
        offer: Offer {
            storage: Some(StorageScp {
                sop_classes: Arc::new(SopClassPolicy::new(
                    &store.extra_sop_classes,
                    store.accept_any_storage_class,
                )),
                sink: Arc::new(ingest.pipeline.clone()),
                data: data.clone(),
                disk: disk.clone(),
                accept_nonconformant: store.accept_nonconformant,
                inline_max: store.inline_max,
            }),
            worklist: None,
            // Query/Retrieve FIND (issue 13): searches run on their own pool, never a core.
            query: Some(QueryScp {
                settle: Some(Arc::new(settle.clone())),
                index: index.clone(),
                pool: rt::WorkPool::start("query", 2, 256, WORKLIST_NICE)
                    .map_err(ServeError::Thread)?,
                max_results: settings.query.max_results,
                ae_title: store.ae_title.clone(),
            }),
            // Query/Retrieve MOVE and GET (issue 13).
            retrieve: Some(RetrieveScp {
                settle: Some(Arc::new(settle.clone())),
                index: index.clone(),
                data: data.clone(),
                pool: rt::WorkPool::start("retrieve", 4, 256, WORKLIST_NICE)
                    .map_err(ServeError::Thread)?,
                destinations: forwarder.shared().clone(),
                ae_title: store.ae_title.clone(),
                get_requires_role_selection: settings.query.get_requires_role_selection,
                max_instances: settings.query.max_retrieve_instances,
                moves: Default::default(),
            }),
            // Storage Commitment Push Model (issue 13).
            commitment: match settings.storage_commitment.enabled {
                false => None,
                true => Some(CommitmentScp {
                    settle: Some(Arc::new(settle.clone())),
                    index: index.clone(),
                    pool: rt::WorkPool::start("commitment", 2, 256, WORKLIST_NICE)
                        .map_err(ServeError::Thread)?,
                    destinations: forwarder.shared().clone(),
                    ae_title: store.ae_title.clone(),
                    report: settings.storage_commitment.report,
                    data_root: data.root().to_owned(),
                    reports: crate::net::services::storage_commitment::report::shared(),
                }),
            },
        },
        access: store.net.clone(),
        slots: Slots::new(
            store.net.max_unassociated_connections,
            store.max_associations,
        ),
        acse_timeout: store.acse_timeout,
        dimse_timeout: store.dimse_timeout,
        // Q/R C-FIND streams responses on this port: as on the worklist port, a capped send
        // buffer keeps a C-CANCEL effective (C-STORE-RSPs are tiny). C-GET sends whole
        // objects on it too; measured (2026-12-06, loopback, dev build, getscu +B of a
        // 40 × 4 MiB study): 2.05 s with 64 KiB, 2.00 s autotuned — not the bottleneck on a
        // LAN. Over a WAN a C-GET is bounded by about 128 KiB (Linux doubles it) per round
        // trip (≈ 13 MB/s at 10 ms): raise it here if remote C-GET requestors matter.
        send_buffer: Some(WORKLIST_SEND_BUFFER),
        phase: phase_rx.clone(),
    });
    // Storage Commitment reports on new associations, starting with what a previous run left
    // pending (the thread ends with the process; a pending request survives in the table).
    if let Some(scp) = &store_port.offer.commitment {
        crate::net::services::storage_commitment::report::start_reporter(scp.clone())
            .map_err(ServeError::Thread)?;
    }
    let worklist_port = match &worklist_store {
        Some(wl_store) => {
            let w = &settings.worklist;
            let pool = rt::WorkPool::start("worklist", 2, 256, WORKLIST_NICE)
                .map_err(ServeError::Thread)?;
            Some(Arc::new(Port {
                service: Service::Worklist,
                policy: AcceptorPolicy {
                    ae_title: w.ae_title.clone(),
                    require_called_ae_title: w.require_called_ae_title,
                    allowed_calling_ae_titles: w.allowed_calling_ae_titles.clone(),
                    max_pdu_length: store.max_pdu_length,
                },
                offer: Offer {
                    storage: None,
                    worklist: Some(WorklistScp {
                        worklist: wl_store.clone(),
                        steps: wl_store.clone(),
                        pool,
                        max_results: w.max_results,
                    }),
                    query: None,
                    retrieve: None,
                    commitment: None,
                },
                access: w.net.clone(),
                slots: Slots::new(w.net.max_unassociated_connections, w.max_associations),
                acse_timeout: store.acse_timeout,
                dimse_timeout: store.dimse_timeout,
                send_buffer: Some(WORKLIST_SEND_BUFFER),
                phase: phase_rx.clone(),
            }))
        }
        None => None,
    };

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
        cores: if bound.is_empty() { 0 } else { threads },
        associations_active: store_port.slots.active_counter(),
        io_backend: backend.name(),
        login_token_ttl: settings.http.login_token_ttl,
        started_at_us: crate::clock::timestamp_us(),
        settle: Some(settle.clone()),
        worklist: worklist_store,
        pacer: http::pacer::Pacer::new(settings.http.max_requests_per_second),
    });
    let https = tls.is_some();
    let http_server =
        HttpServer::start(http_listener, tls, api_state).map_err(ServeError::Thread)?;
    http::announce(http_addr, https);

    // Hand every core one handle of every listener.
    let mut per_core: Vec<Vec<CoreListener>> = (0..threads).map(|_| Vec::new()).collect();
    for (service, transport, listeners) in bound {
        let port = match service {
            Service::Store => store_port.clone(),
            _ => worklist_port
                .clone()
                .expect("worklist listeners only with its port"),
        };
        let tls = match transport {
            Transport::Plain => None,
            Transport::Tls => {
                let t = port.access.tls.as_ref().expect("TLS listener configured");
                let cfg = crate::tls::server_config(
                    &t.cert_file,
                    &t.key_file,
                    t.client_ca_file.as_deref(),
                )
                .map_err(|e| ServeError::Tls(format!("{} TLS: {e}", port.service.label())))?;
                Some(cfg)
            }
        };
        for (core, listener) in listeners.into_iter().enumerate() {
            per_core[core].push(CoreListener {
                listener,
                port: port.clone(),
                transport,
                tls: tls.clone(),
            });
        }
    }
    let serving_cores = per_core.iter().filter(|l| !l.is_empty()).count();
    let mut cores = Vec::with_capacity(threads);
    for (core, listeners) in per_core.into_iter().enumerate() {
        if listeners.is_empty() {
            continue;
        }
        let (listening, phase) = (cores_listening.clone(), phase_rx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("core-{core}"))
            .spawn(move || {
                let vital = crate::health::Vital::new("core thread");
                let stopping = phase.clone();
                let result = match backend {
                    Backend::Uring => run_core::<Uring>(core, listeners, listening, phase),
                    Backend::Epoll => run_core::<Epoll>(core, listeners, listening, phase),
                };
                if let Err(e) = result {
                    error!(core, error = %e, "core stopped with an error");
                }
                if *stopping.borrow() != Phase::Running {
                    vital.done();
                }
            })
            .map_err(ServeError::Thread)?;
        cores.push(handle);
    }
    debug_assert_eq!(cores.len(), serving_cores);
    await_cores_listening(&cores, &cores_listening);

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
            store_tls_addr,
            worklist_tls_addr,
            backend,
            http_addr,
            https,
        });
        for (name, addr, ae) in [
            ("store", store_addr, &store.ae_title),
            ("store (TLS)", store_tls_addr, &store.ae_title),
            ("worklist", worklist_addr, &settings.worklist.ae_title),
            (
                "worklist (TLS)",
                worklist_tls_addr,
                &settings.worklist.ae_title,
            ),
        ] {
            if let Some(addr) = addr {
                info!(%addr, ae_title = %ae, "{name} service listening");
            }
        }
        if !early {
            let serve_control = async {
                match control {
                    Some(control) => control::serve(control, ops).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown => {}
                _ = serve_control => {}
                f = crate::health::wait_failure() => error!(failure = %f, "stopping"),
            }
        }
    });
    let active =
        || store_port.slots.active() + worklist_port.as_ref().map_or(0, |p| p.slots.active());
    info!(grace = ?settings.grace_period, active = active(), "stopping: no new associations");
    let _ = phase_tx.send(Phase::Draining);
    let deadline = Instant::now() + settings.grace_period;
    while active() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = active();
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
    // Every core has dropped its ports: with ours gone, the journal writer drains and the
    // materializer runs its last checkpoint.
    drop(store_port);
    drop(worklist_port);
    ingest.join();
    http_server.stop();
    forwarder.stop();
    if let Some(s) = sweeper {
        s.stop();
    }
    let _ = std::fs::remove_file(control::socket_path(data.root()));
    if let Some(f) = crate::health::failed() {
        return Err(ServeError::Failed(f));
    }
    info!("stopped");
    Ok(())
}

/// Nice value of the worklist's work threads: a modality's query takes milliseconds either
/// way, but when queries and ingest compete for the CPU, ingest wins (measured in
/// docs/benchmarks.md, "Modality Worklist C-FIND").
pub const WORKLIST_NICE: i32 = 10;

/// Kernel send buffer of a worklist association (Linux doubles it). Left to autotuning, the
/// buffer grows to megabytes and a fast C-FIND can queue its whole result set there before
/// the SCU's C-CANCEL arrives: queued responses cannot be taken back, so the cancel would
/// stop nothing. 64 KiB is still ample for small pending responses on a hospital LAN.
const WORKLIST_SEND_BUFFER: usize = 64 * 1024;

/// One listener handle given to a core.
struct CoreListener {
    listener: std::net::TcpListener,
    port: Arc<Port>,
    transport: Transport,
    /// The DICOM TLS configuration of a TLS listener.
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Runs one core: an accept loop per listener, every association on this thread.
fn run_core<I: Io>(
    core: usize,
    listeners: Vec<CoreListener>,
    listening: Arc<AtomicUsize>,
    phase: watch::Receiver<Phase>,
) -> std::io::Result<()> {
    I::block_on(async move {
        let mut ready = Vec::with_capacity(listeners.len());
        for l in listeners {
            match I::listener(l.listener) {
                Ok(x) => ready.push((x, l.port, l.transport, l.tls)),
                Err(e) => {
                    error!(core, error = %e, "cannot use listener");
                    return;
                }
            }
        }
        listening.fetch_add(1, Ordering::AcqRel);
        let ctx = Rc::new(Core::new(core));
        let mut loops = tokio::task::JoinSet::new();
        for (listener, port, transport, tls) in ready {
            loops.spawn_local(accept_loop::<I>(
                listener,
                port,
                transport,
                tls,
                ctx.clone(),
                phase.clone(),
            ));
        }
        while loops.join_next().await.is_some() {}
        listening.fetch_sub(1, Ordering::AcqRel);
    })
}

/// Accepts on one listener until the daemon stops accepting, then waits for its associations.
async fn accept_loop<I: Io>(
    listener: I::Listener,
    port: Arc<Port>,
    transport: Transport,
    tls: Option<Arc<rustls::ServerConfig>>,
    core: Rc<Core>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut conns = tokio::task::JoinSet::new();
    // One accept stays in flight across loop turns: dropping an io_uring accept does not
    // cancel it in the kernel, so recreating it each turn would orphan connections.
    let mut accept = Box::pin(I::accept(&listener));
    loop {
        tokio::select! {
            accepted = &mut accept => {
                accept = Box::pin(I::accept(&listener));
                match accepted {
                    Ok((stream, peer)) => {
                        // Counted now, before a single byte is read from the peer.
                        let waiting = port.slots.admit();
                        if let Some(n) = port.send_buffer {
                            if let Err(e) = I::set_send_buffer(&stream, n) {
                                tracing::debug!(error = %e, "cannot size the send buffer");
                            }
                        }
                        match &tls {
                            None => {
                                conns.spawn_local(association::serve::<I::File, I::Stream>(
                                    stream,
                                    peer,
                                    transport,
                                    port.clone(),
                                    core.clone(),
                                    waiting,
                                ));
                            }
                            Some(cfg) => {
                                conns.spawn_local(serve_tls::<I>(
                                    stream,
                                    peer,
                                    cfg.clone(),
                                    port.clone(),
                                    core.clone(),
                                    waiting,
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            _ = phase.wait_for(|p| *p != Phase::Running) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(accept);
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// The DICOM TLS handshake (within ARTIM, and given up if the connection must make room for
/// newer ones), then the association over TLS. A failed handshake is logged with the peer and
/// the reason.
async fn serve_tls<I: Io>(
    stream: I::Stream,
    peer: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
    port: Arc<Port>,
    core: Rc<Core>,
    waiting: association::limits::Waiting,
) {
    let evicted = waiting.evicted.clone();
    let handshake = tokio::select! {
        r = crate::tls::accept(stream, cfg, port.acse_timeout) => r,
        _ = evicted.notified() => {
            crate::metrics::global().connection_evicted(port.service);
            warn!(%peer, service = port.service.label(), "TLS connection closed during its handshake: too many connections waiting for association");
            return;
        }
    };
    match handshake {
        Ok(tls) => {
            tracing::debug!(%peer, session = %tls.describe_session(), "DICOM TLS established");
            association::serve::<I::File, crate::tls::TlsStream<I::Stream>>(
                tls,
                peer,
                Transport::Tls,
                port,
                core,
                waiting,
            )
            .await;
        }
        Err(e) => {
            warn!(%peer, service = port.service.label(), reason = %e, "DICOM TLS connection refused");
        }
    }
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

/// Whether `syncfs(2)` reports writeback errors on a kernel of this release string: Linux does
/// since 5.8 (audit L5). Durability `full` relies on it; an unknown string is not warned about.
pub fn syncfs_reports_errors(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let (Some(Ok(major)), Some(Ok(minor))) = (
        parts.next().map(str::parse::<u32>),
        parts.next().map(str::parse::<u32>),
    ) else {
        return true;
    };
    (major, minor) >= (5, 8)
}

/// C-MOVE destinations and commitment reports use the forwarder's live destination table.
impl crate::net::services::Destinations for crate::queue::forwarder::Shared {
    fn by_ae_title(&self, ae_title: &str) -> Option<crate::config::Destination> {
        let ae_title = ae_title.trim();
        self.destinations()
            .into_iter()
            .find(|d| d.ae_title == ae_title)
    }
}

/// The Q/R C-FIND waits for the ingest checkpoint as the admin API does.
impl crate::net::services::query_retrieve_find::Settled for crate::ingest::Settle {
    fn settle(
        &self,
        limit: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + '_>> {
        Box::pin(crate::ingest::Settle::settle(self, limit))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn syncfs_error_reporting_is_known_from_the_kernel_release() {
        use super::syncfs_reports_errors as ok;
        assert!(ok("6.1.0-27-amd64"));
        assert!(ok("5.8.0"));
        assert!(!ok("5.4.0-150-generic"));
        assert!(!ok("4.18.0-553.el8_10.x86_64"));
        assert!(ok("garbage"));
    }
}
