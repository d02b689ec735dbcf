/* gdn_cuda_chunk.cu: the chunked form of the Gated DeltaNet op on CUDA (include/gdn.h, "The
 * chunked form"), with the chunk's matrix products on tensor cores.
 *
 * Two kernels per window of chunks (the window bounds the scratch):
 *   prep (one block per chunk, head and sequence; all chunks in parallel): the chunk's k and q
 *     (normalised and scaled as the op asks), gamma (running sum of g), Akk = K K^T and
 *     Aqk = Q K^T on tensor cores, the factors
 *         F[t][s] = -beta_t e^(gamma_t - gamma_s) Akk[t][s]  (s < t),
 *         P[t][s] = e^(gamma_t - gamma_s) Aqk[t][s]          (s <= t),
 *     Tinv = (I - F)^-1 by 16 x 16 blocks (forward substitution inside the diagonal blocks,
 *     tensor-core products below them), and
 *     W' = -Tinv diag(beta e^gamma) K, U = Tinv diag(beta) V, Kd = e^(gamma_C - gamma) K,
 *     Qe = diag(e^gamma) Q, all stored to the scratch: none of it depends on the state.
 *   scan (one block per JB state rows of a head and sequence; the window's chunks in order): per
 *     chunk the deltas Dl = U + W' S^T and Oq = Qe S^T in one product over the rows [W'; Qe],
 *     then the outputs O = Oq + P Dl and the new state S = e^gamma_C S + Dl^T Kd; the state stays
 *     in registers (each warp 16 rows by half the columns), and a block writes the outputs of
 *     its JB columns. Fusing the outputs into the scan keeps the per-chunk states out of memory
 *     (fla stores them, D^2 floats a chunk, and reads them again in a third kernel).
 * The deltas solve (I - F) Dl = diag(beta) (V - e^gamma K S^T), which is the recurrence's
 * d_t + beta_t sum_{s<t} e^(gamma_t - gamma_s) (k_t . k_s) d_s = beta_t (v_t - e^gamma_t S k_t).
 *
 * Products: PTX mma.m16n8k8 with TF32 inputs and FP32 accumulation, fragments loaded from
 * shared memory (or, for the scan's state, kept in registers) by hand. By default every product runs as three TF32 products (x = hi + lo with
 * hi = x rounded to TF32 and lo = x - hi, exact; lo*hi + hi*lo + hi*hi, accumulated in FP32),
 * which keeps about FP32 accuracy (the lo*lo term and the tensor cores' truncation of lo to TF32
 * are below 2^-21 of a term); with params.chunk_tf32 one pass (hi*hi: inputs rounded to TF32,
 * to nearest, ties away from zero). The measured errors against float64 are in docs/PERF.md.
 * Results are deterministic (fixed tiles, fixed order) and do not depend on B. */
#include "cuda_internal.h"

#include <stdint.h>

namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;
/* Scratch for the chunked form: at most this many bytes (windows of chunks beyond it). */
constexpr size_t kScratchBytes = size_t(512) << 20;
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

/* Prep's shared-memory row pitch (floats). A fragment load of a lane (g, t) = (lane / 4, lane % 4)
 * reads two consecutive floats at row g, column 2t of a tile: a pitch of 8 mod 32 puts each
 * half-warp's 16 float2s in distinct banks, and keeps rows 16-byte aligned for float4s. */
template <int N>
__host__ __device__ constexpr int row_pitch()
{
    return N + 8;
}

/* x rounded to TF32 (10-bit mantissa; to nearest, ties away from zero, as cvt.rna.tf32 does,
 * without its NaN and overflow tests: two instructions instead of four). */
__device__ __forceinline__ uint32_t tf32_hi(float x)
{
    return (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
}

/* d += a b for one 16 x 8 tile, k = 8 (PTX mma.m16n8k8, A row-major, B column-major). */
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2])
{
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
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
            a_hi[e] = tf32_hi(x[e]);
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
                b_hi[e] = tf32_hi(y[e]);
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

template <int NN>
__device__ __forceinline__ void tiles_zero(float (&acc)[NN][4])
{
#pragma unroll
    for (int n = 0; n < NN; n++)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
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
    const int hk = a.interleaved ? h / (a.Hv / a.Hk) : h % a.Hk;
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

/* Column swizzles of the scratch and of the scan's shared memory (rows dense, 16-byte runs kept):
 * element (r, c) of a W-float row-major array sits at column c ^ swz(r). The scan's fragment
 * loads then meet no bank conflicts: swz_row for float2 loads at rows g (W' and Qe by D, P by C),
 * swz_kmajor for single floats at rows 2t and 2t + 1, columns g (Kd, U). */
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

/* The scratch of one chunk of one head (floats), each part as the scan keeps it in shared memory
 * (swizzled), so that the scan moves a chunk in four copies:
 *   W'  [C][D]  -Tinv diag(beta e^gamma) K   (swz_row)      Qe [C][D]  e^gamma_t q_t  (swz_row)
 *   P   [C][C]  the output factors           (swz_row)
 *   U   [D / UB][C][UB]  Tinv diag(beta) V by blocks of UB columns (swz_kmajor; a scan block's
 *                        columns are one run)
 *   gam [C]     the running sum of g          Kd [C][D]  e^(gamma_C - gamma_t) k_t (swz_kmajor)
 * Every part starts on 16 bytes. */
template <int D, int C>
struct chunk_layout {
    static constexpr int UB = D < 32 ? D : 32;
    static constexpr size_t W = 0, QE = (size_t)C * D, P = 2 * (size_t)C * D, U = P + (size_t)C * C;
    static constexpr size_t GAM = U + (size_t)C * D, KD = GAM + C, FLOATS = KD + (size_t)C * D;
    __host__ __device__ static constexpr size_t u_at(int t, int j) /* element (t, j) of U */
    {
        return U + (size_t)(j / UB) * C * UB + (size_t)t * UB + ((j % UB) ^ swz_kmajor<UB>(t));
    }
};

template <int D, int C>
__host__ __device__ constexpr size_t prep_floats()
{
    return 2 * (size_t)C * row_pitch<D>() + 2 * (size_t)C * row_pitch<C>() + 5 * C + (size_t)C * row_pitch<16>();
}

template <int D, int C>
__device__ __forceinline__ float *chunk_scratch(const chunk_args &a, int b, int h, long long c)
{
    return a.scratch + (((size_t)b * a.Hv + h) * a.c_count + c) * chunk_layout<D, C>::FLOATS;
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
    constexpr int LD = row_pitch<D>(), LC = row_pitch<C>(), NT = C / 16, ND = D / 16;
    extern __shared__ __align__(128) float smem[];
    /* Tn takes P's place once P is in the scratch (two blocks fit an SM). */
    float *Ks = smem, *Xs = Ks + C * LD, *F = Xs + C * LD, *P = F + C * LC, *Tn = P;
    float *gam = P + C * LC, *bet = gam + C, *fac_kd = bet + C, *fac_k = fac_kd + C, *fac_q = fac_k + C;
    float *Xb = fac_q + C; /* [C / 16][16][row_pitch<16>]: Tinv's block sums */
    const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, warp = threadIdx.x / 32;
    const long long t0 = (a.c_first + c) * C;
    float *out = chunk_scratch<D, C>(a, b, h, c);
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
        out[L::P + t * C + (s ^ swz_row<C>(t))] = P[t * LC + s];
    }
    if (threadIdx.x < C) {
        const int t = threadIdx.x;
        out[L::GAM + t] = gam[t];
        /* the per-token factors, once each (the loop below would take 3 C D exponentials) */
        fac_kd[t] = expf(gam[C - 1] - gam[t]);
        fac_q[t] = expf(gam[t]);
        fac_k[t] = bet[t] * fac_q[t];
    }
    __syncthreads();
    /* Kd and Qe to the scratch, then K scaled by beta e^gamma in place (V by beta below). */
#pragma unroll
    for (int k = 0; k < GPER; k++) {
        const int x = 4 * (threadIdx.x + k * kThreads), t = x / D, i = x % D;
        if (G % kThreads == 0 || x < C * D) {
            const float4 kv = *(const float4 *)(Ks + t * LD + i), qv = *(const float4 *)(Xs + t * LD + i);
            const float fkd = fac_kd[t], fq = fac_q[t], fk = fac_k[t];
            *(float4 *)(out + L::KD + t * D + (i ^ swz_kmajor<D>(t))) =
                make_float4(kv.x * fkd, kv.y * fkd, kv.z * fkd, kv.w * fkd);
            *(float4 *)(out + L::QE + t * D + (i ^ swz_row<D>(t))) =
                make_float4(qv.x * fq, qv.y * fq, qv.z * fq, qv.w * fq);
            *(float4 *)(Ks + t * LD + i) = make_float4(kv.x * fk, kv.y * fk, kv.z * fk, kv.w * fk);
        }
    }
    /* v copied into Xs while Tinv is computed, without registers, and scaled by beta once Tinv is
     * done (loaded where it was scaled, ncu had 28% of prep's stall samples waiting on it). Each
     * thread copies into the elements of Xs it has just read as Q, so no barrier is needed: its
     * group's elements 4 x4 % D .. + 3 of every (4 kThreads / D)-th token; 16 bytes a copy where
     * v's rows allow. */
    const char *vp = row_of(a.v, h, t0 + 4 * threadIdx.x / D, b) + (4 * threadIdx.x % D) * a.v.nb[0];
    const long long vt = 4 * kThreads / D * a.v.nb[2];
#pragma unroll
    for (int k = 0; k < GPER; k++) {
        const int x = 4 * (threadIdx.x + k * kThreads), t = x / D, i = x % D;
        float *dst = Xs + t * LD + i;
        if (G % kThreads != 0 && x >= C * D) {
        } else if (t0 + t < a.n && a.v_vec) {
            const unsigned int sa = (unsigned int)__cvta_generic_to_shared(dst);
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(vp + k * vt) : "memory");
        } else if (t0 + t < a.n) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const unsigned int sa = (unsigned int)__cvta_generic_to_shared(dst + e);
                asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(sa), "l"(vp + k * vt + e * a.v.nb[0])
                             : "memory");
            }
        } else {
            *(float4 *)dst = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    __syncthreads();
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
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#pragma unroll
    for (int k = 0; k < GPER; k++) {
        const int x = 4 * (threadIdx.x + k * kThreads), t = x / D, i = x % D;
        if (G % kThreads == 0 || x < C * D) {
            const float4 v = *(const float4 *)(Xs + t * LD + i);
            const float bt = bet[t];
            *(float4 *)(Xs + t * LD + i) = make_float4(v.x * bt, v.y * bt, v.z * bt, v.w * bt);
        }
    }
    __syncthreads();
    /* W' = -Tinv (beta e^gamma K), U = Tinv (beta V), stored straight to the scratch. */
    for (int item = warp; item < 2 * NT * ND; item += kWarps) {
        const int which = item / (NT * ND), tm = item % (NT * ND) / ND, tn = item % ND;
        float acc[2][4];
        tiles_zero(acc);
        mma_rows<C, 2, SPLIT, LC, 1, LD, 1>(acc, Tn + tm * 16 * LC, (which ? Xs : Ks) + tn * 16);
        const int lane = threadIdx.x % 32, r0 = tm * 16 + lane / 4;
#pragma unroll
        for (int e = 0; e < 4; e++) { /* (row, column) pairs of the two tiles: e & 1 rows + 8, e & 2 columns + 8 */
            const int r = r0 + (e & 1 ? 8 : 0), col = tn * 16 + (e & 2 ? 8 : 0) + 2 * (lane % 4);
            const float(&x)[4] = acc[e >> 1];
            const float2 v = e & 1 ? make_float2(x[2], x[3]) : make_float2(x[0], x[1]);
            if (which) /* a 16-column tile lies in one block of U */
                *(float2 *)(out + L::u_at(r, col)) = v;
            else
                *(float2 *)(out + L::W + r * D + (col ^ swz_row<D>(r))) = make_float2(-v.x, -v.y);
        }
    }
}

/* The scan keeps the state in registers. A warp owns 16 state rows (value columns) and half of
 * their D columns (the "Dk half"), as the accumulators of 16 x 8 tiles: lane (g, t) holds rows g
 * and g + 8, columns 8 j + 2t and 8 j + 2t + 1 of tile j. That is also the A fragment of a
 * product over those columns in the order mma_rows uses (k = 2t, 2t + 1 of every 8), so step 1
 * reads the state without moving it. Per chunk, for a warp's rows:
 *   1. [Dl; Oq] (its rows, all C tokens) over its Dk half: Dl = U + S W'^T, Oq = S Qe^T.
 *   2. The warp and its partner (the other Dk half of the same rows) swap halves through shared
 *      memory: each then has Dl whole, and Oq whole for its half of the tokens.
 *   3. S = e^gamma_C S + Dl Kd over its Dk half (Dl's accumulators are the A fragments again).
 *   4. O = Oq + Dl P^T for its half of the tokens (P is causal: the first half needs only the
 *      first half of Dl), stored.
 * The factors of a chunk (W', Qe, Kd, P, the block's columns of U, gamma) are copied into shared
 * memory by the copy engine (cp.async.bulk) while the previous chunk computes (two sets where they
 * fit; else one, with Kd copied into W's place after step 1). Every warp does the same arithmetic
 * whatever the block's rows JB, so results do not depend on B. (Before, S sat in shared memory and the scan was bound
 * by shared-memory traffic: 77% of the L1/shared peak at B = 1, ncu; docs/PERF.md.) */
/* Floats of a set (with Kd of its own or not), of the pairs' exchange, and the bytes of a
 * block: two sets where they fit, else one. */
__host__ __device__ constexpr int scan_set_floats(int D, int C, int JB, bool own_kd)
{
    return 2 * C * D + C * C + C * JB + 4 + (own_kd ? C * D : 0);
}

__host__ __device__ constexpr int scan_xch_floats(int C, int JB)
{
    return JB / 16 * 2 * (C / 8 + C / 16) * 128;
}

__host__ __device__ constexpr bool scan_double(int D, int C, int JB)
{
    return (size_t)(2 * scan_set_floats(D, C, JB, true) + scan_xch_floats(C, JB) + 4) * sizeof(float) <= kMaxSmem;
}

__host__ __device__ constexpr size_t scan_bytes(int D, int C, int JB)
{
    return (size_t)((scan_double(D, C, JB) ? 2 * scan_set_floats(D, C, JB, true) : scan_set_floats(D, C, JB, false)) +
                    scan_xch_floats(C, JB) + 4) *
           sizeof(float);
}

template <int D, int C, int JB>
struct scan_smem {
    /* a set: W', Qe and P as in the scratch, the block's blocks of U, gamma's last 4, Kd [C][D]
     * of its own (DOUBLE) or in W's place */
    static constexpr bool DOUBLE = scan_double(D, C, JB);
    static constexpr int QE = C * D, P = 2 * C * D, U = P + C * C, GAM = U + C * JB, KD = DOUBLE ? GAM + 4 : 0;
    static constexpr int SETS = DOUBLE ? 2 : 1, SET = scan_set_floats(D, C, JB, DOUBLE);
    static constexpr int XT = C / 8 + C / 16; /* tiles a warp hands its partner */
    static constexpr int BARS = SETS * SET + scan_xch_floats(C, JB); /* two mbarriers (8 bytes each) */
    static constexpr size_t BYTES = scan_bytes(D, C, JB);
};

/* d += a b (one TF32 product, or with SPLIT three: lo hi + hi lo + hi hi, small terms first). */
template <bool SPLIT>
__device__ __forceinline__ void mma_x(float (&d)[4], const uint32_t (&ah)[4], const uint32_t (&al)[4],
                                      const uint32_t (&bh)[2], const uint32_t (&bl)[2])
{
    if (SPLIT) {
        mma_tf32(d, al, bh);
        mma_tf32(d, ah, bl);
    }
    mma_tf32(d, ah, bh);
}

/* An accumulator tile as the A fragment of a product over its columns (k = 2t, 2t + 1), split. */
__device__ __forceinline__ void a_of_tile(const float (&c)[4], uint32_t (&hi)[4], uint32_t (&lo)[4])
{
    const float x[4] = {c[0], c[2], c[1], c[3]};
#pragma unroll
    for (int e = 0; e < 4; e++) {
        hi[e] = tf32_hi(x[e]);
        lo[e] = __float_as_uint(x[e] - __uint_as_float(hi[e]));
    }
}

__device__ __forceinline__ void b_split(float y0, float y1, uint32_t (&hi)[2], uint32_t (&lo)[2])
{
    hi[0] = tf32_hi(y0), hi[1] = tf32_hi(y1);
    lo[0] = __float_as_uint(y0 - __uint_as_float(hi[0]));
    lo[1] = __float_as_uint(y1 - __uint_as_float(hi[1]));
}

__device__ __forceinline__ unsigned smem_at(const void *p)
{
    return (unsigned)__cvta_generic_to_shared(p);
}

/* The scan's factors reach shared memory by the copy engine on sm_90 (cp.async.bulk, counted on
 * an mbarrier); an sm_80 build has none, and there every thread copies 16-byte pieces with
 * cp.async into the same layout (-DGDN_CHUNK_NO_BULK takes that path on sm_90 too, to test it). */
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 900 || defined(GDN_CHUNK_NO_BULK))
#define GDN_CHUNK_BULK 0
#else
#define GDN_CHUNK_BULK 1
#endif

#if GDN_CHUNK_BULK
/* bytes from global to shared memory by the copy engine, counted on the mbarrier bar */
__device__ __forceinline__ void bulk_copy(float *to, const float *from, unsigned bytes, uint64_t *bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     smem_at(to)),
                 "l"(from), "r"(bytes), "r"(smem_at(bar))
                 : "memory");
}
#endif

/* N floats (a multiple of 4) from global to shared memory by the block's T threads, 16 bytes a
 * cp.async (sm_80) */
template <int N, int T>
__device__ __forceinline__ void copy_floats(float *to, const float *from)
{
#pragma unroll
    for (int k = 0; k < (N / 4 + T - 1) / T; k++) {
        const int x = threadIdx.x + k * T;
        if (N / 4 % T == 0 || x < N / 4)
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_at(to + 4 * x)), "l"(from + 4 * x)
                         : "memory");
    }
}

/* Wait until a set's copies have landed: on the mbarrier bar's phase `parity` (sm_90), or on
 * this thread's cp.async copies and then the block's (sm_80). */
__device__ __forceinline__ void wait_set(uint64_t *bar, unsigned parity)
{
#if GDN_CHUNK_BULK
    unsigned done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_at(bar)), "r"(parity)
                     : "memory");
#else
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
#endif
}

template <int D, int C, int JB, bool SPLIT>
__global__ void __launch_bounds__(4 * JB, 1) chunk_scan_kernel(chunk_args a)
{
    using L = chunk_layout<D, C>;
    using M = scan_smem<D, C, JB>;
    constexpr int DH = D / 2, NK = DH / 8, NC = C / 8, NH = C / 16;
    constexpr int UB = L::UB;
    static_assert(D >= 16 && C >= 16 && JB % 16 == 0 && JB / 16 <= 15, "chunked scan: tile shapes");
    extern __shared__ __align__(128) float smem[];
    float4 *xch = (float4 *)(smem + M::SETS * M::SET);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int half = warp & 1, m0 = warp / 2 * 16, k0 = half * DH, o0 = half * (C / 2);
    const int j0 = blockIdx.x * JB, h = blockIdx.y, b = blockIdx.z;
    /* the swizzles of the rows a lane reads (they depend on g or t only) */
    const int swW = swz_row<D>(g), swP = swz_row<C>(g), swK = swz_kmajor<D>(2 * t4), swU = swz_kmajor<UB>(2 * t4);

    int slot = b, out_slot = b;
    if (a.state_index != nullptr)
        slot = *(const int *)(a.state_index + b * a.state_index_nb);
    if (a.final_index != nullptr)
        out_slot = *(const int *)(a.final_index + b * a.final_index_nb);
    const chunk_view &from = a.first_window ? a.state : a.final;
    const int from_slot = a.first_window ? slot : out_slot;
    /* element e of tile j: row j0 + m0 + g (+ 8 for e >= 2), column k0 + 8 j + 2 t4 (+ 1 for odd e) */
    float S[NK][4];
#pragma unroll
    for (int j = 0; j < NK; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            S[j][e] = load(from, k0 + 8 * j + 2 * t4 + (e & 1), j0 + m0 + g + (e & 2 ? 8 : 0), h, from_slot);

    /* Thread 0 has the copy engine move a chunk's factors into a set, four copies (the scratch has
     * the set's layout), and counts their bytes on the set's mbarrier; every thread waits on it.
     * (Copied by every thread with cp.async, the copies' issue and address arithmetic took most
     * of a B = 1 chunk, ncu; a row a copy, the copy engine took longer than the chunk.) */
    uint64_t *bars = (uint64_t *)(smem + M::BARS);
#if GDN_CHUNK_BULK
    auto stage = [&](float *set, long long c, bool main_part, bool kd, uint64_t *bar) {
        if (warp != 0 || lane != 0)
            return;
        const float *in = chunk_scratch<D, C>(a, b, h, c);
        constexpr unsigned MAIN = (unsigned)M::U * 4, UBYTES = C * JB * 4, KBYTES = C * D * 4;
        const unsigned bytes = (main_part ? MAIN + UBYTES + 16 : 0) + (kd ? KBYTES : 0);
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_at(bar)), "r"(bytes)
                     : "memory");
        /* the set was read through the generic proxy; the copies write through the async one */
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        if (main_part) /* the block's columns of U */
            bulk_copy(set + M::U, in + L::u_at(0, j0), UBYTES, bar);
        if (main_part) {
            bulk_copy(set, in, MAIN, bar); /* W', Qe, P */
            bulk_copy(set + M::GAM, in + L::GAM + C - 4, 16, bar);
        }
        if (kd)
            bulk_copy(set + M::KD, in + L::KD, KBYTES, bar);
    };
    if (threadIdx.x < 2)
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_at(bars + threadIdx.x)) : "memory");
#else
    auto stage = [&](float *set, long long c, bool main_part, bool kd, uint64_t *) {
        const float *in = chunk_scratch<D, C>(a, b, h, c);
        if (main_part) {
            copy_floats<C * JB, 4 * JB>(set + M::U, in + L::u_at(0, j0));
            copy_floats<M::U, 4 * JB>(set, in); /* W', Qe, P */
            if (threadIdx.x == 0)
                copy_floats<4, 1>(set + M::GAM, in + L::GAM + C - 4);
        }
        if (kd)
            copy_floats<C * D, 4 * JB>(set + M::KD, in + L::KD);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
    };
#endif
    __syncthreads();

    if (M::DOUBLE)
        stage(smem, 0, true, true, bars);
    for (long long c = 0; c < a.c_count; c++) {
        float *set = smem + (M::DOUBLE ? (int)(c & 1) * M::SET : 0);
        if (M::DOUBLE) {
            wait_set(bars + (c & 1), (unsigned)(c >> 1) & 1);
            __syncthreads(); /* every warp is done with the other set */
            if (c + 1 < a.c_count)
                stage(smem + (int)((c + 1) & 1) * M::SET, c + 1, true, true, bars + ((c + 1) & 1));
        } else {
            if (c > 0)
                __syncthreads(); /* every warp is done with the set */
            stage(set, c, true, false, bars);
            wait_set(bars, (unsigned)c & 1);
        }
        const float *Ws = set, *Qs = set + M::QE, *Ps = set + M::P;
        const float *Us = set + M::U + m0 / UB * C * UB; /* the block of U with the warp's rows */
        const float decay = expf(set[M::GAM + 3]);

        /* 1. Dl (U in the first Dk half's sum) and Oq over the warp's Dk half */
        float dl[NC][4], oq[NC][4];
#pragma unroll
        for (int n = 0; n < NC; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                dl[n][e] = half == 0 ? Us[(8 * n + 2 * t4 + (e & 1)) * UB + ((m0 % UB + g + (e & 2 ? 8 : 0)) ^ swU)]
                                      : 0.0f;
                oq[n][e] = 0.0f;
            }
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            uint32_t ah[4], al[4];
            a_of_tile(S[kk], ah, al);
            const int col = k0 + 8 * kk + 2 * t4;
#pragma unroll
            for (int n = 0; n < NC; n++) {
                uint32_t bh[2], bl[2];
                const float2 y = *(const float2 *)(Ws + (8 * n + g) * D + (col ^ swW));
                b_split(y.x, y.y, bh, bl);
                mma_x<SPLIT>(dl[n], ah, al, bh, bl);
            }
#pragma unroll
            for (int n = 0; n < NC; n++) {
                uint32_t bh[2], bl[2];
                const float2 y = *(const float2 *)(Qs + (8 * n + g) * D + (col ^ swW));
                b_split(y.x, y.y, bh, bl);
                mma_x<SPLIT>(oq[n], ah, al, bh, bl);
            }
        }

        /* 2. the partner's half of the sums: all of Dl, Oq of this warp's tokens */
        float4 *mine = xch + warp * M::XT * 32 + lane, *theirs = xch + (warp ^ 1) * M::XT * 32 + lane;
#pragma unroll
        for (int n = 0; n < NC; n++)
            mine[n * 32] = make_float4(dl[n][0], dl[n][1], dl[n][2], dl[n][3]);
#pragma unroll
        for (int n = 0; n < NH; n++) {
            const float(&x)[4] = oq[(1 - half) * NH + n];
            mine[(NC + n) * 32] = make_float4(x[0], x[1], x[2], x[3]);
        }
        asm volatile("bar.sync %0, 64;\n" ::"r"(1 + warp / 2) : "memory");
        float om[NH][4];
#pragma unroll
        for (int n = 0; n < NC; n++) {
            const float4 y = theirs[n * 32];
            dl[n][0] += y.x, dl[n][1] += y.y, dl[n][2] += y.z, dl[n][3] += y.w;
        }
#pragma unroll
        for (int n = 0; n < NH; n++) {
            const float4 y = theirs[(NC + n) * 32];
            const float(&x)[4] = oq[half * NH + n];
            om[n][0] = x[0] + y.x, om[n][1] = x[1] + y.y, om[n][2] = x[2] + y.z, om[n][3] = x[3] + y.w;
        }

        if (!M::DOUBLE) {
            __syncthreads(); /* every warp is done with W' */
            stage(set, c, false, true, bars + 1);
            wait_set(bars + 1, (unsigned)c & 1);
        }
        const float *Ks = set + M::KD;
        /* 3. the state: decayed, plus Dl Kd over the warp's Dk half */
#pragma unroll
        for (int j = 0; j < NK; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                S[j][e] *= decay;
#pragma unroll
        for (int i = 0; i < NC; i++) {
            uint32_t ah[4], al[4];
            a_of_tile(dl[i], ah, al);
            const float *k_rows = Ks + (8 * i + 2 * t4) * D;
#pragma unroll
            for (int j = 0; j < NK; j++) {
                uint32_t bh[2], bl[2];
                const int col = (k0 + 8 * j + g) ^ swK;
                b_split(k_rows[col], k_rows[D + col], bh, bl);
                mma_x<SPLIT>(S[j], ah, al, bh, bl);
            }
        }

        /* 4. the outputs of the warp's tokens o0 .. o0 + C/2 - 1: P[t][s] = 0 for s > t */
#pragma unroll
        for (int i = 0; i < NC; i++) {
            if (half == 0 && i >= NH)
                break;
            uint32_t ah[4], al[4];
            a_of_tile(dl[i], ah, al);
#pragma unroll
            for (int n = 0; n < NH; n++) {
                uint32_t bh[2], bl[2];
                const float2 y = *(const float2 *)(Ps + (o0 + 8 * n + g) * C + ((8 * i + 2 * t4) ^ swP));
                b_split(y.x, y.y, bh, bl);
                mma_x<SPLIT>(om[n], ah, al, bh, bl);
            }
        }
        const long long t0 = (a.c_first + c) * C + o0;
#pragma unroll
        for (int n = 0; n < NH; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const long long t = t0 + 8 * n + 2 * t4 + (e & 1);
                if (t < a.n)
                    *at(a.o, j0 + m0 + g + (e & 2 ? 8 : 0), h, t, b) = om[n][e];
            }
    }
#pragma unroll
    for (int j = 0; j < NK; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            *at(a.final, k0 + 8 * j + 2 * t4 + (e & 1), j0 + m0 + g + (e & 2 ? 8 : 0), h, out_slot) = S[j][e];
}

/* State rows per scan block: 32 where the grid then fits one wave (B = 1 at Qwen3.6's shapes: 128
 * blocks of 4 warps), else the most of 128 and 64 whose shared memory fits (a head's factors are
 * staged once for more of its rows). D itself where smaller. */
template <int D, int C>
__host__ __device__ constexpr int rows_few()
{
    return D < 32 ? D : 32;
}

template <int D, int C, int JB = 128>
__host__ __device__ constexpr int rows_many()
{
    if constexpr (JB < 64)
        return rows_few<D, C>();
    else if constexpr (D < JB)
        return rows_many<D, C, JB / 2>();
    else if constexpr (scan_bytes(D, C, JB) <= kMaxSmem)
        return JB;
    else
        return rows_many<D, C, JB / 2>();
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

template <int D, int C, bool SPLIT>
gdn_status run(gdn_cuda_context *context, chunk_args a, long long B)
{
    constexpr int JF = rows_few<D, C>(), JM = rows_many<D, C>();
    constexpr size_t prep_smem = prep_floats<D, C>() * sizeof(float);
    static_assert(prep_smem <= kMaxSmem && scan_smem<D, C, JF>::BYTES <= kMaxSmem &&
                  scan_smem<D, C, JM>::BYTES <= kMaxSmem, "chunked form: shared memory");
    gdn_status st = allow_smem(chunk_prep_kernel<D, C, SPLIT>, prep_smem);
    if (st == GDN_OK)
        st = allow_smem(chunk_scan_kernel<D, C, JF, SPLIT>, scan_smem<D, C, JF>::BYTES);
    if (st == GDN_OK)
        st = allow_smem(chunk_scan_kernel<D, C, JM, SPLIT>, scan_smem<D, C, JM>::BYTES);
    const bool few = (long long)(D / JF) * a.Hv * B <= context->sm_count;
    const long long chunks = (a.n + C - 1) / C;
    const size_t per_chunk = (size_t)B * a.Hv * chunk_layout<D, C>::FLOATS * sizeof(float);
    long long window = (long long)(kScratchBytes / per_chunk);
    window = window < 1 ? 1 : window > chunks ? chunks : window;
    if (st == GDN_OK)
        st = grow_scratch(context, (size_t)window * per_chunk);
    a.scratch = (float *)context->chunk_scratch;
    for (long long first = 0; st == GDN_OK && first < chunks; first += window) {
        a.c_first = first;
        a.c_count = chunks - first < window ? chunks - first : window;
        a.first_window = first == 0;
        const dim3 per_chunk_grid((unsigned)a.c_count, a.Hv, (unsigned)B);
        chunk_prep_kernel<D, C, SPLIT><<<per_chunk_grid, kThreads, prep_smem, context->stream>>>(a);
        st = gdn_cuda_check(cudaGetLastError(), "chunked form: prep kernel launch");
        if (st != GDN_OK)
            break;
        if (few)
            chunk_scan_kernel<D, C, JF, SPLIT><<<dim3(D / JF, a.Hv, (unsigned)B), 4 * JF,
                                                 scan_smem<D, C, JF>::BYTES, context->stream>>>(a);
        else
            chunk_scan_kernel<D, C, JM, SPLIT><<<dim3(D / JM, a.Hv, (unsigned)B), 4 * JM,
                                                 scan_smem<D, C, JM>::BYTES, context->stream>>>(a);
        st = gdn_cuda_check(cudaGetLastError(), "chunked form: scan kernel launch");
    }
    return st;
}

template <int D>
gdn_status run_for_chunk(gdn_cuda_context *context, const chunk_args &a, long long B, int64_t chunk, bool tf32)
{
    switch (chunk) {
    case 16: return tf32 ? run<D, 16, false>(context, a, B) : run<D, 16, true>(context, a, B);
    case 32: return tf32 ? run<D, 32, false>(context, a, B) : run<D, 32, true>(context, a, B);
    case 64: return tf32 ? run<D, 64, false>(context, a, B) : run<D, 64, true>(context, a, B);
    default:
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: chunk=%lld has no CUDA kernel", (long long)chunk);
    }
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
    a.scratch = nullptr;
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
