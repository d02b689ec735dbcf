/* fuzz_safetensors.c: libFuzzer target for the safetensors reader and its JSON parser.
 * Each input is (1) parsed as a whole file from memory; an accepted file is walked completely:
 * each tensor looked up by name with its first and last byte read, each metadata key of the
 * header looked up and compared, so ASan sees any view outside what the reader allocated; and
 * (2) handed to the JSON parser as plain text, which reaches the parser without needing a valid
 * length prefix. Build and run with fuzz/run.sh. */
#include "core/json.h"
#include "gdn.h"

#include <stdint.h>
#include <string.h>

/* Defeats the optimizer: the bytes read from each view are mixed into here. */
static volatile unsigned char sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every __metadata__ entry of the header must be returned by gdn_safetensors_metadata. */
static void walk_metadata(const gdn_safetensors *file, const uint8_t *data)
{
    uint64_t header_length = 0;
    for (int i = 7; i >= 0; i--)
        header_length = header_length << 8 | data[i];
    gdn_json_document *document = NULL;
    if (gdn_json_parse(&document, (const char *)data + 8, (size_t)header_length) != GDN_OK)
        __builtin_trap(); /* the reader accepted this header */
    const gdn_json_node *metadata = gdn_json_object_get(gdn_json_root(document), "__metadata__");
    for (const gdn_json_node *item = metadata ? metadata->first : NULL; item != NULL; item = item->next) {
        const char *value = gdn_safetensors_metadata(file, item->key);
        if (value == NULL || strcmp(value, item->string) != 0)
            __builtin_trap();
    }
    gdn_json_free(document);
}

static void walk_file(const uint8_t *data, size_t size)
{
    gdn_safetensors *file = NULL;
    gdn_status status = gdn_safetensors_parse(&file, data, size);
    if (status != GDN_OK) {
        if (file != NULL || gdn_error_detail()[0] == '\0')
            __builtin_trap(); /* a failure leaves no object and says why */
        return;
    }
    int32_t count = gdn_safetensors_count(file);
    for (int32_t i = 0; i < count; i++) {
        const char *name = gdn_safetensors_name(file, i);
        gdn_tensor t;
        if (name == NULL || gdn_safetensors_get(file, name, &t) != GDN_OK)
            __builtin_trap(); /* every listed name is found */
        if ((uintptr_t)t.data % 64 != 0 || t.n_dims < 1 || t.n_dims > GDN_MAX_DIMS)
            __builtin_trap();
        size_t bytes = gdn_tensor_span(&t);
        if (bytes > 0) {
            const unsigned char *p = t.data;
            sink ^= p[0];
            sink ^= p[bytes - 1];
        }
    }
    if (gdn_safetensors_name(file, count) != NULL)
        __builtin_trap();
    walk_metadata(file, data);
    gdn_safetensors_free(file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    walk_file(data, size);
    gdn_json_document *document = NULL;
    if (gdn_json_parse(&document, (const char *)data, size) == GDN_OK)
        sink ^= (unsigned char)gdn_json_root(document)->kind;
    gdn_json_free(document);
    return 0;
}
