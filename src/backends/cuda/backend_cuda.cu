/* backend_cuda.cu: the CUDA backend's table: availability probe, init/free, device memory,
 * copies, synchronisation and the event timer. Everything is queued on the context's one
 * non-blocking stream; every CUDA call is checked and a failure becomes GDN_ERROR_BACKEND with
 * the call, the error name and its text. The GDN kernel lives in gdn_cuda.cu, the other ops of
 * the op table in ops_cuda*.cu.
 * Host code only: no C++ runtime (no new, exceptions or guarded statics), so C programs can link
 * the static library. */
#include "cuda_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

gdn_status gdn_cuda_check(cudaError_t error, const char *what)
{
    if (error == cudaSuccess)
        return GDN_OK;
    (void)cudaGetLastError(); /* reset the last-error slot; a sticky error stays in the context */
    return gdn_fail(GDN_ERROR_BACKEND, "cuda: %s failed: %s (%s)", what, cudaGetErrorName(error),
                    cudaGetErrorString(error));
}

gdn_status gdn_cuda_use_device(const gdn_cuda_context *context)
{
    return gdn_cuda_check(cudaSetDevice(context->device), "cudaSetDevice");
}

/* Evaluate a CUDA call; on failure return its gdn status from the enclosing function. */
#define GDN_CUDA_TRY(call)                                            \
    do {                                                              \
        gdn_status gdn_cuda_try_status = gdn_cuda_check((call), #call); \
        if (gdn_cuda_try_status != GDN_OK)                            \
            return gdn_cuda_try_status;                               \
    } while (0)

static gdn_cuda_context *context_of(gdn_backend *backend)
{
    return (gdn_cuda_context *)backend->context;
}

/* The reason for "not available" must be static text that never changes (the public API hands
 * out the pointer), so each cudaGetDeviceCount failure we can name has its own literal. */
static const char *unavailable_reason(cudaError_t error)
{
    switch (error) {
    case cudaErrorNoDevice:
        return "no CUDA device found (cudaGetDeviceCount: cudaErrorNoDevice, no CUDA-capable device "
               "is detected)";
    case cudaErrorInsufficientDriver:
        return "no usable CUDA driver (cudaGetDeviceCount: cudaErrorInsufficientDriver, the NVIDIA "
               "driver is older than the CUDA runtime gdn was built with)";
    case cudaErrorSystemDriverMismatch:
        return "no usable CUDA driver (cudaGetDeviceCount: cudaErrorSystemDriverMismatch, the driver "
               "and its kernel module have different versions)";
    case cudaErrorCompatNotSupportedOnDevice:
        return "no usable CUDA driver (cudaGetDeviceCount: cudaErrorCompatNotSupportedOnDevice, "
               "forward compatibility is not supported on this device)";
    case cudaErrorDevicesUnavailable:
        return "no CUDA device available (cudaGetDeviceCount: cudaErrorDevicesUnavailable, devices "
               "are busy or in exclusive-process mode)";
    case cudaErrorNotPermitted:
        return "CUDA not permitted (cudaGetDeviceCount: cudaErrorNotPermitted)";
    case cudaErrorInitializationError:
        return "CUDA failed to initialise (cudaGetDeviceCount: cudaErrorInitializationError)";
    default:
        return "CUDA runtime unusable (cudaGetDeviceCount failed with an unexpected error)";
    }
}

extern "C" int gdn_cuda_available(const char **why)
{
    int count = 0;
    cudaError_t error = cudaGetDeviceCount(&count);
    if (error != cudaSuccess) {
        (void)cudaGetLastError();
        if (why)
            *why = unavailable_reason(error);
        return 0;
    }
    if (count < 1) {
        if (why)
            *why = "no CUDA device found (cudaGetDeviceCount returned 0 devices)";
        return 0;
    }
    if (why)
        *why = "";
    return 1;
}

static void context_release(gdn_cuda_context *context)
{
    /* Teardown is best effort: errors are cleared, not reported (free returns void). The stream
     * is drained first so no queued work still uses the events. */
    if (cudaSetDevice(context->device) == cudaSuccess && context->stream != NULL)
        (void)cudaStreamSynchronize(context->stream);
    if (context->index_check != NULL)
        (void)cudaFree(context->index_check);
    if (context->chunk_scratch != NULL)
        (void)cudaFree(context->chunk_scratch);
    if (context->timer_end != NULL)
        (void)cudaEventDestroy(context->timer_end);
    if (context->timer_begin != NULL)
        (void)cudaEventDestroy(context->timer_begin);
    if (context->stream != NULL)
        (void)cudaStreamDestroy(context->stream);
    (void)cudaGetLastError();
    free(context);
}

static gdn_status cuda_init_context(gdn_cuda_context *context, const gdn_backend_options *options)
{
    int count = 0;
    GDN_CUDA_TRY(cudaGetDeviceCount(&count));
    if (options->device < 0 || options->device >= count)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT,
                        "backend_init: CUDA device %d requested, expected 0..%d (%d present)",
                        (int)options->device, count - 1, count);
    context->device = options->device;
    GDN_CUDA_TRY(cudaSetDevice(context->device));

    cudaDeviceProp prop;
    GDN_CUDA_TRY(cudaGetDeviceProperties(&prop, context->device));
    if (prop.major < 8)
        return gdn_fail(GDN_ERROR_UNSUPPORTED,
                        "backend_init: CUDA device %d (%s) has compute capability %d.%d, expected "
                        ">= 8.0 (gdn is built for sm_80 and sm_90)",
                        context->device, prop.name, prop.major, prop.minor);
    context->sm_count = prop.multiProcessorCount;
    context->cc_major = prop.major;
    context->cc_minor = prop.minor;
    context->l2_bytes = (size_t)prop.l2CacheSize;
    context->smem_optin = prop.sharedMemPerBlockOptin;
    context->smem_per_sm = prop.sharedMemPerMultiprocessor;
    const char *smem_limit = getenv("GDN_CUDA_SMEM_LIMIT");
    if (smem_limit != NULL && strtoull(smem_limit, NULL, 10) < context->smem_optin)
        context->smem_optin = (size_t)strtoull(smem_limit, NULL, 10);
    const char *dependent = getenv("GDN_CUDA_DEPENDENT_LAUNCH");
    context->dependent_launch = !(dependent != NULL && strcmp(dependent, "0") == 0);
    snprintf(context->device_name, sizeof context->device_name, "%s", prop.name);

    GDN_CUDA_TRY(cudaStreamCreateWithFlags(&context->stream, cudaStreamNonBlocking));
    GDN_CUDA_TRY(cudaEventCreate(&context->timer_begin));
    GDN_CUDA_TRY(cudaEventCreate(&context->timer_end));
    GDN_CUDA_TRY(cudaMalloc((void **)&context->index_check, 4 * sizeof *context->index_check));
    return gdn_cuda_gated_delta_net_probe();
}

static gdn_status cuda_init(gdn_backend *backend, const gdn_backend_options *options)
{
    gdn_cuda_context *context = (gdn_cuda_context *)calloc(1, sizeof *context);
    if (context == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "backend_init: cannot allocate the CUDA context");
    gdn_status status = cuda_init_context(context, options);
    if (status != GDN_OK) {
        context_release(context);
        return status;
    }
    backend->context = context;
    const char *check = getenv("GDN_CUDA_INDEX_CHECK");
    const int own_kernel = check != NULL && strcmp(check, "kernel") == 0;
    backend->gdn_check_in_kernel_max_b = own_kernel ? 0 : GDN_CUDA_CHECK_IN_KERNEL_MAX_B;
    backend->gdn_replay_check_in_kernel_max_b = own_kernel ? 0 : GDN_CUDA_REPLAY_CHECK_IN_KERNEL_MAX_B;
    backend->chunk_min_tokens = GDN_CUDA_CHUNK_MIN_TOKENS;
    snprintf(backend->name, sizeof backend->name, "cuda (%.100s, sm_%d%d)", context->device_name,
             context->cc_major, context->cc_minor);
    return GDN_OK;
}

static void cuda_free(gdn_backend *backend)
{
    if (backend->context != NULL)
        context_release(context_of(backend));
    backend->context = NULL;
}

static gdn_status cuda_alloc(gdn_backend *backend, size_t bytes, void **ptr)
{
    gdn_status status = gdn_cuda_use_device(context_of(backend));
    if (status != GDN_OK)
        return status;
    /* cudaMalloc returns 256-byte aligned memory, as gdn_backend_alloc promises. */
    cudaError_t error = cudaMalloc(ptr, bytes);
    if (error == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        *ptr = NULL;
        size_t free_bytes = 0, total_bytes = 0;
        if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
            (void)cudaGetLastError();
            return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "backend_alloc: cudaMalloc of %zu bytes failed: "
                            "out of device memory", bytes);
        }
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY,
                        "backend_alloc: cudaMalloc of %zu bytes failed: out of device memory "
                        "(%zu of %zu bytes free)", bytes, free_bytes, total_bytes);
    }
    if (error != cudaSuccess) {
        *ptr = NULL;
        return gdn_cuda_check(error, "cudaMalloc");
    }
    return GDN_OK;
}

static void cuda_dealloc(gdn_backend *backend, void *ptr)
{
    /* Returns void: a failure (only possible for a bad pointer or a broken context) is cleared. */
    if (gdn_cuda_use_device(context_of(backend)) != GDN_OK)
        return;
    if (cudaFree(ptr) != cudaSuccess)
        (void)cudaGetLastError();
}

static gdn_status cuda_upload(gdn_backend *backend, void *dst, const void *src_host, size_t bytes)
{
    gdn_cuda_context *context = context_of(backend);
    GDN_CUDA_TRY(cudaSetDevice(context->device));
    GDN_CUDA_TRY(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, context->stream));
    GDN_CUDA_TRY(cudaStreamSynchronize(context->stream));
    return GDN_OK;
}

static gdn_status cuda_download(gdn_backend *backend, void *dst_host, const void *src, size_t bytes)
{
    gdn_cuda_context *context = context_of(backend);
    GDN_CUDA_TRY(cudaSetDevice(context->device));
    GDN_CUDA_TRY(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, context->stream));
    GDN_CUDA_TRY(cudaStreamSynchronize(context->stream));
    return GDN_OK;
}

/* Queued like an op, not waited for. The bench uses it as its device bandwidth ceiling. */
static gdn_status cuda_copy(gdn_backend *backend, void *dst, const void *src, size_t bytes)
{
    gdn_cuda_context *context = context_of(backend);
    GDN_CUDA_TRY(cudaSetDevice(context->device));
    GDN_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, context->stream));
    return GDN_OK;
}

static gdn_status cuda_synchronize(gdn_backend *backend)
{
    gdn_cuda_context *context = context_of(backend);
    GDN_CUDA_TRY(cudaSetDevice(context->device));
    GDN_CUDA_TRY(cudaStreamSynchronize(context->stream));
    return GDN_OK;
}

static gdn_status cuda_timer_start(gdn_backend *backend)
{
    gdn_cuda_context *context = context_of(backend);
    GDN_CUDA_TRY(cudaSetDevice(context->device));
    GDN_CUDA_TRY(cudaEventRecord(context->timer_begin, context->stream));
    context->timer_started = 1;
    return GDN_OK;
}

static gdn_status cuda_timer_stop(gdn_backend *backend, double *milliseconds)
{
    gdn_cuda_context *context = context_of(backend);
    if (!context->timer_started)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "backend_timer_stop: timer_start was not called");
    context->timer_started = 0;
    GDN_CUDA_TRY(cudaSetDevice(context->device));
    GDN_CUDA_TRY(cudaEventRecord(context->timer_end, context->stream));
    GDN_CUDA_TRY(cudaEventSynchronize(context->timer_end));
    float elapsed = 0.0f;
    GDN_CUDA_TRY(cudaEventElapsedTime(&elapsed, context->timer_begin, context->timer_end));
    *milliseconds = (double)elapsed;
    return GDN_OK;
}

/* Positional initialisers (designated ones are not C++17); the order is backend.h's. */
/* Recording is stream capture into a CUDA graph, instantiated at the end (one launch to replay
 * a whole step). Thread-local capture mode: other threads' CUDA calls are not disturbed. */
static int cuda_supports_op(const gdn_backend *backend, gdn_op_kind kind)
{
    (void)backend;
    return kind == GDN_OP_GATED_DELTA_NET || kind == GDN_OP_GATED_DELTA_NET_REPLAY || gdn_cuda_runs_op(kind);
}

static gdn_status cuda_record_begin(gdn_backend *backend)
{
    gdn_cuda_context *context = context_of(backend);
    gdn_status status = gdn_cuda_use_device(context);
    if (status != GDN_OK)
        return status;
    return gdn_cuda_check(cudaStreamBeginCapture(context->stream, cudaStreamCaptureModeThreadLocal),
                          "cudaStreamBeginCapture");
}

/* Always ends the capture (so the stream is usable again); *handle gets the executable graph.
 * handle == NULL (the caller ran out of memory) discards the graph. */
static gdn_status cuda_record_end(gdn_backend *backend, void **handle)
{
    gdn_cuda_context *context = context_of(backend);
    gdn_status status = gdn_cuda_use_device(context);
    if (status != GDN_OK)
        return status;
    cudaGraph_t graph = NULL;
    status = gdn_cuda_check(cudaStreamEndCapture(context->stream, &graph), "cudaStreamEndCapture");
    if (status != GDN_OK || handle == NULL) {
        if (graph)
            cudaGraphDestroy(graph);
        return status;
    }
    cudaGraphExec_t exec = NULL;
    status = gdn_cuda_check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
    cudaGraphDestroy(graph);
    if (status == GDN_OK)
        *handle = exec;
    return status;
}

static gdn_status cuda_replay(gdn_backend *backend, void *handle)
{
    gdn_cuda_context *context = context_of(backend);
    gdn_status status = gdn_cuda_use_device(context);
    if (status != GDN_OK)
        return status;
    return gdn_cuda_check(cudaGraphLaunch((cudaGraphExec_t)handle, context->stream), "cudaGraphLaunch");
}

static void cuda_recording_free(gdn_backend *backend, void *handle)
{
    if (gdn_cuda_use_device(context_of(backend)) == GDN_OK)
        cudaGraphExecDestroy((cudaGraphExec_t)handle);
}

extern "C" const gdn_backend_ops gdn_cuda_backend_ops = {
    cuda_init,        /* init */
    cuda_free,        /* free */
    cuda_alloc,       /* alloc */
    cuda_dealloc,     /* dealloc */
    cuda_upload,      /* upload */
    cuda_download,    /* download */
    cuda_copy,        /* copy */
    cuda_synchronize, /* synchronize */
    cuda_timer_start, /* timer_start */
    cuda_timer_stop,  /* timer_stop */
    gdn_cuda_gated_delta_net, /* gated_delta_net */
    gdn_cuda_gated_delta_net_chunked, /* gated_delta_net_chunked (gdn_cuda_chunk.cu) */
    gdn_cuda_gated_delta_net_chunk_fits, /* gated_delta_net_chunk_fits (gdn_cuda_chunk.cu) */
    gdn_cuda_run_op,          /* run_op: the op table's other ops (ops_cuda.cu) */
    cuda_supports_op,         /* supports_op */
    cuda_record_begin,        /* record_begin */
    cuda_record_end,          /* record_end */
    cuda_replay,              /* replay */
    cuda_recording_free,      /* recording_free */
};
