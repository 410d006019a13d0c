#!/usr/bin/env bash
# Builds llama-paged (ggml/llama-paged.cpp + ggml/layerpager-ggml.cpp)
# against the llama.cpp of scripts/llama-cpp.sh and the release static
# library, into the cache; prints the executable's path.
# env: LAYERPAGER_CACHE (default ~/.cache/layerpager)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${LAYERPAGER_CACHE:-$HOME/.cache/layerpager}
eval "$(scripts/llama-cpp.sh llama)"
cargo build --release --lib --quiet -p layerpager
mkdir -p "$cache/bin"
exe=$cache/bin/llama-paged
# shellcheck disable=SC2046
g++ -std=c++17 -O2 -g -Wall -Wextra -pthread \
  -I include -I ggml -I "$LLAMA_CPP_SRC/include" -I "$LLAMA_CPP_SRC/ggml/include" -I "$LLAMA_CPP_SRC/ggml/src" \
  ggml/llama-paged.cpp ggml/layerpager-ggml.cpp \
  "$LLAMA_CPP_BUILD/src/libllama.a" "$LLAMA_CPP_BUILD/ggml/src/libggml.a" \
  "$LLAMA_CPP_BUILD/ggml/src/libggml-cpu.a" "$LLAMA_CPP_BUILD/ggml/src/libggml-base.a" \
  "${CARGO_TARGET_DIR:-target}/release/liblayerpager.a" $(cat cmake/native-static-libs.txt) -o "$exe" >&2
echo "$exe"
