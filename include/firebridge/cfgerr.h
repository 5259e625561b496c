/*
 * cfgerr.h - the list of configuration errors a compile step collects, each prefixed with the
 * JSON path of the offending value (`rules[1].when.match: must be "wildcard" or "regex"`).  The
 * rules and webhook compilers fill it at load time so that one run reports every mistake at once.
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
/* Frees every message and empties the list (the struct itself is the caller's). */
void fbr_cfgerr_clear(struct fbr_cfgerr *e);

#endif
