/* test_tee.c: the conv-window half of the passes. CONCAT reading its first source through an
 * index and teeing a box of its output into a second destination, on every backend present
 * against the float64 reference (index only, tee only, both into disjoint slots, both in place
 * over the sequences' own slots, mixed; a rollback layout whose windows are read at an offset
 * inside the slot the whole output is teed into), with bad indices and bad aliasing refused before
 * anything is written; its build-time checks; then copy and gather elision on a conv-window
 * graph in llama.cpp's pattern (get_rows -> concat -> cpy of the tail into the pool, ssm_conv):
 * results byte-identical with the passes off, copy only and both, no copy and no gather left,
 * and each refusal of the tee by its logged reason. */
#include "harness.h"
#include "core/ops.h"
#include "core/ops_run.h"
#include "core/graph.h"

#include <stdlib.h>
#include <string.h>

/* Window columns, new columns, channels, sequences, pool slots; a slot holds [W][C] floats and a
 * pad, as the block's conv pool does (time outermost in memory, read time-innermost). */
enum { W = 3, T = 2, C = 5, B = 3, S = 6, SLOT = W * C + 2, FROW = C + 1 };
#define F 4u

typedef struct buffers {
    test_buffer pool, fresh, index, dst, tee;
    float pool0[S * SLOT], fresh0[B * T * FROW];
} buffers;

static gdn_tensor pool_view(void *data, int64_t slots)
{
    const int64_t ne[3] = {W, C, slots};
    gdn_tensor t = gdn_tensor_contiguous(data, GDN_DTYPE_F32, 3, ne);
    t.nb[0] = C * F, t.nb[1] = F, t.nb[2] = SLOT * F;
    return t;
}

static gdn_tensor fresh_view(void *data)
{
    const int64_t ne[3] = {T, C, B};
    gdn_tensor t = gdn_tensor_contiguous(data, GDN_DTYPE_F32, 3, ne);
    t.nb[0] = FROW * F, t.nb[1] = F, t.nb[2] = T * FROW * F;
    return t;
}

static gdn_tensor dst_view(void *data, gdn_dtype dtype)
{
    const int64_t ne[3] = {W + T, C, B};
    return gdn_tensor_contiguous(data, dtype, 3, ne);
}

/* The call: concat(pool (through index when indexed), fresh) -> dst, tee (when teed) the last W
 * columns into `tee_slot0`.. of the pool (pool_tee) or into a separate buffer. */
static gdn_op_call make_call(void *pool, void *fresh, void *index, void *dst, void *tee, int indexed, int teed,
                             gdn_dtype dtype)
{
    gdn_op_call call;
    memset(&call, 0, sizeof call);
    call.kind = GDN_OP_CONCAT;
    call.params.concat.dim = 0;
    call.n_src = indexed ? 3 : 2;
    call.n_dst = teed ? 2 : 1;
    call.src[0] = pool_view(pool, indexed ? S : B);
    call.src[1] = fresh_view(fresh);
    if (indexed) {
        const int64_t ne[1] = {B};
        call.src[2] = gdn_tensor_contiguous(index, GDN_DTYPE_I32, 1, ne);
    }
    call.dst[0] = dst_view(dst, dtype);
    if (teed) {
        call.dst[1] = pool_view(tee, B);
        call.dst[1].dtype = dtype;
        if (dtype == GDN_DTYPE_F64) /* the reference's tee: packed doubles */
            call.dst[1] = gdn_tensor_contiguous(tee, dtype, 3, call.dst[1].ne);
        call.tee_offset[0] = T;
    }
    return call;
}

typedef struct op_case {
    const char *name;
    int indexed, teed, in_pool; /* in_pool: the tee goes into pool slots first.., else its own buffer */
    int32_t index[B];
    int first;                  /* the tee's first slot */
    gdn_status want;            /* GDN_OK, or the status a bad index gives (nothing written) */
} op_case;

static const op_case op_cases[] = {
    {"index only", 1, 0, 0, {4, 0, 4}, 0, GDN_OK},
    {"tee only", 0, 1, 0, {0, 0, 0}, 0, GDN_OK},
    {"index and tee, disjoint slots", 1, 1, 1, {5, 0, 5}, 1, GDN_OK},
    {"index and tee in place, own slots", 1, 1, 1, {1, 2, 3}, 1, GDN_OK},
    {"index and tee, own and unwritten slots", 1, 1, 1, {1, 0, 3}, 1, GDN_OK},
    {"index outside the pool", 1, 1, 1, {1, 6, 3}, 1, GDN_ERROR_INVALID_ARGUMENT},
    {"negative index", 1, 0, 0, {-1, 0, 0}, 0, GDN_ERROR_INVALID_ARGUMENT},
    {"reads a slot another sequence writes", 1, 1, 1, {2, 2, 3}, 1, GDN_ERROR_OVERLAP},
};

static void check_op_case(const test_backend *tb, const op_case *oc, test_rng *rng)
{
    buffers bf;
    memset(&bf, 0, sizeof bf);
    for (int i = 0; i < S * SLOT; i++)
        bf.pool0[i] = (float)test_rng_normal(rng);
    for (int i = 0; i < B * T * FROW; i++)
        bf.fresh0[i] = (float)test_rng_normal(rng);
    const size_t dst_bytes = (size_t)(W + T) * C * B * F;
    int ok = test_buffer_alloc(&bf.pool, tb->backend, sizeof bf.pool0) &&
             test_buffer_alloc(&bf.fresh, tb->backend, sizeof bf.fresh0) &&
             test_buffer_alloc(&bf.index, tb->backend, sizeof oc->index) &&
             test_buffer_alloc(&bf.dst, tb->backend, dst_bytes) &&
             test_buffer_alloc(&bf.tee, tb->backend, sizeof bf.pool0) &&
             test_buffer_upload(&bf.pool, bf.pool0, sizeof bf.pool0) &&
             test_buffer_upload(&bf.fresh, bf.fresh0, sizeof bf.fresh0) &&
             test_buffer_upload(&bf.index, oc->index, sizeof oc->index);
    CHECK(ok, "%s: %s: buffers", tb->label, oc->name);
    if (!ok)
        goto done;
    char *pool = test_buffer_data(&bf.pool);
    char *tee = oc->in_pool ? pool + (size_t)oc->first * SLOT * F : test_buffer_data(&bf.tee);
    const gdn_op_call call = make_call(pool, test_buffer_data(&bf.fresh), test_buffer_data(&bf.index),
                                       test_buffer_data(&bf.dst), tee, oc->indexed, oc->teed, GDN_DTYPE_F32);
    gdn_status st = gdn_op_run(tb->backend, &call);
    if (st == GDN_OK)
        st = gdn_backend_synchronize(tb->backend);
    CHECK(st == oc->want, "%s: %s: status %s (%s), expected %s", tb->label, oc->name, gdn_status_string(st),
          gdn_error_detail(), gdn_status_string(oc->want));

    /* Expected bytes: the reference into doubles, from host copies of the inputs. */
    float pool_got[S * SLOT], tee_got[S * SLOT], *dst_got = malloc(dst_bytes);
    double *dst_ref = malloc((size_t)(W + T) * C * B * sizeof(double)), tee_ref[W * C * B];
    float pool_want[S * SLOT];
    memcpy(pool_want, bf.pool0, sizeof pool_want);
    int same_dst = 1, same_pool = 1, same_tee = 1;
    const int read_back = dst_got && dst_ref && test_buffer_download(&bf.pool, pool_got) &&
                          test_buffer_download(&bf.tee, tee_got) && test_buffer_download(&bf.dst, dst_got);
    CHECK(read_back, "%s: %s: read-back or a guard region was overwritten", tb->label, oc->name);
    if (read_back && oc->want == GDN_OK) {
        float *pool_host = oc->indexed ? bf.pool0 : bf.pool0; /* the reference reads the initial pool */
        const gdn_op_call ref = make_call(pool_host, bf.fresh0, (void *)oc->index, dst_ref, tee_ref, oc->indexed,
                                          oc->teed, GDN_DTYPE_F64);
        CHECK(gdn_op_reference(&ref) == GDN_OK, "%s: %s: reference: %s", tb->label, oc->name, gdn_error_detail());
        for (int64_t i = 0; i < (W + T) * C * B; i++)
            same_dst &= dst_got[i] == (float)dst_ref[i];
        if (oc->teed)
            for (int64_t b = 0; b < B; b++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t j = 0; j < W; j++) {
                        const float want = (float)tee_ref[(b * C + c) * W + j];
                        const size_t at = (size_t)(b * SLOT + j * C + c);
                        if (oc->in_pool)
                            pool_want[(size_t)oc->first * SLOT + at] = want;
                        else
                            same_tee &= tee_got[at] == want;
                    }
    } else {
        for (size_t i = 0; read_back && i < dst_bytes / F; i++) /* untouched: still the 0xFF fill */
            same_dst &= ((unsigned char *)dst_got)[i * F] == 0xFF;
    }
    for (int i = 0; read_back && i < S * SLOT; i++)
        same_pool &= memcmp(&pool_got[i], &pool_want[i], F) == 0;
    CHECK(same_dst, "%s: %s: dst differs from the reference (or was written on a refused call)", tb->label, oc->name);
    CHECK(same_pool, "%s: %s: pool bytes differ from the expected (tee written where expected, the rest unchanged)",
          tb->label, oc->name);
    CHECK(same_tee, "%s: %s: the separate tee differs from the reference", tb->label, oc->name);
    free(dst_got), free(dst_ref);
done:
    test_buffer_free(&bf.pool), test_buffer_free(&bf.fresh), test_buffer_free(&bf.index);
    test_buffer_free(&bf.dst), test_buffer_free(&bf.tee);
}

/* Rollback layout (a cache that keeps Kc-1+T columns per slot): the whole output is teed into
 * the slot, and position j reads its window at a column offset o_j inside its own slot, through
 * an index over column-granular rows (index = slot * COLS + o). A read that leaves its own part,
 * or meets another position's, is refused with nothing written. */
enum { COLS = W + T };

typedef struct rollback_case {
    const char *name;
    int32_t slot[B], offset[B];
    gdn_status want;
} rollback_case;

static const rollback_case rollback_cases[] = {
    {"window at offsets 0, 1, 2 of own slots", {1, 2, 3}, {0, 1, 2}, GDN_OK},
    {"one window from an unwritten slot", {1, 5, 3}, {2, 1, 0}, GDN_OK},
    {"window past its own part", {1, 2, 3}, {0, T + 1, 0}, GDN_ERROR_OVERLAP},
    {"window in another sequence's slot", {2, 2, 3}, {0, 0, 0}, GDN_ERROR_OVERLAP},
};

static gdn_op_call rollback_call(void *pool, void *fresh, void *index, void *dst, void *tee, gdn_dtype dtype)
{
    gdn_op_call call;
    memset(&call, 0, sizeof call);
    call.kind = GDN_OP_CONCAT;
    call.n_src = 3;
    call.n_dst = 2;
    const int64_t ne_a[3] = {W, C, S * COLS - (W - 1)}, ne_i[1] = {B}, ne_t[3] = {W + T, C, B};
    call.src[0] = gdn_tensor_contiguous(pool, GDN_DTYPE_F32, 3, ne_a);
    call.src[0].nb[0] = C * F, call.src[0].nb[1] = F, call.src[0].nb[2] = C * F; /* rows one column apart */
    call.src[1] = fresh_view(fresh);
    call.src[2] = gdn_tensor_contiguous(index, GDN_DTYPE_I32, 1, ne_i);
    call.dst[0] = dst_view(dst, dtype);
    call.dst[1] = gdn_tensor_contiguous(tee, dtype, 3, ne_t);
    if (dtype == GDN_DTYPE_F32) /* into slots 1..B of the pool, column-major as the pool */
        call.dst[1].nb[0] = C * F, call.dst[1].nb[1] = F, call.dst[1].nb[2] = COLS * C * F;
    return call;
}

static void check_rollback_case(const test_backend *tb, const rollback_case *rc, test_rng *rng)
{
    float pool0[S * COLS * C], fresh0[B * T * FROW], pool_got[S * COLS * C], dst_got[(W + T) * C * B];
    double dst_ref[(W + T) * C * B], tee_ref[(W + T) * C * B];
    int32_t index[B];
    for (int j = 0; j < B; j++)
        index[j] = rc->slot[j] * COLS + rc->offset[j];
    for (int i = 0; i < S * COLS * C; i++)
        pool0[i] = (float)test_rng_normal(rng);
    for (int i = 0; i < B * T * FROW; i++)
        fresh0[i] = (float)test_rng_normal(rng);
    test_buffer pool, fresh, ib, dst;
    memset(&pool, 0, sizeof pool), memset(&fresh, 0, sizeof fresh), memset(&ib, 0, sizeof ib), memset(&dst, 0, sizeof dst);
    int ok = test_buffer_alloc(&pool, tb->backend, sizeof pool0) && test_buffer_alloc(&fresh, tb->backend, sizeof fresh0) &&
             test_buffer_alloc(&ib, tb->backend, sizeof index) && test_buffer_alloc(&dst, tb->backend, sizeof dst_got) &&
             test_buffer_upload(&pool, pool0, sizeof pool0) && test_buffer_upload(&fresh, fresh0, sizeof fresh0) &&
             test_buffer_upload(&ib, index, sizeof index);
    if (ok) {
        char *p = test_buffer_data(&pool);
        const gdn_op_call call = rollback_call(p, test_buffer_data(&fresh), test_buffer_data(&ib), test_buffer_data(&dst),
                                               p + COLS * C * F, GDN_DTYPE_F32);
        gdn_status st = gdn_op_run(tb->backend, &call);
        if (st == GDN_OK)
            st = gdn_backend_synchronize(tb->backend);
        CHECK(st == rc->want, "%s: rollback, %s: status %s (%s), expected %s", tb->label, rc->name,
              gdn_status_string(st), gdn_error_detail(), gdn_status_string(rc->want));
        ok = test_buffer_download(&pool, pool_got) && test_buffer_download(&dst, dst_got);
        CHECK(ok, "%s: rollback, %s: read-back or a guard region was overwritten", tb->label, rc->name);
    }
    if (ok) {
        float pool_want[S * COLS * C];
        memcpy(pool_want, pool0, sizeof pool_want);
        int same_dst = 1;
        if (rc->want == GDN_OK) {
            const gdn_op_call ref = rollback_call(pool0, fresh0, index, dst_ref, tee_ref, GDN_DTYPE_F64);
            CHECK(gdn_op_reference(&ref) == GDN_OK, "%s: rollback reference: %s", tb->label, gdn_error_detail());
            for (int i = 0; i < (W + T) * C * B; i++)
                same_dst &= dst_got[i] == (float)dst_ref[i];
            for (int b = 0; b < B; b++) /* the tee: slot 1 + b, columns 0..W+T-1 */
                for (int c = 0; c < C; c++)
                    for (int col = 0; col < W + T; col++)
                        pool_want[((1 + b) * COLS + col) * C + c] = (float)tee_ref[(b * C + c) * (W + T) + col];
        } else {
            for (int i = 0; i < (W + T) * C * B; i++)
                same_dst &= ((unsigned char *)dst_got)[i * F] == 0xFF;
        }
        CHECK(same_dst, "%s: rollback, %s: dst differs from the reference (or was written when refused)", tb->label,
              rc->name);
        CHECK(memcmp(pool_got, pool_want, sizeof pool_got) == 0, "%s: rollback, %s: pool bytes differ from the "
              "expected", tb->label, rc->name);
    }
    test_buffer_free(&pool), test_buffer_free(&fresh), test_buffer_free(&ib), test_buffer_free(&dst);
}

/* Build-time refusals of gdn_op_check, on host addresses never dereferenced. */
static void check_build_refusals(void)
{
    static float pool[S * SLOT], fresh[B * T * FROW], dst[(W + T) * C * B], other[S * SLOT];
    static int32_t index[B];
    struct {
        const char *name;
        gdn_status want;
        const char *detail;
    } cases[] = {
        {"tee offset along dim 1", GDN_ERROR_SHAPE, "may be offset only along the concat dim"},
        {"tee box past dst", GDN_ERROR_SHAPE, "is outside dst"},
        {"tee over the source b", GDN_ERROR_OVERLAP, "the tee overlaps source b"},
        {"index of the wrong length", GDN_ERROR_SHAPE, "index [n]"},
        {"tee on an op that declares none", GDN_ERROR_INVALID_ARGUMENT, "and 2 destinations, expected 2 and 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gdn_op_call call = make_call(pool, fresh, index, dst, other, 1, 1, GDN_DTYPE_F32);
        switch (i) {
        case 0: call.tee_offset[1] = 1, call.dst[1].ne[1] = C - 1; break;
        case 1: call.tee_offset[0] = T + 1; break;
        case 2: call.dst[1] = fresh_view(fresh), call.dst[1].ne[0] = W > T ? T : W, call.tee_offset[0] = W; break;
        case 3: call.src[2].ne[0] = B - 1; break;
        case 4: call.kind = GDN_OP_SSM_CONV; break;
        }
        const gdn_status st = gdn_op_check(&call, 0);
        CHECK(st == cases[i].want && strstr(gdn_error_detail(), cases[i].detail) != NULL,
              "op check, %s: %s (%s), expected %s with \"%s\"", cases[i].name, gdn_status_string(st), gdn_error_detail(),
              gdn_status_string(cases[i].want), cases[i].detail);
    }
}

/* ---------------------------------------------------------------------------------------------
 * The passes on a conv-window graph
 * ------------------------------------------------------------------------------------------- */
typedef enum variant {
    V_PLAIN,       /* own slots, declared: both the copy and the gather go */
    V_UNDECLARED,  /* own slots, not declared: the copy is teed, the gather stays */
    V_NO_TEE,      /* the copied part belongs to ssm_conv's output: no tee declared */
    V_NOT_A_BOX,   /* the copy reads the window transposed (not a box of the concat output) */
    V_BETWEEN,     /* a node between the concat and the copy reads the pool */
} variant;

typedef struct graph_run {
    gdn_graph *g;
    test_buffer pool, fresh, index, w, side;
    gdn_tensor_id out;
    char log[4096];
} graph_run;

static void collect_log(void *user, const char *message)
{
    graph_run *r = user;
    const size_t used = strlen(r->log);
    snprintf(r->log + used, sizeof r->log - used, "%s\n", message);
}

static void graph_run_free(graph_run *r)
{
    gdn_graph_free(r->g);
    test_buffer_free(&r->pool), test_buffer_free(&r->fresh), test_buffer_free(&r->index);
    test_buffer_free(&r->w), test_buffer_free(&r->side);
}

/* passes: 0 none, 1 copy elision, 2 copy then gather elision. Sequences b read and write slot
 * 1 + b. Returns 1 when built, computed and read back (pool bytes and output into the args). */
static int graph_run_step(graph_run *r, const test_backend *tb, variant var, int passes, const float *pool0,
                          const float *fresh0, const float *w0, float *pool_out, float *out)
{
    memset(r, 0, sizeof *r);
    const int32_t slots[B] = {1, 2, 3};
    const int64_t ne_w[2] = {W + 1, C}, ne_i[1] = {B}, ne_rows[2] = {W * C, S}, ne_side[1] = {T * C * B};
    int ok = test_buffer_alloc(&r->pool, tb->backend, S * SLOT * F) &&
             test_buffer_alloc(&r->fresh, tb->backend, B * T * FROW * F) &&
             test_buffer_alloc(&r->index, tb->backend, sizeof slots) &&
             test_buffer_alloc(&r->w, tb->backend, (W + 1) * C * F) &&
             test_buffer_alloc(&r->side, tb->backend, T * C * B * F) &&
             test_buffer_upload(&r->pool, pool0, S * SLOT * F) && test_buffer_upload(&r->fresh, fresh0, B * T * FROW * F) &&
             test_buffer_upload(&r->index, slots, sizeof slots) && test_buffer_upload(&r->w, w0, (W + 1) * C * F) &&
             gdn_graph_init(&r->g) == GDN_OK;
    if (!ok)
        return 0;
    gdn_tensor pv = gdn_tensor_contiguous(test_buffer_data(&r->pool), GDN_DTYPE_F32, 2, ne_rows);
    pv.nb[1] = SLOT * F;
    const gdn_tensor fv = fresh_view(test_buffer_data(&r->fresh));
    const gdn_tensor iv = gdn_tensor_contiguous(test_buffer_data(&r->index), GDN_DTYPE_I32, 1, ne_i);
    const gdn_tensor wv = gdn_tensor_contiguous(test_buffer_data(&r->w), GDN_DTYPE_F32, 2, ne_w);
    const gdn_tensor sv = gdn_tensor_contiguous(test_buffer_data(&r->side), GDN_DTYPE_F32, 1, ne_side);
    gdn_graph *g = r->g;
    gdn_tensor_id pool, fresh, index, w, side, window, conv_in, past, tail, dst, extra;
    const uint32_t own = var == V_UNDECLARED ? 0u : GDN_GRAPH_OWN_SLOT_INDEX;
    const int64_t ne_win[2] = {W * C, B}, ne_in[3] = {W + T, C, B}, ne_out[3] = {C, T, B};
    const int64_t ne_past[3] = {W, C, B};
    const size_t nb_past[3] = {C * F, F, W * C * F}, nb_tail[3] = {F, (W + T) * F, (W + T) * C * F};
    const size_t nb_slot[3] = {C * F, F, SLOT * F}, nb_swap[3] = {(W + T) * F, F, (W + T) * C * F};
    ok = gdn_graph_leaf(g, "conv_pool", &pv, GDN_GRAPH_PERSISTENT, &pool) == GDN_OK &&
         gdn_graph_leaf(g, "fresh", &fv, GDN_GRAPH_INPUT, &fresh) == GDN_OK &&
         gdn_graph_leaf(g, "slot_index", &iv, GDN_GRAPH_INPUT | own, &index) == GDN_OK &&
         gdn_graph_leaf(g, "conv_w", &wv, GDN_GRAPH_INPUT, &w) == GDN_OK &&
         gdn_graph_leaf(g, "side", &sv, GDN_GRAPH_PERSISTENT, &side) == GDN_OK &&
         gdn_graph_intermediate(g, "window", GDN_DTYPE_F32, 2, ne_win, &window) == GDN_OK &&
         gdn_graph_intermediate(g, "conv_in", GDN_DTYPE_F32, 3, ne_in, &conv_in) == GDN_OK &&
         gdn_graph_intermediate(g, "out", GDN_DTYPE_F32, 3, ne_out, &r->out) == GDN_OK &&
         gdn_graph_view(g, window, 0, 3, ne_past, nb_past, &past) == GDN_OK &&
         gdn_graph_view(g, pool, SLOT * F, 3, ne_past, nb_slot, &dst) == GDN_OK;
    const gdn_tensor_id gather[2] = {pool, index}, cat[2] = {past, fresh}, conv[2] = {conv_in, w};
    gdn_op_params p;
    memset(&p, 0, sizeof p);
    ok = ok && gdn_graph_op(g, GDN_OP_GET_ROWS, NULL, 2, gather, 1, &window) == GDN_OK &&
         gdn_graph_op(g, GDN_OP_CONCAT, &p, 2, cat, 1, &conv_in) == GDN_OK;
    if (ok && var == V_BETWEEN) { /* reads slot 1..3 of the pool before the copy writes them */
        const int64_t ne_x[1] = {T * C * B};
        const size_t nb_x[1] = {F};
        ok = gdn_graph_view(g, pool, SLOT * F, 1, ne_x, nb_x, &extra) == GDN_OK &&
             gdn_graph_op(g, GDN_OP_CPY, NULL, 1, &extra, 1, &side) == GDN_OK;
    }
    if (ok && var == V_NO_TEE) { /* the conv runs first; its output's last token is copied to side */
        const int64_t ne_last[3] = {C, 1, B};
        const size_t nb_last[3] = {F, C * F, T * C * F}, nb_side[3] = {F, C * F, C * F};
        ok = gdn_graph_op(g, GDN_OP_SSM_CONV, NULL, 2, conv, 1, &r->out) == GDN_OK &&
             gdn_graph_view(g, r->out, (T - 1) * C * F, 3, ne_last, nb_last, &tail) == GDN_OK &&
             gdn_graph_view(g, side, 0, 3, ne_last, nb_side, &extra) == GDN_OK &&
             gdn_graph_op(g, GDN_OP_CPY, NULL, 1, &tail, 1, &extra) == GDN_OK;
    } else if (ok) {
        const int64_t ne_sw[3] = {C, W, B}; /* V_NOT_A_BOX: [B][C][W] read as {C, W, B} */
        const size_t nb_dsw[3] = {F, C * F, SLOT * F};
        ok = (var == V_NOT_A_BOX ? gdn_graph_view(g, conv_in, T * F, 3, ne_sw, nb_swap, &tail) == GDN_OK &&
                                       gdn_graph_view(g, pool, SLOT * F, 3, ne_sw, nb_dsw, &dst) == GDN_OK
                                 : gdn_graph_view(g, conv_in, T * F, 3, ne_past, nb_tail, &tail) == GDN_OK) &&
             gdn_graph_op(g, GDN_OP_CPY, NULL, 1, &tail, 1, &dst) == GDN_OK &&
             gdn_graph_op(g, GDN_OP_SSM_CONV, NULL, 2, conv, 1, &r->out) == GDN_OK;
    }
    ok = ok && gdn_graph_mark_output(g, r->out) == GDN_OK;
    if (ok && passes >= 1)
        ok = gdn_graph_pass_copy_elision(g, collect_log, r) == GDN_OK;
    if (ok && passes >= 2)
        ok = gdn_graph_pass_gather_elision(g, collect_log, r) == GDN_OK;
    gdn_tensor ov;
    ok = ok && gdn_graph_compute(g, tb->backend) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK &&
         gdn_graph_tensor_view(g, r->out, &ov) == GDN_OK &&
         gdn_backend_download(tb->backend, out, ov.data, (size_t)C * T * B * F) == GDN_OK &&
         test_buffer_download(&r->pool, pool_out);
    CHECK(ok, "%s: conv-window graph (variant %d, passes %d): %s", tb->label, (int)var, passes, gdn_error_detail());
    return ok;
}

static void check_passes(const test_backend *tb, variant var, const char *expect_log, int want_copies,
                         int want_gathers, test_rng *rng)
{
    float pool0[S * SLOT], fresh0[B * T * FROW], w0[(W + 1) * C];
    for (int i = 0; i < S * SLOT; i++)
        pool0[i] = (float)test_rng_normal(rng);
    for (int i = 0; i < B * T * FROW; i++)
        fresh0[i] = (float)test_rng_normal(rng);
    for (int i = 0; i < (W + 1) * C; i++)
        w0[i] = (float)test_rng_normal(rng);
    float pools[3][S * SLOT], outs[3][C * T * B];
    graph_run runs[3];
    int ok = 1;
    for (int passes = 0; passes < 3; passes++)
        ok = graph_run_step(&runs[passes], tb, var, passes, pool0, fresh0, w0, pools[passes], outs[passes]) && ok;
    if (ok) {
        gdn_graph_stats st;
        gdn_graph_get_stats(runs[2].g, &st);
        for (int passes = 1; passes < 3; passes++)
            CHECK(memcmp(pools[0], pools[passes], sizeof pools[0]) == 0 && memcmp(outs[0], outs[passes], sizeof outs[0]) == 0,
                  "%s: variant %d: passes %d: pool or output bytes differ from the passes off", tb->label, (int)var,
                  passes);
        CHECK(st.n_copies == want_copies && st.n_gathers == want_gathers,
              "%s: variant %d: %d copies, %d gathers left, expected %d and %d; log:\n%s", tb->label, (int)var,
              (int)st.n_copies, (int)st.n_gathers, want_copies, want_gathers, runs[2].log);
        CHECK(strstr(runs[2].log, expect_log) != NULL, "%s: variant %d: expected \"%s\" in the log:\n%s", tb->label,
              (int)var, expect_log, runs[2].log);
    }
    for (int passes = 0; passes < 3; passes++)
        graph_run_free(&runs[passes]);
}

int main(void)
{
    check_build_refusals();
    test_backend backends[8];
    const int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    test_rng rng;
    test_rng_seed(&rng, 2026);
    for (int b = 0; b < n; b++) {
        for (size_t i = 0; i < sizeof op_cases / sizeof op_cases[0]; i++)
            check_op_case(&backends[b], &op_cases[i], &rng);
        for (size_t i = 0; i < sizeof rollback_cases / sizeof rollback_cases[0]; i++)
            check_rollback_case(&backends[b], &rollback_cases[i], &rng);
        check_passes(&backends[b], V_PLAIN, "node 0 (get_rows) removed: node 1 (concat) reads source 0", 0, 0, &rng);
        check_passes(&backends[b], V_PLAIN, "node 2 (cpy) removed: node 1 (concat) also writes the part", 0, 0, &rng);
        check_passes(&backends[b], V_UNDECLARED, "is not declared GDN_GRAPH_OWN_SLOT_INDEX", 0, 1, &rng);
        check_passes(&backends[b], V_NO_TEE, "declares no tee", 1, 0, &rng);
        check_passes(&backends[b], V_NOT_A_BOX, "(not a box of it)", 1, 0, &rng);
        check_passes(&backends[b], V_BETWEEN, "between node 1 and the copy reads the bytes of the destination", 2, 0,
                     &rng);
    }
    test_backends_close(backends, n);
    return test_finish("test_tee");
}
