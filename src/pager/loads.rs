//! The miss path: single-flight loads (one read however many threads miss
//! the same tensor), their failures (reported to every waiter), the read
//! itself, and pins.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slot::{
    self, in_use_of, state_of, Residence, ABSENT, EVICTING, IN_USE_MAX, IN_USE_ONE, LOADING, PINNED,
    PREFETCHED, RESIDENT,
};
use super::window::Window;
use super::{Inner, Placement};
use crate::error::{Error, Result};
use crate::index::TensorInfo;
use crate::source::{self, TensorBuffer};

/// What a load is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Intent {
    Acquire,
    Pin,
    /// An explicit request (`prefetch`, `hint`): a guess the engine made.
    Prefetch,
    /// Read-ahead along the schedule: a guess of ours, kept inside the
    /// read-ahead window.
    ReadAhead,
}

impl Intent {
    /// A read nobody waits for yet: it yields to demands.
    pub(super) fn is_guess(self) -> bool {
        matches!(self, Intent::Prefetch | Intent::ReadAhead)
    }
}

impl Inner {
    /// The miss path: make `id` resident for `intent`, reading it at most
    /// once however many threads ask at the same time.
    pub(super) fn load(&self, id: u32, intent: Intent) -> Result<()> {
        let slot = self.slot_unchecked(id);
        let started = Instant::now();
        let mut waiting = false;
        let result = loop {
            if let Err(e) = self.check_open() {
                break Err(e);
            }
            let w = slot.load_word();
            match state_of(w) {
                RESIDENT => {
                    let done = match intent {
                        // A miss that waited for a read (its own or a
                        // read-ahead's): not a hit of either kind.
                        Intent::Acquire => self.take_resident(slot, false).is_some(),
                        Intent::Pin => slot
                            .word
                            .compare_exchange(w, w | PINNED, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok(),
                        Intent::Prefetch | Intent::ReadAhead => true,
                    };
                    if done {
                        break Ok(());
                    }
                    if in_use_of(w) == IN_USE_MAX {
                        break Err(Error::Budget(format!(
                            "{}: {IN_USE_MAX} acquisitions outstanding, the most one tensor can have",
                            self.label(id)
                        )));
                    }
                }
                ABSENT => {
                    if self.claim(id, w, intent) {
                        break self.read_into_slot(id, intent);
                    }
                }
                _ => {
                    // LOADING or EVICTING: wait for the transition to end.
                    if intent.is_guess() {
                        break Ok(());
                    }
                    if intent == Intent::Acquire && !waiting {
                        self.poke_readers();
                    }
                    let mut sync = slot.lock();
                    let generation = sync.load_generation;
                    // While someone waits for it, the tensor is not a victim
                    // (the policy already counts it as just used).
                    if !waiting {
                        slot.waiters.fetch_add(1, Ordering::SeqCst);
                    }
                    waiting = true;
                    // A read that stalls (a hung network source, a dying
                    // disk) holds its waiters at most wait_ms, when set.
                    let deadline =
                        (self.wait_ms > 0).then(|| started + Duration::from_millis(self.wait_ms as u64));
                    let mut timed_out = false;
                    let wait_started = Instant::now();
                    while matches!(state_of(slot.load_word()), LOADING | EVICTING) {
                        sync = match deadline {
                            None => slot.changed.wait(sync).unwrap_or_else(|e| e.into_inner()),
                            Some(d) => {
                                let now = Instant::now();
                                if now >= d {
                                    timed_out = true;
                                    break;
                                }
                                slot.changed
                                    .wait_timeout(sync, d - now)
                                    .unwrap_or_else(|e| e.into_inner())
                                    .0
                            }
                        };
                    }
                    // Only time spent waiting on another thread's read is
                    // waiting; an acquirer's own read is read_ns, and budget
                    // waits are counted where they happen.
                    self.wait_ns
                        .fetch_add(wait_started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    if timed_out {
                        break Err(Error::Timeout {
                            waited_ms: self.wait_ms as u64,
                            detail: format!("{} is still being read", self.label(id)),
                        });
                    }
                    if let Some((g, err)) = &sync.failure {
                        if *g == generation + 1 && state_of(slot.load_word()) == ABSENT {
                            break Err(err.clone());
                        }
                    }
                }
            }
        };
        if waiting {
            slot.waiters.fetch_sub(1, Ordering::SeqCst);
        }
        result
    }

    /// [`super::Pager::read`]: a range of a tensor, from its resident copy
    /// if there is one (held while copying), else from the source.
    pub(super) fn read_range(&self, id: u32, offset: u64, dst: &mut [u8]) -> Result<()> {
        self.check_open()?;
        let slot = self.slot(id)?;
        let info = self.info_unchecked(id);
        source::check_range(
            &|| format!("read of {}", self.label(id)),
            offset,
            dst.len() as u64,
            info.size,
        )?;
        if dst.is_empty() {
            return Ok(());
        }
        if self.take_resident(slot, false).is_some() {
            let data = slot.data.load(Ordering::Acquire);
            // SAFETY: the in-use reference taken above keeps the slot
            // resident and its data valid for `info.size` bytes, and
            // offset + len <= size was checked.
            let bytes = unsafe { std::slice::from_raw_parts(data.add(offset as usize), dst.len()) };
            dst.copy_from_slice(bytes);
            self.release_slot(id);
            return Ok(());
        }
        // The check that the file is still the one indexed is part of the read.
        let started = Instant::now();
        self.source.verify_unchanged()?;
        self.source
            .read_exact_at(info.offset + offset, dst)
            .map_err(|e| annotate(e, &self.label(id)))?;
        self.read_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.bytes_read.fetch_add(dst.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Makes this thread the owner of `id`'s load if its state word is
    /// still `w` (ABSENT): the slot becomes LOADING, marked read ahead for
    /// a guess.
    pub(super) fn claim(&self, id: u32, w: u64, intent: Intent) -> bool {
        debug_assert_eq!(state_of(w), ABSENT);
        self.slot_unchecked(id)
            .word
            .compare_exchange(
                w,
                (w & !(PINNED | PREFETCHED)) | LOADING | if intent.is_guess() { PREFETCHED } else { 0 },
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Owner of a LOADING slot: reserve budget, read, publish.
    pub(super) fn read_into_slot(&self, id: u32, intent: Intent) -> Result<()> {
        let info = self.info_unchecked(id);
        let outcome = self.reserve_and_read(id, info, intent);
        self.publish(id, intent, outcome)
    }

    /// Ends the load of `id` this thread owns: resident with the read's
    /// data, or absent again with its failure for the waiters (a guess
    /// leaves no failure behind). Wakes whoever waits for the slot.
    pub(super) fn publish(
        &self,
        id: u32,
        intent: Intent,
        outcome: Result<(Residence, *mut u8, u64)>,
    ) -> Result<()> {
        let slot = self.slot_unchecked(id);
        let mut sync = slot.lock();
        sync.load_generation += 1;
        let result = match outcome {
            Ok((residence, data, charge)) => {
                sync.residence = Some(residence);
                sync.failure = None;
                slot.loaded_at.store(self.policy.position(), Ordering::Relaxed);
                slot.data.store(data, Ordering::Release);
                debug_assert_eq!(slot.charge.load(Ordering::Relaxed), charge);
                let mut word = RESIDENT;
                match intent {
                    Intent::Acquire => word += IN_USE_ONE,
                    Intent::Pin => word |= PINNED,
                    Intent::Prefetch | Intent::ReadAhead => {
                        word |= PREFETCHED;
                        self.readahead_in_flight.fetch_sub(charge, Ordering::SeqCst);
                    }
                }
                // Keep the hit counter bits of the word.
                let hits = slot.load_word() & slot::HITS_MASK;
                slot.word.store(word | hits, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // A read-ahead that did not fit is no verdict on the tensor:
                // whoever waited for it reads it on its own.
                sync.failure = (!intent.is_guess()).then(|| (sync.load_generation, e.clone()));
                let hits = slot.load_word() & slot::HITS_MASK;
                slot.word.store(ABSENT | hits, Ordering::Release);
                Err(e)
            }
        };
        drop(sync);
        slot.changed.notify_all();
        if intent.is_guess() {
            // Its budget is now an idle tensor's (or free): a demand waiting
            // for it can take it.
            self.wake_budget_waiters();
        }
        result
    }

    pub(super) fn reserve_and_read(
        &self,
        id: u32,
        info: &TensorInfo,
        intent: Intent,
    ) -> Result<(Residence, *mut u8, u64)> {
        if info.size == 0 {
            // Nothing to hold or read: no buffer, no charge, an aligned
            // pointer that is never dereferenced.
            self.reserve(id, 0, intent, false)?;
            return Ok((Residence::Empty, self.alignment as *mut u8, 0));
        }
        let placement = self.placement_of(id);
        // A placed slice of a mapped source is handed out where the mapping
        // has it, whatever its alignment.
        let placed_in_mapping = matches!(placement, Some((Placement::Mapped, _)));
        let mapped = self.source.mapped().filter(|m| {
            placed_in_mapping || (m.as_ptr() as usize + info.offset as usize) % self.alignment == 0
        });
        let Some(map) = mapped else {
            let landing = self.prepare_read(id, info, intent)?;
            let started = Instant::now();
            // The check that the file is still the one indexed is part of
            // the read.
            let got = self
                .source
                .verify_unchanged()
                .and_then(|()| self.read_landing(&landing));
            self.read_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            return self.finish_read(id, info, landing, got);
        };
        self.reserve(id, info.size, intent, false)?;
        if intent == Intent::Acquire {
            // This demand holds its budget: the readers may look ahead now.
            self.poke_readers();
        }
        let started = Instant::now();
        if let Err(e) = self.source.verify_unchanged() {
            self.uncharge(id);
            return Err(e);
        }
        self.source.advise_willneed(info.offset, info.size);
        let bytes = &map[info.offset as usize..(info.offset + info.size) as usize];
        touch_pages(bytes);
        self.read_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.bytes_read.fetch_add(info.size, Ordering::Relaxed);
        Ok((Residence::Mapped, bytes.as_ptr() as *mut u8, info.size))
    }

    /// Reserves the budget of a miss of `id` (a tensor of the file or a
    /// placed slice, never a mapped one) and the memory its read lands in.
    /// The landing must go to [`Inner::finish_read`], read or not.
    /// Where a read of `info` lands in the file: from its start rounded
    /// down to the `O_DIRECT` block, for the length of its buffer.
    pub(super) fn landing_range(&self, info: &TensorInfo) -> (u64, usize) {
        let block = self.source.direct_alignment().unwrap_or(1) as u64;
        let len = source::buffer_len_for(self.source.as_ref(), info.offset, info.size);
        (info.offset - info.offset % block, len)
    }

    pub(super) fn prepare_read(&self, id: u32, info: &TensorInfo, intent: Intent) -> Result<Landing> {
        let block = self.source.direct_alignment().unwrap_or(1);
        let (file_start, len) = self.landing_range(info);
        let head = (info.offset - file_start) as usize;
        if let Some((Placement::Window(window), offset)) = self.placement_of(id) {
            self.reserve(id, window.charge_for(offset, info.size), intent, false)?;
            if intent == Intent::Acquire {
                self.poke_readers();
            }
            window.occupy(offset, info.size);
            // SAFETY: this thread owns the slice's load (its slot is
            // LOADING) and has occupied its pages; the buffer covers the
            // slice's own blocks, where a neighbour's bytes are the file's.
            let ptr = unsafe { window.read_buffer(offset, block as u64, len) }.as_mut_ptr();
            debug_assert_eq!(
                ptr.wrapping_add(head) as *const u8,
                window.base().wrapping_add(offset as usize)
            );
            return Ok(Landing {
                memory: LandingMemory::Placed(window, offset),
                file_start,
                ptr,
                len,
                head,
            });
        }
        let charge = TensorBuffer::footprint(len) as u64;
        let reused = self.reserve(id, charge, intent, true)?;
        if intent == Intent::Acquire {
            // This demand holds its budget: the readers may look ahead now.
            self.poke_readers();
        }
        let charge = self.slot_unchecked(id).charge.load(Ordering::Relaxed);
        let align = self.alignment.max(block);
        let buffer = match reused {
            // A pooled mapping of another size: resized here, with no lock
            // held; where the OS refuses, a new one.
            Some(mut b) if b.len() as u64 != charge => {
                if b.resize(charge as usize) {
                    Ok(b)
                } else {
                    drop(b);
                    TensorBuffer::allocate(charge as usize, align)
                }
            }
            Some(b) => Ok(b),
            None => TensorBuffer::allocate(charge as usize, align),
        };
        let mut buffer = match buffer {
            Ok(b) => b,
            Err(e) => {
                self.uncharge(id);
                return Err(e);
            }
        };
        let ptr = buffer.as_mut_slice().as_mut_ptr();
        Ok(Landing {
            memory: LandingMemory::Owned(buffer),
            file_start,
            ptr,
            len,
            head,
        })
    }

    /// Reads a landing here and now; returns the bytes read.
    fn read_landing(&self, landing: &Landing) -> Result<usize> {
        // SAFETY: the landing's memory is this load's own for `len` bytes
        // (see `Landing`).
        let buf = unsafe { std::slice::from_raw_parts_mut(landing.ptr, landing.len) };
        if self.source.direct_alignment().is_some() {
            self.source.read_direct_at(landing.file_start, buf)
        } else {
            self.source.read_exact_at(landing.file_start, buf)?;
            Ok(buf.len())
        }
    }

    /// Ends the read of a landing: `got` bytes from its start, or the
    /// read's failure. On success the tensor's data and residence; on
    /// failure (a short read included) the budget and pages go back.
    pub(super) fn finish_read(
        &self,
        id: u32,
        info: &TensorInfo,
        landing: Landing,
        got: Result<usize>,
    ) -> Result<(Residence, *mut u8, u64)> {
        let Landing {
            memory,
            file_start,
            ptr,
            len,
            head,
        } = landing;
        let size = info.size as usize;
        let got = got.and_then(|got| {
            if got < head + size {
                Err(Error::Io {
                    context: format!(
                        "read of {len} bytes at offset {file_start} from {}",
                        self.source.describe()
                    ),
                    errno: 0,
                    message: format!("short read: {got} bytes"),
                })
            } else {
                Ok(got)
            }
        });
        let charge = self.slot_unchecked(id).charge.load(Ordering::Relaxed);
        match (got, memory) {
            (Ok(_), LandingMemory::Placed(window, offset)) => {
                self.bytes_read.fetch_add(info.size, Ordering::Relaxed);
                // SAFETY: head + size <= len, inside the landing.
                let data = unsafe { ptr.add(head) };
                Ok((Residence::Placed(window, offset, info.size), data, charge))
            }
            (Ok(_), LandingMemory::Owned(buffer)) => {
                self.bytes_read.fetch_add(info.size, Ordering::Relaxed);
                let data = if head % self.alignment == 0 {
                    // SAFETY: as above.
                    unsafe { ptr.add(head) }
                } else {
                    // SAFETY: source and destination lie in the buffer this
                    // load owns; `copy` allows them to overlap.
                    unsafe { std::ptr::copy(ptr.add(head), ptr, size) };
                    ptr
                };
                Ok((Residence::Owned(buffer), data, charge))
            }
            (Err(e), memory) => {
                if let LandingMemory::Placed(window, offset) = memory {
                    window.vacate(offset, info.size);
                }
                self.uncharge(id);
                Err(annotate(e, &self.label(id)))
            }
        }
    }

    pub(super) fn pin(&self, id: u32) -> Result<()> {
        self.check_open()?;
        self.slot(id)?;
        self.load(id, Intent::Pin)
    }

    pub(super) fn unpin(&self, id: u32) -> Result<()> {
        self.check_open()?;
        let slot = self.slot(id)?;
        let mut w = slot.load_word();
        loop {
            if w & PINNED == 0 {
                return Err(Error::InvalidArgument(format!(
                    "{} is not pinned",
                    self.label(id)
                )));
            }
            match slot
                .word
                .compare_exchange(w, w & !PINNED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(cur) => w = cur,
            }
        }
        self.wake_budget_waiters();
        Ok(())
    }
}

/// Where the read of a miss lands: budget reserved, memory in hand.
pub(super) struct Landing {
    memory: LandingMemory,
    /// The file offset of the first byte read (block-aligned for O_DIRECT).
    pub(super) file_start: u64,
    /// The memory the read fills, `len` bytes, owned by the load (its slot
    /// is LOADING) until [`Inner::finish_read`].
    pub(super) ptr: *mut u8,
    pub(super) len: usize,
    /// Where the tensor's first byte lands, from `ptr`.
    head: usize,
}

enum LandingMemory {
    /// A buffer of the tensor's own.
    Owned(TensorBuffer),
    /// Its place in its parent's window, at this offset in the parent.
    Placed(Arc<Window>, u64),
}

/// Adds which tensor was being read to an I/O error.
fn annotate(e: Error, label: &str) -> Error {
    match e {
        Error::Io {
            context,
            errno,
            message,
        } => Error::Io {
            context: format!("{label}: {context}"),
            errno,
            message,
        },
        other => other,
    }
}

/// Faults in every page of a mapped range, so that a resident mapped tensor
/// is resident in fact and its later use does not stall on the disk.
fn touch_pages(bytes: &[u8]) {
    let mut sum = 0u8;
    for chunk in bytes.chunks(4096) {
        sum = sum.wrapping_add(chunk[0]);
    }
    std::hint::black_box(sum);
}
