//! Build script: sets the shared library's soname and generates the C header
//! into OUT_DIR (never into the source tree: `cargo publish` refuses that).

use std::path::PathBuf;

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").expect("cargo sets the version");
    let patch = std::env::var("CARGO_PKG_VERSION_PATCH").expect("cargo sets the version");
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets the version");

    // Without a soname CMake links by full path and ignores rpath.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblayerpager.so.{major}");
    }

    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("layerpager.h");
    let mut config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    config.after_includes = Some(format!(
        "\n/* Version of this header; pager_version() gives the library's. */\n\
         #define LAYERPAGER_VERSION_MAJOR {major}\n\
         #define LAYERPAGER_VERSION_MINOR {minor}\n\
         #define LAYERPAGER_VERSION_PATCH {patch}\n\
         #define LAYERPAGER_VERSION_STRING \"{version}\"\n"
    ));
    match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(&out);
        }
        Err(e) => {
            // A source that does not parse fails the compile anyway, with a
            // better message; do not mask it here.
            println!("cargo:warning=cbindgen could not generate the header: {e}");
        }
    }
    for path in ["src", "cbindgen.toml"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
