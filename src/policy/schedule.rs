//! Schedule-aware eviction: Belady's rule on the repeating pass.
//!
//! The order of a pass comes from `set_schedule`, or is guessed from the
//! model's `blk.N` names when it opens (so that the first pass already reads
//! ahead), or is learned from the acquire stream: the first tensor of the stream marks the start of the
//! cycle, and a cycle is adopted once the stream has repeated its first
//! [`CONFIRM`] steps. A learned schedule that stops matching the stream (a
//! quarter of a pass of misses on tensors outside it) is dropped and learning
//! starts again; a learned cycle replaces a guessed one. While no schedule is
//! known, [`FrequencyAdmission`] decides.
//!
//! Expert slices (MoE) stand at their merged parent's place; how they rank
//! against each other and the dense tensors is the [`Ranking`] that the
//! shadow caches of `duel.rs` find best on the stream so far, and a
//! hinted expert is kept until its block has used it.
//!
//! The hit path reads the schedule through one atomic pointer; schedules are
//! never freed before the policy, so a reader never sees freed memory. Each
//! `set_schedule` (and each learned cycle) therefore keeps its table until the
//! pager is dropped: declare the schedule once per model, not per token.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use super::candidates::Candidates;
use super::experts::{ExpertState, Experts, Ranking};
use super::order::{Learned, Learner, Schedule};
use super::uses::{Use, Uses, What};
use super::{EvictionPolicy, FrequencyAdmission};

/// Belady's rule on the declared or learned pass order; frequency admission
/// while no order is known.
pub struct ScheduleAware {
    learn: bool,
    fallback: FrequencyAdmission,
    current: AtomicPtr<Schedule>,
    /// Every schedule ever installed; freed with the policy. Boxed so that
    /// the pointers in `current` stay valid when the vector grows.
    #[allow(clippy::vec_box)]
    kept: Mutex<Vec<Box<Schedule>>>,
    /// Absolute position: passes * len + index of the latest acquisition.
    cursor: AtomicU64,
    learning: AtomicBool,
    learner: Mutex<Learner>,
    /// The schedule key the learner saw last: an expert hit of the merged
    /// tensor it saw last skips the learner's lock.
    learner_last: AtomicU32,
    experts: Experts,
    /// Expert uses (and dense misses) not applied to the experts' state yet.
    uses: Uses,
    /// Examine every eviction candidate instead of a sample (a reference
    /// for comparisons).
    every_candidate: AtomicBool,
    /// Schedules installed so far.
    serial: AtomicU64,
}

impl ScheduleAware {
    /// A policy over `n` tensors; `learn` enables learning the order from
    /// the acquire stream.
    pub fn new(n: usize, learn: bool) -> Self {
        ScheduleAware {
            learn,
            fallback: FrequencyAdmission::new(n),
            current: AtomicPtr::new(std::ptr::null_mut()),
            kept: Mutex::new(Vec::new()),
            cursor: AtomicU64::new(0),
            learning: AtomicBool::new(learn),
            learner: Mutex::new(Learner::new(n)),
            learner_last: AtomicU32::new(u32::MAX),
            experts: {
                let e = Experts::new();
                e.grow(n);
                e
            },
            uses: Uses::default(),
            every_candidate: AtomicBool::new(false),
            serial: AtomicU64::new(0),
        }
    }

    /// Examines every eviction candidate (`true`) instead of a sample of
    /// them once they are many: exact and slower, for comparisons.
    pub fn examine_every_candidate(&self, every: bool) {
        self.every_candidate.store(every, Ordering::Relaxed);
    }

    /// Eviction keys computed so far, by the real cache's choices and by
    /// the shadow caches': the policy's work, which does not grow with the
    /// number of expert slices.
    pub fn candidates_examined(&self) -> u64 {
        let st = self.experts.lock();
        st.chooser.examined() + st.duel.examined()
    }

    /// Queues a use of expert slice `id` for the experts' state and the
    /// shadow caches.
    #[inline]
    fn record(&self, s: &Schedule, id: u32) {
        self.uses.push(Use {
            what: What::Slice(id),
            at: self.cursor.load(Ordering::Relaxed),
            schedule: s.serial,
        });
    }

    /// Moves the position to the next place of schedule key `key` (where
    /// it is, if it is there); returns the position before and after, or
    /// `None` if the schedule never uses `key`.
    fn advance(&self, s: &Schedule, key: u32) -> Option<(u64, u64)> {
        let len = s.len();
        let cur = self.cursor.load(Ordering::Relaxed);
        let index = cur % len;
        if s.ids[index as usize] == key {
            return Some((cur, cur));
        }
        let Some(d) = s.distance(key, (index + 1) % len) else {
            // Not in the schedule: for a learned one, the stream has left the
            // cycle if this happens for a quarter of a pass.
            if !s.declared && (s.mismatches.fetch_add(1, Ordering::Relaxed) + 1) * 4 > len {
                self.forget_learned();
            }
            return None;
        };
        let new = cur + 1 + d;
        self.cursor.store(new, Ordering::Relaxed);
        if !s.declared && new / len != cur / len {
            s.mismatches.store(0, Ordering::Relaxed);
        }
        Some((cur, new))
    }

    /// Applies the queued uses, in schedule order, to the position, the
    /// experts' state and the shadow caches. Uses of a schedule replaced
    /// since are dropped: their positions mean nothing in the new one.
    fn apply_uses(&self, st: &mut ExpertState) {
        if self.uses.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut st.batch);
        self.uses.take_all(&mut batch);
        for u in &batch {
            let Some(s) = self.schedule().filter(|s| s.serial == u.schedule) else {
                continue;
            };
            let id = match u.what {
                What::Slice(id) => id,
                What::Dense { to } => {
                    self.feed_shadows(st, s, (u.at, to), None);
                    continue;
                }
                What::Hint { id, until } => {
                    st.hint(id, until);
                    continue;
                }
            };
            let Some((cur, new)) = self.advance(s, self.experts.key(id)) else {
                continue;
            };
            let closed = st.used(id, new / s.len(), new);
            self.feed_shadows(st, s, (cur, new), Some(id));
            if closed {
                st.duel.pass_closed();
            }
        }
        batch.clear();
        st.batch = batch;
    }

    /// How `ranking` ranks `id` for eviction (the largest goes first), from
    /// index `from` of `s` with the cursor at `cursor`.
    ///
    /// For the rankings that know the future, the expected slots to the
    /// next use: for a dense tensor, the slots to its next place; for an
    /// expert slice, the slots to its parent's next place plus (1/r - 1)
    /// passes, r the ranking's chance that the expert is used there. For
    /// [`Ranking::Lru`], the slots since the last use; for
    /// [`Ranking::Frequency`], fewest uses first, then the most recent. An
    /// expert hinted by the router and not yet used ranks 0 in every
    /// ranking: it is needed within the current block.
    fn eviction_key(
        &self,
        st: &ExpertState,
        s: &Schedule,
        id: u32,
        (from, cursor): (u64, u64),
        ranking: Ranking,
    ) -> u64 {
        let key = self.experts.key(id);
        let slice = key != id;
        if slice && st.is_hinted(id, cursor) {
            return 0;
        }
        let len = s.len();
        let age = || {
            if slice {
                match st.stats.get(id as usize).map_or(0, |e| e.last_cursor) {
                    0 => u64::MAX,
                    c => cursor.saturating_sub(c - 1),
                }
            } else {
                s.age(key, cursor % len).unwrap_or(u64::MAX)
            }
        };
        match ranking {
            Ranking::Lru => return age(),
            Ranking::Frequency => {
                let uses = if slice {
                    st.stats.get(id as usize).map_or(0, |e| e.uses)
                } else {
                    cursor / len
                };
                let fewest = u32::MAX as u64 - uses.min(u32::MAX as u64);
                let newest = u32::MAX as u64 - age().min(u32::MAX as u64);
                return fewest << 32 | newest;
            }
            _ => {}
        }
        let Some(d) = s.distance(key, from) else {
            return u64::MAX;
        };
        if !slice {
            return d;
        }
        // The pass of the parent's next place.
        let next_pass = (cursor + 1 + d) / len;
        let r = st.chance(id, next_pass, cursor / len, ranking);
        d.saturating_add((len as f64 * (1.0 / r - 1.0)) as u64)
    }

    /// Feeds the shadow simulations what the stream did between cursor
    /// positions `cur` and `new`: the sampled dense tensors whose places
    /// were passed (a hit on them reports nothing), then `slice` if the
    /// access was an expert's.
    fn feed_shadows(&self, st: &mut ExpertState, s: &Schedule, (cur, new): (u64, u64), slice: Option<u32>) {
        if !st.duel.is_configured() {
            let has_slices = !st.slices.is_empty();
            let is_parent = |i: usize| self.experts.has_slices(i as u32);
            st.duel.configure(&st.size, &is_parent, has_slices);
        }
        if !st.duel.running() {
            return;
        }

        let mut duel = std::mem::take(&mut st.duel);
        {
            let view: &ExpertState = st;
            let len = s.len();
            // A jump over a quarter of a long pass: the stream is not
            // following the order (random acquires), so the tensors passed
            // were not used and are not replayed.
            let steps = match new.saturating_sub(cur) {
                jump if jump > (len / 4).max(64) => 0,
                jump => jump,
            };
            for at in new + 1 - steps..=new {
                let t = s.ids[(at % len) as usize];
                if self.experts.has_slices(t) || !duel.samples(t) {
                    continue;
                }
                let distance = |v, e| self.eviction_key(view, s, v, ((at + 1) % len, at), e);
                duel.access(t, &view.size, &distance);
            }
            if let Some(id) = slice.filter(|&id| duel.samples(id)) {
                let distance = |v, e| self.eviction_key(view, s, v, ((new + 1) % len, new), e);
                duel.access(id, &view.size, &distance);
            }
        }
        st.duel = duel;
    }

    fn schedule(&self) -> Option<&Schedule> {
        let p = self.current.load(Ordering::Acquire);
        // SAFETY: every pointer stored in `current` comes from a Box kept in
        // `kept`, which is only emptied when the policy is dropped.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Installs `schedule` with the cursor at index `at`.
    fn install(&self, schedule: Option<Schedule>, at: u64) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        match schedule {
            Some(mut s) => {
                s.serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
                let len = s.len();
                let mut boxed = Box::new(s);
                let ptr: *mut Schedule = &mut *boxed;
                kept.push(boxed);
                // Keep the cursor moving forward so read-ahead sees a change.
                let base = (self.cursor.load(Ordering::Relaxed) / len + 2) * len;
                self.cursor.store(base + at, Ordering::Relaxed);
                self.current.store(ptr, Ordering::Release);
            }
            None => self.current.store(std::ptr::null_mut(), Ordering::Release),
        }
    }

    /// Learns from an access at schedule key `id`; `slice` when it was an
    /// expert's (the experts of one merged tensor are one step of the pass).
    fn observe(&self, id: u32, slice: bool) {
        if slice && self.learner_last.load(Ordering::Relaxed) == id {
            return;
        }
        let mut l = self.learner.lock().unwrap_or_else(|e| e.into_inner());
        if !self.learning.load(Ordering::Relaxed) || (slice && l.last() == Some(id)) {
            return;
        }
        self.learner_last.store(id, Ordering::Relaxed);
        match l.observe(id) {
            Learned::Nothing => {}
            Learned::Cycle(ids, at) => {
                self.learning.store(false, Ordering::Relaxed);
                self.install(Some(Schedule::new(ids, false, 0)), at);
            }
            // No cycle where a pass would have shown one: keep the order
            // guessed from the names, or frequency admission.
            Learned::GaveUp => self.learning.store(false, Ordering::Relaxed),
        }
    }

    /// Ranks experts by `ranking` alone, with no shadow simulations
    /// (`None`: the shadows choose, the default). For comparisons.
    pub fn fix_ranking(&self, ranking: Option<Ranking>) {
        self.experts.lock().duel.fix(ranking);
    }

    /// Installs a schedule guessed from the model's layout; learning goes
    /// on and replaces it with the order the engine really uses.
    pub fn guess(&self, ids: &[u32]) {
        if ids.is_empty() || !self.learn || self.schedule().is_some() {
            return;
        }
        self.install(Some(Schedule::new(ids.to_vec(), false, 0)), ids.len() as u64 - 1);
    }

    fn forget_learned(&self) {
        self.install(None, 0);
        if self.learn {
            self.learner.lock().unwrap_or_else(|e| e.into_inner()).restart();
            self.learner_last.store(u32::MAX, Ordering::Relaxed);
            self.learning.store(true, Ordering::Relaxed);
        }
    }
}

impl EvictionPolicy for ScheduleAware {
    fn on_access(&self, id: u32) {
        let key = self.experts.key(id);
        let slice = key != id;
        if self.learning.load(Ordering::Relaxed) {
            self.observe(key, slice);
        }
        let Some(s) = self.schedule() else {
            self.fallback.on_access(id);
            return;
        };
        if slice {
            // The position moves when the use is applied (in order with
            // the other threads' expert uses).
            self.record(s, id);
            return;
        }
        if self.experts.any() && !self.uses.is_empty() {
            // Expert uses queued so far move the position first.
            let mut st = self.experts.lock();
            self.apply_uses(&mut st);
        }
        let Some((cur, new)) = self.advance(s, key) else {
            return;
        };
        if self.experts.any() {
            // The shadows replay the dense tensors passed.
            self.uses.push(Use {
                what: What::Dense { to: new },
                at: cur,
                schedule: s.serial,
            });
        }
    }

    fn on_hit(&self, id: u32) {
        // With a schedule, a dense hit moves nothing: the position is
        // caught up at the next miss, which is when eviction needs it. This
        // keeps shared writes off the hot path once the order is learned.
        // An expert's hit is queued (its statistics need every use): one
        // push, see `uses.rs`.
        if self.current.load(Ordering::Relaxed).is_null() || self.learning.load(Ordering::Relaxed) {
            self.on_access(id);
        } else if self.experts.parent(id).is_some() {
            if let Some(s) = self.schedule() {
                self.record(s, id);
            }
        }
    }

    fn choose_victim(&self, candidates: &dyn Candidates, incoming: Option<u32>) -> Option<u32> {
        let mut st = self.experts.lock();
        self.apply_uses(&mut st);
        let every = self.every_candidate.load(Ordering::Relaxed);
        let mut chooser = std::mem::take(&mut st.chooser);
        let chosen = self.choose(&mut st, &mut chooser, candidates, incoming, every);
        st.chooser = chooser;
        chosen
    }

    fn on_hint(&self, ids: &[u32]) {
        if !self.experts.any() {
            return;
        }
        let Some(s) = self.schedule() else { return };
        // Queued like the uses (no lock: engine threads hint every layer),
        // and applied before anything that reads them.
        let at = self.cursor.load(Ordering::Relaxed);
        for &id in ids.iter().filter(|&&id| self.experts.parent(id).is_some()) {
            self.uses.push(Use {
                what: What::Hint {
                    id,
                    until: at + s.len(),
                },
                at,
                schedule: s.serial,
            });
        }
    }

    fn still_wanted(&self, id: u32) -> bool {
        if self.experts.parent(id).is_none() {
            return true;
        }
        let mut st = self.experts.lock();
        self.apply_uses(&mut st);
        !st.hint_is_stale(id, self.cursor.load(Ordering::Relaxed))
    }

    fn set_sizes(&self, first: u32, sizes: &[u64]) {
        self.experts.lock().set_sizes(first, sizes);
    }

    fn set_budget(&self, budget: u64) {
        self.experts.lock().duel.set_budget(budget);
    }

    fn guess_schedule(&self, ids: &[u32]) {
        self.guess(ids);
    }

    fn set_schedule(&self, ids: &[u32]) {
        if ids.is_empty() {
            self.forget_learned();
            return;
        }
        self.learning.store(false, Ordering::Relaxed);
        let len = ids.len() as u64;
        // The next acquisition is expected to be the schedule's first.
        self.install(Some(Schedule::new(ids.to_vec(), true, 0)), len - 1);
    }

    fn grow(&self, n: usize) {
        self.fallback.grow(n);
        self.experts.grow(n);
    }

    fn set_parent(&self, id: u32, parent: u32) {
        self.experts.set_parent(id, parent);
    }

    fn upcoming(&self, max: usize, out: &mut Vec<u32>) {
        let Some(s) = self.schedule() else { return };
        let index = self.cursor.load(Ordering::Relaxed) % s.len();
        let n = max.min(s.ids.len());
        for step in 1..=n as u64 {
            let id = s.ids[((index + step) % s.len()) as usize];
            // A merged tensor whose experts are paged on their own is not
            // read ahead: the router's hints name the experts to read.
            if !self.experts.has_slices(id) {
                out.push(id);
            }
        }
    }

    fn position(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    fn pass_length(&self) -> u64 {
        self.schedule().map_or(0, |s| s.len())
    }

    fn describe(&self) -> String {
        let order = self.describe_order();
        if !self.experts.any() {
            return order;
        }
        let mut st = self.experts.lock();
        self.apply_uses(&mut st);
        let dropped = match self.uses.dropped() {
            0 => String::new(),
            n => format!(", {n} expert uses and hints not counted (no eviction for a thousand hits)"),
        };
        format!(
            "{order}; experts ranked by {} (shadow duel), {} hinted experts evicted before use{dropped}",
            st.duel.leader().name(),
            st.hinted_evictions
        )
    }
}

impl ScheduleAware {
    /// The victim by the leading ranking (frequency admission while no
    /// order is known), among the evictable candidates; with `incoming`,
    /// only one needed later than it.
    fn choose(
        &self,
        st: &mut ExpertState,
        chooser: &mut super::VictimChooser,
        candidates: &dyn Candidates,
        incoming: Option<u32>,
        every: bool,
    ) -> Option<u32> {
        let Some(s) = self.schedule() else {
            if incoming.is_some() {
                // Nothing is known of the future: a read-ahead evicts nothing.
                return None;
            }
            return chooser
                .choose(candidates, every, u64::MAX, &mut |id| self.fallback.key(id))
                .map(|(id, _)| id);
        };
        // Distances from the slot after the current one: the tensor just
        // acquired is needed again only a full pass later.
        let cursor = self.cursor.load(Ordering::Relaxed);
        let at = ((cursor + 1) % s.len(), cursor);
        let ranking = st.duel.leader();
        if incoming.is_some() && !ranking.knows_the_future() {
            // As the reference policies: a read-ahead evicts nothing.
            return None;
        }
        // The largest key a tensor of the schedule can have: a slice above
        // it wins without looking at them (a tensor outside the schedule,
        // whose key is larger, is then left for a later choice).
        let len = s.len();
        let tensor_keys_below = match ranking {
            Ranking::Frequency => {
                ((u32::MAX as u64 - (cursor / len).min(u32::MAX as u64)) << 32) | u32::MAX as u64
            }
            _ => len + 1,
        };
        let view: &ExpertState = st;
        let mut key = |id: u32| self.eviction_key(view, s, id, at, ranking);
        let (victim, d) = chooser.choose(candidates, every, tensor_keys_below, &mut key)?;
        if let Some(inc) = incoming {
            if d <= key(inc) {
                return None;
            }
        }
        if st.is_hinted(victim, cursor) {
            st.hinted_evictions += 1;
        }
        Some(victim)
    }

    fn describe_order(&self) -> String {
        match self.schedule() {
            Some(s) if s.declared => format!("schedule-aware (declared schedule of {})", s.len()),
            Some(s) if self.learning.load(Ordering::Relaxed) => {
                format!(
                    "schedule-aware (guessed schedule of {}, learning the pass)",
                    s.len()
                )
            }
            Some(s) => format!("schedule-aware (learned schedule of {})", s.len()),
            None if self.learning.load(Ordering::Relaxed) => {
                "frequency admission (learning the pass)".to_owned()
            }
            None => "frequency admission".to_owned(),
        }
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
