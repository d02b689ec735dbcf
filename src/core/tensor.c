/* tensor.c: dtype facts and view arithmetic (counts, spans, contiguity, overlap). */
#include "internal.h"

#include <string.h>

size_t gdn_dtype_size(gdn_dtype dtype)
{
    switch (dtype) {
    case GDN_DTYPE_F32: return 4;
    case GDN_DTYPE_F16: return 2;
    case GDN_DTYPE_BF16: return 2;
    case GDN_DTYPE_I32: return 4;
    case GDN_DTYPE_F64: return 8;
    default: return 0;
    }
}

uint16_t gdn_bf16_from_f32(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) /* NaN: keep the sign and upper payload, quiet */
        return (uint16_t)((bits >> 16) | 0x0040u);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

float gdn_bf16_to_f32(uint16_t h)
{
    const uint32_t bits = (uint32_t)h << 16;
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

const char *gdn_dtype_name(gdn_dtype dtype)
{
    switch (dtype) {
    case GDN_DTYPE_F32: return "F32";
    case GDN_DTYPE_F16: return "F16";
    case GDN_DTYPE_BF16: return "BF16";
    case GDN_DTYPE_I32: return "I32";
    case GDN_DTYPE_F64: return "F64";
    default: return "?";
    }
}

gdn_tensor gdn_tensor_contiguous(void *data, gdn_dtype dtype, int32_t n_dims, const int64_t *ne)
{
    gdn_tensor t = {0};
    t.data = data;
    t.dtype = dtype;
    if (n_dims < 1 || n_dims > GDN_MAX_DIMS || ne == NULL)
        return t;
    t.n_dims = n_dims;
    size_t stride = gdn_dtype_size(dtype);
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        t.ne[i] = i < n_dims ? ne[i] : 1;
        t.nb[i] = stride;
        stride *= (size_t)(t.ne[i] > 0 ? t.ne[i] : 1);
    }
    return t;
}

int64_t gdn_tensor_count(const gdn_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        n *= t->ne[i];
    return n;
}

size_t gdn_tensor_span(const gdn_tensor *t)
{
    if (gdn_tensor_count(t) <= 0)
        return 0;
    size_t last = 0;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        last += (size_t)(t->ne[i] - 1) * t->nb[i];
    return last + gdn_dtype_size(t->dtype);
}

int gdn_tensor_is_contiguous(const gdn_tensor *t)
{
    size_t stride = gdn_dtype_size(t->dtype);
    for (int i = 0; i < GDN_MAX_DIMS; i++) {
        if (t->ne[i] != 1 && t->nb[i] != stride)
            return 0;
        stride *= (size_t)(t->ne[i] > 0 ? t->ne[i] : 1);
    }
    return 1;
}

void gdn_tensor_byte_range(const gdn_tensor *t, uintptr_t *lo, uintptr_t *hi)
{
    *lo = (uintptr_t)t->data;
    *hi = *lo + gdn_tensor_span(t);
}

int gdn_tensor_ranges_overlap(const gdn_tensor *a, const gdn_tensor *b)
{
    uintptr_t alo, ahi, blo, bhi;
    gdn_tensor_byte_range(a, &alo, &ahi);
    gdn_tensor_byte_range(b, &blo, &bhi);
    if (alo == ahi || blo == bhi)
        return 0;
    return alo < bhi && blo < ahi;
}

int gdn_tensor_is_injective(const gdn_tensor *t)
{
    int order[GDN_MAX_DIMS], n = 0;
    for (int i = 0; i < GDN_MAX_DIMS; i++)
        if (t->ne[i] > 1)
            order[n++] = i;
    for (int i = 1; i < n; i++) /* insertion sort by stride */
        for (int j = i; j > 0 && t->nb[order[j]] < t->nb[order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
    size_t extent = gdn_dtype_size(t->dtype);
    for (int i = 0; i < n; i++) {
        const int d = order[i];
        if (t->nb[d] < extent)
            return 0;
        extent += (size_t)(t->ne[d] - 1) * t->nb[d];
    }
    return 1;
}
