/* harness.c: shared test support (see harness.h). */
#include "harness.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

int test_passed, test_failed;

void test_check_at(int ok, const char *file, int line, const char *format, ...)
{
    if (ok) {
        test_passed++;
        return;
    }
    test_failed++;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_list args;
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
}

int test_finish(const char *program)
{
    printf("%s: %d passed, %d failed\n", program, test_passed, test_failed);
    return test_failed == 0 && test_passed > 0 ? 0 : 1;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void test_rng_seed(test_rng *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t test_rng_next(test_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double test_rng_uniform(test_rng *rng, double lo, double hi)
{
    return lo + (hi - lo) * (double)(test_rng_next(rng) >> 11) * 0x1.0p-53;
}

double test_rng_normal(test_rng *rng)
{
    double u = test_rng_uniform(rng, 1e-300, 1.0), w = test_rng_uniform(rng, 0.0, 1.0);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * w);
}

int test_backends_open(test_backend *list, int max)
{
    int n = 0;
    /* The CPU backend once per SIMD level, forced through GDN_CPU_SIMD. */
    static const char *levels[] = {"scalar", "avx2", "avx512"};
    static const char *labels[] = {"cpu/scalar", "cpu/avx2", "cpu/avx512"};
    for (int i = 0; i < 3 && n < max; i++) {
        setenv("GDN_CPU_SIMD", levels[i], 1);
        gdn_backend *b = NULL;
        if (gdn_backend_init(&b, GDN_BACKEND_CPU, NULL) == GDN_OK) {
            list[n].backend = b;
            list[n].label = labels[i];
            n++;
        } else {
            printf("%s: skipped (%s)\n", labels[i], gdn_error_detail());
        }
    }
    unsetenv("GDN_CPU_SIMD");
    const char *why = NULL;
    if (n < max && gdn_backend_available(GDN_BACKEND_CUDA, &why)) {
        gdn_backend *b = NULL;
        gdn_status st = gdn_backend_init(&b, GDN_BACKEND_CUDA, NULL);
        CHECK(st == GDN_OK, "cuda backend init: %s", gdn_error_detail());
        if (st == GDN_OK) {
            list[n].backend = b;
            list[n].label = "cuda";
            n++;
        }
    } else {
        printf("cuda: skipped (%s)\n", why ? why : "no room");
    }
    for (int i = 0; i < n; i++)
        printf("backend %s: %s\n", list[i].label, gdn_backend_name(list[i].backend));
    return n;
}

void test_backends_close(test_backend *list, int n)
{
    for (int i = 0; i < n; i++)
        gdn_backend_free(list[i].backend);
}

int test_buffer_alloc(test_buffer *buf, gdn_backend *backend, size_t bytes)
{
    size_t total = bytes + 2 * TEST_GUARD_BYTES;
    buf->backend = backend;
    buf->bytes = bytes;
    buf->base = NULL;
    void *base = NULL;
    if (gdn_backend_alloc(backend, total, &base) != GDN_OK)
        return 0;
    buf->base = base;
    unsigned char *fill = malloc(total);
    if (fill == NULL)
        return 0;
    memset(fill, 0xFF, total);
    int ok = gdn_backend_upload(backend, base, fill, total) == GDN_OK;
    free(fill);
    return ok;
}

void test_buffer_free(test_buffer *buf)
{
    if (buf->base)
        gdn_backend_dealloc(buf->backend, buf->base);
    buf->base = NULL;
}

void *test_buffer_data(const test_buffer *buf)
{
    return buf->base + TEST_GUARD_BYTES;
}

int test_buffer_upload(test_buffer *buf, const void *host, size_t bytes)
{
    return gdn_backend_upload(buf->backend, test_buffer_data(buf), host, bytes) == GDN_OK;
}

int test_buffer_download(const test_buffer *buf, void *host)
{
    size_t total = buf->bytes + 2 * TEST_GUARD_BYTES;
    unsigned char *all = malloc(total);
    if (all == NULL)
        return 0;
    int ok = gdn_backend_download(buf->backend, all, buf->base, total) == GDN_OK;
    memcpy(host, all + TEST_GUARD_BYTES, buf->bytes);
    for (size_t i = 0; ok && i < TEST_GUARD_BYTES; i++)
        ok = all[i] == 0xFF && all[TEST_GUARD_BYTES + buf->bytes + i] == 0xFF;
    free(all);
    return ok;
}

size_t test_offset_of(const gdn_tensor *t, const int64_t *idx)
{
    size_t off = 0;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        off += (size_t)idx[i] * t->nb[i];
    return off;
}

int test_next_index(const gdn_tensor *t, int64_t *idx)
{
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        if (++idx[i] < t->ne[i])
            return 1;
        idx[i] = 0;
    }
    return 0;
}

/* ---- tensors of a case laid out in memory ---- */
const char *const test_layout_names[] = {"contiguous", "padded", "padded-odd", "permuted", "spaced-inner"};

size_t test_make_strides(test_layout lay, int n, const int64_t *ne, size_t elem, size_t *nb)
{
    int order[GDN_MAX_DIMS];
    for (int i = 0; i < n; i++)
        order[i] = i;
    if (lay == LAYOUT_PERMUTED && n >= 3) {
        order[1] = 2;
        order[2] = 1;
    }
    size_t pad = lay == LAYOUT_PADDED ? 4 : lay == LAYOUT_PADDED_ODD ? 3 : 0;
    size_t stride = elem * (lay == LAYOUT_SPACED_INNER ? 2 : 1);
    for (int i = 0; i < n; i++) {
        int d = order[i];
        nb[d] = stride;
        stride = stride * (size_t)ne[d] + (i + 1 < n ? pad * elem : 0);
    }
    return stride;
}

int test_tensor_init(test_tensor *tb, test_layout lay, gdn_dtype dtype, int n, const int64_t *ne)
{
    memset(tb, 0, sizeof *tb);
    tb->host = gdn_tensor_contiguous(NULL, dtype, n, ne);
    tb->bytes = test_make_strides(lay, n, ne, gdn_dtype_size(dtype), tb->host.nb);
    tb->host_bytes = malloc(tb->bytes);
    if (tb->host_bytes == NULL)
        return 0;
    memset(tb->host_bytes, 0xFF, tb->bytes); /* gaps hold NaN: reading them poisons results */
    tb->host.data = tb->host_bytes;
    return 1;
}

void test_tensor_free(test_tensor *tb)
{
    free(tb->host_bytes);
    test_buffer_free(&tb->device);
}

gdn_tensor test_device_view(const test_tensor *tb)
{
    gdn_tensor t = tb->host;
    t.data = test_buffer_data(&tb->device);
    return t;
}

int test_tensor_upload(test_tensor *tb, gdn_backend *backend)
{
    return test_buffer_alloc(&tb->device, backend, tb->bytes) &&
           test_buffer_upload(&tb->device, tb->host_bytes, tb->bytes);
}

unsigned char *test_download_view(const char *what, const char *label, int case_index, const test_tensor *tb)
{
    unsigned char *got = malloc(tb->bytes), *mark = calloc(tb->bytes, 1);
    if (!got || !mark) {
        CHECK(0, "out of memory");
        free(got);
        free(mark);
        return NULL;
    }
    CHECK(test_buffer_download(&tb->device, got), "%s case %d %s: guard region overwritten", label, case_index,
          what);
    int64_t idx[GDN_MAX_DIMS] = {0};
    const size_t elem = gdn_dtype_size(tb->host.dtype);
    do
        memset(mark + test_offset_of(&tb->host, idx), 1, elem);
    while (test_next_index(&tb->host, idx));
    size_t stray = 0;
    for (size_t i = 0; i < tb->bytes; i++)
        stray += !mark[i] && got[i] != 0xFF;
    CHECK(stray == 0, "%s case %d %s: %zu bytes written outside the view", label, case_index, what, stray);
    free(mark);
    return got;
}

void test_compare_output(const char *what, const char *label, int case_index, const test_tensor *tb,
                         const gdn_tensor *ref, double tol_rel_l2, double tol_max)
{
    unsigned char *got = test_download_view(what, label, case_index, tb);
    if (got == NULL)
        return;
    double diff2 = 0, ref2 = 0, max_diff = 0, max_ref = 0;
    int64_t idx[GDN_MAX_DIMS] = {0};
    do {
        float x;
        memcpy(&x, got + test_offset_of(&tb->host, idx), sizeof x);
        const double r = *(const double *)((const char *)ref->data + test_offset_of(ref, idx));
        const double d = fabs((double)x - r);
        if (!(d <= max_diff))
            max_diff = d; /* NaN sticks */
        diff2 += d * d;
        ref2 += r * r;
        max_ref = fabs(r) > max_ref ? fabs(r) : max_ref;
    } while (test_next_index(&tb->host, idx));
    const double rel = sqrt(diff2 / (ref2 > 0 ? ref2 : 1)), rel_max = max_diff / (max_ref > 0 ? max_ref : 1);
    CHECK(rel < tol_rel_l2 && rel_max < tol_max, "%s case %d %s: rel L2 error %.3g, max error %.3g", label,
          case_index, what, rel, rel_max);
    free(got);
}
