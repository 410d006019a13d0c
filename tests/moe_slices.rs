//! Experts of merged `*_exps` tensors (written by llama.cpp's gguf package)
//! become pageable units of their own: each expert's bytes are the
//! reference reader's tensor cut at the expert boundary, the budget counts
//! each resident unit once, and router hints read experts ahead.

mod common;

use common::{expected, fixture_dir};
use layerpager::{Pager, PagerOptions, PolicyKind};

#[test]
fn split_experts_match_the_reference_reader_in_every_io_mode() {
    for model in ["moe_q4k.gguf", "moe_q8_align64.gguf"] {
        let want = expected(model);
        for io_mode in [
            layerpager::IoMode::Pread,
            layerpager::IoMode::Direct,
            layerpager::IoMode::Mmap,
        ] {
            let pager = Pager::open_gguf(
                fixture_dir().join(model),
                PagerOptions {
                    io_mode,
                    prefetch_threads: 0,
                    ..Default::default()
                },
            )
            .unwrap();
            for (parent, w) in want.iter().enumerate().filter(|(_, w)| w.name.contains("_exps")) {
                let n_experts = *w.dims.last().unwrap() as u32;
                let first = pager.split_experts(parent as u32, n_experts).unwrap();
                let each = w.size as usize / n_experts as usize;
                for e in 0..n_experts {
                    let a = pager.acquire(first + e).unwrap();
                    assert_eq!(a.as_ptr() as usize % 64, 0);
                    let lo = e as usize * each;
                    assert!(
                        a.bytes() == &w.bytes[lo..lo + each],
                        "{model} {io_mode:?} {} expert {e}",
                        w.name
                    );
                    let info = pager.info(first + e).unwrap();
                    assert_eq!(info.name, format!("{}#{e}", w.name));
                    assert_eq!(info.dims[info.dims.len() - 1], 1);
                }
                // The parent whole is still right, read on its own.
                assert!(pager.acquire(parent as u32).unwrap().bytes() == w.bytes.as_slice());
                pager.check_invariants().unwrap();
            }
        }
    }
}

#[test]
fn slices_and_parent_are_charged_once_each_within_the_budget() {
    let want = expected("moe_q4k.gguf");
    let parent = want
        .iter()
        .position(|w| w.name == "blk.0.ffn_up_exps.weight")
        .unwrap() as u32;
    let size = want[parent as usize].size;
    let pager = Pager::open_gguf(
        fixture_dir().join("moe_q4k.gguf"),
        PagerOptions {
            budget_bytes: size + size / 2,
            policy: PolicyKind::Lru,
            prefetch_threads: 0,
            // Charges of the slices' sizes in whole pages (O_DIRECT, the
            // default under a budget, also rounds them out to its blocks).
            io_mode: layerpager::IoMode::Pread,
            ..Default::default()
        },
    )
    .unwrap();
    let first = pager.split_experts(parent, 4).unwrap();
    let e0 = pager.acquire(first).unwrap();
    let e1 = pager.acquire(first + 1).unwrap();
    assert_eq!(pager.stats().resident_bytes, 2 * common::charge_of(size / 4));
    drop((e0, e1));
    // The parent needs the whole budget minus nothing held: the experts go.
    let whole = pager.acquire(parent).unwrap();
    let s = pager.stats();
    assert!(s.resident_bytes <= size + size / 2, "{s:?}");
    assert_eq!(s.in_use_bytes, size);
    drop(whole);
    pager.check_invariants().unwrap();
}

#[test]
fn router_hints_read_the_chosen_experts_ahead() {
    let want = expected("moe_q4k.gguf");
    let parent = want
        .iter()
        .position(|w| w.name == "blk.1.ffn_gate_exps.weight")
        .unwrap() as u32;
    let pager = Pager::open_gguf(
        fixture_dir().join("moe_q4k.gguf"),
        PagerOptions {
            prefetch_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let first = pager.split_experts(parent, 4).unwrap();
    pager.hint(&[first + 2, first + 3]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pager.stats().resident_count < 2 {
        assert!(std::time::Instant::now() < deadline, "hints were not read");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(pager.acquire(first + 2).unwrap());
    drop(pager.acquire(first + 3).unwrap());
    let s = pager.stats();
    assert_eq!((s.misses, s.prefetch_hits), (0, 2), "{s:?}");
}
