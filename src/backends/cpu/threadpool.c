/* threadpool.c: the CPU backend's persistent pthread pool (see threadpool.h).
 *
 * One 64-bit word, `job`, publishes and closes each job:
 *     bits 63..32  generation of the current job (bumped once per job)
 *     bit  31      closed: the caller has finished its share, nobody may join any more
 *     bits 30..0   workers currently inside fn
 * A worker joins generation g with a compare-and-swap that succeeds only while the word still
 * says g and open; the caller closes the job and waits for the count to drop to 0. So fn and
 * ctx are never read after run() has returned, and a late worker never runs a job twice. */
#define _POSIX_C_SOURCE 200809L
#include "threadpool.h"
#include "../../core/internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GDN_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define GDN_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define GDN_CPU_RELAX() ((void)0)
#endif

/* Polls of `job` before a worker sleeps: with pause at ~40..140 cycles this is roughly
 * 0.1..1 ms, longer than the gap between the layers of one decode step. */
#define GDN_CPU_SPIN_POLLS 16384

#define GDN_CPU_JOB_CLOSED ((uint64_t)1 << 31)
#define GDN_CPU_JOB_COUNT ((uint64_t)GDN_CPU_JOB_CLOSED - 1)

typedef struct gdn_cpu_worker {
    gdn_cpu_threadpool *pool;
    int index;
} gdn_cpu_worker;

struct gdn_cpu_threadpool {
    int n_threads;
    pthread_t *threads;      /* n_threads - 1 workers */
    gdn_cpu_worker *workers; /* their arguments */
    int n_started;

    pthread_mutex_t mutex;   /* sleeping workers wait on `wake`; new jobs are published under it */
    pthread_cond_t wake;
    _Atomic uint64_t job;    /* generation | closed | count, as described above */
    atomic_int stop;
    uint32_t generation;     /* the caller's copy of the current generation */

    gdn_cpu_task_fn fn;      /* the current job; written before `job` is published */
    void *ctx;
};

static uint32_t gdn_cpu_job_generation(uint64_t word)
{
    return (uint32_t)(word >> 32);
}

/* Wait until `job` shows a generation other than `seen` or the pool stops; returns the word. */
static uint64_t gdn_cpu_wait_for_job(gdn_cpu_threadpool *pool, uint32_t seen)
{
    uint64_t word;
    for (int i = 0; i < GDN_CPU_SPIN_POLLS; i++) {
        word = atomic_load_explicit(&pool->job, memory_order_acquire);
        if (gdn_cpu_job_generation(word) != seen || atomic_load_explicit(&pool->stop, memory_order_relaxed))
            return word;
        GDN_CPU_RELAX();
    }
    pthread_mutex_lock(&pool->mutex);
    while (gdn_cpu_job_generation(word = atomic_load_explicit(&pool->job, memory_order_acquire)) == seen &&
           !atomic_load_explicit(&pool->stop, memory_order_relaxed))
        pthread_cond_wait(&pool->wake, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
    return word;
}

static void *gdn_cpu_worker_main(void *arg)
{
    gdn_cpu_worker *self = arg;
    gdn_cpu_threadpool *pool = self->pool;
    uint32_t seen = 0; /* generation 0 is the pool's state at creation: never a job */
    for (;;) {
        uint64_t word = gdn_cpu_wait_for_job(pool, seen);
        if (atomic_load_explicit(&pool->stop, memory_order_acquire))
            return NULL;
        seen = gdn_cpu_job_generation(word);
        /* Join generation `seen` unless it was closed (or replaced) in the meantime. */
        int joined = 0;
        while (gdn_cpu_job_generation(word) == seen && !(word & GDN_CPU_JOB_CLOSED)) {
            if (atomic_compare_exchange_weak_explicit(&pool->job, &word, word + 1, memory_order_acquire,
                                                      memory_order_acquire)) {
                joined = 1;
                break;
            }
        }
        if (!joined)
            continue;
        pool->fn(pool->ctx, self->index, pool->n_threads);
        atomic_fetch_sub_explicit(&pool->job, 1, memory_order_release);
    }
}

gdn_status gdn_cpu_threadpool_create(gdn_cpu_threadpool **out, int n_threads)
{
    *out = NULL;
    if (n_threads < 1)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "cpu backend: %d threads, expected >= 1", n_threads);
    gdn_cpu_threadpool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "cpu backend: cannot allocate the thread pool");
    pool->n_threads = n_threads;
    atomic_init(&pool->job, (uint64_t)0);
    atomic_init(&pool->stop, 0);
    if (pthread_mutex_init(&pool->mutex, NULL) != 0) {
        free(pool);
        return gdn_fail(GDN_ERROR_BACKEND, "cpu backend: pthread_mutex_init failed");
    }
    if (pthread_cond_init(&pool->wake, NULL) != 0) {
        pthread_mutex_destroy(&pool->mutex);
        free(pool);
        return gdn_fail(GDN_ERROR_BACKEND, "cpu backend: pthread_cond_init failed");
    }
    if (n_threads > 1) {
        pool->threads = calloc((size_t)n_threads - 1, sizeof *pool->threads);
        pool->workers = calloc((size_t)n_threads - 1, sizeof *pool->workers);
        if (pool->threads == NULL || pool->workers == NULL) {
            gdn_cpu_threadpool_free(pool);
            return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "cpu backend: cannot allocate %d threads", n_threads);
        }
    }
    for (int i = 0; i < n_threads - 1; i++) {
        pool->workers[i].pool = pool;
        pool->workers[i].index = i + 1;
        if (pthread_create(&pool->threads[i], NULL, gdn_cpu_worker_main, &pool->workers[i]) != 0) {
            gdn_cpu_threadpool_free(pool);
            return gdn_fail(GDN_ERROR_BACKEND, "cpu backend: cannot start thread %d of %d", i + 1,
                            n_threads);
        }
        pool->n_started++;
    }
    *out = pool;
    return GDN_OK;
}

void gdn_cpu_threadpool_free(gdn_cpu_threadpool *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_lock(&pool->mutex);
    atomic_store_explicit(&pool->stop, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 0; i < pool->n_started; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->threads);
    free(pool->workers);
    free(pool);
}

int gdn_cpu_threadpool_size(const gdn_cpu_threadpool *pool)
{
    return pool->n_threads;
}

void gdn_cpu_threadpool_run(gdn_cpu_threadpool *pool, gdn_cpu_task_fn fn, void *ctx)
{
    if (pool->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    /* Generation 0 is never a job; skip it when the counter wraps. */
    pool->generation = pool->generation + 1 != 0 ? pool->generation + 1 : 1;
    /* Publish under the mutex so a worker between its last poll and pthread_cond_wait cannot
     * miss the wake-up; the lock is uncontended on the fast path. */
    pthread_mutex_lock(&pool->mutex);
    atomic_store_explicit(&pool->job, (uint64_t)pool->generation << 32, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);

    fn(ctx, 0, pool->n_threads);

    /* Close the job, then wait for the workers that joined (usually finishing their last
     * chunk); yield only if one of them was descheduled. */
    atomic_fetch_or_explicit(&pool->job, GDN_CPU_JOB_CLOSED, memory_order_acq_rel);
    for (long polls = 0; (atomic_load_explicit(&pool->job, memory_order_acquire) & GDN_CPU_JOB_COUNT) != 0;
         polls++) {
        if (polls < GDN_CPU_SPIN_POLLS)
            GDN_CPU_RELAX();
        else
            sched_yield();
    }
}
