/* backend.h: the one internal contract every backend implements (cpu/, cuda/), as a table of
 * function pointers plus a context. Public entry points in src/core/backend.c validate
 * arguments, then call through this table; backends may assume validated input. */
#ifndef GDN_BACKEND_H
#define GDN_BACKEND_H

#include "../core/internal.h"
#include "../core/gdn_op.h"
#include "../core/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gdn_backend_ops {
    gdn_status (*init)(gdn_backend *backend, const gdn_backend_options *options);
    void (*free)(gdn_backend *backend);
    gdn_status (*alloc)(gdn_backend *backend, size_t bytes, void **ptr);
    void (*dealloc)(gdn_backend *backend, void *ptr);
    gdn_status (*upload)(gdn_backend *backend, void *dst, const void *src_host, size_t bytes);
    gdn_status (*download)(gdn_backend *backend, void *dst_host, const void *src, size_t bytes);
    gdn_status (*copy)(gdn_backend *backend, void *dst, const void *src, size_t bytes);
    gdn_status (*synchronize)(gdn_backend *backend);
    gdn_status (*timer_start)(gdn_backend *backend);
    gdn_status (*timer_stop)(gdn_backend *backend, double *milliseconds);
    /* Arguments validated by gdn_gated_delta_net_check; `shape` holds the sizes it derived. */
    gdn_status (*gated_delta_net)(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                  const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape);
    /* The chunked form (include/gdn.h) over tokens 0 .. n-1 of each sequence, with chunks of
     * `chunk` tokens: reads `state` (through state_index when shape->indexed), writes o of those
     * tokens and the state after token n-1 of sequence b to slot final_index[b] (b when
     * final_index is NULL) of `final`, a [S', Hv, D, D] view with state's dtype. Index values
     * are checked by the caller. `final` may be exactly the slot a sequence reads (each part of
     * a state is read before it is written) and is disjoint from every other slot read. NULL
     * where a backend has no chunked form. */
    gdn_status (*gated_delta_net_chunked)(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                          const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape,
                                          int64_t n, int64_t chunk, const gdn_tensor *final,
                                          const gdn_tensor *final_index);
    /* Whether gated_delta_net_chunked runs states of D x D with chunks of `chunk` tokens on the
     * backend's device (1) or not (0); NULL where it runs every one. */
    int (*gated_delta_net_chunk_fits)(const gdn_backend *backend, int64_t D, int64_t chunk);
    /* Any op of the op table (src/core/ops.h), arguments validated by gdn_op_check. NULL, or
     * GDN_ERROR_UNSUPPORTED for a kind it lacks, where a backend does not run it. */
    gdn_status (*run_op)(gdn_backend *backend, const gdn_op_call *call);
    /* 1 if the backend runs op `kind` (the graph asks before running anything). */
    int (*supports_op)(const gdn_backend *backend, gdn_op_kind kind);
    /* Recording of queued ops for replay (CUDA graphs). NULL where a backend has none. */
    gdn_status (*record_begin)(gdn_backend *backend);
    gdn_status (*record_end)(gdn_backend *backend, void **handle);
    gdn_status (*replay)(gdn_backend *backend, void *handle);
    void (*recording_free)(gdn_backend *backend, void *handle);
} gdn_backend_ops;

struct gdn_backend {
    const gdn_backend_ops *ops;
    gdn_backend_kind kind;
    char name[128];  /* filled by the backend's init */
    void *context;   /* the backend's own state */
    gdn_backend_counters counters; /* counted by the core dispatch (backend.c), zero at init */
    /* CUDA: an indexed gated_delta_net call of B sequences launches a kernel of its own to check
     * the index unless B <= this (then every block checks it); set by the backend's init, read
     * by the kernel launch and by the launch counter. 0 elsewhere. */
    int64_t gdn_check_in_kernel_max_b;
    int64_t gdn_replay_check_in_kernel_max_b; /* the same for gated_delta_net_replay calls */
    /* The chunked form: the smallest T from which params.chunk 0 chooses it (0: never), set by
     * the backend's init; and whether ops are being recorded (set by the core's record calls),
     * when an index in device memory cannot be read on the host. */
    int64_t chunk_min_tokens;
    int recording;
};

/* Count one op call that ran (status GDN_OK) into backend->counters: gdn_backend_count_op for
 * any op of the op table but the GDN op (gdn_op_run), gdn_backend_count_gdn for the GDN op
 * (`shape` from its check). Definitions in gdn.h (gdn_backend_counters). */
void gdn_backend_count_op(gdn_backend *backend, const gdn_op_call *call);
void gdn_backend_count_gdn(gdn_backend *backend, const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape);

/* gdn_gated_delta_net_check_index on index values that may be in device memory: read to the host
 * through the backend (a sync on CUDA), then checked (gdn_op.c). The chunked form and varlen
 * batches check this way before anything runs. */
gdn_status gdn_gated_delta_net_check_index_host(gdn_backend *backend, const gdn_gated_delta_net_args *args,
                                                const gdn_gdn_shape *shape);

/* Run a validated gated_delta_net call (shape from gdn_gated_delta_net_check; not the replay
 * form): token by token through the backend's entry, or in the chunked form where params and
 * the backend choose it (gdn_op.c). Counts nothing. */
gdn_status gdn_gated_delta_net_dispatch(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                        const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape);

/* Availability probes and tables, defined by each backend that is built in. */
extern const gdn_backend_ops gdn_cpu_backend_ops;
#ifdef GDN_WITH_CUDA
extern const gdn_backend_ops gdn_cuda_backend_ops;
int gdn_cuda_available(const char **why);
#endif

#ifdef __cplusplus
}
#endif
#endif
