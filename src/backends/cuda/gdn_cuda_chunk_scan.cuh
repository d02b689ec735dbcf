/* gdn_cuda_chunk_scan.cuh: the scan kernel of the CUDA chunked form (the chunks of a window in
 * order, the state in registers) and its block shapes. Included by gdn_cuda_chunk.cu only. */
#ifndef GDN_CUDA_CHUNK_SCAN_CUH
#define GDN_CUDA_CHUNK_SCAN_CUH

#include "gdn_cuda_chunk.cuh"

namespace {

/* The scan keeps the state in registers. A warp owns 16 state rows (value columns) and half of
 * their D columns (the "Dk half"), as the accumulators of 16 x 8 tiles: lane (g, t) holds rows g
 * and g + 8, columns 8 j + 2t and 8 j + 2t + 1 of tile j. That is also the A fragment of a
 * product over those columns in the order mma_rows uses (k = 2t, 2t + 1 of every 8), so step 1
 * reads the state without moving it. Per chunk, for a warp's rows:
 *   1. [X; Oq] (its rows, all C tokens) over its Dk half: X = S K^T, Oq = S Q^T.
 *   2. The warp and its partner (the other Dk half of the same rows) swap halves through shared
 *      memory: each then has X whole, and Oq whole for its half of the token tiles (out_tile;
 *      scaled by e^gamma_t, token t's column). Both form Dl = (V - X diag(e^gamma)) M^T for
 *      their rows, the same sums in the same order (M is lower triangular: token tile n of Dl
 *      takes tiles i <= n of X).
 *   3. S = e^gamma_C S + Dl Kd over its Dk half, Kd = diag(e^(gamma_C - gamma)) K applied to Dl's
 *      columns (Dl's accumulators, so scaled, are the A fragments again).
 *   4. O = Oq + Dl P^T for its half of the token tiles (P is causal: tile n needs Dl's tiles
 *      up to n), stored.
 * The factors of a chunk (Q and K of the head's q/k head, M, P, the decays) are copied into
 * shared memory by the copy engine (cp.async.bulk), and the block's columns of the op's v by its
 * threads (cp.async), while the previous chunk computes (two sets where they fit; else one).
 * Every warp does the same arithmetic whatever the block's rows JB, so results do not depend on
 * B. (Before, S sat in shared memory and the scan was bound by shared-memory traffic: 77% of the
 * L1/shared peak at B = 1, ncu; docs/PERF.md.) */

/* Floats of a set, of the pairs' exchange, and of a block with n sets, mbarriers included. */
__host__ __device__ constexpr int scan_set_floats(int D, int C, int JB)
{
    return 2 * C * D + 2 * C * C + 2 * C + C * JB;
}

__host__ __device__ constexpr int scan_xch_floats(int C, int JB)
{
    return JB / 16 * 2 * (C / 4) * 128;
}

__host__ __device__ constexpr size_t scan_bytes(int D, int C, int JB, int sets)
{
    return (size_t)(sets * scan_set_floats(D, C, JB) + scan_xch_floats(C, JB) + 4) * sizeof(float);
}

/* Two sets where they fit in `limit` bytes (a chunk's copies then go out while the previous
 * chunk computes), else one. */
__host__ __device__ constexpr int scan_sets(int D, int C, int JB, size_t limit)
{
    return scan_bytes(D, C, JB, 2) <= limit ? 2 : 1;
}

template <int D, int C, int JB, int SETS>
struct scan_smem {
    /* a set: QH and KH as in the q/k head's scratch, M, P, EQ and EKD as in the value head's, the
     * block's columns of v by blocks of VB columns ([JB / VB][C][VB], swz_kmajor<VB>) */
    static_assert(SETS == 1 || SETS == 2, "chunked scan: one or two sets");
    static constexpr bool DOUBLE = SETS == 2;
    static constexpr int VB = (D < 32 ? D : 32) < JB ? (D < 32 ? D : 32) : JB; /* JB = 16: rows_few */
    static constexpr int QH = 0, KH = C * D, M = 2 * C * D, P = M + C * C, EQ = P + C * C, EKD = EQ + C, V = EKD + C;
    static constexpr int SET = scan_set_floats(D, C, JB);
    static_assert(V + C * JB == SET && V % 4 == 0, "chunked scan: the set's parts");
    static constexpr int XT = C / 4; /* tiles a warp puts in the exchange: X's, then Oq's */
    static constexpr int BARS = SETS * SET + scan_xch_floats(C, JB); /* two mbarriers (8 bytes each) */
    static constexpr size_t BYTES = scan_bytes(D, C, JB, SETS);
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

/* An accumulator tile as the A fragment of a product over its columns (k = 2t, 2t + 1): split
 * (SPLIT), else rounded to TF32 (lo unused). */
template <bool SPLIT>
__device__ __forceinline__ void a_of_tile(const float (&c)[4], uint32_t (&hi)[4], uint32_t (&lo)[4])
{
    const float x[4] = {c[0], c[2], c[1], c[3]};
#pragma unroll
    for (int e = 0; e < 4; e++) {
        hi[e] = SPLIT ? tf32_split_hi(x[e]) : tf32_hi(x[e]);
        lo[e] = __float_as_uint(x[e] - __uint_as_float(hi[e]));
    }
}

/* A B fragment's pair from shared memory, split (SPLIT; with one pass, prep stored the factors
 * already rounded to TF32, so their bits go to the product as they are). */
template <bool SPLIT>
__device__ __forceinline__ void b_split(float y0, float y1, uint32_t (&hi)[2], uint32_t (&lo)[2])
{
    if (!SPLIT) {
        hi[0] = __float_as_uint(y0), hi[1] = __float_as_uint(y1);
        lo[0] = lo[1] = 0;
        return;
    }
    hi[0] = tf32_split_hi(y0), hi[1] = tf32_split_hi(y1);
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

/* Wait until a set's copies have landed: the copy engine's on the mbarrier bar's phase `parity`
 * (sm_90), then this thread's cp.async copies, then every thread's (the block's barrier, which
 * also tells the caller that every warp is done with the other set). */
__device__ __forceinline__ void wait_set(uint64_t *bar, unsigned parity)
{
#if GDN_CHUNK_BULK
    unsigned done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_at(bar)), "r"(parity)
                     : "memory");
#else
    (void)bar, (void)parity;
#endif
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
}

/* The block's columns j0 .. j0 + JB - 1 of v for tokens t0 .. t0 + C - 1 into a set's V part
 * ([JB / VB][C][VB], swz_kmajor<VB>), by the block's T threads with cp.async: 16 bytes a copy
 * where v's rows are 16-byte runs (swizzles move whole 16-byte runs), else 4; zeros for tokens
 * at or beyond n (M's columns there are zero, but 0 times a stale NaN would not be). A thread
 * copies the same 4 columns of tokens T / (JB / 4) apart: `src` is its first (v_first), `left`
 * = n - t0. (Offsets computed from the indices for every piece, 64-bit products, were with the
 * outputs' below a tenth of a B = 1 chunk's instructions, ncu.) */
template <int JB>
__device__ __forceinline__ const char *v_first(const chunk_args &a, int b, int h, long long t0, int j0)
{
    const int t = threadIdx.x / (JB / 4), j = 4 * (threadIdx.x % (JB / 4));
    return row_of(a.v, h, t0 + t, b) + (j0 + j) * a.v.nb[0];
}

template <int C, int JB, int VB, int T>
__device__ __forceinline__ void copy_v(float *to, const chunk_args &a, const char *src, long long left)
{
    constexpr int PIECES = C * JB / 4, PER = (PIECES + T - 1) / T, DT = T / (JB / 4);
    static_assert(T % (JB / 4) == 0, "chunked scan: a thread's pieces in the same columns");
    const int t = threadIdx.x / (JB / 4), j = 4 * (threadIdx.x % (JB / 4));
#pragma unroll
    for (int k = 0; k < PER; k++) {
        const int tk = t + k * DT;
        if (PIECES % T != 0 && threadIdx.x + k * T >= PIECES)
            break;
        float *dst = to + j / VB * C * VB + tk * VB + ((j % VB) ^ swz_kmajor<VB>(tk));
        const char *s = src + k * DT * a.v.nb[2];
        if (tk >= left) {
            *(float4 *)dst = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        } else if (a.v_vec) {
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_at(dst)), "l"(s) : "memory");
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_at(dst + e)),
                             "l"(s + e * a.v.nb[0])
                             : "memory");
        }
    }
}

/* The token tiles whose outputs a warp forms: the pair's tiles dealt out two by two, tile
 * n = 2u + ((u & 1) ^ half) for u < C / 16, so that both warps of a pair take the same count of
 * products (tile n takes n + 1; 5 and 5 at C = 32, where the first and the second half of the
 * tokens took 4 and 8, and the first warp waited for the second at the next exchange). */
__device__ __forceinline__ int out_tile(int u, int half)
{
    return 2 * u + ((u & 1) ^ half);
}

/* A warp's outputs: lane (g, t) stores rows g and g + 8 of tokens 8 n + 2t and 8 n + 2t + 1 of
 * each of its tiles n = out_tile(u, half). `p` is the lane's row g at the chunk's token 2t, `tok`
 * and `row8` the steps to the next token and to row g + 8; with GUARD, tokens from `left` on are
 * not stored (the last chunk). (Each store's offset computed from its indices, 64-bit products
 * in branches, took a fifth of a TF32 B = 1 chunk's stall samples, ncu.) */
template <int NH, bool GUARD>
__device__ __forceinline__ void store_out(char *p, const float (&om)[NH][4], int half, long long tok, long long row8,
                                          long long left)
{
    const int t4 = threadIdx.x % 4;
#pragma unroll
    for (int u = 0; u < NH; u++) {
        const int n = out_tile(u, half);
        char *q = p + 8 * n * tok;
#pragma unroll
        for (int e = 0; e < 4; e++)
            if (!GUARD || 8 * n + 2 * t4 + (e & 1) < left)
                *(float *)(q + (e & 1) * tok + (e & 2 ? row8 : 0)) = om[u][e];
    }
}

template <int D, int C, int JB, bool SPLIT, int SETS>
__global__ void __launch_bounds__(4 * JB, 1) chunk_scan_kernel(chunk_args a)
{
    using L = chunk_layout<D, C>;
    using M = scan_smem<D, C, JB, SETS>;
    constexpr int DH = D / 2, NK = DH / 8, NC = C / 8, NH = C / 16;
    constexpr int VB = M::VB;
    static_assert(D >= 16 && C >= 16 && JB % 16 == 0 && JB / 16 <= 15, "chunked scan: tile shapes");
    extern __shared__ __align__(128) float smem[];
    float4 *xch = (float4 *)(smem + SETS * M::SET);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int half = warp & 1, m0 = warp / 2 * 16, k0 = half * DH;
    const int j0 = blockIdx.x * JB, h = blockIdx.y, b = blockIdx.z, hk = qk_head(a, h);
    /* the swizzles of the rows a lane reads (they depend on g or t only) */
    const int swQ = swz_row<D>(g), swP = swz_row<C>(g), swV = swz_kmajor<VB>(2 * t4);
    const int swK = swz_k<D>(g), swK0 = swz_k<D>(2 * t4), swK1 = swz_k<D>(2 * t4 + 1);

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

    /* A chunk's factors into a set: the block's columns of v by every thread (cp.async), the rest
     * by the copy engine in two copies (the scratch has the set's layout), which thread 0 counts
     * on the set's mbarrier. (Copied by every thread with cp.async, the factors' issue and
     * address arithmetic took most of a B = 1 chunk, ncu; a row a copy, the copy engine took
     * longer than the chunk.) */
    uint64_t *bars = (uint64_t *)(smem + M::BARS);
    static_assert(M::KH - M::QH == (int)L::KH && M::M + (int)L::FLOATS == M::V, "chunked scan: the scratch's layout");
    auto stage = [&](float *set, long long c, uint64_t *bar) {
        const float *in = chunk_scratch<D, C>(a, b, h, c), *in_qk = chunk_scratch_qk<D, C>(a, b, hk, c);
        const long long t0 = (a.c_first + c) * C;
        copy_v<C, JB, VB, 4 * JB>(set + M::V, a, v_first<JB>(a, b, h, t0, j0), a.n - t0);
#if GDN_CHUNK_BULK
        constexpr unsigned QK_BYTES = 2 * C * D * 4, MP_BYTES = (unsigned)L::FLOATS * 4;
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        if (warp != 0 || lane != 0)
            return;
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_at(bar)),
                     "r"(QK_BYTES + MP_BYTES)
                     : "memory");
        /* the set was read through the generic proxy; the copies write through the async one */
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        bulk_copy(set + M::QH, in_qk, QK_BYTES, bar); /* QH, KH */
        bulk_copy(set + M::M, in, MP_BYTES, bar);     /* M, P, EQ, EKD */
#else
        (void)bar;
        copy_floats<2 * C * D, 4 * JB>(set + M::QH, in_qk);
        copy_floats<(int)L::FLOATS, 4 * JB>(set + M::M, in);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
    };
#if GDN_CHUNK_BULK
    if (threadIdx.x < 2)
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_at(bars + threadIdx.x)) : "memory");
#endif
    __syncthreads();
    /* Up to here (the state, which prep does not write) the scan may run beside prep's last
     * blocks; the factors need prep complete (programmatic dependent launch, run()). */
    gdn_cuda_grid_wait();

    if (M::DOUBLE)
        stage(smem, 0, bars);
    for (long long c = 0; c < a.c_count; c++) {
        float *set = smem + (M::DOUBLE ? (int)(c & 1) * M::SET : 0);
        if (M::DOUBLE) {
            wait_set(bars + (c & 1), (unsigned)(c >> 1) & 1); /* and every warp is done with the other set */
            if (c + 1 < a.c_count)
                stage(smem + (int)((c + 1) & 1) * M::SET, c + 1, bars + ((c + 1) & 1));
        } else {
            if (c > 0)
                __syncthreads(); /* every warp is done with the set */
            stage(set, c, bars);
            wait_set(bars, (unsigned)c & 1);
        }
        const float *Qs = set + M::QH, *Ks = set + M::KH, *Ms = set + M::M, *Ps = set + M::P;
        const float *eq = set + M::EQ, *ekd = set + M::EKD;
        const float *Vs = set + M::V + m0 / VB * C * VB; /* the block of v with the warp's rows */
        const float decay = eq[C - 1];

        /* 1. X and Oq over the warp's Dk half (of S k_t and S q_t; e^gamma_t applied after the swap) */
        float dl[NC][4], oq[NC][4];
        tiles_zero(dl);
        tiles_zero(oq);
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            uint32_t ah[4], al[4];
            a_of_tile<SPLIT>(S[kk], ah, al);
            const int col = k0 + 8 * kk + 2 * t4;
#pragma unroll
            for (int n = 0; n < NC; n++) {
                uint32_t bh[2], bl[2];
                const float2 y = *(const float2 *)(Ks + (8 * n + g) * D + (col ^ swK));
                b_split<SPLIT>(y.x, y.y, bh, bl);
                mma_x<SPLIT>(dl[n], ah, al, bh, bl);
            }
#pragma unroll
            for (int n = 0; n < NC; n++) {
                uint32_t bh[2], bl[2];
                const float2 y = *(const float2 *)(Qs + (8 * n + g) * D + (col ^ swQ));
                b_split<SPLIT>(y.x, y.y, bh, bl);
                mma_x<SPLIT>(oq[n], ah, al, bh, bl);
            }
        }

        /* 2. the partner's half of the sums: all of X, Oq of this warp's tokens. Oq's halves both
         *    wait in the exchange until step 4 (fewer registers live through the products
         *    between; the partner writes its part again only after the next chunk's barrier). */
        float4 *mine = xch + warp * M::XT * 32 + lane, *theirs = xch + (warp ^ 1) * M::XT * 32 + lane;
#pragma unroll
        for (int n = 0; n < NC; n++)
            mine[n * 32] = make_float4(dl[n][0], dl[n][1], dl[n][2], dl[n][3]);
#pragma unroll
        for (int n = 0; n < NC; n++)
            mine[(NC + n) * 32] = make_float4(oq[n][0], oq[n][1], oq[n][2], oq[n][3]);
        asm volatile("bar.sync %0, 64;\n" ::"r"(1 + warp / 2) : "memory");
#pragma unroll
        for (int n = 0; n < NC; n++) { /* (both warps of the pair hold the same X: a sum of two commutes) */
            const float4 y = theirs[n * 32];
            dl[n][0] += y.x, dl[n][1] += y.y, dl[n][2] += y.z, dl[n][3] += y.w;
        }
        /* Dl = (V - X diag(e^gamma)) M^T, its token tiles n from the last: tile n takes Y's tiles
         *    i <= n (M is lower triangular) and then takes X's tile n's registers, which no later
         *    tile needs. Y's A fragments are formed again for each n; forming each once into a
         *    second set of accumulators spilled more in the 128-row three-pass instance (80 bytes
         *    against 72) and ran 2% slower at T=4096 B=8 (docs/PERF.md). */
#pragma unroll
        for (int n = NC - 1; n >= 0; n--) {
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int i = 0; i <= n; i++) {
                const float2 f = *(const float2 *)(eq + 8 * i + 2 * t4);
                float y[4];
#pragma unroll
                for (int e = 0; e < 4; e++)
                    y[e] = Vs[(8 * i + 2 * t4 + (e & 1)) * VB + ((m0 % VB + g + (e & 2 ? 8 : 0)) ^ swV)] -
                           dl[i][e] * (e & 1 ? f.y : f.x);
                uint32_t ah[4], al[4], bh[2], bl[2];
                a_of_tile<SPLIT>(y, ah, al);
                const float2 m = *(const float2 *)(Ms + (8 * n + g) * C + ((8 * i + 2 * t4) ^ swP));
                b_split<SPLIT>(m.x, m.y, bh, bl);
                mma_x<SPLIT>(acc, ah, al, bh, bl);
            }
#pragma unroll
            for (int e = 0; e < 4; e++)
                dl[n][e] = acc[e];
        }

        /* 3. the state: decayed, plus Dl diag(EKD) KH over the warp's Dk half */
#pragma unroll
        for (int j = 0; j < NK; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                S[j][e] *= decay;
#pragma unroll
        for (int i = 0; i < NC; i++) {
            uint32_t ah[4], al[4];
            const float2 f = *(const float2 *)(ekd + 8 * i + 2 * t4);
            const float dk[4] = {dl[i][0] * f.x, dl[i][1] * f.y, dl[i][2] * f.x, dl[i][3] * f.y};
            a_of_tile<SPLIT>(dk, ah, al);
            const float *k_rows = Ks + (8 * i + 2 * t4) * D;
#pragma unroll
            for (int j = 0; j < NK; j++) {
                uint32_t bh[2], bl[2];
                const int col = k0 + 8 * j + g;
                b_split<SPLIT>(k_rows[col ^ swK0], k_rows[D + (col ^ swK1)], bh, bl);
                mma_x<SPLIT>(S[j], ah, al, bh, bl);
            }
        }

        /* 4. the outputs of the warp's token tiles out_tile(u, half), u < NH (P is causal: tile n
         *    takes Dl's tiles i <= n) */
        float om[NH][4];
#pragma unroll
        for (int u = 0; u < NH; u++) {
            const int n = out_tile(u, half);
            const float4 x = mine[(NC + n) * 32], y = theirs[(NC + n) * 32];
            const float2 f = *(const float2 *)(eq + 8 * n + 2 * t4);
            om[u][0] = (x.x + y.x) * f.x, om[u][1] = (x.y + y.y) * f.y;
            om[u][2] = (x.z + y.z) * f.x, om[u][3] = (x.w + y.w) * f.y;
        }
#pragma unroll
        for (int i = 0; i < NC; i++) {
            uint32_t ah[4], al[4];
            a_of_tile<SPLIT>(dl[i], ah, al);
#pragma unroll
            for (int u = 0; u < NH; u++) {
                if (i > 2 * u + 1 || (i == 2 * u + 1 && out_tile(u, half) == 2 * u))
                    continue;
                uint32_t bh[2], bl[2];
                const float2 y = *(const float2 *)(Ps + (8 * out_tile(u, half) + g) * C + ((8 * i + 2 * t4) ^ swP));
                b_split<SPLIT>(y.x, y.y, bh, bl);
                mma_x<SPLIT>(om[u], ah, al, bh, bl);
            }
        }
        /* (the lane's row g at the chunk's token 2 t4) */
        const long long t0 = (a.c_first + c) * C, left = a.n - t0;
        char *o_chunk = (char *)at(a.o, j0 + m0 + g, h, t0 + 2 * t4, b);
        if (left >= C)
            store_out<NH, false>(o_chunk, om, half, a.o.nb[2], 8 * a.o.nb[0], left);
        else
            store_out<NH, true>(o_chunk, om, half, a.o.nb[2], 8 * a.o.nb[0], left);
    }
#pragma unroll
    for (int j = 0; j < NK; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            *at(a.final, k0 + 8 * j + 2 * t4 + (e & 1), j0 + m0 + g + (e & 2 ? 8 : 0), h, out_slot) = S[j][e];
}

/* State rows per scan block: 32 where the grid then fits one wave (B = 1 at Qwen3.6's shapes: 128
 * blocks of 4 warps; 16 where 32 rows' shared memory does not fit `LIMIT`), else the most of 128
 * and 64 whose shared memory fits (a head's factors are staged once for more of its rows). D
 * itself where smaller. */
template <int D, int C, size_t LIMIT>
__host__ __device__ constexpr int rows_few()
{
    return D < 32 ? D : scan_bytes(D, C, 32, 1) <= LIMIT ? 32 : 16;
}

template <int D, int C, size_t LIMIT, int JB = 128>
__host__ __device__ constexpr int rows_many()
{
    if constexpr (JB < 64)
        return rows_few<D, C, LIMIT>();
    else if constexpr (D < JB)
        return rows_many<D, C, LIMIT, JB / 2>();
    else if constexpr (scan_bytes(D, C, JB, scan_sets(D, C, JB, LIMIT)) <= LIMIT)
        return JB;
    else
        return rows_many<D, C, LIMIT, JB / 2>();
}
} // namespace

#endif
