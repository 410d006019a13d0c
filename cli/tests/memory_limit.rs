//! The budget holds inside a real kernel memory limit: `layerpager bench`
//! runs in a memory cgroup (v1, as root) whose limit is the budget + 8 MiB,
//! in the default io mode, without being OOM-killed. Skipped, saying why,
//! where no memory cgroup can be made (not root, cgroup v2 without a memory
//! controller, a read-only /sys).

use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// A memory cgroup of our own below the process's, removed on drop.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn create(limit: u64) -> Result<Self, String> {
        let own =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let path = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_owned())
            })
            .ok_or("no cgroup v1 memory controller for this process")?;
        let dir = Path::new("/sys/fs/cgroup/memory")
            .join(path.trim_start_matches('/'))
            .join(format!("layerpager-test-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cgroup = MemoryCgroup(dir);
        std::fs::write(cgroup.0.join("memory.limit_in_bytes"), limit.to_string())
            .map_err(|e| format!("memory.limit_in_bytes: {e}"))?;
        Ok(cgroup)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file)).unwrap_or_default()
    }

    fn oom_kills(&self) -> u64 {
        self.read("memory.oom_control")
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

const EXE: &str = env!("CARGO_BIN_EXE_layerpager");

/// A synthetic llama-shaped model of `layers` blocks in `dir`.
fn synth(dir: &Path, layers: u32) -> PathBuf {
    let model = dir.join("m.gguf");
    let out = Command::new(EXE)
        .args(["synth", model.to_str().unwrap(), "--layers", &layers.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    model
}

/// `layerpager bench MODEL --budget BUDGET --passes 2` inside `cgroup` (the
/// shell moves itself in, then becomes the bench); stdout and stderr.
fn bench_in(cgroup: &MemoryCgroup, model: &Path, budget: &str) -> (bool, String, String) {
    let script = format!(
        "echo $$ > '{}' && exec '{EXE}' bench '{}' --budget {budget} --passes 2",
        cgroup.0.join("cgroup.procs").display(),
        model.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A cgroup limited to `limit`, or `None` (said on stderr) where none can be made.
fn cgroup_or_skip(limit: u64) -> Option<MemoryCgroup> {
    match MemoryCgroup::create(limit) {
        Ok(c) => Some(c),
        Err(why) => {
            eprintln!("skipped: no memory cgroup can be made here ({why})");
            None
        }
    }
}

#[test]
fn default_io_mode_holds_a_cgroup_limit_of_budget_plus_8_mib() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth(dir.path(), 9);
    let budget = std::fs::metadata(&model).unwrap().len() / 2;
    let Some(cgroup) = cgroup_or_skip(budget + 8 * MIB) else {
        return;
    };
    let (ok, stdout, stderr) = bench_in(&cgroup, &model, &budget.to_string());
    assert_eq!(
        cgroup.oom_kills(),
        0,
        "OOM-killed under budget + 8 MiB:\n{stdout}\n{stderr}"
    );
    assert!(ok, "{stdout}\n{stderr}");
    let peak: u64 = cgroup
        .read("memory.max_usage_in_bytes")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(peak <= budget + 8 * MIB, "peak {peak} past the limit");
    assert!(
        stdout.contains("layerpager, schedule declared, 1 reader"),
        "{stdout}"
    );
}

#[test]
fn budget_auto_follows_the_cgroup_limit() {
    let dir = tempfile::tempdir().unwrap();
    let model = synth(dir.path(), 4);
    let Some(cgroup) = cgroup_or_skip(160 * MIB) else {
        return;
    };
    let (ok, stdout, stderr) = bench_in(&cgroup, &model, "auto");
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(cgroup.oom_kills(), 0);
    // The budget is the limit less what the process used then, less 64 MiB.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("budget "))
        .expect("a budget line");
    let mib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(mib > 60.0 && mib < 96.0, "{line}");
}
