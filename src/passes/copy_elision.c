/* copy_elision.c: output forwarding (DESIGN.md section 4). A CPY node C that copies a whole
 * intermediate T, written by node N as destination d and read by nothing else, is removed, and
 * N writes d straight into C's destination view D. The decision reads only op traits and
 * tensor geometry; the one op kind named is CPY itself. Each refusal is logged with its reason;
 * with no log callback, GDN_LOG_PASSES=1 sends the lines to stderr. */
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

/* Every rule for forwarding C's copy into N's destination d; on a refusal, logs it and returns
 * 0. `prefix` is "copy elision: node C (cpy) kept". */
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
    if (tt->view.dtype != dt->view.dtype) {
        gdn_pass_say(log, "%s: the copy converts %s to %s", prefix, gdn_dtype_name(tt->view.dtype),
            gdn_dtype_name(dt->view.dtype));
        return 0;
    }
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (tt->view.ne[i] != dt->view.ne[i]) {
            gdn_pass_say(log, "%s: t%d '%s' and the destination t%d differ in ne[%d] (%lld vs %lld)", prefix, (int)t,
                tt->name, (int)target, i, (long long)tt->view.ne[i], (long long)dt->view.ne[i]);
            return 0;
        }
    if (!((traits->strided_dst >> d) & 1u)) {
        gdn_pass_say(log, "%s: node %d (%s) does not declare a strided destination %d", prefix, (int)n, op, d);
        return 0;
    }
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
    /* The rewritten node must pass its own op's check (strides, self-overlap, dtypes). */
    gdn_graph_node rewritten = *node;
    rewritten.dst[d] = target;
    gdn_op_call call;
    gdn_graph_stand_in_call(graph, &rewritten, &call);
    if (gdn_op_check(&call, 0) != GDN_OK) {
        gdn_pass_say(log, "%s: the rewritten node %d (%s) fails its op check: %s", prefix, (int)n, op, gdn_error_detail());
        gdn_clear_error();
        return 0;
    }
    return 1;
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
        if (copy->removed || copy->kind != GDN_OP_CPY)
            continue;
        char prefix[64];
        snprintf(prefix, sizeof prefix, "copy elision: node %d (%s) kept", (int)c, traits_of(copy->kind)->name);
        const gdn_tensor_id t = copy->src[0];
        const gdn_graph_tensor *tt = &graph->tensors[t];
        if (tt->kind != GDN_GRAPH_TENSOR_INTERMEDIATE) {
            gdn_pass_say(&log, "%s: its source t%d '%s' is not a whole intermediate (a %s)", prefix, (int)t, tt->name,
                tt->kind == GDN_GRAPH_TENSOR_LEAF ? "leaf" : "view");
            continue;
        }
        int d = 0;
        const int32_t n = writer_of(graph, c, t, &d);
        if (n < 0) {
            gdn_pass_say(&log, "%s: no node writes t%d '%s' whole as its destination", prefix, (int)t, tt->name);
            continue;
        }
        if (!may_forward(graph, traits_of, &log, prefix, c, n, d))
            continue;
        gdn_graph_node *node = &graph->nodes[n];
        const gdn_tensor_id target = copy->dst[0];
        const size_t saved = (size_t)gdn_tensor_count(&tt->view) *
                             (gdn_dtype_size(tt->view.dtype) + gdn_dtype_size(graph->tensors[target].view.dtype));
        node->dst[d] = target; /* T is now written and read by nobody: the planner skips it */
        copy->removed = 1;
        graph->nodes_removed++;
        graph->bytes_saved += saved;
        gdn_graph_invalidate_plan(graph);
        gdn_pass_say(&log, "copy elision: node %d (cpy) removed: node %d (%s) writes destination %d straight into t%d "
            "'%s' instead of t%d '%s' (%zu bytes saved)", (int)c, (int)n, traits_of(node->kind)->name, d,
            (int)target, graph->tensors[target].name, (int)t, tt->name, saved);
    }
    return GDN_OK;
}

gdn_status gdn_graph_pass_copy_elision(gdn_graph *graph, gdn_graph_log_fn log, void *user)
{
    return gdn_graph_pass_copy_elision_with(graph, gdn_op_traits_of, log, user);
}
