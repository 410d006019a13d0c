//! The C ABI: handles, statuses, the last error, the panic boundary.
//!
//! This module only translates: it checks pointers, converts C strings and
//! arrays, calls the Rust core, and maps its `Error` to a status. No policy,
//! no I/O and no accounting live here.
//!
//! Conventions of every function (also stated in the header):
//! - a NULL pointer where one is required is `PAGER_ERR_INVALID_ARGUMENT`;
//! - out-values are written only on success; on failure an out-pointer
//!   `*out` is set to NULL and an out-struct is zeroed;
//! - the thread's `pager_last_error_message()` says what went wrong;
//! - every function is safe to call from several threads on one `pager_t`.

#![allow(non_camel_case_types)]

mod boundary;
mod handle;

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

pub use handle::pager_t;

use crate::error::{pager_status_t, Error, Result};
use crate::index::TensorIndex;
use crate::pager::{Pager, PagerOptions, Stats};
use crate::policy::PolicyKind;
use crate::source::{Allocator, CallbackSource, IoMode};
use boundary::{c_slice, c_str, non_null, non_null_mut, run, run_value};
use handle::Entered;

/// Schedule-aware when the pass order is known or learned (default).
pub const PAGER_POLICY_AUTO: u32 = 0;
/// Least recently used.
pub const PAGER_POLICY_LRU: u32 = 1;
/// Furthest next use in the schedule given to `pager_set_schedule`.
pub const PAGER_POLICY_SCHEDULE: u32 = 2;
/// Positioned reads through the page cache (default).
pub const PAGER_IO_PREAD: u32 = 0;
/// Positioned reads with O_DIRECT, bypassing the page cache (falls back to
/// plain reads where the file system refuses O_DIRECT).
pub const PAGER_IO_DIRECT: u32 = 1;
/// A read-only mapping; aligned tensors are handed out in place.
pub const PAGER_IO_MMAP: u32 = 2;

/// Memory for tensor buffers, e.g. pinned host memory from a GPU runtime.
/// Both callbacks may be called from any thread, concurrently, for as long
/// as a pager opened with them lives.
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
    /// Budget for resident tensor bytes; 0 = unlimited.
    pub budget_bytes: u64,
    /// `PAGER_POLICY_AUTO` (default), `PAGER_POLICY_LRU`, `PAGER_POLICY_SCHEDULE`.
    pub policy: u32,
    /// `PAGER_IO_PREAD` (default), `PAGER_IO_DIRECT`, `PAGER_IO_MMAP`.
    pub io_mode: u32,
    /// Background reader threads that read ahead along the schedule and
    /// serve `pager_prefetch`; 0 = no background reads. Default 2.
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

/// Counters and gauges of a pager.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct pager_stats_t {
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
    /// Bytes held against the budget now: buffers of tensors being read,
    /// idle, pinned or in use (O_DIRECT rounds them to pages; reuse may leave
    /// one up to a quarter larger than its tensor), and freed buffers kept
    /// for reuse. Never more than the budget.
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
}

impl From<Stats> for pager_stats_t {
    fn from(s: Stats) -> Self {
        pager_stats_t {
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
        }
    }
}

static VERSION_C: &[u8] = concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes();

/// A static description of a status; never NULL. Takes a plain integer so
/// any value is safe; unknown values give "unknown status".
/// Thread-safe.
#[no_mangle]
pub extern "C" fn pager_status_string(status: i32) -> *const c_char {
    pager_status_t::from_code(status)
        .map_or(c"unknown status", pager_status_t::description)
        .as_ptr()
}

/// The detail of the last failure on this thread (the same words as the
/// Rust error's `Display`); "" if nothing failed yet. Valid until the next
/// failing call on this thread. Never NULL.
#[no_mangle]
pub extern "C" fn pager_last_error_message() -> *const c_char {
    boundary::last_error_ptr()
}

/// The library version, "MAJOR.MINOR.PATCH"; static, never NULL.
#[no_mangle]
pub extern "C" fn pager_version() -> *const c_char {
    VERSION_C.as_ptr() as *const c_char
}

/// Fills `*opts` with the defaults: unlimited budget, `PAGER_POLICY_AUTO`,
/// `PAGER_IO_PREAD`, 2 background readers, alignment 64, no waiting,
/// built-in allocator, and `struct_size = sizeof(pager_options_t)`. NULL is
/// ignored.
///
/// # Safety
/// `opts` is NULL or points to writable memory for a `pager_options_t`.
#[no_mangle]
pub unsafe extern "C" fn pager_options_default(opts: *mut pager_options_t) {
    let _ = run(|| {
        let opts = non_null_mut(opts, "opts")?;
        // SAFETY: non-NULL; the caller provides a whole pager_options_t.
        unsafe { opts.write(default_c_options()) };
        Ok(())
    });
}

fn default_c_options() -> pager_options_t {
    let d = PagerOptions::default();
    pager_options_t {
        struct_size: std::mem::size_of::<pager_options_t>() as u32,
        budget_bytes: d.budget_bytes,
        policy: PAGER_POLICY_AUTO,
        io_mode: PAGER_IO_PREAD,
        prefetch_threads: d.prefetch_threads,
        alignment: d.alignment as u32,
        wait_ms: d.wait_ms,
        allocator: std::ptr::null(),
    }
}

/// Reads the caller's options, only as many bytes as its `struct_size` says.
///
/// # Safety
/// `opts` is NULL or points to at least `struct_size` readable bytes.
unsafe fn read_options(opts: *const pager_options_t) -> Result<PagerOptions> {
    let mut c = default_c_options();
    if !opts.is_null() {
        // SAFETY: struct_size is the first field of every version of the struct.
        let size = unsafe { std::ptr::addr_of!((*opts).struct_size).read_unaligned() } as usize;
        if size < std::mem::size_of::<u32>() * 2 {
            return Err(Error::InvalidArgument(format!(
                "opts->struct_size is {size}: initialise options with pager_options_default"
            )));
        }
        let n = size.min(std::mem::size_of::<pager_options_t>());
        // SAFETY: the caller's struct holds `size` bytes; we copy at most that
        // many into our own (larger or equal) struct of plain data.
        unsafe {
            std::ptr::copy_nonoverlapping(opts as *const u8, &mut c as *mut pager_options_t as *mut u8, n);
        }
    }
    let policy = PolicyKind::from_c(c.policy).ok_or_else(|| {
        Error::InvalidArgument(format!("opts->policy {} is not a PAGER_POLICY_*", c.policy))
    })?;
    let io_mode = IoMode::from_c(c.io_mode)
        .ok_or_else(|| Error::InvalidArgument(format!("opts->io_mode {} is not a PAGER_IO_*", c.io_mode)))?;
    let allocator = if c.allocator.is_null() {
        None
    } else {
        // SAFETY: non-NULL; the caller promises a valid pager_allocator_t.
        let a = unsafe { *c.allocator };
        match (a.alloc, a.free) {
            (Some(alloc), Some(free)) => Some(Arc::new(Allocator::new(a.user_data, alloc, free))),
            _ => {
                return Err(Error::InvalidArgument(
                    "opts->allocator needs both alloc and free".to_owned(),
                ))
            }
        }
    };
    let options = PagerOptions {
        budget_bytes: c.budget_bytes,
        policy,
        io_mode,
        prefetch_threads: c.prefetch_threads,
        alignment: c.alignment as usize,
        wait_ms: c.wait_ms,
        allocator,
    };
    options.validate()?;
    Ok(options)
}

/// Shared tail of the open functions: `*out` is the new pager, or NULL.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn open_with(out: *mut *mut pager_t, open: impl FnOnce() -> Result<Pager>) -> pager_status_t {
    run(|| {
        let out = non_null_mut(out, "out")?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        let pager = open()?;
        // SAFETY: as above.
        unsafe { out.write(pager_t::create(pager)) };
        Ok(())
    })
}

/// Opens a GGUF file (v2 or v3). On success `*out` is a new pager, which the
/// caller closes with `pager_close`; on failure `*out` is NULL.
/// `opts` may be NULL for the defaults.
///
/// Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT` (NULL path/out, bad
/// option, non-UTF-8 path), `PAGER_ERR_IO`, `PAGER_ERR_FORMAT`,
/// `PAGER_ERR_OUT_OF_BOUNDS`, `PAGER_ERR_PANIC`. Thread-safe.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `opts` is NULL or a
/// `pager_options_t` (at least `struct_size` bytes); `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pager_open_gguf(
    path: *const c_char,
    opts: *const pager_options_t,
    out: *mut *mut pager_t,
) -> pager_status_t {
    // SAFETY: the caller's pointers are as documented.
    unsafe {
        open_with(out, || {
            let path = c_str(path, "path")?;
            let options = read_options(opts)?;
            Pager::open_gguf(path, options)
        })
    }
}

/// Opens a safetensors file. Ownership, statuses and thread safety as
/// `pager_open_gguf`.
///
/// # Safety
/// As `pager_open_gguf`.
#[no_mangle]
pub unsafe extern "C" fn pager_open_safetensors(
    path: *const c_char,
    opts: *const pager_options_t,
    out: *mut *mut pager_t,
) -> pager_status_t {
    // SAFETY: the caller's pointers are as documented.
    unsafe {
        open_with(out, || {
            let path = c_str(path, "path")?;
            let options = read_options(opts)?;
            Pager::open_safetensors(path, options)
        })
    }
}

/// Copies a C tensor table.
///
/// # Safety
/// `descs` is NULL or `n` readable descriptors with valid names.
unsafe fn read_table(descs: *const pager_tensor_desc_t, n: usize) -> Result<Vec<(String, u64, u64)>> {
    // SAFETY: as the caller promises.
    let descs = unsafe { c_slice(descs, n, "descs")? };
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            // SAFETY: the caller promises a NUL-terminated name per entry.
            let name = unsafe { c_str(d.name, &format!("descs[{i}].name"))? };
            Ok((name.to_owned(), d.offset, d.size))
        })
        .collect()
}

/// Opens any file with an explicit table of `n` tensors (name, offset,
/// size); tensors get ids 0..n-1 in table order. The table is copied.
/// Statuses as `pager_open_gguf` (a bad table is `PAGER_ERR_FORMAT` or
/// `PAGER_ERR_OUT_OF_BOUNDS`).
///
/// # Safety
/// As `pager_open_gguf`; `descs` is NULL (only with `n == 0`) or `n` entries.
#[no_mangle]
pub unsafe extern "C" fn pager_open_table(
    path: *const c_char,
    descs: *const pager_tensor_desc_t,
    n: usize,
    opts: *const pager_options_t,
    out: *mut *mut pager_t,
) -> pager_status_t {
    // SAFETY: the caller's pointers are as documented.
    unsafe {
        open_with(out, || {
            let path = c_str(path, "path")?;
            let table = read_table(descs, n)?;
            let options = read_options(opts)?;
            Pager::open_table(path, &table, options)
        })
    }
}

/// Opens a pager over the engine's own byte source and a table of `n`
/// tensors. On success the pager owns the source and calls
/// `src->destroy(src->user_data)` once when it is freed; on failure the
/// source is left to the caller (destroy is not called). `src` is copied.
/// Statuses as `pager_open_table`.
///
/// # Safety
/// `src` is NULL or a valid `pager_source_t` whose callbacks follow its
/// contract; the rest as `pager_open_table`.
#[no_mangle]
pub unsafe extern "C" fn pager_open_source(
    src: *const pager_source_t,
    descs: *const pager_tensor_desc_t,
    n: usize,
    opts: *const pager_options_t,
    out: *mut *mut pager_t,
) -> pager_status_t {
    // SAFETY: the caller's pointers are as documented.
    unsafe {
        open_with(out, || {
            let src = *non_null(src, "src")?;
            let read_at = src
                .read_at
                .ok_or_else(|| Error::InvalidArgument("src->read_at is NULL".to_owned()))?;
            let table = read_table(descs, n)?;
            let options = read_options(opts)?;
            let index = TensorIndex::from_table(&table, src.size)?;
            let mut source = CallbackSource::new(src.user_data, src.size, read_at, src.destroy);
            let owned = source.ownership_flag();
            let pager = Pager::with_source(Box::new(source), index, options)?;
            owned.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(pager)
        })
    }
}

/// Closes the pager. Later calls on it return `PAGER_ERR_CLOSED`, except
/// `pager_release`, which stays valid for acquisitions still held: their
/// memory stays valid until each is released, and the pager is freed with
/// the last release (or now, if none is held). Closing twice, or NULL, does
/// nothing. Calls running in other threads at that moment end normally (an
/// acquire waiting for budget is woken with `PAGER_ERR_CLOSED`); whichever
/// call ends last frees the pager. Background readers are stopped before
/// `pager_close` returns.
///
/// # Safety
/// `p` is NULL or a pointer returned by a `pager_open_*` function.
#[no_mangle]
pub unsafe extern "C" fn pager_close(p: *mut pager_t) {
    let _ = run(|| pager_t::close(p));
}

/// Runs `f` on a registered call to the pager `p` inside the boundary; a
/// caught panic poisons the pager.
fn on_handle(p: *const pager_t, f: impl FnOnce(&Entered<'_>) -> Result<()>) -> pager_status_t {
    let mut entered: Option<Entered<'_>> = None;
    let status = run(|| f(entered.insert(pager_t::enter(p)?)));
    if status == pager_status_t::PAGER_ERR_PANIC {
        if let Some(e) = &entered {
            e.poison();
        }
    }
    status
}

/// Runs `f` on an open pager inside the boundary.
fn on_open(p: *const pager_t, f: impl FnOnce(&Entered<'_>, &Pager) -> Result<()>) -> pager_status_t {
    on_handle(p, |e| f(e, &e.open()?.pager))
}

/// Number of tensors (ids are 0..count-1, file order, then slices); 0 if
/// `p` is NULL, closed or invalid. Thread-safe.
///
/// # Safety
/// `p` is NULL or a pointer returned by a `pager_open_*` function.
#[no_mangle]
pub unsafe extern "C" fn pager_tensor_count(p: *const pager_t) -> usize {
    run_value(0, || {
        let e = pager_t::enter(p)?;
        Ok(e.open()?.pager.tensor_count())
    })
}

/// Looks a tensor up by name; `*out_id` is written only on success.
/// Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT` (NULL, non-UTF-8),
/// `PAGER_ERR_NOT_FOUND`, `PAGER_ERR_CLOSED`, `PAGER_ERR_INVALID_HANDLE`.
/// Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `name` NULL or NUL-terminated; `out_id` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pager_find(
    p: *const pager_t,
    name: *const c_char,
    out_id: *mut u32,
) -> pager_status_t {
    on_open(p, |_, pager| {
        // SAFETY: as the caller promises.
        let name = unsafe { c_str(name, "name")? };
        let out_id = non_null_mut(out_id, "out_id")?;
        let id = pager.find(name)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out_id.write(id) };
        Ok(())
    })
}

/// Describes tensor `id`. `out->name` is valid while the pager lives. On
/// failure `*out` is zeroed. Returns `PAGER_OK`,
/// `PAGER_ERR_INVALID_ARGUMENT` (NULL, bad id), `PAGER_ERR_CLOSED`,
/// `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pager_tensor_info(
    p: *const pager_t,
    id: u32,
    out: *mut pager_tensor_info_t,
) -> pager_status_t {
    let zeroed = pager_tensor_info_t {
        name: std::ptr::null(),
        offset: 0,
        size: 0,
        ggml_type: 0,
        n_dims: 0,
        dims: [0; 4],
    };
    if !out.is_null() {
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(zeroed) };
    }
    on_open(p, |e, pager| {
        let out = non_null_mut(out, "out")?;
        let t = pager.info(id)?;
        let mut dims = [1u64; 4];
        for (i, &d) in t.dims.iter().enumerate() {
            if i < 4 {
                dims[i] = d;
            } else {
                dims[3] = dims[3].saturating_mul(d);
            }
        }
        let info = pager_tensor_info_t {
            name: e.open()?.c_name(id)?,
            offset: t.offset,
            size: t.size,
            ggml_type: t.ggml_type.unwrap_or(u32::MAX),
            n_dims: t.dims.len().min(4) as u32,
            dims,
        };
        // SAFETY: as above.
        unsafe { out.write(info) };
        Ok(())
    })
}

const EMPTY_TENSOR: pager_tensor_t = pager_tensor_t {
    data: std::ptr::null(),
    size: 0,
    id: 0,
    ticket: 0,
};

/// Acquires tensor `id`: reads it if it is not resident (waiting up to
/// `wait_ms` for budget held by in-use tensors), and keeps it resident until
/// `pager_release(p, out)`. On failure `*out` is zeroed.
///
/// Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT` (NULL, bad id),
/// `PAGER_ERR_IO`, `PAGER_ERR_BUDGET`, `PAGER_ERR_TIMEOUT`,
/// `PAGER_ERR_OUT_OF_MEMORY`, `PAGER_ERR_CLOSED`, `PAGER_ERR_INVALID_HANDLE`,
/// `PAGER_ERR_PANIC`. Thread-safe; concurrent misses of one tensor read it once.
///
/// # Safety
/// `p` as `pager_tensor_count`; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pager_acquire(p: *mut pager_t, id: u32, out: *mut pager_tensor_t) -> pager_status_t {
    if !out.is_null() {
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(EMPTY_TENSOR) };
    }
    on_open(p, |_, pager| {
        let out = non_null_mut(out, "out")?;
        write_acquisition(out, pager.acquire_ticket(id)?);
        Ok(())
    })
}

/// Writes an acquisition for C.
fn write_acquisition(out: *mut pager_tensor_t, a: crate::pager::TicketedAcquisition) {
    // SAFETY: callers pass a non-NULL out-pointer that the C caller
    // promised is writable.
    unsafe {
        out.write(pager_tensor_t {
            data: a.data as *const c_void,
            size: a.size,
            id: a.id,
            ticket: a.ticket,
        })
    };
}

/// Acquires a tensor by name: `pager_find` then `pager_acquire`. Statuses
/// as both.
///
/// # Safety
/// As `pager_acquire`; `name` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pager_acquire_by_name(
    p: *mut pager_t,
    name: *const c_char,
    out: *mut pager_tensor_t,
) -> pager_status_t {
    if !out.is_null() {
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(EMPTY_TENSOR) };
    }
    on_open(p, |_, pager| {
        // SAFETY: as the caller promises.
        let name = unsafe { c_str(name, "name")? };
        let out = non_null_mut(out, "out")?;
        let id = pager.find(name)?;
        write_acquisition(out, pager.acquire_ticket(id)?);
        Ok(())
    })
}

/// Releases an acquisition and zeroes `*t`. Valid after `pager_close` for
/// acquisitions still held (the last one frees the pager). Releasing the
/// same acquisition twice, a copy of a released one, or a forged one returns
/// `PAGER_ERR_INVALID_HANDLE` and changes nothing.
///
/// Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT` (NULL),
/// `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `t` NULL or a readable, writable `pager_tensor_t`.
#[no_mangle]
pub unsafe extern "C" fn pager_release(p: *mut pager_t, t: *mut pager_tensor_t) -> pager_status_t {
    on_handle(p, |e| {
        let t = non_null_mut(t, "t")?;
        // SAFETY: non-NULL and readable per the contract.
        let acq = unsafe { t.read() };
        e.alive()?.pager.release_ticket(acq.id, acq.ticket)?;
        // SAFETY: as above.
        unsafe { t.write(EMPTY_TENSOR) };
        Ok(())
    })
}

/// Loads tensor `id` now and keeps it resident (never evicted) until
/// `pager_unpin`. Pinning a pinned tensor does nothing. Pinned bytes count
/// against the budget. Statuses as `pager_acquire`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`.
#[no_mangle]
pub unsafe extern "C" fn pager_pin(p: *mut pager_t, id: u32) -> pager_status_t {
    on_open(p, |_, pager| pager.pin(id))
}

/// Lets tensor `id` be evicted again. A tensor that is not pinned is
/// `PAGER_ERR_INVALID_ARGUMENT`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`.
#[no_mangle]
pub unsafe extern "C" fn pager_unpin(p: *mut pager_t, id: u32) -> pager_status_t {
    on_open(p, |_, pager| pager.unpin(id))
}

/// Hints that tensor `id` will be needed soon. Never blocks: with
/// `prefetch_threads > 0` a background reader loads it (if it fits without
/// waiting); without, the OS is asked to start reading it into the page
/// cache. Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT` (bad id),
/// `PAGER_ERR_CLOSED`, `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`.
#[no_mangle]
pub unsafe extern "C" fn pager_prefetch(p: *mut pager_t, id: u32) -> pager_status_t {
    on_open(p, |_, pager| pager.prefetch(id))
}

/// Declares the order in which a forward pass touches tensors (`n` ids,
/// repeated every pass); the array is copied. `n == 0` clears it.
/// Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT` (NULL with n > 0, bad
/// id), `PAGER_ERR_CLOSED`, `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `ids` NULL (only with n == 0) or `n` readable ids.
#[no_mangle]
pub unsafe extern "C" fn pager_set_schedule(p: *mut pager_t, ids: *const u32, n: usize) -> pager_status_t {
    on_open(p, |_, pager| {
        // SAFETY: as the caller promises.
        let ids = unsafe { c_slice(ids, n, "ids")? };
        pager.set_schedule(ids)
    })
}

/// Changes the budget (0 = unlimited); a smaller one evicts idle tensors
/// down to it now. Returns `PAGER_ERR_BUDGET` (keeping the old budget) if
/// pinned, in-use and loading tensors alone exceed the new budget.
/// Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`.
#[no_mangle]
pub unsafe extern "C" fn pager_set_budget(p: *mut pager_t, budget_bytes: u64) -> pager_status_t {
    on_open(p, |_, pager| pager.set_budget(budget_bytes))
}

/// Makes the bytes `offset..offset+size` of tensor `parent` (relative to the
/// parent's start) a pageable unit of its own; `*out_id` is its id (ids of
/// slices follow the file's tensors). A slice is read, charged and evicted
/// on its own; acquiring the parent reads the parent whole (its bytes are
/// charged separately from any resident slice of it).
/// Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT` (NULL, bad parent),
/// `PAGER_ERR_OUT_OF_BOUNDS` (past the parent's end), `PAGER_ERR_CLOSED`,
/// `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `out_id` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pager_add_slice(
    p: *mut pager_t,
    parent: u32,
    offset: u64,
    size: u64,
    out_id: *mut u32,
) -> pager_status_t {
    on_open(p, |_, pager| {
        let out_id = non_null_mut(out_id, "out_id")?;
        let id = pager.add_slice(parent, offset, size)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out_id.write(id) };
        Ok(())
    })
}

/// Splits a merged expert tensor (`blk.N.ffn_up_exps.weight`, experts
/// stacked on the outer dimension) into `n_experts` equal slices; expert `e`
/// gets id `*out_first_id + e`. The parent's size must divide evenly.
/// Statuses as `pager_add_slice`.
///
/// # Safety
/// As `pager_add_slice`.
#[no_mangle]
pub unsafe extern "C" fn pager_split_experts(
    p: *mut pager_t,
    parent: u32,
    n_experts: u32,
    out_first_id: *mut u32,
) -> pager_status_t {
    on_open(p, |_, pager| {
        let out = non_null_mut(out_first_id, "out_first_id")?;
        let id = pager.split_experts(parent, n_experts)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(id) };
        Ok(())
    })
}

/// The router's choice for the coming layers: the `n` tensors (usually
/// expert slices) are read ahead now, in the given order, as
/// `pager_prefetch` does. Statuses as `pager_set_schedule`.
///
/// # Safety
/// As `pager_set_schedule`.
#[no_mangle]
pub unsafe extern "C" fn pager_hint(p: *mut pager_t, ids: *const u32, n: usize) -> pager_status_t {
    on_open(p, |_, pager| {
        // SAFETY: as the caller promises.
        let ids = unsafe { c_slice(ids, n, "ids")? };
        pager.hint(ids)
    })
}

/// Copies the pager's counters into `*out` (zeroed on failure). Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT`,
/// `PAGER_ERR_CLOSED`, `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pager_get_stats(p: *const pager_t, out: *mut pager_stats_t) -> pager_status_t {
    if !out.is_null() {
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(pager_stats_t::default()) };
    }
    on_open(p, |_, pager| {
        let out = non_null_mut(out, "out")?;
        // SAFETY: as above.
        unsafe { out.write(pager.stats().into()) };
        Ok(())
    })
}
