# zeph-llm — the two commands a new user needs:
#   make demo    fetch the default model, build, answer a prompt through the C API
#   make test    install what is missing (scripts/setup.sh), then every test:
#                header check, lint, Rust, C (under valgrind and under
#                ASan+UBSan), a short stress run, short fuzzing runs, C++,
#                chat, Go, Swift, install, the README's code blocks

CARGO    ?= cargo
CC       ?= cc
CXX      ?= c++
VALGRIND ?= valgrind

LIBDIR   := target/release
LIB      := $(LIBDIR)/libzeph_llm.so
BUILD    := build
FETCH    := $(CURDIR)/scripts/fetch-models.sh
# The model every target runs: ZEPH_MODEL when set (then nothing is
# fetched; a relative path is taken from here), else the default one,
# fetched by `make models`.
MODELS_DIR := $(or $(ZEPH_MODELS_DIR),$(CURDIR)/models)
MODEL      := $(if $(ZEPH_MODEL),$(if $(filter /%,$(ZEPH_MODEL)),$(ZEPH_MODEL),$(CURDIR)/$(ZEPH_MODEL)),$(MODELS_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf)

# DEBUG=1 builds the library with line tables and symbols (for perf and
# debuggers); release artefacts carry none by default.
CARGO_ENV := $(if $(DEBUG),CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_PROFILE_RELEASE_STRIP=none)

# The demo's question reaches the program through the environment, verbatim
# (`make demo PROMPT='Cost is $5, "quoted"'`): never expanded by make or sh.
ifdef PROMPT
override PROMPT := $(value PROMPT)
export PROMPT
endif

CSTRICT   := -std=c11 -Wall -Wextra -Wpedantic -Werror
CXXSTRICT := -std=c++17 -Wall -Wextra -Wpedantic -Werror
LINK      := -L$(LIBDIR) -lzeph_llm -Wl,-rpath,$(CURDIR)/$(LIBDIR) -lpthread -lm

.PHONY: FORCE all bench bench-forward bench-reference bench-tokenize chat check-header clean demo fixtures fuzz oracle-data fuzz-corpus fuzz-tools install lib lint miri models nightly-tools setup stress test test-c test-c-asan test-chat test-cpp test-fuzz test-go test-go-missing-model test-install test-readme test-rust test-stress test-swift

all: lib

# Programs depend on the library file, which cargo rebuilds only when a
# source changed: make then relinks only what needs it.
lib: $(LIB)
$(LIB): FORCE
	$(CARGO_ENV) $(CARGO) build --release
FORCE:

models:
ifeq ($(ZEPH_MODEL),)
	$(FETCH) smollm2
else
	@echo "models: using ZEPH_MODEL=$(ZEPH_MODEL)"
endif

fixtures: lib
	$(CARGO_ENV) $(CARGO) run --quiet --release --example make-fixtures -- $(BUILD)/fixtures

$(BUILD):
	mkdir -p $(BUILD)

# Installs what `make test` needs and this machine lacks (apt-get), saying
# what and why; .ci/run runs the same script.
setup:
	scripts/setup.sh test

# ---- demo -------------------------------------------------------------------

$(BUILD)/demo: examples-c/demo.c include/zeph_llm.h $(LIB) | $(BUILD)
	$(CC) $(CSTRICT) -Iinclude $< $(LINK) -o $@

demo: models $(BUILD)/demo
	$(BUILD)/demo "$(MODEL)" $${PROMPT:+"$$PROMPT"}

# An interactive chat in the terminal (examples-c/chat.c): streams the
# answers, keeps the conversation, /reset, Ctrl-C stops an answer.
$(BUILD)/chat: examples-c/chat.c include/zeph_llm.h $(LIB) | $(BUILD)
	$(CC) $(CSTRICT) -Iinclude $< $(LINK) -o $@

chat: models $(BUILD)/chat
	$(BUILD)/chat "$(MODEL)"

# ---- tests ------------------------------------------------------------------

test: setup check-header lint test-rust test-c test-c-asan test-stress test-fuzz test-cpp test-chat test-go test-go-missing-model test-swift test-install test-readme
	@echo "make test: all suites passed"

# The committed header must be what the build generates, and must compile on
# its own as C11 and as C++17.
check-header: lib
	git diff --exit-code -- include/zeph_llm.h || \
	  (echo "include/zeph_llm.h is stale: commit the regenerated header" >&2; exit 1)
	$(CC) $(CSTRICT) -fsyntax-only -x c include/zeph_llm.h
	$(CXX) $(CXXSTRICT) -fsyntax-only -x c++ include/zeph_llm.h

# Linted as shipped and with the reference decoder (its code and the tests
# that use it exist only with the feature).
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release --all-targets --features reference -- -D warnings

# The tests that compare the runtime with the candle reference decoder need
# the reference feature, the panic-injection tests the fault-injection
# feature (a production build has neither); switching features rebuilds the
# crate once (not its dependencies).
test-rust: models
	ZEPH_MODEL="$(MODEL)" $(CARGO) test --release --features reference
	ZEPH_MODEL="$(MODEL)" $(CARGO) test --release --features fault-injection --test faults --test panic_log

$(BUILD)/test_capi: tests/c/test_capi.c include/zeph_llm.h $(LIB) | $(BUILD)
	$(CC) $(CSTRICT) -Iinclude $< $(LINK) -o $@

# The C suite's panic checks need a library that injects panics: only a
# build with the cargo feature fault-injection reads ZEPH_FAULT, and the
# shipped library must not have it.  So the crate is built a second time
# with the feature (in the same target directory: only the crate is
# rebuilt, about a minute, not its dependencies), the result is copied to
# build/fault-injection/, and the shipped library is rebuilt into
# target/release at once (cargo writes both to the same file name).  Redone
# only when the shipped library changed.  The same test program, linked
# against this copy, runs with --faults (its panic checks only).
FAULTDIR  := $(BUILD)/fault-injection
FAULTLIB  := $(FAULTDIR)/libzeph_llm.so
FAULTLINK := -L$(FAULTDIR) -lzeph_llm -Wl,-rpath,$(CURDIR)/$(FAULTDIR) -lpthread -lm

$(FAULTLIB): $(LIB) | $(BUILD)
	$(CARGO_ENV) $(CARGO) build --release --lib --features fault-injection
	mkdir -p $(FAULTDIR)
	cp $(LIB) $@.tmp && mv $@.tmp $@
	ln -sf libzeph_llm.so $(FAULTDIR)/$(SONAME)
	$(CARGO_ENV) $(CARGO) build --release
	touch $@

$(BUILD)/test_capi_faults: tests/c/test_capi.c include/zeph_llm.h $(FAULTLIB) | $(BUILD)
	$(CC) $(CSTRICT) -Iinclude $< $(FAULTLINK) -o $@

# RUST_BACKTRACE is set on purpose: the panics the tests inject must not
# print anything, backtraces included.
test-c: models fixtures $(BUILD)/test_capi $(BUILD)/test_capi_faults
	RUST_BACKTRACE=1 $(VALGRIND) --quiet --leak-check=full --suppressions=tests/c/valgrind.supp \
	  --error-exitcode=1 $(BUILD)/test_capi "$(MODEL)" $(BUILD)/fixtures 2>$(BUILD)/test_capi.stderr; \
	  status=$$?; cat $(BUILD)/test_capi.stderr >&2; exit $$status
	RUST_BACKTRACE=1 $(VALGRIND) --quiet --leak-check=full --suppressions=tests/c/valgrind.supp \
	  --error-exitcode=1 $(BUILD)/test_capi_faults "$(MODEL)" $(BUILD)/fixtures --faults \
	  2>$(BUILD)/test_capi_faults.stderr; \
	  status=$$?; cat $(BUILD)/test_capi_faults.stderr >&2; exit $$status
	@! grep -q "panicked at" $(BUILD)/test_capi.stderr $(BUILD)/test_capi_faults.stderr || \
	  { echo "test-c: an injected panic printed a message (see above)" >&2; exit 1; }

# The same C tests built with AddressSanitizer and UndefinedBehaviorSanitizer
# (the test program is instrumented, the Rust library is not; LeakSanitizer
# still sees every allocation in the process, the library's included).
SANITIZE := -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SANENV   := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

$(BUILD)/test_capi_asan: tests/c/test_capi.c include/zeph_llm.h $(LIB) | $(BUILD)
	$(CC) $(CSTRICT) $(SANITIZE) -Iinclude $< $(LINK) -o $@

$(BUILD)/test_capi_faults_asan: tests/c/test_capi.c include/zeph_llm.h $(FAULTLIB) | $(BUILD)
	$(CC) $(CSTRICT) $(SANITIZE) -Iinclude $< $(FAULTLINK) -o $@

test-c-asan: models fixtures $(BUILD)/test_capi_asan $(BUILD)/test_capi_faults_asan
	$(SANENV) $(BUILD)/test_capi_asan "$(MODEL)" $(BUILD)/fixtures
	$(SANENV) $(BUILD)/test_capi_faults_asan "$(MODEL)" $(BUILD)/fixtures --faults

# ---- stress -----------------------------------------------------------------

# 16 threads of mixed calls on the real model through the C API (see
# tests/c/stress.c).  `make stress`: 1000 calls per thread, each within its
# deadline + 100 ms, resident memory within 5% of after warm-up;
# `make test-stress` (part of make test): 20 calls per thread under the
# sanitizers (leaks, undefined behaviour) and documented statuses; how late
# a call returns is for `make stress` to judge (a test passes or fails on
# what happened, not on how fast): here 60 s past a deadline only catches a
# hang.
STRESS_THREADS ?= 16
STRESS_CALLS   ?= 1000

$(BUILD)/stress: tests/c/stress.c include/zeph_llm.h $(LIB) | $(BUILD)
	$(CC) $(CSTRICT) -O2 -Iinclude $< $(LINK) -o $@

$(BUILD)/stress_asan: tests/c/stress.c include/zeph_llm.h $(LIB) | $(BUILD)
	$(CC) $(CSTRICT) -O1 $(SANITIZE) -Iinclude $< $(LINK) -o $@

# A fixed mmap threshold: glibc otherwise raises it after the first large
# block is freed, and keeps later large blocks in its heap after they are
# freed (measured: +14% memory not backed by a file over 16 x 200 calls
# without it, +4% with it; LeakSanitizer finds no leak either way).
stress: models $(BUILD)/stress
	$(BUILD)/stress "$(MODEL)" $(STRESS_THREADS) $(STRESS_CALLS) 1

test-stress: models $(BUILD)/stress_asan
	$(SANENV) $(BUILD)/stress_asan "$(MODEL)" $(STRESS_THREADS) 20 0 60000

$(BUILD)/example_cpp: examples-c/example.cpp include/zeph_llm.h $(LIB) | $(BUILD)

# Every code block of the README, run as printed.
test-readme: lib
	scripts/test-readme.sh

# The chat example, fed through its stdin (and sent a SIGINT mid-answer).
test-chat: models $(BUILD)/chat
	python3 tests/c/test_chat.py $(BUILD)/chat "$(MODEL)"

$(BUILD)/example_cpp: examples-c/example.cpp include/zeph_llm.h $(LIB) | $(BUILD)
	$(CXX) $(CXXSTRICT) -Iinclude $< $(LINK) -o $@

$(BUILD)/test_cpp: tests/cpp/test_cpp.cpp include/zeph_llm.hpp include/zeph_llm.h $(LIB) | $(BUILD)
	$(CXX) $(CXXSTRICT) -Iinclude $< $(LINK) -o $@

test-cpp: models $(BUILD)/example_cpp $(BUILD)/test_cpp
	$(BUILD)/example_cpp "$(MODEL)"
	$(BUILD)/test_cpp "$(MODEL)"

# ---- fuzzing and miri (nightly) -------------------------------------------------

# cargo-fuzz targets (fuzz/fuzz_targets): the GGUF reader, the model loader,
# both tokenizers (text -> ids -> text, any ids -> text), chat templates,
# and the C API's option structs.  `make test-fuzz` (part of make test) runs
# each a fixed number of inputs (FUZZ_SHORT_RUNS, a few seconds each) with a
# fixed seed from the committed seeds alone, so that it is the same run on
# every machine: a passing commit passes in CI too.  `make fuzz` explores
# for FUZZ_TIME seconds per target, its corpus growing in build/fuzz/<target>
# from the committed seeds (fuzz/seeds/<target>, and for the loader the
# fixture models written a tenth of the tests' size, fuzz-*.gguf).  A crash
# leaves its input in build/fuzz/artifacts/<target>/ and fails the target;
# commit it as a seed once fixed.
FUZZ_TARGETS    ?= gguf load tokenize detokenize template options
FUZZ_SHORT_RUNS ?= gguf:20000 load:1000 tokenize:2000 detokenize:50000 template:20000 options:2000
FUZZ_TIME       ?= 600
# FUZZ_RUNS=N: `make fuzz` runs N inputs per target instead of FUZZ_TIME.
FUZZ_RUNS       ?=
FUZZ_ENV      = ZEPH_FUZZ_SMOLLM2="$$($(FETCH) --path smollm2)" ZEPH_FUZZ_GEMMA3="$$($(FETCH) --path gemma3)" \
                ZEPH_FUZZ_TINY="$(CURDIR)/$(BUILD)/fixtures/tiny-llama.gguf"

# The nightly toolchain with miri, and cargo-fuzz (from crates.io, a few
# minutes the first time); nothing when they are there.
nightly-tools: fuzz-tools
	rustup component list --toolchain nightly --installed | grep -q '^miri' || \
	  rustup component add --toolchain nightly miri rust-src

# What the fuzz targets alone need: the nightly toolchain and cargo-fuzz.
fuzz-tools:
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

fuzz-corpus: fixtures
	for t in $(FUZZ_TARGETS); do mkdir -p $(BUILD)/fuzz/$$t $(BUILD)/fuzz/artifacts/$$t; done
	cp $(BUILD)/fixtures/fuzz-*.gguf $(BUILD)/fuzz/load/

define fuzz-run
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$t, $(if $(FUZZ_RUNS),$(FUZZ_RUNS) inputs,for $(1) s)"; \
	  $(FUZZ_ENV) $(CARGO) +nightly fuzz run $$t ../$(BUILD)/fuzz/$$t seeds/$$t -- \
	    $(if $(FUZZ_RUNS),-runs=$(FUZZ_RUNS),-max_total_time=$(1)) -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 \
	    -artifact_prefix=../$(BUILD)/fuzz/artifacts/$$t/ 2>&1 | \
	    grep -a -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|Done)|panicked|deadly' ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done
endef

test-fuzz: SHELL := /bin/bash
test-fuzz: fuzz-tools models fuzz-corpus
	cd fuzz && for tr in $(FUZZ_SHORT_RUNS); do t=$${tr%%:*}; n=$${tr##*:}; \
	  corpus=../$(BUILD)/fuzz-short/$$t; rm -rf $$corpus; mkdir -p $$corpus; \
	  if [ $$t = load ]; then cp ../$(BUILD)/fixtures/fuzz-*.gguf $$corpus/; fi; \
	  echo "fuzz: $$t, $$n inputs (seed 1)"; \
	  $(FUZZ_ENV) $(CARGO) +nightly fuzz run $$t $$corpus seeds/$$t -- \
	    -runs=$$n -seed=1 -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 \
	    -artifact_prefix=../$(BUILD)/fuzz/artifacts/$$t/ 2>&1 | \
	    grep -a -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|Done)|panicked|deadly' ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

fuzz: SHELL := /bin/bash
fuzz: fuzz-tools models fuzz-corpus
	$(call fuzz-run,$(FUZZ_TIME))

# The ffi layer's boundary helpers under miri (src/ffi/tests.rs).
miri: nightly-tools
	$(CARGO) +nightly miri test --lib ffi::tests

# ---- Go -----------------------------------------------------------------------

test-go: models lib
	@command -v gofmt >/dev/null || { echo "test-go: gofmt not found (install golang-go)" >&2; exit 1; }
	cd bindings/go && test -z "$$(gofmt -l .)" || (gofmt -l . >&2; exit 1)
	cd bindings/go && go vet ./...
	cd bindings/go && ZEPH_MODEL="$(MODEL)" go test -count=1 -v ./...

# A test target must fail when its model is missing: test-go with a model
# path that does not exist has to fail, and say which file it missed.
# (MAKE_COMMAND rather than MAKE: `make -n test` must not run it.)
test-go-missing-model: lib
	@out="$$($(MAKE_COMMAND) --no-print-directory test-go ZEPH_MODEL=/nonexistent/model.gguf 2>&1)" && \
	  { echo "$$out"; echo "test-go-missing-model: test-go passed without its model" >&2; exit 1; }; \
	  echo "$$out" | grep -q /nonexistent/model.gguf || \
	  { echo "$$out"; echo "test-go-missing-model: test-go failed without naming the missing model" >&2; exit 1; }; \
	  echo "test-go-missing-model: ok (ZEPH_MODEL=/nonexistent/model.gguf make test-go fails, naming the file)"

# ---- Swift --------------------------------------------------------------------

# Runs in a Debian trixie root (this Debian has no Swift); see the script.
test-swift: models lib
	scripts/test-swift.sh "$(MODEL)"

# ---- install ----------------------------------------------------------------

PREFIX  ?= /usr/local
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# Before 1.0 every minor version may change the ABI: the soname carries it.
# build.rs records it in the library at link time.
SONAME  := libzeph_llm.so.$(word 1,$(subst ., ,$(VERSION))).$(word 2,$(subst ., ,$(VERSION)))
STRIP   ?= strip

# The libraries are installed stripped (DEBUG=1 keeps their symbols).
install: lib
	install -d "$(DESTDIR)$(PREFIX)/lib/pkgconfig" "$(DESTDIR)$(PREFIX)/include"
	install -m 644 include/zeph_llm.h include/zeph_llm.hpp "$(DESTDIR)$(PREFIX)/include/"
	install -m 755 $(LIB) "$(DESTDIR)$(PREFIX)/lib/libzeph_llm.so.$(VERSION)"
	install -m 644 $(LIBDIR)/libzeph_llm.a "$(DESTDIR)$(PREFIX)/lib/"
ifeq ($(DEBUG),)
	$(STRIP) --strip-unneeded "$(DESTDIR)$(PREFIX)/lib/libzeph_llm.so.$(VERSION)"
	$(STRIP) --strip-debug "$(DESTDIR)$(PREFIX)/lib/libzeph_llm.a"
endif
	ln -sf libzeph_llm.so.$(VERSION) "$(DESTDIR)$(PREFIX)/lib/$(SONAME)"
	ln -sf $(SONAME) "$(DESTDIR)$(PREFIX)/lib/libzeph_llm.so"
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' zeph_llm.pc.in \
	  > "$(DESTDIR)$(PREFIX)/lib/pkgconfig/zeph_llm.pc"

# The README's install section run as printed, into a temporary prefix,
# then the soname, links, sizes and a static build checked.
test-install: lib
	scripts/test-install.sh

# ---- llama.cpp as the oracle ---------------------------------------------------

# Regenerates tests/data/oracle/: llama.cpp's logits (its libllama, linked
# into oracle/llama_oracle.c) for every architecture x weight type the
# README claims, on fixtures quantized by llama.cpp's llama-quantize, and
# for both test models.  llama.cpp is built from the vendored source on
# first use (oracle/build.sh, ~15 minutes on two cores).  The differential
# test (tests/oracle.rs, part of test-rust) reads only the committed data.
oracle-data:
	oracle/make-data.sh

# ---- benchmark --------------------------------------------------------------

# Both test models, zeph_llm beside llama.cpp's own llama-bench and
# llama-batched-bench (built once from the llama-cpp-python sdist's source by
# scripts/build-llama-bench.sh, ~10 minutes on first use), THREADS threads
# each; one table, everything in build/bench.json.  BENCH_CLIENTS is the
# concurrency table's client counts (empty: no concurrency table);
# BENCH_REPS zeph_llm's repetitions; BENCH_EXTRAS=0 skips the second-chat-turn
# figures (the slowest part while the runtime is slow).
THREADS       ?= 2
BENCH_CLIENTS ?= 1,2,4,8
BENCH_REPS    ?= 3
BENCH_EXTRAS  ?= 1
LLAMA_BIN     := $(BUILD)/llama.cpp/bin
BENCH_MODELS   = smollm2="$$($(FETCH) --path smollm2)" gemma3="$$($(FETCH) --path gemma3)"

$(BUILD)/bench: bench/bench.c include/zeph_llm.h $(LIB) | $(BUILD)
	$(CC) $(CSTRICT) -O2 -Iinclude $< $(LINK) -o $@

bench-forward:
	$(CARGO_ENV) $(CARGO) build --release --example bench-forward --example bench-constrained

bench: $(BUILD)/bench bench-forward bench-reference bench-tokenize
	python3 bench/report.py --threads $(THREADS) --bench $(BUILD)/bench \
	  --forward target/release/examples/bench-forward --llama-bin $(LLAMA_BIN) \
	  --constrained target/release/examples/bench-constrained \
	  --reps $(BENCH_REPS) --extras $(BENCH_EXTRAS) \
	  --concurrency "$(BENCH_CLIENTS)" --out $(BUILD)/bench.json $(BENCH_MODELS)

# Tokenizer throughput on 1 MiB of mixed-language text and on 256 KiB
# without a space, both test models (MB/s of CPU time and of wall time).
bench-tokenize:
	$(CARGO) run --quiet --release --example bench-tokenize -- \
	  "$$($(FETCH) --path smollm2)" "$$($(FETCH) --path gemma3)"

# llama.cpp's benchmark tools only (built once, cached in build/llama.cpp;
# the script returns at once when they are there).
bench-reference:
	scripts/build-llama-bench.sh

clean:
	rm -rf $(BUILD)
