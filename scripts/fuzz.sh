#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s), seeded from the
# reference fixtures. cargo-fuzz builds on stable with --sanitizer none
# (coverage-guided libFuzzer, no sanitizer; the properties are checked by
# assertions). A crash leaves its input in fuzz/artifacts/<target>/: copy it
# to fuzz/regressions/ so that cargo test keeps checking it.
set -euo pipefail
cd "$(dirname "$0")/.."
# The Python with the gguf package: as the tests choose it (tests/common).
py=${LAYERPAGER_PYTHON:-.venv/bin/python3}
[ -x "$py" ] || py=python3
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" tests/fixtures/make_fixtures.py "$work/fixtures" >/dev/null
for t in gguf_index safetensors_index c_open; do mkdir -p "$work/corpus/$t"; done
cp "$work"/fixtures/all_types*.gguf "$work"/fixtures/llama_q4k_v2.gguf fuzz/regressions/*.gguf "$work/corpus/gguf_index/"
cp "$work"/fixtures/small.safetensors fuzz/regressions/*.safetensors "$work/corpus/safetensors_index/"
cp "$work"/fixtures/all_types_align8.gguf "$work"/fixtures/small.safetensors "$work/corpus/c_open/"
cd fuzz
cargo fuzz build --sanitizer none -O
for t in gguf_index safetensors_index c_open; do
  echo "== fuzzing $t for ${seconds}s"
  cargo fuzz run --sanitizer none -O "$t" "$work/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 2>&1 | tail -n 3
done
echo "fuzz: no crash"
