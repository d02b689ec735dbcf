/* test_graph_replay.c: the replay form of the GDN op as a graph node (GATED_DELTA_NET_REPLAY,
 * whose pool and rings are in-out sources) on every backend present: a graph with the node
 * gives the bytes of a direct gdn_gated_delta_net_replay call (o, pool, rings); an in-out source
 * that is not a persistent leaf is refused at build time; gather elision does not move a
 * gather of a ring past the node that writes that ring (results identical with the pass on); and
 * the graph gives the node the state_ready hint only when the node before it writes none of the
 * pool, the index, the rings and the fold array. */
#include "harness.h"
#include "core/graph.h"
#include "core/graph_internal.h"
#include "core/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { B = 3, T = 2, HK = 1, HV = 2, D = 16, S = 5, L = 5 };
enum { Q, K_, V, G, BETA, POOL, INDEX, RING_K, RING_V, RING_G, FOLD, O, N_T };

static const int32_t slots[B] = {4, 0, 2};
static const int32_t folds[B * 3] = {1, 2, 1, 3, 0, 0, 0, 3, 1}; /* {start, count, commit}: count + T <= L */

typedef struct tensors {
    test_tensor t[N_T];
} tensors;

static void fill(test_tensor *t, test_rng *rng, int which)
{
    const int64_t n = gdn_tensor_count(&t->host);
    for (int64_t e = 0; e < n; e++) {
        int64_t idx[GDN_MAX_DIMS], rest = e;
        for (int i = 0; i < GDN_MAX_DIMS; i++) {
            idx[i] = rest % t->host.ne[i];
            rest /= t->host.ne[i];
        }
        char *p = (char *)t->host.data + test_offset_of(&t->host, idx);
        if (which == INDEX || which == FOLD) {
            const int32_t v = which == INDEX ? slots[e] : folds[e];
            memcpy(p, &v, 4);
            continue;
        }
        float v = (float)test_rng_normal(rng) * 0.3f;
        if (which == G)
            v = (float)test_rng_uniform(rng, -2.0, -0.01);
        if (which == RING_G) /* decays */
            v = (float)exp(test_rng_uniform(rng, -2.0, -0.01));
        if (which == BETA)
            v = (float)test_rng_uniform(rng, 0.0, 1.0);
        memcpy(p, &v, 4);
    }
}

static int make(tensors *ts, gdn_backend *backend, uint64_t seed)
{
    const int64_t ne[N_T][5] = {
        [Q] = {D, HK, T, B}, [K_] = {D, HK, T, B}, [V] = {D, HV, T, B}, [G] = {HV, T, B}, [BETA] = {HV, T, B},
        [POOL] = {D, D, HV, S}, [INDEX] = {B}, [RING_K] = {D, HK, L, S}, [RING_V] = {D, HV, L, S},
        [RING_G] = {HV, L, S}, [FOLD] = {3, B}, [O] = {D, HV, T, B},
    };
    const int dims[N_T] = {4, 4, 4, 3, 3, 4, 1, 4, 4, 3, 2, 4};
    test_rng rng;
    test_rng_seed(&rng, seed);
    int ok = 1;
    for (int i = 0; ok && i < N_T; i++) {
        const gdn_dtype dt = i == INDEX || i == FOLD ? GDN_DTYPE_I32 : GDN_DTYPE_F32;
        ok = test_tensor_init(&ts->t[i], i == POOL || i == O ? LAYOUT_PADDED : LAYOUT_CONTIGUOUS, dt, dims[i], ne[i]);
        if (ok && i != O)
            fill(&ts->t[i], &rng, i);
        ok = ok && test_tensor_upload(&ts->t[i], backend);
    }
    return ok;
}

static void drop(tensors *ts)
{
    for (int i = 0; i < N_T; i++)
        test_tensor_free(&ts->t[i]);
}

static gdn_gated_delta_net_params params(void)
{
    gdn_gated_delta_net_params p = gdn_gated_delta_net_params_default();
    p.l2norm = 1;
    return p;
}

/* Every byte (guards included) of tensor i equal between two sets. */
static int same(const tensors *a, const tensors *b, int i)
{
    unsigned char *x = malloc(a->t[i].bytes), *y = malloc(b->t[i].bytes);
    const int ok = x && y && test_buffer_download(&a->t[i].device, x) && test_buffer_download(&b->t[i].device, y) &&
                   memcmp(x, y, a->t[i].bytes) == 0;
    free(x), free(y);
    return ok;
}

/* The node in a graph over set `ts`: leaves for all 11 sources, o as the node's destination. */
static gdn_status build(gdn_graph *g, tensors *ts, uint32_t pool_flags, gdn_tensor_id *ids)
{
    gdn_status st = GDN_OK;
    for (int i = 0; st == GDN_OK && i < N_T; i++) {
        const gdn_tensor v = test_device_view(&ts->t[i]);
        uint32_t flags = GDN_GRAPH_INPUT;
        if (i == POOL)
            flags = pool_flags;
        else if (i == RING_K || i == RING_V || i == RING_G || i == O)
            flags = GDN_GRAPH_PERSISTENT;
        st = gdn_graph_leaf(g, i == O ? "o" : "t", &v, flags, &ids[i]);
    }
    if (st == GDN_OK) {
        gdn_op_params p;
        memset(&p, 0, sizeof p);
        p.gated_delta_net = params();
        st = gdn_graph_op(g, GDN_OP_GATED_DELTA_NET_REPLAY, &p, 11, ids, 1, &ids[O]);
    }
    return st;
}

static void check_node(const test_backend *tb)
{
    tensors direct, graphed;
    memset(&direct, 0, sizeof direct), memset(&graphed, 0, sizeof graphed);
    int ok = make(&direct, tb->backend, 7) && make(&graphed, tb->backend, 7);
    CHECK(ok, "%s: tensors", tb->label);
    gdn_graph *g = NULL;
    gdn_tensor_id ids[N_T];
    if (ok) {
        gdn_tensor v[N_T];
        for (int i = 0; i < N_T; i++)
            v[i] = test_device_view(&direct.t[i]);
        const gdn_gated_delta_net_replay_args a = {v[Q], v[K_], v[V], v[G], v[BETA], v[POOL], v[INDEX], v[RING_K],
                                                   v[RING_V], v[RING_G], v[FOLD], v[O]};
        const gdn_gated_delta_net_params p = params();
        ok = gdn_gated_delta_net_replay(tb->backend, &p, &a) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK;
        CHECK(ok, "%s: direct replay call: %s", tb->label, gdn_error_detail());
    }
    if (ok) {
        ok = gdn_graph_init(&g) == GDN_OK && build(g, &graphed, GDN_GRAPH_PERSISTENT, ids) == GDN_OK &&
             gdn_graph_compute(g, tb->backend) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK;
        CHECK(ok, "%s: replay node: %s", tb->label, gdn_error_detail());
    }
    if (ok) {
        const int written[5] = {O, POOL, RING_K, RING_V, RING_G};
        for (int i = 0; i < 5; i++)
            CHECK(same(&direct, &graphed, written[i]), "%s: tensor %d differs between the node and the direct call",
                  tb->label, written[i]);
    }
    gdn_graph_free(g);

    /* The pool is written in place: as an INPUT leaf the node must be refused. */
    g = NULL;
    ok = gdn_graph_init(&g) == GDN_OK;
    const gdn_status st = ok ? build(g, &graphed, GDN_GRAPH_INPUT, ids) : GDN_ERROR_OUT_OF_MEMORY;
    CHECK(st == GDN_ERROR_INVALID_ARGUMENT && strstr(gdn_error_detail(), "written in place") != NULL,
          "%s: an input pool was not refused: %s (%s)", tb->label, gdn_status_string(st), gdn_error_detail());
    gdn_graph_free(g);
    drop(&direct), drop(&graphed);
}

/* get_rows of ring_g (per slot), then the replay node (writes ring_g), then a concat that reads the
 * gathered rows: the gather must stay before the node. */
typedef struct log_buf {
    char text[4096];
} log_buf;

static void collect(void *user, const char *message)
{
    log_buf *l = user;
    const size_t used = strlen(l->text);
    snprintf(l->text + used, sizeof l->text - used, "%s\n", message);
}

static int gather_then_replay(const test_backend *tb, int pass, float *out, log_buf *log)
{
    tensors ts;
    memset(&ts, 0, sizeof ts);
    gdn_graph *g = NULL;
    gdn_tensor_id ids[N_T], rows, gathered, extra, cat;
    test_buffer eb;
    memset(&eb, 0, sizeof eb);
    const float ones[B] = {1, 2, 3};
    const int64_t ne_rows[2] = {L * HV, S}, ne_g[2] = {L * HV, B}, ne_e[2] = {1, B}, ne_c[2] = {L * HV + 1, B};
    const size_t nb_rows[2] = {4, L * HV * 4};
    int ok = make(&ts, tb->backend, 9) && test_buffer_alloc(&eb, tb->backend, sizeof ones) &&
             test_buffer_upload(&eb, ones, sizeof ones) && gdn_graph_init(&g) == GDN_OK;
    const gdn_tensor ev = gdn_tensor_contiguous(test_buffer_data(&eb), GDN_DTYPE_F32, 2, ne_e);
    gdn_op_params p;
    memset(&p, 0, sizeof p);
    for (int i = 0; ok && i < N_T; i++) {
        const gdn_tensor v = test_device_view(&ts.t[i]);
        const int pool = i == POOL || i == RING_K || i == RING_V || i == RING_G || i == O;
        ok = gdn_graph_leaf(g, "t", &v, pool ? GDN_GRAPH_PERSISTENT : GDN_GRAPH_INPUT, &ids[i]) == GDN_OK;
    }
    ok = ok && gdn_graph_view(g, ids[RING_G], 0, 2, ne_rows, nb_rows, &rows) == GDN_OK &&
         gdn_graph_intermediate(g, "gathered", GDN_DTYPE_F32, 2, ne_g, &gathered) == GDN_OK &&
         gdn_graph_leaf(g, "extra", &ev, GDN_GRAPH_INPUT, &extra) == GDN_OK &&
         gdn_graph_intermediate(g, "cat", GDN_DTYPE_F32, 2, ne_c, &cat) == GDN_OK;
    const gdn_tensor_id gs[2] = {rows, ids[INDEX]}, cs[2] = {gathered, extra};
    p.gated_delta_net = params();
    ok = ok && gdn_graph_op(g, GDN_OP_GET_ROWS, NULL, 2, gs, 1, &gathered) == GDN_OK &&
         gdn_graph_op(g, GDN_OP_GATED_DELTA_NET_REPLAY, &p, 11, ids, 1, &ids[O]) == GDN_OK;
    memset(&p, 0, sizeof p);
    ok = ok && gdn_graph_op(g, GDN_OP_CONCAT, &p, 2, cs, 1, &cat) == GDN_OK && gdn_graph_mark_output(g, cat) == GDN_OK;
    if (ok && pass)
        ok = gdn_graph_pass_gather_elision(g, collect, log) == GDN_OK;
    gdn_tensor cv;
    ok = ok && gdn_graph_compute(g, tb->backend) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
         gdn_graph_tensor_view(g, cat, &cv) == GDN_OK &&
         gdn_backend_download(tb->backend, out, cv.data, (size_t)(L * HV + 1) * B * 4) == GDN_OK;
    CHECK(ok, "%s: gather, replay, concat (pass %d): %s", tb->label, pass, gdn_error_detail());
    gdn_graph_free(g);
    test_buffer_free(&eb);
    drop(&ts);
    return ok;
}

static void check_gather_kept(const test_backend *tb)
{
    float off[(L * HV + 1) * B], on[(L * HV + 1) * B];
    log_buf log;
    memset(&log, 0, sizeof log);
    if (gather_then_replay(tb, 0, off, &log) && gather_then_replay(tb, 1, on, &log)) {
        CHECK(memcmp(off, on, sizeof off) == 0, "%s: the gather of a ring moved past the node writing it", tb->label);
        CHECK(strstr(log.text, "between the gather and its reader node 2 writes the table") != NULL,
              "%s: expected the gather kept because the replay node writes the ring; log:\n%s", tb->label, log.text);
    }
}

/* A scale node writing tensor `target` (or, with -1, a scratch leaf that no one else reads), then
 * the replay node over the set's tensors: the state_ready hint the graph gives the replay node.
 * Build only: nothing runs. */
static int hint_after_write(tensors *ts, int target)
{
    gdn_graph *g = NULL;
    gdn_tensor_id ids[N_T], src = -1, dst = -1;
    int ok = gdn_graph_init(&g) == GDN_OK;
    for (int i = 0; ok && i < N_T; i++) {
        const gdn_tensor t = test_device_view(&ts->t[i]);
        const int in_out = i == POOL || i == RING_K || i == RING_V || i == RING_G || i == O;
        ok = gdn_graph_leaf(g, "t", &t, in_out ? GDN_GRAPH_PERSISTENT : GDN_GRAPH_INPUT, &ids[i]) == GDN_OK;
    }
    /* The scale reads a tensor of the target's shape (q's for the scratch) and writes the target,
     * or an intermediate the replay node does not read. */
    gdn_tensor v = test_device_view(&ts->t[target >= 0 ? target : Q]);
    ok = ok && gdn_graph_leaf(g, "scale_src", &v, GDN_GRAPH_INPUT, &src) == GDN_OK;
    if (target >= 0)
        dst = ids[target];
    else
        ok = ok && gdn_graph_intermediate(g, "scratch", GDN_DTYPE_F32, v.n_dims, v.ne, &dst) == GDN_OK;
    gdn_op_params p;
    memset(&p, 0, sizeof p);
    p.scale.scale = 2.0f;
    ok = ok && gdn_graph_op(g, GDN_OP_SCALE, &p, 1, &src, 1, &dst) == GDN_OK;
    memset(&p, 0, sizeof p);
    p.gated_delta_net = params();
    ok = ok && gdn_graph_op(g, GDN_OP_GATED_DELTA_NET_REPLAY, &p, 11, ids, 1, &ids[O]) == GDN_OK;
    const int hint = ok ? gdn_graph_state_ready(g, 0, 1) : -1;
    CHECK(ok, "state_ready: graph with a scale into tensor %d: %s", target, gdn_error_detail());
    gdn_graph_free(g);
    return hint;
}

static void check_state_ready(const test_backend *tb)
{
    tensors ts;
    memset(&ts, 0, sizeof ts);
    if (!make(&ts, tb->backend, 11))
        return;
    CHECK(hint_after_write(&ts, -1) == 1, "%s: no hint after a node writing none of the replay sources", tb->label);
    const int covered[] = {POOL, RING_K, RING_V, RING_G};
    for (size_t i = 0; i < sizeof covered / sizeof covered[0]; i++)
        CHECK(hint_after_write(&ts, covered[i]) == 0, "%s: the hint given after a node writing tensor %d", tb->label,
              covered[i]);
    drop(&ts);
}

int main(void)
{
    test_backend backends[8];
    const int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        check_node(&backends[b]);
        check_gather_kept(&backends[b]);
        check_state_ready(&backends[b]);
    }
    test_backends_close(backends, n);
    return test_finish("test_graph_replay");
}
