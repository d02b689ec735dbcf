/* graph_plan.c: the planner and executor of a graph (graph.h). Intermediates written by a node
 * that runs get bytes in one backend arena; two may share bytes when their lifetimes (first
 * writer to last reader, in node order) do not meet. First fit, 256-byte aligned. Then each
 * node's call is resolved to concrete views and run with gdn_op_run. */
#include "graph_internal.h"
#include "ops_run.h"
#include "../backends/backend.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GDN_GRAPH_ALIGN 256

typedef struct interval {
    gdn_tensor_id root;
    int32_t first, last; /* node indices; last = INT32_MAX for an output */
    size_t bytes;        /* rounded up to GDN_GRAPH_ALIGN */
    size_t offset;
} interval;

static int by_offset(const void *a, const void *b)
{
    const interval *x = *(const interval *const *)a, *y = *(const interval *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Lifetimes of the intermediates written by nodes that run, in order of first write (the node
 * order, so no sort). Returns the count, or -1 when out of memory; *out is malloc'ed. */
static int32_t lifetimes(const gdn_graph *graph, interval **out)
{
    int32_t *first = malloc(((size_t)graph->n_tensors + 1) * sizeof *first);
    int32_t *last = malloc(((size_t)graph->n_tensors + 1) * sizeof *last);
    interval *list = malloc(((size_t)graph->n_tensors + 1) * sizeof *list);
    int32_t n = 0;
    if (first == NULL || last == NULL || list == NULL) {
        free(first), free(last), free(list);
        return -1;
    }
    for (int32_t t = 0; t < graph->n_tensors; t++)
        first[t] = last[t] = -1;
    for (int32_t i = 0; i < graph->n_nodes; i++) {
        const gdn_graph_node *node = &graph->nodes[i];
        if (node->removed)
            continue;
        for (int d = 0; d < node->n_dst; d++) {
            const gdn_tensor_id r = graph->tensors[node->dst[d]].root;
            if (first[r] < 0)
                first[r] = i;
            last[r] = i;
        }
        for (int s = 0; s < node->n_src; s++)
            last[graph->tensors[node->src[s]].root] = i;
    }
    for (int32_t t = 0; t < graph->n_tensors; t++)
        if (graph->tensors[t].flags & GDN_GRAPH_OUTPUT)
            last[graph->tensors[t].root] = INT32_MAX;
    for (int32_t i = 0; i < graph->n_nodes; i++) /* in order of first write */
        for (int d = 0; !graph->nodes[i].removed && d < graph->nodes[i].n_dst; d++) {
            const gdn_tensor_id r = graph->tensors[graph->nodes[i].dst[d]].root;
            if (graph->tensors[r].kind != GDN_GRAPH_TENSOR_INTERMEDIATE || first[r] != i)
                continue;
            first[r] = -2; /* listed */
            list[n].root = r;
            list[n].first = i;
            list[n].last = last[r];
            list[n].bytes = (graph->tensors[r].bytes + GDN_GRAPH_ALIGN - 1) / GDN_GRAPH_ALIGN * GDN_GRAPH_ALIGN;
            list[n].offset = 0;
            n++;
        }
    free(first);
    free(last);
    *out = list;
    return n;
}

/* Place each interval at the lowest offset clear of every placed interval it meets in time.
 * Fills offsets[t] (SIZE_MAX for tensors without memory) when not NULL; returns the arena size,
 * or SIZE_MAX when out of memory. */
static size_t plan_layout(const gdn_graph *graph, size_t *offsets)
{
    interval *list = NULL;
    const int32_t n = lifetimes(graph, &list);
    interval **meet = n >= 0 ? malloc(((size_t)n + 1) * sizeof *meet) : NULL;
    if (meet == NULL) {
        free(list);
        return SIZE_MAX;
    }
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t n_meet = 0;
        for (int32_t j = 0; j < i; j++) /* placed ones start no later: they meet if still alive */
            if (list[j].last >= list[i].first)
                meet[n_meet++] = &list[j];
        qsort(meet, (size_t)n_meet, sizeof *meet, by_offset);
        size_t at = 0;
        for (int32_t j = 0; j < n_meet; j++)
            if (meet[j]->offset < at + list[i].bytes && at < meet[j]->offset + meet[j]->bytes)
                at = meet[j]->offset + meet[j]->bytes > at ? meet[j]->offset + meet[j]->bytes : at;
        list[i].offset = at;
        if (at + list[i].bytes > total)
            total = at + list[i].bytes;
    }
    if (offsets != NULL) {
        for (int32_t t = 0; t < graph->n_tensors; t++)
            offsets[t] = SIZE_MAX;
        for (int32_t i = 0; i < n; i++)
            offsets[list[i].root] = list[i].offset;
    }
    free(meet);
    free(list);
    return total;
}

void gdn_graph_invalidate_plan(gdn_graph *graph)
{
    graph->planned = 0;
}

void gdn_graph_release_plan(gdn_graph *graph)
{
    if (graph->arena != NULL)
        gdn_backend_dealloc(graph->backend, graph->arena);
    free(graph->root_offset);
    graph->arena = NULL;
    graph->root_offset = NULL;
    graph->plan_n_tensors = 0;
    graph->backend = NULL;
    graph->planned = 0;
}

void gdn_graph_get_stats(const gdn_graph *graph, gdn_graph_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    if (graph == NULL)
        return;
    for (int32_t i = 0; i < graph->n_nodes; i++)
        if (!graph->nodes[i].removed) {
            stats->n_nodes++;
            stats->n_copies += graph->nodes[i].kind == GDN_OP_CPY || graph->nodes[i].kind == GDN_OP_SET_ROWS;
            stats->n_gathers += graph->nodes[i].kind == GDN_OP_GET_ROWS;
        }
    stats->nodes_removed = graph->nodes_removed;
    stats->bytes_saved = graph->bytes_saved;
    const size_t total = plan_layout(graph, NULL);
    stats->intermediate_bytes = total == SIZE_MAX ? 0 : total;
}

/* 1 if backend runs `kind`: its own answer, or for a backend without supports_op its entries. */
static int backend_runs(const gdn_backend *backend, gdn_op_kind kind)
{
    if (backend->ops->supports_op != NULL)
        return backend->ops->supports_op(backend, kind);
    return kind == GDN_OP_GATED_DELTA_NET || kind == GDN_OP_GATED_DELTA_NET_REPLAY ? backend->ops->gated_delta_net != NULL
                                                                                  : backend->ops->run_op != NULL;
}

/* Ask the backend about every node, then lay out and allocate the arena. */
static gdn_status plan(gdn_graph *graph, gdn_backend *backend)
{
    for (int32_t i = 0; i < graph->n_nodes; i++) {
        const gdn_graph_node *node = &graph->nodes[i];
        if (!node->removed && !backend_runs(backend, node->kind))
            return gdn_fail(GDN_ERROR_UNSUPPORTED, "graph node %d (%s): not supported by backend %s (nothing "
                            "ran)", (int)i, gdn_op_traits_of(node->kind)->name, backend->name);
    }
    size_t *offsets = malloc(((size_t)graph->n_tensors + 1) * sizeof *offsets);
    const size_t total = offsets ? plan_layout(graph, offsets) : SIZE_MAX;
    if (total == SIZE_MAX) {
        free(offsets);
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "graph_compute: no host memory for the plan");
    }
    /* Keep the arena when it is on this backend and large enough. */
    void *arena = NULL;
    if (graph->arena != NULL && graph->backend == backend && total <= graph->arena_bytes) {
        arena = graph->arena;
        graph->arena = NULL;
    }
    const size_t arena_bytes = arena ? graph->arena_bytes : total;
    gdn_graph_release_plan(graph);
    if (arena == NULL && total > 0) {
        gdn_status st = gdn_backend_alloc(backend, total, &arena);
        if (st != GDN_OK) {
            free(offsets);
            return st;
        }
    }
    graph->arena = arena;
    graph->arena_bytes = arena_bytes;
    graph->backend = backend;
    graph->root_offset = offsets;
    graph->plan_n_tensors = graph->n_tensors;
    graph->planned = 1;
    return GDN_OK;
}

/* The concrete view of tensor `id` under the current plan. */
static gdn_status concrete_view(const gdn_graph *graph, gdn_tensor_id id, gdn_tensor *view)
{
    const gdn_graph_tensor *t = &graph->tensors[id];
    const gdn_graph_tensor *root = &graph->tensors[t->root];
    char *base;
    if (root->kind == GDN_GRAPH_TENSOR_LEAF) {
        base = root->view.data;
    } else {
        if (t->root >= graph->plan_n_tensors || graph->root_offset[t->root] == SIZE_MAX)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "t%d '%s': intermediate t%d '%s' has no memory (no node "
                            "that runs writes it)", (int)id, t->name, (int)t->root, root->name);
        base = (char *)graph->arena + graph->root_offset[t->root];
    }
    *view = t->view;
    view->data = base + t->offset;
    return GDN_OK;
}

/* The state_ready hint (graph_internal.h). Destinations and in-place sources of `prev` count. */
int gdn_graph_state_ready(const gdn_graph *graph, int32_t prev, int32_t index)
{
    if (prev < 0)
        return 0;
    const gdn_graph_node *node = &graph->nodes[index];
    const gdn_graph_node *before = &graph->nodes[prev];
    const uint32_t inout = gdn_op_traits_of(before->kind)->inout_src;
    /* Sources 5 (the state) and 6 (its index, when the node reads through one: always for
     * replay, and for the GDN op when it has a source beyond its six and its destination
     * index); replay's 7 .. 10 (ring_k, ring_v, ring_g, fold) */
    const int n_read = node->kind == GDN_OP_GATED_DELTA_NET_REPLAY ? 11
                       : node->n_src - (node->indexed_dst != 0) > 6 ? 7
                                                                     : 6;
    for (int r = 5; r < n_read; r++)
        for (int w = 0; w < before->n_dst + before->n_src; w++) {
            if (w >= before->n_dst && !((inout >> (w - before->n_dst)) & 1u))
                continue;
            const gdn_tensor_id written = w < before->n_dst ? before->dst[w] : before->src[w - before->n_dst];
            if (gdn_graph_tensors_overlap(graph, written, node->src[r]))
                return 0;
        }
    return 1;
}

gdn_status gdn_graph_compute(gdn_graph *graph, gdn_backend *backend)
{
    gdn_clear_error();
    if (graph == NULL || backend == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_compute: NULL argument");
    gdn_status st;
    if ((!graph->planned || graph->backend != backend) && (st = plan(graph, backend)) != GDN_OK)
        return st;
    int32_t prev = -1; /* the node run last, whose work is queued right before this one's */
    for (int32_t i = 0; i < graph->n_nodes; i++) {
        const gdn_graph_node *node = &graph->nodes[i];
        if (node->removed)
            continue;
        gdn_op_call call;
        memset(&call, 0, sizeof call);
        call.kind = node->kind;
        call.params = node->params;
        if (node->kind == GDN_OP_GATED_DELTA_NET || node->kind == GDN_OP_GATED_DELTA_NET_REPLAY)
            call.params.gated_delta_net.state_ready = gdn_graph_state_ready(graph, prev, i);
        prev = i;
        call.n_src = node->n_src;
        call.n_dst = node->n_dst;
        memcpy(call.tee_offset, node->tee_offset, sizeof call.tee_offset);
        call.indexed_dst = node->indexed_dst;
        st = GDN_OK;
        for (int s = 0; st == GDN_OK && s < node->n_src; s++)
            st = concrete_view(graph, node->src[s], &call.src[s]);
        for (int d = 0; st == GDN_OK && d < node->n_dst; d++)
            st = concrete_view(graph, node->dst[d], &call.dst[d]);
        if (st == GDN_OK)
            st = gdn_op_run(backend, &call);
        if (st != GDN_OK) {
            char detail[512];
            snprintf(detail, sizeof detail, "%s", gdn_error_detail());
            return gdn_fail(st, "graph node %d (%s): %s", (int)i, gdn_op_traits_of(node->kind)->name, detail);
        }
    }
    return GDN_OK;
}

gdn_status gdn_graph_tensor_view(const gdn_graph *graph, gdn_tensor_id id, gdn_tensor *view)
{
    gdn_clear_error();
    if (graph == NULL || view == NULL || id < 0 || id >= graph->n_tensors)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_tensor_view: NULL argument or unknown tensor id %d",
                        (int)id);
    if (!graph->planned)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "graph_tensor_view: t%d '%s': the graph has not been "
                        "computed since it last changed", (int)id, graph->tensors[id].name);
    return concrete_view(graph, id, view);
}
