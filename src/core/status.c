/* status.c: status texts generated from gdn_status.def, and the per-thread detail message. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char error_detail[512];

const char *gdn_status_string(gdn_status status)
{
    switch (status) {
#define GDN_STATUS_ITEM(name, value, text) \
    case GDN_##name:                       \
        return text;
#include "gdn_status.def"
#undef GDN_STATUS_ITEM
    }
    return "unknown status";
}

const char *gdn_error_detail(void)
{
    return error_detail;
}

gdn_status gdn_fail(gdn_status status, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(error_detail, sizeof error_detail, format, args);
    va_end(args);
    return status;
}

void gdn_clear_error(void)
{
    error_detail[0] = '\0';
}

int gdn_size_mul(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > (size_t)-1 / a)
        return 0;
    *out = a * b;
    return 1;
}

int gdn_size_add(size_t a, size_t b, size_t *out)
{
    if (b > (size_t)-1 - a)
        return 0;
    *out = a + b;
    return 1;
}
