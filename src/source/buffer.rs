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
pub(super) const HUGE_PAGE: usize = 2 << 20;

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
            // SAFETY: an anonymous private mapping with no address hint; the
            // result is checked against MAP_FAILED before use.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(oom());
            }
            if len >= HUGE_PAGE {
                // Transparent huge pages: one fault per 2 MiB instead of 512,
                // so a first pass over fresh buffers is not bound by faults.
                // Only a hint; where THP is off it changes nothing.
                // SAFETY: advising a range of our own fresh mapping.
                unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
            }
            let ptr = NonNull::new(p as *mut u8).ok_or_else(oom)?;
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

    /// Changes the size of an anonymous-mapping buffer, keeping its pages
    /// that stay (already faulted in: no zeroing, no faults); a shrink
    /// returns the tail to the OS, a growth may move the mapping. Returns
    /// false (and changes nothing) for other buffers or when the OS refuses.
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
        } else if new_map > old_map {
            // SAFETY: remapping our own mapping; on success the old address is
            // no longer valid and we keep only the new one.
            let p = unsafe {
                libc::mremap(
                    self.ptr.as_ptr() as *mut c_void,
                    old_map,
                    new_map,
                    libc::MREMAP_MAYMOVE,
                )
            };
            if p == libc::MAP_FAILED {
                return false;
            }
            match NonNull::new(p as *mut u8) {
                Some(ptr) => self.ptr = ptr,
                None => return false,
            }
            if new_map >= HUGE_PAGE {
                // SAFETY: advising a range of our own mapping.
                unsafe { libc::madvise(p, new_map, libc::MADV_HUGEPAGE) };
            }
        }
        self.len = new_len;
        true
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
        assert!(b.resize(1 << 20));
        assert_eq!(b.len(), 1 << 20);
        assert!(b.as_mut_slice()[..4096].iter().all(|&x| x == 9));
        assert!(b.resize(5 << 20));
        assert_eq!(b.len(), 5 << 20);
        assert!(b.as_mut_slice()[..4096].iter().all(|&x| x == 9));
        b.as_mut_slice()[(5 << 20) - 1] = 1;
        let mut small = TensorBuffer::allocate(100, 64).unwrap();
        assert!(!small.resize(1 << 20));
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
