/* gdn_cuda_chunk.cu: the chunked form of the Gated DeltaNet op on CUDA (include/gdn.h, "The
 * chunked form"), with the chunk's matrix products on tensor cores.
 *
 * Two kernels per window of chunks:
 *   prep (one block per chunk, head and sequence; all chunks in parallel): the chunk's k and q
 *     (normalised and scaled as the op asks), gamma (running sum of g), Akk = K K^T and
 *     Aqk = Q K^T on tensor cores, then the factors
 *         F[t][s] = -beta_t e^(gamma_t - gamma_s) Akk[t][s]  (s < t),
 *         P[t][s] = e^(gamma_t - gamma_s) Aqk[t][s]          (s <= t),
 *     and Tinv = (I - F)^-1 by forward substitution (column by column, four lanes a column),
 *     stored to the scratch with gamma: none of it depends on the state.
 *   scan (one block per JB state rows of a head and sequence; chunks in order): per chunk
 *         KS = K S^T, QS = Q S^T           R = beta (V - e^gamma KS)
 *         Dl = Tinv R                      O = e^gamma QS + P Dl
 *         S  = e^gamma_C S + Dl^T (e^(gamma_C - gamma) K)
 *     with the JB rows of S in shared memory throughout, written back after the window.
 *
 * Precision: every product runs as three TF32 products (x = hi + lo, each a TF32 value; hi*hi +
 * hi*lo + lo*hi, accumulated in FP32), which keeps about FP32 accuracy (the lo*lo term is below
 * FP32 rounding) at three tensor-core passes per product; the measured error against float64 is
 * in docs/PERF.md. Results are deterministic (fixed tiles, fixed order) and do not depend on B. */
#include "cuda_internal.h"

#include <mma.h>

namespace {

using namespace nvcuda;

constexpr int kThreads = 256, kWarps = kThreads / 32;
/* Scratch for the chunked form: at most this many bytes (windows of chunks beyond it). */
constexpr size_t kScratchBytes = size_t(256) << 20;

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
template <class FA, class FB, bool A_ROW, bool B_ROW>
__device__ __forceinline__ void mma_acc(frag_acc &acc, const float *a, int lda, const float *b, int ldb, int K)
{
    FA a_hi, a_lo;
    FB b_hi, b_lo;
    for (int k = 0; k < K; k += 8) {
        wmma::load_matrix_sync(a_hi, A_ROW ? a + k : a + (size_t)k * lda, lda);
        wmma::load_matrix_sync(b_hi, B_ROW ? b + (size_t)k * ldb : b + k, ldb);
        split(a_hi, a_lo);
        split(b_hi, b_lo);
        wmma::mma_sync(acc, a_lo, b_hi, acc);
        wmma::mma_sync(acc, a_hi, b_lo, acc);
        wmma::mma_sync(acc, a_hi, b_hi, acc);
    }
}

/* The chunk's k and q (normalised when asked, q scaled) into Ks, Qs [C][pitch<D>], beta and the
 * running sum gamma of g into bet, gam [C]; tokens at or beyond a.n are zeros (they change
 * nothing). One warp per token. Both kernels call this, so both see the same floats. */
template <int D, int C>
__device__ void load_chunk(const chunk_args &a, float *Ks, float *Qs, float *gam, float *bet, int b, int h,
                           long long t0)
{
    constexpr int LD = pitch<D>();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int hk = a.interleaved ? h / (a.Hv / a.Hk) : h % a.Hk;
    for (int t = warp; t < C; t += kWarps) {
        const bool valid = t0 + t < a.n;
        float kx[(D + 31) / 32], qx[(D + 31) / 32], kk = 0.0f, qq = 0.0f;
#pragma unroll
        for (int e = 0; e < (D + 31) / 32; e++) {
            const int i = lane + 32 * e;
            kx[e] = valid && i < D ? load(a.k, i, hk, t0 + t, b) : 0.0f;
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

template <int D, int C>
__host__ __device__ constexpr size_t prep_floats()
{
    return 2 * (size_t)C * pitch<D>() + 3 * (size_t)C * pitch<C>() + 2 * C;
}

template <int D, int C>
__global__ void __launch_bounds__(kThreads) chunk_prep_kernel(chunk_args a)
{
    constexpr int LD = pitch<D>(), LC = pitch<C>(), NT = C / 16;
    extern __shared__ __align__(128) float smem[];
    float *Ks = smem, *Qs = Ks + C * LD, *F = Qs + C * LD, *P = F + C * LC, *Tn = P + C * LC;
    float *gam = Tn + C * LC, *bet = gam + C;
    const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, warp = threadIdx.x / 32;
    load_chunk<D, C>(a, Ks, Qs, gam, bet, b, h, (a.c_first + c) * C);

    /* Akk into F, Aqk into P: B = K^T, i.e. K read col-major. */
    for (int tile = warp; tile < 2 * NT * NT; tile += kWarps) {
        const int which = tile / (NT * NT), tm = tile % (NT * NT) / NT, tn = tile % NT;
        frag_acc acc;
        wmma::fill_fragment(acc, 0.0f);
        mma_acc<frag_a_row, frag_b_col, true, false>(acc, (which ? Qs : Ks) + tm * 16 * LD, LD, Ks + tn * 16 * LD, LD,
                                                     D);
        wmma::store_matrix_sync((which ? P : F) + tm * 16 * LC + tn * 16, acc, LC, wmma::mem_row_major);
    }
    __syncthreads();
    for (int x = threadIdx.x; x < C * C; x += kThreads) {
        const int t = x / C, s = x % C;
        const float rel = s <= t ? expf(gam[t] - gam[s]) : 0.0f;
        F[t * LC + s] = s < t ? -bet[t] * rel * F[t * LC + s] : 0.0f;
        P[t * LC + s] *= rel;
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
    float *out = a.scratch + (((size_t)b * a.Hv + h) * a.c_count + c) * (2 * C * C + C);
    for (int x = threadIdx.x; x < C * C; x += kThreads) {
        out[x] = Tn[x / C * LC + x % C];
        out[C * C + x] = P[x / C * LC + x % C];
    }
    if (threadIdx.x < C)
        out[2 * C * C + threadIdx.x] = gam[threadIdx.x];
}

template <int D, int C, int JB>
__host__ __device__ constexpr size_t scan_floats()
{
    return (size_t)JB * pitch<D>() + 2 * (size_t)C * pitch<D>() + 2 * (size_t)C * pitch<C>() +
           4 * (size_t)C * pitch<JB>() + 3 * C;
}

template <int D, int C, int JB>
__global__ void __launch_bounds__(kThreads) chunk_scan_kernel(chunk_args a)
{
    constexpr int LD = pitch<D>(), LC = pitch<C>(), LJ = pitch<JB>();
    extern __shared__ __align__(128) float smem[];
    float *S = smem, *Ks = S + JB * LD, *Qs = Ks + C * LD, *Tn = Qs + C * LD, *P = Tn + C * LC;
    float *X = P + C * LC, *Y = X + C * LJ, *Vs = Y + C * LJ, *Dl = Vs + C * LJ;
    float *gam = Dl + C * LJ, *bet = gam + C, *fac = bet + C;
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

    for (long long c = 0; c < a.c_count; c++) {
        const long long t0 = (a.c_first + c) * C;
        load_chunk<D, C>(a, Ks, Qs, gam, bet, b, h, t0); /* ends with __syncthreads */
        const float *in = a.scratch + (((size_t)b * a.Hv + h) * a.c_count + c) * (2 * C * C + C);
        for (int x = threadIdx.x; x < C * C; x += kThreads) {
            Tn[x / C * LC + x % C] = in[x];
            P[x / C * LC + x % C] = in[C * C + x];
        }
        for (int x = threadIdx.x; x < C * JB; x += kThreads) {
            const int t = x / JB, j = x % JB;
            Vs[t * LJ + j] = t0 + t < a.n ? load(a.v, j0 + j, h, t0 + t, b) : 0.0f;
        }
        __syncthreads();
        /* KS into X, QS into Y: B = S^T, S read col-major. */
        constexpr int NT = C / 16, NJ = JB / 16;
        for (int tile = warp; tile < 2 * NT * NJ; tile += kWarps) {
            const int which = tile / (NT * NJ), tm = tile % (NT * NJ) / NJ, tn = tile % NJ;
            frag_acc acc;
            wmma::fill_fragment(acc, 0.0f);
            mma_acc<frag_a_row, frag_b_col, true, false>(acc, (which ? Qs : Ks) + tm * 16 * LD, LD, S + tn * 16 * LD,
                                                         LD, D);
            wmma::store_matrix_sync((which ? Y : X) + tm * 16 * LJ + tn * 16, acc, LJ, wmma::mem_row_major);
        }
        __syncthreads();
        for (int x = threadIdx.x; x < C * JB; x += kThreads) {
            const int t = x / JB, j = x % JB;
            const float decay = expf(gam[t]);
            X[t * LJ + j] = bet[t] * (Vs[t * LJ + j] - decay * X[t * LJ + j]);
            Y[t * LJ + j] *= decay;
        }
        if (threadIdx.x < C)
            fac[threadIdx.x] = expf(gam[C - 1] - gam[threadIdx.x]);
        __syncthreads();
        for (int tile = warp; tile < NT * NJ; tile += kWarps) { /* Dl = Tinv R */
            const int tm = tile / NJ, tn = tile % NJ;
            frag_acc acc;
            wmma::fill_fragment(acc, 0.0f);
            mma_acc<frag_a_row, frag_b_row, true, true>(acc, Tn + tm * 16 * LC, LC, X + tn * 16, LJ, C);
            wmma::store_matrix_sync(Dl + tm * 16 * LJ + tn * 16, acc, LJ, wmma::mem_row_major);
        }
        __syncthreads();
        for (int tile = warp; tile < NT * NJ; tile += kWarps) { /* O = e^gamma QS + P Dl, in Y */
            const int tm = tile / NJ, tn = tile % NJ;
            frag_acc acc;
            wmma::load_matrix_sync(acc, Y + tm * 16 * LJ + tn * 16, LJ, wmma::mem_row_major);
            mma_acc<frag_a_row, frag_b_row, true, true>(acc, P + tm * 16 * LC, LC, Dl + tn * 16, LJ, C);
            wmma::store_matrix_sync(Y + tm * 16 * LJ + tn * 16, acc, LJ, wmma::mem_row_major);
        }
        /* The state's decay and the keys' factors, while the outputs are formed. */
        const float decay = expf(gam[C - 1]);
        for (int x = threadIdx.x; x < JB * D; x += kThreads)
            S[x / D * LD + x % D] *= decay;
        for (int x = threadIdx.x; x < C * D; x += kThreads)
            Ks[x / D * LD + x % D] *= fac[x / D];
        __syncthreads();
        for (int x = threadIdx.x; x < C * JB; x += kThreads) {
            const int t = x / JB, j = x % JB;
            if (t0 + t < a.n)
                *at(a.o, j0 + j, h, t0 + t, b) = Y[t * LJ + j];
        }
        /* S += Dl^T Kt: A = Dl^T (Dl read col-major), B = Kt row-major. */
        constexpr int NS = JB / 16, NI = D / 16;
        for (int tile = warp; tile < NS * NI; tile += kWarps) {
            const int tm = tile / NI, tn = tile % NI;
            frag_acc acc;
            wmma::load_matrix_sync(acc, S + tm * 16 * LD + tn * 16, LD, wmma::mem_row_major);
            mma_acc<frag_a_col, frag_b_row, false, true>(acc, Dl + tm * 16, LJ, Ks + tn * 16, LD, C);
            wmma::store_matrix_sync(S + tm * 16 * LD + tn * 16, acc, LD, wmma::mem_row_major);
        }
        __syncthreads();
    }
    for (int x = threadIdx.x; x < JB * D; x += kThreads)
        *at(a.final, x % D, j0 + x / D, h, out_slot) = S[x / D * LD + x % D];
}

/* State rows per scan block: 32 (16 at D = 256, to fit shared memory; D itself when smaller). */
template <int D>
constexpr int rows_per_block()
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

template <int D, int C>
gdn_status run(gdn_cuda_context *context, chunk_args a, long long B)
{
    constexpr int JB = rows_per_block<D>();
    const size_t prep_smem = prep_floats<D, C>() * sizeof(float), scan_smem = scan_floats<D, C, JB>() * sizeof(float);
    gdn_status st = gdn_cuda_check(cudaFuncSetAttribute(chunk_prep_kernel<D, C>,
                                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)prep_smem),
                                   "chunked form: prep kernel shared memory");
    if (st == GDN_OK)
        st = gdn_cuda_check(cudaFuncSetAttribute(chunk_scan_kernel<D, C, JB>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)scan_smem),
                            "chunked form: scan kernel shared memory");
    const long long chunks = (a.n + C - 1) / C;
    const size_t per_chunk = (size_t)B * a.Hv * (2 * C * C + C) * sizeof(float);
    long long window = (long long)(kScratchBytes / per_chunk);
    window = window < 1 ? 1 : window > chunks ? chunks : window;
    if (st == GDN_OK)
        st = grow_scratch(context, (size_t)window * per_chunk);
    a.scratch = (float *)context->chunk_scratch;
    for (long long first = 0; st == GDN_OK && first < chunks; first += window) {
        a.c_first = first;
        a.c_count = chunks - first < window ? chunks - first : window;
        a.first_window = first == 0;
        chunk_prep_kernel<D, C><<<dim3((unsigned)a.c_count, a.Hv, (unsigned)B), kThreads, prep_smem, context->stream>>>(a);
        st = gdn_cuda_check(cudaGetLastError(), "chunked form: prep kernel launch");
        if (st != GDN_OK)
            break;
        chunk_scan_kernel<D, C, JB><<<dim3(D / JB, a.Hv, (unsigned)B), kThreads, scan_smem, context->stream>>>(a);
        st = gdn_cuda_check(cudaGetLastError(), "chunked form: scan kernel launch");
    }
    return st;
}

template <int D>
gdn_status run_for_chunk(gdn_cuda_context *context, const chunk_args &a, long long B, int64_t chunk)
{
    switch (chunk) {
    case 16: return run<D, 16>(context, a, B);
    case 32: return run<D, 32>(context, a, B);
    case 64: return run<D, 64>(context, a, B);
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
    if (shape->B > 65535 || shape->Hv > 65535)
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: the chunked form's grid takes B, Hv <= 65535 "
                        "(B=%lld, Hv=%lld)", (long long)shape->B, (long long)shape->Hv);
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
    switch (shape->D) {
    case 16: return run_for_chunk<16>(context, a, shape->B, chunk);
    case 32: return run_for_chunk<32>(context, a, shape->B, chunk);
    case 64: return run_for_chunk<64>(context, a, shape->B, chunk);
    case 128: return run_for_chunk<128>(context, a, shape->B, chunk);
    case 256: return run_for_chunk<256>(context, a, shape->B, chunk);
    default:
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: D=%lld has no chunked CUDA kernel",
                        (long long)shape->D);
    }
}
