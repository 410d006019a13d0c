//! Streaming throughput: passes over a synthetic llama-shaped model through
//! the pager (every io mode) at a budget of a quarter of the model with LRU,
//! so that every tensor is read every pass into recycled buffers (the steady
//! state of streaming), beside a raw 8 MiB pread loop over the same file,
//! measured in the same run; cold (page cache dropped before each pass,
//! outside the timing) and warm.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use layerpager::source::{drop_page_cache, raw_pread_sweep};
use layerpager::{IoMode, Pager, PagerOptions, PolicyKind};
use layerpager_tools::synth::{write_gguf, LlamaShape};

fn streaming(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let shape = LlamaShape {
        layers: 4,
        ..LlamaShape::DEMO
    };
    let file_bytes = write_gguf(&path, &shape.tensors(), 32, |_| {}).unwrap();

    for cold in [true, false] {
        let mut group = c.benchmark_group(if cold { "stream cold" } else { "stream warm" });
        group.throughput(Throughput::Bytes(file_bytes));
        group.sample_size(10);
        let prepare = || {
            if cold {
                drop_page_cache(&path).unwrap();
            } else {
                raw_pread_sweep(&path, 8 << 20).unwrap();
            }
        };
        group.bench_function("reference: raw pread loop, 8 MiB reads", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    prepare();
                    let t = Instant::now();
                    black_box(raw_pread_sweep(&path, 8 << 20).unwrap());
                    total += t.elapsed();
                }
                total
            })
        });
        for (name, io_mode) in [
            ("pread", IoMode::Pread),
            ("direct", IoMode::Direct),
            ("mmap", IoMode::Mmap),
        ] {
            let options = PagerOptions {
                io_mode,
                budget_bytes: file_bytes / 4,
                policy: PolicyKind::Lru,
                ..Default::default()
            };
            let pager = Pager::open_gguf(&path, options).unwrap();
            let order = pager.index().forward_order();
            group.bench_function(format!("layerpager {name}, LRU at 25% budget, 2 readers"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        prepare();
                        let t = Instant::now();
                        for &id in &order {
                            let a = pager.acquire(id).unwrap();
                            black_box(a.bytes().last());
                        }
                        total += t.elapsed();
                    }
                    total
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(200));
    targets = streaming
}
criterion_main!(benches);
