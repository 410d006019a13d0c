//! A file read with positioned reads on one descriptor opened once.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{BatchTarget, ByteSource};
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
}

/// Plain reads that drop behind themselves go in chunks of this size, so
/// that at most one chunk sits in the page cache at a time.
pub(super) const DROP_BEHIND_CHUNK: usize = 1 << 20;

impl FileSource {
    /// Opens `path` for positioned reads through the page cache.
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
        Ok(FileSource {
            file,
            path: path.to_owned(),
            identity,
            direct,
            drop_behind: AtomicBool::new(false),
            keep_cache: false,
        })
    }

    /// `pread_full`, in chunks each dropped from the page cache once read
    /// when drop-behind is on.
    fn pread_dropping(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.drop_behind.load(Ordering::Relaxed) {
            return pread_full(&self.file, offset, buf);
        }
        let mut done = 0usize;
        for chunk in buf.chunks_mut(DROP_BEHIND_CHUNK) {
            let at = offset + done as u64;
            let n = pread_full(&self.file, at, chunk)?;
            // SAFETY: a valid descriptor owned by `self.file`; advice only,
            // a failure changes nothing we rely on.
            let _ = unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    at as libc::off_t,
                    n as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
            done += n;
            if n < chunk.len() {
                break;
            }
        }
        Ok(done)
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
        pread_full(direct, offset, buf).map_err(|e| {
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
        if self.direct.is_some() {
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
        })
    }

    fn set_drop_behind(&self, on: bool) {
        let on = on && !self.keep_cache;
        self.drop_behind.store(on, Ordering::Relaxed);
        // The kernel's own read-ahead would fill the page cache past the
        // chunk being dropped: off while dropping behind (the pager reads
        // whole tensors in large preads and reads ahead itself).
        let advice = if on {
            libc::POSIX_FADV_RANDOM
        } else {
            libc::POSIX_FADV_NORMAL
        };
        // SAFETY: a valid descriptor owned by `self.file`; advice only.
        let _ = unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, advice) };
    }
}

/// Drops the file's pages from the OS page cache (`posix_fadvise
/// DONTNEED`), so that the next read of it comes from the device.
pub fn drop_page_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = File::open(path).map_err(|e| Error::from_io(format!("open of '{}'", path.display()), &e))?;
    // SAFETY: a valid descriptor owned by `file` for the duration of the call.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(Error::from_errno(
            format!("posix_fadvise of '{}'", path.display()),
            rc,
        ));
    }
    Ok(())
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
