//! Byte sources: where tensor bytes come from.
//!
//! A [`ByteSource`] reads N bytes at an offset of a fixed-size store. The
//! implementations are a file read with `pread` on one descriptor opened
//! once ([`FileSource`], optionally with `O_DIRECT`), a read-only mapping
//! ([`MmapSource`]), and C callbacks ([`CallbackSource`]). Sources do no
//! caching and no accounting: that is the pager's job.

mod arena;
mod batch;
mod buffer;
mod callback;
mod file;
mod memory;
mod mmap;
mod staging;

pub(crate) use arena::{Arena, FreshChunk};
pub use batch::BatchTarget;
pub use batch::IO_URING_ENV;
pub(crate) use batch::{Completion, ReadQueue, Request, MAX_HOLE, MAX_IOVECS};
pub use buffer::Allocator;
pub(crate) use buffer::{TensorBuffer, HUGE_PAGE};
pub use callback::{CallbackSource, DestroyFn, ReadAtFn};
pub use file::{drop_page_cache, raw_direct_speed, raw_pread_sweep, FileSource, RawSpeed};
pub use memory::MemorySource;
pub use mmap::MmapSource;
pub use staging::STAGING_ENV;
pub(crate) use staging::{MAX_STAGED_BYTES as STAGED_REQUEST_BYTES, MOST_STAGING_PAGES, STAGING_PAGE_BYTES};

use crate::error::{Error, Result};

/// How a file source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// Decided at open (the default). With a budget smaller than the file:
    /// if the file fits in the memory the limit leaves beside the budget
    /// (cgroup limit less use, else `MemAvailable`, less 64 MiB), `pread`
    /// through the page cache, which then serves every pass after the
    /// first; if not, `O_DIRECT` where the file system allows it (else
    /// `pread` dropping the page cache behind each read), so that no page
    /// cache presses the limit. With no budget, or one the file fits in,
    /// `pread`.
    #[default]
    Auto,
    /// `pread` through the page cache; with a budget, what each read brings
    /// into the page cache is dropped behind it.
    Pread,
    /// `pread` with `O_DIRECT`, bypassing the page cache. Falls back to
    /// plain `pread` on file systems that refuse `O_DIRECT` (tmpfs).
    Direct,
    /// A read-only memory mapping; aligned tensors are handed out in place.
    Mmap,
}

impl IoMode {
    /// The mode for a C `PAGER_IO_*` value.
    pub fn from_c(value: u32) -> Option<Self> {
        match value {
            0 => Some(IoMode::Pread),
            1 => Some(IoMode::Direct),
            2 => Some(IoMode::Mmap),
            3 => Some(IoMode::Auto),
            _ => None,
        }
    }
}

/// A fixed-size store of bytes that can be read at any offset, from any
/// thread.
pub trait ByteSource: Send + Sync {
    /// Total size in bytes.
    fn size(&self) -> u64;

    /// Says what the source is, for error messages ("file 'model.gguf'").
    fn describe(&self) -> String;

    /// Whether reads copy from the page cache and stay there (plain pread of
    /// a file that is not dropped behind): then copying, not the device,
    /// bounds throughput, and more readers help.
    fn copies_from_page_cache(&self) -> bool {
        false
    }

    /// How the source reads now, for logs: the io mode in effect and what
    /// it leaves in the page cache ("pread, page cache dropped behind each
    /// read"). Defaults to [`ByteSource::describe`].
    fn io_description(&self) -> String {
        self.describe()
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    /// A read past the end is [`Error::OutOfBounds`]; a short read or an
    /// errno is [`Error::Io`].
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Checks that the underlying store is still the one the index was built
    /// from (same size, inode, modification time for files).
    fn verify_unchanged(&self) -> Result<()> {
        Ok(())
    }

    /// Alignment that offsets, lengths and buffers of reads must have
    /// (`O_DIRECT`), if any.
    fn direct_alignment(&self) -> Option<usize> {
        None
    }

    /// Reads with `O_DIRECT` semantics: `offset`, `buf.len()` and the
    /// buffer address are multiples of [`ByteSource::direct_alignment`].
    /// Returns the bytes read, fewer than asked only at the end of the source.
    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let len = (self.size().saturating_sub(offset)).min(buf.len() as u64) as usize;
        self.read_exact_at(offset, &mut buf[..len])?;
        Ok(len)
    }

    /// The whole source as mapped memory, for zero-copy tensors (mmap mode).
    fn mapped(&self) -> Option<&[u8]> {
        None
    }

    /// Asks the OS to bring `offset..offset+len` of a mapping into memory.
    fn advise_willneed(&self, _offset: u64, _len: u64) {}

    /// With `on`, reads leave no page cache behind: each chunk read is
    /// dropped from the page cache as soon as it is copied, and what the
    /// cache held of the source when it turns on is dropped too. A budget
    /// then holds inside a kernel memory limit (a container's cgroup charges
    /// the page cache to the process, the budget does not count it).
    /// Sources without a page cache ignore it.
    fn set_drop_behind(&self, _on: bool) {}

    /// Where requests with several in flight can read from (a file's
    /// descriptor), if the source allows it; others are read one request
    /// at a time through [`ByteSource::read_exact_at`].
    fn batch_target(&self) -> Option<BatchTarget> {
        None
    }

    /// With `pages` above 0, `O_DIRECT` reads land first in a staging area
    /// of that many huge pages (see `staging.rs`; at most four), if the
    /// source reads with `O_DIRECT` and the pages can be had; with 0, they
    /// no longer do. Returns the huge pages its reads are staged through
    /// now (0: none). Sources without `O_DIRECT` ignore it.
    fn stage_direct_reads(&self, _pages: usize) -> usize {
        0
    }

    /// Tells the OS that `offset..offset+len` of a mapping is not needed.
    fn advise_dontneed(&self, _offset: u64, _len: u64) {}
}

/// Checks that `offset..offset+len` lies inside a source of `size` bytes.
pub(crate) fn check_range(what: &dyn Fn() -> String, offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfBounds {
            what: what(),
            offset,
            size: len,
            source_size: size,
        }),
    }
}

/// How many bytes of buffer a tensor's read needs: the tensor, or the
/// `O_DIRECT` blocks that cover it.
pub(crate) fn buffer_len_for(source: &dyn ByteSource, offset: u64, size: u64) -> usize {
    match source.direct_alignment() {
        None => size as usize,
        Some(block) => direct_range(offset, size, block).1,
    }
}

/// The block-aligned range (start, length) that covers `offset..offset+size`.
fn direct_range(offset: u64, size: u64, block: usize) -> (u64, usize) {
    let block = block as u64;
    let start = offset - offset % block;
    let end = (offset + size).div_ceil(block) * block;
    (start, (end - start) as usize)
}
