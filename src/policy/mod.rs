//! Eviction policies: which idle resident tensor to drop when a load needs
//! room.
//!
//! A policy sees every acquisition through [`EvictionPolicy::on_access`],
//! which runs on the hit path and must be lock-free and O(1); everything
//! else runs on the miss path under the pager's eviction mutex, where a
//! scan over the candidates is cheap next to the read it makes room for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

use crate::segvec::SegVec;

/// Which policy a pager uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// Schedule-aware when the pass order is known, LRU otherwise.
    #[default]
    Auto,
    /// Least recently used.
    Lru,
    /// Furthest next use in the declared schedule (Belady's rule on the cycle);
    /// LRU until a schedule is declared.
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
    /// Called on every acquisition of `id`, hit or miss. Lock-free, O(1).
    fn on_access(&self, id: u32);
    /// Picks the victim among `candidates` (idle, unpinned, resident), or
    /// `None` to evict nothing. Called under the eviction mutex.
    fn choose_victim(&self, candidates: &mut dyn Iterator<Item = u32>) -> Option<u32>;
    /// The order in which a pass touches tensors; it repeats every pass.
    fn set_schedule(&self, _ids: &[u32]) {}
    /// Tensors (slices) were added: ids up to `n - 1` now exist. Called
    /// before they are published, with appends serialised.
    fn grow(&self, n: usize);
}

/// Builds the policy for `kind` over `n` tensors.
pub fn build(kind: PolicyKind, n: usize) -> Box<dyn EvictionPolicy> {
    match kind {
        PolicyKind::Lru => Box::new(Lru::new(n)),
        PolicyKind::Auto | PolicyKind::Schedule => Box::new(ScheduleAware::new(n)),
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

    fn choose_victim(&self, candidates: &mut dyn Iterator<Item = u32>) -> Option<u32> {
        candidates.min_by_key(|&id| {
            self.stamps
                .get(id as usize)
                .map_or(0, |s| s.load(Ordering::Relaxed))
        })
    }
}

/// A declared schedule: for each tensor, its positions in the pass.
#[derive(Debug, Default)]
struct Schedule {
    len: usize,
    positions: Vec<Vec<u32>>,
}

/// Belady's rule on a repeating schedule: evict the candidate whose next use
/// is furthest from the current position. Tensors outside the schedule go
/// first. Until a schedule is declared it behaves as [`Lru`].
pub struct ScheduleAware {
    lru: Lru,
    schedule: RwLock<Schedule>,
    /// Position in the schedule of the latest acquisition.
    cursor: AtomicUsize,
}

impl ScheduleAware {
    /// A schedule-aware policy over `n` tensors.
    pub fn new(n: usize) -> Self {
        ScheduleAware {
            lru: Lru::new(n),
            schedule: RwLock::new(Schedule::default()),
            cursor: AtomicUsize::new(0),
        }
    }
}

/// The first entry of sorted `positions` at or after `from`, cyclically.
fn next_position(positions: &[u32], from: usize, len: usize) -> Option<usize> {
    let first = *positions.first()? as usize;
    let i = positions.partition_point(|&p| (p as usize) < from);
    Some(match positions.get(i) {
        Some(&p) => p as usize,
        None => first + len,
    })
}

impl EvictionPolicy for ScheduleAware {
    fn on_access(&self, id: u32) {
        self.lru.on_access(id);
        // try_read: never block the hit path behind a set_schedule.
        let Ok(s) = self.schedule.try_read() else { return };
        if s.len == 0 {
            return;
        }
        let Some(positions) = s.positions.get(id as usize) else {
            return;
        };
        let cur = self.cursor.load(Ordering::Relaxed);
        if let Some(p) = next_position(positions, cur, s.len) {
            self.cursor.store(p % s.len, Ordering::Relaxed);
        }
    }

    fn choose_victim(&self, candidates: &mut dyn Iterator<Item = u32>) -> Option<u32> {
        let s = self.schedule.read().unwrap_or_else(|e| e.into_inner());
        if s.len == 0 {
            return self.lru.choose_victim(candidates);
        }
        // Next use strictly after the current position: the tensor just
        // acquired is needed again only a full pass later.
        let from = self.cursor.load(Ordering::Relaxed) + 1;
        candidates.max_by_key(|&id| {
            s.positions
                .get(id as usize)
                .and_then(|p| next_position(p, from, s.len))
                .unwrap_or(usize::MAX)
        })
    }

    fn grow(&self, n: usize) {
        self.lru.grow(n);
    }

    fn set_schedule(&self, ids: &[u32]) {
        let mut s = self.schedule.write().unwrap_or_else(|e| e.into_inner());
        let n = self.lru.stamps.len();
        let mut positions = vec![Vec::new(); n];
        for (pos, &id) in ids.iter().enumerate() {
            if let Some(p) = positions.get_mut(id as usize) {
                p.push(pos as u32);
            }
        }
        *s = Schedule {
            len: ids.len(),
            positions,
        };
        self.cursor.store(ids.len().saturating_sub(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recent() {
        let p = Lru::new(4);
        for id in [0, 1, 2, 0, 1] {
            p.on_access(id);
        }
        assert_eq!(p.choose_victim(&mut [0u32, 1, 2].into_iter()), Some(2));
    }

    #[test]
    fn schedule_evicts_furthest_next_use() {
        let p = ScheduleAware::new(4);
        p.set_schedule(&[0, 1, 2, 3]);
        p.on_access(0);
        p.on_access(1);
        // At position 1: next uses are 2 (pos 2), 3 (pos 3), 0 (pos 4).
        assert_eq!(p.choose_victim(&mut [0u32, 2, 3].into_iter()), Some(0));
        assert_eq!(p.choose_victim(&mut [2u32, 3].into_iter()), Some(3));
    }

    #[test]
    fn next_position_wraps() {
        assert_eq!(next_position(&[1, 5], 6, 8), Some(9));
        assert_eq!(next_position(&[1, 5], 2, 8), Some(5));
        assert_eq!(next_position(&[], 2, 8), None);
    }
}
