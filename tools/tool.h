/* tool.h: what the subcommands of the gdn command share. */
#ifndef GDN_TOOL_H
#define GDN_TOOL_H

#include "gdn.h"

/* Subcommands: each returns the process exit code. */
int gdn_cmd_op(int argc, char **argv);
int gdn_cmd_bench(int argc, char **argv);
int gdn_cmd_bench_stack(int argc, char **argv); /* gdn bench --stack (cmd_bench_stack.c) */
int gdn_cmd_bench_prefill(int argc, char **argv); /* gdn bench --prefill (cmd_bench_prefill.c) */
int gdn_cmd_check(int argc, char **argv);       /* gdn check spec (cmd_check_spec.c) */
int gdn_cmd_check_bf16(int argc, char **argv);  /* gdn check bf16 (cmd_check_bf16.c) */

/* "cpu" or "cuda" to a kind; returns 0 and prints an error for anything else. */
int gdn_tool_parse_backend(const char *text, gdn_backend_kind *kind);

/* Open the named backend, or the best present one (CUDA, then CPU) when `name` is NULL.
 * Prints the reason and returns NULL on failure. */
gdn_backend *gdn_tool_open_backend(const char *name);

/* Strict parsers: the whole text must be a number in range. Return 1 on success. */
int gdn_tool_parse_int(const char *text, long min, long max, long *out);
int gdn_tool_parse_float(const char *text, double *out);

/* A comma-separated list of batch sizes (1..65536, at most `max`) into out[*n...]; prints the
 * problem (prefixed by `who`) and returns 0 on a bad list. */
int gdn_tool_parse_batches(const char *who, const char *text, int64_t *out, int max, int *n);

/* splitmix64: the next 64 random bits of the stream *s (the same on every machine), and a float
 * uniform in [-1, 1) from it (the checks' token inputs). */
uint64_t gdn_tool_mix(uint64_t *s);
float gdn_tool_uniform(uint64_t *s);

/* qsort comparator for doubles, ascending (medians of timings). */
int gdn_tool_compare_double(const void *a, const void *b);

#endif
