/* gdn_pass_log.h: how graph passes report what they did and why they refused: to the caller's
 * callback, or, with none, to stderr when GDN_LOG_PASSES=1 is set. */
#ifndef GDN_PASS_LOG_H
#define GDN_PASS_LOG_H

#include "../core/graph.h"

typedef struct gdn_pass_log {
    gdn_graph_log_fn fn; /* NULL: nowhere */
    void *user;
} gdn_pass_log;

/* The log a pass writes to: `fn`, or stderr when fn is NULL and GDN_LOG_PASSES=1. */
gdn_pass_log gdn_pass_log_open(gdn_graph_log_fn fn, void *user);

/* Format one line and hand it to the log (nothing when the log goes nowhere). */
void gdn_pass_say(const gdn_pass_log *log, const char *format, ...) GDN_PRINTF(2, 3);

#endif
