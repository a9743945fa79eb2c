#!/usr/bin/env python3
"""`make bench`: zeph_llm beside llama.cpp's own benchmark tools, in one run.

For each model, in this order, each in a process of its own (so that peak
RSS is one engine's, and the models do not add up):

  zeph_llm   build/bench (bench/bench.c, through the C API): pp512, tg128,
             load time, peak RSS, and the extra figures (TTFT, second chat
             turn with/without KV reuse, cancel latency)
  forward    bench-forward (bench/forward.rs): the same greedy tg128 request
             as the bare forward loop of the Rust crate -> C-API overhead
  llama.cpp  llama-bench -m MODEL -t T -p 512 -n 128 -r 3 -o json (avg_ts),
             peak RSS of that process; load time from llama-batched-bench's
             perf report (model load to the end of a 16-token warm-up)
  constrained  bench-constrained (bench/constrained.rs, with --constrained):
             greedy tg128 with and without a JSON schema, their ratio
  with --concurrency: llama-batched-bench -npp 128 -ntg 128 -npl LIST beside
             build/bench -c LIST (N client threads, N workers)

Peak RSS is each child's ru_maxrss, read with os.wait4.  Prints one table and
writes everything to the JSON file.

    report.py --threads 2 --bench build/bench --forward PATH --llama-bin DIR
              [--concurrency 1,2,4,8] --out build/bench.json NAME=MODEL ...
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time


def run(cmd, echo=False):
    """Runs cmd; returns (stdout, stderr, peak RSS MiB, seconds)."""
    t0 = time.monotonic()
    # Output to files, not pipes, so that the child can be reaped with wait4
    # (its own rusage) without a pipe filling up meanwhile.
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        secs = time.monotonic() - t0
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if echo and out:
        sys.stdout.write(out)
    if p.returncode != 0:
        sys.stderr.write(err)
        raise SystemExit(f"bench: {' '.join(cmd)} failed with status {p.returncode}")
    return out, err, ru.ru_maxrss / 1024.0, secs


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def zeph(args, name, model):
    path = os.path.join(os.path.dirname(args.out) or ".", f"bench-{name}.json")
    cmd = [args.bench, "-t", str(args.threads), "-r", str(args.reps)] + ([] if args.extras else ["-x"])
    out, _, rss, secs = run(cmd + [model, path])
    with open(path) as f:
        r = json.load(f)
    r["process_peak_rss_mib"] = round(rss, 1)
    r["stdout"] = out
    r["seconds"] = round(secs, 1)
    return r


def forward(args, model, prompt, n_gen):
    out, _, rss, secs = run([args.forward, model, prompt, str(n_gen), str(args.reps), str(args.threads)])
    r = json.loads(out)
    r["seconds"] = round(secs, 1)
    return r


def api_overhead(args, name, model, prompt, n_gen, rounds=5):
    """The C API's cost, measured robustly on a noisy machine: the same tg
    request through zeph_engine_complete and through the bare forward loop,
    in alternating fresh processes, best of `rounds` each."""
    path = os.path.join(os.path.dirname(args.out) or ".", f"bench-{name}-api.json")
    api, fwd = [], []
    for _ in range(rounds):
        run([args.bench, "-t", str(args.threads), "-r", "1", "-x", model, path])
        with open(path) as f:
            api.append(json.load(f)["tg"]["wall_ms"])
        # Two repetitions, the best kept: the engine's tg run also comes
        # after warm-up work (bench.c's pp512 and TTFT runs).
        out, _, _, _ = run([args.forward, model, prompt, str(n_gen), "2", str(args.threads)])
        fwd.append(min(json.loads(out)["wall_ms_all"]))
    return {"api_ms": api, "forward_ms": fwd, "best_api_ms": min(api),
            "best_forward_ms": min(fwd), "pct": (min(api) / min(fwd) - 1) * 100}


def llama_bench(args, model):
    exe = os.path.join(args.llama_bin, "llama-bench")
    cmd = [exe, "-m", model, "-t", str(args.threads), "-p", "512", "-n", "128", "-r", "3", "-o", "json"]
    out, _, rss, secs = run(cmd)
    rows = json.loads(out)
    r = {"command": " ".join(cmd), "peak_rss_mib": round(rss, 1), "seconds": round(secs, 1)}
    for row in rows:
        test = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        r[test] = {"tokens_per_s": row["avg_ts"], "stddev": row["stddev_ts"],
                   "samples_ts": row.get("samples_ts")}
        r.setdefault("build", {k: row.get(k) for k in ("build_commit", "build_number", "cpu_info",
                                                       "backends", "n_threads", "type_k", "n_batch",
                                                       "n_ubatch", "flash_attn")})
    return r


def llama_load_ms(args, model):
    """llama.cpp's own load time: model load start to the end of its first
    (16-token warm-up) eval, from llama-batched-bench's perf report."""
    exe = os.path.join(args.llama_bin, "llama-batched-bench")
    cmd = [exe, "-m", model, "-t", str(args.threads), "-c", "512", "-npp", "16", "-ntg", "1", "-npl", "1",
           "-v"]  # the perf report is logged at info level
    out, err, _, _ = run(cmd)
    m = re.search(r"load time\s*=\s*([0-9.]+) ms", out + err)
    return float(m.group(1)) if m else None


def llama_batched(args, model):
    exe = os.path.join(args.llama_bin, "llama-batched-bench")
    n_max = max(int(n) for n in args.concurrency.split(","))
    cmd = [exe, "-m", model, "-t", str(args.threads), "-c", str(n_max * 256), "-npp", "128",
           "-ntg", "128", "-npl", args.concurrency, "--output-format", "jsonl"]
    out, err, rss, secs = run(cmd)
    runs = [json.loads(line) for line in (out + "\n" + err).splitlines()
            if line.startswith("{") and '"speed_tg"' in line]
    return {"command": " ".join(cmd), "runs": runs, "seconds": round(secs, 1)}


def zeph_concurrency(args, name, model):
    path = os.path.join(os.path.dirname(args.out) or ".", f"bench-{name}-concurrency.json")
    _, _, _, secs = run([args.bench, "-t", str(args.threads), "-r", str(args.reps), "-c", args.concurrency,
                         model, path])
    with open(path) as f:
        r = json.load(f)
    r["seconds"] = round(secs, 1)
    return r


def constrained(args, model):
    """tg128 with and without a JSON schema (bench/constrained.rs)."""
    out, _, _, secs = run([args.constrained, model])
    m = re.search(r"without schema ([0-9.]+) t/s .*with JSON schema ([0-9.]+) t/s .*ratio ([0-9.]+)", out)
    if not m:
        raise SystemExit(f"bench: bench-constrained printed no figures: {out!r}")
    return {"tg_free_tps": float(m.group(1)), "tg_schema_tps": float(m.group(2)),
            "ratio": float(m.group(3)), "seconds": round(secs, 1)}


def ratio(a, b):
    return a / b if a and b else None


def fmt(v, spec):
    return format(v, spec) if v is not None else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--forward", required=True)
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--concurrency", default="")
    ap.add_argument("--constrained", default="", help="bench-constrained binary (empty: skipped)")
    ap.add_argument("--reps", type=int, default=3, help="zeph_llm repetitions (llama-bench: -r 3)")
    ap.add_argument("--extras", type=int, default=1, help="0: no second-chat-turn figures")
    ap.add_argument("--out", required=True)
    ap.add_argument("models", nargs="+", help="NAME=PATH")
    args = ap.parse_args()
    t_start = time.monotonic()

    result = {"threads": args.threads, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "kernel": platform.release(),
                          "loadavg_at_start": os.getloadavg()},
              "models": {}}
    for spec in args.models:
        name, model = spec.split("=", 1)
        m = result["models"][name] = {"path": model}
        log(f"{name}: zeph_llm (bench/bench.c through the C API)")
        m["zeph_llm"] = z = zeph(args, name, model)
        log(f"{name}: bench-forward (the bare forward loop)")
        m["forward"] = forward(args, model, z["tg"]["prompt"], z["tg"]["tokens"])
        log(f"{name}: llama-bench")
        m["llama_cpp"] = lb = llama_bench(args, model)
        lb["load_ms"] = llama_load_ms(args, model)
        f = m["forward"]
        log(f"{name}: C-API overhead, alternating runs")
        m["api_overhead"] = api_overhead(args, name, model, z["tg"]["prompt"], z["tg"]["tokens"])
        m["api_overhead_pct"] = m["api_overhead"]["pct"]
        if args.constrained:
            log(f"{name}: structured output, tg128 with and without a JSON schema")
            m["constrained"] = constrained(args, model)
        if args.concurrency:
            log(f"{name}: concurrency, llama-batched-bench then zeph_llm ({args.concurrency} clients)")
            m["concurrency"] = {"llama_cpp": llama_batched(args, model),
                                "zeph_llm": zeph_concurrency(args, name, model)}
    result["duration_s"] = round(time.monotonic() - t_start, 1)
    result["machine"]["loadavg_at_end"] = os.getloadavg()

    print_report(result, args)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"\nwritten: {args.out} (bench run took {result['duration_s']:.0f} s)")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_report(result, args):
    t = result["threads"]
    print(f"\nzeph_llm vs llama.cpp, {t} threads each ({result['machine']['cpu']})\n")
    print(f"| {'model':<22} | {'test':<13} | {'zeph_llm':>10} | {'llama.cpp':>10} | {'ratio':>6} |")
    print(f"|{'-' * 24}|{'-' * 15}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
    for name, m in result["models"].items():
        z, lb = m["zeph_llm"], m["llama_cpp"]
        pp_n, tg_n = z["pp"]["prompt_tokens"], z["tg"]["tokens"]
        rows = [
            (f"pp512 t/s (zeph {pp_n})" if pp_n != 512 else "pp512 t/s", z["pp"]["tokens_per_s"],
             lb.get("pp512", {}).get("tokens_per_s"), ".1f"),
            (f"tg{tg_n} t/s", z["tg"]["tokens_per_s"], lb.get("tg128", {}).get("tokens_per_s"), ".1f"),
            ("peak RSS MiB", z["process_peak_rss_mib"], lb["peak_rss_mib"], ".1f"),
            ("load ms", z["load_ms"], lb["load_ms"], ".1f"),
        ]
        label = os.path.basename(m["path"])[:22]
        for i, (test, zv, lv, spec) in enumerate(rows):
            r = ratio(zv, lv)
            print(f"| {label if i == 0 else '':<22} | {test:<13} | {fmt(zv, '10' + spec)} | "
                  f"{fmt(lv, '10' + spec)} | {fmt(r, '6.2f')} |")
            m.setdefault("table", {})[test] = {"zeph_llm": zv, "llama_cpp": lv, "ratio": r}
    print("ratio = zeph_llm / llama.cpp (speeds: higher is better for zeph; RSS and load: lower is).")
    print("llama.cpp load = model load to the end of a 16-token warm-up (llama-batched-bench perf report).")

    print("\nC-API overhead: the tg request through zeph_engine_complete vs the bare forward loop "
          "(bench/forward.rs), same tokens, whole call, best of 5 alternating fresh processes each")
    for name, m in result["models"].items():
        a = m["api_overhead"]
        print(f"  {name:<8} C API {a['best_api_ms']:9.1f} ms   forward loop {a['best_forward_ms']:9.1f} ms   "
              f"overhead {a['pct']:+.2f}% (target <= 2%)")

    if args.constrained:
        print("\nstructured output: greedy tg128 with a JSON schema vs without (bench/constrained.rs, best of 3 each)")
        for name, m in result["models"].items():
            c = m["constrained"]
            print(f"  {name:<8} without {c['tg_free_tps']:.1f} t/s, with schema {c['tg_schema_tps']:.1f} t/s: "
                  f"ratio {c['ratio']:.3f} (target >= 0.9)")

    print("\nzeph_llm, more figures:")
    for name, m in result["models"].items():
        z = m["zeph_llm"]
        st = z["second_turn"]
        turn = (f"second chat turn over {st['prompt_tokens']} tokens: {st['ttft_ms_without_reuse']:.1f} ms "
                f"without KV reuse, {st['ttft_ms_with_reuse']:.1f} ms with ({st['cached_tokens']} reused); "
                if st.get("measured", True) else "")
        print(f"  {name:<8} TTFT {z['ttft_ms']:.1f} ms; {turn}cancel to return: median "
              f"{z['cancel_latency_ms']['median']:.2f} ms, worst {z['cancel_latency_ms']['worst']:.2f} ms")

    if args.concurrency:
        print("\nconcurrency: N clients, each a 128-token prompt and 128 generated tokens "
              "(llama-batched-bench -npp 128 -ntg 128 -npl N; zeph_llm: N client threads through the C API, one worker running N sequences together)")
        print(f"| {'model':<8} | {'N':>3} | {'zeph S_TG':>10} | {'llama S_TG':>10} | {'ratio':>6} | "
              f"{'zeph S':>10} | {'llama S':>10} | {'ratio':>6} |")
        print(f"|{'-' * 10}|{'-' * 5}|{'-' * 12}|{'-' * 12}|{'-' * 8}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
        for name, m in result["models"].items():
            c = m.get("concurrency")
            if not c:
                continue
            lr = {r["pl"]: r for r in c["llama_cpp"]["runs"]}
            for zr in c["zeph_llm"]["runs"]:
                n = zr["clients"]
                l_tg = lr.get(n, {}).get("speed_tg")
                l_s = lr.get(n, {}).get("speed")
                print(f"| {name:<8} | {n:>3} | {zr['speed_tg']:>10.1f} | {fmt(l_tg, '>10.1f')} | "
                      f"{fmt(ratio(zr['speed_tg'], l_tg), '6.2f')} | {zr['speed']:>10.1f} | "
                      f"{fmt(l_s, '>10.1f')} | {fmt(ratio(zr['speed'], l_s), '6.2f')} |")
        print("S_TG = generated tokens/s over all clients, S = prompt + generated tokens/s (wall time), "
              "as llama-batched-bench defines them.")
        for name, m in result["models"].items():
            zc = (m.get("concurrency") or {}).get("zeph_llm", {})
            runs = {r["clients"]: r for r in zc.get("runs", [])}
            wide = zc.get("one_client_wide")
            if 1 in runs and wide:
                one, w = runs[1]["speed_tg"], wide["speed_tg"]
                lr = {r["pl"]: r for r in m["concurrency"]["llama_cpp"]["runs"]}
                m["one_client_wide_vs_one_slot"] = w / one
                print(f"  {name:<8} one client alone, 128-token prompt: {one:.1f} t/s generating on a one-slot engine, "
                      f"{w:.1f} t/s on a {wide['slots']}-slot one: {(w / one - 1) * 100:+.1f}% (target within 3%)")
                print(f"  {'':<8} (beside: the table's tg128, from a {m['zeph_llm']['tg']['prompt_tokens']}-token "
                      f"prompt, {m['zeph_llm']['tg']['tokens_per_s']:.1f} t/s; llama.cpp's tg128 "
                      f"{m['llama_cpp'].get('tg128', {}).get('tokens_per_s', 0):.1f} and its N = 1 S_TG "
                      f"{lr.get(1, {}).get('speed_tg', 0):.1f})")
        for name, m in result["models"].items():
            t = (m.get("concurrency") or {}).get("zeph_llm", {}).get("ttft")
            if t:
                bound = 1.5 * t["idle_ms"] + t["step_ms"]
                print(f"  {name:<8} time to first token (128-token prompt): idle {t['idle_ms']:.1f} ms, "
                      f"beside 3 generating {t['busy_ms']:.1f} ms; one step {t['step_ms']:.1f} ms; "
                      f"target <= 1.5 x idle + one step = {bound:.1f} ms: "
                      f"{'met' if t['busy_ms'] <= bound else 'NOT met'}")


if __name__ == "__main__":
    main()
