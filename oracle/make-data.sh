#!/usr/bin/env bash
# Regenerates tests/data/oracle/ (`make oracle-data`): llama.cpp's logits,
# teacher-forced, for every architecture x weight type the README claims and
# for the two test models.  llama.cpp is built from the vendored source by
# oracle/build.sh; the tests read only what this writes.
#
# 1. make-fixtures --oracle writes each architecture's fixture in F32
#    (random weights, the layout llama.cpp reads);
# 2. llama.cpp's llama-quantize --pure writes each other weight type of it;
#    those files are committed (tests/data/oracle/models/), the F32 ones
#    are not: the test writes them again and checks their SHA-256;
# 3. llama-oracle (oracle/llama_oracle.c) writes llama.cpp's logits at
#    every position of a fixed token sequence (the whole vocabulary), and
#    for the test models at every position of llama.cpp's own greedy
#    continuations of four prompts (the top 32);
# 4. MANIFEST.json records the llama.cpp build, the commands and checksums.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="tests/data/oracle"
work="build/oracle"
threads="${THREADS:-2}"
log() { echo "oracle-data: $*" >&2; }

bin="$(oracle/build.sh)"
mkdir -p "$work" "$out/models"
cargo run --quiet --release --example make-fixtures -- --oracle "$work"

# The architectures and the weight types each is checked in (tests/oracle.rs
# holds the same table, and fails on a claimed pair without data).
archs=(llama qwen2 qwen3 phi3 gemma3)
all_types=(F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K)
few_types=(F32 Q8_0 Q4_K)
# The types llama-quantize makes only with an importance matrix (IQ2_*,
# IQ1_*): it comes from llama-imatrix run on the F32 fixture over a fixed
# text (the output matrix included), and the token embedding, which no
# product reads so no matrix covers, is written in Q8_0.
needs_imatrix() {
  case "$1" in IQ2_XXS|IQ2_XS|IQ2_S|IQ1_S|IQ1_M) return 0 ;; *) return 1 ;; esac
}
imatrix_text="$work/imatrix.txt"
rm -f "$work"/imatrix-*.gguf
python3 -c 'import random; r = random.Random(20261204); print(" ".join("".join(chr(97 + r.randrange(26)) for _ in range(r.randrange(2, 9))) for _ in range(3000)))' >"$imatrix_text"
# llama-quantize's name for a type (--pure: every matrix in that type).
ftype() {
  case "$1" in
    Q3_K) echo Q3_K_M ;; Q4_K) echo Q4_K_M ;; Q5_K) echo Q5_K_M ;; MXFP4) echo MXFP4_MOE ;; *) echo "$1" ;;
  esac
}

# 80 token ids below 256 (the fixtures' byte tokens), fixed.
seq_ids="$(python3 -c 'import random; r = random.Random(20261204); print(",".join(str(r.randrange(256)) for _ in range(80)))')"

manifest_cases=()
for arch in "${archs[@]}"; do
  if [ "$arch" = llama ]; then types=("${all_types[@]}"); else types=("${few_types[@]}"); fi
  f32="$work/oracle-$arch.gguf"
  for t in "${types[@]}"; do
    name="$arch-$t"
    if [ "$t" = F32 ]; then
      model="$f32"
      rel="fixture:oracle-$arch.gguf"
      quant_cmd=""
    else
      model="$out/models/oracle-$name.gguf"
      rel="models/oracle-$name.gguf"
      extra=()
      if needs_imatrix "$t"; then
        imatrix="$work/imatrix-$arch.gguf"
        if [ ! -f "$imatrix" ]; then
          "$bin/llama-imatrix" -m "$f32" -f "$imatrix_text" -o "$imatrix" -c 64 -t "$threads" --process-output \
            >"$work/imatrix-$arch.log" 2>&1 || { cat "$work/imatrix-$arch.log" >&2; log "llama-imatrix failed for $arch"; exit 1; }
        fi
        extra=(--imatrix "$imatrix" --token-embedding-type q8_0)
      fi
      quant_cmd="llama-quantize --pure oracle-$arch.gguf oracle-$name.gguf $(ftype "$t")"
      if [ "${#extra[@]}" -gt 0 ]; then
        quant_cmd="llama-imatrix -m oracle-$arch.gguf -f imatrix.txt -o imatrix-$arch.gguf -c 64 -t $threads --process-output; llama-quantize --pure --imatrix imatrix-$arch.gguf --token-embedding-type q8_0 oracle-$arch.gguf oracle-$name.gguf $(ftype "$t")"
      fi
      "$bin/llama-quantize" --pure "${extra[@]}" "$f32" "$model" "$(ftype "$t")" "$threads" >"$work/quantize-$name.log" 2>&1 ||
        { cat "$work/quantize-$name.log" >&2; log "llama-quantize failed for $name"; exit 1; }
    fi
    log "$name"
    "$bin/llama-oracle" "$model" "$out/$name.bin" -t "$threads" -k 16 -f all "$seq_ids"
    manifest_cases+=("$name|$arch|$t|$rel|$(sha256sum "$model" | cut -d' ' -f1)|$quant_cmd|llama-oracle MODEL $name.bin -t $threads -k 16 -f all IDS")
  done
done

# The two test models: llama.cpp's greedy continuations (tests/data/
# llamacpp-tokens-and-greedy.json), prompt and continuation as one sequence.
for m in smollm2 gemma3; do
  model="$(scripts/fetch-models.sh --path "$m")"
  mapfile -t seqs < <(python3 - "$m" <<'PY'
import json, sys
d = json.load(open("tests/data/llamacpp-tokens-and-greedy.json"))
for case in d["models"][sys.argv[1]]["greedy"]:
    print(",".join(str(i) for i in case["prompt_ids"] + case["greedy_ids"]))
PY
)
  log "$m"
  "$bin/llama-oracle" "$model" "$out/$m.bin" -t "$threads" -k 32 "${seqs[@]}"
  manifest_cases+=("$m|model|file|model:$m|$(sha256sum "$model" | cut -d' ' -f1)||llama-oracle MODEL $m.bin -t $threads -k 32 SEQ...")
done

commit="$(sed -n 's/.*LLAMA_COMMIT *= *"\([^"]*\)".*/\1/p' "$root/build/llama.cpp/obj/common/build-info.cpp" 2>/dev/null | head -n 1)"
python3 - "$out/MANIFEST.json" "${commit:-unknown}" "$seq_ids" "${manifest_cases[@]}" <<'PY'
import json, sys
path, commit, ids = sys.argv[1], sys.argv[2], sys.argv[3]
cases = []
for line in sys.argv[4:]:
    name, arch, typ, model, sha, quant, oracle = line.split("|")
    cases.append({"name": name, "arch": arch, "type": typ, "model": model, "sha256": sha,
                  "quantize": quant, "oracle": oracle, "data": name + ".bin"})
json.dump({
    "llama_cpp": "llama.cpp vendored in llama-cpp-python 0.3.36 (sdist from PyPI), build " + commit,
    "built_by": "oracle/build.sh (GGML_NATIVE=ON, CPU backend); data by oracle/make-data.sh",
    "fixture_tokens": [int(x) for x in ids.split(",")],
    "cases": cases,
}, open(path, "w"), indent=1)
open(path, "a").write("\n")
PY
log "wrote $out ($(du -sh "$out" | cut -f1))"
