//! Mixture-of-experts workloads: MoE layouts (dense tensors and merged
//! expert tensors split into one slice per expert), a seeded routing
//! generator (Zipf-skewed expert popularity, per-slot and per-pair repeats
//! of the previous token's choice, popularity that drifts, the router's
//! hints), the routing zoo the policy is held to, and the comparison of
//! eviction policies on the resulting access trace, by simulation (see
//! [`crate::sim`]).

use crate::routing_trace::RoutingTrace;
use crate::sim::{simulate_slices, Belady, S3Fifo, SimResult, HINT};
use layerpager::policy::{EvictionPolicy, FrequencyAdmission, Lru, Ranking, ScheduleAware};

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

    /// Mixtral's tensor sizes with `layers` blocks of `experts` experts,
    /// `top_k` chosen per token; `dense` false leaves only the experts.
    pub fn with(layers: u32, experts: u32, top_k: u32, dense: bool) -> Self {
        let mixtral = MoeShape::mixtral();
        MoeShape {
            layers,
            experts,
            top_k: top_k.min(experts),
            dense: if dense { mixtral.dense } else { Vec::new() },
            expert_parts: mixtral.expert_parts,
        }
    }

    /// "8 blocks x 8 experts, top-2, dense": the shape in one line.
    pub fn describe(&self) -> String {
        format!(
            "{} blocks x {} experts, top-{}{}",
            self.layers,
            self.experts,
            self.top_k,
            if self.dense.is_empty() {
                ", experts only"
            } else {
                ""
            }
        )
    }
}

/// How tokens choose experts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    /// Zipf exponent of expert popularity (0 = uniform).
    pub zipf: f64,
    /// Chance that a token's expert in a slot is the previous token's.
    pub repeat: f64,
    /// Chance that a token reuses the previous token's whole choice in a
    /// block (decided before the per-slot repeats).
    pub pair_repeat: f64,
    /// Tokens between reshuffles of every block's popularity ranking (0:
    /// popularity never changes).
    pub drift: usize,
    /// Whether the router's choice is hinted before each block's experts.
    pub hints: bool,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            zipf: 0.8,
            repeat: 0.25,
            pair_repeat: 0.0,
            drift: 0,
            hints: true,
            seed: 42,
        }
    }
}

impl Routing {
    /// "Zipf 0.8, 25% slot repeats": the routing in one line.
    pub fn describe(&self) -> String {
        let mut s = format!("Zipf {}", self.zipf);
        if self.repeat > 0.0 {
            s += &format!(", {:.0}% slot repeats", self.repeat * 100.0);
        }
        if self.pair_repeat > 0.0 {
            s += &format!(", {:.0}% pair repeats", self.pair_repeat * 100.0);
        }
        if self.drift > 0 {
            s += &format!(", drift every {} tokens", self.drift);
        }
        if !self.hints {
            s += ", no hints";
        }
        s
    }
}

/// One stream of the routing zoo.
#[derive(Debug, Clone)]
pub struct ZooStream {
    /// The model's shape.
    pub shape: MoeShape,
    /// How it routes.
    pub routing: Routing,
    /// Tokens to simulate (the first tenth warms up).
    pub tokens: usize,
}

/// The routing zoo the expert policy is held to (`tests/moe_policy.rs`, the
/// README): skews from uniform to Zipf 1.2, per-slot and per-pair repeats
/// from none to 60%, drifting popularity, 8 to 32 blocks, 8 to 64
/// experts, top-1 to top-8, with and without dense tensors, with and
/// without hints. The first is the outside program of issue 13.
pub fn zoo() -> Vec<ZooStream> {
    let r = |zipf, repeat, pair_repeat, drift, seed| Routing {
        zipf,
        repeat,
        pair_repeat,
        drift,
        hints: true,
        seed,
    };
    let stream = |shape, routing, tokens| ZooStream {
        shape,
        routing,
        tokens,
    };
    vec![
        stream(MoeShape::with(8, 8, 2, true), r(0.8, 0.0, 0.25, 0, 1), 600),
        stream(MoeShape::mixtral(), r(0.8, 0.25, 0.0, 0, 2), 300),
        stream(MoeShape::with(16, 8, 2, true), r(0.0, 0.0, 0.0, 0, 3), 400),
        stream(MoeShape::with(8, 16, 1, true), r(1.2, 0.6, 0.0, 0, 4), 600),
        stream(MoeShape::with(16, 32, 4, true), r(1.0, 0.0, 0.0, 150, 5), 600),
        stream(MoeShape::with(8, 64, 8, false), r(0.4, 0.0, 0.6, 0, 6), 400),
        stream(MoeShape::with(24, 16, 2, false), r(0.8, 0.3, 0.0, 0, 7), 400),
        stream(MoeShape::with(32, 8, 1, true), r(1.2, 0.0, 0.3, 250, 8), 600),
        stream(
            MoeShape::with(12, 16, 4, true),
            Routing {
                hints: false,
                ..r(0.6, 0.3, 0.1, 0, 9)
            },
            400,
        ),
        stream(MoeShape::with(8, 32, 2, true), r(0.0, 0.6, 0.0, 0, 10), 500),
    ]
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
    /// Tensors outside the blocks (embeddings, output), used at the start
    /// of every pass.
    prologue_ids: Vec<u32>,
}

impl MoeLayout {
    /// Lays out `shape`.
    pub fn new(shape: &MoeShape) -> Self {
        MoeLayout::with_prologue(shape, &[])
    }

    /// Lays out `shape` after tensors of `prologue` sizes that every pass
    /// uses first (a real model's embeddings and output).
    pub fn with_prologue(shape: &MoeShape, prologue: &[u64]) -> Self {
        let mut sizes: Vec<u64> = prologue.to_vec();
        let prologue_ids: Vec<u32> = (0..prologue.len() as u32).collect();
        let mut schedule = prologue_ids.clone();
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
            prologue_ids,
        }
    }

    /// The default policy as a pager opened on a GGUF has it: the order
    /// guessed from the names, then learned; nothing declared; the
    /// experts split.
    pub fn default_policy(&self) -> ScheduleAware {
        let policy = ScheduleAware::new(self.sizes.len(), true);
        for &(slice, parent) in &self.slices {
            policy.set_parent(slice, parent);
        }
        policy.guess(&self.schedule);
        policy
    }

    /// Simulates `trace` through `policy` at `budget`, the experts offered
    /// as slices (as a pager offers them), counting from `measure_from`.
    pub fn simulate(
        &self,
        trace: &[u32],
        budget: u64,
        policy: &dyn EvictionPolicy,
        measure_from: usize,
    ) -> SimResult {
        simulate_slices(
            &self.sizes,
            self.schedule.len() as u32,
            trace,
            budget,
            policy,
            measure_from,
        )
    }

    /// Bytes of the tensors a pass can touch (dense and every expert).
    pub fn model_bytes(&self) -> u64 {
        let dense: u64 = self
            .dense_ids
            .iter()
            .flatten()
            .chain(&self.prologue_ids)
            .map(|&i| self.sizes[i as usize])
            .sum();
        let experts: u64 = self.slices.iter().map(|&(i, _)| self.sizes[i as usize]).sum();
        dense + experts
    }

    /// The access trace of `tokens` tokens routed by `routing`, and the
    /// experts chosen per token and layer.
    pub fn trace(&self, shape: &MoeShape, routing: Routing, tokens: usize) -> Vec<u32> {
        let mut rng = Rng(routing.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // Popularity per layer: Zipf weights over a random ranking, drawn
        // again every `drift` tokens.
        let draw = |rng: &mut Rng| -> Vec<Vec<f64>> {
            (0..shape.layers)
                .map(|_| {
                    let mut rank: Vec<usize> = (0..shape.experts as usize).collect();
                    for i in (1..rank.len()).rev() {
                        rank.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                    }
                    rank.iter()
                        .map(|&r| 1.0 / ((r + 1) as f64).powf(routing.zipf))
                        .collect()
                })
                .collect()
        };
        let mut weights = draw(&mut rng);
        let mut previous: Vec<Vec<u32>> = vec![Vec::new(); shape.layers as usize];
        let mut trace = Vec::new();
        for token in 0..tokens {
            if routing.drift > 0 && token > 0 && token % routing.drift == 0 {
                weights = draw(&mut rng);
            }
            for layer in 0..shape.layers as usize {
                let chosen = if !previous[layer].is_empty() && rng.unit() < routing.pair_repeat {
                    previous[layer].clone()
                } else {
                    self.route(shape, routing, &weights[layer], &previous[layer], &mut rng)
                };
                self.push_block(&mut trace, layer, &chosen, routing.hints);
                previous[layer] = chosen;
            }
        }
        trace
    }

    /// One block of a pass: its dense tensors, the router's hints if
    /// `hints`, then each part of the `chosen` experts.
    fn push_block(&self, trace: &mut Vec<u32>, layer: usize, chosen: &[u32], hints: bool) {
        trace.extend_from_slice(&self.dense_ids[layer]);
        if hints {
            for part in 0..3 {
                for &e in chosen {
                    trace.push(self.expert_ids[layer][part][e as usize] | HINT);
                }
            }
        }
        for part in 0..3 {
            for &e in chosen {
                trace.push(self.expert_ids[layer][part][e as usize]);
            }
        }
    }

    /// The access trace of a routing an engine recorded, with the router's
    /// hints if `hints`; and where each token's pass starts in it.
    pub fn routed_trace(&self, routing: &RoutingTrace, hints: bool) -> (Vec<u32>, Vec<usize>) {
        let mut trace = Vec::new();
        let mut starts = Vec::new();
        for token in &routing.tokens {
            starts.push(trace.len());
            trace.extend_from_slice(&self.prologue_ids);
            for (layer, chosen) in token {
                self.push_block(&mut trace, *layer as usize, chosen, hints);
            }
        }
        (trace, starts)
    }

    /// One token's choice in one block: per slot, the previous token's
    /// expert with chance `routing.repeat`, else a draw by popularity among
    /// the experts not yet chosen.
    fn route(
        &self,
        shape: &MoeShape,
        routing: Routing,
        weights: &[f64],
        previous: &[u32],
        rng: &mut Rng,
    ) -> Vec<u32> {
        let mut chosen: Vec<u32> = Vec::new();
        for slot in 0..shape.top_k as usize {
            let reuse = previous.get(slot).copied().filter(|e| !chosen.contains(e));
            let e = match reuse {
                Some(e) if rng.unit() < routing.repeat => e,
                _ => {
                    let total: f64 = (0..shape.experts)
                        .filter(|e| !chosen.contains(e))
                        .map(|e| weights[e as usize])
                        .sum();
                    let mut x = rng.unit() * total;
                    let mut pick = 0;
                    for e in (0..shape.experts).filter(|e| !chosen.contains(e)) {
                        pick = e;
                        x -= weights[e as usize];
                        if x <= 0.0 {
                            break;
                        }
                    }
                    pick
                }
            };
            chosen.push(e);
        }
        chosen
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
                layout.simulate(&trace, budget, policy, warm).byte_hit_ratio()
            };
            let ours = layout.default_policy();
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

/// What the shadow simulations cost the default policy on one stream at
/// `budget_share`: the run's time minus that of the same run with the
/// ranking fixed (no shadows), per miss, in nanoseconds; and the mean size
/// of an expert slice, to set it against.
pub fn shadow_cost(shape: &MoeShape, routing: Routing, tokens: usize, budget_share: f64) -> (f64, u64) {
    let layout = MoeLayout::new(shape);
    let trace = layout.trace(shape, routing, tokens);
    let budget = (layout.model_bytes() as f64 * budget_share) as u64;
    let timed = |fixed: bool| {
        let policy = layout.default_policy();
        if fixed {
            policy.fix_ranking(Some(Ranking::Reuse));
        }
        let start = std::time::Instant::now();
        let r = layout.simulate(&trace, budget, &policy, 0);
        (start.elapsed().as_nanos() as f64, r.misses)
    };
    // The faster of two runs each: the machine is shared.
    let with = timed(false).0.min(timed(false).0);
    let (without, misses) = timed(true);
    let without = without.min(timed(true).0);
    let slice = layout
        .slices
        .iter()
        .map(|&(i, _)| layout.sizes[i as usize])
        .sum::<u64>()
        / layout.slices.len().max(1) as u64;
    ((with - without).max(0.0) / misses.max(1) as f64, slice)
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
        let (hints, accesses): (Vec<u32>, Vec<u32>) = trace.iter().partition(|&&e| e & HINT != 0);
        assert_eq!(accesses.len(), 3 * shape.layers as usize * per_layer);
        assert_eq!(hints.len(), 3 * shape.layers as usize * 3 * shape.top_k as usize);
        let experts = &accesses[shape.dense.len()..shape.dense.len() + 2];
        assert_ne!(experts[0], experts[1]);
        // The hints name the block's experts, just before they are used.
        let first_hints = &trace[shape.dense.len()..shape.dense.len() + 6];
        let first_uses = &trace[shape.dense.len() + 6..shape.dense.len() + 12];
        assert!(first_hints.iter().zip(first_uses).all(|(h, u)| h & !HINT == *u));
    }

    #[test]
    fn pair_repeats_and_drift_shape_the_stream() {
        let shape = MoeShape::with(4, 8, 2, false);
        let layout = MoeLayout::new(&shape);
        let choices = |routing: Routing| -> Vec<Vec<u32>> {
            let accesses: Vec<u32> = layout
                .trace(&shape, routing, 400)
                .into_iter()
                .filter(|&e| e & HINT == 0)
                .collect();
            // Per token and block: the gate experts chosen.
            accesses.chunks(6).map(|c| c[..2].to_vec()).collect()
        };
        let repeated = |c: &[Vec<u32>]| {
            let per_block: Vec<&Vec<u32>> = c.iter().step_by(4).collect();
            per_block.windows(2).filter(|w| w[0] == w[1]).count() as f64 / (per_block.len() - 1) as f64
        };
        let none = Routing {
            zipf: 0.0,
            repeat: 0.0,
            ..Routing::default()
        };
        let pairs = Routing {
            pair_repeat: 0.6,
            ..none
        };
        assert!(repeated(&choices(none)) < 0.15);
        assert!(repeated(&choices(pairs)) > 0.5);
        // Drift: the most used expert of block 0 changes between halves.
        let skewed = Routing {
            zipf: 2.0,
            repeat: 0.0,
            drift: 200,
            seed: 3,
            ..Routing::default()
        };
        let c = choices(skewed);
        let top = |half: &[Vec<u32>]| {
            let mut counts = [0u32; 64];
            for t in half.iter().step_by(4) {
                counts[t[0] as usize] += 1;
            }
            (0..64).max_by_key(|&e| counts[e]).unwrap()
        };
        assert_ne!(top(&c[..800]), top(&c[800..]));
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
