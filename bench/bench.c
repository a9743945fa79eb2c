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
#include <pthread.h>
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

typedef struct {
    zeph_engine *engine;
    zeph_cancel_token *token;
    double returned_at;
} cancel_run_t;

static void *long_request(void *arg) {
    cancel_run_t *r = arg;
    zeph_generate_options o = zeph_generate_options_default();
    o.max_tokens = 2000;
    o.ignore_eog = 1;
    o.cancel = r->token;
    char *text = NULL;
    zeph_engine_complete(r->engine, "Once upon a time", &o, &text, NULL);
    r->returned_at = now_ms();
    zeph_string_free(text);
    return NULL;
}

/* Time to first token of a chat turn: the wall time of a one-token answer. */
static double chat_ttft(zeph_engine *engine, const zeph_message *m, size_t n, uint32_t cache_prompt,
                        zeph_usage *u) {
    zeph_generate_options o = zeph_generate_options_default();
    o.max_tokens = 1;
    o.temperature = 0.0f;
    o.cache_prompt = cache_prompt;
    o.timeout_ms = 600000;
    char *text = NULL;
    u->struct_size = sizeof *u;
    double t0 = now_ms();
    zeph_status s = zeph_engine_chat(engine, m, n, &o, &text, u);
    double ms = now_ms() - t0;
    if (s != ZEPH_STATUS_OK) die("zeph_engine_chat", s);
    zeph_string_free(text);
    return ms;
}

static zeph_usage run(zeph_engine *engine, const char *prompt, uint32_t max_tokens,
                      float temperature, double *wall_ms) {
    zeph_generate_options o = zeph_generate_options_default();
    o.max_tokens = max_tokens;
    o.temperature = temperature;
    o.seed = 1234;
    o.timeout_ms = 600000;
    o.ignore_eog = 1;
    /* Every repetition evaluates its whole prompt. */
    o.cache_prompt = 0;
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

    /* tg128: a short prompt, 128 sampled tokens (end-of-generation tokens
     * ignored, as llama-bench does not stop either). */
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

    /* A second chat turn over a ~1,000-token history, with the first turn's
     * KV cache reused and without. */
    char *history = repeat("The quick brown fox jumps over the lazy dog. ", 100);
    zeph_message turn1[] = {{"user", history}};
    zeph_usage u1, reused, fresh;
    chat_ttft(engine, turn1, 1, 1, &u1);
    zeph_message turn2[] = {{"user", history}, {"assistant", "The"}, {"user", "Say it shorter."}};
    double ttft_fresh[REPS], ttft_reused[REPS];
    for (int i = 0; i < REPS; i++) {
        ttft_fresh[i] = chat_ttft(engine, turn2, 3, 0, &fresh);
        chat_ttft(engine, turn1, 1, 1, &u1); /* back to the first turn's cache */
        ttft_reused[i] = chat_ttft(engine, turn2, 3, 1, &reused);
    }
    free(history);
    double fresh_med = median(ttft_fresh, REPS), reused_med = median(ttft_reused, REPS);

    /* Cancellation latency: a cancel token tripped at moments spread over a
     * running request; time from cancel to the call's return. */
    double lat[8];
    for (int i = 0; i < 8; i++) {
        cancel_run_t r = {.engine = engine};
        zeph_cancel_token_new(&r.token);
        pthread_t t;
        pthread_create(&t, NULL, long_request, &r);
        struct timespec ts = {0, (long)(50 + 60 * i) * 1000000L};
        nanosleep(&ts, NULL);
        double at = now_ms();
        zeph_cancel_token_cancel(r.token);
        pthread_join(t, NULL);
        lat[i] = r.returned_at - at;
        zeph_cancel_token_free(r.token);
    }
    double lat_max = 0;
    for (int i = 0; i < 8; i++) lat_max = lat[i] > lat_max ? lat[i] : lat_max;
    double lat_med = median(lat, 8);

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
    printf("\nsecond chat turn over a %u-token history, time to first token:\n", fresh.prompt_tokens);
    printf("  without cache reuse %8.1f ms (%u tokens evaluated)\n", fresh_med,
           fresh.prompt_tokens - fresh.cached_tokens);
    printf("  with cache reuse    %8.1f ms (%u tokens evaluated, %u reused)  => %.1fx\n", reused_med,
           reused.prompt_tokens - reused.cached_tokens, reused.cached_tokens, fresh_med / reused_med);
    printf("cancel to return: median %.2f ms, worst %.2f ms (8 cancels)\n", lat_med, lat_max);

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
                " \"ttft_ms\": %.2f, \"load_ms\": %.2f, \"peak_rss_mib\": %.1f,\n"
                " \"second_turn\": {\"prompt_tokens\": %u, \"ttft_ms_without_reuse\": %.2f,"
                " \"ttft_ms_with_reuse\": %.2f, \"cached_tokens\": %u},\n"
                " \"cancel_latency_ms\": {\"median\": %.3f, \"worst\": %.3f}}\n",
                zeph_version(), argv[1], REPS, pp_tokens, pp_med, tg_tokens, tg_med, ttft_med,
                load_ms, rss_mib, fresh.prompt_tokens, fresh_med, reused_med, reused.cached_tokens,
                lat_med, lat_max);
        fclose(f);
        printf("written: %s\n", argv[2]);
    }
    return 0;
}
