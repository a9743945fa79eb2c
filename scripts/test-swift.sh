#!/usr/bin/env bash
# make test-swift: `swift test` for bindings/swift.  Debian 12 has no Swift
# toolchain; Debian 13 (trixie) has swiftlang, so the tests run in a trixie
# root made with debootstrap (kept between runs: ZEPH_SWIFT_ROOT, default
# /var/tmp/zeph-swift-trixie; about 3.3 GB: `rm -rf` it to get the space
# back, the next run makes it again).  The library is built on the host; the
# checkout is bind-mounted at the same path inside the root.  The tests are
# XCTest cases: swift-testing (which would report "0 tests") is not run.
#
#   scripts/test-swift.sh <model.gguf>        (needs root, for chroot)
set -euo pipefail
model="$(realpath "$1")"
checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${ZEPH_SWIFT_ROOT:-/var/tmp/zeph-swift-trixie}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { echo "test-swift: $*" >&2; }

# usr/bin/swift is an absolute symlink: test it from inside the root (on the
# host it points at the host's /usr/libexec and looks missing).
if ! { [ -d "$root" ] && chroot "$root" test -x /usr/bin/swift; }; then
  log "making a Debian trixie root with swiftlang in $root (once: about 3.3 GB on disk, several minutes)"
  command -v debootstrap >/dev/null || { log "debootstrap is missing: run scripts/setup.sh test"; exit 1; }
  rm -rf "$root.partial"
  log "step 1 of 2: debootstrap trixie (minbase) from $mirror"
  debootstrap --variant=minbase trixie "$root.partial" "$mirror" >/dev/null
  mount -t proc proc "$root.partial/proc"
  trap 'umount "$root.partial/proc" 2>/dev/null || true' EXIT
  log "step 2 of 2: apt-get install swiftlang and its C libraries inside the root (~1 GB download)"
  chroot "$root.partial" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends swiftlang libc6-dev libstdc++-14-dev libgcc-14-dev binutils ca-certificates >/dev/null"
  umount "$root.partial/proc"
  trap - EXIT
  # Only a complete root takes the final name, so an interrupted run starts over.
  rm -rf "$root"
  mv "$root.partial" "$root"
  log "done: $root ($(du -sh "$root" 2>/dev/null | cut -f1)); remove it with: rm -rf $root"
fi

mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { # host-path
  mkdir -p "$root$1"
  mount --bind "$1" "$root$1"
  mounts+=("$root$1")
}
mount -t proc proc "$root/proc" && mounts+=("$root/proc")
mount --bind /dev "$root/dev" && mounts+=("$root/dev")
bind "$checkout"
case "$model" in
  "$checkout"/*) ;;
  *) bind "$(dirname "$model")" ;;
esac

chroot "$root" env HOME=/root ZEPH_MODEL="$model" \
  bash -c "cd '$checkout/bindings/swift' && swift test --disable-swift-testing"

# The README's Swift example, as a program of its own using the package.
example="$checkout/build/readme-swift"
rm -rf "$example"
mkdir -p "$example/Sources/ReadmeExample"
python3 "$checkout/scripts/readme-blocks.py" "$checkout/README.md" "$example/Sources/ReadmeExample" main.swift >/dev/null
cat >"$example/Package.swift" <<'SWIFT'
// swift-tools-version:5.9
import PackageDescription

let package = Package(
    name: "ReadmeExample",
    dependencies: [.package(path: "../../bindings/swift")],
    targets: [.executableTarget(name: "ReadmeExample", dependencies: [.product(name: "ZephLLM", package: "swift")])]
)
SWIFT
log "the README's Swift example"
chroot "$root" env HOME=/root bash -c "cd '$example' && swift run -q ReadmeExample '$model'" | tee "$example/out.txt"
grep -q . "$example/out.txt" || { log "the README's Swift example printed nothing"; exit 1; }
log "ok: the README's Swift example builds and runs"
