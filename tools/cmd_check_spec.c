/* cmd_check_spec.c: `gdn check spec`: the exactness contract of DESIGN.md section 2 for
 * speculative decoding, tested end to end. A stack of GDN layers (an input rms_norm and the GDN
 * block, synthetic seeded weights) runs two ways on one backend, each over a gdn_cache whose
 * sequences start from zero state:
 *   spec:       every step verifies T tokens per sequence in one call and accepts the first a
 *               of them (the acceptance pattern), over a snapshot cache (K = T state groups
 *               per slot: the next step reads group T-a, no data moves) or a replay cache (one
 *               committed state and a ring of token updates: the next step folds the kept
 *               tokens into the state, committing them when the ring would overflow); either
 *               keeps Kconv-1+T window columns per slot and reads the window at offset a;
 *   sequential: the accepted tokens decoded one at a time (T = 1 steps, one sequence per call).
 * By default the spec run's sequences sit in every other slot of a cache twice their number
 * (the slots between them freed) and each step lists them in a new random order, so the step's
 * reads and writes go through indices into scattered slots; the free slots must stay zero.
 * Every accepted token's output, every layer's window after every step, and every layer's
 * committed state (snapshot: after every step; replay: whenever it holds all the tokens kept so
 * far) must be bit-identical between the two. The first token of a step is the one the previous step
 * sampled, so a >= 1 ("none" accepts no draft token: a = 1). */
#include "tool.h"
#include "model/gdn_block.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gdn check spec [options]\n"
    "\n"
    "Checks that speculative decoding with rollback (verify T tokens, accept a prefix, roll the\n"
    "cache back: snapshot scheme, or replay scheme folding the kept tokens) gives bit for bit\n"
    "the outputs and cache contents of decoding the accepted tokens one at a time, on one\n"
    "backend, over many steps. Exits 1 on any difference. A small model by default (hidden\n"
    "128, Hk 2, Hv 4, D 32, Kconv 4, BF16 projection weights; both graph passes on).\n"
    "\n"
    "options:\n"
    "  --backend cpu|cuda   backend (default: cuda when a GPU is present, else cpu)\n"
    "  --scheme snapshot|replay  the spec run's cache scheme (default snapshot: K state groups\n"
    "                       per slot; replay: one committed state and a ring of token updates)\n"
    "  --ring L             replay: tokens of history the ring keeps (default T)\n"
    "  --state f32|bf16     how both runs store the state (default f32; bf16 rounds it after\n"
    "                       every token, so it too must match bit for bit)\n"
    "  --gates chain|fused  the block's gates as six nodes (default) or one gdn_gates node\n"
    "  --l2norm nodes|op    q and k normalised by l2_norm nodes (default) or inside the GDN op\n"
    "  --steps N            verify steps (default 200)\n"
    "  --accept MODE        all | none | random | N: tokens kept per step, of T (default random)\n"
    "  --tokens T           tokens verified per step (default 4)\n"
    "  --mixed              each sequence verifies its own 1..T tokens per step (one of them T),\n"
    "                       padded to T in the step; the acceptance keeps at most its own\n"
    "  --batch B            sequences (default 3)\n"
    "  --layers N           GDN layers (default 4)\n"
    "  --passes on|off      graph passes on both runs (default on)\n"
    "  --slots scattered|consecutive  the spec run's sequences in every other slot of a cache of\n"
    "                       2B, listed in a new random order every step (default), or in slots\n"
    "                       0..B-1 in order\n"
    "  --seed N             weights, caches, tokens and acceptance (default 1)\n"
    "  --json               one JSON object: backend, scheme, state_dtype, slots, steps, T, B,\n"
    "                       layers, accept, ring,\n"
    "                       mixed, tokens_committed, states_compared, identical, max_abs_diff,\n"
    "                       first_difference\n";

typedef struct spec_options {
    const char *backend_name;
    long steps, tokens, batch, layers, seed, fixed, ring;
    int accept; /* 0 all, 1 none, 2 random, 3 fixed */
    int replay; /* the replay scheme for the spec run (else snapshot) */
    int passes, json;
    int mixed; /* per-sequence token counts, padded to T */
    gdn_dtype state; /* state storage of both runs */
    int fused_gates, l2norm_in_op; /* the block's variants (gdn_block_config) */
    int consecutive; /* the spec run's sequences in slots 0..B-1, in order */
} spec_options;

/* One run (spec or sequential): a cache (gdn_cache, with per-layer block views of its pools)
 * and the graphs of its layers. */
typedef struct spec_run {
    int64_t B, T;
    gdn_cache *cache;
    int32_t *seqs;           /* [B] the cache's sequence ids */
    gdn_block_cache *caches; /* [layers] views of the cache's pools */
    gdn_graph **graphs;      /* [layers * n_graphs] */
    gdn_tensor_id *outs;
    void *x;                 /* backend: x [B,T,hidden] F32 */
} spec_run;

/* Layer graphs for B sequences of T tokens, reading and writing the slots the cache's step rows
 * name (the rows live at fixed addresses: the graphs serve every later step of B sequences). */
static int build_graphs(gdn_backend *backend, const gdn_block_config *c, const gdn_block_weights *w, spec_run *r,
                        int layers, int64_t B, int64_t T, int passes)
{
    const int64_t ne_x[3] = {c->hidden, T, B};
    gdn_tensor xv = gdn_tensor_contiguous(r->x, GDN_DTYPE_F32, 3, ne_x), sv, cv, slv;
    int32_t tokens = 0;
    if (gdn_cache_step_rows(r->cache, &sv, &cv, &slv, &tokens) != GDN_OK || tokens != T) {
        fprintf(stderr, "gdn check spec: step rows: %s\n", gdn_error_detail());
        return 0;
    }
    for (int l = 0; l < layers; l++) {
        gdn_graph **graph = &r->graphs[l];
        gdn_tensor_id x = -1, normed = -1, srow = -1, crow = -1, slots = -1, *out = &r->outs[l];
        gdn_op_params p;
        memset(&p, 0, sizeof p);
        p.norm.eps = c->rms_eps;
        gdn_status st = gdn_graph_init(graph);
        /* Sequence b reads rows of its own slot only: the own-slot promise the passes need. */
        const uint32_t own = GDN_GRAPH_INPUT | GDN_GRAPH_OWN_SLOT_INDEX;
        if (st == GDN_OK)
            st = gdn_graph_leaf(*graph, "x", &xv, GDN_GRAPH_INPUT, &x);
        if (st == GDN_OK)
            st = gdn_graph_leaf(*graph, "state_row", &sv, own, &srow);
        if (st == GDN_OK)
            st = gdn_graph_leaf(*graph, "conv_row", &cv, own, &crow);
        if (st == GDN_OK)
            st = gdn_graph_leaf(*graph, "slots", &slv, GDN_GRAPH_INPUT, &slots);
        if (st == GDN_OK)
            st = gdn_graph_intermediate(*graph, "x_normed", GDN_DTYPE_F32, 3, ne_x, &normed);
        if (st == GDN_OK)
            st = gdn_graph_op(*graph, GDN_OP_RMS_NORM, &p, 1, &x, 1, &normed);
        gdn_tensor fv;
        gdn_tensor_id fold = -1;
        if (st == GDN_OK && r->caches[l].ring_k.data != NULL && (st = gdn_cache_step_fold(r->cache, &fv)) == GDN_OK)
            st = gdn_graph_leaf(*graph, "fold", &fv, GDN_GRAPH_INPUT, &fold);
        if (st == GDN_OK && fold >= 0)
            st = gdn_block_build_replay(*graph, c, &w[l], &r->caches[l], normed, B, T, srow, crow, fold, slots, out);
        else if (st == GDN_OK)
            st = gdn_block_build_rollback(*graph, c, &w[l], &r->caches[l], normed, B, T, srow, crow, slots, out);
        if (st == GDN_OK && passes)
            st = gdn_graph_pass_copy_elision(*graph, NULL, NULL);
        if (st == GDN_OK && passes)
            st = gdn_graph_pass_gather_elision(*graph, NULL, NULL);
        if (st == GDN_OK)
            st = gdn_graph_compute(*graph, backend); /* plan now; the caches are reset afterwards */
        if (st == GDN_OK)
            st = gdn_graph_tensor_view(*graph, *out, &xv);
        if (st != GDN_OK) {
            fprintf(stderr, "gdn check spec: layer %d graph (B %lld, T %lld): %s\n", l, (long long)B, (long long)T,
                    gdn_error_detail());
            return 0;
        }
    }
    return 1;
}

/* Run the graphs (the cache's step begun): upload x, compute every layer, download the last
 * output. */
static int run_graphs(gdn_backend *backend, spec_run *r, int layers, const float *x, size_t x_bytes, float *out)
{
    gdn_tensor ov;
    gdn_status st = gdn_backend_upload(backend, r->x, x, x_bytes);
    for (int l = 0; st == GDN_OK && l < layers; l++)
        st = gdn_graph_compute(r->graphs[l], backend);
    if (st == GDN_OK)
        st = gdn_graph_tensor_view(r->graphs[layers - 1], r->outs[layers - 1], &ov);
    if (st == GDN_OK)
        st = gdn_backend_download(backend, out, ov.data, x_bytes);
    if (st == GDN_OK)
        st = gdn_backend_synchronize(backend);
    if (st != GDN_OK)
        fprintf(stderr, "gdn check spec: step: %s\n", gdn_error_detail());
    return st == GDN_OK;
}

static int parse(int argc, char **argv, spec_options *o)
{
    memset(o, 0, sizeof *o);
    o->steps = 200, o->tokens = 4, o->batch = 3, o->layers = 4, o->seed = 1, o->accept = 2, o->passes = 1;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        }
        if (strcmp(opt, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if (strcmp(opt, "--mixed") == 0) {
            o->mixed = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "gdn check spec: unknown option or missing value: '%s'\n%s", opt, usage);
            return 0;
        }
        const char *val = argv[++i];
        gdn_backend_kind kind;
        if (strcmp(opt, "--backend") == 0 && gdn_tool_parse_backend(val, &kind)) {
            o->backend_name = val;
        } else if (strcmp(opt, "--scheme") == 0 && (strcmp(val, "snapshot") == 0 || strcmp(val, "replay") == 0)) {
            o->replay = strcmp(val, "replay") == 0;
        } else if (strcmp(opt, "--ring") == 0 && gdn_tool_parse_int(val, 1, 64, &o->ring)) {
        } else if (strcmp(opt, "--gates") == 0 && (strcmp(val, "chain") == 0 || strcmp(val, "fused") == 0)) {
            o->fused_gates = strcmp(val, "fused") == 0;
        } else if (strcmp(opt, "--l2norm") == 0 && (strcmp(val, "nodes") == 0 || strcmp(val, "op") == 0)) {
            o->l2norm_in_op = strcmp(val, "op") == 0;
        } else if (strcmp(opt, "--state") == 0 && (strcmp(val, "f32") == 0 || strcmp(val, "bf16") == 0)) {
            o->state = strcmp(val, "bf16") == 0 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
        } else if (strcmp(opt, "--steps") == 0 && gdn_tool_parse_int(val, 1, 100000000, &o->steps)) {
        } else if (strcmp(opt, "--tokens") == 0 && gdn_tool_parse_int(val, 1, 16, &o->tokens)) {
        } else if (strcmp(opt, "--batch") == 0 && gdn_tool_parse_int(val, 1, 64, &o->batch)) {
        } else if (strcmp(opt, "--layers") == 0 && gdn_tool_parse_int(val, 1, 64, &o->layers)) {
        } else if (strcmp(opt, "--seed") == 0 && gdn_tool_parse_int(val, 0, 2147483647, &o->seed)) {
        } else if (strcmp(opt, "--passes") == 0 && (strcmp(val, "on") == 0 || strcmp(val, "off") == 0)) {
            o->passes = strcmp(val, "on") == 0;
        } else if (strcmp(opt, "--slots") == 0 && (strcmp(val, "scattered") == 0 || strcmp(val, "consecutive") == 0)) {
            o->consecutive = strcmp(val, "consecutive") == 0;
        } else if (strcmp(opt, "--accept") == 0) {
            if (strcmp(val, "all") == 0)
                o->accept = 0;
            else if (strcmp(val, "none") == 0)
                o->accept = 1;
            else if (strcmp(val, "random") == 0)
                o->accept = 2;
            else if (gdn_tool_parse_int(val, 1, 16, &o->fixed))
                o->accept = 3;
            else {
                fprintf(stderr, "gdn check spec: --accept %s: expected all, none, random or a count >= 1\n", val);
                return 0;
            }
        } else {
            fprintf(stderr, "gdn check spec: bad option or value: %s %s\n%s", opt, val, usage);
            return 0;
        }
    }
    if (o->ring == 0)
        o->ring = o->tokens;
    if (o->ring < o->tokens) {
        fprintf(stderr, "gdn check spec: --ring %ld is shorter than the %ld tokens of a step\n", o->ring, o->tokens);
        return 0;
    }
    if (o->accept == 3 && o->fixed > o->tokens) {
        fprintf(stderr, "gdn check spec: --accept %ld keeps more tokens than the %ld verified per step\n", o->fixed,
                o->tokens);
        return 0;
    }
    return 1;
}

/* Bytes of layer l's state group `group` of slot s, and of its window columns from `col`. */
static int fetch(gdn_backend *backend, const gdn_block_cache *cache, int64_t slot, int64_t group, int64_t col,
                 unsigned char *state, size_t state_bytes, unsigned char *window, size_t window_bytes)
{
    const gdn_tensor *st = &cache->states, *cv = &cache->conv;
    const char *s = (const char *)st->data + (size_t)slot * st->nb[4] + (size_t)group * st->nb[3];
    const char *w = (const char *)cv->data + (size_t)slot * cv->nb[2] + (size_t)col * cv->nb[1];
    return gdn_backend_download(backend, state, s, state_bytes) == GDN_OK &&
           gdn_backend_download(backend, window, w, window_bytes) == GDN_OK;
}

int gdn_cmd_check(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "bf16") == 0)
        return gdn_cmd_check_bf16(argc - 1, argv + 1);
    if (argc < 2 || strcmp(argv[1], "spec") != 0) {
        fprintf(stderr, "usage: gdn check spec|bf16 [options] (see gdn check spec --help, gdn check bf16 --help)\n");
        return 2;
    }
    spec_options o;
    if (!parse(argc - 1, argv + 1, &o))
        return 2;
    gdn_backend *backend = gdn_tool_open_backend(o.backend_name);
    if (backend == NULL)
        return 2;
    gdn_block_config c = gdn_block_config_default();
    c.hidden = 128, c.n_k_heads = 2, c.n_v_heads = 4, c.head_dim = 32;
    c.n_snapshots = (int32_t)o.tokens, c.rollback = 1, c.state_dtype = o.state;
    c.fused_gates = o.fused_gates, c.l2norm_in_op = o.l2norm_in_op;
    const int layers = (int)o.layers;
    const int64_t B = o.batch, T = o.tokens, H = c.hidden, Kc = c.conv_kernel, C = gdn_block_conv_dim(&c);
    const size_t state_bytes = (size_t)(c.n_v_heads * c.head_dim * c.head_dim) * gdn_dtype_size(c.state_dtype);
    const size_t window_bytes = (size_t)((Kc - 1) * C) * 4;

    gdn_block_weights *w = calloc((size_t)layers, sizeof *w);
    spec_run run[2]; /* 0 spec, 1 sequential */
    memset(run, 0, sizeof run);
    float *x = malloc((size_t)(B * T * H) * 4), *out = malloc((size_t)(B * T * H) * 4), *x1 = malloc((size_t)H * 4);
    float *out1 = malloc((size_t)H * 4);
    unsigned char *sa = malloc(state_bytes), *sb = malloc(state_bytes), *wa = malloc(window_bytes), *wb = malloc(window_bytes);
    int32_t *order = calloc((size_t)B, sizeof *order), *ones = malloc((size_t)B * sizeof *ones);
    int32_t *step_seqs = calloc((size_t)B, sizeof *step_seqs);
    int ok = w && x && out && x1 && out1 && sa && sb && wa && wb && order && ones && step_seqs;
    for (int64_t b = 0; ok && b < B; b++)
        ones[b] = 1;
    for (int l = 0; ok && l < layers; l++)
        ok = gdn_block_weights_init(&w[l], backend, &c, (uint64_t)o.seed * 1000 + (uint64_t)l) == GDN_OK;
    const gdn_cache_config snapshot = {layers, (int32_t)B, (int32_t)T, (int32_t)c.n_k_heads, (int32_t)c.n_v_heads,
                                       (int32_t)c.head_dim, (int32_t)C, (int32_t)Kc, GDN_CACHE_SNAPSHOT, 0,
                                       c.state_dtype};
    gdn_cache_config replay = snapshot, spread = snapshot;
    replay.scheme = GDN_CACHE_REPLAY, replay.ring = (int32_t)o.ring;
    if (!o.consecutive) /* the spec run's sequences in every other slot of 2B */
        replay.n_seqs = spread.n_seqs = 2 * (int32_t)B;
    int32_t *tokens = malloc((size_t)B * sizeof *tokens);
    ok = ok && tokens != NULL;
    for (int64_t b = 0; ok && b < B; b++)
        tokens[b] = (int32_t)T;
    for (int k = 0; ok && k < 2; k++) {
        spec_run *r = &run[k];
        r->B = k == 0 ? B : 1, r->T = k == 0 ? T : 1;
        r->seqs = calloc((size_t)B, sizeof *r->seqs);
        r->caches = calloc((size_t)layers, sizeof *r->caches);
        r->graphs = calloc((size_t)layers, sizeof *r->graphs);
        r->outs = calloc((size_t)layers, sizeof *r->outs);
        const gdn_cache_config *cc = k == 1 ? &snapshot : o.replay ? &replay : &spread;
        ok = r->seqs && r->caches && r->graphs && r->outs && gdn_cache_init(backend, cc, NULL, 0, &r->cache) == GDN_OK &&
             gdn_backend_alloc(backend, (size_t)(r->B * r->T * H) * 4, &r->x) == GDN_OK;
        for (int32_t i = 0, seq = 0; ok && i < cc->n_seqs; i++) /* fill every slot, then (scattered) */
            ok = gdn_cache_seq_add(r->cache, &seq) == GDN_OK;   /* free the even ones */
        for (int32_t seq = 0; ok && seq < cc->n_seqs; seq++)
            if (cc->n_seqs > B && seq % 2 == 0)
                ok = gdn_cache_seq_remove(r->cache, seq) == GDN_OK;
            else
                r->seqs[cc->n_seqs > B ? seq / 2 : seq] = seq;
        for (int l = 0; ok && l < layers; l++) {
            gdn_tensor states, conv, rings[3];
            ok = gdn_cache_layer_pools(r->cache, l, &states, &conv) == GDN_OK;
            if (ok && cc->scheme == GDN_CACHE_REPLAY)
                ok = gdn_cache_layer_rings(r->cache, l, &rings[0], &rings[1], &rings[2]) == GDN_OK &&
                     gdn_block_cache_borrow_replay(&r->caches[l], backend, &c, &states, &conv, rings) == GDN_OK;
            else if (ok)
                ok = gdn_block_cache_borrow(&r->caches[l], backend, &c, &states, &conv) == GDN_OK;
        }
        /* Graphs are planned by one compute of a begun step; the sequences are reset after. */
        ok = ok && gdn_cache_step_begin(r->cache, (int32_t)r->B, r->seqs, k == 0 ? tokens : ones) == GDN_OK &&
             build_graphs(backend, &c, w, r, layers, r->B, r->T, o.passes);
        for (int64_t b = 0; ok && b < B; b++)
            ok = gdn_cache_seq_reset(r->cache, r->seqs[b]) == GDN_OK;
    }
    if (!ok)
        fprintf(stderr, "gdn check spec: setup: %s\n", gdn_error_detail());

    uint64_t rng = (uint64_t)o.seed * 0x51ED27ull + 17;
    long step = 0, committed = 0, states_compared = 0;
    double max_diff = 0.0;
    char first[200] = "";
    for (; ok && step < o.steps; step++) {
        for (int64_t i = 0; i < B * T * H; i++) /* the step's tokens (what the embedding would give) */
            x[i] = gdn_tool_uniform(&rng);
        if (o.mixed) /* each sequence its own count, one of them T (the step's T, the graphs'); the
                      * positions past a sequence's count are padding that nothing keeps */
            for (int64_t i = 0; i < B; i++)
                tokens[i] = i == step % B ? (int32_t)T : (int32_t)(1 + gdn_tool_mix(&rng) % (uint64_t)T);
        for (int64_t i = 0; i < B; i++) /* position i of the step runs sequence order[i] */
            order[i] = (int32_t)i;
        for (int64_t i = B - 1; i > 0 && !o.consecutive; i--) {
            const int64_t j = (int64_t)(gdn_tool_mix(&rng) % (uint64_t)(i + 1));
            const int32_t t = order[i];
            order[i] = order[j], order[j] = t;
        }
        for (int64_t i = 0; i < B; i++)
            step_seqs[i] = run[0].seqs[order[i]];
        ok = gdn_cache_step_begin(run[0].cache, (int32_t)B, step_seqs, tokens) == GDN_OK &&
             run_graphs(backend, &run[0], layers, x, (size_t)(B * T * H) * 4, out);
        for (int64_t i = 0; ok && i < B; i++) {
            const int64_t b = order[i], n_b = tokens[i]; /* the sequence and its own tokens in the step */
            const int64_t a = o.accept == 0 ? n_b : o.accept == 1 ? 1 : o.accept == 3 ? (o.fixed < n_b ? o.fixed : n_b)
                                                                    : 1 + (int64_t)(gdn_tool_mix(&rng) % (uint64_t)n_b);
            ok = gdn_cache_accept(run[0].cache, run[0].seqs[b], (int32_t)a) == GDN_OK;
            /* Replay: the committed state holds the tokens folded so far; when those are all the
             * tokens kept before this step, it must equal the sequential state now. */
            gdn_cache_seq_info si, qi;
            if (ok && o.replay && gdn_cache_seq_info_get(run[0].cache, run[0].seqs[b], &si) == GDN_OK &&
                gdn_cache_seq_info_get(run[1].cache, run[1].seqs[b], &qi) == GDN_OK && si.committed == qi.tokens &&
                si.committed > 0) {
                for (int l = 0; ok && l < layers; l++) {
                    ok = fetch(backend, &run[0].caches[l], run[0].seqs[b], 0, a, sa, state_bytes, wa, window_bytes) &&
                         fetch(backend, &run[1].caches[l], run[1].seqs[b], 0, 1, sb, state_bytes, wb, window_bytes);
                    if (ok && memcmp(sa, sb, state_bytes) != 0 && first[0] == '\0') {
                        snprintf(first, sizeof first, "step %ld, sequence %lld, layer %d: committed state differs "
                                 "(after %lld tokens)", step, (long long)b, l, (long long)si.committed);
                        max_diff = max_diff > 0 ? max_diff : 1e-45;
                    }
                }
                states_compared++;
            }
            for (int64_t t = 0; ok && t < a; t++) { /* the sequential run decodes the kept tokens */
                memcpy(x1, x + (i * T + t) * H, (size_t)H * 4);
                ok = gdn_cache_step_begin(run[1].cache, 1, &run[1].seqs[b], ones) == GDN_OK &&
                     run_graphs(backend, &run[1], layers, x1, (size_t)H * 4, out1) &&
                     gdn_cache_accept(run[1].cache, run[1].seqs[b], 1) == GDN_OK;
                for (int64_t e = 0; ok && e < H; e++) {
                    const float u = out[(i * T + t) * H + e], v = out1[e];
                    const double d = fabs((double)u - (double)v);
                    if (memcmp(&u, &v, sizeof u) != 0 && first[0] == '\0')
                        snprintf(first, sizeof first, "step %ld, sequence %lld, token %lld: output %lld: %.9g vs %.9g",
                                 step, (long long)b, (long long)t, (long long)e, (double)u, (double)v);
                    max_diff = d > max_diff || d != d ? d : max_diff;
                }
                committed++;
            }
            /* Committed state (snapshot) and window of every layer: spec group T-a and columns a..,
             * against the sequential run's group 0 and columns 1.. (replay: the window only; its
             * state was compared above when it was committed). */
            for (int l = 0; ok && l < layers; l++) {
                ok = fetch(backend, &run[0].caches[l], run[0].seqs[b], o.replay ? 0 : T - a, a, sa, state_bytes, wa,
                           window_bytes) &&
                     fetch(backend, &run[1].caches[l], run[1].seqs[b], 0, 1, sb, state_bytes, wb, window_bytes);
                if (o.replay)
                    memcpy(sa, sb, state_bytes);
                else
                    states_compared += l == 0;
                if (ok && (memcmp(sa, sb, state_bytes) != 0 || memcmp(wa, wb, window_bytes) != 0) && first[0] == '\0') {
                    snprintf(first, sizeof first, "step %ld, sequence %lld, layer %d: committed %s differs", step,
                             (long long)b, l, memcmp(sa, sb, state_bytes) != 0 ? "state" : "conv window");
                    max_diff = max_diff > 0 ? max_diff : 1e-45; /* bytes differ: never report 0 */
                }
            }
        }
        if (!ok)
            fprintf(stderr, "gdn check spec: step %ld: %s\n", step, gdn_error_detail());
        if (!o.json && (step + 1) % 500 == 0)
            fprintf(stderr, "gdn check spec: %ld of %ld steps, %ld tokens committed%s\n", step + 1, o.steps, committed,
                    first[0] ? ", DIFFERENT" : "");
    }
    /* The free slots between the spec run's sequences: never written, so still zero. */
    for (int32_t slot = 0; ok && !o.consecutive && slot < 2 * (int32_t)B; slot += 2)
        for (int l = 0; ok && l < layers; l++) {
            const gdn_block_cache *bc = &run[0].caches[l];
            for (int64_t g = 0; ok && g < bc->states.ne[3]; g++) {
                ok = fetch(backend, bc, slot, g, 0, sa, state_bytes, wa, window_bytes);
                for (size_t i = 0; ok && i < state_bytes + window_bytes && first[0] == '\0'; i++)
                    if ((i < state_bytes ? sa[i] : wa[i - state_bytes]) != 0) {
                        snprintf(first, sizeof first, "layer %d: free slot %d was written (its %s)", l, (int)slot,
                                 i < state_bytes ? "state" : "conv window");
                        max_diff = max_diff > 0 ? max_diff : 1e-45;
                    }
            }
        }
    const int identical = ok && first[0] == '\0';
    const char *name = gdn_backend_name(backend), *scheme = o.replay ? "replay" : "snapshot";
    if (o.json)
        printf("{\"backend\":\"%s\",\"scheme\":\"%s\",\"state_dtype\":\"%s\",\"slots\":\"%s\",\"steps\":%ld,"
               "\"T\":%lld,\"B\":%lld,\"layers\":%d,"
               "\"accept\":\"%s\",\"ring\":%ld,\"mixed\":%s,\"tokens_committed\":%ld,\"states_compared\":%ld,"
               "\"identical\":%s,\"max_abs_diff\":%.9g,\"first_difference\":\"%s\"}\n",
               name, scheme, o.state == GDN_DTYPE_BF16 ? "bf16" : "f32", o.consecutive ? "consecutive" : "scattered",
               step, (long long)T, (long long)B, layers,
               o.accept == 0 ? "all" : o.accept == 1 ? "none" : o.accept == 2 ? "random" : "fixed",
               o.replay ? o.ring : 0L, o.mixed ? "true" : "false", committed, states_compared,
               identical ? "true" : "false", max_diff, first);
    else
        printf("gdn check spec: backend %s, scheme %s (%s state, %s slots), %ld steps of T=%lld for %lld sequences, "
               "%d layers, %ld tokens committed, %ld committed states compared: %s (max |difference| %g)%s%s\n", name,
               scheme, o.state == GDN_DTYPE_BF16 ? "bf16" : "f32", o.consecutive ? "consecutive" : "scattered", step,
               (long long)T, (long long)B, layers, committed, states_compared,
               identical ? "bit-identical to sequential decoding" : "DIFFERENT", max_diff, first[0] ? "; first: " : "",
               first);

    for (int k = 0; k < 2; k++) {
        for (int l = 0; run[k].graphs && l < layers; l++)
            gdn_graph_free(run[k].graphs[l]);
        gdn_cache_free(run[k].cache);
        if (run[k].x)
            gdn_backend_dealloc(backend, run[k].x);
        free(run[k].seqs), free(run[k].caches), free(run[k].graphs), free(run[k].outs);
    }
    for (int l = 0; w && l < layers; l++)
        gdn_block_weights_free(&w[l]);
    free(w), free(x), free(out), free(x1), free(out1), free(sa), free(sb), free(wa), free(wb);
    free(order), free(step_seqs), free(ones), free(tokens);
    gdn_backend_free(backend);
    return identical ? 0 : 1;
}
