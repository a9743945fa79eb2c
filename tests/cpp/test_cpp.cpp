// Tests of the C++17 wrapper (include/zeph_llm.hpp) on the real model.
//   test_cpp <smollm2.gguf>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

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

    // Structured output.
    std::string json = engine.chat(
        {{"user", "Describe a person as JSON."}},
        greedy(96).json_schema(R"({"type":"object","properties":{"name":{"type":"string","maxLength":20},)"
                               R"("age":{"type":"integer"}},"required":["name","age"],)"
                               R"("additionalProperties":false})"),
        &usage);
    check(usage.finish_reason == ZEPH_FINISH_STOP_TOKEN && json.front() == '{' && json.back() == '}' &&
              json.find("\"name\": \"") != std::string::npos && json.find("\"age\": ") != std::string::npos,
          "a JSON schema shapes the answer", json);
    std::string yes_no = engine.chat({{"user", "Is the sky blue?"}}, greedy(8).grammar(R"(start: "yes" | "no")"));
    check(yes_no == "yes" || yes_no == "no", "a grammar shapes the answer", yes_no);
    check(status_of([&] { engine.complete("x", greedy(8).regex("(unclosed")); }) == ZEPH_STATUS_GRAMMAR,
          "a regex that does not compile throws GRAMMAR");

    // Log-probabilities.
    std::string lp_text = engine.complete("The capital of France is", greedy(8).logprobs(2), &usage);
    std::string lp_bytes;
    bool lp_ok = usage.logprobs.size() == 8;
    for (const auto &t : usage.logprobs) {
        lp_bytes += t.token.bytes;
        lp_ok = lp_ok && t.token.logprob <= 0 && t.top.size() == 2 && t.top[0].id == t.token.id;
    }
    check(lp_ok && lp_bytes == lp_text, "log-probabilities per token, bytes adding up to the text");

    // Embeddings.
    std::vector<float> mean = engine.embed("A cat sat on the mat.");
    std::vector<float> last = engine.embed("A cat sat on the mat.", ZEPH_POOLING_LAST);
    double norm = 0, dot = 0;
    for (size_t i = 0; i < mean.size(); i++) {
        norm += double(mean[i]) * mean[i];
        dot += double(mean[i]) * last[i];
    }
    check(mean.size() == 576 && last.size() == 576 && norm > 0.9999 && norm < 1.0001 && dot < 0.999,
          "embeddings: unit length, mean and last differ");

    // From memory.
    {
        std::FILE *f = std::fopen(argv[1], "rb");
        std::vector<char> bytes;
        if (f) {
            std::fseek(f, 0, SEEK_END);
            bytes.resize(size_t(std::ftell(f)));
            std::fseek(f, 0, SEEK_SET);
            bytes.resize(std::fread(bytes.data(), 1, bytes.size(), f));
            std::fclose(f);
        }
        zeph::Engine from_memory = zeph::Engine::from_memory(bytes.data(), bytes.size());
        bytes.clear();
        bytes.shrink_to_fit();
        check(from_memory.complete("The capital of France is", greedy(8)) == kReference,
              "a model loaded from memory answers as from its file");
        check(status_of([] { zeph::Engine::from_memory("GGUF", 4); }) == ZEPH_STATUS_MODEL,
              "bytes that are no model throw MODEL");
    }

    // Load progress (which can cancel) and the log callback.
    {
        std::vector<float> seen;
        std::string heard;
        zeph::EngineOptions eo;
        eo.on_progress = [&](float p) { seen.push_back(p); return true; };
        eo.on_log = [&](zeph_log_level, std::string_view m) { heard += std::string(m) + "\n"; };
        zeph::Engine logged(argv[1], eo);
        check(seen.size() >= 3 && seen.front() == 0.0f && seen.back() == 1.0f, "progress from 0 to 1");
        check(heard.find("loaded") != std::string::npos, "the log callback hears the load", heard);
        eo.on_progress = [](float p) { return p < 0.5f; };
        eo.on_log = nullptr;
        check(status_of([&] { zeph::Engine cancelled(argv[1], eo); }) == ZEPH_STATUS_CANCELLED,
              "progress returning false cancels the load");
    }

    // load_into_memory: the engine outlives its file being truncated and
    // rewritten (a mapped model would die of SIGBUS).
    {
        namespace fs = std::filesystem;
        fs::path dir = fs::temp_directory_path() / ("zeph-cpp-" + std::to_string(::getpid()));
        fs::create_directories(dir);
        fs::path copy = dir / "model.gguf";
        fs::copy_file(argv[1], copy, fs::copy_options::overwrite_existing);
        zeph::EngineOptions eo;
        eo.c.load_into_memory = 1;
        zeph::Engine in_memory(copy.string(), eo);
        fs::resize_file(copy, 0);
        {
            std::ofstream rewritten(copy, std::ios::binary);
            rewritten << "not a model any more";
        }
        check(in_memory.complete("The capital of France is", greedy(8)) == kReference,
              "load_into_memory: the model answers after its file was truncated and rewritten");
        fs::remove_all(dir);
    }

    zeph::Engine moved = std::move(engine);
    check(moved.context_length() >= 2048, "a moved engine works");
    moved.shutdown();
    check(status_of([&] { moved.complete("x"); }) == ZEPH_STATUS_SHUTDOWN, "shutdown");

    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
