//! What the C-FIND loads (`mwl`, `qr`) share: the latency histogram, per-kind counters, the
//! query-choice generator, and (from `run`, which the `find` load uses too) one C-FIND exchange.

use hdrhistogram::Histogram;

use std::net::SocketAddr;
use std::time::Duration;

use dicom_loadgen::dataset::{EXPLICIT_LE, IMPLICIT_LE};
use dicom_loadgen::scu::AssocParams;

/// Microseconds, 1 µs to 1 h, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// The association a C-FIND load opens per worker: one context for `sop_class`, explicit or
/// implicit VR little endian.
pub fn find_params(
    addr: SocketAddr,
    calling: &str,
    called: &str,
    max_pdu: u32,
    timeout: Duration,
    sop_class: &str,
) -> AssocParams {
    AssocParams {
        addr,
        calling: calling.to_owned(),
        called: called.to_owned(),
        max_pdu,
        timeout,
        connect_timeout: None,
        contexts: vec![(
            sop_class.to_owned(),
            vec![EXPLICIT_LE.to_owned(), IMPLICIT_LE.to_owned()],
        )],
        implementation_class_uid: dicom_loadgen::dataset::IMPLEMENTATION_CLASS_UID.to_owned(),
        implementation_version_name: dicom_loadgen::dataset::IMPLEMENTATION_VERSION_NAME.to_owned(),
    }
}

/// Cumulative weights of the kinds with a positive weight, for a draw in `[0, total)`.
pub fn cumulative<K: Copy>(mix: impl IntoIterator<Item = (K, f64)>) -> Vec<(K, f64)> {
    let mut acc = 0.0;
    mix.into_iter()
        .filter(|(_, w)| *w > 0.0)
        .map(|(k, w)| {
            acc += w;
            (k, acc)
        })
        .collect()
}

/// Per-kind counters of one worker (merged at the end).
#[derive(Debug, Clone)]
pub struct KindStats {
    /// Latency of the queries that got a final response, µs.
    pub latency: Histogram<u64>,
    /// Queries sent.
    pub queries: u64,
    /// Answered 0000 (with the expected count, when checked).
    pub ok: u64,
    /// Pending responses received.
    pub matches: u64,
    /// Queries whose match count differed from the expected one.
    pub mismatches: u64,
    /// Time spent in this kind's queries, µs (its responses per second of query time).
    pub busy_us: u64,
}

impl KindStats {
    /// Zero counters.
    pub fn new() -> Self {
        KindStats {
            latency: histogram(),
            queries: 0,
            ok: 0,
            matches: 0,
            mismatches: 0,
            busy_us: 0,
        }
    }

    /// Adds `o`'s counts.
    pub fn merge(&mut self, o: &KindStats) {
        let _ = self.latency.add(&o.latency);
        self.queries += o.queries;
        self.ok += o.ok;
        self.matches += o.matches;
        self.mismatches += o.mismatches;
        self.busy_us += o.busy_us;
    }
}

/// xorshift64*: cheap, deterministic query choice.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub use dicom_loadgen::run::c_find;
