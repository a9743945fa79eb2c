/*
 * Stress run through the public C API only, on the real model:
 *
 *   stress <model.gguf> <threads> <calls-per-thread> [rss-check 0|1] [slack-ms]
 *
 * Each thread makes a mix of calls (complete, chat, streams read fully,
 * partly or not at all, tokenize) with random deadlines from 1 ms to 2 s;
 * a canceller thread cancels random calls' tokens; every fourth round runs
 * on an engine of its own that is shut down while the calls are in flight.
 *
 * Checks: every call returns a documented status for what it is, within
 * its deadline + slack-ms (default 100; calls without a deadline of their own: tokenize;
 * a call that waits on shutdown: within 100 ms of the shutdown); no call
 * deadlocks (a watchdog aborts after 10 minutes without progress); with
 * rss-check, resident memory not backed by a file after the run is within
 * 5% of where it was after warm-up, both measured at rest: 1.5 s after the
 * last call, when the engine's idle workers have handed freed heap memory
 * back to the system (the library does so after 1 s without work; glibc
 * keeps it otherwise, in one arena per calling thread).  Total RSS is
 * printed too; it also holds the model's mapped pages, which grow as new
 * tokens' rows are touched.  Leaks are checked by the sanitizer build (make test-stress,
 * LeakSanitizer) since it sees every malloc in the process, the library's
 * too.  Prints the worst latency past a deadline.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zeph_llm.h"

static double SLACK_MS = 100.0;
#define N_TOKENS 64

static const char *model_path;
static int n_threads, n_calls;
static atomic_int failures;
static atomic_long progress;
static _Atomic double worst_past_ms;

/* Tokens the canceller may trip, with the calls that carry them. */
static zeph_cancel_token *tokens[N_TOKENS];

typedef struct {
    zeph_engine *engine;
    atomic_bool shut;     /* set just before zeph_engine_shutdown */
    _Atomic double shut_at;
} round_t;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(double ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (time_t)(ms / 1000) * 1000) * 1e6)};
    nanosleep(&ts, NULL);
}

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void fail(const char *what, const char *op, zeph_status st, double late) {
    atomic_fetch_add(&failures, 1);
    fprintf(stderr, "FAIL %s: %s -> %s (%.1f ms past) %s\n", op, what, zeph_status_name(st), late, zeph_last_error());
}

static void note_late(double late) {
    double w = atomic_load(&worst_past_ms);
    while (late > w && !atomic_compare_exchange_weak(&worst_past_ms, &w, late)) {
    }
}

/* The statuses a generation call may document for this stress's inputs. */
static bool generation_status(zeph_status st) {
    return st == ZEPH_STATUS_OK || st == ZEPH_STATUS_TIMEOUT || st == ZEPH_STATUS_CANCELLED ||
           st == ZEPH_STATUS_SHUTDOWN || st == ZEPH_STATUS_QUEUE_FULL;
}

/* Checks a call's status and how long after its deadline it returned.  A
 * call cut short by shutdown must return within SLACK_MS of it. */
static void judge(round_t *r, const char *op, zeph_status st, double start, double deadline_ms) {
    double end = now_ms();
    double due = start + deadline_ms;
    if (st == ZEPH_STATUS_SHUTDOWN && atomic_load(&r->shut)) {
        double shut = atomic_load(&r->shut_at);
        if (shut < start) shut = start;
        if (shut < due) due = shut;
    }
    double late = end - due;
    if (late > 0) note_late(late);
    if (!generation_status(st)) fail("undocumented status", op, st, late);
    else if (late > SLACK_MS) fail("returned too late", op, st, late);
    atomic_fetch_add(&progress, 1);
}

static const char *prompts[] = {
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three prime numbers:",
    "Once upon a time",
    "\xe4\xbd\xa0\xe5\xa5\xbd, how are you?",
};

static void one_call(round_t *r, uint64_t *rng) {
    zeph_generate_options o = zeph_generate_options_default();
    o.temperature = (next_rand(rng) % 2) ? 0.0f : 0.8f;
    o.max_tokens = 1 + (uint32_t)(next_rand(rng) % 24);
    /* 1 ms to 2 s, log-uniform: as many under 45 ms as over. */
    double u = (double)(next_rand(rng) % 10001) / 10000.0;
    uint64_t timeout = (uint64_t)(pow(2000.0, u) + 0.5);
    o.timeout_ms = timeout;
    if (next_rand(rng) % 4 == 0) o.cancel = tokens[next_rand(rng) % N_TOKENS];
    const char *prompt = prompts[next_rand(rng) % (sizeof prompts / sizeof *prompts)];
    zeph_engine *e = r->engine;
    int kind = (int)(next_rand(rng) % 7);
    double start = now_ms();
    char *text = NULL;
    zeph_stream *s = NULL;
    zeph_status st;
    switch (kind) {
    case 0: {
        zeph_usage usage = {.struct_size = sizeof usage};
        st = zeph_engine_complete(e, prompt, &o, &text, &usage);
        zeph_string_free(text);
        judge(r, "complete", st, start, (double)timeout);
        break;
    }
    case 1: {
        zeph_message m[] = {{"system", "Be brief."}, {"user", prompt}};
        st = zeph_engine_chat(e, m, 2, &o, &text, NULL);
        zeph_string_free(text);
        judge(r, "chat", st, start, (double)timeout);
        break;
    }
    case 2:
    case 3: { /* read fully, or partly then free */
        int stop_after = kind == 2 ? -1 : (int)(next_rand(rng) % 4);
        st = zeph_engine_stream_complete(e, prompt, &o, &s);
        if (st == ZEPH_STATUS_OK) {
            int n = 0;
            for (;;) {
                char *piece = NULL;
                st = zeph_stream_next(s, 50, &piece);
                if (st == ZEPH_STATUS_TIMEOUT) {
                    zeph_usage usage = {.struct_size = sizeof usage};
                    zeph_stream_usage(s, &usage);
                    if (usage.finish_reason == ZEPH_FINISH_NONE) continue; /* the stream goes on */
                    break;
                }
                if (st != ZEPH_STATUS_OK || !piece) break;
                zeph_string_free(piece);
                if (++n == stop_after) break;
            }
            zeph_stream_free(s);
        }
        judge(r, kind == 2 ? "stream read fully" : "stream read partly", st, start, (double)timeout);
        break;
    }
    case 4: { /* a stream never read */
        zeph_message m[] = {{"user", prompt}};
        st = zeph_engine_stream_chat(e, m, 1, &o, &s);
        if (st == ZEPH_STATUS_OK) zeph_stream_free(s);
        judge(r, "stream not read", st, start, (double)timeout);
        break;
    }
    case 5: { /* next with waits longer than any deadline */
        st = zeph_engine_stream_complete(e, prompt, &o, &s);
        if (st == ZEPH_STATUS_OK) {
            st = zeph_stream_for_each(s, NULL, NULL);
            if (st != ZEPH_STATUS_NULL_ARGUMENT) fail("for_each without a callback", "for_each", st, 0);
            for (;;) {
                char *piece = NULL;
                st = zeph_stream_next(s, 2500, &piece);
                if (st != ZEPH_STATUS_OK || !piece) break;
                zeph_string_free(piece);
            }
            zeph_stream_free(s);
        }
        judge(r, "stream (next, long waits)", st, start, (double)timeout);
        break;
    }
    default: { /* tokenize: no deadline of its own; short texts are quick */
        uint32_t ids[64];
        size_t n = 0;
        st = zeph_engine_tokenize(e, prompt, true, true, ids, 64, &n);
        if (st != ZEPH_STATUS_OK && st != ZEPH_STATUS_SHUTDOWN) fail("tokenize", "tokenize", st, 0);
        judge(r, "tokenize", st == ZEPH_STATUS_SHUTDOWN ? ZEPH_STATUS_OK : st, start, 1000.0);
        break;
    }
    }
}

typedef struct {
    round_t *round;
    uint64_t seed;
    int calls;
} worker_arg;

static void *worker(void *arg) {
    worker_arg *w = arg;
    for (int i = 0; i < w->calls; i++) one_call(w->round, &w->seed);
    return NULL;
}

static atomic_bool stop_canceller;

static void *canceller(void *arg) {
    uint64_t rng = (uint64_t)(uintptr_t)arg | 1;
    while (!atomic_load(&stop_canceller)) {
        sleep_ms(1 + (double)(next_rand(&rng) % 50));
        int i = (int)(next_rand(&rng) % N_TOKENS);
        zeph_cancel_token *old = tokens[i];
        zeph_cancel_token_cancel(old);
    }
    return NULL;
}

static void *watchdog(void *arg) {
    (void)arg;
    long last = -1;
    for (;;) {
        sleep_ms(600000);
        long p = atomic_load(&progress);
        if (p == last) {
            fprintf(stderr, "FAIL: no call returned for 10 minutes (deadlock?)\n");
            abort();
        }
        last = p;
    }
    return NULL;
}

static zeph_engine *open_engine(void) {
    zeph_engine_options eo = zeph_engine_options_default();
    eo.n_workers = 2;
    eo.queue_capacity = 8;
    eo.n_threads = 1;
    zeph_engine *e = NULL;
    zeph_status st = zeph_engine_new(model_path, &eo, &e);
    if (st != ZEPH_STATUS_OK) {
        fprintf(stderr, "cannot open %s: %s\n", model_path, zeph_last_error());
        exit(2);
    }
    return e;
}

/* One round: every thread makes `calls` calls on r->engine; with
 * `shutdown_after_ms` >= 0 the engine is shut down that long after the
 * start. */
static void run_round(round_t *r, int calls, uint64_t seed, double shutdown_after_ms) {
    pthread_t *t = calloc((size_t)n_threads, sizeof *t);
    worker_arg *a = calloc((size_t)n_threads, sizeof *a);
    for (int i = 0; i < n_threads; i++) {
        a[i] = (worker_arg){r, seed * 7919 + (uint64_t)i * 104729 + 1, calls};
        pthread_create(&t[i], NULL, worker, &a[i]);
    }
    if (shutdown_after_ms >= 0) {
        sleep_ms(shutdown_after_ms);
        atomic_store(&r->shut_at, now_ms());
        atomic_store(&r->shut, true);
        zeph_engine_shutdown(r->engine);
    }
    for (int i = 0; i < n_threads; i++) pthread_join(t[i], NULL);
    free(t);
    free(a);
}

/* Resident memory in KiB: all of it, and the part not backed by a file
 * (the model's mapped pages are file-backed: they come in as tokens whose
 * embedding rows were never touched appear, and are no leak). */
static void rss_kib(long *total, long *anon) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0, shared = 0;
    if (f) {
        if (fscanf(f, "%ld %ld %ld", &pages, &resident, &shared) != 3) resident = shared = 0;
        fclose(f);
    }
    long kib = sysconf(_SC_PAGESIZE) / 1024;
    *total = resident * kib;
    *anon = (resident - shared) * kib;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s <model.gguf> <threads> <calls-per-thread> [rss-check 0|1] [slack-ms]\n", argv[0]);
        return 2;
    }
    model_path = argv[1];
    n_threads = atoi(argv[2]);
    n_calls = atoi(argv[3]);
    bool rss_check = argc > 4 && atoi(argv[4]) != 0;
    if (argc > 5) SLACK_MS = atof(argv[5]);
    for (int i = 0; i < N_TOKENS; i++) zeph_cancel_token_new(&tokens[i]);
    pthread_t dog, canc;
    pthread_create(&dog, NULL, watchdog, NULL);
    pthread_detach(dog);

    round_t main_round = {.engine = open_engine()};
    double t0 = now_ms();
    /* Warm-up: every path once per thread, then one round of the mixed
     * calls (50 per thread at most, not counted in <calls-per-thread>), so
     * that the engine's buffers have grown to what many sequences at once
     * need (they never shrink: a worker reaches its largest size once). */
    /* At least four rounds, so that a short run has a shutdown round too. */
    int per_round = (n_calls + 3) / 4 < 50 ? (n_calls + 3) / 4 : 50, done = 0, round = 0;
    run_round(&main_round, 7, 1, -1);
    run_round(&main_round, per_round, 0x3a7e, -1);
    sleep_ms(1500);
    long rss_warm, anon_warm;
    rss_kib(&rss_warm, &anon_warm);
    printf("stress: warm-up done, RSS %ld KiB (%ld KiB not file-backed)\n", rss_warm, anon_warm);

    /* The calls in rounds of up to 50 per thread; every fourth round on an
     * engine of its own, shut down mid-flight. */
    while (done < n_calls) {
        int calls = n_calls - done < per_round ? n_calls - done : per_round;
        atomic_store(&stop_canceller, false);
        pthread_create(&canc, NULL, canceller, (void *)(uintptr_t)(0x5eed + round));
        if (round % 4 == 3) {
            round_t r = {.engine = open_engine()};
            run_round(&r, calls, (uint64_t)round + 2, 200 + (round * 37) % 1500);
            zeph_engine_free(r.engine);
        } else {
            run_round(&main_round, calls, (uint64_t)round + 2, -1);
        }
        atomic_store(&stop_canceller, true);
        pthread_join(canc, NULL);
        /* Tokens tripped by the canceller are replaced between rounds. */
        for (int i = 0; i < N_TOKENS; i++) {
            if (zeph_cancel_token_is_cancelled(tokens[i])) {
                zeph_cancel_token_free(tokens[i]);
                zeph_cancel_token_new(&tokens[i]);
            }
        }
        done += calls;
        round++;
        printf("stress: %d/%d calls per thread, %d failures, worst %.1f ms past a deadline\n", done, n_calls,
               atomic_load(&failures), atomic_load(&worst_past_ms));
        fflush(stdout);
    }
    sleep_ms(1500);
    long rss_end, anon_end;
    rss_kib(&rss_end, &anon_end);
    zeph_engine_free(main_round.engine);
    for (int i = 0; i < N_TOKENS; i++) zeph_cancel_token_free(tokens[i]);

    double grew = 100.0 * (double)(rss_end - rss_warm) / (double)rss_warm;
    double anon_grew = 100.0 * (double)(anon_end - anon_warm) / (double)anon_warm;
    printf("stress: %d threads x %d calls in %.1f s; worst latency past a deadline %.1f ms (allowed %.0f); RSS after "
           "warm-up %ld KiB, after the run %ld KiB (%+.1f%%); not file-backed %ld -> %ld KiB (%+.1f%%)\n",
           n_threads, n_calls, (now_ms() - t0) / 1000, atomic_load(&worst_past_ms), SLACK_MS, rss_warm, rss_end, grew, anon_warm, anon_end, anon_grew);
    /* The check is on memory not backed by a file: what a leak grows. */
    if (rss_check && (anon_grew > 5.0 || anon_grew < -5.0)) {
        fprintf(stderr, "FAIL: resident memory not backed by a file moved by %.1f%% (more than 5%%)\n", anon_grew);
        atomic_fetch_add(&failures, 1);
    }
    int f = atomic_load(&failures);
    printf("stress: %s (%d failures)\n", f ? "FAILED" : "passed", f);
    return f ? 1 : 0;
}
