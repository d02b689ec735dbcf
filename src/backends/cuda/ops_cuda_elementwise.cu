/* ops_cuda_elementwise.cu: CUDA kernels of the elementwise ops (add, mul, scale, silu, sigmoid,
 * softplus, exp) and the row norms (l2_norm, rms_norm, rms_norm_gated), any strides.
 *
 * Elementwise: one thread per element of dst (flat index, dim 0 fastest, grid-stride loop); the
 * same float formulas as the CPU kernels (x / (1 + expf(-x)) for silu, softplus = x above 20).
 * CUDA's expf and log1pf are libm functions (a few ulp), never the fast intrinsics.
 *
 * Norms: one warp per row (dim 0). Lane l sums the squares of elements l, l + 32, ... with
 * __fmaf_rn, then a butterfly of __shfl_xor_sync (offsets 16 .. 1) leaves the same sum in every
 * lane: the order depends on D only, so a row gives the same bits whatever the number of rows
 * or the layout. In place (dst exactly src 0) is safe: each lane reads and writes only its own
 * elements, and the row is reduced (the shuffles wait for every lane) before any is written. */
#include "cuda_internal.h"

namespace {

constexpr int kThreads = 256;
constexpr int kNormWarpsPerBlock = 4;

__device__ __forceinline__ float unary(int kind, float x, float scale)
{
    switch (kind) {
    case GDN_OP_SCALE: return x * scale;
    case GDN_OP_SILU: return x / (1.0f + expf(-x));
    case GDN_OP_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case GDN_OP_SOFTPLUS: return x > 20.0f ? x : log1pf(expf(x));
    default: return expf(x); /* GDN_OP_EXP */
    }
}

/* a.count = elements of dst. add/mul: b repeats over a (index i of dim d reads b at i % b.ne[d]). */
__global__ void elementwise_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &x = a.src[0], &b = a.src[1], &dst = a.dst;
    const bool binary = a.kind == GDN_OP_ADD || a.kind == GDN_OP_MUL;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < a.count; e += stride) {
        int64_t rest = e, off_x = 0, off_b = 0, off_dst = 0;
#pragma unroll
        for (int i = 0; i < GDN_MAX_DIMS; i++) {
            const int64_t idx = rest % dst.ne[i];
            rest /= dst.ne[i];
            off_x += idx * x.nb[i];
            off_dst += idx * dst.nb[i];
            if (binary)
                off_b += (idx % b.ne[i]) * b.nb[i];
        }
        const float v = *(const float *)(x.data + off_x);
        float y;
        if (binary) {
            const float w = *(const float *)(b.data + off_b);
            y = a.kind == GDN_OP_ADD ? __fadd_rn(v, w) : __fmul_rn(v, w);
        } else {
            y = unary(a.kind, v, a.scale);
        }
        *(float *)(dst.data + off_dst) = y;
    }
}

/* a.count = rows of x (product of ne[1..5]); one warp per row. */
__global__ void norm_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &x = a.src[0], &w = a.src[1], &z = a.src[2], &dst = a.dst;
    const bool gated = a.kind == GDN_OP_RMS_NORM_GATED;
    const int lane = threadIdx.x & 31;
    const int64_t D = x.ne[0];
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < a.count; row += warps) {
        int64_t rest = row, off_x = 0, off_z = 0, off_dst = 0;
#pragma unroll
        for (int i = 1; i < GDN_MAX_DIMS; i++) {
            const int64_t idx = rest % x.ne[i];
            rest /= x.ne[i];
            off_x += idx * x.nb[i];
            off_dst += idx * dst.nb[i];
            if (gated)
                off_z += idx * z.nb[i];
        }
        const char *in = x.data + off_x;
        float sum = 0.0f;
        for (int64_t i = lane; i < D; i += 32) {
            const float v = *(const float *)(in + i * x.nb[0]);
            sum = __fmaf_rn(v, v, sum);
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1)
            sum = __fadd_rn(sum, __shfl_xor_sync(0xFFFFFFFFu, sum, offset));
        const float denominator = a.kind == GDN_OP_L2_NORM ? __fsqrt_rn(__fadd_rn(sum, a.eps))
                                                            : __fsqrt_rn(__fadd_rn(__fdiv_rn(sum, (float)D), a.eps));
        const float scale = __fdiv_rn(1.0f, denominator);
        char *out = dst.data + off_dst;
        for (int64_t i = lane; i < D; i += 32) {
            float y = __fmul_rn(*(const float *)(in + i * x.nb[0]), scale);
            if (gated) {
                const float zi = *(const float *)(z.data + off_z + i * z.nb[0]);
                const float wi = *(const float *)(w.data + i * w.nb[0]);
                y = __fmul_rn(__fmul_rn(y, wi), __fdiv_rn(zi, __fadd_rn(1.0f, expf(-zi))));
            }
            *(float *)(out + i * dst.nb[0]) = y;
        }
    }
}

/* gdn_gates: a.count = elements of g; every value through `unary` and the same rounded add and
 * multiply as the chain of elementwise kernels it replaces (elementwise_kernel), so the same
 * floats. */
__global__ void gates_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &in_a = a.src[0], &in_b = a.src[1], &dt_bias = a.src[2], &a_log = a.src[3];
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < a.count; e += stride) {
        int64_t rest = e, off_a = 0, off_b = 0, off_g = 0, off_beta = 0;
#pragma unroll
        for (int i = 0; i < GDN_MAX_DIMS; i++) {
            const int64_t idx = rest % a.dst.ne[i];
            rest /= a.dst.ne[i];
            off_a += idx * in_a.nb[i], off_b += idx * in_b.nb[i];
            off_g += idx * a.dst.nb[i], off_beta += idx * a.dst1.nb[i];
        }
        const int64_t h = e % a.dst.ne[0];
        const float x =
            __fadd_rn(*(const float *)(in_a.data + off_a), *(const float *)(dt_bias.data + h * dt_bias.nb[0]));
        const float neg_a = unary(GDN_OP_SCALE, unary(GDN_OP_EXP, *(const float *)(a_log.data + h * a_log.nb[0]), 0.0f),
                                  -1.0f);
        *(float *)(a.dst.data + off_g) = __fmul_rn(unary(GDN_OP_SOFTPLUS, x, 0.0f), neg_a);
        *(float *)(a.dst1.data + off_beta) = unary(GDN_OP_SIGMOID, *(const float *)(in_b.data + off_b), 0.0f);
    }
}

} // namespace

gdn_status gdn_cuda_gates(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    args.count = 1;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        args.count *= args.dst.ne[i];
    return gdn_cuda_launch_op(context, gates_kernel, gdn_cuda_blocks(context, args.count, kThreads), kThreads, args,
                              "gdn_gates kernel launch");
}

gdn_status gdn_cuda_elementwise(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    args.count = 1;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        args.count *= args.dst.ne[i];
    return gdn_cuda_launch_op(context, elementwise_kernel, gdn_cuda_blocks(context, args.count, kThreads), kThreads,
                              args, "elementwise kernel launch");
}

gdn_status gdn_cuda_norm(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    args.count = 1;
    for (int i = 1; i < GDN_MAX_DIMS; i++)
        args.count *= args.src[0].ne[i];
    return gdn_cuda_launch_op(context, norm_kernel, gdn_cuda_blocks(context, args.count, kNormWarpsPerBlock),
                              kNormWarpsPerBlock * 32, args, "norm kernel launch");
}
