//! `layerpager`: look at a model, pick a budget, see what the pager does.
//!
//! With no arguments it runs the demo on a synthetic llama-shaped model.
//! Each subcommand lives in `cmd/`; what they share in `format.rs`.

mod cmd;
mod format;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use layerpager::Error;
use layerpager_tools::moe::{MoeShape, Routing};
use layerpager_tools::synth::LlamaShape;

use cmd::bench::{bench, BenchArgs};
use cmd::demo::demo;
use cmd::inspect::inspect;
use cmd::plan::{plan, plan_moe, plan_moe_trace, plan_zoo};
use cmd::synth::synth;

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
        /// Budgets: a range FROM..TO/STEP (10%..100%/10%; the step defaults to
        /// 10%) or a list (25%,50%,4G). Units as for bench: 512M = 512MiB,
        /// 4GB = 4*10^9 bytes. Budgets below the largest tensor are shown as
        /// infeasible.
        #[arg(long, default_value = "10%..100%")]
        budgets: String,
        /// Forward passes (tokens) to simulate.
        #[arg(long, default_value_t = 3)]
        passes: u32,
        /// Where to write the plot.
        #[arg(long, default_value = "plan.svg")]
        svg: PathBuf,
        /// Simulate an MoE model instead (Mixtral's tensor sizes), with
        /// seeded routing; every policy beside Belady with the routing known.
        #[arg(long)]
        moe: bool,
        /// With --moe and MODEL: plan from the routing an engine recorded
        /// (`llama-paged --trace FILE`), the model's real sizes, with LRU,
        /// LFU and Belady expert caches beside layerpager.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// With --trace: count from this token on (the ones before warm the
        /// caches up; llama-paged counts from its first generated token).
        #[arg(long, default_value_t = 0)]
        from: usize,
        #[command(flatten)]
        moe_args: MoeArgs,
    },
    /// Write a llama-shaped GGUF with random weights (for trying budgets).
    Synth {
        /// Where to write it.
        out: PathBuf,
        /// Number of blocks (9 is about 300 MB, 48 about 1.45 GB).
        #[arg(long, default_value_t = 9)]
        layers: u32,
        /// Model width (attention matrices are dim x dim Q4_K: 2048 makes
        /// 2.4 MB ones; 768 with --ff 2048 makes every matrix 64 KiB to 1
        /// MiB, the size of an MoE model's expert slices).
        #[arg(long, default_value_t = LlamaShape::DEMO.dim)]
        dim: u64,
        /// Feed-forward width (a multiple of 256, as Q4_K rows are).
        #[arg(long, default_value_t = LlamaShape::DEMO.ff)]
        ff: u64,
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

/// The MoE model and routing `plan --moe` simulates.
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct MoeArgs {
    /// MoE: blocks.
    #[arg(long, default_value_t = 32)]
    layers: u32,
    /// MoE: experts per block.
    #[arg(long, default_value_t = 8)]
    experts: u32,
    /// MoE: experts chosen per token and block.
    #[arg(long, default_value_t = 2)]
    top_k: u32,
    /// MoE: experts only, no dense tensors.
    #[arg(long)]
    no_dense: bool,
    /// MoE routing: Zipf exponent of expert popularity (0 = uniform).
    #[arg(long, default_value_t = 0.8)]
    zipf: f64,
    /// MoE routing: chance a token reuses the previous token's expert, per slot.
    #[arg(long, default_value_t = 0.25)]
    repeat: f64,
    /// MoE routing: chance a token reuses the previous token's whole choice.
    #[arg(long, default_value_t = 0.0)]
    pair_repeat: f64,
    /// MoE routing: tokens between reshuffles of expert popularity (0 = never).
    #[arg(long, default_value_t = 0)]
    drift: usize,
    /// MoE routing: no router hints before each block.
    #[arg(long)]
    no_hints: bool,
    /// MoE routing: tokens to simulate.
    #[arg(long, default_value_t = 400)]
    tokens: usize,
    /// MoE routing: seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// MoE: run the whole routing zoo (the streams the policy is tested on)
    /// instead of one stream.
    #[arg(long)]
    zoo: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum PolicyArg {
    Auto,
    Lru,
    Schedule,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum IoArg {
    Auto,
    Pread,
    Direct,
    Mmap,
}

fn main() -> ExitCode {
    // `layerpager inspect big.gguf | head` should end quietly when the reader
    // goes away, as other command-line tools do, not panic on EPIPE.
    // SAFETY: restoring the default disposition of SIGPIPE at the start of
    // main, before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo { dir: None }) {
        Command::Demo { dir } => demo(dir),
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Synth { out, layers, dim, ff } => synth(&out, layers, dim, ff),
        Command::Plan {
            model,
            budgets,
            passes,
            svg,
            moe,
            trace,
            from,
            moe_args: m,
        } => {
            if let Some(trace) = trace {
                match (moe, model) {
                    (true, Some(model)) => plan_moe_trace(&model, &trace, &budgets, from),
                    _ => Err(Error::InvalidArgument("--trace needs --moe and a MODEL".into())),
                }
            } else if moe && m.zoo {
                plan_zoo(&budgets)
            } else if moe {
                let shape = MoeShape::with(m.layers, m.experts, m.top_k, !m.no_dense);
                let routing = Routing {
                    zipf: m.zipf,
                    repeat: m.repeat,
                    pair_repeat: m.pair_repeat,
                    drift: m.drift,
                    hints: !m.no_hints,
                    seed: m.seed,
                };
                plan_moe(&budgets, &svg, &shape, routing, m.tokens)
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
