/* gdn_cpu_avx2.c: AVX2 + FMA kernels of the CPU backend. Compiled with target attributes, so
 * the library builds with plain flags; backend_cpu.c only selects them on CPUs that have both.
 *
 * Order of operations per row (fixed for every row, call, T, B and thread count). The row is
 * cut into 8-float chunks c; chunk c goes to accumulator c % 4 (D = 16 has chunks 0 and 1 only):
 *   pass 1: x = in[c] * decay; a[c % 4] = fma(x, k[c], a[c % 4])
 *           sk = hsum((a0 + a1) + (a2 + a3)); d = beta * (v - sk)
 *   pass 2: x = fma(d, k[c], in[c] * decay); out[c] = x; b[c % 4] = fma(x, q[c], b[c % 4])
 *           o = scale * hsum((b0 + b1) + (b2 + b3))
 * Rows read from DRAM go one at a time, in memory order: measured on an EPYC VM, interleaving
 * four rows was faster from L2 but a third slower from DRAM (the reads no longer form one stream
 * ahead of the out-of-order window); on a Xeon the two were equal. Rows in the L1 buffer (every
 * token after the first) go two at a time, sharing the k and q loads (gdn_cpu_rows2_avx2). Pass 2
 * recomputes in * decay rather than storing it in pass 1, so the row is written once, straight
 * to its destination. */
#include "gdn_cpu.h"

#ifdef GDN_CPU_X86
#include <immintrin.h>
#include <string.h>

#define GDN_CPU_AVX2 __attribute__((target("avx2,fma")))
#define GDN_CPU_AVX2_INLINE static inline __attribute__((target("avx2,fma"), always_inline))

/* Sum of 8 lanes as ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)): a fixed tree. */
GDN_CPU_AVX2_INLINE float gdn_cpu_hsum_avx2(__m256 x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Pass 1, chunk at offset i: acc += (in * decay) * k. */
GDN_CPU_AVX2_INLINE void gdn_cpu_pass1_avx2(const float *in, const float *k, int64_t i, __m256 decay,
                                            __m256 *acc)
{
    *acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in + i), decay), _mm256_load_ps(k + i), *acc);
}

/* Pass 2, chunk at offset i: x = d k + in * decay; out = x; acc += x * q. The load precedes
 * the store, so out may equal in. */
GDN_CPU_AVX2_INLINE void gdn_cpu_pass2_avx2(const float *in, float *out, const int stream,
                                            const float *q, const float *k, int64_t i, __m256 decay,
                                            __m256 d, __m256 *acc)
{
    __m256 x = _mm256_fmadd_ps(d, _mm256_load_ps(k + i), _mm256_mul_ps(_mm256_loadu_ps(in + i), decay));
    if (stream)
        _mm256_stream_ps(out + i, x);
    else
        _mm256_storeu_ps(out + i, x);
    *acc = _mm256_fmadd_ps(x, _mm256_load_ps(q + i), *acc);
}

/* One row. `stream` is a constant at each call site (the function is inlined per value), and
 * everything the loops touch is a local: vector stores may alias anything, so fields read
 * through a pointer would be reloaded after every store. */
GDN_CPU_AVX2_INLINE float gdn_cpu_row_avx2(const float *in, float *out, const int stream,
                                           int64_t prefetch, int64_t D, const float *restrict q,
                                           const float *restrict k, __m256 decay, float beta, float v,
                                           float scale, float *delta)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < D; i += 32) {
        if (prefetch) { /* one prefetch per 64-byte line */
            _mm_prefetch((const char *)(in + prefetch + i), _MM_HINT_T0);
            if (D > 16)
                _mm_prefetch((const char *)(in + prefetch + i + 16), _MM_HINT_T0);
        }
        gdn_cpu_pass1_avx2(in, k, i, decay, &a0);
        gdn_cpu_pass1_avx2(in, k, i + 8, decay, &a1);
        if (D > 16) { /* D is 16 or a multiple of 32 */
            gdn_cpu_pass1_avx2(in, k, i + 16, decay, &a2);
            gdn_cpu_pass1_avx2(in, k, i + 24, decay, &a3);
        }
    }
    const float sk = gdn_cpu_hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    const float dd = beta * (v - sk);
    if (delta != NULL)
        *delta = dd;
    const __m256 d = _mm256_set1_ps(dd);

    __m256 b0 = _mm256_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
    for (int64_t i = 0; i < D; i += 32) {
        gdn_cpu_pass2_avx2(in, out, stream, q, k, i, decay, d, &b0);
        gdn_cpu_pass2_avx2(in, out, stream, q, k, i + 8, decay, d, &b1);
        if (D > 16) {
            gdn_cpu_pass2_avx2(in, out, stream, q, k, i + 16, decay, d, &b2);
            gdn_cpu_pass2_avx2(in, out, stream, q, k, i + 24, decay, d, &b3);
        }
    }
    return scale * gdn_cpu_hsum_avx2(_mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)));
}

/* Two rows at once, from the L1 buffer (no prefetch, no streaming): each row's operations in
 * exactly gdn_cpu_row_avx2's order, so the results are the same bits, but the k and q chunks
 * are loaded once for both rows and the two rows' dependency chains (the sums, then d) overlap.
 * A row-token is load-bound from L1 (80 loads for 80 arithmetic operations at D = 128); this
 * makes it 56 loads. Row 0 is read whole before it is written, row 1 likewise; in and out rows
 * are either the same rows (in place) or apart. */
GDN_CPU_AVX2_INLINE void gdn_cpu_rows2_avx2(const float *in0, const float *in1, float *out0, float *out1, int64_t D,
                                            const float *restrict q, const float *restrict k, __m256 decay, float beta,
                                            float v0, float v1, float scale, float *o, float *delta)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0;
    for (int64_t i = 0; i < D; i += 32) {
        __m256 kk = _mm256_load_ps(k + i);
        a0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in0 + i), decay), kk, a0);
        c0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in1 + i), decay), kk, c0);
        kk = _mm256_load_ps(k + i + 8);
        a1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in0 + i + 8), decay), kk, a1);
        c1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in1 + i + 8), decay), kk, c1);
        if (D > 16) {
            kk = _mm256_load_ps(k + i + 16);
            a2 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in0 + i + 16), decay), kk, a2);
            c2 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in1 + i + 16), decay), kk, c2);
            kk = _mm256_load_ps(k + i + 24);
            a3 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in0 + i + 24), decay), kk, a3);
            c3 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in1 + i + 24), decay), kk, c3);
        }
    }
    const float d0 = beta * (v0 - gdn_cpu_hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))));
    const float d1 = beta * (v1 - gdn_cpu_hsum_avx2(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3))));
    if (delta != NULL)
        delta[0] = d0, delta[1] = d1;
    const __m256 e0 = _mm256_set1_ps(d0), e1 = _mm256_set1_ps(d1);
    __m256 b0 = _mm256_setzero_ps(), b1 = b0, b2 = b0, b3 = b0, f0 = b0, f1 = b0, f2 = b0, f3 = b0;
    for (int64_t i = 0; i < D; i += 32) {
        for (int c = 0; c < (D > 16 ? 4 : 2); c++) {
            const int64_t at = i + 8 * c;
            const __m256 kk = _mm256_load_ps(k + at), qq = _mm256_load_ps(q + at);
            const __m256 x = _mm256_fmadd_ps(e0, kk, _mm256_mul_ps(_mm256_loadu_ps(in0 + at), decay));
            const __m256 y = _mm256_fmadd_ps(e1, kk, _mm256_mul_ps(_mm256_loadu_ps(in1 + at), decay));
            _mm256_storeu_ps(out0 + at, x);
            _mm256_storeu_ps(out1 + at, y);
            switch (c) { /* accumulator c % 4, as the one-row kernel */
            case 0: b0 = _mm256_fmadd_ps(x, qq, b0), f0 = _mm256_fmadd_ps(y, qq, f0); break;
            case 1: b1 = _mm256_fmadd_ps(x, qq, b1), f1 = _mm256_fmadd_ps(y, qq, f1); break;
            case 2: b2 = _mm256_fmadd_ps(x, qq, b2), f2 = _mm256_fmadd_ps(y, qq, f2); break;
            default: b3 = _mm256_fmadd_ps(x, qq, b3), f3 = _mm256_fmadd_ps(y, qq, f3); break;
            }
        }
    }
    o[0] = scale * gdn_cpu_hsum_avx2(_mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)));
    o[1] = scale * gdn_cpu_hsum_avx2(_mm256_add_ps(_mm256_add_ps(f0, f1), _mm256_add_ps(f2, f3)));
}

/* BF16 state storage inside the token (gdn_cpu_token.bf16): a chunk of 8 state values read from
 * F32 or BF16 rows, rounded to BF16 and written to F32 or BF16 rows. Rounding: nearest even on
 * the bits, u + 0x7fff + (bit 16 of u), low half cleared (a carry into the exponent is the next
 * binade, or infinity); a NaN (unordered with itself) keeps its upper half with the quiet bit
 * set instead, as gdn_cpu_f32_to_bf16 does. */
GDN_CPU_AVX2_INLINE __m256 gdn_cpu_load8_avx2(const void *in, int64_t i, const int bf16)
{
    if (bf16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)in + i))), 16));
    return _mm256_loadu_ps((const float *)in + i);
}

GDN_CPU_AVX2_INLINE __m256 gdn_cpu_round8_avx2(__m256 f)
{
    const __m256i u = _mm256_castps_si256(f), upper = _mm256_set1_epi32((int)0xffff0000u);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)),
                                             upper);
    const __m256i nan = _mm256_or_si256(_mm256_and_si256(u, upper), _mm256_set1_epi32(0x00400000));
    return _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(nan), _mm256_cmp_ps(f, f, _CMP_UNORD_Q));
}

GDN_CPU_AVX2_INLINE void gdn_cpu_store8_avx2(void *out, int64_t i, __m256 rounded, const int bf16)
{
    if (bf16) {
        const __m256i halves = _mm256_srli_epi32(_mm256_castps_si256(rounded), 16);
        _mm_storeu_si128((__m128i *)((uint16_t *)out + i),
                         _mm_packus_epi32(_mm256_castsi256_si128(halves), _mm256_extracti128_si256(halves, 1)));
    } else {
        _mm256_storeu_ps((float *)out + i, rounded);
    }
}

/* One row with BF16 storage: the F32 row's arithmetic in the same order (gdn_cpu_row_avx2), the
 * state read as in_bf16 says, o from the unrounded values, the rounded values stored. */
GDN_CPU_AVX2_INLINE float gdn_cpu_row_bf16_avx2(const void *in, void *out, const int in_bf16, const int out_bf16,
                                                int64_t prefetch, int64_t D, const float *restrict q,
                                                const float *restrict k, __m256 decay, float beta, float v,
                                                float scale, float *delta)
{
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < D; i += 32) {
        if (prefetch) /* BF16: one 64-byte line per 32 elements */
            _mm_prefetch((const char *)in + (prefetch + i) * (in_bf16 ? 2 : 4), _MM_HINT_T0);
        for (int c = 0; c < (D > 16 ? 4 : 2); c++)
            a[c] = _mm256_fmadd_ps(_mm256_mul_ps(gdn_cpu_load8_avx2(in, i + 8 * c, in_bf16), decay),
                                   _mm256_load_ps(k + i + 8 * c), a[c]);
    }
    const float sk = gdn_cpu_hsum_avx2(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    const float dd = beta * (v - sk);
    if (delta != NULL)
        *delta = dd;
    const __m256 d = _mm256_set1_ps(dd);
    __m256 b[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < D; i += 32)
        for (int c = 0; c < (D > 16 ? 4 : 2); c++) {
            const int64_t at = i + 8 * c;
            const __m256 x = _mm256_fmadd_ps(d, _mm256_load_ps(k + at),
                                             _mm256_mul_ps(gdn_cpu_load8_avx2(in, at, in_bf16), decay));
            b[c] = _mm256_fmadd_ps(x, _mm256_load_ps(q + at), b[c]);
            gdn_cpu_store8_avx2(out, at, gdn_cpu_round8_avx2(x), out_bf16);
        }
    return scale * gdn_cpu_hsum_avx2(_mm256_add_ps(_mm256_add_ps(b[0], b[1]), _mm256_add_ps(b[2], b[3])));
}

/* The rows of a token with BF16 storage, for one (in, out) dtype pair. */
GDN_CPU_AVX2_INLINE void gdn_cpu_token_bf16_avx2(const gdn_cpu_token *a, const int in_bf16, const int out_bf16)
{
    const __m256 decay = _mm256_set1_ps(a->decay);
    for (int64_t r = 0; r < a->n_rows; r++) {
        const void *in = in_bf16 ? (const void *)((const uint16_t *)(const void *)a->in + r * a->in_stride)
                                 : (const void *)(a->in + r * a->in_stride);
        void *out = out_bf16 ? (void *)((uint16_t *)(void *)a->out + r * a->out_stride)
                             : (void *)(a->out + r * a->out_stride);
        a->o[r] = gdn_cpu_row_bf16_avx2(in, out, in_bf16, out_bf16, a->prefetch, a->D, a->q, a->k, decay, a->beta,
                                        a->v[r], a->scale, a->delta != NULL ? a->delta + r : NULL);
    }
}

GDN_CPU_AVX2 static void gdn_cpu_token_avx2(const gdn_cpu_token *a)
{
    if (a->bf16) {
        const int in_bf16 = (a->bf16 & GDN_CPU_IN_BF16) != 0, out_bf16 = (a->bf16 & GDN_CPU_OUT_BF16) != 0;
        if (in_bf16 && out_bf16)
            gdn_cpu_token_bf16_avx2(a, 1, 1);
        else if (in_bf16)
            gdn_cpu_token_bf16_avx2(a, 1, 0);
        else if (out_bf16)
            gdn_cpu_token_bf16_avx2(a, 0, 1);
        else
            gdn_cpu_token_bf16_avx2(a, 0, 0);
        return;
    }
    const __m256 decay = _mm256_set1_ps(a->decay);
    int64_t r = 0;
    if (!a->stream && a->prefetch == 0) /* rows from the L1 buffer: two at a time */
        for (; r + 2 <= a->n_rows; r += 2) {
            const float *in = a->in + r * a->in_stride;
            float *out = a->out + r * a->out_stride;
            gdn_cpu_rows2_avx2(in, in + a->in_stride, out, out + a->out_stride, a->D, a->q, a->k, decay, a->beta,
                               a->v[r], a->v[r + 1], a->scale, a->o + r, a->delta != NULL ? a->delta + r : NULL);
        }
    for (; r < a->n_rows; r++) {
        const float *in = a->in + r * a->in_stride;
        float *out = a->out + r * a->out_stride;
        if (a->stream)
            a->o[r] = gdn_cpu_row_avx2(in, out, 1, a->prefetch, a->D, a->q, a->k, decay, a->beta, a->v[r],
                                       a->scale, a->delta != NULL ? a->delta + r : NULL);
        else
            a->o[r] = gdn_cpu_row_avx2(in, out, 0, a->prefetch, a->D, a->q, a->k, decay, a->beta, a->v[r],
                                       a->scale, a->delta != NULL ? a->delta + r : NULL);
    }
}

/* Folded tokens (gdn_cpu_kernels.fold): per chunk, for each token x = d k + x * decay, as pass 2
 * writes it, the chunk kept in a register from the first token to the last. One fold per pass
 * was store-bound (a row written per token); this writes it once. */
GDN_CPU_AVX2_INLINE void gdn_cpu_fold_rows_avx2(const gdn_cpu_token *a, const int round)
{
    const int n = a->n_fold;
    __m256 decay[GDN_CPU_FOLD_MAX];
    for (int f = 0; f < n; f++)
        decay[f] = _mm256_set1_ps(a->decays[f]);
    for (int64_t r = 0; r < a->n_rows; r++) {
        const float *in = a->in + r * a->in_stride;
        float *out = a->out + r * a->out_stride;
        __m256 d[GDN_CPU_FOLD_MAX];
        for (int f = 0; f < n; f++)
            d[f] = _mm256_set1_ps(a->v[(int64_t)f * a->n_rows + r]);
        for (int64_t i = 0; i < a->D; i += 8) {
            __m256 x = _mm256_loadu_ps(in + i);
            for (int f = 0; f < n; f++) {
                x = _mm256_fmadd_ps(d[f], _mm256_load_ps(a->k + (int64_t)f * a->D + i), _mm256_mul_ps(x, decay[f]));
                if (round) /* BF16 storage: each folded state rounded as the token's was */
                    x = gdn_cpu_round8_avx2(x);
            }
            _mm256_storeu_ps(out + i, x);
        }
    }
}

GDN_CPU_AVX2 static void gdn_cpu_fold_avx2(const gdn_cpu_token *a)
{
    if (a->bf16 & GDN_CPU_ROUND)
        gdn_cpu_fold_rows_avx2(a, 1);
    else
        gdn_cpu_fold_rows_avx2(a, 0);
}

GDN_CPU_AVX2 static void gdn_cpu_store_avx2(float *dst, const float *src, int64_t n, int stream)
{
    if (stream) {
        for (int64_t i = 0; i < n; i += 8)
            _mm256_stream_ps(dst + i, _mm256_load_ps(src + i));
    } else {
        for (int64_t i = 0; i < n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_load_ps(src + i));
    }
}

/* memcpy through streaming stores: unaligned loads, 32-byte aligned non-temporal stores, four
 * vectors per iteration; the unaligned head and the tail go through memcpy. */
GDN_CPU_AVX2 static void gdn_cpu_copy_stream_avx2(void *dst, const void *src, size_t bytes)
{
    char *d = dst;
    const char *s = src;
    size_t head = (32 - (uintptr_t)d % 32) % 32;
    head = head < bytes ? head : bytes;
    memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    for (; bytes >= 128; d += 128, s += 128, bytes -= 128) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)s);
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(s + 32));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(s + 64));
        __m256i v3 = _mm256_loadu_si256((const __m256i *)(s + 96));
        _mm256_stream_si256((__m256i *)d, v0);
        _mm256_stream_si256((__m256i *)(d + 32), v1);
        _mm256_stream_si256((__m256i *)(d + 64), v2);
        _mm256_stream_si256((__m256i *)(d + 96), v3);
    }
    memcpy(d, s, bytes);
    _mm_sfence();
}

static void gdn_cpu_fence_avx2(void)
{
    _mm_sfence();
}

/* BF16 rows moved to and from the L1 buffer (gdn_cpu_kernels.load_bf16, store_bf16), 8 lanes at
 * a time. A BF16 value widens to the float whose upper half it is. */
GDN_CPU_AVX2 static void gdn_cpu_load_bf16_avx2(float *dst, const uint16_t *src, int64_t n)
{
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_store_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
}

/* 16 floats -> 16 BF16 per iteration: the upper halves of two chunks packed (packus packs per
 * 128-bit lane, so the 64-bit quarters come out as lo0-3 hi0-3 lo4-7 hi4-7 and are put back in
 * order; the halves are below 2^16, so its unsigned saturation never applies). */
GDN_CPU_AVX2 static void gdn_cpu_store_bf16_avx2(uint16_t *dst, const float *src, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        const __m256i lo = _mm256_srli_epi32(_mm256_castps_si256(_mm256_load_ps(src + i)), 16);
        const __m256i hi = _mm256_srli_epi32(_mm256_castps_si256(_mm256_load_ps(src + i + 8)), 16);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8));
    }
}

/* The chunked form's products: tiles of 4 rows x 16 columns (8 accumulators) where 4 rows
 * remain, then single rows. */
GDN_CPU_AVX2 static void gdn_cpu_gemm_avx2(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs,
                                          int64_t a_cs, const float *B, int64_t ldb, float *C, int64_t ldc)
{
    int64_t m = 0;
    for (; m + 4 <= M; m += 4)
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            __m256 c[4][2];
            for (int r = 0; r < 4; r++)
                c[r][0] = c[r][1] = _mm256_setzero_ps();
            const float *a = A + m * a_rs;
            for (int64_t k = 0; k < K; k++) {
                const __m256 b0 = _mm256_loadu_ps(B + k * ldb + n0), b1 = _mm256_loadu_ps(B + k * ldb + n0 + 8);
                for (int r = 0; r < 4; r++) {
                    const __m256 x = _mm256_broadcast_ss(a + r * a_rs + k * a_cs);
                    c[r][0] = _mm256_fmadd_ps(x, b0, c[r][0]);
                    c[r][1] = _mm256_fmadd_ps(x, b1, c[r][1]);
                }
            }
            for (int r = 0; r < 4; r++) {
                float *y = C + (m + r) * ldc + n0;
                _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), c[r][0]));
                _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_loadu_ps(y + 8), c[r][1]));
            }
        }
    for (; m < M; m++)
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
            for (int64_t k = 0; k < K; k++) {
                const __m256 x = _mm256_broadcast_ss(A + m * a_rs + k * a_cs);
                c0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(B + k * ldb + n0), c0);
                c1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(B + k * ldb + n0 + 8), c1);
            }
            float *y = C + m * ldc + n0;
            _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), c0));
            _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_loadu_ps(y + 8), c1));
        }
}

GDN_CPU_AVX2 static void gdn_cpu_scale_avx2(float *x, int64_t n, float s)
{
    const __m256 f = _mm256_set1_ps(s);
    for (int64_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), f));
}

const gdn_cpu_kernels gdn_cpu_kernels_avx2 = {
    "avx2", 32, gdn_cpu_token_avx2, gdn_cpu_fold_avx2, gdn_cpu_store_avx2, gdn_cpu_fence_avx2,
    gdn_cpu_copy_stream_avx2, gdn_cpu_load_bf16_avx2, gdn_cpu_store_bf16_avx2, gdn_cpu_gemm_avx2,
    gdn_cpu_scale_avx2,
};
#else
/* Not x86: nothing to build here (ISO C wants a non-empty file). */
typedef int gdn_cpu_no_x86_kernels;
#endif
