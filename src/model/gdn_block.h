/* gdn_block.h: the Gated DeltaNet block of a Qwen3-Next / Qwen3.5 / Qwen3.6 layer built as a
 * compute graph (src/core/graph.h) in llama.cpp's pattern: the baseline, with its gather and its
 * cache copies, that the graph passes must improve. Also its synthetic weights and the
 * recurrent cache of one layer. Internal for now (the model layer of DESIGN.md section 3). */
#ifndef GDN_MODEL_BLOCK_H
#define GDN_MODEL_BLOCK_H

#include "../core/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes of one GDN block. D = Dk = Dv. Derived sizes (see the gdn_block_*_dim helpers):
 *   qkvz_dim = 2*Hk*D + 2*Hv*D   in_proj_qkvz output: [q (Hk*D) | k (Hk*D) | v (Hv*D) | z (Hv*D)]
 *   ba_dim   = 2*Hv              in_proj_ba output:   [b (Hv) | a (Hv)]
 *   conv_dim = 2*Hk*D + Hv*D     channels of the short convolution: q, k, v
 * The flat split (all q heads, then all k heads, ...) is Qwen3.5/3.6's (in_proj_qkv and
 * in_proj_z side by side); Qwen3-Next's checkpoints group them per k head, which a loader
 * reorders once, so the graph stays the same. */
typedef struct gdn_block_config {
    int64_t hidden;          /* model width */
    int64_t n_k_heads;       /* Hk */
    int64_t n_v_heads;       /* Hv, a multiple of Hk */
    int64_t head_dim;        /* D: 16, 32, 64, 128 or 256 (the GDN op's sizes) */
    int64_t conv_kernel;     /* Kconv (4 in the Qwen models), >= 2 */
    float rms_eps;           /* of the gated rms norm (1e-6 in the Qwen models) */
    int32_t n_snapshots;     /* K: state groups per cache slot (draft length + 1) */
    gdn_broadcast broadcast; /* tiled for ggml/GGUF weights */
    gdn_dtype weight_dtype;  /* F32 or BF16: the three projections; conv, norm, gates stay F32 */
    int32_t rollback;        /* 0: llama.cpp's cache (Kconv-1 window columns per slot, the state
                                read from group 0); 1: a cache that can roll back to any token
                                of a step: Kconv-1+K window columns per slot, and the state and
                                window read at per-sequence positions (gdn_block_build_rollback) */
    gdn_dtype state_dtype;   /* the state pool: F32 (0, the default) or BF16 (the GDN op rounds the
                                state after every token: include/gdn.h); the conv window stays F32 */
    int32_t fused_gates;     /* 0: llama.cpp's chain of six gate nodes (the default); 1: one
                                gdn_gates node computing the same floats in one launch */
    int32_t l2norm_in_op;    /* 0: q and k L2-normalised by two l2_norm nodes (llama.cpp's pattern,
                                the default); 1: by the GDN op itself (params.l2norm), two nodes
                                fewer; the op's form rounds differently, so the outputs differ in
                                the last bits from the default's */
} gdn_block_config;

/* hidden 2048, Hk 16, Hv 32, D 128, Kconv 4, eps 1e-6, K 4, tiled, BF16: Qwen3.6-35B-A3B. */
gdn_block_config gdn_block_config_default(void);

/* GDN_OK if the sizes are usable, else GDN_ERROR_INVALID_ARGUMENT / SHAPE with a detail. */
gdn_status gdn_block_config_check(const gdn_block_config *config);

int64_t gdn_block_qkvz_dim(const gdn_block_config *config);
int64_t gdn_block_conv_dim(const gdn_block_config *config);

/* Weights of one block in one backend allocation. Shapes outermost first (ne innermost first):
 *   in_proj_qkvz [qkvz_dim, hidden]    ne {hidden, qkvz_dim}    weight_dtype
 *   in_proj_ba   [2*Hv, hidden]        ne {hidden, 2*Hv}        weight_dtype
 *   conv1d       [conv_dim, Kconv]     ne {Kconv, conv_dim}     F32
 *   dt_bias      [Hv]                                           F32
 *   A_log        [Hv]                                           F32
 *   norm         [D]                   gated rms norm weight    F32
 *   out_proj     [hidden, Hv*D]        ne {Hv*D, hidden}        weight_dtype
 * The views borrow `memory`, owned by the struct until gdn_block_weights_free. */
typedef struct gdn_block_weights {
    gdn_block_config config;
    gdn_backend *backend;
    void *memory;
    gdn_tensor in_proj_qkvz, in_proj_ba, conv1d, dt_bias, A_log, norm, out_proj;
} gdn_block_weights;

/* Synthetic weights from `seed`, in realistic ranges: the matrices ~ N(0, 1/sqrt(fan_in))
 * (conv1d: fan_in = Kconv), A_log = log(uniform(1, 16)), dt_bias ~ uniform(-0.2, 0.2), norm ~
 * 1 + N(0, 0.05). The same seed gives the same values (and bits) on every machine. `backend`
 * must outlive the weights. On failure nothing is left allocated. */
gdn_status gdn_block_weights_init(gdn_block_weights *weights, gdn_backend *backend, const gdn_block_config *config,
                                  uint64_t seed);
void gdn_block_weights_free(gdn_block_weights *weights); /* zeroes the struct; NULL-safe */

/* The recurrent cache of one layer for S sequence slots, in backend memory (states of the
 * config's state_dtype, conv F32):
 *   states  [S][K][Hv][D][D]     ne {D, D, Hv, K, S}     group s of a slot = the state s tokens
 *                                before the last one the slot saw ([Dv][Dk], Dk contiguous):
 *                                ggml's layout, so a state pool interoperates with llama.cpp's.
 *   conv    [S][Kconv-1][conv_dim]  ne {conv_dim, Kconv-1, S}  the last Kconv-1 input columns
 *                                (q, k, v channels before the conv) of each slot, oldest first.
 * Why the conv window is time-outer, channel-inner (ggml keeps [S][conv_dim][Kconv-1]): the
 * columns arrive channel-inner (rows of in_proj's output) and ssm_conv writes channel-inner, so
 * every column of the window is one contiguous conv_dim row: coalesced on CUDA (threads run over
 * channels), and the window of DESIGN.md section 5 (Kconv-1+T columns, accept moves an offset)
 * moves by whole rows. The update is still one strided copy for any B: the last Kconv-1 time
 * columns of the conv input [B][conv_dim][Kconv-1+T] (time innermost, as ssm_conv reads it)
 * land transposed in the pool view {Kconv-1 at stride conv_dim*4, conv_dim at stride 4, B at
 * the slot stride}. Views borrow the two allocations, owned until gdn_block_cache_free. */
/* With config.rollback the conv pool holds Kconv-1+K columns per slot (ne {conv_dim,
 * Kconv-1+K, S}): a step writes its whole conv input there (window then the T new columns), and
 * after a accepted tokens the window is columns a .. a+Kconv-2: rollback moves an offset. */
typedef struct gdn_block_cache {
    gdn_block_config config;
    gdn_backend *backend;
    int64_t n_slots;
    void *state_memory, *conv_memory;
    gdn_tensor states, conv;
    gdn_tensor ring_k, ring_v, ring_g; /* a replay cache's rings: k, delta, g (data NULL otherwise) */
} gdn_block_cache;

/* A zero-filled cache of `n_slots` slots (a fresh sequence starts from zero state and window). */
gdn_status gdn_block_cache_init(gdn_block_cache *cache, gdn_backend *backend, const gdn_block_config *config,
                                int64_t n_slots);
void gdn_block_cache_free(gdn_block_cache *cache); /* zeroes the struct; NULL-safe */

/* A cache struct over pools someone else owns (a gdn_cache layer's, gdn_cache_layer_pools):
 * views only, nothing allocated; gdn_block_cache_free on it frees nothing. The pools must have
 * the shapes above for `config` (rollback: Kconv-1+K columns). */
gdn_status gdn_block_cache_borrow(gdn_block_cache *cache, gdn_backend *backend, const gdn_block_config *config,
                                  const gdn_tensor *states, const gdn_tensor *conv);
/* A replay cache (gdn_cache with GDN_CACHE_REPLAY): the same, with one state group per slot, and
 * the rings (gdn_cache_layer_rings). */
gdn_status gdn_block_cache_borrow_replay(gdn_block_cache *cache, gdn_backend *backend, const gdn_block_config *config,
                                         const gdn_tensor *states, const gdn_tensor *conv, const gdn_tensor *rings);

/* Fill both pools from `seed` as if some tokens had been seen: states ~ N(0, 0.1), conv window
 * ~ N(0, 1). For tests and benches. Synchronous. */
gdn_status gdn_block_cache_randomize(gdn_block_cache *cache, uint64_t seed);

/* Copy every byte of `src`'s pools into `dst` (same config, slot count and backend).
 * Synchronous. */
gdn_status gdn_block_cache_copy(gdn_block_cache *dst, const gdn_block_cache *src);

/* One step of the block, added to `graph` (decode: T = 1; verify: T > 1), for B sequences:
 *   x           a tensor of `graph`, [B, T, hidden] F32 (ne {hidden, T, B}, any layout the
 *               mul_mat accepts): the block's input (the layer's normed hidden states);
 *   slot_index  a tensor of `graph`, [B] I32: sequence b reads cache slot slot_index[b];
 *   first_slot  sequence b writes slot first_slot + b (llama.cpp's consecutive kv_head slots),
 *               so [first_slot, first_slot + B) must lie inside the cache.
 * Adds leaves for the weights (read-only) and for the cache pools (persistent), then the nodes
 * listed in gdn_block.c; *out gets the block output [B, T, hidden] F32 (ne {hidden, T, B}),
 * marked as a graph output. A cache must be built into a graph at most once (two leaves over
 * the same memory would hide their overlap from the passes). The graph reads the weights and
 * the cache through borrowed pointers: they must outlive its computes. On failure the status
 * and a detail naming the node; nodes added before the failure stay in the graph, which the
 * caller should then free. */
gdn_status gdn_block_build(gdn_graph *graph, const gdn_block_config *config, const gdn_block_weights *weights,
                           const gdn_block_cache *cache, gdn_tensor_id x, int64_t n_seqs, int64_t n_tokens,
                           gdn_tensor_id slot_index, int64_t first_slot, gdn_tensor_id *out);

/* The same step over a rollback cache (config.rollback = 1, T <= K), for speculative decoding:
 *   state_row   [B] I32: sequence b reads its state from group row state_row[b] of the state
 *               pool seen as S*K rows of one state (row = slot * K + group);
 *   conv_row    [B] I32: and its window from column conv_row[b] on of the conv pool seen as
 *               columns (column = slot * (Kconv-1+K) + offset);
 *   slots       [B] I32: sequence b writes slot slots[b] (distinct values, any order: the cache's
 *               step slots): snapshot s (the state after token T-1-s) into group s, and its
 *               whole conv input into columns 0 .. Kconv-2+T.
 * So after a step whose first a tokens are accepted, the next one reads group T-a and column
 * offset a: no data moves. The nodes are llama.cpp's gathers and GDN op, with SET_ROWS scatters
 * into the slots where llama.cpp copies into consecutive ones; with both passes and the read
 * indices declared GDN_GRAPH_OWN_SLOT_INDEX, none of the gathers and scatters stays. */
/* The same step over a replay cache (borrowed with gdn_block_cache_borrow_replay): the GDN op
 * is the replay form (gdn_gated_delta_net_replay) reading sequence b's committed state from slot
 * state_index[b] and the ring tokens to fold from `fold` [B][3]; no snapshot is written. The conv
 * window is handled as in gdn_block_build_rollback (conv_row). */
gdn_status gdn_block_build_replay(gdn_graph *graph, const gdn_block_config *config, const gdn_block_weights *weights,
                                  const gdn_block_cache *cache, gdn_tensor_id x, int64_t n_seqs, int64_t n_tokens,
                                  gdn_tensor_id state_index, gdn_tensor_id conv_row, gdn_tensor_id fold,
                                  gdn_tensor_id slots, gdn_tensor_id *out);

gdn_status gdn_block_build_rollback(gdn_graph *graph, const gdn_block_config *config, const gdn_block_weights *weights,
                                    const gdn_block_cache *cache, gdn_tensor_id x, int64_t n_seqs, int64_t n_tokens,
                                    gdn_tensor_id state_row, gdn_tensor_id conv_row, gdn_tensor_id slots,
                                    gdn_tensor_id *out);

#ifdef __cplusplus
}
#endif
#endif
