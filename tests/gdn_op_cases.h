/* gdn_op_cases.h: what the Gated DeltaNet op's test programs share (test_gdn_op.c, the op's
 * cases; test_gdn_slots.c, its cache-slot cases): the case struct, realistic inputs, the call's
 * views and parameters, FP32 tolerances and bitwise comparison. Each function is static inline:
 * each program compiles the ones it uses. */
#ifndef GDN_TEST_GDN_OP_CASES_H
#define GDN_TEST_GDN_OP_CASES_H

#include "harness.h"
#include "core/gdn_op.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct op_case {
    int B, T, Hk, Hv, D, K;
    gdn_broadcast broadcast;
    int l2norm;
    float scale; /* 0: default 1/sqrt(D) */
    test_layout lay;
    double qk_magnitude; /* 0: unit scale; else q and k scaled to this size (the l2norm eps regime) */
} op_case;

/* F32 -> BF16, nearest with ties to even (finite inputs only: test data). */
static inline uint16_t to_bf16(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline double from_bf16(uint16_t half)
{
    const uint32_t bits = (uint32_t)half << 16;
    float x;
    memcpy(&x, &bits, sizeof x);
    return (double)x;
}

/* ---------------------------------------------------------------------------------------------
 * Inputs of a case, with realistic ranges
 * ------------------------------------------------------------------------------------------- */
enum { Q, K_, V, G, BETA, STATE, O, STATES, N_TENSORS };

typedef struct op_tensors {
    test_tensor t[N_TENSORS];
} op_tensors;

static inline void fill(test_tensor *tb, test_rng *rng, int what, int D, int l2norm, double qk_magnitude)
{
    int64_t idx[GDN_MAX_DIMS] = {0};
    do {
        double x;
        switch (what) {
        case G: x = -exp(test_rng_uniform(rng, log(1e-4), log(20.0))); break; /* [-20, -1e-4] */
        case BETA: x = test_rng_uniform(rng, 0.0, 1.0); break;
        case K_: x = test_rng_normal(rng) / (l2norm ? 1.0 : sqrt((double)D)); break; /* |k| ~ 1 */
        case STATE: x = 0.1 * test_rng_normal(rng); break;
        default: x = test_rng_normal(rng); break;
        }
        if ((what == Q || what == K_) && qk_magnitude > 0)
            x *= qk_magnitude;
        unsigned char *at = tb->host_bytes + test_offset_of(&tb->host, idx);
        if (tb->host.dtype == GDN_DTYPE_BF16) {
            const uint16_t half = to_bf16((float)x);
            memcpy(at, &half, sizeof half);
        } else {
            *(float *)at = (float)x;
        }
    } while (test_next_index(&tb->host, idx));
}

/* `storage`: the dtype of state and states (F32 or BF16). */
static inline int op_tensors_init(op_tensors *ts, const op_case *c, gdn_dtype storage, test_rng *rng)
{
    const int64_t D = c->D, N = c->T < c->K ? c->T : c->K;
    const int64_t ne_qk[] = {D, c->Hk, c->T, c->B}, ne_v[] = {D, c->Hv, c->T, c->B};
    const int64_t ne_gate[] = {c->Hv, c->T, c->B}, ne_state[] = {D, D, c->Hv, c->B};
    const int64_t ne_states[] = {D, D, c->Hv, c->B, N};
    int ok = test_tensor_init(&ts->t[Q], c->lay, GDN_DTYPE_F32, 4, ne_qk) &&
             test_tensor_init(&ts->t[K_], c->lay, GDN_DTYPE_F32, 4, ne_qk) &&
             test_tensor_init(&ts->t[V], c->lay, GDN_DTYPE_F32, 4, ne_v) &&
             test_tensor_init(&ts->t[G], c->lay, GDN_DTYPE_F32, 3, ne_gate) &&
             test_tensor_init(&ts->t[BETA], c->lay, GDN_DTYPE_F32, 3, ne_gate) &&
             test_tensor_init(&ts->t[STATE], c->lay, storage, 4, ne_state) &&
             test_tensor_init(&ts->t[O], c->lay, GDN_DTYPE_F32, 4, ne_v) &&
             test_tensor_init(&ts->t[STATES], c->lay, storage, 5, ne_states);
    if (!ok)
        return 0;
    for (int i = Q; i <= STATE; i++)
        fill(&ts->t[i], rng, i, c->D, c->l2norm, c->qk_magnitude);
    return 1;
}

static inline void op_tensors_free(op_tensors *ts)
{
    for (int i = 0; i < N_TENSORS; i++)
        test_tensor_free(&ts->t[i]);
}

static inline gdn_gated_delta_net_args device_args(const op_tensors *ts)
{
    gdn_gated_delta_net_args a;
    memset(&a, 0, sizeof a); /* no state_index */
    a.q = test_device_view(&ts->t[Q]);
    a.k = test_device_view(&ts->t[K_]);
    a.v = test_device_view(&ts->t[V]);
    a.g = test_device_view(&ts->t[G]);
    a.beta = test_device_view(&ts->t[BETA]);
    a.state = test_device_view(&ts->t[STATE]);
    a.o = test_device_view(&ts->t[O]);
    a.states = test_device_view(&ts->t[STATES]);
    return a;
}

static inline gdn_gated_delta_net_params case_params(const op_case *c)
{
    gdn_gated_delta_net_params p = gdn_gated_delta_net_params_default();
    p.n_snapshots = c->K;
    p.broadcast = c->broadcast;
    p.l2norm = c->l2norm;
    p.scale = c->scale;
    return p;
}

/* Tolerances for FP32 arithmetic against float64: each output is a chain of T updates, each a
 * length-D dot product (error ~ sqrt(D) * 6e-8 relative), so 1e-5 relative in the L2 norm over a
 * tensor leaves a wide margin for T <= 10 while catching any indexing or ordering mistake (those
 * give errors of order 1). */
#define TOL_REL_L2 1e-5
#define TOL_MAX 1e-4

/* o or states of a case against the float64 reference values `ref` laid out as ref_view. */
static inline void compare_output(const char *what, const char *label, int case_index, const test_tensor *tb,
                           const double *ref, const gdn_tensor *ref_view)
{
    gdn_tensor r = *ref_view;
    r.data = (void *)ref;
    test_compare_output(what, label, case_index, tb, &r, TOL_REL_L2, TOL_MAX);
}

/* A view of one token (t) or one sequence (b) of a [.., T, B] tensor, by pointer offset. */
static inline gdn_tensor slice(gdn_tensor t, int dim, int64_t index)
{
    t.data = (char *)t.data + (size_t)index * t.nb[dim];
    t.ne[dim] = 1;
    return t;
}

static inline int download_bytes(gdn_backend *backend, const gdn_tensor *t, unsigned char **out)
{
    size_t n = gdn_tensor_span(t);
    *out = malloc(n);
    return *out && gdn_backend_download(backend, *out, t->data, n) == GDN_OK;
}

/* Bitwise equality of two views of the same shape and dtype (host copies of their spans). */
static inline int same_bits(const gdn_tensor *a, const unsigned char *a_bytes, const gdn_tensor *b,
                     const unsigned char *b_bytes)
{
    const size_t size = gdn_dtype_size(a->dtype);
    int64_t idx[GDN_MAX_DIMS] = {0};
    do {
        if (memcmp(a_bytes + test_offset_of(a, idx), b_bytes + test_offset_of(b, idx), size) != 0)
            return 0;
    } while (test_next_index(a, idx));
    return 1;
}

#endif
