//! `layerpager inspect`: a model's metadata and tensors, as a table or JSON.

use std::path::Path;

use layerpager::index::{block_of, ggml_type_name, IndexFormat};
use layerpager::Error;

use crate::format::{human, open_index};

pub(crate) fn inspect(path: &Path, json: bool) -> Result<(), Error> {
    let index = open_index(path)?;
    let tensors = index.tensors();
    if json {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        println!("{{");
        println!("  \"file\": \"{}\",", esc(&path.display().to_string()));
        println!("  \"format\": \"{:?}\",", index.format());
        println!("  \"file_bytes\": {},", index.source_size());
        println!("  \"tensor_bytes\": {},", index.total_bytes());
        println!("  \"metadata\": {{");
        let md = index.metadata();
        for (i, (k, v)) in md.iter().enumerate() {
            let comma = if i + 1 < md.len() { "," } else { "" };
            println!("    \"{}\": \"{}\"{comma}", esc(k), esc(&v.to_string()));
        }
        println!("  }},");
        println!("  \"tensors\": [");
        for (i, t) in tensors.iter().enumerate() {
            let comma = if i + 1 < tensors.len() { "," } else { "" };
            let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
            println!(
                "    {{\"id\": {i}, \"name\": \"{}\", \"type\": \"{}\", \"dims\": [{}], \"offset\": {}, \"bytes\": {}}}{comma}",
                esc(&t.name),
                esc(t.dtype.as_deref().unwrap_or("?")),
                dims.join(", "),
                t.offset,
                t.size
            );
        }
        println!("  ]");
        println!("}}");
        return Ok(());
    }
    println!("{}", path.display());
    let format = match index.format() {
        IndexFormat::Gguf => "GGUF",
        IndexFormat::Safetensors => "safetensors",
        IndexFormat::Table => "table",
    };
    println!(
        "  format {format}, {} tensors, {} of tensor data in a {} file",
        tensors.len(),
        human(index.total_bytes()),
        human(index.source_size())
    );
    for (k, v) in index.metadata() {
        let text = v.to_string();
        let text = if text.chars().count() > 100 {
            format!("{}...", text.chars().take(97).collect::<String>())
        } else {
            text
        };
        println!("  {k} = {text}");
    }
    println!();
    println!(
        "{:>5}  {:<40} {:<8} {:<22} {:>14} {:>12}",
        "id", "name", "type", "dims", "offset", "bytes"
    );
    let mut current_block: Option<Option<u64>> = None;
    let mut block_bytes = 0u64;
    let flush = |block: Option<Option<u64>>, bytes: u64| {
        if let Some(Some(n)) = block {
            println!(
                "{:>5}  {:<40} {:>59}",
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
            "{i:>5}  {:<40} {ty:<8} {:<22} {:>14} {:>12}",
            t.name,
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
