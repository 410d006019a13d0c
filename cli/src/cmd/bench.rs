//! `layerpager bench`: forward passes over a real model under a budget,
//! beside the seed design and a raw read of the same file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use layerpager::source::{drop_page_cache, raw_direct_speed, raw_pread_sweep};
use layerpager::{Error, IoMode, PagerOptions, PolicyKind};
use layerpager_tools::workload::{lower_bound_bytes, rss, run_passes, PassConfig, PassReport};

use super::contend;
use crate::format::{bar, gbps, human, open_index, open_pager, parse_budget};
use crate::{IoArg, PolicyArg};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// The model file (GGUF or safetensors).
    model: PathBuf,
    /// RAM budget: bytes, 512M or 512MiB (binary), 4GB (decimal), a share
    /// of the model like 50%, or auto (what the memory cgroup's limit, else
    /// MemAvailable, leaves, less 64 MiB); several, comma-separated
    /// (25%,50%,4G), run one after another. Each must hold the largest
    /// tensor.
    #[arg(long, default_value = "50%")]
    budget: String,
    /// Forward passes (tokens).
    #[arg(long, default_value_t = 3)]
    passes: u32,
    /// Eviction policy.
    #[arg(long, value_enum, default_value_t = PolicyArg::Auto)]
    policy: PolicyArg,
    /// How the file is read.
    /// (auto: O_DIRECT with a budget where the file system allows it.)
    #[arg(long, value_enum, default_value_t = IoArg::Auto)]
    io: IoArg,
    /// Background reader threads.
    #[arg(long, default_value_t = 1)]
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
    /// Run each contender (mmap as it comes, mmap as llama.cpp maps a
    /// model, layerpager in every io mode) in a memory cgroup of its own
    /// limited to SIZE (bytes, 512M, ..., or +SIZE: the budget plus SIZE),
    /// and print what the limit did to each. Needs root and a memory
    /// controller (cgroup v1, or v2 with memory enabled); says why it skips
    /// otherwise.
    #[arg(long, value_name = "SIZE")]
    cgroup_limit: Option<String>,
    /// With --cgroup-limit, only these contenders (comma-separated: mmap,
    /// mmap-llama, auto, pread, pager-mmap; default all).
    #[arg(long, value_name = "LIST")]
    contenders: Option<String>,
    /// One contender of --cgroup-limit, run as its child.
    #[arg(long, hide = true)]
    contender: Option<String>,
}

/// One measured configuration.
pub(crate) struct Run {
    label: String,
    /// The pager's own line: io mode in effect, budget, policy.
    described: String,
    report: PassReport,
    peak_rss_delta: Option<u64>,
}

pub(crate) fn measure(
    path: &Path,
    label: &str,
    options: PagerOptions,
    config: PassConfig,
    warm: bool,
) -> Result<Run, Error> {
    let pager = open_pager(path, options)?;
    let described = pager.describe();
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
        described,
        report,
        peak_rss_delta: base.zip(peak).map(|(b, p)| p.saturating_sub(b)),
    })
}

/// The physical reference a run is measured against, measured in the same
/// run: how fast the device (cold) or the page cache (warm) reads the file.
#[derive(Debug, Clone)]
pub(crate) struct RawReference {
    pub(crate) gbps: f64,
    /// How it was read, for the header.
    pub(crate) how: String,
}

impl RawReference {
    /// This reference or `other`, whichever is faster: of a probe before
    /// the runs and one after, the faster is the disk's speed (a shared
    /// disk has slow seconds, and one on the only probe made runs look
    /// faster than the disk).
    pub(crate) fn or_faster<'a>(&'a self, other: &'a RawReference) -> &'a RawReference {
        if other.gbps > self.gbps {
            other
        } else {
            self
        }
    }
}

/// Cold: the file's raw O_DIRECT speed, sequential 2 MiB requests at the
/// best queue depth (1 to 8); warm: a sequential 8 MiB pread loop over the cached file.
pub(crate) fn raw_reference(path: &Path, warm: bool) -> Result<RawReference, Error> {
    if warm {
        let started = Instant::now();
        let bytes = raw_pread_sweep(path, 8 << 20)?;
        return Ok(RawReference {
            gbps: gbps(bytes, started.elapsed()),
            how: "pread (8 MiB, page cache warm)".to_owned(),
        });
    }
    let speed = raw_direct_speed(path)?;
    Ok(RawReference {
        gbps: speed.bytes_per_second / 1e9,
        how: format!(
            "O_DIRECT (sequential 2 MiB requests, best queue depth {}{})",
            speed.depth,
            if speed.io_uring {
                ""
            } else {
                ", no io_uring: one at a time"
            }
        ),
    })
}

pub(crate) fn print_header(model: u64, passes: u32, raw: &RawReference, compute_gbps: Option<f64>) {
    println!(
        "model {} | {passes} passes | simulated compute {} | raw {} read of the same file: {:.2} GB/s",
        human(model),
        compute_gbps.map_or("none".to_owned(), |g| format!("{g} GB/s")),
        raw.how,
        raw.gbps,
    );
}

pub(crate) fn print_runs(runs: &[Run], budget: u64, passes: u32, raw: &RawReference) {
    let model = runs[0].report.model_bytes;
    let bound = lower_bound_bytes(model, budget, passes);
    let raw_gbps = raw.gbps;
    println!();
    println!(
        "budget {} ({:.0}% of the model) | lower bound {} read ({} per pass)",
        human(budget),
        budget as f64 * 100.0 / model as f64,
        human(bound),
        human(bound / passes as u64)
    );
    println!(
        "{:<42} {:>6} {:>6} {:>11} {:>8} {:>8} {:>10} {:>7} {:>7} {:>11} {:>10}",
        "run",
        "reuse",
        "ahead",
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
            "{:<42} {:>5.1}% {:>5.1}% {:>11} {:>7.3}x {:>8.3} {:>9.2}x {:>7.2} {:>6.2}x {:>11} {:>10}",
            r.label,
            r.report.reuse_ratio() * 100.0,
            r.report.read_ahead_ratio() * 100.0,
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
    if let Some(last) = runs.last() {
        println!("last run: {}", last.described);
    }
}

/// What the budget covers in mmap mode, said under every mmap table.
const MMAP_NOTE: &str = "--io mmap: 'peak resid' counts the tensors the pager holds; the kernel keeps
other pages of the mapping in the page cache as it sees fit, so 'peak RSS+' may exceed the budget.
Use pread (default) or --io direct for a budget that holds RSS.";

/// Prints the raw reference measured before and after the runs, and how far
/// apart the two are: ratios against it are as good as it is stable.
pub(crate) fn print_raw_spread(before: &RawReference, after: &RawReference) {
    let (b, a) = (before.gbps, after.gbps);
    println!(
        "raw reference: {b:.2} GB/s before the runs, {a:.2} GB/s after ({:.0}% apart): \
         'vs raw' and 'vs ideal' use the faster",
        (a - b).abs() * 100.0 / b.max(a).max(1e-9)
    );
}

pub(crate) const FIGURES: &str =
    "'vs bound' is bytes read over M + (P-1)(M-B). 'vs ideal' is wall time over the
physical bound, max(compute, this run's bytes at the raw speed). 'vs raw' is read throughput over the
raw speed of the same file, measured in the same run: O_DIRECT with sequential 2 MiB requests at
the best queue depth when the cache is dropped, an 8 MiB pread loop when it is warm.
'peak RSS+' is the process's peak resident memory growth during the run. 'reuse' is the share of
acquisitions served by a tensor kept from an earlier use, 'ahead' the share served by a tensor the
background readers read before it was asked for; the rest waited for a read.";

pub(crate) fn bench(a: BenchArgs) -> Result<(), Error> {
    let index = open_index(&a.model)?;
    let model = index.total_bytes();
    // O_DIRECT reads whole pages around a tensor: up to two more pages.
    let largest = index.largest_tensor()
        + if matches!(a.io, IoArg::Direct | IoArg::Auto) {
            8192
        } else {
            0
        };
    // Every budget is checked before any work is done.
    let budgets = a
        .budget
        .split(',')
        .map(|b| parse_budget(b, model, largest, "--budget"))
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
    if let Some(name) = &a.contender {
        return contend::child(&a.model, name, budgets[0], a.passes);
    }
    let contenders = contend::chosen(a.contenders.as_deref())?;
    if let Some(limit) = &a.cgroup_limit {
        for &budget in &budgets {
            contend::run(
                &a.model,
                &contenders,
                budget,
                contend::limit_for(limit, budget, model)?,
                a.passes,
            )?;
        }
        return Ok(());
    }
    if a.contenders.is_some() {
        return Err(Error::InvalidArgument(
            "--contenders chooses among the contenders of --cgroup-limit: give that too".to_owned(),
        ));
    }
    let raw_before = raw_reference(&a.model, a.warm)?;
    let config = PassConfig {
        passes: a.passes,
        compute_gbps: a.compute_gbps,
        declare_schedule: !a.no_schedule,
    };
    let io_mode = match a.io {
        IoArg::Auto => IoMode::Auto,
        IoArg::Pread => IoMode::Pread,
        IoArg::Direct => IoMode::Direct,
        IoArg::Mmap => IoMode::Mmap,
    };
    let mut tables = Vec::new();
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
        let declared = match (a.policy, a.no_schedule) {
            (PolicyArg::Lru, _) => "LRU",
            (_, true) => "no schedule declared",
            (_, false) => "schedule declared",
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
            &format!(
                "layerpager, {declared}, {} reader{}",
                a.prefetch,
                if a.prefetch == 1 { "" } else { "s" }
            ),
            ours,
            config,
            a.warm,
        )?);
        tables.push((budget, runs));
    }
    // The tables wait for the second probe (`RawReference::or_faster`).
    let raw_after = raw_reference(&a.model, a.warm)?;
    let raw = raw_before.or_faster(&raw_after);
    print_header(model, a.passes, raw, a.compute_gbps);
    for (budget, runs) in &tables {
        print_runs(runs, *budget, a.passes, raw);
    }
    println!();
    print_raw_spread(&raw_before, &raw_after);
    println!("{FIGURES}");
    if matches!(a.io, IoArg::Mmap) {
        println!("{MMAP_NOTE}");
    }
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
