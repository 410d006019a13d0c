#!/usr/bin/env bash
# The GGUF index agrees with ggml on ggml's own test files: builds
# c-tests/ggml/gguf_agreement.cpp (llama.cpp's test-gguf generator + ggml +
# layerpager's C API) against the llama.cpp tree that scripts/llama-cpp.sh
# caches, and runs it over SEEDS seeds of every kind of file it writes
# (default 20), once plain and once under AddressSanitizer + UBSan.
#
# usage: scripts/ggml-check.sh [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-20}
eval "$(scripts/llama-cpp.sh ggml)"
cargo build --release --lib --quiet -p layerpager
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ggml_libs=("$LLAMA_CPP_BUILD/ggml/src/libggml.a" "$LLAMA_CPP_BUILD/ggml/src/libggml-cpu.a"
  "$LLAMA_CPP_BUILD/ggml/src/libggml-base.a")
# shellcheck disable=SC2046
build() { # out flags...
  local out=$1; shift
  g++ -std=c++17 -O1 -g "$@" -I "$LLAMA_CPP_SRC" -I "$LLAMA_CPP_SRC/ggml/include" -I include \
    c-tests/ggml/gguf_agreement.cpp "${ggml_libs[@]}" "${CARGO_TARGET_DIR:-target}/release/liblayerpager.a" \
    $(cat cmake/native-static-libs.txt) -o "$out"
}
mkdir -p "$work/files"
build "$work/gguf_agreement"
"$work/gguf_agreement" "$work/files" "$seeds"
# -fno-sanitize=enum: test-gguf's generator stores deliberately invalid
# gguf_type values in its enums; that is its business, not ours.
build "$work/gguf_agreement_asan" -fsanitize=address,undefined -fno-sanitize=enum \
  -fno-sanitize-recover=undefined -fno-omit-frame-pointer
ASAN_OPTIONS=detect_leaks=1 "$work/gguf_agreement_asan" "$work/files" "$((seeds / 4 + 1))" | tail -1
echo "ggml-check: layerpager accepts exactly what ggml accepts, with identical tensors"
