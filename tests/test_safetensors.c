/* test_safetensors.c: the safetensors reader and writer, from tables of cases.
 * Round trips of every dtype (contiguous, strided, empty, scalar, metadata, odd names), files
 * laid out as Python's safetensors writes them, and a table of malformed files that must each
 * fail with the expected status and a detail message, from memory and from disk.
 * Self-contained (no harness.c): its own CHECK and main. */
#define _POSIX_C_SOURCE 200809L /* getpid, mkdir, rmdir */

#include "gdn.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int passed, failed;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (cond) {                                                           \
            passed++;                                                         \
        } else {                                                              \
            failed++;                                                         \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
            printf(__VA_ARGS__);                                              \
            printf(" (detail: %s)\n", gdn_error_detail());                    \
        }                                                                     \
    } while (0)

/* ---- helpers -------------------------------------------------------------------------------- */

/* A file image: 8-byte little-endian header length, the header, then data_bytes bytes 0,1,2,.. */
static unsigned char *make_file(const char *header, size_t data_bytes, size_t *n_bytes)
{
    size_t header_length = strlen(header);
    *n_bytes = 8 + header_length + data_bytes;
    unsigned char *bytes = malloc(*n_bytes);
    for (int i = 0; i < 8; i++)
        bytes[i] = (unsigned char)((uint64_t)header_length >> (8 * i));
    memcpy(bytes + 8, header, header_length);
    for (size_t i = 0; i < data_bytes; i++)
        bytes[8 + header_length + i] = (unsigned char)i;
    return bytes;
}

static int write_bytes(const char *path, const void *bytes, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (fp == NULL)
        return 0;
    int ok = fwrite(bytes, 1, n, fp) == n;
    return fclose(fp) == 0 && ok;
}

static unsigned char *read_bytes(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *bytes = malloc(size > 0 ? (size_t)size : 1);
    *n = fread(bytes, 1, (size_t)size, fp);
    fclose(fp);
    return bytes;
}

static int file_exists(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (fp != NULL)
        fclose(fp);
    return fp != NULL;
}

static void temp_path(char *out, size_t size, const char *tag)
{
    snprintf(out, size, "/tmp/gdn_test_safetensors_%ld_%s", (long)getpid(), tag);
}

/* ---- round trip through the writer ---------------------------------------------------------- */

/* One tensor to write: a parent buffer of `parent_elements` elements with byte pattern, viewed
 * with n_dims/ne and strides in elements (0 = contiguous). */
typedef struct roundtrip_case {
    const char *name;
    gdn_dtype dtype;
    int32_t n_dims;
    int64_t ne[GDN_MAX_DIMS];
    int64_t stride[GDN_MAX_DIMS]; /* in elements; all 0 = contiguous */
} roundtrip_case;

static const roundtrip_case roundtrip_cases[] = {
    {"f32.contiguous", GDN_DTYPE_F32, 2, {5, 3}, {0}},
    {"f16.contiguous", GDN_DTYPE_F16, 3, {4, 3, 2}, {0}},
    {"bf16.vector", GDN_DTYPE_BF16, 1, {7}, {0}},
    {"i32.contiguous", GDN_DTYPE_I32, 2, {2, 2}, {0}},
    {"f64.contiguous", GDN_DTYPE_F64, 4, {2, 1, 3, 2}, {0}},
    /* every other element of every other row of a wider parent: the element-by-element path */
    {"f32.strided", GDN_DTYPE_F32, 2, {3, 2}, {2, 16}},
    {"bf16.strided", GDN_DTYPE_BF16, 2, {3, 4}, {2, 9}},
    /* packed rows with a gap between them: the row-memcpy path */
    {"f64.rows", GDN_DTYPE_F64, 3, {3, 2, 2}, {1, 5, 11}},
    /* transposed: ne[0] walks the parent's rows */
    {"i32.transposed", GDN_DTYPE_I32, 2, {4, 3}, {3, 1}},
    /* all six dims, each with its own stride */
    {"f16.six_dims", GDN_DTYPE_F16, 6, {2, 2, 1, 2, 2, 2}, {1, 3, 7, 7, 15, 31}},
    {"f32.empty", GDN_DTYPE_F32, 2, {0, 3}, {0}},
    {"name \"with\" \\escapes\\ / and\nnewline \xc3\xa9", GDN_DTYPE_F32, 1, {1}, {0}},
};
enum { ROUNDTRIP_COUNT = sizeof roundtrip_cases / sizeof roundtrip_cases[0] };

/* The view of case c over `parent`, and the expected contiguous bytes in `expected`. */
static gdn_tensor roundtrip_view(const roundtrip_case *c, unsigned char *parent, unsigned char *expected)
{
    size_t element = gdn_dtype_size(c->dtype);
    gdn_tensor t = gdn_tensor_contiguous(parent, c->dtype, c->n_dims, c->ne);
    if (c->stride[0] != 0)
        for (int d = 0; d < GDN_MAX_DIMS; d++)
            t.nb[d] = (size_t)c->stride[d] * element;
    int64_t count = gdn_tensor_count(&t);
    for (int64_t e = 0; e < count; e++) {
        int64_t rest = e;
        size_t offset = 0;
        for (int d = 0; d < GDN_MAX_DIMS; d++) {
            offset += (size_t)(rest % t.ne[d]) * t.nb[d];
            rest /= t.ne[d];
        }
        memcpy(expected + (size_t)e * element, parent + offset, element);
    }
    return t;
}

static void check_file_matches(const gdn_safetensors *file, unsigned char expected[][4096], const char *how)
{
    CHECK(gdn_safetensors_count(file) == ROUNDTRIP_COUNT, "%s: count %d", how, gdn_safetensors_count(file));
    for (int i = 0; i < ROUNDTRIP_COUNT; i++) {
        const roundtrip_case *c = &roundtrip_cases[i];
        const char *name = gdn_safetensors_name(file, i);
        CHECK(name != NULL && strcmp(name, c->name) == 0, "%s: name %d is '%s'", how, i, name ? name : "(null)");
        gdn_tensor t;
        gdn_status status = gdn_safetensors_get(file, c->name, &t);
        CHECK(status == GDN_OK, "%s: get '%s' gave %s", how, c->name, gdn_status_string(status));
        if (status != GDN_OK)
            continue;
        int same_shape = t.dtype == c->dtype && t.n_dims == c->n_dims;
        for (int d = 0; d < c->n_dims; d++)
            same_shape = same_shape && t.ne[d] == c->ne[d];
        CHECK(same_shape, "%s: '%s' has dtype %s n_dims %d", how, c->name, gdn_dtype_name(t.dtype), (int)t.n_dims);
        /* (tensor.c's contiguity test and gdn_tensor_contiguous disagree on strides past a 0 dim,
         * which no reader of an empty tensor can observe, so empty views are not asked) */
        CHECK(gdn_tensor_count(&t) == 0 || gdn_tensor_is_contiguous(&t), "%s: '%s' view not contiguous", how,
              c->name);
        CHECK((uintptr_t)t.data % 64 == 0, "%s: '%s' data not 64-byte aligned", how, c->name);
        size_t bytes = (size_t)gdn_tensor_count(&t) * gdn_dtype_size(t.dtype);
        CHECK(bytes == 0 || memcmp(t.data, expected[i], bytes) == 0, "%s: '%s' data differs", how, c->name);
    }
    const char *tricky = gdn_safetensors_metadata(file, "quote\"key");
    CHECK(tricky != NULL && strcmp(tricky, "line\nbreak\ttab\x01 \\ \xe2\x82\xac") == 0, "%s: metadata tricky", how);
    const char *format = gdn_safetensors_metadata(file, "format");
    CHECK(format != NULL && strcmp(format, "gdn") == 0, "%s: metadata replaced value is '%s'", how,
          format ? format : "(null)");
    CHECK(gdn_safetensors_metadata(file, "absent") == NULL, "%s: absent metadata", how);
    gdn_tensor t;
    CHECK(gdn_safetensors_get(file, "absent", &t) == GDN_ERROR_NOT_FOUND && gdn_error_detail()[0] != '\0',
          "%s: absent tensor", how);
}

static void test_roundtrip(void)
{
    static unsigned char parent[4096], expected[ROUNDTRIP_COUNT][4096];
    for (size_t i = 0; i < sizeof parent; i++)
        parent[i] = (unsigned char)(i * 7 + 3);
    gdn_safetensors_writer *writer = NULL;
    CHECK(gdn_safetensors_writer_init(&writer) == GDN_OK, "writer_init");
    CHECK(gdn_safetensors_writer_set_metadata(writer, "format", "first") == GDN_OK, "set_metadata");
    CHECK(gdn_safetensors_writer_set_metadata(writer, "quote\"key", "line\nbreak\ttab\x01 \\ \xe2\x82\xac") == GDN_OK,
          "set_metadata escapes");
    CHECK(gdn_safetensors_writer_set_metadata(writer, "format", "gdn") == GDN_OK, "set_metadata replace");
    for (int i = 0; i < ROUNDTRIP_COUNT; i++) {
        gdn_tensor t = roundtrip_view(&roundtrip_cases[i], parent, expected[i]);
        if (gdn_tensor_count(&t) == 0)
            t.data = NULL; /* an empty tensor needs no data */
        gdn_status status = gdn_safetensors_writer_add(writer, roundtrip_cases[i].name, &t);
        CHECK(status == GDN_OK, "add '%s' gave %s", roundtrip_cases[i].name, gdn_status_string(status));
    }
    /* Rejections by the writer, none of which may change what is saved. */
    gdn_tensor good = gdn_tensor_contiguous(parent, GDN_DTYPE_F32, 1, (const int64_t[]){2});
    gdn_tensor bad = good;
    CHECK(gdn_safetensors_writer_add(writer, "f32.contiguous", &good) == GDN_ERROR_INVALID_ARGUMENT,
          "duplicate name accepted");
    CHECK(gdn_safetensors_writer_add(writer, "__metadata__", &good) == GDN_ERROR_INVALID_ARGUMENT,
          "reserved name accepted");
    CHECK(gdn_safetensors_writer_add(writer, "bad\xff", &good) == GDN_ERROR_INVALID_ARGUMENT, "bad UTF-8 accepted");
    bad.n_dims = 0;
    CHECK(gdn_safetensors_writer_add(writer, "bad", &bad) == GDN_ERROR_SHAPE, "n_dims 0 accepted");
    bad = good, bad.ne[2] = 2;
    CHECK(gdn_safetensors_writer_add(writer, "bad", &bad) == GDN_ERROR_SHAPE, "ne beyond n_dims accepted");
    bad = good, bad.ne[0] = -1;
    CHECK(gdn_safetensors_writer_add(writer, "bad", &bad) == GDN_ERROR_SHAPE, "negative ne accepted");
    bad = good, bad.dtype = GDN_DTYPE_COUNT;
    CHECK(gdn_safetensors_writer_add(writer, "bad", &bad) == GDN_ERROR_TYPE, "unknown dtype accepted");
    bad = good, bad.data = NULL;
    CHECK(gdn_safetensors_writer_add(writer, "bad", &bad) == GDN_ERROR_INVALID_ARGUMENT, "NULL data accepted");
    bad = gdn_tensor_contiguous(parent, GDN_DTYPE_F64, 2, (const int64_t[]){INT64_MAX / 4, 3});
    CHECK(gdn_safetensors_writer_add(writer, "bad", &bad) == GDN_ERROR_SHAPE, "overflowing shape accepted");

    char path[256];
    temp_path(path, sizeof path, "roundtrip.safetensors");
    CHECK(gdn_safetensors_writer_save(writer, path) == GDN_OK, "save '%s'", path);
    gdn_safetensors_writer_free(writer);

    gdn_safetensors *file = NULL;
    CHECK(gdn_safetensors_open(&file, path) == GDN_OK, "open '%s'", path);
    if (file != NULL)
        check_file_matches(file, expected, "open");
    gdn_safetensors_free(file);

    size_t n = 0;
    unsigned char *bytes = read_bytes(path, &n);
    CHECK(bytes != NULL && n > 8, "read back '%s'", path);
    if (bytes != NULL && n > 8) {
        uint64_t header_length = 0;
        for (int i = 7; i >= 0; i--)
            header_length = header_length << 8 | bytes[i];
        CHECK(header_length % 8 == 0, "header length %llu not padded to 8", (unsigned long long)header_length);
        const char *expected_start = "{\"__metadata__\":{\"format\":\"gdn\"";
        CHECK(memcmp(bytes + 8, expected_start, strlen(expected_start)) == 0, "metadata first, insertion order");
        file = NULL;
        CHECK(gdn_safetensors_parse(&file, bytes, n) == GDN_OK, "parse the saved bytes");
        if (file != NULL)
            check_file_matches(file, expected, "parse");
        gdn_safetensors_free(file);
    }
    free(bytes);
    remove(path);
}

/* ---- valid files written by hand, as other writers lay them out ----------------------------- */

static void test_foreign_layouts(void)
{
    /* Python's safetensors: keys in any order, metadata anywhere, header padded with spaces. */
    const char *python =
        "{\"b\":{\"shape\":[2],\"data_offsets\":[8,16],\"dtype\":\"F32\"},\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8],\"shape\":[2]}}      ";
    size_t n;
    unsigned char *bytes = make_file(python, 16, &n);
    gdn_safetensors *file = NULL;
    gdn_tensor t;
    CHECK(gdn_safetensors_parse(&file, bytes, n) == GDN_OK, "python layout");
    if (file != NULL) {
        CHECK(gdn_safetensors_count(file) == 2, "python count");
        CHECK(strcmp(gdn_safetensors_name(file, 0), "b") == 0 && strcmp(gdn_safetensors_name(file, 1), "a") == 0,
              "names keep header order");
        CHECK(gdn_safetensors_name(file, 2) == NULL && gdn_safetensors_name(file, -1) == NULL, "name out of range");
        CHECK(gdn_safetensors_get(file, "a", &t) == GDN_OK && ((unsigned char *)t.data)[0] == 0 &&
                  ((unsigned char *)t.data)[7] == 7, "a holds data bytes 0..7");
        CHECK(gdn_safetensors_get(file, "b", &t) == GDN_OK && ((unsigned char *)t.data)[0] == 8, "b from byte 8");
        CHECK(strcmp(gdn_safetensors_metadata(file, "format"), "pt") == 0, "python metadata");
    }
    gdn_safetensors_free(file);
    free(bytes);

    /* A 0-dim scalar (shape []), an empty tensor, JSON escapes decoded, whitespace everywhere, and
     * a header length that leaves the data section unaligned in the file. */
    const char *scalar =
        "\t{ \"s\" : {\"dtype\":\"F64\",\"shape\":[ ],\"data_offsets\":[0,8]} ,\r\n"
        "\"e\":{\"dtype\":\"BF16\",\"shape\":[4,0],\"data_offsets\":[8,8]},"
        "\"__metadata__\":{\"u\":\"a\\u00e9\\ud83d\\ude00\\n\\/\\\"\"}}\n ";
    bytes = make_file(scalar, 8, &n);
    file = NULL;
    CHECK(gdn_safetensors_parse(&file, bytes, n) == GDN_OK, "scalar layout");
    if (file != NULL) {
        CHECK(gdn_safetensors_get(file, "s", &t) == GDN_OK && t.n_dims == 1 && t.ne[0] == 1 && t.ne[1] == 1 &&
                  t.dtype == GDN_DTYPE_F64 && gdn_tensor_count(&t) == 1, "0-dim shape reads as ne = {1}");
        CHECK((uintptr_t)t.data % 64 == 0 && ((unsigned char *)t.data)[7] == 7, "scalar aligned with its bytes");
        CHECK(gdn_safetensors_get(file, "e", &t) == GDN_OK && t.n_dims == 2 && t.ne[0] == 0 && t.ne[1] == 4 &&
                  gdn_tensor_count(&t) == 0, "empty tensor");
        const char *u = gdn_safetensors_metadata(file, "u");
        CHECK(u != NULL && strcmp(u, "a\xc3\xa9\xf0\x9f\x98\x80\n/\"") == 0, "escapes decode to UTF-8");
    }
    gdn_safetensors_free(file);
    free(bytes);

    /* No tensors at all, and an empty data section. */
    bytes = make_file("{}", 0, &n);
    file = NULL;
    CHECK(gdn_safetensors_parse(&file, bytes, n) == GDN_OK && gdn_safetensors_count(file) == 0, "empty file");
    gdn_safetensors_free(file);
    free(bytes);
}

/* ---- malformed files ------------------------------------------------------------------------ */

typedef struct bad_case {
    const char *what;
    const char *header;     /* header text, or NULL to use raw bytes */
    size_t data_bytes;      /* data section after the header */
    const char *raw;        /* whole file when header is NULL */
    size_t raw_length;
    const char *detail;     /* expected in gdn_error_detail(), or NULL */
} bad_case;

#define HEADER(what, header, data_bytes, detail) {what, header, data_bytes, NULL, 0, detail}
#define RAW(what, bytes, detail) {what, NULL, 0, bytes, sizeof(bytes) - 1, detail}
#define T(fields) "{\"t\":{" fields "}}"
#define F32x2 "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"

static const bad_case bad_cases[] = {
    /* the length prefix and the file's size */
    RAW("empty file", "", "too short"),
    RAW("truncated length", "\x02\0\0\0", "too short"),
    RAW("zero header length", "\0\0\0\0\0\0\0\0{}", "is 0"),
    RAW("header length past the end", "\x10\0\0\0\0\0\0\0{}", "past the end"),
    RAW("header length huge", "\0\0\0\0\0\0\0\x80{}", "limit"),
    RAW("header length 100MB+1", "\x01\xe1\xf5\x05\0\0\0\0{}", "limit"),
    RAW("truncated header", "\x04\0\0\0\0\0\0\0{\"a\"", "JSON"),
    RAW("truncated data", "\x36\0\0\0\0\0\0\0{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}\0\0\0",
        "beyond the data section"),
    /* JSON syntax */
    HEADER("header not an object", "[1,2]", 0, "expected an object"),
    HEADER("header a string", "\"x\"", 0, "expected an object"),
    HEADER("trailing garbage", "{} x", 0, "after the top-level value"),
    HEADER("two objects", "{}{}", 0, "after the top-level value"),
    HEADER("trailing comma", "{\"t\":{" F32x2 ",}}", 8, "JSON"),
    HEADER("missing colon", "{\"t\" {}}", 0, "expected ':'"),
    HEADER("unquoted key", "{t:1}", 0, "object key"),
    HEADER("single quotes", "{'t':1}", 0, "object key"),
    HEADER("comment", "{/* c */}", 0, "JSON"),
    HEADER("unterminated string", "{\"t", 0, "unterminated string"),
    HEADER("unterminated object", "{\"t\":1", 0, "unterminated object"),
    HEADER("invalid escape", "{\"__metadata__\":{\"k\":\"\\x41\"}}", 0, "invalid escape"),
    HEADER("short \\u escape", "{\"__metadata__\":{\"k\":\"\\u12\"}}", 0, "four hex digits"),
    HEADER("lone high surrogate", "{\"__metadata__\":{\"k\":\"\\ud800x\"}}", 0, "surrogate"),
    HEADER("lone low surrogate", "{\"__metadata__\":{\"k\":\"\\udc00\"}}", 0, "surrogate"),
    HEADER("raw control character", "{\"__metadata__\":{\"k\":\"a\tb\"}}", 0, "control character"),
    HEADER("invalid UTF-8 byte", "{\"__metadata__\":{\"k\":\"\xff\"}}", 0, "UTF-8"),
    HEADER("overlong UTF-8", "{\"__metadata__\":{\"k\":\"\xc0\xaf\"}}", 0, "UTF-8"),
    HEADER("UTF-8 surrogate", "{\"__metadata__\":{\"k\":\"\xed\xa0\x80\"}}", 0, "UTF-8"),
    HEADER("truncated UTF-8", "{\"__metadata__\":{\"k\":\"\xe2\x82\"}}", 0, "UTF-8"),
    HEADER("byte order mark", "\xef\xbb\xbf{}", 0, "unexpected character"),
    HEADER("garbage", "\x01\x02\x80\xfe\xff", 0, "unexpected character"),
    HEADER("bad literal", "{\"__metadata__\":{\"k\":nul}}", 0, "literal"),
    HEADER("NaN", "{\"t\":NaN}", 0, "unexpected character"),
    HEADER("leading zero", T("\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]"), 8, "leading zero"),
    HEADER("lone minus", T("\"dtype\":\"F32\",\"shape\":[-],\"data_offsets\":[0,8]"), 8, "digit"),
    HEADER("bare fraction", T("\"dtype\":\"F32\",\"shape\":[2.],\"data_offsets\":[0,8]"), 8, "decimal point"),
    HEADER("integer overflow", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9223372036854775808]"), 8,
           "64 bits"),
    HEADER("huge number", T("\"dtype\":\"F32\",\"shape\":[99999999999999999999999999],\"data_offsets\":[0,8]"), 8,
           "64 bits"),
    HEADER("huge negative", T("\"dtype\":\"F32\",\"shape\":[-9223372036854775809],\"data_offsets\":[0,8]"), 8,
           "64 bits"),
    /* 2^63-1 parses exactly; the offsets are wrong, and the message shows the exact value */
    HEADER("int64 max", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9223372036854775807]"), 8,
           "9223372036854775807"),
    HEADER("int64 min", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-9223372036854775808,8]"), 8,
           "-9223372036854775808"),
    /* fields */
    HEADER("tensor not an object", "{\"t\":[1]}", 0, "expected an object"),
    HEADER("missing dtype", T("\"shape\":[2],\"data_offsets\":[0,8]"), 8, "missing field 'dtype'"),
    HEADER("missing shape", T("\"dtype\":\"F32\",\"data_offsets\":[0,8]"), 8, "missing field 'shape'"),
    HEADER("missing data_offsets", T("\"dtype\":\"F32\",\"shape\":[2]"), 8, "missing field 'data_offsets'"),
    HEADER("extra field", T(F32x2 ",\"offset\":0"), 8, "unknown field 'offset'"),
    HEADER("duplicate field", T(F32x2 ",\"dtype\":\"F32\""), 8, "appears twice"),
    HEADER("unknown dtype", T("\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]"), 8, "unknown dtype 'I64'"),
    HEADER("lowercase dtype", T("\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]"), 8, "unknown dtype 'f32'"),
    HEADER("dtype not a string", T("\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]"), 8, "expected a string"),
    HEADER("shape not an array", T("\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]"), 8, "expected an array"),
    HEADER("negative shape", T("\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]"), 8, "negative"),
    HEADER("fractional shape", T("\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]"), 8, "not an integer"),
    HEADER("exponent shape", T("\"dtype\":\"F32\",\"shape\":[2e0],\"data_offsets\":[0,8]"), 8, "not an integer"),
    HEADER("string shape", T("\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]"), 8, "expected an integer"),
    HEADER("seven dims", T("\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,2],\"data_offsets\":[0,8]"), 8, "7 dims"),
    HEADER("shape product overflow", T("\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]"),
           8, "overflow"),
    HEADER("empty shape overflow", T("\"dtype\":\"F32\",\"shape\":[0,4611686018427387904,4],\"data_offsets\":[0,0]"),
           0, "overflow"),
    HEADER("offsets not an array", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":8"), 8, "two integers"),
    HEADER("one offset", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]"), 8, "two integers"),
    HEADER("three offsets", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]"), 8, "two integers"),
    HEADER("offset not an integer", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]"), 8, "integers"),
    HEADER("negative offset", T("\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[-1,-1]"), 0, "negative"),
    HEADER("begin after end", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]"), 8, "begin > end"),
    HEADER("size mismatch", T("\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]"), 8, "needs 12"),
    HEADER("end past data", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"), 4, "beyond the data section"),
    /* the data section's tiling */
    HEADER("overlap", "{\"a\":{" F32x2 "},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
           "overlap"),
    HEADER("same range twice", "{\"a\":{" F32x2 "},\"b\":{" F32x2 "}}", 8, "overlap"),
    HEADER("hole between", "{\"a\":{" F32x2 "},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16,
           "hole"),
    HEADER("hole at start", T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]"), 12, "hole"),
    HEADER("trailing bytes", T(F32x2), 9, "after the last tensor"),
    HEADER("data without tensors", "{}", 1, "after the last tensor"),
    HEADER("empty inside another", "{\"a\":{" F32x2 "},\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
           8, "overlap"),
    /* names and metadata */
    HEADER("duplicate tensor", "{\"t\":{" F32x2 "},\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16,
           "'t' appears twice"),
    HEADER("NUL in name", "{\"a\\u0000b\":{" F32x2 "}}", 8, "NUL"),
    HEADER("metadata not an object", "{\"__metadata__\":\"x\"}", 0, "expected an object of strings"),
    HEADER("metadata null", "{\"__metadata__\":null}", 0, "expected an object of strings"),
    HEADER("metadata number value", "{\"__metadata__\":{\"k\":1}}", 0, "'k' is a JSON integer"),
    HEADER("metadata nested value", "{\"__metadata__\":{\"k\":{}}}", 0, "expected a string"),
    HEADER("metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "appears twice"),
    HEADER("metadata duplicate key", "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "'k' appears twice"),
    HEADER("NUL in metadata", "{\"__metadata__\":{\"k\":\"a\\u0000\"}}", 0, "NUL"),
};
enum { BAD_COUNT = sizeof bad_cases / sizeof bad_cases[0] };

/* Parse `bytes` from memory and from a file; both must fail with GDN_ERROR_FORMAT and a detail
 * containing `detail` (when given). */
static void check_rejected(const char *what, const unsigned char *bytes, size_t n, const char *detail)
{
    gdn_safetensors *file = (gdn_safetensors *)&file; /* not NULL: the call must reset it */
    gdn_status status = gdn_safetensors_parse(&file, bytes, n);
    CHECK(status == GDN_ERROR_FORMAT, "%s: parse gave %s", what, gdn_status_string(status));
    CHECK(file == NULL, "%s: *out not NULL after failure", what);
    CHECK(gdn_error_detail()[0] != '\0', "%s: empty detail", what);
    CHECK(detail == NULL || strstr(gdn_error_detail(), detail) != NULL, "%s: detail lacks '%s'", what, detail);
    gdn_safetensors_free(status == GDN_OK ? file : NULL);

    char path[256];
    temp_path(path, sizeof path, "bad.safetensors");
    if (!write_bytes(path, bytes, n)) {
        CHECK(0, "%s: cannot write '%s'", what, path);
        return;
    }
    file = NULL;
    status = gdn_safetensors_open(&file, path);
    CHECK(status == GDN_ERROR_FORMAT, "%s: open gave %s", what, gdn_status_string(status));
    CHECK(detail == NULL || strstr(gdn_error_detail(), detail) != NULL, "%s: open detail lacks '%s'", what, detail);
    gdn_safetensors_free(status == GDN_OK ? file : NULL);
    remove(path);
}

static void test_malformed(void)
{
    for (int i = 0; i < BAD_COUNT; i++) {
        const bad_case *c = &bad_cases[i];
        if (c->header == NULL) {
            check_rejected(c->what, (const unsigned char *)c->raw, c->raw_length, c->detail);
            continue;
        }
        size_t n;
        unsigned char *bytes = make_file(c->header, c->data_bytes, &n);
        check_rejected(c->what, bytes, n, c->detail);
        free(bytes);
    }

    /* Nesting far past the limit must fail cleanly, not overflow the stack. */
    enum { DEEP = 100000 };
    char *deep = malloc(2 * DEEP + 32);
    size_t length = (size_t)sprintf(deep, "{\"__metadata__\":");
    memset(deep + length, '[', DEEP);
    memset(deep + length + DEEP, ']', DEEP);
    strcpy(deep + length + 2 * DEEP, "}");
    size_t n;
    unsigned char *bytes = make_file(deep, 0, &n);
    check_rejected("deep nesting", bytes, n, "nesting");
    free(bytes);
    /* 64 levels are allowed: the JSON parses, and the array then fails as metadata. */
    length = (size_t)sprintf(deep, "{\"__metadata__\":");
    memset(deep + length, '[', 63);
    memset(deep + length + 63, ']', 63);
    strcpy(deep + length + 126, "}");
    bytes = make_file(deep, 0, &n);
    check_rejected("63 nested arrays", bytes, n, "expected an object of strings");
    free(bytes);
    free(deep);

    /* Every truncation of a valid file fails (and none crashes). */
    const char *header = "{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]},\"__metadata__\":{\"k\":\"v\"}}";
    bytes = make_file(header, 8, &n);
    for (size_t cut = 0; cut < n; cut++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu bytes", cut);
        gdn_safetensors *file = NULL;
        gdn_status status = gdn_safetensors_parse(&file, bytes, cut);
        CHECK(status == GDN_ERROR_FORMAT && file == NULL && gdn_error_detail()[0] != '\0', "%s", what);
    }
    gdn_safetensors *file = NULL;
    CHECK(gdn_safetensors_parse(&file, bytes, n) == GDN_OK, "the untruncated file parses");
    gdn_safetensors_free(file);
    free(bytes);
}

/* ---- files and paths ------------------------------------------------------------------------ */

static void test_io_errors(void)
{
    gdn_safetensors *file = NULL;
    CHECK(gdn_safetensors_open(&file, "/nonexistent_gdn_dir/missing.safetensors") == GDN_ERROR_IO &&
              file == NULL && gdn_error_detail()[0] != '\0', "missing file");
    CHECK(gdn_safetensors_open(NULL, "x") == GDN_ERROR_INVALID_ARGUMENT, "NULL out");
    CHECK(gdn_safetensors_parse(&file, NULL, 4) == GDN_ERROR_INVALID_ARGUMENT, "NULL bytes");

    gdn_safetensors_writer *writer = NULL;
    CHECK(gdn_safetensors_writer_init(&writer) == GDN_OK, "writer_init");
    float values[4] = {1, 2, 3, 4};
    gdn_tensor t = gdn_tensor_contiguous(values, GDN_DTYPE_F32, 1, (const int64_t[]){4});
    CHECK(gdn_safetensors_writer_add(writer, "x", &t) == GDN_OK, "add");

    /* A directory that does not exist: the temporary file cannot even be created. */
    const char *unwritable = "/nonexistent_gdn_dir/out.safetensors";
    char temp[320];
    snprintf(temp, sizeof temp, "%s.tmp.%ld", unwritable, (long)getpid());
    CHECK(gdn_safetensors_writer_save(writer, unwritable) == GDN_ERROR_IO && gdn_error_detail()[0] != '\0',
          "save into a missing directory");
    CHECK(!file_exists(unwritable) && !file_exists(temp), "nothing left behind");

    /* A path that is a directory: the temporary file is written, the rename fails, and the
     * temporary file must be removed again. */
    char directory[200];
    temp_path(directory, sizeof directory, "dir");
    CHECK(mkdir(directory, 0700) == 0, "mkdir '%s'", directory);
    snprintf(temp, sizeof temp, "%s.tmp.%ld", directory, (long)getpid());
    CHECK(gdn_safetensors_writer_save(writer, directory) == GDN_ERROR_IO && gdn_error_detail()[0] != '\0',
          "save over a directory");
    CHECK(!file_exists(temp), "temporary file '%s' left behind", temp);
    rmdir(directory);
    remove(temp);
    gdn_safetensors_writer_free(writer);
}

int main(void)
{
    test_roundtrip();
    test_foreign_layouts();
    test_malformed();
    test_io_errors();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
