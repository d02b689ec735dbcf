/* test_chunk.c: the chunked form of the Gated DeltaNet op (prefill) on every backend present:
 * against the float64 recurrence for T around the chunk length and well beyond it, odd shapes,
 * both broadcast rules, non-contiguous views and guard regions; prefill followed by decode
 * against the reference of the whole sequence; the cache pattern (state read and snapshots
 * written through an index, in place) bit for bit against the call on the gathered state;
 * batch and thread-count invariance; the backend's own choice (chunk 0) against an explicit
 * chunk; refusals that write nothing. The chunked form reassociates the sums of the recurrence,
 * so it is compared within a tolerance, never bit for bit with the token-by-token op. */
#include "gdn_op_cases.h"

#include <stdio.h>

typedef struct chunk_case {
    op_case c;
    int chunk;
    int tf32; /* params.chunk_tf32 (CUDA: one TF32 pass; the CPU ignores it) */
} chunk_case;

static const chunk_case cases[] = {
    /*  B  T    Hk Hv  D   K  broadcast                  l2 scale lay                 chunk tf32 */
    {{1, 1, 1, 2, 32, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0}, 64, 0},         /* no prefix */
    {{2, 63, 1, 2, 64, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0}, 64, 0},        /* one partial chunk */
    {{2, 64, 2, 4, 128, 1, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_CONTIGUOUS, 0}, 64, 0},
    {{2, 65, 2, 4, 128, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_PADDED, 0}, 64, 0},
    {{2, 65, 2, 4, 128, 2, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0}, 64, 0},       /* exactly one chunk */
    {{1, 200, 1, 3, 16, 4, GDN_BROADCAST_INTERLEAVED, 0, 0.f, LAYOUT_PADDED_ODD, 0}, 16, 0},
    {{3, 200, 2, 6, 32, 3, GDN_BROADCAST_TILED, 1, 0.5f, LAYOUT_PERMUTED, 0}, 32, 0},
    {{1, 200, 2, 2, 256, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_SPACED_INNER, 0}, 64, 0},
    {{1, 1000, 2, 4, 128, 4, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_CONTIGUOUS, 0}, 64, 0},
    {{1, 1000, 1, 2, 64, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_PADDED, 0}, 32, 0},
    {{2, 130, 16, 32, 128, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0}, 64, 0},    /* Qwen3.6 heads */
    {{2, 300, 2, 4, 128, 2, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_PADDED, 0}, 32, 1},       /* TF32 products */
    {{1, 200, 1, 2, 64, 1, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_CONTIGUOUS, 0}, 16, 1},
    /* D = 256 over many blocks: CUDA's scan with 128 rows a block (C = 32) and 64 (C = 64), each
     * with one set of factors in shared memory */
    {{2, 100, 4, 12, 256, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0}, 32, 0},
    {{2, 100, 4, 12, 256, 1, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_CONTIGUOUS, 0}, 64, 0},
};

/* The chunked form's sums run in another order than the recurrence's, over up to C terms, and
 * its decays are exponentials of differences of running sums (exp(gamma_t - gamma_s) rather than
 * a product of exp(g)): a few float roundings more per token, never accumulating over chunks
 * (the state decays). Measured max error over max |ref| is ~1e-6; an indexing or ordering mistake
 * gives errors of order 1. */
#define TOL_CHUNK_REL_L2 2e-5
#define TOL_CHUNK_MAX 2e-4
/* One TF32 pass (10-bit mantissas in, FP32 accumulation): 5e-4 to 7e-4 of max |o| measured on one
 * Qwen3.6 layer (docs/PERF.md); still far below what a wrong index or order gives. */
#define TOL_TF32_REL_L2 2e-3
#define TOL_TF32_MAX 5e-3

static double *alloc_ref(gdn_tensor *t)
{
    t->data = calloc(1, gdn_tensor_span(t));
    return t->data;
}

/* Whether a call left o and states as they were uploaded (nothing written). */
static int unwritten(const op_tensors *ts)
{
    unsigned char *o = malloc(ts->t[O].bytes), *s = malloc(ts->t[STATES].bytes);
    const int same = o && s && test_buffer_download(&ts->t[O].device, o) &&
                     test_buffer_download(&ts->t[STATES].device, s) &&
                     memcmp(o, ts->t[O].host_bytes, ts->t[O].bytes) == 0 &&
                     memcmp(s, ts->t[STATES].host_bytes, ts->t[STATES].bytes) == 0;
    free(o);
    free(s);
    return same;
}

/* A case runs with its chunk length where the backend says it fits the device
 * (gdn_backend_chunk_fits); elsewhere that call must be refused without writing, and the call
 * with chunk 0 runs instead (token by token, or chunks of 32 where those fit). */
static void run_case(const test_backend *tb, int case_index, const chunk_case *cc)
{
    const op_case *c = &cc->c;
    test_rng rng;
    test_rng_seed(&rng, 7000 + (uint64_t)case_index);
    op_tensors ts;
    if (!op_tensors_init(&ts, c, GDN_DTYPE_F32, &rng)) {
        CHECK(0, "case %d: out of memory", case_index);
        op_tensors_free(&ts);
        return;
    }
    gdn_gated_delta_net_params p = case_params(c);
    p.chunk = cc->chunk;
    p.chunk_tf32 = cc->tf32;
    const double tol_l2 = cc->tf32 ? TOL_TF32_REL_L2 : TOL_CHUNK_REL_L2;
    const double tol_max = cc->tf32 ? TOL_TF32_MAX : TOL_CHUNK_MAX;
    const int64_t D = c->D, N = c->T < c->K ? c->T : c->K;
    const int64_t ne_o[] = {D, c->Hv, c->T, c->B}, ne_s[] = {D, D, c->Hv, c->B, N};
    gdn_tensor o_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 4, ne_o);
    gdn_tensor s_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 5, ne_s);
    int ok = alloc_ref(&o_ref) && alloc_ref(&s_ref);
    gdn_gated_delta_net_args ra = {ts.t[Q].host, ts.t[K_].host, ts.t[V].host, ts.t[G].host,
                                   ts.t[BETA].host, ts.t[STATE].host, o_ref, s_ref, {0}, {0}};
    ok = ok && gdn_gated_delta_net_reference(&p, &ra) == GDN_OK;
    CHECK(ok, "case %d reference: %s", case_index, gdn_error_detail());
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    if (ok) {
        gdn_gated_delta_net_args a = device_args(&ts);
        gdn_status st = gdn_gated_delta_net(tb->backend, &p, &a);
        if (!gdn_backend_chunk_fits(tb->backend, c->D, cc->chunk)) {
            CHECK(st == GDN_ERROR_UNSUPPORTED && strstr(gdn_error_detail(), "shared memory") != NULL,
                  "%s chunk case %d (chunk %d does not fit): got %d (%s)", tb->label, case_index, cc->chunk, (int)st,
                  gdn_error_detail());
            CHECK(unwritten(&ts), "%s chunk case %d: the refused call wrote an output", tb->label, case_index);
            printf("  %-10s chunk case %2d: chunk %d refused (shared memory), run with chunk 0\n", tb->label,
                   case_index, cc->chunk);
            p.chunk = 0;
            st = gdn_gated_delta_net(tb->backend, &p, &a);
        }
        CHECK(st == GDN_OK, "%s chunk case %d: %s", tb->label, case_index, gdn_error_detail());
        CHECK(gdn_backend_synchronize(tb->backend) == GDN_OK, "%s: synchronize", tb->label);
        test_compare_output("o", tb->label, case_index, &ts.t[O], &o_ref, tol_l2, tol_max);
        test_compare_output("states", tb->label, case_index, &ts.t[STATES], &s_ref, tol_l2, tol_max);
    }
    printf("  %-10s chunk case %2d: B=%d T=%d Hk=%d Hv=%d D=%3d K=%d C=%d %s%s %s%s\n", tb->label, case_index, c->B,
           c->T, c->Hk, c->Hv, c->D, c->K, cc->chunk, c->broadcast == GDN_BROADCAST_TILED ? "tiled" : "interleaved",
           c->l2norm ? " l2norm" : "", test_layout_names[c->lay], cc->tf32 ? " tf32" : "");
    free(o_ref.data);
    free(s_ref.data);
    op_tensors_free(&ts);
}

/* Run `p` on the case's tensors (freshly uploaded) and download o and states. */
static int run_download(const test_backend *tb, const op_case *c, const gdn_gated_delta_net_params *p,
                        uint64_t seed, unsigned char **o, unsigned char **states, gdn_tensor *o_view,
                        gdn_tensor *s_view)
{
    test_rng rng;
    test_rng_seed(&rng, seed);
    op_tensors ts;
    int ok = op_tensors_init(&ts, c, GDN_DTYPE_F32, &rng);
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    gdn_gated_delta_net_args a = device_args(&ts);
    ok = ok && gdn_gated_delta_net(tb->backend, p, &a) == GDN_OK;
    ok = ok && download_bytes(tb->backend, &a.o, o) && download_bytes(tb->backend, &a.states, states);
    *o_view = a.o;
    *s_view = a.states;
    op_tensors_free(&ts);
    return ok;
}

/* The backend's own choice: with chunk 0 and T at its threshold the call equals the explicit
 * 32-token chunks bit for bit, and below it the token-by-token call (chunk -1); a backend that
 * never chooses chunks (threshold 0) runs T = 300 token by token. */
static void check_auto(const test_backend *tb)
{
    const int64_t min_t = gdn_backend_chunk_min_tokens(tb->backend);
    CHECK(min_t >= 0 && min_t <= 4096, "%s: chunk threshold %lld", tb->label, (long long)min_t);
    if (min_t == 1 || min_t > 4096)
        return;
    for (int below = 0; below < 2; below++) {
        const int T = min_t == 0 ? 300 : (int)(below ? min_t - 1 : min_t);
        const op_case c = {1, T, 1, 2, 64, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0};
        gdn_gated_delta_net_params p = case_params(&c), q = p;
        q.chunk = below || min_t == 0 ? -1 : 32;
        unsigned char *r[2][2] = {{NULL, NULL}, {NULL, NULL}};
        gdn_tensor ov, sv;
        int ok = run_download(tb, &c, &p, 31, &r[0][0], &r[0][1], &ov, &sv) &&
                 run_download(tb, &c, &q, 31, &r[1][0], &r[1][1], &ov, &sv);
        CHECK(ok, "%s auto chunk: %s", tb->label, gdn_error_detail());
        if (ok)
            CHECK(same_bits(&ov, r[0][0], &ov, r[1][0]) && same_bits(&sv, r[0][1], &sv, r[1][1]),
                  "%s: chunk 0 at T=%d differs from chunk %d", tb->label, c.T, q.chunk);
        for (int i = 0; i < 2; i++)
            free(r[i][0]), free(r[i][1]);
    }
}

/* A sequence's results do not depend on the others in the call: a call of c3.B sequences against
 * each sequence alone, chunks of `chunk`. */
static void check_batch_invariance(const test_backend *tb, op_case c3, int64_t chunk)
{
    gdn_gated_delta_net_params p = case_params(&c3);
    p.chunk = chunk;
    unsigned char *o3 = NULL, *s3 = NULL;
    gdn_tensor o3v, s3v;
    int ok = run_download(tb, &c3, &p, 77, &o3, &s3, &o3v, &s3v);
    /* The same inputs as sequence b of the B=3 call: regenerate them and run slice b alone. */
    test_rng rng;
    test_rng_seed(&rng, 77);
    op_tensors ts;
    memset(&ts, 0, sizeof ts); /* freed below even when the B=3 call failed */
    ok = ok && op_tensors_init(&ts, &c3, GDN_DTYPE_F32, &rng);
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    int same = ok;
    for (int64_t b = 0; ok && b < c3.B; b++) {
        gdn_gated_delta_net_args a = device_args(&ts);
        a.q = slice(a.q, 3, b), a.k = slice(a.k, 3, b), a.v = slice(a.v, 3, b), a.o = slice(a.o, 3, b);
        a.g = slice(a.g, 2, b), a.beta = slice(a.beta, 2, b);
        a.state = slice(a.state, 3, b), a.states = slice(a.states, 3, b);
        ok = gdn_gated_delta_net(tb->backend, &p, &a) == GDN_OK;
        unsigned char *o1 = NULL, *s1 = NULL;
        ok = ok && download_bytes(tb->backend, &a.o, &o1) && download_bytes(tb->backend, &a.states, &s1);
        gdn_tensor ob = slice(o3v, 3, b), sb = slice(s3v, 3, b);
        const size_t o_off = (size_t)((char *)ob.data - (char *)o3v.data);
        const size_t s_off = (size_t)((char *)sb.data - (char *)s3v.data);
        same = same && ok && same_bits(&a.o, o1, &ob, o3 + o_off) && same_bits(&a.states, s1, &sb, s3 + s_off);
        free(o1);
        free(s1);
    }
    CHECK(ok, "%s chunked batch invariance: %s", tb->label, gdn_error_detail());
    CHECK(same, "%s: a sequence of a chunked B=%d call (D=%d, Hv=%d, chunk %lld) differs from the same sequence "
          "alone", tb->label, c3.B, c3.D, c3.Hv, (long long)chunk);
    op_tensors_free(&ts);
    free(o3);
    free(s3);
}

/* Tokens [first, first + count) of a [.., T, B] view (token dim `dim`). */
static gdn_tensor tokens(gdn_tensor t, int dim, int64_t first, int64_t count)
{
    t.data = (char *)t.data + (size_t)first * t.nb[dim];
    t.ne[dim] = count;
    return t;
}

/* Prefill then decode: a chunked call over the prompt (the state in place in the cache slot),
 * then one-token calls, against the float64 recurrence over the whole sequence. */
static void check_prefill_decode(const test_backend *tb)
{
    const int64_t prompt = 150, decode = 6;
    const op_case c = {2, (int)(prompt + decode), 2, 4, 128, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_PADDED, 0};
    test_rng rng;
    test_rng_seed(&rng, 4321);
    op_tensors ts;
    int ok = op_tensors_init(&ts, &c, GDN_DTYPE_F32, &rng);
    gdn_gated_delta_net_params p = case_params(&c);
    const int64_t ne_o[] = {c.D, c.Hv, c.T, c.B}, ne_s[] = {c.D, c.D, c.Hv, c.B, 1};
    gdn_tensor o_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 4, ne_o);
    gdn_tensor s_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 5, ne_s);
    ok = ok && alloc_ref(&o_ref) && alloc_ref(&s_ref);
    gdn_gated_delta_net_args ra = {ts.t[Q].host, ts.t[K_].host, ts.t[V].host, ts.t[G].host,
                                   ts.t[BETA].host, ts.t[STATE].host, o_ref, s_ref, {0}, {0}};
    ok = ok && gdn_gated_delta_net_reference(&p, &ra) == GDN_OK;
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    const gdn_gated_delta_net_args all = device_args(&ts);
    for (int64_t t0 = 0; ok && t0 < c.T; t0 += t0 == 0 ? prompt : 1) {
        const int64_t n = t0 == 0 ? prompt : 1;
        gdn_gated_delta_net_args a = all;
        a.q = tokens(all.q, 2, t0, n), a.k = tokens(all.k, 2, t0, n), a.v = tokens(all.v, 2, t0, n);
        a.o = tokens(all.o, 2, t0, n), a.g = tokens(all.g, 1, t0, n), a.beta = tokens(all.beta, 1, t0, n);
        if (t0 > 0) { /* decode from the cache slot, in place */
            a.state = all.states;
            a.state.n_dims = 4;
            a.state.ne[4] = 1;
        }
        /* chunks of 64 where the device runs them, else 32 (which every backend runs at D = 128) */
        p.chunk = t0 > 0 ? -1 : gdn_backend_chunk_fits(tb->backend, c.D, 64) ? 64 : 32;
        ok = gdn_gated_delta_net(tb->backend, &p, &a) == GDN_OK;
    }
    CHECK(ok, "%s prefill then decode: %s", tb->label, gdn_error_detail());
    if (ok) {
        test_compare_output("o (prefill, decode)", tb->label, 0, &ts.t[O], &o_ref, TOL_CHUNK_REL_L2, TOL_CHUNK_MAX);
        test_compare_output("state (prefill, decode)", tb->label, 0, &ts.t[STATES], &s_ref, TOL_CHUNK_REL_L2,
                            TOL_CHUNK_MAX);
    }
    printf("  %-10s prefill %lld tokens in chunks, then %lld decode calls\n", tb->label, (long long)prompt,
           (long long)decode);
    free(o_ref.data);
    free(s_ref.data);
    op_tensors_free(&ts);
}

/* Refusals: a chunk length outside the list, and chunks asked for with a BF16 state; nothing
 * written either time. */
static void check_rejections(const test_backend *tb)
{
    const op_case c = {1, 80, 1, 2, 32, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0};
    for (int m = 0; m < 2; m++) {
        test_rng rng;
        test_rng_seed(&rng, 55);
        op_tensors ts;
        int ok = op_tensors_init(&ts, &c, m == 0 ? GDN_DTYPE_F32 : GDN_DTYPE_BF16, &rng);
        for (int i = 0; ok && i < N_TENSORS; i++)
            ok = test_tensor_upload(&ts.t[i], tb->backend);
        gdn_gated_delta_net_params p = case_params(&c);
        p.chunk = m == 0 ? 48 : 64;
        gdn_gated_delta_net_args a = device_args(&ts);
        const gdn_status st = ok ? gdn_gated_delta_net(tb->backend, &p, &a) : GDN_ERROR_BACKEND;
        const gdn_status want = m == 0 ? GDN_ERROR_INVALID_ARGUMENT : GDN_ERROR_UNSUPPORTED;
        const char *says = m == 0 ? "chunk=48" : "BF16";
        CHECK(st == want && strstr(gdn_error_detail(), says) != NULL, "%s chunk refusal %d gave %d (%s), expected %d",
              tb->label, m, (int)st, gdn_error_detail(), (int)want);
        CHECK(ok && unwritten(&ts), "%s chunk refusal %d wrote an output", tb->label, m);
        op_tensors_free(&ts);
    }
}

/* What gdn_backend_chunk_fits says: no chunk length but 16, 32 and 64; the CPU runs every D; every
 * backend runs Qwen3.6's D = 128 with the default chunks of 32. Where GDN_CUDA_SMEM_LIMIT holds
 * CUDA below Hopper's 227 KB a block (the kernels of smaller GPUs, tests/CMakeLists.txt), it
 * refuses D = 128 with chunks of 64 (include/gdn.h). */
static void check_fits(const test_backend *tb)
{
    const int cpu = gdn_backend_kind_of(tb->backend) == GDN_BACKEND_CPU;
    const char *limit = getenv("GDN_CUDA_SMEM_LIMIT");
    const int small = !cpu && limit != NULL && strtoull(limit, NULL, 10) < 232448;
    for (int64_t D = 16; D <= 256; D *= 2)
        for (int chunk = 8; chunk <= 128; chunk *= 2) {
            const int fits = gdn_backend_chunk_fits(tb->backend, D, chunk);
            const int valid = chunk >= 16 && chunk <= 64;
            if (!valid || cpu || (D == 128 && chunk == 32))
                CHECK(fits == (valid ? 1 : 0), "%s: chunk_fits(D=%lld, chunk=%d) = %d", tb->label, (long long)D,
                      chunk, fits);
            if (small && D == 128 && chunk == 64)
                CHECK(!fits, "%s with GDN_CUDA_SMEM_LIMIT=%s: D=128 with chunks of 64 fits", tb->label, limit);
        }
}

/* The CPU backend: the thread count must not change a bit of a chunked call. With one thread a
 * task takes the three value heads of a q/k head (two tasks a thread or more), with three one
 * value head, so this also compares the two groupings. */
static void check_threads(void)
{
    gdn_backend_options one = {1, 0}, three = {3, 0};
    test_backend pair[2] = {{NULL, "cpu/1"}, {NULL, "cpu/3"}};
    CHECK(gdn_backend_init(&pair[0].backend, GDN_BACKEND_CPU, &one) == GDN_OK &&
              gdn_backend_init(&pair[1].backend, GDN_BACKEND_CPU, &three) == GDN_OK,
          "cpu backends with 1 and 3 threads: %s", gdn_error_detail());
    for (int rule = 0; rule < 2; rule++) { /* both q/k head to value head rules */
        const op_case c = {2, 140, 2, 6, 64, 2, rule ? GDN_BROADCAST_INTERLEAVED : GDN_BROADCAST_TILED, 1, 0.f,
                           LAYOUT_CONTIGUOUS, 0};
        gdn_gated_delta_net_params p = case_params(&c);
        p.chunk = 64;
        unsigned char *r[2][2] = {{NULL, NULL}, {NULL, NULL}};
        gdn_tensor ov, sv;
        int ok = pair[0].backend && pair[1].backend;
        for (int i = 0; ok && i < 2; i++)
            ok = run_download(&pair[i], &c, &p, 99, &r[i][0], &r[i][1], &ov, &sv);
        CHECK(ok, "chunked thread invariance: %s", gdn_error_detail());
        if (ok)
            CHECK(same_bits(&ov, r[0][0], &ov, r[1][0]) && same_bits(&sv, r[0][1], &sv, r[1][1]),
                  "cpu: a chunked call differs between 1 and 3 threads (%s)", rule ? "interleaved" : "tiled");
        for (int i = 0; i < 2; i++)
            free(r[i][0]), free(r[i][1]);
    }
    for (int i = 0; i < 2; i++)
        gdn_backend_free(pair[i].backend);
}

int main(void)
{
    const char *why = NULL;
    if (getenv("GDN_CUDA_SMEM_LIMIT") != NULL && !gdn_backend_available(GDN_BACKEND_CUDA, &why)) {
        printf("test_chunk: skipped: GDN_CUDA_SMEM_LIMIT is for the CUDA backend, which is absent (%s)\n",
               why != NULL ? why : "");
        return 77;
    }
    test_backend backends[8];
    int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_case(&backends[b], (int)i, &cases[i]);
        check_prefill_decode(&backends[b]);
        const op_case small = {3, 150, 2, 4, 64, 2, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_CONTIGUOUS, 0};
        check_batch_invariance(&backends[b], small, 64);
        /* Qwen3.6 heads: the CUDA scan runs B=5 with 128 state rows a block (160 blocks) and each
         * sequence alone with 32 (128 blocks, one wave). */
        const op_case qwen = {5, 100, 16, 32, 128, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0};
        check_batch_invariance(&backends[b], qwen, 32);
        check_auto(&backends[b]);
        check_rejections(&backends[b]);
        check_fits(&backends[b]);
    }
    check_threads();
    test_backends_close(backends, n);
    return test_finish("test_chunk");
}
