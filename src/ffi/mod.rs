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
mod open;
mod types;

use std::ffi::{c_char, c_void};

pub use handle::pager_t;
pub use open::*;
pub use types::*;

use crate::error::{pager_status_t, Error, Result};
use crate::pager::Pager;
use boundary::{c_slice, c_str, non_null_mut, run, run_value};
use handle::Entered;

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

/// Measures how fast the device reads the file at `path` with `O_DIRECT`
/// (no page cache): sequential 2 MiB requests at queue depths 1, 2, 4 and 8
/// (io_uring where the kernel has it), up to 256 MiB each. Writes
/// the best speed in bytes per second to `*out_bytes_per_second` and its
/// depth to `*out_depth` (`out_depth` may be NULL). This is the physical
/// bound a pass's reads are measured against: bytes read / this speed.
/// Reads the file for a second or so; opens no pager.
///
/// Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT` (NULL path or speed,
/// non-UTF-8 path), `PAGER_ERR_IO`, `PAGER_ERR_PANIC`. Thread-safe.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out_bytes_per_second` is NULL
/// or writable; `out_depth` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pager_measure_read_speed(
    path: *const c_char,
    out_bytes_per_second: *mut f64,
    out_depth: *mut u32,
) -> pager_status_t {
    run(|| {
        // SAFETY: as documented for the caller.
        let path = unsafe { c_str(path, "path") }?;
        let out = non_null_mut(out_bytes_per_second, "out_bytes_per_second")?;
        let speed = crate::source::raw_direct_speed(std::path::Path::new(path))?;
        // SAFETY: checked non-NULL; the caller made it writable.
        unsafe { *out = speed.bytes_per_second };
        if !out_depth.is_null() {
            // SAFETY: non-NULL and writable, as documented.
            unsafe { *out_depth = speed.depth as u32 };
        }
        Ok(())
    })
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

/// Copies bytes `offset..offset + len` of tensor `id` into `dst` without
/// making the tensor resident: from memory if it is resident, else straight
/// from the file (counted in `bytes_read`). For sparse uses of a large
/// tensor, such as the rows of an embedding that one token needs. `dst` is
/// the caller's and is not counted against the budget.
///
/// Returns `PAGER_OK`, `PAGER_ERR_INVALID_ARGUMENT` (NULL `dst` with
/// `len > 0`, bad id), `PAGER_ERR_OUT_OF_BOUNDS` (the range passes the
/// tensor's end), `PAGER_ERR_IO`, `PAGER_ERR_CLOSED`,
/// `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `dst` NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn pager_read(
    p: *mut pager_t,
    id: u32,
    offset: u64,
    dst: *mut c_void,
    len: usize,
) -> pager_status_t {
    on_open(p, |_, pager| {
        if len == 0 {
            return pager.read(id, offset, &mut []);
        }
        let dst = non_null_mut(dst, "dst")?;
        // SAFETY: non-NULL and writable for len bytes per the contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, len) };
        pager.read(id, offset, dst)
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

/// Places the slices of `parent` (from `pager_split_experts` or
/// `pager_add_slice`) at their offsets in one address range: `*out_base` is
/// where the parent's byte 0 sits, and an acquired slice at offset `o` of
/// the parent is at `*out_base + o`. An engine that computes with the
/// parent's layout (ggml's `MUL_MAT_ID` reads expert `e` at
/// `data + e * nb[2]`) then finds every resident slice in place, with no
/// copy; only the bytes of resident (acquired or idle) slices are there.
/// The range is reserved with the file's page phase (`O_DIRECT` reads land
/// in place) and committed only where a slice is resident; each slice is
/// charged the whole pages it touches. In the mmap io mode the range is the
/// file's mapping. A placed slice's `data` has the file's alignment, not
/// `opts.alignment`, and its memory is the pager's own, not the engine's
/// allocator's. Call it before acquiring any slice of `parent`;
/// calling it again gives the same base. Returns `PAGER_OK`,
/// `PAGER_ERR_INVALID_ARGUMENT` (NULL, a bad or sliced parent, a slice
/// already resident), `PAGER_ERR_OUT_OF_MEMORY` (no address space),
/// `PAGER_ERR_CLOSED`, `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `out_base` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pager_place_slices(
    p: *mut pager_t,
    parent: u32,
    out_base: *mut *const c_void,
) -> pager_status_t {
    on_open(p, |_, pager| {
        let out = non_null_mut(out_base, "out_base")?;
        let base = pager.place_slices(parent)?;
        // SAFETY: non-NULL and writable per the contract.
        unsafe { out.write(base as *const c_void) };
        Ok(())
    })
}

/// The router's choice for the block about to run: the `n` tensors
/// (usually expert slices) that are not resident are read ahead now, in
/// the given order, as `pager_prefetch` does (the readers woken once), and
/// a hinted expert is not evicted before it is used (or its block has
/// passed); a queued read of a hinted expert already used is dropped. Takes
/// no lock of the policy: the hint is queued and applied before the next
/// eviction. Statuses as `pager_set_schedule`.
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

/// Writes one line for logs into `buf` (at most `size` bytes, NUL
/// included, truncated if need be): the file, the io mode in effect and
/// what it leaves in the page cache, the budget and whether it follows the
/// memory limit, the policy and what it has learned. `*length`, if
/// `length` is not NULL, is the whole line's length without the NUL.
/// `buf` may be NULL when `size` is 0. Returns `PAGER_OK`,
/// `PAGER_ERR_INVALID_ARGUMENT`, `PAGER_ERR_CLOSED`,
/// `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `buf` NULL or writable for `size` bytes;
/// `length` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pager_describe(
    p: *const pager_t,
    buf: *mut c_char,
    size: usize,
    length: *mut usize,
) -> pager_status_t {
    on_open(p, |_, pager| {
        if buf.is_null() && size != 0 {
            return Err(Error::InvalidArgument("buf is NULL but size is not 0".to_owned()));
        }
        let line = pager.describe();
        if size != 0 {
            let n = line.len().min(size - 1);
            // SAFETY: buf is writable for `size` bytes per the contract and
            // n + 1 <= size; the line is our own, not overlapping.
            unsafe {
                std::ptr::copy_nonoverlapping(line.as_ptr(), buf as *mut u8, n);
                buf.add(n).write(0);
            }
        }
        if !length.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { length.write(line.len()) };
        }
        Ok(())
    })
}

/// Prepares `*out` for `pager_get_stats`: every counter 0 and
/// `struct_size = sizeof(pager_stats_t)`. NULL is ignored. Thread-safe.
///
/// # Safety
/// `out` is NULL or points to writable memory for a `pager_stats_t`.
#[no_mangle]
pub unsafe extern "C" fn pager_stats_init(out: *mut pager_stats_t) {
    let _ = run(|| {
        let out = non_null_mut(out, "out")?;
        // SAFETY: non-NULL; the caller provides a whole pager_stats_t.
        unsafe {
            out.write(pager_stats_t {
                struct_size: std::mem::size_of::<pager_stats_t>() as u32,
                ..pager_stats_t::default()
            })
        };
        Ok(())
    });
}

/// Copies the pager's counters into `*out`: as many bytes as
/// `out->struct_size` says (`pager_stats_init` sets it), the field
/// itself left as it is; those bytes zeroed on failure. Returns `PAGER_OK`,
/// `PAGER_ERR_INVALID_ARGUMENT` (`out` NULL, or its `struct_size` below 4),
/// `PAGER_ERR_CLOSED`, `PAGER_ERR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `p` as `pager_tensor_count`; `out` NULL or writable for `struct_size`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn pager_get_stats(p: *const pager_t, out: *mut pager_stats_t) -> pager_status_t {
    // SAFETY: struct_size is the first field of every version of the struct,
    // and out is NULL or writable per the contract.
    let size = (!out.is_null()).then(|| unsafe { std::ptr::addr_of!((*out).struct_size).read_unaligned() });
    // The counters start after `struct_size` and its padding.
    let first = std::mem::offset_of!(pager_stats_t, hits);
    let field = std::mem::size_of::<u32>();
    let n = size.map_or(0, |s| (s as usize).min(std::mem::size_of::<pager_stats_t>()));
    let fill = |stats: pager_stats_t| {
        if n > first {
            // SAFETY: the caller's struct holds `struct_size >= n` bytes;
            // the counters' bytes are copied from ours.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&stats as *const pager_stats_t as *const u8).add(first),
                    (out as *mut u8).add(first),
                    n - first,
                )
            };
        }
    };
    fill(pager_stats_t::default());
    on_open(p, |_, pager| {
        non_null_mut(out, "out")?;
        if n < field {
            return Err(Error::InvalidArgument(format!(
                "out->struct_size is {}: set it to sizeof(pager_stats_t)",
                size.unwrap_or(0)
            )));
        }
        fill(pager.stats().into());
        Ok(())
    })
}
