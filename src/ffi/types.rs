//! The C API's types and constants: options, the allocator and source
//! callbacks, tensor descriptors and infos, acquisitions, stats, and the
//! `PAGER_POLICY_*` / `PAGER_IO_*` values. Plain data, laid out for C.

use std::ffi::{c_char, c_int, c_void};

use crate::pager::Stats;

/// Schedule-aware when the pass order is known or learned (default).
pub const PAGER_POLICY_AUTO: u32 = 0;
/// Least recently used.
pub const PAGER_POLICY_LRU: u32 = 1;
/// Furthest next use in the schedule given to `pager_set_schedule`.
pub const PAGER_POLICY_SCHEDULE: u32 = 2;
/// Positioned reads. With a budget set, each read drops what it
/// brought into the page cache, so that the budget holds inside a
/// container's memory limit (the page cache is charged to the process).
pub const PAGER_IO_PREAD: u32 = 0;
/// Positioned reads with O_DIRECT, bypassing the page cache (falls back to
/// plain reads where the file system refuses O_DIRECT).
pub const PAGER_IO_DIRECT: u32 = 1;
/// A read-only mapping; aligned tensors are handed out in place. The kernel,
/// not the budget, decides which pages of the mapping stay in memory.
pub const PAGER_IO_MMAP: u32 = 2;
/// The default io mode, decided at open. With a budget smaller than the
/// file: if the file fits in the memory the limit leaves beside the budget
/// (memory cgroup limit less use, else MemAvailable, less 64 MiB), pread
/// through the page cache, which serves every pass after the first; if not,
/// O_DIRECT where the file system allows it (else pread dropping the page
/// cache behind each read), so that no page cache presses the limit. With
/// no budget, or one the file fits in, pread. `pager_describe` says which.
pub const PAGER_IO_AUTO: u32 = 3;
/// `prefetch_threads` value that chooses the readers from the machine at
/// open: half the cores (1 to 8) where reads copy from the page cache (the
/// copy, not the device, bounds them), 1 where they go to the device
/// (O_DIRECT, pread dropping behind).
pub const PAGER_READERS_AUTO: u32 = u32::MAX;
/// `budget_bytes` value (and `pager_set_budget` argument) that derives the
/// budget from the process's memory limit: the memory cgroup's limit (v2
/// `memory.max`, v1 `memory.limit_in_bytes`) less what it already uses, or
/// else `MemAvailable`, less a 64 MiB headroom.
pub const PAGER_BUDGET_AUTO: u64 = u64::MAX;

/// Memory for tensor buffers, e.g. pinned host memory from a GPU runtime.
/// The pager asks it for a few large chunks (a quarter of the budget each,
/// or 256 MiB without a budget) and places tensors inside them, so that a
/// steady sweep calls it a handful of times, not once per miss; chunks count
/// against the budget and are freed when wholly unused and their bytes are
/// needed, or when the pager is freed. Both callbacks may be called from any
/// thread, concurrently, for as long as a pager opened with them lives.
/// They are called with no lock of the pager held: they may take as long
/// as they need (`cudaHostAlloc` takes about 0.5 ms per MiB) without
/// stalling acquires, and may call the pager's read-only functions
/// (`pager_get_stats`, `pager_tensor_info`, `pager_find`); they must not
/// acquire, release, pin or evict through the pager that calls them, nor
/// close it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pager_allocator_t {
    /// Passed back to both callbacks.
    pub user_data: *mut c_void,
    /// Returns `size` bytes aligned to `alignment`, or NULL.
    pub alloc:
        Option<unsafe extern "C" fn(user_data: *mut c_void, size: usize, alignment: usize) -> *mut c_void>,
    /// Frees a block returned by `alloc`, with its size.
    pub free: Option<unsafe extern "C" fn(user_data: *mut c_void, ptr: *mut c_void, size: usize)>,
}

/// Options of a pager. Always start from `pager_options_default`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pager_options_t {
    /// Set by `pager_options_default` to `sizeof(pager_options_t)`: later
    /// versions append fields and read only what the caller's struct holds.
    pub struct_size: u32,
    /// Budget for resident tensor bytes; 0 = unlimited; `PAGER_BUDGET_AUTO`
    /// = derived from the memory limit at open.
    pub budget_bytes: u64,
    /// `PAGER_POLICY_AUTO` (default), `PAGER_POLICY_LRU`, `PAGER_POLICY_SCHEDULE`.
    pub policy: u32,
    /// `PAGER_IO_AUTO` (default), `PAGER_IO_PREAD`, `PAGER_IO_DIRECT`, `PAGER_IO_MMAP`.
    pub io_mode: u32,
    /// Background reader threads that read ahead along the schedule and
    /// serve `pager_prefetch`; 0 = no background reads; `PAGER_READERS_AUTO`
    /// = chosen from the machine at open. Default 1.
    pub prefetch_threads: u32,
    /// Alignment of every tensor's data pointer, a power of two; default 64.
    pub alignment: u32,
    /// How long an acquire waits for in-use budget to be released (0 = fail
    /// at once), and, when not 0, the longest it waits for another thread's
    /// read of the same tensor (a stalled source) before PAGER_ERR_TIMEOUT.
    pub wait_ms: u32,
    /// Allocator for tensor buffers; NULL = built-in aligned allocator. The
    /// struct is copied at open.
    pub allocator: *const pager_allocator_t,
    /// Nonzero: the budget follows the memory limit. A light thread looks
    /// every 10 ms at what the process may still allocate (the memory
    /// cgroup's limit less its working set, else MemAvailable), shrinks the
    /// budget when other allocations need the room (leaving 32 MiB free),
    /// and grows it back when they are freed, up to `budget_bytes` (or the
    /// model's size with `PAGER_BUDGET_AUTO`; `pager_set_budget` sets a new
    /// ceiling). Needs a budget. Default 0.
    pub follow_memory: u32,
    /// Called from that thread after each change it makes, with the old and
    /// the new budget; may be NULL. Must not call back into the pager.
    pub on_budget_change:
        Option<unsafe extern "C" fn(user_data: *mut c_void, old_budget: u64, new_budget: u64)>,
    /// Passed back to `on_budget_change`.
    pub budget_change_user_data: *mut c_void,
}

/// One entry of a tensor table for sources that are not GGUF / safetensors.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pager_tensor_desc_t {
    /// NUL-terminated UTF-8 name; copied at open.
    pub name: *const c_char,
    /// Absolute offset in the source, bytes.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A byte source the engine implements (network, object store, archive).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pager_source_t {
    /// Passed back to the callbacks.
    pub user_data: *mut c_void,
    /// Total size in bytes.
    pub size: u64,
    /// Fills `dst` with `len` bytes at `offset`; returns 0, or an errno.
    /// Called from any thread, concurrently.
    pub read_at: Option<
        unsafe extern "C" fn(user_data: *mut c_void, offset: u64, dst: *mut c_void, len: usize) -> c_int,
    >,
    /// Called once when the pager is freed; may be NULL.
    pub destroy: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
}

/// What a tensor is and where it lives.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pager_tensor_info_t {
    /// NUL-terminated name; valid while the pager lives.
    pub name: *const c_char,
    /// Absolute offset in the source, bytes.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// GGUF tensor type id, or UINT32_MAX if none.
    pub ggml_type: u32,
    /// Number of dimensions (at most 4; extra outer safetensors dimensions
    /// are folded into `dims[3]`).
    pub n_dims: u32,
    /// Dimensions, as stored in the file (innermost first for GGUF); unused ones are 1.
    pub dims: [u64; 4],
}

/// An acquisition. Plain data: `data`/`size` are read directly. While it is
/// held, the tensor stays resident and its bytes count against the budget.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pager_tensor_t {
    /// The tensor's bytes, aligned to `opts.alignment`; valid until this
    /// acquisition is released (even after `pager_close`).
    pub data: *const c_void,
    /// Size in bytes.
    pub size: u64,
    /// Tensor id.
    pub id: u32,
    /// Opaque; identifies this one acquisition.
    pub ticket: u64,
}

/// Counters and gauges of a pager. Versioned like the options: prepare it
/// with `pager_stats_init` (or set `struct_size = sizeof(pager_stats_t)`)
/// before `pager_get_stats`, which writes only the fields that size holds,
/// so that later versions can append fields.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct pager_stats_t {
    /// Set by the caller to `sizeof(pager_stats_t)`; left as it is.
    pub struct_size: u32,
    /// Acquisitions served from memory without waiting for a read.
    pub hits: u64,
    /// Acquisitions that had to read the tensor or wait for its read.
    pub misses: u64,
    /// Hits on a tensor brought in by a prefetch and not used before (a
    /// subset of `hits`: `hits - prefetch_hits` are reuse hits).
    pub prefetch_hits: u64,
    /// Tensors evicted to make room.
    pub evictions: u64,
    /// Bytes read from the source for tensors.
    pub bytes_read: u64,
    /// Bytes held against the budget now: buffers of tensors being read,
    /// idle, pinned or in use (whole pages from 4 KiB on; reuse may leave
    /// one up to a quarter larger than its tensor), freed buffers kept for
    /// reuse, the staging memory (`staging_bytes`) and the page tables'
    /// share (`page_table_bytes`). Never more than the
    /// budget.
    pub resident_bytes: u64,
    /// Tensors resident now.
    pub resident_count: u64,
    /// Highest `resident_bytes` seen.
    pub peak_resident_bytes: u64,
    /// Sizes of the pinned tensors.
    pub pinned_bytes: u64,
    /// Sizes of the tensors with acquisitions outstanding.
    pub in_use_bytes: u64,
    /// The budget; 0 = unlimited.
    pub budget_bytes: u64,
    /// Nanoseconds spent reading tensors.
    pub read_ns: u64,
    /// Nanoseconds callers spent waiting for another thread's read of the
    /// same tensor or for budget (their own reads are in `read_ns`).
    pub wait_ns: u64,
    /// The part of `resident_bytes` that is staging memory: 2 MiB huge
    /// pages that O_DIRECT reads land in before they are copied into the
    /// tensors' buffers (a read into 4 KiB pages runs at a third of the
    /// speed on virtual disks). Charged where the file is read with
    /// O_DIRECT under a budget of at least 40 MiB that holds the largest
    /// tensor with 10 MiB to spare: one page per 40 MiB of budget, up to
    /// four (8 MiB, from a budget of 160 MiB), as far as that spare room
    /// holds them and, past the first, as far as they are at most 1/64 of
    /// what a pass streams (the model less the budget); 0 otherwise, or
    /// with `LAYERPAGER_STAGING=off`.
    pub staging_bytes: u64,
    /// The part of `resident_bytes` kept for the kernel's page tables of the
    /// tensor buffers of 2 MiB or more (each 2 MiB of such a buffer takes a
    /// 4 KiB table, its partial last 2 MiB one more): those of all the
    /// model's such tensors, at most 1/256 of the budget, in whole 4 KiB
    /// pages; 0 where every tensor is smaller.
    pub page_table_bytes: u64,
}

impl From<Stats> for pager_stats_t {
    fn from(s: Stats) -> Self {
        pager_stats_t {
            struct_size: std::mem::size_of::<pager_stats_t>() as u32,
            hits: s.hits,
            misses: s.misses,
            prefetch_hits: s.prefetch_hits,
            evictions: s.evictions,
            bytes_read: s.bytes_read,
            resident_bytes: s.resident_bytes,
            resident_count: s.resident_count,
            peak_resident_bytes: s.peak_resident_bytes,
            pinned_bytes: s.pinned_bytes,
            in_use_bytes: s.in_use_bytes,
            budget_bytes: s.budget_bytes,
            read_ns: s.read_ns,
            wait_ns: s.wait_ns,
            staging_bytes: s.staging_bytes,
            page_table_bytes: s.page_table_bytes,
        }
    }
}
