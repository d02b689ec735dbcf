/* test_gdn_slots.c: the Gated DeltaNet op over cache slots, on every backend present: the state
 * read from a pool through state_index (what gather elision hands the op), a cache read and
 * rewritten in place through the index (llama.cpp's cache), and snapshots written to any slots
 * through states_index (vLLM's state indices); each against the float64 reference and bit for
 * bit against the call on the gathered state, with bad indices refused and nothing written. */
#include "gdn_op_cases.h"

/* ---------------------------------------------------------------------------------------------
 * The state pool read through an index (what gather elision hands the op): S = 5 slots, B = 3
 * sequences with repeated slots, against the reference, against the same call on the gathered
 * state (bit for bit), and bad indices (rejected, nothing written).
 * ------------------------------------------------------------------------------------------- */
static const op_case indexed_cases[] = {
    {3, 2, 1, 2, 32, 2, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},
    {3, 3, 2, 4, 128, 2, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_PADDED, 0},    /* non-contiguous pool */
    {3, 1, 1, 2, 64, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_SPACED_INNER, 0},     /* decode, strided */
    {3, 1, 2, 4, 128, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},      /* decode: CUDA's state_ready form */
};

/* Snapshots written through the index at a batch large enough for CUDA's one-block check kernel
 * (B > 16) and for its loops over pairs to run whole unrolled groups of b' (4 at a time). */
static const op_case large_write_cases[] = {
    {20, 1, 1, 2, 16, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},
    {37, 2, 1, 1, 16, 2, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},
};

/* Prefill into the cache through the index: the chunked form (see main). */
static const op_case chunked_cases[] = {
    {3, 100, 2, 4, 128, 3, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_PADDED, 0},
    {2, 70, 1, 2, 64, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},
};

/* Run one indexed call (index values `slots`) and download o and states; 0 on failure. With
 * `ready`, the state_ready hint (every call here follows a synchronised upload, so it holds): on
 * CUDA the kernel reads the index and the state before waiting for the previous kernel. */
static gdn_status run_indexed(const test_backend *tb, const op_case *c, const op_tensors *ts, const test_tensor *pool,
                              const test_tensor *index, int ready, unsigned char **o, unsigned char **states)
{
    gdn_gated_delta_net_params p = case_params(c);
    p.state_ready = ready;
    gdn_gated_delta_net_args a = device_args(ts);
    a.state = test_device_view(pool);
    a.state_index = test_device_view(index);
    gdn_status st = gdn_gated_delta_net(tb->backend, &p, &a);
    if (st != GDN_OK || o == NULL)
        return st;
    if (gdn_backend_synchronize(tb->backend) != GDN_OK || !download_bytes(tb->backend, &a.o, o) ||
        !download_bytes(tb->backend, &a.states, states))
        return GDN_ERROR_BACKEND;
    return GDN_OK;
}

static void check_indexed(const test_backend *tb, int case_index, const op_case *c, int ready)
{
    enum { S = 5 };
    const int32_t slots[3] = {4, 0, 4};
    test_rng rng;
    test_rng_seed(&rng, 500 + (uint64_t)case_index);
    op_tensors ts;
    test_tensor pool, index;
    const int64_t D = c->D, N = c->T < c->K ? c->T : c->K;
    const int64_t ne_pool[] = {D, D, c->Hv, S}, ne_index[] = {c->B};
    int ok = op_tensors_init(&ts, c, GDN_DTYPE_F32, &rng) &&
             test_tensor_init(&pool, c->lay, GDN_DTYPE_F32, 4, ne_pool) &&
             test_tensor_init(&index, LAYOUT_CONTIGUOUS, GDN_DTYPE_I32, 1, ne_index);
    if (ok) {
        fill(&pool, &rng, STATE, c->D, 0, 0);
        memcpy(index.host_bytes, slots, sizeof slots);
    }
    /* The reference, reading the pool on the host. */
    gdn_gated_delta_net_params p = case_params(c);
    const int64_t ne_o[] = {D, c->Hv, c->T, c->B}, ne_s[] = {D, D, c->Hv, c->B, N};
    gdn_tensor o_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 4, ne_o);
    gdn_tensor s_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 5, ne_s);
    o_ref.data = malloc(gdn_tensor_span(&o_ref));
    s_ref.data = malloc(gdn_tensor_span(&s_ref));
    ok = ok && o_ref.data && s_ref.data;
    gdn_gated_delta_net_args ra = {ts.t[Q].host, ts.t[K_].host, ts.t[V].host, ts.t[G].host, ts.t[BETA].host,
                                   pool.host, o_ref, s_ref, index.host, {0}};
    ok = ok && gdn_gated_delta_net_reference(&p, &ra) == GDN_OK;
    CHECK(ok, "%s indexed case %d: setup or reference failed: %s", tb->label, case_index, gdn_error_detail());
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    ok = ok && test_tensor_upload(&pool, tb->backend) && test_tensor_upload(&index, tb->backend);

    /* Bad indices first, while the outputs still hold their 0xFF fill: rejected, nothing written. */
    const int32_t bad[2][3] = {{1, 5, 0}, {-1, 0, 0}};
    for (int i = 0; ok && i < 2; i++) {
        ok = test_buffer_upload(&index.device, bad[i], sizeof bad[i]);
        const gdn_status st = run_indexed(tb, c, &ts, &pool, &index, ready, NULL, NULL);
        char want[64];
        snprintf(want, sizeof want, "state_index[%d]=%d", i == 0 ? 1 : 0, (int)bad[i][i == 0 ? 1 : 0]);
        CHECK(st == GDN_ERROR_INVALID_ARGUMENT && strstr(gdn_error_detail(), want) != NULL,
              "%s indexed case %d: bad index %d gave %d (%s), expected invalid argument naming %s", tb->label,
              case_index, i, (int)st, gdn_error_detail(), want);
        gdn_backend_synchronize(tb->backend);
        for (int t = O; t <= STATES; t++) {
            unsigned char *got = malloc(ts.t[t].bytes);
            int intact = got && test_buffer_download(&ts.t[t].device, got);
            for (size_t j = 0; intact && j < ts.t[t].bytes; j++)
                intact = got[j] == 0xFF;
            CHECK(intact, "%s indexed case %d: a call with a bad index wrote an output", tb->label, case_index);
            free(got);
        }
    }
    ok = ok && test_buffer_upload(&index.device, slots, sizeof slots);

    /* Against the reference, and the pool left as it was (it is only read). */
    unsigned char *o_indexed = NULL, *s_indexed = NULL, *o_gathered = NULL, *s_gathered = NULL;
    gdn_status st = ok ? run_indexed(tb, c, &ts, &pool, &index, ready, &o_indexed, &s_indexed) : GDN_ERROR_BACKEND;
    CHECK(st == GDN_OK, "%s indexed case %d: %s", tb->label, case_index, gdn_error_detail());
    if (st == GDN_OK) {
        compare_output("o (indexed)", tb->label, case_index, &ts.t[O], o_ref.data, &o_ref);
        compare_output("states (indexed)", tb->label, case_index, &ts.t[STATES], s_ref.data, &s_ref);
        unsigned char *pool_after = malloc(pool.bytes);
        CHECK(pool_after && test_buffer_download(&pool.device, pool_after) &&
                  memcmp(pool_after, pool.host_bytes, pool.bytes) == 0,
              "%s indexed case %d: the pool changed", tb->label, case_index);
        free(pool_after);
    }

    /* Bitwise: the same call on the state gathered by hand equals the indexed call. */
    if (st == GDN_OK) {
        int64_t idx[GDN_MAX_DIMS] = {0};
        do {
            int64_t from[GDN_MAX_DIMS];
            memcpy(from, idx, sizeof from);
            from[3] = slots[idx[3]];
            memcpy(ts.t[STATE].host_bytes + test_offset_of(&ts.t[STATE].host, idx),
                   pool.host_bytes + test_offset_of(&pool.host, from), sizeof(float));
        } while (test_next_index(&ts.t[STATE].host, idx));
        gdn_gated_delta_net_args a = device_args(&ts);
        ok = test_buffer_upload(&ts.t[STATE].device, ts.t[STATE].host_bytes, ts.t[STATE].bytes) &&
             gdn_gated_delta_net(tb->backend, &p, &a) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
             download_bytes(tb->backend, &a.o, &o_gathered) && download_bytes(tb->backend, &a.states, &s_gathered);
        CHECK(ok, "%s indexed case %d: gathered call: %s", tb->label, case_index, gdn_error_detail());
        if (ok)
            CHECK(same_bits(&a.o, o_indexed, &a.o, o_gathered) &&
                      same_bits(&a.states, s_indexed, &a.states, s_gathered),
                  "%s indexed case %d: the indexed call differs from the call on the gathered state", tb->label,
                  case_index);
    }

    /* A pool that is the snapshots themselves, read through an index, is out of range here
     * (B = 3 slots, index 4); the in-place rule is tested by check_in_place. */
    printf("  %-10s indexed case %d: S=%d B=%d T=%d Hv=%d D=%3d %s\n", tb->label, case_index, S, c->B, c->T, c->Hv,
           c->D, test_layout_names[c->lay]);
    free(o_indexed);
    free(s_indexed);
    free(o_gathered);
    free(s_gathered);
    free(o_ref.data);
    free(s_ref.data);
    test_tensor_free(&pool);
    test_tensor_free(&index);
    op_tensors_free(&ts);
}

/* ---------------------------------------------------------------------------------------------
 * The llama.cpp cache read and rewritten in place through an index: a cache [slot][group][Hv]
 * [Dv][Dk] of B + 1 slots and N groups; the pool is group 1 of every slot, the snapshots are
 * groups 0..N-1 of slots 0..B-1, index[b] = b (each sequence reads its own group 1, which is
 * its snapshot 1, and rewrites its groups). Against the float64 reference on the host copy, bit
 * for bit against the same call on a gathered state, the unread slot untouched; then index[0] =
 * 1 (sequence 0 reads what sequence 1 writes): GDN_ERROR_OVERLAP, nothing written.
 * ------------------------------------------------------------------------------------------- */
static double rel_l2_view(const gdn_tensor *t, const unsigned char *bytes, const double *ref)
{
    int64_t idx[GDN_MAX_DIMS] = {0};
    double diff = 0, norm = 0;
    size_t i = 0;
    do {
        float x;
        memcpy(&x, bytes + test_offset_of(t, idx), sizeof x);
        diff += ((double)x - ref[i]) * ((double)x - ref[i]);
        norm += ref[i] * ref[i];
        i++;
    } while (test_next_index(t, idx));
    return sqrt(diff / (norm > 0 ? norm : 1));
}

static void check_in_place(const test_backend *tb, int case_index, const op_case *c)
{
    const int64_t D = c->D, N = c->T < c->K ? c->T : c->K, B = c->B;
    if (N < 2)
        return; /* group 1 must be a snapshot */
    test_rng rng;
    test_rng_seed(&rng, 700 + (uint64_t)case_index);
    op_tensors ts;
    test_tensor cache, index;
    const int64_t ne_cache[] = {D, D, c->Hv, N, B + 1}, ne_index[] = {B};
    int ok = op_tensors_init(&ts, c, GDN_DTYPE_F32, &rng) &&
             test_tensor_init(&cache, LAYOUT_CONTIGUOUS, GDN_DTYPE_F32, 5, ne_cache) &&
             test_tensor_init(&index, LAYOUT_CONTIGUOUS, GDN_DTYPE_I32, 1, ne_index);
    if (!ok) {
        CHECK(0, "%s in-place case %d: out of memory", tb->label, case_index);
        op_tensors_free(&ts);
        return;
    }
    fill(&cache, &rng, STATE, c->D, 0, 0);
    for (int32_t b = 0; b < B; b++)
        memcpy(index.host_bytes + (size_t)b * sizeof b, &b, sizeof b);
    const size_t group = cache.host.nb[3], slot = cache.host.nb[4];
    /* host views into the cache: pool (group 1 of each slot) and snapshots */
    gdn_tensor pool = cache.host, snaps = cache.host;
    pool.data = cache.host_bytes + group;
    pool.n_dims = 4;
    pool.ne[3] = B + 1, pool.ne[4] = 1;
    pool.nb[3] = slot, pool.nb[4] = slot * (size_t)(B + 1);
    snaps.ne[3] = B, snaps.ne[4] = N;
    snaps.nb[3] = slot, snaps.nb[4] = group;

    gdn_gated_delta_net_params p = case_params(c);
    const int64_t ne_o[] = {D, c->Hv, c->T, B}, ne_s[] = {D, D, c->Hv, B, N};
    gdn_tensor o_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 4, ne_o);
    gdn_tensor s_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 5, ne_s);
    o_ref.data = malloc(gdn_tensor_span(&o_ref));
    s_ref.data = malloc(gdn_tensor_span(&s_ref));
    ok = o_ref.data && s_ref.data;
    gdn_gated_delta_net_args ra = {ts.t[Q].host, ts.t[K_].host, ts.t[V].host, ts.t[G].host, ts.t[BETA].host,
                                   pool, o_ref, s_ref, index.host, {0}};
    ok = ok && gdn_gated_delta_net_reference(&p, &ra) == GDN_OK;
    CHECK(ok, "%s in-place case %d: reference: %s", tb->label, case_index, gdn_error_detail());
    /* the gathered state: group 1 of slot b */
    int64_t idx[GDN_MAX_DIMS] = {0};
    do {
        memcpy(ts.t[STATE].host_bytes + test_offset_of(&ts.t[STATE].host, idx),
               (const char *)pool.data + test_offset_of(&pool, idx),
               sizeof(float));
    } while (test_next_index(&ts.t[STATE].host, idx));
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    ok = ok && test_tensor_upload(&cache, tb->backend) && test_tensor_upload(&index, tb->backend);
    CHECK(ok, "%s in-place case %d: upload: %s", tb->label, case_index, gdn_error_detail());

    gdn_gated_delta_net_args a = device_args(&ts);
    a.state = pool;
    a.state.data = (char *)test_buffer_data(&cache.device) + group;
    a.states = snaps;
    a.states.data = test_buffer_data(&cache.device);
    a.state_index = test_device_view(&index);
    unsigned char *after = malloc(cache.bytes), *o_after = malloc(ts.t[O].bytes);
    ok = ok && after && o_after;

    /* Sequence 0 reads sequence 1's group 1, which sequence 1 writes: rejected, nothing written. */
    const int32_t crossed[2] = {1, 1};
    if (ok) {
        ok = test_buffer_upload(&index.device, crossed, sizeof crossed);
        const gdn_status st = gdn_gated_delta_net(tb->backend, &p, &a);
        CHECK(st == GDN_ERROR_OVERLAP && strstr(gdn_error_detail(), "state_index[0]=1") != NULL &&
                  strstr(gdn_error_detail(), "states[1][1]") != NULL,
              "%s in-place case %d: crossed index gave %d (%s), expected an overlap naming state_index[0]=1 and "
              "states[1][1]", tb->label, case_index, (int)st, gdn_error_detail());
        gdn_backend_synchronize(tb->backend);
        CHECK(test_buffer_download(&cache.device, after) && memcmp(after, cache.host_bytes, cache.bytes) == 0 &&
                  test_buffer_download(&ts.t[O].device, o_after) &&
                  memcmp(o_after, ts.t[O].host_bytes, ts.t[O].bytes) == 0,
              "%s in-place case %d: the rejected call wrote an output", tb->label, case_index);
        ok = ok && test_buffer_upload(&index.device, index.host_bytes, index.bytes);
    }

    /* The same inputs on the gathered state (separate outputs), then in place. */
    unsigned char *o_g = NULL, *s_g = NULL, *o_i = NULL, *s_i = NULL;
    gdn_gated_delta_net_args ga = device_args(&ts);
    ok = ok && gdn_gated_delta_net(tb->backend, &p, &ga) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
         download_bytes(tb->backend, &ga.o, &o_g) && download_bytes(tb->backend, &ga.states, &s_g);
    CHECK(ok, "%s in-place case %d: gathered call: %s", tb->label, case_index, gdn_error_detail());
    gdn_status st = ok ? gdn_gated_delta_net(tb->backend, &p, &a) : GDN_ERROR_BACKEND;
    CHECK(st == GDN_OK, "%s in-place case %d: %s", tb->label, case_index, gdn_error_detail());
    ok = ok && st == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
         download_bytes(tb->backend, &a.o, &o_i) &&
         download_bytes(tb->backend, &a.states, &s_i);
    if (ok) {
        CHECK(same_bits(&ga.o, o_g, &a.o, o_i) && same_bits(&ga.states, s_g, &a.states, s_i),
              "%s in-place case %d: differs from the call on the gathered state", tb->label, case_index);
        const double e_o = rel_l2_view(&a.o, o_i, o_ref.data), e_s = rel_l2_view(&a.states, s_i, s_ref.data);
        CHECK(e_o < TOL_REL_L2 && e_s < TOL_REL_L2, "%s in-place case %d: against the reference: o %.3g, states %.3g",
              tb->label, case_index, e_o, e_s);
        /* slot B is neither read nor written; the guards hold */
        CHECK(test_buffer_download(&cache.device, after) &&
                  memcmp(after + (size_t)B * slot, cache.host_bytes + (size_t)B * slot, slot) == 0,
              "%s in-place case %d: the unread slot or a guard changed", tb->label, case_index);
    }
    printf("  %-10s in-place case %d: B=%d T=%d Hv=%d D=%3d N=%d\n", tb->label, case_index, c->B, c->T, c->Hv, c->D,
           (int)N);
    free(after), free(o_after), free(o_g), free(s_g), free(o_i), free(s_i);
    free(o_ref.data);
    free(s_ref.data);
    test_tensor_free(&cache);
    test_tensor_free(&index);
    op_tensors_free(&ts);
}

/* ---------------------------------------------------------------------------------------------
 * Any set of cache slots updated in place (vLLM's state indices): a cache [S][N][Hv][Dv][Dk] of
 * S = 2B + 1 slots; sequence b reads group 0 of slot r[b] = 2(B-1-b) + 1 (odd slots, in reverse
 * order) and writes its snapshots to the groups of the same slot through states_index. Against
 * the float64 reference, bit for bit against the call on the gathered state, the even slots
 * untouched; then three bad snapshot indices, each refused with nothing written: a value past
 * the pool, two sequences on one slot, and a sequence writing the slot another reads.
 * ------------------------------------------------------------------------------------------- */
static void check_write_indexed(const test_backend *tb, int case_index, const op_case *c, int chunk)
{
    /* The chunked form against the float64 recurrence: its tolerance (test_chunk.c). */
    const double tol = chunk > 0 ? 2e-5 : TOL_REL_L2;
    const int64_t D = c->D, N = c->T < c->K ? c->T : c->K, B = c->B, S = 2 * B + 1;
    test_rng rng;
    test_rng_seed(&rng, 900 + (uint64_t)case_index);
    op_tensors ts;
    test_tensor cache, index;
    const int64_t ne_cache[] = {D, D, c->Hv, N, S}, ne_index[] = {B};
    int ok = op_tensors_init(&ts, c, GDN_DTYPE_F32, &rng) &&
             test_tensor_init(&cache, LAYOUT_CONTIGUOUS, GDN_DTYPE_F32, 5, ne_cache) &&
             test_tensor_init(&index, LAYOUT_CONTIGUOUS, GDN_DTYPE_I32, 1, ne_index);
    if (!ok) {
        CHECK(0, "%s write-indexed case %d: out of memory", tb->label, case_index);
        op_tensors_free(&ts);
        return;
    }
    fill(&cache, &rng, STATE, c->D, 0, 0);
    int32_t slots[64];
    for (int64_t b = 0; b < B && b < 64; b++)
        slots[b] = (int32_t)(2 * (B - 1 - b) + 1);
    memcpy(index.host_bytes, slots, (size_t)B * sizeof slots[0]);
    const size_t group = cache.host.nb[3], slot = cache.host.nb[4];
    gdn_tensor pool = cache.host, snaps = cache.host; /* group 0 of every slot; groups as [N][S] */
    pool.n_dims = 4;
    pool.ne[3] = S, pool.ne[4] = 1, pool.nb[3] = slot, pool.nb[4] = slot * (size_t)S;
    snaps.ne[3] = S, snaps.ne[4] = N, snaps.nb[3] = slot, snaps.nb[4] = group;

    gdn_gated_delta_net_params p = case_params(c);
    p.chunk = chunk;
    const int64_t ne_o[] = {D, c->Hv, c->T, B}, ne_s[] = {D, D, c->Hv, S, N};
    gdn_tensor o_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 4, ne_o);
    gdn_tensor s_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 5, ne_s);
    o_ref.data = calloc(1, gdn_tensor_span(&o_ref));
    s_ref.data = calloc(1, gdn_tensor_span(&s_ref));
    ok = o_ref.data && s_ref.data;
    gdn_gated_delta_net_args ra = {ts.t[Q].host, ts.t[K_].host, ts.t[V].host, ts.t[G].host, ts.t[BETA].host,
                                   pool, o_ref, s_ref, index.host, index.host};
    ok = ok && gdn_gated_delta_net_reference(&p, &ra) == GDN_OK;
    CHECK(ok, "%s write-indexed case %d: reference: %s", tb->label, case_index, gdn_error_detail());
    int64_t idx[GDN_MAX_DIMS] = {0}; /* the gathered state: group 0 of slot r[b] */
    do {
        int64_t from[GDN_MAX_DIMS] = {idx[0], idx[1], idx[2], slots[idx[3]], 0, 0};
        memcpy(ts.t[STATE].host_bytes + test_offset_of(&ts.t[STATE].host, idx),
               (const char *)pool.data + test_offset_of(&pool, from), sizeof(float));
    } while (test_next_index(&ts.t[STATE].host, idx));
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    ok = ok && test_tensor_upload(&cache, tb->backend) && test_tensor_upload(&index, tb->backend);
    gdn_gated_delta_net_args a = device_args(&ts);
    a.state = pool, a.states = snaps;
    a.state.data = a.states.data = test_buffer_data(&cache.device);
    a.state_index = a.states_index = test_device_view(&index);
    unsigned char *after = malloc(cache.bytes), *o_after = malloc(ts.t[O].bytes);
    ok = ok && after && o_after;

    /* Bad snapshot indices (B >= 2): each refused, nothing written. The third swaps the slots
     * sequences 0 and 1 write, so each writes the slot the other reads. The fourth (B >= 20)
     * gives two pairs of sequences one slot each, (17, 9) and (19, 3): the first sequence of the
     * two, 17, must be named, whichever pair a check finds first. */
    const struct {
        int at;
        int32_t value;
        int at2;
        int32_t value2;
        gdn_status want;
        const char *says;
    } bad[4] = {{0, (int32_t)S, 0, (int32_t)S, GDN_ERROR_INVALID_ARGUMENT, "states_index[0]="},
                {1, slots[0], 1, slots[0], GDN_ERROR_INVALID_ARGUMENT, "states_index[1]="},
                {0, slots[1 % B], 1, slots[0], GDN_ERROR_OVERLAP, "written by sequence 1"},
                {17, slots[9 % B], 19 % B, slots[3], GDN_ERROR_INVALID_ARGUMENT, "states_index[17]="}};
    for (int m = 0; ok && B > 1 && m < (B >= 20 ? 4 : 3); m++) {
        test_tensor wrong;
        ok = test_tensor_init(&wrong, LAYOUT_CONTIGUOUS, GDN_DTYPE_I32, 1, ne_index);
        if (!ok)
            break;
        memcpy(wrong.host_bytes, slots, (size_t)B * sizeof slots[0]);
        memcpy(wrong.host_bytes + (size_t)bad[m].at * sizeof slots[0], &bad[m].value, sizeof bad[m].value);
        memcpy(wrong.host_bytes + (size_t)bad[m].at2 * sizeof slots[0], &bad[m].value2, sizeof bad[m].value2);
        ok = test_tensor_upload(&wrong, tb->backend);
        gdn_gated_delta_net_args w = a;
        w.states_index = test_device_view(&wrong);
        const gdn_status st = ok ? gdn_gated_delta_net(tb->backend, &p, &w) : GDN_ERROR_BACKEND;
        CHECK(st == bad[m].want && strstr(gdn_error_detail(), bad[m].says) != NULL,
              "%s write-indexed case %d: bad states_index %d gave %d (%s), expected %d naming '%s'", tb->label,
              case_index, m, (int)st, gdn_error_detail(), (int)bad[m].want, bad[m].says);
        gdn_backend_synchronize(tb->backend);
        CHECK(test_buffer_download(&cache.device, after) && memcmp(after, cache.host_bytes, cache.bytes) == 0 &&
                  test_buffer_download(&ts.t[O].device, o_after) &&
                  memcmp(o_after, ts.t[O].host_bytes, ts.t[O].bytes) == 0,
              "%s write-indexed case %d: the rejected call %d wrote an output", tb->label, case_index, m);
        test_tensor_free(&wrong);
    }

    /* The call on the gathered state (its own outputs), then the cache in place. */
    unsigned char *o_g = NULL, *s_g = NULL, *o_i = NULL;
    gdn_gated_delta_net_args ga = device_args(&ts);
    ok = ok && gdn_gated_delta_net(tb->backend, &p, &ga) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
         download_bytes(tb->backend, &ga.o, &o_g) && download_bytes(tb->backend, &ga.states, &s_g);
    gdn_status st = ok ? gdn_gated_delta_net(tb->backend, &p, &a) : GDN_ERROR_BACKEND;
    CHECK(st == GDN_OK, "%s write-indexed case %d: %s", tb->label, case_index, gdn_error_detail());
    ok = ok && st == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
         download_bytes(tb->backend, &a.o, &o_i) && test_buffer_download(&cache.device, after);
    if (ok) {
        CHECK(same_bits(&ga.o, o_g, &a.o, o_i), "%s write-indexed case %d: o differs from the gathered call",
              tb->label, case_index);
        double diff = 0, norm = 0;
        int same = 1, untouched = 1;
        for (int64_t sl = 0; sl < S; sl++) {
            const unsigned char *now = after + test_offset_of(&cache.host, (int64_t[GDN_MAX_DIMS]){0, 0, 0, 0, sl, 0});
            const unsigned char *was = cache.host_bytes + (now - after);
            int64_t b = -1;
            for (int64_t j = 0; j < B; j++)
                b = slots[j] == sl ? j : b;
            if (b < 0) { /* an even slot: neither read nor written */
                untouched = untouched && memcmp(now, was, slot) == 0;
                continue;
            }
            for (int64_t sn = 0; sn < N; sn++) /* snapshot sn of b: the gathered call's states[sn][b] */
                for (int64_t h = 0; h < c->Hv; h++)
                    for (int64_t j = 0; j < D; j++)
                        for (int64_t i = 0; i < D; i++) {
                            const int64_t at_cache[GDN_MAX_DIMS] = {i, j, h, sn, sl, 0};
                            const int64_t at_g[GDN_MAX_DIMS] = {i, j, h, b, sn, 0};
                            float x, y;
                            memcpy(&x, after + test_offset_of(&cache.host, at_cache), sizeof x);
                            memcpy(&y, s_g + test_offset_of(&ga.states, at_g), sizeof y);
                            same = same && memcmp(&x, &y, sizeof x) == 0;
                            const int64_t at_ref = (((sn * S + sl) * c->Hv + h) * D + j) * D + i;
                            const double r = ((const double *)s_ref.data)[at_ref];
                            diff += (x - r) * (x - r), norm += r * r;
                        }
        }
        CHECK(same, "%s write-indexed case %d: the snapshots differ from the gathered call's", tb->label, case_index);
        CHECK(sqrt(diff / (norm > 0 ? norm : 1)) < tol && rel_l2_view(&a.o, o_i, o_ref.data) < tol,
              "%s write-indexed case %d: against the reference", tb->label, case_index);
        CHECK(untouched, "%s write-indexed case %d: a slot no sequence owns changed", tb->label, case_index);
    }
    printf("  %-10s write-indexed case %d: B=%d T=%d Hv=%d D=%3d N=%d over %d slots%s\n", tb->label, case_index,
           c->B, c->T, c->Hv, c->D, (int)N, (int)S, chunk > 0 ? " (chunked)" : "");
    free(after), free(o_after), free(o_g), free(s_g), free(o_i);
    free(o_ref.data);
    free(s_ref.data);
    test_tensor_free(&cache);
    test_tensor_free(&index);
    op_tensors_free(&ts);
}

int main(void)
{
    test_backend backends[8];
    int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        for (size_t i = 0; i < sizeof indexed_cases / sizeof indexed_cases[0]; i++)
            for (int ready = 0; ready < 2; ready++) /* the case number says which: 10 + i with the hint */
                check_indexed(&backends[b], (int)i + 10 * ready, &indexed_cases[i], ready);
        for (size_t i = 0; i < 2; i++)
            check_in_place(&backends[b], (int)i, &indexed_cases[i]);
        for (size_t i = 0; i < sizeof indexed_cases / sizeof indexed_cases[0]; i++)
            check_write_indexed(&backends[b], (int)i, &indexed_cases[i], -1);
        /* The chunked form (prefill into the cache): tokens in chunks, then the last N token by
         * token, both through the index, in place. */
        for (size_t i = 0; i < sizeof chunked_cases / sizeof chunked_cases[0]; i++)
            check_write_indexed(&backends[b], 20 + (int)i, &chunked_cases[i], i == 0 ? 32 : 64);
        for (size_t i = 0; i < sizeof large_write_cases / sizeof large_write_cases[0]; i++)
            check_write_indexed(&backends[b], 30 + (int)i, &large_write_cases[i], -1);
    }
    test_backends_close(backends, n);
    return test_finish("test_gdn_slots");
}
