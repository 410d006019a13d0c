//! The boundary work every entry point shares: catching panics, keeping the
//! thread's last error message, turning `Result` into a status, and
//! checking pointers.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{one_line, pager_status_t, Error, Result};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Stores `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    let text = CString::new(one_line(message)).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// This thread's last error message; valid until the next failing call on
/// this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Runs `f` inside the panic boundary: an error becomes its status and the
/// thread's last error message; a caught panic is `PAGER_ERR_PANIC`.
pub(crate) fn run(f: impl FnOnce() -> Result<()>) -> pager_status_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => pager_status_t::PAGER_OK,
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            e.status()
        }
        Err(payload) => {
            let e = Error::Panic(format!("panic: {}", panic_message(payload.as_ref())));
            set_last_error(&e.to_string());
            e.status()
        }
    }
}

/// Like [`run`] for functions that return a value instead of a status;
/// `fallback` is returned on error or panic.
pub(crate) fn run_value<T>(fallback: T, f: impl FnOnce() -> Result<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            fallback
        }
        Err(payload) => {
            set_last_error(&Error::Panic(format!("panic: {}", panic_message(payload.as_ref()))).to_string());
            fallback
        }
    }
}

/// A required pointer: NULL is `PAGER_ERR_INVALID_ARGUMENT` naming the
/// parameter.
pub(crate) fn non_null<T>(ptr: *const T, name: &str) -> Result<*const T> {
    if ptr.is_null() {
        Err(Error::InvalidArgument(format!("{name} is NULL")))
    } else {
        Ok(ptr)
    }
}

/// A required mutable pointer.
pub(crate) fn non_null_mut<T>(ptr: *mut T, name: &str) -> Result<*mut T> {
    if ptr.is_null() {
        Err(Error::InvalidArgument(format!("{name} is NULL")))
    } else {
        Ok(ptr)
    }
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid for `'a`.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    let ptr = non_null(ptr, name)?;
    // SAFETY: non-NULL, and the caller promises NUL termination and lifetime.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str()
        .map_err(|_| Error::InvalidArgument(format!("{name} is not valid UTF-8")))
}

/// A C array of `n` elements; NULL is allowed only when `n` is 0.
///
/// # Safety
/// `ptr` is NULL or points to `n` readable elements valid for `'a`.
pub(crate) unsafe fn c_slice<'a, T>(ptr: *const T, n: usize, name: &str) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    let ptr = non_null(ptr, name)?;
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Error::InvalidArgument(format!(
            "{name}: {n} elements is too many"
        )));
    }
    // SAFETY: non-NULL, length checked against isize::MAX, and the caller
    // promises n readable elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}
