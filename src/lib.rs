//! # layerpager
//!
//! Pages the weight tensors of a GGUF or safetensors model between disk and
//! a RAM budget, for inference engines whose model does not fit in memory.
//! The engine acquires each tensor right before it computes with it;
//! layerpager keeps the right tensors resident, reads the rest (ahead of
//! need when it can), and never lets its resident bytes pass the budget.
//!
//! The product is the C ABI (`include/layerpager.h`, module [`ffi`]); this
//! crate is also a Rust library:
//!
//! ```no_run
//! use layerpager::{Pager, PagerOptions};
//! let pager = Pager::open_gguf("model.gguf", PagerOptions { budget_bytes: 4 << 30, ..Default::default() })?;
//! let id = pager.find("blk.0.attn_q.weight")?;
//! let q = pager.acquire(id)?;          // resident until `q` is dropped
//! let bytes: &[u8] = q.bytes();
//! # let _ = bytes;
//! # Ok::<(), layerpager::Error>(())
//! ```
//!
//! Modules: [`index`] (where tensors live), [`source`] (where bytes come
//! from), [`pager`] (the resident set), [`policy`] (eviction), `prefetch`
//! (background reads), [`ffi`] (the C API).

#![warn(missing_docs)]

pub mod error;
pub mod ffi;
pub mod index;
pub mod memlimit;
pub mod pager;
pub mod policy;
mod prefetch;
mod segvec;
pub mod source;

pub use error::{pager_status_t, shown, Error, Result, Status};
pub use index::{IndexFormat, TensorIndex, TensorInfo};
pub use pager::{Acquisition, BudgetListener, Pager, PagerOptions, Stats, TicketedAcquisition};
pub use policy::PolicyKind;
pub use source::IoMode;

/// The crate version, "MAJOR.MINOR.PATCH".
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
