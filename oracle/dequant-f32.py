#!/usr/bin/env python3
"""dequant-f32.py IN.gguf OUT.gguf: the same model with every tensor
dequantized to F32 (gguf.quants.dequantize) and all other metadata copied.

The check of oracle/exact.py on the real models (oracle/exact-compare.sh's
smollm2-f32 and gemma3-f32): with F32 weights neither llama.cpp nor our
runtime quantizes activations (their F32 products take F32 inputs), so both
should come within ~1e-3 of the float64 logits; what is left is f32
arithmetic, the f16 KV cache and each side's own shortcuts.
"""
import sys

import numpy as np

import gguf
from gguf import GGUFValueType, quants


def main():
    src, out = sys.argv[1], sys.argv[2]
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(out, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    shapes = []
    for t in r.tensors:
        shape = tuple(int(s) for s in reversed(t.shape))
        shapes.append(shape)
        w.add_tensor_info(t.name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t, shape in zip(r.tensors, shapes):
        x = quants.dequantize(np.asarray(t.data), t.tensor_type)
        w.write_tensor_data(np.ascontiguousarray(x, dtype=np.float32).reshape(shape))
    w.close()


if __name__ == "__main__":
    main()
