/* test_ops.c: every op of the op table (src/core/ops.h) on every backend present against the
 * float64 reference, from one table of cases: odd sizes, non-contiguous sources and
 * destinations (padded rows, permuted dims, innermost stride 2), guard regions, in-place calls
 * where the op declares them; then the exactness contract (batch invariance: a subset of rows
 * computed alone gives the same bits; 1 and 3 threads give the same bits), BF16 rounding of cpy,
 * and rejected calls (status, a detail, nothing written). */
#include "backends/backend.h"
#include "harness.h"
#include "core/ops.h"
#include "core/ops_run.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef enum layout {
    L_CONTIG,
    L_PADDED,   /* gaps of 3 elements after every row and plane */
    L_PERMUTED, /* dims 1 and 2 swapped in memory (3 dims or more) */
    L_SPACED,   /* innermost stride 2 elements */
} layout;
static const char *layout_names[] = {"contiguous", "padded", "permuted", "spaced"};

/* Sizes per kind (outermost first in comments):
 *   add/mul   a [B, R, D]; b by variant: 0 [B,R,D], 1 [B,1,D], 2 [1,R,1], 3 [1,1,D]
 *   unary, norms, cpy  a [B, R, D]; rms_norm_gated also w [D], z [B, R, D]
 *   ssm_conv  x [B, C=D, X-1+T], w [C, X], dst [B, T=R, C]
 *   get_rows  a [R, D] (variant 1: BF16; 2: BF16 into a BF16 dst), index [X], dst [X, D]
 *   concat    a [B, R, D], b with X along dim `variant`
 *   cpy       variant 0 F32->F32, 1 F32->BF16, 2 BF16->F32
 *   mul_mat   w [N=X, K=D] (variant 1: BF16), x [B, M=R, K], dst [B, M, N]
 *   gated_delta_net  D = Dk = Dv, T = R, B, Hk = 1, Hv = 2, one snapshot
 *   gdn_gates a, b [B, R, Hv=D], dt_bias and A_log [D]; g and beta [B, R, D] */
typedef struct op_case {
    gdn_op_kind kind;
    int D, R, B, X, variant;
    layout src_lay, dst_lay;
    int in_place; /* dst is exactly src 0 */
} op_case;

static const op_case cases[] = {
    {GDN_OP_ADD, 37, 5, 2, 0, 0, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_ADD, 37, 5, 2, 0, 1, L_PADDED, L_PERMUTED, 0},
    {GDN_OP_ADD, 37, 5, 3, 0, 2, L_PERMUTED, L_SPACED, 0},
    {GDN_OP_ADD, 16, 3, 2, 0, 0, L_PADDED, L_PADDED, 1},
    {GDN_OP_MUL, 37, 5, 2, 0, 3, L_SPACED, L_PADDED, 0},
    {GDN_OP_MUL, 37, 5, 2, 0, 1, L_CONTIG, L_CONTIG, 1},
    {GDN_OP_SCALE, 37, 5, 2, 0, 0, L_CONTIG, L_SPACED, 0},
    {GDN_OP_SCALE, 37, 5, 2, 0, 0, L_PERMUTED, L_PERMUTED, 1},
    {GDN_OP_SILU, 37, 5, 2, 0, 0, L_PADDED, L_CONTIG, 0},
    {GDN_OP_SILU, 37, 5, 2, 0, 0, L_SPACED, L_SPACED, 1},
    {GDN_OP_SILU, 1000, 50, 1, 0, 0, L_CONTIG, L_CONTIG, 0}, /* large: threads */
    {GDN_OP_SIGMOID, 37, 5, 2, 0, 0, L_CONTIG, L_PERMUTED, 0},
    {GDN_OP_SIGMOID, 37, 5, 2, 0, 0, L_PADDED, L_PADDED, 1},
    {GDN_OP_SOFTPLUS, 37, 5, 2, 0, 0, L_SPACED, L_CONTIG, 0},
    {GDN_OP_SOFTPLUS, 37, 5, 2, 0, 0, L_CONTIG, L_CONTIG, 1},
    {GDN_OP_EXP, 37, 5, 2, 0, 0, L_PERMUTED, L_PADDED, 0},
    {GDN_OP_EXP, 37, 5, 2, 0, 0, L_CONTIG, L_CONTIG, 1},
    {GDN_OP_L2_NORM, 37, 5, 2, 0, 0, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_L2_NORM, 128, 4, 3, 0, 0, L_PADDED, L_SPACED, 0},
    {GDN_OP_L2_NORM, 128, 4, 3, 0, 0, L_SPACED, L_SPACED, 1},
    {GDN_OP_RMS_NORM, 37, 5, 2, 0, 0, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_RMS_NORM, 256, 3, 2, 0, 0, L_PERMUTED, L_PADDED, 0},
    {GDN_OP_RMS_NORM, 1000, 67, 1, 0, 0, L_CONTIG, L_CONTIG, 0}, /* large: threads */
    {GDN_OP_RMS_NORM, 37, 5, 2, 0, 0, L_PADDED, L_PADDED, 1},
    {GDN_OP_RMS_NORM_GATED, 37, 5, 2, 0, 0, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_RMS_NORM_GATED, 128, 6, 2, 0, 0, L_SPACED, L_PERMUTED, 0},
    {GDN_OP_RMS_NORM_GATED, 64, 3, 2, 0, 0, L_PADDED, L_PADDED, 1},
    {GDN_OP_SSM_CONV, 37, 5, 2, 4, 0, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_SSM_CONV, 64, 1, 3, 4, 0, L_PADDED, L_SPACED, 0}, /* decode: T = 1 */
    {GDN_OP_SSM_CONV, 37, 6, 2, 3, 0, L_PERMUTED, L_PERMUTED, 0},
    {GDN_OP_SSM_CONV, 300, 40, 3, 4, 0, L_CONTIG, L_CONTIG, 0}, /* large: threads */
    {GDN_OP_GET_ROWS, 37, 11, 1, 5, 0, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_GET_ROWS, 37, 11, 1, 7, 1, L_SPACED, L_PADDED, 0},
    {GDN_OP_GET_ROWS, 512, 200, 1, 100, 0, L_PADDED, L_CONTIG, 0}, /* large: threads */
    {GDN_OP_CONCAT, 37, 5, 2, 3, 0, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_CONCAT, 37, 5, 2, 3, 1, L_PADDED, L_SPACED, 0},
    {GDN_OP_CONCAT, 37, 5, 2, 3, 2, L_PERMUTED, L_PADDED, 0},
    {GDN_OP_CONCAT, 37, 5, 2, 3, 0, L_SPACED, L_PERMUTED, 0},
    {GDN_OP_CPY, 37, 5, 2, 0, 0, L_PERMUTED, L_CONTIG, 0},
    {GDN_OP_CPY, 37, 5, 2, 0, 1, L_CONTIG, L_SPACED, 0},
    {GDN_OP_CPY, 37, 5, 2, 0, 2, L_PADDED, L_PERMUTED, 0},
    {GDN_OP_CPY, 37, 5, 2, 0, 0, L_PADDED, L_PADDED, 1},
    {GDN_OP_MUL_MAT, 37, 5, 2, 19, 0, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_MUL_MAT, 37, 5, 2, 19, 1, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_MUL_MAT, 37, 5, 2, 19, 0, L_PADDED, L_PERMUTED, 0},
    {GDN_OP_MUL_MAT, 37, 5, 2, 19, 1, L_SPACED, L_PADDED, 0},
    {GDN_OP_MUL_MAT, 128, 1, 1, 70, 1, L_CONTIG, L_SPACED, 0}, /* decode: M = 1 */
    {GDN_OP_MUL_MAT, 257, 33, 1, 130, 0, L_CONTIG, L_CONTIG, 0}, /* large: threads */
    {GDN_OP_MUL_MAT, 257, 33, 1, 130, 1, L_PERMUTED, L_CONTIG, 0},
    {GDN_OP_MUL_MAT, 2056, 40, 1, 70, 1, L_CONTIG, L_CONTIG, 0},  /* BF16 K in 5 segments (CUDA) */
    {GDN_OP_MUL_MAT, 1032, 5, 2, 40, 1, L_PERMUTED, L_PADDED, 0}, /* the same, 3, rows permuted */
    {GDN_OP_MUL_MAT, 2056, 3, 1, 33, 1, L_CONTIG, L_SPACED, 0},   /* the same, decode */
    {GDN_OP_MUL_MAT, 64, 6, 2, 29, 1, L_CONTIG, L_CONTIG, 0},    /* K % 8 == 0: x read in place */
    {GDN_OP_MUL_MAT, 64, 7, 2, 29, 0, L_PADDED, L_SPACED, 0},    /* in place through padded rows */
    {GDN_OP_MUL_MAT, 128, 1, 1, 70, 0, L_CONTIG, L_CONTIG, 0},   /* decode, x in place */
    {GDN_OP_MUL_MAT, 256, 5, 3, 100, 1, L_CONTIG, L_PADDED, 0},  /* large: threads, x in place */
    {GDN_OP_GATED_DELTA_NET, 16, 3, 2, 0, 0, L_CONTIG, L_PADDED, 0},
    /* appended: the rejection table below names cases by index */
    {GDN_OP_GET_ROWS, 37, 11, 1, 7, 2, L_PADDED, L_SPACED, 0},
    {GDN_OP_GDN_GATES, 32, 5, 2, 0, 0, L_CONTIG, L_CONTIG, 0},
    {GDN_OP_GDN_GATES, 37, 3, 2, 0, 0, L_PERMUTED, L_SPACED, 0},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

/* ---------------------------------------------------------------------------------------------
 * Host tensors with a layout, and guarded backend buffers behind them
 * ------------------------------------------------------------------------------------------- */
typedef struct tensor_buffer {
    gdn_tensor host; /* view into host_bytes */
    unsigned char *host_bytes;
    size_t bytes;
    test_buffer device;
} tensor_buffer;

static int tensor_buffer_init(tensor_buffer *tb, layout lay, gdn_dtype dtype, int n, const int64_t *ne)
{
    memset(tb, 0, sizeof *tb);
    tb->host = gdn_tensor_contiguous(NULL, dtype, n, ne);
    int order[GDN_MAX_DIMS] = {0, 1, 2, 3, 4, 5};
    if (lay == L_PERMUTED && n >= 3) {
        order[1] = 2;
        order[2] = 1;
    }
    const size_t elem = gdn_dtype_size(dtype), pad = lay == L_PADDED ? 3 * elem : 0;
    size_t stride = elem * (lay == L_SPACED ? 2 : 1);
    for (int i = 0; i < n; i++) {
        tb->host.nb[order[i]] = stride;
        stride = stride * (size_t)ne[order[i]] + (i + 1 < n ? pad : 0);
    }
    for (int i = n; i < GDN_MAX_DIMS; i++)
        tb->host.nb[i] = stride;
    tb->bytes = stride;
    tb->host_bytes = malloc(tb->bytes);
    if (tb->host_bytes == NULL)
        return 0;
    memset(tb->host_bytes, 0xFF, tb->bytes); /* gaps hold NaN: reading them poisons results */
    tb->host.data = tb->host_bytes;
    return 1;
}

static void tensor_buffer_free(tensor_buffer *tb)
{
    free(tb->host_bytes);
    test_buffer_free(&tb->device);
    memset(tb, 0, sizeof *tb);
}

static int upload(tensor_buffer *tb, gdn_backend *backend)
{
    return test_buffer_alloc(&tb->device, backend, tb->bytes) &&
           test_buffer_upload(&tb->device, tb->host_bytes, tb->bytes);
}

static gdn_tensor device_view(const tensor_buffer *tb)
{
    gdn_tensor t = tb->host;
    t.data = test_buffer_data(&tb->device);
    return t;
}

/* Write v to element idx of a host view: F32, BF16 (nearest even; inputs are finite), I32, F64. */
static void put(const gdn_tensor *t, const int64_t *idx, double v)
{
    char *p = (char *)t->data + test_offset_of(t, idx);
    float f = (float)v;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    const uint16_t h = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    const int32_t i = (int32_t)v;
    switch (t->dtype) {
    case GDN_DTYPE_F32: memcpy(p, &f, 4); break;
    case GDN_DTYPE_BF16: memcpy(p, &h, 2); break;
    case GDN_DTYPE_I32: memcpy(p, &i, 4); break;
    default: memcpy(p, &v, 8); break;
    }
}

/* Element idx of a F32, BF16 or F64 view over `bytes` (the view's data pointer ignored). */
static double get(const gdn_tensor *t, const unsigned char *bytes, const int64_t *idx)
{
    const unsigned char *p = bytes + test_offset_of(t, idx);
    float f;
    uint16_t h;
    double x;
    switch (t->dtype) {
    case GDN_DTYPE_F32: memcpy(&f, p, 4); return f;
    case GDN_DTYPE_BF16: {
        memcpy(&h, p, 2);
        const uint32_t bits = (uint32_t)h << 16; /* the upper half of a float */
        memcpy(&f, &bits, 4);
        return f;
    }
    default: memcpy(&x, p, 8); return x;
    }
}

/* ---------------------------------------------------------------------------------------------
 * An instance of a case: the call, its host tensors and realistic inputs
 * ------------------------------------------------------------------------------------------- */
typedef struct instance {
    op_case c;
    gdn_op_call call; /* host views */
    tensor_buffer src[GDN_OP_MAX_SRC], dst[GDN_OP_MAX_DST];
} instance;

typedef struct spec {
    gdn_dtype dtype;
    int n;
    int64_t ne[GDN_MAX_DIMS];
} spec;

static spec mk(gdn_dtype dtype, int n, int64_t n0, int64_t n1, int64_t n2, int64_t n3, int64_t n4)
{
    spec s = {dtype, n, {n0, n1, n2, n3, n4, 1}};
    return s;
}

/* The call's kind, parameters and tensor shapes for a case. */
static void case_specs(const op_case *c, gdn_op_call *call, spec *src, spec *dst)
{
    const gdn_dtype F32 = GDN_DTYPE_F32, BF16 = GDN_DTYPE_BF16;
    const int64_t D = c->D, R = c->R, B = c->B, X = c->X;
    memset(call, 0, sizeof *call);
    call->kind = c->kind;
    call->n_src = gdn_op_traits_of(c->kind)->n_src;
    call->n_dst = gdn_op_traits_of(c->kind)->n_dst;
    src[0] = mk(F32, 3, D, R, B, 1, 1);
    dst[0] = src[0];
    switch (c->kind) {
    case GDN_OP_ADD:
    case GDN_OP_MUL: {
        static const int keep[4][3] = {{1, 1, 1}, {1, 0, 1}, {0, 1, 0}, {1, 0, 0}};
        const int *k = keep[c->variant];
        src[1] = mk(F32, 3, k[0] ? D : 1, k[1] ? R : 1, k[2] ? B : 1, 1, 1);
        break;
    }
    case GDN_OP_SCALE: call->params.scale.scale = -0.7f; break;
    case GDN_OP_L2_NORM: call->params.norm.eps = 1e-6f; break;
    case GDN_OP_RMS_NORM: call->params.norm.eps = 1e-5f; break;
    case GDN_OP_RMS_NORM_GATED:
        call->params.norm.eps = 1e-6f;
        src[1] = mk(F32, 1, D, 1, 1, 1, 1);
        src[2] = src[0];
        break;
    case GDN_OP_SSM_CONV:
        src[0] = mk(F32, 3, X - 1 + R, D, B, 1, 1);
        src[1] = mk(F32, 2, X, D, 1, 1, 1);
        dst[0] = mk(F32, 3, D, R, B, 1, 1);
        break;
    case GDN_OP_GET_ROWS:
        src[0] = mk(c->variant ? BF16 : F32, 2, D, R, 1, 1, 1);
        src[1] = mk(GDN_DTYPE_I32, 1, X, 1, 1, 1, 1);
        dst[0] = mk(c->variant == 2 ? BF16 : F32, 2, D, X, 1, 1, 1);
        break;
    case GDN_OP_CONCAT:
        call->params.concat.dim = c->variant;
        src[1] = src[0];
        src[1].ne[c->variant] = X;
        dst[0].ne[c->variant] += X;
        break;
    case GDN_OP_CPY:
        src[0].dtype = c->variant == 2 ? BF16 : F32;
        dst[0].dtype = c->variant == 1 ? BF16 : F32;
        break;
    case GDN_OP_MUL_MAT:
        src[0] = mk(c->variant ? BF16 : F32, 2, D, X, 1, 1, 1);
        src[1] = mk(F32, 3, D, R, B, 1, 1);
        dst[0] = mk(F32, 3, X, R, B, 1, 1);
        break;
    case GDN_OP_GDN_GATES:
        src[1] = src[0];
        src[2] = src[3] = mk(F32, 1, D, 1, 1, 1, 1);
        dst[1] = dst[0];
        break;
    case GDN_OP_GATED_DELTA_NET:
        call->params.gated_delta_net = gdn_gated_delta_net_params_default();
        src[0] = src[1] = mk(F32, 4, D, 1, R, B, 1);
        src[2] = mk(F32, 4, D, 2, R, B, 1);
        src[3] = src[4] = mk(F32, 3, 2, R, B, 1, 1);
        src[5] = mk(F32, 4, D, D, 2, B, 1);
        dst[0] = src[2];
        dst[1] = mk(F32, 5, D, D, 2, B, 1);
        break;
    default: break;
    }
}

/* One input value: realistic ranges per op and source. */
static double sample(const op_case *c, int s, test_rng *rng)
{
    switch (c->kind) {
    case GDN_OP_SOFTPLUS: return test_rng_uniform(rng, -25.0, 25.0); /* both sides of the threshold 20 */
    case GDN_OP_EXP: return test_rng_uniform(rng, -12.0, 8.0);
    case GDN_OP_SILU:
    case GDN_OP_SIGMOID: return 4.0 * test_rng_normal(rng);
    case GDN_OP_RMS_NORM_GATED:
        return s == 1 ? test_rng_uniform(rng, 0.5, 1.5) : 2.0 * test_rng_normal(rng);
    case GDN_OP_GET_ROWS:
        return s == 1 ? (double)(test_rng_next(rng) % (uint64_t)c->R) : test_rng_normal(rng);
    case GDN_OP_MUL_MAT: return s == 0 ? test_rng_normal(rng) / sqrt((double)c->D) : test_rng_normal(rng);
    case GDN_OP_SSM_CONV: return s == 1 ? 0.5 * test_rng_normal(rng) : test_rng_normal(rng);
    case GDN_OP_GDN_GATES: /* a spans softplus's threshold 20; A_log = log(1..16) as in the models */
        return s == 0 ? test_rng_uniform(rng, -12.0, 24.0) : s == 2 ? 0.2 * test_rng_normal(rng)
               : s == 3 ? log(test_rng_uniform(rng, 1.0, 16.0)) : 4.0 * test_rng_normal(rng);
    case GDN_OP_GATED_DELTA_NET:
        switch (s) {
        case 1: return test_rng_normal(rng) / sqrt((double)c->D);        /* k: |k| ~ 1 */
        case 3: return -exp(test_rng_uniform(rng, log(1e-4), log(20.0))); /* log-decay g */
        case 4: return test_rng_uniform(rng, 0.0, 1.0);                   /* beta */
        case 5: return 0.1 * test_rng_normal(rng);                        /* state */
        default: return test_rng_normal(rng);
        }
    default: return 3.0 * test_rng_normal(rng);
    }
}

static void instance_free(instance *in)
{
    for (int i = 0; i < GDN_OP_MAX_SRC; i++)
        tensor_buffer_free(&in->src[i]);
    for (int i = 0; i < GDN_OP_MAX_DST; i++)
        tensor_buffer_free(&in->dst[i]);
}

static int instance_init(instance *in, const op_case *c, uint64_t seed)
{
    memset(in, 0, sizeof *in);
    in->c = *c;
    spec src[GDN_OP_MAX_SRC], dst[GDN_OP_MAX_DST];
    case_specs(c, &in->call, src, dst);
    test_rng rng;
    test_rng_seed(&rng, seed);
    int ok = 1;
    for (int s = 0; ok && s < in->call.n_src; s++) {
        /* the get_rows index stays packed; 1-D weights take the layout too (spaced) */
        layout lay = c->kind == GDN_OP_GET_ROWS && s == 1 ? L_CONTIG : c->src_lay;
        ok = tensor_buffer_init(&in->src[s], lay, src[s].dtype, src[s].n, src[s].ne);
        if (!ok)
            break;
        in->call.src[s] = in->src[s].host;
        int64_t idx[GDN_MAX_DIMS] = {0};
        do
            put(&in->src[s].host, idx, sample(c, s, &rng));
        while (test_next_index(&in->src[s].host, idx));
    }
    for (int d = 0; ok && d < in->call.n_dst; d++) {
        ok = tensor_buffer_init(&in->dst[d], c->dst_lay, dst[d].dtype, dst[d].n, dst[d].ne);
        in->call.dst[d] = in->dst[d].host;
    }
    if (!ok)
        instance_free(in);
    return ok;
}

/* Upload the sources and give the destinations guarded buffers; returns the device call
 * (dst 0 = src 0 for an in-place case). */
static int instance_upload(instance *in, gdn_backend *backend, gdn_op_call *call)
{
    *call = in->call;
    for (int s = 0; s < call->n_src; s++) {
        if (!upload(&in->src[s], backend))
            return 0;
        call->src[s] = device_view(&in->src[s]);
    }
    for (int d = 0; d < call->n_dst; d++) {
        if (!upload(&in->dst[d], backend)) /* host bytes are all 0xFF */
            return 0;
        call->dst[d] = device_view(&in->dst[d]);
    }
    if (in->c.in_place)
        call->dst[0] = call->src[0];
    return 1;
}

/* The buffer that receives destination d on the backend. */
static const tensor_buffer *result_buffer(const instance *in, int d)
{
    return in->c.in_place && d == 0 ? &in->src[0] : &in->dst[d];
}

/* ---------------------------------------------------------------------------------------------
 * Against the reference
 * ------------------------------------------------------------------------------------------- */

/* Tolerances from the precision. F32 against float64: one correctly rounded op is within 2^-24
 * (6e-8) relative, expf/log1pf/sqrtf within a few ulp, so 1e-6 relative (in the L2 norm over a
 * tensor) leaves a margin of about 10. A reduction of length L in float adds one rounding per
 * term, growing like sqrt(L) for random signs: 1e-6 * sqrt(L). BF16 weights are compared with
 * the reference computed on the same BF16 values, so they need no more. Data movement (get_rows,
 * concat, cpy) is exact. The GDN op chains T updates of length-D dot products: 1e-5 as in
 * test_gdn_op. */
static double tolerance(const op_case *c)
{
    switch (c->kind) {
    case GDN_OP_GET_ROWS:
    case GDN_OP_CONCAT:
    case GDN_OP_CPY: return 0.0;
    case GDN_OP_L2_NORM:
    case GDN_OP_RMS_NORM:
    case GDN_OP_RMS_NORM_GATED:
    case GDN_OP_MUL_MAT: return 1e-6 * sqrt((double)c->D);
    case GDN_OP_SSM_CONV: return 1e-6 * sqrt((double)c->X);
    case GDN_OP_GATED_DELTA_NET: return 1e-5;
    default: return 1e-6;
    }
}

/* Compare the downloaded buffer of a destination (view `v`) with the reference (view `rv` over
 * `ref`): every element within the tolerance, every byte outside the view still 0xFF. */
static void compare(const char *label, int ci, const gdn_tensor *v, const unsigned char *got, size_t bytes,
                    const gdn_tensor *rv, const unsigned char *ref, double tol)
{
    unsigned char *mark = calloc(bytes, 1);
    double diff2 = 0, ref2 = 0, max_diff = 0, max_ref = 0;
    int64_t idx[GDN_MAX_DIMS] = {0}, bad = 0;
    do {
        const double g = get(v, got, idx), r = get(rv, ref, idx);
        memset(mark + test_offset_of(v, idx), 1, gdn_dtype_size(v->dtype));
        if (!(fabs(g - r) <= 1e300) || (tol == 0.0 && g != r))
            bad++;
        diff2 += (g - r) * (g - r);
        ref2 += r * r;
        max_diff = fabs(g - r) > max_diff ? fabs(g - r) : max_diff;
        max_ref = fabs(r) > max_ref ? fabs(r) : max_ref;
    } while (test_next_index(v, idx));
    const double rel = sqrt(diff2 / (ref2 > 0 ? ref2 : 1.0));
    CHECK(bad == 0 && rel <= tol && max_diff <= 10.0 * tol * (max_ref > 1.0 ? max_ref : 1.0),
          "%s case %d (%s): relative L2 error %.3g, max error %.3g, %lld non-finite or inexact (tolerance %.3g)",
          label, ci, gdn_op_traits_of(cases[ci].kind)->name, rel, max_diff, (long long)bad, tol);
    int untouched = 1;
    for (size_t i = 0; mark && i < bytes; i++)
        if (!mark[i] && got[i] != 0xFF)
            untouched = 0;
    CHECK(untouched, "%s case %d: bytes outside the destination view were written", label, ci);
    free(mark);
}

/* Download a result buffer; 0 if the guards were overwritten or the download failed. */
static unsigned char *download(const tensor_buffer *tb)
{
    unsigned char *bytes = malloc(tb->bytes);
    if (bytes && !test_buffer_download(&tb->device, bytes)) {
        free(bytes);
        return NULL;
    }
    return bytes;
}

/* Which ops CUDA has already reported as not there yet (printed once each). */
static int cuda_skipped[GDN_OP_COUNT];

/* 1 if the backend answered "not on this backend yet" (only CUDA may): checked and reported. */
static int unsupported(const test_backend *tb, gdn_op_kind kind, gdn_status st)
{
    if (st != GDN_ERROR_UNSUPPORTED || strcmp(tb->label, "cuda") != 0)
        return 0;
    CHECK(strstr(gdn_error_detail(), gdn_op_traits_of(kind)->name) != NULL,
          "cuda: unsupported %s without a message naming it (\"%s\")", gdn_op_traits_of(kind)->name,
          gdn_error_detail());
    /* Only a kind the backend declares it lacks may be skipped: coverage cannot drop silently. */
    CHECK(!tb->backend->ops->supports_op(tb->backend, kind),
          "cuda: %s refused at run time although supports_op declares it", gdn_op_traits_of(kind)->name);
    if (!cuda_skipped[kind])
        printf("cuda: %s skipped (not on CUDA yet)\n", gdn_op_traits_of(kind)->name);
    cuda_skipped[kind] = 1;
    return 1;
}

static void run_case(const test_backend *tb, int ci)
{
    const op_case *c = &cases[ci];
    instance in;
    if (!instance_init(&in, c, 1000 + (uint64_t)ci)) {
        CHECK(0, "case %d: out of memory", ci);
        return;
    }
    /* The reference, into packed F64 destinations (cpy: its own dtype, rounding included). */
    gdn_op_call ref_call = in.call;
    unsigned char *ref[GDN_OP_MAX_DST] = {NULL, NULL};
    int ok = 1;
    for (int d = 0; d < in.call.n_dst; d++) {
        const gdn_tensor *v = &in.call.dst[d];
        const gdn_dtype dt = c->kind == GDN_OP_CPY ? v->dtype : GDN_DTYPE_F64;
        ref_call.dst[d] = gdn_tensor_contiguous(NULL, dt, v->n_dims, v->ne);
        ref[d] = malloc((size_t)gdn_tensor_count(v) * gdn_dtype_size(dt));
        ref_call.dst[d].data = ref[d];
        ok = ok && ref[d] != NULL;
    }
    gdn_status st = ok ? gdn_op_reference(&ref_call) : GDN_ERROR_OUT_OF_MEMORY;
    CHECK(st == GDN_OK, "case %d reference: %s", ci, gdn_error_detail());

    gdn_op_call call;
    ok = st == GDN_OK && instance_upload(&in, tb->backend, &call);
    st = ok ? gdn_op_run(tb->backend, &call) : GDN_ERROR_OUT_OF_MEMORY;
    if (!unsupported(tb, c->kind, st)) {
        CHECK(st == GDN_OK, "%s case %d (%s, %s -> %s%s): %s", tb->label, ci, gdn_op_traits_of(c->kind)->name,
              layout_names[c->src_lay], layout_names[c->dst_lay], c->in_place ? ", in place" : "",
              gdn_error_detail());
        ok = st == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK;
        for (int d = 0; ok && d < in.call.n_dst; d++) {
            const tensor_buffer *rb = result_buffer(&in, d);
            unsigned char *got = download(rb);
            CHECK(got != NULL, "%s case %d: guard region overwritten", tb->label, ci);
            if (got)
                compare(tb->label, ci, &rb->host, got, rb->bytes, &ref_call.dst[d], ref[d], tolerance(c));
            free(got);
        }
    }
    for (int d = 0; d < GDN_OP_MAX_DST; d++)
        free(ref[d]);
    instance_free(&in);
}

/* ---------------------------------------------------------------------------------------------
 * Exactness: subsets of rows, thread counts
 * ------------------------------------------------------------------------------------------- */

/* Run case ci on a backend and return the downloaded bytes of destination 0's buffer. */
static unsigned char *run_bytes(gdn_backend *backend, int ci, size_t *bytes)
{
    instance in;
    gdn_op_call call;
    unsigned char *got = NULL;
    if (instance_init(&in, &cases[ci], 2000 + (uint64_t)ci) && instance_upload(&in, backend, &call) &&
        gdn_op_run(backend, &call) == GDN_OK && gdn_backend_synchronize(backend) == GDN_OK) {
        got = download(result_buffer(&in, 0));
        *bytes = result_buffer(&in, 0)->bytes;
    }
    instance_free(&in);
    return got;
}

static gdn_tensor slice(gdn_tensor t, int dim, int64_t start, int64_t count)
{
    t.data = (char *)t.data + (size_t)start * t.nb[dim];
    t.ne[dim] = count;
    return t;
}

/* Batch invariance: source s cut to [start, start + count) along src_dim, dst along dst_dim,
 * gives the same bits as the whole call at those positions. */
static void check_subset(const test_backend *tb, int ci, int s, int src_dim, int dst_dim, int64_t start,
                         int64_t count)
{
    instance in;
    gdn_op_call call;
    int ok = instance_init(&in, &cases[ci], 3000 + (uint64_t)ci) && instance_upload(&in, tb->backend, &call);
    gdn_status st = ok ? gdn_op_run(tb->backend, &call) : GDN_ERROR_OUT_OF_MEMORY;
    if (unsupported(tb, cases[ci].kind, st)) {
        instance_free(&in);
        return;
    }
    ok = st == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK;
    unsigned char *whole = ok ? download(&in.dst[0]) : NULL;
    ok = whole != NULL && test_buffer_upload(&in.dst[0].device, in.dst[0].host_bytes, in.dst[0].bytes);
    gdn_op_call part = call;
    part.src[s] = slice(call.src[s], src_dim, start, count);
    part.dst[0] = slice(call.dst[0], dst_dim, start, count);
    ok = ok && gdn_op_run(tb->backend, &part) == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK;
    unsigned char *alone = ok ? download(&in.dst[0]) : NULL;
    CHECK(alone != NULL, "%s subset of case %d: %s", tb->label, ci, gdn_error_detail());
    if (alone) {
        gdn_tensor v = slice(in.dst[0].host, dst_dim, start, count);
        const size_t base = (size_t)start * in.dst[0].host.nb[dst_dim];
        int64_t idx[GDN_MAX_DIMS] = {0};
        int same = 1;
        do
            same = same && memcmp(whole + base + test_offset_of(&v, idx), alone + base + test_offset_of(&v, idx), 4) == 0;
        while (test_next_index(&v, idx));
        CHECK(same, "%s: %s rows [%lld, %lld) alone differ from the whole call (case %d)", tb->label,
              gdn_op_traits_of(cases[ci].kind)->name, (long long)start, (long long)(start + count), ci);
    }
    free(whole);
    free(alone);
    instance_free(&in);
}

static void check_threads(void)
{
    gdn_backend_options one = {1, 0}, three = {3, 0};
    gdn_backend *b1 = NULL, *b3 = NULL;
    CHECK(gdn_backend_init(&b1, GDN_BACKEND_CPU, &one) == GDN_OK && gdn_backend_init(&b3, GDN_BACKEND_CPU, &three) == GDN_OK,
          "cpu backends with 1 and 3 threads: %s", gdn_error_detail());
    for (int ci = 0; b1 && b3 && ci < N_CASES; ci++) {
        size_t n1 = 0, n3 = 0;
        unsigned char *r1 = run_bytes(b1, ci, &n1), *r3 = run_bytes(b3, ci, &n3);
        CHECK(r1 && r3 && n1 == n3 && memcmp(r1, r3, n1) == 0, "cpu: case %d (%s) differs between 1 and 3 threads",
              ci, gdn_op_traits_of(cases[ci].kind)->name);
        free(r1);
        free(r3);
    }
    gdn_backend_free(b1);
    gdn_backend_free(b3);
}

/* ---------------------------------------------------------------------------------------------
 * cpy to BF16: round to nearest, ties to even, on hand-picked bit patterns
 * ------------------------------------------------------------------------------------------- */
static void check_bf16_rounding(const test_backend *tb)
{
    static const uint32_t in_bits[] = {0x3F808000u, 0x3F818000u, 0x3F808001u, 0x3F80FFFFu, 0x7F7FFFFFu,
                                       0xFF7F8000u, 0x00018000u, 0x80000000u, 0x7F800000u, 0x7FC00001u};
    static const uint16_t want[] = {0x3F80, 0x3F82, 0x3F81, 0x3F81, 0x7F80, 0xFF80, 0x0002, 0x8000, 0x7F80, 0x7FC0};
    enum { N = sizeof in_bits / sizeof in_bits[0] };
    const int64_t ne[1] = {N};
    gdn_op_call call;
    memset(&call, 0, sizeof call);
    call.kind = GDN_OP_CPY;
    call.n_src = call.n_dst = 1;
    uint16_t ref[N];
    call.src[0] = gdn_tensor_contiguous((void *)in_bits, GDN_DTYPE_F32, 1, ne);
    call.dst[0] = gdn_tensor_contiguous(ref, GDN_DTYPE_BF16, 1, ne);
    CHECK(gdn_op_reference(&call) == GDN_OK && memcmp(ref, want, sizeof want) == 0,
          "reference cpy F32 -> BF16 does not round to nearest even");
    test_buffer src, dst;
    int ok = test_buffer_alloc(&src, tb->backend, sizeof in_bits) && test_buffer_upload(&src, in_bits, sizeof in_bits) &&
             test_buffer_alloc(&dst, tb->backend, sizeof want);
    call.src[0].data = test_buffer_data(&src);
    call.dst[0].data = test_buffer_data(&dst);
    gdn_status st = ok ? gdn_op_run(tb->backend, &call) : GDN_ERROR_OUT_OF_MEMORY;
    if (!unsupported(tb, GDN_OP_CPY, st)) {
        uint16_t got[N];
        ok = st == GDN_OK && gdn_backend_synchronize(tb->backend) == GDN_OK && test_buffer_download(&dst, got);
        CHECK(ok && memcmp(got, want, sizeof want) == 0, "%s: cpy F32 -> BF16 does not round to nearest even",
              tb->label);
    }
    test_buffer_free(&src);
    test_buffer_free(&dst);
}

/* ---------------------------------------------------------------------------------------------
 * Rejected calls: each gives its status and a detail, and writes nothing
 * ------------------------------------------------------------------------------------------- */
typedef struct rejection {
    int base;      /* index into cases */
    int mutation;
    gdn_status want;
    const char *what;
} rejection;

enum {
    MUT_B_NOT_DIVIDING, MUT_A_F16, MUT_DST_F64, MUT_DST_SHAPE, MUT_DST_SHIFTED, MUT_EXACT_ALIAS_FORBIDDEN,
    MUT_K_MISMATCH, MUT_DST_SELF_OVERLAP, MUT_N_SRC, MUT_CONCAT_DIM, MUT_CONCAT_OTHER_DIM, MUT_CONV_SHORT,
    MUT_INDEX_F32, MUT_INDEX_NEGATIVE, MUT_INDEX_PAST_END, MUT_GATED_W_SHAPE, MUT_UNKNOWN_KIND, MUT_MISALIGNED,
    MUT_NULL_DATA, MUT_NAN_EPS, MUT_W_3D,
};

/* Base cases: 0 add, 20 rms_norm, 42 mul_mat, 31 get_rows, 34 concat, 27 ssm_conv, 24 gated. */
static const rejection rejections[] = {
    {0, MUT_B_NOT_DIVIDING, GDN_ERROR_SHAPE, "b does not divide a"},
    {0, MUT_A_F16, GDN_ERROR_TYPE, "a is F16"},
    {20, MUT_DST_F64, GDN_ERROR_TYPE, "F64 dst on a backend"},
    {20, MUT_DST_SHAPE, GDN_ERROR_SHAPE, "dst shape"},
    {20, MUT_DST_SHIFTED, GDN_ERROR_OVERLAP, "dst overlaps a, shifted by one element"},
    {31, MUT_EXACT_ALIAS_FORBIDDEN, GDN_ERROR_OVERLAP, "get_rows dst exactly a (no alias allowed)"},
    {42, MUT_K_MISMATCH, GDN_ERROR_SHAPE, "mul_mat K differs"},
    {42, MUT_W_3D, GDN_ERROR_SHAPE, "mul_mat w with 3 dims"},
    {20, MUT_DST_SELF_OVERLAP, GDN_ERROR_OVERLAP, "dst rows overlap each other"},
    {0, MUT_N_SRC, GDN_ERROR_INVALID_ARGUMENT, "one source for add"},
    {34, MUT_CONCAT_DIM, GDN_ERROR_INVALID_ARGUMENT, "concat dim 7"},
    {34, MUT_CONCAT_OTHER_DIM, GDN_ERROR_SHAPE, "concat: other dims differ"},
    {27, MUT_CONV_SHORT, GDN_ERROR_SHAPE, "ssm_conv x shorter than Kconv"},
    {31, MUT_INDEX_F32, GDN_ERROR_TYPE, "get_rows index F32"},
    {31, MUT_INDEX_NEGATIVE, GDN_ERROR_INVALID_ARGUMENT, "get_rows index -1"},
    {31, MUT_INDEX_PAST_END, GDN_ERROR_INVALID_ARGUMENT, "get_rows index R"},
    {24, MUT_GATED_W_SHAPE, GDN_ERROR_SHAPE, "rms_norm_gated w of the wrong length"},
    {0, MUT_UNKNOWN_KIND, GDN_ERROR_INVALID_ARGUMENT, "unknown kind"},
    {20, MUT_MISALIGNED, GDN_ERROR_INVALID_ARGUMENT, "misaligned a"},
    {0, MUT_NULL_DATA, GDN_ERROR_INVALID_ARGUMENT, "NULL b"},
    {20, MUT_NAN_EPS, GDN_ERROR_INVALID_ARGUMENT, "NaN eps"},
};

static void mutate(int m, gdn_op_call *call, instance *in)
{
    switch (m) {
    case MUT_B_NOT_DIVIDING: call->src[1].ne[0] = 36; break;
    case MUT_A_F16: call->src[0].dtype = GDN_DTYPE_F16; break;
    case MUT_DST_F64: call->dst[0].dtype = GDN_DTYPE_F64; break;
    case MUT_DST_SHAPE: call->dst[0].ne[0] -= 1; break;
    case MUT_DST_SHIFTED: call->dst[0] = call->src[0]; call->dst[0].data = (char *)call->src[0].data + 4; break;
    case MUT_EXACT_ALIAS_FORBIDDEN: /* index of R entries, so dst [R, D] matches a exactly */
        call->src[1].ne[0] = 5;
        call->src[0].ne[1] = 5;
        call->dst[0] = call->src[0];
        break;
    case MUT_K_MISMATCH: call->src[1].ne[0] -= 1; break;
    case MUT_W_3D: call->src[0].n_dims = 3; call->src[0].ne[2] = 2; break;
    case MUT_DST_SELF_OVERLAP: call->dst[0].nb[1] = call->dst[0].nb[0]; break;
    case MUT_N_SRC: call->n_src = 1; break;
    case MUT_CONCAT_DIM: call->params.concat.dim = 7; break;
    case MUT_CONCAT_OTHER_DIM: call->src[1].ne[1] -= 1; break;
    case MUT_CONV_SHORT: call->src[1].ne[0] = call->src[0].ne[0] + 2; break;
    case MUT_INDEX_F32: call->src[1].dtype = GDN_DTYPE_F32; break;
    case MUT_INDEX_NEGATIVE:
    case MUT_INDEX_PAST_END: { /* the last index is bad: a kernel must check them all first */
        const int32_t bad = m == MUT_INDEX_NEGATIVE ? -1 : (int32_t)in->c.R;
        const size_t at = (size_t)(call->src[1].ne[0] - 1) * call->src[1].nb[0];
        memcpy(in->src[1].host_bytes + at, &bad, 4);
        test_buffer_upload(&in->src[1].device, in->src[1].host_bytes, in->src[1].bytes);
        break;
    }
    case MUT_GATED_W_SHAPE: call->src[1].ne[0] -= 1; break;
    case MUT_UNKNOWN_KIND: call->kind = GDN_OP_COUNT; break;
    case MUT_MISALIGNED: call->src[0].data = (char *)call->src[0].data + 1; break;
    case MUT_NULL_DATA: call->src[1].data = NULL; break;
    case MUT_NAN_EPS: call->params.norm.eps = NAN; break;
    default: break;
    }
}

static void check_rejections(const test_backend *tb)
{
    for (size_t r = 0; r < sizeof rejections / sizeof rejections[0]; r++) {
        const rejection *rj = &rejections[r];
        instance in;
        gdn_op_call call;
        if (!instance_init(&in, &cases[rj->base], 7) || !instance_upload(&in, tb->backend, &call)) {
            CHECK(0, "%s rejection '%s': setup failed", tb->label, rj->what);
            instance_free(&in);
            continue;
        }
        mutate(rj->mutation, &call, &in);
        gdn_status st = gdn_op_run(tb->backend, &call);
        if (!unsupported(tb, cases[rj->base].kind, st)) {
            CHECK(st == rj->want, "%s rejection '%s': got %d (%s), expected %d", tb->label, rj->what, (int)st,
                  gdn_error_detail(), (int)rj->want);
            CHECK(strlen(gdn_error_detail()) > 0, "%s rejection '%s': empty detail", tb->label, rj->what);
            if (rj->mutation == MUT_INDEX_NEGATIVE || rj->mutation == MUT_INDEX_PAST_END)
                CHECK(strstr(gdn_error_detail(), "index[") != NULL, "%s: a bad index is not named: %s", tb->label,
                      gdn_error_detail());
        }
        gdn_backend_synchronize(tb->backend); /* after reading the detail: it clears it */
        unsigned char *got = download(&in.dst[0]);
        int intact = got != NULL;
        for (size_t j = 0; intact && j < in.dst[0].bytes; j++)
            intact = got[j] == 0xFF;
        CHECK(intact, "%s rejection '%s': the destination was written", tb->label, rj->what);
        free(got);
        instance_free(&in);
    }
    /* The reference rejects a bad index too, before writing. */
    instance in;
    if (instance_init(&in, &cases[31], 7)) {
        double ref[37 * 5];
        for (int i = 0; i < 37 * 5; i++)
            ref[i] = -1.0;
        gdn_op_call call = in.call;
        int32_t bad = 11;
        memcpy(in.src[1].host_bytes + 2 * sizeof(int32_t), &bad, 4);
        call.dst[0] = gdn_tensor_contiguous(ref, GDN_DTYPE_F64, 2, in.call.dst[0].ne);
        CHECK(gdn_op_reference(&call) == GDN_ERROR_INVALID_ARGUMENT && strstr(gdn_error_detail(), "index[2]=11"),
              "reference get_rows accepted index 11 of 11 rows: %s", gdn_error_detail());
        int untouched = 1;
        for (int i = 0; i < 37 * 5; i++)
            untouched = untouched && ref[i] == -1.0;
        CHECK(untouched, "reference get_rows wrote before rejecting a bad index");
        instance_free(&in);
    }
}

/* The traits the passes rely on. */
static void check_traits(void)
{
    for (int k = 0; k < GDN_OP_COUNT; k++) {
        const gdn_op_traits *t = gdn_op_traits_of((gdn_op_kind)k);
        CHECK(t != NULL && t->name != NULL && t->n_src >= 1 && t->n_dst >= 1, "traits of kind %d", k);
        if (t)
            CHECK(t->strided_dst & 1u, "%s: every CPU kernel takes a strided dst", t->name);
    }
    CHECK(gdn_op_traits_of(GDN_OP_COUNT) == NULL, "traits of an unknown kind");
    CHECK((gdn_op_traits_of(GDN_OP_MUL_MAT)->alias_ok & 1u) == 0 && (gdn_op_traits_of(GDN_OP_ADD)->alias_ok & 1u),
          "alias_ok: add in place, mul_mat never");
}

int main(void)
{
    check_traits();
    test_backend backends[8];
    int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    for (int b = 0; b < n; b++) {
        for (int ci = 0; ci < N_CASES; ci++)
            run_case(&backends[b], ci);
        check_subset(&backends[b], 47, 1, 1, 1, 7, 9);   /* mul_mat: 9 of 33 rows of x */
        check_subset(&backends[b], 47, 1, 1, 1, 32, 1);  /* mul_mat: the last row alone (decode) */
        check_subset(&backends[b], 44, 1, 2, 2, 1, 1);   /* mul_mat: one batch of padded x */
        check_subset(&backends[b], 22, 0, 1, 1, 3, 20);  /* rms_norm */
        check_subset(&backends[b], 21, 0, 2, 2, 1, 1);   /* rms_norm, permuted */
        check_subset(&backends[b], 30, 0, 2, 2, 1, 2);   /* ssm_conv: 2 of 3 sequences */
        check_subset(&backends[b], 28, 0, 2, 2, 2, 1);   /* ssm_conv decode: the last sequence */
        check_subset(&backends[b], 33, 1, 0, 1, 10, 37); /* get_rows: a run of indices */
        check_bf16_rounding(&backends[b]);
        check_rejections(&backends[b]);
    }
    check_threads();
    test_backends_close(backends, n);
    return test_finish("test_ops");
}
