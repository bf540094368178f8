//! How acknowledged groups reach the materializer, and when it is woken for them.
//!
//! A channel wakes its receiver for every message: the materializer woke for every journal
//! group (about one context switch per object at half the maximum rate) only to note the
//! group and sleep again until its checkpoint was due. The mailbox wakes it only when that
//! can change what it does: the first group after it emptied (which starts the checkpoint
//! interval), a size threshold crossed, a request for haste (a reader waits, the ring is
//! full) and shutdown. Otherwise the groups wait in the mailbox until the materializer's
//! own deadline.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::Item;
use crate::store::journal::Position;

/// The journal writer's side posts, the materializer's side takes.
#[derive(Debug)]
pub(crate) struct Mailbox {
    inbox: Mutex<Inbox>,
    woken: Condvar,
    /// Wake once this many objects are held and queued (`checkpoint_objects`)…
    objects: usize,
    /// …or this many bytes (a quarter of the journal ring).
    bytes: u64,
}

#[derive(Debug, Default)]
struct Inbox {
    items: Vec<Item>,
    end: Option<Position>,
    bytes: u64,
    /// What the materializer holds, not yet checkpointed, as of its last `take`.
    held: usize,
    held_bytes: u64,
    hurry: bool,
    closed: bool,
}

/// What one `take` found (its records went into the caller's vector).
#[derive(Debug, Default)]
pub(crate) struct Mail {
    /// How many records of groups posted since were taken.
    pub objects: usize,
    /// The position after the last of them.
    pub end: Option<Position>,
    /// Their inline bytes.
    pub bytes: u64,
    /// Someone asked for a checkpoint now.
    pub hurry: bool,
    /// The journal writer is gone: nothing more will be posted.
    pub closed: bool,
}

/// The inline bytes of `items` (what counts against the ring).
fn inline_bytes(items: &[Item]) -> u64 {
    items
        .iter()
        .map(|i| i.bytes.as_ref().map_or(0, |b| b.len() as u64))
        .sum()
}

impl Mailbox {
    pub fn new(objects: usize, bytes: u64) -> Self {
        Self {
            inbox: Mutex::new(Inbox::default()),
            woken: Condvar::new(),
            objects,
            bytes,
        }
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A durable group's records and the position after it. Wakes the materializer when
    /// it holds nothing yet or a threshold is crossed.
    pub fn post(&self, items: Vec<Item>, end: Position) {
        let bytes = inline_bytes(&items);
        let mut inbox = self.inbox();
        let first = inbox.held == 0 && inbox.items.is_empty();
        inbox.items.extend(items);
        inbox.bytes += bytes;
        inbox.end = Some(end);
        let due = inbox.held + inbox.items.len() >= self.objects
            || inbox.held_bytes + inbox.bytes >= self.bytes;
        drop(inbox);
        if first || due {
            self.woken.notify_one();
        }
    }

    /// Asks for a checkpoint now.
    pub fn hurry(&self) {
        self.inbox().hurry = true;
        self.woken.notify_one();
    }

    /// Gives back the room an empty inbox kept from its last backlog.
    pub fn trim(&self) {
        let mut inbox = self.inbox();
        if inbox.items.is_empty() {
            inbox.items = Vec::new();
        }
    }

    /// Nothing more will be posted: the materializer runs its last checkpoint and stops.
    pub fn close(&self) {
        self.inbox().closed = true;
        self.woken.notify_one();
    }

    /// Moves what was posted to the end of `pending`, first waiting (at most `wait`) when
    /// nothing was. `pending` and `held_bytes` are what the caller holds unindexed before
    /// this take: with them `post` knows when a threshold is crossed. May return early and
    /// empty (spurious wake-up).
    ///
    /// Neither vector gives up its capacity: an empty `pending` (the first take after a
    /// checkpoint) trades places with the inbox, otherwise the records are appended. A
    /// vector taken whole left the inbox to grow from nothing again, reallocating (and
    /// copying thousands of records, on fresh pages) on the journal writer's thread.
    pub fn take(&self, wait: Duration, pending: &mut Vec<Item>, held_bytes: u64) -> Mail {
        let mut inbox = self.inbox();
        inbox.held = pending.len();
        inbox.held_bytes = held_bytes;
        if inbox.items.is_empty() && !inbox.hurry && !inbox.closed && !wait.is_zero() {
            inbox = self
                .woken
                .wait_timeout(inbox, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        let objects = inbox.items.len();
        if pending.is_empty() {
            std::mem::swap(pending, &mut inbox.items);
        } else {
            pending.append(&mut inbox.items);
        }
        let mail = Mail {
            objects,
            end: inbox.end.take(),
            bytes: std::mem::take(&mut inbox.bytes),
            hurry: std::mem::take(&mut inbox.hurry),
            closed: inbox.closed,
        };
        inbox.held += objects;
        inbox.held_bytes += mail.bytes;
        mail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::record::{Decision, RecordMeta};
    use crate::store::index::InstanceRecord;
    use std::sync::Arc;
    use std::time::Instant;

    fn item(seq: u64, len: usize) -> Item {
        Item {
            seq,
            meta: RecordMeta {
                record: InstanceRecord {
                    sop_instance_uid: format!("1.2.{seq}"),
                    sop_class_uid: String::new(),
                    study_instance_uid: String::new(),
                    series_instance_uid: String::new(),
                    instance_number: String::new(),
                    transfer_syntax_uid: String::new(),
                    file_size: len as u64,
                    dataset_size: len as u64,
                    dataset_blake3: String::new(),
                    received_at_us: 0,
                    calling_ae_title: String::new(),
                    called_ae_title: String::new(),
                    path: String::new(),
                },
                attrs: Default::default(),
                destinations: vec![],
                decision: Decision::Place,
                staged: None,
            },
            bytes: Some(bytes::Bytes::from(vec![0u8; len])),
        }
    }

    fn at(seq: u64) -> Position {
        Position {
            seq,
            ..Position::GENESIS
        }
    }

    /// Waits until the taker thread has published `held`: it does so under the lock that
    /// `wait_timeout` releases, so once `post` can lock the inbox the taker is asleep (or
    /// already gone, which the caller's bound then reports).
    fn until_asleep(m: &Mailbox, held: usize) {
        let t = Instant::now();
        while m.inbox().held != held {
            assert!(t.elapsed() < Duration::from_secs(10), "the taker never ran");
            std::thread::yield_now();
        }
    }

    /// `n` records already held.
    fn held(n: usize) -> Vec<Item> {
        (0..n as u64).map(|seq| item(seq, 0)).collect()
    }

    /// Runs `take` with a long wait on another thread, holding `held` records, and returns
    /// what it found and the records it took if `act` woke it (within a bound far above a
    /// wake-up's cost), `None` if it slept on.
    fn woken_by(
        m: &Arc<Mailbox>,
        held: usize,
        act: impl FnOnce(&Mailbox),
    ) -> Option<(Mail, Vec<Item>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        // A value no taker publishes: `until_asleep` then sees this taker's own.
        m.inbox().held = usize::MAX;
        let m2 = m.clone();
        let taker = std::thread::spawn(move || {
            let mut pending = self::held(held);
            let mail = m2.take(Duration::from_secs(30), &mut pending, 0);
            let _ = tx.send((mail, pending.split_off(held)));
        });
        until_asleep(m, held);
        act(m);
        let got = rx.recv_timeout(Duration::from_secs(1)).ok();
        if got.is_none() {
            m.hurry(); // let the thread go
            let _ = rx.recv();
        }
        taker.join().unwrap();
        got
    }

    fn seqs(items: &[Item]) -> Vec<u64> {
        items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn the_first_group_wakes_the_materializer_and_later_ones_wait_for_its_deadline() {
        let m = Arc::new(Mailbox::new(100, u64::MAX));
        let (mail, items) = woken_by(&m, 0, |m| m.post(vec![item(1, 10)], at(2))).expect("woken");
        assert_eq!((mail.objects, seqs(&items)), (1, vec![1]));
        assert_eq!(mail.end, Some(at(2)));
        assert_eq!(mail.bytes, 10);
        // Now it holds one object: another group below the threshold does not wake it.
        assert!(woken_by(&m, 1, |m| m.post(vec![item(2, 10)], at(3))).is_none());
    }

    #[test]
    fn a_crossed_threshold_a_hurry_and_shutdown_wake_it() {
        let m = Arc::new(Mailbox::new(4, u64::MAX));
        // Holding 2, a group of 2 reaches 4 objects.
        let (mail, items) = woken_by(&m, 2, |m| m.post(vec![item(11, 1), item(12, 1)], at(13)))
            .expect("objects threshold");
        assert_eq!((mail.objects, seqs(&items)), (2, vec![11, 12]));
        let m = Arc::new(Mailbox::new(usize::MAX, 100));
        let (mail, _) = woken_by(&m, 1, |m| m.post(vec![item(1, 100)], at(2))).expect("bytes");
        assert_eq!(mail.bytes, 100);
        let (mail, items) = woken_by(&m, 1, |m| m.hurry()).expect("hurry");
        assert!(mail.hurry && !mail.closed && mail.objects == 0 && items.is_empty());
        let (mail, _) = woken_by(&m, 1, |m| m.close()).expect("close");
        assert!(mail.closed);
        // Closed stays closed; a hurry is reported once.
        let mail = m.take(Duration::from_secs(30), &mut Vec::new(), 0);
        assert!(mail.closed && !mail.hurry);
    }

    #[test]
    fn groups_come_out_in_the_order_posted_with_the_last_end() {
        let m = Mailbox::new(usize::MAX, u64::MAX);
        m.post(vec![item(1, 1), item(2, 2)], at(3));
        m.post(vec![item(3, 3)], at(4));
        let mut pending = Vec::new();
        let mail = m.take(Duration::ZERO, &mut pending, 0);
        assert_eq!(seqs(&pending), [1, 2, 3]);
        assert_eq!((mail.objects, mail.end, mail.bytes), (3, Some(at(4)), 6));
        let again = m.take(Duration::ZERO, &mut pending, 6);
        assert!(again.objects == 0 && again.end.is_none() && again.bytes == 0);
        // Later groups go after what is held.
        m.post(vec![item(4, 4)], at(5));
        m.take(Duration::ZERO, &mut pending, 6);
        assert_eq!(seqs(&pending), [1, 2, 3, 4]);
    }

    #[test]
    fn neither_side_gives_up_its_capacity() {
        let m = Mailbox::new(usize::MAX, u64::MAX);
        m.post((0..100).map(|seq| item(seq, 0)).collect(), at(100));
        let mut pending = Vec::with_capacity(500);
        m.take(Duration::ZERO, &mut pending, 0);
        // The empty vector took the inbox's place…
        assert_eq!(pending.len(), 100);
        assert!(m.inbox().items.capacity() >= 500);
        // …and records appended to a held backlog leave the inbox's capacity with it.
        m.post((100..200).map(|seq| item(seq, 0)).collect(), at(200));
        m.take(Duration::ZERO, &mut pending, 0);
        assert_eq!(pending.len(), 200);
        assert!(m.inbox().items.capacity() >= 500);
        // When ingest goes quiet it is given back.
        m.trim();
        assert_eq!(m.inbox().items.capacity(), 0);
    }
}
