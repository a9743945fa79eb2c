#!/usr/bin/env bash
# make test-install: `make install` into a temporary prefix, then build the C
# demo with `pkg-config --cflags --libs zeph_llm` alone (shared, and static
# with --static) and run both on the model given as $1.
set -euo pipefail
model="$1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$(mktemp -d)"
trap 'rm -rf "$prefix"' EXIT
cc="${CC:-cc}"
passed=0
failed=0
check() { # name command...
  local name="$1"; shift
  if "$@"; then echo "ok - $name"; passed=$((passed + 1)); else echo "FAIL - $name"; failed=$((failed + 1)); fi
}

make -C "$root" --no-print-directory -s install PREFIX="$prefix" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
check "pkg-config knows zeph_llm $(pkg-config --modversion zeph_llm)" pkg-config --exists zeph_llm
check "soname symlinks" test -L "$prefix/lib/libzeph_llm.so" -a -e "$prefix/lib/libzeph_llm.so"
check "soname recorded in the library" \
  bash -c "readelf -d '$prefix/lib/libzeph_llm.so' | grep -q 'SONAME.*libzeph_llm.so.0'"

# shellcheck disable=SC2046
check "demo builds with pkg-config (shared)" \
  $cc -std=c11 -Wall -Wextra -Wpedantic -Werror "$root/examples-c/demo.c" \
  $(pkg-config --cflags --libs zeph_llm) -o "$prefix/demo-shared"
check "demo runs (shared)" env LD_LIBRARY_PATH="$prefix/lib" "$prefix/demo-shared" "$model" \
  "Say hello." >/dev/null
# shellcheck disable=SC2046
check "demo builds with pkg-config --static" \
  $cc -std=c11 -Wall -Wextra -Wpedantic -Werror "$root/examples-c/demo.c" \
  $(pkg-config --cflags zeph_llm) "$prefix/lib/libzeph_llm.a" $(pkg-config --static --libs-only-l zeph_llm | sed 's/-lzeph_llm//') \
  -o "$prefix/demo-static"
check "static demo does not need the shared library" \
  bash -c "! ldd '$prefix/demo-static' | grep -q zeph_llm"
check "demo runs (static)" "$prefix/demo-static" "$model" "Say hello." >/dev/null

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
