//! The C API's open calls on arbitrary files: every call answers with a
//! status; an accepted file's tensors can all be acquired and released.
#![no_main]
use std::ffi::CString;
use std::sync::OnceLock;

use layerpager::ffi::*;
use layerpager::Status;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("layerpager-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch().join("input");
    std::fs::write(&path, data).unwrap();
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    for open in [pager_open_gguf, pager_open_safetensors] {
        let mut p: *mut pager_t = std::ptr::null_mut();
        let mut opts = std::mem::MaybeUninit::<pager_options_t>::uninit();
        // SAFETY: valid pointers for the duration of each call.
        unsafe {
            pager_options_default(opts.as_mut_ptr());
            let mut opts = opts.assume_init();
            opts.prefetch_threads = 0;
            opts.budget_bytes = 1 << 20;
            let st = open(cpath.as_ptr(), &opts, &mut p);
            if st != Status::PAGER_OK {
                assert!(p.is_null());
                continue;
            }
            let n = pager_tensor_count(p);
            for id in 0..n as u32 {
                let mut t = std::mem::zeroed::<pager_tensor_t>();
                match pager_acquire(p, id, &mut t) {
                    Status::PAGER_OK => assert_eq!(pager_release(p, &mut t), Status::PAGER_OK),
                    Status::PAGER_ERR_BUDGET => {}
                    other => panic!("acquire of an accepted file: {other:?}"),
                }
            }
            pager_close(p);
        }
    }
});
