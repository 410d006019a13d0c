//! Background readers: threads that load tensors ahead of use.
//!
//! They serve two kinds of work: explicit requests (`pager_prefetch`,
//! `pager_hint`), in order, and read-ahead along the schedule (declared or
//! learned): from the current position forward, every tensor that is not
//! resident is loaded, as far ahead as the budget allows without evicting a
//! tensor needed sooner than the one being loaded. Several readers work the
//! same window at once; single-flight loads keep them from reading a tensor
//! twice, so they spread over consecutive tensors.
//!
//! Each reader keeps several requests in flight through its own
//! [`ReadQueue`] (io_uring where the kernel offers it), so that small
//! tensors and expert slices do not pay a round trip each.
//!
//! Nothing here waits for budget: a read-ahead that does not fit stops, and
//! starts again when the engine's position moves (or when a tensor it would
//! have taken, in use then, is released).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::source::ReadQueue;

/// What the readers need of the pager, and all they see of it (the pager
/// implements it; this module does not know the pager).
pub(crate) trait ReadAheadTarget: Send + Sync {
    /// Whether the pager was closed: the readers then stop.
    fn is_closed(&self) -> bool;
    /// A counter that changes whenever the engine moves along the schedule.
    fn schedule_position(&self) -> u64;
    /// Reads the explicit requests `next_request` yields (in order), then
    /// ahead along the schedule, with up to `queue`'s depth of requests in
    /// flight; returns when nothing more fits and nothing is in flight.
    /// Errors are the later acquire's to report.
    fn read(&self, next_request: &mut dyn FnMut() -> Option<u32>, queue: &mut ReadQueue);
}

/// Most explicit requests kept queued; the oldest are dropped first.
const QUEUE_LIMIT: usize = 4096;
/// Most tensors a read-ahead looks ahead.
pub(crate) const READ_AHEAD_MAX: usize = 512;

#[derive(Default)]
struct Queue {
    ids: VecDeque<u32>,
    stop: bool,
}

/// The state shared by the pager (which pokes it) and its readers.
#[derive(Default)]
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    idle: AtomicUsize,
    /// Set by [`Shared::retry`]: look again though the engine has not moved.
    again: AtomicBool,
}

impl Shared {
    /// Wakes a sleeping reader, if any, to look at the schedule again.
    /// Cheap when every reader is busy: one atomic load.
    #[inline]
    pub(crate) fn poke(&self) {
        if self.idle.load(Ordering::SeqCst) > 0 {
            let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            self.ready.notify_one();
        }
    }

    /// Makes a reader look at the schedule again even if the engine has not
    /// moved: what stopped its read-ahead (a tensor in use that it would
    /// have taken) is gone. Not for the hit path (a lock and a wake-up).
    pub(crate) fn retry(&self) {
        let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.again.store(true, Ordering::SeqCst);
        self.ready.notify_one();
    }

    /// Queues `ids`, in order, with one lock and one wake-up; returns false
    /// if the readers are stopping.
    pub(crate) fn enqueue(&self, ids: impl Iterator<Item = u32>) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.stop {
            return false;
        }
        let mut queued = 0;
        for id in ids {
            queued += 1;
            if !q.ids.contains(&id) {
                if q.ids.len() >= QUEUE_LIMIT {
                    q.ids.pop_front();
                }
                q.ids.push_back(id);
            }
        }
        drop(q);
        match queued {
            0 => {}
            1 => self.ready.notify_one(),
            _ => self.ready.notify_all(),
        }
        true
    }
}

/// The reader threads of one pager.
pub(crate) struct Prefetcher {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Prefetcher {
    pub(crate) fn start(pager: Arc<dyn ReadAheadTarget>, shared: Arc<Shared>, threads: u32) -> Result<Self> {
        let mut prefetcher = Prefetcher {
            shared,
            threads: Vec::new(),
        };
        for i in 0..threads {
            let shared = Arc::clone(&prefetcher.shared);
            let pager = Arc::clone(&pager);
            let handle = std::thread::Builder::new()
                .name(format!("layerpager-io-{i}"))
                .spawn(move || worker(&shared, pager.as_ref()))
                .map_err(|e| Error::from_io("spawn of a prefetch thread", &e));
            match handle {
                Ok(h) => prefetcher.threads.push(h),
                Err(e) => {
                    prefetcher.stop();
                    return Err(e);
                }
            }
        }
        Ok(prefetcher)
    }

    /// Stops the threads and waits for them (each finishes its current read).
    pub(crate) fn stop(&mut self) {
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.stop = true;
            q.ids.clear();
        }
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker(shared: &Shared, pager: &dyn ReadAheadTarget) {
    let mut seen_position = u64::MAX;
    let mut queue = ReadQueue::new();
    loop {
        {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.stop || pager.is_closed() {
                    return;
                }
                if !q.ids.is_empty()
                    || pager.schedule_position() != seen_position
                    || shared.again.swap(false, Ordering::SeqCst)
                {
                    break;
                }
                shared.idle.fetch_add(1, Ordering::SeqCst);
                // The timeout is a safety net for a poke that raced with
                // going to sleep; pokes are the normal wake-up.
                q = shared
                    .ready
                    .wait_timeout(q, Duration::from_millis(20))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                shared.idle.fetch_sub(1, Ordering::SeqCst);
            }
        }
        seen_position = pager.schedule_position();
        let mut next_request = || {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.stop {
                return None;
            }
            q.ids.pop_front()
        };
        pager.read(&mut next_request, &mut queue);
    }
}
