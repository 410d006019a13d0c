//! The resident set: budget accounting, in-use counts, single-flight loads,
//! eviction, acquisitions.
//!
//! # Lock order
//! 1. `Inner::evict` (the eviction mutex: budget counter, victim choice)
//! 2. a slot's `sync` lock (load / evict transitions of that slot)
//! 3. `Inner::overflow_leases`
//!
//! A lock may be taken while holding one above it in this list, never one
//! below. The hit path takes no lock at all: one CAS on the slot's state
//! word (see [`slot`]).
//!
//! # Rules kept (and checked by [`Pager::check_invariants`])
//! - resident bytes (loading, idle, pinned, in use) never pass the budget;
//! - a slot in use or pinned is never evicted;
//! - one read per miss, however many threads miss the same tensor at once.

mod slot;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use slot::{
    in_use_of, state_of, Residence, Slot, ABSENT, EVICTING, IN_USE_MAX, IN_USE_ONE, LOADING, PINNED,
    PREFETCHED, RESIDENT,
};

use crate::error::{Error, Result};
use crate::index::{self, TensorIndex, TensorInfo};
use crate::policy::{self, EvictionPolicy, PolicyKind};
use crate::prefetch::{self, Prefetcher};
use crate::segvec::SegVec;
use crate::source::{self, Allocator, ByteSource, FileSource, IoMode, MmapSource, TensorBuffer};

/// How a pager is set up.
#[derive(Debug, Clone)]
pub struct PagerOptions {
    /// Budget for resident tensor bytes; 0 means unlimited.
    pub budget_bytes: u64,
    /// Eviction policy.
    pub policy: PolicyKind,
    /// How file sources are read.
    pub io_mode: IoMode,
    /// Background reader threads; 0 means no background reads. Default 2.
    pub prefetch_threads: u32,
    /// Alignment of every tensor's data pointer (a power of two).
    pub alignment: usize,
    /// How long a miss waits for in-use budget to be released (0 fails at
    /// once), and, when not 0, the longest it waits for another thread's read
    /// of the same tensor before [`Error::Timeout`].
    pub wait_ms: u32,
    /// Allocator for tensor buffers; `None` uses the built-in one.
    pub allocator: Option<Arc<Allocator>>,
}

impl Default for PagerOptions {
    fn default() -> Self {
        PagerOptions {
            budget_bytes: 0,
            policy: PolicyKind::Auto,
            io_mode: IoMode::Pread,
            prefetch_threads: 2,
            alignment: 64,
            wait_ms: 0,
            allocator: None,
        }
    }
}

impl PagerOptions {
    /// Checks the options: alignment a power of two up to 1 MiB, at most 64 threads.
    pub fn validate(&self) -> Result<()> {
        if self.alignment == 0 || !self.alignment.is_power_of_two() || self.alignment > (1 << 20) {
            return Err(Error::InvalidArgument(format!(
                "alignment {} is not a power of two between 1 and 1 MiB",
                self.alignment
            )));
        }
        if self.prefetch_threads > 64 {
            return Err(Error::InvalidArgument(format!(
                "prefetch_threads {} is more than 64",
                self.prefetch_threads
            )));
        }
        Ok(())
    }
}

/// Counters and gauges of a pager, as in `pager_stats_t`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Acquisitions served from memory without waiting for a read.
    pub hits: u64,
    /// Acquisitions that had to read the tensor or wait for its read.
    pub misses: u64,
    /// Hits on a tensor brought in by a prefetch and not used before.
    pub prefetch_hits: u64,
    /// Tensors evicted to make room.
    pub evictions: u64,
    /// Bytes read from the source for tensors.
    pub bytes_read: u64,
    /// Bytes held against the budget now: tensors being read, idle, pinned
    /// or in use (their buffers, which O_DIRECT rounds to pages and reuse
    /// may leave up to a quarter larger), and freed buffers kept for reuse.
    pub resident_bytes: u64,
    /// Tensors resident now.
    pub resident_count: u64,
    /// Highest `resident_bytes` seen.
    pub peak_resident_bytes: u64,
    /// Sizes of the pinned tensors.
    pub pinned_bytes: u64,
    /// Sizes of the tensors with acquisitions outstanding.
    pub in_use_bytes: u64,
    /// The budget (0 = unlimited).
    pub budget_bytes: u64,
    /// Nanoseconds spent reading tensors.
    pub read_ns: u64,
    /// Nanoseconds callers spent waiting for another thread's read of the
    /// same tensor or for budget (their own reads are `read_ns`).
    pub wait_ns: u64,
}

/// What a load is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Acquire,
    Pin,
    Prefetch,
}

#[derive(Debug, Default)]
struct EvictState {
    /// Bytes charged to tensors (loading or resident).
    resident_bytes: u64,
    /// Freed tensor buffers kept for reuse, so that a steady sweep does not
    /// page-fault fresh memory; they count against the budget too.
    pool: Vec<TensorBuffer>,
    pooled_bytes: u64,
    /// Highest `resident_bytes + pooled_bytes` seen.
    peak_resident_bytes: u64,
    evictions: u64,
}

impl EvictState {
    fn held(&self) -> u64 {
        self.resident_bytes + self.pooled_bytes
    }

    /// Takes a pooled buffer for a tensor of `len` bytes and returns it with
    /// its new size, if the held bytes stay within `budget` (0: unlimited).
    /// A buffer of the same size (within a quarter) is taken as it is;
    /// otherwise a mapped buffer is shrunk or grown to `len`, which keeps
    /// its faulted-in pages: the smallest one that is large enough, else the
    /// largest.
    fn take_buffer(&mut self, len: u64, budget: u64) -> Option<TensorBuffer> {
        let fits = |b: &TensorBuffer| (b.len() as u64) >= len && (b.len() as u64) <= len + len / 4;
        if let Some(i) = self.pool.iter().position(fits) {
            let b = self.pool.swap_remove(i);
            self.pooled_bytes -= b.len() as u64;
            return Some(b);
        }
        let resizable = || self.pool.iter().enumerate().filter(|(_, b)| b.is_resizable());
        let i = resizable()
            .filter(|(_, b)| b.len() as u64 >= len)
            .min_by_key(|(_, b)| b.len())
            .or_else(|| resizable().max_by_key(|(_, b)| b.len()))
            .map(|(i, _)| i)?;
        let growth = len.saturating_sub(self.pool[i].len() as u64);
        if budget != 0 && self.held() + growth > budget {
            return None;
        }
        let mut b = self.pool.swap_remove(i);
        self.pooled_bytes -= b.len() as u64;
        if !b.resize(len as usize) {
            // The OS refused: the buffer goes back, the caller allocates.
            self.pooled_bytes += b.len() as u64;
            self.pool.push(b);
            return None;
        }
        Some(b)
    }

    /// Frees the oldest pooled buffer; false if the pool is empty.
    fn free_one(&mut self) -> bool {
        if self.pool.is_empty() {
            return false;
        }
        let b = self.pool.remove(0);
        self.pooled_bytes -= b.len() as u64;
        true
    }
}

pub(crate) struct Inner {
    index: TensorIndex,
    source: Box<dyn ByteSource>,
    /// One slot per tensor of the file, then one per slice.
    slots: SegVec<Slot>,
    /// Serialises appends to `slots` (slices).
    grow: Mutex<()>,
    policy: Box<dyn EvictionPolicy>,
    alignment: usize,
    wait_ms: u32,
    allocator: Option<Arc<Allocator>>,
    /// Budget in force; written under `evict`.
    budget: AtomicU64,
    evict: Mutex<EvictState>,
    budget_freed: Condvar,
    /// Threads waiting on `budget_freed` (demands and set_budget).
    budget_waiters: AtomicUsize,
    /// Demands (acquire, pin) that found no room: while any waits, no
    /// read-ahead takes budget.
    demands_waiting: AtomicUsize,
    /// Set by the first acquisition: read-ahead along the schedule starts
    /// only once the engine has started a pass.
    pass_started: AtomicBool,
    closed: AtomicBool,
    misses: AtomicU64,
    prefetch_hits: AtomicU64,
    bytes_read: AtomicU64,
    read_ns: AtomicU64,
    wait_ns: AtomicU64,
    /// Size of the largest tensor of the file.
    largest_tensor: u64,
    /// Random per pager, so a ticket of another pager is refused.
    ticket_salt: u64,
    overflow_leases: Mutex<HashMap<u64, u32>>,
    next_overflow: AtomicU64,
    /// The background readers' shared state, when there are readers.
    readers: Option<Arc<prefetch::Shared>>,
}

/// A pager: tensors of one source under one byte budget.
///
/// All methods take `&self` and are safe to call from many threads at once.
pub struct Pager {
    inner: Arc<Inner>,
    prefetcher: Mutex<Option<Prefetcher>>,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pager")
            .field("tensors", &self.inner.slots.len())
            .field("source", &self.inner.source.describe())
            .finish()
    }
}

/// An acquired tensor. Its bytes stay valid and resident until it is dropped.
#[derive(Debug)]
pub struct Acquisition<'a> {
    pager: &'a Pager,
    id: u32,
    data: *const u8,
    size: usize,
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

/// How far the read-ahead runs ahead of the engine when there is no budget
/// (at least two of the largest tensor).
const UNLIMITED_READ_AHEAD_WINDOW: u64 = 64 << 20;

/// How often a thread waiting for budget looks again even if nobody woke it.
const BUDGET_WAIT_POLL: Duration = Duration::from_millis(100);

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

fn random_salt() -> u64 {
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

impl Pager {
    /// Opens a GGUF file.
    pub fn open_gguf(path: impl AsRef<Path>, options: PagerOptions) -> Result<Pager> {
        let source = open_file_source(path.as_ref(), options.io_mode)?;
        let index = index::gguf::parse(source.as_ref())?;
        Self::with_source(source, index, options)
    }

    /// Opens a safetensors file.
    pub fn open_safetensors(path: impl AsRef<Path>, options: PagerOptions) -> Result<Pager> {
        let source = open_file_source(path.as_ref(), options.io_mode)?;
        let index = index::safetensors::parse(source.as_ref())?;
        Self::with_source(source, index, options)
    }

    /// Opens any file with an explicit (name, offset, size) table.
    pub fn open_table<S: AsRef<str>>(
        path: impl AsRef<Path>,
        table: &[(S, u64, u64)],
        options: PagerOptions,
    ) -> Result<Pager> {
        let source = open_file_source(path.as_ref(), options.io_mode)?;
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
        if index.source_size() > source.size() {
            return Err(Error::InvalidArgument(format!(
                "index was built for {} bytes but {} has {}",
                index.source_size(),
                source.describe(),
                source.size()
            )));
        }
        let n = index.len();
        let largest_tensor = index.tensors().iter().map(|t| t.size).max().unwrap_or(0);
        let inner = Arc::new(Inner {
            slots: new_slots(&index)?,
            grow: Mutex::new(()),
            policy: policy::build(options.policy, n),
            index,
            source,
            alignment: options.alignment,
            wait_ms: options.wait_ms,
            allocator: options.allocator.clone(),
            budget: AtomicU64::new(options.budget_bytes),
            evict: Mutex::new(EvictState::default()),
            budget_freed: Condvar::new(),
            budget_waiters: AtomicUsize::new(0),
            demands_waiting: AtomicUsize::new(0),
            pass_started: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            misses: AtomicU64::new(0),
            prefetch_hits: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            read_ns: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            largest_tensor,
            ticket_salt: random_salt(),
            overflow_leases: Mutex::new(HashMap::new()),
            next_overflow: AtomicU64::new(0),
            readers: (options.prefetch_threads > 0).then(|| Arc::new(prefetch::Shared::default())),
        });
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
                Arc::clone(&inner),
                Arc::clone(shared),
                options.prefetch_threads,
            )?),
            None => None,
        };
        Ok(Pager {
            inner,
            prefetcher: Mutex::new(prefetcher),
        })
    }

    /// The tensor table.
    pub fn index(&self) -> &TensorIndex {
        &self.inner.index
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.inner.slots.len()
    }

    /// The id of the tensor named `name`.
    pub fn find(&self, name: &str) -> Result<u32> {
        self.inner.check_open()?;
        self.inner.index.find(name).ok_or_else(|| Error::NotFound {
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
        let info = self.inner.info(id)?;
        let queued = self.inner.readers.as_ref().is_some_and(|r| r.enqueue(id));
        if !queued {
            self.inner.source.advise_willneed(info.offset, info.size);
        }
        Ok(())
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

    /// Reads `ids` ahead now, in order (the router's choice for the coming
    /// layers); as [`Pager::prefetch`] for each.
    pub fn hint(&self, ids: &[u32]) -> Result<()> {
        self.inner.check_open()?;
        for &id in ids {
            self.inner.info(id)?;
        }
        for &id in ids {
            self.prefetch(id)?;
        }
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
        self.inner.set_budget(budget_bytes)
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
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.close();
    }
}

fn new_slots(index: &TensorIndex) -> Result<SegVec<Slot>> {
    let slots = SegVec::new(Slot::new);
    slots
        .grow_to(index.len(), |i, slot| slot.set_info(index.tensors()[i].clone()))
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{} tensors is more than a pager holds", index.len()))
        })?;
    Ok(slots)
}

fn open_file_source(path: &Path, mode: IoMode) -> Result<Box<dyn ByteSource>> {
    Ok(match mode {
        IoMode::Pread => Box::new(FileSource::open(path)?),
        IoMode::Direct => Box::new(FileSource::open_direct(path)?),
        IoMode::Mmap => Box::new(MmapSource::open(path)?),
    })
}

impl Inner {
    fn add_slots(&self, parent: u32, infos: Vec<TensorInfo>) -> Result<u32> {
        let _g = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let first = self.slots.len();
        let n = first + infos.len();
        if n >= u32::MAX as usize {
            return Err(Error::InvalidArgument("too many slices".to_owned()));
        }
        self.policy.grow(n);
        for id in first..n {
            self.policy.set_parent(id as u32, parent);
        }
        let mut infos = infos.into_iter();
        self.slots
            .grow_to(n, |_, slot| {
                slot.set_info(infos.next().expect("one info per new slot"))
            })
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{n} tensors and slices is more than a pager holds"))
            })?;
        Ok(first as u32)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn info(&self, id: u32) -> Result<&TensorInfo> {
        Ok(self.slot(id)?.info())
    }

    #[inline]
    fn slot_unchecked(&self, id: u32) -> &Slot {
        self.slots.get(id as usize).expect("id checked by the caller")
    }

    fn slot(&self, id: u32) -> Result<&Slot> {
        self.slots.get(id as usize).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "tensor id {id} out of range (there are {} tensors)",
                self.slots.len()
            ))
        })
    }

    fn label(&self, id: u32) -> String {
        match self.slots.get(id as usize) {
            Some(s) => format!("tensor {id} '{}'", s.info().name),
            None => format!("tensor {id}"),
        }
    }

    fn lock_evict(&self) -> MutexGuard<'_, EvictState> {
        self.evict.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Acquires `id`; returns its data pointer and size.
    fn acquire(&self, id: u32) -> Result<(*const u8, u64)> {
        self.check_open()?;
        let slot = self.slot(id)?;
        if let Some(prev) = slot.try_acquire_resident(true) {
            if prev & PREFETCHED == 0 {
                self.policy.on_hit(id);
            } else {
                // The engine reached the read-ahead window: move it on.
                self.policy.on_access(id);
                self.prefetch_hits.fetch_add(1, Ordering::Relaxed);
                self.start_pass();
                self.poke_readers();
            }
            return Ok((slot.data.load(Ordering::Acquire), slot.info().size));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.policy.on_access(id);
        self.start_pass();
        // The readers are woken by the load once this demand holds its
        // budget (or waits for the very read it needs): woken earlier, they
        // would charge the next tensor before this one.
        self.load(id, Intent::Acquire)?;
        Ok((slot.data.load(Ordering::Acquire), slot.info().size))
    }

    fn release_slot(&self, id: u32) {
        let slot = self.slot_unchecked(id);
        let before = slot.release();
        debug_assert!(in_use_of(before) >= 1, "release of {id} with no acquisition");
        if in_use_of(before) == 1 && before & PINNED == 0 {
            self.wake_budget_waiters();
        }
    }

    /// Marks that the engine has started a pass (the first acquisition).
    fn start_pass(&self) {
        if !self.pass_started.load(Ordering::Relaxed) {
            self.pass_started.store(true, Ordering::Relaxed);
        }
    }

    fn wake_budget_waiters(&self) {
        // Pairs with the waiter's register-then-recheck: either it sees what
        // this thread changed, or this thread sees it registered.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.budget_waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock_evict();
            self.budget_freed.notify_all();
        }
    }

    fn acquire_ticket(&self, id: u32) -> Result<TicketedAcquisition> {
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

    fn release_ticket(&self, id: u32, ticket: u64) -> Result<()> {
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

    /// The miss path: make `id` resident for `intent`, reading it at most
    /// once however many threads ask at the same time.
    fn load(&self, id: u32, intent: Intent) -> Result<()> {
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
                        Intent::Acquire => match slot.try_acquire_resident(false) {
                            Some(prev) => {
                                if prev & PREFETCHED != 0 {
                                    self.prefetch_hits.fetch_add(1, Ordering::Relaxed);
                                }
                                true
                            }
                            None => false,
                        },
                        Intent::Pin => slot
                            .word
                            .compare_exchange(w, w | PINNED, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok(),
                        Intent::Prefetch => true,
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
                    if slot
                        .word
                        .compare_exchange(
                            w,
                            (w & !(PINNED | PREFETCHED))
                                | LOADING
                                | if intent == Intent::Prefetch { PREFETCHED } else { 0 },
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        break self.read_into_slot(id, intent);
                    }
                }
                _ => {
                    // LOADING or EVICTING: wait for the transition to end.
                    if intent == Intent::Prefetch {
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

    /// Owner of a LOADING slot: reserve budget, read, publish.
    fn read_into_slot(&self, id: u32, intent: Intent) -> Result<()> {
        let slot = self.slot_unchecked(id);
        let info = slot.info();
        let outcome = self.reserve_and_read(id, info, intent);
        let mut sync = slot.lock();
        sync.load_generation += 1;
        let result = match outcome {
            Ok((residence, data, charge)) => {
                sync.residence = Some(residence);
                sync.failure = None;
                slot.data.store(data, Ordering::Release);
                debug_assert_eq!(slot.charge.load(Ordering::Relaxed), charge);
                let mut word = RESIDENT;
                match intent {
                    Intent::Acquire => word += IN_USE_ONE,
                    Intent::Pin => word |= PINNED,
                    Intent::Prefetch => word |= PREFETCHED,
                }
                // Keep the hit counter bits of the word.
                let hits = slot.load_word() & slot::HITS_MASK;
                slot.word.store(word | hits, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // A read-ahead that did not fit is no verdict on the tensor:
                // whoever waited for it reads it on its own.
                sync.failure = (intent != Intent::Prefetch).then(|| (sync.load_generation, e.clone()));
                let hits = slot.load_word() & slot::HITS_MASK;
                slot.word.store(ABSENT | hits, Ordering::Release);
                Err(e)
            }
        };
        drop(sync);
        slot.changed.notify_all();
        if intent == Intent::Prefetch {
            // Its budget is now an idle tensor's (or free): a demand waiting
            // for it can take it.
            self.wake_budget_waiters();
        }
        result
    }

    fn reserve_and_read(
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
        let mapped = self
            .source
            .mapped()
            .filter(|m| (m.as_ptr() as usize + info.offset as usize) % self.alignment == 0);
        let charge = match mapped {
            Some(_) => info.size,
            None => source::buffer_len_for(self.source.as_ref(), info.offset, info.size) as u64,
        };
        let reused = self.reserve(id, charge, intent, mapped.is_none())?;
        if intent == Intent::Acquire {
            // This demand holds its budget: the readers may look ahead now.
            self.poke_readers();
        }
        let charge = self.slot_unchecked(id).charge.load(Ordering::Relaxed);
        let read = move || -> Result<(Residence, *mut u8)> {
            self.source.verify_unchanged()?;
            let started = Instant::now();
            let out = if let Some(map) = mapped {
                self.source.advise_willneed(info.offset, info.size);
                let bytes = &map[info.offset as usize..(info.offset + info.size) as usize];
                touch_pages(bytes);
                (Residence::Mapped, bytes.as_ptr() as *mut u8)
            } else {
                let align = self.alignment.max(self.source.direct_alignment().unwrap_or(1));
                let mut buffer = match reused {
                    Some(b) => b,
                    None => TensorBuffer::allocate(charge as usize, align, self.allocator.as_ref())?,
                };
                let data_offset = source::read_tensor(
                    self.source.as_ref(),
                    info.offset,
                    info.size,
                    self.alignment,
                    buffer.as_mut_slice(),
                )
                .map_err(|e| annotate(e, &self.label(id)))?;
                let data = buffer.as_mut_slice()[data_offset..].as_mut_ptr();
                (Residence::Owned(buffer), data)
            };
            self.read_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.bytes_read.fetch_add(info.size, Ordering::Relaxed);
            Ok(out)
        };
        match read() {
            Ok((residence, data)) => Ok((residence, data, charge)),
            Err(e) => {
                let mut g = self.lock_evict();
                g.resident_bytes -= charge;
                self.slot_unchecked(id).charge.store(0, Ordering::Relaxed);
                drop(g);
                self.wake_budget_waiters();
                Err(e)
            }
        }
    }

    /// Charges `charge` bytes for `id` to the budget, evicting idle tensors
    /// as the policy chooses. With `wants_buffer`, returns a pooled buffer to
    /// reuse when one fits (the slot is then charged its capacity).
    ///
    /// A demand (acquire, pin) that finds no room waits for read-aheads in
    /// flight, whatever `wait_ms` says: each gives its budget back the moment
    /// it ends (as an idle tensor to evict), and while a demand waits no
    /// read-ahead takes budget. Only when pinned, in-use and demand-loading
    /// tensors hold the room does it wait up to `wait_ms` for a release, or
    /// fail with [`Error::Budget`]. A read-ahead (`Intent::Prefetch`) never
    /// waits, never charges while a demand waits, and evicts only tensors
    /// needed later than the one it loads.
    fn reserve(
        &self,
        id: u32,
        charge: u64,
        intent: Intent,
        wants_buffer: bool,
    ) -> Result<Option<TensorBuffer>> {
        let mut g = self.lock_evict();
        let readahead = intent == Intent::Prefetch;
        let deadline = Instant::now() + Duration::from_millis(self.wait_ms as u64);
        let mut waited: Option<Instant> = None;
        let mut registered = false;
        let result = loop {
            if let Err(e) = self.check_open() {
                break Err(e);
            }
            let budget = self.budget.load(Ordering::Relaxed);
            if budget != 0 && charge > budget {
                break Err(Error::Budget(format!(
                    "{} needs {charge} bytes, more than the whole budget of {budget} bytes",
                    self.label(id)
                )));
            }
            if readahead && self.demands_waiting.load(Ordering::SeqCst) > 0 {
                break Err(Error::Budget(format!(
                    "read-ahead of {} yields to a waiting acquire",
                    self.label(id)
                )));
            }
            if wants_buffer {
                if let Some(buffer) = g.take_buffer(charge, budget) {
                    // Moves from the pool to the tensor: the total is unchanged.
                    break Ok((buffer.len() as u64, Some(buffer)));
                }
            }
            if budget == 0 || g.held() + charge <= budget {
                break Ok((charge, None));
            }
            if g.resident_bytes + charge > budget {
                if self.evict_one_for(&mut g, id, readahead.then_some(id)) {
                    continue;
                }
            } else if g.free_one() {
                continue;
            }
            if readahead {
                break Err(Error::Budget(self.budget_report(&g, id, charge, budget)));
            }
            // A read-ahead in flight is a guess holding a demand's room: wait
            // for it to end, bounded by its read, not by wait_ms.
            let readaheads_in_flight = self.readahead_bytes_in_flight() > 0;
            let now = Instant::now();
            if !readaheads_in_flight {
                if self.wait_ms == 0 {
                    break Err(Error::Budget(self.budget_report(&g, id, charge, budget)));
                }
                if now >= deadline {
                    break Err(Error::Timeout {
                        waited_ms: self.wait_ms as u64,
                        detail: self.budget_report(&g, id, charge, budget),
                    });
                }
            }
            if !registered {
                self.budget_waiters.fetch_add(1, Ordering::SeqCst);
                self.demands_waiting.fetch_add(1, Ordering::SeqCst);
                registered = true;
                // Re-check after registering: a release or a read-ahead that
                // ended just before did not see us waiting.
                continue;
            }
            waited.get_or_insert(now);
            // Wake-ups are the normal way out; the poll interval is a safety net.
            let mut limit = BUDGET_WAIT_POLL;
            if !readaheads_in_flight {
                limit = limit.min(deadline - now);
            }
            g = self
                .budget_freed
                .wait_timeout(g, limit)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        if registered {
            self.budget_waiters.fetch_sub(1, Ordering::SeqCst);
            self.demands_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(t) = waited {
            self.wait_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        let (charged, buffer) = result?;
        g.resident_bytes += charged;
        g.peak_resident_bytes = g.peak_resident_bytes.max(g.held());
        self.slot_unchecked(id).charge.store(charged, Ordering::Relaxed);
        Ok(buffer)
    }

    /// Bytes charged to read-aheads still being read. Called under the
    /// eviction mutex (charges change only there).
    fn readahead_bytes_in_flight(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| {
                let w = s.load_word();
                state_of(w) == LOADING && w & PREFETCHED != 0
            })
            .map(|s| s.charge.load(Ordering::Relaxed))
            .sum()
    }

    fn budget_report(&self, g: &EvictState, id: u32, charge: u64, budget: u64) -> String {
        let (mut pinned, mut in_use, mut loading) = (0u64, 0u64, 0u64);
        for s in self.slots.iter() {
            let w = s.load_word();
            let c = s.charge.load(Ordering::Relaxed);
            if w & PINNED != 0 {
                pinned += c;
            } else if in_use_of(w) > 0 {
                in_use += c;
            } else if state_of(w) == LOADING {
                loading += c;
            }
        }
        format!(
            "{} needs {charge} bytes; budget {budget} bytes has {} charged: {pinned} pinned, {in_use} in use, {loading} being read",
            self.label(id),
            g.resident_bytes
        )
    }

    /// Evicts the policy's victim among idle unpinned tensors other than
    /// `exclude`; with `incoming`, only one needed later than it. Returns
    /// whether something was evicted. Called with the eviction mutex held.
    fn evict_one_for(&self, g: &mut EvictState, exclude: u32, incoming: Option<u32>) -> bool {
        loop {
            let mut candidates = self.slots.iter().enumerate().filter_map(|(i, s)| {
                let w = s.load_word();
                let idle = state_of(w) == RESIDENT
                    && in_use_of(w) == 0
                    && w & PINNED == 0
                    && s.waiters.load(Ordering::SeqCst) == 0;
                (idle && i as u32 != exclude).then_some(i as u32)
            });
            let Some(victim) = self.policy.choose_victim(&mut candidates, incoming) else {
                return false;
            };
            // A victim acquired since the scan is skipped; choose again.
            if self.evict_one(g, victim) {
                return true;
            }
        }
    }

    /// Evicts idle tensors and frees pooled buffers until at most `target`
    /// bytes are held or nothing more can go.
    fn evict_down(&self, g: &mut EvictState, target: u64) {
        while g.held() > target {
            if !g.free_one() && !self.evict_one_for(g, u32::MAX, None) {
                return;
            }
        }
    }

    /// Evicts `id` if it is still idle; returns whether it did.
    fn evict_one(&self, g: &mut EvictState, id: u32) -> bool {
        let slot = self.slot_unchecked(id);
        let w = slot.load_word();
        if state_of(w) != RESIDENT || in_use_of(w) != 0 || w & PINNED != 0 {
            return false;
        }
        if slot
            .word
            .compare_exchange(
                w,
                (w & !PREFETCHED & !slot::STATE_MASK) | EVICTING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        let mut sync = slot.lock();
        let residence = sync.residence.take();
        slot.data.store(std::ptr::null_mut(), Ordering::Release);
        let charge = slot.charge.swap(0, Ordering::Relaxed);
        g.resident_bytes -= charge;
        g.evictions += 1;
        let w = slot.load_word();
        slot.word
            .store((w & !slot::STATE_MASK) | ABSENT, Ordering::Release);
        drop(sync);
        slot.changed.notify_all();
        match residence {
            Some(Residence::Mapped) => {
                let info = slot.info();
                self.source.advise_dontneed(info.offset, info.size);
            }
            Some(Residence::Owned(buffer)) => {
                // Kept for the next load of the same size; still charged.
                g.pooled_bytes += buffer.len() as u64;
                g.pool.push(buffer);
            }
            Some(Residence::Empty) | None => {}
        }
        true
    }

    fn pin(&self, id: u32) -> Result<()> {
        self.check_open()?;
        self.slot(id)?;
        self.load(id, Intent::Pin)
    }

    fn unpin(&self, id: u32) -> Result<()> {
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

    fn set_budget(&self, budget: u64) -> Result<()> {
        self.check_open()?;
        let mut g = self.lock_evict();
        if budget != 0 && g.held() > budget {
            self.evict_down(&mut g, budget);
            if g.held() > budget {
                return Err(Error::Budget(format!(
                    "cannot shrink the budget to {budget} bytes: {} bytes are pinned, in use or being read",
                    g.resident_bytes
                )));
            }
        }
        self.budget.store(budget, Ordering::Relaxed);
        self.budget_freed.notify_all();
        Ok(())
    }

    fn stats(&self) -> Stats {
        let g = self.lock_evict();
        let mut s = Stats {
            misses: self.misses.load(Ordering::Relaxed),
            prefetch_hits: self.prefetch_hits.load(Ordering::Relaxed),
            evictions: g.evictions,
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            resident_bytes: g.held(),
            peak_resident_bytes: g.peak_resident_bytes,
            budget_bytes: self.budget.load(Ordering::Relaxed),
            read_ns: self.read_ns.load(Ordering::Relaxed),
            wait_ns: self.wait_ns.load(Ordering::Relaxed),
            ..Stats::default()
        };
        for slot in self.slots.iter() {
            let w = slot.load_word();
            s.hits += slot.hits();
            if state_of(w) == RESIDENT {
                s.resident_count += 1;
                let size = slot.info().size;
                if w & PINNED != 0 {
                    s.pinned_bytes += size;
                }
                if in_use_of(w) > 0 {
                    s.in_use_bytes += size;
                }
            }
        }
        s
    }

    fn check_invariants(&self) -> std::result::Result<(), String> {
        let g = self.lock_evict();
        let budget = self.budget.load(Ordering::Relaxed);
        let mut charged = 0u64;
        for (i, slot) in self.slots.iter().enumerate() {
            let w = slot.load_word();
            let c = slot.charge.load(Ordering::Relaxed);
            charged += c;
            match state_of(w) {
                RESIDENT => {
                    if c == 0 && slot.info().size > 0 {
                        return Err(format!("tensor {i} resident with no charge"));
                    }
                    if slot.data.load(Ordering::Acquire).is_null() {
                        return Err(format!("tensor {i} resident with no data"));
                    }
                }
                ABSENT => {
                    if in_use_of(w) != 0 || w & PINNED != 0 {
                        return Err(format!("tensor {i} absent but in use or pinned (word {w:#x})"));
                    }
                    if c != 0 {
                        return Err(format!("tensor {i} absent but charged {c} bytes"));
                    }
                }
                _ => {}
            }
        }
        if charged != g.resident_bytes {
            return Err(format!(
                "slots are charged {charged} bytes, the counter says {}",
                g.resident_bytes
            ));
        }
        if g.pooled_bytes != g.pool.iter().map(|b| b.len() as u64).sum::<u64>() {
            return Err("pooled bytes do not add up".to_owned());
        }
        if budget != 0 && g.held() > budget {
            return Err(format!(
                "resident {} bytes past the budget of {budget}",
                g.resident_bytes
            ));
        }
        if g.peak_resident_bytes < g.held() {
            return Err("peak below current".to_owned());
        }
        Ok(())
    }

    fn poke_readers(&self) {
        if let Some(r) = &self.readers {
            r.poke();
        }
    }

    /// Background read of `id` (prefetch worker). Errors are dropped: a
    /// prefetch is a hint, the later acquire reports any failure itself.
    pub(crate) fn prefetch_now(&self, id: u32) {
        if self.slots.get(id as usize).is_some() && self.check_open().is_ok() {
            let _ = self.load(id, Intent::Prefetch);
        }
    }

    /// Where the schedule is; changes whenever the engine moves along it.
    pub(crate) fn schedule_position(&self) -> u64 {
        self.policy.position()
    }

    /// Bytes of tensors read (or being read) ahead and not used yet.
    fn unused_prefetched_bytes(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.load_word() & PREFETCHED != 0)
            .map(|s| s.charge.load(Ordering::Relaxed))
            .sum()
    }

    /// How many bytes the read-ahead may hold unused. Every byte it holds
    /// is a byte the kept part of the model cannot, and is read again each
    /// pass; so when the model does not fit, the window is a small share of
    /// what does not fit (at least one tensor, so that reads overlap
    /// compute), and unlimited when it does.
    fn read_ahead_window(&self) -> u64 {
        let budget = self.budget.load(Ordering::Relaxed);
        let model = self.index.total_bytes();
        if budget == 0 {
            // No budget is no licence to read the whole model: enough ahead
            // to overlap the next tensors' reads with compute.
            return UNLIMITED_READ_AHEAD_WINDOW.max(2 * self.largest_tensor);
        }
        if budget >= model {
            return u64::MAX;
        }
        // Room that is free now costs the kept part nothing.
        let free = budget.saturating_sub(self.lock_evict().held());
        ((model - budget) / 16).max(free)
    }

    /// Loads the tensors the schedule expects next, nearest first, until one
    /// does not fit without evicting something needed sooner, the read-ahead
    /// window is full, `max` are looked at, or the engine moves on.
    pub(crate) fn read_ahead(&self, max: usize) {
        if !self.pass_started.load(Ordering::Relaxed) {
            // Nobody has asked for anything yet: the engine may still be
            // about to set a budget, or never run a pass.
            return;
        }
        let start = self.policy.position();
        let mut upcoming = Vec::new();
        self.policy.upcoming(max, &mut upcoming);
        let window = self.read_ahead_window();
        for id in upcoming {
            if self.check_open().is_err() {
                return;
            }
            let Some(slot) = self.slots.get(id as usize) else {
                continue;
            };
            if state_of(slot.load_word()) != ABSENT {
                continue;
            }
            // Looked at afresh for each tensor: the other readers fill the
            // same window.
            let held = self.unused_prefetched_bytes();
            let size = slot.info().size;
            if held > 0 && held + size > window {
                return;
            }
            // The engine moved on: this list may name tensors it has already
            // passed. The worker plans again from the new position.
            if self.policy.position() != start {
                return;
            }
            if self.load(id, Intent::Prefetch).is_err() {
                return;
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
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
