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
echo "install-check: all passed"
