//! Reads with several requests in flight: the misses a reader has claimed
//! are coalesced into requests (neighbours in the file, due together, are
//! one request scattered over their own buffers), submitted to the
//! reader's [`ReadQueue`], and published one by one as their requests end.

use super::loads::{Intent, Landing};
use super::Inner;
use crate::source::{
    BatchTarget, Completion, ReadQueue, Request, MAX_HOLE, MAX_IOVECS, STAGED_REQUEST_BYTES,
};

/// The most bytes one request reads: an O_DIRECT request as large as the
/// largest slot of staging memory (1 MiB, which lands in one huge page
/// and runs near the disk's speed), and a demand waiting for the first
/// tensor of a request waits for all of it. A buffered request copies from the page
/// cache (or reads a chunk at a time, dropping behind): 1 MiB.
const MAX_DIRECT_REQUEST_BYTES: u64 = STAGED_REQUEST_BYTES as u64;
const MAX_BUFFERED_REQUEST_BYTES: u64 = 1 << 20;

/// A tensor of a request: its claimed load and where its bytes land.
struct Part {
    id: u32,
    intent: Intent,
    landing: Landing,
    /// Bytes at the start of the landing that the previous part's read
    /// covers (one `O_DIRECT` block the two share): copied from it after
    /// the read.
    shared_head: usize,
}

/// A request being built or in flight.
struct Pending {
    parts: Vec<Part>,
    /// The file range the request reads.
    start: u64,
    end: u64,
    iov: Vec<libc::iovec>,
}

/// The requests of one reader: built, in flight, and the reader's scratch
/// memory that holes between neighbours are read into.
pub(super) struct Flights {
    target: BatchTarget,
    building: Option<Pending>,
    /// Requests in flight, by tag.
    flying: Vec<Option<Pending>>,
    /// The queue's hole memory (`ReadQueue::hole_memory`), if it has any.
    hole: Option<*mut u8>,
}

impl Flights {
    pub(super) fn new(target: BatchTarget, queue: &mut ReadQueue) -> Self {
        Flights {
            target,
            building: None,
            flying: Vec::new(),
            hole: queue.hole_memory(),
        }
    }

    /// Whether a load claimed next can join the request being built: its
    /// landing starts where the request ends, within one shared block or a
    /// small hole, and the request has room.
    pub(super) fn joins(&self, landing_start: u64, landing_len: usize) -> bool {
        let Some(p) = &self.building else {
            return false;
        };
        let block = self.target.block.unwrap_or(1) as u64;
        let shared = p.end.saturating_sub(landing_start);
        let hole = landing_start.saturating_sub(p.end);
        let overlaps_at_most_a_block = shared == 0 || (self.target.block.is_some() && shared <= block);
        overlaps_at_most_a_block
            && (shared as usize) < landing_len
            && (hole == 0 || (self.hole.is_some() && hole <= MAX_HOLE as u64))
            && p.iov.len() + 2 <= MAX_IOVECS
            && p.end - p.start + hole + landing_len as u64 <= self.max_request_bytes()
    }

    fn max_request_bytes(&self) -> u64 {
        match self.target.block {
            Some(_) => MAX_DIRECT_REQUEST_BYTES,
            None => MAX_BUFFERED_REQUEST_BYTES,
        }
    }

    /// Whether a load claimed next, landing at `landing_start` for
    /// `landing_len` bytes, would be read now: it joins the request being
    /// built, or the queue has room for a new request beside that one
    /// (staged, the staging memory holds them both).
    pub(super) fn would_take(&self, landing_start: u64, landing_len: usize, queue: &ReadQueue) -> bool {
        let Some(p) = &self.building else {
            return queue.has_room_for(&self.target, &[landing_len]);
        };
        if self.joins(landing_start, landing_len) {
            let grown = (landing_start + landing_len as u64).max(p.end) - p.start;
            return queue.has_room_for(&self.target, &[grown as usize]);
        }
        queue.has_room_for(&self.target, &[(p.end - p.start) as usize, landing_len])
    }

    /// Whether the queue takes another request of ours now.
    pub(super) fn has_room(&self, queue: &ReadQueue) -> bool {
        queue.has_room(&self.target)
    }

    /// Adds a claimed, prepared load to the request being built (see
    /// [`Flights::joins`]), or starts a new one with it.
    pub(super) fn add(&mut self, id: u32, intent: Intent, landing: Landing) {
        let (start, len) = (landing.file_start, landing.len);
        if self.joins(start, len) {
            let p = self.building.as_mut().expect("joins checked one is being built");
            let shared = p.end.saturating_sub(start) as usize;
            let hole = start.saturating_sub(p.end) as usize;
            if hole > 0 {
                p.iov.push(libc::iovec {
                    iov_base: self.hole.expect("joins checked the hole memory") as *mut libc::c_void,
                    iov_len: hole,
                });
            }
            p.iov.push(libc::iovec {
                // SAFETY: shared < len (joins): inside the landing.
                iov_base: unsafe { landing.ptr.add(shared) } as *mut libc::c_void,
                iov_len: len - shared,
            });
            p.end = start + len as u64;
            p.parts.push(Part {
                id,
                intent,
                landing,
                shared_head: shared,
            });
            return;
        }
        debug_assert!(
            self.building.is_none(),
            "the caller submits a built request first"
        );
        self.building = Some(Pending {
            iov: vec![libc::iovec {
                iov_base: landing.ptr as *mut libc::c_void,
                iov_len: len,
            }],
            parts: vec![Part {
                id,
                intent,
                landing,
                shared_head: 0,
            }],
            start,
            end: start + len as u64,
        });
    }

    /// Submits the request being built, if any (see
    /// [`Inner::submit_building`], which checks the file first).
    fn submit(&mut self, queue: &mut ReadQueue) {
        let Some(p) = self.building.take() else {
            return;
        };
        let tag = match self.flying.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.flying.push(None);
                self.flying.len() - 1
            }
        };
        let request = Request {
            tag: tag as u64,
            offset: p.start,
            iov: p.iov.clone(),
        };
        self.flying[tag] = Some(p);
        queue.submit(self.target, request);
    }

    /// Whether an explicit request (a hint, a prefetch) is built or in
    /// flight: the engine asked for those, and they go before read-ahead.
    pub(super) fn has_explicit(&self) -> bool {
        self.building
            .iter()
            .chain(self.flying.iter().flatten())
            .any(|p| p.parts.iter().any(|part| part.intent == Intent::Prefetch))
    }

    /// Whether anything is built or in flight.
    pub(super) fn is_empty(&self) -> bool {
        self.building.is_none() && self.flying.iter().all(Option::is_none)
    }
}

impl Inner {
    /// Publishes every load of the request `done` ended: each tensor gets
    /// the bytes of its own range (a shared block copied from its
    /// neighbour), or the request's failure.
    pub(super) fn end_request(&self, flights: &mut Flights, done: Completion) {
        let p = flights.flying[done.tag as usize]
            .take()
            .expect("a completion for a request of ours");
        self.read_ns.fetch_add(
            done.elapsed.as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let read_end = done.result.as_ref().map(|&got| p.start + got as u64);
        // The blocks neighbours share are copied before any part is
        // published: a published tensor may be used, evicted and its memory
        // reused at once.
        if let Ok(end) = read_end {
            for pair in p.parts.windows(2) {
                let (prev, part) = (&pair[0].landing, &pair[1]);
                let shared = part
                    .shared_head
                    .min(end.saturating_sub(part.landing.file_start) as usize);
                if shared > 0 {
                    // SAFETY: the shared block lies in both landings (the
                    // previous one ends with it), both still owned by their
                    // loads; `copy` allows the same memory (neighbouring
                    // slices of one window).
                    unsafe {
                        std::ptr::copy(
                            prev.ptr.add((part.landing.file_start - prev.file_start) as usize),
                            part.landing.ptr,
                            shared,
                        )
                    };
                }
            }
        }
        for part in p.parts {
            let (start, len) = (part.landing.file_start, part.landing.len);
            let got = match &read_end {
                Ok(end) => Ok((end.saturating_sub(start) as usize).min(len)),
                Err(e) => Err((*e).clone()),
            };
            let info = self.info_unchecked(part.id);
            let outcome = self.finish_read(part.id, info, part.landing, got);
            let _ = self.publish(part.id, part.intent, outcome);
        }
    }

    /// Submits the request being built, if any, after the check that the
    /// file is still the one indexed (part of every read); if it is not,
    /// the request's loads fail.
    pub(super) fn submit_building(&self, flights: &mut Flights, queue: &mut ReadQueue) {
        let Some(p) = flights.building.take() else {
            return;
        };
        match self.source.verify_unchanged() {
            Ok(()) => {
                flights.building = Some(p);
                flights.submit(queue);
            }
            Err(e) => {
                for part in p.parts {
                    let info = self.info_unchecked(part.id);
                    let outcome = self.finish_read(part.id, info, part.landing, Err(e.clone()));
                    let _ = self.publish(part.id, part.intent, outcome);
                }
            }
        }
    }
}
