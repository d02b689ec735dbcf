/* ops_cuda.cu: the CUDA backend's run_op: the call's views into one kernel argument struct and
 * the dispatch by kind to the family launchers (ops_cuda_elementwise.cu, ops_cuda_data.cu,
 * ops_cuda_matmul.cu). Calls arrive validated by gdn_op_check. */
#include "cuda_internal.h"

#include <string.h>

int gdn_cuda_runs_op(gdn_op_kind kind)
{
    switch (kind) {
    case GDN_OP_ADD:
    case GDN_OP_MUL:
    case GDN_OP_SCALE:
    case GDN_OP_SILU:
    case GDN_OP_SIGMOID:
    case GDN_OP_SOFTPLUS:
    case GDN_OP_EXP:
    case GDN_OP_L2_NORM:
    case GDN_OP_RMS_NORM:
    case GDN_OP_RMS_NORM_GATED:
    case GDN_OP_SSM_CONV:
    case GDN_OP_GET_ROWS:
    case GDN_OP_CONCAT:
    case GDN_OP_CPY:
    case GDN_OP_MUL_MAT:
    case GDN_OP_GDN_GATES:
    case GDN_OP_SET_ROWS:
        return 1;
    default:
        return 0;
    }
}

gdn_status gdn_cuda_run_op(gdn_backend *backend, const gdn_op_call *call)
{
    const gdn_cuda_context *context = (const gdn_cuda_context *)backend->context;
    const gdn_op_traits *traits = gdn_op_traits_of(call->kind);
    if (!gdn_cuda_runs_op(call->kind))
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "%s: not run through run_op on backend %s",
                        traits ? traits->name : "?", backend->name);
    gdn_status status = gdn_cuda_use_device(context);
    if (status != GDN_OK)
        return status;

    gdn_cuda_op_args args;
    memset(&args, 0, sizeof args);
    for (int s = 0; s < call->n_src && s < 4; s++)
        args.src[s] = gdn_cuda_view_of(&call->src[s]);
    args.dst = gdn_cuda_view_of(&call->dst[0]);
    if (call->kind == GDN_OP_GDN_GATES)
        args.dst1 = gdn_cuda_view_of(&call->dst[1]);
    args.kind = (int)call->kind;
    if (call->kind == GDN_OP_SCALE)
        args.scale = call->params.scale.scale;
    if (call->kind == GDN_OP_L2_NORM || call->kind == GDN_OP_RMS_NORM || call->kind == GDN_OP_RMS_NORM_GATED)
        args.eps = call->params.norm.eps;
    if (call->kind == GDN_OP_SET_ROWS)
        args.dim = call->params.set_rows.dim;
    if (call->kind == GDN_OP_CONCAT) {
        args.dim = call->params.concat.dim;
        args.indexed = gdn_op_has_src_index(call);
        args.outer = gdn_op_index_dim(call);
        args.tee_indexed = call->indexed_dst != 0;
        memset(&args.src[2], 0, 2 * sizeof args.src[2]);
        if (args.indexed)
            args.src[2] = gdn_cuda_view_of(&call->src[2]);
        if (args.tee_indexed)
            args.src[3] = gdn_cuda_view_of(&call->src[call->n_src - 1]);
        if (call->n_dst == 2) {
            args.tee = gdn_cuda_view_of(&call->dst[1]);
            memcpy(args.tee_offset, call->tee_offset, sizeof args.tee_offset);
        }
        if (args.indexed && call->n_dst == 2 && gdn_tensor_ranges_overlap(&call->src[0], &call->dst[1])) {
            /* The host half of gdn_op_check_index's rule: can a slot read be a run of a part of the
             * tee (gdn_op_part_within, addresses aside)? The kernel checks where each one lies. */
            gdn_tensor part = call->src[0], own = call->dst[1];
            part.ne[args.outer] = own.ne[args.outer] = 1;
            own.data = part.data;
            args.tee_alias = gdn_op_part_within(&part, &own) ? 1 : 2;
            args.part_bytes = (int64_t)gdn_tensor_span(&part);
            args.own_bytes = (int64_t)gdn_tensor_span(&own);
            args.tee_bytes = (int64_t)gdn_tensor_span(&call->dst[1]);
        }
    }

    switch (call->kind) {
    case GDN_OP_L2_NORM:
    case GDN_OP_RMS_NORM:
    case GDN_OP_RMS_NORM_GATED:
        return gdn_cuda_norm(context, args);
    case GDN_OP_SSM_CONV:
        return gdn_cuda_ssm_conv(context, args);
    case GDN_OP_GET_ROWS:
        return gdn_cuda_get_rows(context, args);
    case GDN_OP_CONCAT:
        return gdn_cuda_concat(context, args);
    case GDN_OP_CPY:
        return gdn_cuda_cpy(context, args);
    case GDN_OP_SET_ROWS:
        return gdn_cuda_set_rows(context, args);
    case GDN_OP_MUL_MAT:
        return gdn_cuda_mul_mat(context, args);
    case GDN_OP_GDN_GATES:
        return gdn_cuda_gates(context, args);
    default:
        return gdn_cuda_elementwise(context, args);
    }
}
