//! The `layerpager` command as a new user meets it: inspect (table and
//! JSON), a damaged file's one-line error, plan with its plot, bench on a
//! small model, synth, and flags that name themselves when wrong.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::fixture_dir;

fn layerpager(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_layerpager"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_lists_tensors_grouped_by_block_with_totals() {
    let model = fixture_dir().join("llama_q4k.gguf");
    let (ok, out, _) = layerpager(&["inspect", model.to_str().unwrap()]);
    assert!(ok);
    assert!(out.contains("general.architecture = \"llama\""), "{out}");
    assert!(out.contains("blk.0.attn_q.weight"), "{out}");
    assert!(out.contains("Q4_K"), "{out}");
    assert!(out.contains("-- block 3 total"), "{out}");
    assert!(out.contains("39 tensors"), "{out}");
}

#[test]
fn inspect_json_is_json_with_every_tensor() {
    for (model, n) in [("llama_q4k.gguf", 39), ("small.safetensors", 5)] {
        let path = fixture_dir().join(model);
        let (ok, out, err) = layerpager(&["inspect", "--json", path.to_str().unwrap()]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["tensors"].as_array().unwrap().len(), n);
        assert!(v["tensors"][0]["bytes"].as_u64().unwrap() > 0);
    }
}

#[test]
fn a_damaged_file_gets_one_line_and_a_failure_status() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let bytes = std::fs::read(fixture_dir().join("llama_q4k.gguf")).unwrap();
    std::fs::write(&path, &bytes[..3000]).unwrap();
    let (ok, out, err) = layerpager(&["inspect", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("layerpager: "), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[test]
fn bad_flags_are_named() {
    let model = fixture_dir().join("llama_q4k.gguf");
    let (ok, _, err) = layerpager(&["bench", model.to_str().unwrap(), "--budget", "lots"]);
    assert!(!ok);
    assert!(err.contains("--budget 'lots'"), "{err}");
    let (ok, _, err) = layerpager(&["plan", model.to_str().unwrap(), "--budgets", "50%..10%"]);
    assert!(!ok);
    assert!(err.contains("--budgets"), "{err}");
}

#[test]
fn plan_prints_a_table_and_writes_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("p.svg");
    let model = fixture_dir().join("llama_q4k.gguf");
    let (ok, out, err) = layerpager(&[
        "plan",
        model.to_str().unwrap(),
        "--budgets",
        "25%,50%,1M",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("lower bound"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains('%') && l.contains('|')).count(),
        4,
        "{out}"
    );
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
}

#[test]
fn bench_compares_with_the_seed_design_on_a_real_file() {
    let model = fixture_dir().join("llama_q4k.gguf");
    let (ok, out, err) = layerpager(&[
        "bench",
        model.to_str().unwrap(),
        "--budget",
        "50%",
        "--passes",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("seed design: LRU, read on demand"), "{out}");
    assert!(out.contains("layerpager, schedule declared, 2 readers"), "{out}");
    assert!(out.contains("raw pread"), "{out}");
}

#[test]
fn synth_writes_a_model_that_inspect_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.gguf");
    let (ok, _, err) = layerpager(&["synth", path.to_str().unwrap(), "--layers", "1"]);
    assert!(ok, "{err}");
    let (ok, out, _) = layerpager(&["inspect", path.to_str().unwrap()]);
    assert!(ok);
    assert!(out.contains("blk.0.ffn_down.weight"), "{out}");
}
