//! A read-ahead is a guess; a demand is a fact. Each test here is one way
//! the background readers used to cost a demand (a spurious budget error, a
//! stall, bytes past the budget, a forged release, reads nobody asked for),
//! reproduced deterministically with a slow callback source.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_pattern, even_table, pattern, probe, probe_pager, probe_table_pager, Probe};
use layerpager::source::MemorySource;
use layerpager::{Pager, PagerOptions, Status, TensorIndex};

/// A pager over a probe whose every read takes `delay_ms`.
fn slow_pager(n: usize, size: u64, delay_ms: u64, options: PagerOptions) -> (Arc<Probe>, Pager) {
    let slow = probe(n * size as usize, delay_ms);
    let pager = probe_pager(&slow, n, size, options);
    (slow, pager)
}

/// Waits until `cond` holds, at most 10 s.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(1));
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn demand_takes_the_budget_back_from_read_aheads_in_flight() {
    for wait_ms in [0, 1000] {
        let options = PagerOptions {
            budget_bytes: 2 * MIB,
            prefetch_threads: 2,
            wait_ms,
            ..Default::default()
        };
        let (slow, pager) = slow_pager(3, MIB, 300, options);
        pager.prefetch(1).unwrap();
        pager.prefetch(2).unwrap();
        wait_until("both read-aheads in flight", || {
            slow.reads.load(Ordering::SeqCst) == 2
        });
        let started = Instant::now();
        let a = pager
            .acquire(0)
            .unwrap_or_else(|e| panic!("wait_ms {wait_ms}: {e}"));
        let took = started.elapsed();
        assert_pattern(a.bytes(), 0);
        // The demand waited for a read-ahead to end (under 300 ms), then read
        // its own tensor (300 ms): not for wait_ms.
        assert!(
            took < Duration::from_millis(900),
            "wait_ms {wait_ms}: acquire took {took:?}"
        );
        let s = pager.stats();
        assert!(s.peak_resident_bytes <= 2 * MIB, "{s:?}");
        drop(a);
        pager.check_invariants().unwrap();
    }
}

#[test]
fn budget_error_means_pinned_and_in_use_leave_no_room() {
    let options = PagerOptions {
        budget_bytes: 2 * MIB,
        prefetch_threads: 2,
        ..Default::default()
    };
    let (_slow, pager) = slow_pager(3, MIB, 50, options);
    let a = pager.acquire(0).unwrap();
    pager.pin(1).unwrap();
    let e = pager.acquire(2).unwrap_err();
    assert_eq!(e.status(), Status::PAGER_ERR_BUDGET);
    assert!(e.to_string().contains("1048576 pinned, 1048576 in use"), "{e}");
    drop(a);
    drop(pager.acquire(2).unwrap());
    pager.check_invariants().unwrap();
}

#[test]
fn budget_waiter_wakes_when_the_read_ahead_ends() {
    // One reader holds the whole budget with a read-ahead; the demand must
    // be served once that read ends, not after wait_ms.
    let options = PagerOptions {
        budget_bytes: MIB,
        prefetch_threads: 1,
        wait_ms: 5000,
        ..Default::default()
    };
    let (slow, pager) = slow_pager(2, MIB, 300, options);
    pager.prefetch(1).unwrap();
    wait_until("the read-ahead in flight", || {
        slow.reads.load(Ordering::SeqCst) == 1
    });
    let started = Instant::now();
    let a = pager.acquire(0).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    assert_pattern(a.bytes(), 0);
}

#[test]
fn threads_and_readers_never_fail_or_stall_on_read_ahead_budget() {
    // Four engine threads sweep a model at twice the largest tensor with two
    // readers: each thread holds one tensor at a time, so two threads in
    // use can leave no room (a fair budget error), but a read-ahead never
    // may; with wait_ms every acquire succeeds.
    let options = PagerOptions {
        budget_bytes: 4 * 4096,
        prefetch_threads: 2,
        wait_ms: 10_000,
        ..Default::default()
    };
    let (_slow, pager) = slow_pager(16, 4096, 1, options);
    pager.set_schedule(&(0..16).collect::<Vec<_>>()).unwrap();
    let slowest = std::sync::Mutex::new(Duration::ZERO);
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (pager, slowest) = (&pager, &slowest);
            s.spawn(move || {
                for pass in 0..5u32 {
                    for k in 0..16u32 {
                        let id = (k + t * 4 + pass) % 16;
                        let started = Instant::now();
                        let a = pager.acquire(id).unwrap();
                        let took = started.elapsed();
                        let mut m = slowest.lock().unwrap();
                        *m = (*m).max(took);
                        drop(m);
                        assert_pattern(a.bytes(), id as usize * 4096);
                    }
                }
            });
        }
    });
    let slowest = *slowest.lock().unwrap();
    // Reads take 1 ms; with four threads at most three are ahead of anyone.
    assert!(
        slowest < Duration::from_millis(2000),
        "slowest acquire {slowest:?}"
    );
    let s = pager.stats();
    assert!(s.peak_resident_bytes <= 4 * 4096, "{s:?}");
    pager.check_invariants().unwrap();
}

#[test]
fn zero_size_tensors_hold_nothing_and_charge_nothing() {
    let table: Vec<(String, u64, u64)> = (0..12u64)
        .map(|i| {
            let size = if i % 3 == 0 { 0 } else { 16384 };
            (format!("t{i}"), i * 16384, size)
        })
        .collect();
    let source = MemorySource::new((0..12 * 16384).map(pattern).collect());
    let index = TensorIndex::from_table(&table, 12 * 16384).unwrap();
    let options = PagerOptions {
        budget_bytes: 65536,
        prefetch_threads: 0,
        ..Default::default()
    };
    let pager = Pager::with_source(Box::new(source), index, options).unwrap();
    let first = pager.add_slice(1, 0, 0).unwrap();
    for _ in 0..4 {
        for id in 0..13u32 {
            let a = pager.acquire(id).unwrap();
            assert_eq!(a.as_ptr() as usize % 64, 0, "tensor {id} is aligned");
            if id == first {
                assert!(a.bytes().is_empty());
            }
            drop(a);
            pager.check_invariants().unwrap();
            let s = pager.stats();
            assert!(s.resident_bytes <= 65536, "{s:?}");
        }
    }
    assert!(pager.stats().peak_resident_bytes <= 65536);
}

#[test]
fn a_ticket_released_under_another_tensors_id_is_refused() {
    let source = MemorySource::new((0..4000).map(pattern).collect());
    let index = TensorIndex::from_table(&even_table(4, 1000), 4000).unwrap();
    let options = PagerOptions {
        budget_bytes: 3000,
        prefetch_threads: 0,
        ..Default::default()
    };
    let pager = Pager::with_source(Box::new(source), index, options).unwrap();
    let a = pager.acquire_ticket(0).unwrap();
    let b = pager.acquire_ticket(1).unwrap();
    let forged = pager.release_ticket(b.id, a.ticket).unwrap_err();
    assert_eq!(forged.status(), Status::PAGER_ERR_INVALID_HANDLE);
    // b is still held: a sweep must not evict it and reuse its memory.
    for id in [2, 3, 2, 3] {
        drop(pager.acquire(id).unwrap());
    }
    // SAFETY: b is held, so its bytes stay valid.
    let bytes = unsafe { std::slice::from_raw_parts(b.data, b.size as usize) };
    assert_pattern(bytes, 1000);
    pager.release_ticket(a.id, a.ticket).unwrap();
    pager.release_ticket(b.id, b.ticket).unwrap();
    assert_eq!(pager.outstanding(), 0);
    pager.check_invariants().unwrap();
}

#[test]
fn opening_reads_nothing_until_a_pass_starts_and_then_a_bounded_window() {
    // A llama-shaped name set, so that a schedule is guessed at open.
    let n = 96u64;
    let size = 2 * MIB;
    let table: Vec<(String, u64, u64)> = (0..n)
        .map(|i| (format!("blk.{i}.ffn_up.weight"), i * size, size))
        .collect();
    let source = MemorySource::new(vec![7u8; (n * size) as usize]);
    let index = TensorIndex::from_table(&table, n * size).unwrap();
    let options = PagerOptions {
        prefetch_threads: 4,
        ..Default::default()
    };
    let pager = Pager::with_source(Box::new(source), index, options).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pager.stats().resident_bytes, 0, "read before anything was asked");
    drop(pager.acquire(0).unwrap());
    std::thread::sleep(Duration::from_millis(500));
    let s = pager.stats();
    // The tensor acquired, plus a window of 64 MiB that each of the four
    // readers may overshoot by the tensor it was starting.
    assert!(s.resident_bytes <= size + (64 << 20) + 4 * size, "{s:?}");
    assert!(s.resident_bytes > size, "no read-ahead at all: {s:?}");
}

#[test]
fn read_ahead_gives_up_a_kept_tensor_to_hold_its_window() {
    // 400 tensors of 1,000 and 2,700 bytes in turn (the sizes of an MoE
    // model's expert slices, scaled down), the pass declared, at 75%.
    let sizes: Vec<u64> = (0..400).map(|i| if i % 2 == 0 { 1000 } else { 2700 }).collect();
    let mut table = Vec::new();
    let mut at = 0;
    for (i, &size) in sizes.iter().enumerate() {
        table.push((format!("t{i}"), at, size));
        at += size;
    }
    let slow = probe(at as usize, 0);
    let options = PagerOptions {
        budget_bytes: at * 3 / 4,
        prefetch_threads: 1,
        ..Default::default()
    };
    let pager = probe_table_pager(&slow, &table, options);
    let order: Vec<u32> = (0..400).collect();
    pager.set_schedule(&order).unwrap();
    // Two passes settle what is kept; the third stops in its streamed part.
    let stop = 300;
    for pass in 0..3 {
        for &id in order.iter().take(if pass < 2 { 400 } else { stop + 1 }) {
            let a = pager.acquire(id).unwrap();
            assert_pattern(a.bytes(), table[id as usize].1 as usize);
        }
    }
    // A budget of 40% leaves the pass more to stream (444,000 bytes): a
    // read-ahead window of 13,875 bytes, where it held 5,781. Making room
    // evicts what was streamed (needed last); the read-ahead then has
    // nothing streamed it may take (a tensor of 2,700 bytes is more than
    // twice one of 1,000), and reads on only by giving up kept tensors, as
    // far as what streams stays within 1/40 of 444,000 bytes: five or six
    // tensors ahead.
    slow.furthest.store(0, Ordering::SeqCst);
    pager.set_budget(at * 2 / 5).unwrap();
    let ahead = table[stop + 5].1 + table[stop + 5].2;
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.furthest.load(Ordering::SeqCst) < ahead {
        assert!(
            Instant::now() < deadline,
            "the reader stopped at byte {} of the file, short of {ahead}",
            slow.furthest.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    pager.check_invariants().unwrap();
    // The engine then finds them resident: no miss.
    let read_ahead = pager.stats();
    for &id in &order[stop + 1..stop + 6] {
        drop(pager.acquire(id).unwrap());
    }
    let s = pager.stats();
    assert_eq!(s.misses, read_ahead.misses, "{s:?}");
    assert!(s.peak_resident_bytes <= at * 3 / 4, "{s:?}");
}
