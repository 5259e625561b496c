/*
 * ratelimit.h - the send limiter of the delivery engine: one per destination (HipChat's flood
 * control, --room-rate) and one per auth token (--token-rate).  The delivery engine asks it when
 * the next send may go out before moving a delivery to in_flight, records each send, and feeds it
 * the X-FloodControl-* / X-Ratelimit-* hints of every response.
 *
 * Guarantee: never more than n sends in any window of window_ms milliseconds.  It keeps a
 * sliding-window log (a ring of the last n send times): a send at time t is allowed iff fewer
 * than n sends happened in (t - window_ms, t], i.e. iff the n-th most recent send is at least
 * window_ms old.  So any n+1 consecutive sends span at least window_ms and no half-open window of
 * that length holds n+1 of them.  A classic refill-at-n/T bucket cannot promise this (it lets up
 * to 2n through in some windows).
 */
#ifndef FIREBRIDGE_RATELIMIT_H
#define FIREBRIDGE_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

/*
 * A rate: n sends per secs seconds, written "N/SECONDS" everywhere (flags, config keys, webhook
 * overrides, contrib's server).  {0, 0} (written "0" or "0/0") means no limit.  The one parser
 * and the one formatter are below; callers add their own bounds.
 */
struct fbr_rate {
    uint32_t n;
    uint32_t secs;
};

/*
 * Parses "N/SECONDS" (decimal digits only, each at most UINT32_MAX), "0" or "0/SECONDS" (no
 * limit).  "N" alone and "N/0" with N > 0 are refused.  Returns FBR_OK or FBR_INVALID (*out
 * untouched).
 */
int fbr_rate_parse(const char *s, struct fbr_rate *out);
/* Writes r as "N/SECONDS" into buf (len >= 24 always fits) and returns buf. */
const char *fbr_rate_format(struct fbr_rate r, char *buf, size_t len);

struct fbr_ratelimit {
    uint32_t n; /* 0 = unlimited */
    uint64_t window_ms;
    uint64_t *ring;          /* send times (monotonic ms), grown on demand up to n entries */
    uint32_t cap, len, head; /* head = index of the oldest send */
    uint64_t hold_until_ms;  /* no send before this time (server said remaining 0 / 429) */
};

/* n sends per window_ms; n == 0 or window_ms == 0 means no limit (only holds apply). */
void fbr_ratelimit_init(struct fbr_ratelimit *rl, uint32_t n, uint64_t window_ms);
void fbr_ratelimit_free(struct fbr_ratelimit *rl);
/* Changes the limit, keeping the recorded sends (the newest ones when shrinking). */
void fbr_ratelimit_set(struct fbr_ratelimit *rl, uint32_t n, uint64_t window_ms);
/* Returns the earliest time >= now at which one send is allowed (now when allowed now). */
uint64_t fbr_ratelimit_next(const struct fbr_ratelimit *rl, uint64_t now);
/* Records a send at time now; the caller checked fbr_ratelimit_next(rl, now) == now. */
void fbr_ratelimit_record(struct fbr_ratelimit *rl, uint64_t now);
/* Forbids sends before until_ms (monotonic); a later hold extends, an earlier one is ignored. */
void fbr_ratelimit_hold(struct fbr_ratelimit *rl, uint64_t until_ms);

/* fbr_rate_parse() for callers that keep n and secs apart.  Returns FBR_OK or FBR_INVALID. */
int fbr_ratelimit_parse(const char *s, uint32_t *n, uint32_t *secs);

#endif
