//! Placement windows: the slices of one parent tensor read straight into
//! their places in one reserved address range, so that an engine that
//! computes with the parent's layout (ggml's `MUL_MAT_ID` reads expert `e`
//! at `data + e * nb[2]`) finds each resident slice where it expects it,
//! with no copy.
//!
//! The range is reserved (no memory behind it) with the file's page phase:
//! the parent's byte 0 sits at the same offset within a page as in the
//! file, so an `O_DIRECT` read of a slice's aligned blocks lands in place.
//! Pages are committed by the reads that fill them and given back when the
//! last resident slice on them is evicted; a page shared by two neighbours
//! is counted by each user and returned only when both are gone. Each slice
//! is charged the whole pages it touches, so shared pages are never
//! undercounted.

use std::ptr::NonNull;
use std::sync::Mutex;

use crate::error::{Error, Result};

const PAGE: u64 = 4096;

/// The reserved range of one parent tensor and who uses each of its pages.
#[derive(Debug)]
pub(crate) struct Window {
    /// Start of the reservation (page-aligned).
    map: NonNull<u8>,
    map_len: usize,
    /// Offset of the parent's byte 0 from `map`: the file offset's page phase.
    phase: u64,
    /// Resident (or loading) slices on each page.
    users: Mutex<Vec<u32>>,
}

// SAFETY: the window owns its reservation; the bytes are written only by the
// load that owns a slice's slot, and the page counts are behind a mutex.
unsafe impl Send for Window {}
// SAFETY: as above.
unsafe impl Sync for Window {}

impl Window {
    /// Reserves room for a parent of `size` bytes at absolute file offset
    /// `file_offset`, plus the partial blocks an aligned read may add at
    /// either end.
    pub(crate) fn reserve(file_offset: u64, size: u64) -> Result<Self> {
        let phase = file_offset % PAGE;
        let pages = (phase + size).div_ceil(PAGE) + 1;
        let map_len = (pages * PAGE) as usize;
        // SAFETY: an anonymous private reservation with no address hint,
        // checked against MAP_FAILED; MAP_NORESERVE commits nothing until a
        // page is written.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::OutOfMemory {
                bytes: map_len as u64,
                what: "placement window (address space)".to_owned(),
            });
        }
        Ok(Window {
            map: NonNull::new(p as *mut u8).expect("mmap does not return null on success"),
            map_len,
            phase,
            users: Mutex::new(vec![0; pages as usize]),
        })
    }

    /// Where the parent's byte 0 is placed.
    pub(crate) fn base(&self) -> *const u8 {
        // SAFETY: phase < PAGE <= map_len: inside the reservation.
        unsafe { self.map.as_ptr().add(self.phase as usize) }
    }

    /// The pages `offset..offset+size` of the parent touch (first, end).
    fn pages(&self, offset: u64, size: u64) -> (usize, usize) {
        let start = self.phase + offset;
        let end = start + size.max(1);
        ((start / PAGE) as usize, end.div_ceil(PAGE) as usize)
    }

    /// Bytes a slice at `offset..offset+size` is charged: the pages it touches.
    pub(crate) fn charge_for(&self, offset: u64, size: u64) -> u64 {
        let (first, end) = self.pages(offset, size);
        (end - first) as u64 * PAGE
    }

    /// Marks the slice's pages used before its read writes them, so that
    /// the eviction of a neighbour cannot give a shared page back under it.
    pub(crate) fn occupy(&self, offset: u64, size: u64) {
        let (first, end) = self.pages(offset, size);
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for u in &mut users[first..end] {
            *u += 1;
        }
    }

    /// The slice is gone (evicted, or its read failed): pages no resident
    /// slice uses any more go back to the OS. The `madvise` runs under the
    /// page counts' lock, so a neighbour's load cannot occupy a page and
    /// write it between the count reaching zero and the page being dropped.
    pub(crate) fn vacate(&self, offset: u64, size: u64) {
        let (first, end) = self.pages(offset, size);
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let mut run: Option<usize> = None;
        for page in first..=end {
            let free = page < end && {
                users[page] -= 1;
                users[page] == 0
            };
            match (free, run) {
                (true, None) => run = Some(page),
                (false, Some(from)) => {
                    self.drop_pages(from, page);
                    run = None;
                }
                _ => {}
            }
        }
    }

    fn drop_pages(&self, from: usize, to: usize) {
        // SAFETY: pages from..to lie inside our own reservation (to <=
        // users.len() pages); no resident slice uses them (their counts are
        // zero under the lock the caller holds).
        unsafe {
            libc::madvise(
                self.map.as_ptr().add(from * PAGE as usize) as *mut libc::c_void,
                (to - from) * PAGE as usize,
                libc::MADV_DONTNEED,
            );
        }
    }

    /// The buffer a read of bytes `offset..offset+size` of the parent fills:
    /// from `offset` rounded down to `block` (the `O_DIRECT` block, 1 for
    /// buffered reads) for `len` bytes. Returns the buffer and where the
    /// slice's data starts in it.
    ///
    /// # Safety
    /// The caller owns the slice's load (its slot is LOADING), has occupied
    /// its pages, and `len` covers only the slice's own blocks: bytes of a
    /// neighbour's blocks it may overwrite are the file's, the same bytes.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn read_buffer(&self, offset: u64, block: u64, len: usize) -> &mut [u8] {
        let at = self.phase + offset;
        let start = at - at % block;
        debug_assert!(start as usize + len <= self.map_len);
        std::slice::from_raw_parts_mut(self.map.as_ptr().add(start as usize), len)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: our own reservation, unmapped once; no acquisition can
        // outlive the pager's inner state, which owns the windows.
        unsafe { libc::munmap(self.map.as_ptr() as *mut libc::c_void, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(w: &Window, page: usize) -> bool {
        let mut v = 0u8;
        // SAFETY: mincore on one page of our own reservation.
        unsafe {
            libc::mincore(
                w.map.as_ptr().add(page * PAGE as usize) as *mut libc::c_void,
                PAGE as usize,
                &mut v,
            );
        }
        v & 1 == 1
    }

    #[test]
    fn the_base_has_the_file_offset_page_phase() {
        let w = Window::reserve(3 * 4096 + 100, 10_000).unwrap();
        assert_eq!(w.base() as usize % 4096, 100);
    }

    #[test]
    fn a_shared_page_is_kept_while_a_neighbour_uses_it() {
        // Two slices of 6,000 bytes: page 1 is shared.
        let w = Window::reserve(0, 12_000).unwrap();
        assert_eq!(w.charge_for(0, 6000), 2 * 4096);
        assert_eq!(w.charge_for(6000, 6000), 2 * 4096);
        for (off, byte) in [(0u64, 1u8), (6000, 2)] {
            w.occupy(off, 6000);
            // SAFETY: this test owns both slices.
            unsafe { w.read_buffer(off, 1, 6000) }.fill(byte);
        }
        w.vacate(0, 6000);
        assert!(!committed(&w, 0), "page 0 was the first slice's alone");
        assert!(committed(&w, 1), "page 1 is still the second slice's");
        // SAFETY: reading the second slice's bytes, still occupied.
        let second = unsafe { w.read_buffer(6000, 1, 6000) };
        assert!(second.iter().all(|&b| b == 2));
        w.vacate(6000, 6000);
        assert!(!committed(&w, 1) && !committed(&w, 2));
    }
}
