/* ops_cuda_matmul.cu: the CUDA mul_mat, dst[..., m, n] = sum_k w[n][k] x[..., m, k], w F32 or
 * BF16, x and dst F32, any byte strides (rows m of x flattened over dims 1..). No cuBLAS: its
 * algorithm (split-K, tile order) may change with M, which would break batch invariance.
 *
 * Arithmetic contract: each output is computed in an order fixed by K and w's dtype alone, so a
 * row of x gives the same bits whatever M, the other rows, the grid or the tile shape are.
 *
 * BF16 w, on tensor cores. Each x is split into three BF16 terms: x0 = rn(x), x1 = rn(x - x0),
 * x2 = rn(x - x0 - x1). x - x0 is exact in FP32 with at most 16 significant bits and x - x0 - x1
 * is exact with at most 8, so x2 is exact and x0 + x1 + x2 = x (BF16 has FP32's exponent range;
 * only |x| < 2^-110 loses bits, all below 2^-133). A BF16 w times a BF16 term is exact in FP32,
 * so only the FP32 accumulation inside the MMA rounds, as in an FP32 dot product. (x = +-Inf,
 * or |x| > 3.39e38, which rounds to Inf in BF16, gives NaN, not +-Inf.) The MMA adds its 16
 * exact products and the accumulator in FP32 with its own (deterministic) rounding.
 *
 * Order per output: K is cut into segments of 512 (the last shorter). A segment is its 32-k
 * chunks in order; a chunk is mma_term for x0, then x1, then x2, each two mma.sync m16n8k16
 * steps (k 0-15, then 16-31 of the chunk), all into one FP32 accumulator that starts at 0. The
 * output is the segment sums added in order, p0 + p1 + ..., with __fadd_rn. Segments exist for
 * decode: one row of x cannot hide a chain of 3K/16 dependent MMAs (~25 cycles each, 5 us at
 * K 2048), so its warps run the segments side by side. Two kernels, one arithmetic:
 *   mul_mat_mma_decode_kernel  up to 8 rows of x (as the 8 columns of B): a block's warps share
 *                              16 or 64 weight rows and take a segment each;
 *   mul_mat_mma_kernel         more rows: tiles through shared memory (cp.async), each warp
 *                              16*RA weight rows x 32 rows of x, each x split once per block;
 *                              a segment's sum is folded into dst (dst = p0, dst += p1, ...).
 * Both use split_x2, ldmatrix_x4 and mma_term, so they give the same bits (tested bitwise
 * against each other across M, tiles and row subsets, and in test_ops).
 *
 * F32 w, on CUDA cores: lane l of a warp accumulates k = l, l + 32, ... with __fmaf_rn(w, x, sum)
 * from 0, then a butterfly of __shfl_xor_sync (offsets 16 .. 1, __fadd_rn) sums the lanes. A warp
 * owns NR weight rows and walks rows of x in tiles of TM (weights loaded once per k serve TM
 * rows); below 4 rows one warp per output keeps more loads in flight. Same bits either way. */
#include "cuda_internal.h"

#include <stdint.h>

namespace {

/* ---------------------------------------------------------------------------------------------
 * BF16 w: the arithmetic both tensor-core kernels share
 * ------------------------------------------------------------------------------------------- */

constexpr int kSegmentChunks = 16; /* 32-k chunks in a segment: 512 k */

/* Two floats as packed BF16 (lo in the low half), round to nearest even. */
__device__ __forceinline__ uint32_t bf16x2_rn(float lo, float hi)
{
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

/* Two consecutive x as their three BF16 terms, each packed (lower k in the low half). The
 * subtractions are exact (see the file header). */
__device__ __forceinline__ void split_x2(float2 x, uint32_t t[3])
{
#pragma unroll
    for (int term = 0; term < 3; term++) {
        t[term] = bf16x2_rn(x.x, x.y);
        x.x = __fsub_rn(x.x, __uint_as_float(t[term] << 16));
        x.y = __fsub_rn(x.y, __uint_as_float(t[term] & 0xFFFF0000u));
    }
}

/* c += A B, A 16 weight rows x 16 k (row major), B 16 k x 8 rows of x, FP32 accumulate. */
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Four 8 x 8 BF16 matrices from shared memory, in MMA fragment order: lane l gives the address
 * of row l % 8 of matrix l / 8 (16 bytes). */
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((unsigned)__cvta_generic_to_shared(row)));
}

/* Shared-memory rows of 32 BF16 (64 bytes, one chunk of k): 16-byte piece p of row r lies at
 * piece p ^ ((r / 2) % 4), so the 8 rows one ldmatrix reads fall on 8 different 4-bank groups. */
__device__ __forceinline__ int piece_at(int row, int piece) { return 64 * row + 16 * (piece ^ ((row >> 1) & 3)); }

/* One chunk (32 k, two MMA steps of 16) of one term for RA x CB tiles of 16 x 8 outputs, in the
 * standard fragment layout: a[i][s] is weight-row tile i at k 16s .. 16s+15 (ldmatrix of rows
 * 0-7 and 8-15 at pieces 2s and 2s+1); b[j] = {b0, b1} of step 0, then of step 1, for 8 rows of x
 * (lane (g, t) = (lane / 4, lane % 4) holds x row g at k 16s + 2t, +1 and 16s + 8 + 2t, +1).
 * c[i][j][0..1]: weight row g, rows 2t and 2t+1 of x; [2..3]: weight row g + 8. Per tile step 0
 * then step 1; a chunk is this for x0, then x1, then x2, in every kernel. The tiles are innermost
 * so that consecutive MMAs are independent (dependent MMAs issue one per ~25 cycles). */
template <int RA, int CB>
__device__ __forceinline__ void mma_term(float (&c)[RA][CB][4], const uint32_t (&a)[RA][2][4],
                                         const uint32_t (&b)[CB][4])
{
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
        for (int i = 0; i < RA; i++)
#pragma unroll
            for (int j = 0; j < CB; j++)
                mma_bf16(c[i][j], a[i][s], b[j][2 * s], b[j][2 * s + 1]);
}

/* 1 when every fragment load can be one aligned 16-byte load: w rows packed, 16-byte aligned,
 * K % 8 == 0 (so 8 k never straddle K); x rows packed and 16-byte aligned. Either way the same
 * values reach the same registers; only the load instructions differ. */
__device__ __forceinline__ bool vector_loads(const gdn_cuda_view &w, const gdn_cuda_view &x)
{
    bool ok = w.nb[0] == 2 && w.ne[0] % 8 == 0 && (uintptr_t)w.data % 16 == 0 && w.nb[1] % 16 == 0 &&
              x.nb[0] == 4 && (uintptr_t)x.data % 16 == 0;
#pragma unroll
    for (int d = 1; d < GDN_MAX_DIMS; d++)
        ok = ok && (x.ne[d] == 1 || x.nb[d] % 16 == 0);
    return ok;
}

/* 8 BF16 of a weight row from k (k % 8 == 0) as 4 packed words, element by element (the path
 * for w that cp.async cannot copy); zeros past K or for row NULL. */
__device__ __forceinline__ uint4 load_w8(const gdn_cuda_view &w, const char *row, int64_t k)
{
    const int64_t K = w.ne[0];
    if (row == nullptr || k >= K)
        return make_uint4(0, 0, 0, 0);
    uint32_t h[8];
#pragma unroll
    for (int e = 0; e < 8; e++)
        h[e] = k + e < K ? *(const unsigned short *)(row + (k + e) * w.nb[0]) : 0u;
    return make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
}

/* 4 F32 of a row of x from k (k % 4 == 0); zeros past K or for row NULL. */
__device__ __forceinline__ float4 load_x4(const gdn_cuda_view &x, const char *row, int64_t k, bool vec)
{
    const int64_t K = x.ne[0];
    if (row == nullptr || k >= K)
        return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (vec)
        return __ldg((const float4 *)(row + k * 4));
    float v[4];
#pragma unroll
    for (int e = 0; e < 4; e++)
        v[e] = k + e < K ? *(const float *)(row + (k + e) * x.nb[0]) : 0.0f;
    return make_float4(v[0], v[1], v[2], v[3]);
}

/* 2 F32 of a row of x from k (k even); zeros past K or for row NULL. */
__device__ __forceinline__ float2 load_x2(const gdn_cuda_view &x, const char *row, int64_t k, bool vec)
{
    const int64_t K = x.ne[0];
    if (row == nullptr || k >= K)
        return make_float2(0.0f, 0.0f);
    if (vec)
        return __ldg((const float2 *)(row + k * 4));
    return make_float2(*(const float *)(row + k * x.nb[0]), k + 1 < K ? *(const float *)(row + (k + 1) * x.nb[0]) : 0.0f);
}

/* Rows of x: dims 1.. of dst (x has the same counts there). */
__device__ __forceinline__ int64_t rows_of(const gdn_cuda_view &dst)
{
    int64_t rows = 1;
#pragma unroll
    for (int d = 1; d < GDN_MAX_DIMS; d++)
        rows *= dst.ne[d];
    return rows;
}

/* Byte offsets of row m in x and in dst; both -1 for m past the rows. */
__device__ __forceinline__ void row_offsets(const gdn_cuda_view &x, const gdn_cuda_view &dst, int64_t m,
                                            int64_t *x_off, int64_t *dst_off)
{
    int64_t ox = 0, od = 0;
#pragma unroll
    for (int d = 1; d < GDN_MAX_DIMS; d++) {
        const int64_t idx = m % dst.ne[d];
        m /= dst.ne[d];
        ox += idx * x.nb[d];
        od += idx * dst.nb[d];
    }
    *x_off = m == 0 ? ox : -1; /* what is left of m is 0 exactly for rows inside the view */
    *dst_off = m == 0 ? od : -1;
}

/* cp.async helpers: 16 bytes global -> shared, `valid` 0 fills zeros (src size 0). */
__device__ __forceinline__ void cp_async16(void *to, const void *from, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"((unsigned)__cvta_generic_to_shared(to)),
                 "l"(from), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int Pending> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;" ::"n"(Pending) : "memory");
}

/* ---------------------------------------------------------------------------------------------
 * BF16 w, up to 8 rows of x (decode)
 * ------------------------------------------------------------------------------------------- */

constexpr int kXAhead = 4;         /* chunks of x held in registers ahead of use (L2 latency) */
constexpr int kDecodeMaxWarps = 8; /* segments run side by side in a block */

/* Shared memory of the decode kernel: per warp a ring of `slots` chunks of 16*RA rows x 64
 * bytes of w (slots - 1 ahead: 5 KB of w in flight per warp at RA 1, 8 KB at RA 4); a segment's
 * sums (RA x 32 lanes x 4 floats) go to the warp's first slot once its chunks are done. Sized to
 * stay within the 48 KB a launch gets without cudaFuncSetAttribute, so decode launches make no
 * extra runtime call (a decode step is bound by launches). */
template <int RA> struct decode_shape {
    static constexpr int slots = RA == 1 ? 6 : 3, slot_bytes = RA * 16 * 64, warp_bytes = slots * slot_bytes;
    static constexpr int max_warps = RA == 1 ? kDecodeMaxWarps : 4;
    static_assert(warp_bytes * max_warps <= 48 * 1024, "decode shared memory over the default 48 KB");
};

/* Block b owns weight rows 16 RA b .. + 16 RA; all rows of x are the 8 columns of B (missing
 * ones zero). Warp i of the block runs segments i, i + warps, ...; a round's sums meet in shared
 * memory and warp 0 adds them in segment order. Each warp streams its chunks of w into its own
 * ring with cp.async, lane (g, t) copying piece t of rows 16i + g and 16i + g + 8; x comes to
 * registers kXAhead chunks ahead and is split there, once for the RA tiles. blockDim.x = 32 x
 * min(segments, decode_shape<RA>::max_warps); dynamic shared memory warps x warp_bytes. */
template <int RA>
__global__ void __launch_bounds__(32 * kDecodeMaxWarps) mul_mat_mma_decode_kernel(gdn_cuda_op_args a)
{
    using D = decode_shape<RA>;
    extern __shared__ __align__(16) unsigned char smem[];
    /* Weights do not depend on the previous grid: the first ring fills are issued before waiting
     * for it (under programmatic dependent launch they overlap its tail), x is read after. */
    bool waited = false;
    const gdn_cuda_view &w = a.src[0], &x = a.src[1], &dst = a.dst;
    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    unsigned char *const ring = smem + warp * D::warp_bytes;
    float4 *const part = (float4 *)ring; /* [RA][32]: this warp's sums of a segment, after its chunks */
    const int64_t K = w.ne[0], N = dst.ne[0];
    const int64_t chunks = K > 32 ? (K + 31) / 32 : 1, segments = (chunks + kSegmentChunks - 1) / kSegmentChunks;
    const bool vec = vector_loads(w, x);
    int64_t x_off, d_off[2], unused;
    row_offsets(x, dst, g, &x_off, &unused);
    row_offsets(x, dst, 2 * t, &unused, &d_off[0]);
    row_offsets(x, dst, 2 * t + 1, &unused, &d_off[1]);
    const char *x_row = x_off >= 0 ? x.data + x_off : nullptr;

    for (int64_t n0 = (int64_t)blockIdx.x * 16 * RA; n0 < N; n0 += (int64_t)gridDim.x * 16 * RA) {
        const char *rows[RA][2];
#pragma unroll
        for (int i = 0; i < RA; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int64_t n = n0 + 16 * i + 8 * h + g;
                rows[i][h] = n < N ? w.data + n * w.nb[1] : nullptr;
            }
        /* This lane's pieces of the chunk at k0 into ring slot `slot` (plain loads where not vec). */
        auto fill = [&](int64_t k0, int slot) {
            const int64_t k = k0 + 8 * t;
#pragma unroll
            for (int i = 0; i < RA; i++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    unsigned char *to = ring + slot * D::slot_bytes + 1024 * i + piece_at(g + 8 * h, t);
                    const char *row = rows[i][h];
                    if (vec)
                        cp_async16(to, row && k < K ? row + 2 * k : w.data, row && k < K);
                    else
                        *(uint4 *)to = load_w8(w, row, k);
                }
        };
        /* x of row g for the chunk at k0: k 2t + {0, 8, 16, 24} and the next (B fragment order). */
        auto load_x = [&](int64_t k0, float2 (&v)[4]) {
#pragma unroll
            for (int q = 0; q < 4; q++)
                v[q] = load_x2(x, x_row, k0 + 8 * q + 2 * t, vec);
        };
        float total[RA][4];
        for (int64_t s0 = 0; s0 < segments; s0 += warps) {
            float c[RA][1][4];
#pragma unroll
            for (int i = 0; i < RA; i++)
#pragma unroll
                for (int r = 0; r < 4; r++)
                    c[i][0][r] = 0.0f;
            const int64_t seg = s0 + warp, left = chunks - seg * kSegmentChunks; /* chunks from its first */
            const int count = seg < segments ? (int)(left < kSegmentChunks ? left : kSegmentChunks) : 0;
            const int64_t k_begin = seg * kSegmentChunks * 32; /* chunk i of the segment is at k_begin + 32 i */
            for (int i = 0; i < D::slots - 1; i++) {
                if (i < count)
                    fill(k_begin + 32 * i, i);
                cp_async_commit();
            }
            if (!waited) { /* block-uniform: the first segment round of the block's first rows */
                gdn_cuda_grid_wait();
                waited = true;
            }
            float2 xv[kXAhead][4];
#pragma unroll
            for (int u = 0; u < kXAhead; u++)
                load_x(k_begin + 32 * u, xv[u]);
            for (int i0 = 0; i0 < count; i0 += kXAhead)
#pragma unroll
                for (int u = 0; u < kXAhead; u++) {
                    const int i = i0 + u;
                    if (i >= count) /* warp-uniform */
                        break;
                    cp_async_wait<D::slots - 2>();
                    __syncwarp(); /* every lane's pieces of chunk i are in */
                    uint32_t wa[RA][2][4];
#pragma unroll
                    for (int r = 0; r < RA; r++)
#pragma unroll
                        for (int s = 0; s < 2; s++)
                            ldmatrix_x4(wa[r][s], ring + (i % D::slots) * D::slot_bytes + 1024 * r +
                                                      piece_at(lane & 15, 2 * s + (lane >> 4)));
                    if (i + D::slots - 1 < count) /* the slot read one chunk ago: all its reads are done */
                        fill(k_begin + 32 * (i + D::slots - 1), (i + D::slots - 1) % D::slots);
                    cp_async_commit();
                    uint32_t xb[3][1][4];
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        uint32_t terms[3];
                        split_x2(xv[u][q], terms);
#pragma unroll
                        for (int term = 0; term < 3; term++)
                            xb[term][0][q] = terms[term];
                    }
                    load_x(k_begin + 32 * (i + kXAhead), xv[u]);
#pragma unroll
                    for (int term = 0; term < 3; term++)
                        mma_term<RA, 1>(c, wa, xb[term]);
                }
            __syncwarp(); /* the ring's last reads are done (its copies were waited for) */
#pragma unroll
            for (int i = 0; i < RA; i++)
                part[32 * i + lane] = make_float4(c[i][0][0], c[i][0][1], c[i][0][2], c[i][0][3]);
            __syncthreads();
            for (int j = 0; warp == 0 && j < warps && s0 + j < segments; j++)
#pragma unroll
                for (int i = 0; i < RA; i++) {
                    const float4 p = ((const float4 *)(smem + j * D::warp_bytes))[32 * i + lane];
                    const float v[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
                    for (int r = 0; r < 4; r++)
                        total[i][r] = s0 + j == 0 ? v[r] : __fadd_rn(total[i][r], v[r]);
                }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < RA; i++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int64_t n = n0 + 16 * i + g + 8 * (r >> 1), od = d_off[r & 1];
                if (warp == 0 && n < N && od >= 0)
                    *(float *)(dst.data + od + n * dst.nb[0]) = total[i][r];
            }
    }
    /* Only now: a dependent grid launched earlier would park its blocks, with their shared
     * memory, on the SMs this grid's later blocks still need. */
    gdn_cuda_grid_release();
}

/* ---------------------------------------------------------------------------------------------
 * BF16 w, more rows of x: tiles through shared memory
 * ------------------------------------------------------------------------------------------- */

/* A block tile: WW x WX warps, each 16*RA weight rows x 32 rows of x (RA x 4 MMA tiles). Dynamic
 * shared memory, in order:
 *   w stages  [stages][rows_w][64 B]  chunk ch in stage ch % stages, by cp.async, stages - 1 ahead;
 *   x planes  [2][3][rows_x][64 B]    the split of chunk ch (terms x0, x1, x2 as BF16) in buffer
 *                                     ch % 2, written by the block one chunk ahead: each x is
 *                                     split once per block, not once per warp that reads it;
 *   offsets   [2][rows_x] int64       the tile's rows of x in x and in dst, -1 past the rows.
 * Rows of 64 bytes, swizzled (piece_at), read with ldmatrix. x is read to registers one chunk
 * ahead of its split. The block count and the loops over tiles let any grid size work. */
template <int RA, int WW, int WX> struct mma_tile {
    static constexpr int threads = 32 * WW * WX, rows_w = 16 * RA * WW, rows_x = 32 * WX;
    static constexpr int fit = 32768 / (rows_w * 64), stages = fit < 3 ? 3 : fit > 8 ? 8 : fit;
    static constexpr int x_pieces = rows_x * 8 / threads; /* 16-byte pieces of x a thread moves per chunk */
    static constexpr int w_bytes = stages * rows_w * 64, plane_bytes = rows_x * 64;
    static constexpr int smem = w_bytes + 6 * plane_bytes + rows_x * 16;
};

template <int RA, int WW, int WX>
__global__ void __launch_bounds__(32 * WW * WX, 12 / (WW * WX)) mul_mat_mma_kernel(gdn_cuda_op_args a)
{
    using T = mma_tile<RA, WW, WX>;
    constexpr int S = T::stages, CB = 4, P = T::x_pieces, PW = T::rows_w * 4 / T::threads;
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned char *const planes = smem + T::w_bytes;
    int64_t *const x_off = (int64_t *)(planes + 6 * T::plane_bytes), *const d_off = x_off + T::rows_x;
    gdn_cuda_grid_wait(); /* released at the end, as the decode kernel */
    const gdn_cuda_view &w = a.src[0], &x = a.src[1], &dst = a.dst;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wr = (warp % WW) * 16 * RA, xr = (warp / WW) * 32; /* the warp's first rows in the tile */
    const int64_t K = w.ne[0], N = dst.ne[0], R = rows_of(dst);
    const int64_t chunks = K > 32 ? (K + 31) / 32 : 1, w_tiles = (N + T::rows_w - 1) / T::rows_w;
    const int64_t tiles = w_tiles * ((R + T::rows_x - 1) / T::rows_x);
    const bool vec = vector_loads(w, x);

    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int64_t n0 = tile % w_tiles * T::rows_w, m0 = tile / w_tiles * T::rows_x;
        __syncthreads(); /* the previous tile is done with the offsets and shared buffers */
        for (int i = tid; i < T::rows_x; i += T::threads)
            row_offsets(x, dst, m0 + i, &x_off[i], &d_off[i]);
        __syncthreads();

        /* This thread's pieces of a chunk, the same rows every chunk: w piece m is q = tid + m
         * threads, row q / 4 = tid / 4 + m threads / 4, k 8 (q % 4) .. of the chunk; x piece m
         * is q = tid + m threads, row q / 8, k 4 (q % 8) ... Rows past N or R load zeros. */
        const int64_t w_row0 = n0 + tid / 4;
        const char *const w_base = w.data + w_row0 * w.nb[1];
        auto load_w = [&](int64_t k0, int stage) {
            unsigned char *to = smem + stage * (T::rows_w * 64);
            const int64_t k = k0 + 8 * (tid & 3);
#pragma unroll
            for (int m = 0; m < PW; m++) {
                const int q = tid + m * T::threads;
                const char *row = w_row0 + m * (T::threads / 4) < N ? w_base + m * (T::threads / 4) * w.nb[1] : nullptr;
                if (vec)
                    cp_async16(to + piece_at(q >> 2, q & 3), row && k < K ? row + 2 * k : w.data, row && k < K);
                else
                    *(uint4 *)(to + piece_at(q >> 2, q & 3)) = load_w8(w, row, k);
            }
        };
        auto load_x = [&](int64_t k0, float4 (&v)[P]) {
#pragma unroll
            for (int m = 0; m < P; m++) {
                const int64_t off = x_off[(tid + m * T::threads) / 8];
                v[m] = load_x4(x, off >= 0 ? x.data + off : nullptr, k0 + 4 * (tid & 7), vec);
            }
        };
        auto split = [&](const float4 (&v)[P], int buf) {
#pragma unroll
            for (int m = 0; m < P; m++) {
                const int q = tid + m * T::threads, at = piece_at(q >> 3, (q & 7) >> 1) + 8 * (q & 1);
                uint32_t lo[3], hi[3];
                split_x2(make_float2(v[m].x, v[m].y), lo);
                split_x2(make_float2(v[m].z, v[m].w), hi);
#pragma unroll
                for (int term = 0; term < 3; term++)
                    *(uint2 *)(planes + (3 * buf + term) * T::plane_bytes + at) = make_uint2(lo[term], hi[term]);
            }
        };

        float c[RA][CB][4];
#pragma unroll
        for (int i = 0; i < RA; i++)
#pragma unroll
            for (int j = 0; j < CB; j++)
#pragma unroll
                for (int r = 0; r < 4; r++)
                    c[i][j][r] = 0.0f;
        for (int s = 0; s < S - 1; s++) {
            if (s < chunks)
                load_w(32 * s, s);
            cp_async_commit();
        }
        float4 xv[P];
        load_x(0, xv);
        split(xv, 0);
        load_x(32, xv);
        int rd = 0, wt = S - 1; /* stage read now, stage written next */
        for (int64_t ch = 0; ch < chunks; ch++) {
            cp_async_wait<S - 2>();
            __syncthreads(); /* w of chunk ch and its x planes are in; chunk ch - 1's buffers are free */
            if (ch + S - 1 < chunks)
                load_w(32 * (ch + S - 1), wt);
            cp_async_commit();
            if (ch + 1 < chunks) { /* split chunk ch + 1 now, fetch chunk ch + 2 */
                split(xv, (int)((ch + 1) & 1));
                load_x(32 * (ch + 2), xv);
            }

            const unsigned char *ws = smem + rd * (T::rows_w * 64), *xs = planes + 3 * (ch & 1) * T::plane_bytes;
            uint32_t wa[RA][2][4];
#pragma unroll
            for (int i = 0; i < RA; i++)
#pragma unroll
                for (int s = 0; s < 2; s++)
                    ldmatrix_x4(wa[i][s], ws + piece_at(wr + 16 * i + (lane & 15), 2 * s + (lane >> 4)));
#pragma unroll
            for (int term = 0; term < 3; term++) {
                uint32_t xb[CB][4];
#pragma unroll
                for (int j = 0; j < CB; j++)
                    ldmatrix_x4(xb[j], xs + term * T::plane_bytes + piece_at(xr + 8 * j + (lane & 7), lane >> 3));
                mma_term<RA, CB>(c, wa, xb);
            }
            rd = rd + 1 == S ? 0 : rd + 1;
            wt = wt + 1 == S ? 0 : wt + 1;

            /* End of a segment: fold its sums into dst (the first one is stored). */
            if ((ch + 1) % kSegmentChunks == 0 || ch + 1 == chunks) {
                const bool first = ch < kSegmentChunks;
#pragma unroll
                for (int i = 0; i < RA; i++)
#pragma unroll
                    for (int j = 0; j < CB; j++)
#pragma unroll
                        for (int r = 0; r < 4; r++) {
                            const int64_t n = n0 + wr + 16 * i + g + 8 * (r >> 1);
                            const int64_t od = d_off[xr + 8 * j + 2 * t + (r & 1)];
                            if (n < N && od >= 0) {
                                float *p = (float *)(dst.data + od + n * dst.nb[0]);
                                *p = first ? c[i][j][r] : __fadd_rn(*p, c[i][j][r]);
                            }
                            c[i][j][r] = 0.0f;
                        }
            }
        }
    }
    gdn_cuda_grid_release();
}

/* ---------------------------------------------------------------------------------------------
 * F32 w: CUDA cores
 * ------------------------------------------------------------------------------------------- */

constexpr int kWarpsPerBlock = 8;

/* A warp owns NR consecutive weight rows and a run of rows of x (all of them unless N is too
 * small to fill the GPU, then the rows are cut into `chunks` runs whose warps are neighbours and
 * share w through L1/L2), walked in tiles of TM: per k of its lane it loads NR weights and TM x
 * once and does NR x TM fmas into independent sums, each in the order of the file header.
 * a.count = ceil(N / NR) groups x chunks; work item e: group e / chunks, run e % chunks. */
template <int NR, int TM>
__global__ void mul_mat_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &w = a.src[0], &x = a.src[1], &dst = a.dst;
    const int lane = threadIdx.x & 31;
    const int64_t K = w.ne[0], N = dst.ne[0], R = rows_of(dst);
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
            for (int j = 0; j < TM; j++)
                row_offsets(x, dst, r0 + j < r_end ? r0 + j : r_end - 1, &x_off[j], &dst_off[j]);
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
                for (int i = 0; i < NR; i++)
                    wv[i] = *(const float *)(w.data + w_off[i] + k * w.nb[0]);
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

/* Fewer than 4 rows of x: one warp per output element, the same arithmetic per output as
 * mul_mat_kernel with more warps in flight. a.count = elements of dst. */
__global__ void mul_mat_per_output_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &w = a.src[0], &x = a.src[1], &dst = a.dst;
    const int lane = threadIdx.x & 31;
    const int64_t K = w.ne[0];
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t e = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; e < a.count; e += warps) {
        const int64_t n = e % dst.ne[0];
        int64_t off_x, off_dst;
        row_offsets(x, dst, e / dst.ne[0], &off_x, &off_dst); /* e < count: always a row */
        const char *x_row = x.data + off_x;
        const int64_t w_row = n * w.nb[1];
        float sum = 0.0f;
        for (int64_t k = lane; k < K; k += 32)
            sum = __fmaf_rn(*(const float *)(w.data + w_row + k * w.nb[0]), *(const float *)(x_row + k * x.nb[0]), sum);
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1)
            sum = __fadd_rn(sum, __shfl_xor_sync(0xFFFFFFFFu, sum, offset));
        if (lane == 0)
            *(float *)(dst.data + off_dst + n * dst.nb[0]) = sum;
    }
}

template <int NR, int TM>
gdn_status launch_f32(const gdn_cuda_context *context, const gdn_cuda_op_args &args)
{
    return gdn_cuda_launch_op(context, mul_mat_kernel<NR, TM>, gdn_cuda_blocks(context, args.count, kWarpsPerBlock),
                              kWarpsPerBlock * 32, args, "mul_mat kernel launch");
}

template <int NR>
gdn_status launch_f32_tm(const gdn_cuda_context *context, const gdn_cuda_op_args &args, int64_t rows)
{
    if (rows >= 8)
        return launch_f32<NR, 8>(context, args);
    if (rows >= 4)
        return launch_f32<NR, 4>(context, args);
    if (rows >= 2)
        return launch_f32<NR, 2>(context, args);
    return launch_f32<NR, 1>(context, args);
}

gdn_status mul_mat_f32(const gdn_cuda_context *context, gdn_cuda_op_args args, int64_t N, int64_t rows)
{
    /* Below 4 rows of x one warp per output keeps more loads in flight. */
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
    args.count = groups * chunks;
    if (nr == 4)
        return launch_f32_tm<4>(context, args, rows);
    if (nr == 2)
        return launch_f32_tm<2>(context, args, rows);
    return launch_f32_tm<1>(context, args, rows);
}

/* ---------------------------------------------------------------------------------------------
 * BF16 w: launch shapes
 * ------------------------------------------------------------------------------------------- */

struct mma_config {
    void (*kernel)(gdn_cuda_op_args);
    int rows_w, rows_x, threads, smem;
};
template <int RA, int WW, int WX> constexpr mma_config config_of()
{
    using T = mma_tile<RA, WW, WX>;
    return {mul_mat_mma_kernel<RA, WW, WX>, T::rows_w, T::rows_x, T::threads, T::smem};
}

/* Two tiles: 128 x 64 (4 warps of 64 x 32) does the fewest shared-memory loads and splits per
 * MMA, for large M x N; 64 x 32 (4 warps of 16 x 32) has the shortest path per chunk and the
 * most blocks, for the rest (both measured on an H100 against 8 other shapes). */
constexpr mma_config kMmaConfigs[] = {config_of<4, 2, 2>(), config_of<1, 4, 1>()};

/* One BF16 launch: the tile kernel of config c, or for c NULL the decode kernel with 64 weight
 * rows a block where that still gives 4 warps an SM (and 4 warps hold all segments), else 16.
 * As gdn_cuda_launch_op, with dynamic shared memory (over the 48 KB default only for the large
 * tile, used where the launch is long). */
gdn_status launch_mma(const gdn_cuda_context *context, const gdn_cuda_op_args &args, const mma_config *c, int64_t N,
                      int64_t rows)
{
    const int64_t K = args.src[0].ne[0], chunks = K > 32 ? (K + 31) / 32 : 1;
    const int64_t segments = (chunks + kSegmentChunks - 1) / kSegmentChunks;
    const int64_t sms = context->sm_count > 0 ? context->sm_count : 1;
    const bool wide = segments <= decode_shape<4>::max_warps && (N + 63) / 64 * segments >= 4 * sms;
    const int64_t max_warps = wide ? decode_shape<4>::max_warps : decode_shape<1>::max_warps;
    const int warps = (int)(segments < max_warps ? segments : max_warps);
    int64_t blocks = c ? (N + c->rows_w - 1) / c->rows_w * ((rows + c->rows_x - 1) / c->rows_x)
                       : (N + (wide ? 63 : 15)) / (wide ? 64 : 16);
    blocks = blocks > 0x7FFFFFFF ? 0x7FFFFFFF : blocks; /* the kernels loop over the rest */
    void (*kernel)(gdn_cuda_op_args) = c ? c->kernel : wide ? mul_mat_mma_decode_kernel<4> : mul_mat_mma_decode_kernel<1>;
    const int smem = c ? c->smem : warps * (wide ? decode_shape<4>::warp_bytes : decode_shape<1>::warp_bytes);
    if (smem > 48 * 1024) {
        const gdn_status status = gdn_cuda_check(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "mul_mat shared memory size");
        if (status != GDN_OK)
            return status;
    }
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3((unsigned)blocks);
    config.blockDim = dim3(c ? (unsigned)c->threads : 32u * (unsigned)warps);
    config.dynamicSmemBytes = (size_t)smem;
    config.stream = context->stream;
    config.attrs = &attribute;
    config.numAttrs = context->cc_major >= 9 && context->dependent_launch ? 1 : 0;
    return gdn_cuda_check(cudaLaunchKernelEx(&config, kernel, args), "mul_mat kernel launch");
}

/* Up to 8 rows: the decode kernel (w read once, x as the 8 columns of B), NULL. Otherwise the
 * large tile where it gives at least 2 blocks per SM, else the small one. */
const mma_config *mma_config_for(const gdn_cuda_context *context, int64_t N, int64_t rows)
{
    if (rows <= 8)
        return nullptr;
    const int64_t sms = context->sm_count > 0 ? context->sm_count : 1;
    const mma_config &large = kMmaConfigs[0];
    if ((N + large.rows_w - 1) / large.rows_w * ((rows + large.rows_x - 1) / large.rows_x) >= 2 * sms)
        return &large;
    return &kMmaConfigs[1];
}

} // namespace

gdn_status gdn_cuda_mul_mat(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    const int64_t N = args.dst.ne[0], rows = args.dst.ne[1] * args.dst.ne[2] * args.dst.ne[3] * args.dst.ne[4] *
                                             args.dst.ne[5];
    if (N <= 0 || rows <= 0)
        return GDN_OK;
    /* The kernel depends on w's dtype only; within a dtype every launch shape gives the same bits. */
    if (args.src[0].dtype == GDN_DTYPE_BF16)
        return launch_mma(context, args, mma_config_for(context, N, rows), N, rows);
    return mul_mat_f32(context, args, N, rows);
}
