#!/usr/bin/env bash
# The read path under a memory limit, with the physical reference beside
# it: `layerpager bench --cgroup-limit +8M` at 25, 50 and 75% on two
# synthetic models built once into the cache, the default io mode
# (O_DIRECT through staging huge pages) and pread dropping behind, each in a
# memory cgroup of the budget + 8 MiB. 'vs raw' is a steady pass's time
# over its bytes at the file's raw O_DIRECT speed measured in the same run
# (1.00x is the disk's sequential speed); 'vs bound' is bytes over M - B.
#   - m48: `layerpager synth --layers 48`, 1.33 GiB, matrices of 2.4-6.5 MB;
#   - x320: `--layers 320 --dim 768 --ff 2048`, 1.2 GiB of 2,883 tensors,
#     matrices of 324 and 864 KiB (the size of an MoE model's experts).
# Fails if a run fails; skips the tables, saying why, where no memory
# cgroup can be made.
#
# usage: scripts/read-path-bench.sh [PASSES=3]
# env: LAYERPAGER_CACHE (default ~/.cache/layerpager)
set -euo pipefail
cd "$(dirname "$0")/.."
passes=${1:-3}
cache=${LAYERPAGER_CACHE:-$HOME/.cache/layerpager}/bench
mkdir -p "$cache"
cargo build --release --quiet -p layerpager-cli
exe=${CARGO_TARGET_DIR:-target}/release/layerpager
model() { # name synth-args...
  local path=$cache/$1.gguf
  shift
  if [ ! -s "$path" ]; then
    # Written back before any measure: a disk still flushing it reads slower.
    "$exe" synth "$path.tmp" "$@" >/dev/null && sync "$path.tmp" && mv "$path.tmp" "$path"
  fi
  echo "$path"
}
for spec in "m48 --layers 48" "x320 --layers 320 --dim 768 --ff 2048"; do
  read -r name args <<<"$spec"
  # shellcheck disable=SC2086
  path=$(model "$name" $args)
  echo "== $name ($args)"
  "$exe" bench "$path" --budget 25%,50%,75% --cgroup-limit +8M --contenders auto,pread --passes "$passes"
done
