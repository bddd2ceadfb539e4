//! The global allocator: mimalloc, asked for plain blocks wherever a plain block is
//! aligned enough.
//!
//! Why not the `mimalloc` crate's `MiMalloc`: it passes every allocation to
//! `mi_malloc_aligned`, and mimalloc v3 takes that call's fast path only from a size
//! class whose free list is not empty and, past it, serves the request by
//! over-allocating (size plus alignment) from the next class up. A block freed there
//! goes back to that larger class, so a class that ran dry once stays dry: in the load
//! benchmark two of the three allocations per request (the boxed response, 160 bytes,
//! and the kept response fields, 552) took that path every time, 150 instructions each
//! against 62 for the one that stayed on the fast path (callgrind, inside
//! `mi_theap_malloc_aligned`). Every mimalloc block is at least word-aligned, whatever
//! its build's padding (mimalloc's own aligned calls rely on it), so a layout aligned to
//! 8 or less (nearly every Rust type's) is served by the plain calls; a larger alignment
//! by the aligned ones, as before.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has (a machine word).
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (see the module's comment).
pub struct Mimalloc;

/// Whether a block from mimalloc's plain calls is aligned to `align`.
fn plain(align: usize) -> bool {
    align <= PLAIN_ALIGN
}

/// A block for `layout` from mimalloc's plain call `by_size` where such a block is aligned
/// enough, from its aligned call `aligned` otherwise.
///
/// # Safety
/// Both are mimalloc's allocation calls (`mi_malloc`/`mi_malloc_aligned` or the zeroing
/// pair), and `layout` has a non-zero size (as [`GlobalAlloc::alloc`] requires).
#[inline(always)]
unsafe fn block(
    layout: Layout,
    by_size: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    if plain(layout.align()) {
        by_size(layout.size()).cast()
    } else {
        aligned(layout.size(), layout.align()).cast()
    }
}

// SAFETY: each call hands mimalloc a size and, where the plain calls would not honour
// it, the alignment; mimalloc returns null or a block of at least that size and
// alignment, and `mi_free`/`mi_realloc*` accept any block it returned.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        block(layout, mi::mi_malloc, mi::mi_malloc_aligned)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        block(layout, mi::mi_zalloc, mi::mi_zalloc_aligned)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align()) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SAFETY (for callers): `p` holds `n` writable bytes.
    unsafe fn fill(p: *mut u8, n: usize) {
        for i in 0..n {
            *p.add(i) = i as u8;
        }
    }

    /// SAFETY (for callers): `p` holds `n` readable bytes.
    unsafe fn filled(p: *const u8, n: usize) -> bool {
        (0..n).all(|i| *p.add(i) == i as u8)
    }

    /// Every size up to a few size classes past the small ones, at every alignment up to
    /// a page, plain and zeroed, grown and shrunk: each block is aligned as asked, holds
    /// what was written, and a zeroed one reads zero.
    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in (0..=12).map(|s| 1usize << s) {
            for size in (1..=1100).step_by(7).chain([align, 2 * align, 3 * align]) {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    panic!("layout {size}/{align}")
                };
                // SAFETY: a non-zero size; every block is freed with the layout it was
                // made with (realloc's result with the new size).
                unsafe {
                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "zeroed {size}/{align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);

                    let mut p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{size}/{align}");
                    fill(p, size);
                    for new in [size * 2 + 5, size.div_ceil(2)] {
                        let q = a.realloc(p, layout, new);
                        assert!(!q.is_null());
                        assert_eq!(q as usize % align, 0, "realloc {size}->{new}/{align}");
                        let kept = size.min(new);
                        assert!(filled(q, kept), "{size}->{new}/{align}");
                        let Ok(moved) = Layout::from_size_align(new, align) else {
                            panic!("layout {new}/{align}")
                        };
                        p = a.realloc(q, moved, size);
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "realloc {new}->{size}/{align}");
                        assert!(filled(p, kept), "{new}->{size}/{align}");
                        fill(p, size);
                    }
                    a.dealloc(p, layout);
                }
            }
        }
    }
}
