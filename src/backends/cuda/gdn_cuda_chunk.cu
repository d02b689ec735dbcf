/* gdn_cuda_chunk.cu: the chunked form of the Gated DeltaNet op on CUDA (include/gdn.h, "The
 * chunked form"), with the chunk's matrix products on tensor cores: the prep kernel and the
 * launches here, the scan kernel in gdn_cuda_chunk_scan.cuh, what both share in
 * gdn_cuda_chunk.cuh.
 *
 * Two kernels per window of chunks (the window bounds the scratch):
 *   prep (one block per chunk, head and sequence; all chunks in parallel): the chunk's k and q
 *     (normalised and scaled as the op asks), gamma (running sum of g), Akk = K K^T and
 *     Aqk = Q K^T on tensor cores, the factors
 *         F[t][s] = -beta_t e^(gamma_t - gamma_s) Akk[t][s]  (s < t),
 *         P[t][s] = e^(gamma_t - gamma_s) Aqk[t][s]          (s <= t),
 *     Tinv = (I - F)^-1 by 16 x 16 blocks (forward substitution inside the diagonal blocks,
 *     tensor-core products below them), M = Tinv diag(beta) and the decays e^gamma,
 *     e^(gamma_C - gamma), all stored to the scratch (none of it depends on the state), with K
 *     and Q once per q/k head (the value heads that share them scale them in the scan).
 *   scan (one block per JB state rows of a head and sequence; the window's chunks in order): per
 *     chunk X = K S^T and Oq = Q S^T in one product over the rows [K; Q], the deltas
 *     Dl = M (V - diag(e^gamma) X) with V the op's own v, then the outputs
 *     O = diag(e^gamma) Oq + P Dl and the new state S = e^gamma_C S + Dl^T Kd,
 *     Kd = diag(e^(gamma_C - gamma)) K; the state stays in registers (each warp 16 rows by half
 *     the columns), and a block writes the outputs of its JB columns. Fusing the outputs into
 *     the scan keeps the per-chunk states out of memory (fla stores them, D^2 floats a chunk, and
 *     reads them again in a third kernel); forming Dl in the scan keeps C x D factors a value
 *     head out of the scratch (prep stored W' = -M diag(e^gamma) K and U = M V before: 37 KB a
 *     chunk and value head at D = 128, C = 32 instead of 8 KB, written and read again;
 *     docs/PERF.md).
 * The deltas solve (I - F) Dl = diag(beta) (V - e^gamma K S^T), which is the recurrence's
 * d_t + beta_t sum_{s<t} e^(gamma_t - gamma_s) (k_t . k_s) d_s = beta_t (v_t - e^gamma_t S k_t).
 *
 * Products: PTX mma.m16n8k8 with TF32 inputs and FP32 accumulation, fragments loaded from
 * shared memory (or, for the scan's state, kept in registers) by hand. By default every product
 * runs as three TF32 products (x = hi + lo with hi = x truncated to TF32 and lo = x - hi, exact;
 * lo*hi + hi*lo + hi*hi, accumulated in FP32), which keeps about FP32 accuracy (the lo*lo term
 * and the tensor cores' truncation of lo to TF32 are below 2^-20 of a term); with
 * params.chunk_tf32 one pass (hi*hi: inputs rounded to TF32, to nearest, ties away from zero).
 * The measured errors against float64 are in docs/PERF.md.
 * Results are deterministic (fixed tiles, fixed order) and do not depend on B. */
#include "gdn_cuda_chunk.cuh"
#include "gdn_cuda_chunk_scan.cuh"

namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;
/* Scratch for the chunked form: at most this many bytes (windows of chunks beyond it). */
constexpr size_t kScratchBytes = size_t(512) << 20;

/* Prep's shared-memory row pitch (floats). A fragment load of a lane (g, t) = (lane / 4, lane % 4)
 * reads two consecutive floats at row g, column 2t of a tile: a pitch of 8 mod 32 puts each
 * half-warp's 16 float2s in distinct banks, and keeps rows 16-byte aligned for float4s. */
template <int N>
__host__ __device__ constexpr int row_pitch()
{
    return N + 8;
}

/* acc[n] += A B_n over k in [0, K) (K a multiple of 8) for NN tiles of 16 x 8 side by side:
 * A(m, k) = a[m AM + k AK] for m < 16, B_n(k, x) = b[k BK + (8 n + x) BN] for x < 8. Lane
 * (g, t) holds the products' k = 2t and 2t + 1 of every 8 (the fragments' k = t and t + 4; A
 * and B take the same order, so the sums are the same), so a row-major A and a column-major B
 * load float2s. With SPLIT, three TF32 products per step, small terms first. */
template <int K, int NN, bool SPLIT, int AM, int AK, int BK, int BN>
__device__ __forceinline__ void mma_rows(float (&acc)[NN][4], const float *a, const float *b)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const float *ap = a + g * AM + 2 * t * AK, *bp = b + 2 * t * BK + g * BN;
#pragma unroll
    for (int k = 0; k < K; k += 8) {
        float x[4];
        if (AK == 1) {
            const float2 r0 = *(const float2 *)(ap + k), r1 = *(const float2 *)(ap + 8 * AM + k);
            x[0] = r0.x, x[1] = r1.x, x[2] = r0.y, x[3] = r1.y;
        } else {
            x[0] = ap[k * AK], x[1] = ap[8 * AM + k * AK], x[2] = ap[(k + 1) * AK], x[3] = ap[8 * AM + (k + 1) * AK];
        }
        uint32_t a_hi[4], a_lo[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            a_hi[e] = SPLIT ? tf32_split_hi(x[e]) : tf32_hi(x[e]);
            a_lo[e] = __float_as_uint(x[e] - __uint_as_float(a_hi[e]));
        }
#pragma unroll
        for (int n = 0; n < NN; n++) {
            const float *q = bp + 8 * n * BN + k * BK;
            float y[2];
            if (BK == 1) {
                const float2 r = *(const float2 *)q;
                y[0] = r.x, y[1] = r.y;
            } else {
                y[0] = q[0], y[1] = q[BK];
            }
            uint32_t b_hi[2], b_lo[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                b_hi[e] = SPLIT ? tf32_split_hi(y[e]) : tf32_hi(y[e]);
                b_lo[e] = __float_as_uint(y[e] - __uint_as_float(b_hi[e]));
            }
            if (SPLIT) {
                mma_tf32(acc[n], a_lo, b_hi);
                mma_tf32(acc[n], a_hi, b_lo);
            }
            mma_tf32(acc[n], a_hi, b_hi);
        }
    }
}

/* A lane's four accumulator elements of a 16 x 8 tile: (g, 2t), (g, 2t + 1), (g + 8, 2t),
 * (g + 8, 2t + 1), to row-major floats with pitch LDP (scaled). */
template <int LDP>
__device__ __forceinline__ void tile_store(float *p, const float (&c)[4], float scale)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    *(float2 *)(p + g * LDP + 2 * t) = make_float2(c[0] * scale, c[1] * scale);
    *(float2 *)(p + (g + 8) * LDP + 2 * t) = make_float2(c[2] * scale, c[3] * scale);
}

/* The chunk's k and q (normalised when asked, q scaled) into Ks, Qs [C][row_pitch<D>], beta and
 * the running sum gamma of g into bet, gam [C]; tokens at or beyond a.n are zeros (they change
 * nothing). One warp per token, each warp's tokens C / kWarps apart; every load of a thread is
 * issued before the first is used, so the block waits on memory once (loading a token's k and q
 * after the previous token's norms, ncu had a quarter of prep's stall samples on these loads). */
template <int D, int C>
__device__ void load_chunk(const chunk_args &a, float *Ks, float *Qs, float *gam, float *bet, int b, int h,
                           long long t0)
{
    static_assert(C % kWarps == 0, "chunked prep: whole tokens a warp");
    constexpr int LD = row_pitch<D>(), R = C / kWarps, E = (D + 31) / 32;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int hk = qk_head(a, h);
    /* Lane l holds elements E l .. E l + E - 1 of its tokens' rows (float4 loads where the rows
     * allow, else E loads nb[0] apart: the same elements, so the same sums either way); its first
     * element's address, and the step to its next token. */
    const bool lane_in = E * lane < D;
    const char *kp = row_of(a.k, hk, t0 + warp, b) + E * lane * a.k.nb[0];
    const char *qp = row_of(a.q, hk, t0 + warp, b) + E * lane * a.q.nb[0];
    const long long kt = kWarps * a.k.nb[2], qt = kWarps * a.q.nb[2];
    float kx[R][E], qx[R][E], gx = 0.0f, bx = 0.0f;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const bool in = lane_in && t0 + warp + r * kWarps < a.n;
        if (E % 4 == 0 && a.qk_vec) {
#pragma unroll
            for (int e = 0; e < E; e += 4) {
                const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                const float4 kv = in ? *(const float4 *)(kp + r * kt + 4 * e) : zero;
                const float4 qv = in ? *(const float4 *)(qp + r * qt + 4 * e) : zero;
                kx[r][e] = kv.x, kx[r][e + 1] = kv.y, kx[r][e + 2] = kv.z, kx[r][e + 3] = kv.w;
                qx[r][e] = qv.x, qx[r][e + 1] = qv.y, qx[r][e + 2] = qv.z, qx[r][e + 3] = qv.w;
            }
        } else {
#pragma unroll
            for (int e = 0; e < E; e++) {
                kx[r][e] = in ? *(const float *)(kp + r * kt + e * a.k.nb[0]) : 0.0f;
                qx[r][e] = in ? *(const float *)(qp + r * qt + e * a.q.nb[0]) : 0.0f;
            }
        }
    }
    if (threadIdx.x < C && t0 + threadIdx.x < a.n) {
        gx = load(a.g, h, t0 + threadIdx.x, b, 0);
        bx = load(a.beta, h, t0 + threadIdx.x, b, 0);
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t = warp + r * kWarps;
        float kk = 0.0f, qq = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) {
            kk = fmaf(kx[r][e], kx[r][e], kk);
            qq = fmaf(qx[r][e], qx[r][e], qq);
        }
#pragma unroll
        for (int m = 16; m >= 1; m /= 2) {
            kk += __shfl_xor_sync(0xffffffffu, kk, m);
            qq += __shfl_xor_sync(0xffffffffu, qq, m);
        }
        const float ik = a.l2norm ? 1.0f / sqrtf(kk + 1e-6f) : 1.0f;
        const float iq = (a.l2norm ? 1.0f / sqrtf(qq + 1e-6f) : 1.0f) * a.scale;
        if (lane_in) {
#pragma unroll
            for (int e = 0; e < E; e++) {
                if (E % 4 == 0 && e % 4 == 0) { /* 16-byte aligned (row pitch and E l multiples of 4) */
                    *(float4 *)(Ks + t * LD + E * lane + e) = make_float4(
                        kx[r][e] * ik, kx[r][e + 1] * ik, kx[r][e + 2] * ik, kx[r][e + 3] * ik);
                    *(float4 *)(Qs + t * LD + E * lane + e) = make_float4(
                        qx[r][e] * iq, qx[r][e + 1] * iq, qx[r][e + 2] * iq, qx[r][e + 3] * iq);
                } else if (E % 4 != 0) {
                    Ks[t * LD + E * lane + e] = kx[r][e] * ik;
                    Qs[t * LD + E * lane + e] = qx[r][e] * iq;
                }
            }
        }
    }
    if (threadIdx.x < C) {
        gam[threadIdx.x] = gx;
        bet[threadIdx.x] = bx;
    }
    __syncthreads();
    if (warp == 0) { /* inclusive scan: E consecutive values per lane, then across lanes */
        constexpr int E = (C + 31) / 32;
        float x[E], sum = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int t = lane * E + e;
            x[e] = t < C ? gam[t] : 0.0f;
            sum += x[e];
            x[e] = sum;
        }
        float before = 0.0f;
#pragma unroll
        for (int m = 1; m < 32; m *= 2) {
            const float y = __shfl_up_sync(0xffffffffu, sum, m);
            if (lane >= m)
                sum += y;
        }
        before = sum - x[E - 1];
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int t = lane * E + e;
            if (t < C)
                gam[t] = before + x[e];
        }
    }
    __syncthreads();
}

/* A factor the scan takes as a B operand, as prep stores it: with one TF32 pass already rounded
 * (as the scan's split would round it, so the products are the same and the scan skips it). */
template <bool SPLIT>
__device__ __forceinline__ float as_operand(float x)
{
    return SPLIT ? x : __uint_as_float(tf32_hi(x));
}

template <bool SPLIT>
__device__ __forceinline__ float4 as_operand(float4 x)
{
    return make_float4(as_operand<SPLIT>(x.x), as_operand<SPLIT>(x.y), as_operand<SPLIT>(x.z), as_operand<SPLIT>(x.w));
}

template <int D, int C>
__host__ __device__ constexpr size_t prep_floats()
{
    return 2 * (size_t)C * row_pitch<D>() + 2 * (size_t)C * row_pitch<C>() + 2 * C + (size_t)C * row_pitch<16>();
}

/* Prep blocks an SM by shared memory (228 KB an SM, 1 KB of it a block's own), at most 4: the
 * kernel is held to the registers that let them all run (at D = 128, C = 32 it would take 78
 * and so 3 blocks an SM: T=4096 B=1 0.656 ms held to 64, 0.671 not; docs/PERF.md). Beyond 4
 * blocks, 64 registers would spill. */
template <int D, int C>
__host__ __device__ constexpr int prep_blocks()
{
    return (int)(233472 / (prep_floats<D, C>() * sizeof(float) + 1024)) > 4 ? 4
           : (int)(233472 / (prep_floats<D, C>() * sizeof(float) + 1024));
}

template <int D, int C, bool SPLIT>
__global__ void __launch_bounds__(kThreads, prep_blocks<D, C>()) chunk_prep_kernel(chunk_args a)
{
    using L = chunk_layout<D, C>;
    constexpr int LD = row_pitch<D>(), LC = row_pitch<C>(), NT = C / 16;
    extern __shared__ __align__(128) float smem[];
    /* Tn takes P's place once P is in the scratch (two blocks fit an SM). */
    float *Ks = smem, *Xs = Ks + C * LD, *F = Xs + C * LD, *P = F + C * LC, *Tn = P;
    float *gam = P + C * LC, *bet = gam + C;
    float *Xb = bet + C; /* [C / 16][16][row_pitch<16>]: Tinv's block sums */
    const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, warp = threadIdx.x / 32;
    const long long t0 = (a.c_first + c) * C;
    /* the op's inputs may come from the grid before, and the scratch is read by the scan before */
    gdn_cuda_wait_previous_grid();
    float *out = chunk_scratch<D, C>(a, b, h, c);
    /* q and k to the scratch once per q/k head, by the block of its first value head */
    float *out_qk = first_of_qk_head(a, h) ? chunk_scratch_qk<D, C>(a, b, qk_head(a, h), c) : nullptr;
    load_chunk<D, C>(a, Ks, Xs, gam, bet, b, h, t0);
    /* The element-wise passes over [C][D] below go by groups of 4 consecutive elements, group
     * x4 = threadIdx.x + k kThreads holding elements 4 x4 .. 4 x4 + 3 (float4 accesses). */
    constexpr int G = C * D / 4, GPER = (G + kThreads - 1) / kThreads;
    static_assert(D % 4 == 0 && 4 * kThreads % D == 0, "chunked prep: whole groups a row, whole rows a pass");

    /* Akk into F, Aqk into P (B = K^T: K's rows are B's columns), 16 x 16 per warp and turn. */
    for (int item = warp; item < 2 * NT * NT; item += kWarps) {
        const int which = item / (NT * NT), tm = item % (NT * NT) / NT, tn = item % NT;
        float acc[2][4];
        tiles_zero(acc);
        mma_rows<D, 2, SPLIT, LD, 1, 1, LD>(acc, (which ? Xs : Ks) + tm * 16 * LD, Ks + tn * 16 * LD);
        float *dst = (which ? P : F) + tm * 16 * LC + tn * 16;
        tile_store<LC>(dst, acc[0], 1.0f);
        tile_store<LC>(dst + 8, acc[1], 1.0f);
    }
    __syncthreads();
    for (int x = threadIdx.x; x < C * C; x += kThreads) {
        const int t = x / C, s = x % C;
        const float rel = s <= t ? expf(gam[t] - gam[s]) : 0.0f;
        F[t * LC + s] = s < t ? -bet[t] * rel * F[t * LC + s] : 0.0f;
        P[t * LC + s] *= rel;
        out[L::P + t * C + (s ^ swz_row<C>(t))] = as_operand<SPLIT>(P[t * LC + s]);
    }
    if (threadIdx.x < C) {
        const int t = threadIdx.x;
        /* the per-token decays, once each (the scan scales rows and columns by them) */
        out[L::EQ + t] = expf(gam[t]);
        out[L::EKD + t] = expf(gam[C - 1] - gam[t]);
    }
    __syncthreads();
    /* k and q to the scratch, by the first value head of their q/k head */
#pragma unroll
    for (int k = 0; k < GPER; k++) {
        const int x = 4 * (threadIdx.x + k * kThreads), t = x / D, i = x % D;
        if (out_qk != nullptr && (G % kThreads == 0 || x < C * D)) {
            const float4 kv = *(const float4 *)(Ks + t * LD + i), qv = *(const float4 *)(Xs + t * LD + i);
            *(float4 *)(out_qk + L::KH + t * D + (i ^ swz_k<D>(t))) = as_operand<SPLIT>(kv);
            *(float4 *)(out_qk + L::QH + t * D + (i ^ swz_row<D>(t))) = as_operand<SPLIT>(qv);
        }
    }
    /* Tinv = (I - F)^-1 by 16 x 16 blocks. The diagonal blocks by forward substitution, one lane
     * per column (C lanes), the column's 16 values in its registers: x_t = [t == c] + sum_{s<t}
     * F[t][s] x_s in order of s, with x_s = 0 above the diagonal (exact zeros, which change no
     * sum); each x_t waits only on the last product of its sum, so a block takes about 16
     * dependent steps of one fma. (Eight lanes a column with a shuffle tree and a warp sync per
     * step took a quarter of prep's stall samples, ncu at B = 1, but the other blocks of the SM
     * filled most of that: T=512 B=1 4% faster, T=4096 B=8 1.3%; docs/PERF.md.) Then block row by
     * block row, T_ij = T_ii (sum_{j <= k < i} F_ik T_kj), on tensor cores in three passes
     * whatever SPLIT (Tinv multiplies every delta). */
    constexpr int NB = C / 16, LX = row_pitch<16>();
    if (threadIdx.x < C) {
        const int col = threadIdx.x, base = col / 16 * 16, c0 = col % 16;
        for (int t = 0; t < base; t++)
            Tn[t * LC + col] = 0.0f;
        const float *Fb = F + base * LC + base;
        float x[16];
#pragma unroll
        for (int t = 0; t < 16; t++) {
            float sum = 0.0f;
#pragma unroll
            for (int s2 = 0; s2 < t; s2++)
                sum = fmaf(Fb[t * LC + s2], x[s2], sum);
            x[t] = t < c0 ? 0.0f : t == c0 ? 1.0f : sum;
            Tn[(base + t) * LC + col] = x[t];
        }
    }
    __syncthreads();
    for (int i = 1; i < NB; i++) {
        for (int j = warp; j < i; j += kWarps) {
            float acc[2][4];
            tiles_zero(acc);
            for (int k = j; k < i; k++)
                mma_rows<16, 2, true, LC, 1, LC, 1>(acc, F + i * 16 * LC + k * 16, Tn + k * 16 * LC + j * 16);
            tile_store<LX>(Xb + j * 16 * LX, acc[0], 1.0f);
            tile_store<LX>(Xb + j * 16 * LX + 8, acc[1], 1.0f);
        }
        __syncthreads();
        for (int j = warp; j < i; j += kWarps) {
            float acc[2][4];
            tiles_zero(acc);
            mma_rows<16, 2, true, LC, 1, LX, 1>(acc, Tn + i * 16 * LC + i * 16, Xb + j * 16 * LX);
            tile_store<LC>(Tn + i * 16 * LC + j * 16, acc[0], 1.0f);
            tile_store<LC>(Tn + i * 16 * LC + j * 16 + 8, acc[1], 1.0f);
        }
        __syncthreads();
    }
    /* M = Tinv diag(beta), stored straight to the scratch (lower triangular: Tinv is, and its
     * entries above the diagonal are exact zeros) */
    for (int x = threadIdx.x; x < C * C; x += kThreads) {
        const int t = x / C, s = x % C;
        out[L::M + t * C + (s ^ swz_row<C>(t))] = as_operand<SPLIT>(Tn[t * LC + s] * bet[s]);
    }
}

/* 1 when every row of the 4-dimensional view t (elements along dim 0) is a run of floats starting
 * on a 16-byte boundary. */
int rows_of_float4s(const gdn_tensor *t)
{
    if (t->nb[0] != sizeof(float) || (uintptr_t)t->data % 16 != 0)
        return 0;
    for (int i = 1; i < 4; i++)
        if (t->ne[i] > 1 && t->nb[i] % 16 != 0)
            return 0;
    return 1;
}

chunk_view view_of(const gdn_tensor *t)
{
    chunk_view v;
    v.data = (char *)t->data;
    for (int i = 0; i < 4; i++)
        v.nb[i] = (long long)t->nb[i];
    return v;
}

gdn_status grow_scratch(gdn_cuda_context *context, size_t bytes)
{
    if (context->chunk_scratch_bytes >= bytes)
        return GDN_OK;
    if (context->chunk_scratch != nullptr) {
        gdn_status st = gdn_cuda_check(cudaStreamSynchronize(context->stream), "chunked form: scratch release");
        if (st != GDN_OK)
            return st;
        (void)cudaFree(context->chunk_scratch);
        context->chunk_scratch = nullptr;
        context->chunk_scratch_bytes = 0;
    }
    cudaError_t error = cudaMalloc(&context->chunk_scratch, bytes);
    if (error == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        context->chunk_scratch = nullptr;
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "gated_delta_net: no device memory for the chunked form's "
                        "%zu bytes of scratch", bytes);
    }
    gdn_status st = gdn_cuda_check(error, "chunked form: scratch cudaMalloc");
    if (st == GDN_OK)
        context->chunk_scratch_bytes = bytes;
    return st;
}

template <class Kernel>
gdn_status allow_smem(Kernel kernel, size_t bytes)
{
    return gdn_cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes),
                          "chunked form: kernel shared memory");
}

/* The kernels' shapes for blocks of at most LIMIT bytes of shared memory: the scan's blocks of
 * few rows (B = 1) and of many, with two sets of factors each where they fit; FITS: prep and
 * both scans fit. */
template <int D, int C, size_t LIMIT>
struct chunk_plan {
    static constexpr int JF = rows_few<D, C, LIMIT>(), JM = rows_many<D, C, LIMIT>();
    static constexpr int SF = scan_sets(D, C, JF, LIMIT), SM = scan_sets(D, C, JM, LIMIT);
    static constexpr size_t PREP = prep_floats<D, C>() * sizeof(float);
    static constexpr bool FITS = PREP <= LIMIT && scan_smem<D, C, JF, SF>::BYTES <= LIMIT &&
                                 scan_smem<D, C, JM, SM>::BYTES <= LIMIT;
};

/* The two tiers of shapes: Hopper's 227 KB a block, and 99 KB, the least of the GPUs gdn is built
 * for (sm_86, sm_89; an A100's 163 KB takes this tier too). */
constexpr size_t kSmemSmall = 101376;

template <int D, int C, bool SPLIT, size_t LIMIT>
gdn_status run(gdn_cuda_context *context, chunk_args a, long long B)
{
    using P = chunk_plan<D, C, LIMIT>;
    constexpr int JF = P::JF, JM = P::JM;
    static_assert(P::FITS, "chunked form: shared memory");
    /* The few-rows grid fits one wave, one block an SM: its shared memory is padded past half an
     * SM's, so that its blocks, started early (programmatic dependent launch, while prep's last
     * blocks run), cannot pair up on one SM. (Two blocks of 107 KB did on an H100: T=4096 B=1
     * 0.49 ms without the early start, 0.71 with it; docs/PERF.md.) */
    size_t few_smem = scan_smem<D, C, JF, P::SF>::BYTES;
    if (few_smem < context->smem_per_sm / 2)
        few_smem = context->smem_per_sm / 2 < LIMIT ? context->smem_per_sm / 2 : LIMIT;
    gdn_status st = allow_smem(chunk_prep_kernel<D, C, SPLIT>, P::PREP);
    if (st == GDN_OK) /* (the few-rows limit last: where JF = JM the two are one kernel) */
        st = allow_smem(chunk_scan_kernel<D, C, JM, SPLIT, P::SM>, scan_smem<D, C, JM, P::SM>::BYTES);
    if (st == GDN_OK)
        st = allow_smem(chunk_scan_kernel<D, C, JF, SPLIT, P::SF>, few_smem);
    const bool few = (long long)(D / JF) * a.Hv * B <= context->sm_count;
    const long long chunks = (a.n + C - 1) / C;
    const size_t per_chunk =
        (size_t)B * (a.Hv * chunk_layout<D, C>::FLOATS + a.Hk * chunk_layout<D, C>::K_FLOATS) * sizeof(float);
    long long window = (long long)(kScratchBytes / per_chunk);
    window = window < 1 ? 1 : window > chunks ? chunks : window;
    if (st == GDN_OK)
        st = grow_scratch(context, (size_t)window * per_chunk);
    a.scratch = (float *)context->chunk_scratch;
    for (long long first = 0; st == GDN_OK && first < chunks; first += window) {
        a.c_first = first;
        a.c_count = chunks - first < window ? chunks - first : window;
        a.scratch_qk = a.scratch + (size_t)B * a.Hv * a.c_count * chunk_layout<D, C>::FLOATS;
        a.first_window = first == 0;
        const dim3 per_chunk_grid((unsigned)a.c_count, a.Hv, (unsigned)B);
        /* by programmatic dependent launch where allowed: prep waits for the grid before it first
         * thing, the scan after loading its state (which prep does not write) */
        st = gdn_cuda_launch_grid(context, chunk_prep_kernel<D, C, SPLIT>, per_chunk_grid, kThreads, P::PREP, a,
                                  "chunked form: prep kernel launch");
        if (st != GDN_OK)
            break;
        const dim3 few_grid(D / JF, a.Hv, (unsigned)B), many_grid(D / JM, a.Hv, (unsigned)B);
        if (few)
            st = gdn_cuda_launch_grid(context, chunk_scan_kernel<D, C, JF, SPLIT, P::SF>, few_grid, 4 * JF, few_smem,
                                      a, "chunked form: scan kernel launch");
        else
            st = gdn_cuda_launch_grid(context, chunk_scan_kernel<D, C, JM, SPLIT, P::SM>, many_grid, 4 * JM,
                                      scan_smem<D, C, JM, P::SM>::BYTES, a, "chunked form: scan kernel launch");
    }
    return st;
}

/* run, where the tier's kernels fit (chunk_of in src/core/gdn_op.c asks gdn_backend_chunk_fits
 * first, so the refusal here is a second line). */
template <int D, int C, bool SPLIT, size_t LIMIT>
gdn_status run_fitting(gdn_cuda_context *context, const chunk_args &a, long long B)
{
    if constexpr (chunk_plan<D, C, LIMIT>::FITS) {
        return run<D, C, SPLIT, LIMIT>(context, a, B);
    } else {
        (void)context, (void)a, (void)B;
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: the chunked form at D=%d with chunks of %d "
                        "needs more shared memory a block than this GPU has", D, C);
    }
}

/* The tier of kernel shapes this GPU's shared memory takes (0: none). */
size_t smem_tier(const gdn_cuda_context *context)
{
    return context->smem_optin >= kMaxSmem ? kMaxSmem : context->smem_optin >= kSmemSmall ? kSmemSmall : 0;
}

template <int D, int C, bool SPLIT>
gdn_status run_on_tier(gdn_cuda_context *context, const chunk_args &a, long long B)
{
    static_assert(chunk_plan<D, C, kMaxSmem>::FITS, "chunked form: every shape fits Hopper");
    switch (smem_tier(context)) {
    case kMaxSmem: return run<D, C, SPLIT, kMaxSmem>(context, a, B);
    case kSmemSmall: return run_fitting<D, C, SPLIT, kSmemSmall>(context, a, B);
    default:
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: the chunked form needs %zu bytes of shared "
                        "memory a block; this GPU has %zu", kSmemSmall, context->smem_optin);
    }
}

template <int D>
gdn_status run_for_chunk(gdn_cuda_context *context, const chunk_args &a, long long B, int64_t chunk, bool tf32)
{
    switch (chunk) {
    case 16: return tf32 ? run_on_tier<D, 16, false>(context, a, B) : run_on_tier<D, 16, true>(context, a, B);
    case 32: return tf32 ? run_on_tier<D, 32, false>(context, a, B) : run_on_tier<D, 32, true>(context, a, B);
    case 64: return tf32 ? run_on_tier<D, 64, false>(context, a, B) : run_on_tier<D, 64, true>(context, a, B);
    default:
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: chunk=%lld has no CUDA kernel", (long long)chunk);
    }
}

template <int D, int C>
bool fits(size_t tier)
{
    return tier == kMaxSmem ? chunk_plan<D, C, kMaxSmem>::FITS
                            : tier == kSmemSmall && chunk_plan<D, C, kSmemSmall>::FITS;
}

template <int D>
bool fits_for_chunk(size_t tier, int64_t chunk)
{
    return chunk == 16 ? fits<D, 16>(tier) : chunk == 32 ? fits<D, 32>(tier) : chunk == 64 && fits<D, 64>(tier);
}

} // namespace

gdn_status gdn_cuda_gated_delta_net_chunked(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                            const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape,
                                            int64_t n, int64_t chunk, const gdn_tensor *final,
                                            const gdn_tensor *final_index)
{
    gdn_cuda_context *context = (gdn_cuda_context *)backend->context;
    gdn_status status = gdn_cuda_use_device(context);
    if (status != GDN_OK)
        return status;
    if (shape->B > 65535 || shape->Hv * 4 > 65535)
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: the chunked form's grid takes B <= 65535 and "
                        "Hv <= 16383 (B=%lld, Hv=%lld)", (long long)shape->B, (long long)shape->Hv);
    chunk_args a;
    a.q = view_of(&args->q);
    a.k = view_of(&args->k);
    a.v = view_of(&args->v);
    a.g = view_of(&args->g);
    a.beta = view_of(&args->beta);
    a.o = view_of(&args->o);
    a.state = view_of(&args->state);
    a.final = view_of(final);
    a.state_index = shape->indexed ? (const char *)args->state_index.data : nullptr;
    a.state_index_nb = shape->indexed ? (long long)args->state_index.nb[0] : 0;
    a.final_index = final_index != nullptr ? (const char *)final_index->data : nullptr;
    a.final_index_nb = final_index != nullptr ? (long long)final_index->nb[0] : 0;
    a.Hk = (int)shape->Hk;
    a.Hv = (int)shape->Hv;
    a.interleaved = params->broadcast == GDN_BROADCAST_INTERLEAVED;
    a.l2norm = params->l2norm;
    a.qk_vec = rows_of_float4s(&args->q) && rows_of_float4s(&args->k);
    a.v_vec = rows_of_float4s(&args->v);
    a.scale = shape->scale;
    a.n = n;
    a.c_first = a.c_count = 0;
    a.first_window = 1;
    a.scratch = a.scratch_qk = nullptr;
    const bool tf32 = params->chunk_tf32 != 0;
    switch (shape->D) {
    case 16: return run_for_chunk<16>(context, a, shape->B, chunk, tf32);
    case 32: return run_for_chunk<32>(context, a, shape->B, chunk, tf32);
    case 64: return run_for_chunk<64>(context, a, shape->B, chunk, tf32);
    case 128: return run_for_chunk<128>(context, a, shape->B, chunk, tf32);
    case 256: return run_for_chunk<256>(context, a, shape->B, chunk, tf32);
    default:
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: D=%lld has no chunked CUDA kernel",
                        (long long)shape->D);
    }
}

int gdn_cuda_gated_delta_net_chunk_fits(const gdn_backend *backend, int64_t D, int64_t chunk)
{
    const size_t tier = smem_tier((const gdn_cuda_context *)backend->context);
    switch (D) {
    case 16: return fits_for_chunk<16>(tier, chunk);
    case 32: return fits_for_chunk<32>(tier, chunk);
    case 64: return fits_for_chunk<64>(tier, chunk);
    case 128: return fits_for_chunk<128>(tier, chunk);
    case 256: return fits_for_chunk<256>(tier, chunk);
    default: return 0;
    }
}
