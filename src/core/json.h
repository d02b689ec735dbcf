/* json.h: a small strict JSON parser (RFC 8259) for safetensors headers, and the string escaping
 * the safetensors writer needs. Internal, not installed.
 *
 * gdn_json_parse turns a byte buffer into a tree of gdn_json_node allocated in one arena owned by
 * a gdn_json_document; gdn_json_free releases all of it at once. Strictness: no comments, no
 * trailing commas, no leading zeros, no NaN/Infinity, strings must be valid UTF-8 without raw
 * control characters, escapes are exactly those of RFC 8259 (\uXXXX surrogate pairs are combined
 * into one UTF-8 sequence; a lone surrogate is an error), nesting is limited to
 * GDN_JSON_MAX_DEPTH, and only whitespace may follow the top-level value.
 *
 * Numbers: a number without fraction or exponent is GDN_JSON_INTEGER and must fit in int64_t
 * (-2^63 .. 2^63-1 exactly; anything beyond is rejected). A number with a fraction or exponent is
 * syntax-checked and kept as GDN_JSON_REAL with its source text only (no conversion to double:
 * nothing in gdn needs one, and strtod depends on the locale), so callers can reject it by name.
 *
 * Object members keep their order; duplicate keys are kept too (the caller decides, since
 * checking every object here would cost O(n^2) on large headers). Every failure returns
 * GDN_ERROR_FORMAT with a detail naming the byte offset, or GDN_ERROR_OUT_OF_MEMORY. */
#ifndef GDN_JSON_H
#define GDN_JSON_H

#include "internal.h"

#define GDN_JSON_MAX_DEPTH 64

typedef enum gdn_json_kind {
    GDN_JSON_NULL,
    GDN_JSON_FALSE,
    GDN_JSON_TRUE,
    GDN_JSON_INTEGER, /* integer: value in `integer` */
    GDN_JSON_REAL,    /* number with fraction or exponent: source text in `string` */
    GDN_JSON_STRING,  /* decoded UTF-8 in `string` (length bytes, NUL-terminated; may hold \0) */
    GDN_JSON_ARRAY,   /* `count` children from `first` along `next` */
    GDN_JSON_OBJECT   /* the same; each child has its member name in `key` */
} gdn_json_kind;

typedef struct gdn_json_node gdn_json_node;
struct gdn_json_node {
    gdn_json_kind kind;
    size_t offset;        /* byte offset in the input where this value starts (for messages) */
    int64_t integer;      /* GDN_JSON_INTEGER */
    const char *string;   /* GDN_JSON_STRING, GDN_JSON_REAL; NUL-terminated */
    size_t length;        /* bytes in `string`, without the terminating NUL */
    const char *key;      /* member name when the parent is an object, else NULL; NUL-terminated */
    size_t key_length;    /* bytes in `key` */
    size_t count;         /* children of an array or object */
    gdn_json_node *first; /* first child */
    gdn_json_node *next;  /* next sibling */
};

typedef struct gdn_json_document gdn_json_document;

/* Parse `length` bytes of `text` (no NUL terminator needed). On success *out owns the tree;
 * free it with gdn_json_free. On failure *out is NULL and the detail names the offset. */
gdn_status gdn_json_parse(gdn_json_document **out, const char *text, size_t length);

/* Release a document and every node and string in it. NULL is a no-op. */
void gdn_json_free(gdn_json_document *document);

/* The top-level value; owned by the document. */
const gdn_json_node *gdn_json_root(const gdn_json_document *document);

/* First member of `object` named `key` (compared over key_length bytes), or NULL if absent or
 * `object` is not an object. Linear in the member count: meant for small objects. */
const gdn_json_node *gdn_json_object_get(const gdn_json_node *object, const char *key);

/* Short name of a kind for messages ("object", "integer", ...); static storage. */
const char *gdn_json_kind_name(gdn_json_kind kind);

/* 1 if bytes[0..length) are valid UTF-8 (no overlong forms, no surrogates, <= U+10FFFF). */
int gdn_json_utf8_valid(const char *bytes, size_t length);

/* A growable byte buffer for writing JSON text. Start from {0}; release with gdn_json_buffer_free.
 * The append calls return 0 when memory runs out (the buffer then stays valid but incomplete). */
typedef struct gdn_json_buffer {
    char *data;
    size_t length;
    size_t capacity;
} gdn_json_buffer;

int gdn_json_buffer_append(gdn_json_buffer *buffer, const char *bytes, size_t length);
int gdn_json_buffer_append_text(gdn_json_buffer *buffer, const char *text);

/* Append `text` as a quoted JSON string: ", \ and control characters escaped, other bytes
 * (UTF-8) copied as they are. */
int gdn_json_buffer_append_string(gdn_json_buffer *buffer, const char *text);

void gdn_json_buffer_free(gdn_json_buffer *buffer);

#endif
