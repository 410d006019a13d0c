//! Eviction policies: which idle resident tensor to drop when a load needs
//! room, and what the read-ahead should fetch next.
//!
//! A policy sees every hit through [`EvictionPolicy::on_hit`], which runs on
//! the hit path and must be lock-free and O(1) (the schedule-aware policy
//! does nothing there for a dense tensor once it knows the schedule, and
//! queues an expert's use for later), and every miss through
//! [`EvictionPolicy::on_access`]; the victim is chosen on the miss path
//! under the pager's eviction mutex, among the tensors that hold budget
//! ([`Candidates`]): all of them while they are few, a sample once they are
//! many, so that a miss costs the same at any number of expert slices.

mod candidates;
mod duel;
mod experts;
mod order;
mod schedule;
mod uses;

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) use candidates::VictimChooser;
pub use candidates::{Candidates, EveryResident, ResidentSet};
pub use experts::Ranking;
pub use schedule::ScheduleAware;

use crate::segvec::SegVec;

/// Which policy a pager uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// Schedule-aware: the declared schedule, or one learned from the first
    /// pass; frequency admission (ties evict the newcomer) while none is
    /// known. The default.
    #[default]
    Auto,
    /// Least recently used, exact.
    Lru,
    /// Furthest next use in the declared schedule (Belady's rule on the
    /// cycle); frequency admission until a schedule is declared (no learning).
    Schedule,
}

impl PolicyKind {
    /// The policy for a C `PAGER_POLICY_*` value.
    pub fn from_c(value: u32) -> Option<Self> {
        match value {
            0 => Some(PolicyKind::Auto),
            1 => Some(PolicyKind::Lru),
            2 => Some(PolicyKind::Schedule),
            _ => None,
        }
    }
}

/// The interface every eviction policy implements.
pub trait EvictionPolicy: Send + Sync {
    /// Called on every acquisition of `id` that is not a plain hit: misses,
    /// and the first use of a tensor that was read ahead.
    fn on_access(&self, id: u32);
    /// Called on every plain hit of `id`. Lock-free, O(1), no shared write
    /// when it can be avoided: this is the hot path.
    fn on_hit(&self, id: u32) {
        self.on_access(id);
    }
    /// Picks the victim among the evictable `candidates`, or `None` to
    /// evict nothing. With `incoming` (a read-ahead load), only a victim
    /// needed later than `incoming` may be chosen. Called under the
    /// eviction mutex.
    fn choose_victim(&self, candidates: &dyn Candidates, incoming: Option<u32>) -> Option<u32>;
    /// Declares the order in which a pass touches tensors; it repeats every
    /// pass. An empty order forgets the declared one.
    fn set_schedule(&self, _ids: &[u32]) {}
    /// A likely order (from the model's layout) to use until the real one is
    /// declared or learned.
    fn guess_schedule(&self, _ids: &[u32]) {}
    /// Tensors (slices) were added: ids up to `n - 1` now exist. Called
    /// before they are published, with appends serialised.
    fn grow(&self, n: usize);
    /// Tensor `id` is a slice (an expert) of `parent`: it stands at its
    /// parent's place in the schedule. Called after `grow`, before the slice
    /// is published.
    fn set_parent(&self, _id: u32, _parent: u32) {}
    /// Appends to `out` up to `max` ids the schedule expects next, nearest
    /// first; nothing when no schedule is known.
    fn upcoming(&self, _max: usize, _out: &mut Vec<u32>) {}
    /// A position counter that changes whenever the schedule position moves
    /// (read-ahead wakes on it); 0 when there is no schedule.
    fn position(&self) -> u64 {
        0
    }
    /// Acquisitions in a pass of the schedule ([`EvictionPolicy::position`]
    /// advances by about this much per pass); 0 when there is none.
    fn pass_length(&self) -> u64 {
        0
    }
    /// The router named `ids` (expert slices) for the block about to run:
    /// they are needed within that block.
    fn on_hint(&self, _ids: &[u32]) {}
    /// Whether a queued prefetch of `id` is still worth reading: false for
    /// an expert the router hinted that has been used, or whose block has
    /// passed, since (a reader that lags would read it again for nothing).
    fn still_wanted(&self, _id: u32) -> bool {
        true
    }
    /// Tensors `first..first + sizes.len()` have these sizes in bytes (the
    /// shadow simulations weigh hits by bytes).
    fn set_sizes(&self, _first: u32, _sizes: &[u64]) {}
    /// The budget in bytes (0: none) changed.
    fn set_budget(&self, _budget: u64) {}
    /// Human-readable name and state ("auto (learned schedule of 290)").
    fn describe(&self) -> String;
}

/// Builds the policy for `kind` over `n` tensors.
pub fn build(kind: PolicyKind, n: usize) -> Box<dyn EvictionPolicy> {
    match kind {
        PolicyKind::Lru => Box::new(Lru::new(n)),
        PolicyKind::Auto => Box::new(ScheduleAware::new(n, true)),
        PolicyKind::Schedule => Box::new(ScheduleAware::new(n, false)),
    }
}

/// Least recently used: a per-tensor stamp from one global clock; the
/// victim is the candidate with the oldest stamp.
pub struct Lru {
    clock: AtomicU64,
    stamps: SegVec<AtomicU64>,
}

impl Lru {
    /// An LRU over `n` tensors.
    pub fn new(n: usize) -> Self {
        let lru = Lru {
            clock: AtomicU64::new(1),
            stamps: SegVec::new(|| AtomicU64::new(0)),
        };
        lru.grow(n);
        lru
    }
}

impl EvictionPolicy for Lru {
    fn on_access(&self, id: u32) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = self.stamps.get(id as usize) {
            s.store(now, Ordering::Relaxed);
        }
    }

    fn grow(&self, n: usize) {
        let _ = self.stamps.grow_to(n, |_, _| {});
    }

    fn choose_victim(&self, candidates: &dyn Candidates, incoming: Option<u32>) -> Option<u32> {
        if incoming.is_some() {
            // LRU knows nothing of the future: a read-ahead evicts nothing.
            return None;
        }
        // Exact: a reference policy examines every candidate.
        every_evictable(candidates).min_by_key(|&id| {
            self.stamps
                .get(id as usize)
                .map_or(0, |s| s.load(Ordering::Relaxed))
        })
    }

    fn describe(&self) -> String {
        "lru".to_owned()
    }
}

/// Frequency admission for streams with no known order: the victim is the
/// candidate used least often; among equals, the one used most recently
/// (the newcomer is rejected, W-TinyLFU style). On a cyclic sweep larger
/// than the budget this keeps a fixed part of the cycle resident instead of
/// re-reading everything as LRU does.
pub struct FrequencyAdmission {
    clock: AtomicU64,
    stamps: SegVec<AtomicU64>,
    counts: SegVec<AtomicU64>,
}

impl FrequencyAdmission {
    /// A policy over `n` tensors.
    pub fn new(n: usize) -> Self {
        let f = FrequencyAdmission {
            clock: AtomicU64::new(1),
            stamps: SegVec::new(|| AtomicU64::new(0)),
            counts: SegVec::new(|| AtomicU64::new(0)),
        };
        f.grow(n);
        f
    }
}

impl FrequencyAdmission {
    /// How `id` ranks for eviction, the largest first: the fewest uses,
    /// then the most recent use.
    pub fn key(&self, id: u32) -> u64 {
        let load =
            |v: &SegVec<AtomicU64>, id: u32| v.get(id as usize).map_or(0, |s| s.load(Ordering::Relaxed));
        let fewest = u32::MAX as u64 - load(&self.counts, id).min(u32::MAX as u64);
        let newest = load(&self.stamps, id).min(u32::MAX as u64);
        fewest << 32 | newest
    }
}

/// Every evictable candidate, for the policies that examine them all.
pub fn every_evictable(candidates: &dyn Candidates) -> impl Iterator<Item = u32> + '_ {
    candidates
        .resident()
        .iter()
        .filter(move |&id| candidates.is_evictable(id))
}

impl EvictionPolicy for FrequencyAdmission {
    fn on_access(&self, id: u32) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let (Some(s), Some(c)) = (self.stamps.get(id as usize), self.counts.get(id as usize)) {
            s.store(now, Ordering::Relaxed);
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn grow(&self, n: usize) {
        let _ = self.stamps.grow_to(n, |_, _| {});
        let _ = self.counts.grow_to(n, |_, _| {});
    }

    fn choose_victim(&self, candidates: &dyn Candidates, incoming: Option<u32>) -> Option<u32> {
        if incoming.is_some() {
            return None;
        }
        every_evictable(candidates).max_by_key(|&id| self.key(id))
    }

    fn describe(&self) -> String {
        "frequency admission".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The candidates `ids`, every one evictable.
    pub(crate) fn set_of(ids: &[u32]) -> ResidentSet {
        let mut s = ResidentSet::default();
        ids.iter().for_each(|&id| s.insert(id));
        s
    }

    #[test]
    fn lru_evicts_least_recent() {
        let p = Lru::new(4);
        for id in [0, 1, 2, 0, 1] {
            p.on_access(id);
        }
        let c = set_of(&[0, 1, 2]);
        assert_eq!(p.choose_victim(&EveryResident(&c), None), Some(2));
        assert_eq!(p.choose_victim(&EveryResident(&c), Some(3)), None);
    }

    #[test]
    fn frequency_admission_rejects_the_newcomer_on_ties() {
        let p = FrequencyAdmission::new(4);
        for id in [0, 1, 2, 0] {
            p.on_access(id);
        }
        // 1 and 2 were used once; 2 is the newer: it goes first.
        assert_eq!(
            p.choose_victim(&EveryResident(&set_of(&[0, 1, 2])), None),
            Some(2)
        );
        assert_eq!(p.choose_victim(&EveryResident(&set_of(&[0, 1])), None), Some(1));
    }
}
