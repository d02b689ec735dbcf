/* replay_bench.c: time gdn_gated_delta_net_replay against the recurrent op at the Qwen3.6
 * MTP-verify shape (T=4, Hk 16, Hv 32, D 128, ring L=8) on CUDA, through the public API only.
 * Usage: gdn_replay_bench [B (default 64, at most 256)] [l2norm 0|1 (default 1)].
 * Each variant: 10 calls recorded as one CUDA graph, replayed 7 times; median time per call,
 * and the bandwidth of the state bytes each variant must move (S = B states). */
#include "gdn.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T = 4, HK = 16, HV = 32, D = 128, L = 8, CALLS = 10, REPS = 7, BMAX = 256 };
static int B = 64;

static gdn_backend *be;
static void *dev(size_t bytes, int fill)
{
    void *p = NULL;
    if (gdn_backend_alloc(be, bytes, &p) != GDN_OK) { fprintf(stderr, "alloc: %s\n", gdn_error_detail()); exit(1); }
    float *h = malloc(bytes);
    for (size_t i = 0; i < bytes / 4; i++)
        h[i] = fill == 0 ? 0.01f * (float)((i * 2654435761u) % 200 - 100) / 100.f
             : fill == 1 ? -0.05f - 0.001f * (float)(i % 50) : 0.5f;
    gdn_backend_upload(be, p, h, bytes);
    free(h);
    return p;
}
static gdn_tensor view(void *p, gdn_dtype t, int n, int64_t a, int64_t b, int64_t c, int64_t d, int64_t e)
{
    int64_t ne[5] = {a, b, c, d, e};
    return gdn_tensor_contiguous(p, t, n, ne);
}
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

static double time_variant(int replay, const gdn_gated_delta_net_params *p, const gdn_gated_delta_net_args *a,
                           const gdn_gated_delta_net_replay_args *r)
{
    gdn_recording *rec = NULL;
    gdn_status st = gdn_backend_record_begin(be);
    for (int i = 0; st == GDN_OK && i < CALLS; i++)
        st = replay ? gdn_gated_delta_net_replay(be, p, r) : gdn_gated_delta_net(be, p, a);
    if (gdn_backend_record_end(be, &rec) != GDN_OK || st != GDN_OK) { fprintf(stderr, "record: %s\n", gdn_error_detail()); exit(1); }
    gdn_recording_replay(rec);
    double ms[REPS];
    for (int i = 0; i < REPS; i++) {
        gdn_backend_timer_start(be);
        gdn_recording_replay(rec);
        gdn_backend_timer_stop(be, &ms[i]);
    }
    gdn_recording_free(rec);
    qsort(ms, REPS, sizeof ms[0], cmp);
    return ms[REPS / 2] * 1000.0 / CALLS;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        B = atoi(argv[1]);
    if (B < 1 || B > BMAX) {
        fprintf(stderr, "gdn_replay_bench: B=%d, expected 1..%d\n", B, BMAX);
        return 2;
    }
    const int l2 = argc > 2 ? atoi(argv[2]) : 1;
    if (gdn_backend_init(&be, GDN_BACKEND_CUDA, NULL) != GDN_OK) { fprintf(stderr, "%s\n", gdn_error_detail()); return 1; }
    const size_t S1 = (size_t)HV * D * D * 4, S = S1 * B;
    void *q = dev((size_t)B * T * HK * D * 4, 0), *k = dev((size_t)B * T * HK * D * 4, 0), *v = dev((size_t)B * T * HV * D * 4, 0);
    void *g = dev((size_t)B * T * HV * 4, 1), *beta = dev((size_t)B * T * HV * 4, 2), *o = dev((size_t)B * T * HV * D * 4, 0);
    void *pool = dev(S, 0), *states = dev(4 * S, 0);
    void *rk = dev((size_t)B * L * HK * D * 4, 0), *rv = dev((size_t)B * L * HV * D * 4, 0);
    void *rg = dev((size_t)B * L * HV * 4, 1);
    static int32_t hidx[BMAX], hfold[3][BMAX * 3];
    for (int b = 0; b < B; b++) {
        hidx[b] = b;
        int f[3][3] = {{5, 3, 1}, {5, 3, 0}, {5, 0, 0}};
        for (int v2 = 0; v2 < 3; v2++) memcpy(&hfold[v2][b * 3], f[v2], sizeof f[v2]);
    }
    void *idx = NULL, *fold[3];
    gdn_backend_alloc(be, (size_t)B * 4, &idx);
    gdn_backend_upload(be, idx, hidx, (size_t)B * 4);
    for (int v2 = 0; v2 < 3; v2++) { gdn_backend_alloc(be, (size_t)B * 12, &fold[v2]); gdn_backend_upload(be, fold[v2], hfold[v2], (size_t)B * 12); }

    gdn_gated_delta_net_params p = gdn_gated_delta_net_params_default();
    p.l2norm = l2;
    gdn_gated_delta_net_args a;
    memset(&a, 0, sizeof a);
    a.q = view(q, GDN_DTYPE_F32, 4, D, HK, T, B, 1);
    a.k = view(k, GDN_DTYPE_F32, 4, D, HK, T, B, 1);
    a.v = view(v, GDN_DTYPE_F32, 4, D, HV, T, B, 1);
    a.g = view(g, GDN_DTYPE_F32, 3, HV, T, B, 1, 1);
    a.beta = view(beta, GDN_DTYPE_F32, 3, HV, T, B, 1, 1);
    a.o = view(o, GDN_DTYPE_F32, 4, D, HV, T, B, 1);
    a.state = view(pool, GDN_DTYPE_F32, 4, D, D, HV, B, 1);
    a.state_index = view(idx, GDN_DTYPE_I32, 1, B, 1, 1, 1, 1);
    /* A: in place, K = 1 (read S, write S) */
    a.states = view(pool, GDN_DTYPE_F32, 5, D, D, HV, B, 1);
    p.n_snapshots = 1;
    double tA = time_variant(0, &p, &a, NULL);
    /* B: K = 4 snapshots into a separate buffer (read S, write 4S) */
    a.states = view(states, GDN_DTYPE_F32, 5, D, D, HV, B, 4);
    p.n_snapshots = 4;
    double tB = time_variant(0, &p, &a, NULL);
    gdn_gated_delta_net_replay_args r = {a.q, a.k, a.v, a.g, a.beta, a.state, a.state_index,
        view(rk, GDN_DTYPE_F32, 4, D, HK, L, B, 1), view(rv, GDN_DTYPE_F32, 4, D, HV, L, B, 1),
        view(rg, GDN_DTYPE_F32, 3, HV, L, B, 1, 1),
        view(fold[0], GDN_DTYPE_I32, 2, 3, B, 1, 1, 1), a.o};
    double tr[3];
    for (int v2 = 0; v2 < 3; v2++) {
        r.fold.data = fold[v2];
        tr[v2] = time_variant(1, &p, NULL, &r);
    }
    const double MiB = 1024.0 * 1024.0;
    printf("%s; B=%d T=%d Hk=%d Hv=%d D=%d L=%d, l2norm %d; state S = %.0f MiB; us per call (median, 10-call CUDA graph)\n",
           gdn_backend_name(be), B, T, HK, HV, D, L, l2, S / MiB);
    printf("recurrent K=1 in place (read S, write S)      %8.1f us  %6.0f GB/s\n", tA, 2 * S / tA / 1e3);
    printf("recurrent K=4 snapshots (read S, write 4S)    %8.1f us  %6.0f GB/s\n", tB, 5 * S / tB / 1e3);
    printf("replay fold 3 + commit (read S, write S)      %8.1f us  %6.0f GB/s\n", tr[0], 2 * S / tr[0] / 1e3);
    printf("replay fold 3, no commit (read S)             %8.1f us  %6.0f GB/s\n", tr[1], S / tr[1] / 1e3);
    printf("replay fold 0, no commit (read S)             %8.1f us  %6.0f GB/s\n", tr[2], S / tr[2] / 1e3);
    return 0;
}
