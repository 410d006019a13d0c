//! Synthetic llama-shaped models for the demo, the benchmarks and `plan`:
//! a GGUF v3 writer for tensors of real shapes and quant types filled with
//! seeded pseudo-random bytes. (Test fixtures come from llama.cpp's own
//! `gguf` package; the tests check this writer against its reader too.)

use std::io::{BufWriter, Write};
use std::path::Path;

use layerpager::index::ggml_type_size;
use layerpager::{Error, Result};

/// A tensor to write: name, ggml type id, dimensions (innermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthTensor {
    /// Tensor name.
    pub name: String,
    /// ggml type id (12 = Q4_K, ...).
    pub ggml_type: u32,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
}

impl SynthTensor {
    /// Size in bytes of the tensor's data.
    pub fn size(&self) -> u64 {
        let (block, bytes) = ggml_type_size(self.ggml_type).expect("known ggml type");
        self.dims.iter().product::<u64>() / block * bytes
    }
}

/// The shape of a llama-style decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaShape {
    /// Number of blocks.
    pub layers: u32,
    /// Model width.
    pub dim: u64,
    /// Feed-forward width.
    pub ff: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// ggml type of the big matrices.
    pub ggml_type: u32,
}

impl LlamaShape {
    /// The demo's model: 9 blocks of a 2048-wide Q4_K llama, about 300 MB.
    pub const DEMO: LlamaShape = LlamaShape {
        layers: 9,
        dim: 2048,
        ff: 5632,
        vocab: 16000,
        ggml_type: 12,
    };

    /// The tensors of the model in llama.cpp's file order.
    pub fn tensors(&self) -> Vec<SynthTensor> {
        let t = |name: String, ggml_type: u32, dims: &[u64]| SynthTensor {
            name,
            ggml_type,
            dims: dims.to_vec(),
        };
        let (d, f, q) = (self.dim, self.ff, self.ggml_type);
        let mut out = vec![t("token_embd.weight".into(), q, &[d, self.vocab])];
        for i in 0..self.layers {
            out.push(t(format!("blk.{i}.attn_norm.weight"), 0, &[d]));
            for m in ["attn_q", "attn_k", "attn_v", "attn_output"] {
                out.push(t(format!("blk.{i}.{m}.weight"), q, &[d, d]));
            }
            out.push(t(format!("blk.{i}.ffn_norm.weight"), 0, &[d]));
            out.push(t(format!("blk.{i}.ffn_gate.weight"), q, &[d, f]));
            out.push(t(format!("blk.{i}.ffn_up.weight"), q, &[d, f]));
            out.push(t(format!("blk.{i}.ffn_down.weight"), q, &[f, d]));
        }
        out.push(t("output_norm.weight".into(), 0, &[d]));
        out.push(t("output.weight".into(), 14, &[d, self.vocab]));
        out
    }
}

/// Writes `tensors` as a GGUF v3 file with the given data alignment,
/// calling `progress` with the bytes of tensor data written so far. Returns
/// the file's size.
pub fn write_gguf(
    path: &Path,
    tensors: &[SynthTensor],
    alignment: u64,
    mut progress: impl FnMut(u64),
) -> Result<u64> {
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(Error::InvalidArgument(format!(
            "alignment {alignment} is not a power of two"
        )));
    }
    let io = |e: std::io::Error| Error::from_io(format!("write of '{}'", path.display()), &e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let mut header = Vec::new();
    let put_str = |h: &mut Vec<u8>, s: &str| {
        h.extend_from_slice(&(s.len() as u64).to_le_bytes());
        h.extend_from_slice(s.as_bytes());
    };
    header.extend_from_slice(b"GGUF");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&3u64.to_le_bytes());
    put_str(&mut header, "general.architecture");
    header.extend_from_slice(&8u32.to_le_bytes());
    put_str(&mut header, "llama");
    put_str(&mut header, "general.name");
    header.extend_from_slice(&8u32.to_le_bytes());
    put_str(&mut header, "layerpager synthetic model");
    put_str(&mut header, "general.alignment");
    header.extend_from_slice(&4u32.to_le_bytes());
    header.extend_from_slice(&(alignment as u32).to_le_bytes());
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut header, &t.name);
        header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            header.extend_from_slice(&d.to_le_bytes());
        }
        header.extend_from_slice(&t.ggml_type.to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.size()).div_ceil(alignment) * alignment;
    }
    let padded = (header.len() as u64).div_ceil(alignment) * alignment;
    header.resize(padded as usize, 0);
    w.write_all(&header).map_err(io)?;
    let mut written = 0u64;
    let mut chunk = vec![0u8; 1 << 20];
    for (i, t) in tensors.iter().enumerate() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let size = t.size();
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            for word in chunk[..n].chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                word.copy_from_slice(&rng.to_le_bytes()[..word.len()]);
            }
            w.write_all(&chunk[..n]).map_err(io)?;
            left -= n as u64;
            written += n as u64;
            progress(written);
        }
        let pad = (size.div_ceil(alignment) * alignment - size) as usize;
        w.write_all(&vec![0u8; pad]).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(padded + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_model_is_a_few_hundred_megabytes() {
        let total: u64 = LlamaShape::DEMO.tensors().iter().map(SynthTensor::size).sum();
        assert!((250 << 20..400 << 20).contains(&total), "{total}");
    }

    #[test]
    fn written_model_opens_with_the_right_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let shape = LlamaShape {
            layers: 2,
            dim: 256,
            ff: 512,
            vocab: 64,
            ggml_type: 12,
        };
        let tensors = shape.tensors();
        let size = write_gguf(&path, &tensors, 64, |_| {}).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        let pager = layerpager::Pager::open_gguf(&path, Default::default()).unwrap();
        assert_eq!(pager.tensor_count(), tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let info = pager.info(i as u32).unwrap();
            assert_eq!((info.name.as_str(), info.size), (t.name.as_str(), t.size()));
            assert_eq!(info.offset % 64, 0);
        }
    }
}
