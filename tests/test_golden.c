/* test_golden.c: every backend present against golden vectors made by an implementation we did
 * not write (Hugging Face transformers' torch reference; scripts/make_golden.py), stored in
 * tests/golden/. With `--compare OUT.safetensors GOLDEN.safetensors` it instead checks the output
 * file of `gdn op` against a golden file (used by test_cli.sh). */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *golden_files[] = {
    "gdn_golden_interleaved_l2.safetensors",
    "gdn_golden_tiled_plain.safetensors",
    "gdn_golden_decode_d128.safetensors",
    "gdn_golden_k_above_t.safetensors",
    "gdn_golden_prefill_t200.safetensors",
    "gdn_golden_prefill_t150.safetensors",
};

/* Both sides are float32 computations of the same function (transformers in torch, ours), each
 * within ~1e-6 relative of the exact result, so 2e-5 relative (L2 over the tensor) is ample; our
 * chunked form included (~5e-6 measured, docs/PERF.md). transformers' chunked algorithm rounds
 * differently (a triangular solve per chunk): 1e-4. */
#define TOL_RECURRENT 2e-5
#define TOL_CHUNKED 1e-4

/* Relative L2 distance of two contiguous F32 arrays of n elements; NaN if either has a NaN. */
static double rel_l2(const float *x, const float *ref, int64_t n)
{
    double d2 = 0, r2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)ref[i];
        d2 += d * d;
        r2 += (double)ref[i] * ref[i];
    }
    return sqrt(d2 / (r2 > 0 ? r2 : 1));
}

static int same_counts(const gdn_tensor *a, const gdn_tensor *b)
{
    if (a->n_dims != b->n_dims)
        return 0;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (a->ne[i] != b->ne[i])
            return 0;
    return 1;
}

static void compare(const char *what, const char *file, const gdn_tensor *got, const float *got_data,
                    const gdn_tensor *want, double tol)
{
    CHECK(same_counts(got, want), "%s %s: shape differs from the golden tensor", file, what);
    if (!same_counts(got, want))
        return;
    double err = rel_l2(got_data, want->data, gdn_tensor_count(want));
    CHECK(err < tol, "%s %s: rel L2 error %.3g (tolerance %.1g)", file, what, err, tol);
    printf("    %-16s rel L2 error %.3g\n", what, err);
}

static gdn_status read_params(const gdn_safetensors *f, gdn_gated_delta_net_params *p)
{
    *p = gdn_gated_delta_net_params_default();
    const char *K = gdn_safetensors_metadata(f, "K"), *bc = gdn_safetensors_metadata(f, "broadcast");
    const char *l2 = gdn_safetensors_metadata(f, "l2norm");
    if (!K || !bc || !l2)
        return GDN_ERROR_NOT_FOUND;
    p->n_snapshots = atoi(K);
    p->broadcast = strcmp(bc, "interleaved") == 0 ? GDN_BROADCAST_INTERLEAVED : GDN_BROADCAST_TILED;
    p->l2norm = atoi(l2);
    return GDN_OK;
}

/* Run the golden file's inputs through one backend and compare with its expected outputs;
 * `chunk` is params.chunk (0: the backend's choice; 32: the chunked form; -1: token by token). */
static void run_golden(const test_backend *tb, const char *name, const gdn_safetensors *f, int chunk)
{
    static const char *input_names[6] = {"q", "k", "v", "g", "beta", "state"};
    gdn_tensor in[6], expected_o, expected_states, expected_chunk;
    gdn_gated_delta_net_params p;
    int ok = read_params(f, &p) == GDN_OK;
    for (int i = 0; ok && i < 6; i++)
        ok = gdn_safetensors_get(f, input_names[i], &in[i]) == GDN_OK;
    ok = ok && gdn_safetensors_get(f, "expected_o", &expected_o) == GDN_OK &&
         gdn_safetensors_get(f, "expected_states", &expected_states) == GDN_OK &&
         gdn_safetensors_get(f, "expected_o_chunk", &expected_chunk) == GDN_OK;
    CHECK(ok, "%s: missing tensors or metadata", name);
    if (!ok)
        return;
    p.chunk = chunk;

    /* Stage inputs and outputs on the backend (guarded buffers). */
    test_buffer bufs[8];
    memset(bufs, 0, sizeof bufs);
    gdn_tensor t[8];
    for (int i = 0; i < 6; i++)
        t[i] = in[i];
    t[6] = expected_o;
    t[7] = expected_states;
    for (int i = 0; ok && i < 8; i++) {
        size_t bytes = gdn_tensor_span(&t[i]);
        ok = test_buffer_alloc(&bufs[i], tb->backend, bytes) && (i >= 6 || test_buffer_upload(&bufs[i], t[i].data, bytes));
        t[i].data = test_buffer_data(&bufs[i]);
    }
    gdn_gated_delta_net_args a = {t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], {0}, {0}}; /* no indices */
    gdn_status st = ok ? gdn_gated_delta_net(tb->backend, &p, &a) : GDN_ERROR_OUT_OF_MEMORY;
    CHECK(st == GDN_OK, "%s %s: %s", tb->label, name, gdn_error_detail());
    float *o = malloc(gdn_tensor_span(&expected_o)), *s = malloc(gdn_tensor_span(&expected_states));
    if (st == GDN_OK && o && s) {
        int guards = test_buffer_download(&bufs[6], o) && test_buffer_download(&bufs[7], s);
        CHECK(guards, "%s %s: guard region overwritten", tb->label, name);
        const char *form = chunk > 0 ? " (chunked form)" : chunk < 0 ? " (token by token)" : "";
        printf("  %s %s%s\n", tb->label, name, form);
        compare("o", name, &expected_o, o, &expected_o, TOL_RECURRENT);
        compare("states", name, &expected_states, s, &expected_states, TOL_RECURRENT);
        compare("o (vs chunked)", name, &expected_chunk, o, &expected_chunk, TOL_CHUNKED);
    }
    free(o);
    free(s);
    for (int i = 0; i < 8; i++)
        test_buffer_free(&bufs[i]);
}

/* `gdn op` output file against a golden file. */
static int compare_files(const char *out_path, const char *golden_path)
{
    gdn_safetensors *out = NULL, *golden = NULL;
    int ok = gdn_safetensors_open(&out, out_path) == GDN_OK && gdn_safetensors_open(&golden, golden_path) == GDN_OK;
    CHECK(ok, "cannot open %s or %s: %s", out_path, golden_path, gdn_error_detail());
    gdn_tensor o, s, eo, es;
    if (ok) {
        ok = gdn_safetensors_get(out, "o", &o) == GDN_OK && gdn_safetensors_get(out, "states", &s) == GDN_OK &&
             gdn_safetensors_get(golden, "expected_o", &eo) == GDN_OK &&
             gdn_safetensors_get(golden, "expected_states", &es) == GDN_OK;
        CHECK(ok, "%s: missing o or states", out_path);
    }
    if (ok) {
        compare("o", out_path, &o, o.data, &eo, TOL_RECURRENT);
        compare("states", out_path, &s, s.data, &es, TOL_RECURRENT);
    }
    gdn_safetensors_free(out);
    gdn_safetensors_free(golden);
    return test_finish("test_golden --compare");
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--compare") == 0)
        return compare_files(argv[2], argv[3]);
    test_backend backends[8];
    int n = test_backends_open(backends, 8);
    for (size_t i = 0; i < sizeof golden_files / sizeof golden_files[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/golden/%s", GDN_TEST_DATA_DIR, golden_files[i]);
        gdn_safetensors *f = NULL;
        gdn_status st = gdn_safetensors_open(&f, path);
        CHECK(st == GDN_OK, "%s: %s", path, gdn_error_detail());
        if (st != GDN_OK)
            continue;
        const char *source = gdn_safetensors_metadata(f, "source");
        printf("%s (%s)\n", golden_files[i], source ? source : "no source recorded");
        gdn_tensor q;
        const int prefill = gdn_safetensors_get(f, "q", &q) == GDN_OK && q.ne[2] > 64;
        for (int b = 0; b < n; b++) {
            run_golden(&backends[b], golden_files[i], f, 0);
            if (prefill) { /* both forms, whatever the backend would choose */
                run_golden(&backends[b], golden_files[i], f, -1);
                run_golden(&backends[b], golden_files[i], f, 32);
            }
        }
        gdn_safetensors_free(f);
    }
    test_backends_close(backends, n);
    return test_finish("test_golden");
}
