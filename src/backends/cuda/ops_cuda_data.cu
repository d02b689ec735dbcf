/* ops_cuda_data.cu: CUDA kernels of the data-movement ops (get_rows, concat, cpy, set_rows) and the short
 * causal convolution (ssm_conv). One thread per element of dst (flat index, dim 0 fastest,
 * grid-stride loop), every view through its ne/nb. Data movement copies bits (exact); cpy to
 * BF16 rounds to nearest, ties to even, with the CPU kernel's formula. */
#include "cuda_internal.h"

namespace {

constexpr int kThreads = 256;
constexpr int kCheckThreads = 256;

/* What an index check found at its first bad position (index_check[2]). */
constexpr int kIndexRange = 0;      /* a read index outside the pool's slots */
constexpr int kIndexOverlap = 1;    /* a slot read meets the tee outside the position's own part */
constexpr int kIndexWriteRange = 2; /* a written index outside the destination's slots */
constexpr int kIndexWriteTwice = 3; /* a written index equal to an earlier one */
constexpr int kSeenWords = 2048;    /* shared bitmap: repeats found in one pass up to 65536 slots */

/* Coordinates of flat element e over counts ne (dim 0 fastest). */
__device__ __forceinline__ void unflatten(const int64_t *ne, int64_t e, int64_t *idx)
{
#pragma unroll
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        idx[i] = e % ne[i];
        e /= ne[i];
    }
}

__device__ __forceinline__ int64_t offset(const gdn_cuda_view &v, const int64_t *idx)
{
    int64_t off = 0;
#pragma unroll
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        off += idx[i] * v.nb[i];
    return off;
}

/* F32 -> BF16, nearest with ties to even (overflow gives infinity); a NaN stays a quiet NaN
 * with its sign and upper payload: gdn_cpu_f32_to_bf16, bit for bit. */
__device__ __forceinline__ unsigned short f32_to_bf16(float x)
{
    unsigned bits = __float_as_uint(x);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
        return (unsigned short)((bits >> 16) | 0x0040u);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (unsigned short)(bits >> 16);
}

/* ssm_conv: dst[b][t][c] = sum_{i<Kconv} x[b][c][t+i] * w[c][i], i upward with __fmaf_rn. */
__global__ void ssm_conv_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &x = a.src[0], &w = a.src[1], &dst = a.dst;
    const int64_t K = w.ne[0];
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < a.count; e += stride) {
        int64_t o[GDN_MAX_DIMS]; /* (c, t, b) */
        unflatten(dst.ne, e, o);
        const char *xc = x.data + o[2] * x.nb[2] + o[0] * x.nb[1] + o[1] * x.nb[0];
        const char *wc = w.data + o[0] * w.nb[1];
        float sum = 0.0f;
        for (int64_t i = 0; i < K; i++)
            sum = __fmaf_rn(*(const float *)(xc + i * x.nb[0]), *(const float *)(wc + i * w.nb[0]), sum);
        *(float *)(dst.data + offset(dst, o)) = sum;
    }
}

/* get_rows, first kernel (one block): check[0] <- the first position r whose index is outside
 * 0..R-1 (-1 if none), check[1] <- that index. */
__global__ void get_rows_check_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    __shared__ int64_t first[kCheckThreads];
    const gdn_cuda_view &index = a.src[1];
    const int64_t rows = a.src[0].ne[1];
    int64_t bad = INT64_MAX;
    for (int64_t r = threadIdx.x; r < index.ne[0]; r += blockDim.x) {
        const int row = *(const int *)(index.data + r * index.nb[0]);
        if ((row < 0 || row >= rows) && r < bad)
            bad = r;
    }
    first[threadIdx.x] = bad;
    __syncthreads();
    for (int half = kCheckThreads / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half && first[threadIdx.x + half] < first[threadIdx.x])
            first[threadIdx.x] = first[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const int64_t r = first[0];
        a.index_check[0] = r == INT64_MAX ? -1 : r;
        a.index_check[1] = r == INT64_MAX ? 0 : *(const int *)(index.data + r * index.nb[0]);
    }
}

/* get_rows, second kernel: dst[r][i] = a[index[r]][i] (a F32 or BF16; dst F32, or BF16 as a: the
 * bits copied), nothing at all when the check found a bad index (so a bad call leaves dst
 * untouched even when nobody reads the check). */
__global__ void get_rows_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    if (a.index_check[0] >= 0)
        return;
    const gdn_cuda_view &src = a.src[0], &index = a.src[1], &dst = a.dst;
    const int64_t D = dst.ne[0];
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < a.count; e += stride) {
        const int64_t i = e % D, r = e / D;
        const int row = *(const int *)(index.data + r * index.nb[0]);
        const int64_t from = (int64_t)row * src.nb[1] + i * src.nb[0];
        if (dst.dtype == GDN_DTYPE_BF16)
            *(unsigned short *)(dst.data + r * dst.nb[1] + i * dst.nb[0]) =
                *(const unsigned short *)(src.data + from);
        else
            *(float *)(dst.data + r * dst.nb[1] + i * dst.nb[0]) = gdn_cuda_load(src, from);
    }
}

/* Block-wide check of an index written through (a tee's, set_rows'): every entry in 0..slots-1,
 * none twice. Bad position j is recorded as atomicMin(first_bad, 4j + kind), so the smallest j
 * wins whatever the thread order, and a repeat is charged to its later position. Up to 64 entries
 * each is compared with the ones before it (a step's sequences: cheaper than clearing a bitmap,
 * which cost 1.7 us per call at B=1); beyond, a shared bitmap finds whether there is a repeat at
 * all and the comparisons run only then. *first_bad is set by the caller just before (this
 * synchronises first); the caller synchronises after. */
__device__ void check_written_index(const gdn_cuda_view &index, int64_t slots, unsigned long long *first_bad)
{
    __shared__ unsigned seen[kSeenWords];
    __shared__ int repeated;
    const int64_t n = index.ne[0];
    const bool bitmap = n > 64 && slots <= (int64_t)kSeenWords * 32; /* the same in every thread */
    if (bitmap) {
        for (int w = threadIdx.x; w < kSeenWords; w += blockDim.x)
            seen[w] = 0;
        if (threadIdx.x == 0)
            repeated = 0;
    }
    __syncthreads(); /* the caller's *first_bad, and the bitmap, set before any thread records */
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        const int v = *(const int *)(index.data + j * index.nb[0]);
        if (v < 0 || v >= slots) {
            atomicMin(first_bad, (unsigned long long)(4 * j + kIndexWriteRange));
        } else if (bitmap) {
            const unsigned bit = 1u << (v & 31);
            if (atomicOr(&seen[v >> 5], bit) & bit)
                repeated = 1;
        }
    }
    if (bitmap) {
        __syncthreads();
        if (!repeated)
            return;
    }
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        const int v = *(const int *)(index.data + j * index.nb[0]);
        for (int64_t j2 = 0; j2 < j; j2++)
            if (*(const int *)(index.data + j2 * index.nb[0]) == v) {
                atomicMin(first_bad, (unsigned long long)(4 * j + kIndexWriteTwice));
                break;
            }
    }
}

/* Block 0 records the verdict of a block-wide check for the host: {position, its index value,
 * kind}, or position -1. Every block returns 1 when the call must write nothing. */
__device__ bool report_check(const gdn_cuda_op_args &a, unsigned long long first_bad, const gdn_cuda_view &read,
                             const gdn_cuda_view &written)
{
    const bool bad = first_bad != ~0ull;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const int64_t j = bad ? (int64_t)(first_bad / 4) : -1;
        const int kind = (int)(first_bad % 4);
        const gdn_cuda_view &index = kind >= kIndexWriteRange ? written : read;
        a.index_check[0] = j;
        a.index_check[1] = bad ? *(const int *)(index.data + j * index.nb[0]) : 0;
        a.index_check[2] = kind;
    }
    return bad;
}

/* set_rows: dst at a's position with dim `dim` replaced by index[position] (bits moved, F32 or
 * BF16), one thread per element of a; every block checks the index first (range, no repeat) and
 * the grid writes nothing on a bad one. */
__global__ void set_rows_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &src = a.src[0], &index = a.src[1], &dst = a.dst;
    __shared__ unsigned long long first_bad;
    if (threadIdx.x == 0)
        first_bad = ~0ull;
    check_written_index(index, dst.ne[a.dim], &first_bad);
    __syncthreads();
    if (report_check(a, first_bad, index, index))
        return;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < a.count; e += stride) {
        int64_t o[GDN_MAX_DIMS];
        unflatten(src.ne, e, o);
        const char *in = src.data + offset(src, o);
        o[a.dim] = *(const int *)(index.data + o[a.dim] * index.nb[0]);
        char *out = dst.data + offset(dst, o);
        if (src.dtype == GDN_DTYPE_BF16)
            *(unsigned short *)out = *(const unsigned short *)in;
        else
            *(unsigned *)out = *(const unsigned *)in;
    }
}

/* concat: dst = a ++ b along a.dim (F32 bits copied). */
__global__ void concat_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const int dim = a.dim;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < a.count; e += stride) {
        int64_t o[GDN_MAX_DIMS];
        unflatten(a.dst.ne, e, o);
        const int64_t out = offset(a.dst, o);
        const bool from_b = o[dim] >= a.src[0].ne[dim];
        if (from_b)
            o[dim] -= a.src[0].ne[dim];
        const gdn_cuda_view &src = a.src[from_b ? 1 : 0];
        *(unsigned *)(a.dst.data + out) = *(const unsigned *)(src.data + offset(src, o));
    }
}

/* concat with an index and/or a tee, one row of dst (dims 1..5) per thread, in order along dim 0
 * (the order gdn_cpu_concat_rows uses, which makes a tee that aliases the pool safe: element i
 * of a row is read before element i - offset <= i is written over it).
 * With an index every block first checks all of it (range, and the pool rule of
 * gdn_op_check_index) and the whole grid writes nothing on a bad entry, so no second launch is
 * needed; block 0 records the verdict for the host. */
__global__ void concat_rows_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &src0 = a.src[0], &index = a.src[2], &tee_index = a.src[3], &dst = a.dst, &tee = a.tee;
    if (a.indexed || a.tee_indexed) {
        __shared__ unsigned long long first_bad;
        if (threadIdx.x == 0)
            first_bad = ~0ull;
        if (a.tee_indexed)
            check_written_index(tee_index, tee.ne[a.outer], &first_bad);
        __syncthreads();
        const int64_t slots = src0.ne[a.outer], tee_slots = tee.ne[a.outer];
        const uintptr_t tee_lo = (uintptr_t)tee.data;
        const uintptr_t tee_hi = tee_lo + (uintptr_t)a.tee_bytes;
        for (int64_t j = threadIdx.x; a.indexed && j < index.ne[0]; j += blockDim.x) {
            const int slot = *(const int *)(index.data + j * index.nb[0]);
            int kind = -1;
            if (slot < 0 || slot >= slots) {
                kind = kIndexRange;
            } else if (a.tee_alias != 0) {
                const int64_t own_slot = a.tee_indexed ? *(const int *)(tee_index.data + j * tee_index.nb[0]) : j;
                if (own_slot < 0 || own_slot >= tee_slots)
                    continue; /* reported by the written index's check */
                const uintptr_t lo = (uintptr_t)(src0.data + (int64_t)slot * src0.nb[a.outer]);
                const uintptr_t own = (uintptr_t)(tee.data + own_slot * tee.nb[a.outer]);
                const uintptr_t hi = lo + (uintptr_t)a.part_bytes;
                const bool within = a.tee_alias == 1 && lo >= own && hi <= own + a.own_bytes &&
                                    (lo - own) % (uintptr_t)tee.nb[0] == 0;
                bool meets = !a.tee_indexed && lo < tee_hi && tee_lo < hi;
                for (int64_t j2 = 0; a.tee_indexed && !within && !meets && j2 < tee_index.ne[0]; j2++) {
                    const int s2 = *(const int *)(tee_index.data + j2 * tee_index.nb[0]);
                    const uintptr_t part = (uintptr_t)(tee.data + (int64_t)s2 * tee.nb[a.outer]);
                    meets = s2 >= 0 && s2 < tee_slots && lo < part + a.own_bytes && part < hi;
                }
                if (!within && meets)
                    kind = kIndexOverlap;
            }
            if (kind >= 0)
                atomicMin(&first_bad, (unsigned long long)(4 * j + kind));
        }
        __syncthreads();
        if (report_check(a, first_bad, index, tee_index))
            return;
    }
    const int dim = a.dim;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < a.count; r += stride) {
        int64_t o[GDN_MAX_DIMS];
        o[0] = 0;
        int64_t rest = r;
#pragma unroll
        for (int i = 1; i < GDN_MAX_DIMS; i++) {
            o[i] = rest % dst.ne[i];
            rest /= dst.ne[i];
        }
        char *tee_row = nullptr;
        if (tee.data != nullptr) {
            bool inside = true;
            int64_t off = 0;
#pragma unroll
            for (int i = 1; i < GDN_MAX_DIMS; i++) {
                int64_t t = o[i] - a.tee_offset[i];
                if (a.tee_indexed && i == a.outer)
                    t = *(const int *)(tee_index.data + o[i] * tee_index.nb[0]);
                inside = inside && t >= 0 && t < tee.ne[i];
                off += t * tee.nb[i];
            }
            if (inside)
                tee_row = tee.data + off;
        }
        const int64_t slot = a.indexed ? *(const int *)(index.data + o[a.outer] * index.nb[0]) : o[a.outer];
        char *out = dst.data + offset(dst, o);
        for (int64_t i = 0; i < dst.ne[0]; i++) {
            int64_t from[GDN_MAX_DIMS];
#pragma unroll
            for (int k = 0; k < GDN_MAX_DIMS; k++)
                from[k] = o[k];
            from[0] = i;
            const bool from_b = from[dim] >= src0.ne[dim];
            if (from_b)
                from[dim] -= src0.ne[dim];
            else
                from[a.outer] = slot;
            const gdn_cuda_view &src = a.src[from_b ? 1 : 0];
            const unsigned bits = *(const unsigned *)(src.data + offset(src, from));
            *(unsigned *)(out + i * dst.nb[0]) = bits;
            const int64_t t = i - a.tee_offset[0];
            if (tee_row != nullptr && t >= 0 && t < tee.ne[0])
                *(unsigned *)(tee_row + t * tee.nb[0]) = bits;
        }
    }
}

/* cpy: F32 and BF16 either way; equal dtypes copy bits (in place is safe: each thread reads its
 * element before writing it). */
__global__ void cpy_kernel(gdn_cuda_op_args a)
{
    gdn_cuda_wait_previous_grid();
    const gdn_cuda_view &src = a.src[0], &dst = a.dst;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < a.count; e += stride) {
        int64_t o[GDN_MAX_DIMS];
        unflatten(dst.ne, e, o);
        const char *in = src.data + offset(src, o);
        char *out = dst.data + offset(dst, o);
        if (src.dtype == dst.dtype && dst.dtype == GDN_DTYPE_BF16)
            *(unsigned short *)out = *(const unsigned short *)in;
        else if (src.dtype == dst.dtype)
            *(unsigned *)out = *(const unsigned *)in;
        else if (dst.dtype == GDN_DTYPE_BF16)
            *(unsigned short *)out = f32_to_bf16(*(const float *)in);
        else
            *(float *)out = gdn_cuda_load(src, in - src.data);
    }
}

int64_t count_of(const gdn_cuda_view &v)
{
    int64_t n = 1;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        n *= v.ne[i];
    return n;
}

} // namespace

gdn_status gdn_cuda_ssm_conv(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    args.count = count_of(args.dst);
    return gdn_cuda_launch_op(context, ssm_conv_kernel, gdn_cuda_blocks(context, args.count, kThreads), kThreads, args,
                              "ssm_conv kernel launch");
}

/* Bounds: a check kernel, the gather (which writes nothing on a bad index), then a synchronous
 * read-back of the check to report the bad index as GDN_ERROR_INVALID_ARGUMENT. The read-back
 * costs a stream sync per call; acceptable for now: get_rows runs once per step (the embedding
 * lookup of the new tokens), and reporting a bad token id as a status is what the API promises.
 * While the stream is being captured into a CUDA graph a sync is not allowed, so the read-back is
 * skipped there: a bad index then still writes nothing, but is not reported. */
gdn_status gdn_cuda_get_rows(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    args.count = count_of(args.dst);
    args.index_check = context->index_check;
    gdn_status status = gdn_cuda_launch_op(context, get_rows_check_kernel, 1u, (unsigned)kCheckThreads, args,
                                           "get_rows check kernel launch");
    if (status == GDN_OK)
        status = gdn_cuda_launch_op(context, get_rows_kernel, gdn_cuda_blocks(context, args.count, kThreads), kThreads,
                                    args, "get_rows kernel launch");
    if (status != GDN_OK)
        return status;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    status = gdn_cuda_check(cudaStreamIsCapturing(context->stream, &capture), "cudaStreamIsCapturing");
    if (status != GDN_OK || capture != cudaStreamCaptureStatusNone)
        return status;
    int64_t check[2] = {-1, 0};
    status = gdn_cuda_check(cudaMemcpyAsync(check, context->index_check, sizeof check, cudaMemcpyDeviceToHost,
                                            context->stream), "get_rows check read-back");
    if (status == GDN_OK)
        status = gdn_cuda_check(cudaStreamSynchronize(context->stream), "get_rows cudaStreamSynchronize");
    if (status != GDN_OK)
        return status;
    if (check[0] >= 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "get_rows: index[%lld]=%lld is outside 0..%lld (rows of a)",
                        (long long)check[0], (long long)check[1], (long long)(args.src[0].ne[1] - 1));
    return GDN_OK;
}

/* The verdict of a block-wide index check (concat, set_rows), read back outside stream capture
 * (as get_rows) and reported with the status gdn_op_check_index gives on the host. */
static gdn_status read_check(const gdn_cuda_context *context, const char *op, int64_t read_slots, int64_t write_slots)
{
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    gdn_status status = gdn_cuda_check(cudaStreamIsCapturing(context->stream, &capture), "cudaStreamIsCapturing");
    if (status != GDN_OK || capture != cudaStreamCaptureStatusNone)
        return status;
    int64_t check[3] = {-1, 0, 0};
    status = gdn_cuda_check(cudaMemcpyAsync(check, context->index_check, sizeof check, cudaMemcpyDeviceToHost,
                                            context->stream), "index check read-back");
    if (status == GDN_OK)
        status = gdn_cuda_check(cudaStreamSynchronize(context->stream), "index check cudaStreamSynchronize");
    if (status != GDN_OK || check[0] < 0)
        return status;
    const long long j = (long long)check[0], v = (long long)check[1];
    switch ((int)check[2]) {
    case kIndexRange:
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: index[%lld]=%lld is outside 0..%lld (slots of a)", op, j, v,
                        (long long)(read_slots - 1));
    case kIndexWriteRange:
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %s[%lld]=%lld is outside 0..%lld (slots written)", op,
                        read_slots ? "destination index" : "index", j, v, (long long)(write_slots - 1));
    case kIndexWriteTwice:
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "%s: %s[%lld]=%lld equals an earlier entry (a slot has one "
                        "writer)", op, read_slots ? "destination index" : "index", j, v);
    default:
        return gdn_fail(GDN_ERROR_OVERLAP, "%s: index[%lld]=%lld: the pool slot read meets destination 1 but does not "
                        "lie in its own part of it (a position may read only bytes no position writes, or a run of "
                        "its own part along dim 0)", op, j, v);
    }
}

/* Plain concat: one thread per element. With an index or a tee: one thread per row, an index
 * checked inside the kernel and its verdict read back (read_check). */
gdn_status gdn_cuda_concat(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    if (!args.indexed && args.tee.data == nullptr) {
        args.count = count_of(args.dst);
        return gdn_cuda_launch_op(context, concat_kernel, gdn_cuda_blocks(context, args.count, kThreads), kThreads,
                                  args, "concat kernel launch");
    }
    args.count = count_of(args.dst) / args.dst.ne[0];
    args.index_check = context->index_check;
    gdn_status status = gdn_cuda_launch_op(context, concat_rows_kernel, gdn_cuda_blocks(context, args.count, kThreads),
                                           kThreads, args, "concat kernel launch");
    if (status != GDN_OK || (!args.indexed && !args.tee_indexed))
        return status;
    return read_check(context, "concat", args.src[0].ne[args.outer], args.tee.ne[args.outer]);
}

gdn_status gdn_cuda_set_rows(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    args.count = count_of(args.src[0]);
    args.index_check = context->index_check;
    gdn_status status = gdn_cuda_launch_op(context, set_rows_kernel, gdn_cuda_blocks(context, args.count, kThreads),
                                           kThreads, args, "set_rows kernel launch");
    if (status != GDN_OK)
        return status;
    return read_check(context, "set_rows", 0, args.dst.ne[args.dim]);
}

gdn_status gdn_cuda_cpy(const gdn_cuda_context *context, gdn_cuda_op_args args)
{
    args.count = count_of(args.dst);
    return gdn_cuda_launch_op(context, cpy_kernel, gdn_cuda_blocks(context, args.count, kThreads), kThreads, args,
                              "cpy kernel launch");
}
