/* test_counters.c: the backend counters (gdn_backend_get_counters) on every backend present: one
 * GDN call counts one op call and exactly the bytes of its views (elements x dtype size, not
 * spans: the snapshots go to a strided view with gaps), with and without a state index; a failed
 * call counts nothing; a GDN block step counts one op call per graph node, the graph's copies
 * and gathers, and exact cache bytes, with the passes off and on (on: fewer copies and cache
 * bytes); a replayed recording counts nothing. */
#include "harness.h"
#include "model/gdn_block.h"

#include <stdlib.h>
#include <string.h>

enum { B = 2, T = 3, K = 2, N = 2, HK = 1, HV = 2, D = 16, S = 4 };

static int is_cuda(const test_backend *tb)
{
    return gdn_backend_kind_of(tb->backend) == GDN_BACKEND_CUDA;
}

/* Whether an indexed GDN call of this test's few sequences launches a check kernel of its own:
 * CUDA checks up to 16 sequences inside the GDN kernel unless GDN_CUDA_INDEX_CHECK=kernel. */
static int gdn_check_launch(const test_backend *tb)
{
    const char *mode = getenv("GDN_CUDA_INDEX_CHECK");
    return is_cuda(tb) && mode != NULL && strcmp(mode, "kernel") == 0;
}

/* A backend buffer of n floats from `rng` in [lo, hi). */
static int filled(test_buffer *buf, gdn_backend *backend, size_t n, test_rng *rng, double lo, double hi)
{
    float *h = malloc(n * sizeof *h);
    for (size_t i = 0; h && i < n; i++)
        h[i] = (float)test_rng_uniform(rng, lo, hi);
    int ok = h && test_buffer_alloc(buf, backend, n * sizeof *h) && test_buffer_upload(buf, h, n * sizeof *h);
    free(h);
    return ok;
}

static void check_gdn_call(const test_backend *tb, int indexed)
{
    gdn_backend *be = tb->backend;
    test_rng rng;
    test_rng_seed(&rng, 5 + (uint64_t)indexed);
    const size_t n_qk = (size_t)D * HK * T * B, n_v = (size_t)D * HV * T * B, n_gate = (size_t)HV * T * B;
    const size_t n_state = (size_t)D * D * HV, slots = indexed ? S : B;
    test_buffer q, k, v, g, beta, o, state, cache, index;
    test_buffer *all[] = {&q, &k, &v, &g, &beta, &o, &state, &cache, &index};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        memset(all[i], 0, sizeof *all[i]);
    /* The cache holds S slots of K groups; the snapshots go to slots 1 and 3 (slot stride 2). */
    int ok = filled(&q, be, n_qk, &rng, -0.2, 0.2) && filled(&k, be, n_qk, &rng, -0.2, 0.2) &&
             filled(&v, be, n_v, &rng, -1, 1) && filled(&g, be, n_gate, &rng, -1, -0.1) &&
             filled(&beta, be, n_gate, &rng, 0, 1) && filled(&o, be, n_v, &rng, 0, 1) &&
             filled(&state, be, n_state * slots, &rng, -0.1, 0.1) &&
             filled(&cache, be, n_state * K * S, &rng, 0, 1);
    const int32_t idx[B] = {3, 0};
    if (ok && indexed)
        ok = test_buffer_alloc(&index, be, sizeof idx) && test_buffer_upload(&index, idx, sizeof idx);
    CHECK(ok, "%s: buffers: %s", tb->label, gdn_error_detail());
    if (ok) {
        const int64_t ne_qk[4] = {D, HK, T, B}, ne_v[4] = {D, HV, T, B}, ne_gate[3] = {HV, T, B};
        const int64_t ne_state[4] = {D, D, HV, (int64_t)slots}, ne_states[5] = {D, D, HV, B, N}, ne_i[1] = {B};
        gdn_gated_delta_net_args a;
        memset(&a, 0, sizeof a);
        a.q = gdn_tensor_contiguous(test_buffer_data(&q), GDN_DTYPE_F32, 4, ne_qk);
        a.k = gdn_tensor_contiguous(test_buffer_data(&k), GDN_DTYPE_F32, 4, ne_qk);
        a.v = gdn_tensor_contiguous(test_buffer_data(&v), GDN_DTYPE_F32, 4, ne_v);
        a.g = gdn_tensor_contiguous(test_buffer_data(&g), GDN_DTYPE_F32, 3, ne_gate);
        a.beta = gdn_tensor_contiguous(test_buffer_data(&beta), GDN_DTYPE_F32, 3, ne_gate);
        a.o = gdn_tensor_contiguous(test_buffer_data(&o), GDN_DTYPE_F32, 4, ne_v);
        a.state = gdn_tensor_contiguous(test_buffer_data(&state), GDN_DTYPE_F32, 4, ne_state);
        const size_t group = n_state * 4, slot = group * K;
        a.states = gdn_tensor_contiguous((char *)test_buffer_data(&cache) + slot, GDN_DTYPE_F32, 5, ne_states);
        a.states.nb[3] = 2 * slot; /* slots 1 and 3 */
        a.states.nb[4] = group;
        if (indexed)
            a.state_index = gdn_tensor_contiguous(test_buffer_data(&index), GDN_DTYPE_I32, 1, ne_i);
        CHECK(gdn_tensor_span(&a.states) > (size_t)gdn_tensor_count(&a.states) * 4,
              "the snapshot view should have gaps (span larger than its bytes)");
        gdn_gated_delta_net_params p = gdn_gated_delta_net_params_default();
        p.n_snapshots = K;

        gdn_backend_counters c;
        gdn_backend_reset_counters(be);
        gdn_status st = gdn_gated_delta_net(be, &p, &a);
        CHECK(st == GDN_OK && gdn_backend_synchronize(be) == GDN_OK, "%s: gdn call: %s", tb->label,
              gdn_error_detail());
        gdn_backend_get_counters(be, &c);
        const uint64_t state_read = (uint64_t)n_state * B * 4, states_written = (uint64_t)n_state * B * N * 4;
        const uint64_t want_bytes = 4 * (2 * n_qk + 2 * n_v + 2 * n_gate) + state_read + states_written +
                                    (indexed ? 4 * B : 0);
        const uint64_t want_launches = 1 + (indexed && gdn_check_launch(tb));
        CHECK(c.op_calls == 1 && c.gdn_calls == 1 && c.copies == 0 && c.gathers == 0 && c.launches == want_launches,
              "%s: %s gdn call: op_calls %llu gdn_calls %llu copies %llu gathers %llu launches %llu (expected 1 1 0 "
              "0 %llu)", tb->label, indexed ? "indexed" : "plain", (unsigned long long)c.op_calls,
              (unsigned long long)c.gdn_calls, (unsigned long long)c.copies, (unsigned long long)c.gathers,
              (unsigned long long)c.launches, (unsigned long long)want_launches);
        CHECK(c.bytes == want_bytes && c.cache_bytes == state_read + states_written,
              "%s: %s gdn call: bytes %llu cache_bytes %llu, expected %llu and %llu", tb->label,
              indexed ? "indexed" : "plain", (unsigned long long)c.bytes, (unsigned long long)c.cache_bytes,
              (unsigned long long)want_bytes, (unsigned long long)(state_read + states_written));

        /* A rejected call counts nothing; reset zeroes. */
        gdn_gated_delta_net_args bad = a;
        bad.q.ne[0] = 24;
        CHECK(gdn_gated_delta_net(be, &p, &bad) != GDN_OK, "%s: a bad call was accepted", tb->label);
        gdn_backend_counters after;
        gdn_backend_get_counters(be, &after);
        CHECK(memcmp(&after, &c, sizeof c) == 0, "%s: a rejected call changed the counters", tb->label);
        gdn_backend_reset_counters(be);
        gdn_backend_get_counters(be, &after);
        CHECK(after.op_calls == 0 && after.bytes == 0 && after.cache_bytes == 0 && after.launches == 0,
              "%s: reset left counts", tb->label);
    }
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        test_buffer_free(all[i]);
}

/* hidden 64, Hk 2, Hv 4, D 16, Kconv 4, K 3: test_block.c's small block. */
static void check_block(const test_backend *tb, int64_t Tb)
{
    gdn_backend *be = tb->backend;
    gdn_block_config c = gdn_block_config_default();
    c.hidden = 64, c.n_k_heads = 2, c.n_v_heads = 4, c.head_dim = 16, c.n_snapshots = 3;
    c.weight_dtype = GDN_DTYPE_F32;
    const int64_t Bb = 3, Nb = Tb < c.n_snapshots ? Tb : c.n_snapshots, C = gdn_block_conv_dim(&c);
    gdn_block_weights w;
    gdn_block_cache cache[2];
    memset(cache, 0, sizeof cache);
    gdn_graph *graphs[2] = {NULL, NULL};
    gdn_backend_counters counted[2];
    gdn_graph_stats stats[2];
    test_buffer x, index;
    memset(&x, 0, sizeof x), memset(&index, 0, sizeof index);
    test_rng rng;
    test_rng_seed(&rng, 9);
    const int32_t slots[3] = {1, 2, 3}; /* sequence b reads slot 1 + b, the slot it writes (llama.cpp's step) */
    int ok = gdn_block_weights_init(&w, be, &c, 3) == GDN_OK && filled(&x, be, (size_t)(Bb * Tb * c.hidden), &rng, -1, 1) &&
             test_buffer_alloc(&index, be, sizeof slots) && test_buffer_upload(&index, slots, sizeof slots);
    const int64_t ne_x[3] = {c.hidden, Tb, Bb}, ne_i[1] = {Bb};
    const gdn_tensor xv = gdn_tensor_contiguous(test_buffer_data(&x), GDN_DTYPE_F32, 3, ne_x);
    const gdn_tensor iv = gdn_tensor_contiguous(test_buffer_data(&index), GDN_DTYPE_I32, 1, ne_i);
    for (int pass = 0; ok && pass < 2; pass++) {
        gdn_tensor_id xi, ii, out;
        ok = gdn_block_cache_init(&cache[pass], be, &c, 4) == GDN_OK && gdn_block_cache_randomize(&cache[pass], 4) == GDN_OK &&
             gdn_graph_init(&graphs[pass]) == GDN_OK &&
             gdn_graph_leaf(graphs[pass], "x", &xv, GDN_GRAPH_INPUT, &xi) == GDN_OK &&
             /* slots {1,2,3} with first_slot 1: each sequence reads the slot only it writes */
             gdn_graph_leaf(graphs[pass], "slot_index", &iv, GDN_GRAPH_INPUT | GDN_GRAPH_OWN_SLOT_INDEX, &ii) == GDN_OK &&
             gdn_block_build(graphs[pass], &c, &w, &cache[pass], xi, Bb, Tb, ii, 1, &out) == GDN_OK &&
             (!pass || (gdn_graph_pass_copy_elision(graphs[pass], NULL, NULL) == GDN_OK &&
                        gdn_graph_pass_gather_elision(graphs[pass], NULL, NULL) == GDN_OK));
        gdn_backend_reset_counters(be);
        ok = ok && gdn_graph_compute(graphs[pass], be) == GDN_OK && gdn_backend_synchronize(be) == GDN_OK;
        gdn_backend_get_counters(be, &counted[pass]);
        if (ok)
            gdn_graph_get_stats(graphs[pass], &stats[pass]);
    }
    CHECK(ok, "%s: block T %lld: %s", tb->label, (long long)Tb, gdn_error_detail());
    if (ok) {
        const uint64_t state = (uint64_t)(c.n_v_heads * c.head_dim * c.head_dim) * 4 * Bb;
        const uint64_t window = (uint64_t)((c.conv_kernel - 1) * C) * 4 * Bb, idx = 4 * Bb;
        /* Passes off: state gather (rows read, index, written), conv gather, conv-window copy,
         * the GDN op's state read and snapshots, the snapshot copy (read and written). */
        const uint64_t off = (2 * state + idx) + (2 * window + idx) + 2 * window + (state + Nb * state) +
                             2 * Nb * state;
        for (int pass = 0; pass < 2; pass++) {
            const gdn_backend_counters *k = &counted[pass];
            /* CUDA: a check kernel per gather, and per GDN call reading through an index (passes on)
             * where that check is not done inside the kernel */
            const uint64_t want_launches = (uint64_t)stats[pass].n_nodes +
                                           (is_cuda(tb) ? (uint64_t)stats[pass].n_gathers : 0) +
                                           (uint64_t)(pass && gdn_check_launch(tb));
            CHECK(k->op_calls == (uint64_t)stats[pass].n_nodes && k->copies == (uint64_t)stats[pass].n_copies &&
                  k->gathers == (uint64_t)stats[pass].n_gathers && k->gdn_calls == 1 && k->launches == want_launches,
                  "%s: block T %lld passes %s: counted %llu calls, %llu copies, %llu gathers, %llu launches; the graph "
                  "has %d nodes, %d copies, %d gathers", tb->label, (long long)Tb, pass ? "on" : "off",
                  (unsigned long long)k->op_calls, (unsigned long long)k->copies, (unsigned long long)k->gathers,
                  (unsigned long long)k->launches, (int)stats[pass].n_nodes, (int)stats[pass].n_copies,
                  (int)stats[pass].n_gathers);
        }
        printf("%s: block T %lld: passes off %llu calls, %llu copies, %llu gathers, %llu cache bytes; on %llu, %llu, "
               "%llu, %llu\n", tb->label, (long long)Tb, (unsigned long long)counted[0].op_calls,
               (unsigned long long)counted[0].copies, (unsigned long long)counted[0].gathers,
               (unsigned long long)counted[0].cache_bytes, (unsigned long long)counted[1].op_calls,
               (unsigned long long)counted[1].copies, (unsigned long long)counted[1].gathers,
               (unsigned long long)counted[1].cache_bytes);
        CHECK(counted[0].copies == 2 && counted[0].gathers == 2 && counted[0].cache_bytes == off,
              "%s: block T %lld passes off: %llu copies, %llu gathers, %llu cache bytes (expected 2, 2, %llu)",
              tb->label, (long long)Tb, (unsigned long long)counted[0].copies, (unsigned long long)counted[0].gathers,
              (unsigned long long)counted[0].cache_bytes, (unsigned long long)off);
        /* Passes on: no copy and no gather is left. The GDN op reads each sequence's state from its
         * slot and writes its snapshots into the groups; the concat reads each window from its slot
         * and tees the updated window back into it. */
        const uint64_t on = (state + Nb * state) + (window + window);
        CHECK(counted[1].copies == 0 && counted[1].gathers == 0 &&
              counted[1].cache_bytes == on && counted[1].bytes < counted[0].bytes,
              "%s: block T %lld passes on: %llu copies, %llu gathers, %llu cache bytes (expected %llu, %llu, %llu)",
              tb->label, (long long)Tb, (unsigned long long)counted[1].copies, (unsigned long long)counted[1].gathers,
              (unsigned long long)counted[1].cache_bytes, 0ull, 0ull, (unsigned long long)on);

        /* A recording is counted once, when recorded; its replays count nothing. */
        if (gdn_backend_record_begin(be) == GDN_OK) {
            gdn_recording *rec = NULL;
            gdn_backend_reset_counters(be);
            const int queued = gdn_graph_compute(graphs[1], be) == GDN_OK;
            const int ended = gdn_backend_record_end(be, &rec) == GDN_OK;
            gdn_backend_counters recorded, replayed;
            gdn_backend_get_counters(be, &recorded);
            CHECK(queued && ended && memcmp(&recorded, &counted[1], sizeof recorded) == 0,
                  "%s: recording counted %llu calls, expected %llu", tb->label, (unsigned long long)recorded.op_calls,
                  (unsigned long long)counted[1].op_calls);
            gdn_backend_reset_counters(be);
            CHECK(rec && gdn_recording_replay(rec) == GDN_OK && gdn_backend_synchronize(be) == GDN_OK,
                  "%s: replay: %s", tb->label, gdn_error_detail());
            gdn_backend_get_counters(be, &replayed);
            CHECK(replayed.op_calls == 0 && replayed.bytes == 0, "%s: a replay counted %llu calls", tb->label,
                  (unsigned long long)replayed.op_calls);
            gdn_recording_free(rec);
        }
    }
    gdn_graph_free(graphs[0]), gdn_graph_free(graphs[1]);
    gdn_block_cache_free(&cache[0]), gdn_block_cache_free(&cache[1]);
    gdn_block_weights_free(&w);
    test_buffer_free(&x), test_buffer_free(&index);
}

int main(void)
{
    gdn_backend_counters z;
    memset(&z, 0xAB, sizeof z);
    gdn_backend_get_counters(NULL, &z);
    CHECK(z.op_calls == 0 && z.bytes == 0, "counters of a NULL backend are not zero");
    gdn_backend_reset_counters(NULL);

    test_backend backends[8];
    const int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        check_gdn_call(&backends[b], 0);
        check_gdn_call(&backends[b], 1);
        check_block(&backends[b], 1);
        check_block(&backends[b], 3);
    }
    test_backends_close(backends, n);
    return test_finish("test_counters");
}
