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
    memory_left(false)
}

/// What the process may still allocate before its memory limit presses:
/// the cgroup's limit less its working set (use less the inactive file
/// pages the kernel drops first), or `MemAvailable`. What
/// `follow_memory` watches.
pub fn room() -> Result<(u64, MemorySource)> {
    memory_left(true)
}

/// The cgroup's limit less its use (less its inactive file pages with
/// `working_set`), or `MemAvailable`.
fn memory_left(working_set: bool) -> Result<(u64, MemorySource)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            let dir = Path::new("/sys/fs/cgroup").join(rel);
            if let (Some(max), Some(current)) = (
                read_number(&dir.join("memory.max")),
                read_number(&dir.join("memory.current")),
            ) {
                let inactive = if working_set {
                    stat_field(&dir, "inactive_file")
                } else {
                    0
                };
                let used = current.saturating_sub(inactive);
                return Ok((max.saturating_sub(used), MemorySource::CgroupV2(dir)));
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = Path::new("/sys/fs/cgroup/memory").join(rel);
            if let (Some(limit), Some(usage)) = (
                read_number(&dir.join("memory.limit_in_bytes")),
                read_number(&dir.join("memory.usage_in_bytes")),
            ) {
                // v1 says "no limit" with a number near 2^63.
                if limit < (1 << 62) {
                    let inactive = if working_set {
                        stat_field(&dir, "total_inactive_file")
                    } else {
                        0
                    };
                    let used = usage.saturating_sub(inactive);
                    return Ok((limit.saturating_sub(used), MemorySource::CgroupV1(dir)));
                }
            }
        }
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
