/* gather_elision.c: input forwarding (DESIGN.md section 4), the twin of copy elision. A
 * GET_ROWS node G that gathers rows of a table A by an index into a whole intermediate T, read
 * by nothing but one node N as a source that N's traits declare indexable, is removed: N reads
 * A itself (a view shaped as its source, with all of A's rows) through G's index. The decision
 * reads only op traits and tensor geometry; the one op kind named is GET_ROWS itself. Each
 * refusal is logged with its reason; with no log callback, GDN_LOG_PASSES=1 sends the lines to
 * stderr. */
#include "pass_log.h"
#include "../core/graph_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The one (node, source) that reads any byte of `id` among nodes that run, when there is exactly
 * one such read; returns the number of reads. */
static int32_t sole_reader(const gdn_graph *graph, gdn_tensor_id id, int32_t *node, int *source)
{
    int32_t reads = 0;
    for (int32_t n = 0; n < graph->n_nodes; n++)
        for (int s = 0; !graph->nodes[n].removed && s < graph->nodes[n].n_src; s++)
            if (gdn_graph_tensors_overlap(graph, graph->nodes[n].src[s], id)) {
                *node = n;
                *source = s;
                reads++;
            }
    return reads;
}

/* The pool view: the reader's view `v` of T (T = rows of `row` elements, packed, ne = {row, B})
 * with its outermost dimension k = n_dims - 1 counting T's rows (stride: one row) and its inner
 * dimensions addressing elements of one row at any strides (a reshape, or a transposing view such
 * as the conv window read time-innermost). Element (i_0..i_k-1, r) of v is T[r][e] with
 * e = sum i_j nb_j / size, so in the pool it is A[r][e]: inner strides scaled by A's element
 * stride, dim k at A's row stride over all of A's rows. Returns 0 (with the reason in `why`) when
 * v is not such a view. */
static int pool_view(const gdn_tensor *v, const gdn_tensor *t, const gdn_tensor *a, gdn_tensor *pool, char *why,
                     size_t why_size)
{
    const int k = v->n_dims - 1;
    const size_t size = gdn_dtype_size(t->dtype), row_bytes = (size_t)t->ne[0] * size;
    if (k < 1 || v->ne[k] != t->ne[1] || (t->ne[1] > 1 && v->nb[k] != t->nb[1])) {
        snprintf(why, why_size, "does not count the %lld gathered rows in its outermost dim %d", (long long)t->ne[1],
                 k);
        return 0;
    }
    size_t inner = size; /* span of one row's part of v */
    for (int i = 0; i < k; i++)
        inner += (size_t)(v->ne[i] - 1) * v->nb[i];
    if (inner > row_bytes) {
        snprintf(why, why_size, "reaches past one gathered row (%zu of %zu bytes) in its inner dims", inner, row_bytes);
        return 0;
    }
    *pool = *v;
    pool->data = a->data;
    pool->dtype = a->dtype;
    for (int i = 0; i < k; i++)
        pool->nb[i] = v->nb[i] / size * a->nb[0];
    pool->ne[k] = a->ne[1];
    pool->nb[k] = a->nb[1];
    const size_t span = gdn_tensor_span(pool);
    for (int i = k + 1; i < GDN_MAX_DIMS; i++)
        pool->nb[i] = span; /* as gdn_graph_view sets the strides beyond n_dims */
    return 1;
}

/* Insert `v` at position `at` of a call's sources (the source index goes before a destination's
 * index, which stays last). */
static void insert_source(gdn_tensor *src, int32_t *n_src, int32_t at, gdn_tensor v)
{
    for (int32_t i = (*n_src)++; i > at; i--)
        src[i] = src[i - 1];
    src[at] = v;
}

/* Every rule for forwarding G's table and index into its reader; on a refusal, logs it and
 * returns 0. On success *reader, *source and *pool (a stand-in view) are set. `prefix` is
 * "gather elision: node G (get_rows) kept". */
static int may_forward(const gdn_graph *graph, const gdn_pass_log *log, const char *prefix, int32_t g, int32_t *reader,
                       int *source, gdn_tensor *pool)
{
    const gdn_graph_node *gather = &graph->nodes[g];
    const gdn_tensor_id a = gather->src[0], index = gather->src[1], t = gather->dst[0];
    const gdn_graph_tensor *at = &graph->tensors[a], *tt = &graph->tensors[t];

    if (tt->kind != GDN_GRAPH_TENSOR_INTERMEDIATE) {
        gdn_pass_say(log, "%s: its destination t%d '%s' is not a whole intermediate (a %s)", prefix, (int)t, tt->name,
            tt->kind == GDN_GRAPH_TENSOR_LEAF ? "leaf" : "view");
        return 0;
    }
    if (gdn_graph_is_output(graph, t)) {
        gdn_pass_say(log, "%s: t%d '%s' is a graph output", prefix, (int)t, tt->name);
        return 0;
    }
    int32_t n = -1;
    int s = 0;
    const int32_t readers = sole_reader(graph, t, &n, &s);
    if (readers != 1) {
        gdn_pass_say(log, "%s: t%d '%s' has %d readers", prefix, (int)t, tt->name, (int)readers);
        return 0;
    }
    const gdn_graph_node *node = &graph->nodes[n];
    const gdn_op_traits *traits = gdn_op_traits_of(node->kind);
    const char *op = traits->name;
    if (!((traits->indexed_src >> s) & 1u)) {
        gdn_pass_say(log, "%s: its reader node %d (%s) does not declare an indexed source %d", prefix, (int)n, op, s);
        return 0;
    }
    if (node->n_src - (node->indexed_dst != 0) != traits->n_src) {
        gdn_pass_say(log, "%s: its reader node %d (%s) already reads through an index", prefix, (int)n, op);
        return 0;
    }
    const gdn_graph_tensor *vt = &graph->tensors[node->src[s]];
    if (at->view.dtype != vt->view.dtype) {
        gdn_pass_say(log, "%s: the gather converts %s to %s", prefix, gdn_dtype_name(at->view.dtype),
            gdn_dtype_name(vt->view.dtype));
        return 0;
    }
    char why[160];
    const gdn_tensor table = gdn_graph_stand_in(graph, a), whole = gdn_graph_stand_in(graph, t);
    const gdn_tensor read = gdn_graph_stand_in(graph, node->src[s]);
    if (read.data != whole.data || !pool_view(&read, &whole, &table, pool, why, sizeof why)) {
        gdn_pass_say(log, "%s: source %d of node %d (%s), t%d '%s', %s", prefix, s, (int)n, op, (int)node->src[s], vt->name,
            read.data != whole.data ? "does not start at the first row of the gathered rows" : why);
        return 0;
    }
    /* N now reads the table and the index when it runs, not when G ran: nothing in between may
     * change them. */
    for (int32_t m = g + 1; m < n; m++) {
        const gdn_graph_node *between = &graph->nodes[m];
        const uint32_t inout = gdn_op_traits_of(between->kind)->inout_src;
        for (int w = 0; !between->removed && w < between->n_dst + between->n_src; w++) {
            if (w >= between->n_dst && !((inout >> (w - between->n_dst)) & 1u))
                continue; /* a source it only reads */
            const gdn_tensor_id written = w < between->n_dst ? between->dst[w] : between->src[w - between->n_dst];
            const int hits_table = gdn_graph_tensors_overlap(graph, written, a);
            if (!hits_table && !gdn_graph_tensors_overlap(graph, written, index))
                continue;
            gdn_pass_say(log, "%s: node %d (%s) between the gather and its reader node %d writes the %s t%d '%s'", prefix,
                (int)m, gdn_op_traits_of(between->kind)->name, (int)n, hits_table ? "table" : "index",
                hits_table ? (int)a : (int)index, graph->tensors[hits_table ? a : index].name);
            return 0;
        }
    }
    /* The rewritten node must pass its own op's check (for the GDN op: the pool overlaps no
     * output but states, the index is I32 [B]; whether the index values make an in-place pool
     * safe is checked at run time by the backend, as are their ranges). */
    gdn_op_call call;
    gdn_graph_stand_in_call(graph, node, &call);
    call.src[s] = *pool;
    insert_source(call.src, &call.n_src, traits->n_src, gdn_graph_stand_in(graph, index));
    if (gdn_op_check(&call, 0) != GDN_OK) {
        gdn_pass_say(log, "%s: the rewritten node %d (%s) fails its op check: %s", prefix, (int)n, op, gdn_error_detail());
        gdn_clear_error();
        return 0;
    }
    /* A pool the reader also writes is safe only if each sequence reads a slot no other
     * sequence writes: that is the index's promise (GDN_GRAPH_OWN_SLOT_INDEX), not something
     * the pass can see, and without it a valid graph would fail at run time. */
    const gdn_graph_tensor *it = &graph->tensors[graph->tensors[index].root];
    for (int d = 0; d < node->n_dst; d++) {
        const gdn_tensor written = gdn_graph_stand_in(graph, node->dst[d]);
        if (gdn_tensor_ranges_overlap(pool, &written) && !(it->flags & GDN_GRAPH_OWN_SLOT_INDEX)) {
            gdn_pass_say(log, "%s: the pool would overlap destination %d of node %d (%s) and the index t%d '%s' is "
                "not declared GDN_GRAPH_OWN_SLOT_INDEX", prefix, d, (int)n, op, (int)index, graph->tensors[index].name);
            return 0;
        }
    }
    *reader = n;
    *source = s;
    return 1;
}

gdn_status gdn_graph_pass_gather_elision(gdn_graph *graph, gdn_graph_log_fn log_fn, void *user)
{
    gdn_clear_error();
    if (graph == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gather elision: NULL graph");
    gdn_pass_log log = gdn_pass_log_open(log_fn, user);

    for (int32_t g = 0; g < graph->n_nodes; g++) {
        if (graph->nodes[g].removed || graph->nodes[g].kind != GDN_OP_GET_ROWS)
            continue;
        char prefix[64];
        snprintf(prefix, sizeof prefix, "gather elision: node %d (get_rows) kept", (int)g);
        int32_t n = -1;
        int s = 0;
        gdn_tensor pool;
        if (!may_forward(graph, &log, prefix, g, &n, &s, &pool))
            continue;
        const gdn_tensor_id a = graph->nodes[g].src[0], index = graph->nodes[g].src[1], t = graph->nodes[g].dst[0];
        gdn_tensor_id pool_id;
        gdn_status st = gdn_graph_view(graph, a, 0, pool.n_dims, pool.ne, pool.nb, &pool_id);
        if (st != GDN_OK) { /* out of memory, or a view the graph cannot hold: leave G in place */
            gdn_pass_say(&log, "%s: the pool view of t%d '%s' cannot be made: %s", prefix, (int)a, graph->tensors[a].name,
                gdn_error_detail());
            gdn_clear_error();
            continue;
        }
        /* gdn_graph_view may have moved the tensor list: only ids from here on. */
        gdn_graph_node *node = &graph->nodes[n];
        const gdn_graph_tensor *tt = &graph->tensors[t];
        const size_t saved = (size_t)gdn_tensor_count(&tt->view) *
                             (gdn_dtype_size(graph->tensors[a].view.dtype) + gdn_dtype_size(tt->view.dtype));
        node->src[s] = pool_id;
        for (int32_t i = node->n_src++; i > gdn_op_traits_of(node->kind)->n_src; i--)
            node->src[i] = node->src[i - 1]; /* a destination's index stays last */
        node->src[gdn_op_traits_of(node->kind)->n_src] = index; /* T is now written and read by nobody */
        graph->nodes[g].removed = 1;
        graph->nodes_removed++;
        graph->bytes_saved += saved;
        gdn_graph_invalidate_plan(graph);
        gdn_pass_say(&log, "gather elision: node %d (get_rows) removed: node %d (%s) reads source %d from t%d '%s' through "
            "the index t%d '%s' instead of t%d '%s' (%zu bytes saved)", (int)g, (int)n,
            gdn_op_traits_of(node->kind)->name, s, (int)a, graph->tensors[a].name, (int)index,
            graph->tensors[index].name, (int)t, tt->name, saved);
    }
    return GDN_OK;
}
