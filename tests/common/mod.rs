//! Shared test fixtures: models written by llama.cpp's `gguf` package and
//! what its reader says of them, plus small synthetic files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One tensor as the reference reader saw it.
#[derive(Debug, Clone)]
pub struct Expected {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    pub ggml_type: u32,
    pub dims: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// The repository's root: this module also serves the tests of the `cli`
/// member crate, one level down.
pub fn repo_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("tests/fixtures/make_fixtures.py").exists() {
        manifest
    } else {
        manifest
            .parent()
            .expect("the cli crate lies inside the repository")
    }
}

/// The Python that runs the fixture scripts: `$LAYERPAGER_PYTHON`, else the
/// checkout's `.venv` (where the README's test command installs the `gguf`
/// package), else `python3` from the PATH.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LAYERPAGER_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The directory of reference fixtures, written once per version of the
/// generator script and shared by every test binary.
pub fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("tests/fixtures/make_fixtures.py");
        let text = std::fs::read(&script).expect("the fixture script");
        let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join(format!("fixtures-{hash:016x}"));
        if dir.join("done").exists() {
            return dir;
        }
        // Written aside and renamed: test binaries running at once never see
        // a half-written set.
        let partial = tmp.join(format!("fixtures-{hash:016x}.{}", std::process::id()));
        let status = std::process::Command::new(python())
            .arg(&script)
            .arg(&partial)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("python runs");
        assert!(
            status.success(),
            "{} failed: the tests need llama.cpp's gguf package in .venv \
             (python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt)",
            script.display()
        );
        std::fs::write(partial.join("done"), b"").unwrap();
        if std::fs::rename(&partial, &dir).is_err() {
            // Another binary won the race; its set is the same.
            let _ = std::fs::remove_dir_all(&partial);
        }
        dir
    })
}

/// The reference models: (file name, is safetensors).
pub const MODELS: &[(&str, bool)] = &[
    ("all_types.gguf", false),
    ("all_types_align256.gguf", false),
    ("all_types_align8.gguf", false),
    ("llama_q4k.gguf", false),
    ("llama_q4k_v2.gguf", false),
    ("llama_q8_align4096.gguf", false),
    ("moe_q4k.gguf", false),
    ("moe_q8_align64.gguf", false),
    ("small.safetensors", true),
];

/// What the reference reader says of `model`.
pub fn expected(model: &str) -> Vec<Expected> {
    let dir = fixture_dir().join(format!("{model}.expected"));
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).expect("manifest");
    manifest
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split('\t').collect();
            Expected {
                name: f[0].to_owned(),
                offset: f[1].parse().unwrap(),
                size: f[2].parse().unwrap(),
                ggml_type: f[3].parse().unwrap(),
                dims: f[4].split(',').map(|d| d.parse().unwrap()).collect(),
                bytes: std::fs::read(dir.join(format!("{i}.bin"))).unwrap(),
            }
        })
        .collect()
}

/// A file of `len` bytes where byte i is `pattern(i)`, in a fresh temp dir.
pub fn pattern_file(len: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    std::fs::write(&path, (0..len).map(pattern).collect::<Vec<u8>>()).unwrap();
    (dir, path)
}

/// Checks that `bytes` are the pattern file's bytes from `offset` on.
pub fn assert_pattern(bytes: &[u8], offset: usize) {
    for (i, b) in bytes.iter().enumerate() {
        assert_eq!(*b, pattern(offset + i), "byte {i} of tensor at {offset}");
    }
}

/// The byte at offset `i` of a [`pattern_file`].
/// What a budget charges a tensor of `size` bytes read into a buffer of
/// its own: a buffer of a page or more is a mapping of whole pages.
pub fn charge_of(size: u64) -> u64 {
    if size >= 4096 {
        size.next_multiple_of(4096)
    } else {
        size
    }
}

pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// A table of `n` tensors of `size` bytes each, back to back.
pub fn even_table(n: usize, size: u64) -> Vec<(String, u64, u64)> {
    (0..n).map(|i| (format!("t{i}"), i as u64 * size, size)).collect()
}

/// A callback source over the pattern bytes that counts reads, keeps the
/// end of the furthest one started, and can be told to fail (an errno) or
/// to take `delay_ms` per read.
pub struct Probe {
    pub data: Vec<u8>,
    pub reads: std::sync::atomic::AtomicUsize,
    pub furthest: std::sync::atomic::AtomicU64,
    pub fail_with: std::sync::atomic::AtomicUsize,
    pub delay_ms: u64,
}

unsafe extern "C" fn probe_read(
    user: *mut std::ffi::c_void,
    offset: u64,
    dst: *mut std::ffi::c_void,
    len: usize,
) -> i32 {
    use std::sync::atomic::Ordering;
    // SAFETY: user is the Probe the test keeps alive longer than the pager.
    let probe = unsafe { &*(user as *const Probe) };
    probe.reads.fetch_add(1, Ordering::SeqCst);
    probe.furthest.fetch_max(offset + len as u64, Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(probe.delay_ms));
    let fail = probe.fail_with.load(Ordering::SeqCst);
    if fail != 0 {
        return fail as i32;
    }
    let src = &probe.data[offset as usize..offset as usize + len];
    // SAFETY: dst has room for len bytes per the callback contract.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, len) };
    0
}

/// A probe over `len` pattern bytes whose reads take `delay_ms`.
pub fn probe(len: usize, delay_ms: u64) -> std::sync::Arc<Probe> {
    std::sync::Arc::new(Probe {
        data: (0..len).map(pattern).collect(),
        reads: std::sync::atomic::AtomicUsize::new(0),
        furthest: std::sync::atomic::AtomicU64::new(0),
        fail_with: std::sync::atomic::AtomicUsize::new(0),
        delay_ms,
    })
}

/// A pager over `probe` with `n` tensors of `size` bytes each.
pub fn probe_pager(
    probe: &std::sync::Arc<Probe>,
    n: usize,
    size: u64,
    options: layerpager::PagerOptions,
) -> layerpager::Pager {
    probe_table_pager(probe, &even_table(n, size), options)
}

/// A pager over `probe` with the tensors of `table` (name, offset, size).
pub fn probe_table_pager(
    probe: &std::sync::Arc<Probe>,
    table: &[(String, u64, u64)],
    options: layerpager::PagerOptions,
) -> layerpager::Pager {
    let source = layerpager::source::CallbackSource::new(
        std::sync::Arc::as_ptr(probe) as *mut std::ffi::c_void,
        probe.data.len() as u64,
        probe_read,
        None,
    );
    let index = layerpager::TensorIndex::from_table(table, probe.data.len() as u64).unwrap();
    layerpager::Pager::with_source(Box::new(source), index, options).unwrap()
}
