//! The global allocator: mimalloc, asked the way `malloc` is asked.
//!
//! The `mimalloc` crate's allocator passes every request to
//! `mi_malloc_aligned(size, align)`. mimalloc's aligned entry only takes its
//! fast path for blocks up to 1 KiB whose free slot happens to be aligned;
//! anything larger (a request's pipeline future, header maps, hyper's
//! buffers) goes through its generic aligned path first. callgrind put that
//! at 3.8% of a proxied request's instructions (17 allocations per request,
//! 6 of them through the generic path). Here a layout whose alignment
//! `mi_malloc` already guarantees (16 bytes, `MI_MAX_ALIGN_SIZE`, for any
//! size of at least the alignment: the rule std's own `System` allocator uses
//! for `malloc`) goes to `mi_malloc`, `mi_zalloc` and `mi_realloc`; any other
//! to mimalloc's aligned functions, as before.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What `mi_malloc` aligns every block of at least this size to
/// (`MI_MAX_ALIGN_SIZE`, `sizeof(max_align_t)` on the 64-bit targets).
const MALLOC_ALIGN: usize = 16;

/// mimalloc as the global allocator (see the module's text).
pub struct Allocator;

/// Whether `mi_malloc` of `size` bytes is aligned enough for `align`.
#[inline]
fn malloc_aligns(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes
// blocks of `mi_malloc` and of the aligned functions alike); `mi_malloc`,
// `mi_zalloc` and `mi_realloc` are only used for layouts they align (see
// `malloc_aligns`), and return null when out of memory, as `GlobalAlloc` wants.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain calls into mimalloc with a size and a power-of-two alignment.
        unsafe {
            if malloc_aligns(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if malloc_aligns(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc; the new block keeps `layout`'s alignment.
        unsafe {
            if malloc_aligns(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block is aligned as its layout asks, across the sizes of
    /// mimalloc's bins (odd word counts included), the 1 KiB edge of its small
    /// pages, large blocks, and alignments on both sides of 16; realloc keeps the
    /// contents and the alignment; zeroed blocks are zero.
    #[test]
    fn blocks_are_aligned_as_asked_and_realloc_keeps_contents() {
        let a = Allocator;
        let sizes: [usize; 17] = [
            1,
            2,
            7,
            8,
            16,
            24,
            40,
            48,
            56,
            72,
            1000,
            1024,
            1040,
            4096,
            5032,
            70_000,
            1 << 20,
        ];
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for &size in &sizes {
                let size = size.max(align).next_multiple_of(align);
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is freed once with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let grown = size * 3;
                    let q = a.realloc(p, layout, grown);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc to {grown} align {align}");
                    assert!(
                        std::slice::from_raw_parts(q, size)
                            .iter()
                            .all(|&b| b == 0xA5)
                    );
                    a.dealloc(q, Layout::from_size_align(grown, align).unwrap());

                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn the_malloc_rule_is_stds() {
        assert!(malloc_aligns(8, 8));
        assert!(malloc_aligns(16, 16));
        assert!(malloc_aligns(16, 5032));
        assert!(!malloc_aligns(16, 8)); // a block smaller than 16 may sit on an 8-byte slot
        assert!(!malloc_aligns(32, 64));
        assert!(!malloc_aligns(128, 4096));
    }
}
