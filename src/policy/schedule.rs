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

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

use super::experts::{ExpertState, Experts, Ranking};
use super::{EvictionPolicy, FrequencyAdmission};

/// Steps of the second pass that must match the first before a learned
/// cycle is adopted.
const CONFIRM: usize = 8;
/// Longest acquire stream kept while looking for a cycle.
const MAX_TRACE: usize = 1 << 20;

struct Schedule {
    ids: Vec<u32>,
    /// For each id, its positions in `ids`, ascending.
    positions: Vec<Vec<u32>>,
    declared: bool,
    /// Misses on tensors outside the schedule in the current pass (learned
    /// schedules only).
    mismatches: AtomicU64,
}

impl Schedule {
    fn new(ids: Vec<u32>, declared: bool) -> Self {
        let n = ids.iter().map(|&i| i as usize + 1).max().unwrap_or(0);
        let mut positions = vec![Vec::new(); n];
        for (pos, &id) in ids.iter().enumerate() {
            positions[id as usize].push(pos as u32);
        }
        Schedule {
            ids,
            positions,
            declared,
            mismatches: AtomicU64::new(0),
        }
    }

    fn len(&self) -> u64 {
        self.ids.len() as u64
    }

    /// Slots since the latest use of `id` at or before index `at` (in
    /// 0..len), or None if the schedule never uses it.
    fn age(&self, id: u32, at: u64) -> Option<u64> {
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
    fn distance(&self, id: u32, from: u64) -> Option<u64> {
        let p = self.positions.get(id as usize)?;
        let first = *p.first()? as u64;
        let i = p.partition_point(|&x| (x as u64) < from);
        Some(match p.get(i) {
            Some(&x) => x as u64 - from,
            None => first + self.len() - from,
        })
    }
}

#[derive(Default)]
struct Learner {
    trace: Vec<u32>,
    /// Positions j > 0 where the stream met its first id again, still matching.
    candidates: Vec<usize>,
}

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
    experts: Experts,
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
            learner: Mutex::new(Learner::default()),
            experts: {
                let e = Experts::new();
                e.grow(n);
                e
            },
        }
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
                match st.last_cursor.get(id as usize).copied().unwrap_or(0) {
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
                    st.uses.get(id as usize).copied().unwrap_or(0)
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
            let steps = new.saturating_sub(cur).min(len);
            for at in new + 1 - steps..=new {
                let t = s.ids[(at % len) as usize];
                if self.experts.has_slices(t) || !duel.samples(t) {
                    continue;
                }
                let size = view.size.get(t as usize).copied().unwrap_or(0);
                let distance = |v, e| self.eviction_key(view, s, v, ((at + 1) % len, at), e);
                duel.access(t, size, &distance);
            }
            if let Some(id) = slice.filter(|&id| duel.samples(id)) {
                let size = view.size.get(id as usize).copied().unwrap_or(0);
                let distance = |v, e| self.eviction_key(view, s, v, ((new + 1) % len, new), e);
                duel.access(id, size, &distance);
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
            Some(s) => {
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
        let mut l = self.learner.lock().unwrap_or_else(|e| e.into_inner());
        if !self.learning.load(Ordering::Relaxed) || (slice && l.trace.last() == Some(&id)) {
            return;
        }
        let j = l.trace.len();
        l.trace.push(id);
        if j > 0 && id == l.trace[0] {
            l.candidates.push(j);
        }
        let trace = std::mem::take(&mut l.trace);
        let mut adopted = None;
        l.candidates.retain(|&c| {
            let k = j - c;
            if trace[j] != trace[k] {
                return false;
            }
            if adopted.is_none() && k + 1 >= CONFIRM.min(c) {
                adopted = Some((c, k));
            }
            true
        });
        l.trace = trace;
        if let Some((c, k)) = adopted {
            let ids = l.trace[..c].to_vec();
            *l = Learner::default();
            self.learning.store(false, Ordering::Relaxed);
            self.install(Some(Schedule::new(ids, false)), k as u64);
        } else if l.trace.len() >= MAX_TRACE {
            // No cycle in a million acquisitions: stay with frequency admission.
            *l = Learner::default();
            self.learning.store(false, Ordering::Relaxed);
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
        self.install(Some(Schedule::new(ids.to_vec(), false)), ids.len() as u64 - 1);
    }

    fn forget_learned(&self) {
        self.install(None, 0);
        if self.learn {
            *self.learner.lock().unwrap_or_else(|e| e.into_inner()) = Learner::default();
            self.learning.store(true, Ordering::Relaxed);
        }
    }
}

impl EvictionPolicy for ScheduleAware {
    fn on_access(&self, id: u32) {
        let key = self.experts.key(id);
        if self.learning.load(Ordering::Relaxed) {
            self.observe(key, key != id);
        }
        let Some(s) = self.schedule() else {
            self.fallback.on_access(id);
            return;
        };
        let len = s.len();
        let cur = self.cursor.load(Ordering::Relaxed);
        let index = cur % len;
        let new = if s.ids[index as usize] == key {
            cur
        } else {
            let Some(d) = s.distance(key, (index + 1) % len) else {
                // Not in the schedule: for a learned one, the stream has left the
                // cycle if this happens for a quarter of a pass.
                if !s.declared && (s.mismatches.fetch_add(1, Ordering::Relaxed) + 1) * 4 > len {
                    self.forget_learned();
                }
                return;
            };
            let new = cur + 1 + d;
            self.cursor.store(new, Ordering::Relaxed);
            if !s.declared && new / len != cur / len {
                s.mismatches.store(0, Ordering::Relaxed);
            }
            new
        };
        if !self.experts.any() {
            return;
        }
        let mut st = self.experts.lock();
        let closed = key != id && st.used(id, new / len, new);
        self.feed_shadows(&mut st, s, (cur, new), (key != id).then_some(id));
        if closed {
            st.duel.pass_closed();
        }
    }

    fn on_hit(&self, id: u32) {
        // With a schedule, hits move nothing: the position is caught up at
        // the next miss, which is when eviction needs it. This keeps shared
        // writes off the hot path once the order is learned.
        // Expert slices always report: their reuse statistics need every use.
        if self.current.load(Ordering::Relaxed).is_null()
            || self.learning.load(Ordering::Relaxed)
            || self.experts.parent(id).is_some()
        {
            self.on_access(id);
        }
    }

    fn choose_victim(&self, candidates: &mut dyn Iterator<Item = u32>, incoming: Option<u32>) -> Option<u32> {
        let Some(s) = self.schedule() else {
            return self.fallback.choose_victim(candidates, incoming);
        };
        // Distances from the slot after the current one: the tensor just
        // acquired is needed again only a full pass later.
        let cursor = self.cursor.load(Ordering::Relaxed);
        let at = ((cursor + 1) % s.len(), cursor);
        let mut st = self.experts.lock();
        let ranking = st.duel.leader();
        if incoming.is_some() && !ranking.knows_the_future() {
            // As the reference policies: a read-ahead evicts nothing.
            return None;
        }
        let (victim, hinted) = {
            let view: &ExpertState = &st;
            let distance = |id: u32| self.eviction_key(view, s, id, at, ranking);
            let (victim, d) = candidates.map(|id| (id, distance(id))).max_by_key(|&(_, d)| d)?;
            if let Some(inc) = incoming {
                if d <= distance(inc) {
                    return None;
                }
            }
            (victim, view.is_hinted(victim, cursor))
        };
        if hinted {
            st.hinted_evictions += 1;
        }
        Some(victim)
    }

    fn on_hint(&self, ids: &[u32]) {
        if !self.experts.any() {
            return;
        }
        let Some(s) = self.schedule() else { return };
        let until = self.cursor.load(Ordering::Relaxed) + s.len();
        let mut st = self.experts.lock();
        for &id in ids.iter().filter(|&&id| self.experts.parent(id).is_some()) {
            st.hint(id, until);
        }
    }

    fn still_wanted(&self, id: u32) -> bool {
        if self.experts.parent(id).is_none() {
            return true;
        }
        let cursor = self.cursor.load(Ordering::Relaxed);
        !self.experts.lock().hint_is_stale(id, cursor)
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
        self.install(Some(Schedule::new(ids.to_vec(), true)), len - 1);
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

    fn describe(&self) -> String {
        let order = self.describe_order();
        if !self.experts.any() {
            return order;
        }
        let st = self.experts.lock();
        format!(
            "{order}; experts ranked by {} (shadow duel), {} hinted experts evicted before use",
            st.duel.leader().name(),
            st.hinted_evictions
        )
    }
}

impl ScheduleAware {
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
mod tests {
    use super::*;

    #[test]
    fn declared_schedule_evicts_furthest_next_use() {
        let p = ScheduleAware::new(4, false);
        p.set_schedule(&[0, 1, 2, 3]);
        p.on_access(0);
        p.on_access(1);
        // At index 1: next uses are 2 (+1), 3 (+2), 0 (+3).
        assert_eq!(p.choose_victim(&mut [0u32, 2, 3].into_iter(), None), Some(0));
        assert_eq!(p.choose_victim(&mut [2u32, 3].into_iter(), None), Some(3));
        // A read-ahead of 2 may not evict 3?  3 is needed after 2: it may.
        assert_eq!(p.choose_victim(&mut [3u32].into_iter(), Some(2)), Some(3));
        // A read-ahead of 3 may not evict 2, needed sooner.
        assert_eq!(p.choose_victim(&mut [2u32].into_iter(), Some(3)), None);
        let mut up = Vec::new();
        p.upcoming(3, &mut up);
        assert_eq!(up, [2, 3, 0]);
    }

    #[test]
    fn cycle_is_learned_after_the_second_pass_confirms_it() {
        let p = ScheduleAware::new(20, true);
        let pass: Vec<u32> = (0..20).collect();
        for &id in &pass {
            p.on_access(id);
        }
        assert!(p.describe().contains("learning"), "{}", p.describe());
        for &id in &pass[..CONFIRM] {
            p.on_access(id);
        }
        assert!(
            p.describe().contains("learned schedule of 20"),
            "{}",
            p.describe()
        );
        let mut up = Vec::new();
        p.upcoming(2, &mut up);
        assert_eq!(up, [CONFIRM as u32, CONFIRM as u32 + 1]);
    }

    #[test]
    fn tied_embeddings_do_not_fool_the_learner() {
        // token_embd (0) is used first and again as the output head.
        let mut pass = vec![0u32];
        pass.extend(1..12);
        pass.push(0);
        let p = ScheduleAware::new(12, true);
        for _ in 0..2 {
            for &id in &pass {
                p.on_access(id);
            }
        }
        assert!(
            p.describe().contains("learned schedule of 13"),
            "{}",
            p.describe()
        );
    }

    #[test]
    fn learned_schedule_is_dropped_when_the_stream_changes() {
        let p = ScheduleAware::new(40, true);
        let pass: Vec<u32> = (0..10).collect();
        for _ in 0..2 {
            for &id in &pass {
                p.on_access(id);
            }
        }
        assert!(p.describe().contains("learned"));
        let mut x = 7u32;
        for _ in 0..30 {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            p.on_access(10 + (x >> 16) % 30);
        }
        assert!(!p.describe().contains("learned"), "{}", p.describe());
    }

    #[test]
    fn guessed_schedule_reads_ahead_and_the_learned_one_replaces_it() {
        let p = ScheduleAware::new(6, true);
        p.guess(&[0, 1, 2, 3, 4, 5]);
        let mut up = Vec::new();
        p.upcoming(2, &mut up);
        assert_eq!(up, [0, 1]);
        // The engine's real order differs inside the "block".
        let pass = [0u32, 2, 1, 3, 5, 4];
        for _ in 0..2 {
            for &id in &pass {
                p.on_access(id);
            }
        }
        assert!(p.describe().contains("learned schedule of 6"), "{}", p.describe());
        // Adopted at the last access (tensor 4): the engine's order follows.
        let mut up = Vec::new();
        p.upcoming(3, &mut up);
        assert_eq!(up, [0, 2, 1]);
    }

    /// Two dense tensors (0, 1) and a merged tensor 2 split into experts 3..7.
    fn moe_policy() -> ScheduleAware {
        let p = ScheduleAware::new(7, false);
        for e in 3..7 {
            p.set_parent(e, 2);
        }
        p.set_sizes(0, &[10; 7]);
        p.set_budget(30);
        p.set_schedule(&[0, 1, 2]);
        p
    }

    #[test]
    fn a_hinted_expert_is_kept_until_used_and_its_queued_read_then_dropped() {
        let p = moe_policy();
        p.on_access(0);
        p.on_access(1);
        p.on_hint(&[5]);
        assert!(p.still_wanted(5));
        // Expert 5 is needed within this block: anything else goes first,
        // and a read-ahead of it may evict them.
        assert_eq!(p.choose_victim(&mut [3u32, 5].into_iter(), None), Some(3));
        assert_eq!(p.choose_victim(&mut [3u32].into_iter(), Some(5)), Some(3));
        p.on_access(5);
        // Used: a read the hint queued is stale, and 5 is an expert like the others.
        assert!(!p.still_wanted(5));
        assert!(p.still_wanted(4), "never hinted: a plain prefetch stands");
        assert!(
            p.describe().contains("0 hinted experts evicted"),
            "{}",
            p.describe()
        );
    }

    #[test]
    fn fixed_reference_rankings_behave_as_the_references() {
        let p = moe_policy();
        p.fix_ranking(Some(Ranking::Lru));
        for id in [0, 1, 3, 4] {
            p.on_access(id);
        }
        // LRU: dense 0 is the oldest; a read-ahead evicts nothing.
        assert_eq!(p.choose_victim(&mut [0u32, 1, 3, 4].into_iter(), None), Some(0));
        assert_eq!(p.choose_victim(&mut [0u32, 1, 3, 4].into_iter(), Some(1)), None);
        p.fix_ranking(Some(Ranking::Frequency));
        // Frequency: experts used once go before dense tensors used every
        // pass; among them the newest (4) goes first.
        assert_eq!(p.choose_victim(&mut [0u32, 1, 3, 4].into_iter(), None), Some(4));
        p.fix_ranking(Some(Ranking::Reuse));
        // Belady on the schedule: dense 0 is next, 1 after it; the experts
        // are needed at 2 only with some chance, so they go first.
        assert!(matches!(
            p.choose_victim(&mut [0u32, 1, 3, 4].into_iter(), None),
            Some(3 | 4)
        ));
    }

    #[test]
    fn the_learner_sees_a_merged_tensor_once_however_many_experts_run() {
        let p = ScheduleAware::new(10, true);
        for e in 4..10 {
            p.set_parent(e, 3);
        }
        // Dense 0..3, then two of the six experts of 3, different each token.
        for token in 0..3u32 {
            for id in [0, 1, 2, 4 + token % 6, 4 + (token + 2) % 6] {
                p.on_access(id);
            }
        }
        assert!(p.describe().contains("learned schedule of 4"), "{}", p.describe());
    }

    #[test]
    fn without_a_schedule_frequency_admission_decides() {
        let p = ScheduleAware::new(4, false);
        for id in [0, 1, 2, 0] {
            p.on_access(id);
        }
        assert_eq!(p.choose_victim(&mut [0u32, 1, 2].into_iter(), None), Some(2));
    }
}
