/* backend_cpu.c: the CPU backend's table (gdn_cpu_backend_ops): a thread pool, a SIMD level
 * chosen once at init, host memory, copies and a monotonic timer. The op itself is in
 * gdn_cpu.c. */
#define _POSIX_C_SOURCE 200809L
#include "gdn_cpu.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef GDN_CPU_X86
#include <cpuid.h>
#endif

/* Copies below this size are one memcpy on the calling thread: waking the pool costs more. */
#define GDN_CPU_COPY_SPLIT_BYTES (256u * 1024u)

/* Which SIMD levels this CPU and its OS support (the OS must save the wider registers). */
static void gdn_cpu_detect(int *has_avx2, int *has_avx512)
{
    *has_avx2 = 0;
    *has_avx512 = 0;
#ifdef GDN_CPU_X86
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return;
    const int osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1, fma = (ecx >> 12) & 1;
    if (!osxsave || !avx)
        return;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ __volatile__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    const int ymm_saved = (xcr0_lo & 0x06) == 0x06;        /* SSE + AVX state */
    const int zmm_saved = (xcr0_lo & 0xe6) == 0xe6;        /* + opmask, ZMM0-15 high, ZMM16-31 */
    if (__get_cpuid_max(0, NULL) < 7)
        return;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    *has_avx2 = ymm_saved && fma && ((ebx >> 5) & 1);
    *has_avx512 = zmm_saved && ((ebx >> 16) & 1);
#endif
}

/* The best level present, or the one GDN_CPU_SIMD (scalar|avx2|avx512) asks for. */
static gdn_status gdn_cpu_choose_simd(gdn_cpu_simd *out)
{
    int has_avx2, has_avx512;
    gdn_cpu_detect(&has_avx2, &has_avx512);
    *out = has_avx512 ? GDN_CPU_SIMD_AVX512 : has_avx2 ? GDN_CPU_SIMD_AVX2 : GDN_CPU_SIMD_SCALAR;
    const char *forced = getenv("GDN_CPU_SIMD");
    if (forced == NULL || forced[0] == '\0')
        return GDN_OK;
    if (strcmp(forced, "scalar") == 0) {
        *out = GDN_CPU_SIMD_SCALAR;
    } else if (strcmp(forced, "avx2") == 0) {
        if (!has_avx2)
            return gdn_fail(GDN_ERROR_UNSUPPORTED, "cpu backend: GDN_CPU_SIMD=avx2 but this CPU or "
                            "OS lacks AVX2 and FMA");
        *out = GDN_CPU_SIMD_AVX2;
    } else if (strcmp(forced, "avx512") == 0) {
        if (!has_avx512)
            return gdn_fail(GDN_ERROR_UNSUPPORTED, "cpu backend: GDN_CPU_SIMD=avx512 but this CPU or "
                            "OS lacks AVX-512F");
        *out = GDN_CPU_SIMD_AVX512;
    } else {
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cpu backend: GDN_CPU_SIMD=\"%.32s\", expected "
                        "scalar, avx2 or avx512", forced);
    }
    return GDN_OK;
}

static const gdn_cpu_kernels *gdn_cpu_kernels_for(gdn_cpu_simd simd)
{
#ifdef GDN_CPU_X86
    if (simd == GDN_CPU_SIMD_AVX512)
        return &gdn_cpu_kernels_avx512;
    if (simd == GDN_CPU_SIMD_AVX2)
        return &gdn_cpu_kernels_avx2;
#endif
    (void)simd;
    return &gdn_cpu_kernels_scalar;
}

/* Per-core L2 cache size in bytes; 1 MiB when the system does not say. */
static size_t gdn_cpu_l2_bytes(void)
{
    long bytes = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return bytes > 0 ? (size_t)bytes : (size_t)1 << 20;
}

static gdn_status gdn_cpu_init(gdn_backend *backend, const gdn_backend_options *options)
{
    int n_threads = options->n_threads;
    if (n_threads == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = online > 0 ? (int)(online < 1024 ? online : 1024) : 1;
    }
    gdn_cpu_simd simd;
    gdn_status st = gdn_cpu_choose_simd(&simd);
    if (st != GDN_OK)
        return st;
    gdn_cpu_context *context = calloc(1, sizeof *context);
    if (context == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "cpu backend: cannot allocate the context");
    st = gdn_cpu_threadpool_create(&context->pool, n_threads);
    if (st != GDN_OK) {
        free(context);
        return st;
    }
    context->n_threads = n_threads;
    context->simd = simd;
    context->kernels = gdn_cpu_kernels_for(simd);
    /* From this T on, chunk 0 takes the chunked form (32-token chunks): on a 2-core EPYC VM with
     * AVX-512 it was 1.30-1.56x the token-by-token op at T = 64 for B = 1 and 4 in three runs
     * (0.96-1.09x at 48), and with the AVX2 kernels on the same VM 1.04-1.18x at 64 (0.76-0.87x
     * at 48) (docs/PERF.md, "CPU chunk threshold: 64"). */
    backend->chunk_min_tokens = 64;
    context->stream_threshold = gdn_cpu_l2_bytes() * (size_t)n_threads;
    backend->context = context;
    snprintf(backend->name, sizeof backend->name, "cpu (%s, %d thread%s)", context->kernels->name,
             n_threads, n_threads == 1 ? "" : "s");
    return GDN_OK;
}

static void gdn_cpu_free(gdn_backend *backend)
{
    gdn_cpu_context *context = backend->context;
    if (context == NULL)
        return;
    gdn_cpu_threadpool_free(context->pool);
    free(context);
    backend->context = NULL;
}

static gdn_status gdn_cpu_alloc(gdn_backend *backend, size_t bytes, void **ptr)
{
    (void)backend;
    void *p = NULL;
    if (posix_memalign(&p, 256, bytes) != 0)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "cpu backend: cannot allocate %zu bytes", bytes);
    *ptr = p;
    return GDN_OK;
}

static void gdn_cpu_dealloc(gdn_backend *backend, void *ptr)
{
    (void)backend;
    free(ptr);
}

typedef struct gdn_cpu_copy_job {
    char *dst;
    const char *src;
    size_t bytes;
    size_t piece;        /* bytes per claim, a multiple of 4 KiB */
    void (*copy_stream)(void *dst, const void *src, size_t bytes); /* NULL: plain memcpy */
    atomic_size_t next;  /* first byte not yet claimed */
} gdn_cpu_copy_job;

/* Threads claim large 4 KiB-aligned pieces and copy them. Benchmarks use this copy as the
 * machine's copy-bandwidth ceiling, so large copies stream their stores past the cache, as the
 * Gated DeltaNet kernel does for its snapshots: each destination byte is then written once
 * instead of read for ownership and written back. Host memory is backend memory, so upload and
 * download are this copy too: a large buffer's pages are then first touched by the pool's
 * threads, piece by piece (gdn_backend_zero of a new state cache included), which on a machine
 * of several NUMA nodes spreads them over the nodes the threads run on instead of placing all of
 * them on the calling thread's (the op hands out its work dynamically as well, so no one thread
 * owns a range). */
static void gdn_cpu_copy_worker(void *ctx, int thread_index, int n_threads)
{
    (void)thread_index;
    (void)n_threads;
    gdn_cpu_copy_job *job = ctx;
    for (;;) {
        size_t start = atomic_fetch_add_explicit(&job->next, job->piece, memory_order_relaxed);
        if (start >= job->bytes)
            break;
        size_t length = job->bytes - start < job->piece ? job->bytes - start : job->piece;
        if (job->copy_stream != NULL)
            job->copy_stream(job->dst + start, job->src + start, length);
        else
            memcpy(job->dst + start, job->src + start, length);
    }
}

static gdn_status gdn_cpu_copy(gdn_backend *backend, void *dst, const void *src, size_t bytes)
{
    gdn_cpu_context *context = backend->context;
    if (bytes < GDN_CPU_COPY_SPLIT_BYTES) {
        memcpy(dst, src, bytes);
        return GDN_OK;
    }
    gdn_cpu_copy_job job;
    job.dst = dst;
    job.src = src;
    job.bytes = bytes;
    /* About 4 pieces per thread, at least 64 KiB each. */
    job.piece = (bytes / ((size_t)context->n_threads * 4) + 4095) & ~(size_t)4095;
    if (job.piece < ((size_t)64 << 10))
        job.piece = (size_t)64 << 10;
    job.copy_stream = bytes >= context->stream_threshold ? context->kernels->copy_stream : NULL;
    atomic_init(&job.next, 0);
    gdn_cpu_threadpool_run(context->pool, gdn_cpu_copy_worker, &job);
    return GDN_OK;
}

/* Every op runs to completion before returning: nothing is ever queued. */
static gdn_status gdn_cpu_synchronize(gdn_backend *backend)
{
    (void)backend;
    return GDN_OK;
}

static gdn_status gdn_cpu_timer_start(gdn_backend *backend)
{
    gdn_cpu_context *context = backend->context;
    if (clock_gettime(CLOCK_MONOTONIC, &context->timer_start) != 0)
        return gdn_fail(GDN_ERROR_BACKEND, "cpu backend: clock_gettime(CLOCK_MONOTONIC) failed");
    return GDN_OK;
}

static gdn_status gdn_cpu_timer_stop(gdn_backend *backend, double *milliseconds)
{
    gdn_cpu_context *context = backend->context;
    struct timespec now;
    if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
        return gdn_fail(GDN_ERROR_BACKEND, "cpu backend: clock_gettime(CLOCK_MONOTONIC) failed");
    *milliseconds = (double)(now.tv_sec - context->timer_start.tv_sec) * 1e3 +
                    (double)(now.tv_nsec - context->timer_start.tv_nsec) * 1e-6;
    return GDN_OK;
}

/* Designated initializers: entries the CPU has no use for (recording for replay) stay NULL. */
/* The CPU backend runs every op of the table. */
static int gdn_cpu_supports_op(const gdn_backend *backend, gdn_op_kind kind)
{
    (void)backend;
    return kind >= 0 && kind < GDN_OP_COUNT;
}

const gdn_backend_ops gdn_cpu_backend_ops = {
    .init = gdn_cpu_init,
    .free = gdn_cpu_free,
    .alloc = gdn_cpu_alloc,
    .dealloc = gdn_cpu_dealloc,
    .upload = gdn_cpu_copy,
    .download = gdn_cpu_copy,
    .copy = gdn_cpu_copy,
    .synchronize = gdn_cpu_synchronize,
    .timer_start = gdn_cpu_timer_start,
    .timer_stop = gdn_cpu_timer_stop,
    .gated_delta_net = gdn_cpu_gated_delta_net,
    .gated_delta_net_chunked = gdn_cpu_gated_delta_net_chunked,
    .run_op = gdn_cpu_run_op,
    .supports_op = gdn_cpu_supports_op,
};
