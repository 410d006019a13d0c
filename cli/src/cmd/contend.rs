//! `layerpager bench --cgroup-limit`: each contender (mmap as it comes, mmap
//! as llama.cpp maps a model, layerpager in every io mode) sweeps the model
//! in a memory cgroup of its own with the same limit, as a child process of
//! this command; the table says what a kernel-enforced limit did to each:
//! steady seconds per pass, bytes read from storage per steady pass against
//! the bound, peak cgroup memory, OOM kills, refaults.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use layerpager::source::drop_page_cache;
use layerpager::{Error, IoMode, PagerOptions};
use layerpager_tools::cgroup::{file_refaults, storage_read_bytes, MemoryCgroup};
use layerpager_tools::workload::{run_passes, PassConfig};

use super::bench::{raw_reference, RawReference};
use crate::format::{human, open_index, open_pager, parse_size};

/// The contenders, by the name the child is given, with what the table calls them.
const CONTENDERS: [(&str, &str); 5] = [
    ("mmap", "mmap, no hints"),
    ("mmap-llama", "mmap as llama.cpp (MAP_POPULATE, SEQUENTIAL)"),
    ("auto", "layerpager, default io mode (auto)"),
    ("pread", "layerpager, pread dropping behind"),
    ("pager-mmap", "layerpager, io=mmap"),
];

/// The contenders `--contenders` names (comma-separated), in the table's
/// order; all of them without a list.
pub(crate) fn chosen(list: Option<&str>) -> Result<Vec<(&'static str, &'static str)>, Error> {
    let Some(list) = list else {
        return Ok(CONTENDERS.to_vec());
    };
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(bad) = names.iter().find(|n| !CONTENDERS.iter().any(|(c, _)| c == *n)) {
        let known: Vec<&str> = CONTENDERS.iter().map(|(c, _)| *c).collect();
        return Err(Error::InvalidArgument(format!(
            "--contenders: no contender '{bad}' (known: {})",
            known.join(", ")
        )));
    }
    Ok(CONTENDERS
        .iter()
        .copied()
        .filter(|(c, _)| names.contains(c))
        .collect())
}

/// The limit `--cgroup-limit` names for `budget`: a size, or `+SIZE` for
/// the budget plus SIZE.
pub(crate) fn limit_for(text: &str, budget: u64, model: u64) -> Result<u64, Error> {
    match text.trim().strip_prefix('+') {
        Some(extra) => Ok(budget + parse_size(extra, model, "--cgroup-limit")?),
        None => parse_size(text, model, "--cgroup-limit"),
    }
}

/// One contender's passes, in the child: prints `pass SECONDS READ_BYTES`
/// for each.
pub(crate) fn child(model: &Path, name: &str, budget: u64, passes: u32) -> Result<(), Error> {
    let index = open_index(model)?;
    let order = index.forward_order();
    let pass_line = |pass: usize, secs: f64, read: u64| println!("pass {pass} {secs:.6} {read}");
    match name {
        "mmap" | "mmap-llama" => {
            let file = std::fs::File::open(model)
                .map_err(|e| Error::from_io(format!("open of '{}'", model.display()), &e))?;
            let llama = name == "mmap-llama";
            let mut options = memmap2::MmapOptions::new();
            if llama {
                options.populate();
                use std::os::fd::AsRawFd;
                // SAFETY: a valid descriptor owned by `file` for the call.
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
            }
            // SAFETY: the model is not modified while this child maps it.
            let map = unsafe { options.map(&file) }
                .map_err(|e| Error::from_io(format!("mmap of '{}'", model.display()), &e))?;
            if llama {
                let _ = map.advise(memmap2::Advice::WillNeed);
            }
            for pass in 0..passes as usize {
                let (started, read) = (Instant::now(), storage_read_bytes());
                let mut sum = 0u64;
                for &id in &order {
                    let t = &index.tensors()[id as usize];
                    let bytes = &map[t.offset as usize..(t.offset + t.size) as usize];
                    sum += bytes.iter().step_by(4096).map(|&b| b as u64).sum::<u64>();
                }
                std::hint::black_box(sum);
                pass_line(pass, started.elapsed().as_secs_f64(), storage_read_bytes() - read);
            }
        }
        "auto" | "pread" | "pager-mmap" => {
            let io_mode = match name {
                "auto" => IoMode::Auto,
                "pread" => IoMode::Pread,
                _ => IoMode::Mmap,
            };
            let pager = open_pager(
                model,
                PagerOptions {
                    budget_bytes: budget,
                    io_mode,
                    ..Default::default()
                },
            )?;
            println!("pager: {}", pager.describe());
            // Storage bytes read before each pass, and after the last.
            let mut reads = Vec::new();
            let config = PassConfig {
                passes,
                compute_gbps: None,
                declare_schedule: true,
            };
            let before_pass = || {
                reads.push(storage_read_bytes());
                Ok(())
            };
            let report = run_passes(&pager, &order, config, before_pass, || {})?;
            reads.push(storage_read_bytes());
            for (pass, t) in report.pass_times.iter().enumerate() {
                pass_line(pass, t.as_secs_f64(), reads[pass + 1] - reads[pass]);
            }
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "--contender '{}' is not one of mmap, mmap-llama, auto, pread, pager-mmap",
                layerpager::shown(other)
            )))
        }
    }
    Ok(())
}

/// Runs `command` with its output captured, killing it once `limit` has
/// passed; the output, and whether it was stopped.
fn run_within(mut command: std::process::Command, limit: Duration) -> std::io::Result<(Output, bool)> {
    use std::process::Stdio;
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let started = Instant::now();
    let mut stopped = false;
    // The child writes a line a pass: its pipes never fill while it runs.
    while child.try_wait()?.is_none() {
        if started.elapsed() >= limit {
            let _ = child.kill();
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((child.wait_with_output()?, stopped))
}

/// What one contender did under the limit.
struct Outcome {
    name: &'static str,
    label: &'static str,
    /// Seconds and storage bytes of each pass the child finished.
    passes: Vec<(f64, u64)>,
    peak: u64,
    oom_kills: u64,
    refaults: u64,
    failure: Option<String>,
    /// The pager's own line (io mode in effect), for the pager contenders.
    described: Option<String>,
}

/// Runs each of `contenders` (see [`chosen`]) at `budget` under `limit`,
/// `passes` passes each, and prints the table. The page cache of the model
/// is dropped before each.
pub(crate) fn run(
    model: &Path,
    contenders: &[(&'static str, &'static str)],
    budget: u64,
    limit: u64,
    passes: u32,
) -> Result<(), Error> {
    let model_bytes = open_index(model)?.total_bytes();
    let exe = std::env::current_exe().map_err(|e| Error::from_io("the path of this program", &e))?;
    if let Err(why) = MemoryCgroup::create(limit) {
        println!("--cgroup-limit: skipped, no memory cgroup can be made here ({why})");
        return Ok(());
    }
    // The physical bound's speed, measured in the same run, outside the
    // cgroups: the file's raw O_DIRECT speed at the best queue depth, here
    // and again after the contenders (below).
    let raw = raw_reference(model, false)?;
    // A contender that thrashes inside the limit can take many minutes a
    // pass: it is stopped after 30 s plus ten times the raw read of its
    // passes, and reported as stopped.
    let raw_pass = model_bytes as f64 / (raw.gbps * 1e9).max(1.0);
    let time_limit = Duration::from_secs_f64(30.0 + 10.0 * raw_pass * (passes + 1) as f64);
    let mut outcomes: Vec<Outcome> = Vec::new();
    // Two rounds, contenders interleaved, the faster round of each kept:
    // a shared disk's speed drifts, and drift should not pick the winner.
    for (round, (name, label)) in contenders.iter().chain(contenders.iter()).copied().enumerate() {
        drop_page_cache(model)?;
        let cgroup = MemoryCgroup::create(limit).map_err(Error::InvalidArgument)?;
        let refaults = file_refaults();
        let budget_arg = budget.to_string();
        let passes_arg = passes.to_string();
        let model_arg = model.display().to_string();
        let args = [
            "bench",
            &model_arg,
            "--budget",
            &budget_arg,
            "--passes",
            &passes_arg,
            "--contender",
            name,
        ];
        let (out, stopped) = run_within(cgroup.command(&exe, &args, &[]), time_limit)
            .map_err(|e| Error::from_io("start of a contender", &e))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: Vec<(f64, u64)> = stdout
            .lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("pass ")?.split_whitespace().skip(1);
                Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
            })
            .collect();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let outcome = Outcome {
            name,
            label,
            passes: parsed,
            peak: cgroup.peak(),
            oom_kills: cgroup.oom_kills(),
            refaults: file_refaults() - refaults,
            described: stdout
                .lines()
                .find_map(|l| l.strip_prefix("pager: "))
                .map(str::to_owned),
            failure: (!out.status.success()).then(|| {
                use std::os::unix::process::ExitStatusExt;
                match (out.status.signal(), stderr.lines().last()) {
                    _ if stopped => format!(
                        "stopped after {} s: no finish in sight (thrashing inside the limit)",
                        time_limit.as_secs()
                    ),
                    (Some(libc::SIGKILL), _) if cgroup.oom_kills() > 0 => {
                        "killed (SIGKILL: the OOM killer)".to_owned()
                    }
                    (Some(libc::SIGKILL), _) => "killed (SIGKILL, not by the OOM killer)".to_owned(),
                    (_, Some(line)) => line.to_owned(),
                    (_, None) => out.status.to_string(),
                }
            }),
        };
        if round < contenders.len() {
            outcomes.push(outcome);
        } else {
            outcomes[round % contenders.len()].keep_better(outcome);
        }
    }
    // The faster of the two probes, as the faster round of each contender.
    let raw_after = raw_reference(model, false)?;
    print_table(
        &outcomes,
        model_bytes,
        budget,
        limit,
        passes,
        raw.or_faster(&raw_after),
    );
    Ok(())
}

impl Outcome {
    /// Mean seconds of the steady passes (all but the first), if any.
    fn steady_secs(&self) -> Option<f64> {
        let steady = &self.passes[self.passes.len().min(1)..];
        (!steady.is_empty()).then(|| steady.iter().map(|p| p.0).sum::<f64>() / steady.len() as f64)
    }

    /// Merges a second round: the faster passes, the higher peak, every
    /// OOM kill and failure.
    fn keep_better(&mut self, other: Outcome) {
        let faster = match (other.steady_secs(), self.steady_secs()) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => self.failure.is_none(),
            _ => false,
        };
        self.peak = self.peak.max(other.peak);
        self.oom_kills += other.oom_kills;
        if faster {
            self.passes = other.passes;
            self.refaults = other.refaults;
        }
        if self.failure.is_none() {
            self.failure = other.failure;
        }
    }
}

fn print_table(outcomes: &[Outcome], model: u64, budget: u64, limit: u64, passes: u32, raw: &RawReference) {
    // A steady pass re-reads at least what the budget does not hold.
    let bound = model.saturating_sub(budget).max(1);
    println!();
    println!(
        "memory cgroup limit {} | budget {} ({:.0}% of the model) | {passes} passes, the first cold | steady-pass bound {} read | raw {}: {:.2} GB/s",
        human(limit),
        human(budget),
        budget as f64 * 100.0 / model as f64,
        human(bound),
        raw.how,
        raw.gbps
    );
    println!(
        "{:<46} {:>8} {:>8} {:>11} {:>9} {:>10} {:>5} {:>10}",
        "contender", "s/pass", "vs raw", "read/pass", "vs bound", "peak cg", "OOM", "refaults"
    );
    for o in outcomes {
        let steady = &o.passes[o.passes.len().min(1)..];
        let secs = o.steady_secs();
        let read =
            (!steady.is_empty()).then(|| steady.iter().map(|p| p.1).sum::<u64>() / steady.len() as u64);
        // The pass's time over its own bytes at the raw speed.
        let vs_raw = secs
            .zip(read)
            .filter(|&(_, r)| r > 0)
            .map(|(s, r)| s / (r as f64 / (raw.gbps * 1e9)));
        println!(
            "{:<46} {:>8} {:>8} {:>11} {:>9} {:>10} {:>5} {:>10}",
            o.label,
            secs.map_or("-".into(), |s| format!("{s:.3}")),
            vs_raw.map_or("-".into(), |v| format!("{v:.2}x")),
            read.map_or("-".into(), human),
            read.map_or("-".into(), |r| format!("{:.2}x", r as f64 / bound as f64)),
            human(o.peak),
            o.oom_kills,
            o.refaults
        );
        if let Some(f) = &o.failure {
            println!("    ended early ({} of {passes} passes): {f}", o.passes.len());
        }
    }
    if let Some(auto) = outcomes.iter().find(|o| o.name == "auto") {
        if let Some(line) = &auto.described {
            let io = line
                .split(", io ")
                .nth(1)
                .and_then(|r| r.split(", budget").next())
                .unwrap_or(line);
            println!("the default io mode chose: {io}");
        }
    }
    println!(
        "Each contender ran twice, interleaved with the others; the faster run is shown, OOM kills of both.
'read/pass' is bytes the storage delivered per steady pass (/proc/self/io); 'vs bound' over M - B.
'vs raw' is s/pass over those bytes at the raw O_DIRECT speed, the faster of a probe before the
contenders and one after (1.00x is the disk's speed; no compute is simulated here).
'peak cg' is the cgroup's highest memory use, page cache included; 'refaults' counts file pages read
again soon after the kernel dropped them (machine-wide, during that contender)."
    );
}
