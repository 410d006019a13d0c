//! Acquisitions: the hit path, the miss path's entry, release, and the
//! tickets that let a C caller release by value (a released, stale, forged
//! or foreign ticket is refused).

use std::sync::atomic::Ordering;

use super::facade::Pager;
use super::loads::Intent;
use super::slot::{in_use_of, Slot, PINNED, PREFETCHED};
use super::Inner;
use crate::error::{Error, Result};

/// An acquired tensor. Its bytes stay valid and resident until it is dropped.
#[derive(Debug)]
pub struct Acquisition<'a> {
    pub(super) pager: &'a Pager,
    pub(super) id: u32,
    pub(super) data: *const u8,
    pub(super) size: usize,
}

// SAFETY: the bytes are immutable while acquired and the pager is Sync.
unsafe impl Send for Acquisition<'_> {}

// SAFETY: as above.
unsafe impl Sync for Acquisition<'_> {}

impl Acquisition<'_> {
    /// The tensor's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The tensor's bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.size == 0 {
            return &[];
        }
        // SAFETY: while this acquisition holds an in-use reference the slot
        // cannot be evicted, so `data` stays valid for `size` bytes and
        // nobody writes to it.
        unsafe { std::slice::from_raw_parts(self.data, self.size) }
    }

    /// Start of the tensor's bytes, aligned to the pager's alignment.
    pub fn as_ptr(&self) -> *const u8 {
        self.data
    }
}

impl Drop for Acquisition<'_> {
    fn drop(&mut self) {
        self.pager.inner.release_slot(self.id);
    }
}

/// An acquisition identified by a ticket, for callers that cannot hold a
/// Rust guard (the C API). Release it with [`Pager::release_ticket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketedAcquisition {
    /// Start of the tensor's bytes.
    pub data: *const u8,
    /// Size in bytes.
    pub size: u64,
    /// Tensor id.
    pub id: u32,
    /// Identifies this one acquisition.
    pub ticket: u64,
}

const TICKET_CELL_BITS: u32 = 3;

const TICKET_OVERFLOW_CELL: u64 = 7;

const TICKET_GEN_BITS: u32 = 45;

const TICKET_GEN_MASK: u64 = (1 << TICKET_GEN_BITS) - 1;

const TICKET_SALT_SHIFT: u32 = TICKET_CELL_BITS + TICKET_GEN_BITS;

/// Mixes a tensor id into the generation field of its tickets, so that a
/// ticket of one tensor released under another's id is refused: the
/// multiplier is odd, so distinct ids give distinct values.
fn ticket_mix(id: u32) -> u64 {
    (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) & TICKET_GEN_MASK
}

pub(super) fn random_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    // 16 bits, never 0, so a zeroed (released) struct never looks valid.
    (h.finish() % 0xffff) + 1
}

impl Inner {
    /// Acquires `id`; returns its data pointer and size.
    pub(super) fn acquire(&self, id: u32) -> Result<(*const u8, u64)> {
        self.check_open()?;
        let slot = self.slot(id)?;
        if let Some(prev) = self.take_resident(slot, true) {
            if prev & PREFETCHED == 0 {
                self.policy.on_hit(id);
            } else {
                // The engine reached the read-ahead window: move it on.
                self.policy.on_access(id);
                self.prefetch_hits.fetch_add(1, Ordering::Relaxed);
                self.start_pass();
                self.poke_readers();
            }
            return Ok((slot.data.load(Ordering::Acquire), slot.size()));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.policy.on_access(id);
        self.start_pass();
        // The readers are woken by the load once this demand holds its
        // budget (or waits for the very read it needs): woken earlier, they
        // would charge the next tensor before this one.
        self.load(id, Intent::Acquire)?;
        Ok((slot.data.load(Ordering::Acquire), slot.size()))
    }

    /// The hit path's compare-and-swap ([`Slot::try_acquire_resident`]); a
    /// tensor read ahead and used now leaves the read-ahead's count.
    #[inline]
    pub(super) fn take_resident(&self, slot: &Slot, count_hit: bool) -> Option<u64> {
        let prev = slot.try_acquire_resident(count_hit)?;
        if prev & PREFETCHED != 0 {
            self.prefetched_bytes
                .fetch_sub(slot.charge.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        Some(prev)
    }

    pub(super) fn release_slot(&self, id: u32) {
        let slot = self.slot_unchecked(id);
        let before = slot.release();
        debug_assert!(in_use_of(before) >= 1, "release of {id} with no acquisition");
        if in_use_of(before) == 1 && before & PINNED == 0 {
            self.wake_budget_waiters();
            if self.readahead_waits_for_release.load(Ordering::Relaxed)
                && self.readahead_waits_for_release.swap(false, Ordering::Relaxed)
            {
                self.retry_readers();
            }
        }
    }

    /// Marks that the engine has started a pass (the first acquisition).
    pub(super) fn start_pass(&self) {
        if !self.pass_started.load(Ordering::Relaxed) {
            self.pass_started.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn acquire_ticket(&self, id: u32) -> Result<TicketedAcquisition> {
        let (data, size) = self.acquire(id)?;
        let slot = self.slot_unchecked(id);
        let salt = self.ticket_salt << TICKET_SALT_SHIFT;
        for (cell_index, cell) in slot.leases.iter().enumerate() {
            let v = cell.load(Ordering::Relaxed);
            if v & 1 == 0
                && cell
                    .compare_exchange(v, v | 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                let generation = (v >> 1) & TICKET_GEN_MASK;
                let ticket = salt | (generation ^ ticket_mix(id)) << TICKET_CELL_BITS | cell_index as u64;
                return Ok(TicketedAcquisition {
                    data,
                    size,
                    id,
                    ticket,
                });
            }
        }
        let serial = self.next_overflow.fetch_add(1, Ordering::Relaxed) & TICKET_GEN_MASK;
        let ticket = salt | serial << TICKET_CELL_BITS | TICKET_OVERFLOW_CELL;
        self.overflow_leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ticket, id);
        Ok(TicketedAcquisition {
            data,
            size,
            id,
            ticket,
        })
    }

    pub(super) fn release_ticket(&self, id: u32, ticket: u64) -> Result<()> {
        let invalid = |why: &str| {
            Error::InvalidHandle(format!("release of tensor {id} with ticket {ticket:#x}: {why}"))
        };
        let slot = self
            .slots
            .get(id as usize)
            .ok_or_else(|| invalid("no tensor has that id"))?;
        if ticket >> TICKET_SALT_SHIFT != self.ticket_salt {
            return Err(invalid(
                "not a ticket of this pager (released, zeroed, forged or foreign)",
            ));
        }
        let cell_index = ticket & ((1 << TICKET_CELL_BITS) - 1);
        let generation = ((ticket >> TICKET_CELL_BITS) & TICKET_GEN_MASK) ^ ticket_mix(id);
        if cell_index == TICKET_OVERFLOW_CELL {
            let mut leases = self.overflow_leases.lock().unwrap_or_else(|e| e.into_inner());
            match leases.get(&ticket) {
                Some(&owner) if owner == id => {
                    leases.remove(&ticket);
                }
                _ => return Err(invalid("already released, or a stale copy")),
            }
        } else {
            let cell = slot
                .leases
                .get(cell_index as usize)
                .ok_or_else(|| invalid("forged ticket"))?;
            let held = generation << 1 | 1;
            let next = ((generation + 1) & TICKET_GEN_MASK) << 1;
            if cell
                .compare_exchange(held, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return Err(invalid("already released, or a stale copy"));
            }
        }
        self.release_slot(id);
        Ok(())
    }
}
