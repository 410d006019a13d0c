//! Routing traces an engine recorded (`llama-paged --trace FILE`): which
//! experts each MoE layer chose for each token, parsed for `layerpager plan
//! --moe --trace`, which replays them through [`crate::moe::MoeLayout`].

/// The routing an engine recorded (`llama-paged --trace`): one line per
/// token and MoE layer, `TOKEN LAYER EXPERT...`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingTrace {
    /// Per token, in order: each layer's chosen experts, in layer order.
    pub tokens: Vec<Vec<(u32, Vec<u32>)>>,
    /// One more than the highest layer seen.
    pub layers: u32,
    /// One more than the highest expert seen.
    pub experts: u32,
    /// Experts per token and layer (the most seen on one line).
    pub top_k: u32,
}

impl RoutingTrace {
    /// Parses a trace. Lines may come in any order across tokens (a batch
    /// writes one layer for all its tokens, then the next); within a token
    /// its layers are kept in the order they come.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut t = RoutingTrace::default();
        for (n, line) in text.lines().enumerate() {
            let bad = |why: &str| format!("line {}: {why}: '{line}'", n + 1);
            let numbers: Vec<u32> = line
                .split_whitespace()
                .map(|w| w.parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad("expected TOKEN LAYER EXPERT..."))?;
            let [token, layer, experts @ ..] = numbers.as_slice() else {
                return Err(bad("expected TOKEN LAYER EXPERT..."));
            };
            if experts.is_empty() || experts.len() > 1024 || *layer >= 1 << 16 || *token >= 1 << 24 {
                return Err(bad(
                    "a token below 2^24, a layer below 65536 and 1 to 1024 experts",
                ));
            }
            let token = *token as usize;
            if token >= t.tokens.len() {
                t.tokens.resize(token + 1, Vec::new());
            }
            t.layers = t.layers.max(layer + 1);
            t.experts = t.experts.max(experts.iter().max().unwrap_or(&0) + 1);
            t.top_k = t.top_k.max(experts.len() as u32);
            t.tokens[token].push((*layer, experts.to_vec()));
        }
        if t.tokens.is_empty() {
            return Err("the trace is empty".to_owned());
        }
        if let Some(missing) = t.tokens.iter().position(Vec::is_empty) {
            return Err(format!("token {missing} has no line"));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::{MoeLayout, MoeShape};

    #[test]
    fn a_routing_trace_groups_a_batch_by_token_and_refuses_garbage() {
        // A batch of two tokens (layer by layer), then one token.
        let t = RoutingTrace::parse("0 0 3 1\n1 0 2 5\n0 1 0 1\n1 1 7 6\n2 0 4 4\n2 1 0 2\n").unwrap();
        assert_eq!(t.tokens.len(), 3);
        assert_eq!(t.tokens[1], vec![(0, vec![2, 5]), (1, vec![7, 6])]);
        assert_eq!((t.layers, t.experts, t.top_k), (2, 8, 2));
        for bad in ["", "0 0\n", "0 x 1\n", "1 0 1\n", "0 70000 1\n"] {
            assert!(RoutingTrace::parse(bad).is_err(), "{bad:?}");
        }
        // Its access trace: the prologue, each block's dense tensors, the
        // hints, the experts' parts.
        let shape = MoeShape {
            layers: 2,
            experts: 8,
            top_k: 2,
            dense: vec![10],
            expert_parts: [1, 2, 3],
        };
        let layout = MoeLayout::with_prologue(&shape, &[100]);
        let (trace, starts) = layout.routed_trace(&t, false);
        assert_eq!(starts.len(), 3);
        assert_eq!(trace.len(), 3 * (1 + 2 * (1 + 3 * 2)));
        assert_eq!(trace[0], 0, "the prologue first");
    }
}
