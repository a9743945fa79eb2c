#!/usr/bin/env bash
# make test-readme: every code block of README.md compiled and run as printed
# (scripts/readme-blocks.py extracts them; a block it does not know fails).
# (scripts/readme-env.sh: they run in build/readme, on the models they name).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="$root/build/readme"
# shellcheck source=readme-env.sh
. "$root/scripts/readme-env.sh"
passed=0
failed=0

check() { # name command...
  local name="$1" log; shift
  log="$(echo "$name" | tr -cs 'a-zA-Z0-9\n' '-').log"
  if "$@" >"$scratch/$log" 2>&1; then
    echo "ok - $name"
    passed=$((passed + 1))
  else
    echo "FAIL - $name (output: build/readme/$log)"
    tail -n 20 "$scratch/$log" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

readme_scratch "$scratch"

# The two commands: `make test` is what runs this, so only a dry run of it.
commands() {
  grep -q '^make demo' commands.sh && grep -q '^make test' commands.sh
  sed -e 's/#.*//' -e 's/^make test */make -n test/' commands.sh >commands-run.sh
  run_block commands-run.sh
}
check "the two commands (make demo, make -n test)" commands

answers_paris() { # program-output-file
  grep -q "Paris" "$1" || { echo "expected Paris in:"; cat "$1"; return 1; }
}
c_example() {
  run_block build-c.sh | tee c.out
  answers_paris c.out
}
check "the minimal C program builds, runs and answers Paris" c_example

cpp_example() { run_block build-cpp.sh; }
check "the C++ example builds and runs" cpp_example

go_example() {
  mkdir -p go-example
  cp main.go go-example/
  cat >go-example/go.mod <<EOF
module readme-example

go 1.19

require zephllm v0.0.0

replace zephllm => $root/bindings/go
EOF
  (cd go-example && GOTOOLCHAIN=local GOFLAGS=-mod=mod go run . "$scratch/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}
check "the Go example builds and runs" go_example

another_model() { run_block another-model.sh; }
check "another model through ZEPH_MODEL" another_model

# Run by other suites: the install section by test-install, the Swift
# example by test-swift.
for name in $(cat blocks.txt); do
  case "$name" in
    commands.sh | app.c | build-c.sh | app.cpp | build-cpp.sh | main.go | another-model.sh) ;;
    install.sh | main.swift) ;;
    *) echo "FAIL - README block $name: no test runs it"; failed=$((failed + 1)) ;;
  esac
done

echo "test-readme: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
