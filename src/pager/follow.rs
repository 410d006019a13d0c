//! The budget that follows the memory limit (`follow_memory`): a light
//! thread looks at what the process may still allocate (the memory
//! cgroup's limit less its working set, else `MemAvailable`) every
//! [`PERIOD`], shrinks the budget when other allocations of the process or
//! the machine need the room, and grows it back, up to the ceiling the
//! engine set, when they are freed. Every change is told to the engine's
//! listener, if any.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::options::BudgetListener;
use super::Inner;
use crate::error::{Error, Result};
use crate::memlimit::MemorySource;
use crate::source;

/// How often the limit is looked at: a hog that allocates 1 GB/s gets at
/// most 10 MB between two looks, well inside [`HEADROOM`].
const PERIOD: Duration = Duration::from_millis(10);
/// What the pager leaves free below the limit, for the rest of the process
/// and what it allocates between two looks.
pub const HEADROOM: u64 = 32 << 20;
/// The smallest change made, so that the budget does not move on noise.
const MIN_STEP: u64 = 4 << 20;
/// Looks in a row that must all find room before the budget grows (to the
/// least room they found): shrinking is at once, growing is sure.
const GROW_AFTER: u32 = 5;

/// What the follower remembers between looks.
#[derive(Default)]
struct Trend {
    /// Looks in a row that found room to grow, and the least target among them.
    room_streak: u32,
    least_target: u64,
}

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    /// The most the budget may grow to.
    ceiling: AtomicU64,
}

/// The running follower; stops on [`MemoryFollower::stop`] or drop.
pub(super) struct MemoryFollower {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl MemoryFollower {
    /// Starts following for `inner`, the budget growing to at most `ceiling`.
    pub(super) fn start(inner: Arc<Inner>, ceiling: u64, listener: Option<BudgetListener>) -> Result<Self> {
        // The budget never drops below what the largest tensor needs, so
        // that every acquire can still succeed.
        let floor = inner
            .index
            .tensors()
            .iter()
            .map(|t| source::buffer_len_for(inner.source.as_ref(), t.offset, t.size) as u64)
            .max()
            .unwrap_or(0)
            .next_multiple_of(4096);
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            ceiling: AtomicU64::new(ceiling),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("layerpager-follow".to_owned())
            .spawn(move || {
                // Where the limit is, found once; each look reads only its counters.
                let limit = crate::memlimit::locate();
                let mut trend = Trend::default();
                let mut stopped = s.stop.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped {
                    drop(stopped);
                    let ceiling = s.ceiling.load(Ordering::Relaxed);
                    follow_once(&inner, &limit, floor, ceiling, listener.as_ref(), &mut trend);
                    stopped = s.stop.lock().unwrap_or_else(|e| e.into_inner());
                    if *stopped {
                        break;
                    }
                    stopped = s
                        .wake
                        .wait_timeout(stopped, PERIOD)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })
            .map_err(|e| Error::from_io("start of the memory follower thread", &e))?;
        Ok(MemoryFollower {
            shared,
            thread: Some(thread),
        })
    }

    /// The engine set a new budget: it is the new ceiling.
    pub(super) fn set_ceiling(&self, ceiling: u64) {
        self.shared.ceiling.store(ceiling, Ordering::Relaxed);
    }

    /// Stops the thread and waits for it.
    pub(super) fn stop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MemoryFollower {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One look: the budget becomes what the pager holds plus the room left
/// under the limit, less [`HEADROOM`], between `floor` and `ceiling`; at
/// once when that is less, after [`GROW_AFTER`] looks that agree when more.
fn follow_once(
    inner: &Inner,
    limit: &MemorySource,
    floor: u64,
    ceiling: u64,
    listener: Option<&BudgetListener>,
    trend: &mut Trend,
) {
    if inner.closed.load(Ordering::SeqCst) {
        return;
    }
    let Ok((room, _)) = crate::memlimit::left_under(limit, true) else {
        return;
    };
    let held = inner.lock_evict().held();
    let target = (held + room)
        .saturating_sub(HEADROOM)
        .min(ceiling)
        .max(floor.min(ceiling));
    let budget = inner.budget.load(Ordering::Relaxed);
    let step = MIN_STEP.max(ceiling / 64);
    let new = if target + step <= budget {
        trend.room_streak = 0;
        target
    } else if target >= budget + step || (target == ceiling && budget != ceiling) {
        trend.least_target = if trend.room_streak == 0 {
            target
        } else {
            trend.least_target.min(target)
        };
        trend.room_streak += 1;
        if trend.room_streak < GROW_AFTER {
            return;
        }
        trend.room_streak = 0;
        trend.least_target
    } else {
        trend.room_streak = 0;
        return;
    };
    // Pinned and in-use tensors may hold more than the target for now: the
    // next look tries again.
    if inner.set_budget(new).is_ok() {
        if let Some(l) = listener {
            l.call(budget, new);
        }
    }
}
