/* gdn_varlen.c: variable-length batches of the Gated DeltaNet op (gdn_gated_delta_net_varlen in
 * include/gdn.h): sequences of different lengths in one call, as one call of the op per sequence
 * over views of the caller's tensors. Everything is validated before the first sequence runs:
 * the offsets, every sequence's call (shapes, dtypes, its own overlaps), the overlaps between
 * sequences (whole tensors) and the index values, so bad input writes nothing. */
#include "internal.h"
#include "gdn_op.h"
#include "../backends/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The offsets: n_seq + 1 values, 0 first, strictly increasing, `total` last. */
static gdn_status check_offsets(const int32_t *offsets, int64_t n_seq, int64_t total, int64_t *longest)
{
    if (offsets[0] != 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net_varlen: offsets[0]=%d, expected 0",
                        (int)offsets[0]);
    *longest = 0;
    for (int64_t b = 0; b < n_seq; b++) {
        if (offsets[b + 1] <= offsets[b])
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net_varlen: offsets[%lld]=%d after "
                            "offsets[%lld]=%d: sequence %lld would have no token (offsets must increase strictly)", (long long)b + 1,
                            (int)offsets[b + 1], (long long)b, (int)offsets[b], (long long)b);
        const int64_t length = (int64_t)offsets[b + 1] - offsets[b];
        *longest = length > *longest ? length : *longest;
    }
    if (offsets[n_seq] != total)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net_varlen: offsets[%lld]=%d, but q holds %lld tokens",
                        (long long)n_seq, (int)offsets[n_seq], (long long)total);
    return GDN_OK;
}

/* Overlaps between sequences, on whole tensors: o meets no input and not states; states meets
 * no token input; without an index, state is disjoint from states or exactly one snapshot of
 * it (then each sequence updates its own slot in place, checked per call). With an index the
 * pool's rule is the index check's. */
static gdn_status check_whole_overlaps(const gdn_gated_delta_net_args *a, int64_t N)
{
    const gdn_tensor *inputs[8] = {&a->q, &a->k, &a->v, &a->g, &a->beta, &a->state, &a->state_index, &a->states_index};
    const char *names[8] = {"q", "k", "v", "g", "beta", "state", "state_index", "states_index"};
    for (int i = 0; i < 8; i++) {
        if (inputs[i]->data == NULL)
            continue;
        if (gdn_tensor_ranges_overlap(&a->o, inputs[i]))
            return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net_varlen: o overlaps %s", names[i]);
        if (i != 5 && gdn_tensor_ranges_overlap(&a->states, inputs[i]))
            return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net_varlen: states overlaps %s", names[i]);
    }
    if (gdn_tensor_ranges_overlap(&a->o, &a->states))
        return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net_varlen: outputs o and states overlap");
    if (a->state_index.data != NULL || !gdn_tensor_ranges_overlap(&a->state, &a->states))
        return GDN_OK;
    for (int64_t s = 0; s < N; s++) {
        const char *snap = (const char *)a->states.data + (size_t)s * a->states.nb[4];
        int same = snap == (const char *)a->state.data;
        for (int i = 0; same && i < 4; i++)
            same = a->states.ne[i] == a->state.ne[i] && a->states.nb[i] == a->state.nb[i];
        if (same)
            return GDN_OK;
    }
    return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net_varlen: state overlaps states without being exactly one "
                    "snapshot of it");
}

gdn_status gdn_gated_delta_net_varlen(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                      const gdn_gated_delta_net_args *args, const int32_t *offsets, int64_t n_seq)
{
    gdn_clear_error();
    if (backend == NULL || params == NULL || args == NULL || offsets == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net_varlen: NULL argument");
    if (n_seq < 1 || n_seq > INT32_MAX)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net_varlen: n_seq=%lld, expected >= 1",
                        (long long)n_seq);
    if (params->n_snapshots < 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net_varlen: n_snapshots=%d, expected >= 1",
                        (int)params->n_snapshots);
    const gdn_tensor *tok[6] = {&args->q, &args->k, &args->v, &args->o, &args->g, &args->beta};
    const char *tok_names[6] = {"q", "k", "v", "o", "g", "beta"};
    for (int i = 0; i < 6; i++) {
        const int dims = i < 4 ? 4 : 3;
        if (tok[i]->n_dims != dims || tok[i]->ne[dims - 1] != 1)
            return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net_varlen: %s must be %s with a batch dim of 1 (the "
                            "sequences' tokens one after another), got %d dims, batch %lld", tok_names[i],
                            dims == 4 ? "[1,T,H,D]" : "[1,T,H]", (int)tok[i]->n_dims,
                            (long long)tok[i]->ne[dims - 1]);
    }
    int64_t longest = 0;
    gdn_status st = check_offsets(offsets, n_seq, args->q.ne[2], &longest);
    if (st != GDN_OK)
        return st;
    const int64_t K = params->n_snapshots, N = longest < K ? longest : K;
    const int indexed = args->state_index.data != NULL, write_indexed = args->states_index.data != NULL;
    if (args->states.n_dims != 5 || args->states.ne[4] != N)
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net_varlen: states must be [N,%s,Hv,Dv,Dk] with N = min(K, "
                        "longest sequence) = %lld, got %d dims and N=%lld", write_indexed ? "S'" : "n_seq",
                        (long long)N, (int)args->states.n_dims, (long long)args->states.ne[4]);
    if ((!indexed && args->state.ne[3] != n_seq) || (!write_indexed && args->states.ne[3] != n_seq))
        return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net_varlen: %s has %lld slots, expected n_seq=%lld (one per "
                        "sequence, or an index)", !indexed && args->state.ne[3] != n_seq ? "state" : "states",
                        (long long)(!indexed && args->state.ne[3] != n_seq ? args->state.ne[3] : args->states.ne[3]),
                        (long long)n_seq);
    const gdn_tensor *index[2] = {&args->state_index, &args->states_index};
    for (int i = 0; i < 2; i++)
        if (index[i]->data != NULL && (index[i]->n_dims != 1 || index[i]->ne[0] != n_seq))
            return gdn_fail(GDN_ERROR_SHAPE, "gated_delta_net_varlen: %s must have n_seq=%lld values",
                            i ? "states_index" : "state_index", (long long)n_seq);

    /* Every sequence's own call. */
    gdn_gated_delta_net_args *sub = calloc((size_t)n_seq, sizeof *sub);
    gdn_gdn_shape *shape = calloc((size_t)n_seq, sizeof *shape);
    if (sub == NULL || shape == NULL) {
        free(sub);
        free(shape);
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "gated_delta_net_varlen: no memory for %lld calls", (long long)n_seq);
    }
    for (int64_t b = 0; st == GDN_OK && b < n_seq; b++) {
        const int64_t first = offsets[b], length = (int64_t)offsets[b + 1] - offsets[b];
        gdn_gated_delta_net_args *s = &sub[b];
        *s = *args;
        s->q = gdn_view_range(&args->q, 2, first, length);
        s->k = gdn_view_range(&args->k, 2, first, length);
        s->v = gdn_view_range(&args->v, 2, first, length);
        s->o = gdn_view_range(&args->o, 2, first, length);
        s->g = gdn_view_range(&args->g, 1, first, length);
        s->beta = gdn_view_range(&args->beta, 1, first, length);
        if (indexed)
            s->state_index = gdn_view_range(&args->state_index, 0, b, 1);
        else
            s->state = gdn_view_range(&args->state, 3, b, 1);
        s->states = gdn_view_range(&args->states, 4, 0, length < K ? length : K);
        if (write_indexed)
            s->states_index = gdn_view_range(&args->states_index, 0, b, 1);
        else
            s->states = gdn_view_range(&s->states, 3, b, 1);
        st = gdn_gated_delta_net_check(params, s, GDN_DTYPE_F32, &shape[b]);
        if (st != GDN_OK) {
            char why[512];
            snprintf(why, sizeof why, "%s", gdn_error_detail());
            st = gdn_fail(st, "gated_delta_net_varlen: sequence %lld (tokens %d..%d): %s", (long long)b,
                          (int)offsets[b], (int)offsets[b + 1] - 1, why);
        }
    }
    if (st == GDN_OK)
        st = check_whole_overlaps(args, N);
    if (st == GDN_OK && (indexed || write_indexed)) {
        /* The index values over all sequences (range, one writer per slot, the in-place rule as
         * if every sequence wrote N snapshots), read on the host. */
        gdn_gdn_shape whole = shape[0];
        whole.B = n_seq;
        whole.T = longest;
        whole.n_write = N;
        whole.S = indexed ? args->state.ne[3] : n_seq;
        whole.S_write = write_indexed ? args->states.ne[3] : n_seq;
        whole.pool_overlaps_states = indexed && gdn_tensor_ranges_overlap(&args->state, &args->states);
        st = gdn_gated_delta_net_check_index_host(backend, args, &whole);
        if (st != GDN_OK) {
            char why[512];
            snprintf(why, sizeof why, "%s", gdn_error_detail());
            st = gdn_fail(st, "gated_delta_net_varlen: %s", why);
        }
    }
    for (int64_t b = 0; st == GDN_OK && b < n_seq; b++) {
        st = gdn_gated_delta_net_dispatch(backend, params, &sub[b], &shape[b]);
        if (st == GDN_OK)
            gdn_backend_count_gdn(backend, &sub[b], &shape[b]);
    }
    free(sub);
    free(shape);
    return st;
}
