/* test_varlen.c: variable-length batches of the Gated DeltaNet op (gdn_gated_delta_net_varlen)
 * on every backend present: sequences of 1, 70 and 33 tokens (one shorter than K) in one call,
 * token by token and in the chunked form, against the float64 recurrence per sequence and bit for
 * bit against separate calls on separate buffers; the same through state and snapshot indices;
 * bad offsets, a wrong snapshot count and a slot written twice refused with nothing written. */
#include "gdn_op_cases.h"

#include <stdio.h>

enum { NSEQ = 3, HK = 1, HV = 2, DIM = 32, KSNAP = 2 };
static const int32_t offsets[NSEQ + 1] = {0, 1, 71, 104};
#define TTOT 104
#define NSNAP 2 /* min(K, longest) */

/* The call's tensors: tokens [1, TTOT, ...], state [NSEQ, HV, D, D], states [NSNAP, NSEQ, ...]. */
typedef struct varlen_tensors {
    test_tensor t[N_TENSORS];
} varlen_tensors;

static int varlen_init(varlen_tensors *vt, test_layout lay, uint64_t seed)
{
    const int64_t ne_qk[] = {DIM, HK, TTOT, 1}, ne_v[] = {DIM, HV, TTOT, 1}, ne_gate[] = {HV, TTOT, 1};
    const int64_t ne_state[] = {DIM, DIM, HV, NSEQ}, ne_states[] = {DIM, DIM, HV, NSEQ, NSNAP};
    const int64_t *ne[N_TENSORS] = {ne_qk, ne_qk, ne_v, ne_gate, ne_gate, ne_state, ne_v, ne_states};
    const int dims[N_TENSORS] = {4, 4, 4, 3, 3, 4, 4, 5};
    int ok = 1;
    for (int i = 0; i < N_TENSORS; i++)
        ok = ok && test_tensor_init(&vt->t[i], lay, GDN_DTYPE_F32, dims[i], ne[i]);
    test_rng rng;
    test_rng_seed(&rng, seed);
    for (int i = Q; ok && i <= STATE; i++)
        fill(&vt->t[i], &rng, i, DIM, 1, 0);
    return ok;
}

static void varlen_free(varlen_tensors *vt)
{
    for (int i = 0; i < N_TENSORS; i++)
        test_tensor_free(&vt->t[i]);
}

static gdn_gated_delta_net_args varlen_args(const varlen_tensors *vt)
{
    gdn_gated_delta_net_args a;
    memset(&a, 0, sizeof a);
    a.q = test_device_view(&vt->t[Q]), a.k = test_device_view(&vt->t[K_]), a.v = test_device_view(&vt->t[V]);
    a.g = test_device_view(&vt->t[G]), a.beta = test_device_view(&vt->t[BETA]);
    a.state = test_device_view(&vt->t[STATE]);
    a.o = test_device_view(&vt->t[O]), a.states = test_device_view(&vt->t[STATES]);
    return a;
}

static gdn_tensor tokens_of(gdn_tensor t, int dim, int64_t first, int64_t count)
{
    t.data = (char *)t.data + (size_t)first * t.nb[dim];
    t.ne[dim] = count;
    return t;
}

/* One varlen call, then per sequence: the float64 reference on the host views, and the same call
 * alone on buffers of its own (bit for bit). */
static void check_call(const test_backend *tb, test_layout lay, int chunk)
{
    varlen_tensors vt;
    int ok = varlen_init(&vt, lay, 500 + (uint64_t)lay);
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&vt.t[i], tb->backend);
    gdn_gated_delta_net_params p = gdn_gated_delta_net_params_default();
    p.n_snapshots = KSNAP, p.l2norm = 1, p.chunk = chunk, p.broadcast = GDN_BROADCAST_INTERLEAVED;
    gdn_gated_delta_net_args a = varlen_args(&vt);
    gdn_status st = ok ? gdn_gated_delta_net_varlen(tb->backend, &p, &a, offsets, NSEQ) : GDN_ERROR_BACKEND;
    CHECK(st == GDN_OK, "%s varlen (chunk %d): %s", tb->label, chunk, gdn_error_detail());
    unsigned char *o = NULL, *s = NULL;
    ok = ok && st == GDN_OK && download_bytes(tb->backend, &a.o, &o) && download_bytes(tb->backend, &a.states, &s);
    double d2 = 0, r2 = 0;
    int same = 1, untouched = 1;
    for (int64_t b = 0; ok && b < NSEQ; b++) {
        const int64_t first = offsets[b], len = offsets[b + 1] - offsets[b], nb = len < KSNAP ? len : KSNAP;
        /* the reference on the host views of sequence b */
        const int64_t ne_o[] = {DIM, HV, len, 1}, ne_s[] = {DIM, DIM, HV, 1, nb};
        gdn_tensor o_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 4, ne_o);
        gdn_tensor s_ref = gdn_tensor_contiguous(NULL, GDN_DTYPE_F64, 5, ne_s);
        o_ref.data = calloc(1, gdn_tensor_span(&o_ref));
        s_ref.data = calloc(1, gdn_tensor_span(&s_ref));
        gdn_gated_delta_net_args r;
        memset(&r, 0, sizeof r);
        r.q = tokens_of(vt.t[Q].host, 2, first, len), r.k = tokens_of(vt.t[K_].host, 2, first, len);
        r.v = tokens_of(vt.t[V].host, 2, first, len), r.g = tokens_of(vt.t[G].host, 1, first, len);
        r.beta = tokens_of(vt.t[BETA].host, 1, first, len), r.state = tokens_of(vt.t[STATE].host, 3, b, 1);
        r.o = o_ref, r.states = s_ref;
        ok = o_ref.data && s_ref.data && gdn_gated_delta_net_reference(&p, &r) == GDN_OK;
        /* the same sequence alone on buffers of its own */
        gdn_gated_delta_net_args alone = r;
        test_buffer buf[N_TENSORS];
        memset(buf, 0, sizeof buf);
        const gdn_tensor *host[N_TENSORS] = {&r.q, &r.k, &r.v, &r.g, &r.beta, &r.state, NULL, NULL};
        gdn_tensor *dev[N_TENSORS] = {&alone.q, &alone.k, &alone.v, &alone.g, &alone.beta, &alone.state, &alone.o,
                                      &alone.states};
        const int64_t ne_o32[] = {DIM, HV, len, 1}, ne_s32[] = {DIM, DIM, HV, 1, nb};
        alone.o = gdn_tensor_contiguous(NULL, GDN_DTYPE_F32, 4, ne_o32);
        alone.states = gdn_tensor_contiguous(NULL, GDN_DTYPE_F32, 5, ne_s32);
        for (int i = 0; ok && i < N_TENSORS; i++) {
            const size_t bytes = host[i] ? gdn_tensor_span(host[i]) : gdn_tensor_span(dev[i]);
            const size_t offset = host[i] ? (size_t)((char *)host[i]->data - (char *)vt.t[i].host.data) : 0;
            ok = test_buffer_alloc(&buf[i], tb->backend, bytes) &&
                 (host[i] == NULL || test_buffer_upload(&buf[i], vt.t[i].host_bytes + offset, bytes));
            dev[i]->data = test_buffer_data(&buf[i]);
        }
        ok = ok && gdn_gated_delta_net(tb->backend, &p, &alone) == GDN_OK;
        unsigned char *o1 = NULL, *s1 = NULL;
        ok = ok && download_bytes(tb->backend, &alone.o, &o1) && download_bytes(tb->backend, &alone.states, &s1);
        for (int64_t t = 0; ok && t < len; t++)
            for (int64_t h = 0; h < HV; h++)
                for (int64_t j = 0; j < DIM; j++) {
                    float x, y;
                    memcpy(&x, o + test_offset_of(&a.o, (int64_t[GDN_MAX_DIMS]){j, h, first + t, 0, 0, 0}), 4);
                    memcpy(&y, o1 + test_offset_of(&alone.o, (int64_t[GDN_MAX_DIMS]){j, h, t, 0, 0, 0}), 4);
                    const double ref = ((const double *)o_ref.data)[(t * HV + h) * DIM + j];
                    same = same && memcmp(&x, &y, 4) == 0;
                    d2 += (x - ref) * (x - ref), r2 += ref * ref;
                }
        for (int64_t sn = 0; ok && sn < NSNAP; sn++)
            for (int64_t h = 0; h < HV; h++)
                for (int64_t j = 0; j < DIM; j++)
                    for (int64_t i = 0; i < DIM; i++) {
                        const int64_t at[GDN_MAX_DIMS] = {i, j, h, b, sn, 0};
                        const size_t off = test_offset_of(&a.states, at);
                        if (sn >= nb) { /* a snapshot the short sequence does not write */
                            untouched = untouched && memcmp(s + off, vt.t[STATES].host_bytes + off, 4) == 0;
                            continue;
                        }
                        float x, y;
                        memcpy(&x, s + off, 4);
                        memcpy(&y, s1 + test_offset_of(&alone.states, (int64_t[GDN_MAX_DIMS]){i, j, h, 0, sn, 0}), 4);
                        const double ref = ((const double *)s_ref.data)[((sn * HV + h) * DIM + j) * DIM + i];
                        same = same && memcmp(&x, &y, 4) == 0;
                        d2 += (x - ref) * (x - ref), r2 += ref * ref;
                    }
        CHECK(ok, "%s varlen sequence %lld: %s", tb->label, (long long)b, gdn_error_detail());
        free(o1), free(s1), free(o_ref.data), free(s_ref.data);
        for (int i = 0; i < N_TENSORS; i++)
            test_buffer_free(&buf[i]);
    }
    CHECK(same, "%s varlen (chunk %d, %s): differs from the sequences run alone", tb->label, chunk,
          test_layout_names[lay]);
    CHECK(untouched, "%s varlen: a snapshot slot of the 1-token sequence was written", tb->label);
    CHECK(sqrt(d2 / (r2 > 0 ? r2 : 1)) < 2e-5, "%s varlen (chunk %d): rel L2 error %.3g against the reference",
          tb->label, chunk, sqrt(d2 / (r2 > 0 ? r2 : 1)));
    printf("  %-10s varlen lengths 1/70/33, chunk %d, %s: rel L2 %.2g\n", tb->label, chunk, test_layout_names[lay],
           sqrt(d2 / (r2 > 0 ? r2 : 1)));
    free(o), free(s);
    varlen_free(&vt);
}

/* Refusals, each with the outputs unchanged afterwards. */
static void check_rejections(const test_backend *tb)
{
    varlen_tensors vt;
    int ok = varlen_init(&vt, LAYOUT_CONTIGUOUS, 77);
    for (int i = 0; ok && i < N_TENSORS; i++)
        ok = test_tensor_upload(&vt.t[i], tb->backend);
    gdn_gated_delta_net_params p = gdn_gated_delta_net_params_default();
    p.n_snapshots = KSNAP;
    const int32_t bad_first[NSEQ + 1] = {1, 1, 71, 104}, bad_order[NSEQ + 1] = {0, 71, 71, 104};
    const int32_t bad_total[NSEQ + 1] = {0, 1, 71, 103};
    const int32_t *bad[3] = {bad_first, bad_order, bad_total};
    const char *says[5] = {"offsets[0]=1", "would have no token", "offsets[3]=103", "N = min(K", "one writer"};
    for (int m = 0; ok && m < 5; m++) {
        gdn_gated_delta_net_args a = varlen_args(&vt);
        test_tensor index;
        int32_t slots[NSEQ] = {0, 2, 0}; /* m == 4: sequences 0 and 2 write slot 0 */
        const int64_t ne_index[1] = {NSEQ};
        int have_index = 0;
        if (m == 3)
            a.states.ne[4] = 1; /* one snapshot slot where 2 are due */
        if (m == 4) {
            have_index = test_tensor_init(&index, LAYOUT_CONTIGUOUS, GDN_DTYPE_I32, 1, ne_index);
            memcpy(index.host_bytes, slots, sizeof slots);
            have_index = have_index && test_tensor_upload(&index, tb->backend);
            a.states_index = test_device_view(&index);
        }
        const gdn_status st = gdn_gated_delta_net_varlen(tb->backend, &p, &a, m < 3 ? bad[m] : offsets, NSEQ);
        CHECK(st != GDN_OK && strstr(gdn_error_detail(), says[m]) != NULL,
              "%s varlen refusal %d gave %d (%s), expected a message with '%s'", tb->label, m, (int)st,
              gdn_error_detail(), says[m]);
        unsigned char *o = malloc(vt.t[O].bytes), *s = malloc(vt.t[STATES].bytes);
        CHECK(o && s && test_buffer_download(&vt.t[O].device, o) && test_buffer_download(&vt.t[STATES].device, s) &&
                  memcmp(o, vt.t[O].host_bytes, vt.t[O].bytes) == 0 &&
                  memcmp(s, vt.t[STATES].host_bytes, vt.t[STATES].bytes) == 0,
              "%s varlen refusal %d wrote an output", tb->label, m);
        free(o), free(s);
        if (have_index)
            test_tensor_free(&index);
    }
    varlen_free(&vt);
}

int main(void)
{
    test_backend backends[8];
    int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        check_call(&backends[b], LAYOUT_CONTIGUOUS, -1);
        check_call(&backends[b], LAYOUT_CONTIGUOUS, 16);
        check_call(&backends[b], LAYOUT_PADDED, 16);
        check_call(&backends[b], LAYOUT_PERMUTED, 0);
        check_rejections(&backends[b]);
    }
    test_backends_close(backends, n);
    return test_finish("test_varlen");
}
