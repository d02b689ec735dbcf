/* gdn_op.c: parameters, validation and dispatch of the Gated DeltaNet op. Every check that a
 * caller can fail lives here, once, so that backends and the reference see only valid input. */
#include "gdn_op.h"
#include "../backends/backend.h"

#include <math.h>
#include <string.h>

gdn_gated_delta_net_params gdn_gated_delta_net_params_default(void)
{
    gdn_gated_delta_net_params p;
    p.n_snapshots = 1;
    p.broadcast = GDN_BROADCAST_TILED;
    p.scale = 0.0f;
    p.l2norm = 0;
    return p;
}

/* Check that `t` is a view of dtype `dtype` with exactly the counts `ne` (innermost first). */
static gdn_status check_tensor(const char *name, const gdn_tensor *t, gdn_dtype dtype, int n_dims,
                               const int64_t *ne)
{
    if (t->data == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: %s has no data pointer", name);
    if (t->dtype != dtype)
        return gdn_fail(GDN_ERROR_TYPE, "gated_delta_net: %s is %s, expected %s", name,
                        gdn_dtype_name(t->dtype), gdn_dtype_name(dtype));
    if (t->n_dims < 1 || t->n_dims > GDN_MAX_DIMS)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net: %s has n_dims=%d", name, (int)t->n_dims);
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        int64_t want = i < n_dims ? ne[i] : 1;
        if (t->ne[i] != want)
            return gdn_fail(GDN_ERROR_SHAPE,
                            "gated_delta_net: %s has ne[%d]=%lld (innermost-first), expected %lld",
                            name, i, (long long)t->ne[i], (long long)want);
        if (t->nb[i] % gdn_dtype_size(dtype) != 0)
            return gdn_fail(GDN_ERROR_SHAPE,
                            "gated_delta_net: %s has byte stride nb[%d]=%zu, not a multiple of %zu",
                            name, i, t->nb[i], gdn_dtype_size(dtype));
    }
    if ((uintptr_t)t->data % gdn_dtype_size(dtype) != 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: %s data is not %zu-byte aligned",
                        name, gdn_dtype_size(dtype));
    return GDN_OK;
}

static int same_view(const gdn_tensor *a, const gdn_tensor *b)
{
    if (a->data != b->data)
        return 0;
    for (int i = 0; i < 4; i++)
        if (a->ne[i] != b->ne[i] || a->nb[i] != b->nb[i])
            return 0;
    return 1;
}

gdn_status gdn_gated_delta_net_check(const gdn_gated_delta_net_params *params,
                                     const gdn_gated_delta_net_args *args, gdn_dtype output_dtype,
                                     gdn_gdn_shape *shape)
{
    if (params == NULL || args == NULL || shape == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: NULL params or args");
    if (params->n_snapshots < 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: n_snapshots=%d, expected >= 1",
                        (int)params->n_snapshots);
    if (params->broadcast != GDN_BROADCAST_TILED && params->broadcast != GDN_BROADCAST_INTERLEAVED)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: unknown broadcast rule %d",
                        (int)params->broadcast);
    if (params->l2norm != 0 && params->l2norm != 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: l2norm=%d, expected 0 or 1",
                        (int)params->l2norm);
    if (!isfinite(params->scale) || params->scale < 0.0f)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT,
                        "gated_delta_net: scale=%g, expected a finite value >= 0 (0 = 1/sqrt(Dk))",
                        (double)params->scale);

    /* Sizes come from q and v; everything else is checked against them. */
    const gdn_tensor *q = &args->q, *v = &args->v;
    if (q->n_dims != 4 || v->n_dims != 4)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net: q and v must have 4 dims [B,T,H,D], got %d and %d",
                        (int)q->n_dims, (int)v->n_dims);
    int64_t D = q->ne[0], Hk = q->ne[1], T = q->ne[2], B = q->ne[3];
    int64_t Hv = v->ne[1];
    if (D != 16 && D != 32 && D != 64 && D != 128 && D != 256)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net: Dk=%lld, expected 16, 32, 64, 128 or 256",
                        (long long)D);
    if (v->ne[0] != D)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net: Dv=%lld differs from Dk=%lld (Dk = Dv required)",
                        (long long)v->ne[0], (long long)D);
    if (Hk < 1 || Hv < 1 || Hv % Hk != 0)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net: v has Hv=%lld heads, not a multiple of Hk=%lld",
                        (long long)Hv, (long long)Hk);
    if (T < 1 || B < 1)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net: T=%lld and B=%lld must be >= 1",
                        (long long)T, (long long)B);
    int64_t n_write = T < params->n_snapshots ? T : params->n_snapshots;

    const int64_t ne_qk[4] = {D, Hk, T, B};
    const int64_t ne_v[4] = {D, Hv, T, B};
    const int64_t ne_gate[3] = {Hv, T, B};
    /* With an index, `state` is a pool of any S >= 1 slots; its values are checked by the
     * backends (they may be in device memory). */
    const int indexed = args->state_index.data != NULL;
    const int64_t S = indexed ? args->state.ne[3] : B;
    if (S < 1)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net: state pool has ne[3]=%lld slots, expected >= 1",
                        (long long)S);
    const int64_t ne_state[4] = {D, D, Hv, S};
    const int64_t ne_index[1] = {B};
    const int64_t ne_states[5] = {D, D, Hv, B, n_write};
    gdn_status st;
    if ((st = check_tensor("q", &args->q, GDN_DTYPE_F32, 4, ne_qk)) != GDN_OK ||
        (st = check_tensor("k", &args->k, GDN_DTYPE_F32, 4, ne_qk)) != GDN_OK ||
        (st = check_tensor("v", &args->v, GDN_DTYPE_F32, 4, ne_v)) != GDN_OK ||
        (st = check_tensor("g", &args->g, GDN_DTYPE_F32, 3, ne_gate)) != GDN_OK ||
        (st = check_tensor("beta", &args->beta, GDN_DTYPE_F32, 3, ne_gate)) != GDN_OK ||
        (st = check_tensor("state", &args->state, GDN_DTYPE_F32, 4, ne_state)) != GDN_OK ||
        (st = check_tensor("o", &args->o, output_dtype, 4, ne_v)) != GDN_OK ||
        (st = check_tensor("states", &args->states, output_dtype, 5, ne_states)) != GDN_OK ||
        (indexed && (st = check_tensor("state_index", &args->state_index, GDN_DTYPE_I32, 1, ne_index)) != GDN_OK))
        return st;

    /* Outputs must not overlap themselves (threads would race), inputs or each other, except
     * state == states[s] exactly; with states injective, state is then disjoint from every
     * other snapshot. */
    if (!gdn_tensor_is_injective(&args->o) || !gdn_tensor_is_injective(&args->states))
        return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net: output %s has elements that share memory "
                        "(a stride smaller than the extent of the dimensions inside it)",
                        gdn_tensor_is_injective(&args->o) ? "states" : "o");
    /* Outputs must not overlap inputs or each other, except state == states[s] exactly; with
     * an index, the pool may overlap states (which slot each sequence reads is known only from
     * the index: the backend checks the in-place rule where the index is readable), never o. */
    int64_t alias = -1;
    for (int64_t s = 0; s < n_write && output_dtype == GDN_DTYPE_F32 && !indexed; s++) {
        gdn_tensor snap = args->states;
        snap.data = (char *)snap.data + (size_t)s * snap.nb[4];
        if (same_view(&snap, &args->state)) {
            alias = s;
            break;
        }
    }
    const gdn_tensor *inputs[7] = {&args->q, &args->k, &args->v, &args->g, &args->beta, &args->state,
                                   &args->state_index};
    const char *input_names[7] = {"q", "k", "v", "g", "beta", "state", "state_index"};
    const gdn_tensor *outputs[2] = {&args->o, &args->states};
    const char *output_names[2] = {"o", "states"};
    for (int o = 0; o < 2; o++)
        for (int i = 0; i < 6 + indexed; i++) {
            if (o == 1 && i == 5 && (alias >= 0 || indexed))
                continue;
            if (gdn_tensor_ranges_overlap(outputs[o], inputs[i]))
                return gdn_fail(GDN_ERROR_OVERLAP,
                                "gated_delta_net: output %s overlaps input %s (%s)", output_names[o],
                                input_names[i], indexed ? "with state_index, only states may overlap the "
                                "state pool" : "only state == states[s] exactly may alias");
        }
    if (gdn_tensor_ranges_overlap(&args->o, &args->states))
        return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net: outputs o and states overlap");

    shape->B = B;
    shape->T = T;
    shape->Hk = Hk;
    shape->Hv = Hv;
    shape->D = D;
    shape->n_write = n_write;
    shape->state_alias = alias;
    shape->S = S;
    shape->indexed = indexed;
    shape->pool_overlaps_states = indexed && gdn_tensor_ranges_overlap(&args->state, &args->states);
    shape->scale = params->scale != 0.0f ? params->scale : (float)(1.0 / sqrt((double)D));
    return GDN_OK;
}

/* Byte range [lo, hi) of the D x D x Hv state at `base` with strides nb[0..2] (nb >= 0). */
static void state_range(const char *base, const size_t *nb, int64_t D, int64_t Hv, uintptr_t *lo, uintptr_t *hi)
{
    *lo = (uintptr_t)base;
    *hi = *lo + (uintptr_t)(D - 1) * nb[0] + (uintptr_t)(D - 1) * nb[1] + (uintptr_t)(Hv - 1) * nb[2] + sizeof(float);
}

gdn_status gdn_gated_delta_net_check_index(const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape,
                                           int *in_place)
{
    if (in_place != NULL)
        *in_place = 0;
    if (!shape->indexed)
        return GDN_OK;
    const gdn_tensor *pool = &args->state, *states = &args->states;
    for (int64_t b = 0; b < shape->B; b++) {
        int32_t slot;
        memcpy(&slot, (const char *)args->state_index.data + (size_t)b * args->state_index.nb[0], sizeof slot);
        if (slot < 0 || slot >= shape->S)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: state_index[%lld]=%d is outside 0..%lld "
                            "(slots of the state pool)", (long long)b, (int)slot, (long long)(shape->S - 1));
    }
    /* The in-place rule: the slot read by b is disjoint from every snapshot written, or exactly
     * one of b's own (then each task reads its rows before writing them, as for state ==
     * states[s]). B*B*n_write comparisons, only when the whole ranges meet at all. */
    for (int64_t b = 0; shape->pool_overlaps_states && b < shape->B; b++) {
        int32_t slot;
        memcpy(&slot, (const char *)args->state_index.data + (size_t)b * args->state_index.nb[0], sizeof slot);
        const char *read = (const char *)pool->data + (size_t)slot * pool->nb[3];
        uintptr_t lo, hi;
        state_range(read, pool->nb, shape->D, shape->Hv, &lo, &hi);
        for (int64_t s = 0; s < shape->n_write; s++)
            for (int64_t b2 = 0; b2 < shape->B; b2++) {
                const char *snap = (const char *)states->data + (size_t)s * states->nb[4] + (size_t)b2 * states->nb[3];
                uintptr_t slo, shi;
                state_range(snap, states->nb, shape->D, shape->Hv, &slo, &shi);
                if (hi <= slo || shi <= lo)
                    continue;
                if (b2 == b && snap == read && states->nb[0] == pool->nb[0] && states->nb[1] == pool->nb[1] &&
                    states->nb[2] == pool->nb[2]) {
                    if (in_place != NULL)
                        *in_place = 1;
                    continue;
                }
                return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net: state_index[%lld]=%d: the pool slot read "
                                "overlaps the snapshot states[%lld][%lld] (a sequence may read only a slot "
                                "disjoint from every snapshot, or exactly one of its own)", (long long)b, (int)slot,
                                (long long)s, (long long)b2);
            }
    }
    return GDN_OK;
}

gdn_status gdn_gated_delta_net(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                               const gdn_gated_delta_net_args *args)
{
    gdn_clear_error();
    if (backend == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: NULL backend");
    gdn_gdn_shape shape;
    gdn_status st = gdn_gated_delta_net_check(params, args, GDN_DTYPE_F32, &shape);
    if (st != GDN_OK)
        return st;
    st = backend->ops->gated_delta_net(backend, params, args, &shape);
    if (st == GDN_OK)
        gdn_backend_count_gdn(backend, args, &shape);
    return st;
}
