/* graph.h: a small compute graph of op calls over tensor views, its planner and executor, and
 * the rewrites (passes) that let an op write straight into its consumer's destination.
 * Internal for now; the public API will wrap it once the GDN block builder exists.
 *
 * Model. A graph holds tensors and nodes, in insertion order (that order is the execution order,
 * so a graph cannot contain a cycle: a node may only read tensors that exist when it is added,
 * and reading one that nothing has written yet, and that is not a leaf, is an error).
 *   - leaf tensors: caller memory (inputs, weights, caches), given as a gdn_tensor view;
 *     flags say whether a leaf is an input or persistent (a cache pool: written in place);
 *   - intermediate tensors: dtype and counts only; the planner gives them memory;
 *   - views: offset, counts and byte strides into another tensor (a leaf, an intermediate or a
 *     view), checked to stay inside it;
 *   - nodes: an op kind, typed params, source tensor ids and destination tensor ids. A
 *     destination is any tensor: a fresh intermediate, or a view of a persistent leaf (a copy
 *     into a cache slot).
 * Every node is validated when added, with gdn_op_check on stand-in addresses that preserve
 * which views share memory, so overlap rules hold at build time; nothing runs half-way. */
#ifndef GDN_GRAPH_H
#define GDN_GRAPH_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t gdn_tensor_id;

enum {
    GDN_GRAPH_INPUT = 1u << 0,      /* a leaf the caller fills before compute */
    GDN_GRAPH_PERSISTENT = 1u << 1, /* a leaf that outlives the step (a cache pool, weights) */
    GDN_GRAPH_OUTPUT = 1u << 2,     /* read by the caller after compute: never rewritten away */
    /* An I32 index leaf whose entry b names a slot that, among the sequences of the step, only
     * sequence b writes (a promise of whoever maps sequences to cache slots). Gather elision
     * forwards an index into a pool that its reader also writes only when the index carries
     * this flag; the GDN op still checks the promise when it runs and writes nothing if it is
     * broken. Without the flag the gather stays and any slot mapping works. */
    GDN_GRAPH_OWN_SLOT_INDEX = 1u << 3,
};

typedef struct gdn_graph gdn_graph;

/* Create an empty graph. *out owns it; free with gdn_graph_free, before the backend it was
 * last computed on (its intermediate memory belongs to that backend). */
gdn_status gdn_graph_init(gdn_graph **out);
void gdn_graph_free(gdn_graph *graph);

/* A leaf over caller memory (host memory for the CPU backend, device memory for CUDA), valid
 * for as long as the graph is computed. `name` is copied (for messages). */
gdn_status gdn_graph_leaf(gdn_graph *graph, const char *name, const gdn_tensor *view, uint32_t flags,
                          gdn_tensor_id *id);

/* A contiguous intermediate of `dtype` and counts ne[0..n_dims). */
gdn_status gdn_graph_intermediate(gdn_graph *graph, const char *name, gdn_dtype dtype, int32_t n_dims,
                                  const int64_t *ne, gdn_tensor_id *id);

/* A view of tensor `base` starting `offset` bytes into it, with counts ne and byte strides nb
 * (n_dims of each); GDN_ERROR_SHAPE if any element would fall outside `base`'s bytes. */
gdn_status gdn_graph_view(gdn_graph *graph, gdn_tensor_id base, size_t offset, int32_t n_dims,
                          const int64_t *ne, const size_t *nb, gdn_tensor_id *id);

/* Mark a tensor as read by the caller after compute. */
gdn_status gdn_graph_mark_output(gdn_graph *graph, gdn_tensor_id id);

/* Append a node. Sources and destinations in the order ops.h gives for the kind. Validated
 * now; on failure the graph is unchanged and the detail names the node and the problem. */
gdn_status gdn_graph_op(gdn_graph *graph, gdn_op_kind kind, const gdn_op_params *params, int32_t n_src,
                        const gdn_tensor_id *src, int32_t n_dst, const gdn_tensor_id *dst);

/* Counts, for tests and the bench. */
typedef struct gdn_graph_stats {
    int32_t n_nodes;             /* nodes that will run */
    int32_t n_copies;            /* of which CPY and SET_ROWS nodes */
    int32_t n_gathers;           /* of which GET_ROWS nodes */
    int32_t nodes_removed;       /* by passes so far */
    size_t bytes_saved;          /* bytes the removed nodes would have read plus written */
    size_t intermediate_bytes;   /* memory the planner needs for intermediates */
} gdn_graph_stats;
void gdn_graph_get_stats(const gdn_graph *graph, gdn_graph_stats *stats);

/* Copy elision (DESIGN.md section 4): for every CPY node C whose source is a whole
 * intermediate T, written by node N as its destination d and read by nothing but C, rewrite N
 * to write d straight into C's destination view D and remove C. Legal only when: T is not an
 * output; N's traits declare strided_dst for d; dtypes and counts match; D overlaps no source
 * of N (except an alias N's traits allow) and no source or destination of any node between N
 * and C; and the rewritten node passes gdn_op_check. Each refusal is logged with its reason
 * through `log` (may be NULL), e.g. "copy elision: node 7 (cpy) kept: t12 has 2 readers".
 * Results are bit-identical with and without the pass (the op computes the same values; only
 * where they land changes). */
typedef void (*gdn_graph_log_fn)(void *user, const char *message);
gdn_status gdn_graph_pass_copy_elision(gdn_graph *graph, gdn_graph_log_fn log, void *user);

/* Gather elision (DESIGN.md section 4, the input side): for every GET_ROWS node G that gathers
 * rows of a table A (ne = {row, R}) by an index into a whole intermediate T, read by nothing but
 * one node N as its source s, where N's traits declare indexed_src bit s and N has no index yet:
 * rewrite N to read a view of A (N's view of T with the row dimension widened to all R rows of
 * A, strides from A's) through G's index as its extra last source, and remove G. Legal only
 * when: T is not an output; N's view of T is a whole reshape of T whose outer dimension is T's
 * rows; dtypes match (A is not converted); no node between G and N writes A or the index; and
 * the rewritten node passes gdn_op_check (for the GDN op: the pool overlaps no output). Each
 * refusal is logged with its reason, e.g. "gather elision: node 2 (get_rows) kept: t9 has 2
 * readers"; with no log callback, GDN_LOG_PASSES=1 prints to stderr. Results are bit-identical
 * with and without the pass (get_rows copies bits; N reads the same floats from A). */
gdn_status gdn_graph_pass_gather_elision(gdn_graph *graph, gdn_graph_log_fn log, void *user);

/* Run every node in order on `backend`: intermediates get backend memory (allocated on the
 * first compute, reused by later computes of the same graph), then each node's op call is
 * resolved to concrete views and run. A node the backend cannot run fails before anything runs
 * (every node is asked first). */
gdn_status gdn_graph_compute(gdn_graph *graph, gdn_backend *backend);

/* The concrete view of a tensor after compute has planned memory (for reading intermediates
 * that are outputs). GDN_ERROR_INVALID_ARGUMENT before the first compute. */
gdn_status gdn_graph_tensor_view(const gdn_graph *graph, gdn_tensor_id id, gdn_tensor *view);

#ifdef __cplusplus
}
#endif
#endif
