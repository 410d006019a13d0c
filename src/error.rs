//! The one error type of the crate and its one mapping to the C status codes.
//!
//! Every failure in the core is an [`Error`]; the C boundary turns it into a
//! [`pager_status_t`] with [`Error::status`] and keeps its `Display` text as
//! the thread's last error message. Nothing else in the crate maps errors.

use std::ffi::CStr;
use std::fmt;

/// Status code returned by every fallible C entry point.
///
/// The numbers are part of the ABI: they never change once shipped, and new
/// codes are only appended.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum pager_status_t {
    /// Success.
    PAGER_OK = 0,
    /// A required pointer was NULL, an option was out of range, a name was not
    /// UTF-8, or an id does not name a tensor.
    PAGER_ERR_INVALID_ARGUMENT = 1,
    /// No tensor has that name.
    PAGER_ERR_NOT_FOUND = 2,
    /// Opening or reading the source failed; the message carries the errno.
    PAGER_ERR_IO = 3,
    /// A tensor reaches past the end of its source.
    PAGER_ERR_OUT_OF_BOUNDS = 4,
    /// The GGUF / safetensors file or the tensor table is malformed.
    PAGER_ERR_FORMAT = 5,
    /// The tensor cannot fit: the budget is held by pinned or in-use tensors,
    /// or the tensor is larger than the whole budget.
    PAGER_ERR_BUDGET = 6,
    /// The acquisition was already released, is a stale copy, or was forged;
    /// or the pager pointer is not a live pager.
    PAGER_ERR_INVALID_HANDLE = 7,
    /// An allocation for tensor data failed.
    PAGER_ERR_OUT_OF_MEMORY = 8,
    /// Waited `wait_ms` for budget to be released, in vain.
    PAGER_ERR_TIMEOUT = 9,
    /// `pager_close` was called on this pager.
    PAGER_ERR_CLOSED = 10,
    /// An internal bug was caught at the boundary; the pager is poisoned.
    PAGER_ERR_PANIC = 11,
}

/// The Rust name of [`pager_status_t`].
pub type Status = pager_status_t;

impl pager_status_t {
    /// Every status, in numeric order.
    pub const fn all() -> [pager_status_t; 12] {
        [
            Self::PAGER_OK,
            Self::PAGER_ERR_INVALID_ARGUMENT,
            Self::PAGER_ERR_NOT_FOUND,
            Self::PAGER_ERR_IO,
            Self::PAGER_ERR_OUT_OF_BOUNDS,
            Self::PAGER_ERR_FORMAT,
            Self::PAGER_ERR_BUDGET,
            Self::PAGER_ERR_INVALID_HANDLE,
            Self::PAGER_ERR_OUT_OF_MEMORY,
            Self::PAGER_ERR_TIMEOUT,
            Self::PAGER_ERR_CLOSED,
            Self::PAGER_ERR_PANIC,
        ]
    }

    /// The status with this number, if there is one.
    pub fn from_code(code: i32) -> Option<Self> {
        usize::try_from(code)
            .ok()
            .and_then(|i| Self::all().get(i).copied())
    }

    /// A short static description, NUL-terminated for `pager_status_string`.
    pub fn description(self) -> &'static CStr {
        match self {
            Self::PAGER_OK => c"ok",
            Self::PAGER_ERR_INVALID_ARGUMENT => c"invalid argument",
            Self::PAGER_ERR_NOT_FOUND => c"tensor not found",
            Self::PAGER_ERR_IO => c"I/O error",
            Self::PAGER_ERR_OUT_OF_BOUNDS => c"tensor out of bounds of its source",
            Self::PAGER_ERR_FORMAT => c"malformed model file",
            Self::PAGER_ERR_BUDGET => c"budget exhausted by pinned or in-use tensors",
            Self::PAGER_ERR_INVALID_HANDLE => c"invalid handle",
            Self::PAGER_ERR_OUT_OF_MEMORY => c"out of memory",
            Self::PAGER_ERR_TIMEOUT => c"timed out waiting for budget",
            Self::PAGER_ERR_CLOSED => c"pager is closed",
            Self::PAGER_ERR_PANIC => c"internal error (panic caught)",
        }
    }
}

impl fmt::Display for pager_status_t {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description().to_str().unwrap_or("?"))
    }
}

/// Everything that can go wrong, each variant carrying what a person needs to
/// act on it. Cloneable so that all waiters of one failed load get the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A caller passed something unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No tensor of that name.
    #[error("no tensor named '{}'", shown(name))]
    NotFound {
        /// The name that was looked up.
        name: String,
    },
    /// An operating-system or source-callback failure.
    #[error("{context}: {message} (errno {errno})")]
    Io {
        /// What was being done ("read of tensor 3 'x' at offset 64 (16 bytes) from f.gguf").
        context: String,
        /// The errno (0 when there is none, e.g. a short read).
        errno: i32,
        /// The errno's text or what went wrong.
        message: String,
    },
    /// A tensor (or a read) reaches past the end of its source.
    #[error("{what}: bytes {offset}..{end} past end of source ({source_size} bytes)", end = offset.saturating_add(*size))]
    OutOfBounds {
        /// Which tensor or read.
        what: String,
        /// Absolute start offset.
        offset: u64,
        /// Length in bytes.
        size: u64,
        /// Size of the source.
        source_size: u64,
    },
    /// A malformed model file or tensor table.
    #[error("malformed {format}: {detail}")]
    Format {
        /// "GGUF file 'x.gguf'", "safetensors file ..", "tensor table".
        format: String,
        /// What is wrong, and where.
        detail: String,
    },
    /// The budget cannot hold the tensor.
    #[error("budget: {0}")]
    Budget(String),
    /// A released, stale, forged or foreign handle.
    #[error("invalid handle: {0}")]
    InvalidHandle(String),
    /// Allocation of tensor memory failed.
    #[error("out of memory: could not allocate {bytes} bytes for {what}")]
    OutOfMemory {
        /// Requested bytes.
        bytes: u64,
        /// What the memory was for.
        what: String,
    },
    /// Waited for budget to free up and gave up.
    #[error("timed out after {waited_ms} ms: {detail}")]
    Timeout {
        /// How long the caller waited.
        waited_ms: u64,
        /// What was waited for.
        detail: String,
    },
    /// The pager was closed.
    #[error("pager is closed")]
    Closed,
    /// An internal bug (a caught panic or a poisoned lock).
    #[error("internal error: {0}")]
    Panic(String),
}

/// Most characters of a name or key that a message shows.
const SHOWN_CHARS: usize = 64;

/// A name or key from a file or a caller as a message shows it: control
/// characters escaped (`\n`, `\u{1b}`), cut to 64 characters (escapes
/// included) and "…". A
/// damaged file's 2 KB name of NUL and ESC bytes then gives a one-line
/// message of bounded length.
pub fn shown(name: &str) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for c in name.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        let n = piece.chars().count();
        if chars + n > SHOWN_CHARS {
            out.push('…');
            break;
        }
        chars += n;
        out.push_str(&piece);
    }
    out
}

/// Longest message kept as the thread's last error, in bytes.
pub(crate) const MESSAGE_MAX: usize = 1024;

/// A message as the C API hands it out: one line (line breaks and other
/// control characters escaped, no NUL) of at most [`MESSAGE_MAX`] bytes.
pub(crate) fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MESSAGE_MAX));
    for c in message.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > MESSAGE_MAX - '…'.len_utf8() {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

/// The OS's text for an errno, without the " (os error N)" that Rust adds:
/// the message names the errno once, as "(errno N)".
fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.strip_suffix(&format!(" (os error {errno})")) {
        Some(plain) => plain.to_owned(),
        None => text,
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The one mapping from errors to C status codes.
    pub fn status(&self) -> pager_status_t {
        use pager_status_t as S;
        match self {
            Error::InvalidArgument(_) => S::PAGER_ERR_INVALID_ARGUMENT,
            Error::NotFound { .. } => S::PAGER_ERR_NOT_FOUND,
            Error::Io { .. } => S::PAGER_ERR_IO,
            Error::OutOfBounds { .. } => S::PAGER_ERR_OUT_OF_BOUNDS,
            Error::Format { .. } => S::PAGER_ERR_FORMAT,
            Error::Budget(_) => S::PAGER_ERR_BUDGET,
            Error::InvalidHandle(_) => S::PAGER_ERR_INVALID_HANDLE,
            Error::OutOfMemory { .. } => S::PAGER_ERR_OUT_OF_MEMORY,
            Error::Timeout { .. } => S::PAGER_ERR_TIMEOUT,
            Error::Closed => S::PAGER_ERR_CLOSED,
            Error::Panic(_) => S::PAGER_ERR_PANIC,
        }
    }

    /// An I/O error from an errno, with the OS's text for it.
    pub fn from_errno(context: impl Into<String>, errno: i32) -> Self {
        Error::Io {
            context: context.into(),
            errno,
            message: errno_text(errno),
        }
    }

    /// An I/O error from a `std::io::Error`.
    pub fn from_io(context: impl Into<String>, err: &std::io::Error) -> Self {
        let errno = err.raw_os_error().unwrap_or(0);
        let message = match err.raw_os_error() {
            Some(code) => errno_text(code),
            None => err.to_string(),
        };
        Error::Io {
            context: context.into(),
            errno,
            message,
        }
    }

    /// A format error.
    pub fn format(format: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Format {
            format: format.into(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_numbers_are_the_shipped_ones() {
        for (i, s) in pager_status_t::all().iter().enumerate() {
            assert_eq!(*s as i32, i as i32);
            assert_eq!(pager_status_t::from_code(i as i32), Some(*s));
        }
        assert_eq!(pager_status_t::from_code(-1), None);
        assert_eq!(pager_status_t::from_code(12), None);
        assert_eq!(pager_status_t::PAGER_ERR_PANIC as i32, 11);
    }

    #[test]
    fn io_error_message_names_the_errno() {
        let e = Error::from_errno("read of tensor 0 'a'", libc::EIO);
        assert_eq!(e.status(), pager_status_t::PAGER_ERR_IO);
        let text = e.to_string();
        assert!(text.contains("read of tensor 0 'a'"), "{text}");
        assert!(text.contains("errno 5"), "{text}");
        assert!(!text.contains("os error"), "the errno is named once: {text}");
    }

    #[test]
    fn names_in_messages_are_escaped_and_cut() {
        let damaged = format!("{}\u{1b}[31m\u{7}{}", "a".repeat(10), "\0".repeat(2000));
        let shown = shown(&damaged);
        assert!(shown.starts_with("aaaaaaaaaa\\u{1b}[31m\\u{7}\\u{0}"), "{shown}");
        assert!(shown.ends_with('…'));
        assert_eq!(shown.chars().filter(|c| c.is_control()).count(), 0);
        assert!(shown.chars().count() <= 65, "{shown}");
        let e = Error::NotFound { name: damaged };
        assert!(!e.to_string().chars().any(char::is_control));
        let line = one_line(&format!("x\ny{}", "z".repeat(5000)));
        assert!(line.starts_with("x\\ny"));
        assert!(line.len() <= MESSAGE_MAX, "{}", line.len());
        assert!(!line.chars().any(char::is_control));
    }

    #[test]
    fn out_of_bounds_message_names_the_range() {
        let e = Error::OutOfBounds {
            what: "tensor 12 'blk.0.ffn_up.weight'".into(),
            offset: 100,
            size: 50,
            source_size: 120,
        };
        assert_eq!(
            e.to_string(),
            "tensor 12 'blk.0.ffn_up.weight': bytes 100..150 past end of source (120 bytes)"
        );
    }
}
