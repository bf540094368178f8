//! Prometheus metrics: recorded lock-free where the work happens, rendered on scrape.
//!
//! **Recording.** One process-global [`Metrics`] ([`global`], sized by [`init`]) holds a slot
//! of atomic counters per ingest core. The code running on core `c` (an association never
//! leaves its core) adds to slot `c` with `Ordering::Relaxed`: no lock, no shared cache line
//! (each slot is `#[repr(align(128))]`, two 64-byte lines, so adjacent-line prefetching does
//! not make neighbours share either), so recording costs an uncontended atomic add. Core
//! indexes beyond the slots made at start-up (or a [`global`] used before [`init`]) fall back
//! to one shared overflow slot: still correct, merely shared. Histograms are fixed buckets of
//! per-slot atomic counts plus an integer sum (nanoseconds or objects), so nothing on the hot
//! path touches a float or a lock. The journal writer (group sizes and times), the
//! materializer (checkpoints) and the forwarder's workers (results and latency per
//! destination) record into their own atomics; a destination's are created on first use
//! behind a read-mostly lock.
//!
//! **Scraping.** [`render`] sums the slots and adds what only the caller knows at scrape time
//! ([`Snapshot`]: queue depths read from the database, disk space, the I/O backend), then
//! writes the exposition with `prometheus-client`'s text encoder through its
//! [`Collector`] interface, fed freshly aggregated values on every scrape.
//!
//! **Format.** The output is the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]), the format
//! `promtool check metrics` and every Prometheus server read. `prometheus-client` writes
//! OpenMetrics, which names a counter family `x` and its sample `x_total`; the 0.0.4 parser
//! reads that sample as an untyped family without help, and `promtool` rejects it. So
//! counters are described with their full `_total` name and their value is written with the
//! encoder's plain-sample (gauge) writer, which adds no suffix; histograms and gauges are the
//! same in both formats. No `# EOF` and no `# UNIT` line are written, and label values are
//! escaped here (the crate writes them verbatim).
//!
//! **Metric families** (all prefixed `dicomgw_`):
//! - `associations_active{service}`: associations accepted and not yet ended.
//! - `associations_total{service,result}`: associations that ended, once each, by how:
//!   `released`, `aborted` (by either side, a timeout, a protocol error, a dropped connection)
//!   or `rejected` (A-ASSOCIATE-RJ). Accepted = released + aborted + active.
//! - `instances_received_total`, `bytes_received_total`: objects answered with success
//!   (stored, or a duplicate acknowledged under the duplicate policy) and their *dataset*
//!   bytes as received on the wire (P-DATA values; no PDU or command-set overhead, no
//!   Part-10 header).
//! - `cstore_total{status}`: C-STORE-RSPs sent, by status class (`success`, `warning`,
//!   `failure`, PS3.7 Annex C); `cstore_duration_seconds`: from the C-STORE-RQ command set
//!   decoded to its response handed to the socket.
//! - `commit_batch_objects`, `commit_duration_seconds`: objects per ingest journal group and
//!   the time one group takes (decisions, one write, one flush).
//! - `journal_pending_objects`: acknowledged objects not yet checkpointed into the index;
//!   `journal_lag_seconds`: age of the oldest of them; `checkpoint_objects`,
//!   `checkpoint_duration_seconds`: objects per checkpoint and its time (files, syncfs,
//!   index commit); `journal_waits_total{reason}`, `journal_wait_seconds_total{reason}`:
//!   how often and how long the journal writer held a group back until a checkpoint made
//!   room (`ring_full`: no free segment; `max_pending_objects`: the backlog at its bound),
//!   the associations waiting for their answers meanwhile; `ingest_lost_objects_total`:
//!   acknowledged objects given up because a disk write failed and their bytes could not be
//!   read back intact (never indexed damaged; each has an ERROR line naming it).
//! - `forward_total{destination,result}`: forward attempts by outcome (`delivered`, `retry`,
//!   `dead`; the attempt that sends a job to the dead letters counts as `dead`, whether it was
//!   refused outright or exhausted `max_attempts` or `max_object_attempts`);
//!   `forward_duration_seconds{destination}`: one C-STORE to the destination, request to
//!   response; `forward_transcoded_total{destination,from,to}`: objects converted to another
//!   transfer syntax (UIDs) because the destination refused theirs.
//! - `storage_commitment_requests_total{result}`: Storage Commitment requests `refused` at the
//!   N-ACTION, reported and acknowledged with `all_committed` / `some_failed`, or `expired`
//!   (dropped undelivered after the maximum age);
//!   `storage_commitment_pending`: requests recorded and not yet acknowledged.
//! - `queue_jobs{destination,state}`, `queue_paused{destination}`, `disk_free_bytes`,
//!   `disk_size_bytes`, `io_backend_info{backend}`, `build_info{version}`; and the
//!   conventional `process_start_time_seconds` (alert `DicomGwRestarting` counts its changes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use serde::{Deserialize, Serialize};

/// HTTP `Content-Type` of [`render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The DICOM service an association serves (label `service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Service {
    /// Storage and Verification SCP.
    Store,
    /// Modality Worklist and MPPS SCP.
    Worklist,
}

impl Service {
    const ALL: [Service; 2] = [Service::Store, Service::Worklist];

    fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Service::Store => "store",
            Service::Worklist => "worklist",
        }
    }
}

const SERVICES: usize = Service::ALL.len();

/// How an association ended (label `result` of `dicomgw_associations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AssociationEnd {
    Released,
    Aborted,
    Rejected,
}

impl AssociationEnd {
    const ALL: [AssociationEnd; 3] = [Self::Released, Self::Aborted, Self::Rejected];

    fn label(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::Aborted => "aborted",
            Self::Rejected => "rejected",
        }
    }
}

const ENDS: usize = AssociationEnd::ALL.len();

/// C-STORE status classes (label `status`), PS3.7 Annex C.
const STATUS_CLASSES: [&str; 3] = ["success", "warning", "failure"];

/// The class of a C-STORE status, as the caller (who knows DIMSE) classified it; label
/// `status` of `dicomgw_cstore_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 0000.
    Success = 0,
    /// Warning statuses (Bxxx and the others of PS3.7 Annex C).
    Warning = 1,
    /// Anything else: the object was not stored.
    Failure = 2,
}

/// Forward outcomes (label `result`).
const FORWARD_RESULTS: [&str; 3] = ["delivered", "retry", "dead"];

/// Upper bounds (nanoseconds) of the latency buckets: 0.5 ms to 2 min, then +Inf. A small
/// object on a LAN is answered in about a millisecond; a 1 GiB one takes many seconds.
const LATENCY_BOUNDS_NS: [u64; 17] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    120_000_000_000,
];
const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// Upper bounds of the group-commit batch-size buckets (objects), then +Inf
/// (`commit_max_batch` defaults to 1024).
const BATCH_BOUNDS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
const BATCH_BUCKETS: usize = BATCH_BOUNDS.len() + 1;

const NS_PER_SECOND: f64 = 1e9;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A histogram as atomic per-bucket (non-cumulative) counts and an integer sum; `N` is the
/// number of bounds plus one (+Inf). The count is the sum of the buckets, so the two can
/// never disagree.
#[derive(Debug)]
struct AtomicHistogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> AtomicHistogram<N> {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    /// Records `v` in the first bucket whose bound is ≥ `v` (Prometheus `le` semantics).
    fn observe(&self, bounds: &[u64], v: u64) {
        debug_assert_eq!(bounds.len() + 1, N);
        let i = bounds.partition_point(|&b| b < v);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    fn add_to(&self, into: &mut HistogramValue) {
        for (acc, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *acc += b.load(Relaxed);
        }
        into.sum += self.sum.load(Relaxed);
    }
}

/// Summed histogram values, ready to encode.
#[derive(Debug, Clone, PartialEq)]
struct HistogramValue {
    /// Per-bucket counts, same order as the bounds, +Inf last.
    buckets: Vec<u64>,
    /// Sum in recording units (ns or objects).
    sum: u64,
}

impl HistogramValue {
    fn zero(n: usize) -> Self {
        Self {
            buckets: vec![0; n],
            sum: 0,
        }
    }

    /// Encodes the histogram in rendering units (recording units divided by `divisor`: a
    /// division, so round bounds stay round, `30` rather than `30.000000000000005`). +Inf is
    /// `f64::MAX`, as the encoder expects; it accumulates the counts itself.
    fn encode(&self, bounds: &[u64], divisor: f64, m: &mut MetricEncoder) -> std::fmt::Result {
        #[allow(clippy::cast_precision_loss)] // bounds and sums are far below 2^53
        let pairs: Vec<(f64, u64)> = bounds
            .iter()
            .map(|&b| b as f64 / divisor)
            .chain(std::iter::once(f64::MAX))
            .zip(self.buckets.iter().copied())
            .collect();
        let count = self.buckets.iter().sum();
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum as f64 / divisor;
        m.encode_histogram::<NoLabelSet>(sum, count, &pairs, None)
    }
}

/// What one ingest core records. Written only by its core (or, for the overflow slot, by
/// every core beyond the slot count), read by scrapes.
#[derive(Debug)]
#[repr(align(128))]
struct CoreSlot {
    /// Accepted minus ended associations of this core, by service (a gauge).
    associations_active: [AtomicI64; SERVICES],
    /// Ended associations, by service and [`AssociationEnd`].
    associations_ended: [[AtomicU64; ENDS]; SERVICES],
    instances: AtomicU64,
    dataset_bytes: AtomicU64,
    /// C-STORE-RSPs by [`STATUS_CLASSES`] index.
    cstore: [AtomicU64; 3],
    cstore_latency: AtomicHistogram<LATENCY_BUCKETS>,
}

impl CoreSlot {
    fn new() -> Self {
        Self {
            associations_active: std::array::from_fn(|_| AtomicI64::new(0)),
            associations_ended: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            instances: AtomicU64::new(0),
            dataset_bytes: AtomicU64::new(0),
            cstore: std::array::from_fn(|_| AtomicU64::new(0)),
            cstore_latency: AtomicHistogram::new(),
        }
    }
}

/// What the forwarder records for one destination (a handful of worker threads share it).
#[derive(Debug)]
pub struct DestinationMetrics {
    /// Attempts by [`FORWARD_RESULTS`] index.
    results: [AtomicU64; 3],
    latency: AtomicHistogram<LATENCY_BUCKETS>,
    /// Conversions by (from, to) transfer syntax UID: rare (only for destinations that refuse
    /// a syntax), so a locked map is cheap enough and holds only the pairs that happened.
    transcoded: std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl DestinationMetrics {
    fn new() -> Self {
        Self {
            results: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: AtomicHistogram::new(),
            transcoded: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one object converted from transfer syntax `from` to `to` (UIDs).
    pub fn transcoded(&self, from: &'static str, to: &'static str) {
        *self
            .transcoded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((from, to))
            .or_insert(0) += 1;
    }

    /// Counts one attempt's result.
    pub fn record(&self, result: ForwardResult) {
        self.results[result as usize].fetch_add(1, Relaxed);
    }

    /// Records one C-STORE round trip (request sent to response received).
    pub fn observe(&self, elapsed: Duration) {
        self.latency.observe(&LATENCY_BOUNDS_NS, nanos(elapsed));
    }
}

/// Job counts of one destination (filled by `queue::Queue::stats`; defined here so the
/// metrics stay a leaf that every layer can record into).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationStats {
    /// Name.
    pub destination: String,
    /// Waiting, never tried.
    pub pending: u64,
    /// Waiting for a retry.
    pub retry: u64,
    /// Being sent.
    pub in_flight: u64,
    /// Dead letters.
    pub dead: u64,
    /// Delivered since the database was created.
    pub done: u64,
    /// Whether forwarding to it is paused.
    pub paused: bool,
}

/// How one forward attempt ended, as counted in `dicomgw_forward_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardResult {
    /// Success or warning from the destination.
    Delivered,
    /// A transient failure; the job waits for a retry.
    Retry,
    /// A permanent refusal; the job is a dead letter.
    Dead,
}

/// Every metric the daemon records. Normally the process-global one ([`global`]); tests make
/// their own.
#[derive(Debug)]
pub struct Metrics {
    /// One slot per ingest core, then the shared overflow slot.
    cores: Box<[CoreSlot]>,
    commit_batch: AtomicHistogram<BATCH_BUCKETS>,
    commit_duration: AtomicHistogram<LATENCY_BUCKETS>,
    checkpoint_objects: AtomicHistogram<BATCH_BUCKETS>,
    checkpoint_duration: AtomicHistogram<LATENCY_BUCKETS>,
    journal_pending: AtomicU64,
    /// Waits for a checkpoint by [`JournalWait`], and their nanoseconds (rare: shared atomics).
    journal_waits: [AtomicU64; 2],
    journal_wait_ns: [AtomicU64; 2],
    /// Acknowledged objects lost to a failed disk write.
    ingest_lost: AtomicU64,
    /// When this process's metrics began (the daemon's start), seconds since the epoch: a
    /// change of `process_start_time_seconds` is a restart.
    started_at_s: u64,
    /// Reception time (µs since the epoch) of the oldest object not yet checkpointed; 0:
    /// none. The age is taken when the metrics are read, so it never goes stale.
    journal_oldest_us: AtomicU64,
    destinations: RwLock<BTreeMap<String, Arc<DestinationMetrics>>>,
    worklist: WorklistMetrics,
    /// Rejected associations by service and [`REJECT_REASONS`] index (rare: shared atomics).
    rejects: [[AtomicU64; REJECT_REASONS.len()]; SERVICES],
    /// Connections closed before association to make room for newer ones, by service.
    evicted: [AtomicU64; SERVICES],
    /// Duplicates by [`DuplicateOutcome`] (rare: shared atomics).
    duplicates: [AtomicU64; 4],
    /// Objects kept in quarantine, by [`NONCONFORMANT_REASONS`] index.
    nonconformant: [AtomicU64; NONCONFORMANT_REASONS.len()],
    /// Storage Commitment requests by [`COMMITMENT_RESULTS`] index.
    commitment_requests: [AtomicU64; 4],
    /// Storage Commitment requests recorded and not yet reported (last count seen).
    commitment_pending: AtomicU64,
    /// Query/Retrieve C-MOVE and C-GET requests by operation and final status class.
    qr_requests: [[AtomicU64; QR_RESULTS.len()]; QR_OPS.len()],
}

/// Label values of `dicomgw_qr_requests_total{op}`.
const QR_OPS: [&str; 3] = ["move", "get", "find"];
/// Label values of `dicomgw_qr_requests_total{result}`.
const QR_RESULTS: [&str; 4] = ["success", "warning", "cancel", "failure"];

/// A Query/Retrieve operation, for [`Metrics::qr_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrOp {
    /// C-MOVE.
    Move,
    /// C-GET.
    Get,
    /// C-FIND on a Query/Retrieve model (the worklist's has its own metrics).
    Find,
}

/// Label values of `dicomgw_storage_commitment_requests_total{result}`: refused at the
/// N-ACTION, or reported (and acknowledged) with every reference committed or with failures.
/// `expired`: dropped undelivered after `store::commitment::MAX_AGE`.
pub const COMMITMENT_RESULTS: [&str; 4] = ["refused", "all_committed", "some_failed", "expired"];

/// Label values of `dicomgw_nonconformant_total{reason}`: why an object went to quarantine.
pub const NONCONFORMANT_REASONS: [&str; 4] = [
    "study_uid_missing",
    "series_uid_missing",
    "study_uid_invalid",
    "series_uid_invalid",
];

/// Label values of `dicomgw_association_rejects_total{reason}`; the last catches any other.
const REJECT_REASONS: [&str; 7] = [
    "protocol_version",
    "application_context",
    "called_ae_title",
    "calling_ae_title",
    "local_limit",
    "peer_address",
    "other",
];

/// Worklist service counters: low-rate, so plain shared atomics (no per-core slots).
#[derive(Debug)]
struct WorklistMetrics {
    /// MWL C-FIND requests by [`FIND_RESULTS`] index.
    find: [AtomicU64; 3],
    /// Pending responses (matches) sent.
    matches: AtomicU64,
    /// Request to final response.
    find_duration: AtomicHistogram<LATENCY_BUCKETS>,
    /// MPPS requests by operation (N-CREATE, N-SET) and status class (success, failure).
    mpps: [[AtomicU64; 2]; 2],
}

/// Label values of `dicomgw_worklist_find_total{result}`.
const FIND_RESULTS: [&str; 3] = ["success", "cancel", "failure"];

/// How a C-FIND ended, for [`Metrics::worklist_find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindResult {
    /// Final status 0000.
    Success,
    /// Ended by a C-CANCEL (FE00).
    Cancel,
    /// Refused (A900, C000, …).
    Failure,
}

/// Why the journal writer waited for a checkpoint ([`Metrics::journal_waited`],
/// `dicomgw_journal_waits_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalWait {
    /// No free segment in the journal's ring.
    RingFull,
    /// `[store] max_pending_objects` acknowledged objects wait for their checkpoint.
    MaxPendingObjects,
}

impl JournalWait {
    /// Every reason, in label order.
    pub const ALL: [JournalWait; 2] = [JournalWait::RingFull, JournalWait::MaxPendingObjects];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            JournalWait::RingFull => "ring_full",
            JournalWait::MaxPendingObjects => "max_pending_objects",
        }
    }
}

/// What became of an object whose SOP Instance UID was stored already, for
/// [`Metrics::duplicate`] (`dicomgw_duplicates_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateOutcome {
    /// The same bytes: acknowledged, nothing new written.
    Identical,
    /// Different bytes, policy `keep`: the stored object stays.
    KeptExisting,
    /// Different bytes, policy `replace`: the new object replaced the stored one.
    Replaced,
    /// Different bytes, policy `reject`: refused 0111.
    Rejected,
}

impl DuplicateOutcome {
    /// Every outcome, in label order.
    pub const ALL: [DuplicateOutcome; 4] = [
        DuplicateOutcome::Identical,
        DuplicateOutcome::KeptExisting,
        DuplicateOutcome::Replaced,
        DuplicateOutcome::Rejected,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            DuplicateOutcome::Identical => "identical",
            DuplicateOutcome::KeptExisting => "kept_existing",
            DuplicateOutcome::Replaced => "replaced",
            DuplicateOutcome::Rejected => "rejected",
        }
    }
}

/// Which MPPS request, for [`Metrics::mpps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MppsOp {
    /// N-CREATE
    Create,
    /// N-SET
    Set,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// Creates the global metrics with one slot per ingest core; call once at start-up, before
/// the cores run. If [`global`] was already used, the existing metrics stay (cores beyond
/// their slot count share the overflow slot).
pub fn init(cores: usize) -> &'static Metrics {
    GLOBAL.get_or_init(|| Metrics::new(cores))
}

/// The global metrics, created with one slot per available CPU if [`init`] was not called.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(|| {
        Metrics::new(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
    })
}

/// Renders the global metrics with `snapshot` (see [`Metrics::render`]).
pub fn render(snapshot: &Snapshot) -> String {
    global().render(snapshot)
}

/// Counters since the process started, summed over the cores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Objects answered with success (duplicates included).
    pub instances_received: u64,
    /// Their dataset bytes.
    pub dataset_bytes_received: u64,
    /// C-STORE-RSPs with a success status.
    pub cstore_success: u64,
    /// … with a warning status.
    pub cstore_warning: u64,
    /// … with a failure status.
    pub cstore_failure: u64,
    /// Associations released normally.
    pub associations_released: u64,
    /// Associations aborted (either side, timeouts, protocol errors).
    pub associations_aborted: u64,
    /// Associations rejected.
    pub associations_rejected: u64,
}

/// Scrape-time values only the caller can read.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Job counts per destination (`queue::Queue::stats` with the configured names, so
    /// destinations without jobs appear too).
    pub queue: Vec<DestinationStats>,
    /// Size of the data filesystem (`store::disk_usage(data_dir).0`).
    pub disk_total_bytes: u64,
    /// Space on the data filesystem available to the daemon (`store::disk_usage(data_dir).1`,
    /// `f_bavail`: reserved blocks excluded).
    pub disk_free_bytes: u64,
    /// The I/O backend running (`uring` or `epoll`).
    pub io_backend: String,
}

/// Counts an accepted association as active until dropped; then it counts as ended —
/// `released` if [`AssociationMetric::released`] was called, else `aborted`. Made by
/// [`Metrics::association_accepted`]; keep it on the association's core.
#[derive(Debug)]
pub struct AssociationMetric<'a> {
    slot: &'a CoreSlot,
    service: Service,
    end: AssociationEnd,
}

impl AssociationMetric<'_> {
    /// The association ended with an orderly A-RELEASE.
    pub fn released(mut self) {
        self.end = AssociationEnd::Released;
    }
}

impl Drop for AssociationMetric<'_> {
    fn drop(&mut self) {
        let s = self.service.index();
        self.slot.associations_active[s].fetch_sub(1, Relaxed);
        self.slot.associations_ended[s][self.end as usize].fetch_add(1, Relaxed);
    }
}

impl Metrics {
    /// Metrics with `cores` per-core slots (at least one) plus the overflow slot.
    pub fn new(cores: usize) -> Self {
        Self {
            cores: (0..=cores.max(1)).map(|_| CoreSlot::new()).collect(),
            commit_batch: AtomicHistogram::new(),
            commit_duration: AtomicHistogram::new(),
            checkpoint_objects: AtomicHistogram::new(),
            checkpoint_duration: AtomicHistogram::new(),
            journal_pending: AtomicU64::new(0),
            journal_waits: std::array::from_fn(|_| AtomicU64::new(0)),
            journal_wait_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            ingest_lost: AtomicU64::new(0),
            started_at_s: crate::clock::timestamp_us() / 1_000_000,
            journal_oldest_us: AtomicU64::new(0),
            destinations: RwLock::new(BTreeMap::new()),
            worklist: WorklistMetrics {
                find: Default::default(),
                matches: AtomicU64::new(0),
                find_duration: AtomicHistogram::new(),
                mpps: Default::default(),
            },
            rejects: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            evicted: std::array::from_fn(|_| AtomicU64::new(0)),
            duplicates: std::array::from_fn(|_| AtomicU64::new(0)),
            nonconformant: std::array::from_fn(|_| AtomicU64::new(0)),
            commitment_requests: std::array::from_fn(|_| AtomicU64::new(0)),
            commitment_pending: AtomicU64::new(0),
            qr_requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// A Storage Commitment N-ACTION was refused.
    pub fn commitment_request_refused(&self) {
        self.commitment_requests[0].fetch_add(1, Relaxed);
    }

    /// A Storage Commitment report was acknowledged by the requestor.
    pub fn commitment_reported(&self, all_committed: bool) {
        let i = if all_committed { 1 } else { 2 };
        self.commitment_requests[i].fetch_add(1, Relaxed);
    }

    /// A pending Storage Commitment request was dropped undelivered, too old.
    pub fn commitment_expired(&self) {
        self.commitment_requests[3].fetch_add(1, Relaxed);
    }

    /// The number of pending Storage Commitment requests, as last counted.
    pub fn commitment_pending(&self, n: u64) {
        self.commitment_pending.store(n, Relaxed);
    }

    /// A Modality Worklist C-FIND ended: how, after how many matches sent, and how long from
    /// the request to the final response.
    pub fn worklist_find(&self, result: FindResult, matches: usize, elapsed: Duration) {
        let w = &self.worklist;
        w.find[result as usize].fetch_add(1, Relaxed);
        w.matches
            .fetch_add(u64::try_from(matches).unwrap_or(u64::MAX), Relaxed);
        w.find_duration.observe(&LATENCY_BOUNDS_NS, nanos(elapsed));
    }

    /// A C-MOVE or C-GET ended with final `status` (0000 success, Bxxx warning, FE00 cancel,
    /// anything else failure).
    pub fn qr_request(&self, op: QrOp, status: u16) {
        let result = match status {
            0x0000 => 0,
            0xB000..=0xBFFF => 1,
            0xFE00 => 2,
            _ => 3,
        };
        self.qr_requests[op as usize][result].fetch_add(1, Relaxed);
    }

    /// An MPPS request was answered with `status`.
    pub fn mpps(&self, op: MppsOp, status: u16) {
        let class = usize::from(status != 0);
        self.worklist.mpps[op as usize][class].fetch_add(1, Relaxed);
    }

    /// An object without a usable Study or Series Instance UID was kept in quarantine;
    /// `reason` is one of [`NONCONFORMANT_REASONS`] (another value is not counted).
    pub fn nonconformant(&self, reason: &str) {
        if let Some(i) = NONCONFORMANT_REASONS.iter().position(|r| *r == reason) {
            self.nonconformant[i].fetch_add(1, Relaxed);
        }
    }

    /// An object arrived under a SOP Instance UID that was stored already.
    pub fn duplicate(&self, outcome: DuplicateOutcome) {
        self.duplicates[outcome as usize].fetch_add(1, Relaxed);
    }

    fn slot(&self, core: usize) -> &CoreSlot {
        let overflow = self.cores.len() - 1;
        &self.cores[core.min(overflow)]
    }

    /// An association on `core` was accepted (A-ASSOCIATE-AC sent): active until the
    /// returned guard drops.
    pub fn association_accepted(&self, core: usize, service: Service) -> AssociationMetric<'_> {
        let slot = self.slot(core);
        slot.associations_active[service.index()].fetch_add(1, Relaxed);
        AssociationMetric {
            slot,
            service,
            end: AssociationEnd::Aborted,
        }
    }

    /// An association on `core` was rejected (A-ASSOCIATE-RJ) for `reason` (a label of
    /// `dicomgw_association_rejects_total`; unknown ones count as "other").
    pub fn association_rejected(&self, core: usize, service: Service, reason: &str) {
        self.slot(core).associations_ended[service.index()][AssociationEnd::Rejected as usize]
            .fetch_add(1, Relaxed);
        let i = REJECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REJECT_REASONS.len() - 1);
        self.rejects[service.index()][i].fetch_add(1, Relaxed);
    }

    /// A connection waiting for association was closed to make room for a newer one.
    pub fn connection_evicted(&self, service: Service) {
        self.evicted[service.index()].fetch_add(1, Relaxed);
    }

    /// An object received on `core` was answered with success; `dataset_bytes` is its
    /// dataset as received.
    pub fn instance_received(&self, core: usize, dataset_bytes: u64) {
        let slot = self.slot(core);
        slot.instances.fetch_add(1, Relaxed);
        slot.dataset_bytes.fetch_add(dataset_bytes, Relaxed);
    }

    /// A C-STORE-RSP with `status` was sent on `core`, `elapsed` after its request's command
    /// set was decoded.
    pub fn cstore_answered(&self, core: usize, class: StatusClass, elapsed: Duration) {
        let slot = self.slot(core);
        slot.cstore[class as usize].fetch_add(1, Relaxed);
        slot.cstore_latency
            .observe(&LATENCY_BOUNDS_NS, nanos(elapsed));
    }

    /// One checkpoint: objects materialized and indexed, and its time.
    pub fn checkpoint(&self, objects: usize, elapsed: Duration) {
        self.checkpoint_objects
            .observe(&BATCH_BOUNDS, u64::try_from(objects).unwrap_or(u64::MAX));
        self.checkpoint_duration
            .observe(&LATENCY_BOUNDS_NS, nanos(elapsed));
    }

    /// Acknowledged objects not yet in the index.
    pub fn journal_pending(&self, objects: u64) {
        self.journal_pending.store(objects, Relaxed);
    }

    /// The journal writer held a group back for `waited` until a checkpoint made room (or
    /// until it gave up and refused the group).
    pub fn journal_waited(&self, why: JournalWait, waited: Duration) {
        self.journal_waits[why as usize].fetch_add(1, Relaxed);
        self.journal_wait_ns[why as usize].fetch_add(nanos(waited), Relaxed);
    }

    /// An acknowledged object was given up: a disk write failed and its bytes did not read
    /// back intact.
    pub fn ingest_lost_object(&self) {
        self.ingest_lost.fetch_add(1, Relaxed);
    }

    /// Reception time (µs since the epoch) of the oldest acknowledged object not yet in
    /// the index, `None` when there is none: `dicomgw_journal_lag_seconds` is its age.
    pub fn journal_oldest(&self, received_at_us: Option<u64>) {
        self.journal_oldest_us
            .store(received_at_us.unwrap_or(0), Relaxed);
    }

    /// One ingest journal group: objects in it and its time.
    pub fn commit_batch(&self, objects: usize, elapsed: Duration) {
        self.commit_batch
            .observe(&BATCH_BOUNDS, u64::try_from(objects).unwrap_or(u64::MAX));
        self.commit_duration
            .observe(&LATENCY_BOUNDS_NS, nanos(elapsed));
    }

    /// The metrics of destination `name`, created on first use. Keep the `Arc` to record
    /// many events without looking the name up again.
    pub fn destination(&self, name: &str) -> Arc<DestinationMetrics> {
        if let Some(d) = self
            .destinations
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
        {
            return d.clone();
        }
        self.destinations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(DestinationMetrics::new()))
            .clone()
    }

    /// Counts the outcomes of a batch of forward attempts to `destination`.
    pub fn forward_results(
        &self,
        destination: &str,
        results: impl IntoIterator<Item = ForwardResult>,
    ) {
        let d = self.destination(destination);
        for r in results {
            d.record(r);
        }
    }

    /// Counters since start for `GET /api/v1/stats` (the same sums a scrape sees).
    pub fn totals(&self) -> Totals {
        let c = self.sum_cores();
        let ended = |e: AssociationEnd| {
            c.associations_ended
                .iter()
                .map(|by_end| by_end[e as usize])
                .sum::<u64>()
        };
        Totals {
            instances_received: c.instances,
            dataset_bytes_received: c.dataset_bytes,
            cstore_success: c.cstore[0],
            cstore_warning: c.cstore[1],
            cstore_failure: c.cstore[2],
            associations_released: ended(AssociationEnd::Released),
            associations_aborted: ended(AssociationEnd::Aborted),
            associations_rejected: ended(AssociationEnd::Rejected),
        }
    }

    /// Sums every slot and renders the whole exposition, with `snapshot`'s values, in the
    /// Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let exposition = Exposition {
            rejects: std::array::from_fn(|s| {
                std::array::from_fn(|r| self.rejects[s][r].load(Relaxed))
            }),
            evicted: std::array::from_fn(|s| self.evicted[s].load(Relaxed)),
            cores: self.sum_cores(),
            commit_batch: self.sum(&self.commit_batch),
            commit_duration: self.sum(&self.commit_duration),
            checkpoint_objects: self.sum(&self.checkpoint_objects),
            checkpoint_duration: self.sum(&self.checkpoint_duration),
            journal_pending: self.journal_pending.load(Relaxed),
            journal_waits: std::array::from_fn(|i| self.journal_waits[i].load(Relaxed)),
            journal_wait_ns: std::array::from_fn(|i| self.journal_wait_ns[i].load(Relaxed)),
            ingest_lost: self.ingest_lost.load(Relaxed),
            started_at_s: self.started_at_s,
            journal_lag_us: match self.journal_oldest_us.load(Relaxed) {
                0 => 0,
                t => crate::clock::timestamp_us().saturating_sub(t),
            },
            destinations: self.sum_destinations(snapshot),
            worklist: WorklistTotals {
                find: std::array::from_fn(|i| self.worklist.find[i].load(Relaxed)),
                matches: self.worklist.matches.load(Relaxed),
                find_duration: self.sum(&self.worklist.find_duration),
                mpps: std::array::from_fn(|op| {
                    std::array::from_fn(|c| self.worklist.mpps[op][c].load(Relaxed))
                }),
            },
            duplicates: std::array::from_fn(|i| self.duplicates[i].load(Relaxed)),
            nonconformant: std::array::from_fn(|i| self.nonconformant[i].load(Relaxed)),
            commitment_requests: std::array::from_fn(|i| self.commitment_requests[i].load(Relaxed)),
            commitment_pending: self.commitment_pending.load(Relaxed),
            qr_requests: std::array::from_fn(|op| {
                std::array::from_fn(|r| self.qr_requests[op][r].load(Relaxed))
            }),
            snapshot: snapshot.clone(),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(exposition));
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode_registry(&mut out, &registry)
            .expect("writing to a String cannot fail and every value fits");
        out
    }

    fn sum<const N: usize>(&self, h: &AtomicHistogram<N>) -> HistogramValue {
        let mut v = HistogramValue::zero(N);
        h.add_to(&mut v);
        v
    }

    fn sum_cores(&self) -> CoreTotals {
        let mut t = CoreTotals {
            associations_active: [0; SERVICES],
            associations_ended: [[0; ENDS]; SERVICES],
            instances: 0,
            dataset_bytes: 0,
            cstore: [0; 3],
            cstore_latency: HistogramValue::zero(LATENCY_BUCKETS),
        };
        for slot in &self.cores {
            for s in 0..SERVICES {
                t.associations_active[s] += slot.associations_active[s].load(Relaxed);
                for e in 0..ENDS {
                    t.associations_ended[s][e] += slot.associations_ended[s][e].load(Relaxed);
                }
            }
            t.instances += slot.instances.load(Relaxed);
            t.dataset_bytes += slot.dataset_bytes.load(Relaxed);
            for (acc, c) in t.cstore.iter_mut().zip(&slot.cstore) {
                *acc += c.load(Relaxed);
            }
            slot.cstore_latency.add_to(&mut t.cstore_latency);
        }
        t
    }

    /// Every destination seen by the forwarder or named in the snapshot, sorted by name.
    fn sum_destinations(&self, snapshot: &Snapshot) -> Vec<(String, DestinationTotals)> {
        for s in &snapshot.queue {
            self.destination(&s.destination);
        }
        self.destinations
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, d)| {
                let mut latency = HistogramValue::zero(LATENCY_BUCKETS);
                d.latency.add_to(&mut latency);
                let results = std::array::from_fn(|i| d.results[i].load(Relaxed));
                let transcoded = d
                    .transcoded
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .collect();
                (
                    name.clone(),
                    DestinationTotals {
                        results,
                        latency,
                        transcoded,
                    },
                )
            })
            .collect()
    }
}

/// The per-core slots, summed.
#[derive(Debug)]
struct CoreTotals {
    associations_active: [i64; SERVICES],
    associations_ended: [[u64; ENDS]; SERVICES],
    instances: u64,
    dataset_bytes: u64,
    cstore: [u64; 3],
    cstore_latency: HistogramValue,
}

#[derive(Debug)]
struct DestinationTotals {
    results: [u64; 3],
    latency: HistogramValue,
    transcoded: Vec<((&'static str, &'static str), u64)>,
}

/// One scrape's values, written by the encoder through [`Collector`].
#[derive(Debug)]
struct Exposition {
    rejects: [[u64; REJECT_REASONS.len()]; SERVICES],
    evicted: [u64; SERVICES],
    cores: CoreTotals,
    commit_batch: HistogramValue,
    commit_duration: HistogramValue,
    checkpoint_objects: HistogramValue,
    checkpoint_duration: HistogramValue,
    journal_pending: u64,
    journal_waits: [u64; 2],
    journal_wait_ns: [u64; 2],
    ingest_lost: u64,
    started_at_s: u64,
    journal_lag_us: u64,
    destinations: Vec<(String, DestinationTotals)>,
    worklist: WorklistTotals,
    duplicates: [u64; 4],
    nonconformant: [u64; NONCONFORMANT_REASONS.len()],
    commitment_requests: [u64; 4],
    commitment_pending: u64,
    qr_requests: [[u64; QR_RESULTS.len()]; QR_OPS.len()],
    snapshot: Snapshot,
}

#[derive(Debug)]
struct WorklistTotals {
    find: [u64; 3],
    matches: u64,
    find_duration: HistogramValue,
    mpps: [[u64; 2]; 2],
}

/// A label value, escaped as the text format requires (`\\`, `\"`, `\n`).
#[derive(Debug, Clone, Copy)]
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Writes one sample value: a counter's or a gauge's (see the module docs for why counters
/// use the plain-sample writer). Values beyond `i64::MAX` (which the writer refuses) are
/// clamped: no real counter gets there, and a scrape must not fail.
fn sample(m: &mut MetricEncoder, labels: &[(&str, Escaped)], v: u64) -> std::fmt::Result {
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    if labels.is_empty() {
        m.encode_gauge(&v)
    } else {
        m.encode_family(&labels)?.encode_gauge(&v)
    }
}

impl Collector for Exposition {
    #[allow(clippy::too_many_lines)] // one flat list of families reads best
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge, Histogram};
        let e = Escaped;
        let c = &self.cores;

        let mut m = enc.encode_descriptor(
            "dicomgw_associations_active",
            "Associations accepted and not yet ended, by DICOM service.",
            None,
            Gauge,
        )?;
        for s in Service::ALL {
            // Never negative: an association increments and decrements the same slot.
            let n = u64::try_from(c.associations_active[s.index()]).unwrap_or(0);
            sample(&mut m, &[("service", e(s.label()))], n)?;
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_associations_total",
            "Associations that ended, by DICOM service and how: released, aborted (either side, timeout, protocol error, dropped connection) or rejected.",
            None,
            Counter,
        )?;
        for s in Service::ALL {
            for end in AssociationEnd::ALL {
                let n = c.associations_ended[s.index()][end as usize];
                let labels = [("service", e(s.label())), ("result", e(end.label()))];
                sample(&mut m, &labels, n)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_association_rejects_total",
            "Associations rejected (A-ASSOCIATE-RJ), by DICOM service and reason.",
            None,
            Counter,
        )?;
        for s in Service::ALL {
            for (i, reason) in REJECT_REASONS.iter().enumerate() {
                let n = self.rejects[s.index()][i];
                let labels = [("service", e(s.label())), ("reason", e(reason))];
                sample(&mut m, &labels, n)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_connections_evicted_total",
            "Connections closed before association to make room for newer ones (max_unassociated_connections), by DICOM service.",
            None,
            Counter,
        )?;
        for s in Service::ALL {
            let n = self.evicted[s.index()];
            sample(&mut m, &[("service", e(s.label()))], n)?;
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_instances_received_total",
            "Objects received by C-STORE and answered with success (duplicates included).",
            None,
            Counter,
        )?;
        sample(&mut m, &[], c.instances)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_bytes_received_total",
            "Dataset bytes of the objects counted in dicomgw_instances_received_total, as received (no PDU, command or file meta overhead).",
            None,
            Counter,
        )?;
        sample(&mut m, &[], c.dataset_bytes)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_cstore_total",
            "C-STORE responses sent, by status class (success, warning, failure).",
            None,
            Counter,
        )?;
        for (class, n) in STATUS_CLASSES.iter().zip(c.cstore) {
            sample(&mut m, &[("status", e(class))], n)?;
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_cstore_duration_seconds",
            "Time from a C-STORE request's command to its response being sent (dataset reception, storage and group commit included).",
            None,
            Histogram,
        )?;
        c.cstore_latency
            .encode(&LATENCY_BOUNDS_NS, NS_PER_SECOND, &mut m)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_commit_batch_objects",
            "Objects per ingest journal group (one write and one flush each).",
            None,
            Histogram,
        )?;
        self.commit_batch.encode(&BATCH_BOUNDS, 1.0, &mut m)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_commit_duration_seconds",
            "Time one journal group takes: duplicate decisions, one write and its flush.",
            None,
            Histogram,
        )?;
        self.commit_duration
            .encode(&LATENCY_BOUNDS_NS, NS_PER_SECOND, &mut m)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_checkpoint_objects",
            "Objects per checkpoint (files placed, one syncfs, one index commit).",
            None,
            Histogram,
        )?;
        self.checkpoint_objects.encode(&BATCH_BOUNDS, 1.0, &mut m)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_checkpoint_duration_seconds",
            "Time one checkpoint takes: placing the files, syncing them and committing the index.",
            None,
            Histogram,
        )?;
        self.checkpoint_duration
            .encode(&LATENCY_BOUNDS_NS, NS_PER_SECOND, &mut m)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_journal_pending_objects",
            "Acknowledged objects (durable in the ingest journal) not yet checkpointed into the index.",
            None,
            Gauge,
        )?;
        sample(&mut m, &[], self.journal_pending)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_journal_lag_seconds",
            "Age of the oldest acknowledged object not yet checkpointed into the index.",
            None,
            Gauge,
        )?;
        m.encode_gauge(&(self.journal_lag_us as f64 / 1e6))?;

        let mut m = enc.encode_descriptor(
            "dicomgw_journal_waits_total",
            "Times the ingest journal writer held a group back until a checkpoint made room, by reason: ring_full (no free journal segment), max_pending_objects (the acknowledged backlog at its bound). The group's associations wait for their answers meanwhile.",
            None,
            Counter,
        )?;
        for (w, n) in JournalWait::ALL.iter().zip(self.journal_waits) {
            sample(&mut m, &[("reason", e(w.label()))], n)?;
        }
        let mut m = enc.encode_descriptor(
            "dicomgw_journal_wait_seconds_total",
            "Time the ingest journal writer spent holding groups back until a checkpoint made room, by reason (as dicomgw_journal_waits_total).",
            None,
            Counter,
        )?;
        for (w, ns) in JournalWait::ALL.iter().zip(self.journal_wait_ns) {
            let labels: &[(&str, Escaped)] = &[("reason", e(w.label()))];
            m.encode_family(&labels)?
                .encode_gauge(&(ns as f64 / NS_PER_SECOND))?;
        }
        let mut m = enc.encode_descriptor(
            "dicomgw_ingest_lost_objects_total",
            "Acknowledged objects given up because a disk write failed and their bytes no longer read back intact: never indexed damaged; an ERROR log line names each, for its sender to send again.",
            None,
            Counter,
        )?;
        sample(&mut m, &[], self.ingest_lost)?;

        let queue = &self.snapshot.queue;
        let mut m = enc.encode_descriptor(
            "dicomgw_queue_jobs",
            "Forwarding jobs per destination and state (pending, retry, in_flight, dead).",
            None,
            Gauge,
        )?;
        for q in queue {
            for (state, n) in [
                ("pending", q.pending),
                ("retry", q.retry),
                ("in_flight", q.in_flight),
                ("dead", q.dead),
            ] {
                let labels = [("destination", e(&q.destination)), ("state", e(state))];
                sample(&mut m, &labels, n)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_queue_paused",
            "1 if forwarding to the destination is paused.",
            None,
            Gauge,
        )?;
        for q in queue {
            sample(
                &mut m,
                &[("destination", e(&q.destination))],
                u64::from(q.paused),
            )?;
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_forward_total",
            "Forward attempts per destination and outcome (delivered, retry, dead).",
            None,
            Counter,
        )?;
        for (name, d) in &self.destinations {
            for (result, n) in FORWARD_RESULTS.iter().zip(d.results) {
                let labels = [("destination", e(name)), ("result", e(result))];
                sample(&mut m, &labels, n)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_forward_transcoded_total",
            "Objects converted to another transfer syntax (UIDs) because the destination refused theirs.",
            None,
            Counter,
        )?;
        for (name, d) in &self.destinations {
            for ((from, to), n) in &d.transcoded {
                let labels = [("destination", e(name)), ("from", e(from)), ("to", e(to))];
                sample(&mut m, &labels, *n)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_forward_duration_seconds",
            "Time of one forwarded C-STORE per destination, request to response.",
            None,
            Histogram,
        )?;
        for (name, d) in &self.destinations {
            let labels = [("destination", e(name))];
            let mut f = m.encode_family(&labels)?;
            d.latency
                .encode(&LATENCY_BOUNDS_NS, NS_PER_SECOND, &mut f)?;
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_disk_free_bytes",
            "Space available to the daemon on the data filesystem.",
            None,
            Gauge,
        )?;
        sample(&mut m, &[], self.snapshot.disk_free_bytes)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_disk_size_bytes",
            "Size of the data filesystem.",
            None,
            Gauge,
        )?;
        sample(&mut m, &[], self.snapshot.disk_total_bytes)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_io_backend_info",
            "The I/O backend the ingest cores run on (value always 1).",
            None,
            Gauge,
        )?;
        sample(&mut m, &[("backend", e(&self.snapshot.io_backend))], 1)?;

        let w = &self.worklist;
        let mut m = enc.encode_descriptor(
            "dicomgw_worklist_find_total",
            "Modality Worklist C-FIND requests, by how they ended (success, cancel by C-CANCEL, failure status).",
            None,
            Counter,
        )?;
        for (result, n) in FIND_RESULTS.iter().zip(w.find) {
            sample(&mut m, &[("result", e(result))], n)?;
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_worklist_matches_total",
            "Worklist items sent in pending C-FIND responses.",
            None,
            Counter,
        )?;
        sample(&mut m, &[], w.matches)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_worklist_find_duration_seconds",
            "Time from a Modality Worklist C-FIND request to its final response (all pending responses sent).",
            None,
            Histogram,
        )?;
        w.find_duration
            .encode(&LATENCY_BOUNDS_NS, NS_PER_SECOND, &mut m)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_mpps_total",
            "MPPS requests answered, by operation (n_create, n_set) and status class (success, failure).",
            None,
            Counter,
        )?;
        for (op, row) in ["n_create", "n_set"].iter().zip(w.mpps) {
            for (class, n) in ["success", "failure"].iter().zip(row) {
                sample(&mut m, &[("operation", e(op)), ("status", e(class))], n)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_duplicates_total",
            "Objects received under a SOP Instance UID already stored, by outcome: identical (same bytes), kept_existing, replaced, rejected (duplicate_policy).",
            None,
            Counter,
        )?;
        for (o, n) in DuplicateOutcome::ALL.iter().zip(self.duplicates) {
            sample(&mut m, &[("outcome", e(o.label()))], n)?;
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_nonconformant_total",
            "Objects kept in quarantine (accept_nonconformant) because their Study or Series Instance UID is missing or not a UID, by reason.",
            None,
            Counter,
        )?;
        for (r, n) in NONCONFORMANT_REASONS.iter().zip(self.nonconformant) {
            sample(&mut m, &[("reason", e(r))], n)?;
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_storage_commitment_requests_total",
            "Storage Commitment requests by result: refused (N-ACTION failure status), all_committed or some_failed (counted when the requestor acknowledges the report), expired (dropped undelivered after the maximum age).",
            None,
            Counter,
        )?;
        for (r, n) in COMMITMENT_RESULTS.iter().zip(self.commitment_requests) {
            sample(&mut m, &[("result", e(r))], n)?;
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_storage_commitment_pending",
            "Storage Commitment requests recorded whose report has not been acknowledged yet.",
            None,
            Gauge,
        )?;
        sample(&mut m, &[], self.commitment_pending)?;

        let mut m = enc.encode_descriptor(
            "dicomgw_qr_requests_total",
            "Query/Retrieve C-MOVE and C-GET requests, by operation and final status class (success 0000, warning B000, cancel FE00, failure).",
            None,
            Counter,
        )?;
        for (op, row) in QR_OPS.iter().zip(self.qr_requests) {
            for (result, n) in QR_RESULTS.iter().zip(row) {
                sample(&mut m, &[("op", e(op)), ("result", e(result))], n)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "dicomgw_build_info",
            "Build of the running daemon (value always 1).",
            None,
            Gauge,
        )?;
        sample(&mut m, &[("version", e(env!("CARGO_PKG_VERSION")))], 1)?;

        // The conventional name, so that restarts read as everywhere else.
        let mut m = enc.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the daemon since the Unix epoch, in seconds (a change is a restart).",
            None,
            Gauge,
        )?;
        sample(&mut m, &[], self.started_at_s)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `name{labels} value` lines of the exposition, keyed by `name{labels}`.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("sample line has a value");
                (k.to_owned(), v.parse().expect("numeric value"))
            })
            .collect()
    }

    /// The sample `key` (name and labels as rendered) of an exposition.
    pub(crate) fn value(text: &str, key: &str) -> f64 {
        *samples(text)
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in\n{text}"))
    }

    #[test]
    fn the_journal_lag_is_the_oldest_objects_age_when_read() {
        let m = Metrics::new(1);
        let snapshot = Snapshot {
            queue: vec![],
            disk_total_bytes: 1 << 40,
            disk_free_bytes: 1 << 30,
            io_backend: "epoll".into(),
        };
        let lag = |m: &Metrics| value(&m.render(&snapshot), "dicomgw_journal_lag_seconds");
        assert_eq!(lag(&m), 0.0, "nothing pending");
        // Received 3 s ago: the gauge says at least that, and it grows without another update.
        m.journal_oldest(Some(crate::clock::timestamp_us() - 3_000_000));
        let first = lag(&m);
        assert!((3.0..4.0).contains(&first), "{first}");
        std::thread::sleep(Duration::from_millis(50));
        assert!(lag(&m) >= first + 0.05, "the age is taken at each read");
        m.journal_oldest(None);
        assert_eq!(lag(&m), 0.0, "checkpointed");
    }

    #[test]
    fn journal_waits_are_counted_by_reason_with_their_time() {
        let m = Metrics::new(1);
        m.journal_waited(JournalWait::RingFull, Duration::from_millis(250));
        m.journal_waited(JournalWait::RingFull, Duration::from_millis(250));
        m.journal_waited(JournalWait::MaxPendingObjects, Duration::from_secs(30));
        let out = m.render(&Snapshot::default());
        let v = |k: &str| value(&out, k);
        assert_eq!(v("dicomgw_journal_waits_total{reason=\"ring_full\"}"), 2.0);
        assert_eq!(
            v("dicomgw_journal_waits_total{reason=\"max_pending_objects\"}"),
            1.0
        );
        assert_eq!(
            v("dicomgw_journal_wait_seconds_total{reason=\"ring_full\"}"),
            0.5
        );
        assert_eq!(
            v("dicomgw_journal_wait_seconds_total{reason=\"max_pending_objects\"}"),
            30.0
        );
    }

    #[test]
    fn lost_objects_are_counted() {
        let m = Metrics::new(1);
        let lost = |m: &Metrics| {
            value(
                &m.render(&Snapshot::default()),
                "dicomgw_ingest_lost_objects_total",
            )
        };
        assert_eq!(lost(&m), 0.0);
        m.ingest_lost_object();
        m.ingest_lost_object();
        assert_eq!(lost(&m), 2.0);
    }

    #[test]
    fn the_start_time_is_exposed() {
        let before = crate::clock::timestamp_us() / 1_000_000;
        let m = Metrics::new(1);
        let after = crate::clock::timestamp_us() / 1_000_000;
        let t = value(
            &m.render(&Snapshot::default()),
            "process_start_time_seconds",
        );
        assert!(
            (before as f64..=after as f64).contains(&t),
            "{before} <= {t} <= {after}"
        );
    }

    #[test]
    fn core_slots_are_summed() {
        let m = Metrics::new(2);
        m.instance_received(0, 1000);
        m.instance_received(1, 234);
        m.instance_received(1, 1);
        m.cstore_answered(0, StatusClass::Success, Duration::from_millis(3));
        m.cstore_answered(1, StatusClass::Warning, Duration::from_millis(30));
        m.cstore_answered(1, StatusClass::Failure, Duration::from_millis(300));
        let out = m.render(&Snapshot::default());
        assert_eq!(value(&out, "dicomgw_instances_received_total"), 3.0);
        assert_eq!(value(&out, "dicomgw_bytes_received_total"), 1235.0);
        assert_eq!(value(&out, "dicomgw_cstore_total{status=\"success\"}"), 1.0);
        assert_eq!(value(&out, "dicomgw_cstore_total{status=\"warning\"}"), 1.0);
        assert_eq!(value(&out, "dicomgw_cstore_total{status=\"failure\"}"), 1.0);
        assert_eq!(value(&out, "dicomgw_cstore_duration_seconds_count"), 3.0);
        let sum = value(&out, "dicomgw_cstore_duration_seconds_sum");
        assert!((sum - 0.333).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn cores_beyond_the_slots_share_the_overflow_slot() {
        let m = Metrics::new(1);
        m.instance_received(0, 1);
        m.instance_received(7, 2);
        m.instance_received(usize::MAX, 4);
        let out = m.render(&Snapshot::default());
        assert_eq!(value(&out, "dicomgw_instances_received_total"), 3.0);
        assert_eq!(value(&out, "dicomgw_bytes_received_total"), 7.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new(1);
        for n in [1, 1, 3, 100, 5000] {
            m.commit_batch(n, Duration::from_micros(700));
        }
        let out = m.render(&Snapshot::default());
        let b = |le: &str| {
            value(
                &out,
                &format!("dicomgw_commit_batch_objects_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("1.0"), 2.0);
        assert_eq!(b("2.0"), 2.0);
        assert_eq!(b("4.0"), 3.0);
        assert_eq!(b("64.0"), 3.0);
        assert_eq!(b("128.0"), 4.0);
        assert_eq!(b("4096.0"), 4.0);
        assert_eq!(b("+Inf"), 5.0);
        assert_eq!(value(&out, "dicomgw_commit_batch_objects_count"), 5.0);
        assert_eq!(value(&out, "dicomgw_commit_batch_objects_sum"), 5105.0);
        // Every bucket is ≥ the one before it, and +Inf equals the count.
        let buckets: Vec<f64> = out
            .lines()
            .filter(|l| l.starts_with("dicomgw_commit_duration_seconds_bucket"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert_eq!(buckets[LATENCY_BUCKETS - 1], 5.0);
        // Bounds render as written (no 30.000000000000005).
        for le in ["0.0005", "0.001", "0.0025", "1.0", "30.0", "120.0"] {
            let key = format!("dicomgw_commit_duration_seconds_bucket{{le=\"{le}\"}}");
            assert!(samples(&out).contains_key(&key), "no {key} in\n{out}");
        }
        // 700 µs is above the 0.5 ms bound and within 1 ms.
        assert_eq!(buckets[0], 0.0);
        assert_eq!(buckets[1], 5.0);
    }

    #[test]
    fn associations_are_counted_once_when_they_end() {
        let m = Metrics::new(2);
        let a = m.association_accepted(0, Service::Store);
        let b = m.association_accepted(1, Service::Store);
        m.association_rejected(1, Service::Store, "local_limit");
        let out = m.render(&Snapshot::default());
        assert_eq!(
            value(&out, "dicomgw_associations_active{service=\"store\"}"),
            2.0
        );
        a.released();
        drop(b);
        let out = m.render(&Snapshot::default());
        let total = |r: &str| {
            value(
                &out,
                &format!("dicomgw_associations_total{{service=\"store\",result=\"{r}\"}}"),
            )
        };
        assert_eq!(
            value(&out, "dicomgw_associations_active{service=\"store\"}"),
            0.0
        );
        assert_eq!(total("released"), 1.0);
        assert_eq!(total("aborted"), 1.0);
        assert_eq!(total("rejected"), 1.0);
    }

    #[test]
    fn forward_and_snapshot_families() {
        let m = Metrics::new(1);
        m.forward_results(
            "pacs",
            [
                ForwardResult::Delivered,
                ForwardResult::Delivered,
                ForwardResult::Retry,
                ForwardResult::Dead,
            ],
        );
        m.destination("pacs").observe(Duration::from_millis(2));
        m.destination("pacs")
            .transcoded("1.2.840.10008.1.2.1", "1.2.840.10008.1.2");
        m.destination("pacs")
            .transcoded("1.2.840.10008.1.2.1", "1.2.840.10008.1.2");
        let snapshot = Snapshot {
            queue: vec![DestinationStats {
                destination: "archive".into(),
                pending: 5,
                retry: 1,
                in_flight: 2,
                dead: 3,
                done: 9,
                paused: true,
            }],
            disk_total_bytes: 1 << 40,
            disk_free_bytes: 1 << 30,
            io_backend: "epoll".into(),
        };
        let out = m.render(&snapshot);
        let fwd = |d: &str, r: &str| {
            value(
                &out,
                &format!("dicomgw_forward_total{{destination=\"{d}\",result=\"{r}\"}}"),
            )
        };
        assert_eq!(fwd("pacs", "delivered"), 2.0);
        assert_eq!(fwd("pacs", "retry"), 1.0);
        assert_eq!(fwd("pacs", "dead"), 1.0);
        assert_eq!(
            value(
                &out,
                "dicomgw_forward_transcoded_total{destination=\"pacs\",from=\"1.2.840.10008.1.2.1\",to=\"1.2.840.10008.1.2\"}"
            ),
            2.0
        );
        // A configured destination without traffic is there with zeros.
        assert_eq!(fwd("archive", "delivered"), 0.0);
        assert_eq!(
            value(
                &out,
                "dicomgw_forward_duration_seconds_bucket{le=\"0.0025\",destination=\"pacs\"}"
            ),
            1.0
        );
        let jobs = |s: &str| {
            value(
                &out,
                &format!("dicomgw_queue_jobs{{destination=\"archive\",state=\"{s}\"}}"),
            )
        };
        assert_eq!(
            [
                jobs("pending"),
                jobs("retry"),
                jobs("in_flight"),
                jobs("dead")
            ],
            [5.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(
            value(&out, "dicomgw_queue_paused{destination=\"archive\"}"),
            1.0
        );
        assert_eq!(value(&out, "dicomgw_disk_free_bytes"), 1_073_741_824.0);
        assert_eq!(value(&out, "dicomgw_disk_size_bytes"), 1_099_511_627_776.0);
        assert_eq!(
            value(&out, "dicomgw_io_backend_info{backend=\"epoll\"}"),
            1.0
        );
        let version = format!(
            "dicomgw_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&out, &version), 1.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new(1);
        m.forward_results("a\"b\\c\nd", [ForwardResult::Delivered]);
        let out = m.render(&Snapshot::default());
        assert!(
            out.contains(r#"dicomgw_forward_total{destination="a\"b\\c\nd",result="delivered"} 1"#),
            "{out}"
        );
    }

    /// Parses the exposition as the Prometheus text format 0.0.4 demands: every family has
    /// HELP then TYPE; every sample belongs to the family declared last (counters named
    /// `…_total`, histograms with `_bucket`/`_sum`/`_count`); names and label names match
    /// the grammar; label values are quoted; values are numbers.
    #[test]
    fn output_is_valid_text_format() {
        let m = Metrics::new(2);
        m.instance_received(0, 10);
        m.forward_results("pacs", [ForwardResult::Delivered]);
        let snapshot = Snapshot {
            queue: vec![DestinationStats {
                destination: "pacs".into(),
                ..Default::default()
            }],
            io_backend: "uring".into(),
            ..Default::default()
        };
        let out = m.render(&snapshot);
        assert!(out.ends_with('\n'));
        let name_ok = |n: &str| {
            let mut cs = n.chars();
            cs.next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let mut family: Option<(String, String)> = None; // (name, type)
        let mut helped: Option<String> = None;
        let mut families = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has text");
                assert!(name_ok(name) && !help.is_empty(), "{line}");
                helped = Some(name.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE has a type");
                assert_eq!(helped.as_deref(), Some(name), "TYPE without HELP: {line}");
                assert!(["counter", "gauge", "histogram"].contains(&ty), "{line}");
                if ty == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                } else {
                    assert!(!name.ends_with("_total"), "{line}");
                }
                assert!(
                    !families.contains(&name.to_owned()),
                    "duplicate family {name}"
                );
                families.push(name.to_owned());
                family = Some((name.to_owned(), ty.to_owned()));
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            let (fam, ty) = family.as_ref().expect("sample before any TYPE");
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, Some(l.strip_suffix('}').expect("labels close"))),
                None => (series, None),
            };
            assert!(name_ok(name), "{line}");
            let expected_name = if ty == "histogram" {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(fam.as_str()))
            } else {
                name == fam
            };
            assert!(expected_name, "sample {name} outside family {fam}: {line}");
            if let Some(labels) = labels {
                let mut rest = labels;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
                    assert!(name_ok(key) && !key.contains(':'), "{line}");
                    // The value runs to the first unescaped quote.
                    let mut end = None;
                    let mut escaped = false;
                    for (i, ch) in after.char_indices() {
                        match (escaped, ch) {
                            (true, _) => escaped = false,
                            (false, '\\') => escaped = true,
                            (false, '"') => {
                                end = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    let end = end.expect("closing quote");
                    rest = after[end + 1..]
                        .strip_prefix(',')
                        .unwrap_or(&after[end + 1..]);
                }
            }
            if ty == "histogram" && name.ends_with("_bucket") {
                assert!(labels.is_some_and(|l| l.contains("le=\"")), "{line}");
            }
        }
        for required in [
            "dicomgw_associations_active",
            "dicomgw_associations_total",
            "dicomgw_instances_received_total",
            "dicomgw_bytes_received_total",
            "dicomgw_cstore_total",
            "dicomgw_cstore_duration_seconds",
            "dicomgw_commit_batch_objects",
            "dicomgw_commit_duration_seconds",
            "dicomgw_journal_waits_total",
            "dicomgw_journal_wait_seconds_total",
            "dicomgw_ingest_lost_objects_total",
            "dicomgw_queue_jobs",
            "dicomgw_forward_total",
            "dicomgw_forward_duration_seconds",
            "dicomgw_forward_transcoded_total",
            "dicomgw_disk_free_bytes",
            "dicomgw_io_backend_info",
            "dicomgw_build_info",
            "process_start_time_seconds",
        ] {
            assert!(families.iter().any(|f| f == required), "no {required}");
        }
    }

    #[test]
    fn global_works_without_init() {
        let g = global();
        g.instance_received(usize::MAX, 0);
        assert!(render(&Snapshot::default()).contains("dicomgw_instances_received_total "));
    }
}
