//! Tensor buffers carved from a few large blocks of an engine's allocator.
//!
//! An engine's allocator is often slow (pinned host memory for GPU uploads
//! costs about 0.5 ms per MiB to allocate): a steady sweep must not call it
//! once per miss. The arena takes memory from it in large chunks, places
//! each tensor in the smallest free range that holds it (best fit, so that a
//! cyclic sweep reuses the holes it leaves), and gives ranges back to the
//! arena, not to the allocator, when a tensor is evicted. Chunks return to
//! the allocator only when wholly free and their bytes are wanted elsewhere.
//!
//! The arena does no budget accounting: the pager counts chunk bytes that
//! hold no tensor ([`Arena::free_bytes`]) against its budget, as it counts
//! pooled buffers.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use super::buffer::{Allocator, TensorBuffer};
use crate::error::{Error, Result};

/// One block from the allocator and the ranges of it that hold no tensor.
#[derive(Debug)]
struct Chunk {
    ptr: NonNull<u8>,
    len: usize,
    /// Free ranges `(offset, len)`, sorted by offset, never adjacent.
    free: Vec<(usize, usize)>,
}

#[derive(Debug, Default)]
struct ArenaState {
    chunks: Vec<Option<Chunk>>,
    free_bytes: u64,
    total_bytes: u64,
    allocations: u64,
}

/// Chunks of an engine's allocator, carved into tensor buffers.
#[derive(Debug)]
pub struct Arena {
    allocator: Arc<Allocator>,
    alignment: usize,
    state: Mutex<ArenaState>,
}

// SAFETY: chunk pointers are owned by the arena and only handed out as
// disjoint ranges; the state is behind a mutex.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

/// A block of the engine's allocator that no arena holds: just allocated,
/// or taken out of an arena to be freed. Dropping it frees it.
#[derive(Debug)]
pub struct FreshChunk {
    /// `None` once an arena holds the block.
    allocator: Option<Arc<Allocator>>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the chunk owns its block exclusively; nothing in it is tied to a thread.
unsafe impl Send for FreshChunk {}

impl Drop for FreshChunk {
    fn drop(&mut self) {
        if let Some(a) = &self.allocator {
            // SAFETY: the block came from this allocator with this size, and
            // no range of it is handed out (fresh, or wholly free when
            // detached).
            unsafe { (a.free)(a.user_data, self.ptr.as_ptr() as *mut c_void, self.len) };
        }
    }
}

/// A range of an arena chunk holding one tensor; given back on drop.
#[derive(Debug)]
pub struct ArenaRange {
    arena: Arc<Arena>,
    chunk: usize,
    offset: usize,
}

impl Arena {
    /// An arena over `allocator`, handing out ranges aligned to `alignment`.
    pub fn new(allocator: Arc<Allocator>, alignment: usize) -> Arc<Self> {
        Arc::new(Arena {
            allocator,
            alignment: alignment.max(64),
            state: Mutex::new(ArenaState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ArenaState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `len` rounded up to the arena's alignment: what a range of it takes.
    pub fn footprint(&self, len: usize) -> usize {
        len.max(1).div_ceil(self.alignment) * self.alignment
    }

    /// Bytes of the arena's chunks that hold no tensor.
    pub fn free_bytes(&self) -> u64 {
        self.lock().free_bytes
    }

    /// Bytes taken from the allocator and not given back.
    #[cfg(test)]
    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    /// Calls made to the allocator so far.
    #[cfg(test)]
    pub fn allocations(&self) -> u64 {
        self.lock().allocations
    }

    /// A buffer in the smallest free range that holds `len` bytes (its
    /// length is `len` rounded up to the alignment); `None` if no free range
    /// is large enough. The range returns to the arena when the buffer drops.
    pub fn carve(self: &Arc<Self>, len: usize) -> Option<TensorBuffer> {
        let need = self.footprint(len);
        let mut s = self.lock();
        let mut best: Option<(usize, usize, usize)> = None; // chunk, index, len
        for (c, chunk) in s.chunks.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            for (i, &(_, flen)) in chunk.free.iter().enumerate() {
                if flen >= need && best.is_none_or_longer(flen) {
                    best = Some((c, i, flen));
                }
            }
        }
        let (c, i, flen) = best?;
        let chunk = s.chunks[c].as_mut().expect("chosen chunk exists");
        let (offset, _) = chunk.free[i];
        if flen == need {
            chunk.free.remove(i);
        } else {
            chunk.free[i] = (offset + need, flen - need);
        }
        // SAFETY: offset + need lies inside the chunk (it was a free range).
        let ptr = unsafe { chunk.ptr.as_ptr().add(offset) };
        s.free_bytes -= need as u64;
        let range = ArenaRange {
            arena: Arc::clone(self),
            chunk: c,
            offset,
        };
        Some(TensorBuffer::from_arena(range, ptr, need))
    }

    /// Takes a chunk of `len` bytes (rounded up to the alignment) from the
    /// allocator, all of it free.
    #[cfg(test)]
    pub fn grow(&self, len: usize) -> Result<()> {
        let chunk = self.allocate_chunk(len)?;
        self.add_chunk(chunk);
        Ok(())
    }

    /// Calls the allocator for a chunk of `len` bytes (rounded up to the
    /// alignment), changing nothing in the arena: the pager calls this with
    /// no lock of its own held, then [`Arena::add_chunk`].
    pub fn allocate_chunk(&self, len: usize) -> Result<FreshChunk> {
        let len = self.footprint(len);
        let a = &self.allocator;
        // SAFETY: calling the engine's allocator as its contract describes.
        let p = unsafe { (a.alloc)(a.user_data, len, self.alignment) } as *mut u8;
        let ptr = NonNull::new(p).ok_or(Error::OutOfMemory {
            bytes: len as u64,
            what: "a chunk of tensor memory from the engine's allocator".to_owned(),
        })?;
        let chunk = FreshChunk {
            allocator: Some(Arc::clone(a)),
            ptr,
            len,
        };
        if (p as usize) % self.alignment != 0 {
            // Dropping the chunk returns it to its allocator.
            return Err(Error::InvalidArgument(format!(
                "allocator returned {p:p}, not aligned to {} bytes",
                self.alignment
            )));
        }
        Ok(chunk)
    }

    /// Makes a chunk from [`Arena::allocate_chunk`] free for tensors.
    pub fn add_chunk(&self, mut fresh: FreshChunk) {
        // Its memory belongs to the arena from now on: the chunk's drop
        // frees nothing.
        fresh.allocator = None;
        let (ptr, len) = (fresh.ptr, fresh.len);
        let mut s = self.lock();
        let chunk = Chunk {
            ptr,
            len,
            free: vec![(0, len)],
        };
        match s.chunks.iter().position(Option::is_none) {
            Some(i) => s.chunks[i] = Some(chunk),
            None => s.chunks.push(Some(chunk)),
        }
        s.free_bytes += len as u64;
        s.total_bytes += len as u64;
        s.allocations += 1;
    }

    /// Gives one wholly free chunk back to the allocator (the largest);
    /// returns its size, or `None` if every chunk holds a tensor.
    #[cfg(test)]
    pub fn release_free_chunk(&self) -> Option<u64> {
        self.detach_free_chunk().map(|c| c.len as u64)
    }

    /// Takes one wholly free chunk (the largest) out of the arena; its
    /// memory goes back to the allocator when the returned chunk is
    /// dropped (the pager drops it with no lock of its own held).
    pub fn detach_free_chunk(&self) -> Option<FreshChunk> {
        let mut s = self.lock();
        let i = s
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().filter(|c| c.free == [(0, c.len)]).map(|c| (i, c.len)))
            .max_by_key(|&(_, len)| len)?
            .0;
        let chunk = s.chunks[i].take().expect("chosen chunk exists");
        s.free_bytes -= chunk.len as u64;
        s.total_bytes -= chunk.len as u64;
        Some(FreshChunk {
            allocator: Some(Arc::clone(&self.allocator)),
            ptr: chunk.ptr,
            len: chunk.len,
        })
    }

    fn give_back(&self, chunk: usize, offset: usize, len: usize) {
        let mut s = self.lock();
        let c = s.chunks[chunk].as_mut().expect("a range's chunk outlives it");
        let at = c.free.partition_point(|&(o, _)| o < offset);
        c.free.insert(at, (offset, len));
        // Coalesce with the neighbours.
        if at + 1 < c.free.len() && c.free[at].0 + c.free[at].1 == c.free[at + 1].0 {
            c.free[at].1 += c.free[at + 1].1;
            c.free.remove(at + 1);
        }
        if at > 0 && c.free[at - 1].0 + c.free[at - 1].1 == c.free[at].0 {
            c.free[at - 1].1 += c.free[at].1;
            c.free.remove(at);
        }
        s.free_bytes += len as u64;
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for chunk in s.chunks.drain(..).flatten() {
            // SAFETY: every range holds an Arc of the arena, so none is
            // handed out any more; the chunk came from this allocator.
            unsafe {
                (self.allocator.free)(
                    self.allocator.user_data,
                    chunk.ptr.as_ptr() as *mut c_void,
                    chunk.len,
                )
            };
        }
    }
}

impl ArenaRange {
    /// Gives the range back to its arena (the buffer holding it is dropped).
    pub(crate) fn release(&self, len: usize) {
        self.arena.give_back(self.chunk, self.offset, len);
    }
}

/// `Option<(_, _, len)>` comparison for best fit: none yet, or a longer one.
trait BestFit {
    fn is_none_or_longer(&self, len: usize) -> bool;
}

impl BestFit for Option<(usize, usize, usize)> {
    fn is_none_or_longer(&self, len: usize) -> bool {
        match self {
            None => true,
            Some((_, _, best)) => *best > len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn alloc(_: *mut c_void, size: usize, align: usize) -> *mut c_void {
        let mut p = std::ptr::null_mut();
        // SAFETY: posix_memalign with a valid out-pointer.
        unsafe { libc::posix_memalign(&mut p, align, size) };
        p
    }
    unsafe extern "C" fn free(_: *mut c_void, p: *mut c_void, _: usize) {
        // SAFETY: p came from posix_memalign.
        unsafe { libc::free(p) }
    }

    #[test]
    fn ranges_are_best_fit_and_coalesce_when_given_back() {
        let arena = Arena::new(Arc::new(Allocator::new(std::ptr::null_mut(), alloc, free)), 64);
        arena.grow(1024).unwrap();
        let a = arena.carve(100).unwrap();
        let base = a.as_ptr() as usize;
        let b = arena.carve(300).unwrap();
        let c = arena.carve(100).unwrap();
        assert_eq!((a.len(), b.len(), c.len()), (128, 320, 128));
        assert_eq!(arena.free_bytes(), 1024 - 576);
        drop(b);
        // The 320-byte hole is the best fit for 200 bytes, not the tail.
        let d = arena.carve(200).unwrap();
        assert_eq!(d.as_ptr() as usize - base, 128);
        drop((a, c, d));
        assert_eq!(arena.free_bytes(), 1024);
        let whole = arena.carve(1024).unwrap();
        assert_eq!(whole.as_ptr() as usize, base);
        assert!(arena.carve(64).is_none());
        drop(whole);
        assert_eq!(arena.release_free_chunk(), Some(1024));
        assert_eq!(
            (arena.total_bytes(), arena.free_bytes(), arena.allocations()),
            (0, 0, 1)
        );
    }
}
