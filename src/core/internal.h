/* internal.h: helpers shared by the library's own files (not installed).
 * Error reporting: gdn_fail() records a detail message for gdn_error_detail() and returns the
 * status, so a failing path reads `return gdn_fail(GDN_ERROR_SHAPE, "q has %d dims", n);`. */
#ifndef GDN_INTERNAL_H
#define GDN_INTERNAL_H

#include "gdn.h"

#if defined(__GNUC__)
#define GDN_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define GDN_PRINTF(fmt_index, first_arg)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Record a formatted detail message for the calling thread and return `status`. */
gdn_status gdn_fail(gdn_status status, const char *format, ...) GDN_PRINTF(2, 3);

/* Clear the calling thread's detail message (called at the start of public entry points). */
void gdn_clear_error(void);

/* Overflow-checked size arithmetic: return 0 and leave *out unspecified on overflow. */
int gdn_size_mul(size_t a, size_t b, size_t *out);
int gdn_size_add(size_t a, size_t b, size_t *out);

/* Byte range [lo, hi) reachable by a view, from its data pointer; empty views give lo == hi. */
void gdn_tensor_byte_range(const gdn_tensor *t, uintptr_t *lo, uintptr_t *hi);

/* 1 if no two elements of the view share a byte (strides, sorted, each clear the extent of the
 * dimensions inside them). A sufficient test: views that pass never race with themselves. */
int gdn_tensor_is_injective(const gdn_tensor *t);

/* 1 if the byte ranges of the two views intersect. */
int gdn_tensor_ranges_overlap(const gdn_tensor *a, const gdn_tensor *b);

/* Zero `bytes` of backend memory at dst, through a host buffer (the backend table has no
 * memset; used once per cache or sequence, not per step). */
gdn_status gdn_backend_zero(gdn_backend *backend, void *dst, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
