/* cuda_internal.h: what the CUDA backend's files share: the backend context (device, stream,
 * timer events, device properties), the CUDA error helper and the op launchers. Not installed;
 * included by the .cu files of src/backends/cuda only. */
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
    char device_name[256];   /* cudaDeviceProp::name */
    int dependent_launch;    /* 1: launch kernels with programmatic dependent launch (sm_90+);
                                GDN_CUDA_DEPENDENT_LAUNCH=0 in the environment turns it off */
} gdn_cuda_context;

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

#endif
