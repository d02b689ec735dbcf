/* graph.c: building a graph (graph.h): leaves, intermediates and views, each placed on a root
 * and a byte offset, and nodes validated when added with gdn_op_check over stand-in addresses,
 * so that overlap rules hold at build time. Planning and compute live in graph_plan.c. */
#include "graph_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GDN_GRAPH_MAX_TENSORS (1 << 20) /* keeps (root + 1) << 40 inside 64 bits */
#define GDN_GRAPH_ROOT_LIMIT ((size_t)1 << GDN_GRAPH_ROOT_SHIFT)

gdn_status gdn_graph_init(gdn_graph **out)
{
    gdn_clear_error();
    if (out == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_init: NULL out");
    *out = calloc(1, sizeof **out);
    if (*out == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "graph_init: cannot allocate the graph");
    return GDN_OK;
}

void gdn_graph_free(gdn_graph *graph)
{
    if (graph == NULL)
        return;
    gdn_graph_release_plan(graph);
    free(graph->tensors);
    free(graph->nodes);
    free(graph);
}

static int valid_id(const gdn_graph *graph, gdn_tensor_id id)
{
    return id >= 0 && id < graph->n_tensors;
}

/* Span in bytes of a view with counts ne and strides nb, overflow-checked; 0 on overflow. */
static int checked_span(gdn_dtype dtype, const int64_t *ne, const size_t *nb, size_t *span)
{
    size_t last = 0, step;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (!gdn_size_mul((size_t)(ne[i] - 1), nb[i], &step) || !gdn_size_add(last, step, &last))
            return 0;
    return gdn_size_add(last, gdn_dtype_size(dtype), span);
}

/* Counts and dims well formed: 1..GDN_MAX_DIMS dims, counts >= 1, 1 beyond n_dims. */
static gdn_status check_counts(const char *what, const char *name, int32_t n_dims, const int64_t *ne)
{
    if (n_dims < 1 || n_dims > GDN_MAX_DIMS)
        return gdn_fail(GDN_ERROR_SHAPE, "%s '%s': n_dims=%d, expected 1..%d", what, name, (int)n_dims, GDN_MAX_DIMS);
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if ((i < n_dims && ne[i] < 1) || (i >= n_dims && ne[i] != 1))
            return gdn_fail(GDN_ERROR_SHAPE, "%s '%s': ne[%d]=%lld with n_dims=%d (counts are >= 1, and 1 "
                            "beyond n_dims)", what, name, i, (long long)ne[i], (int)n_dims);
    return GDN_OK;
}

/* Append a tensor; its id is the index. */
static gdn_status push_tensor(gdn_graph *graph, const gdn_graph_tensor *t, gdn_tensor_id *id)
{
    if (graph->n_tensors >= GDN_GRAPH_MAX_TENSORS)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph: more than %d tensors", GDN_GRAPH_MAX_TENSORS);
    if (graph->n_tensors == graph->cap_tensors) {
        int32_t cap = graph->cap_tensors ? 2 * graph->cap_tensors : 16;
        gdn_graph_tensor *grown = realloc(graph->tensors, (size_t)cap * sizeof *grown);
        if (grown == NULL)
            return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "graph: cannot grow the tensor list");
        graph->tensors = grown;
        graph->cap_tensors = cap;
    }
    gdn_graph_tensor *slot = &graph->tensors[graph->n_tensors];
    *slot = *t;
    if (t->kind != GDN_GRAPH_TENSOR_VIEW)
        slot->root = graph->n_tensors;
    *id = graph->n_tensors++;
    return GDN_OK;
}

gdn_status gdn_graph_leaf(gdn_graph *graph, const char *name, const gdn_tensor *view, uint32_t flags,
                          gdn_tensor_id *id)
{
    gdn_clear_error();
    if (graph == NULL || view == NULL || id == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_leaf: NULL argument");
    gdn_graph_tensor t;
    memset(&t, 0, sizeof t);
    t.kind = GDN_GRAPH_TENSOR_LEAF;
    snprintf(t.name, sizeof t.name, "%s", name ? name : "leaf");
    if (flags & ~(uint32_t)(GDN_GRAPH_INPUT | GDN_GRAPH_PERSISTENT | GDN_GRAPH_OUTPUT | GDN_GRAPH_OWN_SLOT_INDEX))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_leaf '%s': unknown flags 0x%x", t.name, (unsigned)flags);
    if (view->data == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_leaf '%s': no data pointer", t.name);
    if ((int)view->dtype < 0 || view->dtype >= GDN_DTYPE_COUNT)
        return gdn_fail(GDN_ERROR_TYPE, "graph_leaf '%s': unknown dtype %d", t.name, (int)view->dtype);
    gdn_status st = check_counts("graph_leaf", t.name, view->n_dims, view->ne);
    if (st != GDN_OK)
        return st;
    if (!checked_span(view->dtype, view->ne, view->nb, &t.bytes) || t.bytes >= GDN_GRAPH_ROOT_LIMIT)
        return gdn_fail(GDN_ERROR_SHAPE, "graph_leaf '%s': spans 2^40 bytes or more", t.name);
    t.flags = flags;
    t.view = *view;
    return push_tensor(graph, &t, id);
}

gdn_status gdn_graph_intermediate(gdn_graph *graph, const char *name, gdn_dtype dtype, int32_t n_dims,
                                  const int64_t *ne, gdn_tensor_id *id)
{
    gdn_clear_error();
    if (graph == NULL || ne == NULL || id == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_intermediate: NULL argument");
    gdn_graph_tensor t;
    memset(&t, 0, sizeof t);
    t.kind = GDN_GRAPH_TENSOR_INTERMEDIATE;
    snprintf(t.name, sizeof t.name, "%s", name ? name : "intermediate");
    if ((int)dtype < 0 || dtype >= GDN_DTYPE_COUNT)
        return gdn_fail(GDN_ERROR_TYPE, "graph_intermediate '%s': unknown dtype %d", t.name, (int)dtype);
    int64_t full[GDN_MAX_DIMS];
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        full[i] = n_dims >= 1 && i < n_dims && n_dims <= GDN_MAX_DIMS ? ne[i] : 1;
    gdn_status st = check_counts("graph_intermediate", t.name, n_dims, full);
    if (st != GDN_OK)
        return st;
    t.view = gdn_tensor_contiguous(NULL, dtype, n_dims, full);
    size_t elements = 1;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (!gdn_size_mul(elements, (size_t)full[i], &elements))
            return gdn_fail(GDN_ERROR_SHAPE, "graph_intermediate '%s': size overflows", t.name);
    if (!gdn_size_mul(elements, gdn_dtype_size(dtype), &t.bytes) || t.bytes >= GDN_GRAPH_ROOT_LIMIT)
        return gdn_fail(GDN_ERROR_SHAPE, "graph_intermediate '%s': 2^40 bytes or more", t.name);
    return push_tensor(graph, &t, id);
}

gdn_status gdn_graph_view(gdn_graph *graph, gdn_tensor_id base, size_t offset, int32_t n_dims,
                          const int64_t *ne, const size_t *nb, gdn_tensor_id *id)
{
    gdn_clear_error();
    if (graph == NULL || ne == NULL || nb == NULL || id == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_view: NULL argument");
    if (!valid_id(graph, base))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_view: unknown base tensor id %d", (int)base);
    const gdn_graph_tensor *b = &graph->tensors[base];
    gdn_graph_tensor t;
    memset(&t, 0, sizeof t);
    t.kind = GDN_GRAPH_TENSOR_VIEW;
    snprintf(t.name, sizeof t.name, "%.40s.view", b->name);
    int64_t full_ne[GDN_MAX_DIMS];
    size_t full_nb[GDN_MAX_DIMS];
    const int dims_ok = n_dims >= 1 && n_dims <= GDN_MAX_DIMS;
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        full_ne[i] = dims_ok && i < n_dims ? ne[i] : 1;
        full_nb[i] = dims_ok && i < n_dims ? nb[i] : 0;
    }
    gdn_status st = check_counts("graph_view of", b->name, n_dims, full_ne);
    if (st != GDN_OK)
        return st;
    /* Strides beyond n_dims: one past the outermost extent, as a contiguous view would have. */
    size_t span = 0;
    if (!checked_span(b->view.dtype, full_ne, full_nb, &span))
        return gdn_fail(GDN_ERROR_SHAPE, "graph_view of t%d '%s': its extent overflows", (int)base, b->name);
    for (int i = n_dims; i < GDN_MAX_DIMS; i++)
        full_nb[i] = span;
    size_t end;
    if (!gdn_size_add(offset, span, &end) || end > b->bytes)
        return gdn_fail(GDN_ERROR_SHAPE, "graph_view of t%d '%s': offset %zu + extent %zu bytes reaches past "
                        "its %zu bytes", (int)base, b->name, offset, span, b->bytes);
    t.view.dtype = b->view.dtype;
    t.view.n_dims = n_dims;
    memcpy(t.view.ne, full_ne, sizeof full_ne);
    memcpy(t.view.nb, full_nb, sizeof full_nb);
    t.root = b->root;
    t.offset = b->offset + offset;
    t.bytes = span;
    return push_tensor(graph, &t, id);
}

gdn_status gdn_graph_mark_output(gdn_graph *graph, gdn_tensor_id id)
{
    gdn_clear_error();
    if (graph == NULL || !valid_id(graph, id))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_mark_output: unknown tensor id %d", (int)id);
    graph->tensors[id].flags |= GDN_GRAPH_OUTPUT;
    gdn_graph_invalidate_plan(graph); /* an output lives to the end: liveness changes */
    return GDN_OK;
}

gdn_tensor gdn_graph_stand_in(const gdn_graph *graph, gdn_tensor_id id)
{
    const gdn_graph_tensor *t = &graph->tensors[id];
    gdn_tensor v = t->view;
    const uint64_t base = (uint64_t)(t->root + 1) << GDN_GRAPH_ROOT_SHIFT;
    v.data = (void *)(uintptr_t)(base + t->offset);
    return v;
}

int gdn_graph_tensors_overlap(const gdn_graph *graph, gdn_tensor_id a, gdn_tensor_id b)
{
    if (graph->tensors[a].root != graph->tensors[b].root)
        return 0;
    gdn_tensor va = gdn_graph_stand_in(graph, a), vb = gdn_graph_stand_in(graph, b);
    return gdn_tensor_ranges_overlap(&va, &vb);
}

int32_t gdn_graph_count_readers(const gdn_graph *graph, gdn_tensor_id id)
{
    int32_t readers = 0;
    for (int32_t n = 0; n < graph->n_nodes; n++) {
        const gdn_graph_node *node = &graph->nodes[n];
        for (int s = 0; !node->removed && s < node->n_src; s++)
            readers += gdn_graph_tensors_overlap(graph, node->src[s], id);
    }
    return readers;
}

int gdn_graph_is_output(const gdn_graph *graph, gdn_tensor_id id)
{
    for (int32_t t = 0; t < graph->n_tensors; t++)
        if ((graph->tensors[t].flags & GDN_GRAPH_OUTPUT) && gdn_graph_tensors_overlap(graph, t, id))
            return 1;
    return 0;
}

void gdn_graph_stand_in_call(const gdn_graph *graph, const gdn_graph_node *node, gdn_op_call *call)
{
    memset(call, 0, sizeof *call);
    call->kind = node->kind;
    call->params = node->params;
    call->n_src = node->n_src;
    call->n_dst = node->n_dst;
    for (int s = 0; s < node->n_src; s++)
        call->src[s] = gdn_graph_stand_in(graph, node->src[s]);
    for (int d = 0; d < node->n_dst; d++)
        call->dst[d] = gdn_graph_stand_in(graph, node->dst[d]);
    memcpy(call->tee_offset, node->tee_offset, sizeof call->tee_offset);
    call->indexed_dst = node->indexed_dst;
}

/* 1 if a node before `before` (not removed) writes bytes of `id`. */
static int written_before(const gdn_graph *graph, int32_t before, gdn_tensor_id id)
{
    for (int32_t n = 0; n < before; n++) {
        const gdn_graph_node *node = &graph->nodes[n];
        for (int d = 0; !node->removed && d < node->n_dst; d++)
            if (gdn_graph_tensors_overlap(graph, node->dst[d], id))
                return 1;
    }
    return 0;
}

/* Graph-level rules for a new node: ids, counts, sources written, destinations writable. */
static gdn_status check_node(const gdn_graph *graph, const gdn_graph_node *node, const gdn_op_traits *traits)
{
    const int32_t index = graph->n_nodes;
    if (!gdn_op_src_count_ok(traits, node->n_src, 0) || node->n_dst != traits->n_dst)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph node %d (%s): %d sources and %d destinations, "
                        "expected %d%s and %d", (int)index, traits->name, (int)node->n_src, (int)node->n_dst,
                        (int)traits->n_src, traits->indexed_src ? " (+1 index)" : "", (int)traits->n_dst);
    for (int i = 0; i < node->n_src + node->n_dst; i++) {
        const int is_src = i < node->n_src;
        const gdn_tensor_id id = is_src ? node->src[i] : node->dst[i - node->n_src];
        if (!valid_id(graph, id))
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph node %d (%s): %s %d is tensor id %d, which the "
                            "graph does not have (it has %d tensors)", (int)index, traits->name,
                            is_src ? "source" : "destination", is_src ? i : i - node->n_src, (int)id,
                            (int)graph->n_tensors);
        const gdn_graph_tensor *t = &graph->tensors[id];
        const gdn_graph_tensor *root = &graph->tensors[t->root];
        if (is_src && root->kind == GDN_GRAPH_TENSOR_INTERMEDIATE && !written_before(graph, index, id))
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph node %d (%s): source %d reads t%d '%s', an "
                            "intermediate that no earlier node writes", (int)index, traits->name, i, (int)id, t->name);
        if (is_src && ((traits->inout_src >> i) & 1u) &&
            (root->kind != GDN_GRAPH_TENSOR_LEAF || !(root->flags & GDN_GRAPH_PERSISTENT)))
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph node %d (%s): source %d is written in place, and "
                            "t%d '%s' is not a PERSISTENT leaf", (int)index, traits->name, i, (int)id, t->name);
        if (!is_src && root->kind == GDN_GRAPH_TENSOR_LEAF && !(root->flags & GDN_GRAPH_PERSISTENT))
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph node %d (%s): destination %d writes t%d '%s', a "
                            "leaf that is not PERSISTENT (caller inputs are read-only)", (int)index, traits->name,
                            i - node->n_src, (int)id, t->name);
        if (!is_src && root->kind == GDN_GRAPH_TENSOR_INTERMEDIATE && written_before(graph, index, id))
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph node %d (%s): destination %d writes t%d '%s', "
                            "bytes of an intermediate that an earlier node already writes (each is written "
                            "once)", (int)index, traits->name, i - node->n_src, (int)id, t->name);
    }
    return GDN_OK;
}

gdn_status gdn_graph_op(gdn_graph *graph, gdn_op_kind kind, const gdn_op_params *params, int32_t n_src,
                        const gdn_tensor_id *src, int32_t n_dst, const gdn_tensor_id *dst)
{
    gdn_clear_error();
    if (graph == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_op: NULL graph");
    const int32_t index = graph->n_nodes;
    const gdn_op_traits *traits = gdn_op_traits_of(kind);
    if (traits == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph node %d: unknown op kind %d", (int)index, (int)kind);
    if (n_src < 0 || n_src > GDN_OP_MAX_SRC || n_dst < 0 || n_dst > GDN_OP_MAX_DST ||
        (n_src > 0 && src == NULL) || (n_dst > 0 && dst == NULL))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph node %d (%s): %d sources and %d destinations, "
                        "expected %d and %d", (int)index, traits->name, (int)n_src, (int)n_dst,
                        (int)traits->n_src, (int)traits->n_dst);
    gdn_graph_node node;
    memset(&node, 0, sizeof node);
    node.kind = kind;
    if (params != NULL)
        node.params = *params;
    node.n_src = n_src;
    node.n_dst = n_dst;
    memcpy(node.src, src, (size_t)n_src * sizeof *src);
    memcpy(node.dst, dst, (size_t)n_dst * sizeof *dst);
    gdn_status st = check_node(graph, &node, traits);
    if (st != GDN_OK)
        return st;
    gdn_op_call call;
    gdn_graph_stand_in_call(graph, &node, &call);
    if ((st = gdn_op_check(&call, 0)) != GDN_OK) {
        char detail[512];
        snprintf(detail, sizeof detail, "%s", gdn_error_detail());
        return gdn_fail(st, "graph node %d (%s): %s", (int)index, traits->name, detail);
    }
    if (graph->n_nodes == graph->cap_nodes) {
        int32_t cap = graph->cap_nodes ? 2 * graph->cap_nodes : 16;
        gdn_graph_node *grown = realloc(graph->nodes, (size_t)cap * sizeof *grown);
        if (grown == NULL)
            return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "graph node %d (%s): cannot grow the node list", (int)index,
                            traits->name);
        graph->nodes = grown;
        graph->cap_nodes = cap;
    }
    graph->nodes[graph->n_nodes++] = node;
    gdn_graph_invalidate_plan(graph);
    return GDN_OK;
}
