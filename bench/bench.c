/*
 * make bench: speed through the C API, in the manner of llama.cpp's
 * llama-bench: prompt processing (pp512), generation (tg128), time to first
 * token, load time and peak resident memory, printed as a table and written
 * as JSON.  bench/report.py puts these beside llama.cpp's own tools.
 *
 *   bench [-t THREADS] <model.gguf> [out.json]
 *       one one-worker engine runs every benchmark; its peak RSS is the
 *       process's, so run one model per process.
 *   bench [-t THREADS] [-r REPS] -c 1,2,4,8 <model.gguf> [out.json]
 *       concurrency: N client threads at once (one worker running N
 *       sequences together), each sending a ~128-token prompt and taking
 *       128 tokens, for each N.
 *
 * THREADS (0 = the library's choice) is the engine option n_threads.  Each
 * figure is the median of REPS runs.  tg128 is greedy from TG_PROMPT with
 * end-of-generation tokens ignored: bench-forward (bench/forward.rs) runs the
 * same tokens through the bare forward loop, for the C API's overhead.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "zeph_llm.h"

#define MAX_REPS 15
#define TG_PROMPT "Once upon a time, in a small village by the sea,"
#define MAX_CLIENTS 64

static unsigned n_threads_opt = 0;
static int REPS = 3;

/* One worker with the -t threads, running up to n_parallel sequences
 * together (0 = the library's default), as llama-batched-bench runs its
 * sequences in one batch with its -t threads. */
static zeph_engine *engine_open(const char *path, uint32_t n_parallel) {
    zeph_engine_options eo = zeph_engine_options_default();
    eo.n_workers = 1;
    eo.n_parallel = n_parallel;
    if (n_threads_opt) eo.n_threads = n_threads_opt;
    zeph_engine *engine = NULL;
    zeph_status s = zeph_engine_new(path, &eo, &engine);
    if (s != ZEPH_STATUS_OK) {
        fprintf(stderr, "zeph_engine_new: %s: %s\n", zeph_status_name(s), zeph_last_error());
        exit(1);
    }
    return engine;
}

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

/* A text that tokenizes to `n` tokens (BOS included, as
 * zeph_engine_complete counts it): the first n tokens of a long repeated
 * sentence, detokenized.  The usage reports what the prompt really was. */
static char *prompt_of_tokens(zeph_engine *engine, size_t n) {
    char *text = repeat("The quick brown fox jumps over the lazy dog. ", (int)n / 4 + 8);
    size_t cap = strlen(text) + 8, got = 0;
    uint32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) exit(1);
    zeph_status s = zeph_engine_tokenize(engine, text, true, true, ids, cap, &got);
    if (s != ZEPH_STATUS_OK) die("zeph_engine_tokenize", s);
    free(text);
    text = NULL;
    s = zeph_engine_detokenize(engine, ids, got < n ? got : n, true, &text);
    if (s != ZEPH_STATUS_OK) die("zeph_engine_detokenize", s);
    free(ids);
    char *copy = malloc(strlen(text) + 1);
    if (!copy) exit(1);
    strcpy(copy, text);
    zeph_string_free(text);
    return copy;
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

/* ---- concurrency ---------------------------------------------------------- */

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wall time of one greedy request of `max_tokens` tokens, prompt not cached. */
static double one_request(zeph_engine *engine, const char *prompt, uint32_t max_tokens) {
    zeph_generate_options o = zeph_generate_options_default();
    o.max_tokens = max_tokens;
    o.temperature = 0.0f;
    o.ignore_eog = 1;
    o.cache_prompt = 0;
    o.timeout_ms = 600000;
    char *text = NULL;
    double t0 = now_ms();
    zeph_status s = zeph_engine_complete(engine, prompt, &o, &text, NULL);
    double ms = now_ms() - t0;
    if (s != ZEPH_STATUS_OK) die("zeph_engine_complete (ttft)", s);
    zeph_string_free(text);
    return ms;
}

typedef struct {
    zeph_engine *engine;
    char *prompt;
    pthread_barrier_t *start;
    zeph_usage usage;
    double done_at;
} client_t;

static void *client(void *arg) {
    client_t *c = arg;
    zeph_generate_options o = zeph_generate_options_default();
    o.max_tokens = 128;
    o.temperature = 0.0f;
    o.timeout_ms = 3600000;
    o.ignore_eog = 1;
    o.cache_prompt = 0;
    c->usage.struct_size = sizeof c->usage;
    char *text = NULL;
    pthread_barrier_wait(c->start);
    zeph_status s = zeph_engine_complete(c->engine, c->prompt, &o, &text, &c->usage);
    c->done_at = now_ms();
    if (s != ZEPH_STATUS_OK) die("zeph_engine_complete (client)", s);
    zeph_string_free(text);
    return NULL;
}

/* For each N in `list`: an engine running N sequences together, N client
 * threads released
 * together.  Total throughput = all prompt and generated tokens over the wall
 * time until the last answer; generation throughput = the sum of the
 * clients' own generation rates (they generate side by side). */
static int concurrency(const char *model, const char *list, const char *out_path) {
    FILE *out = NULL;
    if (out_path && !(out = fopen(out_path, "w"))) {
        perror(out_path);
        return 1;
    }
    if (out) fprintf(out, "{\"library\": \"zeph_llm %s\", \"model\": \"%s\", \"threads\": %u, \"runs\": [",
                     zeph_version(), model, n_threads_opt);
    printf("| %7s | %7s | %4s | %9s | %9s | %9s |\n", "PP", "TG", "N", "T s", "S_TG t/s", "S t/s");
    printf("|---------|---------|------|-----------|-----------|-----------|\n");
    const char *p = list;
    int first = 1;
    long max_n = 1;
    while (*p) {
        char *end;
        long n = strtol(p, &end, 10);
        if (end == p || n < 1 || n > MAX_CLIENTS) {
            fprintf(stderr, "bad client count list '%s'\n", list);
            return 2;
        }
        p = *end == ',' ? end + 1 : end;
        max_n = n > max_n ? n : max_n;
        zeph_engine *engine = engine_open(model, (uint32_t)n);
        /* REPS rounds; each figure is the median of its rounds. */
        double walls[MAX_REPS], tgs[MAX_REPS], alls[MAX_REPS];
        unsigned long pp = 0, tg = 0;
        for (int rep = 0; rep < REPS; rep++) {
            pthread_barrier_t start;
            pthread_barrier_init(&start, NULL, (unsigned)n + 1);
            client_t clients[MAX_CLIENTS];
            pthread_t threads[MAX_CLIENTS];
            for (long i = 0; i < n; i++) {
                /* 128 tokens; every client the same (no prompt cache is used). */
                clients[i] = (client_t){.engine = engine, .start = &start};
                clients[i].prompt = prompt_of_tokens(engine, 128);
                pthread_create(&threads[i], NULL, client, &clients[i]);
            }
            pthread_barrier_wait(&start);
            double t0 = now_ms();
            for (long i = 0; i < n; i++) pthread_join(threads[i], NULL);
            double last = 0, round_tg = 0;
            unsigned long tokens = 0;
            for (long i = 0; i < n; i++) {
                last = clients[i].done_at > last ? clients[i].done_at : last;
                tokens += clients[i].usage.prompt_tokens + clients[i].usage.completion_tokens;
                pp = clients[i].usage.prompt_tokens;
                tg = clients[i].usage.completion_tokens;
                round_tg += clients[i].usage.completion_tokens / (clients[i].usage.generation_ms / 1e3);
                free(clients[i].prompt);
            }
            double round_wall = (last - t0) / 1e3, round_all = tokens / round_wall;
            pthread_barrier_destroy(&start);
            walls[rep] = round_wall;
            tgs[rep] = round_tg;
            alls[rep] = round_all;
        }
        zeph_engine_free(engine);
        double wall_s = median(walls, REPS), s_tg = median(tgs, REPS), s_all = median(alls, REPS);
        printf("| %7lu | %7lu | %4ld | %9.3f | %9.2f | %9.2f |\n", pp, tg, n, wall_s, s_tg, s_all);
        fflush(stdout);
        if (out)
            fprintf(out, "%s\n  {\"clients\": %ld, \"prompt_tokens\": %lu, \"gen_tokens\": %lu, \"t_s\": %.3f,"
                    " \"speed_tg\": %.3f, \"speed\": %.3f}", first ? "" : ",", n, pp, tg, wall_s, s_tg, s_all);
        first = 0;
    }
    /* One client alone on an engine with as many slots as the largest N
     * (the N = 1 row ran on a one-slot engine): what running beside room
     * for others costs a lone request. */
    double wide[MAX_REPS];
    {
        zeph_engine *engine = engine_open(model, (uint32_t)max_n);
        for (int rep = 0; rep < REPS; rep++) {
            pthread_barrier_t start;
            pthread_barrier_init(&start, NULL, 2);
            client_t c = {.engine = engine, .start = &start};
            c.prompt = prompt_of_tokens(engine, 128);
            pthread_t t;
            pthread_create(&t, NULL, client, &c);
            pthread_barrier_wait(&start);
            pthread_join(t, NULL);
            wide[rep] = c.usage.completion_tokens / (c.usage.generation_ms / 1e3);
            free(c.prompt);
            pthread_barrier_destroy(&start);
        }
        zeph_engine_free(engine);
    }
    double wide_tg = median(wide, REPS);
    printf("one client on a %ld-slot engine: S_TG %.2f t/s\n", max_n, wide_tg);
    if (out) fprintf(out, "],\n \"one_client_wide\": {\"slots\": %ld, \"speed_tg\": %.3f}", max_n, wide_tg);
    /* Time to first token of a new request (a 128-token prompt, one token)
     * on an idle engine, then while 3 others generate; and the length of
     * one step with 4 sequences (from a 33-token answer beside them). */
    zeph_engine *engine = engine_open(model, 4);
    char *prompt = prompt_of_tokens(engine, 128);
    double idle[MAX_REPS], busy[MAX_REPS], step[MAX_REPS];
    for (int i = 0; i < REPS; i++) idle[i] = one_request(engine, prompt, 1);
    zeph_cancel_token *token = NULL;
    if (zeph_cancel_token_new(&token) != ZEPH_STATUS_OK) die("zeph_cancel_token_new", ZEPH_STATUS_PANIC);
    cancel_run_t bg[3];
    pthread_t bg_threads[3];
    for (int i = 0; i < 3; i++) {
        bg[i] = (cancel_run_t){.engine = engine, .token = token};
        pthread_create(&bg_threads[i], NULL, long_request, &bg[i]);
    }
    sleep_ms(1000);
    for (int i = 0; i < REPS; i++) {
        busy[i] = one_request(engine, prompt, 1);
        step[i] = (one_request(engine, prompt, 33) - one_request(engine, prompt, 1)) / 32;
    }
    zeph_cancel_token_cancel(token);
    for (int i = 0; i < 3; i++) pthread_join(bg_threads[i], NULL);
    zeph_cancel_token_free(token);
    free(prompt);
    zeph_engine_free(engine);
    double idle_med = median(idle, REPS), busy_med = median(busy, REPS), step_med = median(step, REPS);
    printf("ttft of a 128-token prompt: idle %.1f ms, beside 3 generating %.1f ms; one step %.1f ms\n",
           idle_med, busy_med, step_med);
    if (out) {
        fprintf(out, ",\n \"ttft\": {\"idle_ms\": %.3f, \"busy_ms\": %.3f, \"step_ms\": %.3f}}\n",
                idle_med, busy_med, step_med);
        fclose(out);
    }
    return 0;
}

/* ---- one engine, every figure --------------------------------------------- */

int main(int argc, char **argv) {
    const char *clients = NULL;
    int extras = 1, a = 1;
    for (; a < argc && argv[a][0] == '-'; a++) {
        if (!strcmp(argv[a], "-t") && a + 1 < argc) n_threads_opt = (unsigned)atoi(argv[++a]);
        else if (!strcmp(argv[a], "-c") && a + 1 < argc) clients = argv[++a];
        else if (!strcmp(argv[a], "-r") && a + 1 < argc) REPS = atoi(argv[++a]);
        else if (!strcmp(argv[a], "-x")) extras = 0;
        else break;
    }
    if (a >= argc || REPS < 1 || REPS > MAX_REPS) {
        fprintf(stderr, "usage: %s [-t threads] [-r reps] [-x] [-c 1,2,4,8] <model.gguf> [out.json]\n"
                "  -x: skip the second-chat-turn and cancel figures\n", argv[0]);
        return 2;
    }
    const char *model = argv[a], *out_path = a + 1 < argc ? argv[a + 1] : NULL;
    if (clients) return concurrency(model, clients, out_path);

    double t0 = now_ms();
    zeph_engine *engine = engine_open(model, 1);
    double load_ms = now_ms() - t0;

    /* pp512: 512 prompt tokens, one generated token. */
    char *long_prompt = prompt_of_tokens(engine, 512);
    double pp[MAX_REPS], wall;
    unsigned pp_tokens = 0;
    for (int i = 0; i < REPS; i++) {
        zeph_usage u = run(engine, long_prompt, 1, 0.0f, &wall);
        pp[i] = u.prompt_tokens / (u.prompt_ms / 1e3);
        pp_tokens = u.prompt_tokens;
    }
    free(long_prompt);

    /* tg128: a short prompt, 128 greedy tokens (end-of-generation tokens
     * ignored, as llama-bench does not stop either).  The wall time of the
     * whole call is what bench-forward's bare loop is compared with. */
    double tg[MAX_REPS], tg_wall[MAX_REPS];
    unsigned tg_tokens = 0, tg_prompt_tokens = 0;
    for (int i = 0; i < REPS; i++) {
        zeph_usage u = run(engine, TG_PROMPT, 128, 0.0f, &tg_wall[i]);
        tg[i] = u.completion_tokens / (u.generation_ms / 1e3);
        tg_tokens = u.completion_tokens;
        tg_prompt_tokens = u.prompt_tokens;
    }

    /* Time to first token: wall time of a one-token answer to a chat-sized
     * prompt, as a caller sees it. */
    double ttft[MAX_REPS];
    for (int i = 0; i < REPS; i++) {
        run(engine,
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
            1, 0.0f, &wall);
        ttft[i] = wall;
    }

    /* A second chat turn over a ~1,000-token history, with the first turn's
     * KV cache reused and without (skipped with -x). */
    zeph_usage u1, reused = {0}, fresh = {0};
    double fresh_med = 0, reused_med = 0;
    if (extras) {
        char *history = repeat("The quick brown fox jumps over the lazy dog. ", 100);
        zeph_message turn1[] = {{"user", history}};
        chat_ttft(engine, turn1, 1, 1, &u1);
        zeph_message turn2[] = {{"user", history}, {"assistant", "The"}, {"user", "Say it shorter."}};
        double ttft_fresh[MAX_REPS], ttft_reused[MAX_REPS];
        for (int i = 0; i < REPS; i++) {
            ttft_fresh[i] = chat_ttft(engine, turn2, 3, 0, &fresh);
            chat_ttft(engine, turn1, 1, 1, &u1); /* back to the first turn's cache */
            ttft_reused[i] = chat_ttft(engine, turn2, 3, 1, &reused);
        }
        free(history);
        fresh_med = median(ttft_fresh, REPS);
        reused_med = median(ttft_reused, REPS);
    }

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
    double tg_wall_med = median(tg_wall, REPS);
    printf("| %-10s | %-12s |\n", "test", "zeph_llm");
    printf("|------------|--------------|\n");
    printf("| pp%-8u | %8.1f t/s |\n", pp_tokens, pp_med);
    printf("| tg%-8u | %8.1f t/s |\n", tg_tokens, tg_med);
    printf("| ttft       | %9.1f ms |\n", ttft_med);
    printf("| load       | %9.1f ms |\n", load_ms);
    printf("| peak RSS   | %8.1f MiB |\n", rss_mib);
    printf("tg%u request (%u prompt tokens), whole call: %.1f ms\n", tg_tokens, tg_prompt_tokens,
           tg_wall_med);
    if (extras) {
        printf("\nsecond chat turn over a %u-token history, time to first token:\n", fresh.prompt_tokens);
        printf("  without cache reuse %8.1f ms (%u tokens evaluated)\n", fresh_med,
               fresh.prompt_tokens - fresh.cached_tokens);
        printf("  with cache reuse    %8.1f ms (%u tokens evaluated, %u reused)  => %.1fx\n", reused_med,
               reused.prompt_tokens - reused.cached_tokens, reused.cached_tokens, fresh_med / reused_med);
    }
    printf("cancel to return: median %.2f ms, worst %.2f ms (8 cancels)\n", lat_med, lat_max);

    if (out_path) {
        FILE *f = fopen(out_path, "w");
        if (!f) {
            perror(out_path);
            return 1;
        }
        fprintf(f,
                "{\"library\": \"zeph_llm %s\", \"model\": \"%s\", \"reps\": %d, \"threads\": %u,\n"
                " \"pp\": {\"prompt_tokens\": %u, \"tokens_per_s\": %.2f},\n"
                " \"tg\": {\"tokens\": %u, \"tokens_per_s\": %.2f, \"prompt\": \"%s\","
                " \"prompt_tokens\": %u, \"wall_ms\": %.3f},\n"
                " \"ttft_ms\": %.2f, \"load_ms\": %.2f, \"peak_rss_mib\": %.1f,\n"
                " \"second_turn\": {\"measured\": %s, \"prompt_tokens\": %u, \"ttft_ms_without_reuse\": %.2f,"
                " \"ttft_ms_with_reuse\": %.2f, \"cached_tokens\": %u},\n"
                " \"cancel_latency_ms\": {\"median\": %.3f, \"worst\": %.3f}}\n",
                zeph_version(), model, REPS, n_threads_opt, pp_tokens, pp_med, tg_tokens, tg_med,
                TG_PROMPT, tg_prompt_tokens, tg_wall_med, ttft_med, load_ms, rss_mib,
                extras ? "true" : "false", fresh.prompt_tokens, fresh_med, reused_med, reused.cached_tokens, lat_med, lat_max);
        fclose(f);
        printf("written: %s\n", out_path);
    }
    return 0;
}
