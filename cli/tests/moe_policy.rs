//! Expert eviction held to its targets (issue 13): on every stream of the
//! routing zoo at budgets from 10% to 90%, the default policy's byte hit
//! ratio is within a point of the best of LRU, S3-FIFO and frequency
//! admission, and on average at least 0.8x Belady's with the routing
//! known; the outside program of the issue (8 blocks x 8 experts, top-2,
//! Zipf 0.8, 25% pair repeats, hints, nothing declared) reaches 48 / 72 /
//! 88% at 25 / 50 / 75%, by simulation and through a real pager reading a
//! Mixtral-shaped GGUF, with and without a background reader.

use layerpager::{Pager, PagerOptions};
use layerpager_tools::moe::{compare, zoo, MoeComparison, MoeLayout, MoeShape, Routing, ZooStream};
use layerpager_tools::sim::HINT;
use layerpager_tools::synth::{write_gguf, SynthTensor};

const BUDGETS: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
/// The outside program's targets at 25 / 50 / 75%.
const OUTSIDE_TARGETS: [(f64, f64); 3] = [(0.25, 0.48), (0.5, 0.72), (0.75, 0.88)];

fn run_zoo(streams: &[ZooStream]) -> Vec<Vec<MoeComparison>> {
    // Two streams at a time: the simulations are independent.
    std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .chunks(streams.len().div_ceil(2))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|z| compare(&z.shape, z.routing, z.tokens, &BUDGETS))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn every_zoo_stream_is_within_a_point_of_the_best_reference_and_near_belady() {
    let streams = zoo();
    let results = run_zoo(&streams);
    let mut shares = Vec::new();
    let mut failures = Vec::new();
    for (z, rows) in streams.iter().zip(&results) {
        eprintln!("{} / {}", z.shape.describe(), z.routing.describe());
        for r in rows {
            let best = r.lru.max(r.s3fifo).max(r.frequency);
            eprintln!(
                "  {:>3.0}%  best reference {:5.1}  layerpager {:5.1}  Belady {:5.1}",
                r.budget_share * 100.0,
                best * 100.0,
                r.layerpager * 100.0,
                r.belady * 100.0
            );
            if r.layerpager + 0.01 < best {
                failures.push(format!(
                    "{} / {} at {:.0}%: {:.1} < best {:.1} - 1",
                    z.shape.describe(),
                    z.routing.describe(),
                    r.budget_share * 100.0,
                    r.layerpager * 100.0,
                    best * 100.0
                ));
            }
            assert!(r.layerpager <= r.belady + 1e-9, "above the optimum: {r:?}");
            shares.push(r.layerpager / r.belady);
        }
    }
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    eprintln!("mean share of Belady's byte hits: {mean:.3}");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(mean >= 0.8, "mean share of Belady's hits {mean:.3} < 0.8");
}

#[test]
fn the_outside_program_of_issue_13_meets_its_targets_in_simulation() {
    let z = &zoo()[0];
    let shares: Vec<f64> = OUTSIDE_TARGETS.iter().map(|t| t.0).collect();
    for (r, (_, target)) in compare(&z.shape, z.routing, z.tokens, &shares)
        .iter()
        .zip(OUTSIDE_TARGETS)
    {
        eprintln!("{r:?}");
        assert!(r.layerpager >= target, "{r:?} below {target}");
    }
}

#[test]
fn hints_protect_the_experts_of_the_running_block() {
    // Without hints, the experts about to run look a pass away; with them,
    // they are kept: hits can only grow.
    let mut z = zoo()[0].clone();
    let with = compare(&z.shape, z.routing, 300, &[0.25, 0.5]);
    z.routing.hints = false;
    let without = compare(&z.shape, z.routing, 300, &[0.25, 0.5]);
    for (w, wo) in with.iter().zip(&without) {
        eprintln!("hints {:.3}  no hints {:.3}", w.layerpager, wo.layerpager);
        assert!(w.layerpager + 0.002 >= wo.layerpager, "{w:?} vs {wo:?}");
    }
}

/// A Mixtral-shaped GGUF of the issue's outside program, small: `layers`
/// blocks of 256-wide F16 matrices and 8 merged experts 512 wide. Returns
/// the file and the shape in bytes (the simulation's layout has the same
/// ids as the pager once the experts are split block by block).
fn small_mixtral(
    dir: &std::path::Path,
    layers: u32,
    experts: u32,
    top_k: u32,
) -> (std::path::PathBuf, MoeShape) {
    let (d, ff, e) = (256u64, 512u64, experts as u64);
    let t = |name: String, ggml_type: u32, dims: &[u64]| SynthTensor {
        name,
        ggml_type,
        dims: dims.to_vec(),
    };
    let mut tensors = Vec::new();
    for i in 0..layers {
        tensors.push(t(format!("blk.{i}.attn_norm.weight"), 0, &[d]));
        tensors.push(t(format!("blk.{i}.attn_q.weight"), 1, &[d, d]));
        tensors.push(t(format!("blk.{i}.attn_k.weight"), 1, &[d, d / 4]));
        tensors.push(t(format!("blk.{i}.attn_v.weight"), 1, &[d, d / 4]));
        tensors.push(t(format!("blk.{i}.attn_output.weight"), 1, &[d, d]));
        tensors.push(t(format!("blk.{i}.ffn_norm.weight"), 0, &[d]));
        tensors.push(t(format!("blk.{i}.ffn_gate_inp.weight"), 0, &[d, e]));
        tensors.push(t(format!("blk.{i}.ffn_gate_exps.weight"), 1, &[d, ff, e]));
        tensors.push(t(format!("blk.{i}.ffn_up_exps.weight"), 1, &[d, ff, e]));
        tensors.push(t(format!("blk.{i}.ffn_down_exps.weight"), 1, &[ff, d, e]));
    }
    let path = dir.join("small-mixtral.gguf");
    write_gguf(&path, &tensors, 32, |_| {}).unwrap();
    let shape = MoeShape {
        layers,
        experts,
        top_k,
        dense: tensors[..7].iter().map(|t| t.size()).collect(),
        expert_parts: [2 * d * ff; 3],
    };
    (path, shape)
}

#[test]
fn the_outside_program_meets_its_targets_through_a_real_pager() {
    let dir = tempfile::tempdir().unwrap();
    let z = &zoo()[0];
    let (path, shape) = small_mixtral(dir.path(), z.shape.layers, z.shape.experts, z.shape.top_k);
    let layout = MoeLayout::new(&shape);
    let tokens = 300;
    let trace = layout.trace(&shape, z.routing, tokens);
    let warm = trace.len() / 10;
    let model = layout.model_bytes();
    let shares: Vec<f64> = OUTSIDE_TARGETS.iter().map(|t| t.0).collect();
    let simulated = compare(&shape, z.routing, tokens, &shares);
    for readers in [0, 1] {
        for (&(share, target), sim) in OUTSIDE_TARGETS.iter().zip(&simulated) {
            let pager = Pager::open_gguf(
                &path,
                PagerOptions {
                    budget_bytes: (model as f64 * share) as u64,
                    prefetch_threads: readers,
                    ..Default::default()
                },
            )
            .unwrap();
            // Split block by block, part by part: the ids are the layout's.
            for &(slice, parent) in layout.slices.iter().step_by(shape.experts as usize) {
                assert_eq!(pager.split_experts(parent, shape.experts).unwrap(), slice);
            }
            let (mut accessed, mut read_at_warm) = (0u64, 0u64);
            let mut hints = Vec::new();
            for (pos, &entry) in trace.iter().enumerate() {
                if pos == warm {
                    read_at_warm = pager.stats().bytes_read;
                }
                if entry & HINT != 0 {
                    hints.push(entry & !HINT);
                    continue;
                }
                if !hints.is_empty() {
                    pager.hint(&hints).unwrap();
                    hints.clear();
                }
                let a = pager.acquire(entry).unwrap();
                if pos >= warm {
                    accessed += a.bytes().len() as u64;
                }
            }
            let stats = pager.stats();
            let ratio = 1.0 - (stats.bytes_read - read_at_warm) as f64 / accessed as f64;
            eprintln!(
                "readers {readers}, budget {:.0}%: byte hit ratio {:.1}% (simulated {:.1}%, LRU {:.1}%, Belady {:.1}%), peak {} of {} budget; {}",
                share * 100.0,
                ratio * 100.0,
                sim.layerpager * 100.0,
                sim.lru * 100.0,
                sim.belady * 100.0,
                stats.peak_resident_bytes,
                stats.budget_bytes,
                pager.describe()
            );
            assert!(stats.peak_resident_bytes <= stats.budget_bytes);
            assert!(
                ratio >= target,
                "readers {readers}, {share}: {ratio:.3} < {target}"
            );
        }
    }
}

/// The policy's work per miss (eviction keys computed by the real cache's
/// choices and by the shadow caches') does not grow with the number of
/// expert slices: 48 layers of 8 experts (1,152 slices), of 128 (18,432, as
/// Qwen3-30B-A3B) and 58 layers of 256 (44,544, as DeepSeek-V3), on the
/// same routing at a quarter of the model. A count, not a time.
#[test]
fn the_work_per_miss_does_not_grow_with_the_slice_count() {
    let per_miss = |layers: u32, experts: u32| {
        let shape = MoeShape {
            layers,
            experts,
            top_k: 8.min(experts),
            dense: vec![4 << 10, 32 << 10, 8 << 10, 8 << 10, 32 << 10, 4 << 10, 16 << 10],
            expert_parts: [8 << 10; 3],
        };
        let layout = MoeLayout::new(&shape);
        let trace = layout.trace(&shape, Routing::default(), 24);
        let policy = layout.default_policy();
        let r = layout.simulate(&trace, layout.model_bytes() / 4, &policy, 0);
        let keys = policy.candidates_examined() as f64 / r.misses as f64;
        eprintln!("{layers} layers x {experts} experts: {keys:.1} keys per miss");
        keys
    };
    let mixtral = per_miss(48, 8);
    let qwen = per_miss(48, 128);
    let deepseek = per_miss(58, 256);
    assert!(
        qwen <= 1.5 * mixtral,
        "{qwen:.1} keys per miss against {mixtral:.1}"
    );
    assert!(
        deepseek <= 1.5 * qwen,
        "{deepseek:.1} keys per miss against {qwen:.1}"
    );
}
