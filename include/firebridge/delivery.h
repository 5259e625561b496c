/*
 * delivery.h - the delivery engine: the step of the data path between the webhooks (which render
 * one fbr_outreq per fired webhook) and the client (which sends HTTP requests).  It queues every
 * rendered request per destination, keeps their order, applies the room and token rate limits,
 * retries with backoff, writes permanent failures to a dead-letter file and counts everything for
 * /metrics.
 *
 * Destination key: o->rate_key when non-empty (a webhook's own, or the HipChat room key that
 * webhook.c gives HipChat-shaped URLs by default); otherwise scheme + host + path.  The engine
 * itself knows no chat protocol.  Each destination is a FIFO with
 * at most per_destination_inflight deliveries active, so with the default of 1 a room sees its
 * messages in the order they were submitted, and a slow or failing room never holds up another.
 *
 * Each delivery moves through an explicit state machine, changed only by one transition function
 * (which reports every change to an optional hook, the future journal; a new delivery is
 * reported once as queued -> queued):
 *
 *   queued -> waiting_rate | in_flight | dead (expired: its limit opens after retry_max_age;
 *                                               shutdown)
 *             | cancelled (held, and its request was refused: fbr_delivery_cancel)
 *   waiting_rate -> in_flight | dead (expired; shutdown)
 *   in_flight -> delivered | backing_off | waiting_rate (429) | dead (permanent failure, expired;
 *                                                                     shutdown)
 *   backing_off -> waiting_rate | in_flight | dead (expired; shutdown)
 *
 * Every live state reaches dead, and on a clean shutdown (fbr_delivery_shutdown) every pending
 * delivery takes that edge, so nothing accepted is dropped: it is written to the dead-letter file.
 * Cancelled is for a delivery that was never accepted: it was held (fbr_delivery_set_held) and
 * the request that made it was answered 503, so its sender sends it again; it was never sent and
 * goes nowhere (no dead letter).
 */
#ifndef FIREBRIDGE_DELIVERY_H
#define FIREBRIDGE_DELIVERY_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdint.h>
#include <sys/uio.h>

#include "firebridge/client.h"
#include "firebridge/common.h"
#include "firebridge/webhook.h"

struct fbr_delivery_engine;
struct fbr_delivery;

/* X(NAME, name in logs and metrics) */
#define FBR_DELIVERY_STATE_MAP(X)                                                                  \
    X(QUEUED, "queued")                                                                            \
    X(WAITING_RATE, "waiting_rate")                                                                \
    X(IN_FLIGHT, "in_flight")                                                                      \
    X(BACKING_OFF, "backing_off")                                                                  \
    X(DELIVERED, "delivered")                                                                      \
    X(DEAD, "dead")                                                                                \
    X(CANCELLED, "cancelled")

enum fbr_delivery_state {
#define FBR_X(name, text) FBR_DS_##name,
    FBR_DELIVERY_STATE_MAP(FBR_X)
#undef FBR_X
        FBR_DS_COUNT
};

/* Returns a static name ("queued", "waiting_rate", ...). */
const char *fbr_delivery_state_name(enum fbr_delivery_state s);

/* The defaults (fbr_delivery_opts_init) are the daemon's, from defaults.h. */
struct fbr_delivery_opts {
    unsigned pool_size;                /* connections per origin */
    unsigned pipeline;                 /* requests in flight per connection (client.h) */
    unsigned connect_timeout_ms;
    unsigned request_timeout_ms;
    struct fbr_rate room_rate;         /* n == 0 after init means unlimited */
    struct fbr_rate token_rate;
    unsigned retry_initial_ms;
    unsigned retry_max_interval_ms;
    unsigned retry_max_age_s;
    const char *ca_file;               /* NULL: system trust store (borrowed during _new) */
    size_t max_pending;                /* undelivered deliveries before FBR_LIMIT */
    const char *data_dir;              /* dead-letters.jsonl goes here (borrowed during _new) */
    unsigned per_destination_inflight; /* default 1 */
    /* A destination whose attempts start failing is logged at warn at once, then at most once
     * per this interval while it keeps failing (with the count since the last line), and at
     * info when it delivers again; 0 takes FBR_DEFAULT_FAILING_LOG_INTERVAL_MS. */
    unsigned failing_log_interval_ms;
    int tls_insecure;                  /* tests only */
    const char *nameserver;            /* tests: see fbr_client_opts; NULL = /etc/resolv.conf */
    unsigned idle_keep_ms; /* an idle destination or token limiter is kept at least this long
                              (see "Forgetting"; 0 in tests: just its window) */
};

/* Fills opts with the daemon's defaults (defaults.h; data_dir ".", ca_file NULL). */
void fbr_delivery_opts_init(struct fbr_delivery_opts *opts);

/* Why deliveries were retried (bounded label set for /metrics). */
#define FBR_RETRY_REASON_MAP(X)                                                                    \
    X(HTTP_5XX, "http_5xx")                                                                        \
    X(HTTP_408, "http_408")                                                                        \
    X(HTTP_429, "http_429")                                                                        \
    X(DNS, "dns")                                                                                  \
    X(CONNECT, "connect")                                                                          \
    X(TLS, "tls")                                                                                  \
    X(TIMEOUT, "timeout")                                                                          \
    X(EOF, "eof")                                                                                  \
    X(PROTOCOL, "protocol")                                                                        \
    X(IO, "io")

enum fbr_retry_reason {
#define FBR_X(name, text) FBR_RETRY_##name,
    FBR_RETRY_REASON_MAP(FBR_X)
#undef FBR_X
        FBR_RETRY_COUNT
};

#define FBR_DELIVERY_LATENCY_BUCKETS 12
/* Upper bounds (ms) of the latency buckets; the last bucket is +Inf. */
extern const uint64_t fbr_delivery_latency_bounds_ms[FBR_DELIVERY_LATENCY_BUCKETS - 1];

struct fbr_delivery_metrics {
    uint64_t submitted;      /* accepted by fbr_delivery_submit / replay */
    uint64_t rejected;       /* refused with FBR_LIMIT */
    uint64_t delivered;      /* outcome: 2xx */
    uint64_t dead_permanent; /* outcome: 4xx other than 408/429, or an unsendable request */
    uint64_t dead_expired;   /* outcome: retry_max_age passed */
    uint64_t dead_shutdown;  /* outcome: still pending at fbr_delivery_shutdown() */
    uint64_t cancelled;      /* outcome: held, then cancelled (fbr_delivery_cancel) */
    uint64_t attempts;       /* HTTP attempts started */
    uint64_t retries[FBR_RETRY_COUNT];
    uint64_t pending;                   /* gauge: accepted, not yet delivered or dead */
    uint64_t in_state[FBR_DS_COUNT];    /* gauge per live state (delivered/dead stay 0) */
    uint64_t destinations_rate_limited; /* gauge: destinations whose head waits on a limit */
    uint64_t destinations;   /* gauge: destinations held (room limiters, see "Forgetting") */
    uint64_t token_limiters; /* gauge: token limiters held */
    uint64_t latency_buckets[FBR_DELIVERY_LATENCY_BUCKETS]; /* non-cumulative counts */
    uint64_t latency_sum_ms;
    uint64_t latency_count;
    uint64_t dead_letter_write_errors;
};

/*
 * Creates an engine on base (borrowed, must outlive it).  Returns FBR_OK and *out, or FBR_ERROR
 * with a reason in err (CA file unreadable, data_dir missing).
 */
int fbr_delivery_engine_new(struct event_base *base, const struct fbr_delivery_opts *opts,
                            struct fbr_delivery_engine **out, char *err, size_t errlen);
/* Drops every queued delivery (not dead-lettered: call fbr_delivery_shutdown() first to keep
 * them) and frees the engine.  Sets *e to NULL.  As with fbr_client_free(), run the loop once
 * more before freeing the base when name lookups may still be running. */
void fbr_delivery_engine_free(struct fbr_delivery_engine **e);

/*
 * Queues one rendered request.  On FBR_OK o is left released and empty, its render buffers kept
 * for the next render: the delivery's URL, header block and body are copied into one exact-size
 * allocation, and it holds no reference to o's event or webhook (a copy of a few hundred bytes
 * costs less than keeping the event's JSON alive for a round trip; bench/README.md).
 * On FBR_LIMIT (max_pending undelivered, or after fbr_delivery_shutdown()) o is untouched and
 * still the caller's.  On FBR_INVALID (a URL that url.h refuses) o is untouched too, and the
 * request was written to the dead-letter file with the parser's reason ("unsendable URL: ...").
 * If id is non-NULL it receives the delivery id (at least 33 bytes).
 * The intake's sink; same as fbr_delivery_queue(e, o, &(opts){.id_out = id}).
 */
int fbr_delivery_submit(struct fbr_delivery_engine *e, struct fbr_outreq *o, char *id);

/*
 * How one request is queued; a zeroed struct gives a fresh id, now as its creation time, the
 * max_pending bound and no credential provider.
 */
struct fbr_delivery_saved;
struct fbr_delivery_queue_opts {
    const char *id;           /* keep this delivery id (a replay; at most 32 bytes), NULL: new */
    uint64_t created_wall_ms; /* 0: now (dead letters report it) */
    int over_limit;           /* queued even at max_pending: an operator's explicit replay */
    const struct fbr_delivery_auth_ref *auth; /* credentials at send time, see below; or NULL */
    char *id_out;             /* receives the delivery id (at least 33 bytes), or NULL */
    const struct fbr_delivery_saved *saved; /* restored from the journal: its attempts, order,
                                               limits and hook word (fbr_delivery_restore) */
    int dead_letter_if_full; /* at max_pending: write the request to the dead-letter file (with
                                that reason) before returning FBR_LIMIT, for callers that cannot
                                refuse the work they were given (the add-on's room posts, made
                                after the intake answered 200) */
};

/*
 * THE way to queue a request that did not come from a webhook (the HipChat add-on's calls, the
 * platform API client, --replay-dead-letters); fbr_delivery_submit() and
 * fbr_delivery_submit_auth() are this with fixed options.  Contract:
 *  - o is built by the caller: fbr_outreq_init(), then method (an FBR_M_* bit, http.h; 0 means
 *    POST), url, body and headers as copies (fbr_render_set_copy), header_names and content_type
 *    heap strings that o owns (o->webhook NULL: fbr_outreq_free() frees them), rate_key optional.
 *  - o->url is checked with url.h's rules here; a refused URL is never sent: it goes to the
 *    dead-letter file at once with the reason and FBR_INVALID is returned.
 *  - Limits: the engine's --room-rate per destination (o->rate_key, else scheme + host + path)
 *    and --token-rate per auth_token query parameter or Authorization header (or opts->auth's
 *    key); a webhook's overrides apply only to deliveries that carry that webhook.
 *  - Returns FBR_OK (o released, buffers kept for reuse as with fbr_delivery_submit()),
 *    FBR_LIMIT or FBR_INVALID (o untouched: the caller frees it).  With dead_letter_if_full, an
 *    FBR_LIMIT for a full queue has written the request to the dead-letter file (not after
 *    fbr_delivery_shutdown(): the engine is gone then).  The engine never calls back
 *    into the caller except through opts->auth; the outcome is visible in the transition hook,
 *    /metrics and the dead-letter file.
 */
int fbr_delivery_queue(struct fbr_delivery_engine *e, struct fbr_outreq *o,
                       const struct fbr_delivery_queue_opts *opts);

/* Whether the engine still accepts requests (fbr_delivery_shutdown() not called yet). */
int fbr_delivery_accepting(const struct fbr_delivery_engine *e);

/*
 * Credentials asked for at send time, for requests whose token changes while they wait (the
 * HipChat add-on's OAuth tokens).  A delivery submitted with fbr_delivery_submit_auth() holds a
 * reference to the provider (ref/unref) and, right before each attempt, calls get():
 *   FBR_OK     value holds the Authorization header value (NUL-terminated): the attempt carries
 *              "Authorization: <value>", which never reaches a log line or a dead letter;
 *   FBR_AGAIN  nothing yet (a token request is running): the delivery waits in waiting_rate,
 *              keeping its destination's order, until fbr_delivery_auth_ready() or its expiry;
 *   other      never: the delivery goes dead with reason (e.g. the installation was revoked).
 * A 401 answer calls rejected() with the value that was refused, once per delivery: the
 * provider drops it and renews, and the delivery waits and is sent once more; a second 401 is
 * a permanent failure.  key names the credentials' owner for the --token-rate limit (the token
 * itself changes on renewal).  All callbacks run on the loop, never re-entrantly from get().
 */
#define FBR_DELIVERY_AUTH_MAX 1024 /* longest Authorization value */
struct fbr_delivery_auth {
    int (*get)(void *arg, char *value, size_t cap, char *reason, size_t rcap);
    void (*rejected)(void *arg, const char *value);
    void (*ref)(void *arg);
    void (*unref)(void *arg);
};
struct fbr_delivery_auth_ref {
    const struct fbr_delivery_auth *ops;
    void *arg;
    const char *key; /* borrowed during the call */
};

/* fbr_delivery_submit() with credentials from a provider (see above); o must carry no
 * Authorization header of its own.  Same as fbr_delivery_queue() with only opts.auth and
 * opts.id_out set. */
int fbr_delivery_submit_auth(struct fbr_delivery_engine *e, struct fbr_outreq *o, char *id,
                             const struct fbr_delivery_auth_ref *auth);
/* A provider has credentials again (or knows it never will): every delivery waiting on one asks
 * again now. */
void fbr_delivery_auth_ready(struct fbr_delivery_engine *e);

/*
 * Clean shutdown, once the drain is over: frees the client first (pending attempts are dropped
 * without callbacks, so nothing references a delivery any more), then moves every pending
 * delivery (queued, waiting_rate, in_flight, backing_off) to dead through the one transition
 * function, in submission order (so each destination's order is kept in the file), each with
 * "<reason> (last: <last failure>)" as its reason; an in_flight one also says the destination may
 * have received it (a replay can deliver it twice: at least once, never zero times).  The file is
 * fsynced.  Returns how many entries were written (less than the pending count only when writes
 * failed; see dead_letter_write_errors).  Afterwards the engine accepts nothing (submit gives
 * FBR_LIMIT, replay FBR_ERROR) and can only be freed.  reason NULL: "shutdown".
 */
size_t fbr_delivery_shutdown(struct fbr_delivery_engine *e, const char *reason);

/*
 * Reads a dead-letter file (one JSON object per line, as written by the engine) and queues each
 * entry again with its original id, bypassing max_pending (an operator's explicit action).
 * When path is the engine's own dead-letter file (same inode), that file is first renamed to
 * "<path>.replayed-<wall ms>" and read from there: what dies during or after the replay goes to
 * a fresh file at the usual path (no loop, no line read twice), and the replayed lines stay on
 * disk under the new name.  A last line without its newline that does not parse (an append a
 * crash cut short) is logged with its byte offset, left in the file and skipped: the lines before
 * it are replayed and the result is FBR_OK.  Returns FBR_OK with *count set, FBR_NOTFOUND when the
 * file does not exist, FBR_ERROR when it cannot be opened otherwise, when the rename fails or after
 * fbr_delivery_shutdown(), or FBR_INVALID naming
 * the first bad line in err (entries before it stay queued; a live file moved aside is moved back
 * when nothing was dead-lettered meanwhile, so freeing the engine without a shutdown leaves the
 * disk as it was).
 */
/* (Implemented in deadletter.c, through fbr_delivery_queue().) */
int fbr_delivery_replay_file(struct fbr_delivery_engine *e, const char *path, size_t *count,
                             char *err, size_t errlen);

/* Path of the dead-letter file (borrowed). */
const char *fbr_delivery_dead_letter_path(const struct fbr_delivery_engine *e);

/* Number of undelivered deliveries. */
size_t fbr_delivery_pending(const struct fbr_delivery_engine *e);
/* How many more submissions would be accepted now (max_pending minus pending, or 0); the
 * intake's sink uses it to refuse an alert whose deliveries would not all fit. */
size_t fbr_delivery_room(const struct fbr_delivery_engine *e);

/* Counters (borrowed, live). */
const struct fbr_delivery_metrics *fbr_delivery_get_metrics(const struct fbr_delivery_engine *e);
/* The engine's metrics collector (metrics.h; arg: the engine): firebridge_deliveries_total,
 * _attempts_total, _retries_total, _pending, _in_state, _destinations_rate_limited,
 * _destinations, _token_limiters and the latency histogram.  The daemon adds it to its registry. */
struct fbr_metrics_samples;
void fbr_delivery_metrics_collect(struct fbr_metrics_samples *s, void *arg);
/* That collector's exposition text appended to out (tests). */
void fbr_delivery_metrics_write(const struct fbr_delivery_engine *e, struct evbuffer *out);

/*
 * Forgetting.  Room ids and tokens come from alerts, so the engine does not keep a destination
 * (its queue, timer and room limiter) or a token limiter for ever: one with nothing queued or in
 * flight is freed by a sweep timer once it has been idle for the longest window any limit of its
 * kind has had in this engine (the engine's --room-rate / --token-rate or a webhook's override),
 * so none of its recorded sends could still hold back a send, and at least opts.idle_keep_ms
 * (rebuilding one costs more than a delivery: a room fed every few seconds keeps its own), and
 * no server hold (429, X-*-Remaining 0) runs on it.  A new delivery to it before then finds it as it was.  Memory for
 * these is therefore bounded by the distinct rooms and tokens seen within one window, not by
 * all ever seen.  fbr_delivery_sweep() runs that sweep now (tests) and returns how many it freed.
 */
size_t fbr_delivery_sweep(struct fbr_delivery_engine *e);

/* The client, for tests and statistics (borrowed). */
struct fbr_client *fbr_delivery_client(struct fbr_delivery_engine *e);

/* Read-only view of a delivery for the transition hook (everything borrowed for the call). */
struct fbr_delivery_info {
    const char *id;
    const char *dest_key;
    unsigned attempts;
    uint64_t created_wall_ms;
    const char *reason; /* why the transition happened ("http 503", "429", ...), may be "" */
    const char *method; /* "POST", ... */
    struct fbr_slice url;
    struct fbr_slice head;     /* "Name: value\r\n" lines, Content-Type and the delivery id */
    const struct iovec *body;  /* the body's slices */
    size_t nbody;
    uint64_t seq;              /* submission order in this engine */
    struct fbr_rate room_rate, token_rate; /* the limits this delivery waits on */
    int restored;              /* it came back through fbr_delivery_restore() */
    uint64_t *hook_word;       /* one word kept with the delivery for the hook's owner (the
                                  journal keeps its record there); 0 for a new delivery */
    const char *auth_key;      /* the credentials provider's key (fbr_delivery_auth_ref.key, an
                                  add-on installation's oauth_id) when the delivery asks one for
                                  its Authorization at send time, else NULL */
};

/* Called after every state change (from -> to), before any side effect of the new state. */
typedef void (*fbr_delivery_transition_fn)(const struct fbr_delivery_info *d,
                                           enum fbr_delivery_state from, enum fbr_delivery_state to,
                                           void *arg);
void fbr_delivery_set_transition_hook(struct fbr_delivery_engine *e, fbr_delivery_transition_fn fn,
                                      void *arg);
/*
 * A read-only watcher of every transition, called after the hook above with the same arguments
 * (the HipChat add-on's page shows its notifications' outcomes).  A watcher must not touch
 * d->hook_word, submit, restore or free anything.  fn NULL removes the watcher registered with
 * arg.  Returns FBR_OK, FBR_LIMIT (FBR_DELIVERY_WATCH_MAX watchers already) or FBR_NOTFOUND.
 */
#define FBR_DELIVERY_WATCH_MAX 4
int fbr_delivery_watch(struct fbr_delivery_engine *e, fbr_delivery_transition_fn fn, void *arg);

/*
 * Write-ahead holding (the journal's side, delivery_journal.c, turns it on): with held on, a
 * delivery queued from then on (not one restored) stays queued, unsent, until
 * fbr_delivery_release(e, seq) is called with a seq at least its own (fbr_delivery_info.seq):
 * the journal releases a delivery once its record is committed, so nothing is sent before it is
 * safe, and a delivery whose request then fails can still be cancelled.  A held delivery holds
 * up its destination's later ones (their order is kept).  Turning it off releases everything.
 */
void fbr_delivery_set_held(struct fbr_delivery_engine *e, int on);
void fbr_delivery_release(struct fbr_delivery_engine *e, uint64_t seq);
/* The seq of the newest delivery queued (0: none yet); deliveries queued later have larger
 * ones.  A caller takes it before and after its submissions to name them to the cancel. */
uint64_t fbr_delivery_last_seq(const struct fbr_delivery_engine *e);
/*
 * Cancels every delivery still held whose seq is in (after, upto]: queued -> cancelled, never
 * sent, no dead letter (the request that made them was refused and will be sent again).
 * Deliveries already released are left alone.  Returns how many were cancelled.
 */
size_t fbr_delivery_cancel(struct fbr_delivery_engine *e, uint64_t after, uint64_t upto);

/* Calls fn for every pending delivery in submission order (per destination, the order they go
 * out); fn must not submit, restore or free anything. */
typedef void (*fbr_delivery_each_fn)(const struct fbr_delivery_info *d, enum fbr_delivery_state s,
                                     void *arg);
void fbr_delivery_each(struct fbr_delivery_engine *e, fbr_delivery_each_fn fn, void *arg);

/* The header block of a delivery ("Name: value\r\n" lines, as fbr_delivery_info.head holds it),
 * line by line: fn gets each header but X-Firebridge-Delivery (the id, added again when sent),
 * with is_ct set for Content-Type.  Everything borrowed for the call. */
typedef void (*fbr_delivery_header_fn)(const char *name, size_t nlen, const char *v, size_t vlen,
                                       int is_ct, void *arg);
void fbr_delivery_head_each(const char *head, size_t len, fbr_delivery_header_fn fn, void *arg);

/* A delivery as the journal saved it (everything borrowed for the call). */
struct fbr_delivery_saved {
    const char *id; /* kept: the receiver sees the same X-Firebridge-Delivery */
    const char *method;
    struct fbr_slice url, head, body, dest_key;
    uint64_t created_wall_ms; /* retry_max_age counts from here */
    unsigned attempts;
    uint64_t seq; /* its submission order (0: next); later submissions get larger ones */
    struct fbr_rate room_rate, token_rate; /* n == 0: the engine's */
    uint64_t hook_word;
    const struct fbr_delivery_auth_ref *auth; /* credentials at send time (the add-on's token
                                                 provider), or NULL */
};

/*
 * Queues a saved delivery again (at start, from the journal), bypassing max_pending: its
 * creation is reported to the hook with restored set.  Call in the original submission order.
 * Returns FBR_OK, FBR_INVALID (bad method, id or URL) or FBR_LIMIT (after shutdown).
 */
int fbr_delivery_restore(struct fbr_delivery_engine *e, const struct fbr_delivery_saved *s);

/* Full-jitter backoff: a uniform draw (rnd, any 64-bit value) in [0, min(max_ms, initial_ms *
 * 2^(failures-1))]; failures >= 1. */
uint64_t fbr_delivery_backoff_ms(uint64_t initial_ms, uint64_t max_ms, unsigned failures,
                                 uint64_t rnd);

#endif
