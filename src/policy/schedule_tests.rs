//! Tests of the schedule-aware policy (`schedule.rs`): the order declared,
//! guessed and learned, Belady's rule on it, experts, hints and rankings.

use super::super::order::CONFIRM;
use super::super::tests::set_of;
use super::super::EveryResident;
use super::*;

#[test]
fn declared_schedule_evicts_furthest_next_use() {
    let p = ScheduleAware::new(4, false);
    p.set_schedule(&[0, 1, 2, 3]);
    p.on_access(0);
    p.on_access(1);
    // At index 1: next uses are 2 (+1), 3 (+2), 0 (+3).
    assert_eq!(
        p.choose_victim(&EveryResident(&set_of(&[0, 2, 3])), None),
        Some(0)
    );
    assert_eq!(p.choose_victim(&EveryResident(&set_of(&[2, 3])), None), Some(3));
    // A read-ahead of 2 may not evict 3?  3 is needed after 2: it may.
    assert_eq!(p.choose_victim(&EveryResident(&set_of(&[3])), Some(2)), Some(3));
    // A read-ahead of 3 may not evict 2, needed sooner.
    assert_eq!(p.choose_victim(&EveryResident(&set_of(&[2])), Some(3)), None);
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
    assert_eq!(p.choose_victim(&EveryResident(&set_of(&[3, 5])), None), Some(3));
    assert_eq!(p.choose_victim(&EveryResident(&set_of(&[3])), Some(5)), Some(3));
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
    assert_eq!(
        p.choose_victim(&EveryResident(&set_of(&[0, 1, 3, 4])), None),
        Some(0)
    );
    assert_eq!(
        p.choose_victim(&EveryResident(&set_of(&[0, 1, 3, 4])), Some(1)),
        None
    );
    p.fix_ranking(Some(Ranking::Frequency));
    // Frequency: experts used once go before dense tensors used every
    // pass; among them the newest (4) goes first.
    assert_eq!(
        p.choose_victim(&EveryResident(&set_of(&[0, 1, 3, 4])), None),
        Some(4)
    );
    p.fix_ranking(Some(Ranking::Reuse));
    // Belady on the schedule: dense 0 is next, 1 after it; the experts
    // are needed at 2 only with some chance, so they go first.
    assert!(matches!(
        p.choose_victim(&EveryResident(&set_of(&[0, 1, 3, 4])), None),
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
    assert_eq!(
        p.choose_victim(&EveryResident(&set_of(&[0, 1, 2])), None),
        Some(2)
    );
}
