/*
 * demo: ask a local model one question through the zeph_llm C API.
 *
 *   demo <model.gguf> ["question"]
 *
 * Loads the model, renders a system and a user message with the model's own
 * chat template, prints the answer and what the request used, and frees
 * everything.  `make demo` fetches the default model, builds and runs this.
 */
#include <stdio.h>
#include <stdlib.h>

#include "zeph_llm.h"

static int fail(const char *what, zeph_status status) {
    fprintf(stderr, "%s failed: %s: %s\n", what, zeph_status_name(status), zeph_last_error());
    return 1;
}

static const char *finish_name(zeph_finish_reason r) {
    switch (r) {
    case ZEPH_FINISH_STOP_TOKEN: return "end of turn";
    case ZEPH_FINISH_STOP_STRING: return "stop string";
    case ZEPH_FINISH_LENGTH: return "max_tokens";
    case ZEPH_FINISH_CANCELLED: return "cancelled";
    case ZEPH_FINISH_TIMEOUT: return "timeout";
    default: return "none";
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <model.gguf> [question]\n", argv[0]);
        return 2;
    }
    const char *question =
        argc > 2 ? argv[2] : "What is the capital of France? Answer in one sentence.";

    zeph_engine *engine = NULL;
    zeph_status status = zeph_engine_new(argv[1], NULL, &engine);
    if (status != ZEPH_STATUS_OK) return fail("zeph_engine_new", status);

    zeph_message chat[] = {
        {"system", "You are a concise, helpful assistant."},
        {"user", question},
    };
    zeph_generate_options options = zeph_generate_options_default();
    options.max_tokens = 64;
    options.temperature = 0.2f;
    options.seed = 42;

    char *answer = NULL;
    zeph_usage usage = {.struct_size = sizeof usage};
    status = zeph_engine_chat(engine, chat, sizeof chat / sizeof chat[0], &options, &answer, &usage);
    if (status != ZEPH_STATUS_OK) {
        zeph_engine_free(engine);
        return fail("zeph_engine_chat", status);
    }

    printf("zeph_llm %s\n\n> %s\n\n%s\n\n", zeph_version(), question, answer);
    printf("prompt: %u tokens in %.1f ms | answer: %u tokens in %.1f ms (%.1f tokens/s) | "
           "queued %.1f ms | finished by %s\n",
           usage.prompt_tokens, usage.prompt_ms, usage.completion_tokens, usage.generation_ms,
           usage.generation_ms > 0 ? usage.completion_tokens / (usage.generation_ms / 1000.0) : 0.0,
           usage.queue_ms, finish_name(usage.finish_reason));

    zeph_string_free(answer);
    zeph_engine_free(engine);
    return 0;
}
