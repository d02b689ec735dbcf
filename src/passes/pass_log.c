/* gdn_pass_log.c: the passes' shared log (see gdn_pass_log.h). */
#include "pass_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void log_to_stderr(void *user, const char *message)
{
    (void)user;
    fprintf(stderr, "%s\n", message);
}

gdn_pass_log gdn_pass_log_open(gdn_graph_log_fn fn, void *user)
{
    gdn_pass_log log = {fn, user};
    const char *env = getenv("GDN_LOG_PASSES");
    if (log.fn == NULL && env != NULL && strcmp(env, "1") == 0)
        log.fn = log_to_stderr;
    return log;
}

void gdn_pass_say(const gdn_pass_log *log, const char *format, ...)
{
    if (log->fn == NULL)
        return;
    char message[512];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    log->fn(log->user, message);
}
