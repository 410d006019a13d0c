//! A vector that grows without moving its elements, so that readers index
//! it with no lock while a writer appends: fixed-size chunks allocated once
//! and never freed before the vector.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;
/// Most chunks, so at most 4M elements.
const MAX_CHUNKS: usize = 4096;

/// Append-only, lock-free to read. Appends must be serialised by the caller.
pub(crate) struct SegVec<T> {
    chunks: Box<[OnceLock<Box<[T]>>]>,
    len: AtomicUsize,
    make: fn() -> T,
}

impl<T> SegVec<T> {
    /// An empty vector whose slots are made by `make` a chunk at a time.
    pub(crate) fn new(make: fn() -> T) -> Self {
        SegVec {
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            make,
        }
    }

    /// The most elements the vector can hold.
    pub(crate) const CAPACITY: usize = CHUNK * MAX_CHUNKS;

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len() {
            return None;
        }
        self.chunks[i >> CHUNK_BITS].get().map(|c| &c[i & (CHUNK - 1)])
    }

    /// Makes the vector `n` long (never shorter) and returns the new
    /// elements' first index; `init` prepares each new element before it is
    /// published. Callers serialise calls to this.
    pub(crate) fn grow_to(&self, n: usize, mut init: impl FnMut(usize, &T)) -> Option<usize> {
        let old = self.len();
        if n > Self::CAPACITY {
            return None;
        }
        for i in old..n {
            let chunk =
                self.chunks[i >> CHUNK_BITS].get_or_init(|| (0..CHUNK).map(|_| (self.make)()).collect());
            init(i, &chunk[i & (CHUNK - 1)]);
        }
        if n > old {
            self.len.store(n, Ordering::Release);
        }
        Some(old)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        (0..self.len()).filter_map(move |i| self.get(i))
    }
}
