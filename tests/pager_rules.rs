//! The rules the core keeps, each proved on a small synthetic file.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Barrier;
use std::time::Duration;

use common::{assert_pattern, even_table, pattern_file, probe, probe_pager};
use layerpager::{Error, Pager, PagerOptions, PolicyKind, Status};

fn table_pager(n: usize, size: u64, options: PagerOptions) -> (tempfile::TempDir, Pager) {
    let (dir, path) = pattern_file(n * size as usize);
    let pager = Pager::open_table(&path, &even_table(n, size), options).unwrap();
    (dir, pager)
}

/// Exact counting needs no background readers: they would turn misses
/// into prefetch hits at their own pace; and exact charges need plain
/// reads (O_DIRECT, the default under a budget, charges whole pages).
fn budget(bytes: u64) -> PagerOptions {
    PagerOptions {
        budget_bytes: bytes,
        policy: PolicyKind::Lru,
        prefetch_threads: 0,
        io_mode: layerpager::IoMode::Pread,
        ..Default::default()
    }
}

#[test]
fn lru_sweep_larger_than_budget_counts_exactly() {
    let (_d, pager) = table_pager(4, 1000, budget(3000));
    for id in [0, 1, 2, 0, 3, 0, 1] {
        let a = pager.acquire(id).unwrap();
        assert_pattern(a.bytes(), id as usize * 1000);
        drop(a);
        pager.check_invariants().unwrap();
    }
    // 0 1 2 miss; 0 hit; 3 miss evicts 1; 0 hit; 1 miss evicts 2.
    let s = pager.stats();
    assert_eq!((s.hits, s.misses, s.evictions), (2, 5, 2));
    assert_eq!(s.bytes_read, 5000);
    assert_eq!(s.resident_bytes, 3000);
    assert_eq!(s.resident_count, 3);
    assert_eq!(s.peak_resident_bytes, 3000);
    assert_eq!(s.in_use_bytes, 0);
}

#[test]
fn tensor_in_use_is_never_evicted() {
    let (_d, pager) = table_pager(3, 1000, budget(2000));
    let a0 = pager.acquire(0).unwrap();
    let a1 = pager.acquire(1).unwrap();
    let err = pager.acquire(2).unwrap_err();
    assert_eq!(err.status(), Status::PAGER_ERR_BUDGET);
    assert!(err.to_string().contains("2000 in use"), "{err}");
    assert_pattern(a0.bytes(), 0);
    drop(a1);
    let a2 = pager.acquire(2).unwrap();
    assert_pattern(a2.bytes(), 2000);
    assert_pattern(a0.bytes(), 0);
    assert_eq!(pager.stats().in_use_bytes, 2000);
    pager.check_invariants().unwrap();
}

#[test]
fn pinned_tensor_is_never_evicted() {
    let (_d, pager) = table_pager(4, 1000, budget(2000));
    pager.pin(0).unwrap();
    pager.pin(0).unwrap();
    for id in [1, 2, 3, 1, 2, 3] {
        drop(pager.acquire(id).unwrap());
    }
    let s = pager.stats();
    assert_eq!(s.pinned_bytes, 1000);
    drop(pager.acquire(0).unwrap());
    assert_eq!(pager.stats().misses, 6, "pinned tensor is a hit");
    pager.unpin(0).unwrap();
    assert_eq!(
        pager.unpin(0).unwrap_err().status(),
        Status::PAGER_ERR_INVALID_ARGUMENT
    );
    pager.check_invariants().unwrap();
}

#[test]
fn tensor_larger_than_budget_is_refused() {
    let (_d, pager) = table_pager(2, 1000, budget(999));
    let err = pager.acquire(0).unwrap_err();
    assert_eq!(err.status(), Status::PAGER_ERR_BUDGET);
    assert!(err.to_string().contains("more than the whole budget"), "{err}");
    assert_eq!(pager.stats().resident_bytes, 0);
    pager.check_invariants().unwrap();
}

#[test]
fn waiting_acquire_times_out() {
    let options = PagerOptions {
        wait_ms: 30,
        ..budget(1000)
    };
    let (_d, pager) = table_pager(2, 1000, options);
    let _held = pager.acquire(0).unwrap();
    let err = pager.acquire(1).unwrap_err();
    assert_eq!(err.status(), Status::PAGER_ERR_TIMEOUT);
    assert!(pager.stats().wait_ns >= 30_000_000);
    pager.check_invariants().unwrap();
}

#[test]
fn waiting_acquire_gets_budget_released_by_another_thread() {
    let options = PagerOptions {
        wait_ms: 10_000,
        ..budget(1000)
    };
    let (_d, pager) = table_pager(2, 1000, options);
    let held = pager.acquire(0).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let a = pager.acquire(1).unwrap();
            assert_pattern(a.bytes(), 1000);
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        waiter.join().unwrap();
    });
    pager.check_invariants().unwrap();
}

#[test]
fn set_budget_shrinks_and_refuses_below_in_use() {
    let (_d, pager) = table_pager(4, 1000, budget(4000));
    for id in 0..4 {
        drop(pager.acquire(id).unwrap());
    }
    let held = pager.acquire(3).unwrap();
    pager.set_budget(2000).unwrap();
    assert_eq!(pager.stats().resident_bytes, 2000);
    assert_eq!(pager.stats().budget_bytes, 2000);
    let err = pager.set_budget(500).unwrap_err();
    assert_eq!(err.status(), Status::PAGER_ERR_BUDGET);
    assert_eq!(pager.stats().budget_bytes, 2000);
    drop(held);
    pager.set_budget(0).unwrap();
    for id in 0..4 {
        drop(pager.acquire(id).unwrap());
    }
    assert_eq!(pager.stats().resident_bytes, 4000);
    pager.check_invariants().unwrap();
}

#[test]
fn tickets_refuse_double_release_stale_copy_and_forgery() {
    let (_d, pager) = table_pager(2, 100, budget(0));
    let t = pager.acquire_ticket(0).unwrap();
    let copy = t;
    pager.release_ticket(t.id, t.ticket).unwrap();
    let again = pager.release_ticket(copy.id, copy.ticket).unwrap_err();
    assert_eq!(again.status(), Status::PAGER_ERR_INVALID_HANDLE);
    let t2 = pager.acquire_ticket(0).unwrap();
    // The stale copy must not release the new acquisition of the same tensor.
    assert_eq!(
        pager.release_ticket(copy.id, copy.ticket).unwrap_err().status(),
        Status::PAGER_ERR_INVALID_HANDLE
    );
    assert_eq!(pager.outstanding(), 1);
    assert_eq!(
        pager.release_ticket(0, 0).unwrap_err().status(),
        Status::PAGER_ERR_INVALID_HANDLE
    );
    assert_eq!(
        pager.release_ticket(1, t2.ticket).unwrap_err().status(),
        Status::PAGER_ERR_INVALID_HANDLE,
        "a ticket of tensor 0 does not release tensor 1"
    );
    assert_eq!(
        pager.release_ticket(7, t2.ticket).unwrap_err().status(),
        Status::PAGER_ERR_INVALID_HANDLE
    );
    pager.release_ticket(t2.id, t2.ticket).unwrap();
    assert_eq!(pager.outstanding(), 0);
    pager.check_invariants().unwrap();
}

#[test]
fn many_tickets_on_one_tensor_use_the_overflow_table() {
    let (_d, pager) = table_pager(1, 100, budget(0));
    let tickets: Vec<_> = (0..20).map(|_| pager.acquire_ticket(0).unwrap()).collect();
    let mut seen: Vec<u64> = tickets.iter().map(|t| t.ticket).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
    assert_eq!(pager.outstanding(), 20);
    for t in &tickets {
        pager.release_ticket(t.id, t.ticket).unwrap();
        assert_eq!(
            pager.release_ticket(t.id, t.ticket).unwrap_err().status(),
            Status::PAGER_ERR_INVALID_HANDLE
        );
    }
    assert_eq!(pager.outstanding(), 0);
}

#[test]
fn closed_pager_refuses_calls_but_keeps_acquired_bytes() {
    let (_d, pager) = table_pager(2, 1000, budget(0));
    let a = pager.acquire(0).unwrap();
    let t = pager.acquire_ticket(1).unwrap();
    pager.close();
    assert_eq!(pager.acquire(1).unwrap_err(), Error::Closed);
    assert_eq!(pager.find("t0").unwrap_err(), Error::Closed);
    assert_eq!(pager.pin(0).unwrap_err(), Error::Closed);
    assert_pattern(a.bytes(), 0);
    pager.release_ticket(t.id, t.ticket).unwrap();
    drop(a);
    assert_eq!(pager.outstanding(), 0);
}

#[test]
fn bad_ids_are_invalid_arguments() {
    let (_d, pager) = table_pager(2, 10, budget(0));
    for r in [
        pager.acquire(2).map(|_| ()),
        pager.pin(9),
        pager.unpin(2),
        pager.prefetch(5),
    ] {
        assert_eq!(r.unwrap_err().status(), Status::PAGER_ERR_INVALID_ARGUMENT);
    }
    assert_eq!(
        pager.set_schedule(&[0, 1, 2]).unwrap_err().status(),
        Status::PAGER_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        pager.find("nope").unwrap_err().status(),
        Status::PAGER_ERR_NOT_FOUND
    );
}

#[test]
fn concurrent_misses_of_one_tensor_read_it_once() {
    let p = probe(4000, 100);
    let pager = probe_pager(&p, 4, 1000, budget(0));
    let barrier = Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                barrier.wait();
                let a = pager.acquire(2).unwrap();
                assert_pattern(a.bytes(), 2000);
            });
        }
    });
    assert_eq!(p.reads.load(Ordering::SeqCst), 1);
    let s = pager.stats();
    assert_eq!(s.bytes_read, 1000);
    assert_eq!(s.hits + s.misses, 8);
    pager.check_invariants().unwrap();
}

#[test]
fn failed_load_reaches_every_waiter_and_the_next_acquire_retries() {
    let p = probe(4000, 100);
    p.fail_with.store(libc::EIO as usize, Ordering::SeqCst);
    let pager = probe_pager(&p, 4, 1000, budget(0));
    let barrier = Barrier::new(4);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                barrier.wait();
                let err = pager.acquire(1).unwrap_err();
                assert_eq!(err.status(), Status::PAGER_ERR_IO);
                assert!(err.to_string().contains("tensor 1 't1'"), "{err}");
            });
        }
    });
    assert_eq!(pager.stats().resident_bytes, 0);
    pager.check_invariants().unwrap();
    p.fail_with.store(0, Ordering::SeqCst);
    let a = pager.acquire(1).unwrap();
    assert_pattern(a.bytes(), 1000);
}

#[test]
fn prefetched_tensor_counts_a_prefetch_hit() {
    let p = probe(4000, 0);
    let options = PagerOptions {
        prefetch_threads: 1,
        ..budget(0)
    };
    let pager = probe_pager(&p, 4, 1000, options);
    pager.prefetch(3).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pager.stats().resident_count == 0 {
        assert!(std::time::Instant::now() < deadline, "prefetch never landed");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(pager.acquire(3).unwrap());
    drop(pager.acquire(3).unwrap());
    let s = pager.stats();
    assert_eq!((s.hits, s.misses, s.prefetch_hits), (2, 0, 1));
}

#[test]
fn slices_are_their_own_pageable_units() {
    let (_d, pager) = table_pager(2, 4000, budget(3000));
    let first = pager.split_experts(1, 4).unwrap();
    assert_eq!(first, 2);
    assert_eq!(pager.tensor_count(), 6);
    let half = pager.add_slice(0, 100, 50).unwrap();
    assert_eq!(half, 6);
    for e in 0..4 {
        let a = pager.acquire(first + e).unwrap();
        assert_eq!(a.bytes().len(), 1000);
        assert_pattern(a.bytes(), 4000 + e as usize * 1000);
    }
    assert_pattern(pager.acquire(half).unwrap().bytes(), 100);
    assert_eq!(pager.info(first + 3).unwrap().name, "t1#3");
    assert_eq!(
        pager.add_slice(0, 3990, 11).unwrap_err().status(),
        Status::PAGER_ERR_OUT_OF_BOUNDS
    );
    assert_eq!(
        pager.split_experts(0, 3).unwrap_err().status(),
        Status::PAGER_ERR_INVALID_ARGUMENT
    );
    pager.check_invariants().unwrap();
}

#[test]
fn schedule_aware_policy_beats_lru_on_a_cyclic_sweep() {
    let run = |policy: PolicyKind, declare: bool| {
        let (_d, pager) = table_pager(
            10,
            1000,
            PagerOptions {
                budget_bytes: 5000,
                policy,
                prefetch_threads: 0,
                // 1000-byte tensors: O_DIRECT would charge each two pages.
                io_mode: layerpager::IoMode::Pread,
                ..Default::default()
            },
        );
        if declare {
            pager.set_schedule(&(0..10).collect::<Vec<_>>()).unwrap();
        }
        for _ in 0..3 {
            for id in 0..10 {
                drop(pager.acquire(id).unwrap());
            }
        }
        pager.stats().bytes_read
    };
    assert_eq!(run(PolicyKind::Lru, false), 30_000, "LRU re-reads everything");
    // Lower bound: M + (P-1)(M-B) = 10000 + 2 * 5000.
    assert_eq!(run(PolicyKind::Schedule, true), 20_000);
}

#[test]
fn threads_hammering_one_pager_keep_every_rule() {
    let options = PagerOptions {
        wait_ms: 5,
        prefetch_threads: 2,
        ..budget(6000)
    };
    let (_d, pager) = table_pager(16, 1000, options);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pager = &pager;
            let stop = &stop;
            s.spawn(move || {
                let mut x = t * 7919 + 1;
                let mut next = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for _ in 0..3000 {
                    let id = (next() % 16) as u32;
                    match next() % 10 {
                        0 => {
                            let _ = pager.pin(id);
                            let _ = pager.unpin(id);
                        }
                        1 => {
                            let _ = pager.prefetch(id);
                        }
                        2 if t == 0 => {
                            let _ = pager.set_budget(4000 + (next() % 4) * 1000);
                        }
                        _ => match pager.acquire(id) {
                            Ok(a) => assert_pattern(a.bytes(), id as usize * 1000),
                            Err(e) => assert!(
                                matches!(e.status(), Status::PAGER_ERR_BUDGET | Status::PAGER_ERR_TIMEOUT),
                                "{e}"
                            ),
                        },
                    }
                    pager.check_invariants().unwrap();
                }
                stop.store(true, Ordering::Relaxed);
            });
        }
    });
    pager.check_invariants().unwrap();
    assert_eq!(pager.outstanding(), 0);
}

#[test]
fn auto_policy_learns_the_cycle_without_a_declared_schedule() {
    let (_d, pager) = table_pager(
        40,
        1000,
        PagerOptions {
            budget_bytes: 20_000,
            // 1000-byte tensors: O_DIRECT would charge each two pages.
            io_mode: layerpager::IoMode::Pread,
            ..Default::default()
        },
    );
    for _ in 0..3 {
        for id in 0..40 {
            drop(pager.acquire(id).unwrap());
            pager.check_invariants().unwrap();
        }
    }
    // Lower bound: M + (P-1)(M-B) = 40000 + 2 * 20000.
    let read = pager.stats().bytes_read;
    assert!(read <= 80_000 * 115 / 100, "read {read}, bound 80000");
}

#[test]
fn read_ahead_follows_the_schedule_within_the_budget() {
    let p = probe(40_000, 1);
    let options = PagerOptions {
        budget_bytes: 20_000,
        prefetch_threads: 2,
        ..Default::default()
    };
    let pager = probe_pager(&p, 40, 1000, options);
    pager.set_schedule(&(0..40).collect::<Vec<_>>()).unwrap();
    for _ in 0..3 {
        for id in 0..40u32 {
            let a = pager.acquire(id).unwrap();
            assert_pattern(a.bytes(), id as usize * 1000);
            // Simulated compute, long enough for a read to land.
            std::thread::sleep(Duration::from_millis(2));
            drop(a);
            pager.check_invariants().unwrap();
        }
    }
    let s = pager.stats();
    assert!(s.prefetch_hits > 20, "{s:?}");
    assert!(s.peak_resident_bytes <= 20_000);
    // The window adds at most a share of what does not fit per pass.
    assert!(s.bytes_read <= 80_000 * 110 / 100, "{s:?}");
}

#[test]
fn waiters_of_a_stalled_read_time_out_and_the_read_still_lands() {
    let p = probe(4000, 400);
    let options = PagerOptions {
        wait_ms: 50,
        ..budget(0)
    };
    let pager = probe_pager(&p, 4, 1000, options);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let a = pager.acquire(1).unwrap();
            assert_pattern(a.bytes(), 1000);
        });
        std::thread::sleep(Duration::from_millis(50));
        let e = pager.acquire(1).unwrap_err();
        assert_eq!(e.status(), Status::PAGER_ERR_TIMEOUT);
        assert!(e.to_string().contains("still being read"), "{e}");
        reader.join().unwrap();
    });
    assert_eq!(p.reads.load(Ordering::SeqCst), 1);
    drop(pager.acquire(1).unwrap());
    pager.check_invariants().unwrap();
}

#[test]
fn read_copies_a_range_without_making_the_tensor_resident() {
    let (_d, pager) = table_pager(4, 1000, budget(2000));
    let mut row = [0u8; 100];
    pager.read(2, 300, &mut row).unwrap();
    assert_pattern(&row, 2300);
    let s = pager.stats();
    assert_eq!((s.resident_bytes, s.bytes_read, s.misses), (0, 100, 0));
    // From the resident copy when there is one: no read.
    let a = pager.acquire(1).unwrap();
    pager.read(1, 0, &mut row).unwrap();
    assert_pattern(&row, 1000);
    assert_eq!(pager.stats().bytes_read, 1100);
    drop(a);
    let e = pager.read(1, 950, &mut row).unwrap_err();
    assert_eq!(e.status(), Status::PAGER_ERR_OUT_OF_BOUNDS);
    assert_eq!(
        pager.read(9, 0, &mut row).unwrap_err().status(),
        Status::PAGER_ERR_INVALID_ARGUMENT
    );
    pager.check_invariants().unwrap();
}

#[test]
fn the_default_io_mode_keeps_the_page_cache_only_where_it_presses_nothing() {
    let (_d, path) = pattern_file(64 * 4096);
    let table = even_table(64, 4096);
    let describe = |budget_bytes: u64| {
        let options = PagerOptions {
            budget_bytes,
            prefetch_threads: 0,
            ..Default::default()
        };
        Pager::open_table(&path, &table, options).unwrap().describe()
    };
    // No budget: plain reads. A budget the file fits in: read once, and
    // the copy in the page cache dropped (the budget holds the tensors).
    assert!(
        describe(0).contains("io pread through the page cache,"),
        "{}",
        describe(0)
    );
    let line = describe(1 << 20);
    assert!(line.contains("io pread, page cache dropped behind"), "{line}");
    // A budget smaller than this small file, with memory to spare beside
    // it: the page cache serves later passes (the memory-limit tests see
    // O_DIRECT chosen inside a tight cgroup).
    let line = describe(64 << 10);
    assert!(line.contains("fits in memory beside the budget"), "{line}");
}

#[test]
fn readers_auto_scales_with_the_cores_only_where_reads_copy_from_the_page_cache() {
    let (_d, path) = pattern_file(64 * 4096);
    let table = even_table(64, 4096);
    let open = |io_mode, budget_bytes| {
        let options = PagerOptions {
            budget_bytes,
            io_mode,
            prefetch_threads: layerpager::pager::READERS_AUTO,
            ..Default::default()
        };
        Pager::open_table(&path, &table, options).unwrap().describe()
    };
    let cores = std::thread::available_parallelism().unwrap().get() as u32;
    let cached = (cores / 2).clamp(1, 8);
    let says = |n: u32| format!(" {n} reader{},", if n == 1 { "" } else { "s" });
    // No budget: the file stays in the page cache; copying bounds reads.
    let line = open(layerpager::IoMode::Auto, 0);
    assert!(line.contains(&says(cached)), "{line}");
    // Reads that go to the device (O_DIRECT, or dropping behind): one.
    let line = open(layerpager::IoMode::Direct, 64 << 10);
    assert!(line.contains(&says(1)), "{line}");
    let line = open(layerpager::IoMode::Pread, 64 << 10);
    assert!(line.contains(&says(1)), "{line}");
    // Any other count over 64 is refused.
    let options = PagerOptions {
        prefetch_threads: 65,
        ..Default::default()
    };
    assert!(Pager::open_table(&path, &table, options).is_err());
}

/// Pages of the file at `path` that are in the page cache now.
fn cached_pages(path: &std::path::Path) -> usize {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a read-only shared mapping of a file this test owns, unmapped
    // below; mincore only reports on it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let mut v = vec![0u8; len.div_ceil(4096)];
        assert_eq!(libc::mincore(p, len, v.as_mut_ptr()), 0);
        libc::munmap(p, len);
        v.iter().filter(|&&b| b & 1 == 1).count()
    }
}

#[test]
fn reads_that_drop_behind_leave_none_of_the_file_in_the_page_cache() {
    // Tensors of 10,000 bytes: each starts and ends inside a page that it
    // shares with a neighbour (a model of small tensors left those pages
    // behind, more than a memory limit's few MiB beside the budget).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("data.bin");
    let (n, size) = (200usize, 10_000u64);
    let file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut &file, &vec![7u8; n * size as usize]).unwrap();
    file.sync_all().unwrap();
    let table = even_table(n, size);
    for readers in [0, 1, 2] {
        layerpager::source::drop_page_cache(&path).unwrap();
        let options = PagerOptions {
            budget_bytes: n as u64 * size / 4,
            prefetch_threads: readers,
            io_mode: layerpager::source::IoMode::Pread,
            ..Default::default()
        };
        let pager = Pager::open_table(&path, &table, options).unwrap();
        assert!(
            pager.describe().contains("dropped behind"),
            "{}",
            pager.describe()
        );
        for _ in 0..3 {
            for id in 0..n as u32 {
                drop(pager.acquire(id).unwrap());
            }
        }
        drop(pager);
        let cached = cached_pages(&path);
        assert_eq!(
            cached, 0,
            "{cached} pages of the file left in the page cache ({readers} readers)"
        );
    }
}

/// A GGUF file of `n` F32 tensors of `floats` each (no metadata), written
/// by hand: the header is read through the page cache when it opens.
fn f32_gguf(path: &std::path::Path, n: usize, floats: usize) {
    let mut h: Vec<u8> = Vec::new();
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(n as u64).to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    for i in 0..n {
        let name = format!("blk.{i}.weight");
        h.extend_from_slice(&(name.len() as u64).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&(floats as u64).to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes()); // F32
        h.extend_from_slice(&((i * floats * 4) as u64).to_le_bytes());
    }
    h.resize(h.len().next_multiple_of(32), 0);
    h.resize(h.len() + n * floats * 4, 1);
    std::fs::write(path, &h).unwrap();
    std::fs::File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn a_budget_leaves_none_of_the_file_in_the_page_cache_header_included() {
    // The header is read through the page cache, and the kernel reads
    // ahead behind it (6 MiB of a 1.33 GiB model here, charged to the
    // engine's memory cgroup and counted by no budget): under a budget,
    // none of it may stay, whether tensors are read with O_DIRECT or
    // through the page cache dropping behind.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("model.gguf");
    let (n, floats) = (64usize, 16_384usize);
    f32_gguf(&path, n, floats);
    for io_mode in [layerpager::IoMode::Direct, layerpager::IoMode::Pread] {
        layerpager::source::drop_page_cache(&path).unwrap();
        let options = PagerOptions {
            budget_bytes: (n * floats * 4 / 2) as u64,
            io_mode,
            ..Default::default()
        };
        let pager = Pager::open_gguf(&path, options).unwrap();
        for _ in 0..2 {
            for id in 0..n as u32 {
                drop(pager.acquire(id).unwrap());
            }
        }
        let cached = cached_pages(&path);
        assert_eq!(
            cached,
            0,
            "{cached} pages of the file in the page cache ({})",
            pager.describe()
        );
    }
}
