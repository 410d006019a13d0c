//! The GGUF index parser on arbitrary bytes: never panics, never allocates
//! more than a small multiple of the file's size (plus a fixed read chunk),
//! and every accepted file's tensors lie inside it.
#![no_main]
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use layerpager::index::gguf;
use layerpager::source::MemorySource;
use libfuzzer_sys::fuzz_target;

/// Counts the bytes live on the heap and their peak.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let source = MemorySource::new(data.to_vec());
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    if let Ok(index) = gguf::parse(&source) {
        for t in index.tensors() {
            assert!(t.offset.checked_add(t.size).is_some_and(|end| end <= data.len() as u64));
        }
    }
    let grown = PEAK.load(Ordering::Relaxed) - before;
    // The parse buffer reads at most 1 MiB at a time; everything else it
    // keeps is bounded by the bytes of the file.
    assert!(grown <= 64 * data.len() + (2 << 20), "{grown} bytes for a {}-byte file", data.len());
});
