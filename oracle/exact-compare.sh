#!/usr/bin/env bash
# Issue 20, item 4: whose logits are nearer the exact ones at a near tie,
# ours or llama.cpp's?  For each model: the same token sequences through
# oracle/exact.py (float64, exact activations), our decoder
# (examples oracle-ours) and llama.cpp (llama-oracle, from oracle/build.sh),
# each with the whole vocabulary at every position, then
# oracle/near-ties.py's figures.
#
#   oracle/exact-compare.sh [smollm2] [gemma3] [1b] [1b8] [smollm2-f32] [gemma3-f32] [1b-f32]
#                                          (default: smollm2 gemma3 1b)
#
# 1b is a Llama-3.2-1B-shaped model with random weights and SmolLM2's
# vocabulary (oracle/make-1b.py), written in F32 and quantized to Q8_0 by
# llama-quantize; both files stay in build/ (4.3 GB and 1.2 GB).
# 1b8 is the 1b model on eight sequences (the first two are 1b's).
# NAME-f32 is the check of exact.py itself: the same model with every tensor
# dequantized to F32 (oracle/dequant-f32.py; the 1b's F32 original), which
# neither runtime quantizes activations for, so both must land within ~1e-3.
# Environment: LLAMA_BIN (default build/llama.cpp/bin), GGUF_PY (llama.cpp's
# gguf-py, default build/llama.cpp/src/gguf-py), PY (a Python with numpy;
# default build/venv-exact/bin/python, made on first use),
# CARGO_TARGET_DIR, OUT (default build/exact), MODELS (default models).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin="${LLAMA_BIN:-$root/build/llama.cpp/bin}"
export PYTHONPATH="${GGUF_PY:-$root/build/llama.cpp/src/gguf-py}${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-$root/build/exact}"
models="${MODELS:-$root/models}"
py="${PY:-$root/build/venv-exact/bin/python}"
target="${CARGO_TARGET_DIR:-$root/target}"
log() { echo "exact-compare: $*" >&2; }

if [ ! -x "$py" ]; then
  log "making $root/build/venv-exact (numpy)"
  python3 -m venv "$root/build/venv-exact"
  "$root/build/venv-exact/bin/pip" install -q numpy pyyaml
  py="$root/build/venv-exact/bin/python"
fi
[ -x "$bin/llama-oracle" ] || { log "no $bin/llama-oracle: run oracle/build.sh"; exit 1; }
cargo build --release --example oracle-ours >&2
ours="$target/release/examples/oracle-ours"
mkdir -p "$out"

model_path() {
  case "$1" in
    smollm2) echo "$models/SmolLM2-135M-Instruct.Q4_1.gguf" ;;
    gemma3) echo "$models/gemma-3-270m-q4_k_m.gguf" ;;
    1b)
      local f32="$out/llama-1b-random.f32.gguf" q8="$out/llama-1b-random.q8_0.gguf"
      if [ ! -f "$q8" ]; then
        [ -f "$f32" ] || "$py" oracle/make-1b.py "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$f32" >&2
        "$bin/llama-quantize" "$f32" "$q8" Q8_0 >&2
      fi
      echo "$q8" ;;
    1b8) model_path 1b ;;
    1b-f32) model_path 1b >/dev/null; echo "$out/llama-1b-random.f32.gguf" ;;
    smollm2-f32 | gemma3-f32)
      local f="$out/${1%-f32}.f32.gguf"
      [ -f "$f" ] || "$py" oracle/dequant-f32.py "$(model_path "${1%-f32}")" "$f" >&2
      echo "$f" ;;
    *) log "unknown model $1"; exit 2 ;;
  esac
}

for m in "${@:-smollm2 gemma3 1b}"; do
  for name in $m; do
    model="$(model_path "$name")"
    read -r -a seqs <<<"$("$py" oracle/exact-seqs.py "${name%-f32}")"
    log "$name: llama.cpp"
    "$bin/llama-oracle" "$model" "$out/$name.llama.bin" -t 2 -k 16 -f all "${seqs[@]}"
    log "$name: ours"
    "$ours" "$model" "$out/$name.ours.bin" -t 2 -k 16 "${seqs[@]}"
    log "$name: exact (float64)"
    "$py" oracle/exact.py "$model" "$out/$name.exact.bin" -k 16 "${seqs[@]}"
    "$py" oracle/near-ties.py "$out/$name.exact.bin" "$out/$name.ours.bin" "$out/$name.llama.bin" \
      --name "$name" --json "$out/$name.json" | tee "$out/$name.txt"
  done
done
