/*
 * ratelimit.c - sliding-window send log with server-imposed holds; see ratelimit.h for the
 * guarantee and why it holds.  Used by the delivery engine before each attempt.
 */
#include "firebridge/ratelimit.h"

#include <errno.h>
#include <stdlib.h>

#include "firebridge/common.h"

void fbr_ratelimit_init(struct fbr_ratelimit *rl, uint32_t n, uint64_t window_ms)
{
    rl->n = window_ms ? n : 0;
    rl->window_ms = window_ms;
    rl->ring = NULL;
    rl->cap = rl->len = rl->head = 0;
    rl->hold_until_ms = 0;
}

void fbr_ratelimit_free(struct fbr_ratelimit *rl)
{
    free(rl->ring);
    rl->ring = NULL;
    rl->cap = rl->len = rl->head = 0;
}

/* Re-packs the ring oldest-first into a buffer of new_cap entries, keeping the newest ones. */
static void repack(struct fbr_ratelimit *rl, uint32_t new_cap)
{
    uint32_t keep = rl->len < new_cap ? rl->len : new_cap;
    uint64_t *r = new_cap ? fbr_xmalloc(sizeof(*r) * new_cap) : NULL;
    for (uint32_t i = 0; i < keep; i++)
        r[i] = rl->ring[(rl->head + rl->len - keep + i) % rl->cap];
    free(rl->ring);
    rl->ring = r;
    rl->cap = new_cap;
    rl->len = keep;
    rl->head = 0;
}

void fbr_ratelimit_set(struct fbr_ratelimit *rl, uint32_t n, uint64_t window_ms)
{
    if (!window_ms)
        n = 0;
    if (rl->cap > n)
        repack(rl, n);
    rl->n = n;
    rl->window_ms = window_ms;
}

uint64_t fbr_ratelimit_next(const struct fbr_ratelimit *rl, uint64_t now)
{
    uint64_t t = now;
    if (rl->hold_until_ms > t)
        t = rl->hold_until_ms;
    if (rl->n && rl->len >= rl->n) {
        /* the n-th most recent send must have left the window (t - window, t] */
        uint64_t oldest = rl->ring[rl->head];
        if (oldest + rl->window_ms > t)
            t = oldest + rl->window_ms;
    }
    return t;
}

void fbr_ratelimit_record(struct fbr_ratelimit *rl, uint64_t now)
{
    if (!rl->n)
        return;
    if (rl->len < rl->n) {
        if (rl->len == rl->cap) {
            uint32_t c = rl->cap ? rl->cap * 2 : 4;
            repack(rl, c < rl->n ? c : rl->n);
        }
        rl->ring[(rl->head + rl->len) % rl->cap] = now;
        rl->len++;
        return;
    }
    rl->ring[rl->head] = now; /* overwrite the oldest: it is the one leaving the log */
    rl->head = (rl->head + 1) % rl->cap;
}

void fbr_ratelimit_hold(struct fbr_ratelimit *rl, uint64_t until_ms)
{
    if (until_ms > rl->hold_until_ms)
        rl->hold_until_ms = until_ms;
}

int fbr_ratelimit_parse(const char *s, uint32_t *n, uint32_t *secs)
{
    char *end;
    errno = 0;
    unsigned long a = strtoul(s, &end, 10);
    if (end == s || errno || a > UINT32_MAX)
        return FBR_INVALID;
    unsigned long b = 0;
    if (*end == '/') {
        const char *p = end + 1;
        b = strtoul(p, &end, 10);
        if (end == p || errno || b > UINT32_MAX)
            return FBR_INVALID;
    } else if (a != 0) {
        return FBR_INVALID;
    }
    if (*end || (a && !b))
        return FBR_INVALID;
    *n = (uint32_t)a;
    *secs = (uint32_t)b;
    return FBR_OK;
}
