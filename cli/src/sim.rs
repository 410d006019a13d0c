//! Simulation: the eviction policies run over a trace of tensor accesses
//! with real sizes and a byte budget, without reading any data. `layerpager
//! plan` and the MoE benchmarks use it to answer "how much RAM buys how much
//! disk traffic" for a model, and to compare with reference policies
//! (LRU, S3-FIFO, frequency admission, Belady's optimum) on the same trace.
//!
//! The simulated resident set is the pager's without its concurrency: every
//! access is a hit or a read of the whole tensor; a read evicts the policy's
//! victims until the tensor fits.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use layerpager::policy::{every_evictable, Candidates, EveryResident, EvictionPolicy, ResidentSet};

/// Marks a trace entry as a hint (the router named this expert for the
/// block about to run), not an access.
pub const HINT: u32 = 1 << 31;

/// What a simulated run cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SimResult {
    /// Accesses served from memory.
    pub hits: u64,
    /// Accesses that read the tensor.
    pub misses: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes acquired in all.
    pub bytes_accessed: u64,
}

impl SimResult {
    /// Share of the acquired bytes served from memory.
    pub fn byte_hit_ratio(&self) -> f64 {
        if self.bytes_accessed == 0 {
            0.0
        } else {
            1.0 - self.bytes_read as f64 / self.bytes_accessed as f64
        }
    }
}

/// Runs `trace` (tensor ids, and hints marked with [`HINT`]) through `policy` with tensor `sizes` and a
/// `budget` in bytes (0 = unlimited). A tensor larger than the budget is
/// read and dropped at once.
pub fn simulate(sizes: &[u64], trace: &[u32], budget: u64, policy: &dyn EvictionPolicy) -> SimResult {
    simulate_from(sizes, trace, budget, policy, 0)
}

/// [`simulate`], counting only the accesses from trace position
/// `measure_from` on (the ones before warm the resident set up).
pub fn simulate_from(
    sizes: &[u64],
    trace: &[u32],
    budget: u64,
    policy: &dyn EvictionPolicy,
    measure_from: usize,
) -> SimResult {
    simulate_slices(sizes, u32::MAX, trace, budget, policy, measure_from)
}

/// [`simulate_from`] for a model whose ids from `first_slice` on are
/// slices (experts), offered to the policy as a pager offers them.
pub fn simulate_slices(
    sizes: &[u64],
    first_slice: u32,
    trace: &[u32],
    budget: u64,
    policy: &dyn EvictionPolicy,
    measure_from: usize,
) -> SimResult {
    let mut resident = ResidentSet::new(first_slice);
    let mut held = 0u64;
    let mut r = SimResult::default();
    policy.set_sizes(0, sizes);
    policy.set_budget(budget);
    for (pos, &entry) in trace.iter().enumerate() {
        if entry & HINT != 0 {
            policy.on_hint(&[entry & !HINT]);
            continue;
        }
        let id = entry;
        let size = sizes[id as usize];
        let counted = pos >= measure_from;
        if counted {
            r.bytes_accessed += size;
        }
        if resident.contains(id) {
            if counted {
                r.hits += 1;
            }
            policy.on_hit(id);
            continue;
        }
        if counted {
            r.misses += 1;
            r.bytes_read += size;
        }
        policy.on_access(id);
        if budget != 0 && size > budget {
            continue;
        }
        while budget != 0 && held + size > budget {
            let Some(victim) = policy.choose_victim(&EveryResident(&resident), None) else {
                break;
            };
            resident.remove(victim);
            held -= sizes[victim as usize];
        }
        if budget == 0 || held + size <= budget {
            resident.insert(id);
            held += size;
        }
    }
    r
}

/// Belady's rule with the whole future known: evict the resident tensor
/// whose next access is furthest away (never, first). The optimum for
/// equal sizes, and the yardstick for unequal ones.
pub struct Belady {
    /// For each trace position, the next position of the same id.
    next: Vec<usize>,
    /// Per id, the next access at or after the current position.
    upcoming: Mutex<(usize, HashMap<u32, usize>)>,
    trace: Vec<u32>,
}

impl Belady {
    /// Belady over a known `trace`.
    pub fn new(trace: &[u32]) -> Self {
        let trace: Vec<u32> = trace.iter().copied().filter(|&e| e & HINT == 0).collect();
        let mut next = vec![usize::MAX; trace.len()];
        let mut last: HashMap<u32, usize> = HashMap::new();
        for (i, &id) in trace.iter().enumerate().rev() {
            next[i] = last.get(&id).copied().unwrap_or(usize::MAX);
            last.insert(id, i);
        }
        Belady {
            next,
            upcoming: Mutex::new((0, last)),
            trace,
        }
    }

    fn advance(&self, id: u32) {
        let mut g = self.upcoming.lock().unwrap_or_else(|e| e.into_inner());
        let pos = g.0;
        debug_assert_eq!(self.trace.get(pos), Some(&id));
        g.1.insert(id, self.next[pos]);
        g.0 += 1;
    }
}

impl EvictionPolicy for Belady {
    fn on_access(&self, id: u32) {
        self.advance(id);
    }

    fn choose_victim(&self, candidates: &dyn Candidates, _incoming: Option<u32>) -> Option<u32> {
        let g = self.upcoming.lock().unwrap_or_else(|e| e.into_inner());
        every_evictable(candidates).max_by_key(|id| g.1.get(id).copied().unwrap_or(usize::MAX))
    }

    fn grow(&self, _n: usize) {}

    fn describe(&self) -> String {
        "Belady (future known)".to_owned()
    }
}

/// S3-FIFO (Yang et al., SOSP'23): a small FIFO for new entries (10% of the
/// entries here), a main FIFO, and a ghost list; an entry hit while in the
/// small queue moves to main, others leave; main entries get a second chance
/// per access (up to 3). Sized in entries, as its authors describe it.
pub struct S3Fifo {
    state: Mutex<S3State>,
}

struct S3State {
    small: VecDeque<u32>,
    main: VecDeque<u32>,
    ghost: VecDeque<u32>,
    freq: HashMap<u32, u8>,
    where_: HashMap<u32, bool>,
    small_target: usize,
}

impl S3Fifo {
    /// An S3-FIFO whose small queue holds about `small_target` entries.
    pub fn new(small_target: usize) -> Self {
        S3Fifo {
            state: Mutex::new(S3State {
                small: VecDeque::new(),
                main: VecDeque::new(),
                ghost: VecDeque::new(),
                freq: HashMap::new(),
                where_: HashMap::new(),
                small_target: small_target.max(1),
            }),
        }
    }
}

impl EvictionPolicy for S3Fifo {
    fn on_access(&self, id: u32) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.where_.contains_key(&id) {
            let f = s.freq.entry(id).or_insert(0);
            *f = (*f + 1).min(3);
            return;
        }
        let in_ghost = s.ghost.iter().position(|&g| g == id);
        if let Some(pos) = in_ghost {
            s.ghost.remove(pos);
            s.main.push_back(id);
            s.where_.insert(id, true);
        } else {
            s.small.push_back(id);
            s.where_.insert(id, false);
        }
        s.freq.insert(id, 0);
    }

    fn on_hit(&self, id: u32) {
        self.on_access(id);
    }

    fn choose_victim(&self, candidates: &dyn Candidates, incoming: Option<u32>) -> Option<u32> {
        if incoming.is_some() {
            return None;
        }
        let allowed: std::collections::HashSet<u32> = every_evictable(candidates).collect();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..4 * (s.small.len() + s.main.len() + 1) {
            let from_small = s.small.len() > s.small_target || s.main.is_empty();
            if from_small {
                let Some(id) = s.small.pop_front() else { break };
                if !allowed.contains(&id) {
                    s.small.push_back(id);
                    continue;
                }
                if s.freq.get(&id).copied().unwrap_or(0) > 0 {
                    s.main.push_back(id);
                    s.where_.insert(id, true);
                    s.freq.insert(id, 0);
                    continue;
                }
                s.where_.remove(&id);
                s.ghost.push_back(id);
                let limit = s.small_target * 9;
                while s.ghost.len() > limit {
                    s.ghost.pop_front();
                }
                return Some(id);
            } else {
                let Some(id) = s.main.pop_front() else { break };
                let f = s.freq.get(&id).copied().unwrap_or(0);
                if f > 0 || !allowed.contains(&id) {
                    s.freq.insert(id, f.saturating_sub(1));
                    s.main.push_back(id);
                    continue;
                }
                s.where_.remove(&id);
                return Some(id);
            }
        }
        // Fall back to any candidate the queues did not offer.
        allowed.into_iter().next()
    }

    fn grow(&self, _n: usize) {}

    fn describe(&self) -> String {
        "S3-FIFO".to_owned()
    }
}

/// Least frequently used, counting every access since the start (perfect
/// LFU: counts survive eviction); ties go to the least recently used.
pub struct Lfu {
    counts: Mutex<LfuCounts>,
}

#[derive(Default)]
struct LfuCounts {
    /// Accesses so far (the clock of last uses).
    clock: u64,
    /// Per id: (accesses, last access).
    by_id: HashMap<u32, (u64, u64)>,
}

impl Lfu {
    /// An empty LFU.
    pub fn new() -> Self {
        Lfu {
            counts: Mutex::new(LfuCounts::default()),
        }
    }
}

impl Default for Lfu {
    fn default() -> Self {
        Lfu::new()
    }
}

impl EvictionPolicy for Lfu {
    fn on_access(&self, id: u32) {
        let mut g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        g.clock += 1;
        let now = g.clock;
        let c = g.by_id.entry(id).or_insert((0, 0));
        *c = (c.0 + 1, now);
    }

    fn on_hit(&self, id: u32) {
        self.on_access(id);
    }

    fn choose_victim(&self, candidates: &dyn Candidates, _incoming: Option<u32>) -> Option<u32> {
        let g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        every_evictable(candidates).min_by_key(|id| g.by_id.get(id).copied().unwrap_or((0, 0)))
    }

    fn grow(&self, _n: usize) {}

    fn describe(&self) -> String {
        "LFU".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerpager::policy::{Lru, ScheduleAware};

    fn cycle(n: u32, passes: u32) -> Vec<u32> {
        (0..passes).flat_map(|_| 0..n).collect()
    }

    #[test]
    fn lru_rereads_everything_on_a_cycle_larger_than_the_budget() {
        let sizes = vec![10; 10];
        let r = simulate(&sizes, &cycle(10, 3), 50, &Lru::new(10));
        assert_eq!(r.bytes_read, 300);
        assert_eq!(r.hits, 0);
    }

    #[test]
    fn belady_and_the_declared_schedule_reach_the_lower_bound() {
        let sizes = vec![10; 10];
        let trace = cycle(10, 3);
        // M + (P-1)(M-B) = 100 + 2 * 50.
        assert_eq!(simulate(&sizes, &trace, 50, &Belady::new(&trace)).bytes_read, 200);
        let p = ScheduleAware::new(10, false);
        layerpager::policy::EvictionPolicy::set_schedule(&p, &(0..10).collect::<Vec<_>>());
        assert_eq!(simulate(&sizes, &trace, 50, &p).bytes_read, 200);
    }

    #[test]
    fn learning_gets_close_to_the_bound_without_a_declared_schedule() {
        let sizes = vec![10; 40];
        let trace = cycle(40, 3);
        let r = simulate(&sizes, &trace, 200, &ScheduleAware::new(40, true));
        assert!(r.bytes_read <= 800 * 115 / 100, "{r:?}");
    }

    #[test]
    fn lfu_keeps_the_frequent_over_the_recent() {
        // 0 is used often; 1..=20 once each: a cache of 2 keeps 0.
        let sizes = vec![1; 21];
        let mut trace = vec![0, 0, 0];
        for i in 1..=20u32 {
            trace.push(i);
            trace.push(0);
        }
        let r = simulate(&sizes, &trace, 2, &Lfu::new());
        assert_eq!(r.misses, 21, "{r:?}");
    }

    #[test]
    fn s3fifo_keeps_a_hot_set() {
        let sizes = vec![1; 100];
        let mut trace = Vec::new();
        for i in 0..2000u32 {
            trace.push(i % 5);
            trace.push(5 + (i * 7) % 95);
        }
        let r = simulate(&sizes, &trace, 10, &S3Fifo::new(1));
        assert!(r.hits >= 1500, "{r:?}");
    }
}
