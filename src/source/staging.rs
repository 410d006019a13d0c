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
//! The page is mapped when the first pager that reads with `O_DIRECT`
//! under a budget opens, charged to that pager's budget (a tensor less of
//! room, not 2 MiB beside it), and unmapped when the last one closes. It is
//! used only if the kernel backs it with a huge page: where transparent
//! huge pages are off, or none is free, reads go straight into the
//! tensors' buffers as before and nothing is charged.
//! `LAYERPAGER_STAGING=off` turns it off.

use std::ptr::NonNull;
use std::sync::Mutex;

use super::buffer::HUGE_PAGE;

/// Bytes of one slot: the largest request that is staged. A third of the
/// page (680 KiB, whole 4 KiB blocks, larger than a 7B model's attention
/// matrices), so that two reads stay in flight while a reader copies the
/// third out: with two slots of 1 MiB the disk had one read at a time
/// while the copy ran, and llama.cpp at half of SmolLM2 in its memory
/// cgroup ran 31-41 tokens/s against 38-42 with three (alternating runs).
pub(crate) const SLOT_BYTES: usize = 170 * 4096;

/// Bytes of the staging page, charged to the budget of each pager whose
/// reads use it.
pub(crate) const STAGING_BYTES: u64 = HUGE_PAGE as u64;

const SLOTS: usize = HUGE_PAGE / SLOT_BYTES;

/// Environment variable that turns staging off (`LAYERPAGER_STAGING=off`):
/// `O_DIRECT` reads then land in the tensors' buffers themselves.
pub const STAGING_ENV: &str = "LAYERPAGER_STAGING";

/// The staging page and who uses it: mapped at the first lease, unmapped
/// when the last lease and the last slot are gone.
struct Pool {
    page: Option<NonNull<u8>>,
    leases: usize,
    free: Vec<usize>,
}

// SAFETY: the page is only reached through slots, each handed to one
// holder at a time under the mutex.
unsafe impl Send for Pool {}

static POOL: Mutex<Pool> = Mutex::new(Pool::new());

/// Held by a source whose `O_DIRECT` reads are staged: the page stays
/// mapped while any lease does.
pub(crate) struct Lease {
    pool: &'static Mutex<Pool>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("staging lease")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut p = lock(self.pool);
        p.leases -= 1;
        p.unmap_if_unused();
    }
}

/// One slot of the staging page, [`SLOT_BYTES`] long, aligned to 4 KiB; goes
/// back to the pool when dropped.
pub(crate) struct Slot {
    pool: &'static Mutex<Pool>,
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
        // SAFETY: the slot is SLOT_BYTES of the mapped staging page (a slot
        // out keeps it mapped), held by this slot alone.
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
        let mut p = lock(self.pool);
        p.free.push(self.index);
        p.unmap_if_unused();
    }
}

fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lease on the process's staging page, mapping it if need be; `None`
/// where staging is off or the kernel gives no huge page.
pub(crate) fn attach() -> Option<Lease> {
    if std::env::var(STAGING_ENV).is_ok_and(|v| v == "off" || v == "0") {
        return None;
    }
    attach_to(&POOL)
}

/// A free slot of the staging page, for a source that holds a lease;
/// `None` when every slot is taken.
pub(crate) fn take() -> Option<Slot> {
    take_from(&POOL)
}

/// How many requests may be staged at once.
pub(crate) const fn slots() -> usize {
    SLOTS
}

fn attach_to(pool: &'static Mutex<Pool>) -> Option<Lease> {
    let mut p = lock(pool);
    if p.page.is_none() {
        p.page = Some(map_huge_page()?);
        p.free = (0..SLOTS).collect();
    }
    p.leases += 1;
    Some(Lease { pool })
}

fn take_from(pool: &'static Mutex<Pool>) -> Option<Slot> {
    let mut p = lock(pool);
    let page = p.page?;
    let index = p.free.pop()?;
    // SAFETY: index < SLOTS: inside the staging page.
    let ptr = unsafe { NonNull::new_unchecked(page.as_ptr().add(index * SLOT_BYTES)) };
    Some(Slot { pool, index, ptr })
}

impl Pool {
    const fn new() -> Pool {
        Pool {
            page: None,
            leases: 0,
            free: Vec::new(),
        }
    }

    fn unmap_if_unused(&mut self) {
        if self.leases > 0 || self.free.len() < SLOTS {
            return;
        }
        if let Some(page) = self.page.take() {
            // SAFETY: the page is ours, and no lease or slot refers to it.
            unsafe { libc::munmap(page.as_ptr() as *mut libc::c_void, HUGE_PAGE) };
        }
        self.free.clear();
    }
}

/// Maps a page aligned to a huge page; `None` unless the kernel backs it
/// with one.
fn map_huge_page() -> Option<NonNull<u8>> {
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
    // SAFETY: advice on our own aligned mapping; the write faults the page
    // in (as a huge page where the kernel has one); MADV_COLLAPSE (Linux
    // 6.1 on) makes one out of small pages if it did not.
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
    NonNull::new(base as *mut u8)
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
    fn slots_are_distinct_aligned_come_back_and_the_page_goes_with_the_last_user() {
        // A pool of its own: the process's is shared with the other tests.
        let pool: &'static Mutex<Pool> = Box::leak(Box::new(Mutex::new(Pool::new())));
        assert!(take_from(pool).is_none(), "no slot without a lease");
        let Some(lease) = attach_to(pool) else {
            // No transparent huge page here: nothing is staged, nothing to check.
            eprintln!("no transparent huge page: staging is off here");
            return;
        };
        let a = take_from(pool).expect("a slot");
        let mut b = take_from(pool).expect("two slots");
        let c = take_from(pool).expect("three slots");
        assert!(a.ptr() != b.ptr() && b.ptr() != c.ptr() && a.ptr() != c.ptr());
        for s in [&a, &b, &c] {
            assert_eq!(s.ptr() as usize % 4096, 0, "O_DIRECT needs block-aligned slots");
        }
        assert!(take_from(pool).is_none(), "three slots in all");
        drop(a);
        drop(c);
        b.bytes_mut(SLOT_BYTES).fill(7);
        assert!(b.bytes(SLOT_BYTES).iter().all(|&x| x == 7));
        drop(lease);
        assert!(lock(pool).page.is_some(), "a slot out keeps the page");
        drop(b);
        assert!(lock(pool).page.is_none(), "unmapped with the last user");
    }

    #[test]
    fn a_small_mapping_is_not_taken_for_a_huge_page() {
        let small = crate::source::TensorBuffer::allocate(8192, 4096).unwrap();
        assert!(!is_huge_page(small.as_ptr() as usize));
    }
}
