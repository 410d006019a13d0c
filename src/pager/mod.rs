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
//! - `requests.rs`: those reads coalesced into requests, several in
//!   flight, published as each ends;
//! - `window.rs`: placement windows, where a parent's slices are read in
//!   place (`Pager::place_slices`);
//! - `follow.rs`: the budget that follows the memory limit;
//! - this file: the shared state and the rules checked over it.
//!
//! # Lock order
//! 1. `Inner::evict` (the eviction mutex: budget counter, victim choice)
//! 2. a slot's `sync` lock (load / evict transitions of that slot)
//! 3. `Inner::overflow_leases`; an arena's own lock (carving and giving
//!    back ranges, taken inside the eviction mutex, and on its own when a
//!    buffer is dropped); `Inner::placements` (read on a miss, written by
//!    `place_slices`, nothing taken inside it); a window's page counts
//!    (taken alone, by a load before its read and after the eviction
//!    mutex is released)
//! 4. the policy's own locks (the MoE experts' state and shadow caches,
//!    then the learner, then the kept schedules): leaves, taken inside the
//!    eviction mutex by `choose_victim`, and on their own on a dense miss,
//!    a hint, or a reader's `still_wanted`; the policy never calls back
//!    into the pager
//!
//! A lock may be taken while holding one above it in this list, never one
//! below. The hit path takes no lock at all: one CAS on the slot's state
//! word (see `slot.rs`), and for an expert one push on a lock-free queue
//! (`policy/uses.rs`).
//!
//! Nothing calls out of the pager under the eviction mutex: the engine's
//! allocator (`Arena::allocate_chunk`, and freeing a wholly free chunk),
//! `munmap` of a pooled buffer, `mremap` of one being resized and
//! `madvise` of an evicted mapped tensor all run after it is released
//! (`budget.rs`: `Deferred`, `Inner::unlock`).
//!
//! # Rules kept (and checked by [`Pager::check_invariants`])
//! - resident bytes (loading, idle, pinned, in use) never pass the budget;
//! - a slot in use or pinned is never evicted;
//! - one read per miss, however many threads miss the same tensor at once;
//! - the counters kept where charges change (the eviction candidates, the
//!   read-ahead bytes unused and in flight) agree with the slots.

mod acquisitions;
mod budget;
mod facade;
mod follow;
mod loads;
mod options;
mod readahead;
mod requests;
mod slot;
mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};

pub use acquisitions::{Acquisition, TicketedAcquisition};
pub use facade::Pager;
pub use follow::HEADROOM as FOLLOW_HEADROOM;
pub use options::{BudgetListener, PagerOptions, Stats, READERS_AUTO};

use budget::EvictState;
use slot::{in_use_of, state_of, Slot, ABSENT, PINNED, RESIDENT};
use window::Window;

use crate::error::{Error, Result};
use crate::index::{TensorIndex, TensorInfo};
use crate::policy::EvictionPolicy;
use crate::prefetch;
use crate::segvec::SegVec;
use crate::source::ByteSource;

pub(crate) struct Inner {
    index: TensorIndex,
    source: Box<dyn ByteSource>,
    /// One slot per tensor of the file, then one per slice.
    slots: SegVec<Slot>,
    /// What is known of each slice (the file's tensors are the index's):
    /// slice `id` is at `id - index.len()`.
    slice_infos: SegVec<OnceLock<TensorInfo>>,
    /// Slice names, for `find`.
    slice_names: Mutex<HashMap<String, u32>>,
    /// The parent tensor of each slice, indexed as `slice_infos`.
    slice_parents: SegVec<OnceLock<u32>>,
    /// Parents whose slices are read into their places in one range
    /// (`Pager::place_slices`).
    placements: RwLock<HashMap<u32, Placement>>,
    /// Serialises appends to `slots` (slices).
    grow: Mutex<()>,
    policy: Box<dyn EvictionPolicy>,
    alignment: usize,
    wait_ms: u32,
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
    /// Held by the one reader that reads ahead along the schedule: several
    /// readers claiming ahead at once race each other into the budget the
    /// pass keeps (one reader keeps several requests in flight).
    schedule_reader: Mutex<()>,
    /// Set by the first acquisition: read-ahead along the schedule starts
    /// only once the engine has started a pass.
    pass_started: AtomicBool,
    closed: AtomicBool,
    misses: AtomicU64,
    prefetch_hits: AtomicU64,
    /// Charges of tensors read ahead and not used yet (the read-ahead
    /// flag set), and of those among them still being read.
    prefetched_bytes: AtomicU64,
    readahead_in_flight: AtomicU64,
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

/// How the slices of a parent are placed.
#[derive(Debug, Clone)]
enum Placement {
    /// Read into their places in a reserved window of ours.
    Window(Arc<Window>),
    /// The source is a mapping: each slice is handed out where the mapping
    /// has it, whatever its alignment.
    Mapped,
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
        let too_many =
            || Error::InvalidArgument(format!("{n} tensors and slices is more than a pager holds"));
        if n > SegVec::<Slot>::CAPACITY {
            return Err(too_many());
        }
        self.policy.set_sizes(first as u32, &sizes);
        for id in first..n {
            self.policy.set_parent(id as u32, parent);
        }
        let files = self.index.len();
        let mut names = self.slice_names.lock().unwrap_or_else(|e| e.into_inner());
        self.slice_parents
            .grow_to(n - files, |_, cell| {
                let _ = cell.set(parent);
            })
            .ok_or_else(too_many)?;
        let mut infos = infos.into_iter();
        self.slice_infos
            .grow_to(n - files, |i, cell| {
                let info = infos.next().expect("one info per new slice");
                names.insert(info.name.clone(), (files + i) as u32);
                let _ = cell.set(info);
            })
            .ok_or_else(too_many)?;
        drop(names);
        self.slots
            .grow_to(n, |i, slot| slot.set_size(sizes[i - first]))
            .ok_or_else(too_many)?;
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
        self.slot(id)?;
        Ok(self.info_unchecked(id))
    }

    /// What is known of tensor or slice `id` (a valid id).
    fn info_unchecked(&self, id: u32) -> &TensorInfo {
        let files = self.index.tensors();
        match files.get(id as usize) {
            Some(info) => info,
            None => self
                .slice_infos
                .get(id as usize - files.len())
                .and_then(OnceLock::get)
                .expect("slices are published after their info"),
        }
    }

    /// Where slice `id` is placed, if its parent's slices are placed: the
    /// parent's placement and the slice's offset within the parent.
    fn placement_of(&self, id: u32) -> Option<(Placement, u64)> {
        let files = self.index.len();
        let parent = *self.slice_parents.get((id as usize).checked_sub(files)?)?.get()?;
        let placement = self
            .placements
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&parent)?
            .clone();
        let offset = self.info_unchecked(id).offset - self.info_unchecked(parent).offset;
        Some((placement, offset))
    }

    /// The id of the tensor or slice named `name`.
    fn find(&self, name: &str) -> Option<u32> {
        self.index.find(name).or_else(|| {
            self.slice_names
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied()
        })
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
            Some(_) => format!("tensor {id} '{}'", self.info_unchecked(id).name),
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
            staging_bytes: g.staging_bytes,
            page_table_bytes: g.page_tables,
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
                let size = slot.size();
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
                    if c == 0 && slot.size() > 0 {
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
        // The read-ahead counters change outside the eviction mutex (a hit
        // clears the flag, a read ends), each just after or before its
        // slot's word: they are compared with the slots only in a quiet
        // moment (no slot being read or in use, the counters unchanged
        // during the scan).
        let counters = || {
            (
                self.prefetched_bytes.load(Ordering::SeqCst),
                self.readahead_in_flight.load(Ordering::SeqCst),
            )
        };
        let before = counters();
        let (mut prefetched, mut in_flight, mut busy) = (0u64, 0u64, false);
        for slot in self.slots.iter() {
            let w = slot.load_word();
            busy |= state_of(w) == slot::LOADING || in_use_of(w) > 0;
            if w & slot::PREFETCHED != 0 {
                prefetched += slot.charge.load(Ordering::Relaxed);
                if state_of(w) == slot::LOADING {
                    in_flight += slot.charge.load(Ordering::Relaxed);
                }
            }
        }
        if !busy && counters() == before && (prefetched, in_flight) != before {
            return Err(format!(
                "read-ahead counters say {} unused and {} in flight, the slots {prefetched} and {in_flight}",
                before.0, before.1
            ));
        }
        if let Some(id) = g.streamed.iter().find(|&id| !g.charged.contains(id)) {
            return Err(format!(
                "{} is among the streamed, not the charged",
                self.label(id)
            ));
        }
        let members = g.charged.len();
        let charged_slots = self
            .slots
            .iter()
            .filter(|s| s.charge.load(Ordering::Relaxed) > 0)
            .count();
        if members != charged_slots {
            return Err(format!(
                "{members} eviction candidates, {charged_slots} charged slots"
            ));
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
