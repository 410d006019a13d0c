//! Opening and closing a pager: the caller's options read as far as its
//! `struct_size` reaches, the four `pager_open_*` calls, and `pager_close`.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use super::boundary::{c_slice, c_str, non_null, non_null_mut, run};
use super::handle::pager_t;
use super::types::*;
use crate::error::{pager_status_t, Error, Result};
use crate::index::TensorIndex;
use crate::pager::{Pager, PagerOptions};
use crate::policy::PolicyKind;
use crate::source::{Allocator, CallbackSource, IoMode};
use crate::BudgetListener;

/// Fills `*opts` with the defaults: unlimited budget, `PAGER_POLICY_AUTO`,
/// `PAGER_IO_AUTO`, 1 background reader, alignment 64, no waiting,
/// built-in allocator, the budget not following the memory limit, and
/// `struct_size = sizeof(pager_options_t)`. NULL is
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
        io_mode: PAGER_IO_AUTO,
        prefetch_threads: d.prefetch_threads,
        alignment: d.alignment as u32,
        wait_ms: d.wait_ms,
        allocator: std::ptr::null(),
        follow_memory: 0,
        on_budget_change: None,
        budget_change_user_data: std::ptr::null_mut(),
    }
}

/// The engine's `budget_change_user_data`, handed to the follower thread.
struct SendPtr(*mut c_void);
// SAFETY: the C API documents that `on_budget_change` is called from the
// follower thread with this pointer; the pager never dereferences it.
unsafe impl Send for SendPtr {}
// SAFETY: as above; only passed back, never read or written here.
unsafe impl Sync for SendPtr {}

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
    let on_budget_change = c.on_budget_change.map(|f| {
        let user_data = SendPtr(c.budget_change_user_data);
        BudgetListener::new(move |old, new| {
            let user_data = &user_data;
            // SAFETY: the caller gave a callback callable from any thread
            // for as long as the pager lives, with this user_data.
            unsafe { f(user_data.0, old, new) }
        })
    });
    let options = PagerOptions {
        budget_bytes: c.budget_bytes,
        policy,
        io_mode,
        prefetch_threads: c.prefetch_threads,
        alignment: c.alignment as usize,
        wait_ms: c.wait_ms,
        allocator,
        follow_memory: c.follow_memory != 0,
        on_budget_change,
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
