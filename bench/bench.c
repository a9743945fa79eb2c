/*
 * make bench: speed through the C API, in the manner of llama.cpp's
 * llama-bench: prompt processing (pp512), generation (tg128), time to first
 * token, and peak resident memory, printed as a table and written as JSON.
 *
 *   bench <model.gguf> [out.json]
 *
 * Each figure is the median of REPS runs on an idle one-worker engine.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "zeph_llm.h"

#define REPS 3

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static void die(const char *what, zeph_status s) {
    fprintf(stderr, "%s: %s: %s\n", what, zeph_status_name(s), zeph_last_error());
    exit(1);
}

/* A prompt of exactly n tokens is not needed: the usage reports the count. */
static char *repeat(const char *unit, int times) {
    size_t len = strlen(unit);
    char *s = malloc(len * (size_t)times + 1);
    if (!s) exit(1);
    for (int i = 0; i < times; i++) memcpy(s + len * (size_t)i, unit, len);
    s[len * (size_t)times] = '\0';
    return s;
}

static zeph_usage run(zeph_engine *engine, const char *prompt, uint32_t max_tokens,
                      float temperature, double *wall_ms) {
    zeph_generate_options o = zeph_generate_options_default();
    o.max_tokens = max_tokens;
    o.temperature = temperature;
    o.seed = 1234;
    o.timeout_ms = 600000;
    zeph_usage u = {.struct_size = sizeof u};
    char *text = NULL;
    double t0 = now_ms();
    zeph_status s = zeph_engine_complete(engine, prompt, &o, &text, &u);
    *wall_ms = now_ms() - t0;
    if (s != ZEPH_STATUS_OK) die("zeph_engine_complete", s);
    zeph_string_free(text);
    return u;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <model.gguf> [out.json]\n", argv[0]);
        return 2;
    }
    double t0 = now_ms();
    zeph_engine *engine = NULL;
    zeph_status s = zeph_engine_new(argv[1], NULL, &engine);
    if (s != ZEPH_STATUS_OK) die("zeph_engine_new", s);
    double load_ms = now_ms() - t0;

    /* pp512: ~512 prompt tokens, one generated token. */
    char *long_prompt = repeat("The quick brown fox jumps over the lazy dog. ", 51);
    double pp[REPS], wall;
    unsigned pp_tokens = 0;
    for (int i = 0; i < REPS; i++) {
        zeph_usage u = run(engine, long_prompt, 1, 0.0f, &wall);
        pp[i] = u.prompt_tokens / (u.prompt_ms / 1e3);
        pp_tokens = u.prompt_tokens;
    }
    free(long_prompt);

    /* tg128: a short prompt, up to 128 sampled tokens (a story rarely ends
     * early; the rate uses the tokens actually generated). */
    double tg[REPS];
    unsigned tg_tokens = 0;
    for (int i = 0; i < REPS; i++) {
        zeph_usage u = run(engine, "Once upon a time, in a small village by the sea,", 128, 0.8f, &wall);
        tg[i] = u.completion_tokens / (u.generation_ms / 1e3);
        tg_tokens = u.completion_tokens;
    }

    /* Time to first token: wall time of a one-token answer to a chat-sized
     * prompt, as a caller sees it. */
    double ttft[REPS];
    for (int i = 0; i < REPS; i++) {
        run(engine,
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
            1, 0.0f, &wall);
        ttft[i] = wall;
    }

    zeph_engine_free(engine);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mib = ru.ru_maxrss / 1024.0;

    double pp_med = median(pp, REPS), tg_med = median(tg, REPS), ttft_med = median(ttft, REPS);
    printf("| %-10s | %-12s |\n", "test", "zeph_llm");
    printf("|------------|--------------|\n");
    printf("| pp%-8u | %8.1f t/s |\n", pp_tokens, pp_med);
    printf("| tg%-8u | %8.1f t/s |\n", tg_tokens, tg_med);
    printf("| ttft       | %9.1f ms |\n", ttft_med);
    printf("| load       | %9.1f ms |\n", load_ms);
    printf("| peak RSS   | %8.1f MiB |\n", rss_mib);

    if (argc > 2) {
        FILE *f = fopen(argv[2], "w");
        if (!f) {
            perror(argv[2]);
            return 1;
        }
        fprintf(f,
                "{\"library\": \"zeph_llm %s\", \"model\": \"%s\", \"reps\": %d,\n"
                " \"pp\": {\"prompt_tokens\": %u, \"tokens_per_s\": %.2f},\n"
                " \"tg\": {\"tokens\": %u, \"tokens_per_s\": %.2f},\n"
                " \"ttft_ms\": %.2f, \"load_ms\": %.2f, \"peak_rss_mib\": %.1f}\n",
                zeph_version(), argv[1], REPS, pp_tokens, pp_med, tg_tokens, tg_med, ttft_med,
                load_ms, rss_mib);
        fclose(f);
        printf("written: %s\n", argv[2]);
    }
    return 0;
}
