#!/usr/bin/env bash
# Mixture-of-experts models in llama.cpp through layerpager: only the routed
# experts are read, in place, with the very same tokens.
#
# Builds the MoE test models from the SmolLM2 wheel (scripts/moe-models.sh)
# and llama-paged (scripts/llama-paged.sh), then for the two 30-block
# models:
# - greedy generation unpaged, and paged at 100, 50 and 25% of the model in
#   each io mode with 0 and 1 readers, and with pre-gating on; every run
#   must give the unpaged token ids, and so must a 70-token prompt at 25%;
# - the read MiB per token of the 50% and 25% runs beside LRU, LFU and
#   Belady expert caches replayed on the routing trace of the same run
#   (`layerpager plan --moe --trace`); more than 1.1x the better of LRU
#   and LFU fails;
# for the 64-expert model: a budget too small for the experts a 70-token
# prompt routes to must fail with a message that names the budget needed,
# and the budget it names for any batch must then give the unpaged ids;
# and in a memory cgroup of llama.cpp's own needs + half the weights, page
# cache dropped: stock llama.cpp against the pager at 50% (pre-gating off
# and on, 1 and 2 readers), the same ids required; and its peak RSS within
# llama.cpp's own + the budget + 32 MiB.
#
# usage: scripts/moe-check.sh [TOKENS]
# env: LAYERPAGER_CACHE (default ~/.cache/layerpager)
set -euo pipefail
cd "$(dirname "$0")/.."
tokens=${1:-32}
exe=$(scripts/llama-paged.sh)
mapfile -t models < <(scripts/moe-models.sh)
cargo build --release --quiet -p layerpager-cli
cli=${CARGO_TARGET_DIR:-target}/release/layerpager

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
short="The capital of France is"
long="Paging the weights of a large language model from disk lets a small machine run a model that does not fit in its memory. The pager keeps the experts that the router chooses most often, reads the rest ahead of need, and never passes its budget. Here is a short story about a small computer that ran a very large model all night long"
fail=0
run() { # model name prompt args...
  local model=$1 name=$2 prompt=$3; shift 3
  "$exe" -m "$model" -p "$prompt" -n "$tokens" --print-ids "$@" >"$work/$name.out" 2>"$work/$name.err" || {
    echo "llama-paged $* failed:"; tail -5 "$work/$name.err"; exit 1
  }
  grep -E '^[0-9]+$' "$work/$name.out" >"$work/$name.ids"
  printf '%-26s %s\n' "$name" "$(grep '^llama-paged: pager\|^llama-paged: no pager' "$work/$name.out" | cut -d'|' -f2-4)"
  if grep -q '^llama-paged: moe' "$work/$name.out"; then
    printf '%-26s %s\n' "" "$(grep '^llama-paged: moe' "$work/$name.out" | cut -d'|' -f2-)"
  fi
}
same() { # reference name
  if ! cmp -s "$work/$1.ids" "$work/$2.ids"; then
    echo "MISMATCH: $2 generated other tokens than $1"
    diff "$work/$1.ids" "$work/$2.ids" | head -5
    fail=1
  fi
}
# The tokens of a trace that llama-paged's figures count: from its first
# generated token on (the prompt's batch and the first token warm up).
counted_from() { # trace ids
  echo $(($(awk '{print $1}' "$1" | sort -n | tail -1) + 1 - ($(wc -l <"$2") - 1)))
}
compare_with_references() { # model name budget
  local from
  from=$(counted_from "$work/$2.trace" "$work/$2.ids")
  "$cli" plan "$1" --moe --trace "$work/$2.trace" --from "$from" --budgets "$3" >"$work/$2.plan"
  python3 - "$work/$2.out" "$work/$2.plan" "$3" <<'PY'
import re, sys
out, plan, budget = open(sys.argv[1]).read(), open(sys.argv[2]).read(), sys.argv[3]
ours = float(re.search(r"moe \| [0-9.]+ MiB routed/token \| ([0-9.]+) MiB read/token", out).group(1))
row = [l for l in plan.splitlines() if re.match(r"\s*[0-9.]+ \w+\s+[0-9]+% ", l)][0].split("|")[1].split()
lru, lfu, belady = map(float, row[:3])
best = min(lru, lfu)
print(f"{'':26} at {budget}: read {ours:.2f} MiB/token; on this run's trace LRU {lru:.2f}, LFU {lfu:.2f}, "
      f"Belady {belady:.2f}: {ours / best:.2f}x the better of LRU and LFU, {ours / belady:.2f}x Belady"
      + ("" if ours <= best * 1.0 else "  (more than the better of LRU and LFU)"))
# A regression guard, not the target (reads vary a little with the
# reader's timing): more than 1.1x the better reference fails.
sys.exit(0 if ours <= best * 1.1 else 1)
PY
}

for model in "${models[@]:0:2}"; do
  echo "model $(basename "$model"), $tokens greedy tokens, 1 thread"
  run "$model" unpaged "$short" --no-pager
  run "$model" unpaged-long "$long" --no-pager
  for budget in 100% 50% 25%; do
    for io in pread direct mmap; do
      for readers in 1 0; do
        name="paged-$budget-$io-$readers"
        run "$model" "$name" "$short" --budget "$budget" --io "$io" --readers "$readers" --trace "$work/$name.trace"
        same unpaged "$name"
      done
    done
  done
  run "$model" paged-50%-prediction "$short" --budget 50% --predict
  same unpaged paged-50%-prediction
  run "$model" paged-25%-long "$long" --budget 25%
  same unpaged-long paged-25%-long
  compare_with_references "$model" "paged-50%-pread-1" 50% || fail=1
  compare_with_references "$model" "paged-25%-pread-1" 25% || fail=1
  if [ "$model" = "${models[0]}" ]; then
    # For the comparison under a memory limit, at the end.
    model_mib=$(grep -o 'of [0-9.]* MiB)' "$work/paged-50%-pread-1.out" | head -1 | tr -dc '0-9.')
    rss_mib=$(grep -o 'peak RSS [0-9.]* MiB' "$work/unpaged.out" | tr -dc '0-9.')
    cp "$work/unpaged.ids" "$work/first-model.ids"
    cp "$work/unpaged.out" "$work/first-model.out"
  fi
done

# A prompt whose experts do not fit: a clear error naming the budget needed,
# then the budget it names for any batch works.
model=${models[2]}
echo "model $(basename "$model"): a 70-token prompt routes to nearly every expert of a block"
run "$model" unpaged-long "$long" --no-pager
small=$((29 << 20))
if "$exe" -m "$model" -p "$long" -n "$tokens" --print-ids --budget "$small" >"$work/small.out" 2>"$work/small.err"; then
  echo "FAIL: a budget of 29 MiB ran a prompt whose experts need more"; fail=1
else
  msg=$(grep 'it needs a budget of at least' "$work/small.err" || true)
  [ -n "$msg" ] || { echo "FAIL: no message naming the budget needed:"; tail -3 "$work/small.err"; exit 1; }
  echo "at 29 MiB: $msg"
  needed=$(echo "$msg" | grep -o '[0-9.]* MiB holds any batch' | grep -o '^[0-9.]*')
  bytes=$(python3 -c "import math; print(math.ceil($needed * 2**20))")
  run "$model" paged-needed "$long" --budget "$bytes"
  same unpaged-long paged-needed
fi

# Under a memory limit: stock llama.cpp against the pager.
model=${models[0]}
limit=$(python3 -c "print(int(($rss_mib - $model_mib + $model_mib / 2) * 2**20))")
# shellcheck source=scripts/memory-cgroup.sh
. scripts/memory-cgroup.sh
if cg=$(make_memory_cgroup moe-check "$limit"); then
  cp "$work/first-model.ids" "$work/unpaged.ids"
  cp "$work/first-model.out" "$work/unpaged.out"
  limited() { # name args...
    local name=$1; shift
    run_limited "$cg" "$model" "$work/$name" "$exe" -m "$model" -p "$short" -n "$tokens" --print-ids "$@" || exit 1
    printf '%-26s %s\n' "$name" "$(grep '^llama-paged: pager\|^llama-paged: no pager' "$work/$name.out" | cut -d'|' -f2-4)"
    same unpaged "$name"
  }
  echo "model $(basename "$model") in a memory cgroup of $((limit >> 20)) MiB (llama.cpp's own $(python3 -c "print(round($rss_mib - $model_mib))") MiB + half the weights), page cache dropped:"
  limited limited-unpaged --no-pager
  limited limited-50% --budget 50%
  limited limited-50%-prediction --budget 50% --predict
  limited limited-50%-2-readers --budget 50% --readers 2
  rmdir "$cg"
  # The physical bound: the file read with O_DIRECT in 4 MiB requests, now.
  drop_page_cache "$model"
  dd if="$model" of=/dev/null bs=4M iflag=direct 2>"$work/dd.err" || true
  python3 - "$work" <<'PY'
import re, sys
w = sys.argv[1]
tps = lambda n: float(re.search(r"([0-9.]+) tokens/s", open(f"{w}/{n}.out").read()).group(1))
field = lambda n, what: float(re.search(r"([0-9.]+) " + what, open(f"{w}/{n}.out").read()).group(1))
stock, unlimited = tps("limited-unpaged"), tps("unpaged")
dd = re.search(r"^(\d+) bytes.* copied, ([0-9.]+) s", open(f"{w}/dd.err").read(), re.M)
raw = int(dd.group(1)) / float(dd.group(2)) if dd else 0
print(f"{'':26} raw O_DIRECT read of the file, 4 MiB requests: {raw / 1e9:.2f} GB/s")
for n in ["limited-50%", "limited-50%-prediction", "limited-50%-2-readers"]:
    # The bound: the unpaged run's time per token, or the bytes read at the raw speed.
    bound = 1 / max(1 / unlimited, field(n, "MiB read/token") * 2**20 / raw) if raw else 0
    print(f"{n:26} {tps(n) / stock:.2f}x stock llama.cpp under the limit, {tps(n) / unlimited:.2f}x unpaged without one"
          + (f", {tps(n) / bound:.2f}x the physical bound ({bound:.1f} tokens/s)" if raw else ""))
print(f"{'':26} pre-gating on/off: {tps('limited-50%-prediction') / tps('limited-50%'):.2f}x")
PY
  # Peak RSS: what llama.cpp needs besides the weights, plus the budget,
  # plus 32 MiB at most.
  python3 - "$work/limited-50%.out" "$rss_mib" "$model_mib" <<'PY' || fail=1
import re, sys
out = open(sys.argv[1]).read()
rss = float(re.search(r"peak RSS ([0-9.]+) MiB", out).group(1))
budget = float(re.search(r"pager budget ([0-9.]+) MiB", out).group(1))
allowed = float(sys.argv[2]) - float(sys.argv[3]) + budget + 32
print(f"{'':26} peak RSS {rss:.1f} MiB, allowed {allowed:.1f} (llama.cpp's own + budget + 32 MiB)")
sys.exit(0 if rss <= allowed else 1)
PY
else
  echo "no memory cgroup can be made here (not root, or no cgroup v1 memory controller): the comparison under a memory limit is skipped"
fi
if [ $fail -ne 0 ]; then
  exit 1
fi
echo "moe-check: every paged run generated the same token ids as llama.cpp alone"
