//! `layerpager inspect`: a model's metadata and tensors, as a table or JSON.

use std::path::Path;

use serde_json::{json, Value};

use layerpager::index::{block_of, ggml_type_name, GgufValue, IndexFormat};
use layerpager::{shown, Error};

use crate::format::{human, open_index};

/// How a format orders its dimensions, said wherever dims are shown: the
/// same tensor is 384x1536 in GGUF and 1536x384 in safetensors.
fn dims_order(format: IndexFormat) -> &'static str {
    match format {
        IndexFormat::Gguf => "innermost first (ggml's ne: ne[0] is the row length)",
        IndexFormat::Safetensors => "outermost first (the row-major shape, as PyTorch prints it)",
        IndexFormat::Table => "the tensor's byte count",
    }
}

fn format_name(format: IndexFormat) -> &'static str {
    match format {
        IndexFormat::Gguf => "gguf",
        IndexFormat::Safetensors => "safetensors",
        IndexFormat::Table => "table",
    }
}

/// A metadata value as typed JSON: numbers, booleans and strings as
/// themselves; an array as its element type, length and first elements.
fn json_value(v: &GgufValue) -> Value {
    match v {
        GgufValue::Uint(n) => json!(n),
        GgufValue::Int(n) => json!(n),
        GgufValue::Float(x) => json!(x),
        GgufValue::Bool(b) => json!(b),
        GgufValue::Str(s) => json!(s),
        GgufValue::Array { elem_type, len, head } => json!({
            "array_of_gguf_type": elem_type,
            "len": len,
            "first": head.iter().map(json_value).collect::<Vec<_>>(),
        }),
    }
}

pub(crate) fn inspect(path: &Path, json: bool) -> Result<(), Error> {
    let index = open_index(path)?;
    let tensors = index.tensors();
    if json {
        let metadata: serde_json::Map<String, Value> = index
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect();
        let doc = json!({
            "file": path.display().to_string(),
            "format": format_name(index.format()),
            "file_bytes": index.source_size(),
            "tensor_bytes": index.total_bytes(),
            "dims_order": dims_order(index.format()),
            "metadata": metadata,
            "tensors": tensors.iter().enumerate().map(|(i, t)| json!({
                "id": i,
                "name": t.name,
                "type": t.dtype.as_deref().unwrap_or("?"),
                "dims": t.dims,
                "offset": t.offset,
                "bytes": t.size,
            })).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!("{}", path.display());
    println!(
        "  format {}, {} tensors, {} of tensor data in a {} file; dims {}",
        format_name(index.format()),
        tensors.len(),
        human(index.total_bytes()),
        human(index.source_size()),
        dims_order(index.format())
    );
    for (k, v) in index.metadata() {
        let text = v.to_string();
        let text = if text.chars().count() > 100 {
            format!("{}...", text.chars().take(97).collect::<String>())
        } else {
            text
        };
        println!("  {} = {text}", shown(k));
    }
    println!();
    // Names as messages show them (escaped, at most 65 characters); the
    // column is as wide as the longest.
    let names: Vec<String> = tensors.iter().map(|t| shown(&t.name)).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(24);
    println!(
        "{:>5}  {:<width$} {:<8} {:<22} {:>14} {:>12}",
        "id", "name", "type", "dims", "offset", "bytes"
    );
    let mut current_block: Option<Option<u64>> = None;
    let mut block_bytes = 0u64;
    let flush = |block: Option<Option<u64>>, bytes: u64| {
        if let Some(Some(n)) = block {
            println!(
                "{:>5}  {:<width$} {:>59}",
                "",
                format!("-- block {n} total"),
                human(bytes)
            );
        }
    };
    for (i, t) in tensors.iter().enumerate() {
        let block = block_of(&t.name);
        if current_block != Some(block) {
            flush(current_block, block_bytes);
            current_block = Some(block);
            block_bytes = 0;
        }
        block_bytes += t.size;
        let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
        let ty = t
            .ggml_type
            .and_then(ggml_type_name)
            .map(str::to_owned)
            .or_else(|| t.dtype.clone())
            .unwrap_or_else(|| "?".into());
        println!(
            "{i:>5}  {:<width$} {ty:<8} {:<22} {:>14} {:>12}",
            names[i],
            dims.join("x"),
            t.offset,
            t.size
        );
    }
    flush(current_block, block_bytes);
    println!();
    println!(
        "  total {} in {} tensors; largest {}",
        human(index.total_bytes()),
        tensors.len(),
        human(index.largest_tensor())
    );
    Ok(())
}
