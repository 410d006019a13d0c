//! Staging memory for `O_DIRECT` reads: transparent huge pages from which
//! each read takes a range (a slot) to land in before it is copied into
//! the tensors' own buffers.
//!
//! Why: on a virtual disk (virtio) an `O_DIRECT` read into 4 KiB pages is
//! one segment per page, and the host serves it at a third of the speed of
//! the same read into one physically contiguous huge page (measured on the
//! 2-core CI machine: 1 MiB requests 1.25 GB/s into 4 KiB pages, 3.07 GB/s
//! into a huge page, 3.25 at two in flight). Tensor buffers are small and
//! many, so they cannot each be a huge page (those of 2 MiB or more are,
//! and are read into straight, but for their partial last 2 MiB, which
//! is in 4 KiB pages and lands in a slot: `buffer::huge_page_head`); copying a MiB
//! costs about a tenth of a millisecond, a third of what the slower read
//! loses.
//!
//! Each pager that reads with `O_DIRECT` under a budget holds a lease on an
//! area of its own: one huge page for a small budget, up to
//! [`MOST_STAGING_PAGES`] for a large one (the pager chooses; see
//! `pager/budget.rs`), charged to its budget (tensors less of room, not
//! memory beside it) and unmapped when the lease and its last slot are
//! gone. Slots are taken from any live area of the process: every byte of
//! staging memory is charged to one budget. An area is used only if the
//! kernel backs it with huge pages: where transparent huge pages are off,
//! or none are free, reads go straight into the tensors' buffers as before
//! and nothing is charged. `LAYERPAGER_STAGING=off` turns staging off.
//!
//! A slot is as long as its read (in whole 4 KiB blocks, at most
//! [`MAX_STAGED_BYTES`]), so that a huge page holds three reads of half a
//! MiB (two stay in flight while a reader copies the third out) or two of
//! nearly a MiB (a Q8_0 feed-forward matrix of a small model).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::buffer::{map_anonymous, HUGE_PAGE};

/// The largest read that is staged: half a huge page.
pub(crate) const MAX_STAGED_BYTES: usize = HUGE_PAGE / 2;

/// Bytes of one huge page of staging memory, as charged to a budget.
pub(crate) const STAGING_PAGE_BYTES: u64 = HUGE_PAGE as u64;

/// The most huge pages one pager stages through: four keep eight reads of
/// the size of an MoE model's experts (324-864 KiB) in flight, where one
/// page kept two (a model of such tensors read 1.4-1.6x slower than its
/// bytes at the disk's raw speed with one page, 1.1-1.2x with two).
pub(crate) const MOST_STAGING_PAGES: usize = 4;

/// Staged reads a queue keeps in flight per huge page of staging memory,
/// as far as the pages hold them (see `ReadQueue::has_room_for`): two stay
/// in flight while the reader copies the third out. With two 1 MiB slots
/// the disk had one read at a time during the copy: llama.cpp at half of
/// SmolLM2 in its memory cgroup ran 32 tokens/s against 40 with three, and
/// 22 against 25 on the Q8_0 file (medians of six alternating runs).
const STAGED_READS_PER_PAGE: usize = 3;

/// Slots are whole blocks of this size (the `O_DIRECT` alignment).
const BLOCK: usize = 4096;

/// Environment variable that turns staging off (`LAYERPAGER_STAGING=off`):
/// `O_DIRECT` reads then land in the tensors' buffers themselves.
pub const STAGING_ENV: &str = "LAYERPAGER_STAGING";

/// One lease's huge pages and their free ranges.
struct Area {
    /// Tells this area from the others (slots and leases name it).
    id: u64,
    base: NonNull<u8>,
    len: usize,
    /// Free ranges, `(offset, len)`, by offset, never adjacent.
    free: Vec<(usize, usize)>,
    /// Its lease is gone: no new slot is taken from it, and it is unmapped
    /// when the last one comes back.
    retiring: bool,
}

/// The live areas of the process.
struct Pool {
    areas: Vec<Area>,
    next_id: u64,
}

// SAFETY: the areas are only reached through slots, each handed to one
// holder at a time under the mutex.
unsafe impl Send for Pool {}

static POOL: Mutex<Pool> = Mutex::new(Pool::new());

/// Huge pages of the areas slots may be taken from now.
static LIVE_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Held by a source whose `O_DIRECT` reads are staged: its area stays
/// mapped while the lease or any slot of it does.
pub(crate) struct Lease {
    pool: &'static Mutex<Pool>,
    area: u64,
    pages: usize,
}

impl Lease {
    /// The huge pages of the lease's area.
    pub(crate) fn pages(&self) -> usize {
        self.pages
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "staging lease of {} huge pages", self.pages)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut p = lock(self.pool);
        if let Some(a) = p.area_mut(self.area) {
            a.retiring = true;
            if std::ptr::eq(self.pool, &POOL) {
                LIVE_PAGES.fetch_sub(self.pages, Ordering::Relaxed);
            }
        }
        p.unmap_if_unused(self.area);
    }
}

/// One slot of an area: a range of whole 4 KiB blocks, aligned to one;
/// goes back to its area when dropped.
pub(crate) struct Slot {
    pool: &'static Mutex<Pool>,
    area: u64,
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
        // SAFETY: the slot is `self.len` bytes of a mapped area (a slot out
        // keeps it mapped), held by this slot alone.
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
        if let Some(a) = p.area_mut(self.area) {
            give_back(&mut a.free, self.offset, self.len);
        }
        p.unmap_if_unused(self.area);
    }
}

fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lease on an area of `pages` huge pages (1 to [`MOST_STAGING_PAGES`]);
/// `None` where staging is off or the kernel gives no huge pages.
pub(crate) fn attach(pages: usize) -> Option<Lease> {
    if std::env::var(STAGING_ENV).is_ok_and(|v| v == "off" || v == "0") {
        return None;
    }
    let lease = attach_to(&POOL, pages)?;
    LIVE_PAGES.fetch_add(lease.pages, Ordering::Relaxed);
    Some(lease)
}

/// A slot of `len` bytes (at most [`MAX_STAGED_BYTES`]) of a live area;
/// `None` when no free range holds it.
pub(crate) fn take(len: usize) -> Option<Slot> {
    take_from(&POOL, len)
}

/// Whether slots of each of `lens` bytes, taken one after another, would
/// all be had now (a read longer than [`MAX_STAGED_BYTES`] is not staged
/// and needs none).
pub(crate) fn would_hold(lens: &[usize]) -> bool {
    let p = lock(&POOL);
    let mut free: Vec<Vec<(usize, usize)>> = p.live().map(|a| a.free.clone()).collect();
    !free.is_empty()
        && lens
            .iter()
            .filter(|&&len| len <= MAX_STAGED_BYTES)
            .all(|&len| free.iter_mut().any(|f| first_fit(f, len).is_some()))
}

/// How many staged reads may be in flight at once in one queue:
/// [`STAGED_READS_PER_PAGE`] per live huge page, at most `most`.
pub(crate) fn staged_depth(most: usize) -> usize {
    (STAGED_READS_PER_PAGE * LIVE_PAGES.load(Ordering::Relaxed).max(1)).min(most)
}

fn attach_to(pool: &'static Mutex<Pool>, pages: usize) -> Option<Lease> {
    let pages = pages.clamp(1, MOST_STAGING_PAGES);
    let len = pages * HUGE_PAGE;
    let base = map_huge_pages(len)?;
    let mut p = lock(pool);
    let id = p.next_id;
    p.next_id += 1;
    p.areas.push(Area {
        id,
        base,
        len,
        free: vec![(0, len)],
        retiring: false,
    });
    Some(Lease {
        pool,
        area: id,
        pages,
    })
}

fn take_from(pool: &'static Mutex<Pool>, len: usize) -> Option<Slot> {
    if len > MAX_STAGED_BYTES {
        return None;
    }
    let mut p = lock(pool);
    let area = p.areas.iter_mut().filter(|a| !a.retiring).find_map(|a| {
        let offset = first_fit(&mut a.free, len)?;
        Some((a.id, a.base, offset))
    });
    let (area, base, offset) = area?;
    let len = len.max(1).next_multiple_of(BLOCK);
    // SAFETY: offset + len lies in a free range of the area.
    let ptr = unsafe { NonNull::new_unchecked(base.as_ptr().add(offset)) };
    Some(Slot {
        pool,
        area,
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

/// Returns a range to a free list, merged with its neighbours.
fn give_back(free: &mut Vec<(usize, usize)>, offset: usize, len: usize) {
    let i = free.partition_point(|&(o, _)| o < offset);
    free.insert(i, (offset, len));
    if i + 1 < free.len() && offset + len == free[i + 1].0 {
        free[i].1 += free[i + 1].1;
        free.remove(i + 1);
    }
    if i > 0 && free[i - 1].0 + free[i - 1].1 == offset {
        free[i - 1].1 += free[i].1;
        free.remove(i);
    }
}

impl Pool {
    const fn new() -> Pool {
        Pool {
            areas: Vec::new(),
            next_id: 0,
        }
    }

    fn area_mut(&mut self, id: u64) -> Option<&mut Area> {
        self.areas.iter_mut().find(|a| a.id == id)
    }

    /// The areas slots may be taken from.
    fn live(&self) -> impl Iterator<Item = &Area> {
        self.areas.iter().filter(|a| !a.retiring)
    }

    /// Unmaps area `id` if its lease is gone and every slot is back.
    fn unmap_if_unused(&mut self, id: u64) {
        let Some(i) = self.areas.iter().position(|a| a.id == id) else {
            return;
        };
        let a = &self.areas[i];
        if !a.retiring || a.free != [(0, a.len)] {
            return;
        }
        let a = self.areas.swap_remove(i);
        // SAFETY: the area is ours, and no lease or slot refers to it.
        unsafe { libc::munmap(a.base.as_ptr() as *mut libc::c_void, a.len) };
    }
}

/// Maps `len` bytes (whole huge pages) aligned to a huge page; `None`
/// unless the kernel backs every page with a huge one.
fn map_huge_pages(len: usize) -> Option<NonNull<u8>> {
    let area = map_anonymous(len)?;
    let base = area.as_ptr() as usize;
    // SAFETY: our own fresh mapping, advised to use huge pages. MADV_DONTFORK
    // (a child needs no staging) also keeps it a mapping of its own, so
    // that `/proc/self/smaps` tells its pages from a neighbouring buffer's.
    // A write faults each page in (as a huge page where the kernel has one);
    // MADV_COLLAPSE (Linux 6.1 on) makes them out of small pages if it did not.
    unsafe {
        libc::madvise(base as *mut libc::c_void, len, libc::MADV_DONTFORK);
        for page in (0..len).step_by(HUGE_PAGE) {
            std::ptr::write_volatile(area.as_ptr().add(page), 0);
        }
        libc::madvise(base as *mut libc::c_void, len, MADV_COLLAPSE);
    }
    if !in_huge_pages(base, len) {
        // SAFETY: the mapping is ours and nothing points into it.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
        return None;
    }
    Some(area)
}

/// `MADV_COLLAPSE`, which the libc crate does not name on every target.
const MADV_COLLAPSE: libc::c_int = 25;

/// Whether the mapping that holds `base` is all huge pages, `len` bytes of
/// them at least (its `AnonHugePages` and `Anonymous` in `/proc/self/smaps`).
fn in_huge_pages(base: usize, len: usize) -> bool {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return false;
    };
    // A mapping's line starts with its range in lower-case hexadecimal;
    // its field lines with a capitalised name.
    let starts_mapping = |l: &str| l.starts_with(|c: char| c.is_ascii_digit() || ('a'..='f').contains(&c));
    let holds_base = |l: &str| {
        let range = l.split(' ').next().unwrap_or("");
        let mut ends = range.split('-').map(|x| usize::from_str_radix(x, 16).ok());
        matches!((ends.next(), ends.next()), (Some(Some(from)), Some(Some(to))) if from <= base && base < to)
    };
    let mut lines = smaps
        .lines()
        .skip_while(|l| !(starts_mapping(l) && holds_base(l)));
    if lines.next().is_none() {
        return false;
    }
    let kib = |name: &str, fields: &[&str]| {
        fields
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
    };
    let fields: Vec<&str> = lines.take_while(|l| !starts_mapping(l)).collect();
    match (kib("AnonHugePages:", &fields), kib("Anonymous:", &fields)) {
        (Some(huge), Some(anon)) => huge == anon && huge * 1024 >= len,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_of(pool: &Mutex<Pool>, lease: &Lease) -> Vec<(usize, usize)> {
        lock(pool).area_mut(lease.area).expect("a live area").free.clone()
    }

    fn mapped(pool: &Mutex<Pool>) -> usize {
        lock(pool).areas.len()
    }

    #[test]
    fn slots_are_as_long_as_their_reads_come_back_merged_and_an_area_goes_with_its_last_user() {
        // A pool of its own: the process's is shared with the other tests.
        let pool: &'static Mutex<Pool> = Box::leak(Box::new(Mutex::new(Pool::new())));
        assert!(take_from(pool, 4096).is_none(), "no slot without a lease");
        let Some(lease) = attach_to(pool, 1) else {
            // No transparent huge page here: nothing is staged, nothing to check.
            eprintln!("no transparent huge page: staging is off here");
            return;
        };
        assert_eq!(lease.pages(), 1);
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
        assert_eq!(free_of(pool, &lease), vec![(0, HUGE_PAGE)], "ranges merge back");
        // Two of a Q8_0 one (940 KiB), with their bytes their own.
        let mut a = take_from(pool, 940_032).expect("a slot");
        let mut b = take_from(pool, 940_032).expect("two slots");
        assert!(take_from(pool, 552_960).is_none(), "no third");
        a.bytes_mut(940_032).fill(1);
        b.bytes_mut(940_032).fill(2);
        assert!(a.bytes(940_032).iter().all(|&x| x == 1));
        assert!(b.bytes(940_032).iter().all(|&x| x == 2));
        // A second lease of two pages: four more such slots, from its area.
        let Some(wide) = attach_to(pool, 2) else {
            eprintln!("no two transparent huge pages free: the rest is not checked");
            return;
        };
        assert_eq!(wide.pages(), 2);
        let four: Vec<Slot> = (0..4)
            .map(|_| take_from(pool, 940_032).expect("four slots of the second area"))
            .collect();
        assert!(four.iter().all(|s| s.area == wide.area));
        assert!(take_from(pool, 940_032).is_none(), "no fifth");
        let rest = take_from(pool, 2 * HUGE_PAGE - 4 * 940_032usize.next_multiple_of(BLOCK))
            .expect("the rest of the second area");
        assert_eq!(rest.area, wide.area);
        drop(a);
        drop(lease);
        assert_eq!(mapped(pool), 2, "a slot out keeps its area");
        assert!(
            take_from(pool, 4096).is_none(),
            "no slot from an area whose lease is gone"
        );
        drop(b);
        assert_eq!(mapped(pool), 1, "unmapped with its last user");
        drop((four, rest));
        drop(wide);
        assert_eq!(mapped(pool), 0);
    }

    #[test]
    fn a_small_mapping_is_not_taken_for_huge_pages() {
        let small = crate::source::TensorBuffer::allocate(8192, 4096).unwrap();
        assert!(!in_huge_pages(small.as_ptr() as usize, 8192));
    }
}
