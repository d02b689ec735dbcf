/* ops.h: the op table shared by the compute graph, the passes and every backend. An op call is
 * one node's work: a kind, typed parameters, source views and destination views. What an op's
 * kernels accept (strided destinations, aliasing, indexed source rows) is declared here, once,
 * so that graph passes decide from declarations and never from op names. Internal header. */
#ifndef GDN_OPS_H
#define GDN_OPS_H

#include "internal.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gdn_op_kind {
    GDN_OP_ADD,            /* dst = a + b            (b broadcast over a by repetition, as ggml) */
    GDN_OP_MUL,            /* dst = a * b            (same broadcast) */
    GDN_OP_SCALE,          /* dst = a * scale */
    GDN_OP_SILU,           /* dst = a * sigmoid(a) */
    GDN_OP_SIGMOID,        /* dst = 1 / (1 + exp(-a)) */
    GDN_OP_SOFTPLUS,       /* dst = log(1 + exp(a)), = a above the threshold 20 */
    GDN_OP_EXP,            /* dst = exp(a) */
    GDN_OP_L2_NORM,        /* dst = a / sqrt(sum(a^2) + eps) over dim 0 (the GDN op's form) */
    GDN_OP_RMS_NORM,       /* dst = a / sqrt(mean(a^2) + eps) over dim 0 */
    GDN_OP_RMS_NORM_GATED, /* dst = (a / sqrt(mean(a^2) + eps)) * w * silu(z), over dim 0 */
    GDN_OP_SSM_CONV,       /* causal depthwise conv: shapes in the SSM_CONV comment below */
    GDN_OP_GET_ROWS,       /* dst[r] = a[index[r]] (rows along dim 1, index I32; dst F32 or a's dtype) */
    GDN_OP_CONCAT,         /* dst = a ++ b along `dim` */
    GDN_OP_CPY,            /* dst = a, any strides, F32 <-> BF16 conversion */
    GDN_OP_MUL_MAT,        /* dst[i][j] = sum_k w[j][k] x[i][k]: see below */
    GDN_OP_GATED_DELTA_NET,
    GDN_OP_GATED_DELTA_NET_REPLAY, /* gdn_gated_delta_net_replay as a graph node: see below */
    GDN_OP_GDN_GATES,      /* dst 0 g = softplus(a + dt_bias) * -exp(A_log), dst 1 beta = sigmoid(b) */
    GDN_OP_SET_ROWS,       /* dst[.. index[j] ..] = a[.. j ..] along `dim`: see below */
    GDN_OP_COUNT
} gdn_op_kind;

/* Parameters, one struct per op that has any. */
typedef struct gdn_scale_params {
    float scale;
} gdn_scale_params;

typedef struct gdn_norm_params {
    float eps; /* l2_norm: 1e-6 in the models; rms_norm: the model's rms_norm_eps */
} gdn_norm_params;

/* SSM_CONV (the short convolution of a GDN block, ggml's ssm_conv):
 *   src[0] x      [B, C, Kconv-1+T]  conv window (Kconv-1 past columns) then T new columns;
 *                                    ne = {Kconv-1+T, C, B}: time innermost, as ggml
 *   src[1] w      [C, Kconv]         ne = {Kconv, C}
 *   dst           [B, T, C]          ne = {C, T, B}
 *   dst[b][t][c] = sum_{i<Kconv} x[b][c][t+i] * w[c][i]   (no activation: SILU is its own op) */
typedef struct gdn_concat_params {
    int32_t dim; /* dimension (innermost first) along which b follows a */
} gdn_concat_params;

/* SET_ROWS (a scatter, the write-side twin of GET_ROWS): src[0] a (any shape, F32 or BF16),
 * src[1] index I32 [n] with n = a.ne[dim]; dst has a's dtype and a's counts except along `dim`,
 * where it has S >= 1 slots (a cache pool). Element i of a is written to dst at i with i[dim]
 * replaced by index[i[dim]]; the other slots are left as they are. Every index lies in 0..S-1
 * and no two are equal (a slot has one writer); both are checked before anything is written.
 * The cache writes of a step whose sequences sit in any slots: scatter elision (in copy
 * elision) hands the index to the op that produced a, which then writes the slots itself. */
typedef struct gdn_set_rows_params {
    int32_t dim;
} gdn_set_rows_params;

/* CONCAT with an index (gather elision): src[0] a is a pool whose outermost call dimension
 * (dst 0's dim n_dims-1, not `dim`) counts slots; src[2] index I32 [n] picks slot index[j] for
 * position j of that dimension. With a tee (copy elision): dst[1] receives the box of dst[0]
 * starting at tee_offset (nonzero only along `dim`). The tee may overlap the pool when it is
 * concatenated along dim 0: each sequence must then read either pool bytes no sequence writes or
 * a run of its own part of the tee along dim 0 (checked at run time: gdn_op_check_index); the
 * kernels move one row of dim 0 at a
 * time, in order, so an element is read before the tee writes over it. */

/* GDN_GATES: the GDN block's gates in one kernel: src[0] a and src[1] b [..., Hv] (ne {Hv, ...},
 * equal counts), src[2] dt_bias and src[3] A_log [Hv]; dst[0] g and dst[1] beta shaped as a. Each
 * value is the same float the chain of ADD, SOFTPLUS, EXP, SCALE by -1, MUL and SIGMOID gives on
 * the same backend (one launch instead of six). */

/* MUL_MAT: src[0] w [N, K] (ne = {K, N}, F32 or BF16), src[1] x [..., M, K] (ne = {K, M, d2, d3},
 * F32), dst [..., M, N] (ne = {N, M, d2, d3}, F32). Each output element is one dot product of
 * length K in one fixed order, so a row of x gives the same bits whatever M is (batch invariance,
 * required by the exactness contract). */

typedef union gdn_op_params {
    gdn_scale_params scale;
    gdn_norm_params norm;
    gdn_concat_params concat;
    gdn_set_rows_params set_rows;
    gdn_gated_delta_net_params gated_delta_net;
} gdn_op_params;

/* An op whose traits declare an indexed source (indexed_src) may take one more source than its
 * traits' n_src: the I32 row index of that source, src[traits n_src]. An op whose traits declare
 * an indexed destination (indexed_dst) may write that destination through an index: the call
 * says which (indexed_dst = 1 + d) and the index is its last source (after a source index). GATED_DELTA_NET: 6 sources (state
 * [B,Hv,Dv,Dk]) or 7, src[6] = state_index [B] and state a pool [S,Hv,Dv,Dk].
 * GATED_DELTA_NET_REPLAY: 11 sources in the order of gdn_gated_delta_net_replay_args (q, k, v,
 * g, beta, state, state_index, ring_k, ring_v, ring_g, fold) and dst[0] = o. The op
 * also writes the pool and the rings in place: its traits declare them in-out sources
 * (inout_src), which the graph treats as written (they must be persistent leaves). */
#define GDN_OP_MAX_SRC 11
#define GDN_OP_MAX_DST 2

/* One op call: validated by gdn_op_check, run by a backend or by the float64 reference. */
typedef struct gdn_op_call {
    gdn_op_kind kind;
    gdn_op_params params;
    int32_t n_src, n_dst;
    gdn_tensor src[GDN_OP_MAX_SRC]; /* in the order the op's comment gives */
    gdn_tensor dst[GDN_OP_MAX_DST];
    int64_t tee_offset[GDN_MAX_DIMS]; /* with a tee (n_dst = traits n_dst + 1): where in dst[0] the
                                         last destination's box starts */
    int32_t indexed_dst;              /* 0, or 1 + d: dst[d] is a pool written through an index,
                                         the last source, along gdn_op_dst_index_dim */
} gdn_op_call;

/* What an op's kernels accept, read by the graph passes (DESIGN.md section 4). */
typedef struct gdn_op_traits {
    const char *name;          /* "add", "rms_norm", ... */
    int32_t n_src, n_dst;
    uint32_t strided_dst;      /* bit d: dst[d] may have any byte strides */
    uint32_t alias_ok;         /* bit (s * GDN_OP_MAX_DST + d): dst[d] may be exactly src[s] */
    uint32_t indexed_src;      /* bit s: src[s] may be read through a row index (gather elision):
                                * then the call has n_src + 1 sources, the index last */
    uint32_t tee_dst;          /* 1: the op may take one more destination, last, that receives a
                                * copy of a box of dst[0] (copy elision of a copied part) */
    uint32_t indexed_alias;    /* bit (s * GDN_OP_MAX_DST + d): the indexed src[s] may overlap
                                * dst[d], under the per-sequence rule gdn_op_check_index applies */
    uint32_t inout_src;        /* bit s: src[s] is also written, in place (a cache pool) */
    uint32_t indexed_dst;      /* bit d: dst[d] may be a pool written through an index (scatter
                                * elision): GATED_DELTA_NET's states (its states_index), and
                                * CONCAT's tee */
} gdn_op_traits;

/* 1 if `n_src` sources are a valid count for an op with these traits: traits->n_src, or one more
 * (an index) when the op declares an indexed source. */
static inline int gdn_op_src_count_ok(const gdn_op_traits *traits, int32_t n_src, int32_t indexed_dst)
{
    if (indexed_dst != 0)
        n_src--; /* the destination's index, last */
    return n_src == traits->n_src || (traits->indexed_src != 0 && n_src == traits->n_src + 1);
}

/* 1 if `n_dst` destinations are a valid count: traits->n_dst, or one more (a tee). */
static inline int gdn_op_dst_count_ok(const gdn_op_traits *traits, int32_t n_dst)
{
    return n_dst == traits->n_dst || (traits->tee_dst != 0 && n_dst == traits->n_dst + 1);
}

/* 1 if the call reads a source through an index (an op other than GATED_DELTA_NET, whose index
 * is its own argument); then *source is the indexed source and the index is src[traits n_src]. */
int gdn_op_call_indexed(const gdn_op_call *call, int *source);

/* 1 if the call reads its indexed source through an index (src[traits n_src]), any op. */
int gdn_op_has_src_index(const gdn_op_call *call);

/* The dimension of dst[indexed_dst - 1] that its index selects along: GATED_DELTA_NET's states
 * {Dk, Dv, Hv, S, N} along dim 3 (the slot), a tee along dst[0]'s outermost. */
int gdn_op_dst_index_dim(const gdn_op_call *call);

/* The dimension an index selects along: dst[0]'s outermost (n_dims - 1). */
static inline int gdn_op_index_dim(const gdn_op_call *call)
{
    return call->dst[0].n_dims > 0 ? call->dst[0].n_dims - 1 : 0;
}

/* 1 if view `read` is a run of view `own` along dim 0: same dtype and strides, the same counts
 * in dims 1.., starting at or after own's first element of dim 0 and ending within it. A kernel
 * that moves dim-0 rows in order and writes element i of `own` after reading element i + d of
 * `read`-relative data (d >= 0) never overwrites an element before it reads it. */
int gdn_op_part_within(const gdn_tensor *read, const gdn_tensor *own);

/* The run-time half of an indexed call's check, where the index is readable on the host (the CPU
 * backend and the reference; the CUDA kernels apply the same rule on the device): every index
 * names a slot of the pool, and where a destination may overlap the pool (indexed_alias), each
 * position j reads either pool bytes that meet no part of that destination, or a run of part j
 * of it (gdn_op_part_within: its own part, or the window at an offset in it that a cache with
 * rollback reads). A destination written through an index (not GATED_DELTA_NET's, checked by
 * its own entry): every value names one of its slots, no two equal, and "part j" of it is slot
 * index[j]. On failure nothing has been written. */
gdn_status gdn_op_check_index(const gdn_op_call *call);

/* Traits of an op kind; NULL for an unknown kind. Static storage. */
const gdn_op_traits *gdn_op_traits_of(gdn_op_kind kind);

/* Validate an op call: counts, dtypes, shapes, strides, overlaps. `float64_dst` lets the
 * reference's F64 destinations pass. On failure: the status and a detail naming the op and the
 * tensor. */
gdn_status gdn_op_check(const gdn_op_call *call, int float64_dst);

/* The float64 reference of every op: inputs F32 (or BF16 weights, I32 indices), destinations
 * F64. Plain loops; every backend is tested against it. */
gdn_status gdn_op_reference(const gdn_op_call *call);

#ifdef __cplusplus
}
#endif
#endif
