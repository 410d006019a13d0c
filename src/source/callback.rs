//! A byte source implemented by the engine through C callbacks (network,
//! object store, archive member).

use std::ffi::c_void;

use super::ByteSource;
use crate::error::{Error, Result};

/// `read_at(user_data, offset, dst, len)`: fills `dst` with `len` bytes at
/// `offset`; returns 0 on success or an errno.
pub type ReadAtFn =
    unsafe extern "C" fn(user_data: *mut c_void, offset: u64, dst: *mut c_void, len: usize) -> i32;
/// `destroy(user_data)`: called once when the source is dropped.
pub type DestroyFn = unsafe extern "C" fn(user_data: *mut c_void);

/// A source whose reads are C callbacks.
#[derive(Debug)]
pub struct CallbackSource {
    user_data: *mut c_void,
    size: u64,
    read_at: ReadAtFn,
    destroy: Option<DestroyFn>,
}

// SAFETY: the C API requires read_at to be callable from any thread,
// concurrently, for as long as the pager lives; user_data is only passed back.
unsafe impl Send for CallbackSource {}
// SAFETY: as above.
unsafe impl Sync for CallbackSource {}

impl CallbackSource {
    /// Wraps the callbacks. `destroy` (if any) is called once, on drop.
    pub fn new(user_data: *mut c_void, size: u64, read_at: ReadAtFn, destroy: Option<DestroyFn>) -> Self {
        CallbackSource {
            user_data,
            size,
            read_at,
            destroy,
        }
    }
}

impl ByteSource for CallbackSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        "callback source".to_owned()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let what = || format!("read from {}", self.describe());
        super::check_range(&what, offset, buf.len() as u64, self.size)?;
        // SAFETY: buf is valid for writes of buf.len() bytes for the duration
        // of the call, as the callback contract requires.
        let rc =
            unsafe { (self.read_at)(self.user_data, offset, buf.as_mut_ptr() as *mut c_void, buf.len()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::from_errno(
                format!("read_at callback for {} bytes at offset {offset}", buf.len()),
                rc,
            ))
        }
    }
}

impl Drop for CallbackSource {
    fn drop(&mut self) {
        if let Some(destroy) = self.destroy {
            // SAFETY: called exactly once, after the last read.
            unsafe { destroy(self.user_data) };
        }
    }
}
