/* cmd_bench.c: `gdn bench`: time the GDN op on the Qwen3.6-35B-A3B GDN stack shapes (30 layers,
 * Hk 16, Hv 32, D 128) for decode (T=1, K=1) and MTP verify (T=4, K=4), and compare the bytes it
 * must move with the machine's copy bandwidth measured in the same run. */
#include "tool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gdn bench [options]\n"
    "\n"
    "Times the Gated DeltaNet op alone on the GDN layers of Qwen3.6-35B-A3B (Hk 16, Hv 32,\n"
    "Dk = Dv = 128, fp32 state) and prints, per row, the time of one layer call, the minimum bytes\n"
    "it must move (state read once, each snapshot written once, inputs and outputs once), the\n"
    "achieved bandwidth and its share of the device copy bandwidth measured in the same run.\n"
    "\n"
    "options:\n"
    "  --backend cpu|cuda   backend (default: cuda when a GPU is present, else cpu)\n"
    "  --batch LIST         comma-separated batch sizes (default cuda 1,8,64,256; cpu 1,16)\n"
    "  --tokens T --K K     one row shape instead of the default pair (T=1 K=1) and (T=4 K=4)\n"
    "  --layers N           layer calls per step (default 30)\n"
    "  --distinct N         at most N distinct buffer sets per step (default: one per layer as far\n"
    "                       as memory allows); --distinct 1 reuses one set, as op micro-benchmarks\n"
    "                       such as ggml's test-backend-ops do, so small states stay in cache\n"
    "  --graphs on|off      record each step once and replay it as one CUDA graph (default on;\n"
    "                       the CPU backend has no recording and always runs calls one by one)\n"
    "  --reps N             timed steps per row, median reported (default: about 1 s of work, 5..50)\n"
    "  --json               one JSON object per row instead of the table\n"
    "  --stack              the whole GDN block stack as graphs, passes off and on, instead of\n"
    "                       the op alone (see gdn bench --stack --help)\n"
    "\n"
    "Each step runs N layer calls with distinct state buffers (as many as fit in a memory budget,\n"
    "so the state is never served from cache; the 'sets' column says how many); the state is\n"
    "updated in place (state = states[0], as in a recurrent cache).\n";

typedef struct bench_config {
    const char *backend_name;
    int64_t batches[16];
    int n_batches;
    int64_t T, K; /* 0: default pair */
    int layers, reps, json;
    int graphs;   /* record each step once and replay it (CUDA graphs) */
    int distinct; /* at most this many distinct layer buffer sets (0: as many as fit the budget) */
} bench_config;

enum { Hk = 16, Hv = 32, D = 128 };

/* One layer's buffers on the backend. */
typedef struct layer_buffers {
    void *q, *k, *v, *g, *beta, *o, *states;
} layer_buffers;

/* Fill `bytes` of backend memory with a repeating pattern of values in [lo, hi). */
static int fill(gdn_backend *backend, void *dst, size_t bytes, float lo, float hi, unsigned seed)
{
    enum { CHUNK = 1 << 20 }; /* floats */
    float *pattern = malloc(CHUNK * sizeof(float));
    if (pattern == NULL)
        return 0;
    uint32_t x = seed * 2654435761u + 1;
    for (int i = 0; i < CHUNK; i++) {
        x = x * 1664525u + 1013904223u;
        pattern[i] = lo + (hi - lo) * (float)(x >> 8) / 16777216.0f;
    }
    int ok = 1;
    for (size_t off = 0; ok && off < bytes; off += CHUNK * sizeof(float)) {
        size_t n = bytes - off < CHUNK * sizeof(float) ? bytes - off : CHUNK * sizeof(float);
        ok = gdn_backend_upload(backend, (char *)dst + off, pattern, n) == GDN_OK;
    }
    free(pattern);
    return ok;
}

/* Device copy bandwidth in GB/s, counting bytes read plus bytes written; median of runs. */
static double measure_copy(gdn_backend *backend, size_t bytes)
{
    void *a = NULL, *b = NULL;
    double result = 0;
    if (gdn_backend_alloc(backend, bytes, &a) == GDN_OK && gdn_backend_alloc(backend, bytes, &b) == GDN_OK &&
        fill(backend, a, bytes, -1, 1, 1) && fill(backend, b, bytes, -1, 1, 2)) {
        double ms[15];
        int ok = 1;
        for (int i = 0; i < 17 && ok; i++) {
            double t = 0;
            ok = gdn_backend_timer_start(backend) == GDN_OK && gdn_backend_copy(backend, b, a, bytes) == GDN_OK &&
                 gdn_backend_timer_stop(backend, &t) == GDN_OK;
            if (i >= 2)
                ms[i - 2] = t; /* two warm-up copies */
        }
        if (ok) {
            qsort(ms, 15, sizeof ms[0], gdn_tool_compare_double);
            result = 2.0 * (double)bytes / (ms[7] * 1e-3) / 1e9;
        }
    }
    gdn_backend_dealloc(backend, a);
    gdn_backend_dealloc(backend, b);
    return result;
}

typedef struct row_result {
    double us_per_layer, us_per_step, min_bytes, gbps;
    int sets, reps, recorded;
} row_result;

/* Queue one step: cfg->layers op calls over the layer buffer sets in turn. */
static int queue_step(gdn_backend *backend, const bench_config *cfg, const layer_buffers *L, int sets, int64_t B,
                      int64_t T, int64_t K)
{
    const int64_t N = T < K ? T : K;
    const int64_t ne_qk[4] = {D, Hk, T, B}, ne_v[4] = {D, Hv, T, B}, ne_gate[3] = {Hv, T, B};
    const int64_t ne_states[5] = {D, D, Hv, B, N};
    gdn_gated_delta_net_params params = gdn_gated_delta_net_params_default();
    params.n_snapshots = (int32_t)K;
    for (int l = 0; l < cfg->layers; l++) {
        const layer_buffers *b = &L[l % sets];
        gdn_gated_delta_net_args a;
        memset(&a, 0, sizeof a); /* no state_index: each layer reads its own state */
        a.q = gdn_tensor_contiguous(b->q, GDN_DTYPE_F32, 4, ne_qk);
        a.k = gdn_tensor_contiguous(b->k, GDN_DTYPE_F32, 4, ne_qk);
        a.v = gdn_tensor_contiguous(b->v, GDN_DTYPE_F32, 4, ne_v);
        a.g = gdn_tensor_contiguous(b->g, GDN_DTYPE_F32, 3, ne_gate);
        a.beta = gdn_tensor_contiguous(b->beta, GDN_DTYPE_F32, 3, ne_gate);
        a.o = gdn_tensor_contiguous(b->o, GDN_DTYPE_F32, 4, ne_v);
        a.states = gdn_tensor_contiguous(b->states, GDN_DTYPE_F32, 5, ne_states);
        a.state = a.states; /* in place: the state is read from snapshot slot 0 */
        a.state.n_dims = 4;
        a.state.ne[4] = 1;
        if (gdn_gated_delta_net(backend, &params, &a) != GDN_OK)
            return 0;
    }
    return 1;
}

static int bench_row(gdn_backend *backend, const bench_config *cfg, int64_t B, int64_t T, int64_t K,
                     size_t budget, row_result *r)
{
    const int64_t N = T < K ? T : K;
    const size_t f = sizeof(float);
    const size_t qk = (size_t)(B * T * Hk * D) * f, v = (size_t)(B * T * Hv * D) * f;
    const size_t gate = (size_t)(B * T * Hv) * f, state = (size_t)(B * Hv * D * D) * f;
    const size_t per_layer = 2 * qk + 2 * v + 2 * gate + (size_t)N * state;
    int sets = (int)(budget / per_layer);
    sets = sets < 1 ? 1 : sets > cfg->layers ? cfg->layers : sets;
    if (cfg->distinct > 0 && sets > cfg->distinct)
        sets = cfg->distinct;
    r->sets = sets;
    r->min_bytes = (double)(2 * qk + 2 * v + 2 * gate + state + (size_t)N * state);

    layer_buffers *L = calloc((size_t)sets, sizeof *L);
    int ok = L != NULL;
    for (int s = 0; ok && s < sets; s++) {
        ok = gdn_backend_alloc(backend, qk, &L[s].q) == GDN_OK && gdn_backend_alloc(backend, qk, &L[s].k) == GDN_OK &&
             gdn_backend_alloc(backend, v, &L[s].v) == GDN_OK && gdn_backend_alloc(backend, gate, &L[s].g) == GDN_OK &&
             gdn_backend_alloc(backend, gate, &L[s].beta) == GDN_OK &&
             gdn_backend_alloc(backend, v, &L[s].o) == GDN_OK &&
             gdn_backend_alloc(backend, (size_t)N * state, &L[s].states) == GDN_OK;
        /* q and k with entries ~ +-1/sqrt(D) (unit-ish norm), log-decay in [-2, -0.01] */
        ok = ok && fill(backend, L[s].q, qk, -0.15f, 0.15f, 10 * s + 1) &&
             fill(backend, L[s].k, qk, -0.15f, 0.15f, 10 * s + 2) && fill(backend, L[s].v, v, -1, 1, 10 * s + 3) &&
             fill(backend, L[s].g, gate, -2.0f, -0.01f, 10 * s + 4) &&
             fill(backend, L[s].beta, gate, 0, 1, 10 * s + 5) &&
             fill(backend, L[s].states, (size_t)N * state, -0.1f, 0.1f, 10 * s + 6);
    }
    if (!ok)
        fprintf(stderr, "gdn bench: B=%lld T=%lld: cannot set up buffers: %s\n", (long long)B, (long long)T,
                gdn_error_detail());

    /* One step: `layers` op calls, recorded once and replayed where the backend can (CUDA
     * graphs), else queued call by call. */
    gdn_recording *recording = NULL;
    if (ok && cfg->graphs && gdn_backend_record_begin(backend) == GDN_OK) {
        ok = queue_step(backend, cfg, L, sets, B, T, K);
        gdn_status st = gdn_backend_record_end(backend, &recording);
        ok = ok && st == GDN_OK;
    }
    r->recorded = recording != NULL;
    double *times = NULL;
    int reps = cfg->reps;
    for (int rep = -2; ok && (rep < reps || reps == 0); rep++) {
        double ms = 0;
        ok = gdn_backend_timer_start(backend) == GDN_OK;
        ok = ok && (recording ? gdn_recording_replay(recording) == GDN_OK : queue_step(backend, cfg, L, sets, B, T, K));
        ok = ok && gdn_backend_timer_stop(backend, &ms) == GDN_OK;
        if (!ok) {
            fprintf(stderr, "gdn bench: B=%lld T=%lld: %s\n", (long long)B, (long long)T, gdn_error_detail());
            break;
        }
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
        double step_ms = times[reps / 2];
        r->reps = reps;
        r->us_per_step = step_ms * 1e3;
        r->us_per_layer = r->us_per_step / cfg->layers;
        r->gbps = r->min_bytes / (r->us_per_layer * 1e-6) / 1e9;
    }
    free(times);
    gdn_recording_free(recording);
    for (int s = 0; L && s < sets; s++) {
        void *all[] = {L[s].q, L[s].k, L[s].v, L[s].g, L[s].beta, L[s].o, L[s].states};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            gdn_backend_dealloc(backend, all[i]);
    }
    free(L);
    return ok;
}

static int parse_args(int argc, char **argv, bench_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->layers = 30;
    cfg->graphs = 1;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        }
        if (strcmp(opt, "--json") == 0) {
            cfg->json = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "gdn bench: unknown option or missing value: '%s'\n%s", opt, usage);
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
            if (!gdn_tool_parse_batches("gdn bench", val, cfg->batches, 16, &cfg->n_batches))
                return 0;
        } else if (strcmp(opt, "--tokens") == 0 && gdn_tool_parse_int(val, 1, 4096, &n)) {
            cfg->T = n;
        } else if (strcmp(opt, "--K") == 0 && gdn_tool_parse_int(val, 1, 64, &n)) {
            cfg->K = n;
        } else if (strcmp(opt, "--graphs") == 0 && (strcmp(val, "on") == 0 || strcmp(val, "off") == 0)) {
            cfg->graphs = strcmp(val, "on") == 0;
        } else if (strcmp(opt, "--distinct") == 0 && gdn_tool_parse_int(val, 1, 1000, &n)) {
            cfg->distinct = (int)n;
        } else if (strcmp(opt, "--layers") == 0 && gdn_tool_parse_int(val, 1, 1000, &n)) {
            cfg->layers = (int)n;
        } else if (strcmp(opt, "--reps") == 0 && gdn_tool_parse_int(val, 1, 100000, &n)) {
            cfg->reps = (int)n;
        } else {
            fprintf(stderr, "gdn bench: bad option or value: %s %s\n%s", opt, val, usage);
            return 0;
        }
    }
    if (cfg->K == 0 && cfg->T != 0) /* --tokens alone: keep every token's state */
        cfg->K = cfg->T;
    if (cfg->T == 0 && cfg->K != 0)
        cfg->T = 1;
    return 1;
}

int gdn_cmd_bench(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--stack") == 0)
            return gdn_cmd_bench_stack(argc, argv);
    bench_config cfg;
    if (!parse_args(argc, argv, &cfg))
        return 2;
    gdn_backend *backend = gdn_tool_open_backend(cfg.backend_name);
    if (backend == NULL)
        return 1;
    const int cuda = gdn_backend_kind_of(backend) == GDN_BACKEND_CUDA;
    if (cfg.n_batches == 0) {
        const int64_t gpu[] = {1, 8, 64, 256}, cpu[] = {1, 16};
        const int64_t *list = cuda ? gpu : cpu;
        cfg.n_batches = cuda ? 4 : 2;
        memcpy(cfg.batches, list, (size_t)cfg.n_batches * sizeof list[0]);
    }
    /* Memory for distinct per-layer buffers: enough to keep every state out of the caches. */
    const size_t budget = cuda ? (size_t)24 << 30 : (size_t)1536 << 20;
    const size_t copy_bytes = cuda ? (size_t)1 << 30 : (size_t)256 << 20;

    fprintf(stderr, "gdn bench: %s; measuring copy bandwidth (%zu MiB)...\n", gdn_backend_name(backend),
            copy_bytes >> 20);
    double copy_gbps = measure_copy(backend, copy_bytes);
    if (copy_gbps <= 0) {
        fprintf(stderr, "gdn bench: copy bandwidth measurement failed: %s\n", gdn_error_detail());
        gdn_backend_free(backend);
        return 1;
    }
    if (!cfg.json) {
        printf("gdn bench: GDN op alone, Qwen3.6-35B-A3B GDN shapes (Hk=%d Hv=%d D=%d, fp32 state), %d layers/step\n",
               Hk, Hv, D, cfg.layers);
        printf("backend: %s\n", gdn_backend_name(backend));
        printf("ceiling: device copy %.1f GB/s (bytes read + written, median of 15)\n\n", copy_gbps);
        printf("%4s %3s %5s %12s %12s %14s %10s %9s %6s %5s\n", "T", "K", "B", "us/layer", "us/step", "min MB/layer",
               "GB/s", "% ceiling", "graph", "sets");
    }
    const int64_t shapes[2][2] = {{1, 1}, {4, 4}};
    int n_shapes = cfg.T ? 1 : 2, failed = 0;
    for (int s = 0; s < n_shapes; s++) {
        int64_t T = cfg.T ? cfg.T : shapes[s][0], K = cfg.T ? cfg.K : shapes[s][1];
        for (int b = 0; b < cfg.n_batches; b++) {
            row_result r;
            if (!bench_row(backend, &cfg, cfg.batches[b], T, K, budget, &r)) {
                failed = 1;
                continue;
            }
            double ratio = r.gbps / copy_gbps;
            if (cfg.json)
                printf("{\"backend\":\"%s\",\"device\":\"%s\",\"T\":%lld,\"K\":%lld,\"B\":%lld,\"Hk\":%d,\"Hv\":%d,"
                       "\"D\":%d,\"layers\":%d,\"distinct_layer_buffers\":%d,\"reps\":%d,\"us_per_layer\":%.3f,"
                       "\"us_per_step\":%.3f,\"min_bytes_per_layer\":%.0f,\"gbps\":%.2f,\"copy_gbps\":%.2f,"
                       "\"ceiling_ratio\":%.4f,\"graph\":%s}\n",
                       cuda ? "cuda" : "cpu", gdn_backend_name(backend), (long long)T, (long long)K,
                       (long long)cfg.batches[b], Hk, Hv, D, cfg.layers, r.sets, r.reps, r.us_per_layer, r.us_per_step,
                       r.min_bytes, r.gbps, copy_gbps, ratio, r.recorded ? "true" : "false");
            else
                printf("%4lld %3lld %5lld %12.2f %12.1f %14.2f %10.1f %8.1f%% %6s %5d\n", (long long)T, (long long)K,
                       (long long)cfg.batches[b], r.us_per_layer, r.us_per_step, r.min_bytes / 1e6, r.gbps,
                       100.0 * ratio, r.recorded ? "yes" : "no", r.sets);
            fflush(stdout);
        }
    }
    gdn_backend_free(backend);
    return failed;
}
