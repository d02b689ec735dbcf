/* tool.h: what the subcommands of the gdn command share. */
#ifndef GDN_TOOL_H
#define GDN_TOOL_H

#include "gdn.h"

/* Subcommands: each returns the process exit code. */
int gdn_cmd_op(int argc, char **argv);
int gdn_cmd_bench(int argc, char **argv);
int gdn_cmd_bench_stack(int argc, char **argv); /* gdn bench --stack (cmd_bench_stack.c) */

/* "cpu" or "cuda" to a kind; returns 0 and prints an error for anything else. */
int gdn_tool_parse_backend(const char *text, gdn_backend_kind *kind);

/* Open the named backend, or the best present one (CUDA, then CPU) when `name` is NULL.
 * Prints the reason and returns NULL on failure. */
gdn_backend *gdn_tool_open_backend(const char *name);

/* Strict parsers: the whole text must be a number in range. Return 1 on success. */
int gdn_tool_parse_int(const char *text, long min, long max, long *out);
int gdn_tool_parse_float(const char *text, double *out);

#endif
