//! Bytes already in memory: for tests, fuzzing, and engines that hold a
//! model blob themselves.

use super::ByteSource;
use crate::error::Result;

/// A source over an owned byte vector.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    bytes: Vec<u8>,
}

impl MemorySource {
    /// A source over `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemorySource { bytes }
    }
}

impl ByteSource for MemorySource {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn describe(&self) -> String {
        format!("memory ({} bytes)", self.bytes.len())
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let what = || format!("read from {}", self.describe());
        super::check_range(&what, offset, buf.len() as u64, self.size())?;
        let start = offset as usize;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }
}
