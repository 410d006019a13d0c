//! An engine's allocator (pinned host memory, slow to allocate) is called
//! for a few large chunks that tensors are carved from, not once per miss,
//! and the chunks stay inside the budget.

mod common;

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{assert_pattern, pattern};
use layerpager::source::{Allocator, MemorySource};
use layerpager::{Pager, PagerOptions, TensorIndex};

/// What a counting allocator saw; its address is the callbacks' user data.
#[derive(Default)]
struct Calls {
    allocs: AtomicUsize,
    frees: AtomicUsize,
}

fn counting_allocator(calls: &Arc<Calls>) -> Arc<Allocator> {
    Arc::new(Allocator::new(
        Arc::as_ptr(calls) as *mut c_void,
        engine_alloc,
        engine_free,
    ))
}

unsafe extern "C" fn engine_alloc(user: *mut c_void, size: usize, alignment: usize) -> *mut c_void {
    // SAFETY: user is the Calls the test keeps alive longer than the pager.
    unsafe { &*(user as *const Calls) }
        .allocs
        .fetch_add(1, Ordering::SeqCst);
    let mut p = std::ptr::null_mut();
    // SAFETY: posix_memalign with a valid out-pointer and a power-of-two alignment.
    unsafe { libc::posix_memalign(&mut p, alignment.max(8), size) };
    p
}

unsafe extern "C" fn engine_free(user: *mut c_void, p: *mut c_void, _: usize) {
    // SAFETY: as in engine_alloc.
    unsafe { &*(user as *const Calls) }
        .frees
        .fetch_add(1, Ordering::SeqCst);
    // SAFETY: p came from posix_memalign in engine_alloc.
    unsafe { libc::free(p) }
}

#[test]
fn an_engine_allocator_is_called_a_few_times_per_sweep_not_once_per_miss() {
    // llama-shaped sizes: per block two norms, four attention and three
    // feed-forward matrices; an embedding and an output at the ends.
    let block = [
        4096u64,
        256 << 10,
        64 << 10,
        64 << 10,
        256 << 10,
        4096,
        704 << 10,
        704 << 10,
        704 << 10,
    ];
    let mut table = vec![("token_embd".to_owned(), 0u64, 4u64 << 20)];
    let mut end = 4u64 << 20;
    for b in 0..16 {
        for (i, &size) in block.iter().enumerate() {
            table.push((format!("blk.{b}.t{i}"), end, size));
            end += size;
        }
    }
    table.push(("output".to_owned(), end, 4 << 20));
    end += 4 << 20;
    let data: Vec<u8> = (0..end as usize).map(pattern).collect();
    let index = TensorIndex::from_table(&table, end).unwrap();
    let calls = Arc::new(Calls::default());
    let sweep = |allocator: Option<Arc<Allocator>>| {
        // No readers: the comparison of bytes read is exact, not timing.
        let options = PagerOptions {
            budget_bytes: end / 2,
            prefetch_threads: 0,
            allocator,
            ..Default::default()
        };
        let pager =
            Pager::with_source(Box::new(MemorySource::new(data.clone())), index.clone(), options).unwrap();
        for _ in 0..4 {
            for (id, (_, offset, _)) in table.iter().enumerate() {
                let a = pager.acquire(id as u32).unwrap();
                assert_pattern(a.bytes(), *offset as usize);
            }
            pager.check_invariants().unwrap();
        }
        let s = pager.stats();
        assert!(s.peak_resident_bytes <= end / 2, "{s:?}");
        s
    };
    let ours = sweep(None);
    let engine = sweep(Some(counting_allocator(&calls)));
    let allocs = calls.allocs.load(Ordering::SeqCst);
    assert!(
        allocs <= 8,
        "{allocs} allocator calls for {} misses",
        engine.misses
    );
    assert_eq!(allocs, calls.frees.load(Ordering::SeqCst), "every chunk freed");
    // Carving from chunks reads no more than the pager's own buffers do.
    assert!(
        engine.bytes_read <= ours.bytes_read * 105 / 100,
        "{} vs {}",
        engine.bytes_read,
        ours.bytes_read
    );
}

#[test]
fn allocator_calls_stay_few_at_every_budget_and_reader_count() {
    let sizes = [
        4096u64,
        3 << 20,
        1 << 20,
        1 << 20,
        3 << 20,
        4096,
        8 << 20,
        8 << 20,
        8 << 20,
    ];
    let mut table = Vec::new();
    let mut end = 0u64;
    for b in 0..6 {
        for (i, &size) in sizes.iter().enumerate() {
            table.push((format!("blk.{b}.t{i}"), end, size));
            end += size;
        }
    }
    let data: Vec<u8> = (0..end as usize).map(pattern).collect();
    let index = TensorIndex::from_table(&table, end).unwrap();
    for share in [25u64, 50, 75] {
        for readers in [0u32, 2] {
            let calls = Arc::new(Calls::default());
            let options = PagerOptions {
                budget_bytes: end * share / 100,
                prefetch_threads: readers,
                allocator: Some(counting_allocator(&calls)),
                ..Default::default()
            };
            let pager = Pager::with_source(Box::new(MemorySource::new(data.clone())), index.clone(), options)
                .unwrap();
            for _ in 0..3 {
                for (id, (_, offset, _)) in table.iter().enumerate() {
                    assert_pattern(pager.acquire(id as u32).unwrap().bytes(), *offset as usize);
                }
            }
            let s = pager.stats();
            assert!(s.peak_resident_bytes <= end * share / 100, "{share}%: {s:?}");
            pager.check_invariants().unwrap();
            let n = calls.allocs.load(Ordering::SeqCst);
            assert!(
                n <= 16,
                "{share}%, {readers} readers: {n} allocator calls for {} misses",
                s.misses
            );
            drop(pager);
            assert_eq!(calls.frees.load(Ordering::SeqCst), n, "every chunk freed");
        }
    }
}
