#!/usr/bin/env bash
# make test-install: runs the README's install section as printed, with a
# temporary directory as the prefix (its `prefix=` line is the one thing
# changed), then checks what was installed: the soname recorded in the
# library (readelf -d), the links, the stripped sizes, and a static build.
#
#   scripts/test-install.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="$root/build/install-test"
# shellcheck source=readme-env.sh
. "$root/scripts/readme-env.sh"
prefix="$(mktemp -d)"
trap 'rm -rf "$prefix"' EXIT
passed=0
failed=0
check() { # name command...
  local name="$1"; shift
  if "$@" >"$scratch/check.log" 2>&1; then
    echo "ok - $name"
    passed=$((passed + 1))
  else
    echo "FAIL - $name"
    sed 's/^/    /' "$scratch/check.log"
    failed=$((failed + 1))
  fi
}

readme_scratch "$scratch"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
soname="libzeph_llm.so.$(echo "$version" | cut -d. -f1,2)"
lib="$prefix/lib"

set_prefix() {
  head -n 1 install.sh | grep -q '^prefix="$HOME/.local"' || {
    echo "the README's install block no longer starts with prefix=\"\$HOME/.local\""
    return 1
  }
  { echo "prefix=\"$prefix\""; tail -n +2 install.sh; } >install-run.sh
}
check "the README's install block takes a prefix" set_prefix
readme_run() { run_block install-run.sh | tee readme.out; grep -q Paris readme.out; }
check "the README's install section, run as printed, builds a program that answers Paris" readme_run

check "the installed library records the soname $soname (readelf -d)" \
  bash -c "readelf -d '$lib/libzeph_llm.so.$version' | grep -F 'Library soname: [$soname]'"
check "$soname and libzeph_llm.so link to the library" \
  bash -c "[ \"\$(readlink '$lib/$soname')\" = libzeph_llm.so.$version ] && [ \"\$(readlink '$lib/libzeph_llm.so')\" = $soname ]"
check "the program asks for $soname" bash -c "readelf -d app | grep -F 'Shared library: [$soname]'"
check "the installed libraries carry no debug info" \
  bash -c "! readelf -S '$lib/libzeph_llm.so.$version' '$lib/libzeph_llm.a' | grep -q '\.debug_'"
so_size=$(stat -c %s "$lib/libzeph_llm.so.$version" 2>/dev/null || echo 99999999999)
# The goal (issue 12): at most 10 MB stripped (8.5 MB since candle left the
# shipped library for the `reference` feature).
check "the installed .so is at most 10 MB ($((so_size / 1000000)) MB)" test "$so_size" -le 10000000
check "pkg-config knows zeph_llm $version" \
  env PKG_CONFIG_PATH="$lib/pkgconfig" bash -c "[ \"\$(pkg-config --modversion zeph_llm)\" = $version ]"

static_build() {
  # shellcheck disable=SC2046
  ${CC:-cc} app.c $(PKG_CONFIG_PATH="$lib/pkgconfig" pkg-config --cflags zeph_llm) \
    "$lib/libzeph_llm.a" -lpthread -ldl -lm -lgcc_s -Wl,--gc-sections -o app-static
  ! readelf -d app-static | grep -q zeph_llm
  ./app-static models/SmolLM2-135M-Instruct.Q4_1.gguf | grep Paris
}
check "a static build (the README's command) needs no shared library and answers Paris" static_build

size() { stat -c %s "$1" 2>/dev/null || echo "?"; }
echo "test-install: $passed passed, $failed failed (installed .so $(size "$lib/libzeph_llm.so.$version") bytes, .a $(size "$lib/libzeph_llm.a") bytes; static program $(size app-static) bytes)"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
