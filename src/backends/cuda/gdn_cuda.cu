/* gdn_cuda.cu: the Gated DeltaNet op on CUDA: one kernel launch per call, state in registers.
 *
 * Mapping. The state of head (b, h) is D rows of D floats ([Dv][Dk], Dk contiguous) and rows are
 * independent (per token: row *= exp(g); sk = row.k; d = beta (v[j] - sk); row += d k;
 * o[j] = scale row.q). A group of LANES consecutive lanes holds one row (8 for D = 32 .. 128;
 * D/4 below, 16 at D = 256): lane l holds the float4 chunks c*LANES + l (c < CHUNKS =
 * D / (4 LANES)), so each warp-wide load or store of a chunk touches LANES*16 contiguous bytes
 * of each of the warp's rows. Each thread holds ROWS rows (ROWS*ELEMS floats of state in
 * registers, all loads issued at once for memory-level parallelism); a warp holds 32/LANES
 * groups, so ROWS_PER_WARP = (32/LANES)*ROWS consecutive rows of one head. ROWS is 1 when the
 * grid would otherwise be thin (B=1: latency-bound, so more warps in flight win), else the wide
 * value of the table below (64 floats per thread); a row's arithmetic is the same either way.
 * Warps are numbered head-major ((b*Hv + h) * WARPS_PER_HEAD + warp_in_head), 4 warps a block,
 * so consecutive blocks stream consecutive state memory. Dot products: each lane sums its
 * elements in a fixed order with fma, then a butterfly of __shfl_xor_sync over the LANES lanes
 * (offsets LANES/2 .. 1) leaves the same bits in every lane of the group.
 *
 *     D     LANES ELEMS ROWS (wide) rows/warp warps/head (wide)
 *     16      4     4     2      16         1
 *     32      8     4     8      32         1
 *     64      8     8     8      32         2
 *     128     8    16     4      16         8
 *     256    16    16     4       8        32
 *
 * Why 8 lanes a row, not 32: at T > 1 (verify, replay folds) the kernel is bound by instructions,
 * not bytes, and per token a thread pays ELEMS*ROWS*4 floating-point operations for its rows but
 * log2(LANES) shuffles and adds per row and per dot product, and the norms of q and k per
 * element of its slice. With 32 lanes of 4 floats the shuffles, norms and index arithmetic
 * outweighed the arithmetic on the state; with 8 lanes of 16 floats and 4 rows, and pointers
 * computed once per kernel, the token loop is 642 SASS instructions per warp, 359 of them
 * floating-point (256 on the state). B=64 T=4 in place went from 177 to 117 us (docs/PERF.md).
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
 * (`gdn bench`, 30-call CUDA graph, state from DRAM): 93 us, 98% of the device-to-device copy
 * bandwidth; B=64 T=4 K=4: 95%; B=1 T=1: 3.3 us per call (docs/PERF.md has every entry).
 *
 * Exactness. Every arithmetic step is an explicitly rounded intrinsic (__fmul_rn, __fmaf_rn,
 * __fadd_rn, __fsub_rn, __frsqrt_rn), which the compiler may neither contract nor
 * reorder, plus expf (CUDA's libm expf, <= 2 ulp, one fixed instruction sequence; never the
 * __expf intrinsic; the library is built without fast-math). The per-row order is the same code
 * for every token, every launch and every B: a row's lane slice and reduction tree depend on D
 * only (rows per thread follow B, see wide_rows), and the state is carried from token to token as the
 * same fp32 values it would have in memory. So T tokens in one call equal T calls of one token,
 * bit for bit, and a sequence's results do not depend on B. The vector path (16-byte accesses)
 * and the generic path (4 scalar accesses with any byte strides) only load and store differently;
 * the arithmetic is shared code.
 *
 * BF16 state storage (template BF16): the state is widened exactly on load (8-byte accesses per
 * 4 elements on the vector path), every row rounded to BF16 after every token, folded ones too
 * (round_rows: one cvt.rn.bf16x2.f32 per two floats), and stored as the upper halves, which are
 * then exact. Rounding every token, not only stored ones, keeps T tokens in one call equal to T
 * calls. Decode moves half the bytes: B=64 T=1 48.7 us against 93.0 for F32 (docs/PERF.md).
 *
 * Aliasing: `state` may be exactly the view states[s]. Each thread loads all its rows before the
 * token loop and later writes only those rows, so the in-place update is safe; for the same
 * reason state loads are plain (coherent) loads, never ld.global.nc, and no pointer is
 * __restrict__. The other inputs never overlap an output (validated), so they use __ldg.
 *
 * Pool index (optional): sequence b reads its initial state from pool slot index[b]. The index
 * is checked first, by every block of this kernel itself for small B (up to
 * GDN_CUDA_CHECK_IN_KERNEL_MAX_B sequences: no extra launch) or else by a one-block check kernel
 * whose verdict each warp loads; then each warp loads index[b] (a broadcast load) before its
 * state loads, and nothing else changes: a row's arithmetic is the same. The pool may overlap
 * `states` (include/gdn.h): the check also verifies that each slot read is disjoint from every
 * snapshot or exactly one of its own sequence's, in which case each thread loads its rows before
 * the token loop and writes only those rows, as in the aliasing case above.
 *
 * Replay (gdn_gated_delta_net_replay): the same kernel with REPLAY = true. After the state loads,
 * each thread folds the ring tokens fold[b] names into its registers with fold_rows: each ring
 * token holds k as given and the coefficients (a row's d = delta nk) and decay exp(g) its own
 * update computed when it was new, so folding is the write of that update again (row = decay
 * row + d k: two operations per element, no dot product, no shuffle, no norm of k, no
 * exponential) and gives the same floats. It stores the rows back to the pool slot when fold[b]
 * says commit, then runs the new tokens as always, with no snapshots; after each new token's
 * update it appends k, the coefficients and the decay to the ring (each value by one thread: a
 * row's coefficient by the lane that writes o for it, the decay by lane 0 of the head's first
 * warp, k by group 0 of the first warp of the first value head of its q/k head). The check
 * kernel also checks the fold entries and that no two sequences share a slot. On the vector path
 * the replay kernel stages its tokens in shared memory a few ahead (see STAGE in the kernel; the
 * thin shape only with T > 1), and where 4 blocks per SM fit its grid in one wave and 3 do not
 * it runs that form (launch_rows). Measured times: docs/PERF.md. */
#include "gdn_cuda_device.cuh"

namespace {

/* Rows per thread. The arithmetic of a row does not depend on it (a row's lane slice and
 * reduction tree depend on D only), so it may follow the batch without changing a bit: few heads
 * (B*Hv small, latency-bound) get one row per thread and more warps in flight; many heads get
 * the wide shape, 64 state floats per thread (at most LANES rows: lane r writes o for row r),
 * which keeps many bytes in flight per thread for bandwidth and gives the token loop the most
 * arithmetic per shuffle. */
template <int D>
__host__ __device__ constexpr int wide_rows()
{
    constexpr int lanes = lanes_per_row<D>(), elems = D / lanes, groups = kWarpSize / lanes;
    constexpr int by_registers = kWideFloats / elems > 0 ? kWideFloats / elems : 1;
    constexpr int by_lanes = lanes < by_registers ? lanes : by_registers;
    return D / groups < by_lanes ? D / groups : by_lanes;
}

/* EARLY: the state_ready form (state loads before the wait). A template flag, not a run-time
 * branch: with a branch (and even with the flag but the other statements reordered) the compiler
 * allocated the other form's registers differently and B >= 8 lost 3-7%; the EARLY = false form
 * keeps the statement order it was tuned with. */
template <int D, int R, bool VECTOR, bool REPLAY, bool BF16, bool EARLY, int MIN_BLOCKS, bool STAGE_THIN>
__global__ void __launch_bounds__(kWarpsPerBlock *kWarpSize, MIN_BLOCKS)
gdn_cuda_gated_delta_net_kernel(const gdn_cuda_gdn_args a)
{
    using C = gdn_cuda_config<D, R>;
    /* State stores evict-first (store_rows) in the latency-bound shapes: thin, and replay's
     * one-wave form. */
    constexpr bool STREAM = R < wide_rows<D>() || (REPLAY && MIN_BLOCKS == kOneWaveBlocksPerSM);
    const int lane = threadIdx.x % kWarpSize;
    /* 32-bit index math: the host checked that the warp count fits in an int. */
    const int warp = (int)(blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarpSize);
    const int head = warp / C::WARPS_PER_HEAD; /* b * Hv + h */
    const int warp_in_head = warp % C::WARPS_PER_HEAD;

    gdn_cuda_place at;
    at.b = head / a.Hv;
    at.h = head % a.Hv;
    at.hk = a.interleaved ? at.h / (a.Hv / a.Hk) : at.h % a.Hk;
    at.lane = lane % C::LANES;
    at.row0 = (warp_in_head * C::GROUPS + lane / C::LANES) * C::ROWS;

    /* Programmatic dependent launch (sm_90): this grid may start while the previous kernel on
     * the stream is still running, so that its launch and index math overlap that kernel's
     * tail. The wait returns once the previous grid has completed and its writes are visible;
     * the trigger lets the next kernel start the same way (so every kernel before the previous
     * one has completed when this grid starts). Nothing is read before the wait, except with
     * state_ready (the caller's promise that the previous kernel writes neither the state nor
     * its index, nor replay's fold array and rings): then the state rows are loaded first, so
     * that their DRAM latency overlaps the previous kernel, and in some replay forms the fold
     * entry, the first ring tokens to fold and the index verdict too (FOLD_BEFORE_WAIT,
     * VERDICT_EARLY below); a slot or fold entry out of range is not used to read (the index
     * verdict then stops the grid after the wait). On older GPUs (or launches without the
     * attribute) both are no-ops. */
    float S[C::ROWS][C::ELEMS];
    long long slot; /* the slot this sequence starts from: its own, or index[b] of the pool */
    char *state;
    int fold_start = 0, fold_count = 0, fold_commit = 0; /* replay: this sequence's fold entry */

    /* Replay on the vector path stages every token's inputs in shared memory ahead of use
     * (gdn_cuda_stage): the ring tokens being folded, then the new tokens, item n in buffer
     * n % NBUF of the warp's. A fold is too short to cover one copy's latency, hence several in
     * flight. Each row writer lane stores its own row's o and coefficient (one store, not one
     * predicated store per row). Measured 10% faster for replay T = 4 at B >= 16; the same
     * staging made the snapshot form 5-8% slower at T = 4 (docs/PERF.md), so that form keeps
     * its direct loads below. The thin shape stages only with T > 1 (STAGE_THIN, its own
     * kernel): at B = 1 that measured 8% faster at T = 4 and 8% slower at T = 1 (docs/PERF.md,
     * "thin staged replay"); the wide shapes of small D, whose tokens fit registers (PREFETCH),
     * keep their direct loads. */
    using SL = gdn_cuda_stage<D, R>;
    constexpr bool STAGE = REPLAY && VECTOR && (!C::PREFETCH || STAGE_THIN);
    /* Buffers per warp: tokens are staged NBUF - 1 ahead. The one-wave form (4 blocks per SM,
     * registers spilled) measured 3% slower with four buffers than with two (docs/PERF.md). */
    constexpr int NBUF = MIN_BLOCKS == kOneWaveBlocksPerSM ? 2 : kStageBuffers;
    __shared__ __align__(16) float stage_all[STAGE ? kWarpsPerBlock * NBUF * SL::FLOATS : 4];
    /* With state_ready, the staged forms that measured faster so (docs/PERF.md, "replay's first
     * ring tokens before the wait") read the fold entry and stage the first ring tokens before
     * the wait: the thin shape (B = 1, T > 1) and the F32 one-wave form (B = 7, 8). Not the
     * wide shape at 3 blocks per SM (B = 2 .. 6: 4% faster at B = 2, 3 and 6 with T = 4, but 3%
     * slower at B = 4, 10% at T = 1), the BF16 one-wave form (T = 1: 2% slower), nor without
     * staging (T = 1 at B = 1: 3% slower). */
    constexpr bool FOLD_BEFORE_WAIT =
        EARLY && STAGE && (R < wide_rows<D>() || (MIN_BLOCKS == kOneWaveBlocksPerSM && !BF16));
    int staged = 0; /* items staged before the wait: ring tokens only (the new ones may be the
                     * previous kernel's output) */
    __shared__ long long scratch[2 * kWarpsPerBlock]; /* the index verdict's block_first: a pair per warp */
    /* With state_ready the previous kernel writes neither the index nor the fold entries, so the
     * verdict on them may be reached before the wait too (unless it also reads the snapshot index,
     * outside that promise); it is acted on after the wait (a block that returned before it would
     * let the next kernel start before the previous one ends). Measured in replay's thin staged
     * form (B = 1, T > 1: T=4 5.64 -> 4.94 us) and its one-wave forms (B = 7, 8: T=4 18.7 ->
     * 17.8, T=1 15.4 -> 14.5); not taken where it measured slower: the thin form at T = 1
     * (3.54 -> 3.73) and the 3-blocks-per-SM wide form (B = 2 8% faster, but B = 4 T=1 4% slower,
     * the pattern of the early staging in that form, docs/PERF.md). */
    constexpr bool VERDICT_EARLY = EARLY && REPLAY && (STAGE_THIN || MIN_BLOCKS == kOneWaveBlocksPerSM);
    bool verdict_early = false;
    gdn_cuda_first early_first;

    if constexpr (EARLY) { /* the other form keeps the statement order it was tuned with */
        slot = at.b;
        state = nullptr;
        if (head < a.B * a.Hv) { /* whole warps only (the last block may be partly empty) */
            if (a.index != nullptr)
                slot = *reinterpret_cast<const int *>(a.index + at.b * a.index_nb);
            const bool slot_ok = slot >= 0 && slot < a.S;
            if (slot_ok) {
                state = thread_rows(a.state.data + slot * a.state.nb[3] + at.h * a.state.nb[2], a.state, at);
                load_rows<D, R, VECTOR, BF16>(S, state, a.state);
            }
            if (FOLD_BEFORE_WAIT) {
                const char *fold = a.fold + at.b * a.fold_nb[1];
                fold_start = *reinterpret_cast<const int *>(fold);
                fold_count = *reinterpret_cast<const int *>(fold + a.fold_nb[0]);
                fold_commit = *reinterpret_cast<const int *>(fold + 2 * a.fold_nb[0]);
            }
            if (FOLD_BEFORE_WAIT && slot_ok && fold_start >= 0 && fold_start < a.L && fold_count >= 0 &&
                fold_count <= a.L - a.T) {
                float *stage = stage_all + (threadIdx.x / kWarpSize) * NBUF * SL::FLOATS;
                const int group_row = (lane / C::LANES) * C::ROWS;
                const gdn_cuda_token_ptrs ring_at = token_ptrs<true>(a, at, slot);
                long long pos = fold_start;
#pragma unroll
                for (int n = 0; n < NBUF - 1; n++)
                    if (n < fold_count) {
                        stage_token<D, R, true>(stage + n * SL::FLOATS, a, ring_at, pos, lane, at.lane, group_row);
                        cp_async_commit();
                        pos = pos + 1 == a.L ? 0 : pos + 1;
                        staged = n + 1;
                    }
            }
        }
        if (VERDICT_EARLY && a.check_in_kernel && a.index != nullptr && a.states_index == nullptr) {
            early_first = index_first<kWarpsPerBlock * kWarpSize>(a, scratch);
            verdict_early = true;
        }
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif

    /* The first token's inputs, in flight with the state loads; in the wide replay shape they
     * would stay live through the fold (registers), so there the token loop loads them. */
    constexpr bool LOAD_FIRST_EARLY = C::PREFETCH || !REPLAY;
    /* The recurrent op's state_ready form (latency-bound: one wave of blocks) issues the first
     * token's loads right after the wait, ahead of the index verdict's branches, loads and
     * barriers: decode B = 1, 2 4% faster (docs/PERF.md). Not in the 4-blocks-per-SM forms (128
     * registers), where the token held across the verdict spilled (BF16 decode: 20 -> 164
     * bytes), nor in replay (T = 1 at B = 1: 4% slower). */
    constexpr bool TOKEN_BEFORE_VERDICT = EARLY && !REPLAY && MIN_BLOCKS == kMinBlocksPerSM;
    gdn_cuda_token_ptrs tokens;   /* new tokens: at token t in the token loop */
    gdn_cuda_token<D, R> current; /* the token being computed (direct loads) */
    if (TOKEN_BEFORE_VERDICT && head < a.B * a.Hv) {
        tokens = token_ptrs<false>(a, at, at.b);
        load_token<D, R, VECTOR, false>(current, a, tokens, 0);
    }

    /* The index verdict: the check kernel's, or (small B: one launch fewer) each block's own,
     * computed by all its threads before any returns; block 0 reports it. On any bad value the
     * whole grid writes nothing (and no copy staged before the wait outlives the block). */
    if (a.index != nullptr || a.states_index != nullptr) {
        if (a.check_in_kernel) {
            const bool ok = verdict_early ? report_verdict(a, early_first, blockIdx.x == 0)
                                          : index_verdict<kWarpsPerBlock * kWarpSize>(a, scratch, blockIdx.x == 0);
            if (!ok) {
                if constexpr (FOLD_BEFORE_WAIT)
                    cp_async_wait<0>();
                return;
            }
        } else if (a.index_check[0] >= 0) {
            if constexpr (FOLD_BEFORE_WAIT)
                cp_async_wait<0>();
            return;
        }
    }
    if (head >= a.B * a.Hv)
        return; /* whole warps only: shuffles stay full-mask */

    /* Without state_ready, the slot (one broadcast load per warp) and the state now. */
    if constexpr (!EARLY) {
        slot = at.b;
        if (a.index != nullptr)
            slot = *reinterpret_cast<const int *>(a.index + at.b * a.index_nb);
    }
    /* Replay: this sequence's fold entry, read beside the index so that its latency overlaps the
     * state loads. */
    if (!FOLD_BEFORE_WAIT && REPLAY) {
        const char *fold = a.fold + at.b * a.fold_nb[1];
        fold_start = *reinterpret_cast<const int *>(fold);
        fold_count = *reinterpret_cast<const int *>(fold + a.fold_nb[0]);
        fold_commit = *reinterpret_cast<const int *>(fold + 2 * a.fold_nb[0]);
    }

    /* This thread's rows of the initial state, all loads in flight at once. */
    if constexpr (!EARLY) {
        state = thread_rows(a.state.data + slot * a.state.nb[3] + at.h * a.state.nb[2], a.state, at);
        load_rows<D, R, VECTOR, BF16>(S, state, a.state);
    }

    if constexpr (STAGE) {
        float *stage = stage_all + (threadIdx.x / kWarpSize) * NBUF * SL::FLOATS;
        const int group_row = (lane / C::LANES) * C::ROWS; /* the thread's first row in the warp's */
        tokens = token_ptrs<false>(a, at, at.b); /* the next new token to stage */
        const gdn_cuda_token_ptrs ring_at = token_ptrs<true>(a, at, slot);
        const int count = fold_count;
        long long ring_next = fold_start + staged; /* the next ring position to stage */
        if (FOLD_BEFORE_WAIT && ring_next >= a.L)
            ring_next -= a.L;
        auto stage_new = [&](float *buf) {
            stage_token<D, R, false>(buf, a, tokens, 0, lane, at.lane, group_row);
            advance_tokens(tokens, a);
        };
        /* Item n (n < items) into buffer n % NBUF, then one commit (empty past the last item, so
         * that group n is always item n). */
        const long long items = count + a.T;
        auto stage_item = [&](long long n) {
            float *buf = stage + (n & (NBUF - 1)) * SL::FLOATS;
            if (n < count) {
                stage_token<D, R, true>(buf, a, ring_at, ring_next, lane, at.lane, group_row);
                ring_next = ring_next + 1 == a.L ? 0 : ring_next + 1;
            } else if (n < items) {
                stage_new(buf);
            }
            cp_async_commit();
        };
#pragma unroll
        for (int n = 0; n < NBUF - 1; n++)
            if (n >= staged)
                stage_item(n);
#pragma unroll 1
        for (int n = 0; n < count; n++) {
            __syncwarp(); /* every lane has read the buffer about to be refilled (item n - 1's) */
            stage_item(n + NBUF - 1);
            cp_async_wait<NBUF - 1>();
            __syncwarp(); /* every lane's copies of item n have landed */
            gdn_cuda_token<D, R> ring;
            read_staged<D, R, true>(ring, stage + (n & (NBUF - 1)) * SL::FLOATS, at.lane, group_row);
            fold_rows<D, R, BF16>(S, ring);
        }
        if (count > 0 && fold_commit != 0)
            store_rows<D, R, VECTOR, BF16, STREAM>(state, a.state, S);
        long long ring_pos = fold_start + count; /* where the new tokens go: count + T <= L */
        if (ring_pos >= a.L)
            ring_pos -= a.L;
        const bool head_writer = warp_in_head == 0 && lane == 0;
        const bool k_writer = warp_in_head == 0 && lane < C::LANES &&
                              (a.interleaved ? at.h % (a.Hv / a.Hk) == 0 : at.h < a.Hk);
        /* Lane r < ROWS of a group writes o and the coefficient of row row0 + r (update_rows
         * leaves them there): one store each through a pointer of its own, walked by the token
         * stride. */
        const bool row_writer = at.lane < C::ROWS;
        char *o = a.o.data + at.b * a.o.nb[3] + at.h * a.o.nb[1] + (long long)(at.row0 + at.lane) * a.o.nb[0];
#pragma unroll 1
        for (long long t = 0; t < a.T; t++) {
            const long long n = count + t;
            __syncwarp();
            if (t + NBUF - 1 < a.T) /* item n + NBUF - 1 is a new token */
                stage_new(stage + ((n + NBUF - 1) & (NBUF - 1)) * SL::FLOATS);
            cp_async_commit();
            cp_async_wait<NBUF - 1>();
            __syncwarp();
            gdn_cuda_token<D, R> token;
            read_staged<D, R, false>(token, stage + (n & (NBUF - 1)) * SL::FLOATS, at.lane, group_row);
            float out[C::ROWS], coef[C::ROWS], decay;
            update_rows<D, R, BF16>(S, token, a.l2norm, a.scale, out, coef, decay);
            float my_out = out[0], my_coef = coef[0];
#pragma unroll
            for (int r = 1; r < C::ROWS; r++) {
                my_out = at.lane == r ? out[r] : my_out;
                my_coef = at.lane == r ? coef[r] : my_coef;
            }
            append_ring_row<D, R, VECTOR>(a, at, ring_at, token, my_coef, decay, row_writer, ring_pos,
                                          head_writer, k_writer);
            ring_pos = ring_pos + 1 == a.L ? 0 : ring_pos + 1;
            if (row_writer)
                *reinterpret_cast<float *>(o) = my_out;
            o += a.o.nb[2];
        }
        return;
    }

    /* The first token's inputs, in flight with the state loads (or loaded before the verdict). */
    if constexpr (!TOKEN_BEFORE_VERDICT) {
        tokens = token_ptrs<false>(a, at, at.b);
        if (LOAD_FIRST_EARLY)
            load_token<D, R, VECTOR, false>(current, a, tokens, 0);
        else
            load_token<D, R, VECTOR, false, true>(current, a, tokens, 0);
    }
    char *o = a.o.data + at.b * a.o.nb[3] + at.h * a.o.nb[1] + (long long)at.row0 * a.o.nb[0];
    /* The snapshot slot it writes: its own, or states_index[b]. */
    const long long to = a.states_index != nullptr ? index_at(a.states_index, a.states_index_nb, at.b) : at.b;
    char *states = thread_rows(a.states.data + to * a.states.nb[3] + at.h * a.states.nb[2], a.states, at);

    /* Replay: fold ring tokens start .. start+count-1 (mod L) into the registers (fold_rows: the
     * write of each token's update again), then commit. The new tokens go to the ring from
     * position start + count on. */
    gdn_cuda_token_ptrs ring_at = tokens; /* replay: the rings of the slot */
    long long ring_pos = 0;
    bool head_writer = false, k_writer = false;
    if (REPLAY) {
        ring_at = token_ptrs<true>(a, at, slot);
        const int count = fold_count;
        long long pos = fold_start;
        if (count > 0) {
            gdn_cuda_token<D, R> ring;
            load_token<D, R, VECTOR, true>(ring, a, ring_at, pos);
#pragma unroll 1
            for (int n = 0; n < count; n++) {
                gdn_cuda_token<D, R> ring_next;
                const bool more = n + 1 < count;
                if (!C::PREFETCH && n > 0)
                    load_token<D, R, VECTOR, true>(ring, a, ring_at, pos);
                pos = pos + 1 == a.L ? 0 : pos + 1;
                if (C::PREFETCH && more)
                    load_token<D, R, VECTOR, true>(ring_next, a, ring_at, pos);
                if (!C::PREFETCH && more)
                    load_token<D, R, VECTOR, true, true>(ring_next, a, ring_at, pos);
                fold_rows<D, R, BF16>(S, ring);
                if (C::PREFETCH && more)
                    ring = ring_next;
            }
            if (fold_commit != 0)
                store_rows<D, R, VECTOR, BF16, STREAM>(state, a.state, S);
        }
        ring_pos = pos;
        head_writer = warp_in_head == 0 && lane == 0;
        k_writer = warp_in_head == 0 && lane < C::LANES &&
                   (a.interleaved ? at.h % (a.Hv / a.Hk) == 0 : at.h < a.Hk);
    }

    for (long long t = 0; t < a.T; t++) {
        /* Prefetch the next token's inputs; they land while this token computes. The wide shape
         * has no registers for a second token (see PREFETCH): it loads the token at the top and
         * only hints the next one into L1. */
        gdn_cuda_token<D, R> next;
        const bool has_next = t + 1 < a.T;
        if (!C::PREFETCH && (t > 0 || !LOAD_FIRST_EARLY))
            load_token<D, R, VECTOR, false>(current, a, tokens, 0);
        if (has_next)
            C::PREFETCH ? load_token<D, R, VECTOR, false>(next, a, tokens, 1)
                        : load_token<D, R, VECTOR, false, true>(next, a, tokens, 1);
        float out[C::ROWS], coef[C::ROWS], decay;
        update_rows<D, R, BF16>(S, current, a.l2norm, a.scale, out, coef, decay);
        if (REPLAY) { /* k as loaded (update_rows does not change it), the coefficients and the decay */
            append_ring<D, R, VECTOR>(a, at, ring_at, current, coef, decay, ring_pos, head_writer, k_writer);
            ring_pos = ring_pos + 1 == a.L ? 0 : ring_pos + 1;
        }

        /* o[b, t, h, row0 + r] from lane r of the group (update_rows leaves it there). */
#pragma unroll
        for (int r = 0; r < C::ROWS; r++)
            if (at.lane == r)
                *reinterpret_cast<float *>(o + t * a.o.nb[2] + r * a.o.nb[0]) = out[r];

        const long long s = a.T - 1 - t; /* snapshot index, newest first */
        if (!REPLAY && s < a.n_write)
            store_rows<D, R, VECTOR, BF16, STREAM>(states + s * a.states.nb[4], a.states, S);
        if (C::PREFETCH && has_next)
            current = next;
        advance_tokens(tokens, a);
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

/* 1 when every 4-element chunk of the view is one aligned access (16 bytes of F32, 8 of BF16):
 * elements contiguous along dim 0, data and the strides of every dimension that is stepped
 * through aligned to the chunk. */
int is_vectorisable(const gdn_tensor *t, int n_dims)
{
    const size_t size = gdn_dtype_size(t->dtype), chunk = 4 * size;
    if (t->nb[0] != size || (uintptr_t)t->data % chunk != 0)
        return 0;
    for (int i = 1; i < n_dims; i++)
        if (t->ne[i] > 1 && t->nb[i] % chunk != 0)
            return 0;
    return 1;
}

/* The thin shape (one row a thread, four times the warps) for grids of at most this many warps
 * in the wide shape at T = 1 and in replay: 32 heads of D = 128 (B = 1 at Qwen3.6's Hv = 32),
 * where a call is all latency; twice as many for the recurrent op with T > 1 (its snapshots are
 * stored by four times the warps). Measured on an H100 (docs/PERF.md, "thin shape"): the earlier
 * limit of 1024 for all (B < 4) made replay T=4 at B = 2 twice as slow as wide (16.2 against 8.2
 * us: its folds and new tokens repeat every per-token cost in four times the warps) and F32
 * decode at B = 2, 3 9% slower; thin still wins T=4 with 4 snapshots at B = 1 (6.26 against 7.06
 * us) and B = 2 (9.09 against 9.30; BF16 7.21 against 8.39), and replay T=1 at B = 1 (4.11
 * against 4.64); replay T=4 at B = 1 once its tokens are staged (6.24 against 6.84, "thin staged
 * replay"). */
#ifndef GDN_CUDA_THIN_GRID_WARPS
#define GDN_CUDA_THIN_GRID_WARPS 256
#endif
constexpr long long kThinGridWarps = GDN_CUDA_THIN_GRID_WARPS;
#ifndef GDN_CUDA_THIN_ROWS
#define GDN_CUDA_THIN_ROWS 1
#endif
constexpr int kThinRows = GDN_CUDA_THIN_ROWS;

/* How a launch goes out: the stream, and whether programmatic dependent launch may be asked
 * for (compute capability 9.0 and newer). */
struct gdn_cuda_launch {
    cudaStream_t stream;
    bool dependent;
    int sm_count;
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

template <int D, int R, bool VECTOR, bool REPLAY, bool BF16, bool EARLY,
          int MIN_BLOCKS = !REPLAY && BF16 ? kMinBlocksPerSMBf16 : kMinBlocksPerSM, bool STAGE_THIN = false>
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
    auto kernel = gdn_cuda_gated_delta_net_kernel<D, R, VECTOR, REPLAY, BF16, EARLY, MIN_BLOCKS, STAGE_THIN>;
    return gdn_cuda_check(cudaLaunchKernelEx(&config, kernel, a),
                          REPLAY ? "gated_delta_net_replay kernel launch" : "gated_delta_net kernel launch");
}

template <int D, bool REPLAY, bool BF16>
gdn_status launch_rows(const gdn_cuda_gdn_args &a, bool vector, const gdn_cuda_launch &how)
{
    constexpr int WIDE = wide_rows<D>(), THIN = kThinRows < WIDE ? kThinRows : WIDE;
    const long long thin_limit = a.T == 1 || REPLAY ? kThinGridWarps : 2 * kThinGridWarps;
    const bool thin = (long long)a.B * a.Hv * gdn_cuda_config<D, WIDE>::WARPS_PER_HEAD <= thin_limit;
    /* The state_ready form where it was measured to pay (docs/PERF.md): a grid that fits in one
     * wave of blocks (later waves start after the previous kernel has ended anyway), decode or
     * replay (T = 4 with 4 snapshots at B = 1 lost 6%). Only for 16-byte views: the strided
     * fallback ignores the hint, a third more kernels to compile rather than twice as many. */
    const long long warps = (long long)a.B * a.Hv *
                            (thin ? gdn_cuda_config<D, THIN>::WARPS_PER_HEAD : gdn_cuda_config<D, WIDE>::WARPS_PER_HEAD);
    const long long blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
    const long long wave = (long long)how.sm_count * (!REPLAY && BF16 ? kMinBlocksPerSMBf16 : kMinBlocksPerSM);
    /* Replay in the wide shape: 4 blocks per SM (128 registers, a few spilled) where that fits
     * the grid in one wave and 3 do not (B = 7, 8 at Qwen3.6's 32 heads on an H100): one wave
     * at 4 per SM measured faster than two at 3 (B = 8: 27.4 -> 21.7 us), many waves slower
     * (B = 64: 126 -> 136 us, docs/PERF.md). */
    const long long wave4 = (long long)how.sm_count * kOneWaveBlocksPerSM;
    if (REPLAY && !thin && vector && blocks > wave && blocks <= wave4)
        return a.state_ready ? launch<D, WIDE, true, REPLAY, BF16, true, kOneWaveBlocksPerSM>(a, how)
                             : launch<D, WIDE, true, REPLAY, BF16, false, kOneWaveBlocksPerSM>(a, how);
    /* F32 decode likewise (B = 7, 8): one wave at 4 blocks per SM, without the state_ready form
     * (B = 8: 13.43 -> 12.93 us; early, that form measured 14.1, docs/PERF.md). */
    if (!REPLAY && !BF16 && a.T == 1 && !thin && vector && blocks > wave && blocks <= wave4)
        return launch<D, WIDE, true, false, false, false, kOneWaveBlocksPerSM>(a, how);
    const bool early = a.state_ready && vector && blocks <= wave && (a.T == 1 || REPLAY);
    /* Replay in the thin shape with T > 1 stages its tokens (STAGE_THIN in the kernel). */
    if constexpr (REPLAY)
        if (thin && vector && a.T > 1)
            return early ? launch<D, THIN, true, true, BF16, true, kMinBlocksPerSM, true>(a, how)
                         : launch<D, THIN, true, true, BF16, false, kMinBlocksPerSM, true>(a, how);
    if (thin)
        return early    ? launch<D, THIN, true, REPLAY, BF16, true>(a, how)
               : vector ? launch<D, THIN, true, REPLAY, BF16, false>(a, how)
                        : launch<D, THIN, false, REPLAY, BF16, false>(a, how);
    return early    ? launch<D, WIDE, true, REPLAY, BF16, true>(a, how)
           : vector ? launch<D, WIDE, true, REPLAY, BF16, false>(a, how)
                    : launch<D, WIDE, false, REPLAY, BF16, false>(a, how);
}

template <int D>
gdn_status launch_for(const gdn_cuda_gdn_args &a, bool vector, const gdn_cuda_launch &how)
{
    if (a.bf16)
        return a.fold != nullptr ? launch_rows<D, true, true>(a, vector, how)
                                 : launch_rows<D, false, true>(a, vector, how);
    return a.fold != nullptr ? launch_rows<D, true, false>(a, vector, how)
                             : launch_rows<D, false, false>(a, vector, how);
}

} // namespace

gdn_status gdn_cuda_gated_delta_net_probe(void)
{
    cudaFuncAttributes attributes;
    return gdn_cuda_check(cudaFuncGetAttributes(&attributes,
                                                gdn_cuda_gated_delta_net_kernel<128, 4, true, false, false, false,
                                                                                kMinBlocksPerSM, false>),
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
    a.states_index = shape->write_indexed ? (const char *)args->states_index.data : nullptr;
    a.states_index_nb = shape->write_indexed ? (long long)args->states_index.nb[0] : 0;
    a.S_write = shape->S_write;
    a.D = (int)shape->D;
    a.pool_check = shape->pool_overlaps_states;
    a.bf16 = shape->storage == GDN_DTYPE_BF16;
    /* Small B: each block checks the index itself (a few hundred comparisons) instead of a
     * one-block kernel launched before the op (GDN_CUDA_CHECK_IN_KERNEL_MAX_B). */
    const bool any_index = shape->indexed || shape->write_indexed;
    a.check_in_kernel = any_index && shape->B <= (shape->replay != nullptr ? backend->gdn_replay_check_in_kernel_max_b
                                                                            : backend->gdn_check_in_kernel_max_b);
    a.state_ready = params->state_ready != 0;
    a.index_check = context->index_check;
    const gdn_gated_delta_net_replay_args *replay = shape->replay;
    a.fold = nullptr;
    a.fold_nb[0] = a.fold_nb[1] = 0;
    a.L = shape->L;
    if (replay != nullptr) {
        a.ring_k = view_of(&replay->ring_k);
        a.ring_v = view_of(&replay->ring_v);
        a.ring_g = view_of(&replay->ring_g);
        a.fold = (const char *)replay->fold.data;
        a.fold_nb[0] = (long long)replay->fold.nb[0];
        a.fold_nb[1] = (long long)replay->fold.nb[1];
    } else {
        a.ring_k = a.ring_v = a.ring_g = view_of(&args->states); /* unused */
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
    how.sm_count = context->sm_count;
    if (any_index && !a.check_in_kernel && (status = launch_index_check(a, how)) != GDN_OK)
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
    if (status != GDN_OK || !any_index)
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
    if (check[0] >= 0 && check[2] == kWriteBad)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: states_index[%lld]=%lld is outside 0..%lld "
                        "(slots of states)", (long long)check[0], (long long)check[1], (long long)(shape->S_write - 1));
    if (check[0] >= 0 && check[2] == kWriteShared)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net: states_index[%lld]=%lld is also the slot "
                        "sequence %lld writes (a slot has one writer)", (long long)check[0], (long long)check[1],
                        (long long)check[3]);
    if (check[0] >= 0 && check[2] == kSlotShared)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "gated_delta_net_replay: state_index[%lld]=%lld is also the slot of "
                        "sequence %lld (each sequence must own its slot: the op writes it)", (long long)check[0],
                        (long long)check[1], (long long)check[3]);
    if (check[0] >= 0 && check[2] >= 0)
        return gdn_fail(GDN_ERROR_OVERLAP, "gated_delta_net: state_index[%lld]=%lld: the pool slot read overlaps the "
                        "snapshot states[%lld][%s%lld%s] written by sequence %lld (a sequence may read only a slot "
                        "disjoint from every snapshot, or exactly one of its own)", (long long)check[0],
                        (long long)check[1], (long long)check[2], shape->write_indexed ? "states_index[" : "",
                        (long long)check[3], shape->write_indexed ? "]" : "", (long long)check[3]);
    if (check[0] >= 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: state_index[%lld]=%lld is outside 0..%lld "
                        "(slots of the state pool)", replay != nullptr ? "gated_delta_net_replay" : "gated_delta_net",
                        (long long)check[0], (long long)check[1], (long long)(shape->S - 1));
    return GDN_OK;
}
