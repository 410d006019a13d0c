//! `layerpager synth`: a llama-shaped GGUF with random weights.

use std::path::Path;

use layerpager::Error;
use layerpager_tools::synth::{write_gguf, LlamaShape};

use crate::format::{bar, human};

pub(crate) fn synth(out: &Path, layers: u32) -> Result<(), Error> {
    let shape = LlamaShape {
        layers,
        ..LlamaShape::DEMO
    };
    let tensors = shape.tensors();
    let total: u64 = tensors.iter().map(|t| t.size()).sum();
    let pb = bar(total, "writing the model");
    let size = write_gguf(out, &tensors, 32, |done| pb.set_position(done))?;
    pb.finish_and_clear();
    println!("{}: {} tensors, {}", out.display(), tensors.len(), human(size));
    Ok(())
}
