//! Staging memory for `O_DIRECT` reads: one transparent huge page for the
//! whole process, cut into slots that a read lands in before it is copied
//! into the tensors' own buffers.
//!
//! Why: on a virtual disk (virtio) an `O_DIRECT` read into 4 KiB pages is
//! one segment per page, and the host serves it at a third of the speed of
//! the same read into one physically contiguous huge page (measured on the
//! 2-core CI machine: 1 MiB requests 1.25 GB/s into 4 KiB pages, 3.07 GB/s
//! into a huge page, 3.25 at two in flight). Tensor buffers are small and
//! many, so they cannot each be a huge page; copying a MiB costs about a
//! tenth of a millisecond, a third of what the slower read loses.
//!
//! The page is mapped at the first `O_DIRECT` read, kept for the life of the
//! process (2 MiB beside every budget, like the readers' stacks), and used
//! only if the kernel backs it with a huge page: where transparent huge
//! pages are off, or none is free, reads go straight into the tensors'
//! buffers as before. `LAYERPAGER_STAGING=off` turns it off.

use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

/// Bytes of one slot: the largest request that is staged.
pub(crate) const SLOT_BYTES: usize = 1 << 20;

const HUGE_PAGE: usize = 2 << 20;
const SLOTS: usize = HUGE_PAGE / SLOT_BYTES;

/// Environment variable that turns staging off (`LAYERPAGER_STAGING=off`):
/// `O_DIRECT` reads then land in the tensors' buffers themselves.
pub const STAGING_ENV: &str = "LAYERPAGER_STAGING";

struct Pool {
    base: NonNull<u8>,
    slots: usize,
    free: Mutex<Vec<usize>>,
}

// SAFETY: the page is only reached through slots, each handed to one
// holder at a time under the mutex.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

static POOL: OnceLock<Option<Pool>> = OnceLock::new();

/// One slot of the staging page, [`SLOT_BYTES`] long, aligned to it; goes
/// back to the pool when dropped.
pub(crate) struct Slot {
    pool: &'static Pool,
    index: usize,
    ptr: NonNull<u8>,
}

// SAFETY: the slot's bytes belong to its holder alone until it is dropped.
unsafe impl Send for Slot {}

impl Slot {
    /// Start of the slot's [`SLOT_BYTES`] bytes.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The slot's first `len` bytes (at most [`SLOT_BYTES`]).
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        assert!(len <= SLOT_BYTES);
        // SAFETY: the slot is SLOT_BYTES of the live staging page, held by
        // this slot alone.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }

    /// The slot's first `len` bytes, for reading into.
    pub(crate) fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= SLOT_BYTES);
        // SAFETY: as `bytes`, borrowed exclusively through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.index);
    }
}

/// Slots of the process's staging page (0 without one).
pub(crate) fn slots() -> usize {
    pool().map_or(0, |p| p.slots)
}

fn pool() -> Option<&'static Pool> {
    POOL.get_or_init(|| {
        let off = std::env::var(STAGING_ENV).is_ok_and(|v| v == "off" || v == "0");
        if off {
            None
        } else {
            Pool::map()
        }
    })
    .as_ref()
}

/// A free slot of the process's staging page, or `None` when every slot is
/// taken, staging is off, or the kernel gave no huge page.
pub(crate) fn take() -> Option<Slot> {
    pool()?.take()
}

impl Pool {
    fn take(&'static self) -> Option<Slot> {
        let index = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        // SAFETY: index < SLOTS: inside the staging page.
        let ptr = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(index * SLOT_BYTES)) };
        Some(Slot {
            pool: self,
            index,
            ptr,
        })
    }

    /// Maps a page aligned to a huge page; `None` unless the kernel backs
    /// it with one.
    fn map() -> Option<Pool> {
        // Twice the size, to cut a range aligned to a huge page out of it.
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * HUGE_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let start = raw as usize;
        let base = start.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (base - start, start + 2 * HUGE_PAGE - (base + HUGE_PAGE));
        // SAFETY: unmapping the parts of our own mapping outside the aligned range.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((base + HUGE_PAGE) as *mut libc::c_void, tail);
            }
        }
        let page = base as *mut libc::c_void;
        // SAFETY: advice on our own aligned mapping; the write faults the
        // page in (as a huge page where the kernel has one); MADV_COLLAPSE
        // (Linux 6.1 on) makes one out of small pages if it did not.
        unsafe {
            libc::madvise(page, HUGE_PAGE, libc::MADV_HUGEPAGE);
            std::ptr::write_volatile(page as *mut u8, 0);
            libc::madvise(page, HUGE_PAGE, MADV_COLLAPSE);
        }
        if !is_huge_page(base) {
            // SAFETY: the aligned range is ours and nothing points into it.
            unsafe { libc::munmap(page, HUGE_PAGE) };
            return None;
        }
        Some(Pool {
            base: NonNull::new(base as *mut u8)?,
            slots: SLOTS,
            free: Mutex::new((0..SLOTS).collect()),
        })
    }
}

/// `MADV_COLLAPSE`, which the libc crate does not name on every target.
const MADV_COLLAPSE: libc::c_int = 25;

/// Whether the mapping that starts at `base` is backed by a huge page
/// (its `AnonHugePages` in `/proc/self/smaps`).
fn is_huge_page(base: usize) -> bool {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return false;
    };
    let header = format!("{base:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
    if lines.next().is_none() {
        return false;
    }
    // Field lines start with a capitalised name; the next mapping's line
    // with its lower-case hexadecimal address.
    lines
        .take_while(|l| !l.starts_with(|c: char| c.is_ascii_digit() || ('a'..='f').contains(&c)))
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .is_some_and(|kib| kib * 1024 >= HUGE_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_aligned_and_come_back() {
        // A pool of its own: the process's is shared with the other tests.
        let Some(pool) = Pool::map() else {
            // No transparent huge page here: nothing is staged, nothing to check.
            eprintln!("no transparent huge page: staging is off here");
            return;
        };
        let pool: &'static Pool = Box::leak(Box::new(pool));
        let a = pool.take().expect("a slot");
        let b = pool.take().expect("two slots");
        assert_ne!(a.ptr(), b.ptr());
        assert_eq!(a.ptr() as usize % SLOT_BYTES, 0);
        assert!(pool.take().is_none(), "two slots in all");
        drop(a);
        let c = pool.take().expect("a dropped slot comes back");
        let mut c = c;
        c.bytes_mut(SLOT_BYTES).fill(7);
        assert!(c.bytes(SLOT_BYTES).iter().all(|&x| x == 7));
    }

    #[test]
    fn a_small_mapping_is_not_taken_for_a_huge_page() {
        let small = crate::source::TensorBuffer::allocate(8192, 4096).unwrap();
        assert!(!is_huge_page(small.as_ptr() as usize));
    }
}
