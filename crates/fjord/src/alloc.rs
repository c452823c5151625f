//! The process allocator: the system's, except that very large requests
//! reserve address space without committing memory (`MAP_NORESERVE`).
//!
//! Why: protocol decoders (the `kafka-protocol` crate among them) size a
//! vector from a length field before reading its elements. A 25-byte
//! request can claim two billion elements; the system allocator then asks
//! for tens of gigabytes, the kernel refuses, and Rust aborts the whole
//! process — one malformed request would take the node down. Reserved
//! instead of committed, such a vector costs nothing until written, and the
//! decoder fails on the missing bytes and frees it. Found by the
//! `kafka_decode` fuzz target (docs/fuzzing.md). Legitimate allocations
//! stay far below the threshold (messages are bounded to 64 MiB).

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are reserved rather than committed.
pub const RESERVE_THRESHOLD: usize = 1 << 30;

pub struct ReserveLarge;

fn page() -> usize {
    4096
}

unsafe impl GlobalAlloc for ReserveLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() < RESERVE_THRESHOLD || layout.align() > page() {
            // SAFETY: forwarded as given.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping; no pointer is passed in.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < RESERVE_THRESHOLD || layout.align() > page() {
            // SAFETY: allocated by `System` with this layout (see `alloc`).
            unsafe { System.dealloc(ptr, layout) };
            return;
        }
        // SAFETY: mapped by `alloc` with this size.
        unsafe {
            libc::munmap(ptr.cast(), layout.size());
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() < RESERVE_THRESHOLD || layout.align() > page() {
            // SAFETY: forwarded as given.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // Anonymous mappings are zero-filled.
        // SAFETY: as `alloc`.
        unsafe { self.alloc(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_large = layout.size() >= RESERVE_THRESHOLD && layout.align() <= page();
        let new_large = new_size >= RESERVE_THRESHOLD && layout.align() <= page();
        if !old_large && !new_large {
            // SAFETY: both sides are the system allocator's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing the threshold (or staying above it): move.
        // SAFETY: the new layout is valid (same alignment, size checked by
        // the caller); the copy covers the smaller of the two sizes.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservations_cost_nothing_until_written_and_small_ones_are_plain() {
        let a = ReserveLarge;
        // 64 GiB: far beyond this machine's memory.
        let layout = Layout::from_size_align(64 << 30, 8).unwrap();
        // SAFETY: layout is non-zero; freed with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            *p = 7;
            assert_eq!(*p, 7);
            a.dealloc(p, layout);
        }
        let small = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: as above; grown across the threshold and back.
        unsafe {
            let p = a.alloc(small);
            *p = 1;
            let q = a.realloc(p, small, RESERVE_THRESHOLD + 10);
            assert_eq!(*q, 1);
            let big = Layout::from_size_align(RESERVE_THRESHOLD + 10, 8).unwrap();
            let r = a.realloc(q, big, 32);
            assert_eq!(*r, 1);
            a.dealloc(r, Layout::from_size_align(32, 8).unwrap());
        }
    }
}
