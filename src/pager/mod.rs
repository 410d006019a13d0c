//! The resident set: budget accounting, in-use counts, single-flight loads,
//! eviction, acquisitions. One file per concern:
//! - `facade.rs`: [`Pager`], the public face; opening, slices, schedules;
//! - `options.rs`: [`PagerOptions`] and [`Stats`];
//! - `slot.rs`: one tensor's slot and its atomic state word (the hit path);
//! - `acquisitions.rs`: acquire, release, tickets for the C API;
//! - `loads.rs`: single-flight reads, their failures and waiters, pins;
//! - `budget.rs`: charges, eviction, the reuse pool, budget waiters;
//! - `readahead.rs`: what the background readers read next (the narrow
//!   interface `prefetch` is given);
//! - `follow.rs`: the budget that follows the memory limit;
//! - this file: the shared state and the rules checked over it.
//!
//! # Lock order
//! 1. `Inner::evict` (the eviction mutex: budget counter, victim choice)
//! 2. a slot's `sync` lock (load / evict transitions of that slot)
//! 3. `Inner::overflow_leases`; an engine allocator's arena lock (taken
//!    inside the eviction mutex, and on its own when a buffer is dropped)
//! 4. the policy's own locks (the learner, the MoE experts' state and
//!    shadow caches): leaves, taken inside the eviction mutex by
//!    `choose_victim` and on their own on a miss or an expert's acquire;
//!    the policy never calls back into the pager
//!
//! A lock may be taken while holding one above it in this list, never one
//! below. The hit path takes no lock at all: one CAS on the slot's state
//! word (see `slot.rs`).
//!
//! # Rules kept (and checked by [`Pager::check_invariants`])
//! - resident bytes (loading, idle, pinned, in use) never pass the budget;
//! - a slot in use or pinned is never evicted;
//! - one read per miss, however many threads miss the same tensor at once.

mod acquisitions;
mod budget;
mod facade;
mod follow;
mod loads;
mod options;
mod readahead;
mod slot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub use acquisitions::{Acquisition, TicketedAcquisition};
pub use facade::Pager;
pub use follow::HEADROOM as FOLLOW_HEADROOM;
pub use options::{BudgetListener, PagerOptions, Stats, READERS_AUTO};

use budget::EvictState;
use slot::{in_use_of, state_of, Slot, ABSENT, PINNED, RESIDENT};

use crate::error::{Error, Result};
use crate::index::{TensorIndex, TensorInfo};
use crate::policy::EvictionPolicy;
use crate::prefetch;
use crate::segvec::SegVec;
use crate::source::{Allocator, ByteSource};

pub(crate) struct Inner {
    index: TensorIndex,
    source: Box<dyn ByteSource>,
    /// One slot per tensor of the file, then one per slice.
    slots: SegVec<Slot>,
    /// Serialises appends to `slots` (slices).
    grow: Mutex<()>,
    policy: Box<dyn EvictionPolicy>,
    alignment: usize,
    wait_ms: u32,
    allocator: Option<Arc<Allocator>>,
    /// Budget in force; written under `evict`.
    budget: AtomicU64,
    evict: Mutex<EvictState>,
    budget_freed: Condvar,
    /// Threads waiting on `budget_freed` (demands and set_budget).
    budget_waiters: AtomicUsize,
    /// Demands (acquire, pin) that found no room: while any waits, no
    /// read-ahead takes budget.
    demands_waiting: AtomicUsize,
    /// A read-ahead stopped because a tensor in use will be the better
    /// victim once released: the next release wakes the readers.
    readahead_waits_for_release: AtomicBool,
    /// Set by the first acquisition: read-ahead along the schedule starts
    /// only once the engine has started a pass.
    pass_started: AtomicBool,
    closed: AtomicBool,
    misses: AtomicU64,
    prefetch_hits: AtomicU64,
    bytes_read: AtomicU64,
    read_ns: AtomicU64,
    wait_ns: AtomicU64,
    /// Random per pager, so a ticket of another pager is refused.
    ticket_salt: u64,
    overflow_leases: Mutex<HashMap<u64, u32>>,
    next_overflow: AtomicU64,
    /// The background readers' shared state, when there are readers.
    readers: Option<Arc<prefetch::Shared>>,
}

impl Inner {
    fn add_slots(&self, parent: u32, infos: Vec<TensorInfo>) -> Result<u32> {
        let _g = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let first = self.slots.len();
        let n = first + infos.len();
        if n >= u32::MAX as usize {
            return Err(Error::InvalidArgument("too many slices".to_owned()));
        }
        self.policy.grow(n);
        let sizes: Vec<u64> = infos.iter().map(|t| t.size).collect();
        self.policy.set_sizes(first as u32, &sizes);
        for id in first..n {
            self.policy.set_parent(id as u32, parent);
        }
        let mut infos = infos.into_iter();
        self.slots
            .grow_to(n, |_, slot| {
                slot.set_info(infos.next().expect("one info per new slot"))
            })
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{n} tensors and slices is more than a pager holds"))
            })?;
        Ok(first as u32)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn info(&self, id: u32) -> Result<&TensorInfo> {
        Ok(self.slot(id)?.info())
    }

    #[inline]
    fn slot_unchecked(&self, id: u32) -> &Slot {
        self.slots.get(id as usize).expect("id checked by the caller")
    }

    fn slot(&self, id: u32) -> Result<&Slot> {
        self.slots.get(id as usize).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "tensor id {id} out of range (there are {} tensors)",
                self.slots.len()
            ))
        })
    }

    fn label(&self, id: u32) -> String {
        match self.slots.get(id as usize) {
            Some(s) => format!("tensor {id} '{}'", s.info().name),
            None => format!("tensor {id}"),
        }
    }

    fn lock_evict(&self) -> MutexGuard<'_, EvictState> {
        self.evict.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> Stats {
        let g = self.lock_evict();
        let mut s = Stats {
            misses: self.misses.load(Ordering::Relaxed),
            prefetch_hits: self.prefetch_hits.load(Ordering::Relaxed),
            evictions: g.evictions,
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            resident_bytes: g.held(),
            peak_resident_bytes: g.peak_resident_bytes,
            budget_bytes: self.budget.load(Ordering::Relaxed),
            read_ns: self.read_ns.load(Ordering::Relaxed),
            wait_ns: self.wait_ns.load(Ordering::Relaxed),
            ..Stats::default()
        };
        for slot in self.slots.iter() {
            let w = slot.load_word();
            s.hits += slot.hits();
            if state_of(w) == RESIDENT {
                s.resident_count += 1;
                let size = slot.info().size;
                if w & PINNED != 0 {
                    s.pinned_bytes += size;
                }
                if in_use_of(w) > 0 {
                    s.in_use_bytes += size;
                }
            }
        }
        s
    }

    fn check_invariants(&self) -> std::result::Result<(), String> {
        let g = self.lock_evict();
        let budget = self.budget.load(Ordering::Relaxed);
        let mut charged = 0u64;
        for (i, slot) in self.slots.iter().enumerate() {
            let w = slot.load_word();
            let c = slot.charge.load(Ordering::Relaxed);
            charged += c;
            match state_of(w) {
                RESIDENT => {
                    if c == 0 && slot.info().size > 0 {
                        return Err(format!("tensor {i} resident with no charge"));
                    }
                    if slot.data.load(Ordering::Acquire).is_null() {
                        return Err(format!("tensor {i} resident with no data"));
                    }
                }
                ABSENT => {
                    if in_use_of(w) != 0 || w & PINNED != 0 {
                        return Err(format!("tensor {i} absent but in use or pinned (word {w:#x})"));
                    }
                    if c != 0 {
                        return Err(format!("tensor {i} absent but charged {c} bytes"));
                    }
                }
                _ => {}
            }
        }
        if charged != g.resident_bytes {
            return Err(format!(
                "slots are charged {charged} bytes, the counter says {}",
                g.resident_bytes
            ));
        }
        if g.pooled_bytes != g.pool.iter().map(|b| b.len() as u64).sum::<u64>() {
            return Err("pooled bytes do not add up".to_owned());
        }
        if budget != 0 && g.held() > budget {
            return Err(format!(
                "resident {} bytes past the budget of {budget}",
                g.resident_bytes
            ));
        }
        if g.peak_resident_bytes < g.held() {
            return Err("peak below current".to_owned());
        }
        Ok(())
    }
}
