/* cmd_bench_prefill.c: `gdn bench --prefill`: one GDN layer of Qwen3.6-35B-A3B over a prompt of T
 * tokens per sequence, token by token (chunk -1) and in the chunked form, with tokens per second
 * for each; with --check, the outputs and final state of sequence 0 under both forms against the
 * float64 recurrence. */
#include "tool.h"
#include "core/gdn_op.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gdn bench --prefill [options]\n"
    "\n"
    "Times one GDN layer of Qwen3.6-35B-A3B (Hk 16, Hv 32, Dk = Dv = 128, q and k L2-normalised\n"
    "in the op, log-decay g in [-1, -0.001], beta in [0, 1]) over a prompt of T tokens per\n"
    "sequence, run token by token (chunk -1) and in the chunked form (include/gdn.h), and prints\n"
    "the median time of one call of each, tokens per second (B * T over the time) and the\n"
    "speed-up of the chunked form. 'auto' says which form the backend picks by itself (chunk 0)\n"
    "at that T.\n"
    "\n"
    "options:\n"
    "  --backend cpu|cuda   backend (default: cuda when a GPU is present, else cpu)\n"
    "  --tokens LIST        prompt lengths (default cuda 512,4096,16384; cpu 512,4096)\n"
    "  --batch LIST         sequences per call (default cuda 1,8; cpu 1)\n"
    "  --chunk C            tokens per chunk: 16, 32 or 64 (default 32, what chunk 0 takes); CUDA\n"
    "                       GPUs with less shared memory than Hopper refuse 64 at this D = 128\n"
    "                       (gdn_backend_chunk_fits in include/gdn.h)\n"
    "  --tf32               the chunked form's products in one TF32 pass (params.chunk_tf32; CUDA\n"
    "                       only, the CPU ignores it) instead of about FP32 accuracy\n"
    "  --reps N             timed calls per form, median reported (default: about 1 s, 3..20)\n"
    "  --check              also compare sequence 0's outputs and final state of both forms with\n"
    "                       the float64 recurrence, computed on the host (seconds for T = 16384):\n"
    "                       max |x - ref| / max |ref| and the relative L2 error, o and state\n"
    "  --json               one JSON object per row instead of the table\n";

enum { Hk = 16, Hv = 32, D = 128 };

typedef struct prefill_config {
    const char *backend_name;
    int64_t tokens[16], batches[16];
    int n_tokens, n_batches, chunk, reps, check, json, tf32;
} prefill_config;

/* The buffers of one row: B sequences of T tokens, one state slot each (updated in place). */
typedef struct prefill_buffers {
    void *q, *k, *v, *g, *beta, *o, *state;
    size_t bytes[7];
} prefill_buffers;

static int fill(gdn_backend *backend, void *dst, size_t bytes, float lo, float hi, uint64_t seed)
{
    enum { CHUNK = 1 << 20 };
    float *x = malloc(CHUNK * sizeof *x);
    int ok = x != NULL;
    for (size_t off = 0; ok && off < bytes; off += CHUNK * sizeof *x) {
        const size_t n = bytes - off < CHUNK * sizeof *x ? bytes - off : CHUNK * sizeof *x;
        for (size_t i = 0; i < n / sizeof *x; i++)
            x[i] = lo + (hi - lo) * 0.5f * (gdn_tool_uniform(&seed) + 1.0f);
        ok = gdn_backend_upload(backend, (char *)dst + off, x, n) == GDN_OK;
    }
    free(x);
    return ok;
}

static gdn_gated_delta_net_args args_of(const prefill_buffers *p, int64_t B, int64_t T)
{
    const int64_t ne_qk[4] = {D, Hk, T, B}, ne_v[4] = {D, Hv, T, B}, ne_gate[3] = {Hv, T, B};
    const int64_t ne_states[5] = {D, D, Hv, B, 1};
    gdn_gated_delta_net_args a;
    memset(&a, 0, sizeof a);
    a.q = gdn_tensor_contiguous(p->q, GDN_DTYPE_F32, 4, ne_qk);
    a.k = gdn_tensor_contiguous(p->k, GDN_DTYPE_F32, 4, ne_qk);
    a.v = gdn_tensor_contiguous(p->v, GDN_DTYPE_F32, 4, ne_v);
    a.g = gdn_tensor_contiguous(p->g, GDN_DTYPE_F32, 3, ne_gate);
    a.beta = gdn_tensor_contiguous(p->beta, GDN_DTYPE_F32, 3, ne_gate);
    a.o = gdn_tensor_contiguous(p->o, GDN_DTYPE_F32, 4, ne_v);
    a.states = gdn_tensor_contiguous(p->state, GDN_DTYPE_F32, 5, ne_states);
    a.state = a.states; /* in place, as a cache slot */
    a.state.n_dims = 4;
    a.state.ne[4] = 1;
    return a;
}

static void buffers_free(gdn_backend *backend, prefill_buffers *p)
{
    void *all[] = {p->q, p->k, p->v, p->g, p->beta, p->o, p->state};
    for (int i = 0; i < 7; i++)
        gdn_backend_dealloc(backend, all[i]);
    memset(p, 0, sizeof *p);
}

static int buffers_init(gdn_backend *backend, prefill_buffers *p, int64_t B, int64_t T)
{
    memset(p, 0, sizeof *p);
    const size_t f = sizeof(float);
    const size_t qk = (size_t)(B * T * Hk * D) * f, v = (size_t)(B * T * Hv * D) * f, gate = (size_t)(B * T * Hv) * f;
    const size_t state = (size_t)(B * Hv * D * D) * f;
    void **ptrs[7] = {&p->q, &p->k, &p->v, &p->g, &p->beta, &p->o, &p->state};
    const size_t bytes[7] = {qk, qk, v, gate, gate, v, state};
    int ok = 1;
    for (int i = 0; ok && i < 7; i++) {
        p->bytes[i] = bytes[i];
        ok = gdn_backend_alloc(backend, bytes[i], ptrs[i]) == GDN_OK;
    }
    ok = ok && fill(backend, p->q, qk, -1, 1, 1) && fill(backend, p->k, qk, -1, 1, 2) &&
         fill(backend, p->v, v, -1, 1, 3) && fill(backend, p->g, gate, -1.0f, -0.001f, 4) &&
         fill(backend, p->beta, gate, 0, 1, 5) && fill(backend, p->state, state, -0.1f, 0.1f, 6);
    if (!ok)
        fprintf(stderr, "gdn bench --prefill: B=%lld T=%lld: cannot set up buffers: %s\n", (long long)B,
                (long long)T, gdn_error_detail());
    return ok;
}

/* Median milliseconds of one call with chunk `chunk` (the state evolves in place). */
static int time_form(gdn_backend *backend, const prefill_config *cfg, const prefill_buffers *p, int64_t B,
                     int64_t T, int chunk, double *median_ms)
{
    gdn_gated_delta_net_params params = gdn_gated_delta_net_params_default();
    params.l2norm = 1;
    params.chunk = chunk;
    params.chunk_tf32 = cfg->tf32;
    const gdn_gated_delta_net_args a = args_of(p, B, T);
    double times[20];
    int reps = cfg->reps;
    for (int rep = -1; rep < reps; rep++) {
        double ms = 0;
        if (gdn_backend_timer_start(backend) != GDN_OK || gdn_gated_delta_net(backend, &params, &a) != GDN_OK ||
            gdn_backend_timer_stop(backend, &ms) != GDN_OK) {
            fprintf(stderr, "gdn bench --prefill: B=%lld T=%lld chunk %d: %s\n", (long long)B, (long long)T, chunk,
                    gdn_error_detail());
            return 0;
        }
        if (rep == -1 && reps == 0) {
            reps = ms > 0 ? (int)(1000.0 / ms) : 20;
            reps = reps < 3 ? 3 : reps > 20 ? 20 : reps;
        }
        if (rep >= 0)
            times[rep] = ms;
    }
    qsort(times, (size_t)reps, sizeof times[0], gdn_tool_compare_double);
    *median_ms = times[reps / 2];
    return 1;
}

/* Errors of one form against the reference: max |x - r| / max |r| and sqrt(sum (x-r)^2 / sum r^2). */
typedef struct form_error {
    double o_max, o_l2, s_max, s_l2;
} form_error;

static void error_of(const float *x, const double *r, size_t n, double *max_rel, double *l2)
{
    double dmax = 0, rmax = 0, d2 = 0, r2 = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)x[i] - r[i]);
        dmax = d > dmax ? d : dmax;
        rmax = fabs(r[i]) > rmax ? fabs(r[i]) : rmax;
        d2 += d * d, r2 += r[i] * r[i];
    }
    *max_rel = dmax / (rmax > 0 ? rmax : 1);
    *l2 = sqrt(d2 / (r2 > 0 ? r2 : 1));
}

/* Sequence 0 under both forms (index 0: token by token, 1: chunked) from the same initial state,
 * against the float64 recurrence on the host. */
static int check_row(gdn_backend *backend, const prefill_config *cfg, const prefill_buffers *p, int64_t B, int64_t T,
                     form_error err[2])
{
    const size_t n_o = (size_t)(T * Hv * D), n_s = (size_t)(Hv * D * D);
    float *host[5] = {NULL}, *state0 = malloc(n_s * sizeof(float)), *o = malloc(n_o * sizeof(float));
    float *s = malloc(n_s * sizeof(float));
    double *o_ref = malloc(n_o * sizeof(double)), *s_ref = malloc(n_s * sizeof(double));
    const size_t per_seq[5] = {p->bytes[0] / (size_t)B, p->bytes[1] / (size_t)B, p->bytes[2] / (size_t)B,
                               p->bytes[3] / (size_t)B, p->bytes[4] / (size_t)B};
    void *src[5] = {p->q, p->k, p->v, p->g, p->beta};
    int ok = state0 && o && s && o_ref && s_ref;
    for (int i = 0; ok && i < 5; i++)
        ok = (host[i] = malloc(per_seq[i])) != NULL &&
             gdn_backend_download(backend, host[i], src[i], per_seq[i]) == GDN_OK;
    ok = ok && gdn_backend_download(backend, state0, p->state, n_s * sizeof(float)) == GDN_OK;
    gdn_gated_delta_net_params params = gdn_gated_delta_net_params_default();
    params.l2norm = 1;
    params.chunk_tf32 = cfg->tf32;
    if (ok) { /* the reference, sequence 0 alone */
        const int64_t ne_qk[4] = {D, Hk, T, 1}, ne_v[4] = {D, Hv, T, 1}, ne_gate[3] = {Hv, T, 1};
        const int64_t ne_s[4] = {D, D, Hv, 1}, ne_states[5] = {D, D, Hv, 1, 1};
        gdn_gated_delta_net_args r = {gdn_tensor_contiguous(host[0], GDN_DTYPE_F32, 4, ne_qk),
                                      gdn_tensor_contiguous(host[1], GDN_DTYPE_F32, 4, ne_qk),
                                      gdn_tensor_contiguous(host[2], GDN_DTYPE_F32, 4, ne_v),
                                      gdn_tensor_contiguous(host[3], GDN_DTYPE_F32, 3, ne_gate),
                                      gdn_tensor_contiguous(host[4], GDN_DTYPE_F32, 3, ne_gate),
                                      gdn_tensor_contiguous(state0, GDN_DTYPE_F32, 4, ne_s),
                                      gdn_tensor_contiguous(o_ref, GDN_DTYPE_F64, 4, ne_v),
                                      gdn_tensor_contiguous(s_ref, GDN_DTYPE_F64, 5, ne_states),
                                      {0},
                                      {0}};
        ok = gdn_gated_delta_net_reference(&params, &r) == GDN_OK;
    }
    const gdn_gated_delta_net_args a = args_of(p, B, T);
    for (int form = 0; ok && form < 2; form++) {
        params.chunk = form == 0 ? -1 : cfg->chunk;
        ok = gdn_backend_upload(backend, p->state, state0, n_s * sizeof(float)) == GDN_OK &&
             gdn_gated_delta_net(backend, &params, &a) == GDN_OK &&
             gdn_backend_download(backend, o, p->o, n_o * sizeof(float)) == GDN_OK &&
             gdn_backend_download(backend, s, p->state, n_s * sizeof(float)) == GDN_OK;
        if (ok) {
            error_of(o, o_ref, n_o, &err[form].o_max, &err[form].o_l2);
            error_of(s, s_ref, n_s, &err[form].s_max, &err[form].s_l2);
        }
    }
    if (!ok)
        fprintf(stderr, "gdn bench --prefill: check B=%lld T=%lld: %s\n", (long long)B, (long long)T,
                gdn_error_detail()[0] ? gdn_error_detail() : "out of host memory");
    for (int i = 0; i < 5; i++)
        free(host[i]);
    free(state0), free(o), free(s), free(o_ref), free(s_ref);
    return ok;
}

static int parse_list(const char *text, int64_t *out, int *n, long max)
{
    *n = 0;
    char copy[256];
    snprintf(copy, sizeof copy, "%s", text);
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long x;
        if (*n >= 16 || !gdn_tool_parse_int(tok, 1, max, &x))
            return 0;
        out[(*n)++] = x;
    }
    return *n > 0;
}

static int parse_args(int argc, char **argv, prefill_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->chunk = 32;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--prefill") == 0)
            continue;
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        }
        if (strcmp(opt, "--json") == 0 || strcmp(opt, "--check") == 0 || strcmp(opt, "--tf32") == 0) {
            *(opt[2] == 'j' ? &cfg->json : opt[2] == 'c' ? &cfg->check : &cfg->tf32) = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "gdn bench --prefill: unknown option or missing value: '%s'\n%s", opt, usage);
            return 0;
        }
        const char *val = argv[++i];
        long n = 0;
        int ok = 1;
        if (strcmp(opt, "--backend") == 0) {
            gdn_backend_kind kind;
            ok = gdn_tool_parse_backend(val, &kind);
            cfg->backend_name = val;
        } else if (strcmp(opt, "--tokens") == 0) {
            ok = parse_list(val, cfg->tokens, &cfg->n_tokens, 1L << 20);
        } else if (strcmp(opt, "--batch") == 0) {
            ok = gdn_tool_parse_batches("gdn bench --prefill", val, cfg->batches, 16, &cfg->n_batches);
        } else if (strcmp(opt, "--chunk") == 0) {
            ok = gdn_tool_parse_int(val, 16, 64, &n) && (n == 16 || n == 32 || n == 64);
            cfg->chunk = (int)n;
        } else if (strcmp(opt, "--reps") == 0) {
            ok = gdn_tool_parse_int(val, 1, 20, &n);
            cfg->reps = (int)n;
        } else {
            fprintf(stderr, "gdn bench --prefill: unknown option '%s'\n%s", opt, usage);
            return 0;
        }
        if (!ok) {
            fprintf(stderr, "gdn bench --prefill: bad value '%s' for %s\n", val, opt);
            return 0;
        }
    }
    return 1;
}

int gdn_cmd_bench_prefill(int argc, char **argv)
{
    prefill_config cfg;
    if (!parse_args(argc, argv, &cfg))
        return 2;
    gdn_backend *backend = gdn_tool_open_backend(cfg.backend_name);
    if (backend == NULL)
        return 1;
    const int cuda = gdn_backend_kind_of(backend) == GDN_BACKEND_CUDA;
    if (cfg.n_tokens == 0) {
        const int64_t dflt[3] = {512, 4096, 16384};
        cfg.n_tokens = cuda ? 3 : 2;
        memcpy(cfg.tokens, dflt, sizeof dflt);
    }
    if (cfg.n_batches == 0) {
        cfg.batches[0] = 1, cfg.batches[1] = 8;
        cfg.n_batches = cuda ? 2 : 1;
    }
    const int64_t min_t = gdn_backend_chunk_min_tokens(backend);
    if (!cfg.json) {
        printf("gdn bench --prefill: one GDN layer of Qwen3.6-35B-A3B (Hk=%d Hv=%d D=%d, fp32 state), chunk %d%s\n"
               "backend: %s; ", Hk, Hv, D, cfg.chunk, cfg.tf32 ? ", TF32 products" : "", gdn_backend_name(backend));
        if (min_t > 0)
            printf("the chunked form is chosen by itself from T >= %lld\n\n", (long long)min_t);
        else
            printf("the chunked form is never chosen by itself (chunk 0 runs token by token)\n\n");
        printf("%6s %3s %13s %13s %14s %14s %8s %7s%s\n", "T", "B", "serial ms", "chunked ms", "serial tok/s",
               "chunked tok/s", "speedup", "auto",
               cfg.check ? "   o err serial/chunked   state err serial/chunked" : "");
    }
    int status = 0;
    for (int ti = 0; ti < cfg.n_tokens; ti++)
        for (int bi = 0; bi < cfg.n_batches; bi++) {
            const int64_t T = cfg.tokens[ti], B = cfg.batches[bi];
            prefill_buffers p;
            double ms[2] = {0, 0};
            form_error err[2];
            memset(err, 0, sizeof err);
            int ok = buffers_init(backend, &p, B, T) && time_form(backend, &cfg, &p, B, T, -1, &ms[0]) &&
                     time_form(backend, &cfg, &p, B, T, cfg.chunk, &ms[1]);
            ok = ok && (!cfg.check || check_row(backend, &cfg, &p, B, T, err));
            buffers_free(backend, &p);
            if (!ok) {
                status = 1;
                continue;
            }
            const double tok = (double)(B * T);
            const char *chosen = min_t > 0 && T >= min_t ? "chunked" : "serial";
            if (cfg.json) {
                printf("{\"mode\":\"prefill\",\"backend\":\"%s\",\"T\":%lld,\"B\":%lld,\"chunk\":%d,\"tf32\":%s,"
                       "\"serial_ms\":%.4f,\"chunked_ms\":%.4f,\"serial_tokens_per_s\":%.1f,"
                       "\"chunked_tokens_per_s\":%.1f,\"speedup\":%.3f,\"auto\":\"%s\"",
                       cuda ? "cuda" : "cpu", (long long)T, (long long)B, cfg.chunk, cfg.tf32 ? "true" : "false",
                       ms[0], ms[1], tok / ms[0] * 1e3,
                       tok / ms[1] * 1e3, ms[0] / ms[1], chosen);
                if (cfg.check)
                    printf(",\"serial_o_max_rel\":%.3g,\"serial_o_rel_l2\":%.3g,\"serial_state_max_rel\":%.3g,"
                           "\"chunked_o_max_rel\":%.3g,\"chunked_o_rel_l2\":%.3g,\"chunked_state_max_rel\":%.3g",
                           err[0].o_max, err[0].o_l2, err[0].s_max, err[1].o_max, err[1].o_l2, err[1].s_max);
                printf("}\n");
            } else {
                printf("%6lld %3lld %13.3f %13.3f %14.0f %14.0f %7.2fx %7s", (long long)T, (long long)B, ms[0], ms[1],
                       tok / ms[0] * 1e3, tok / ms[1] * 1e3, ms[0] / ms[1], chosen);
                if (cfg.check)
                    printf("   %9.2e / %9.2e   %9.2e / %9.2e", err[0].o_max, err[1].o_max, err[0].s_max,
                           err[1].s_max);
                printf("\n");
            }
            fflush(stdout);
        }
    gdn_backend_free(backend);
    return status;
}
