//! What one service's connections may use, counted from the moment of accept.
//!
//! A connection that has not associated yet costs a socket, a task and a read buffer, and an
//! untrusted peer can open many. They are counted at accept; past
//! `max_unassociated_connections` the *oldest* waiting connection is closed, so a peer holding
//! idle connections open cannot lock out the modalities that associate in milliseconds. Each
//! also has the ARTIM timer. Established associations are counted against `max_associations`
//! (past it, A-ASSOCIATE-RJ transient, local limit exceeded).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Counters of one service, shared by every core.
#[derive(Debug)]
pub struct Slots {
    max_unassociated: usize,
    max_associations: usize,
    waiting: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
    active: Arc<AtomicUsize>,
    evicted: AtomicU64,
}

impl Slots {
    /// Limits for one service.
    pub fn new(max_unassociated: usize, max_associations: usize) -> Arc<Self> {
        Arc::new(Slots {
            max_unassociated: max_unassociated.max(1),
            max_associations,
            waiting: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
            active: Arc::new(AtomicUsize::new(0)),
            evicted: AtomicU64::new(0),
        })
    }

    /// Counts a new connection as waiting for association. If that makes too many, the
    /// oldest waiting connection is told to close ([`Waiting::evicted`]).
    pub fn admit(self: &Arc<Self>) -> Waiting {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        while w.len() >= self.max_unassociated {
            if let Some((_, oldest)) = w.pop_front() {
                // A stored permit: the oldest sees it even if it is not waiting right now.
                oldest.notify_one();
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        w.push_back((id, evicted.clone()));
        Waiting {
            slots: self.clone(),
            id,
            evicted,
        }
    }

    /// Counts an association about to be negotiated; `over` says the limit is exceeded
    /// (the association will be rejected; the guard still counts until it drops).
    pub fn associate(self: &Arc<Self>) -> (Active, bool) {
        let n = self.active.fetch_add(1, Ordering::AcqRel) + 1;
        (Active(self.clone()), n > self.max_associations)
    }

    /// The live count of open associations (for readiness and stats).
    pub fn active_counter(&self) -> Arc<AtomicUsize> {
        self.active.clone()
    }

    /// Associations open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Connections waiting for association now.
    pub fn waiting(&self) -> usize {
        self.waiting.lock().map_or(0, |w| w.len())
    }

    /// Waiting connections closed to make room, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// A connection counted as waiting for association; uncounted when dropped.
#[derive(Debug)]
pub struct Waiting {
    slots: Arc<Slots>,
    id: u64,
    /// Notified when this connection must close to make room.
    pub evicted: Arc<Notify>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut w = self.slots.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = w.iter().position(|(id, _)| *id == self.id) {
            w.remove(i);
        }
    }
}

/// An association counted against `max_associations`; uncounted when dropped.
#[derive(Debug)]
pub struct Active(Arc<Slots>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_makes_room() {
        let s = Slots::new(2, 10);
        let a = s.admit();
        let b = s.admit();
        assert_eq!(s.waiting(), 2);
        let c = s.admit();
        assert_eq!(s.waiting(), 2);
        assert_eq!(s.evicted(), 1);
        // `a` holds a stored permit; `b` and `c` none.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let got = |n: Arc<Notify>| async move {
                tokio::time::timeout(std::time::Duration::from_millis(20), n.notified())
                    .await
                    .is_ok()
            };
            assert!(got(a.evicted.clone()).await);
            assert!(!got(b.evicted.clone()).await);
            assert!(!got(c.evicted.clone()).await);
        });
        drop(a); // already gone from the queue: nothing else is removed
        assert_eq!(s.waiting(), 2);
        drop(b);
        drop(c);
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn associations_over_the_limit_are_flagged_and_released() {
        let s = Slots::new(4, 1);
        let (g1, over1) = s.associate();
        let (g2, over2) = s.associate();
        assert!(!over1 && over2);
        assert_eq!(s.active(), 2);
        drop(g2);
        drop(g1);
        assert_eq!(s.active(), 0);
    }
}
