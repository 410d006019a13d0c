//! What packaging promises: the committed header is what the generator makes
//! of the sources, versions agree everywhere, and the list of system
//! libraries the static library needs is still right.

use std::ffi::CStr;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_header_matches_the_generator() {
    let generated = std::fs::read_to_string(Path::new(env!("OUT_DIR")).join("layerpager.h"))
        .expect("build.rs generated the header");
    let committed = std::fs::read_to_string(root().join("include/layerpager.h")).unwrap();
    assert!(
        generated == committed,
        "include/layerpager.h is out of date: run scripts/update-header.sh and commit it"
    );
}

#[test]
fn header_cargo_and_library_versions_agree() {
    let header = std::fs::read_to_string(root().join("include/layerpager.h")).unwrap();
    let macro_value = |name: &str| -> String {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} missing from the header"))
            .trim()
            .trim_matches('"')
            .to_owned()
    };
    let from_macros = format!(
        "{}.{}.{}",
        macro_value("LAYERPAGER_VERSION_MAJOR"),
        macro_value("LAYERPAGER_VERSION_MINOR"),
        macro_value("LAYERPAGER_VERSION_PATCH")
    );
    // SAFETY: pager_version returns a static NUL-terminated string.
    let library = unsafe { CStr::from_ptr(layerpager::ffi::pager_version()) }
        .to_str()
        .unwrap();
    assert_eq!(from_macros, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        macro_value("LAYERPAGER_VERSION_STRING"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(library, env!("CARGO_PKG_VERSION"));
    assert_eq!(layerpager::VERSION, env!("CARGO_PKG_VERSION"));
}

#[test]
fn native_static_libs_list_is_current() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .current_dir(root())
        // A target dir of its own: this build must not replace the static
        // library that the C tests link against. The library's dependencies
        // are few (the command's live in cli/), so this takes seconds.
        .args([
            "rustc",
            "--quiet",
            "-p",
            "layerpager",
            "--lib",
            "--crate-type",
            "staticlib",
            "--target-dir",
        ])
        .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("native-libs-check"))
        .args(["--", "--print", "native-static-libs"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let printed = stderr
        .lines()
        .find_map(|l| l.split("native-static-libs: ").nth(1))
        .unwrap_or_else(|| panic!("no native-static-libs line in:\n{stderr}"))
        .trim()
        .to_owned();
    let listed = std::fs::read_to_string(root().join("cmake/native-static-libs.txt")).unwrap();
    assert_eq!(
        printed,
        listed.trim(),
        "update cmake/native-static-libs.txt (used by CMake, pkg-config and the C tests)"
    );
}
