//! Every tensor of models written by llama.cpp's `gguf` package (all quant
//! types, several alignments, v2 and v3) and of a safetensors file is indexed
//! as the reference reader indexes it and read back byte for byte, in every
//! io mode, under a budget of twice the largest tensor.

mod common;

use common::{expected, fixture_dir, MODELS};
use layerpager::{IoMode, Pager, PagerOptions, PolicyKind};

fn open(model: &str, safetensors: bool, options: PagerOptions) -> Pager {
    let path = fixture_dir().join(model);
    if safetensors {
        Pager::open_safetensors(&path, options).unwrap()
    } else {
        Pager::open_gguf(&path, options).unwrap()
    }
}

#[test]
fn index_matches_the_reference_reader() {
    for &(model, st) in MODELS {
        let want = expected(model);
        let pager = open(model, st, PagerOptions::default());
        assert_eq!(pager.tensor_count(), want.len(), "{model}");
        for (id, w) in want.iter().enumerate() {
            let info = pager.info(id as u32).unwrap();
            assert_eq!(info.name, w.name, "{model}");
            assert_eq!(info.offset, w.offset, "{model} {}", w.name);
            assert_eq!(info.size, w.size, "{model} {}", w.name);
            assert_eq!(
                info.ggml_type.unwrap_or(u32::MAX),
                w.ggml_type,
                "{model} {}",
                w.name
            );
            assert_eq!(info.dims, w.dims, "{model} {}", w.name);
            assert_eq!(pager.find(&w.name).unwrap(), id as u32);
        }
    }
}

#[test]
fn every_byte_matches_in_every_io_mode() {
    for &(model, st) in MODELS {
        let want = expected(model);
        let largest = want.iter().map(|w| w.size).max().unwrap();
        for io_mode in [IoMode::Pread, IoMode::Direct, IoMode::Mmap] {
            for alignment in [64usize, 4096] {
                let budget = 2 * largest + 8192;
                let pager = open(
                    model,
                    st,
                    PagerOptions {
                        budget_bytes: budget,
                        io_mode,
                        alignment,
                        policy: PolicyKind::Lru,
                        ..Default::default()
                    },
                );
                for pass in 0..2 {
                    for (id, w) in want.iter().enumerate() {
                        let a = pager.acquire(id as u32).unwrap();
                        assert_eq!(
                            a.as_ptr() as usize % alignment,
                            0,
                            "{model} {io_mode:?} {}",
                            w.name
                        );
                        assert!(
                            a.bytes() == w.bytes.as_slice(),
                            "{model} {io_mode:?} pass {pass}: {} differs",
                            w.name
                        );
                        drop(a);
                        pager.check_invariants().unwrap();
                        assert!(pager.stats().resident_bytes <= budget);
                    }
                }
                let s = pager.stats();
                assert_eq!(s.hits + s.misses, 2 * want.len() as u64, "{model} {io_mode:?}");
                assert!(s.peak_resident_bytes <= budget);
            }
        }
    }
}

#[test]
fn metadata_is_read() {
    let pager = open("llama_q4k.gguf", false, PagerOptions::default());
    let md = pager.index().metadata();
    let arch = md.iter().find(|(k, _)| k == "general.architecture").unwrap();
    assert_eq!(arch.1.to_string(), "\"llama\"");
    let tokens = md.iter().find(|(k, _)| k == "tokenizer.ggml.tokens").unwrap();
    assert!(tokens.1.to_string().contains("hello"), "{}", tokens.1);
}
