#!/usr/bin/env bash
# Builds with CMake, runs ctest, installs to a temporary prefix, then builds
# and runs an outside C++ project with find_package and a C program with
# pkg-config against that prefix only.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake -S . -B "$work/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build" -j2
ctest --test-dir "$work/build" --output-on-failure
cmake --install "$work/build" --prefix "$work/prefix"
ls -l "$work/prefix"/lib*/liblayerpager.so* "$work/prefix"/lib*/liblayerpager.a
model="$work/build/fixtures/llama_q4k.gguf"

echo "== outside CMake project, find_package(layerpager) with CMAKE_PREFIX_PATH only"
cmake -S examples/cmake-consumer -B "$work/consumer" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/consumer" -j2
"$work/consumer/engine_demo" "$model"
"$work/consumer/engine_demo_static" "$model"
readelf -d "$work/consumer/engine_demo" | grep -q 'liblayerpager.so.0' || { echo "not linked by soname"; exit 1; }

echo "== the CUDA example's build (examples/cuda-stream): built where a CUDA toolkit is found, else said"
cmake -S examples/cuda-stream -B "$work/cuda-stream" -DCMAKE_PREFIX_PATH="$work/prefix" | grep 'cuda-stream' || true
cmake --build "$work/cuda-stream" -j2
if [ -x "$work/cuda-stream/cuda-stream" ] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  "$work/cuda-stream/cuda-stream" "$model" 0.5 2 auto
fi

echo "== C program with pkg-config"
export PKG_CONFIG_PATH="$(dirname "$(ls -d "$work/prefix"/lib*/pkgconfig/layerpager.pc)")"
pkg-config --modversion layerpager
# shellcheck disable=SC2046
cc examples/pkg-config/main.c $(pkg-config --cflags --libs layerpager) -o "$work/pc-demo" \
  -Wl,-rpath,"$(pkg-config --variable=libdir layerpager)"
"$work/pc-demo" "$model"
# shellcheck disable=SC2046
cc examples/pkg-config/main.c $(pkg-config --cflags layerpager) "$(pkg-config --variable=libdir layerpager)/liblayerpager.a" \
  $(pkg-config --libs-only-other --static layerpager) $(pkg-config --static --libs-only-l layerpager | sed 's/-llayerpager//') -o "$work/pc-demo-static"
"$work/pc-demo-static" "$model"
echo "== an outside llama.cpp engine (examples/llama-consumer) against the installed package,"
echo "   on another GGUF (the real model requantized to Q8_0): the same token ids at half budget"
eval "$(scripts/llama-cpp.sh llama)"
py=${LAYERPAGER_PYTHON:-.venv/bin/python3}
[ -x "$py" ] || py=python3
"$py" scripts/requantize.py "$(scripts/llama-model.sh)" "$work/q8.gguf" >/dev/null
cmake -S examples/llama-consumer -B "$work/llama-consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DLLAMA_CPP_SRC="$LLAMA_CPP_SRC" -DLLAMA_CPP_BUILD="$LLAMA_CPP_BUILD" >/dev/null
cmake --build "$work/llama-consumer" -j2
for run in "--no-pager" "--budget 50%"; do
  # shellcheck disable=SC2086
  "$work/llama-consumer/llama-paged" -m "$work/q8.gguf" -n 24 --print-ids $run >"$work/ids.out" 2>"$work/ids.err" ||
    { cat "$work/ids.err"; exit 1; }
  grep '^llama-paged:' "$work/ids.out"
  grep -E '^[0-9]+$' "$work/ids.out" >"$work/ids-${run// /}"
done
cmp "$work/ids---no-pager" "$work/ids---budget50%"
echo "install-check: all passed"
