/* ops_cuda_matmul.cu: the CUDA mul_mat, dst[..., m, n] = sum_k w[n][k] x[..., m, k], w F32 or
 * BF16, x and dst F32, any strides. No cuBLAS: its algorithm (split-K, tile order) may change
 * with M, which would break batch invariance.
 *
 * One warp per output element. Lane l accumulates k = l, l + 32, ... with __fmaf_rn, then a
 * butterfly of __shfl_xor_sync (offsets 16 .. 1) sums the lanes; lane 0 writes. The order
 * depends on K only, so a row of x gives the same bits whatever M is. Warps of a block take
 * consecutive n of one row of x, so that row is read from L1/L2 after the first warp; for decode
 * (M = 1) each warp streams one row of w, coalesced when w is packed.
 * Correctness and invariance first: a tiled version reusing w across rows of x is future work. */
#include "cuda_internal.h"

namespace {

constexpr int kWarpsPerBlock = 8;

/* a.count = elements of dst. */
__global__ void mul_mat_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &w = a.src[0], &x = a.src[1], &dst = a.dst;
    const int lane = threadIdx.x & 31;
    const int64_t K = w.ne[0];
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t e = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; e < a.count; e += warps) {
        const int64_t n = e % dst.ne[0];
        int64_t rest = e / dst.ne[0], off_x = 0, off_dst = n * dst.nb[0];
#pragma unroll
        for (int i = 1; i < GDN_MAX_DIMS; i++) {
            const int64_t idx = rest % dst.ne[i];
            rest /= dst.ne[i];
            off_x += idx * x.nb[i];
            off_dst += idx * dst.nb[i];
        }
        const char *x_row = x.data + off_x;
        const int64_t w_row = n * w.nb[1];
        float sum = 0.0f;
        for (int64_t k = lane; k < K; k += 32)
            sum = __fmaf_rn(gdn_cuda_load(w, w_row + k * w.nb[0]), *(const float *)(x_row + k * x.nb[0]), sum);
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1)
            sum = __fadd_rn(sum, __shfl_xor_sync(0xFFFFFFFFu, sum, offset));
        if (lane == 0)
            *(float *)(dst.data + off_dst) = sum;
    }
}

} // namespace

gdn_status gdn_cuda_mul_mat(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    args.count = 1;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        args.count *= args.dst.ne[i];
    return gdn_cuda_launch_op(context, mul_mat_kernel, gdn_cuda_blocks(context, args.count, kWarpsPerBlock),
                              kWarpsPerBlock * 32, args, "mul_mat kernel launch");
}
