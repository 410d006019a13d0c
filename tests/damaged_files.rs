//! Damaged model files are refused at open with a status and a message that
//! names what is wrong: truncations at every byte of the header and at every
//! tensor boundary, bytes overwritten everywhere in the header, and absurd
//! counts, lengths, dimensions, types, offsets and alignments built on
//! purpose. Never a panic, never an allocation driven by a count in the file.

mod common;

use std::path::Path;

use common::fixture_dir;
use layerpager::{Error, Pager, PagerOptions, Status};

fn open(path: &Path) -> Result<Pager, Error> {
    Pager::open_gguf(
        path,
        PagerOptions {
            prefetch_threads: 0,
            ..Default::default()
        },
    )
}

fn assert_refused(result: Result<Pager, Error>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what}: a damaged file was accepted"),
        Err(e) => {
            assert!(
                matches!(
                    e.status(),
                    Status::PAGER_ERR_FORMAT | Status::PAGER_ERR_OUT_OF_BOUNDS | Status::PAGER_ERR_IO
                ),
                "{what}: {e} ({:?})",
                e.status()
            );
            assert!(e.to_string().len() > 20, "{what}: message too short: {e}");
            e
        }
    }
}

/// A GGUF written byte by byte, with every field open to damage.
struct Gguf {
    version: u32,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    alignment: Option<(u32, u32)>,
    tensors: Vec<(Vec<u8>, Vec<u64>, u32, u64)>,
    data_len: usize,
    key_len: Option<u64>,
    /// More keys after `general.name`, each with a u8 value.
    extra_keys: Vec<Vec<u8>>,
}

impl Gguf {
    fn new() -> Self {
        Gguf {
            version: 3,
            n_tensors: None,
            n_kv: None,
            alignment: None,
            tensors: vec![
                (b"blk.0.a".to_vec(), vec![64], 0, 0),
                (b"blk.0.ffn_up.weight".to_vec(), vec![32, 2], 0, 256),
            ],
            data_len: 512,
            key_len: None,
            extra_keys: Vec::new(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.n_tensors.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        let kv = 1 + self.alignment.is_some() as u64 + self.extra_keys.len() as u64;
        b.extend_from_slice(&self.n_kv.unwrap_or(kv).to_le_bytes());
        let key = b"general.name";
        b.extend_from_slice(&self.key_len.unwrap_or(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(b"test");
        for key in &self.extra_keys {
            b.extend_from_slice(&(key.len() as u64).to_le_bytes());
            b.extend_from_slice(key);
            b.extend_from_slice(&0u32.to_le_bytes());
            b.push(1);
        }
        let mut alignment = 32u64;
        if let Some((ty, value)) = self.alignment {
            let key = b"general.alignment";
            b.extend_from_slice(&(key.len() as u64).to_le_bytes());
            b.extend_from_slice(key);
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&value.to_le_bytes());
            if value.is_power_of_two() {
                alignment = value as u64;
            }
        }
        for (name, dims, ty, offset) in &self.tensors {
            b.extend_from_slice(&(name.len() as u64).to_le_bytes());
            b.extend_from_slice(name);
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
        }
        b.resize(
            (b.len() as u64).div_ceil(alignment) as usize * alignment as usize,
            0,
        );
        b.resize(b.len() + self.data_len, 7);
        b
    }

    fn open(&self, dir: &Path) -> Result<Pager, Error> {
        let path = dir.join("built.gguf");
        std::fs::write(&path, self.bytes()).unwrap();
        open(&path)
    }
}

#[test]
fn the_built_file_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let pager = Gguf::new().open(dir.path()).unwrap();
    assert_eq!(pager.tensor_count(), 2);
    assert_eq!(pager.info(1).unwrap().size, 256);
    assert_eq!(pager.acquire(1).unwrap().bytes(), &[7u8; 256][..]);
}

#[test]
fn sizes_follow_ggml_for_q8_1_and_q2_0() {
    let dir = tempfile::tempdir().unwrap();
    // 5 rows of 32 Q8_1 elements: 5 blocks of 36 bytes; then 2 rows of 64
    // Q2_0 elements: 2 blocks of 18 bytes.
    let gguf = Gguf {
        tensors: vec![
            (b"q8_1".to_vec(), vec![32, 5], 9, 0),
            (b"q2_0".to_vec(), vec![64, 2], 42, 192),
        ],
        ..Gguf::new()
    };
    let pager = gguf.open(dir.path()).unwrap();
    assert_eq!(pager.info(0).unwrap().size, 180);
    assert_eq!(pager.info(0).unwrap().dtype.as_deref(), Some("Q8_1"));
    assert_eq!(pager.info(1).unwrap().size, 36);
    assert_eq!(pager.info(1).unwrap().dtype.as_deref(), Some("Q2_0"));
}

#[test]
fn a_name_of_control_bytes_gives_a_short_one_line_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut name = b"blk.0.\x1b[31m\x07".to_vec();
    name.resize(2048, 0);
    let gguf = Gguf {
        tensors: vec![(name, vec![64], 0, 0)],
        ..Gguf::new()
    };
    let e = gguf.open(dir.path()).unwrap_err();
    let text = e.to_string();
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert!(text.len() < 400, "{} bytes: {text}", text.len());
    assert!(text.contains("blk.0.\\u{1b}[31m\\u{7}"), "{text}");
}

#[test]
fn absurd_fields_are_named_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(Gguf, &str)> = vec![
        (
            Gguf {
                n_tensors: Some(1 << 60),
                ..Gguf::new()
            },
            "tensor count",
        ),
        (
            Gguf {
                n_kv: Some(u64::MAX),
                ..Gguf::new()
            },
            "metadata count",
        ),
        (
            Gguf {
                key_len: Some(u64::MAX / 2),
                ..Gguf::new()
            },
            "key of metadata entry 0",
        ),
        (
            Gguf {
                version: 1,
                ..Gguf::new()
            },
            "version 1",
        ),
        (
            Gguf {
                version: 0x0300_0000,
                ..Gguf::new()
            },
            "big-endian",
        ),
        (
            Gguf {
                alignment: Some((4, 0)),
                ..Gguf::new()
            },
            "general.alignment",
        ),
        (
            Gguf {
                alignment: Some((4, 48)),
                ..Gguf::new()
            },
            "general.alignment",
        ),
        (
            Gguf {
                alignment: Some((5, 64)),
                ..Gguf::new()
            },
            "general.alignment",
        ),
        (
            Gguf {
                tensors: vec![(b"t".to_vec(), vec![64], 999, 0)],
                ..Gguf::new()
            },
            "unknown ggml type 999",
        ),
        (
            Gguf {
                tensors: vec![(b"t".to_vec(), vec![64; 5], 0, 0)],
                ..Gguf::new()
            },
            "5 dimensions",
        ),
        (
            Gguf {
                tensors: vec![(b"t".to_vec(), vec![u64::MAX, 4], 0, 0)],
                ..Gguf::new()
            },
            "overflow",
        ),
        (
            Gguf {
                tensors: vec![(b"t".to_vec(), vec![33], 2, 0)],
                ..Gguf::new()
            },
            "not a multiple of the 32-element block of Q4_0",
        ),
        (
            Gguf {
                tensors: vec![(b"t".to_vec(), vec![64], 0, 1 << 63)],
                ..Gguf::new()
            },
            "tensor 0 't'",
        ),
        (
            Gguf {
                tensors: vec![(b"t".to_vec(), vec![64], 0, 512)],
                ..Gguf::new()
            },
            "offset 512 in the data section, expected 0",
        ),
        (
            Gguf {
                tensors: vec![(b"t".to_vec(), vec![64], 0, 3)],
                ..Gguf::new()
            },
            "offset 3 in the data section, expected 0",
        ),
        (
            Gguf {
                tensors: vec![(b"a".to_vec(), vec![8], 0, 0), (b"b".to_vec(), vec![8], 0, 0)],
                ..Gguf::new()
            },
            "tensor 1 'b': offset 0 in the data section, expected 32",
        ),
        (
            Gguf {
                extra_keys: vec![Vec::new()],
                ..Gguf::new()
            },
            "key of metadata entry 1 is empty",
        ),
        (
            Gguf {
                extra_keys: vec![b"general.name".to_vec()],
                ..Gguf::new()
            },
            "metadata entry 1: duplicate key 'general.name'",
        ),
        (
            Gguf {
                tensors: vec![(vec![b'n'; 64], vec![64], 0, 0)],
                ..Gguf::new()
            },
            "name of 64 bytes is longer than ggml's 63",
        ),
        (
            Gguf {
                tensors: vec![(b"t".to_vec(), vec![1 << 62, 3, 0], 0, 0)],
                ..Gguf::new()
            },
            "overflow",
        ),
        (
            Gguf {
                tensors: vec![(b"t".to_vec(), vec![64], 0, 0), (b"t".to_vec(), vec![64], 0, 256)],
                ..Gguf::new()
            },
            "duplicate name 't'",
        ),
    ];
    for (gguf, needle) in cases {
        let e = assert_refused(gguf.open(d), needle);
        assert!(e.to_string().contains(needle), "expected '{needle}' in: {e}");
    }
    // A tensor past the end names the tensor and the file size.
    let far = Gguf {
        tensors: vec![(b"blk.0.ffn_up.weight".to_vec(), vec![1 << 20], 0, 0)],
        ..Gguf::new()
    };
    let e = far.open(d).unwrap_err();
    assert_eq!(e.status(), Status::PAGER_ERR_OUT_OF_BOUNDS);
    assert!(e.to_string().contains("tensor 0 'blk.0.ffn_up.weight'"), "{e}");
    let size = far.bytes().len();
    assert!(
        e.to_string()
            .contains(&format!("past end of source ({size} bytes)")),
        "{e}"
    );
}

#[test]
fn every_truncation_of_real_models_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["all_types_align8.gguf", "llama_q4k.gguf"] {
        let bytes = std::fs::read(fixture_dir().join(model)).unwrap();
        let pager = open(&fixture_dir().join(model)).unwrap();
        let data_start = pager.index().tensors().iter().map(|t| t.offset).min().unwrap() as usize;
        let mut cuts: Vec<usize> = (0..data_start).collect();
        for t in pager.index().tensors() {
            cuts.push((t.offset + t.size) as usize - 1);
        }
        let path = dir.path().join("cut.gguf");
        for cut in cuts {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert_refused(open(&path), &format!("{model} cut at {cut}"));
        }
    }
}

#[test]
fn bytes_overwritten_anywhere_in_the_header_never_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutated.gguf");
    let source = fixture_dir().join("all_types_align256.gguf");
    let bytes = std::fs::read(&source).unwrap();
    let header_end = open(&source)
        .unwrap()
        .index()
        .tensors()
        .iter()
        .map(|t| t.offset)
        .min()
        .unwrap() as usize;
    let mut accepted = 0;
    for pos in 0..header_end {
        for value in [0x00u8, 0xff, 0x7f, 0x80] {
            if bytes[pos] == value {
                continue;
            }
            let mut damaged = bytes.clone();
            damaged[pos] = value;
            std::fs::write(&path, &damaged).unwrap();
            match open(&path) {
                Ok(pager) => {
                    // Accepted: then every tensor lies inside the file and reads.
                    accepted += 1;
                    for id in 0..pager.tensor_count() as u32 {
                        let t = pager.info(id).unwrap().clone();
                        assert!(t.offset + t.size <= damaged.len() as u64);
                        let a = pager.acquire(id).unwrap();
                        assert_eq!(
                            a.bytes(),
                            &damaged[t.offset as usize..(t.offset + t.size) as usize]
                        );
                    }
                }
                Err(e) => {
                    assert!(e.to_string().len() > 20, "{e}");
                }
            }
        }
    }
    // Metadata strings and name bytes can change without breaking the file.
    assert!(accepted > 0);
}

#[test]
fn damaged_safetensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let good = std::fs::read(fixture_dir().join("small.safetensors")).unwrap();
    let open_st = |p: &Path| {
        Pager::open_safetensors(
            p,
            PagerOptions {
                prefetch_threads: 0,
                ..Default::default()
            },
        )
    };
    for cut in 0..good.len() - 1 {
        std::fs::write(&path, &good[..cut]).unwrap();
        assert_refused(open_st(&path), &format!("safetensors cut at {cut}"));
    }
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &huge).unwrap();
    let e = assert_refused(open_st(&path), "huge header length");
    assert!(e.to_string().contains("header length"), "{e}");
    let mut bad_json = good.clone();
    bad_json[8] = b'[';
    std::fs::write(&path, &bad_json).unwrap();
    let e = assert_refused(open_st(&path), "bad JSON");
    assert!(e.to_string().contains("header JSON"), "{e}");
}

#[test]
fn a_file_truncated_while_open_is_an_io_error_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::copy(fixture_dir().join("llama_q4k.gguf"), &path).unwrap();
    let pager = open(&path).unwrap();
    let last = pager.tensor_count() as u32 - 1;
    drop(pager.acquire(0).unwrap());
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = pager.acquire(last).map(|_| ()).unwrap_err();
    assert_eq!(e.status(), Status::PAGER_ERR_IO);
    assert!(e.to_string().contains("size changed"), "{e}");
    pager.check_invariants().unwrap();
    // Only tensor 0 is charged: its buffer, in whole pages.
    let size = pager.info(0).unwrap().size;
    assert_eq!(pager.stats().resident_bytes, common::charge_of(size));
}
