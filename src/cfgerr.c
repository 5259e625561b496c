/*
 * cfgerr.c - accumulates configuration errors with their JSON path, for the compile steps of the
 * Rules Engine and of the outgoing webhooks (load time only, never on the data path).
 */
#include "firebridge/cfgerr.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/common.h"

static void push(struct fbr_cfgerr *e, char *msg)
{
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 8;
        e->msgs = fbr_xrealloc(e->msgs, e->cap * sizeof(*e->msgs));
    }
    e->msgs[e->n++] = msg;
}

void fbr_cfgerr_line(struct fbr_cfgerr *e, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    push(e, fbr_xstrdup(msg));
}

void fbr_cfgerr_join(const struct fbr_cfgerr *e, char *buf, size_t cap)
{
    if (!buf || !cap)
        return;
    size_t len = strnlen(buf, cap - 1);
    buf[len] = '\0';
    for (size_t i = 0; i < e->n && len + 1 < cap; i++) {
        int n = snprintf(buf + len, cap - len, "%s%s", len ? "\n" : "", e->msgs[i]);
        len += n > 0 ? (size_t)n : 0;
        if (len >= cap)
            len = cap - 1;
    }
    buf[len] = '\0';
}

void fbr_cfgerr_add(struct fbr_cfgerr *e, const char *path, const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    size_t len = strlen(path) + strlen(reason) + 3;
    char *msg = fbr_xmalloc(len);
    snprintf(msg, len, "%s: %s", path, reason);
    push(e, msg);
}

void fbr_cfgerr_clear(struct fbr_cfgerr *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->msgs[i]);
    free(e->msgs);
    e->msgs = NULL;
    e->n = e->cap = 0;
}
