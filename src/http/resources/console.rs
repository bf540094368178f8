//! Resources the web console needs beyond the rest of the API: the ingest history behind the
//! dashboard's chart (`GET /stats/history`) and the audit chain's verification
//! (`GET /audit/verify`).
//!
//! The history is a fixed ring of [`HISTORY_LEN`] samples of the ingest counters, one every
//! [`SAMPLE_INTERVAL`] (an hour), taken by a task on the API thread's runtime: the ingest cores
//! only ever bump their own counters, and a dashboard asking for the hour costs one copy of
//! the ring, not a scan of anything. Like the counters it samples it is process-wide and
//! starts empty at each start.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use serde_json::json;

use super::{blocking, Query};
use crate::http::{json_response, ApiError, Body, Ctx};

/// Time between two samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: one hour at [`SAMPLE_INTERVAL`].
pub const HISTORY_LEN: usize = 360;

/// One sample of the ingest counters (cumulative since the process started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// When, µs since the Unix epoch.
    pub t_us: u64,
    /// Instances received so far.
    pub instances: u64,
    /// Dataset bytes received so far.
    pub bytes: u64,
    /// C-STORE failures answered so far.
    pub cstore_failures: u64,
}

/// A fixed-size ring of samples, oldest first.
#[derive(Debug)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    capacity: usize,
}

impl History {
    /// An empty ring holding at most `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity: capacity.max(2),
        }
    }

    /// Appends a sample, dropping the oldest when full.
    pub fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// The samples with the rates between each and the one before it (the first has none).
    pub fn points(&self) -> Vec<serde_json::Value> {
        let q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut prev: Option<&Sample> = None;
        q.iter()
            .map(|s| {
                let rates = prev.and_then(|p| {
                    let dt = s.t_us.checked_sub(p.t_us).filter(|d| *d > 0)? as f64 / 1e6;
                    Some((
                        s.instances.saturating_sub(p.instances) as f64 / dt,
                        s.bytes.saturating_sub(p.bytes) as f64 / dt,
                    ))
                });
                prev = Some(s);
                let round = |x: f64| (x * 1000.0).round() / 1000.0;
                json!({
                    "t_us": s.t_us,
                    "instances": s.instances,
                    "bytes": s.bytes,
                    "cstore_failures": s.cstore_failures,
                    "instances_per_second": rates.map(|r| round(r.0)),
                    "bytes_per_second": rates.map(|r| round(r.1)),
                })
            })
            .collect()
    }
}

/// The process's history (the counters it samples are process-wide too).
pub fn history() -> &'static History {
    static H: OnceLock<History> = OnceLock::new();
    H.get_or_init(|| History::new(HISTORY_LEN))
}

fn sample_now() -> Sample {
    let t = crate::metrics::global().totals();
    Sample {
        t_us: crate::clock::timestamp_us(),
        instances: t.instances_received,
        bytes: t.dataset_bytes_received,
        cstore_failures: t.cstore_failure,
    }
}

/// Samples the counters into [`history`] every [`SAMPLE_INTERVAL`], forever (the task ends
/// with the API thread's runtime). The first sample is taken at once.
pub async fn sample_loop() {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        history().push(sample_now());
    }
}

/// `GET /stats/history`: the last hour of ingest samples with their rates, plus a sample
/// taken now (so a fresh daemon already shows where it stands).
pub async fn stats_history(
    req: &Request<Incoming>,
    _ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let now = sample_now();
    Ok(json_response(
        200,
        &json!({
            "interval_seconds": SAMPLE_INTERVAL.as_secs(),
            "capacity": HISTORY_LEN,
            "samples": history().points(),
            "now": now,
        }),
    ))
}

/// `GET /audit/verify`: recomputes the audit chain (as `dicom-gw audit verify` does).
pub async fn audit_verify(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let index = ctx.state.index.clone();
    let report = blocking(move || {
        crate::audit::verify(index.database())
            .map_err(|e| ApiError::internal(format!("audit: {e}")))
    })
    .await?;
    let v = serde_json::to_value(report)
        .map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))?;
    Ok(json_response(200, &v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_s: u64, instances: u64, bytes: u64) -> Sample {
        Sample {
            t_us: t_s * 1_000_000,
            instances,
            bytes,
            cstore_failures: 0,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_and_computes_rates() {
        let h = History::new(3);
        assert!(h.points().is_empty());
        h.push(s(0, 0, 0));
        h.push(s(10, 50, 5_000));
        h.push(s(20, 150, 25_000));
        h.push(s(30, 160, 26_000));
        let p = h.points();
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(p[0]["t_us"], 10_000_000);
        assert!(p[0]["instances_per_second"].is_null());
        assert_eq!(p[1]["instances_per_second"], 10.0);
        assert_eq!(p[1]["bytes_per_second"], 2000.0);
        assert_eq!(p[2]["instances_per_second"], 1.0);
    }

    #[test]
    fn a_clock_going_back_or_standing_still_gives_no_rate() {
        let h = History::new(4);
        h.push(s(10, 0, 0));
        h.push(s(10, 5, 5));
        h.push(s(5, 9, 9));
        let p = h.points();
        assert!(p[1]["instances_per_second"].is_null());
        assert!(p[2]["instances_per_second"].is_null());
    }
}
