/* gdn.h: the public interface of gdn, a library for the recurrent half of hybrid
 * linear-attention models (Gated DeltaNet) on CPUs and CUDA GPUs.
 * This header is the manual: every declaration says who owns what and for how long. */
#ifndef GDN_H
#define GDN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------
 * Status codes
 *
 * Every fallible call returns a gdn_status: GDN_OK (0) on success, a negative code on failure.
 * The library never aborts or exits on caller input. On failure, gdn_error_detail() gives a
 * sentence naming what was wrong and what was expected.
 * ------------------------------------------------------------------------------------------ */
typedef enum gdn_status {
#define GDN_STATUS_ITEM(name, value, text) GDN_##name = value,
#include "gdn_status.def"
#undef GDN_STATUS_ITEM
} gdn_status;

/* Short fixed text for a status code ("invalid argument"); static storage, never NULL. */
const char *gdn_status_string(gdn_status status);

/* Detailed message of the most recent failure on the calling thread, e.g.
 * "gated_delta_net: v has Hv=30 heads, not a multiple of Hk=16". Thread-local storage owned by
 * the library, valid until the next gdn call on this thread; "" when nothing failed yet. */
const char *gdn_error_detail(void);

/* ------------------------------------------------------------------------------------------
 * Tensors are views: a data pointer, element counts and byte strides, as in ggml.
 *
 * ne[0] is the innermost (fastest varying) dimension. Documentation writes shapes outermost
 * first, as numpy does: q [B,T,Hk,Dk] means ne = {Dk, Hk, T, B}. nb[i] is the distance in bytes
 * between consecutive elements along dimension i; any values are allowed, so a view can point
 * into the middle of a larger tensor (a cache slot, a transposed layout). A gdn_tensor never owns
 * its data.
 * ------------------------------------------------------------------------------------------ */
#define GDN_MAX_DIMS 6

typedef enum gdn_dtype {
    GDN_DTYPE_F32 = 0,
    GDN_DTYPE_F16 = 1,
    GDN_DTYPE_BF16 = 2,
    GDN_DTYPE_I32 = 3,
    GDN_DTYPE_F64 = 4,
    GDN_DTYPE_COUNT
} gdn_dtype;

typedef struct gdn_tensor {
    void *data;               /* first element; borrowed, never freed by gdn */
    gdn_dtype dtype;
    int32_t n_dims;           /* 1..GDN_MAX_DIMS; dims >= n_dims have ne = 1 */
    int64_t ne[GDN_MAX_DIMS]; /* element counts, innermost first */
    size_t nb[GDN_MAX_DIMS];  /* byte strides, innermost first */
} gdn_tensor;

/* Size of one element in bytes (4 for F32); 0 for an unknown dtype. */
size_t gdn_dtype_size(gdn_dtype dtype);

/* BF16 as the library stores a BF16 state: from F32 to the nearest BF16, ties to even (overflow
 * gives infinity, a NaN stays a quiet NaN); back to F32 exactly (a BF16 is a float's upper half). */
uint16_t gdn_bf16_from_f32(float x);
float gdn_bf16_to_f32(uint16_t h);

/* Name as used in safetensors files ("F32", "BF16", ...); "?" for an unknown dtype. */
const char *gdn_dtype_name(gdn_dtype dtype);

/* A contiguous view of `data` with n_dims dims of counts ne[0..n_dims-1] (innermost first).
 * Returns the view by value; it borrows `data`. n_dims outside 1..GDN_MAX_DIMS gives n_dims = 0,
 * which every op rejects. */
gdn_tensor gdn_tensor_contiguous(void *data, gdn_dtype dtype, int32_t n_dims, const int64_t *ne);

/* Number of elements (product of ne). */
int64_t gdn_tensor_count(const gdn_tensor *t);

/* Bytes from the first element to one past the last reachable element (0 if empty). */
size_t gdn_tensor_span(const gdn_tensor *t);

/* 1 if the view is densely packed innermost-first with no gaps, else 0. */
int gdn_tensor_is_contiguous(const gdn_tensor *t);

/* ------------------------------------------------------------------------------------------
 * Backends
 *
 * A backend runs ops on one device. Tensors passed to a backend's ops must live in memory the
 * backend can address: host memory for the CPU backend, device memory (from gdn_backend_alloc)
 * for CUDA. Ops are asynchronous on CUDA (queued on the backend's stream); call
 * gdn_backend_synchronize before reading results on the host.
 * ------------------------------------------------------------------------------------------ */
typedef enum gdn_backend_kind {
    GDN_BACKEND_CPU = 0,
    GDN_BACKEND_CUDA = 1
} gdn_backend_kind;

typedef struct gdn_backend gdn_backend;

typedef struct gdn_backend_options {
    int32_t n_threads; /* CPU: worker threads; 0 = all online cores */
    int32_t device;    /* CUDA: device ordinal, default 0 */
} gdn_backend_options;

/* 1 if the backend was built in and (for CUDA) a usable device is present, else 0.
 * When 0 and `why` is not NULL, *why points to static text saying why. */
int gdn_backend_available(gdn_backend_kind kind, const char **why);

/* Create a backend. `options` may be NULL for defaults. On success *out owns the backend;
 * release it with gdn_backend_free. On failure *out is NULL. */
gdn_status gdn_backend_init(gdn_backend **out, gdn_backend_kind kind, const gdn_backend_options *options);

/* Release a backend and everything it created except memory from gdn_backend_alloc, which must
 * be freed first. NULL is a no-op. */
void gdn_backend_free(gdn_backend *backend);

/* The kind the backend was created as. */
gdn_backend_kind gdn_backend_kind_of(const gdn_backend *backend);

/* "cpu (avx2, 2 threads)" or "cuda (NVIDIA H100 80GB HBM3, sm_90)". Owned by the backend. */
const char *gdn_backend_name(const gdn_backend *backend);

/* Allocate `bytes` of backend memory, aligned to at least 256 bytes. *ptr is owned by the caller
 * and released with gdn_backend_dealloc on the same backend. */
gdn_status gdn_backend_alloc(gdn_backend *backend, size_t bytes, void **ptr);
void gdn_backend_dealloc(gdn_backend *backend, void *ptr);

/* Copies between host memory and backend memory, and within backend memory. Synchronous with
 * respect to the host for upload/download; copy is queued like an op. */
gdn_status gdn_backend_upload(gdn_backend *backend, void *dst, const void *src_host, size_t bytes);
gdn_status gdn_backend_download(gdn_backend *backend, void *dst_host, const void *src, size_t bytes);
gdn_status gdn_backend_copy(gdn_backend *backend, void *dst, const void *src, size_t bytes);

/* Wait until all queued work on the backend is done. */
gdn_status gdn_backend_synchronize(gdn_backend *backend);

/* Time queued work: start marks a point in the backend's queue, stop marks another, waits for it
 * and stores the milliseconds between them (CUDA events on CUDA, a monotonic clock on the CPU). */
gdn_status gdn_backend_timer_start(gdn_backend *backend);
gdn_status gdn_backend_timer_stop(gdn_backend *backend, double *milliseconds);

/* Recording: the ops queued on the calling thread between record_begin and record_end are
 * captured instead of run, and can then be replayed many times with one call (a CUDA graph on
 * CUDA: one launch instead of one per op, the way a whole decode step should run at batch 1).
 * A replay reads and writes the same memory as the recorded calls, with the values the memory
 * holds at replay time. Between begin and end only ops may be queued (no upload, download,
 * synchronize or timer calls). Backends without recording (the CPU) return
 * GDN_ERROR_UNSUPPORTED from record_begin. On success *out owns the recording; release it with
 * gdn_recording_free before its backend. */
typedef struct gdn_recording gdn_recording;
gdn_status gdn_backend_record_begin(gdn_backend *backend);
gdn_status gdn_backend_record_end(gdn_backend *backend, gdn_recording **out);
gdn_status gdn_recording_replay(gdn_recording *recording);
void gdn_recording_free(gdn_recording *recording);

/* Counters: what the backend was asked to run, counted in the library's dispatch each time an
 * op call passes validation and its backend entry returns GDN_OK (gdn_gated_delta_net, and every
 * node a graph computes). Byte counts are logical: each element of each view once, times its
 * dtype size (a strided view counts its elements, not its span); they are what the call must
 * read and write, not what the hardware's caches end up moving.
 *   op_calls     op calls run.
 *   launches     kernel launches they made: one per op call, except on CUDA, where get_rows
 *                and a gated_delta_net call with a state_index launch a bounds-check kernel
 *                first (two each). On the CPU, one per op call.
 *   copies       cpy and set_rows op calls (graph nodes copying into a view or into slots).
 *   gathers      get_rows op calls.
 *   gdn_calls    gated_delta_net op calls.
 *   bytes        read plus written by all calls: every source and destination view; for
 *                get_rows only the rows gathered (plus the index), for a gated_delta_net call
 *                with a state_index only the B pool slots read (plus the index).
 *   cache_bytes  the recurrent-cache (state and conv-window) traffic among those bytes: each
 *                gated_delta_net call's state read (B states) plus its snapshots written, plus
 *                all the bytes (read and written) of every cpy and get_rows call.
 * Not counted: gdn_backend_upload, download and copy (memory transfers, not ops). Recording:
 * calls queued while recording are counted when they are recorded; gdn_recording_replay counts
 * nothing. To count a step that is replayed, run it once un-recorded between reset and get.
 * The counters are plain integers, updated by the calling thread without locks (use one thread
 * per backend, as for queueing ops). */
typedef struct gdn_backend_counters {
    uint64_t op_calls, launches, copies, gathers, gdn_calls;
    uint64_t bytes, cache_bytes;
} gdn_backend_counters;

/* Copy the counters into *out (zeroes when backend is NULL). */
void gdn_backend_get_counters(const gdn_backend *backend, gdn_backend_counters *out);
/* Set every counter to 0. NULL is a no-op. */
void gdn_backend_reset_counters(gdn_backend *backend);

/* ------------------------------------------------------------------------------------------
 * The Gated DeltaNet op
 *
 * Per sequence b, value head h, token t (q, k: Dk; v: Dv; g <= 0; beta in [0,1]):
 *     q, k  <- q / sqrt(|q|^2 + eps), k / sqrt(|k|^2 + eps)   (only when l2norm; eps = 1e-6,
 *              the form of fla and Hugging Face, with which the Qwen models were trained)
 *     S     <- exp(g) * S                            S is Dv x Dk, stored [Dv][Dk]
 *     d     <- beta * (v - S k)                      (S k)[j] = sum_i S[j][i] k[i]
 *     S     <- S + d k^T                             S[j][i] += d[j] k[i]
 *     o     <- scale * S q                           scale defaults to 1/sqrt(Dk)
 * Value head h reads q/k head h % Hk (tiled, ggml/GGUF) or h / (Hv/Hk) (interleaved, Hugging
 * Face/fla).
 *
 * Shapes (outermost first; every input may have any byte strides; dtype F32):
 *     q, k     [B, T, Hk, Dk]
 *     v        [B, T, Hv, Dv]
 *     g, beta  [B, T, Hv]
 *     state    [B, Hv, Dv, Dk]          initial state of each sequence; with state_index:
 *              [S, Hv, Dv, Dk]          a pool of S >= 1 slots (e.g. the whole recurrent cache)
 *     state_index  [B] (ne = {B}), I32   optional (data NULL: none). Sequence b starts from pool
 *                                       slot state_index[b]; slots may repeat (where they are
 *                                       only read; see Aliasing).
 *                                       The op reads, in place of a get_rows gather of the cache.
 *     o        [B, T, Hv, Dv]           output, any strides
 *     states   [N, B, Hv, Dv, Dk]       N = min(T, n_snapshots) snapshots, newest first:
 *                                       states[s] = state after token T-1-s. Any strides, so the
 *                                       destination can be a strided view into a state cache.
 *                                       With states_index: [N, S', Hv, Dv, Dk], a pool of S' >= 1
 *                                       slots (e.g. the cache's state groups seen as [N][S'])
 *     states_index [B] (ne = {B}), I32  optional (data NULL: none). Sequence b writes its
 *                                       snapshots to slot states_index[b] of `states`: the values
 *                                       must lie in 0..S'-1 and be distinct (a slot has one
 *                                       writer). With state_index and states over the same pool
 *                                       and state_index[b] == states_index[b] (N = 1), a call
 *                                       updates the states of any set of cache slots in place,
 *                                       as vLLM's state indices do.
 * Requirements: Dk = Dv, Dk in {16, 32, 64, 128, 256}; Hv a multiple of Hk; T >= 1, B >= 1.
 * Aliasing: without state_index, `state` may be exactly the view states[s] for one s (same data
 * and strides: an in-place update of a cache slot, each (b, h) reads its state before writing any
 * snapshot). With state_index, the pool never overlaps `o`, but may overlap `states` (the
 * llama.cpp cache: the slots read are the slots rewritten) under a rule that depends on the
 * index values, so the backend checks it where the index is readable, with the index check
 * below: for every sequence b, the state it reads (pool slot state_index[b]: counts Dk, Dv, Hv
 * with the pool's strides) must be either disjoint (byte ranges) from every snapshot view
 * written (states[s][b'] for all s < N, all b'), or exactly (same address, same nb[0..2]) one of
 * b's own snapshot views states[s][b]; then each (b, h, row) is read before it is written, by
 * the one task that writes it. (With states_index, "states[s][b']" is slot states_index[b'] of
 * snapshot s throughout this rule.) Without state_index, `state` may not overlap a states pool
 * written through states_index. Otherwise GDN_ERROR_OVERLAP naming b, state_index[b] and the
 * snapshot states[s][b'] it overlaps, with nothing written (on CUDA while recording: nothing
 * written, not reported, as for a bad index). Any other overlap of the byte ranges of an output
 * with an input or with the other output is rejected with GDN_ERROR_OVERLAP.
 * Index values: every state_index[b] must lie in 0..S-1, every states_index[b] in 0..S'-1 with no
 * two equal. They may be in memory the host cannot read, so the backend checks them: a bad value
 * writes nothing and gives GDN_ERROR_INVALID_ARGUMENT naming the position and the value (on CUDA
 * this waits for the stream; while the stream is being recorded a bad index still writes nothing
 * but is not reported).
 *
 * Exactness: on one backend, the per-token update runs in one fixed order, so running T tokens
 * in one call, or one token per call T times, gives bit-identical outputs and states; and a
 * sequence's results do not depend on B. This holds for every call that runs token by token,
 * which is every call unless the chunked form below is chosen.
 *
 * The chunked form (prefill). A long prompt runs faster as matrix products over chunks of C
 * tokens (the WY form of the delta rule): per chunk, with gamma_t the running sum of g over the
 * chunk, the deltas d_t solve the unit lower triangular system
 *     d_t + beta_t sum_{s<t} exp(gamma_t - gamma_s) (k_t . k_s) d_s = beta_t (v_t - exp(gamma_t) S0 k_t)
 * and then o_t = scale (exp(gamma_t) S0 q_t + sum_{s<=t} exp(gamma_t - gamma_s) (q_t . k_s) d_s),
 * S = exp(gamma_C) S0 + sum_s exp(gamma_C - gamma_s) d_s k_s^T. It is the same function of the
 * inputs, with the sums in another order: its results differ from the token-by-token ones by
 * rounding (measured in docs/PERF.md), are deterministic, and do not depend on B. A chunked
 * call runs tokens 0 .. T-N-1 in chunks and the last N = min(T, n_snapshots) tokens token by
 * token, so its snapshots are written exactly as the token-by-token op writes them. The
 * chunked form reads an index on the host first (on CUDA a stream sync) and may grow the
 * backend's scratch memory, so while ops are being recorded (gdn_backend_record_begin) it is
 * not chosen by itself and may not be asked for. BF16 state storage always runs token by token
 * (a chunk has no per-token state to round). The replay form never chunks.
 * State storage: `state` and `states` are both F32 (the default) or both BF16. With BF16 the
 * arithmetic stays F32 and the state is rounded to BF16 (round to nearest, ties to even) after
 * every token, whether or not that state is stored, because a state that only some tokens round
 * would make one T-token call differ from T one-token calls; o of a token is computed before its
 * state is rounded. That halves the state bytes moved; what the rounding costs in accuracy over
 * long decodes is measured in docs/PERF.md.
 * ------------------------------------------------------------------------------------------ */
typedef enum gdn_broadcast {
    GDN_BROADCAST_TILED = 0,      /* value head h uses q/k head h % Hk */
    GDN_BROADCAST_INTERLEAVED = 1 /* value head h uses q/k head h / (Hv / Hk) */
} gdn_broadcast;

typedef struct gdn_gated_delta_net_params {
    int32_t n_snapshots;     /* K >= 1: how many trailing states to write */
    gdn_broadcast broadcast;
    float scale;             /* multiplier of S q; 0 means 1/sqrt(Dk) */
    int32_t l2norm;          /* 1: L2-normalise q and k inside the op (see above) */
    int32_t state_ready;     /* a hint, 0 by default: 1 promises that the work queued on the
                              * backend just before this call (the previous op) writes neither
                              * `state` nor `state_index` (replay: nor `fold`, `ring_k`, `ring_v`
                              * or `ring_g`), so CUDA may start reading them while that work still
                              * runs; the results are the same */
    int32_t chunk;           /* the chunked form (above): 0 (default) lets the backend choose it,
                              * with chunks of 32 tokens, when T is at least the length from
                              * which it measured it faster (gdn_backend_chunk_min_tokens); -1
                              * never; 16, 32 or 64: always (where T > n_snapshots), with chunks
                              * of this many tokens */
    int32_t chunk_tf32;      /* the chunked form's matrix products: 0 (default) at about FP32
                              * accuracy (CPU: FP32; CUDA: each product as three TF32 products on
                              * tensor cores); 1 lets CUDA take one TF32 product (10-bit
                              * mantissa inputs, FP32 accumulation): faster, with the error in
                              * docs/PERF.md (about 7e-4 of max |o|). The CPU ignores it. */
} gdn_gated_delta_net_params;

/* Defaults: n_snapshots 1, tiled, scale 0 (1/sqrt(Dk)), l2norm 0, state_ready 0, chunk 0,
 * chunk_tf32 0. */
gdn_gated_delta_net_params gdn_gated_delta_net_params_default(void);

typedef struct gdn_gated_delta_net_args {
    gdn_tensor q, k, v, g, beta, state; /* inputs, borrowed */
    gdn_tensor o, states;               /* outputs, borrowed */
    gdn_tensor state_index;             /* optional input, borrowed: data NULL (as a positional
                                         * initialiser of the eight views above leaves it) means
                                         * none; a declared-but-unset struct must zero it */
    gdn_tensor states_index;            /* optional input, borrowed: where each sequence writes
                                         * its snapshots (above); data NULL means slot b */
} gdn_gated_delta_net_args;

/* The smallest T from which the backend chooses the chunked form by itself (params.chunk 0):
 * where it measured the chunked form faster than token by token for one Qwen3.6 GDN layer
 * (docs/PERF.md): 64 on the CPU (B = 1 and 4), 48 on CUDA (B = 1 and 8; even at B = 64). 0 when
 * it never does. */
int64_t gdn_backend_chunk_min_tokens(const gdn_backend *backend);

/* 1 when the backend's chunked form runs states of D x D with chunks of `chunk` tokens (16, 32 or
 * 64) on its device, else 0. The CPU runs every one. CUDA runs every one on Hopper (227 KB of
 * shared memory a block); GPUs with less (A100: 163 KB; sm_86, sm_89: 99 KB) take kernels with
 * fewer state rows a block, and refuse what still does not fit (D = 128 and D = 256 with chunks
 * of 64). There params.chunk 0 runs token by token, and an explicit chunk fails with
 * GDN_ERROR_UNSUPPORTED. */
int gdn_backend_chunk_fits(const gdn_backend *backend, int64_t D, int64_t chunk);

/* Run the op on `backend`. Validates every shape, dtype, stride and overlap first; on failure
 * nothing has been written. */
gdn_status gdn_gated_delta_net(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                               const gdn_gated_delta_net_args *args);

/* Variable-length batches: n_seq sequences of different lengths in one call (the prefill of
 * several prompts). The tokens of all sequences lie one after another:
 *     q, k     [1, Ttot, Hk, Dk]       v, o  [1, Ttot, Hv, Dv]       g, beta  [1, Ttot, Hv]
 * and sequence b owns tokens offsets[b] .. offsets[b+1]-1: `offsets` holds n_seq + 1 values in
 * host memory, offsets[0] = 0, strictly increasing, offsets[n_seq] = Ttot. state is
 * [n_seq, Hv, Dv, Dk] (or a pool with state_index [n_seq]); states is [N, n_seq, Hv, Dv, Dk]
 * with N = min(K, the longest sequence) (or a pool with states_index [n_seq]); sequence b writes
 * its min(length, K) newest snapshots to states[0..] of its slot and leaves the others of its
 * slot as they were. The rules of gdn_gated_delta_net apply per sequence (dtypes, strides, the
 * in-place rule; index values as if every sequence wrote N snapshots). Each sequence runs as a
 * call of the op on its own tokens (token by token or chunked by its own length, as params say),
 * one after another: the results are those of n_seq calls, without batching them into one
 * kernel. Everything is validated before the first sequence runs, so bad input writes nothing;
 * index values in device memory are read on the host (a sync on CUDA). */
gdn_status gdn_gated_delta_net_varlen(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                      const gdn_gated_delta_net_args *args, const int32_t *offsets, int64_t n_seq);

/* ------------------------------------------------------------------------------------------
 * The replay form of the Gated DeltaNet op (the replay scheme of speculative decoding)
 *
 * Each sequence keeps one committed state (a pool slot) and a ring of its latest tokens: for
 * each token the rank-one update by which it moved the state and its decay,
 *     S' = decay S + k^ delta^T,   decay = exp(g),   delta = beta (v - (decay S)^T k^)
 * (k^ = k / sqrt(|k|^2 + 1e-6) with l2norm, else k). The ring keeps decay in ring_g and the update
 * as a pair (ring_k, ring_v) with ring_k ring_v^T = k^ delta^T, split as the backend applies it:
 * the CPU keeps k^ and delta, CUDA keeps k as given and delta / sqrt(|k|^2 + 1e-6) (with l2norm).
 * So a fold needs no dot product, no norm and no exponential. One call first folds the tokens
 * accepted since the last commit into the state, then computes the outputs of T new tokens
 * without storing any state after them, and appends the new tokens to the ring (so the next call
 * can fold those that are accepted). Per sequence b, with slot = state_index[b] and {start,
 * count, commit} = fold[b]:
 *     S <- state[slot]
 *     for i in 0 .. count-1:   p = (start + i) mod L;  S <- ring_g[p] S + ring_k[p] ring_v[p]^T
 *     if commit != 0:          state[slot] <- S
 *     for t in 0 .. T-1:       S <- update(S, new token t);  o[b, t] <- scale * S q_t
 *     for t in 0 .. T-1:       ring position (start + count + t) mod L <- token t's pair and decay
 * update() is the per-token update of gdn_gated_delta_net (l2norm, gates and broadcast rule as
 * for any token). A folded token applies the floats its own update computed when it was new,
 * from the same state on the accepted path, so folding needs no v or beta and gives the very
 * floats that update gave. The rings are written and read by one backend: the split differs
 * between backends, so rings do not move from one to another.
 *
 * Shapes (outermost first; any byte strides; F32 unless said):
 *     q, k     [B, T, Hk, Dk]      the T new tokens, as for gdn_gated_delta_net
 *     v        [B, T, Hv, Dv]
 *     g, beta  [B, T, Hv]
 *     state    [S, Hv, Dv, Dk]     the pool of committed states, read and written; F32 or
 *                                  BF16 (rounded after every token, folded ones included, as
 *                                  gdn_gated_delta_net's BF16 state storage)
 *     state_index  [B] I32         sequence b owns pool slot state_index[b] and ring slot
 *                                  state_index[b]; every value in 0..S-1, no two equal
 *     ring_k   [S, L, Hk, Dk]      per-slot rings, read and written: the two factors of
 *     ring_v   [S, L, Hv, Dv]      each token's update (one ring_k entry per q/k head),
 *     ring_g   [S, L, Hv]          the decays
 *     fold     [B, 3] I32          per sequence {start, count, commit}: 0 <= start < L,
 *                                  count >= 0, count + T <= L (otherwise the append would
 *                                  overwrite tokens being folded)
 *     o        [B, T, Hv, Dv]      output, any strides
 * Requirements as for gdn_gated_delta_net (Dk = Dv in {16, ..., 256}, Hv a multiple of Hk,
 * T, B >= 1) and L >= T. params->n_snapshots is ignored (nothing but o, the committed states
 * and the rings is written).
 * Aliasing: o, the pool and the three rings are written; none of them may overlap another one or
 * an input (q, k, v, g, beta, state_index, fold), and each must be injective
 * (GDN_ERROR_OVERLAP). The index and fold values may be in memory the host cannot read, so the
 * backend checks them before writing anything: a value outside its range gives
 * GDN_ERROR_INVALID_ARGUMENT naming the position and the values, and nothing is written (on
 * CUDA this waits for the stream; while the stream is recorded a bad value still writes nothing
 * but is not reported), as for gdn_gated_delta_net's state_index.
 * Exactness: on one backend, o and every committed state are bit-identical to running
 * gdn_gated_delta_net one token per call (T = 1, in place: state == states[0]) over the same
 * token sequence. A sequence's results do not depend on B or on the other sequences.
 * Counters: counted as a gated_delta_net call (B states read, the index, the new tokens and o)
 * plus the fold array and the ring entries appended; the ring tokens folded and the states
 * committed depend on fold values the host may not be able to read, and are not counted. */
typedef struct gdn_gated_delta_net_replay_args {
    gdn_tensor q, k, v, g, beta;       /* the new tokens: inputs, borrowed */
    gdn_tensor state;                  /* committed-state pool: read and written, borrowed */
    gdn_tensor state_index;            /* input, borrowed */
    gdn_tensor ring_k, ring_v, ring_g; /* token rings (update factors, decay): read and written, borrowed */
    gdn_tensor fold;                   /* input, borrowed */
    gdn_tensor o;                      /* output, borrowed */
} gdn_gated_delta_net_replay_args;

/* Run the replay form on `backend`. Validates every shape, dtype, stride and overlap first, then
 * the index and fold values; on failure nothing has been written. */
gdn_status gdn_gated_delta_net_replay(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                      const gdn_gated_delta_net_replay_args *args);

/* ------------------------------------------------------------------------------------------
 * safetensors files
 *
 * Reader: the whole file is validated on open (header length, JSON syntax, dtypes, shapes
 * against byte counts, offsets inside the data section, no overlaps or holes, metadata as
 * strings); a malformed file gives GDN_ERROR_FORMAT and a detail naming the problem.
 * ------------------------------------------------------------------------------------------ */
typedef struct gdn_safetensors gdn_safetensors;

/* Read and validate a file. On success *out owns the contents; free with gdn_safetensors_free. */
gdn_status gdn_safetensors_open(gdn_safetensors **out, const char *path);

/* The same from memory: `bytes` is copied, so it may be freed after the call. */
gdn_status gdn_safetensors_parse(gdn_safetensors **out, const void *bytes, size_t n_bytes);

void gdn_safetensors_free(gdn_safetensors *file);

/* Number of tensors, and the name of tensor i (0 <= i < count; NULL otherwise). Names are owned
 * by the file object. */
int32_t gdn_safetensors_count(const gdn_safetensors *file);
const char *gdn_safetensors_name(const gdn_safetensors *file, int32_t index);

/* A contiguous view of the named tensor (shape converted to innermost-first ne). The data is
 * owned by the file object, aligned to 64 bytes, valid until gdn_safetensors_free.
 * GDN_ERROR_NOT_FOUND if no such tensor. */
gdn_status gdn_safetensors_get(const gdn_safetensors *file, const char *name, gdn_tensor *out);

/* Value of a __metadata__ key, or NULL if absent. Owned by the file object. */
const char *gdn_safetensors_metadata(const gdn_safetensors *file, const char *key);

/* Writer: collect tensors (copied at add time, from any strides) and metadata, then save. */
typedef struct gdn_safetensors_writer gdn_safetensors_writer;

gdn_status gdn_safetensors_writer_init(gdn_safetensors_writer **out);
void gdn_safetensors_writer_free(gdn_safetensors_writer *writer);

/* Copy tensor `t` (host memory, any strides) under `name`; duplicate names are rejected. */
gdn_status gdn_safetensors_writer_add(gdn_safetensors_writer *writer, const char *name, const gdn_tensor *t);

/* Set a __metadata__ string entry (replacing an earlier value of the same key). */
gdn_status gdn_safetensors_writer_set_metadata(gdn_safetensors_writer *writer, const char *key, const char *value);

/* Write the file. It is written to a temporary name beside `path` and renamed into place, so a
 * failure never leaves a partial file at `path`. */
gdn_status gdn_safetensors_writer_save(const gdn_safetensors_writer *writer, const char *path);

/* ---------------------------------------------------------------------------------------------
 * The recurrent-state cache for speculative decoding (DESIGN.md section 5)
 *
 * For every GDN layer: an SSM state pool and a conv-window pool with one slot per sequence.
 * Scheme snapshot: a slot keeps K = max_tokens state groups and
 * Kconv-1+K window columns. A step verifies T tokens of each of its sequences; the GDN op
 * writes the state after token T-1-s into group s and the whole conv input into the columns;
 * accept(seq, a) makes the next step read group T-a and the window at column a. Rollback moves
 * no data. The first token of a step is the one the previous step sampled: a >= 1.
 * The caller builds its graphs over the pools (gdn_cache_layer_pools) and reads, for the step
 * in progress, the per-sequence rows to read them at (gdn_cache_step_rows): device I32
 * tensors at fixed addresses, so graphs can be built once and reused across steps.
 * Not thread-safe: one cache, one thread at a time.
 * ------------------------------------------------------------------------------------------- */
typedef struct gdn_cache gdn_cache;

typedef enum gdn_cache_scheme {
    GDN_CACHE_SNAPSHOT = 0, /* K state groups per sequence, ggml-compatible order */
    GDN_CACHE_REPLAY = 1,   /* one committed state plus a ring of the latest tokens (their updates) */
} gdn_cache_scheme;

typedef struct gdn_cache_config {
    int32_t n_layers;      /* GDN layers, >= 1 */
    int32_t n_seqs;        /* sequence slots, >= 1 */
    int32_t max_tokens;    /* tokens per sequence per step (K of the snapshot scheme), >= 1 */
    int32_t n_k_heads, n_v_heads, head_dim; /* Hk, Hv (a multiple of Hk), D */
    int32_t conv_channels; /* C: 2*Hk*D + Hv*D in the Qwen models */
    int32_t conv_kernel;   /* Kconv, >= 2 */
    gdn_cache_scheme scheme;
    int32_t ring;          /* replay: tokens of history a sequence's ring keeps before its state
                              must be committed (L >= max_tokens; the ring holds L + max_tokens
                              entries, so a step can append while it folds); 0 for snapshot */
    gdn_dtype state_dtype; /* the state pool: GDN_DTYPE_F32 (0, the default) or GDN_DTYPE_BF16,
                              half the bytes, the state rounded after every token (see the GDN
                              op's state storage); windows and rings stay F32 */
} gdn_cache_config;

/* Backend bytes the cache needs for `config` (pools and step rows), for caller-supplied memory. */
gdn_status gdn_cache_memory_size(const gdn_cache_config *config, size_t *bytes);

/* Create a cache on `backend`. memory: NULL to allocate, or backend memory of memory_bytes
 * (at least gdn_cache_memory_size; 256-byte aligned), borrowed until gdn_cache_free. Every
 * slot starts free; pools start zero. On failure *out is NULL and nothing is allocated. */
gdn_status gdn_cache_init(gdn_backend *backend, const gdn_cache_config *config, void *memory, size_t memory_bytes,
                          gdn_cache **out);
void gdn_cache_free(gdn_cache *cache); /* NULL-safe; frees what init allocated */

/* A new sequence in a free slot, its state and window zero; *seq is its id (= its slot). */
gdn_status gdn_cache_seq_add(gdn_cache *cache, int32_t *seq);
/* Forget a sequence (its slot becomes free). */
gdn_status gdn_cache_seq_remove(gdn_cache *cache, int32_t seq);
/* Zero a sequence's state and window and drop a step not yet accepted. */
gdn_status gdn_cache_seq_reset(gdn_cache *cache, int32_t seq);

/* Replay: the state pool keeps one committed state per sequence; a step folds the tokens
 * accepted since the last commit (from the ring) into it, writes it back when the ring would
 * otherwise overflow (count + T > L), and appends its T tokens to the ring; accept(a) counts a
 * of them as history. With L = T the state is written back every step (2 states moved per
 * step); a longer ring writes it back less often.
 * Begin a step of n sequences with n_tokens[i] tokens each (1..max_tokens). The step runs
 * T = max n_tokens[i] tokens for every sequence (the graphs are built for that T, which
 * gdn_cache_step_rows reports): a sequence with fewer tokens fills the rest of its T positions
 * with padding (any finite inputs) after its own tokens; their outputs are not meant to be used
 * and accept() never keeps them. The sequences may be any set of distinct live sequences in any
 * order (their slots need not be consecutive: the step writes each one's slot through an index);
 * each must have accepted its previous step. Uploads the step rows. On any error the cache is
 * unchanged. */
gdn_status gdn_cache_step_begin(gdn_cache *cache, int32_t n, const int32_t *seqs, const int32_t *n_tokens);
/* Keep the first n_accepted (1..n_tokens of seq) tokens of seq's step in progress. On error
 * unchanged. */
gdn_status gdn_cache_accept(gdn_cache *cache, int32_t seq, int32_t n_accepted);

/* Where a sequence stands: tokens accepted so far, how many of them are in its committed state
 * (snapshot: all; replay: those folded and written back), and the T of a step not yet accepted. */
typedef struct gdn_cache_seq_info {
    int64_t tokens, committed;
    int32_t pending;
    int32_t commits; /* replay: 1 if the step in progress writes the state back (which the backend
                        counters cannot see: the fold values decide it on the device) */
} gdn_cache_seq_info;
gdn_status gdn_cache_seq_info_get(const gdn_cache *cache, int32_t seq, gdn_cache_seq_info *info);

/* Replay scheme: layer l's rings (the update factors k {D, Hk, L+K, n_seqs} and v {D, Hv, L+K,
 * n_seqs}, the decays {Hv, L+K, n_seqs}) and the step's fold array ([n][3] I32 {start, count,
 * commit}), the gdn_gated_delta_net_replay arguments. The state pool has one group (K = 1 in its
 * shape). */
gdn_status gdn_cache_layer_rings(const gdn_cache *cache, int32_t layer, gdn_tensor *ring_k, gdn_tensor *ring_v,
                                 gdn_tensor *ring_g);
gdn_status gdn_cache_step_fold(const gdn_cache *cache, gdn_tensor *fold);

/* Layer l's pools: states ne {D, D, Hv, K, n_seqs} (config.state_dtype) and conv ne {C, Kconv-1+K,
 * n_seqs} F32. */
gdn_status gdn_cache_layer_pools(const gdn_cache *cache, int32_t layer, gdn_tensor *states, gdn_tensor *conv);
/* The step in progress: state_rows [n] (row = slot*K + group of the states seen as rows of one
 * state), conv_rows [n] (column = slot*(Kconv-1+K) + offset of the conv pool seen as columns),
 * slots [n] (the slot sequence i writes: seqs[i] of the step), I32 device tensors; *n_tokens =
 * the step's T (the most tokens of any of its sequences). */
gdn_status gdn_cache_step_rows(const gdn_cache *cache, gdn_tensor *state_rows, gdn_tensor *conv_rows,
                               gdn_tensor *slots, int32_t *n_tokens);

#ifdef __cplusplus
}
#endif
#endif /* GDN_H */
