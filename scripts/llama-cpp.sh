#!/usr/bin/env bash
# Fetches llama.cpp's sources through PyPI (the sdist of llama-cpp-python
# 0.3.36 vendors llama.cpp, ggml commit 0c1e570), checks its sha256, applies
# ggml/patches/*.patch, and builds the CMake targets
# named on the command line (default: ggml) once, into a cache outside the
# checkout that later runs reuse.
#
# usage: scripts/llama-cpp.sh [TARGET...]
# prints: the source tree and the build directory, as two lines of
#   LLAMA_CPP_SRC=... and LLAMA_CPP_BUILD=... (eval-able)
# env: LAYERPAGER_CACHE (default ~/.cache/layerpager)
set -euo pipefail

version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
cache=${LAYERPAGER_CACHE:-$HOME/.cache/layerpager}
src=$cache/llama-cpp-python-$version/vendor/llama.cpp
build=$cache/build-llama-cpp-$version
mkdir -p "$cache"

log() { printf '[llama-cpp] %s\n' "$*" >&2; }

if [ ! -f "$src/CMakeLists.txt" ]; then
  sdist=$cache/sdist/llama_cpp_python-$version.tar.gz
  if [ ! -f "$sdist" ] || ! echo "$sha256  $sdist" | sha256sum -c --quiet - 2>/dev/null; then
    log "downloading the llama-cpp-python $version sdist from PyPI"
    # Without scikit-build-core in the environment, pip would build every
    # build dependency from source just to download the sdist.
    if [ ! -x "$cache/venv/bin/pip" ]; then
      python3 -m venv "$cache/venv"
    fi
    "$cache/venv/bin/pip" install -q scikit-build-core
    rm -rf "$cache/sdist"
    "$cache/venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation \
      "llama-cpp-python==$version" -d "$cache/sdist" >&2
  fi
  echo "$sha256  $sdist" | sha256sum -c --quiet -
  rm -rf "$cache/llama-cpp-python-$version.partial"
  mkdir -p "$cache/llama-cpp-python-$version.partial"
  tar xzf "$sdist" -C "$cache/llama-cpp-python-$version.partial" --strip-components=1
  rm -rf "$cache/llama-cpp-python-$version"
  mv "$cache/llama-cpp-python-$version.partial" "$cache/llama-cpp-python-$version"
fi

# The patches layerpager brings (ggml/patches): MAP_POPULATE made optional,
# and the --pager-* options of the tools (common/, llama-server's /metrics,
# llama-bench; off unless configured with -DLLAMA_LAYERPAGER=ON). A patch
# that changed since it was applied is taken back out first.
patches=$(cd "$(dirname "$0")/.." && pwd)/ggml/patches
if ! grep -q LLAMA_MMAP_NO_PREFETCH "$src/src/llama-model.cpp"; then
  log "applying ggml/patches/llama-mmap-no-prefetch.patch"
  (cd "$src" && git apply -p1 "$patches/llama-mmap-no-prefetch.patch")
fi
applied=$src/.layerpager-tools-pager.patch
if ! cmp -s "$applied" "$patches/llama-tools-pager.patch"; then
  if [ -f "$applied" ]; then
    (cd "$src" && git apply -p1 -R "$applied")
  fi
  log "applying ggml/patches/llama-tools-pager.patch"
  (cd "$src" && git apply -p1 "$patches/llama-tools-pager.patch")
  cp "$patches/llama-tools-pager.patch" "$applied"
fi

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ggml)
if [ ! -f "$build/CMakeCache.txt" ]; then
  log "configuring llama.cpp (CPU only, static, Release) in $build"
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_COMMON=OFF -DGGML_OPENMP=OFF >&2
fi
log "building ${targets[*]} (the first build takes minutes on 2 cores)"
cmake --build "$build" --target "${targets[@]}" -j "$(nproc)" >&2
echo "LLAMA_CPP_SRC=$src"
echo "LLAMA_CPP_BUILD=$build"
