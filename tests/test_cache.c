/* test_cache.c: the speculative-decoding cache API (gdn_cache_*, include/gdn.h) on every backend
 * present: sizes, caller memory, sequences added with zero state, the rows a step reads after
 * each acceptance (group T-a, window column a), and every bad input refused with the cache
 * unchanged (accepting more than verified or none, unknown and removed sequences, a step before
 * the previous one was accepted, too small a buffer, unsupported step shapes, a replay ring
 * shorter than a step, a state pool neither F32 nor BF16); a BF16 pool's size and views; the
 * replay scheme's fold arrays and commits over a few steps. The exactness of the whole scheme is
 * `gdn check spec` (tests/test_cli.sh). */
#include "harness.h"

#include <stdlib.h>
#include <string.h>

enum { LAYERS = 2, SEQS = 4, K = 3, HK = 1, HV = 2, D = 16, C = 3 * 16, KC = 4 };

static gdn_cache_config config(void)
{
    const gdn_cache_config c = {LAYERS, SEQS, K, HK, HV, D, C, KC, GDN_CACHE_SNAPSHOT, 0, GDN_DTYPE_F32};
    return c;
}

/* The rows of the step in progress, downloaded: state rows, conv rows and the slots written, n
 * each. */
static int rows_of(gdn_backend *backend, const gdn_cache *cache, int32_t *state, int32_t *conv, int32_t *n,
                   int32_t *slots, int32_t *tokens)
{
    gdn_tensor s, c, w;
    if (gdn_cache_step_rows(cache, &s, &c, &w, tokens) != GDN_OK)
        return 0;
    *n = (int32_t)s.ne[0];
    return w.ne[0] == *n && gdn_backend_download(backend, state, s.data, (size_t)*n * 4) == GDN_OK &&
           gdn_backend_download(backend, conv, c.data, (size_t)*n * 4) == GDN_OK &&
           gdn_backend_download(backend, slots, w.data, (size_t)*n * 4) == GDN_OK;
}

/* A step of 3 sequences with T = 3 reads, at position i, state row seqs[i]*K + group[i] and conv
 * column seqs[i]*cols + column[i]. */
static void check_step_rows(gdn_backend *be, const gdn_cache *cache, const char *label, const char *step,
                            const int32_t *seqs, const int32_t *group, const int32_t *column, int32_t cols)
{
    int32_t rs[SEQS], rc[SEQS], slots[SEQS], n = 0, tokens = 0;
    CHECK(rows_of(be, cache, rs, rc, &n, slots, &tokens) && n == 3 && tokens == 3, "%s: %s rows", label, step);
    for (int i = 0; i < n; i++)
        CHECK(rs[i] == seqs[i] * K + group[i] && rc[i] == seqs[i] * cols + column[i] && slots[i] == seqs[i],
              "%s: %s, position %d reads row %d, column %d, writes slot %d; expected %d, %d, %d", label, step, i,
              rs[i], rc[i], slots[i], seqs[i] * K + group[i], seqs[i] * cols + column[i], seqs[i]);
}

static void expect(gdn_status got, gdn_status want, const char *label, const char *what)
{
    CHECK(got == want, "%s: %s: %s (%s), expected %s", label, what, gdn_status_string(got), gdn_error_detail(),
          gdn_status_string(want));
}

static void check_backend(const test_backend *tb)
{
    const char *label = tb->label;
    gdn_backend *be = tb->backend;
    gdn_cache_config cfg = config();
    size_t bytes = 0;
    CHECK(gdn_cache_memory_size(&cfg, &bytes) == GDN_OK && bytes > 0, "%s: memory size", label);
    const size_t state = (size_t)HV * D * D * 4, cols = KC - 1 + K;
    CHECK(bytes >= LAYERS * SEQS * (K * state + cols * C * 4), "%s: %zu bytes is less than the pools", label, bytes);

    /* Caller memory: too small refused, enough accepted. */
    void *mem = NULL;
    gdn_cache *cache = NULL;
    if (gdn_backend_alloc(be, bytes, &mem) != GDN_OK) {
        CHECK(0, "%s: alloc %zu", label, bytes);
        return;
    }
    expect(gdn_cache_init(be, &cfg, mem, bytes - 1, &cache), GDN_ERROR_INVALID_ARGUMENT, label, "one byte short");
    CHECK(cache == NULL, "%s: a refused init left a cache", label);
    cfg.scheme = GDN_CACHE_REPLAY;
    cfg.ring = K - 1;
    expect(gdn_cache_init(be, &cfg, NULL, 0, &cache), GDN_ERROR_INVALID_ARGUMENT, label, "replay ring below K");
    cfg = config();
    cfg.n_k_heads = 2, cfg.n_v_heads = 3;
    expect(gdn_cache_init(be, &cfg, NULL, 0, &cache), GDN_ERROR_SHAPE, label, "Hv not a multiple of Hk");
    cfg = config();
    cfg.state_dtype = GDN_DTYPE_F16;
    expect(gdn_cache_init(be, &cfg, NULL, 0, &cache), GDN_ERROR_TYPE, label, "an F16 state pool");
    CHECK(cache == NULL, "%s: a refused init left a cache", label);
    /* A BF16 state pool: half the state bytes, the pools' views say BF16, windows stay F32. */
    cfg.state_dtype = GDN_DTYPE_BF16;
    size_t bf16_bytes = 0;
    CHECK(gdn_cache_memory_size(&cfg, &bf16_bytes) == GDN_OK && bf16_bytes < bytes &&
              bf16_bytes >= LAYERS * SEQS * (K * state / 2 + cols * C * 4),
          "%s: BF16 memory size %zu (F32: %zu)", label, bf16_bytes, bytes);
    if (gdn_cache_init(be, &cfg, NULL, 0, &cache) == GDN_OK) {
        gdn_tensor states, conv;
        CHECK(gdn_cache_layer_pools(cache, 1, &states, &conv) == GDN_OK && states.dtype == GDN_DTYPE_BF16 &&
                  states.nb[1] == D * 2 && conv.dtype == GDN_DTYPE_F32,
              "%s: BF16 pool views", label);
        gdn_cache_free(cache);
        cache = NULL;
    } else {
        CHECK(0, "%s: BF16 cache init: %s", label, gdn_error_detail());
    }
    cfg = config();
    expect(gdn_cache_init(be, &cfg, mem, bytes, &cache), GDN_OK, label, "init in caller memory");
    if (cache == NULL) {
        gdn_backend_dealloc(be, mem);
        return;
    }

    /* Fill every pool with 0xFF, then add sequences: their group 0 and window must be zero. */
    for (int l = 0; l < LAYERS; l++) {
        gdn_tensor s, c;
        CHECK(gdn_cache_layer_pools(cache, l, &s, &c) == GDN_OK, "%s: pools %d", label, l);
        void *ff = malloc(gdn_tensor_span(&s));
        memset(ff, 0xFF, gdn_tensor_span(&s));
        gdn_backend_upload(be, s.data, ff, gdn_tensor_span(&s));
        gdn_backend_upload(be, c.data, ff, gdn_tensor_span(&c));
        free(ff);
    }
    int32_t seq[SEQS + 1];
    for (int i = 0; i < SEQS; i++)
        expect(gdn_cache_seq_add(cache, &seq[i]), GDN_OK, label, "add");
    expect(gdn_cache_seq_add(cache, &seq[SEQS]), GDN_ERROR_OUT_OF_MEMORY, label, "add past the slots");
    {
        gdn_tensor s, c;
        gdn_cache_layer_pools(cache, LAYERS - 1, &s, &c);
        unsigned char *g0 = malloc(state), *w = malloc((size_t)(KC - 1) * C * 4), *g1 = malloc(state);
        const char *slot_s = (const char *)s.data + (size_t)seq[2] * s.nb[4];
        const char *slot_c = (const char *)c.data + (size_t)seq[2] * c.nb[2];
        int zero = gdn_backend_download(be, g0, slot_s, state) == GDN_OK &&
                   gdn_backend_download(be, w, slot_c, (size_t)(KC - 1) * C * 4) == GDN_OK &&
                   gdn_backend_download(be, g1, slot_s + s.nb[3], state) == GDN_OK;
        for (size_t i = 0; zero && i < state; i++)
            zero = g0[i] == 0;
        for (size_t i = 0; zero && i < (size_t)(KC - 1) * C * 4; i++)
            zero = w[i] == 0;
        CHECK(zero, "%s: a new sequence's state group 0 and window are not zero", label);
        CHECK(g1[0] == 0xFF, "%s: seq_add wrote more than the committed state (group 1)", label);
        free(g0), free(w), free(g1);
    }

    /* A step of sequences 1..3 with T = 3, then acceptances 3, 1, 2. */
    const int32_t step_seqs[3] = {seq[1], seq[2], seq[3]}, T3[3] = {3, 3, 3}, T_mixed[3] = {3, 2, 3};
    const int32_t gap[2] = {seq[3], seq[1]}, twice[2] = {seq[1], seq[1]}, T2[2] = {3, 3};
    int32_t rs[SEQS], rc[SEQS], slots[SEQS], n = 0, tokens = 0;
    expect(gdn_cache_step_begin(cache, 2, twice, T2), GDN_ERROR_INVALID_ARGUMENT, label, "a sequence twice");
    CHECK(gdn_cache_step_rows(cache, (gdn_tensor[1]){{0}}, (gdn_tensor[1]){{0}}, (gdn_tensor[1]){{0}}, &tokens) ==
          GDN_ERROR_INVALID_ARGUMENT, "%s: a refused step began anyway", label);
    /* Slots in any order, with a gap: each position reads and writes its own sequence's slot. */
    expect(gdn_cache_step_begin(cache, 2, gap, T2), GDN_OK, label, "slots not consecutive, out of order");
    CHECK(rows_of(be, cache, rs, rc, &n, slots, &tokens) && n == 2 && tokens == 3 && slots[0] == seq[3] &&
          slots[1] == seq[1] && rs[0] == seq[3] * K && rc[1] == seq[1] * (int32_t)cols,
          "%s: a gapped step's rows and slots", label);
    expect(gdn_cache_seq_reset(cache, seq[3]), GDN_OK, label, "reset (drops the gapped step)");
    expect(gdn_cache_seq_reset(cache, seq[1]), GDN_OK, label, "reset (drops the gapped step)");
    const int32_t T_big[3] = {K + 1, K + 1, K + 1};
    expect(gdn_cache_step_begin(cache, 3, step_seqs, T_big), GDN_ERROR_INVALID_ARGUMENT, label, "T above K");
    expect(gdn_cache_step_begin(cache, 3, step_seqs, T3), GDN_OK, label, "step");
    CHECK(rows_of(be, cache, rs, rc, &n, slots, &tokens) && n == 3 && slots[0] == seq[1] && tokens == 3,
          "%s: step rows", label);
    for (int i = 0; i < n; i++)
        CHECK(rs[i] == step_seqs[i] * K && rc[i] == step_seqs[i] * (int32_t)cols,
              "%s: first step, position %d reads row %d, column %d", label, i, rs[i], rc[i]);
    expect(gdn_cache_step_begin(cache, 3, step_seqs, T3), GDN_ERROR_INVALID_ARGUMENT, label, "step before accept");
    expect(gdn_cache_accept(cache, seq[1], 4), GDN_ERROR_INVALID_ARGUMENT, label, "accept more than verified");
    expect(gdn_cache_accept(cache, seq[1], 0), GDN_ERROR_INVALID_ARGUMENT, label, "accept none");
    expect(gdn_cache_accept(cache, seq[0], 1), GDN_ERROR_INVALID_ARGUMENT, label, "accept without a step");
    expect(gdn_cache_accept(cache, 99, 1), GDN_ERROR_NOT_FOUND, label, "accept an unknown sequence");
    expect(gdn_cache_accept(cache, seq[1], 3), GDN_OK, label, "accept 3");
    expect(gdn_cache_accept(cache, seq[1], 1), GDN_ERROR_INVALID_ARGUMENT, label, "accept twice");
    expect(gdn_cache_accept(cache, seq[2], 1), GDN_OK, label, "accept 1");
    expect(gdn_cache_accept(cache, seq[3], 2), GDN_OK, label, "accept 2");
    /* The next step reads group T-a and column a of each: (0, 3), (2, 1), (1, 2). It verifies 3,
     * 2 and 3 tokens: T = 3 for all, the second sequence padded. */
    expect(gdn_cache_step_begin(cache, 3, step_seqs, T_mixed), GDN_OK, label, "second step (mixed T)");
    const int32_t group[3] = {0, 2, 1}, column[3] = {3, 1, 2};
    check_step_rows(be, cache, label, "second step", step_seqs, group, column, (int32_t)cols);
    /* Accepting past a sequence's own tokens (into its padding) is refused; then 1, 2, 3 kept: the
     * next step reads group 3-a (the step's T, not the sequence's) and column a. */
    expect(gdn_cache_accept(cache, seq[2], 3), GDN_ERROR_INVALID_ARGUMENT, label, "accept the padding");
    expect(gdn_cache_accept(cache, seq[1], 1), GDN_OK, label, "accept 1 of 3");
    expect(gdn_cache_accept(cache, seq[2], 2), GDN_OK, label, "accept 2 of 2 (T 3)");
    expect(gdn_cache_accept(cache, seq[3], 3), GDN_OK, label, "accept 3 of 3");
    expect(gdn_cache_step_begin(cache, 3, step_seqs, T3), GDN_OK, label, "third step");
    const int32_t group3[3] = {2, 1, 0}, column3[3] = {1, 2, 3};
    check_step_rows(be, cache, label, "third step", step_seqs, group3, column3, (int32_t)cols);

    /* Remove and reset: unknown afterwards, or back at group 0 and column 0. */
    expect(gdn_cache_seq_remove(cache, seq[0]), GDN_OK, label, "remove");
    expect(gdn_cache_seq_remove(cache, seq[0]), GDN_ERROR_NOT_FOUND, label, "remove twice");
    expect(gdn_cache_accept(cache, seq[0], 1), GDN_ERROR_NOT_FOUND, label, "accept a removed sequence");
    const int32_t one = 1;
    expect(gdn_cache_step_begin(cache, 1, &seq[0], &one), GDN_ERROR_NOT_FOUND, label, "step a removed sequence");
    expect(gdn_cache_seq_reset(cache, seq[2]), GDN_OK, label, "reset");
    expect(gdn_cache_accept(cache, seq[2], 1), GDN_ERROR_INVALID_ARGUMENT, label, "accept after reset");
    expect(gdn_cache_step_begin(cache, 1, &seq[2], &one), GDN_OK, label, "step after reset");
    CHECK(rows_of(be, cache, rs, rc, &n, slots, &tokens) && n == 1 && rs[0] == seq[2] * K && slots[0] == seq[2] &&
          rc[0] == seq[2] * (int32_t)cols, "%s: a reset sequence reads group 0, column 0", label);
    int32_t again = -1;
    expect(gdn_cache_seq_add(cache, &again), GDN_OK, label, "add into the freed slot");
    CHECK(again == seq[0], "%s: the freed slot %d was not reused (got %d)", label, seq[0], again);

    gdn_cache_free(cache);
    gdn_backend_dealloc(be, mem);
}

/* Replay bookkeeping with L = K = 3 (ring of 6 entries): the fold array of each step and what
 * is committed after each acceptance. */
static void check_replay(const test_backend *tb)
{
    gdn_cache_config cfg = config();
    cfg.scheme = GDN_CACHE_REPLAY, cfg.ring = K;
    gdn_cache *cache = NULL;
    int32_t seq = -1;
    expect(gdn_cache_init(tb->backend, &cfg, NULL, 0, &cache), GDN_OK, tb->label, "replay init");
    if (cache == NULL)
        return;
    expect(gdn_cache_seq_add(cache, &seq), GDN_OK, tb->label, "replay add");
    gdn_tensor rk, rv, rg, states, conv;
    CHECK(gdn_cache_layer_rings(cache, 1, &rk, &rv, &rg) == GDN_OK && rk.ne[2] == 2 * K && rv.ne[1] == HV &&
          gdn_cache_layer_pools(cache, 1, &states, &conv) == GDN_OK && states.ne[3] == 1,
          "%s: replay pools and rings have the wrong shapes", tb->label);
    /* accept 2, 3, 1, 1 of T = 3: folds {0,0,0}, {0,2,1} (2 + 3 > L = 3: commit), {2,3,1}, {5,1,1}
     * (with L = T every step that has tokens to fold commits them) */
    const int32_t accept[4] = {2, 3, 1, 1}, want[4][3] = {{0, 0, 0}, {0, 2, 1}, {2, 3, 1}, {5, 1, 1}};
    const int64_t committed[4] = {0, 2, 5, 6};
    const int32_t T3 = 3;
    for (int s = 0; s < 4; s++) {
        gdn_tensor fold;
        int32_t got[3] = {-1, -1, -1};
        const int ok = gdn_cache_step_begin(cache, 1, &seq, &T3) == GDN_OK && gdn_cache_step_fold(cache, &fold) == GDN_OK &&
                       gdn_backend_download(tb->backend, got, fold.data, sizeof got) == GDN_OK;
        CHECK(ok && memcmp(got, want[s], sizeof got) == 0, "%s: replay step %d folds {%d, %d, %d}, expected {%d, %d, %d}",
              tb->label, s, got[0], got[1], got[2], want[s][0], want[s][1], want[s][2]);
        expect(gdn_cache_accept(cache, seq, accept[s]), GDN_OK, tb->label, "replay accept");
        gdn_cache_seq_info info;
        CHECK(gdn_cache_seq_info_get(cache, seq, &info) == GDN_OK && info.committed == committed[s] && info.pending == 0,
              "%s: replay step %d: %lld committed, expected %lld", tb->label, s, (long long)info.committed,
              (long long)committed[s]);
    }
    gdn_tensor fold;
    expect(gdn_cache_step_fold(cache, &fold), GDN_OK, tb->label, "fold of the last step");
    gdn_cache_free(cache);
}

int main(void)
{
    gdn_cache_config cfg = config();
    size_t bytes = 0;
    expect(gdn_cache_memory_size(NULL, &bytes), GDN_ERROR_INVALID_ARGUMENT, "host", "NULL config");
    cfg.head_dim = 24;
    expect(gdn_cache_memory_size(&cfg, &bytes), GDN_ERROR_SHAPE, "host", "head_dim 24");
    test_backend backends[8];
    const int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        check_backend(&backends[b]);
        check_replay(&backends[b]);
    }
    test_backends_close(backends, n);
    return test_finish("test_cache");
}
