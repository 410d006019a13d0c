//! Every input kept in `fuzz/regressions/` goes through both parsers and the
//! C open calls: never a panic, and an accepted file's tensors lie inside it.

use std::ffi::CString;
use std::path::Path;

use layerpager::ffi::{pager_close, pager_open_gguf, pager_open_safetensors, pager_t};
use layerpager::index::{gguf, safetensors};
use layerpager::source::MemorySource;
use layerpager::Status;

#[test]
fn kept_fuzz_inputs_are_refused_or_sound() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        seen += 1;
        let bytes = std::fs::read(&path).unwrap();
        let source = MemorySource::new(bytes.clone());
        for index in [gguf::parse(&source), safetensors::parse(&source)]
            .into_iter()
            .flatten()
        {
            for t in index.tensors() {
                assert!(t.offset + t.size <= bytes.len() as u64, "{}", path.display());
            }
        }
        let cpath = CString::new(path.to_str().unwrap()).unwrap();
        for open in [pager_open_gguf, pager_open_safetensors] {
            let mut p: *mut pager_t = std::ptr::null_mut();
            // SAFETY: valid C string, NULL options, valid out-pointer.
            let st = unsafe { open(cpath.as_ptr(), std::ptr::null(), &mut p) };
            if st == Status::PAGER_OK {
                // SAFETY: p was just opened.
                unsafe { pager_close(p) };
            } else {
                assert!(p.is_null());
            }
        }
    }
    assert!(seen >= 5, "the regression inputs are missing");
}
