//! The pager's side of read-ahead: what the background readers read next,
//! how far ahead, and when not at all. `prefetch` sees only the
//! [`ReadAheadTarget`] interface implemented here.

use std::sync::atomic::Ordering;

use super::budget::EvictState;
use super::loads::Intent;
use super::requests::Flights;
use super::slot::{state_of, ABSENT};
use super::Inner;
use crate::prefetch::{ReadAheadTarget, READ_AHEAD_MAX};
use crate::source::ReadQueue;

/// How far the read-ahead runs ahead of the engine when there is no budget
/// (at least two of the largest tensor).
const UNLIMITED_READ_AHEAD_WINDOW: u64 = 64 << 20;

/// The read-ahead window under a budget is 1/32 of what a pass streams
/// (M - B): about 3% more reads than the pager alone, measured on
/// llama.cpp (1/40 cut SmolLM2's tokens/s in its memory cgroup from 43 to
/// 38, medians of four alternating runs).
const READ_AHEAD_SHARE: u64 = 32;

/// What streams through the budget may grow to 1/40 of M - B by the
/// read-ahead giving up kept tensors (see `Inner::may_grow_stream`): each
/// byte is read again every pass, and a pass stays within 3% of M - B with
/// the tensors in use beside it (`cli/tests/read_bound.rs`; growing to the
/// whole window read 3.1% more and passed that rule by less than the width
/// of a tensor).
const STREAM_GROWTH_SHARE: u64 = 40;

impl Inner {
    pub(super) fn poke_readers(&self) {
        if let Some(r) = &self.readers {
            r.poke();
        }
    }

    /// Makes the readers look ahead again though the engine has not moved
    /// (a lock and a wake-up: not for the hit path).
    pub(super) fn retry_readers(&self) {
        if let Some(r) = &self.readers {
            r.retry();
        }
    }

    /// Bytes of tensors read (or being read) ahead and not used yet (kept
    /// where charges and the read-ahead flag change, not counted by a scan).
    pub(super) fn unused_prefetched_bytes(&self) -> u64 {
        self.prefetched_bytes.load(Ordering::Relaxed)
    }

    /// What does not fit: the model less what the budget leaves tensors
    /// (less the staging memory and the page tables' share), the bytes a
    /// pass streams at least; `None` with no budget or where the model fits.
    fn does_not_fit(&self, g: &EvictState) -> Option<u64> {
        let budget = self.budget.load(Ordering::Relaxed);
        let model = self.index.total_bytes();
        let for_tensors = self.tensor_budget(g, budget);
        (budget != 0 && for_tensors < model).then(|| model - for_tensors)
    }

    /// How many bytes the read-ahead may hold unused. Every byte it holds
    /// is a byte the kept part of the model cannot, and is read again each
    /// pass; so when the model does not fit, the window is a small share of
    /// what does not fit ([`READ_AHEAD_SHARE`]; at least one tensor, so
    /// that reads overlap compute), and unlimited when it does.
    /// Computed from the eviction state `g` (held bytes, largest tensor).
    pub(super) fn read_ahead_window(&self, g: &EvictState) -> u64 {
        let budget = self.budget.load(Ordering::Relaxed);
        if budget == 0 {
            // No budget is no licence to read the whole model: enough ahead
            // to overlap the next tensors' reads with compute.
            return UNLIMITED_READ_AHEAD_WINDOW.max(2 * g.largest_tensor);
        }
        let Some(streamed) = self.does_not_fit(g) else {
            return u64::MAX;
        };
        // Room that is free now costs the kept part nothing.
        let free = budget.saturating_sub(g.held());
        (streamed / READ_AHEAD_SHARE).max(free)
    }

    /// How far what streams through the budget may grow by the read-ahead
    /// giving up kept tensors ([`STREAM_GROWTH_SHARE`] of what does not
    /// fit); nothing where the model fits or there is no budget (nothing is
    /// evicted there).
    pub(super) fn stream_growth_room(&self, g: &EvictState) -> u64 {
        self.does_not_fit(g)
            .map_or(0, |streamed| streamed / STREAM_GROWTH_SHARE)
    }
}

impl ReadAheadTarget for Inner {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Where the schedule is; changes whenever the engine moves along it.
    fn schedule_position(&self) -> u64 {
        self.policy.position()
    }

    fn read(&self, next_request: &mut dyn FnMut() -> Option<u32>, queue: &mut ReadQueue) {
        // One reader at a time reads ahead along the schedule; the others
        // serve explicit requests.
        let schedule_reader = self.schedule_reader.try_lock().ok();
        let Some(mut flights) = self.source.batch_target().map(|t| Flights::new(t, queue)) else {
            // A source read one request at a time.
            while let Some(id) = next_request() {
                self.read_now(id);
            }
            if schedule_reader.is_some() {
                self.read_ahead(READ_AHEAD_MAX);
            }
            return;
        };
        loop {
            if flights.has_room(queue) && self.check_open().is_ok() {
                self.plan_requests(next_request, &mut flights, queue);
                // The engine's own requests first, as one at a time would.
                if schedule_reader.is_some() && flights.has_room(queue) && !flights.has_explicit() {
                    self.plan_read_ahead(&mut flights, queue);
                }
                self.submit_building(&mut flights, queue);
            }
            match queue.wait() {
                // Room changed hands and the engine may have moved: plan
                // again.
                Some(done) => self.end_request(&mut flights, done),
                None => {
                    debug_assert!(flights.is_empty());
                    return;
                }
            }
        }
    }
}

impl Inner {
    /// Claims the explicit requests `next_request` yields, in order, into
    /// requests while the queue has room.
    fn plan_requests(
        &self,
        next_request: &mut dyn FnMut() -> Option<u32>,
        flights: &mut Flights,
        queue: &mut ReadQueue,
    ) {
        while flights.has_room(queue) {
            // One at a time: a hint claimed early makes room before the
            // engine has released the experts it just used, the better
            // victims (claiming a router's whole list at once read 3% more
            // at a quarter of an MoE model, `c-tests/moe_outside.c`).
            if flights.has_explicit() {
                return;
            }
            let Some(id) = next_request() else {
                return;
            };
            if self.slots.get(id as usize).is_none() || !self.policy.still_wanted(id) {
                continue;
            }
            // A hint that does not fit is dropped, as a hint read one at a
            // time would be.
            self.claim_into(id, Intent::Prefetch, flights, queue);
        }
    }

    /// Claims what the schedule expects next into requests, nearest first,
    /// until the queue is full, the read-ahead window is, or the engine
    /// moves on.
    fn plan_read_ahead(&self, flights: &mut Flights, queue: &mut ReadQueue) {
        if !self.pass_started.load(Ordering::Relaxed) {
            return;
        }
        let start = self.policy.position();
        let mut upcoming = Vec::new();
        self.policy.upcoming(READ_AHEAD_MAX, &mut upcoming);
        for id in upcoming {
            if !flights.has_room(queue) || self.policy.position() != start {
                // A moved engine: the list may name tensors it has passed;
                // the next completion plans again from the new position.
                return;
            }
            let Some(slot) = self.slots.get(id as usize) else {
                continue;
            };
            if state_of(slot.load_word()) != ABSENT {
                continue;
            }
            if !self.claim_into(id, Intent::ReadAhead, flights, queue) {
                return;
            }
        }
    }

    /// Claims `id`'s load for `intent` and adds it to the request being
    /// built (submitting that one first when `id` does not join it).
    /// Returns false when it was not read: taken by another thread, or no
    /// room (a declined guess).
    fn claim_into(&self, id: u32, intent: Intent, flights: &mut Flights, queue: &mut ReadQueue) -> bool {
        let slot = self.slot_unchecked(id);
        let w = slot.load_word();
        if state_of(w) != ABSENT {
            // Another thread reads it: nothing to do, and no reason to stop.
            return true;
        }
        // A load that would neither join the request being built nor find
        // room in the queue is not claimed: claiming makes room for it in
        // the budget (evictions), which giving it back unread would waste.
        let info = self.info_unchecked(id);
        let (landing_start, landing_len) = self.landing_range(info);
        if info.size > 0 && !flights.would_take(landing_start, landing_len, queue) {
            return false;
        }
        if !self.claim(id, w, intent) {
            return true;
        }
        let prepared = if info.size == 0 {
            Err(None)
        } else {
            self.prepare_read(id, info, intent).map_err(Some)
        };
        match prepared {
            Ok(landing) => {
                if !flights.joins(landing.file_start, landing.len) {
                    self.submit_building(flights, queue);
                }
                if !flights.has_room(queue) {
                    // The request this one would start cannot be submitted:
                    // give it back, unread.
                    let outcome = self.finish_read(id, info, landing, Err(crate::error::Error::Closed));
                    let _ = self.publish(id, intent, outcome);
                    return false;
                }
                flights.add(id, intent, landing);
                true
            }
            Err(None) => {
                // Nothing to read: the one-at-a-time path publishes it.
                let outcome = self.reserve_and_read(id, info, intent);
                self.publish(id, intent, outcome).is_ok()
            }
            Err(Some(e)) => {
                let _ = self.publish(id, intent, Err(e));
                false
            }
        }
    }
}

impl Inner {
    /// Background read of `id` (prefetch worker). Errors are dropped: a
    /// prefetch is a hint, the later acquire reports any failure itself.
    fn read_now(&self, id: u32) {
        if self.slots.get(id as usize).is_some() && self.check_open().is_ok() && self.policy.still_wanted(id)
        {
            let _ = self.load(id, Intent::Prefetch);
        }
    }

    /// One load at a time (a source that reads no other way): loads the
    /// tensors the schedule expects next, nearest first, until one does not
    /// fit without evicting something needed sooner, the read-ahead window
    /// is full, `max` are looked at, or the engine moves on.
    fn read_ahead(&self, max: usize) {
        if !self.pass_started.load(Ordering::Relaxed) {
            // Nobody has asked for anything yet: the engine may still be
            // about to set a budget, or never run a pass.
            return;
        }
        let start = self.policy.position();
        let mut upcoming = Vec::new();
        self.policy.upcoming(max, &mut upcoming);
        let window = self.read_ahead_window(&self.lock_evict());
        for id in upcoming {
            if self.check_open().is_err() {
                return;
            }
            let Some(slot) = self.slots.get(id as usize) else {
                continue;
            };
            if state_of(slot.load_word()) != ABSENT {
                continue;
            }
            // Looked at afresh for each tensor: the other readers fill the
            // same window.
            let held = self.unused_prefetched_bytes();
            let size = slot.size();
            if held > 0 && held + size > window {
                return;
            }
            // The engine moved on: this list may name tensors it has already
            // passed. The worker plans again from the new position.
            if self.policy.position() != start {
                return;
            }
            if self.load(id, Intent::ReadAhead).is_err() {
                return;
            }
        }
    }
}
