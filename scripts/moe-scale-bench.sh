#!/usr/bin/env bash
# The pager at mixture-of-experts scale, side by side in one run: the C
# program examples/c-bench/moe_scale.c (two threads of random expert
# acquires through the C API, every byte of a pass checked; exits non-zero
# on a wrong byte or a failed call), then the criterion bench
# cli/benches/moe_scale.rs (expert hit beside a dense hit, CPU per miss by
# slice count, a Qwen3-30B-A3B-shaped replay beside the exact policy).
#
# usage: scripts/moe-scale-bench.sh [ACQUIRES_PER_THREAD=20000] [--c-only]
set -euo pipefail
cd "$(dirname "$0")/.."
acquires=20000
c_only=0
for a in "$@"; do
  case $a in
    --c-only) c_only=1 ;;
    *) acquires=$a ;;
  esac
done
cargo build --release --lib --quiet -p layerpager
lib=${CARGO_TARGET_DIR:-target}/release/liblayerpager.a
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2046
cc -std=c11 -O2 -Wall -Wextra -Werror -pthread -Iinclude examples/c-bench/moe_scale.c "$lib" \
  $(cat cmake/native-static-libs.txt) -o "$work/moe_scale"
echo "== C API: examples/c-bench/moe_scale.c"
"$work/moe_scale" "$acquires"
if [ "$c_only" = 0 ]; then
  echo "== Rust API: cargo bench -p layerpager-cli --bench moe_scale"
  cargo bench --quiet -p layerpager-cli --bench moe_scale 2>&1 |
    grep -Ev '^(Benchmarking|Found|  [0-9]+ \(|Warning|$)'
fi
