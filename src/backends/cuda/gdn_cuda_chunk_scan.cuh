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
 *   1. [Dl; Oq] (its rows, all C tokens) over its Dk half: Dl = U + S W'^T, Oq = S Q^T.
 *   2. The warp and its partner (the other Dk half of the same rows) swap halves through shared
 *      memory: each then has Dl whole, and Oq whole for its half of the tokens (scaled by
 *      e^gamma_t, token t's column).
 *   3. S = e^gamma_C S + Dl Kd over its Dk half, Kd = diag(e^(gamma_C - gamma)) K applied to Dl's
 *      columns (Dl's accumulators, so scaled, are the A fragments again).
 *   4. O = Oq + Dl P^T for its half of the tokens (P is causal: the first half needs only the
 *      first half of Dl), stored.
 * The factors of a chunk (W', P, the decays, the block's columns of U; Q and K of the head's q/k
 * head, scaled by the decays in steps 2 and 3) are copied into shared memory by the copy engine
 * (cp.async.bulk) while the previous chunk computes (two sets where they fit; else one, with K
 * copied into W's place after step 1). Every warp does the same arithmetic whatever the block's
 * rows JB, so results do not depend on B. (Before, S sat in shared memory and the scan was bound
 * by shared-memory traffic: 77% of the L1/shared peak at B = 1, ncu; docs/PERF.md.) */

/* Floats of a set (with Kd of its own or not), of the pairs' exchange, and of a block with n sets
 * (two: each with its own Kd; one: Kd copied into W's place after step 1), mbarriers included. */
__host__ __device__ constexpr int scan_set_floats(int D, int C, int JB, bool own_kd)
{
    return 2 * C * D + C * C + 2 * C + C * JB + (own_kd ? C * D : 0);
}

__host__ __device__ constexpr int scan_xch_floats(int C, int JB)
{
    return JB / 16 * 2 * (C / 8 + C / 16) * 128;
}

__host__ __device__ constexpr size_t scan_bytes(int D, int C, int JB, int sets)
{
    return (size_t)(sets * scan_set_floats(D, C, JB, sets == 2) + scan_xch_floats(C, JB) + 4) * sizeof(float);
}

/* Two sets where they fit in `limit` bytes (a chunk's copies then go out while the previous
 * chunk computes), else one. */
__host__ __device__ constexpr int scan_sets(int D, int C, int JB, size_t limit)
{
    return scan_bytes(D, C, JB, 2) <= limit ? 2 : 1;
}

template <int D, int C, int JB, int SETS>
struct scan_smem {
    /* a set: QH, then W', P, EQ and EKD as in the value head's scratch, the block's blocks of U,
     * KH [C][D] of its own (DOUBLE) or in W's place */
    static_assert(SETS == 1 || SETS == 2, "chunked scan: one or two sets");
    static constexpr bool DOUBLE = SETS == 2;
    static constexpr int QH = 0, W = C * D, P = 2 * C * D, EQ = P + C * C, EKD = EQ + C, U = EKD + C;
    static constexpr int KD = DOUBLE ? U + C * JB : W;
    static constexpr int SET = scan_set_floats(D, C, JB, DOUBLE);
    static constexpr int XT = C / 8 + C / 16; /* tiles a warp hands its partner */
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
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_at(bar)), "r"(parity)
                     : "memory");
#else
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
#endif
}

template <int D, int C, int JB, bool SPLIT, int SETS>
__global__ void __launch_bounds__(4 * JB, 1) chunk_scan_kernel(chunk_args a)
{
    using L = chunk_layout<D, C>;
    using M = scan_smem<D, C, JB, SETS>;
    constexpr int DH = D / 2, NK = DH / 8, NC = C / 8, NH = C / 16;
    constexpr int UB = L::UB;
    static_assert(D >= 16 && C >= 16 && JB % 16 == 0 && JB / 16 <= 15, "chunked scan: tile shapes");
    extern __shared__ __align__(128) float smem[];
    float4 *xch = (float4 *)(smem + SETS * M::SET);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int half = warp & 1, m0 = warp / 2 * 16, k0 = half * DH, o0 = half * (C / 2);
    const int j0 = blockIdx.x * JB, h = blockIdx.y, b = blockIdx.z, hk = qk_head(a, h);
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
        const float *in = chunk_scratch<D, C>(a, b, h, c), *in_qk = chunk_scratch_qk<D, C>(a, b, hk, c);
        constexpr unsigned MAIN = (unsigned)(M::U - M::W) * 4, UBYTES = C * JB * 4, KBYTES = C * D * 4;
        const unsigned bytes = (main_part ? MAIN + UBYTES + KBYTES : 0) + (kd ? KBYTES : 0);
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_at(bar)), "r"(bytes)
                     : "memory");
        /* the set was read through the generic proxy; the copies write through the async one */
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        if (main_part) /* the block's columns of U */
            bulk_copy(set + M::U, in + L::u_at(0, j0), UBYTES, bar);
        if (main_part) {
            bulk_copy(set + M::W, in, MAIN, bar); /* W', P, EQ, EKD */
            bulk_copy(set + M::QH, in_qk + L::QH, KBYTES, bar);
        }
        if (kd)
            bulk_copy(set + M::KD, in_qk + L::KH, KBYTES, bar);
    };
    if (threadIdx.x < 2)
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_at(bars + threadIdx.x)) : "memory");
#else
    auto stage = [&](float *set, long long c, bool main_part, bool kd, uint64_t *) {
        const float *in = chunk_scratch<D, C>(a, b, h, c), *in_qk = chunk_scratch_qk<D, C>(a, b, hk, c);
        if (main_part) {
            copy_floats<C * JB, 4 * JB>(set + M::U, in + L::u_at(0, j0));
            copy_floats<M::U - M::W, 4 * JB>(set + M::W, in); /* W', P, EQ, EKD */
            copy_floats<C * D, 4 * JB>(set + M::QH, in_qk + L::QH);
        }
        if (kd)
            copy_floats<C * D, 4 * JB>(set + M::KD, in_qk + L::KH);
        asm volatile("cp.async.commit_group;\n" ::: "memory");
    };
#endif
    __syncthreads();
    /* Up to here (the state, which prep does not write) the scan may run beside prep's last
     * blocks; the factors need prep complete (programmatic dependent launch, run()). */
    gdn_cuda_grid_wait();

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
        const float *Ws = set + M::W, *Qs = set + M::QH, *Ps = set + M::P, *eq = set + M::EQ, *ekd = set + M::EKD;
        const float *Us = set + M::U + m0 / UB * C * UB; /* the block of U with the warp's rows */
        const float decay = eq[C - 1];

        /* 1. Dl (U in the first Dk half's sum) and Oq over the warp's Dk half (of S q_t, e^gamma_t
         *    applied after the swap) */
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
                b_split<SPLIT>(y.x, y.y, bh, bl);
                mma_x<SPLIT>(dl[n], ah, al, bh, bl);
            }
#pragma unroll
            for (int n = 0; n < NC; n++) {
                uint32_t bh[2], bl[2];
                const float2 y = *(const float2 *)(Qs + (8 * n + g) * D + (col ^ swW));
                b_split<SPLIT>(y.x, y.y, bh, bl);
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
            const float2 f = *(const float2 *)(eq + o0 + 8 * n + 2 * t4);
            om[n][0] = (x[0] + y.x) * f.x, om[n][1] = (x[1] + y.y) * f.y;
            om[n][2] = (x[2] + y.z) * f.x, om[n][3] = (x[3] + y.w) * f.y;
        }

        if (!M::DOUBLE) {
            __syncthreads(); /* every warp is done with W' */
            stage(set, c, false, true, bars + 1);
            wait_set(bars + 1, (unsigned)c & 1);
        }
        const float *Ks = set + M::KD;
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
            a_of_tile(dk, ah, al);
            const float *k_rows = Ks + (8 * i + 2 * t4) * D;
#pragma unroll
            for (int j = 0; j < NK; j++) {
                uint32_t bh[2], bl[2];
                const int col = (k0 + 8 * j + g) ^ swK;
                b_split<SPLIT>(k_rows[col], k_rows[D + col], bh, bl);
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
                b_split<SPLIT>(y.x, y.y, bh, bl);
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
 * blocks of 4 warps), else the most of 128 and 64 whose shared memory fits `LIMIT` (a head's
 * factors are staged once for more of its rows). D itself where smaller. */
template <int D, int C>
__host__ __device__ constexpr int rows_few()
{
    return D < 32 ? D : 32;
}

template <int D, int C, size_t LIMIT, int JB = 128>
__host__ __device__ constexpr int rows_many()
{
    if constexpr (JB < 64)
        return rows_few<D, C>();
    else if constexpr (D < JB)
        return rows_many<D, C, LIMIT, JB / 2>();
    else if constexpr (scan_bytes(D, C, JB, scan_sets(D, C, JB, LIMIT)) <= LIMIT)
        return JB;
    else
        return rows_many<D, C, LIMIT, JB / 2>();
}
} // namespace

#endif
