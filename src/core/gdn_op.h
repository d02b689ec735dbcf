/* gdn_op.h: shape checking for the Gated DeltaNet op, shared by the public entry point, the
 * float64 reference and every backend. */
#ifndef GDN_OP_H
#define GDN_OP_H

#include "internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes derived from validated arguments. */
typedef struct gdn_gdn_shape {
    int64_t B, T, Hk, Hv, D; /* D = Dk = Dv */
    int64_t n_write;         /* snapshots written: min(T, n_snapshots) */
    gdn_dtype storage;       /* the state's storage: F32, or BF16 (rounded after every token) */
    int64_t state_alias;     /* s such that `state` is the view states[s], or -1 */
    int64_t S;               /* slots of `state`: the pool size with an index, else B */
    int indexed;             /* 1: sequence b reads state slot state_index[b] (values unchecked) */
    int write_indexed;       /* 1: sequence b writes snapshot slot states_index[b] (unchecked) */
    int64_t S_write;         /* slots of `states`: its pool size with states_index, else B */
    int pool_overlaps_states; /* indexed, and the pool's byte range meets the snapshots': the
                               * backend checks the in-place rule (include/gdn.h) per sequence */
    float scale;             /* resolved scale (1/sqrt(D) when params->scale == 0) */
    /* The replay form (gdn_gated_delta_net_replay): NULL for the recurrent op. Otherwise the
     * backend entry `gated_delta_net` runs in replay mode: `args` holds the new tokens, the pool
     * as `state`, the index and o (states empty, n_write 0); the rings and fold come from here. */
    const gdn_gated_delta_net_replay_args *replay;
    int64_t L;               /* replay: ring length (positions per slot) */
} gdn_gdn_shape;

/* Validate shapes, dtypes, parameters and overlaps. `output_dtype` is F32 for backends and F64
 * for the reference. On failure returns the status with a detail naming the tensor. */
gdn_status gdn_gated_delta_net_check(const gdn_gated_delta_net_params *params,
                                     const gdn_gated_delta_net_args *args, gdn_dtype output_dtype,
                                     gdn_gdn_shape *shape);

/* Validate the replay form (include/gdn.h): shapes, dtypes, parameters and overlaps. The pool
 * and o have dtype `output_dtype` (F32 for backends, F64 for the reference); the rings are F32.
 * On success fills *shape (replay = args) and *plain with the view of the call that the backend
 * entry takes: the new tokens, the pool as state, the index and o; states empty. */
gdn_status gdn_gated_delta_net_replay_check(const gdn_gated_delta_net_params *params,
                                            const gdn_gated_delta_net_replay_args *args, gdn_dtype output_dtype,
                                            gdn_gdn_shape *shape, gdn_gated_delta_net_args *plain);

/* One sequence's fold entry {start, count, commit}, read from host memory. */
typedef struct gdn_gdn_fold {
    int32_t start, count, commit;
} gdn_gdn_fold;
gdn_gdn_fold gdn_gated_delta_net_fold_of(const gdn_gated_delta_net_replay_args *args, int64_t b);

/* With indices in host memory: every state_index[b] in 0..S-1, every states_index[b] in
 * 0..S'-1 and no two equal (GDN_ERROR_INVALID_ARGUMENT); in replay mode then every fold entry in
 * range and no two sequences on one slot (GDN_ERROR_INVALID_ARGUMENT); then the in-place rule of
 * include/gdn.h (GDN_ERROR_OVERLAP naming b, index[b] and the snapshot states[s][b'] its slot
 * overlaps, b' the sequence writing it). *in_place (may be NULL) <- 1 when some sequence reads
 * one of its own snapshots. Called by the reference and host backends before any work. */
gdn_status gdn_gated_delta_net_check_index(const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape,
                                           int *in_place);

/* Elements [first, first + count) of `t` along dim `dim` (a view of the same memory). */
static inline gdn_tensor gdn_view_range(const gdn_tensor *t, int dim, int64_t first, int64_t count)
{
    gdn_tensor r = *t;
    r.data = (char *)t->data + (size_t)first * t->nb[dim];
    r.ne[dim] = count;
    return r;
}

/* Value head h -> q/k head. */
static inline int64_t gdn_qk_head(gdn_broadcast broadcast, int64_t h, int64_t Hk, int64_t Hv)
{
    return broadcast == GDN_BROADCAST_TILED ? h % Hk : h / (Hv / Hk);
}

/* 1 if value head h is the first (lowest) value head that reads its q/k head: in replay mode
 * its task is the one that appends that q/k head's k to the ring. */
static inline int gdn_qk_head_first(gdn_broadcast broadcast, int64_t h, int64_t Hk, int64_t Hv)
{
    return broadcast == GDN_BROADCAST_TILED ? h < Hk : h % (Hv / Hk) == 0;
}

/* The float64 reference: plain loops, obviously right. Inputs F32 (state F32 or BF16), outputs
 * F64 (o and states shaped as for the op); with a BF16 state the state is rounded to BF16 after
 * every token, as the backends do. Not a backend: it runs on the host only. */
gdn_status gdn_gated_delta_net_reference(const gdn_gated_delta_net_params *params,
                                         const gdn_gated_delta_net_args *args);

/* The float64 reference of the replay form: the pool and o are F64 (the committed states are
 * kept in float64; `storage` BF16 rounds the state to BF16 after every token, folded ones too,
 * as a backend with a BF16 pool does), the rings F32 (k^, the deltas and the decays, each the
 * nearest float; a backend may split the rank-one update k^ delta^T differently, include/gdn.h).
 * Host only. */
gdn_status gdn_gated_delta_net_replay_reference(const gdn_gated_delta_net_params *params,
                                                const gdn_gated_delta_net_replay_args *args, gdn_dtype storage);

#ifdef __cplusplus
}
#endif
#endif
