//! The hit path: acquire + release of a resident tensor by id, through the
//! Rust API and through the C API, beside a plain `HashMap` lookup and the
//! seed pager's design (a mutex around a map and an LRU deque scanned on
//! every hit), measured in the same run. Also two threads hitting at once.

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use layerpager::ffi::{pager_acquire, pager_release, pager_t, pager_tensor_t};
use layerpager::{Pager, PagerOptions};

const TENSORS: u32 = 300;

/// The ids every variant acquires, in the same pseudo-random order.
fn id_sequence() -> Vec<u32> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % TENSORS as u64) as u32
        })
        .collect()
}

fn pager_with_resident_tensors() -> (tempfile::TempDir, Pager, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.bin");
    std::fs::write(&path, vec![7u8; TENSORS as usize * 4096]).unwrap();
    let table: Vec<_> = (0..TENSORS)
        .map(|i| (format!("t{i}"), i as u64 * 4096, 4096u64))
        .collect();
    let pager = Pager::open_table(&path, &table, PagerOptions::default()).unwrap();
    // The steady state of a forward pass: the order is known (declared here;
    // learned after the first pass otherwise).
    pager.set_schedule(&(0..TENSORS).collect::<Vec<_>>()).unwrap();
    for id in 0..TENSORS {
        drop(pager.acquire(id).unwrap());
    }
    (dir, pager, path)
}

/// The seed pager's hit: lock, hash the name, scan the LRU deque to move
/// the entry to the back.
type SeedState = (HashMap<String, Arc<Vec<u8>>>, VecDeque<String>);

struct SeedPager {
    inner: Mutex<SeedState>,
}

impl SeedPager {
    fn new() -> Self {
        let mut map = HashMap::new();
        let mut lru = VecDeque::new();
        for i in 0..TENSORS {
            map.insert(format!("blk.{}.t{i}.weight", i / 9), Arc::new(vec![7u8; 64]));
            lru.push_back(format!("blk.{}.t{i}.weight", i / 9));
        }
        SeedPager {
            inner: Mutex::new((map, lru)),
        }
    }

    fn get(&self, name: &str) -> Arc<Vec<u8>> {
        let mut g = self.inner.lock().unwrap();
        let data = Arc::clone(&g.0[name]);
        if let Some(pos) = g.1.iter().position(|n| n == name) {
            let n = g.1.remove(pos).unwrap();
            g.1.push_back(n);
        }
        data
    }
}

fn hits(c: &mut Criterion) {
    let (_dir, pager, path) = pager_with_resident_tensors();
    let ids = id_sequence();
    let mut group = c.benchmark_group("hit");
    group.bench_function("layerpager rust acquire+release by id", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % ids.len();
            let a = pager.acquire(black_box(ids[i])).unwrap();
            black_box(a.bytes().as_ptr());
        })
    });

    let mut raw: *mut pager_t = std::ptr::null_mut();
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let descs_names: Vec<std::ffi::CString> = (0..TENSORS)
        .map(|i| std::ffi::CString::new(format!("t{i}")).unwrap())
        .collect();
    let descs: Vec<layerpager::ffi::pager_tensor_desc_t> = (0..TENSORS)
        .map(|i| layerpager::ffi::pager_tensor_desc_t {
            name: descs_names[i as usize].as_ptr(),
            offset: i as u64 * 4096,
            size: 4096,
        })
        .collect();
    // SAFETY: valid pointers to live data for the duration of the calls.
    unsafe {
        layerpager::ffi::pager_open_table(
            cpath.as_ptr(),
            descs.as_ptr(),
            descs.len(),
            std::ptr::null(),
            &mut raw,
        );
    }
    let mut t = pager_tensor_t {
        data: std::ptr::null(),
        size: 0,
        id: 0,
        ticket: 0,
    };
    let order: Vec<u32> = (0..TENSORS).collect();
    // SAFETY: raw is an open pager; order outlives the call.
    unsafe { layerpager::ffi::pager_set_schedule(raw, order.as_ptr(), order.len()) };
    for id in 0..TENSORS {
        // SAFETY: raw is an open pager; t is a valid out-struct.
        unsafe {
            pager_acquire(raw, id, &mut t);
            pager_release(raw, &mut t);
        }
    }
    group.bench_function("layerpager C pager_acquire+pager_release", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % ids.len();
            // SAFETY: as above.
            unsafe {
                pager_acquire(raw, black_box(ids[i]), &mut t);
                black_box(t.data);
                pager_release(raw, &mut t);
            }
        })
    });

    let map: HashMap<u32, Vec<u8>> = (0..TENSORS).map(|i| (i, vec![7u8; 64])).collect();
    group.bench_function("reference: HashMap<u32, Vec<u8>> lookup", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(map.get(&black_box(ids[i])).map(|v| v.as_ptr()));
        })
    });

    let seed = SeedPager::new();
    let names: Vec<String> = (0..TENSORS)
        .map(|i| format!("blk.{}.t{i}.weight", i / 9))
        .collect();
    group.bench_function("reference: seed pager (mutex, name hash, LRU deque scan)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(seed.get(&names[ids[i] as usize]).as_ptr());
        })
    });
    group.finish();

    let mut group = c.benchmark_group("hit, one thread on its own tensors (time per op)");
    group.bench_function("reference: HashMap<u32, Vec<u8>> lookup", |b| {
        b.iter_custom(|iters| {
            threads(1, iters, &ids, |id| {
                black_box(map.get(&id).map(|v| v.as_ptr()));
            })
        })
    });
    group.bench_function("layerpager rust acquire+release by id", |b| {
        b.iter_custom(|iters| threads(1, iters, &ids, |id| drop(black_box(pager.acquire(id).unwrap()))))
    });
    group.finish();
    let mut group = c.benchmark_group("hit, two threads at once, each on its own tensors (time per op)");
    group.bench_function("reference: HashMap<u32, Vec<u8>> lookup", |b| {
        b.iter_custom(|iters| {
            threads(2, iters, &ids, |id| {
                black_box(map.get(&id).map(|v| v.as_ptr()));
            })
        })
    });
    group.bench_function("layerpager rust acquire+release by id", |b| {
        b.iter_custom(|iters| threads(2, iters, &ids, |id| drop(black_box(pager.acquire(id).unwrap()))))
    });
    let raw_addr = raw as usize;
    group.bench_function("layerpager C pager_acquire+pager_release", |b| {
        b.iter_custom(|iters| {
            threads(2, iters, &ids, |id| {
                let mut t = pager_tensor_t {
                    data: std::ptr::null(),
                    size: 0,
                    id: 0,
                    ticket: 0,
                };
                // SAFETY: the pager stays open until the group ends.
                unsafe {
                    pager_acquire(raw_addr as *mut pager_t, id, &mut t);
                    pager_release(raw_addr as *mut pager_t, &mut t);
                }
            })
        })
    });
    group.finish();
    // SAFETY: closing the pager opened above, once.
    unsafe { layerpager::ffi::pager_close(raw) };
}

/// Runs `iters` ops on each of `n` threads at once and returns the slowest
/// thread's time: criterion then reports time per op per thread, which
/// equals the one-thread figure when the threads do not slow each other
/// down. Thread t acquires only ids of parity t (the one-thread run too), as
/// engine threads working on different tensors do: what is measured is
/// whether the pager itself makes them share anything.
fn threads(n: usize, iters: u64, ids: &[u32], op: impl Fn(u32) + Sync) -> Duration {
    let barrier = Barrier::new(n);
    let times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    let own = |id: u32| (id & !1 | t as u32).min(TENSORS - 1);
                    let mut i = t * ids.len() / 2;
                    // Warm this thread's caches before the clock starts.
                    for _ in 0..10_000 {
                        i = (i + 1) % ids.len();
                        op(own(ids[i]));
                    }
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        i = (i + 1) % ids.len();
                        op(own(ids[i]));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.into_iter().max().unwrap()
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = hits
}
criterion_main!(benches);
