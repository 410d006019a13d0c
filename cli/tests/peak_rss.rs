//! Peak RSS of a long sweep stays within the budget plus a small fixed
//! overhead, in every io mode: buffers are returned to the OS or reused,
//! never left growing in a malloc arena. Measured from the process's
//! high-water mark (one test in this binary, so nothing else allocates).

use layerpager::{IoMode, Pager, PagerOptions};
use layerpager_tools::synth::{write_gguf, LlamaShape};
use layerpager_tools::workload::{rss, run_passes, PassConfig};

#[test]
fn long_sweep_peak_rss_stays_within_budget_plus_overhead() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let shape = LlamaShape {
        layers: 6,
        dim: 1024,
        ff: 2816,
        vocab: 8000,
        ggml_type: 12,
    };
    let total = write_gguf(&path, &shape.tensors(), 32, |_| {}).unwrap();
    let budget = total / 3;
    const OVERHEAD: u64 = 24 << 20;
    for io_mode in [IoMode::Pread, IoMode::Direct, IoMode::Mmap] {
        let pager = Pager::open_gguf(
            &path,
            PagerOptions {
                budget_bytes: budget,
                io_mode,
                ..Default::default()
            },
        )
        .unwrap();
        let order = pager.index().forward_order();
        let base = rss::current_bytes().unwrap();
        assert!(rss::reset_peak(), "cannot reset the RSS high-water mark");
        let config = PassConfig {
            passes: 8,
            ..Default::default()
        };
        run_passes(&pager, &order, config, || Ok(()), || {}).unwrap();
        let peak = rss::peak_bytes().unwrap() - base;
        let s = pager.stats();
        assert!(s.peak_resident_bytes <= budget);
        assert!(
            peak <= budget + OVERHEAD,
            "{io_mode:?}: peak RSS grew {peak} bytes for a budget of {budget} (model {total})"
        );
        drop(pager);
    }
}
