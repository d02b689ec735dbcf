/* gdn_cpu_scalar.c: the portable kernels of the CPU backend (no SIMD intrinsics). Used when
 * the CPU has neither AVX2+FMA nor AVX-512F, or when GDN_CPU_SIMD=scalar forces it. */
#include "gdn_cpu.h"
#include "ops_cpu.h" /* gdn_cpu_bf16_to_f32, gdn_cpu_f32_to_bf16: the one BF16 rounding rule */

#include <math.h>
#include <string.h>

/* Dot products keep 4 partial sums (element i goes to lane i % 4), added as (p0 + p1) +
 * (p2 + p3): a fixed order with enough independent chains not to stall on the add latency. */
static float gdn_cpu_sum4(const float partial[4])
{
    return (partial[0] + partial[1]) + (partial[2] + partial[3]);
}

/* Element i of an F32 or a BF16 row (gdn_cpu_token.bf16). */
static float gdn_cpu_state_at(const void *row, int64_t i, int bf16)
{
    return bf16 ? gdn_cpu_bf16_to_f32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

/* x into element i of a row: as it is (F32 storage), or rounded to BF16 into an F32 or a BF16
 * row (BF16 storage). */
static void gdn_cpu_state_put(void *row, int64_t i, float x, int round, int bf16)
{
    if (!round) {
        ((float *)row)[i] = x;
        return;
    }
    const uint16_t half = gdn_cpu_f32_to_bf16(x);
    if (bf16)
        ((uint16_t *)row)[i] = half;
    else
        ((float *)row)[i] = gdn_cpu_bf16_to_f32(half);
}

/* One token over the rows, F32 or BF16 storage (gdn_cpu_token.bf16); the same arithmetic either
 * way, o taken before any rounding. */
static void gdn_cpu_token_scalar(const gdn_cpu_token *a)
{
    const int64_t D = a->D;
    const float *k = a->k, *q = a->q;
    const float decay = a->decay; /* locals: `out` may alias anything the compiler can see */
    const int round = a->bf16 != 0;
    const int in_bf16 = (a->bf16 & GDN_CPU_IN_BF16) != 0, out_bf16 = (a->bf16 & GDN_CPU_OUT_BF16) != 0;
    for (int64_t r = 0; r < a->n_rows; r++) {
        const void *in = in_bf16 ? (const void *)((const uint16_t *)(const void *)a->in + r * a->in_stride)
                                 : (const void *)(a->in + r * a->in_stride);
        void *out = out_bf16 ? (void *)((uint16_t *)(void *)a->out + r * a->out_stride)
                             : (void *)(a->out + r * a->out_stride);
        float sk[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t i = 0; i < D; i += 4)
            for (int lane = 0; lane < 4; lane++)
                sk[lane] += (gdn_cpu_state_at(in, i + lane, in_bf16) * decay) * k[i + lane];
        const float d = a->beta * (a->v[r] - gdn_cpu_sum4(sk));
        if (a->delta != NULL)
            a->delta[r] = d;
        /* Recompute in * decay (the same product as above) so that the row is written once. */
        float sq[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t i = 0; i < D; i += 4)
            for (int lane = 0; lane < 4; lane++) {
                const float x = gdn_cpu_state_at(in, i + lane, in_bf16) * decay + d * k[i + lane];
                sq[lane] += x * q[i + lane];
                gdn_cpu_state_put(out, i + lane, x, round, out_bf16); /* after its load: out may be in */
            }
        a->o[r] = a->scale * gdn_cpu_sum4(sq);
    }
}

static void gdn_cpu_fold_scalar(const gdn_cpu_token *a)
{
    const int64_t D = a->D;
    for (int64_t r = 0; r < a->n_rows; r++) {
        const float *in = a->in + r * a->in_stride;
        float *out = a->out + r * a->out_stride;
        for (int f = 0; f < a->n_fold; f++, in = out) { /* token f reads what token f-1 wrote */
            const float *k = a->k + (int64_t)f * D;
            const float decay = a->decays[f], d = a->v[(int64_t)f * a->n_rows + r];
            for (int64_t i = 0; i < D; i++)
                out[i] = in[i] * decay + d * k[i]; /* as the update's write above */
            if (a->bf16 & GDN_CPU_ROUND) /* BF16 storage: rounded as the token's row was */
                for (int64_t i = 0; i < D; i++)
                    out[i] = gdn_cpu_bf16_to_f32(gdn_cpu_f32_to_bf16(out[i]));
        }
    }
}

static void gdn_cpu_store_scalar(float *dst, const float *src, int64_t n, int stream)
{
    (void)stream; /* never streams: fence is NULL */
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void gdn_cpu_load_bf16_scalar(float *dst, const uint16_t *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = gdn_cpu_bf16_to_f32(src[i]);
}

static void gdn_cpu_store_bf16_scalar(uint16_t *dst, const float *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &src[i], sizeof bits);
        dst[i] = (uint16_t)(bits >> 16);
    }
}

static void gdn_cpu_gemm_scalar(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs, int64_t a_cs,
                                const float *B, int64_t ldb, float *C, int64_t ldc)
{
    float acc[16];
    for (int64_t m = 0; m < M; m++)
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            for (int j = 0; j < 16; j++)
                acc[j] = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                const float a = A[m * a_rs + k * a_cs];
                const float *b = B + k * ldb + n0;
                for (int j = 0; j < 16; j++)
                    acc[j] = fmaf(a, b[j], acc[j]);
            }
            for (int j = 0; j < 16; j++)
                C[m * ldc + n0 + j] += acc[j];
        }
}

static void gdn_cpu_scale_scalar(float *x, int64_t n, float s)
{
    for (int64_t i = 0; i < n; i++)
        x[i] *= s;
}

const gdn_cpu_kernels gdn_cpu_kernels_scalar = {
    "scalar", 64, gdn_cpu_token_scalar, gdn_cpu_fold_scalar, gdn_cpu_store_scalar, NULL, NULL,
    gdn_cpu_load_bf16_scalar, gdn_cpu_store_bf16_scalar, gdn_cpu_gemm_scalar, gdn_cpu_scale_scalar,
};
