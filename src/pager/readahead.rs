//! The pager's side of read-ahead: what the background readers read next,
//! how far ahead, and when not at all. `prefetch` sees only the
//! [`ReadAheadTarget`] interface implemented here.

use std::sync::atomic::Ordering;

use super::budget::EvictState;
use super::loads::Intent;
use super::slot::{state_of, ABSENT};
use super::Inner;
use crate::prefetch::ReadAheadTarget;

/// How far the read-ahead runs ahead of the engine when there is no budget
/// (at least two of the largest tensor).
const UNLIMITED_READ_AHEAD_WINDOW: u64 = 64 << 20;

impl Inner {
    pub(super) fn poke_readers(&self) {
        if let Some(r) = &self.readers {
            r.poke();
        }
    }

    /// Bytes of tensors read (or being read) ahead and not used yet (kept
    /// where charges and the read-ahead flag change, not counted by a scan).
    pub(super) fn unused_prefetched_bytes(&self) -> u64 {
        self.prefetched_bytes.load(Ordering::Relaxed)
    }

    /// How many bytes the read-ahead may hold unused. Every byte it holds
    /// is a byte the kept part of the model cannot, and is read again each
    /// pass; so when the model does not fit, the window is a small share of
    /// what does not fit (1/32: about 3% more reads than the pager alone,
    /// measured on llama.cpp; at least one tensor, so that reads overlap
    /// compute), and unlimited when it does.
    /// Computed from the eviction state `g` (held bytes, largest tensor).
    pub(super) fn read_ahead_window(&self, g: &EvictState) -> u64 {
        let budget = self.budget.load(Ordering::Relaxed);
        let model = self.index.total_bytes();
        if budget == 0 {
            // No budget is no licence to read the whole model: enough ahead
            // to overlap the next tensors' reads with compute.
            return UNLIMITED_READ_AHEAD_WINDOW.max(2 * g.largest_tensor);
        }
        if budget >= model {
            return u64::MAX;
        }
        // Room that is free now costs the kept part nothing.
        let free = budget.saturating_sub(g.held());
        ((model - budget) / 32).max(free)
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

    /// Background read of `id` (prefetch worker). Errors are dropped: a
    /// prefetch is a hint, the later acquire reports any failure itself.
    fn read_now(&self, id: u32) {
        if self.slots.get(id as usize).is_some() && self.check_open().is_ok() && self.policy.still_wanted(id)
        {
            let _ = self.load(id, Intent::Prefetch);
        }
    }

    /// Loads the tensors the schedule expects next, nearest first, until one
    /// does not fit without evicting something needed sooner, the read-ahead
    /// window is full, `max` are looked at, or the engine moves on.
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
