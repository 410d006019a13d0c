//! Staging memory for `O_DIRECT` reads: one transparent huge page for the
//! whole process, from which each read takes a range (a slot) to land in
//! before it is copied into the tensors' own buffers.
//!
//! Why: on a virtual disk (virtio) an `O_DIRECT` read into 4 KiB pages is
//! one segment per page, and the host serves it at a third of the speed of
//! the same read into one physically contiguous huge page (measured on the
//! 2-core CI machine: 1 MiB requests 1.25 GB/s into 4 KiB pages, 3.07 GB/s
//! into a huge page, 3.25 at two in flight). Tensor buffers are small and
//! many, so they cannot each be a huge page (those of 2 MiB or more are,
//! and are read into straight: `buffer::map_anonymous`); copying a MiB
//! costs about a tenth of a millisecond, a third of what the slower read
//! loses.
//!
//! The page is mapped when the first pager that reads with `O_DIRECT`
//! under a budget opens, charged to that pager's budget (a tensor less of
//! room, not 2 MiB beside it), and unmapped when the last one closes. It is
//! used only if the kernel backs it with a huge page: where transparent
//! huge pages are off, or none is free, reads go straight into the
//! tensors' buffers as before and nothing is charged.
//! `LAYERPAGER_STAGING=off` turns it off.
//!
//! A slot is as long as its read (in whole 4 KiB blocks, at most
//! [`MAX_STAGED_BYTES`]), so that the page holds three reads of half a MiB
//! (two stay in flight while a reader copies the third out) or two of
//! nearly a MiB (a Q8_0 feed-forward matrix of a small model).

use std::ptr::NonNull;
use std::sync::Mutex;

use super::buffer::{map_anonymous, HUGE_PAGE};

/// The largest read that is staged: half the page.
pub(crate) const MAX_STAGED_BYTES: usize = HUGE_PAGE / 2;

/// Bytes of the staging page, charged to the budget of each pager whose
/// reads use it.
pub(crate) const STAGING_BYTES: u64 = HUGE_PAGE as u64;

/// Slots are whole blocks of this size (the `O_DIRECT` alignment).
const BLOCK: usize = 4096;

/// Environment variable that turns staging off (`LAYERPAGER_STAGING=off`):
/// `O_DIRECT` reads then land in the tensors' buffers themselves.
pub const STAGING_ENV: &str = "LAYERPAGER_STAGING";

/// The staging page and who uses it: mapped at the first lease, unmapped
/// when the last lease and the last slot are gone.
struct Pool {
    page: Option<NonNull<u8>>,
    leases: usize,
    /// Free ranges of the page, `(offset, len)`, by offset, never adjacent.
    free: Vec<(usize, usize)>,
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

/// One slot of the staging page: a range of whole 4 KiB blocks, aligned to
/// one; goes back to the pool when dropped.
pub(crate) struct Slot {
    pool: &'static Mutex<Pool>,
    offset: usize,
    len: usize,
    ptr: NonNull<u8>,
}

// SAFETY: the slot's bytes belong to its holder alone until it is dropped.
unsafe impl Send for Slot {}

impl Slot {
    /// The slot's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Start of the slot's bytes.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The slot's first `len` bytes (at most its length).
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        assert!(len <= self.len);
        // SAFETY: the slot is `self.len` bytes of the mapped staging page
        // (a slot out keeps it mapped), held by this slot alone.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }

    /// The slot's first `len` bytes, for reading into.
    pub(crate) fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.len);
        // SAFETY: as `bytes`, borrowed exclusively through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = lock(self.pool);
        p.give_back(self.offset, self.len);
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

/// A slot of `len` bytes (at most [`MAX_STAGED_BYTES`]) of the staging
/// page, for a source that holds a lease; `None` when no free range holds
/// it.
pub(crate) fn take(len: usize) -> Option<Slot> {
    take_from(&POOL, len)
}

/// Whether slots of each of `lens` bytes, taken one after another, would
/// all be had now (a read longer than [`MAX_STAGED_BYTES`] is not staged
/// and needs none).
pub(crate) fn would_hold(lens: &[usize]) -> bool {
    let p = lock(&POOL);
    if p.page.is_none() {
        return false;
    }
    let mut free = p.free.clone();
    lens.iter()
        .filter(|&&len| len <= MAX_STAGED_BYTES)
        .all(|&len| first_fit(&mut free, len).is_some())
}

fn attach_to(pool: &'static Mutex<Pool>) -> Option<Lease> {
    let mut p = lock(pool);
    if p.page.is_none() {
        p.page = Some(map_huge_page()?);
        p.free = vec![(0, HUGE_PAGE)];
    }
    p.leases += 1;
    Some(Lease { pool })
}

fn take_from(pool: &'static Mutex<Pool>, len: usize) -> Option<Slot> {
    if len > MAX_STAGED_BYTES {
        return None;
    }
    let mut p = lock(pool);
    let page = p.page?;
    let offset = first_fit(&mut p.free, len)?;
    let len = len.max(1).next_multiple_of(BLOCK);
    // SAFETY: offset + len lies in a free range of the staging page.
    let ptr = unsafe { NonNull::new_unchecked(page.as_ptr().add(offset)) };
    Some(Slot {
        pool,
        offset,
        len,
        ptr,
    })
}

/// Takes `len` bytes (rounded up to whole blocks) from the first free range
/// of `free` that holds them; returns their offset.
fn first_fit(free: &mut Vec<(usize, usize)>, len: usize) -> Option<usize> {
    let len = len.max(1).next_multiple_of(BLOCK);
    let i = free.iter().position(|&(_, l)| l >= len)?;
    let (offset, l) = free[i];
    if l == len {
        free.remove(i);
    } else {
        free[i] = (offset + len, l - len);
    }
    Some(offset)
}

impl Pool {
    const fn new() -> Pool {
        Pool {
            page: None,
            leases: 0,
            free: Vec::new(),
        }
    }

    /// Returns a range to the free list, merged with its neighbours.
    fn give_back(&mut self, offset: usize, len: usize) {
        let i = self.free.partition_point(|&(o, _)| o < offset);
        self.free.insert(i, (offset, len));
        if i + 1 < self.free.len() && offset + len == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == offset {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    fn unmap_if_unused(&mut self) {
        if self.leases > 0 || self.free != [(0, HUGE_PAGE)] {
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
    let page = map_anonymous(HUGE_PAGE)?;
    let base = page.as_ptr() as usize;
    // SAFETY: our own fresh mapping, advised to use huge pages: the write
    // faults the page in (as a huge page where the kernel has one);
    // MADV_COLLAPSE (Linux 6.1 on) makes one out of small pages if it did not.
    unsafe {
        std::ptr::write_volatile(page.as_ptr(), 0);
        libc::madvise(base as *mut libc::c_void, HUGE_PAGE, MADV_COLLAPSE);
    }
    if !is_huge_page(base) {
        // SAFETY: the mapping is ours and nothing points into it.
        unsafe { libc::munmap(base as *mut libc::c_void, HUGE_PAGE) };
        return None;
    }
    Some(page)
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
    fn slots_are_as_long_as_their_reads_come_back_merged_and_the_page_goes_with_the_last_user() {
        // A pool of its own: the process's is shared with the other tests.
        let pool: &'static Mutex<Pool> = Box::leak(Box::new(Mutex::new(Pool::new())));
        assert!(take_from(pool, 4096).is_none(), "no slot without a lease");
        let Some(lease) = attach_to(pool) else {
            // No transparent huge page here: nothing is staged, nothing to check.
            eprintln!("no transparent huge page: staging is off here");
            return;
        };
        assert!(
            take_from(pool, MAX_STAGED_BYTES + 1).is_none(),
            "larger than a staged read"
        );
        // Three reads of a Q4_1 feed-forward matrix of SmolLM2 (540 KiB).
        let three: Vec<Slot> = (0..3)
            .map(|_| take_from(pool, 552_960).expect("three slots"))
            .collect();
        for s in &three {
            assert_eq!(s.ptr() as usize % BLOCK, 0, "O_DIRECT needs block-aligned slots");
            assert_eq!(s.len, 552_960usize.next_multiple_of(BLOCK));
        }
        assert!(three[0].ptr() < three[1].ptr() && three[1].ptr() < three[2].ptr());
        assert!(take_from(pool, 552_960).is_none(), "no fourth");
        drop(three);
        assert_eq!(lock(pool).free, vec![(0, HUGE_PAGE)], "ranges merge back");
        // Two of a Q8_0 one (940 KiB), with their bytes their own.
        let mut a = take_from(pool, 940_032).expect("a slot");
        let mut b = take_from(pool, 940_032).expect("two slots");
        assert!(take_from(pool, 552_960).is_none(), "no third");
        a.bytes_mut(940_032).fill(1);
        b.bytes_mut(940_032).fill(2);
        assert!(a.bytes(940_032).iter().all(|&x| x == 1));
        assert!(b.bytes(940_032).iter().all(|&x| x == 2));
        drop(a);
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
