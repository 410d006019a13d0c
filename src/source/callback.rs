//! A byte source implemented by the engine through C callbacks (network,
//! object store, archive member).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    /// `destroy` runs on drop only once this is set: a source handed to an
    /// open that fails stays the caller's.
    owned: Arc<AtomicBool>,
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
            owned: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Makes `destroy` wait for the returned flag: it runs on drop only if
    /// the flag is set by then (set it once whoever holds the source has
    /// taken ownership of it).
    pub fn ownership_flag(&mut self) -> Arc<AtomicBool> {
        self.owned.store(false, Ordering::SeqCst);
        Arc::clone(&self.owned)
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
        if !self.owned.load(Ordering::SeqCst) {
            return;
        }
        if let Some(destroy) = self.destroy {
            // SAFETY: called exactly once, after the last read.
            unsafe { destroy(self.user_data) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static DESTROYED: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn read_zeros(_: *mut c_void, _: u64, dst: *mut c_void, len: usize) -> i32 {
        // SAFETY: dst has room for len bytes per the callback contract.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, len) };
        0
    }

    unsafe extern "C" fn count_destroy(_: *mut c_void) {
        DESTROYED.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn destroy_runs_only_once_ownership_is_taken() {
        let before = DESTROYED.load(Ordering::SeqCst);
        let mut refused = CallbackSource::new(std::ptr::null_mut(), 8, read_zeros, Some(count_destroy));
        let _flag = refused.ownership_flag();
        drop(refused);
        assert_eq!(DESTROYED.load(Ordering::SeqCst), before);
        let mut taken = CallbackSource::new(std::ptr::null_mut(), 8, read_zeros, Some(count_destroy));
        let flag = taken.ownership_flag();
        flag.store(true, Ordering::SeqCst);
        let mut buf = [1u8; 8];
        taken.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
        drop(taken);
        assert_eq!(DESTROYED.load(Ordering::SeqCst), before + 1);
    }
}
