//! Background readers: threads that load queued tensors ahead of use.
//!
//! The queue is a hint list: a tensor already resident or being read is
//! skipped, a duplicate request is dropped, and nothing here waits for
//! budget (a prefetch that does not fit is abandoned, not retried).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::pager::Inner;

/// Most requests kept queued; older ones are dropped first.
const QUEUE_LIMIT: usize = 4096;

#[derive(Default)]
struct Queue {
    ids: VecDeque<u32>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The reader threads of one pager.
pub(crate) struct Prefetcher {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Prefetcher {
    pub(crate) fn start(pager: Arc<Inner>, threads: u32) -> Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        let mut handles = Vec::new();
        for i in 0..threads {
            let shared = Arc::clone(&shared);
            let pager = Arc::clone(&pager);
            let handle = std::thread::Builder::new()
                .name(format!("layerpager-io-{i}"))
                .spawn(move || worker(&shared, &pager))
                .map_err(|e| Error::from_io("spawn of a prefetch thread", &e))?;
            handles.push(handle);
        }
        Ok(Prefetcher {
            shared,
            threads: handles,
        })
    }

    /// Queues `id`; returns false if the prefetcher is stopping.
    pub(crate) fn enqueue(&self, id: u32) -> bool {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.stop {
            return false;
        }
        if !q.ids.contains(&id) {
            if q.ids.len() >= QUEUE_LIMIT {
                q.ids.pop_front();
            }
            q.ids.push_back(id);
        }
        drop(q);
        self.shared.ready.notify_one();
        true
    }

    /// Stops the threads and waits for them (each finishes its current read).
    pub(crate) fn stop(mut self) {
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

fn worker(shared: &Shared, pager: &Inner) {
    loop {
        let id = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.stop || pager.is_closed() {
                    return;
                }
                if let Some(id) = q.ids.pop_front() {
                    break id;
                }
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        pager.prefetch_now(id);
    }
}
