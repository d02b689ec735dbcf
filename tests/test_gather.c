/* test_gather.c: the gather-elision pass (src/passes/gather_elision.c) on every backend present,
 * on graphs in llama.cpp's decode pattern: get_rows(cache rows, index) -> gated_delta_net (K
 * snapshots into an intermediate) -> cpy of the snapshots into a view of the same cache. Run with
 * no pass, copy elision only, gather elision only and both: results byte-identical, node counts
 * as expected (both passes leave the GDN node alone), the result against the float64 reference;
 * then each refusal of the pass by its logged reason. */
#include "harness.h"
#include "core/gdn_op.h"
#include "core/graph.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The decode step: S cache slots are read through the index, the K*B snapshot rows that follow
 * them in the same cache are written. One cache row holds one state (Hv*D*D floats), then pad. */
enum { S = 5, B = 3, T = 2, K = 2, HK = 1, HV = 2, D = 32, ROW = HV * D * D };
static const int32_t slots[B] = {4, 0, 4};
/* In place (llama.cpp's cache): sequence b reads row b, which is its snapshot 0 (rows s*B + b). */
static const int32_t slots_in_place[B] = {0, 1, 2};

typedef enum variant {
    VARIANT_PLAIN,          /* the pattern as llama.cpp builds it */
    VARIANT_TWO_READERS,    /* the gathered rows are also read by an rms_norm */
    VARIANT_OUTPUT,         /* the gathered rows are a graph output */
    VARIANT_NOT_INDEXABLE,  /* the gathered rows feed only an rms_norm (no indexed_src) */
    VARIANT_BETWEEN_WRITES, /* a cpy into the table runs between the gather and the GDN op */
    VARIANT_IN_PLACE,       /* the snapshots are copied over the slots read: row b is b's snapshot 0,
                               and the index is declared GDN_GRAPH_OWN_SLOT_INDEX */
    VARIANT_IN_PLACE_UNDECLARED, /* the same without the declaration: the gather must stay */
} variant;

#define IN_PLACE(var) ((var) == VARIANT_IN_PLACE || (var) == VARIANT_IN_PLACE_UNDECLARED)

/* Leaves in backend memory (guarded), with their host contents. */
enum { L_Q, L_K, L_V, L_G, L_BETA, L_INDEX, L_CACHE, L_FRESH, N_LEAVES };

typedef struct step {
    gdn_graph *g;
    test_buffer buf[N_LEAVES];
    gdn_tensor host[N_LEAVES]; /* host views (data: malloc'ed initial contents) */
    gdn_tensor_id leaf[N_LEAVES], o;
    char log[4096];
    int n_log;
} step;

static void collect_log(void *user, const char *message)
{
    step *s = user;
    const size_t used = strlen(s->log);
    snprintf(s->log + used, sizeof s->log - used, "%s\n", message);
    s->n_log++;
}

static gdn_tensor host_tensor(gdn_dtype dtype, int n, const int64_t *ne, size_t row_pad)
{
    gdn_tensor t = gdn_tensor_contiguous(NULL, dtype, n, ne);
    if (row_pad > 0) { /* a 2-D cache with padded rows */
        t.nb[1] = (size_t)(ne[0] + (int64_t)row_pad) * sizeof(float);
        for (int i = 2; i < GDN_MAX_DIMS; i++)
            t.nb[i] = t.nb[1] * (size_t)ne[1];
    }
    t.data = malloc(gdn_tensor_span(&t));
    return t;
}

static void step_free(step *s)
{
    gdn_graph_free(s->g);
    for (int i = 0; i < N_LEAVES; i++) {
        test_buffer_free(&s->buf[i]);
        free(s->host[i].data);
    }
    memset(s, 0, sizeof *s);
}

static gdn_tensor_id add_view(step *s, gdn_tensor_id base, size_t offset, int n, const int64_t *ne, const size_t *nb)
{
    gdn_tensor_id id = -1;
    gdn_status st = gdn_graph_view(s->g, base, offset, n, ne, nb, &id);
    CHECK(st == GDN_OK, "view of t%d: %s", (int)base, gdn_error_detail());
    return id;
}

static int add_node(step *s, gdn_op_kind kind, const gdn_op_params *p, int n_src, const gdn_tensor_id *src, int n_dst,
                    const gdn_tensor_id *dst)
{
    gdn_status st = gdn_graph_op(s->g, kind, p, n_src, src, n_dst, dst);
    CHECK(st == GDN_OK, "node %s: %s", gdn_op_traits_of(kind)->name, gdn_error_detail());
    return st == GDN_OK;
}

/* Build the step on `backend` (NULL: host memory, build only). Same inputs every time. */
static int build_step(step *s, gdn_backend *backend, variant var, size_t row_pad)
{
    memset(s, 0, sizeof *s);
    test_rng rng;
    test_rng_seed(&rng, 2024);
    const int64_t ne_qk[] = {D, HK, T, B}, ne_v[] = {D, HV, T, B}, ne_gate[] = {HV, T, B}, ne_index[] = {B};
    const int64_t ne_cache[] = {ROW, S + K * B}, ne_fresh[] = {ROW};
    s->host[L_Q] = host_tensor(GDN_DTYPE_F32, 4, ne_qk, 0);
    s->host[L_K] = host_tensor(GDN_DTYPE_F32, 4, ne_qk, 0);
    s->host[L_V] = host_tensor(GDN_DTYPE_F32, 4, ne_v, 0);
    s->host[L_G] = host_tensor(GDN_DTYPE_F32, 3, ne_gate, 0);
    s->host[L_BETA] = host_tensor(GDN_DTYPE_F32, 3, ne_gate, 0);
    s->host[L_INDEX] = host_tensor(GDN_DTYPE_I32, 1, ne_index, 0);
    s->host[L_CACHE] = host_tensor(GDN_DTYPE_F32, 2, ne_cache, row_pad);
    s->host[L_FRESH] = host_tensor(GDN_DTYPE_F32, 1, ne_fresh, 0);
    for (int i = 0; i < N_LEAVES; i++)
        if (s->host[i].data == NULL)
            return 0;
    for (int i = 0; i < N_LEAVES; i++) {
        const size_t n = gdn_tensor_span(&s->host[i]) / 4;
        for (size_t e = 0; e < n; e++) {
            float x = (float)test_rng_normal(&rng);
            if (i == L_G)
                x = (float)-exp(test_rng_uniform(&rng, log(1e-3), log(5.0)));
            else if (i == L_BETA)
                x = (float)test_rng_uniform(&rng, 0.0, 1.0);
            else if (i == L_K || i == L_CACHE)
                x *= (float)(i == L_K ? 1.0 / sqrt((double)D) : 0.1);
            ((float *)s->host[i].data)[e] = x;
        }
    }
    memcpy(s->host[L_INDEX].data, IN_PLACE(var) ? slots_in_place : slots, sizeof slots);

    static const char *names[N_LEAVES] = {"q", "k", "v", "g", "beta", "index", "cache", "fresh"};
    if (gdn_graph_init(&s->g) != GDN_OK)
        return 0;
    for (int i = 0; i < N_LEAVES; i++) {
        gdn_tensor view = s->host[i];
        const size_t bytes = gdn_tensor_span(&view);
        if (backend != NULL) {
            if (!test_buffer_alloc(&s->buf[i], backend, bytes) || !test_buffer_upload(&s->buf[i], view.data, bytes))
                return 0;
            view.data = test_buffer_data(&s->buf[i]);
        }
        uint32_t flags = i == L_CACHE ? GDN_GRAPH_PERSISTENT : GDN_GRAPH_INPUT;
        if (i == L_INDEX && var == VARIANT_IN_PLACE)
            flags |= GDN_GRAPH_OWN_SLOT_INDEX; /* sequence b reads slot b, which only it writes */
        if (gdn_graph_leaf(s->g, names[i], &view, flags, &s->leaf[i]) != GDN_OK)
            return 0;
    }
    const size_t row_bytes = s->host[L_CACHE].nb[1];
    /* table: the S slots read, as rows; snapshots: K groups of B rows after them */
    const int64_t ne_table[] = {ROW, S}, ne_rows[] = {ROW, B};
    const size_t nb_table[] = {sizeof(float), row_bytes};
    const gdn_tensor_id table = add_view(s, s->leaf[L_CACHE], 0, 2, ne_table, nb_table);
    const int64_t ne_snap[] = {D, D, HV, B, K};
    const size_t nb_snap[] = {4, 4 * D, 4 * D * D, row_bytes, row_bytes * B};
    const size_t snap_offset = IN_PLACE(var) ? 0 : S * row_bytes;
    const gdn_tensor_id cache_snap = add_view(s, s->leaf[L_CACHE], snap_offset, 5, ne_snap, nb_snap);

    gdn_tensor_id rows = -1, snaps = -1, normed = -1;
    const int64_t ne_o[] = {D, HV, T, B};
    int ok = gdn_graph_intermediate(s->g, "rows", GDN_DTYPE_F32, 2, ne_rows, &rows) == GDN_OK &&
             gdn_graph_intermediate(s->g, "o", GDN_DTYPE_F32, 4, ne_o, &s->o) == GDN_OK &&
             gdn_graph_intermediate(s->g, "snaps", GDN_DTYPE_F32, 5, ne_snap, &snaps) == GDN_OK &&
             gdn_graph_intermediate(s->g, "normed", GDN_DTYPE_F32, 2, ne_rows, &normed) == GDN_OK &&
             gdn_graph_mark_output(s->g, s->o) == GDN_OK;
    if (!ok)
        return 0;
    const int64_t ne_state[] = {D, D, HV, B};
    const size_t nb_state[] = {4, 4 * D, 4 * D * D, 4 * ROW};
    const gdn_tensor_id state = add_view(s, rows, 0, 4, ne_state, nb_state);

    const gdn_tensor_id gather_src[2] = {table, s->leaf[L_INDEX]};
    ok = add_node(s, GDN_OP_GET_ROWS, NULL, 2, gather_src, 1, &rows);
    if (ok && var == VARIANT_BETWEEN_WRITES) {
        const int64_t ne_one[] = {ROW};
        const size_t nb_one[] = {4};
        const gdn_tensor_id slot1 = add_view(s, s->leaf[L_CACHE], row_bytes, 1, ne_one, nb_one);
        ok = add_node(s, GDN_OP_CPY, NULL, 1, &s->leaf[L_FRESH], 1, &slot1);
    }
    gdn_op_params norm;
    memset(&norm, 0, sizeof norm);
    norm.norm.eps = 1e-6f;
    if (ok && (var == VARIANT_TWO_READERS || var == VARIANT_NOT_INDEXABLE))
        ok = add_node(s, GDN_OP_RMS_NORM, &norm, 1, &rows, 1, &normed) && gdn_graph_mark_output(s->g, normed) == GDN_OK;
    if (ok && var == VARIANT_OUTPUT)
        ok = gdn_graph_mark_output(s->g, rows) == GDN_OK;
    if (ok && var != VARIANT_NOT_INDEXABLE) {
        gdn_op_params p;
        memset(&p, 0, sizeof p);
        p.gated_delta_net = gdn_gated_delta_net_params_default();
        p.gated_delta_net.n_snapshots = K;
        const gdn_tensor_id src[6] = {s->leaf[L_Q], s->leaf[L_K], s->leaf[L_V], s->leaf[L_G], s->leaf[L_BETA], state};
        const gdn_tensor_id dst[2] = {s->o, snaps};
        const gdn_tensor_id cpy_src[1] = {snaps};
        ok = add_node(s, GDN_OP_GATED_DELTA_NET, &p, 6, src, 2, dst) &&
             add_node(s, GDN_OP_CPY, NULL, 1, cpy_src, 1, &cache_snap);
    }
    return ok;
}

/* The float64 reference of the step (PLAIN): o and the K*B snapshot rows, from the host copies. */
static int reference(const step *s, double *o_ref, double *s_ref)
{
    gdn_gated_delta_net_params p = gdn_gated_delta_net_params_default();
    p.n_snapshots = K;
    gdn_tensor pool = s->host[L_CACHE];
    const int64_t ne_pool[] = {D, D, HV, S};
    pool.n_dims = 4;
    memcpy(pool.ne, ne_pool, sizeof ne_pool);
    pool.nb[0] = 4, pool.nb[1] = 4 * D, pool.nb[2] = 4 * D * D, pool.nb[3] = s->host[L_CACHE].nb[1];
    const int64_t ne_o[] = {D, HV, T, B}, ne_s[] = {D, D, HV, B, K};
    gdn_tensor o = gdn_tensor_contiguous(o_ref, GDN_DTYPE_F64, 4, ne_o);
    gdn_tensor st = gdn_tensor_contiguous(s_ref, GDN_DTYPE_F64, 5, ne_s);
    gdn_gated_delta_net_args a = {s->host[L_Q], s->host[L_K], s->host[L_V], s->host[L_G], s->host[L_BETA],
                                  pool, o, st, s->host[L_INDEX], {0}};
    return gdn_gated_delta_net_reference(&p, &a) == GDN_OK;
}

static double rel_l2(const float *got, size_t got_stride, const double *ref, size_t n)
{
    double diff = 0, norm = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)got[i * got_stride] - ref[i];
        diff += d * d;
        norm += ref[i] * ref[i];
    }
    return sqrt(diff / (norm > 0 ? norm : 1));
}

static const char *pass_names[4] = {"no pass", "copy elision", "gather elision", "both passes"};

/* All four pass settings on one backend: byte-identical o and cache, counts, reference. In place
 * (var VARIANT_IN_PLACE) the snapshots land in rows 0..K*B-1, over the rows read. */
static void check_decode(const test_backend *tb, size_t row_pad, variant var)
{
    const int snap_row0 = IN_PLACE(var) ? 0 : S;
    /* nodes, copies, gathers after each setting */
    static const int want_all[4][3] = {{3, 1, 1}, {2, 0, 1}, {2, 1, 0}, {1, 0, 0}};
    /* undeclared in place: after copy elision the pool is the snapshots' cache, so the gather stays */
    static const int want_undeclared[4][3] = {{3, 1, 1}, {2, 0, 1}, {2, 1, 0}, {2, 0, 1}};
    const int(*want)[3] = var == VARIANT_IN_PLACE_UNDECLARED ? want_undeclared : want_all;
    unsigned char *results[4][2] = {{NULL}};
    size_t bytes[2] = {0, 0};
    int ran = 0;
    for (int pass = 0; pass < 4; pass++) {
        step s;
        if (!build_step(&s, tb->backend, var, row_pad)) {
            CHECK(0, "%s pad %zu: build failed: %s", tb->label, row_pad, gdn_error_detail());
            step_free(&s);
            return;
        }
        gdn_graph_stats before, after;
        gdn_graph_get_stats(s.g, &before);
        CHECK(before.n_nodes == 3 && before.n_copies == 1 && before.n_gathers == 1, "%s: counts before: %d %d %d",
              tb->label, (int)before.n_nodes, (int)before.n_copies, (int)before.n_gathers);
        gdn_status st = GDN_OK;
        if (pass == 1 || pass == 3)
            st = gdn_graph_pass_copy_elision(s.g, collect_log, &s);
        if (st == GDN_OK && (pass == 2 || pass == 3))
            st = gdn_graph_pass_gather_elision(s.g, collect_log, &s);
        CHECK(st == GDN_OK, "%s %s: %s", tb->label, pass_names[pass], gdn_error_detail());
        gdn_graph_get_stats(s.g, &after);
        CHECK(after.n_nodes == want[pass][0] && after.n_copies == want[pass][1] && after.n_gathers == want[pass][2] &&
                  after.nodes_removed == 3 - want[pass][0],
              "%s pad %zu %s: %d nodes, %d copies, %d gathers, %d removed; expected %d, %d, %d\n%s", tb->label, row_pad,
              pass_names[pass], (int)after.n_nodes, (int)after.n_copies, (int)after.n_gathers,
              (int)after.nodes_removed, want[pass][0], want[pass][1], want[pass][2], s.log);
        const size_t gather_bytes = (size_t)B * ROW * 8, copy_bytes = (size_t)K * B * ROW * 8;
        const int gather_gone = (pass & 2) && want[pass][2] == 0;
        const size_t want_saved = (pass & 1 ? copy_bytes : 0) + (gather_gone ? gather_bytes : 0);
        CHECK(after.bytes_saved == want_saved, "%s %s: %zu bytes saved, expected %zu", tb->label, pass_names[pass],
              after.bytes_saved, want_saved);
        if (gather_gone)
            CHECK(strstr(s.log, "gather elision: node 0 (get_rows) removed") != NULL, "%s %s: log: %s", tb->label,
                  pass_names[pass], s.log);
        else if (pass & 2)
            CHECK(strstr(s.log, "is not declared GDN_GRAPH_OWN_SLOT_INDEX") != NULL, "%s %s: expected the undeclared "
                  "index refusal; log: %s", tb->label, pass_names[pass], s.log);

        st = gdn_graph_compute(s.g, tb->backend);
        if (st == GDN_ERROR_UNSUPPORTED) {
            printf("  %-10s %s: skipped (%s)\n", tb->label, pass_names[pass], gdn_error_detail());
            step_free(&s);
            continue;
        }
        CHECK(st == GDN_OK, "%s %s: compute: %s", tb->label, pass_names[pass], gdn_error_detail());
        gdn_tensor o_view;
        int ok = st == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
                 gdn_graph_tensor_view(s.g, s.o, &o_view) == GDN_OK;
        bytes[0] = ok ? gdn_tensor_span(&o_view) : 0;
        bytes[1] = s.buf[L_CACHE].bytes;
        results[pass][0] = malloc(bytes[0] + 1);
        results[pass][1] = malloc(bytes[1]);
        ok = ok && results[pass][0] && results[pass][1] &&
             gdn_backend_download(tb->backend, results[pass][0], o_view.data, bytes[0]) == GDN_OK;
        const int guards = ok && test_buffer_download(&s.buf[L_CACHE], results[pass][1]);
        CHECK(ok && guards, "%s %s: download failed or the cache's guards were written", tb->label, pass_names[pass]);
        if (ok && pass == 0) {
            double *o_ref = malloc(sizeof(double) * B * T * HV * D), *s_ref = malloc(sizeof(double) * K * B * ROW);
            if (o_ref && s_ref && reference(&s, o_ref, s_ref)) {
                const double e_o = rel_l2((const float *)results[0][0], 1, o_ref, (size_t)B * T * HV * D);
                double e_s = 0;
                const size_t row_floats = s.host[L_CACHE].nb[1] / 4;
                for (int r = 0; r < K * B; r++) {
                    const double e = rel_l2((const float *)results[0][1] + (snap_row0 + r) * row_floats, 1, s_ref + (size_t)r * ROW,
                                            ROW);
                    e_s = e > e_s ? e : e_s;
                }
                /* FP32 against float64 over T = 2 updates of length-32 dot products (test_gdn_op.c's bound) */
                CHECK(e_o < 1e-5 && e_s < 1e-5, "%s pad %zu: against the reference: o %.3g, snapshots %.3g", tb->label,
                      row_pad, e_o, e_s);
                /* the S slots read are unchanged (in place they are rewritten) */
                CHECK(IN_PLACE(var) || memcmp(results[0][1], s.host[L_CACHE].data, S * s.host[L_CACHE].nb[1]) == 0,
                      "%s: the slots read changed", tb->label);
            } else {
                CHECK(0, "reference failed: %s", gdn_error_detail());
            }
            free(o_ref);
            free(s_ref);
        }
        ran += ok;
        step_free(&s);
    }
    for (int pass = 1; pass < 4; pass++)
        if (results[0][0] && results[pass][0])
            CHECK(memcmp(results[0][0], results[pass][0], bytes[0]) == 0 &&
                      memcmp(results[0][1], results[pass][1], bytes[1]) == 0,
                  "%s pad %zu: %s differs from no pass", tb->label, row_pad, pass_names[pass]);
    printf("  %-10s decode step%s, cache rows padded by %zu floats: %d of 4 pass settings ran\n", tb->label,
           var == VARIANT_IN_PLACE ? " in place" : var == VARIANT_IN_PLACE_UNDECLARED ? " in place, index undeclared" : "",
           row_pad, ran);
    for (int pass = 0; pass < 4; pass++)
        free(results[pass][0]), free(results[pass][1]);
}

/* Each refusal, by its logged reason; the graph keeps its gather. */
static void check_refusals(void)
{
    static const struct {
        variant var;
        const char *reason;
    } refusals[] = {
        {VARIANT_TWO_READERS, "gather elision: node 0 (get_rows) kept: t10 'rows' has 2 readers"},
        {VARIANT_OUTPUT, "gather elision: node 0 (get_rows) kept: t10 'rows' is a graph output"},
        {VARIANT_NOT_INDEXABLE, "kept: its reader node 1 (rms_norm) does not declare an indexed source 0"},
        {VARIANT_BETWEEN_WRITES, "kept: node 1 (cpy) between the gather and its reader node 2 writes the table t8"},
    };
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        step s;
        int ok = build_step(&s, NULL, refusals[i].var, 0);
        CHECK(ok, "refusal %zu: build failed: %s", i, gdn_error_detail());
        gdn_graph_stats before, after;
        gdn_graph_get_stats(s.g, &before);
        ok = ok && gdn_graph_pass_gather_elision(s.g, collect_log, &s) == GDN_OK;
        gdn_graph_get_stats(s.g, &after);
        CHECK(ok && strstr(s.log, refusals[i].reason) != NULL && after.n_gathers == 1 &&
                  after.n_nodes == before.n_nodes && after.nodes_removed == before.nodes_removed,
              "refusal %zu: expected \"%s\" and the gather kept; log:\n%s", i, refusals[i].reason, s.log);
        printf("  refusal: %s", s.log);
        step_free(&s);
    }
}

int main(void)
{
    test_backend backends[8];
    int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        check_decode(&backends[b], 0, VARIANT_PLAIN);
        check_decode(&backends[b], 16, VARIANT_PLAIN);
        check_decode(&backends[b], 0, VARIANT_IN_PLACE); /* both passes: only the GDN node remains */
        check_decode(&backends[b], 16, VARIANT_IN_PLACE);
        check_decode(&backends[b], 0, VARIANT_IN_PLACE_UNDECLARED); /* gather kept, same results */
    }
    check_refusals();
    test_backends_close(backends, n);
    return test_finish("test_gather");
}
