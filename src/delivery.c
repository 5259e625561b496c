/*
 * delivery.c - the delivery engine between the webhooks (fbr_outreq in) and the client (HTTP
 * attempts out); see delivery.h for the contract and the state machine.
 *
 * Layout: destinations (map key -> FIFO of deliveries) each with a room rate limiter and one wake
 * timer; token rate limiters shared across destinations (map origin+token -> limiter).  A limiter
 * logs the sends; the limit checked against that log is each delivery's own (its webhook's
 * override or the engine's), so one webhook's override never changes another's limit.  The
 * active deliveries of a destination (waiting_rate, in_flight, backing_off) are always a prefix
 * of its FIFO, at most per_destination_inflight long; dest_pump() walks that prefix, sends what
 * may go now, promotes queued deliveries into free slots and arms the wake timer for the earliest
 * pending wake-up.  Every state change goes through transition(), which also performs the
 * change's side effects (starting the HTTP attempt, writing the dead letter, freeing).  A
 * delivery is its bytes alone from the moment it is queued (URL, header block and body in one
 * allocation): it holds no event, webhook or render buffer.
 *
 * Forgetting: room ids and tokens come from the alerts, so destinations and token limiters are
 * not kept for ever.  One whose last delivery is gone goes to the tail of an idle list (two
 * pointer writes, no timer and no clock read of its own on the way); a sweep timer takes the
 * list from its head, oldest first, and frees each one that has been idle for the longest
 * window any limit of its kind has had (so the sends it recorded can no longer count against any
 * limit) and that has no server hold still running and is not listed as held up.  A new
 * delivery takes its destination or token off the list again.
 */
#include "firebridge/delivery.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include "firebridge/deadletter.h"
#include "firebridge/defaults.h"
#include "firebridge/log.h"
#include "firebridge/metrics.h"
#include "firebridge/ratelimit.h"
#include "firebridge/http.h"
#include "firebridge/strmap.h"
#include "firebridge/url.h"

#define ID_LEN 32
/* Server reset times (X-Ratelimit-Reset, X-FloodControl-Reset, Retry-After) further away than
 * this are taken as this: HipChat's windows are 60 s and 300 s, so a later reset is a broken or
 * hostile server, and believing it would stall a room (README, choices). */
#define MAX_HOLD_MS (300u * 1000u)
#define JITTER_429_MS 250
/* The idle sweep runs at most this often and frees at most SWEEP_BATCH of each kind per run
 * (the rest on the next loop iteration), so 100,000 rooms going at once never stall the loop. */
#define SWEEP_MIN_MS 1000u
#define SWEEP_BATCH 4096u

struct dest;

/* A destination or token limiter with nothing to send, on its kind's idle list (see above). */
struct idler {
    TAILQ_ENTRY(idler) link;
    uint64_t since; /* monotonic ms when it went idle; 0: not on the list */
};
TAILQ_HEAD(idlers, idler);

struct token_limit {
    struct fbr_ratelimit rl;
    size_t users; /* live deliveries that count against it */
    struct idler idle;
    size_t klen;
    char key[]; /* its key in the engine's map (authority, LF, token) */
};

struct delivery {
    TAILQ_ENTRY(delivery) link;
    struct dest *dest;
    struct token_limit *token;
    /* the limits this delivery waits on: its webhook's overrides, else the engine's */
    struct fbr_rate room_rate, token_rate;
    enum fbr_delivery_state state;
    char id[ID_LEN + 1];
    const char *method;
    /* One exact-size allocation: the URL, NUL, the header block, NUL, the body.  url, head and
     * body point into it. */
    char *store;
    char *url;
    size_t url_len;
    struct fbr_url_pos url_pos; /* the URL parsed once, as offsets: valid when the store moves */
    char *head; /* "Name: value\r\n" lines incl. Content-Type and X-Firebridge-Delivery */
    size_t head_len;
    /* What the client and the dead letter read as the body: body_one (a slice of store), or
     * the caller's render for a request that is never queued (dead_on_arrival). */
    const struct iovec *body_iov;
    size_t nbody;
    struct iovec body_one;
    unsigned attempts, failures;
    uint64_t created_mono, created_wall, first_attempt_wall, last_attempt_wall;
    uint64_t wake_ms;
    uint64_t seq; /* submission order across the engine (shutdown writes in this order) */
    uint64_t hook_word; /* kept for the transition hook's owner (the journal's record ref) */
    int restored;       /* came back from the journal: its creation is already recorded */
    char *reason; /* last reason, owned, NULL until the first transition that gives one */
    /* Credentials asked for right before each attempt (fbr_delivery_submit_auth): the provider
     * (one reference held), the value sent by the current attempt and the header block that
     * carries it (owned, NULL between attempts), and whether a 401 already renewed them. */
    const struct fbr_delivery_auth *auth;
    void *auth_arg;
    char *auth_key; /* the provider's key (owned): the journal records it */
    char *auth_value;
    char *auth_head;
    size_t auth_head_len;
    int auth_renewed;
    int auth_waiting; /* waiting_rate because the provider had nothing yet */
};

struct dest {
    struct fbr_delivery_engine *engine;
    char *key;
    size_t klen;
    struct idler idle;
    TAILQ_HEAD(delivery_queue, delivery) queue;
    unsigned active;
    struct fbr_ratelimit rl;
    struct event *timer;
    uint64_t timer_at; /* 0 when not armed */
    int rate_limited;
    int held_up; /* its next delivery is held (listed in the engine's held_dests) */
    /* Its current run of failed attempts, for the log (dest_failed, dest_recovered):
     * failing_since 0 when its last attempt did not fail. */
    uint64_t failing_since, failing_logged_at; /* monotonic ms */
    uint64_t failed, failed_unlogged; /* attempts failed in the run, and since the last line */
};

struct fbr_delivery_engine {
    struct event_base *base;
    struct fbr_client *client;
    struct fbr_delivery_opts opts;
    char *data_dir;
    char *dl_path;
    struct fbr_strmap dests;
    struct fbr_strmap tokens;
    /* Idle destinations and token limiters, oldest first, and how long one stays idle before it
     * is forgotten: the longest window any limit of its kind has had (then no recorded send
     * still counts), at least opts.idle_keep_ms. */
    struct idlers idle_dests, idle_tokens;
    uint64_t dest_idle_ms, token_idle_ms;
    struct event *sweep;
    uint64_t sweep_at; /* 0: not armed */
    struct fbr_delivery_metrics m;
    char id_prefix[17];
    uint64_t id_counter;
    fbr_delivery_transition_fn hook;
    void *hook_arg;
    struct {
        fbr_delivery_transition_fn fn;
        void *arg;
    } watch[FBR_DELIVERY_WATCH_MAX]; /* read-only observers after the hook */
    size_t nwatch;
    uint64_t seq_counter;
    int shut; /* fbr_delivery_shutdown() ran: no client any more, nothing is accepted */
    /* Holding (fbr_delivery_set_held): new deliveries past release_seq wait; the destinations
     * stopped at one are pumped again on release. */
    int hold;
    uint64_t release_seq;
    struct dest **held_dests;
    size_t nheld_dests, capheld_dests;
};

static const char *const state_names[] = {
#define FBR_X(name, text) text,
    FBR_DELIVERY_STATE_MAP(FBR_X)
#undef FBR_X
};

const char *fbr_delivery_state_name(enum fbr_delivery_state s)
{
    return (unsigned)s < FBR_DS_COUNT ? state_names[s] : "unknown";
}

static const char *const retry_names[] = {
#define FBR_X(name, text) text,
    FBR_RETRY_REASON_MAP(FBR_X)
#undef FBR_X
};

const uint64_t fbr_delivery_latency_bounds_ms[FBR_DELIVERY_LATENCY_BUCKETS - 1] = {
    10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 60000, 300000};

void fbr_delivery_opts_init(struct fbr_delivery_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->pool_size = FBR_DEFAULT_POOL_SIZE;
    o->pipeline = FBR_DEFAULT_PIPELINE;
    o->connect_timeout_ms = FBR_DEFAULT_CONNECT_TIMEOUT_MS;
    o->request_timeout_ms = FBR_DEFAULT_REQUEST_TIMEOUT_MS;
    o->room_rate = (struct fbr_rate){FBR_DEFAULT_ROOM_RATE_N, FBR_DEFAULT_ROOM_RATE_SECS};
    o->token_rate = (struct fbr_rate){FBR_DEFAULT_TOKEN_RATE_N, FBR_DEFAULT_TOKEN_RATE_SECS};
    o->retry_initial_ms = FBR_DEFAULT_RETRY_INITIAL_MS;
    o->retry_max_interval_ms = FBR_DEFAULT_RETRY_MAX_INTERVAL_MS;
    o->retry_max_age_s = FBR_DEFAULT_RETRY_MAX_AGE_S;
    o->max_pending = FBR_DEFAULT_MAX_PENDING;
    o->data_dir = ".";
    o->per_destination_inflight = 1;
    o->idle_keep_ms = FBR_DEFAULT_IDLE_KEEP_MS;
    o->failing_log_interval_ms = FBR_DEFAULT_FAILING_LOG_INTERVAL_MS;
}

uint64_t fbr_delivery_backoff_ms(uint64_t initial_ms, uint64_t max_ms, unsigned failures,
                                 uint64_t rnd)
{
    uint64_t cap = initial_ms;
    for (unsigned i = 1; i < failures && cap < max_ms; i++)
        cap *= 2;
    if (cap > max_ms)
        cap = max_ms;
    return rnd % (cap + 1);
}

static uint64_t rand64(void)
{
    uint64_t r;
    if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
        r = fbr_now_ms() * 6364136223846793005ull + 1442695040888963407ull;
    return r;
}

/* ---- the state machine ---- */

static int is_active(enum fbr_delivery_state s)
{
    return s == FBR_DS_WAITING_RATE || s == FBR_DS_IN_FLIGHT || s == FBR_DS_BACKING_OFF;
}

static int allowed(enum fbr_delivery_state from, enum fbr_delivery_state to)
{
    switch (from) {
    case FBR_DS_QUEUED:
        return to == FBR_DS_WAITING_RATE || to == FBR_DS_IN_FLIGHT || to == FBR_DS_DEAD ||
               to == FBR_DS_CANCELLED;
    case FBR_DS_WAITING_RATE:
        return to == FBR_DS_IN_FLIGHT || to == FBR_DS_DEAD;
    case FBR_DS_IN_FLIGHT:
        return to == FBR_DS_DELIVERED || to == FBR_DS_BACKING_OFF || to == FBR_DS_WAITING_RATE ||
               to == FBR_DS_DEAD;
    case FBR_DS_BACKING_OFF:
        return to == FBR_DS_WAITING_RATE || to == FBR_DS_IN_FLIGHT || to == FBR_DS_DEAD;
    default:
        return 0;
    }
}

static void start_attempt(struct delivery *dl);
static void go_idle(struct fbr_delivery_engine *e, struct idlers *list, struct idler *i,
                    uint64_t window_ms);
static void sweep_cb(evutil_socket_t fd, short what, void *arg);
static int write_dead_letter(struct fbr_delivery_engine *e, struct delivery *dl);
static void delivery_free(struct delivery *dl);
static char *put(char *p, const void *src, size_t n);

static void delivery_info(struct delivery *dl, struct fbr_delivery_info *info)
{
    *info = (struct fbr_delivery_info){
        .id = dl->id,
        .dest_key = dl->dest->key,
        .attempts = dl->attempts,
        .created_wall_ms = dl->created_wall,
        .reason = dl->reason ? dl->reason : "",
        .method = dl->method,
        .url = {dl->url, dl->url_len},
        .head = {dl->head, dl->head_len},
        .body = dl->body_iov,
        .nbody = dl->nbody,
        .seq = dl->seq,
        .room_rate = dl->room_rate,
        .token_rate = dl->token_rate,
        .restored = dl->restored,
        .hook_word = &dl->hook_word,
        .auth_key = dl->auth_key,
    };
}

static void notify(struct delivery *dl, enum fbr_delivery_state from, enum fbr_delivery_state to)
{
    struct fbr_delivery_engine *e = dl->dest->engine;
    if (!e->hook && !e->nwatch)
        return;
    struct fbr_delivery_info info;
    delivery_info(dl, &info);
    if (e->hook)
        e->hook(&info, from, to, e->hook_arg);
    for (size_t i = 0; i < e->nwatch; i++)
        e->watch[i].fn(&info, from, to, e->watch[i].arg);
}

/*
 * The one place a delivery changes state.  wake_ms (monotonic) is when a waiting_rate or
 * backing_off delivery is due; reason (may be NULL) is kept for logs and dead letters.  After a
 * move to delivered or dead the delivery is freed.
 */
static void transition(struct delivery *dl, enum fbr_delivery_state to, uint64_t wake_ms,
                       const char *reason)
{
    struct dest *d = dl->dest;
    struct fbr_delivery_engine *e = d->engine;
    enum fbr_delivery_state from = dl->state;
    if (!allowed(from, to)) {
        fbr_log(FBR_LOG_ERROR, dl->id, NULL, "bug: delivery transition %s -> %s",
                fbr_delivery_state_name(from), fbr_delivery_state_name(to));
        abort();
    }
    if (reason) {
        free(dl->reason);
        dl->reason = fbr_xstrdup(reason);
    }
    dl->state = to;
    e->m.in_state[from]--;
    if (is_active(to) || to == FBR_DS_QUEUED)
        e->m.in_state[to]++;
    if (!is_active(from) && is_active(to))
        d->active++;
    notify(dl, from, to);
    if (fbr_log_enabled(FBR_LOG_DEBUG))
        fbr_log(FBR_LOG_DEBUG, dl->id, NULL, "%s -> %s (%s)", fbr_delivery_state_name(from),
                fbr_delivery_state_name(to), dl->reason ? dl->reason : "");

    switch (to) {
    case FBR_DS_WAITING_RATE:
    case FBR_DS_BACKING_OFF:
        dl->wake_ms = wake_ms;
        break;
    case FBR_DS_IN_FLIGHT:
        start_attempt(dl);
        break;
    case FBR_DS_DELIVERED: {
        uint64_t lat = fbr_now_ms() - dl->created_mono;
        size_t b = 0;
        while (b < FBR_DELIVERY_LATENCY_BUCKETS - 1 && lat > fbr_delivery_latency_bounds_ms[b])
            b++;
        e->m.latency_buckets[b]++;
        e->m.latency_sum_ms += lat;
        e->m.latency_count++;
        e->m.delivered++;
        goto finished;
    }
    case FBR_DS_DEAD:
        write_dead_letter(e, dl);
        goto finished;
    case FBR_DS_CANCELLED:
        e->m.cancelled++;
        goto finished;
    default:
        break;
    }
    return;

finished:
    if (is_active(from))
        d->active--;
    e->m.pending--;
    TAILQ_REMOVE(&d->queue, dl, link);
    struct token_limit *tok = dl->token;
    delivery_free(dl);
    /* the last delivery of its destination or token: they may be forgotten later (never now:
     * the callers still use d) */
    if (tok && --tok->users == 0)
        go_idle(e, &e->idle_tokens, &tok->idle, e->token_idle_ms);
    if (TAILQ_EMPTY(&d->queue))
        go_idle(e, &e->idle_dests, &d->idle, e->dest_idle_ms);
}

/* ---- scheduling ---- */

static void dest_set_rate_limited(struct dest *d, int on)
{
    if (d->rate_limited == on)
        return;
    d->rate_limited = on;
    if (on)
        d->engine->m.destinations_rate_limited++;
    else
        d->engine->m.destinations_rate_limited--;
}

static uint64_t expiry_mono(const struct delivery *dl)
{
    return dl->created_mono + (uint64_t)dl->dest->engine->opts.retry_max_age_s * 1000u;
}

/*
 * When a delivery limited to r may be sent through rl: the limiter's ring records every send of
 * its destination (or token), whatever the limit of the delivery that made it, and holds at least
 * r.n of them (see need_capacity()), so a send is allowed iff the r.n-th most recent one is
 * r.secs old.  Server holds apply to every delivery.
 */
static uint64_t rate_next(const struct fbr_ratelimit *rl, struct fbr_rate r, uint64_t now)
{
    uint64_t t = now;
    if (rl->hold_until_ms > t)
        t = rl->hold_until_ms;
    if (r.n && r.secs && rl->len >= r.n) {
        uint64_t nth = rl->ring[(rl->head + rl->len - r.n) % rl->cap];
        if (nth + (uint64_t)r.secs * 1000u > t)
            t = nth + (uint64_t)r.secs * 1000u;
    }
    return t;
}

/* Makes rl keep at least r.n sends (never fewer than before: other deliveries may need them). */
static void need_capacity(struct fbr_ratelimit *rl, struct fbr_rate r)
{
    if (r.n && r.secs && r.n > rl->n)
        fbr_ratelimit_set(rl, r.n, (uint64_t)r.secs * 1000u);
}

static void drop_auth_attempt(struct delivery *dl)
{
    if (dl->auth_value)
        OPENSSL_cleanse(dl->auth_value, strlen(dl->auth_value));
    if (dl->auth_head)
        OPENSSL_cleanse(dl->auth_head, dl->auth_head_len);
    free(dl->auth_value);
    free(dl->auth_head);
    dl->auth_value = dl->auth_head = NULL;
    dl->auth_head_len = 0;
}

/*
 * Asks the delivery's credential provider for the Authorization value of the attempt about to
 * start and builds the attempt's header block.  FBR_OK: go; otherwise the delivery was moved
 * (waiting for the provider until its expiry, or dead with the provider's reason).
 */
static int take_auth(struct delivery *dl, uint64_t now)
{
    struct fbr_delivery_engine *e = dl->dest->engine;
    char value[FBR_DELIVERY_AUTH_MAX], why[256] = "";
    int rc = now >= expiry_mono(dl) ? FBR_ERROR
                                    : dl->auth->get(dl->auth_arg, value, sizeof(value), why,
                                                    sizeof(why));
    dl->auth_waiting = rc == FBR_AGAIN;
    if (rc == FBR_AGAIN) {
        if (dl->state != FBR_DS_WAITING_RATE)
            transition(dl, FBR_DS_WAITING_RATE, expiry_mono(dl), "waiting for credentials");
        else
            dl->wake_ms = expiry_mono(dl);
        return FBR_AGAIN;
    }
    if (rc != FBR_OK) {
        if (now >= expiry_mono(dl)) {
            e->m.dead_expired++;
            transition(dl, FBR_DS_DEAD, 0, "expired waiting for credentials (retry_max_age)");
        } else {
            e->m.dead_permanent++;
            transition(dl, FBR_DS_DEAD, 0, why[0] ? why : "no credentials");
        }
        return FBR_ERROR;
    }
    drop_auth_attempt(dl);
    static const char an[] = "Authorization: ";
    size_t vlen = strnlen(value, sizeof(value) - 1);
    dl->auth_value = fbr_xstrndup(value, vlen);
    OPENSSL_cleanse(value, sizeof(value));
    dl->auth_head_len = dl->head_len + sizeof(an) - 1 + vlen + 2;
    dl->auth_head = fbr_xmalloc(dl->auth_head_len + 1);
    char *p = put(dl->auth_head, dl->head, dl->head_len);
    p = put(p, an, sizeof(an) - 1);
    p = put(p, dl->auth_value, vlen);
    p = put(p, "\r\n", 2);
    *p = '\0';
    return FBR_OK;
}

/* A queued, waiting or backed-off delivery whose time has come: send it or wait for the limit. */
static void try_send(struct delivery *dl, uint64_t now)
{
    struct dest *d = dl->dest;
    uint64_t t = rate_next(&d->rl, dl->room_rate, now);
    if (dl->token) {
        uint64_t t2 = rate_next(&dl->token->rl, dl->token_rate, now);
        if (t2 > t)
            t = t2;
    }
    if (t > now) {
        /* Dead only once the delivery itself is --retry-max-age old: until then it waits, at
         * most until that age, however far away the limit says the next send is. */
        if (now >= expiry_mono(dl)) {
            transition(dl, FBR_DS_DEAD, 0, "expired waiting for a rate limit (retry_max_age)");
            d->engine->m.dead_expired++;
            return;
        }
        if (t > expiry_mono(dl))
            t = expiry_mono(dl);
        if (dl->state != FBR_DS_WAITING_RATE)
            transition(dl, FBR_DS_WAITING_RATE, t, "rate limit");
        else
            dl->wake_ms = t;
        return;
    }
    if (dl->auth && take_auth(dl, now) != FBR_OK)
        return;
    /* Record the send after the transition, at a fresh time: the recorded time is then never
     * earlier than the moment the attempt really started, so the window guarantee holds for
     * real send times and not only for the time this pump began. */
    struct token_limit *tok = dl->token;
    transition(dl, FBR_DS_IN_FLIGHT, 0, NULL);
    uint64_t sent = fbr_now_ms();
    fbr_ratelimit_record(&d->rl, sent);
    if (tok)
        fbr_ratelimit_record(&tok->rl, sent);
}

/* Whether dl waits for fbr_delivery_release() (its record is not committed yet). */
static int is_held(const struct fbr_delivery_engine *e, const struct delivery *dl)
{
    return e->hold && !dl->restored && dl->seq > e->release_seq;
}

/* d stopped at a held delivery: it is pumped again on the next release. */
static void hold_up(struct dest *d)
{
    struct fbr_delivery_engine *e = d->engine;
    if (d->held_up)
        return;
    if (e->nheld_dests == e->capheld_dests) {
        e->capheld_dests = e->capheld_dests ? e->capheld_dests * 2 : 16;
        e->held_dests = fbr_xrealloc(e->held_dests, e->capheld_dests * sizeof(*e->held_dests));
    }
    e->held_dests[e->nheld_dests++] = d;
    d->held_up = 1;
}

static void dest_pump(struct dest *d)
{
    struct fbr_delivery_engine *e = d->engine;
    uint64_t now = fbr_now_ms();
    uint64_t wake = UINT64_MAX;
    int limited = 0;
    struct delivery *dl, *next;
    for (dl = TAILQ_FIRST(&d->queue); dl; dl = next) {
        next = TAILQ_NEXT(dl, link); /* try_send() may free dl, never next */
        if (dl->state == FBR_DS_QUEUED) {
            if (is_held(e, dl)) { /* it and everything after it wait for the journal */
                hold_up(d);
                break;
            }
            if (d->active >= e->opts.per_destination_inflight)
                break;
            try_send(dl, now);
        } else if (dl->state != FBR_DS_IN_FLIGHT && dl->wake_ms <= now) {
            try_send(dl, now);
        }
    }
    TAILQ_FOREACH(dl, &d->queue, link)
    {
        if (!is_active(dl->state))
            break;
        if (dl->state == FBR_DS_WAITING_RATE)
            limited = 1;
        if (dl->state != FBR_DS_IN_FLIGHT && dl->wake_ms < wake)
            wake = dl->wake_ms;
    }
    dest_set_rate_limited(d, limited);
    if (wake == UINT64_MAX) {
        if (d->timer_at) {
            evtimer_del(d->timer);
            d->timer_at = 0;
        }
        return;
    }
    if (d->timer_at != wake) {
        uint64_t ms = wake > now ? wake - now : 0;
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
        evtimer_add(d->timer, &tv);
        d->timer_at = wake;
    }
}

static void dest_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dest *d = arg;
    (void)fd, (void)what;
    d->timer_at = 0;
    dest_pump(d);
}

/* ---- attempts and outcomes ---- */

static int64_t wall_to_mono(int64_t wall_ms, uint64_t now_mono, uint64_t now_wall)
{
    int64_t delta = wall_ms - (int64_t)now_wall;
    if (delta < 0)
        delta = 0;
    if (delta > (int64_t)MAX_HOLD_MS)
        delta = MAX_HOLD_MS;
    return (int64_t)now_mono + delta;
}

static void retry_later(struct delivery *dl, enum fbr_retry_reason why, const char *reason)
{
    struct fbr_delivery_engine *e = dl->dest->engine;
    const struct fbr_delivery_opts *o = &e->opts;
    uint64_t now = fbr_now_ms();
    dl->failures++;
    uint64_t delay = fbr_delivery_backoff_ms(o->retry_initial_ms, o->retry_max_interval_ms,
                                             dl->failures, rand64());
    if (now + delay > expiry_mono(dl)) {
        char r[300];
        snprintf(r, sizeof(r), "expired (retry_max_age) after: %s", reason);
        e->m.dead_expired++;
        transition(dl, FBR_DS_DEAD, 0, r);
        return;
    }
    e->m.retries[why]++;
    transition(dl, FBR_DS_BACKING_OFF, now + delay, reason);
}

/* "http <status>" into buf (at least 16 bytes): the reason of every answered attempt, without
 * a printf per delivery. */
static void http_reason(char *buf, int status)
{
    memcpy(buf, "http ", 5);
    fbr_fmt_u64(buf + 5, status > 0 ? (uint64_t)status : 0); /* and the NUL */
}

/*
 * An attempt of dl to d failed (reason): the first failure of a run is logged at warn at once,
 * later ones at most once per failing_log_interval_ms, with how many failed since the last line,
 * so that a failing room with thousands of deliveries cannot flood the log.  Every line passes
 * log.c's masker (fbr_log_mask_url): the key has no query string, and a token anywhere in it or
 * in the reason is masked there.
 */
static void dest_failed(struct dest *d, const struct delivery *dl, const char *reason)
{
    uint64_t now = fbr_now_ms();
    d->failed++;
    d->failed_unlogged++;
    if (!d->failing_since) {
        d->failing_since = now;
        fbr_log(FBR_LOG_WARN, dl->id, NULL,
                "destination %s is failing: attempt %u of this delivery failed: %s (further "
                "failures logged at most every %u s until it delivers again)",
                d->key, dl->attempts, reason, (d->engine->opts.failing_log_interval_ms + 999) / 1000);
    } else if (now - d->failing_logged_at >= d->engine->opts.failing_log_interval_ms) {
        fbr_log(FBR_LOG_WARN, dl->id, NULL,
                "destination %s still failing: %" PRIu64 " failed attempt(s) since the last line, "
                "%" PRIu64 " in %" PRIu64 " s; the last, attempt %u of this delivery: %s",
                d->key, d->failed_unlogged, d->failed, (now - d->failing_since) / 1000,
                dl->attempts, reason);
    } else {
        return;
    }
    d->failing_logged_at = now;
    d->failed_unlogged = 0;
}

/* An attempt to d succeeded after a run of failures: one line, and the run is over. */
static void dest_recovered(struct dest *d, const struct delivery *dl)
{
    fbr_log(FBR_LOG_INFO, dl->id, NULL,
            "destination %s recovered: delivered again after %" PRIu64 " failed attempt(s) in %"
            PRIu64 " s",
            d->key, d->failed, (fbr_now_ms() - d->failing_since) / 1000);
    d->failing_since = d->failing_logged_at = 0;
    d->failed = d->failed_unlogged = 0;
}

static void on_response(const struct fbr_client_resp *r, void *arg)
{
    struct delivery *dl = arg;
    struct dest *d = dl->dest;
    struct fbr_delivery_engine *e = d->engine;
    uint64_t now = fbr_now_ms(), now_wall = fbr_wall_ms();
    char reason[300];
    if (r->status != 401)
        drop_auth_attempt(dl);

    /* the server's view of the limits, from every response */
    if (r->flood_remaining == 0 && r->flood_reset > 0)
        fbr_ratelimit_hold(&d->rl, (uint64_t)wall_to_mono(r->flood_reset * 1000, now, now_wall));
    if (r->ratelimit_remaining == 0 && r->ratelimit_reset > 0)
        fbr_ratelimit_hold(dl->token ? &dl->token->rl : &d->rl,
                           (uint64_t)wall_to_mono(r->ratelimit_reset * 1000, now, now_wall));

    if (r->err != FBR_CLIENT_ERR_NONE) {
        static const enum fbr_retry_reason map[FBR_CLIENT_ERR_COUNT] = {
            [FBR_CLIENT_ERR_NONE] = FBR_RETRY_IO,           [FBR_CLIENT_ERR_DNS] = FBR_RETRY_DNS,
            [FBR_CLIENT_ERR_CONNECT] = FBR_RETRY_CONNECT,   [FBR_CLIENT_ERR_TLS] = FBR_RETRY_TLS,
            [FBR_CLIENT_ERR_TIMEOUT] = FBR_RETRY_TIMEOUT,   [FBR_CLIENT_ERR_EOF] = FBR_RETRY_EOF,
            [FBR_CLIENT_ERR_PROTOCOL] = FBR_RETRY_PROTOCOL, [FBR_CLIENT_ERR_IO] = FBR_RETRY_IO,
        };
        fbr_log(FBR_LOG_DEBUG, dl->id, NULL, "attempt %u failed: %s", dl->attempts, r->reason);
        dest_failed(d, dl, r->reason);
        retry_later(dl, map[r->err], r->reason);
    } else if (r->status >= 200 && r->status < 300) {
        if (d->failing_since)
            dest_recovered(d, dl);
        http_reason(reason, r->status);
        transition(dl, FBR_DS_DELIVERED, 0, reason);
    } else if (r->status == 429) {
        /* A window's Reset counts when that window is the one that ran out (Remaining 0) or
         * its Remaining is not given: every response carries both windows, and the one with
         * requests left (say the 5-minute token window behind a flood-control 429) must not
         * hold the room for minutes. */
        int64_t until = -1;
        if (r->retry_after_wall_ms > until)
            until = r->retry_after_wall_ms;
        if (r->flood_reset > 0 && r->flood_remaining <= 0 && r->flood_reset * 1000 > until)
            until = r->flood_reset * 1000;
        if (r->ratelimit_reset > 0 && r->ratelimit_remaining <= 0 &&
            r->ratelimit_reset * 1000 > until)
            until = r->ratelimit_reset * 1000;
        if (until < 0)
            until = (int64_t)now_wall + e->opts.retry_initial_ms * 2;
        uint64_t at = (uint64_t)wall_to_mono(until, now, now_wall) + rand64() % (JITTER_429_MS + 1);
        /* hold the whole room (and the token when the token limit is what ran out) */
        fbr_ratelimit_hold(&d->rl, at);
        if (dl->token && r->ratelimit_remaining == 0)
            fbr_ratelimit_hold(&dl->token->rl, at);
        e->m.retries[FBR_RETRY_HTTP_429]++;
        if (now >= expiry_mono(dl)) {
            e->m.dead_expired++;
            transition(dl, FBR_DS_DEAD, 0, "expired (retry_max_age) waiting out a 429");
        } else {
            if (at > expiry_mono(dl))
                at = expiry_mono(dl);
            snprintf(reason, sizeof(reason), "http 429, retrying in %" PRIu64 " ms", at - now);
            transition(dl, FBR_DS_WAITING_RATE, at, reason);
        }
    } else if (r->status == 401 && dl->auth && !dl->auth_renewed) {
        /* The credentials were refused (an expired or revoked token): the provider drops them
         * and gets new ones; this delivery waits for them and tries once more. */
        dl->auth_renewed = 1;
        dl->auth->rejected(dl->auth_arg, dl->auth_value ? dl->auth_value : "");
        drop_auth_attempt(dl);
        transition(dl, FBR_DS_WAITING_RATE, now, "http 401: renewing the credentials");
    } else if (r->status >= 500 || r->status == 408) {
        http_reason(reason, r->status);
        dest_failed(d, dl, reason);
        retry_later(dl, r->status == 408 ? FBR_RETRY_HTTP_408 : FBR_RETRY_HTTP_5XX, reason);
    } else {
        snprintf(reason, sizeof(reason), "http %d%s%.*s", r->status, r->body_len ? ": " : "",
                 (int)(r->body_len < 200 ? r->body_len : 200), r->body);
        dest_failed(d, dl, reason);
        e->m.dead_permanent++;
        transition(dl, FBR_DS_DEAD, 0, reason);
    }
    dest_pump(d);
}

static void start_attempt(struct delivery *dl)
{
    struct fbr_delivery_engine *e = dl->dest->engine;
    uint64_t now_wall = fbr_wall_ms();
    dl->attempts++;
    e->m.attempts++;
    if (!dl->first_attempt_wall)
        dl->first_attempt_wall = now_wall;
    dl->last_attempt_wall = now_wall;
    /* the URL was parsed when the delivery was made; its parts are taken over the delivery's
     * own copy of the bytes */
    struct fbr_url u;
    int parsed = fbr_url_pos_load(&dl->url_pos, dl->url, dl->url_len, &u) == FBR_OK;
    struct fbr_client_req req = {
        .method = dl->method,
        .url = dl->url,
        .url_len = dl->url_len,
        .parsed = parsed ? &u : NULL,
        .head = dl->auth_head ? dl->auth_head : dl->head,
        .head_len = dl->auth_head ? dl->auth_head_len : dl->head_len,
        .body = dl->body_iov,
        .nbody = dl->nbody,
        .log_id = dl->id,
    };
    /* The client parses with the same rules as submit() did, so it accepts the URL; should it
     * refuse anyway, the delivery dies with the reason rather than the daemon. */
    if (fbr_client_request(e->client, &req, on_response, dl) != FBR_OK) {
        e->m.dead_permanent++;
        transition(dl, FBR_DS_DEAD, 0, "the HTTP client refused the URL");
    }
}

/* ---- submit ---- */

/* Builds the destination key into buf (see delivery.h). */
static size_t dest_key(const struct fbr_url *p, char *buf, size_t cap)
{
    const struct fbr_slice parts[] = {p->scheme, {"://", 3}, p->authority, p->path};
    return fbr_join(buf, cap, parts, FBR_ARRAY_LEN(parts));
}

/* Finds the auth token (auth_token query parameter), or NULL. */
static struct fbr_slice query_token(struct fbr_slice q)
{
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) > 11 && strncmp(p, "auth_token=", 11) == 0)
            return (struct fbr_slice){p + 11, (size_t)(e - p - 11)};
        p = e + 1;
    }
    return (struct fbr_slice){NULL, 0};
}

/* The destination of key, taken off the idle list, or a new one; a delivery goes on it now. */
static struct dest *get_dest(struct fbr_delivery_engine *e, const char *key, size_t klen)
{
    struct dest *d = fbr_strmap_get(&e->dests, key, klen);
    if (d) {
        if (d->idle.since) {
            TAILQ_REMOVE(&e->idle_dests, &d->idle, link);
            d->idle.since = 0;
        }
        return d;
    }
    d = fbr_xcalloc(1, sizeof(*d));
    d->engine = e;
    d->key = fbr_xstrndup(key, klen);
    d->klen = klen;
    TAILQ_INIT(&d->queue);
    fbr_ratelimit_init(&d->rl, e->opts.room_rate.n, (uint64_t)e->opts.room_rate.secs * 1000u);
    d->timer = evtimer_new(e->base, dest_timer_cb, d);
    fbr_strmap_put(&e->dests, key, klen, d);
    e->m.destinations++;
    return d;
}

/* The limiter of token at authority, taken off the idle list, or a new one; the caller counts
 * its delivery in users. */
static struct token_limit *get_token(struct fbr_delivery_engine *e, struct fbr_slice authority,
                                     struct fbr_slice token)
{
    size_t klen = authority.len + 1 + token.len;
    char buf[256], *key = klen <= sizeof(buf) ? buf : fbr_xmalloc(klen);
    memcpy(key, authority.ptr, authority.len);
    key[authority.len] = '\n';
    memcpy(key + authority.len + 1, token.ptr, token.len);
    struct token_limit *t = fbr_strmap_get(&e->tokens, key, klen);
    if (t && t->idle.since) {
        TAILQ_REMOVE(&e->idle_tokens, &t->idle, link);
        t->idle.since = 0;
    } else if (!t) {
        t = fbr_xcalloc(1, sizeof(*t) + klen);
        fbr_ratelimit_init(&t->rl, e->opts.token_rate.n, (uint64_t)e->opts.token_rate.secs * 1000u);
        memcpy(t->key, key, klen);
        t->klen = klen;
        fbr_strmap_put(&e->tokens, key, klen, t);
        e->m.token_limiters++;
    }
    if (key != buf)
        free(key);
    return t;
}

/* Whether a rendered header value can go on the wire: no CR, LF or NUL (the template engine
 * refuses these already; never let one through). */
static int header_value_ok(const struct fbr_render *r)
{
    for (size_t i = 0; i < r->niov; i++) {
        const char *p = r->iov[i].iov_base;
        size_t n = r->iov[i].iov_len;
        if (memchr(p, '\r', n) || memchr(p, '\n', n) || memchr(p, '\0', n))
            return 0;
    }
    return 1;
}

static char *put(char *p, const void *src, size_t n)
{
    memcpy(p, src, n);
    return p + n;
}

/*
 * A request whose URL cannot be sent (url.h's rules): it is never queued but goes to the
 * dead-letter file at once, with the parser's reason, so nothing accepted is lost silently.  The
 * body is read from o's render, which stays the caller's.
 */
/* Writes a request that will never be queued to the dead-letter file, with reason. */
static void dead_on_arrival(struct fbr_delivery_engine *e, struct delivery *dl,
                            const struct fbr_outreq *o, const char *reason)
{
    dl->reason = fbr_xstrdup(reason);
    dl->state = FBR_DS_DEAD;
    dl->body_iov = o->body.iov;
    dl->nbody = o->body.niov;
    if (!dl->created_wall)
        dl->created_wall = fbr_wall_ms();
    e->m.dead_permanent++;
    write_dead_letter(e, dl);
    free(dl->store);
    free(dl->reason);
    free(dl);
}

static void set_limits(struct fbr_delivery_engine *e, struct delivery *dl, struct dest *d,
                       const struct fbr_webhook *wh, const struct fbr_delivery_queue_opts *qo,
                       struct fbr_slice authority, struct fbr_slice token);
static void enqueue(struct fbr_delivery_engine *e, struct delivery *dl,
                    const struct fbr_delivery_queue_opts *qo);

int fbr_delivery_queue(struct fbr_delivery_engine *e, struct fbr_outreq *o,
                       const struct fbr_delivery_queue_opts *qo)
{
    static const struct fbr_delivery_queue_opts defaults;
    if (!qo)
        qo = &defaults;
    const char *id_in = qo->id;
    uint64_t created_wall = qo->created_wall_ms;
    if (e->shut) {
        e->m.rejected++;
        return FBR_LIMIT;
    }
    int full = !qo->over_limit && e->m.pending >= e->opts.max_pending;
    if (full && !qo->dead_letter_if_full) {
        e->m.rejected++;
        return FBR_LIMIT;
    }
    char id[ID_LEN + 1];
    if (id_in) {
        snprintf(id, sizeof(id), "%s", id_in);
    } else {
        /* the prefix and the counter as 16 hex digits ("%s%016" PRIx64), without a printf */
        size_t pl = strlen(e->id_prefix);
        uint64_t n = e->id_counter + 1;
        unsigned char be[8];
        for (int k = 7; k >= 0; k--, n >>= 8)
            be[k] = (unsigned char)(n & 0xff);
        memcpy(id, e->id_prefix, pl);
        fbr_fmt_hex(id + pl, be, sizeof(be));
    }
    size_t id_len = strlen(id);

    /* Size the one allocation: URL, NUL, header block (the webhook's headers, Content-Type, the
     * delivery id), NUL, body.  The body is copied even for a delivery that starts at once:
     * sending its render's slices instead would keep the event's JSON alive for a round trip,
     * and the allocator then hands those blocks out again cold (bench/README.md). */
    static const char xid[] = "X-Firebridge-Delivery: ", ctn[] = "Content-Type: ";
    size_t url_len = o->url.total, head_len = 0;
    for (size_t i = 0; i < o->nheaders; i++)
        if (header_value_ok(&o->headers[i]))
            head_len += strlen(o->header_names[i]) + 2 + o->headers[i].total + 2;
    int has_ct = o->content_type && o->content_type[0];
    if (has_ct)
        head_len += sizeof(ctn) - 1 + strlen(o->content_type) + 2;
    head_len += sizeof(xid) - 1 + id_len + 2;
    char *store = fbr_xmalloc(url_len + 1 + head_len + 1 + o->body.total);
    fbr_render_copy(&o->url, store);
    store[url_len] = '\0';
    /* the webhook's parse of these bytes when it made one, else the parse is made here */
    struct fbr_url up;
    const char *why = NULL;
    int url_ok = fbr_url_pos_load(&o->url_pos, store, url_len, &up) == FBR_OK ||
                 fbr_url_parse(store, url_len, &up, &why) == FBR_OK;
    struct delivery *dl = fbr_xcalloc(1, sizeof(*dl));
    if (!id_in)
        e->id_counter++;
    memcpy(dl->id, id, id_len + 1);
    dl->store = store;
    dl->url = store;
    dl->url_len = url_len;
    if (url_ok)
        fbr_url_pos_keep(&up, store, url_len, &dl->url_pos);
    dl->head = store + url_len + 1;
    dl->head_len = head_len;
    const char *mname = fbr_http_method_name(o->method);
    dl->method = mname ? mname : "POST";
    dl->created_wall = created_wall;

    struct fbr_slice token = query_token(up.query), auth = {NULL, 0};
    char *p = dl->head;
    for (size_t i = 0; i < o->nheaders; i++) {
        if (!header_value_ok(&o->headers[i]))
            continue;
        p = put(p, o->header_names[i], strlen(o->header_names[i]));
        p = put(p, ": ", 2);
        if (strcasecmp(o->header_names[i], "authorization") == 0)
            auth = (struct fbr_slice){p, o->headers[i].total};
        fbr_render_copy(&o->headers[i], p);
        p = put(p + o->headers[i].total, "\r\n", 2);
    }
    if (has_ct) {
        p = put(p, ctn, sizeof(ctn) - 1);
        p = put(p, o->content_type, strlen(o->content_type));
        p = put(p, "\r\n", 2);
    }
    p = put(p, xid, sizeof(xid) - 1);
    p = put(p, id, id_len);
    p = put(p, "\r\n", 2);
    *p = '\0';
    if (!url_ok) {
        char reason[300];
        snprintf(reason, sizeof(reason), "unsendable URL: %s", why);
        dead_on_arrival(e, dl, o, reason);
        return FBR_INVALID;
    }
    if (full) {
        char reason[160];
        snprintf(reason, sizeof(reason),
                 "the delivery queue was full (%zu pending, --max-pending) when it was made",
                 (size_t)e->m.pending);
        e->m.rejected++;
        dead_on_arrival(e, dl, o, reason);
        return FBR_LIMIT;
    }

    char key[1024];
    size_t klen;
    if (o->rate_key.total) {
        klen = o->rate_key.total < sizeof(key) - 1 ? o->rate_key.total : sizeof(key) - 1;
        size_t pos = 0;
        for (size_t i = 0; i < o->rate_key.niov && pos < klen; i++) {
            size_t k = o->rate_key.iov[i].iov_len;
            if (k > klen - pos)
                k = klen - pos;
            memcpy(key + pos, o->rate_key.iov[i].iov_base, k);
            pos += k;
        }
    } else {
        klen = dest_key(&up, key, sizeof(key));
    }
    struct dest *d = get_dest(e, key, klen);
    if (!token.len && auth.len)
        token = auth;
    set_limits(e, dl, d, o->webhook, qo, up.authority, token);

    char *body = dl->head + head_len + 1;
    fbr_render_copy(&o->body, body);
    dl->body_one = (struct iovec){body, o->body.total};
    dl->body_iov = &dl->body_one;
    dl->nbody = 1;
    fbr_outreq_release(o);
    enqueue(e, dl, qo);
    return FBR_OK;
}

/* The limits and credentials of a delivery being queued on d: its webhook's overrides (else
 * the saved ones, else the engine's), the destination's room limit, and the token limit of
 * token (an auth_token parameter or Authorization header) or of the provider's key. */
static void set_limits(struct fbr_delivery_engine *e, struct delivery *dl, struct dest *d,
                       const struct fbr_webhook *wh, const struct fbr_delivery_queue_opts *qo,
                       struct fbr_slice authority, struct fbr_slice token)
{
    /* A webhook's overrides are its own deliveries' limits: they count every send to the
     * destination (or with the token), but never change the limit of another webhook's. */
    dl->dest = d;
    dl->room_rate = wh && wh->room_rate.n ? wh->room_rate : e->opts.room_rate;
    dl->token_rate = wh && wh->token_rate.n ? wh->token_rate : e->opts.token_rate;
    const struct fbr_delivery_saved *saved = qo->saved;
    if (saved && saved->room_rate.n)
        dl->room_rate = saved->room_rate;
    if (saved && saved->token_rate.n)
        dl->token_rate = saved->token_rate;
    /* the longest windows so far: how long an idle limiter's sends may still count */
    if ((uint64_t)dl->room_rate.secs * 1000u > e->dest_idle_ms)
        e->dest_idle_ms = (uint64_t)dl->room_rate.secs * 1000u;
    if ((uint64_t)dl->token_rate.secs * 1000u > e->token_idle_ms)
        e->token_idle_ms = (uint64_t)dl->token_rate.secs * 1000u;
    need_capacity(&d->rl, dl->room_rate);
    const struct fbr_delivery_auth_ref *aref = qo->auth;
    if (aref) {
        /* the token changes on renewal: the provider names the identity it belongs to */
        token = fbr_slice_from(aref->key);
        dl->auth = aref->ops;
        dl->auth_arg = aref->arg;
        dl->auth_key = fbr_xstrdup(aref->key ? aref->key : "");
        aref->ops->ref(aref->arg);
    }
    if (token.len && dl->token_rate.n) {
        dl->token = get_token(e, authority, token);
        dl->token->users++;
        need_capacity(&dl->token->rl, dl->token_rate);
    }
}

/* Puts a built delivery (dest, limits and bytes set) at the tail of its destination's queue,
 * reports its creation and lets the destination send. */
static void enqueue(struct fbr_delivery_engine *e, struct delivery *dl,
                    const struct fbr_delivery_queue_opts *qo)
{
    struct dest *d = dl->dest;
    const struct fbr_delivery_saved *saved = qo->saved;
    uint64_t created_wall = qo->created_wall_ms;
    dl->state = FBR_DS_QUEUED;
    dl->created_mono = fbr_now_ms();
    dl->created_wall = created_wall ? created_wall : fbr_wall_ms();
    dl->seq = ++e->seq_counter;
    if (saved) { /* its age counts from its first acceptance, before the restart */
        uint64_t now_wall = fbr_wall_ms();
        uint64_t age = now_wall > dl->created_wall ? now_wall - dl->created_wall : 0;
        dl->created_mono = dl->created_mono > age ? dl->created_mono - age : 0;
        dl->attempts = saved->attempts;
        dl->restored = 1;
        if (saved->seq) { /* keep the journal's order: later submissions sort after it */
            dl->seq = saved->seq;
            if (saved->seq > e->seq_counter)
                e->seq_counter = saved->seq;
        }
        dl->hook_word = saved->hook_word;
    }
    TAILQ_INSERT_TAIL(&d->queue, dl, link);
    e->m.pending++;
    e->m.submitted++;
    e->m.in_state[FBR_DS_QUEUED]++;
    notify(dl, FBR_DS_QUEUED, FBR_DS_QUEUED); /* creation: reported as queued -> queued */
    if (qo->id_out)
        memcpy(qo->id_out, dl->id, sizeof(dl->id));
    dest_pump(d);
}

void fbr_delivery_head_each(const char *head, size_t len, fbr_delivery_header_fn fn, void *arg)
{
    const char *p = head, *end = head + len;
    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol)
            break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            size_t nlen = (size_t)(colon - p);
            const char *v = colon + 2 <= eol ? colon + 2 : eol;
            if (!(nlen == 21 && strncasecmp(p, "X-Firebridge-Delivery", 21) == 0))
                fn(p, nlen, v, (size_t)(eol - v),
                   nlen == 12 && strncasecmp(p, "Content-Type", 12) == 0, arg);
        }
        p = eol + 2;
    }
}

static void header_to_outreq(const char *name, size_t nlen, const char *v, size_t vlen, int is_ct,
                             void *arg)
{
    struct fbr_outreq *o = arg;
    if (is_ct) {
        free(o->content_type);
        o->content_type = fbr_xstrndup(v, vlen);
        return;
    }
    o->header_names = fbr_xrealloc(o->header_names, (o->nheaders + 1) * sizeof(char *));
    o->headers = fbr_xrealloc(o->headers, (o->nheaders + 1) * sizeof(*o->headers));
    o->header_names[o->nheaders] = fbr_xstrndup(name, nlen);
    fbr_render_init(&o->headers[o->nheaders]);
    fbr_render_set_copy(&o->headers[o->nheaders], v, vlen);
    o->nheaders++;
}

/* Builds an outreq owning copies of a saved delivery: the header block is split back into
 * headers (Content-Type apart; X-Firebridge-Delivery is added again from the id). */
static void outreq_from_saved(const struct fbr_delivery_saved *s, struct fbr_outreq *o)
{
    fbr_outreq_init(o);
    o->method = fbr_http_method_parse(s->method, strlen(s->method), 0);
    fbr_render_set_copy(&o->url, s->url.ptr, s->url.len);
    fbr_render_set_copy(&o->body, s->body.ptr, s->body.len);
    fbr_render_set_copy(&o->rate_key, s->dest_key.ptr, s->dest_key.len);
    fbr_delivery_head_each(s->head.ptr, s->head.len, header_to_outreq, o);
}

static void find_authorization(const char *name, size_t nlen, const char *v, size_t vlen,
                               int is_ct, void *arg)
{
    struct fbr_slice *auth = arg;
    (void)is_ct;
    if (nlen == 13 && strncasecmp(name, "Authorization", 13) == 0)
        *auth = (struct fbr_slice){v, vlen};
}

/*
 * A restored delivery is built straight from the saved bytes, as a queued one is: one exact-size
 * allocation holding the URL, the header block (already the wire form, with Content-Type and
 * this id) and the body, no outreq and no render buffers in between (100,000 of them come back
 * at a start).  A URL that no longer parses takes fbr_delivery_queue()'s way, which writes it
 * to the dead-letter file with the reason.
 */
int fbr_delivery_restore(struct fbr_delivery_engine *e, const struct fbr_delivery_saved *s)
{
    unsigned method = fbr_http_method_parse(s->method, strlen(s->method), 0);
    if (!method || !s->id || !*s->id || strlen(s->id) > ID_LEN)
        return FBR_INVALID;
    struct fbr_delivery_queue_opts qo = {.id = s->id, .created_wall_ms = s->created_wall_ms,
                                         .over_limit = 1, .saved = s, .auth = s->auth};
    if (e->shut) {
        e->m.rejected++;
        return FBR_LIMIT;
    }
    size_t off = s->url.len + 1 + s->head.len + 1;
    char *store = fbr_xmalloc(off + s->body.len + 1);
    memcpy(store, s->url.ptr, s->url.len);
    store[s->url.len] = '\0';
    struct fbr_url up;
    const char *why = NULL;
    if (fbr_url_parse(store, s->url.len, &up, &why) != FBR_OK) {
        free(store);
        struct fbr_outreq o;
        outreq_from_saved(s, &o);
        int rc = fbr_delivery_queue(e, &o, &qo);
        fbr_outreq_free(&o);
        return rc;
    }
    memcpy(store + s->url.len + 1, s->head.ptr, s->head.len);
    store[off - 1] = '\0';
    memcpy(store + off, s->body.ptr, s->body.len);
    store[off + s->body.len] = '\0';
    struct delivery *dl = fbr_xcalloc(1, sizeof(*dl));
    snprintf(dl->id, sizeof(dl->id), "%s", s->id);
    dl->store = dl->url = store;
    dl->url_len = s->url.len;
    fbr_url_pos_keep(&up, store, s->url.len, &dl->url_pos);
    dl->head = store + s->url.len + 1;
    dl->head_len = s->head.len;
    dl->body_one = (struct iovec){store + off, s->body.len};
    dl->body_iov = &dl->body_one;
    dl->nbody = 1;
    dl->method = fbr_http_method_name(method);
    char key[1024];
    size_t klen = s->dest_key.len < sizeof(key) - 1 ? s->dest_key.len : sizeof(key) - 1;
    if (klen)
        memcpy(key, s->dest_key.ptr, klen);
    else
        klen = dest_key(&up, key, sizeof(key));
    struct fbr_slice token = query_token(up.query), auth = {NULL, 0};
    if (!token.len) {
        fbr_delivery_head_each(dl->head, dl->head_len, find_authorization, &auth);
        token = auth;
    }
    set_limits(e, dl, get_dest(e, key, klen), NULL, &qo, up.authority, token);
    enqueue(e, dl, &qo);
    return FBR_OK;
}

static int by_seq(const void *a, const void *b);

struct collect {
    struct delivery **p;
};

static void collect_all(const char *key, void *value, void *arg)
{
    struct dest *d = value;
    struct collect *c = arg;
    struct delivery *dl;
    (void)key;
    TAILQ_FOREACH(dl, &d->queue, link)
        *c->p++ = dl;
}

void fbr_delivery_each(struct fbr_delivery_engine *e, fbr_delivery_each_fn fn, void *arg)
{
    size_t n = (size_t)e->m.pending;
    if (!n)
        return;
    struct delivery **all = fbr_xcalloc(n, sizeof(*all));
    struct collect c = {all};
    fbr_strmap_each(&e->dests, collect_all, &c);
    n = (size_t)(c.p - all);
    qsort(all, n, sizeof(*all), by_seq);
    for (size_t i = 0; i < n; i++) {
        struct fbr_delivery_info info;
        delivery_info(all[i], &info);
        fn(&info, all[i]->state, arg);
    }
    free(all);
}

int fbr_delivery_submit(struct fbr_delivery_engine *e, struct fbr_outreq *o, char *id)
{
    struct fbr_delivery_queue_opts qo = {.id_out = id};
    return fbr_delivery_queue(e, o, &qo);
}

int fbr_delivery_submit_auth(struct fbr_delivery_engine *e, struct fbr_outreq *o, char *id,
                             const struct fbr_delivery_auth_ref *auth)
{
    struct fbr_delivery_queue_opts qo = {.auth = auth, .id_out = id};
    return fbr_delivery_queue(e, o, &qo);
}

int fbr_delivery_accepting(const struct fbr_delivery_engine *e)
{
    return !e->shut;
}

static void pump_dest(const char *key, void *value, void *arg)
{
    (void)key, (void)arg;
    struct dest *d = value;
    struct delivery *dl;
    int any = 0;
    TAILQ_FOREACH(dl, &d->queue, link)
    {
        if (dl->auth_waiting) {
            dl->wake_ms = 0;
            any = 1;
        }
    }
    if (any)
        dest_pump(d);
}

void fbr_delivery_set_held(struct fbr_delivery_engine *e, int on)
{
    e->hold = on;
    if (on)
        e->release_seq = e->seq_counter;
    else
        fbr_delivery_release(e, UINT64_MAX);
}

void fbr_delivery_release(struct fbr_delivery_engine *e, uint64_t seq)
{
    if (seq <= e->release_seq && e->hold)
        return;
    if (seq > e->release_seq)
        e->release_seq = seq;
    /* pumping may hold a destination up again: it goes on a fresh list */
    struct dest **v = e->held_dests;
    size_t n = e->nheld_dests;
    e->held_dests = NULL;
    e->nheld_dests = e->capheld_dests = 0;
    for (size_t i = 0; i < n; i++)
        v[i]->held_up = 0;
    for (size_t i = 0; i < n; i++)
        if (!e->shut)
            dest_pump(v[i]);
    free(v);
}

uint64_t fbr_delivery_last_seq(const struct fbr_delivery_engine *e)
{
    return e->seq_counter;
}

struct cancel_range {
    struct fbr_delivery_engine *e;
    uint64_t after, upto;
    size_t n;
};

static void cancel_dest(const char *key, void *value, void *arg)
{
    (void)key;
    struct dest *d = value;
    struct cancel_range *c = arg;
    /* held deliveries are the newest of their destination: look from the tail */
    struct delivery *dl = TAILQ_LAST(&d->queue, delivery_queue), *prev;
    for (; dl && dl->seq > c->after; dl = prev) {
        prev = TAILQ_PREV(dl, delivery_queue, link);
        if (dl->seq <= c->upto && dl->state == FBR_DS_QUEUED && is_held(c->e, dl)) {
            transition(dl, FBR_DS_CANCELLED, 0, "its request was refused (the journal failed)");
            c->n++;
        }
    }
}

size_t fbr_delivery_cancel(struct fbr_delivery_engine *e, uint64_t after, uint64_t upto)
{
    struct cancel_range c = {e, after, upto, 0};
    if (!e->shut && upto > after)
        fbr_strmap_each(&e->dests, cancel_dest, &c);
    return c.n;
}

void fbr_delivery_auth_ready(struct fbr_delivery_engine *e)
{
    if (!e->shut)
        fbr_strmap_each(&e->dests, pump_dest, NULL);
}

static void delivery_free(struct delivery *dl)
{
    drop_auth_attempt(dl);
    if (dl->auth)
        dl->auth->unref(dl->auth_arg);
    free(dl->auth_key);
    free(dl->store);
    free(dl->reason);
    free(dl);
}

/* ---- dead letters (the file's format is deadletter.c's) ---- */

/* Logs dl's death and appends it to the dead-letter file; returns 0, or -1 (logged and counted)
 * when the line did not go out.  dl->dest is NULL for a request that was never queued. */
static int write_dead_letter(struct fbr_delivery_engine *e, struct delivery *dl)
{
    char masked[512], err[300];
    fbr_log_mask_url(dl->url, dl->url_len, masked, sizeof(masked));
    fbr_log(FBR_LOG_WARN, dl->id, NULL,
            "delivery to %s is dead after %u attempt(s): %s; appended to %s", masked,
            dl->attempts, dl->reason ? dl->reason : "", e->dl_path);
    struct fbr_dead_letter v = {
        .id = dl->id,
        .method = dl->method,
        .url = dl->url,
        .url_len = dl->url_len,
        .head = dl->head,
        .head_len = dl->head_len,
        .body = dl->body_iov,
        .nbody = dl->nbody,
        .reason = dl->reason,
        .destination = dl->dest ? dl->dest->key : "",
        .attempts = dl->attempts,
        .created_ms = dl->created_wall,
        .first_attempt_ms = dl->first_attempt_wall,
        .last_attempt_ms = dl->last_attempt_wall,
    };
    if (fbr_dead_letter_append(e->dl_path, &v, err, sizeof(err)) == FBR_OK)
        return 0;
    e->m.dead_letter_write_errors++;
    fbr_log(FBR_LOG_ERROR, dl->id, "writing a dead letter", "%s", err);
    return -1;
}

/* ---- metrics ---- */

void fbr_delivery_metrics_collect(struct fbr_metrics_samples *s, void *arg)
{
    const struct fbr_delivery_engine *e = arg;
    const struct fbr_delivery_metrics *m = &e->m;
    static const char *const deliveries = "firebridge_deliveries_total",
                             *const outcome = "outcome";
    const char *h = "Deliveries by outcome.";
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, deliveries, h, outcome, "delivered", m->delivered);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, deliveries, h, outcome, "dead_permanent",
                       m->dead_permanent);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, deliveries, h, outcome, "dead_expired",
                       m->dead_expired);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, deliveries, h, outcome, "dead_shutdown",
                       m->dead_shutdown);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, deliveries, h, outcome, "cancelled", m->cancelled);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, deliveries, h, outcome, "rejected", m->rejected);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_delivery_attempts_total",
                       "HTTP attempts started.", NULL, NULL, m->attempts);
    for (unsigned i = 0; i < FBR_RETRY_COUNT; i++)
        fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_delivery_retries_total",
                           "Retries by reason.", "reason", retry_names[i], m->retries[i]);
    fbr_metrics_sample(s, FBR_METRIC_GAUGE, "firebridge_deliveries_pending",
                       "Accepted, not yet delivered or dead.", NULL, NULL, m->pending);
    for (unsigned st = FBR_DS_QUEUED; st <= FBR_DS_BACKING_OFF; st++)
        fbr_metrics_sample(s, FBR_METRIC_GAUGE, "firebridge_deliveries_in_state",
                           "Live deliveries per state.", "state", state_names[st],
                           m->in_state[st]);
    fbr_metrics_sample(s, FBR_METRIC_GAUGE, "firebridge_delivery_destinations_rate_limited",
                       "Destinations waiting on a rate limit.", NULL, NULL,
                       m->destinations_rate_limited);
    fbr_metrics_sample(s, FBR_METRIC_GAUGE, "firebridge_delivery_destinations",
                       "Destinations (room limiters) held: busy or idle within their window.", NULL,
                       NULL, m->destinations);
    fbr_metrics_sample(s, FBR_METRIC_GAUGE, "firebridge_delivery_token_limiters",
                       "Token limiters held: busy or idle within their window.", NULL, NULL,
                       m->token_limiters);
    struct fbr_client_stats cs;
    fbr_client_get_stats(e->client, &cs);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_client_connections_opened_total",
                       "Outbound TCP connections attempted.", NULL, NULL, cs.connections_opened);
    fbr_metrics_sample(s, FBR_METRIC_GAUGE, "firebridge_client_connections_open",
                       "Outbound connections open or opening.", NULL, NULL, cs.open_now);
    fbr_metrics_sample(s, FBR_METRIC_GAUGE, "firebridge_client_pools",
                       "Origins (scheme, host, port) with an outbound connection pool.", NULL,
                       NULL, cs.pools_now);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_client_pools_refused_total",
                       "Attempts failed because every allowed origin pool was in use.", NULL,
                       NULL, cs.pools_refused);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_client_requests_pipelined_total",
                       "Requests written while another response was awaited on their "
                       "connection (--pipeline).",
                       NULL, NULL, cs.pipelined);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_client_requests_requeued_total",
                       "Requests sent again on another connection (at most once each), no "
                       "response byte seen on the first.",
                       NULL, NULL, cs.requeued);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_client_requests_moved_total",
                       "Requests put on another connection without counting as a resend: never "
                       "sent, or ignored by a server closing the connection.",
                       NULL, NULL, cs.moved);
    double bounds[FBR_DELIVERY_LATENCY_BUCKETS - 1];
    for (unsigned b = 0; b < FBR_DELIVERY_LATENCY_BUCKETS - 1; b++)
        bounds[b] = (double)fbr_delivery_latency_bounds_ms[b] / 1000.0;
    fbr_metrics_sample_histogram(s, "firebridge_delivery_latency_seconds",
                                 "From acceptance to 2xx.", bounds, FBR_ARRAY_LEN(bounds),
                                 m->latency_buckets, (double)m->latency_sum_ms / 1000.0,
                                 m->latency_count);
}

void fbr_delivery_metrics_write(const struct fbr_delivery_engine *e, struct evbuffer *out)
{
    fbr_metrics_write_collector(fbr_delivery_metrics_collect, (void *)e, out);
}

/* ---- clean shutdown ---- */

static void collect_dest(const char *key, void *value, void *arg)
{
    struct dest *d = value;
    struct delivery ***pp = arg;
    struct delivery *dl;
    (void)key;
    TAILQ_FOREACH(dl, &d->queue, link)
        *(*pp)++ = dl;
    if (d->timer_at) {
        evtimer_del(d->timer);
        d->timer_at = 0;
    }
    dest_set_rate_limited(d, 0);
}

static int by_seq(const void *a, const void *b)
{
    const struct delivery *x = *(struct delivery *const *)a, *y = *(struct delivery *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

size_t fbr_delivery_shutdown(struct fbr_delivery_engine *e, const char *reason)
{
    if (e->shut)
        return 0;
    e->shut = 1;
    /* First the client: it drops every pending attempt without calling back, so no in-flight
     * attempt references a delivery's body or calls on_response() for a freed delivery. */
    fbr_client_free(&e->client);
    size_t n = (size_t)e->m.pending;
    if (!n)
        return 0;
    struct delivery **all = fbr_xcalloc(n, sizeof(*all)), **p = all;
    fbr_strmap_each(&e->dests, collect_dest, &p);
    n = (size_t)(p - all);
    /* Submission order: each destination's FIFO order, so a replay queues them as they were. */
    qsort(all, n, sizeof(*all), by_seq);
    uint64_t errors = e->m.dead_letter_write_errors;
    for (size_t i = 0; i < n; i++) {
        struct delivery *dl = all[i];
        char r[512];
        const char *last = dl->reason ? dl->reason : "";
        snprintf(r, sizeof(r), "%s%s%s%s%s", reason && *reason ? reason : "shutdown",
                 dl->state == FBR_DS_IN_FLIGHT
                     ? " (an attempt was in flight: the destination may have it already)"
                     : "",
                 *last ? " (last: " : "", last, *last ? ")" : "");
        e->m.dead_shutdown++;
        transition(dl, FBR_DS_DEAD, 0, r);
    }
    free(all);
    if (n) { /* the file is the only copy now: make it durable before the process goes */
        int fd = open(e->dl_path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
    }
    return n - (size_t)(e->m.dead_letter_write_errors - errors);
}

/* ---- lifecycle and accessors ---- */

int fbr_delivery_engine_new(struct event_base *base, const struct fbr_delivery_opts *opts,
                            struct fbr_delivery_engine **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *dir = opts->data_dir ? opts->data_dir : ".";
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "data directory %s is not a directory", dir);
        return FBR_ERROR;
    }
    struct fbr_client_opts co = {
        .pool_size = opts->pool_size,
        .pipeline = opts->pipeline,
        .connect_timeout_ms = opts->connect_timeout_ms,
        .request_timeout_ms = opts->request_timeout_ms,
        .ca_file = opts->ca_file,
        .insecure = opts->tls_insecure,
        .nameserver = opts->nameserver,
    };
    struct fbr_client *client;
    if (fbr_client_new(base, &co, &client, err, errlen) != FBR_OK)
        return FBR_ERROR;
    struct fbr_delivery_engine *e = fbr_xcalloc(1, sizeof(*e));
    e->base = base;
    e->client = client;
    e->opts = *opts;
    if (!e->opts.per_destination_inflight)
        e->opts.per_destination_inflight = 1;
    if (!e->opts.failing_log_interval_ms)
        e->opts.failing_log_interval_ms = FBR_DEFAULT_FAILING_LOG_INTERVAL_MS;
    if (!e->opts.retry_initial_ms)
        e->opts.retry_initial_ms = 1;
    if (e->opts.retry_max_interval_ms < e->opts.retry_initial_ms)
        e->opts.retry_max_interval_ms = e->opts.retry_initial_ms;
    e->data_dir = fbr_xstrdup(dir);
    e->opts.data_dir = e->data_dir;
    e->opts.ca_file = NULL;
    size_t plen = strlen(dir) + sizeof("/dead-letters.jsonl");
    e->dl_path = fbr_xmalloc(plen);
    snprintf(e->dl_path, plen, "%s/dead-letters.jsonl", dir);
    fbr_strmap_init(&e->dests);
    fbr_strmap_init(&e->tokens);
    TAILQ_INIT(&e->idle_dests);
    TAILQ_INIT(&e->idle_tokens);
    e->dest_idle_ms = (uint64_t)e->opts.room_rate.secs * 1000u;
    e->token_idle_ms = (uint64_t)e->opts.token_rate.secs * 1000u;
    if (e->dest_idle_ms < e->opts.idle_keep_ms)
        e->dest_idle_ms = e->opts.idle_keep_ms;
    if (e->token_idle_ms < e->opts.idle_keep_ms)
        e->token_idle_ms = e->opts.idle_keep_ms;
    e->sweep = evtimer_new(base, sweep_cb, e);
    snprintf(e->id_prefix, sizeof(e->id_prefix), "%016" PRIx64, rand64());
    *out = e;
    return FBR_OK;
}

static void free_dest(const char *key, void *value, void *arg)
{
    struct dest *d = value;
    (void)key, (void)arg;
    struct delivery *dl;
    while ((dl = TAILQ_FIRST(&d->queue))) {
        TAILQ_REMOVE(&d->queue, dl, link);
        delivery_free(dl);
    }
    event_free(d->timer);
    fbr_ratelimit_free(&d->rl);
    free(d->key);
    free(d);
}

static void free_token(const char *key, void *value, void *arg)
{
    struct token_limit *t = value;
    (void)key, (void)arg;
    fbr_ratelimit_free(&t->rl);
    free(t);
}

/* ---- forgetting idle destinations and token limiters ---- */

static void arm_sweep(struct fbr_delivery_engine *e, uint64_t due, uint64_t now)
{
    uint64_t ms = due > now ? due - now : 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(e->sweep, &tv);
    e->sweep_at = due ? due : 1;
}

/* i's owner has nothing to send from now on: it joins the tail of list, and the sweep is armed
 * for when it may be forgotten unless it is armed already for about then or earlier. */
static void go_idle(struct fbr_delivery_engine *e, struct idlers *list, struct idler *i,
                    uint64_t idle_ms)
{
    uint64_t now = fbr_now_ms(); /* the loop's clock: one reading per iteration */
    i->since = now ? now : 1;
    TAILQ_INSERT_TAIL(list, i, link);
    uint64_t due = now + (idle_ms > SWEEP_MIN_MS ? idle_ms : SWEEP_MIN_MS);
    if (!e->sweep_at || e->sweep_at > due + SWEEP_MIN_MS)
        arm_sweep(e, due, now);
}

/* Frees an idle destination unless a server hold still runs, it waits for a release or its
 * failure log is within its interval. */
static int forget_dest(struct fbr_delivery_engine *e, struct idler *i, uint64_t now)
{
    struct dest *d = (struct dest *)((char *)i - offsetof(struct dest, idle));
    if (!TAILQ_EMPTY(&d->queue) || d->held_up || d->rl.hold_until_ms > now)
        return 0;
    /* a failing one logged its last line less than an interval ago: forgetting it now would let
     * its next failure log "is failing" again before the interval is over */
    if (d->failing_since && now - d->failing_logged_at < e->opts.failing_log_interval_ms)
        return 0;
    fbr_strmap_del(&e->dests, d->key, d->klen);
    dest_set_rate_limited(d, 0);
    free_dest(NULL, d, NULL);
    e->m.destinations--;
    return 1;
}

static int forget_token(struct fbr_delivery_engine *e, struct idler *i, uint64_t now)
{
    struct token_limit *t = (struct token_limit *)((char *)i - offsetof(struct token_limit, idle));
    if (t->users || t->rl.hold_until_ms > now)
        return 0;
    fbr_strmap_del(&e->tokens, t->key, t->klen);
    free_token(NULL, t, NULL);
    e->m.token_limiters--;
    return 1;
}

/*
 * Takes list from its head while its entries have been idle for idle_ms (none idle since now:
 * one kept is put back at the tail as idle since now), at most budget of them; forget() frees
 * one or keeps it.  Sets *more when the budget ran out.  Returns how many were freed.
 */
static size_t sweep_list(struct fbr_delivery_engine *e, struct idlers *list, uint64_t idle_ms,
                         uint64_t now, size_t budget, int *more,
                         int (*forget)(struct fbr_delivery_engine *, struct idler *, uint64_t))
{
    size_t freed = 0, seen = 0;
    struct idler *i;
    while ((i = TAILQ_FIRST(list)) && i->since < now && i->since + idle_ms <= now) {
        if (seen++ == budget) {
            *more = 1;
            break;
        }
        TAILQ_REMOVE(list, i, link);
        i->since = 0;
        if (forget(e, i, now)) {
            freed++;
        } else {
            i->since = now;
            TAILQ_INSERT_TAIL(list, i, link);
        }
    }
    return freed;
}

/* When list's head may be forgotten (UINT64_MAX: empty). */
static uint64_t idle_due(const struct idlers *list, uint64_t idle_ms)
{
    const struct idler *i = TAILQ_FIRST(list);
    return i ? i->since + idle_ms : UINT64_MAX;
}

static size_t sweep(struct fbr_delivery_engine *e, size_t budget)
{
    uint64_t now = fbr_now_ms();
    int more = 0;
    size_t n = sweep_list(e, &e->idle_dests, e->dest_idle_ms, now, budget, &more, forget_dest);
    n += sweep_list(e, &e->idle_tokens, e->token_idle_ms, now, budget, &more, forget_token);
    uint64_t due = idle_due(&e->idle_dests, e->dest_idle_ms);
    uint64_t due_tokens = idle_due(&e->idle_tokens, e->token_idle_ms);
    if (due_tokens < due)
        due = due_tokens;
    if (more)
        due = now;
    else if (due != UINT64_MAX && due < now + SWEEP_MIN_MS)
        due = now + SWEEP_MIN_MS;
    if (e->sweep_at)
        evtimer_del(e->sweep);
    e->sweep_at = 0;
    if (due != UINT64_MAX)
        arm_sweep(e, due, now);
    return n;
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct fbr_delivery_engine *e = arg;
    e->sweep_at = 0;
    sweep(e, SWEEP_BATCH);
}

size_t fbr_delivery_sweep(struct fbr_delivery_engine *e)
{
    return sweep(e, SIZE_MAX);
}

void fbr_delivery_engine_free(struct fbr_delivery_engine **ep)
{
    struct fbr_delivery_engine *e = *ep;
    if (!e)
        return;
    fbr_client_free(&e->client); /* first: in-flight attempts reference delivery bodies */
    event_free(e->sweep);
    fbr_strmap_each(&e->dests, free_dest, NULL);
    fbr_strmap_clear(&e->dests);
    fbr_strmap_each(&e->tokens, free_token, NULL);
    fbr_strmap_clear(&e->tokens);
    free(e->held_dests);
    free(e->data_dir);
    free(e->dl_path);
    free(e);
    *ep = NULL;
}

const char *fbr_delivery_dead_letter_path(const struct fbr_delivery_engine *e)
{
    return e->dl_path;
}

size_t fbr_delivery_pending(const struct fbr_delivery_engine *e)
{
    return (size_t)e->m.pending;
}

size_t fbr_delivery_room(const struct fbr_delivery_engine *e)
{
    return e->m.pending >= e->opts.max_pending ? 0 : (size_t)(e->opts.max_pending - e->m.pending);
}

const struct fbr_delivery_metrics *fbr_delivery_get_metrics(const struct fbr_delivery_engine *e)
{
    return &e->m;
}

struct fbr_client *fbr_delivery_client(struct fbr_delivery_engine *e)
{
    return e->client;
}

int fbr_delivery_watch(struct fbr_delivery_engine *e, fbr_delivery_transition_fn fn, void *arg)
{
    if (fn) {
        if (e->nwatch == FBR_DELIVERY_WATCH_MAX)
            return FBR_LIMIT;
        e->watch[e->nwatch].fn = fn;
        e->watch[e->nwatch++].arg = arg;
        return FBR_OK;
    }
    for (size_t i = 0; i < e->nwatch; i++)
        if (e->watch[i].arg == arg) {
            memmove(&e->watch[i], &e->watch[i + 1], (e->nwatch - i - 1) * sizeof(e->watch[0]));
            e->nwatch--;
            return FBR_OK;
        }
    return FBR_NOTFOUND;
}

void fbr_delivery_set_transition_hook(struct fbr_delivery_engine *e, fbr_delivery_transition_fn fn,
                                      void *arg)
{
    e->hook = fn;
    e->hook_arg = arg;
}
