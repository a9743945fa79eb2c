#!/usr/bin/env python3
"""exact.py: the exact logits of a GGUF model's quantized weights, in float64.

    exact.py MODEL OUT [-k TOPK] SEQ [SEQ ...]

The referee of issue 20 (item 4): which side, ours or llama.cpp's, is nearer
to the mathematics both approximate?  Both evaluate the same quantized
weights; both quantize activations to int8 (Q8_0/Q8_K), keep the KV cache in
f16 and compute in f32.  This program does none of that: every weight is
dequantized (gguf.quants.dequantize, the gguf package in llama.cpp's
gguf-py, then widened to float64), and everything after that is float64:
embeddings, RMS norms, rope (angles pos * base^(-2i/d) computed directly),
attention with an exact softmax, SiLU / GELU (tanh form) and the output
projection.  There is no activation quantization and no KV cache (each
sequence is evaluated whole, with a causal mask, which is the same function
as token-by-token decoding).

Each SEQ is a comma-separated list of token ids, teacher-forced from
position 0, with logits at every position, as llama-oracle takes them.

OUT is the format oracle/llama_oracle.c writes ("ZORACLE1"), with the whole
vocabulary at every position:
    "ZORACLE1", u32 n_vocab, u32 n_seq, u32 top_k
    per sequence: u32 n_tokens, u32 tokens[n_tokens], then per position:
      u32 has_full (always 1), f64 logsumexp (of the float64 logits),
      top_k x (u32 id, f32 logit), best first (ties: lower id first),
      f32 logits[n_vocab]
The logits are float64 until they are written; storing them as f32 rounds
each by at most 2^-24 relative (~1e-6 for a logit of 20), four orders below
the differences measured here.  The dequantized weights are exact up to the
gguf package's f32 arithmetic (d * q - m in f32: <= 2^-24 relative).

Architectures, as llama.cpp defines them (src/models/llama.cpp,
src/models/gemma3.cpp, llama-graph.cpp's build_norm/build_ffn/build_attn):
  llama   RMS norm, interleaved-pair rope ("normal"), GQA, SwiGLU,
          output.weight or the tied token_embd.weight
  gemma3  embeddings * sqrt(n_embd), q/k RMS norms per head, post-attention
          and post-FFN RMS norms, neox rope (halves), GELU (tanh) gate,
          scores * 1/sqrt(head_dim) (n_embd/n_head for the 62-layer 27B),
          a sliding window on all but every sixth layer (pattern key honoured),
          rope base gemma3.rope.freq_base_swa (default 10000) on the local
          layers, final logit softcapping when the key is present.
The norm weights are used as stored (Gemma's converter already added 1).
Rope scaling (linear/YaRN) and llama3 rope_freqs are not supported: the
program refuses a file that has them.

Diagnostic only: --emulate q8 rounds every matrix product's input as both
runtimes do before their int8 dot products (Q8_K, blocks of 256, for K-quant
weights; Q8_0/Q8_1, blocks of 32 with an f16 scale, for the others), and
--emulate kv16 rounds K and V to f16 (the KV cache); --emulate fa16 runs
attention as llama.cpp's CPU flash attention does for a batch of fewer than
64 queries (ggml-cpu ops.cpp, ggml_compute_forward_flash_attn_ext_f16_one_chunk:
Q rounded to f16, K/V f16, the output accumulated key by key in an f16 vector
with an online softmax), and --emulate gelu16 takes GELU from llama.cpp's
f16 table (ggml-cpu vec.h, GGML_GELU_FP16: f16(gelu(f16(x))) for |x| < 10);
everything else stays float64.  The difference between a side's logits and
these says how much of its error those approximations explain.
"""

import argparse
import math
import struct
import sys

import numpy as np

try:
    import gguf
    from gguf import quants
except ImportError:  # pragma: no cover
    sys.exit("exact.py: needs the gguf package (PYTHONPATH=.../llama.cpp/gguf-py or pip install gguf)")


K_QUANTS = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
EMULATE = set()


def q8(x, wtype):
    """x as the int8 activation blocks llama.cpp's vec_dot_type for wtype holds."""
    if wtype in ("F32", "F16", "BF16"):
        return x
    shape = x.shape
    if wtype in K_QUANTS:
        # quantize_row_q8_K_ref: the signed extreme maps to -127.
        b = x.reshape(-1, 256).astype(np.float32)
        idx = np.argmax(np.abs(b), axis=1)
        mx = b[np.arange(b.shape[0]), idx]
        iscale = np.where(mx != 0, np.float32(-127.0) / np.where(mx != 0, mx, 1), 0).astype(np.float32)
        q = np.minimum(np.rint(b * iscale[:, None]), 127)
        d = np.where(iscale != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
        return (q * d[:, None].astype(np.float64)).reshape(shape)
    # quantize_row_q8_0 / q8_1: d = amax / 127 (stored as f16), q = round(x / d).
    b = x.reshape(-1, 32).astype(np.float32)
    d = (np.abs(b).max(axis=1) / np.float32(127)).astype(np.float32)
    idn = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.rint(b * idn[:, None])
    return (q * d.astype(np.float16).astype(np.float64)[:, None]).reshape(shape)


def mm(x, w, wtype):
    """x @ w.T, x rounded as the runtimes round it under --emulate q8."""
    if "q8" in EMULATE:
        x = q8(x, wtype)
    return x @ w.T


def f16(x):
    return np.asarray(x).astype(np.float16).astype(np.float64)


def kv16(x):
    return f16(x) if EMULATE & {"kv16", "fa16", "p16"} else x


def gelu16(x):
    """ggml's GGML_GELU_FP16 table lookup."""
    y = f16(gelu_tanh(f16(x)).astype(np.float32))
    return np.where(x <= -10, 0.0, np.where(x >= 10, x, y))


def attention_fa16(q, k, v, scale, window):
    """llama.cpp's one-chunk CPU flash attention (f16 Q, f16 accumulator)."""
    T, H, d = q.shape
    group = H // k.shape[1]
    q = f16(q)
    out = np.empty((T, H, v.shape[-1]))
    for p in range(T):
        lo = 0 if window is None else max(0, p - window + 1)
        s_all = np.einsum("hd,thd->ht", q[p], k[lo:p + 1][:, np.arange(H) // group, :]) * scale
        s_all = s_all.astype(np.float32).astype(np.float64)
        vv = v[lo:p + 1][:, np.arange(H) // group, :]
        acc = np.zeros((H, v.shape[-1]))
        M = np.full(H, -np.inf)
        S = np.zeros(H)
        for j in range(p + 1 - lo):
            s = s_all[:, j]
            new = s > M
            ms = np.where(new, np.exp(np.where(new, M - s, 0.0)), 1.0)
            vs = np.where(new, 1.0, np.exp(s - np.where(new, s, M)))
            acc = np.where(new[:, None], f16(acc * ms[:, None]), acc)
            M = np.where(new, s, M)
            acc = f16(acc + vv[j] * vs[:, None])
            S = S * ms + vs
        out[p] = acc / S[:, None]
    return out


class Model:
    def __init__(self, path):
        self.r = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.r.tensors}
        self.arch = self.meta("general.architecture")
        if self.arch not in ("llama", "gemma3"):
            sys.exit(f"exact.py: architecture {self.arch!r} is not supported")
        a = self.arch
        self.n_layer = int(self.meta(f"{a}.block_count"))
        self.n_embd = int(self.meta(f"{a}.embedding_length"))
        self.n_head = int(self.meta(f"{a}.attention.head_count"))
        self.n_kv = int(self.meta(f"{a}.attention.head_count_kv", self.n_head))
        self.head_dim = int(self.meta(f"{a}.attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(self.meta(f"{a}.rope.dimension_count", self.head_dim))
        self.eps = float(self.meta(f"{a}.attention.layer_norm_rms_epsilon"))
        self.base = float(self.meta(f"{a}.rope.freq_base", 10000.0))
        if self.n_rot != self.head_dim:
            sys.exit("exact.py: partial rotary dimensions are not supported")
        if self.meta(f"{a}.rope.scaling.type", "none") not in ("none",) or \
                float(self.meta(f"{a}.rope.scaling.factor", 1.0)) not in (0.0, 1.0):
            sys.exit("exact.py: rope scaling is not supported")
        if "rope_freqs.weight" in self.tensors:
            sys.exit("exact.py: rope_freqs (llama3 rope) is not supported")
        emb = self.tensors["token_embd.weight"]
        self.n_vocab = int(emb.shape[1])
        # Per layer: rope base, sliding window (None: full attention).
        self.layer_base = [self.base] * self.n_layer
        self.layer_window = [None] * self.n_layer
        self.embed_scale = 1.0
        self.softcap = 0.0
        self.act = "silu"
        self.rope = "normal"
        self.attn_scale = float(self.meta(f"{a}.attention.scale", 0.0)) or 1.0 / math.sqrt(self.head_dim)
        if a == "gemma3":
            self.rope = "neox"
            self.act = "gelu"
            self.embed_scale = math.sqrt(self.n_embd)
            self.softcap = float(self.meta("gemma3.final_logit_softcapping", 0.0))
            if self.n_layer == 62:
                self.attn_scale = 1.0 / math.sqrt(self.n_embd / self.n_head)
            else:
                self.attn_scale = 1.0 / math.sqrt(self.head_dim)
            swa = int(self.meta("gemma3.attention.sliding_window", 0))
            if swa > 0:
                pattern = self.meta("gemma3.attention.sliding_window_pattern", 6)
                if isinstance(pattern, list):
                    is_swa = [bool(p) for p in pattern]
                else:
                    n = int(pattern)
                    is_swa = [n == 0 or (il % n < n - 1) for il in range(self.n_layer)]
                base_swa = float(self.meta("gemma3.rope.freq_base_swa", 10000.0))
                for il in range(self.n_layer):
                    if is_swa[il]:
                        self.layer_window[il] = swa
                        self.layer_base[il] = base_swa

    def meta(self, key, default=None):
        f = self.r.fields.get(key)
        if f is None:
            if default is None:
                sys.exit(f"exact.py: metadata {key} is missing")
            return default
        return f.contents()

    def has(self, name):
        return name in self.tensors

    def w(self, name):
        """The tensor dequantized to float64, in numpy order (rows = outputs)."""
        t = self.tensors[name]
        x = quants.dequantize(np.asarray(t.data), t.tensor_type)
        shape = tuple(int(s) for s in reversed(t.shape))
        return np.asarray(x, dtype=np.float64).reshape(shape)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, base, style):
    """x: (T, heads, d); rotates pairs by pos * base^(-2i/d)."""
    d = x.shape[-1]
    i = np.arange(d // 2, dtype=np.float64)
    inv = base ** (-2.0 * i / d)
    ang = pos[:, None].astype(np.float64) * inv[None, :]  # (T, d/2)
    c = np.cos(ang)[:, None, :]
    s = np.sin(ang)[:, None, :]
    if style == "normal":
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
    else:
        x0, x1 = x[..., : d // 2], x[..., d // 2:]
        out = np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out


def attention(q, k, v, scale, window):
    """q: (T, H, d), k/v: (T, Hkv, d); causal, optional sliding window
    (query p1 sees key p0 iff 0 <= p1 - p0 < window, as llama.cpp's
    LLAMA_SWA_TYPE_STANDARD)."""
    T, H, d = q.shape
    hkv = k.shape[1]
    group = H // hkv
    p = np.arange(T)
    diff = p[:, None] - p[None, :]
    mask = diff >= 0
    if window is not None:
        mask &= diff < window
    if "fa16" in EMULATE:
        return attention_fa16(q, k, v, scale, window)
    if "p16" in EMULATE:
        q = f16(q)
    out = np.empty((T, H, v.shape[-1]))
    for h in range(H):
        kv = h // group
        s = (q[:, h, :] @ k[:, kv, :].T) * scale
        s = np.where(mask, s, -np.inf)
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        e /= e.sum(axis=1, keepdims=True)
        if "p16" in EMULATE:
            e = f16(e)
        out[:, h, :] = e @ v[:, kv, :]
    return out


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(m, seqs):
    """Teacher-forced float64 logits for each sequence: a list of (T, n_vocab)."""
    emb = m.w("token_embd.weight")
    hs = [emb[np.asarray(s)] * m.embed_scale for s in seqs]
    tied = not m.has("output.weight")
    if not tied:
        del emb
    act = (gelu16 if "gelu16" in EMULATE else gelu_tanh) if m.act == "gelu" else silu
    for il in range(m.n_layer):
        b = f"blk.{il}."
        L = {n[len(b):]: m.w(n) for n in m.tensors if n.startswith(b)}
        ty = {n[len(b):]: m.tensors[n].tensor_type.name for n in m.tensors if n.startswith(b)}
        for j, x in enumerate(hs):
            T = x.shape[0]
            pos = np.arange(T)
            cur = rms_norm(x, L["attn_norm.weight"], m.eps)
            q = mm(cur, L["attn_q.weight"], ty["attn_q.weight"]).reshape(T, m.n_head, m.head_dim)
            k = mm(cur, L["attn_k.weight"], ty["attn_k.weight"]).reshape(T, m.n_kv, m.head_dim)
            v = mm(cur, L["attn_v.weight"], ty["attn_v.weight"]).reshape(T, m.n_kv, -1)
            if "attn_q_norm.weight" in L:
                q = rms_norm(q, L["attn_q_norm.weight"], m.eps)
                k = rms_norm(k, L["attn_k_norm.weight"], m.eps)
            q = rope(q, pos, m.layer_base[il], m.rope)
            k = rope(k, pos, m.layer_base[il], m.rope)
            k, v = kv16(k), kv16(v)
            a = attention(q, k, v, m.attn_scale, m.layer_window[il]).reshape(T, -1)
            a = mm(a, L["attn_output.weight"], ty["attn_output.weight"])
            if "post_attention_norm.weight" in L:
                a = rms_norm(a, L["post_attention_norm.weight"], m.eps)
            x = x + a
            cur = rms_norm(x, L["ffn_norm.weight"], m.eps)
            f = act(mm(cur, L["ffn_gate.weight"], ty["ffn_gate.weight"])) * mm(
                cur, L["ffn_up.weight"], ty["ffn_up.weight"])
            f = mm(f, L["ffn_down.weight"], ty["ffn_down.weight"])
            if "post_ffw_norm.weight" in L:
                f = rms_norm(f, L["post_ffw_norm.weight"], m.eps)
            hs[j] = x + f
        del L
        print(f"exact.py: layer {il + 1}/{m.n_layer}", file=sys.stderr, flush=True)
    out_name = "token_embd.weight" if tied else "output.weight"
    out_w = emb if tied else m.w(out_name)
    out_type = m.tensors[out_name].tensor_type.name
    norm = m.w("output_norm.weight")
    logits = []
    for x in hs:
        z = mm(rms_norm(x, norm, m.eps), out_w, out_type)
        if m.softcap:
            z = np.tanh(z / m.softcap) * m.softcap
        logits.append(z)
    return logits


def write_oracle(path, n_vocab, seqs, logits, top_k):
    with open(path, "wb") as f:
        f.write(b"ZORACLE1" + struct.pack("<III", n_vocab, len(seqs), top_k))
        for s, z in zip(seqs, logits):
            f.write(struct.pack("<I", len(s)) + np.asarray(s, dtype="<u4").tobytes())
            for row in z:
                mx = row.max()
                lse = mx + math.log(np.exp(row - mx).sum())
                order = np.lexsort((np.arange(n_vocab), -row))[:top_k]
                f.write(struct.pack("<Id", 1, lse))
                pairs = np.empty(top_k, dtype=[("id", "<u4"), ("v", "<f4")])
                pairs["id"] = order
                pairs["v"] = row[order]
                f.write(pairs.tobytes())
                f.write(row.astype("<f4").tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("-k", type=int, default=16, help="top-k kept per position (default 16)")
    ap.add_argument("--emulate", default="", help="diagnostic: any of q8,kv16,fa16,gelu16, comma-separated")
    ap.add_argument("seqs", nargs="+", help="comma-separated token ids")
    a = ap.parse_args()
    EMULATE.update(e for e in a.emulate.split(",") if e)
    if EMULATE - {"q8", "kv16", "fa16", "gelu16", "p16"}:
        sys.exit("exact.py: --emulate takes q8, kv16, fa16, gelu16")
    seqs = [[int(t) for t in s.split(",")] for s in a.seqs]
    m = Model(a.model)
    for s in seqs:
        if not s or max(s) >= m.n_vocab:
            sys.exit("exact.py: empty sequence or token id out of range")
    logits = forward(m, seqs)
    write_oracle(a.out, m.n_vocab, seqs, logits, a.k)


if __name__ == "__main__":
    main()
