/* gdn_op.c: parameters, validation and dispatch of the Gated DeltaNet op. Every check that a
 * caller can fail lives here, once, so that backends and the reference see only valid input. */
#include "gdn_op.h"
#include "../backends/backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

gdn_gated_delta_net_params gdn_gated_delta_net_params_default(void)
{
    gdn_gated_delta_net_params p;
    p.n_snapshots = 1;
    p.broadcast = GDN_BROADCAST_TILED;
    p.scale = 0.0f;
    p.l2norm = 0;
    p.state_ready = 0;
    p.chunk = 0;
    p.chunk_tf32 = 0;
    return p;
}

/* Check that `t` is a view of dtype `dtype` with exactly the counts `ne` (innermost first).
 * `op` names the op in the message ("gated_delta_net", "gated_delta_net_replay"). */
static gdn_status check_tensor(const char *op, const char *name, const gdn_tensor *t, gdn_dtype dtype, int n_dims,
                               const int64_t *ne)
{
    if (t->data == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %s has no data pointer", op, name);
    if (t->dtype != dtype)
        return gdn_fail(GDN_ERROR_TYPE, "%s: %s is %s, expected %s", op, name, gdn_dtype_name(t->dtype),
                        gdn_dtype_name(dtype));
    if (t->n_dims < 1 || t->n_dims > GDN_MAX_DIMS)
        return gdn_fail(GDN_ERROR_SHAPE, "%s: %s has n_dims=%d", op, name, (int)t->n_dims);
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        int64_t want = i < n_dims ? ne[i] : 1;
        if (t->ne[i] != want)
            return gdn_fail(GDN_ERROR_SHAPE, "%s: %s has ne[%d]=%lld (innermost-first), expected %lld", op, name, i,
                            (long long)t->ne[i], (long long)want);
        if (t->nb[i] % gdn_dtype_size(dtype) != 0)
            return gdn_fail(GDN_ERROR_SHAPE, "%s: %s has byte stride nb[%d]=%zu, not a multiple of %zu", op, name,
                            i, t->nb[i], gdn_dtype_size(dtype));
    }
    if ((uintptr_t)t->data % gdn_dtype_size(dtype) != 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %s data is not %zu-byte aligned", op, name,
                        gdn_dtype_size(dtype));
    return GDN_OK;
}

/* The parameters both forms share (broadcast, l2norm, scale). */
static gdn_status check_params(const char *op, const gdn_gated_delta_net_params *params)
{
    if (params->broadcast != GDN_BROADCAST_TILED && params->broadcast != GDN_BROADCAST_INTERLEAVED)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: unknown broadcast rule %d", op, (int)params->broadcast);
    if (params->l2norm != 0 && params->l2norm != 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: l2norm=%d, expected 0 or 1", op, (int)params->l2norm);
    if (!isfinite(params->scale) || params->scale < 0.0f)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: scale=%g, expected a finite value >= 0 (0 = 1/sqrt(Dk))",
                        op, (double)params->scale);
    if (params->chunk != -1 && params->chunk != 0 && params->chunk != 16 && params->chunk != 32 &&
        params->chunk != 64)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: chunk=%d, expected 0 (the backend chooses), -1 (never) or "
                        "16, 32, 64 (tokens per chunk)", op, (int)params->chunk);
    if (params->chunk_tf32 != 0 && params->chunk_tf32 != 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: chunk_tf32=%d, expected 0 or 1", op,
                        (int)params->chunk_tf32);
    return GDN_OK;
}

/* Sizes from q [B,T,Hk,D] and v [B,T,Hv,D] (everything else is checked against them) into
 * shape->B, T, Hk, Hv, D and the resolved scale; the other fields zeroed (state_alias -1). */
static gdn_status check_sizes(const char *op, const gdn_gated_delta_net_params *params, const gdn_tensor *q,
                              const gdn_tensor *v, gdn_gdn_shape *shape)
{
    if (q->n_dims != 4 || v->n_dims != 4)
        return gdn_fail(GDN_ERROR_SHAPE, "%s: q and v must have 4 dims [B,T,H,D], got %d and %d", op,
                        (int)q->n_dims, (int)v->n_dims);
    int64_t D = q->ne[0], Hk = q->ne[1], T = q->ne[2], B = q->ne[3];
    int64_t Hv = v->ne[1];
    if (D != 16 && D != 32 && D != 64 && D != 128 && D != 256)
        return gdn_fail(GDN_ERROR_SHAPE, "%s: Dk=%lld, expected 16, 32, 64, 128 or 256", op, (long long)D);
    if (v->ne[0] != D)
        return gdn_fail(GDN_ERROR_SHAPE, "%s: Dv=%lld differs from Dk=%lld (Dk = Dv required)", op,
                        (long long)v->ne[0], (long long)D);
    if (Hk < 1 || Hv < 1 || Hv % Hk != 0)
        return gdn_fail(GDN_ERROR_SHAPE, "%s: v has Hv=%lld heads, not a multiple of Hk=%lld", op, (long long)Hv,
                        (long long)Hk);
    if (T < 1 || B < 1)
        return gdn_fail(GDN_ERROR_SHAPE, "%s: T=%lld and B=%lld must be >= 1", op, (long long)T, (long long)B);
    memset(shape, 0, sizeof *shape);
    shape->B = B;
    shape->T = T;
    shape->Hk = Hk;
    shape->Hv = Hv;
    shape->D = D;
    shape->state_alias = -1;
    shape->scale = params->scale != 0.0f ? params->scale : (float)(1.0 / sqrt((double)D));
    return GDN_OK;
}

/* The state storage dtype a call asks for: BF16 when `state` is BF16, else F32 (the default;
 * check_tensor then reports any other dtype as "expected F32"). */
static gdn_dtype storage_of(const gdn_tensor *state)
{
    return state->dtype == GDN_DTYPE_BF16 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
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
    const char *op = "gated_delta_net";
    gdn_status st = check_params(op, params);
    if (st != GDN_OK || (st = check_sizes(op, params, &args->q, &args->v, shape)) != GDN_OK)
        return st;
    const int64_t D = shape->D, Hk = shape->Hk, T = shape->T, B = shape->B, Hv = shape->Hv;
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
    /* With states_index, `states` is a pool of any S' >= 1 slots per snapshot. */
    const int write_indexed = args->states_index.data != NULL;
    const int64_t S_write = write_indexed ? args->states.ne[3] : B;
    if (S_write < 1)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net: states pool has ne[3]=%lld slots, expected >= 1",
                        (long long)S_write);
    const int64_t ne_state[4] = {D, D, Hv, S};
    const int64_t ne_index[1] = {B};
    const int64_t ne_states[5] = {D, D, Hv, S_write, n_write};
    /* The reference reads a state of either storage dtype and writes F64 snapshots (rounded to
     * BF16 after every token for a BF16 state); a backend writes snapshots of the state's dtype. */
    const gdn_dtype storage = storage_of(&args->state);
    const gdn_dtype states_dtype = output_dtype == GDN_DTYPE_F64 ? GDN_DTYPE_F64 : storage;
    if ((st = check_tensor(op, "q", &args->q, GDN_DTYPE_F32, 4, ne_qk)) != GDN_OK ||
        (st = check_tensor(op, "k", &args->k, GDN_DTYPE_F32, 4, ne_qk)) != GDN_OK ||
        (st = check_tensor(op, "v", &args->v, GDN_DTYPE_F32, 4, ne_v)) != GDN_OK ||
        (st = check_tensor(op, "g", &args->g, GDN_DTYPE_F32, 3, ne_gate)) != GDN_OK ||
        (st = check_tensor(op, "beta", &args->beta, GDN_DTYPE_F32, 3, ne_gate)) != GDN_OK ||
        (st = check_tensor(op, "state", &args->state, storage, 4, ne_state)) != GDN_OK ||
        (st = check_tensor(op, "o", &args->o, output_dtype, 4, ne_v)) != GDN_OK ||
        (st = check_tensor(op, "states", &args->states, states_dtype, 5, ne_states)) != GDN_OK ||
        (indexed &&
         (st = check_tensor(op, "state_index", &args->state_index, GDN_DTYPE_I32, 1, ne_index)) != GDN_OK) ||
        (write_indexed &&
         (st = check_tensor(op, "states_index", &args->states_index, GDN_DTYPE_I32, 1, ne_index)) != GDN_OK))
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
    for (int64_t s = 0; s < n_write && output_dtype != GDN_DTYPE_F64 && !indexed && !write_indexed; s++) {
        gdn_tensor snap = args->states;
        snap.data = (char *)snap.data + (size_t)s * snap.nb[4];
        if (same_view(&snap, &args->state)) {
            alias = s;
            break;
        }
    }
    const gdn_tensor *inputs[8] = {&args->q, &args->k, &args->v, &args->g, &args->beta, &args->state,
                                   &args->state_index, &args->states_index};
    const char *input_names[8] = {"q", "k", "v", "g", "beta", "state", "state_index", "states_index"};
    const int present[8] = {1, 1, 1, 1, 1, 1, indexed, write_indexed};
    const gdn_tensor *outputs[2] = {&args->o, &args->states};
    const char *output_names[2] = {"o", "states"};
    for (int o = 0; o < 2; o++)
        for (int i = 0; i < 8; i++) {
            if (!present[i] || (o == 1 && i == 5 && (alias >= 0 || indexed)))
                continue;
            if (gdn_tensor_ranges_overlap(outputs[o], inputs[i]))
                return gdn_fail(GDN_ERROR_OVERLAP,
                                "gated_delta_net: output %s overlaps input %s (%s)", output_names[o],
                                input_names[i], indexed ? "with state_index, only states may overlap the "
                                "state pool" : "only state == states[s] exactly may alias");
        }
    if (gdn_tensor_ranges_overlap(&args->o, &args->states))
        return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net: outputs o and states overlap");

    shape->n_write = n_write;
    shape->storage = storage;
    shape->state_alias = alias;
    shape->S = S;
    shape->indexed = indexed;
    shape->write_indexed = write_indexed;
    shape->S_write = S_write;
    shape->pool_overlaps_states = indexed && gdn_tensor_ranges_overlap(&args->state, &args->states);
    return GDN_OK;
}

/* ---------------------------------------------------------------------------------------------
 * The replay form
 * ------------------------------------------------------------------------------------------- */
gdn_status gdn_gated_delta_net_replay_check(const gdn_gated_delta_net_params *params,
                                            const gdn_gated_delta_net_replay_args *args, gdn_dtype output_dtype,
                                            gdn_gdn_shape *shape, gdn_gated_delta_net_args *plain)
{
    const char *op = "gated_delta_net_replay";
    if (params == NULL || args == NULL || shape == NULL || plain == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: NULL params or args", op);
    gdn_status st = check_params(op, params);
    if (st != GDN_OK || (st = check_sizes(op, params, &args->q, &args->v, shape)) != GDN_OK)
        return st;
    const int64_t D = shape->D, Hk = shape->Hk, T = shape->T, B = shape->B, Hv = shape->Hv;
    const int64_t S = args->state.ne[3], L = args->ring_k.ne[2];
    if (S < 1)
        return gdn_fail(GDN_ERROR_SHAPE, "%s: state pool has ne[3]=%lld slots, expected >= 1", op, (long long)S);
    if (L < T)
        return gdn_fail(GDN_ERROR_SHAPE, "%s: ring_k has L=%lld positions (ne[2]), fewer than the T=%lld new "
                        "tokens it must take", op, (long long)L, (long long)T);
    const int64_t ne_qk[4] = {D, Hk, T, B}, ne_v[4] = {D, Hv, T, B}, ne_gate[3] = {Hv, T, B};
    const int64_t ne_state[4] = {D, D, Hv, S}, ne_index[1] = {B}, ne_fold[2] = {3, B};
    const int64_t ne_ring_k[4] = {D, Hk, L, S}, ne_ring_v[4] = {D, Hv, L, S}, ne_ring_gate[3] = {Hv, L, S};
    /* A backend's pool is F32 or BF16 (its storage); the reference's is F64 (its storage is an
     * argument of gdn_gated_delta_net_replay_reference). */
    const gdn_dtype pool_dtype = output_dtype == GDN_DTYPE_F64 ? GDN_DTYPE_F64 : storage_of(&args->state);
    if ((st = check_tensor(op, "q", &args->q, GDN_DTYPE_F32, 4, ne_qk)) != GDN_OK ||
        (st = check_tensor(op, "k", &args->k, GDN_DTYPE_F32, 4, ne_qk)) != GDN_OK ||
        (st = check_tensor(op, "v", &args->v, GDN_DTYPE_F32, 4, ne_v)) != GDN_OK ||
        (st = check_tensor(op, "g", &args->g, GDN_DTYPE_F32, 3, ne_gate)) != GDN_OK ||
        (st = check_tensor(op, "beta", &args->beta, GDN_DTYPE_F32, 3, ne_gate)) != GDN_OK ||
        (st = check_tensor(op, "state", &args->state, pool_dtype, 4, ne_state)) != GDN_OK ||
        (st = check_tensor(op, "state_index", &args->state_index, GDN_DTYPE_I32, 1, ne_index)) != GDN_OK ||
        (st = check_tensor(op, "ring_k", &args->ring_k, GDN_DTYPE_F32, 4, ne_ring_k)) != GDN_OK ||
        (st = check_tensor(op, "ring_v", &args->ring_v, GDN_DTYPE_F32, 4, ne_ring_v)) != GDN_OK ||
        (st = check_tensor(op, "ring_g", &args->ring_g, GDN_DTYPE_F32, 3, ne_ring_gate)) != GDN_OK ||
        (st = check_tensor(op, "fold", &args->fold, GDN_DTYPE_I32, 2, ne_fold)) != GDN_OK ||
        (st = check_tensor(op, "o", &args->o, output_dtype, 4, ne_v)) != GDN_OK)
        return st;

    /* Five views are written (o, the pool, the rings): each injective (threads would race), none
     * overlapping another or any input. Each sequence writes only its own slot (distinct slots:
     * checked with the index values) and ring positions disjoint from those it folds. */
    const gdn_tensor *written[5] = {&args->o, &args->state, &args->ring_k, &args->ring_v, &args->ring_g};
    const char *written_names[5] = {"o", "state", "ring_k", "ring_v", "ring_g"};
    const gdn_tensor *inputs[7] = {&args->q, &args->k, &args->v, &args->g, &args->beta, &args->state_index,
                                   &args->fold};
    const char *input_names[7] = {"q", "k", "v", "g", "beta", "state_index", "fold"};
    for (int w = 0; w < 5; w++) {
        if (!gdn_tensor_is_injective(written[w]))
            return gdn_fail(GDN_ERROR_OVERLAP, "%s: %s (written by the op) has elements that share memory "
                            "(a stride smaller than the extent of the dimensions inside it)", op, written_names[w]);
        for (int i = 0; i < 7; i++)
            if (gdn_tensor_ranges_overlap(written[w], inputs[i]))
                return gdn_fail(GDN_ERROR_OVERLAP, "%s: %s (written by the op) overlaps input %s", op,
                                written_names[w], input_names[i]);
        for (int w2 = 0; w2 < w; w2++)
            if (gdn_tensor_ranges_overlap(written[w], written[w2]))
                return gdn_fail(GDN_ERROR_OVERLAP, "%s: %s and %s (both written by the op) overlap", op,
                                written_names[w2], written_names[w]);
    }

    shape->n_write = 0;
    shape->storage = pool_dtype == GDN_DTYPE_BF16 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
    shape->S = S;
    shape->indexed = 1;
    shape->replay = args;
    shape->L = L;
    memset(plain, 0, sizeof *plain); /* states: empty, nothing is written there */
    plain->q = args->q;
    plain->k = args->k;
    plain->v = args->v;
    plain->g = args->g;
    plain->beta = args->beta;
    plain->state = args->state;
    plain->o = args->o;
    plain->state_index = args->state_index;
    return GDN_OK;
}

gdn_gdn_fold gdn_gated_delta_net_fold_of(const gdn_gated_delta_net_replay_args *args, int64_t b)
{
    const char *row = (const char *)args->fold.data + (size_t)b * args->fold.nb[1];
    gdn_gdn_fold f;
    memcpy(&f.start, row, sizeof f.start);
    memcpy(&f.count, row + args->fold.nb[0], sizeof f.count);
    memcpy(&f.commit, row + 2 * args->fold.nb[0], sizeof f.commit);
    return f;
}

/* Replay: every fold entry in range, then no two sequences on one slot (the op writes the slot
 * and its ring). Index values are already known to lie in 0..S-1. */
static gdn_status check_fold(const gdn_gdn_shape *shape, const int32_t *slots)
{
    const char *op = "gated_delta_net_replay";
    for (int64_t b = 0; b < shape->B; b++) {
        const gdn_gdn_fold f = gdn_gated_delta_net_fold_of(shape->replay, b);
        if (f.start < 0 || f.start >= shape->L || f.count < 0 || f.count > shape->L - shape->T)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: fold[%lld] = {start %d, count %d}: expected "
                            "0 <= start < L=%lld, count >= 0 and count + T <= L (T=%lld: the new tokens must not "
                            "overwrite the tokens being folded)", op, (long long)b, (int)f.start, (int)f.count,
                            (long long)shape->L, (long long)shape->T);
    }
    /* Distinct slots: one bit per slot (S bits, far less than the pool itself). */
    unsigned char *seen = calloc((size_t)(shape->S + 7) / 8, 1);
    if (seen == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "%s: no memory for the slot check", op);
    for (int64_t b = 0; b < shape->B; b++) {
        const int32_t slot = slots[b];
        if (seen[slot / 8] & (1u << (slot % 8))) {
            int64_t first = 0;
            while (slots[first] != slot)
                first++;
            free(seen);
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: state_index[%lld]=%d is also the slot of sequence "
                            "%lld (each sequence must own its slot: the op writes it)", op, (long long)b, (int)slot,
                            (long long)first);
        }
        seen[slot / 8] |= (unsigned char)(1u << (slot % 8));
    }
    free(seen);
    return GDN_OK;
}

/* Byte range [lo, hi) of the D x D x Hv state of `t`'s dtype at `base` with t's strides nb[0..2]
 * (nb >= 0). */
static void state_range(const char *base, const gdn_tensor *t, int64_t D, int64_t Hv, uintptr_t *lo, uintptr_t *hi)
{
    *lo = (uintptr_t)base;
    *hi = *lo + (uintptr_t)(D - 1) * t->nb[0] + (uintptr_t)(D - 1) * t->nb[1] + (uintptr_t)(Hv - 1) * t->nb[2] +
          gdn_dtype_size(t->dtype);
}

/* The B values of an I32 index view (host memory) into out; reports the first outside 0..n-1
 * (named `what`, the slots of `of`). */
static gdn_status read_index(const gdn_tensor *index, int64_t B, int64_t n, const char *op, const char *what,
                             const char *of, int32_t *out)
{
    for (int64_t b = 0; b < B; b++) {
        memcpy(&out[b], (const char *)index->data + (size_t)b * index->nb[0], sizeof out[b]);
        if (out[b] < 0 || out[b] >= n)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %s[%lld]=%d is outside 0..%lld (slots of %s)", op, what,
                            (long long)b, (int)out[b], (long long)(n - 1), of);
    }
    return GDN_OK;
}

gdn_status gdn_gated_delta_net_check_index(const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape,
                                           int *in_place)
{
    if (in_place != NULL)
        *in_place = 0;
    if (!shape->indexed && !shape->write_indexed)
        return GDN_OK;
    const char *op = shape->replay ? "gated_delta_net_replay" : "gated_delta_net";
    const gdn_tensor *pool = &args->state, *states = &args->states;
    int32_t *slots = malloc(2 * (size_t)shape->B * sizeof *slots), *writes = slots + shape->B;
    if (slots == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "%s: no memory for the index check", op);
    gdn_status st = GDN_OK;
    for (int64_t b = 0; b < shape->B; b++)
        writes[b] = (int32_t)b, slots[b] = (int32_t)b;
    if (shape->indexed)
        st = read_index(&args->state_index, shape->B, shape->S, op, "state_index", "the state pool", slots);
    if (st == GDN_OK && shape->write_indexed)
        st = read_index(&args->states_index, shape->B, shape->S_write, op, "states_index", "states", writes);
    if (st == GDN_OK && shape->write_indexed) /* one writer per slot: B*B comparisons */
        for (int64_t b = 1; st == GDN_OK && b < shape->B; b++)
            for (int64_t b2 = 0; b2 < b; b2++)
                if (writes[b2] == writes[b]) {
                    st = gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: states_index[%lld]=%d is also the slot sequence "
                                  "%lld writes (a slot has one writer)", op, (long long)b, (int)writes[b],
                                  (long long)b2);
                    break;
                }
    if (st == GDN_OK && shape->replay != NULL)
        st = check_fold(shape, slots);
    /* The in-place rule: the slot read by b is disjoint from every snapshot written, or exactly
     * one of b's own (then each task reads its rows before writing them, as for state ==
     * states[s]). B*B*n_write comparisons, only when the whole ranges meet at all. */
    for (int64_t b = 0; st == GDN_OK && shape->pool_overlaps_states && b < shape->B; b++) {
        const char *read = (const char *)pool->data + (size_t)slots[b] * pool->nb[3];
        uintptr_t lo, hi;
        state_range(read, pool, shape->D, shape->Hv, &lo, &hi);
        for (int64_t s = 0; st == GDN_OK && s < shape->n_write; s++)
            for (int64_t b2 = 0; b2 < shape->B; b2++) {
                const char *snap =
                    (const char *)states->data + (size_t)s * states->nb[4] + (size_t)writes[b2] * states->nb[3];
                uintptr_t slo, shi;
                state_range(snap, states, shape->D, shape->Hv, &slo, &shi);
                if (hi <= slo || shi <= lo)
                    continue;
                if (b2 == b && snap == read && states->nb[0] == pool->nb[0] && states->nb[1] == pool->nb[1] &&
                    states->nb[2] == pool->nb[2]) {
                    if (in_place != NULL)
                        *in_place = 1;
                    continue;
                }
                st = gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net: state_index[%lld]=%d: the pool slot read "
                              "overlaps the snapshot states[%lld][%lld] written by sequence %lld (a sequence may "
                              "read only a slot disjoint from every snapshot, or exactly one of its own)", (long long)b,
                              (int)slots[b], (long long)s, (long long)writes[b2], (long long)b2);
                break;
            }
    }
    free(slots);
    return st;
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
    st = gdn_gated_delta_net_dispatch(backend, params, args, &shape);
    if (st == GDN_OK)
        gdn_backend_count_gdn(backend, args, &shape);
    return st;
}

int64_t gdn_backend_chunk_min_tokens(const gdn_backend *backend)
{
    return backend != NULL && backend->ops->gated_delta_net_chunked != NULL ? backend->chunk_min_tokens : 0;
}

int gdn_backend_chunk_fits(const gdn_backend *backend, int64_t D, int64_t chunk)
{
    if (backend == NULL || backend->ops->gated_delta_net_chunked == NULL ||
        (chunk != 16 && chunk != 32 && chunk != 64))
        return 0;
    return backend->ops->gated_delta_net_chunk_fits == NULL || backend->ops->gated_delta_net_chunk_fits(backend, D, chunk);
}

/* The chunk length a validated call runs with, 0 for token by token; GDN_ERROR_UNSUPPORTED
 * when params ask for chunks the backend cannot run here. */
static gdn_status chunk_of(const gdn_backend *backend, const gdn_gated_delta_net_params *params,
                           const gdn_gdn_shape *shape, int64_t *chunk)
{
    *chunk = 0;
    if (params->chunk < 0 || shape->replay != NULL || shape->T <= shape->n_write)
        return GDN_OK;
    const char *why = NULL;
    if (backend->ops->gated_delta_net_chunked == NULL)
        why = "the backend has no chunked form";
    else if (shape->storage != GDN_DTYPE_F32)
        why = "a BF16 state runs token by token";
    else if (backend->recording)
        why = "ops are being recorded (the chunked form may read the index on the host and grow its "
              "scratch memory)";
    else if (!gdn_backend_chunk_fits(backend, shape->D, params->chunk == 0 ? 32 : params->chunk))
        why = "its kernels for this D and chunk length need more shared memory than the device has";
    if (params->chunk == 0) {
        if (why == NULL && backend->chunk_min_tokens > 0 && shape->T >= backend->chunk_min_tokens)
            *chunk = 32; /* the fastest of 16, 32 and 64 on the CPU, and on CUDA at B = 1 and with TF32;
                          * within 3% of 16 at B = 8 in three passes (docs/PERF.md) */
        return GDN_OK;
    }
    if (why != NULL)
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: chunk=%d asked for, but %s", (int)params->chunk,
                        why);
    *chunk = params->chunk;
    return GDN_OK;
}

gdn_status gdn_gated_delta_net_check_index_host(gdn_backend *backend, const gdn_gated_delta_net_args *args,
                                                const gdn_gdn_shape *shape)
{
    if (!shape->indexed && !shape->write_indexed)
        return GDN_OK;
    int32_t *host = malloc(2 * (size_t)shape->B * sizeof *host);
    if (host == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "gated_delta_net: no memory for the index check");
    gdn_gated_delta_net_args on_host = *args;
    gdn_status st = GDN_OK;
    const gdn_tensor *index[2] = {&args->state_index, &args->states_index};
    gdn_tensor *copy[2] = {&on_host.state_index, &on_host.states_index};
    for (int i = 0; i < 2 && st == GDN_OK; i++) {
        if (index[i]->data == NULL)
            continue;
        int32_t *dst = host + (size_t)i * (size_t)shape->B;
        for (int64_t b = 0; b < shape->B && st == GDN_OK; b++)
            st = backend->ops->download(backend, &dst[b], (const char *)index[i]->data + (size_t)b * index[i]->nb[0],
                                        sizeof dst[b]);
        copy[i]->data = dst;
        copy[i]->nb[0] = sizeof *dst;
    }
    if (st == GDN_OK)
        st = gdn_gated_delta_net_check_index(&on_host, shape, NULL);
    free(host);
    return st;
}

gdn_status gdn_gated_delta_net_dispatch(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                        const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape)
{
    int64_t chunk = 0;
    gdn_status st = chunk_of(backend, params, shape, &chunk);
    if (st != GDN_OK)
        return st;
    if (chunk == 0)
        return backend->ops->gated_delta_net(backend, params, args, shape);
    if ((st = gdn_gated_delta_net_check_index_host(backend, args, shape)) != GDN_OK)
        return st;
    /* Tokens 0 .. n-1 in chunks, leaving the state in the oldest snapshot's slot; then the
     * last N tokens token by token from there, in place, writing the N snapshots. */
    const int64_t N = shape->n_write, n = shape->T - N;
    gdn_tensor final = args->states;
    final.data = (char *)args->states.data + (size_t)(N - 1) * args->states.nb[4];
    final.n_dims = 4;
    final.ne[4] = 1;
    const gdn_tensor *final_index = shape->write_indexed ? &args->states_index : NULL;
    st = backend->ops->gated_delta_net_chunked(backend, params, args, shape, n, chunk, &final, final_index);
    if (st != GDN_OK)
        return st;
    gdn_gated_delta_net_args tail = *args;
    tail.q = gdn_view_range(&args->q, 2, n, N);
    tail.k = gdn_view_range(&args->k, 2, n, N);
    tail.v = gdn_view_range(&args->v, 2, n, N);
    tail.o = gdn_view_range(&args->o, 2, n, N);
    tail.g = gdn_view_range(&args->g, 1, n, N);
    tail.beta = gdn_view_range(&args->beta, 1, n, N);
    tail.state = final;
    tail.state_index = shape->write_indexed ? args->states_index : (gdn_tensor){0};
    gdn_gated_delta_net_params serial = *params;
    serial.chunk = -1;
    serial.state_ready = 0; /* the state was just written by the chunked kernels */
    gdn_gdn_shape tail_shape;
    if ((st = gdn_gated_delta_net_check(&serial, &tail, GDN_DTYPE_F32, &tail_shape)) != GDN_OK)
        return st;
    return backend->ops->gated_delta_net(backend, &serial, &tail, &tail_shape);
}

gdn_status gdn_gated_delta_net_replay(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                      const gdn_gated_delta_net_replay_args *args)
{
    gdn_clear_error();
    if (backend == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net_replay: NULL backend");
    gdn_gdn_shape shape;
    gdn_gated_delta_net_args plain;
    gdn_status st = gdn_gated_delta_net_replay_check(params, args, GDN_DTYPE_F32, &shape, &plain);
    if (st != GDN_OK)
        return st;
    /* Replay is a mode of the backend's gated_delta_net entry (shape.replay set): the same
     * kernels, the same per-token code for folded and new tokens. */
    st = backend->ops->gated_delta_net(backend, params, &plain, &shape);
    if (st != GDN_OK)
        return st;
    gdn_backend_count_gdn(backend, &plain, &shape);
    /* Plus what the host knows the call moves beyond that: the fold array read and the new
     * tokens' entries appended to the rings (cache traffic). */
    const uint64_t appended = (uint64_t)(shape.B * shape.T) *
                              (uint64_t)(shape.Hk * shape.D + shape.Hv * shape.D + shape.Hv) * sizeof(float);
    backend->counters.bytes += appended + (uint64_t)(3 * shape.B) * sizeof(int32_t);
    backend->counters.cache_bytes += appended;
    return GDN_OK;
}
