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
 *     then the outputs O = Oq + P Dl and the new state S = e^gamma_C S + Dl^T Kd; the JB rows of
 *     S stay in shared memory, and a block writes the outputs of its JB columns. Fusing the
 *     outputs into the scan keeps the per-chunk states out of memory (fla stores them, D^2
 *     floats a chunk, and reads them again in a third kernel).
 * The deltas solve (I - F) Dl = diag(beta) (V - e^gamma K S^T), which is the recurrence's
 * d_t + beta_t sum_{s<t} e^(gamma_t - gamma_s) (k_t . k_s) d_s = beta_t (v_t - e^gamma_t S k_t).
 *
 * Products: PTX mma.m16n8k8 with TF32 inputs and FP32 accumulation, fragments loaded from
 * shared memory by hand. By default every product runs as three TF32 products (x = hi + lo with
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

/* Shared-memory row pitches (floats). A fragment load of a lane (g, t) = (lane / 4, lane % 4)
 * reads either two consecutive floats at row g, column 2t of a tile ("row" arrays: a float2 per
 * lane; a pitch of 8 mod 32 puts each half-warp's 16 float2s in distinct banks), or one float at
 * row 2t (or 2t + 1), column g ("k-major" arrays: a pitch of 4 mod 32 puts 8t + g in distinct
 * banks). Both keep rows 16-byte aligned for the float4 staging. */
template <int N>
__host__ __device__ constexpr int row_pitch()
{
    return N + 8;
}

template <int N>
__host__ __device__ constexpr int kmajor_pitch()
{
    return N + 4;
}

/* A ROWS x COLS block of floats (COLS a multiple of 4, rows 16-byte aligned) moved by the whole
 * block in float4s: every load of a thread issued before its first store, so one memory latency
 * covers the block. */
template <int ROWS, int COLS>
struct block_regs {
    static constexpr int V = COLS / 4, N = ROWS * V, PER = (N + kThreads - 1) / kThreads;
    float4 r[PER];

    __device__ __forceinline__ void load(const float *src, size_t ld)
    {
#pragma unroll
        for (int k = 0; k < PER; k++) {
            const int x = threadIdx.x + k * kThreads;
            if (N % kThreads == 0 || x < N)
                r[k] = *(const float4 *)(src + (size_t)(x / V) * ld + (x % V) * 4);
        }
    }
    __device__ __forceinline__ void store(float *dst, size_t ld) const
    {
#pragma unroll
        for (int k = 0; k < PER; k++) {
            const int x = threadIdx.x + k * kThreads;
            if (N % kThreads == 0 || x < N)
                *(float4 *)(dst + (size_t)(x / V) * ld + (x % V) * 4) = r[k];
        }
    }
};

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
 * (g + 8, 2t + 1), from and to row-major floats with pitch LDP (scaled on the way in). */
template <int LDP>
__device__ __forceinline__ void tile_load(float (&c)[4], const float *p, float scale)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const float2 r0 = *(const float2 *)(p + g * LDP + 2 * t), r1 = *(const float2 *)(p + (g + 8) * LDP + 2 * t);
    c[0] = r0.x * scale, c[1] = r0.y * scale, c[2] = r1.x * scale, c[3] = r1.y * scale;
}

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

/* The scratch of one chunk of one head (floats; every part starts at an even offset):
 *   W'  [C][D]  -Tinv diag(beta e^gamma) K          U   [C][D]  Tinv diag(beta) V
 *   Kd  [C][D]  e^(gamma_C - gamma_t) k_t           Qe  [C][D]  e^gamma_t q_t
 *   P   [C][C]  the output factors                  gam [C] */
template <int D, int C>
struct chunk_layout {
    static constexpr size_t W = 0, U = (size_t)C * D, KD = 2 * (size_t)C * D, QE = 3 * (size_t)C * D;
    static constexpr size_t P = 4 * (size_t)C * D, GAM = P + (size_t)C * C, FLOATS = GAM + C;
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
        out[L::P + x] = P[t * LC + s];
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
            *(float4 *)(out + L::KD + x) = make_float4(kv.x * fkd, kv.y * fkd, kv.z * fkd, kv.w * fkd);
            *(float4 *)(out + L::QE + x) = make_float4(qv.x * fq, qv.y * fq, qv.z * fq, qv.w * fq);
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
        float *dst = out + (which ? L::U : L::W) + tm * 16 * D + tn * 16;
        tile_store<D>(dst, acc[0], which ? 1.0f : -1.0f);
        tile_store<D>(dst + 8, acc[1], which ? 1.0f : -1.0f);
    }
}

/* Shared memory of the scan (floats): S [JB][row], the staged set (W' [C][row], Qe then Kd
 * [C][row]: Qe is done with before Kd is needed, and sharing the buffer lets D = 256 with C = 64
 * fit; Dl [C][k-major], P [C][row]), Oq [C][row]. */
template <int D, int C, int JB>
__host__ __device__ constexpr bool scan_ahead()
{
    return (3 * C * D + C * JB + C * C) / kThreads <= 64;
}

/* One chunk's staged factors: W' and Qe [C][row], with DOUBLE Kd [C][k-major] of its own (else
 * Kd takes Qe's place), Dl [C][k-major], P [C][row]. */
template <int D, int C, int JB, bool DOUBLE>
__host__ __device__ constexpr size_t scan_set_floats()
{
    return (size_t)C * (2 * row_pitch<D>() + (DOUBLE ? kmajor_pitch<D>() : 0) + kmajor_pitch<JB>() + row_pitch<C>());
}

/* DOUBLE (the SPLIT scan instance of one block an SM, where its factors fit registers): two sets,
 * the next chunk's staged while this one computes. */
template <int D, int C, int JB, bool DOUBLE>
__host__ __device__ constexpr size_t scan_floats()
{
    return (size_t)JB * row_pitch<D>() + (DOUBLE ? 2 : 1) * scan_set_floats<D, C, JB, DOUBLE>() +
           (size_t)C * row_pitch<JB>();
}

/* The chunks of a window in order, for JB state rows j0.. of a head: per chunk
 *   1. [Dl; Oq] = [U; 0] + [W'; Qe] S^T            (2C x JB, over D)
 *   2. O = Oq + P Dl, stored                      (C x JB, over C)
 *      S = e^gamma_C S + Dl^T Kd                  (JB x D, over C; beside 2, on other warps)
 * Where they fit in 64 floats a thread, W', Qe, U, P and (KD_AHEAD) Kd of the next chunk are
 * loaded into registers while a chunk computes (at B = 1 the scan's few blocks wait on these
 * loads); else Kd is loaded while step 1 runs. */
template <int D, int C, int JB, bool SPLIT, int MIN_BLOCKS>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS) chunk_scan_kernel(chunk_args a)
{
    using L = chunk_layout<D, C>;
    constexpr int LD = row_pitch<D>(), LK = kmajor_pitch<D>(), LJ = kmajor_pitch<JB>(), LO = row_pitch<JB>();
    constexpr int LC = row_pitch<C>();
    /* step 1: 16-row tiles of [W'; Qe] by 16 columns; step 2: outputs 16 x (8 NO), state 16 x
     * (8 NN4). The outputs are single 16 x 8 tiles (NO = 1): at C = 32, JB = 32 the 8 state and 8
     * output items then give every warp one of each. With 16 x 16 output tiles 4 warps took a
     * state and an output item while 4 waited at the barrier (ncu at B = 1: 14% of the scan's
     * stall samples on barriers); with gamma_C loaded ahead too, T=4096 B=1 0.775 -> 0.736 ms
     * (docs/PERF.md). Each output is the same sum in the same order either way. */
    constexpr int NO = 1;
    constexpr int M1 = 2 * C / 16, N1 = JB / 16, M2 = C / 16, N2 = JB / (8 * NO);
    constexpr int NN4 = D >= 32 ? 4 : D / 8, M4 = JB / 16, N4 = D / (8 * NN4);
    constexpr bool AHEAD = scan_ahead<D, C, JB>();
    /* Double-buffered staging (SPLIT, one block an SM, factors a chunk ahead in registers): the
     * next chunk's W', Qe, Kd, U and P go to the other set while this chunk's step 1 runs, so a
     * chunk has two barriers instead of four and no phase that only moves data (ncu at B = 1:
     * 13-14% of the scan's stall samples were in those two phases). The same arithmetic.
     * T=4096 B=1 on an H100: 0.611 -> 0.589 ms; the one-pass kernel went 0.476 -> 0.485, so it
     * keeps one set (docs/PERF.md). */
    constexpr bool DOUBLE = MIN_BLOCKS == 1 && AHEAD && SPLIT;
    /* Kd a chunk ahead too: 5% faster with SPLIT at B = 1 T = 4096 on an H100, but 11% slower in
     * the one-pass kernel (docs/PERF.md; the cause was not found), which loads it during step 1. */
    constexpr bool KD_AHEAD = AHEAD && SPLIT;
    /* a staged set's W', Qe, Kd (Qe's place unless DOUBLE), Dl and P, from its start */
    constexpr int SET = (int)scan_set_floats<D, C, JB, DOUBLE>(), SQ = C * LD, SK = DOUBLE ? 2 * C * LD : SQ;
    constexpr int SD = DOUBLE ? SK + C * LK : 2 * C * LD, SP = SD + C * LJ;
    extern __shared__ __align__(128) float smem[];
    float *S = smem, *Os = smem + JB * LD + (DOUBLE ? 2 : 1) * SET;
    const int j0 = blockIdx.x * JB, h = blockIdx.y, b = blockIdx.z, warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;

    int slot = b, out_slot = b;
    if (a.state_index != nullptr)
        slot = *(const int *)(a.state_index + b * a.state_index_nb);
    if (a.final_index != nullptr)
        out_slot = *(const int *)(a.final_index + b * a.final_index_nb);
    const chunk_view &from = a.first_window ? a.state : a.final;
    const int from_slot = a.first_window ? slot : out_slot;
    for (int x = threadIdx.x; x < JB * D; x += kThreads)
        S[x / D * LD + x % D] = load(from, x % D, j0 + x / D, h, from_slot);

    block_regs<C, D> w, q, kd;
    block_regs<C, JB> u;
    block_regs<C, C> p;
    /* AHEAD: gamma_C of the chunk about to run, loaded with its factors: read at the top of each
     * chunk, it had every warp wait on memory before the first barrier (ncu: 8% of the stall
     * samples at B = 1). */
    float gam_last = 0.0f;
    auto load_ahead = [&](long long c) {
        const float *next = chunk_scratch<D, C>(a, b, h, c);
        w.load(next + L::W, D);
        q.load(next + L::QE, D);
        u.load(next + L::U + j0, D);
        p.load(next + L::P, C);
        if (KD_AHEAD)
            kd.load(next + L::KD, D);
        gam_last = next[L::GAM + C - 1];
    };
    auto stage = [&](float *set) {
        w.store(set, LD);
        q.store(set + SQ, LD);
        u.store(set + SD, LJ);
        p.store(set + SP, LC);
        if (DOUBLE)
            kd.store(set + SK, LK);
    };
    float decay_next = 0.0f; /* DOUBLE: e^gamma_C of the chunk staged next */
    if (AHEAD)
        load_ahead(0);
    if (DOUBLE) {
        stage(smem + JB * LD);
        decay_next = expf(gam_last);
        if (a.c_count > 1)
            load_ahead(1);
        __syncthreads();
    }
    /* One state item and one output item a warp (D = 128, C = 32): their two chains of products
     * are independent, so the warp runs them side by side rather than one after the other
     * (T=4096 on an H100: B=1 0.641 -> 0.600 ms, TF32 0.508 -> 0.483, B=8 4.61 -> 4.49,
     * docs/PERF.md). Every sum is the same as in the loop. The output item is then the same
     * every chunk; in the one-pass kernel its elements' addresses are set once (o_mine: the
     * thread's first output element of the chunk; TF32 B=1 0.483 -> 0.474, B=8 3.63 -> 3.59),
     * not with SPLIT, whose two-block instance then spilled and lost 1.3% at B = 8. */
    constexpr bool PAIRED = M4 * N4 == kWarps && M2 * N2 == kWarps;
    char *o_mine = nullptr;
    if (PAIRED && !SPLIT)
        o_mine = a.o.data + (long long)h * a.o.nb[1] + (long long)b * a.o.nb[3] +
                 (a.c_first * C + warp / N2 * 16 + g) * a.o.nb[2] +
                 (long long)(j0 + warp % N2 * 8 * NO + 2 * t4) * a.o.nb[0];
    for (long long c = 0; c < a.c_count; c++) {
        const float *in = chunk_scratch<D, C>(a, b, h, c);
        const int buf = DOUBLE ? (int)(c & 1) : 0;
        float *Ws = smem + JB * LD + buf * SET, *QK = Ws + SQ, *Kd = Ws + SK, *Dl = Ws + SD, *P = Ws + SP;
        float decay = decay_next;
        if (!DOUBLE) {
            if (!AHEAD) {
                w.load(in + L::W, D);
                q.load(in + L::QE, D);
                u.load(in + L::U + j0, D);
                p.load(in + L::P, C);
            }
            w.store(Ws, LD);
            q.store(QK, LD);
            u.store(Dl, LJ);
            p.store(P, LC);
            decay = expf(AHEAD ? gam_last : in[L::GAM + C - 1]);
            __syncthreads();
            if (!KD_AHEAD)
                kd.load(in + L::KD, D);
            if (AHEAD && c + 1 < a.c_count) {
                const float *next = chunk_scratch<D, C>(a, b, h, c + 1);
                w.load(next + L::W, D);
                q.load(next + L::QE, D);
                u.load(next + L::U + j0, D);
                p.load(next + L::P, C);
                gam_last = next[L::GAM + C - 1];
            }
        }
        for (int item = warp; item < M1 * N1; item += kWarps) { /* 1 */
            const int tm = item / N1, tn = item % N1;
            const bool delta = tm < C / 16;
            float acc[2][4];
            if (delta) {
                tile_load<LJ>(acc[0], Dl + tm * 16 * LJ + tn * 16, 1.0f);
                tile_load<LJ>(acc[1], Dl + tm * 16 * LJ + tn * 16 + 8, 1.0f);
            } else {
                tiles_zero(acc);
            }
            const float *rows = delta ? Ws + tm * 16 * LD : QK + (tm - C / 16) * 16 * LD;
            mma_rows<D, 2, SPLIT, LD, 1, 1, LD>(acc, rows, S + tn * 16 * LD);
            float *dst = delta ? Dl + tm * 16 * LJ + tn * 16 : Os + (tm - C / 16) * 16 * LO + tn * 16;
            if (delta) {
                tile_store<LJ>(dst, acc[0], 1.0f);
                tile_store<LJ>(dst + 8, acc[1], 1.0f);
            } else {
                tile_store<LO>(dst, acc[0], 1.0f);
                tile_store<LO>(dst + 8, acc[1], 1.0f);
            }
        }
        if (DOUBLE && c + 1 < a.c_count) { /* the next chunk's set, then the one after into registers */
            stage(smem + JB * LD + (buf ^ 1) * SET);
            decay_next = expf(gam_last);
            if (c + 2 < a.c_count)
                load_ahead(c + 2);
        }
        __syncthreads();
        if (!DOUBLE) {
            kd.store(Kd, LK);
            if (KD_AHEAD && c + 1 < a.c_count)
                kd.load(chunk_scratch<D, C>(a, b, h, c + 1) + L::KD, D);
            __syncthreads();
        }
        /* The state's rows tm, columns tn of NN4 tiles (item < M4 N4): decay S, then the product
         * (loads and tensor-core products only) and the store, apart so that a warp may run two
         * items' products together. */
        auto state_load = [&](int item, float (&acc)[NN4][4]) {
            const int tm = item / N4, tn = item % N4;
#pragma unroll
            for (int n = 0; n < NN4; n++)
                tile_load<LD>(acc[n], S + tm * 16 * LD + tn * 8 * NN4 + 8 * n, decay);
        };
        auto state_product = [&](int item, float (&acc)[NN4][4]) {
            const int tm = item / N4, tn = item % N4;
            mma_rows<C, NN4, SPLIT, 1, LJ, LK, 1>(acc, Dl + tm * 16, Kd + tn * 8 * NN4);
        };
        auto state_store = [&](int item, const float (&acc)[NN4][4]) {
            const int tm = item / N4, tn = item % N4;
#pragma unroll
            for (int n = 0; n < NN4; n++)
                tile_store<LD>(S + tm * 16 * LD + tn * 8 * NN4 + 8 * n, acc[n], 1.0f);
        };
        /* The outputs of tokens tm, columns tn (output item o < M2 N2), likewise. */
        auto out_load = [&](int o, float (&acc)[NO][4]) {
            const int tm = o / N2, tn = o % N2;
#pragma unroll
            for (int n = 0; n < NO; n++)
                tile_load<LO>(acc[n], Os + tm * 16 * LO + tn * 8 * NO + 8 * n, 1.0f);
        };
        auto out_product = [&](int o, float (&acc)[NO][4]) {
            const int tm = o / N2, tn = o % N2;
            mma_rows<C, NO, SPLIT, LC, 1, LJ, 1>(acc, P + tm * 16 * LC, Dl + tn * 8 * NO);
        };
        auto out_store = [&](int o, const float (&acc)[NO][4]) {
            const int tm = o / N2, tn = o % N2;
            const long long t0 = (a.c_first + c) * C + tm * 16;
#pragma unroll
            for (int n = 0; n < NO; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = g + (e & 2 ? 8 : 0), col = j0 + tn * 8 * NO + n * 8 + 2 * t4 + (e & 1);
                    if (t0 + row < a.n)
                        *at(a.o, col, h, t0 + row, b) = acc[n][e];
                }
        };
        if constexpr (PAIRED) {
            float sacc[NN4][4], oacc[NO][4];
            state_load(warp, sacc);
            out_load(warp, oacc);
            state_product(warp, sacc);
            out_product(warp, oacc);
            state_store(warp, sacc);
            if constexpr (SPLIT) {
                out_store(warp, oacc);
            } else {
                const long long t0 = (a.c_first + c) * C + warp / N2 * 16; /* the warp's first token */
#pragma unroll
                for (int n = 0; n < NO; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (t0 + g + (e & 2 ? 8 : 0) < a.n)
                            *(float *)(o_mine + (e & 2 ? 8 * a.o.nb[2] : 0) + (e & 1 ? a.o.nb[0] : 0) +
                                       n * 8 * a.o.nb[0]) = oacc[n][e];
                o_mine += C * a.o.nb[2];
            }
        } else {
            for (int item = warp; item < M4 * N4 + M2 * N2; item += kWarps) {
                if (item < M4 * N4) {
                    float acc[NN4][4];
                    state_load(item, acc);
                    state_product(item, acc);
                    state_store(item, acc);
                } else {
                    float acc[NO][4];
                    out_load(item - M4 * N4, acc);
                    out_product(item - M4 * N4, acc);
                    out_store(item - M4 * N4, acc);
                }
            }
        }
        __syncthreads();
    }
    for (int x = threadIdx.x; x < JB * D; x += kThreads)
        *at(a.final, x % D, j0 + x / D, h, out_slot) = S[x / D * LD + x % D];
}

/* State rows per scan block: 32 (16 at D = 256, to fit shared memory; D itself when smaller). */
template <int D>
__host__ __device__ constexpr int rows_per_block()
{
    return D >= 256 ? 16 : D < 32 ? D : 32;
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
    constexpr int JB = rows_per_block<D>();
    constexpr size_t prep_smem = prep_floats<D, C>() * sizeof(float);
    constexpr size_t scan_smem = scan_floats<D, C, JB, false>() * sizeof(float);
    constexpr size_t alone_smem = scan_floats<D, C, JB, scan_ahead<D, C, JB>() && SPLIT>() * sizeof(float);
    static_assert(prep_smem <= kMaxSmem && scan_smem <= kMaxSmem && alone_smem <= kMaxSmem,
                  "chunked form: shared memory");
    gdn_status st = allow_smem(chunk_prep_kernel<D, C, SPLIT>, prep_smem);
    if (st == GDN_OK)
        st = allow_smem(chunk_scan_kernel<D, C, JB, SPLIT, 2>, scan_smem);
    if (st == GDN_OK)
        st = allow_smem(chunk_scan_kernel<D, C, JB, SPLIT, 1>, alone_smem);
    /* A scan grid of at most one block an SM (B = 1 at Qwen3.6's shapes: 128 blocks) runs the
     * instance compiled for one block an SM: the same code and arithmetic (every bit the same),
     * with up to 255 registers instead of 128 (151, no spills, against 128 and 12 bytes spilled).
     * Its chunk steps are latency-bound, and T=4096 B=1 went 0.744 -> 0.703 ms (docs/PERF.md). */
    const bool alone = (long long)(D / JB) * a.Hv * B <= context->sm_count;
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
        const dim3 scan_grid(D / JB, a.Hv, (unsigned)B);
        if (alone)
            chunk_scan_kernel<D, C, JB, SPLIT, 1><<<scan_grid, kThreads, alone_smem, context->stream>>>(a);
        else
            chunk_scan_kernel<D, C, JB, SPLIT, 2><<<scan_grid, kThreads, scan_smem, context->stream>>>(a);
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
