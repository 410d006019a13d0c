//! The budget: charges, eviction (the policy chooses, this file evicts),
//! the pool of freed buffers kept for reuse (inside the budget), and the
//! threads that wait for room. A demand always gets back the budget that
//! read-aheads hold; `PAGER_ERR_BUDGET` means pinned and in-use bytes leave
//! no room.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::loads::Intent;
use super::slot::{
    self, in_use_of, state_of, Residence, ABSENT, EVICTING, LOADING, PINNED, PREFETCHED, RESIDENT,
};
use super::window::Window;
use super::Inner;
use crate::error::{Error, Result};
use crate::policy::{Candidates, ResidentSet};
use crate::source::{Arena, FreshChunk, TensorBuffer, HUGE_PAGE, MOST_STAGING_PAGES, STAGING_PAGE_BYTES};

/// Chunks an arena takes from the engine's allocator when there is no budget.
const UNLIMITED_ARENA_CHUNK: u64 = 256 << 20;

/// How recently (in acquisitions, or an eighth of a pass if more) a
/// streamed tensor must have been loaded for a read-ahead to take its
/// buffer for being the right size: one streamed long ago may have been
/// about to become one the pass keeps.
const RECENTLY_STREAMED: u64 = 16;

/// The largest tensor a read-ahead may evict, as a multiple of its own
/// charge: a large tensor evicted for a small one leaves most of its room
/// to no read (a reader evicting a 13 MiB output matrix for a 160 KiB one
/// read 1.25-1.85x the bound; four times read 5-6% over M - B at half of a
/// SmolLM2-sized model with four readers, against 4%).
const READ_AHEAD_VICTIM_MOST: u64 = 2;

/// Reads are staged where the budget holds the largest tensor and the
/// staging memory with this to spare, through as many huge pages (up to
/// four) as keep the staging memory at most 1/`STAGING_SHARE` of the
/// budget: charged to a smaller budget, a page would cost more reads (2
/// MiB a pass, or a share of the experts' hits) than its speed is worth.
const STAGING_ROOM: u64 = 4 * STAGING_PAGE_BYTES;
const STAGING_SHARE: u64 = 20;

/// Pages past the first are staged through only as far as they are at most
/// 1/`STAGING_STREAMED_SHARE` of what a pass streams: each is 2 MiB more
/// read every pass (on a 290 MiB model at half, three pages read 1.08-1.11x
/// the bound M - B against one page's 1.03x).
const STAGING_STREAMED_SHARE: u64 = 64;

/// The share of the budget kept at most for the kernel's page tables of
/// the tensor buffers (see [`page_table_reserve`]).
const PAGE_TABLE_SHARE: u64 = 256;

/// The page tables that map a buffer of `len` bytes, where they are its
/// own: a buffer of 2 MiB or more is a mapping of its own, aligned to 2
/// MiB, and each 2 MiB of it takes a 4 KiB table (for a transparent huge
/// page, one set aside to split it), its partial last 2 MiB one more.
/// Smaller buffers share their tables with their neighbours: 0.
pub(super) fn page_tables_of(len: u64) -> u64 {
    if len < HUGE_PAGE as u64 {
        0
    } else {
        len.div_ceil(HUGE_PAGE as u64) * 4096
    }
}

/// The bytes of a `budget` kept for the page tables that map the tensor
/// buffers, in whole 4 KiB pages: those of every tensor of the model
/// (`most`, [`page_tables_of`] each), at most 1/256 of the budget (what
/// buffers of a few MiB take at most), and never so much that the
/// `largest` tensor no longer fits. They are memory the buffers cost
/// beside their bytes: on a 1.33 GiB model at 75%, 3 MiB of page tables
/// for 1 GiB of buffers, which, uncounted, got it OOM-killed in a memory
/// cgroup of the budget + 8 MiB.
pub(super) fn page_table_reserve(budget: u64, largest: u64, most: u64) -> u64 {
    most.min(budget / PAGE_TABLE_SHARE)
        .min(budget.saturating_sub(largest))
        / 4096
        * 4096
}

/// How often a thread waiting for budget looks again even if nobody woke it.
const BUDGET_WAIT_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub(super) struct EvictState {
    /// Bytes charged to tensors (loading or resident).
    pub(super) resident_bytes: u64,
    /// Freed tensor buffers kept for reuse, so that a steady sweep does not
    /// page-fault fresh memory; they count against the budget too.
    pub(super) pool: Vec<TensorBuffer>,
    pub(super) pooled_bytes: u64,
    /// Highest `resident_bytes + pooled_bytes` seen.
    pub(super) peak_resident_bytes: u64,
    pub(super) evictions: u64,
    /// With an engine's allocator, tensor buffers are carved from this
    /// arena instead of the pool; its free bytes count against the budget
    /// as pooled buffers do.
    pub(super) arena: Option<Arc<Arena>>,
    /// The largest tensor of the file: the smallest arena chunk, and at
    /// least half the read-ahead window without a budget.
    pub(super) largest_tensor: u64,
    /// The tensors charged to the budget (loading or resident): the
    /// eviction candidates, so that no choice walks every slot.
    pub(super) charged: ResidentSet,
    /// The part of `charged` loaded since about a pass ago (or being
    /// loaded): the only tensors a read-ahead along the schedule may take,
    /// so that its choice looks at the few streamed through the budget, not
    /// at every tensor the pass keeps ([`Inner::forget_kept`] drops the
    /// others when it looks).
    pub(super) streamed: ResidentSet,
    /// Bytes of arena chunks being allocated with this mutex released.
    pub(super) growing: u64,
    /// The staging memory the source's `O_DIRECT` reads land in, charged to
    /// the budget like a pinned tensor (0 when reads are not staged).
    pub(super) staging_bytes: u64,
    /// The part of the budget kept for the kernel's page tables of the
    /// tensor buffers ([`page_table_reserve`]).
    pub(super) page_tables: u64,
    /// The page tables of every tensor of the model (see [`page_tables_of`]).
    pub(super) page_tables_most: u64,
    /// Calls out of the pager that evictions made necessary, done once the
    /// mutex is released ([`Inner::unlock`]).
    pub(super) deferred: Vec<Deferred>,
}

/// Work that calls out of the pager (the engine's allocator, `munmap`,
/// `madvise`), done after the eviction mutex is released so that no miss,
/// waiter or `stats()` stalls behind it, and an allocator that calls back
/// into the pager cannot deadlock.
#[derive(Debug)]
pub(super) enum Deferred {
    /// A pooled buffer freed (dropping it unmaps or frees it).
    Free(#[allow(dead_code)] TensorBuffer),
    /// A wholly free arena chunk going back to the engine's allocator.
    Chunk(#[allow(dead_code)] FreshChunk),
    /// Mapped tensor `id` evicted: its pages may go.
    DontNeed(u32),
    /// A placed slice evicted: its pages no other slice uses go.
    Vacate(Arc<Window>, u64, u64),
}

/// What [`EvictState::take_buffer`] found.
pub(super) enum Taken {
    /// A buffer to read into and the bytes to charge for it (it may need a
    /// resize to that size, done by the loader with no lock held).
    Buffer(TensorBuffer, u64),
    /// Nothing fits now.
    Nothing,
    /// The arena needs a chunk of this size from the allocator first.
    Grow(u64),
}

impl EvictState {
    pub(super) fn held(&self) -> u64 {
        self.resident_bytes
            + self.pooled_bytes
            + self.growing
            + self.staging_bytes
            + self.page_tables
            + self.arena.as_ref().map_or(0, |a| a.free_bytes())
    }

    /// Takes a pooled buffer for a tensor of `len` bytes and returns it with
    /// the bytes to charge, if the held bytes stay within `budget` (0:
    /// unlimited). A buffer of the same size (within a quarter) is taken as
    /// it is; otherwise, below a huge page, a mapped buffer to be shrunk or
    /// grown to `len` (it keeps its faulted-in pages): the smallest one that is large enough,
    /// else the largest.
    pub(super) fn take_buffer(&mut self, len: u64, budget: u64) -> Taken {
        if let Some(arena) = self.arena.clone() {
            return self.carve(&arena, len, budget);
        }
        match self.take_pooled(len, budget) {
            Some((b, charge)) => Taken::Buffer(b, charge),
            None => Taken::Nothing,
        }
    }

    /// A buffer from the arena: the best-fitting free range, else a new
    /// chunk if the budget has room for it (a quarter of the budget, so that
    /// a whole sweep calls the allocator a few times; at least the tensor).
    fn carve(&mut self, arena: &Arc<Arena>, len: u64, budget: u64) -> Taken {
        if let Some(b) = arena.carve(len as usize) {
            let charge = b.len() as u64;
            return Taken::Buffer(b, charge);
        }
        let need = arena.footprint(len as usize) as u64;
        let room = if budget == 0 {
            u64::MAX
        } else {
            budget.saturating_sub(self.held())
        };
        if room < need {
            return Taken::Nothing;
        }
        // Every chunk can hold the largest tensor, so that any chunk freed
        // by evictions serves any load.
        let target = if budget == 0 {
            UNLIMITED_ARENA_CHUNK
        } else {
            budget / 4
        }
        .max(self.largest_tensor);
        // A whole number of the largest tensor: chunks of one size, so that
        // a wholly free chunk is never the wrong size to keep.
        let unit = self.largest_tensor.max(need);
        let chunk = (target.div_ceil(unit) * unit).min(room / need * need);
        Taken::Grow(arena.footprint(chunk as usize) as u64)
    }

    fn take_pooled(&mut self, len: u64, budget: u64) -> Option<(TensorBuffer, u64)> {
        let fits = |b: &TensorBuffer| (b.len() as u64) >= len && (b.len() as u64) <= len + len / 4;
        if let Some(i) = self.pool.iter().position(fits) {
            let b = self.pool.swap_remove(i);
            self.pooled_bytes -= b.len() as u64;
            let charge = b.len() as u64;
            return Some((b, charge));
        }
        let resizable = || {
            self.pool
                .iter()
                .enumerate()
                .filter(|(_, b)| b.worth_resizing_to(len as usize))
        };
        let i = resizable()
            .filter(|(_, b)| b.len() as u64 >= len)
            .min_by_key(|(_, b)| b.len())
            .or_else(|| resizable().max_by_key(|(_, b)| b.len()))
            .map(|(i, _)| i)?;
        let growth = len.saturating_sub(self.pool[i].len() as u64);
        if budget != 0 && self.held() + growth > budget {
            return None;
        }
        let b = self.pool.swap_remove(i);
        self.pooled_bytes -= b.len() as u64;
        Some((b, len))
    }

    /// Frees the oldest pooled buffer (with an arena, a wholly free chunk),
    /// once the mutex is released; false if there is none.
    pub(super) fn free_one(&mut self) -> bool {
        if let Some(arena) = &self.arena {
            return match arena.detach_free_chunk() {
                Some(chunk) => {
                    self.deferred.push(Deferred::Chunk(chunk));
                    true
                }
                None => false,
            };
        }
        if self.pool.is_empty() {
            return false;
        }
        let b = self.pool.remove(0);
        self.pooled_bytes -= b.len() as u64;
        self.deferred.push(Deferred::Free(b));
        true
    }
}

/// A read-ahead turned down (no room, the window full, a demand waiting):
/// no verdict on the tensor, never shown to anyone, so no message is built.
fn declined() -> Error {
    Error::Budget(String::new())
}

/// The charged tensors as eviction candidates: resident, idle (or, for a
/// read-ahead, in use: once released it may be the better victim), not
/// pinned, nobody waiting for it, not `exclude`; spared while
/// `spare_read_ahead` if read ahead and not used yet; with
/// `streamed_since`, only tensors loaded at or after that position; with
/// `charged_within`, only tensors charged between those bytes (inclusive).
struct Evictable<'a> {
    inner: &'a Inner,
    /// The tensors looked at (all charged ones, or the streamed).
    among: &'a ResidentSet,
    exclude: u32,
    spare_read_ahead: bool,
    read_ahead: bool,
    streamed_since: Option<u64>,
    charged_within: Option<(u64, u64)>,
}

impl Candidates for Evictable<'_> {
    fn resident(&self) -> &ResidentSet {
        self.among
    }

    fn is_evictable(&self, id: u32) -> bool {
        let s = self.inner.slot_unchecked(id);
        let w = s.load_word();
        id != self.exclude
            && state_of(w) == RESIDENT
            && w & PINNED == 0
            && s.waiters.load(Ordering::SeqCst) == 0
            && !(self.spare_read_ahead && w & PREFETCHED != 0)
            && (in_use_of(w) == 0 || self.read_ahead)
            && self
                .streamed_since
                .map_or(true, |since| s.loaded_at.load(Ordering::Relaxed) >= since)
            && self.charged_within.map_or(true, |(least, most)| {
                (least..=most).contains(&s.charge.load(Ordering::Relaxed))
            })
    }
}

impl Inner {
    /// Releases the eviction mutex, then does the calls out of the pager
    /// that were deferred while it was held.
    pub(super) fn unlock(&self, mut g: MutexGuard<'_, EvictState>) {
        let work = std::mem::take(&mut g.deferred);
        drop(g);
        for w in work {
            match w {
                Deferred::DontNeed(id) => {
                    // Not if it was mapped in again since: its pages are in use.
                    if state_of(self.slot_unchecked(id).load_word()) == ABSENT {
                        let info = self.info_unchecked(id);
                        self.source.advise_dontneed(info.offset, info.size);
                    }
                }
                // A load of the same slice since has occupied its pages
                // first: they stay.
                Deferred::Vacate(window, offset, size) => window.vacate(offset, size),
                Deferred::Free(_) | Deferred::Chunk(_) => {}
            }
        }
    }

    /// Gives back the charge of a load that failed, and wakes whoever waits
    /// for room.
    pub(super) fn uncharge(&self, id: u32) {
        let mut g = self.lock_evict();
        let slot = self.slot_unchecked(id);
        let charge = slot.charge.swap(0, Ordering::Relaxed);
        g.resident_bytes -= charge;
        g.charged.remove(id);
        g.streamed.remove(id);
        if slot.load_word() & PREFETCHED != 0 {
            // A read-ahead that failed: still LOADING, its flag set.
            self.prefetched_bytes.fetch_sub(charge, Ordering::Relaxed);
            self.readahead_in_flight.fetch_sub(charge, Ordering::Relaxed);
        }
        drop(g);
        self.wake_budget_waiters();
    }

    pub(super) fn wake_budget_waiters(&self) {
        // Pairs with the waiter's register-then-recheck: either it sees what
        // this thread changed, or this thread sees it registered.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.budget_waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock_evict();
            self.budget_freed.notify_all();
        }
    }

    /// Charges `charge` bytes for `id` to the budget, evicting idle tensors
    /// as the policy chooses. With `wants_buffer`, returns a pooled buffer to
    /// reuse when one fits (the slot is then charged its capacity).
    ///
    /// A demand (acquire, pin) that finds no room waits for read-aheads in
    /// flight, whatever `wait_ms` says: each gives its budget back the moment
    /// it ends (as an idle tensor to evict), and while a demand waits no
    /// read-ahead takes budget. Only when pinned, in-use and demand-loading
    /// tensors hold the room does it wait up to `wait_ms` for a release, or
    /// fail with [`Error::Budget`]. A read-ahead (a guess: `Intent::Prefetch` or `ReadAhead`) never
    /// waits, never charges while a demand waits, and evicts only tensors
    /// needed later than the one it loads.
    pub(super) fn reserve(
        &self,
        id: u32,
        charge: u64,
        intent: Intent,
        wants_buffer: bool,
    ) -> Result<Option<TensorBuffer>> {
        let mut g = self.lock_evict();
        let readahead = intent.is_guess();
        let deadline = Instant::now() + Duration::from_millis(self.wait_ms as u64);
        let mut waited: Option<Instant> = None;
        let mut registered = false;
        let result = loop {
            if let Err(e) = self.check_open() {
                break Err(e);
            }
            let budget = self.budget.load(Ordering::Relaxed);
            if budget != 0 && charge > budget {
                break Err(Error::Budget(format!(
                    "{} needs {charge} bytes, more than the whole budget of {budget} bytes",
                    self.label(id)
                )));
            }
            if readahead && self.demands_waiting.load(Ordering::SeqCst) > 0 {
                // Yields to a waiting acquire.
                break Err(declined());
            }
            if intent == Intent::ReadAhead {
                // The window checked where charges change, so that several
                // readers together stay inside it.
                let ahead = self.unused_prefetched_bytes();
                if ahead > 0 && ahead + charge > self.read_ahead_window(&g) {
                    break Err(declined());
                }
            }
            if wants_buffer {
                match g.take_buffer(charge, budget) {
                    // Moves from the pool or arena to the tensor: the total
                    // is unchanged (or grew by a resize that fits the budget).
                    Taken::Buffer(buffer, charged) => break Ok((charged, Some(buffer))),
                    Taken::Nothing => {}
                    Taken::Grow(chunk) => {
                        // The engine's allocator is called with the mutex
                        // released; the chunk's bytes count meanwhile.
                        let arena = Arc::clone(g.arena.as_ref().expect("only an arena grows"));
                        g.growing += chunk;
                        self.unlock(g);
                        let fresh = arena.allocate_chunk(chunk as usize);
                        g = self.lock_evict();
                        g.growing -= chunk;
                        match fresh {
                            Ok(c) => {
                                arena.add_chunk(c);
                                continue;
                            }
                            Err(e) => break Err(e),
                        }
                    }
                }
            }
            let arena_buffers = wants_buffer && g.arena.is_some();
            if !arena_buffers && (budget == 0 || g.held() + charge <= budget) {
                break Ok((charge, None));
            }
            // Read-aheads in flight, seen before trying to evict (a scan, so
            // only once room must be made): one that ends during the attempt
            // (its state changes without this lock) then still counts, and
            // the demand tries again instead of failing with room about to
            // be evictable.
            let readaheads_in_flight = !readahead && self.readahead_bytes_in_flight() > 0;
            if arena_buffers {
                // Every buffer comes from the arena: room is made by
                // evicting (ranges go back and coalesce), or by giving a
                // wholly free chunk back so that a larger one fits.
                // (A read-ahead never gives chunks back: the allocator is slow.)
                if self.evict_one_for(&mut g, id, readahead.then_some(id), intent, charge, false)
                    || (!readahead && g.free_one())
                {
                    continue;
                }
            } else if g.resident_bytes + g.staging_bytes + g.page_tables + charge > budget {
                if self.evict_one_for(&mut g, id, readahead.then_some(id), intent, charge, wants_buffer) {
                    continue;
                }
            } else if g.free_one() {
                continue;
            }
            if readahead {
                break Err(declined());
            }
            // A read-ahead in flight is a guess holding a demand's room: wait
            // for it to end, bounded by its read, not by wait_ms.
            let now = Instant::now();
            if !readaheads_in_flight {
                if self.wait_ms == 0 {
                    break Err(Error::Budget(self.budget_report(&g, id, charge, budget)));
                }
                if now >= deadline {
                    break Err(Error::Timeout {
                        waited_ms: self.wait_ms as u64,
                        detail: self.budget_report(&g, id, charge, budget),
                    });
                }
            }
            if !registered {
                self.budget_waiters.fetch_add(1, Ordering::SeqCst);
                self.demands_waiting.fetch_add(1, Ordering::SeqCst);
                registered = true;
                // Re-check after registering: a release or a read-ahead that
                // ended just before did not see us waiting.
                continue;
            }
            if !g.deferred.is_empty() {
                // Free what evictions let go before sleeping, then look again.
                self.unlock(g);
                g = self.lock_evict();
                continue;
            }
            waited.get_or_insert(now);
            // Wake-ups are the normal way out; the poll interval is a safety net.
            let mut limit = BUDGET_WAIT_POLL;
            if !readaheads_in_flight {
                limit = limit.min(deadline - now);
            }
            g = self
                .budget_freed
                .wait_timeout(g, limit)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        if registered {
            self.budget_waiters.fetch_sub(1, Ordering::SeqCst);
            self.demands_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(t) = waited {
            self.wait_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        let (charged, buffer) = match result {
            Ok(r) => r,
            Err(e) => {
                self.unlock(g);
                return Err(e);
            }
        };
        g.resident_bytes += charged;
        g.peak_resident_bytes = g.peak_resident_bytes.max(g.held());
        if charged > 0 {
            g.charged.insert(id);
            g.streamed.insert(id);
        }
        if readahead {
            self.prefetched_bytes.fetch_add(charged, Ordering::Relaxed);
            self.readahead_in_flight.fetch_add(charged, Ordering::Relaxed);
        }
        self.slot_unchecked(id).charge.store(charged, Ordering::Relaxed);
        self.unlock(g);
        Ok(buffer)
    }

    /// Bytes charged to read-aheads still being read (kept where charges
    /// change, not counted by a scan).
    pub(super) fn readahead_bytes_in_flight(&self) -> u64 {
        self.readahead_in_flight.load(Ordering::SeqCst)
    }

    pub(super) fn budget_report(&self, g: &EvictState, id: u32, charge: u64, budget: u64) -> String {
        let (mut pinned, mut in_use, mut loading) = (0u64, 0u64, 0u64);
        for s in self.slots.iter() {
            let w = s.load_word();
            let c = s.charge.load(Ordering::Relaxed);
            if w & PINNED != 0 {
                pinned += c;
            } else if in_use_of(w) > 0 {
                in_use += c;
            } else if state_of(w) == LOADING {
                loading += c;
            }
        }
        format!(
            "{} needs {charge} bytes; budget {budget} bytes has {} charged: {pinned} pinned, {in_use} in use, {loading} being read",
            self.label(id),
            g.resident_bytes
        )
    }

    /// Evicts the policy's victim among idle unpinned tensors other than
    /// `exclude`; with `incoming`, only one needed later than it. For a
    /// read-ahead along the schedule: one streamed through the budget
    /// (loaded less than a pass ago), at most [`READ_AHEAD_VICTIM_MOST`]
    /// times the `charge` it makes room for, and first, with `exact_reuse`,
    /// one loaded recently whose buffer is `charge` bytes (all are read
    /// again next pass, and the exact size is reused as it is, with no
    /// page faulted in or given back); where none of those can go, an idle
    /// kept one, as far as [`Inner::may_grow_stream`] allows: room the pass
    /// gives up to keep reads in flight ahead of the engine. Taking only
    /// streamed tensors, the read-ahead held the few that demands made room
    /// for: at 75% of a 1.2 GiB model of expert-sized tensors, 3-5 against
    /// a window of 10 MiB; the engine read a third of what it streamed
    /// itself, one tensor at a time, and a pass took 1.7x its bytes at the
    /// disk's speed (1.1x since). Returns whether
    /// something was evicted. Called with the eviction mutex held.
    pub(super) fn evict_one_for(
        &self,
        g: &mut EvictState,
        exclude: u32,
        incoming: Option<u32>,
        intent: Intent,
        charge: u64,
        exact_reuse: bool,
    ) -> bool {
        let pass = self.policy.pass_length();
        let streamed_since =
            (intent == Intent::ReadAhead && pass > 0).then(|| self.policy.position().saturating_sub(pass));
        if let Some(since) = streamed_since {
            self.forget_kept(g, since);
        }

        if let (Some(_), true) = (streamed_since, exact_reuse) {
            let same_size = Evictable {
                inner: self,
                among: &g.streamed,
                exclude,
                spare_read_ahead: false,
                // Idle ones only: the buffer is taken now.
                read_ahead: false,
                streamed_since: Some(
                    self.policy
                        .position()
                        .saturating_sub(RECENTLY_STREAMED.max(pass / 8)),
                ),
                charged_within: Some((charge, charge)),
            };
            if let Some(victim) = self.policy.choose_victim(&same_size, incoming) {
                if self.evict_one(g, victim) {
                    return true;
                }
            }
        }
        // A demand first spares what the readers brought in for the passes
        // ahead (it is needed soon, or they would not have read it), and
        // takes it back only when nothing else can go.
        let mut spare_read_ahead = incoming.is_none();
        // A read-ahead takes what was streamed; where none of it can go, a
        // kept tensor (see above).
        let mut from_kept = false;
        loop {
            let streamed_only = streamed_since.filter(|_| !from_kept);
            let candidates = Evictable {
                inner: self,
                // A read-ahead looks only at what was streamed (`forget_kept`).
                among: if streamed_only.is_some() {
                    &g.streamed
                } else {
                    &g.charged
                },
                exclude,
                spare_read_ahead: spare_read_ahead || from_kept,
                // A kept tensor is taken idle only.
                read_ahead: incoming.is_some() && !from_kept,
                streamed_since: streamed_only,
                charged_within: streamed_since.map(|_| (0, READ_AHEAD_VICTIM_MOST * charge)),
            };
            let Some(victim) = self.policy.choose_victim(&candidates, incoming) else {
                if spare_read_ahead {
                    spare_read_ahead = false;
                    continue;
                }
                if streamed_since.is_some() && !from_kept && self.may_grow_stream(g, charge) {
                    from_kept = true;
                    continue;
                }
                return false;
            };
            if incoming.is_some() && in_use_of(self.slot_unchecked(victim).load_word()) > 0 {
                // The release of that tensor wakes the readers again.
                self.readahead_waits_for_release.store(true, Ordering::Relaxed);
                return false;
            }
            // A victim acquired since the choice is skipped; choose again.
            if self.evict_one(g, victim) {
                return true;
            }
        }
    }

    /// Whether a read-ahead of `charge` bytes may give up a kept tensor:
    /// only while what streams through the budget (resident or being read,
    /// loaded less than a pass ago), with it, stays inside
    /// [`Inner::stream_growth_room`]. Idle streamed tensors too large for
    /// it to take do not count (a larger read takes them); the others do,
    /// so that tensors it may not take (in use, read ahead) do not let it
    /// give up kept ones pass after pass: uncounted, at 75% of a
    /// SmolLM2-sized model with four readers, a pass read 8% more than
    /// M - B, against 5% (`cli/tests/read_bound.rs`).
    ///
    /// Not through a single staging page: its three reads in flight are as
    /// many as the window already keeps busy, and each kept tensor given
    /// up is one more request a pass (SmolLM2 in llama.cpp ran 5-7%
    /// slower, 1.5 CPU ms a token more, at the same bytes).
    pub(super) fn may_grow_stream(&self, g: &EvictState, charge: u64) -> bool {
        if g.staging_bytes == STAGING_PAGE_BYTES {
            return false;
        }
        let streaming: u64 = g
            .streamed
            .iter()
            .map(|id| {
                let s = self.slot_unchecked(id);
                let w = s.load_word();
                let c = s.charge.load(Ordering::Relaxed);
                let idle_large = state_of(w) == RESIDENT
                    && in_use_of(w) == 0
                    && w & PREFETCHED == 0
                    && c > READ_AHEAD_VICTIM_MOST * charge;
                if idle_large {
                    0
                } else {
                    c
                }
            })
            .sum();
        streaming + charge <= self.stream_growth_room(g)
    }

    /// Drops from `g.streamed` the resident tensors loaded before schedule
    /// position `since`: tensors the pass keeps, which a read-ahead may not
    /// take. Each load is dropped at most once, so a read-ahead's choice
    /// costs the tensors streamed in the last pass, not every resident one
    /// (at 75% of a model of 2,883 tensors, 2,160 were looked at for each
    /// read). One loading keeps its place: its position is set when it ends.
    fn forget_kept(&self, g: &mut EvictState, since: u64) {
        let kept: Vec<u32> = g
            .streamed
            .iter()
            .filter(|&id| {
                let s = self.slot_unchecked(id);
                state_of(s.load_word()) == RESIDENT && s.loaded_at.load(Ordering::Relaxed) < since
            })
            .collect();
        for id in kept {
            g.streamed.remove(id);
        }
    }

    /// Evicts idle tensors and frees pooled buffers until at most `target`
    /// bytes are held or nothing more can go.
    pub(super) fn evict_down(&self, g: &mut EvictState, target: u64) {
        while g.held() > target {
            if !g.free_one() && !self.evict_one_for(g, u32::MAX, None, Intent::Acquire, 0, false) {
                return;
            }
        }
    }

    /// Evicts `id` if it is still idle; returns whether it did.
    pub(super) fn evict_one(&self, g: &mut EvictState, id: u32) -> bool {
        let slot = self.slot_unchecked(id);
        let w = slot.load_word();
        if state_of(w) != RESIDENT || in_use_of(w) != 0 || w & PINNED != 0 {
            return false;
        }
        if slot
            .word
            .compare_exchange(
                w,
                (w & !PREFETCHED & !slot::STATE_MASK) | EVICTING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        let mut sync = slot.lock();
        let residence = sync.residence.take();
        slot.data.store(std::ptr::null_mut(), Ordering::Release);
        let charge = slot.charge.swap(0, Ordering::Relaxed);
        g.resident_bytes -= charge;
        g.charged.remove(id);
        g.streamed.remove(id);
        g.evictions += 1;
        if w & PREFETCHED != 0 {
            // Read ahead and never used.
            self.prefetched_bytes.fetch_sub(charge, Ordering::Relaxed);
        }
        let w = slot.load_word();
        slot.word
            .store((w & !slot::STATE_MASK) | ABSENT, Ordering::Release);
        drop(sync);
        slot.changed.notify_all();
        match residence {
            Some(Residence::Mapped) => g.deferred.push(Deferred::DontNeed(id)),
            Some(Residence::Placed(window, offset, size)) => {
                g.deferred.push(Deferred::Vacate(window, offset, size))
            }
            // An arena's range goes back to the arena (dropped here); another
            // buffer is kept for the next load of its size. Either way it
            // stays counted against the budget.
            Some(Residence::Owned(buffer)) if g.arena.is_none() => {
                g.pooled_bytes += buffer.len() as u64;
                g.pool.push(buffer);
            }
            Some(Residence::Owned(_)) => {}
            Some(Residence::Empty) | None => {}
        }
        true
    }

    pub(super) fn set_budget(&self, budget: u64) -> Result<()> {
        self.check_open()?;
        let budget = if budget == crate::memlimit::BUDGET_AUTO {
            crate::memlimit::auto_budget()?
        } else {
            budget
        };
        let mut g = self.lock_evict();
        self.set_aside(&mut g, budget);
        if budget != 0 && g.held() > budget {
            self.evict_down(&mut g, budget);
            if g.held() > budget {
                let held = g.resident_bytes;
                self.unlock(g);
                return Err(Error::Budget(format!(
                    "cannot shrink the budget to {budget} bytes: {held} bytes are pinned, in use or being read"
                )));
            }
        }
        self.budget.store(budget, Ordering::Relaxed);
        self.policy.set_budget(self.tensor_budget(&g, budget));
        self.source.set_drop_behind(budget != 0);
        self.budget_freed.notify_all();
        self.unlock(g);
        // A new budget is a new read-ahead window: the readers look again
        // now, not when the engine next moves.
        self.retry_readers();
        Ok(())
    }

    /// Sets aside what `budget` keeps beside the tensors: the page tables'
    /// share ([`page_table_reserve`]) and the staging memory.
    pub(super) fn set_aside(&self, g: &mut EvictState, budget: u64) {
        g.page_tables = page_table_reserve(budget, g.largest_tensor, g.page_tables_most);
        self.stage_reads_if_room(g, budget);
    }

    /// Stages the source's `O_DIRECT` reads (charging the staging memory to
    /// the budget) through as many huge pages as the budget has room for
    /// (see [`STAGING_ROOM`]), and stops where it has room for none. A pager with no budget does not
    /// stage: a model that fits is read once.
    fn stage_reads_if_room(&self, g: &mut EvictState, budget: u64) {
        // Past the first, a page is room the kept part loses, read again
        // every pass: at most 1/`STAGING_STREAMED_SHARE` of what a pass
        // streams (M - B).
        let streamed = self.index.total_bytes().saturating_sub(budget);
        let pages = (budget / (STAGING_SHARE * STAGING_PAGE_BYTES))
            .min((streamed / (STAGING_STREAMED_SHARE * STAGING_PAGE_BYTES)).max(1))
            .min(MOST_STAGING_PAGES as u64);
        let room = budget != 0 && pages > 0 && budget >= g.largest_tensor + STAGING_PAGE_BYTES + STAGING_ROOM;
        // As many pages as the budget holds beside the largest tensor.
        let pages = if room {
            let beside = budget - g.largest_tensor - STAGING_ROOM;
            pages.min(beside / STAGING_PAGE_BYTES) as usize
        } else {
            0
        };
        let wanted = pages as u64 * STAGING_PAGE_BYTES;
        let had = g.staging_bytes;
        if wanted == had {
            return;
        }
        if wanted > had {
            // Room first for the pages added.
            self.evict_down(g, budget.saturating_sub(wanted - had));
            if g.held() + (wanted - had) > budget {
                return;
            }
        }
        g.staging_bytes = self.source.stage_direct_reads(pages) as u64 * STAGING_PAGE_BYTES;
        if g.staging_bytes > had {
            g.peak_resident_bytes = g.peak_resident_bytes.max(g.held());
        }
    }

    /// The part of `budget` that tensors may hold (less the staging memory
    /// and the page tables' reserve).
    pub(super) fn tensor_budget(&self, g: &EvictState, budget: u64) -> u64 {
        if budget == 0 {
            0
        } else {
            budget.saturating_sub(g.staging_bytes + g.page_tables).max(1)
        }
    }
}
