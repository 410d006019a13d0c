//! Expert slices (MoE) as the schedule-aware policy sees them: which merged
//! tensor each slice stands for, and the online estimate of how likely an
//! expert used this token is used again the next one.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::segvec::SegVec;

/// Weight, in trials, of the all-experts rate in each expert's reuse estimate.
const PRIOR: f64 = 8.0;

/// Slices (MoE experts) and what is known of their reuse.
///
/// An expert slice stands at its merged parent's place in the schedule, as
/// "one of these experts". Its expected next-use distance is the slots to
/// that place plus (1/p - 1) passes, where p estimates "used next token
/// given used this token" (Laplace-smoothed counts); dense tensors have p = 1.
pub(super) struct Experts {
    /// Parent id + 1, or 0 for a tensor that is not a slice.
    pub(super) parent: SegVec<AtomicU32>,
    /// Whether the tensor has slices (then read-ahead skips it: its experts
    /// are read, not the merged whole).
    pub(super) has_slices: SegVec<AtomicBool>,
    /// Pass of the latest use + 1 (0: never used).
    pub(super) last_pass: SegVec<AtomicU64>,
    /// Passes after a use that have been seen, and how many reused it.
    pub(super) trials: SegVec<AtomicU64>,
    pub(super) repeats: SegVec<AtomicU64>,
    /// Passes in which the slice was used.
    pub(super) uses: SegVec<AtomicU64>,
    /// The same counts over all experts, for the prior.
    pub(super) all_trials: AtomicU64,
    pub(super) all_repeats: AtomicU64,
}

impl Experts {
    pub(super) fn new() -> Self {
        Experts {
            parent: SegVec::new(|| AtomicU32::new(0)),
            has_slices: SegVec::new(|| AtomicBool::new(false)),
            last_pass: SegVec::new(|| AtomicU64::new(0)),
            trials: SegVec::new(|| AtomicU64::new(0)),
            repeats: SegVec::new(|| AtomicU64::new(0)),
            uses: SegVec::new(|| AtomicU64::new(0)),
            all_trials: AtomicU64::new(0),
            all_repeats: AtomicU64::new(0),
        }
    }

    pub(super) fn grow(&self, n: usize) {
        let _ = self.parent.grow_to(n, |_, _| {});
        let _ = self.has_slices.grow_to(n, |_, _| {});
        let _ = self.last_pass.grow_to(n, |_, _| {});
        let _ = self.trials.grow_to(n, |_, _| {});
        let _ = self.repeats.grow_to(n, |_, _| {});
        let _ = self.uses.grow_to(n, |_, _| {});
    }

    pub(super) fn parent(&self, id: u32) -> Option<u32> {
        match self.parent.get(id as usize)?.load(Ordering::Relaxed) {
            0 => None,
            p => Some(p - 1),
        }
    }

    /// Where `id` stands in the schedule: its parent's place for a slice.
    pub(super) fn key(&self, id: u32) -> u32 {
        self.parent(id).unwrap_or(id)
    }

    pub(super) fn has_slices(&self, id: u32) -> bool {
        self.has_slices
            .get(id as usize)
            .is_some_and(|b| b.load(Ordering::Relaxed))
    }

    /// Records a use of slice `id` in pass `pass`.
    pub(super) fn used(&self, id: u32, pass: u64) {
        let (Some(last), Some(trials), Some(repeats)) = (
            self.last_pass.get(id as usize),
            self.trials.get(id as usize),
            self.repeats.get(id as usize),
        ) else {
            return;
        };
        let before = last.swap(pass + 1, Ordering::Relaxed);
        if before != pass + 1 {
            if let Some(u) = self.uses.get(id as usize) {
                u.fetch_add(1, Ordering::Relaxed);
            }
        }
        if before != 0 && before != pass + 1 {
            trials.fetch_add(1, Ordering::Relaxed);
            self.all_trials.fetch_add(1, Ordering::Relaxed);
            if before == pass {
                repeats.fetch_add(1, Ordering::Relaxed);
                self.all_repeats.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The estimate of "used next pass given used this pass" for slice `id`
    /// as of pass `pass`: its own counts, with a prior of two trials at the
    /// rate all experts show (so a rarely seen expert starts from the
    /// typical rate, not from one half).
    pub(super) fn reuse_probability(&self, id: u32, pass: u64) -> f64 {
        let load = |v: &SegVec<AtomicU64>| v.get(id as usize).map_or(0, |x| x.load(Ordering::Relaxed));
        let last = load(&self.last_pass);
        let mut trials = load(&self.trials);
        // A use whose next pass went by without it is a failed trial not yet counted.
        if last != 0 && last < pass {
            trials += 1;
        }
        let all_repeats = self.all_repeats.load(Ordering::Relaxed) as f64;
        let all_trials = self.all_trials.load(Ordering::Relaxed) as f64;
        let typical = (all_repeats + 1.0) / (all_trials + 2.0);
        (load(&self.repeats) as f64 + PRIOR * typical) / (trials as f64 + PRIOR)
    }
}
