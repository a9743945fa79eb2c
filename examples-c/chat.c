/*
 * chat: an interactive terminal chat with a local model through the zeph_llm
 * C API.
 *
 *   chat [-n max_tokens] [-t temperature] [-s system_prompt] <model.gguf>
 *
 * Each line read from stdin is the user's next message.  The answer is
 * printed as it is generated (zeph_engine_stream_chat), and the whole
 * conversation is sent again with every turn: the engine finds the earlier
 * turns in its KV cache and evaluates only the new part (the line after each
 * answer says how many prompt tokens were reused).
 *
 *   /reset   forget the conversation
 *   /quit    leave (so does end of input, Ctrl-D)
 *   Ctrl-C   stop the answer being generated, and stay in the chat
 *
 * Ctrl-C only sets a flag (all a signal handler may safely do); the loop
 * that reads the stream polls it every 100 ms and cancels the stream with
 * zeph_stream_cancel.  A stopped answer stays in the conversation as far as
 * it got.  `make chat` fetches the default model, builds and runs this.
 */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zeph_llm.h"

static volatile sig_atomic_t interrupted = 0;
static volatile sig_atomic_t answering = 0;

static void on_sigint(int sig) {
    (void)sig;
    if (answering) {
        interrupted = 1;
    } else {
        static const char hint[] = "\n(/quit or Ctrl-D leaves)\nyou> ";
        ssize_t n = write(STDOUT_FILENO, hint, sizeof hint - 1);
        (void)n;
    }
}

/* The conversation: messages the program owns (role strings are static). */
typedef struct {
    zeph_message *items;
    size_t len, cap;
} history;

static int history_push(history *h, const char *role, const char *content, size_t len) {
    if (h->len == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 16;
        zeph_message *items = realloc(h->items, cap * sizeof *items);
        if (!items) return -1;
        h->items = items;
        h->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy) return -1;
    memcpy(copy, content, len);
    copy[len] = '\0';
    h->items[h->len].role = role;
    h->items[h->len].content = copy;
    h->len++;
    return 0;
}

static void history_truncate(history *h, size_t len) {
    while (h->len > len) free((char *)h->items[--h->len].content);
}

/* A growable byte buffer for the answer being streamed. */
typedef struct {
    char *data;
    size_t len, cap;
} buffer;

static int buffer_append(buffer *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *data = realloc(b->data, cap);
        if (!data) return -1;
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

/* Streams one answer to stdout and appends it to `answer`.  Returns the
 * stream's final status: OK, CANCELLED (Ctrl-C) or an error. */
static zeph_status stream_answer(zeph_engine *engine, const history *h,
                                 const zeph_generate_options *options, buffer *answer,
                                 zeph_usage *usage) {
    zeph_stream *stream = NULL;
    zeph_status s = zeph_engine_stream_chat(engine, h->items, h->len, options, &stream);
    if (s != ZEPH_STATUS_OK) return s;
    for (;;) {
        if (interrupted) {
            zeph_stream_cancel(stream);
            interrupted = 0;
        }
        char *piece = NULL;
        s = zeph_stream_next(stream, 100, &piece);
        if (s == ZEPH_STATUS_TIMEOUT) continue; /* nothing yet: look at the flag again */
        if (s != ZEPH_STATUS_OK || piece == NULL) break;
        fputs(piece, stdout);
        fflush(stdout);
        int full = buffer_append(answer, piece, strlen(piece));
        zeph_string_free(piece);
        if (full != 0) {
            zeph_stream_cancel(stream);
            s = ZEPH_STATUS_CANCELLED;
            break;
        }
    }
    if (s == ZEPH_STATUS_OK) {
        zeph_status u = zeph_stream_usage(stream, usage);
        if (u != ZEPH_STATUS_OK) s = u;
    }
    zeph_stream_free(stream);
    return s;
}

static void usage_exit(const char *argv0) {
    fprintf(stderr, "usage: %s [-n max_tokens] [-t temperature] [-s system_prompt] <model.gguf>\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv) {
    zeph_generate_options options = zeph_generate_options_default();
    options.max_tokens = 512;
    options.temperature = 0.7f;
    const char *system_prompt = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "n:t:s:")) != -1) {
        char *end = NULL;
        switch (opt) {
        case 'n':
            options.max_tokens = (uint32_t)strtoul(optarg, &end, 10);
            if (*end != '\0' || options.max_tokens == 0) usage_exit(argv[0]);
            break;
        case 't':
            options.temperature = strtof(optarg, &end);
            if (*end != '\0') usage_exit(argv[0]);
            break;
        case 's': system_prompt = optarg; break;
        default: usage_exit(argv[0]);
        }
    }
    if (optind != argc - 1) usage_exit(argv[0]);

    zeph_engine *engine = NULL;
    zeph_status s = zeph_engine_new(argv[optind], NULL, &engine);
    if (s != ZEPH_STATUS_OK) {
        fprintf(stderr, "zeph_engine_new: %s: %s\n", zeph_status_name(s), zeph_last_error());
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART; /* reading stdin goes on after a Ctrl-C */
    sigaction(SIGINT, &sa, NULL);

    printf("zeph_llm %s chat. /reset forgets the conversation, Ctrl-C stops an answer, "
           "/quit or Ctrl-D leaves.\n",
           zeph_version());

    history h = {0};
    int status = 0;
    if (system_prompt && history_push(&h, "system", system_prompt, strlen(system_prompt)) != 0) {
        status = 1;
        goto done;
    }
    size_t base = h.len; /* what /reset keeps */

    char *line = NULL;
    size_t line_cap = 0;
    for (;;) {
        printf("you> ");
        fflush(stdout);
        ssize_t n = getline(&line, &line_cap, stdin);
        if (n < 0) {
            printf("\n");
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        if (strcmp(line, "/quit") == 0) break;
        if (strcmp(line, "/reset") == 0) {
            history_truncate(&h, base);
            printf("[conversation forgotten]\n");
            continue;
        }
        if (history_push(&h, "user", line, (size_t)n) != 0) {
            status = 1;
            break;
        }

        buffer answer = {0};
        zeph_usage usage = {.struct_size = sizeof usage};
        interrupted = 0;
        answering = 1;
        s = stream_answer(engine, &h, &options, &answer, &usage);
        answering = 0;
        interrupted = 0;
        if (s == ZEPH_STATUS_OK || s == ZEPH_STATUS_CANCELLED) {
            /* What was shown stays in the conversation, a stopped answer too. */
            if (history_push(&h, "assistant", answer.data ? answer.data : "", answer.len) != 0) {
                free(answer.data);
                status = 1;
                break;
            }
            if (s == ZEPH_STATUS_CANCELLED) {
                printf("\n[stopped]\n");
            } else {
                double secs = usage.generation_ms / 1000.0;
                printf("\n[%u tokens, %.1f tokens/s; prompt %u tokens, %u of them reused from the "
                       "cache]\n",
                       usage.completion_tokens, secs > 0 ? usage.completion_tokens / secs : 0.0,
                       usage.prompt_tokens, usage.cached_tokens);
            }
        } else {
            /* The question got no answer: take it back, the chat goes on. */
            history_truncate(&h, h.len - 1);
            printf("\n[%s: %s]\n", zeph_status_name(s), zeph_last_error());
            if (s == ZEPH_STATUS_CONTEXT_OVERFLOW) printf("[/reset starts a new conversation]\n");
        }
        free(answer.data);
    }
    free(line);

done:
    history_truncate(&h, 0);
    free(h.items);
    zeph_engine_free(engine);
    return status;
}
