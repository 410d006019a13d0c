//! The `layerpager` command as a new user meets it: inspect (table and
//! JSON), a damaged file's one-line error, plan with its plot, bench on a
//! small model, synth, and flags that name themselves when wrong.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
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

/// `layerpager plan` on the llama fixture with these budgets and plot path.
fn plan_fixture(budgets: &str, svg: &Path) -> (bool, String, String) {
    let model = fixture_dir().join("llama_q4k.gguf");
    layerpager(&[
        "plan",
        model.to_str().unwrap(),
        "--budgets",
        budgets,
        "--svg",
        svg.to_str().unwrap(),
    ])
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
    let (ok, out, err) = plan_fixture("25%,50%,1M", &svg);
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
    assert!(out.contains("layerpager, schedule declared, 1 reader"), "{out}");
    assert!(
        out.contains("raw O_DIRECT (sequential 2 MiB requests, best queue depth"),
        "{out}"
    );
    assert!(out.contains("vs ideal"), "{out}");
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
    // Expert-sized matrices: 768 x 768 and 768 x 2048 Q4_K.
    let (ok, _, err) = layerpager(&[
        "synth",
        path.to_str().unwrap(),
        "--layers",
        "1",
        "--dim",
        "768",
        "--ff",
        "2048",
    ]);
    assert!(ok, "{err}");
    let (_, out, _) = layerpager(&["inspect", path.to_str().unwrap()]);
    assert!(out.contains("768x2048") && out.contains("331776"), "{out}");
    // A width Q4_K rows cannot have.
    let (ok, _, err) = layerpager(&["synth", path.to_str().unwrap(), "--dim", "700"]);
    assert!(!ok && err.contains("multiples of 256"), "{err}");
}

#[test]
fn contenders_are_checked_before_any_work() {
    let model = fixture_dir().join("llama_q4k.gguf");
    let m = model.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--cgroup-limit", "+8M", "--contenders", "auto,fast"],
            "no contender 'fast'",
        ),
        (vec!["--contenders", "auto"], "give that too"),
    ] {
        let mut all = vec!["bench", m];
        all.extend(args.iter().copied());
        let (ok, out, err) = layerpager(&all);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: work was done first:\n{out}");
    }
}

#[test]
fn budgets_are_checked_before_any_work() {
    let model = fixture_dir().join("llama_q4k.gguf");
    let m = model.to_str().unwrap();
    for (budget, needle) in [
        ("0", "is 0 bytes"),
        ("0%", "is 0 bytes"),
        ("1K", "cannot hold the largest tensor"),
        ("50%,1K", "cannot hold the largest tensor"),
        ("4XB", "expected bytes"),
    ] {
        let (ok, out, err) = layerpager(&["bench", m, "--budget", budget]);
        assert!(!ok, "--budget {budget} was accepted");
        assert!(err.contains(needle), "--budget {budget}: {err}");
        assert!(out.is_empty(), "--budget {budget}: work was done first:\n{out}");
    }
    // Decimal and binary units both parse.
    for budget in ["4GB", "4GiB", "512MB", "512M"] {
        let (ok, _, err) = layerpager(&["bench", m, "--budget", budget, "--passes", "1", "--prefetch", "0"]);
        assert!(ok, "--budget {budget}: {err}");
    }
}

#[test]
fn plan_shows_budgets_below_the_largest_tensor_as_infeasible() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = plan_fixture("1%,50%", &dir.path().join("p.svg"));
    assert!(ok, "{err}");
    assert_eq!(out.matches("infeasible").count(), 1, "{out}");
    let (ok, _, err) = plan_fixture("50%", Path::new("/nonexistent-dir/p.svg"));
    assert!(!ok);
    assert!(
        err.contains("write of plot '/nonexistent-dir/p.svg'") && err.contains("errno 2"),
        "{err}"
    );
}

#[test]
fn messages_say_the_errno_once_and_name_a_directory() {
    let (ok, _, err) = layerpager(&["inspect", "/nonexistent.gguf"]);
    assert!(!ok);
    assert!(err.contains("(errno 2)") && !err.contains("os error"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = layerpager(&["inspect", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("Is a directory"), "{err}");
}

#[test]
fn the_format_is_sniffed_not_taken_from_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let misnamed = dir.path().join("model.gguf");
    std::fs::copy(fixture_dir().join("small.safetensors"), &misnamed).unwrap();
    let (ok, out, err) = layerpager(&["inspect", misnamed.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("format safetensors"), "{out}");
}

#[test]
fn inspect_json_has_typed_values() {
    let path = fixture_dir().join("llama_q4k.gguf");
    let (ok, out, err) = layerpager(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["metadata"]["general.architecture"], "llama");
    assert!(v["dims_order"].as_str().unwrap().contains("innermost first"));
}

#[test]
fn inspect_into_a_closed_pipe_ends_quietly() {
    let path = fixture_dir().join("all_types.gguf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_layerpager"))
        .args(["inspect", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line, as `| head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}

#[test]
fn demo_creates_nothing_the_user_did_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (ok, _, err) = layerpager(&["demo", "--dir", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("mkdir"), "{err}");
    assert!(!missing.exists());
}
