#!/usr/bin/env bash
# Builds llama.cpp's libllama and llama-quantize from the source that
# scripts/build-llama-bench.sh fetches (llama-cpp-python 0.3.36 sdist, into
# build/llama.cpp), then our oracle program (oracle/llama_oracle.c) against
# the static libraries.  Prints the directory holding llama-oracle and
# llama-quantize.  Only `make oracle-data` needs it: the tests never run
# llama.cpp.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${LLAMA_BENCH_DIR:-$root/build/llama.cpp}"
jobs="${JOBS:-2}"
cc="${CC:-cc}"
log() { echo "oracle/build: $*" >&2; }

"$root/scripts/build-llama-bench.sh" >/dev/null
export PATH="$dir/venv/bin:$PATH"
obj="$dir/obj"
bin="$dir/bin"
log "building libllama, llama-quantize and llama-imatrix (-j$jobs)"
cmake --build "$obj" --target llama llama-quantize llama-imatrix -j "$jobs" >&2
for t in llama-quantize llama-imatrix; do
  cp "$obj/bin/$t" "$bin/$t.tmp" && mv "$bin/$t.tmp" "$bin/$t"
done

# The static libraries the oracle links (ggml's CPU backend is built in).
libs=()
for l in src/libllama.a ggml/src/libggml.a ggml/src/libggml-cpu.a ggml/src/libggml-base.a; do
  [ -f "$obj/$l" ] || { log "missing $obj/$l"; exit 1; }
  libs+=("$obj/$l")
done
openmp=()
if grep -q '^GGML_OPENMP:BOOL=ON' "$obj/CMakeCache.txt" 2>/dev/null; then openmp=(-fopenmp); fi
log "compiling llama-oracle"
"$cc" -std=c11 -O2 -Wall -Wextra -Werror -I"$dir/src/include" -I"$dir/src/ggml/include" \
  "$root/oracle/llama_oracle.c" "${libs[@]}" "${openmp[@]}" -lstdc++ -lm -lpthread \
  -o "$bin/llama-oracle"
echo "$bin"
