/* gdn.c: the gdn command: dispatch to subcommands, and what they share. */
#include "tool.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "gdn: Gated DeltaNet kernels for CPUs and CUDA GPUs\n"
    "\n"
    "usage:\n"
    "  gdn bench [options]      time the GDN op on the Qwen3.6-35B-A3B GDN stack shapes\n"
    "                           (see gdn bench --help)\n"
    "  gdn op gated_delta_net --in IN.safetensors --out OUT.safetensors [--backend cpu|cuda]\n"
    "                           run the op on tensors from a file (see gdn op --help)\n"
    "  gdn check spec [options] check that speculative decoding with rollback is bit-identical\n"
    "                           to decoding the accepted tokens one at a time (see --help)\n"
    "  gdn check bf16 [options] measure what a BF16 state costs in accuracy against an F32 one\n"
    "                           over a long decode (see --help)\n"
    "  gdn --help               this text\n";

uint64_t gdn_tool_mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float gdn_tool_uniform(uint64_t *s)
{
    return (float)((double)(gdn_tool_mix(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

int gdn_tool_parse_backend(const char *text, gdn_backend_kind *kind)
{
    if (strcmp(text, "cpu") == 0)
        *kind = GDN_BACKEND_CPU;
    else if (strcmp(text, "cuda") == 0)
        *kind = GDN_BACKEND_CUDA;
    else {
        fprintf(stderr, "gdn: unknown backend '%s' (expected cpu or cuda)\n", text);
        return 0;
    }
    return 1;
}

gdn_backend *gdn_tool_open_backend(const char *name)
{
    gdn_backend_kind kind = GDN_BACKEND_CPU;
    if (name == NULL)
        kind = gdn_backend_available(GDN_BACKEND_CUDA, NULL) ? GDN_BACKEND_CUDA : GDN_BACKEND_CPU;
    else if (!gdn_tool_parse_backend(name, &kind))
        return NULL;
    gdn_backend *backend = NULL;
    gdn_status st = gdn_backend_init(&backend, kind, NULL);
    if (st != GDN_OK) {
        fprintf(stderr, "gdn: cannot open the %s backend: %s\n", kind == GDN_BACKEND_CUDA ? "cuda" : "cpu",
                gdn_error_detail());
        return NULL;
    }
    return backend;
}

int gdn_tool_parse_int(const char *text, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > max)
        return 0;
    *out = value;
    return 1;
}

int gdn_tool_parse_float(const char *text, double *out)
{
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !isfinite(value))
        return 0;
    *out = value;
    return 1;
}

int gdn_tool_parse_batches(const char *who, const char *text, int64_t *out, int max, int *n)
{
    char *copy = strdup(text), *save = NULL;
    if (copy == NULL)
        return 0;
    long value = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == max || !gdn_tool_parse_int(tok, 1, 1 << 16, &value)) {
            fprintf(stderr, "%s: --batch '%s': expected up to %d integers in 1..65536\n", who, text, max);
            free(copy);
            return 0;
        }
        out[(*n)++] = value;
    }
    free(copy);
    return 1;
}

int gdn_tool_compare_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "bench") == 0)
        return gdn_cmd_bench(argc - 1, argv + 1);
    if (strcmp(argv[1], "op") == 0)
        return gdn_cmd_op(argc - 1, argv + 1);
    if (strcmp(argv[1], "check") == 0)
        return gdn_cmd_check(argc - 1, argv + 1);
    fprintf(stderr, "gdn: unknown command '%s'\n\n%s", argv[1], usage);
    return 2;
}
