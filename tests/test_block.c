/* test_block.c: the GDN block built as a graph in llama.cpp's pattern (src/model/gdn_block.h),
 * on every backend present: copy elision on and off give the same bytes (outputs and both cache
 * pools) for decode and verify steps and for several steps in a row; the pass removes the
 * snapshot copy and keeps the conv-window copy for the reason it logs; one step against the math
 * written out here in float64; verifying T tokens in one step equals decoding them one at a time;
 * a sequence's results do not depend on the batch it runs in. */
#include "harness.h"
#include "model/gdn_block.h"
#include "core/graph_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* hidden 64, Hk 2, Hv 4, D 16, Kconv 4, K 3, tiled: the brief's small block. */
static gdn_block_config small_config(gdn_dtype weight_dtype)
{
    gdn_block_config c = gdn_block_config_default();
    c.hidden = 64;
    c.n_k_heads = 2;
    c.n_v_heads = 4;
    c.head_dim = 16;
    c.conv_kernel = 4;
    c.rms_eps = 1e-6f;
    c.n_snapshots = 3;
    c.broadcast = GDN_BROADCAST_TILED;
    c.weight_dtype = weight_dtype;
    return c;
}

#define N_SLOTS 5
#define EXPECT_NODES 20
#define EXPECT_COPIES 2

/* ---------------------------------------------------------------------------------------------
 * One block graph over caller buffers: x [B,T,hidden] and the slot index [B]
 * ------------------------------------------------------------------------------------------- */
typedef struct block_run {
    gdn_graph *g;
    test_buffer x, index;
    int64_t B, T, hidden;
    gdn_tensor_id out;
    gdn_graph_stats before, after;
    char log[4096];
} block_run;

static void collect_log(void *user, const char *message)
{
    block_run *r = user;
    const size_t used = strlen(r->log);
    snprintf(r->log + used, sizeof r->log - used, "%s\n", message);
}

static void block_run_free(block_run *r)
{
    gdn_graph_free(r->g);
    test_buffer_free(&r->x);
    test_buffer_free(&r->index);
    memset(r, 0, sizeof *r);
}

/* Build the step (reads slots[b], writes first_slot + b); pass 1: copy elision; pass 2: copy and
 * gather elision, the index declared GDN_GRAPH_OWN_SLOT_INDEX (the caller's slots must be own). */
static int block_run_build(block_run *r, gdn_backend *backend, const gdn_block_config *c, const gdn_block_weights *w,
                           const gdn_block_cache *cache, int64_t B, int64_t T, const int32_t *slots, int64_t first_slot,
                           int pass)
{
    memset(r, 0, sizeof *r);
    r->B = B, r->T = T, r->hidden = c->hidden;
    const int64_t ne_x[3] = {c->hidden, T, B}, ne_i[1] = {B};
    gdn_tensor xv = gdn_tensor_contiguous(NULL, GDN_DTYPE_F32, 3, ne_x);
    gdn_tensor iv = gdn_tensor_contiguous(NULL, GDN_DTYPE_I32, 1, ne_i);
    gdn_tensor_id x = -1, index = -1;
    int ok = test_buffer_alloc(&r->x, backend, gdn_tensor_span(&xv)) &&
             test_buffer_alloc(&r->index, backend, gdn_tensor_span(&iv)) &&
             test_buffer_upload(&r->index, slots, (size_t)B * sizeof *slots) && gdn_graph_init(&r->g) == GDN_OK;
    xv.data = ok ? test_buffer_data(&r->x) : NULL;
    iv.data = ok ? test_buffer_data(&r->index) : NULL;
    ok = ok && gdn_graph_leaf(r->g, "x", &xv, GDN_GRAPH_INPUT, &x) == GDN_OK &&
         gdn_graph_leaf(r->g, "slot_index", &iv, GDN_GRAPH_INPUT | (pass == 2 ? GDN_GRAPH_OWN_SLOT_INDEX : 0u),
                        &index) == GDN_OK &&
         gdn_block_build(r->g, c, w, cache, x, B, T, index, first_slot, &r->out) == GDN_OK;
    CHECK(ok, "block build (B %lld, T %lld): %s", (long long)B, (long long)T, gdn_error_detail());
    if (!ok)
        return 0;
    gdn_graph_get_stats(r->g, &r->before);
    r->after = r->before;
    if (pass) {
        gdn_status st = gdn_graph_pass_copy_elision(r->g, collect_log, r);
        CHECK(st == GDN_OK, "copy elision: %s", gdn_error_detail());
        if (pass == 2) {
            st = gdn_graph_pass_gather_elision(r->g, collect_log, r);
            CHECK(st == GDN_OK, "gather elision: %s", gdn_error_detail());
        }
        gdn_graph_get_stats(r->g, &r->after);
    }
    return 1;
}

/* Upload x (B*T*hidden floats), compute, download the block output into `out`. */
static int block_run_step(block_run *r, gdn_backend *backend, const float *x, float *out)
{
    const size_t n = (size_t)(r->B * r->T * r->hidden);
    gdn_tensor v;
    int ok = test_buffer_upload(&r->x, x, n * sizeof *x) && gdn_graph_compute(r->g, backend) == GDN_OK &&
             gdn_backend_synchronize(backend) == GDN_OK && gdn_graph_tensor_view(r->g, r->out, &v) == GDN_OK &&
             gdn_tensor_span(&v) == n * sizeof *out &&
             gdn_backend_download(backend, out, v.data, n * sizeof *out) == GDN_OK;
    CHECK(ok, "block step (B %lld, T %lld): %s", (long long)r->B, (long long)r->T, gdn_error_detail());
    return ok;
}

/* ---------------------------------------------------------------------------------------------
 * Host copies
 * ------------------------------------------------------------------------------------------- */
typedef struct pools {
    unsigned char *states, *conv;
    size_t state_bytes, conv_bytes;
} pools;

static int pools_get(const gdn_block_cache *cache, pools *p)
{
    p->state_bytes = gdn_tensor_span(&cache->states);
    p->conv_bytes = gdn_tensor_span(&cache->conv);
    p->states = malloc(p->state_bytes);
    p->conv = malloc(p->conv_bytes);
    int ok = p->states && p->conv && gdn_backend_synchronize(cache->backend) == GDN_OK &&
             gdn_backend_download(cache->backend, p->states, cache->states.data, p->state_bytes) == GDN_OK &&
             gdn_backend_download(cache->backend, p->conv, cache->conv.data, p->conv_bytes) == GDN_OK;
    CHECK(ok, "download of the cache pools: %s", gdn_error_detail());
    return ok;
}

static void pools_free(pools *p)
{
    free(p->states);
    free(p->conv);
}

static int pools_equal(const pools *a, const pools *b)
{
    return a->state_bytes == b->state_bytes && a->conv_bytes == b->conv_bytes &&
           memcmp(a->states, b->states, a->state_bytes) == 0 && memcmp(a->conv, b->conv, a->conv_bytes) == 0;
}

static float *random_x(int64_t n, uint64_t seed)
{
    test_rng rng;
    test_rng_seed(&rng, seed);
    float *x = malloc((size_t)n * sizeof *x);
    for (int64_t i = 0; x && i < n; i++)
        x[i] = (float)test_rng_normal(&rng);
    return x;
}

/* A cache of N_SLOTS slots filled from `seed`, and `n_copies` byte-identical copies of it. */
static int caches_open(gdn_backend *backend, const gdn_block_config *c, gdn_block_cache *caches, int n, uint64_t seed)
{
    int ok = 1;
    for (int i = 0; ok && i < n; i++)
        ok = gdn_block_cache_init(&caches[i], backend, c, N_SLOTS) == GDN_OK &&
             (i == 0 ? gdn_block_cache_randomize(&caches[0], seed) : gdn_block_cache_copy(&caches[i], &caches[0])) ==
                 GDN_OK;
    CHECK(ok, "cache setup: %s", gdn_error_detail());
    return ok;
}

static void caches_close(gdn_block_cache *caches, int n)
{
    for (int i = 0; i < n; i++)
        gdn_block_cache_free(&caches[i]);
}

/* The node list of a step: op and destination shape (outermost first), after the pass. */
static void print_nodes(const block_run *r, const char *title)
{
    printf("%s: %d nodes, %d copies\n", title, (int)r->after.n_nodes, (int)r->after.n_copies);
    for (int32_t n = 0; n < r->g->n_nodes; n++) {
        const gdn_graph_node *node = &r->g->nodes[n];
        if (node->removed)
            continue;
        printf("  %2d %-16s", (int)n, gdn_op_traits_of(node->kind)->name);
        for (int d = 0; d < node->n_dst; d++) {
            const gdn_graph_tensor *t = &r->g->tensors[node->dst[d]];
            printf(" %s [", t->name);
            for (int i = t->view.n_dims - 1; i >= 0; i--)
                printf("%lld%s", (long long)t->view.ne[i], i ? "," : "]");
        }
        printf("\n");
    }
}

/* ---------------------------------------------------------------------------------------------
 * 1. Pass on and off: same bytes, the expected counts, each copy's fate by its logged reason
 * ------------------------------------------------------------------------------------------- */
static void check_pass_identity(const test_backend *tb, gdn_dtype wdtype, int64_t T, int print)
{
    const gdn_block_config c = small_config(wdtype);
    const int64_t B = 3, first_slot = 1;
    const int32_t slots[3] = {4, 0, 2}; /* read by index; written: slots 1..3 */
    gdn_block_weights w;
    gdn_block_cache caches[3]; /* initial, pass off, pass on */
    block_run off, on;
    memset(&off, 0, sizeof off), memset(&on, 0, sizeof on);
    if (gdn_block_weights_init(&w, tb->backend, &c, 1) != GDN_OK) {
        CHECK(0, "%s: weights: %s", tb->label, gdn_error_detail());
        return;
    }
    const int64_t n_x = B * T * c.hidden;
    float *x = random_x(n_x, 100 + (uint64_t)T), *out_off = malloc((size_t)n_x * 4), *out_on = malloc((size_t)n_x * 4);
    pools init = {0}, p_off = {0}, p_on = {0};
    if (caches_open(tb->backend, &c, caches, 3, 7) &&
        block_run_build(&off, tb->backend, &c, &w, &caches[1], B, T, slots, first_slot, 0) &&
        block_run_build(&on, tb->backend, &c, &w, &caches[2], B, T, slots, first_slot, 1)) {
        const char *what = wdtype == GDN_DTYPE_BF16 ? "bf16" : "f32";
        printf("%s: %s weights, B %lld, T %lld: before the pass %d nodes, %d copies; after %d nodes, %d copies "
               "(%d removed, %zu bytes saved, intermediates %zu -> %zu bytes)\n", tb->label, what, (long long)B,
               (long long)T, (int)on.before.n_nodes, (int)on.before.n_copies, (int)on.after.n_nodes,
               (int)on.after.n_copies, (int)on.after.nodes_removed, on.after.bytes_saved,
               on.before.intermediate_bytes, on.after.intermediate_bytes);
        printf("%s", on.log);
        if (print) {
            char title[64];
            snprintf(title, sizeof title, "node list, T %lld, pass off", (long long)T);
            print_nodes(&off, title);
        }
        CHECK(off.before.n_nodes == EXPECT_NODES && off.before.n_copies == EXPECT_COPIES,
              "%s: T %lld: %d nodes, %d copies before the pass, expected %d and %d", tb->label, (long long)T,
              (int)off.before.n_nodes, (int)off.before.n_copies, EXPECT_NODES, EXPECT_COPIES);
        CHECK(on.after.n_copies < on.before.n_copies, "%s: T %lld: the pass removed no copy", tb->label, (long long)T);
        /* The snapshot copy (node 17) is forwarded into the GDN op (node 16). */
        CHECK(strstr(on.log, "node 17 (cpy) removed: node 16 (gated_delta_net) writes destination 1") != NULL,
              "%s: T %lld: the snapshot copy was not forwarded:\n%s", tb->label, (long long)T, on.log);
        /* The conv-window copy (node 4) copies a part of the concat output, which ssm_conv reads
         * whole: the concat (it declares a tee) also writes that part into the conv pool. */
        CHECK(strstr(on.log, "node 4 (cpy) removed: node 3 (concat) also writes the part") != NULL,
              "%s: T %lld: the conv-window copy was not teed into the concat:\n%s", tb->label, (long long)T, on.log);
        CHECK(on.after.n_nodes == EXPECT_NODES - 2 && on.after.n_copies == 0 && on.after.nodes_removed == 2,
              "%s: T %lld: after the pass %d nodes, %d copies, expected %d and 0", tb->label, (long long)T,
              (int)on.after.n_nodes, (int)on.after.n_copies, EXPECT_NODES - 2);
        const size_t snap = (size_t)((T < c.n_snapshots ? T : c.n_snapshots) * B * c.n_v_heads * c.head_dim *
                                     c.head_dim) * 4;
        const size_t window = (size_t)((c.conv_kernel - 1) * gdn_block_conv_dim(&c) * B) * 4; /* read by the copy */
        CHECK(on.after.bytes_saved == 2 * snap + window && on.after.intermediate_bytes < on.before.intermediate_bytes,
              "%s: T %lld: %zu bytes saved (expected %zu), intermediates %zu -> %zu", tb->label, (long long)T,
              on.after.bytes_saved, 2 * snap + window, on.before.intermediate_bytes, on.after.intermediate_bytes);

        if (x && out_off && out_on && block_run_step(&off, tb->backend, x, out_off) &&
            block_run_step(&on, tb->backend, x, out_on) && pools_get(&caches[0], &init) &&
            pools_get(&caches[1], &p_off) && pools_get(&caches[2], &p_on)) {
            CHECK(memcmp(out_off, out_on, (size_t)n_x * 4) == 0, "%s: T %lld: block output differs with the pass on",
                  tb->label, (long long)T);
            CHECK(memcmp(p_off.states, p_on.states, p_off.state_bytes) == 0, "%s: T %lld: state pool differs with "
                  "the pass on", tb->label, (long long)T);
            CHECK(memcmp(p_off.conv, p_on.conv, p_off.conv_bytes) == 0, "%s: T %lld: conv pool differs with the "
                  "pass on", tb->label, (long long)T);
            int finite = 1;
            for (int64_t i = 0; i < n_x; i++)
                finite = finite && isfinite(out_on[i]);
            CHECK(finite, "%s: T %lld: non-finite block output", tb->label, (long long)T);
            /* Slots 0 and 4 are read, never written; slots 1..3 are written. With T < K, groups
             * T..K-1 of the written slots keep their bytes. */
            const size_t slot_s = p_on.state_bytes / N_SLOTS, slot_c = p_on.conv_bytes / N_SLOTS;
            const size_t group = slot_s / (size_t)c.n_snapshots;
            const int64_t written = T < c.n_snapshots ? T : c.n_snapshots;
            int kept = 1, changed = 1;
            for (int s = 0; s < N_SLOTS; s++) {
                const int w_slot = s >= first_slot && s < first_slot + B;
                const size_t lo = w_slot ? (size_t)written * group : 0;
                kept = kept && memcmp(init.states + s * slot_s + lo, p_on.states + s * slot_s + lo, slot_s - lo) == 0;
                kept = kept && (w_slot || memcmp(init.conv + s * slot_c, p_on.conv + s * slot_c, slot_c) == 0);
                changed = changed && (!w_slot || (memcmp(init.states + s * slot_s, p_on.states + s * slot_s, group) != 0 &&
                                                  memcmp(init.conv + s * slot_c, p_on.conv + s * slot_c, slot_c) != 0));
            }
            CHECK(kept, "%s: T %lld: cache bytes outside the written slots and groups changed", tb->label, (long long)T);
            CHECK(changed, "%s: T %lld: a written slot kept its old state or window", tb->label, (long long)T);
        }
    }
    pools_free(&init), pools_free(&p_off), pools_free(&p_on);
    free(x), free(out_off), free(out_on);
    block_run_free(&off), block_run_free(&on);
    caches_close(caches, 3);
    gdn_block_weights_free(&w);
}

/* ---------------------------------------------------------------------------------------------
 * 2. Decode 5 steps in a row (the pools feed forward), pass on and off; and verifying the first
 *    3 tokens in one step gives the same outputs, snapshots and window as decoding them.
 * ------------------------------------------------------------------------------------------- */
#define N_STEPS 5
static void check_decode_steps(const test_backend *tb)
{
    const gdn_block_config c = small_config(GDN_DTYPE_F32);
    const int64_t B = 3, T_verify = 3, H = c.hidden;
    const int32_t slots[3] = {0, 1, 2};
    gdn_block_weights w;
    gdn_block_cache caches[3]; /* pass off, pass on, verify */
    block_run off, on, verify;
    memset(&off, 0, sizeof off), memset(&on, 0, sizeof on), memset(&verify, 0, sizeof verify);
    if (gdn_block_weights_init(&w, tb->backend, &c, 3) != GDN_OK) {
        CHECK(0, "%s: weights: %s", tb->label, gdn_error_detail());
        return;
    }
    /* xs[step][b][hidden] for decoding; the verify input is [b][t][hidden] of the first 3 steps. */
    float *xs = random_x(N_STEPS * B * H, 55), *x_verify = malloc((size_t)(B * T_verify * H) * 4);
    float *out_off = malloc((size_t)(N_STEPS * B * H) * 4), *out_on = malloc((size_t)(N_STEPS * B * H) * 4);
    float *out_verify = malloc((size_t)(B * T_verify * H) * 4);
    pools after_step[N_STEPS], p_off = {0}, p_verify = {0};
    memset(after_step, 0, sizeof after_step);
    int ok = xs && x_verify && out_off && out_on && out_verify && caches_open(tb->backend, &c, caches, 3, 9) &&
             block_run_build(&off, tb->backend, &c, &w, &caches[0], B, 1, slots, 0, 0) &&
             block_run_build(&on, tb->backend, &c, &w, &caches[1], B, 1, slots, 0, 2) &&
             block_run_build(&verify, tb->backend, &c, &w, &caches[2], B, T_verify, slots, 0, 2);
    /* Both passes over own slots leave no copy and no gather: the GDN op and the concat read
     * their slots in place and write the new state and window straight back. */
    CHECK(!ok || (on.after.n_copies == 0 && on.after.n_gathers == 0 && on.after.n_nodes == EXPECT_NODES - 4 &&
                  verify.after.n_copies == 0 && verify.after.n_gathers == 0),
          "%s: both passes leave %d copies, %d gathers, %d nodes (expected 0, 0, %d):\n%s", tb->label,
          (int)on.after.n_copies, (int)on.after.n_gathers, (int)on.after.n_nodes, EXPECT_NODES - 4, on.log);
    int same_outputs = 1, same_pools = 1;
    for (int s = 0; ok && s < N_STEPS; s++) {
        const float *x = xs + (size_t)(s * B * H);
        ok = block_run_step(&off, tb->backend, x, out_off + s * B * H) &&
             block_run_step(&on, tb->backend, x, out_on + s * B * H) && pools_get(&caches[0], &after_step[s]) &&
             pools_get(&caches[1], &p_off);
        same_outputs = same_outputs && memcmp(out_off + s * B * H, out_on + s * B * H, (size_t)(B * H) * 4) == 0;
        same_pools = same_pools && pools_equal(&after_step[s], &p_off);
        pools_free(&p_off);
    }
    if (ok) {
        CHECK(same_outputs, "%s: decode %d steps: outputs differ with both passes on", tb->label, N_STEPS);
        CHECK(same_pools, "%s: decode %d steps: cache pools differ with both passes on", tb->label, N_STEPS);
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T_verify; t++)
                memcpy(x_verify + (b * T_verify + t) * H, xs + (t * B + b) * H, (size_t)H * 4);
        ok = block_run_step(&verify, tb->backend, x_verify, out_verify) && pools_get(&caches[2], &p_verify);
    }
    if (ok) {
        int outputs = 1, snapshots = 1, window = 1;
        const size_t group = (size_t)(c.n_v_heads * c.head_dim * c.head_dim) * 4, slot = group * (size_t)c.n_snapshots;
        const size_t window_bytes = p_verify.conv_bytes / N_SLOTS;
        for (int64_t b = 0; b < B; b++) {
            for (int64_t t = 0; t < T_verify; t++)
                outputs = outputs && memcmp(out_verify + (b * T_verify + t) * H, out_off + (t * B + b) * H,
                                            (size_t)H * 4) == 0;
            /* group g after verifying = state after token T-1-g = group 0 after decode step T-1-g */
            for (int64_t g = 0; g < T_verify; g++)
                snapshots = snapshots && memcmp(p_verify.states + b * slot + g * group,
                                                after_step[T_verify - 1 - g].states + b * slot, group) == 0;
            window = window && memcmp(p_verify.conv + b * window_bytes, after_step[T_verify - 1].conv + b * window_bytes,
                                      window_bytes) == 0;
        }
        CHECK(outputs, "%s: verifying %lld tokens: outputs differ from decoding them one by one", tb->label,
              (long long)T_verify);
        CHECK(snapshots, "%s: verifying %lld tokens: snapshot groups differ from the states after each decode step",
              tb->label, (long long)T_verify);
        CHECK(window, "%s: verifying %lld tokens: conv window differs from decoding them", tb->label,
              (long long)T_verify);
    }
    for (int s = 0; s < N_STEPS; s++)
        pools_free(&after_step[s]);
    pools_free(&p_verify);
    free(xs), free(x_verify), free(out_off), free(out_on), free(out_verify);
    block_run_free(&off), block_run_free(&on), block_run_free(&verify);
    caches_close(caches, 3);
    gdn_block_weights_free(&w);
}

/* ---------------------------------------------------------------------------------------------
 * 3. One step (B 1, T 1) against the block's math in float64, from the same weights and cache
 * ------------------------------------------------------------------------------------------- */
/* A contiguous backend tensor (F32 or BF16) as doubles. */
static double *fetch(gdn_backend *backend, const gdn_tensor *t)
{
    const int64_t n = gdn_tensor_count(t);
    const size_t size = gdn_dtype_size(t->dtype);
    unsigned char *raw = malloc((size_t)n * size);
    double *out = malloc((size_t)n * sizeof *out);
    if (raw == NULL || out == NULL || gdn_backend_download(backend, raw, t->data, (size_t)n * size) != GDN_OK) {
        free(raw), free(out);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        float f;
        if (t->dtype == GDN_DTYPE_BF16) {
            uint16_t h;
            memcpy(&h, raw + 2 * i, 2);
            const uint32_t bits = (uint32_t)h << 16;
            memcpy(&f, &bits, 4);
        } else {
            memcpy(&f, raw + 4 * i, 4);
        }
        out[i] = f;
    }
    free(raw);
    return out;
}

static double sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

static double rel_error(const float *got, const double *ref, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0.0 ? den : 1.0));
}

static void check_float64(const test_backend *tb, gdn_dtype wdtype, gdn_broadcast broadcast)
{
    gdn_block_config c = small_config(wdtype);
    c.hidden = 32, c.n_snapshots = 2, c.broadcast = broadcast; /* Hk 2, Hv 4: the broadcast rules differ */
    const int64_t H = c.hidden, Hk = c.n_k_heads, Hv = c.n_v_heads, D = c.head_dim, Kc = c.conv_kernel;
    const int64_t C = gdn_block_conv_dim(&c), QKVZ = gdn_block_qkvz_dim(&c);
    const int32_t read_slot = 3;
    const int64_t write_slot = 1;
    gdn_block_weights w;
    gdn_block_cache cache;
    block_run r;
    memset(&r, 0, sizeof r);
    if (gdn_block_weights_init(&w, tb->backend, &c, 11) != GDN_OK) {
        CHECK(0, "%s: weights: %s", tb->label, gdn_error_detail());
        return;
    }
    float *x = random_x(H, 77), out[32];
    pools before = {0}, after = {0};
    double *wq = NULL, *wba = NULL, *wc = NULL, *dtb = NULL, *alog = NULL, *wn = NULL, *wo = NULL;
    int ok = x && caches_open(tb->backend, &c, &cache, 1, 13) && pools_get(&cache, &before) &&
             block_run_build(&r, tb->backend, &c, &w, &cache, 1, 1, &read_slot, write_slot, 1) &&
             block_run_step(&r, tb->backend, x, out) && pools_get(&cache, &after);
    wq = fetch(tb->backend, &w.in_proj_qkvz), wba = fetch(tb->backend, &w.in_proj_ba);
    wc = fetch(tb->backend, &w.conv1d), dtb = fetch(tb->backend, &w.dt_bias), alog = fetch(tb->backend, &w.A_log);
    wn = fetch(tb->backend, &w.norm), wo = fetch(tb->backend, &w.out_proj);
    ok = ok && wq && wba && wc && dtb && alog && wn && wo;
    CHECK(ok, "%s: float64 check setup: %s", tb->label, gdn_error_detail());
    if (ok) {
        /* Sizes of this config: C = 128, QKVZ = 192, Hv*D = 64; the arrays below are sized for it. */
        double qkvz[192], ba[8], col[128][4], act[128], q[16], k[16], S[16][16], o[4][16], normed[64], ref_out[32];
        double ref_state[4 * 16 * 16], ref_window[3 * 128];
        const float *state0 = (const float *)(before.states + (size_t)read_slot * (before.state_bytes / N_SLOTS));
        const float *window0 = (const float *)(before.conv + (size_t)read_slot * (before.conv_bytes / N_SLOTS));
        for (int64_t n = 0; n < QKVZ; n++) {
            qkvz[n] = 0.0;
            for (int64_t i = 0; i < H; i++)
                qkvz[n] += wq[n * H + i] * x[i];
        }
        for (int64_t n = 0; n < 2 * Hv; n++) {
            ba[n] = 0.0;
            for (int64_t i = 0; i < H; i++)
                ba[n] += wba[n * H + i] * x[i];
        }
        /* The conv: Kc columns per channel, the window's Kc-1 then the new one; silu. */
        for (int64_t ch = 0; ch < C; ch++) {
            double sum = 0.0;
            for (int64_t t = 0; t < Kc; t++) {
                col[ch][t] = t < Kc - 1 ? (double)window0[t * C + ch] : qkvz[ch];
                sum += col[ch][t] * wc[ch * Kc + t];
            }
            act[ch] = sum * sigmoid(sum);
            for (int64_t t = 0; t + 1 < Kc; t++)
                ref_window[t * C + ch] = col[ch][t + 1];
        }
        for (int64_t h = 0; h < Hv; h++) {
            const int64_t kh = broadcast == GDN_BROADCAST_TILED ? h % Hk : h / (Hv / Hk);
            double qn = 0.0, kn = 0.0;
            for (int64_t i = 0; i < D; i++) {
                qn += act[kh * D + i] * act[kh * D + i];
                kn += act[Hk * D + kh * D + i] * act[Hk * D + kh * D + i];
            }
            for (int64_t i = 0; i < D; i++) {
                q[i] = act[kh * D + i] / sqrt(qn + 1e-6);
                k[i] = act[Hk * D + kh * D + i] / sqrt(kn + 1e-6);
            }
            const double beta = sigmoid(ba[h]), a = ba[Hv + h] + dtb[h];
            const double g = -exp(alog[h]) * (a > 20.0 ? a : log1p(exp(a)));
            for (int64_t j = 0; j < D; j++)
                for (int64_t i = 0; i < D; i++)
                    S[j][i] = exp(g) * (double)state0[(h * D + j) * D + i];
            for (int64_t j = 0; j < D; j++) {
                double sk = 0.0;
                for (int64_t i = 0; i < D; i++)
                    sk += S[j][i] * k[i];
                const double d = beta * (act[2 * Hk * D + h * D + j] - sk);
                for (int64_t i = 0; i < D; i++)
                    S[j][i] += d * k[i];
            }
            double ms = 0.0;
            for (int64_t j = 0; j < D; j++) {
                o[h][j] = 0.0;
                for (int64_t i = 0; i < D; i++) {
                    o[h][j] += S[j][i] * q[i];
                    ref_state[(h * D + j) * D + i] = S[j][i];
                }
                o[h][j] /= sqrt((double)D);
                ms += o[h][j] * o[h][j];
            }
            for (int64_t j = 0; j < D; j++) {
                const double z = qkvz[C + h * D + j];
                normed[h * D + j] = o[h][j] / sqrt(ms / (double)D + (double)c.rms_eps) * wn[j] * z * sigmoid(z);
            }
        }
        for (int64_t n = 0; n < H; n++) {
            ref_out[n] = 0.0;
            for (int64_t m = 0; m < Hv * D; m++)
                ref_out[n] += wo[n * Hv * D + m] * normed[m];
        }
        const float *state1 = (const float *)(after.states + (size_t)write_slot * (after.state_bytes / N_SLOTS));
        const float *window1 = (const float *)(after.conv + (size_t)write_slot * (after.conv_bytes / N_SLOTS));
        const double e_out = rel_error(out, ref_out, H), e_state = rel_error(state1, ref_state, Hv * D * D);
        const double e_window = rel_error(window1, ref_window, (Kc - 1) * C);
        printf("%s: float64 check (%s weights, %s): relative error output %.3g, state %.3g, window %.3g\n", tb->label,
               wdtype == GDN_DTYPE_BF16 ? "bf16" : "f32", broadcast == GDN_BROADCAST_TILED ? "tiled" : "interleaved",
               e_out, e_state, e_window);
        /* float32 ops each within an ulp or so of their float64 value, over reductions of at most
         * 64 terms: about 1e-7, far below 1e-5. The window holds old columns (exact) and the new
         * one, in_proj's float32 result. */
        CHECK(e_out < 1e-5 && e_state < 1e-5 && e_window < 1e-6, "%s: float64 check: errors %.3g, %.3g, %.3g",
              tb->label, e_out, e_state, e_window);
    }
    free(wq), free(wba), free(wc), free(dtb), free(alog), free(wn), free(wo), free(x);
    pools_free(&before), pools_free(&after);
    block_run_free(&r);
    gdn_block_cache_free(&cache);
    gdn_block_weights_free(&w);
}

/* ---------------------------------------------------------------------------------------------
 * 4. Batch invariance: sequence j alone (B 1) gives the bits it gets in a batch of 3
 * ------------------------------------------------------------------------------------------- */
static void check_batch_invariance(const test_backend *tb, int64_t T)
{
    const gdn_block_config c = small_config(GDN_DTYPE_BF16);
    const int64_t B = 3, first_slot = 1, H = c.hidden;
    const int32_t slots[3] = {4, 0, 2};
    gdn_block_weights w;
    gdn_block_cache caches[2]; /* initial, working copy */
    if (gdn_block_weights_init(&w, tb->backend, &c, 5) != GDN_OK) {
        CHECK(0, "%s: weights: %s", tb->label, gdn_error_detail());
        return;
    }
    float *x = random_x(B * T * H, 200 + (uint64_t)T), *out_all = malloc((size_t)(B * T * H) * 4);
    float *out_one = malloc((size_t)(T * H) * 4);
    pools all = {0};
    block_run r;
    memset(&r, 0, sizeof r);
    int ok = x && out_all && out_one && caches_open(tb->backend, &c, caches, 2, 21) &&
             block_run_build(&r, tb->backend, &c, &w, &caches[1], B, T, slots, first_slot, 1) &&
             block_run_step(&r, tb->backend, x, out_all) && pools_get(&caches[1], &all);
    block_run_free(&r);
    const size_t slot_s = all.state_bytes / N_SLOTS, slot_c = all.conv_bytes / N_SLOTS;
    for (int64_t j = 0; ok && j < B; j++) {
        pools one = {0};
        ok = gdn_block_cache_copy(&caches[1], &caches[0]) == GDN_OK &&
             block_run_build(&r, tb->backend, &c, &w, &caches[1], 1, T, &slots[j], first_slot + j, 1) &&
             block_run_step(&r, tb->backend, x + j * T * H, out_one) && pools_get(&caches[1], &one);
        if (ok) {
            const int64_t s = first_slot + j;
            CHECK(memcmp(out_one, out_all + j * T * H, (size_t)(T * H) * 4) == 0,
                  "%s: T %lld: sequence %lld's output depends on the batch", tb->label, (long long)T, (long long)j);
            CHECK(memcmp(one.states + s * slot_s, all.states + s * slot_s, slot_s) == 0 &&
                      memcmp(one.conv + s * slot_c, all.conv + s * slot_c, slot_c) == 0,
                  "%s: T %lld: sequence %lld's cache slot depends on the batch", tb->label, (long long)T, (long long)j);
        }
        pools_free(&one);
        block_run_free(&r);
    }
    CHECK(ok, "%s: batch invariance T %lld: %s", tb->label, (long long)T, gdn_error_detail());
    pools_free(&all);
    free(x), free(out_all), free(out_one);
    caches_close(caches, 2);
    gdn_block_weights_free(&w);
}

/* Build errors: the step must fit the cache and the config must match the weights. */
static void check_build_errors(void)
{
    gdn_backend *cpu = NULL;
    const gdn_block_config c = small_config(GDN_DTYPE_F32);
    gdn_block_weights w;
    gdn_block_cache cache;
    if (gdn_backend_init(&cpu, GDN_BACKEND_CPU, NULL) != GDN_OK || gdn_block_weights_init(&w, cpu, &c, 1) != GDN_OK ||
        gdn_block_cache_init(&cache, cpu, &c, 2) != GDN_OK) {
        CHECK(0, "build errors setup: %s", gdn_error_detail());
        gdn_backend_free(cpu);
        return;
    }
    /* B 3 does not fit a 2-slot cache. */
    gdn_graph *g = NULL;
    gdn_tensor_id out;
    gdn_status st = gdn_graph_init(&g);
    st = st == GDN_OK ? gdn_block_build(g, &c, &w, &cache, 0, 3, 1, 0, 0, &out) : st;
    CHECK(st == GDN_ERROR_INVALID_ARGUMENT && strstr(gdn_error_detail(), "the cache has 2") != NULL,
          "B 3 into a 2-slot cache: %d (%s)", (int)st, gdn_error_detail());
    gdn_block_config other = c;
    other.head_dim = 32;
    st = gdn_block_build(g, &other, &w, &cache, 0, 1, 1, 0, 0, &out);
    CHECK(st == GDN_ERROR_INVALID_ARGUMENT && strstr(gdn_error_detail(), "other sizes") != NULL,
          "config that does not match the weights: %d (%s)", (int)st, gdn_error_detail());
    other = c;
    other.head_dim = 24;
    CHECK(gdn_block_config_check(&other) == GDN_ERROR_SHAPE, "head_dim 24 accepted");
    gdn_graph_free(g);
    gdn_block_cache_free(&cache);
    gdn_block_weights_free(&w);
    gdn_backend_free(cpu);
}

int main(void)
{
    check_build_errors();
    test_backend backends[8];
    const int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        const test_backend *tb = &backends[b];
        for (int wd = 0; wd < 2; wd++) {
            const gdn_dtype wdtype = wd ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
            check_pass_identity(tb, wdtype, 1, b == 0 && wd == 0);
            check_pass_identity(tb, wdtype, 3, b == 0 && wd == 0);
            check_float64(tb, wdtype, GDN_BROADCAST_TILED);
        }
        check_float64(tb, GDN_DTYPE_F32, GDN_BROADCAST_INTERLEAVED);
        check_decode_steps(tb);
        check_batch_invariance(tb, 1);
        check_batch_invariance(tb, 3);
    }
    test_backends_close(backends, n);
    return test_finish("test_block");
}
