//! A file read with positioned reads on one descriptor opened once, and
//! the raw references a pager is measured against (a pread sweep, the
//! device's O_DIRECT speed).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Instant;

use super::batch::QUEUE_DEPTH;
use super::{BatchTarget, ByteSource, ReadQueue, Request, TensorBuffer};
use crate::error::{Error, Result};

/// What identifies the file the index was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileIdentity {
    pub(crate) fn of(file: &File, path: &Path) -> Result<Self> {
        let m = file
            .metadata()
            .map_err(|e| Error::from_io(format!("stat of '{}'", path.display()), &e))?;
        if m.is_dir() {
            // Said at open, not as an odd failure of the first read.
            return Err(Error::from_errno(
                format!("open of '{}'", path.display()),
                libc::EISDIR,
            ));
        }
        Ok(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }

    pub(crate) fn verify(&self, file: &File, path: &Path) -> Result<()> {
        let now = FileIdentity::of(file, path)?;
        if now == *self {
            return Ok(());
        }
        let what = if now.size != self.size {
            format!("size changed from {} to {} bytes", self.size, now.size)
        } else {
            "modified since it was opened".to_owned()
        };
        Err(Error::Io {
            context: format!("file '{}'", path.display()),
            errno: libc::ESTALE,
            message: format!("{what}; refusing to read weights from a changed file"),
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

/// Direct I/O alignment: the page size covers every logical block size in use.
const DIRECT_ALIGNMENT: usize = 4096;

/// A file read with `pread` (optionally `O_DIRECT`) on one descriptor.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    identity: FileIdentity,
    /// A second descriptor opened with `O_DIRECT`, for aligned tensor reads;
    /// `file` serves the header parse and any unaligned read.
    direct: Option<File>,
    /// Drop what plain reads bring into the page cache (see
    /// [`ByteSource::set_drop_behind`]).
    drop_behind: AtomicBool,
    /// Never drop behind: the file fits in memory beside the budget.
    keep_cache: bool,
    /// The lease on a staging area while `O_DIRECT` reads are staged
    /// ([`ByteSource::stage_direct_reads`]).
    staging: std::sync::Mutex<Option<super::staging::Lease>>,
    staged: AtomicBool,
}

impl FileSource {
    /// Opens `path` for positioned reads through the page cache. The kernel
    /// reads nothing ahead of them until [`ByteSource::set_drop_behind`]
    /// says how the file is read (a pager does when it opens): `false`
    /// gives the kernel's read-ahead back.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, false)
    }

    /// Opens `path` for reads through the page cache that never drop
    /// behind, even under a budget: for a file that fits in the memory
    /// left beside the budget, where the cache costs nothing and serves
    /// every pass after the first.
    pub fn open_keeping_cache(path: &Path) -> Result<Self> {
        let mut f = Self::open_with(path, false)?;
        f.keep_cache = true;
        Ok(f)
    }

    /// Opens `path` with `O_DIRECT`; where the file system refuses it
    /// (`EINVAL`, e.g. tmpfs), opens it for plain reads instead.
    pub fn open_direct(path: &Path) -> Result<Self> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, direct: bool) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| Error::from_io(format!("open of '{}'", path.display()), &e))?;
        let identity = FileIdentity::of(&file, path)?;
        let direct = if direct {
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => {
                    identity.verify(&f, path)?;
                    Some(f)
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
                Err(e) => {
                    return Err(Error::from_io(
                        format!("open of '{}' with O_DIRECT", path.display()),
                        &e,
                    ))
                }
            }
        } else {
            None
        };
        // No read-ahead until `set_drop_behind` says how the file is read:
        // the header is read without the kernel reading megabytes behind it
        // into the page cache, where a budget would not count them. Advice
        // only: a failure changes nothing we rely on.
        let _ = advise_whole_file(&file, libc::POSIX_FADV_RANDOM);
        Ok(FileSource {
            staging: std::sync::Mutex::new(None),
            staged: AtomicBool::new(false),
            file,
            path: path.to_owned(),
            identity,
            direct,
            drop_behind: AtomicBool::new(false),
            keep_cache: false,
        })
    }

    /// A plain read of `buf.len()` bytes at `offset` (fewer only at the end
    /// of the file), in chunks each dropped from the page cache once read
    /// when drop-behind is on.
    fn pread_dropping(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let target = BatchTarget {
            fd: self.file.as_raw_fd(),
            block: None,
            drop_behind: self.drop_behind.load(Ordering::Relaxed),
            staged: false,
        };
        let iov = vec![libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        }];
        // The same chunked read (and drop) as a reader's request.
        super::batch::read_rest(target, &Request { tag: 0, offset, iov }, 0)
    }

    /// Whether reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ByteSource for FileSource {
    fn size(&self) -> u64 {
        self.identity.size()
    }

    fn describe(&self) -> String {
        format!("file '{}'", self.path.display())
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let what = || format!("read from {}", self.describe());
        super::check_range(&what, offset, buf.len() as u64, self.size())?;
        let done = self.pread_dropping(offset, buf).map_err(|e| {
            Error::from_io(
                format!(
                    "read of {} bytes at offset {} from {}",
                    buf.len(),
                    offset,
                    self.describe()
                ),
                &e,
            )
        })?;
        if done < buf.len() {
            return Err(Error::Io {
                context: format!(
                    "read of {} bytes at offset {} from {}",
                    buf.len(),
                    offset,
                    self.describe()
                ),
                errno: 0,
                message: format!("short read: end of file after {done} bytes"),
            });
        }
        Ok(())
    }

    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let Some(direct) = &self.direct else {
            let len = self.size().saturating_sub(offset).min(buf.len() as u64) as usize;
            self.read_exact_at(offset, &mut buf[..len])?;
            return Ok(len);
        };
        let read = if self.staged.load(Ordering::Relaxed) {
            pread_staged(direct, offset, buf)
        } else {
            pread_full(direct, offset, buf)
        };
        read.map_err(|e| {
            Error::from_io(
                format!(
                    "direct read of {} bytes at offset {} from {}",
                    buf.len(),
                    offset,
                    self.describe()
                ),
                &e,
            )
        })
    }

    fn copies_from_page_cache(&self) -> bool {
        self.direct.is_none() && !self.drop_behind.load(Ordering::Relaxed)
    }

    fn io_description(&self) -> String {
        let staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lease) = staging.as_ref() {
            format!(
                "O_DIRECT (no page cache) through {} MiB of staging huge pages",
                (lease.pages() as u64 * super::STAGING_PAGE_BYTES) >> 20
            )
        } else if self.direct.is_some() {
            "O_DIRECT (no page cache)".to_owned()
        } else if self.drop_behind.load(Ordering::Relaxed) {
            "pread, page cache dropped behind each read".to_owned()
        } else if self.keep_cache {
            "pread through the page cache (the file fits in memory beside the budget)".to_owned()
        } else {
            "pread through the page cache".to_owned()
        }
    }

    fn verify_unchanged(&self) -> Result<()> {
        self.identity.verify(&self.file, &self.path)
    }

    fn direct_alignment(&self) -> Option<usize> {
        self.direct.as_ref().map(|_| DIRECT_ALIGNMENT)
    }

    fn batch_target(&self) -> Option<BatchTarget> {
        Some(BatchTarget {
            fd: self.direct.as_ref().unwrap_or(&self.file).as_raw_fd(),
            block: self.direct_alignment(),
            drop_behind: self.direct.is_none() && self.drop_behind.load(Ordering::Relaxed),
            staged: self.staged.load(Ordering::Relaxed),
        })
    }

    fn stage_direct_reads(&self, pages: usize) -> usize {
        let mut lease = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        let had = lease.as_ref().map_or(0, |l| l.pages());
        if pages == 0 || self.direct.is_none() {
            *lease = None;
        } else if had != pages.min(super::MOST_STAGING_PAGES) {
            // The old area goes first (when its slots in flight come back):
            // both at once could pass a memory limit set for one. Fewer huge
            // pages than asked for are better than none.
            *lease = None;
            *lease = super::staging::attach(pages).or_else(|| super::staging::attach(1));
        }
        let staged = lease.as_ref().map_or(0, |l| l.pages());
        self.staged.store(staged > 0, Ordering::Relaxed);
        staged
    }

    fn set_drop_behind(&self, on: bool) {
        let on = on && !self.keep_cache;
        let was = self.drop_behind.swap(on, Ordering::Relaxed);
        if on && !was {
            // What the page cache holds of the file now (the header's reads,
            // the engine's own reads of it, and the kernel's read-ahead
            // behind those: 6 MiB of a 1.33 GiB model on a disk that reads
            // 8 MiB ahead) would stay charged to the engine's memory cgroup,
            // counted by no budget: dropped (pages someone maps stay).
            let _ = advise_whole_file(&self.file, libc::POSIX_FADV_DONTNEED);
        }
        // The kernel's own read-ahead would fill the page cache past the
        // chunk being dropped: off while dropping behind (the pager reads
        // whole tensors in large preads and reads ahead itself).
        let advice = if on {
            libc::POSIX_FADV_RANDOM
        } else {
            libc::POSIX_FADV_NORMAL
        };
        let _ = advise_whole_file(&self.file, advice);
    }
}

/// `posix_fadvise` over the whole of `file`; the error code where it fails.
fn advise_whole_file(file: &File, advice: libc::c_int) -> std::result::Result<(), libc::c_int> {
    // SAFETY: a valid descriptor owned by `file` for the duration of the
    // call; advice changes no memory of ours.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, advice) } {
        0 => Ok(()),
        rc => Err(rc),
    }
}

/// Drops the file's pages from the OS page cache (`posix_fadvise
/// DONTNEED`), so that the next read of it comes from the device.
pub fn drop_page_cache(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::from_io(format!("open of '{}'", path.display()), &e))?;
    advise_whole_file(&file, libc::POSIX_FADV_DONTNEED)
        .map_err(|rc| Error::from_errno(format!("posix_fadvise of '{}'", path.display()), rc))
}

/// Reads the whole file sequentially with `pread` in `chunk`-byte reads:
/// the physical reference a pager is measured against. Returns the bytes
/// read.
pub fn raw_pread_sweep(path: &Path, chunk: usize) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::from_io(format!("open of '{}'", path.display()), &e))?;
    let mut buf = vec![0u8; chunk.max(4096)];
    let mut offset = 0u64;
    loop {
        let n = pread_full(&file, offset, &mut buf)
            .map_err(|e| Error::from_io(format!("read of '{}'", path.display()), &e))?;
        offset += n as u64;
        if n < buf.len() {
            return Ok(offset);
        }
    }
}

/// What the device gives a file: the best raw `O_DIRECT` read speed over
/// the queue depths tried, the physical bound a pager is measured against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawSpeed {
    /// Bytes per second at the best depth.
    pub bytes_per_second: f64,
    /// The depth that gave it (requests in flight).
    pub depth: usize,
    /// Bytes each request read.
    pub request_bytes: usize,
    /// Whether the requests went through io_uring (else one at a time).
    pub io_uring: bool,
}

/// Request size of [`raw_direct_speed`]: large enough that the device, not
/// the round trip, sets the speed.
const PROBE_REQUEST: usize = 2 << 20;
/// The most bytes each depth reads: a model of many GiB is sampled.
const PROBE_BYTES: u64 = 256 << 20;

/// Measures how fast the device reads `path` with `O_DIRECT` (no page
/// cache): sequential 2 MiB requests at depths 1, 2, 4 and 8, each depth
/// over its own quarter of the file (up to 256 MiB) where that is at least
/// 64 MiB, else over the whole file; returns the best. The buffers are 2
/// MiB anonymous mappings, huge pages where the kernel gives them: on a
/// virtual disk (virtio) a read into one huge page is one segment, and ran
/// 2.5-3x faster than into 4 KiB pages (1.2 GB/s with `dd iflag=direct`).
/// Where the file system refuses `O_DIRECT` (tmpfs), plain reads of a file
/// whose page cache was dropped first.
pub fn raw_direct_speed(path: &std::path::Path) -> Result<RawSpeed> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let open = |direct: bool| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
    };
    let io_err = |e: std::io::Error| Error::from_io(format!("open of '{}'", path.display()), &e);
    let (file, direct) = match open(true) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(false).map_err(io_err)?, false),
        Err(e) => return Err(io_err(e)),
    };
    let size = file.metadata().map_err(io_err)?.len();
    let depths = [1usize, 2, 4, 8];
    // Each depth reads a quarter of its own (up to 256 MiB) where a quarter
    // is at least 64 MiB, so that no depth reads what a cache below the
    // page cache (a virtual disk's host) still holds from the one before; a
    // smaller file is read whole at each depth.
    let quarter = size / depths.len() as u64;
    let own = quarter >= 64 << 20;
    let stretch = if own { quarter.min(PROBE_BYTES) } else { size };
    let requests = stretch.div_ceil(PROBE_REQUEST as u64).max(1) as usize;
    let target = BatchTarget {
        fd: file.as_raw_fd(),
        block: direct.then_some(4096),
        drop_behind: !direct,
        staged: false,
    };
    let mut buffers: Vec<TensorBuffer> = (0..QUEUE_DEPTH)
        .map(|_| TensorBuffer::allocate(PROBE_REQUEST, 4096))
        .collect::<Result<_>>()?;
    let mut best: Option<RawSpeed> = None;
    for (n, depth) in depths.into_iter().enumerate() {
        let first = if own { n as u64 * quarter / 4096 * 4096 } else { 0 };
        if !direct {
            drop_page_cache(path)?;
        }
        let mut queue = ReadQueue::new();
        let io_uring = queue.has_ring() && direct;
        let started = Instant::now();
        let (mut next, mut bytes) = (0usize, 0u64);
        let mut free: Vec<usize> = (0..depth).collect();
        loop {
            while next < requests && queue.in_flight() < depth {
                let b = free.pop().expect("one buffer per request in flight");
                let iov = vec![libc::iovec {
                    iov_base: buffers[b].as_mut_slice().as_mut_ptr() as *mut libc::c_void,
                    iov_len: PROBE_REQUEST,
                }];
                let offset = first + next as u64 * PROBE_REQUEST as u64;
                queue.submit(
                    target,
                    Request {
                        tag: b as u64,
                        offset,
                        iov,
                    },
                );
                next += 1;
            }
            let Some(done) = queue.wait() else { break };
            bytes += done.result? as u64;
            free.push(done.tag as usize);
        }
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let speed = RawSpeed {
            bytes_per_second: bytes as f64 / seconds,
            depth,
            request_bytes: PROBE_REQUEST,
            io_uring,
        };
        if best.map_or(true, |b| speed.bytes_per_second > b.bytes_per_second) {
            best = Some(speed);
        }
        if !io_uring {
            // One at a time whatever the depth: one measure says it all.
            break;
        }
    }
    Ok(best.expect("at least one depth measured"))
}

/// An `O_DIRECT` read of `buf` (aligned) through a slot of the staging
/// page, a slot at a time, where one is free; else straight into `buf`.
/// The part of a buffer laid out in huge pages (`buffer::huge_page_head`)
/// is read into straight away (a copy would gain nothing), and only its
/// partial last 2 MiB through a slot.
fn pread_staged(direct: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let head = super::buffer::huge_page_head(buf.as_ptr(), buf.len());
    let mut done = 0usize;
    if head > 0 {
        done = pread_full(direct, offset, &mut buf[..head])?;
        if done < head || done == buf.len() {
            return Ok(done);
        }
    }
    let rest = buf.len() - done;
    let Some(mut slot) = super::staging::take(rest.min(super::staging::MAX_STAGED_BYTES)) else {
        return Ok(done + pread_full(direct, offset + done as u64, &mut buf[done..])?);
    };
    while done < buf.len() {
        let len = (buf.len() - done).min(slot.len());
        let n = pread_full(direct, offset + done as u64, slot.bytes_mut(len))?;
        buf[done..done + n].copy_from_slice(slot.bytes(n));
        done += n;
        if n < len {
            break;
        }
    }
    Ok(done)
}

/// `pread` until `buf` is full or the end of the file; returns bytes read.
fn pread_full(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TensorBuffer;
    use std::io::Write;

    #[test]
    fn a_staged_direct_read_into_huge_pages_lands_its_partial_last_one_right() {
        const MIB: usize = 1 << 20;
        let bytes: Vec<u8> = (0..6 * MIB).map(|i| (i * 13 % 251) as u8).collect();
        // Beside the build, not in a tmpfs that refuses O_DIRECT.
        let mut f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        f.write_all(&bytes).unwrap();
        f.flush().unwrap();
        let source = FileSource::open_direct(f.path()).unwrap();
        let Some(block) = source.direct_alignment() else {
            return; // no O_DIRECT on this file system: nothing staged
        };
        for pages in [1, 0] {
            source.stage_direct_reads(pages);
            // Straight into the huge page, the rest through a slot (or,
            // unstaged, straight in); a tail a slot does not hold; none.
            for len in [2 * MIB + (300 << 10), 2 * MIB + (1100 << 10), 4 * MIB] {
                let mut buf = TensorBuffer::allocate(len, block).unwrap();
                buf.as_mut_slice().fill(0);
                let n = source.read_direct_at(block as u64, buf.as_mut_slice()).unwrap();
                assert_eq!(n, len);
                assert!(
                    buf.as_mut_slice() == &bytes[block..block + len],
                    "{len} bytes, {pages} pages"
                );
            }
        }
    }
}
