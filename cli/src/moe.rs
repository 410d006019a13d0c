//! Mixture-of-experts workloads: a Mixtral-shaped layout (dense tensors and
//! merged expert tensors split into one slice per expert), a seeded routing
//! generator (Zipf-skewed expert popularity, a chance that a token reuses
//! the previous token's expert), and the comparison of eviction policies on
//! the resulting access trace, by simulation (see [`crate::sim`]).

use crate::sim::{simulate_from, Belady, S3Fifo};
use layerpager::policy::{EvictionPolicy, FrequencyAdmission, Lru, ScheduleAware};

/// The shape of an MoE decoder, in bytes per tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeShape {
    /// Blocks.
    pub layers: u32,
    /// Experts per layer.
    pub experts: u32,
    /// Experts chosen per token and layer.
    pub top_k: u32,
    /// Sizes of a block's dense tensors, in pass order.
    pub dense: Vec<u64>,
    /// Sizes of one expert's gate, up and down parts.
    pub expert_parts: [u64; 3],
}

impl MoeShape {
    /// Mixtral 8x7B: 32 blocks, 8 experts, top-2; sizes in parameters (a
    /// quantisation scales every size alike and changes no ratio).
    pub fn mixtral() -> Self {
        let (d, kv, ff) = (4096u64, 1024u64, 14336u64);
        MoeShape {
            layers: 32,
            experts: 8,
            top_k: 2,
            dense: vec![d, d * d, d * kv, d * kv, d * d, d, d * 8],
            expert_parts: [d * ff, d * ff, ff * d],
        }
    }
}

/// How tokens choose experts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    /// Zipf exponent of expert popularity (0 = uniform).
    pub zipf: f64,
    /// Chance that a token's expert in a slot is the previous token's.
    pub repeat: f64,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            zipf: 0.8,
            repeat: 0.25,
            seed: 42,
        }
    }
}

/// Tensor ids of an MoE model: dense tensors and merged expert parents in
/// pass order, then one slice per expert and part.
#[derive(Debug, Clone)]
pub struct MoeLayout {
    /// Size of every tensor by id (parents included, never accessed).
    pub sizes: Vec<u64>,
    /// The pass order: dense ids and the merged parents at their places.
    pub schedule: Vec<u32>,
    /// (slice id, parent id) of every expert slice.
    pub slices: Vec<(u32, u32)>,
    dense_ids: Vec<Vec<u32>>,
    /// expert_ids[layer][part][expert]
    expert_ids: Vec<[Vec<u32>; 3]>,
}

impl MoeLayout {
    /// Lays out `shape`.
    pub fn new(shape: &MoeShape) -> Self {
        let mut sizes = Vec::new();
        let mut schedule = Vec::new();
        let mut dense_ids = Vec::new();
        let mut parents = Vec::new();
        for _ in 0..shape.layers {
            let mut ids = Vec::new();
            for &size in &shape.dense {
                ids.push(sizes.len() as u32);
                schedule.push(sizes.len() as u32);
                sizes.push(size);
            }
            dense_ids.push(ids);
            let mut layer_parents = [0u32; 3];
            for (part, &size) in shape.expert_parts.iter().enumerate() {
                layer_parents[part] = sizes.len() as u32;
                schedule.push(sizes.len() as u32);
                sizes.push(size * shape.experts as u64);
            }
            parents.push(layer_parents);
        }
        let mut slices = Vec::new();
        let mut expert_ids = Vec::new();
        for layer_parents in parents {
            let ids: [Vec<u32>; 3] = std::array::from_fn(|part| {
                (0..shape.experts)
                    .map(|_| {
                        let id = sizes.len() as u32;
                        sizes.push(shape.expert_parts[part]);
                        slices.push((id, layer_parents[part]));
                        id
                    })
                    .collect()
            });
            expert_ids.push(ids);
        }
        MoeLayout {
            sizes,
            schedule,
            slices,
            dense_ids,
            expert_ids,
        }
    }

    /// Bytes of the tensors a pass can touch (dense and every expert).
    pub fn model_bytes(&self) -> u64 {
        let dense: u64 = self
            .dense_ids
            .iter()
            .flatten()
            .map(|&i| self.sizes[i as usize])
            .sum();
        let experts: u64 = self.slices.iter().map(|&(i, _)| self.sizes[i as usize]).sum();
        dense + experts
    }

    /// The access trace of `tokens` tokens routed by `routing`, and the
    /// experts chosen per token and layer.
    pub fn trace(&self, shape: &MoeShape, routing: Routing, tokens: usize) -> Vec<u32> {
        let mut rng = Rng(routing.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // Popularity per layer: Zipf weights over a random ranking.
        let weights: Vec<Vec<f64>> = (0..shape.layers)
            .map(|_| {
                let mut rank: Vec<usize> = (0..shape.experts as usize).collect();
                for i in (1..rank.len()).rev() {
                    rank.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                }
                rank.iter()
                    .map(|&r| 1.0 / ((r + 1) as f64).powf(routing.zipf))
                    .collect()
            })
            .collect();
        let mut previous: Vec<Vec<u32>> = vec![Vec::new(); shape.layers as usize];
        let mut trace = Vec::new();
        for _ in 0..tokens {
            for layer in 0..shape.layers as usize {
                trace.extend_from_slice(&self.dense_ids[layer]);
                let mut chosen: Vec<u32> = Vec::new();
                for slot in 0..shape.top_k as usize {
                    let reuse = previous[layer].get(slot).copied().filter(|e| !chosen.contains(e));
                    let e = match reuse {
                        Some(e) if rng.unit() < routing.repeat => e,
                        _ => {
                            let total: f64 = (0..shape.experts)
                                .filter(|e| !chosen.contains(e))
                                .map(|e| weights[layer][e as usize])
                                .sum();
                            let mut x = rng.unit() * total;
                            let mut pick = 0;
                            for e in (0..shape.experts).filter(|e| !chosen.contains(e)) {
                                pick = e;
                                x -= weights[layer][e as usize];
                                if x <= 0.0 {
                                    break;
                                }
                            }
                            pick
                        }
                    };
                    chosen.push(e);
                }
                for part in 0..3 {
                    for &e in &chosen {
                        trace.push(self.expert_ids[layer][part][e as usize]);
                    }
                }
                previous[layer] = chosen;
            }
        }
        trace
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Byte hit ratios of the policies on one trace and budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeComparison {
    /// Budget as a share of the model's bytes.
    pub budget_share: f64,
    /// Least recently used.
    pub lru: f64,
    /// S3-FIFO.
    pub s3fifo: f64,
    /// Frequency admission (ties evict the newcomer).
    pub frequency: f64,
    /// layerpager: schedule-aware, expert-aware.
    pub layerpager: f64,
    /// Belady's optimum with the routing known in advance.
    pub belady: f64,
}

/// Simulates every policy on `tokens` tokens (the first tenth warms up and
/// is not counted) at each budget share.
pub fn compare(
    shape: &MoeShape,
    routing: Routing,
    tokens: usize,
    budget_shares: &[f64],
) -> Vec<MoeComparison> {
    let layout = MoeLayout::new(shape);
    let trace = layout.trace(shape, routing, tokens);
    let warm = trace.len() / 10;
    let n = layout.sizes.len();
    let model = layout.model_bytes();
    budget_shares
        .iter()
        .map(|&share| {
            let budget = (model as f64 * share) as u64;
            let ratio = |policy: &dyn EvictionPolicy| -> f64 {
                simulate_from(&layout.sizes, &trace, budget, policy, warm).byte_hit_ratio()
            };
            let ours = ScheduleAware::new(n, false);
            for &(slice, parent) in &layout.slices {
                ours.set_parent(slice, parent);
            }
            ours.set_schedule(&layout.schedule);
            let entries = (budget / (model / n as u64).max(1)) as usize;
            MoeComparison {
                budget_share: share,
                lru: ratio(&Lru::new(n)),
                s3fifo: ratio(&S3Fifo::new(entries / 10)),
                frequency: ratio(&FrequencyAdmission::new(n)),
                layerpager: ratio(&ours),
                belady: ratio(&Belady::new(&trace)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_has_top_k_distinct_experts_per_layer() {
        let shape = MoeShape::mixtral();
        let layout = MoeLayout::new(&shape);
        let trace = layout.trace(&shape, Routing::default(), 3);
        let per_layer = shape.dense.len() + 3 * shape.top_k as usize;
        assert_eq!(trace.len(), 3 * shape.layers as usize * per_layer);
        let experts = &trace[shape.dense.len()..shape.dense.len() + 2];
        assert_ne!(experts[0], experts[1]);
    }

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        let shape = MoeShape::mixtral();
        let layout = MoeLayout::new(&shape);
        assert_eq!(
            layout.trace(&shape, Routing::default(), 5),
            layout.trace(&shape, Routing::default(), 5)
        );
    }
}
