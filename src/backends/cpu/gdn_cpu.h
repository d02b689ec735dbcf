/* gdn_cpu.h: what the CPU backend's files share: the backend context, the SIMD levels and the
 * per-level kernel table that the Gated DeltaNet driver (gdn_cpu.c) calls into. */
#ifndef GDN_CPU_H
#define GDN_CPU_H

#include "../backend.h"
#include "threadpool.h"

#include <time.h>

typedef enum gdn_cpu_simd {
    GDN_CPU_SIMD_SCALAR = 0,
    GDN_CPU_SIMD_AVX2 = 1,   /* AVX2 + FMA */
    GDN_CPU_SIMD_AVX512 = 2  /* AVX-512F */
} gdn_cpu_simd;

/* One token of the update for a group of rows of one head: the kernels' argument struct.
 * Row r (a contiguous D-float vector) is read from in + r * in_stride and written, updated, to
 * out + r * out_stride (strides in floats). out may equal in (an in-place cache slot); each row
 * is read completely before any of its floats is written. */
typedef struct gdn_cpu_token {
    const float *in;
    int64_t in_stride;
    float *out;
    int64_t out_stride;
    int stream;          /* out rows are stream_align-aligned: store them bypassing the cache */
    int64_t prefetch;    /* floats ahead of each `in` element to prefetch (0: none): in is
                          * main memory (the initial state), read once in a sequential stream */
    int64_t n_rows;
    int64_t D;           /* a multiple of 16 */
    const float *q, *k;  /* [D], 64-byte aligned (already L2-normalised when asked) */
    const float *v;      /* [n_rows]: this token's v[j] of each row (fold: its delta[j]) */
    float *o;            /* [n_rows]: written with scale * (row . q) */
    float *delta;        /* [n_rows] or NULL: written with each row's d = beta (v - sk) */
    float decay, beta, scale;
    int bf16;            /* BF16 state storage, GDN_CPU_* bits below (0: F32 rows, as above) */
    /* fold only: n_fold (1..GDN_CPU_FOLD_MAX) ring tokens applied in one pass over the rows, k
     * [n_fold][D] (each 64-byte aligned), v [n_fold][n_rows] their deltas, decays[n_fold] */
    int n_fold;
    const float *decays;
} gdn_cpu_token;

#define GDN_CPU_FOLD_MAX 4

/* gdn_cpu_token.bf16: `in` rows are BF16 values (in_stride in elements; widened exactly);
 * `out` rows are BF16 (the rounded values narrowed); F32 `out` rows hold BF16-rounded values.
 * Either of the first two implies the rounding: with BF16 storage every token's state is
 * rounded (include/gdn.h), after its o is taken. The fold kernel honours GDN_CPU_ROUND only. */
#define GDN_CPU_IN_BF16 1
#define GDN_CPU_OUT_BF16 2
#define GDN_CPU_ROUND 4

/* The inner loops of one SIMD level. Each level fixes its own order of floating-point
 * operations per state row, and every row of every call goes through the same function with
 * the same D: that is what makes results independent of T, B, the thread count and the row
 * split. Per row: row *= decay; sk = row . k; d = beta (v - sk); row += d k; o = scale row . q. */
typedef struct gdn_cpu_kernels {
    const char *name;    /* "scalar", "avx2", "avx512" */
    size_t stream_align; /* bytes an out row must be aligned to for streaming stores */
    void (*token)(const gdn_cpu_token *token);
    /* Folded replay tokens: per row, for f = 0 .. n_fold-1 in order, row = row * decays[f] +
     * v[f][r] k[f] with v[f][r] the delta the row's token update computed (the same expression as
     * that update's write, so the same floats; with GDN_CPU_ROUND rounded after each f), the row
     * read once and written once; no q, no o, no streaming. */
    void (*fold)(const gdn_cpu_token *token);
    /* Copy n floats (a multiple of 16) from src (64-byte aligned) to dst; with `stream`, dst is
     * stream_align-aligned and the stores bypass the cache. */
    void (*store)(float *dst, const float *src, int64_t n, int stream);
    /* Order earlier streaming stores before later stores (sfence); NULL: the level never streams. */
    void (*fence)(void);
    /* memcpy with streaming stores (any alignment; fenced before returning); NULL exactly when
     * fence is NULL. */
    void (*copy_stream)(void *dst, const void *src, size_t bytes);
    /* BF16 state storage: the state is read from BF16, updated in F32 floats and rounded back to
     * BF16 after every token, by the token and fold kernels themselves (gdn_cpu_token.bf16: to
     * the nearest BF16 value, ties to even, the low 16 bits cleared, overflow to infinity, a NaN
     * kept a quiet NaN: gdn_cpu_f32_to_bf16's rule, in integer arithmetic on the float bits on
     * every level, no AVX512-BF16 instructions). These two move rows the kernels cannot read or
     * write in place (strided BF16 rows, the replay form's pool): n is a multiple of 16; the float
     * side is the 64-byte aligned L1 buffer, the BF16 side any 2-byte aligned memory. */
    /* dst[0..n) <- the n BF16 values at src, widened (exact: a BF16 is the upper half of a float). */
    void (*load_bf16)(float *dst, const uint16_t *src, int64_t n);
    /* dst[0..n) <- the upper halves of the n floats at src, which the kernels made BF16-exact. */
    void (*store_bf16)(uint16_t *dst, const float *src, int64_t n);
    /* The chunked form's matrix products (gdn_cpu_chunk.c): C[m][n] += sum_k A(m,k) B[k][n] for
     * m < M, n < N (a multiple of 16), k < K; A(m,k) = A[m a_rs + k a_cs], B and C rows ldb and
     * ldc floats apart. Per element the sum over k runs in order into an accumulator that starts
     * at 0 and is then added to C. */
    void (*gemm)(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_rs, int64_t a_cs, const float *B,
                 int64_t ldb, float *C, int64_t ldc);
    /* x[i] *= s for i < n (n a multiple of 16): the chunked form's decay of a whole state, one
     * rounded multiply an element on every level. */
    void (*scale)(float *x, int64_t n, float s);
} gdn_cpu_kernels;

extern const gdn_cpu_kernels gdn_cpu_kernels_scalar;
#if defined(__x86_64__) || defined(__i386__)
#define GDN_CPU_X86 1
extern const gdn_cpu_kernels gdn_cpu_kernels_avx2;
extern const gdn_cpu_kernels gdn_cpu_kernels_avx512;
#endif

typedef struct gdn_cpu_context {
    gdn_cpu_threadpool *pool;
    int n_threads;
    gdn_cpu_simd simd;
    const gdn_cpu_kernels *kernels;
    /* Snapshot bytes per call from which snapshots (other than an in-place update of `state`)
     * are written with streaming stores: the threads' private L2 caches together. Beyond that
     * the lines leave the writing core anyway, and a normal store would first read each line
     * (read-for-ownership). The shared L3 is left out: what sysconf reports for it is often the
     * whole socket, and a state cache worth the name is larger than any L3. */
    size_t stream_threshold;
    struct timespec timer_start;
} gdn_cpu_context;

/* The gated_delta_net entry of gdn_cpu_backend_ops (arguments validated by the caller). */
/* x <- x / sqrt(|x|^2 + 1e-6), the l2norm of fla and Hugging Face, for n a multiple of 4. The sum
 * of squares runs in double in a fixed order, so every task that needs this (token, k-head)
 * vector computes the same floats, in both forms of the op. */
void gdn_cpu_l2_normalise(float *x, int64_t n);

gdn_status gdn_cpu_gated_delta_net(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                   const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape);

/* The gated_delta_net_chunked entry of gdn_cpu_backend_ops (backend.h); gdn_cpu_chunk.c. */
gdn_status gdn_cpu_gated_delta_net_chunked(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                           const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape,
                                           int64_t n, int64_t chunk, const gdn_tensor *final,
                                           const gdn_tensor *final_index);

/* The run_op entry of gdn_cpu_backend_ops: every op of the op table except GATED_DELTA_NET
 * (call validated by gdn_op_check); ops_cpu.c. */
gdn_status gdn_cpu_run_op(gdn_backend *backend, const gdn_op_call *call);

#endif
