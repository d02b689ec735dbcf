/* graph_internal.h: the graph's storage, shared by graph.c (building and validation),
 * graph_plan.c (memory planning and compute) and passes/copy_elision.c. Not installed; the
 * interface is graph.h. */
#ifndef GDN_GRAPH_INTERNAL_H
#define GDN_GRAPH_INTERNAL_H

#include "graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gdn_graph_tensor_kind {
    GDN_GRAPH_TENSOR_LEAF,
    GDN_GRAPH_TENSOR_INTERMEDIATE,
    GDN_GRAPH_TENSOR_VIEW,
} gdn_graph_tensor_kind;

/* Stand-in addresses: root r starts at (r + 1) << 40, so views of one root share addresses and
 * views of different roots never do; a root may therefore hold at most 2^40 bytes. */
#define GDN_GRAPH_ROOT_SHIFT 40

typedef struct gdn_graph_tensor {
    gdn_graph_tensor_kind kind;
    char name[48];
    uint32_t flags;     /* GDN_GRAPH_INPUT / PERSISTENT / OUTPUT */
    gdn_tensor view;    /* dtype, counts, strides; data: the caller's pointer for a leaf, else NULL */
    gdn_tensor_id root; /* the leaf or intermediate that holds the bytes (itself for a root) */
    size_t offset;      /* bytes from the root's first byte to this tensor's first element */
    size_t bytes;       /* span in bytes from the first element (gdn_tensor_span) */
} gdn_graph_tensor;

typedef struct gdn_graph_node {
    gdn_op_kind kind;
    gdn_op_params params;
    int32_t n_src, n_dst;
    gdn_tensor_id src[GDN_OP_MAX_SRC];
    gdn_tensor_id dst[GDN_OP_MAX_DST];
    int64_t tee_offset[GDN_MAX_DIMS]; /* with a tee added by copy elision (gdn_op_call's) */
    int32_t indexed_dst;              /* set by scatter elision (gdn_op_call's) */
    int removed; /* by a pass: never runs */
} gdn_graph_node;

struct gdn_graph {
    gdn_graph_tensor *tensors;
    int32_t n_tensors, cap_tensors;
    gdn_graph_node *nodes;
    int32_t n_nodes, cap_nodes;
    int32_t nodes_removed;
    size_t bytes_saved;
    /* The plan (graph_plan.c): valid while `planned`; the arena belongs to `backend`. */
    int planned;
    gdn_backend *backend;
    void *arena;
    size_t arena_bytes;
    size_t *root_offset;      /* per tensor id < plan_n_tensors: arena offset, SIZE_MAX if none */
    int32_t plan_n_tensors;
};

/* The stand-in view of tensor `id` (never dereferenced): see GDN_GRAPH_ROOT_SHIFT. */
gdn_tensor gdn_graph_stand_in(const gdn_graph *graph, gdn_tensor_id id);

/* 1 if tensors a and b share a root and their stand-in byte ranges intersect. */
int gdn_graph_tensors_overlap(const gdn_graph *graph, gdn_tensor_id a, gdn_tensor_id b);

/* Use count: node sources (of nodes not removed) that read any byte of tensor `id`. */
int32_t gdn_graph_count_readers(const gdn_graph *graph, gdn_tensor_id id);

/* 1 if `id` or any tensor sharing bytes with it is marked GDN_GRAPH_OUTPUT. */
int gdn_graph_is_output(const gdn_graph *graph, gdn_tensor_id id);

/* The op call of a node over stand-in views (for gdn_op_check at build time and in passes). */
void gdn_graph_stand_in_call(const gdn_graph *graph, const gdn_graph_node *node, gdn_op_call *call);

/* The plan no longer matches the graph: the next compute re-plans (the arena is kept until then). */
void gdn_graph_invalidate_plan(gdn_graph *graph);

/* 1 if node `prev` (-1: work queued before the graph, unknown) writes nothing that the GDN
 * node `node` lets CUDA read before the previous kernel ends: its state source and index, and
 * replay's rings and fold array (the state_ready hint, include/gdn.h; graph_plan.c). */
int gdn_graph_state_ready(const gdn_graph *graph, int32_t prev, int32_t node);

/* Release the arena (graph_plan.c). */
void gdn_graph_release_plan(gdn_graph *graph);

/* Copy elision with a traits table other than ops.c's (tests: an op that lacks strided_dst). */
typedef const gdn_op_traits *(*gdn_graph_traits_fn)(gdn_op_kind kind);
gdn_status gdn_graph_pass_copy_elision_with(gdn_graph *graph, gdn_graph_traits_fn traits_of,
                                            gdn_graph_log_fn log, void *user);

#ifdef __cplusplus
}
#endif
#endif
