//! The GGUF index: header, key-value metadata and tensor infos of GGUF v2/v3
//! (little-endian), with each tensor's byte size computed from ggml's block
//! and type sizes.
//!
//! Every count and length read from the file is checked against the bytes
//! left in the file before anything is allocated for it, so a damaged file
//! cannot drive a huge allocation.
//!
//! What ggml refuses, this refuses too (an engine built on ggml could not
//! load it): unknown or removed types, empty or duplicate keys, names of
//! more than 63 bytes, element counts past `i64`, tensors not laid end to
//! end in file order with padding. `scripts/ggml-check.sh` runs ggml's own
//! `test-gguf` generator against both. One difference is deliberate: a file
//! that lacks only the padding after its last tensor is accepted. ggml reads
//! the data section whole, padded to the alignment, and refuses it; every
//! tensor's bytes are present, and a pager reads tensors, not the section.

use std::collections::HashSet;

use super::{IndexFormat, TensorIndex, TensorInfo};
use crate::error::{shown, Error, Result};
use crate::source::ByteSource;

const GGUF_MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;

/// (type id, name, elements per block, bytes per block) of every ggml type
/// in use, as ggml's `ggml_type_traits` of the llama.cpp we build against
/// has them (`scripts/ggml-check.sh` compares the two); the ids of removed
/// types (4, 5, 31-33, 36-38) are refused, as ggml refuses them.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    // Two halves + 32 int8 (`block_q8_1` in ggml-common.h); the PyPI gguf
    // package up to 0.19.0 says 40.
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
    (42, "Q2_0", 64, 18),
];

/// ggml's `GGML_MAX_NAME`: a tensor name has at most 63 bytes (+ NUL).
const MAX_NAME_BYTES: usize = 63;

/// (elements per block, bytes per block) of a ggml type, if the type exists.
pub fn ggml_type_size(ggml_type: u32) -> Option<(u64, u64)> {
    GGML_TYPES
        .iter()
        .find(|t| t.0 == ggml_type)
        .map(|&(_, _, block, bytes)| (block, bytes))
}

/// The name of a ggml type ("Q4_K"), if the type exists.
pub fn ggml_type_name(ggml_type: u32) -> Option<&'static str> {
    GGML_TYPES.iter().find(|t| t.0 == ggml_type).map(|t| t.1)
}

/// A metadata value. Arrays keep their element type and length, and their
/// first few scalar elements, not the whole content (token lists are large).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// f32 or f64.
    Float(f64),
    /// bool.
    Bool(bool),
    /// A UTF-8 string (lossily decoded).
    Str(String),
    /// An array: element type id, length, first elements.
    Array {
        /// GGUF value type of the elements.
        elem_type: u32,
        /// Number of elements.
        len: u64,
        /// Up to 16 first elements (scalars and strings).
        head: Vec<GgufValue>,
    },
}

impl std::fmt::Display for GgufValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GgufValue::Uint(v) => write!(f, "{v}"),
            GgufValue::Int(v) => write!(f, "{v}"),
            GgufValue::Float(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::Str(s) => write!(f, "{s:?}"),
            GgufValue::Array { len, head, .. } => {
                write!(f, "[")?;
                for (i, v) in head.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if (head.len() as u64) < *len {
                    write!(f, ", ... {len} items")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Buffered forward reader over a source that knows how much is left.
struct Cursor<'a> {
    source: &'a dyn ByteSource,
    what: &'a str,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

const CHUNK: usize = 1 << 20;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.source.size().saturating_sub(self.pos)
    }

    fn err(&self, detail: impl Into<String>) -> Error {
        Error::format(self.what, format!("at byte {}: {}", self.pos, detail.into()))
    }

    fn bytes(&mut self, n: u64, field: &str) -> Result<&[u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "{field} needs {n} bytes but the file has {} left",
                self.remaining()
            )));
        }
        let n = n as usize;
        let in_buf =
            self.pos >= self.buf_start && self.pos + n as u64 <= self.buf_start + self.buf.len() as u64;
        if !in_buf {
            let want = (n.max(CHUNK) as u64).min(self.remaining()) as usize;
            self.buf.resize(want, 0);
            self.source.read_exact_at(self.pos, &mut self.buf)?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        self.pos += n as u64;
        Ok(&self.buf[at..at + n])
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.bytes(4, field)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.bytes(8, field)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.u64(field)?;
        let bytes = self.bytes(len, field)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn skip(&mut self, n: u64, field: &str) -> Result<()> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "{field} needs {n} bytes but the file has {} left",
                self.remaining()
            )));
        }
        self.pos += n;
        Ok(())
    }
}

/// Size in bytes of a fixed-size GGUF value type.
fn scalar_size(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn read_scalar(c: &mut Cursor<'_>, value_type: u32, field: &str) -> Result<GgufValue> {
    let b = c.bytes(scalar_size(value_type).expect("scalar type"), field)?;
    Ok(match value_type {
        0 => GgufValue::Uint(b[0] as u64),
        1 => GgufValue::Int(b[0] as i8 as i64),
        2 => GgufValue::Uint(u16::from_le_bytes([b[0], b[1]]) as u64),
        3 => GgufValue::Int(i16::from_le_bytes([b[0], b[1]]) as i64),
        4 => GgufValue::Uint(u32::from_le_bytes(b.try_into().expect("4")) as u64),
        5 => GgufValue::Int(i32::from_le_bytes(b.try_into().expect("4")) as i64),
        6 => GgufValue::Float(f32::from_le_bytes(b.try_into().expect("4")) as f64),
        7 => GgufValue::Bool(b[0] != 0),
        10 => GgufValue::Uint(u64::from_le_bytes(b.try_into().expect("8"))),
        11 => GgufValue::Int(i64::from_le_bytes(b.try_into().expect("8"))),
        _ => GgufValue::Float(f64::from_le_bytes(b.try_into().expect("8"))),
    })
}

fn read_value(c: &mut Cursor<'_>, value_type: u32, key: &str, depth: u32) -> Result<GgufValue> {
    const HEAD: u64 = 16;
    match value_type {
        8 => Ok(GgufValue::Str(c.string(&format!("string value of '{key}'"))?)),
        9 => {
            if depth > 0 {
                return Err(c.err(format!("key '{key}': nested arrays are not GGUF")));
            }
            let elem_type = c.u32(&format!("array type of '{key}'"))?;
            let len = c.u64(&format!("array length of '{key}'"))?;
            if let Some(size) = scalar_size(elem_type) {
                let total = len
                    .checked_mul(size)
                    .ok_or_else(|| c.err(format!("key '{key}': array of {len} elements overflows")))?;
                if total > c.remaining() {
                    return Err(c.err(format!(
                        "key '{key}': array of {len} elements needs {total} bytes but the file has {} left",
                        c.remaining()
                    )));
                }
                let mut head = Vec::new();
                for _ in 0..len.min(HEAD) {
                    head.push(read_scalar(c, elem_type, key)?);
                }
                c.skip((len - len.min(HEAD)) * size, key)?;
                Ok(GgufValue::Array { elem_type, len, head })
            } else if elem_type == 8 || elem_type == 9 {
                // Every element takes at least 8 bytes: refuse absurd counts
                // before looping over them.
                if len > c.remaining() / 8 {
                    return Err(c.err(format!(
                        "key '{key}': array of {len} elements cannot fit in the {} bytes left",
                        c.remaining()
                    )));
                }
                let mut head = Vec::new();
                for i in 0..len {
                    let v = read_value(c, elem_type, key, depth + 1)?;
                    if i < HEAD {
                        head.push(v);
                    }
                }
                Ok(GgufValue::Array { elem_type, len, head })
            } else {
                Err(c.err(format!("key '{key}': unknown array element type {elem_type}")))
            }
        }
        t if scalar_size(t).is_some() => read_scalar(c, t, key),
        t => Err(c.err(format!("key '{key}': unknown value type {t}"))),
    }
}

/// The number of elements of a tensor, if ggml can represent it: every
/// dimension and the product fit an `i64`, checked as ggml checks them (a
/// dimension of 0 or 1 never overflows).
fn element_count(dims: &[u64]) -> Option<u64> {
    let mut count = *dims.first().unwrap_or(&1);
    if count > i64::MAX as u64 {
        return None;
    }
    for &d in dims.iter().skip(1) {
        if d > i64::MAX as u64 || (d > 1 && (i64::MAX as u64) / d < count) {
            return None;
        }
        count *= d;
    }
    Some(count)
}

/// Parses the GGUF header of `source` into a validated index.
pub fn parse(source: &dyn ByteSource) -> Result<TensorIndex> {
    let what = format!("GGUF {}", source.describe());
    let mut c = Cursor {
        source,
        what: &what,
        pos: 0,
        buf: Vec::new(),
        buf_start: 0,
    };
    let magic: [u8; 4] = c.bytes(4, "magic")?.try_into().expect("4 bytes");
    if magic != GGUF_MAGIC {
        return Err(c.err(format!("bad magic {magic:02x?}, expected \"GGUF\"")));
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        return Err(c.err(format!(
            "version {version} is not supported (v2 and v3 are; a big-endian file reads as a huge version)"
        )));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // A key-value pair takes at least 8 + 4 bytes, a tensor info at least
    // 8 + 4 + 8 + 4 + 8: counts that cannot fit are refused before any loop.
    if n_kv > c.remaining() / 12 {
        return Err(c.err(format!(
            "metadata count {n_kv} cannot fit in a {}-byte file",
            source.size()
        )));
    }
    if n_tensors > c.remaining() / 32 {
        return Err(c.err(format!(
            "tensor count {n_tensors} cannot fit in a {}-byte file",
            source.size()
        )));
    }
    let mut metadata = Vec::new();
    let mut keys = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..n_kv {
        let raw_key = c.string(&format!("key of metadata entry {i}"))?;
        // As ggml: a key that is empty or seen before makes the file invalid
        // (a reader would have no one value for it).
        if raw_key.is_empty() {
            return Err(c.err(format!("key of metadata entry {i} is empty")));
        }
        let key = shown(&raw_key);
        if !keys.insert(raw_key.clone()) {
            return Err(c.err(format!("metadata entry {i}: duplicate key '{key}'")));
        }
        let value_type = c.u32(&format!("value type of '{key}'"))?;
        let value = read_value(&mut c, value_type, &key, 0)?;
        let key = raw_key;
        if key == "general.alignment" {
            alignment = match value {
                GgufValue::Uint(a) if value_type == 4 && a != 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(c.err(format!(
                        "general.alignment must be a non-zero power of two u32, found {value} (type {value_type})"
                    )))
                }
            };
        }
        metadata.push((key, value));
    }
    struct Raw {
        name: String,
        dims: Vec<u64>,
        ggml_type: u32,
        rel_offset: u64,
    }
    let mut raws = Vec::new();
    for i in 0..n_tensors {
        let raw_name = c.string(&format!("name of tensor {i}"))?;
        let name = shown(&raw_name);
        if raw_name.len() > MAX_NAME_BYTES {
            return Err(c.err(format!(
                "tensor {i}: name of {} bytes is longer than ggml's {MAX_NAME_BYTES} ('{name}')",
                raw_name.len()
            )));
        }
        let n_dims = c.u32(&format!("dimension count of tensor {i} '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(c.err(format!(
                "tensor {i} '{name}': {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&format!("dimension {d} of tensor {i} '{name}'"))?);
        }
        let ggml_type = c.u32(&format!("type of tensor {i} '{name}'"))?;
        let rel_offset = c.u64(&format!("offset of tensor {i} '{name}'"))?;
        raws.push(Raw {
            name: raw_name,
            dims,
            ggml_type,
            rel_offset,
        });
    }
    let data_start = c.pos.div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(raws.len());
    let mut expected_offset = 0u64;
    for (i, r) in raws.into_iter().enumerate() {
        let label = format!("tensor {i} '{}'", shown(&r.name));
        let (block, type_size) = ggml_type_size(r.ggml_type)
            .ok_or_else(|| Error::format(&what, format!("{label}: unknown ggml type {}", r.ggml_type)))?;
        let n_elements = element_count(&r.dims)
            .ok_or_else(|| Error::format(&what, format!("{label}: dimensions {:?} overflow", r.dims)))?;
        let first_dim = r.dims.first().copied().unwrap_or(1);
        if first_dim % block != 0 {
            return Err(Error::format(
                &what,
                format!(
                    "{label}: first dimension {} is not a multiple of the {}-element block of {}",
                    first_dim,
                    block,
                    ggml_type_name(r.ggml_type).unwrap_or("?")
                ),
            ));
        }
        let size = (n_elements / block)
            .checked_mul(type_size)
            .ok_or_else(|| Error::format(&what, format!("{label}: byte size overflows")))?;
        // As ggml: tensors lie in file order, each at the end of the one
        // before, padded to the alignment (an engine built on ggml cannot
        // load a file with gaps or overlaps).
        if r.rel_offset != expected_offset {
            return Err(Error::format(
                &what,
                format!(
                    "{label}: offset {} in the data section, expected {expected_offset} (tensors lie in order, each padded to {alignment})",
                    r.rel_offset
                ),
            ));
        }
        expected_offset = size
            .checked_next_multiple_of(alignment)
            .and_then(|padded| expected_offset.checked_add(padded))
            .ok_or_else(|| Error::format(&what, format!("{label}: data section size overflows")))?;
        let offset = data_start
            .checked_add(r.rel_offset)
            .ok_or_else(|| Error::format(&what, format!("{label}: offset {} overflows", r.rel_offset)))?;
        tensors.push(TensorInfo {
            name: r.name,
            offset,
            size,
            ggml_type: Some(r.ggml_type),
            dims: r.dims,
            dtype: ggml_type_name(r.ggml_type).map(str::to_owned),
        });
    }
    Ok(TensorIndex::new(IndexFormat::Gguf, tensors, source.size(), &what)?.with_metadata(metadata))
}
