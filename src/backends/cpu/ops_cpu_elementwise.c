/* ops_cpu_elementwise.c: CPU kernels of the elementwise ops (add, mul, scale, silu, sigmoid,
 * softplus, exp) and the row norms (l2_norm, rms_norm, rms_norm_gated), one row (dim 0) of dst
 * per unit of work, any strides. A dst that is exactly src 0 (in place) is safe: each element
 * is read before it is written, and a norm reduces its row before writing any of it.
 *
 * Norms: the sum of squares of a row runs in float over 8 lanes, lane l taking elements
 * 8j + l, combined as ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)), then the tail (D % 8) in
 * order. The AVX2 version (packed rows) does exactly these operations (multiply then add, no
 * FMA), so every SIMD level and every layout gives the same bits. */
#include "ops_cpu.h"

#include <math.h>

#ifdef GDN_CPU_X86
#include <immintrin.h>
#endif

/* One value of a unary op. */
static inline float gdn_cpu_unary(gdn_op_kind kind, float x, float scale)
{
    switch (kind) {
    case GDN_OP_SCALE: return x * scale;
    case GDN_OP_SILU: return x / (1.0f + expf(-x));
    case GDN_OP_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case GDN_OP_SOFTPLUS: return x > 20.0f ? x : log1pf(expf(x));
    default: return expf(x); /* GDN_OP_EXP */
    }
}

static void gdn_cpu_elementwise_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    (void)thread_index;
    const gdn_op_call *call = job->call;
    const gdn_tensor *a = &call->src[0], *dst = &call->dst[0];
    const gdn_op_kind kind = call->kind;
    const int binary = kind == GDN_OP_ADD || kind == GDN_OP_MUL;
    const float scale = kind == GDN_OP_SCALE ? call->params.scale.scale : 0.0f;
    const int64_t D = dst->ne[0];
    for (int64_t r = first; r < last; r++) {
        int64_t idx[GDN_MAX_DIMS];
        gdn_cpu_row_index(dst->ne, r, idx);
        const char *in = (const char *)a->data + gdn_cpu_offset(a, idx);
        char *out = (char *)dst->data + gdn_cpu_offset(dst, idx);
        if (!binary) {
            for (int64_t i = 0; i < D; i++)
                gdn_cpu_store_f32(out + (size_t)i * dst->nb[0],
                                  gdn_cpu_unary(kind, gdn_cpu_load_f32(in + (size_t)i * a->nb[0]), scale));
            continue;
        }
        const gdn_tensor *b = &call->src[1];
        int64_t bidx[GDN_MAX_DIMS]; /* b repeats over a */
        for (int i = 1; i < GDN_MAX_DIMS; i++)
            bidx[i] = idx[i] % b->ne[i];
        bidx[0] = 0;
        const char *bin = (const char *)b->data + gdn_cpu_offset(b, bidx);
        const int64_t Db = b->ne[0];
        for (int64_t i = 0; i < D; i++) {
            const float x = gdn_cpu_load_f32(in + (size_t)i * a->nb[0]);
            const float y = gdn_cpu_load_f32(bin + (size_t)(i % Db) * b->nb[0]);
            gdn_cpu_store_f32(out + (size_t)i * dst->nb[0], kind == GDN_OP_ADD ? x + y : x * y);
        }
    }
}

/* gdn_gates, one row (the Hv heads of a token): every value through gdn_cpu_unary and the
 * same float add and multiply as the chain of elementwise ops it replaces, so the same floats. */
static void gdn_cpu_gates_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    (void)thread_index;
    const gdn_op_call *call = job->call;
    const gdn_tensor *a = &call->src[0], *b = &call->src[1], *dt_bias = &call->src[2], *a_log = &call->src[3];
    const gdn_tensor *g = &call->dst[0], *beta = &call->dst[1];
    for (int64_t r = first; r < last; r++) {
        int64_t idx[GDN_MAX_DIMS];
        gdn_cpu_row_index(g->ne, r, idx);
        const char *in_a = (const char *)a->data + gdn_cpu_offset(a, idx);
        const char *in_b = (const char *)b->data + gdn_cpu_offset(b, idx);
        char *out_g = (char *)g->data + gdn_cpu_offset(g, idx);
        char *out_beta = (char *)beta->data + gdn_cpu_offset(beta, idx);
        for (int64_t h = 0; h < g->ne[0]; h++) {
            const float x = gdn_cpu_load_f32(in_a + (size_t)h * a->nb[0]) +
                            gdn_cpu_load_f32((const char *)dt_bias->data + (size_t)h * dt_bias->nb[0]);
            const float a_exp =
                gdn_cpu_unary(GDN_OP_EXP, gdn_cpu_load_f32((const char *)a_log->data + (size_t)h * a_log->nb[0]), 0.0f);
            const float neg_a = gdn_cpu_unary(GDN_OP_SCALE, a_exp, -1.0f);
            gdn_cpu_store_f32(out_g + (size_t)h * g->nb[0], gdn_cpu_unary(GDN_OP_SOFTPLUS, x, 0.0f) * neg_a);
            gdn_cpu_store_f32(out_beta + (size_t)h * beta->nb[0],
                              gdn_cpu_unary(GDN_OP_SIGMOID, gdn_cpu_load_f32(in_b + (size_t)h * b->nb[0]), 0.0f));
        }
    }
}

gdn_status gdn_cpu_gates(gdn_backend *backend, const gdn_op_call *call)
{
    const gdn_tensor *g = &call->dst[0];
    int64_t rows = 1;
    for (int i = 1; i < GDN_MAX_DIMS; i++)
        rows *= g->ne[i];
    /* five transcendental functions an element, about 10 simple operations each */
    return gdn_cpu_run_rows(backend, call, rows, rows * g->ne[0] * 50, gdn_cpu_gates_rows, 0, 0);
}

gdn_status gdn_cpu_elementwise(gdn_backend *backend, const gdn_op_call *call)
{
    const gdn_tensor *dst = &call->dst[0];
    int64_t rows = 1;
    for (int i = 1; i < GDN_MAX_DIMS; i++)
        rows *= dst->ne[i];
    /* transcendental ops cost about 10 simple ones per element */
    const int64_t per = call->kind == GDN_OP_ADD || call->kind == GDN_OP_MUL || call->kind == GDN_OP_SCALE ? 1 : 10;
    return gdn_cpu_run_rows(backend, call, rows, rows * dst->ne[0] * per, gdn_cpu_elementwise_rows, 0, 0);
}

/* The fixed tree over 8 lanes shared by both versions. */
static inline float gdn_cpu_lanes_sum(const float *lane)
{
    return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

/* Sum of squares of n floats `stride` bytes apart (the order described at the top). */
static float gdn_cpu_sum_squares_scalar(const char *x, size_t stride, int64_t n)
{
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            const float v = gdn_cpu_load_f32(x + (size_t)(i + l) * stride);
            const float square = v * v;
            lane[l] = lane[l] + square;
        }
    float sum = gdn_cpu_lanes_sum(lane);
    for (; i < n; i++) {
        const float v = gdn_cpu_load_f32(x + (size_t)i * stride);
        const float square = v * v;
        sum = sum + square;
    }
    return sum;
}

#ifdef GDN_CPU_X86
/* The same for packed floats: one 8-lane accumulator, squares rounded before the add. */
__attribute__((target("avx2,fma"))) static float gdn_cpu_sum_squares_avx2(const float *x, int64_t n)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
    }
    float lane[8];
    _mm256_storeu_ps(lane, acc);
    float sum = gdn_cpu_lanes_sum(lane);
    for (; i < n; i++) {
        const float square = x[i] * x[i];
        sum = sum + square;
    }
    return sum;
}
#endif

static void gdn_cpu_norm_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    (void)thread_index;
    const gdn_op_call *call = job->call;
    const gdn_tensor *x = &call->src[0], *dst = &call->dst[0];
    const int64_t D = x->ne[0];
    const float eps = call->params.norm.eps;
    const int gated = call->kind == GDN_OP_RMS_NORM_GATED;
    for (int64_t r = first; r < last; r++) {
        int64_t idx[GDN_MAX_DIMS];
        gdn_cpu_row_index(x->ne, r, idx);
        const char *in = (const char *)x->data + gdn_cpu_offset(x, idx);
        char *out = (char *)dst->data + gdn_cpu_offset(dst, idx);
        float sum;
#ifdef GDN_CPU_X86
        if (job->avx2 && x->nb[0] == sizeof(float))
            sum = gdn_cpu_sum_squares_avx2((const float *)in, D);
        else
#endif
            sum = gdn_cpu_sum_squares_scalar(in, x->nb[0], D);
        const float scale = call->kind == GDN_OP_L2_NORM ? 1.0f / sqrtf(sum + eps)
                                                         : 1.0f / sqrtf(sum / (float)D + eps);
        if (!gated) {
            for (int64_t i = 0; i < D; i++)
                gdn_cpu_store_f32(out + (size_t)i * dst->nb[0], gdn_cpu_load_f32(in + (size_t)i * x->nb[0]) * scale);
            continue;
        }
        /* (x * scale) * w * silu(z) */
        const gdn_tensor *w = &call->src[1], *z = &call->src[2];
        const char *zin = (const char *)z->data + gdn_cpu_offset(z, idx);
        for (int64_t i = 0; i < D; i++) {
            const float zi = gdn_cpu_load_f32(zin + (size_t)i * z->nb[0]);
            const float wi = gdn_cpu_load_f32((const char *)w->data + (size_t)i * w->nb[0]);
            const float y = gdn_cpu_load_f32(in + (size_t)i * x->nb[0]) * scale;
            gdn_cpu_store_f32(out + (size_t)i * dst->nb[0], (y * wi) * (zi / (1.0f + expf(-zi))));
        }
    }
}

gdn_status gdn_cpu_norm(gdn_backend *backend, const gdn_op_call *call)
{
    const gdn_tensor *x = &call->src[0];
    int64_t rows = 1;
    for (int i = 1; i < GDN_MAX_DIMS; i++)
        rows *= x->ne[i];
    return gdn_cpu_run_rows(backend, call, rows, rows * x->ne[0] * 2, gdn_cpu_norm_rows, 0, 0);
}
