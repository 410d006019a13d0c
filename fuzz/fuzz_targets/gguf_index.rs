//! The GGUF index parser on arbitrary bytes: never panics, and every
//! accepted file's tensors lie inside it.
#![no_main]
use layerpager::index::gguf;
use layerpager::source::MemorySource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = MemorySource::new(data.to_vec());
    if let Ok(index) = gguf::parse(&source) {
        for t in index.tensors() {
            assert!(t.offset.checked_add(t.size).is_some_and(|end| end <= data.len() as u64));
        }
    }
});
