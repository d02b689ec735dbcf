/* gdn_cpu_chunk.c: the chunked form of the Gated DeltaNet op on the CPU (include/gdn.h, "The
 * chunked form"). A task runs the value heads of one sequence that read one q/k head (all of them
 * where there are at least two tasks a thread that way, else one value head a task) and keeps
 * each head's state transposed, ST[i][j] = S[j][i] (Dk rows of Dv floats), in a thread-local
 * buffer for all its chunks, so that every product of a chunk is a row-broadcast matrix product
 * over contiguous rows (the level's gemm kernel). The chunk's k, q, K K^T and Q K^T are computed
 * once for the task's heads (an eighth of the FLOPs at D = 128, C = 32), and give the same floats
 * however the heads are grouped. Per chunk of C tokens (the last one padded with tokens whose k,
 * q, v, beta and g are 0: they change neither the state nor any output):
 *     KS = K ST, QS = Q ST                       (C x Dv: S0 k_t and S0 q_t of every token)
 *     Akk = K K^T, Aqk = Q K^T                   (C x C)
 *     d_t = beta_t (v_t - e^gamma_t KS_t) - sum_{s<t} beta_t e^(gamma_t - gamma_s) Akk_ts d_s
 *     o_t = e^gamma_t QS_t + sum_{s<=t} e^(gamma_t - gamma_s) Aqk_ts d_s     (q holds the scale)
 *     ST  = e^gamma_C ST + sum_s e^(gamma_C - gamma_s) k_s d_s^T
 * where gamma_t is the running sum of g over the chunk. Every exponent is <= 0. The deltas are
 * solved row by row (forward substitution), each row a one-row product over the rows before it.
 * Which thread runs a task never changes its result; the SIMD level does (its gemm's order). */
#include "gdn_cpu.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct gdn_cpu_chunk_job {
    const gdn_gated_delta_net_args *args;
    const gdn_gdn_shape *shape;
    const gdn_cpu_kernels *kernels;
    const gdn_tensor *final, *final_index;
    gdn_broadcast broadcast;
    int l2norm;
    int64_t n, C;           /* tokens run in chunks, tokens per chunk */
    int64_t heads;          /* value heads per task: Hv / Hk, or 1 */
    atomic_llong next_task; /* tasks (b * Hk + hk) * (Hv / Hk / heads) + part */
    struct gdn_cpu_chunk_buffers *buffers; /* one set per thread of the pool */
} gdn_cpu_chunk_job;

/* A thread's buffers, all 64-byte aligned (sizes for head dimension D, chunk C). */
struct gdn_cpu_chunk_buffers {
    float *st;      /* [heads][D][D] the states, transposed */
    float *k, *q;   /* [C][D] the chunk's k (normalised when asked) and q (normalised, scaled) */
    float *kt;      /* [D][C] k transposed, for K K^T and Q K^T */
    float *kd;      /* [C][D] e^(gamma_C - gamma_t) k_t of one head */
    float *d;       /* [C][D] the right-hand sides, then the deltas */
    float *ks, *qs; /* [C][D] K ST and Q ST; qs then holds the outputs */
    float *kk, *qk; /* [C][C] K K^T and Q K^T */
    float *akk, *aqk; /* [C][C] one head's factors */
    float *gamma, *beta; /* [C] */
    float *eg;           /* [C] e^g_t, each token's own decay */
    void *block;
};
typedef struct gdn_cpu_chunk_buffers gdn_cpu_chunk_buffers;

static int chunk_buffers_alloc(gdn_cpu_chunk_buffers *buf, int64_t D, int64_t C, int64_t heads)
{
    const size_t floats[] = {(size_t)(heads * D * D), (size_t)(C * D), (size_t)(C * D), (size_t)(D * C),
                             (size_t)(C * D), (size_t)(C * D), (size_t)(C * D), (size_t)(C * D), (size_t)(C * C),
                             (size_t)(C * C), (size_t)(C * C), (size_t)(C * C), (size_t)C, (size_t)C, (size_t)C};
    float **ptrs[] = {&buf->st, &buf->k, &buf->q, &buf->kt, &buf->kd, &buf->d, &buf->ks, &buf->qs, &buf->kk,
                      &buf->qk, &buf->akk, &buf->aqk, &buf->gamma, &buf->beta, &buf->eg};
    size_t total = 0;
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++)
        total += (floats[i] * sizeof(float) + 63) / 64 * 64;
    buf->block = aligned_alloc(64, total);
    if (buf->block == NULL)
        return 0;
    char *p = buf->block;
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) {
        *ptrs[i] = (float *)p;
        p += (floats[i] * sizeof(float) + 63) / 64 * 64;
    }
    return 1;
}

static inline const char *chunk_at(const gdn_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3)
{
    return (const char *)t->data + (size_t)i0 * t->nb[0] + (size_t)i1 * t->nb[1] + (size_t)i2 * t->nb[2] +
           (size_t)i3 * t->nb[3];
}

static inline float chunk_load(const gdn_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3)
{
    float x;
    memcpy(&x, chunk_at(t, i0, i1, i2, i3), sizeof x);
    return x;
}

/* Row (i1, i2, i3) of a [.., D] view into dst[0..D): one copy where the row is packed. */
static inline void chunk_load_row(float *dst, const gdn_tensor *t, int64_t i1, int64_t i2, int64_t i3, int64_t D)
{
    const char *row = chunk_at(t, 0, i1, i2, i3);
    if (t->nb[0] == sizeof(float)) {
        memcpy(dst, row, (size_t)D * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < D; i++)
        memcpy(&dst[i], row + (size_t)i * t->nb[0], sizeof(float));
}

/* Value head r of q/k head hk (r < Hv / Hk). */
static int64_t chunk_value_head(const gdn_cpu_chunk_job *job, int64_t hk, int64_t r)
{
    const int64_t Hk = job->shape->Hk, ratio = job->shape->Hv / Hk;
    return job->broadcast == GDN_BROADCAST_TILED ? hk + Hk * r : hk * ratio + r;
}

/* A packed row of `bytes` at p into L2 (prefetcht1), one hint per 64-byte line; strided rows
 * are left to the hardware. */
static inline void chunk_prefetch_row(const char *p, size_t nb0, size_t bytes)
{
    if (nb0 != sizeof(float))
        return;
    const uintptr_t first = (uintptr_t)p & ~(uintptr_t)63, last = ((uintptr_t)p + bytes - 1) & ~(uintptr_t)63;
    for (uintptr_t line = first; line <= last; line += 64)
        __builtin_prefetch((const void *)line, 0, 2);
}

/* The inputs of tokens t0 .. t0+count-1 that a task reads (k and q of q/k head hk, v, g and beta
 * of its value heads r0 ..), hinted into L2 a chunk ahead of their loads. Each token's rows are
 * a token stride apart (8 KiB for Qwen3.6's k), so the hardware's stream prefetchers do not
 * follow them; perf put a sixth of the chunked form's time in the loads' copies. */
static void chunk_prefetch(const gdn_cpu_chunk_job *job, int64_t b, int64_t hk, int64_t r0, int64_t t0,
                           int64_t count)
{
    const gdn_gated_delta_net_args *a = job->args;
    const size_t row = (size_t)job->shape->D * sizeof(float);
    for (int64_t t = t0; t < t0 + count; t++) {
        chunk_prefetch_row(chunk_at(&a->k, 0, hk, t, b), a->k.nb[0], row);
        chunk_prefetch_row(chunk_at(&a->q, 0, hk, t, b), a->q.nb[0], row);
        for (int64_t r = 0; r < job->heads; r++) {
            const int64_t h = chunk_value_head(job, hk, r0 + r);
            chunk_prefetch_row(chunk_at(&a->v, 0, h, t, b), a->v.nb[0], row);
            __builtin_prefetch(chunk_at(&a->g, h, t, b, 0), 0, 2);
            __builtin_prefetch(chunk_at(&a->beta, h, t, b, 0), 0, 2);
        }
    }
}

/* The chunk's k and q (tokens t0 .. t0+count-1 of sequence b, q/k head hk; rows beyond count
 * zero) into k, q and kt, then K K^T and Q K^T into kk and qk. */
static void chunk_load_kq(const gdn_cpu_chunk_job *job, gdn_cpu_chunk_buffers *buf, int64_t b, int64_t hk,
                          int64_t t0, int64_t count)
{
    const gdn_gated_delta_net_args *a = job->args;
    const int64_t D = job->shape->D, C = job->C;
    const float scale = job->shape->scale;
    for (int64_t t = 0; t < C; t++) {
        float *k = buf->k + t * D, *q = buf->q + t * D;
        if (t >= count) {
            memset(k, 0, (size_t)D * sizeof *k);
            memset(q, 0, (size_t)D * sizeof *q);
            continue;
        }
        chunk_load_row(k, &a->k, hk, t0 + t, b, D);
        chunk_load_row(q, &a->q, hk, t0 + t, b, D);
        if (job->l2norm) {
            gdn_cpu_l2_normalise(k, D);
            gdn_cpu_l2_normalise(q, D);
        }
        for (int64_t i = 0; i < D; i++)
            q[i] *= scale;
    }
    for (int64_t t = 0; t < C; t++)
        for (int64_t i = 0; i < D; i++)
            buf->kt[i * C + t] = buf->k[t * D + i];
    memset(buf->kk, 0, (size_t)(C * C) * sizeof(float));
    memset(buf->qk, 0, (size_t)(C * C) * sizeof(float));
    job->kernels->gemm(C, C, D, buf->k, D, 1, buf->kt, C, buf->kk, C);
    job->kernels->gemm(C, C, D, buf->q, D, 1, buf->kt, C, buf->qk, C);
}

/* One chunk of value head h (its transposed state st; the chunk's k and q loaded): outputs of
 * its first `count` tokens to o, the state advanced. */
static void chunk_run(const gdn_cpu_chunk_job *job, gdn_cpu_chunk_buffers *buf, float *st, int64_t b, int64_t h,
                      int64_t t0, int64_t count)
{
    const gdn_cpu_kernels *kern = job->kernels;
    const gdn_gated_delta_net_args *a = job->args;
    const int64_t D = job->shape->D, C = job->C;
    /* v (the right-hand sides below), beta and gamma, the running sum of g (held past count) */
    float gamma = 0.0f;
    for (int64_t t = 0; t < C; t++) {
        float g = 0.0f;
        if (t < count) {
            chunk_load_row(buf->d + t * D, &a->v, h, t0 + t, b, D);
            g = chunk_load(&a->g, h, t0 + t, b, 0);
            buf->beta[t] = chunk_load(&a->beta, h, t0 + t, b, 0);
        } else {
            memset(buf->d + t * D, 0, (size_t)D * sizeof(float));
            buf->beta[t] = 0.0f;
        }
        gamma += g;
        buf->gamma[t] = gamma;
        buf->eg[t] = expf(g);
    }
    memset(buf->ks, 0, (size_t)(C * D) * sizeof(float));
    memset(buf->qs, 0, (size_t)(C * D) * sizeof(float));
    kern->gemm(C, D, D, buf->k, D, 1, st, D, buf->ks, D);
    kern->gemm(C, D, D, buf->q, D, 1, st, D, buf->qs, D);

    /* Right-hand sides, the strictly lower factors (negated, so the solve only adds) and the
     * output factors (zero above the diagonal). */
    for (int64_t t = 0; t < C; t++) {
        const float decay = expf(buf->gamma[t]), beta = buf->beta[t];
        float *d = buf->d + t * D, *ks = buf->ks + t * D, *qs = buf->qs + t * D;
        for (int64_t j = 0; j < D; j++) {
            d[j] = beta * (d[j] - decay * ks[j]);
            qs[j] *= decay;
        }
        /* e^(gamma_t - gamma_s) as the product of the decays of tokens s+1 .. t (one multiply a
         * factor instead of an exponential; the same value within ~C roundings) */
        float rel = 1.0f;
        for (int64_t s = t; s >= 0; s--) {
            buf->akk[t * C + s] = s < t ? -beta * rel * buf->kk[t * C + s] : 0.0f;
            buf->aqk[t * C + s] = buf->qk[t * C + s] * rel;
            rel *= buf->eg[s];
        }
        for (int64_t s = t + 1; s < C; s++)
            buf->akk[t * C + s] = buf->aqk[t * C + s] = 0.0f;
    }
    /* Forward substitution: row t adds its factors times the deltas already solved. */
    for (int64_t t = 1; t < C; t++)
        kern->gemm(1, D, t, buf->akk + t * C, C, 1, buf->d, D, buf->d + t * D, D);
    /* Outputs: qs += Aqk D. */
    kern->gemm(C, D, C, buf->aqk, C, 1, buf->d, D, buf->qs, D);
    for (int64_t t = 0; t < count; t++) {
        char *row = (char *)chunk_at(&a->o, 0, h, t0 + t, b);
        if (a->o.nb[0] == sizeof(float))
            memcpy(row, &buf->qs[t * D], (size_t)D * sizeof(float));
        else
            for (int64_t j = 0; j < D; j++)
                memcpy(row + (size_t)j * a->o.nb[0], &buf->qs[t * D + j], sizeof(float));
    }
    /* State: ST = e^gamma_C ST + Kd^T D, Kd[t] = e^(gamma_C - gamma_t) k_t. */
    const float last = buf->gamma[C - 1], decay = expf(last);
    for (int64_t t = 0; t < C; t++) {
        const float f = expf(last - buf->gamma[t]);
        for (int64_t i = 0; i < D; i++)
            buf->kd[t * D + i] = buf->k[t * D + i] * f;
    }
    kern->scale(st, D * D, decay); /* D * D: a multiple of 16 for every D the op takes */
    kern->gemm(D, D, C, buf->kd, 1, D, buf->d, D, st, D);
}

static void chunk_task(const gdn_cpu_chunk_job *job, gdn_cpu_chunk_buffers *buf, int64_t task)
{
    const gdn_gated_delta_net_args *a = job->args;
    const gdn_gdn_shape *shape = job->shape;
    const int64_t D = shape->D, parts = shape->Hv / shape->Hk / job->heads;
    const int64_t b = task / (shape->Hk * parts), hk = task / parts % shape->Hk, r0 = task % parts * job->heads;
    int32_t slot = (int32_t)b, out = (int32_t)b; /* index values checked by the caller */
    if (shape->indexed)
        memcpy(&slot, chunk_at(&a->state_index, b, 0, 0, 0), sizeof slot);
    if (job->final_index != NULL)
        memcpy(&out, chunk_at(job->final_index, b, 0, 0, 0), sizeof out);
    for (int64_t r = 0; r < job->heads; r++) {
        const int64_t h = chunk_value_head(job, hk, r0 + r);
        float *st = buf->st + r * D * D;
        for (int64_t j = 0; j < D; j++)
            for (int64_t i = 0; i < D; i++)
                st[i * D + j] = chunk_load(&a->state, i, j, h, slot);
    }
    for (int64_t t0 = 0; t0 < job->n; t0 += job->C) {
        const int64_t count = job->n - t0 < job->C ? job->n - t0 : job->C;
        if (t0 + job->C < job->n)
            chunk_prefetch(job, b, hk, r0, t0 + job->C,
                           job->n - t0 - job->C < job->C ? job->n - t0 - job->C : job->C);
        chunk_load_kq(job, buf, b, hk, t0, count);
        for (int64_t r = 0; r < job->heads; r++)
            chunk_run(job, buf, buf->st + r * D * D, b, chunk_value_head(job, hk, r0 + r), t0, count);
    }
    for (int64_t r = 0; r < job->heads; r++) {
        const int64_t h = chunk_value_head(job, hk, r0 + r);
        const float *st = buf->st + r * D * D;
        for (int64_t j = 0; j < D; j++)
            for (int64_t i = 0; i < D; i++)
                memcpy((char *)chunk_at(job->final, i, j, h, out), &st[i * D + j], sizeof(float));
    }
}

static void chunk_worker(void *ctx, int thread_index, int n_threads)
{
    (void)n_threads;
    gdn_cpu_chunk_job *job = ctx;
    const int64_t n_tasks = job->shape->B * job->shape->Hv / job->heads;
    for (;;) {
        const int64_t task = atomic_fetch_add_explicit(&job->next_task, 1, memory_order_relaxed);
        if (task >= n_tasks)
            break;
        chunk_task(job, &job->buffers[thread_index], task);
    }
}

gdn_status gdn_cpu_gated_delta_net_chunked(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                           const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape,
                                           int64_t n, int64_t chunk, const gdn_tensor *final,
                                           const gdn_tensor *final_index)
{
    const gdn_cpu_context *context = backend->context;
    gdn_cpu_chunk_job job;
    job.args = args;
    job.shape = shape;
    job.kernels = context->kernels;
    job.final = final;
    job.final_index = final_index;
    job.broadcast = params->broadcast;
    job.l2norm = params->l2norm;
    job.n = n;
    job.C = chunk;
    atomic_init(&job.next_task, 0);
    /* Every thread's buffers before any work, so that a failure writes nothing. */
    const int n_threads = gdn_cpu_threadpool_size(context->pool);
    job.heads = shape->B * shape->Hk >= 2 * (int64_t)n_threads ? shape->Hv / shape->Hk : 1;
    job.buffers = calloc((size_t)n_threads, sizeof *job.buffers);
    int ok = job.buffers != NULL;
    for (int i = 0; ok && i < n_threads; i++)
        ok = chunk_buffers_alloc(&job.buffers[i], shape->D, chunk, job.heads);
    if (ok)
        gdn_cpu_threadpool_run(context->pool, chunk_worker, &job);
    for (int i = 0; job.buffers != NULL && i < n_threads; i++)
        free(job.buffers[i].block);
    free(job.buffers);
    const int64_t floats = job.heads * shape->D * shape->D + 7 * chunk * shape->D + 4 * chunk * chunk + 3 * chunk;
    if (!ok)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "gated_delta_net: no memory for the chunked form's buffers "
                        "(%lld floats per thread)", (long long)floats);
    return GDN_OK;
}
