/* ops_cpu.c: the CPU backend's run_op: dispatch by kind, the row job over the thread pool, and
 * the data-movement ops (ssm_conv, get_rows, concat, cpy). Arithmetic families live in
 * ops_cpu_elementwise.c (elementwise, norms) and ops_cpu_matmul.c. */
#include "ops_cpu.h"

#include <stdlib.h>

/* Calls with fewer elements of work than this run on the calling thread: waking the pool costs
 * more. Which thread computes a row never changes its bits, so this is only about speed. */
#define GDN_CPU_OPS_SERIAL_WORK 32768
#define GDN_CPU_OPS_CLAIMS_PER_THREAD 4

static void gdn_cpu_rows_worker(void *ctx, int thread_index, int n_threads)
{
    (void)n_threads;
    gdn_cpu_rows_job *job = ctx;
    for (;;) {
        const int64_t first = atomic_fetch_add_explicit(&job->next_row, job->rows_per_claim, memory_order_relaxed);
        if (first >= job->n_rows)
            break;
        const int64_t last = first + job->rows_per_claim < job->n_rows ? first + job->rows_per_claim : job->n_rows;
        job->fn(job, first, last, thread_index);
    }
}

gdn_status gdn_cpu_run_rows(gdn_backend *backend, const gdn_op_call *call, int64_t n_rows, int64_t work,
                            gdn_cpu_row_fn fn, size_t scratch_bytes, int64_t aux)
{
    const gdn_cpu_context *context = backend->context;
    gdn_cpu_rows_job job;
    job.call = call;
#ifdef GDN_CPU_X86
    job.avx2 = context->simd >= GDN_CPU_SIMD_AVX2; /* avx512 runs the avx2 kernels of these ops */
#else
    job.avx2 = 0;
#endif
    job.fn = fn;
    job.n_rows = n_rows;
    job.aux = aux;
    job.scratch = NULL;
    job.scratch_bytes = (scratch_bytes + 63) & ~(size_t)63;
    const int serial = context->n_threads == 1 || work < GDN_CPU_OPS_SERIAL_WORK || n_rows < 2;
    if (job.scratch_bytes > 0) {
        const size_t threads = serial ? 1 : (size_t)context->n_threads;
        void *p = NULL;
        if (posix_memalign(&p, 64, job.scratch_bytes * threads) != 0)
            return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "%s on cpu: cannot allocate %zu bytes of scratch",
                            gdn_op_traits_of(call->kind)->name, job.scratch_bytes * threads);
        job.scratch = p;
    }
    if (serial) {
        fn(&job, 0, n_rows, 0);
    } else {
        job.rows_per_claim = n_rows / ((int64_t)context->n_threads * GDN_CPU_OPS_CLAIMS_PER_THREAD);
        if (job.rows_per_claim < 1)
            job.rows_per_claim = 1;
        atomic_init(&job.next_row, 0);
        gdn_cpu_threadpool_run(context->pool, gdn_cpu_rows_worker, &job);
    }
    free(job.scratch);
    return GDN_OK;
}

/* Number of rows (product of ne[1..5]) of a view. */
static int64_t gdn_cpu_n_rows(const gdn_tensor *t)
{
    int64_t n = 1;
    for (int i = 1; i < GDN_MAX_DIMS; i++)
        n *= t->ne[i];
    return n;
}

/* ssm_conv, one row of dst per (t, b): dst[b][t][c] = sum_{i<Kconv} x[b][c][t+i] * w[c][i],
 * accumulated in float from i = 0 upward. */
static void gdn_cpu_ssm_conv_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    (void)thread_index;
    const gdn_tensor *x = &job->call->src[0], *w = &job->call->src[1], *dst = &job->call->dst[0];
    const int64_t C = dst->ne[0], K = w->ne[0];
    for (int64_t r = first; r < last; r++) {
        int64_t idx[GDN_MAX_DIMS];
        gdn_cpu_row_index(dst->ne, r, idx);
        const int64_t t = idx[1], b = idx[2];
        char *out = (char *)dst->data + gdn_cpu_offset(dst, idx);
        const char *x_b = (const char *)x->data + (size_t)b * x->nb[2] + (size_t)t * x->nb[0];
        for (int64_t c = 0; c < C; c++) {
            const char *xc = x_b + (size_t)c * x->nb[1];
            const char *wc = (const char *)w->data + (size_t)c * w->nb[1];
            float sum = 0.0f;
            for (int64_t i = 0; i < K; i++)
                sum += gdn_cpu_load_f32(xc + (size_t)i * x->nb[0]) * gdn_cpu_load_f32(wc + (size_t)i * w->nb[0]);
            gdn_cpu_store_f32(out + (size_t)c * dst->nb[0], sum);
        }
    }
}

/* get_rows, one row of dst per index (indices already checked). */
static void gdn_cpu_get_rows_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    (void)thread_index;
    const gdn_tensor *a = &job->call->src[0], *index = &job->call->src[1], *dst = &job->call->dst[0];
    for (int64_t r = first; r < last; r++) {
        int32_t row;
        memcpy(&row, (const char *)index->data + (size_t)r * index->nb[0], sizeof row);
        const char *in = (const char *)a->data + (size_t)row * a->nb[1];
        char *out = (char *)dst->data + (size_t)r * dst->nb[1];
        if (dst->dtype == GDN_DTYPE_BF16) /* a is BF16 too: the bits as they are */
            for (int64_t i = 0; i < dst->ne[0]; i++)
                memcpy(out + (size_t)i * dst->nb[0], in + (size_t)i * a->nb[0], sizeof(uint16_t));
        else
            for (int64_t i = 0; i < dst->ne[0]; i++)
                gdn_cpu_store_f32(out + (size_t)i * dst->nb[0], gdn_cpu_load_any(in, a->nb[0], a->dtype, i));
    }
}

/* Every index must name a row of a; checked before any row is written, so a bad index leaves
 * dst untouched. */
static gdn_status gdn_cpu_get_rows(gdn_backend *backend, const gdn_op_call *call)
{
    const gdn_tensor *a = &call->src[0], *index = &call->src[1];
    for (int64_t r = 0; r < index->ne[0]; r++) {
        int32_t row;
        memcpy(&row, (const char *)index->data + (size_t)r * index->nb[0], sizeof row);
        if (row < 0 || row >= a->ne[1])
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "get_rows: index[%lld]=%d is outside 0..%lld (rows of a)",
                            (long long)r, (int)row, (long long)(a->ne[1] - 1));
    }
    return gdn_cpu_run_rows(backend, call, index->ne[0], index->ne[0] * a->ne[0], gdn_cpu_get_rows_rows, 0, 0);
}

/* concat, one row of dst (dims 1..5) at a time, element by element in order: with an index, a's
 * outer position j is read from slot index[j]; with a tee, an element inside the tee's box is
 * also written there, right after it was read. A tee that aliases the pool (dim 0, own slots:
 * gdn_op_check_index) writes row element i - offset only after element i was read, and i -
 * offset <= i, so every pool element is read before it is overwritten. */
static void gdn_cpu_concat_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    (void)thread_index;
    const gdn_op_call *call = job->call;
    const gdn_tensor *a = &call->src[0], *b = &call->src[1], *dst = &call->dst[0];
    const gdn_tensor *tee = call->n_dst == 2 ? &call->dst[1] : NULL;
    const int dim = call->params.concat.dim, indexed = gdn_op_has_src_index(call), outer = gdn_op_index_dim(call);
    const int64_t *off = call->tee_offset;
    const int slots = call->indexed_dst == 2 ? outer : -1; /* a tee written through an index */
    for (int64_t r = first; r < last; r++) {
        int64_t idx[GDN_MAX_DIMS];
        gdn_cpu_row_index(dst->ne, r, idx);
        char *out = (char *)dst->data + gdn_cpu_offset(dst, idx);
        char *tee_row = NULL; /* this row's place in the tee, if it has one */
        if (tee != NULL) {
            int64_t t[GDN_MAX_DIMS];
            int inside = 1;
            for (int k = 1; k < GDN_MAX_DIMS; k++) {
                t[k] = idx[k] - off[k];
                if (k == slots) {
                    int32_t s32;
                    memcpy(&s32, (const char *)call->src[call->n_src - 1].data + (size_t)idx[k] *
                           call->src[call->n_src - 1].nb[0], sizeof s32);
                    t[k] = s32;
                }
                inside &= t[k] >= 0 && t[k] < tee->ne[k];
            }
            t[0] = 0;
            if (inside)
                tee_row = (char *)tee->data + gdn_cpu_offset(tee, t);
        }
        int64_t slot = idx[outer];
        if (indexed) {
            int32_t s32;
            memcpy(&s32, (const char *)call->src[2].data + (size_t)idx[outer] * call->src[2].nb[0], sizeof s32);
            slot = s32;
        }
        for (int64_t i = 0; i < dst->ne[0]; i++) {
            int64_t from[GDN_MAX_DIMS];
            memcpy(from, idx, sizeof from);
            from[0] = i;
            const gdn_tensor *src = a;
            if (from[dim] >= a->ne[dim]) {
                from[dim] -= a->ne[dim];
                src = b;
            } else {
                from[outer] = slot;
            }
            uint32_t bits;
            memcpy(&bits, (const char *)src->data + gdn_cpu_offset(src, from), sizeof bits);
            memcpy(out + (size_t)i * dst->nb[0], &bits, sizeof bits);
            if (tee_row != NULL && i >= off[0] && i - off[0] < tee->ne[0])
                memcpy(tee_row + (size_t)(i - off[0]) * tee->nb[0], &bits, sizeof bits);
        }
    }
}

/* The index (range and pool aliasing) is checked before any row is written. */
static gdn_status gdn_cpu_concat(gdn_backend *backend, const gdn_op_call *call, int64_t rows, int64_t work)
{
    gdn_status st = gdn_op_check_index(call);
    if (st != GDN_OK)
        return st;
    return gdn_cpu_run_rows(backend, call, rows, work, gdn_cpu_concat_rows, 0, 0);
}

/* set_rows, one row of a (dims 1..5) at a time: to dst's row with dim `dim` taken from the
 * index (elements moved as bits; with dim 0, element by element). */
static void gdn_cpu_set_rows_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    (void)thread_index;
    const gdn_op_call *call = job->call;
    const gdn_tensor *a = &call->src[0], *index = &call->src[1], *dst = &call->dst[0];
    const int dim = call->params.set_rows.dim;
    const size_t elem = gdn_dtype_size(a->dtype);
    for (int64_t r = first; r < last; r++) {
        int64_t idx[GDN_MAX_DIMS];
        gdn_cpu_row_index(a->ne, r, idx);
        for (int64_t i = 0; i < a->ne[0]; i++) {
            int64_t to[GDN_MAX_DIMS];
            memcpy(to, idx, sizeof to);
            to[0] = i;
            int32_t slot;
            memcpy(&slot, (const char *)index->data + (size_t)to[dim] * index->nb[0], sizeof slot);
            to[dim] = slot;
            memcpy((char *)dst->data + gdn_cpu_offset(dst, to),
                   (const char *)a->data + gdn_cpu_offset(a, idx) + (size_t)i * a->nb[0], elem);
        }
    }
}

/* cpy, one row at a time: F32 and BF16 either way (BF16 written with round-to-nearest-even). */
static void gdn_cpu_cpy_rows(const gdn_cpu_rows_job *job, int64_t first, int64_t last, int thread_index)
{
    (void)thread_index;
    const gdn_tensor *a = &job->call->src[0], *dst = &job->call->dst[0];
    for (int64_t r = first; r < last; r++) {
        int64_t idx[GDN_MAX_DIMS];
        gdn_cpu_row_index(dst->ne, r, idx);
        const char *in = (const char *)a->data + gdn_cpu_offset(a, idx);
        char *out = (char *)dst->data + gdn_cpu_offset(dst, idx);
        const size_t elem = gdn_dtype_size(a->dtype);
        if (a->dtype == dst->dtype && a->nb[0] == elem && dst->nb[0] == elem) {
            memmove(out, in, (size_t)dst->ne[0] * elem); /* packed rows: one move (may be in place) */
            continue;
        }
        for (int64_t i = 0; i < dst->ne[0]; i++) {
            char *o = out + (size_t)i * dst->nb[0];
            if (a->dtype == dst->dtype) {
                memmove(o, in + (size_t)i * a->nb[0], gdn_dtype_size(a->dtype)); /* may be in place */
            } else if (dst->dtype == GDN_DTYPE_BF16) {
                const uint16_t h = gdn_cpu_f32_to_bf16(gdn_cpu_load_f32(in + (size_t)i * a->nb[0]));
                memcpy(o, &h, sizeof h);
            } else {
                gdn_cpu_store_f32(o, gdn_cpu_load_any(in, a->nb[0], a->dtype, i));
            }
        }
    }
}

gdn_status gdn_cpu_run_op(gdn_backend *backend, const gdn_op_call *call)
{
    const gdn_tensor *dst = &call->dst[0];
    const int64_t rows = gdn_cpu_n_rows(dst), work = rows * dst->ne[0];
    switch (call->kind) {
    case GDN_OP_ADD:
    case GDN_OP_MUL:
    case GDN_OP_SCALE:
    case GDN_OP_SILU:
    case GDN_OP_SIGMOID:
    case GDN_OP_SOFTPLUS:
    case GDN_OP_EXP:
        return gdn_cpu_elementwise(backend, call);
    case GDN_OP_L2_NORM:
    case GDN_OP_RMS_NORM:
    case GDN_OP_RMS_NORM_GATED:
        return gdn_cpu_norm(backend, call);
    case GDN_OP_SSM_CONV:
        return gdn_cpu_run_rows(backend, call, rows, work * call->src[1].ne[0], gdn_cpu_ssm_conv_rows, 0, 0);
    case GDN_OP_GET_ROWS:
        return gdn_cpu_get_rows(backend, call);
    case GDN_OP_CONCAT:
        return gdn_cpu_concat(backend, call, rows, work);
    case GDN_OP_CPY:
        return gdn_cpu_run_rows(backend, call, rows, work, gdn_cpu_cpy_rows, 0, 0);
    case GDN_OP_SET_ROWS: { /* the index first (range, one writer per slot): nothing written on a bad one */
        gdn_status st = gdn_op_check_index(call);
        const int64_t a_rows = gdn_cpu_n_rows(&call->src[0]);
        return st != GDN_OK ? st : gdn_cpu_run_rows(backend, call, a_rows, a_rows * call->src[0].ne[0],
                                                    gdn_cpu_set_rows_rows, 0, 0);
    }
    case GDN_OP_MUL_MAT:
        return gdn_cpu_mul_mat(backend, call);
    case GDN_OP_GDN_GATES:
        return gdn_cpu_gates(backend, call);
    default: {
        const gdn_op_traits *traits = gdn_op_traits_of(call->kind);
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "%s: not run through run_op on backend %s",
                        traits ? traits->name : "?", backend->name);
    }
    }
}
