/* safetensors.c: reading and writing safetensors files.
 * File layout: u64 little-endian N, N bytes of a JSON object (the header), then the data section.
 * The header maps each tensor name to {"dtype", "shape" (outermost first), "data_offsets"
 * [begin, end) relative to the data section}, plus an optional "__metadata__" object of strings.
 * The reader validates everything before handing out views; each tensor is copied to its own
 * 64-byte aligned slot of one buffer, since offsets in the file carry no alignment promise. */
#define _POSIX_C_SOURCE 200809L /* getpid */

#include "json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
    HEADER_LENGTH_BYTES = 8,
    HEADER_LIMIT = 100 * 1000 * 1000, /* larger headers are corrupt, not real: fail before malloc */
    DATA_ALIGN = 64
};

static const char METADATA_KEY[] = "__metadata__";

typedef struct tensor_entry {
    const char *name;        /* in the file object's `names` block */
    gdn_dtype dtype;
    int32_t n_dims;          /* of our view: 1 for a 0-dim scalar */
    int64_t ne[GDN_MAX_DIMS]; /* innermost first, as gdn_tensor */
    uint64_t begin, end;     /* byte range in the file's data section */
    size_t slot;             /* byte offset of the aligned copy in `data` */
} tensor_entry;

typedef struct metadata_entry {
    const char *key, *value;
} metadata_entry;

struct gdn_safetensors {
    tensor_entry *tensors;   /* header order */
    int32_t count;
    tensor_entry **by_name;  /* sorted by name, for lookup */
    tensor_entry **by_offset; /* sorted by data_offsets, for reading */
    metadata_entry *metadata; /* sorted by key */
    size_t metadata_count;
    char *names;             /* every name, key and value, NUL-terminated, back to back */
    unsigned char *data;     /* aligned copies of every tensor */
};

/* Where the file's bytes come from: a memory buffer or an open FILE. */
typedef struct source {
    const unsigned char *bytes; /* NULL for a file */
    FILE *file;
    uint64_t size;
    uint64_t position; /* next byte a file read returns */
} source;

/* Read n bytes at `offset` into dst. File reads go strictly forward (the reader's calls come in
 * file order), so no seeking is needed beyond the initial size probe. */
static gdn_status source_read(source *src, uint64_t offset, void *dst, size_t n)
{
    if (src->bytes != NULL) {
        if (n > 0)
            memcpy(dst, src->bytes + offset, n);
        return GDN_OK;
    }
    if (offset != src->position)
        return gdn_fail(GDN_ERROR_IO, "safetensors: internal read order error at byte %" PRIu64, offset);
    if (n > 0 && fread(dst, 1, n, src->file) != n)
        return gdn_fail(GDN_ERROR_IO, "safetensors: reading %zu bytes at offset %" PRIu64 " failed: %s", n, offset,
                        ferror(src->file) ? strerror(errno) : "unexpected end of file");
    src->position += n;
    return GDN_OK;
}

/* Fail with "safetensors: tensor 'name': <message>". */
static gdn_status tensor_fail(gdn_status status, const char *name, const char *format, ...) GDN_PRINTF(3, 4);
static gdn_status tensor_fail(gdn_status status, const char *name, const char *format, ...)
{
    char message[384];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    return gdn_fail(status, "safetensors: tensor '%.96s': %s", name, message);
}

/* Re-fail with `prefix` in front of the current detail (which gdn_fail would overwrite). */
static gdn_status prefix_detail(gdn_status status, const char *prefix)
{
    char detail[512];
    snprintf(detail, sizeof detail, "%s", gdn_error_detail());
    return gdn_fail(status, "%s%s", prefix, detail);
}

static int dtype_from_name(const char *name, size_t length, gdn_dtype *out)
{
    for (int d = 0; d < GDN_DTYPE_COUNT; d++) {
        const char *candidate = gdn_dtype_name((gdn_dtype)d);
        if (strlen(candidate) == length && memcmp(candidate, name, length) == 0) {
            *out = (gdn_dtype)d;
            return 1;
        }
    }
    return 0;
}

/* Bytes of a tensor of `n_dims` counts ne[] (innermost first) of `dtype`. Fails if the product
 * of the counts, with zeros read as ones, overflows int64 times the element size: then an empty
 * tensor is still safe for gdn_tensor_count and for stride arithmetic. */
static int tensor_bytes(gdn_dtype dtype, int32_t n_dims, const int64_t *ne, size_t *out)
{
    size_t element = gdn_dtype_size(dtype);
    size_t bound = element, bytes = element;
    for (int32_t i = 0; i < n_dims; i++) {
        size_t n = (size_t)ne[i];
        if (!gdn_size_mul(bound, n > 0 ? n : 1, &bound) || bound > (size_t)INT64_MAX)
            return 0;
        bytes *= n; /* cannot overflow: bytes <= bound */
    }
    *out = bytes;
    return 1;
}

/* ---- reader: header validation -------------------------------------------------------------- */

/* Shape array (outermost first) into n_dims and innermost-first ne. */
static gdn_status read_shape(const char *name, const gdn_json_node *shape, tensor_entry *entry)
{
    if (shape->kind != GDN_JSON_ARRAY)
        return tensor_fail(GDN_ERROR_FORMAT, name, "\"shape\" is a JSON %s, expected an array of integers",
                           gdn_json_kind_name(shape->kind));
    if (shape->count > GDN_MAX_DIMS)
        return tensor_fail(GDN_ERROR_FORMAT, name, "shape has %zu dims, gdn supports at most %d", shape->count,
                           GDN_MAX_DIMS);
    int32_t n_dims = (int32_t)shape->count;
    int32_t i = n_dims - 1; /* the file lists the outermost dim first */
    for (const gdn_json_node *dim = shape->first; dim != NULL; dim = dim->next, i--) {
        if (dim->kind == GDN_JSON_REAL)
            return tensor_fail(GDN_ERROR_FORMAT, name, "shape entry %s is not an integer", dim->string);
        if (dim->kind != GDN_JSON_INTEGER)
            return tensor_fail(GDN_ERROR_FORMAT, name, "shape entry is a JSON %s, expected an integer",
                               gdn_json_kind_name(dim->kind));
        if (dim->integer < 0)
            return tensor_fail(GDN_ERROR_FORMAT, name, "shape entry %" PRId64 " is negative", dim->integer);
        entry->ne[i] = dim->integer;
    }
    if (n_dims == 0) { /* a 0-dim scalar: one element, which our views write as ne = {1} */
        n_dims = 1;
        entry->ne[0] = 1;
    }
    for (i = n_dims; i < GDN_MAX_DIMS; i++)
        entry->ne[i] = 1;
    entry->n_dims = n_dims;
    return GDN_OK;
}

static gdn_status read_offsets(const char *name, const gdn_json_node *offsets, tensor_entry *entry)
{
    if (offsets->kind != GDN_JSON_ARRAY || offsets->count != 2)
        return tensor_fail(GDN_ERROR_FORMAT, name, "\"data_offsets\" must be an array of two integers [begin, end]");
    const gdn_json_node *begin = offsets->first, *end = begin->next;
    if (begin->kind != GDN_JSON_INTEGER || end->kind != GDN_JSON_INTEGER)
        return tensor_fail(GDN_ERROR_FORMAT, name, "\"data_offsets\" holds a JSON %s, expected integers",
                           gdn_json_kind_name(begin->kind != GDN_JSON_INTEGER ? begin->kind : end->kind));
    if (begin->integer < 0 || end->integer < 0)
        return tensor_fail(GDN_ERROR_FORMAT, name, "data_offsets [%" PRId64 ", %" PRId64 "] has a negative offset",
                           begin->integer, end->integer);
    if (begin->integer > end->integer)
        return tensor_fail(GDN_ERROR_FORMAT, name, "data_offsets [%" PRId64 ", %" PRId64 "] has begin > end",
                           begin->integer, end->integer);
    entry->begin = (uint64_t)begin->integer;
    entry->end = (uint64_t)end->integer;
    return GDN_OK;
}

/* One tensor's object {"dtype", "shape", "data_offsets"}, each exactly once and nothing else. */
static gdn_status read_tensor(const char *name, const gdn_json_node *value, uint64_t data_size, tensor_entry *entry)
{
    if (value->kind != GDN_JSON_OBJECT)
        return tensor_fail(GDN_ERROR_FORMAT, name, "entry is a JSON %s, expected an object with dtype, shape, data_offsets",
                           gdn_json_kind_name(value->kind));
    static const char *const fields[3] = {"dtype", "shape", "data_offsets"};
    const gdn_json_node *found[3] = {NULL, NULL, NULL};
    for (const gdn_json_node *field = value->first; field != NULL; field = field->next) {
        int which = -1;
        for (int f = 0; f < 3; f++)
            if (field->key_length == strlen(fields[f]) && memcmp(field->key, fields[f], field->key_length) == 0)
                which = f;
        if (which < 0)
            return tensor_fail(GDN_ERROR_FORMAT, name, "unknown field '%.64s' (expected dtype, shape, data_offsets)",
                               field->key);
        if (found[which] != NULL)
            return tensor_fail(GDN_ERROR_FORMAT, name, "field '%s' appears twice", fields[which]);
        found[which] = field;
    }
    for (int f = 0; f < 3; f++)
        if (found[f] == NULL)
            return tensor_fail(GDN_ERROR_FORMAT, name, "missing field '%s'", fields[f]);

    const gdn_json_node *dtype = found[0];
    if (dtype->kind != GDN_JSON_STRING)
        return tensor_fail(GDN_ERROR_FORMAT, name, "\"dtype\" is a JSON %s, expected a string",
                           gdn_json_kind_name(dtype->kind));
    if (!dtype_from_name(dtype->string, dtype->length, &entry->dtype))
        return tensor_fail(GDN_ERROR_FORMAT, name, "unknown dtype '%.32s' (gdn reads F32, F16, BF16, I32, F64)",
                           dtype->string);
    gdn_status status = read_shape(name, found[1], entry);
    if (status == GDN_OK)
        status = read_offsets(name, found[2], entry);
    if (status != GDN_OK)
        return status;

    size_t bytes;
    if (!tensor_bytes(entry->dtype, entry->n_dims, entry->ne, &bytes))
        return tensor_fail(GDN_ERROR_FORMAT, name, "shape element count overflows");
    if (entry->end - entry->begin != (uint64_t)bytes)
        return tensor_fail(GDN_ERROR_FORMAT, name,
                           "data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64 " bytes, but the %s shape needs %zu",
                           entry->begin, entry->end, entry->end - entry->begin, gdn_dtype_name(entry->dtype), bytes);
    if (entry->end > data_size)
        return tensor_fail(GDN_ERROR_FORMAT, name,
                           "data_offsets end %" PRIu64 " is beyond the data section of %" PRIu64 " bytes", entry->end,
                           data_size);
    return GDN_OK;
}

/* Copy a decoded string (checked free of NUL bytes) into the names block at *cursor. */
static const char *store_string(char **cursor, const char *text, size_t length)
{
    char *copy = *cursor;
    memcpy(copy, text, length);
    copy[length] = '\0';
    *cursor += length + 1;
    return copy;
}

static int compare_by_name(const void *a, const void *b)
{
    return strcmp((*(tensor_entry *const *)a)->name, (*(tensor_entry *const *)b)->name);
}

static int compare_by_offset(const void *a, const void *b)
{
    const tensor_entry *x = *(tensor_entry *const *)a, *y = *(tensor_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int compare_metadata(const void *a, const void *b)
{
    return strcmp(((const metadata_entry *)a)->key, ((const metadata_entry *)b)->key);
}

/* Count members, check key strings and the __metadata__ object, and size the names block. */
static gdn_status survey_header(const gdn_json_node *root, size_t *tensor_count, size_t *metadata_count,
                                size_t *names_bytes, const gdn_json_node **metadata)
{
    *tensor_count = *metadata_count = *names_bytes = 0;
    *metadata = NULL;
    for (const gdn_json_node *member = root->first; member != NULL; member = member->next) {
        if (strlen(member->key) != member->key_length)
            return gdn_fail(GDN_ERROR_FORMAT, "safetensors: the name starting '%.64s' (value at header byte %zu) contains a NUL byte",
                            member->key, member->offset);
        *names_bytes += member->key_length + 1;
        if (strcmp(member->key, METADATA_KEY) != 0) {
            (*tensor_count)++;
            continue;
        }
        if (*metadata != NULL)
            return gdn_fail(GDN_ERROR_FORMAT, "safetensors: \"__metadata__\" appears twice in the header");
        if (member->kind != GDN_JSON_OBJECT)
            return gdn_fail(GDN_ERROR_FORMAT, "safetensors: \"__metadata__\" is a JSON %s, expected an object of strings",
                            gdn_json_kind_name(member->kind));
        *metadata = member;
        for (const gdn_json_node *item = member->first; item != NULL; item = item->next) {
            if (item->kind != GDN_JSON_STRING)
                return gdn_fail(GDN_ERROR_FORMAT, "safetensors: metadata '%.64s' is a JSON %s, expected a string",
                                item->key, gdn_json_kind_name(item->kind));
            if (strlen(item->key) != item->key_length || strlen(item->string) != item->length)
                return gdn_fail(GDN_ERROR_FORMAT, "safetensors: metadata '%.64s' contains a NUL character", item->key);
            *names_bytes += item->key_length + 1 + item->length + 1;
            (*metadata_count)++;
        }
    }
    if (*tensor_count > INT32_MAX)
        return gdn_fail(GDN_ERROR_FORMAT, "safetensors: %zu tensors, more than gdn can index", *tensor_count);
    return GDN_OK;
}

/* Fill `file` from the parsed header: entries, names, metadata, lookup tables; then check that
 * the tensors tile the data section exactly (no overlap, no hole, nothing after the last). */
static gdn_status read_header(gdn_safetensors *file, const gdn_json_node *root, uint64_t data_size)
{
    if (root->kind != GDN_JSON_OBJECT)
        return gdn_fail(GDN_ERROR_FORMAT, "safetensors: the header is a JSON %s, expected an object",
                        gdn_json_kind_name(root->kind));
    size_t tensor_count, metadata_count, names_bytes;
    const gdn_json_node *metadata;
    gdn_status status = survey_header(root, &tensor_count, &metadata_count, &names_bytes, &metadata);
    if (status != GDN_OK)
        return status;
    file->tensors = calloc(tensor_count ? tensor_count : 1, sizeof *file->tensors);
    file->by_name = calloc(tensor_count ? tensor_count : 1, sizeof *file->by_name);
    file->metadata = calloc(metadata_count ? metadata_count : 1, sizeof *file->metadata);
    file->names = malloc(names_bytes ? names_bytes : 1);
    tensor_entry **by_offset = file->by_offset = calloc(tensor_count ? tensor_count : 1, sizeof *by_offset);
    if (!file->tensors || !file->by_name || !file->metadata || !file->names || !by_offset)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors: out of memory for %zu tensor entries", tensor_count);
    char *cursor = file->names;
    for (const gdn_json_node *member = root->first; member != NULL; member = member->next) {
        if (member == metadata)
            continue;
        tensor_entry *entry = &file->tensors[file->count];
        entry->name = store_string(&cursor, member->key, member->key_length);
        status = read_tensor(entry->name, member, data_size, entry);
        if (status != GDN_OK)
            return status;
        file->by_name[file->count] = by_offset[file->count] = entry;
        file->count++;
    }
    if (metadata != NULL) {
        for (const gdn_json_node *item = metadata->first; item != NULL; item = item->next) {
            metadata_entry *m = &file->metadata[file->metadata_count++];
            m->key = store_string(&cursor, item->key, item->key_length);
            m->value = store_string(&cursor, item->string, item->length);
        }
        qsort(file->metadata, file->metadata_count, sizeof *file->metadata, compare_metadata);
        for (size_t i = 1; i < file->metadata_count; i++)
            if (strcmp(file->metadata[i - 1].key, file->metadata[i].key) == 0)
                status = gdn_fail(GDN_ERROR_FORMAT, "safetensors: metadata key '%.64s' appears twice",
                                  file->metadata[i].key);
    }
    qsort(file->by_name, tensor_count, sizeof *file->by_name, compare_by_name);
    for (size_t i = 1; i < tensor_count && status == GDN_OK; i++)
        if (strcmp(file->by_name[i - 1]->name, file->by_name[i]->name) == 0)
            status = gdn_fail(GDN_ERROR_FORMAT, "safetensors: tensor name '%.96s' appears twice",
                              file->by_name[i]->name);

    /* Walk in offset order: each tensor must begin where the previous ended. */
    qsort(by_offset, tensor_count, sizeof *by_offset, compare_by_offset);
    uint64_t covered = 0;
    const char *previous = NULL;
    for (size_t i = 0; i < tensor_count && status == GDN_OK; i++) {
        const tensor_entry *entry = by_offset[i];
        if (entry->begin > covered)
            status = tensor_fail(GDN_ERROR_FORMAT, entry->name,
                                 "data section bytes [%" PRIu64 ", %" PRIu64 ") belong to no tensor (a hole)", covered,
                                 entry->begin);
        else if (entry->begin < covered)
            status = tensor_fail(GDN_ERROR_FORMAT, entry->name,
                                 "data_offsets [%" PRIu64 ", %" PRIu64 ") overlap tensor '%.96s' (which ends at %" PRIu64 ")",
                                 entry->begin, entry->end, previous, covered);
        covered = entry->end;
        previous = entry->name;
    }
    if (status == GDN_OK && covered != data_size)
        status = gdn_fail(GDN_ERROR_FORMAT,
                          "safetensors: data section bytes [%" PRIu64 ", %" PRIu64 ") after the last tensor belong to no tensor",
                          covered, data_size);

    /* Aligned slots in file order, so a file source can be read front to back. */
    size_t total = 0;
    for (size_t i = 0; i < tensor_count && status == GDN_OK; i++) {
        by_offset[i]->slot = total;
        size_t bytes = (size_t)(by_offset[i]->end - by_offset[i]->begin);
        if (!gdn_size_add(total, bytes, &total) || !gdn_size_add(total, DATA_ALIGN - 1, &total))
            status = gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors: data section too large for this machine");
        total -= total % DATA_ALIGN;
    }
    if (status == GDN_OK) {
        file->data = aligned_alloc(DATA_ALIGN, total ? total : DATA_ALIGN);
        if (file->data == NULL)
            status = gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors: cannot allocate %zu bytes for tensor data", total);
    }
    return status;
}

/* ---- reader: entry points ------------------------------------------------------------------- */

void gdn_safetensors_free(gdn_safetensors *file)
{
    if (file == NULL)
        return;
    free(file->tensors);
    free(file->by_name);
    free(file->by_offset);
    free(file->metadata);
    free(file->names);
    free(file->data);
    free(file);
}

/* Read, parse and validate everything from `src` into a new file object. */
static gdn_status load(gdn_safetensors **out, source *src)
{
    if (src->size < HEADER_LENGTH_BYTES)
        return gdn_fail(GDN_ERROR_FORMAT,
                        "safetensors: file is %" PRIu64 " bytes, too short for the 8-byte header length", src->size);
    unsigned char length_bytes[HEADER_LENGTH_BYTES];
    gdn_status status = source_read(src, 0, length_bytes, sizeof length_bytes);
    if (status != GDN_OK)
        return status;
    uint64_t header_length = 0;
    for (int i = HEADER_LENGTH_BYTES - 1; i >= 0; i--)
        header_length = (header_length << 8) | length_bytes[i];
    if (header_length == 0)
        return gdn_fail(GDN_ERROR_FORMAT, "safetensors: header length is 0, expected a JSON object");
    if (header_length > HEADER_LIMIT)
        return gdn_fail(GDN_ERROR_FORMAT, "safetensors: header length %" PRIu64 " is over the %d byte limit",
                        header_length, HEADER_LIMIT);
    if (header_length > src->size - HEADER_LENGTH_BYTES)
        return gdn_fail(GDN_ERROR_FORMAT,
                        "safetensors: header length %" PRIu64 " runs past the end of the file (%" PRIu64 " bytes)",
                        header_length, src->size);
    uint64_t data_start = HEADER_LENGTH_BYTES + header_length;

    char *header_copy = NULL;
    const char *header = NULL;
    if (src->bytes != NULL) {
        header = (const char *)src->bytes + HEADER_LENGTH_BYTES;
    } else {
        header_copy = malloc((size_t)header_length);
        if (header_copy == NULL)
            return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors: cannot allocate %" PRIu64 " header bytes",
                            header_length);
        status = source_read(src, HEADER_LENGTH_BYTES, header_copy, (size_t)header_length);
        header = header_copy;
    }
    gdn_json_document *document = NULL;
    if (status == GDN_OK) {
        status = gdn_json_parse(&document, header, (size_t)header_length);
        if (status != GDN_OK)
            status = prefix_detail(status, "safetensors header: ");
    }
    gdn_safetensors *file = NULL;
    if (status == GDN_OK) {
        file = calloc(1, sizeof *file);
        if (file == NULL)
            status = gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors: out of memory");
    }
    if (status == GDN_OK)
        status = read_header(file, gdn_json_root(document), src->size - data_start);
    gdn_json_free(document);
    free(header_copy);

    /* The tensors tile the data section and the slots were assigned in offset order, so this
     * reads the data section front to back. */
    for (int32_t i = 0; status == GDN_OK && i < file->count; i++) {
        const tensor_entry *entry = file->by_offset[i];
        status = source_read(src, data_start + entry->begin, file->data + entry->slot,
                             (size_t)(entry->end - entry->begin));
    }
    if (status != GDN_OK) {
        gdn_safetensors_free(file);
        return status;
    }
    *out = file;
    return GDN_OK;
}

gdn_status gdn_safetensors_parse(gdn_safetensors **out, const void *bytes, size_t n_bytes)
{
    gdn_clear_error();
    if (out == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_parse: out is NULL");
    *out = NULL;
    if (bytes == NULL && n_bytes > 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_parse: bytes is NULL but n_bytes is %zu", n_bytes);
    static const unsigned char nothing[1];
    source src = {bytes ? bytes : nothing, NULL, n_bytes, 0};
    return load(out, &src);
}

gdn_status gdn_safetensors_open(gdn_safetensors **out, const char *path)
{
    gdn_clear_error();
    if (out == NULL || path == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_open: %s is NULL", out == NULL ? "out" : "path");
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return gdn_fail(GDN_ERROR_IO, "safetensors: cannot open '%.200s': %s", path, strerror(errno));
    long size = -1;
    if (fseek(fp, 0, SEEK_END) == 0)
        size = ftell(fp);
    if (size < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        int error = errno;
        fclose(fp);
        return gdn_fail(GDN_ERROR_IO, "safetensors: cannot find the size of '%.200s': %s", path, strerror(error));
    }
    source src = {NULL, fp, (uint64_t)size, 0};
    gdn_status status = load(out, &src);
    fclose(fp);
    if (status != GDN_OK) {
        char prefix[256];
        snprintf(prefix, sizeof prefix, "'%.200s': ", path);
        return prefix_detail(status, prefix);
    }
    return GDN_OK;
}

int32_t gdn_safetensors_count(const gdn_safetensors *file)
{
    return file ? file->count : 0;
}

const char *gdn_safetensors_name(const gdn_safetensors *file, int32_t index)
{
    if (file == NULL || index < 0 || index >= file->count)
        return NULL;
    return file->tensors[index].name;
}

gdn_status gdn_safetensors_get(const gdn_safetensors *file, const char *name, gdn_tensor *out)
{
    gdn_clear_error();
    if (file == NULL || name == NULL || out == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_get: file, name and out must not be NULL");
    size_t lo = 0, hi = (size_t)file->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const tensor_entry *entry = file->by_name[mid];
        int order = strcmp(name, entry->name);
        if (order == 0) {
            *out = gdn_tensor_contiguous(file->data + entry->slot, entry->dtype, entry->n_dims, entry->ne);
            return GDN_OK;
        }
        if (order < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return gdn_fail(GDN_ERROR_NOT_FOUND, "safetensors: no tensor named '%.96s' (the file has %d)", name,
                    (int)file->count);
}

const char *gdn_safetensors_metadata(const gdn_safetensors *file, const char *key)
{
    if (file == NULL || key == NULL)
        return NULL;
    metadata_entry probe = {key, NULL};
    const metadata_entry *found =
        bsearch(&probe, file->metadata, file->metadata_count, sizeof probe, compare_metadata);
    return found ? found->value : NULL;
}

/* ---- writer --------------------------------------------------------------------------------- */

typedef struct writer_tensor {
    char *name;
    gdn_dtype dtype;
    int32_t n_dims;
    int64_t ne[GDN_MAX_DIMS];
    unsigned char *data; /* contiguous copy, `bytes` long */
    size_t bytes;
} writer_tensor;

typedef struct writer_metadata {
    char *key, *value;
} writer_metadata;

struct gdn_safetensors_writer {
    writer_tensor *tensors; /* insertion order, which is also file order */
    size_t count, capacity;
    writer_metadata *metadata; /* insertion order */
    size_t metadata_count, metadata_capacity;
};

static char *copy_text(const char *text)
{
    size_t n = strlen(text) + 1;
    char *copy = malloc(n);
    if (copy != NULL)
        memcpy(copy, text, n);
    return copy;
}

/* `array` (count used of *capacity elements of `size` bytes) with room for one more; NULL when
 * out of memory, and then `array` is still valid. */
static void *grow(void *array, size_t *capacity, size_t count, size_t size)
{
    if (count < *capacity)
        return array;
    size_t new_capacity = *capacity ? *capacity * 2 : 8, bytes;
    if (!gdn_size_mul(new_capacity, size, &bytes))
        return NULL;
    void *grown = realloc(array, bytes);
    if (grown != NULL)
        *capacity = new_capacity;
    return grown;
}

gdn_status gdn_safetensors_writer_init(gdn_safetensors_writer **out)
{
    gdn_clear_error();
    if (out == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_writer_init: out is NULL");
    *out = calloc(1, sizeof **out);
    if (*out == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors_writer_init: out of memory");
    return GDN_OK;
}

void gdn_safetensors_writer_free(gdn_safetensors_writer *writer)
{
    if (writer == NULL)
        return;
    for (size_t i = 0; i < writer->count; i++) {
        free(writer->tensors[i].name);
        free(writer->tensors[i].data);
    }
    for (size_t i = 0; i < writer->metadata_count; i++) {
        free(writer->metadata[i].key);
        free(writer->metadata[i].value);
    }
    free(writer->tensors);
    free(writer->metadata);
    free(writer);
}

/* Copy every element of the strided view `t` into dst, innermost dim fastest. Rows whose
 * elements are adjacent (nb[0] == element size) are copied with one memcpy each. */
static void copy_strided(unsigned char *dst, const gdn_tensor *t, size_t element)
{
    if (gdn_tensor_is_contiguous(t)) {
        memcpy(dst, t->data, (size_t)gdn_tensor_count(t) * element);
        return;
    }
    int packed_rows = t->nb[0] == element;
    size_t row_bytes = (size_t)t->ne[0] * element;
    int64_t index[GDN_MAX_DIMS] = {0}; /* of dims 1.. ; index[0] unused */
    for (;;) {
        const unsigned char *row = t->data;
        for (int d = 1; d < GDN_MAX_DIMS; d++)
            row += (size_t)index[d] * t->nb[d];
        if (packed_rows) {
            memcpy(dst, row, row_bytes);
            dst += row_bytes;
        } else {
            for (int64_t i = 0; i < t->ne[0]; i++, dst += element)
                memcpy(dst, row + (size_t)i * t->nb[0], element);
        }
        int d = 1;
        while (d < GDN_MAX_DIMS && ++index[d] == t->ne[d])
            index[d++] = 0;
        if (d == GDN_MAX_DIMS)
            return;
    }
}

gdn_status gdn_safetensors_writer_add(gdn_safetensors_writer *writer, const char *name, const gdn_tensor *t)
{
    gdn_clear_error();
    if (writer == NULL || name == NULL || t == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_writer_add: writer, name and t must not be NULL");
    if (strcmp(name, METADATA_KEY) == 0 || !gdn_json_utf8_valid(name, strlen(name)))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT,
                        "safetensors_writer_add: name '%.96s' is reserved or not valid UTF-8", name);
    for (size_t i = 0; i < writer->count; i++)
        if (strcmp(writer->tensors[i].name, name) == 0)
            return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_writer_add: tensor '%.96s' was already added", name);
    if (writer->count >= INT32_MAX)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_writer_add: too many tensors");
    size_t element = gdn_dtype_size(t->dtype);
    if (element == 0)
        return tensor_fail(GDN_ERROR_TYPE, name, "unknown dtype %d", (int)t->dtype);
    if (t->n_dims < 1 || t->n_dims > GDN_MAX_DIMS)
        return tensor_fail(GDN_ERROR_SHAPE, name, "n_dims is %d, expected 1..%d", (int)t->n_dims, GDN_MAX_DIMS);
    for (int d = 0; d < GDN_MAX_DIMS; d++) {
        if (t->ne[d] < 0 || (d >= t->n_dims && t->ne[d] != 1))
            return tensor_fail(GDN_ERROR_SHAPE, name,
                               "ne[%d] = %" PRId64 ", expected >= 0 (and 1 beyond n_dims = %d)", d, t->ne[d],
                               (int)t->n_dims);
    }
    size_t bytes;
    if (!tensor_bytes(t->dtype, t->n_dims, t->ne, &bytes))
        return tensor_fail(GDN_ERROR_SHAPE, name, "element count overflows");
    if (bytes > 0 && t->data == NULL)
        return tensor_fail(GDN_ERROR_INVALID_ARGUMENT, name, "data is NULL");

    writer_tensor entry = {0};
    entry.name = copy_text(name);
    entry.data = malloc(bytes ? bytes : 1);
    writer_tensor *tensors = grow(writer->tensors, &writer->capacity, writer->count, sizeof entry);
    if (tensors != NULL)
        writer->tensors = tensors;
    if (entry.name == NULL || entry.data == NULL || tensors == NULL) {
        free(entry.name);
        free(entry.data);
        return tensor_fail(GDN_ERROR_OUT_OF_MEMORY, name, "out of memory copying %zu bytes", bytes);
    }
    if (bytes > 0)
        copy_strided(entry.data, t, element);
    entry.dtype = t->dtype;
    entry.n_dims = t->n_dims;
    memcpy(entry.ne, t->ne, sizeof entry.ne);
    entry.bytes = bytes;
    writer->tensors[writer->count++] = entry;
    return GDN_OK;
}

gdn_status gdn_safetensors_writer_set_metadata(gdn_safetensors_writer *writer, const char *key, const char *value)
{
    gdn_clear_error();
    if (writer == NULL || key == NULL || value == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_writer_set_metadata: arguments must not be NULL");
    if (!gdn_json_utf8_valid(key, strlen(key)) || !gdn_json_utf8_valid(value, strlen(value)))
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_writer_set_metadata: '%.64s' is not valid UTF-8", key);
    char *copy = copy_text(value);
    if (copy == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors_writer_set_metadata: out of memory");
    for (size_t i = 0; i < writer->metadata_count; i++) {
        if (strcmp(writer->metadata[i].key, key) == 0) {
            free(writer->metadata[i].value);
            writer->metadata[i].value = copy;
            return GDN_OK;
        }
    }
    writer_metadata item = {copy_text(key), copy};
    writer_metadata *metadata = grow(writer->metadata, &writer->metadata_capacity, writer->metadata_count, sizeof item);
    if (metadata != NULL)
        writer->metadata = metadata;
    if (item.key == NULL || metadata == NULL) {
        free(item.key);
        free(copy);
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors_writer_set_metadata: out of memory");
    }
    writer->metadata[writer->metadata_count++] = item;
    return GDN_OK;
}

/* The header JSON, padded with spaces to a multiple of 8 bytes so the data section starts
 * 8-aligned in the file (as Python's safetensors does). Returns 0 when out of memory. */
static int build_header(const gdn_safetensors_writer *writer, gdn_json_buffer *out)
{
    int ok = gdn_json_buffer_append_text(out, "{");
    if (writer->metadata_count > 0) {
        ok = ok && gdn_json_buffer_append_string(out, METADATA_KEY) && gdn_json_buffer_append_text(out, ":{");
        for (size_t i = 0; i < writer->metadata_count; i++) {
            ok = ok && (i == 0 || gdn_json_buffer_append_text(out, ",")) &&
                 gdn_json_buffer_append_string(out, writer->metadata[i].key) &&
                 gdn_json_buffer_append_text(out, ":") &&
                 gdn_json_buffer_append_string(out, writer->metadata[i].value);
        }
        ok = ok && gdn_json_buffer_append_text(out, "}");
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < writer->count; i++) {
        const writer_tensor *t = &writer->tensors[i];
        char text[64];
        ok = ok && ((i == 0 && writer->metadata_count == 0) || gdn_json_buffer_append_text(out, ",")) &&
             gdn_json_buffer_append_string(out, t->name) && gdn_json_buffer_append_text(out, ":{\"dtype\":") &&
             gdn_json_buffer_append_string(out, gdn_dtype_name(t->dtype)) &&
             gdn_json_buffer_append_text(out, ",\"shape\":[");
        for (int32_t d = t->n_dims - 1; d >= 0; d--) { /* outermost first */
            snprintf(text, sizeof text, "%" PRId64 "%s", t->ne[d], d > 0 ? "," : "");
            ok = ok && gdn_json_buffer_append_text(out, text);
        }
        snprintf(text, sizeof text, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset, offset + t->bytes);
        ok = ok && gdn_json_buffer_append_text(out, text);
        offset += t->bytes;
    }
    ok = ok && gdn_json_buffer_append_text(out, "}");
    while (ok && out->length % 8 != 0)
        ok = gdn_json_buffer_append_text(out, " ");
    return ok;
}

/* Write the whole file to an open stream; 0 on any short write. */
static int write_all(FILE *fp, const gdn_safetensors_writer *writer, const gdn_json_buffer *header)
{
    unsigned char length_bytes[HEADER_LENGTH_BYTES];
    for (int i = 0; i < HEADER_LENGTH_BYTES; i++)
        length_bytes[i] = (unsigned char)((uint64_t)header->length >> (8 * i));
    if (fwrite(length_bytes, 1, sizeof length_bytes, fp) != sizeof length_bytes ||
        fwrite(header->data, 1, header->length, fp) != header->length)
        return 0;
    for (size_t i = 0; i < writer->count; i++) {
        const writer_tensor *t = &writer->tensors[i];
        if (t->bytes > 0 && fwrite(t->data, 1, t->bytes, fp) != t->bytes)
            return 0;
    }
    return 1;
}

gdn_status gdn_safetensors_writer_save(const gdn_safetensors_writer *writer, const char *path)
{
    gdn_clear_error();
    if (writer == NULL || path == NULL)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_writer_save: writer and path must not be NULL");
    gdn_json_buffer header = {0};
    if (!build_header(writer, &header)) {
        gdn_json_buffer_free(&header);
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors_writer_save: out of memory building the header");
    }
    if (header.length > HEADER_LIMIT) { /* a reader (ours included) would refuse the file */
        gdn_json_buffer_free(&header);
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "safetensors_writer_save: header of %zu bytes is over the %d limit",
                        header.length, HEADER_LIMIT);
    }
    size_t temp_size = strlen(path) + 32;
    char *temp = malloc(temp_size);
    if (temp == NULL) {
        gdn_json_buffer_free(&header);
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "safetensors_writer_save: out of memory");
    }
    snprintf(temp, temp_size, "%s.tmp.%ld", path, (long)getpid());

    gdn_status status = GDN_OK;
    FILE *fp = fopen(temp, "wb");
    if (fp == NULL) {
        status = gdn_fail(GDN_ERROR_IO, "safetensors: cannot create '%.200s': %s", temp, strerror(errno));
    } else {
        int written = write_all(fp, writer, &header);
        int error = errno;
        int closed = fclose(fp) == 0;
        if (!closed)
            error = errno;
        if (!written || !closed)
            status = gdn_fail(GDN_ERROR_IO, "safetensors: writing '%.200s' failed: %s", temp, strerror(error));
        else if (rename(temp, path) != 0)
            status = gdn_fail(GDN_ERROR_IO, "safetensors: cannot rename '%.200s' to '%.200s': %s", temp, path,
                              strerror(errno));
        if (status != GDN_OK)
            remove(temp);
    }
    free(temp);
    gdn_json_buffer_free(&header);
    return status;
}
