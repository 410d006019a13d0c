//! `layerpager demo` (and `layerpager` alone): a synthetic llama-shaped model
//! in a temporary directory, three passes at half its size, the seed design
//! beside layerpager with and without a declared schedule.

use std::path::{Path, PathBuf};

use layerpager::{Error, PagerOptions, PolicyKind};
use layerpager_tools::synth::{write_gguf, LlamaShape};
use layerpager_tools::workload::PassConfig;

use super::bench::{measure, print_header, print_raw_spread, print_runs, raw_reference, FIGURES};
use crate::format::{bar, human};

pub(crate) fn demo(dir: Option<PathBuf>) -> Result<(), Error> {
    let dir = match dir {
        Some(d) => tempfile_in(&d)?,
        None => tempfile_in(&std::env::temp_dir())?,
    };
    let result = demo_in(dir.path());
    drop(dir);
    result
}

/// A temp dir removed on drop (the demo cleans up after itself).
pub(crate) struct TempDir(PathBuf);
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

pub(crate) fn tempfile_in(parent: &Path) -> Result<TempDir, Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = parent.join(format!("layerpager-demo-{}-{nanos}", std::process::id()));
    // Only the demo's own directory is made: a --dir that does not exist is
    // an error, not something to create and leave behind.
    std::fs::create_dir(&path).map_err(|e| Error::from_io(format!("mkdir '{}'", path.display()), &e))?;
    Ok(TempDir(path))
}

pub(crate) fn demo_in(dir: &Path) -> Result<(), Error> {
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
    let raw_before = raw_reference(&path, false)?;
    let io_only = PassConfig {
        passes,
        ..Default::default()
    };
    let with_readers = PagerOptions {
        prefetch_threads: 1,
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
    let raw_after = raw_reference(&path, false)?;
    let raw = raw_before.or_faster(&raw_after);
    println!();
    print_header(total, passes, raw, None);
    print_runs(&runs, budget, passes, raw);
    println!();
    print_raw_spread(&raw_before, &raw_after);
    println!("{FIGURES}");
    println!("Cache dropped (posix_fadvise DONTNEED) before each pass.");
    println!("Try it on your model: layerpager bench MODEL.gguf --budget 50% --passes 3");
    Ok(())
}
