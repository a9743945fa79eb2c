#!/usr/bin/env bash
# make test-swift: `swift test` for bindings/swift.  Debian 12 has no Swift
# toolchain; Debian 13 (trixie) has swiftlang, so the tests run in a trixie
# root made with debootstrap (kept between runs: ZEPH_SWIFT_ROOT, default
# /var/tmp/zeph-swift-trixie).  The library is built on the host; the
# checkout is bind-mounted at the same path inside the root.
#
#   scripts/test-swift.sh <model.gguf>        (needs root, for chroot)
set -euo pipefail
model="$(realpath "$1")"
checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${ZEPH_SWIFT_ROOT:-/var/tmp/zeph-swift-trixie}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { echo "test-swift: $*" >&2; }

# /usr/bin/swift is an absolute symlink: test it inside the root (on the
# host it dangles, and the root would be made again on every run).
if ! { [ -d "$root/usr/bin" ] && chroot "$root" test -x /usr/bin/swift; } 2>/dev/null; then
  log "making a Debian trixie root with swiftlang in $root (once; a few minutes)"
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  rm -rf "$root.partial"
  debootstrap --variant=minbase trixie "$root.partial" "$mirror" >/dev/null
  mount -t proc proc "$root.partial/proc"
  trap 'umount "$root.partial/proc" 2>/dev/null || true' EXIT
  chroot "$root.partial" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends swiftlang libc6-dev libstdc++-14-dev libgcc-14-dev binutils ca-certificates >/dev/null"
  umount "$root.partial/proc"
  trap - EXIT
  # Only a complete root takes the final name, so an interrupted run starts over.
  rm -rf "$root"
  mv "$root.partial" "$root"
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
  bash -c "cd '$checkout/bindings/swift' && swift test"
