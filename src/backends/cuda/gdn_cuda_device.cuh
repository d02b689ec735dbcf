/* gdn_cuda_device.cuh: the device side of the Gated DeltaNet op on CUDA that gdn_cuda.cu's
 * kernel is built from: the argument struct, the launch shape per head dimension, token loads,
 * the per-token update and fold, state stores, ring appends, and the index verdict (one device
 * function, run by the check kernel or by every block of the op's kernel). gdn_cuda.cu's header
 * comment explains the mapping, the exactness rules and the measurements. Included by
 * gdn_cuda.cu only (everything here has internal linkage). */
#ifndef GDN_CUDA_DEVICE_CUH
#define GDN_CUDA_DEVICE_CUH

#include "cuda_internal.h"

#include <cuda_bf16.h>
#include <limits.h>

namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;
/* Lanes that share a row (at most; fewer when D/4 is smaller). See "Mapping" above for why 8. */
#ifndef GDN_CUDA_ROW_LANES
#define GDN_CUDA_ROW_LANES 8
#endif
constexpr int kRowLanes = GDN_CUDA_ROW_LANES;
/* Blocks per SM the register allocation must allow: 3 x 128 threads caps a thread at 168
 * registers, which the wide shape (64 state floats) fits without spilling in the vector path;
 * uncapped, the replay instantiation took 213 (2 blocks per SM). 4 (128 registers, spills)
 * measured 7-17% slower at B=64 T=4 on an H100. */
#ifndef GDN_CUDA_MIN_BLOCKS
#define GDN_CUDA_MIN_BLOCKS 3
#endif
constexpr int kMinBlocksPerSM = GDN_CUDA_MIN_BLOCKS;
/* The BF16-state kernels outside replay: 4 blocks per SM (128 registers; 52 bytes spill in the
 * wide vector shape), measured against 3 on one H100 in one run: decode B = 8 / 64 / 256
 * 10.5 / 60.8 / 230 -> 9.1 / 57.3 / 214.7 us (F32 kernels at 4: B=8 decode -5%, but B >= 64 and
 * T=4 +1%, so they stay at 3). */
#ifndef GDN_CUDA_MIN_BLOCKS_BF16
#define GDN_CUDA_MIN_BLOCKS_BF16 4
#endif
constexpr int kMinBlocksPerSMBf16 = GDN_CUDA_MIN_BLOCKS_BF16;
/* The replay kernel's wide shape where 4 blocks per SM fit its grid in one wave and 3 do not
 * (gdn_cuda.cu, launch_rows). */
constexpr int kOneWaveBlocksPerSM = 4;
/* State floats per thread in the wide shape. 32 (2 rows at D=128, 4 blocks per SM) measured 27%
 * slower at B=64 T=4: more warps, but more instructions per state element. */
constexpr int kWideFloats = 64;
static_assert(kRowLanes >= 1 && kRowLanes <= kWarpSize && (kRowLanes & (kRowLanes - 1)) == 0,
              "lanes per row: a power of two within a warp");

/* A strided view as the kernel sees it: the first element and byte strides, innermost first. */
struct gdn_cuda_view {
    char *data;
    long long nb[5];
};

/* Every kernel argument in one struct (STYLE rule 5). Views follow the public shapes:
 * q, k [B,T,Hk,D]; v, o [B,T,Hv,D]; g, beta [B,T,Hv]; state [B,Hv,D,D]; states [N,B,Hv,D,D]. */
struct gdn_cuda_gdn_args {
    gdn_cuda_view q, k, v, g, beta, state; /* inputs */
    gdn_cuda_view o, states;               /* outputs */
    int B, Hk, Hv;                         /* B*Hv*WARPS_PER_HEAD <= INT_MAX (host-checked) */
    int D;                                 /* Dk = Dv (the templates carry it; the check kernel reads it) */
    long long T;
    long long n_write;                     /* snapshots written: min(T, n_snapshots) */
    int interleaved;                       /* 1: q/k head h / (Hv/Hk); 0: tiled, h % Hk */
    int l2norm;
    float scale;
    /* Optional pool index (NULL: sequence b reads state slot b): sequence b reads slot index[b]
     * of the pool. The check kernel stores {first bad position or -1, its value, the snapshot
     * s and sequence b' its slot overlaps (-1, -1 for an index outside the pool)} in
     * index_check, and the main kernel writes nothing unless index_check[0] is -1. */
    const char *index;
    long long index_nb;
    long long S;                           /* pool slots */
    /* Optional snapshot index (NULL: sequence b writes states[s][b]): sequence b writes slot
     * states_index[b] of the S_write slots of `states`; checked with `index` (values in range,
     * no two equal, the in-place rule over the slots written). */
    const char *states_index;
    long long states_index_nb;
    long long S_write;
    int pool_check;                        /* 1: the pool's range meets states': check the rule */
    int bf16;                              /* 1: state, states (the pool in replay) are BF16 */
    int check_in_kernel;                   /* 1: every block checks the index itself (small B) */
    int state_ready;                       /* 1: load the state before waiting on the previous grid */
    int64_t *index_check;                  /* the context's 4-value device buffer */
    /* Replay only (fold NULL otherwise): rings of k, coefficients and decays [S,L,Hk,D],
     * [S,L,Hv,D], [S,L,Hv] of slot index[b], read at the fold's positions and appended to; fold
     * [B,3] I32 {start, count, commit} with element strides fold_nb[0], fold_nb[1]. */
    gdn_cuda_view ring_k, ring_v, ring_g;
    const char *fold;
    long long fold_nb[2];
    long long L;
};

/* Launch shape and per-lane slice for head dimension D (see the table at the top). */
/* Lanes that hold one row: a function of D alone (so is every row's arithmetic). */
template <int D>
__host__ __device__ constexpr int lanes_per_row()
{
    /* One float4 per lane for small D; kRowLanes lanes from D = 4 kRowLanes on; more lanes
     * (at most a warp) once a lane would hold over 16 floats of a row (D = 256: 16 lanes). */
    return D / 4 < kRowLanes ? D / 4 : D / 16 > kRowLanes ? (D / 16 < kWarpSize ? D / 16 : kWarpSize) : kRowLanes;
}

template <int D, int R>
struct gdn_cuda_config {
    static constexpr int LANES = lanes_per_row<D>();                    /* lanes per row */
    static constexpr int CHUNKS = D / (4 * LANES);                      /* float4 per lane per row */
    static constexpr int ELEMS = 4 * CHUNKS;                            /* floats per lane per row */
    static constexpr int GROUPS = kWarpSize / LANES;                    /* rows side by side in a warp */
    static constexpr int ROWS = R;                                      /* rows per thread */
    static constexpr int ROWS_PER_WARP = GROUPS * ROWS;
    static constexpr int WARPS_PER_HEAD = D / ROWS_PER_WARP;
    /* Whether the token loops load token t+1 while token t computes: only where the state
     * slice is small (ROWS*ELEMS <= 32 floats); the wide shape would need ~250 registers. */
    static constexpr bool PREFETCH = ROWS * ELEMS <= 32;
    static_assert(D % ROWS_PER_WARP == 0, "a head must split into whole warps");
    static_assert(ROWS <= LANES, "lane r of a group writes o for row r");
    static_assert(LANES * ELEMS == D, "the lanes of a group cover a row exactly");
};


/* Four consecutive row elements starting at p (element stride nb0 bytes). VECTOR: one 16-byte
 * access (the host checked nb0 == 4 and 16-byte alignment); otherwise four 4-byte accesses. */
template <bool VECTOR>
__device__ __forceinline__ float4 load4_readonly(const char *p, long long nb0)
{
    if (VECTOR)
        return __ldg(reinterpret_cast<const float4 *>(p));
    return make_float4(__ldg(reinterpret_cast<const float *>(p)),
                       __ldg(reinterpret_cast<const float *>(p + nb0)),
                       __ldg(reinterpret_cast<const float *>(p + 2 * nb0)),
                       __ldg(reinterpret_cast<const float *>(p + 3 * nb0)));
}

/* A BF16 value as the float with those upper 16 bits (exact). */
__device__ __forceinline__ float bf16_bits_to_float(unsigned bits16)
{
    return __uint_as_float(bits16 << 16);
}

/* As load4_readonly but a plain coherent load of the state (F32, or BF16 widened exactly):
 * `state` may alias the snapshots being written. VECTOR BF16: one 8-byte access. */
template <bool VECTOR, bool BF16 = false>
__device__ __forceinline__ float4 load4_state(const char *p, long long nb0)
{
    if (BF16 && VECTOR) {
        const uint2 u = *reinterpret_cast<const uint2 *>(p); /* element 0 in the low half */
        return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                           __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
    }
    if (BF16) {
        const unsigned short *e[4] = {reinterpret_cast<const unsigned short *>(p),
                                      reinterpret_cast<const unsigned short *>(p + nb0),
                                      reinterpret_cast<const unsigned short *>(p + 2 * nb0),
                                      reinterpret_cast<const unsigned short *>(p + 3 * nb0)};
        return make_float4(bf16_bits_to_float(*e[0]), bf16_bits_to_float(*e[1]), bf16_bits_to_float(*e[2]),
                           bf16_bits_to_float(*e[3]));
    }
    if (VECTOR)
        return *reinterpret_cast<const float4 *>(p);
    return make_float4(*reinterpret_cast<const float *>(p), *reinterpret_cast<const float *>(p + nb0),
                       *reinterpret_cast<const float *>(p + 2 * nb0),
                       *reinterpret_cast<const float *>(p + 3 * nb0));
}

/* Four floats to the state. BF16: the values are BF16-exact already (round_rows ran after the
 * token), so keeping the upper halves is exact; VECTOR: one 8-byte access. STREAM (vector path):
 * a streaming store (st.global.cs, evict-first), see store_rows. */
template <bool VECTOR, bool BF16 = false, bool STREAM = false>
__device__ __forceinline__ void store4(char *p, long long nb0, float4 x)
{
    if (BF16) {
        const unsigned e0 = __float_as_uint(x.x) >> 16, e1 = __float_as_uint(x.y) >> 16;
        const unsigned e2 = __float_as_uint(x.z) >> 16, e3 = __float_as_uint(x.w) >> 16;
        if (VECTOR && STREAM) {
            __stcs(reinterpret_cast<uint2 *>(p), make_uint2(e0 | (e1 << 16), e2 | (e3 << 16)));
            return;
        }
        if (VECTOR) {
            *reinterpret_cast<uint2 *>(p) = make_uint2(e0 | (e1 << 16), e2 | (e3 << 16));
            return;
        }
        *reinterpret_cast<unsigned short *>(p) = (unsigned short)e0;
        *reinterpret_cast<unsigned short *>(p + nb0) = (unsigned short)e1;
        *reinterpret_cast<unsigned short *>(p + 2 * nb0) = (unsigned short)e2;
        *reinterpret_cast<unsigned short *>(p + 3 * nb0) = (unsigned short)e3;
        return;
    }
    if (VECTOR && STREAM) {
        __stcs(reinterpret_cast<float4 *>(p), x);
        return;
    }
    if (VECTOR) {
        *reinterpret_cast<float4 *>(p) = x;
        return;
    }
    *reinterpret_cast<float *>(p) = x.x;
    *reinterpret_cast<float *>(p + nb0) = x.y;
    *reinterpret_cast<float *>(p + 2 * nb0) = x.z;
    *reinterpret_cast<float *>(p + 3 * nb0) = x.w;
}

/* Sum over the LANES lanes of a group: butterfly with xor offsets LANES/2 .. 1. Addition is
 * commutative, so both partners of each exchange compute the same bits and every lane of the
 * group ends with the identical total. Called by all 32 lanes (full mask). */
template <int LANES>
__device__ __forceinline__ float group_sum(float x)
{
#pragma unroll
    for (int offset = LANES / 2; offset >= 1; offset /= 2)
        x = __fadd_rn(x, __shfl_xor_sync(kFullMask, x, offset));
    return x;
}

/* The sums over the LANES lanes of a group of N = LANES values, one sum per lane: lane l of the
 * group gets the sum of x[l]. Each level halves the values a lane keeps (the upper half where
 * the lane's bit for that offset is set) and adds its partner's copy of them, with the offsets
 * of group_sum in the same order, so every sum is the very float group_sum gives (the same pairs
 * added at every level; addition is commutative), in 2N - 2 selects, N - 1 shuffles and N - 1
 * adds instead of N log2(N) shuffles and adds. */
template <int LANES>
__device__ __forceinline__ float group_scatter_sum(float (&x)[LANES], int slice_lane)
{
#pragma unroll
    for (int offset = LANES / 2, n = LANES; offset >= 1; offset /= 2, n /= 2) {
        const bool upper = (slice_lane & offset) != 0;
#pragma unroll
        for (int i = 0; i < n / 2; i++) {
            const float send = upper ? x[i] : x[i + n / 2];
            const float keep = upper ? x[i + n / 2] : x[i];
            x[i] = __fadd_rn(keep, __shfl_xor_sync(kFullMask, send, offset));
        }
    }
    return x[0];
}

/* Sum over i of x[i] y[i] of one lane's slice: one chain of fmas in order of i. (Two interleaved
 * partial sums, for more independent work per warp, measured no faster at B=64 T=4.) */
template <int ELEMS>
__device__ __forceinline__ float lane_dot(const float (&x)[ELEMS], const float (&y)[ELEMS])
{
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < ELEMS; i++)
        sum = __fmaf_rn(x[i], y[i], sum);
    return sum;
}

/* 1 / sqrt(|x|^2 + 1e-6) of the vector whose slice the group holds (the l2norm of fla and Hugging
 * Face, x * rsqrt(|x|^2 + eps), as include/gdn.h specifies). update_rows applies it to the dot
 * products and to the update coefficient instead of to each element: two multiplies per row in
 * place of ELEMS per vector. Every lane of the group gets the same bits. */
template <int LANES, int ELEMS>
__device__ __forceinline__ float inverse_norm(const float (&x)[ELEMS])
{
    return __frsqrt_rn(__fadd_rn(group_sum<LANES>(lane_dot<ELEMS>(x, x)), 1e-6f));
}

/* One token's inputs as one thread needs them: its slice of q and k, v for its rows, g, beta. */
template <int D, int R>
struct gdn_cuda_token {
    float q[gdn_cuda_config<D, R>::ELEMS];
    float k[gdn_cuda_config<D, R>::ELEMS];
    float v[R];
    float g, beta;
};

/* Where one warp works: sequence b, value head h, q/k head hk, rows row0 .. row0+ROWS-1 of this
 * thread, and the thread's lane within its row group. */
struct gdn_cuda_place {
    int b, h, hk;
    int row0;
    int lane;
};

/* A hint that the line holding p is wanted in L1 soon: no register, no wait. */
__device__ __forceinline__ void prefetch_l1(const char *p)
{
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

/* Bytes from a lane's first chunk to its chunk c (chunks are 4*LANES elements apart) of a view
 * of ESIZE-byte elements: a compile-time constant on the vector path, so loads and stores use
 * immediate offsets. */
template <int D, bool VECTOR, int ESIZE = 4>
__device__ __forceinline__ long long chunk_offset(int c, long long nb0)
{
    constexpr long long step = 4LL * lanes_per_row<D>();
    return VECTOR ? c * step * ESIZE : c * step * nb0;
}

/* Where this thread's rows start in the [.., D rows, D] head at `head`: row row0, its lane's
 * first element. Row r, chunk c is then + r nb[1] + chunk_offset(c). */
__device__ __forceinline__ char *thread_rows(const char *head, const gdn_cuda_view &view, const gdn_cuda_place &at)
{
    return const_cast<char *>(head) + (long long)at.row0 * view.nb[1] + 4LL * at.lane * view.nb[0];
}

/* One thread's pointers into a token source at token (ring position) 0: its q and k slice, v of
 * its first row, g and beta of its head. New tokens: q, k, v, g, beta of sequence b; RING: the
 * rings of a pool slot (no q). Computed once per kernel, so that a token costs one multiply-add
 * of the view's token stride per pointer instead of the whole index arithmetic. */
struct gdn_cuda_token_ptrs {
    char *q, *k, *v, *g, *beta;
};

template <bool RING>
__device__ __forceinline__ gdn_cuda_token_ptrs token_ptrs(const gdn_cuda_gdn_args &a, const gdn_cuda_place &at,
                                                          long long outer)
{
    const gdn_cuda_view &kv = RING ? a.ring_k : a.k, &vv = RING ? a.ring_v : a.v;
    const gdn_cuda_view &gv = RING ? a.ring_g : a.g;
    const long long e0 = 4LL * at.lane; /* the lane's first element: chunk c holds (c LANES + lane) 4 .. +3 */
    gdn_cuda_token_ptrs p;
    p.q = RING ? nullptr : a.q.data + outer * a.q.nb[3] + at.hk * a.q.nb[1] + e0 * a.q.nb[0];
    p.k = kv.data + outer * kv.nb[3] + at.hk * kv.nb[1] + e0 * kv.nb[0];
    p.v = vv.data + outer * vv.nb[3] + at.h * vv.nb[1] + (long long)at.row0 * vv.nb[0];
    p.g = gv.data + outer * gv.nb[2] + at.h * gv.nb[0];
    p.beta = RING ? nullptr : a.beta.data + outer * a.beta.nb[2] + at.h * a.beta.nb[0];
    return p;
}

/* The new-token pointers moved on by one token (the token loop walks them instead of multiplying
 * the token index by every stride for every load). */
__device__ __forceinline__ void advance_tokens(gdn_cuda_token_ptrs &p, const gdn_cuda_gdn_args &a)
{
    p.q += a.q.nb[2];
    p.k += a.k.nb[2];
    p.v += a.v.nb[2];
    p.g += a.g.nb[1];
    p.beta += a.beta.nb[1];
}

/* Token t (new tokens: q, k, v, g, beta) or, with RING, ring position t (k, the coefficients in v,
 * the decay in g; no q: a ring token gives no output) from the thread's pointers p. HINT: only
 * prefetch those lines into L1 (`in` untouched), so that the load of that token one step later
 * hits L1 instead of waiting on L2 behind the state traffic: the wide shape has no registers to
 * load a token ahead. */
template <int D, int R, bool VECTOR, bool RING, bool HINT = false>
__device__ __forceinline__ void load_token(gdn_cuda_token<D, R> &in, const gdn_cuda_gdn_args &a,
                                           const gdn_cuda_token_ptrs &p, long long t)
{
    using C = gdn_cuda_config<D, R>;
    const gdn_cuda_view &kv = RING ? a.ring_k : a.k, &vv = RING ? a.ring_v : a.v;
    const gdn_cuda_view &gv = RING ? a.ring_g : a.g;
    const char *q = RING ? nullptr : p.q + t * a.q.nb[2];
    const char *k = p.k + t * kv.nb[2];
    const char *v = p.v + t * vv.nb[2];
    const char *g = p.g + t * gv.nb[1], *beta = RING ? nullptr : p.beta + t * a.beta.nb[1];
    if constexpr (HINT) {
#pragma unroll
        for (int c = 0; c < C::CHUNKS; c++) {
            if (!RING)
                prefetch_l1(q + chunk_offset<D, VECTOR>(c, a.q.nb[0]));
            prefetch_l1(k + chunk_offset<D, VECTOR>(c, kv.nb[0]));
        }
        prefetch_l1(v);
        prefetch_l1(g);
        if (!RING)
            prefetch_l1(beta);
    } else {
#pragma unroll
        for (int c = 0; c < C::CHUNKS; c++) {
            if (!RING) {
                const float4 qc = load4_readonly<VECTOR>(q + chunk_offset<D, VECTOR>(c, a.q.nb[0]), a.q.nb[0]);
                in.q[4 * c + 0] = qc.x, in.q[4 * c + 1] = qc.y, in.q[4 * c + 2] = qc.z, in.q[4 * c + 3] = qc.w;
            }
            const float4 kc = load4_readonly<VECTOR>(k + chunk_offset<D, VECTOR>(c, kv.nb[0]), kv.nb[0]);
            in.k[4 * c + 0] = kc.x, in.k[4 * c + 1] = kc.y, in.k[4 * c + 2] = kc.z, in.k[4 * c + 3] = kc.w;
        }
        /* v[j], g and beta: the same address for every lane of a group, one broadcast load each. */
#pragma unroll
        for (int r = 0; r < C::ROWS; r++)
            in.v[r] = __ldg(reinterpret_cast<const float *>(v + r * vv.nb[0]));
        in.g = __ldg(reinterpret_cast<const float *>(g));
        in.beta = RING ? 0.0f : __ldg(reinterpret_cast<const float *>(beta));
    }
}

/* Staged token inputs (replay's wide shape on the vector path, STAGE in the kernel). Each warp copies
 * the next token's inputs into a buffer of its own in shared memory with cp.async while the
 * current token computes, then reads them from there: the whole q and k of the head (every group
 * of the warp reads the same vectors), v of the warp's rows, g and beta. The wide shape has no
 * registers to hold a second token, and the L1 prefetch hint it used instead left each token
 * waiting on its loads (docs/PERF.md). Per warp, no block barrier: two buffers, a
 * __syncwarp before a buffer is refilled and one after its copies have landed. The values are
 * the same floats either way, so staging changes no result. */
template <int D, int R>
struct gdn_cuda_stage {
    using C = gdn_cuda_config<D, R>;
    static constexpr int Q = 0, K = D, V = 2 * D, G = 2 * D + C::ROWS_PER_WARP, BETA = G + 1;
    static constexpr int FLOATS = (BETA + 1 + 3) / 4 * 4; /* one buffer, a whole number of float4s */
    static_assert(C::ROWS_PER_WARP <= kWarpSize, "one lane copies v of one row");
    static_assert(D % 4 == 0 && (2 * D / 4) % kWarpSize == 0 || 2 * D / 4 < kWarpSize, "q and k split over lanes");
};

__device__ __forceinline__ void cp_async16(float *to, const char *from)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((unsigned)__cvta_generic_to_shared(to)),
                 "l"(from)
                 : "memory");
}
__device__ __forceinline__ void cp_async4(float *to, const char *from)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"((unsigned)__cvta_generic_to_shared(to)),
                 "l"(from)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
/* Every copy group but the PENDING newest has landed (in this lane). */
template <int PENDING> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}
/* Staging buffers per warp (a power of two): tokens are copied this many minus one ahead. */
constexpr int kStageBuffers = 4;

/* Copy token t (RING: ring position t) into buffer `buf`, each lane its share: float4 i of [q; k]
 * for i = lane, lane + 32, ... (RING: of k only), v of row `lane` of the warp's rows, g (lane 0)
 * and beta (lane 1). p are the thread's token pointers (token_ptrs: its lane's slice of q and k,
 * v of its first row); `lane` is the lane in the warp and `group_row` the thread's first row
 * within the warp's rows. Vector path only: q and k rows are 16-byte aligned and contiguous. */
template <int D, int R, bool RING>
__device__ __forceinline__ void stage_token(float *buf, const gdn_cuda_gdn_args &a, const gdn_cuda_token_ptrs &p,
                                            long long t, int lane, int slice_lane, int group_row)
{
    using C = gdn_cuda_config<D, R>;
    using SL = gdn_cuda_stage<D, R>;
    const gdn_cuda_view &kv = RING ? a.ring_k : a.k, &vv = RING ? a.ring_v : a.v;
    const gdn_cuda_view &gv = RING ? a.ring_g : a.g;
    const char *k = p.k + t * kv.nb[2] - 16LL * slice_lane; /* element 0 of the head's k */
    constexpr int PARTS = (RING ? 1 : 2) * D / 4;
#pragma unroll
    for (int i = 0; i < (PARTS + kWarpSize - 1) / kWarpSize; i++) {
        const int part = i * kWarpSize + lane;
        if (PARTS % kWarpSize == 0 || part < PARTS) {
            if (RING)
                cp_async16(buf + SL::K + 4 * part, k + 16LL * part);
            else if (part < D / 4)
                cp_async16(buf + SL::Q + 4 * part, p.q + t * a.q.nb[2] + 16LL * (part - slice_lane));
            else
                cp_async16(buf + SL::K + 4 * (part - D / 4), k + 16LL * (part - D / 4));
        }
    }
    if (lane < C::ROWS_PER_WARP)
        cp_async4(buf + SL::V + lane, p.v + t * vv.nb[2] + (long long)(lane - group_row) * vv.nb[0]);
    if (lane == 0)
        cp_async4(buf + SL::G, p.g + t * gv.nb[1]);
    if (!RING && lane == 1)
        cp_async4(buf + SL::BETA, p.beta + t * a.beta.nb[1]);
}

/* A staged token from `buf` into `in` as load_token would give it (the thread's slice of q and
 * k, v of its rows from group_row on, g, beta; RING: no q, beta 0). */
template <int D, int R, bool RING>
__device__ __forceinline__ void read_staged(gdn_cuda_token<D, R> &in, const float *buf, int slice_lane, int group_row)
{
    using C = gdn_cuda_config<D, R>;
    using SL = gdn_cuda_stage<D, R>;
#pragma unroll
    for (int c = 0; c < C::CHUNKS; c++) {
        const int e = 4 * (c * C::LANES + slice_lane);
        if (!RING) {
            const float4 qc = *reinterpret_cast<const float4 *>(buf + SL::Q + e);
            in.q[4 * c + 0] = qc.x, in.q[4 * c + 1] = qc.y, in.q[4 * c + 2] = qc.z, in.q[4 * c + 3] = qc.w;
        }
        const float4 kc = *reinterpret_cast<const float4 *>(buf + SL::K + e);
        in.k[4 * c + 0] = kc.x, in.k[4 * c + 1] = kc.y, in.k[4 * c + 2] = kc.z, in.k[4 * c + 3] = kc.w;
    }
#pragma unroll
    for (int r = 0; r < R; r++)
        in.v[r] = buf[SL::V + group_row + r];
    in.g = buf[SL::G];
    in.beta = RING ? 0.0f : buf[SL::BETA];
}

/* BF16 state storage: every state float rounded to BF16 (to nearest, ties to even; two at a time
 * with one cvt.rn.bf16x2.f32) and widened back, after every token (include/gdn.h says why). */
template <int D, int R>
__device__ __forceinline__ void round_rows(float (&S)[R][gdn_cuda_config<D, R>::ELEMS])
{
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int i = 0; i < gdn_cuda_config<D, R>::ELEMS; i += 2) {
            const __nv_bfloat162 pair = __floats2bfloat162_rn(S[r][i], S[r][i + 1]);
            S[r][i] = __low2float(pair);
            S[r][i + 1] = __high2float(pair);
        }
}

/* The per-token update of this thread's rows; out[r] = o for row row0 + r (in lane r of the
 * group, the row's writer; see below). The arithmetic order here is the exactness contract: change it only knowing that
 * results then change bit-wise (and stay consistent across T, B and both access paths).
 * Both dot products are taken on the row as it was before the token, in one pass, and expanded:
 *     sk = (row . k) exp(g) nk;  d = beta (v - sk);
 *     o  = ((row . q) exp(g) + (d nk) (k . q)) scale nq;  row = exp(g) row + (d nk) k
 * which is the update of include/gdn.h (row decayed, then row += d k^, o = row . q^) up to
 * rounding, with k^ = k nk, q^ = q nq: one multiply per row instead of one per element. The two
 * dot products and their shuffle trees are independent, so a token is one reduction deep instead
 * of two (the output no longer waits for the new row); k . q costs ELEMS fmas per thread, shared
 * by its rows. Without l2norm nk = nq = 1 and the multiplies by 1 are exact.
 * Where a group's lanes number twice its rows (D = 128 wide), the 2 ROWS sums are taken with
 * group_scatter_sum (the same floats as group_sum, in fewer instructions) and lane r computes
 * row r's coefficient and output; out[r] is then meaningful in lane r, the row's writer, only.
 * coef[r] = beta (v - sk) nk, the row's coefficient of k as given, and decay = exp(g): what the
 * replay ring keeps of the token (with k as given); the row's new value is fold_rows's
 * expression of those floats, so a fold writes the same floats. BF16: the rows are rounded after
 * o is taken (round_rows). */
template <int D, int R, bool BF16>
__device__ __forceinline__ void update_rows(float (&S)[R][gdn_cuda_config<D, R>::ELEMS],
                                            const gdn_cuda_token<D, R> &in, int l2norm, float scale, float (&out)[R],
                                            float (&coef)[R], float &decay)
{
    using C = gdn_cuda_config<D, R>;
    float nk = 1.0f, q_scale = scale;
    if (l2norm) {
        nk = inverse_norm<C::LANES, C::ELEMS>(in.k);
        q_scale = __fmul_rn(scale, inverse_norm<C::LANES, C::ELEMS>(in.q));
    }
    decay = expf(in.g);

    /* x[r] = row r . k, x[ROWS + r] = row r . q: this lane's partial sums. */
    float x[2 * C::ROWS];
#pragma unroll
    for (int r = 0; r < C::ROWS; r++) {
        x[r] = lane_dot<C::ELEMS>(S[r], in.k);
        x[C::ROWS + r] = lane_dot<C::ELEMS>(S[r], in.q);
    }
    const float kq = group_sum<C::LANES>(lane_dot<C::ELEMS>(in.k, in.q));
    if constexpr (2 * C::ROWS == C::LANES) {
        /* One value per lane of the group (D = 128 wide: 8 sums over 8 lanes): lane r computes
         * row r's coefficient and output, then every lane fetches the coefficients. */
        const int slice_lane = (int)(threadIdx.x % C::LANES);
        const float total = group_scatter_sum<C::LANES>(x, slice_lane); /* x[slice_lane]'s sum */
        const float sq = __shfl_xor_sync(kFullMask, total, C::ROWS);   /* lane r < ROWS: row r . q */
        float v = in.v[0];
#pragma unroll
        for (int r = 1; r < C::ROWS; r++)
            v = slice_lane == r ? in.v[r] : v;
        const float d = __fmul_rn(__fmul_rn(in.beta, __fsub_rn(v, __fmul_rn(__fmul_rn(total, decay), nk))), nk);
        const float o = __fmul_rn(__fmaf_rn(d, kq, __fmul_rn(sq, decay)), q_scale);
#pragma unroll
        for (int r = 0; r < C::ROWS; r++) {
            coef[r] = __shfl_sync(kFullMask, d, r, C::LANES);
            out[r] = o; /* meaningful in lane r */
        }
    } else {
#pragma unroll
        for (int i = 0; i < 2 * C::ROWS; i++)
            x[i] = group_sum<C::LANES>(x[i]);
#pragma unroll
        for (int r = 0; r < C::ROWS; r++) {
            coef[r] = __fmul_rn(__fmul_rn(in.beta, __fsub_rn(in.v[r], __fmul_rn(__fmul_rn(x[r], decay), nk))), nk);
            out[r] = __fmul_rn(__fmaf_rn(coef[r], kq, __fmul_rn(x[C::ROWS + r], decay)), q_scale);
        }
    }
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
#pragma unroll
        for (int i = 0; i < C::ELEMS; i++)
            S[r][i] = __fmaf_rn(coef[r], in.k[i], __fmul_rn(S[r][i], decay));
    if (BF16)
        round_rows<D, R>(S);
}

/* A folded replay token: in.v holds the coefficients and in.g the decay its update_rows computed
 * when it was new, from the same state, so row = decay row + coef k here is that update's write,
 * the very same floats, with no dot product, norm or exponential, rounded as it was. */
template <int D, int R, bool BF16>
__device__ __forceinline__ void fold_rows(float (&S)[R][gdn_cuda_config<D, R>::ELEMS],
                                          const gdn_cuda_token<D, R> &in)
{
    using C = gdn_cuda_config<D, R>;
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
#pragma unroll
        for (int i = 0; i < C::ELEMS; i++)
            S[r][i] = __fmaf_rn(in.v[r], in.k[i], __fmul_rn(S[r][i], in.g));
    if (BF16)
        round_rows<D, R>(S);
}

/* This thread's rows of a state (F32 or BF16) from `rows` (thread_rows of a pool slot's head),
 * every load issued before any is used. */
template <int D, int R, bool VECTOR, bool BF16>
__device__ __forceinline__ void load_rows(float (&S)[R][gdn_cuda_config<D, R>::ELEMS], const char *rows,
                                          const gdn_cuda_view &from)
{
    using C = gdn_cuda_config<D, R>;
    constexpr int ESIZE = BF16 ? 2 : 4;
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
#pragma unroll
        for (int c = 0; c < C::CHUNKS; c++) {
            const float4 x = load4_state<VECTOR, BF16>(
                rows + r * from.nb[1] + chunk_offset<D, VECTOR, ESIZE>(c, from.nb[0]), from.nb[0]);
            S[r][4 * c + 0] = x.x, S[r][4 * c + 1] = x.y, S[r][4 * c + 2] = x.z, S[r][4 * c + 3] = x.w;
        }
}

/* This thread's rows of a state to `rows` (thread_rows of a pool slot's head or a snapshot's).
 * STREAM: as streaming stores (st.global.cs: evict-first in L2). A state written is not read
 * again before the next step, by which time every layer's states have passed through L2, so
 * keeping its lines only crowds out what the next calls read. On an H100 (docs/PERF.md,
 * "streaming state stores") the latency-bound shapes gained (F32 decode B=1 2.80 -> 2.50 us,
 * T=4 K=4 B=1 6.25 -> 5.28, replay T=4 B=8 20.0 -> 19.7) and the bandwidth-bound ones lost 0.6%
 * (decode B >= 64), so the kernel asks for them in the former only. */
template <int D, int R, bool VECTOR, bool BF16, bool STREAM = false>
__device__ __forceinline__ void store_rows(char *rows, const gdn_cuda_view &to,
                                           const float (&S)[R][gdn_cuda_config<D, R>::ELEMS])
{
    using C = gdn_cuda_config<D, R>;
    constexpr int ESIZE = BF16 ? 2 : 4;
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
#pragma unroll
        for (int c = 0; c < C::CHUNKS; c++)
            store4<VECTOR, BF16, STREAM>(rows + r * to.nb[1] + chunk_offset<D, VECTOR, ESIZE>(c, to.nb[0]), to.nb[0],
                                 make_float4(S[r][4 * c + 0], S[r][4 * c + 1], S[r][4 * c + 2], S[r][4 * c + 3]));
}

/* Replay: the new token `in` (as loaded; update_rows does not change it: its k goes to the ring as
 * given), its coefficients and its decay to ring position `pos` through the ring pointers p of the
 * sequence's slot. Each value has one writer: coef[row0 + r] the lane r that writes o for the row
 * (every lane of the group holds the same value), the decay `head_writer` (lane 0 of the head's
 * first warp), k `k_writer` (the lanes of group 0 of the first warp of the first value head that
 * reads q/k head hk). From registers: copying from the inputs after the token loop instead measured
 * slower (a dependent load at the end of every warp's life). */
template <int D, int R, bool VECTOR>
__device__ __forceinline__ void append_ring(const gdn_cuda_gdn_args &a, const gdn_cuda_place &at,
                                            const gdn_cuda_token_ptrs &p, const gdn_cuda_token<D, R> &in,
                                            const float (&coef)[R], float decay, long long pos, bool head_writer,
                                            bool k_writer)
{
    using C = gdn_cuda_config<D, R>;
    char *v = p.v + pos * a.ring_v.nb[2];
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
        if (at.lane == r)
            *reinterpret_cast<float *>(v + r * a.ring_v.nb[0]) = coef[r];
    if (head_writer)
        *reinterpret_cast<float *>(p.g + pos * a.ring_g.nb[1]) = decay;
    if (k_writer) {
        char *k = p.k + pos * a.ring_k.nb[2];
#pragma unroll
        for (int c = 0; c < C::CHUNKS; c++)
            store4<VECTOR>(k + chunk_offset<D, VECTOR>(c, a.ring_k.nb[0]), a.ring_k.nb[0],
                           make_float4(in.k[4 * c + 0], in.k[4 * c + 1], in.k[4 * c + 2], in.k[4 * c + 3]));
    }
}

/* As append_ring, with each row writer lane holding its own row's coefficient (`mine`, for row
 * row0 + at.lane): one store instead of one predicated store per row. The g and k writes repeat
 * append_ring's on purpose: sharing them through one helper changed the staged kernels' register
 * allocation and made replay 0.6-1% slower at B >= 64 (H100, docs/PERF.md). */
template <int D, int R, bool VECTOR>
__device__ __forceinline__ void append_ring_row(const gdn_cuda_gdn_args &a, const gdn_cuda_place &at,
                                                const gdn_cuda_token_ptrs &p, const gdn_cuda_token<D, R> &in,
                                                float mine, float decay, bool row_writer, long long pos,
                                                bool head_writer, bool k_writer)
{
    using C = gdn_cuda_config<D, R>;
    if (row_writer)
        *reinterpret_cast<float *>(p.v + pos * a.ring_v.nb[2] + at.lane * a.ring_v.nb[0]) = mine;
    if (head_writer)
        *reinterpret_cast<float *>(p.g + pos * a.ring_g.nb[1]) = decay;
    if (k_writer) {
        char *k = p.k + pos * a.ring_k.nb[2];
#pragma unroll
        for (int c = 0; c < C::CHUNKS; c++)
            store4<VECTOR>(k + chunk_offset<D, VECTOR>(c, a.ring_k.nb[0]), a.ring_k.nb[0],
                           make_float4(in.k[4 * c + 0], in.k[4 * c + 1], in.k[4 * c + 2], in.k[4 * c + 3]));
    }
}

/* One block: index_check <- {the first position b whose index is outside 0..S-1 (-1 if none),
 * that index, -1, -1}; then the first b whose states_index is outside 0..S_write-1: {b,
 * states_index[b], kWriteBad, -1}; then the first b (then b' < b) writing the slot b' writes: {b,
 * states_index[b], kWriteShared, b'}; when all are valid and the pool may overlap the snapshots,
 * the first b (then s, b') whose slot overlaps the snapshot b' writes, states[s][w(b')], without
 * being exactly b's own: {b, index[b], s, b'}. Replay, when all indices are inside: the first b whose fold entry is out
 * of range: {b, start, kFoldBad, count}; else the first b (then b' < b) with index[b'] ==
 * index[b]: {b, index[b], kSlotShared, b'}. Runs before the main kernel on the same stream (as
 * get_rows' check does). The host reports in the same order as gdn_gated_delta_net_check_index. */
constexpr long long kSlotShared = -2, kFoldBad = -3, kWriteBad = -4, kWriteShared = -5;
constexpr int kCheckThreads = 256;

/* Byte range [lo, hi) of the D x D x Hv state of esize-byte elements at `base` with the view's
 * strides nb[0..2]. */
__device__ void state_range(const char *base, const long long *nb, long long D, long long Hv, long long esize,
                            unsigned long long *lo, unsigned long long *hi)
{
    *lo = (unsigned long long)base;
    *hi = *lo + (unsigned long long)((D - 1) * nb[0] + (D - 1) * nb[1] + (Hv - 1) * nb[2] + esize);
}

/* The verdict's failures in the order they are reported (index_check above): a failure of a
 * lower category wins, then the lower code (a position b or a pair code) within one. */
enum gdn_cuda_failure { kBadSlot, kBadWrite, kSharedWrite, kBadFold, kSharedSlot, kOverlap, kNoFailure };

/* A thread's first failure so far; `add` keeps the earlier of two in report order. */
struct gdn_cuda_first {
    int category = kNoFailure;
    long long code = LLONG_MAX;

    __device__ __forceinline__ void add(int c, long long p)
    {
        if (c < category || (c == category && p < code))
            category = c, code = p;
    }
};

/* The block-wide first failure over THREADS threads (every thread gets it): a shuffle butterfly
 * per warp, then each thread takes the first of the warps' results; two barriers. scratch holds
 * 2 * THREADS / 32 values. (The verdict used to take a minimum per check, one after the other:
 * three block reductions before the replay kernel's first token, each behind the last.) */
template <int THREADS>
__device__ gdn_cuda_first block_first(gdn_cuda_first f, long long *scratch)
{
    static_assert(THREADS % kWarpSize == 0 && THREADS / kWarpSize <= kWarpSize, "whole warps, one scratch pair each");
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
        f.add(__shfl_xor_sync(kFullMask, f.category, offset), __shfl_xor_sync(kFullMask, f.code, offset));
    const int w = threadIdx.x / kWarpSize;
    if (threadIdx.x % kWarpSize == 0)
        scratch[2 * w] = f.category, scratch[2 * w + 1] = f.code;
    __syncthreads();
    gdn_cuda_first result;
#pragma unroll
    for (int i = 0; i < THREADS / kWarpSize; i++)
        result.add((int)scratch[2 * i], scratch[2 * i + 1]);
    __syncthreads(); /* every thread has read scratch before anything writes it again */
    return result;
}

/* Index value b of an I32 index view (a broadcast load per thread). */
__device__ __forceinline__ int index_at(const char *index, long long nb, long long b)
{
    return *reinterpret_cast<const int *>(index + b * nb);
}

/* Adds the first pair code b * B + b' (b' < b) with index[b] == index[b'] among this thread's
 * pairs. BY_ROW: the thread's values of b, each against every b' < b, without division (a warp's
 * lanes read the same index[b'] together): the check kernel's form, where B is large (the loop
 * over pair codes took two 64-bit divisions a pair, ~66 instructions, 65536 pairs at B = 256 for
 * one block). Otherwise the thread's pair codes: one or two a thread inside the op's kernel
 * (B <= 16), whose register allocation the short loop leaves as it was. */
template <bool BY_ROW>
__device__ __forceinline__ void first_equal_pair(gdn_cuda_first &f, int category, const char *index, long long nb,
                                                 long long B)
{
    if constexpr (BY_ROW) {
        for (long long b = threadIdx.x; b < B; b += blockDim.x) {
            const int mine = index_at(index, nb, b);
            int first = INT_MAX; /* b' < b <= INT_MAX (B is an int) */
#pragma unroll 4
            for (int b2 = 0; b2 < b; b2++)
                first = index_at(index, nb, b2) == mine && b2 < first ? b2 : first;
            if (first != INT_MAX)
                f.add(category, b * B + first);
        }
    } else {
        for (long long p = threadIdx.x; p < B * B; p += blockDim.x) {
            const long long b = p / B, b2 = p % B;
            if (b2 < b && index_at(index, nb, b) == index_at(index, nb, b2))
                f.add(category, p);
        }
    }
}

/* The first failure of the index, snapshot index and fold values, computed by one whole block of
 * THREADS threads (scratch: 2 * THREADS / 32 values of shared memory), every thread getting it
 * (kNoFailure when all are valid). Every check runs at once and one block reduction picks the
 * failure to report: the first in the order of index_check's description, as if the checks ran
 * one after the other. (Values used only to form addresses, never dereferenced, may be out of
 * range meanwhile.) It reads only the index, the snapshot index and the fold entries. BY_ROW: the
 * check kernel's loops over pairs, one row of pairs a thread (first_equal_pair). */
template <int THREADS, bool BY_ROW = false>
__device__ gdn_cuda_first index_first(const gdn_cuda_gdn_args &a, long long *scratch)
{
    gdn_cuda_first f;
    for (long long b = threadIdx.x; b < a.B; b += blockDim.x) {
        if (a.index != nullptr) {
            const int slot = index_at(a.index, a.index_nb, b);
            if (slot < 0 || slot >= a.S)
                f.add(kBadSlot, b);
        }
        if (a.states_index != nullptr) {
            const int to = index_at(a.states_index, a.states_index_nb, b);
            if (to < 0 || to >= a.S_write)
                f.add(kBadWrite, b);
        }
        if (a.fold != nullptr) {
            const char *fold = a.fold + b * a.fold_nb[1];
            const int start = *reinterpret_cast<const int *>(fold);
            const int count = *reinterpret_cast<const int *>(fold + a.fold_nb[0]);
            if (start < 0 || start >= a.L || count < 0 || count > a.L - a.T)
                f.add(kBadFold, b);
        }
    }
    /* The snapshot index: one writer per slot. Replay: distinct slots. */
    if (a.states_index != nullptr)
        first_equal_pair<BY_ROW>(f, kSharedWrite, a.states_index, a.states_index_nb, a.B);
    if (a.fold != nullptr)
        first_equal_pair<BY_ROW>(f, kSharedSlot, a.index, a.index_nb, a.B);
    /* The in-place rule, over (b, s, b') in that order: pair code (b * n_write + s) * B + b'. */
    if (a.pool_check) {
        const long long esize = a.bf16 ? 2 : 4;
        if constexpr (BY_ROW) {
            /* A thread per (b, s): b's read range [lo, hi) against every snapshot b' writes at s,
             * whose range starts at base_s + to * nb3 (to = the slot b' writes) and is `extent`
             * long; they meet iff lo - extent - base_s < to * nb3 < hi - base_s. No division in
             * the loop (the pair-code loop took three 64-bit divisions a pair). */
            const bool same_strides = a.states.nb[0] == a.state.nb[0] && a.states.nb[1] == a.state.nb[1] &&
                                      a.states.nb[2] == a.state.nb[2];
            unsigned long long lo, hi, slo, shi;
            state_range(a.states.data, a.states.nb, a.D, a.Hv, esize, &slo, &shi);
            const long long extent = (long long)(shi - slo), nb3 = a.states.nb[3];
            for (long long r = threadIdx.x; r < (long long)a.B * a.n_write; r += blockDim.x) {
                const long long b = r / a.n_write, s = r % a.n_write;
                const char *read = a.state.data + index_at(a.index, a.index_nb, b) * a.state.nb[3];
                state_range(read, a.state.nb, a.D, a.Hv, esize, &lo, &hi);
                const long long base_s = (long long)(a.states.data + s * a.states.nb[4]);
                const long long above = (long long)lo - extent - base_s, below = (long long)hi - base_s;
                /* b's own snapshot may be exactly its read state (the in-place case) */
                const char *windex = a.states_index;
                const long long wnb = a.states_index_nb;
                const int B = a.B, own = (int)b;
                const long long own_at = (windex != nullptr ? index_at(windex, wnb, b) : b) * nb3;
                const bool own_exact = same_strides && (const char *)(base_s + own_at) == read;
                int first = INT_MAX;
                if (windex != nullptr) {
#pragma unroll 4
                    for (int b2 = 0; b2 < B; b2++) {
                        const long long at = index_at(windex, wnb, b2) * nb3;
                        first = above < at && at < below && b2 < first && !(b2 == own && own_exact) ? b2 : first;
                    }
                } else {
#pragma unroll 4
                    for (int b2 = 0; b2 < B; b2++) {
                        const long long at = b2 * nb3;
                        first = above < at && at < below && b2 < first && !(b2 == own && own_exact) ? b2 : first;
                    }
                }
                if (first != INT_MAX)
                    f.add(kOverlap, r * a.B + first);
            }
        } else {
            const long long pairs = (long long)a.B * a.n_write * a.B;
            for (long long p = threadIdx.x; p < pairs; p += blockDim.x) {
                const long long b = p / (a.n_write * a.B), s = (p / a.B) % a.n_write, b2 = p % a.B;
                const long long to = a.states_index != nullptr ? index_at(a.states_index, a.states_index_nb, b2) : b2;
                const char *read = a.state.data + index_at(a.index, a.index_nb, b) * a.state.nb[3];
                const char *snap = a.states.data + s * a.states.nb[4] + to * a.states.nb[3];
                unsigned long long lo, hi, slo, shi;
                state_range(read, a.state.nb, a.D, a.Hv, esize, &lo, &hi);
                state_range(snap, a.states.nb, a.D, a.Hv, esize, &slo, &shi);
                if (hi <= slo || shi <= lo)
                    continue;
                const bool exact = b2 == b && snap == read && a.states.nb[0] == a.state.nb[0] &&
                                   a.states.nb[1] == a.state.nb[1] && a.states.nb[2] == a.state.nb[2];
                if (!exact)
                    f.add(kOverlap, p);
            }
        }
    }
    return block_first<THREADS>(f, scratch);
}

/* The verdict of index_first's result: true when all values are valid. With `report`, thread 0
 * stores it in index_check ({-1, 0, -1, -1} when valid). */
__device__ bool report_verdict(const gdn_cuda_gdn_args &a, const gdn_cuda_first &f, bool report)
{
    if (report && threadIdx.x == 0) {
        int64_t *c = a.index_check;
        const long long p = f.code;
        switch (f.category) {
        case kBadSlot:
            c[0] = p, c[1] = index_at(a.index, a.index_nb, p), c[2] = -1, c[3] = -1;
            break;
        case kBadWrite:
            c[0] = p, c[1] = index_at(a.states_index, a.states_index_nb, p), c[2] = kWriteBad, c[3] = -1;
            break;
        case kSharedWrite:
            c[0] = p / a.B, c[1] = index_at(a.states_index, a.states_index_nb, p / a.B);
            c[2] = kWriteShared, c[3] = p % a.B;
            break;
        case kBadFold: {
            const char *fold = a.fold + p * a.fold_nb[1];
            c[0] = p, c[1] = *reinterpret_cast<const int *>(fold);
            c[2] = kFoldBad, c[3] = *reinterpret_cast<const int *>(fold + a.fold_nb[0]);
            break;
        }
        case kSharedSlot:
            c[0] = p / a.B, c[1] = index_at(a.index, a.index_nb, p / a.B), c[2] = kSlotShared, c[3] = p % a.B;
            break;
        case kOverlap:
            c[0] = p / (a.n_write * a.B), c[1] = index_at(a.index, a.index_nb, p / (a.n_write * a.B));
            c[2] = (p / a.B) % a.n_write, c[3] = p % a.B;
            break;
        default:
            c[0] = -1, c[1] = 0, c[2] = -1, c[3] = -1;
        }
    }
    return f.category == kNoFailure;
}

template <int THREADS, bool BY_ROW = false>
__device__ bool index_verdict(const gdn_cuda_gdn_args &a, long long *scratch, bool report)
{
    return report_verdict(a, index_first<THREADS, BY_ROW>(a, scratch), report);
}

/* With state_ready the previous kernel writes neither the index nor the fold entries, so the
 * verdict on them is reached while that kernel runs and only stored after the wait (the previous
 * kernel reads index_check). Not with a snapshot index, which the promise does not cover.
 * The op's kernel is let in first thing: it waits for this grid, and this one for the previous
 * kernel, so it only takes its blocks' places (and, with state_ready, reads its state) while the
 * previous kernel ends; this block itself starts only once that kernel's last blocks have. */
__global__ void __launch_bounds__(kCheckThreads) gdn_cuda_index_check_kernel(const gdn_cuda_gdn_args a)
{
    __shared__ long long scratch[2 * kCheckThreads / kWarpSize]; /* block_first: a pair per warp */
    gdn_cuda_grid_release();
    const bool early = a.state_ready && a.states_index == nullptr;
    gdn_cuda_first f;
    if (early)
        f = index_first<kCheckThreads, true>(a, scratch);
    gdn_cuda_grid_wait();
    if (!early)
        f = index_first<kCheckThreads, true>(a, scratch);
    report_verdict(a, f, true);
}

} // namespace

#endif
