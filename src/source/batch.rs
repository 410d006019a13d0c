//! Reads in flight together: one queue per reader thread, an io_uring where
//! the kernel offers one, else each request read at once with `preadv`.
//!
//! A request is one range of the file scattered over several buffers (the
//! neighbouring tensors it coalesces). An `O_DIRECT` request lands first in
//! a slot of staging memory (`staging.rs`: huge pages) where one is free,
//! and is copied into its buffers when it ends. The queue finishes
//! what the kernel leaves short (`EINTR`, a partial read) with plain
//! `preadv`, drops the page cache behind a buffered read when the source
//! asks for it, and hands back each request's outcome by its tag. Nothing
//! here knows tensors: the pager plans the requests and publishes what
//! they read.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::buffer::huge_page_head;
use super::staging::{self, Slot, MAX_STAGED_BYTES};
use super::TensorBuffer;
use crate::error::{Error, Result};

/// Requests a queue keeps in flight at most where they are not staged (no
/// huge page for staging memory): the disks this runs on reach their
/// speed at a depth of 4 to 8 for tensor-sized reads into 4 KiB pages (64
/// KiB reads gain to depth 8, 512 KiB ones are flat past 2); deeper only
/// adds latency to the request a demand waits for.
pub(crate) const QUEUE_DEPTH: usize = 8;

/// Plain reads that drop behind themselves go in chunks of this size, so
/// that at most one chunk sits in the page cache at a time.
const DROP_BEHIND_CHUNK: usize = 1 << 20;

/// The page cache's page: what dropping behind rounds its ranges out to.
const CACHE_PAGE: u64 = 4096;

/// The widest hole between two neighbours one request reads through (into
/// the queue's hole memory): GGUF pads tensors to 32 bytes, and reading a
/// few KiB costs less than a second round trip.
pub(crate) const MAX_HOLE: usize = 64 << 10;

/// Longest run of iovecs one request carries (well under `IOV_MAX`).
pub(crate) const MAX_IOVECS: usize = 64;

/// Environment variable that turns io_uring off (`LAYERPAGER_IO_URING=off`):
/// requests are then read one at a time by each reader thread.
pub const IO_URING_ENV: &str = "LAYERPAGER_IO_URING";

/// Where reads with several in flight go: a descriptor of the source, and
/// how it must be read.
#[derive(Debug, Clone, Copy)]
pub struct BatchTarget {
    /// The descriptor, open for as long as the source is.
    pub fd: RawFd,
    /// The `O_DIRECT` block, when offsets, lengths and buffers must be
    /// aligned to it.
    pub block: Option<usize>,
    /// Drop what a buffered read brought into the page cache.
    pub drop_behind: bool,
    /// `O_DIRECT` requests land in staging memory first (the source holds
    /// a lease on an area of it).
    pub staged: bool,
}

/// One request: the file from `offset` on, into `iov` in order.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) tag: u64,
    pub(crate) offset: u64,
    pub(crate) iov: Vec<libc::iovec>,
}

impl Request {
    fn len(&self) -> usize {
        self.iov.iter().map(|v| v.iov_len).sum()
    }
}

/// A request's outcome: the bytes read (fewer than asked only at the end of
/// the file) and how long it was in flight.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) tag: u64,
    pub(crate) result: Result<usize>,
    pub(crate) elapsed: Duration,
}

struct InFlight {
    request: Request,
    target: BatchTarget,
    started: Instant,
    /// Where the read lands first, if staged (see [`stage`]).
    staged: Option<Staged>,
}

/// A request read (from byte `from` of it on) into a slot of staging
/// memory, then copied into its own buffers.
struct Staged {
    slot: Slot,
    /// Where in the request the slot's bytes go: 0 for a request read
    /// wholly into the slot, the size of the huge-page head of its one
    /// buffer for one whose partial last 2 MiB alone is staged.
    from: usize,
    /// The request as read: its own iovecs up to `from`, then the slot.
    read: Request,
}

/// The staged form of an `O_DIRECT` request, if a slot is free: a request
/// no larger than a slot lands wholly in it; one into a single buffer laid
/// out in huge pages (`buffer::huge_page_head`) lands there straight, but
/// for the buffer's partial last 2 MiB, which is in 4 KiB pages and lands
/// in a slot. That tail was 5.7% of the bytes of a model of 2.4-6.5 MB
/// matrices, each tail read at a third of the speed.
fn stage(target: &BatchTarget, request: &Request) -> Option<Staged> {
    let len = request.len();
    if !target.staged || target.block.is_none() {
        return None;
    }
    let from = match request.iov.as_slice() {
        _ if len <= MAX_STAGED_BYTES => 0,
        [one] => huge_page_head(one.iov_base as *const u8, one.iov_len),
        _ => return None,
    };
    if from == len || len - from > MAX_STAGED_BYTES {
        return None;
    }
    let slot = staging::take(len - from)?;
    let mut iov = request.iov.clone();
    truncate_iovecs(&mut iov, from);
    iov.push(libc::iovec {
        iov_base: slot.ptr() as *mut libc::c_void,
        iov_len: len - from,
    });
    let read = Request {
        tag: request.tag,
        offset: request.offset,
        iov,
    };
    Some(Staged { slot, from, read })
}

/// Copies what a staged read of `n` bytes brought into the slot into its
/// request's buffers.
fn unstage(staged: &Staged, request: &Request, n: usize) {
    let mut from = staged.slot.bytes(n.saturating_sub(staged.from));
    for v in &remaining_iovecs(&request.iov, staged.from) {
        let take = v.iov_len.min(from.len());
        // SAFETY: the iovec names a buffer the pager keeps alive and
        // writable until this request is handed back (see `submit`); the
        // slot is ours, so the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), v.iov_base as *mut u8, take) };
        from = &from[take..];
    }
}

/// A reader thread's queue of requests in flight.
pub(crate) struct ReadQueue {
    ring: Option<IoUring>,
    /// Requests submitted, by slot (the ring's user data is the index).
    flying: Vec<Option<InFlight>>,
    /// Completions of requests read at submit (no ring).
    done: VecDeque<Completion>,
    /// Where the holes between coalesced neighbours are read (never looked
    /// at; aligned for O_DIRECT; several requests may write it at once).
    hole: Option<TensorBuffer>,
}

// SAFETY: the iovecs point into tensor buffers that the submitting pager
// owns until their completion is handed back; the queue is used by one
// thread at a time (it is moved into a reader thread, never shared).
unsafe impl Send for ReadQueue {}

impl ReadQueue {
    /// A queue with an io_uring when the kernel offers one and
    /// `LAYERPAGER_IO_URING` is not `off`.
    pub(crate) fn new() -> Self {
        let wanted = std::env::var(IO_URING_ENV).map_or(true, |v| v != "off" && v != "0");
        let ring = if wanted {
            IoUring::new(QUEUE_DEPTH as u32).ok()
        } else {
            None
        };
        ReadQueue {
            ring,
            flying: (0..QUEUE_DEPTH).map(|_| None).collect(),
            done: VecDeque::new(),
            hole: TensorBuffer::allocate(MAX_HOLE, 4096).ok(),
        }
    }

    /// [`MAX_HOLE`] bytes that holes are read into, if they could be
    /// allocated (without, neighbours with a hole between are two requests).
    pub(crate) fn hole_memory(&mut self) -> Option<*mut u8> {
        self.hole.as_mut().map(|b| b.as_mut_slice().as_mut_ptr())
    }

    /// Whether O_DIRECT requests go through an io_uring (several in flight).
    pub(crate) fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Requests submitted and not handed back yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.flying.iter().filter(|f| f.is_some()).count() + self.done.len()
    }

    /// Whether another request for `target` can be submitted now (see
    /// [`ReadQueue::depth`]).
    pub(crate) fn has_room(&self, target: &BatchTarget) -> bool {
        self.in_flight() < self.depth(target)
    }

    /// Whether requests of `lens` bytes, one after another, can be
    /// submitted for `target` beside those in flight: within its depth and,
    /// staged, each with a slot of staging memory (a request without one
    /// would land in 4 KiB pages, at a third of the speed, and slow the
    /// staged ones beside it).
    pub(crate) fn has_room_for(&self, target: &BatchTarget, lens: &[usize]) -> bool {
        self.in_flight() + lens.len() <= self.depth(target)
            && (!self.stages(target) || staging::would_hold(lens))
    }

    /// Whether requests for `target` are staged: `O_DIRECT`, through the
    /// ring, with a lease on staging memory.
    fn stages(&self, target: &BatchTarget) -> bool {
        self.ring.is_some() && target.block.is_some() && target.staged
    }

    /// How many requests for `target` may be in flight at once: through the
    /// ring, as many as the staging memory takes (`staging::staged_depth`)
    /// staged or [`QUEUE_DEPTH`] not; one where a
    /// request is read at submit (its loads are then published before the
    /// next is read, not after a whole round of them).
    pub(crate) fn depth(&self, target: &BatchTarget) -> usize {
        if self.stages(target) {
            staging::staged_depth(QUEUE_DEPTH)
        } else if self.ring.is_some() && target.block.is_some() {
            QUEUE_DEPTH
        } else {
            1
        }
    }

    /// Submits `request`; without a ring it is read now and its completion
    /// waits in the queue. The buffers must stay valid until
    /// [`ReadQueue::wait`] hands the request's tag back.
    pub(crate) fn submit(&mut self, target: BatchTarget, request: Request) {
        debug_assert!(self.has_room(&target));
        let started = Instant::now();
        let staged = stage(&target, &request);
        let read = staged.as_ref().map_or(&request, |s| &s.read);
        // Buffered reads through io_uring go to the kernel's own worker
        // threads (measured slower than reading them here): only O_DIRECT
        // requests are queued.
        let ring = self.ring.as_mut().filter(|_| target.block.is_some());
        let index = self.flying.iter().position(Option::is_none);
        let queued = match (ring, index) {
            (Some(ring), Some(index)) => {
                let entry =
                    opcode::Readv::new(types::Fd(target.fd), read.iov.as_ptr(), read.iov.len() as u32)
                        .offset(read.offset)
                        .build()
                        .user_data(index as u64);
                // SAFETY: the iovecs and the buffers they name stay alive
                // until the completion for `index` is reaped (they live in
                // `flying`, the staging slot with them, and the pager holds
                // the buffers until `wait` returns this tag).
                let pushed = unsafe { ring.submission().push(&entry) }.is_ok();
                if pushed {
                    // A submission the kernel turns away now (EAGAIN, EBUSY)
                    // goes with the next wait's.
                    let _ = ring.submit();
                }
                pushed.then_some(index)
            }
            _ => None,
        };
        let Some(index) = queued else {
            let result = read_rest(target, read, 0)
                .inspect(|&n| {
                    if let Some(s) = &staged {
                        unstage(s, &request, n);
                    }
                })
                .map_err(|e| read_error(&request, e));
            self.done.push_back(Completion {
                tag: request.tag,
                result,
                elapsed: started.elapsed(),
            });
            return;
        };
        self.flying[index] = Some(InFlight {
            request,
            target,
            started,
            staged,
        });
    }

    /// The next request to end, waiting for one if none has; `None` when
    /// nothing is in flight.
    pub(crate) fn wait(&mut self) -> Option<Completion> {
        if let Some(c) = self.done.pop_front() {
            return Some(c);
        }
        let ring = self.ring.as_mut()?;
        if self.flying.iter().all(Option::is_none) {
            return None;
        }
        loop {
            if let Some(cqe) = ring.completion().next() {
                let index = cqe.user_data() as usize;
                let flight = self.flying[index]
                    .take()
                    .expect("a completion for a request in flight");
                let res = cqe.result();
                let read = flight.staged.as_ref().map_or(&flight.request, |s| &s.read);
                let result = if res >= 0 {
                    read_rest(flight.target, read, res as usize)
                } else if res == -libc::EINTR || res == -libc::EAGAIN {
                    read_rest(flight.target, read, 0)
                } else {
                    Err(std::io::Error::from_raw_os_error(-res))
                }
                .inspect(|&n| {
                    if let Some(s) = &flight.staged {
                        unstage(s, &flight.request, n);
                    }
                })
                .map_err(|e| read_error(&flight.request, e));
                return Some(Completion {
                    tag: flight.request.tag,
                    result,
                    elapsed: flight.started.elapsed(),
                });
            }
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                // Nothing else fails on a ring that was set up (EBUSY and
                // EAGAIN are the kernel catching up). The buffers in flight
                // belong to the kernel until it completes them: keep waiting.
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

impl Drop for ReadQueue {
    fn drop(&mut self) {
        // Buffers named by requests in flight must not be freed under the
        // kernel: wait for every one (the pager always does before this).
        while self.wait().is_some() {}
    }
}

/// Reads what the kernel left of `request` after `done` bytes, with
/// `preadv`, until it is whole or the file ends, dropping the page cache
/// behind each chunk if asked. Returns the bytes read in all. Also the
/// plain read of a [`super::FileSource`] (one iovec, from 0).
pub(super) fn read_rest(target: BatchTarget, request: &Request, mut done: usize) -> std::io::Result<usize> {
    let total = request.len();
    // Dropping behind, at most one chunk sits in the page cache at a time
    // (a memory limit of the budget + a few MiB holds).
    let step = if target.drop_behind {
        DROP_BEHIND_CHUNK
    } else {
        total
    };
    while done < total {
        if let Some(block) = target.block {
            // O_DIRECT resumes on a block boundary (a short read ends on one
            // except at the end of the file, where nothing is left to read).
            if done % block != 0 {
                break;
            }
        }
        let mut iov = remaining_iovecs(&request.iov, done);
        truncate_iovecs(&mut iov, step);
        iov.truncate(MAX_IOVECS);
        let at = request.offset + done as u64;
        // SAFETY: the iovecs name buffers the caller keeps alive and
        // writable for the call (see `submit`); fd is the source's own.
        let n = unsafe {
            libc::preadv(
                target.fd,
                iov.as_ptr(),
                iov.len() as libc::c_int,
                at as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        if target.drop_behind {
            // Whole pages: the kernel drops only the pages a range covers
            // wholly, and the partial ones at each end of every tensor's read
            // would stay (on a model of small tensors, more than the few MiB a
            // memory limit leaves beside the budget). A neighbour read at the
            // same time loses nothing: it has its bytes or reads them again.
            let (from, to) = (
                at & !(CACHE_PAGE - 1),
                (at + n as u64).next_multiple_of(CACHE_PAGE),
            );
            // SAFETY: a valid descriptor; advice only, a failure changes
            // nothing we rely on.
            let _ = unsafe {
                libc::posix_fadvise(
                    target.fd,
                    from as libc::off_t,
                    (to - from) as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
        }
        done += n as usize;
    }
    Ok(done)
}

/// Shortens `iov` to its first `len` bytes.
fn truncate_iovecs(iov: &mut Vec<libc::iovec>, mut len: usize) {
    let mut keep = 0;
    for v in iov.iter_mut() {
        if len == 0 {
            break;
        }
        v.iov_len = v.iov_len.min(len);
        len -= v.iov_len;
        keep += 1;
    }
    iov.truncate(keep);
}

/// The iovecs of `iov` past its first `skip` bytes.
fn remaining_iovecs(iov: &[libc::iovec], mut skip: usize) -> Vec<libc::iovec> {
    let mut out = Vec::with_capacity(iov.len());
    for v in iov {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        out.push(libc::iovec {
            // SAFETY: skip < iov_len: inside the same buffer.
            iov_base: unsafe { (v.iov_base as *mut u8).add(skip) } as *mut libc::c_void,
            iov_len: v.iov_len - skip,
        });
        skip = 0;
    }
    out
}

fn read_error(request: &Request, e: std::io::Error) -> Error {
    Error::from_io(
        format!("read of {} bytes at offset {}", request.len(), request.offset),
        &e,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TensorBuffer;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;
    use std::sync::Mutex;

    /// Held by a test while it holds every staging slot of the process, and
    /// by one that counts on a slot being free: tests run side by side.
    static EVERY_SLOT: Mutex<()> = Mutex::new(());

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        // Beside the build, not in a tmpfs that refuses O_DIRECT.
        let mut f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        f.write_all(&bytes).unwrap();
        f.flush().unwrap();
        (f, bytes)
    }

    /// `path` opened with O_DIRECT, and a target that stages its reads.
    fn staged_direct(path: &Path) -> (std::fs::File, BatchTarget) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap();
        let target = BatchTarget {
            fd: file.as_raw_fd(),
            block: Some(4096),
            drop_behind: false,
            staged: true,
        };
        (file, target)
    }

    /// Ten O_DIRECT requests of three aligned buffers each (more than the
    /// depth) from `path`, each checked against `bytes`.
    fn run(queue: &mut ReadQueue, path: &Path, bytes: &[u8]) {
        let (_file, target) = staged_direct(path);
        let mut bufs: Vec<TensorBuffer> = (0..30)
            .map(|i| TensorBuffer::allocate(4096 * (1 + i % 3), 4096).unwrap())
            .collect();
        let mut pending = Vec::new();
        let (mut offset, mut next, mut finished) = (0u64, 0usize, 0);
        while finished < 10 {
            while next < 10 && queue.has_room(&target) {
                let iov: Vec<libc::iovec> = bufs[next * 3..next * 3 + 3]
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_slice().as_mut_ptr() as *mut libc::c_void,
                        iov_len: b.len(),
                    })
                    .collect();
                let len: usize = iov.iter().map(|v| v.iov_len).sum();
                pending.push((offset, len));
                let tag = next as u64;
                queue.submit(target, Request { tag, offset, iov });
                offset += len as u64 + 4096;
                next += 1;
            }
            let c = queue.wait().expect("requests in flight");
            let (at, len) = pending[c.tag as usize];
            assert_eq!(c.result.unwrap(), len);
            let got: Vec<u8> = bufs[c.tag as usize * 3..c.tag as usize * 3 + 3]
                .iter_mut()
                .flat_map(|b| b.as_mut_slice().to_vec())
                .collect();
            assert_eq!(got, bytes[at as usize..at as usize + len], "request {}", c.tag);
            finished += 1;
        }
        assert!(queue.wait().is_none());
    }

    /// One iovec per buffer, in order.
    fn iovecs(bufs: &mut [&mut Vec<u8>]) -> Vec<libc::iovec> {
        bufs.iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect()
    }

    /// Submits one plain (not O_DIRECT) request of `bufs` at `offset` on
    /// `fd`, and waits for it.
    fn read_one(q: &mut ReadQueue, fd: RawFd, offset: u64, bufs: &mut [&mut Vec<u8>]) -> Completion {
        let target = BatchTarget {
            fd,
            block: None,
            drop_behind: false,
            staged: false,
        };
        let iov = iovecs(bufs);
        q.submit(target, Request { tag: 7, offset, iov });
        q.wait().expect("one request in flight")
    }

    #[test]
    fn scattered_requests_read_every_byte_with_and_without_a_ring() {
        let (f, bytes) = file_of(400_000);
        // Staged where a huge page can be had (run's target asks for it).
        let _lease = staging::attach(1);
        for ring in [true, false] {
            let mut q = ReadQueue::new();
            if !ring {
                q.ring = None;
            }
            run(&mut q, f.path(), &bytes);
            // And with every slot of staging memory held: each request
            // lands in its own buffers.
            let _every_slot = EVERY_SLOT.lock().unwrap_or_else(|e| e.into_inner());
            let lease = staging::attach(1);
            let held: Vec<_> = std::iter::from_fn(|| staging::take(4096)).collect();
            run(&mut q, f.path(), &bytes);
            drop(held);
            drop(lease);
        }
        // And the bytes themselves, through one request over two buffers.
        let mut q = ReadQueue::new();
        let (mut a, mut b) = (vec![0u8; 5000], vec![0u8; 7000]);
        let c = read_one(&mut q, f.as_file().as_raw_fd(), 1234, &mut [&mut a, &mut b]);
        assert_eq!((c.tag, c.result.unwrap()), (7, 12_000));
        assert_eq!(a, bytes[1234..6234]);
        assert_eq!(b, bytes[6234..13_234]);
    }

    #[test]
    fn a_buffer_of_huge_pages_reads_its_partial_last_one_through_a_slot() {
        const MIB: usize = 1 << 20;
        let (f, bytes) = file_of(9 * MIB);
        let (_file, target) = staged_direct(f.path());
        let _every_slot = EVERY_SLOT.lock().unwrap_or_else(|e| e.into_inner());
        let lease = staging::attach(1);
        // A tail a slot holds (staged), one it does not, and none.
        for (len, staged_from) in [
            (2 * MIB + (300 << 10), Some(2 * MIB)),
            (4 * MIB + (500 << 10), Some(4 * MIB)),
            (2 * MIB + (1100 << 10), None),
            (4 * MIB, None),
        ] {
            for ring in [true, false] {
                let mut q = ReadQueue::new();
                if !ring {
                    q.ring = None;
                }
                let mut buf = TensorBuffer::allocate(len, 4096).unwrap();
                buf.as_mut_slice().fill(0);
                let request = |buf: &mut TensorBuffer| Request {
                    tag: 3,
                    offset: 8192,
                    iov: vec![libc::iovec {
                        iov_base: buf.as_mut_slice().as_mut_ptr() as *mut libc::c_void,
                        iov_len: len,
                    }],
                };
                if lease.is_some() {
                    let shape = stage(&target, &request(&mut buf)).map(|s| (s.from, s.read.iov.len()));
                    assert_eq!(shape, staged_from.map(|from| (from, 2)), "{len} bytes");
                }
                q.submit(target, request(&mut buf));
                let c = q.wait().expect("one request in flight");
                assert_eq!((c.tag, c.result.unwrap()), (3, len));
                assert!(
                    buf.as_mut_slice() == &bytes[8192..8192 + len],
                    "{len} bytes, ring {ring}"
                );
            }
        }
    }

    #[test]
    fn a_request_past_the_end_reads_to_the_end_and_a_bad_descriptor_fails() {
        let (f, _) = file_of(10_000);
        let mut q = ReadQueue::new();
        let mut a = vec![0u8; 8192];
        let c = read_one(&mut q, f.as_file().as_raw_fd(), 4096, &mut [&mut a]);
        assert_eq!(c.result.unwrap(), 10_000 - 4096);
        let e = read_one(&mut q, -1, 0, &mut [&mut a]).result.unwrap_err();
        assert!(e.to_string().contains("read of 8192 bytes at offset 0"), "{e}");
    }
}
