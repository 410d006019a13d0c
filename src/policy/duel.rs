//! Set dueling for expert eviction: every ranking of [`Ranking::all`]
//! runs as a shadow cache (sizes only, no data) over a hashed sample of the
//! tensors, with the budget scaled to the sample's bytes, fed the same
//! stream as the real cache. The real cache ranks experts by the ranking
//! whose shadow has hit the most bytes lately, so that on any routing it
//! stays near the best of them.
//!
//! Sampling tensors by a hash of their id and scaling the budget by the
//! sampled share of bytes is spatial sampling as SHARDS (Waldspurger et
//! al., FAST'15) does it for miss-ratio curves: a miniature of the cache
//! that behaves like the whole at a fraction of the cost.

use super::candidates::{EveryResident, ResidentSet, VictimChooser};
use super::experts::Ranking;

/// About how many tensors the shadows follow.
const SAMPLE_TARGET: u64 = 512;
/// Per-pass decay of the shadows' hit scores (a window of about 32 tokens).
const SCORE_DECAY: f64 = 1.0 - 1.0 / 32.0;
/// A shadow examines every member up to this many, then samples (six
/// shadows choose on every sampled miss).
const SHADOW_EXAMINE_ALL_UP_TO: usize = 256;
/// How much better, as a share of the leader's score, a challenger must be
/// to take over (no flapping between equals).
const SWITCH_MARGIN: f64 = 0.02;

/// The shadows and the ranking they chose.
#[derive(Default)]
pub(super) struct Duel {
    budget: u64,
    /// Set once sizes, slices and a budget are known; cleared when any of
    /// them changes.
    ready: bool,
    /// A tensor is in the sample when its hash is below this.
    threshold: u64,
    /// The budget scaled to the sample.
    capacity: u64,
    shadows: Vec<Shadow>,
    /// Decayed bytes hit, per shadow.
    score: Vec<f64>,
    leader: usize,
    /// An ranking fixed by hand: the shadows do not run.
    fixed: Option<usize>,
}

#[derive(Default, Clone)]
struct Shadow {
    resident: ResidentSet,
    held: u64,
    /// Victims are chosen as the real cache chooses them.
    chooser: VictimChooser,
}

/// A fixed mix of the id, so that a sample by its value spreads over
/// blocks and parts.
pub(super) fn mix(id: u32) -> u64 {
    let mut x = (id as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Duel {
    /// Forgets the shadows (sizes, slices or the budget changed); the leader stays.
    pub(super) fn reset(&mut self) {
        self.ready = false;
    }

    pub(super) fn set_budget(&mut self, budget: u64) {
        if budget != self.budget {
            self.budget = budget;
            self.ready = false;
        }
    }

    /// The ranking the real cache follows.
    pub(super) fn leader(&self) -> Ranking {
        Ranking::all()[self.fixed.unwrap_or(self.leader).min(Ranking::all().len() - 1)]
    }

    /// Fixes the ranking (no shadows), or lets the shadows choose again.
    pub(super) fn fix(&mut self, ranking: Option<Ranking>) {
        self.fixed = ranking.and_then(|e| Ranking::all().iter().position(|&x| x == e));
    }

    /// Whether the shadows were built for the current sizes and budget.
    pub(super) fn is_configured(&self) -> bool {
        self.ready
    }

    /// Whether the shadows run: a budget, sizes, and slices to rank.
    pub(super) fn running(&self) -> bool {
        self.ready && self.capacity > 0 && self.fixed.is_none()
    }

    /// Builds the shadows for tensors of `size`, `is_parent` marking the
    /// merged tensors that are never accessed themselves.
    pub(super) fn configure(&mut self, size: &[u64], is_parent: &dyn Fn(usize) -> bool, has_slices: bool) {
        self.ready = true;
        self.capacity = 0;
        self.shadows.clear();
        if self.budget == 0 || !has_slices {
            return;
        }
        let units = (0..size.len()).filter(|&i| !is_parent(i) && size[i] > 0);
        let count = units.clone().count() as u64;
        let total: u64 = units.clone().map(|i| size[i]).sum();
        self.threshold = if count <= SAMPLE_TARGET {
            u64::MAX
        } else {
            (u64::MAX / count).saturating_mul(SAMPLE_TARGET)
        };
        let sampled: u64 = units
            .filter(|&i| mix(i as u32) <= self.threshold)
            .map(|i| size[i])
            .sum();
        if total == 0 || self.budget >= total {
            return;
        }
        self.capacity = (self.budget as u128 * sampled as u128 / total as u128) as u64;
        // Every shadow member counts as a slice: a large sample is sampled.
        let empty = Shadow {
            resident: ResidentSet::new(0),
            held: 0,
            chooser: VictimChooser::examining_all_up_to(SHADOW_EXAMINE_ALL_UP_TO),
        };
        self.shadows = vec![empty; Ranking::all().len()];
        self.score = vec![0.0; Ranking::all().len()];
    }

    /// Whether tensor `id` is in the sample.
    pub(super) fn samples(&self, id: u32) -> bool {
        self.running() && mix(id) <= self.threshold
    }

    /// Keys the shadows' victim choices computed so far.
    pub(super) fn examined(&self) -> u64 {
        self.shadows.iter().map(|s| s.chooser.examined()).sum()
    }

    /// Feeds an access of sampled tensor `id` to every shadow; `sizes` are
    /// the tensors' sizes by id, `distance(id, ranking)` is the expected
    /// distance to a tensor's next use as that ranking sees it.
    pub(super) fn access(&mut self, id: u32, sizes: &[u64], distance: &dyn Fn(u32, Ranking) -> u64) {
        let size_of = |id: u32| sizes.get(id as usize).copied().unwrap_or(0);
        let size = size_of(id);
        for (k, shadow) in self.shadows.iter_mut().enumerate() {
            if shadow.resident.contains(id) {
                self.score[k] += size as f64;
                continue;
            }
            if size > self.capacity {
                continue;
            }
            let ranking = Ranking::all()[k];
            while shadow.held + size > self.capacity {
                let every = EveryResident(&shadow.resident);
                let Some((victim, _)) = shadow
                    .chooser
                    .choose(&every, false, u64::MAX, &mut |v| distance(v, ranking))
                else {
                    break;
                };
                shadow.resident.remove(victim);
                shadow.held -= size_of(victim);
            }
            shadow.resident.insert(id);
            shadow.held += size;
        }
    }

    /// A pass ended: scores decay and the best shadow leads.
    pub(super) fn pass_closed(&mut self) {
        if self.score.is_empty() {
            return;
        }
        for s in &mut self.score {
            *s *= SCORE_DECAY;
        }
        let best = (0..self.score.len())
            .max_by(|&a, &b| self.score[a].total_cmp(&self.score[b]))
            .unwrap_or(0);
        if self.score[best] > self.score[self.leader] * (1.0 + SWITCH_MARGIN) {
            self.leader = best;
        }
    }
}
