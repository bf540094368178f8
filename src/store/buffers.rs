//! Reused buffers for objects received in memory (issue 12: no fresh allocation per object).
//!
//! A small object is received into one buffer, journaled from it, written to its file by
//! the checkpoint, and then the buffer comes back here for the next object. Without this each
//! object took a fresh 64 KiB allocation on a core and freed it on the materializer's thread;
//! the allocator returned such memory to the kernel between uses, so every object paid for
//! zeroed pages and page faults on the hot path (`clear_page_erms` in the profile).
//!
//! Sized to fit: every object holds its buffer until its checkpoint, and when the
//! materializer falls behind (relaxed durability, small objects) that is tens of thousands
//! of buffers (`[store] max_pending_objects` bounds them). A buffer of a fixed 32 KiB held a
//! 1 KiB object 30 times over (5.1 GB resident after 40 s of 1 KiB objects, 2.1 GB sized).
//! So buffers come in [size classes](class) at most an eighth (or 1 KiB) larger than what
//! they hold, and the pool keeps one free list per class: a stream of objects of one size
//! reuses the same buffers.
//!
//! Kept while used: a checkpoint gives back every buffer of its objects at once, as many as
//! the backlog held (a 128 MiB bound dropped half of them under a relaxed load, and the next
//! backlog was allocated and zeroed afresh). So the pool keeps what comes back, up to
//! [`MAX_IDLE_BYTES`] (more than the default journal ring holds) and none larger than
//! [`MAX_CAPACITY`], and the materializer frees, once a second, the buffers that stayed idle
//! the whole second ([`trim_unused`](BufferPool::trim_unused)), and all of them when ingest
//! goes quiet ([`trim`](BufferPool::trim)). The pool never holds more than the backlog did a
//! moment before, so it does not raise the peak.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

/// Total capacity of the idle buffers kept at most.
pub const MAX_IDLE_BYTES: usize = 512 << 20;

/// Largest capacity kept (bigger buffers are freed): an inline object of the default
/// threshold (256 KiB) plus its Part-10 header.
pub const MAX_CAPACITY: usize = 260 * 1024;

/// Smallest size class.
const MIN_CLASS: usize = 1024;

/// The capacity a buffer for `len` bytes gets: `len` rounded up to a sixteenth of the next
/// power of two (in steps of at least 1 KiB), so at most an eighth of `len`, or 1 KiB, is
/// unused.
pub fn class(len: usize) -> usize {
    let len = len.max(MIN_CLASS);
    let step = step(len);
    len.div_ceil(step) * step
}

/// The largest class a buffer of `capacity` bytes can serve (0 below the smallest).
fn class_within(capacity: usize) -> usize {
    if capacity < MIN_CLASS {
        return 0;
    }
    let step = step(capacity);
    capacity / step * step
}

/// The spacing of the classes around `n`: a sixteenth of its next power of two, at least
/// the smallest class.
fn step(n: usize) -> usize {
    (n.next_power_of_two() / 16).max(MIN_CLASS)
}

/// Whether `v` could serve a larger size class than its contents need.
pub fn oversized(v: &Vec<u8>) -> bool {
    class_within(v.capacity()) > class(v.len())
}

/// Free lists of byte buffers, one per size class.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Free>,
}

#[derive(Debug, Default)]
struct Free {
    /// Class → buffers of at least that capacity (less than the next class's).
    by_class: HashMap<usize, List>,
    /// Sum of their capacities.
    bytes: usize,
}

/// The idle buffers of one class.
#[derive(Debug, Default)]
struct List {
    buffers: Vec<Vec<u8>>,
    /// The fewest idle since the last [`BufferPool::trim_unused`]: that many were not needed
    /// all that time.
    low: usize,
}

impl BufferPool {
    /// The process's pool for received objects.
    pub fn objects() -> &'static BufferPool {
        static POOL: OnceLock<BufferPool> = OnceLock::new();
        POOL.get_or_init(BufferPool::default)
    }

    /// An empty buffer with room for at least `len` bytes, of capacity [`class`]`(len)`
    /// (or slightly more): a returned one if there is one of that class, else a new one.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let want = class(len);
        let reused = {
            let mut free = self.lock();
            let v = free.by_class.get_mut(&want).and_then(|list| {
                let v = list.buffers.pop();
                list.low = list.low.min(list.buffers.len());
                v
            });
            if let Some(v) = &v {
                free.bytes -= v.capacity();
            }
            v
        };
        match reused {
            Some(mut v) => {
                v.clear();
                v
            }
            None => Vec::with_capacity(want),
        }
    }

    /// Takes back a buffer no one uses any more (dropped if the pool is full or it is large).
    pub fn give(&self, v: Vec<u8>) {
        let c = class_within(v.capacity());
        if c == 0 || v.capacity() > MAX_CAPACITY {
            return;
        }
        let mut free = self.lock();
        if free.bytes + v.capacity() <= MAX_IDLE_BYTES {
            free.bytes += v.capacity();
            free.by_class.entry(c).or_default().buffers.push(v);
        }
    }

    /// Takes back the buffer under `b` when `b` is its only handle (else just drops `b`).
    pub fn give_bytes(&self, b: Bytes) {
        if let Ok(m) = b.try_into_mut() {
            self.give(Vec::from(m));
        }
    }

    /// Frees every idle buffer (ingest went quiet).
    pub fn trim(&self) {
        let mut free = self.lock();
        *free = Free::default();
    }

    /// Frees, in each size class, the buffers that no one needed since the last call (the
    /// fewest that were idle meanwhile), so the pool follows the load down. Called
    /// periodically.
    pub fn trim_unused(&self) {
        let mut free = self.lock();
        let Free { by_class, bytes } = &mut *free;
        by_class.retain(|_, list| {
            for v in list.buffers.drain(..list.low) {
                *bytes -= v.capacity();
            }
            list.low = list.buffers.len();
            !list.buffers.is_empty()
        });
    }

    /// Idle buffers held now.
    pub fn idle(&self) -> usize {
        self.lock().by_class.values().map(|l| l.buffers.len()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_holds_its_length_with_at_most_an_eighth_or_1_kib_to_spare() {
        for len in (0..300 * 1024)
            .step_by(97)
            .chain([1024, 1025, 16 * 1024, 16 * 1024 + 1])
        {
            let c = class(len);
            assert!(c >= len, "{len} → {c}");
            assert!(c <= len + (len / 8).max(MIN_CLASS), "{len} → {c}");
            assert_eq!(class(c), c, "a class is its own class");
            assert_eq!(class_within(c), c);
        }
        assert_eq!(class(1), 1024);
        assert_eq!(class(16 * 1024 + 300), 18 * 1024);
        // Any capacity serves the largest class it covers, and no larger.
        for cap in (1024..300 * 1024).step_by(101) {
            let c = class_within(cap);
            assert!(c <= cap && class(c) == c, "{cap} → {c}");
            assert!(class(c + 1) > cap, "{cap}: class {c} is not the largest");
        }
    }

    #[test]
    fn a_returned_buffer_is_handed_out_again_empty_for_its_class() {
        let pool = BufferPool::default();
        let mut v = pool.take(16 * 1024 + 300);
        assert_eq!(v.capacity(), 18 * 1024, "sized to fit, not a fixed size");
        v.extend_from_slice(b"object bytes");
        let addr = v.as_ptr();
        pool.give_bytes(Bytes::from(v));
        assert_eq!(pool.idle(), 1);
        // Another size class: a new buffer, the returned one stays.
        let small = pool.take(1000);
        assert_ne!(small.as_ptr(), addr);
        assert_eq!(small.capacity(), 1024);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(17 * 1024);
        assert_eq!(again.as_ptr(), addr, "the same allocation");
        assert!(again.is_empty());
        assert_eq!(pool.idle(), 0);
    }

    /// Under load the pool keeps what comes back; what no object needed for a whole period
    /// goes at the next periodic trim.
    #[test]
    fn the_periodic_trim_frees_only_what_was_not_needed() {
        let pool = BufferPool::default();
        let give = |n: usize, len: usize| {
            for _ in 0..n {
                pool.give(Vec::with_capacity(class(len)));
            }
        };
        give(10, 16 * 1024);
        give(2, 1024);
        pool.trim_unused(); // starts a period: 12 idle
        let taken: Vec<Vec<u8>> = (0..3).map(|_| pool.take(16 * 1024)).collect();
        assert_eq!(pool.idle(), 9);
        pool.trim_unused(); // 9 were idle the whole period
        assert_eq!(pool.idle(), 0);
        for v in taken {
            pool.give(v);
        }
        // A period in which every idle buffer was taken frees none.
        let taken: Vec<Vec<u8>> = (0..3).map(|_| pool.take(16 * 1024)).collect();
        assert_eq!(pool.idle(), 0);
        for v in taken {
            pool.give(v);
        }
        pool.trim_unused();
        assert_eq!(pool.idle(), 3, "all of them were needed");
        let again = pool.take(16 * 1024);
        assert_eq!(
            again.capacity(),
            class(16 * 1024),
            "and are handed out again"
        );
        pool.give(again);
        pool.trim_unused();
        assert_eq!(
            pool.idle(),
            1,
            "one was taken meanwhile: the two never taken go"
        );
        pool.trim_unused();
        assert_eq!(pool.idle(), 0, "a period without takes frees the rest");
        // Per size class: a class in use keeps what it needs, an idle class goes.
        give(2, 16 * 1024);
        give(3, 1024);
        pool.trim_unused();
        let v = pool.take(16 * 1024);
        pool.give(v);
        pool.trim_unused();
        assert_eq!(
            pool.idle(),
            1,
            "the 16 KiB buffer in use stays, the 1 KiB ones go"
        );
        assert_eq!(pool.take(16 * 1024).capacity(), class(16 * 1024));
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn shared_large_and_surplus_buffers_are_not_kept() {
        let pool = BufferPool::default();
        // Still referenced elsewhere (a slice of it lives on): not reusable.
        let mut v = pool.take(100);
        v.extend_from_slice(b"abc");
        let b = Bytes::from(v);
        let slice = b.slice(0..1);
        pool.give_bytes(b);
        assert_eq!(pool.idle(), 0);
        drop(slice);
        // Larger than any inline object, or smaller than any class: freed, not kept.
        pool.give(Vec::with_capacity(MAX_CAPACITY + 1));
        pool.give(Vec::with_capacity(MIN_CLASS - 1));
        assert_eq!(pool.idle(), 0);
        // Past the byte bound: freed, and taking one out makes room again.
        let each = MAX_CAPACITY;
        let fits = MAX_IDLE_BYTES / each;
        for _ in 0..fits + 3 {
            pool.give(Vec::with_capacity(each));
        }
        assert_eq!(pool.idle(), fits);
        let v = pool.take(class_within(each));
        assert_eq!(v.capacity(), each);
        assert_eq!(pool.idle(), fits - 1);
        pool.give(v);
        assert_eq!(pool.idle(), fits);
        pool.trim();
        assert_eq!(pool.idle(), 0);
        pool.give(Vec::with_capacity(each));
        assert_eq!(pool.idle(), 1, "trimmed, the whole bound is free again");
    }
}
