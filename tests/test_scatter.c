/* test_scatter.c: writes through an index, on every backend present against the float64
 * reference. SET_ROWS from a table of cases (each of dims 0..3 as the scatter dim, odd sizes,
 * strided and padded views, F32 and BF16 moved as bits, one row, many more slots than rows) and
 * its refusals (bad index values on every backend with nothing written; bad shapes, dtypes and
 * aliasing); then CONCAT whose tee is a pool written through an index: alone, beside a source
 * index, in place over permuted own slots (the conv window, and a rollback window read at an
 * offset inside its slot), its refusals with nothing written, and its build-time checks. */
#include "harness.h"
#include "core/ops.h"
#include "core/ops_run.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define F 4u /* sizeof(float), for byte strides */

/* Marks reference elements an op left alone: beyond any float, so no value it moves equals it. */
static const double UNWRITTEN = 1e300;

/* Run a call and wait for it; a refusal found on the device (CUDA's index checks) comes back
 * from the run itself, a failure of the launch from the synchronize. */
static gdn_status run_op(gdn_backend *backend, const gdn_op_call *call)
{
    const gdn_status st = gdn_op_run(backend, call);
    return st == GDN_OK ? gdn_backend_synchronize(backend) : st;
}

/* First byte offset at which two buffers differ, or -1: failure messages point at it. */
static long long first_difference(const void *a, const void *b, size_t bytes)
{
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < bytes; i++)
        if (x[i] != y[i])
            return (long long)i;
    return -1;
}

static int status_is(gdn_status st, gdn_status want, const char *detail)
{
    return st == want && (want == GDN_OK || strstr(gdn_error_detail(), detail) != NULL);
}

/* ---------------------------------------------------------------------------------------------
 * SET_ROWS
 * ------------------------------------------------------------------------------------------- */
/* a has counts ne (innermost first), n = ne[dim] positions along the scatter dim; dst has a's
 * counts except `slots` along dim, and max(n_dims, dim + 1) dims. index[j] = (add + mult * j) %
 * slots: distinct whenever gcd(mult, slots) = 1, and with mult > 1 neither sorted nor
 * consecutive, so a kernel that writes position j to slot j, or sorts, shows. The index is
 * stored every index_step entries, with a bad slot number in the gaps. */
typedef struct scatter_case {
    const char *name;
    gdn_dtype dtype;
    int n_dims;
    int64_t ne[4];
    int dim;
    int64_t slots;
    int32_t mult, add;
    test_layout a_lay, dst_lay;
    int index_step;
} scatter_case;

#define SF32 GDN_DTYPE_F32
#define SBF16 GDN_DTYPE_BF16
static const scatter_case scatter_cases[] = {
    {"rows (dim 1)", SF32, 3, {7, 3, 5, 1}, 1, 8, 3, 6, LAYOUT_CONTIGUOUS, LAYOUT_CONTIGUOUS, 1},
    {"elements (dim 0)", SF32, 3, {9, 2, 3, 1}, 0, 13, 5, 12, LAYOUT_SPACED_INNER, LAYOUT_PADDED_ODD, 1},
    {"planes (dim 2)", SF32, 3, {3, 5, 4, 1}, 2, 9, 2, 8, LAYOUT_PERMUTED, LAYOUT_SPACED_INNER, 2},
    {"dim 3", SF32, 4, {5, 4, 3, 2}, 3, 5, 3, 4, LAYOUT_PADDED, LAYOUT_PERMUTED, 1},
    {"bf16 rows", SBF16, 3, {7, 3, 5, 1}, 1, 8, 5, 2, LAYOUT_PADDED_ODD, LAYOUT_PADDED, 2},
    {"bf16 elements", SBF16, 2, {5, 3, 1, 1}, 0, 6, 5, 3, LAYOUT_SPACED_INNER, LAYOUT_SPACED_INNER, 1},
    {"bf16 planes", SBF16, 3, {4, 3, 2, 1}, 2, 5, 3, 4, LAYOUT_CONTIGUOUS, LAYOUT_PERMUTED, 1},
    {"bf16 dim 3", SBF16, 4, {6, 2, 3, 3}, 3, 7, 2, 6, LAYOUT_PERMUTED, LAYOUT_CONTIGUOUS, 1},
    {"one row", SF32, 2, {11, 1, 1, 1}, 1, 6, 1, 4, LAYOUT_CONTIGUOUS, LAYOUT_PADDED, 1},
    {"one position along a dim a lacks", SF32, 2, {5, 3, 1, 1}, 3, 4, 1, 2, LAYOUT_PADDED, LAYOUT_CONTIGUOUS, 2},
    {"many more slots than rows", SF32, 3, {37, 2, 3, 1}, 2, 64, 21, 61, LAYOUT_PADDED, LAYOUT_PADDED_ODD, 1},
    {"bf16, many more slots than rows", SBF16, 2, {33, 3, 1, 1}, 1, 50, 17, 44, LAYOUT_SPACED_INNER, LAYOUT_PADDED,
     1},
    {"large: threads", SF32, 3, {129, 50, 3, 1}, 1, 97, 7, 5, LAYOUT_CONTIGUOUS, LAYOUT_PADDED, 2},
    {"bf16 large: threads", SBF16, 3, {130, 3, 40, 1}, 2, 41, 6, 11, LAYOUT_PADDED, LAYOUT_CONTIGUOUS, 1},
};
enum { MAX_POSITIONS = 64 };

static gdn_op_call set_rows_call(gdn_tensor a, gdn_tensor index, gdn_tensor dst, int dim)
{
    gdn_op_call call;
    memset(&call, 0, sizeof call);
    call.kind = GDN_OP_SET_ROWS;
    call.params.set_rows.dim = dim;
    call.n_src = 2;
    call.n_dst = 1;
    call.src[0] = a;
    call.src[1] = index;
    call.dst[0] = dst;
    return call;
}

/* Random values in every element of t's view (gaps keep their 0xFF). With `specials`, the first
 * two are -0 and the smallest subnormal: bits that an arithmetic or converting kernel alters. */
static void fill_values(const test_tensor *t, test_rng *rng, int specials)
{
    int64_t idx[GDN_MAX_DIMS] = {0};
    int k = 0;
    do {
        unsigned char *p = t->host_bytes + test_offset_of(&t->host, idx);
        const float x = (float)test_rng_normal(rng);
        if (t->host.dtype == GDN_DTYPE_BF16) {
            const uint16_t h = specials && k < 2 ? (k == 0 ? 0x8000u : 0x0001u) : gdn_bf16_from_f32(x);
            memcpy(p, &h, sizeof h);
        } else {
            uint32_t bits;
            memcpy(&bits, &x, sizeof bits);
            if (specials && k < 2)
                bits = k == 0 ? 0x80000000u : 0x00000001u;
            memcpy(p, &bits, sizeof bits);
        }
        k++;
    } while (test_next_index(&t->host, idx));
}

/* Reference value v in dtype's bytes at p (a value the op moved, so exact in that dtype). */
static void put_value(unsigned char *p, gdn_dtype dtype, double v)
{
    if (dtype == GDN_DTYPE_BF16) {
        const uint16_t h = gdn_bf16_from_f32((float)v);
        memcpy(p, &h, sizeof h);
    } else {
        const float x = (float)v;
        memcpy(p, &x, sizeof x);
    }
}

static void check_scatter_case(const test_backend *tb, const scatter_case *sc, test_rng *rng)
{
    const int dim = sc->dim, dst_dims = sc->n_dims > dim + 1 ? sc->n_dims : dim + 1;
    const int64_t n = sc->ne[dim];
    int64_t dst_ne[4];
    memcpy(dst_ne, sc->ne, sizeof dst_ne);
    dst_ne[dim] = sc->slots;
    int32_t index[MAX_POSITIONS], stored[2 * MAX_POSITIONS];
    for (int j = 0; j < 2 * MAX_POSITIONS; j++)
        stored[j] = -7; /* a gap read as an entry refuses the call */
    for (int64_t j = 0; j < n && j < MAX_POSITIONS; j++) {
        index[j] = (int32_t)((sc->add + (int64_t)sc->mult * j) % sc->slots);
        stored[j * sc->index_step] = index[j];
    }
    test_tensor a, dst;
    test_buffer ib;
    memset(&a, 0, sizeof a), memset(&dst, 0, sizeof dst), memset(&ib, 0, sizeof ib);
    double *ref = NULL;
    unsigned char *got = NULL, *want = NULL, *a_got = NULL;
    int ok = n <= MAX_POSITIONS && test_tensor_init(&a, sc->a_lay, sc->dtype, sc->n_dims, sc->ne) &&
             test_tensor_init(&dst, sc->dst_lay, sc->dtype, dst_dims, dst_ne);
    if (ok) {
        fill_values(&a, rng, 1);
        fill_values(&dst, rng, 0); /* the pool's earlier contents: slots not named must keep them */
    }
    const size_t ref_count = (size_t)(dst_ne[0] * dst_ne[1] * dst_ne[2] * dst_ne[3]);
    ok = ok && test_tensor_upload(&a, tb->backend) && test_tensor_upload(&dst, tb->backend) &&
         test_buffer_alloc(&ib, tb->backend, sizeof stored) && test_buffer_upload(&ib, stored, sizeof stored) &&
         (ref = malloc(ref_count * sizeof *ref)) && (got = malloc(dst.bytes)) && (want = malloc(dst.bytes)) &&
         (a_got = malloc(a.bytes));
    CHECK(ok, "%s: set_rows %s: buffers", tb->label, sc->name);
    if (!ok)
        goto done;
    const int64_t ne_i[1] = {n};
    gdn_tensor iv = gdn_tensor_contiguous(test_buffer_data(&ib), GDN_DTYPE_I32, 1, ne_i);
    iv.nb[0] = (size_t)sc->index_step * sizeof *stored;
    const gdn_op_call call = set_rows_call(test_device_view(&a), iv, test_device_view(&dst), dim);
    const gdn_status st = run_op(tb->backend, &call);
    CHECK(st == GDN_OK, "%s: set_rows %s: %s (%s)", tb->label, sc->name, gdn_status_string(st), gdn_error_detail());

    /* Expected bytes: dst's initial bytes, each element the reference wrote in dst's dtype. */
    for (size_t i = 0; i < ref_count; i++)
        ref[i] = UNWRITTEN;
    iv.data = stored;
    const gdn_op_call ref_call = set_rows_call(a.host, iv, gdn_tensor_contiguous(ref, GDN_DTYPE_F64, dst_dims, dst_ne),
                                               dim);
    CHECK(gdn_op_reference(&ref_call) == GDN_OK, "%s: set_rows %s: reference: %s", tb->label, sc->name,
          gdn_error_detail());
    memcpy(want, dst.host_bytes, dst.bytes);
    int64_t idx[GDN_MAX_DIMS] = {0}, written = 0;
    do {
        const double r = *(const double *)((const char *)ref + test_offset_of(&ref_call.dst[0], idx));
        if (r != UNWRITTEN) {
            put_value(want + test_offset_of(&dst.host, idx), sc->dtype, r);
            written++;
        }
    } while (test_next_index(&ref_call.dst[0], idx));
    CHECK(written == gdn_tensor_count(&a.host), "%s: set_rows %s: the reference wrote %lld elements, expected %lld "
          "(one per element of a)", tb->label, sc->name, (long long)written, (long long)gdn_tensor_count(&a.host));
    CHECK(test_buffer_download(&dst.device, got), "%s: set_rows %s: a guard region around dst was overwritten",
          tb->label, sc->name);
    const long long at = first_difference(got, want, dst.bytes);
    CHECK(at < 0, "%s: set_rows %s: dst byte %lld of %zu differs from the expected (slots written from the "
          "reference, the slots not named and the gaps as they were)", tb->label, sc->name, at, dst.bytes);

    /* Independently of the reference: element i of a, bit for bit, at i with i[dim] -> index[i[dim]]. */
    const size_t elem = gdn_dtype_size(sc->dtype);
    int64_t moved = 0, same = 0;
    memset(idx, 0, sizeof idx);
    do {
        int64_t to[GDN_MAX_DIMS];
        memcpy(to, idx, sizeof to);
        to[dim] = index[idx[dim]];
        same += memcmp(got + test_offset_of(&dst.host, to), a.host_bytes + test_offset_of(&a.host, idx), elem) == 0;
        moved++;
    } while (test_next_index(&a.host, idx));
    CHECK(same == moved, "%s: set_rows %s: %lld of %lld elements of a not moved bit for bit to their slot",
          tb->label, sc->name, (long long)(moved - same), (long long)moved);
    CHECK(test_buffer_download(&a.device, a_got) && memcmp(a_got, a.host_bytes, a.bytes) == 0,
          "%s: set_rows %s: the source a (or a guard around it) was written", tb->label, sc->name);
done:
    free(ref), free(got), free(want), free(a_got);
    test_tensor_free(&a), test_tensor_free(&dst), test_buffer_free(&ib);
}

/* Refused calls: a [4, 5] F32 scattered along dim 1 (n = 4) into dst [6, 5] (padded rows), with
 * one fault each. Bad index values are found at run time (on CUDA inside the kernel); the rest
 * by gdn_op_check. Either way nothing is written, anywhere. */
typedef enum scatter_fault {
    SF_VALUES,         /* only the index values are bad */
    SF_INDEX_LONG,     /* index [n + 1] */
    SF_INDEX_F32,      /* an index of floats */
    SF_DST_BF16,       /* dst of another dtype than a's */
    SF_DST_COUNTS,     /* dst's counts differ from a's outside the scatter dim */
    SF_DST_OVER_A,     /* dst's memory holds a */
    SF_DST_OVER_INDEX, /* dst's memory holds the index */
    SF_DST_SELF,       /* dst's rows share memory */
    SF_DIM,            /* dim outside 0..5 */
    SF_INDEXED_DST,    /* set_rows declares no destination written through an index */
} scatter_fault;

typedef struct scatter_refusal {
    const char *name;
    scatter_fault fault;
    int32_t index[5];
    gdn_status want;
    const char *detail; /* in the message on every backend */
} scatter_refusal;

static const scatter_refusal scatter_refusals[] = {
    {"index = S", SF_VALUES, {2, 6, 0, 4}, GDN_ERROR_INVALID_ARGUMENT, "index[1]=6 is outside 0..5"},
    {"negative index", SF_VALUES, {2, 5, -1, 4}, GDN_ERROR_INVALID_ARGUMENT, "index[2]=-1 is outside 0..5"},
    {"most negative index", SF_VALUES, {3, 0, 1, INT32_MIN}, GDN_ERROR_INVALID_ARGUMENT, "index[3]=-2147483648"},
    {"index repeated next to itself", SF_VALUES, {3, 3, 0, 1}, GDN_ERROR_INVALID_ARGUMENT, "index[1]=3 equals"},
    {"index repeated apart", SF_VALUES, {5, 0, 1, 5}, GDN_ERROR_INVALID_ARGUMENT, "index[3]=5 equals"},
    {"index one too long", SF_INDEX_LONG, {4, 1, 5, 2, 0}, GDN_ERROR_SHAPE, "index [n]"},
    {"index of floats", SF_INDEX_F32, {4, 1, 5, 2}, GDN_ERROR_TYPE, "index is F32, expected I32"},
    {"dst BF16, a F32", SF_DST_BF16, {4, 1, 5, 2}, GDN_ERROR_TYPE, "dst is BF16, expected F32"},
    {"dst counts differ outside dim", SF_DST_COUNTS, {4, 1, 5, 2}, GDN_ERROR_SHAPE, "dst has ne[0]=4"},
    {"dst over a", SF_DST_OVER_A, {4, 1, 5, 2}, GDN_ERROR_OVERLAP, "dst overlaps source a"},
    {"dst over the index", SF_DST_OVER_INDEX, {4, 1, 5, 2}, GDN_ERROR_OVERLAP, "dst overlaps source index"},
    {"dst rows over each other", SF_DST_SELF, {4, 1, 5, 2}, GDN_ERROR_OVERLAP, "dst has elements that share memory"},
    {"dim 6", SF_DIM, {4, 1, 5, 2}, GDN_ERROR_INVALID_ARGUMENT, "dim=6, expected 0..5"},
    {"dst written through an index", SF_INDEXED_DST, {4, 1, 5, 2}, GDN_ERROR_INVALID_ARGUMENT,
     "destination 0 cannot be written through an index"},
};

static gdn_op_call scatter_refusal_call(const scatter_refusal *sr, gdn_tensor a, void *index, gdn_tensor dst)
{
    const int64_t ne_i[1] = {sr->fault == SF_INDEX_LONG ? 5 : 4};
    gdn_op_call call = set_rows_call(a, gdn_tensor_contiguous(index, GDN_DTYPE_I32, 1, ne_i), dst, 1);
    switch (sr->fault) {
    case SF_INDEX_F32: call.src[1].dtype = GDN_DTYPE_F32; break;
    case SF_DST_BF16: call.dst[0].dtype = GDN_DTYPE_BF16; break;
    case SF_DST_COUNTS: call.dst[0].ne[0] -= 1; break;
    case SF_DST_OVER_A: call.src[0].data = call.dst[0].data; break;
    case SF_DST_OVER_INDEX: call.src[1].data = (char *)call.dst[0].data + 8; break;
    case SF_DST_SELF: call.dst[0].nb[1] = call.dst[0].nb[0]; break;
    case SF_DIM: call.params.set_rows.dim = GDN_MAX_DIMS; break;
    case SF_INDEXED_DST: call.src[2] = call.src[1], call.n_src = 3, call.indexed_dst = 1; break;
    default: break;
    }
    return call;
}

static void check_scatter_refusal(const test_backend *tb, const scatter_refusal *sr, test_rng *rng)
{
    const int64_t ne_a[2] = {5, 4}, ne_d[2] = {5, 6};
    test_tensor a, dst;
    test_buffer ib;
    memset(&a, 0, sizeof a), memset(&dst, 0, sizeof dst), memset(&ib, 0, sizeof ib);
    unsigned char a_got[5 * 4 * F], dst_got[256];
    int32_t index_got[5];
    int ok = test_tensor_init(&a, LAYOUT_CONTIGUOUS, GDN_DTYPE_F32, 2, ne_a) &&
             test_tensor_init(&dst, LAYOUT_PADDED, GDN_DTYPE_F32, 2, ne_d) && dst.bytes <= sizeof dst_got;
    if (ok)
        fill_values(&a, rng, 0), fill_values(&dst, rng, 0);
    ok = ok && test_tensor_upload(&a, tb->backend) && test_tensor_upload(&dst, tb->backend) &&
         test_buffer_alloc(&ib, tb->backend, sizeof sr->index) && test_buffer_upload(&ib, sr->index, sizeof sr->index);
    CHECK(ok, "%s: set_rows refusal, %s: buffers", tb->label, sr->name);
    if (ok) {
        const gdn_op_call call =
            scatter_refusal_call(sr, test_device_view(&a), test_buffer_data(&ib), test_device_view(&dst));
        const gdn_status st = run_op(tb->backend, &call);
        CHECK(status_is(st, sr->want, sr->detail), "%s: set_rows refusal, %s: %s (%s), expected %s with \"%s\"",
              tb->label, sr->name, gdn_status_string(st), gdn_error_detail(), gdn_status_string(sr->want), sr->detail);
        const int read_back = test_buffer_download(&a.device, a_got) &&
                              test_buffer_download(&dst.device, dst_got) && test_buffer_download(&ib, index_got);
        CHECK(read_back && memcmp(a_got, a.host_bytes, a.bytes) == 0 &&
                  memcmp(dst_got, dst.host_bytes, dst.bytes) == 0 &&
                  memcmp(index_got, sr->index, sizeof index_got) == 0,
              "%s: set_rows refusal, %s: bytes of dst, a or the index (or a guard) were written", tb->label, sr->name);
    }
    /* The reference refuses the same call, and writes nothing either. */
    double ref[5 * 6];
    for (int i = 0; i < 5 * 6; i++)
        ref[i] = UNWRITTEN;
    int32_t index[5];
    memcpy(index, sr->index, sizeof index);
    const gdn_op_call ref_call = scatter_refusal_call(sr, a.host, index, gdn_tensor_contiguous(ref, GDN_DTYPE_F64, 2,
                                                                                                ne_d));
    const gdn_status st = ok ? gdn_op_reference(&ref_call) : GDN_OK;
    int untouched = 1;
    for (int i = 0; i < 5 * 6; i++)
        untouched &= ref[i] == UNWRITTEN;
    CHECK(ok && st == sr->want && untouched, "%s: set_rows refusal, %s: the reference gives %s (%s)%s, expected %s",
          tb->label, sr->name, gdn_status_string(st), gdn_error_detail(), untouched ? "" : " and wrote",
          gdn_status_string(sr->want));
    test_tensor_free(&a), test_tensor_free(&dst), test_buffer_free(&ib);
}

/* A long index (more than 64 entries: CUDA looks for repeats with a shared bitmap there, and
 * compares entries pairwise only below): a permutation of slots scatters every row to its slot,
 * and the same index with one entry repeated far from its twin is refused with nothing written. */
static void check_long_index(const test_backend *tb, test_rng *rng)
{
    enum { ROW = 3, N = 100, SLOTS = 300 };
    static float a[N][ROW], dst0[SLOTS][ROW], got[SLOTS][ROW];
    int32_t index[N];
    int32_t order[SLOTS];
    for (int i = 0; i < SLOTS; i++)
        order[i] = i;
    for (int i = SLOTS - 1; i > 0; i--) { /* a random permutation; its first N entries are the index */
        const int j = (int)(test_rng_next(rng) % (uint64_t)(i + 1));
        const int32_t t = order[i];
        order[i] = order[j], order[j] = t;
    }
    memcpy(index, order, sizeof index);
    for (int r = 0; r < N; r++)
        for (int e = 0; e < ROW; e++)
            a[r][e] = (float)test_rng_uniform(rng, -1.0, 1.0);
    for (int r = 0; r < SLOTS; r++)
        for (int e = 0; e < ROW; e++)
            dst0[r][e] = (float)test_rng_uniform(rng, -1.0, 1.0);
    const int64_t ne_a[2] = {ROW, N}, ne_d[2] = {ROW, SLOTS}, ne_i[1] = {N};
    for (int repeat = 0; repeat < 2; repeat++) {
        if (repeat)
            index[90] = index[17];
        test_buffer ab, db, ib;
        memset(&ab, 0, sizeof ab), memset(&db, 0, sizeof db), memset(&ib, 0, sizeof ib);
        int ok = test_buffer_alloc(&ab, tb->backend, sizeof a) && test_buffer_upload(&ab, a, sizeof a) &&
                 test_buffer_alloc(&db, tb->backend, sizeof dst0) && test_buffer_upload(&db, dst0, sizeof dst0) &&
                 test_buffer_alloc(&ib, tb->backend, sizeof index) && test_buffer_upload(&ib, index, sizeof index);
        CHECK(ok, "%s: set_rows, long index: buffers", tb->label);
        if (ok) {
            const gdn_op_call call = set_rows_call(
                gdn_tensor_contiguous(test_buffer_data(&ab), GDN_DTYPE_F32, 2, ne_a),
                gdn_tensor_contiguous(test_buffer_data(&ib), GDN_DTYPE_I32, 1, ne_i),
                gdn_tensor_contiguous(test_buffer_data(&db), GDN_DTYPE_F32, 2, ne_d), 1);
            const gdn_status st = run_op(tb->backend, &call);
            const int as_expected = repeat ? status_is(st, GDN_ERROR_INVALID_ARGUMENT, "index[90]") : st == GDN_OK;
            char detail[256];
            snprintf(detail, sizeof detail, "%s", gdn_error_detail()); /* the download clears it */
            ok = test_buffer_download(&db, got);
            float want[SLOTS][ROW];
            memcpy(want, dst0, sizeof want);
            for (int r = 0; r < N && !repeat; r++)
                memcpy(want[index[r]], a[r], sizeof a[r]);
            CHECK(as_expected, "%s: set_rows, long index%s: %s (%s)", tb->label, repeat ? " with a repeat" : "",
                  gdn_status_string(st), detail);
            CHECK(ok && memcmp(got, want, sizeof want) == 0, "%s: set_rows, long index%s: dst differs at byte %lld",
                  tb->label, repeat ? " with a repeat (must be untouched)" : "",
                  first_difference(got, want, sizeof want));
        }
        test_buffer_free(&ab), test_buffer_free(&db), test_buffer_free(&ib);
    }
}

/* ---------------------------------------------------------------------------------------------
 * CONCAT with its tee written through an index
 * ------------------------------------------------------------------------------------------- */
/* Window columns, new columns, channels, sequences, pool slots; two pool layouts:
 *   window:   a slot holds [W][C] floats and a pad (time outermost in memory, read
 *             time-innermost, as the block's conv pool); sequence j reads slot index[j] and the
 *             last W columns of its output are teed into slot tee_index[j].
 *   rollback: a slot holds [COLS][C] floats, COLS = W + T; the read pool's rows are one column
 *             apart (index = slot * COLS + column offset) and the whole output is teed into slot
 *             tee_index[j]: a cache keeping every column of a step reads its window at an offset
 *             inside the slot.
 * The new columns come from `fresh` [B][T][C] with rows padded to FROW. */
enum { W = 3, T = 2, C = 7, B = 4, S = 9, SLOT = W * C + 3, COLS = W + T, FROW = C + 2 };
enum { POOL_FLOATS = S * COLS * C, DST_FLOATS = (W + T) * C * B };
#define R(slot, column) ((slot) * COLS + (column)) /* a rollback read row */

typedef struct tee_case {
    const char *name;
    int rollback;    /* the rollback layout, else the window layout */
    int src_indexed; /* a is the pool read through index[], else a window buffer [B] of its own */
    int same_pool;   /* the tee is written into the pool that is read, else into a pool of its own */
    int32_t index[B], tee_index[B];
    gdn_status want;
    const char *detail; /* in the message on every backend, for a refusal */
} tee_case;

#define BAD GDN_ERROR_INVALID_ARGUMENT
static const tee_case tee_cases[] = {
    {"tee index only", 0, 0, 0, {0}, {6, 0, 8, 3}, GDN_OK, ""},
    {"source and tee index, separate pools", 0, 1, 0, {2, 2, 7, 0}, {2, 0, 8, 3}, GDN_OK, ""},
    {"source and tee index, disjoint slots of one pool", 0, 1, 1, {0, 4, 0, 8}, {6, 1, 3, 5}, GDN_OK, ""},
    {"in place: own slots, permuted", 0, 1, 1, {7, 2, 5, 0}, {7, 2, 5, 0}, GDN_OK, ""},
    {"in place: own slots and an unwritten one", 0, 1, 1, {7, 4, 5, 0}, {7, 2, 5, 0}, GDN_OK, ""},
    {"rollback: windows at offsets in own slots", 1, 1, 1, {R(7, 0), R(2, 2), R(5, 1), R(0, 2)}, {7, 2, 5, 0},
     GDN_OK, ""},
    {"rollback: one window in an unwritten slot", 1, 1, 1, {R(7, 1), R(4, 2), R(5, 0), R(0, 0)}, {7, 2, 5, 0},
     GDN_OK, ""},
    {"tee index = S", 0, 1, 1, {7, 2, 5, 0}, {7, 2, 9, 0}, BAD, "destination index[2]=9 is outside 0..8"},
    {"negative tee index", 0, 0, 0, {0}, {6, -1, 8, 3}, BAD, "destination index[1]=-1 is outside 0..8"},
    {"repeated tee index", 0, 1, 1, {7, 2, 5, 0}, {7, 2, 7, 0}, BAD, "destination index[2]=7 equals"},
    {"repeated tee index, no source index", 0, 0, 0, {0}, {3, 3, 1, 0}, BAD, "destination index[1]=3 equals"},
    {"source index outside the pool", 0, 1, 1, {7, 9, 5, 0}, {7, 2, 5, 0}, BAD, "index[1]=9 is outside 0..8"},
    {"reads the slot a later position writes", 0, 1, 1, {2, 2, 5, 0}, {7, 2, 5, 0}, GDN_ERROR_OVERLAP,
     "index[0]=2: the pool slot read meets destination 1"},
    {"reads the slot an earlier position writes", 0, 1, 1, {7, 7, 5, 0}, {7, 2, 5, 0}, GDN_ERROR_OVERLAP,
     "index[1]=7: the pool slot read meets destination 1"},
    {"rollback: window past its own slot", 1, 1, 1, {R(7, 0), R(2, T + 1), R(5, 0), R(0, 0)}, {7, 2, 5, 0},
     GDN_ERROR_OVERLAP, "index[1]=13: the pool slot read meets destination 1"},
    {"rollback: window into another position's slot", 1, 1, 1, {R(1, 3), R(2, 0), R(5, 0), R(0, 0)}, {7, 2, 5, 0},
     GDN_ERROR_OVERLAP, "index[0]=8: the pool slot read meets destination 1"},
};

/* Floats from one slot of the tee's pool to the next, and columns teed per position. */
static int slot_floats(const tee_case *tc)
{
    return tc->rollback ? COLS * C : SLOT;
}

static int tee_cols(const tee_case *tc)
{
    return tc->rollback ? W + T : W;
}

/* Floats from one row of a (a position's window) to the next. */
static int a_row_floats(const tee_case *tc)
{
    return tc->src_indexed && tc->rollback ? C : SLOT;
}

/* concat(a (through index when src_indexed), fresh) along dim 0 -> dst, tee (a pool of S slots)
 * written through tee_index; F64 destinations (the reference) packed. Sources: {a, fresh,
 * index, tee_index}, or {a, fresh, tee_index}. */
static gdn_op_call tee_call(const tee_case *tc, void *a, void *fresh, void *index, void *tee_index, void *dst,
                            void *tee, gdn_dtype dtype)
{
    gdn_op_call call;
    memset(&call, 0, sizeof call);
    call.kind = GDN_OP_CONCAT;
    call.params.concat.dim = 0;
    const int64_t ne_a[3] = {W, C, !tc->src_indexed ? B : tc->rollback ? S * COLS - (W - 1) : S};
    const int64_t ne_f[3] = {T, C, B}, ne_i[1] = {B}, ne_d[3] = {W + T, C, B}, ne_t[3] = {tee_cols(tc), C, S};
    call.src[0] = gdn_tensor_contiguous(a, GDN_DTYPE_F32, 3, ne_a);
    call.src[0].nb[0] = C * F, call.src[0].nb[1] = F, call.src[0].nb[2] = (size_t)a_row_floats(tc) * F;
    call.src[1] = gdn_tensor_contiguous(fresh, GDN_DTYPE_F32, 3, ne_f);
    call.src[1].nb[0] = FROW * F, call.src[1].nb[1] = F, call.src[1].nb[2] = T * FROW * F;
    call.n_src = 2;
    if (tc->src_indexed)
        call.src[call.n_src++] = gdn_tensor_contiguous(index, GDN_DTYPE_I32, 1, ne_i);
    call.src[call.n_src++] = gdn_tensor_contiguous(tee_index, GDN_DTYPE_I32, 1, ne_i); /* the tee's, last */
    call.n_dst = 2;
    call.indexed_dst = 2;
    call.dst[0] = gdn_tensor_contiguous(dst, dtype, 3, ne_d);
    call.dst[1] = gdn_tensor_contiguous(tee, dtype, 3, ne_t);
    if (dtype == GDN_DTYPE_F32)
        call.dst[1].nb[0] = C * F, call.dst[1].nb[1] = F, call.dst[1].nb[2] = (size_t)slot_floats(tc) * F;
    call.tee_offset[0] = tc->rollback ? 0 : T;
    return call;
}

typedef struct tee_buffers {
    test_buffer pool, other, window, fresh, index, dst; /* other: the tee's pool when not the read one */
    float pool0[POOL_FLOATS], other0[POOL_FLOATS], window0[B * SLOT], fresh0[B * T * FROW];
    float pool_got[POOL_FLOATS], other_got[POOL_FLOATS], window_got[B * SLOT], fresh_got[B * T * FROW];
    float dst_got[DST_FLOATS], dst_want[DST_FLOATS], pool_want[POOL_FLOATS], other_want[POOL_FLOATS];
    double dst_ref[DST_FLOATS], tee_ref[(W + T) * C * S];
    int32_t indices[2 * B], indices_got[2 * B]; /* index then tee_index */
} tee_buffers;

/* The backend's bytes against what the reference says (or against the bytes before, when
 * refused), and the tee against the backend's own dst independently of the reference. */
static void compare_tee_case(const test_backend *tb, const tee_case *tc, tee_buffers *bf)
{
    const int32_t *index = bf->indices, *tee_index = bf->indices + B;
    memcpy(bf->pool_want, bf->pool0, sizeof bf->pool_want);
    memcpy(bf->other_want, bf->other0, sizeof bf->other_want);
    memset(bf->dst_want, 0xFF, sizeof bf->dst_want); /* a refused call leaves the 0xFF fill */
    for (int i = 0; i < (W + T) * C * S; i++)
        bf->tee_ref[i] = UNWRITTEN;
    const gdn_op_call ref = tee_call(tc, tc->src_indexed ? bf->pool0 : bf->window0, bf->fresh0, bf->indices,
                                     bf->indices + B, bf->dst_ref, bf->tee_ref, GDN_DTYPE_F64);
    const gdn_status st = gdn_op_reference(&ref);
    /* A refusal for overlap depends on where the tee lies, which the reference's F64 tee does not
     * share; every other refusal the reference makes too. */
    if (tc->want != GDN_ERROR_OVERLAP)
        CHECK(status_is(st, tc->want, tc->detail), "%s: %s: reference: %s (%s), expected %s", tb->label, tc->name,
              gdn_status_string(st), gdn_error_detail(), gdn_status_string(tc->want));
    float *target = tc->same_pool ? bf->pool_want : bf->other_want;
    int written = 0;
    for (int i = 0; tc->want == GDN_OK && i < DST_FLOATS; i++)
        bf->dst_want[i] = (float)bf->dst_ref[i];
    for (int s = 0; tc->want == GDN_OK && s < S; s++)
        for (int c = 0; c < C; c++)
            for (int w = 0; w < tee_cols(tc); w++) {
                const double v = bf->tee_ref[(s * C + c) * tee_cols(tc) + w];
                if (v != UNWRITTEN)
                    target[s * slot_floats(tc) + w * C + c] = (float)v, written++;
            }
    if (tc->want == GDN_OK)
        CHECK(written == tee_cols(tc) * C * B, "%s: %s: the reference teed %d elements, expected %d", tb->label,
              tc->name, written, tee_cols(tc) * C * B);
    long long at = first_difference(bf->dst_got, bf->dst_want, sizeof bf->dst_got);
    CHECK(at < 0, "%s: %s: dst byte %lld differs from the %s", tb->label, tc->name, at,
          tc->want == GDN_OK ? "reference" : "0xFF fill (written on a refused call)");
    at = first_difference(bf->pool_got, bf->pool_want, sizeof bf->pool_got);
    CHECK(at < 0, "%s: %s: read pool byte %lld (slot %lld) differs from the expected (the slots teed into from the "
          "reference, all else as before)", tb->label, tc->name, at, at / (long long)(slot_floats(tc) * F));
    at = first_difference(bf->other_got, bf->other_want, sizeof bf->other_got);
    CHECK(at < 0, "%s: %s: the tee's own pool, byte %lld (slot %lld), differs from the expected", tb->label, tc->name,
          at, at / (long long)(slot_floats(tc) * F));
    CHECK(memcmp(bf->window_got, bf->window0, sizeof bf->window0) == 0 &&
              memcmp(bf->fresh_got, bf->fresh0, sizeof bf->fresh0) == 0 &&
              memcmp(bf->indices_got, bf->indices, sizeof bf->indices) == 0,
          "%s: %s: a source (window, fresh or an index) was written", tb->label, tc->name);
    if (tc->want != GDN_OK)
        return;
    /* Without the reference: position j's row is a's row index[j] (its window as it was) then
     * fresh, and slot tee_index[j] of the tee holds that row's teed columns, bit for bit. */
    const float *a0 = tc->src_indexed ? bf->pool0 : bf->window0;
    const float *tee_got = tc->same_pool ? bf->pool_got : bf->other_got;
    const int offset = tc->rollback ? 0 : T;
    int same = 1;
    for (int j = 0; j < B; j++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < W + T; i++) {
                const float *d = &bf->dst_got[(j * C + c) * (W + T) + i];
                const int row = tc->src_indexed ? index[j] : j;
                const float *from = i < W ? &a0[row * a_row_floats(tc) + i * C + c]
                                          : &bf->fresh0[(j * T + i - W) * FROW + c];
                same &= memcmp(d, from, F) == 0;
                if (i >= offset && i - offset < tee_cols(tc))
                    same &= memcmp(&tee_got[tee_index[j] * slot_floats(tc) + (i - offset) * C + c], d, F) == 0;
            }
    CHECK(same, "%s: %s: dst rows are not the window then fresh, or the teed slots not their last columns",
          tb->label, tc->name);
}

static void check_tee_case(const test_backend *tb, const tee_case *tc, test_rng *rng)
{
    tee_buffers *bf = calloc(1, sizeof *bf);
    CHECK(bf != NULL, "out of memory");
    if (bf == NULL)
        return;
    memcpy(bf->indices, tc->index, sizeof tc->index);
    memcpy(bf->indices + B, tc->tee_index, sizeof tc->tee_index);
    for (int i = 0; i < POOL_FLOATS; i++)
        bf->pool0[i] = (float)test_rng_normal(rng), bf->other0[i] = (float)test_rng_normal(rng);
    for (int i = 0; i < B * SLOT; i++)
        bf->window0[i] = (float)test_rng_normal(rng);
    for (int i = 0; i < B * T * FROW; i++)
        bf->fresh0[i] = (float)test_rng_normal(rng);
    int ok = test_buffer_alloc(&bf->pool, tb->backend, sizeof bf->pool0) &&
             test_buffer_alloc(&bf->other, tb->backend, sizeof bf->other0) &&
             test_buffer_alloc(&bf->window, tb->backend, sizeof bf->window0) &&
             test_buffer_alloc(&bf->fresh, tb->backend, sizeof bf->fresh0) &&
             test_buffer_alloc(&bf->index, tb->backend, sizeof bf->indices) &&
             test_buffer_alloc(&bf->dst, tb->backend, sizeof bf->dst_got) &&
             test_buffer_upload(&bf->pool, bf->pool0, sizeof bf->pool0) &&
             test_buffer_upload(&bf->other, bf->other0, sizeof bf->other0) &&
             test_buffer_upload(&bf->window, bf->window0, sizeof bf->window0) &&
             test_buffer_upload(&bf->fresh, bf->fresh0, sizeof bf->fresh0) &&
             test_buffer_upload(&bf->index, bf->indices, sizeof bf->indices);
    CHECK(ok, "%s: %s: buffers", tb->label, tc->name);
    if (ok) {
        char *pool = test_buffer_data(&bf->pool), *index = test_buffer_data(&bf->index);
        char *tee = tc->same_pool ? pool : test_buffer_data(&bf->other);
        const gdn_op_call call = tee_call(tc, tc->src_indexed ? pool : test_buffer_data(&bf->window),
                                          test_buffer_data(&bf->fresh), index, index + B * sizeof(int32_t),
                                          test_buffer_data(&bf->dst), tee, GDN_DTYPE_F32);
        const gdn_status st = run_op(tb->backend, &call);
        CHECK(status_is(st, tc->want, tc->detail), "%s: %s: %s (%s), expected %s with \"%s\"", tb->label, tc->name,
              gdn_status_string(st), gdn_error_detail(), gdn_status_string(tc->want), tc->detail);
        ok = test_buffer_download(&bf->pool, bf->pool_got) && test_buffer_download(&bf->other, bf->other_got) &&
             test_buffer_download(&bf->window, bf->window_got) && test_buffer_download(&bf->fresh, bf->fresh_got) &&
             test_buffer_download(&bf->index, bf->indices_got) && test_buffer_download(&bf->dst, bf->dst_got);
        CHECK(ok, "%s: %s: read-back, or a guard region was overwritten", tb->label, tc->name);
    }
    if (ok)
        compare_tee_case(tb, tc, bf);
    test_buffer_free(&bf->pool), test_buffer_free(&bf->other), test_buffer_free(&bf->window);
    test_buffer_free(&bf->fresh), test_buffer_free(&bf->index), test_buffer_free(&bf->dst);
    free(bf);
}

/* Build-time refusals of an indexed tee by gdn_op_check, on host addresses never dereferenced. */
static void check_tee_build_refusals(void)
{
    static float pool[POOL_FLOATS], window[B * SLOT], fresh[B * T * FROW], dst[DST_FLOATS];
    static int32_t indices[2 * B];
    const tee_case *in_place = &tee_cases[3], *tee_only = &tee_cases[0];
    const struct {
        const char *name;
        gdn_status want;
        const char *detail;
    } cases[] = {
        {"indexed tee at an offset along its index's dim", GDN_ERROR_SHAPE, "the tee starts at offset 1 along dim 2"},
        {"tee index of the wrong length", GDN_ERROR_SHAPE, "tee index has ne[0]=3"},
        {"tee index of floats", GDN_ERROR_TYPE, "the destination index is F32, expected I32"},
        {"dst 0 written through an index", BAD, "destination 0 cannot be written through an index"},
        {"an index for a tee the call lacks", BAD, "destination 1 cannot be written through an index"},
        {"indexed tee, concat along the index's dim", GDN_ERROR_SHAPE, "the index selects along dim 2, the concat dim"},
        {"tee index only, the tee over source a", GDN_ERROR_OVERLAP, "the tee overlaps source a"},
        {"tee of another dtype than dst", GDN_ERROR_TYPE, "tee is BF16, expected F32"},
        {"tee pool wider than dst", GDN_ERROR_SHAPE, "along dim 1 is outside dst"},
        {"a second index for the tee", BAD, "5 sources and 2 destinations"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gdn_op_call call = tee_call(i == 6 ? tee_only : in_place, i == 6 ? window : pool, fresh, indices,
                                    indices + B, dst, i == 6 ? window : pool, GDN_DTYPE_F32);
        switch (i) {
        case 0: call.tee_offset[2] = 1; break;
        case 1: call.src[3].ne[0] = B - 1; break;
        case 2: call.src[3].dtype = GDN_DTYPE_F32; break;
        case 3: call.indexed_dst = 1; break;
        case 4: call.n_dst = 1; break;
        case 5: call.params.concat.dim = 2; break;
        case 7: call.dst[1].dtype = GDN_DTYPE_BF16; break;
        case 8: call.dst[1].ne[1] = C + 1; break;
        case 9: call.src[4] = call.src[3], call.n_src = 5; break;
        }
        const gdn_status st = gdn_op_check(&call, 0);
        CHECK(status_is(st, cases[i].want, cases[i].detail), "op check, %s: %s (%s), expected %s with \"%s\"",
              cases[i].name, gdn_status_string(st), gdn_error_detail(), gdn_status_string(cases[i].want),
              cases[i].detail);
    }
    /* The well-formed calls these are mutated from pass, so each refusal is the mutation's. */
    CHECK(gdn_op_check((gdn_op_call[]){tee_call(in_place, pool, fresh, indices, indices + B, dst, pool,
                                                GDN_DTYPE_F32)}, 0) == GDN_OK &&
              gdn_op_check((gdn_op_call[]){tee_call(tee_only, window, fresh, indices, indices + B, dst, pool,
                                                    GDN_DTYPE_F32)}, 0) == GDN_OK,
          "op check: the unmutated indexed-tee calls are refused: %s", gdn_error_detail());
}

int main(void)
{
    check_tee_build_refusals();
    test_backend backends[8];
    const int n = test_backends_open(backends, 8);
    CHECK(n >= 1, "no backend could be opened");
    test_rng rng;
    test_rng_seed(&rng, 2027);
    for (int b = 0; b < n; b++) {
        for (size_t i = 0; i < sizeof scatter_cases / sizeof scatter_cases[0]; i++)
            check_scatter_case(&backends[b], &scatter_cases[i], &rng);
        for (size_t i = 0; i < sizeof scatter_refusals / sizeof scatter_refusals[0]; i++)
            check_scatter_refusal(&backends[b], &scatter_refusals[i], &rng);
        check_long_index(&backends[b], &rng);
        for (size_t i = 0; i < sizeof tee_cases / sizeof tee_cases[0]; i++)
            check_tee_case(&backends[b], &tee_cases[i], &rng);
    }
    test_backends_close(backends, n);
    return test_finish("test_scatter");
}
