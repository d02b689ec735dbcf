/* threadpool.h: a small persistent pthread pool owned by the CPU backend context. One job at a
 * time: gdn_cpu_threadpool_run calls fn on the calling thread and on every worker that joins
 * while the job is open, and returns when all of them are done. Workers spin briefly between
 * jobs, then sleep on a condition variable, so back-to-back decode calls of a few microseconds
 * each do not pay a futex wake-up.
 *
 * A worker that has not joined by the time the caller has finished its own call of fn is left
 * out of that job: on a loaded machine a descheduled worker then costs nothing instead of a
 * whole time slice. So fn must hand out its work dynamically (an atomic counter of chunks),
 * never split it statically by thread_index. */
#ifndef GDN_CPU_THREADPOOL_H
#define GDN_CPU_THREADPOOL_H

#include "gdn.h"

/* The work of one job, called once on each participating thread. thread_index (0 for the
 * caller) is unique among the threads of the pool and below n_threads: use it for per-thread
 * scratch, not to divide the work. */
typedef void (*gdn_cpu_task_fn)(void *ctx, int thread_index, int n_threads);

typedef struct gdn_cpu_threadpool gdn_cpu_threadpool;

/* Start n_threads - 1 workers (n_threads >= 1; 1 starts none). On success *out owns the pool,
 * released by gdn_cpu_threadpool_free. */
gdn_status gdn_cpu_threadpool_create(gdn_cpu_threadpool **out, int n_threads);

/* Stop and join the workers, then free the pool. NULL is a no-op. Not callable during a job. */
void gdn_cpu_threadpool_free(gdn_cpu_threadpool *pool);

/* Number of threads that may take part in a job, the caller included. */
int gdn_cpu_threadpool_size(const gdn_cpu_threadpool *pool);

/* Run fn(ctx, i, n) on the calling thread (i = 0) and on the workers that join; returns when
 * every call has returned. One caller at a time (a backend is not thread-safe). */
void gdn_cpu_threadpool_run(gdn_cpu_threadpool *pool, gdn_cpu_task_fn fn, void *ctx);

#endif
