//! The forward-pass workload: what the demo, `layerpager bench` and the
//! benchmarks run. A pass acquires every tensor in the model's forward
//! order, optionally spends simulated compute time on it, and releases it.

use std::time::{Duration, Instant};

use layerpager::Result;
use layerpager::{Pager, Stats};

/// How to run the passes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassConfig {
    /// Number of forward passes (tokens).
    pub passes: u32,
    /// Simulated compute speed in GB/s of weights (None = no compute).
    pub compute_gbps: Option<f64>,
    /// Declare the pass order with `set_schedule` first.
    pub declare_schedule: bool,
}

/// What a run of passes measured.
#[derive(Debug, Clone)]
pub struct PassReport {
    /// Wall time of each pass.
    pub pass_times: Vec<Duration>,
    /// Total simulated compute time.
    pub compute: Duration,
    /// The pager's counters at the end.
    pub stats: Stats,
    /// Bytes of all tensors in the order.
    pub model_bytes: u64,
}

impl PassReport {
    /// Total wall time.
    pub fn wall(&self) -> Duration {
        self.pass_times.iter().sum()
    }

    /// Fraction of acquisitions that were hits (reuse and read-ahead).
    pub fn hit_ratio(&self) -> f64 {
        self.share(self.stats.hits)
    }

    /// Fraction of acquisitions served by a tensor kept from an earlier use.
    pub fn reuse_ratio(&self) -> f64 {
        self.share(self.stats.hits.saturating_sub(self.stats.prefetch_hits))
    }

    /// Fraction of acquisitions served by a tensor the background readers
    /// read before it was asked for.
    pub fn read_ahead_ratio(&self) -> f64 {
        self.share(self.stats.prefetch_hits)
    }

    fn share(&self, count: u64) -> f64 {
        let total = self.stats.hits + self.stats.misses;
        if total == 0 {
            0.0
        } else {
            count as f64 / total as f64
        }
    }
}

/// Bytes a pager must read at least over `passes` passes of a model of
/// `model` bytes with `budget` bytes of RAM: M + (P-1)(M-B).
pub fn lower_bound_bytes(model: u64, budget: u64, passes: u32) -> u64 {
    let keep = if budget == 0 { model } else { budget.min(model) };
    model + (passes.saturating_sub(1) as u64) * (model - keep)
}

/// Busy-waits `d`: simulated compute that keeps a core as a real one would.
fn spin(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// Runs the passes over `order` and reports what they cost. `before_pass`
/// runs before each pass, outside the timing (the benchmarks drop the
/// file's page cache there, as on a machine whose RAM cannot cache the model).
pub fn run_passes(
    pager: &Pager,
    order: &[u32],
    config: PassConfig,
    mut before_pass: impl FnMut() -> Result<()>,
    mut tick: impl FnMut(),
) -> Result<PassReport> {
    if config.declare_schedule {
        pager.set_schedule(order)?;
    }
    let mut model_bytes = 0u64;
    for &id in order {
        model_bytes += pager.info(id)?.size;
    }
    let mut pass_times = Vec::new();
    let mut compute = Duration::ZERO;
    for _ in 0..config.passes {
        before_pass()?;
        let started = Instant::now();
        for &id in order {
            let a = pager.acquire(id)?;
            if let Some(gbps) = config.compute_gbps {
                let d = Duration::from_secs_f64(a.bytes().len() as f64 / (gbps * 1e9));
                spin(d);
                compute += d;
            }
            std::hint::black_box(a.bytes().first());
            drop(a);
            tick();
        }
        pass_times.push(started.elapsed());
    }
    Ok(PassReport {
        pass_times,
        compute,
        stats: pager.stats(),
        model_bytes,
    })
}

/// Peak resident set size of this process so far, in bytes (VmHWM), and a
/// way to reset it so that the next reading covers only what follows.
pub mod rss {
    /// The high-water mark of resident memory, bytes.
    pub fn peak_bytes() -> Option<u64> {
        field("VmHWM:")
    }

    /// The resident memory now, bytes.
    pub fn current_bytes() -> Option<u64> {
        field("VmRSS:")
    }

    /// Resets the high-water mark to the current RSS (Linux 4.0+).
    pub fn reset_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    fn field(name: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_bound_is_m_plus_rereads_of_what_does_not_fit() {
        assert_eq!(lower_bound_bytes(1000, 500, 3), 2000);
        assert_eq!(lower_bound_bytes(1000, 0, 3), 1000);
        assert_eq!(lower_bound_bytes(1000, 2000, 3), 1000);
        assert_eq!(lower_bound_bytes(1000, 500, 1), 1000);
    }

    #[test]
    fn rss_is_readable() {
        assert!(rss::current_bytes().unwrap() > 0);
        assert!(rss::peak_bytes().unwrap() >= rss::current_bytes().unwrap() / 2);
    }
}
