# Sourced by scripts/test-readme.sh and scripts/test-install.sh: a scratch
# directory inside the clone that looks like the clone to the README's
# blocks (include, target, models and scripts are the clone's; `make` runs
# the clone's Makefile), so that they run as printed.
#
#   readme_scratch DIR      make DIR, write the README's blocks into it, cd there
#   run_block FILE          run one block in a fresh bash (set -euo pipefail)
#
# The blocks run on the models they name (fetched here), not on ZEPH_MODEL:
# the README's expected answers are the default model's.

readme_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

readme_scratch() { # dir
  local dir="$1" d
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 "$readme_root/scripts/readme-blocks.py" "$readme_root/README.md" "$dir" >"$dir/blocks.txt"
  (unset ZEPH_MODEL; "$readme_root/scripts/fetch-models.sh" smollm2 gemma3)
  for d in include target scripts; do ln -s "$readme_root/$d" "$dir/$d"; done
  ln -s "${ZEPH_MODELS_DIR:-$readme_root/models}" "$dir/models"
  cd "$dir"
}

run_block() { # file
  ROOT="$readme_root" env -u ZEPH_MODEL bash -c \
    'set -euo pipefail; make() { command make -C "$ROOT" --no-print-directory "$@"; }; source "$1"' \
    run "$1"
}
