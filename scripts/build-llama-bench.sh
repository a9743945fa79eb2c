#!/usr/bin/env bash
# Builds llama.cpp's own benchmark tools, llama-bench and llama-batched-bench,
# once, from the llama.cpp source vendored in the llama-cpp-python 0.3.36
# sdist on PyPI (the only way to llama.cpp's source here is a registry).
# cmake and ninja come from PyPI too, into a venv under build/: nothing is
# installed system-wide.  Prints the directory holding the two binaries.
#
#   scripts/build-llama-bench.sh            build (or reuse) and print the bin dir
#
# Everything lives in build/llama.cpp/ (LLAMA_BENCH_DIR overrides it); when
# both binaries exist nothing is done.  JOBS (default 2) is the build's -j.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${LLAMA_BENCH_DIR:-$root/build/llama.cpp}"
python="${PYTHON:-python3}"
jobs="${JOBS:-2}"
version="0.3.36"
bin="$dir/bin"

log() { echo "build-llama-bench: $*" >&2; }

if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-batched-bench" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir"
start=$SECONDS

# 1. The source: llama-cpp-python's sdist, llama.cpp in vendor/llama.cpp.
src="$dir/src"
if [ ! -f "$src/CMakeLists.txt" ]; then
  log "downloading the llama-cpp-python==$version sdist (llama.cpp source)"
  rm -rf "$dir/sdist" "$src"
  mkdir -p "$dir/sdist"
  "$python" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    -d "$dir/sdist" "llama-cpp-python==$version" >&2
  tarball="$(ls "$dir"/sdist/llama_cpp_python-*.tar.gz | head -n 1)"
  mkdir -p "$dir/sdist/unpacked"
  tar -xzf "$tarball" -C "$dir/sdist/unpacked"
  vendored="$(ls -d "$dir"/sdist/unpacked/*/vendor/llama.cpp | head -n 1)"
  [ -f "$vendored/CMakeLists.txt" ] || { log "no vendor/llama.cpp in $tarball"; exit 1; }
  mv "$vendored" "$src"
  rm -rf "$dir/sdist"
fi

# 2. cmake and ninja from PyPI, in a venv of their own.
venv="$dir/venv"
if [ ! -x "$venv/bin/cmake" ] || [ ! -x "$venv/bin/ninja" ]; then
  log "installing cmake and ninja from PyPI into $venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet cmake ninja >&2
fi
export PATH="$venv/bin:$PATH"

# 3. Configure and build the two tools only: static, native, no curl, no
#    tests, examples or server.
# On a CPU with AMX, -march=native also compiles ggml's AMX kernels, which
# crash on this machine kind (SIGSEGV at their first ldtilecfg; zeph_llm does
# not use AMX): they are left out, and llama.cpp runs its AVX-512 VNNI code
# with its repacked weights, every other native feature kept.  GCC keeps an
# explicit -mno-* whatever -march comes later.
obj="$dir/obj"
no_amx=""
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  log "this CPU has AMX: building without ggml's AMX kernels ($no_amx)"
fi
log "configuring llama.cpp (GGML_NATIVE=ON, Release, static)"
cmake -S "$src" -B "$obj" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
  -DGGML_NATIVE=ON \
  -DGGML_CCACHE=OFF \
  -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=ON \
  -DGGML_BUILD_TESTS=OFF \
  -DGGML_BUILD_EXAMPLES=OFF >&2
log "building llama-bench and llama-batched-bench (-j$jobs; several minutes)"
cmake --build "$obj" --target llama-bench llama-batched-bench -j "$jobs" >&2

mkdir -p "$bin"
for t in llama-bench llama-batched-bench; do
  cp "$obj/bin/$t" "$bin/$t.tmp" && mv "$bin/$t.tmp" "$bin/$t"
done
log "built in $((SECONDS - start)) s"
echo "$bin"
