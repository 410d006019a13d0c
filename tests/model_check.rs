//! Model-checked accounting: random sequences of acquire / release / pin /
//! unpin / prefetch / set_budget / set_schedule / close, run against a simple
//! reference model, with every rule checked after every step: resident bytes
//! within the budget, in-use and pinned tensors resident, stats exact, bytes
//! correct, and the pager's own invariants.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{charge_of, pattern};
use layerpager::{Pager, PagerOptions, PolicyKind, Status, TicketedAcquisition};
use proptest::prelude::*;

/// Sizes no two of which are within a quarter of each other, so that a
/// reused buffer is always charged exactly its tensor's size.
const SIZES: [u64; 8] = [1000, 3000, 10_000, 1000, 3000, 10_000, 1000, 3000];

#[derive(Debug, Clone)]
enum Op {
    Acquire(u32),
    Release(usize),
    Pin(u32),
    Unpin(u32),
    Prefetch(u32),
    SetBudget(u64),
    SetSchedule(Vec<u32>),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u32..9; // 8 is out of range on purpose
    prop_oneof![
        6 => id.clone().prop_map(Op::Acquire),
        4 => (0usize..8).prop_map(Op::Release),
        1 => id.clone().prop_map(Op::Pin),
        1 => id.clone().prop_map(Op::Unpin),
        1 => id.clone().prop_map(Op::Prefetch),
        1 => prop_oneof![Just(0u64), Just(5000), Just(12_000), Just(25_000)].prop_map(Op::SetBudget),
        1 => proptest::collection::vec(0u32..8, 0..10).prop_map(Op::SetSchedule),
        1 => Just(Op::Close),
    ]
}

/// What the pager should be.
#[derive(Default)]
struct Model {
    held: Vec<TicketedAcquisition>,
    pinned: BTreeSet<u32>,
    budget: u64,
    closed: bool,
    acquires_counted: u64,
}

impl Model {
    /// Charges that cannot be evicted: distinct held or pinned tensors.
    fn locked(&self) -> BTreeMap<u32, u64> {
        self.held
            .iter()
            .map(|t| t.id)
            .chain(self.pinned.iter().copied())
            .map(|id| (id, charge_of(SIZES[id as usize])))
            .collect()
    }

    /// Whether loading `id` must fail for lack of budget.
    fn cannot_fit(&self, id: u32) -> bool {
        let locked = self.locked();
        if self.budget == 0 || locked.contains_key(&id) {
            return false;
        }
        locked.values().sum::<u64>() + charge_of(SIZES[id as usize]) > self.budget
    }
}

fn check(pager: &Pager, model: &Model, offsets: &[u64]) {
    pager.check_invariants().unwrap();
    if model.closed {
        return;
    }
    let s = pager.stats();
    if model.budget != 0 {
        assert!(s.resident_bytes <= model.budget, "{s:?}");
    }
    let in_use: u64 = model
        .held
        .iter()
        .map(|t| t.id)
        .collect::<BTreeSet<_>>()
        .iter()
        .map(|&id| SIZES[id as usize])
        .sum();
    assert_eq!(s.in_use_bytes, in_use, "{s:?}");
    let pinned: u64 = model.pinned.iter().map(|&id| SIZES[id as usize]).sum();
    assert_eq!(s.pinned_bytes, pinned, "{s:?}");
    assert_eq!(s.hits + s.misses, model.acquires_counted, "{s:?}");
    assert_eq!(s.budget_bytes, model.budget);
    for t in &model.held {
        // SAFETY: the acquisition is held, so its bytes stay valid.
        let bytes = unsafe { std::slice::from_raw_parts(t.data, t.size as usize) };
        let base = offsets[t.id as usize] as usize;
        assert!(
            bytes.iter().enumerate().all(|(i, &b)| b == pattern(base + i)),
            "tensor {}",
            t.id
        );
    }
}

fn run(ops: Vec<Op>, policy: PolicyKind) {
    let total: u64 = SIZES.iter().sum();
    let (_dir, path) = common::pattern_file(total as usize);
    let mut offsets = Vec::new();
    let mut table = Vec::new();
    let mut at = 0u64;
    for (i, &size) in SIZES.iter().enumerate() {
        offsets.push(at);
        table.push((format!("blk.{}.t{i}", i / 2), at, size));
        at += size;
    }
    let options = PagerOptions {
        policy,
        prefetch_threads: 0,
        ..Default::default()
    };
    let pager = Pager::open_table(&path, &table, options).unwrap();
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Acquire(id) => {
                let r = pager.acquire_ticket(id);
                if model.closed {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_CLOSED);
                } else if id >= 8 {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_INVALID_ARGUMENT);
                } else {
                    model.acquires_counted += 1;
                    let must_fail = model.cannot_fit(id);
                    match r {
                        Ok(t) => {
                            assert!(!must_fail, "acquire of {id} fit where it cannot");
                            assert_eq!(t.size, SIZES[id as usize]);
                            model.held.push(t);
                        }
                        Err(e) => {
                            assert!(must_fail, "acquire of {id} failed: {e}");
                            assert_eq!(e.status(), Status::PAGER_ERR_BUDGET);
                        }
                    }
                }
            }
            Op::Release(k) => {
                if model.held.is_empty() {
                    assert_eq!(
                        pager.release_ticket(0, 0).unwrap_err().status(),
                        Status::PAGER_ERR_INVALID_HANDLE
                    );
                } else {
                    let t = model.held.remove(k % model.held.len());
                    pager.release_ticket(t.id, t.ticket).unwrap();
                    assert_eq!(
                        pager.release_ticket(t.id, t.ticket).unwrap_err().status(),
                        Status::PAGER_ERR_INVALID_HANDLE
                    );
                }
            }
            Op::Pin(id) => {
                let r = pager.pin(id);
                if model.closed {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_CLOSED);
                } else if id >= 8 {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_INVALID_ARGUMENT);
                } else if model.cannot_fit(id) {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_BUDGET);
                } else {
                    r.unwrap();
                    model.pinned.insert(id);
                }
            }
            Op::Unpin(id) => {
                let r = pager.unpin(id);
                if model.closed {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_CLOSED);
                } else if id >= 8 {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_INVALID_ARGUMENT);
                } else if model.pinned.remove(&id) {
                    r.unwrap();
                } else {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_INVALID_ARGUMENT);
                }
            }
            Op::Prefetch(id) => {
                let r = pager.prefetch(id);
                if model.closed {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_CLOSED);
                } else if id >= 8 {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_INVALID_ARGUMENT);
                } else {
                    r.unwrap();
                }
            }
            Op::SetBudget(b) => {
                let r = pager.set_budget(b);
                if model.closed {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_CLOSED);
                } else if b != 0 && model.locked().values().sum::<u64>() > b {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_BUDGET);
                } else {
                    r.unwrap();
                    model.budget = b;
                }
            }
            Op::SetSchedule(ids) => {
                let r = pager.set_schedule(&ids);
                if model.closed {
                    assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_CLOSED);
                } else {
                    r.unwrap();
                }
            }
            Op::Close => {
                pager.close();
                model.closed = true;
            }
        }
        check(&pager, &model, &offsets);
    }
    for t in model.held.drain(..) {
        pager.release_ticket(t.id, t.ticket).unwrap();
    }
    assert_eq!(pager.outstanding(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn auto_policy_keeps_every_rule(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, PolicyKind::Auto);
    }

    #[test]
    fn lru_policy_keeps_every_rule(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, PolicyKind::Lru);
    }

    #[test]
    fn schedule_policy_keeps_every_rule(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, PolicyKind::Schedule);
    }
}
