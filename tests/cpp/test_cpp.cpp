// Tests of the C++17 wrapper (include/zeph_llm.hpp) on the real model.
//   test_cpp <smollm2.gguf>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "zeph_llm.hpp"

static int passed = 0, failed = 0;

static void check(bool ok, const char *name, const std::string &detail = "") {
    if (ok) {
        ++passed;
        std::printf("ok - %s\n", name);
    } else {
        ++failed;
        std::printf("FAIL - %s: %s\n", name, detail.c_str());
    }
}

// Runs f and returns the status of the zeph::Error it throws (OK if none).
static zeph_status status_of(const std::function<void()> &f) {
    try {
        f();
    } catch (const zeph::Error &e) {
        return e.status();
    }
    return ZEPH_STATUS_OK;
}

// llama.cpp's greedy continuation (8 tokens), tests/data/llamacpp-tokens-and-greedy.json.
static const char *const kReference = " Paris.\n\nThe United States has";

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s <model.gguf>\n", argv[0]);
        return 2;
    }
    zeph::Engine engine(argv[1]);
    auto greedy = [](uint32_t n) { return zeph::GenerateOptions().greedy().max_tokens(n); };

    zeph::Usage usage;
    std::string text = engine.complete("The capital of France is", greedy(8), &usage);
    check(text == kReference, "greedy completion equals llama.cpp", text);
    check(usage.prompt_tokens == 5 && usage.completion_tokens == 8 &&
              usage.finish_reason == ZEPH_FINISH_LENGTH,
          "usage");

    check(engine.complete("The capital of France is", greedy(24).stop_at(" population")) ==
              " Paris.\n\nThe United States has a",
          "stop string");

    std::string answer = engine.chat({{"user", "What is 2+2?"}}, greedy(16));
    check(!answer.empty(), "chat");

    zeph::Stream stream = engine.stream("The capital of France is", greedy(8));
    std::string joined;
    int pieces = 0;
    while (auto piece = stream.next()) {
        joined += *piece;
        ++pieces;
    }
    check(joined == kReference && pieces > 1, "stream pieces add up", joined);
    check(stream.usage().finish_reason == ZEPH_FINISH_LENGTH, "stream usage");

    zeph::Stream long_stream = engine.stream("Once upon a time", greedy(2000));
    long_stream.next();
    std::thread canceller([&] { long_stream.cancel(); });
    canceller.join();
    check(status_of([&] { while (long_stream.next()) {} }) == ZEPH_STATUS_CANCELLED,
          "stream cancelled from another thread");

    std::vector<uint32_t> ids = engine.tokenize("The capital of France is");
    check(ids == std::vector<uint32_t>{504, 3575, 282, 4649, 314}, "tokenize equals llama.cpp");
    check(engine.detokenize(ids) == "The capital of France is", "detokenize");

    check(status_of([] { zeph::Engine missing("/nonexistent/model.gguf"); }) == ZEPH_STATUS_IO,
          "a missing model throws IO");
    try {
        zeph::Engine missing("/nonexistent/model.gguf");
    } catch (const zeph::Error &e) {
        check(e.message().find("model.gguf") != std::string::npos, "the error names the file",
              e.message());
    }
    check(status_of([&] { engine.complete("x", zeph::GenerateOptions().temperature(-1)); }) ==
              ZEPH_STATUS_INVALID_ARGUMENT,
          "a bad option throws INVALID_ARGUMENT");
    check(status_of([&] { engine.complete("x", greedy(8).timeout(std::chrono::milliseconds(1))); }) ==
              ZEPH_STATUS_TIMEOUT,
          "a deadline throws TIMEOUT");

    zeph::Engine moved = std::move(engine);
    check(moved.context_length() >= 2048, "a moved engine works");
    moved.shutdown();
    check(status_of([&] { moved.complete("x"); }) == ZEPH_STATUS_SHUTDOWN, "shutdown");

    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
