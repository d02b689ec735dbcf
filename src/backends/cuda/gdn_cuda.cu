/* gdn_cuda.cu: the Gated DeltaNet op on CUDA: one kernel launch per call, state in registers.
 *
 * Mapping. The state of head (b, h) is D rows of D floats ([Dv][Dk], Dk contiguous) and rows are
 * independent (per token: row *= exp(g); sk = row.k; d = beta (v[j] - sk); row += d k;
 * o[j] = scale row.q). A group of LANES = min(32, D/4) consecutive lanes holds one row: lane l
 * holds the float4 chunks c*LANES + l (c < CHUNKS = D / (4 LANES)), so each warp-wide load or
 * store of a chunk touches LANES*16 contiguous bytes (fully coalesced 16-byte accesses). Each
 * thread holds ROWS rows (ROWS*CHUNKS float4 of state in registers, all loads issued at once for
 * memory-level parallelism); a warp holds 32/LANES groups, so ROWS_PER_WARP = (32/LANES)*ROWS
 * consecutive rows of one head. ROWS is 2 when the grid would otherwise be thin (fewer than
 * 4096 warps, e.g. B=1: latency-bound, so more warps in flight win), else the wide value of the
 * table below; a row's arithmetic is the same either way. Warps are numbered head-major ((b*Hv + h) * WARPS_PER_HEAD +
 * warp_in_head), 4 warps a block, so consecutive blocks stream consecutive state memory, and B=1
 * still gives Hv*D/ROWS_PER_WARP warps (1024 for Hv=32, D=128). Dot products: each lane sums
 * its elements in a fixed order with fma, then a butterfly of __shfl_xor_sync over the LANES
 * lanes (offsets LANES/2 .. 1) leaves the same bits in every lane of the group.
 *
 *     D     LANES CHUNKS ROWS (wide) rows/warp warps/head (wide)
 *     16      4     1     2      16         1
 *     32      8     1     4      16         2
 *     64     16     1     4       8         8
 *     128    32     1     4       4        32
 *     256    32     2     2       2       128
 *
 * Why: the op is memory-bound at large B (the state is D*D floats per head; q/k/v are D floats),
 * so the goal is one read and one write of each state row at full bandwidth, with everything
 * else (the T-token loop, snapshots) happening while the rows sit in registers.
 *
 * Bytes moved per call (F32): state read B*Hv*D*D*4, snapshots written n_write*B*Hv*D*D*4, o
 * written B*T*Hv*D*4; q, k, v, g, beta read once per warp that needs them (q/k are shared by the
 * Hv/Hk value heads of a q/k head and by the warps of a head, so they mostly hit L1/L2):
 * B*T*(2*Hk*D + Hv*D + 2*Hv)*4 from DRAM. Qwen3.6 decode (B=64, T=1, Hv=32, Hk=16, D=128):
 * 128 MiB read + 128 MiB written; q+k, v and o are 1 MiB each. Measured on one H100 80GB HBM3
 * (event-timed median of 50, sm_90): 101 us, 97% of the device-to-device copy bandwidth (copy of
 * the 128 MiB state: 97 us); B=64 T=4 K=4: 99%; B=1 T=1: ~10 us per call, launch included
 * (a 2 MiB copy takes ~8 us the same way). ROWS = 2 or 8 at D=128 measured no better.
 *
 * Exactness. Every arithmetic step is an explicitly rounded intrinsic (__fmul_rn, __fmaf_rn,
 * __fadd_rn, __fsub_rn, __fdiv_rn, __fsqrt_rn), which the compiler may neither contract nor
 * reorder, plus expf (CUDA's libm expf, <= 2 ulp, one fixed instruction sequence; never the
 * __expf intrinsic; the library is built without fast-math). The per-row order is the same code
 * for every token, every launch and every B: the launch shape depends on D only, a row's lane
 * slice and reduction tree depend on D only, and the state is carried from token to token as the
 * same fp32 values it would have in memory. So T tokens in one call equal T calls of one token,
 * bit for bit, and a sequence's results do not depend on B. The vector path (16-byte accesses)
 * and the generic path (4 scalar accesses with any byte strides) only load and store differently;
 * the arithmetic is shared code.
 *
 * Aliasing: `state` may be exactly the view states[s]. Each thread loads all its rows before the
 * token loop and later writes only those rows, so the in-place update is safe; for the same
 * reason state loads are plain (coherent) loads, never ld.global.nc, and no pointer is
 * __restrict__. The other inputs never overlap an output (validated), so they use __ldg.
 *
 * Pool index (optional): sequence b reads its initial state from pool slot index[b]. A one-block
 * check kernel runs first; each warp then loads the check's verdict and index[b] (broadcast
 * loads) before its state loads, and nothing else changes: a row's arithmetic is the same.
 * The pool may overlap `states` (include/gdn.h): the check kernel also verifies that each slot
 * read is disjoint from every snapshot or exactly one of its own sequence's, in which case each
 * thread loads its rows before the token loop and writes only those rows, as in the aliasing
 * case above.
 *
 * Replay (gdn_gated_delta_net_replay): the same kernel with REPLAY = true. After the state loads,
 * each thread folds the ring tokens fold[b] names into its registers through the same
 * update_rows as a new token (the output half skipped: no q, no o), stores the rows back to the
 * pool slot when fold[b] says commit, then runs the new tokens as always, with no snapshots;
 * before each new token's update it appends the token's raw inputs to the ring (each value by
 * one thread: v by the lane that writes o for its row, g and beta by lane 0 of the head's first
 * warp, k by group 0 of the first warp of the first value head of its q/k head). The check
 * kernel also checks the fold entries and that no two sequences share a slot. The non-replay
 * instantiations compile to the same PTX as before replay existed. Measured on one H100 (B=64,
 * T=4, Hv=32, Hk=16, D=128, l2norm, docs/PERF.md): the op is instruction-bound there (the
 * recurrent op in place takes 220 us where its bytes need ~100 us), so replay costs what it
 * computes: 272 us with nothing to fold, 381 us folding 3 tokens and committing (each folded
 * token ~60% of a new one: no q half), against 263 us for the recurrent op writing 4 snapshots.
 * The replay instantiation holds 120 registers to the recurrent 80 (the ring append in the
 * token loop); capping it at 80 (6 blocks/SM) spilled and gained 2%, 2 rows per thread lost 30%. */
#include "cuda_internal.h"

#include <limits.h>

namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;

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
    int pool_check;                        /* 1: the pool's range meets states': check the rule */
    int64_t *index_check;                  /* the context's 4-value device buffer */
    /* Replay only (fold NULL otherwise): rings [S,L,Hk,D], [S,L,Hv,D], [S,L,Hv] x 2 of slot
     * index[b], read at the fold's positions and appended to; fold [B,3] I32 {start, count,
     * commit} with element strides fold_nb[0], fold_nb[1]. */
    gdn_cuda_view ring_k, ring_v, ring_g, ring_beta;
    const char *fold;
    long long fold_nb[2];
    long long L;
};

/* Launch shape and per-lane slice for head dimension D (see the table at the top). */
/* Lanes that hold one row: a function of D alone (so is every row's arithmetic). */
template <int D>
__host__ __device__ constexpr int lanes_per_row()
{
    return D / 4 < kWarpSize ? D / 4 : kWarpSize;
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
    static_assert(D % ROWS_PER_WARP == 0, "a head must split into whole warps");
    static_assert(ROWS <= LANES, "lane r of a group writes o for row r");
    static_assert(LANES * ELEMS == D, "the lanes of a group cover a row exactly");
};

/* Element index (within a row) of the e-th float of chunk c held by lane `lane` of a group. */
template <int D>
__device__ __forceinline__ int element_of(int lane, int c, int e)
{
    return (c * lanes_per_row<D>() + lane) * 4 + e;
}

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

/* As load4_readonly but a plain coherent load: `state` may alias the snapshots being written. */
template <bool VECTOR>
__device__ __forceinline__ float4 load4_state(const char *p, long long nb0)
{
    if (VECTOR)
        return *reinterpret_cast<const float4 *>(p);
    return make_float4(*reinterpret_cast<const float *>(p), *reinterpret_cast<const float *>(p + nb0),
                       *reinterpret_cast<const float *>(p + 2 * nb0),
                       *reinterpret_cast<const float *>(p + 3 * nb0));
}

template <bool VECTOR>
__device__ __forceinline__ void store4(char *p, long long nb0, float4 x)
{
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

/* x <- x / sqrt(|x|^2 + 1e-6) over the row slice held by the group (the l2norm of fla and
 * Hugging Face, as include/gdn.h specifies). */
template <int LANES, int ELEMS>
__device__ __forceinline__ void l2_normalise(float (&x)[ELEMS])
{
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < ELEMS; i++)
        sum = __fmaf_rn(x[i], x[i], sum);
    sum = group_sum<LANES>(sum);
    const float denominator = __fsqrt_rn(__fadd_rn(sum, 1e-6f));
#pragma unroll
    for (int i = 0; i < ELEMS; i++)
        x[i] = __fdiv_rn(x[i], denominator);
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

/* Token t of sequence `outer` (new tokens: q, k, v, g, beta) or, with RING, position t of ring
 * slot `outer` (ring_k, ring_v, ring_g, ring_beta; no q: a ring token gives no output). Both
 * are [outer, t, head, D] views, read the same way. */
template <int D, int R, bool VECTOR, bool RING>
__device__ __forceinline__ void load_token(gdn_cuda_token<D, R> &in, const gdn_cuda_gdn_args &a,
                                           const gdn_cuda_place &at, long long outer, long long t)
{
    using C = gdn_cuda_config<D, R>;
    const gdn_cuda_view &kv = RING ? a.ring_k : a.k, &vv = RING ? a.ring_v : a.v;
    const gdn_cuda_view &gv = RING ? a.ring_g : a.g, &bv = RING ? a.ring_beta : a.beta;
    const char *q = a.q.data + outer * a.q.nb[3] + t * a.q.nb[2] + at.hk * a.q.nb[1];
    const char *k = kv.data + outer * kv.nb[3] + t * kv.nb[2] + at.hk * kv.nb[1];
#pragma unroll
    for (int c = 0; c < C::CHUNKS; c++) {
        const long long e0 = element_of<D>(at.lane, c, 0);
        if (!RING) {
            const float4 qc = load4_readonly<VECTOR>(q + e0 * a.q.nb[0], a.q.nb[0]);
            in.q[4 * c + 0] = qc.x, in.q[4 * c + 1] = qc.y, in.q[4 * c + 2] = qc.z, in.q[4 * c + 3] = qc.w;
        }
        const float4 kc = load4_readonly<VECTOR>(k + e0 * kv.nb[0], kv.nb[0]);
        in.k[4 * c + 0] = kc.x, in.k[4 * c + 1] = kc.y, in.k[4 * c + 2] = kc.z, in.k[4 * c + 3] = kc.w;
    }
    /* v[j], g and beta are the same address for every lane of a group: one broadcast load each. */
    const char *v = vv.data + outer * vv.nb[3] + t * vv.nb[2] + at.h * vv.nb[1];
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
        in.v[r] = __ldg(reinterpret_cast<const float *>(v + (long long)(at.row0 + r) * vv.nb[0]));
    in.g = __ldg(reinterpret_cast<const float *>(gv.data + outer * gv.nb[2] + t * gv.nb[1] + at.h * gv.nb[0]));
    in.beta = __ldg(reinterpret_cast<const float *>(bv.data + outer * bv.nb[2] + t * bv.nb[1] + at.h * bv.nb[0]));
}

/* The per-token update of this thread's rows; out[r] = o for row row0 + r (same in all lanes of
 * the group). The arithmetic order here is the exactness contract: change it only knowing that
 * results then change bit-wise (and stay consistent across T, B and both access paths).
 * OUTPUT = false (a folded ring token) leaves out the q half (its l2norm, row . q and out); the
 * state arithmetic is the same code. */
template <int D, int R, bool OUTPUT = true>
__device__ __forceinline__ void update_rows(float (&S)[R][gdn_cuda_config<D, R>::ELEMS],
                                            gdn_cuda_token<D, R> &in, int l2norm, float scale, float (&out)[R])
{
    using C = gdn_cuda_config<D, R>;
    if (l2norm) {
        if constexpr (OUTPUT)
            l2_normalise<C::LANES, C::ELEMS>(in.q);
        l2_normalise<C::LANES, C::ELEMS>(in.k);
    }
    const float decay = expf(in.g);

    /* sk = (exp(g) row) . k, with the decayed row kept. */
    float sk[C::ROWS];
#pragma unroll
    for (int r = 0; r < C::ROWS; r++) {
        float partial = 0.0f;
#pragma unroll
        for (int i = 0; i < C::ELEMS; i++) {
            S[r][i] = __fmul_rn(S[r][i], decay);
            partial = __fmaf_rn(S[r][i], in.k[i], partial);
        }
        sk[r] = partial;
    }
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
        sk[r] = group_sum<C::LANES>(sk[r]);

    /* row += d k with d = beta (v - sk); o = scale (row . q). */
    float sq[C::ROWS];
#pragma unroll
    for (int r = 0; r < C::ROWS; r++) {
        const float d = __fmul_rn(in.beta, __fsub_rn(in.v[r], sk[r]));
        float partial = 0.0f;
#pragma unroll
        for (int i = 0; i < C::ELEMS; i++) {
            S[r][i] = __fmaf_rn(d, in.k[i], S[r][i]);
            if constexpr (OUTPUT)
                partial = __fmaf_rn(S[r][i], in.q[i], partial);
        }
        sq[r] = partial;
    }
    if constexpr (OUTPUT) {
#pragma unroll
        for (int r = 0; r < C::ROWS; r++)
            out[r] = __fmul_rn(scale, group_sum<C::LANES>(sq[r]));
    }
}

/* This thread's rows of a state, to the view `to` at `base` (a pool slot's head, a snapshot). */
template <int D, int R, bool VECTOR>
__device__ __forceinline__ void store_rows(char *base, const gdn_cuda_view &to, const gdn_cuda_place &at,
                                           const float (&S)[R][gdn_cuda_config<D, R>::ELEMS])
{
    using C = gdn_cuda_config<D, R>;
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
#pragma unroll
        for (int c = 0; c < C::CHUNKS; c++) {
            const long long e0 = element_of<D>(at.lane, c, 0);
            store4<VECTOR>(base + (long long)(at.row0 + r) * to.nb[1] + e0 * to.nb[0], to.nb[0],
                           make_float4(S[r][4 * c + 0], S[r][4 * c + 1], S[r][4 * c + 2], S[r][4 * c + 3]));
        }
}

/* Replay: the raw inputs of the new token `in` (loaded, not yet normalised by update_rows) to
 * ring position `pos` of `slot`. Each value has one writer: v[row0 + r] the lane r that writes o
 * for the row, g and beta `head_writer` (lane 0 of the head's first warp), k `k_writer` (the
 * lanes of group 0 of the first warp of the first value head that reads q/k head hk). From
 * registers: copying from the inputs after the token loop instead measured slower (a dependent
 * load at the end of every warp's life). */
template <int D, int R, bool VECTOR>
__device__ __forceinline__ void append_ring(const gdn_cuda_gdn_args &a, const gdn_cuda_place &at,
                                            const gdn_cuda_token<D, R> &in, long long slot, long long pos,
                                            bool head_writer, bool k_writer)
{
    using C = gdn_cuda_config<D, R>;
    char *v = a.ring_v.data + slot * a.ring_v.nb[3] + pos * a.ring_v.nb[2] + at.h * a.ring_v.nb[1];
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
        if (at.lane == r)
            *reinterpret_cast<float *>(v + (long long)(at.row0 + r) * a.ring_v.nb[0]) = in.v[r];
    if (head_writer) {
        *reinterpret_cast<float *>(a.ring_g.data + slot * a.ring_g.nb[2] + pos * a.ring_g.nb[1] +
                                   at.h * a.ring_g.nb[0]) = in.g;
        *reinterpret_cast<float *>(a.ring_beta.data + slot * a.ring_beta.nb[2] + pos * a.ring_beta.nb[1] +
                                   at.h * a.ring_beta.nb[0]) = in.beta;
    }
    if (k_writer) {
        char *k = a.ring_k.data + slot * a.ring_k.nb[3] + pos * a.ring_k.nb[2] + at.hk * a.ring_k.nb[1];
#pragma unroll
        for (int c = 0; c < C::CHUNKS; c++) {
            const long long e0 = element_of<D>(at.lane, c, 0);
            store4<VECTOR>(k + e0 * a.ring_k.nb[0], a.ring_k.nb[0],
                           make_float4(in.k[4 * c + 0], in.k[4 * c + 1], in.k[4 * c + 2], in.k[4 * c + 3]));
        }
    }
}

template <int D, int R, bool VECTOR, bool REPLAY>
__global__ void __launch_bounds__(kWarpsPerBlock *kWarpSize)
gdn_cuda_gated_delta_net_kernel(const gdn_cuda_gdn_args a)
{
    using C = gdn_cuda_config<D, R>;
    const int lane = threadIdx.x % kWarpSize;
    /* 32-bit index math: the host checked that the warp count fits in an int. */
    const int warp = (int)(blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarpSize);
    const int head = warp / C::WARPS_PER_HEAD; /* b * Hv + h */
    if (head >= a.B * a.Hv)
        return; /* whole warps only (the last block may be partly empty): shuffles stay full-mask */
    const int warp_in_head = warp % C::WARPS_PER_HEAD;

    gdn_cuda_place at;
    at.b = head / a.Hv;
    at.h = head % a.Hv;
    at.hk = a.interleaved ? at.h / (a.Hv / a.Hk) : at.h % a.Hk;
    at.lane = lane % C::LANES;
    at.row0 = (warp_in_head * C::GROUPS + lane / C::LANES) * C::ROWS;

    /* Programmatic dependent launch (sm_90): this grid may start while the previous kernel on
     * the stream is still running, so that its launch and index math overlap that kernel's
     * tail. Nothing in memory is read or written before the wait, which returns once the
     * previous grid has completed and its writes are visible; the trigger lets the next kernel
     * start the same way. On older GPUs (or launches without the attribute) both are no-ops. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif

    /* The slot this sequence starts from: its own, or index[b] of the pool (one broadcast load
     * per warp, after the check kernel's verdict: on any bad index the whole grid writes nothing). */
    long long slot = at.b;
    if (a.index != nullptr) {
        if (a.index_check[0] >= 0)
            return;
        slot = *reinterpret_cast<const int *>(a.index + at.b * a.index_nb);
    }
    /* Replay: this sequence's fold entry, read beside the index so that its latency overlaps the
     * state loads. */
    int fold_start = 0, fold_count = 0, fold_commit = 0;
    if (REPLAY) {
        const char *fold = a.fold + at.b * a.fold_nb[1];
        fold_start = *reinterpret_cast<const int *>(fold);
        fold_count = *reinterpret_cast<const int *>(fold + a.fold_nb[0]);
        fold_commit = *reinterpret_cast<const int *>(fold + 2 * a.fold_nb[0]);
    }

    /* This thread's rows of the initial state, all loads in flight at once. */
    float S[C::ROWS][C::ELEMS];
    const char *state = a.state.data + slot * a.state.nb[3] + at.h * a.state.nb[2];
#pragma unroll
    for (int r = 0; r < C::ROWS; r++)
#pragma unroll
        for (int c = 0; c < C::CHUNKS; c++) {
            const long long e0 = element_of<D>(at.lane, c, 0);
            const float4 x = load4_state<VECTOR>(
                state + (long long)(at.row0 + r) * a.state.nb[1] + e0 * a.state.nb[0], a.state.nb[0]);
            S[r][4 * c + 0] = x.x, S[r][4 * c + 1] = x.y, S[r][4 * c + 2] = x.z, S[r][4 * c + 3] = x.w;
        }

    /* The first token's inputs, in flight with the state loads. */
    gdn_cuda_token<D, R> current;
    load_token<D, R, VECTOR, false>(current, a, at, at.b, 0);
    char *o = a.o.data + at.b * a.o.nb[3] + at.h * a.o.nb[1];
    char *states = a.states.data + at.b * a.states.nb[3] + at.h * a.states.nb[2];

    /* Replay: fold ring tokens start .. start+count-1 (mod L) into the registers, each through
     * update_rows like a new token (no output), then commit. The new tokens go to the ring from
     * position start + count on. */
    long long ring_pos = 0;
    bool head_writer = false, k_writer = false;
    if (REPLAY) {
        const int count = fold_count;
        long long pos = fold_start;
        if (count > 0) {
            gdn_cuda_token<D, R> ring;
            load_token<D, R, VECTOR, true>(ring, a, at, slot, pos);
#pragma unroll 1
            for (int n = 0; n < count; n++) {
                pos = pos + 1 == a.L ? 0 : pos + 1;
                gdn_cuda_token<D, R> ring_next;
                const bool more = n + 1 < count;
                if (more)
                    load_token<D, R, VECTOR, true>(ring_next, a, at, slot, pos);
                float unused[C::ROWS];
                update_rows<D, R, false>(S, ring, a.l2norm, a.scale, unused);
                if (more)
                    ring = ring_next;
            }
            if (fold_commit != 0)
                store_rows<D, R, VECTOR>(a.state.data + slot * a.state.nb[3] + at.h * a.state.nb[2], a.state, at, S);
        }
        ring_pos = pos;
        head_writer = warp_in_head == 0 && lane == 0;
        k_writer = warp_in_head == 0 && lane < C::LANES &&
                   (a.interleaved ? at.h % (a.Hv / a.Hk) == 0 : at.h < a.Hk);
    }

    for (long long t = 0; t < a.T; t++) {
        /* Prefetch the next token's inputs; they land while this token computes. */
        gdn_cuda_token<D, R> next;
        const bool has_next = t + 1 < a.T;
        if (has_next)
            load_token<D, R, VECTOR, false>(next, a, at, at.b, t + 1);
        if (REPLAY) { /* the raw inputs, before update_rows normalises k */
            append_ring<D, R, VECTOR>(a, at, current, slot, ring_pos, head_writer, k_writer);
            ring_pos = ring_pos + 1 == a.L ? 0 : ring_pos + 1;
        }

        float out[C::ROWS];
        update_rows<D, R>(S, current, a.l2norm, a.scale, out);

        /* o[b, t, h, row0 + r] from lane r of the group (all lanes hold the same value). */
#pragma unroll
        for (int r = 0; r < C::ROWS; r++)
            if (at.lane == r)
                *reinterpret_cast<float *>(o + t * a.o.nb[2] + (long long)(at.row0 + r) * a.o.nb[0]) = out[r];

        const long long s = a.T - 1 - t; /* snapshot index, newest first */
        if (!REPLAY && s < a.n_write)
            store_rows<D, R, VECTOR>(states + s * a.states.nb[4], a.states, at, S);
        if (has_next)
            current = next;
    }
}

/* One block: index_check <- {the first position b whose index is outside 0..S-1 (-1 if none),
 * that index, -1, -1}; when all are inside and the pool may overlap the snapshots, the first b
 * (then s, b') whose slot overlaps snapshot states[s][b'] without being exactly states[s][b]:
 * {b, index[b], s, b'}. Replay, when all indices are inside: the first b whose fold entry is out
 * of range: {b, start, kFoldBad, count}; else the first b (then b' < b) with index[b'] ==
 * index[b]: {b, index[b], kSlotShared, b'}. Runs before the main kernel on the same stream (as
 * get_rows' check does). The host reports in the same order as gdn_gated_delta_net_check_index. */
constexpr long long kSlotShared = -2, kFoldBad = -3;
constexpr int kCheckThreads = 256;

/* Byte range [lo, hi) of the D x D x Hv state at `base` with the view's strides nb[0..2]. */
__device__ void state_range(const char *base, const long long *nb, long long D, long long Hv,
                            unsigned long long *lo, unsigned long long *hi)
{
    *lo = (unsigned long long)base;
    *hi = *lo + (unsigned long long)((D - 1) * nb[0] + (D - 1) * nb[1] + (Hv - 1) * nb[2]) + sizeof(float);
}

/* Block-wide minimum of `value` (every thread gets it). */
__device__ long long block_min(long long value, long long *scratch)
{
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (int half = kCheckThreads / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half && scratch[threadIdx.x + half] < scratch[threadIdx.x])
            scratch[threadIdx.x] = scratch[threadIdx.x + half];
        __syncthreads();
    }
    const long long result = scratch[0];
    __syncthreads();
    return result;
}

__global__ void __launch_bounds__(kCheckThreads) gdn_cuda_index_check_kernel(const gdn_cuda_gdn_args a)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
    __shared__ long long scratch[kCheckThreads];
    long long bad = LLONG_MAX;
    for (long long b = threadIdx.x; b < a.B; b += blockDim.x) {
        const int slot = *reinterpret_cast<const int *>(a.index + b * a.index_nb);
        if ((slot < 0 || slot >= a.S) && b < bad)
            bad = b;
    }
    const long long first_bad = block_min(bad, scratch);
    /* Replay: the fold entries, then distinct slots (pair code b * B + b', b' < b). */
    long long first_fold = LLONG_MAX, first_shared = LLONG_MAX;
    if (first_bad == LLONG_MAX && a.fold != nullptr) {
        long long fold_bad = LLONG_MAX;
        for (long long b = threadIdx.x; b < a.B; b += blockDim.x) {
            const char *fold = a.fold + b * a.fold_nb[1];
            const int start = *reinterpret_cast<const int *>(fold);
            const int count = *reinterpret_cast<const int *>(fold + a.fold_nb[0]);
            if ((start < 0 || start >= a.L || count < 0 || count > a.L - a.T) && b < fold_bad)
                fold_bad = b;
        }
        first_fold = block_min(fold_bad, scratch);
        if (first_fold == LLONG_MAX) {
            long long shared = LLONG_MAX;
            for (long long p = threadIdx.x; p < (long long)a.B * a.B; p += blockDim.x) {
                const long long b = p / a.B, b2 = p % a.B;
                if (b2 < b && p < shared &&
                    *reinterpret_cast<const int *>(a.index + b * a.index_nb) ==
                        *reinterpret_cast<const int *>(a.index + b2 * a.index_nb))
                    shared = p;
            }
            first_shared = block_min(shared, scratch);
        }
    }
    /* The in-place rule, over (b, s, b') in that order: pair code (b * n_write + s) * B + b'. */
    long long first_overlap = LLONG_MAX;
    if (first_bad == LLONG_MAX && a.pool_check) {
        long long overlap = LLONG_MAX;
        const long long pairs = (long long)a.B * a.n_write * a.B;
        for (long long p = threadIdx.x; p < pairs; p += blockDim.x) {
            const long long b = p / (a.n_write * a.B), s = (p / a.B) % a.n_write, b2 = p % a.B;
            const int slot = *reinterpret_cast<const int *>(a.index + b * a.index_nb);
            const char *read = a.state.data + slot * a.state.nb[3];
            const char *snap = a.states.data + s * a.states.nb[4] + b2 * a.states.nb[3];
            unsigned long long lo, hi, slo, shi;
            state_range(read, a.state.nb, a.D, a.Hv, &lo, &hi);
            state_range(snap, a.states.nb, a.D, a.Hv, &slo, &shi);
            if (hi <= slo || shi <= lo)
                continue;
            const bool exact = b2 == b && snap == read && a.states.nb[0] == a.state.nb[0] &&
                               a.states.nb[1] == a.state.nb[1] && a.states.nb[2] == a.state.nb[2];
            if (!exact && p < overlap)
                overlap = p;
        }
        first_overlap = block_min(overlap, scratch);
    }
    if (threadIdx.x == 0) {
        if (first_bad != LLONG_MAX) {
            a.index_check[0] = first_bad;
            a.index_check[1] = *reinterpret_cast<const int *>(a.index + first_bad * a.index_nb);
            a.index_check[2] = -1;
            a.index_check[3] = -1;
        } else if (first_fold != LLONG_MAX) {
            const char *fold = a.fold + first_fold * a.fold_nb[1];
            a.index_check[0] = first_fold;
            a.index_check[1] = *reinterpret_cast<const int *>(fold);
            a.index_check[2] = kFoldBad;
            a.index_check[3] = *reinterpret_cast<const int *>(fold + a.fold_nb[0]);
        } else if (first_shared != LLONG_MAX) {
            a.index_check[0] = first_shared / a.B;
            a.index_check[1] = *reinterpret_cast<const int *>(a.index + (first_shared / a.B) * a.index_nb);
            a.index_check[2] = kSlotShared;
            a.index_check[3] = first_shared % a.B;
        } else if (first_overlap != LLONG_MAX) {
            const long long b = first_overlap / (a.n_write * a.B);
            a.index_check[0] = b;
            a.index_check[1] = *reinterpret_cast<const int *>(a.index + b * a.index_nb);
            a.index_check[2] = (first_overlap / a.B) % a.n_write;
            a.index_check[3] = first_overlap % a.B;
        } else {
            a.index_check[0] = -1;
            a.index_check[1] = 0;
            a.index_check[2] = -1;
            a.index_check[3] = -1;
        }
    }
}

gdn_cuda_view view_of(const gdn_tensor *t)
{
    gdn_cuda_view v;
    v.data = (char *)t->data;
    for (int i = 0; i < 5; i++)
        v.nb[i] = (long long)t->nb[i];
    return v;
}

/* 1 when every 4-float chunk of the view is one aligned 16-byte access: floats contiguous along
 * dim 0, data and the strides of every dimension that is stepped through 16-byte aligned. */
int is_vectorisable(const gdn_tensor *t, int n_dims)
{
    if (t->nb[0] != sizeof(float) || (uintptr_t)t->data % 16 != 0)
        return 0;
    for (int i = 1; i < n_dims; i++)
        if (t->ne[i] > 1 && t->nb[i] % 16 != 0)
            return 0;
    return 1;
}

/* Rows per thread. The arithmetic of a row does not depend on it (a row's lane slice and
 * reduction tree depend on D only), so it may follow the batch without changing a bit: few heads
 * (B*Hv small, latency-bound) get fewer rows per thread and more warps in flight; many heads get
 * the bandwidth shape (4 rows, 2 at D = 16 and 256) that keeps more bytes in flight per thread.
 * Measured at B=1, Hv=32, D=128 on an H100 (us per layer, 30-call CUDA graph, state in L2 /
 * from DRAM, decode and T=4 verify): 1 row 3.59/4.08 and 5.77/6.41; 2 rows 2.93/3.81 and
 * 5.33/6.97; 4 rows 3.12/4.13 and 6.65/8.39. Two rows is the default for thin grids. */
template <int D>
constexpr int wide_rows()
{
    return (D == 16 || D == 256) ? 2 : 4;
}

/* Below this many warps in the wide shape the grid is too thin to cover memory latency on a
 * large GPU (an H100 holds 132 x 64 warps); measured: B=1, Hv=32, D=128 is 1024 warps. */
constexpr long long kThinGridWarps = 4096;
#ifndef GDN_CUDA_THIN_ROWS
#define GDN_CUDA_THIN_ROWS 2
#endif
constexpr int kThinRows = GDN_CUDA_THIN_ROWS;

/* How a launch goes out: the stream, and whether programmatic dependent launch may be asked
 * for (compute capability 9.0 and newer). */
struct gdn_cuda_launch {
    cudaStream_t stream;
    bool dependent;
};

/* The index check: one block, launched like the main kernel (programmatic dependent launch
 * where allowed). */
gdn_status launch_index_check(const gdn_cuda_gdn_args &a, const gdn_cuda_launch &how)
{
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(1);
    config.blockDim = dim3(kCheckThreads);
    config.stream = how.stream;
    config.attrs = &attribute;
    config.numAttrs = how.dependent ? 1 : 0;
    return gdn_cuda_check(cudaLaunchKernelEx(&config, gdn_cuda_index_check_kernel, a),
                          "gated_delta_net index check kernel launch");
}

template <int D, int R, bool VECTOR, bool REPLAY>
gdn_status launch(const gdn_cuda_gdn_args &a, const gdn_cuda_launch &how)
{
    using C = gdn_cuda_config<D, R>;
    const long long warps = (long long)a.B * a.Hv * C::WARPS_PER_HEAD;
    const long long blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3((unsigned)blocks);
    config.blockDim = dim3(kWarpsPerBlock * kWarpSize);
    config.stream = how.stream;
    config.attrs = &attribute;
    config.numAttrs = how.dependent ? 1 : 0;
    return gdn_cuda_check(cudaLaunchKernelEx(&config, gdn_cuda_gated_delta_net_kernel<D, R, VECTOR, REPLAY>, a),
                          REPLAY ? "gated_delta_net_replay kernel launch" : "gated_delta_net kernel launch");
}

template <int D, bool REPLAY>
gdn_status launch_rows(const gdn_cuda_gdn_args &a, bool vector, const gdn_cuda_launch &how)
{
    constexpr int WIDE = wide_rows<D>(), THIN = kThinRows < WIDE ? kThinRows : WIDE;
    const bool thin = (long long)a.B * a.Hv * gdn_cuda_config<D, WIDE>::WARPS_PER_HEAD < kThinGridWarps;
    if (thin)
        return vector ? launch<D, THIN, true, REPLAY>(a, how) : launch<D, THIN, false, REPLAY>(a, how);
    return vector ? launch<D, WIDE, true, REPLAY>(a, how) : launch<D, WIDE, false, REPLAY>(a, how);
}

template <int D>
gdn_status launch_for(const gdn_cuda_gdn_args &a, bool vector, const gdn_cuda_launch &how)
{
    return a.fold != nullptr ? launch_rows<D, true>(a, vector, how) : launch_rows<D, false>(a, vector, how);
}

} // namespace

gdn_status gdn_cuda_gated_delta_net_probe(void)
{
    cudaFuncAttributes attributes;
    return gdn_cuda_check(cudaFuncGetAttributes(&attributes, gdn_cuda_gated_delta_net_kernel<128, 4, true, false>),
                          "cudaFuncGetAttributes (is there a kernel image for this device?)");
}

gdn_status gdn_cuda_gated_delta_net(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                    const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape)
{
    const gdn_cuda_context *context = (const gdn_cuda_context *)backend->context;
    gdn_status status = gdn_cuda_use_device(context);
    if (status != GDN_OK)
        return status;

    /* The kernel indexes warps, heads and rows with 32-bit ints; warps <= B*Hv*D/2, so
     * B*Hv*D <= INT_MAX suffices (at D=128 that is 16M heads, 1 TiB of state). */
    if (shape->B > INT_MAX / shape->D || shape->Hv > INT_MAX / (shape->B * shape->D))
        return gdn_fail(GDN_ERROR_UNSUPPORTED,
                        "gated_delta_net: B*Hv*D = %lld*%lld*%lld exceeds the CUDA kernel's 32-bit "
                        "indexing (at most %d)", (long long)shape->B, (long long)shape->Hv,
                        (long long)shape->D, INT_MAX);

    gdn_cuda_gdn_args a;
    a.q = view_of(&args->q);
    a.k = view_of(&args->k);
    a.v = view_of(&args->v);
    a.g = view_of(&args->g);
    a.beta = view_of(&args->beta);
    a.state = view_of(&args->state);
    a.o = view_of(&args->o);
    a.states = view_of(&args->states);
    a.B = (int)shape->B;
    a.T = shape->T;
    a.Hk = (int)shape->Hk;
    a.Hv = (int)shape->Hv;
    a.n_write = shape->n_write;
    a.interleaved = params->broadcast == GDN_BROADCAST_INTERLEAVED;
    a.l2norm = params->l2norm;
    a.scale = shape->scale;
    a.index = shape->indexed ? (const char *)args->state_index.data : nullptr;
    a.index_nb = shape->indexed ? (long long)args->state_index.nb[0] : 0;
    a.S = shape->S;
    a.D = (int)shape->D;
    a.pool_check = shape->pool_overlaps_states;
    a.index_check = context->index_check;
    const gdn_gated_delta_net_replay_args *replay = shape->replay;
    a.fold = nullptr;
    a.fold_nb[0] = a.fold_nb[1] = 0;
    a.L = shape->L;
    if (replay != nullptr) {
        a.ring_k = view_of(&replay->ring_k);
        a.ring_v = view_of(&replay->ring_v);
        a.ring_g = view_of(&replay->ring_g);
        a.ring_beta = view_of(&replay->ring_beta);
        a.fold = (const char *)replay->fold.data;
        a.fold_nb[0] = (long long)replay->fold.nb[0];
        a.fold_nb[1] = (long long)replay->fold.nb[1];
    } else {
        a.ring_k = a.ring_v = a.ring_g = a.ring_beta = view_of(&args->states); /* unused */
    }

    /* One path for the whole call; both paths share the arithmetic, so the choice never changes
     * results. v, g, beta and o are read/written one float per row and need no check. Replay
     * writes no snapshots and reads and writes k chunks in ring_k. */
    const bool vector = is_vectorisable(&args->q, 4) && is_vectorisable(&args->k, 4) &&
                        is_vectorisable(&args->state, 4) &&
                        (replay != nullptr ? is_vectorisable(&replay->ring_k, 4) : is_vectorisable(&args->states, 5));
    gdn_cuda_launch how;
    how.stream = context->stream;
    how.dependent = context->cc_major >= 9 && context->dependent_launch;
    if (shape->indexed && (status = launch_index_check(a, how)) != GDN_OK)
        return status;
    switch (shape->D) {
    case 16: status = launch_for<16>(a, vector, how); break;
    case 32: status = launch_for<32>(a, vector, how); break;
    case 64: status = launch_for<64>(a, vector, how); break;
    case 128: status = launch_for<128>(a, vector, how); break;
    case 256: status = launch_for<256>(a, vector, how); break;
    default:
        return gdn_fail(GDN_ERROR_UNSUPPORTED, "gated_delta_net: D=%lld has no CUDA kernel",
                        (long long)shape->D);
    }
    if (status != GDN_OK || !shape->indexed)
        return status;
    /* Report a bad index, as get_rows does: a synchronous read-back of the check (a stream sync
     * per indexed call). While the stream is being captured a sync is not allowed: a bad index
     * then still writes nothing, but is not reported. */
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    status = gdn_cuda_check(cudaStreamIsCapturing(context->stream, &capture), "cudaStreamIsCapturing");
    if (status != GDN_OK || capture != cudaStreamCaptureStatusNone)
        return status;
    int64_t check[4] = {-1, 0, -1, -1};
    status = gdn_cuda_check(cudaMemcpyAsync(check, context->index_check, sizeof check, cudaMemcpyDeviceToHost,
                                            context->stream), "gated_delta_net index check read-back");
    if (status == GDN_OK)
        status = gdn_cuda_check(cudaStreamSynchronize(context->stream), "gated_delta_net cudaStreamSynchronize");
    if (status != GDN_OK)
        return status;
    if (check[0] >= 0 && check[2] == kFoldBad)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net_replay: fold[%lld] = {start %lld, count %lld}: "
                        "expected 0 <= start < L=%lld, count >= 0 and count + T <= L (T=%lld: the new tokens must "
                        "not overwrite the tokens being folded)", (long long)check[0], (long long)check[1],
                        (long long)check[3], (long long)shape->L, (long long)shape->T);
    if (check[0] >= 0 && check[2] == kSlotShared)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net_replay: state_index[%lld]=%lld is also the slot of "
                        "sequence %lld (each sequence must own its slot: the op writes it)", (long long)check[0],
                        (long long)check[1], (long long)check[3]);
    if (check[0] >= 0 && check[2] >= 0)
        return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net: state_index[%lld]=%lld: the pool slot read overlaps the "
                        "snapshot states[%lld][%lld] (a sequence may read only a slot disjoint from every snapshot, "
                        "or exactly one of its own)", (long long)check[0], (long long)check[1], (long long)check[2],
                        (long long)check[3]);
    if (check[0] >= 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: state_index[%lld]=%lld is outside 0..%lld "
                        "(slots of the state pool)", replay != nullptr ? "gated_delta_net_replay" : "gated_delta_net",
                        (long long)check[0], (long long)check[1], (long long)(shape->S - 1));
    return GDN_OK;
}
