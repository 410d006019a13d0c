//! One tensor's slot: the atomic state word the hit path works on, and the
//! small lock that the load / evict state machine uses.
//!
//! State word layout (one `AtomicU64`):
//! - bits 0..2: `ABSENT`, `LOADING`, `RESIDENT`, `EVICTING`
//! - bit 2: pinned; bit 3: loaded by a prefetch and not used since
//! - bits 4..24: in-use count (acquisitions outstanding)
//! - bits 24..64: hits counted on this slot (folded into `hits_folded`
//!   before the field would overflow)
//!
//! A hit is one compare-and-swap on this word: RESIDENT and below the
//! in-use limit, add one in-use and one hit. The evictor moves a slot to
//! EVICTING only with a CAS that requires in-use 0 and not pinned, so a
//! tensor in use is never evicted.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::window::Window;
use crate::error::Error;
use crate::source::TensorBuffer;

pub(crate) const STATE_MASK: u64 = 0b11;
pub(crate) const ABSENT: u64 = 0;
pub(crate) const LOADING: u64 = 1;
pub(crate) const RESIDENT: u64 = 2;
pub(crate) const EVICTING: u64 = 3;
pub(crate) const PINNED: u64 = 1 << 2;
pub(crate) const PREFETCHED: u64 = 1 << 3;
pub(crate) const IN_USE_SHIFT: u32 = 4;
pub(crate) const IN_USE_ONE: u64 = 1 << IN_USE_SHIFT;
pub(crate) const IN_USE_MAX: u64 = (1 << 20) - 1;
pub(crate) const IN_USE_MASK: u64 = IN_USE_MAX << IN_USE_SHIFT;
pub(crate) const HITS_SHIFT: u32 = 24;
pub(crate) const HIT_ONE: u64 = 1 << HITS_SHIFT;
pub(crate) const HITS_MAX: u64 = (1 << 40) - 1;
pub(crate) const HITS_MASK: u64 = HITS_MAX << HITS_SHIFT;

/// Lease cells per slot for ticketed (C) acquisitions; more concurrent
/// acquisitions of one tensor go to the pager's overflow table.
pub(crate) const LEASES_PER_SLOT: usize = 4;

pub(crate) fn state_of(word: u64) -> u64 {
    word & STATE_MASK
}
pub(crate) fn in_use_of(word: u64) -> u64 {
    (word & IN_USE_MASK) >> IN_USE_SHIFT
}
pub(crate) fn hits_of(word: u64) -> u64 {
    (word & HITS_MASK) >> HITS_SHIFT
}

/// What a loaded slot holds.
#[derive(Debug)]
pub(crate) enum Residence {
    /// A buffer of ours, freed when the slot is evicted.
    Owned(#[allow(dead_code)] TensorBuffer),
    /// Zero-copy: the data is the source's mapping.
    Mapped,
    /// A slice read into its place in its parent's window: `(window,
    /// offset in the parent, size)`; its pages are vacated on eviction.
    Placed(Arc<Window>, u64, u64),
    /// A tensor of zero bytes: nothing held, nothing charged.
    Empty,
}

/// The part of a slot guarded by its lock.
#[derive(Debug, Default)]
pub(crate) struct SlotSync {
    /// Bumped each time a load ends (success or failure).
    pub(crate) load_generation: u64,
    /// The error of the load that ended at `load_generation`, if it failed.
    pub(crate) failure: Option<(u64, Error)>,
    /// The tensor's memory while LOADING (being filled) or RESIDENT.
    pub(crate) residence: Option<Residence>,
}

/// One tensor's paging state.
///
/// Laid out so that what a hit writes (the state word, the lease cells) and
/// reads (the data pointer) share the slot's first cache line, and no line
/// is shared with a neighbour slot: threads hitting different tensors write
/// to different lines.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Slot {
    pub(crate) word: AtomicU64,
    /// Start of the tensor's bytes while RESIDENT; published before the
    /// state becomes RESIDENT.
    pub(crate) data: AtomicPtr<u8>,
    /// Lease cells: `generation << 1 | occupied`.
    pub(crate) leases: [AtomicU64; LEASES_PER_SLOT],
    /// Acquirers waiting for this slot's load: the evictor leaves it alone.
    pub(crate) waiters: AtomicU32,
    /// The tensor's size in bytes (the rest of what is known of it is the
    /// pager's `info`): set once before the slot is published.
    size: AtomicU64,
    /// Bytes charged to the budget for this slot (0 when absent). Written
    /// only under the pager's eviction mutex.
    pub(crate) charge: AtomicU64,
    /// Hits folded out of the state word's hit field.
    pub(crate) hits_folded: AtomicU64,
    /// The schedule position when the tensor last became resident: one
    /// loaded less than a pass ago is streamed through the budget, not kept
    /// in it (read-ahead makes room only from those).
    pub(crate) loaded_at: AtomicU64,
    pub(crate) sync: Mutex<SlotSync>,
    pub(crate) changed: Condvar,
}

impl Slot {
    pub(crate) fn new() -> Self {
        Slot {
            word: AtomicU64::new(ABSENT),
            size: AtomicU64::new(0),
            data: AtomicPtr::new(std::ptr::null_mut()),
            charge: AtomicU64::new(0),
            hits_folded: AtomicU64::new(0),
            loaded_at: AtomicU64::new(0),
            waiters: AtomicU32::new(0),
            leases: Default::default(),
            sync: Mutex::new(SlotSync::default()),
            changed: Condvar::new(),
        }
    }

    /// Called once, before the slot is published.
    pub(crate) fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Relaxed);
    }

    /// The tensor's size in bytes.
    #[inline]
    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SlotSync> {
        // A poisoned slot lock means a panic mid-transition; the data it
        // guards is still consistent (each field is written in one step).
        self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn load_word(&self) -> u64 {
        self.word.load(Ordering::Acquire)
    }

    /// The hit path: take one in-use reference if the tensor is resident.
    /// Returns the previous word on success. `count_hit` adds to the slot's
    /// hit counter (waiters of a load are misses, not hits).
    #[inline]
    pub(crate) fn try_acquire_resident(&self, count_hit: bool) -> Option<u64> {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if state_of(w) != RESIDENT || in_use_of(w) == IN_USE_MAX {
                return None;
            }
            let mut new = (w + IN_USE_ONE) & !PREFETCHED;
            let mut fold = false;
            if count_hit {
                if hits_of(w) == HITS_MAX {
                    new &= !HITS_MASK;
                    fold = true;
                } else {
                    new += HIT_ONE;
                }
            }
            match self
                .word
                .compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if fold {
                        self.hits_folded.fetch_add(HITS_MAX + 1, Ordering::Relaxed);
                    }
                    return Some(w);
                }
                Err(cur) => w = cur,
            }
        }
    }

    /// Drops one in-use reference; returns the word before.
    #[inline]
    pub(crate) fn release(&self) -> u64 {
        self.word.fetch_sub(IN_USE_ONE, Ordering::AcqRel)
    }

    /// Total hits counted on this slot.
    pub(crate) fn hits(&self) -> u64 {
        hits_of(self.load_word()) + self.hits_folded.load(Ordering::Relaxed)
    }
}
