/* ops_reference.c: the float64 reference of every op of the op table (src/core/ops.h). Plain
 * loops over strided views in the order of the math; every backend is tested against it.
 * Sources are read as F32, BF16 or I32; destinations are written as F64 (or, for cpy, in the
 * destination's own F32/BF16 dtype, so that its rounding is part of what is checked). */
#include "../core/ops.h"
#include "../core/gdn_op.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Address of element idx[0..5] of a view. */
static char *at(const gdn_tensor *t, const int64_t *idx)
{
    char *p = (char *)t->data;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        p += (size_t)idx[i] * t->nb[i];
    return p;
}

static double load(const gdn_tensor *t, const int64_t *idx)
{
    const char *p = at(t, idx);
    switch (t->dtype) {
    case GDN_DTYPE_F32: {
        float x;
        memcpy(&x, p, sizeof x);
        return x;
    }
    case GDN_DTYPE_BF16: { /* the upper half of an F32 */
        uint16_t h;
        memcpy(&h, p, sizeof h);
        uint32_t bits = (uint32_t)h << 16;
        float x;
        memcpy(&x, &bits, sizeof x);
        return x;
    }
    case GDN_DTYPE_I32: {
        int32_t i;
        memcpy(&i, p, sizeof i);
        return i;
    }
    default: {
        double x;
        memcpy(&x, p, sizeof x);
        return x;
    }
    }
}

/* The BF16 nearest to float x, ties to the even one; NaN stays a (quiet) NaN. Written as a
 * comparison of the two candidates, independently of the bit trick the kernels use. */
static uint16_t bf16_round(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if (isnan(x))
        return (uint16_t)((bits >> 16) | 0x0040);
    const uint16_t below = (uint16_t)(bits >> 16); /* toward zero */
    if ((bits & 0xFFFFu) == 0 || (below & 0x7FFFu) == 0x7F80u)
        return below; /* exact, or infinity */
    const uint16_t above = (uint16_t)(below + 1); /* away from zero (may become infinity) */
    uint32_t lo_bits = (uint32_t)below << 16, hi_bits = (uint32_t)above << 16;
    float lo, hi;
    memcpy(&lo, &lo_bits, sizeof lo);
    memcpy(&hi, &hi_bits, sizeof hi);
    const double d_lo = fabs((double)x - (double)lo);
    /* above may be infinity: measure it as the next step, 2^(e+1) beyond lo */
    const double d_hi = isinf(hi) ? fabs(ldexp(1.0, 128) - fabs((double)x)) : fabs((double)hi - (double)x);
    if (d_lo < d_hi)
        return below;
    if (d_hi < d_lo)
        return above;
    return (below & 1u) ? above : below;
}

/* Write v to element idx of a F64, F32 or BF16 view (F32: nearest float; BF16: via the float,
 * which is v itself wherever a BF16 is written: cpy of F32 or BF16 values). */
static void store(const gdn_tensor *t, const int64_t *idx, double v)
{
    char *p = at(t, idx);
    if (t->dtype == GDN_DTYPE_F64) {
        memcpy(p, &v, sizeof v);
    } else if (t->dtype == GDN_DTYPE_F32) {
        float x = (float)v;
        memcpy(p, &x, sizeof x);
    } else {
        uint16_t h = bf16_round((float)v);
        memcpy(p, &h, sizeof h);
    }
}

/* Advance idx over counts ne, dims from `first` upward; 0 after the last element. */
static int next(const int64_t *ne, int64_t *idx, int first)
{
    for (int i = first; i < GDN_MAX_DIMS; i++) {
        if (++idx[i] < ne[i])
            return 1;
        idx[i] = 0;
    }
    return 0;
}

static double sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* One elementwise value of dst from the sources at idx. */
static double elementwise(const gdn_op_call *call, const int64_t *idx)
{
    const double a = load(&call->src[0], idx);
    switch (call->kind) {
    case GDN_OP_ADD:
    case GDN_OP_MUL: {
        int64_t j[GDN_MAX_DIMS]; /* b repeats over a */
        for (int i = 0; i < GDN_MAX_DIMS; i++)
            j[i] = idx[i] % call->src[1].ne[i];
        const double b = load(&call->src[1], j);
        return call->kind == GDN_OP_ADD ? a + b : a * b;
    }
    case GDN_OP_SCALE: return a * (double)call->params.scale.scale;
    case GDN_OP_SILU: return a * sigmoid(a);
    case GDN_OP_SIGMOID: return sigmoid(a);
    case GDN_OP_SOFTPLUS: return a > 20.0 ? a : log1p(exp(a));
    case GDN_OP_EXP: return exp(a);
    default: return a; /* cpy */
    }
}

/* l2_norm, rms_norm, rms_norm_gated: one row (dim 0) at a time. */
static void norm_rows(const gdn_op_call *call)
{
    const gdn_tensor *x = &call->src[0], *dst = &call->dst[0];
    const int64_t D = x->ne[0];
    const double eps = call->params.norm.eps;
    int64_t idx[GDN_MAX_DIMS] = {0};
    do {
        double sum = 0.0;
        for (idx[0] = 0; idx[0] < D; idx[0]++) {
            const double v = load(x, idx);
            sum += v * v;
        }
        const double denominator = call->kind == GDN_OP_L2_NORM ? sqrt(sum + eps) : sqrt(sum / (double)D + eps);
        for (idx[0] = 0; idx[0] < D; idx[0]++) {
            double y = load(x, idx) / denominator;
            if (call->kind == GDN_OP_RMS_NORM_GATED) {
                const int64_t w_idx[GDN_MAX_DIMS] = {idx[0], 0, 0, 0, 0, 0};
                const double z = load(&call->src[2], idx);
                y *= load(&call->src[1], w_idx) * z * sigmoid(z);
            }
            store(dst, idx, y);
        }
        idx[0] = 0;
    } while (next(x->ne, idx, 1));
}

/* dst[b][t][c] = sum_{i<Kconv} x[b][c][t+i] * w[c][i]. */
static void ssm_conv(const gdn_op_call *call)
{
    const gdn_tensor *x = &call->src[0], *w = &call->src[1], *dst = &call->dst[0];
    const int64_t K = w->ne[0];
    int64_t o[GDN_MAX_DIMS] = {0}; /* (c, t, b) */
    do {
        double sum = 0.0;
        for (int64_t i = 0; i < K; i++) {
            const int64_t xi[GDN_MAX_DIMS] = {o[1] + i, o[0], o[2], 0, 0, 0};
            const int64_t wi[GDN_MAX_DIMS] = {i, o[0], 0, 0, 0, 0};
            sum += load(x, xi) * load(w, wi);
        }
        store(dst, o, sum);
    } while (next(dst->ne, o, 0));
}

/* dst[r] = a[index[r]]; every index is checked before anything is written. */
static gdn_status get_rows(const gdn_op_call *call)
{
    const gdn_tensor *a = &call->src[0], *index = &call->src[1], *dst = &call->dst[0];
    for (int64_t r = 0; r < index->ne[0]; r++) {
        const int64_t ri[GDN_MAX_DIMS] = {r, 0, 0, 0, 0, 0};
        const double row = load(index, ri);
        if (row < 0 || row >= (double)a->ne[1])
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "get_rows: index[%lld]=%.0f is outside 0..%lld (rows of a)",
                            (long long)r, row, (long long)(a->ne[1] - 1));
    }
    int64_t o[GDN_MAX_DIMS] = {0}; /* (i, r) */
    do {
        const int64_t ri[GDN_MAX_DIMS] = {o[1], 0, 0, 0, 0, 0};
        const int64_t ai[GDN_MAX_DIMS] = {o[0], (int64_t)load(index, ri), 0, 0, 0, 0};
        store(dst, o, load(a, ai));
    } while (next(dst->ne, o, 0));
    return GDN_OK;
}

/* dst = a ++ b; with an index a's outer position j is slot index[j]; with a tee the box of dst at
 * tee_offset is written there too, after everything has been read (the reference's tee never
 * aliases a: it writes F64). */
static gdn_status concat(const gdn_op_call *call)
{
    gdn_status st = gdn_op_check_index(call);
    if (st != GDN_OK)
        return st;
    const gdn_tensor *a = &call->src[0], *dst = &call->dst[0];
    const int dim = call->params.concat.dim, indexed = gdn_op_has_src_index(call), outer = gdn_op_index_dim(call);
    int64_t o[GDN_MAX_DIMS] = {0};
    do {
        int64_t i[GDN_MAX_DIMS];
        memcpy(i, o, sizeof i);
        const int from_b = o[dim] >= a->ne[dim];
        if (from_b)
            i[dim] -= a->ne[dim];
        else if (indexed) {
            int32_t slot;
            memcpy(&slot, (const char *)call->src[2].data + (size_t)o[outer] * call->src[2].nb[0], sizeof slot);
            i[outer] = slot;
        }
        store(dst, o, load(&call->src[from_b], i));
    } while (next(dst->ne, o, 0));
    if (call->n_dst == 2) { /* the box; through an index, box position j lands in slot index[j] */
        const gdn_tensor *tee = &call->dst[1];
        const int slots = call->indexed_dst == 2 ? gdn_op_dst_index_dim(call) : -1;
        int64_t box[GDN_MAX_DIMS], t[GDN_MAX_DIMS] = {0};
        memcpy(box, tee->ne, sizeof box);
        if (slots >= 0)
            box[slots] = dst->ne[slots];
        do {
            int64_t from[GDN_MAX_DIMS], at[GDN_MAX_DIMS];
            for (int k = 0; k < GDN_MAX_DIMS; k++)
                from[k] = t[k] + call->tee_offset[k], at[k] = t[k];
            if (slots >= 0) {
                const int64_t ji[GDN_MAX_DIMS] = {t[slots], 0, 0, 0, 0, 0};
                at[slots] = (int64_t)load(&call->src[call->n_src - 1], ji);
            }
            store(tee, at, load(dst, from));
        } while (next(box, t, 0));
    }
    return GDN_OK;
}

/* dst at a's position with dim `dim` replaced by index[position]; index checked first. */
static gdn_status set_rows(const gdn_op_call *call)
{
    gdn_status st = gdn_op_check_index(call);
    if (st != GDN_OK)
        return st;
    const gdn_tensor *a = &call->src[0];
    const int dim = call->params.set_rows.dim;
    int64_t o[GDN_MAX_DIMS] = {0};
    do {
        int64_t at[GDN_MAX_DIMS];
        memcpy(at, o, sizeof at);
        const int64_t ji[GDN_MAX_DIMS] = {o[dim], 0, 0, 0, 0, 0};
        at[dim] = (int64_t)load(&call->src[1], ji);
        store(&call->dst[0], at, load(a, o));
    } while (next(a->ne, o, 0));
    return GDN_OK;
}

/* dst[..., m, n] = sum_k w[n][k] x[..., m, k]. */
static void mul_mat(const gdn_op_call *call)
{
    const gdn_tensor *w = &call->src[0], *x = &call->src[1], *dst = &call->dst[0];
    int64_t o[GDN_MAX_DIMS] = {0}; /* (n, m, ...) */
    do {
        double sum = 0.0;
        int64_t xi[GDN_MAX_DIMS];
        memcpy(xi, o, sizeof xi);
        for (int64_t k = 0; k < w->ne[0]; k++) {
            const int64_t wi[GDN_MAX_DIMS] = {k, o[0], 0, 0, 0, 0};
            xi[0] = k;
            sum += load(w, wi) * load(x, xi);
        }
        store(dst, o, sum);
    } while (next(dst->ne, o, 0));
}

gdn_status gdn_op_reference(const gdn_op_call *call)
{
    gdn_clear_error();
    gdn_status st = gdn_op_check(call, 1);
    if (st != GDN_OK)
        return st;
    switch (call->kind) {
    case GDN_OP_GATED_DELTA_NET_REPLAY: {
        const gdn_tensor *x = call->src;
        const gdn_gated_delta_net_replay_args args = {x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9],
                                                      x[10], call->dst[0]};
        /* The graph's float64 run keeps the pool in F64: no BF16 rounding. */
        return gdn_gated_delta_net_replay_reference(&call->params.gated_delta_net, &args, GDN_DTYPE_F32);
    }
    case GDN_OP_GATED_DELTA_NET: {
        const gdn_tensor no_index = {0};
        const gdn_gated_delta_net_args args = {call->src[0], call->src[1], call->src[2], call->src[3],
                                               call->src[4], call->src[5], call->dst[0], call->dst[1],
                                               gdn_op_has_src_index(call) ? call->src[6] : no_index,
                                               call->indexed_dst == 2 ? call->src[call->n_src - 1] : no_index};
        return gdn_gated_delta_net_reference(&call->params.gated_delta_net, &args);
    }
    case GDN_OP_L2_NORM:
    case GDN_OP_RMS_NORM:
    case GDN_OP_RMS_NORM_GATED:
        norm_rows(call);
        return GDN_OK;
    case GDN_OP_SSM_CONV:
        ssm_conv(call);
        return GDN_OK;
    case GDN_OP_GET_ROWS:
        return get_rows(call);
    case GDN_OP_CONCAT:
        return concat(call);
    case GDN_OP_SET_ROWS:
        return set_rows(call);
    case GDN_OP_MUL_MAT:
        mul_mat(call);
        return GDN_OK;
    case GDN_OP_GDN_GATES: { /* g = softplus(a + dt_bias) * -exp(A_log), beta = sigmoid(b) */
        int64_t idx[GDN_MAX_DIMS] = {0};
        do {
            const int64_t h[GDN_MAX_DIMS] = {idx[0], 0, 0, 0, 0, 0};
            const double x = load(&call->src[0], idx) + load(&call->src[2], h);
            store(&call->dst[0], idx, (x > 20.0 ? x : log1p(exp(x))) * -exp(load(&call->src[3], h)));
            store(&call->dst[1], idx, sigmoid(load(&call->src[1], idx)));
        } while (next(call->dst[0].ne, idx, 0));
        return GDN_OK;
    }
    default: { /* elementwise and cpy; a dst exactly aliasing src 0 reads each element first */
        int64_t idx[GDN_MAX_DIMS] = {0};
        do
            store(&call->dst[0], idx, elementwise(call, idx));
        while (next(call->dst[0].ne, idx, 0));
        return GDN_OK;
    }
    }
}
