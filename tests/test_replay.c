/* test_replay.c: the replay form of the Gated DeltaNet op (gdn_gated_delta_net_replay) on every
 * backend present: against the float64 reference from a table of cases (odd sizes, rings of
 * length T, T+2 and 2T+1 with wrapping folds, committed and uncommitted, non-contiguous layouts,
 * guard regions); then the exactness contract: a simulated speculative-decoding loop whose every
 * accepted output and committed state equals, bit for bit, the recurrent op run one token per
 * call on the same backend, with an F32 and with a BF16 pool; then rejected input (nothing
 * written). */
#include "harness.h"
#include "core/gdn_op.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct replay_case {
    int B, T, Hk, Hv, D, L;
    gdn_broadcast broadcast;
    int l2norm;
    test_layout lay;
    int cuda_only; /* a case for a CUDA kernel shape: the CPU backends gain nothing from it */
} replay_case;

/* B = 3 throughout; L in {T, T+2, 2T+1}: the fold can take at most L - T tokens. */
static const replay_case cases[] = {
    /* B  T Hk Hv   D  L  broadcast                  l2 layout */
    {3, 1, 1, 3, 16, 1, GDN_BROADCAST_TILED, 0, LAYOUT_CONTIGUOUS, 0},        /* L = T: nothing to fold */
    {3, 1, 3, 6, 32, 3, GDN_BROADCAST_INTERLEAVED, 1, LAYOUT_CONTIGUOUS, 0},  /* L = T+2 = 2T+1 */
    {3, 1, 2, 6, 16, 3, GDN_BROADCAST_TILED, 1, LAYOUT_PADDED_ODD, 0},
    {3, 3, 1, 3, 32, 3, GDN_BROADCAST_TILED, 0, LAYOUT_CONTIGUOUS, 0},        /* L = T */
    {3, 3, 2, 6, 16, 5, GDN_BROADCAST_INTERLEAVED, 1, LAYOUT_CONTIGUOUS, 0},  /* L = T+2 */
    {3, 3, 3, 6, 32, 7, GDN_BROADCAST_TILED, 1, LAYOUT_PERMUTED, 0},          /* L = 2T+1 */
    {3, 3, 3, 3, 16, 7, GDN_BROADCAST_INTERLEAVED, 0, LAYOUT_PADDED, 0},
    {3, 3, 2, 6, 32, 5, GDN_BROADCAST_TILED, 1, LAYOUT_SPACED_INNER, 0},
    {3, 3, 2, 4, 128, 7, GDN_BROADCAST_TILED, 1, LAYOUT_CONTIGUOUS, 0},       /* the models' D */
    /* 3 x 48 and 3 x 80 heads of D = 128: the CUDA kernel's wide shape (a grid of at least 1024
     * warps, 8 per head), which stages tokens in shared memory; the cases above run its thin
     * shape. 80 heads (480 blocks) take its 4-blocks-per-SM form with 120 to 159 SMs (H100: 132).
     * CUDA only: on the CPU they would repeat the cases above at many times the cost. */
    {3, 4, 16, 48, 128, 9, GDN_BROADCAST_TILED, 0, LAYOUT_CONTIGUOUS, 1},
    {3, 2, 16, 80, 128, 5, GDN_BROADCAST_INTERLEAVED, 1, LAYOUT_CONTIGUOUS, 1},
};

/* Layouts and the tensor buffers behind them: tests/harness.h. */

/* ---------------------------------------------------------------------------------------------
 * The tensors of a call, with realistic ranges
 * ------------------------------------------------------------------------------------------- */
enum { Q, K_, V, G, BETA, POOL, INDEX, RING_K, RING_V, RING_G, FOLD, O, N_TENSORS };
enum { S_SLOTS = 5 };

typedef struct replay_tensors {
    test_tensor t[N_TENSORS];
} replay_tensors;

static void fill(test_tensor *tb, test_rng *rng, int what, int D, int l2norm)
{
    int64_t idx[GDN_MAX_DIMS] = {0};
    do {
        double x;
        switch (what) {
        case G: x = -exp(test_rng_uniform(rng, log(1e-4), log(20.0))); break; /* [-20, -1e-4] */
        case RING_G: x = exp(-exp(test_rng_uniform(rng, log(1e-4), log(20.0)))); break; /* decays of such g */
        case BETA: x = test_rng_uniform(rng, 0.0, 1.0); break;
        case K_: x = test_rng_normal(rng) / (l2norm ? 1.0 : sqrt((double)D)); break; /* |k| ~ 1 */
        case RING_K: x = test_rng_normal(rng) / sqrt((double)D); break; /* a ring factor: |k^| ~ 1 */
        case POOL: x = 0.1 * test_rng_normal(rng); break;
        default: x = test_rng_normal(rng); break;
        }
        unsigned char *at = tb->host_bytes + test_offset_of(&tb->host, idx);
        if (tb->host.dtype == GDN_DTYPE_BF16) { /* a BF16 pool: nearest, ties to even (x is finite) */
            uint32_t bits;
            const float f = (float)x;
            memcpy(&bits, &f, sizeof bits);
            const uint16_t half = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
            memcpy(at, &half, sizeof half);
        } else {
            *(float *)at = (float)x;
        }
    } while (test_next_index(&tb->host, idx));
}

/* One I32 element (i0, i1) of a host view. */
static void set_i32(test_tensor *tb, int64_t i0, int64_t i1, int32_t value)
{
    memcpy(tb->host_bytes + (size_t)i0 * tb->host.nb[0] + (size_t)i1 * tb->host.nb[1], &value, sizeof value);
}

/* Shapes of every tensor for B sequences, T tokens, S slots and rings of L, the pool of dtype
 * `storage` (F32 or BF16); inputs filled. */
static int replay_tensors_init(replay_tensors *ts, const replay_case *c, int S, test_layout lay, gdn_dtype storage,
                               test_rng *rng)
{
    const int64_t D = c->D, B = c->B, T = c->T, L = c->L;
    const int64_t ne_qk[] = {D, c->Hk, T, B}, ne_v[] = {D, c->Hv, T, B}, ne_gate[] = {c->Hv, T, B};
    const int64_t ne_pool[] = {D, D, c->Hv, S}, ne_index[] = {B}, ne_fold[] = {3, B};
    const int64_t ne_rk[] = {D, c->Hk, L, S}, ne_rv[] = {D, c->Hv, L, S}, ne_rg[] = {c->Hv, L, S};
    memset(ts, 0, sizeof *ts);
    int ok = test_tensor_init(&ts->t[Q], lay, GDN_DTYPE_F32, 4, ne_qk) &&
             test_tensor_init(&ts->t[K_], lay, GDN_DTYPE_F32, 4, ne_qk) &&
             test_tensor_init(&ts->t[V], lay, GDN_DTYPE_F32, 4, ne_v) &&
             test_tensor_init(&ts->t[G], lay, GDN_DTYPE_F32, 3, ne_gate) &&
             test_tensor_init(&ts->t[BETA], lay, GDN_DTYPE_F32, 3, ne_gate) &&
             test_tensor_init(&ts->t[POOL], lay, storage, 4, ne_pool) &&
             test_tensor_init(&ts->t[INDEX], lay, GDN_DTYPE_I32, 1, ne_index) &&
             test_tensor_init(&ts->t[RING_K], lay, GDN_DTYPE_F32, 4, ne_rk) &&
             test_tensor_init(&ts->t[RING_V], lay, GDN_DTYPE_F32, 4, ne_rv) &&
             test_tensor_init(&ts->t[RING_G], lay, GDN_DTYPE_F32, 3, ne_rg) &&
             test_tensor_init(&ts->t[FOLD], lay, GDN_DTYPE_I32, 2, ne_fold) &&
             test_tensor_init(&ts->t[O], lay, GDN_DTYPE_F32, 4, ne_v);
    if (!ok)
        return 0;
    for (int i = Q; i <= RING_G; i++) /* ring_v: update factors, any values */
        if (i != INDEX)
            fill(&ts->t[i], rng, i, c->D, c->l2norm);
    return 1;
}

static void replay_tensors_free(replay_tensors *ts)
{
    for (int i = 0; i < N_TENSORS; i++)
        test_tensor_free(&ts->t[i]);
}

/* The call's views: on the backend (device = 1) or the host copies. */
static gdn_gated_delta_net_replay_args replay_args(const replay_tensors *ts, int device)
{
    gdn_tensor v[N_TENSORS];
    for (int i = 0; i < N_TENSORS; i++)
        v[i] = device ? test_device_view(&ts->t[i]) : ts->t[i].host;
    gdn_gated_delta_net_replay_args a = {v[Q], v[K_], v[V], v[G], v[BETA], v[POOL], v[INDEX], v[RING_K],
                                         v[RING_V], v[RING_G], v[FOLD], v[O]};
    return a;
}

static gdn_gated_delta_net_params case_params(const replay_case *c)
{
    gdn_gated_delta_net_params p = gdn_gated_delta_net_params_default();
    p.broadcast = c->broadcast;
    p.l2norm = c->l2norm;
    return p;
}

/* ---------------------------------------------------------------------------------------------
 * Against the float64 reference
 * ------------------------------------------------------------------------------------------- */

/* Tolerances as in test_gdn_op.c: each output is a chain of at most count + T <= 2T+1 updates,
 * each a length-D dot product (error ~ sqrt(D) * 6e-8 relative); 1e-5 relative in the L2 norm
 * leaves a wide margin while catching any indexing or ordering mistake (errors of order 1). */
#define TOL_REL_L2 1e-5
#define TOL_MAX 1e-4

static void compare_output(const char *what, const char *label, int case_index, const test_tensor *tb,
                           const gdn_tensor *ref)
{
    test_compare_output(what, label, case_index, tb, ref, TOL_REL_L2, TOL_MAX);
}

/* An F64 contiguous copy of an F32 host view (the reference's pool). */
static gdn_tensor to_f64(const gdn_tensor *t)
{
    gdn_tensor r = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, t->n_dims, t->ne);
    r.data = malloc(gdn_tensor_span(&r));
    int64_t idx[GDN_MAX_DIMS] = {0};
    do {
        if (r.data == NULL)
            break;
        float x;
        memcpy(&x, (const char *)t->data + test_offset_of(t, idx), sizeof x);
        *(double *)((char *)r.data + test_offset_of(&r, idx)) = (double)x;
    } while (test_next_index(t, idx));
    return r;
}

/* Element (i, head, pos, slot) of the F32 ring view t in `bytes` (its host copy or a download). */
static double ring_element(const gdn_tensor *t, const unsigned char *bytes, int64_t i, int64_t head, int64_t pos,
                           int64_t slot)
{
    const int64_t idx[GDN_MAX_DIMS] = {i, head, pos, slot};
    float x;
    memcpy(&x, bytes + test_offset_of(t, idx), sizeof x);
    return (double)x;
}

/* Every ring entry's update k v^T (ring_k of the value head's q/k head, ring_v of the value head)
 * on the backend against the reference's host rings, with the tolerances of compare_output; and
 * nothing written outside either ring's view. */
static void compare_updates(const char *label, int case_index, const replay_case *c, const test_tensor *rk,
                            const test_tensor *rv)
{
    unsigned char *k_got = test_download_view("ring k", label, case_index, rk);
    unsigned char *v_got = test_download_view("ring v", label, case_index, rv);
    double diff2 = 0, ref2 = 0, max_diff = 0, max_ref = 0;
    for (int64_t slot = 0; k_got && v_got && slot < S_SLOTS; slot++)
        for (int64_t pos = 0; pos < c->L; pos++)
            for (int64_t h = 0; h < c->Hv; h++) {
                const int64_t hk = c->broadcast == GDN_BROADCAST_TILED ? h % c->Hk : h / (c->Hv / c->Hk);
                for (int64_t j = 0; j < c->D; j++)
                    for (int64_t i = 0; i < c->D; i++) {
                        const double r = ring_element(&rk->host, rk->host_bytes, i, hk, pos, slot) *
                                         ring_element(&rv->host, rv->host_bytes, j, h, pos, slot);
                        const double x = ring_element(&rk->host, k_got, i, hk, pos, slot) *
                                         ring_element(&rv->host, v_got, j, h, pos, slot);
                        const double d = fabs(x - r);
                        if (!(d <= max_diff))
                            max_diff = d; /* NaN sticks */
                        diff2 += d * d;
                        ref2 += r * r;
                        max_ref = fabs(r) > max_ref ? fabs(r) : max_ref;
                    }
            }
    const double rel = sqrt(diff2 / (ref2 > 0 ? ref2 : 1)), rel_max = max_diff / (max_ref > 0 ? max_ref : 1);
    CHECK(k_got && v_got && rel < TOL_REL_L2 && rel_max < TOL_MAX,
          "%s case %d ring updates: rel L2 error %.3g, max error %.3g", label, case_index, rel, rel_max);
    free(k_got);
    free(v_got);
}

static void run_case(const test_backend *tb, int case_index, const replay_case *c)
{
    test_rng rng;
    test_rng_seed(&rng, 2000 + (uint64_t)case_index);
    replay_tensors ts;
    int ok = replay_tensors_init(&ts, c, S_SLOTS, c->lay, GDN_DTYPE_F32, &rng);
    /* Slots 4, 0, 2 (1 and 3 untouched). Folds that wrap around the ring: sequence b folds
     * L - T - b tokens (at least 0) from position L - 1 - b; sequence 1 does not commit. */
    const int32_t slots[3] = {4, 0, 2};
    for (int b = 0; ok && b < c->B; b++) {
        const int count = c->L - c->T - b > 0 ? c->L - c->T - b : 0;
        set_i32(&ts.t[INDEX], b, 0, slots[b]);
        set_i32(&ts.t[FOLD], 0, b, (c->L - 1 - b + c->L) % c->L);
        set_i32(&ts.t[FOLD], 1, b, count);
        set_i32(&ts.t[FOLD], 2, b, b != 1);
    }
    /* The reference on host copies: an F64 pool, F32 rings (appended to by the reference). */
    gdn_gated_delta_net_params p = case_params(c);
    const int64_t ne_o[] = {c->D, c->Hv, c->T, c->B};
    gdn_tensor o_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 4, ne_o);
    o_ref.data = malloc(gdn_tensor_span(&o_ref));
    gdn_tensor pool_ref = ok ? to_f64(&ts.t[POOL].host) : o_ref;
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend); /* before the reference appends to the host rings */
    ok = ok && o_ref.data && pool_ref.data;
    gdn_gated_delta_net_replay_args ra = replay_args(&ts, 0);
    ra.state = pool_ref;
    ra.o = o_ref;
    gdn_status st = ok ? gdn_gated_delta_net_replay_reference(&p, &ra, GDN_DTYPE_F32) : GDN_ERROR_OUT_OF_MEMORY;
    CHECK(ok && st == GDN_OK, "%s case %d: setup or reference: %s", tb->label, case_index, gdn_error_detail());

    if (ok && st == GDN_OK) {
        gdn_gated_delta_net_replay_args a = replay_args(&ts, 1);
        st = gdn_gated_delta_net_replay(tb->backend, &p, &a);
        CHECK(st == GDN_OK, "%s case %d: %s", tb->label, case_index, gdn_error_detail());
        CHECK(gdn_backend_synchronize(tb->backend) == GDN_OK, "%s: synchronize: %s", tb->label, gdn_error_detail());
        compare_output("o", tb->label, case_index, &ts.t[O], &o_ref);
        compare_output("state pool", tb->label, case_index, &ts.t[POOL], &pool_ref);
        /* The rings: the decays as outputs, and each token's update as the product of its two
         * factors, which a backend may split differently from the reference (include/gdn.h);
         * positions not appended to keep their bytes on both sides. */
        gdn_tensor decays_ref = to_f64(&ts.t[RING_G].host);
        CHECK(decays_ref.data != NULL, "out of memory");
        if (decays_ref.data != NULL)
            compare_output("ring decays", tb->label, case_index, &ts.t[RING_G], &decays_ref);
        free(decays_ref.data);
        compare_updates(tb->label, case_index, c, &ts.t[RING_K], &ts.t[RING_V]);
    }
    printf("  %-10s case %d: B=%d T=%d Hk=%d Hv=%d D=%3d L=%d %s%s %s\n", tb->label, case_index, c->B, c->T, c->Hk,
           c->Hv, c->D, c->L, c->broadcast == GDN_BROADCAST_TILED ? "tiled" : "interleaved",
           c->l2norm ? " l2norm" : "", test_layout_names[c->lay]);
    free(o_ref.data);
    if (pool_ref.data != o_ref.data)
        free(pool_ref.data);
    replay_tensors_free(&ts);
}

/* ---------------------------------------------------------------------------------------------
 * The exactness contract: a speculative-decoding loop
 *
 * Three sequences (slots 2, 0, 3 of 4) verify T drafted tokens per step with the replay op; a
 * random number a in 1..T of them is accepted. A cache manager on the host keeps, per sequence,
 * `base` (the ring position of the first accepted token not yet committed) and `pending` (how
 * many there are) and builds fold = {base, pending, commit}: commit every step, or (lazy) only
 * when the next step could not fit (pending + 2T > L). Beside it, each sequence is decoded one
 * token per call by gdn_gated_delta_net (T = 1, B = 1, in place: state == states[0]) on the
 * accepted tokens. Every accepted token's output and every committed state must be equal byte
 * for byte; a slot not committed to must keep its last committed bytes. With a BF16 pool (and
 * BF16 sequential states) this holds only if every token, folded ones included, is rounded.
 * ------------------------------------------------------------------------------------------- */
typedef struct spec_case {
    int T, Hk, Hv, D, L;
    int lazy; /* 1: commit only when the ring would overflow */
    gdn_broadcast broadcast;
    int l2norm;
    int cuda_only; /* as in replay_case */
} spec_case;

static const spec_case spec_cases[] = {
    {3, 2, 6, 32, 6, 0, GDN_BROADCAST_TILED, 1, 0},          /* L = 2T: the least that every step fits */
    {3, 3, 6, 32, 13, 1, GDN_BROADCAST_INTERLEAVED, 1, 0},   /* commits amortised over about 3 steps */
    {1, 1, 3, 16, 2, 0, GDN_BROADCAST_TILED, 0, 0},          /* decode */
    {1, 1, 3, 16, 5, 1, GDN_BROADCAST_INTERLEAVED, 1, 0},
    {4, 2, 4, 128, 11, 1, GDN_BROADCAST_TILED, 1, 0},        /* MTP-like verify at the models' D */
    {4, 16, 48, 128, 8, 0, GDN_BROADCAST_TILED, 0, 1},       /* the CUDA wide shape (see cases) */
    {4, 16, 80, 128, 8, 0, GDN_BROADCAST_INTERLEAVED, 1, 1}, /* ... at 4 blocks per SM */
};

enum { SPEC_B = 3, SPEC_S = 4, SPEC_STEPS = 60 };

/* A view of index `i` along dimension `dim` (count 1 there). */
static gdn_tensor slice(gdn_tensor t, int dim, int64_t i)
{
    t.data = (char *)t.data + (size_t)i * t.nb[dim];
    t.ne[dim] = 1;
    return t;
}

static void check_speculative(const test_backend *tb, int case_index, const spec_case *sc, gdn_dtype storage)
{
    const replay_case c = {SPEC_B, sc->T, sc->Hk, sc->Hv, sc->D, sc->L, sc->broadcast, sc->l2norm,
                           LAYOUT_CONTIGUOUS, sc->cuda_only};
    const int32_t slots[SPEC_B] = {2, 0, 3};
    test_rng rng;
    test_rng_seed(&rng, 9000 + (uint64_t)case_index);
    replay_tensors ts;
    test_tensor seq_state[SPEC_B], seq_o;
    memset(seq_state, 0, sizeof seq_state);
    memset(&seq_o, 0, sizeof seq_o);
    const int64_t D = sc->D, ne_state[] = {D, D, sc->Hv, 1}, ne_o1[] = {D, sc->Hv, 1, 1};
    int ok = replay_tensors_init(&ts, &c, SPEC_S, LAYOUT_CONTIGUOUS, storage, &rng) &&
             test_tensor_init(&seq_o, LAYOUT_CONTIGUOUS, GDN_DTYPE_F32, 4, ne_o1) && test_tensor_upload(&seq_o, tb->backend);
    const size_t slot_bytes = ts.t[POOL].host.nb[3];
    unsigned char *committed[SPEC_B] = {NULL, NULL, NULL};
    for (int b = 0; ok && b < SPEC_B; b++) {
        set_i32(&ts.t[INDEX], b, 0, slots[b]);
        /* sequence b's own state starts as its pool slot */
        ok = ok && test_tensor_init(&seq_state[b], LAYOUT_CONTIGUOUS, storage, 4, ne_state);
        if (ok)
            memcpy(seq_state[b].host_bytes, ts.t[POOL].host_bytes + slots[b] * slot_bytes, slot_bytes);
        ok = ok && test_tensor_upload(&seq_state[b], tb->backend) && (committed[b] = malloc(slot_bytes)) != NULL;
        if (ok)
            memcpy(committed[b], seq_state[b].host_bytes, slot_bytes);
    }
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    CHECK(ok, "%s speculative case %d: setup: %s", tb->label, case_index, gdn_error_detail());

    gdn_gated_delta_net_params p = case_params(&c);
    gdn_gated_delta_net_replay_args a = replay_args(&ts, 1);
    const size_t o_bytes = ts.t[O].bytes;
    unsigned char *o = malloc(o_bytes), *pool = malloc(ts.t[POOL].bytes), *one = malloc(slot_bytes);
    ok = ok && o && pool && one;
    int base[SPEC_B] = {0, 0, 0}, pending[SPEC_B] = {0, 0, 0};
    int outputs_same = 1, states_same = 1, commits = 0, steps_without_commit = 0, tokens = 0;
    for (int step = 0; ok && step < SPEC_STEPS; step++) {
        /* The drafted tokens of this step, and each sequence's fold. */
        int commit[SPEC_B];
        for (int i = Q; i <= BETA; i++)
            fill(&ts.t[i], &rng, i, sc->D, sc->l2norm);
        for (int b = 0; b < SPEC_B; b++) {
            commit[b] = !sc->lazy || pending[b] + 2 * sc->T > sc->L;
            set_i32(&ts.t[FOLD], 0, b, base[b]);
            set_i32(&ts.t[FOLD], 1, b, pending[b]);
            set_i32(&ts.t[FOLD], 2, b, commit[b]);
        }
        for (int i = Q; ok && i <= FOLD; i++)
            if (i <= BETA || i == FOLD)
                ok = test_buffer_upload(&ts.t[i].device, ts.t[i].host_bytes, ts.t[i].bytes);
        gdn_status st = ok ? gdn_gated_delta_net_replay(tb->backend, &p, &a) : GDN_ERROR_BACKEND;
        CHECK(st == GDN_OK, "%s speculative case %d step %d: %s", tb->label, case_index, step, gdn_error_detail());
        ok = ok && st == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
             test_buffer_download(&ts.t[O].device, o) && test_buffer_download(&ts.t[POOL].device, pool);

        for (int b = 0; ok && b < SPEC_B; b++) {
            /* The committed state: the sequential state after every token accepted so far. */
            if (commit[b]) {
                ok = test_buffer_download(&seq_state[b].device, committed[b]);
                commits += pending[b] > 0;
            } else {
                steps_without_commit++;
            }
            states_same = states_same && memcmp(pool + slots[b] * slot_bytes, committed[b], slot_bytes) == 0;

            /* Accept a tokens and run them one per call on the sequence's own state. */
            const int accepted = 1 + (int)(test_rng_next(&rng) % (uint64_t)sc->T);
            for (int t = 0; ok && t < accepted; t++) {
                gdn_tensor state = test_device_view(&seq_state[b]), states = state;
                states.n_dims = 5;
                gdn_gated_delta_net_args s = {slice(slice(a.q, 3, b), 2, t), slice(slice(a.k, 3, b), 2, t),
                                              slice(slice(a.v, 3, b), 2, t), slice(slice(a.g, 2, b), 1, t),
                                              slice(slice(a.beta, 2, b), 1, t), state, test_device_view(&seq_o), states,
                                              {0}, {0}};
                gdn_gated_delta_net_params p1 = p;
                p1.n_snapshots = 1;
                st = gdn_gated_delta_net(tb->backend, &p1, &s);
                CHECK(st == GDN_OK, "%s speculative case %d: sequential call: %s", tb->label, case_index,
                      gdn_error_detail());
                ok = st == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
                     test_buffer_download(&seq_o.device, one);
                const gdn_tensor ot = slice(slice(ts.t[O].host, 3, b), 2, t);
                outputs_same = outputs_same &&
                               memcmp(o + ((const unsigned char *)ot.data - ts.t[O].host_bytes), one,
                                      (size_t)(sc->Hv * D) * sizeof(float)) == 0;
                tokens++;
            }
            /* The manager: folded tokens leave the ring when committed; the accepted ones of
             * this step follow the pending ones. */
            if (commit[b]) {
                base[b] = (base[b] + pending[b]) % sc->L;
                pending[b] = accepted;
            } else {
                pending[b] += accepted;
            }
        }
    }
    CHECK(ok, "%s speculative case %d: setup or transfer failed: %s", tb->label, case_index, gdn_error_detail());
    CHECK(outputs_same, "%s speculative case %d (%s pool): an accepted token's output differs from sequential "
          "decoding", tb->label, case_index, gdn_dtype_name(storage));
    CHECK(states_same, "%s speculative case %d (%s pool): a committed state differs from sequential decoding",
          tb->label, case_index, gdn_dtype_name(storage));
    CHECK(commits > 0 && (!sc->lazy || steps_without_commit > 0), "%s speculative case %d: the loop did not exercise "
          "commits (%d) and lazy steps (%d)", tb->label, case_index, commits, steps_without_commit);
    printf("  %-10s speculative case %d: T=%d L=%d Hv=%d D=%3d %s, %s pool: %d steps, %d accepted tokens, "
           "%d commits\n", tb->label, case_index, sc->T, sc->L, sc->Hv, sc->D, sc->lazy ? "lazy" : "every step",
           gdn_dtype_name(storage), SPEC_STEPS, tokens, commits);
    free(o);
    free(pool);
    free(one);
    for (int b = 0; b < SPEC_B; b++) {
        free(committed[b]);
        test_tensor_free(&seq_state[b]);
    }
    test_tensor_free(&seq_o);
    replay_tensors_free(&ts);
}

/* ---------------------------------------------------------------------------------------------
 * Rejected input: each mutation of a valid call gives its status and a detail naming the
 * problem, and writes nothing (o, the pool and the rings keep their bytes).
 * ------------------------------------------------------------------------------------------- */
typedef enum mutation {
    MUT_COUNT_OVERFLOWS, MUT_START_IS_L, MUT_NEGATIVE_COUNT, MUT_SLOT_OUT_OF_RANGE, MUT_SLOT_NEGATIVE,
    MUT_SLOT_SHARED, MUT_RING_SHORTER_THAN_T, MUT_NO_INDEX, MUT_FOLD_F32, MUT_FOLD_WRONG_B, MUT_O_OVER_RING,
    MUT_POOL_OVER_K, MUT_RING_OVER_RING, MUT_RING_SELF_OVERLAP, MUT_POOL_F64,
} mutation;

static const struct {
    mutation m;
    gdn_status want;
    const char *detail; /* a part of the detail message */
} rejections[] = {
    {MUT_COUNT_OVERFLOWS, GDN_ERROR_INVALID_ARGUMENT, "fold[1] = {start 2, count 3}"},
    {MUT_START_IS_L, GDN_ERROR_INVALID_ARGUMENT, "fold[2] = {start 5, count 0}"},
    {MUT_NEGATIVE_COUNT, GDN_ERROR_INVALID_ARGUMENT, "fold[0] = {start 1, count -1}"},
    {MUT_SLOT_OUT_OF_RANGE, GDN_ERROR_INVALID_ARGUMENT, "state_index[1]=5 is outside 0..4"},
    {MUT_SLOT_NEGATIVE, GDN_ERROR_INVALID_ARGUMENT, "state_index[0]=-1"},
    {MUT_SLOT_SHARED, GDN_ERROR_INVALID_ARGUMENT, "state_index[2]=4 is also the slot of sequence 0"},
    {MUT_RING_SHORTER_THAN_T, GDN_ERROR_SHAPE, "fewer than the T=3"},
    {MUT_NO_INDEX, GDN_ERROR_INVALID_ARGUMENT, "state_index has no data"},
    {MUT_FOLD_F32, GDN_ERROR_TYPE, "fold is F32"},
    {MUT_FOLD_WRONG_B, GDN_ERROR_SHAPE, "fold has ne[1]=2"},
    {MUT_O_OVER_RING, GDN_ERROR_OVERLAP, "o and ring_k (both written by the op) overlap"},
    {MUT_POOL_OVER_K, GDN_ERROR_OVERLAP, "state (written by the op) overlaps input"},
    {MUT_RING_OVER_RING, GDN_ERROR_OVERLAP, "ring_v and ring_g"},
    {MUT_RING_SELF_OVERLAP, GDN_ERROR_OVERLAP, "ring_v (written by the op) has elements that share"},
    {MUT_POOL_F64, GDN_ERROR_TYPE, "state is F64"},
};

static void check_rejections(const test_backend *tb)
{
    const replay_case c = {3, 3, 1, 2, 16, 5, GDN_BROADCAST_TILED, 0, LAYOUT_CONTIGUOUS, 0};
    const int32_t slots[3] = {4, 0, 2}, folds[3][3] = {{1, 2, 1}, {2, 1, 0}, {4, 0, 1}};
    test_rng rng;
    test_rng_seed(&rng, 5);
    replay_tensors ts;
    int ok = replay_tensors_init(&ts, &c, S_SLOTS, LAYOUT_CONTIGUOUS, GDN_DTYPE_F32, &rng);
    for (int b = 0; ok && b < 3; b++) {
        set_i32(&ts.t[INDEX], b, 0, slots[b]);
        for (int i = 0; i < 3; i++)
            set_i32(&ts.t[FOLD], i, b, folds[b][i]);
    }
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    CHECK(ok, "%s rejections: setup failed", tb->label);
    /* Each with and without the state_ready hint (it holds: every call follows a synchronised
     * upload): CUDA's state_ready form stages its first tokens before the verdict, from values
     * clamped into range. */
    const size_t n_rejections = sizeof rejections / sizeof rejections[0];
    for (size_t i = 0; ok && i < 2 * n_rejections; i++) {
        const size_t r = i % n_rejections;
        const int ready = (int)(i / n_rejections);
        gdn_gated_delta_net_params p = case_params(&c);
        p.state_ready = ready;
        gdn_gated_delta_net_replay_args a = replay_args(&ts, 1);
        int32_t value = 0; /* a value check: `value` at element fold_at (b * 3 + i) or index_at */
        int fold_at = -1, index_at = -1;
        switch (rejections[r].m) {
        case MUT_COUNT_OVERFLOWS: fold_at = 1 * 3 + 1, value = 3; break; /* 3 + T > L = 5 */
        case MUT_START_IS_L: fold_at = 2 * 3 + 0, value = 5; break;
        case MUT_NEGATIVE_COUNT: fold_at = 0 * 3 + 1, value = -1; break;
        case MUT_SLOT_OUT_OF_RANGE: index_at = 1, value = 5; break;
        case MUT_SLOT_NEGATIVE: index_at = 0, value = -1; break;
        case MUT_SLOT_SHARED: index_at = 2, value = 4; break;
        case MUT_RING_SHORTER_THAN_T: a.ring_k.ne[2] = a.ring_v.ne[2] = a.ring_g.ne[1] = 2; break;
        case MUT_NO_INDEX: a.state_index.data = NULL; break;
        case MUT_FOLD_F32: a.fold.dtype = GDN_DTYPE_F32; break;
        case MUT_FOLD_WRONG_B: a.fold.ne[1] = 2; break;
        case MUT_O_OVER_RING: a.o.data = a.ring_k.data; break;
        case MUT_POOL_OVER_K: a.state.data = a.k.data; break;
        case MUT_RING_OVER_RING: a.ring_g.data = a.ring_v.data; break;
        case MUT_RING_SELF_OVERLAP: a.ring_v.nb[2] = a.ring_v.nb[1]; break; /* positions share memory */
        case MUT_POOL_F64: a.state.dtype = GDN_DTYPE_F64; break;
        }
        /* Value checks: change the value in backend memory, call, restore. */
        if (fold_at >= 0)
            ok = gdn_backend_upload(tb->backend, (char *)a.fold.data + (size_t)fold_at * sizeof value, &value,
                                    sizeof value) == GDN_OK;
        if (index_at >= 0)
            ok = gdn_backend_upload(tb->backend, (char *)a.state_index.data + (size_t)index_at * sizeof value, &value,
                                    sizeof value) == GDN_OK;
        const gdn_status st = gdn_gated_delta_net_replay(tb->backend, &p, &a);
        CHECK(st == rejections[r].want && strstr(gdn_error_detail(), rejections[r].detail) != NULL,
              "%s rejection %zu (state_ready %d): got %d (%s), expected %d naming '%s'", tb->label, r, ready, (int)st,
              gdn_error_detail(), (int)rejections[r].want, rejections[r].detail);
        gdn_backend_synchronize(tb->backend);
        ok = ok && test_buffer_upload(&ts.t[FOLD].device, ts.t[FOLD].host_bytes, ts.t[FOLD].bytes) &&
             test_buffer_upload(&ts.t[INDEX].device, ts.t[INDEX].host_bytes, ts.t[INDEX].bytes);
    }
    /* Nothing was written: o, the pool and the rings hold their uploaded bytes. */
    const int written[] = {O, POOL, RING_K, RING_V, RING_G};
    for (size_t i = 0; ok && i < sizeof written / sizeof written[0]; i++) {
        const test_tensor *w = &ts.t[written[i]];
        unsigned char *got = malloc(w->bytes);
        CHECK(got && test_buffer_download(&w->device, got) && memcmp(got, w->host_bytes, w->bytes) == 0,
              "%s rejections: tensor %d was written by a rejected call", tb->label, written[i]);
        free(got);
    }
    /* And the valid call still runs after them. */
    gdn_gated_delta_net_params p = case_params(&c);
    gdn_gated_delta_net_replay_args a = replay_args(&ts, 1);
    CHECK(ok && gdn_gated_delta_net_replay(tb->backend, &p, &a) == GDN_OK, "%s rejections: the valid call: %s",
          tb->label, gdn_error_detail());
    replay_tensors_free(&ts);
}

int main(void)
{
    test_backend backends[8];
    const int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        const int cuda = strncmp(backends[b].label, "cuda", 4) == 0;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            if (cuda || !cases[i].cuda_only)
                run_case(&backends[b], (int)i, &cases[i]);
        for (size_t i = 0; i < sizeof spec_cases / sizeof spec_cases[0]; i++)
            for (int bf16 = 0; bf16 < 2 && (cuda || !spec_cases[i].cuda_only); bf16++)
                check_speculative(&backends[b], (int)i, &spec_cases[i], bf16 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32);
        check_rejections(&backends[b]);
    }
    test_backends_close(backends, n);
    return test_finish("test_replay");
}
