//! The safetensors index: the JSON header parsed and validated by the
//! `safetensors` crate, offsets made absolute, tensors in file order.

use std::collections::BTreeMap;

use safetensors::tensor::Metadata;

use super::{GgufValue, IndexFormat, TensorIndex, TensorInfo};
use crate::error::{Error, Result};
use crate::source::ByteSource;

/// The `safetensors` crate's limit on the JSON header.
const MAX_HEADER: u64 = 100_000_000;

/// Parses the header of `source` into a validated index.
pub fn parse(source: &dyn ByteSource) -> Result<TensorIndex> {
    let what = format!("safetensors {}", source.describe());
    let size = source.size();
    if size < 8 {
        return Err(Error::format(
            &what,
            format!("{size}-byte file is shorter than the 8-byte header length"),
        ));
    }
    let mut len = [0u8; 8];
    source.read_exact_at(0, &mut len)?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > size - 8 {
        return Err(Error::format(
            &what,
            format!("header length {n} exceeds the file ({size} bytes) or the 100 MB limit"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    source.read_exact_at(8, &mut header)?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| Error::format(&what, format!("header JSON: {e}")))?;
    let data_start = 8 + n;
    let infos = metadata.tensors();
    let tensors = metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = infos[&name];
            let (start, end) = info.data_offsets;
            TensorInfo {
                offset: data_start + start as u64,
                size: (end - start) as u64,
                ggml_type: None,
                dims: info.shape.iter().map(|&d| d as u64).collect(),
                dtype: Some(format!("{:?}", info.dtype)),
                name,
            }
        })
        .collect();
    let extra: BTreeMap<_, _> = metadata
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let extra = extra.into_iter().map(|(k, v)| (k, GgufValue::Str(v))).collect();
    Ok(TensorIndex::new(IndexFormat::Safetensors, tensors, size, &what)?.with_metadata(extra))
}
