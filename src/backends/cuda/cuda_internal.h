/* cuda_internal.h: what the CUDA backend's files share: the backend context (device, stream,
 * timer events, device properties), the CUDA error helper, the op launchers, and the views,
 * argument struct, strided loads and launch helper of the op-table kernels (ops_cuda*.cu).
 * Not installed; included by the .cu files of src/backends/cuda only. */
#ifndef GDN_CUDA_INTERNAL_H
#define GDN_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "../backend.h"

/* backend->context of a CUDA backend. Owned by the backend, created by init, released by free. */
typedef struct gdn_cuda_context {
    int device;              /* device ordinal; made current on the calling thread by every call */
    cudaStream_t stream;     /* non-blocking stream: every op, copy and timer event is queued here */
    cudaEvent_t timer_begin; /* recorded by timer_start */
    cudaEvent_t timer_end;   /* recorded by timer_stop */
    int timer_started;       /* 1 between timer_start and timer_stop */
    int sm_count;            /* streaming multiprocessors */
    int cc_major, cc_minor;  /* compute capability */
    size_t l2_bytes;         /* L2 cache size */
    size_t smem_optin;       /* shared memory a block may take (opt-in); GDN_CUDA_SMEM_LIMIT=N in the
                                environment lowers it to N bytes, so that the tests run the kernel
                                shapes of smaller GPUs on a larger one */
    size_t smem_per_sm;      /* shared memory of one multiprocessor */
    char device_name[256];   /* cudaDeviceProp::name */
    int dependent_launch;    /* 1: launch kernels with programmatic dependent launch (sm_90+);
                                GDN_CUDA_DEPENDENT_LAUNCH=0 in the environment turns it off */
    int64_t *index_check;    /* device, 4 values: get_rows' and gated_delta_net's verdicts on their
                                indices (ops_cuda_data.cu uses the first 2, gdn_cuda.cu all 4) */
    void *chunk_scratch;       /* device: the chunked form's per-chunk factors (gdn_cuda_chunk.cu), */
    size_t chunk_scratch_bytes; /* grown on demand, never while the stream is being recorded */
} gdn_cuda_context;

/* Up to this B an indexed gated_delta_net call checks its index inside its kernel (every block: B^2/2
 * slot pairs or B^2 n_write overlap tests at most, a few per thread) instead of launching a
 * one-block check kernel first. GDN_CUDA_INDEX_CHECK=kernel sets gdn_check_in_kernel_max_b to 0
 * (the tests run both paths). */
#define GDN_CUDA_CHECK_IN_KERNEL_MAX_B 16
/* The same for replay calls. Measured on an H100 (replay T=4, Qwen3.6 shapes, docs/PERF.md): the
 * check inside the kernel is faster at B = 1 and 8 (8.9 / 22.0 us against 9.9 / 23.8), the
 * separate kernel at B = 16 (38.9 against 41.4 us: there every block's B^2 slot comparisons and
 * its barrier cost more than a launch). */
#define GDN_CUDA_REPLAY_CHECK_IN_KERNEL_MAX_B 8

/* GDN_OK when `error` is cudaSuccess; otherwise records "cuda: <what> failed: <name> (<text>)"
 * with gdn_fail, clears the runtime's last-error slot (so a non-sticky error is not reported
 * again by a later launch check) and returns GDN_ERROR_BACKEND. */
gdn_status gdn_cuda_check(cudaError_t error, const char *what);

/* Make the backend's device current on the calling thread (every entry point starts here, so a
 * backend works from any thread and beside backends on other devices). */
gdn_status gdn_cuda_use_device(const gdn_cuda_context *context);

/* Check once at init that the GDN kernels have an image this device can run (no sm_80/sm_90
 * cubin and no usable PTX gives a clear error here rather than at the first op). */
gdn_status gdn_cuda_gated_delta_net_probe(void);

/* The gated_delta_net entry of the table (gdn_cuda.cu): one kernel launch on the stream. */
gdn_status gdn_cuda_gated_delta_net(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                    const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape);

/* The gated_delta_net_chunked entry of the table (gdn_cuda_chunk.cu): the chunked form. */
gdn_status gdn_cuda_gated_delta_net_chunked(gdn_backend *backend, const gdn_gated_delta_net_params *params,
                                            const gdn_gated_delta_net_args *args, const gdn_gdn_shape *shape,
                                            int64_t n, int64_t chunk, const gdn_tensor *final,
                                            const gdn_tensor *final_index);

/* The gated_delta_net_chunk_fits entry (gdn_cuda_chunk.cu): whether the chunked form's kernels for
 * D and `chunk` fit this GPU's shared memory. */
int gdn_cuda_gated_delta_net_chunk_fits(const gdn_backend *backend, int64_t D, int64_t chunk);

/* From this T on, gated_delta_net with chunk 0 takes the chunked form; 0: never by itself.
 * Measured on an H100 (docs/PERF.md, 2026-11-25, "q and k once per q/k head"), two runs: the
 * chunked form against token by token at T = 32 is 1.12-1.15x (B = 1), 1.03-1.05x (B = 8) and
 * 0.96x (B = 64); at T = 48 1.41-1.43x, 1.12-1.13x and 0.99x; at T = 64 1.80-1.88x, 1.45-1.46x
 * and 1.28-1.29x. 48 gives up 1% at B = 64 there for 40% at B = 1. */
#define GDN_CUDA_CHUNK_MIN_TOKENS 48

/* ---------------------------------------------------------------------------------------------
 * The op table on CUDA (ops_cuda.cu, ops_cuda_elementwise.cu, ops_cuda_data.cu,
 * ops_cuda_matmul.cu). Every kernel takes one gdn_cuda_op_args (style rule 5) and indexes every
 * view through its ne/nb, so any byte strides work; a thread or warp owns whole output elements,
 * and each output element is computed in one fixed order that depends only on the op's sizes
 * along the reduced dimension (never on the number of rows, the grid or the layout), so every
 * op is batch invariant.
 * ------------------------------------------------------------------------------------------- */

/* A view as the kernels see it: byte strides signed so index math stays in int64. */
struct gdn_cuda_view {
    char *data;
    int64_t ne[GDN_MAX_DIMS];
    int64_t nb[GDN_MAX_DIMS];
    int dtype; /* gdn_dtype: F32, BF16 or I32 */
};

/* The one argument of every op-table kernel. */
struct gdn_cuda_op_args {
    gdn_cuda_view src[4]; /* in the op's source order (ops.h); unused ones zeroed */
    gdn_cuda_view dst;
    gdn_cuda_view dst1;   /* a second destination (gdn_gates: beta); data NULL otherwise */
    int kind;             /* gdn_op_kind */
    float scale;          /* scale: the factor */
    float eps;            /* norms */
    int dim;              /* concat, set_rows */
    int64_t count;        /* work items: dst elements, rows or dot products, per kernel */
    int64_t *index_check; /* get_rows: {first bad position or -1, its index} from its check kernel;
                             concat, set_rows: {first bad position or -1, its index, kIndex*} */
    /* concat with an index (src[2]) and/or a tee (the gather and copy the passes fold in), the
     * tee perhaps written through an index of its own (src[3]: position j into slot src[3][j]) */
    int indexed;          /* 1: src[0]'s position j along `outer` is slot index[j] */
    int tee_indexed;      /* 1: the tee is a pool written through src[3] along `outer` */
    int outer;            /* the dimension the index selects along */
    gdn_cuda_view tee;    /* data NULL: no tee */
    int64_t tee_offset[GDN_MAX_DIMS];
    int tee_alias;        /* 0: the tee cannot meet the pool; 1: a slot read that meets the tee must
                             be a run of the position's own part along dim 0 (gdn_op_part_within);
                             2: no slot read may meet it */
    int64_t part_bytes;   /* span of one slot of the pool */
    int64_t own_bytes;    /* span of one position's part of the tee */
    int64_t tee_bytes;    /* span of the tee */
};

/* The kernel view of a validated tensor. */
static inline gdn_cuda_view gdn_cuda_view_of(const gdn_tensor *t)
{
    gdn_cuda_view v;
    v.data = (char *)t->data;
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        v.ne[i] = t->ne[i];
        v.nb[i] = (int64_t)t->nb[i];
    }
    v.dtype = (int)t->dtype;
    return v;
}

/* Programmatic dependent launch: wait for the previous grid on the stream (complete, its writes
 * visible) before touching memory, then let the next one start its prologue. No-ops before sm_90
 * or without the launch attribute. Every op-table kernel calls this first. */
static __device__ __forceinline__ void gdn_cuda_wait_previous_grid()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/* The two halves of gdn_cuda_wait_previous_grid, for a kernel that has work to do before it
 * needs the previous grid's results (the decode mul_mat starts streaming weights first) or
 * that should let the next grid in only near its end. */
static __device__ __forceinline__ void gdn_cuda_grid_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

static __device__ __forceinline__ void gdn_cuda_grid_release()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/* Byte offset of the element whose flat index (dim 0 fastest) over counts `ne` is `e`. */
static __device__ __forceinline__ int64_t gdn_cuda_offset_flat(const gdn_cuda_view &v, const int64_t *ne, int64_t e)
{
    int64_t off = 0;
#pragma unroll
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        off += (e % ne[i]) * v.nb[i];
        e /= ne[i];
    }
    return off;
}

/* Element at byte offset `off` of a F32 or BF16 view, as a float (BF16 -> F32 is exact). */
static __device__ __forceinline__ float gdn_cuda_load(const gdn_cuda_view &v, int64_t off)
{
    if (v.dtype == GDN_DTYPE_BF16)
        return __uint_as_float((unsigned)*(const unsigned short *)(v.data + off) << 16);
    return *(const float *)(v.data + off);
}

/* Launch `kernel` on the context's stream with one args struct (a grid of any shape, `smem` bytes
 * of dynamic shared memory), with programmatic dependent launch where the device and the context
 * allow it; the launch is checked. */
template <typename Args>
static inline gdn_status gdn_cuda_launch_grid(const gdn_cuda_context *context, void (*kernel)(Args), dim3 grid,
                                              unsigned threads, size_t smem, const Args &args, const char *what)
{
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = smem;
    config.stream = context->stream;
    config.attrs = &attribute;
    config.numAttrs = context->cc_major >= 9 && context->dependent_launch ? 1 : 0;
    return gdn_cuda_check(cudaLaunchKernelEx(&config, kernel, args), what);
}

/* The same for the op table's one-dimensional grids without dynamic shared memory. */
template <typename Args>
static inline gdn_status gdn_cuda_launch_op(const gdn_cuda_context *context, void (*kernel)(Args), unsigned blocks,
                                            unsigned threads, const Args &args, const char *what)
{
    return gdn_cuda_launch_grid(context, kernel, dim3(blocks), threads, 0, args, what);
}

/* Blocks for `items` work items of `per_block` each, capped (kernels loop grid-stride). */
static inline unsigned gdn_cuda_blocks(const gdn_cuda_context *context, int64_t items, int64_t per_block)
{
    int64_t blocks = (items + per_block - 1) / per_block;
    const int64_t cap = (int64_t)context->sm_count * 32;
    return (unsigned)(blocks < 1 ? 1 : blocks > cap ? cap : blocks);
}

/* The run_op entry of the table (ops_cuda.cu): any op-table kind but gated_delta_net. */
gdn_status gdn_cuda_run_op(gdn_backend *backend, const gdn_op_call *call);
/* 1 for the kinds gdn_cuda_run_op runs. */
int gdn_cuda_runs_op(gdn_op_kind kind);

/* The per-family launchers; `args` holds the views, parameters and kind (count set here).
 * Each queues its kernels on context->stream; get_rows also waits for its index check. */
gdn_status gdn_cuda_elementwise(const gdn_cuda_context *context, gdn_cuda_op_args args); /* add .. exp */
gdn_status gdn_cuda_norm(const gdn_cuda_context *context, gdn_cuda_op_args args);        /* l2, rms, gated */
gdn_status gdn_cuda_ssm_conv(const gdn_cuda_context *context, gdn_cuda_op_args args);
gdn_status gdn_cuda_get_rows(const gdn_cuda_context *context, gdn_cuda_op_args args);
gdn_status gdn_cuda_gates(const gdn_cuda_context *context, gdn_cuda_op_args args);
gdn_status gdn_cuda_concat(const gdn_cuda_context *context, gdn_cuda_op_args args);
gdn_status gdn_cuda_cpy(const gdn_cuda_context *context, gdn_cuda_op_args args);
gdn_status gdn_cuda_set_rows(const gdn_cuda_context *context, gdn_cuda_op_args args);
gdn_status gdn_cuda_mul_mat(const gdn_cuda_context *context, gdn_cuda_op_args args);

#endif
