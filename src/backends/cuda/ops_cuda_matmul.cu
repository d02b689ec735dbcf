/* ops_cuda_matmul.cu: the CUDA mul_mat, dst[..., m, n] = sum_k w[n][k] x[..., m, k], w F32 or
 * BF16, x and dst F32, any strides. No cuBLAS: its algorithm (split-K, tile order) may change
 * with M, which would break batch invariance.
 *
 * Per output element the arithmetic is fixed by K alone: lane l of a warp accumulates
 * k = l, l + 32, ... with __fmaf_rn(w, x, sum) from 0, then a butterfly of __shfl_xor_sync
 * (offsets 16 .. 1, __fadd_rn) sums the lanes. So a row of x gives the same bits whatever M is.
 *
 * Work split: a warp owns NR consecutive weight rows n and a run of rows of x (all of them unless
 * N is too small to fill the GPU, then the rows of x are cut into a few chunks whose warps are
 * neighbours, so they share w through L1/L2). It walks its rows of x in tiles of TM: for each k
 * of its lane it loads the NR weights once and the TM x values once and does NR x TM fmas into
 * NR x TM independent sums, each in the order above; then NR x TM butterflies. A weight row is
 * thus read from DRAM once per call (later tiles hit L1/L2), not once per row of x, and each x
 * value loaded serves NR outputs. NR (1, 2, 4) and TM (1, 2, 4, 8) are picked from N and the
 * number of rows; they change which warp computes an output, never how (checked bitwise against
 * the former one-warp-per-output kernel: F32/BF16 w, strided x, M 1/3/64/256, K 2048/37, N 12288/5).
 * That kernel still serves fewer than 4 rows of x, where it is faster (decode). */
#include "cuda_internal.h"

namespace {

constexpr int kWarpsPerBlock = 8;

/* a.count = ceil(N / NR) groups of weight rows x `chunks` runs of rows of x; chunks is recovered
 * as count / groups. Work item e: group e / chunks, run e % chunks (runs of a group adjacent). */
template <int NR, int TM, bool kBf16>
__global__ void mul_mat_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &w = a.src[0], &x = a.src[1], &dst = a.dst;
    const int lane = threadIdx.x & 31;
    const int64_t K = w.ne[0], N = dst.ne[0];
    const int64_t R = dst.ne[1] * dst.ne[2] * dst.ne[3]; /* rows of x, flattened */
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t e = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; e < a.count; e += warps) {
        const int64_t groups = (N + NR - 1) / NR, chunks = a.count / groups;
        const int64_t group = e / chunks, chunk = e % chunks;
        const int64_t tiles = (R + TM - 1) / TM, run = (tiles + chunks - 1) / chunks * TM;
        const int64_t r_begin = chunk * run, r_end = r_begin + run < R ? r_begin + run : R;
        const int64_t n0 = group * NR;
        int64_t w_off[NR];
#pragma unroll
        for (int i = 0; i < NR; i++) /* past N: row N-1 again, not written */
            w_off[i] = (n0 + i < N ? n0 + i : N - 1) * w.nb[1];
        for (int64_t r0 = r_begin; r0 < r_end; r0 += TM) {
            int64_t x_off[TM], dst_off[TM];
#pragma unroll
            for (int j = 0; j < TM; j++) {
                int64_t rest = r0 + j < r_end ? r0 + j : r_end - 1, ox = 0, od = 0;
#pragma unroll
                for (int d = 1; d < GDN_MAX_DIMS; d++) {
                    const int64_t idx = rest % dst.ne[d];
                    rest /= dst.ne[d];
                    ox += idx * x.nb[d];
                    od += idx * dst.nb[d];
                }
                x_off[j] = ox;
                dst_off[j] = od;
            }
            float sum[NR][TM];
#pragma unroll
            for (int i = 0; i < NR; i++)
#pragma unroll
                for (int j = 0; j < TM; j++)
                    sum[i][j] = 0.0f;
#pragma unroll 2
            for (int64_t k = lane; k < K; k += 32) {
                float wv[NR];
#pragma unroll
                for (int i = 0; i < NR; i++) {
                    const char *p = w.data + w_off[i] + k * w.nb[0];
                    wv[i] = kBf16 ? __uint_as_float((unsigned)*(const unsigned short *)p << 16) : *(const float *)p;
                }
#pragma unroll
                for (int j = 0; j < TM; j++) {
                    const float xv = *(const float *)(x.data + x_off[j] + k * x.nb[0]);
#pragma unroll
                    for (int i = 0; i < NR; i++)
                        sum[i][j] = __fmaf_rn(wv[i], xv, sum[i][j]);
                }
            }
#pragma unroll
            for (int i = 0; i < NR; i++)
#pragma unroll
                for (int j = 0; j < TM; j++) {
                    float s = sum[i][j];
#pragma unroll
                    for (int offset = 16; offset > 0; offset >>= 1)
                        s = __fadd_rn(s, __shfl_xor_sync(0xFFFFFFFFu, s, offset));
                    if (lane == ((i * TM + j) & 31) && n0 + i < N && r0 + j < r_end)
                        *(float *)(dst.data + dst_off[j] + (n0 + i) * dst.nb[0]) = s;
                }
        }
    }
}

/* Few rows of x (decode): one warp per output element, the same arithmetic per output as
 * mul_mat_kernel, with more warps in flight. a.count = elements of dst. */
__global__ void mul_mat_per_output_kernel(gdn_cuda_op_args a)
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

template <int NR, int TM>
gdn_status launch(const gdn_cuda_context *context, const gdn_cuda_op_args &args)
{
    const unsigned blocks = gdn_cuda_blocks(context, args.count, kWarpsPerBlock);
    if (args.src[0].dtype == GDN_DTYPE_BF16)
        return gdn_cuda_launch_op(context, mul_mat_kernel<NR, TM, true>, blocks, kWarpsPerBlock * 32, args,
                                  "mul_mat kernel launch");
    return gdn_cuda_launch_op(context, mul_mat_kernel<NR, TM, false>, blocks, kWarpsPerBlock * 32, args,
                              "mul_mat kernel launch");
}

template <int NR>
gdn_status launch_tm(const gdn_cuda_context *context, const gdn_cuda_op_args &args, int64_t rows)
{
    if (rows >= 8)
        return launch<NR, 8>(context, args);
    if (rows >= 4)
        return launch<NR, 4>(context, args);
    if (rows >= 2)
        return launch<NR, 2>(context, args);
    return launch<NR, 1>(context, args);
}

} // namespace

gdn_status gdn_cuda_mul_mat(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    const int64_t N = args.dst.ne[0], rows = args.dst.ne[1] * args.dst.ne[2] * args.dst.ne[3];
    /* Below 4 rows of x there is little weight reuse to gain and one warp per output keeps more
     * loads in flight (measured on an H100, BF16 w, K 2048, N 12288, M=1: 29 us against 40). */
    if (rows < 4) {
        args.count = N * rows;
        return gdn_cuda_launch_op(context, mul_mat_per_output_kernel,
                                  gdn_cuda_blocks(context, args.count, kWarpsPerBlock), kWarpsPerBlock * 32, args,
                                  "mul_mat kernel launch");
    }
    /* NR: 4 weight rows a warp while that still leaves 8 warps an SM, else 2, else 1. */
    const int64_t sms = context->sm_count > 0 ? context->sm_count : 1;
    const int nr = N >= 4 * 8 * sms ? 4 : N >= 2 * 8 * sms ? 2 : 1;
    const int tm = rows >= 8 ? 8 : rows >= 4 ? 4 : rows >= 2 ? 2 : 1;
    /* Rows of x cut into chunks only when the groups of weight rows leave the GPU short of
     * 16 warps an SM (then a weight row is read by `chunks` neighbouring warps). */
    const int64_t groups = (N + nr - 1) / nr, tiles = (rows + tm - 1) / tm;
    int64_t chunks = groups > 0 ? 16 * sms / groups : 1;
    chunks = chunks < 1 ? 1 : chunks > tiles ? tiles : chunks;
    args.count = N > 0 && rows > 0 ? groups * (chunks < 1 ? 1 : chunks) : 0;
    if (nr == 4)
        return launch_tm<4>(context, args, rows);
    if (nr == 2)
        return launch_tm<2>(context, args, rows);
    return launch_tm<1>(context, args, rows);
}
