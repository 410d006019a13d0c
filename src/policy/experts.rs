//! Expert slices (MoE) as the schedule-aware policy sees them: which merged
//! tensor each slice stands for, what has been seen of each expert's use,
//! and the rankings of "this expert is used at its block's next visit"
//! among which the shadow simulations ([`super::duel`]) choose.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::candidates::VictimChooser;
use super::duel::{mix, Duel};
use super::uses::Use;
use crate::segvec::SegVec;

/// Weight, in trials, of the all-experts rate in each expert's reuse estimate.
const PRIOR: f64 = 8.0;
/// Per-pass decay of an expert's popularity (a window of about 64 tokens,
/// so that drifting popularity is followed).
const POPULARITY_DECAY: f64 = 1.0 - 1.0 / 64.0;
/// Per-pass decay of the age/popularity table (about 256 tokens).
const TABLE_DECAY: f64 = 1.0 - 1.0 / 256.0;
/// Age buckets, in block visits since the latest use: 1, 2, 3, 4-5, 6-8,
/// 9-16, 17-32, over 32, and never used.
const AGES: usize = 9;
/// Popularity classes: an expert's rate over the mean rate, below 1/4, 1/2,
/// 1, 2, and above.
const CLASSES: usize = 5;
/// About how many experts the once-per-pass sweep looks at (a hashed
/// sample, so that a pass costs the same at any number of experts).
const SWEEP_SAMPLE: usize = 512;
/// A pass is swept only if at least (sample size / this) uses came since
/// the last sweep: so that streams of very short passes (random expert
/// acquires) cost a few rate updates per use, not a sweep per use.
const SWEEP_EVERY: u64 = 8;
/// Powers of the popularity decay kept in a table (beyond it, 0).
const DECAY_TABLE: usize = 4096;

/// One way to rank eviction candidates once experts are paged: each is one
/// of the candidates the shadow simulations run. The first four keep
/// Belady's rule on the schedule and differ in how they estimate r, the
/// chance that an expert is used at its block's next visit; the last two
/// are the reference policies themselves, so that the pager is never far
/// below them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranking {
    /// r from the expert's own "used next token given used this token"
    /// rate, shrunk towards its usage rate (suits per-slot repeats).
    Reuse,
    /// r from how often experts last used that many visits ago were used
    /// (a calibrated LRU: suits drifting popularity and repeated pairs).
    Recency,
    /// r from the expert's recent usage rate (suits skewed, stationary
    /// popularity).
    Popularity,
    /// r from how often experts of that age and that popularity class were
    /// used.
    Joint,
    /// Least recently used, dense tensors and experts alike.
    Lru,
    /// Least often used, the most recent first among equals (frequency
    /// admission).
    Frequency,
}

impl Ranking {
    /// Every ranking, in the order the shadows run them.
    pub fn all() -> [Ranking; 6] {
        [
            Ranking::Reuse,
            Ranking::Recency,
            Ranking::Popularity,
            Ranking::Joint,
            Ranking::Lru,
            Ranking::Frequency,
        ]
    }

    /// Short name for logs and `describe`.
    pub fn name(self) -> &'static str {
        match self {
            Ranking::Reuse => "reuse",
            Ranking::Recency => "recency",
            Ranking::Popularity => "popularity",
            Ranking::Joint => "recency x popularity",
            Ranking::Lru => "LRU",
            Ranking::Frequency => "frequency",
        }
    }

    /// Whether the ranking is Belady's rule on the schedule (an expected
    /// distance to the next use), so that a read-ahead may evict by it.
    pub fn knows_the_future(self) -> bool {
        !matches!(self, Ranking::Lru | Ranking::Frequency)
    }
}

/// Slices (MoE experts): the parent map, read lock-free on the hit path, and
/// everything learned of their use, behind one mutex taken on each expert
/// access (never on a dense tensor's hit).
pub(super) struct Experts {
    /// Parent id + 1, or 0 for a tensor that is not a slice.
    parent: SegVec<AtomicU32>,
    /// Whether the tensor has slices (then read-ahead skips it: its experts
    /// are read, not the merged whole).
    has_slices: SegVec<AtomicBool>,
    /// Whether any tensor has slices (a dense model never takes the lock).
    any: AtomicBool,
    state: Mutex<ExpertState>,
}

/// What is known of one expert slice's use.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Expert {
    /// Pass of the latest use + 1 (0: never used), and of the use before.
    pub(super) last: u64,
    prev: u64,
    /// Cursor of the latest use + 1 (0: never used).
    pub(super) last_cursor: u64,
    /// Passes in which the slice was used.
    pub(super) uses: u64,
    /// Passes after a use that have been seen, and how many reused it.
    trials: u64,
    repeats: u64,
    /// Decayed count of uses, as of pass `popularity_pass`.
    popularity: f64,
    popularity_pass: u64,
    /// While hinted and not yet used: the cursor position the hint expires at.
    hinted_until: u64,
    /// Whether the router ever hinted the expert.
    hint_given: bool,
}

/// What is known of the experts' use, and the shadow simulations.
pub(super) struct ExpertState {
    /// Tensor sizes in bytes, by id.
    pub(super) size: Vec<u64>,
    /// Every slice id.
    pub(super) slices: Vec<u32>,
    /// The slices the once-per-pass sweep looks at, and the slice count it
    /// was drawn for.
    swept: Vec<u32>,
    swept_for: usize,
    /// Uses applied since the last sweep.
    since_sweep: u64,
    /// POPULARITY_DECAY^n for n < DECAY_TABLE.
    decay: Vec<f64>,
    /// What is known of each slice, by id: one record, so that a use
    /// touches one or two cache lines however many experts there are.
    pub(super) stats: Vec<Expert>,
    all_trials: u64,
    all_repeats: u64,
    /// The first pass any expert was used in.
    first_pass: Option<u64>,
    /// The latest pass an expert was used in; the pass before it is swept.
    current_pass: u64,
    /// Mean usage rate over the experts, as of the latest sweep.
    mean_rate: f64,
    /// [age][class] = (reused, trials), decayed.
    table: [[(f64, f64); CLASSES]; AGES],
    /// The chance of reuse by age bucket alone, from `table` as of the
    /// latest sweep.
    by_age: [f64; AGES],
    /// Hinted experts evicted before their use.
    pub(super) hinted_evictions: u64,
    /// The shadow simulations and the ranking they chose.
    pub(super) duel: Duel,
    /// How the real cache's victims are chosen among many candidates.
    pub(super) chooser: VictimChooser,
    /// Room for the queued uses being applied (kept to reuse its memory).
    pub(super) batch: Vec<Use>,
}

impl Experts {
    pub(super) fn new() -> Self {
        Experts {
            parent: SegVec::new(|| AtomicU32::new(0)),
            has_slices: SegVec::new(|| AtomicBool::new(false)),
            any: AtomicBool::new(false),
            state: Mutex::new(ExpertState {
                size: Vec::new(),
                slices: Vec::new(),
                swept: Vec::new(),
                swept_for: 0,
                since_sweep: 0,
                decay: std::iter::successors(Some(1.0f64), |p| Some(p * POPULARITY_DECAY))
                    .take(DECAY_TABLE)
                    .collect(),
                stats: Vec::new(),
                all_trials: 0,
                all_repeats: 0,
                first_pass: None,
                current_pass: 0,
                mean_rate: 0.0,
                table: [[(0.0, 0.0); CLASSES]; AGES],
                by_age: [0.5; AGES],
                hinted_evictions: 0,
                duel: Duel::default(),
                chooser: VictimChooser::default(),
                batch: Vec::new(),
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ExpertState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn grow(&self, n: usize) {
        let _ = self.parent.grow_to(n, |_, _| {});
        let _ = self.has_slices.grow_to(n, |_, _| {});
        self.lock().grow(n);
    }

    /// Slice `id` stands for one expert of `parent`.
    pub(super) fn set_parent(&self, id: u32, parent: u32) {
        let new = self
            .parent
            .get(id as usize)
            .is_some_and(|p| p.swap(parent + 1, Ordering::Relaxed) == 0);
        if let Some(h) = self.has_slices.get(parent as usize) {
            h.store(true, Ordering::Relaxed);
        }
        self.any.store(true, Ordering::Relaxed);
        let mut s = self.lock();
        s.grow(id.max(parent) as usize + 1);
        if new {
            s.slices.push(id);
        }
        s.duel.reset();
    }

    /// Whether any tensor has slices.
    pub(super) fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
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
}

impl ExpertState {
    fn grow(&mut self, n: usize) {
        if n <= self.size.len() {
            return;
        }
        self.size.resize(n, 0);
        self.stats.resize(n, Expert::default());
    }

    /// Tensors from `first` on have these sizes.
    pub(super) fn set_sizes(&mut self, first: u32, sizes: &[u64]) {
        self.grow(first as usize + sizes.len());
        self.size[first as usize..first as usize + sizes.len()].copy_from_slice(sizes);
        self.duel.reset();
    }

    /// Records a use of slice `id` in pass `pass` at cursor `cursor`; the
    /// first use in a new pass closes the previous one (its trials are
    /// counted). Returns whether a pass was closed.
    pub(super) fn used(&mut self, id: u32, pass: u64, cursor: u64) -> bool {
        let i = id as usize;
        if i >= self.stats.len() {
            return false;
        }
        if pass + 1 < self.stats[i].last {
            // Applied late, after a later use of the same expert.
            return false;
        }
        self.stats[i].hinted_until = 0;
        self.stats[i].last_cursor = self.stats[i].last_cursor.max(cursor + 1);
        let first = *self.first_pass.get_or_insert(pass);
        let closed = pass > self.current_pass && self.current_pass >= first;
        if closed {
            self.close_pass(self.current_pass);
        }
        self.current_pass = self.current_pass.max(pass);
        let before = self.stats[i].last;
        if before == pass + 1 {
            return closed;
        }
        self.stats[i].prev = before;
        self.stats[i].last = pass + 1;
        self.stats[i].uses += 1;
        self.since_sweep += 1;
        self.stats[i].popularity = self.popularity_at(i, pass) + 1.0;
        self.stats[i].popularity_pass = pass;
        if before != 0 {
            self.stats[i].trials += 1;
            self.all_trials += 1;
            if before == pass {
                self.stats[i].repeats += 1;
                self.all_repeats += 1;
            }
        }
        closed
    }

    /// Counts, for the experts of the sweep's sample, whether pass `pass`
    /// used them, by their age and popularity class before that pass.
    fn close_pass(&mut self, pass: u64) {
        if self.swept_for != self.slices.len() {
            self.swept_for = self.slices.len();
            let threshold = match self.slices.len() {
                n if n <= SWEEP_SAMPLE => u64::MAX,
                n => (u64::MAX / n as u64).saturating_mul(SWEEP_SAMPLE as u64),
            };
            self.swept = self
                .slices
                .iter()
                .copied()
                .filter(|&id| mix(id) <= threshold)
                .collect();
        }
        if self.since_sweep * SWEEP_EVERY < self.swept.len() as u64 {
            return;
        }
        self.since_sweep = 0;
        let rates: Vec<f64> = self
            .swept
            .iter()
            .map(|&id| self.rate(id as usize, pass))
            .collect();
        self.mean_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        for row in &mut self.table {
            for cell in row {
                cell.0 *= TABLE_DECAY;
                cell.1 *= TABLE_DECAY;
            }
        }
        for (k, &id) in self.swept.iter().enumerate() {
            let i = id as usize;
            let (since, reused) = if self.stats[i].last == pass + 1 {
                (self.stats[i].prev, 1.0)
            } else {
                (self.stats[i].last, 0.0)
            };
            let age = age_bucket(since, pass);
            let class = class_of(rates[k], self.mean_rate);
            let cell = &mut self.table[age][class];
            cell.0 += reused;
            cell.1 += 1.0;
        }
        self.by_age = std::array::from_fn(|age| self.chance_by_age(age));
    }

    /// POPULARITY_DECAY^n.
    fn decay_pow(&self, n: u64) -> f64 {
        self.decay.get(n as usize).copied().unwrap_or(0.0)
    }

    fn popularity_at(&self, i: usize, pass: u64) -> f64 {
        let elapsed = pass.saturating_sub(self.stats[i].popularity_pass);
        self.stats[i].popularity * self.decay_pow(elapsed)
    }

    /// The decayed usage rate of slice `i` as of `pass`, in uses per pass.
    fn rate(&self, i: usize, pass: u64) -> f64 {
        let seen = pass.saturating_sub(self.first_pass.unwrap_or(pass)) + 1;
        let norm = 1.0 - self.decay_pow(seen);
        (self.popularity_at(i, pass) * (1.0 - POPULARITY_DECAY) / norm).min(1.0)
    }

    /// The chance that slice `id` is used at its parent's visit in pass
    /// `next_pass`, by `ranking`; `passes` is the pass count the
    /// usage rate of [`Ranking::Reuse`] divides by.
    pub(super) fn chance(&self, id: u32, next_pass: u64, passes: u64, ranking: Ranking) -> f64 {
        let i = id as usize;
        if i >= self.stats.len() {
            return 1.0;
        }
        let chance = match ranking {
            Ranking::Reuse | Ranking::Lru | Ranking::Frequency => {
                let q = (self.stats[i].uses as f64 + 1.0) / (passes as f64 + 2.0);
                if self.stats[i].last != 0 && self.stats[i].last == next_pass {
                    (self.reuse_probability(i, next_pass) + q) / 2.0
                } else {
                    q
                }
            }
            Ranking::Popularity => self.rate(i, next_pass.saturating_sub(1)),
            Ranking::Recency => self.by_age[age_bucket(self.stats[i].last, next_pass)],
            Ranking::Joint => {
                let age = age_bucket(self.stats[i].last, next_pass);
                let marginal = self.by_age[age];
                let class = class_of(self.rate(i, next_pass.saturating_sub(1)), self.mean_rate);
                let (reused, trials) = self.table[age][class];
                (reused + 4.0 * marginal) / (trials + 4.0)
            }
        };
        chance.clamp(1e-3, 1.0)
    }

    /// How often experts of age bucket `age` were used, over every class,
    /// with a prior of two trials at the overall rate.
    fn chance_by_age(&self, age: usize) -> f64 {
        let sum = |row: &[(f64, f64); CLASSES]| row.iter().fold((0.0, 0.0), |a, c| (a.0 + c.0, a.1 + c.1));
        let (all_reused, all_trials) = self
            .table
            .iter()
            .map(sum)
            .fold((0.0, 0.0), |a, c| (a.0 + c.0, a.1 + c.1));
        let overall = (all_reused + 1.0) / (all_trials + 2.0);
        let (reused, trials) = sum(&self.table[age]);
        (reused + 2.0 * overall) / (trials + 2.0)
    }

    /// The estimate of "used next pass given used this pass" for slice `i`
    /// as of pass `pass`: its own counts, with a prior at the rate all
    /// experts show (so a rarely seen expert starts from the typical rate).
    fn reuse_probability(&self, i: usize, pass: u64) -> f64 {
        let mut trials = self.stats[i].trials;
        // A use whose next pass went by without it is a failed trial not yet counted.
        if self.stats[i].last != 0 && self.stats[i].last < pass {
            trials += 1;
        }
        let typical = (self.all_repeats as f64 + 1.0) / (self.all_trials as f64 + 2.0);
        (self.stats[i].repeats as f64 + PRIOR * typical) / (trials as f64 + PRIOR)
    }

    /// Slice `id` was named by the router: protect it until it is used or
    /// the cursor reaches `until`.
    pub(super) fn hint(&mut self, id: u32, until: u64) {
        if let Some(e) = self.stats.get_mut(id as usize) {
            e.hinted_until = until;
            e.hint_given = true;
        }
    }

    /// Whether a read of slice `id` queued by a hint is stale: the router
    /// hinted it, and it has been used (or its block passed) since.
    pub(super) fn hint_is_stale(&self, id: u32, cursor: u64) -> bool {
        self.stats.get(id as usize).is_some_and(|e| e.hint_given) && !self.is_hinted(id, cursor)
    }

    /// Whether slice `id` is hinted and not yet used, at cursor `cursor`.
    pub(super) fn is_hinted(&self, id: u32, cursor: u64) -> bool {
        self.stats
            .get(id as usize)
            .is_some_and(|e| e.hinted_until > cursor)
    }
}

/// The age bucket of an expert last used in the pass `last - 1` (0: never),
/// at a visit in pass `pass`.
fn age_bucket(last: u64, pass: u64) -> usize {
    if last == 0 {
        return AGES - 1;
    }
    match pass.saturating_sub(last - 1) {
        0 | 1 => 0,
        2 => 1,
        3 => 2,
        4..=5 => 3,
        6..=8 => 4,
        9..=16 => 5,
        17..=32 => 6,
        _ => 7,
    }
}

/// The popularity class of an expert with usage rate `rate`.
fn class_of(rate: f64, mean: f64) -> usize {
    if mean <= 0.0 {
        return 2;
    }
    match rate / mean {
        x if x < 0.25 => 0,
        x if x < 0.5 => 1,
        x if x < 1.0 => 2,
        x if x < 2.0 => 3,
        _ => 4,
    }
}
