//! `layerpager plan`: simulated passes over a model's real tensor sizes (or a
//! Mixtral-shaped MoE with seeded routing) for each budget and policy, as a
//! table and an SVG plot. No tensor data is read.

use std::path::Path;

use layerpager::index::block_of;
use layerpager::index::TensorIndex;
use layerpager::policy::{EvictionPolicy, Lru, ScheduleAware};
use layerpager::Error;
use layerpager_tools::moe::{compare, shadow_cost, zoo, MoeComparison, MoeLayout, MoeShape, Routing};
use layerpager_tools::routing_trace::RoutingTrace;
use layerpager_tools::sim::{simulate, Belady, Lfu};
use layerpager_tools::workload::lower_bound_bytes;

use crate::format::{file_name, human, open_index, parse_budgets};

pub(crate) fn plan(path: &Path, budgets: &str, passes: u32, svg: &Path) -> Result<(), Error> {
    let index = open_index(path)?;
    let model = index.total_bytes();
    let budgets = parse_budgets(budgets, model)?;
    if passes == 0 {
        return Err(Error::InvalidArgument("--passes must be at least 1".into()));
    }
    let sizes: Vec<u64> = index.tensors().iter().map(|t| t.size).collect();
    let order = index.forward_order();
    let trace: Vec<u32> = (0..passes).flat_map(|_| order.iter().copied()).collect();
    let n = sizes.len();
    let has_blocks = index.tensors().iter().any(|t| block_of(&t.name).is_some());
    println!(
        "{}: {} in {} tensors, {passes} passes simulated (no data read)",
        path.display(),
        human(model),
        n
    );
    println!(
        "{:>12} {:>6} | {:>12} {:>12} {:>12} {:>12}",
        "budget", "%", "lower bound", "LRU", "declared", "not declared"
    );
    println!(
        "{:>21} (bytes read per token, averaged over the passes, the first one cold)",
        ""
    );
    let largest = index.largest_tensor();
    let mut rows = Vec::new();
    for &budget in &budgets {
        let per_token = |bytes: u64| bytes / passes as u64;
        if budget == 0 || budget < largest {
            println!(
                "{:>12} {:>5.0}% | infeasible: the largest tensor needs {}",
                human(budget),
                budget as f64 * 100.0 / model as f64,
                human(largest)
            );
            continue;
        }
        let lru = simulate(&sizes, &trace, budget, &Lru::new(n)).bytes_read;
        let declared = {
            let p = ScheduleAware::new(n, false);
            p.set_schedule(&order);
            simulate(&sizes, &trace, budget, &p).bytes_read
        };
        let learned = {
            let p = ScheduleAware::new(n, true);
            if has_blocks {
                p.guess(&order);
            }
            simulate(&sizes, &trace, budget, &p).bytes_read
        };
        let bound = lower_bound_bytes(model, budget, passes);
        println!(
            "{:>12} {:>5.0}% | {:>12} {:>12} {:>12} {:>12}",
            human(budget),
            budget as f64 * 100.0 / model as f64,
            human(per_token(bound)),
            human(per_token(lru)),
            human(per_token(declared)),
            human(per_token(learned))
        );
        rows.push((budget, [bound, lru, declared, learned].map(per_token)));
    }
    let series = [
        "lower bound M + (P-1)(M-B)",
        "LRU",
        "layerpager, schedule declared",
        "layerpager, not declared",
    ];
    // Bytes read over the lower bound: the bound is the line at 1, and the
    // gap of each policy to it is what the plot shows.
    let points: Vec<Vec<(f64, f64)>> = (0..4)
        .map(|k| {
            rows.iter()
                .map(|(b, v): &(u64, [u64; 4])| {
                    (*b as f64 * 100.0 / model as f64, v[k] as f64 / v[0].max(1) as f64)
                })
                .collect()
        })
        .collect();
    plot(
        svg,
        &format!(
            "{}: bytes read per token over the lower bound ({passes} passes)",
            file_name(path)
        ),
        "budget (% of the model)",
        "bytes read / lower bound",
        &series,
        &points,
    )?;
    println!("plot written to {}", svg.display());
    Ok(())
}

pub(crate) fn plan_moe(
    budgets: &str,
    svg: &Path,
    shape: &MoeShape,
    routing: Routing,
    tokens: usize,
) -> Result<(), Error> {
    let unit = |x: f64| (0.0..=1.0).contains(&x);
    if !(0.0..=4.0).contains(&routing.zipf)
        || !unit(routing.repeat)
        || !unit(routing.pair_repeat)
        || tokens < 10
    {
        return Err(Error::InvalidArgument(
            "--zipf must be in 0..4, --repeat and --pair-repeat in 0..1, --tokens at least 10".into(),
        ));
    }
    if shape.layers == 0
        || shape.experts == 0
        || shape.top_k == 0
        || shape.experts > 1024
        || shape.layers > 1024
    {
        return Err(Error::InvalidArgument(
            "--layers and --experts must be in 1..1024, --top-k at least 1".into(),
        ));
    }
    let shares = budget_shares(budgets)?;
    println!(
        "MoE, {}; {}; {tokens} tokens (the first tenth warms up)",
        shape.describe(),
        routing.describe()
    );
    let rows = compare(shape, routing, tokens, &shares);
    print_moe_rows(&rows);
    let middle = shares[shares.len() / 2];
    let (ns, slice) = shadow_cost(shape, routing, tokens, middle);
    println!(
        "shadow simulations at {:.0}%: {:.1} us per miss; a miss reads an expert slice of {:.1}M parameters (about {:.1} ms at 3 GB/s in Q4_K)",
        middle * 100.0,
        ns / 1000.0,
        slice as f64 / 1e6,
        slice as f64 * 0.5625 / 3e9 * 1e3
    );
    let series = [
        "Belady (routing known)",
        "LRU",
        "S3-FIFO",
        "frequency admission",
        "layerpager",
    ];
    let points: Vec<Vec<(f64, f64)>> = (0..5)
        .map(|k| {
            rows.iter()
                .map(|r| {
                    let v = [r.belady, r.lru, r.s3fifo, r.frequency, r.layerpager][k];
                    (r.budget_share * 100.0, v * 100.0)
                })
                .collect()
        })
        .collect();
    plot(
        svg,
        "MoE expert paging: byte hit ratio vs budget",
        "budget (% of the model)",
        "byte hit ratio (%)",
        &series,
        &points,
    )?;
    println!("plot written to {}", svg.display());
    Ok(())
}

/// Budget shares (0..1) from a `--budgets` argument in percent.
fn budget_shares(budgets: &str) -> Result<Vec<f64>, Error> {
    let shares: Vec<f64> = parse_budgets(budgets, 10_000)?
        .iter()
        .map(|&b| b as f64 / 10_000.0)
        .filter(|&s| s > 0.0)
        .collect();
    if shares.is_empty() {
        return Err(Error::InvalidArgument(
            "--budgets names no budget above 0%".into(),
        ));
    }
    Ok(shares)
}

fn print_moe_rows(rows: &[MoeComparison]) {
    println!(
        "{:>6} | {:>8} {:>8} {:>10} {:>11} {:>8}   (byte hit ratio)",
        "budget", "LRU", "S3-FIFO", "frequency", "layerpager", "Belady"
    );
    for r in rows {
        println!(
            "{:>5.0}% | {:>7.1}% {:>7.1}% {:>9.1}% {:>10.1}% {:>7.1}%",
            r.budget_share * 100.0,
            r.lru * 100.0,
            r.s3fifo * 100.0,
            r.frequency * 100.0,
            r.layerpager * 100.0,
            r.belady * 100.0
        );
    }
}

/// `plan --moe --zoo`: every stream of the routing zoo at each budget, and
/// how the default policy stands against the best reference and Belady.
pub(crate) fn plan_zoo(budgets: &str) -> Result<(), Error> {
    let shares = budget_shares(budgets)?;
    let (mut worst, mut sum, mut count) = (f64::INFINITY, 0.0, 0usize);
    for z in zoo() {
        println!(
            "\n{}; {}; {} tokens",
            z.shape.describe(),
            z.routing.describe(),
            z.tokens
        );
        let rows = compare(&z.shape, z.routing, z.tokens, &shares);
        print_moe_rows(&rows);
        for r in &rows {
            worst = worst.min(r.layerpager - r.lru.max(r.s3fifo).max(r.frequency));
            sum += r.layerpager / r.belady;
            count += 1;
        }
    }
    println!(
        "\nlayerpager vs the best of LRU, S3-FIFO and frequency, worst case: {:+.1} points; share of Belady's byte hits, mean: {:.2}",
        worst * 100.0,
        sum / count as f64
    );
    Ok(())
}

/// A line chart as SVG: each series its own colour and marker (the first,
/// a bound, thin grey without markers), the legend beside the plot, never
/// over the data.
fn plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[&str],
    points: &[Vec<(f64, f64)>],
) -> Result<(), Error> {
    use plotters::prelude::*;
    // An unwritable path is an I/O error with its errno, said before drawing.
    std::fs::File::create(path)
        .map_err(|e| Error::from_io(format!("write of plot '{}'", path.display()), &e))?;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1040, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, legend) = root.split_horizontally(760);
        let x_max = points.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
        let y_max = points.iter().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.08;
        let mut chart = ChartBuilder::on(&left)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max)?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
        let colors = [
            RGBColor(120, 120, 120),
            RED,
            BLUE,
            RGBColor(0, 150, 0),
            MAGENTA,
            CYAN,
        ];
        for (i, pts) in points.iter().enumerate() {
            let color = colors[i % colors.len()];
            let style = ShapeStyle::from(&color).stroke_width(if i == 0 { 1 } else { 2 });
            chart.draw_series(LineSeries::new(pts.iter().copied(), style))?;
            let filled = style.filled();
            match i % 5 {
                0 => {}
                1 => {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, filled)))?;
                }
                2 => {
                    chart.draw_series(pts.iter().map(|&p| TriangleMarker::new(p, 5, filled)))?;
                }
                3 => {
                    chart.draw_series(pts.iter().map(|&p| Cross::new(p, 5, style)))?;
                }
                _ => {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 5, style)))?;
                }
            }
        }
        for (i, name) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            let y = 60 + 28 * i as i32;
            legend.draw(&PathElement::new(vec![(8, y), (36, y)], color.stroke_width(2)))?;
            legend.draw(&Text::new(name.to_string(), (44, y - 7), ("sans-serif", 14)))?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::Io {
        context: format!("write of plot '{}'", path.display()),
        errno: 0,
        message: e.to_string(),
    })
}

/// An MoE model's shape from its file: blocks with merged expert tensors
/// (`blk.N.ffn_{up,gate,down}_exps.weight`, experts on the outer dimension),
/// the first such block's other tensors as every block's dense part, and
/// the tensors outside the blocks.
fn moe_shape_of(index: &TensorIndex, top_k: u32) -> Result<(MoeShape, Vec<u64>), Error> {
    let mut parts = [0u64; 3];
    let mut experts = 0u32;
    let mut layers = 0u32;
    let mut first_block = None;
    for t in index.tensors() {
        let Some(block) = block_of(&t.name) else { continue };
        let part = ["ffn_up_exps", "ffn_gate_exps", "ffn_down_exps"]
            .iter()
            .position(|p| t.name.ends_with(&format!(".{p}.weight")));
        if let (Some(part), [_, _, n, ..]) = (part, t.dims.as_slice()) {
            experts = *n as u32;
            parts[part] = t.size / n.max(&1);
            layers = layers.max(block as u32 + 1);
            first_block.get_or_insert(block);
        }
    }
    let Some(first_block) = first_block.filter(|_| experts > 1) else {
        return Err(Error::InvalidArgument(
            "the model has no merged expert tensors (blk.N.ffn_up_exps.weight)".into(),
        ));
    };
    let dense = index
        .tensors()
        .iter()
        .filter(|t| block_of(&t.name) == Some(first_block) && !t.name.contains("_exps."))
        .map(|t| t.size)
        .collect();
    let outside = index
        .tensors()
        .iter()
        .filter(|t| block_of(&t.name).is_none())
        .map(|t| t.size)
        .collect();
    let shape = MoeShape {
        layers,
        experts,
        top_k,
        dense,
        expert_parts: parts,
    };
    Ok((shape, outside))
}

/// `plan MODEL --moe --trace FILE`: bytes read per token at each budget on
/// a routing the engine recorded. The references are expert caches in the
/// room the budget leaves beside the dense weights (LRU, LFU, and Belady
/// with the routing known); layerpager is simulated over the whole model
/// (dense tensors and experts share the budget), hinted at each top-k.
pub(crate) fn plan_moe_trace(model: &Path, trace: &Path, budgets: &str, from: usize) -> Result<(), Error> {
    let text = std::fs::read_to_string(trace).map_err(|e| Error::Io {
        context: format!("reading the trace {}", trace.display()),
        errno: e.raw_os_error().unwrap_or(0),
        message: e.to_string(),
    })?;
    let bad_trace = |why: String| Error::InvalidArgument(format!("{}: {why}", trace.display()));
    let routing = RoutingTrace::parse(&text).map_err(bad_trace)?;
    let index = open_index(model)?;
    let (shape, outside) = moe_shape_of(&index, routing.top_k)?;
    if routing.layers > shape.layers || routing.experts > shape.experts {
        return Err(bad_trace(format!(
            "it names layer {} or expert {}, the model has {} layers of {} experts",
            routing.layers - 1,
            routing.experts - 1,
            shape.layers,
            shape.experts
        )));
    }
    if from >= routing.tokens.len() {
        return Err(Error::InvalidArgument(format!(
            "--from {from}: the trace has {} tokens",
            routing.tokens.len()
        )));
    }
    let measured = (routing.tokens.len() - from) as f64;
    let layout = MoeLayout::with_prologue(&shape, &outside);
    let model_bytes = index.total_bytes();
    let unit: u64 = shape.expert_parts.iter().sum();
    let dense_bytes = layout.model_bytes() - unit * (shape.experts * shape.layers) as u64;
    let (ours_trace, ours_starts) = layout.routed_trace(&routing, true);
    let experts_only = MoeLayout::new(&MoeShape {
        dense: Vec::new(),
        ..shape.clone()
    });
    let (units_trace, units_starts) = experts_only.routed_trace(&routing, false);
    let routed: usize = routing.tokens[from..]
        .iter()
        .flatten()
        .map(|(_, e)| e.len())
        .sum();
    println!(
        "{}: {} tokens routed through {} layers of {} experts, top-{}; a unit (one expert of one layer) is {}, \
         the dense weights {}; counted from token {from}: {:.1} units ({}) routed per token",
        file_name(trace),
        routing.tokens.len(),
        routing.layers,
        shape.experts,
        routing.top_k,
        human(unit),
        human(dense_bytes),
        routed as f64 / measured,
        human((routed as f64 * unit as f64 / measured) as u64),
    );
    println!(
        "{:>10} {:>5} {:>12} | {:>10} {:>10} {:>10} {:>12}",
        "budget", "%", "expert room", "LRU", "LFU", "Belady", "layerpager"
    );
    println!(
        "{:>31} (MiB read per token; LRU/LFU/Belady: an expert cache in the room beside the dense weights)",
        ""
    );
    let mib = |bytes: u64| bytes as f64 / measured / (1 << 20) as f64;
    for budget in parse_budgets(budgets, model_bytes)? {
        let share = budget as f64 * 100.0 / model_bytes as f64;
        let room = budget.saturating_sub(dense_bytes);
        if room < unit * routing.top_k as u64 {
            println!(
                "{:>10} {:>4.0}% | infeasible: the dense weights and one layer's routed experts need {}",
                human(budget),
                share,
                human(dense_bytes + unit * routing.top_k as u64)
            );
            continue;
        }
        let units = |policy: &dyn EvictionPolicy| {
            mib(experts_only
                .simulate(&units_trace, room, policy, units_starts[from])
                .bytes_read)
        };
        let n = experts_only.sizes.len();
        let ours = layout.simulate(&ours_trace, budget, &layout.default_policy(), ours_starts[from]);
        println!(
            "{:>10} {:>4.0}% {:>12} | {:>10.2} {:>10.2} {:>10.2} {:>12.2}",
            human(budget),
            share,
            format!("{} units", room / unit),
            units(&Lru::new(n)),
            units(&Lfu::new()),
            units(&Belady::new(&units_trace)),
            mib(ours.bytes_read)
        );
    }
    Ok(())
}
