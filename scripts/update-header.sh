#!/usr/bin/env bash
# Regenerates include/layerpager.h from the Rust sources (build.rs runs
# cbindgen into OUT_DIR; this copies the newest one into include/).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --lib -p layerpager
header=$(ls -t "${CARGO_TARGET_DIR:-target}"/debug/build/layerpager-*/out/layerpager.h | head -n 1)
cp "$header" include/layerpager.h
echo "include/layerpager.h updated from $header"
