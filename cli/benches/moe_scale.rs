//! The pager at mixture-of-experts scale, through the Rust API, measured
//! side by side in one run:
//! - hits: an expert hit beside a dense hit, two threads, every expert of a
//!   48-layer model resident (1,152 and 18,432 slices);
//! - misses: the pager's CPU per miss (wall time less the time inside the
//!   reads), random expert acquires at a quarter of the model, for 1,152,
//!   18,432 and 44,544 slices (48 layers of 8 and of 128 experts, 58 of
//!   256: Mixtral-, Qwen3-30B-A3B- and DeepSeek-V3-sized counts);
//! - a replay of a Qwen3-30B-A3B-shaped routing (48 layers, 128 experts,
//!   top-8, the router's choice hinted before each layer) at 25% and 50%,
//!   with no reader and with one: pager CPU per token (every thread's CPU
//!   less the time inside the reads) and byte hits, beside the same policy
//!   simulated with every candidate examined (the exact scan the pager
//!   made before it sampled).
//!
//! Every expert slice is 8 KiB and the file sits in the page cache, so the
//! reads are short and the pager's own work shows. The C side of the same
//! figures is `c-tests/moe_scale_bench.c` (`scripts/moe-scale-bench.sh`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use layerpager::{IoMode, Pager, PagerOptions};
use layerpager_tools::moe::{MoeLayout, MoeShape, Routing};
use layerpager_tools::sim::HINT;

const LAYERS: u32 = 48;
const SLICE: u64 = 8 << 10;

/// A Qwen3-30B-A3B-shaped layout with `layers` blocks and `experts` per
/// merged tensor: seven small dense tensors per layer and three merged
/// expert tensors, every expert part 8 KiB.
fn shape(layers: u32, experts: u32) -> MoeShape {
    MoeShape {
        layers,
        experts,
        top_k: 8.min(experts),
        dense: vec![4 << 10, 32 << 10, 8 << 10, 8 << 10, 32 << 10, 4 << 10, 16 << 10],
        expert_parts: [SLICE; 3],
    }
}

/// Writes the layout's file tensors (dense and merged parents, in id order)
/// back to back, and opens a pager over them with the experts split.
struct Model {
    _dir: tempfile::TempDir,
    path: PathBuf,
    layout: MoeLayout,
    table: Vec<(String, u64, u64)>,
    parents: Vec<(u32, u32)>,
}

impl Model {
    fn new(layers: u32, experts: u32) -> Model {
        let shape = shape(layers, experts);
        let layout = MoeLayout::new(&shape);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moe.bin");
        let files = layout.schedule.len();
        let per_layer = files / layers as usize;
        let mut table = Vec::new();
        let mut offset = 0u64;
        let mut parents = Vec::new();
        for id in 0..files {
            let layer = id / per_layer;
            let k = id % per_layer;
            let name = if k < shape.dense.len() {
                format!("blk.{layer}.dense{k}.weight")
            } else {
                parents.push((id as u32, experts));
                format!("blk.{layer}.ffn_exps{}.weight", k - shape.dense.len())
            };
            let size = layout.sizes[id];
            table.push((name, offset, size));
            offset += size;
        }
        let bytes: Vec<u8> = (0..offset).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        Model {
            _dir: dir,
            path,
            layout,
            table,
            parents,
        }
    }

    fn open(&self, budget_bytes: u64, readers: u32) -> Pager {
        let pager = Pager::open_table(
            &self.path,
            &self.table,
            PagerOptions {
                budget_bytes,
                io_mode: IoMode::Pread,
                prefetch_threads: readers,
                ..Default::default()
            },
        )
        .unwrap();
        for &(parent, n) in &self.parents {
            pager.split_experts(parent, n).unwrap();
        }
        assert_eq!(pager.tensor_count(), self.layout.sizes.len());
        pager
    }

    fn slices(&self) -> Vec<u32> {
        self.layout.slices.iter().map(|&(id, _)| id).collect()
    }

    fn dense(&self) -> Vec<u32> {
        let parents: Vec<u32> = self.parents.iter().map(|&(p, _)| p).collect();
        (0..self.table.len() as u32)
            .filter(|id| !parents.contains(id))
            .collect()
    }
}

fn warm_page_cache(path: &Path) {
    black_box(std::fs::read(path).unwrap());
}

/// xorshift: the same pseudo-random ids in every variant.
fn ids(pool: &[u32], n: usize, seed: u64) -> Vec<u32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pool[(x % pool.len() as u64) as usize]
        })
        .collect()
}

/// Runs `iters` acquires on each of two threads at once (thread t on its
/// own half of `pool`) and returns the slower thread's time.
fn two_threads(pager: &Pager, pool: &[u32], iters: u64) -> Duration {
    let halves: [Vec<u32>; 2] = [
        pool.iter().copied().step_by(2).collect(),
        pool.iter().copied().skip(1).step_by(2).collect(),
    ];
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = halves
            .iter()
            .enumerate()
            .map(|(t, half)| {
                let barrier = &barrier;
                s.spawn(move || {
                    let seq = ids(half, 4096, 0x2545_f491 + t as u64);
                    for &id in seq.iter().cycle().take(512) {
                        drop(black_box(pager.acquire(id).unwrap()));
                    }
                    barrier.wait();
                    let start = Instant::now();
                    for &id in seq.iter().cycle().take(iters as usize) {
                        drop(black_box(pager.acquire(id).unwrap()));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

fn hits(c: &mut Criterion) {
    for experts in [8, 128] {
        let model = Model::new(LAYERS, experts);
        warm_page_cache(&model.path);
        let pager = model.open(0, 0);
        // A pass or two so that the order is learned, then every expert once.
        for _ in 0..2 {
            for &id in &model.layout.schedule {
                if let Ok(a) = pager.acquire(id) {
                    drop(a);
                }
            }
        }
        for id in model.slices() {
            drop(pager.acquire(id).unwrap());
        }
        let mut group = c.benchmark_group(format!(
            "hit, two threads at once, {} slices resident (time per op)",
            model.slices().len()
        ));
        let dense = model.dense();
        let slices = model.slices();
        group.bench_function("dense tensor acquire+release", |b| {
            b.iter_custom(|iters| two_threads(&pager, &dense, iters))
        });
        group.bench_function("expert slice acquire+release", |b| {
            b.iter_custom(|iters| two_threads(&pager, &slices, iters))
        });
        group.finish();
    }
}

/// CPU per miss: random expert acquires at a quarter of the model.
fn misses(_c: &mut Criterion) {
    println!("\nCPU per miss (wall less read time), random expert acquires at 25% of the model, one thread:");
    println!(
        "{:>7} {:>8} {:>8} {:>10} {:>12} {:>12}",
        "layers", "experts", "slices", "misses", "us/miss", "vs 1,152"
    );
    let mut first = None;
    for (layers, experts) in [(LAYERS, 8u32), (LAYERS, 128), (58, 256)] {
        let model = Model::new(layers, experts);
        warm_page_cache(&model.path);
        let total: u64 = model.layout.model_bytes();
        let pager = model.open(total / 4, 0);
        let slices = model.slices();
        let warm = ids(&slices, slices.len(), 7);
        for &id in &warm {
            drop(pager.acquire(id).unwrap());
        }
        let seq = ids(&slices, 40_000, 11);
        let before = pager.stats();
        let start = Instant::now();
        for &id in &seq {
            drop(black_box(pager.acquire(id).unwrap()));
        }
        let wall = start.elapsed().as_nanos() as f64;
        let after = pager.stats();
        let misses = (after.misses - before.misses).max(1) as f64;
        let read = (after.read_ns - before.read_ns) as f64;
        let per_miss = (wall - read) / misses / 1e3;
        let base = *first.get_or_insert(per_miss);
        println!(
            "{layers:>7} {experts:>8} {:>8} {:>10} {per_miss:>12.2} {:>11.2}x",
            slices.len(),
            misses as u64,
            per_miss / base
        );
        pager.check_invariants().unwrap();
    }
}

/// A Qwen3-30B-A3B-shaped routing replayed through a real pager.
fn replay(_c: &mut Criterion) {
    let experts = 128;
    let model = Model::new(LAYERS, experts);
    warm_page_cache(&model.path);
    let shape = shape(LAYERS, experts);
    let routing = Routing {
        zipf: 0.8,
        repeat: 0.25,
        ..Routing::default()
    };
    let tokens = 120;
    let trace = model.layout.trace(&shape, routing, tokens);
    let warm = trace.len() / 4;
    println!(
        "\nReplay: {} layers x {experts} experts, top-{}, {}, hints per layer; {tokens} tokens, the first quarter warms up; one engine thread",
        LAYERS,
        shape.top_k,
        routing.describe()
    );
    println!(
        "{:>7} {:>8} {:>16} {:>16} {:>12} {:>24}",
        "budget", "readers", "pager CPU/token", "acquires/token", "byte hits", "every candidate (sim.)"
    );
    for share in [0.25, 0.5] {
        let budget = (model.layout.model_bytes() as f64 * share) as u64;
        let exact = model.layout.default_policy();
        exact.examine_every_candidate(true);
        let sim = model.layout.simulate(&trace, budget, &exact, warm);
        for readers in [0, 1] {
            let pager = model.open(budget, readers);
            let mut hint = Vec::new();
            let mut run = |entries: &[u32]| {
                for &entry in entries {
                    if entry & HINT != 0 {
                        hint.push(entry & !HINT);
                        continue;
                    }
                    if !hint.is_empty() {
                        pager.hint(&hint).unwrap();
                        hint.clear();
                    }
                    drop(black_box(pager.acquire(entry).unwrap()));
                }
            };
            run(&trace[..warm]);
            let before = pager.stats();
            // Every thread's CPU (the reader's too), less the time inside reads.
            let cpu_before = process_cpu_ns();
            run(&trace[warm..]);
            let cpu = process_cpu_ns() - cpu_before;
            let after = pager.stats();
            let read = after.read_ns - before.read_ns;
            let read_bytes = after.bytes_read - before.bytes_read;
            let measured = trace[warm..].iter().filter(|&&e| e & HINT == 0);
            let accessed: u64 = measured.clone().map(|&e| model.layout.sizes[e as usize]).sum();
            let acquires = measured.count() as u64;
            let counted_tokens =
                acquires as f64 / (trace.iter().filter(|&&e| e & HINT == 0).count() as f64 / tokens as f64);
            println!(
                "{:>6.0}% {readers:>8} {:>13.3} ms {:>16.0} {:>11.1}% {:>23.1}%",
                share * 100.0,
                cpu.saturating_sub(read) as f64 / counted_tokens / 1e6,
                acquires as f64 / counted_tokens,
                100.0 * (1.0 - read_bytes as f64 / accessed as f64),
                100.0 * sim.byte_hit_ratio()
            );
            pager.check_invariants().unwrap();
        }
    }
}

/// CPU time of every thread of this process, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = hits, misses, replay
}
criterion_main!(benches);
