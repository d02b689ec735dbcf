/* ops_cpu.h: what the CPU kernels of the op table share (ops_cpu.c, ops_cpu_elementwise.c,
 * ops_cpu_matmul.c): a job of independent rows spread over the backend's thread pool, and
 * strided-view index helpers.
 *
 * Exactness: a row's function computes each of its output elements with one loop in a fixed
 * order that depends only on the op's sizes (never on how many rows share the call, which
 * thread runs it or how rows are claimed), so every op is batch- and thread-count-invariant. */
#ifndef GDN_OPS_CPU_H
#define GDN_OPS_CPU_H

#include "gdn_cpu.h"

#include <stdatomic.h>
#include <string.h>

typedef struct gdn_cpu_rows_job gdn_cpu_rows_job;

/* Compute rows [first, last) of a job on thread `thread_index` (its scratch: job->scratch +
 * thread_index * job->scratch_bytes). */
typedef void (*gdn_cpu_row_fn)(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index);

struct gdn_cpu_rows_job {
    const gdn_op_call *call;
    int avx2;               /* 1: use the AVX2 + FMA kernels (the backend's level is avx2 or above) */
    gdn_cpu_row_fn fn;
    int64_t n_rows;         /* units of work, each computed by fn alone */
    int64_t rows_per_claim;
    int64_t aux;            /* op-specific (mul_mat: rows of x, M) */
    char *scratch;          /* n_threads * scratch_bytes, 64-byte aligned slices; NULL if none */
    size_t scratch_bytes;
    atomic_llong next_row;  /* first row not yet claimed */
};

/* Run fn over n_rows rows on the backend's pool (on the calling thread alone when the call is
 * small: `work` elements in all below a threshold). scratch_bytes per thread are allocated
 * for the call. Returns GDN_OK or GDN_ERROR_OUT_OF_MEMORY. */
gdn_status gdn_cpu_run_rows(gdn_backend *backend, const gdn_op_call *call, int64_t n_rows, int64_t work,
                            gdn_cpu_row_fn fn, size_t scratch_bytes, int64_t aux);

/* idx[1..5] <- the coordinates of flat row r over counts ne[1..5] (dim 1 fastest); idx[0] = 0. */
static inline void gdn_cpu_row_index(const int64_t *ne, int64_t r, int64_t *idx)
{
    idx[0] = 0;
    for (int i = 1; i < GDN_MAX_DIMS; i++) {
        idx[i] = r % ne[i];
        r /= ne[i];
    }
}

/* Byte offset of element idx[0..5] in a view. */
static inline size_t gdn_cpu_offset(const gdn_tensor *t, const int64_t *idx)
{
    size_t off = 0;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        off += (size_t)idx[i] * t->nb[i];
    return off;
}

static inline float gdn_cpu_load_f32(const char *p)
{
    float x;
    memcpy(&x, p, sizeof x);
    return x;
}

static inline void gdn_cpu_store_f32(char *p, float x)
{
    memcpy(p, &x, sizeof x);
}

/* BF16 -> F32 is exact: the BF16 is the upper half of the float. */
static inline float gdn_cpu_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* F32 -> BF16, rounding to nearest with ties to even (overflow gives infinity); a NaN stays a
 * quiet NaN with its sign and upper payload. */
static inline uint16_t gdn_cpu_f32_to_bf16(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((bits >> 16) | 0x0040u);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* Element i of a row of F32 or BF16 values `stride` bytes apart, as a float. */
static inline float gdn_cpu_load_any(const char *row, size_t stride, gdn_dtype dtype, int64_t i)
{
    const char *p = row + (size_t)i * stride;
    if (dtype == GDN_DTYPE_BF16) {
        uint16_t h;
        memcpy(&h, p, sizeof h);
        return gdn_cpu_bf16_to_f32(h);
    }
    return gdn_cpu_load_f32(p);
}

/* The per-family entry points (call validated by gdn_op_check). */
gdn_status gdn_cpu_elementwise(gdn_backend *backend, const gdn_op_call *call); /* add .. exp */
gdn_status gdn_cpu_gates(gdn_backend *backend, const gdn_op_call *call);       /* gdn_gates */
gdn_status gdn_cpu_norm(gdn_backend *backend, const gdn_op_call *call);        /* l2, rms, rms gated */
gdn_status gdn_cpu_mul_mat(gdn_backend *backend, const gdn_op_call *call);

#endif
