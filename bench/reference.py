#!/usr/bin/env python3
"""The reference side of `make bench`: llama.cpp (through llama-cpp-python,
installed from PyPI by `make bench-reference`) on the same model, the same
prompts and the same number of threads, measured the same way: prompt
processing of ~512 tokens and 128 generated tokens, median of 3 runs.

    reference.py <model.gguf> [out.json]
"""
import json
import statistics
import sys
import time

import llama_cpp

REPS = 3


def main():
    model, out = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
    threads = len(__import__("os").sched_getaffinity(0))
    llm = llama_cpp.Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False)
    prompt = llm.tokenize(("The quick brown fox jumps over the lazy dog. " * 51).encode(), add_bos=True)
    pp = []
    for _ in range(REPS):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        pp.append(len(prompt) / (time.perf_counter() - t0))
    tg = []
    start = llm.tokenize(b"Once upon a time, in a small village by the sea,", add_bos=True)
    for _ in range(REPS):
        llm.reset()
        llm.eval(start)
        # Decode speed, as llama-bench measures it: one token per step (which
        # token does not matter for the speed).
        t0 = time.perf_counter()
        for i in range(128):
            llm.eval([start[1 + i % (len(start) - 1)]])
        tg.append(128 / (time.perf_counter() - t0))
    result = {"library": f"llama-cpp-python {llama_cpp.__version__}", "threads": threads,
              "pp": {"prompt_tokens": len(prompt), "tokens_per_s": statistics.median(pp)},
              "tg": {"tokens": 128, "tokens_per_s": statistics.median(tg)}}
    print(f"| pp{len(prompt):<8} | {result['pp']['tokens_per_s']:8.1f} t/s | (llama.cpp)")
    print(f"| tg128      | {result['tg']['tokens_per_s']:8.1f} t/s | (llama.cpp)")
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
