//! A read-only mapping of a file, for zero-copy tensors.
//!
//! The SIGBUS hazard: if another process truncates the file while it is
//! mapped, touching a page past the new end raises SIGBUS. The source checks
//! the file's size and modification time before every access it makes (index
//! parse, page-in, copies) and refuses a changed file, which narrows the
//! window to a truncation racing one read; a pager that must survive
//! hostile truncation should use pread mode.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, UncheckedAdvice};

use super::file::FileIdentity;
use super::ByteSource;
use crate::error::{Error, Result};

/// A read-only mapping of a whole file.
#[derive(Debug)]
pub struct MmapSource {
    map: Option<Mmap>,
    file: File,
    path: PathBuf,
    identity: FileIdentity,
}

impl MmapSource {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| Error::from_io(format!("open of '{}'", path.display()), &e))?;
        let identity = FileIdentity::of(&file, path)?;
        let map = if identity.size() == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only and private to this source; a
            // concurrent truncation is the documented SIGBUS hazard above,
            // narrowed by verify_unchanged before every access.
            Some(
                unsafe { Mmap::map(&file) }
                    .map_err(|e| Error::from_io(format!("mmap of '{}'", path.display()), &e))?,
            )
        };
        Ok(MmapSource {
            map,
            file,
            path: path.to_owned(),
            identity,
        })
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl ByteSource for MmapSource {
    fn size(&self) -> u64 {
        self.identity.size()
    }

    fn describe(&self) -> String {
        format!("file '{}' (mapped)", self.path.display())
    }

    fn io_description(&self) -> String {
        "mmap (the kernel, not the budget, decides which pages stay)".to_owned()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let what = || format!("read from {}", self.describe());
        super::check_range(&what, offset, buf.len() as u64, self.size())?;
        self.verify_unchanged()?;
        let start = offset as usize;
        buf.copy_from_slice(&self.bytes()[start..start + buf.len()]);
        Ok(())
    }

    fn verify_unchanged(&self) -> Result<()> {
        self.identity.verify(&self.file, &self.path)
    }

    fn mapped(&self) -> Option<&[u8]> {
        Some(self.bytes())
    }

    fn advise_willneed(&self, offset: u64, len: u64) {
        if let Some(map) = &self.map {
            // Advice is only a hint: a failure changes nothing we rely on.
            let _ = map.advise_range(Advice::WillNeed, offset as usize, len as usize);
        }
    }

    fn advise_dontneed(&self, offset: u64, len: u64) {
        let Some(map) = &self.map else { return };
        // Only whole pages inside the range: a page shared with a neighbour
        // tensor stays, so the neighbour is not dropped behind our back.
        let page = 4096u64;
        let start = offset.div_ceil(page) * page;
        let end = (offset + len) / page * page;
        if end > start {
            // SAFETY: the mapping is private and read-only, so dropping its
            // pages loses nothing: a later access faults them back in from
            // the file. No reference into these pages is handed out while
            // DONTNEED runs (the pager only advises on evicted tensors).
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, start as usize, (end - start) as usize)
            };
        }
    }
}
