/* json.c: the strict JSON parser of json.h (recursive descent, depth-limited, every node and
 * string in one block arena) and the small writer helpers the safetensors writer uses. */
#include "json.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena: a list of blocks; allocations are bumped, everything is freed at once ---------- */

enum { ARENA_BLOCK_BYTES = 64 * 1024, ARENA_ALIGN = alignof(max_align_t) };

typedef struct arena_block arena_block;
struct arena_block {
    arena_block *next;
    size_t used;
    size_t size;
};

/* Block header size rounded up so the first allocation is aligned like malloc's. */
#define ARENA_HEADER (((sizeof(arena_block) + ARENA_ALIGN - 1) / ARENA_ALIGN) * ARENA_ALIGN)

struct gdn_json_document {
    arena_block *blocks; /* newest first; allocations come from the newest */
    gdn_json_node *root;
};

static void *arena_alloc(gdn_json_document *document, size_t bytes)
{
    size_t rounded;
    if (!gdn_size_add(bytes, ARENA_ALIGN - 1, &rounded))
        return NULL;
    rounded -= rounded % ARENA_ALIGN;
    arena_block *block = document->blocks;
    if (block == NULL || block->size - block->used < rounded) {
        /* A request larger than a block gets a block of its own. */
        size_t size = rounded > ARENA_BLOCK_BYTES ? rounded : ARENA_BLOCK_BYTES;
        size_t total;
        if (!gdn_size_add(size, ARENA_HEADER, &total))
            return NULL;
        block = malloc(total);
        if (block == NULL)
            return NULL;
        block->next = document->blocks;
        block->used = 0;
        block->size = size;
        document->blocks = block;
    }
    void *memory = (char *)block + ARENA_HEADER + block->used;
    block->used += rounded;
    return memory;
}

void gdn_json_free(gdn_json_document *document)
{
    if (document == NULL)
        return;
    arena_block *block = document->blocks;
    while (block != NULL) {
        arena_block *next = block->next;
        free(block);
        block = next;
    }
    free(document);
}

const gdn_json_node *gdn_json_root(const gdn_json_document *document)
{
    return document->root;
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence starting at s (at most `available` bytes), or 0 if invalid:
 * bad lead byte, missing continuation, overlong form, surrogate, or beyond U+10FFFF. */
static size_t utf8_sequence_length(const unsigned char *s, size_t available)
{
    unsigned char lead = s[0];
    if (lead < 0x80)
        return 1;
    size_t length;
    uint32_t min, code;
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2, min = 0x80, code = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3, min = 0x800, code = lead & 0x0F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4, min = 0x10000, code = lead & 0x07;
    } else {
        return 0; /* continuation byte as lead, 0xC0/0xC1 (always overlong), or 0xF5.. */
    }
    if (available < length)
        return 0;
    for (size_t i = 1; i < length; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        code = (code << 6) | (s[i] & 0x3F);
    }
    if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF))
        return 0;
    return length;
}

int gdn_json_utf8_valid(const char *bytes, size_t length)
{
    const unsigned char *s = (const unsigned char *)bytes;
    size_t i = 0;
    while (i < length) {
        size_t n = utf8_sequence_length(s + i, length - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

/* Write code point `code` (already checked: <= U+10FFFF, not a surrogate) as UTF-8. */
static size_t utf8_encode(uint32_t code, char *out)
{
    if (code < 0x80) {
        out[0] = (char)code;
        return 1;
    }
    if (code < 0x800) {
        out[0] = (char)(0xC0 | (code >> 6));
        out[1] = (char)(0x80 | (code & 0x3F));
        return 2;
    }
    if (code < 0x10000) {
        out[0] = (char)(0xE0 | (code >> 12));
        out[1] = (char)(0x80 | ((code >> 6) & 0x3F));
        out[2] = (char)(0x80 | (code & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (code >> 18));
    out[1] = (char)(0x80 | ((code >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((code >> 6) & 0x3F));
    out[3] = (char)(0x80 | (code & 0x3F));
    return 4;
}

/* ---- parser --------------------------------------------------------------------------------- */

typedef struct parser {
    const unsigned char *text;
    size_t length;
    size_t pos; /* next byte to read */
    gdn_json_document *document;
} parser;

static gdn_status syntax_error(const parser *p, size_t offset, const char *what)
{
    return gdn_fail(GDN_ERROR_FORMAT, "JSON: %s at byte %zu of %zu", what, offset, p->length);
}

static gdn_status out_of_memory(const parser *p)
{
    return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "JSON: out of memory at byte %zu of %zu", p->pos, p->length);
}

static void skip_whitespace(parser *p)
{
    while (p->pos < p->length) {
        unsigned char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return;
        p->pos++;
    }
}

/* Four hex digits at byte `at` (the caller checked they are inside the text) into *code. */
static int read_hex4(const parser *p, size_t at, uint32_t *code)
{
    uint32_t value = 0;
    for (size_t i = 0; i < 4; i++) {
        unsigned char c = p->text[at + i];
        uint32_t digit;
        if (c >= '0' && c <= '9')
            digit = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            digit = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            digit = (uint32_t)(c - 'A' + 10);
        else
            return 0;
        value = value * 16 + digit;
    }
    *code = value;
    return 1;
}

/* The escape after a backslash at p->pos (pointing at the byte after '\'). Writes the decoded
 * bytes to out, sets *written, advances p->pos past the escape. */
static gdn_status parse_escape(parser *p, char *out, size_t *written)
{
    size_t start = p->pos - 1; /* the backslash, for messages */
    if (p->pos >= p->length)
        return syntax_error(p, start, "unterminated escape");
    unsigned char c = p->text[p->pos++];
    const char *simple = NULL;
    switch (c) {
    case '"': simple = "\""; break;
    case '\\': simple = "\\"; break;
    case '/': simple = "/"; break;
    case 'b': simple = "\b"; break;
    case 'f': simple = "\f"; break;
    case 'n': simple = "\n"; break;
    case 'r': simple = "\r"; break;
    case 't': simple = "\t"; break;
    case 'u': break;
    default: return syntax_error(p, start, "invalid escape (expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u)");
    }
    if (simple != NULL) {
        out[0] = simple[0];
        *written = 1;
        return GDN_OK;
    }
    uint32_t code;
    if (p->length - p->pos < 4 || !read_hex4(p, p->pos, &code))
        return syntax_error(p, start, "\\u not followed by four hex digits");
    p->pos += 4;
    if (code >= 0xDC00 && code <= 0xDFFF)
        return syntax_error(p, start, "lone low surrogate in \\u escape");
    if (code >= 0xD800 && code <= 0xDBFF) {
        /* A high surrogate must be followed at once by \u and a low surrogate. */
        uint32_t low;
        if (p->length - p->pos < 6 || p->text[p->pos] != '\\' || p->text[p->pos + 1] != 'u' ||
            !read_hex4(p, p->pos + 2, &low) || low < 0xDC00 || low > 0xDFFF)
            return syntax_error(p, start, "high surrogate in \\u escape not followed by a low surrogate");
        p->pos += 6;
        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
    }
    *written = utf8_encode(code, out);
    return GDN_OK;
}

/* A string starting at the opening quote at p->pos; decoded into the arena. */
static gdn_status parse_string(parser *p, const char **out, size_t *out_length)
{
    size_t start = p->pos;
    p->pos++; /* opening quote */
    /* Find the closing quote first: the decoded text is never longer than the raw text, so one
     * allocation of the raw length suffices. */
    size_t end = p->pos;
    while (end < p->length && p->text[end] != '"')
        end += p->text[end] == '\\' ? 2 : 1;
    if (end >= p->length)
        return syntax_error(p, start, "unterminated string");
    char *decoded = arena_alloc(p->document, end - p->pos + 1);
    if (decoded == NULL)
        return out_of_memory(p);
    size_t n = 0;
    while (p->pos < end) {
        unsigned char c = p->text[p->pos];
        if (c == '\\') {
            p->pos++;
            size_t written = 0;
            gdn_status status = parse_escape(p, decoded + n, &written);
            if (status != GDN_OK)
                return status;
            n += written;
        } else if (c < 0x20) {
            return syntax_error(p, p->pos, "control character in string (must be escaped)");
        } else {
            size_t seq = utf8_sequence_length(p->text + p->pos, end - p->pos);
            if (seq == 0)
                return syntax_error(p, p->pos, "invalid UTF-8 in string");
            memcpy(decoded + n, p->text + p->pos, seq);
            n += seq;
            p->pos += seq;
        }
    }
    /* An escape cannot run past `end`: the scan above stepped over every backslash pair, so the
     * byte at `end` is an unescaped quote. */
    decoded[n] = '\0';
    p->pos = end + 1;
    *out = decoded;
    *out_length = n;
    return GDN_OK;
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* A number per RFC 8259; integers become int64 (overflow rejected), others keep their text. */
static gdn_status parse_number(parser *p, gdn_json_node *node)
{
    size_t start = p->pos;
    int negative = 0;
    if (p->text[p->pos] == '-') {
        negative = 1;
        p->pos++;
    }
    if (p->pos >= p->length || !is_digit(p->text[p->pos]))
        return syntax_error(p, start, "expected a digit in number");
    size_t digits_start = p->pos;
    if (p->text[p->pos] == '0') {
        p->pos++;
        if (p->pos < p->length && is_digit(p->text[p->pos]))
            return syntax_error(p, start, "leading zero in number");
    } else {
        while (p->pos < p->length && is_digit(p->text[p->pos]))
            p->pos++;
    }
    size_t digits_end = p->pos;
    int real = 0;
    if (p->pos < p->length && p->text[p->pos] == '.') {
        real = 1;
        p->pos++;
        if (p->pos >= p->length || !is_digit(p->text[p->pos]))
            return syntax_error(p, start, "expected a digit after the decimal point");
        while (p->pos < p->length && is_digit(p->text[p->pos]))
            p->pos++;
    }
    if (p->pos < p->length && (p->text[p->pos] == 'e' || p->text[p->pos] == 'E')) {
        real = 1;
        p->pos++;
        if (p->pos < p->length && (p->text[p->pos] == '+' || p->text[p->pos] == '-'))
            p->pos++;
        if (p->pos >= p->length || !is_digit(p->text[p->pos]))
            return syntax_error(p, start, "expected a digit in exponent");
        while (p->pos < p->length && is_digit(p->text[p->pos]))
            p->pos++;
    }
    if (real) {
        size_t length = p->pos - start;
        char *text = arena_alloc(p->document, length + 1);
        if (text == NULL)
            return out_of_memory(p);
        memcpy(text, p->text + start, length);
        text[length] = '\0';
        node->kind = GDN_JSON_REAL;
        node->string = text;
        node->length = length;
        return GDN_OK;
    }
    /* Accumulate the magnitude in uint64; the limit is 2^63-1, or 2^63 for a negative number. */
    uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t magnitude = 0;
    for (size_t i = digits_start; i < digits_end; i++) {
        uint64_t digit = (uint64_t)(p->text[i] - '0');
        if (magnitude > (limit - digit) / 10)
            return syntax_error(p, start, "integer does not fit in 64 bits");
        magnitude = magnitude * 10 + digit;
    }
    node->kind = GDN_JSON_INTEGER;
    if (!negative)
        node->integer = (int64_t)magnitude;
    else if (magnitude == (uint64_t)INT64_MAX + 1)
        node->integer = INT64_MIN;
    else
        node->integer = -(int64_t)magnitude;
    return GDN_OK;
}

static int match_literal(parser *p, const char *literal)
{
    size_t n = strlen(literal);
    if (p->length - p->pos < n || memcmp(p->text + p->pos, literal, n) != 0)
        return 0;
    p->pos += n;
    return 1;
}

static gdn_status parse_value(parser *p, int depth, gdn_json_node **out);

/* Array or object at p->pos ('[' or '{'); children are linked in order. */
static gdn_status parse_container(parser *p, int depth, gdn_json_node *node)
{
    int is_object = p->text[p->pos] == '{';
    char close = is_object ? '}' : ']';
    node->kind = is_object ? GDN_JSON_OBJECT : GDN_JSON_ARRAY;
    if (depth >= GDN_JSON_MAX_DEPTH)
        return syntax_error(p, p->pos, "nesting deeper than 64 levels");
    p->pos++;
    skip_whitespace(p);
    if (p->pos < p->length && p->text[p->pos] == close) {
        p->pos++;
        return GDN_OK;
    }
    gdn_json_node **link = &node->first;
    for (;;) {
        const char *key = NULL;
        size_t key_length = 0;
        if (is_object) {
            if (p->pos >= p->length || p->text[p->pos] != '"')
                return syntax_error(p, p->pos, "expected a string as object key");
            gdn_status status = parse_string(p, &key, &key_length);
            if (status != GDN_OK)
                return status;
            skip_whitespace(p);
            if (p->pos >= p->length || p->text[p->pos] != ':')
                return syntax_error(p, p->pos, "expected ':' after object key");
            p->pos++;
        }
        gdn_json_node *child;
        gdn_status status = parse_value(p, depth + 1, &child);
        if (status != GDN_OK)
            return status;
        child->key = key;
        child->key_length = key_length;
        *link = child;
        link = &child->next;
        node->count++;
        skip_whitespace(p);
        if (p->pos >= p->length)
            return syntax_error(p, p->pos, is_object ? "unterminated object" : "unterminated array");
        unsigned char c = p->text[p->pos++];
        if (c == close)
            return GDN_OK;
        if (c != ',')
            return syntax_error(p, p->pos - 1, is_object ? "expected ',' or '}' in object" : "expected ',' or ']' in array");
        skip_whitespace(p);
    }
}

/* Any value, after optional whitespace. `depth` counts the containers around it. */
static gdn_status parse_value(parser *p, int depth, gdn_json_node **out)
{
    skip_whitespace(p);
    if (p->pos >= p->length)
        return syntax_error(p, p->pos, "unexpected end of input, expected a value");
    gdn_json_node *node = arena_alloc(p->document, sizeof *node);
    if (node == NULL)
        return out_of_memory(p);
    memset(node, 0, sizeof *node);
    node->offset = p->pos;
    *out = node;
    unsigned char c = p->text[p->pos];
    switch (c) {
    case '{':
    case '[': return parse_container(p, depth, node);
    case '"':
        node->kind = GDN_JSON_STRING;
        return parse_string(p, &node->string, &node->length);
    case 't':
        node->kind = GDN_JSON_TRUE;
        return match_literal(p, "true") ? GDN_OK : syntax_error(p, node->offset, "invalid literal");
    case 'f':
        node->kind = GDN_JSON_FALSE;
        return match_literal(p, "false") ? GDN_OK : syntax_error(p, node->offset, "invalid literal");
    case 'n':
        node->kind = GDN_JSON_NULL;
        return match_literal(p, "null") ? GDN_OK : syntax_error(p, node->offset, "invalid literal");
    default:
        if (c == '-' || is_digit(c))
            return parse_number(p, node);
        return syntax_error(p, p->pos, "unexpected character, expected a value");
    }
}

gdn_status gdn_json_parse(gdn_json_document **out, const char *text, size_t length)
{
    *out = NULL;
    if (text == NULL && length > 0)
        return gdn_fail(GDN_ERROR_INVALID_ARGUMENT, "JSON: text is NULL");
    gdn_json_document *document = calloc(1, sizeof *document);
    if (document == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "JSON: out of memory");
    parser p = {(const unsigned char *)text, length, 0, document};
    gdn_status status = parse_value(&p, 0, &document->root);
    if (status == GDN_OK) {
        skip_whitespace(&p);
        if (p.pos != p.length)
            status = syntax_error(&p, p.pos, "unexpected data after the top-level value");
    }
    if (status != GDN_OK) {
        gdn_json_free(document);
        return status;
    }
    *out = document;
    return GDN_OK;
}

/* ---- lookups -------------------------------------------------------------------------------- */

const gdn_json_node *gdn_json_object_get(const gdn_json_node *object, const char *key)
{
    if (object == NULL || object->kind != GDN_JSON_OBJECT)
        return NULL;
    size_t n = strlen(key);
    for (const gdn_json_node *child = object->first; child != NULL; child = child->next)
        if (child->key_length == n && memcmp(child->key, key, n) == 0)
            return child;
    return NULL;
}

const char *gdn_json_kind_name(gdn_json_kind kind)
{
    switch (kind) {
    case GDN_JSON_NULL: return "null";
    case GDN_JSON_FALSE: return "false";
    case GDN_JSON_TRUE: return "true";
    case GDN_JSON_INTEGER: return "integer";
    case GDN_JSON_REAL: return "non-integer number";
    case GDN_JSON_STRING: return "string";
    case GDN_JSON_ARRAY: return "array";
    case GDN_JSON_OBJECT: return "object";
    }
    return "?";
}

/* ---- writing -------------------------------------------------------------------------------- */

int gdn_json_buffer_append(gdn_json_buffer *buffer, const char *bytes, size_t length)
{
    size_t needed;
    if (!gdn_size_add(buffer->length, length, &needed))
        return 0;
    if (needed > buffer->capacity) {
        size_t capacity = buffer->capacity ? buffer->capacity : 256;
        while (capacity < needed) {
            if (!gdn_size_mul(capacity, 2, &capacity))
                return 0;
        }
        char *data = realloc(buffer->data, capacity);
        if (data == NULL)
            return 0;
        buffer->data = data;
        buffer->capacity = capacity;
    }
    if (length > 0)
        memcpy(buffer->data + buffer->length, bytes, length);
    buffer->length = needed;
    return 1;
}

int gdn_json_buffer_append_text(gdn_json_buffer *buffer, const char *text)
{
    return gdn_json_buffer_append(buffer, text, strlen(text));
}

int gdn_json_buffer_append_string(gdn_json_buffer *buffer, const char *text)
{
    static const char hex[] = "0123456789abcdef";
    if (!gdn_json_buffer_append(buffer, "\"", 1))
        return 0;
    const char *run = text; /* start of the bytes not yet copied */
    for (const char *s = text; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        char escape[6];
        size_t escape_length = 2;
        escape[0] = '\\';
        if (c == '"' || c == '\\') {
            escape[1] = (char)c;
        } else if (c == '\n') {
            escape[1] = 'n';
        } else if (c == '\r') {
            escape[1] = 'r';
        } else if (c == '\t') {
            escape[1] = 't';
        } else if (c < 0x20) {
            escape[1] = 'u', escape[2] = '0', escape[3] = '0';
            escape[4] = hex[c >> 4], escape[5] = hex[c & 15];
            escape_length = 6;
        } else {
            continue;
        }
        if (!gdn_json_buffer_append(buffer, run, (size_t)(s - run)) ||
            !gdn_json_buffer_append(buffer, escape, escape_length))
            return 0;
        run = s + 1;
    }
    return gdn_json_buffer_append_text(buffer, run) && gdn_json_buffer_append(buffer, "\"", 1);
}

void gdn_json_buffer_free(gdn_json_buffer *buffer)
{
    free(buffer->data);
    buffer->data = NULL;
    buffer->length = buffer->capacity = 0;
}
