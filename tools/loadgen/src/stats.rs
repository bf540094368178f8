//! Counters and latency histograms (per worker, merged at the end), the JSON summary and the
//! human report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use dicom_gw::net::dimse::status::{category, Category};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram tracks (1 hour, in µs); longer values are clamped.
const MAX_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // 3 significant digits over 1 µs … 1 h: ~ 200 KiB per histogram.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds are valid")
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

/// What one worker (and, merged, the whole run) measured.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Request → final response, from the *intended* send time in open loop (coordinated
    /// omission corrected), from the actual send time in closed loop.
    pub latency: Histogram<u64>,
    /// Actual send → final response (the server's service time as seen by the client).
    pub service: Histogram<u64>,
    /// TCP connect → A-ASSOCIATE-AC.
    pub setup: Histogram<u64>,
    /// Requests issued.
    pub requests: u64,
    /// Final responses with Success or Warning status.
    pub ok: u64,
    /// Of those, Warning statuses.
    pub warnings: u64,
    /// Failure statuses plus local errors (I/O, abort, timeout …).
    pub errors: u64,
    /// Every final status received, by code.
    pub statuses: BTreeMap<u16, u64>,
    /// Errors by kind: `0xA700`-style status codes and local error names.
    pub error_kinds: BTreeMap<String, u64>,
    /// Dataset bytes of the requests that got a success/warning response.
    pub bytes: u64,
    /// Associations established.
    pub associations: u64,
    /// C-FIND pending responses (matches).
    pub pending: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty counters.
    pub fn new() -> Self {
        Stats {
            latency: histogram(),
            service: histogram(),
            setup: histogram(),
            requests: 0,
            ok: 0,
            warnings: 0,
            errors: 0,
            statuses: BTreeMap::new(),
            error_kinds: BTreeMap::new(),
            bytes: 0,
            associations: 0,
            pending: 0,
        }
    }

    /// Records a final DIMSE status; returns whether it counts as success (incl. warning).
    pub fn status(&mut self, status: u16) -> bool {
        *self.statuses.entry(status).or_default() += 1;
        match category(status) {
            Category::Success => {
                self.ok += 1;
                true
            }
            Category::Warning => {
                self.ok += 1;
                self.warnings += 1;
                true
            }
            _ => {
                self.error(format!("0x{status:04X}"));
                false
            }
        }
    }

    /// Counts an error of `kind`.
    pub fn error(&mut self, kind: impl Into<String>) {
        self.errors += 1;
        *self.error_kinds.entry(kind.into()).or_default() += 1;
    }

    /// Records the latency and service time of one completed request.
    pub fn record(&mut self, latency: Duration, service: Duration) {
        self.latency.saturating_record(us(latency));
        self.service.saturating_record(us(service));
    }

    /// Records an association set-up time.
    pub fn record_setup(&mut self, d: Duration) {
        self.associations += 1;
        self.setup.saturating_record(us(d));
    }

    /// Adds another worker's numbers.
    pub fn merge(&mut self, o: &Stats) {
        // Same bounds on both sides: add cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.service.add(&o.service);
        let _ = self.setup.add(&o.setup);
        self.requests += o.requests;
        self.ok += o.ok;
        self.warnings += o.warnings;
        self.errors += o.errors;
        for (k, v) in &o.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &o.error_kinds {
            *self.error_kinds.entry(k.clone()).or_default() += v;
        }
        self.bytes += o.bytes;
        self.associations += o.associations;
        self.pending += o.pending;
    }
}

/// Percentiles of a histogram in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// From a µs histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        let q = |x: f64| ms(h.value_at_quantile(x));
        Percentiles {
            count: h.len(),
            mean: h.mean().round() / 1000.0,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: ms(h.max()),
        }
    }
}

/// The JSON summary of a run (`--json FILE`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `store`, `echo` or `find`.
    pub operation: String,
    /// HOST:PORT as given.
    pub target: String,
    /// Calling AE title.
    pub calling_ae: String,
    /// Called AE title.
    pub called_ae: String,
    /// Concurrent associations.
    pub concurrency: usize,
    /// `closed` or `open` loop.
    pub mode: String,
    /// Target rate in open loop (requests/s).
    pub rate: Option<f64>,
    /// Requests per association before reconnecting.
    pub per_association: Option<u64>,
    /// Seconds from the start signal to the last response.
    pub elapsed_s: f64,
    /// Requests issued.
    pub requests: u64,
    /// Success + warning responses.
    pub ok: u64,
    /// Warning responses.
    pub warnings: u64,
    /// Failure statuses + local errors.
    pub errors: u64,
    /// Errors by status (`0xA700`) or local kind (`timeout`, `aborted`, …).
    pub errors_by_status: BTreeMap<String, u64>,
    /// All final statuses received (`0x0000` → count).
    pub statuses: BTreeMap<String, u64>,
    /// Associations established.
    pub associations_opened: u64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Dataset bytes acknowledged.
    pub bytes_sent: u64,
    /// Dataset megabytes (10^6 B) acknowledged per second.
    pub mb_per_s: f64,
    /// Mean dataset size of the source (store only).
    pub mean_object_bytes: Option<f64>,
    /// Latency (ms): from intended send time in open loop.
    pub latency_ms: Percentiles,
    /// Service time (ms): from actual send time.
    pub service_time_ms: Percentiles,
    /// Association set-up time (ms).
    pub association_setup_ms: Percentiles,
    /// C-FIND matches (pending responses) in total (find only).
    pub find_matches: Option<u64>,
    /// Why the run stopped early, if it did.
    pub fatal: Option<String>,
    /// Verification result (store with `--verify`).
    pub verify: Option<crate::verify::VerifyReport>,
}

/// Run parameters the summary repeats.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// `store`, `echo`, `find`.
    pub operation: String,
    /// HOST:PORT.
    pub target: String,
    /// Calling AE.
    pub calling_ae: String,
    /// Called AE.
    pub called_ae: String,
    /// -c.
    pub concurrency: usize,
    /// --rate.
    pub rate: Option<f64>,
    /// --per-association.
    pub per_association: Option<u64>,
    /// Mean dataset size (store).
    pub mean_object_bytes: Option<f64>,
}

impl Summary {
    /// Builds the summary from merged stats.
    pub fn new(info: &RunInfo, s: &Stats, elapsed: Duration, fatal: Option<String>) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Summary {
            operation: info.operation.clone(),
            target: info.target.clone(),
            calling_ae: info.calling_ae.clone(),
            called_ae: info.called_ae.clone(),
            concurrency: info.concurrency,
            mode: if info.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            rate: info.rate,
            per_association: info.per_association,
            elapsed_s: (secs * 1e6).round() / 1e6,
            requests: s.requests,
            ok: s.ok,
            warnings: s.warnings,
            errors: s.errors,
            errors_by_status: s.error_kinds.clone(),
            statuses: s
                .statuses
                .iter()
                .map(|(k, v)| (format!("0x{k:04X}"), *v))
                .collect(),
            associations_opened: s.associations,
            requests_per_s: (s.ok as f64 / secs * 100.0).round() / 100.0,
            bytes_sent: s.bytes,
            mb_per_s: (s.bytes as f64 / 1e6 / secs * 1000.0).round() / 1000.0,
            mean_object_bytes: info.mean_object_bytes.map(f64::round),
            latency_ms: Percentiles::of(&s.latency),
            service_time_ms: Percentiles::of(&s.service),
            association_setup_ms: Percentiles::of(&s.setup),
            find_matches: (info.operation == "find").then_some(s.pending),
            fatal,
            verify: None,
        }
    }

    /// Whether the run had no error, no fatal stop and (if run) a clean verification.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.fatal.is_none() && self.verify.as_ref().is_none_or(|v| v.ok())
    }

    /// The human-readable report.
    pub fn report(&self) -> String {
        let mut o = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".into(),
        };
        let _ = writeln!(
            o,
            "dicom-loadgen {} -> {} ({} -> {}), {} association(s), {mode}",
            self.operation, self.target, self.calling_ae, self.called_ae, self.concurrency
        );
        let _ = writeln!(
            o,
            "  requests     {} in {:.3} s: {} ok ({} with warning), {} errors",
            self.requests, self.elapsed_s, self.ok, self.warnings, self.errors
        );
        if self.operation == "store" {
            let size = self
                .mean_object_bytes
                .map(|b| format!(", mean object {:.1} kB", b / 1000.0))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  throughput   {:.1} instances/s, {:.2} MB/s{size}",
                self.requests_per_s, self.mb_per_s
            );
        } else {
            let _ = writeln!(o, "  throughput   {:.1} requests/s", self.requests_per_s);
        }
        let p = |name: &str, x: &Percentiles, o: &mut String| {
            let _ = writeln!(
                o,
                "  {name:<12} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms",
                x.p50, x.p90, x.p99, x.p999, x.max
            );
        };
        p("latency", &self.latency_ms, &mut o);
        if self.rate.is_some() {
            p("service", &self.service_time_ms, &mut o);
        }
        let _ = writeln!(
            o,
            "  associations {} opened (set-up p50 {:.3} ms, max {:.3} ms)",
            self.associations_opened, self.association_setup_ms.p50, self.association_setup_ms.max
        );
        if let Some(m) = self.find_matches {
            let _ = writeln!(o, "  matches      {m} pending responses");
        }
        if !self.errors_by_status.is_empty() {
            let list: Vec<String> = self
                .errors_by_status
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            let _ = writeln!(o, "  errors by status: {}", list.join(", "));
        }
        if let Some(f) = &self.fatal {
            let _ = writeln!(o, "  STOPPED: {f}");
        }
        if let Some(v) = &self.verify {
            o.push_str(&v.report());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_and_merged() {
        let mut a = Stats::new();
        assert!(a.status(0x0000));
        assert!(a.status(0xB000));
        assert!(!a.status(0xA700));
        a.error("timeout");
        a.record(Duration::from_millis(2), Duration::from_millis(1));
        let mut b = Stats::new();
        b.status(0xA700);
        b.record(Duration::from_millis(4), Duration::from_millis(4));
        b.record_setup(Duration::from_micros(300));
        a.merge(&b);
        assert_eq!((a.ok, a.warnings, a.errors), (2, 1, 3));
        assert_eq!(a.error_kinds["0xA700"], 2);
        assert_eq!(a.error_kinds["timeout"], 1);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.associations, 1);
        let info = RunInfo {
            operation: "store".into(),
            target: "127.0.0.1:1".into(),
            calling_ae: "A".into(),
            called_ae: "B".into(),
            concurrency: 1,
            rate: None,
            per_association: None,
            mean_object_bytes: Some(16000.0),
        };
        let s = Summary::new(&info, &a, Duration::from_secs(1), None);
        assert!((s.latency_ms.max - 4.0).abs() < 0.01);
        assert_eq!(s.statuses["0xB000"], 1);
        assert!(!s.clean());
        assert!(s
            .report()
            .contains("errors by status: 0xA700 x2, timeout x1"));
    }
}
