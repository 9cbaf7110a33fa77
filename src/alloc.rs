//! The broker's global allocator: the system allocator, except that huge
//! allocations are lazily committed mappings.
//!
//! The `kafka-protocol` crate (0.18) reserves capacity for an array's declared
//! element count before it reads the elements. A request that claims two
//! billion entries therefore makes the decoder allocate tens of gigabytes before decoding fails
//! on the missing bytes, and a failed allocation aborts a Rust process. Here,
//! any allocation of [`HUGE_ALLOCATION_BYTES`] or more is an anonymous
//! `MAP_NORESERVE` mapping. The kernel hands out address space without
//! committing memory, the decoder fails on the missing bytes, and the mapping
//! is unmapped untouched. Only pages that are written cost memory.
//!
//! NOTE: with `vm.overcommit_memory = 2` (strict accounting) the kernel
//! ignores MAP_NORESERVE, so such a request can still abort the broker there.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped lazily. No legitimate broker
/// buffer comes close: requests are capped by `socket.request.max.bytes`.
pub const HUGE_ALLOCATION_BYTES: usize = 1 << 30;

/// Page alignment that a fresh mapping always satisfies.
const MAPPING_ALIGNMENT_BYTES: usize = 4096;

/// The allocator installed by the `weir` binary.
pub struct BrokerAllocator;

fn is_mapped(layout: Layout) -> bool {
    layout.size() >= HUGE_ALLOCATION_BYTES && layout.align() <= MAPPING_ALIGNMENT_BYTES
}

// SAFETY: every pointer returned comes either from `System`, and goes back to
// it, or from `mmap` with at least `layout.size()` bytes, and goes back to
// `munmap` with the same size. `is_mapped` routes both directions the same
// way because it depends only on the layout, which callers pass back unchanged.
unsafe impl GlobalAlloc for BrokerAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_mapped(layout) {
            return map(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_mapped(layout) {
            // Anonymous mappings are zero-filled.
            return map(layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_mapped(layout) {
            // SAFETY: `ptr` came from `map(layout.size())`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_mapped(layout) && !is_mapped(new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_layout` is valid (see above).
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both regions are valid for the smaller size and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint touches no
    // existing memory; failure is reported as MAP_FAILED.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_allocation_is_mapped_and_released() {
        let layout = Layout::from_size_align(64 * HUGE_ALLOCATION_BYTES, 8).expect("layout");
        // SAFETY: the layout has a non-zero size; the pointer is freed with the same layout.
        unsafe {
            let ptr = BrokerAllocator.alloc(layout);
            assert!(!ptr.is_null(), "a 64 GiB reservation succeeds without committing memory");
            ptr.write(7);
            assert_eq!(ptr.read(), 7);
            BrokerAllocator.dealloc(ptr, layout);
        }
    }

    #[test]
    fn realloc_across_the_threshold_keeps_contents() {
        let small = Layout::from_size_align(16, 8).expect("layout");
        // SAFETY: sizes are non-zero and every pointer is freed with its layout.
        unsafe {
            let ptr = BrokerAllocator.alloc(small);
            ptr.copy_from_nonoverlapping(b"weir-allocator!!".as_ptr(), 16);
            let grown = BrokerAllocator.realloc(ptr, small, HUGE_ALLOCATION_BYTES);
            assert_eq!(std::slice::from_raw_parts(grown, 16), b"weir-allocator!!");
            let big = Layout::from_size_align(HUGE_ALLOCATION_BYTES, 8).expect("layout");
            let shrunk = BrokerAllocator.realloc(grown, big, 16);
            assert_eq!(std::slice::from_raw_parts(shrunk, 16), b"weir-allocator!!");
            BrokerAllocator.dealloc(shrunk, small);
        }
    }
}
