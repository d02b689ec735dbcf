/* gdn_cuda_chunk.cu: the chunked form of the Gated DeltaNet op on CUDA (include/gdn.h, "The
 * chunked form"), with the chunk's matrix products on tensor cores.
 *
 * Three kernels per window of chunks (the window bounds the scratch), the split fla makes:
 *   prep (one block per chunk, head and sequence; all chunks in parallel): the chunk's k and q
 *     (normalised and scaled as the op asks), gamma (running sum of g), Akk = K K^T and
 *     Aqk = Q K^T on tensor cores, the factors
 *         F[t][s] = -beta_t e^(gamma_t - gamma_s) Akk[t][s]  (s < t),
 *         P[t][s] = e^(gamma_t - gamma_s) Aqk[t][s]          (s <= t),
 *     Tinv = (I - F)^-1 by forward substitution (column by column, 256/C lanes a column), and
 *     W' = -Tinv diag(beta e^gamma) K, U = Tinv diag(beta) V, Kd = e^(gamma_C - gamma) K, all
 *     stored to the scratch: none of it depends on the state.
 *   scan (one block per JB state rows of a head and sequence; the window's chunks in order): per
 *     chunk the state S goes to the scratch (H), the deltas Dl = U + W' S^T replace U, then
 *     S = e^gamma_C S + Dl^T Kd; the JB rows of S stay in shared memory.
 *   out (one block per chunk, head, sequence and OB output columns; all chunks in parallel):
 *     O = (e^gamma Q) H^T + P Dl.
 * The deltas solve (I - F) Dl = diag(beta) (V - e^gamma K S^T), which is the recurrence's
 * d_t + beta_t sum_{s<t} e^(gamma_t - gamma_s) (k_t . k_s) d_s = beta_t (v_t - e^gamma_t S k_t).
 *
 * Precision: by default every product runs as three TF32 products (x = hi + lo, each a TF32
 * value; lo*hi + hi*lo + hi*hi, accumulated in FP32), which keeps about FP32 accuracy (the lo*lo
 * term is below FP32 rounding) at three tensor-core passes per product; with params.chunk_tf32
 * one pass (hi*hi: TF32 inputs, FP32 accumulation). The measured errors against float64 are in
 * docs/PERF.md. Results are deterministic (fixed tiles, fixed order) and do not depend on B. */
#include "cuda_internal.h"

#include <mma.h>

namespace {

using namespace nvcuda;

constexpr int kThreads = 256, kWarps = kThreads / 32;
/* Scratch for the chunked form: at most this many bytes (windows of chunks beyond it). */
constexpr size_t kScratchBytes = size_t(512) << 20;

struct chunk_view {
    char *data;
    long long nb[4];
};

struct chunk_args {
    chunk_view q, k, v, g, beta, o, state, final;
    const char *state_index, *final_index;
    long long state_index_nb, final_index_nb;
    int Hk, Hv, interleaved, l2norm;
    float scale;
    long long n;                /* tokens run in chunks */
    long long c_first, c_count; /* this window's chunks */
    int first_window;           /* 1: the state comes from `state`; 0: from `final` (the last window's) */
    float *scratch;             /* [B][Hv][c_count][2 C*C + C]: Tinv, P, gamma */
};

__device__ __forceinline__ float load(const chunk_view &v, long long i0, long long i1, long long i2, long long i3)
{
    return *(const float *)(v.data + i0 * v.nb[0] + i1 * v.nb[1] + i2 * v.nb[2] + i3 * v.nb[3]);
}

__device__ __forceinline__ float *at(const chunk_view &v, long long i0, long long i1, long long i2, long long i3)
{
    return (float *)(v.data + i0 * v.nb[0] + i1 * v.nb[1] + i2 * v.nb[2] + i3 * v.nb[3]);
}

/* Shared-memory row pitches (floats): a multiple of 4 (wmma's rule for 32-bit elements) that
 * shifts consecutive rows by 4 banks. */
template <int N>
__host__ __device__ constexpr int pitch()
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

using frag_a_row = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using frag_a_col = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using frag_b_row = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using frag_b_col = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using frag_acc = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

/* hi <- TF32(x), lo <- TF32(x - hi), element by element. */
template <class Frag>
__device__ __forceinline__ void split(Frag &hi, Frag &lo)
{
#pragma unroll
    for (int e = 0; e < hi.num_elements; e++) {
        const float x = hi.x[e], h = wmma::__float_to_tf32(x);
        hi.x[e] = h;
        lo.x[e] = wmma::__float_to_tf32(x - h);
    }
}

/* acc += A B over k in [0, K) (a multiple of 8): A's tile rows start at `a` and B's tile columns
 * at `b`; A(m, k) is a[m lda + k] (row-major) or a[k lda + m] (col-major), B(k, n) is
 * b[k ldb + n] (row-major) or b[n ldb + k] (col-major). Three TF32 products per step, small
 * terms first. */
template <class FA, class FB, bool A_ROW, bool B_ROW, int K, bool SPLIT>
__device__ __forceinline__ void mma_acc(frag_acc &acc, const float *a, int lda, const float *b, int ldb)
{
    FA a_hi, a_lo;
    FB b_hi, b_lo;
#pragma unroll
    for (int k = 0; k < K; k += 8) {
        wmma::load_matrix_sync(a_hi, A_ROW ? a + k : a + (size_t)k * lda, lda);
        wmma::load_matrix_sync(b_hi, B_ROW ? b + (size_t)k * ldb : b + k, ldb);
        split(a_hi, a_lo);
        split(b_hi, b_lo);
        if (SPLIT) {
            wmma::mma_sync(acc, a_lo, b_hi, acc);
            wmma::mma_sync(acc, a_hi, b_lo, acc);
        }
        wmma::mma_sync(acc, a_hi, b_hi, acc);
    }
}

/* The chunk's k and q (normalised when asked, q scaled) into Ks, Qs [C][pitch<D>], beta and the
 * running sum gamma of g into bet, gam [C]; tokens at or beyond a.n are zeros (they change
 * nothing). One warp per token. Both kernels call this, so both see the same floats. */
template <int D, int C, bool WANT_K = true>
__device__ void load_chunk(const chunk_args &a, float *Ks, float *Qs, float *gam, float *bet, int b, int h,
                           long long t0)
{
    constexpr int LD = pitch<D>();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int hk = a.interleaved ? h / (a.Hv / a.Hk) : h % a.Hk;
#pragma unroll
    for (int r = 0; r < (C + kWarps - 1) / kWarps; r++) {
        const int t = warp + r * kWarps;
        if (t >= C)
            break;
        const bool valid = t0 + t < a.n;
        float kx[(D + 31) / 32], qx[(D + 31) / 32], kk = 0.0f, qq = 0.0f;
#pragma unroll
        for (int e = 0; e < (D + 31) / 32; e++) {
            const int i = lane + 32 * e;
            kx[e] = WANT_K && valid && i < D ? load(a.k, i, hk, t0 + t, b) : 0.0f;
            qx[e] = valid && i < D ? load(a.q, i, hk, t0 + t, b) : 0.0f;
            kk = fmaf(kx[e], kx[e], kk);
            qq = fmaf(qx[e], qx[e], qq);
        }
#pragma unroll
        for (int m = 16; m >= 1; m /= 2) {
            kk += __shfl_xor_sync(0xffffffffu, kk, m);
            qq += __shfl_xor_sync(0xffffffffu, qq, m);
        }
        const float ik = a.l2norm ? 1.0f / sqrtf(kk + 1e-6f) : 1.0f;
        const float iq = (a.l2norm ? 1.0f / sqrtf(qq + 1e-6f) : 1.0f) * a.scale;
#pragma unroll
        for (int e = 0; e < (D + 31) / 32; e++) {
            const int i = lane + 32 * e;
            if (i < D) {
                if (WANT_K)
                    Ks[t * LD + i] = kx[e] * ik;
                Qs[t * LD + i] = qx[e] * iq;
            }
        }
    }
    if (threadIdx.x < C) {
        const int t = threadIdx.x;
        const bool valid = t0 + t < a.n;
        gam[t] = valid ? load(a.g, h, t0 + t, b, 0) : 0.0f;
        bet[t] = valid ? load(a.beta, h, t0 + t, b, 0) : 0.0f;
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

/* The scratch of one chunk of one head (floats, each part 32-byte aligned for wmma):
 *   W'  [C][D]  -Tinv diag(beta e^gamma) K          U  [C][D]  Tinv diag(beta) V, then the deltas
 *   Kd  [C][D]  e^(gamma_C - gamma_t) k_t           P  [C][C]  the output factors
 *   gam [C]                                         H  [D][D]  the state before the chunk, [j][i] */
template <int D, int C>
struct chunk_layout {
    static constexpr size_t W = 0, U = (size_t)C * D, KD = 2 * (size_t)C * D, P = 3 * (size_t)C * D;
    static constexpr size_t GAM = P + (size_t)C * C, H = GAM + C, FLOATS = H + (size_t)D * D;
};

template <int D, int C>
__host__ __device__ constexpr size_t prep_floats()
{
    return 2 * (size_t)C * pitch<D>() + 2 * (size_t)C * pitch<C>() + 4 * C;
}

template <int D, int C>
__device__ __forceinline__ float *chunk_scratch(const chunk_args &a, int b, int h, long long c)
{
    return a.scratch + (((size_t)b * a.Hv + h) * a.c_count + c) * chunk_layout<D, C>::FLOATS;
}

template <int D, int C, bool SPLIT>
__global__ void __launch_bounds__(kThreads) chunk_prep_kernel(chunk_args a)
{
    using L = chunk_layout<D, C>;
    constexpr int LD = pitch<D>(), LC = pitch<C>(), NT = C / 16, ND = D / 16;
    extern __shared__ __align__(128) float smem[];
    /* Tn takes P's place once P is in the scratch (two blocks fit an SM). */
    float *Ks = smem, *Xs = Ks + C * LD, *F = Xs + C * LD, *P = F + C * LC, *Tn = P;
    float *gam = P + C * LC, *bet = gam + C, *fac_kd = bet + C, *fac_k = fac_kd + C;
    const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, warp = threadIdx.x / 32;
    const long long t0 = (a.c_first + c) * C;
    float *out = chunk_scratch<D, C>(a, b, h, c);
    load_chunk<D, C>(a, Ks, Xs, gam, bet, b, h, t0);

    /* Akk into F, Aqk into P: B = K^T, i.e. K read col-major. */
    for (int tile = warp; tile < 2 * NT * NT; tile += kWarps) {
        const int which = tile / (NT * NT), tm = tile % (NT * NT) / NT, tn = tile % NT;
        frag_acc acc;
        wmma::fill_fragment(acc, 0.0f);
        const float *rows = (which ? Xs : Ks) + tm * 16 * LD;
        mma_acc<frag_a_row, frag_b_col, true, false, D, SPLIT>(acc, rows, LD, Ks + tn * 16 * LD, LD);
        wmma::store_matrix_sync((which ? P : F) + tm * 16 * LC + tn * 16, acc, LC, wmma::mem_row_major);
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
        /* the per-token factors, once each (the loop below would take 2 C D exponentials) */
        fac_kd[t] = expf(gam[C - 1] - gam[t]);
        fac_k[t] = bet[t] * expf(gam[t]);
    }
    __syncthreads();
    /* Kd, then K scaled by beta e^gamma and V by beta (Q is no longer needed) in place. */
    for (int x = threadIdx.x; x < C * D; x += kThreads) {
        const int t = x / D, i = x % D;
        const float k = Ks[t * LD + i];
        out[L::KD + x] = k * fac_kd[t];
        Ks[t * LD + i] = k * fac_k[t];
        Xs[t * LD + i] = t0 + t < a.n ? bet[t] * load(a.v, i, h, t0 + t, b) : 0.0f;
    }
    __syncthreads();
    /* Tinv column by column: x_t = [t == col] + sum_{col <= s < t} F[t][s] x_s, PARTS lanes per
     * column (adjacent lanes of one warp), each summing every PARTS-th s, then a fixed tree. */
    constexpr int PARTS = kThreads / C;
    const int col = threadIdx.x / PARTS, part = threadIdx.x % PARTS;
    for (int t = 0; t < C; t++) {
        float sum = 0.0f;
        for (int s = col + part; s < t; s += PARTS)
            sum = fmaf(F[t * LC + s], Tn[s * LC + col], sum);
#pragma unroll
        for (int m = 1; m < PARTS; m *= 2)
            sum += __shfl_xor_sync(0xffffffffu, sum, m);
        if (part == 0)
            Tn[t * LC + col] = t < col ? 0.0f : t == col ? 1.0f : sum;
        __syncwarp();
    }
    __syncthreads();
    /* W' = -Tinv (beta e^gamma K), U = Tinv (beta V), stored straight to the scratch. */
    for (int tile = warp; tile < 2 * NT * ND; tile += kWarps) {
        const int which = tile / (NT * ND), tm = tile % (NT * ND) / ND, tn = tile % ND;
        frag_acc acc;
        wmma::fill_fragment(acc, 0.0f);
        const float *cols = (which ? Xs : Ks) + tn * 16;
        mma_acc<frag_a_row, frag_b_row, true, true, C, SPLIT>(acc, Tn + tm * 16 * LC, LC, cols, LD);
        if (!which)
            for (int e = 0; e < acc.num_elements; e++)
                acc.x[e] = -acc.x[e];
        wmma::store_matrix_sync(out + (which ? L::U : L::W) + tm * 16 * D + tn * 16, acc, D, wmma::mem_row_major);
    }
}

template <int D, int C, int JB>
__host__ __device__ constexpr size_t scan_floats()
{
    return (size_t)JB * pitch<D>() + 2 * (size_t)C * pitch<D>() + (size_t)C * pitch<JB>();
}

/* The chunks of a window in order, for JB state rows: per chunk the state goes to H, then the
 * deltas Dl = U + W' S^T replace U's columns, then S = e^gamma_C S + Dl^T Kd. */
template <int D, int C, int JB, bool SPLIT>
__global__ void __launch_bounds__(kThreads) chunk_scan_kernel(chunk_args a)
{
    using L = chunk_layout<D, C>;
    constexpr int LD = pitch<D>(), LJ = pitch<JB>(), NT = C / 16, NJ = JB / 16, NI = D / 16;
    extern __shared__ __align__(128) float smem[];
    float *S = smem, *Ws = S + JB * LD, *Kds = Ws + C * LD, *Dl = Kds + C * LD;
    const int j0 = blockIdx.x * JB, h = blockIdx.y, b = blockIdx.z, warp = threadIdx.x / 32;

    int slot = b, out_slot = b;
    if (a.state_index != nullptr)
        slot = *(const int *)(a.state_index + b * a.state_index_nb);
    if (a.final_index != nullptr)
        out_slot = *(const int *)(a.final_index + b * a.final_index_nb);
    const chunk_view &from = a.first_window ? a.state : a.final;
    const int from_slot = a.first_window ? slot : out_slot;
    for (int x = threadIdx.x; x < JB * D; x += kThreads)
        S[x / D * LD + x % D] = load(from, x % D, j0 + x / D, h, from_slot);
    __syncthreads();

    /* Chunk c + 1's W', Kd and U are loaded into registers while chunk c computes. */
    block_regs<C, D> w, kd;
    block_regs<C, JB> u;
    {
        const float *first = chunk_scratch<D, C>(a, b, h, 0);
        w.load(first + L::W, D);
        kd.load(first + L::KD, D);
        u.load(first + L::U + j0, D);
    }
    for (long long c = 0; c < a.c_count; c++) {
        float *in = chunk_scratch<D, C>(a, b, h, c);
        {
            block_regs<JB, D> state;
            state.load(S, LD);
            state.store(in + L::H + (size_t)j0 * D, D);
        }
        w.store(Ws, LD);
        kd.store(Kds, LD);
        u.store(Dl, LJ);
        const float decay = expf(in[L::GAM + C - 1]);
        __syncthreads();
        if (c + 1 < a.c_count) {
            const float *next = chunk_scratch<D, C>(a, b, h, c + 1);
            w.load(next + L::W, D);
            kd.load(next + L::KD, D);
            u.load(next + L::U + j0, D);
        }
        for (int tile = warp; tile < NT * NJ; tile += kWarps) {
            const int tm = tile / NJ, tn = tile % NJ;
            frag_acc acc;
            wmma::load_matrix_sync(acc, Dl + tm * 16 * LJ + tn * 16, LJ, wmma::mem_row_major);
            mma_acc<frag_a_row, frag_b_col, true, false, D, SPLIT>(acc, Ws + tm * 16 * LD, LD, S + tn * 16 * LD, LD);
            wmma::store_matrix_sync(Dl + tm * 16 * LJ + tn * 16, acc, LJ, wmma::mem_row_major);
        }
        __syncthreads();
        {
            block_regs<C, JB> dl;
            dl.load(Dl, LJ);
            dl.store(in + L::U + j0, D);
        }
        for (int x = threadIdx.x; x < JB * D; x += kThreads)
            S[x / D * LD + x % D] *= decay;
        __syncthreads();
        for (int tile = warp; tile < NJ * NI; tile += kWarps) { /* S += Dl^T Kd */
            const int tm = tile / NI, tn = tile % NI;
            frag_acc acc;
            wmma::load_matrix_sync(acc, S + tm * 16 * LD + tn * 16, LD, wmma::mem_row_major);
            mma_acc<frag_a_col, frag_b_row, false, true, C, SPLIT>(acc, Dl + tm * 16, LJ, Kds + tn * 16, LD);
            wmma::store_matrix_sync(S + tm * 16 * LD + tn * 16, acc, LD, wmma::mem_row_major);
        }
        __syncthreads();
    }
    for (int x = threadIdx.x; x < JB * D; x += kThreads)
        *at(a.final, x % D, j0 + x / D, h, out_slot) = S[x / D * LD + x % D];
}

/* Output columns per block of the output kernel (32 at D = 256, to fit shared memory). */
template <int D>
__host__ __device__ constexpr int out_columns()
{
    return D < 64 ? D : D >= 256 ? 32 : 64;
}

template <int D, int C>
__host__ __device__ constexpr size_t out_floats()
{
    constexpr int OB = out_columns<D>();
    return (size_t)C * pitch<D>() + (size_t)OB * pitch<D>() + (size_t)C * pitch<C>() + (size_t)C * pitch<OB>() +
           2 * C;
}

/* Outputs of one chunk, OB columns: O = (e^gamma Q) H^T + P Dl. */
template <int D, int C, bool SPLIT>
__global__ void __launch_bounds__(kThreads) chunk_out_kernel(chunk_args a)
{
    using L = chunk_layout<D, C>;
    constexpr int OB = out_columns<D>(), LD = pitch<D>(), LC = pitch<C>(), LO = pitch<OB>();
    constexpr int NT = C / 16, NO = OB / 16;
    extern __shared__ __align__(128) float smem[];
    /* The outputs are staged in Qs once every tile has been computed (two blocks fit an SM). */
    float *Qs = smem, *Hs = Qs + C * LD, *P = Hs + OB * LD, *Dl = P + C * LC, *Os = Qs;
    float *gam = Dl + C * LO, *bet = gam + C;
    const int c = blockIdx.x, h = blockIdx.y % a.Hv, j0 = blockIdx.y / a.Hv * OB, b = blockIdx.z;
    const int warp = threadIdx.x / 32;
    const long long t0 = (a.c_first + c) * C;
    const float *in = chunk_scratch<D, C>(a, b, h, c);
    load_chunk<D, C, false>(a, nullptr, Qs, gam, bet, b, h, t0);
    if (threadIdx.x < C)
        bet[threadIdx.x] = expf(gam[threadIdx.x]); /* beta is not needed here: e^gamma in its place */
    __syncthreads();
    for (int x = threadIdx.x; x < C * D; x += kThreads)
        Qs[x / D * LD + x % D] *= bet[x / D];
    {
        block_regs<OB, D> hr;
        block_regs<C, C> pr;
        block_regs<C, OB> dr;
        hr.load(in + L::H + (size_t)j0 * D, D);
        pr.load(in + L::P, C);
        dr.load(in + L::U + j0, D);
        hr.store(Hs, LD);
        pr.store(P, LC);
        dr.store(Dl, LO);
    }
    __syncthreads();
    constexpr int PER_WARP = (NT * NO + kWarps - 1) / kWarps;
    frag_acc acc[PER_WARP];
#pragma unroll
    for (int r = 0; r < PER_WARP; r++) {
        const int tile = warp + r * kWarps, tm = tile / NO, tn = tile % NO;
        if (tile >= NT * NO)
            break;
        wmma::fill_fragment(acc[r], 0.0f);
        mma_acc<frag_a_row, frag_b_col, true, false, D, SPLIT>(acc[r], Qs + tm * 16 * LD, LD, Hs + tn * 16 * LD, LD);
        mma_acc<frag_a_row, frag_b_row, true, true, C, SPLIT>(acc[r], P + tm * 16 * LC, LC, Dl + tn * 16, LO);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < PER_WARP; r++) {
        const int tile = warp + r * kWarps, tm = tile / NO, tn = tile % NO;
        if (tile < NT * NO)
            wmma::store_matrix_sync(Os + tm * 16 * LO + tn * 16, acc[r], LO, wmma::mem_row_major);
    }
    __syncthreads();
    for (int x = threadIdx.x; x < C * OB; x += kThreads) {
        const int t = x / OB, j = x % OB;
        if (t0 + t < a.n)
            *at(a.o, j0 + j, h, t0 + t, b) = Os[t * LO + j];
    }
}

/* State rows per scan block: 32 (16 at D = 256, to fit shared memory; D itself when smaller). */
template <int D>
__host__ __device__ constexpr int rows_per_block()
{
    return D >= 256 ? 16 : D < 32 ? D : 32;
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
    constexpr int JB = rows_per_block<D>(), OB = out_columns<D>();
    const size_t prep_smem = prep_floats<D, C>() * sizeof(float), scan_smem = scan_floats<D, C, JB>() * sizeof(float);
    const size_t out_smem = out_floats<D, C>() * sizeof(float);
    gdn_status st = allow_smem(chunk_prep_kernel<D, C, SPLIT>, prep_smem);
    if (st == GDN_OK)
        st = allow_smem(chunk_scan_kernel<D, C, JB, SPLIT>, scan_smem);
    if (st == GDN_OK)
        st = allow_smem(chunk_out_kernel<D, C, SPLIT>, out_smem);
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
        chunk_scan_kernel<D, C, JB, SPLIT><<<scan_grid, kThreads, scan_smem, context->stream>>>(a);
        st = gdn_cuda_check(cudaGetLastError(), "chunked form: scan kernel launch");
        if (st != GDN_OK)
            break;
        const dim3 out_grid((unsigned)a.c_count, a.Hv * (D / OB), (unsigned)B);
        chunk_out_kernel<D, C, SPLIT><<<out_grid, kThreads, out_smem, context->stream>>>(a);
        st = gdn_cuda_check(cudaGetLastError(), "chunked form: output kernel launch");
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
