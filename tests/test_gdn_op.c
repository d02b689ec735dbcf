/* test_gdn_op.c: the Gated DeltaNet op on every backend present against the float64 reference,
 * from a table of cases (odd sizes, both broadcast rules, K above and below T, non-contiguous
 * layouts, guard regions), with F32 and with BF16 state storage; then the exactness contract
 * (one call of T tokens equals T calls of one token, bit for bit, for both storages; batch and
 * thread-count invariance); then rejected input. The cache-slot cases (indices) are
 * test_gdn_slots.c. */
#include "gdn_op_cases.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>



static const op_case cases[] = {
    /* B  T Hk Hv   D  K  broadcast                  l2 scale lay */
    {1, 1, 1, 1, 16, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},
    {3, 7, 2, 6, 32, 4, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},        /* Hv/Hk = 3, K < T */
    {3, 7, 2, 6, 32, 4, GDN_BROADCAST_INTERLEAVED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},
    {2, 3, 1, 3, 64, 5, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_CONTIGUOUS, 0},  /* K > T */
    {2, 4, 2, 4, 128, 4, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0},       /* MTP verify shape */
    {1, 1, 4, 8, 128, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},       /* decode */
    {2, 2, 1, 2, 256, 2, GDN_BROADCAST_TILED, 1, 0.5f, LAYOUT_CONTIGUOUS, 0},
    {3, 7, 2, 6, 16, 3, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_PADDED, 0},
    {3, 5, 1, 3, 128, 2, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_PADDED, 0},
    {2, 5, 3, 9, 64, 6, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_PADDED_ODD, 0},
    {2, 6, 2, 4, 128, 3, GDN_BROADCAST_INTERLEAVED, 0, 0.f, LAYOUT_PERMUTED, 0},
    {3, 3, 1, 3, 32, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_PERMUTED, 0},
    {2, 4, 2, 2, 64, 2, GDN_BROADCAST_INTERLEAVED, 0, 0.25f, LAYOUT_SPACED_INNER, 0},
    {1, 9, 1, 2, 128, 9, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_SPACED_INNER, 0},
    {5, 1, 16, 32, 128, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0},     /* Qwen3.6 heads */
    /* CUDA on 132 SMs: 448 blocks, one wave at 4 blocks per SM (the B = 7, 8 decode form) */
    {7, 1, 16, 32, 128, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},
    /* |q|^2, |k|^2 near the eps of the l2norm (1e-6): its exact form matters */
    {2, 3, 1, 2, 16, 2, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 2e-4},
    {1, 2, 2, 4, 128, 2, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_PADDED, 1e-4},
};

/* BF16 state storage (state and states BF16, rounded after every token): the same variety at
 * half the count. PADDED_ODD leaves BF16 rows only 2-byte aligned; SPACED_INNER takes the
 * element-wise path. */
static const op_case bf16_cases[] = {
    /* B  T Hk Hv   D  K  broadcast                  l2 scale lay */
    {1, 1, 1, 1, 16, 1, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},
    {3, 7, 2, 6, 32, 4, GDN_BROADCAST_INTERLEAVED, 0, 0.f, LAYOUT_CONTIGUOUS, 0},  /* K < T: unstored tokens */
    {2, 3, 1, 3, 64, 5, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_CONTIGUOUS, 0},  /* K > T */
    {2, 2, 1, 2, 256, 2, GDN_BROADCAST_TILED, 1, 0.5f, LAYOUT_CONTIGUOUS, 0},
    {3, 7, 2, 6, 16, 3, GDN_BROADCAST_INTERLEAVED, 1, 0.f, LAYOUT_PADDED_ODD, 0},
    {2, 4, 2, 4, 128, 4, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_PADDED, 0},
    {2, 6, 2, 4, 128, 3, GDN_BROADCAST_INTERLEAVED, 0, 0.f, LAYOUT_PERMUTED, 0},
    {2, 4, 2, 2, 64, 2, GDN_BROADCAST_INTERLEAVED, 0, 0.25f, LAYOUT_SPACED_INNER, 0},
    {5, 1, 16, 32, 128, 1, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0},     /* Qwen3.6 heads, decode */
};

/* Layouts and the tensor buffers behind them: tests/harness.h. */

/* ---------------------------------------------------------------------------------------------
 * Comparison against the reference: every view element close to it, every other byte of the
 * output buffer (gaps and guards) still 0xFF.
 * ------------------------------------------------------------------------------------------- */



/* BF16 storage. The float64 reference rounds to BF16 after every token as the backends do, so
 * both hold BF16 values, and a backend's differ from the reference's only where an F32 value
 * and its float64 counterpart (~1e-7 relative apart) round to different BF16 neighbours: one
 * BF16 ulp (2^-8 to 2^-7 relative) in a few elements, which then moves its row's later values a
 * little (measured on the CPU levels: at least 99.985% of the snapshot elements equal, the
 * others within 2.5 units of 2^-8 |ref| where |ref| is not tiny, states decayed to ~1e-7 off by
 * more units but far less than 2^-12 of the largest value). So every snapshot element within
 * TOL_BF16_ULPS units of 2^-8 |ref| plus TOL_BF16_ABS times the largest |ref| (worst measured:
 * 0.6 of that), and at least TOL_BF16_EXACT of them equal to the reference's: that is what a
 * skipped or different rounding fails (without the round pass, most elements differ). o is
 * computed in F32 from those states (measured: rel L2 error below 6e-5, max error below 6e-4 of
 * the largest |o|), so 2^-10 and 2^-8, still far below the order-1 errors of an indexing
 * mistake. */
#define TOL_BF16_EXACT 0.99
#define TOL_BF16_ULPS 4.0
#define TOL_BF16_ABS (1.0 / 4096)
#define TOL_BF16_O_REL_L2 (1.0 / 1024)
#define TOL_BF16_O_MAX (1.0 / 256)

static void compare_bf16_states(const char *label, int case_index, const test_tensor *tb, const double *ref,
                                const gdn_tensor *ref_view)
{
    unsigned char *got = malloc(tb->bytes), *mark = calloc(tb->bytes, 1);
    if (!got || !mark) {
        CHECK(0, "out of memory");
        free(got);
        free(mark);
        return;
    }
    CHECK(test_buffer_download(&tb->device, got), "%s case %d states: guard region overwritten", label,
          case_index);
    int64_t idx[GDN_MAX_DIMS] = {0}, n = 0, exact = 0;
    double max_ref = 0;
    do {
        max_ref = fmax(max_ref, fabs(ref[test_offset_of(ref_view, idx) / sizeof(double)]));
    } while (test_next_index(&tb->host, idx));
    double worst = 0; /* largest |x - ref| / (TOL_BF16_ULPS 2^-8 |ref| + TOL_BF16_ABS max |ref|) */
    do {
        const size_t off = test_offset_of(&tb->host, idx);
        uint16_t half;
        memcpy(&half, got + off, sizeof half);
        memset(mark + off, 1, sizeof half);
        const double x = from_bf16(half), r = ref[test_offset_of(ref_view, idx) / sizeof(double)];
        const double e = fabs(x - r) / (TOL_BF16_ULPS * fabs(r) / 256 + TOL_BF16_ABS * max_ref);
        if (!(e <= worst))
            worst = e; /* NaN sticks */
        exact += x == r;
        n++;
    } while (test_next_index(&tb->host, idx));
    size_t stray = 0;
    for (size_t i = 0; i < tb->bytes; i++)
        stray += !mark[i] && got[i] != 0xFF;
    CHECK(worst <= 1.0 && (double)exact >= TOL_BF16_EXACT * (double)n,
          "%s case %d states (BF16): %.4f%% equal to the reference's BF16 values, worst error %.3g of the "
          "tolerance", label, case_index, 100.0 * (double)exact / (double)n, worst);
    CHECK(stray == 0, "%s case %d states: %zu bytes written outside the view", label, case_index, stray);
    free(got);
    free(mark);
}

static void run_case(const test_backend *tb, int case_index, const op_case *c, gdn_dtype storage)
{
    test_rng rng;
    test_rng_seed(&rng, 1000 + (uint64_t)case_index);
    op_tensors ts;
    if (!op_tensors_init(&ts, c, storage, &rng)) {
        CHECK(0, "case %d: out of memory", case_index);
        op_tensors_free(&ts);
        return;
    }
    /* float64 reference on the host copies */
    gdn_gated_delta_net_params p = case_params(c);
    const int64_t D = c->D, N = c->T < c->K ? c->T : c->K;
    const int64_t ne_o[] = {D, c->Hv, c->T, c->B}, ne_s[] = {D, D, c->Hv, c->B, N};
    gdn_tensor o_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 4, ne_o);
    gdn_tensor s_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 5, ne_s);
    o_ref.data = malloc(gdn_tensor_span(&o_ref));
    s_ref.data = malloc(gdn_tensor_span(&s_ref));
    gdn_gated_delta_net_args ra = {ts.t[Q].host, ts.t[K_].host, ts.t[V].host, ts.t[G].host,
                                   ts.t[BETA].host, ts.t[STATE].host, o_ref, s_ref, {0}, {0}};
    gdn_status st = gdn_gated_delta_net_reference(&p, &ra);
    CHECK(st == GDN_OK, "case %d reference: %s", case_index, gdn_error_detail());

    int ok = 1;
    for (int i = 0; i < N_TENSORS; i++)
        ok = ok && test_tensor_upload(&ts.t[i], tb->backend);
    CHECK(ok, "%s case %d: upload failed: %s", tb->label, case_index, gdn_error_detail());
    if (ok && st == GDN_OK) {
        gdn_gated_delta_net_args a = device_args(&ts);
        st = gdn_gated_delta_net(tb->backend, &p, &a);
        CHECK(st == GDN_OK, "%s case %d: %s", tb->label, case_index, gdn_error_detail());
        CHECK(gdn_backend_synchronize(tb->backend) == GDN_OK, "%s: synchronize: %s", tb->label,
              gdn_error_detail());
        if (storage == GDN_DTYPE_BF16) {
            gdn_tensor r = o_ref;
            test_compare_output("o (BF16 state)", tb->label, case_index, &ts.t[O], &r, TOL_BF16_O_REL_L2,
                                TOL_BF16_O_MAX);
            compare_bf16_states(tb->label, case_index, &ts.t[STATES], s_ref.data, &s_ref);
        } else {
            compare_output("o", tb->label, case_index, &ts.t[O], o_ref.data, &o_ref);
            compare_output("states", tb->label, case_index, &ts.t[STATES], s_ref.data, &s_ref);
        }
    }
    printf("  %-10s case %2d: B=%d T=%d Hk=%d Hv=%d D=%3d K=%d %s%s %s%s\n", tb->label, case_index, c->B,
           c->T, c->Hk, c->Hv, c->D, c->K, c->broadcast == GDN_BROADCAST_TILED ? "tiled" : "interleaved",
           c->l2norm ? " l2norm" : "", test_layout_names[c->lay], storage == GDN_DTYPE_BF16 ? " BF16 state" : "");
    free(o_ref.data);
    free(s_ref.data);
    op_tensors_free(&ts);
}

/* ---------------------------------------------------------------------------------------------
 * Exactness contract
 * ------------------------------------------------------------------------------------------- */

/* T tokens in one call (K = T) against T calls of one token, each updating the state in place
 * (state == states[0], the cache pattern): outputs and every intermediate state identical. And
 * the T-token call with K = 1 writes the same last state: with BF16 storage, a state is rounded
 * after every token whether it is stored or not. */
static void check_token_split(const test_backend *tb, const op_case *c, gdn_dtype storage)
{
    op_case one = *c;
    one.K = c->T;
    test_rng rng;
    test_rng_seed(&rng, 77);
    op_tensors all;
    int ok = op_tensors_init(&all, &one, storage, &rng);
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&all.t[i], tb->backend);
    gdn_gated_delta_net_params p = case_params(&one);
    gdn_gated_delta_net_args a = device_args(&all);
    /* K = 1 first (into snapshot 0, which the K = T call then rewrites) */
    gdn_gated_delta_net_params p_last = p;
    p_last.n_snapshots = 1;
    gdn_gated_delta_net_args a_last = a;
    a_last.states = slice(a.states, 4, 0);
    unsigned char *s_last = NULL;
    ok = ok && gdn_gated_delta_net(tb->backend, &p_last, &a_last) == GDN_OK &&
         gdn_backend_synchronize(tb->backend) == GDN_OK && download_bytes(tb->backend, &a_last.states, &s_last);
    ok = ok && gdn_gated_delta_net(tb->backend, &p, &a) == GDN_OK;

    /* token by token, in place: the running state lives in the STATE buffer */
    p.n_snapshots = 1;
    int identical = ok;
    for (int64_t t = 0; ok && t < c->T; t++) {
        gdn_gated_delta_net_args s = a;
        s.q = slice(a.q, 2, t);
        s.k = slice(a.k, 2, t);
        s.v = slice(a.v, 2, t);
        s.g = slice(a.g, 1, t);
        s.beta = slice(a.beta, 1, t);
        s.states = a.state;
        s.states.n_dims = 5;
        s.states.ne[4] = 1;
        test_tensor o1;
        const int64_t ne_o[] = {c->D, c->Hv, 1, c->B};
        ok = test_tensor_init(&o1, c->lay, GDN_DTYPE_F32, 4, ne_o) && test_tensor_upload(&o1, tb->backend);
        s.o = test_device_view(&o1);
        gdn_status st = ok ? gdn_gated_delta_net(tb->backend, &p, &s) : GDN_ERROR_OUT_OF_MEMORY;
        CHECK(st == GDN_OK, "%s token split t=%lld: %s", tb->label, (long long)t, gdn_error_detail());
        ok = ok && st == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK;
        unsigned char *o_all = NULL, *o_one = NULL, *s_all = NULL, *s_one = NULL;
        gdn_tensor o_t = slice(a.o, 2, t), snap = slice(a.states, 4, c->T - 1 - t);
        ok = ok && download_bytes(tb->backend, &o_t, &o_all) && download_bytes(tb->backend, &s.o, &o_one) &&
             download_bytes(tb->backend, &snap, &s_all) && download_bytes(tb->backend, &s.state, &s_one);
        if (ok)
            identical = identical && same_bits(&o_t, o_all, &s.o, o_one) && same_bits(&snap, s_all, &s.state, s_one) &&
                        (t + 1 < c->T || same_bits(&s.state, s_one, &a_last.states, s_last));
        free(o_all);
        free(o_one);
        free(s_all);
        free(s_one);
        test_tensor_free(&o1);
    }
    CHECK(ok, "%s token split: setup failed: %s", tb->label, gdn_error_detail());
    CHECK(identical, "%s: T=%d in one call differs from one token per call (B=%d Hv=%d D=%d %s, %s state)",
          tb->label, c->T, c->B, c->Hv, c->D, test_layout_names[c->lay], gdn_dtype_name(storage));
    free(s_last);
    op_tensors_free(&all);
}

/* A batch of B sequences against each sequence alone: identical bits. */
static void check_batch_invariance(const test_backend *tb, const op_case *c, gdn_dtype storage)
{
    test_rng rng;
    test_rng_seed(&rng, 99);
    op_tensors all;
    int ok = op_tensors_init(&all, c, storage, &rng);
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&all.t[i], tb->backend);
    gdn_gated_delta_net_params p = case_params(c);
    gdn_gated_delta_net_args a = device_args(&all);
    ok = ok && gdn_gated_delta_net(tb->backend, &p, &a) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK;
    unsigned char *o_batch = NULL, *s_batch = NULL;
    ok = ok && download_bytes(tb->backend, &a.o, &o_batch) && download_bytes(tb->backend, &a.states, &s_batch);
    int identical = ok;
    for (int64_t b = 0; ok && b < c->B; b++) {
        gdn_gated_delta_net_args s = {slice(a.q, 3, b), slice(a.k, 3, b), slice(a.v, 3, b),
                                      slice(a.g, 2, b), slice(a.beta, 2, b), slice(a.state, 3, b),
                                      slice(a.o, 3, b), slice(a.states, 3, b), {0}, {0}};
        ok = gdn_gated_delta_net(tb->backend, &p, &s) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK;
        unsigned char *o_one = NULL, *s_one = NULL;
        ok = ok && download_bytes(tb->backend, &s.o, &o_one) && download_bytes(tb->backend, &s.states, &s_one);
        if (ok) {
            /* sequence b sits at b * nb[3] in the batch's downloaded bytes */
            identical = identical && same_bits(&s.o, o_one, &s.o, o_batch + (size_t)b * a.o.nb[3]) &&
                        same_bits(&s.states, s_one, &s.states, s_batch + (size_t)b * a.states.nb[3]);
        }
        free(o_one);
        free(s_one);
    }
    CHECK(ok, "%s batch invariance: setup failed: %s", tb->label, gdn_error_detail());
    CHECK(identical, "%s: results of a sequence depend on the batch (B=%d T=%d, %s state)", tb->label, c->B, c->T,
          gdn_dtype_name(storage));
    free(o_batch);
    free(s_batch);
    op_tensors_free(&all);
}

/* A recorded call, replayed twice, equals the call run directly (bit for bit). Backends without
 * recording must say so with GDN_ERROR_UNSUPPORTED. */
static void check_recording(const test_backend *tb, const op_case *c)
{
    gdn_status st = gdn_backend_record_begin(tb->backend);
    if (st == GDN_ERROR_UNSUPPORTED) {
        CHECK(strlen(gdn_error_detail()) > 0, "%s: record_begin unsupported without a reason", tb->label);
        return;
    }
    CHECK(st == GDN_OK, "%s record_begin: %s", tb->label, gdn_error_detail());
    if (st != GDN_OK)
        return;
    test_rng rng;
    test_rng_seed(&rng, 31);
    op_tensors ts;
    int ok = op_tensors_init(&ts, c, GDN_DTYPE_F32, &rng);
    gdn_recording *recording = NULL;
    /* buffers are set up before the recording starts: end the capture, prepare, record again */
    ok = gdn_backend_record_end(tb->backend, &recording) == GDN_OK && ok;
    gdn_recording_free(recording);
    recording = NULL;
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    gdn_gated_delta_net_params p = case_params(c);
    gdn_gated_delta_net_args a = device_args(&ts);
    unsigned char *direct_o = NULL, *direct_s = NULL, *replay_o = NULL, *replay_s = NULL;
    ok = ok && gdn_gated_delta_net(tb->backend, &p, &a) == GDN_OK &&
         download_bytes(tb->backend, &a.o, &direct_o) && download_bytes(tb->backend, &a.states, &direct_s);
    ok = ok && gdn_backend_record_begin(tb->backend) == GDN_OK;
    ok = ok && gdn_gated_delta_net(tb->backend, &p, &a) == GDN_OK;
    ok = gdn_backend_record_end(tb->backend, &recording) == GDN_OK && ok;
    ok = ok && gdn_recording_replay(recording) == GDN_OK && gdn_recording_replay(recording) == GDN_OK &&
         gdn_backend_synchronize(tb->backend) == GDN_OK && download_bytes(tb->backend, &a.o, &replay_o) &&
         download_bytes(tb->backend, &a.states, &replay_s);
    CHECK(ok, "%s recording: %s", tb->label, gdn_error_detail());
    if (ok)
        CHECK(same_bits(&a.o, direct_o, &a.o, replay_o) && same_bits(&a.states, direct_s, &a.states, replay_s),
              "%s: a replayed recording differs from the direct call", tb->label);
    gdn_recording_free(recording);
    free(direct_o);
    free(direct_s);
    free(replay_o);
    free(replay_s);
    op_tensors_free(&ts);
}

/* ---------------------------------------------------------------------------------------------
 * Rejected input: each mutation of a valid call gives its status and writes nothing.
 * ------------------------------------------------------------------------------------------- */
typedef enum mutation {
    MUT_Q_F16, MUT_HV_NOT_MULTIPLE, MUT_D_48, MUT_DV_DIFFERS, MUT_G_WRONG_T, MUT_STATES_WRONG_N,
    MUT_O_OVER_Q, MUT_STATES_OVER_O, MUT_STATE_SHIFTED, MUT_ZERO_SNAPSHOTS, MUT_BAD_BROADCAST,
    MUT_NULL_DATA, MUT_NAN_SCALE, MUT_MISALIGNED, MUT_V_3_DIMS, MUT_O_SELF_OVERLAP, MUT_STATES_ZERO_STRIDE,
    MUT_COUNT
} mutation;

static const struct {
    mutation m;
    gdn_status want;
    const char *what;
} rejections[] = {
    {MUT_Q_F16, GDN_ERROR_TYPE, "q is F16"},
    {MUT_HV_NOT_MULTIPLE, GDN_ERROR_SHAPE, "Hv not a multiple of Hk"},
    {MUT_D_48, GDN_ERROR_SHAPE, "D = 48"},
    {MUT_DV_DIFFERS, GDN_ERROR_SHAPE, "Dv != Dk"},
    {MUT_G_WRONG_T, GDN_ERROR_SHAPE, "g has the wrong T"},
    {MUT_STATES_WRONG_N, GDN_ERROR_SHAPE, "states has the wrong snapshot count"},
    {MUT_O_OVER_Q, GDN_ERROR_OVERLAP, "o overlaps q"},
    {MUT_STATES_OVER_O, GDN_ERROR_OVERLAP, "states overlaps o"},
    {MUT_STATE_SHIFTED, GDN_ERROR_OVERLAP, "state overlaps states but is not states[s]"},
    {MUT_ZERO_SNAPSHOTS, GDN_ERROR_INVALID_ARGUMENT, "n_snapshots = 0"},
    {MUT_BAD_BROADCAST, GDN_ERROR_INVALID_ARGUMENT, "unknown broadcast"},
    {MUT_NULL_DATA, GDN_ERROR_INVALID_ARGUMENT, "NULL data"},
    {MUT_NAN_SCALE, GDN_ERROR_INVALID_ARGUMENT, "NaN scale"},
    {MUT_MISALIGNED, GDN_ERROR_INVALID_ARGUMENT, "misaligned data"},
    {MUT_V_3_DIMS, GDN_ERROR_SHAPE, "v with 3 dims"},
    {MUT_O_SELF_OVERLAP, GDN_ERROR_OVERLAP, "o rows overlap each other"},
    {MUT_STATES_ZERO_STRIDE, GDN_ERROR_OVERLAP, "states with a zero snapshot stride"},
};

static void check_rejections(const test_backend *tb)
{
    const op_case c = {2, 3, 2, 4, 16, 2, GDN_BROADCAST_TILED, 0, 0.f, LAYOUT_CONTIGUOUS, 0};
    test_rng rng;
    test_rng_seed(&rng, 5);
    op_tensors ts;
    int ok = op_tensors_init(&ts, &c, GDN_DTYPE_F32, &rng);
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&ts.t[i], tb->backend);
    CHECK(ok, "%s rejections: setup failed", tb->label);
    if (!ok) {
        op_tensors_free(&ts);
        return;
    }
    for (size_t r = 0; r < sizeof rejections / sizeof rejections[0]; r++) {
        gdn_gated_delta_net_params p = case_params(&c);
        gdn_gated_delta_net_args a = device_args(&ts);
        switch (rejections[r].m) {
        case MUT_Q_F16: a.q.dtype = GDN_DTYPE_F16; break;
        case MUT_HV_NOT_MULTIPLE: a.v.ne[1] = 3; break;
        case MUT_D_48: a.q.ne[0] = a.k.ne[0] = a.v.ne[0] = 48; break;
        case MUT_DV_DIFFERS: a.v.ne[0] = 32; break;
        case MUT_G_WRONG_T: a.g.ne[1] = 2; break;
        case MUT_STATES_WRONG_N: a.states.ne[4] = 3; break;
        case MUT_O_OVER_Q: a.o.data = a.q.data; break;
        case MUT_STATES_OVER_O: a.states.data = a.o.data; break;
        case MUT_STATE_SHIFTED: a.state.data = (char *)a.states.data + 4; break;
        case MUT_ZERO_SNAPSHOTS: p.n_snapshots = 0; break;
        case MUT_BAD_BROADCAST: p.broadcast = (gdn_broadcast)7; break;
        case MUT_NULL_DATA: a.beta.data = NULL; break;
        case MUT_NAN_SCALE: p.scale = NAN; break;
        case MUT_MISALIGNED: a.k.data = (char *)a.k.data + 1; break;
        case MUT_V_3_DIMS: a.v.n_dims = 3; break;
        case MUT_O_SELF_OVERLAP: a.o.nb[1] = a.o.nb[0] * 8; break; /* rows of 16 floats 8 apart */
        case MUT_STATES_ZERO_STRIDE: a.states.nb[4] = 0; break;
        case MUT_COUNT: break;
        }
        gdn_status st = gdn_gated_delta_net(tb->backend, &p, &a);
        CHECK(st == rejections[r].want, "%s rejection '%s': got %d (%s), expected %d", tb->label,
              rejections[r].what, (int)st, gdn_error_detail(), (int)rejections[r].want);
        CHECK(strlen(gdn_error_detail()) > 0, "%s rejection '%s': empty detail", tb->label, rejections[r].what);
    }
    /* Nothing was written: outputs still hold the 0xFF fill. */
    gdn_backend_synchronize(tb->backend);
    for (int i = O; i <= STATES; i++) {
        unsigned char *got = malloc(ts.t[i].bytes);
        int intact = got && test_buffer_download(&ts.t[i].device, got);
        for (size_t j = 0; intact && j < ts.t[i].bytes; j++)
            intact = got[j] == 0xFF;
        CHECK(intact, "%s rejections: an output was written by a rejected call", tb->label);
        free(got);
    }
    op_tensors_free(&ts);
}

int main(void)
{
    test_backend backends[8];
    int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_case(&backends[b], (int)i, &cases[i], GDN_DTYPE_F32);
        for (size_t i = 0; i < sizeof bf16_cases / sizeof bf16_cases[0]; i++)
            run_case(&backends[b], (int)i, &bf16_cases[i], GDN_DTYPE_BF16);
        for (int bf16 = 0; bf16 < 2; bf16++) {
            const gdn_dtype storage = bf16 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
            check_token_split(&backends[b], &cases[2], storage);
            check_token_split(&backends[b], &cases[4], storage);
            check_token_split(&backends[b], &cases[10], storage);
            check_token_split(&backends[b], &cases[9], storage); /* padded-odd: BF16 rows only 2-byte aligned */
        }
        check_batch_invariance(&backends[b], &cases[1], GDN_DTYPE_F32);
        check_batch_invariance(&backends[b], &cases[8], GDN_DTYPE_F32);
        /* B=5 vs B=1 may take different launch shapes */
        check_batch_invariance(&backends[b], &cases[14], GDN_DTYPE_F32);
        check_batch_invariance(&backends[b], &cases[14], GDN_DTYPE_BF16);
        check_rejections(&backends[b]);
        check_recording(&backends[b], &cases[4]);
    }
    /* The CPU backend: the thread count must not change a bit. */
    {
        gdn_backend_options one = {1, 0}, three = {3, 0};
        gdn_backend *b1 = NULL, *b3 = NULL;
        CHECK(gdn_backend_init(&b1, GDN_BACKEND_CPU, &one) == GDN_OK &&
                  gdn_backend_init(&b3, GDN_BACKEND_CPU, &three) == GDN_OK,
              "cpu backends with 1 and 3 threads: %s", gdn_error_detail());
        if (b1 && b3) {
            const op_case c = {3, 5, 16, 32, 128, 2, GDN_BROADCAST_TILED, 1, 0.f, LAYOUT_CONTIGUOUS, 0};
            unsigned char *results[2][2] = {{NULL, NULL}, {NULL, NULL}};
            gdn_backend *pair[2] = {b1, b3};
            gdn_tensor views[2];
            for (int i = 0; i < 2; i++) {
                test_rng rng;
                test_rng_seed(&rng, 4242);
                op_tensors ts;
                int ok = op_tensors_init(&ts, &c, GDN_DTYPE_F32, &rng);
                for (int j = 0; ok && j < N_TENSORS; j++)
                    ok = test_tensor_upload(&ts.t[j], pair[i]);
                gdn_gated_delta_net_params p = case_params(&c);
                gdn_gated_delta_net_args a = device_args(&ts);
                ok = ok && gdn_gated_delta_net(pair[i], &p, &a) == GDN_OK;
                ok = ok && download_bytes(pair[i], &a.o, &results[i][0]) &&
                     download_bytes(pair[i], &a.states, &results[i][1]);
                CHECK(ok, "thread invariance run %d: %s", i, gdn_error_detail());
                views[0] = a.o;
                views[1] = a.states;
                op_tensors_free(&ts);
            }
            if (results[0][0] && results[1][0] && results[0][1] && results[1][1])
                CHECK(same_bits(&views[0], results[0][0], &views[0], results[1][0]) &&
                          same_bits(&views[1], results[0][1], &views[1], results[1][1]),
                      "cpu: 1 and 3 threads give different bits");
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++)
                    free(results[i][j]);
        }
        gdn_backend_free(b1);
        gdn_backend_free(b3);
    }
    test_backends_close(backends, n);
    return test_finish("test_gdn_op");
}
