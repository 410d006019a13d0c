//! The C tests in `c-tests/`, compiled against `include/layerpager.h` and the
//! static library with the C compiler the `cc` crate finds, then run: once
//! as C, and once compiled as C++.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{fixture_dir, MODELS};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>/, the directory of this test run's artifacts.
fn artifact_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// The static library under test, built fresh: `cargo test` builds only the
/// rlib, so a `liblayerpager.a` lying in the target directory may be
/// missing (a fresh clone) or stale (an edit since the last `cargo build`).
/// Built once per test binary, with the profile and target directory of
/// this run.
fn static_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = artifact_dir();
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .args([
                "build",
                "--lib",
                "--quiet",
                "--profile",
                &profile,
                "--manifest-path",
            ])
            .arg(root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(dir.parent().unwrap())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo build --lib failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lib = dir.join("liblayerpager.a");
        assert!(lib.exists(), "{} was not built", lib.display());
        lib
    })
}

fn native_libs() -> Vec<String> {
    std::fs::read_to_string(root().join("cmake/native-static-libs.txt"))
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn compiler(cpp: bool) -> cc::Tool {
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    cc::Build::new()
        .cargo_metadata(false)
        .cargo_warnings(false)
        .target(&target)
        .host(&target)
        .opt_level(1)
        .cpp(cpp)
        .get_compiler()
}

/// Compiles `sources` into one executable linked with the static library.
fn build(name: &str, sources: &[&str], cpp: bool) -> PathBuf {
    build_with(name, sources, cpp, &[])
}

fn build_with(name: &str, sources: &[&str], cpp: bool, flags: &[&str]) -> PathBuf {
    let out =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}{}", if cpp { "-cpp" } else { "" }));
    let tool = compiler(cpp);
    let mut cmd = tool.to_command();
    if cpp {
        cmd.args(["-x", "c++", "-std=c++17"]);
    } else {
        cmd.arg("-std=c11");
    }
    cmd.args(["-Wall", "-Wextra", "-Werror", "-pthread", "-g"])
        .args(flags)
        .arg("-I")
        .arg(root().join("include"));
    for s in sources {
        cmd.arg(root().join("c-tests").join(s));
    }
    if cpp {
        cmd.args(["-x", "none"]);
    }
    cmd.arg(static_lib()).args(native_libs()).arg("-o").arg(&out);
    let output = cmd.output().expect("the C compiler runs");
    assert!(
        output.status.success(),
        "compiling {name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

fn run(exe: &Path, args: &[&std::ffi::OsStr]) {
    let output = Command::new(exe).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{} {:?} failed:\nstdout:\n{}\nstderr:\n{}",
        exe.display(),
        args,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn c_engine_reads_every_reference_model_in_every_io_mode() {
    for cpp in [false, true] {
        let exe = build("engine_reads_model", &["engine_reads_model.c"], cpp);
        for &(model, st) in MODELS {
            let path = fixture_dir().join(model);
            let kind = if st { "safetensors" } else { "gguf" };
            run(&exe, &[path.as_os_str(), kind.as_ref()]);
        }
    }
}

#[test]
fn c_misuse_of_the_api_gets_statuses() {
    let scratch = tempfile::tempdir().unwrap();
    for cpp in [false, true] {
        let exe = build("api_misuse", &["api_misuse.c"], cpp);
        run(
            &exe,
            &[
                fixture_dir().join("llama_q4k.gguf").as_os_str(),
                scratch.path().as_os_str(),
            ],
        );
    }
}

#[test]
fn c_source_allocator_and_threads() {
    for cpp in [false, true] {
        let exe = build("source_and_threads", &["source_and_threads.c"], cpp);
        run(&exe, &[fixture_dir().join("llama_q4k.gguf").as_os_str()]);
    }
}

#[test]
fn c_read_ahead_never_costs_a_demand() {
    let exe = build("readahead_stress", &["readahead_stress.c"], false);
    run(&exe, &[fixture_dir().join("llama_q4k.gguf").as_os_str()]);
}

#[test]
fn c_outside_moe_program_reaches_issue_13s_hit_ratios() {
    let exe = build("moe_outside", &["moe_outside.c"], false);
    let scratch = tempfile::tempdir().unwrap();
    run(&exe, &[scratch.path().as_os_str()]);
}

#[test]
fn c_expert_slices_hold_under_threads_readers_io_modes_and_tight_budgets() {
    let exe = build("moe_stress", &["moe_stress.c"], false);
    let scratch = tempfile::tempdir().unwrap();
    run(&exe, &[scratch.path().as_os_str(), "quick".as_ref()]);
}

#[test]
fn c_calls_during_close_and_open_close_cycles() {
    for cpp in [false, true] {
        let exe = build("close_race", &["close_race.c"], cpp);
        run(&exe, &[fixture_dir().join("llama_q4k.gguf").as_os_str()]);
    }
}

#[test]
fn c_abuse_with_hundreds_of_damaged_models() {
    let damaged = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(common::python());
    cmd.arg(root().join("tests/fixtures/damage.py"))
        .arg(damaged.path());
    for model in [
        "all_types_align8.gguf",
        "llama_q4k.gguf",
        "small.safetensors",
        "moe_q4k.gguf",
    ] {
        cmd.arg(fixture_dir().join(model));
    }
    assert!(cmd.status().unwrap().success());
    let exe = build("abuse_files", &["abuse_files.c"], false);
    run(&exe, &[damaged.path().as_os_str()]);
}

#[test]
fn header_included_twice_and_from_two_translation_units() {
    for cpp in [false, true] {
        let exe = build(
            "double_include",
            &["double_include_a.c", "double_include_b.c"],
            cpp,
        );
        run(&exe, &[]);
    }
}

#[test]
fn cpp_wrapper_with_and_without_exceptions() {
    let model = fixture_dir().join("llama_q4k.gguf");
    let exe = build("cpp_wrapper", &["cpp_wrapper.cpp"], true);
    run(&exe, &[model.as_os_str()]);
    let exe = build_with(
        "cpp_no_exceptions",
        &["cpp_no_exceptions.cpp"],
        true,
        &["-fno-exceptions"],
    );
    run(&exe, &[model.as_os_str()]);
}

#[test]
fn readme_examples_compile_and_run() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for example in ["examples/pkg-config/main.c", "examples/cmake-consumer/main.cpp"] {
        let text = std::fs::read_to_string(root().join(example)).unwrap();
        assert!(readme.contains(&text), "README.md must show {example} verbatim");
    }
    let model = fixture_dir().join("llama_q4k.gguf");
    let exe = build("readme_c", &["../examples/pkg-config/main.c"], false);
    run(&exe, &[model.as_os_str()]);
    let exe = build("readme_cpp", &["../examples/cmake-consumer/main.cpp"], true);
    run(&exe, &[model.as_os_str()]);
}
