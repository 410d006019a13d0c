//! The `pager_t` handle: what makes calls on a closed pager, concurrent
//! calls during `pager_close`, and releases after it safe.
//!
//! A handle is never freed: once its pager is closed and every acquisition
//! released, the pager (buffers, file, index) is freed and the handle stays
//! behind as a small tombstone, so that a late call through the stale
//! pointer returns `PAGER_ERR_CLOSED` / `PAGER_ERR_INVALID_HANDLE` instead of
//! touching freed memory. Tombstones stay reachable from a global list.
//!
//! Every call registers in `inflight` before it looks at `state`, and the
//! freer announces `FREEING` before it looks at `inflight` (both SeqCst), so
//! either the call sees the pager going away or the freer sees the call and
//! backs off; whoever leaves last frees. `inflight` is striped over cache
//! lines, a stripe per thread slot, so that threads calling at once do not
//! contend on one counter.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::pager::Pager;

const MAGIC: u64 = 0x6c61_7965_7270_6772; // "layerpgr"
const OPEN: u32 = 0;
const CLOSED: u32 = 1;
const FREEING: u32 = 2;
const FREED: u32 = 3;

/// The pager and what the C API keeps beside it.
pub(crate) struct Owned {
    pub(crate) pager: Pager,
    /// NUL-terminated tensor names, for `pager_tensor_info`, made on first
    /// use; a `CString`'s bytes do not move when the vector grows.
    names: Mutex<Vec<CString>>,
}

impl Owned {
    /// The C name of tensor `id`, valid while the pager lives.
    pub(crate) fn c_name(&self, id: u32) -> Result<*const std::ffi::c_char> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        while names.len() <= id as usize {
            let next = names.len() as u32;
            let name = &self.pager.info(next)?.name;
            names.push(CString::new(name.replace('\0', "?")).unwrap_or_default());
        }
        Ok(names[id as usize].as_ptr())
    }
}

/// An open (or closed) pager, as C sees it: opaque.
pub struct pager_t {
    magic: AtomicU64,
    state: AtomicU32,
    poisoned: AtomicBool,
    inflight: [Stripe; STRIPES],
    owned: AtomicPtr<Owned>,
    free_lock: Mutex<()>,
}

static TOMBSTONES: Mutex<Vec<usize>> = Mutex::new(Vec::new());

const STRIPES: usize = 8;

/// One cache line's counter.
#[repr(align(64))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// This thread's stripe: threads are spread round-robin over the stripes.
fn my_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// A registered call on a handle; deregisters (and frees the pager if it was
/// the last thing keeping a closed pager alive) on drop.
pub(crate) struct Entered<'a> {
    handle: &'a pager_t,
    stripe: usize,
}

impl pager_t {
    /// Makes a handle owning `pager`, returned as a pointer for C.
    pub(crate) fn create(pager: Pager) -> *mut pager_t {
        let owned = Box::into_raw(Box::new(Owned {
            pager,
            names: Mutex::new(Vec::new()),
        }));
        let handle = Box::into_raw(Box::new(pager_t {
            magic: AtomicU64::new(MAGIC),
            state: AtomicU32::new(OPEN),
            poisoned: AtomicBool::new(false),
            inflight: Default::default(),
            owned: AtomicPtr::new(owned),
            free_lock: Mutex::new(()),
        }));
        TOMBSTONES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle as usize);
        handle
    }

    /// Checks the pointer and registers a call on it.
    pub(crate) fn enter<'a>(p: *const pager_t) -> Result<Entered<'a>> {
        if p.is_null() {
            return Err(Error::InvalidArgument("pager is NULL".to_owned()));
        }
        if (p as usize) % std::mem::align_of::<pager_t>() != 0 {
            return Err(Error::InvalidHandle(format!("{p:p} is not a pager")));
        }
        // SAFETY: non-NULL and aligned; handles are never freed, so a pointer
        // that ever came from pager_open_* stays readable. A pointer that
        // never did is the caller's bug; the magic check catches most.
        let handle = unsafe { &*p };
        if handle.magic.load(Ordering::Relaxed) != MAGIC {
            return Err(Error::InvalidHandle(format!("{p:p} is not a pager")));
        }
        let stripe = my_stripe();
        handle.inflight[stripe].0.fetch_add(1, Ordering::SeqCst);
        Ok(Entered { handle, stripe })
    }

    /// Closes the pager: later calls return `PAGER_ERR_CLOSED`; the pager is
    /// freed now if nothing is acquired, else with the last release.
    pub(crate) fn close(p: *const pager_t) -> Result<()> {
        let entered = Self::enter(p)?;
        let handle = entered.handle;
        if handle
            .state
            .compare_exchange(OPEN, CLOSED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Ok(());
        }
        // Still registered, so the pager cannot be freed under us.
        entered.owned_unchecked().pager.close();
        drop(entered);
        Ok(())
    }

    fn try_free(&self) {
        let _g = self.free_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.state.load(Ordering::SeqCst) != CLOSED {
            return;
        }
        {
            // SAFETY: state is CLOSED (not FREED) and we hold free_lock, the
            // only place that frees, so the pointer is live.
            let owned = unsafe { &*self.owned.load(Ordering::SeqCst) };
            if owned.pager.outstanding() != 0 {
                return;
            }
        }
        self.state.store(FREEING, Ordering::SeqCst);
        if self.inflight.iter().any(|s| s.0.load(Ordering::SeqCst) != 0) {
            // A call is inside; it frees on its way out.
            self.state.store(CLOSED, Ordering::SeqCst);
            return;
        }
        let owned = self.owned.swap(std::ptr::null_mut(), Ordering::SeqCst);
        self.state.store(FREED, Ordering::SeqCst);
        if !owned.is_null() {
            // SAFETY: made by Box::into_raw in create, swapped out exactly once.
            drop(unsafe { Box::from_raw(owned) });
        }
    }
}

impl Entered<'_> {
    /// The pager, if it is open and not poisoned.
    pub(crate) fn open(&self) -> Result<&Owned> {
        match self.handle.state.load(Ordering::SeqCst) {
            OPEN => {}
            _ => return Err(Error::Closed),
        }
        if self.handle.poisoned.load(Ordering::Relaxed) {
            return Err(Error::Panic(
                "pager is poisoned by an earlier internal error".to_owned(),
            ));
        }
        Ok(self.owned_unchecked())
    }

    /// The pager, open or closed-but-alive (for releases after close).
    pub(crate) fn alive(&self) -> Result<&Owned> {
        match self.handle.state.load(Ordering::SeqCst) {
            OPEN | CLOSED => Ok(self.owned_unchecked()),
            _ => Err(Error::InvalidHandle(
                "the pager was closed and all its acquisitions released".to_owned(),
            )),
        }
    }

    fn owned_unchecked(&self) -> &Owned {
        // SAFETY: we are registered in inflight and state was OPEN or CLOSED
        // after registering, so no freer can pass its inflight check until
        // we leave; the pointer is live.
        unsafe { &*self.handle.owned.load(Ordering::SeqCst) }
    }

    /// Marks the pager poisoned (after a caught panic).
    pub(crate) fn poison(&self) {
        self.handle.poisoned.store(true, Ordering::Relaxed);
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.handle.inflight[self.stripe].0.fetch_sub(1, Ordering::SeqCst);
        if self.handle.state.load(Ordering::SeqCst) == CLOSED {
            self.handle.try_free();
        }
    }
}
