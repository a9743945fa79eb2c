#!/usr/bin/env python3
"""near-ties.py: whose logits are nearer the exact ones, ours or llama.cpp's?

    near-ties.py EXACT OURS LLAMA [--name NAME] [--tie 0.1] [--json OUT]

Reads three ZORACLE1 files (oracle/llama_oracle.c's format) for the same
model and the same token sequences, each with the whole vocabulary at every
position: EXACT from oracle/exact.py (float64, no activation quantization),
OURS from `cargo run --release --example oracle-ours`, LLAMA from
llama-oracle.  Prints, over every position of every sequence:

  vocab   mean |logit - exact logit| over the whole vocabulary
  top2    the same over each position's two best tokens by the exact logits
  top1    how often the side's best token is the exact best token
  ties    at the near-tie positions (exact top-two gap < --tie): how often
          the side orders those two tokens as the exact logits do, and how
          often only it does (ours-only / llama-only)
  nearer  at how many positions the side's vocabulary error is the smaller

Ties within a file break towards the lower token id, as llama-oracle does.
"""

import argparse
import json
import struct
import sys

import numpy as np


def read_oracle(path):
    """Returns (n_vocab, [tokens], [(T, n_vocab) float64 logits])."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"ZORACLE1":
        sys.exit(f"near-ties.py: {path}: not a ZORACLE1 file")
    n_vocab, n_seq, top_k = struct.unpack_from("<III", data, 8)
    off = 20
    toks, logits = [], []
    for _ in range(n_seq):
        (n,) = struct.unpack_from("<I", data, off)
        off += 4
        toks.append(np.frombuffer(data, "<u4", n, off).copy())
        off += 4 * n
        rows = np.empty((n, n_vocab))
        for p in range(n):
            (full,) = struct.unpack_from("<I", data, off)
            off += 4 + 8 + 8 * top_k
            if not full:
                sys.exit(f"near-ties.py: {path}: position {p} has no full logits (run with -f all)")
            rows[p] = np.frombuffer(data, "<f4", n_vocab, off)
            off += 4 * n_vocab
        logits.append(rows)
    if off != len(data):
        sys.exit(f"near-ties.py: {path}: {len(data) - off} trailing bytes")
    return n_vocab, toks, logits


def argmax(z):
    # np.argmax returns the first maximum: the lower id on a tie.
    return np.argmax(z, axis=-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("exact")
    ap.add_argument("ours")
    ap.add_argument("llama")
    ap.add_argument("--name", default="")
    ap.add_argument("--tie", type=float, default=0.1)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()

    files = [read_oracle(p) for p in (a.exact, a.ours, a.llama)]
    if len({f[0] for f in files}) != 1:
        sys.exit("near-ties.py: the files' vocabularies differ")
    for f in files[1:]:
        if len(f[1]) != len(files[0][1]) or any(
            not np.array_equal(x, y) for x, y in zip(f[1], files[0][1])
        ):
            sys.exit("near-ties.py: the files' token sequences differ")
    ex = np.concatenate(files[0][2])
    sides = {"ours": np.concatenate(files[1][2]), "llama.cpp": np.concatenate(files[2][2])}
    n = ex.shape[0]
    order = np.argsort(-ex, axis=1, kind="stable")
    t1, t2 = order[:, 0], order[:, 1]
    rows = np.arange(n)
    gap = ex[rows, t1] - ex[rows, t2]
    tie = gap < a.tie

    res = {"model": a.name, "positions": int(n), "near_ties": int(tie.sum())}
    vocab_err = {}
    right = {}
    for name, z in sides.items():
        err = np.abs(z - ex)
        vocab_err[name] = err.mean(axis=1)
        top2 = np.concatenate([err[rows, t1], err[rows, t2]])
        right[name] = z[rows, t1] > z[rows, t2]
        res[name] = {
            "vocab_mean_abs_err": float(err.mean()),
            "vocab_max_abs_err": float(err.max()),
            "top2_mean_abs_err": float(top2.mean()),
            "top1_agree": int((argmax(z) == t1).sum()),
            "tie_order_right": int(right[name][tie].sum()),
            # The signed error of the exact top-two gap at the near ties.
            "tie_gap_err_mean_abs": float(
                np.abs((z[rows, t1] - z[rows, t2]) - gap)[tie].mean()) if tie.any() else 0.0,
        }
    o, l = right["ours"][tie], right["llama.cpp"][tie]
    res["tie_ours_only"] = int((o & ~l).sum())
    res["tie_llama_only"] = int((l & ~o).sum())
    res["nearer_ours"] = int((vocab_err["ours"] < vocab_err["llama.cpp"]).sum())
    res["nearer_llama"] = int((vocab_err["llama.cpp"] < vocab_err["ours"]).sum())
    d = np.abs(sides["ours"] - sides["llama.cpp"])
    res["ours_vs_llama_mean_abs"] = float(d.mean())
    res["ours_top1_eq_llama_top1"] = int((argmax(sides["ours"]) == argmax(sides["llama.cpp"])).sum())

    print(f"{a.name or a.exact}: {n} positions, {res['near_ties']} near ties (exact gap < {a.tie})")
    print(f"  {'':10} {'vocab |err|':>12} {'max |err|':>10} {'top2 |err|':>11} "
          f"{'top1=exact':>11} {'tie order ok':>13} {'tie gap |err|':>14}")
    for name in sides:
        r = res[name]
        print(f"  {name:10} {r['vocab_mean_abs_err']:12.5f} {r['vocab_max_abs_err']:10.4f} "
              f"{r['top2_mean_abs_err']:11.5f} {r['top1_agree']:>5}/{n:<5} "
              f"{r['tie_order_right']:>6}/{res['near_ties']:<6} {r['tie_gap_err_mean_abs']:14.5f}")
    print(f"  near ties only ours right: {res['tie_ours_only']}, only llama.cpp right: "
          f"{res['tie_llama_only']}")
    print(f"  positions where the vocabulary error is smaller: ours {res['nearer_ours']}, "
          f"llama.cpp {res['nearer_llama']}")
    print(f"  ours vs llama.cpp: mean |diff| {res['ours_vs_llama_mean_abs']:.5f}, "
          f"same top-1 {res['ours_top1_eq_llama_top1']}/{n}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
