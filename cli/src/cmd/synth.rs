//! `layerpager synth`: a llama-shaped GGUF with random weights.

use std::path::Path;

use layerpager::Error;
use layerpager_tools::synth::{write_gguf, LlamaShape};

use crate::format::{bar, human};

pub(crate) fn synth(out: &Path, layers: u32, dim: u64, ff: u64) -> Result<(), Error> {
    if dim == 0 || ff == 0 || dim % 256 != 0 || ff % 256 != 0 {
        return Err(Error::InvalidArgument(format!(
            "--dim {dim} and --ff {ff} must be positive multiples of 256 (the length of a Q4_K block)"
        )));
    }
    let shape = LlamaShape {
        layers,
        dim,
        ff,
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
