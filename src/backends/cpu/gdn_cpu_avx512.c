/* gdn_cpu_avx512.c: AVX-512F kernels of the CPU backend: the AVX2 kernels (gdn_cpu_avx2.c)
 * with 16-float chunks. Order of operations per row: chunk c (16 floats) goes to accumulator
 * c % 4 (D = 16 has chunk 0 only, D = 32 chunks 0 and 1):
 *   pass 1: x = in[c] * decay; a[c % 4] = fma(x, k[c], a[c % 4])
 *           sk = hsum((a0 + a1) + (a2 + a3)); d = beta * (v - sk)
 *   pass 2: x = fma(d, k[c], in[c] * decay); out[c] = x; b[c % 4] = fma(x, q[c], b[c % 4])
 *           o = scale * hsum((b0 + b1) + (b2 + b3))
 * Rows read from DRAM go one at a time, in memory order; rows in the L1 buffer two at a time. */
#include "gdn_cpu.h"

#ifdef GDN_CPU_X86
#include <immintrin.h>
#include <string.h>

#define GDN_CPU_AVX512 __attribute__((target("avx512f")))
#define GDN_CPU_AVX512_INLINE static inline __attribute__((target("avx512f"), always_inline))

/* Fixed tree: 16 -> 8 (low half + high half) -> 4 -> 2 -> 1. AVX-512F only (no DQ needed). */
GDN_CPU_AVX512_INLINE float gdn_cpu_hsum_avx512(__m512 x)
{
    __m256 lo = _mm512_castps512_ps256(x);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Pass 1, chunk at offset i: acc += (in * decay) * k. Each chunk is one 64-byte line, so this
 * is also where the line `prefetch` floats ahead is requested. */
GDN_CPU_AVX512_INLINE void gdn_cpu_pass1_avx512(const float *in, const float *k, int64_t i,
                                                int64_t prefetch, __m512 decay, __m512 *acc)
{
    if (prefetch)
        _mm_prefetch((const char *)(in + prefetch + i), _MM_HINT_T0);
    *acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_loadu_ps(in + i), decay), _mm512_load_ps(k + i), *acc);
}

/* Pass 2, chunk at offset i: x = d k + in * decay; out = x; acc += x * q. The load precedes
 * the store, so out may equal in. */
GDN_CPU_AVX512_INLINE void gdn_cpu_pass2_avx512(const float *in, float *out, const int stream,
                                                const float *q, const float *k, int64_t i,
                                                __m512 decay, __m512 d, __m512 *acc)
{
    __m512 x = _mm512_fmadd_ps(d, _mm512_load_ps(k + i), _mm512_mul_ps(_mm512_loadu_ps(in + i), decay));
    if (stream)
        _mm512_stream_ps(out + i, x);
    else
        _mm512_storeu_ps(out + i, x);
    *acc = _mm512_fmadd_ps(x, _mm512_load_ps(q + i), *acc);
}

/* One row; `stream` is a constant at each call site, everything else a local (see the AVX2
 * file). */
GDN_CPU_AVX512_INLINE float gdn_cpu_row_avx512(const float *in, float *out, const int stream,
                                               int64_t prefetch, int64_t D, const float *restrict q,
                                               const float *restrict k, __m512 decay, float beta,
                                               float v, float scale, float *delta)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < D; i += 64) {
        gdn_cpu_pass1_avx512(in, k, i, prefetch, decay, &a0);
        if (D > 16) /* D is 16, 32 or a multiple of 64 */
            gdn_cpu_pass1_avx512(in, k, i + 16, prefetch, decay, &a1);
        if (D > 32) {
            gdn_cpu_pass1_avx512(in, k, i + 32, prefetch, decay, &a2);
            gdn_cpu_pass1_avx512(in, k, i + 48, prefetch, decay, &a3);
        }
    }
    const float sk = gdn_cpu_hsum_avx512(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    const float dd = beta * (v - sk);
    if (delta != NULL)
        *delta = dd;
    const __m512 d = _mm512_set1_ps(dd);

    __m512 b0 = _mm512_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
    for (int64_t i = 0; i < D; i += 64) {
        gdn_cpu_pass2_avx512(in, out, stream, q, k, i, decay, d, &b0);
        if (D > 16)
            gdn_cpu_pass2_avx512(in, out, stream, q, k, i + 16, decay, d, &b1);
        if (D > 32) {
            gdn_cpu_pass2_avx512(in, out, stream, q, k, i + 32, decay, d, &b2);
            gdn_cpu_pass2_avx512(in, out, stream, q, k, i + 48, decay, d, &b3);
        }
    }
    return scale * gdn_cpu_hsum_avx512(_mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)));
}

/* BF16 state storage inside the token (gdn_cpu_token.bf16), as in gdn_cpu_avx2.c with 16
 * lanes: a chunk read from F32 or BF16 rows, rounded by the same rule, written to F32 or BF16
 * rows. */
GDN_CPU_AVX512_INLINE __m512 gdn_cpu_load16_avx512(const void *in, int64_t i, const int bf16)
{
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)in + i))), 16));
    return _mm512_loadu_ps((const float *)in + i);
}

GDN_CPU_AVX512_INLINE __m512 gdn_cpu_round16_avx512(__m512 f)
{
    const __m512i u = _mm512_castps_si512(f), upper = _mm512_set1_epi32((int)0xffff0000u);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)),
                                             upper);
    const __m512i nan = _mm512_or_si512(_mm512_and_si512(u, upper), _mm512_set1_epi32(0x00400000));
    return _mm512_castsi512_ps(_mm512_mask_blend_epi32(_mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), rounded, nan));
}

GDN_CPU_AVX512_INLINE void gdn_cpu_store16_avx512(void *out, int64_t i, __m512 rounded, const int bf16)
{
    if (bf16)
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + i),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(rounded), 16)));
    else
        _mm512_storeu_ps((float *)out + i, rounded);
}

/* One row with BF16 storage: gdn_cpu_row_avx512's arithmetic in the same order, the state read
 * as in_bf16 says, o from the unrounded values, the rounded values stored. */
GDN_CPU_AVX512_INLINE float gdn_cpu_row_bf16_avx512(const void *in, void *out, const int in_bf16, const int out_bf16,
                                                    int64_t prefetch, int64_t D, const float *restrict q,
                                                    const float *restrict k, __m512 decay, float beta, float v,
                                                    float scale, float *delta)
{
    const int chunks = D > 32 ? 4 : D > 16 ? 2 : 1;
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t i = 0; i < D; i += 64)
        for (int c = 0; c < chunks; c++) {
            if (prefetch && (!in_bf16 || c % 2 == 0)) /* one 64-byte line per 16 F32 or 32 BF16 values */
                _mm_prefetch((const char *)in + (prefetch + i + 16 * c) * (in_bf16 ? 2 : 4), _MM_HINT_T0);
            a[c] = _mm512_fmadd_ps(_mm512_mul_ps(gdn_cpu_load16_avx512(in, i + 16 * c, in_bf16), decay),
                                   _mm512_load_ps(k + i + 16 * c), a[c]);
        }
    const float sk = gdn_cpu_hsum_avx512(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
    const float dd = beta * (v - sk);
    if (delta != NULL)
        *delta = dd;
    const __m512 d = _mm512_set1_ps(dd);
    __m512 b[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t i = 0; i < D; i += 64)
        for (int c = 0; c < chunks; c++) {
            const int64_t at = i + 16 * c;
            const __m512 x = _mm512_fmadd_ps(d, _mm512_load_ps(k + at),
                                             _mm512_mul_ps(gdn_cpu_load16_avx512(in, at, in_bf16), decay));
            b[c] = _mm512_fmadd_ps(x, _mm512_load_ps(q + at), b[c]);
            gdn_cpu_store16_avx512(out, at, gdn_cpu_round16_avx512(x), out_bf16);
        }
    return scale * gdn_cpu_hsum_avx512(_mm512_add_ps(_mm512_add_ps(b[0], b[1]), _mm512_add_ps(b[2], b[3])));
}

/* The rows of a token with BF16 storage, for one (in, out) dtype pair. */
GDN_CPU_AVX512_INLINE void gdn_cpu_token_bf16_avx512(const gdn_cpu_token *a, const int in_bf16, const int out_bf16)
{
    const __m512 decay = _mm512_set1_ps(a->decay);
    for (int64_t r = 0; r < a->n_rows; r++) {
        const void *in = in_bf16 ? (const void *)((const uint16_t *)(const void *)a->in + r * a->in_stride)
                                 : (const void *)(a->in + r * a->in_stride);
        void *out = out_bf16 ? (void *)((uint16_t *)(void *)a->out + r * a->out_stride)
                             : (void *)(a->out + r * a->out_stride);
        a->o[r] = gdn_cpu_row_bf16_avx512(in, out, in_bf16, out_bf16, a->prefetch, a->D, a->q, a->k, decay,
                                          a->beta, a->v[r], a->scale, a->delta != NULL ? a->delta + r : NULL);
    }
}

/* Two rows at once from the L1 buffer (no prefetch, no streaming), each in exactly
 * gdn_cpu_row_avx512's order (same bits), sharing the k and q loads and overlapping the two rows'
 * sums: the AVX2 file's gdn_cpu_rows2_avx2 with 16-float chunks. */
GDN_CPU_AVX512_INLINE void gdn_cpu_rows2_avx512(const float *in0, const float *in1, float *out0, float *out1,
                                                int64_t D, const float *restrict q, const float *restrict k,
                                                __m512 decay, float beta, float v0, float v1, float scale, float *o,
                                                float *delta)
{
    const int chunks = D > 32 ? 4 : D > 16 ? 2 : 1; /* per 64 floats: chunk c into accumulator c */
    __m512 a[4], c[4];
    for (int j = 0; j < 4; j++)
        a[j] = c[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < D; i += 64)
        for (int j = 0; j < chunks; j++) {
            const int64_t at = i + 16 * j;
            const __m512 kk = _mm512_load_ps(k + at);
            a[j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_loadu_ps(in0 + at), decay), kk, a[j]);
            c[j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_loadu_ps(in1 + at), decay), kk, c[j]);
        }
    const float d0 = beta * (v0 - gdn_cpu_hsum_avx512(_mm512_add_ps(_mm512_add_ps(a[0], a[1]),
                                                                     _mm512_add_ps(a[2], a[3]))));
    const float d1 = beta * (v1 - gdn_cpu_hsum_avx512(_mm512_add_ps(_mm512_add_ps(c[0], c[1]),
                                                                     _mm512_add_ps(c[2], c[3]))));
    if (delta != NULL)
        delta[0] = d0, delta[1] = d1;
    const __m512 e0 = _mm512_set1_ps(d0), e1 = _mm512_set1_ps(d1);
    for (int j = 0; j < 4; j++)
        a[j] = c[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < D; i += 64)
        for (int j = 0; j < chunks; j++) {
            const int64_t at = i + 16 * j;
            const __m512 kk = _mm512_load_ps(k + at), qq = _mm512_load_ps(q + at);
            const __m512 x = _mm512_fmadd_ps(e0, kk, _mm512_mul_ps(_mm512_loadu_ps(in0 + at), decay));
            const __m512 y = _mm512_fmadd_ps(e1, kk, _mm512_mul_ps(_mm512_loadu_ps(in1 + at), decay));
            _mm512_storeu_ps(out0 + at, x);
            _mm512_storeu_ps(out1 + at, y);
            a[j] = _mm512_fmadd_ps(x, qq, a[j]);
            c[j] = _mm512_fmadd_ps(y, qq, c[j]);
        }
    o[0] = scale * gdn_cpu_hsum_avx512(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
    o[1] = scale * gdn_cpu_hsum_avx512(_mm512_add_ps(_mm512_add_ps(c[0], c[1]), _mm512_add_ps(c[2], c[3])));
}

GDN_CPU_AVX512 static void gdn_cpu_token_avx512(const gdn_cpu_token *a)
{
    if (a->bf16) {
        const int in_bf16 = (a->bf16 & GDN_CPU_IN_BF16) != 0, out_bf16 = (a->bf16 & GDN_CPU_OUT_BF16) != 0;
        if (in_bf16 && out_bf16)
            gdn_cpu_token_bf16_avx512(a, 1, 1);
        else if (in_bf16)
            gdn_cpu_token_bf16_avx512(a, 1, 0);
        else if (out_bf16)
            gdn_cpu_token_bf16_avx512(a, 0, 1);
        else
            gdn_cpu_token_bf16_avx512(a, 0, 0);
        return;
    }
    const __m512 decay = _mm512_set1_ps(a->decay);
    int64_t r = 0;
    if (!a->stream && a->prefetch == 0) /* rows from the L1 buffer: two at a time */
        for (; r + 2 <= a->n_rows; r += 2) {
            const float *in = a->in + r * a->in_stride;
            float *out = a->out + r * a->out_stride;
            gdn_cpu_rows2_avx512(in, in + a->in_stride, out, out + a->out_stride, a->D, a->q, a->k, decay, a->beta,
                                 a->v[r], a->v[r + 1], a->scale, a->o + r, a->delta != NULL ? a->delta + r : NULL);
        }
    for (; r < a->n_rows; r++) {
        const float *in = a->in + r * a->in_stride;
        float *out = a->out + r * a->out_stride;
        if (a->stream)
            a->o[r] = gdn_cpu_row_avx512(in, out, 1, a->prefetch, a->D, a->q, a->k, decay, a->beta,
                                         a->v[r], a->scale, a->delta != NULL ? a->delta + r : NULL);
        else
            a->o[r] = gdn_cpu_row_avx512(in, out, 0, a->prefetch, a->D, a->q, a->k, decay, a->beta,
                                         a->v[r], a->scale, a->delta != NULL ? a->delta + r : NULL);
    }
}

/* Folded tokens (gdn_cpu_kernels.fold): per chunk, for each token x = d k + x * decay, as pass 2
 * writes it, the chunk kept in a register from the first token to the last (the row written
 * once, not once per token). */
GDN_CPU_AVX512_INLINE void gdn_cpu_fold_rows_avx512(const gdn_cpu_token *a, const int round)
{
    const int n = a->n_fold;
    __m512 decay[GDN_CPU_FOLD_MAX];
    for (int f = 0; f < n; f++)
        decay[f] = _mm512_set1_ps(a->decays[f]);
    for (int64_t r = 0; r < a->n_rows; r++) {
        const float *in = a->in + r * a->in_stride;
        float *out = a->out + r * a->out_stride;
        __m512 d[GDN_CPU_FOLD_MAX];
        for (int f = 0; f < n; f++)
            d[f] = _mm512_set1_ps(a->v[(int64_t)f * a->n_rows + r]);
        for (int64_t i = 0; i < a->D; i += 16) {
            __m512 x = _mm512_loadu_ps(in + i);
            for (int f = 0; f < n; f++) {
                x = _mm512_fmadd_ps(d[f], _mm512_load_ps(a->k + (int64_t)f * a->D + i), _mm512_mul_ps(x, decay[f]));
                if (round) /* BF16 storage: each folded state rounded as the token's was */
                    x = gdn_cpu_round16_avx512(x);
            }
            _mm512_storeu_ps(out + i, x);
        }
    }
}

GDN_CPU_AVX512 static void gdn_cpu_fold_avx512(const gdn_cpu_token *a)
{
    if (a->bf16 & GDN_CPU_ROUND)
        gdn_cpu_fold_rows_avx512(a, 1);
    else
        gdn_cpu_fold_rows_avx512(a, 0);
}

GDN_CPU_AVX512 static void gdn_cpu_store_avx512(float *dst, const float *src, int64_t n, int stream)
{
    if (stream) {
        for (int64_t i = 0; i < n; i += 16)
            _mm512_stream_ps(dst + i, _mm512_load_ps(src + i));
    } else {
        for (int64_t i = 0; i < n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_load_ps(src + i));
    }
}

/* memcpy through streaming stores: unaligned loads, 64-byte aligned non-temporal stores, four
 * vectors per iteration; the unaligned head and the tail go through memcpy. */
GDN_CPU_AVX512 static void gdn_cpu_copy_stream_avx512(void *dst, const void *src, size_t bytes)
{
    char *d = dst;
    const char *s = src;
    size_t head = (64 - (uintptr_t)d % 64) % 64;
    head = head < bytes ? head : bytes;
    memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    for (; bytes >= 256; d += 256, s += 256, bytes -= 256) {
        __m512i v0 = _mm512_loadu_si512(s), v1 = _mm512_loadu_si512(s + 64);
        __m512i v2 = _mm512_loadu_si512(s + 128), v3 = _mm512_loadu_si512(s + 192);
        _mm512_stream_si512((__m512i *)d, v0);
        _mm512_stream_si512((__m512i *)(d + 64), v1);
        _mm512_stream_si512((__m512i *)(d + 128), v2);
        _mm512_stream_si512((__m512i *)(d + 192), v3);
    }
    memcpy(d, s, bytes);
    _mm_sfence();
}

static void gdn_cpu_fence_avx512(void)
{
    _mm_sfence();
}

/* BF16 rows to and from the L1 buffer: the AVX2 functions (gdn_cpu_avx2.c) with 16 lanes,
 * AVX-512F only (no AVX512-BF16: vpmovzxwd widens, vpmovdw narrows). */
GDN_CPU_AVX512 static void gdn_cpu_load_bf16_avx512(float *dst, const uint16_t *src, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_store_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
}

GDN_CPU_AVX512 static void gdn_cpu_store_bf16_avx512(uint16_t *dst, const float *src, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __m512i halves = _mm512_srli_epi32(_mm512_castps_si512(_mm512_load_ps(src + i)), 16);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(halves));
    }
}

/* The chunked form's products: tiles of 8 rows x 32 columns (16 accumulators: two B loads and
 * eight broadcasts a k step for 16 multiply-adds; 8 x 16 took nine loads for eight, and the chunked
 * form at T=4096 was 10% slower with it: docs/PERF.md), 8 x 16 for a last 16 columns, then single
 * rows. Every element's sum runs over k in order, as before. */
GDN_CPU_AVX512 static void gdn_cpu_gemm_avx512(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs,
                                              int64_t a_cs, const float *B, int64_t ldb, float *C, int64_t ldc)
{
    int64_t m = 0;
    for (; m + 8 <= M; m += 8) {
        const float *a = A + m * a_rs;
        int64_t n0 = 0;
        for (; n0 + 32 <= N; n0 += 32) {
            __m512 c[8][2];
            for (int r = 0; r < 8; r++)
                c[r][0] = c[r][1] = _mm512_setzero_ps();
            for (int64_t k = 0; k < K; k++) {
                const __m512 b0 = _mm512_loadu_ps(B + k * ldb + n0), b1 = _mm512_loadu_ps(B + k * ldb + n0 + 16);
                for (int r = 0; r < 8; r++) {
                    const __m512 x = _mm512_set1_ps(a[r * a_rs + k * a_cs]);
                    c[r][0] = _mm512_fmadd_ps(x, b0, c[r][0]);
                    c[r][1] = _mm512_fmadd_ps(x, b1, c[r][1]);
                }
            }
            for (int r = 0; r < 8; r++) {
                float *y = C + (m + r) * ldc + n0;
                _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), c[r][0]));
                _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_loadu_ps(y + 16), c[r][1]));
            }
        }
        for (; n0 < N; n0 += 16) {
            __m512 c[8];
            for (int r = 0; r < 8; r++)
                c[r] = _mm512_setzero_ps();
            for (int64_t k = 0; k < K; k++) {
                const __m512 b = _mm512_loadu_ps(B + k * ldb + n0);
                for (int r = 0; r < 8; r++)
                    c[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * a_rs + k * a_cs]), b, c[r]);
            }
            for (int r = 0; r < 8; r++) {
                float *y = C + (m + r) * ldc + n0;
                _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), c[r]));
            }
        }
    }
    for (; m < M; m++)
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            __m512 c = _mm512_setzero_ps();
            for (int64_t k = 0; k < K; k++)
                c = _mm512_fmadd_ps(_mm512_set1_ps(A[m * a_rs + k * a_cs]), _mm512_loadu_ps(B + k * ldb + n0), c);
            float *y = C + m * ldc + n0;
            _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), c));
        }
}

GDN_CPU_AVX512 static void gdn_cpu_scale_avx512(float *x, int64_t n, float s)
{
    const __m512 f = _mm512_set1_ps(s);
    for (int64_t i = 0; i < n; i += 16)
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), f));
}

const gdn_cpu_kernels gdn_cpu_kernels_avx512 = {
    "avx512", 64, gdn_cpu_token_avx512, gdn_cpu_fold_avx512, gdn_cpu_store_avx512, gdn_cpu_fence_avx512,
    gdn_cpu_copy_stream_avx512, gdn_cpu_load_bf16_avx512, gdn_cpu_store_bf16_avx512, gdn_cpu_gemm_avx512,
    gdn_cpu_scale_avx512,
};
#else
/* Not x86: nothing to build here (ISO C wants a non-empty file). */
typedef int gdn_cpu_no_x86_kernels;
#endif
