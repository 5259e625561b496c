/*
 * ratelimit.c - sliding-window send log with server-imposed holds; see ratelimit.h for the
 * guarantee and why it holds.  Used by the delivery engine before each attempt.
 */
#include "firebridge/ratelimit.h"

#include <inttypes.h>
#include <stdio.h>
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

/* One decimal number of at most UINT32_MAX: digits only.  Returns the end, or NULL. */
static const char *parse_u32(const char *s, uint32_t *out)
{
    uint64_t v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX)
            return NULL;
    }
    if (p == s)
        return NULL;
    *out = (uint32_t)v;
    return p;
}

int fbr_rate_parse(const char *s, struct fbr_rate *out)
{
    struct fbr_rate r = {0, 0};
    const char *p = s ? parse_u32(s, &r.n) : NULL;
    if (!p)
        return FBR_INVALID;
    if (*p == '/')
        p = parse_u32(p + 1, &r.secs);
    else if (r.n != 0)
        return FBR_INVALID; /* "N" without its window */
    if (!p || *p || (r.n && !r.secs))
        return FBR_INVALID;
    *out = r;
    return FBR_OK;
}

const char *fbr_rate_format(struct fbr_rate r, char *buf, size_t len)
{
    snprintf(buf, len, "%" PRIu32 "/%" PRIu32, r.n, r.secs);
    return buf;
}

int fbr_ratelimit_parse(const char *s, uint32_t *n, uint32_t *secs)
{
    struct fbr_rate r;
    if (fbr_rate_parse(s, &r) != FBR_OK)
        return FBR_INVALID;
    *n = r.n;
    *secs = r.secs;
    return FBR_OK;
}
