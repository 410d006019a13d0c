//! How a pager is set up ([`PagerOptions`]) and what it reports ([`Stats`]).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::policy::PolicyKind;
use crate::source::{Allocator, IoMode};

/// How a pager is set up.
#[derive(Debug, Clone)]
pub struct PagerOptions {
    /// Budget for resident tensor bytes; 0 means unlimited,
    /// [`crate::memlimit::BUDGET_AUTO`] derives it at open from the memory
    /// limit (cgroup, else `MemAvailable`) less a headroom.
    pub budget_bytes: u64,
    /// Eviction policy.
    pub policy: PolicyKind,
    /// How file sources are read; [`IoMode::Auto`] by default.
    pub io_mode: IoMode,
    /// Background reader threads; 0 means no background reads. Default 1:
    /// one reader overlaps reads with compute; more read more bytes for now
    /// (they run further ahead of the engine than the window allows).
    /// [`READERS_AUTO`] chooses from the machine at open.
    pub prefetch_threads: u32,
    /// Alignment of every tensor's data pointer (a power of two).
    pub alignment: usize,
    /// How long a miss waits for in-use budget to be released (0 fails at
    /// once), and, when not 0, the longest it waits for another thread's read
    /// of the same tensor before [`Error::Timeout`].
    pub wait_ms: u32,
    /// Allocator for tensor buffers; `None` uses the built-in one.
    pub allocator: Option<Arc<Allocator>>,
    /// Follow the memory limit: a light thread looks every 10 ms at what the
    /// process may still allocate (the memory cgroup's limit less its
    /// working set, else `MemAvailable`), shrinks the budget when other
    /// allocations need the room (leaving 32 MiB free) and grows it back
    /// when they are freed, up to `budget_bytes` (up to the model's size
    /// with [`crate::memlimit::BUDGET_AUTO`]). Needs a budget.
    pub follow_memory: bool,
    /// Told of every budget change `follow_memory` makes.
    pub on_budget_change: Option<BudgetListener>,
}

/// Told of every budget change `follow_memory` makes, with the old and the
/// new budget in bytes; called from the follower thread.
#[derive(Clone)]
pub struct BudgetListener(Arc<dyn Fn(u64, u64) + Send + Sync>);

impl BudgetListener {
    /// A listener calling `f(old, new)`.
    pub fn new(f: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        BudgetListener(Arc::new(f))
    }

    pub(super) fn call(&self, old: u64, new: u64) {
        (self.0)(old, new)
    }
}

impl std::fmt::Debug for BudgetListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BudgetListener")
    }
}

/// `prefetch_threads` value that chooses the readers from the machine at
/// open: where reads copy from the page cache (plain pread of a file that
/// stays cached), copying is CPU-bound and scales with readers: half the
/// cores, 1 to 8 (on a 16-core GPU host with the file cached, 8 readers
/// moved 32-35 GB/s to the device where 2 moved 7); where reads go to the
/// device (`O_DIRECT`, pread dropping behind), one large read at a time
/// already keeps the device busy: 1.
pub const READERS_AUTO: u32 = u32::MAX;

impl Default for PagerOptions {
    fn default() -> Self {
        PagerOptions {
            budget_bytes: 0,
            policy: PolicyKind::Auto,
            io_mode: IoMode::Auto,
            prefetch_threads: 1,
            alignment: 64,
            wait_ms: 0,
            allocator: None,
            follow_memory: false,
            on_budget_change: None,
        }
    }
}

impl PagerOptions {
    /// Checks the options: alignment a power of two up to 1 MiB, at most 64 threads.
    pub fn validate(&self) -> Result<()> {
        if self.alignment == 0 || !self.alignment.is_power_of_two() || self.alignment > (1 << 20) {
            return Err(Error::InvalidArgument(format!(
                "alignment {} is not a power of two between 1 and 1 MiB",
                self.alignment
            )));
        }
        if self.follow_memory && self.budget_bytes == 0 {
            return Err(Error::InvalidArgument(
                "follow_memory needs a budget (bytes, or auto)".to_owned(),
            ));
        }
        if self.prefetch_threads > 64 && self.prefetch_threads != READERS_AUTO {
            return Err(Error::InvalidArgument(format!(
                "prefetch_threads {} is more than 64 (and not PAGER_READERS_AUTO)",
                self.prefetch_threads
            )));
        }
        Ok(())
    }
}

/// Counters and gauges of a pager, as in `pager_stats_t`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Acquisitions served from memory without waiting for a read.
    pub hits: u64,
    /// Acquisitions that had to read the tensor or wait for its read.
    pub misses: u64,
    /// Hits on a tensor brought in by a prefetch and not used before (a
    /// subset of `hits`; an acquire that waited for a read-ahead still in
    /// flight is a miss).
    pub prefetch_hits: u64,
    /// Tensors evicted to make room.
    pub evictions: u64,
    /// Bytes read from the source for tensors.
    pub bytes_read: u64,
    /// Bytes held against the budget now: tensors being read, idle, pinned
    /// or in use (their buffers, in whole pages from 4 KiB on, which reuse
    /// may leave up to a quarter larger), freed buffers kept for reuse, the
    /// staging memory and the page tables' share.
    pub resident_bytes: u64,
    /// Tensors resident now.
    pub resident_count: u64,
    /// Highest `resident_bytes` seen.
    pub peak_resident_bytes: u64,
    /// Sizes of the pinned tensors.
    pub pinned_bytes: u64,
    /// Sizes of the tensors with acquisitions outstanding.
    pub in_use_bytes: u64,
    /// The budget (0 = unlimited).
    pub budget_bytes: u64,
    /// Nanoseconds spent reading tensors.
    pub read_ns: u64,
    /// Nanoseconds callers spent waiting for another thread's read of the
    /// same tensor or for budget (their own reads are `read_ns`).
    pub wait_ns: u64,
    /// The part of `resident_bytes` that is the staging memory O_DIRECT
    /// reads land in: one to four huge pages (0 where reads are not staged).
    pub staging_bytes: u64,
    /// The part of `resident_bytes` kept for the kernel's page tables of
    /// the tensor buffers of 2 MiB or more: those of all the model's such
    /// tensors, at most 1/256 of the budget (0 where every tensor is
    /// smaller).
    pub page_table_bytes: u64,
}
