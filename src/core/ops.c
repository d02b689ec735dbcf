/* ops.c: the op table's declarations (gdn_op_traits_of), the validation of an op call
 * (gdn_op_check) and its dispatch to a backend (gdn_op_run). Every check a caller can fail
 * lives here, once, so that the reference and the backends' kernels see only valid calls. */
#include "ops.h"
#include "ops_run.h"
#include "gdn_op.h"
#include "../backends/backend.h"

#include <math.h>
#include <string.h>

/* Every op's CPU kernel writes through dst strides (strided_dst bit 0, both outputs of the
 * GDN op). alias_ok bit 0 (dst 0 may be exactly src 0) where each output element is written
 * only after everything it depends on in src 0 has been read: elementwise ops, row norms (a row
 * is reduced before any of it is written) and cpy between equal dtypes. The GDN op's own alias
 * (state == states[s], a part of dst 1) is checked by gdn_gated_delta_net_check. The GDN op
 * reads its initial state (source 5) through an optional index (indexed_src bit 5; the index is
 * source 6), so that gather elision can drop a get_rows of the cache in front of it. CONCAT
 * reads a (source 0) through an optional index and may tee a box of its output into a second,
 * strided destination (strided_dst bits 0 and 1), which may overlap the indexed pool under the
 * rule of gdn_op_check_index: the llama.cpp conv-window gather and window-update copy fold into
 * it. The GDN op's snapshots and CONCAT's tee may be written through an index (indexed_dst):
 * scatter elision folds a SET_ROWS of them into the cache's slots into the op. */
static const gdn_op_traits gdn_op_traits_table[GDN_OP_COUNT] = {
    [GDN_OP_ADD] = {"add", 2, 1, 1u, 1u, 0u},
    [GDN_OP_MUL] = {"mul", 2, 1, 1u, 1u, 0u},
    [GDN_OP_SCALE] = {"scale", 1, 1, 1u, 1u, 0u},
    [GDN_OP_SILU] = {"silu", 1, 1, 1u, 1u, 0u},
    [GDN_OP_SIGMOID] = {"sigmoid", 1, 1, 1u, 1u, 0u},
    [GDN_OP_SOFTPLUS] = {"softplus", 1, 1, 1u, 1u, 0u},
    [GDN_OP_EXP] = {"exp", 1, 1, 1u, 1u, 0u},
    [GDN_OP_L2_NORM] = {"l2_norm", 1, 1, 1u, 1u, 0u},
    [GDN_OP_RMS_NORM] = {"rms_norm", 1, 1, 1u, 1u, 0u},
    [GDN_OP_RMS_NORM_GATED] = {"rms_norm_gated", 3, 1, 1u, 1u, 0u},
    [GDN_OP_SSM_CONV] = {"ssm_conv", 2, 1, 1u, 0u, 0u},
    [GDN_OP_GET_ROWS] = {"get_rows", 2, 1, 1u, 0u, 0u},
    [GDN_OP_CONCAT] = {"concat", 2, 1, 3u, 0u, 1u, 1u, 1u << (0 * GDN_OP_MAX_DST + 1), 0u, 1u << 1},
    [GDN_OP_CPY] = {"cpy", 1, 1, 1u, 1u, 0u},
    [GDN_OP_MUL_MAT] = {"mul_mat", 2, 1, 1u, 0u, 0u},
    [GDN_OP_GATED_DELTA_NET] = {"gated_delta_net", 6, 2, 3u, 0u, 1u << 5, 0u, 0u, 0u, 1u << 1},
    [GDN_OP_GATED_DELTA_NET_REPLAY] = {"gated_delta_net_replay", 11, 1, 1u, 0u, 0u, 0u, 0u,
                                       (1u << 5) | (1u << 7) | (1u << 8) | (1u << 9)},
    [GDN_OP_GDN_GATES] = {"gdn_gates", 4, 2, 3u, 0u, 0u},
    [GDN_OP_SET_ROWS] = {"set_rows", 2, 1, 1u, 0u, 0u},
};

/* Source names per kind, in call order, for messages. */
static const char *const gdn_op_src_names[GDN_OP_COUNT][GDN_OP_MAX_SRC] = {
    [GDN_OP_ADD] = {"a", "b"},
    [GDN_OP_MUL] = {"a", "b"},
    [GDN_OP_SCALE] = {"a"},
    [GDN_OP_SILU] = {"a"},
    [GDN_OP_SIGMOID] = {"a"},
    [GDN_OP_SOFTPLUS] = {"a"},
    [GDN_OP_EXP] = {"a"},
    [GDN_OP_L2_NORM] = {"a"},
    [GDN_OP_RMS_NORM] = {"a"},
    [GDN_OP_RMS_NORM_GATED] = {"x", "w", "z"},
    [GDN_OP_SSM_CONV] = {"x", "w"},
    [GDN_OP_GET_ROWS] = {"a", "index"},
    [GDN_OP_CONCAT] = {"a", "b", "index"},
    [GDN_OP_CPY] = {"a"},
    [GDN_OP_MUL_MAT] = {"w", "x"},
    [GDN_OP_GATED_DELTA_NET] = {"q", "k", "v", "g", "beta", "state", "state_index"},
    [GDN_OP_GATED_DELTA_NET_REPLAY] = {"q", "k", "v", "g", "beta", "state", "state_index", "ring_k", "ring_v",
                                       "ring_g", "fold"},
    [GDN_OP_GDN_GATES] = {"a", "b", "dt_bias", "A_log"},
    [GDN_OP_SET_ROWS] = {"a", "index"},
};

/* Source s's name for messages: a destination's index, last, has none in the table. */
static const char *src_name(const gdn_op_call *call, int s)
{
    if (call->indexed_dst != 0 && s == call->n_src - 1)
        return "the destination index";
    const char *name = gdn_op_src_names[call->kind][s];
    return name != NULL ? name : "index";
}

const gdn_op_traits *gdn_op_traits_of(gdn_op_kind kind)
{
    if ((int)kind < 0 || kind >= GDN_OP_COUNT)
        return NULL;
    return &gdn_op_traits_table[kind];
}

#define DTYPE_BIT(d) (1u << (unsigned)(d))

/* A well-formed view: data, 1..GDN_MAX_DIMS dims, counts >= 1 (1 beyond n_dims), a dtype in
 * `dtypes` (a mask of DTYPE_BIT), strides and data aligned to the element size. */
static gdn_status check_view(const char *op, const char *name, const gdn_tensor *t, uint32_t dtypes)
{
    if (t->data == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %s has no data pointer", op, name);
    if ((int)t->dtype < 0 || t->dtype >= GDN_DTYPE_COUNT || !(dtypes & DTYPE_BIT(t->dtype))) {
        char allowed[64] = "";
        for (int d = 0; d < GDN_DTYPE_COUNT; d++)
            if (dtypes & DTYPE_BIT(d)) {
                if (allowed[0] != '\0')
                    strcat(allowed, " or ");
                strcat(allowed, gdn_dtype_name((gdn_dtype)d));
            }
        return gdn_fail(GDN_ERROR_TYPE, "%s: %s is %s, expected %s", op, name, gdn_dtype_name(t->dtype),
                        allowed);
    }
    if (t->n_dims < 1 || t->n_dims > GDN_MAX_DIMS)
        return gdn_fail(GDN_ERROR_SHAPE, "%s: %s has n_dims=%d, expected 1..%d", op, name, (int)t->n_dims,
                        GDN_MAX_DIMS);
    const size_t size = gdn_dtype_size(t->dtype);
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        if (t->ne[i] < 1 || (i >= t->n_dims && t->ne[i] != 1))
            return gdn_fail(GDN_ERROR_SHAPE, "%s: %s has ne[%d]=%lld with n_dims=%d (counts are >= 1, "
                            "and 1 beyond n_dims)", op, name, i, (long long)t->ne[i], (int)t->n_dims);
        if (t->nb[i] % size != 0)
            return gdn_fail(GDN_ERROR_SHAPE, "%s: %s has byte stride nb[%d]=%zu, not a multiple of %zu",
                            op, name, i, t->nb[i], size);
    }
    if ((uintptr_t)t->data % size != 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %s data is not %zu-byte aligned", op, name, size);
    return GDN_OK;
}

/* Exact counts: ne[0..5] of `t` equal `want[0..5]`. */
static gdn_status check_ne(const char *op, const char *name, const gdn_tensor *t, const int64_t *want)
{
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (t->ne[i] != want[i])
            return gdn_fail(GDN_ERROR_SHAPE, "%s: %s has ne[%d]=%lld (innermost-first), expected %lld",
                            op, name, i, (long long)t->ne[i], (long long)want[i]);
    return GDN_OK;
}

static void set_ne(int64_t *ne, int64_t n0, int64_t n1, int64_t n2)
{
    ne[0] = n0;
    ne[1] = n1;
    ne[2] = n2;
    ne[3] = ne[4] = ne[5] = 1;
}

static int same_view(const gdn_tensor *a, const gdn_tensor *b)
{
    if (a->data != b->data || a->dtype != b->dtype)
        return 0;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (a->ne[i] != b->ne[i] || a->nb[i] != b->nb[i])
            return 0;
    return 1;
}

/* Shapes, dtypes and parameters of the sources, and the counts and dtype the destination must
 * have (`dst_ne`, `dst_dtypes`), per kind. */
static gdn_status check_kind(const gdn_op_call *call, const char *op, int64_t *dst_ne, uint32_t *dst_dtypes)
{
    const gdn_tensor *s = call->src;
    const uint32_t f32 = DTYPE_BIT(GDN_DTYPE_F32), weights = f32 | DTYPE_BIT(GDN_DTYPE_BF16);
    /* Source dtypes: everything F32 except weights (BF16 allowed), data moved as it is (get_rows,
     * cpy, set_rows) and indices. */
    const int moves = call->kind == GDN_OP_GET_ROWS || call->kind == GDN_OP_SET_ROWS;
    for (int i = 0; i < call->n_src; i++) {
        uint32_t allowed = f32;
        if ((call->kind == GDN_OP_MUL_MAT && i == 0) || (moves && i == 0) || call->kind == GDN_OP_CPY)
            allowed = weights;
        if ((moves && i == 1) || i >= gdn_op_traits_of(call->kind)->n_src)
            allowed = DTYPE_BIT(GDN_DTYPE_I32); /* an index */
        gdn_status st = check_view(op, src_name(call, i), &s[i], allowed);
        if (st != GDN_OK)
            return st;
    }
    *dst_dtypes = call->kind == GDN_OP_CPY ? weights : f32;
    if (call->kind == GDN_OP_GET_ROWS) /* F32 rows, or a's rows as they are (a BF16 state pool) */
        *dst_dtypes = f32 | DTYPE_BIT(s[0].dtype);
    if (call->kind == GDN_OP_SET_ROWS) /* bits moved as they are */
        *dst_dtypes = DTYPE_BIT(s[0].dtype);
    memcpy(dst_ne, s[0].ne, sizeof s[0].ne); /* elementwise default: dst shaped as src 0 */
    int64_t want[GDN_MAX_DIMS];
    gdn_status st = GDN_OK;

    switch (call->kind) {
    case GDN_OP_ADD:
    case GDN_OP_MUL:
        for (int i = 0; i < GDN_MAX_DIMS; i++)
            if (s[0].ne[i] % s[1].ne[i] != 0)
                return gdn_fail(GDN_ERROR_SHAPE, "%s: b has ne[%d]=%lld, which does not divide a's "
                                "ne[%d]=%lld (b repeats over a)", op, i, (long long)s[1].ne[i], i,
                                (long long)s[0].ne[i]);
        break;
    case GDN_OP_SCALE:
        if (!isfinite(call->params.scale.scale))
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "scale: scale=%g, expected a finite value",
                            (double)call->params.scale.scale);
        break;
    case GDN_OP_SILU:
    case GDN_OP_SIGMOID:
    case GDN_OP_SOFTPLUS:
    case GDN_OP_EXP:
    case GDN_OP_CPY:
        break;
    case GDN_OP_L2_NORM:
    case GDN_OP_RMS_NORM:
    case GDN_OP_RMS_NORM_GATED:
        if (!isfinite(call->params.norm.eps) || call->params.norm.eps < 0.0f)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: eps=%g, expected a finite value >= 0", op,
                            (double)call->params.norm.eps);
        if (call->kind == GDN_OP_RMS_NORM_GATED) {
            set_ne(want, s[0].ne[0], 1, 1);
            if ((st = check_ne(op, "w", &s[1], want)) != GDN_OK ||
                (st = check_ne(op, "z", &s[2], s[0].ne)) != GDN_OK)
                return st;
        }
        break;
    case GDN_OP_SSM_CONV: {
        const int64_t K = s[1].ne[0], C = s[1].ne[1];
        set_ne(want, K, C, 1);
        if ((st = check_ne(op, "w [C, Kconv]", &s[1], want)) != GDN_OK)
            return st;
        const int64_t T = s[0].ne[0] - (K - 1);
        if (T < 1)
            return gdn_fail(GDN_ERROR_SHAPE, "ssm_conv: x has %lld columns, expected Kconv-1+T = %lld+T "
                            "with T >= 1", (long long)s[0].ne[0], (long long)(K - 1));
        set_ne(want, s[0].ne[0], C, s[0].ne[2]);
        if ((st = check_ne(op, "x [B, C, Kconv-1+T]", &s[0], want)) != GDN_OK)
            return st;
        set_ne(dst_ne, C, T, s[0].ne[2]);
        break;
    }
    case GDN_OP_GDN_GATES:
        if ((st = check_ne(op, "b (as a)", &s[1], s[0].ne)) != GDN_OK)
            return st;
        set_ne(want, s[0].ne[0], 1, 1);
        if ((st = check_ne(op, "dt_bias [Hv]", &s[2], want)) != GDN_OK ||
            (st = check_ne(op, "A_log [Hv]", &s[3], want)) != GDN_OK)
            return st;
        break;
    case GDN_OP_GET_ROWS:
        set_ne(want, s[0].ne[0], s[0].ne[1], 1);
        if ((st = check_ne(op, "a [R, D]", &s[0], want)) != GDN_OK)
            return st;
        set_ne(want, s[1].ne[0], 1, 1);
        if ((st = check_ne(op, "index [n]", &s[1], want)) != GDN_OK)
            return st;
        set_ne(dst_ne, s[0].ne[0], s[1].ne[0], 1);
        break;
    case GDN_OP_SET_ROWS: {
        const int32_t dim = call->params.set_rows.dim;
        if (dim < 0 || dim >= GDN_MAX_DIMS)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "set_rows: dim=%d, expected 0..%d", (int)dim,
                            GDN_MAX_DIMS - 1);
        set_ne(want, s[0].ne[dim], 1, 1);
        if ((st = check_ne(op, "index [n] (n = a's count along dim)", &s[1], want)) != GDN_OK)
            return st;
        dst_ne[dim] = call->dst[0].ne[dim]; /* any number of slots */
        break;
    }
    case GDN_OP_CONCAT: {
        const int32_t dim = call->params.concat.dim;
        if (dim < 0 || dim >= GDN_MAX_DIMS)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "concat: dim=%d, expected 0..%d", (int)dim,
                            GDN_MAX_DIMS - 1);
        /* With an index, a's dim `outer` counts pool slots and the index has one entry per
         * position of b's. */
        const int indexed = gdn_op_has_src_index(call), outer = gdn_op_index_dim(call);
        if ((indexed || call->indexed_dst != 0) && outer == dim)
            return gdn_fail(GDN_ERROR_SHAPE, "concat: the index selects along dim %d, the concat dim", (int)dim);
        if (indexed) {
            set_ne(want, s[1].ne[outer], 1, 1);
            if ((st = check_ne(op, "index [n]", &s[2], want)) != GDN_OK)
                return st;
        }
        for (int i = 0; i < GDN_MAX_DIMS; i++)
            if (i != dim && !(indexed && i == outer) && s[0].ne[i] != s[1].ne[i])
                return gdn_fail(GDN_ERROR_SHAPE, "concat: a and b differ in ne[%d] (%lld vs %lld); only "
                                "dim %d may differ", i, (long long)s[0].ne[i], (long long)s[1].ne[i], (int)dim);
        memcpy(dst_ne, s[1].ne, sizeof s[1].ne);
        dst_ne[dim] = s[0].ne[dim] + s[1].ne[dim];
        if (call->n_dst == 2)
            for (int i = 0; i < GDN_MAX_DIMS; i++)
                if (i != dim && call->tee_offset[i] != 0)
                    return gdn_fail(GDN_ERROR_SHAPE, "concat: the tee starts at offset %lld along dim %d; it may "
                                    "be offset only along the concat dim %d", (long long)call->tee_offset[i], i,
                                    (int)dim);
        break;
    }
    case GDN_OP_MUL_MAT:
        if (s[0].n_dims > 2 || s[0].ne[2] != 1)
            return gdn_fail(GDN_ERROR_SHAPE, "mul_mat: w must be 2-D [N, K], got n_dims=%d", (int)s[0].n_dims);
        if (s[1].ne[0] != s[0].ne[0])
            return gdn_fail(GDN_ERROR_SHAPE, "mul_mat: x has K=%lld (ne[0]), w has K=%lld", (long long)s[1].ne[0],
                            (long long)s[0].ne[0]);
        memcpy(dst_ne, s[1].ne, sizeof s[1].ne);
        dst_ne[0] = s[0].ne[1];
        break;
    default:
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: not checked here", op);
    }
    return GDN_OK;
}

/* The replay op's call as the arguments of its entry point. */
static gdn_gated_delta_net_replay_args gdn_op_replay_args(const gdn_op_call *call)
{
    const gdn_tensor *s = call->src;
    const gdn_gated_delta_net_replay_args a = {s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10],
                                               call->dst[0]};
    return a;
}

/* The GDN op's call as the arguments of its own entry points. */
static void gdn_op_gdn_args(const gdn_op_call *call, gdn_gated_delta_net_args *args)
{
    args->q = call->src[0];
    args->k = call->src[1];
    args->v = call->src[2];
    args->g = call->src[3];
    args->beta = call->src[4];
    args->state = call->src[5];
    args->o = call->dst[0];
    args->states = call->dst[1];
    memset(&args->state_index, 0, sizeof args->state_index); /* data NULL: no index */
    memset(&args->states_index, 0, sizeof args->states_index); /* data NULL: slot b */
    if (gdn_op_has_src_index(call))
        args->state_index = call->src[6];
    if (call->indexed_dst == 2)
        args->states_index = call->src[call->n_src - 1];
}

/* The tee, the last destination: a box of dst[0] (same dtype) at tee_offset, injective, apart
 * from dst[0] and from every source except an indexed pool the op declares it may overlap. */
static gdn_status check_tee(const gdn_op_call *call, const char *op)
{
    const gdn_op_traits *traits = gdn_op_traits_of(call->kind);
    const int d = call->n_dst - 1;
    const gdn_tensor *tee = &call->dst[d], *dst = &call->dst[0];
    gdn_status st = check_view(op, "tee", tee, DTYPE_BIT(dst->dtype));
    if (st != GDN_OK)
        return st;
    /* Written through an index, the tee is a pool: along the index's dim the box is all of dst's
     * positions, position j landing in slot index[j]. */
    const int slots = call->indexed_dst == d + 1 ? gdn_op_dst_index_dim(call) : -1;
    if (slots >= 0) { /* its dtype was checked with the sources, its offset by the op's shape check (0) */
        int64_t want[GDN_MAX_DIMS];
        set_ne(want, dst->ne[slots], 1, 1);
        if ((st = check_ne(op, "tee index", &call->src[call->n_src - 1], want)) != GDN_OK)
            return st;
    }
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (i != slots && (call->tee_offset[i] < 0 || call->tee_offset[i] + tee->ne[i] > dst->ne[i]))
            return gdn_fail(GDN_ERROR_SHAPE, "%s: the tee's box [%lld, %lld) along dim %d is outside dst (ne %lld)", op,
                            (long long)call->tee_offset[i], (long long)(call->tee_offset[i] + tee->ne[i]), i,
                            (long long)dst->ne[i]);
    if (!gdn_tensor_is_injective(tee))
        return gdn_fail(GDN_ERROR_OVERLAP, "%s: the tee has elements that share memory", op);
    if (gdn_tensor_ranges_overlap(tee, dst))
        return gdn_fail(GDN_ERROR_OVERLAP, "%s: the tee overlaps dst", op);
    int pool = -1;
    const int indexed = gdn_op_call_indexed(call, &pool);
    for (int s = 0; s < call->n_src; s++) {
        if (!gdn_tensor_ranges_overlap(tee, &call->src[s]))
            continue;
        if (indexed && s == pool && ((traits->indexed_alias >> (s * GDN_OP_MAX_DST + d)) & 1u)) {
            if (call->kind == GDN_OP_CONCAT && call->params.concat.dim != 0)
                return gdn_fail(GDN_ERROR_OVERLAP, "concat: the tee overlaps the indexed pool a, which needs "
                                "dim 0 (rows are moved in order), not dim %d", (int)call->params.concat.dim);
            continue; /* per sequence, at run time: gdn_op_check_index */
        }
        return gdn_fail(GDN_ERROR_OVERLAP, "%s: the tee overlaps source %s", op, src_name(call, s));
    }
    return GDN_OK;
}

int gdn_op_has_src_index(const gdn_op_call *call)
{
    const gdn_op_traits *traits = gdn_op_traits_of(call->kind);
    return traits != NULL && traits->indexed_src != 0 &&
           call->n_src - (call->indexed_dst != 0) == traits->n_src + 1;
}

int gdn_op_dst_index_dim(const gdn_op_call *call)
{
    if (call->kind == GDN_OP_GATED_DELTA_NET)
        return 3;
    return gdn_op_index_dim(call);
}

int gdn_op_call_indexed(const gdn_op_call *call, int *source)
{
    const gdn_op_traits *traits = gdn_op_traits_of(call->kind);
    if (call->kind == GDN_OP_GATED_DELTA_NET || !gdn_op_has_src_index(call))
        return 0;
    int s = 0;
    while (!((traits->indexed_src >> s) & 1u))
        s++;
    *source = s;
    return 1;
}

/* Part j of view v along dim `outer`: the view with that dim fixed at j. */
static gdn_tensor part_of(const gdn_tensor *v, int outer, int64_t j)
{
    gdn_tensor part = *v;
    part.data = (char *)v->data + (size_t)j * v->nb[outer];
    part.ne[outer] = 1;
    return part;
}

int gdn_op_part_within(const gdn_tensor *read, const gdn_tensor *own)
{
    if (read->dtype != own->dtype || read->nb[0] != own->nb[0] || own->nb[0] == 0)
        return 0;
    for (int i = 1; i < GDN_MAX_DIMS; i++)
        if (read->ne[i] != own->ne[i] || (read->ne[i] > 1 && read->nb[i] != own->nb[i]))
            return 0;
    const char *r = read->data, *o = own->data;
    if (r < o || (size_t)(r - o) % own->nb[0] != 0)
        return 0;
    return (int64_t)((size_t)(r - o) / own->nb[0]) + read->ne[0] <= own->ne[0];
}

static int32_t index_at(const gdn_tensor *index, int64_t j)
{
    int32_t v;
    memcpy(&v, (const char *)index->data + (size_t)j * index->nb[0], sizeof v);
    return v;
}

/* An index written through (set_rows's, a tee's): every value names one of `slots` slots, and
 * no two are equal (two writers of one slot would race). n*n comparisons: n is a batch. */
static gdn_status check_writes(const char *op, const char *what, const gdn_tensor *index, int64_t slots)
{
    for (int64_t j = 0; j < index->ne[0]; j++) {
        const int32_t v = index_at(index, j);
        if (v < 0 || v >= slots)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %s[%lld]=%d is outside 0..%lld (slots written)", op, what,
                            (long long)j, (int)v, (long long)(slots - 1));
        for (int64_t j2 = 0; j2 < j; j2++)
            if (index_at(index, j2) == v)
                return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %s[%lld]=%d equals entry %lld (a slot has one "
                                "writer)", op, what, (long long)j, (int)v, (long long)j2);
    }
    return GDN_OK;
}

gdn_status gdn_op_check_index(const gdn_op_call *call)
{
    const gdn_op_traits *traits = gdn_op_traits_of(call->kind);
    const char *op = traits->name;
    if (call->kind == GDN_OP_SET_ROWS)
        return check_writes(op, "index", &call->src[1], call->dst[0].ne[call->params.set_rows.dim]);
    /* A destination written through an index (the GDN op checks its states_index itself). */
    const gdn_tensor *writes = NULL;
    int wd = -1;
    if (call->indexed_dst != 0 && call->kind != GDN_OP_GATED_DELTA_NET) {
        wd = call->indexed_dst - 1;
        writes = &call->src[call->n_src - 1];
        gdn_status st = check_writes(op, "destination index", writes, call->dst[wd].ne[gdn_op_dst_index_dim(call)]);
        if (st != GDN_OK)
            return st;
    }
    int s = 0;
    if (!gdn_op_call_indexed(call, &s))
        return GDN_OK;
    const gdn_tensor *pool = &call->src[s], *index = &call->src[traits->n_src];
    const int outer = gdn_op_index_dim(call);
    for (int64_t j = 0; j < index->ne[0]; j++) {
        const int32_t slot = index_at(index, j);
        if (slot < 0 || slot >= pool->ne[outer])
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: index[%lld]=%d is outside 0..%lld (slots of %s)", op,
                            (long long)j, (int)slot, (long long)(pool->ne[outer] - 1), src_name(call, s));
    }
    for (int d = 0; d < call->n_dst; d++) {
        const gdn_tensor *dst = &call->dst[d];
        if (!((traits->indexed_alias >> (s * GDN_OP_MAX_DST + d)) & 1u) || !gdn_tensor_ranges_overlap(pool, dst))
            continue;
        for (int64_t j = 0; j < index->ne[0]; j++) {
            const gdn_tensor read = part_of(pool, outer, index_at(index, j));
            const gdn_tensor own = part_of(dst, outer, d == wd ? index_at(writes, j) : j);
            if (gdn_op_part_within(&read, &own))
                continue;
            /* Written through an index, only the slots named are written. */
            int meets = 0;
            for (int64_t j2 = 0; d == wd && !meets && j2 < index->ne[0]; j2++) {
                const gdn_tensor part = part_of(dst, outer, index_at(writes, j2));
                meets = gdn_tensor_ranges_overlap(&read, &part);
            }
            if (d != wd)
                meets = gdn_tensor_ranges_overlap(&read, dst);
            if (meets)
                return gdn_fail(GDN_ERROR_OVERLAP, "%s: index[%lld]=%d: the pool slot read meets destination %d but "
                                "does not lie in its own part of it (a position may read only bytes no position "
                                "writes, or a run of its own part along dim 0)", op, (long long)j,
                                (int)index_at(index, j), d);
        }
    }
    return GDN_OK;
}

gdn_status gdn_op_check(const gdn_op_call *call, int float64_dst)
{
    if (call == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "op: NULL call");
    const gdn_op_traits *traits = gdn_op_traits_of(call->kind);
    if (traits == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "op: unknown kind %d", (int)call->kind);
    const char *op = traits->name;
    if (call->indexed_dst < 0 || call->indexed_dst > call->n_dst ||
        (call->indexed_dst != 0 && !((traits->indexed_dst >> (call->indexed_dst - 1)) & 1u)) ||
        (call->kind == GDN_OP_CONCAT && call->indexed_dst != 0 && call->n_dst != 2))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: destination %d cannot be written through an index", op,
                        (int)call->indexed_dst - 1);
    if (!gdn_op_src_count_ok(traits, call->n_src, call->indexed_dst) || !gdn_op_dst_count_ok(traits, call->n_dst))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %d sources and %d destinations, expected %d%s%s and %d%s",
                        op, (int)call->n_src, (int)call->n_dst, (int)traits->n_src,
                        traits->indexed_src ? " (+1 index)" : "", call->indexed_dst ? " +1 destination index" : "",
                        (int)traits->n_dst, traits->tee_dst ? " (+1 tee)" : "");
    if (call->kind == GDN_OP_GATED_DELTA_NET && call->n_src > 6 && call->src[6].data == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: source state_index has no data pointer", op);

    if (call->kind == GDN_OP_GATED_DELTA_NET_REPLAY) {
        const gdn_gated_delta_net_replay_args args = gdn_op_replay_args(call);
        gdn_gdn_shape shape;
        gdn_gated_delta_net_args plain;
        const gdn_dtype out = float64_dst && args.o.dtype == GDN_DTYPE_F64 ? GDN_DTYPE_F64 : GDN_DTYPE_F32;
        return gdn_gated_delta_net_replay_check(&call->params.gated_delta_net, &args, out, &shape, &plain);
    }
    if (call->kind == GDN_OP_GATED_DELTA_NET) {
        gdn_gated_delta_net_args args;
        gdn_op_gdn_args(call, &args);
        gdn_gdn_shape shape;
        const gdn_dtype out = float64_dst && args.o.dtype == GDN_DTYPE_F64 ? GDN_DTYPE_F64 : GDN_DTYPE_F32;
        return gdn_gated_delta_net_check(&call->params.gated_delta_net, &args, out, &shape);
    }

    int64_t dst_ne[GDN_MAX_DIMS];
    uint32_t dst_dtypes = 0;
    gdn_status st = check_kind(call, op, dst_ne, &dst_dtypes);
    if (st != GDN_OK)
        return st;
    if (float64_dst)
        dst_dtypes |= DTYPE_BIT(GDN_DTYPE_F64); /* the reference may write F64 instead */
    const gdn_tensor *dst = &call->dst[0];
    if ((st = check_view(op, "dst", dst, dst_dtypes)) != GDN_OK || (st = check_ne(op, "dst", dst, dst_ne)) != GDN_OK)
        return st;

    /* The destination must not overlap itself (threads would race) nor any source, except an
     * exact alias the op declares safe. */
    if (!gdn_tensor_is_injective(dst))
        return gdn_fail(GDN_ERROR_OVERLAP, "%s: dst has elements that share memory (a stride smaller "
                        "than the extent of the dimensions inside it)", op);
    for (int s = 0; s < call->n_src; s++) {
        if (!gdn_tensor_ranges_overlap(dst, &call->src[s]))
            continue;
        const int may_alias = (traits->alias_ok >> (s * GDN_OP_MAX_DST)) & 1u;
        if (may_alias && same_view(dst, &call->src[s]))
            continue;
        return gdn_fail(GDN_ERROR_OVERLAP, "%s: dst overlaps source %s (%s)", op, src_name(call, s),
                        may_alias ? "only dst == that source exactly, same data, dtype, counts and strides, "
                                    "may alias" : "this op allows no aliasing of it");
    }
    if (call->kind == GDN_OP_GDN_GATES) { /* its second destination, beta, by the same rules */
        const gdn_tensor *beta = &call->dst[1];
        if ((st = check_view(op, "beta", beta, dst_dtypes)) != GDN_OK ||
            (st = check_ne(op, "beta", beta, dst_ne)) != GDN_OK)
            return st;
        if (!gdn_tensor_is_injective(beta) || gdn_tensor_ranges_overlap(beta, dst))
            return gdn_fail(GDN_ERROR_OVERLAP, "%s: beta shares memory with itself or with g", op);
        for (int s = 0; s < call->n_src; s++)
            if (gdn_tensor_ranges_overlap(beta, &call->src[s]))
                return gdn_fail(GDN_ERROR_OVERLAP, "%s: beta overlaps source %s", op, src_name(call, s));
    }
    return call->n_dst > traits->n_dst ? check_tee(call, op) : GDN_OK;
}

gdn_status gdn_op_run(gdn_backend *backend, const gdn_op_call *call)
{
    gdn_clear_error();
    if (backend == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "op: NULL backend");
    gdn_status st = gdn_op_check(call, 0);
    if (st != GDN_OK)
        return st;
    const char *op = gdn_op_traits_of(call->kind)->name;
    if (call->kind == GDN_OP_GATED_DELTA_NET_REPLAY) { /* its entry validates, runs and counts */
        const gdn_gated_delta_net_replay_args args = gdn_op_replay_args(call);
        return gdn_gated_delta_net_replay(backend, &call->params.gated_delta_net, &args);
    }
    if (call->kind == GDN_OP_GATED_DELTA_NET) {
        gdn_gated_delta_net_args args;
        gdn_op_gdn_args(call, &args);
        gdn_gdn_shape shape;
        st = gdn_gated_delta_net_check(&call->params.gated_delta_net, &args, GDN_DTYPE_F32, &shape);
        if (st != GDN_OK)
            return st;
        if (backend->ops->gated_delta_net == NULL)
            return gdn_fail(GDN_ERROR_UNSUPPORTED, "%s: not implemented on backend %s", op, backend->name);
        st = gdn_gated_delta_net_dispatch(backend, &call->params.gated_delta_net, &args, &shape);
        if (st == GDN_OK)
            gdn_backend_count_gdn(backend, &args, &shape);
        return st;
    }
    if (backend->ops->run_op == NULL)
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "%s: not implemented on backend %s (it runs no op of the op "
                        "table yet)", op, backend->name);
    st = backend->ops->run_op(backend, call);
    if (st == GDN_OK)
        gdn_backend_count_op(backend, call);
    if (st == GDN_ERROR_UNSUPPORTED && gdn_error_detail()[0] == '\0')
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "%s: not implemented on backend %s", op, backend->name);
    return st;
}
