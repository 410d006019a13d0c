//! Memory cgroups for measurements and tests: a cgroup of our own below the
//! process's, with a memory limit, that a child command is started in, and
//! what the kernel says of it afterwards (peak use, OOM kills). cgroup v1's
//! memory controller (as root) or cgroup v2 with the memory controller
//! enabled for our subtree; anything else is an error that says why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Numbers the cgroups one process makes (tests run in parallel).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A memory cgroup with a limit, removed on drop.
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// Makes a cgroup below this process's own, limited to `limit` bytes.
    pub fn create(limit: u64) -> Result<Self, String> {
        let own =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let mut base = None;
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "memory") {
                base = Some((Path::new("/sys/fs/cgroup/memory").join(rel), false));
                break;
            }
            if controllers.is_empty() {
                let dir = Path::new("/sys/fs/cgroup").join(rel);
                let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
                if enabled.split_whitespace().any(|c| c == "memory") {
                    base = Some((dir, true));
                }
            }
        }
        let (parent, v2) = base.ok_or("no memory controller for this process's cgroup (v1 memory, or v2 with memory in subtree_control)")?;
        let dir = parent.join(format!(
            "layerpager-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cgroup = MemoryCgroup { dir, v2 };
        let file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
        std::fs::write(cgroup.dir.join(file), limit.to_string()).map_err(|e| format!("{file}: {e}"))?;
        Ok(cgroup)
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Runs `program args...` inside the cgroup (a shell moves itself in,
    /// then becomes the program), with `env` added; its output.
    pub fn run(&self, program: &Path, args: &[&str], env: &[(&str, &str)]) -> std::io::Result<Output> {
        self.command(program, args, env).output()
    }

    /// The command [`MemoryCgroup::run`] runs, to spawn it instead.
    pub fn command(&self, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut script = format!(
            "echo $$ > {} && exec {}",
            quote(&self.dir.join("cgroup.procs").display().to_string()),
            quote(&program.display().to_string())
        );
        for a in args {
            script.push(' ');
            script.push_str(&quote(a));
        }
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// Processes the kernel's OOM killer ended in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill ")
        } else {
            ("memory.oom_control", "oom_kill ")
        };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The highest memory use the cgroup has seen, in bytes (0 if unknown).
    pub fn peak(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read(file).trim().parse().unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Pages of files read again soon after the kernel dropped them, machine-wide
/// (`/proc/vmstat`): the thrash a memory limit causes.
pub fn file_refaults() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("workingset_refault_file ")
                .or_else(|| l.strip_prefix("workingset_refault "))?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Bytes this process has caused to be read from storage (`/proc/self/io`).
pub fn storage_read_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("read_bytes: ")?.trim().parse().ok())
        .unwrap_or(0)
}
