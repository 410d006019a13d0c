//! The order of a pass as the schedule-aware policy knows it: a
//! [`Schedule`] (declared, guessed from `blk.N` names, or learned) with
//! each tensor's places in it, and the [`Learner`] that finds the cycle in
//! the acquire stream.

/// Steps of the second pass that must match the first before a learned
/// cycle is adopted.
pub(super) const CONFIRM: usize = 8;
/// Steps of the stream looked at for a cycle, per tensor of the model
/// (plus [`LEARN_SLACK`]): a stream that follows a pass shows its cycle
/// within about two passes; one that does not (random acquires) would
/// otherwise keep every acquire on the learner's lock.
const LEARN_STEPS_PER_TENSOR: usize = 8;
const LEARN_SLACK: usize = 4096;

pub(super) struct Schedule {
    pub(super) ids: Vec<u32>,
    /// For each id, its positions in `ids`, ascending.
    positions: Vec<Vec<u32>>,
    pub(super) declared: bool,
    /// Misses on tensors outside the schedule in the current pass (learned
    /// schedules only).
    pub(super) mismatches: std::sync::atomic::AtomicU64,
    /// Tells this schedule's positions from another's.
    pub(super) serial: u64,
}

impl Schedule {
    pub(super) fn new(ids: Vec<u32>, declared: bool, serial: u64) -> Self {
        let n = ids.iter().map(|&i| i as usize + 1).max().unwrap_or(0);
        let mut positions = vec![Vec::new(); n];
        for (pos, &id) in ids.iter().enumerate() {
            positions[id as usize].push(pos as u32);
        }
        Schedule {
            ids,
            positions,
            declared,
            mismatches: Default::default(),
            serial,
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.ids.len() as u64
    }

    /// Slots since the latest use of `id` at or before index `at` (in
    /// 0..len), or None if the schedule never uses it.
    pub(super) fn age(&self, id: u32, at: u64) -> Option<u64> {
        let p = self.positions.get(id as usize)?;
        let last = *p.last()? as u64;
        let i = p.partition_point(|&x| x as u64 <= at);
        Some(match i {
            0 => at + self.len() - last,
            _ => at - p[i - 1] as u64,
        })
    }

    /// Slots from index `from` (in 0..len) to the next use of `id`, or None
    /// if the schedule never uses it.
    pub(super) fn distance(&self, id: u32, from: u64) -> Option<u64> {
        let p = self.positions.get(id as usize)?;
        let first = *p.first()? as u64;
        let i = p.partition_point(|&x| (x as u64) < from);
        Some(match p.get(i) {
            Some(&x) => x as u64 - from,
            None => first + self.len() - from,
        })
    }
}

/// What one observation led to.
pub(super) enum Learned {
    /// Nothing yet.
    Nothing,
    /// A cycle: its ids, and the index in it of the latest access.
    Cycle(Vec<u32>, u64),
    /// No cycle in the steps looked at: stop looking.
    GaveUp,
}

/// Finds the cycle in the acquire stream: the first id of the stream marks
/// its start, and a cycle is adopted once the stream has repeated its first
/// [`CONFIRM`] steps.
pub(super) struct Learner {
    trace: Vec<u32>,
    /// Positions j > 0 where the stream met its first id again, still matching.
    candidates: Vec<usize>,
    /// Steps looked at before giving up.
    limit: usize,
}

impl Learner {
    /// A learner for a model of `tensors` tensors.
    pub(super) fn new(tensors: usize) -> Self {
        Learner {
            trace: Vec::new(),
            candidates: Vec::new(),
            limit: tensors.saturating_mul(LEARN_STEPS_PER_TENSOR) + LEARN_SLACK,
        }
    }

    /// Forgets the stream seen so far.
    pub(super) fn restart(&mut self) {
        self.trace.clear();
        self.candidates.clear();
    }

    /// The id of the latest step seen.
    pub(super) fn last(&self) -> Option<u32> {
        self.trace.last().copied()
    }

    /// Learns from an access at schedule key `id`.
    pub(super) fn observe(&mut self, id: u32) -> Learned {
        let j = self.trace.len();
        self.trace.push(id);
        if j > 0 && id == self.trace[0] {
            self.candidates.push(j);
        }
        let trace = &self.trace;
        let mut adopted = None;
        self.candidates.retain(|&c| {
            let k = j - c;
            if trace[j] != trace[k] {
                return false;
            }
            if adopted.is_none() && k + 1 >= CONFIRM.min(c) {
                adopted = Some((c, k));
            }
            true
        });
        if let Some((c, k)) = adopted {
            let ids = self.trace[..c].to_vec();
            self.restart();
            Learned::Cycle(ids, k as u64)
        } else if self.trace.len() >= self.limit {
            self.restart();
            Learned::GaveUp
        } else {
            Learned::Nothing
        }
    }
}
