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

static ENGINE_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static ENGINE_FREES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn engine_alloc(_: *mut c_void, size: usize, alignment: usize) -> *mut c_void {
    ENGINE_ALLOCS.fetch_add(1, Ordering::SeqCst);
    let mut p = std::ptr::null_mut();
    // SAFETY: posix_memalign with a valid out-pointer and a power-of-two alignment.
    unsafe { libc::posix_memalign(&mut p, alignment.max(8), size) };
    p
}

unsafe extern "C" fn engine_free(_: *mut c_void, p: *mut c_void, _: usize) {
    ENGINE_FREES.fetch_add(1, Ordering::SeqCst);
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
    let allocator = Arc::new(Allocator::new(std::ptr::null_mut(), engine_alloc, engine_free));
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
    let before = ENGINE_ALLOCS.load(Ordering::SeqCst);
    let engine = sweep(Some(allocator));
    let allocs = ENGINE_ALLOCS.load(Ordering::SeqCst) - before;
    assert!(
        allocs <= 8,
        "{allocs} allocator calls for {} misses",
        engine.misses
    );
    assert_eq!(
        ENGINE_ALLOCS.load(Ordering::SeqCst),
        ENGINE_FREES.load(Ordering::SeqCst),
        "every chunk freed"
    );
    // Carving from chunks reads no more than the pager's own buffers do.
    assert!(
        engine.bytes_read <= ours.bytes_read * 105 / 100,
        "{} vs {}",
        engine.bytes_read,
        ours.bytes_read
    );
}
