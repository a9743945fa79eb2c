#!/usr/bin/env python3
"""exact-seqs.py WHICH: prints the token sequences of the exact-logits
comparison (oracle/exact-compare.sh), as SEQ arguments (comma-separated ids,
space-separated sequences) for llama-oracle, exact.py and oracle-ours.

  smollm2, gemma3  each case's prompt_ids + greedy_ids under
                   models.WHICH.greedy in tests/data/llamacpp-tokens-and-greedy.json
  1b               two sequences of 40 token ids, drawn with a fixed seed from
                   SmolLM2's vocabulary (the 1B file has random weights, so
                   any ids serve)
  1b8              eight such sequences, the first two those of 1b (more
                   near ties for the same model)
"""
import json
import os
import sys

import numpy as np

which = sys.argv[1] if len(sys.argv) > 1 else ""
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if which in ("smollm2", "gemma3"):
    with open(os.path.join(root, "tests/data/llamacpp-tokens-and-greedy.json")) as f:
        cases = json.load(f)["models"][which]["greedy"]
    seqs = [c["prompt_ids"] + c["greedy_ids"] for c in cases]
elif which in ("1b", "1b8"):
    rng = np.random.default_rng(20_4)
    seqs = [rng.integers(0, 49152, size=40).tolist() for _ in range(2 if which == "1b" else 8)]
else:
    sys.exit("usage: exact-seqs.py smollm2|gemma3|1b|1b8")
print(" ".join(",".join(str(t) for t in s) for s in seqs))
