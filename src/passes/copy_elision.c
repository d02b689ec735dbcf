/* copy_elision.c: output forwarding (DESIGN.md section 4). A CPY node C that copies a whole
 * intermediate T, written by node N as destination d and read by nothing else, is removed, and
 * N writes d straight into C's destination view D. When C copies only a part of N's output (a
 * box of an intermediate that other nodes also read), and N's op declares a tee, C is removed
 * too: N keeps writing its output and also writes that box straight into D (the conv-window
 * update of a GDN block, a view of the concat that ssm_conv reads whole). Scatter elision is the
 * same pass for a SET_ROWS node (a copy into the slots an index names, along one dim): when N
 * declares that destination (or its tee) indexed_dst, N gets the table view and the index and
 * writes the slots itself, with the same rules otherwise. The decision reads only op traits and
 * tensor geometry; the op kinds named are CPY and SET_ROWS themselves. Each refusal is logged
 * with its reason; with no log callback, GDN_LOG_PASSES=1 sends the lines to stderr. */
#include "pass_log.h"
#include "../core/graph_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The node (not removed, before `before`) that writes tensor `id` as one of its destinations,
 * or -1; *slot receives which destination. */
static int32_t writer_of(const gdn_graph *graph, int32_t before, gdn_tensor_id id, int *slot)
{
    for (int32_t n = 0; n < before; n++) {
        const gdn_graph_node *node = &graph->nodes[n];
        for (int d = 0; !node->removed && d < node->n_dst; d++)
            if (node->dst[d] == id) {
                *slot = d;
                return n;
            }
    }
    return -1;
}

static int same_geometry(const gdn_tensor *a, const gdn_tensor *b)
{
    if (a->data != b->data || a->dtype != b->dtype)
        return 0;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (a->ne[i] != b->ne[i] || a->nb[i] != b->nb[i])
            return 0;
    return 1;
}

/* The dim a SET_ROWS node scatters along, or -1 for a CPY. */
static int scatter_dim(const gdn_graph_node *copy)
{
    return copy->kind == GDN_OP_SET_ROWS ? copy->params.set_rows.dim : -1;
}

/* N rewritten to write destination d as C does: D in place of d, and for a scatter C's index as
 * the destination's index, its last source. */
static void rewrite(const gdn_graph_node *copy, gdn_graph_node *node, int d)
{
    node->dst[d] = copy->dst[0];
    if (copy->kind == GDN_OP_SET_ROWS) {
        node->src[node->n_src++] = copy->src[1];
        node->indexed_dst = d + 1;
    }
}

/* The copy moves bits (no dtype change, same counts but along a scatter's dim) and N's
 * destination d accepts D's strides (and, for a scatter, an index). */
static int writable_as_is(const gdn_graph *graph, const gdn_pass_log *log, const char *prefix, int32_t c, int32_t n,
                          const gdn_op_traits *traits, int d)
{
    const gdn_tensor_id t = graph->nodes[c].src[0], target = graph->nodes[c].dst[0];
    const int dim = scatter_dim(&graph->nodes[c]);
    const gdn_graph_tensor *tt = &graph->tensors[t], *dt = &graph->tensors[target];
    if (tt->view.dtype != dt->view.dtype) {
        gdn_pass_say(log, "%s: the copy converts %s to %s", prefix, gdn_dtype_name(tt->view.dtype),
            gdn_dtype_name(dt->view.dtype));
        return 0;
    }
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (i != dim && tt->view.ne[i] != dt->view.ne[i]) {
            gdn_pass_say(log, "%s: t%d '%s' and the destination t%d differ in ne[%d] (%lld vs %lld)", prefix, (int)t,
                tt->name, (int)target, i, (long long)tt->view.ne[i], (long long)dt->view.ne[i]);
            return 0;
        }
    if (!((traits->strided_dst >> d) & 1u)) {
        gdn_pass_say(log, "%s: node %d (%s) does not declare a strided destination %d", prefix, (int)n, traits->name, d);
        return 0;
    }
    if (dim >= 0 && !((traits->indexed_dst >> d) & 1u)) {
        gdn_pass_say(log, "%s: node %d (%s) does not declare destination %d writable through an index", prefix, (int)n,
            traits->name, d);
        return 0;
    }
    if (dim >= 0 && graph->nodes[n].indexed_dst != 0) {
        gdn_pass_say(log, "%s: node %d (%s) already writes a destination through an index", prefix, (int)n, traits->name);
        return 0;
    }
    return 1;
}

static int untouched_between(const gdn_graph *graph, gdn_graph_traits_fn traits_of, const gdn_pass_log *log,
                             const char *prefix, int32_t c, int32_t n, int d);
static int passes_op_check(const gdn_graph *graph, const gdn_pass_log *log, const char *prefix, int32_t n,
                           const gdn_graph_node *rewritten, int dim);

/* Every rule for forwarding C's copy into N's destination d; on a refusal, logs it and returns
 * 0. `prefix` is "copy elision: node C (cpy) kept" (or set_rows). */
static int may_forward(const gdn_graph *graph, gdn_graph_traits_fn traits_of, const gdn_pass_log *log,
                       const char *prefix, int32_t c, int32_t n, int d)
{
    const gdn_graph_node *copy = &graph->nodes[c], *node = &graph->nodes[n];
    const gdn_tensor_id t = copy->src[0], target = copy->dst[0];
    const gdn_graph_tensor *tt = &graph->tensors[t], *dt = &graph->tensors[target];
    const gdn_op_traits *traits = traits_of(node->kind);
    const char *op = traits->name;

    if (gdn_graph_is_output(graph, t)) {
        gdn_pass_say(log, "%s: t%d '%s' is a graph output", prefix, (int)t, tt->name);
        return 0;
    }
    const int32_t readers = gdn_graph_count_readers(graph, t);
    if (readers != 1) {
        gdn_pass_say(log, "%s: t%d '%s' has %d readers", prefix, (int)t, tt->name, (int)readers);
        return 0;
    }
    if (!writable_as_is(graph, log, prefix, c, n, traits, d))
        return 0;
    /* D against N's own sources: only an exact alias the op declares safe. */
    const gdn_tensor dv = gdn_graph_stand_in(graph, target);
    for (int s = 0; s < node->n_src; s++) {
        if (!gdn_graph_tensors_overlap(graph, target, node->src[s]))
            continue;
        const gdn_tensor sv = gdn_graph_stand_in(graph, node->src[s]);
        if (((traits->alias_ok >> (s * GDN_OP_MAX_DST + d)) & 1u) && same_geometry(&dv, &sv))
            continue;
        gdn_pass_say(log, "%s: the destination t%d '%s' overlaps source %d (t%d '%s') of node %d (%s), which does not "
            "declare that alias safe", prefix, (int)target, dt->name, s, (int)node->src[s],
            graph->tensors[node->src[s]].name, (int)n, op);
        return 0;
    }
    gdn_graph_node rewritten = *node;
    rewrite(copy, &rewritten, d);
    return untouched_between(graph, traits_of, log, prefix, c, n, d) &&
           passes_op_check(graph, log, prefix, n, &rewritten, scatter_dim(copy));
}

/* The rules shared by forwarding and teeing: D meets no other destination of N (`d` is the one
 * it replaces or adds), and no node between N and the copy reads or writes D. */
static int untouched_between(const gdn_graph *graph, gdn_graph_traits_fn traits_of, const gdn_pass_log *log,
                             const char *prefix, int32_t c, int32_t n, int d)
{
    const gdn_graph_node *node = &graph->nodes[n];
    const gdn_tensor_id target = graph->nodes[c].dst[0];
    const gdn_graph_tensor *dt = &graph->tensors[target];
    const char *op = traits_of(node->kind)->name;
    for (int o = 0; o < node->n_dst; o++)
        if (o != d && gdn_graph_tensors_overlap(graph, target, node->dst[o])) {
            gdn_pass_say(log, "%s: the destination t%d '%s' overlaps destination %d of node %d (%s)", prefix, (int)target,
                dt->name, o, (int)n, op);
            return 0;
        }
    /* Nodes in between run while D still holds its old bytes: none may read or write them. */
    for (int32_t m = n + 1; m < c; m++) {
        const gdn_graph_node *between = &graph->nodes[m];
        if (between->removed)
            continue;
        for (int i = 0; i < between->n_src + between->n_dst; i++) {
            const int is_src = i < between->n_src;
            const gdn_tensor_id id = is_src ? between->src[i] : between->dst[i - between->n_src];
            if (!gdn_graph_tensors_overlap(graph, target, id))
                continue;
            gdn_pass_say(log, "%s: node %d (%s) between node %d and the copy %s the bytes of the destination t%d '%s' "
                "(through t%d)", prefix, (int)m, traits_of(between->kind)->name, (int)n, is_src ? "reads" : "writes",
                (int)target, dt->name, (int)id);
            return 0;
        }
    }
    return 1;
}

/* Node n rewritten (a destination replaced, or a tee added) must pass its own op's check
 * (strides, self-overlap, dtypes, shapes); for a scatter along `dim` (>= 0), the op must index
 * that destination along the same dim. */
static int passes_op_check(const gdn_graph *graph, const gdn_pass_log *log, const char *prefix, int32_t n,
                           const gdn_graph_node *rewritten, int dim)
{
    gdn_op_call call;
    gdn_graph_stand_in_call(graph, rewritten, &call);
    if (gdn_op_check(&call, 0) != GDN_OK) {
        gdn_pass_say(log, "%s: the rewritten node %d (%s) fails its op check: %s", prefix, (int)n,
            gdn_op_traits_of(rewritten->kind)->name, gdn_error_detail());
        gdn_clear_error();
        return 0;
    }
    if (dim >= 0 && gdn_op_dst_index_dim(&call) != dim) {
        gdn_pass_say(log, "%s: node %d (%s) indexes destination %d along dim %d, the scatter is along dim %d", prefix,
            (int)n, gdn_op_traits_of(rewritten->kind)->name, (int)rewritten->indexed_dst - 1,
            gdn_op_dst_index_dim(&call), dim);
        return 0;
    }
    return 1;
}

/* Where view v (a tensor sharing the root of intermediate `whole`, same dtype) starts in it, as
 * coordinates: v must be a box of `whole`, its elements at whole's own strides. Returns 0 with
 * the reason in `why` otherwise. */
static int box_of(const gdn_tensor *v, const gdn_tensor *whole, int64_t *offset, char *why, size_t why_size)
{
    if (v->dtype != whole->dtype) {
        snprintf(why, why_size, "has another dtype than the output it views");
        return 0;
    }
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (v->ne[i] > 1 && v->nb[i] != whole->nb[i]) {
            snprintf(why, why_size, "steps along dim %d by %zu bytes, the output by %zu (not a box of it)", i, v->nb[i],
                     whole->nb[i]);
            return 0;
        }
    /* The intermediate is packed: peel the byte offset into coordinates, outermost first. */
    size_t rest = (size_t)((const char *)v->data - (const char *)whole->data);
    for (int i = GDN_MAX_DIMS - 1; i >= 0; i--) {
        offset[i] = whole->nb[i] > 0 && whole->ne[i] > 1 ? (int64_t)(rest / whole->nb[i]) : 0;
        rest -= (size_t)offset[i] * whole->nb[i];
        if (offset[i] + v->ne[i] > whole->ne[i]) {
            snprintf(why, why_size, "is not a box of the output (dim %d)", i);
            return 0;
        }
    }
    if (rest != 0) {
        snprintf(why, why_size, "starts inside an element of the output");
        return 0;
    }
    return 1;
}

/* Every rule for teeing C's copy of a part of intermediate R (written whole by node N as its
 * destination 0) into D; on a refusal, logs it and returns 0, else sets *offset. */
static int may_tee(const gdn_graph *graph, gdn_graph_traits_fn traits_of, const gdn_pass_log *log, const char *prefix,
                   int32_t c, int32_t n, int64_t *offset)
{
    const gdn_graph_node *copy = &graph->nodes[c], *node = &graph->nodes[n];
    const gdn_tensor_id t = copy->src[0], target = copy->dst[0], root = graph->tensors[t].root;
    const gdn_graph_tensor *tt = &graph->tensors[t], *dt = &graph->tensors[target];
    const gdn_op_traits *traits = traits_of(node->kind);
    const char *op = traits->name;
    const int d = node->n_dst; /* the tee's slot */
    if (node->n_dst != traits->n_dst) {
        gdn_pass_say(log, "%s: node %d (%s) already has a tee", prefix, (int)n, op);
        return 0;
    }
    if (!writable_as_is(graph, log, prefix, c, n, traits, d))
        return 0;
    char why[160];
    const gdn_tensor part = gdn_graph_stand_in(graph, t), whole = gdn_graph_stand_in(graph, root);
    if (!box_of(&part, &whole, offset, why, sizeof why)) {
        gdn_pass_say(log, "%s: its source t%d '%s' %s", prefix, (int)t, tt->name, why);
        return 0;
    }
    /* D against N's sources: only an indexed pool the op declares the tee may meet, and then the
     * index must promise own slots (the rule is checked per sequence at run time). */
    int pool = -1;
    gdn_op_call call;
    gdn_graph_stand_in_call(graph, node, &call);
    const int indexed = gdn_op_call_indexed(&call, &pool);
    for (int s = 0; s < node->n_src; s++) {
        if (!gdn_graph_tensors_overlap(graph, target, node->src[s]))
            continue;
        const gdn_tensor_id index = node->src[traits->n_src];
        if (indexed && s == pool && ((traits->indexed_alias >> (s * GDN_OP_MAX_DST + d)) & 1u) &&
            (graph->tensors[graph->tensors[index].root].flags & GDN_GRAPH_OWN_SLOT_INDEX))
            continue;
        gdn_pass_say(log, "%s: the destination t%d '%s' overlaps source %d (t%d '%s') of node %d (%s)%s", prefix,
            (int)target, dt->name, s, (int)node->src[s], graph->tensors[node->src[s]].name, (int)n, op,
            indexed && s == pool ? ", an indexed pool whose index is not declared GDN_GRAPH_OWN_SLOT_INDEX" : "");
        return 0;
    }
    if (!untouched_between(graph, traits_of, log, prefix, c, n, d))
        return 0;
    gdn_graph_node teed = *node;
    rewrite(copy, &teed, teed.n_dst++);
    memcpy(teed.tee_offset, offset, sizeof teed.tee_offset);
    return passes_op_check(graph, log, prefix, n, &teed, scatter_dim(copy));
}

gdn_status gdn_graph_pass_copy_elision_with(gdn_graph *graph, gdn_graph_traits_fn traits_of,
                                            gdn_graph_log_fn log_fn, void *user)
{
    gdn_clear_error();
    if (graph == NULL || traits_of == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "copy elision: NULL graph or traits");
    gdn_pass_log log = gdn_pass_log_open(log_fn, user);

    for (int32_t c = 0; c < graph->n_nodes; c++) {
        gdn_graph_node *copy = &graph->nodes[c];
        if (copy->removed || (copy->kind != GDN_OP_CPY && copy->kind != GDN_OP_SET_ROWS))
            continue;
        char prefix[64];
        snprintf(prefix, sizeof prefix, "copy elision: node %d (%s) kept", (int)c, traits_of(copy->kind)->name);
        const gdn_tensor_id t = copy->src[0], root = graph->tensors[t].root;
        const gdn_graph_tensor *tt = &graph->tensors[t];
        if (graph->tensors[root].kind != GDN_GRAPH_TENSOR_INTERMEDIATE) {
            gdn_pass_say(&log, "%s: its source t%d '%s' is not (part of) an intermediate (a leaf's bytes)", prefix,
                (int)t, tt->name);
            continue;
        }
        int d = 0;
        const int32_t n = writer_of(graph, c, root, &d);
        if (n < 0) {
            gdn_pass_say(&log, "%s: no node writes t%d '%s' whole as its destination", prefix, (int)root,
                graph->tensors[root].name);
            continue;
        }
        gdn_graph_node *node = &graph->nodes[n];
        const gdn_op_traits *traits = traits_of(node->kind);
        const int can_tee = traits->tee_dst != 0 && d == 0;
        const gdn_tensor_id target = copy->dst[0];
        if (t == root) {
            char forward_prefix[80];
            snprintf(forward_prefix, sizeof forward_prefix, "copy elision: node %d (%s) %s", (int)c,
                traits_of(copy->kind)->name, can_tee ? "not forwarded" : "kept");
            if (may_forward(graph, traits_of, &log, forward_prefix, c, n, d)) {
                const size_t saved = (size_t)gdn_tensor_count(&tt->view) *
                                     (gdn_dtype_size(tt->view.dtype) + gdn_dtype_size(graph->tensors[target].view.dtype));
                rewrite(copy, node, d); /* T is now written and read by nobody: the planner skips it */
                copy->removed = 1;
                graph->nodes_removed++;
                graph->bytes_saved += saved;
                gdn_graph_invalidate_plan(graph);
                gdn_pass_say(&log, "copy elision: node %d (%s) removed: node %d (%s) writes destination %d straight "
                    "into t%d '%s'%s instead of t%d '%s' (%zu bytes saved)", (int)c, traits_of(copy->kind)->name,
                    (int)n, traits->name, d, (int)target, graph->tensors[target].name,
                    copy->kind == GDN_OP_SET_ROWS ? " through the index" : "", (int)t, tt->name, saved);
                continue;
            }
            if (!can_tee)
                continue;
        } else if (!can_tee) {
            gdn_pass_say(&log, "%s: its source t%d '%s' is a part of t%d '%s', and its writer node %d (%s) declares no "
                "tee", prefix, (int)t, tt->name, (int)root, graph->tensors[root].name, (int)n, traits->name);
            continue;
        }
        int64_t offset[GDN_MAX_DIMS];
        if (!may_tee(graph, traits_of, &log, prefix, c, n, offset))
            continue;
        /* N keeps its output (other nodes read it) and also writes the copied box into D; the
         * copy's read of it is saved. */
        const size_t saved = (size_t)gdn_tensor_count(&tt->view) * gdn_dtype_size(tt->view.dtype);
        rewrite(copy, node, node->n_dst++);
        memcpy(node->tee_offset, offset, sizeof node->tee_offset);
        copy->removed = 1;
        graph->nodes_removed++;
        graph->bytes_saved += saved;
        gdn_graph_invalidate_plan(graph);
        gdn_pass_say(&log, "copy elision: node %d (%s) removed: node %d (%s) also writes the part t%d '%s' of its "
            "output straight into t%d '%s'%s (a tee; %zu bytes saved)", (int)c, traits_of(copy->kind)->name, (int)n,
            traits->name, (int)t, tt->name, (int)target, graph->tensors[target].name,
            copy->kind == GDN_OP_SET_ROWS ? " through the index" : "", saved);
    }
    return GDN_OK;
}

gdn_status gdn_graph_pass_copy_elision(gdn_graph *graph, gdn_graph_log_fn log, void *user)
{
    return gdn_graph_pass_copy_elision_with(graph, gdn_op_traits_of, log, user);
}
