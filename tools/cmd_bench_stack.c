/* cmd_bench_stack.c: `gdn bench --stack`: the GDN layers of Qwen3.6-35B-A3B (30 layers, hidden
 * 2048, Hk 16, Hv 32, D 128, Kconv 4) as one compute graph per layer (an input rms_norm, then
 * gdn_block_build over that layer's weights and cache), layer l reading layer l-1's block
 * output, for decode (T=1) and MTP
 * verify (T=4, K=4) steps, with the graph passes (copy elision, then gather elision) off and on.
 * Per row: time per step, nodes and copies per layer (graph stats), and what the backend ran in
 * one step (launches, bytes, cache bytes: the backend counters of one un-recorded step), plus a
 * checksum of the last layer's output after a fixed number of steps from the same caches, which
 * rows computing the same thing (passes on and off) must share. */
#include "tool.h"
#include "model/gdn_block.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gdn bench --stack [options]\n"
    "\n"
    "Times whole steps of the GDN layers of Qwen3.6-35B-A3B (hidden 2048, Hk 16, Hv 32, D 128,\n"
    "Kconv 4, synthetic seeded weights): each layer one graph, an input rms_norm and the block\n"
    "built in llama.cpp's pattern (gathers of the state and the conv window from the cache, the\n"
    "GDN op, copies of its snapshots and of the new window into the cache), layer l reading layer\n"
    "l-1's output, for decode (T=1 K=1) and MTP verify (T=4 K=4), with the graph passes off and\n"
    "on (on: copy elision, then gather elision, which leave no copy and no gather). Scheme:\n"
    "snapshot (the cache keeps K state groups per slot; sequence b reads and writes slot b).\n"
    "\n"
    "options:\n"
    "  --backend cpu|cuda   backend (default: cuda when a GPU is present, else cpu)\n"
    "  --batch LIST         comma-separated batch sizes (default cuda 1,8,64; cpu 1,4)\n"
    "  --tokens T --K K     one row shape instead of the default pair (T=1 K=1) and (T=4 K=4)\n"
    "  --layers N           GDN layers per step (default 30)\n"
    "  --passes on|off|both graph passes (default both: one row each)\n"
    "  --scheme snapshot|replay  snapshot: llama.cpp's pattern over K state groups per slot\n"
    "                       (default); replay: a gdn_cache with one committed state and a ring\n"
    "                       of token inputs per sequence, every step keeping all its tokens\n"
    "  --ring L             replay: history tokens of the ring (default T: commit every step)\n"
    "  --weights f32|bf16   dtype of the projection weights (default bf16)\n"
    "  --state f32|bf16     dtype of the state pools (default f32; bf16 rounds the state after every\n"
    "                       token and halves its bytes)\n"
    "  --gates chain|fused  the gates as llama.cpp's six elementwise nodes (default) or one gdn_gates\n"
    "                       node computing the same floats\n"
    "  --l2norm nodes|op    q and k normalised by two l2_norm nodes (default) or inside the GDN op\n"
    "  --graphs on|off      record each step once and replay it as one CUDA graph (default on;\n"
    "                       the CPU backend has no recording and runs the graphs node by node)\n"
    "  --reps N             timed steps per row, median reported (default: about 1 s of work, 5..50)\n"
    "  --json               one JSON object per row instead of the table\n"
    "\n"
    "Columns: us/step (median), nodes and copies per layer (graph stats after the passes),\n"
    "launches, cache MB and MB per step (backend counters of the second un-recorded step: kernel\n"
    "launches; bytes of state and conv-window traffic, i.e. the GDN op's state read and\n"
    "snapshots written, the concat's window read and written, plus every cpy and get_rows;\n"
    "replay: the rings' appends and the state write-backs the cache scheduled for that step; all\n"
    "bytes read and written), checksum (FNV-1a of the last layer's output after 2 steps from the\n"
    "same seeded caches: equal for passes off and on; the command fails if they differ or if the\n"
    "output is all zeros or not finite), on/off (speed-up of passes on over off for the same T\n"
    "and B).\n";

enum { CHECK_STEPS = 2 };

typedef struct stack_config {
    const char *backend_name;
    int64_t batches[16];
    int n_batches;
    int64_t T, K; /* 0: default pair */
    int layers, reps, json, graphs;
    int passes_mask; /* bit 0: off, bit 1: on */
    gdn_dtype weight_dtype;
    gdn_dtype state_dtype;
    int fused_gates; /* one gdn_gates node instead of the chain of six */
    int l2norm_in_op; /* q and k normalised inside the GDN op */
    int replay;      /* the replay scheme through a gdn_cache (else llama.cpp's snapshot pattern) */
    int ring;        /* replay: history tokens of the ring (0: T) */
} stack_config;

typedef struct stack_row {
    double us_per_step;
    int reps, recorded;
    gdn_graph_stats stats; /* of layer 0 (every layer's graph is the same) */
    gdn_backend_counters step; /* one un-recorded step */
    uint64_t checksum;
} stack_row;

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Bytes of one weight allocation: from `memory` to the end of its last tensor. */
static size_t weights_bytes(const gdn_block_weights *w)
{
    const gdn_tensor *v[7] = {&w->in_proj_qkvz, &w->in_proj_ba, &w->conv1d, &w->dt_bias,
                              &w->A_log,        &w->norm,       &w->out_proj};
    size_t end = 0;
    for (int i = 0; i < 7; i++) {
        const size_t e = (size_t)((const char *)v[i]->data - (const char *)w->memory) + gdn_tensor_span(v[i]);
        end = e > end ? e : end;
    }
    return end;
}

/* `dst` gets its own backend copy of `src`'s weights (same views, rebased). */
static gdn_status weights_clone(gdn_block_weights *dst, const gdn_block_weights *src)
{
    *dst = *src;
    dst->memory = NULL;
    const size_t bytes = weights_bytes(src);
    gdn_status st = gdn_backend_alloc(src->backend, bytes, &dst->memory);
    if (st == GDN_OK)
        st = gdn_backend_copy(src->backend, dst->memory, src->memory, bytes);
    if (st != GDN_OK) {
        gdn_block_weights_free(dst);
        return st;
    }
    gdn_tensor *v[7] = {&dst->in_proj_qkvz, &dst->in_proj_ba, &dst->conv1d, &dst->dt_bias,
                        &dst->A_log,        &dst->norm,       &dst->out_proj};
    for (int i = 0; i < 7; i++)
        v[i]->data = (char *)dst->memory + ((char *)v[i]->data - (char *)src->memory);
    return GDN_OK;
}

/* The stack's state: weight sets, per-layer caches and graphs, the step's input and index. */
typedef struct stack {
    gdn_backend *backend;
    gdn_block_config config;
    int layers, n_weight_sets;
    gdn_block_weights *weights; /* n_weight_sets; layer l uses set l % n_weight_sets */
    gdn_block_cache *caches;    /* one per layer */
    gdn_block_cache initial;    /* seeded contents every row's checksum starts from */
    gdn_graph **graphs;         /* one per layer */
    gdn_tensor_id *outs;
    void *x, *index;
    int64_t B, T;
    int replay, ring;           /* replay scheme: its cache (the layer caches borrow from it) */
    gdn_cache *cache;
    int32_t *seqs, *tokens;     /* [B]: the cache's sequences, T each */
} stack;

static void stack_free_graphs(stack *s)
{
    for (int l = 0; s->graphs && l < s->layers; l++) {
        gdn_graph_free(s->graphs[l]);
        s->graphs[l] = NULL;
    }
}

/* Build, pass and plan (by one compute) every layer's graph in order. */
static int stack_build(stack *s, int passes)
{
    const int64_t ne_x[3] = {s->config.hidden, s->T, s->B}, ne_i[1] = {s->B};
    gdn_tensor xv = gdn_tensor_contiguous(s->x, GDN_DTYPE_F32, 3, ne_x);
    const gdn_tensor iv = gdn_tensor_contiguous(s->index, GDN_DTYPE_I32, 1, ne_i);
    for (int l = 0; l < s->layers; l++) {
        gdn_tensor_id x = -1, index = -1;
        gdn_graph **g = &s->graphs[l];
        gdn_status st = gdn_graph_init(g);
        if (st == GDN_OK)
            st = gdn_graph_leaf(*g, "x", &xv, GDN_GRAPH_INPUT, &x);
        if (st == GDN_OK)
            st = gdn_graph_leaf(*g, "slot_index", &iv, GDN_GRAPH_INPUT | GDN_GRAPH_OWN_SLOT_INDEX,
                                &index); /* sequence b reads slot b, which only it writes */
        /* The layer's input norm, as in the model (input_layernorm, weight 1 here): without it
         * the block's gain below 1 would shrink the signal layer by layer until the last
         * layer's output (the checksum) is all zeros. */
        gdn_tensor_id normed = -1;
        if (st == GDN_OK)
            st = gdn_graph_intermediate(*g, "x_normed", GDN_DTYPE_F32, 3, ne_x, &normed);
        if (st == GDN_OK) {
            gdn_op_params p;
            memset(&p, 0, sizeof p);
            p.norm.eps = s->config.rms_eps;
            st = gdn_graph_op(*g, GDN_OP_RMS_NORM, &p, 1, &x, 1, &normed);
        }
        if (st == GDN_OK && s->replay) { /* the cache's rows and fold, at fixed addresses */
            gdn_tensor sv, cv, fv, slv;
            int32_t tokens = 0;
            gdn_tensor_id srow = -1, crow = -1, fold = -1, slots = -1;
            const uint32_t own = GDN_GRAPH_INPUT | GDN_GRAPH_OWN_SLOT_INDEX;
            st = gdn_cache_step_rows(s->cache, &sv, &cv, &slv, &tokens);
            if (st == GDN_OK)
                st = gdn_cache_step_fold(s->cache, &fv);
            if (st == GDN_OK)
                st = gdn_graph_leaf(*g, "state_index", &sv, own, &srow);
            if (st == GDN_OK)
                st = gdn_graph_leaf(*g, "conv_row", &cv, own, &crow);
            if (st == GDN_OK)
                st = gdn_graph_leaf(*g, "fold", &fv, GDN_GRAPH_INPUT, &fold);
            if (st == GDN_OK)
                st = gdn_graph_leaf(*g, "slots", &slv, GDN_GRAPH_INPUT, &slots);
            if (st == GDN_OK)
                st = gdn_block_build_replay(*g, &s->config, &s->weights[l % s->n_weight_sets], &s->caches[l], normed,
                                            s->B, s->T, srow, crow, fold, slots, &s->outs[l]);
        } else if (st == GDN_OK) {
            st = gdn_block_build(*g, &s->config, &s->weights[l % s->n_weight_sets], &s->caches[l], normed, s->B,
                                 s->T, index, 0, &s->outs[l]);
        }
        /* Refusals are logged to stderr with GDN_LOG_PASSES=1 (no callback here). */
        if (st == GDN_OK && passes)
            st = gdn_graph_pass_copy_elision(*g, NULL, NULL);
        if (st == GDN_OK && passes)
            st = gdn_graph_pass_gather_elision(*g, NULL, NULL);
        if (st == GDN_OK)
            st = gdn_graph_compute(*g, s->backend); /* plans: later computes allocate nothing */
        if (st == GDN_OK)
            st = gdn_graph_tensor_view(*g, s->outs[l], &xv); /* the next layer's input */
        if (st != GDN_OK) {
            fprintf(stderr, "gdn bench --stack: layer %d graph: %s\n", l, gdn_error_detail());
            return 0;
        }
    }
    return 1;
}

/* Queue one step: every layer's graph in order. */
static int stack_step(stack *s)
{
    for (int l = 0; l < s->layers; l++)
        if (gdn_graph_compute(s->graphs[l], s->backend) != GDN_OK)
            return 0;
    return 1;
}

/* Replay: keep every token of the step in progress and begin the next (outside any recording:
 * this uploads the rows and fold entries the recorded graphs read). */
static int stack_advance(stack *s)
{
    for (int64_t b = 0; s->replay && b < s->B; b++)
        if (gdn_cache_accept(s->cache, s->seqs[b], (int32_t)s->T) != GDN_OK)
            return 0;
    return !s->replay || gdn_cache_step_begin(s->cache, (int32_t)s->B, s->seqs, s->tokens) == GDN_OK;
}

static int stack_reset_caches(stack *s)
{
    if (s->replay) { /* zero state, then the first step begun */
        for (int64_t b = 0; b < s->B; b++)
            if (gdn_cache_seq_reset(s->cache, s->seqs[b]) != GDN_OK)
                return 0;
        return gdn_cache_step_begin(s->cache, (int32_t)s->B, s->seqs, s->tokens) == GDN_OK;
    }
    for (int l = 0; l < s->layers; l++)
        if (gdn_block_cache_copy(&s->caches[l], &s->initial) != GDN_OK)
            return 0;
    return 1;
}

/* One row: build the graphs with or without passes, count and checksum CHECK_STEPS un-recorded
 * steps from the seeded caches, then time steps (recorded and replayed where possible). */
static int stack_row_run(stack *s, const stack_config *cfg, int passes, stack_row *r)
{
    memset(r, 0, sizeof *r);
    int ok = stack_build(s, passes);
    if (ok)
        gdn_graph_get_stats(s->graphs[0], &r->stats);

    /* Counters and checksum: the same caches and input for every row of this (T, B). */
    ok = ok && stack_reset_caches(s);
    for (int step = 0; ok && step < CHECK_STEPS; step++) {
        if (step == CHECK_STEPS - 1)
            gdn_backend_reset_counters(s->backend);
        ok = stack_step(s) && gdn_backend_synchronize(s->backend) == GDN_OK;
        if (step == CHECK_STEPS - 1) { /* counters of a steady step (replay folds from the second on) */
            gdn_backend_get_counters(s->backend, &r->step);
            for (int64_t b = 0; s->replay && b < s->B; b++) { /* the write-backs the counters cannot see */
                gdn_cache_seq_info info;
                if (gdn_cache_seq_info_get(s->cache, s->seqs[b], &info) == GDN_OK && info.commits)
                    r->step.cache_bytes += (uint64_t)s->layers * (uint64_t)(s->config.n_v_heads * s->config.head_dim *
                                                                            s->config.head_dim) * sizeof(float);
            }
        }
        ok = ok && stack_advance(s);
    }
    const size_t out_bytes = (size_t)(s->B * s->T * s->config.hidden) * sizeof(float);
    unsigned char *host = ok ? malloc(out_bytes) : NULL;
    gdn_tensor out;
    ok = ok && host != NULL && gdn_graph_tensor_view(s->graphs[s->layers - 1], s->outs[s->layers - 1], &out) == GDN_OK &&
         gdn_backend_download(s->backend, host, out.data, out_bytes) == GDN_OK;
    if (ok) { /* a checksum of zeros or of non-finite values would agree whatever was computed */
        r->checksum = fnv1a(host, out_bytes);
        float largest = 0.0f;
        for (size_t i = 0; i < out_bytes / sizeof(float); i++) {
            float v;
            memcpy(&v, host + i * sizeof v, sizeof v);
            largest = !isfinite(v) ? INFINITY : fabsf(v) > largest ? fabsf(v) : largest;
        }
        if (!(largest > 1e-3f) || !isfinite(largest)) {
            fprintf(stderr, "gdn bench --stack: T=%lld B=%lld: the last layer's output has largest |value| %g; the "
                    "checksum would not tell computations apart\n", (long long)s->T, (long long)s->B, (double)largest);
            ok = 0;
        }
    }
    free(host);

    /* Timing. Inside a recording the graphs are only queued: they were planned above, so
     * compute allocates nothing and synchronizes nothing (the index checks skip their
     * read-back while the stream is captured). */
    gdn_recording *recording = NULL;
    if (ok && cfg->graphs && gdn_backend_record_begin(s->backend) == GDN_OK) {
        ok = stack_step(s);
        gdn_status st = gdn_backend_record_end(s->backend, &recording);
        ok = ok && st == GDN_OK;
    }
    r->recorded = recording != NULL;
    double *times = NULL;
    int reps = cfg->reps;
    for (int rep = -2; ok && (rep < reps || reps == 0); rep++) {
        double ms = 0;
        ok = stack_advance(s) && gdn_backend_timer_start(s->backend) == GDN_OK;
        ok = ok && (recording ? gdn_recording_replay(recording) == GDN_OK : stack_step(s));
        ok = ok && gdn_backend_timer_stop(s->backend, &ms) == GDN_OK;
        if (!ok)
            break;
        if (rep == -1 && reps == 0) { /* about 1 s of timed work, 5 to 50 steps */
            reps = ms > 0 ? (int)(1000.0 / ms) : 50;
            reps = reps < 5 ? 5 : reps > 50 ? 50 : reps;
        }
        if (rep == -1) {
            times = malloc((size_t)reps * sizeof *times);
            ok = times != NULL;
        }
        if (rep >= 0)
            times[rep] = ms;
    }
    if (ok) {
        qsort(times, (size_t)reps, sizeof *times, gdn_tool_compare_double);
        r->us_per_step = times[reps / 2] * 1e3;
        r->reps = reps;
    } else {
        fprintf(stderr, "gdn bench --stack: B=%lld T=%lld passes %s: %s\n", (long long)s->B, (long long)s->T,
                passes ? "on" : "off", gdn_error_detail());
    }
    free(times);
    gdn_recording_free(recording);
    stack_free_graphs(s);
    return ok;
}

/* Per-(T, K, B) memory: caches for every layer plus the seeded initial cache, x and the index. */
/* The replay scheme's cache for B sequences of T tokens, the layer caches borrowing from it. */
static int stack_open_replay(stack *s, int64_t B, int64_t T)
{
    const gdn_block_config *c = &s->config;
    const gdn_cache_config cc = {s->layers, (int32_t)B, (int32_t)T, (int32_t)c->n_k_heads, (int32_t)c->n_v_heads,
                                 (int32_t)c->head_dim, (int32_t)gdn_block_conv_dim(c), (int32_t)c->conv_kernel,
                                 GDN_CACHE_REPLAY, s->ring ? s->ring : (int32_t)T, c->state_dtype};
    s->seqs = calloc((size_t)B, sizeof *s->seqs);
    s->tokens = calloc((size_t)B, sizeof *s->tokens);
    int ok = s->seqs && s->tokens && gdn_cache_init(s->backend, &cc, NULL, 0, &s->cache) == GDN_OK;
    for (int64_t b = 0; ok && b < B; b++) {
        s->tokens[b] = (int32_t)T;
        ok = gdn_cache_seq_add(s->cache, &s->seqs[b]) == GDN_OK;
    }
    for (int l = 0; ok && l < s->layers; l++) {
        gdn_tensor states, conv, rings[3];
        ok = gdn_cache_layer_pools(s->cache, l, &states, &conv) == GDN_OK &&
             gdn_cache_layer_rings(s->cache, l, &rings[0], &rings[1], &rings[2]) == GDN_OK &&
             gdn_block_cache_borrow_replay(&s->caches[l], s->backend, c, &states, &conv, rings) == GDN_OK;
    }
    return ok && gdn_cache_step_begin(s->cache, (int32_t)B, s->seqs, s->tokens) == GDN_OK;
}

static int stack_open_rows(stack *s, int64_t B, int64_t T)
{
    s->B = B, s->T = T;
    const size_t x_bytes = (size_t)(B * T * s->config.hidden) * sizeof(float);
    int ok = gdn_backend_alloc(s->backend, x_bytes, &s->x) == GDN_OK &&
             gdn_backend_alloc(s->backend, (size_t)B * sizeof(int32_t), &s->index) == GDN_OK;
    if (s->replay)
        ok = ok && stack_open_replay(s, B, T);
    else
        ok = ok && gdn_block_cache_init(&s->initial, s->backend, &s->config, B) == GDN_OK &&
             gdn_block_cache_randomize(&s->initial, 7) == GDN_OK;
    for (int l = 0; ok && !s->replay && l < s->layers; l++)
        ok = gdn_block_cache_init(&s->caches[l], s->backend, &s->config, B) == GDN_OK;
    float *hx = ok ? malloc(x_bytes) : NULL;
    int32_t *hi = ok ? malloc((size_t)B * sizeof *hi) : NULL;
    ok = ok && hx && hi;
    if (ok) {
        uint64_t z = 12345;
        for (size_t i = 0; i < x_bytes / sizeof *hx; i++) { /* uniform in [-1, 1), the same bits everywhere */
            z = z * 6364136223846793005ull + 1442695040888963407ull;
            hx[i] = (float)((double)(z >> 40) / 8388608.0 - 1.0);
        }
        for (int64_t b = 0; b < B; b++)
            hi[b] = (int32_t)b; /* sequence b reads and writes slot b */
        ok = gdn_backend_upload(s->backend, s->x, hx, x_bytes) == GDN_OK &&
             gdn_backend_upload(s->backend, s->index, hi, (size_t)B * sizeof *hi) == GDN_OK;
    }
    free(hx);
    free(hi);
    if (!ok)
        fprintf(stderr, "gdn bench --stack: B=%lld T=%lld: cannot set up the caches and inputs: %s\n", (long long)B,
                (long long)T, gdn_error_detail());
    return ok;
}

static void stack_close_rows(stack *s)
{
    for (int l = 0; l < s->layers; l++)
        gdn_block_cache_free(&s->caches[l]);
    gdn_block_cache_free(&s->initial);
    gdn_cache_free(s->cache);
    s->cache = NULL;
    free(s->seqs), free(s->tokens);
    s->seqs = s->tokens = NULL;
    gdn_backend_dealloc(s->backend, s->x);
    gdn_backend_dealloc(s->backend, s->index);
    s->x = s->index = NULL;
}

static int parse_args(int argc, char **argv, stack_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->layers = 30;
    cfg->graphs = 1;
    cfg->passes_mask = 3;
    cfg->weight_dtype = GDN_DTYPE_BF16;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        }
        if (strcmp(opt, "--stack") == 0)
            continue;
        if (strcmp(opt, "--json") == 0) {
            cfg->json = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "gdn bench --stack: unknown option or missing value: '%s'\n%s", opt, usage);
            return 0;
        }
        const char *val = argv[++i];
        long n = 0;
        if (strcmp(opt, "--backend") == 0) {
            gdn_backend_kind kind;
            if (!gdn_tool_parse_backend(val, &kind))
                return 0;
            cfg->backend_name = val;
        } else if (strcmp(opt, "--batch") == 0) {
            if (!gdn_tool_parse_batches("gdn bench --stack", val, cfg->batches, 16, &cfg->n_batches))
                return 0;
        } else if (strcmp(opt, "--tokens") == 0 && gdn_tool_parse_int(val, 1, 4096, &n)) {
            cfg->T = n;
        } else if (strcmp(opt, "--K") == 0 && gdn_tool_parse_int(val, 1, 64, &n)) {
            cfg->K = n;
        } else if (strcmp(opt, "--graphs") == 0 && (strcmp(val, "on") == 0 || strcmp(val, "off") == 0)) {
            cfg->graphs = strcmp(val, "on") == 0;
        } else if (strcmp(opt, "--passes") == 0 &&
                   (strcmp(val, "on") == 0 || strcmp(val, "off") == 0 || strcmp(val, "both") == 0)) {
            cfg->passes_mask = strcmp(val, "on") == 0 ? 2 : strcmp(val, "off") == 0 ? 1 : 3;
        } else if (strcmp(opt, "--scheme") == 0 && (strcmp(val, "snapshot") == 0 || strcmp(val, "replay") == 0)) {
            cfg->replay = strcmp(val, "replay") == 0;
        } else if (strcmp(opt, "--ring") == 0 && gdn_tool_parse_int(val, 1, 4096, &n)) {
            cfg->ring = (int)n;
        } else if (strcmp(opt, "--weights") == 0 && (strcmp(val, "f32") == 0 || strcmp(val, "bf16") == 0)) {
            cfg->weight_dtype = strcmp(val, "f32") == 0 ? GDN_DTYPE_F32 : GDN_DTYPE_BF16;
        } else if (strcmp(opt, "--l2norm") == 0 && (strcmp(val, "nodes") == 0 || strcmp(val, "op") == 0)) {
            cfg->l2norm_in_op = strcmp(val, "op") == 0;
        } else if (strcmp(opt, "--gates") == 0 && (strcmp(val, "chain") == 0 || strcmp(val, "fused") == 0)) {
            cfg->fused_gates = strcmp(val, "fused") == 0;
        } else if (strcmp(opt, "--state") == 0 && (strcmp(val, "f32") == 0 || strcmp(val, "bf16") == 0)) {
            cfg->state_dtype = strcmp(val, "f32") == 0 ? GDN_DTYPE_F32 : GDN_DTYPE_BF16;
        } else if (strcmp(opt, "--layers") == 0 && gdn_tool_parse_int(val, 1, 1000, &n)) {
            cfg->layers = (int)n;
        } else if (strcmp(opt, "--reps") == 0 && gdn_tool_parse_int(val, 1, 100000, &n)) {
            cfg->reps = (int)n;
        } else {
            fprintf(stderr, "gdn bench --stack: bad option or value: %s %s\n%s", opt, val, usage);
            return 0;
        }
    }
    if (cfg->K == 0 && cfg->T != 0) /* --tokens alone: keep every token's state */
        cfg->K = cfg->T;
    if (cfg->T == 0 && cfg->K != 0)
        cfg->T = 1;
    return 1;
}

/* Cache memory one sequence holds over all layers: its slot of every state and conv pool. */
static uint64_t cache_bytes_per_sequence(const stack *s)
{
    size_t total = 0;
    if (s->replay && gdn_cache_memory_size(&(gdn_cache_config){s->layers, (int32_t)s->B, (int32_t)s->T,
                                                               (int32_t)s->config.n_k_heads, (int32_t)s->config.n_v_heads,
                                                               (int32_t)s->config.head_dim,
                                                               (int32_t)gdn_block_conv_dim(&s->config),
                                                               (int32_t)s->config.conv_kernel, GDN_CACHE_REPLAY,
                                                               s->ring ? s->ring : (int32_t)s->T,
                                                               s->config.state_dtype},
                                           &total) == GDN_OK)
        return total / (uint64_t)s->B; /* (with the step rows: 20 bytes per sequence) */
    uint64_t bytes = 0;
    for (int l = 0; l < s->layers; l++)
        bytes += (gdn_tensor_span(&s->caches[l].states) + gdn_tensor_span(&s->caches[l].conv)) /
                 (uint64_t)s->caches[l].n_slots;
    return bytes;
}

static void print_row(const stack_config *cfg, const stack *s, int cuda, int passes, int64_t K, const stack_row *r,
                      double speedup)
{
    const char *wname = cfg->weight_dtype == GDN_DTYPE_F32 ? "f32" : "bf16";
    if (cfg->json) {
        printf("{\"backend\":\"%s\",\"device\":\"%s\",\"scheme\":\"%s\",\"ring\":%d,\"passes\":\"%s\",\"T\":%lld,"
               "\"K\":%lld,"
               "\"B\":%lld,\"layers\":%d,\"weights\":\"%s\",\"state\":\"%s\",\"gates\":\"%s\","
               "\"l2norm\":\"%s\",\"weight_sets\":%d,"
               "\"reps\":%d,"
               "\"graph\":%s,"
               "\"us_per_step\":%.3f,\"nodes\":%d,\"copies\":%d,\"gathers\":%d,\"op_calls\":%llu,\"launches\":%llu,"
               "\"copies_per_step\":%llu,\"gathers_per_step\":%llu,\"state_bytes_per_step\":%llu,"
               "\"bytes_per_step\":%llu,\"cache_bytes_per_sequence\":%llu,\"checksum\":\"%016llx\"}\n",
               cuda ? "cuda" : "cpu", gdn_backend_name(s->backend), s->replay ? "replay" : "snapshot",
               s->replay ? (s->ring ? s->ring : (int)s->T) : 0, passes ? "on" : "off", (long long)s->T,
               (long long)K, (long long)s->B, s->layers, wname,
               s->config.state_dtype == GDN_DTYPE_BF16 ? "bf16" : "f32", s->config.fused_gates ? "fused" : "chain",
               s->config.l2norm_in_op ? "op" : "nodes",
               s->n_weight_sets, r->reps,
               r->recorded ? "true" : "false", r->us_per_step, (int)r->stats.n_nodes, (int)r->stats.n_copies,
               (int)r->stats.n_gathers, (unsigned long long)r->step.op_calls, (unsigned long long)r->step.launches,
               (unsigned long long)r->step.copies, (unsigned long long)r->step.gathers,
               (unsigned long long)r->step.cache_bytes, (unsigned long long)r->step.bytes,
               (unsigned long long)cache_bytes_per_sequence(s), (unsigned long long)r->checksum);
    } else {
        char sp[16] = "";
        if (speedup > 0)
            snprintf(sp, sizeof sp, "%.3fx", speedup);
        printf("%-5s %-9s %-6s %3lld %3lld %5lld %6d %12.1f %6d %6d %9llu %12.2f %12.2f  %016llx %7s\n",
               cuda ? "cuda" : "cpu", s->replay ? "replay" : "snapshot", passes ? "on" : "off", (long long)s->T,
               (long long)K,
               (long long)s->B, s->layers, r->us_per_step, (int)r->stats.n_nodes, (int)r->stats.n_copies,
               (unsigned long long)r->step.launches, (double)r->step.cache_bytes / 1e6, (double)r->step.bytes / 1e6,
               (unsigned long long)r->checksum, sp);
    }
    fflush(stdout);
}

int gdn_cmd_bench_stack(int argc, char **argv)
{
    stack_config cfg;
    if (!parse_args(argc, argv, &cfg))
        return 2;
    gdn_backend *backend = gdn_tool_open_backend(cfg.backend_name);
    if (backend == NULL)
        return 1;
    const int cuda = gdn_backend_kind_of(backend) == GDN_BACKEND_CUDA;
    if (cfg.n_batches == 0) {
        const int64_t gpu[] = {1, 8, 64}, cpu[] = {1, 4};
        cfg.n_batches = cuda ? 3 : 2;
        memcpy(cfg.batches, cuda ? gpu : cpu, (size_t)cfg.n_batches * sizeof gpu[0]);
    }
    const int64_t shapes[2][2] = {{1, 1}, {4, 4}};
    const int n_shapes = cfg.T ? 1 : 2;

    stack s;
    memset(&s, 0, sizeof s);
    s.backend = backend;
    s.layers = cfg.layers;
    s.replay = cfg.replay, s.ring = cfg.ring;
    s.config = gdn_block_config_default();
    s.config.weight_dtype = cfg.weight_dtype;
    s.config.state_dtype = cfg.state_dtype;
    s.config.fused_gates = cfg.fused_gates;
    s.config.l2norm_in_op = cfg.l2norm_in_op;
    s.config.n_snapshots = (int32_t)(cfg.T ? cfg.K : shapes[0][1]);
    s.caches = calloc((size_t)cfg.layers, sizeof *s.caches);
    s.graphs = calloc((size_t)cfg.layers, sizeof *s.graphs);
    s.outs = calloc((size_t)cfg.layers, sizeof *s.outs);
    s.weights = calloc((size_t)cfg.layers, sizeof *s.weights);
    int failed = !(s.caches && s.graphs && s.outs && s.weights);

    /* Weights: one seeded set, copied into a distinct buffer per layer as far as the budget
     * allows (so each layer streams its own weights from memory); beyond it, layers share the
     * buffers round-robin, which the header and the JSON (weight_sets) say. */
    const size_t budget = cuda ? (size_t)16 << 30 : (size_t)1 << 30;
    if (!failed && gdn_block_weights_init(&s.weights[0], backend, &s.config, 1) != GDN_OK) {
        fprintf(stderr, "gdn bench --stack: weights: %s\n", gdn_error_detail());
        failed = 1;
    }
    if (!failed) {
        const size_t per_set = weights_bytes(&s.weights[0]);
        size_t fit = budget / (per_set ? per_set : 1);
        s.n_weight_sets = fit < 1 ? 1 : fit > (size_t)cfg.layers ? cfg.layers : (int)fit;
        for (int i = 1; !failed && i < s.n_weight_sets; i++)
            if (weights_clone(&s.weights[i], &s.weights[0]) != GDN_OK) {
                s.n_weight_sets = i; /* out of memory: share what exists */
                break;
            }
        if (gdn_backend_synchronize(backend) != GDN_OK)
            failed = 1;
        if (cfg.json) /* the table's header says the same */
            fprintf(stderr, "gdn bench --stack: %s; weights %s, %.1f MB per layer, %d distinct buffer%s for %d layer%s%s\n",
                    gdn_backend_name(backend), cfg.weight_dtype == GDN_DTYPE_F32 ? "f32" : "bf16",
                    (double)per_set / 1e6, s.n_weight_sets, s.n_weight_sets == 1 ? "" : "s", cfg.layers,
                    cfg.layers == 1 ? "" : "s", s.n_weight_sets < cfg.layers ? " (shared round-robin: memory budget)" : "");
    }
    if (!failed && !cfg.json) {
        printf("gdn bench --stack: Qwen3.6-35B-A3B GDN layers as graphs (hidden %lld, Hk %lld, Hv %lld, D %lld, "
               "Kconv %lld), %d layers/step\n", (long long)s.config.hidden, (long long)s.config.n_k_heads,
               (long long)s.config.n_v_heads, (long long)s.config.head_dim, (long long)s.config.conv_kernel,
               cfg.layers);
        printf("backend: %s; state: %s; weights: %s, %d distinct buffer%s (copies of one seeded set)%s\n",
               gdn_backend_name(backend), cfg.state_dtype == GDN_DTYPE_BF16 ? "bf16" : "f32",
               cfg.weight_dtype == GDN_DTYPE_F32 ? "f32" : "bf16", s.n_weight_sets,
               s.n_weight_sets == 1 ? "" : "s", s.n_weight_sets < cfg.layers ? ", shared round-robin by the layers" : "");
        printf("passes on = copy elision, then gather elision; counts per step from one un-recorded step\n\n");
        printf("%-5s %-9s %-6s %3s %3s %5s %6s %12s %6s %6s %9s %12s %12s  %-16s %7s\n", "back", "scheme", "passes",
               "T", "K", "B", "layers", "us/step", "nodes", "copies", "launches", "cache MB", "MB", "checksum",
               "on/off");
    }

    for (int sh = 0; !failed && sh < n_shapes; sh++) {
        const int64_t T = cfg.T ? cfg.T : shapes[sh][0], K = cfg.T ? cfg.K : shapes[sh][1];
        /* The weights do not depend on K; the block checks that configs match, so follow it. */
        s.config.n_snapshots = (int32_t)(cfg.replay ? T : K); /* replay: K is the step's T (no snapshots) */
        s.config.rollback = cfg.replay;
        for (int i = 0; i < s.n_weight_sets; i++)
            s.weights[i].config.n_snapshots = s.config.n_snapshots, s.weights[i].config.rollback = cfg.replay;
        for (int b = 0; b < cfg.n_batches; b++) {
            if (!stack_open_rows(&s, cfg.batches[b], T)) {
                failed = 1;
                stack_close_rows(&s);
                continue;
            }
            stack_row rows[2];
            int have[2] = {0, 0};
            for (int p = 0; p < 2; p++) {
                if (!(cfg.passes_mask & (1 << p)))
                    continue;
                if (!stack_row_run(&s, &cfg, p, &rows[p])) {
                    failed = 1;
                    continue;
                }
                have[p] = 1;
                const double speedup = p == 1 && have[0] && rows[1].us_per_step > 0
                                           ? rows[0].us_per_step / rows[1].us_per_step : 0.0;
                print_row(&cfg, &s, cuda, p, K, &rows[p], speedup);
            }
            if (have[0] && have[1] && rows[0].checksum != rows[1].checksum) {
                fprintf(stderr, "gdn bench --stack: T=%lld B=%lld: checksums differ with the passes on and off\n",
                        (long long)T, (long long)cfg.batches[b]);
                failed = 1;
            }
            stack_close_rows(&s);
        }
    }

    for (int i = 0; s.weights && i < s.n_weight_sets; i++)
        gdn_block_weights_free(&s.weights[i]);
    free(s.caches);
    free(s.graphs);
    free(s.outs);
    free(s.weights);
    gdn_backend_free(backend);
    return failed;
}
