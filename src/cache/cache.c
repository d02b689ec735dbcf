/* cache.c: the recurrent-state cache for speculative decoding (include/gdn.h, DESIGN.md
 * section 5). Device memory: one block holding, per layer, the state pool [S][G][Hv][D][D]
 * (G = K groups for the snapshot scheme, 1 for replay), the conv pool [S][Kconv-1+K][C] and,
 * for replay, the rings (update factors and decays) [S][P][Hk*D], [S][P][Hv*D], [S][P][Hv]
 * (P = L + K entries); the state pool F32 or BF16 (config.state_dtype), the rest F32;
 * then the step rows [2][S], the fold array [S][3] and the step's slots [S] (I32).
 * Host bookkeeping per sequence: in use, the group and window column its committed state is
 * at, for replay the ring start and the tokens in the ring since the last commit, and the T of
 * a step not yet accepted. Every call checks everything before it changes anything, so a
 * refused call leaves the cache as it was. */
#include "gdn.h"
#include "../core/internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct cache_seq {
    int in_use;
    int32_t group;   /* snapshot: state group of the committed state */
    int32_t column;  /* first window column of the committed window */
    int32_t pending; /* tokens of its own in the step in progress (at most the step's T), 0 if none */
    int32_t step_tokens; /* the step's T (the most tokens of any of its sequences) */
    int32_t start, count, commit; /* replay: ring position of the first token not committed, how
                                     many tokens follow it, and whether this step commits them */
    int64_t tokens, committed;    /* tokens accepted, and those in the committed state */
} cache_seq;

struct gdn_cache {
    gdn_backend *backend;
    gdn_cache_config config;
    void *memory;      /* the block */
    int owns_memory;
    size_t layer_bytes, state_pool_bytes, conv_pool_bytes, ring_bytes[3], rows_offset;
    cache_seq *seqs;   /* [n_seqs] */
    int32_t step_n, step_tokens; /* the step in progress (step_n 0: none) */
};

static int64_t columns(const gdn_cache_config *c)
{
    return (int64_t)c->conv_kernel - 1 + c->max_tokens;
}

static int replay(const gdn_cache_config *c)
{
    return c->scheme == GDN_CACHE_REPLAY;
}

static int64_t ring_entries(const gdn_cache_config *c) /* P = L + K */
{
    return replay(c) ? (int64_t)c->ring + c->max_tokens : 0;
}

static gdn_status check_config(const gdn_cache_config *c)
{
    if (c == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache: NULL config");
    if (c->scheme != GDN_CACHE_SNAPSHOT && c->scheme != GDN_CACHE_REPLAY)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache: unknown scheme %d", (int)c->scheme);
    if (c->scheme == GDN_CACHE_REPLAY && c->ring < c->max_tokens)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache: replay ring of %d tokens, expected at least max_tokens "
                        "= %d", (int)c->ring, (int)c->max_tokens);
    if (c->n_layers < 1 || c->n_seqs < 1 || c->max_tokens < 1 || c->n_k_heads < 1 || c->n_v_heads < 1 ||
        c->n_v_heads % c->n_k_heads != 0 || c->conv_channels < 1 || c->conv_kernel < 2)
        return gdn_fail(GDN_ERROR_SHAPE, "cache: layers %d, seqs %d, max_tokens %d, Hk %d, Hv %d, C %d, Kconv %d: "
                        "expected counts >= 1, Hv a multiple of Hk, Kconv >= 2", (int)c->n_layers, (int)c->n_seqs,
                        (int)c->max_tokens, (int)c->n_k_heads, (int)c->n_v_heads, (int)c->conv_channels,
                        (int)c->conv_kernel);
    const int32_t D = c->head_dim;
    if (D != 16 && D != 32 && D != 64 && D != 128 && D != 256)
        return gdn_fail(GDN_ERROR_SHAPE, "cache: head_dim %d, expected 16, 32, 64, 128 or 256", (int)D);
    if (c->state_dtype != GDN_DTYPE_F32 && c->state_dtype != GDN_DTYPE_BF16)
        return gdn_fail(GDN_ERROR_TYPE, "cache: state pool %s, expected F32 or BF16", gdn_dtype_name(c->state_dtype));
    return GDN_OK;
}

static int64_t groups(const gdn_cache_config *c)
{
    return replay(c) ? 1 : c->max_tokens;
}

/* Bytes of the pieces of one layer (each 256-byte aligned) and of the whole block. */
static void sizes(const gdn_cache_config *c, size_t *state_pool, size_t *conv_pool, size_t ring[3], size_t *layer,
                  size_t *rows_offset, size_t *total)
{
    const size_t S = (size_t)c->n_seqs, P = (size_t)ring_entries(c), f = sizeof(float);
    const size_t state =
        (size_t)c->n_v_heads * (size_t)c->head_dim * (size_t)c->head_dim * gdn_dtype_size(c->state_dtype);
    *state_pool = (state * (size_t)groups(c) * S + 255) / 256 * 256;
    *conv_pool = ((size_t)columns(c) * (size_t)c->conv_channels * f * S + 255) / 256 * 256;
    const size_t per_entry[3] = {(size_t)c->n_k_heads * (size_t)c->head_dim, (size_t)c->n_v_heads * (size_t)c->head_dim,
                                 (size_t)c->n_v_heads};
    *layer = *state_pool + *conv_pool;
    for (int i = 0; i < 3; i++) {
        ring[i] = (per_entry[i] * P * S * f + 255) / 256 * 256;
        *layer += ring[i];
    }
    *rows_offset = *layer * (size_t)c->n_layers;
    *total = *rows_offset + 6 * S * sizeof(int32_t); /* state rows, conv rows, fold [S][3], slots */
}

gdn_status gdn_cache_memory_size(const gdn_cache_config *config, size_t *bytes)
{
    gdn_clear_error();
    gdn_status st = check_config(config);
    if (st != GDN_OK)
        return st;
    if (bytes == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache: NULL bytes");
    size_t a, b, r[4], c, d;
    sizes(config, &a, &b, r, &c, &d, bytes);
    return GDN_OK;
}

gdn_status gdn_cache_init(gdn_backend *backend, const gdn_cache_config *config, void *memory, size_t memory_bytes,
                          gdn_cache **out)
{
    gdn_clear_error();
    if (out != NULL)
        *out = NULL;
    if (backend == NULL || out == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache: NULL backend or out");
    gdn_status st = check_config(config);
    if (st != GDN_OK)
        return st;
    size_t state_pool, conv_pool, ring[3], layer, rows_offset, total;
    sizes(config, &state_pool, &conv_pool, ring, &layer, &rows_offset, &total);
    if (memory != NULL && memory_bytes < total)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache: the memory supplied holds %zu bytes, the cache needs %zu "
                        "(gdn_cache_memory_size)", memory_bytes, total);
    if (memory != NULL && (uintptr_t)memory % 256 != 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache: the memory supplied is not 256-byte aligned");
    gdn_cache *c = calloc(1, sizeof *c);
    cache_seq *seqs = calloc((size_t)config->n_seqs, sizeof *seqs);
    if (c == NULL || seqs == NULL) {
        free(c), free(seqs);
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "cache: cannot allocate the bookkeeping of %d sequences",
                        (int)config->n_seqs);
    }
    c->backend = backend, c->config = *config, c->seqs = seqs;
    c->layer_bytes = layer, c->state_pool_bytes = state_pool, c->conv_pool_bytes = conv_pool, c->rows_offset = rows_offset;
    memcpy(c->ring_bytes, ring, sizeof c->ring_bytes);
    c->memory = memory, c->owns_memory = memory == NULL;
    if (memory == NULL)
        st = gdn_backend_alloc(backend, total, &c->memory);
    if (st == GDN_OK)
        st = gdn_backend_zero(backend, c->memory, total);
    if (st == GDN_OK)
        st = gdn_backend_synchronize(backend);
    if (st != GDN_OK) {
        gdn_cache_free(c);
        return st;
    }
    *out = c;
    return GDN_OK;
}

void gdn_cache_free(gdn_cache *cache)
{
    if (cache == NULL)
        return;
    if (cache->owns_memory && cache->memory != NULL)
        gdn_backend_dealloc(cache->backend, cache->memory);
    free(cache->seqs);
    free(cache);
}

static gdn_status known(const gdn_cache *cache, int32_t seq, const char *what)
{
    if (cache == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache %s: NULL cache", what);
    if (seq < 0 || seq >= cache->config.n_seqs || !cache->seqs[seq].in_use)
        return gdn_fail(GDN_ERROR_NOT_FOUND, "cache %s: sequence %d is not in the cache (removed or never added)",
                        what, (int)seq);
    return GDN_OK;
}

/* Zero slot s's committed state (group 0) and window (columns 0..Kconv-2) in every layer. */
static gdn_status zero_slot(gdn_cache *cache, int32_t s)
{
    const gdn_cache_config *c = &cache->config;
    const size_t state =
        (size_t)c->n_v_heads * (size_t)c->head_dim * (size_t)c->head_dim * gdn_dtype_size(c->state_dtype);
    const size_t col = (size_t)c->conv_channels * sizeof(float);
    gdn_status st = GDN_OK;
    for (int32_t l = 0; st == GDN_OK && l < c->n_layers; l++) {
        char *base = (char *)cache->memory + (size_t)l * cache->layer_bytes;
        st = gdn_backend_zero(cache->backend, base + (size_t)s * (size_t)groups(c) * state, state);
        if (st == GDN_OK)
            st = gdn_backend_zero(cache->backend, base + cache->state_pool_bytes + (size_t)s * (size_t)columns(c) * col,
                      (size_t)(c->conv_kernel - 1) * col);
    }
    return st == GDN_OK ? gdn_backend_synchronize(cache->backend) : st;
}

gdn_status gdn_cache_seq_add(gdn_cache *cache, int32_t *seq)
{
    gdn_clear_error();
    if (cache == NULL || seq == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache add: NULL cache or seq");
    int32_t s = 0;
    while (s < cache->config.n_seqs && cache->seqs[s].in_use)
        s++;
    if (s == cache->config.n_seqs)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "cache add: all %d sequence slots are in use",
                        (int)cache->config.n_seqs);
    gdn_status st = zero_slot(cache, s);
    if (st != GDN_OK)
        return st;
    memset(&cache->seqs[s], 0, sizeof cache->seqs[s]);
    cache->seqs[s].in_use = 1;
    *seq = s;
    return GDN_OK;
}

gdn_status gdn_cache_seq_remove(gdn_cache *cache, int32_t seq)
{
    gdn_clear_error();
    gdn_status st = known(cache, seq, "remove");
    if (st != GDN_OK)
        return st;
    cache->seqs[seq].in_use = 0;
    if (cache->seqs[seq].pending)
        cache->step_n = 0; /* the step in progress loses a sequence: it is over */
    return GDN_OK;
}

gdn_status gdn_cache_seq_reset(gdn_cache *cache, int32_t seq)
{
    gdn_clear_error();
    gdn_status st = known(cache, seq, "reset");
    if (st == GDN_OK)
        st = zero_slot(cache, seq);
    if (st == GDN_OK) {
        if (cache->seqs[seq].pending)
            cache->step_n = 0; /* as for remove: the step in progress is over */
        memset(&cache->seqs[seq], 0, sizeof cache->seqs[seq]);
        cache->seqs[seq].in_use = 1;
    }
    return st;
}

gdn_status gdn_cache_step_begin(gdn_cache *cache, int32_t n, const int32_t *seqs, const int32_t *n_tokens)
{
    gdn_clear_error();
    if (cache == NULL || seqs == NULL || n_tokens == NULL || n < 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache step: NULL argument or n=%d sequences", (int)n);
    const gdn_cache_config *c = &cache->config;
    for (int32_t i = 0; i < n; i++) {
        gdn_status st = known(cache, seqs[i], "step");
        if (st != GDN_OK)
            return st;
        if (cache->seqs[seqs[i]].pending)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache step: sequence %d has not accepted its previous step",
                            (int)seqs[i]);
        if (n_tokens[i] < 1 || n_tokens[i] > c->max_tokens)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache step: sequence %d: %d tokens, expected 1..%d",
                            (int)seqs[i], (int)n_tokens[i], (int)c->max_tokens);
        for (int32_t i2 = 0; i2 < i; i2++)
            if (seqs[i2] == seqs[i])
                return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache step: sequence %d at positions %d and %d (a step "
                                "runs a sequence once)", (int)seqs[i], (int)i2, (int)i);
    }
    /* The step runs T = the most tokens of any sequence for all of them (the others padded). */
    int32_t T = 0;
    for (int32_t i = 0; i < n; i++)
        T = n_tokens[i] > T ? n_tokens[i] : T;
    int32_t *rows = malloc(5 * (size_t)n * sizeof *rows);
    if (rows == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "cache step: cannot allocate %d rows", (int)n);
    for (int32_t i = 0; i < n; i++) {
        const cache_seq *q = &cache->seqs[seqs[i]];
        rows[i] = (int32_t)(seqs[i] * groups(c) + q->group);
        rows[n + i] = (int32_t)(seqs[i] * columns(c) + q->column);
        /* Replay: fold the ring's tokens; commit them when this step's T tokens (its padding
         * too: the op appends T entries) would not fit after them. */
        rows[2 * n + 3 * i] = q->start;
        rows[2 * n + 3 * i + 1] = q->count;
        rows[2 * n + 3 * i + 2] = q->count > 0 && q->count + T > c->ring;
    }
    /* The rows live at fixed addresses: state rows at rows_offset, conv rows S entries later,
     * the fold array after them, then the slots the step writes (a sequence's id is its slot). */
    char *base = (char *)cache->memory + cache->rows_offset;
    const size_t one = (size_t)n * sizeof *rows, S = (size_t)c->n_seqs * sizeof *rows;
    gdn_status st = gdn_backend_upload(cache->backend, base, rows, one);
    if (st == GDN_OK)
        st = gdn_backend_upload(cache->backend, base + S, rows + n, one);
    if (st == GDN_OK)
        st = gdn_backend_upload(cache->backend, base + 5 * S, seqs, one);
    if (st == GDN_OK && replay(c))
        st = gdn_backend_upload(cache->backend, base + 2 * S, rows + 2 * n, 3 * one);
    if (st == GDN_OK)
        for (int32_t i = 0; i < n; i++) {
            cache_seq *q = &cache->seqs[seqs[i]];
            q->pending = n_tokens[i];
            q->step_tokens = T;
            q->commit = replay(c) ? rows[2 * n + 3 * i + 2] : 0;
        }
    free(rows);
    if (st != GDN_OK)
        return st;
    cache->step_n = n, cache->step_tokens = T;
    return GDN_OK;
}

gdn_status gdn_cache_accept(gdn_cache *cache, int32_t seq, int32_t n_accepted)
{
    gdn_clear_error();
    gdn_status st = known(cache, seq, "accept");
    if (st != GDN_OK)
        return st;
    cache_seq *q = &cache->seqs[seq];
    if (q->pending == 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache accept: sequence %d has no step in progress", (int)seq);
    if (n_accepted < 1 || n_accepted > q->pending)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache accept: sequence %d: %d tokens accepted of %d verified "
                        "(expected 1..%d: the step's first token is always kept)", (int)seq, (int)n_accepted,
                        (int)q->pending, (int)q->pending);
    const gdn_cache_config *c = &cache->config;
    if (replay(c)) { /* the step appended its tokens after the folded ones; a of them are kept */
        if (q->commit) {
            q->start = (int32_t)((q->start + q->count) % ring_entries(c));
            q->committed += q->count;
            q->count = 0;
        }
        q->count += n_accepted;
    } else {
        q->group = q->step_tokens - n_accepted; /* the state after token a-1 is snapshot T-a */
        q->committed += n_accepted;
    }
    q->column = n_accepted; /* the window after a tokens starts at column a */
    q->tokens += n_accepted;
    q->pending = 0;
    q->commit = 0;
    return GDN_OK;
}

gdn_status gdn_cache_layer_pools(const gdn_cache *cache, int32_t layer, gdn_tensor *states, gdn_tensor *conv)
{
    gdn_clear_error();
    if (cache == NULL || states == NULL || conv == NULL || layer < 0 || layer >= cache->config.n_layers)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache pools: NULL argument or layer %d of %d", (int)layer,
                        cache ? (int)cache->config.n_layers : 0);
    const gdn_cache_config *c = &cache->config;
    char *base = (char *)cache->memory + (size_t)layer * cache->layer_bytes;
    const int64_t ne_s[5] = {c->head_dim, c->head_dim, c->n_v_heads, groups(c), c->n_seqs};
    const int64_t ne_c[3] = {c->conv_channels, columns(c), c->n_seqs};
    *states = gdn_tensor_contiguous(base, c->state_dtype, 5, ne_s);
    *conv = gdn_tensor_contiguous(base + cache->state_pool_bytes, GDN_DTYPE_F32, 3, ne_c);
    return GDN_OK;
}

gdn_status gdn_cache_layer_rings(const gdn_cache *cache, int32_t layer, gdn_tensor *ring_k, gdn_tensor *ring_v,
                                 gdn_tensor *ring_g)
{
    gdn_clear_error();
    if (cache == NULL || ring_k == NULL || ring_v == NULL || ring_g == NULL || layer < 0 ||
        layer >= cache->config.n_layers)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache rings: NULL argument or layer %d", (int)layer);
    const gdn_cache_config *c = &cache->config;
    if (!replay(c))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache rings: a snapshot cache has no rings");
    char *p = (char *)cache->memory + (size_t)layer * cache->layer_bytes + cache->state_pool_bytes +
              cache->conv_pool_bytes;
    const int64_t P = ring_entries(c), S = c->n_seqs;
    const int64_t ne_k[4] = {c->head_dim, c->n_k_heads, P, S}, ne_v[4] = {c->head_dim, c->n_v_heads, P, S};
    const int64_t ne_g[3] = {c->n_v_heads, P, S};
    *ring_k = gdn_tensor_contiguous(p, GDN_DTYPE_F32, 4, ne_k);
    p += cache->ring_bytes[0];
    *ring_v = gdn_tensor_contiguous(p, GDN_DTYPE_F32, 4, ne_v);
    p += cache->ring_bytes[1];
    *ring_g = gdn_tensor_contiguous(p, GDN_DTYPE_F32, 3, ne_g);
    return GDN_OK;
}

gdn_status gdn_cache_step_fold(const gdn_cache *cache, gdn_tensor *fold)
{
    gdn_clear_error();
    if (cache == NULL || fold == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache fold: NULL argument");
    if (!replay(&cache->config) || cache->step_n == 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache fold: %s", !replay(&cache->config) ?
                        "a snapshot cache folds nothing" : "no step in progress (gdn_cache_step_begin)");
    const int64_t ne[2] = {3, cache->step_n};
    char *base = (char *)cache->memory + cache->rows_offset + 2 * (size_t)cache->config.n_seqs * sizeof(int32_t);
    *fold = gdn_tensor_contiguous(base, GDN_DTYPE_I32, 2, ne);
    return GDN_OK;
}

gdn_status gdn_cache_seq_info_get(const gdn_cache *cache, int32_t seq, gdn_cache_seq_info *info)
{
    gdn_clear_error();
    gdn_status st = known(cache, seq, "info");
    if (st != GDN_OK)
        return st;
    if (info == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache info: NULL info");
    const cache_seq *q = &cache->seqs[seq];
    info->tokens = q->tokens;
    info->committed = q->committed;
    info->pending = q->pending;
    info->commits = q->pending ? q->commit : 0;
    return GDN_OK;
}

gdn_status gdn_cache_step_rows(const gdn_cache *cache, gdn_tensor *state_rows, gdn_tensor *conv_rows,
                               gdn_tensor *slots, int32_t *n_tokens)
{
    gdn_clear_error();
    if (cache == NULL || state_rows == NULL || conv_rows == NULL || slots == NULL || n_tokens == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache rows: NULL argument");
    if (cache->step_n == 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cache rows: no step in progress (gdn_cache_step_begin)");
    const int64_t ne[1] = {cache->step_n};
    char *base = (char *)cache->memory + cache->rows_offset;
    *state_rows = gdn_tensor_contiguous(base, GDN_DTYPE_I32, 1, ne);
    *conv_rows = gdn_tensor_contiguous(base + (size_t)cache->config.n_seqs * sizeof(int32_t), GDN_DTYPE_I32, 1, ne);
    *slots = gdn_tensor_contiguous(base + 5 * (size_t)cache->config.n_seqs * sizeof(int32_t), GDN_DTYPE_I32, 1, ne);
    *n_tokens = cache->step_tokens;
    return GDN_OK;
}
