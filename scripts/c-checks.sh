#!/usr/bin/env bash
# Builds the C tests against include/ and the release static library, then
# runs them under AddressSanitizer and under valgrind (zero errors, zero
# definite leaks). Usage: scripts/c-checks.sh [asan|valgrind|all]
set -euo pipefail
cd "$(dirname "$0")/.."
# The Python with the gguf package: as the tests choose it (tests/common).
py=${LAYERPAGER_PYTHON:-.venv/bin/python3}
[ -x "$py" ] || py=python3
what=${1:-all}
cargo build --release --lib --quiet -p layerpager
lib=${CARGO_TARGET_DIR:-target}/release/liblayerpager.a
libs=$(cat cmake/native-static-libs.txt)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" tests/fixtures/make_fixtures.py "$work/fixtures" >/dev/null
"$py" tests/fixtures/damage.py "$work/damaged" "$work/fixtures/all_types_align8.gguf" \
  "$work/fixtures/llama_q4k.gguf" "$work/fixtures/small.safetensors" "$work/fixtures/moe_q4k.gguf"
mkdir -p "$work/scratch"

build() { # name flags sources...
  local name=$1 flags=$2; shift 2
  local srcs=()
  for s in "$@"; do srcs+=("c-tests/$s"); done
  # shellcheck disable=SC2086
  cc -std=c11 -g -O1 -Wall -Wextra -Werror -pthread $flags -Iinclude "${srcs[@]}" "$lib" $libs -o "$work/$name"
}

run_all() { # prefix...
  "$@" "$work/engine_reads_model" "$work/fixtures/llama_q4k.gguf" gguf
  "$@" "$work/engine_reads_model" "$work/fixtures/all_types_align8.gguf" gguf
  "$@" "$work/engine_reads_model" "$work/fixtures/small.safetensors" safetensors
  "$@" "$work/api_misuse" "$work/fixtures/llama_q4k.gguf" "$work/scratch"
  "$@" "$work/source_and_threads" "$work/fixtures/llama_q4k.gguf"
  "$@" "$work/close_race" "$work/fixtures/llama_q4k.gguf"
  "$@" "$work/readahead_stress" "$work/fixtures/llama_q4k.gguf" "${stress_size:-}"
  "$@" "$work/abuse_files" "$work/damaged"
  "$@" "$work/double_include"
  "$@" "$work/moe_stress" "$work/scratch" "${stress_size:-}"
  # Thousands of reads: under AddressSanitizer only, not valgrind.
  [ -n "${stress_size:-}" ] || "$@" "$work/moe_outside" "$work/scratch"
}

build_all() { # flags
  build engine_reads_model "$1" engine_reads_model.c
  build api_misuse "$1" api_misuse.c
  build source_and_threads "$1" source_and_threads.c
  build close_race "$1" close_race.c
  build readahead_stress "$1" readahead_stress.c
  build abuse_files "$1" abuse_files.c
  build double_include "$1" double_include_a.c double_include_b.c
  build moe_outside "$1" moe_outside.c
  build moe_stress "$1" moe_stress.c
}

if [ "$what" = asan ] || [ "$what" = all ]; then
  echo "== C tests under AddressSanitizer"
  build_all "-fsanitize=address -fno-omit-frame-pointer"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 run_all env
fi
if [ "$what" = valgrind ] || [ "$what" = all ]; then
  echo "== C tests under valgrind"
  build_all ""
  stress_size=quick run_all valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite
fi
echo "c-checks ($what): all passed"
