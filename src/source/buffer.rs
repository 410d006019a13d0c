//! Aligned memory for tensor data: large buffers straight from the kernel
//! (so that freeing one returns it to the OS instead of a malloc arena),
//! small ones from the global allocator, or all of them from an engine's
//! allocator callbacks (pinned host memory for GPU uploads).

use std::alloc::Layout;
use std::ffi::c_void;
use std::ptr::NonNull;

use super::arena::ArenaRange;
use crate::error::{Error, Result};

/// Allocation callback: returns memory of `size` bytes aligned to
/// `alignment`, or NULL.
pub type AllocFn = unsafe extern "C" fn(user_data: *mut c_void, size: usize, alignment: usize) -> *mut c_void;
/// Free callback: frees memory returned by the matching [`AllocFn`].
pub type FreeFn = unsafe extern "C" fn(user_data: *mut c_void, ptr: *mut c_void, size: usize);

/// An engine-provided allocator for tensor buffers.
#[derive(Debug)]
pub struct Allocator {
    pub(super) user_data: *mut c_void,
    pub(super) alloc: AllocFn,
    pub(super) free: FreeFn,
}

// SAFETY: the C API documents that the allocator callbacks may be called from
// any thread, concurrently; user_data is only passed back to them.
unsafe impl Send for Allocator {}
// SAFETY: as above; the struct itself is immutable.
unsafe impl Sync for Allocator {}

impl Allocator {
    /// Wraps C allocation callbacks. The callbacks must be callable from any
    /// thread and stay valid as long as any pager using them.
    pub fn new(user_data: *mut c_void, alloc: AllocFn, free: FreeFn) -> Self {
        Allocator {
            user_data,
            alloc,
            free,
        }
    }
}

/// Buffers at least this large come from anonymous mappings: freed, they go
/// back to the OS at once, where malloc's arenas (one per reader thread)
/// would keep them (about 10 MiB beyond a 46 MiB budget inside llama.cpp
/// with a 256 KiB threshold; with 16 KiB, a 1.33 GiB model at a quarter
/// was OOM-killed in a cgroup of the budget + 8 MiB once readers kept
/// several reads in flight). A page: the smallest an O_DIRECT buffer is.
const MAP_THRESHOLD: usize = PAGE;
const PAGE: usize = 4096;
/// A transparent huge page (x86-64).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

#[derive(Debug)]
enum Origin {
    Heap(Layout),
    Mapped,
    Arena(ArenaRange),
}

/// An owned, aligned, fixed-size block of memory.
#[derive(Debug)]
pub struct TensorBuffer {
    ptr: NonNull<u8>,
    len: usize,
    origin: Origin,
}

// SAFETY: the buffer owns its memory exclusively; nothing in it is tied to a thread.
unsafe impl Send for TensorBuffer {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for TensorBuffer {}

impl TensorBuffer {
    /// Allocates `len` bytes (at least 1) aligned to `alignment` (a power of
    /// two): an anonymous mapping from a page on, the heap below. (An
    /// engine's allocator is reached through an [`Arena`](super::Arena).)
    pub fn allocate(len: usize, alignment: usize) -> Result<Self> {
        let len = len.max(1);
        let oom = || Error::OutOfMemory {
            bytes: len as u64,
            what: "tensor data".to_owned(),
        };
        if len >= MAP_THRESHOLD && alignment <= PAGE {
            let ptr = map_anonymous(len).ok_or_else(oom)?;
            return Ok(TensorBuffer {
                ptr,
                len,
                origin: Origin::Mapped,
            });
        }
        let layout = Layout::from_size_align(len, alignment).map_err(|e| {
            Error::InvalidArgument(format!("buffer of {len} bytes aligned to {alignment}: {e}"))
        })?;
        // SAFETY: layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(p).ok_or_else(oom)?;
        Ok(TensorBuffer {
            ptr,
            len,
            origin: Origin::Heap(layout),
        })
    }

    /// A buffer over a range carved from an arena; the range goes back to
    /// the arena when the buffer is dropped.
    pub(crate) fn from_arena(range: ArenaRange, ptr: *mut u8, len: usize) -> Self {
        TensorBuffer {
            ptr: NonNull::new(ptr).expect("arena ranges are never null"),
            len,
            origin: Origin::Arena(range),
        }
    }

    /// Whether [`TensorBuffer::resize`] can change this buffer's size in place
    /// (an anonymous mapping of ours).
    pub fn is_resizable(&self) -> bool {
        matches!(self.origin, Origin::Mapped)
    }

    /// Whether a pool should resize this buffer for a tensor of `len`
    /// bytes rather than keep it for one of its own size: only below a huge
    /// page, both ways. A grown buffer of a huge page or more has its new
    /// huge pages faulted in (and zeroed), a shrunk one gives them back, and
    /// when streamed tensors of two sizes share buffers every load does both
    /// (on m48 at half, at budgets where they took each other's buffers, a
    /// pass took 0.36-0.40 s against 0.23, and held 4 MiB more).
    pub fn worth_resizing_to(&self, len: usize) -> bool {
        self.is_resizable() && self.len < HUGE_PAGE && len < HUGE_PAGE
    }

    /// The memory a buffer of `len` bytes takes, which a budget charges for
    /// it: a buffer of a page or more is a mapping of whole pages. (Charged
    /// its length, the unused end of its last page, up to 4 KiB a tensor,
    /// would be memory no budget counts.)
    pub fn footprint(len: usize) -> usize {
        if len >= MAP_THRESHOLD {
            len.next_multiple_of(PAGE)
        } else {
            len
        }
    }

    /// Changes the size of an anonymous-mapping buffer, keeping its pages
    /// that stay (already faulted in: no zeroing, no faults); a shrink
    /// returns the tail to the OS, and with it the rest of a huge page the
    /// new end cuts (whose bytes are then zero), a growth may move the
    /// mapping. Returns false (and changes nothing) for other buffers or
    /// when the OS refuses.
    pub fn resize(&mut self, new_len: usize) -> bool {
        if !self.is_resizable() || new_len < MAP_THRESHOLD {
            return false;
        }
        let old_map = self.len.next_multiple_of(PAGE);
        let new_map = new_len.next_multiple_of(PAGE);
        if new_map < old_map {
            // SAFETY: unmapping the whole pages past the new end of our own mapping.
            let rc =
                unsafe { libc::munmap(self.ptr.as_ptr().add(new_map) as *mut c_void, old_map - new_map) };
            if rc != 0 {
                return false;
            }
            if old_map >= HUGE_PAGE && new_map % HUGE_PAGE != 0 {
                self.drop_cut_huge_page(new_map);
            }
        } else if new_map > old_map {
            // From a huge page on, the grown buffer goes where `allocate`
            // would put one (a fresh mapping, which the move replaces), so
            // that its huge pages move whole instead of being split at an
            // unaligned address; a smaller one may grow in place.
            let to = if new_map >= HUGE_PAGE {
                match map_anonymous(new_map) {
                    Some(to) => Some(to),
                    None => return false,
                }
            } else {
                None
            };
            let (flags, at) = match to {
                Some(to) => (
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to.as_ptr() as *mut c_void,
                ),
                None => (libc::MREMAP_MAYMOVE, std::ptr::null_mut()),
            };
            // SAFETY: remapping our own mapping (onto our own fresh one with
            // MREMAP_FIXED, which unmaps it first); on success the old address
            // is no longer valid and we keep only the new one.
            let p = unsafe { libc::mremap(self.ptr.as_ptr() as *mut c_void, old_map, new_map, flags, at) };
            if p == libc::MAP_FAILED {
                if let Some(to) = to {
                    // SAFETY: the fresh mapping is ours and nothing points into it.
                    unsafe { libc::munmap(to.as_ptr() as *mut c_void, new_map) };
                }
                return false;
            }
            match NonNull::new(p as *mut u8) {
                Some(ptr) => self.ptr = ptr,
                None => return false,
            }
            if new_map >= HUGE_PAGE {
                // The moved mapping keeps the old one's advice, given to a
                // buffer smaller than a huge page: none.
                // SAFETY: advising a range of our own mapping.
                unsafe { libc::madvise(p, new_map, libc::MADV_HUGEPAGE) };
            }
        }
        self.len = new_len;
        true
    }

    /// After a shrink to `new_map` bytes that cut a huge page, lets what
    /// is left of that page go too (its bytes read as zero after, in 4 KiB
    /// pages faulted in when written). A huge page that is only partly
    /// unmapped stays whole in memory, and charged to the memory cgroup,
    /// until the kernel gets round to splitting it: up to 2 MiB more than
    /// the buffer for as long (in a cgroup of the budget + 8 MiB, a few
    /// such pages were enough to be OOM-killed). With none of it mapped, it
    /// is freed at once.
    fn drop_cut_huge_page(&mut self, new_map: usize) {
        let from = new_map - new_map % HUGE_PAGE;
        // SAFETY: a range of our own mapping (inside `ptr..ptr+new_map`),
        // whose bytes nobody else holds during a resize (&mut self).
        // Where the kernel refuses, the page stays whole until it splits it.
        unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(from) as *mut c_void,
                new_map - from,
                libc::MADV_DONTNEED,
            )
        };
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Start of the buffer.
    #[cfg(test)]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The whole buffer, for filling.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and exclusively borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// A fresh anonymous mapping of `len` bytes (whole pages), or `None`. From
/// a huge page on, it starts on a huge-page boundary and is advised to use
/// transparent huge pages: one fault per 2 MiB instead of 512, and an
/// `O_DIRECT` read into it is one segment per 2 MiB (on a virtual disk,
/// about twice as fast as into 4 KiB pages, `fio`: 3.3 against 1.2-1.7 GB/s).
pub(super) fn map_anonymous(len: usize) -> Option<NonNull<u8>> {
    let len = len.next_multiple_of(PAGE);
    let slack = if len >= HUGE_PAGE { HUGE_PAGE } else { 0 };
    // SAFETY: a private anonymous mapping with no address hint; the result
    // is checked against MAP_FAILED before use.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + slack,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let base = start.next_multiple_of(slack.max(PAGE));
    let (head, tail) = (base - start, start + len + slack - (base + len));
    // SAFETY: unmapping the parts of our own fresh mapping outside the
    // aligned range.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((base + len) as *mut c_void, tail);
        }
    }
    if slack > 0 {
        // Only a hint; where THP is off it changes nothing.
        // SAFETY: advising a range of our own fresh mapping.
        unsafe { libc::madvise(base as *mut c_void, len, libc::MADV_HUGEPAGE) };
    }
    NonNull::new(base as *mut u8)
}

/// How many bytes at the start of the `len` bytes at `ptr` lie in whole
/// huge pages, if they are laid out as [`map_anonymous`] lays out a mapping
/// of a huge page or more (starting on a huge page): an `O_DIRECT` read
/// lands there at a huge page's speed. The rest, the mapping's partial
/// last 2 MiB, is in 4 KiB pages. 0 for a range that does not start on a
/// huge page. (A range of an engine's allocator that happens to look so is
/// read at the speed of whatever pages back it.)
pub(super) fn huge_page_head(ptr: *const u8, len: usize) -> usize {
    if (ptr as usize) % HUGE_PAGE == 0 {
        len - len % HUGE_PAGE
    } else {
        0
    }
}

impl Drop for TensorBuffer {
    fn drop(&mut self) {
        match &self.origin {
            // SAFETY: ptr/layout are exactly what std::alloc::alloc returned.
            Origin::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), *layout) },
            Origin::Mapped => {
                // SAFETY: ptr and the page-rounded len are exactly our mapping.
                unsafe { libc::munmap(self.ptr.as_ptr() as *mut c_void, self.len.next_multiple_of(PAGE)) };
            }
            Origin::Arena(range) => range.release(self.len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_buffers_shrink_and_grow_keeping_their_bytes() {
        let mut b = TensorBuffer::allocate(3 << 20, 64).unwrap();
        b.as_mut_slice()[..4096].fill(9);
        assert!(b.resize((2 << 20) + 4096));
        assert_eq!(b.len(), (2 << 20) + 4096);
        assert!(b.as_mut_slice()[..4096].iter().all(|&x| x == 9));
        // Cut inside its first huge page: that page's bytes start afresh.
        assert!(b.resize(1 << 20));
        assert_eq!(b.len(), 1 << 20);
        b.as_mut_slice()[..4096].fill(9);
        assert!(b.resize(5 << 20));
        assert_eq!(b.len(), 5 << 20);
        assert!(b.as_mut_slice()[..4096].iter().all(|&x| x == 9));
        b.as_mut_slice()[(5 << 20) - 1] = 1;
        let mut small = TensorBuffer::allocate(100, 64).unwrap();
        assert!(!small.resize(1 << 20));
    }

    #[test]
    fn buffers_of_a_huge_page_or_more_start_on_one_grown_or_not() {
        let on_a_huge_page = |b: &mut TensorBuffer| huge_page_head(b.as_mut_slice().as_ptr(), b.len()) > 0;
        let mut b = TensorBuffer::allocate(HUGE_PAGE + 12_288, 64).unwrap();
        assert!(on_a_huge_page(&mut b));
        b.as_mut_slice().fill(3);
        // Grown from below a huge page to past one: moved onto one, bytes kept.
        let mut small = TensorBuffer::allocate(300_000, 4096).unwrap();
        small.as_mut_slice().fill(5);
        assert!(small.resize(3 * HUGE_PAGE + 4096));
        assert!(on_a_huge_page(&mut small));
        assert!(small.as_mut_slice()[..300_000].iter().all(|&x| x == 5));
        small.as_mut_slice()[3 * HUGE_PAGE] = 1;
        // Grown again, and shrunk: still where it was put, bytes kept.
        assert!(b.resize(5 * HUGE_PAGE));
        assert!(on_a_huge_page(&mut b));
        assert!(b.resize(HUGE_PAGE));
        assert!(on_a_huge_page(&mut b));
        assert!(b.as_mut_slice().iter().all(|&x| x == 3));
        // Shrunk to cut a huge page, then grown: one mapping still (moved
        // whole onto a huge page), the whole huge pages before the cut kept.
        assert!(b.resize(3 * HUGE_PAGE));
        b.as_mut_slice().fill(4);
        assert!(b.resize(HUGE_PAGE + 300_000));
        assert!(b.resize(4 * HUGE_PAGE));
        assert!(on_a_huge_page(&mut b));
        assert!(b.as_mut_slice()[..HUGE_PAGE].iter().all(|&x| x == 4));
        assert!(b.as_mut_slice()[HUGE_PAGE..HUGE_PAGE + 300_000]
            .iter()
            .all(|&x| x == 0));
        b.as_mut_slice().fill(6);
    }

    #[test]
    fn buffers_are_aligned_and_writable() {
        for &(len, align) in &[
            (1usize, 64usize),
            (100, 64),
            (1 << 20, 64),
            (1 << 20, 8192),
            (5000, 4096),
        ] {
            let mut b = TensorBuffer::allocate(len, align).unwrap();
            assert_eq!(b.as_ptr() as usize % align, 0);
            b.as_mut_slice().fill(7);
            assert_eq!(b.len(), len);
        }
    }
}
