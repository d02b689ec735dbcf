/* gdn_cuda_chunk.cuh: what the two kernels of the CUDA chunked form share (gdn_cuda_chunk.cu, the
 * prep kernel and the launches; gdn_cuda_chunk_scan.cuh, the scan kernel): the kernels' argument
 * struct and views, the scratch's layout and swizzles, and the TF32 tensor-core product. Included
 * by gdn_cuda_chunk.cu only (everything in an anonymous namespace). */
#ifndef GDN_CUDA_CHUNK_CUH
#define GDN_CUDA_CHUNK_CUH

#include <stdint.h>

#include "cuda_internal.h"

namespace {

/* Shared memory one block may take on sm_90 (227 KB). */
constexpr size_t kMaxSmem = 232448;

struct chunk_view {
    char *data;
    long long nb[4];
};

struct chunk_args {
    chunk_view q, k, v, g, beta, o, state, final;
    const char *state_index, *final_index;
    long long state_index_nb, final_index_nb;
    int Hk, Hv, interleaved, l2norm;
    int qk_vec, v_vec;          /* 1: k and q (v) rows are 16-byte aligned runs of floats */
    float scale;
    long long n;                /* tokens run in chunks */
    long long c_first, c_count; /* this window's chunks */
    int first_window;           /* 1: the state comes from `state`; 0: from `final` (the last window's) */
    float *scratch;             /* [B][Hv][c_count][chunk_layout::FLOATS] */
    float *scratch_qk;          /* [B][Hk][c_count][chunk_layout::K_FLOATS] */
};

__device__ __forceinline__ float load(const chunk_view &v, long long i0, long long i1, long long i2, long long i3)
{
    return *(const float *)(v.data + i0 * v.nb[0] + i1 * v.nb[1] + i2 * v.nb[2] + i3 * v.nb[3]);
}

__device__ __forceinline__ float *at(const chunk_view &v, long long i0, long long i1, long long i2, long long i3)
{
    return (float *)(v.data + i0 * v.nb[0] + i1 * v.nb[1] + i2 * v.nb[2] + i3 * v.nb[3]);
}

/* Row (i1, i2, i3) of a view, its elements nb[0] apart: the row's offset computed once for the
 * many elements a thread reads from it (prep's element-wise offsets were a quarter of its
 * instructions). */
__device__ __forceinline__ const char *row_of(const chunk_view &v, long long i1, long long i2, long long i3)
{
    return v.data + i1 * v.nb[1] + i2 * v.nb[2] + i3 * v.nb[3];
}

/* x rounded to TF32 (10-bit mantissa; to nearest, ties away from zero, as cvt.rna.tf32 does,
 * without its NaN and overflow tests: two instructions instead of four). */
__device__ __forceinline__ uint32_t tf32_hi(float x)
{
    return (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
}

/* x's high part for three passes: x truncated to TF32 (one instruction; rounding took two, and
 * the splits were half of the three-pass scan's instructions, ncu). x = hi + lo exactly either
 * way; truncated, |lo| < 2^-10 |x| where rounded it was 2^-11, so the terms the passes drop (lo
 * lo, and lo's bits beyond TF32's) stay below 2^-20 of a product. With one pass the factor is
 * rounded (tf32_hi). */
__device__ __forceinline__ uint32_t tf32_split_hi(float x)
{
    return __float_as_uint(x) & 0xffffe000u;
}

/* d += a b for one 16 x 8 tile, k = 8 (PTX mma.m16n8k8, A row-major, B column-major). */
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
{
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int NN>
__device__ __forceinline__ void tiles_zero(float (&acc)[NN][4])
{
#pragma unroll
    for (int n = 0; n < NN; n++)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

/* Column swizzles of the scratch and of the scan's shared memory (rows dense, 16-byte runs kept):
 * element (r, c) of a W-float row-major array sits at column c ^ swz(r). The scan's fragment
 * loads then meet no bank conflicts: swz_row for float2 loads at rows g (Q by D; M and P by C),
 * swz_kmajor for single floats at rows 2t and 2t + 1, columns g (V), and swz_k for K, which the
 * scan loads both ways (float2s at rows 8n + g in step 1, single floats at rows 8i + 2t and
 * 8i + 2t + 1 in step 3): row bits 0-1 XOR bit 2 differ across the four rows g = 0..3 (and 4..7)
 * of a half warp's float2s, and across the four rows 2t (and 2t + 1) of a warp's floats, and
 * depend on r mod 8 only (so a lane's offsets do not change with the tile). */
template <int W>
__host__ __device__ constexpr int swz_row(int r)
{
    return W >= 32 ? (r & 3) << 3 : ((r >> 1) & 1) << 3;
}

template <int W>
__host__ __device__ constexpr int swz_kmajor(int r)
{
    return W >= 32 ? ((r >> 1) & 3) << 3 : ((r >> 1) & 1) << 3;
}

template <int W>
__host__ __device__ constexpr int swz_k(int r)
{
    return W >= 32 ? ((r ^ ((r >> 2) & 1)) & 3) << 3 : swz_kmajor<W>(r);
}

/* The scratch of one chunk, each part as the scan keeps it in shared memory (swizzled), so that
 * the scan moves a chunk's factors in two copies. Per value head (from the chunk's gamma and
 * beta):
 *   M   [C][C]  Tinv diag(beta), lower triangular (swz_row)    P  [C][C]  the output factors (swz_row)
 *   EQ  [C]     e^gamma_t                                       EKD [C]    e^(gamma_C - gamma_t)
 * and per q/k head, shared by the value heads that read it (the scan scales by EQ and EKD):
 *   QH  [C][D]  q_t as the op takes it (normalised, scaled) (swz_row)
 *   KH  [C][D]  k_t likewise (swz_k)
 * Every part starts on 16 bytes. v is not in the scratch: the scan reads the op's own. (Prep
 * used to store W' = -Tinv diag(beta e^gamma) K and U = Tinv diag(beta) V too, C x D each, for
 * Dl = U + W' S^T in the scan; with Dl = M (V - diag(e^gamma) K S^T) formed in the scan, a
 * chunk's scratch per value head is 8 KB instead of 37 KB at D = 128, C = 32: docs/PERF.md.) */
template <int D, int C>
struct chunk_layout {
    static constexpr size_t M = 0, P = (size_t)C * C, EQ = P + (size_t)C * C, EKD = EQ + C;
    static constexpr size_t FLOATS = EKD + C; /* a value head's */
    static constexpr size_t QH = 0, KH = (size_t)C * D, K_FLOATS = 2 * (size_t)C * D; /* a q/k head's */
};

/* The q/k head value head h reads (the op's broadcast rule), and whether h is the first such. */
__device__ __forceinline__ int qk_head(const chunk_args &a, int h)
{
    return a.interleaved ? h / (a.Hv / a.Hk) : h % a.Hk;
}

__device__ __forceinline__ bool first_of_qk_head(const chunk_args &a, int h)
{
    return a.interleaved ? h % (a.Hv / a.Hk) == 0 : h < a.Hk;
}

template <int D, int C>
__device__ __forceinline__ float *chunk_scratch(const chunk_args &a, int b, int h, long long c)
{
    return a.scratch + (((size_t)b * a.Hv + h) * a.c_count + c) * chunk_layout<D, C>::FLOATS;
}

template <int D, int C>
__device__ __forceinline__ float *chunk_scratch_qk(const chunk_args &a, int b, int hk, long long c)
{
    return a.scratch_qk + (((size_t)b * a.Hk + hk) * a.c_count + c) * chunk_layout<D, C>::K_FLOATS;
}

} // namespace

#endif
