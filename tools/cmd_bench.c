/* cmd_bench.c: `gdn bench`: time the GDN op on the Qwen3.6-35B-A3B GDN stack shapes (30 layers,
 * Hk 16, Hv 32, D 128) for decode (T=1, K=1) and MTP verify (T=4, K=4), and compare the bytes it
 * must move with the machine's copy bandwidth measured in the same run. */
#include "tool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gdn bench [options]\n"
    "\n"
    "Times the Gated DeltaNet op alone on the GDN layers of Qwen3.6-35B-A3B (Hk 16, Hv 32,\n"
    "Dk = Dv = 128) and prints, per row, the time of one layer call, the minimum bytes\n"
    "it must move (state read once, each snapshot written once, inputs and outputs once), the\n"
    "achieved bandwidth and its share of the device copy bandwidth measured in the same run.\n"
    "\n"
    "options:\n"
    "  --backend cpu|cuda   backend (default: cuda when a GPU is present, else cpu)\n"
    "  --batch LIST         comma-separated batch sizes (default cuda 1,8,64,256; cpu 1,16)\n"
    "  --tokens T --K K     one row shape instead of the default pair (T=1 K=1) and (T=4 K=4)\n"
    "  --scheme snapshot|replay|both  how the state cache keeps the tokens of a step (default both):\n"
    "                       snapshot: the op writes K trailing states (rolling back selects one);\n"
    "                       replay: gated_delta_net_replay over one committed state and a ring of\n"
    "                       kept tokens (each one's update and decay) per sequence, folding the\n"
    "                       kept tokens of earlier steps into the state (their updates again) and\n"
    "                       committing when the ring is full; a row averages a whole cycle of the\n"
    "                       resulting steps\n"
    "  --state f32|bf16     how the state is stored (default f32); bf16 rounds it after every token\n"
    "                       (include/gdn.h) and halves the state bytes\n"
    "  --ring L             replay: history tokens of the ring (default T: commit every step)\n"
    "  --accept A           replay: tokens kept per step, 1..T (default T), which is what the\n"
    "                       next steps fold\n"
    "  --layers N           layer calls per step (default 30)\n"
    "  --distinct N         at most N distinct buffer sets per step (default: one per layer as far\n"
    "                       as memory allows); --distinct 1 reuses one set, as op micro-benchmarks\n"
    "                       such as ggml's test-backend-ops do, so small states stay in cache\n"
    "  --state-ready on|off pass the op the state_ready hint where it holds (default on: with\n"
    "                       distinct buffer sets no call reads what the call before wrote)\n"
    "  --graphs on|off      record each step once and replay it as one CUDA graph (default on;\n"
    "                       the CPU backend has no recording and always runs calls one by one)\n"
    "  --reps N             timed steps per row, median reported (default: about 1 s of work, 5..50)\n"
    "  --json               one JSON object per row instead of the table\n"
    "  --stack              the whole GDN block stack as graphs, passes off and on, instead of\n"
    "                       the op alone (see gdn bench --stack --help)\n"
    "  --prefill            one layer over long prompts, token by token and in the chunked form\n"
    "                       (see gdn bench --prefill --help)\n"
    "\n"
    "Each step runs N layer calls with distinct state buffers (as many as fit in a memory budget,\n"
    "so the state is never served from cache; the 'sets' column says how many); the state is\n"
    "updated in place (state = states[0], as in a recurrent cache). Minimum bytes of a replay\n"
    "row: the state read, its write-back on commit steps, the ring tokens folded and appended,\n"
    "and the inputs and outputs, averaged over the cycle. cache MB/seq: the GDN state cache one\n"
    "sequence holds over all layers (K states; replay: one state and the ring).\n";

typedef struct bench_config {
    const char *backend_name;
    int64_t batches[16];
    int n_batches;
    int64_t T, K; /* 0: default pair */
    int layers, reps, json;
    int graphs;   /* record each step once and replay it (CUDA graphs) */
    int distinct; /* at most this many distinct layer buffer sets (0: as many as fit the budget) */
    int no_state_ready; /* --state-ready off */
    int schemes;  /* bit 0: snapshot rows, bit 1: replay rows */
    int64_t ring, accept; /* replay: history tokens L (0: T), tokens kept per step (0: T) */
    gdn_dtype state;      /* state storage: F32 or BF16 */
} bench_config;

enum { SCHEME_SNAPSHOT = 1, SCHEME_REPLAY = 2, MAX_PHASES = 64 };

/* Replay: the fold entry of one step (the same for every sequence and layer). */
typedef struct replay_phase {
    int32_t start, count, commit;
} replay_phase;

enum { Hk = 16, Hv = 32, D = 128 };

/* One layer's buffers on the backend. */
typedef struct layer_buffers {
    void *q, *k, *v, *g, *beta, *o, *states;
    void *ring_k, *ring_v, *ring_g; /* replay (update factors, decays); states is then the pool of B slots */
} layer_buffers;

/* The replay row's steady state: every step keeps `accept` of its T tokens; the ring of Lp =
 * L + T positions holds the kept tokens since the last commit; a step folds them (count) and
 * commits when its own T tokens would not fit in the history (count + T > L), as gdn_cache does.
 * Steps from the empty ring until a (start, count) pair repeats; the phases of that cycle go to
 * `phases`. Returns the cycle length (0 if none within MAX_PHASES). */
static int replay_cycle(int64_t T, int64_t L, int64_t accept, replay_phase *phases)
{
    const int64_t Lp = L + T;
    int64_t seen_start[2 * MAX_PHASES], seen_count[2 * MAX_PHASES];
    int64_t start = 0, count = 0;
    for (int n = 0; n < 2 * MAX_PHASES; n++) {
        for (int m = 0; m < n; m++)
            if (seen_start[m] == start && seen_count[m] == count) {
                if (n - m > MAX_PHASES)
                    return 0;
                /* replay the cycle m .. n-1 into phases */
                int64_t s = start, c = count;
                for (int i = 0; i < n - m; i++) {
                    const int commit = c > 0 && c + T > L;
                    phases[i].start = (int32_t)s;
                    phases[i].count = (int32_t)c;
                    phases[i].commit = commit;
                    if (commit) {
                        s = (s + c) % Lp;
                        c = accept;
                    } else {
                        c += accept;
                    }
                }
                return n - m;
            }
        seen_start[n] = start;
        seen_count[n] = count;
        if (count > 0 && count + T > L) {
            start = (start + count) % Lp;
            count = accept;
        } else {
            count += accept;
        }
    }
    return 0;
}

/* Fill `bytes` of backend memory with a repeating pattern of F32 values in [lo, hi), or with
 * BF16 values (each float rounded to BF16, a pair per pattern float) when bf16. */
static int fill_as(gdn_backend *backend, void *dst, size_t bytes, float lo, float hi, unsigned seed, int bf16)
{
    enum { CHUNK = 1 << 20 }; /* floats */
    float *pattern = malloc(CHUNK * sizeof(float));
    if (pattern == NULL)
        return 0;
    uint32_t x = seed * 2654435761u + 1;
    for (int i = 0; i < CHUNK; i++) {
        x = x * 1664525u + 1013904223u;
        pattern[i] = lo + (hi - lo) * (float)(x >> 8) / 16777216.0f;
    }
    for (int i = 0; bf16 && i < CHUNK; i += 2) {
        const uint32_t pair = (uint32_t)gdn_bf16_from_f32(pattern[i]) |
                              (uint32_t)gdn_bf16_from_f32(pattern[i + 1]) << 16; /* element 0 in the low half */
        memcpy(&pattern[i / 2], &pair, sizeof pair); /* i / 2 <= i: only floats already read */
    }
    if (bf16) /* the packed half twice, so the pattern fills the chunk */
        memcpy(&pattern[CHUNK / 2], pattern, CHUNK / 2 * sizeof(float));
    int ok = 1;
    for (size_t off = 0; ok && off < bytes; off += CHUNK * sizeof(float)) {
        size_t n = bytes - off < CHUNK * sizeof(float) ? bytes - off : CHUNK * sizeof(float);
        ok = gdn_backend_upload(backend, (char *)dst + off, pattern, n) == GDN_OK;
    }
    free(pattern);
    return ok;
}

static int fill(gdn_backend *backend, void *dst, size_t bytes, float lo, float hi, unsigned seed)
{
    return fill_as(backend, dst, bytes, lo, hi, seed, 0);
}

/* Device copy bandwidth in GB/s, counting bytes read plus bytes written; median of runs. */
static double measure_copy(gdn_backend *backend, size_t bytes)
{
    void *a = NULL, *b = NULL;
    double result = 0;
    if (gdn_backend_alloc(backend, bytes, &a) == GDN_OK && gdn_backend_alloc(backend, bytes, &b) == GDN_OK &&
        fill(backend, a, bytes, -1, 1, 1) && fill(backend, b, bytes, -1, 1, 2)) {
        double ms[15];
        int ok = 1;
        for (int i = 0; i < 17 && ok; i++) {
            double t = 0;
            ok = gdn_backend_timer_start(backend) == GDN_OK && gdn_backend_copy(backend, b, a, bytes) == GDN_OK &&
                 gdn_backend_timer_stop(backend, &t) == GDN_OK;
            if (i >= 2)
                ms[i - 2] = t; /* two warm-up copies */
        }
        if (ok) {
            qsort(ms, 15, sizeof ms[0], gdn_tool_compare_double);
            result = 2.0 * (double)bytes / (ms[7] * 1e-3) / 1e9;
        }
    }
    gdn_backend_dealloc(backend, a);
    gdn_backend_dealloc(backend, b);
    return result;
}

typedef struct row_result {
    double us_per_layer, us_per_step, min_bytes, gbps, cache_bytes_per_sequence;
    int sets, reps, recorded;
} row_result;

/* A row: its scheme and, for replay, the cycle of fold entries (one device buffer [B,3] each)
 * and the pool index (identity). */
typedef struct row_plan {
    int replay;
    int64_t L, Lp, accept;
    int n_phases;
    replay_phase phases[MAX_PHASES];
    void *fold[MAX_PHASES];
    void *index;
} row_plan;

/* The token views of one layer's buffers (both schemes): q, k, v, g, beta, o of B x T tokens. */
typedef struct token_views {
    gdn_tensor q, k, v, g, beta, o;
} token_views;

static token_views token_views_of(const layer_buffers *b, int64_t B, int64_t T)
{
    const int64_t ne_qk[4] = {D, Hk, T, B}, ne_v[4] = {D, Hv, T, B}, ne_gate[3] = {Hv, T, B};
    token_views t;
    t.q = gdn_tensor_contiguous(b->q, GDN_DTYPE_F32, 4, ne_qk);
    t.k = gdn_tensor_contiguous(b->k, GDN_DTYPE_F32, 4, ne_qk);
    t.v = gdn_tensor_contiguous(b->v, GDN_DTYPE_F32, 4, ne_v);
    t.g = gdn_tensor_contiguous(b->g, GDN_DTYPE_F32, 3, ne_gate);
    t.beta = gdn_tensor_contiguous(b->beta, GDN_DTYPE_F32, 3, ne_gate);
    t.o = gdn_tensor_contiguous(b->o, GDN_DTYPE_F32, 4, ne_v);
    return t;
}

/* The state_ready hint (gdn.h): the call before each one (the previous layer's, or the last
 * layer's of the step before) uses another buffer set, so it writes neither this state nor its
 * index, nor (replay) these rings; the fold arrays are uploaded once, before the row. */
static int state_ready(const bench_config *cfg, int sets)
{
    return !cfg->no_state_ready && sets >= 2 && (cfg->layers - 1) % sets != 0;
}

/* Queue replay step `phase`: cfg->layers replay calls over the layer buffer sets in turn. */
static int queue_replay_step(gdn_backend *backend, const bench_config *cfg, const layer_buffers *L, int sets,
                             int64_t B, int64_t T, const row_plan *plan, int phase)
{
    const int64_t ne_pool[4] = {D, D, Hv, B}, ne_index[1] = {B}, ne_fold[2] = {3, B};
    const int64_t ne_rk[4] = {D, Hk, plan->Lp, B}, ne_rv[4] = {D, Hv, plan->Lp, B}, ne_rg[3] = {Hv, plan->Lp, B};
    gdn_gated_delta_net_params params = gdn_gated_delta_net_params_default();
    params.state_ready = state_ready(cfg, sets);
    for (int l = 0; l < cfg->layers; l++) {
        const layer_buffers *b = &L[l % sets];
        const token_views t = token_views_of(b, B, T);
        gdn_gated_delta_net_replay_args a;
        a.q = t.q, a.k = t.k, a.v = t.v, a.g = t.g, a.beta = t.beta, a.o = t.o;
        a.state = gdn_tensor_contiguous(b->states, cfg->state, 4, ne_pool);
        a.state_index = gdn_tensor_contiguous(plan->index, GDN_DTYPE_I32, 1, ne_index);
        a.ring_k = gdn_tensor_contiguous(b->ring_k, GDN_DTYPE_F32, 4, ne_rk);
        a.ring_v = gdn_tensor_contiguous(b->ring_v, GDN_DTYPE_F32, 4, ne_rv);
        a.ring_g = gdn_tensor_contiguous(b->ring_g, GDN_DTYPE_F32, 3, ne_rg);
        a.fold = gdn_tensor_contiguous(plan->fold[phase], GDN_DTYPE_I32, 2, ne_fold);
        if (gdn_gated_delta_net_replay(backend, &params, &a) != GDN_OK)
            return 0;
    }
    return 1;
}

/* Queue one step: cfg->layers op calls over the layer buffer sets in turn. Replay: the whole
 * cycle of steps (the row divides by their number). */
static int queue_step(gdn_backend *backend, const bench_config *cfg, const layer_buffers *L, int sets, int64_t B,
                      int64_t T, int64_t K, const row_plan *plan)
{
    if (plan->replay) {
        for (int phase = 0; phase < plan->n_phases; phase++)
            if (!queue_replay_step(backend, cfg, L, sets, B, T, plan, phase))
                return 0;
        return 1;
    }
    const int64_t N = T < K ? T : K;
    const int64_t ne_states[5] = {D, D, Hv, B, N};
    gdn_gated_delta_net_params params = gdn_gated_delta_net_params_default();
    params.n_snapshots = (int32_t)K;
    params.state_ready = state_ready(cfg, sets);
    for (int l = 0; l < cfg->layers; l++) {
        const layer_buffers *b = &L[l % sets];
        gdn_gated_delta_net_args a;
        memset(&a, 0, sizeof a); /* no state_index: each layer reads its own state */
        const token_views t = token_views_of(b, B, T);
        a.q = t.q, a.k = t.k, a.v = t.v, a.g = t.g, a.beta = t.beta, a.o = t.o;
        a.states = gdn_tensor_contiguous(b->states, cfg->state, 5, ne_states);
        a.state = a.states; /* in place: the state is read from snapshot slot 0 */
        a.state.n_dims = 4;
        a.state.ne[4] = 1;
        if (gdn_gated_delta_net(backend, &params, &a) != GDN_OK)
            return 0;
    }
    return 1;
}

/* Set up a replay row's plan: the cycle of fold entries, uploaded once per phase. */
static int plan_replay(gdn_backend *backend, const bench_config *cfg, int64_t B, int64_t T, row_plan *plan)
{
    plan->replay = 1;
    plan->L = cfg->ring ? cfg->ring : T;
    plan->Lp = plan->L + T;
    plan->accept = cfg->accept ? cfg->accept : T;
    plan->n_phases = replay_cycle(T, plan->L, plan->accept, plan->phases);
    if (plan->n_phases == 0) {
        fprintf(stderr, "gdn bench: replay T=%lld L=%lld accept=%lld: no cycle within %d steps\n", (long long)T,
                (long long)plan->L, (long long)plan->accept, MAX_PHASES);
        return 0;
    }
    int32_t *host = malloc((size_t)B * 3 * sizeof(int32_t));
    int ok = host != NULL && gdn_backend_alloc(backend, (size_t)B * sizeof(int32_t), &plan->index) == GDN_OK;
    for (int64_t b = 0; ok && b < B; b++)
        host[b] = (int32_t)b;
    ok = ok && gdn_backend_upload(backend, plan->index, host, (size_t)B * sizeof(int32_t)) == GDN_OK;
    for (int i = 0; ok && i < plan->n_phases; i++) {
        for (int64_t b = 0; b < B; b++) {
            host[3 * b + 0] = plan->phases[i].start;
            host[3 * b + 1] = plan->phases[i].count;
            host[3 * b + 2] = plan->phases[i].commit;
        }
        ok = gdn_backend_alloc(backend, (size_t)B * 3 * sizeof(int32_t), &plan->fold[i]) == GDN_OK &&
             gdn_backend_upload(backend, plan->fold[i], host, (size_t)B * 3 * sizeof(int32_t)) == GDN_OK;
    }
    free(host);
    if (!ok)
        fprintf(stderr, "gdn bench: replay B=%lld: cannot set up the fold entries: %s\n", (long long)B,
                gdn_error_detail());
    return ok;
}

static int bench_row(gdn_backend *backend, const bench_config *cfg, int64_t B, int64_t T, int64_t K,
                     const row_plan *plan, size_t budget, row_result *r)
{
    const int64_t N = plan->replay ? 1 : T < K ? T : K; /* states held per sequence */
    const size_t f = sizeof(float);
    const size_t qk = (size_t)(B * T * Hk * D) * f, v = (size_t)(B * T * Hv * D) * f;
    const size_t gate = (size_t)(B * T * Hv) * f, state = (size_t)(B * Hv * D * D) * gdn_dtype_size(cfg->state);
    /* replay rings: Lp token entries per sequence of k (Hk*D), delta (Hv*D) and g (Hv) */
    const size_t token = (size_t)(Hk * D + Hv * D + Hv) * f;
    const int64_t Lp = plan->replay ? plan->Lp : 0;
    const size_t rings = (size_t)(B * Lp) * token;
    const size_t per_layer = 2 * qk + 2 * v + 2 * gate + (size_t)N * state + rings;
    int sets = (int)(budget / per_layer);
    sets = sets < 1 ? 1 : sets > cfg->layers ? cfg->layers : sets;
    if (cfg->distinct > 0 && sets > cfg->distinct)
        sets = cfg->distinct;
    r->sets = sets;
    const double io = (double)(2 * qk + 2 * v + 2 * gate);
    if (plan->replay) { /* averaged over the cycle: read S, write S on commits, ring in and out */
        double sum = 0;
        for (int i = 0; i < plan->n_phases; i++)
            sum += io + (double)state * (1 + plan->phases[i].commit) +
                   (double)(B * (plan->phases[i].count + T)) * (double)token;
        r->min_bytes = sum / plan->n_phases;
        r->cache_bytes_per_sequence = (double)cfg->layers * (double)(state + rings) / (double)B;
    } else {
        r->min_bytes = io + (double)(state + (size_t)N * state);
        r->cache_bytes_per_sequence = (double)cfg->layers * (double)((size_t)N * state) / (double)B;
    }

    layer_buffers *L = calloc((size_t)sets, sizeof *L);
    int ok = L != NULL;
    for (int s = 0; ok && s < sets; s++) {
        ok = gdn_backend_alloc(backend, qk, &L[s].q) == GDN_OK && gdn_backend_alloc(backend, qk, &L[s].k) == GDN_OK &&
             gdn_backend_alloc(backend, v, &L[s].v) == GDN_OK && gdn_backend_alloc(backend, gate, &L[s].g) == GDN_OK &&
             gdn_backend_alloc(backend, gate, &L[s].beta) == GDN_OK &&
             gdn_backend_alloc(backend, v, &L[s].o) == GDN_OK &&
             gdn_backend_alloc(backend, (size_t)N * state, &L[s].states) == GDN_OK;
        /* q and k with entries ~ +-1/sqrt(D) (unit-ish norm), log-decay in [-2, -0.01] */
        ok = ok && fill(backend, L[s].q, qk, -0.15f, 0.15f, 10 * s + 1) &&
             fill(backend, L[s].k, qk, -0.15f, 0.15f, 10 * s + 2) && fill(backend, L[s].v, v, -1, 1, 10 * s + 3) &&
             fill(backend, L[s].g, gate, -2.0f, -0.01f, 10 * s + 4) &&
             fill(backend, L[s].beta, gate, 0, 1, 10 * s + 5) &&
             fill_as(backend, L[s].states, (size_t)N * state, -0.1f, 0.1f, 10 * s + 6, cfg->state == GDN_DTYPE_BF16);
        if (ok && plan->replay) {
            const size_t rk = (size_t)(B * Lp * Hk * D) * f, rv = (size_t)(B * Lp * Hv * D) * f;
            const size_t rg = (size_t)(B * Lp * Hv) * f;
            ok = gdn_backend_alloc(backend, rk, &L[s].ring_k) == GDN_OK &&
                 gdn_backend_alloc(backend, rv, &L[s].ring_v) == GDN_OK &&
                 gdn_backend_alloc(backend, rg, &L[s].ring_g) == GDN_OK &&
                 fill(backend, L[s].ring_k, rk, -0.15f, 0.15f, 10 * s + 7) &&
                 fill(backend, L[s].ring_v, rv, -1, 1, 10 * s + 8) &&
                 fill(backend, L[s].ring_g, rg, 0.135f, 0.99f, 10 * s + 9); /* decays exp(g), g in [-2, -0.01] */
        }
    }
    if (!ok)
        fprintf(stderr, "gdn bench: B=%lld T=%lld: cannot set up buffers: %s\n", (long long)B, (long long)T,
                gdn_error_detail());

    /* One step (replay: one cycle of steps): `layers` op calls each, recorded once and replayed
     * where the backend can (CUDA graphs), else queued call by call. */
    const int steps = plan->replay ? plan->n_phases : 1;
    gdn_recording *recording = NULL;
    if (ok && cfg->graphs && gdn_backend_record_begin(backend) == GDN_OK) {
        ok = queue_step(backend, cfg, L, sets, B, T, K, plan);
        gdn_status st = gdn_backend_record_end(backend, &recording);
        ok = ok && st == GDN_OK;
    }
    r->recorded = recording != NULL;
    double *times = NULL;
    int reps = cfg->reps;
    for (int rep = -2; ok && (rep < reps || reps == 0); rep++) {
        double ms = 0;
        ok = gdn_backend_timer_start(backend) == GDN_OK;
        ok = ok && (recording ? gdn_recording_replay(recording) == GDN_OK
                              : queue_step(backend, cfg, L, sets, B, T, K, plan));
        ok = ok && gdn_backend_timer_stop(backend, &ms) == GDN_OK;
        if (!ok) {
            fprintf(stderr, "gdn bench: B=%lld T=%lld: %s\n", (long long)B, (long long)T, gdn_error_detail());
            break;
        }
        if (rep == -1 && reps == 0) { /* about 1 s of timed work, 5 to 50 steps */
            reps = ms > 0 ? (int)(1000.0 / ms) : 50;
            reps = reps < 5 ? 5 : reps > 50 ? 50 : reps;
        }
        if (rep == -1) {
            times = malloc((size_t)reps * sizeof *times);
            ok = times != NULL;
        }
        if (rep >= 0)
            times[rep] = ms;
    }
    if (ok) {
        qsort(times, (size_t)reps, sizeof *times, gdn_tool_compare_double);
        double step_ms = times[reps / 2] / steps;
        r->reps = reps;
        r->us_per_step = step_ms * 1e3;
        r->us_per_layer = r->us_per_step / cfg->layers;
        r->gbps = r->min_bytes / (r->us_per_layer * 1e-6) / 1e9;
    }
    free(times);
    gdn_recording_free(recording);
    for (int s = 0; L && s < sets; s++) {
        void *all[] = {L[s].q, L[s].k, L[s].v, L[s].g, L[s].beta, L[s].o, L[s].states,
                       L[s].ring_k, L[s].ring_v, L[s].ring_g};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            gdn_backend_dealloc(backend, all[i]);
    }
    free(L);
    return ok;
}

static int parse_args(int argc, char **argv, bench_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->layers = 30;
    cfg->graphs = 1;
    cfg->schemes = SCHEME_SNAPSHOT | SCHEME_REPLAY;
    cfg->state = GDN_DTYPE_F32;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        }
        if (strcmp(opt, "--json") == 0) {
            cfg->json = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "gdn bench: unknown option or missing value: '%s'\n%s", opt, usage);
            return 0;
        }
        const char *val = argv[++i];
        long n = 0;
        if (strcmp(opt, "--backend") == 0) {
            gdn_backend_kind kind;
            if (!gdn_tool_parse_backend(val, &kind))
                return 0;
            cfg->backend_name = val;
        } else if (strcmp(opt, "--batch") == 0) {
            if (!gdn_tool_parse_batches("gdn bench", val, cfg->batches, 16, &cfg->n_batches))
                return 0;
        } else if (strcmp(opt, "--tokens") == 0 && gdn_tool_parse_int(val, 1, 4096, &n)) {
            cfg->T = n;
        } else if (strcmp(opt, "--K") == 0 && gdn_tool_parse_int(val, 1, 64, &n)) {
            cfg->K = n;
        } else if (strcmp(opt, "--scheme") == 0 && (strcmp(val, "snapshot") == 0 || strcmp(val, "replay") == 0 ||
                                                      strcmp(val, "both") == 0)) {
            cfg->schemes = strcmp(val, "snapshot") == 0 ? SCHEME_SNAPSHOT
                           : strcmp(val, "replay") == 0 ? SCHEME_REPLAY
                                                        : SCHEME_SNAPSHOT | SCHEME_REPLAY;
        } else if (strcmp(opt, "--state") == 0 && (strcmp(val, "f32") == 0 || strcmp(val, "bf16") == 0)) {
            cfg->state = strcmp(val, "bf16") == 0 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
        } else if (strcmp(opt, "--ring") == 0 && gdn_tool_parse_int(val, 1, 4096, &n)) {
            cfg->ring = n;
        } else if (strcmp(opt, "--accept") == 0 && gdn_tool_parse_int(val, 1, 4096, &n)) {
            cfg->accept = n;
        } else if (strcmp(opt, "--graphs") == 0 && (strcmp(val, "on") == 0 || strcmp(val, "off") == 0)) {
            cfg->graphs = strcmp(val, "on") == 0;
        } else if (strcmp(opt, "--state-ready") == 0 && (strcmp(val, "on") == 0 || strcmp(val, "off") == 0)) {
            cfg->no_state_ready = strcmp(val, "off") == 0;
        } else if (strcmp(opt, "--distinct") == 0 && gdn_tool_parse_int(val, 1, 1000, &n)) {
            cfg->distinct = (int)n;
        } else if (strcmp(opt, "--layers") == 0 && gdn_tool_parse_int(val, 1, 1000, &n)) {
            cfg->layers = (int)n;
        } else if (strcmp(opt, "--reps") == 0 && gdn_tool_parse_int(val, 1, 100000, &n)) {
            cfg->reps = (int)n;
        } else {
            fprintf(stderr, "gdn bench: bad option or value: %s %s\n%s", opt, val, usage);
            return 0;
        }
    }
    if (cfg->K == 0 && cfg->T != 0) /* --tokens alone: keep every token's state */
        cfg->K = cfg->T;
    if (cfg->T == 0 && cfg->K != 0)
        cfg->T = 1;
    /* The ring must hold a step's tokens, and a step keeps at most its tokens: checked against
     * every T the rows will use (the default pair has T = 1 and 4). */
    const int64_t t_max = cfg->T ? cfg->T : 4, t_min = cfg->T ? cfg->T : 1;
    if (cfg->ring != 0 && cfg->ring < t_max) {
        fprintf(stderr, "gdn bench: --ring %lld is shorter than the %lld tokens of a step (L >= T)\n",
                (long long)cfg->ring, (long long)t_max);
        return 0;
    }
    if (cfg->accept != 0 && cfg->accept > t_min) {
        fprintf(stderr, "gdn bench: --accept %lld is more than the %lld tokens of a step\n", (long long)cfg->accept,
                (long long)t_min);
        return 0;
    }
    return 1;
}

int gdn_cmd_bench(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--stack") == 0)
            return gdn_cmd_bench_stack(argc, argv);
        if (strcmp(argv[i], "--prefill") == 0)
            return gdn_cmd_bench_prefill(argc, argv);
    }
    bench_config cfg;
    if (!parse_args(argc, argv, &cfg))
        return 2;
    gdn_backend *backend = gdn_tool_open_backend(cfg.backend_name);
    if (backend == NULL)
        return 1;
    const int cuda = gdn_backend_kind_of(backend) == GDN_BACKEND_CUDA;
    if (cfg.n_batches == 0) {
        const int64_t gpu[] = {1, 8, 64, 256}, cpu[] = {1, 16};
        const int64_t *list = cuda ? gpu : cpu;
        cfg.n_batches = cuda ? 4 : 2;
        memcpy(cfg.batches, list, (size_t)cfg.n_batches * sizeof list[0]);
    }
    /* Memory for distinct per-layer buffers: enough to keep every state out of the caches. */
    const size_t budget = cuda ? (size_t)24 << 30 : (size_t)1536 << 20;
    const size_t copy_bytes = cuda ? (size_t)1 << 30 : (size_t)256 << 20;

    fprintf(stderr, "gdn bench: %s; measuring copy bandwidth (%zu MiB)...\n", gdn_backend_name(backend),
            copy_bytes >> 20);
    double copy_gbps = measure_copy(backend, copy_bytes);
    if (copy_gbps <= 0) {
        fprintf(stderr, "gdn bench: copy bandwidth measurement failed: %s\n", gdn_error_detail());
        gdn_backend_free(backend);
        return 1;
    }
    if (!cfg.json) {
        printf("gdn bench: GDN op alone, Qwen3.6-35B-A3B GDN shapes (Hk=%d Hv=%d D=%d, %s state), %d layers/step\n",
               Hk, Hv, D, cfg.state == GDN_DTYPE_BF16 ? "bf16" : "fp32", cfg.layers);
        printf("backend: %s\n", gdn_backend_name(backend));
        printf("ceiling: device copy %.1f GB/s (bytes read + written, median of 15)\n\n", copy_gbps);
        printf("%-8s %4s %3s %3s %3s %5s %11s %11s %13s %9s %9s %13s %6s %5s\n", "scheme", "T", "K", "L", "A", "B",
               "us/layer", "us/step", "min MB/layer", "GB/s", "% ceiling", "cache MB/seq", "graph", "sets");
    }
    const int64_t shapes[2][2] = {{1, 1}, {4, 4}};
    int n_shapes = cfg.T ? 1 : 2, failed = 0;
    for (int scheme = SCHEME_SNAPSHOT; scheme <= SCHEME_REPLAY; scheme <<= 1) {
        if (!(cfg.schemes & scheme))
            continue;
        for (int s = 0; s < n_shapes; s++) {
            int64_t T = cfg.T ? cfg.T : shapes[s][0], K = cfg.T ? cfg.K : shapes[s][1];
            for (int b = 0; b < cfg.n_batches; b++) {
                row_plan plan;
                memset(&plan, 0, sizeof plan);
                row_result r;
                int ok = scheme == SCHEME_SNAPSHOT || plan_replay(backend, &cfg, cfg.batches[b], T, &plan);
                ok = ok && bench_row(backend, &cfg, cfg.batches[b], T, K, &plan, budget, &r);
                gdn_backend_dealloc(backend, plan.index);
                for (int i = 0; i < plan.n_phases; i++)
                    gdn_backend_dealloc(backend, plan.fold[i]);
                if (!ok) {
                    failed = 1;
                    continue;
                }
                const char *name = plan.replay ? "replay" : "snapshot";
                const long long k_shown = plan.replay ? 0 : (long long)K; /* replay writes no snapshots */
                double ratio = r.gbps / copy_gbps;
                if (cfg.json)
                    printf("{\"backend\":\"%s\",\"device\":\"%s\",\"scheme\":\"%s\",\"state_dtype\":\"%s\","
                           "\"T\":%lld,\"K\":%lld,"
                           "\"ring\":%lld,\"accept\":%lld,\"steps_in_cycle\":%d,\"B\":%lld,\"Hk\":%d,\"Hv\":%d,"
                           "\"D\":%d,\"layers\":%d,\"distinct_layer_buffers\":%d,\"reps\":%d,\"us_per_layer\":%.3f,"
                           "\"us_per_step\":%.3f,\"min_bytes_per_layer\":%.0f,\"gbps\":%.2f,\"copy_gbps\":%.2f,"
                           "\"ceiling_ratio\":%.4f,\"cache_bytes_per_sequence\":%.0f,\"graph\":%s}\n",
                           cuda ? "cuda" : "cpu", gdn_backend_name(backend), name,
                           cfg.state == GDN_DTYPE_BF16 ? "bf16" : "f32", (long long)T, k_shown,
                           (long long)plan.L, (long long)plan.accept, plan.replay ? plan.n_phases : 1,
                           (long long)cfg.batches[b], Hk, Hv, D, cfg.layers, r.sets, r.reps, r.us_per_layer,
                           r.us_per_step, r.min_bytes, r.gbps, copy_gbps, ratio, r.cache_bytes_per_sequence,
                           r.recorded ? "true" : "false");
                else {
                    char k_text[24] = "-", l_text[24] = "-", a_text[24] = "-"; /* '-': not of this scheme */
                    if (plan.replay) {
                        snprintf(l_text, sizeof l_text, "%lld", (long long)plan.L);
                        snprintf(a_text, sizeof a_text, "%lld", (long long)plan.accept);
                    } else {
                        snprintf(k_text, sizeof k_text, "%lld", k_shown);
                    }
                    printf("%-8s %4lld %3s %3s %3s %5lld %11.2f %11.1f %13.2f %9.1f %8.1f%% %13.1f %6s %5d\n", name,
                           (long long)T, k_text, l_text, a_text, (long long)cfg.batches[b], r.us_per_layer,
                           r.us_per_step, r.min_bytes / 1e6, r.gbps, 100.0 * ratio, r.cache_bytes_per_sequence / 1e6,
                           r.recorded ? "yes" : "no", r.sets);
                }
                fflush(stdout);
            }
        }
    }
    gdn_backend_free(backend);
    return failed;
}
