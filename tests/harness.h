/* harness.h: what every test program shares: check counting, a seeded random generator,
 * the list of backends present, and backend buffers wrapped in guard regions. */
#ifndef GDN_TEST_HARNESS_H
#define GDN_TEST_HARNESS_H

#include "gdn.h"

#include <stdint.h>
#include <stdio.h>

/* ---- checks: count, print failures with file:line, summarise in test_finish() ---- */
extern int test_passed, test_failed;
void test_check_at(int ok, const char *file, int line, const char *format, ...)
    __attribute__((format(printf, 4, 5)));
#define CHECK(cond, ...) test_check_at((cond) ? 1 : 0, __FILE__, __LINE__, __VA_ARGS__)
/* Prints "N passed, M failed" and returns the process exit code (0 only if nothing failed). */
int test_finish(const char *program);

/* ---- random numbers: xoshiro256**, seeded, reproducible on every machine ---- */
typedef struct test_rng {
    uint64_t s[4];
} test_rng;
void test_rng_seed(test_rng *rng, uint64_t seed);
uint64_t test_rng_next(test_rng *rng);
double test_rng_uniform(test_rng *rng, double lo, double hi); /* [lo, hi) */
double test_rng_normal(test_rng *rng);                        /* mean 0, sd 1 */

/* ---- backends present in this build and on this machine ---- */
typedef struct test_backend {
    gdn_backend *backend;
    const char *label; /* "cpu", "cpu/scalar", "cuda" */
} test_backend;
/* Fills up to `max` backends: CPU with each SIMD level this machine supports, and CUDA when
 * available; prints one "skipped: why" line for each absent one. Returns the count. */
int test_backends_open(test_backend *list, int max);
void test_backends_close(test_backend *list, int n);

/* ---- backend buffers with guard regions ----
 * The usable bytes sit between two guards. Everything (guards and usable bytes) starts filled
 * with 0xFF (a NaN pattern for floats), so unwritten outputs and stray writes both show. */
typedef struct test_buffer {
    gdn_backend *backend;
    unsigned char *base; /* backend memory: guard | usable | guard */
    size_t bytes;        /* usable bytes */
} test_buffer;
#define TEST_GUARD_BYTES 256
int test_buffer_alloc(test_buffer *buf, gdn_backend *backend, size_t bytes);
void test_buffer_free(test_buffer *buf);
void *test_buffer_data(const test_buffer *buf);
/* Copy host bytes into the usable region (bytes <= buf->bytes). */
int test_buffer_upload(test_buffer *buf, const void *host, size_t bytes);
/* Download the usable region into `host` (buf->bytes bytes); return 1 if both guards are
 * intact, else 0. */
int test_buffer_download(const test_buffer *buf, void *host);

/* ---- walking strided views ---- */
/* Byte offset of multi-index idx[0..GDN_MAX_DIMS) in a view (from its data pointer). */
size_t test_offset_of(const gdn_tensor *t, const int64_t *idx);
/* Advance a multi-index over t's counts, innermost first; returns 0 after the last element. */
int test_next_index(const gdn_tensor *t, int64_t *idx);

/* ---- tensors of a case laid out in memory in one of several ways ---- */
typedef enum test_layout {
    LAYOUT_CONTIGUOUS,
    LAYOUT_PADDED,       /* gaps of 4 elements after every row and plane: 16-byte aligned rows */
    LAYOUT_PADDED_ODD,   /* gaps of 3 elements: rows lose 16-byte alignment */
    LAYOUT_PERMUTED,     /* dims 1 and 2 swapped in memory (e.g. q stored [B,Hk,T,Dk]) */
    LAYOUT_SPACED_INNER, /* innermost stride 2 elements */
} test_layout;

extern const char *const test_layout_names[]; /* "contiguous", "padded", ... */

/* Strides for counts ne[0..n) (innermost first) under a layout into nb; returns the bytes to
 * allocate. */
size_t test_make_strides(test_layout lay, int n, const int64_t *ne, size_t elem, size_t *nb);

/* One tensor of a case: a host copy (gaps filled with 0xFF, a NaN pattern) and, once uploaded,
 * a guarded backend buffer with the same strides. */
typedef struct test_tensor {
    gdn_tensor host; /* view into host_bytes */
    unsigned char *host_bytes;
    size_t bytes;
    test_buffer device;
} test_tensor;

int test_tensor_init(test_tensor *tb, test_layout lay, gdn_dtype dtype, int n, const int64_t *ne);
void test_tensor_free(test_tensor *tb);
/* Allocate the backend buffer and copy the host bytes into it. */
int test_tensor_upload(test_tensor *tb, gdn_backend *backend);
/* The backend's view: the host view's strides, data in the guarded backend buffer. */
gdn_tensor test_device_view(const test_tensor *tb);

/* tb's backend buffer downloaded (malloc'd; NULL when out of memory), with checks labelled
 * "<label> case <i> <what>" that its guards and every byte outside the view are still 0xFF. */
unsigned char *test_download_view(const char *what, const char *label, int case_index, const test_tensor *tb);

/* Every view element of tb's backend buffer close to `ref` (an F64 view of the same counts):
 * relative L2 error below tol_rel_l2 and largest error over largest |ref| below tol_max; every
 * other byte (gaps and guards) still 0xFF. Labels the checks "<label> case <i> <what>". */
void test_compare_output(const char *what, const char *label, int case_index, const test_tensor *tb,
                         const gdn_tensor *ref, double tol_rel_l2, double tol_max);

#endif
