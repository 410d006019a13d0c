//! [`Pager`]: the public face of the resident set. Opening a file, the
//! calls an engine makes, slices and schedules; the work is done by the
//! files beside this one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};

use super::acquisitions::{random_salt, Acquisition, TicketedAcquisition};
use super::budget::{page_tables_of, EvictState};
use super::follow::MemoryFollower;
use super::options::{PagerOptions, Stats};
use super::slot::{in_use_of, state_of, Slot, ABSENT};
use super::window::Window;
use super::{Inner, Placement};
use crate::error::{Error, Result};
use crate::index::{self, TensorIndex, TensorInfo};
use crate::policy;
use crate::prefetch::{self, Prefetcher};
use crate::segvec::SegVec;
use crate::source::{Arena, ByteSource, FileSource, IoMode, MmapSource};

/// A pager: tensors of one source under one byte budget.
///
/// All methods take `&self` and are safe to call from many threads at once.
pub struct Pager {
    pub(super) inner: Arc<Inner>,
    prefetcher: Mutex<Option<Prefetcher>>,
    follower: Mutex<Option<MemoryFollower>>,
    /// Background readers started at open.
    readers: u32,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pager")
            .field("tensors", &self.inner.slots.len())
            .field("source", &self.inner.source.describe())
            .finish()
    }
}

impl Pager {
    /// Opens a GGUF file.
    pub fn open_gguf(path: impl AsRef<Path>, options: PagerOptions) -> Result<Pager> {
        let source = open_file_source(path.as_ref(), options.io_mode, options.budget_bytes)?;
        let index = index::gguf::parse(source.as_ref())?;
        Self::with_source(source, index, options)
    }

    /// Opens a safetensors file.
    pub fn open_safetensors(path: impl AsRef<Path>, options: PagerOptions) -> Result<Pager> {
        let source = open_file_source(path.as_ref(), options.io_mode, options.budget_bytes)?;
        let index = index::safetensors::parse(source.as_ref())?;
        Self::with_source(source, index, options)
    }

    /// Opens any file with an explicit (name, offset, size) table.
    pub fn open_table<S: AsRef<str>>(
        path: impl AsRef<Path>,
        table: &[(S, u64, u64)],
        options: PagerOptions,
    ) -> Result<Pager> {
        let source = open_file_source(path.as_ref(), options.io_mode, options.budget_bytes)?;
        let index = TensorIndex::from_table(table, source.size())?;
        Self::with_source(source, index, options)
    }

    /// A pager over any source and an index validated against it.
    pub fn with_source(
        source: Box<dyn ByteSource>,
        index: TensorIndex,
        options: PagerOptions,
    ) -> Result<Pager> {
        options.validate()?;
        let mut options = options;
        let auto = options.budget_bytes == crate::memlimit::BUDGET_AUTO;
        if auto {
            options.budget_bytes = crate::memlimit::auto_budget()?;
        }
        if index.source_size() > source.size() {
            return Err(Error::InvalidArgument(format!(
                "index was built for {} bytes but {} has {}",
                index.source_size(),
                source.describe(),
                source.size()
            )));
        }
        // A budget holds inside a kernel memory limit only if reads leave no
        // page cache behind that the budget does not count.
        source.set_drop_behind(options.budget_bytes != 0);
        let n = index.len();
        let largest_tensor = index.largest_tensor();
        let page_tables_most = index.tensors().iter().map(|t| page_tables_of(t.size)).sum();
        // An engine's allocator (pinned host memory, slow to allocate) is
        // called for a few large chunks, not once per miss.
        let arena = options.allocator.as_ref().map(|a| {
            let align = options.alignment.max(source.direct_alignment().unwrap_or(1));
            Arena::new(Arc::clone(a), align)
        });
        let readers = match options.prefetch_threads {
            super::options::READERS_AUTO if source.copies_from_page_cache() => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                (cores / 2).clamp(1, 8)
            }
            super::options::READERS_AUTO => 1,
            n => n,
        };
        let inner = Arc::new(Inner {
            slots: new_slots(&index)?,
            slice_infos: SegVec::new(OnceLock::new),
            slice_names: Mutex::new(HashMap::new()),
            slice_parents: SegVec::new(OnceLock::new),
            placements: RwLock::new(HashMap::new()),
            grow: Mutex::new(()),
            policy: policy::build(options.policy, n),
            index,
            source,
            alignment: options.alignment,
            wait_ms: options.wait_ms,
            budget: AtomicU64::new(options.budget_bytes),
            evict: Mutex::new(EvictState {
                charged: crate::policy::ResidentSet::new(n as u32),
                streamed: crate::policy::ResidentSet::new(n as u32),
                arena: arena.clone(),
                largest_tensor,
                page_tables_most,
                ..EvictState::default()
            }),
            budget_freed: Condvar::new(),
            budget_waiters: AtomicUsize::new(0),
            demands_waiting: AtomicUsize::new(0),
            pass_started: AtomicBool::new(false),
            readahead_waits_for_release: AtomicBool::new(false),
            schedule_reader: Mutex::new(()),
            closed: AtomicBool::new(false),
            misses: AtomicU64::new(0),
            prefetch_hits: AtomicU64::new(0),
            prefetched_bytes: AtomicU64::new(0),
            readahead_in_flight: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            read_ns: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            ticket_salt: random_salt(),
            overflow_leases: Mutex::new(HashMap::new()),
            next_overflow: AtomicU64::new(0),
            readers: (readers > 0).then(|| Arc::new(prefetch::Shared::default())),
        });
        let sizes: Vec<u64> = inner.index.tensors().iter().map(|t| t.size).collect();
        inner.policy.set_sizes(0, &sizes);
        {
            let mut g = inner.lock_evict();
            inner.set_aside(&mut g, options.budget_bytes);
            inner
                .policy
                .set_budget(inner.tensor_budget(&g, options.budget_bytes));
            drop(g);
        }
        if inner
            .index
            .tensors()
            .iter()
            .any(|t| index::block_of(&t.name).is_some())
        {
            inner.policy.guess_schedule(&inner.index.forward_order());
        }
        let prefetcher = match &inner.readers {
            Some(shared) => Some(Prefetcher::start(
                Arc::clone(&inner) as Arc<dyn prefetch::ReadAheadTarget>,
                Arc::clone(shared),
                readers,
            )?),
            None => None,
        };
        let follower = if options.follow_memory {
            // With auto, the budget may grow to the whole model.
            let ceiling = if auto {
                inner.index.total_bytes()
            } else {
                options.budget_bytes
            };
            Some(MemoryFollower::start(
                Arc::clone(&inner),
                ceiling,
                options.on_budget_change.clone(),
            )?)
        } else {
            None
        };
        Ok(Pager {
            inner,
            prefetcher: Mutex::new(prefetcher),
            follower: Mutex::new(follower),
            readers,
        })
    }

    /// The tensor table.
    pub fn index(&self) -> &TensorIndex {
        &self.inner.index
    }

    /// Number of tensors: the file's, then the slices made since (ids
    /// `0..tensor_count()`; [`Pager::index`] holds the file's alone).
    pub fn tensor_count(&self) -> usize {
        self.inner.slots.len()
    }

    /// The id of the tensor or slice named `name` (a slice is named after
    /// its parent: `blk.0.ffn_up_exps.weight#3` for an expert,
    /// `name[start..end]` for [`Pager::add_slice`]).
    pub fn find(&self, name: &str) -> Result<u32> {
        self.inner.check_open()?;
        self.inner.find(name).ok_or_else(|| Error::NotFound {
            name: name.to_owned(),
        })
    }

    /// The tensor `id`'s description.
    pub fn info(&self, id: u32) -> Result<&TensorInfo> {
        self.inner.check_open()?;
        self.inner.info(id)
    }

    /// Acquires tensor `id`: reads it if it is not resident, and keeps it
    /// resident until the returned guard is dropped.
    pub fn acquire(&self, id: u32) -> Result<Acquisition<'_>> {
        let (data, size) = self.inner.acquire(id)?;
        Ok(Acquisition {
            pager: self,
            id,
            data,
            size: size as usize,
        })
    }

    /// Acquires a tensor by name.
    pub fn acquire_by_name(&self, name: &str) -> Result<Acquisition<'_>> {
        let id = self.find(name)?;
        self.acquire(id)
    }

    /// Copies bytes `offset..offset + dst.len()` of tensor `id` into `dst`,
    /// without making the tensor resident: from memory if it is resident,
    /// else straight from the source (counted in `bytes_read`). For sparse
    /// uses of a large tensor, such as the few rows of an embedding a token
    /// needs. A range past the tensor's end is [`Error::OutOfBounds`].
    pub fn read(&self, id: u32, offset: u64, dst: &mut [u8]) -> Result<()> {
        self.inner.read_range(id, offset, dst)
    }

    /// Acquires tensor `id` for a caller that releases by ticket.
    pub fn acquire_ticket(&self, id: u32) -> Result<TicketedAcquisition> {
        self.inner.acquire_ticket(id)
    }

    /// Releases an acquisition made by [`Pager::acquire_ticket`]. A ticket
    /// already released, a stale copy, or a forged one is
    /// [`Error::InvalidHandle`] and changes nothing.
    pub fn release_ticket(&self, id: u32, ticket: u64) -> Result<()> {
        self.inner.release_ticket(id, ticket)
    }

    /// Loads tensor `id` now and keeps it resident until [`Pager::unpin`].
    /// Pinning a pinned tensor changes nothing.
    pub fn pin(&self, id: u32) -> Result<()> {
        self.inner.pin(id)
    }

    /// Lets tensor `id` be evicted again. Unpinning a tensor that is not
    /// pinned is [`Error::InvalidArgument`].
    pub fn unpin(&self, id: u32) -> Result<()> {
        self.inner.unpin(id)
    }

    /// Asks for tensor `id` to be read ahead of use. Never blocks: with
    /// background readers it queues the read; without, it asks the OS to
    /// start reading the range into the page cache.
    pub fn prefetch(&self, id: u32) -> Result<()> {
        self.inner.check_open()?;
        self.inner.info(id)?;
        self.prefetch_all(&[id]);
        Ok(())
    }

    /// [`Pager::prefetch`] for valid `ids`, the readers woken once.
    fn prefetch_all(&self, ids: &[u32]) {
        // Resident or being read already: nothing to ask of anyone.
        let absent = ids
            .iter()
            .copied()
            .filter(|&id| state_of(self.inner.slot_unchecked(id).load_word()) == ABSENT);
        let queued = self
            .inner
            .readers
            .as_ref()
            .is_some_and(|r| r.enqueue(absent.clone()));
        if !queued {
            for id in absent {
                let info = self.inner.info_unchecked(id);
                self.inner.source.advise_willneed(info.offset, info.size);
            }
        }
    }

    /// Makes bytes `offset..offset+size` of tensor `parent` a pageable unit
    /// of its own and returns its id (ids of slices follow the file's
    /// tensors). The slice is read, charged and evicted on its own; the
    /// parent, if acquired, is read whole and charged separately.
    pub fn add_slice(&self, parent: u32, offset: u64, size: u64) -> Result<u32> {
        self.inner.check_open()?;
        let p = self.inner.info(parent)?.clone();
        let end = offset.checked_add(size).filter(|&e| e <= p.size);
        if end.is_none() {
            return Err(Error::OutOfBounds {
                what: format!("slice of tensor {parent} '{}'", p.name),
                offset,
                size,
                source_size: p.size,
            });
        }
        let info = TensorInfo {
            name: format!("{}[{offset}..{}]", p.name, offset + size),
            offset: p.offset + offset,
            size,
            ggml_type: p.ggml_type,
            dims: vec![size],
            dtype: p.dtype.clone(),
        };
        self.inner.add_slots(parent, vec![info])
    }

    /// Splits a merged expert tensor (experts stacked on the outer
    /// dimension) into `n_experts` equal slices; returns the first one's id,
    /// expert `e` being `first + e`.
    pub fn split_experts(&self, parent: u32, n_experts: u32) -> Result<u32> {
        self.inner.check_open()?;
        let p = self.inner.info(parent)?.clone();
        if n_experts == 0 || p.size % n_experts as u64 != 0 {
            return Err(Error::InvalidArgument(format!(
                "tensor {parent} '{}' of {} bytes does not split into {n_experts} equal experts",
                p.name, p.size
            )));
        }
        let each = p.size / n_experts as u64;
        let mut dims = p.dims.clone();
        if let Some(outer) = dims.last_mut() {
            if *outer == n_experts as u64 {
                *outer = 1;
            }
        }
        let infos = (0..n_experts as u64)
            .map(|e| TensorInfo {
                name: format!("{}#{e}", p.name),
                offset: p.offset + e * each,
                size: each,
                ggml_type: p.ggml_type,
                dims: dims.clone(),
                dtype: p.dtype.clone(),
            })
            .collect();
        self.inner.add_slots(parent, infos)
    }

    /// Places the slices of `parent` (experts from [`Pager::split_experts`],
    /// or [`Pager::add_slice`]s) at their offsets in one address range and
    /// returns where the parent's byte 0 sits in it: an acquired slice at
    /// offset `o` of the parent is then at `base + o`, so that an engine
    /// computing with the parent's layout finds every resident slice in
    /// place, with no copy. Only the bytes of resident slices are there.
    ///
    /// The range is reserved with the file's page phase (`base % 4096` is
    /// the parent's file offset modulo 4096, so `O_DIRECT` reads land in
    /// place) and memory is committed only where a slice is resident; each
    /// slice is charged the whole pages it touches. With the mmap io mode
    /// the range is the mapping itself. A placed slice's data pointer has
    /// the file's alignment, not the pager's `alignment` option, and its
    /// memory is the pager's own, not an engine allocator's. Call it
    /// before any slice of `parent` is acquired; calling it again returns
    /// the same base.
    pub fn place_slices(&self, parent: u32) -> Result<*const u8> {
        self.inner.check_open()?;
        let p = self.inner.info(parent)?.clone();
        let files = self.inner.index.len();
        if parent as usize >= files {
            return Err(Error::InvalidArgument(format!(
                "tensor {parent} is a slice; only a tensor of the file can place its slices"
            )));
        }
        let mapped_base = |map: &[u8]| map[p.offset as usize..].as_ptr();
        let mut placements = self.inner.placements.write().unwrap_or_else(|e| e.into_inner());
        if let Some(placement) = placements.get(&parent) {
            return Ok(match placement {
                Placement::Window(w) => w.base(),
                Placement::Mapped => mapped_base(self.inner.source.mapped().expect("mapped source")),
            });
        }
        let loaded = (files..self.inner.slots.len()).any(|id| {
            self.inner.slice_parents.get(id - files).and_then(OnceLock::get) == Some(&parent)
                && state_of(self.inner.slot_unchecked(id as u32).load_word()) != ABSENT
        });
        if loaded {
            return Err(Error::InvalidArgument(format!(
                "slices of tensor {parent} '{}' are already resident: place them before the first acquire",
                p.name
            )));
        }
        let (placement, base) = match self.inner.source.mapped() {
            Some(map) => (Placement::Mapped, mapped_base(map)),
            None => {
                let w = Arc::new(Window::reserve(p.offset, p.size)?);
                let base = w.base();
                (Placement::Window(w), base)
            }
        };
        placements.insert(parent, placement);
        Ok(base)
    }

    /// The router's choice for the coming layers: `ids` that are not
    /// resident are read ahead now, in order, as [`Pager::prefetch`] does
    /// (the readers woken once); a hinted expert is kept until it is used
    /// or its block has passed.
    pub fn hint(&self, ids: &[u32]) -> Result<()> {
        self.inner.check_open()?;
        for &id in ids {
            self.inner.info(id)?;
        }
        self.inner.policy.on_hint(ids);
        self.prefetch_all(ids);
        Ok(())
    }

    /// Declares the order in which a pass touches tensors.
    pub fn set_schedule(&self, ids: &[u32]) -> Result<()> {
        self.inner.check_open()?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.inner.slots.len()) {
            return Err(Error::InvalidArgument(format!(
                "schedule names tensor id {bad} but there are {} tensors",
                self.inner.slots.len()
            )));
        }
        self.inner.policy.set_schedule(ids);
        Ok(())
    }

    /// Changes the budget; a smaller budget evicts down to it now. Fails with
    /// [`Error::Budget`] (keeping the old budget) when pinned, in-use and
    /// loading tensors alone exceed the new one.
    pub fn set_budget(&self, budget_bytes: u64) -> Result<()> {
        self.inner.set_budget(budget_bytes)?;
        // Following the memory limit: the engine's budget is the ceiling.
        if let Some(f) = self.lock_follower().as_ref() {
            f.set_ceiling(if budget_bytes == crate::memlimit::BUDGET_AUTO {
                self.inner.index.total_bytes()
            } else {
                self.inner.budget.load(Ordering::Relaxed)
            });
        }
        Ok(())
    }

    /// One line for logs: the source, the io mode in effect and what it
    /// leaves in the page cache, the budget (and whether it follows the
    /// memory limit), the policy.
    pub fn describe(&self) -> String {
        let budget = self.inner.budget.load(Ordering::Relaxed);
        format!(
            "{}: {} tensors, io {}, budget {}{}, {} reader{}, policy {}",
            self.inner.source.describe(),
            self.inner.slots.len(),
            self.inner.source.io_description(),
            match budget {
                0 => "unlimited".to_owned(),
                b => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
            },
            if self.lock_follower().is_some() {
                " (follows the memory limit)"
            } else {
                ""
            },
            self.readers,
            if self.readers == 1 { "" } else { "s" },
            self.inner.policy.describe()
        )
    }

    /// The pager's counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Number of acquisitions outstanding.
    pub fn outstanding(&self) -> u64 {
        self.inner.slots.iter().map(|s| in_use_of(s.load_word())).sum()
    }

    /// Refuses every later call except releases, wakes waiters, and stops
    /// the background readers. Acquisitions outstanding stay valid.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        {
            let _g = self.inner.lock_evict();
            self.inner.budget_freed.notify_all();
        }
        if let Some(mut p) = self.lock_prefetcher().take() {
            p.stop();
        }
        if let Some(mut f) = self.lock_follower().take() {
            f.stop();
        }
    }

    /// Whether [`Pager::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Checks every accounting rule; returns what is broken. Meant for tests,
    /// which call it after every step, and for debug builds.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.inner.check_invariants()
    }

    fn lock_prefetcher(&self) -> MutexGuard<'_, Option<Prefetcher>> {
        self.prefetcher.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_follower(&self) -> MutexGuard<'_, Option<MemoryFollower>> {
        self.follower.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.close();
    }
}

fn new_slots(index: &TensorIndex) -> Result<SegVec<Slot>> {
    let slots = SegVec::new(Slot::new);
    slots
        .grow_to(index.len(), |i, slot| slot.set_size(index.tensors()[i].size))
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{} tensors is more than a pager holds", index.len()))
        })?;
    Ok(slots)
}

/// Opens `path` as `mode` reads it; `budget` decides what [`IoMode::Auto`]
/// is (see there).
fn open_file_source(path: &Path, mode: IoMode, budget: u64) -> Result<Box<dyn ByteSource>> {
    let len = std::fs::metadata(path).map_or(u64::MAX, |m| m.len());
    // The file and the budget together fit in what the memory limit leaves,
    // with the headroom `budget = auto` keeps: the page cache presses nothing.
    let fits_beside = || {
        crate::memlimit::room().is_ok_and(|(room, _)| {
            len.saturating_add(budget)
                .saturating_add(crate::memlimit::AUTO_HEADROOM)
                <= room
        })
    };
    Ok(match mode {
        // The file fits the budget: read once. (O_DIRECT's page-rounded
        // buffers would make a budget of the model's size too small.)
        IoMode::Auto if budget == 0 || len <= budget => Box::new(FileSource::open(path)?),
        IoMode::Auto if fits_beside() => Box::new(FileSource::open_keeping_cache(path)?),
        IoMode::Auto => Box::new(FileSource::open_direct(path)?),
        IoMode::Pread => Box::new(FileSource::open(path)?),
        IoMode::Direct => Box::new(FileSource::open_direct(path)?),
        IoMode::Mmap => Box::new(MmapSource::open(path)?),
    })
}
