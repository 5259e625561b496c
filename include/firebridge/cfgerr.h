/*
 * cfgerr.h - the list of configuration errors a compile step collects, each prefixed with the
 * JSON path of the offending value (`rules[1].when.match: must be "wildcard" or "regex"`).  The
 * one error collector of configuration checking: the top-level table (config.c), the table
 * checker for every section (fbr_config_check_fields for settings objects such as hipchat and
 * oncall_api, fbr_config_check_item for the items of rules and webhooks) and the rules, webhook
 * and add-on compilers all fill it at load time, so that one run reports every mistake at once.
 */
#ifndef FIREBRIDGE_CFGERR_H
#define FIREBRIDGE_CFGERR_H

#include <stddef.h>

struct fbr_cfgerr {
    char **msgs; /* owned, each "path: reason" */
    size_t n, cap;
};

/* Appends "path: reason" (path formatted by the caller, reason by fmt). */
void fbr_cfgerr_add(struct fbr_cfgerr *e, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Appends one whole message whose text already names its path ("max_body: expected ..."). */
void fbr_cfgerr_line(struct fbr_cfgerr *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Writes the messages into buf (cap bytes), one per line after any text buf already holds,
 * cut at cap - 1 bytes (for callers that want text: --check-config output, tests). */
void fbr_cfgerr_join(const struct fbr_cfgerr *e, char *buf, size_t cap);
/* Frees every message and empties the list (the struct itself is the caller's). */
void fbr_cfgerr_clear(struct fbr_cfgerr *e);

#endif
