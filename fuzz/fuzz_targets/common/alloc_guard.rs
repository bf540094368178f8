//! A global allocator that aborts on any single allocation above [`LIMIT`], so a decoder that
//! trusts a peer's length is caught at the allocation (libFuzzer's `-rss_limit_mb` only sees
//! pages that were touched, and `-malloc_limit_mb` needs a sanitizer's malloc hooks).

use std::alloc::{GlobalAlloc, Layout, System};

/// No input of these targets needs more than this in one piece.
pub const LIMIT: usize = 64 << 20;

pub struct Guard;

fn check(size: usize) {
    if size > LIMIT {
        // No formatting: the allocator must not allocate.
        let msg = b"alloc_guard: single allocation above 64 MiB\n";
        unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
        std::process::abort();
    }
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, count: usize) -> isize;
}

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GUARD: Guard = Guard;
