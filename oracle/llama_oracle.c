/*
 * llama-oracle: llama.cpp's logits for given token ids, teacher-forced, as
 * the independent check of zeph_llm's decoder (tests/oracle.rs reads what it
 * writes; the tests themselves never run llama.cpp).
 *
 *   llama-oracle MODEL OUT [options] SEQ [SEQ ...]
 *
 * Each SEQ is a comma-separated list of token ids, evaluated from position 0
 * on an empty cache in one llama_decode call (as llama.cpp processes a
 * prompt), with logits requested at every position.  Options:
 *   -t N       threads (default 2)
 *   -r 0|1     let llama.cpp repack weights for its CPU kernels (default 1,
 *              as llama.cpp runs by default)
 *   -k N       top-k kept at every position (default 16)
 *   -f LIST    positions (global index over all sequences, comma-separated)
 *              whose whole vocabulary is written, or "all" (default none)
 *
 * OUT (little-endian):
 *   "ZORACLE1", u32 n_vocab, u32 n_seq, u32 top_k
 *   per sequence: u32 n_tokens, u32 tokens[n_tokens], then per position:
 *     u32 has_full, f64 logsumexp over the whole vocabulary,
 *     top_k x (u32 id, f32 logit), best first (ties: lower id first),
 *     when has_full: f32 logits[n_vocab]
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void die(const char *msg) {
    fprintf(stderr, "llama-oracle: %s\n", msg);
    exit(1);
}

static void quiet_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

static bool no_progress(float progress, void *user) {
    (void)progress;
    (void)user;
    return true;
}

static void put_u32(FILE *f, uint32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    if (fwrite(b, 1, 4, f) != 4) die("write failed");
}

static void put_f32(FILE *f, float x) {
    uint32_t v;
    memcpy(&v, &x, 4);
    put_u32(f, v);
}

static void put_f64(FILE *f, double x) {
    uint64_t v;
    memcpy(&v, &x, 8);
    put_u32(f, (uint32_t)v);
    put_u32(f, (uint32_t)(v >> 32));
}

/* Parses "1,2,3" into a fresh array; returns its length. */
static int parse_ids(const char *s, int32_t **out) {
    int cap = 16, n = 0;
    int32_t *ids = malloc(sizeof *ids * (size_t)cap);
    if (!ids) die("out of memory");
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > INT32_MAX) die("bad token id list");
        if (n == cap) {
            cap *= 2;
            ids = realloc(ids, sizeof *ids * (size_t)cap);
            if (!ids) die("out of memory");
        }
        ids[n++] = (int32_t)v;
        s = end;
        if (*s == ',') s++;
        else if (*s) die("bad token id list");
    }
    *out = ids;
    return n;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: llama-oracle MODEL OUT [-t N] [-k N] [-f all|LIST] SEQ [SEQ ...]\n");
        return 2;
    }
    const char *model_path = argv[1], *out_path = argv[2];
    int threads = 2, top_k = 16, full_all = 0, repack = 1;
    int32_t *full = NULL;
    int n_full = 0;
    int first_seq = 3;
    while (first_seq < argc && argv[first_seq][0] == '-') {
        const char *opt = argv[first_seq];
        if (first_seq + 1 >= argc) die("option without a value");
        const char *val = argv[first_seq + 1];
        if (!strcmp(opt, "-t")) threads = atoi(val);
        else if (!strcmp(opt, "-k")) top_k = atoi(val);
        else if (!strcmp(opt, "-r")) repack = atoi(val);
        else if (!strcmp(opt, "-f")) {
            if (!strcmp(val, "all")) full_all = 1;
            else n_full = parse_ids(val, &full);
        } else die("unknown option");
        first_seq += 2;
    }
    int n_seq = argc - first_seq;
    if (n_seq < 1) die("no sequence given");
    if (threads < 1 || top_k < 1) die("bad -t or -k");

    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.progress_callback = no_progress;
    mp.use_extra_bufts = repack != 0;
    struct llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) die("cannot load the model");
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    if (top_k > n_vocab) top_k = n_vocab;

    int32_t **seqs = malloc(sizeof *seqs * (size_t)n_seq);
    int *lens = malloc(sizeof *lens * (size_t)n_seq);
    if (!seqs || !lens) die("out of memory");
    int longest = 0;
    for (int s = 0; s < n_seq; s++) {
        lens[s] = parse_ids(argv[first_seq + s], &seqs[s]);
        if (lens[s] < 1) die("empty sequence");
        for (int i = 0; i < lens[s]; i++)
            if (seqs[s][i] >= n_vocab) die("token id outside the vocabulary");
        if (lens[s] > longest) longest = lens[s];
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)longest;
    cp.n_batch = (uint32_t)longest;
    cp.n_ubatch = (uint32_t)longest;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) die("cannot create a context");

    FILE *out = fopen(out_path, "wb");
    if (!out) die("cannot open the output file");
    if (fwrite("ZORACLE1", 1, 8, out) != 8) die("write failed");
    put_u32(out, (uint32_t)n_vocab);
    put_u32(out, (uint32_t)n_seq);
    put_u32(out, (uint32_t)top_k);

    int32_t *best = malloc(sizeof *best * (size_t)top_k);
    if (!best) die("out of memory");
    int global = 0;
    for (int s = 0; s < n_seq; s++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        struct llama_batch batch = llama_batch_init(lens[s], 0, 1);
        for (int i = 0; i < lens[s]; i++) {
            batch.token[i] = seqs[s][i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        batch.n_tokens = lens[s];
        if (llama_decode(ctx, batch) != 0) die("llama_decode failed");
        put_u32(out, (uint32_t)lens[s]);
        for (int i = 0; i < lens[s]; i++) put_u32(out, (uint32_t)seqs[s][i]);
        for (int i = 0; i < lens[s]; i++, global++) {
            const float *lg = llama_get_logits_ith(ctx, i);
            if (!lg) die("no logits");
            int has_full = full_all;
            for (int j = 0; j < n_full; j++) has_full |= full[j] == global;
            double mx = -INFINITY, sum = 0;
            for (int v = 0; v < n_vocab; v++) mx = lg[v] > mx ? lg[v] : mx;
            for (int v = 0; v < n_vocab; v++) sum += exp((double)lg[v] - mx);
            /* Top-k by selection in the order (logit descending, id
             * ascending): the j-th is the first of those after the
             * (j-1)-th in that order. */
            for (int j = 0; j < top_k; j++) {
                int b = -1;
                for (int v = 0; v < n_vocab; v++) {
                    if (j > 0) {
                        float pv = lg[best[j - 1]];
                        if (lg[v] > pv || (lg[v] == pv && v <= best[j - 1])) continue;
                    }
                    if (b < 0 || lg[v] > lg[b]) b = v;
                }
                best[j] = b;
            }
            put_u32(out, (uint32_t)has_full);
            put_f64(out, mx + log(sum));
            for (int j = 0; j < top_k; j++) {
                put_u32(out, (uint32_t)best[j]);
                put_f32(out, lg[best[j]]);
            }
            if (has_full)
                for (int v = 0; v < n_vocab; v++) put_f32(out, lg[v]);
        }
        llama_batch_free(batch);
    }
    if (fclose(out) != 0) die("write failed");
    fprintf(stderr, "llama-oracle: %d sequences, %d positions, vocabulary %d -> %s\n", n_seq, global,
            n_vocab, out_path);
    free(best);
    for (int s = 0; s < n_seq; s++) free(seqs[s]);
    free(seqs);
    free(lens);
    free(full);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
