//! Where tensors live: the tensor table built from a GGUF file, a safetensors
//! file, or an explicit list of (name, offset, size).
//!
//! An index is validated against the size of its source when it is built:
//! every tensor lies inside the source, names are unique, nothing overflows.
//! It holds no file handle and does no I/O of its own beyond parsing.

pub mod gguf;
pub mod safetensors;

use std::collections::HashMap;

use crate::error::{Error, Result};

pub use gguf::{ggml_type_name, ggml_type_size, GgufValue};

/// Which format a tensor table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexFormat {
    /// A GGUF file (v2 or v3).
    Gguf,
    /// A safetensors file.
    Safetensors,
    /// An explicit table given by the caller.
    Table,
}

/// One tensor of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name as stored in the file (`blk.0.attn_q.weight`).
    pub name: String,
    /// Absolute byte offset in the source.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// GGUF tensor type id, if the tensor comes from a GGUF file.
    pub ggml_type: Option<u32>,
    /// Dimensions, innermost first for GGUF, as stored for safetensors.
    pub dims: Vec<u64>,
    /// Element type name ("Q4_K", "F16", "BF16", ...), if known.
    pub dtype: Option<String>,
}

/// A validated tensor table: tensors numbered 0..n in file order.
#[derive(Debug, Clone)]
pub struct TensorIndex {
    format: IndexFormat,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, u32>,
    metadata: Vec<(String, GgufValue)>,
    source_size: u64,
}

impl TensorIndex {
    /// Builds an index from tensors in file order, validating each against
    /// `source_size`. `what` names the source in error messages.
    pub fn new(format: IndexFormat, tensors: Vec<TensorInfo>, source_size: u64, what: &str) -> Result<Self> {
        if tensors.len() >= u32::MAX as usize {
            return Err(Error::format(
                what,
                format!("{} tensors is more than a u32 id can number", tensors.len()),
            ));
        }
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            // An offset + size that overflows reaches past the end as surely
            // as one that does not: one fault, one status.
            if !matches!(t.offset.checked_add(t.size), Some(end) if end <= source_size) {
                return Err(Error::OutOfBounds {
                    what: format!("{what}: tensor {i} '{}'", t.name),
                    offset: t.offset,
                    size: t.size,
                    source_size,
                });
            }
            if by_name.insert(t.name.clone(), i as u32).is_some() {
                return Err(Error::format(
                    what,
                    format!("tensor {i}: duplicate name '{}'", t.name),
                ));
            }
        }
        Ok(TensorIndex {
            format,
            tensors,
            by_name,
            metadata: Vec::new(),
            source_size,
        })
    }

    /// Builds an index from an explicit (name, offset, size) table.
    pub fn from_table<S: AsRef<str>>(entries: &[(S, u64, u64)], source_size: u64) -> Result<Self> {
        let tensors = entries
            .iter()
            .enumerate()
            .map(|(i, (name, offset, size))| {
                let name = name.as_ref();
                if name.is_empty() {
                    return Err(Error::format("tensor table", format!("entry {i}: empty name")));
                }
                Ok(TensorInfo {
                    name: name.to_owned(),
                    offset: *offset,
                    size: *size,
                    ggml_type: None,
                    dims: vec![*size],
                    dtype: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(IndexFormat::Table, tensors, source_size, "tensor table")
    }

    pub(crate) fn with_metadata(mut self, metadata: Vec<(String, GgufValue)>) -> Self {
        self.metadata = metadata;
        self
    }

    /// The format the table came from.
    pub fn format(&self) -> IndexFormat {
        self.format
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor by id.
    pub fn get(&self, id: u32) -> Option<&TensorInfo> {
        self.tensors.get(id as usize)
    }

    /// The id of a tensor by name.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Key/value metadata (GGUF key-value pairs, safetensors `__metadata__`).
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// Size in bytes of the source the index was validated against.
    pub fn source_size(&self) -> u64 {
        self.source_size
    }

    /// Size of the largest tensor.
    pub fn largest_tensor(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).max().unwrap_or(0)
    }

    /// The order in which a forward pass touches the tensors, read from
    /// `blk.N.` names: tensors before the first block (embeddings) first,
    /// then block by block (file order within a block), then the rest
    /// (output norm, output). Without block names, file order.
    pub fn forward_order(&self) -> Vec<u32> {
        let mut seen_block = false;
        let mut keyed: Vec<(u64, u32)> = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let key = match block_of(&t.name) {
                    Some(n) => {
                        seen_block = true;
                        n + 1
                    }
                    None if seen_block => u64::MAX,
                    None => 0,
                };
                (key, i as u32)
            })
            .collect();
        keyed.sort_by_key(|&(key, _)| key);
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    /// Sum of all tensor sizes.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).sum()
    }
}

/// The block number N of a `blk.N.` tensor name.
pub fn block_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("blk.")?;
    rest.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_past_end_is_out_of_bounds() {
        let err = TensorIndex::from_table(&[("a", 0u64, 8u64), ("b", 8, 16)], 20).unwrap_err();
        assert_eq!(err.status(), crate::Status::PAGER_ERR_OUT_OF_BOUNDS);
        assert!(err.to_string().contains("tensor 1 'b'"), "{err}");
    }

    #[test]
    fn table_duplicate_names_are_refused() {
        let err = TensorIndex::from_table(&[("a", 0u64, 8u64), ("a", 8, 8)], 20).unwrap_err();
        assert_eq!(err.status(), crate::Status::PAGER_ERR_FORMAT);
    }

    #[test]
    fn table_overflow_is_out_of_bounds() {
        let err = TensorIndex::from_table(&[("a", u64::MAX - 4, 100u64)], 20).unwrap_err();
        assert_eq!(err.status(), crate::Status::PAGER_ERR_OUT_OF_BOUNDS);
    }

    #[test]
    fn forward_order_groups_blocks() {
        let names = [
            "token_embd",
            "blk.1.a",
            "blk.0.a",
            "blk.0.b",
            "output",
            "blk.10.a",
            "blk.2.a",
        ];
        let table: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, i as u64, 1u64))
            .collect();
        let idx = TensorIndex::from_table(&table, 10).unwrap();
        let order: Vec<&str> = idx.forward_order().iter().map(|&i| names[i as usize]).collect();
        assert_eq!(
            order,
            [
                "token_embd",
                "blk.0.a",
                "blk.0.b",
                "blk.1.a",
                "blk.2.a",
                "blk.10.a",
                "output"
            ]
        );
    }

    #[test]
    fn table_lookup_by_name() {
        let idx = TensorIndex::from_table(&[("a", 0u64, 8u64), ("b", 8, 8)], 16).unwrap();
        assert_eq!(idx.find("b"), Some(1));
        assert_eq!(idx.find("c"), None);
        assert_eq!(idx.largest_tensor(), 8);
    }
}
