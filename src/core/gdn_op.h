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
    int64_t state_alias;     /* s such that `state` is the view states[s], or -1 */
    int64_t S;               /* slots of `state`: the pool size with an index, else B */
    int indexed;             /* 1: sequence b reads state slot state_index[b] (values unchecked) */
    int pool_overlaps_states; /* indexed, and the pool's byte range meets the snapshots': the
                               * backend checks the in-place rule (include/gdn.h) per sequence */
    float scale;             /* resolved scale (1/sqrt(D) when params->scale == 0) */
} gdn_gdn_shape;

/* Validate shapes, dtypes, parameters and overlaps. `output_dtype` is F32 for backends and F64
 * for the reference. On failure returns the status with a detail naming the tensor. */
gdn_status gdn_gated_delta_net_check(const gdn_gated_delta_net_params *params,
                                     const gdn_gated_delta_net_args *args, gdn_dtype output_dtype,
                                     gdn_gdn_shape *shape);

/* With an index in host memory: every state_index[b] in 0..S-1 (GDN_ERROR_INVALID_ARGUMENT),
 * then the in-place rule of include/gdn.h (GDN_ERROR_OVERLAP naming b, index[b] and the
 * snapshot states[s][b'] its slot overlaps). *in_place (may be NULL) <- 1 when some sequence
 * reads one of its own snapshots. Called by the reference and host backends before any work. */
gdn_status gdn_gated_delta_net_check_index(const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape,
                                           int *in_place);

/* Value head h -> q/k head. */
static inline int64_t gdn_qk_head(gdn_broadcast broadcast, int64_t h, int64_t Hk, int64_t Hv)
{
    return broadcast == GDN_BROADCAST_TILED ? h % Hk : h / (Hv / Hk);
}

/* The float64 reference: plain loops, obviously right. Inputs F32, outputs F64 (o and states
 * shaped as for the op). Not a backend: it runs on the host only. */
gdn_status gdn_gated_delta_net_reference(const gdn_gated_delta_net_params *params,
                                         const gdn_gated_delta_net_args *args);

#ifdef __cplusplus
}
#endif
#endif
