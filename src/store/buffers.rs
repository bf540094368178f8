//! Reused buffers for objects received in memory (issue 12: no fresh allocation per object).
//!
//! A small object is received into one buffer, journaled from it, written to its file by
//! the checkpoint, and then the buffer comes back here for the next object. Without this each
//! object took a fresh 64 KiB allocation on a core and freed it on the materializer's thread;
//! the allocator returned such memory to the kernel between uses, so every object paid for
//! zeroed pages and page faults on the hot path (`clear_page_erms` in the profile).
//!
//! Bounded: idle buffers total at most [`MAX_IDLE_BYTES`] of capacity, and none larger than
//! [`MAX_CAPACITY`] is kept. The bound is sized for a checkpoint's worth of small objects
//! (a quarter second at several thousand objects/s, 64 KiB each), which all come back at
//! once; with a smaller pool half of them were allocated afresh at 4,000 objects/s. The
//! materializer [trims](BufferPool::trim) the pool when ingest goes quiet, so the memory is
//! only held while objects keep coming.

use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

/// Total capacity of the idle buffers kept at most.
pub const MAX_IDLE_BYTES: usize = 128 << 20;

/// Largest capacity kept (bigger buffers are freed): an inline object of the default
/// threshold (256 KiB) plus its Part-10 header.
pub const MAX_CAPACITY: usize = 260 * 1024;

/// A free list of byte buffers.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Free>,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    /// Sum of their capacities.
    bytes: usize,
}

impl BufferPool {
    /// The process's pool for received objects.
    pub fn objects() -> &'static BufferPool {
        static POOL: OnceLock<BufferPool> = OnceLock::new();
        POOL.get_or_init(BufferPool::default)
    }

    /// An empty buffer with room for at least `capacity` bytes: a returned one if there is
    /// one, else a new one.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = {
            let mut free = self.lock();
            let v = free.buffers.pop();
            free.bytes -= v.as_ref().map_or(0, Vec::capacity);
            v
        };
        match reused {
            Some(mut v) => {
                v.clear();
                v.reserve(capacity);
                v
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Takes back a buffer no one uses any more (dropped if the pool is full or it is large).
    pub fn give(&self, v: Vec<u8>) {
        if v.capacity() == 0 || v.capacity() > MAX_CAPACITY {
            return;
        }
        let mut free = self.lock();
        if free.bytes + v.capacity() <= MAX_IDLE_BYTES {
            free.bytes += v.capacity();
            free.buffers.push(v);
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
        free.buffers = Vec::new();
        free.bytes = 0;
    }

    /// Idle buffers held now.
    pub fn idle(&self) -> usize {
        self.lock().buffers.len()
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
    fn a_returned_buffer_is_handed_out_again_empty() {
        let pool = BufferPool::default();
        let mut v = pool.take(64 * 1024);
        v.extend_from_slice(b"object bytes");
        let addr = v.as_ptr();
        pool.give_bytes(Bytes::from(v));
        assert_eq!(pool.idle(), 1);
        let again = pool.take(1000);
        assert_eq!(again.as_ptr(), addr, "the same allocation");
        assert!(again.is_empty());
        assert!(again.capacity() >= 64 * 1024);
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
        // Larger than any inline object: freed, not kept.
        pool.give(Vec::with_capacity(MAX_CAPACITY + 1));
        assert_eq!(pool.idle(), 0);
        // Past the byte bound: freed, and taking one out makes room again.
        let each = MAX_CAPACITY;
        let fits = MAX_IDLE_BYTES / each;
        for _ in 0..fits + 3 {
            pool.give(Vec::with_capacity(each));
        }
        assert_eq!(pool.idle(), fits);
        let v = pool.take(10);
        assert_eq!(pool.idle(), fits - 1);
        pool.give(v);
        assert_eq!(pool.idle(), fits);
        pool.trim();
        assert_eq!(pool.idle(), 0);
        pool.give(Vec::with_capacity(each));
        assert_eq!(pool.idle(), 1, "trimmed, the whole bound is free again");
    }
}
