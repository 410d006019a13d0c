//! The memory this process may still use: its memory cgroup's limit (v2
//! `memory.max`, v1 `memory.limit_in_bytes`) less what the cgroup already
//! uses, or, without a limit, the machine's `MemAvailable`. This is what
//! `budget = auto` (`PAGER_BUDGET_AUTO`) is derived from, and what
//! `follow_memory` watches.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The budget value that asks for a budget derived from the memory limit
/// (`PAGER_BUDGET_AUTO` in C).
pub const BUDGET_AUTO: u64 = u64::MAX;

/// What `budget = auto` leaves free for the rest of the process: its code,
/// heap and stacks, the engine's own buffers are not the pager's to take.
pub const AUTO_HEADROOM: u64 = 64 << 20;

/// Where the memory figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemorySource {
    /// A cgroup v2 `memory.max` (path of the cgroup).
    CgroupV2(PathBuf),
    /// A cgroup v1 `memory.limit_in_bytes` (path of the cgroup).
    CgroupV1(PathBuf),
    /// `/proc/meminfo`'s `MemAvailable`: no limit on this process.
    MemAvailable,
}

/// The memory this process may still take, and where the figure came from.
pub fn available_memory() -> Result<(u64, MemorySource)> {
    left_under(&locate(), false)
}

/// What the process may still allocate before its memory limit presses:
/// the cgroup's limit less its working set (use less the inactive file
/// pages the kernel drops first), or `MemAvailable`.
pub fn room() -> Result<(u64, MemorySource)> {
    left_under(&locate(), true)
}

/// Where this process's memory limit would be: its memory cgroup (v2, or
/// v1's memory controller), else the machine. Read once by a watcher that
/// then calls [`left_under`] on every look.
pub fn locate() -> MemorySource {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            let dir = Path::new("/sys/fs/cgroup").join(rel);
            if dir.join("memory.max").exists() {
                return MemorySource::CgroupV2(dir);
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            return MemorySource::CgroupV1(Path::new("/sys/fs/cgroup/memory").join(rel));
        }
    }
    MemorySource::MemAvailable
}

/// What `source` says the process may still take: the cgroup's limit less
/// its use (less its inactive file pages with `working_set`), or, where the
/// cgroup sets no limit, `MemAvailable`; and where the figure came from.
pub fn left_under(source: &MemorySource, working_set: bool) -> Result<(u64, MemorySource)> {
    let inactive = |dir: &Path, field: &str| if working_set { stat_field(dir, field) } else { 0 };
    match source {
        MemorySource::CgroupV2(dir) => {
            // "max" reads as no number: no limit here.
            if let (Some(max), Some(current)) = (
                read_number(&dir.join("memory.max")),
                read_number(&dir.join("memory.current")),
            ) {
                let used = current.saturating_sub(inactive(dir, "inactive_file"));
                return Ok((max.saturating_sub(used), source.clone()));
            }
        }
        MemorySource::CgroupV1(dir) => {
            if let (Some(limit), Some(usage)) = (
                read_number(&dir.join("memory.limit_in_bytes")),
                read_number(&dir.join("memory.usage_in_bytes")),
            ) {
                // v1 says "no limit" with a number near 2^63.
                if limit < (1 << 62) {
                    let used = usage.saturating_sub(inactive(dir, "total_inactive_file"));
                    return Ok((limit.saturating_sub(used), source.clone()));
                }
            }
        }
        MemorySource::MemAvailable => {}
    }
    let meminfo =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| Error::from_io("read of /proc/meminfo", &e))?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| Error::InvalidArgument("no MemAvailable in /proc/meminfo".to_owned()))?;
    Ok((kib * 1024, MemorySource::MemAvailable))
}

/// The budget `budget = auto` gives: the memory this process may still take
/// less [`AUTO_HEADROOM`].
pub fn auto_budget() -> Result<u64> {
    let (free, source) = available_memory()?;
    let budget = free.saturating_sub(AUTO_HEADROOM);
    if budget == 0 {
        return Err(Error::Budget(format!(
            "budget auto: {free} bytes left under {source:?}, less than the {AUTO_HEADROOM}-byte headroom"
        )));
    }
    Ok(budget)
}

/// A field of the cgroup's `memory.stat`, or 0.
fn stat_field(dir: &Path, name: &str) -> u64 {
    std::fs::read_to_string(dir.join("memory.stat"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// A file of one number ("max" in cgroup v2 reads as no number).
fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn some_memory_is_available_and_auto_leaves_the_headroom() {
        let (free, _) = available_memory().unwrap();
        assert!(free > 0);
        if let Ok(b) = auto_budget() {
            assert!(b < free, "auto {b} must leave headroom below {free}");
        }
        // The working set leaves out reclaimable file pages: never less room.
        let (room, _) = room().unwrap();
        assert!(room + (64 << 20) >= free, "room {room}, free {free}");
    }
}
