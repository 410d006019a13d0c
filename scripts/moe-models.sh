#!/usr/bin/env bash
# Builds the mixture-of-experts test models from the real SmolLM2 model
# (scripts/llama-model.sh) with scripts/moe-model.py, once, into the cache;
# prints their paths, one per line:
#   1. 8 experts, top-2, Q4_1: 30 blocks, 447 MB; an expert's slice is
#      552,960 bytes (135 pages);
#   2. 6 experts, top-3, Q8_0: 30 blocks, 557 MB; a slice is 940,032 bytes,
#      not a page multiple, so neighbours share pages;
#   3. 64 experts, top-8, Q4_1, 2 blocks, 246 MB: a 70-token prompt routes
#      to nearly every expert of a block (34 MiB per expert tensor).
# A model is rebuilt when the script that writes it changes.
# env: LAYERPAGER_CACHE (default ~/.cache/layerpager), PYTHON (a python with
#   the gguf package; default .venv/bin/python, as the README's test command makes)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${LAYERPAGER_CACHE:-$HOME/.cache/layerpager}
python=${PYTHON:-.venv/bin/python}
if ! "$python" -c 'import gguf' 2>/dev/null; then
  python3 -m venv .venv && .venv/bin/pip install -q -r tests/requirements.txt >&2
  python=.venv/bin/python
fi
dense=$(scripts/llama-model.sh)
version=$(cat scripts/moe-model.py scripts/requantize.py | sha256sum | cut -c1-12)
mkdir -p "$cache/moe"
for spec in "8 2 Q4_1 0" "6 3 Q8_0 0" "64 8 Q4_1 2"; do
  read -r experts used type blocks <<<"$spec"
  out=$cache/moe/smollm2-moe-${experts}x-top${used}-${type}$([ "$blocks" = 0 ] || echo "-${blocks}blocks")-$version.gguf
  if [ ! -f "$out" ]; then
    rm -f "$cache"/moe/smollm2-moe-"${experts}"x-top"${used}"-"${type}"*.gguf
    "$python" scripts/moe-model.py "$dense" "$out.partial" --experts "$experts" --used "$used" --type "$type" \
      --blocks "$blocks" >&2
    mv "$out.partial" "$out"
  fi
  echo "$out"
done
