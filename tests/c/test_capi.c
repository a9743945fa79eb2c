/*
 * The C API tested as C: every exported function, every status on a real
 * case, threads, streams.  Built with -std=c11 -Wall -Wextra -Wpedantic
 * -Werror and run under valgrind by `make test-c`.
 *
 *   test_capi <smollm2.gguf> <fixtures-dir>            the shipped library
 *   test_capi <smollm2.gguf> <fixtures-dir> --faults   a library built with
 *       the cargo feature fault-injection: injected panics only (see
 *       test_injected_panics)
 *
 * The fixtures (tiny random-weight models written by
 * tests/fixtures/make_fixtures.rs) keep the many-request cases fast under
 * valgrind; the real model checks results against llama.cpp's reference.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zeph_llm.h"

static int passed, failed;
static const char *model_path, *fixtures;
static char tiny_path[4096], bad_shape_path[4096], tmpdir[4096];

static void check(bool ok, const char *name, const char *detail) {
    if (ok) {
        passed++;
        printf("ok - %s\n", name);
    } else {
        failed++;
        printf("FAIL - %s%s%s\n", name, detail ? ": " : "", detail ? detail : "");
    }
    fflush(stdout);
}

/* Checks a status, and on a failure status that the message names `needle`. */
static void expect(zeph_status got, zeph_status want, const char *name, const char *needle) {
    char detail[1024];
    const char *msg = zeph_last_error();
    bool ok = got == want;
    if (ok && want != ZEPH_STATUS_OK) ok = msg && msg[0] != '\0';
    if (ok && needle) ok = strstr(msg, needle) != NULL;
    snprintf(detail, sizeof detail, "got %s, want %s; message \"%s\"", zeph_status_name(got),
             zeph_status_name(want), msg);
    check(ok, name, ok ? NULL : detail);
}

/* Checks only the status of a call made on another thread (whose message
 * belongs to that thread). */
static void expect_status(zeph_status got, zeph_status want, const char *name) {
    char detail[256];
    snprintf(detail, sizeof detail, "got %s, want %s", zeph_status_name(got), zeph_status_name(want));
    check(got == want, name, got == want ? NULL : detail);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static zeph_generate_options greedy(uint32_t max_tokens) {
    zeph_generate_options o = zeph_generate_options_default();
    o.temperature = 0.0f;
    o.max_tokens = max_tokens;
    /* Under valgrind the real model runs some 50 times slower: no request
     * here is meant to hit the engine's default deadline of 2 minutes. */
    o.timeout_ms = 3600000;
    return o;
}

/* How long a wait for a piece may take before the test calls it a hang: a
 * guard, never a measure of speed (under valgrind everything is slow). */
#define HANG_GUARD_MS 600000

static zeph_engine *open_engine_parallel(const char *path, uint32_t workers, uint32_t queue,
                                         uint32_t parallel) {
    zeph_engine_options eo = zeph_engine_options_default();
    eo.n_workers = workers;
    eo.queue_capacity = queue;
    eo.n_parallel = parallel;
    zeph_engine *e = NULL;
    zeph_status s = zeph_engine_new(path, &eo, &e);
    if (s != ZEPH_STATUS_OK) {
        fprintf(stderr, "cannot open %s: %s: %s\n", path, zeph_status_name(s), zeph_last_error());
        exit(1);
    }
    return e;
}

static zeph_engine *open_engine(const char *path, uint32_t workers, uint32_t queue) {
    return open_engine_parallel(path, workers, queue, 0);
}

/* Takes a sequence slot of `e` until the stream returned is freed: a
 * stream nobody reads pauses once its buffer is full, so it never ends by
 * itself.  Returns once its first piece came, that is once a worker runs it. */
static zeph_stream *occupy_a_slot(zeph_engine *e) {
    zeph_generate_options o = greedy(4000);
    o.ignore_eog = 1;
    zeph_stream *s = NULL;
    char *piece = NULL;
    if (zeph_engine_stream_complete(e, "a", &o, &s) != ZEPH_STATUS_OK ||
        zeph_stream_next(s, HANG_GUARD_MS, &piece) != ZEPH_STATUS_OK || !piece) {
        fprintf(stderr, "cannot occupy a slot: %s\n", zeph_last_error());
        exit(1);
    }
    zeph_string_free(piece);
    return s;
}

static bool valid_utf8(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p >> 5) == 6 ? 1 : (*p >> 4) == 14 ? 2 : (*p >> 3) == 30 ? 3 : -1;
        if (n < 0) return false;
        p++;
        for (int i = 0; i < n; i++, p++)
            if ((*p & 0xC0) != 0x80) return false;
    }
    return true;
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

/* The first `len` bytes of `src` (all when len is 0), into `dst`, with an
 * optional same-length substitution of the first occurrence of `from`. */
static void copy_file(const char *src, const char *dst, size_t len, const char *from, const char *to) {
    FILE *f = fopen(src, "rb");
    if (!f) {
        perror(src);
        exit(1);
    }
    struct stat st;
    stat(src, &st);
    size_t n = len ? len : (size_t)st.st_size;
    char *buf = malloc(n);
    if (!buf || fread(buf, 1, n, f) != n) {
        perror(src);
        exit(1);
    }
    fclose(f);
    if (from) {
        size_t fl = strlen(from);
        for (size_t i = 0; i + fl <= n; i++)
            if (memcmp(buf + i, from, fl) == 0) {
                memcpy(buf + i, to, fl);
                break;
            }
    }
    write_file(dst, buf, n);
    free(buf);
}

/* ---- a generation call on another thread ---------------------------------- */

typedef struct {
    zeph_engine *engine;
    const char *prompt;
    zeph_generate_options options;
    zeph_status status;
    char *text;
} call_t;

static void *run_call(void *arg) {
    call_t *c = arg;
    c->status = zeph_engine_complete(c->engine, c->prompt, &c->options, &c->text, NULL);
    return NULL;
}

/* Whether zeph_last_error() is "" on a new thread (read there: the message
 * lives only as long as its thread). */
static void *last_error_is_empty(void *arg) {
    *(bool *)arg = zeph_last_error()[0] == '\0';
    return NULL;
}

/* ---- sections --------------------------------------------------------------- */

static void test_basics(void) {
    check(strcmp(zeph_version(), ZEPH_VERSION) == 0, "zeph_version equals ZEPH_VERSION", zeph_version());
    const char *names[] = {"ZEPH_STATUS_OK", "ZEPH_STATUS_NULL_ARGUMENT", "ZEPH_STATUS_INVALID_ARGUMENT",
                           "ZEPH_STATUS_INVALID_UTF8", "ZEPH_STATUS_IO", "ZEPH_STATUS_MODEL",
                           "ZEPH_STATUS_TOKENIZER", "ZEPH_STATUS_TEMPLATE", "ZEPH_STATUS_CONTEXT_OVERFLOW",
                           "ZEPH_STATUS_QUEUE_FULL", "ZEPH_STATUS_TIMEOUT", "ZEPH_STATUS_CANCELLED",
                           "ZEPH_STATUS_SHUTDOWN", "ZEPH_STATUS_INFERENCE", "ZEPH_STATUS_PANIC",
                           "ZEPH_STATUS_GRAMMAR"};
    bool all = true;
    for (int i = 0; i <= ZEPH_STATUS_GRAMMAR; i++) all = all && strcmp(zeph_status_name((zeph_status)i), names[i]) == 0;
    check(all, "zeph_status_name names every status", NULL);
    check(strcmp(zeph_status_name((zeph_status)99), "ZEPH_STATUS_UNKNOWN") == 0 &&
              strcmp(zeph_status_name((zeph_status)-1), "ZEPH_STATUS_UNKNOWN") == 0,
          "zeph_status_name of a number that is no status", NULL);
    bool empty = false;
    pthread_t t;
    pthread_create(&t, NULL, last_error_is_empty, &empty);
    pthread_join(t, NULL);
    check(empty, "zeph_last_error is empty on a thread with no failure", NULL);
    zeph_string_free(NULL);
    zeph_engine_free(NULL);
    zeph_engine_shutdown(NULL);
    zeph_cancel_token_free(NULL);
    zeph_cancel_token_cancel(NULL);
    zeph_stream_free(NULL);
    zeph_stream_cancel(NULL);
    check(!zeph_cancel_token_is_cancelled(NULL) && zeph_engine_context_length(NULL) == 0,
          "NULL handles are no-ops", NULL);
}

static void test_loading(void) {
    zeph_engine *sentinel = (zeph_engine *)&passed, *e = sentinel;
    char path[4200];

    expect(zeph_engine_new(NULL, NULL, &e), ZEPH_STATUS_NULL_ARGUMENT, "NULL model_path", "model_path");
    expect(zeph_engine_new(tiny_path, NULL, NULL), ZEPH_STATUS_NULL_ARGUMENT, "NULL engine_out", "engine_out");
    expect(zeph_engine_new("/nonexistent/dir/model.gguf", NULL, &e), ZEPH_STATUS_IO, "missing file", "model.gguf");
    expect(zeph_engine_new(tmpdir, NULL, &e), ZEPH_STATUS_IO, "a directory", "directory");
    expect(zeph_engine_new("bad-\xff-name.gguf", NULL, &e), ZEPH_STATUS_INVALID_UTF8,
           "model path not UTF-8", "model_path");

    snprintf(path, sizeof path, "%s/empty.gguf", tmpdir);
    write_file(path, "", 0);
    expect(zeph_engine_new(path, NULL, &e), ZEPH_STATUS_MODEL, "empty file", "empty.gguf");
    snprintf(path, sizeof path, "%s/text.gguf", tmpdir);
    const char *text = "This is a text file, not a GGUF model; it only pretends by its name.\n";
    write_file(path, text, strlen(text));
    expect(zeph_engine_new(path, NULL, &e), ZEPH_STATUS_MODEL, "a text file", "text.gguf");
    snprintf(path, sizeof path, "%s/cut-1m.gguf", tmpdir);
    copy_file(model_path, path, 1 << 20, NULL, NULL);
    expect(zeph_engine_new(path, NULL, &e), ZEPH_STATUS_MODEL, "real model cut after 1 MiB", "cut-1m.gguf");
    struct stat st;
    stat(model_path, &st);
    snprintf(path, sizeof path, "%s/cut-half.gguf", tmpdir);
    copy_file(model_path, path, (size_t)st.st_size / 2, NULL, NULL);
    expect(zeph_engine_new(path, NULL, &e), ZEPH_STATUS_MODEL, "real model cut in half", "truncated");
    snprintf(path, sizeof path, "%s/zorro.gguf", tmpdir);
    copy_file(tiny_path, path, 0, "llama", "zorro");
    expect(zeph_engine_new(path, NULL, &e), ZEPH_STATUS_MODEL, "unknown architecture", "zorro");
    check(e == sentinel, "engine_out untouched on failure", NULL);

    zeph_engine_options eo = zeph_engine_options_default();
    eo.n_workers = 0;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_INVALID_ARGUMENT, "zero workers", "n_workers");
    eo = zeph_engine_options_default();
    eo.queue_capacity = 0;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_INVALID_ARGUMENT, "zero queue", "queue_capacity");
    eo = zeph_engine_options_default();
    eo.default_timeout_ms = 0;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_INVALID_ARGUMENT, "zero default timeout",
           "default_timeout_ms");
    eo = zeph_engine_options_default();
    eo.struct_size = 4;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_INVALID_ARGUMENT, "engine options struct_size too small",
           "struct_size");

    /* A caller compiled against a newer header: more fields. */
    struct {
        zeph_engine_options o;
        uint64_t newer_field;
    } bigger;
    bigger.o = zeph_engine_options_default();
    bigger.o.struct_size = sizeof bigger;
    bigger.newer_field = 7;
    expect(zeph_engine_new(tiny_path, &bigger.o, &e), ZEPH_STATUS_INVALID_ARGUMENT,
           "unknown non-zero fields are refused", "does not support");
    bigger.newer_field = 0;
    e = NULL;
    expect(zeph_engine_new(tiny_path, &bigger.o, &e), ZEPH_STATUS_OK, "unknown zero fields are accepted", NULL);
    zeph_engine_free(e);

    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    write_file(path, "{ not json", 10);
    eo = zeph_engine_options_default();
    eo.tokenizer_path = path;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_TOKENIZER, "a broken tokenizer.json", "tokenizer.json");
    eo = zeph_engine_options_default();
    eo.chat_template = "{% for %}";
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_TEMPLATE, "a chat template with a syntax error",
           "chat template");
}

static void *read_whole(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc((size_t)n);
    *len = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

struct progress_log {
    float seen[64];
    int n;
    int stop_at; /* return false at this call (1-based); 0 = never */
};

static bool on_progress(void *user_data, float progress) {
    struct progress_log *p = user_data;
    if (p->n < 64) p->seen[p->n] = progress;
    p->n++;
    return p->stop_at == 0 || p->n < p->stop_at;
}

struct log_lines {
    int n_info;
    int n_other;
    char last[512];
};

static void on_log(void *user_data, zeph_log_level level, const char *message) {
    struct log_lines *l = user_data;
    if (level == ZEPH_LOG_INFO) l->n_info++;
    else l->n_other++;
    snprintf(l->last, sizeof l->last, "%s", message);
}

static void test_loading_from_memory_and_callbacks(void) {
    zeph_engine *sentinel = (zeph_engine *)&passed, *e = sentinel;
    size_t len = 0;
    void *bytes = read_whole(tiny_path, &len);
    check(bytes != NULL && len > 0, "read the tiny fixture", NULL);
    expect(zeph_engine_new_from_memory(NULL, len, NULL, &e), ZEPH_STATUS_NULL_ARGUMENT, "from memory: NULL data",
           "data");
    expect(zeph_engine_new_from_memory(bytes, len, NULL, NULL), ZEPH_STATUS_NULL_ARGUMENT,
           "from memory: NULL engine_out", "engine_out");
    expect(zeph_engine_new_from_memory(bytes, 0, NULL, &e), ZEPH_STATUS_MODEL, "from memory: no bytes", "<memory>");
    expect(zeph_engine_new_from_memory(bytes, len / 2, NULL, &e), ZEPH_STATUS_MODEL, "from memory: half a model",
           "<memory>");
    check(e == sentinel, "engine_out untouched on failure (memory)", NULL);
    e = NULL;
    expect(zeph_engine_new_from_memory(bytes, len, NULL, &e), ZEPH_STATUS_OK, "from memory", NULL);
    memset(bytes, 0, len); /* copied: the buffer is the caller's again */
    free(bytes);
    zeph_engine *f = open_engine(tiny_path, 1, 4);
    zeph_generate_options o = greedy(12);
    char *a = NULL, *b = NULL;
    expect(zeph_engine_complete(e, "hello", &o, &a, NULL), ZEPH_STATUS_OK, "generate from a memory-loaded model",
           NULL);
    expect(zeph_engine_complete(f, "hello", &o, &b, NULL), ZEPH_STATUS_OK, "generate from the same file", NULL);
    check(a && b && strcmp(a, b) == 0, "memory and file give the same text", NULL);
    zeph_string_free(a);
    zeph_string_free(b);
    zeph_engine_free(e);
    zeph_engine_free(f);

    struct progress_log p = {.n = 0, .stop_at = 0};
    zeph_engine_options eo = zeph_engine_options_default();
    eo.progress = on_progress;
    eo.progress_user_data = &p;
    e = NULL;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_OK, "load with a progress callback", NULL);
    zeph_engine_free(e);
    bool monotone = p.n >= 2 && p.seen[0] == 0.0f && p.seen[p.n - 1] == 1.0f;
    for (int i = 1; i < p.n && i < 64; i++) monotone = monotone && p.seen[i] >= p.seen[i - 1];
    check(monotone, "progress goes from 0 to 1, never back", NULL);
    int calls = p.n;
    for (int stop = 1; stop <= calls; stop++) {
        struct progress_log q = {.n = 0, .stop_at = stop};
        eo.progress_user_data = &q;
        e = sentinel;
        zeph_status s = zeph_engine_new(tiny_path, &eo, &e);
        char name[96];
        snprintf(name, sizeof name, "progress returning false at call %d cancels the load", stop);
        expect(s, ZEPH_STATUS_CANCELLED, name, "progress callback");
        check(e == sentinel && q.n == stop, "a cancelled load writes no engine and stops calling", NULL);
    }

    struct log_lines l = {0, 0, ""};
    eo = zeph_engine_options_default();
    eo.log = on_log;
    eo.log_user_data = &l;
    e = NULL;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_OK, "load with a log callback", NULL);
    zeph_engine_free(e);
    check(l.n_info >= 1 && strstr(l.last, "loaded") != NULL, "the log callback hears the load summary", l.last);

    /* A caller compiled against the header before the callbacks. */
    eo = zeph_engine_options_default();
    eo.struct_size = (uint32_t)offsetof(zeph_engine_options, progress);
    e = NULL;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_OK, "engine options of the first version", NULL);
    zeph_engine_free(e);
}

/* load_into_memory: the file is read into memory while loading and not used
 * afterwards.  A copy of the fixture, loaded so, then truncated and rewritten
 * in place (which kills a process that maps the file, with SIGBUS): the
 * engine answers as an engine on the untouched fixture does. */
static void test_load_into_memory(void) {
    zeph_engine_options eo = zeph_engine_options_default();
    check(eo.load_into_memory == 0 && eo.reserved2 == 0, "load_into_memory is off by default", NULL);
    char path[4200];
    snprintf(path, sizeof path, "%s/in-memory.gguf", tmpdir);
    copy_file(tiny_path, path, 0, NULL, NULL);
    eo.load_into_memory = 1;
    zeph_engine *e = NULL;
    expect(zeph_engine_new(path, &eo, &e), ZEPH_STATUS_OK, "load_into_memory: the copy loads", NULL);
    zeph_engine *ref = open_engine(tiny_path, 1, 4);
    check(truncate(path, 0) == 0, "load_into_memory: the file truncated under the engine", NULL);
    write_file(path, "not a model any more", 20);
    zeph_generate_options o = greedy(16);
    char *a = NULL, *b = NULL;
    expect(zeph_engine_complete(e, "hello", &o, &a, NULL), ZEPH_STATUS_OK,
           "load_into_memory: generates after its file was truncated and rewritten", NULL);
    expect(zeph_engine_complete(ref, "hello", &o, &b, NULL), ZEPH_STATUS_OK, "the untouched fixture generates", NULL);
    check(a && b && strcmp(a, b) == 0, "load_into_memory: the same text as from the untouched file", NULL);
    zeph_stream *s = NULL;
    expect(zeph_engine_stream_complete(e, "hello", &o, &s), ZEPH_STATUS_OK, "load_into_memory: a stream", NULL);
    char joined[4096] = "", *piece = NULL;
    zeph_status st;
    while ((st = zeph_stream_next(s, 3600000, &piece)) == ZEPH_STATUS_OK && piece) {
        strncat(joined, piece, sizeof joined - strlen(joined) - 1);
        zeph_string_free(piece);
    }
    expect_status(st, ZEPH_STATUS_OK, "load_into_memory: the stream ends");
    check(b && strcmp(joined, b) == 0, "load_into_memory: the stream adds up to the same text", joined);
    zeph_stream_free(s);
    zeph_string_free(a);
    zeph_string_free(b);
    zeph_engine_free(e);
    zeph_engine_free(ref);

    /* What the file now holds is read, and refused, as any file is. */
    e = (zeph_engine *)&passed;
    expect(zeph_engine_new(path, &eo, &e), ZEPH_STATUS_MODEL, "load_into_memory: a file that is no model", path);
    unlink(path);
    expect(zeph_engine_new(path, &eo, &e), ZEPH_STATUS_IO, "load_into_memory: a missing file", path);
    check(e == (zeph_engine *)&passed, "load_into_memory: engine_out untouched on failure", NULL);
    eo.reserved2 = 1;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_INVALID_ARGUMENT, "engine options reserved2 must be 0",
           "reserved2");

    /* A caller compiled before load_into_memory: what lies past its
     * struct_size (here both new fields, non-zero) is not read. */
    eo.struct_size = (uint32_t)offsetof(zeph_engine_options, load_into_memory);
    e = NULL;
    expect(zeph_engine_new(tiny_path, &eo, &e), ZEPH_STATUS_OK,
           "engine options without load_into_memory: the bytes past struct_size are not read", NULL);
    zeph_engine_free(e);
}

static void test_real_model(void) {
    zeph_engine *e = open_engine(model_path, 1, 4);
    zeph_generate_options o = greedy(8);
    zeph_usage u = {.struct_size = sizeof u};
    char *text = NULL;
    expect(zeph_engine_complete(e, "The capital of France is", &o, &text, &u), ZEPH_STATUS_OK,
           "complete on the real model", NULL);
    /* llama.cpp's greedy continuation, tests/data/llamacpp-tokens-and-greedy.json. */
    check(text && strcmp(text, " Paris.\n\nThe United States has") == 0, "greedy text equals llama.cpp's", text);
    check(u.prompt_tokens == 5 && u.completion_tokens == 8 && u.finish_reason == ZEPH_FINISH_LENGTH &&
              u.queue_ms >= 0 && u.prompt_ms > 0 && u.generation_ms > 0,
          "usage numbers", NULL);
    zeph_string_free(text);

    /* A stop string: the text ends before it (" population" is the 11th token). */
    const char *stops[] = {" population", "never appears"};
    o = greedy(24);
    o.stop = stops;
    o.n_stop = 2;
    text = NULL;
    expect(zeph_engine_complete(e, "The capital of France is", &o, &text, &u), ZEPH_STATUS_OK,
           "complete with stop strings", NULL);
    check(text && strcmp(text, " Paris.\n\nThe United States has a") == 0 &&
              u.finish_reason == ZEPH_FINISH_STOP_STRING,
          "the text ends before the stop string", text);
    zeph_string_free(text);

    /* The same as a stream: the stop string spans two pieces (" pop",
     * "ulation") and none of it is shown. */
    zeph_stream *s = NULL;
    expect(zeph_engine_stream_complete(e, "The capital of France is", &o, &s), ZEPH_STATUS_OK,
           "stream with stop strings", NULL);
    char joined[256] = {0};
    for (;;) {
        char *piece = NULL;
        if (zeph_stream_next(s, 60000, &piece) != ZEPH_STATUS_OK || !piece) break;
        strncat(joined, piece, sizeof joined - strlen(joined) - 1);
        zeph_string_free(piece);
    }
    check(strcmp(joined, " Paris.\n\nThe United States has a") == 0, "streamed pieces stop before it", joined);
    zeph_stream_usage(s, &u);
    check(u.finish_reason == ZEPH_FINISH_STOP_STRING, "stream finish reason stop string", NULL);
    zeph_stream_free(s);

    zeph_message hi[] = {{"user", "Hi"}};
    text = NULL;
    expect(zeph_engine_apply_chat_template(e, hi, 1, true, &text), ZEPH_STATUS_OK, "apply_chat_template", NULL);
    check(text && strcmp(text, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                               "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") == 0,
          "the model's own template, byte for byte", text);
    zeph_string_free(text);

    uint32_t ids[16];
    size_t n = 0;
    expect(zeph_engine_tokenize(e, "The capital of France is", true, true, NULL, 0, &n),
           ZEPH_STATUS_INVALID_ARGUMENT, "tokenize sizes the buffer", "capacity");
    check(n == 5, "tokenize reports the count needed", NULL);
    expect(zeph_engine_tokenize(e, "The capital of France is", true, true, ids, 16, &n), ZEPH_STATUS_OK,
           "tokenize", NULL);
    uint32_t want[] = {504, 3575, 282, 4649, 314};
    check(n == 5 && memcmp(ids, want, sizeof want) == 0, "token ids equal llama.cpp's", NULL);
    expect(zeph_engine_tokenize(e, "<|im_start|>", false, true, ids, 16, &n), ZEPH_STATUS_OK, "tokenize special", NULL);
    check(n == 1 && ids[0] == 1, "a special token is parsed when asked", NULL);
    expect(zeph_engine_tokenize(e, "<|im_start|>", false, false, ids, 16, &n), ZEPH_STATUS_OK, "tokenize plain", NULL);
    check(n > 1, "and stays text when not", NULL);
    text = NULL;
    expect(zeph_engine_detokenize(e, want, 5, false, &text), ZEPH_STATUS_OK, "detokenize", NULL);
    check(text && strcmp(text, "The capital of France is") == 0, "detokenize round trip", text);
    zeph_string_free(text);
    uint32_t special[] = {1, 504, 2};
    text = NULL;
    zeph_engine_detokenize(e, special, 3, true, &text);
    check(text && strcmp(text, "The") == 0, "detokenize drops control tokens on request", text);
    zeph_string_free(text);

    zeph_model_info info = {.struct_size = sizeof info};
    expect(zeph_engine_model_info(e, &info), ZEPH_STATUS_OK, "model_info", NULL);
    check(strcmp(info.architecture, "llama") == 0 && info.vocab_size == 49152 && info.bos_id == 1 &&
              info.eos_id == 2 && strcmp(info.chat_template, "gguf") == 0 &&
              info.context_length == zeph_engine_context_length(e) && info.context_length == 8192 &&
              strcmp(info.quantization, "Q4_1") == 0 && info.parameter_count > 100000000,
          "model_info fields", info.architecture);
    zeph_model_info small_info = {.struct_size = 4};
    expect(zeph_engine_model_info(e, &small_info), ZEPH_STATUS_INVALID_ARGUMENT, "model_info struct_size too small",
           "struct_size");
    zeph_engine_free(e);
}

static void test_requests(void) {
    zeph_engine *e = open_engine(tiny_path, 1, 4);
    char *sentinel = (char *)&failed, *text = sentinel;
    zeph_generate_options o = greedy(4);
    zeph_usage u = {.struct_size = sizeof u};

    expect(zeph_engine_complete(NULL, "x", &o, &text, NULL), ZEPH_STATUS_NULL_ARGUMENT, "NULL engine", "engine");
    expect(zeph_engine_complete(e, NULL, &o, &text, NULL), ZEPH_STATUS_NULL_ARGUMENT, "NULL prompt", "prompt");
    expect(zeph_engine_complete(e, "x", &o, NULL, NULL), ZEPH_STATUS_NULL_ARGUMENT, "NULL text_out", "text_out");
    expect(zeph_engine_chat(e, NULL, 2, &o, &text, NULL), ZEPH_STATUS_NULL_ARGUMENT, "NULL messages", "messages");
    expect(zeph_cancel_token_new(NULL), ZEPH_STATUS_NULL_ARGUMENT, "NULL token_out", "token_out");
    o.n_stop = 1;
    expect(zeph_engine_complete(e, "x", &o, &text, NULL), ZEPH_STATUS_NULL_ARGUMENT, "NULL stop with n_stop", "stop");

    zeph_message hi[] = {{"system", "Be brief."}, {"user", "Hi"}};
    o = greedy(3);
    text = NULL;
    expect(zeph_engine_chat(e, hi, 2, &o, &text, NULL), ZEPH_STATUS_OK, "chat with usage NULL", NULL);
    check(text && valid_utf8(text), "a chat answer is UTF-8 (invalid bytes become U+FFFD)", NULL);
    zeph_string_free(text);
    text = sentinel;

    expect(zeph_engine_complete(e, "\xff\xfe", NULL, &text, NULL), ZEPH_STATUS_INVALID_UTF8, "prompt not UTF-8",
           "prompt");
    zeph_message bad_msg[] = {{"user", "ok"}, {"user", "caf\xe9"}};
    expect(zeph_engine_chat(e, bad_msg, 2, NULL, &text, NULL), ZEPH_STATUS_INVALID_UTF8, "message not UTF-8",
           "messages[1].content");

    zeph_generate_options bad;
    bad = greedy(4); bad.temperature = NAN;
    expect(zeph_engine_complete(e, "x", &bad, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "NaN temperature", "temperature");
    bad = greedy(4); bad.temperature = -1.0f;
    expect(zeph_engine_complete(e, "x", &bad, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "negative temperature", "temperature");
    bad = greedy(4); bad.top_p = 0.0f;
    expect(zeph_engine_complete(e, "x", &bad, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "top_p 0", "top_p");
    bad = greedy(4); bad.top_p = 1.5f;
    expect(zeph_engine_complete(e, "x", &bad, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "top_p 1.5", "top_p");
    bad = greedy(4); bad.min_p = -1.0f;
    expect(zeph_engine_complete(e, "x", &bad, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "min_p -1", "min_p");
    bad = greedy(4); bad.repeat_penalty = 0.0f;
    expect(zeph_engine_complete(e, "x", &bad, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "repeat_penalty 0", "repeat_penalty");
    bad = greedy(0);
    expect(zeph_engine_complete(e, "x", &bad, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "max_tokens 0", "max_tokens");
    bad = greedy(4); bad.struct_size = 4;
    expect(zeph_engine_complete(e, "x", &bad, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "generate options struct_size too small", "struct_size");
    const char *empty_stop[] = {""};
    bad = greedy(4); bad.stop = empty_stop; bad.n_stop = 1;
    expect(zeph_engine_complete(e, "x", &bad, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "an empty stop string", "stop[0]");
    zeph_usage small_usage = {.struct_size = 4};
    o = greedy(4);
    expect(zeph_engine_complete(e, "x", &o, &text, &small_usage), ZEPH_STATUS_INVALID_ARGUMENT, "usage struct_size too small", "struct_size");
    o = greedy(zeph_engine_context_length(e) + 1);
    expect(zeph_engine_complete(e, "x", &o, &text, NULL), ZEPH_STATUS_CONTEXT_OVERFLOW, "prompt plus max_tokens beyond the context", "4096");
    check(text == sentinel, "text_out untouched on failure", NULL);

    /* Greedy is deterministic; a seed makes sampling so. */
    char *a = NULL, *b = NULL;
    o = greedy(12);
    zeph_engine_complete(e, "hello", &o, &a, NULL);
    zeph_engine_complete(e, "hello", &o, &b, NULL);
    check(a && b && strcmp(a, b) == 0, "greedy twice, same text", NULL);
    zeph_string_free(b);
    o = zeph_generate_options_default();
    o.max_tokens = 12; o.temperature = 1.0f; o.seed = 1234;
    char *s1 = NULL, *s2 = NULL;
    zeph_engine_complete(e, "hello", &o, &s1, NULL);
    zeph_engine_complete(e, "hello", &o, &s2, NULL);
    check(s1 && s2 && strcmp(s1, s2) == 0, "same seed, same text", NULL);
    zeph_string_free(s1);
    zeph_string_free(s2);

    zeph_string_free(a);

    /* TIMEOUT: a 1 ms deadline on a long request (4000 tokens cannot be
     * done in 1 ms); the next one still runs. */
    o = greedy(4000); o.timeout_ms = 1;
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_TIMEOUT, "1 ms deadline", "timeout");
    o = greedy(2);
    text = NULL;
    expect(zeph_engine_complete(e, "b", &o, &text, NULL), ZEPH_STATUS_OK, "the next request runs", NULL);
    zeph_string_free(text);

    /* TEMPLATE at render time. */
    zeph_engine_options eo = zeph_engine_options_default();
    eo.chat_template = "{{ raise_exception('custom failure') }}";
    zeph_engine *te = NULL;
    expect(zeph_engine_new(tiny_path, &eo, &te), ZEPH_STATUS_OK, "engine with a raising template", NULL);
    zeph_message m[] = {{"user", "hi"}};
    expect(zeph_engine_chat(te, m, 1, NULL, &text, NULL), ZEPH_STATUS_TEMPLATE, "raise_exception in chat", "custom failure");
    expect(zeph_engine_apply_chat_template(te, m, 1, true, &text), ZEPH_STATUS_TEMPLATE,
           "raise_exception in apply_chat_template", "custom failure");
    zeph_engine_free(te);
    zeph_engine_free(e);

    /* INFERENCE: a model whose embeddings end before its vocabulary does. */
    zeph_engine *be = open_engine(bad_shape_path, 1, 4);
    o = greedy(4);
    expect(zeph_engine_complete(be, "hello", &o, &text, NULL), ZEPH_STATUS_INFERENCE, "inference failure", "token id");
    zeph_engine_free(be);
}

static void test_cancellation(void) {
    /* One slot, held: the call waits in the queue and cannot end by itself
     * before its token is cancelled. */
    zeph_engine *e = open_engine_parallel(tiny_path, 1, 4, 1);
    zeph_stream *holder = occupy_a_slot(e);
    zeph_cancel_token *token = NULL;
    expect(zeph_cancel_token_new(&token), ZEPH_STATUS_OK, "cancel token", NULL);
    check(!zeph_cancel_token_is_cancelled(token), "a new token is not cancelled", NULL);
    call_t c = {.engine = e, .prompt = "a", .options = greedy(4000)};
    c.options.cancel = token;
    pthread_t t;
    pthread_create(&t, NULL, run_call, &c);
    zeph_cancel_token_cancel(token);
    pthread_join(t, NULL);
    expect_status(c.status, ZEPH_STATUS_CANCELLED, "cancelled from another thread");
    zeph_stream_free(holder);
    check(zeph_cancel_token_is_cancelled(token), "the token stays cancelled", NULL);
    char *text = NULL;
    zeph_generate_options o = greedy(2);
    o.cancel = token;
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_CANCELLED, "a cancelled token fails at once", NULL);
    zeph_cancel_token_free(token);
    zeph_engine_free(e);
}

static void test_queue_full(void) {
    /* One sequence at a time, so that a second request waits in the queue.
     * The slot is held by a stream nobody reads: it fills its buffer and
     * pauses, whatever the speed of the machine. */
    zeph_engine *e = open_engine_parallel(tiny_path, 1, 1, 1);
    zeph_cancel_token *token = NULL;
    zeph_cancel_token_new(&token);
    zeph_stream *holder = occupy_a_slot(e);
    /* The one place in the queue: a stream call returns once it is queued. */
    zeph_generate_options qo = greedy(4000);
    qo.cancel = token;
    zeph_stream *queued = NULL;
    expect(zeph_engine_stream_complete(e, "a", &qo, &queued), ZEPH_STATUS_OK, "a request waits in the queue", NULL);
    zeph_generate_options o = greedy(2);
    o.timeout_ms = 300;
    char *text = NULL;
    expect(zeph_engine_complete(e, "b", &o, &text, NULL), ZEPH_STATUS_QUEUE_FULL, "a full queue", "capacity 1");
    zeph_string_free(text);
    zeph_cancel_token_cancel(token);
    char *piece = NULL;
    check(zeph_stream_next(queued, HANG_GUARD_MS, &piece) == ZEPH_STATUS_CANCELLED,
          "the queued request was cancelled, not dropped", NULL);
    zeph_string_free(piece);
    zeph_stream_free(queued);
    zeph_stream_free(holder);
    zeph_cancel_token_free(token);
    zeph_engine_free(e);
}

static void test_shutdown(void) {
    /* One slot, held by a running stream; three callers waiting behind it
     * (or about to call): shutdown answers them all, wherever they are. */
    zeph_engine *e = open_engine_parallel(tiny_path, 1, 4, 1);
    zeph_stream *holder = occupy_a_slot(e);
    call_t calls[3];
    pthread_t threads[3];
    for (int i = 0; i < 3; i++) {
        calls[i] = (call_t){.engine = e, .prompt = "a", .options = greedy(4000)};
        pthread_create(&threads[i], NULL, run_call, &calls[i]);
    }
    zeph_engine_shutdown(e);
    bool all = true;
    for (int i = 0; i < 3; i++) {
        pthread_join(threads[i], NULL);
        all = all && calls[i].status == ZEPH_STATUS_SHUTDOWN;
    }
    zeph_status hs;
    char *hp = NULL;
    while ((hs = zeph_stream_next(holder, HANG_GUARD_MS, &hp)) == ZEPH_STATUS_OK && hp) zeph_string_free(hp);
    all = all && hs == ZEPH_STATUS_SHUTDOWN;
    zeph_stream_free(holder);
    check(all, "shutdown wakes the running and the queued callers", NULL);
    char *text = NULL;
    zeph_generate_options o = greedy(2);
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_SHUTDOWN, "calls after shutdown", NULL);
    zeph_engine_shutdown(e);
    zeph_engine_free(e);
    check(true, "shutdown twice, then free", NULL);
}

static void test_concurrency(void) {
    zeph_engine *e = open_engine(tiny_path, 2, 16);
    call_t calls[8];
    pthread_t threads[8];
    for (int i = 0; i < 8; i++) {
        calls[i] = (call_t){.engine = e, .prompt = "the same prompt", .options = greedy(8)};
        pthread_create(&threads[i], NULL, run_call, &calls[i]);
    }
    bool ok = true;
    for (int i = 0; i < 8; i++) {
        pthread_join(threads[i], NULL);
        ok = ok && calls[i].status == ZEPH_STATUS_OK && calls[i].text &&
             strcmp(calls[i].text, calls[0].text) == 0;
    }
    check(ok, "8 threads at once, all answered alike", NULL);
    for (int i = 0; i < 8; i++) zeph_string_free(calls[i].text);
    zeph_engine_free(e);
}

/* ---- panics ------------------------------------------------------------------ */

/* Panic injection is a test build's feature: only a library built with the
 * cargo feature fault-injection reads ZEPH_FAULT.  The shipped library, which
 * this program runs against without --faults, must ignore it. */
static void test_faults_ignored(void) {
    const char *faults[] = {"caller-panic", "worker-panic"};
    for (int i = 0; i < 2; i++) {
        setenv("ZEPH_FAULT", faults[i], 1);
        zeph_engine *e = open_engine(tiny_path, 1, 4);
        unsetenv("ZEPH_FAULT");
        char *text = NULL;
        zeph_generate_options o = greedy(2);
        char name[80];
        snprintf(name, sizeof name, "ZEPH_FAULT=%s is ignored by the production build", faults[i]);
        expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_OK, name, NULL);
        zeph_string_free(text);
        zeph_engine_free(e);
    }
}

/* What the log callback saw of a worker's panics: how many reports, on
 * which threads.  Locked: several workers may report at once. */
struct panic_reports {
    pthread_mutex_t lock;
    pthread_t caller;
    int errors, naming_fault, on_caller_thread;
};

static void on_panic_report(void *user_data, zeph_log_level level, const char *message) {
    struct panic_reports *r = user_data;
    pthread_mutex_lock(&r->lock);
    if (level == ZEPH_LOG_ERROR) {
        r->errors++;
        if (strstr(message, "ZEPH_FAULT=worker-panic")) r->naming_fault++;
        if (pthread_equal(pthread_self(), r->caller)) r->on_caller_thread++;
    }
    pthread_mutex_unlock(&r->lock);
}

static zeph_engine *open_with_fault(const char *fault, const zeph_engine_options *eo) {
    setenv("ZEPH_FAULT", fault, 1);
    zeph_engine *e = NULL;
    zeph_status s = zeph_engine_new(tiny_path, eo, &e);
    unsetenv("ZEPH_FAULT");
    if (s != ZEPH_STATUS_OK) {
        fprintf(stderr, "cannot open %s: %s: %s\n", tiny_path, zeph_status_name(s), zeph_last_error());
        exit(1);
    }
    return e;
}

/* The engine goes on after its panics: the calls that do not reach the
 * injected fault (tokenizing on the caller's thread, an embedding on the
 * same worker) still work. */
static void check_engine_goes_on(zeph_engine *e, const char *fault) {
    char name[128];
    uint32_t ids[64];
    size_t n = 0;
    snprintf(name, sizeof name, "%s: tokenize still works after the panics", fault);
    expect(zeph_engine_tokenize(e, "hello world", true, true, ids, 64, &n), ZEPH_STATUS_OK, name, NULL);
    size_t dim = 0;
    zeph_engine_embed(e, "hello", ZEPH_POOLING_MEAN, NULL, 0, &dim);
    float *v = calloc(dim ? dim : 1, sizeof *v);
    snprintf(name, sizeof name, "%s: the worker still serves an embedding after the panics", fault);
    expect(zeph_engine_embed(e, "hello", ZEPH_POOLING_MEAN, v, dim, &n), ZEPH_STATUS_OK, name, NULL);
    free(v);
}

/* Run with --faults, against build/fault-injection/libzeph_llm.so (the
 * crate built with the cargo feature fault-injection).  Each injected panic
 * must become ZEPH_STATUS_PANIC with a message, print nothing (`make test-c`
 * fails on "panicked at" in standard error), and leave the engine, its
 * workers and the process working. */
static void test_injected_panics(void) {
    zeph_generate_options o = greedy(4);
    char *text = NULL;
    zeph_message chat[] = {{"user", "hi"}};

    /* caller-panic: every generation call panics on the calling thread. */
    zeph_engine *e = open_with_fault("caller-panic", NULL);
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_PANIC, "caller-panic: complete returns PANIC",
           "panic");
    check(text == NULL, "caller-panic: text_out untouched", NULL);
    expect(zeph_engine_chat(e, chat, 1, &o, &text, NULL), ZEPH_STATUS_PANIC, "caller-panic: chat returns PANIC",
           "panic");
    zeph_stream *s = NULL;
    expect(zeph_engine_stream_complete(e, "a", &o, &s), ZEPH_STATUS_PANIC,
           "caller-panic: a stream is refused with PANIC", "panic");
    check(s == NULL, "caller-panic: stream_out untouched", NULL);
    check_engine_goes_on(e, "caller-panic");
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_PANIC, "caller-panic: and PANIC again", "panic");
    zeph_engine_free(e);

    /* worker-panic, two workers, their reports to a log callback. */
    struct panic_reports r = {.caller = pthread_self()};
    pthread_mutex_init(&r.lock, NULL);
    zeph_engine_options eo = zeph_engine_options_default();
    eo.n_workers = 2;
    eo.queue_capacity = 16;
    eo.log = on_panic_report;
    eo.log_user_data = &r;
    e = open_with_fault("worker-panic", &eo);
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_PANIC, "worker-panic: complete returns PANIC",
           "panic");
    check(text == NULL, "worker-panic: text_out untouched", NULL);
    call_t calls[8];
    pthread_t threads[8];
    for (int i = 0; i < 8; i++) {
        calls[i] = (call_t){.engine = e, .prompt = "the same prompt", .options = greedy(4)};
        pthread_create(&threads[i], NULL, run_call, &calls[i]);
    }
    bool all_panic = true;
    for (int i = 0; i < 8; i++) {
        pthread_join(threads[i], NULL);
        all_panic = all_panic && calls[i].status == ZEPH_STATUS_PANIC && calls[i].text == NULL;
    }
    check(all_panic, "worker-panic: 8 calls at once on two workers all return PANIC", NULL);
    expect(zeph_engine_stream_complete(e, "a", &o, &s), ZEPH_STATUS_OK, "worker-panic: a stream starts", NULL);
    char *piece = NULL;
    expect(zeph_stream_next(s, 3600000, &piece), ZEPH_STATUS_PANIC, "worker-panic: the stream reports PANIC", "panic");
    zeph_usage u = {.struct_size = sizeof u};
    expect(zeph_stream_usage(s, &u), ZEPH_STATUS_OK, "worker-panic: the stream's usage", NULL);
    check(u.finish_reason == ZEPH_FINISH_ERROR && u.status == ZEPH_STATUS_PANIC,
          "worker-panic: the stream ended with ZEPH_FINISH_ERROR and status PANIC", NULL);
    zeph_stream_free(s);
    check_engine_goes_on(e, "worker-panic");
    zeph_engine_free(e);
    pthread_mutex_lock(&r.lock);
    char detail[128];
    snprintf(detail, sizeof detail, "%d error reports, %d naming the fault, %d on the caller's thread", r.errors,
             r.naming_fault, r.on_caller_thread);
    check(r.errors >= 2 && r.naming_fault == r.errors, "worker-panic: each panic is reported to the log callback",
          detail);
    check(r.on_caller_thread == 0, "worker-panic: the log callback ran on the workers, not the calling thread",
          detail);
    pthread_mutex_unlock(&r.lock);
    pthread_mutex_destroy(&r.lock);

    /* worker-panic without a log callback: nothing reaches standard error. */
    e = open_with_fault("worker-panic", NULL);
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_PANIC,
           "worker-panic, no log callback: complete returns PANIC", "panic");
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_PANIC,
           "worker-panic, no log callback: and PANIC again", "panic");
    zeph_engine_free(e);

    /* The fault belongs to the engines made while ZEPH_FAULT was set: one
     * made now answers, in the same process. */
    e = open_engine(tiny_path, 1, 4);
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_OK,
           "after the panics, an engine made without ZEPH_FAULT answers", NULL);
    check(text && valid_utf8(text), "and its text is UTF-8", NULL);
    zeph_string_free(text);
    zeph_engine_free(e);
}

/* ---- streams ------------------------------------------------------------------ */

typedef struct {
    char text[65536];
    int pieces, stop_after;
} collected_t;

static bool collect_piece(void *user_data, const char *piece, size_t len) {
    collected_t *c = user_data;
    if (strlen(piece) != len || !valid_utf8(piece)) return false;
    strncat(c->text, piece, sizeof c->text - strlen(c->text) - 1);
    c->pieces++;
    return c->stop_after == 0 || c->pieces < c->stop_after;
}

static void *cancel_stream(void *arg) {
    zeph_stream_cancel(arg);
    return NULL;
}

static void test_streams(void) {
    zeph_engine *e = open_engine(tiny_path, 1, 4);
    zeph_generate_options o = greedy(40);
    char *whole = NULL;
    zeph_engine_complete(e, "stream me", &o, &whole, NULL);

    zeph_stream *s = NULL;
    expect(zeph_engine_stream_complete(e, "stream me", &o, &s), ZEPH_STATUS_OK, "stream_complete", NULL);
    zeph_usage u = {.struct_size = sizeof u};
    collected_t *c = calloc(1, sizeof *c);
    bool utf8 = true;
    for (;;) {
        char *piece = NULL;
        zeph_status st = zeph_stream_next(s, HANG_GUARD_MS, &piece);
        if (st != ZEPH_STATUS_OK || !piece) break;
        utf8 = utf8 && valid_utf8(piece) && piece[0] != '\0';
        strcat(c->text, piece);
        c->pieces++;
        zeph_string_free(piece);
    }
    check(whole && strcmp(c->text, whole) == 0 && c->pieces > 1, "pieces add up to the blocking answer", NULL);
    check(utf8, "every piece is whole UTF-8", NULL);
    expect(zeph_stream_usage(s, &u), ZEPH_STATUS_OK, "stream_usage", NULL);
    check(u.finish_reason == ZEPH_FINISH_LENGTH && u.completion_tokens == 40, "stream usage after the end", NULL);
    char *piece = (char *)&passed;
    expect(zeph_stream_next(s, 0, &piece), ZEPH_STATUS_OK, "next after the end", NULL);
    check(piece == NULL, "gives NULL again", NULL);
    zeph_stream_free(s);

    /* The callback form delivers the same pieces. */
    memset(c, 0, sizeof *c);
    o = greedy(40);
    expect(zeph_engine_stream_complete(e, "stream me", &o, &s), ZEPH_STATUS_OK, "a second stream", NULL);
    expect(zeph_stream_for_each(s, collect_piece, c), ZEPH_STATUS_OK, "stream_for_each", NULL);
    check(strcmp(c->text, whole) == 0, "for_each pieces add up too", NULL);
    zeph_stream_free(s);
    zeph_string_free(whole);

    /* next() with a short timeout: TIMEOUT, the stream goes on.  On an
     * engine of one slot, held, the stream has no piece yet. */
    zeph_engine *one = open_engine_parallel(tiny_path, 1, 4, 1);
    zeph_stream *holder = occupy_a_slot(one);
    o = greedy(3000);
    o.ignore_eog = 1;
    zeph_engine_stream_complete(one, "a", &o, &s);
    piece = NULL;
    bool timed_out = zeph_stream_next(s, 0, &piece) == ZEPH_STATUS_TIMEOUT;
    zeph_stream_free(holder);
    int pieces = 0;
    while (pieces < 20) {
        piece = NULL;
        zeph_status st = zeph_stream_next(s, 0, &piece);
        if (st == ZEPH_STATUS_TIMEOUT) {
            sleep_ms(1); /* polling: no outcome depends on how long */
            continue;
        }
        if (st != ZEPH_STATUS_OK || !piece) break;
        pieces++;
        zeph_string_free(piece);
    }
    zeph_stream_usage(s, &u);
    check(timed_out && pieces == 20 && u.finish_reason == ZEPH_FINISH_NONE,
          "a short next() times out and the stream goes on", NULL);
    /* Cancel from another thread while this one reads.  After some pieces
     * the reader waits for that thread: unread, the stream pauses, so it
     * cannot end before the cancel. */
    pthread_t t;
    pthread_create(&t, NULL, cancel_stream, s);
    bool joined = false;
    zeph_status st;
    int read = 0;
    do {
        if (++read == 50) {
            pthread_join(t, NULL);
            joined = true;
        }
        piece = NULL;
        st = zeph_stream_next(s, HANG_GUARD_MS, &piece);
        zeph_string_free(piece);
    } while (st == ZEPH_STATUS_OK && piece);
    if (!joined) pthread_join(t, NULL);
    expect(st, ZEPH_STATUS_CANCELLED, "stream cancelled from another thread", "cancelled");
    zeph_stream_usage(s, &u);
    check(u.finish_reason == ZEPH_FINISH_CANCELLED, "finish reason cancelled", NULL);
    zeph_stream_free(s);

    /* A callback that says stop cancels the request. */
    memset(c, 0, sizeof *c);
    c->stop_after = 3;
    zeph_engine_stream_complete(e, "a", &o, &s);
    expect(zeph_stream_for_each(s, collect_piece, c), ZEPH_STATUS_CANCELLED, "on_piece returning false", NULL);
    check(c->pieces == 3, "no piece after it", NULL);
    zeph_stream_free(s);

    /* The request's deadline ends the stream with TIMEOUT.  Unread, the
     * stream pauses once its buffer is full: it cannot end before its
     * deadline, which has passed once the sleep returns. */
    o = greedy(4000);
    o.timeout_ms = 200;
    zeph_engine_stream_complete(e, "a", &o, &s);
    sleep_ms(200);
    do {
        piece = NULL;
        st = zeph_stream_next(s, HANG_GUARD_MS, &piece);
        zeph_string_free(piece);
    } while (st == ZEPH_STATUS_OK && piece);
    expect(st, ZEPH_STATUS_TIMEOUT, "the deadline ends a stream", NULL);
    zeph_stream_usage(s, &u);
    check(u.finish_reason == ZEPH_FINISH_TIMEOUT, "finish reason timeout", NULL);
    zeph_stream_free(s);

    /* Freeing a stream mid-way cancels its work: the one slot is free. */
    o = greedy(4000);
    o.ignore_eog = 1;
    zeph_engine_stream_complete(one, "a", &o, &s);
    piece = NULL;
    zeph_stream_next(s, HANG_GUARD_MS, &piece);
    zeph_string_free(piece);
    zeph_stream_free(s);
    o = greedy(2);
    char *text = NULL;
    expect(zeph_engine_complete(one, "b", &o, &text, NULL), ZEPH_STATUS_OK, "a freed stream frees its worker", NULL);
    zeph_string_free(text);
    zeph_engine_free(one);

    /* Chat streams, and their argument checks. */
    zeph_message m[] = {{"user", "hi"}};
    o = greedy(5);
    expect(zeph_engine_stream_chat(e, m, 1, &o, &s), ZEPH_STATUS_OK, "stream_chat", NULL);
    memset(c, 0, sizeof *c);
    zeph_stream_for_each(s, collect_piece, c);
    zeph_stream_free(s);
    check(c->pieces > 0, "stream_chat delivers", NULL);
    expect(zeph_engine_stream_complete(e, "a", &o, NULL), ZEPH_STATUS_NULL_ARGUMENT, "NULL stream_out", "stream_out");
    expect(zeph_stream_next(NULL, 0, &piece), ZEPH_STATUS_NULL_ARGUMENT, "NULL stream", "stream");
    free(c);
    zeph_engine_free(e);
}

/* Several streams of one worker, read in turns, while a blocking request
 * runs beside them: each gets the text it gets alone. */
static void test_concurrent_streams(void) {
    zeph_engine *e = open_engine_parallel(tiny_path, 1, 8, 4);
    const char *prompts[3] = {"first stream", "second stream", "third"};
    char *alone[3] = {NULL, NULL, NULL};
    zeph_generate_options o = greedy(30);
    o.cache_prompt = 0;
    for (int i = 0; i < 3; i++) zeph_engine_complete(e, prompts[i], &o, &alone[i], NULL);
    zeph_stream *s[3] = {NULL, NULL, NULL};
    collected_t *c = calloc(3, sizeof *c);
    bool opened = true;
    for (int i = 0; i < 3; i++)
        opened = opened && zeph_engine_stream_complete(e, prompts[i], &o, &s[i]) == ZEPH_STATUS_OK;
    check(opened, "three streams open at once", NULL);
    /* Nobody reads them for a while: a blocking request still runs. */
    char *text = NULL;
    zeph_generate_options b = greedy(8);
    expect(zeph_engine_complete(e, "blocking", &b, &text, NULL), ZEPH_STATUS_OK,
           "a blocking request beside unread streams", NULL);
    zeph_string_free(text);
    bool open[3] = {true, true, true};
    for (int left = 3; left > 0;) {
        for (int i = 0; i < 3; i++) {
            if (!open[i]) continue;
            char *piece = NULL;
            zeph_status st = zeph_stream_next(s[i], HANG_GUARD_MS, &piece);
            if (st != ZEPH_STATUS_OK || !piece) {
                open[i] = false;
                left--;
                continue;
            }
            strcat(c[i].text, piece);
            zeph_string_free(piece);
        }
    }
    bool same = true;
    for (int i = 0; i < 3; i++) {
        same = same && alone[i] && strcmp(c[i].text, alone[i]) == 0;
        zeph_stream_free(s[i]);
        zeph_string_free(alone[i]);
    }
    check(same, "each stream's text is its text alone", NULL);
    free(c);
    zeph_engine_free(e);
}

/* Callbacks that break the rules zeph_stream_for_each's documentation
 * sets: freeing the stream, or pulling from it, from inside. */
typedef struct {
    zeph_stream *stream;
    int calls;
    zeph_status inner;
} misuse_t;

static bool free_inside(void *user_data, const char *piece, size_t len) {
    (void)piece;
    (void)len;
    misuse_t *m = user_data;
    m->calls++;
    zeph_stream_free(m->stream);
    return true;
}

static bool pull_inside(void *user_data, const char *piece, size_t len) {
    (void)piece;
    (void)len;
    misuse_t *m = user_data;
    char *p = NULL;
    m->calls++;
    m->inner = zeph_stream_next(m->stream, 0, &p);
    zeph_string_free(p);
    if (m->inner == ZEPH_STATUS_INVALID_ARGUMENT)
        m->inner = zeph_stream_for_each(m->stream, pull_inside, m) == ZEPH_STATUS_INVALID_ARGUMENT
                       ? ZEPH_STATUS_INVALID_ARGUMENT
                       : ZEPH_STATUS_OK;
    return false;
}

/* A stream that ends in failure says how, with its prompt's count. */
static void test_stream_endings(void) {
    zeph_engine *e = open_engine(tiny_path, 1, 4);
    zeph_generate_options o = greedy(4000);
    zeph_usage u = {.struct_size = sizeof u};
    zeph_stream *s = NULL;
    char *piece = NULL;
    zeph_status st;
    size_t n_prompt = 0;
    zeph_engine_tokenize(e, "a", true, true, NULL, 0, &n_prompt);

    /* Shutdown mid-stream: SHUTDOWN, not CANCELLED with zero counts. */
    expect(zeph_engine_stream_complete(e, "a", &o, &s), ZEPH_STATUS_OK, "a stream to shut down", NULL);
    int pieces = 0;
    while ((st = zeph_stream_next(s, HANG_GUARD_MS, &piece)) == ZEPH_STATUS_OK && piece) {
        zeph_string_free(piece);
        if (++pieces == 3) zeph_engine_shutdown(e);
    }
    expect(st, ZEPH_STATUS_SHUTDOWN, "shutdown ends a stream with SHUTDOWN", NULL);
    expect(zeph_stream_usage(s, &u), ZEPH_STATUS_OK, "usage of a stream ended by shutdown", NULL);
    char detail[160];
    snprintf(detail, sizeof detail, "finish %d status %s prompt %u completion %u (pieces %d)", (int)u.finish_reason,
             zeph_status_name(u.status), u.prompt_tokens, u.completion_tokens, pieces);
    check(u.finish_reason == ZEPH_FINISH_ERROR && u.status == ZEPH_STATUS_SHUTDOWN &&
              u.prompt_tokens == n_prompt && u.completion_tokens >= 3,
          "its usage says shutdown, with the prompt's count and the pieces", detail);
    zeph_stream_free(s);
    zeph_engine_free(e);

    /* Its deadline: TIMEOUT in both fields, the counts too.  Unread until
     * its deadline has passed, the stream cannot end first. */
    e = open_engine(tiny_path, 1, 4);
    o = greedy(4000);
    o.timeout_ms = 200;
    zeph_engine_stream_complete(e, "a", &o, &s);
    sleep_ms(200);
    pieces = 0;
    while ((st = zeph_stream_next(s, HANG_GUARD_MS, &piece)) == ZEPH_STATUS_OK && piece) {
        zeph_string_free(piece);
        pieces++;
    }
    zeph_stream_usage(s, &u);
    check(st == ZEPH_STATUS_TIMEOUT && u.finish_reason == ZEPH_FINISH_TIMEOUT && u.status == ZEPH_STATUS_TIMEOUT &&
              u.prompt_tokens == n_prompt && (int)u.completion_tokens == pieces,
          "a stream past its deadline reports TIMEOUT with its counts", NULL);
    zeph_stream_free(s);

    /* A normal end reports OK. */
    o = greedy(4);
    zeph_engine_stream_complete(e, "a", &o, &s);
    while (zeph_stream_next(s, HANG_GUARD_MS, &piece) == ZEPH_STATUS_OK && piece) zeph_string_free(piece);
    zeph_stream_usage(s, &u);
    check(u.finish_reason == ZEPH_FINISH_LENGTH && u.status == ZEPH_STATUS_OK, "a normal end reports OK", NULL);
    zeph_stream_free(s);

    /* Freeing the stream inside for_each's callback is deferred, not a use
     * after free (valgrind checks). */
    o = greedy(4000);
    misuse_t m = {0};
    zeph_engine_stream_complete(e, "a", &o, &m.stream);
    expect(zeph_stream_for_each(m.stream, free_inside, &m), ZEPH_STATUS_CANCELLED,
           "a callback that frees the stream", "freed the stream");
    check(m.calls == 1, "no callback after it", NULL);
    /* Pulling from inside the callback is refused. */
    memset(&m, 0, sizeof m);
    zeph_engine_stream_complete(e, "a", &o, &m.stream);
    expect(zeph_stream_for_each(m.stream, pull_inside, &m), ZEPH_STATUS_CANCELLED, "a callback that pulls", NULL);
    check(m.calls == 1 && m.inner == ZEPH_STATUS_INVALID_ARGUMENT, "next and for_each inside it are refused", NULL);
    zeph_stream_free(m.stream);
    /* The engine goes on. */
    char *text = NULL;
    o = greedy(2);
    expect(zeph_engine_complete(e, "b", &o, &text, NULL), ZEPH_STATUS_OK, "the engine serves after misuse", NULL);
    zeph_string_free(text);
    zeph_engine_free(e);
}

static void test_conversation(void) {
    zeph_engine *e = open_engine(tiny_path, 1, 4);
    zeph_generate_options o = greedy(6);
    zeph_usage first = {.struct_size = sizeof first}, second = first, fresh = first;
    char *a = NULL, *b = NULL, *f = NULL;
    zeph_message turn1[] = {{"user", "a long first message, long enough to matter"}};
    zeph_engine_chat(e, turn1, 1, &o, &a, &first);
    zeph_message turn2[] = {{"user", "a long first message, long enough to matter"}, {"assistant", a},
                            {"user", "and a second one"}};
    zeph_engine_chat(e, turn2, 3, &o, &b, &second);
    o.cache_prompt = 0;
    zeph_engine_chat(e, turn2, 3, &o, &f, &fresh);
    check(second.cached_tokens >= first.prompt_tokens && fresh.cached_tokens == 0,
          "a second turn reuses the first turn's cache", NULL);
    check(b && f && strcmp(b, f) == 0, "and answers as without reuse", NULL);
    zeph_string_free(a);
    zeph_string_free(b);
    zeph_string_free(f);
    zeph_engine_free(e);
}

/* Every size an input sets is bounded, checked before anything is copied,
 * and the message names the limit. */
static void test_limits(void) {
    zeph_engine *e = open_engine(tiny_path, 1, 4), *e2 = NULL;
    char *text = NULL;
    char limit[32];

    /* The check comes before the ids are read: a count past the limit with
     * a 1-element array is refused without touching the rest. */
    uint32_t one = 1;
    snprintf(limit, sizeof limit, "%zu", (size_t)ZEPH_MAX_DETOKENIZE_IDS);
    expect(zeph_engine_detokenize(e, &one, (size_t)ZEPH_MAX_DETOKENIZE_IDS + 1, false, &text),
           ZEPH_STATUS_INVALID_ARGUMENT, "detokenize: too many ids", limit);
    zeph_message m = {"user", "hi"};
    snprintf(limit, sizeof limit, "%zu", (size_t)ZEPH_MAX_MESSAGES);
    expect(zeph_engine_apply_chat_template(e, &m, (size_t)ZEPH_MAX_MESSAGES + 1, true, &text),
           ZEPH_STATUS_INVALID_ARGUMENT, "chat: too many messages", limit);

    size_t big = (size_t)ZEPH_MAX_TEXT_BYTES + 1;
    char *huge = malloc(big + 1);
    memset(huge, 'a', big);
    huge[big] = '\0';
    snprintf(limit, sizeof limit, "%zu", (size_t)ZEPH_MAX_TEXT_BYTES);
    zeph_generate_options o = greedy(2);
    expect(zeph_engine_complete(e, huge, &o, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "complete: prompt too long",
           limit);
    size_t n = 0;
    expect(zeph_engine_tokenize(e, huge, false, false, NULL, 0, &n), ZEPH_STATUS_INVALID_ARGUMENT,
           "tokenize: text too long", limit);
    zeph_message long_message = {"user", huge};
    expect(zeph_engine_chat(e, &long_message, 1, &o, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT,
           "chat: conversation too long", limit);
    huge[ZEPH_MAX_ROLE_BYTES + 1] = '\0';
    zeph_message long_role = {huge, "hi"};
    expect(zeph_engine_apply_chat_template(e, &long_role, 1, true, &text), ZEPH_STATUS_INVALID_ARGUMENT,
           "chat: role too long", "messages[0].role");
    huge[ZEPH_MAX_ROLE_BYTES + 1] = 'a';

    huge[ZEPH_MAX_STOP_BYTES + 1] = '\0';
    const char *stops[] = {huge};
    o.stop = stops;
    o.n_stop = 1;
    snprintf(limit, sizeof limit, "%zu", (size_t)ZEPH_MAX_STOP_BYTES);
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "stop string too long", limit);
    huge[ZEPH_MAX_STOP_BYTES + 1] = 'a';
    o = greedy(2);
    o.n_stop = (size_t)ZEPH_MAX_STOP_STRINGS + 1;
    o.stop = stops;
    expect(zeph_engine_complete(e, "a", &o, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT, "too many stop strings",
           "64");

    zeph_engine_options eo = zeph_engine_options_default();
    eo.context_length = ZEPH_MAX_CONTEXT_LENGTH + 1;
    snprintf(limit, sizeof limit, "%u", (unsigned)ZEPH_MAX_CONTEXT_LENGTH);
    expect(zeph_engine_new(tiny_path, &eo, &e2), ZEPH_STATUS_INVALID_ARGUMENT, "context_length too large", limit);
    eo = zeph_engine_options_default();
    huge[ZEPH_MAX_TEMPLATE_BYTES + 1] = '\0';
    eo.chat_template = huge;
    snprintf(limit, sizeof limit, "%zu", (size_t)ZEPH_MAX_TEMPLATE_BYTES);
    expect(zeph_engine_new(tiny_path, &eo, &e2), ZEPH_STATUS_INVALID_ARGUMENT, "chat_template too long", limit);
    eo = zeph_engine_options_default();
    huge[ZEPH_MAX_PATH_BYTES + 1] = '\0';
    eo.tokenizer_path = huge;
    expect(zeph_engine_new(tiny_path, &eo, &e2), ZEPH_STATUS_INVALID_ARGUMENT, "tokenizer_path too long", "4096");
    check(e2 == NULL, "no engine made past a limit", NULL);
    free(huge);
    zeph_engine_free(e);
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static void test_logprobs(void) {
    /* The real model: the tiny fixture's tokens are not whole characters. */
    zeph_engine *e = open_engine(model_path, 1, 4);
    zeph_generate_options o = greedy(6);
    o.n_logprobs = 3;
    zeph_usage u = {.struct_size = sizeof u};
    char *text = NULL;
    expect(zeph_engine_complete(e, "hello", &o, &text, NULL), ZEPH_STATUS_INVALID_ARGUMENT,
           "n_logprobs without usage_out", "usage_out");
    zeph_usage old = {.struct_size = (uint32_t)offsetof(zeph_usage, logprobs)};
    expect(zeph_engine_complete(e, "hello", &o, &text, &old), ZEPH_STATUS_INVALID_ARGUMENT,
           "n_logprobs with a first-version usage", "logprobs");
    o.n_logprobs = 21;
    expect(zeph_engine_complete(e, "hello", &o, &text, &u), ZEPH_STATUS_INVALID_ARGUMENT, "n_logprobs 21",
           "n_logprobs");
    o.n_logprobs = 3;
    expect(zeph_engine_complete(e, "hello", &o, &text, &u), ZEPH_STATUS_OK, "complete with logprobs", NULL);
    zeph_logprobs *lp = u.logprobs;
    check(lp != NULL && zeph_logprobs_count(lp) == u.completion_tokens && u.completion_tokens == 6,
          "one logprob entry per generated token", NULL);
    bool ok = true;
    size_t text_len = 0;
    for (size_t i = 0; i < zeph_logprobs_count(lp); i++) {
        uint32_t id = 0, top_id = 0;
        float l = 1.0f, top_l = 1.0f, prev = 0.0f;
        const char *bytes = NULL;
        size_t n_bytes = 0;
        ok = ok && zeph_logprobs_get(lp, i, 0, &id, &l, &bytes, &n_bytes) == ZEPH_STATUS_OK;
        ok = ok && l <= 0.0f && bytes != NULL && memcmp(text + text_len, bytes, n_bytes) == 0;
        text_len += n_bytes;
        ok = ok && zeph_logprobs_n_top(lp, i) == 3;
        for (size_t r = 1; r <= zeph_logprobs_n_top(lp, i); r++) {
            ok = ok && zeph_logprobs_get(lp, i, r, &top_id, &top_l, NULL, NULL) == ZEPH_STATUS_OK;
            ok = ok && (r == 1 || top_l <= prev);
            /* Greedy: the best alternative is the generated token. */
            ok = ok && (r != 1 || (top_id == id && top_l == l));
            prev = top_l;
        }
    }
    check(ok, "logprobs: ids, bytes adding up to the text, alternatives best first", NULL);
    check(text_len == strlen(text), "the tokens' bytes are the whole text", NULL);
    expect(zeph_logprobs_get(lp, 6, 0, NULL, NULL, NULL, NULL), ZEPH_STATUS_INVALID_ARGUMENT,
           "logprobs index out of range", "index");
    expect(zeph_logprobs_get(lp, 0, 4, NULL, NULL, NULL, NULL), ZEPH_STATUS_INVALID_ARGUMENT,
           "logprobs rank out of range", "rank");
    expect(zeph_logprobs_get(NULL, 0, 0, NULL, NULL, NULL, NULL), ZEPH_STATUS_NULL_ARGUMENT, "logprobs NULL",
           "logprobs");
    check(zeph_logprobs_count(NULL) == 0 && zeph_logprobs_n_top(lp, 99) == 0, "logprobs counts of nothing", NULL);
    zeph_logprobs_free(lp);
    zeph_logprobs_free(NULL);
    zeph_string_free(text);

    /* Without n_logprobs the field is NULL. */
    o.n_logprobs = 0;
    u.logprobs = (zeph_logprobs *)&passed;
    expect(zeph_engine_complete(e, "hello", &o, &text, &u), ZEPH_STATUS_OK, "complete without logprobs", NULL);
    check(u.logprobs == NULL, "no logprobs asked, none given", NULL);
    zeph_string_free(text);

    /* A stream: NULL while it runs, then the same as the blocking call. */
    o.n_logprobs = 2;
    zeph_stream *s = NULL;
    expect(zeph_engine_stream_complete(e, "hello", &o, &s), ZEPH_STATUS_OK, "stream with logprobs", NULL);
    char *piece = NULL;
    for (;;) {
        if (zeph_stream_next(s, 60000, &piece) != ZEPH_STATUS_OK || !piece) break;
        zeph_string_free(piece);
    }
    zeph_usage su = {.struct_size = sizeof su};
    expect(zeph_stream_usage(s, &su), ZEPH_STATUS_OK, "stream usage with logprobs", NULL);
    check(su.logprobs != NULL && zeph_logprobs_count(su.logprobs) == 6, "a stream's logprobs after its end", NULL);
    zeph_logprobs_free(su.logprobs);
    zeph_stream_free(s);
    zeph_engine_free(e);
}

static void test_structured_output(void) {
    zeph_engine *e = open_engine(model_path, 1, 4);
    zeph_message m[] = {{"user", "Describe a person as JSON."}};
    zeph_generate_options o = greedy(96);
    zeph_usage u = {.struct_size = sizeof u};
    char *text = NULL;
    o.json_schema = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":20},"
                    "\"age\":{\"type\":\"integer\"}},\"required\":[\"name\",\"age\"],\"additionalProperties\":false}";
    expect(zeph_engine_chat(e, m, 1, &o, &text, &u), ZEPH_STATUS_OK, "chat with a JSON schema", NULL);
    size_t n = text ? strlen(text) : 0;
    check(n > 2 && text[0] == '{' && text[n - 1] == '}' && strstr(text, "\"name\": \"") && strstr(text, "\"age\": "),
          "the answer is a JSON object with the schema's keys", text);
    check(u.finish_reason == ZEPH_FINISH_STOP_TOKEN, "a constrained answer ends by itself", NULL);
    zeph_string_free(text);

    o = greedy(32);
    o.regex = "[0-9]{4}-[0-9]{2}-[0-9]{2}";
    zeph_message q[] = {{"user", "When did the first person walk on the moon?"}};
    expect(zeph_engine_chat(e, q, 1, &o, &text, &u), ZEPH_STATUS_OK, "chat with a regex", NULL);
    bool date = text && strlen(text) == 10;
    for (int i = 0; date && i < 10; i++) date = (i == 4 || i == 7) ? text[i] == '-' : (text[i] >= '0' && text[i] <= '9');
    check(date, "the answer matches the regex", text);
    zeph_string_free(text);

    o = greedy(32);
    o.grammar = "start: \"yes\" | \"no\"";
    expect(zeph_engine_chat(e, q, 1, &o, &text, &u), ZEPH_STATUS_OK, "chat with a grammar", NULL);
    check(text && (strcmp(text, "yes") == 0 || strcmp(text, "no") == 0), "the answer matches the grammar", text);
    zeph_string_free(text);

    o = greedy(8);
    o.json_schema = "{ not json";
    text = (char *)&passed;
    expect(zeph_engine_chat(e, q, 1, &o, &text, &u), ZEPH_STATUS_GRAMMAR, "a schema that is not JSON",
           "json_schema");
    o.json_schema = NULL;
    o.regex = "(unclosed";
    expect(zeph_engine_chat(e, q, 1, &o, &text, &u), ZEPH_STATUS_GRAMMAR, "a regex that does not compile", "regex");
    o.regex = NULL;
    o.grammar = "start: missing_rule";
    expect(zeph_engine_chat(e, q, 1, &o, &text, &u), ZEPH_STATUS_GRAMMAR, "a grammar that does not compile",
           "grammar");
    o.regex = "a";
    expect(zeph_engine_chat(e, q, 1, &o, &text, &u), ZEPH_STATUS_INVALID_ARGUMENT, "two constraints at once",
           "more than one");
    check(text == (char *)&passed, "text_out untouched on a grammar error", NULL);
    o.grammar = NULL;
    o.regex = "\xff";
    expect(zeph_engine_chat(e, q, 1, &o, &text, &u), ZEPH_STATUS_INVALID_UTF8, "a regex not UTF-8", "regex");
    zeph_engine_free(e);
}

static void test_embeddings(void) {
    zeph_engine *e = open_engine(model_path, 1, 4);
    size_t n = 0;
    expect(zeph_engine_embed(e, "A cat sat on the mat.", ZEPH_POOLING_MEAN, NULL, 0, &n),
           ZEPH_STATUS_INVALID_ARGUMENT, "embed with capacity 0 sizes the buffer", "576");
    check(n == 576, "embed reports SmolLM2's embedding length", NULL);
    float *mean = calloc(n, sizeof *mean), *last = calloc(n, sizeof *last), *again = calloc(n, sizeof *again);
    size_t got = 0;
    expect(zeph_engine_embed(e, "A cat sat on the mat.", ZEPH_POOLING_MEAN, mean, n - 1, &got),
           ZEPH_STATUS_INVALID_ARGUMENT, "embed with capacity one too small", "capacity");
    check(got == n && mean[0] == 0.0f, "a too-small buffer is left untouched", NULL);
    expect(zeph_engine_embed(e, "A cat sat on the mat.", ZEPH_POOLING_MEAN, mean, n, &got), ZEPH_STATUS_OK,
           "embed, mean pooling", NULL);
    expect(zeph_engine_embed(e, "A cat sat on the mat.", ZEPH_POOLING_LAST, last, n, &got), ZEPH_STATUS_OK,
           "embed, last pooling", NULL);
    expect(zeph_engine_embed(e, "A cat sat on the mat.", ZEPH_POOLING_MEAN, again, n, &got), ZEPH_STATUS_OK,
           "embed again", NULL);
    check(fabs(dot(mean, mean, n) - 1.0) < 1e-4 && fabs(dot(last, last, n) - 1.0) < 1e-4,
          "embeddings are L2-normalized", NULL);
    check(dot(mean, last, n) < 0.999, "mean and last pooling differ", NULL);
    check(memcmp(mean, again, n * sizeof *mean) == 0, "the same text gives the same embedding", NULL);
    expect(zeph_engine_embed(e, "A cat", (zeph_pooling)7, mean, n, &got), ZEPH_STATUS_INVALID_ARGUMENT,
           "embed with an unknown pooling", "pooling");
    expect(zeph_engine_embed(e, "", ZEPH_POOLING_MEAN, mean, n, &got), ZEPH_STATUS_INVALID_ARGUMENT,
           "embed an empty text (no BOS)", "empty");
    expect(zeph_engine_embed(e, NULL, ZEPH_POOLING_MEAN, mean, n, &got), ZEPH_STATUS_NULL_ARGUMENT,
           "embed NULL text", "text");
    expect(zeph_engine_embed(e, "x", ZEPH_POOLING_MEAN, NULL, n, &got), ZEPH_STATUS_NULL_ARGUMENT,
           "embed NULL out", "out");
    expect(zeph_engine_embed(e, "x", ZEPH_POOLING_MEAN, mean, n, NULL), ZEPH_STATUS_NULL_ARGUMENT,
           "embed NULL n_out", "n_out");
    expect(zeph_engine_embed(NULL, "x", ZEPH_POOLING_MEAN, mean, n, &got), ZEPH_STATUS_NULL_ARGUMENT,
           "embed NULL engine", "engine");
    zeph_engine_shutdown(e);
    expect(zeph_engine_embed(e, "x", ZEPH_POOLING_MEAN, mean, n, &got), ZEPH_STATUS_SHUTDOWN,
           "embed after shutdown", "shut down");
    zeph_engine_free(e);
    free(mean);
    free(last);
    free(again);
}

int main(int argc, char **argv) {
    bool faults = argc == 4 && strcmp(argv[3], "--faults") == 0;
    if (argc < 3 || (argc > 3 && !faults)) {
        fprintf(stderr, "usage: %s <smollm2.gguf> <fixtures-dir> [--faults]\n", argv[0]);
        return 2;
    }
    model_path = argv[1];
    fixtures = argv[2];
    snprintf(tiny_path, sizeof tiny_path, "%s/tiny-llama.gguf", fixtures);
    snprintf(bad_shape_path, sizeof bad_shape_path, "%s/bad-shape.gguf", fixtures);
    if (faults) {
        test_injected_panics();
        printf("%d passed, %d failed\n", passed, failed);
        return failed == 0 ? 0 : 1;
    }
    snprintf(tmpdir, sizeof tmpdir, "%s/capi-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }

    test_basics();
    test_loading();
    test_load_into_memory();
    test_loading_from_memory_and_callbacks();
    test_real_model();
    test_requests();
    test_cancellation();
    test_queue_full();
    test_shutdown();
    test_concurrency();
    test_faults_ignored();
    test_streams();
    test_concurrent_streams();
    test_stream_endings();
    test_conversation();
    test_limits();
    test_embeddings();
    test_logprobs();
    test_structured_output();

    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
