/* cmd_op.c: `gdn op gated_delta_net`: run the op on tensors read from a safetensors file and
 * write its outputs to another. Any problem with the input is reported before anything is
 * written; the output file appears whole or not at all. */
#include "tool.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: gdn op gated_delta_net --in IN.safetensors --out OUT.safetensors [--backend cpu|cuda]\n"
    "\n"
    "IN holds F32 tensors (shapes outermost first; state may be BF16):\n"
    "  q [B,T,Hk,Dk]  k [B,T,Hk,Dk]  v [B,T,Hv,Dv]  g [B,T,Hv]  beta [B,T,Hv]  state [B,Hv,Dv,Dk]\n"
    "and optional string metadata:\n"
    "  K          snapshots to write, integer >= 1 (default 1)\n"
    "  broadcast  tiled | interleaved (default tiled): value head h reads q/k head h %% Hk or\n"
    "             h / (Hv/Hk)\n"
    "  scale      multiplier of S q, a positive number (default 1/sqrt(Dk))\n"
    "  l2norm     0 | 1 (default 0): L2-normalise q and k inside the op\n"
    "  chunk      0 | -1 | 16 | 32 | 64 (default 0): the chunked (prefill) form: 0 lets the\n"
    "             backend choose it for long T (the CPU from T = 64, CUDA from 48), -1 never,\n"
    "             16/32/64 always, with chunks of that many tokens\n"
    "  chunk_tf32 0 | 1 (default 0): 1 lets CUDA run the chunked form's products as one TF32\n"
    "             product each (faster, about 7e-4 relative error); the CPU ignores it\n"
    "OUT receives o [B,T,Hv,Dv] and states [min(T,K),B,Hv,Dv,Dk], newest first (states[0] is the\n"
    "state after the last token), states in the dtype of state (BF16: rounded after every token).\n"
    "Requires Dk = Dv in {16,32,64,128,256} and Hv a multiple of Hk.\n"
    "The backend defaults to cuda when a GPU is present, else cpu.\n";

/* The six inputs, with their required number of dims. */
static const struct {
    const char *name;
    int n_dims;
    const char *shape;
} inputs[6] = {
    {"q", 4, "[B,T,Hk,Dk]"}, {"k", 4, "[B,T,Hk,Dk]"}, {"v", 4, "[B,T,Hv,Dv]"},
    {"g", 3, "[B,T,Hv]"},    {"beta", 3, "[B,T,Hv]"}, {"state", 4, "[B,Hv,Dv,Dk]"},
};

/* Read the metadata keys into params; prints and returns 0 on a bad value. */
static int read_params(const gdn_safetensors *file, const char *path, gdn_gated_delta_net_params *p)
{
    *p = gdn_gated_delta_net_params_default();
    const char *text;
    if ((text = gdn_safetensors_metadata(file, "K")) != NULL) {
        long k;
        if (!gdn_tool_parse_int(text, 1, 1 << 20, &k)) {
            fprintf(stderr, "gdn op: %s: metadata K='%s' is not an integer >= 1\n", path, text);
            return 0;
        }
        p->n_snapshots = (int32_t)k;
    }
    if ((text = gdn_safetensors_metadata(file, "broadcast")) != NULL) {
        if (strcmp(text, "tiled") == 0)
            p->broadcast = GDN_BROADCAST_TILED;
        else if (strcmp(text, "interleaved") == 0)
            p->broadcast = GDN_BROADCAST_INTERLEAVED;
        else {
            fprintf(stderr, "gdn op: %s: metadata broadcast='%s', expected tiled or interleaved\n", path, text);
            return 0;
        }
    }
    if ((text = gdn_safetensors_metadata(file, "scale")) != NULL) {
        double scale;
        if (!gdn_tool_parse_float(text, &scale) || !(scale > 0.0) || !isfinite((float)scale)) {
            fprintf(stderr, "gdn op: %s: metadata scale='%s' is not a positive finite number\n", path, text);
            return 0;
        }
        p->scale = (float)scale;
    }
    if ((text = gdn_safetensors_metadata(file, "l2norm")) != NULL) {
        if (strcmp(text, "0") != 0 && strcmp(text, "1") != 0) {
            fprintf(stderr, "gdn op: %s: metadata l2norm='%s', expected 0 or 1\n", path, text);
            return 0;
        }
        p->l2norm = text[0] == '1';
    }
    if ((text = gdn_safetensors_metadata(file, "chunk")) != NULL) {
        long chunk;
        if (!gdn_tool_parse_int(text, -1, 64, &chunk) || (chunk > 0 && chunk != 16 && chunk != 32 && chunk != 64)) {
            fprintf(stderr, "gdn op: %s: metadata chunk='%s', expected 0, -1, 16, 32 or 64\n", path, text);
            return 0;
        }
        p->chunk = (int32_t)chunk;
    }
    if ((text = gdn_safetensors_metadata(file, "chunk_tf32")) != NULL) {
        if (strcmp(text, "0") != 0 && strcmp(text, "1") != 0) {
            fprintf(stderr, "gdn op: %s: metadata chunk_tf32='%s', expected 0 or 1\n", path, text);
            return 0;
        }
        p->chunk_tf32 = text[0] == '1';
    }
    return 1;
}

/* Host buffers of the outputs and, on a device backend, device copies of everything. */
typedef struct op_run {
    gdn_backend *backend;
    void *device[8];
    float *o_host, *states_host;
} op_run;

static int to_device(op_run *run, int slot, gdn_tensor *t)
{
    size_t bytes = gdn_tensor_span(t);
    if (gdn_backend_alloc(run->backend, bytes, &run->device[slot]) != GDN_OK ||
        gdn_backend_upload(run->backend, run->device[slot], t->data, bytes) != GDN_OK)
        return 0;
    t->data = run->device[slot];
    return 1;
}

static int run_op(const char *in_path, const char *out_path, const char *backend_name)
{
    gdn_safetensors *file = NULL;
    if (gdn_safetensors_open(&file, in_path) != GDN_OK) {
        fprintf(stderr, "gdn op: cannot read %s: %s\n", in_path, gdn_error_detail());
        return 1;
    }
    int rc = 1;
    op_run run = {0};
    gdn_safetensors_writer *writer = NULL;
    gdn_gated_delta_net_params params;
    gdn_tensor t[6];
    for (int i = 0; i < 6; i++) {
        if (gdn_safetensors_get(file, inputs[i].name, &t[i]) != GDN_OK) {
            fprintf(stderr, "gdn op: %s: missing tensor '%s' %s\n", in_path, inputs[i].name, inputs[i].shape);
            goto done;
        }
        const int state_bf16 = i == 5 && t[i].dtype == GDN_DTYPE_BF16; /* BF16 state storage */
        if ((t[i].dtype != GDN_DTYPE_F32 && !state_bf16) || t[i].n_dims != inputs[i].n_dims) {
            fprintf(stderr, "gdn op: %s: tensor '%s' is %s with %d dims, expected %s %s\n", in_path,
                    inputs[i].name, gdn_dtype_name(t[i].dtype), (int)t[i].n_dims, i == 5 ? "F32 or BF16" : "F32",
                    inputs[i].shape);
            goto done;
        }
    }
    if (!read_params(file, in_path, &params))
        goto done;

    /* Output shapes follow from q and v; the op checks every other size. */
    const int64_t D = t[0].ne[0], Hv = t[2].ne[1], T = t[0].ne[2], B = t[0].ne[3];
    const int64_t N = T < params.n_snapshots ? T : params.n_snapshots;
    const int64_t ne_o[4] = {t[2].ne[0], Hv, T, B}, ne_s[5] = {D, D, Hv, B, N};
    gdn_tensor o = gdn_tensor_contiguous(NULL, GDN_DTYPE_F32, 4, ne_o);
    gdn_tensor states = gdn_tensor_contiguous(NULL, t[5].dtype, 5, ne_s); /* the state's storage */
    run.o_host = malloc(gdn_tensor_span(&o) + 4);
    run.states_host = malloc(gdn_tensor_span(&states) + 4);
    if (!run.o_host || !run.states_host) {
        fprintf(stderr, "gdn op: out of memory for the outputs\n");
        goto done;
    }
    run.backend = gdn_tool_open_backend(backend_name);
    if (run.backend == NULL)
        goto done;
    gdn_gated_delta_net_args args = {t[0], t[1], t[2], t[3], t[4], t[5], o, states, {0}, {0}}; /* no indices */
    args.o.data = run.o_host;
    args.states.data = run.states_host;
    int on_device = gdn_backend_kind_of(run.backend) != GDN_BACKEND_CPU;
    if (on_device) {
        gdn_tensor *all[8] = {&args.q, &args.k, &args.v, &args.g, &args.beta, &args.state, &args.o, &args.states};
        for (int i = 0; i < 8; i++)
            if (!to_device(&run, i, all[i])) {
                fprintf(stderr, "gdn op: cannot stage tensors on the device: %s\n", gdn_error_detail());
                goto done;
            }
    }
    if (gdn_gated_delta_net(run.backend, &params, &args) != GDN_OK) {
        fprintf(stderr, "gdn op: %s: %s\n", in_path, gdn_error_detail());
        goto done;
    }
    if (gdn_backend_synchronize(run.backend) != GDN_OK ||
        (on_device && (gdn_backend_download(run.backend, run.o_host, args.o.data, gdn_tensor_span(&o)) != GDN_OK ||
                       gdn_backend_download(run.backend, run.states_host, args.states.data,
                                            gdn_tensor_span(&states)) != GDN_OK))) {
        fprintf(stderr, "gdn op: backend failure: %s\n", gdn_error_detail());
        goto done;
    }
    o.data = run.o_host;
    states.data = run.states_host;
    if (gdn_safetensors_writer_init(&writer) != GDN_OK || gdn_safetensors_writer_add(writer, "o", &o) != GDN_OK ||
        gdn_safetensors_writer_add(writer, "states", &states) != GDN_OK ||
        gdn_safetensors_writer_set_metadata(writer, "backend", gdn_backend_name(run.backend)) != GDN_OK ||
        gdn_safetensors_writer_save(writer, out_path) != GDN_OK) {
        fprintf(stderr, "gdn op: cannot write %s: %s\n", out_path, gdn_error_detail());
        goto done;
    }
    rc = 0;
done:
    gdn_safetensors_writer_free(writer);
    for (int i = 0; i < 8; i++)
        gdn_backend_dealloc(run.backend, run.device[i]);
    gdn_backend_free(run.backend);
    free(run.o_host);
    free(run.states_host);
    gdn_safetensors_free(file);
    return rc;
}

int gdn_cmd_op(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "gated_delta_net") != 0) {
        fprintf(stderr, "gdn op: unknown op '%s' (available: gated_delta_net)\n", argv[1]);
        return 2;
    }
    const char *in = NULL, *out = NULL, *backend = NULL;
    for (int i = 2; i < argc; i++) {
        const char **slot = strcmp(argv[i], "--in") == 0        ? &in
                            : strcmp(argv[i], "--out") == 0     ? &out
                            : strcmp(argv[i], "--backend") == 0 ? &backend
                                                                : NULL;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (slot == NULL) {
            fprintf(stderr, "gdn op: unknown option '%s'\n%s", argv[i], usage);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "gdn op: %s needs a value\n", argv[i]);
            return 2;
        }
        *slot = argv[++i];
    }
    if (in == NULL || out == NULL) {
        fprintf(stderr, "gdn op: --in and --out are required\n%s", usage);
        return 2;
    }
    return run_op(in, out, backend);
}
