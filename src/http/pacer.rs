//! Request pacing for the admin API: at most `rate` requests per second are served, the
//! others wait their turn (and are refused with 503 once the wait would exceed
//! [`MAX_WAIT`]).
//!
//! Why waiting rather than refusing: a runaway client (a dashboard polling in a loop, a
//! script, a load test) keeps each of its connections busy until it has its answer, so
//! pacing bounds the work it can cause — CPU and loopback traffic that would otherwise be
//! taken from ingest on a small appliance (docs/benchmarks.md, "Admin API load during
//! ingest"). A refusal costs almost as much to send as an answer, so refusing alone would not
//! bound anything. Health probes are never paced.
//!
//! Authentication comes first (a BLAKE3 lookup, cheaper than pacing a request): requests
//! with a valid token share the pacer's main budget ([`Pacer::reserve`]); everything else —
//! no token, a wrong token, `/metrics`, the login call — is paced per source address
//! ([`Pacer::reserve_unauthenticated`]), at the same rate but in a budget of its own per
//! address. So a flood of unauthenticated requests waits (and gets 503) in its own queue and
//! never delays an authenticated request beyond that request's own rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a request waits for its turn; beyond it the answer is 503 with `Retry-After`.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Requests that may be served back to back after a quiet period.
const BURST: u32 = 20;

/// Most source addresses with an unauthenticated budget of their own; beyond, addresses
/// that have been quiet are forgotten, and if none has, newcomers share one overflow budget
/// (the table must not grow without bound under a spoofed-address flood).
const MAX_ADDRESSES: usize = 4096;

/// A virtual-time token bucket: each request reserves the next free slot.
#[derive(Debug)]
pub struct Pacer {
    /// Time between two slots; `None`: no limit.
    interval: Option<Duration>,
    /// The next free slot of authenticated requests.
    next: Mutex<Option<Instant>>,
    /// The next free slot of unauthenticated requests, per source address; `None` keys the
    /// shared overflow budget.
    unauthenticated: Mutex<HashMap<Option<IpAddr>, Instant>>,
}

impl Pacer {
    /// A pacer for `rate` requests per second (0: no limit).
    pub fn new(rate: u32) -> Self {
        Self {
            interval: (rate > 0).then(|| Duration::from_secs(1) / rate),
            next: Mutex::new(None),
            unauthenticated: Mutex::new(HashMap::new()),
        }
    }

    /// Reserves a slot for an authenticated request arriving at `now`: `Ok(wait)` before
    /// serving it, or `Err(retry_after)` if the wait would exceed [`MAX_WAIT`] (nothing is
    /// reserved then).
    pub fn reserve(&self, now: Instant) -> Result<Duration, Duration> {
        let Some(interval) = self.interval else {
            return Ok(Duration::ZERO);
        };
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, wait) = Self::take(*next, interval, now)?;
        *next = Some(slot);
        Ok(wait)
    }

    /// As [`Pacer::reserve`], for a request without a valid token from `addr`: each source
    /// address has its own budget, separate from the authenticated one.
    pub fn reserve_unauthenticated(
        &self,
        addr: IpAddr,
        now: Instant,
    ) -> Result<Duration, Duration> {
        let Some(interval) = self.interval else {
            return Ok(Duration::ZERO);
        };
        let mut map = self
            .unauthenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut key = Some(addr);
        if !map.contains_key(&key) && map.len() >= MAX_ADDRESSES {
            // Forget addresses whose budget is full again (their next slot has passed).
            map.retain(|_, next| *next > now);
            if map.len() >= MAX_ADDRESSES {
                key = None;
            }
        }
        let (slot, wait) = Self::take(map.get(&key).copied(), interval, now)?;
        map.insert(key, slot);
        Ok(wait)
    }

    /// The slot a request arriving at `now` gets after `next`: (the following free slot,
    /// the wait), or `Err(wait)` beyond [`MAX_WAIT`].
    fn take(
        next: Option<Instant>,
        interval: Duration,
        now: Instant,
    ) -> Result<(Instant, Duration), Duration> {
        // After a quiet period up to BURST slots are available at once.
        let earliest = now.checked_sub(interval * (BURST - 1)).unwrap_or(now);
        let slot = next.map_or(earliest, |n| n.max(earliest));
        let wait = slot.saturating_duration_since(now);
        if wait > MAX_WAIT {
            return Err(wait);
        }
        Ok((slot + interval, wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let p = Pacer::new(0);
        let t = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(p.reserve(t), Ok(Duration::ZERO));
        }
    }

    #[test]
    fn a_burst_then_one_slot_per_interval_then_refusal() {
        let p = Pacer::new(100); // 10 ms slots
        let t = Instant::now() + Duration::from_secs(10);
        // A fresh pacer serves a burst at once, then one request per 10 ms slot.
        let waits: Vec<_> = (0..BURST + 3).map(|_| p.reserve(t).unwrap()).collect();
        let mut want = vec![Duration::ZERO; BURST as usize];
        want.extend((1..=3).map(|i| Duration::from_millis(10 * i)));
        assert_eq!(waits, want);
        // Requests keep queueing up to MAX_WAIT, then are refused without taking a slot.
        let mut n = BURST + 3;
        while p.reserve(t).is_ok() {
            n += 1;
        }
        assert_eq!(n, BURST + 200, "the burst, then slots 10 ms..=2000 ms");
        let retry = p.reserve(t).unwrap_err();
        assert!(retry > MAX_WAIT && retry <= MAX_WAIT + Duration::from_millis(10));
        // Time passing frees slots at the rate: 1 s later, 100 more fit before MAX_WAIT.
        let later = t + Duration::from_secs(1);
        let mut m = 0;
        while p.reserve(later).is_ok() {
            m += 1;
        }
        assert_eq!(m, 100);
    }

    #[test]
    fn unauthenticated_budgets_are_per_address_and_apart_from_the_authenticated_one() {
        let p = Pacer::new(100);
        let t = Instant::now() + Duration::from_secs(10);
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        // One address uses up its whole budget...
        while p.reserve_unauthenticated(flood, t).is_ok() {}
        assert!(p.reserve_unauthenticated(flood, t).is_err());
        // ...and neither another address nor an authenticated request waits for it.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(p.reserve_unauthenticated(other, t), Ok(Duration::ZERO));
        assert_eq!(p.reserve(t), Ok(Duration::ZERO));
    }

    #[test]
    fn the_address_table_is_bounded() {
        let p = Pacer::new(1);
        let t = Instant::now() + Duration::from_secs(10);
        for i in 0..MAX_ADDRESSES as u32 + 10 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(i));
            // Each fresh address takes a whole burst, so none is forgotten at `t`.
            for _ in 0..BURST {
                let _ = p.reserve_unauthenticated(a, t);
            }
        }
        let n = p.unauthenticated.lock().unwrap().len();
        assert_eq!(
            n,
            MAX_ADDRESSES + 1,
            "the addresses and the overflow budget"
        );
    }

    #[test]
    fn a_quiet_period_allows_a_burst_but_no_more() {
        let p = Pacer::new(100);
        let t = Instant::now() + Duration::from_secs(10);
        assert_eq!(p.reserve(t), Ok(Duration::ZERO));
        // A minute later: BURST requests go at once, the next waits a slot.
        let later = t + Duration::from_secs(60);
        for _ in 0..BURST {
            assert_eq!(p.reserve(later), Ok(Duration::ZERO));
        }
        assert_eq!(p.reserve(later), Ok(Duration::from_millis(10)));
    }
}
