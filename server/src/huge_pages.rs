//! An allocator for large tables read at random (materialize's winners, the
//! as-of join's spine index and per-row state): blocks of 2 MiB and more are
//! mapped on their own, aligned to 2 MiB and advised as transparent huge pages
//! (`madvise(MADV_HUGEPAGE)`); smaller ones come from the global allocator.
//!
//! Each scanned row looks its entity up in a table of up to millions of slots,
//! one random access into tens of MB: with 4 KiB pages most lookups also miss
//! the TLB. On 2 MiB pages the materialize workload (51.4M rows, 1M
//! entities) ran 4-11% faster end to end, and a training set's server CPU fell
//! from 0.61 to 0.54 s per request (docs/benchmarks.md). Where the kernel's THP mode is
//! `never`, the advice is ignored and the pages stay small. Other platforms
//! use the global allocator throughout.

use std::alloc::Layout;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};

/// Blocks this large (the size of an x86-64 huge page) and larger get their own
/// mapping.
#[cfg(target_os = "linux")]
const HUGE: usize = 2 << 20;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HugePages;

/// A vector on [`HugePages`].
pub(crate) type HugeVec<T> = allocator_api2::vec::Vec<T, HugePages>;

/// `n` copies of `value` on [`HugePages`].
pub(crate) fn filled<T: Clone>(n: usize, value: T) -> HugeVec<T> {
    let mut v = HugeVec::with_capacity_in(n, HugePages);
    v.resize(n, value);
    v
}

#[cfg(target_os = "linux")]
fn own_mapping(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= HUGE
}

// SAFETY: blocks are either the global allocator's (returned to it with the
// same layout) or whole mappings of `size` rounded up to 2 MiB, aligned to
// 2 MiB (so to any `align <= 2 MiB`), readable, writable and private, unmapped
// exactly once with the length they were mapped with.
unsafe impl Allocator for HugePages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        #[cfg(target_os = "linux")]
        if own_mapping(&layout) {
            return map_huge(layout.size());
        }
        Global.allocate(layout)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        #[cfg(target_os = "linux")]
        if own_mapping(&layout) {
            let len = layout.size().next_multiple_of(HUGE);
            // SAFETY: `ptr` came from `map_huge` with this length (same layout).
            unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
            return;
        }
        // SAFETY: `ptr` came from `Global.allocate(layout)`.
        unsafe { Global.deallocate(ptr, layout) }
    }
}

/// A private anonymous mapping of `size` rounded up to 2 MiB, starting on a
/// 2 MiB boundary (huge pages back aligned ranges only), advised as huge pages.
#[cfg(target_os = "linux")]
fn map_huge(size: usize) -> Result<NonNull<[u8]>, AllocError> {
    let len = size.next_multiple_of(HUGE);
    let over = len + HUGE;
    // SAFETY: a fresh anonymous mapping; nothing else refers to it.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(AllocError);
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE);
    let (head, tail) = (aligned - start, start + over - (aligned + len));
    // SAFETY: the head and tail lie inside the mapping just made and are not
    // part of the block handed out; the advice only concerns the block.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    let block = NonNull::new(aligned as *mut u8).ok_or(AllocError)?;
    Ok(NonNull::slice_from_raw_parts(block, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_blocks_are_usable_aligned_and_freed() {
        for (size, align) in [
            (100, 8),
            (4 << 20, 16),
            ((6 << 20) + 3, 64),
            (2 << 20, 4096),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let block = HugePages.allocate(layout).unwrap();
            assert!(block.len() >= size);
            let ptr = block.cast::<u8>();
            assert_eq!(ptr.as_ptr() as usize % align, 0);
            // SAFETY: the block is at least `size` bytes, ours until freed.
            unsafe {
                std::ptr::write_bytes(ptr.as_ptr(), 0xa5, size);
                assert_eq!(*ptr.as_ptr().add(size - 1), 0xa5);
                HugePages.deallocate(ptr, layout);
            }
        }
    }

    #[test]
    fn a_table_on_it_works_like_any_other() {
        let mut map: hashbrown::HashMap<u64, u64, foldhash::fast::RandomState, HugePages> =
            hashbrown::HashMap::default();
        for i in 0..300_000u64 {
            map.insert(i, i * 3);
        }
        assert!((0..300_000u64).all(|i| map.get(&i) == Some(&(i * 3))));
        map.clear();
        map.shrink_to_fit();
        assert!(map.is_empty());
    }
}
