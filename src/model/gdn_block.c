/* gdn_block.c: the GDN block as a graph in llama.cpp's qwen3next pattern (gdn_block_build), and
 * the synthetic weights and recurrent cache it runs on. One step adds these nodes (B sequences,
 * T tokens each; C = conv_dim, Kc = Kconv; shapes outermost first):
 *    0 mul_mat   qkvz  [B,T,qkvz_dim] = in_proj_qkvz x
 *    1 mul_mat   ba    [B,T,2Hv]      = in_proj_ba x
 *    2 get_rows  window rows [B, (Kc-1)*C]: conv pool slots by slot_index
 *    3 concat    conv_in [B,C,Kc-1+T] = window (viewed [B,C,Kc-1]) ++ qkv (view of qkvz, [B,C,T]),
 *                along time (innermost): both sources are transposing views, no cont
 *    4 cpy       conv_in[:, :, T:] -> conv pool slots [first, first+B)   (window update;
 *                set_rows into slots[b] for a cache step's slots, which need not be consecutive)
 *    5 ssm_conv  conv [B,T,C]
 *    6 silu      conv_act [B,T,C]; q, k, v are views of it
 *    7 sigmoid   beta [B,T,Hv] = sigmoid(b)   (7-12: one gdn_gates node with config.fused_gates)
 *    8 add       a + dt_bias
 *    9 softplus
 *   10 exp       exp(A_log) [Hv]
 *   11 scale     -exp(A_log)      (GGUF stores this as ssm_a; here it stays two ops on A_log)
 *   12 mul       g [B,T,Hv] = softplus(a + dt_bias) * -exp(A_log)
 *   13 l2_norm   q [B,T,Hk,D]   (eps 1e-6; the GDN op's own l2norm stays off, as in llama.cpp,
 *                               unless config.l2norm_in_op: then 13 and 14 go)
 *   14 l2_norm   k [B,T,Hk,D]
 *   15 get_rows  state [B,Hv,D,D]: group 0 of the state pool slots by slot_index (the gather)
 *   16 gated_delta_net  o [B,T,Hv,D], states [min(T,K),B,Hv,D,D] (an intermediate)
 *   17 cpy       states -> state pool [first, first+B) groups 0..min(T,K)-1 (one strided copy;
 *                set_rows into slots[b] along the sequence dim for a cache step)
 *   18 rms_norm_gated  o normed with norm weight and silu(z) (z a view of qkvz)
 *   19 mul_mat   out [B,T,hidden] = out_proj normed   (a graph output)
 * Copy elision forwards node 17 into the GDN op (its snapshots go straight into the groups) and
 * folds node 4 into the concat as a tee (the concat output stays, ssm_conv reads it whole; the
 * concat also writes its last Kc-1 columns into the slots); the set_rows forms go the same way,
 * the op then writing through the slots index (scatter elision). Gather elision then makes the GDN op
 * and the concat read their slots through slot_index (nodes 15 and 2 go), when the index is
 * declared GDN_GRAPH_OWN_SLOT_INDEX: 16 nodes, no copy, no gather. */
#include "gdn_block.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Configuration
 * ------------------------------------------------------------------------------------------- */
gdn_block_config gdn_block_config_default(void)
{
    gdn_block_config c;
    memset(&c, 0, sizeof c);
    c.hidden = 2048;
    c.n_k_heads = 16;
    c.n_v_heads = 32;
    c.head_dim = 128;
    c.conv_kernel = 4;
    c.rms_eps = 1e-6f;
    c.n_snapshots = 4;
    c.broadcast = GDN_BROADCAST_TILED;
    c.weight_dtype = GDN_DTYPE_BF16;
    return c;
}

int64_t gdn_block_qkvz_dim(const gdn_block_config *c)
{
    return 2 * c->n_k_heads * c->head_dim + 2 * c->n_v_heads * c->head_dim;
}

int64_t gdn_block_conv_dim(const gdn_block_config *c)
{
    return 2 * c->n_k_heads * c->head_dim + c->n_v_heads * c->head_dim;
}

gdn_status gdn_block_config_check(const gdn_block_config *c)
{
    if (c == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block: NULL config");
    const int64_t D = c->head_dim;
    if (D != 16 && D != 32 && D != 64 && D != 128 && D != 256)
        return gdn_fail(GDN_ERROR_SHAPE, "gdn block: head_dim=%lld, expected 16, 32, 64, 128 or 256", (long long)D);
    if (c->hidden < 1 || c->n_k_heads < 1 || c->n_v_heads < 1 || c->n_v_heads % c->n_k_heads != 0)
        return gdn_fail(GDN_ERROR_SHAPE, "gdn block: hidden=%lld, Hk=%lld, Hv=%lld; expected sizes >= 1 and Hv a "
                        "multiple of Hk", (long long)c->hidden, (long long)c->n_k_heads, (long long)c->n_v_heads);
    if (c->conv_kernel < 2)
        return gdn_fail(GDN_ERROR_SHAPE, "gdn block: conv_kernel=%lld, expected >= 2", (long long)c->conv_kernel);
    if (c->n_snapshots < 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block: n_snapshots=%d, expected >= 1", (int)c->n_snapshots);
    if (!isfinite(c->rms_eps) || c->rms_eps < 0.0f)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block: rms_eps=%g, expected a finite value >= 0",
                        (double)c->rms_eps);
    if (c->broadcast != GDN_BROADCAST_TILED && c->broadcast != GDN_BROADCAST_INTERLEAVED)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block: unknown broadcast rule %d", (int)c->broadcast);
    if (c->rollback != 0 && c->rollback != 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block: rollback=%d, expected 0 or 1", (int)c->rollback);
    if (c->weight_dtype != GDN_DTYPE_F32 && c->weight_dtype != GDN_DTYPE_BF16)
        return gdn_fail(GDN_ERROR_TYPE, "gdn block: weights are %s, expected F32 or BF16",
                        gdn_dtype_name(c->weight_dtype));
    if (c->l2norm_in_op != 0 && c->l2norm_in_op != 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block: l2norm_in_op=%d, expected 0 or 1",
                        (int)c->l2norm_in_op);
    if (c->fused_gates != 0 && c->fused_gates != 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block: fused_gates=%d, expected 0 or 1", (int)c->fused_gates);
    if (c->state_dtype != GDN_DTYPE_F32 && c->state_dtype != GDN_DTYPE_BF16)
        return gdn_fail(GDN_ERROR_TYPE, "gdn block: state pool %s, expected F32 or BF16",
                        gdn_dtype_name(c->state_dtype));
    return GDN_OK;
}

static int same_config(const gdn_block_config *a, const gdn_block_config *b)
{
    return a->hidden == b->hidden && a->n_k_heads == b->n_k_heads && a->n_v_heads == b->n_v_heads &&
           a->head_dim == b->head_dim && a->conv_kernel == b->conv_kernel && a->n_snapshots == b->n_snapshots &&
           a->weight_dtype == b->weight_dtype && a->rollback == b->rollback; /* the state dtype is the cache's */
}

/* ---------------------------------------------------------------------------------------------
 * Seeded numbers: splitmix64, the same bits on every machine
 * ------------------------------------------------------------------------------------------- */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s, double lo, double hi)
{
    return lo + (hi - lo) * (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

static double rng_normal(uint64_t *s)
{
    const double u = rng_uniform(s, 0x1.0p-53, 1.0), w = rng_uniform(s, 0.0, 1.0);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * w);
}

/* ---------------------------------------------------------------------------------------------
 * Weights
 * ------------------------------------------------------------------------------------------- */
enum { W_QKVZ, W_BA, W_CONV, W_DT_BIAS, W_A_LOG, W_NORM, W_OUT, W_COUNT };

void gdn_block_weights_free(gdn_block_weights *w)
{
    if (w == NULL)
        return;
    if (w->memory != NULL)
        gdn_backend_dealloc(w->backend, w->memory);
    memset(w, 0, sizeof *w);
}

gdn_status gdn_block_weights_init(gdn_block_weights *w, gdn_backend *backend, const gdn_block_config *config,
                                  uint64_t seed)
{
    gdn_clear_error();
    if (w == NULL || backend == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block weights: NULL weights or backend");
    memset(w, 0, sizeof *w);
    gdn_status st = gdn_block_config_check(config);
    if (st != GDN_OK)
        return st;
    const gdn_block_config c = *config;
    const int64_t Hv = c.n_v_heads, D = c.head_dim, hidden = c.hidden, Kc = c.conv_kernel;
    const int64_t shapes[W_COUNT][2] = {
        [W_QKVZ] = {hidden, gdn_block_qkvz_dim(&c)}, [W_BA] = {hidden, 2 * Hv},
        [W_CONV] = {Kc, gdn_block_conv_dim(&c)},     [W_DT_BIAS] = {Hv, 1},
        [W_A_LOG] = {Hv, 1},                         [W_NORM] = {D, 1},
        [W_OUT] = {Hv * D, hidden},
    };
    gdn_tensor *views[W_COUNT] = {&w->in_proj_qkvz, &w->in_proj_ba, &w->conv1d, &w->dt_bias,
                                  &w->A_log,        &w->norm,       &w->out_proj};
    /* Each tensor 256-byte aligned inside one allocation. */
    size_t offset[W_COUNT], total = 0;
    for (int i = 0; i < W_COUNT; i++) {
        const gdn_dtype dtype = (i == W_QKVZ || i == W_BA || i == W_OUT) ? c.weight_dtype : GDN_DTYPE_F32;
        *views[i] = gdn_tensor_contiguous(NULL, dtype, shapes[i][1] > 1 ? 2 : 1, shapes[i]);
        offset[i] = total;
        total += (gdn_tensor_span(views[i]) + 255) / 256 * 256;
    }
    unsigned char *host = calloc(1, total);
    if (host == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "gdn block weights: cannot allocate %zu host bytes", total);
    uint64_t s = seed;
    for (int i = 0; i < W_COUNT; i++) {
        const int64_t n = gdn_tensor_count(views[i]);
        const double sd = 1.0 / sqrt((double)shapes[i][0]); /* fan_in = ne[0] for the matrices and conv */
        for (int64_t e = 0; e < n; e++) {
            double v;
            switch (i) {
            case W_DT_BIAS: v = rng_uniform(&s, -0.2, 0.2); break;
            case W_A_LOG: v = log(rng_uniform(&s, 1.0, 16.0)); break;
            case W_NORM: v = 1.0 + 0.05 * rng_normal(&s); break;
            default: v = sd * rng_normal(&s); break;
            }
            const float f = (float)v;
            if (views[i]->dtype == GDN_DTYPE_BF16) {
                const uint16_t h = gdn_bf16_from_f32(f);
                memcpy(host + offset[i] + 2 * (size_t)e, &h, 2);
            } else {
                memcpy(host + offset[i] + 4 * (size_t)e, &f, 4);
            }
        }
    }
    st = gdn_backend_alloc(backend, total, &w->memory);
    if (st == GDN_OK)
        st = gdn_backend_upload(backend, w->memory, host, total);
    free(host);
    w->backend = backend;
    w->config = c;
    if (st != GDN_OK) {
        gdn_block_weights_free(w);
        return st;
    }
    for (int i = 0; i < W_COUNT; i++)
        views[i]->data = (char *)w->memory + offset[i];
    return GDN_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Cache
 * ------------------------------------------------------------------------------------------- */
void gdn_block_cache_free(gdn_block_cache *cache)
{
    if (cache == NULL)
        return;
    if (cache->state_memory != NULL)
        gdn_backend_dealloc(cache->backend, cache->state_memory);
    if (cache->conv_memory != NULL)
        gdn_backend_dealloc(cache->backend, cache->conv_memory);
    memset(cache, 0, sizeof *cache);
}

gdn_status gdn_block_cache_init(gdn_block_cache *cache, gdn_backend *backend, const gdn_block_config *config,
                                int64_t n_slots)
{
    gdn_clear_error();
    if (cache == NULL || backend == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block cache: NULL cache or backend");
    memset(cache, 0, sizeof *cache);
    gdn_status st = gdn_block_config_check(config);
    if (st != GDN_OK)
        return st;
    if (n_slots < 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block cache: n_slots=%lld, expected >= 1", (long long)n_slots);
    const gdn_block_config c = *config;
    const int64_t ne_states[5] = {c.head_dim, c.head_dim, c.n_v_heads, c.n_snapshots, n_slots};
    const int64_t ne_conv[3] = {gdn_block_conv_dim(&c), c.conv_kernel - 1 + (c.rollback ? c.n_snapshots : 0), n_slots};
    cache->config = c;
    cache->backend = backend;
    cache->n_slots = n_slots;
    cache->states = gdn_tensor_contiguous(NULL, c.state_dtype, 5, ne_states);
    cache->conv = gdn_tensor_contiguous(NULL, GDN_DTYPE_F32, 3, ne_conv);
    const size_t state_bytes = gdn_tensor_span(&cache->states), conv_bytes = gdn_tensor_span(&cache->conv);
    if ((st = gdn_backend_alloc(backend, state_bytes, &cache->state_memory)) != GDN_OK ||
        (st = gdn_backend_alloc(backend, conv_bytes, &cache->conv_memory)) != GDN_OK ||
        (st = gdn_backend_zero(backend, cache->state_memory, state_bytes)) != GDN_OK ||
        (st = gdn_backend_zero(backend, cache->conv_memory, conv_bytes)) != GDN_OK) {
        gdn_block_cache_free(cache);
        return st;
    }
    cache->states.data = cache->state_memory;
    cache->conv.data = cache->conv_memory;
    return GDN_OK;
}

static gdn_status borrow(gdn_block_cache *cache, gdn_backend *backend, const gdn_block_config *config,
                         const gdn_tensor *states, const gdn_tensor *conv, int64_t groups);

gdn_status gdn_block_cache_borrow(gdn_block_cache *cache, gdn_backend *backend, const gdn_block_config *config,
                                  const gdn_tensor *states, const gdn_tensor *conv)
{
    return borrow(cache, backend, config, states, conv, config != NULL ? config->n_snapshots : 0);
}

gdn_status gdn_block_cache_borrow_replay(gdn_block_cache *cache, gdn_backend *backend, const gdn_block_config *config,
                                         const gdn_tensor *states, const gdn_tensor *conv, const gdn_tensor *rings)
{
    if (rings == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block cache: NULL rings");
    gdn_status st = borrow(cache, backend, config, states, conv, 1);
    if (st == GDN_OK) {
        cache->ring_k = rings[0], cache->ring_v = rings[1], cache->ring_g = rings[2];
    }
    return st;
}

static gdn_status borrow(gdn_block_cache *cache, gdn_backend *backend, const gdn_block_config *config,
                         const gdn_tensor *states, const gdn_tensor *conv, int64_t groups)
{
    gdn_clear_error();
    if (cache == NULL || backend == NULL || states == NULL || conv == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block cache: NULL argument");
    memset(cache, 0, sizeof *cache);
    gdn_status st = gdn_block_config_check(config);
    if (st != GDN_OK)
        return st;
    const gdn_block_config c = *config;
    const int64_t S = states->ne[4], cols = c.conv_kernel - 1 + (c.rollback ? c.n_snapshots : 0);
    const int64_t ne_s[5] = {c.head_dim, c.head_dim, c.n_v_heads, groups, S};
    const int64_t ne_c[3] = {gdn_block_conv_dim(&c), cols, S};
    int match = states->dtype == c.state_dtype && conv->dtype == GDN_DTYPE_F32 && gdn_tensor_is_contiguous(states) &&
                gdn_tensor_is_contiguous(conv);
    for (int i = 0; i < 5; i++)
        match &= states->ne[i] == ne_s[i] && (i >= 3 || conv->ne[i] == ne_c[i]);
    if (!match)
        return gdn_fail(GDN_ERROR_SHAPE, "gdn block cache: borrowed pools do not match the config (states "
                            "{D, D, Hv, K, S} %s, conv {C, Kconv-1%s, S} F32, both packed)",
                        gdn_dtype_name(c.state_dtype), c.rollback ? "+K" : "");
    cache->config = c;
    cache->backend = backend;
    cache->n_slots = S;
    cache->states = *states;
    cache->conv = *conv;
    return GDN_OK;
}

/* n values ~ N(0, sd^2) to dst as F32, or as BF16 (each float rounded to nearest even). */
static gdn_status upload_normal(gdn_backend *backend, void *dst, int64_t n, double sd, uint64_t *s, gdn_dtype dtype)
{
    float *host = malloc((size_t)n * sizeof *host);
    if (host == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "gdn block cache: cannot allocate %lld host floats", (long long)n);
    for (int64_t i = 0; i < n; i++)
        host[i] = (float)(sd * rng_normal(s));
    size_t bytes = (size_t)n * sizeof *host;
    if (dtype == GDN_DTYPE_BF16) { /* packed in place: element i's half lands at or before float i */
        uint16_t *half = (uint16_t *)host;
        for (int64_t i = 0; i < n; i++)
            half[i] = gdn_bf16_from_f32(host[i]);
        bytes = (size_t)n * sizeof *half;
    }
    gdn_status st = gdn_backend_upload(backend, dst, host, bytes);
    free(host);
    return st;
}

gdn_status gdn_block_cache_randomize(gdn_block_cache *cache, uint64_t seed)
{
    gdn_clear_error();
    if (cache == NULL || cache->state_memory == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block cache: randomize of an uninitialised cache");
    uint64_t s = seed;
    gdn_status st = upload_normal(cache->backend, cache->state_memory, gdn_tensor_count(&cache->states), 0.1, &s,
                                  cache->states.dtype);
    if (st == GDN_OK)
        st = upload_normal(cache->backend, cache->conv_memory, gdn_tensor_count(&cache->conv), 1.0, &s, GDN_DTYPE_F32);
    return st;
}

gdn_status gdn_block_cache_copy(gdn_block_cache *dst, const gdn_block_cache *src)
{
    gdn_clear_error();
    if (dst == NULL || src == NULL || dst->state_memory == NULL || src->state_memory == NULL ||
        dst->backend != src->backend || dst->n_slots != src->n_slots || !same_config(&dst->config, &src->config))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block cache: copy between caches of different backends, "
                        "configs or slot counts");
    gdn_status st = gdn_backend_copy(dst->backend, dst->state_memory, src->state_memory, gdn_tensor_span(&src->states));
    if (st == GDN_OK)
        st = gdn_backend_copy(dst->backend, dst->conv_memory, src->conv_memory, gdn_tensor_span(&src->conv));
    if (st == GDN_OK)
        st = gdn_backend_synchronize(dst->backend);
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * The graph. A builder carries the first failure, so the step reads as a list of nodes.
 * ------------------------------------------------------------------------------------------- */
typedef struct builder {
    gdn_graph *graph;
    gdn_status status;
} builder;

static gdn_tensor_id leaf(builder *b, const char *name, const gdn_tensor *view, uint32_t flags)
{
    gdn_tensor_id id = -1;
    if (b->status == GDN_OK)
        b->status = gdn_graph_leaf(b->graph, name, view, flags, &id);
    return id;
}

/* A contiguous intermediate of `dtype` and counts ne[0..n). */
static gdn_tensor_id inter_of(builder *b, gdn_dtype dtype, const char *name, int n, int64_t n0, int64_t n1, int64_t n2,
                              int64_t n3, int64_t n4)
{
    const int64_t ne[5] = {n0, n1, n2, n3, n4};
    gdn_tensor_id id = -1;
    if (b->status == GDN_OK)
        b->status = gdn_graph_intermediate(b->graph, name, dtype, n, ne, &id);
    return id;
}

/* A contiguous F32 intermediate. */
static gdn_tensor_id inter(builder *b, const char *name, int n, int64_t n0, int64_t n1, int64_t n2, int64_t n3,
                           int64_t n4)
{
    return inter_of(b, GDN_DTYPE_F32, name, n, n0, n1, n2, n3, n4);
}

static gdn_tensor_id view(builder *b, gdn_tensor_id base, size_t offset, int n, const int64_t *ne, const size_t *nb)
{
    gdn_tensor_id id = -1;
    if (b->status == GDN_OK)
        b->status = gdn_graph_view(b->graph, base, offset, n, ne, nb, &id);
    return id;
}

static void op(builder *b, gdn_op_kind kind, const gdn_op_params *params, int n_src, const gdn_tensor_id *src,
               gdn_tensor_id dst)
{
    if (b->status == GDN_OK)
        b->status = gdn_graph_op(b->graph, kind, params, n_src, src, 1, &dst);
}

static void unary(builder *b, gdn_op_kind kind, const gdn_op_params *params, gdn_tensor_id a, gdn_tensor_id dst)
{
    op(b, kind, params, 1, &a, dst);
}

static void binary(builder *b, gdn_op_kind kind, gdn_tensor_id a, gdn_tensor_id x, gdn_tensor_id dst)
{
    const gdn_tensor_id src[2] = {a, x};
    op(b, kind, NULL, 2, src, dst);
}

/* 18, 19: the gated rms norm of o with z (a view of qkvz after q, k, v) and the output
 * projection, the block's output (a graph output). */
static gdn_status finish(builder *bp, const gdn_block_config *cp, gdn_tensor_id w_norm, gdn_tensor_id w_out,
                         gdn_tensor_id qkvz, gdn_tensor_id o, int64_t B, int64_t T, gdn_tensor_id *out)
{
    builder b = *bp;
    const gdn_block_config c = *cp;
    gdn_graph *graph = b.graph;
    const int64_t Hv = c.n_v_heads, D = c.head_dim, C = gdn_block_conv_dim(&c);
    const size_t f = sizeof(float), qkvz_row = (size_t)gdn_block_qkvz_dim(&c) * f;
    const int64_t ne_v[4] = {D, Hv, T, B};
    gdn_op_params p;
    const size_t nb_z[4] = {f, (size_t)D * f, qkvz_row, (size_t)T * qkvz_row};
    const gdn_tensor_id z = view(&b, qkvz, (size_t)C * f, 4, ne_v, nb_z);
    memset(&p, 0, sizeof p);
    p.norm.eps = c.rms_eps;
    const gdn_tensor_id normed = inter(&b, "o_normed", 4, D, Hv, T, B, 1);
    const gdn_tensor_id n_src[3] = {o, w_norm, z};
    op(&b, GDN_OP_RMS_NORM_GATED, &p, 3, n_src, normed);

    /* 19: output projection of the heads, flattened to Hv*D. */
    const int64_t ne_flat[3] = {Hv * D, T, B};
    const size_t nb_flat[3] = {f, (size_t)(Hv * D) * f, (size_t)(T * Hv * D) * f};
    const gdn_tensor_id flat = view(&b, normed, 0, 3, ne_flat, nb_flat);
    const gdn_tensor_id result = inter(&b, "block_out", 3, c.hidden, T, B, 1, 1);
    binary(&b, GDN_OP_MUL_MAT, w_out, flat, result);
    if (b.status == GDN_OK)
        b.status = gdn_graph_mark_output(graph, result);
    *out = result;
    return b.status;
}

static gdn_status build(gdn_graph *graph, const gdn_block_config *config, const gdn_block_weights *weights,
                        const gdn_block_cache *cache, gdn_tensor_id x, int64_t n_seqs, int64_t n_tokens,
                        gdn_tensor_id state_index, gdn_tensor_id conv_index, gdn_tensor_id fold, gdn_tensor_id slots,
                        int64_t first_slot, gdn_tensor_id *out)
{
    gdn_clear_error();
    if (graph == NULL || weights == NULL || cache == NULL || out == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block build: NULL graph, weights, cache or out");
    gdn_status st = gdn_block_config_check(config);
    if (st != GDN_OK)
        return st;
    if (weights->memory == NULL || cache->states.data == NULL || !same_config(config, &weights->config) ||
        !same_config(config, &cache->config))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block build: weights or cache uninitialised, or made for "
                        "other sizes than the config");
    if (n_seqs < 1 || n_tokens < 1)
        return gdn_fail(GDN_ERROR_SHAPE, "gdn block build: B=%lld, T=%lld, expected both >= 1", (long long)n_seqs,
                        (long long)n_tokens);
    if (slots < 0 && (first_slot < 0 || first_slot + n_seqs > cache->n_slots))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block build: slots %lld..%lld written, the cache has %lld",
                        (long long)first_slot, (long long)(first_slot + n_seqs - 1), (long long)cache->n_slots);

    const gdn_block_config c = *config;
    const int64_t B = n_seqs, T = n_tokens, Hk = c.n_k_heads, Hv = c.n_v_heads, D = c.head_dim;
    const int64_t Kc = c.conv_kernel, C = gdn_block_conv_dim(&c), QKVZ = gdn_block_qkvz_dim(&c);
    const int64_t N = T < c.n_snapshots ? T : c.n_snapshots; /* snapshots the op writes */
    const int rollback = c.rollback;
    if (rollback && T > c.n_snapshots)
        return gdn_fail(GDN_ERROR_SHAPE, "gdn block build: T=%lld tokens, but a rollback cache keeps %d per step",
                        (long long)T, (int)c.n_snapshots);
    const size_t f = sizeof(float), fs = gdn_dtype_size(c.state_dtype); /* fs: a state element */
    const size_t group_bytes = (size_t)(Hv * D * D) * fs, slot_bytes = (size_t)cache->states.ne[3] * group_bytes;
    const int64_t cols = cache->conv.ne[1]; /* window columns per slot: Kc-1, or Kc-1+K to roll back */
    const size_t window_bytes = (size_t)((Kc - 1) * C) * f, col_bytes = (size_t)C * f, conv_slot = (size_t)cols * col_bytes;
    builder b = {graph, GDN_OK};
    gdn_op_params p;

    /* Leaves: weights are read-only inputs (a node writing one fails to build); the pools are
     * persistent (written in place by the step). */
    const gdn_tensor_id w_qkvz = leaf(&b, "in_proj_qkvz", &weights->in_proj_qkvz, GDN_GRAPH_INPUT);
    const gdn_tensor_id w_ba = leaf(&b, "in_proj_ba", &weights->in_proj_ba, GDN_GRAPH_INPUT);
    const gdn_tensor_id w_conv = leaf(&b, "conv1d", &weights->conv1d, GDN_GRAPH_INPUT);
    const gdn_tensor_id dt_bias = leaf(&b, "dt_bias", &weights->dt_bias, GDN_GRAPH_INPUT);
    const gdn_tensor_id a_log = leaf(&b, "A_log", &weights->A_log, GDN_GRAPH_INPUT);
    const gdn_tensor_id w_norm = leaf(&b, "norm", &weights->norm, GDN_GRAPH_INPUT);
    const gdn_tensor_id w_out = leaf(&b, "out_proj", &weights->out_proj, GDN_GRAPH_INPUT);
    const gdn_tensor_id ssm_pool = leaf(&b, "ssm_pool", &cache->states, GDN_GRAPH_PERSISTENT);
    const gdn_tensor_id conv_pool = leaf(&b, "conv_pool", &cache->conv, GDN_GRAPH_PERSISTENT);

    /* 0, 1: input projections. */
    const gdn_tensor_id qkvz = inter(&b, "qkvz", 3, QKVZ, T, B, 1, 1);
    const gdn_tensor_id ba = inter(&b, "ba", 3, 2 * Hv, T, B, 1, 1);
    binary(&b, GDN_OP_MUL_MAT, w_qkvz, x, qkvz);
    binary(&b, GDN_OP_MUL_MAT, w_ba, x, ba);

    /* 2: the conv windows of the sequences, one gathered row of (Kc-1)*C each: a slot's window,
     * or (rollback) the Kc-1 columns from any column on (rows one column apart, overlapping). */
    const size_t qkvz_row = (size_t)QKVZ * f;
    const int64_t ne_rows[2] = {(Kc - 1) * C, rollback ? cache->n_slots * cols - (Kc - 2) : cache->n_slots};
    const size_t nb_rows[2] = {f, rollback ? col_bytes : conv_slot};
    const gdn_tensor_id rows = view(&b, conv_pool, 0, 2, ne_rows, nb_rows);
    const gdn_tensor_id window = inter(&b, "conv_window", 2, (Kc - 1) * C, B, 1, 1, 1);
    const gdn_tensor_id src[2] = {rows, conv_index};
    op(&b, GDN_OP_GET_ROWS, NULL, 2, src, window);

    /* 3: conv input [B][C][Kc-1+T], time innermost as ssm_conv reads it (ggml's ssm_conv
     * layout). llama.cpp permutes qkv and concats; here both halves are transposing views:
     * the window [B][Kc-1][C] read as {Kc-1, C, B}, the qkv columns of qkvz as {T, C, B}. */
    const int64_t ne_w[3] = {Kc - 1, C, B}, ne_q[3] = {T, C, B};
    const size_t nb_w[3] = {(size_t)C * f, f, window_bytes}, nb_q[3] = {qkvz_row, f, (size_t)T * qkvz_row};
    const gdn_tensor_id past = view(&b, window, 0, 3, ne_w, nb_w), fresh = view(&b, qkvz, 0, 3, ne_q, nb_q);
    memset(&p, 0, sizeof p);
    p.concat.dim = 0;
    const gdn_tensor_id conv_in = inter(&b, "conv_input", 3, Kc - 1 + T, C, B, 1, 1);
    const gdn_tensor_id cat[2] = {past, fresh};
    op(&b, GDN_OP_CONCAT, &p, 2, cat, conv_in);

    /* 4: the window update: the last Kc-1 columns of conv_in into slots [first, first+B), or
     * into slot slots[b] (a scatter); with rollback all Kc-1+T columns (the window after any
     * accepted prefix is a run of them). */
    const size_t in_row = (size_t)(Kc - 1 + T) * f;
    const size_t nb_tail[3] = {f, in_row, (size_t)C * in_row}, nb_slot[3] = {col_bytes, f, conv_slot};
    int64_t ne_all[3] = {rollback ? Kc - 1 + T : Kc - 1, C, B};
    const gdn_tensor_id tail = rollback ? conv_in : view(&b, conv_in, (size_t)T * f, 3, ne_w, nb_tail);
    if (slots < 0) {
        unary(&b, GDN_OP_CPY, NULL, tail, view(&b, conv_pool, (size_t)first_slot * conv_slot, 3, ne_all, nb_slot));
    } else {
        ne_all[2] = cache->n_slots;
        memset(&p, 0, sizeof p);
        p.set_rows.dim = 2;
        const gdn_tensor_id scatter[2] = {tail, slots}, table = view(&b, conv_pool, 0, 3, ne_all, nb_slot);
        op(&b, GDN_OP_SET_ROWS, &p, 2, scatter, table);
    }

    /* 5, 6: the causal conv and its activation. */
    const gdn_tensor_id conv = inter(&b, "conv", 3, C, T, B, 1, 1);
    const gdn_tensor_id conv_src[2] = {conv_in, w_conv};
    op(&b, GDN_OP_SSM_CONV, NULL, 2, conv_src, conv);
    const gdn_tensor_id conv_act = inter(&b, "conv_act", 3, C, T, B, 1, 1);
    unary(&b, GDN_OP_SILU, NULL, conv, conv_act);

    /* 7-12: gates. b and a are views of ba: [B,T,Hv] with row stride 2*Hv. */
    const int64_t ne_gate[3] = {Hv, T, B};
    const size_t ba_row = (size_t)(2 * Hv) * f, nb_gate[3] = {f, ba_row, (size_t)T * ba_row};
    const gdn_tensor_id b_in = view(&b, ba, 0, 3, ne_gate, nb_gate);
    const gdn_tensor_id a_in = view(&b, ba, (size_t)Hv * f, 3, ne_gate, nb_gate);
    const gdn_tensor_id beta = inter(&b, "beta", 3, Hv, T, B, 1, 1);
    const gdn_tensor_id gate = inter(&b, "g", 3, Hv, T, B, 1, 1);
    if (c.fused_gates) { /* the same floats as the chain below, one launch */
        const gdn_tensor_id g_src[4] = {a_in, b_in, dt_bias, a_log}, g_dst[2] = {gate, beta};
        if (b.status == GDN_OK)
            b.status = gdn_graph_op(graph, GDN_OP_GDN_GATES, NULL, 4, g_src, 2, g_dst);
    } else {
        unary(&b, GDN_OP_SIGMOID, NULL, b_in, beta);
        const gdn_tensor_id a_biased = inter(&b, "a_biased", 3, Hv, T, B, 1, 1);
        binary(&b, GDN_OP_ADD, a_in, dt_bias, a_biased);
        const gdn_tensor_id a_soft = inter(&b, "a_softplus", 3, Hv, T, B, 1, 1);
        unary(&b, GDN_OP_SOFTPLUS, NULL, a_biased, a_soft);
        const gdn_tensor_id a_exp = inter(&b, "A_exp", 1, Hv, 1, 1, 1, 1);
        unary(&b, GDN_OP_EXP, NULL, a_log, a_exp);
        const gdn_tensor_id a_neg = inter(&b, "A", 1, Hv, 1, 1, 1, 1);
        memset(&p, 0, sizeof p);
        p.scale.scale = -1.0f;
        unary(&b, GDN_OP_SCALE, &p, a_exp, a_neg);
        binary(&b, GDN_OP_MUL, a_soft, a_neg, gate);
    }

    /* 13, 14: q and k, views of conv_act [B,T,C] split along C, L2-normalised. */
    const size_t conv_row = (size_t)C * f;
    const int64_t ne_qk[4] = {D, Hk, T, B}, ne_v[4] = {D, Hv, T, B};
    const size_t nb_c[4] = {f, (size_t)D * f, conv_row, (size_t)T * conv_row};
    const gdn_tensor_id q_in = view(&b, conv_act, 0, 4, ne_qk, nb_c);
    const gdn_tensor_id k_in = view(&b, conv_act, (size_t)(Hk * D) * f, 4, ne_qk, nb_c);
    const gdn_tensor_id v_in = view(&b, conv_act, (size_t)(2 * Hk * D) * f, 4, ne_v, nb_c);
    gdn_tensor_id q = q_in, k = k_in; /* l2norm_in_op: the GDN op normalises the views it reads */
    if (!c.l2norm_in_op) {
        memset(&p, 0, sizeof p);
        p.norm.eps = 1e-6f;
        q = inter(&b, "q", 4, D, Hk, T, B, 1), k = inter(&b, "k", 4, D, Hk, T, B, 1);
        unary(&b, GDN_OP_L2_NORM, &p, q_in, q);
        unary(&b, GDN_OP_L2_NORM, &p, k_in, k);
    }

    const gdn_tensor_id o = inter(&b, "o", 4, D, Hv, T, B, 1);
    if (fold >= 0) { /* replay: 15-17 are one node reading and writing the cache in place */
        const int64_t ne_pool[4] = {D, D, Hv, cache->n_slots};
        const size_t nb_pool[4] = {fs, (size_t)D * fs, (size_t)(D * D) * fs, slot_bytes};
        const gdn_tensor_id pool = view(&b, ssm_pool, 0, 4, ne_pool, nb_pool);
        const gdn_tensor_id rk = leaf(&b, "ring_k", &cache->ring_k, GDN_GRAPH_PERSISTENT);
        const gdn_tensor_id rv = leaf(&b, "ring_v", &cache->ring_v, GDN_GRAPH_PERSISTENT);
        const gdn_tensor_id rg = leaf(&b, "ring_g", &cache->ring_g, GDN_GRAPH_PERSISTENT);
        memset(&p, 0, sizeof p);
        p.gated_delta_net = gdn_gated_delta_net_params_default();
        p.gated_delta_net.broadcast = c.broadcast;
        p.gated_delta_net.l2norm = c.l2norm_in_op;
        const gdn_tensor_id r_src[11] = {q, k, v_in, gate, beta, pool, state_index, rk, rv, rg, fold};
        if (b.status == GDN_OK)
            b.status = gdn_graph_op(graph, GDN_OP_GATED_DELTA_NET_REPLAY, &p, 11, r_src, 1, &o);
        return finish(&b, &c, w_norm, w_out, qkvz, o, B, T, out);
    }

    /* 15: the gather: group 0 of each sequence's slot (rows of the pool at the slot stride), or
     * (rollback) any group (rows at the group stride). */
    const int64_t ne_srows[2] = {Hv * D * D, rollback ? cache->n_slots * c.n_snapshots : cache->n_slots};
    const size_t nb_srows[2] = {fs, rollback ? group_bytes : slot_bytes};
    const gdn_tensor_id srows = view(&b, ssm_pool, 0, 2, ne_srows, nb_srows);
    /* gathered and snapshotted in the pool's dtype: the op then sees the same state storage with
     * the passes on (reading the pool) and off, and the copies move bits */
    const gdn_tensor_id s_gathered = inter_of(&b, c.state_dtype, "state_gathered", 2, Hv * D * D, B, 1, 1, 1);
    const gdn_tensor_id s_src[2] = {srows, state_index};
    op(&b, GDN_OP_GET_ROWS, NULL, 2, s_src, s_gathered);
    const int64_t ne_state[4] = {D, D, Hv, B};
    const size_t nb_state[4] = {fs, (size_t)D * fs, (size_t)(D * D) * fs, group_bytes};
    const gdn_tensor_id state = view(&b, s_gathered, 0, 4, ne_state, nb_state);

    /* 16: the GDN op, its K snapshots into an intermediate (llama.cpp's tail), l2norm off. */
    memset(&p, 0, sizeof p);
    p.gated_delta_net = gdn_gated_delta_net_params_default();
    p.gated_delta_net.n_snapshots = c.n_snapshots;
    p.gated_delta_net.broadcast = c.broadcast;
    p.gated_delta_net.l2norm = c.l2norm_in_op;
    const gdn_tensor_id states = inter_of(&b, c.state_dtype, "states", 5, D, D, Hv, B, N);
    if (b.status == GDN_OK) {
        const gdn_tensor_id g_src[6] = {q, k, v_in, gate, beta, state}, g_dst[2] = {o, states};
        b.status = gdn_graph_op(graph, GDN_OP_GATED_DELTA_NET, &p, 6, g_src, 2, g_dst);
    }

    /* 17: snapshot s of sequence b -> group s of slot first_slot + b: one strided copy; or of
     * slot slots[b]: a scatter along the sequence dim. */
    const int64_t ne_snap[5] = {D, D, Hv, slots < 0 ? B : cache->n_slots, N};
    const size_t nb_snap[5] = {fs, (size_t)D * fs, (size_t)(D * D) * fs, slot_bytes, group_bytes};
    const gdn_tensor_id snap_dst =
        view(&b, ssm_pool, slots < 0 ? (size_t)first_slot * slot_bytes : 0, 5, ne_snap, nb_snap);
    if (slots < 0) {
        unary(&b, GDN_OP_CPY, NULL, states, snap_dst);
    } else {
        memset(&p, 0, sizeof p);
        p.set_rows.dim = 3;
        const gdn_tensor_id scatter[2] = {states, slots};
        op(&b, GDN_OP_SET_ROWS, &p, 2, scatter, snap_dst);
    }

    return finish(&b, &c, w_norm, w_out, qkvz, o, B, T, out);
}

gdn_status gdn_block_build(gdn_graph *graph, const gdn_block_config *config, const gdn_block_weights *weights,
                           const gdn_block_cache *cache, gdn_tensor_id x, int64_t n_seqs, int64_t n_tokens,
                           gdn_tensor_id slot_index, int64_t first_slot, gdn_tensor_id *out)
{
    if (config != NULL && config->rollback)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block build: a rollback cache needs gdn_block_build_rollback "
                        "(state and window positions per sequence)");
    return build(graph, config, weights, cache, x, n_seqs, n_tokens, slot_index, slot_index, -1, -1, first_slot, out);
}

gdn_status gdn_block_build_rollback(gdn_graph *graph, const gdn_block_config *config, const gdn_block_weights *weights,
                                    const gdn_block_cache *cache, gdn_tensor_id x, int64_t n_seqs, int64_t n_tokens,
                                    gdn_tensor_id state_row, gdn_tensor_id conv_row, gdn_tensor_id slots,
                                    gdn_tensor_id *out)
{
    if (config != NULL && !config->rollback)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block build: gdn_block_build_rollback needs a config with "
                        "rollback = 1");
    return build(graph, config, weights, cache, x, n_seqs, n_tokens, state_row, conv_row, -1, slots, 0, out);
}

gdn_status gdn_block_build_replay(gdn_graph *graph, const gdn_block_config *config, const gdn_block_weights *weights,
                                  const gdn_block_cache *cache, gdn_tensor_id x, int64_t n_seqs, int64_t n_tokens,
                                  gdn_tensor_id state_index, gdn_tensor_id conv_row, gdn_tensor_id fold,
                                  gdn_tensor_id slots, gdn_tensor_id *out)
{
    if (config != NULL && !config->rollback)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block build: gdn_block_build_replay needs a config with "
                        "rollback = 1 (the conv window rolls back as in the snapshot scheme)");
    if (cache == NULL || cache->ring_k.data == NULL || fold < 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gdn block build: replay needs a cache with rings "
                        "(gdn_block_cache_borrow_replay) and a fold tensor");
    return build(graph, config, weights, cache, x, n_seqs, n_tokens, state_index, conv_row, fold, slots, 0, out);
}
