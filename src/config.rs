//! Configuration in two stages: the TOML file as written ([`RawConfig`], every key documented,
//! unknown keys refused) and the validated [`Settings`] the daemon runs on.
//!
//! Precedence, highest first: command-line flags, the config file, the environment
//! (`DICOM_GW_DATA` for the data directory), the built-in defaults. Errors name the key and,
//! where the key is in the file, its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rt::IoMode;

/// Default data directory when neither flag, file nor `DICOM_GW_DATA` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./dicom-gw-data";
/// Our default AE title.
pub const DEFAULT_AE_TITLE: &str = "DICOM_GW";
/// Default store service address.
pub const DEFAULT_STORE_LISTEN: &str = "0.0.0.0:4244";
/// Default admin API address: loopback only, since without TLS the API must not be reachable
/// from the network.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// Default worklist (MWL C-FIND, MPPS) listen address.
pub const DEFAULT_WORKLIST_LISTEN: &str = "0.0.0.0:4243";
/// Default maximum PDU length we announce (256 KiB).
pub const DEFAULT_MAX_PDU_LENGTH: u32 = 262_144;

/// When a C-STORE is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the file data and directory entry are synced and the index committed (default).
    #[default]
    Full,
    /// After the file is written and the index committed, without syncing the file: survives a
    /// process crash, may lose recently acknowledged objects on power loss; much faster.
    Relaxed,
}

/// What to do when a SOP Instance UID arrives again with *different* bytes (identical bytes
/// are always acknowledged without a new row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicatePolicy {
    /// Keep the stored object, discard the new one, answer success (Orthanc's default).
    #[default]
    Keep,
    /// Replace the stored object with the new one.
    Replace,
    /// Refuse the new one with status 0111 (Duplicate SOP Instance).
    Reject,
}

/// How the ingest checkpoint makes object files durable before it indexes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMethod {
    /// One `syncfs` of the data filesystem per checkpoint (ext4, XFS: one journal commit).
    #[default]
    Syncfs,
    /// `fdatasync` of every file and `fsync` of every directory touched: for filesystems
    /// whose `syncfs` does nothing (FUSE other than virtiofs; some network filesystems).
    Fsync,
}

/// Whether a destination gets objects converted when it refuses their transfer syntax.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TranscodePolicy {
    /// Send only the syntax the object was received in; a refusal is a dead letter.
    Never,
    /// Convert losslessly ([`crate::dicom::transcode`]) when the original syntax is refused
    /// (default).
    #[default]
    Lossless,
}

/// How the daemon writes its log lines (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (default); colours only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (journald, Loki): timestamp, level, message, fields, spans.
    Json,
}

/// `[log]`: the daemon's log output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// "text" (default) or "json". The level comes from `RUST_LOG` (default `info`).
    pub format: Option<LogFormat>,
}

/// The config file as written. Every key is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Data directory: objects, temporary files and `gateway.redb`.
    pub data_dir: Option<PathBuf>,
    /// I/O backend: "auto" (io_uring if the kernel allows it, else epoll), "uring", "epoll".
    pub io: Option<IoMode>,
    /// Number of core threads; 0 = one per CPU.
    pub threads: Option<usize>,
    /// "full" (default) or "relaxed"; see [`Durability`].
    pub durability: Option<Durability>,
    /// On SIGTERM, how long associations may take to finish before they are aborted.
    pub grace_period_seconds: Option<u64>,
    /// The store service.
    pub store: RawStore,
    /// `[[destinations]]`: remote archives objects are forwarded to.
    pub destinations: Vec<RawDestination>,
    /// `[[routes]]`: which objects go to which destinations.
    pub routes: Vec<RawRoute>,
    /// `[retention]`: what happens to objects once forwarded.
    pub retention: RawRetention,
    /// `[http]`: the admin API and metrics.
    pub http: RawHttp,
    /// `[worklist]`: the Modality Worklist and MPPS service.
    pub worklist: RawWorklist,
    /// `[query]`: Query/Retrieve (C-FIND, C-MOVE, C-GET) on the store port.
    pub query: RawQuery,
    /// `[storage_commitment]`: the Storage Commitment Push Model SCP on the store port.
    pub storage_commitment: RawStorageCommitment,
    /// `[log]`: log output format.
    pub log: RawLog,
}

/// `[worklist]`: the Modality Worklist (C-FIND) and MPPS (N-CREATE/N-SET) service, on its own
/// port and with its own database (`worklist.redb`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWorklist {
    /// Listen address (default 0.0.0.0:4243).
    pub listen: Option<String>,
    /// Our AE title on this port (default: the store's).
    pub ae_title: Option<String>,
    /// Maximum concurrent associations (default 32); more are rejected (transient, local
    /// limit exceeded).
    pub max_associations: Option<usize>,
    /// Most responses one C-FIND returns (default 0 = no cap); the final status is then still
    /// success, with a warning in the log.
    pub max_results: Option<usize>,
    /// Reject associations whose called AE title is not ours (default false).
    pub require_called_ae_title: Option<bool>,
    /// If not empty, only these calling AE titles may associate.
    pub allowed_calling_ae_titles: Option<Vec<String>>,
    /// DICOM TLS listen address (PS3.15 Annex B; port 2762 by convention). Unset: no TLS
    /// listener. Runs beside the plain `listen`, which `listen = "off"` turns off.
    pub tls_listen: Option<String>,
    /// PEM certificate chain of the TLS listener (default: `store.tls_cert_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the TLS listener (default: `store.tls_key_file`).
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s): when set, peers on the TLS listener must present a client
    /// certificate that chains to one of them (mutual TLS).
    pub tls_client_ca_file: Option<PathBuf>,
    /// Source networks that may connect (CIDR, e.g. "10.1.0.0/16", or single addresses);
    /// empty = any. Others are rejected with the standard reason before negotiation.
    pub allowed_peers: Option<Vec<String>>,
    /// Connections that may wait for their A-ASSOCIATE-RQ at once (default 64); past that the
    /// oldest waiting connection is closed, so idle connections cannot lock peers out.
    pub max_unassociated_connections: Option<usize>,
}

/// `[http]`: the admin API, metrics and health probes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    /// Listen address (default 127.0.0.1:8080).
    pub listen: Option<String>,
    /// PEM certificate chain: with `tls_key_file`, the API speaks HTTPS only.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key.
    pub tls_key_file: Option<PathBuf>,
    /// Allow a non-loopback address without TLS (tokens and passwords then cross the network
    /// in clear text: only for a network that is trusted end to end).
    pub allow_insecure_non_loopback: Option<bool>,
    /// Lifetime of the tokens `POST /api/v1/auth/login` returns, seconds (default 3600).
    pub login_token_ttl_seconds: Option<u64>,
    /// Requests per second the API serves (probes aside); more wait their turn, so a runaway
    /// client cannot take the CPU from ingest (default 200; 0 = no limit).
    pub max_requests_per_second: Option<u32>,
}

/// One `[[destinations]]` entry: a remote Storage SCP.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDestination {
    /// Unique name used by routes, the CLI and the API (letters, digits, `-`, `_`, `.`).
    pub name: Option<String>,
    /// The destination's AE title (Called AE).
    pub ae_title: Option<String>,
    /// Host name or IP address.
    pub host: Option<String>,
    /// TCP port.
    pub port: Option<u16>,
    /// Our AE title towards it (Calling AE); default `store.ae_title`.
    pub calling_ae_title: Option<String>,
    /// Most concurrent associations to it (default 2).
    pub max_associations: Option<usize>,
    /// First retry delay, seconds (default 5).
    pub retry_initial_seconds: Option<f64>,
    /// Retry delay cap, seconds (default 3600).
    pub retry_max_seconds: Option<f64>,
    /// Growth of the delay per attempt (default 2).
    pub retry_multiplier: Option<f64>,
    /// Attempts before a job goes to the dead letters (default 20).
    pub max_attempts: Option<u32>,
    /// TCP connect timeout, seconds (default 10).
    pub connect_timeout_seconds: Option<u64>,
    /// Longest wait for an association answer or a C-STORE response, seconds (default 60).
    pub dimse_timeout_seconds: Option<u64>,
    /// An association idle this long is released, seconds (default 30).
    pub idle_release_seconds: Option<u64>,
    /// Maximum PDU length we announce to it (default 262144).
    pub max_pdu_length: Option<u32>,
    /// DICOM TLS towards the destination (PS3.15 Annex B); unset: plain TCP.
    pub tls: Option<RawTls>,
    /// "lossless" (default): when the destination refuses an object's transfer syntax,
    /// convert it losslessly to one it accepts; "never": dead-letter it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcode: Option<TranscodePolicy>,
    /// Largest dataset converted for this destination, bytes, as stored, inflated, decoded or
    /// converted (default 268435456 = 256 MiB): conversion happens in memory; a larger
    /// object is dead-lettered with the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcode_max_bytes: Option<u64>,
    /// Attempts before an object the destination aborts or refuses, while it accepts others,
    /// goes to the dead letters (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_object_attempts: Option<u32>,
}

/// TLS settings of a destination: `tls = { ca_file, cert_file, key_file, server_name }`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// CA certificate(s) to verify the destination, PEM (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Our client certificate, PEM (with `key_file`, for destinations that require one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Our client key, PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name to verify in the destination's certificate (default: `host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// One match value: a pattern or a list of alternatives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One pattern.
    One(String),
    /// Any of these patterns.
    Many(Vec<String>),
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    /// Name, for logs and the API.
    pub name: Option<String>,
    /// Attribute keyword (or tag, or `CallingAETitle` / `CalledAETitle`) → pattern(s); `*`
    /// and `?` are wildcards; every key must match; omitted = every object.
    #[serde(rename = "match")]
    pub match_: Option<std::collections::BTreeMap<String, OneOrMany>>,
    /// Destination names.
    pub destinations: Option<Vec<String>>,
}

/// `[retention]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetention {
    /// "archive" (keep everything, default) or "gateway" (delete once forwarded and old).
    pub mode: Option<RetentionMode>,
    /// Gateway mode: an object is deleted once every destination has it and it was received
    /// at least this long ago, seconds (default 86400).
    pub delete_after_seconds: Option<u64>,
    /// How often the retention sweep runs, seconds (default 60).
    pub sweep_interval_seconds: Option<u64>,
}

/// Retention mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    /// Keep every object.
    #[default]
    Archive,
    /// Delete objects every destination has received, after `delete_after_seconds`.
    Gateway,
}

/// `[store]`: the Storage SCP and Verification service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// Our AE title (1–16 characters).
    pub ae_title: Option<String>,
    /// Listen address, e.g. "0.0.0.0:4244".
    pub listen: Option<String>,
    /// Maximum PDU length we announce and accept, bytes (default 262144).
    pub max_pdu_length: Option<u32>,
    /// Maximum concurrent associations; more are rejected (transient, local limit exceeded).
    pub max_associations: Option<usize>,
    /// Reject associations whose called AE title is not ours (default false, like storescp).
    pub require_called_ae_title: Option<bool>,
    /// If not empty, only these calling AE titles may associate.
    pub allowed_calling_ae_titles: Option<Vec<String>>,
    /// Accept any abstract syntax not known to be a non-storage service as a storage class.
    pub accept_any_storage_class: Option<bool>,
    /// Store objects without a usable Study/Series Instance UID in quarantine (default true)
    /// instead of refusing them C000.
    pub accept_nonconformant: Option<bool>,
    /// Extra (private) storage SOP class UIDs to accept.
    pub extra_sop_classes: Option<Vec<String>>,
    /// ARTIM: how long to wait for A-ASSOCIATE-RQ after connect, and for the peer to close.
    pub acse_timeout_seconds: Option<u64>,
    /// How long an established association may stay silent before it is aborted.
    pub dimse_timeout_seconds: Option<u64>,
    /// "keep" (default), "replace" or "reject"; see [`DuplicatePolicy`].
    pub duplicate_policy: Option<DuplicatePolicy>,
    /// Extra wait for more objects before a group commit, microseconds (default 0).
    pub commit_window_micros: Option<u64>,
    /// Most objects per group commit (default 1024).
    pub commit_max_batch: Option<usize>,
    /// Journal groups written and flushed at once (default 1, 1–4): with 2 or more, the next
    /// group is written while one's flush is in flight, and answers still go out in journal
    /// order. Worth it only where the device overlaps flushes (see docs/benchmarks.md).
    pub journal_groups_in_flight: Option<usize>,
    /// Objects (Part-10 header and dataset) up to this size are received in memory and
    /// journaled whole; larger ones stream to a file (KiB, default 256).
    pub inline_max_kib: Option<u64>,
    /// Segments in the ingest journal's ring (default 8, at least 2).
    pub journal_segments: Option<u32>,
    /// "syncfs" (default) or "fsync"; see [`SyncMethod`].
    pub sync_method: Option<SyncMethod>,
    /// Size of one journal segment, MiB (default 64, 1–1024). Unset, the environment
    /// variable `DICOM_GW_JOURNAL_SEGMENT_MIB` gives it (test rigs, tiny appliances).
    pub journal_segment_mib: Option<u64>,
    /// Refuse new objects (A700) once the data filesystem is this full, percent (default 95).
    pub disk_high_water_percent: Option<u8>,
    /// Longest wait of an acknowledged object for its checkpoint (files, index rows, forward
    /// jobs), milliseconds (default 250, 10–600000).
    pub checkpoint_interval_ms: Option<u64>,
    /// A checkpoint starts at once when this many objects wait (default 4096,
    /// 1–1000000). A quarter of the journal ring's bytes also starts one.
    pub checkpoint_objects: Option<usize>,
    /// Most acknowledged objects waiting for their checkpoint, whose bytes and index rows
    /// are held in memory until then; past it new objects wait as for a full ring (default
    /// 65536 or twice `checkpoint_objects`, at least `checkpoint_objects`, at most 10000000).
    pub max_pending_objects: Option<usize>,
    /// DICOM TLS listen address (PS3.15 Annex B; port 2762 by convention). Unset: no TLS
    /// listener. Runs beside the plain `listen`, which `listen = "off"` turns off.
    pub tls_listen: Option<String>,
    /// PEM certificate chain of the TLS listener.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the TLS listener.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s): when set, peers on the TLS listener must present a client
    /// certificate that chains to one of them (mutual TLS).
    pub tls_client_ca_file: Option<PathBuf>,
    /// Source networks that may connect (CIDR, e.g. "10.1.0.0/16", or single addresses);
    /// empty = any. Others are rejected with the standard reason before negotiation.
    pub allowed_peers: Option<Vec<String>>,
    /// Connections that may wait for their A-ASSOCIATE-RQ at once (default 64); past that the
    /// oldest waiting connection is closed, so idle connections cannot lock peers out.
    pub max_unassociated_connections: Option<usize>,
}

/// `[query]`: the Query/Retrieve C-FIND service (Patient Root and Study Root FIND) on the
/// store port.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQuery {
    /// Most responses one C-FIND returns (default 10000; 0 = the default). A query matching
    /// more gets the first ones and then the final status 0000, and a warning is logged.
    pub max_results: Option<usize>,
    /// C-GET from a requestor that did not negotiate the SCP role for a storage class (SCP/SCU
    /// Role Selection, PS3.7 D.3.3.4): `true` (default) makes each such sub-operation fail and
    /// be listed in the Failed SOP Instance UID List; `false` sends the C-STORE anyway on an
    /// accepted context of that class, for old requestors that omit the item.
    pub get_requires_role_selection: Option<bool>,
    /// Most instances one C-MOVE or C-GET may select (default 100000); a larger match is
    /// refused with A701 before anything is sent.
    pub max_retrieve_instances: Option<usize>,
}

/// How the N-EVENT-REPORT of a Storage Commitment request reaches the requestor (PS3.4 J.3.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitmentReport {
    /// On the association of the N-ACTION while it is open; on a new one after it closed
    /// (default).
    #[default]
    Auto,
    /// Always on the association of the N-ACTION (a request whose association closed before
    /// its report waits for the requestor's next association).
    SameAssociation,
    /// Always on a new association to the requestor's AE title, looked up in the destination
    /// table.
    NewAssociation,
}

/// `[storage_commitment]`: the Storage Commitment Push Model SCP on the store port.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorageCommitment {
    /// Offer the service (default true).
    pub enabled: Option<bool>,
    /// Where the report goes: "auto" (default), "same-association", "new-association".
    pub report: Option<CommitmentReport>,
}

/// Validated `[storage_commitment]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageCommitmentSettings {
    /// Whether the store port offers the service.
    pub enabled: bool,
    /// Where the report goes.
    pub report: CommitmentReport,
}

/// Default of `[query] max_results`: a bound on the memory one C-FIND's answers take (a few
/// MB), far more than a person reads; scripts page by date range.
pub const DEFAULT_QUERY_MAX_RESULTS: usize = 10_000;

/// Default of `[query] max_retrieve_instances`: a bound on the index records one C-MOVE or
/// C-GET holds in memory (a few hundred bytes each), far above any single study.
pub const DEFAULT_MAX_RETRIEVE_INSTANCES: usize = 100_000;

/// Validated `[query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerySettings {
    /// Most C-FIND responses per request.
    pub max_results: usize,
    /// C-GET sub-operations need the SCP role agreed for their storage class.
    pub get_requires_role_selection: bool,
    /// Most instances one C-MOVE or C-GET selects.
    pub max_retrieve_instances: usize,
}

/// Validated settings of the whole daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// I/O backend choice.
    pub io: IoMode,
    /// Core threads (resolved: ≥ 1).
    pub threads: usize,
    /// Durability mode.
    pub durability: Durability,
    /// Shutdown grace period.
    pub grace_period: Duration,
    /// Store service.
    pub store: StoreSettings,
    /// Forwarding destinations, in config order.
    pub destinations: Vec<Destination>,
    /// Routing rules, in config order.
    pub routes: Vec<Route>,
    /// Retention.
    pub retention: Retention,
    /// Admin API.
    pub http: HttpSettings,
    /// Worklist service.
    pub worklist: WorklistSettings,
    /// Query/Retrieve.
    pub query: QuerySettings,
    /// `[storage_commitment]`.
    pub storage_commitment: StorageCommitmentSettings,
    /// Which services this process runs (`--only`).
    pub services: Services,
    /// Log output format.
    pub log_format: LogFormat,
}

/// Which DICOM services a process runs: both (the default), or one of them (`--only store`,
/// `--only worklist`) so the two can run as separate processes with separate databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Services {
    /// Store (with forwarding) and worklist in one process.
    #[default]
    All,
    /// The store service only: no worklist port, no `worklist.redb`.
    Store,
    /// The worklist service only: no store port, no ingest.
    Worklist,
}

impl Services {
    /// Whether the store service (C-STORE, forwarding) runs.
    pub fn store(self) -> bool {
        self != Services::Worklist
    }

    /// Whether the worklist service (MWL, MPPS) runs.
    pub fn worklist(self) -> bool {
        self != Services::Store
    }
}

/// Where and for whom one DICOM service listens: its plain and TLS listeners, the source
/// networks it admits, and how many connections may wait for association. The same shape for
/// every DICOM port, so the association engine treats them alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Plain TCP listen address; `None` when turned off (`listen = "off"`).
    pub listen: Option<SocketAddr>,
    /// The DICOM TLS listener, if configured.
    pub tls: Option<TlsListenerSettings>,
    /// Admitted source networks (empty = any).
    pub allowed_peers: Vec<ipnet::IpNet>,
    /// Connections that may wait for their A-ASSOCIATE-RQ at once.
    pub max_unassociated_connections: usize,
}

impl ListenerSettings {
    /// Whether a peer at `ip` may connect.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.allowed_peers.is_empty() || self.allowed_peers.iter().any(|n| n.contains(&ip))
    }
}

/// A DICOM TLS listener (PS3.15 Annex B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListenerSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates must chain to (mutual TLS), if set.
    pub client_ca_file: Option<PathBuf>,
}

/// Default of `max_unassociated_connections`.
pub const DEFAULT_MAX_UNASSOCIATED: usize = 64;

/// Validated `[worklist]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorklistSettings {
    /// Listeners and access.
    pub net: ListenerSettings,
    /// Our AE title on the worklist port.
    pub ae_title: String,
    /// Maximum concurrent associations.
    pub max_associations: usize,
    /// Most C-FIND responses per request (`None`: no cap).
    pub max_results: Option<usize>,
    /// Enforce the called AE title.
    pub require_called_ae_title: bool,
    /// Calling AE allow-list (empty = anyone).
    pub allowed_calling_ae_titles: Vec<String>,
}

/// Validated `[http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Certificate chain and key, both set or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Lifetime of login tokens.
    pub login_token_ttl: Duration,
    /// Requests per second (0 = no limit).
    pub max_requests_per_second: u32,
}

/// A validated destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// Unique name.
    pub name: String,
    /// Called AE title.
    pub ae_title: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Calling AE title.
    pub calling_ae_title: String,
    /// Concurrent associations.
    pub max_associations: usize,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Association / response timeout.
    pub dimse_timeout: Duration,
    /// Idle association release.
    pub idle_release: Duration,
    /// Maximum PDU length we announce.
    pub max_pdu_length: u32,
    /// DICOM TLS towards it, if configured.
    pub tls: Option<DestinationTls>,
    /// Whether refused transfer syntaxes are converted.
    pub transcode: TranscodePolicy,
    /// Largest dataset converted in memory.
    pub transcode_max_bytes: u64,
    /// Attempts before an object the destination keeps aborting or refusing, while others
    /// get through, is a dead letter.
    pub max_object_attempts: u32,
}

/// Default of `transcode_max_bytes` (256 MiB).
pub const DEFAULT_TRANSCODE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default of `max_object_attempts`.
pub const DEFAULT_MAX_OBJECT_ATTEMPTS: u32 = 3;

/// Validated TLS settings of a destination. The files are read when an association is opened
/// (so renewed certificates are picked up without a restart); validation only checks that
/// they are there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationTls {
    /// CA certificate(s) the destination's certificate must chain to.
    pub ca_file: PathBuf,
    /// Our client certificate and key, when the destination requires one.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Name the destination's certificate must carry, if not the host.
    pub server_name: Option<String>,
}

impl DestinationTls {
    /// The name to verify: `server_name`, else the destination's host.
    pub fn verify_name<'a>(&'a self, host: &'a str) -> &'a str {
        self.server_name.as_deref().unwrap_or(host)
    }
}

/// Exponential backoff with jitter, per destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Cap of the delay.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Attempts before the dead letters.
    pub max_attempts: u32,
}

/// What a route matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKey {
    /// The association's calling AE title.
    CallingAeTitle,
    /// The association's called AE title.
    CalledAeTitle,
    /// A top-level attribute of the dataset.
    Tag(dicom_core::Tag),
}

/// One condition of a route: the value of `key` matches one of `patterns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// What is compared.
    pub key: MatchKey,
    /// The key as written, for messages.
    pub key_text: String,
    /// Alternatives; `*` and `?` are wildcards.
    pub patterns: Vec<String>,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Name.
    pub name: String,
    /// All must match (empty = every object).
    pub matchers: Vec<Matcher>,
    /// Destination names (validated to exist).
    pub destinations: Vec<String>,
}

/// Validated `[retention]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Mode.
    pub mode: RetentionMode,
    /// Minimum age before deletion in gateway mode.
    pub delete_after: Duration,
    /// Sweep period.
    pub sweep_interval: Duration,
}

/// Validated `[store]` settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Our AE title, trimmed.
    pub ae_title: String,
    /// Listeners and access.
    pub net: ListenerSettings,
    /// Maximum PDU length we announce.
    pub max_pdu_length: u32,
    /// Maximum concurrent associations.
    pub max_associations: usize,
    /// Enforce the called AE title.
    pub require_called_ae_title: bool,
    /// Calling AE allow-list (empty = anyone).
    pub allowed_calling_ae_titles: Vec<String>,
    /// Accept unknown abstract syntaxes as storage.
    pub accept_any_storage_class: bool,
    /// Extra storage SOP classes.
    pub extra_sop_classes: Vec<String>,
    /// Quarantine objects without a usable Study/Series Instance UID instead of refusing them.
    pub accept_nonconformant: bool,
    /// ARTIM timeout.
    pub acse_timeout: Duration,
    /// DIMSE idle timeout.
    pub dimse_timeout: Duration,
    /// Duplicate policy.
    pub duplicate_policy: DuplicatePolicy,
    /// Group-commit window.
    pub commit_window: Duration,
    /// Group-commit batch cap.
    pub commit_max_batch: usize,
    /// Journal groups in flight at once.
    pub journal_groups_in_flight: usize,
    /// Largest object received in memory and journaled whole, bytes.
    pub inline_max: usize,
    /// Journal ring: segment count.
    pub journal_segments: u32,
    /// How checkpoints make files durable.
    pub sync_method: SyncMethod,
    /// Journal ring: bytes per segment.
    pub journal_segment_size: u64,
    /// Refuse objects once the data filesystem is this full (percent, 1–100; 100 = never).
    pub disk_high_water_percent: u8,
    /// Longest wait of an acknowledged object for its checkpoint.
    pub checkpoint_interval: Duration,
    /// Objects waiting that start a checkpoint at once.
    pub checkpoint_objects: usize,
    /// Most objects waiting for their checkpoint.
    pub max_pending_objects: usize,
}

/// `Ok` if `value` lies in `range`, else the message "must be between LO and HI".
fn within<T: PartialOrd + std::fmt::Display>(
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "must be between {} and {}",
            range.start(),
            range.end()
        ))
    }
}

/// A configuration error, naming the key (and line when known).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or type error, or an unknown key (toml's message names line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{location}: {key}: {message}")]
    Invalid {
        /// "FILE line N", "FILE", or "command line".
        location: String,
        /// Dotted key, e.g. `store.ae_title`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Command-line overrides (flags beat the file).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--store-listen`
    pub store_listen: Option<String>,
    /// `--io`
    pub io: Option<IoMode>,
    /// `--threads`
    pub threads: Option<usize>,
    /// `--durability`
    pub durability: Option<Durability>,
    /// `--http-listen`
    pub http_listen: Option<String>,
    /// `--worklist-listen`
    pub worklist_listen: Option<String>,
    /// `--store-tls-listen`
    pub store_tls_listen: Option<String>,
    /// `--worklist-tls-listen`
    pub worklist_tls_listen: Option<String>,
    /// `--only`
    pub services: Option<Services>,
}

/// Parses a config file's text (unknown keys are errors).
pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<(RawConfig, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((parse(&text, path)?, text))
}

/// Finds the line of `key = …` inside `[section]` (or at top level) for error messages. For
/// an array of tables (`[[section]]`), `nth` picks the entry (0-based); else it is 0.
fn key_line(text: &str, section: Option<&str>, nth: usize, key: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut occurrence = 0;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('[') {
            // "[store]  # comment" and "[[destinations]]" both name their section.
            let name = rest
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            let n = seen.entry(name.clone()).or_insert(0);
            occurrence = *n;
            *n += 1;
            current = Some(name);
            continue;
        }
        let in_section = match section {
            None => current.is_none(),
            Some(s) => current.as_deref() == Some(s) && occurrence == nth,
        };
        if in_section
            && t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

/// Checks an AE title (PS3.5 Table 6.2-1: 1–16 characters of the default repertoire, no
/// backslash or control characters, not only spaces) and returns it trimmed.
pub fn validate_ae_title(ae: &str) -> Result<String, String> {
    let t = ae.trim();
    if t.is_empty() {
        return Err("an AE title needs at least one non-space character".into());
    }
    if ae.trim_end().len() > 16 {
        return Err(format!("{ae:?} is longer than 16 characters"));
    }
    if ae
        .chars()
        .any(|c| c == '\\' || c.is_control() || !c.is_ascii())
    {
        return Err(format!(
            "{ae:?} holds a backslash, control or non-ASCII character"
        ));
    }
    Ok(t.to_owned())
}

impl RawConfig {
    /// Validates the raw config with overrides applied. `source` is `(path, text)` of the file
    /// if one was given, for error locations.
    pub fn resolve(
        self,
        ov: &Overrides,
        source: Option<(&Path, &str)>,
    ) -> Result<Settings, ConfigError> {
        let invalid = |section: Option<&str>, key: &str, from_flag: bool, message: String| {
            let dotted = section.map_or_else(|| key.to_owned(), |s| format!("{s}.{key}"));
            let location = match (from_flag, source) {
                (true, _) => "command line".to_owned(),
                (false, Some((p, text))) => match key_line(text, section, 0, key) {
                    Some(n) => format!("{} line {n}", p.display()),
                    None => p.display().to_string(),
                },
                (false, None) => "defaults".to_owned(),
            };
            ConfigError::Invalid {
                location,
                key: dotted,
                message,
            }
        };
        let s = self.store;
        let data_dir = ov
            .data_dir
            .clone()
            .or(self.data_dir)
            .or_else(|| std::env::var_os("DICOM_GW_DATA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let threads = match ov.threads.or(self.threads).unwrap_or(0) {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n if n > 1024 => {
                return Err(invalid(
                    None,
                    "threads",
                    ov.threads.is_some(),
                    format!("{n} threads is more than 1024"),
                ))
            }
            n => n,
        };
        let ae_title = validate_ae_title(s.ae_title.as_deref().unwrap_or(DEFAULT_AE_TITLE))
            .map_err(|m| invalid(Some("store"), "ae_title", false, m))?;
        let store_net = resolve_listener(
            RawListener {
                section: "store",
                listen: ov.store_listen.clone().or(s.listen.clone()),
                listen_from_flag: ov.store_listen.is_some(),
                default_listen: DEFAULT_STORE_LISTEN,
                tls_listen: ov.store_tls_listen.clone().or(s.tls_listen.clone()),
                tls_from_flag: ov.store_tls_listen.is_some(),
                cert: s.tls_cert_file.clone(),
                key: s.tls_key_file.clone(),
                client_ca: s.tls_client_ca_file.clone(),
                allowed_peers: s.allowed_peers.clone(),
                max_unassociated: s.max_unassociated_connections,
            },
            &invalid,
        )?;
        let max_pdu_length = s.max_pdu_length.unwrap_or(DEFAULT_MAX_PDU_LENGTH);
        if !(dicom_ul::pdu::MINIMUM_PDU_SIZE..=(64 * 1024 * 1024)).contains(&max_pdu_length) {
            return Err(invalid(
                Some("store"),
                "max_pdu_length",
                false,
                format!(
                    "{max_pdu_length} is outside {}..=67108864",
                    dicom_ul::pdu::MINIMUM_PDU_SIZE
                ),
            ));
        }
        let max_associations = s.max_associations.unwrap_or(256);
        if max_associations == 0 {
            return Err(invalid(
                Some("store"),
                "max_associations",
                false,
                "must be at least 1".into(),
            ));
        }
        let mut allowed = Vec::new();
        for ae in s.allowed_calling_ae_titles.unwrap_or_default() {
            allowed.push(
                validate_ae_title(&ae)
                    .map_err(|m| invalid(Some("store"), "allowed_calling_ae_titles", false, m))?,
            );
        }
        let mut extra = Vec::new();
        for uid in s.extra_sop_classes.unwrap_or_default() {
            let v = crate::dicom::uid::validate_uid(&uid).map_err(|e| {
                invalid(
                    Some("store"),
                    "extra_sop_classes",
                    false,
                    format!("{uid:?}: {e}"),
                )
            })?;
            extra.push(v.to_owned());
        }
        let secs = |v: Option<u64>, default: u64, key: &str| -> Result<Duration, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(invalid(
                    Some("store"),
                    key,
                    false,
                    "must be at least 1 second".into(),
                )),
                n => Ok(Duration::from_secs(n)),
            }
        };
        let commit_max_batch = s.commit_max_batch.unwrap_or(1024);
        if commit_max_batch == 0 {
            return Err(invalid(
                Some("store"),
                "commit_max_batch",
                false,
                "must be at least 1".into(),
            ));
        }
        let journal_groups_in_flight = s.journal_groups_in_flight.unwrap_or(1);
        within(journal_groups_in_flight, 1..=4)
            .map_err(|m| invalid(Some("store"), "journal_groups_in_flight", false, m))?;
        let checkpoint_interval_ms = s.checkpoint_interval_ms.unwrap_or(250);
        within(checkpoint_interval_ms, 10..=600_000)
            .map_err(|m| invalid(Some("store"), "checkpoint_interval_ms", false, m))?;
        let checkpoint_objects = s.checkpoint_objects.unwrap_or(4096);
        within(checkpoint_objects, 1..=1_000_000)
            .map_err(|m| invalid(Some("store"), "checkpoint_objects", false, m))?;
        let max_pending_objects = s
            .max_pending_objects
            .unwrap_or(checkpoint_objects.saturating_mul(2).max(65_536));
        within(max_pending_objects, checkpoint_objects..=10_000_000)
            .map_err(|m| invalid(Some("store"), "max_pending_objects", false, m))?;
        let journal_segments = s.journal_segments.unwrap_or(8);
        within(journal_segments, 2..=64)
            .map_err(|m| invalid(Some("store"), "journal_segments", false, m))?;
        let segment_mib = s
            .journal_segment_mib
            .or_else(|| {
                std::env::var("DICOM_GW_JOURNAL_SEGMENT_MIB")
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(64);
        within(segment_mib, 1..=1024)
            .map_err(|m| invalid(Some("store"), "journal_segment_mib", false, m))?;
        let inline_max_kib = s.inline_max_kib.unwrap_or(256);
        // A group holds at least one inline object: keep them well under a segment.
        if inline_max_kib * 4 > segment_mib * 1024 {
            return Err(invalid(
                Some("store"),
                "inline_max_kib",
                false,
                format!(
                    "must be at most a quarter of a journal segment ({} KiB)",
                    segment_mib * 256
                ),
            ));
        }
        let disk_high_water_percent = s.disk_high_water_percent.unwrap_or(95);
        if !(1..=100).contains(&disk_high_water_percent) {
            return Err(invalid(
                Some("store"),
                "disk_high_water_percent",
                false,
                format!("{disk_high_water_percent} is outside 1..=100"),
            ));
        }
        let entry_err = |section: &str, nth: usize, key: &str, message: String| {
            let location = match source {
                Some((p, text)) => match key_line(text, Some(section), nth, key) {
                    Some(n) => format!("{} line {n}", p.display()),
                    None => p.display().to_string(),
                },
                None => "defaults".to_owned(),
            };
            ConfigError::Invalid {
                location,
                key: format!("{section}[{nth}].{key}"),
                message,
            }
        };
        let destinations = self
            .destinations
            .into_iter()
            .enumerate()
            .map(|(n, d)| {
                resolve_destination(d, &ae_title)
                    .map_err(|(key, m)| entry_err("destinations", n, key, m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (n, d) in destinations.iter().enumerate() {
            if destinations[..n].iter().any(|o| o.name == d.name) {
                return Err(entry_err(
                    "destinations",
                    n,
                    "name",
                    format!("{:?} is used by an earlier destination", d.name),
                ));
            }
        }
        let routes = self
            .routes
            .into_iter()
            .enumerate()
            .map(|(n, r)| {
                resolve_route(r, n, &destinations)
                    .map_err(|(key, m)| entry_err("routes", n, key, m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let r = self.retention;
        let retention = Retention {
            mode: r.mode.unwrap_or_default(),
            delete_after: Duration::from_secs(r.delete_after_seconds.unwrap_or(86_400)),
            sweep_interval: match r.sweep_interval_seconds.unwrap_or(60) {
                0 => {
                    return Err(invalid(
                        Some("retention"),
                        "sweep_interval_seconds",
                        false,
                        "must be at least 1 second".into(),
                    ))
                }
                n => Duration::from_secs(n),
            },
        };
        let h = self.http;
        let http_text = ov
            .http_listen
            .clone()
            .or(h.listen)
            .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.to_owned());
        let http_listen: SocketAddr = http_text.parse().map_err(|_| {
            invalid(
                Some("http"),
                "listen",
                ov.http_listen.is_some(),
                format!("{http_text:?} is not an ADDRESS:PORT (e.g. 127.0.0.1:8080)"),
            )
        })?;
        let tls = match (h.tls_cert_file, h.tls_key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    Some("http"),
                    "tls_cert_file",
                    false,
                    "needs tls_key_file too".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    Some("http"),
                    "tls_key_file",
                    false,
                    "needs tls_cert_file too".into(),
                ))
            }
        };
        if tls.is_none()
            && !http_listen.ip().is_loopback()
            && !h.allow_insecure_non_loopback.unwrap_or(false)
        {
            return Err(invalid(
                Some("http"),
                "listen",
                ov.http_listen.is_some(),
                format!(
                    "{http_listen} is not a loopback address and no TLS certificate is configured: \
                     set tls_cert_file and tls_key_file, or allow_insecure_non_loopback = true"
                ),
            ));
        }
        let login_token_ttl = match h.login_token_ttl_seconds.unwrap_or(3600) {
            0 => {
                return Err(invalid(
                    Some("http"),
                    "login_token_ttl_seconds",
                    false,
                    "must be at least 1 second".into(),
                ))
            }
            n => Duration::from_secs(n),
        };
        let w = self.worklist;
        let worklist_net = resolve_listener(
            RawListener {
                section: "worklist",
                listen: ov.worklist_listen.clone().or(w.listen.clone()),
                listen_from_flag: ov.worklist_listen.is_some(),
                default_listen: DEFAULT_WORKLIST_LISTEN,
                tls_listen: ov.worklist_tls_listen.clone().or(w.tls_listen.clone()),
                tls_from_flag: ov.worklist_tls_listen.is_some(),
                cert: w.tls_cert_file.clone().or(s.tls_cert_file.clone()),
                key: w.tls_key_file.clone().or(s.tls_key_file.clone()),
                client_ca: w.tls_client_ca_file.clone(),
                allowed_peers: w.allowed_peers.clone(),
                max_unassociated: w.max_unassociated_connections,
            },
            &invalid,
        )?;
        let worklist_ae = match w.ae_title {
            Some(ae) => validate_ae_title(&ae)
                .map_err(|m| invalid(Some("worklist"), "ae_title", false, m))?,
            None => ae_title.clone(),
        };
        let worklist_max = w.max_associations.unwrap_or(32);
        if worklist_max == 0 {
            return Err(invalid(
                Some("worklist"),
                "max_associations",
                false,
                "must be at least 1".into(),
            ));
        }
        let mut worklist_allowed = Vec::new();
        for ae in w.allowed_calling_ae_titles.unwrap_or_default() {
            worklist_allowed.push(
                validate_ae_title(&ae).map_err(|m| {
                    invalid(Some("worklist"), "allowed_calling_ae_titles", false, m)
                })?,
            );
        }
        let worklist = WorklistSettings {
            net: worklist_net,
            ae_title: worklist_ae,
            max_associations: worklist_max,
            max_results: w.max_results.filter(|&n| n > 0),
            require_called_ae_title: w.require_called_ae_title.unwrap_or(false),
            allowed_calling_ae_titles: worklist_allowed,
        };
        let query = QuerySettings {
            max_results: self
                .query
                .max_results
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_QUERY_MAX_RESULTS),
            get_requires_role_selection: self.query.get_requires_role_selection.unwrap_or(true),
            max_retrieve_instances: self
                .query
                .max_retrieve_instances
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_MAX_RETRIEVE_INSTANCES),
        };
        let storage_commitment = StorageCommitmentSettings {
            enabled: self.storage_commitment.enabled.unwrap_or(true),
            report: self.storage_commitment.report.unwrap_or_default(),
        };
        Ok(Settings {
            worklist,
            query,
            storage_commitment,
            services: ov.services.unwrap_or_default(),
            log_format: self.log.format.unwrap_or_default(),
            data_dir,
            io: ov.io.or(self.io).unwrap_or(IoMode::Auto),
            threads,
            durability: ov.durability.or(self.durability).unwrap_or_default(),
            grace_period: Duration::from_secs(self.grace_period_seconds.unwrap_or(10)),
            store: StoreSettings {
                ae_title,
                net: store_net,
                max_pdu_length,
                max_associations,
                require_called_ae_title: s.require_called_ae_title.unwrap_or(false),
                allowed_calling_ae_titles: allowed,
                accept_any_storage_class: s.accept_any_storage_class.unwrap_or(false),
                extra_sop_classes: extra,
                accept_nonconformant: s.accept_nonconformant.unwrap_or(true),
                acse_timeout: secs(s.acse_timeout_seconds, 30, "acse_timeout_seconds")?,
                dimse_timeout: secs(s.dimse_timeout_seconds, 120, "dimse_timeout_seconds")?,
                duplicate_policy: s.duplicate_policy.unwrap_or_default(),
                commit_window: Duration::from_micros(s.commit_window_micros.unwrap_or(0)),
                commit_max_batch,
                journal_groups_in_flight,
                inline_max: (inline_max_kib * 1024) as usize,
                journal_segments,
                sync_method: s.sync_method.unwrap_or_default(),
                journal_segment_size: segment_mib << 20,
                disk_high_water_percent,
                checkpoint_interval: Duration::from_millis(checkpoint_interval_ms),
                checkpoint_objects,
                max_pending_objects,
            },
            destinations,
            routes,
            retention,
            http: HttpSettings {
                listen: http_listen,
                tls,
                login_token_ttl,
                max_requests_per_second: h.max_requests_per_second.unwrap_or(200),
            },
        })
    }
}

/// One DICOM section's listener keys, command-line overrides applied.
struct RawListener {
    section: &'static str,
    listen: Option<String>,
    listen_from_flag: bool,
    default_listen: &'static str,
    tls_listen: Option<String>,
    tls_from_flag: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    allowed_peers: Option<Vec<String>>,
    max_unassociated: Option<usize>,
}

/// Builds the error for (section, key, given on the command line, message).
type Invalid<'a> = &'a dyn Fn(Option<&str>, &str, bool, String) -> ConfigError;

/// Validates one DICOM section's listeners and access keys.
fn resolve_listener(r: RawListener, invalid: Invalid<'_>) -> Result<ListenerSettings, ConfigError> {
    let sec = Some(r.section);
    let addr = |text: &str, key: &str, flag: bool| -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            invalid(
                sec,
                key,
                flag,
                format!(
                    "{text:?} is not an ADDRESS:PORT (e.g. {})",
                    r.default_listen
                ),
            )
        })
    };
    let listen_text = r.listen.as_deref().unwrap_or(r.default_listen);
    let listen = match listen_text {
        "off" => None,
        t => Some(addr(t, "listen", r.listen_from_flag)?),
    };
    let tls = match r.tls_listen.as_deref() {
        None | Some("off") => None,
        Some(t) => {
            let listen = addr(t, "tls_listen", r.tls_from_flag)?;
            let need = |v: Option<PathBuf>, key: &str| {
                v.ok_or_else(|| {
                    invalid(
                        sec,
                        key,
                        false,
                        format!("tls_listen is set: {key} is required"),
                    )
                })
            };
            Some(TlsListenerSettings {
                listen,
                cert_file: need(r.cert, "tls_cert_file")?,
                key_file: need(r.key, "tls_key_file")?,
                client_ca_file: r.client_ca,
            })
        }
    };
    if listen.is_none() && tls.is_none() {
        return Err(invalid(
            sec,
            "listen",
            r.listen_from_flag,
            "\"off\" needs a tls_listen: the service would have no listener".into(),
        ));
    }
    let mut allowed_peers = Vec::new();
    for p in r.allowed_peers.unwrap_or_default() {
        let net = p
            .parse::<ipnet::IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                invalid(
                    sec,
                    "allowed_peers",
                    false,
                    format!("{p:?} is not a network (CIDR, e.g. 10.1.0.0/16) or an address"),
                )
            })?;
        allowed_peers.push(net.trunc());
    }
    let max_unassociated_connections = r.max_unassociated.unwrap_or(DEFAULT_MAX_UNASSOCIATED);
    if max_unassociated_connections == 0 {
        return Err(invalid(
            sec,
            "max_unassociated_connections",
            false,
            "must be at least 1".into(),
        ));
    }
    Ok(ListenerSettings {
        listen,
        tls,
        allowed_peers,
        max_unassociated_connections,
    })
}

/// A destination or route problem: (key within the entry, message).
///
/// Also used by the admin API, which validates destinations and routes the same way.
pub type EntryError = (&'static str, String);

/// Validates one `[[destinations]]` entry.
pub fn resolve_destination(d: RawDestination, our_ae: &str) -> Result<Destination, EntryError> {
    let name = d.name.ok_or(("name", "is required".to_owned()))?;
    validate_name(&name).map_err(|m| ("name", m))?;
    let ae_title = validate_ae_title(&d.ae_title.ok_or(("ae_title", "is required".to_owned()))?)
        .map_err(|m| ("ae_title", m))?;
    let host = d.host.ok_or(("host", "is required".to_owned()))?;
    if host.trim().is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(("host", format!("{host:?} is not a host name or address")));
    }
    let port = match d.port {
        None => return Err(("port", "is required".to_owned())),
        Some(0) => return Err(("port", "must be 1..=65535".to_owned())),
        Some(p) => p,
    };
    let calling_ae_title = match d.calling_ae_title {
        Some(ae) => validate_ae_title(&ae).map_err(|m| ("calling_ae_title", m))?,
        None => our_ae.to_owned(),
    };
    let max_associations = d.max_associations.unwrap_or(2);
    if !(1..=64).contains(&max_associations) {
        return Err((
            "max_associations",
            format!("{max_associations} is outside 1..=64"),
        ));
    }
    let seconds = |v: Option<f64>, default: f64, key: &'static str| {
        let v = v.unwrap_or(default);
        if v.is_finite() && v > 0.0 && v <= 30.0 * 86_400.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err((
                key,
                format!("{v} is not a number of seconds in (0, 2592000]"),
            ))
        }
    };
    let initial = seconds(d.retry_initial_seconds, 5.0, "retry_initial_seconds")?;
    let max = seconds(d.retry_max_seconds, 3600.0, "retry_max_seconds")?;
    if max < initial {
        return Err((
            "retry_max_seconds",
            "must not be less than retry_initial_seconds".to_owned(),
        ));
    }
    let multiplier = d.retry_multiplier.unwrap_or(2.0);
    if !(multiplier.is_finite() && (1.0..=10.0).contains(&multiplier)) {
        return Err((
            "retry_multiplier",
            format!("{multiplier} is outside 1..=10"),
        ));
    }
    let max_attempts = d.max_attempts.unwrap_or(20);
    if max_attempts == 0 {
        return Err(("max_attempts", "must be at least 1".to_owned()));
    }
    let whole = |v: Option<u64>, default: u64, key: &'static str| match v.unwrap_or(default) {
        0 => Err((key, "must be at least 1 second".to_owned())),
        n => Ok(Duration::from_secs(n)),
    };
    let max_pdu_length = d.max_pdu_length.unwrap_or(DEFAULT_MAX_PDU_LENGTH);
    if !(dicom_ul::pdu::MINIMUM_PDU_SIZE..=(64 * 1024 * 1024)).contains(&max_pdu_length) {
        return Err((
            "max_pdu_length",
            format!(
                "{max_pdu_length} is outside {}..=67108864",
                dicom_ul::pdu::MINIMUM_PDU_SIZE
            ),
        ));
    }
    let tls = match d.tls {
        None => None,
        Some(t) => Some(resolve_destination_tls(t, &host)?),
    };
    let transcode_max_bytes = d.transcode_max_bytes.unwrap_or(DEFAULT_TRANSCODE_MAX_BYTES);
    if !(1024..=(4 << 30)).contains(&transcode_max_bytes) {
        return Err((
            "transcode_max_bytes",
            format!("{transcode_max_bytes} is outside 1024..=4294967296"),
        ));
    }
    let max_object_attempts = d.max_object_attempts.unwrap_or(DEFAULT_MAX_OBJECT_ATTEMPTS);
    if max_object_attempts == 0 {
        return Err(("max_object_attempts", "must be at least 1".to_owned()));
    }
    Ok(Destination {
        name,
        ae_title,
        host,
        port,
        calling_ae_title,
        max_associations,
        retry: RetryPolicy {
            initial,
            max,
            multiplier,
            max_attempts,
        },
        connect_timeout: whole(d.connect_timeout_seconds, 10, "connect_timeout_seconds")?,
        dimse_timeout: whole(d.dimse_timeout_seconds, 60, "dimse_timeout_seconds")?,
        idle_release: whole(d.idle_release_seconds, 30, "idle_release_seconds")?,
        max_pdu_length,
        tls,
        transcode: d.transcode.unwrap_or_default(),
        transcode_max_bytes,
        max_object_attempts,
    })
}

/// Validates a destination's `tls` table: the CA file is required (an unverified connection
/// would only hide a wrong peer) and readable, certificate and key go together, and the name
/// to verify is a DNS name or an IP address.
fn resolve_destination_tls(t: RawTls, host: &str) -> Result<DestinationTls, EntryError> {
    let readable = |p: &Path, key: &str| {
        std::fs::File::open(p)
            .map(drop)
            .map_err(|e| ("tls", format!("{key} {}: {e}", p.display())))
    };
    let ca_file = t.ca_file.ok_or((
        "tls",
        "ca_file is required: the destination's certificate is verified against it".to_owned(),
    ))?;
    readable(&ca_file, "ca_file")?;
    let client = match (t.cert_file, t.key_file) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            readable(&c, "cert_file")?;
            readable(&k, "key_file")?;
            Some((c, k))
        }
        (Some(_), None) => return Err(("tls", "cert_file needs key_file too".to_owned())),
        (None, Some(_)) => return Err(("tls", "key_file needs cert_file too".to_owned())),
    };
    let name = t.server_name.as_deref().unwrap_or(host);
    if rustls::pki_types::ServerName::try_from(name).is_err() {
        return Err((
            "tls",
            format!(
                "{name:?} ({}) is neither a DNS name nor an IP address, so no certificate can \
                 match it",
                if t.server_name.is_some() {
                    "server_name"
                } else {
                    "the host; set server_name"
                }
            ),
        ));
    }
    Ok(DestinationTls {
        ca_file,
        client,
        server_name: t.server_name,
    })
}

/// Destination and route names: what the CLI, the API and metric labels can carry safely.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{name:?} must have 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{name:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Parses a route's match key: `CallingAETitle`, `CalledAETitle`, an attribute keyword
/// (`Modality`) or a tag (`(0008,0060)`, `00080060`). Only top-level attributes read before
/// the pixel data can be routed on: group 0002 (the file meta, which we write) and groups from
/// 7FE0 on are refused.
pub fn parse_match_key(text: &str) -> Result<MatchKey, String> {
    use dicom_core::dictionary::DataDictionary;
    match text {
        "CallingAETitle" => return Ok(MatchKey::CallingAeTitle),
        "CalledAETitle" => return Ok(MatchKey::CalledAeTitle),
        _ => {}
    }
    let tag = dicom_dictionary_std::StandardDataDictionary
        .parse_tag(text)
        .ok_or_else(|| {
            format!(
                "{text:?} is not an attribute keyword, a tag like (0008,0060), CallingAETitle or \
                 CalledAETitle"
            )
        })?;
    if tag.group() <= 0x0002 || tag.group() >= 0x7FE0 || tag.element() == 0 {
        return Err(format!(
            "{text:?} {tag}: routes can match top-level dataset attributes of groups 0004 to 7FDF \
             (no group lengths)"
        ));
    }
    Ok(MatchKey::Tag(tag))
}

/// Validates one `[[routes]]` entry.
pub fn resolve_route(r: RawRoute, n: usize, dests: &[Destination]) -> Result<Route, EntryError> {
    let name = r.name.unwrap_or_else(|| format!("route-{}", n + 1));
    validate_name(&name).map_err(|m| ("name", m))?;
    let mut matchers = Vec::new();
    for (key_text, value) in r.match_.unwrap_or_default() {
        let key = parse_match_key(&key_text).map_err(|m| ("match", m))?;
        let patterns = match value {
            OneOrMany::One(p) => vec![p],
            OneOrMany::Many(v) => v,
        };
        if patterns.is_empty() {
            return Err((
                "match",
                format!("{key_text}: an empty list matches nothing"),
            ));
        }
        if patterns.iter().any(|p| p.contains('\\') && p != "*") {
            return Err((
                "match",
                format!("{key_text}: a pattern matches one value; list alternatives instead of using '\\'"),
            ));
        }
        matchers.push(Matcher {
            key,
            key_text,
            patterns,
        });
    }
    let destinations = r
        .destinations
        .ok_or(("destinations", "is required".to_owned()))?;
    if destinations.is_empty() {
        return Err(("destinations", "names no destination".to_owned()));
    }
    for d in &destinations {
        if !dests.iter().any(|x| &x.name == d) {
            return Err((
                "destinations",
                format!("{d:?} is not the name of a [[destinations]] entry"),
            ));
        }
    }
    Ok(Route {
        name,
        matchers,
        destinations,
    })
}

impl From<&Destination> for RawDestination {
    /// The TOML/JSON form of a validated destination (what the admin API returns and stores).
    fn from(d: &Destination) -> Self {
        RawDestination {
            name: Some(d.name.clone()),
            ae_title: Some(d.ae_title.clone()),
            host: Some(d.host.clone()),
            port: Some(d.port),
            calling_ae_title: Some(d.calling_ae_title.clone()),
            max_associations: Some(d.max_associations),
            retry_initial_seconds: Some(d.retry.initial.as_secs_f64()),
            retry_max_seconds: Some(d.retry.max.as_secs_f64()),
            retry_multiplier: Some(d.retry.multiplier),
            max_attempts: Some(d.retry.max_attempts),
            connect_timeout_seconds: Some(d.connect_timeout.as_secs()),
            dimse_timeout_seconds: Some(d.dimse_timeout.as_secs()),
            idle_release_seconds: Some(d.idle_release.as_secs()),
            max_pdu_length: Some(d.max_pdu_length),
            tls: d.tls.as_ref().map(|t| RawTls {
                ca_file: Some(t.ca_file.clone()),
                cert_file: t.client.as_ref().map(|c| c.0.clone()),
                key_file: t.client.as_ref().map(|c| c.1.clone()),
                server_name: t.server_name.clone(),
            }),
            transcode: Some(d.transcode),
            transcode_max_bytes: Some(d.transcode_max_bytes),
            max_object_attempts: Some(d.max_object_attempts),
        }
    }
}

impl From<&Route> for RawRoute {
    /// The TOML/JSON form of a validated route.
    fn from(r: &Route) -> Self {
        RawRoute {
            name: Some(r.name.clone()),
            match_: Some(
                r.matchers
                    .iter()
                    .map(|m| {
                        (
                            m.key_text.clone(),
                            if m.patterns.len() == 1 {
                                OneOrMany::One(m.patterns[0].clone())
                            } else {
                                OneOrMany::Many(m.patterns.clone())
                            },
                        )
                    })
                    .collect(),
            ),
            destinations: Some(r.destinations.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<Settings, ConfigError> {
        let p = Path::new("test.toml");
        parse(text, p)?.resolve(&Overrides::default(), Some((p, text)))
    }

    #[test]
    fn defaults_start_a_working_daemon() {
        let s = resolve("").unwrap();
        assert_eq!(s.store.ae_title, "DICOM_GW");
        assert_eq!(s.store.net.listen, Some("0.0.0.0:4244".parse().unwrap()));
        assert_eq!(s.store.net.tls, None);
        assert_eq!(
            s.store.net.max_unassociated_connections,
            DEFAULT_MAX_UNASSOCIATED
        );
        assert_eq!(s.store.max_pdu_length, 262_144);
        assert_eq!(s.durability, Durability::Full);
        assert!(!s.store.require_called_ae_title);
        assert!(s.threads >= 1);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let e = resolve("data_dir = \"/x\"\n[store]\nae_titel = \"X\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ae_titel"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn invalid_values_name_key_and_line() {
        let e = resolve("[store]\n\nae_title = \"WAY_TOO_LONG_AE_TITLE\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.ae_title") && e.contains("line 3"), "{e}");
        let e = resolve("[store]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.listen") && e.contains("line 2"), "{e}");
        let e = resolve("[store]\nmax_pdu_length = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.max_pdu_length"), "{e}");
        let e = resolve("[store]\nextra_sop_classes = [\"1.2.x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.extra_sop_classes"), "{e}");
        let e = resolve("durability = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("durability") && e.contains("line 1"), "{e}");
        let e = resolve("[store]\ndimse_timeout_seconds = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.dimse_timeout_seconds"), "{e}");
        for n in [0, 5] {
            let e = resolve(&format!("[store]\njournal_groups_in_flight = {n}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("store.journal_groups_in_flight"), "{e}");
        }
        let s = resolve("[store]\njournal_groups_in_flight = 2\n").unwrap();
        assert_eq!(s.store.journal_groups_in_flight, 2);
        assert_eq!(resolve("").unwrap().store.journal_groups_in_flight, 1);
        for bad in [
            "checkpoint_interval_ms = 9",
            "checkpoint_interval_ms = 600001",
            "checkpoint_objects = 0",
            "checkpoint_objects = 1000001",
        ] {
            let e = resolve(&format!("[store]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            let key = bad.split(' ').next().unwrap();
            assert!(e.contains(&format!("store.{key}")), "{e}");
            assert!(e.contains("must be between"), "{e}");
        }
        let s = resolve("[store]\ncheckpoint_interval_ms = 5000\ncheckpoint_objects = 50000\n")
            .unwrap();
        assert_eq!(s.store.checkpoint_interval, Duration::from_secs(5));
        assert_eq!(s.store.checkpoint_objects, 50_000);
        let d = resolve("").unwrap();
        assert_eq!(d.store.checkpoint_interval, Duration::from_millis(250));
        assert_eq!(d.store.checkpoint_objects, 4096);
        assert_eq!(d.store.max_pending_objects, 65_536);
        let s = resolve("[store]\ncheckpoint_objects = 50000\n").unwrap();
        assert_eq!(
            s.store.max_pending_objects, 100_000,
            "twice checkpoint_objects"
        );
        let s = resolve("[store]\nmax_pending_objects = 5000\n").unwrap();
        assert_eq!(s.store.max_pending_objects, 5000);
        for bad in [
            "max_pending_objects = 4095",
            "max_pending_objects = 10000001",
            "checkpoint_objects = 8000\nmax_pending_objects = 7999",
        ] {
            let e = resolve(&format!("[store]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("store.max_pending_objects"), "{e}");
            assert!(e.contains("must be between"), "{e}");
        }
        let e = resolve("[store]  # the store service\n\nmax_associations = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store.max_associations") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let text = "data_dir = \"/from/file\"\nio = \"uring\"\n[store]\nlisten = \"127.0.0.1:1\"\n";
        let p = Path::new("t.toml");
        let ov = Overrides {
            data_dir: Some("/from/flag".into()),
            store_listen: Some("127.0.0.1:2".into()),
            io: Some(IoMode::Epoll),
            ..Overrides::default()
        };
        let s = parse(text, p)
            .unwrap()
            .resolve(&ov, Some((p, text)))
            .unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(s.store.net.listen.map(|a| a.port()), Some(2));
        assert_eq!(s.io, IoMode::Epoll);
        let e = parse("", p)
            .unwrap()
            .resolve(
                &Overrides {
                    store_listen: Some("bad".into()),
                    ..Overrides::default()
                },
                None,
            )
            .unwrap_err();
        assert!(e.to_string().contains("command line"), "{e}");
    }

    /// The issue's example, verbatim: operators' configs use exactly these keys.
    #[test]
    fn forwarding_keys_as_documented() {
        let s = resolve(
            r#"
[[destinations]]
name = "archive"
ae_title = "ARCHIVE"
host = "10.1.2.3"
port = 104
max_associations = 2
retry_initial_seconds = 5     # first backoff
retry_max_seconds = 3600      # backoff cap
max_attempts = 20             # then dead letter

[[routes]]
name = "ct-to-archive"
match = { Modality = "CT" }   # attribute keyword -> value or wildcard; omitted = everything
destinations = ["archive"]

[retention]
mode = "gateway"
delete_after_seconds = 3600
"#,
        )
        .unwrap();
        let d = &s.destinations[0];
        assert_eq!(
            (
                d.name.as_str(),
                d.ae_title.as_str(),
                d.host.as_str(),
                d.port
            ),
            ("archive", "ARCHIVE", "10.1.2.3", 104)
        );
        assert_eq!(d.max_associations, 2);
        assert_eq!(d.calling_ae_title, "DICOM_GW");
        assert_eq!(d.retry.initial, Duration::from_secs(5));
        assert_eq!(d.retry.max, Duration::from_secs(3600));
        assert_eq!(d.retry.max_attempts, 20);
        assert_eq!(d.retry.multiplier, 2.0);
        let r = &s.routes[0];
        assert_eq!(r.name, "ct-to-archive");
        assert_eq!(r.destinations, vec!["archive"]);
        assert_eq!(
            r.matchers[0].key,
            MatchKey::Tag(dicom_core::Tag(0x0008, 0x0060))
        );
        assert_eq!(r.matchers[0].patterns, vec!["CT"]);
        assert_eq!(s.retention.mode, RetentionMode::Gateway);
        assert_eq!(s.retention.delete_after, Duration::from_secs(3600));
        assert_eq!(s.store.disk_high_water_percent, 95);
        let e = resolve("[store]\ndisk_high_water_percent = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store.disk_high_water_percent") && e.contains("line 2"),
            "{e}"
        );
        let e = resolve("[retention]\nmode = \"forever\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode"), "{e}");
    }

    #[test]
    fn transcoding_object_attempts_and_log_format() {
        let base = "[[destinations]]\nname = \"a\"\nae_title = \"A\"\nhost = \"h\"\nport = 104\n";
        let s = resolve(base).unwrap();
        let d = &s.destinations[0];
        assert_eq!(d.transcode, TranscodePolicy::Lossless);
        assert_eq!(d.transcode_max_bytes, DEFAULT_TRANSCODE_MAX_BYTES);
        assert_eq!(d.max_object_attempts, 3);
        assert_eq!(s.log_format, LogFormat::Text);
        let s = resolve(&format!(
            "[log]\nformat = \"json\"\n\n{base}transcode = \"never\"\n\
             transcode_max_bytes = 4096\nmax_object_attempts = 5\n"
        ))
        .unwrap();
        let d = &s.destinations[0];
        assert_eq!(
            (d.transcode, d.transcode_max_bytes, d.max_object_attempts),
            (TranscodePolicy::Never, 4096, 5)
        );
        assert_eq!(s.log_format, LogFormat::Json);
        // The API's round trip keeps them.
        let back = resolve_destination(RawDestination::from(d), "GW").unwrap();
        assert_eq!(&back, d);
        for (bad, key) in [
            ("transcode = \"lossy\"", "transcode"),
            ("transcode_max_bytes = 10", "transcode_max_bytes"),
            ("max_object_attempts = 0", "max_object_attempts"),
        ] {
            let e = resolve(&format!("{base}{bad}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        let e = resolve("[log]\nformat = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("format"), "{e}");
    }

    #[test]
    fn ae_titles() {
        assert_eq!(validate_ae_title("  ABC "), Ok("ABC".into()));
        assert!(validate_ae_title("    ").is_err());
        assert!(validate_ae_title("A\\B").is_err());
        assert!(validate_ae_title("12345678901234567").is_err());
    }

    #[test]
    fn destination_tls_is_validated_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let dest = |tls: RawTls| RawDestination {
            name: Some("pacs".into()),
            ae_title: Some("PACS".into()),
            host: Some("pacs.example.org".into()),
            port: Some(2762),
            tls: Some(tls),
            ..Default::default()
        };
        let d = resolve_destination(
            dest(RawTls {
                ca_file: Some(ca.clone()),
                ..Default::default()
            }),
            "GW",
        )
        .unwrap();
        let t = d.tls.clone().unwrap();
        assert_eq!(t.verify_name(&d.host), "pacs.example.org");
        assert_eq!(t.client, None);
        // What the API returns resolves to the same destination.
        assert_eq!(
            resolve_destination(RawDestination::from(&d), "GW").unwrap(),
            d
        );
        let err = |tls: RawTls| resolve_destination(dest(tls), "GW").unwrap_err();
        let (k, m) = err(RawTls::default());
        assert_eq!(k, "tls");
        assert!(m.contains("ca_file is required"), "{m}");
        let (_, m) = err(RawTls {
            ca_file: Some(dir.path().join("missing.pem")),
            ..Default::default()
        });
        assert!(m.contains("missing.pem"), "{m}");
        let (_, m) = err(RawTls {
            ca_file: Some(ca.clone()),
            cert_file: Some(ca.clone()),
            ..Default::default()
        });
        assert!(m.contains("cert_file needs key_file"), "{m}");
        let (_, m) = err(RawTls {
            ca_file: Some(ca.clone()),
            server_name: Some("not a name".into()),
            ..Default::default()
        });
        assert!(m.contains("neither a DNS name nor an IP address"), "{m}");
    }

    #[test]
    fn listeners_tls_and_access() {
        let s = resolve(
            "[store]\nlisten = \"off\"\ntls_listen = \"127.0.0.1:2762\"\ntls_cert_file = \"/c.pem\"\n\
             tls_key_file = \"/k.pem\"\ntls_client_ca_file = \"/ca.pem\"\n\
             allowed_peers = [\"10.1.0.0/16\", \"127.0.0.2\", \"::1\"]\nmax_unassociated_connections = 8\n\
             [worklist]\ntls_listen = \"127.0.0.1:2763\"\n",
        )
        .unwrap();
        let n = &s.store.net;
        assert_eq!(n.listen, None);
        let tls = n.tls.as_ref().unwrap();
        assert_eq!(tls.listen.port(), 2762);
        assert_eq!(tls.client_ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(n.max_unassociated_connections, 8);
        assert!(n.admits("10.1.200.3".parse().unwrap()));
        assert!(n.admits("127.0.0.2".parse().unwrap()));
        assert!(
            n.admits("::ffff:10.1.0.9".parse().unwrap()),
            "v4-mapped peers"
        );
        assert!(!n.admits("127.0.0.1".parse().unwrap()));
        assert!(!n.admits("10.2.0.1".parse().unwrap()));
        // The worklist's certificate and key default to the store's; its CA does not.
        let w = s.worklist.net.tls.as_ref().unwrap();
        assert_eq!(w.cert_file, Path::new("/c.pem"));
        assert_eq!(w.client_ca_file, None);
        assert!(
            s.worklist.net.listen.is_some() && s.worklist.net.admits("10.9.9.9".parse().unwrap())
        );
    }

    #[test]
    fn listener_errors_name_the_key() {
        for (text, key) in [
            (
                "[store]\ntls_listen = \"127.0.0.1:1\"\n",
                "store.tls_cert_file",
            ),
            ("[store]\nlisten = \"off\"\n", "store.listen"),
            (
                "[worklist]\nallowed_peers = [\"10.0.0.0/33\"]\n",
                "worklist.allowed_peers",
            ),
            (
                "[worklist]\nmax_unassociated_connections = 0\n",
                "worklist.max_unassociated_connections",
            ),
            ("[store]\ntls_listen = \"x\"\n", "store.tls_listen"),
        ] {
            let e = resolve(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
