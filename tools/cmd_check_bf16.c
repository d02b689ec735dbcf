/* cmd_check_bf16.c: `gdn check bf16`: what storing the recurrent state in BF16 costs in accuracy.
 * GDN layers (an input rms_norm and the GDN block, synthetic seeded weights, each layer its own)
 * decode the same random tokens twice on one backend, from zero state, one token per sequence
 * per step: once over F32 state pools, once over BF16 pools (the GDN op rounds the state after
 * every token: include/gdn.h). Per step each layer's outputs of the BF16 run are compared with
 * the F32 run's (relative L2 error over the step's outputs, the largest over the layers); at the
 * end every layer's state too. Every layer reads the step's tokens, not the layer before it:
 * chained synthetic layers without a model's residual stream amplify any perturbation of their
 * input several times per layer (4 chained layers turned a 0.7% error of the first into 89%),
 * which would measure the random weights, not the state storage.
 * The F32 run is the baseline, not the truth: both round their arithmetic in F32, and the BF16
 * run adds one rounding of the state (relative 2^-9 at most) per token. The question is whether
 * those roundings add up over a long decode or stay at the level of one. */
#include "tool.h"
#include "model/gdn_block.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gdn check bf16 [options]\n"
    "\n"
    "Decodes the same random tokens through GDN layers twice, with the state stored in F32 and\n"
    "in BF16 (rounded after every token), and prints how far the BF16 run's outputs and states\n"
    "are from the F32 run's: the relative L2 error of each step's outputs (the largest over the\n"
    "layers; at a few steps, the largest and the mean over all steps) and of the final states.\n"
    "Each layer has its own weights and reads the step's tokens (not the layer before: chained\n"
    "synthetic layers without a residual stream amplify any perturbation).\n"
    "Exits 1 if an output is not finite or the largest output error exceeds --max-error.\n"
    "\n"
    "options:\n"
    "  --backend cpu|cuda   backend (default: cuda when a GPU is present, else cpu)\n"
    "  --shape small|qwen3.6  layer sizes: small (hidden 128, Hk 2, Hv 4, D 32; the default) or\n"
    "                       Qwen3.6-35B-A3B's (hidden 2048, Hk 16, Hv 32, D 128)\n"
    "  --steps N            decode steps (default 2000)\n"
    "  --batch B            sequences (default 2)\n"
    "  --layers N           GDN layers, each with its own weights (default 4)\n"
    "  --seed N             weights and tokens (default 1)\n"
    "  --max-error X        the largest per-step output error allowed (default 0.05)\n"
    "  --json               one JSON object: backend, shape, steps, B, layers, output error at\n"
    "                       steps 1, 10, 100, 1000 and the last, its max and mean over all steps,\n"
    "                       the final state error (max over layers), bf16_round_error (one\n"
    "                       rounding of the final F32 states to BF16, for scale), ok\n";

typedef struct bf16_options {
    const char *backend_name;
    long steps, batch, layers, seed;
    int qwen, json;
    double max_error;
} bf16_options;

/* One run: a cache per layer, a graph per layer, the device input. */
typedef struct bf16_run {
    gdn_block_cache *caches;
    gdn_graph **graphs;
    gdn_tensor_id *outs;
    void *x, *slots;
} bf16_run;

static int parse(int argc, char **argv, bf16_options *o)
{
    memset(o, 0, sizeof *o);
    o->steps = 2000, o->batch = 2, o->layers = 4, o->seed = 1, o->max_error = 0.05;
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
        if (i + 1 >= argc) {
            fprintf(stderr, "gdn check bf16: unknown option or missing value: '%s'\n%s", opt, usage);
            return 0;
        }
        const char *val = argv[++i];
        gdn_backend_kind kind;
        if (strcmp(opt, "--backend") == 0 && gdn_tool_parse_backend(val, &kind)) {
            o->backend_name = val;
        } else if (strcmp(opt, "--shape") == 0 && (strcmp(val, "small") == 0 || strcmp(val, "qwen3.6") == 0)) {
            o->qwen = strcmp(val, "qwen3.6") == 0;
        } else if (strcmp(opt, "--steps") == 0 && gdn_tool_parse_int(val, 1, 100000000, &o->steps)) {
        } else if (strcmp(opt, "--batch") == 0 && gdn_tool_parse_int(val, 1, 256, &o->batch)) {
        } else if (strcmp(opt, "--layers") == 0 && gdn_tool_parse_int(val, 1, 64, &o->layers)) {
        } else if (strcmp(opt, "--seed") == 0 && gdn_tool_parse_int(val, 0, 2147483647, &o->seed)) {
        } else if (strcmp(opt, "--max-error") == 0 && gdn_tool_parse_float(val, &o->max_error) &&
                   o->max_error >= 0) {
        } else {
            fprintf(stderr, "gdn check bf16: bad option or value: %s %s\n%s", opt, val, usage);
            return 0;
        }
    }
    return 1;
}

/* The run's layer graphs: B sequences, one token, sequence b in slot b; both passes on. */
static int build_run(gdn_backend *backend, const gdn_block_config *c, const gdn_block_weights *w, bf16_run *r,
                     int layers, int64_t B)
{
    const int64_t ne_x[3] = {c->hidden, 1, B}, ne_slots[1] = {B};
    int32_t *slots = malloc((size_t)B * sizeof *slots);
    r->caches = calloc((size_t)layers, sizeof *r->caches);
    r->graphs = calloc((size_t)layers, sizeof *r->graphs);
    r->outs = calloc((size_t)layers, sizeof *r->outs);
    gdn_status st = slots && r->caches && r->graphs && r->outs ? GDN_OK : GDN_ERROR_OUT_OF_MEMORY;
    for (int64_t b = 0; slots && b < B; b++)
        slots[b] = (int32_t)b;
    if (st == GDN_OK)
        st = gdn_backend_alloc(backend, (size_t)(B * c->hidden) * sizeof(float), &r->x);
    if (st == GDN_OK)
        st = gdn_backend_alloc(backend, (size_t)B * sizeof *slots, &r->slots);
    if (st == GDN_OK)
        st = gdn_backend_upload(backend, r->slots, slots, (size_t)B * sizeof *slots);
    if (st == GDN_OK) /* the planning computes below read it */
        st = gdn_backend_zero(backend, r->x, (size_t)(B * c->hidden) * sizeof(float));
    free(slots);
    gdn_tensor xv = gdn_tensor_contiguous(r->x, GDN_DTYPE_F32, 3, ne_x);
    const gdn_tensor sv = gdn_tensor_contiguous(r->slots, GDN_DTYPE_I32, 1, ne_slots);
    for (int l = 0; st == GDN_OK && l < layers; l++) {
        gdn_tensor_id x = -1, normed = -1, slot = -1;
        gdn_op_params p;
        memset(&p, 0, sizeof p);
        p.norm.eps = c->rms_eps;
        st = gdn_block_cache_init(&r->caches[l], backend, c, B);
        if (st == GDN_OK)
            st = gdn_graph_init(&r->graphs[l]);
        if (st == GDN_OK)
            st = gdn_graph_leaf(r->graphs[l], "x", &xv, GDN_GRAPH_INPUT, &x);
        if (st == GDN_OK)
            st = gdn_graph_leaf(r->graphs[l], "slot", &sv, GDN_GRAPH_INPUT | GDN_GRAPH_OWN_SLOT_INDEX, &slot);
        if (st == GDN_OK)
            st = gdn_graph_intermediate(r->graphs[l], "x_normed", GDN_DTYPE_F32, 3, ne_x, &normed);
        if (st == GDN_OK)
            st = gdn_graph_op(r->graphs[l], GDN_OP_RMS_NORM, &p, 1, &x, 1, &normed);
        if (st == GDN_OK)
            st = gdn_block_build(r->graphs[l], c, &w[l], &r->caches[l], normed, B, 1, slot, 0, &r->outs[l]);
        if (st == GDN_OK)
            st = gdn_graph_pass_copy_elision(r->graphs[l], NULL, NULL);
        if (st == GDN_OK)
            st = gdn_graph_pass_gather_elision(r->graphs[l], NULL, NULL);
        if (st == GDN_OK)
            st = gdn_graph_compute(r->graphs[l], backend); /* plans it (the caches are zeroed below) */
    }
    for (int l = 0; st == GDN_OK && l < layers; l++) { /* every sequence starts from zero state */
        st = gdn_backend_zero(backend, r->caches[l].states.data, gdn_tensor_span(&r->caches[l].states));
        if (st == GDN_OK)
            st = gdn_backend_zero(backend, r->caches[l].conv.data, gdn_tensor_span(&r->caches[l].conv));
    }
    if (st != GDN_OK)
        fprintf(stderr, "gdn check bf16: setup (%s state): %s\n", gdn_dtype_name(c->state_dtype),
                gdn_error_detail());
    return st == GDN_OK;
}

/* One step of a run: upload x, every layer, layer l's output to out + l * (bytes / 4). */
static int step_run(gdn_backend *backend, bf16_run *r, int layers, const float *x, size_t bytes, float *out)
{
    gdn_tensor ov;
    gdn_status st = gdn_backend_upload(backend, r->x, x, bytes);
    for (int l = 0; st == GDN_OK && l < layers; l++)
        st = gdn_graph_compute(r->graphs[l], backend);
    for (int l = 0; st == GDN_OK && l < layers; l++) {
        st = gdn_graph_tensor_view(r->graphs[l], r->outs[l], &ov);
        if (st == GDN_OK)
            st = gdn_backend_download(backend, out + (size_t)l * (bytes / sizeof *out), ov.data, bytes);
    }
    if (st == GDN_OK)
        st = gdn_backend_synchronize(backend);
    if (st != GDN_OK)
        fprintf(stderr, "gdn check bf16: step: %s\n", gdn_error_detail());
    return st == GDN_OK;
}

static void free_run(gdn_backend *backend, bf16_run *r, int layers)
{
    for (int l = 0; l < layers; l++) {
        if (r->graphs)
            gdn_graph_free(r->graphs[l]);
        if (r->caches)
            gdn_block_cache_free(&r->caches[l]);
    }
    if (r->x)
        gdn_backend_dealloc(backend, r->x);
    if (r->slots)
        gdn_backend_dealloc(backend, r->slots);
    free(r->caches), free(r->graphs), free(r->outs);
}

/* Relative L2 errors of layer l's BF16 state pool against its F32 one, and of the F32 pool
 * rounded once to BF16 against itself (the scale of one rounding). */
static int state_errors(gdn_backend *backend, const gdn_block_cache *f32, const gdn_block_cache *bf16, double *error,
                        double *one_rounding)
{
    const int64_t n = gdn_tensor_count(&f32->states);
    float *a = malloc((size_t)n * sizeof *a);
    uint16_t *h = malloc((size_t)n * sizeof *h);
    int ok = a && h && gdn_backend_download(backend, a, f32->states.data, (size_t)n * sizeof *a) == GDN_OK &&
             gdn_backend_download(backend, h, bf16->states.data, (size_t)n * sizeof *h) == GDN_OK;
    double diff2 = 0, round2 = 0, ref2 = 0;
    for (int64_t i = 0; ok && i < n; i++) {
        const double d = (double)gdn_bf16_to_f32(h[i]) - a[i];
        const double r = (double)gdn_bf16_to_f32(gdn_bf16_from_f32(a[i])) - a[i];
        diff2 += d * d, round2 += r * r, ref2 += (double)a[i] * a[i];
    }
    *error = sqrt(diff2 / (ref2 > 0 ? ref2 : 1));
    *one_rounding = sqrt(round2 / (ref2 > 0 ? ref2 : 1));
    free(a), free(h);
    return ok;
}

int gdn_cmd_check_bf16(int argc, char **argv)
{
    bf16_options o;
    if (!parse(argc, argv, &o))
        return 2;
    gdn_backend *backend = gdn_tool_open_backend(o.backend_name);
    if (backend == NULL)
        return 2;
    gdn_block_config c = gdn_block_config_default(); /* Qwen3.6-35B-A3B's sizes */
    if (!o.qwen)
        c.hidden = 128, c.n_k_heads = 2, c.n_v_heads = 4, c.head_dim = 32;
    c.n_snapshots = 1;
    const int layers = (int)o.layers;
    const int64_t B = o.batch, H = c.hidden;
    const size_t bytes = (size_t)(B * H) * sizeof(float);
    gdn_block_weights *w = calloc((size_t)layers, sizeof *w);
    float *x = malloc(bytes), *out[2] = {malloc((size_t)layers * bytes), malloc((size_t)layers * bytes)};
    bf16_run run[2]; /* 0: F32 state, 1: BF16 state */
    memset(run, 0, sizeof run);
    int ok = w && x && out[0] && out[1];
    for (int l = 0; ok && l < layers; l++)
        ok = gdn_block_weights_init(&w[l], backend, &c, (uint64_t)o.seed * 1000 + (uint64_t)l) == GDN_OK;
    if (!ok)
        fprintf(stderr, "gdn check bf16: weights: %s\n", gdn_error_detail());
    for (int k = 0; ok && k < 2; k++) {
        c.state_dtype = k == 0 ? GDN_DTYPE_F32 : GDN_DTYPE_BF16;
        ok = build_run(backend, &c, w, &run[k], layers, B);
    }

    uint64_t rng = (uint64_t)o.seed * 0x9E37ull + 5;
    const long marks[4] = {1, 10, 100, 1000};
    double at_mark[5] = {-1, -1, -1, -1, -1}, max_error = 0, sum_error = 0;
    long step = 0;
    int finite = 1;
    for (; ok && step < o.steps; step++) {
        for (int64_t i = 0; i < B * H; i++) /* the step's tokens (what the embedding would give) */
            x[i] = gdn_tool_uniform(&rng);
        for (int k = 0; ok && k < 2; k++)
            ok = step_run(backend, &run[k], layers, x, bytes, out[k]);
        double error = 0; /* the largest over the layers */
        for (int l = 0; ok && l < layers; l++) {
            const float *f = out[0] + (size_t)l * (size_t)(B * H), *h = out[1] + (size_t)l * (size_t)(B * H);
            double diff2 = 0, ref2 = 0;
            for (int64_t i = 0; i < B * H; i++) {
                finite = finite && isfinite(f[i]) && isfinite(h[i]);
                diff2 += ((double)h[i] - f[i]) * ((double)h[i] - f[i]);
                ref2 += (double)f[i] * f[i];
            }
            const double e = sqrt(diff2 / (ref2 > 0 ? ref2 : 1));
            error = e > error ? e : error;
        }
        max_error = error > max_error ? error : max_error;
        sum_error += error;
        for (int m = 0; m < 4; m++)
            if (step + 1 == marks[m])
                at_mark[m] = error;
        at_mark[4] = error;
        if (!o.json && (step + 1) % 500 == 0)
            fprintf(stderr, "gdn check bf16: %ld of %ld steps, output error now %.3g, max %.3g\n", step + 1, o.steps,
                    error, max_error);
    }
    double state_error = 0, one_rounding = 0;
    for (int l = 0; ok && l < layers; l++) {
        double e, r;
        ok = state_errors(backend, &run[0].caches[l], &run[1].caches[l], &e, &r);
        state_error = e > state_error ? e : state_error;
        one_rounding = r > one_rounding ? r : one_rounding;
    }
    const int pass = ok && finite && max_error <= o.max_error;
    const double mean_error = step > 0 ? sum_error / (double)step : 0;
    if (ok && o.json) {
        printf("{\"backend\":\"%s\",\"shape\":\"%s\",\"steps\":%ld,\"B\":%lld,\"layers\":%d,",
               gdn_backend_name(backend), o.qwen ? "qwen3.6" : "small", step, (long long)B, layers);
        const char *names[5] = {"1", "10", "100", "1000", "last"};
        for (int m = 0; m < 5; m++)
            if (at_mark[m] >= 0)
                printf("\"output_error_%s\":%.4g,", names[m], at_mark[m]);
        printf("\"output_error_max\":%.4g,\"output_error_mean\":%.4g,\"state_error\":%.4g,"
               "\"bf16_round_error\":%.4g,\"finite\":%s,\"ok\":%s}\n", max_error, mean_error, state_error, one_rounding,
               finite ? "true" : "false", pass ? "true" : "false");
    } else if (ok) {
        printf("gdn check bf16: backend %s, %s shape, %ld decode steps of %lld sequences through %d layers\n",
               gdn_backend_name(backend), o.qwen ? "Qwen3.6-35B-A3B" : "small", step, (long long)B, layers);
        printf("  output error (relative L2, BF16 state vs F32 state): step 1 %.3g", at_mark[0]);
        for (int m = 1; m < 4; m++)
            if (at_mark[m] >= 0)
                printf(", step %ld %.3g", marks[m], at_mark[m]);
        printf(", last %.3g; max %.3g, mean %.3g\n", at_mark[4], max_error, mean_error);
        printf("  final state error %.3g (one rounding of the F32 state to BF16: %.3g)\n", state_error, one_rounding);
        printf("  %s\n", pass ? "within --max-error" : finite ? "EXCEEDS --max-error" : "NOT FINITE");
    }
    for (int k = 0; k < 2; k++)
        free_run(backend, &run[k], layers);
    for (int l = 0; w && l < layers; l++)
        gdn_block_weights_free(&w[l]);
    free(w), free(x), free(out[0]), free(out[1]);
    gdn_backend_free(backend);
    return pass ? 0 : 1;
}
