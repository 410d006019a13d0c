#!/usr/bin/env bash
# Builds llama.cpp's own tools (llama-server, llama-cli, llama-perplexity,
# llama-bench) with the --pager-* options, and llama-quantize (which
# scripts/llama-check.sh makes its Q4_K_M file with): installs layerpager into a
# prefix in the cache (CMake package, static library, the ggml glue), then
# turns the tools on with -DLLAMA_LAYERPAGER=ON in the cached build directory
# of scripts/llama-cpp.sh (ggml/patches/llama-tools-pager.patch applied
# there): later runs relink only.
# Without --pager-budget the tools run as stock llama.cpp.
#
# usage: scripts/llama-tools.sh
# prints: the directory of the tools' executables
# env: LAYERPAGER_CACHE (default ~/.cache/layerpager)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${LAYERPAGER_CACHE:-$HOME/.cache/layerpager}
eval "$(scripts/llama-cpp.sh ggml)"
log() { printf '[llama-tools] %s\n' "$*" >&2; }

# layerpager as an engine gets it: cmake --install, then find_package. The
# library comes from cargo's usual target directory (already built by the
# README's commands, so nothing is rebuilt).
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
case $target_dir in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
prefix=$cache/layerpager-prefix
log "installing layerpager into $prefix"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
cmake -S . -B "$staging/build" -DCMAKE_BUILD_TYPE=Release -DLAYERPAGER_BUILD_TESTS=OFF \
  -DLAYERPAGER_CARGO_TARGET_DIR="$target_dir" >/dev/null
cmake --build "$staging/build" >&2
cmake --install "$staging/build" --prefix "$staging/prefix" >/dev/null
# Only files whose bytes changed are copied over (a fresh clone's new file
# times would otherwise rebuild every tool that includes the glue's header).
(cd "$staging/prefix" && find . -type f -o -type l) | while read -r f; do
  if [ -L "$staging/prefix/$f" ] || ! cmp -s "$staging/prefix/$f" "$prefix/$f"; then
    mkdir -p "$(dirname "$prefix/$f")"
    cp -P --remove-destination "$staging/prefix/$f" "$prefix/$f"
  fi
done

# The build directory of scripts/llama-cpp.sh, with the tools turned on:
# ggml and libllama, already built there, are not built again.
build=$LLAMA_CPP_BUILD
if ! grep -q '^LLAMA_LAYERPAGER:BOOL=ON' "$build/CMakeCache.txt"; then
  log "configuring llama.cpp's tools (-DLLAMA_LAYERPAGER=ON) in $build"
  cmake -S "$LLAMA_CPP_SRC" -B "$build" -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_LAYERPAGER=ON -DLAYERPAGER_STATIC=ON -DCMAKE_PREFIX_PATH="$prefix" >&2
fi
log "building llama-server, llama-cli, llama-perplexity, llama-bench, llama-quantize (the first build takes many minutes on 2 cores)"
cmake --build "$build" --target llama-server llama-cli llama-perplexity llama-bench llama-quantize -j "$(nproc)" >&2
echo "$build/bin"
