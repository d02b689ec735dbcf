/* ops_cpu_matmul.c: the CPU mul_mat, dst[..., m, n] = sum_k w[n][k] x[..., m, k], w F32 or BF16.
 *
 * Work unit: a block of GDN_CPU_MATMUL_COLUMNS rows of w against ALL M rows of x, so each weight
 * is read from DRAM once per call (the block stays in L2 while panels of x pass over it, and a
 * tile's 3 or 4 weight rows stay in L1 while the panel's rows of x pass over them). x is packed
 * once per call, before the threads start, into rows of K rounded up to 8 floats with zeros
 * after K, unless its rows are already packed floats and K is a multiple of 8.
 *
 * Each output element is one dot product of length K with its own accumulator, computed in one
 * fixed order that depends only on K and the SIMD level (not on M, the tile that holds it, which
 * thread runs it or how many threads there are), so a row of x gives the same bits in any call;
 * K is never split.
 *   scalar: 8 lanes, lane l takes k = 8j + l (multiply, then add), combined as
 *           ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)), then the tail k in order.
 *           (Also used for w whose elements are not adjacent, at every SIMD level.)
 *   avx2 (also at the avx512 level): one 8-float accumulator a, starting at zero; chunk c
 *           (k = 8c .. 8c+7) in increasing c is a = fma(w[8c..], x[8c..], a), the tail chunk
 *           zero-padded in both; then hsum(a) = ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)).
 *           A register tile holds the accumulators of 4 rows of x x 3 rows of w (1 to 3 rows of x
 *           x 4 rows of w when fewer remain): 12 independent FMA chains keep both FMA pipes busy
 *           with a 4-cycle latency, and each weight load serves 4 rows of x. */
#include "ops_cpu.h"

#include <stdlib.h>

#ifdef GDN_CPU_X86
#include <immintrin.h>
#endif

#define GDN_CPU_MATMUL_COLUMNS 24              /* rows of w per work unit: a multiple of 3 and 4 */
#define GDN_CPU_MATMUL_PANEL_BYTES (128 << 10) /* x per panel, kept in L2 beside the block */
#define GDN_CPU_MATMUL_PANEL_MAX 64            /* rows of x per panel, at most */

/* One panel of rows of x against a block of rows of w [n0, n1). */
typedef struct gdn_cpu_matmul_block {
    const char *w;            /* row n at w + n * w_row_bytes */
    size_t w_row_bytes, w_elem_bytes;
    gdn_dtype dtype;
    int64_t K, n0, n1, N;     /* N: rows of w in all, the bound of the tiles' prefetch */
    int rows;                 /* rows of x in the panel */
    const float *const *x;    /* [rows], each K floats (zero-padded to a multiple of 8 if K is not) */
    char *const *out;         /* [rows], element n at out[i] + n * out_elem_bytes */
    size_t out_elem_bytes;
} gdn_cpu_matmul_block;

/* K rounded up to a whole number of 8-float chunks: the row length of packed x. */
static int64_t gdn_cpu_matmul_padded(int64_t K)
{
    return (K + 7) & ~(int64_t)7;
}

/* Rows of x per panel: a multiple of 4 whose packed rows fit GDN_CPU_MATMUL_PANEL_BYTES. */
static int64_t gdn_cpu_matmul_panel_rows(int64_t K)
{
    int64_t rows = (int64_t)GDN_CPU_MATMUL_PANEL_BYTES / (gdn_cpu_matmul_padded(K) * (int64_t)sizeof(float));
    rows = rows > GDN_CPU_MATMUL_PANEL_MAX ? GDN_CPU_MATMUL_PANEL_MAX : rows & ~(int64_t)3;
    return rows < 4 ? 4 : rows;
}

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

/* Scalar block: each row of w against every row of the panel while it is in L1. */
static void gdn_cpu_matmul_block_scalar(const gdn_cpu_matmul_block *b)
{
    for (int64_t n = b->n0; n < b->n1; n++) {
        const char *w_row = b->w + (size_t)n * b->w_row_bytes;
        for (int i = 0; i < b->rows; i++)
            gdn_cpu_store_f32(b->out[i] + (size_t)n * b->out_elem_bytes,
                              gdn_cpu_dot_scalar(w_row, b->w_elem_bytes, b->dtype, b->x[i], b->K));
    }
}

#ifdef GDN_CPU_X86
#define GDN_CPU_AVX2_INLINE static inline __attribute__((target("avx2,fma"), always_inline))

/* 8 BF16 values widened to floats (exact: each is the upper half of its float). */
GDN_CPU_AVX2_INLINE __m256 gdn_cpu_load8_bf16(const uint16_t *p)
{
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

GDN_CPU_AVX2_INLINE __m256 gdn_cpu_load8_w(const char *w, int bf16, int64_t k)
{
    if (bf16)
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

/* Tile: rows [i0, i0 + MR) of the panel against rows [n, n + NR) of w, MR x NR accumulators.
 * MR, NR and BF16 are constants at every call site, so the arrays live in registers. The tail
 * chunk of x is read past K: rows are zero-padded there (K % 8 != 0 means x was packed). */
GDN_CPU_AVX2_INLINE void gdn_cpu_matmul_tile_avx2(const gdn_cpu_matmul_block *b, int i0, int64_t n, const int MR,
                                                  const int NR, const int bf16)
{
    const int64_t K = b->K;
    const char *w[4];
    const float *x[4];
    __m256 acc[4][4];
    for (int j = 0; j < NR; j++)
        w[j] = b->w + (size_t)(n + j) * b->w_row_bytes;
    /* The next tile's rows, NR rows on, are fetched while this one computes: one cache line
     * per row every 64 bytes of k. Without it the first rows of x to reach a tile wait on DRAM. */
    const int prefetch = n + 2 * NR <= b->N;
    const size_t ahead = (size_t)NR * b->w_row_bytes;
    const int64_t line = bf16 ? 32 : 16;
    for (int i = 0; i < MR; i++) {
        x[i] = b->x[i0 + i];
        for (int j = 0; j < NR; j++)
            acc[i][j] = _mm256_setzero_ps();
    }
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[4];
        for (int j = 0; j < NR; j++)
            wv[j] = gdn_cpu_load8_w(w[j], bf16, k);
        if (prefetch && (k & (line - 1)) == 0)
            for (int j = 0; j < NR; j++)
                _mm_prefetch(w[j] + ahead + (size_t)k * (bf16 ? 2 : 4), _MM_HINT_T0);
        for (int i = 0; i < MR; i++) {
            const __m256 xv = _mm256_loadu_ps(x[i] + k);
            for (int j = 0; j < NR; j++)
                acc[i][j] = _mm256_fmadd_ps(wv[j], xv, acc[i][j]);
        }
    }
    if (k < K) { /* the tail chunk, zero-padded */
        __m256 wv[4];
        for (int j = 0; j < NR; j++) {
            float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int64_t e = k; e < K; e++)
                tail[e - k] = gdn_cpu_load_any(w[j], bf16 ? 2 : 4, bf16 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32, e);
            wv[j] = _mm256_loadu_ps(tail);
        }
        for (int i = 0; i < MR; i++) {
            const __m256 xv = _mm256_loadu_ps(x[i] + k);
            for (int j = 0; j < NR; j++)
                acc[i][j] = _mm256_fmadd_ps(wv[j], xv, acc[i][j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++)
            gdn_cpu_store_f32(b->out[i0 + i] + (size_t)(n + j) * b->out_elem_bytes, gdn_cpu_hsum8(acc[i][j]));
}

/* The tiles, one function per (dtype, MR, NR): 4 x 3 where 4 rows of x remain (12 chains + 3
 * weight registers), up to 4 wide for fewer rows; narrower at the end of the block. */
typedef void (*gdn_cpu_matmul_tile_fn)(const gdn_cpu_matmul_block *b, int i0, int64_t n);
#define GDN_CPU_TILE(MR, NR)                                                                                 \
    __attribute__((target("avx2,fma"))) static void gdn_cpu_tile_f32_##MR##x##NR(                          \
        const gdn_cpu_matmul_block *b, int i0, int64_t n)                                                    \
    {                                                                                                        \
        gdn_cpu_matmul_tile_avx2(b, i0, n, MR, NR, 0);                                                       \
    }                                                                                                        \
    __attribute__((target("avx2,fma"))) static void gdn_cpu_tile_bf16_##MR##x##NR(                         \
        const gdn_cpu_matmul_block *b, int i0, int64_t n)                                                    \
    {                                                                                                        \
        gdn_cpu_matmul_tile_avx2(b, i0, n, MR, NR, 1);                                                       \
    }
GDN_CPU_TILE(1, 1) GDN_CPU_TILE(1, 2) GDN_CPU_TILE(1, 3) GDN_CPU_TILE(1, 4)
GDN_CPU_TILE(2, 1) GDN_CPU_TILE(2, 2) GDN_CPU_TILE(2, 3) GDN_CPU_TILE(2, 4)
GDN_CPU_TILE(3, 1) GDN_CPU_TILE(3, 2) GDN_CPU_TILE(3, 3) GDN_CPU_TILE(3, 4)
GDN_CPU_TILE(4, 1) GDN_CPU_TILE(4, 2) GDN_CPU_TILE(4, 3)
#undef GDN_CPU_TILE

/* [bf16][MR - 1][NR - 1]; gdn_cpu_tile_width[MR - 1] is the widest used for MR rows of x. */
static const gdn_cpu_matmul_tile_fn gdn_cpu_tiles[2][4][4] = {
    {{gdn_cpu_tile_f32_1x1, gdn_cpu_tile_f32_1x2, gdn_cpu_tile_f32_1x3, gdn_cpu_tile_f32_1x4},
     {gdn_cpu_tile_f32_2x1, gdn_cpu_tile_f32_2x2, gdn_cpu_tile_f32_2x3, gdn_cpu_tile_f32_2x4},
     {gdn_cpu_tile_f32_3x1, gdn_cpu_tile_f32_3x2, gdn_cpu_tile_f32_3x3, gdn_cpu_tile_f32_3x4},
     {gdn_cpu_tile_f32_4x1, gdn_cpu_tile_f32_4x2, gdn_cpu_tile_f32_4x3, NULL}},
    {{gdn_cpu_tile_bf16_1x1, gdn_cpu_tile_bf16_1x2, gdn_cpu_tile_bf16_1x3, gdn_cpu_tile_bf16_1x4},
     {gdn_cpu_tile_bf16_2x1, gdn_cpu_tile_bf16_2x2, gdn_cpu_tile_bf16_2x3, gdn_cpu_tile_bf16_2x4},
     {gdn_cpu_tile_bf16_3x1, gdn_cpu_tile_bf16_3x2, gdn_cpu_tile_bf16_3x3, gdn_cpu_tile_bf16_3x4},
     {gdn_cpu_tile_bf16_4x1, gdn_cpu_tile_bf16_4x2, gdn_cpu_tile_bf16_4x3, NULL}},
};
static const int gdn_cpu_tile_width[4] = {4, 4, 4, 3};

/* AVX2 block: tiles of weight rows, each against the panel's rows 4 at a time (the last group
 * 1 to 3 rows). Which tile holds an output never changes its bits. */
static void gdn_cpu_matmul_block_avx2(const gdn_cpu_matmul_block *b)
{
    const int bf16 = b->dtype == GDN_DTYPE_BF16;
    const int tail_rows = b->rows % 4, full = b->rows - tail_rows;
    const int width = gdn_cpu_tile_width[3], tail_width = tail_rows ? gdn_cpu_tile_width[tail_rows - 1] : 0;
    /* The tile width is that of the 4-row tiles when there are any, so one pass over w serves both. */
    const int step = full > 0 ? width : tail_width;
    for (int64_t n = b->n0; n < b->n1; n += step) {
        const int nr = (int)(b->n1 - n < step ? b->n1 - n : step);
        for (int i = 0; i < full; i += 4)
            gdn_cpu_tiles[bf16][3][nr - 1](b, i, n);
        if (tail_rows)
            gdn_cpu_tiles[bf16][tail_rows - 1][nr - 1](b, full, n);
    }
}
#endif

/* Work unit u: rows [u * GDN_CPU_MATMUL_COLUMNS, ...) of w against every row of x, panel by
 * panel. x is call->src[1] as gdn_cpu_mul_mat passes it (packed when needed). */
static void gdn_cpu_mul_mat_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    (void)thread_index;
    const gdn_tensor *w = &job->call->src[0], *x = &job->call->src[1], *dst = &job->call->dst[0];
    const int64_t N = w->ne[1], M = job->aux, panel = gdn_cpu_matmul_panel_rows(w->ne[0]);
    const float *x_rows[GDN_CPU_MATMUL_PANEL_MAX];
    char *out_rows[GDN_CPU_MATMUL_PANEL_MAX];
    gdn_cpu_matmul_block b;
    b.w = (const char *)w->data;
    b.w_row_bytes = w->nb[1];
    b.w_elem_bytes = w->nb[0];
    b.dtype = w->dtype;
    b.K = w->ne[0];
    b.N = N;
    b.x = x_rows;
    b.out = out_rows;
    b.out_elem_bytes = dst->nb[0];
#ifdef GDN_CPU_X86
    const int avx2 = job->avx2 && w->nb[0] == gdn_dtype_size(w->dtype);
#endif
    for (int64_t u = first; u < last; u++) {
        b.n0 = u * GDN_CPU_MATMUL_COLUMNS;
        b.n1 = b.n0 + GDN_CPU_MATMUL_COLUMNS < N ? b.n0 + GDN_CPU_MATMUL_COLUMNS : N;
        for (int64_t m0 = 0; m0 < M; m0 += panel) {
            b.rows = (int)(M - m0 < panel ? M - m0 : panel);
            for (int i = 0; i < b.rows; i++) {
                int64_t idx[GDN_MAX_DIMS];
                gdn_cpu_row_index(x->ne, m0 + i, idx);
                x_rows[i] = (const float *)((const char *)x->data + gdn_cpu_offset(x, idx));
                out_rows[i] = (char *)dst->data + gdn_cpu_offset(dst, idx);
            }
#ifdef GDN_CPU_X86
            if (avx2) {
                gdn_cpu_matmul_block_avx2(&b);
                continue;
            }
#endif
            gdn_cpu_matmul_block_scalar(&b);
        }
    }
}

/* x as the kernels read it: its own rows when they are packed floats and K is a multiple of 8;
 * otherwise a copy in *packed (malloc'd, the caller frees it) of rows of K floats zero-padded to
 * a multiple of 8, with x's counts. */
static gdn_status gdn_cpu_matmul_pack_x(const gdn_tensor *x, int64_t M, gdn_tensor *view, float **packed)
{
    const int64_t K = x->ne[0], K8 = gdn_cpu_matmul_padded(K);
    *view = *x;
    *packed = NULL;
    if (x->nb[0] == sizeof(float) && K == K8)
        return GDN_OK;
    const size_t bytes = (size_t)M * (size_t)K8 * sizeof(float);
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes > 0 ? bytes : 64) != 0)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "mul_mat on cpu: cannot allocate %zu bytes to pack x", bytes);
    *packed = p;
    view->data = p;
    view->nb[0] = sizeof(float);
    view->nb[1] = (size_t)K8 * sizeof(float);
    for (int i = 2; i < GDN_MAX_DIMS; i++)
        view->nb[i] = view->nb[i - 1] * (size_t)x->ne[i - 1];
    for (int64_t m = 0; m < M; m++) {
        int64_t idx[GDN_MAX_DIMS];
        gdn_cpu_row_index(x->ne, m, idx);
        const char *row = (const char *)x->data + gdn_cpu_offset(x, idx);
        float *to = *packed + (size_t)m * (size_t)K8;
        for (int64_t k = 0; k < K; k++)
            to[k] = gdn_cpu_load_f32(row + (size_t)k * x->nb[0]);
        for (int64_t k = K; k < K8; k++)
            to[k] = 0.0f;
    }
    return GDN_OK;
}

gdn_status gdn_cpu_mul_mat(gdn_backend *backend, const gdn_op_call *call)
{
    const gdn_tensor *w = &call->src[0], *x = &call->src[1];
    const int64_t K = w->ne[0], N = w->ne[1];
    int64_t M = 1;
    for (int i = 1; i < GDN_MAX_DIMS; i++)
        M *= x->ne[i];
    gdn_op_call packed_call = *call;
    float *packed = NULL;
    gdn_status st = gdn_cpu_matmul_pack_x(x, M, &packed_call.src[1], &packed);
    if (st != GDN_OK)
        return st;
    const int64_t blocks = (N + GDN_CPU_MATMUL_COLUMNS - 1) / GDN_CPU_MATMUL_COLUMNS;
    st = gdn_cpu_run_rows(backend, &packed_call, blocks, M * N * K, gdn_cpu_mul_mat_rows, 0, M);
    free(packed);
    return st;
}
