/* lab_gdn_decode.cu: the kernel lab for the Gated DeltaNet decode step (T = 1) on CUDA: several
 * hand-written versions of the one-token update and the library's own kernel, each checked
 * against a float64 CPU reference at every launch configuration, then timed with the L2 flushed.
 *
 * Shape: the Qwen3.6-35B-A3B GDN layer: Hk = 16, Hv = 32, Dk = Dv = D = 128, F32 state, tiled
 * broadcast (value head h reads q/k head h % Hk), no l2norm, scale 1/sqrt(D), one token per
 * sequence, the state updated in place (state == states[0]). Per (b, h), with S the [Dv][Dk]
 * state (row j = S[j][:], D contiguous floats; rows are independent):
 *     S *= exp(g);  sk_j = S[j].k;  d_j = beta (v_j - sk_j);  S[j] += d_j k;  o_j = scale S[j].q
 *
 * Versions (one line of reasoning each; "lanes" share a row, "rows" are held by one thread):
 *   v0   1 thread a row, 128 floats in registers, scalar loads: the math as written, nothing else;
 *        a warp's load touches 32 rows 512 B apart (32 lines a request), so it lives on L1 reuse.
 *   v1   32 lanes a row (one warp), a float4 per lane: every access coalesced (512 B a warp), but
 *        4 state floats a thread: bytes in flight come from occupancy alone, and every row pays
 *        its own q/k loads and two 5-step shuffle trees (the library's mapping before 2026-11-24).
 *   v2   8 lanes a row, 4 rows a thread (64 floats, 16 float4 loads in flight a thread), 3-step
 *        shuffles: the library's wide shape (gdn_cuda.cu: at T = 1 when B*Hv*8 > 256 warps;
 *        launch_rows has the rule for T > 1).
 *   v3   8 lanes a row, 2 rows a thread (32 floats): twice v2's warps on fewer registers; the
 *        library measured it 27% slower at T = 4 (more instructions an element), T = 1 has one.
 *   v4   8 lanes a row, 1 row a thread (16 floats): 4x v2's warps for thin grids; the library's
 *        shape at T = 1 when B*Hv*8 <= 256 warps (B = 1 here; B < 4 when this lab was measured).
 *   lib  the library's kernel through gdn_gated_delta_net (rows a thread chosen by B, both dot
 *        products on the old row, explicitly rounded arithmetic): the promoted winner.
 * v2..v4 are one template (rows a thread) with the same per-row arithmetic; v0..v4 compute the
 * formula above literally (two dot products in series), the library expands o to use the old row.
 *
 * Measured (H100): docs/PERF.md, "the decode kernel lab"; v1 wins at B <= 8, v4 at B = 256, and
 * lib is within 0.8% of the best at B >= 64.
 *
 * Usage: gdn_lab_decode [--batch 1,8,64,256] [--reps 50] [--seed 1] [--json]
 * Exit status 1 when any version fails its check (after the whole table), 2 on bad arguments. */
#include "gdn.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

namespace {

constexpr int D = 128, HK = 16, HV = 32;
constexpr int kMaxB = 1024;
constexpr unsigned kFullMask = 0xffffffffu;
/* The L2 flush: a device-to-device copy of this many bytes (5x the H100's 50 MB L2), queued on
 * the timed stream just before each timed launch, so the host's launch is hidden behind it. */
constexpr size_t kFlushBytes = 256u << 20;
/* The copy ceiling: a 1 GiB device-to-device copy, bytes read plus written. */
constexpr size_t kCopyBytes = 1u << 30;
constexpr int kCopyReps = 10;

#define CUDA_CHECK(call)                                                                               \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess) {                                                                       \
            fprintf(stderr, "gdn_lab_decode: %s:%d: %s: %s\n", __FILE__, __LINE__, #call,             \
                    cudaGetErrorString(e_));                                                           \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

#define GDN_CHECK(call)                                                                                \
    do {                                                                                               \
        if ((call) != GDN_OK) {                                                                        \
            fprintf(stderr, "gdn_lab_decode: %s:%d: %s: %s\n", __FILE__, __LINE__, #call,             \
                    gdn_error_detail());                                                               \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

/* Every kernel argument in one struct (STYLE rule 5); all contiguous, T = 1:
 * q, k [B, Hk, D]; v, o [B, Hv, D]; g, beta [B, Hv]; state [B, Hv, D, D] (row j of head
 * (b, h) starts at element ((b*Hv + h)*D + j)*D). */
struct lab_args {
    const float *q, *k, *v, *g, *beta;
    float *state, *o;
    int B, Hk, Hv;
    float scale;
};

/* Sum over the LANES lanes of an aligned lane group (xor offsets stay inside the group), every
 * lane of the group ends with the total. Called by all 32 lanes. */
template <int LANES>
__device__ __forceinline__ float group_sum(float x)
{
#pragma unroll
    for (int offset = LANES / 2; offset >= 1; offset /= 2)
        x += __shfl_xor_sync(kFullMask, x, offset);
    return x;
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc)
{
    return fmaf(a.w, b.w, fmaf(a.z, b.z, fmaf(a.y, b.y, fmaf(a.x, b.x, acc))));
}

__device__ __forceinline__ float4 axpy4(float a, float4 x, float4 y) /* a x + y */
{
    return make_float4(fmaf(a, x.x, y.x), fmaf(a, x.y, y.y), fmaf(a, x.z, y.z), fmaf(a, x.w, y.w));
}

__device__ __forceinline__ float4 scale4(float a, float4 x)
{
    return make_float4(a * x.x, a * x.y, a * x.z, a * x.w);
}

/* v0: thread r owns state row r of the B*Hv*D rows (head r / D, row j = r % D). */
__global__ void __launch_bounds__(256) v0_thread_per_row(const lab_args a)
{
    const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (long long)a.B * a.Hv * D)
        return;
    const long long head = r / D; /* b*Hv + h */
    const int b = (int)(head / a.Hv), h = (int)(head % a.Hv);
    const float *q = a.q + ((long long)b * a.Hk + h % a.Hk) * D;
    const float *k = a.k + ((long long)b * a.Hk + h % a.Hk) * D;
    float *row = a.state + r * D;
    const float decay = expf(a.g[head]);

    float s[D]; /* the row, in registers (every index a compile-time constant after unrolling) */
    float sk = 0.f;
#pragma unroll
    for (int i = 0; i < D; i++) {
        s[i] = decay * row[i];
        sk = fmaf(s[i], k[i], sk);
    }
    const float d = a.beta[head] * (a.v[r] - sk);
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < D; i++) {
        s[i] = fmaf(d, k[i], s[i]);
        row[i] = s[i];
        sq = fmaf(s[i], q[i], sq);
    }
    a.o[r] = a.scale * sq; /* o [B, Hv, D] has the state's row order */
}

/* v1: warp w owns row w; lane l holds elements 4l .. 4l+3 (one float4). */
__global__ void __launch_bounds__(512) v1_warp_per_row(const lab_args a)
{
    const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= (long long)a.B * a.Hv * D)
        return; /* whole warps: blockDim is a multiple of 32, so shuffles stay full-mask */
    const long long head = r / D;
    const int b = (int)(head / a.Hv), h = (int)(head % a.Hv);
    const float4 *q = reinterpret_cast<const float4 *>(a.q + ((long long)b * a.Hk + h % a.Hk) * D);
    const float4 *k = reinterpret_cast<const float4 *>(a.k + ((long long)b * a.Hk + h % a.Hk) * D);
    float4 *row = reinterpret_cast<float4 *>(a.state + r * D);

    float4 s = row[lane];
    const float4 kk = __ldg(k + lane), qq = __ldg(q + lane);
    s = scale4(expf(__ldg(a.g + head)), s);
    const float sk = group_sum<32>(dot4(s, kk, 0.f));
    const float d = __ldg(a.beta + head) * (__ldg(a.v + r) - sk);
    s = axpy4(d, kk, s);
    row[lane] = s;
    const float sq = group_sum<32>(dot4(s, qq, 0.f));
    if (lane == 0)
        a.o[r] = a.scale * sq;
}

/* v2 (ROWS 4), v3 (ROWS 2), v4 (ROWS 1): 8 lanes a row. Lane l of a group holds the float4
 * chunks c*8 + l (c < 4) of each of its rows, so one warp-wide access of chunk c covers 128
 * contiguous bytes of each of the warp's 4 groups' rows (4 whole lines). A warp holds 4*ROWS
 * consecutive rows of one head: group gi rows row0 .. row0+ROWS-1, row0 = (warp_in_head*4 +
 * gi)*ROWS; D / (4*ROWS) warps a head, warps numbered head-major so blocks stream memory. */
template <int ROWS>
__global__ void __launch_bounds__(512) rows8_kernel(const lab_args a)
{
    constexpr int LANES = 8, GROUPS = 32 / LANES, CHUNKS = D / (4 * LANES);
    constexpr int WARPS_PER_HEAD = D / (GROUPS * ROWS);
    static_assert(ROWS <= LANES, "lane r of a group writes o for row r");
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const long long head = warp / WARPS_PER_HEAD;
    if (head >= (long long)a.B * a.Hv)
        return; /* whole warps only */
    const int lane = threadIdx.x % 32, l = lane % LANES, group = lane / LANES;
    const int row0 = ((int)(warp % WARPS_PER_HEAD) * GROUPS + group) * ROWS;
    const int b = (int)(head / a.Hv), h = (int)(head % a.Hv);
    const float4 *q = reinterpret_cast<const float4 *>(a.q + ((long long)b * a.Hk + h % a.Hk) * D);
    const float4 *k = reinterpret_cast<const float4 *>(a.k + ((long long)b * a.Hk + h % a.Hk) * D);
    float4 *rows = reinterpret_cast<float4 *>(a.state + (head * D + row0) * D);

    /* Every state load issued before the first use: ROWS*CHUNKS 16-byte loads in flight. */
    float4 s[ROWS][CHUNKS];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int c = 0; c < CHUNKS; c++)
            s[r][c] = rows[r * (D / 4) + c * LANES + l];
    float4 kk[CHUNKS], qq[CHUNKS];
#pragma unroll
    for (int c = 0; c < CHUNKS; c++) {
        kk[c] = __ldg(k + c * LANES + l);
        qq[c] = __ldg(q + c * LANES + l);
    }
    const float decay = expf(__ldg(a.g + head)), beta = __ldg(a.beta + head);
    float v[ROWS], out[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
        v[r] = __ldg(a.v + head * D + row0 + r);

#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        float sk = 0.f;
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            s[r][c] = scale4(decay, s[r][c]);
            sk = dot4(s[r][c], kk[c], sk);
        }
        const float d = beta * (v[r] - group_sum<LANES>(sk));
        float sq = 0.f;
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            s[r][c] = axpy4(d, kk[c], s[r][c]);
            rows[r * (D / 4) + c * LANES + l] = s[r][c];
            sq = dot4(s[r][c], qq[c], sq);
        }
        out[r] = a.scale * group_sum<LANES>(sq);
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++)
        if (l == r) /* every lane of the group holds out[r]; one writes it */
            a.o[head * D + row0 + r] = out[r];
}

/* A version: its kernel (NULL for the library's op), the threads it runs a state row with
 * (threads in all = B*Hv*D * threads_per_row / rows_per_thread), and up to 3 block sizes. */
struct lab_version {
    const char *name;
    void (*kernel)(lab_args);
    int lanes_per_row, rows_per_thread;
    int threads[3];
};

const lab_version kVersions[] = {
    {"v0", v0_thread_per_row, 1, 1, {64, 128, 256}},
    {"v1", v1_warp_per_row, 32, 1, {128, 256, 512}},
    {"v2", rows8_kernel<4>, 8, 4, {64, 128, 256}},
    {"v3", rows8_kernel<2>, 8, 2, {128, 256, 512}},
    {"v4", rows8_kernel<1>, 8, 1, {128, 256, 512}},
    {"lib", nullptr, 0, 0, {0, 0, 0}}, /* the library picks its own block (one configuration) */
};

/* ---------------------------------------------------------------- host: data and reference */

/* splitmix64: a fixed, seedable stream of uniform doubles in [0, 1). */
struct lab_rng {
    uint64_t s;
    double next()
    {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
    }
    float uniform(double lo, double hi) { return (float)(lo + (hi - lo) * next()); }
};

/* The inputs for kMaxB sequences or fewer (a run at B uses the first B: sequences are
 * independent, so every B's reference is a prefix of the largest B's). Realistic ranges: q, k
 * unit vectors (the model l2-normalises them before the op, which is why l2norm is off), v in
 * [-1, 1], log-decay g in [-2, -0.01], beta in [0, 1], state in [-0.5, 0.5]. Never zeros: they
 * would hide unwritten outputs. */
struct lab_inputs {
    std::vector<float> q, k, v, g, beta, state;
};

void unit_vectors(float *x, long long n, lab_rng &rng)
{
    for (long long i = 0; i < n; i++) {
        double norm = 0;
        for (int e = 0; e < D; e++) {
            x[i * D + e] = rng.uniform(-1, 1);
            norm += (double)x[i * D + e] * x[i * D + e];
        }
        for (int e = 0; e < D; e++)
            x[i * D + e] = (float)(x[i * D + e] / sqrt(norm));
    }
}

lab_inputs make_inputs(int B, uint64_t seed)
{
    lab_rng rng = {seed};
    lab_inputs in;
    const size_t heads = (size_t)B * HV;
    in.q.resize((size_t)B * HK * D);
    in.k.resize((size_t)B * HK * D);
    unit_vectors(in.q.data(), (long long)B * HK, rng);
    unit_vectors(in.k.data(), (long long)B * HK, rng);
    in.v.resize(heads * D);
    for (float &x : in.v) x = rng.uniform(-1, 1);
    in.g.resize(heads);
    for (float &x : in.g) x = rng.uniform(-2, -0.01);
    in.beta.resize(heads);
    for (float &x : in.beta) x = rng.uniform(0, 1);
    in.state.resize(heads * D * D);
    for (float &x : in.state) x = rng.uniform(-0.5, 0.5);
    return in;
}

/* The step in float64 from the same float inputs: o_ref [B, Hv, D], state_ref [B, Hv, D, D]. */
void reference_step(std::vector<double> &o_ref, std::vector<double> &state_ref, const lab_inputs &in, int B)
{
    const double scale = 1.0 / sqrt((double)D);
    o_ref.resize((size_t)B * HV * D);
    state_ref.resize((size_t)B * HV * D * D);
    for (long long head = 0; head < (long long)B * HV; head++) {
        const long long b = head / HV, hk = head % HV % HK;
        const float *q = &in.q[(b * HK + hk) * D], *k = &in.k[(b * HK + hk) * D];
        const double decay = exp((double)in.g[head]), beta = in.beta[head];
        for (long long j = 0; j < D; j++) {
            const float *row = &in.state[(head * D + j) * D];
            double *out = &state_ref[(head * D + j) * D];
            double sk = 0;
            for (int i = 0; i < D; i++)
                sk += decay * row[i] * k[i];
            const double d = beta * (in.v[head * D + j] - sk);
            double sq = 0;
            for (int i = 0; i < D; i++) {
                out[i] = decay * row[i] + d * k[i];
                sq += out[i] * q[i];
            }
            o_ref[head * D + j] = scale * sq;
        }
    }
}

/* Tolerance: |x - ref| <= kTol (1 + |ref|), for o and for the state. The arithmetic is float32
 * (unit roundoff u = 6e-8): a state element is one decay, one fma and the row's dot product with
 * k (a 128-term sum, in series in v0, a tree elsewhere) times beta k_i; with these ranges the
 * expected error is ~1e-7 and a 128-term worst case n u sum|s_i k_i| ~ 5e-6 (|k| = 1, |s| <= 0.5
 * gives sum|s_i k_i| <= 0.5 sqrt(128)). 1e-5 stays above that, and far below what any indexing
 * mistake gives: a row not updated is off by (1 - exp(g)) |S| >= 1% of its values, a wrong
 * q/k head by O(0.1). NaN fails (the output is poisoned with NaN before the run). */
constexpr double kTol = 1e-5;

struct lab_error {
    double max_abs = 0, err2 = 0, ref2 = 0;
    bool pass = true;
    void add(double x, double ref)
    {
        const double e = fabs(x - ref);
        if (!(e <= kTol * (1 + fabs(ref)))) pass = false;
        if (!(e <= max_abs)) max_abs = e; /* NaN sticks */
        err2 += e * e;
        ref2 += ref * ref;
    }
    double rel() const { return sqrt(err2) / sqrt(ref2); } /* normwise ||x - ref|| / ||ref|| */
};

/* ---------------------------------------------------------------- host: device side */

/* Device buffers for kMaxB or fewer sequences (the largest B asked), allocated through the
 * library (its ops must see memory from gdn_backend_alloc; plain device pointers for ours). */
struct lab_device {
    gdn_backend *backend;
    cudaStream_t stream;   /* our kernels' stream; the library queues on its own */
    cudaEvent_t begin, end;
    float *q, *k, *v, *g, *beta, *o;
    float *state, *state0; /* the state updated in place, and its initial value to restore */
    char *copy_src, *copy_dst; /* 1 GiB each: the copy ceiling and (their first bytes) the flush */
};

float *device_upload(lab_device &dev, const std::vector<float> &host)
{
    void *p = nullptr;
    GDN_CHECK(gdn_backend_alloc(dev.backend, host.size() * sizeof(float), &p));
    GDN_CHECK(gdn_backend_upload(dev.backend, p, host.data(), host.size() * sizeof(float)));
    return (float *)p;
}

/* The fewest bytes one call must move: the state read and written, q, k, v, g, beta read once,
 * o written once. The library counts the same (its counters), which the header checks. */
size_t bytes_per_call(int B)
{
    const size_t state = (size_t)B * HV * D * D * sizeof(float);
    const size_t qk = 2 * (size_t)B * HK * D * sizeof(float);
    const size_t v = (size_t)B * HV * D * sizeof(float), o = v;
    const size_t gates = 2 * (size_t)B * HV * sizeof(float);
    return 2 * state + qk + v + gates + o;
}

lab_args args_for(const lab_device &dev, int B)
{
    return lab_args{dev.q, dev.k, dev.v, dev.g, dev.beta, dev.state, dev.o, B, HK, HV,
                    1.0f / sqrtf((float)D)};
}

void launch_version(const lab_device &dev, const lab_version &ver, int threads, int B)
{
    const long long total = (long long)B * HV * D * ver.lanes_per_row / ver.rows_per_thread;
    const unsigned blocks = (unsigned)((total + threads - 1) / threads);
    ver.kernel<<<blocks, threads, 0, dev.stream>>>(args_for(dev, B));
    CUDA_CHECK(cudaGetLastError());
}

/* The library's op on the same buffers: in place (states[0] is the state's own view). */
void launch_library(const lab_device &dev, int B)
{
    const int64_t qk[4] = {D, HK, 1, B}, vo[4] = {D, HV, 1, B}, gates[3] = {HV, 1, B};
    const int64_t state[4] = {D, D, HV, B}, states[5] = {D, D, HV, B, 1};
    gdn_gated_delta_net_args a;
    memset(&a, 0, sizeof a); /* state_index, states_index: none */
    a.q = gdn_tensor_contiguous(dev.q, GDN_DTYPE_F32, 4, qk);
    a.k = gdn_tensor_contiguous(dev.k, GDN_DTYPE_F32, 4, qk);
    a.v = gdn_tensor_contiguous(dev.v, GDN_DTYPE_F32, 4, vo);
    a.g = gdn_tensor_contiguous(dev.g, GDN_DTYPE_F32, 3, gates);
    a.beta = gdn_tensor_contiguous(dev.beta, GDN_DTYPE_F32, 3, gates);
    a.state = gdn_tensor_contiguous(dev.state, GDN_DTYPE_F32, 4, state);
    a.o = gdn_tensor_contiguous(dev.o, GDN_DTYPE_F32, 4, vo);
    a.states = gdn_tensor_contiguous(dev.state, GDN_DTYPE_F32, 5, states);
    gdn_gated_delta_net_params p = gdn_gated_delta_net_params_default(); /* tiled, 1/sqrt(D), no l2norm */
    GDN_CHECK(gdn_gated_delta_net(dev.backend, &p, &a));
}

/* One checked run from the initial state: restore the state, poison o with NaN, run, compare
 * every o and every state element with the reference (o_ref, state_ref: B's prefix of it). The
 * results land in o and state (host scratch, reused across runs). */
void check_run(const lab_device &dev, const lab_version &ver, int threads, int B, const double *o_ref,
               const double *state_ref, std::vector<float> &o, std::vector<float> &state, lab_error &err_o,
               lab_error &err_state)
{
    const size_t n_o = (size_t)B * HV * D, n_state = n_o * D;
    CUDA_CHECK(cudaMemcpyAsync(dev.state, dev.state0, n_state * sizeof(float), cudaMemcpyDeviceToDevice, dev.stream));
    CUDA_CHECK(cudaMemsetAsync(dev.o, 0xff, n_o * sizeof(float), dev.stream)); /* 0xffffffff: a NaN */
    CUDA_CHECK(cudaStreamSynchronize(dev.stream)); /* the library's stream does not wait for ours */
    if (ver.kernel != nullptr)
        launch_version(dev, ver, threads, B);
    else
        launch_library(dev, B);
    CUDA_CHECK(cudaStreamSynchronize(dev.stream));
    GDN_CHECK(gdn_backend_synchronize(dev.backend));
    o.resize(n_o);
    state.resize(n_state);
    CUDA_CHECK(cudaMemcpy(o.data(), dev.o, n_o * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(state.data(), dev.state, n_state * sizeof(float), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n_o; i++)
        err_o.add(o[i], o_ref[i]);
    for (size_t i = 0; i < n_state; i++)
        err_state.add(state[i], state_ref[i]);
}

double median_of(std::vector<double> x)
{
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
}

/* Microseconds of each of `reps` launches, each after an L2 flush queued on the same stream
 * (our stream for ours; the library's, through gdn_backend_copy, for its op), timed by events
 * around the launch alone. The state is not restored between reps: it evolves in place, which
 * changes no work (the kernels have no data-dependent branches), and stays bounded (exp(g) < 1,
 * beta <= 1, |k| = 1). The check was a separate run from the initial state. */
std::vector<double> time_runs(const lab_device &dev, const lab_version &ver, int threads, int B, int reps)
{
    std::vector<double> us(reps);
    for (int i = 0; i < reps; i++) {
        double ms = 0;
        if (ver.kernel != nullptr) {
            CUDA_CHECK(cudaMemcpyAsync(dev.copy_dst, dev.copy_src, kFlushBytes, cudaMemcpyDeviceToDevice,
                                       dev.stream));
            CUDA_CHECK(cudaEventRecord(dev.begin, dev.stream));
            launch_version(dev, ver, threads, B);
            CUDA_CHECK(cudaEventRecord(dev.end, dev.stream));
            CUDA_CHECK(cudaEventSynchronize(dev.end));
            float elapsed = 0;
            CUDA_CHECK(cudaEventElapsedTime(&elapsed, dev.begin, dev.end));
            ms = elapsed;
        } else {
            GDN_CHECK(gdn_backend_copy(dev.backend, dev.copy_dst, dev.copy_src, kFlushBytes));
            GDN_CHECK(gdn_backend_timer_start(dev.backend));
            launch_library(dev, B);
            GDN_CHECK(gdn_backend_timer_stop(dev.backend, &ms));
        }
        us[i] = ms * 1000.0;
    }
    return us;
}

/* The copy ceiling in GB/s: a 1 GiB device-to-device copy, bytes read plus written, median. */
double copy_bandwidth(const lab_device &dev)
{
    std::vector<double> gbs(kCopyReps);
    for (int i = -1; i < kCopyReps; i++) { /* i = -1: warm-up */
        CUDA_CHECK(cudaEventRecord(dev.begin, dev.stream));
        CUDA_CHECK(cudaMemcpyAsync(dev.copy_dst, dev.copy_src, kCopyBytes, cudaMemcpyDeviceToDevice, dev.stream));
        CUDA_CHECK(cudaEventRecord(dev.end, dev.stream));
        CUDA_CHECK(cudaEventSynchronize(dev.end));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, dev.begin, dev.end));
        if (i >= 0)
            gbs[i] = 2.0 * kCopyBytes / (ms * 1e6);
    }
    return median_of(gbs);
}

/* ---------------------------------------------------------------- host: the table */

struct lab_row {
    const char *version;
    int threads, B, regs, warps_per_sm; /* threads, regs, warps/SM 0 for the library (its own) */
    double us, us_min, gbs, pct, err_o, err_state, rel_o, rel_state;
    bool pass;
};

void print_row(const lab_row &r)
{
    char threads[16] = "-", regs[16] = "-", occ[16] = "-";
    if (r.threads > 0) {
        snprintf(threads, sizeof threads, "%d", r.threads);
        snprintf(regs, sizeof regs, "%d", r.regs);
        snprintf(occ, sizeof occ, "%d", r.warps_per_sm);
    }
    printf("%-4s %7s %4s %5s %5d %9.2f %9.2f %8.1f %6.1f%% %9.2e %9.2e %9.2e %9.2e  %s\n", r.version, threads,
           regs, occ, r.B, r.us, r.us_min, r.gbs, r.pct, r.err_o, r.err_state, r.rel_o, r.rel_state,
           r.pass ? "PASS" : "FAIL");
}

void print_json(const cudaDeviceProp &prop, int sm_khz, int mem_khz, double copy_gbs, int reps,
                const std::vector<lab_row> &rows)
{
    printf("{\"gpu\": \"%s\", \"sm_clock_mhz\": %d, \"memory_clock_mhz\": %d, \"copy_gbs\": %.1f, \"reps\": %d,\n",
           prop.name, sm_khz / 1000, mem_khz / 1000, copy_gbs, reps);
    printf(" \"rows\": [\n");
    for (size_t i = 0; i < rows.size(); i++) {
        const lab_row &r = rows[i];
        printf("  {\"version\": \"%s\", \"threads\": %d, \"B\": %d, \"us\": %.3f, \"us_min\": %.3f, \"gbs\": %.1f, "
               "\"pct_copy\": %.2f, \"max_abs_err_o\": %.3e, \"max_abs_err_state\": %.3e, \"rel_err_o\": %.3e, "
               "\"rel_err_state\": %.3e, \"pass\": %s}%s\n",
               r.version, r.threads, r.B, r.us, r.us_min, r.gbs, r.pct, r.err_o, r.err_state, r.rel_o, r.rel_state,
               r.pass ? "true" : "false", i + 1 < rows.size() ? "," : "");
    }
    printf(" ]}\n");
}

int usage(const char *why)
{
    fprintf(stderr, "gdn_lab_decode: %s\nusage: gdn_lab_decode [--batch 1,8,64,256] [--reps N (default 50)] "
                    "[--seed N] [--json]\n", why);
    return 2;
}

} // namespace

int main(int argc, char **argv)
{
    std::vector<int> batches = {1, 8, 64, 256};
    int reps = 50, json = 0;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
            if (reps < 1 || reps > 100000)
                return usage("--reps: expected 1..100000");
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            seed = strtoull(argv[++i], nullptr, 10);
        } else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
            batches.clear();
            for (char *s = argv[++i]; *s != '\0';) {
                char *end = nullptr;
                const long b = strtol(s, &end, 10);
                if (end == s || b < 1 || b > kMaxB || (*end != ',' && *end != '\0'))
                    return usage("--batch: expected a comma-separated list of B in 1..1024");
                batches.push_back((int)b);
                s = *end == ',' ? end + 1 : end;
            }
        } else {
            return usage("unknown or incomplete argument");
        }
    }
    const int max_b = *std::max_element(batches.begin(), batches.end());

    lab_device dev;
    GDN_CHECK(gdn_backend_init(&dev.backend, GDN_BACKEND_CUDA, nullptr));
    int device = 0, sm_khz = 0, mem_khz = 0, bus_bits = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&dev.stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreate(&dev.begin));
    CUDA_CHECK(cudaEventCreate(&dev.end));

    const lab_inputs in = make_inputs(max_b, seed);
    std::vector<double> o_ref, state_ref;
    reference_step(o_ref, state_ref, in, max_b); /* each B checks against its prefix */
    dev.q = device_upload(dev, in.q);
    dev.k = device_upload(dev, in.k);
    dev.v = device_upload(dev, in.v);
    dev.g = device_upload(dev, in.g);
    dev.beta = device_upload(dev, in.beta);
    dev.state0 = device_upload(dev, in.state);
    dev.state = device_upload(dev, in.state);
    void *p = nullptr;
    GDN_CHECK(gdn_backend_alloc(dev.backend, (size_t)max_b * HV * D * sizeof(float), &p));
    dev.o = (float *)p;
    GDN_CHECK(gdn_backend_alloc(dev.backend, kCopyBytes, &p));
    dev.copy_src = (char *)p;
    GDN_CHECK(gdn_backend_alloc(dev.backend, kCopyBytes, &p));
    dev.copy_dst = (char *)p;
    CUDA_CHECK(cudaMemset(dev.copy_src, 0x3f, kCopyBytes)); /* the copies move real bytes, not zeros */

    const double copy_gbs = copy_bandwidth(dev);
    /* The written-out byte count against the library's own counter of one call. */
    gdn_backend_reset_counters(dev.backend);
    launch_library(dev, batches[0]);
    GDN_CHECK(gdn_backend_synchronize(dev.backend));
    gdn_backend_counters counted;
    gdn_backend_get_counters(dev.backend, &counted);
    const bool bytes_agree = counted.bytes == bytes_per_call(batches[0]);

    if (!json) {
        printf("gdn_lab_decode: GDN decode step T=1, Hk=%d Hv=%d D=%d, F32 state in place, tiled, no l2norm\n", HK,
               HV, D);
        printf("GPU: %s, %d SMs, SM clock %d MHz, memory clock %d MHz, %d-bit bus (peak %.0f GB/s), L2 %d MB\n",
               prop.name, prop.multiProcessorCount, sm_khz / 1000, mem_khz / 1000, bus_bits,
               2.0 * mem_khz * 1e3 * bus_bits / 8 / 1e9, prop.l2CacheSize >> 20);
        printf("ceiling: device-to-device copy %.1f GB/s (1 GiB, bytes read + written, median of %d)\n", copy_gbs,
               kCopyReps);
        printf("bytes per call: 2*B*Hv*D*D*4 (state) + 2*B*Hk*D*4 (q, k) + 2*B*Hv*D*4 (v, o) + 2*B*Hv*4 (g, beta)"
               " = %.3f MB at B=%d (library counter: %.3f MB, %s)\n",
               bytes_per_call(batches[0]) / 1e6, batches[0], counted.bytes / 1e6, bytes_agree ? "agrees" : "DIFFERS");
        printf("timing: median (and min) of %d launches, each after a %zu MiB copy that flushes L2, events around the "
               "launch alone\n", reps, kFlushBytes >> 20);
        printf("check: every o and state element against float64, pass if |err| <= %.0e (1 + |ref|); rel = "
               "||err|| / ||ref||\n\n", kTol);
        printf("%-4s %7s %4s %5s %5s %9s %9s %8s %7s %9s %9s %9s %9s  %s\n", "ver", "threads", "regs", "w/SM", "B",
               "us", "us min", "GB/s", "%copy", "err o", "err S", "rel o", "rel S", "check");
    }

    std::vector<lab_row> rows;
    bool all_pass = bytes_agree;
    std::vector<float> o_host, state_host;
    for (int B : batches) {
        for (const lab_version &ver : kVersions) {
            for (int c = 0; c < 3; c++) {
                const int threads = ver.threads[c];
                if (c > 0 && threads == 0)
                    break;
                lab_row r = {ver.name, threads, B, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, false};
                if (ver.kernel != nullptr) {
                    cudaFuncAttributes attr;
                    CUDA_CHECK(cudaFuncGetAttributes(&attr, (const void *)ver.kernel));
                    int blocks_per_sm = 0;
                    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, ver.kernel, threads, 0));
                    r.regs = attr.numRegs;
                    r.warps_per_sm = blocks_per_sm * threads / 32;
                }
                lab_error err_o, err_state;
                /* The checked run is also the warm-up of the timed ones. */
                check_run(dev, ver, threads, B, o_ref.data(), state_ref.data(), o_host, state_host, err_o,
                          err_state);
                const std::vector<double> us = time_runs(dev, ver, threads, B, reps);
                r.us = median_of(us);
                r.us_min = *std::min_element(us.begin(), us.end());
                r.gbs = bytes_per_call(B) / (r.us * 1e3);
                r.pct = 100.0 * r.gbs / copy_gbs;
                r.err_o = err_o.max_abs;
                r.err_state = err_state.max_abs;
                r.rel_o = err_o.rel();
                r.rel_state = err_state.rel();
                r.pass = err_o.pass && err_state.pass;
                all_pass = all_pass && r.pass;
                rows.push_back(r);
                if (!json) {
                    print_row(r);
                    fflush(stdout);
                }
            }
        }
    }
    if (json)
        print_json(prop, sm_khz, mem_khz, copy_gbs, reps, rows);
    else if (!all_pass)
        printf("\nFAIL: %s\n", bytes_agree ? "a version missed its reference check" : "byte counts differ");

    gdn_backend_dealloc(dev.backend, dev.copy_dst);
    gdn_backend_dealloc(dev.backend, dev.copy_src);
    gdn_backend_dealloc(dev.backend, dev.o);
    gdn_backend_dealloc(dev.backend, dev.state);
    gdn_backend_dealloc(dev.backend, dev.state0);
    gdn_backend_dealloc(dev.backend, dev.beta);
    gdn_backend_dealloc(dev.backend, dev.g);
    gdn_backend_dealloc(dev.backend, dev.v);
    gdn_backend_dealloc(dev.backend, dev.k);
    gdn_backend_dealloc(dev.backend, dev.q);
    CUDA_CHECK(cudaEventDestroy(dev.end));
    CUDA_CHECK(cudaEventDestroy(dev.begin));
    CUDA_CHECK(cudaStreamDestroy(dev.stream));
    gdn_backend_free(dev.backend);
    return all_pass ? 0 : 1;
}
