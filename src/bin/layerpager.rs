//! `layerpager`: look at a model, pick a budget, see what the pager does.
//!
//! With no arguments it runs the demo on a synthetic llama-shaped model.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use layerpager::index::{block_of, ggml_type_name, IndexFormat};
use layerpager::moe::{compare, MoeShape, Routing};
use layerpager::policy::{EvictionPolicy, Lru, ScheduleAware};
use layerpager::sim::simulate;
use layerpager::source::{drop_page_cache, raw_pread_sweep};
use layerpager::synth::{write_gguf, LlamaShape};
use layerpager::workload::{lower_bound_bytes, rss, run_passes, PassConfig, PassReport};
use layerpager::{Error, IoMode, Pager, PagerOptions, PolicyKind, TensorIndex};

#[derive(Parser)]
#[command(
    name = "layerpager",
    version,
    about = "Page LLM weights under a RAM budget: inspect, bench, demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a llama-shaped model (~300 MB) to a temp dir and run forward
    /// passes at half its size, with and without a declared schedule.
    Demo {
        /// Directory for the temporary model (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Simulate forward passes over a model's real tensor sizes for each
    /// budget and policy, without reading data: how much RAM buys how much
    /// disk traffic. Prints a table and writes an SVG plot.
    Plan {
        /// The model file (GGUF or safetensors); not needed with --moe.
        model: Option<PathBuf>,
        /// Budgets: a range with a step (10%..100%, step 10%) or a list (25%,50%,4G).
        #[arg(long, default_value = "10%..100%")]
        budgets: String,
        /// Forward passes (tokens) to simulate.
        #[arg(long, default_value_t = 3)]
        passes: u32,
        /// Where to write the plot.
        #[arg(long, default_value = "plan.svg")]
        svg: PathBuf,
        /// Simulate a Mixtral-shaped MoE model instead, with seeded routing.
        #[arg(long)]
        moe: bool,
        /// MoE routing: Zipf exponent of expert popularity.
        #[arg(long, default_value_t = 0.8)]
        zipf: f64,
        /// MoE routing: chance a token reuses the previous token's expert.
        #[arg(long, default_value_t = 0.25)]
        repeat: f64,
        /// MoE routing: tokens to simulate.
        #[arg(long, default_value_t = 400)]
        tokens: usize,
    },
    /// Write a llama-shaped GGUF with random weights (for trying budgets).
    Synth {
        /// Where to write it.
        out: PathBuf,
        /// Number of blocks (9 is about 300 MB, 48 about 1.45 GB).
        #[arg(long, default_value_t = 9)]
        layers: u32,
    },
    /// Show a GGUF or safetensors model's metadata and tensors.
    Inspect {
        /// The model file.
        model: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run forward passes over a real model under a budget, beside the seed
    /// design and a raw pread of the same file.
    Bench(BenchArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Auto,
    Lru,
    Schedule,
}

#[derive(Clone, Copy, ValueEnum)]
enum IoArg {
    Pread,
    Direct,
    Mmap,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo { dir: None }) {
        Command::Demo { dir } => demo(dir),
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Synth { out, layers } => synth(&out, layers),
        Command::Plan {
            model,
            budgets,
            passes,
            svg,
            moe,
            zipf,
            repeat,
            tokens,
        } => {
            if moe {
                plan_moe(
                    &budgets,
                    &svg,
                    Routing {
                        zipf,
                        repeat,
                        ..Routing::default()
                    },
                    tokens,
                )
            } else {
                match model {
                    Some(m) => plan(&m, &budgets, passes, &svg),
                    None => Err(Error::InvalidArgument("plan needs a MODEL (or --moe)".into())),
                }
            }
        }
        Command::Bench(args) => bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerpager: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses 123, 512K, 512M, 4G, 1.5T (binary units) or N% of `whole`.
fn parse_size(text: &str, whole: u64, flag: &str) -> Result<u64, Error> {
    let bad = || Error::InvalidArgument(format!("{flag} '{text}': expected bytes, 512M, 4G or 40%"));
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(0.0..=1000.0).contains(&p) {
            return Err(bad());
        }
        return Ok((whole as f64 * p / 100.0) as u64);
    }
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(bad()),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if n < 0.0 {
        return Err(bad());
    }
    Ok((n * mult as f64) as u64)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

fn open_index(path: &Path) -> Result<TensorIndex, Error> {
    Ok(open_pager(path, PagerOptions::default())?.index().clone())
}

fn open_pager(path: &Path, options: PagerOptions) -> Result<Pager, Error> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors {
        Pager::open_safetensors(path, options)
    } else {
        Pager::open_gguf(path, options)
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:<42} [{bar:30}] {percent:>3}% {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

fn inspect(path: &Path, json: bool) -> Result<(), Error> {
    let index = open_index(path)?;
    let tensors = index.tensors();
    if json {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        println!("{{");
        println!("  \"file\": \"{}\",", esc(&path.display().to_string()));
        println!("  \"format\": \"{:?}\",", index.format());
        println!("  \"file_bytes\": {},", index.source_size());
        println!("  \"tensor_bytes\": {},", index.total_bytes());
        println!("  \"metadata\": {{");
        let md = index.metadata();
        for (i, (k, v)) in md.iter().enumerate() {
            let comma = if i + 1 < md.len() { "," } else { "" };
            println!("    \"{}\": \"{}\"{comma}", esc(k), esc(&v.to_string()));
        }
        println!("  }},");
        println!("  \"tensors\": [");
        for (i, t) in tensors.iter().enumerate() {
            let comma = if i + 1 < tensors.len() { "," } else { "" };
            let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
            println!(
                "    {{\"id\": {i}, \"name\": \"{}\", \"type\": \"{}\", \"dims\": [{}], \"offset\": {}, \"bytes\": {}}}{comma}",
                esc(&t.name),
                esc(t.dtype.as_deref().unwrap_or("?")),
                dims.join(", "),
                t.offset,
                t.size
            );
        }
        println!("  ]");
        println!("}}");
        return Ok(());
    }
    println!("{}", path.display());
    let format = match index.format() {
        IndexFormat::Gguf => "GGUF",
        IndexFormat::Safetensors => "safetensors",
        IndexFormat::Table => "table",
    };
    println!(
        "  format {format}, {} tensors, {} of tensor data in a {} file",
        tensors.len(),
        human(index.total_bytes()),
        human(index.source_size())
    );
    for (k, v) in index.metadata() {
        let text = v.to_string();
        let text = if text.chars().count() > 100 {
            format!("{}...", text.chars().take(97).collect::<String>())
        } else {
            text
        };
        println!("  {k} = {text}");
    }
    println!();
    println!(
        "{:>5}  {:<40} {:<8} {:<22} {:>14} {:>12}",
        "id", "name", "type", "dims", "offset", "bytes"
    );
    let mut current_block: Option<Option<u64>> = None;
    let mut block_bytes = 0u64;
    let flush = |block: Option<Option<u64>>, bytes: u64| {
        if let Some(Some(n)) = block {
            println!(
                "{:>5}  {:<40} {:>59}",
                "",
                format!("-- block {n} total"),
                human(bytes)
            );
        }
    };
    for (i, t) in tensors.iter().enumerate() {
        let block = block_of(&t.name);
        if current_block != Some(block) {
            flush(current_block, block_bytes);
            current_block = Some(block);
            block_bytes = 0;
        }
        block_bytes += t.size;
        let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
        let ty = t
            .ggml_type
            .and_then(ggml_type_name)
            .map(str::to_owned)
            .or_else(|| t.dtype.clone())
            .unwrap_or_else(|| "?".into());
        println!(
            "{i:>5}  {:<40} {ty:<8} {:<22} {:>14} {:>12}",
            t.name,
            dims.join("x"),
            t.offset,
            t.size
        );
    }
    flush(current_block, block_bytes);
    println!();
    println!(
        "  total {} in {} tensors; largest {}",
        human(index.total_bytes()),
        tensors.len(),
        human(index.largest_tensor())
    );
    Ok(())
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The model file (GGUF or safetensors).
    model: PathBuf,
    /// RAM budget: bytes, 512M, 4G, or a share of the model like 50%;
    /// several, comma-separated, run one after another.
    #[arg(long, default_value = "50%")]
    budget: String,
    /// Forward passes (tokens).
    #[arg(long, default_value_t = 3)]
    passes: u32,
    /// Eviction policy.
    #[arg(long, value_enum, default_value_t = PolicyArg::Auto)]
    policy: PolicyArg,
    /// How the file is read.
    #[arg(long, value_enum, default_value_t = IoArg::Pread)]
    io: IoArg,
    /// Background reader threads.
    #[arg(long, default_value_t = 2)]
    prefetch: u32,
    /// Simulated compute speed in GB/s of weights (none: I/O only).
    #[arg(long)]
    compute_gbps: Option<f64>,
    /// Do not declare the pass order (let the pager learn it).
    #[arg(long)]
    no_schedule: bool,
    /// Keep the page cache warm (default: drop it before each pass).
    #[arg(long)]
    warm: bool,
}

/// One measured configuration.
struct Run {
    label: String,
    report: PassReport,
    peak_rss_delta: Option<u64>,
}

fn measure(
    path: &Path,
    label: &str,
    options: PagerOptions,
    config: PassConfig,
    warm: bool,
) -> Result<Run, Error> {
    let pager = open_pager(path, options)?;
    let order = pager.index().forward_order();
    let pb = bar(order.len() as u64 * config.passes as u64, label);
    let base = rss::current_bytes();
    rss::reset_peak();
    let before_pass = || if warm { Ok(()) } else { drop_page_cache(path) };
    let report = run_passes(&pager, &order, config, before_pass, || pb.inc(1))?;
    let peak = rss::peak_bytes();
    pb.finish_and_clear();
    drop(pager);
    Ok(Run {
        label: label.to_owned(),
        report,
        peak_rss_delta: base.zip(peak).map(|(b, p)| p.saturating_sub(b)),
    })
}

fn raw_reference(path: &Path, warm: bool) -> Result<(u64, Duration), Error> {
    if !warm {
        drop_page_cache(path)?;
    }
    let started = Instant::now();
    let bytes = raw_pread_sweep(path, 8 << 20)?;
    Ok((bytes, started.elapsed()))
}

fn print_header(model: u64, passes: u32, raw: (u64, Duration), compute_gbps: Option<f64>) {
    println!(
        "model {} | {passes} passes | simulated compute {} | raw pread of the same file: {:.2} GB/s ({} in {:.2?})",
        human(model),
        compute_gbps.map_or("none".to_owned(), |g| format!("{g} GB/s")),
        gbps(raw.0, raw.1),
        human(raw.0),
        raw.1
    );
}

fn print_runs(runs: &[Run], budget: u64, passes: u32, raw: (u64, Duration)) {
    let model = runs[0].report.model_bytes;
    let bound = lower_bound_bytes(model, budget, passes);
    let raw_gbps = gbps(raw.0, raw.1);
    println!();
    println!(
        "budget {} ({:.0}% of the model) | lower bound {} read ({} per pass)",
        human(budget),
        budget as f64 * 100.0 / model as f64,
        human(bound),
        human(bound / passes as u64)
    );
    println!(
        "{:<42} {:>6} {:>11} {:>8} {:>8} {:>10} {:>7} {:>7} {:>11} {:>10}",
        "run",
        "hits",
        "read/pass",
        "vs bound",
        "s/pass",
        "vs ideal",
        "GB/s",
        "vs raw",
        "peak resid",
        "peak RSS+"
    );
    for r in runs {
        let s = &r.report.stats;
        let wall = r.report.wall();
        let per_pass = wall / passes.max(1);
        let read_gbps = gbps(s.bytes_read, wall);
        // The ideal time: compute and this run's reads at raw speed, overlapped.
        let io = s.bytes_read as f64 / (raw_gbps * 1e9);
        let ideal = r.report.compute.as_secs_f64().max(io);
        println!(
            "{:<42} {:>5.1}% {:>11} {:>7.3}x {:>8.3} {:>9.2}x {:>7.2} {:>6.2}x {:>11} {:>10}",
            r.label,
            r.report.hit_ratio() * 100.0,
            human(s.bytes_read / passes.max(1) as u64),
            s.bytes_read as f64 / bound as f64,
            per_pass.as_secs_f64(),
            wall.as_secs_f64() / ideal.max(1e-9),
            read_gbps,
            read_gbps / raw_gbps,
            human(s.peak_resident_bytes),
            r.peak_rss_delta.map(human).unwrap_or_else(|| "?".into()),
        );
    }
}

const FIGURES: &str = "'vs bound' is bytes read over M + (P-1)(M-B). 'vs ideal' is wall time over
max(compute, this run's bytes at raw pread speed). 'vs raw' is read throughput over a raw
8 MiB pread loop of the same file, measured in the same run, cold or warm as the runs.
'peak RSS+' is the process's peak resident memory growth during the run.";

fn bench(a: BenchArgs) -> Result<(), Error> {
    let index = open_index(&a.model)?;
    let model = index.total_bytes();
    let budgets = a
        .budget
        .split(',')
        .map(|b| parse_size(b, model, "--budget"))
        .collect::<Result<Vec<_>, _>>()?;
    if a.passes == 0 {
        return Err(Error::InvalidArgument("--passes must be at least 1".into()));
    }
    if let Some(g) = a.compute_gbps {
        if !(g > 0.0 && g.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "--compute-gbps {g}: expected a positive number"
            )));
        }
    }
    let raw = raw_reference(&a.model, a.warm)?;
    print_header(model, a.passes, raw, a.compute_gbps);
    let config = PassConfig {
        passes: a.passes,
        compute_gbps: a.compute_gbps,
        declare_schedule: !a.no_schedule,
    };
    let io_mode = match a.io {
        IoArg::Pread => IoMode::Pread,
        IoArg::Direct => IoMode::Direct,
        IoArg::Mmap => IoMode::Mmap,
    };
    for budget in budgets {
        let seed = PagerOptions {
            budget_bytes: budget,
            policy: PolicyKind::Lru,
            io_mode,
            prefetch_threads: 0,
            ..Default::default()
        };
        let ours = PagerOptions {
            policy: match a.policy {
                PolicyArg::Auto => PolicyKind::Auto,
                PolicyArg::Lru => PolicyKind::Lru,
                PolicyArg::Schedule => PolicyKind::Schedule,
            },
            prefetch_threads: a.prefetch,
            ..seed.clone()
        };
        let declared = if a.no_schedule {
            "no schedule declared"
        } else {
            "schedule declared"
        };
        let mut runs = vec![measure(
            &a.model,
            "seed design: LRU, read on demand",
            seed,
            PassConfig {
                declare_schedule: false,
                ..config
            },
            a.warm,
        )?];
        if a.prefetch > 0 {
            runs.push(measure(
                &a.model,
                &format!("layerpager, {declared}, no readers"),
                PagerOptions {
                    prefetch_threads: 0,
                    ..ours.clone()
                },
                config,
                a.warm,
            )?);
        }
        runs.push(measure(
            &a.model,
            &format!("layerpager, {declared}, {} readers", a.prefetch),
            ours,
            config,
            a.warm,
        )?);
        print_runs(&runs, budget, a.passes, raw);
    }
    println!();
    println!("{FIGURES}");
    println!(
        "Cache: {}.",
        if a.warm {
            "warm"
        } else {
            "dropped (posix_fadvise DONTNEED) before each pass"
        }
    );
    Ok(())
}

/// Budgets from "10%..100%" (step 10%), "5%..50%/5%" or a list "25%,4G".
fn parse_budgets(text: &str, model: u64) -> Result<Vec<u64>, Error> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--budgets '{text}': expected 10%..100%, 10%..90%/20% or 25%,50%,4G"
        ))
    };
    if let Some((from, rest)) = text.split_once("..") {
        let (to, step) = rest.split_once('/').unwrap_or((rest, "10%"));
        let (from, to, step) = (
            parse_size(from, model, "--budgets")?,
            parse_size(to, model, "--budgets")?,
            parse_size(step, model, "--budgets")?,
        );
        if step == 0 || from > to || (to - from) / step > 1000 {
            return Err(bad());
        }
        let count = (to - from) / step;
        // The last budget is exactly `to` (whole-percent steps round down).
        let mut out: Vec<u64> = (0..=count).map(|i| from + i * step).collect();
        if to - out[out.len() - 1] < step / 2 {
            *out.last_mut().expect("at least one") = to;
        } else {
            out.push(to);
        }
        return Ok(out);
    }
    text.split(',')
        .map(|b| parse_size(b, model, "--budgets"))
        .collect()
}

fn plan(path: &Path, budgets: &str, passes: u32, svg: &Path) -> Result<(), Error> {
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
    let mut rows = Vec::new();
    for &budget in &budgets {
        let per_token = |bytes: u64| bytes / passes as u64;
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
    let points: Vec<Vec<(f64, f64)>> = (0..4)
        .map(|k| {
            rows.iter()
                .map(|(b, v)| {
                    (
                        *b as f64 * 100.0 / model as f64,
                        v[k] as f64 / (1u64 << 20) as f64,
                    )
                })
                .collect()
        })
        .collect();
    plot(
        svg,
        &format!(
            "{}: bytes read per token vs budget ({passes} passes)",
            file_name(path)
        ),
        "budget (% of the model)",
        "MiB read per token",
        &series,
        &points,
    )?;
    println!("plot written to {}", svg.display());
    Ok(())
}

fn plan_moe(budgets: &str, svg: &Path, routing: Routing, tokens: usize) -> Result<(), Error> {
    if !(0.0..=4.0).contains(&routing.zipf) || !(0.0..=1.0).contains(&routing.repeat) || tokens < 10 {
        return Err(Error::InvalidArgument(
            "--zipf must be in 0..4, --repeat in 0..1, --tokens at least 10".into(),
        ));
    }
    let shares: Vec<f64> = parse_budgets(budgets, 10_000)?
        .iter()
        .map(|&b| b as f64 / 10_000.0)
        .collect();
    let shape = MoeShape::mixtral();
    println!(
        "Mixtral-shaped MoE ({} blocks, {} experts, top-{}), Zipf {} routing, repeat {}, {tokens} tokens (first tenth warms up)",
        shape.layers, shape.experts, shape.top_k, routing.zipf, routing.repeat
    );
    println!(
        "{:>6} | {:>8} {:>8} {:>10} {:>11} {:>8}   (byte hit ratio)",
        "budget", "LRU", "S3-FIFO", "frequency", "layerpager", "Belady"
    );
    let rows = compare(&shape, routing, tokens, &shares);
    for r in &rows {
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

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A line chart as SVG: the first series is drawn dashed grey (a bound).
fn plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[&str],
    points: &[Vec<(f64, f64)>],
) -> Result<(), Error> {
    use plotters::prelude::*;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = points.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
        let y_max = points.iter().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
        let colors = [RGBColor(120, 120, 120), RED, BLUE, GREEN, MAGENTA, CYAN];
        for (i, (name, pts)) in series.iter().zip(points).enumerate() {
            let color = colors[i % colors.len()];
            let style = ShapeStyle::from(&color).stroke_width(if i == 0 { 1 } else { 2 });
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::Io {
        context: format!("write of plot '{}'", path.display()),
        errno: 0,
        message: e.to_string(),
    })
}

fn synth(out: &Path, layers: u32) -> Result<(), Error> {
    let shape = LlamaShape {
        layers,
        ..LlamaShape::DEMO
    };
    let tensors = shape.tensors();
    let total: u64 = tensors.iter().map(|t| t.size()).sum();
    let pb = bar(total, "writing the model");
    let size = write_gguf(out, &tensors, 32, |done| pb.set_position(done))?;
    pb.finish_and_clear();
    println!("{}: {} tensors, {}", out.display(), tensors.len(), human(size));
    Ok(())
}

fn demo(dir: Option<PathBuf>) -> Result<(), Error> {
    let dir = match dir {
        Some(d) => tempfile_in(&d)?,
        None => tempfile_in(&std::env::temp_dir())?,
    };
    let result = demo_in(dir.path());
    drop(dir);
    result
}

/// A temp dir removed on drop (the demo cleans up after itself).
struct TempDir(PathBuf);
impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_in(parent: &Path) -> Result<TempDir, Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = parent.join(format!("layerpager-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&path).map_err(|e| Error::from_io(format!("mkdir '{}'", path.display()), &e))?;
    Ok(TempDir(path))
}

fn demo_in(dir: &Path) -> Result<(), Error> {
    let path = dir.join("demo-llama.gguf");
    let tensors = LlamaShape::DEMO.tensors();
    let total: u64 = tensors.iter().map(|t| t.size()).sum();
    println!("layerpager {} demo", layerpager::VERSION);
    println!(
        "Writing a llama-shaped GGUF ({} blocks, Q4_K, {}) to {}",
        LlamaShape::DEMO.layers,
        human(total),
        path.display()
    );
    let pb = bar(total, "writing the model");
    write_gguf(&path, &tensors, 32, |done| pb.set_position(done))?;
    pb.finish_and_clear();
    let passes = 3;
    let budget = total / 2;
    let base = PagerOptions {
        budget_bytes: budget,
        ..Default::default()
    };
    let raw = raw_reference(&path, false)?;
    let io_only = PassConfig {
        passes,
        ..Default::default()
    };
    let with_readers = PagerOptions {
        prefetch_threads: 2,
        ..base.clone()
    };
    let runs = vec![
        measure(
            &path,
            "seed design: LRU, read on demand",
            PagerOptions {
                policy: PolicyKind::Lru,
                ..base.clone()
            },
            io_only,
            false,
        )?,
        measure(
            &path,
            "layerpager, schedule declared",
            with_readers.clone(),
            PassConfig {
                declare_schedule: true,
                ..io_only
            },
            false,
        )?,
        measure(
            &path,
            "layerpager, no schedule declared",
            with_readers,
            io_only,
            false,
        )?,
    ];
    println!();
    print_header(total, passes, raw, None);
    print_runs(&runs, budget, passes, raw);
    println!();
    println!("{FIGURES}");
    println!("Cache dropped (posix_fadvise DONTNEED) before each pass.");
    println!("Try it on your model: layerpager bench MODEL.gguf --budget 50% --passes 3");
    Ok(())
}
