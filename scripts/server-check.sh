#!/usr/bin/env bash
# llama.cpp's own tools with one flag: llama-server answers a real client
# (the openai package, pinned) the same with --pager-budget as without it,
# under a memory limit, with several requests at once.
#
# Builds the tools with the --pager-* options (scripts/llama-tools.sh) and:
#   1. bad values stop llama-server at start, with one line and a non-zero exit;
#   2. starts llama-server (--parallel 2) on 127.0.0.1 three times: stock
#      without a limit (its peak RSS gives the server's own needs), then
#      stock and paged at 50% each inside a memory cgroup of those needs +
#      half the weights (page cache dropped first); sends each the same chat
#      completions (4 at a time, temperature 0, seed 42, 48 tokens):
#      requires identical answers, no failed request, no OOM kill, the
#      pager's figures in /metrics, a clean exit on SIGTERM; prints both
#      servers' aggregate tokens/s;
#   3. llama-perplexity on a short text: stock, paged at 100% and at 50%, the
#      same perplexity to the last digit;
#   4. llama-cli (one greedy turn: the same answer as stock) and
#      llama-bench with --pager-budget;
#   5. the MoE test model (scripts/moe-models.sh) through llama-server,
#      stock and paged at 50%, one chat at a time: identical answers; then
#      4 at a time through the paged one, none failing.
# Where no memory cgroup can be made, step 2 runs without the limit, saying so.
#
# usage: scripts/server-check.sh [CHATS]   (default 32)
# env: LAYERPAGER_CACHE (default ~/.cache/layerpager)
set -euo pipefail
cd "$(dirname "$0")/.."
chats=${1:-32}
cache=${LAYERPAGER_CACHE:-$HOME/.cache/layerpager}
model=$(scripts/llama-model.sh)
bin=$(scripts/llama-tools.sh)
client_venv=$cache/client-venv
if ! "$client_venv/bin/python" -c 'import openai; assert openai.__version__ == "3.51.0"' 2>/dev/null; then
  python3 -m venv "$client_venv"
  "$client_venv/bin/pip" install -q openai==3.51.0
fi
# shellcheck source=scripts/memory-cgroup.sh
. scripts/memory-cgroup.sh
work=$(mktemp -d)
server_pid=
cg=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  [ -z "$cg" ] || rmdir "$cg" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "server-check: $*"; exit 1; }
model_bytes=$(stat -c %s "$model")

echo "== bad values stop llama-server at start"
for bad in "--pager-budget 0" "--pager-budget 0%" "--pager-budget lots" "--pager-budget 12Q" \
  "--pager-budget 1K" "--pager-io fast" "--pager-readers -1"; do
  # shellcheck disable=SC2086
  if timeout 60 "$bin/llama-server" -m "$model" --port 1 $bad >"$work/bad.out" 2>&1; then
    fail "llama-server $bad started"
  fi
  why=$(grep -E 'layerpager-ggml:|error while handling argument' "$work/bad.out" | tail -1) || fail "llama-server $bad: no line says why it stopped"
  printf '  %-24s -> %s\n' "$bad" "$why"
done

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
# start_server NAME CGROUP(or "") MODEL ARGS...: starts llama-server in the
# background, waits for /health, sets server_pid.
start_server() {
  local name=$1 cg=$2 file=$3
  shift 3
  drop_page_cache "$file"
  sh -c '[ -z "$1" ] || echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" \
    "$bin/llama-server" -m "$file" --host 127.0.0.1 --port "$port" -t 1 -c 2048 --parallel 2 --metrics \
    --no-webui "$@" >"$work/$name.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do
    if curl -sf "$url/health" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || { tail -5 "$work/$name.log"; fail "llama-server ($name) exited at start"; }
    sleep 0.2
  done
  fail "llama-server ($name) did not answer /health in 120 s"
}
# stop_server NAME: SIGTERM, and the server must exit 0 within 30 s.
stop_server() {
  kill -TERM "$server_pid"
  local rc=0
  timeout 30 tail --pid="$server_pid" -f /dev/null || fail "llama-server ($1) did not exit on SIGTERM within 30 s"
  wait "$server_pid" || rc=$?
  server_pid=
  [ "$rc" = 0 ] || { tail -5 "$work/$1.log"; fail "llama-server ($1) exited with $rc on SIGTERM"; }
}
# chat NAME [CHATS [CONCURRENCY]]: the client's run against the server; prints its line.
chat() {
  "$client_venv/bin/python" scripts/server-client.py "$url/v1" "$work/$1.answers" --chats "${2:-$chats}" \
    --concurrency "${3:-4}" --max-tokens 48 >"$work/$1.client" || { cat "$work/$1.client"; tail -5 "$work/$1.log"; fail "$1: requests failed"; }
  printf '  %-22s %s\n' "$1" "$(cat "$work/$1.client")"
}
tokens_per_s() { grep -o '[0-9.]* tokens/s' "$work/$1.client" | cut -d' ' -f1; }

echo "== llama-server, stock and paged, $chats chats, 4 at a time"
# The server's own needs: its peak RSS over the same chats without a limit,
# less the weights it maps (all of them, by then).
start_server unlimited "" "$model"
chat unlimited
peak_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$server_pid/status")
stop_server unlimited
own=$((peak_kib * 1024 - model_bytes))
limit=$((own + model_bytes / 2))
if cg=$(make_memory_cgroup server-check "$limit"); then
  echo "  in a memory cgroup of $((limit >> 20)) MiB (the server's own $((own >> 20)) MiB + half the weights), page cache dropped"
else
  cg=
  echo "  no memory cgroup can be made here (not root, or no cgroup v1 memory controller): the limit is skipped"
fi
oom_kills() { [ -z "$cg" ] && echo 0 || awk '/^oom_kill / {print $2}' "$cg/memory.oom_control"; }
start_server stock "$cg" "$model"
chat stock
stop_server stock
start_server paged "$cg" "$model" --pager-budget 50%
grep -m1 'layerpager-ggml: .*budget' "$work/paged.log" | sed 's/^/  /'
chat paged
curl -sf "$url/metrics" >"$work/metrics" || fail "/metrics did not answer"
curl -sf "$url/health" >/dev/null || fail "/health did not answer"
stop_server paged
[ -z "$cg" ] || { kills=$(oom_kills); rmdir "$cg"; cg=; [ "$kills" = 0 ] || fail "$kills OOM kills in the memory cgroup"; }
for run in stock paged; do
  cmp -s "$work/unlimited.answers" "$work/$run.answers" || {
    diff "$work/unlimited.answers" "$work/$run.answers" | head -6; fail "the $run server answered differently"; }
done
python3 - "$work/metrics" <<'PY' || fail "/metrics lacks the pager's figures"
import sys
m = {l.split()[0]: float(l.split()[1]) for l in open(sys.argv[1]) if l.startswith("llamacpp:pager_")}
need = ["resident_bytes", "budget_bytes", "read_bytes_total", "hits_total", "misses_total"]
missing = [n for n in need if "llamacpp:pager_" + n not in m]
assert not missing, missing
assert 0 < m["llamacpp:pager_resident_bytes"] <= m["llamacpp:pager_budget_bytes"], m
print("  /metrics: " + ", ".join(f"{n.split(':')[1]} {m[n]:.0f}" for n in sorted(m) if n.endswith("bytes") or n.endswith("total")))
PY
echo "  identical answers; under the limit the paged server runs $(python3 -c "print(f'{$(tokens_per_s paged) / $(tokens_per_s stock):.2f}')")x the stock server's tokens/s"

echo "== llama-perplexity: stock, paged at 100% and 50%"
head -c 6000 README.md >"$work/text.txt"
for run in "stock" "100% --pager-budget 100%" "50% --pager-budget 50%"; do
  read -r name args <<<"$run"
  # shellcheck disable=SC2086
  "$bin/llama-perplexity" -m "$model" -f "$work/text.txt" -c 256 -b 256 -t 2 $args >"$work/ppl-$name.out" 2>&1 ||
    { tail -5 "$work/ppl-$name.out"; fail "llama-perplexity ($name) failed"; }
  grep -o 'Final estimate: PPL = .*' "$work/ppl-$name.out" >"$work/ppl-$name" || fail "llama-perplexity ($name) printed no estimate"
  printf '  %-6s %s\n' "$name" "$(cat "$work/ppl-$name")"
done
cmp -s "$work/ppl-stock" "$work/ppl-100%" && cmp -s "$work/ppl-stock" "$work/ppl-50%" || fail "the perplexities differ"

echo "== llama-cli and llama-bench with --pager-budget 50%"
# llama-cli: one turn, greedy; the answer is what it prints between the
# prompt's echo and its timings line.
for run in "stock" "paged --pager-budget 50%"; do
  read -r name args <<<"$run"
  # shellcheck disable=SC2086
  timeout 300 "$bin/llama-cli" -m "$model" -p "What is the capital of France?" -n 32 --single-turn --temp 0 -t 1 \
    $args </dev/null >"$work/cli-$name.out" 2>"$work/cli-$name.err" || { tail -5 "$work/cli-$name.err"; fail "llama-cli ($name) failed"; }
  sed -n '/^> What is the capital/,/^\[ Prompt:/p' "$work/cli-$name.out" | sed '1d;$d' >"$work/cli-$name.answer"
  [ -s "$work/cli-$name.answer" ] || fail "llama-cli ($name) printed no answer"
done
grep -q 'layerpager-ggml: .*budget' "$work/cli-paged.err" || fail "llama-cli did not page the weights"
cmp -s "$work/cli-stock.answer" "$work/cli-paged.answer" || fail "llama-cli answered differently with the pager"
echo "  llama-cli, stock and paged: $(tr '\n' ' ' <"$work/cli-paged.answer" | cut -c1-70)..."
for run in "stock" "paged --pager-budget 50%"; do
  read -r name args <<<"$run"
  # shellcheck disable=SC2086
  "$bin/llama-bench" -m "$model" -p 16 -n 16 -r 1 -t 1 $args -o md >"$work/bench-$name.out" 2>"$work/bench-$name.err" ||
    { tail -5 "$work/bench-$name.err"; fail "llama-bench ($name) failed"; }
  grep -E '^\| llama' "$work/bench-$name.out" | sed "s/^/  $name  /"
done
grep -q 'layerpager-ggml: .*budget' "$work/bench-paged.err" || fail "llama-bench did not page the weights"

echo "== the MoE test model through llama-server, stock and paged at 50%, one chat at a time"
# One at a time: stock llama.cpp itself answers a MoE model differently when
# requests share a batch in another way (measured: 4 at a time against 1 at
# a time, both stock), and which requests share a batch depends on timing.
moe=$(scripts/moe-models.sh | sed -n 1p)
start_server moe-stock "" "$moe"
chat moe-stock 8 1
stop_server moe-stock
start_server moe-paged "" "$moe" --pager-budget 50%
chat moe-paged 8 1
# Batches of both slots through the routed experts: no request may fail.
chat moe-paged-4-at-a-time 8 4
stop_server moe-paged
grep -q 'only routed experts are read' "$work/moe-paged.log" || fail "the MoE model's experts were not split"
cmp -s "$work/moe-stock.answers" "$work/moe-paged.answers" || {
  diff "$work/moe-stock.answers" "$work/moe-paged.answers" | head -6; fail "the paged MoE server answered differently"; }
echo "server-check: identical answers and perplexities, stock and paged"
