//! Eviction candidates: the tensors that hold budget (an indexable set the
//! pager keeps under its eviction mutex, so that no choice walks every
//! tensor of the model), the test of whether one may go now, and the
//! choice of the victim among them.
//!
//! Slices (an MoE model has tens of thousands of expert slices) are all
//! examined while few are resident; once many are, the best slice is
//! looked for among a random sample of them and a small pool of the best
//! candidates earlier samples found (the eviction pool of Redis's
//! approximated LRU): the work per eviction is then the same for a
//! thousand slices and for forty thousand. The file's own tensors (a few
//! hundred to a few thousand, however many experts) are all examined,
//! unless the policy can tell that none of them beats the best slice.

/// Tensors that hold budget, in no particular order, the file's tensors
/// apart from the slices: insert, remove and pick the i-th in O(1).
#[derive(Debug, Clone)]
pub struct ResidentSet {
    /// Ids from this one on are slices.
    first_slice: u32,
    tensors: Vec<u32>,
    slices: Vec<u32>,
    /// Index in its list by id, `ABSENT` when not a member.
    position: Vec<u32>,
}

const ABSENT: u32 = u32::MAX;

impl Default for ResidentSet {
    fn default() -> Self {
        Self::new(u32::MAX)
    }
}

impl ResidentSet {
    /// An empty set in which ids from `first_slice` on are slices.
    pub fn new(first_slice: u32) -> Self {
        ResidentSet {
            first_slice,
            tensors: Vec::new(),
            slices: Vec::new(),
            position: Vec::new(),
        }
    }

    fn list_of(&mut self, id: u32) -> &mut Vec<u32> {
        if id >= self.first_slice {
            &mut self.slices
        } else {
            &mut self.tensors
        }
    }

    /// Adds `id` (nothing if it is a member already).
    pub fn insert(&mut self, id: u32) {
        let i = id as usize;
        if i >= self.position.len() {
            self.position.resize(i + 1, ABSENT);
        }
        if self.position[i] == ABSENT {
            let list = self.list_of(id);
            let at = list.len() as u32;
            list.push(id);
            self.position[i] = at;
        }
    }

    /// Removes `id` (nothing if it is not a member).
    pub fn remove(&mut self, id: u32) {
        let Some(&at) = self.position.get(id as usize) else {
            return;
        };
        if at == ABSENT {
            return;
        }
        let list = self.list_of(id);
        list.swap_remove(at as usize);
        let moved = list.get(at as usize).copied();
        if let Some(moved) = moved {
            self.position[moved as usize] = at;
        }
        self.position[id as usize] = ABSENT;
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: u32) -> bool {
        self.position.get(id as usize).is_some_and(|&p| p != ABSENT)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.tensors.len() + self.slices.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members that are the file's own tensors.
    pub fn tensors(&self) -> &[u32] {
        &self.tensors
    }

    /// The members that are slices.
    pub fn slices(&self) -> &[u32] {
        &self.slices
    }

    /// Every member.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.tensors.iter().chain(&self.slices).copied()
    }
}

/// What a policy is offered when a load needs room.
pub trait Candidates {
    /// The tensors that hold budget (some may be in use, pinned or loading).
    fn resident(&self) -> &ResidentSet;
    /// Whether `id` may be evicted now.
    fn is_evictable(&self, id: u32) -> bool;
}

/// Every member of a set is a candidate (simulations, tests).
#[derive(Debug, Clone, Copy)]
pub struct EveryResident<'a>(pub &'a ResidentSet);

impl Candidates for EveryResident<'_> {
    fn resident(&self) -> &ResidentSet {
        self.0
    }

    fn is_evictable(&self, id: u32) -> bool {
        self.0.contains(id)
    }
}

/// Up to this many resident slices, every one is examined.
pub(crate) const EXAMINE_ALL_UP_TO: usize = 512;
/// Members drawn at random per choice once there are more.
const SAMPLE: usize = 16;
/// The runners-up kept for the next choice.
const POOL: usize = 16;

/// Chooses victims: the candidate with the largest key, among all of them
/// or among a sample and the pool (see the module comment).
#[derive(Debug, Clone)]
pub struct VictimChooser {
    /// Up to this many resident slices, every one is examined.
    examine_all_up_to: usize,
    pool: Vec<u32>,
    rng: u64,
    /// Keys computed so far (the work the choices cost).
    examined: u64,
    seen: Vec<(u32, u64)>,
}

impl Default for VictimChooser {
    fn default() -> Self {
        VictimChooser {
            examine_all_up_to: EXAMINE_ALL_UP_TO,
            pool: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            examined: 0,
            seen: Vec::new(),
        }
    }
}

impl VictimChooser {
    /// A chooser that examines every slice only while at most `n` are
    /// resident.
    pub fn examining_all_up_to(n: usize) -> Self {
        VictimChooser {
            examine_all_up_to: n,
            ..Self::default()
        }
    }

    /// Keys computed so far, over every choice.
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// The evictable candidate with the largest `key` (ties: the last
    /// examined), and its key. Every slice is examined with `every_one` or
    /// while few are resident, else a sample of them and the pool (and
    /// every one only if none of those may go). Every tensor of the file
    /// is examined, unless the best slice's key is above `tensor_keys_below`
    /// (no key of a file tensor reaches that bound).
    pub fn choose(
        &mut self,
        candidates: &dyn Candidates,
        every_one: bool,
        tensor_keys_below: u64,
        key: &mut dyn FnMut(u32) -> u64,
    ) -> Option<(u32, u64)> {
        let set = candidates.resident();
        let slices = set.slices();
        let slice = if every_one || slices.len() <= self.examine_all_up_to {
            self.pool.clear();
            self.best_of(candidates, slices, key)
        } else {
            self.sample_slices(candidates, key)
        };
        if slice.is_some_and(|(_, k)| k >= tensor_keys_below) && !every_one {
            return slice;
        }
        let tensors = self.best_of(candidates, set.tensors(), key);
        match (tensors, slice) {
            (Some(t), Some(s)) => Some(if s.1 >= t.1 { s } else { t }),
            (t, s) => t.or(s),
        }
    }

    /// The best slice among the pool and a sample.
    fn sample_slices(
        &mut self,
        candidates: &dyn Candidates,
        key: &mut dyn FnMut(u32) -> u64,
    ) -> Option<(u32, u64)> {
        let set = candidates.resident();
        let slices = set.slices();
        self.seen.clear();
        for &id in &self.pool {
            if set.contains(id) && candidates.is_evictable(id) {
                self.seen.push((id, key(id)));
            }
        }
        self.pool.clear();
        for _ in 0..SAMPLE {
            let id = slices[(self.next_random() % slices.len() as u64) as usize];
            if !self.seen.iter().any(|&(s, _)| s == id) && candidates.is_evictable(id) {
                self.seen.push((id, key(id)));
            }
        }
        self.examined += self.seen.len() as u64;
        if self.seen.is_empty() {
            // A sample of slices in use or being read: look at them all
            // rather than report that none may go.
            return self.best_of(candidates, slices, key);
        }
        // Largest key first.
        self.seen.sort_by_key(|&(_, k)| std::cmp::Reverse(k));
        let best = self.seen[0];
        self.pool
            .extend(self.seen.iter().skip(1).take(POOL).map(|&(id, _)| id));
        Some(best)
    }

    fn best_of(
        &mut self,
        candidates: &dyn Candidates,
        ids: &[u32],
        key: &mut dyn FnMut(u32) -> u64,
    ) -> Option<(u32, u64)> {
        let mut best: Option<(u32, u64)> = None;
        for &id in ids {
            if !candidates.is_evictable(id) {
                continue;
            }
            self.examined += 1;
            let k = key(id);
            match best {
                Some((_, b)) if b > k => {}
                _ => best = Some((id, k)),
            }
        }
        best
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_inserts_removes_and_indexes_in_constant_time() {
        let mut s = ResidentSet::new(8);
        for id in [5, 1, 9, 1, 12] {
            s.insert(id);
        }
        assert_eq!(s.len(), 4);
        s.remove(5);
        s.remove(5);
        s.remove(9);
        assert!(!s.contains(5) && !s.contains(9) && s.contains(1) && s.contains(12));
        assert_eq!((s.tensors(), s.slices()), (&[1][..], &[12][..]));
    }

    #[test]
    fn tensors_and_few_slices_are_all_examined_and_many_slices_are_sampled() {
        let mut few = ResidentSet::new(50);
        (0..100).for_each(|id| few.insert(id));
        let mut chooser = VictimChooser::default();
        let mut key = |id: u32| id as u64;
        assert_eq!(
            chooser.choose(&EveryResident(&few), false, u64::MAX, &mut key),
            Some((99, 99))
        );
        assert_eq!(chooser.examined(), 100);

        let mut many = ResidentSet::new(0);
        (0..100_000).for_each(|id| many.insert(id));
        let mut chooser = VictimChooser::default();
        let mut best = 0;
        for _ in 0..100 {
            let (id, _) = chooser
                .choose(&EveryResident(&many), false, u64::MAX, &mut key)
                .unwrap();
            best = best.max(id);
            many.remove(id);
        }
        // 100 choices of at most SAMPLE + POOL keys each, and the pool
        // keeps finding large keys.
        assert!(chooser.examined() <= 100 * (SAMPLE + POOL) as u64);
        assert!(best > 95_000, "{best}");
    }

    #[test]
    fn a_sample_of_tensors_that_may_not_go_falls_back_to_every_one() {
        struct OnlyOne<'a>(&'a ResidentSet);
        impl Candidates for OnlyOne<'_> {
            fn resident(&self) -> &ResidentSet {
                self.0
            }
            fn is_evictable(&self, id: u32) -> bool {
                id == 4242
            }
        }
        let mut many = ResidentSet::new(0);
        (0..10_000).for_each(|id| many.insert(id));
        let mut chooser = VictimChooser::default();
        assert_eq!(
            chooser.choose(&OnlyOne(&many), false, u64::MAX, &mut |id| id as u64),
            Some((4242, 4242))
        );
    }
}
