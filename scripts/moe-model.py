#!/usr/bin/env python3
"""Upcycles a dense llama-architecture GGUF into a mixture-of-experts one,
Mixtral style, with llama.cpp's own gguf package as reader and writer.

Every block's ffn_gate / ffn_up / ffn_down becomes N experts stacked into
ffn_{gate,up,down}_exps (ggml shape [in, out, N]); expert e is the dense
weight plus its own seeded noise (3% of the weight's standard deviation),
quantized to TYPE, so every expert's bytes differ and a wrong expert
changes the tokens. Each block gains a router ffn_gate_inp (F32
[n_embd, N], normal x 2/sqrt(n_embd), seeded). Keys llama.expert_count and
llama.expert_used_count tell llama.cpp to route each token to K experts.

    moe-model.py IN.gguf OUT.gguf --experts N --used K [--type Q4_1|Q8_0]
                 [--blocks B] [--seed S]

--blocks keeps only the first B blocks (a model with many experts per
block stays small).
"""
import argparse
import re

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from requantize import copy_field

FFN = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.weight$")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--experts", type=int, required=True)
    ap.add_argument("--used", type=int, required=True)
    ap.add_argument("--type", default="Q4_1", choices=["Q4_1", "Q8_0", "Q4_0", "Q5_0"])
    ap.add_argument("--blocks", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    qtype = T[a.type]
    reader = GGUFReader(a.src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if arch != "llama":
        raise SystemExit(f"{a.src}: architecture {arch}, not llama")
    n_embd = int(reader.fields["llama.embedding_length"].parts[-1][0])
    blocks = int(reader.fields["llama.block_count"].parts[-1][0])
    if 0 < a.blocks < blocks:
        blocks = a.blocks
    writer = GGUFWriter(a.dst, arch)
    replaced = ("general.architecture", "llama.block_count", "llama.expert_count", "llama.expert_used_count")
    for field in reader.fields.values():
        if field.name not in replaced:
            copy_field(writer, field)
    writer.add_uint32("llama.block_count", blocks)
    writer.add_uint32("llama.expert_count", a.experts)
    writer.add_uint32("llama.expert_used_count", a.used)
    rng = np.random.default_rng(a.seed)
    routers_added = set()
    expert_bytes = 0
    for t in reader.tensors:
        block_of = re.match(r"^blk\.(\d+)\.", t.name)
        if block_of and int(block_of.group(1)) >= blocks:
            continue
        m = FFN.match(t.name)
        if not m:
            writer.add_tensor(t.name, np.array(t.data), raw_shape=np.array(t.data).shape, raw_dtype=t.tensor_type)
            continue
        block, kind = m.group(1), m.group(2)
        if block not in routers_added:
            routers_added.add(block)
            router = (rng.standard_normal((a.experts, n_embd)) * (2.0 / np.sqrt(n_embd))).astype(np.float32)
            writer.add_tensor(f"blk.{block}.ffn_gate_inp.weight", router, raw_dtype=T.F32)
        dense = dequantize(t.data, t.tensor_type).astype(np.float32)
        std = float(dense.std())
        experts = []
        for _ in range(a.experts):
            noisy = dense + rng.standard_normal(dense.shape).astype(np.float32) * (0.03 * std)
            experts.append(quantize(noisy, qtype))
        merged = np.stack(experts)
        expert_bytes += merged.nbytes
        writer.add_tensor(f"blk.{block}.ffn_{kind}_exps.weight", merged, raw_shape=merged.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{a.dst}: {len(routers_added)} blocks of {a.experts} experts ({a.type}, top-{a.used}), "
          f"{expert_bytes / 2**20:.1f} MiB of experts")


if __name__ == "__main__":
    main()
