/* ops_cpu_matmul.c: the CPU mul_mat, dst[..., m, n] = sum_k w[n][k] x[..., m, k], w F32 or BF16.
 *
 * Work unit: one row m of x (copied to a packed float scratch row when x is strided) against a
 * block of GDN_CPU_MATMUL_COLUMNS rows of w. Each output element is one dot product of length
 * K computed by one function in one fixed order that depends only on K and the SIMD level, so
 * a row of x gives the same bits whatever M is and whichever thread runs it; K is never split.
 *   scalar: 8 lanes, lane l takes k = 8j + l (multiply, then add), combined as
 *           ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)), then the tail k in order.
 *   avx2:   (packed w rows) 8-float chunks, chunk c into accumulator c % 4 with FMA; the tail
 *           chunk zero-padded; hsum((a0 + a1) + (a2 + a3)) over the same 8-lane tree. */
#include "ops_cpu.h"

#ifdef GDN_CPU_X86
#include <immintrin.h>
#endif

#define GDN_CPU_MATMUL_COLUMNS 64

static float gdn_cpu_dot_scalar(const char *w, size_t stride, gdn_dtype dtype, const float *x, int64_t K)
{
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
        for (int l = 0; l < 8; l++) {
            const float product = gdn_cpu_load_any(w, stride, dtype, k + l) * x[k + l];
            lane[l] = lane[l] + product;
        }
    float sum = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
    for (; k < K; k++) {
        const float product = gdn_cpu_load_any(w, stride, dtype, k) * x[k];
        sum = sum + product;
    }
    return sum;
}

#ifdef GDN_CPU_X86
#define GDN_CPU_AVX2_INLINE static inline __attribute__((target("avx2,fma"), always_inline))

/* 8 BF16 values widened to floats (exact: each is the upper half of its float). */
GDN_CPU_AVX2_INLINE __m256 gdn_cpu_load8_bf16(const uint16_t *p)
{
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

GDN_CPU_AVX2_INLINE __m256 gdn_cpu_load8_w(const char *w, gdn_dtype dtype, int64_t k)
{
    if (dtype == GDN_DTYPE_BF16)
        return gdn_cpu_load8_bf16((const uint16_t *)w + k);
    return _mm256_loadu_ps((const float *)w + k);
}

/* Lanes summed as ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)). */
GDN_CPU_AVX2_INLINE float gdn_cpu_hsum8(__m256 x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static float gdn_cpu_dot_avx2(const char *w, gdn_dtype dtype, const float *x,
                                                                  int64_t K)
{
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t k = 0, c = 0;
    for (; k + 8 <= K; k += 8, c++)
        acc[c & 3] = _mm256_fmadd_ps(gdn_cpu_load8_w(w, dtype, k), _mm256_loadu_ps(x + k), acc[c & 3]);
    if (k < K) { /* the tail chunk, zero-padded */
        float tw[8] = {0, 0, 0, 0, 0, 0, 0, 0}, tx[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = k; i < K; i++) {
            tw[i - k] = gdn_cpu_load_any(w, gdn_dtype_size(dtype), dtype, i);
            tx[i - k] = x[i];
        }
        acc[c & 3] = _mm256_fmadd_ps(_mm256_loadu_ps(tw), _mm256_loadu_ps(tx), acc[c & 3]);
    }
    return gdn_cpu_hsum8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}
#endif

/* Work unit u: row m = u / blocks of x, columns [n0, n0 + GDN_CPU_MATMUL_COLUMNS) of w. */
static void gdn_cpu_mul_mat_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    const gdn_tensor *w = &job->call->src[0], *x = &job->call->src[1], *dst = &job->call->dst[0];
    const int64_t K = w->ne[0], N = w->ne[1], blocks = job->aux;
    const int packed_x = x->nb[0] == sizeof(float);
    const int packed_w = w->nb[0] == gdn_dtype_size(w->dtype);
    float *scratch = (float *)(job->scratch + (size_t)thread_index * job->scratch_bytes);
    int64_t loaded = -1; /* the row of x now in scratch */
    for (int64_t u = first; u < last; u++) {
        const int64_t m = u / blocks, n0 = (u % blocks) * GDN_CPU_MATMUL_COLUMNS;
        const int64_t n1 = n0 + GDN_CPU_MATMUL_COLUMNS < N ? n0 + GDN_CPU_MATMUL_COLUMNS : N;
        int64_t idx[GDN_MAX_DIMS];
        gdn_cpu_row_index(x->ne, m, idx);
        const char *x_row = (const char *)x->data + gdn_cpu_offset(x, idx);
        const float *xs = (const float *)x_row;
        if (!packed_x) {
            if (loaded != m)
                for (int64_t k = 0; k < K; k++)
                    scratch[k] = gdn_cpu_load_f32(x_row + (size_t)k * x->nb[0]);
            loaded = m;
            xs = scratch;
        }
        char *out = (char *)dst->data + gdn_cpu_offset(dst, idx);
        for (int64_t n = n0; n < n1; n++) {
            const char *w_row = (const char *)w->data + (size_t)n * w->nb[1];
            float y;
#ifdef GDN_CPU_X86
            if (job->avx2 && packed_w)
                y = gdn_cpu_dot_avx2(w_row, w->dtype, xs, K);
            else
#endif
                y = gdn_cpu_dot_scalar(w_row, w->nb[0], w->dtype, xs, K);
            gdn_cpu_store_f32(out + (size_t)n * dst->nb[0], y);
        }
    }
    (void)packed_w;
}

gdn_status gdn_cpu_mul_mat(gdn_backend *backend, const gdn_op_call *call)
{
    const gdn_tensor *w = &call->src[0], *x = &call->src[1];
    const int64_t K = w->ne[0], N = w->ne[1];
    int64_t M = 1;
    for (int i = 1; i < GDN_MAX_DIMS; i++)
        M *= x->ne[i];
    const int64_t blocks = (N + GDN_CPU_MATMUL_COLUMNS - 1) / GDN_CPU_MATMUL_COLUMNS;
    const size_t scratch = x->nb[0] == sizeof(float) ? 0 : (size_t)K * sizeof(float);
    return gdn_cpu_run_rows(backend, call, M * blocks, M * N * K, gdn_cpu_mul_mat_rows, scratch, blocks);
}
