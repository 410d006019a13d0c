#!/usr/bin/env python3
"""Writes another GGUF of the same model: every quantized 2-D weight
dequantized and quantized again as Q8_0 (norms and other F32 tensors kept),
metadata copied, with llama.cpp's own gguf package as reader and writer.
The llama.cpp check uses it as "another GGUF" that an outside program runs.

    requantize.py IN.gguf OUT.gguf
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as T, GGUFValueType
from gguf.quants import dequantize, quantize


def copy_field(writer, field):
    name = field.name
    if name.startswith("GGUF.") or name == "general.alignment":
        return
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        etype = field.types[-1]
        if etype == GGUFValueType.STRING:
            items = [bytes(field.parts[i]) for i in field.data]
        else:
            items = [field.parts[i].tolist()[0] for i in field.data]
        writer.add_key_value(name, items, vtype, sub_type=etype)
    elif vtype == GGUFValueType.STRING:
        writer.add_key_value(name, bytes(field.parts[field.data[0]]), vtype)
    else:
        writer.add_key_value(name, field.parts[field.data[0]].tolist()[0], vtype)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    reader = GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name != "general.architecture":
            copy_field(writer, field)
    for t in reader.tensors:
        if t.tensor_type in (T.F32, T.F16) or len(t.shape) < 2:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
            continue
        values = dequantize(t.data, t.tensor_type)
        q = quantize(values, T.Q8_0)
        writer.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=T.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{dst}: {len(reader.tensors)} tensors, quantized weights as Q8_0")


if __name__ == "__main__":
    main()
