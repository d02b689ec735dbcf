/* backend.c: public backend entry points; argument checks, then the backend's table. */
#include "../backends/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const gdn_backend_ops *ops_for(gdn_backend_kind kind)
{
    switch (kind) {
    case GDN_BACKEND_CPU: return &gdn_cpu_backend_ops;
#ifdef GDN_WITH_CUDA
    case GDN_BACKEND_CUDA: return &gdn_cuda_backend_ops;
#endif
    default: return NULL;
    }
}

int gdn_backend_available(gdn_backend_kind kind, const char **why)
{
    const char *reason = "unknown backend kind";
    int ok = 0;
    switch (kind) {
    case GDN_BACKEND_CPU:
        ok = 1;
        reason = "";
        break;
    case GDN_BACKEND_CUDA:
#ifdef GDN_WITH_CUDA
        ok = gdn_cuda_available(&reason);
#else
        reason = "gdn was built without CUDA (nvcc was not found at configure time)";
#endif
        break;
    }
    if (why)
        *why = reason;
    return ok;
}

gdn_status gdn_backend_init(gdn_backend **out, gdn_backend_kind kind, const gdn_backend_options *options)
{
    gdn_clear_error();
    if (out == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "backend_init: NULL out");
    *out = NULL;
    const char *why = NULL;
    if (!gdn_backend_available(kind, &why))
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "backend_init: %s", why);
    gdn_backend_options defaults = {0, 0};
    if (options == NULL)
        options = &defaults;
    if (options->n_threads < 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "backend_init: n_threads=%d, expected >= 0",
                        (int)options->n_threads);
    gdn_backend *b = calloc(1, sizeof *b);
    if (b == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "backend_init: cannot allocate backend");
    b->ops = ops_for(kind);
    b->kind = kind;
    gdn_status st = b->ops->init(b, options);
    if (st != GDN_OK) {
        free(b);
        return st;
    }
    *out = b;
    return GDN_OK;
}

void gdn_backend_free(gdn_backend *backend)
{
    if (backend == NULL)
        return;
    backend->ops->free(backend);
    free(backend);
}

gdn_backend_kind gdn_backend_kind_of(const gdn_backend *backend)
{
    return backend ? backend->kind : GDN_BACKEND_CPU;
}

const char *gdn_backend_name(const gdn_backend *backend)
{
    return backend ? backend->name : "(null)";
}

gdn_status gdn_backend_alloc(gdn_backend *backend, size_t bytes, void **ptr)
{
    gdn_clear_error();
    if (backend == NULL || ptr == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "backend_alloc: NULL argument");
    *ptr = NULL;
    return backend->ops->alloc(backend, bytes ? bytes : 1, ptr);
}

void gdn_backend_dealloc(gdn_backend *backend, void *ptr)
{
    if (backend != NULL && ptr != NULL)
        backend->ops->dealloc(backend, ptr);
}

#define CHECK_COPY_ARGS(what)                                                           \
    do {                                                                                \
        gdn_clear_error();                                                              \
        if (backend == NULL || ((dst == NULL || src == NULL) && bytes != 0))            \
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, what ": NULL argument");        \
        if (bytes == 0)                                                                 \
            return GDN_OK;                                                              \
    } while (0)

gdn_status gdn_backend_upload(gdn_backend *backend, void *dst, const void *src, size_t bytes)
{
    CHECK_COPY_ARGS("backend_upload");
    return backend->ops->upload(backend, dst, src, bytes);
}

gdn_status gdn_backend_download(gdn_backend *backend, void *dst, const void *src, size_t bytes)
{
    CHECK_COPY_ARGS("backend_download");
    return backend->ops->download(backend, dst, src, bytes);
}

gdn_status gdn_backend_copy(gdn_backend *backend, void *dst, const void *src, size_t bytes)
{
    CHECK_COPY_ARGS("backend_copy");
    return backend->ops->copy(backend, dst, src, bytes);
}

gdn_status gdn_backend_synchronize(gdn_backend *backend)
{
    gdn_clear_error();
    if (backend == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "backend_synchronize: NULL backend");
    return backend->ops->synchronize(backend);
}

gdn_status gdn_backend_timer_start(gdn_backend *backend)
{
    gdn_clear_error();
    if (backend == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "backend_timer_start: NULL backend");
    return backend->ops->timer_start(backend);
}

gdn_status gdn_backend_timer_stop(gdn_backend *backend, double *milliseconds)
{
    gdn_clear_error();
    if (backend == NULL || milliseconds == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "backend_timer_stop: NULL argument");
    return backend->ops->timer_stop(backend, milliseconds);
}

struct gdn_recording {
    gdn_backend *backend;
    void *handle; /* the backend's own (a CUDA graph executable) */
};

gdn_status gdn_backend_record_begin(gdn_backend *backend)
{
    gdn_clear_error();
    if (backend == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "backend_record_begin: NULL backend");
    if (backend->ops->record_begin == NULL)
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "backend_record_begin: the %s backend runs ops as they are "
                        "called and has nothing to record", backend->kind == GDN_BACKEND_CPU ? "cpu" : "this");
    gdn_status st = backend->ops->record_begin(backend);
    backend->recording = st == GDN_OK;
    return st;
}

gdn_status gdn_backend_record_end(gdn_backend *backend, gdn_recording **out)
{
    gdn_clear_error();
    if (backend == NULL || out == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "backend_record_end: NULL argument");
    *out = NULL;
    if (backend->ops->record_end == NULL)
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "backend_record_end: this backend cannot record");
    gdn_recording *r = calloc(1, sizeof *r);
    gdn_status st = backend->ops->record_end(backend, r ? &r->handle : NULL);
    backend->recording = 0;
    if (r == NULL)
        return st != GDN_OK ? st : gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "backend_record_end: no memory");
    if (st != GDN_OK) {
        free(r);
        return st;
    }
    r->backend = backend;
    *out = r;
    return GDN_OK;
}

gdn_status gdn_recording_replay(gdn_recording *recording)
{
    gdn_clear_error();
    if (recording == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "recording_replay: NULL recording");
    return recording->backend->ops->replay(recording->backend, recording->handle);
}

void gdn_recording_free(gdn_recording *recording)
{
    if (recording == NULL)
        return;
    recording->backend->ops->recording_free(recording->backend, recording->handle);
    free(recording);
}

/* ---------------------------------------------------------------------------------------------
 * Counters (definitions in gdn.h)
 * ------------------------------------------------------------------------------------------- */
static uint64_t view_bytes(const gdn_tensor *t)
{
    return (uint64_t)gdn_tensor_count(t) * (uint64_t)gdn_dtype_size(t->dtype);
}

/* Bytes written to dst[d]: all of it, or through an index only the slots named. */
static uint64_t written_bytes(const gdn_op_call *call, int d)
{
    const gdn_tensor *dst = &call->dst[d];
    if (call->kind == GDN_OP_SET_ROWS)
        return view_bytes(&call->src[0]);
    if (call->indexed_dst != d + 1)
        return view_bytes(dst);
    const int dim = gdn_op_dst_index_dim(call);
    return view_bytes(dst) / (uint64_t)dst->ne[dim] * (uint64_t)call->src[call->n_src - 1].ne[0];
}

/* The CUDA backend launches a bounds-check kernel before the gather of get_rows
 * (ops_cuda_data.cu) and before an indexed gated_delta_net kernel of more than
 * gdn_check_in_kernel_max_b sequences (gdn_replay_check_in_kernel_max_b for replay; gdn_cuda.cu). */
static uint64_t check_launches(const gdn_backend *backend)
{
    return backend->kind == GDN_BACKEND_CUDA ? 1u : 0u;
}

void gdn_backend_count_op(gdn_backend *backend, const gdn_op_call *call)
{
    gdn_backend_counters *c = &backend->counters;
    uint64_t bytes = 0, cache = 0;
    int pool = -1;
    const int indexed = gdn_op_call_indexed(call, &pool);
    for (int s = 0; s < call->n_src; s++) {
        if (call->kind == GDN_OP_GET_ROWS && s == 0) { /* rows read */
            bytes += (uint64_t)gdn_tensor_count(&call->dst[0]) * gdn_dtype_size(call->src[0].dtype);
        } else if (indexed && s == pool) { /* the slots read: one part of the pool per index entry */
            const gdn_tensor *p = &call->src[s];
            const int outer = gdn_op_index_dim(call);
            const uint64_t read = (uint64_t)(gdn_tensor_count(p) / p->ne[outer]) *
                                  (uint64_t)call->src[gdn_op_traits_of(call->kind)->n_src].ne[0] *
                                  gdn_dtype_size(p->dtype);
            bytes += read;
            cache += read;
        } else {
            bytes += view_bytes(&call->src[s]);
        }
    }
    for (int d = 0; d < call->n_dst; d++)
        bytes += written_bytes(call, d);
    if (call->n_dst > gdn_op_traits_of(call->kind)->n_dst) /* a tee: a part of dst 0 into the cache */
        cache += written_bytes(call, call->n_dst - 1);
    c->op_calls++;
    c->launches += 1u + (call->kind == GDN_OP_GET_ROWS ? check_launches(backend) : 0u);
    c->bytes += bytes;
    c->cache_bytes += cache;
    if (call->kind == GDN_OP_CPY || call->kind == GDN_OP_SET_ROWS || call->kind == GDN_OP_GET_ROWS) {
        c->copies += call->kind != GDN_OP_GET_ROWS; /* a scatter is a copy into slots */
        c->gathers += call->kind == GDN_OP_GET_ROWS;
        c->cache_bytes += bytes;
    }
}

void gdn_backend_count_gdn(gdn_backend *backend, const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape)
{
    gdn_backend_counters *c = &backend->counters;
    /* The state read: B states (with an index, B slots of the pool, not the whole pool). */
    const uint64_t state_read = (uint64_t)(gdn_tensor_count(&args->state) / args->state.ne[3]) *
                                (uint64_t)shape->B * gdn_dtype_size(args->state.dtype);
    /* The snapshots written: the whole view, or with states_index B of its S' slots each. */
    const uint64_t states_written = shape->write_indexed ? view_bytes(&args->states) / (uint64_t)args->states.ne[3] *
                                                               (uint64_t)shape->B
                                                         : view_bytes(&args->states);
    uint64_t bytes = view_bytes(&args->q) + view_bytes(&args->k) + view_bytes(&args->v) + view_bytes(&args->g) +
                     view_bytes(&args->beta) + view_bytes(&args->o) + state_read + states_written;
    if (shape->indexed)
        bytes += view_bytes(&args->state_index);
    if (shape->write_indexed)
        bytes += view_bytes(&args->states_index);
    c->op_calls++;
    c->gdn_calls++;
    const int64_t in_kernel_max_b =
        shape->replay != NULL ? backend->gdn_replay_check_in_kernel_max_b : backend->gdn_check_in_kernel_max_b;
    const int own_check = (shape->indexed || shape->write_indexed) && shape->B > in_kernel_max_b;
    c->launches += 1u + (own_check ? check_launches(backend) : 0u);
    c->bytes += bytes;
    c->cache_bytes += state_read + states_written;
}

void gdn_backend_get_counters(const gdn_backend *backend, gdn_backend_counters *out)
{
    if (out == NULL)
        return;
    if (backend == NULL)
        memset(out, 0, sizeof *out);
    else
        *out = backend->counters;
}

void gdn_backend_reset_counters(gdn_backend *backend)
{
    if (backend != NULL)
        memset(&backend->counters, 0, sizeof backend->counters);
}

gdn_status gdn_backend_zero(gdn_backend *backend, void *dst, size_t bytes)
{
    void *zeros = calloc(1, bytes);
    if (zeros == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "%s: cannot allocate %zu host bytes of zeros",
                        backend != NULL ? backend->name : "backend", bytes);
    gdn_status st = gdn_backend_upload(backend, dst, zeros, bytes);
    free(zeros);
    return st;
}
