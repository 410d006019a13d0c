//! Expert uses and router hints recorded on the hot path and applied later:
//! an expert's hit (or a hint) pushes one record into a bounded lock-free
//! queue (one of several, by thread, so that two engine threads do not
//! write the same cache line),
//! and whoever takes the experts' lock next (a miss, a hint, a reader
//! asking whether a read is still wanted) applies them in the order of the
//! schedule. A hit therefore costs what a dense hit costs plus one queue
//! push. A queue that fills up (a thousand hits with no miss and no hint
//! between them: nothing is being evicted) drops what does not fit, as
//! Caffeine's read buffers do; with evictions going on, every use is seen.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crossbeam_queue::ArrayQueue;

/// Queues, one per group of threads.
const STRIPES: usize = 8;
/// Records one queue holds.
const CAPACITY: usize = 1024;

/// What was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum What {
    /// An expert slice was used.
    Slice(u32),
    /// A dense tensor's miss moved the position to `to`.
    Dense { to: u64 },
    /// The router hinted expert slice `id`, needed before position `until`.
    Hint { id: u32, until: u64 },
}

/// One access (or hint) the policy has not applied yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Use {
    pub(super) what: What,
    /// The schedule position when it was recorded (the order in which
    /// records are applied).
    pub(super) at: u64,
    /// The schedule the positions belong to (a new schedule starts its
    /// positions afresh).
    pub(super) schedule: u64,
}

pub(super) struct Uses {
    /// Made with the first push (a dense model never needs them).
    stripes: OnceLock<Box<[Stripe]>>,
}

/// One thread group's queue, and what it dropped; on cache lines of its own.
#[repr(align(128))]
struct Stripe {
    queue: ArrayQueue<Use>,
    dropped: AtomicU64,
}

fn stripe_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

impl Default for Uses {
    fn default() -> Self {
        Uses {
            stripes: OnceLock::new(),
        }
    }
}

impl Uses {
    fn stripes(&self) -> &[Stripe] {
        self.stripes.get_or_init(|| {
            (0..STRIPES)
                .map(|_| Stripe {
                    queue: ArrayQueue::new(CAPACITY),
                    dropped: AtomicU64::new(0),
                })
                .collect()
        })
    }

    /// Records `u` in this thread's queue, or drops it if the queue is full.
    #[inline]
    pub(super) fn push(&self, u: Use) {
        let stripe = &self.stripes()[stripe_of_this_thread()];
        if stripe.queue.push(u).is_err() {
            stripe.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped so far because a queue was full.
    pub(super) fn dropped(&self) -> u64 {
        self.stripes
            .get()
            .map_or(0, |s| s.iter().map(|s| s.dropped.load(Ordering::Relaxed)).sum())
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        match self.stripes.get() {
            Some(stripes) => stripes.iter().all(|s| s.queue.is_empty()),
            None => true,
        }
    }

    /// Takes every queued record, in schedule order (a stable sort by
    /// position: records of one thread keep their order), into `out`.
    pub(super) fn take_all(&self, out: &mut Vec<Use>) {
        let Some(stripes) = self.stripes.get() else {
            return;
        };
        for s in stripes.iter() {
            while let Some(u) = s.queue.pop() {
                out.push(u);
            }
        }
        let key = |u: &Use| (u.schedule, u.at);
        // One thread's records are in order already.
        if !out.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
            out.sort_by_key(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_schedule_order_and_a_full_queue_drops() {
        let uses = Uses::default();
        assert!(uses.is_empty());
        let record = |at| Use {
            what: What::Slice(at as u32),
            at,
            schedule: 1,
        };
        for at in [5, 3, 9, 3] {
            uses.push(record(at));
        }
        let mut out = Vec::new();
        uses.take_all(&mut out);
        assert_eq!(out.iter().map(|u| u.at).collect::<Vec<_>>(), [3, 3, 5, 9]);
        assert!(uses.is_empty());
        for at in 0..CAPACITY as u64 + 3 {
            uses.push(record(at));
        }
        assert_eq!(uses.dropped(), 3);
    }
}
