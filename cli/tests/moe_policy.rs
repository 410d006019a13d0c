//! Expert-aware eviction on a Mixtral-shaped model (8 experts, top-2), by
//! simulation over a seeded routing trace: byte hit ratios at budgets of
//! 25/50/75% meet the targets, and never fall below the best of LRU,
//! S3-FIFO and frequency admission (within half a point) at budgets from 25%
//! to 90% and routing skews from uniform to Zipf 1.2.

use layerpager_tools::moe::{compare, MoeShape, Routing};

#[test]
fn mixtral_zipf_0_8_meets_the_byte_hit_targets() {
    let rows = compare(&MoeShape::mixtral(), Routing::default(), 400, &[0.25, 0.5, 0.75]);
    for (row, target) in rows.iter().zip([0.45, 0.72, 0.88]) {
        eprintln!("{row:?}");
        assert!(row.layerpager >= target, "{row:?} below {target}");
        assert!(row.layerpager <= row.belady + 1e-9, "{row:?} above the optimum");
    }
}

#[test]
fn never_below_the_best_reference_at_any_budget_or_skew() {
    for zipf in [0.0, 0.4, 0.8, 1.2] {
        let routing = Routing {
            zipf,
            ..Routing::default()
        };
        for row in compare(
            &MoeShape::mixtral(),
            routing,
            300,
            &[0.25, 0.4, 0.5, 0.6, 0.75, 0.9],
        ) {
            let best = row.lru.max(row.s3fifo).max(row.frequency);
            assert!(row.layerpager + 0.005 >= best, "zipf {zipf}: {row:?}");
        }
    }
}
