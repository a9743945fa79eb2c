#!/usr/bin/env python3
"""make-1b.py SMOLLM2.gguf OUT.gguf [--seed N]

Writes a Llama-3.2-1B-shaped model in F32 with random weights, for the
exact-logits comparison (oracle/exact-compare.sh quantizes it to Q8_0 with
llama-quantize): architecture llama, embedding 2048, 16 layers, 32 heads,
8 KV heads (head 64), feed-forward 8192, rope base 500000, RMS eps 1e-5,
and SmolLM2's vocabulary (its tokenizer.* metadata copied, 49152 tokens).
No rope_freqs tensor (llama3 rope scaling) and an untied output matrix.

Weights are uniform: token embeddings and the output matrix in +-0.05, the
attention and feed-forward matrices in +-0.03 (ffn_down +-0.02), norms 1.
With RMS-normed inputs that keeps q/k/v and the gate near unit scale, the
residual stream growing slowly, and logits with a standard deviation near
1.3, so that the top two are often within 0.1 of each other (the near ties
the comparison is about).

The file is 4.3 GB: it is streamed tensor by tensor (GGUFWriter's
add_tensor_info / write_tensor_data), never held whole in memory.
"""

import argparse
import sys

import numpy as np

import gguf
from gguf import GGUFValueType

N_EMBD, N_LAYER, N_HEAD, N_KV, HEAD, N_FF = 2048, 16, 32, 8, 64, 8192


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("smollm2")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    src = gguf.GGUFReader(a.smollm2)
    n_vocab = len(src.fields["tokenizer.ggml.tokens"].data)

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("zeph exact-logits 1B (random weights)")
    w.add_context_length(8192)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(HEAD)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, f in src.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub)

    # (name, numpy shape (rows = outputs), half-width of the uniform draw)
    tensors = [("token_embd.weight", (n_vocab, N_EMBD), 0.05)]
    for il in range(N_LAYER):
        b = f"blk.{il}."
        tensors += [
            (b + "attn_norm.weight", (N_EMBD,), None),
            (b + "attn_q.weight", (N_HEAD * HEAD, N_EMBD), 0.03),
            (b + "attn_k.weight", (N_KV * HEAD, N_EMBD), 0.03),
            (b + "attn_v.weight", (N_KV * HEAD, N_EMBD), 0.03),
            (b + "attn_output.weight", (N_EMBD, N_HEAD * HEAD), 0.03),
            (b + "ffn_norm.weight", (N_EMBD,), None),
            (b + "ffn_gate.weight", (N_FF, N_EMBD), 0.03),
            (b + "ffn_up.weight", (N_FF, N_EMBD), 0.03),
            (b + "ffn_down.weight", (N_EMBD, N_FF), 0.02),
        ]
    tensors += [("output_norm.weight", (N_EMBD,), None), ("output.weight", (n_vocab, N_EMBD), 0.05)]

    for name, shape, _ in tensors:
        w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, (name, shape, half) in enumerate(tensors):
        if half is None:
            t = np.ones(shape, dtype=np.float32)
        else:
            rng = np.random.default_rng([a.seed, i])
            t = (rng.random(shape, dtype=np.float32) * 2 - 1) * np.float32(half)
        w.write_tensor_data(t)
        print(f"make-1b.py: {i + 1}/{len(tensors)} {name}", file=sys.stderr, end="\r")
    w.close()
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
