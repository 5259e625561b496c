/*
 * hipchat-server.c - a HipChat-compatible stand-in for the end of firebridge's data path (intake
 * -> rules -> events -> templates -> delivery -> client -> HERE).  HipChat itself no longer exists,
 * so the tests, the benchmarks and the quick start deliver to this process instead.  It implements
 * the room notification API (spec hipchat-api.md section 1) and its rate limits (section 2)
 * strictly: token auth, field-by-field validation, the documented error shape, fixed-window
 * per-token and per-room counting with the X-Ratelimit-* and X-FloodControl-* headers on every API
 * response, and 429 past either limit.  Every accepted message is kept per room (bounded), printed
 * as one JSON line on stdout and viewable at GET /rooms/{id}/messages.  Faults (error statuses,
 * connection resets, stalls, slow replies, close after each response, 429 with chosen reset times)
 * can be injected at start (--fault JSON) or at run time (POST /faults).  Single-threaded: one
 * libevent loop, libevhtp for HTTP(S).
 */
#include <errno.h>
#include <evhtp.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "firebridge/common.h"

#define HCS_MAX_ROOM_KEY 256
#define HCS_MAX_TOKEN 512
#define HCS_MAX_MESSAGE_CHARS 10000
#define HCS_MAX_FROM_CHARS 64
#define HCS_MAX_ATTACH_TO_CHARS 36
#define HCS_LIFTED_LIMIT 1000000000u

/* ---------------------------------------------------------------------------------------------
 * A small chained hash map from NUL-terminated string keys to borrowed values.
 */
struct hmap_entry {
    char *key;
    void *value;
    struct hmap_entry *next;
};

struct hmap {
    struct hmap_entry **buckets;
    size_t nbuckets;
    size_t count;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static void hmap_init(struct hmap *m)
{
    m->nbuckets = 64;
    m->count = 0;
    m->buckets = fbr_xcalloc(m->nbuckets, sizeof(*m->buckets));
}

static void *hmap_get(const struct hmap *m, const char *key)
{
    for (struct hmap_entry *e = m->buckets[hash_str(key) % m->nbuckets]; e; e = e->next) {
        if (strcmp(e->key, key) == 0)
            return e->value;
    }
    return NULL;
}

static void hmap_grow(struct hmap *m)
{
    size_t n = m->nbuckets * 2;
    struct hmap_entry **b = fbr_xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct hmap_entry *e = m->buckets[i];
        while (e) {
            struct hmap_entry *next = e->next;
            size_t j = hash_str(e->key) % n;
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

/* Inserts key (copied) -> value; the key must not be present yet. */
static void hmap_put(struct hmap *m, const char *key, void *value)
{
    if (m->count + 1 > m->nbuckets)
        hmap_grow(m);
    struct hmap_entry *e = fbr_xmalloc(sizeof(*e));
    e->key = fbr_xstrdup(key);
    e->value = value;
    size_t i = hash_str(key) % m->nbuckets;
    e->next = m->buckets[i];
    m->buckets[i] = e;
    m->count++;
}

/* Removes every entry for which drop(value, arg) returns nonzero; drop owns the value then. */
static void hmap_filter(struct hmap *m, int (*drop)(void *value, void *arg), void *arg)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct hmap_entry **pp = &m->buckets[i];
        while (*pp) {
            struct hmap_entry *e = *pp;
            if (drop(e->value, arg)) {
                *pp = e->next;
                free(e->key);
                free(e);
                m->count--;
            } else {
                pp = &e->next;
            }
        }
    }
}

static void hmap_free(struct hmap *m)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct hmap_entry *e = m->buckets[i];
        while (e) {
            struct hmap_entry *next = e->next;
            free(e->key);
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Rate limits: fixed windows.  A window opens at the Unix second of the first counted request
 * and closes `period` seconds later; Reset is that closing second.
 */
struct rate {
    uint32_t limit;
    uint32_t period_s;
};

struct window {
    uint64_t end_s; /* 0: no open window */
    uint32_t used;
};

struct window_view {
    uint32_t limit, remaining;
    uint64_t reset_s;
};

static uint64_t now_s(void)
{
    return fbr_wall_ms() / 1000u;
}

static struct window_view window_peek(const struct window *w, struct rate r, uint64_t now)
{
    struct window_view v = {r.limit, r.limit, now + r.period_s};
    if (w && w->end_s > now) {
        v.remaining = w->used >= r.limit ? 0 : r.limit - w->used;
        v.reset_s = w->end_s;
    }
    return v;
}

/* Counts one request; returns FBR_OK, or FBR_LIMIT (nothing counted) when the window is full. */
static int window_hit(struct window *w, struct rate r, uint64_t now)
{
    if (w->end_s <= now) {
        w->end_s = now + r.period_s;
        w->used = 0;
    }
    if (w->used >= r.limit)
        return FBR_LIMIT;
    w->used++;
    return FBR_OK;
}

static int parse_rate(const char *s, struct rate *out)
{
    char *end;
    if (strcmp(s, "off") == 0) {
        *out = (struct rate){HCS_LIFTED_LIMIT, 1};
        return FBR_OK;
    }
    errno = 0;
    unsigned long n = strtoul(s, &end, 10);
    if (errno || end == s || *end != '/' || n == 0 || n > HCS_LIFTED_LIMIT)
        return FBR_ERROR;
    const char *p = end + 1;
    unsigned long t = strtoul(p, &end, 10);
    if (errno || end == p || *end != '\0' || t == 0 || t > 86400)
        return FBR_ERROR;
    *out = (struct rate){(uint32_t)n, (uint32_t)t};
    return FBR_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Rooms, tokens, messages.
 */
struct message {
    struct message *room_next;   /* FIFO inside its room */
    struct message *global_next; /* FIFO over all rooms, oldest first: what the cap drops */
    struct room *room;
    uint64_t seq;
    size_t size; /* bytes of the record as JSON: what --max-stored-bytes counts */
    char *json;  /* owned: the stored record as compact JSON (a jansson tree costs 6x more) */
};

struct room {
    char *id;
    char *name; /* may be NULL */
    char **tokens;
    size_t ntokens;
    struct window window;
    struct message *head, *tail;
    size_t nmessages;
};

struct token_state {
    struct window window;
    int configured; /* listed in the configuration (never evicted) */
};

struct fault {
    char *room; /* NULL: any room */
    long count; /* remaining uses; -1: until cleared */
    int status;
    int reset;
    int close;
    long stall_ms;
    long delay_ms;
    long reset_in;       /* 429: seconds until the advertised reset; -1: counters as they are */
    char *retry_after;   /* NULL: reset_in when set, else none; "" : never */
    char *reset_headers; /* "flood" (default), "rate", "both" */
    struct fault *next;
};

struct hcs_stats {
    uint64_t requests;
    uint64_t notifications;
    uint64_t accepted;
    uint64_t faults_injected;
    uint64_t abandoned; /* stalled requests whose client had gone away */
    uint64_t by_status[600];
    uint64_t conn_open, conn_max, conn_total;
    uint64_t messages_dropped;
};

struct hcs {
    struct event_base *base;
    evhtp_t *htp;
    struct hmap rooms; /* id and name -> struct room (borrowed; owned by room_list) */
    struct room **room_list;
    size_t nrooms;
    struct hmap tokens; /* token -> struct token_state (owned) */
    char **global_tokens;
    size_t nglobal_tokens;
    int any_token, any_room, strict_keys;
    struct rate room_rate, token_rate;
    size_t max_messages, nmessages, max_tokens, max_rooms;
    size_t max_stored_bytes, stored_bytes;
    size_t max_body;
    int quiet;
    struct token_state overflow_token; /* shared by tokens seen past max_tokens */
    struct message *oldest, *newest;
    uint64_t next_seq;
    struct fault *faults;
    struct conn *conns;
    struct hcs_stats stats;
};

static struct room *room_add(struct hcs *s, const char *id, const char *name)
{
    struct room *r = hmap_get(&s->rooms, id);
    if (r)
        return r;
    r = fbr_xcalloc(1, sizeof(*r));
    r->id = fbr_xstrdup(id);
    hmap_put(&s->rooms, id, r);
    if (name && *name && strcmp(name, id) != 0 && !hmap_get(&s->rooms, name)) {
        r->name = fbr_xstrdup(name);
        hmap_put(&s->rooms, name, r);
    }
    s->room_list = fbr_xrealloc(s->room_list, (s->nrooms + 1) * sizeof(*s->room_list));
    s->room_list[s->nrooms++] = r;
    return r;
}

static struct token_state *token_get(struct hcs *s, const char *token, int create)
{
    struct token_state *t = hmap_get(&s->tokens, token);
    if (t || !create)
        return t;
    t = fbr_xcalloc(1, sizeof(*t));
    hmap_put(&s->tokens, token, t);
    return t;
}

static void room_add_token(struct hcs *s, struct room *r, const char *token)
{
    r->tokens = fbr_xrealloc(r->tokens, (r->ntokens + 1) * sizeof(*r->tokens));
    r->tokens[r->ntokens++] = fbr_xstrdup(token);
    token_get(s, token, 1)->configured = 1;
}

static int room_has_token(const struct room *r, const char *token)
{
    for (size_t i = 0; i < r->ntokens; i++) {
        if (strcmp(r->tokens[i], token) == 0)
            return 1;
    }
    return 0;
}

static int drop_expired_token(void *value, void *arg)
{
    struct token_state *t = value;
    uint64_t now = *(uint64_t *)arg;
    if (t->configured || t->window.end_s > now)
        return 0;
    free(t);
    return 1;
}

static void message_free(struct message *m)
{
    free(m->json);
    free(m);
}

/* Drops the globally oldest message, which is necessarily the head of its own room's FIFO. */
static void drop_oldest(struct hcs *s)
{
    struct message *m = s->oldest;
    if (!m)
        return;
    s->oldest = m->global_next;
    if (!s->oldest)
        s->newest = NULL;
    struct room *r = m->room;
    r->head = m->room_next;
    if (!r->head)
        r->tail = NULL;
    r->nmessages--;
    s->nmessages--;
    s->stored_bytes -= m->size;
    s->stats.messages_dropped++;
    message_free(m);
}

/* Stores a record (compact JSON, `size` bytes; ownership passes to the store). */
static void store_message(struct hcs *s, struct room *r, char *record, size_t size)
{
    struct message *m = fbr_xcalloc(1, sizeof(*m));
    m->room = r;
    m->size = size;
    s->stored_bytes += size;
    m->seq = ++s->next_seq;
    m->json = record;
    if (r->tail)
        r->tail->room_next = m;
    else
        r->head = m;
    r->tail = m;
    r->nmessages++;
    if (s->newest)
        s->newest->global_next = m;
    else
        s->oldest = m;
    s->newest = m;
    s->nmessages++;
    while (s->nmessages > s->max_messages || s->stored_bytes > s->max_stored_bytes)
        drop_oldest(s);
}

static void clear_messages(struct hcs *s)
{
    while (s->oldest)
        drop_oldest(s);
    s->stats.messages_dropped = 0;
}

/* ---------------------------------------------------------------------------------------------
 * Faults.
 */
static void fault_free(struct fault *f)
{
    if (!f)
        return;
    free(f->room);
    free(f->retry_after);
    free(f->reset_headers);
    free(f);
}

static void faults_clear(struct hcs *s)
{
    while (s->faults) {
        struct fault *f = s->faults;
        s->faults = f->next;
        fault_free(f);
    }
}

static int json_get_ms(json_t *o, const char *key, long *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return FBR_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 3600000) {
        snprintf(err, errlen, "'%s' must be an integer from 0 to 3600000", key);
        return FBR_ERROR;
    }
    *out = (long)json_integer_value(v);
    return FBR_OK;
}

/* Parses one fault object; returns a new fault or NULL with err filled. */
static struct fault *fault_parse(json_t *o, char *err, size_t errlen)
{
    static const char *const known[] = {"room",        "count",        "status",   "reset",
                                        "close",       "stall_ms",     "delay_ms", "reset_in",
                                        "retry_after", "reset_headers"};
    if (!json_is_object(o)) {
        snprintf(err, errlen, "a fault must be a JSON object");
        return NULL;
    }
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        size_t i = 0;
        while (i < FBR_ARRAY_LEN(known) && strcmp(known[i], key) != 0)
            i++;
        if (i == FBR_ARRAY_LEN(known)) {
            snprintf(err, errlen, "unknown fault key '%.64s'", key);
            return NULL;
        }
    }
    struct fault *f = fbr_xcalloc(1, sizeof(*f));
    f->count = 1;
    f->reset_in = -1;
    if ((v = json_object_get(o, "room"))) {
        if (json_is_string(v))
            f->room = fbr_xstrdup(json_string_value(v));
        else if (json_is_integer(v)) {
            char buf[32];
            snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            f->room = fbr_xstrdup(buf);
        } else {
            snprintf(err, errlen, "'room' must be a string or an integer");
            goto fail;
        }
    }
    if ((v = json_object_get(o, "count"))) {
        if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) == 0) {
            snprintf(err, errlen, "'count' must be a positive integer or -1 (until cleared)");
            goto fail;
        }
        f->count = (long)json_integer_value(v);
    }
    if ((v = json_object_get(o, "status"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 200 || json_integer_value(v) > 599) {
            snprintf(err, errlen, "'status' must be an HTTP status from 200 to 599");
            goto fail;
        }
        f->status = (int)json_integer_value(v);
    }
    if ((v = json_object_get(o, "reset")) && !json_is_boolean(v)) {
        snprintf(err, errlen, "'reset' must be a boolean");
        goto fail;
    }
    f->reset = json_is_true(v);
    if ((v = json_object_get(o, "close")) && !json_is_boolean(v)) {
        snprintf(err, errlen, "'close' must be a boolean");
        goto fail;
    }
    f->close = json_is_true(v);
    if (json_get_ms(o, "stall_ms", &f->stall_ms, err, errlen) < 0 ||
        json_get_ms(o, "delay_ms", &f->delay_ms, err, errlen) < 0 ||
        json_get_ms(o, "reset_in", &f->reset_in, err, errlen) < 0)
        goto fail;
    if ((v = json_object_get(o, "retry_after"))) {
        char buf[32];
        if (json_is_integer(v) && json_integer_value(v) >= 0) {
            snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            f->retry_after = fbr_xstrdup(buf);
        } else if (json_is_string(v) && !strpbrk(json_string_value(v), "\r\n")) {
            f->retry_after = fbr_xstrdup(json_string_value(v));
        } else if (json_is_false(v) || json_is_null(v)) {
            f->retry_after = fbr_xstrdup("");
        } else {
            snprintf(err, errlen, "'retry_after' must be seconds, a string or false");
            goto fail;
        }
    }
    if ((v = json_object_get(o, "reset_headers"))) {
        const char *h = json_string_value(v);
        if (!h || (strcmp(h, "flood") && strcmp(h, "rate") && strcmp(h, "both"))) {
            snprintf(err, errlen, "'reset_headers' must be \"flood\", \"rate\" or \"both\"");
            goto fail;
        }
        f->reset_headers = fbr_xstrdup(h);
    }
    if (!f->status && !f->reset && !f->close && !f->stall_ms && !f->delay_ms) {
        snprintf(err, errlen, "a fault needs one of status, reset, close, stall_ms, delay_ms");
        goto fail;
    }
    return f;
fail:
    fault_free(f);
    return NULL;
}

/* Parses a fault object or an array of them and appends them all, or none; returns FBR_OK or
 * FBR_ERROR with err filled. */
static int faults_add_json(struct hcs *s, json_t *j, char *err, size_t errlen)
{
    struct fault *list = NULL, **tail = &list;
    size_t n = json_is_array(j) ? json_array_size(j) : 1;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_is_array(j) ? json_array_get(j, i) : j;
        struct fault *f = fault_parse(o, err, errlen);
        if (!f) {
            while (list) {
                struct fault *next = list->next;
                fault_free(list);
                list = next;
            }
            return FBR_ERROR;
        }
        *tail = f;
        tail = &f->next;
    }
    struct fault **end = &s->faults;
    while (*end)
        end = &(*end)->next;
    *end = list;
    return FBR_OK;
}

/* Finds the first fault for this room, consumes one use of it and returns a copy of its
 * settings (caller frees with fault_free), or NULL. */
static struct fault *fault_take(struct hcs *s, const struct room *r, const char *key)
{
    for (struct fault **pp = &s->faults; *pp; pp = &(*pp)->next) {
        struct fault *f = *pp;
        if (f->room && strcmp(f->room, key) != 0 &&
            !(r && (strcmp(f->room, r->id) == 0 || (r->name && strcmp(f->room, r->name) == 0))))
            continue;
        struct fault *copy = fbr_xcalloc(1, sizeof(*copy));
        *copy = *f;
        copy->room = NULL;
        copy->next = NULL;
        copy->retry_after = f->retry_after ? fbr_xstrdup(f->retry_after) : NULL;
        copy->reset_headers = f->reset_headers ? fbr_xstrdup(f->reset_headers) : NULL;
        if (f->count > 0 && --f->count == 0) {
            *pp = f->next;
            fault_free(f);
        }
        s->stats.faults_injected++;
        return copy;
    }
    return NULL;
}

static json_t *faults_json(const struct hcs *s)
{
    json_t *a = json_array();
    for (const struct fault *f = s->faults; f; f = f->next) {
        json_t *o = json_object();
        json_object_set_new(o, "room", f->room ? json_string(f->room) : json_null());
        json_object_set_new(o, "count", json_integer(f->count));
        if (f->status)
            json_object_set_new(o, "status", json_integer(f->status));
        if (f->reset)
            json_object_set_new(o, "reset", json_true());
        if (f->close)
            json_object_set_new(o, "close", json_true());
        if (f->stall_ms)
            json_object_set_new(o, "stall_ms", json_integer(f->stall_ms));
        if (f->delay_ms)
            json_object_set_new(o, "delay_ms", json_integer(f->delay_ms));
        if (f->reset_in >= 0)
            json_object_set_new(o, "reset_in", json_integer(f->reset_in));
        if (f->retry_after)
            json_object_set_new(o, "retry_after", json_string(f->retry_after));
        if (f->reset_headers)
            json_object_set_new(o, "reset_headers", json_string(f->reset_headers));
        json_array_append_new(a, o);
    }
    return a;
}

/* ---------------------------------------------------------------------------------------------
 * Connections.  libevhtp 1.2.18 never calls on_conn_error, so a connection is tracked from the
 * post-accept callback to its on_connection_fini hook; deferred work (stalls, delays, resets)
 * hangs off it so that a connection that goes away cancels its own timers.
 */
enum pending_kind { PENDING_NONE, PENDING_PROCESS, PENDING_REPLY, PENDING_RESET };

struct conn {
    struct hcs *srv;
    evhtp_connection_t *ec;
    struct conn *prev, *next; /* every open connection, so that shutdown can free them */
    uint64_t body_bytes;
    int too_large;
    struct event *timer;
    enum pending_kind pending;
    evhtp_request_t *req;
    struct fault *fault; /* owned: settings of the fault being applied */
    int status;          /* PENDING_REPLY: the status to send */
};

static void conn_cancel(struct conn *c)
{
    if (c->timer) {
        event_free(c->timer);
        c->timer = NULL;
    }
    c->pending = PENDING_NONE;
    c->req = NULL;
    if (c->fault) {
        fault_free(c->fault);
        c->fault = NULL;
    }
}

static evhtp_res on_conn_fini(evhtp_connection_t *ec, void *arg)
{
    struct conn *c = arg;
    c->srv->stats.conn_open--;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    conn_cancel(c);
    free(c);
    return EVHTP_RES_OK;
}

static evhtp_res on_headers(evhtp_request_t *req, evhtp_headers_t *hdrs, void *arg)
{
    struct conn *c = arg;
    c->body_bytes = 0;
    c->too_large = evhtp_request_content_len(req) > c->srv->max_body;
    return EVHTP_RES_OK;
}

/* Counts body bytes; past the limit they are drained here so that they never reach buffer_in,
 * and the final callback answers 413 (the only pattern measured to answer without leaking). */
static evhtp_res on_read(evhtp_request_t *req, struct evbuffer *buf, void *arg)
{
    struct conn *c = arg;
    c->body_bytes += evbuffer_get_length(buf);
    if (c->body_bytes > c->srv->max_body)
        c->too_large = 1;
    if (c->too_large) {
        evbuffer_drain(buf, evbuffer_get_length(buf));
        evbuffer_drain(req->buffer_in, evbuffer_get_length(req->buffer_in));
    }
    return EVHTP_RES_OK;
}

static evhtp_res on_accept(evhtp_connection_t *ec, void *arg)
{
    struct hcs *s = arg;
    struct conn *c = fbr_xcalloc(1, sizeof(*c));
    c->srv = s;
    c->ec = ec;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->stats.conn_open++;
    s->stats.conn_total++;
    if (s->stats.conn_open > s->stats.conn_max)
        s->stats.conn_max = s->stats.conn_open;
    evhtp_connection_set_hook(ec, evhtp_hook_on_connection_fini, (evhtp_hook)on_conn_fini, c);
    evhtp_connection_set_hook(ec, evhtp_hook_on_headers, (evhtp_hook)on_headers, c);
    evhtp_connection_set_hook(ec, evhtp_hook_on_read, (evhtp_hook)on_read, c);
    return EVHTP_RES_OK;
}

static struct conn *conn_of(evhtp_request_t *req)
{
    evhtp_connection_t *ec = evhtp_request_get_connection(req);
    return ec && ec->hooks ? ec->hooks->on_connection_fini_arg : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Replies.
 */
static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status >= 500 ? "Server Error" : status >= 400 ? "Client Error" : "OK";
    }
}

static void add_header(evhtp_request_t *req, const char *name, const char *value)
{
    evhtp_headers_add_header(req->headers_out, evhtp_header_new(name, value, 0, 1));
}

static void add_header_u64(evhtp_request_t *req, const char *name, uint64_t value)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRIu64, value);
    add_header(req, name, buf);
}

/* Sets a JSON body (steals the reference). */
static void set_json_body(evhtp_request_t *req, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    add_header(req, "Content-Type", "application/json");
    evbuffer_add(req->buffer_out, text, strlen(text));
    free(text);
}

static void set_error_body(evhtp_request_t *req, int status, const char *msg)
{
    set_json_body(req, json_pack("{s:{s:i,s:s,s:s}}", "error", "code", status, "message", msg,
                                 "type", reason_phrase(status)));
}

/* Closes the connection after this reply.  evhtp_request_set_keepalive(req, 0) alone did not
 * close it in 1.2.18 (measured); clearing the request flag does, and adds "Connection: close". */
static void no_keepalive(evhtp_request_t *req)
{
    evhtp_request_set_keepalive(req, 0);
    evhtp_request_disable_flag(req, EVHTP_REQ_FLAG_KEEPALIVE);
}

static void send_now(struct hcs *s, evhtp_request_t *req, int status)
{
    if (status >= 0 && status < 600)
        s->stats.by_status[status]++;
    evhtp_send_reply(req, (evhtp_res)status);
}

static void add_rate_headers(evhtp_request_t *req, struct window_view tok, struct window_view room)
{
    add_header_u64(req, "X-Ratelimit-Limit", tok.limit);
    add_header_u64(req, "X-Ratelimit-Remaining", tok.remaining);
    add_header_u64(req, "X-Ratelimit-Reset", tok.reset_s);
    add_header_u64(req, "X-FloodControl-Limit", room.limit);
    add_header_u64(req, "X-FloodControl-Remaining", room.remaining);
    add_header_u64(req, "X-FloodControl-Reset", room.reset_s);
}

/* ---------------------------------------------------------------------------------------------
 * Request parsing helpers.
 */
static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes src[0..len) into out (NUL-terminated); plus_space turns '+' into ' ' (query
 * strings only).  Returns FBR_OK, or FBR_ERROR on bad escapes, NUL bytes or overflow. */
static int pct_decode(const char *src, size_t len, char *out, size_t outlen, int plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = src[i];
        if (ch == '%') {
            int hi = i + 2 < len ? hexval(src[i + 1]) : -1;
            int lo = i + 2 < len ? hexval(src[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return FBR_ERROR;
            ch = (char)(hi * 16 + lo);
            i += 2;
        } else if (ch == '+' && plus_space) {
            ch = ' ';
        }
        if (ch == '\0' || o + 1 >= outlen)
            return FBR_ERROR;
        out[o++] = ch;
    }
    out[o] = '\0';
    return FBR_OK;
}

/* Finds query parameter `name` in the raw query and decodes its value into out. Returns 1 when
 * found, 0 when absent, -1 when malformed. */
static int query_param(const char *query, const char *name, char *out, size_t outlen)
{
    if (!query)
        return 0;
    size_t nlen = strlen(name);
    const char *p = query;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t)(amp - p) : strlen(p);
        if (plen >= nlen && strncmp(p, name, nlen) == 0 && (plen == nlen || p[nlen] == '=')) {
            if (plen == nlen) {
                out[0] = '\0';
                return 1;
            }
            return pct_decode(p + nlen + 1, plen - nlen - 1, out, outlen, 1) < 0 ? -1 : 1;
        }
        if (!amp)
            break;
        p = amp + 1;
    }
    return 0;
}

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static const char *req_path(evhtp_request_t *req)
{
    return req->uri && req->uri->path && req->uri->path->full ? req->uri->path->full : "/";
}

static const char *req_query(evhtp_request_t *req)
{
    return req->uri && req->uri->query_raw ? (const char *)req->uri->query_raw : NULL;
}

/* Extracts the token: the Authorization: Bearer header first (the spec prefers it), then the
 * auth_token query parameter.  Returns 1 found, 0 missing, -1 malformed. */
static int find_token(evhtp_request_t *req, char *out, size_t outlen)
{
    const char *auth = evhtp_kv_find(req->headers_in, "Authorization");
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0) {
        const char *t = auth + 7;
        while (*t == ' ')
            t++;
        size_t n = strlen(t);
        while (n && t[n - 1] == ' ')
            n--;
        if (n == 0 || n >= outlen)
            return n ? -1 : 0;
        memcpy(out, t, n);
        out[n] = '\0';
        return 1;
    }
    int q = query_param(req_query(req), "auth_token", out, outlen);
    if (q == 1 && out[0] == '\0')
        return 0;
    return q;
}

/* ---------------------------------------------------------------------------------------------
 * Body validation, field by field (hipchat-api.md section 1).  Returns NULL when valid, else a
 * message for the 400 reply written into err.
 */
static const char *validate_string(json_t *body, const char *key, size_t min, size_t max,
                                   const char *const *allowed, char *err, size_t errlen)
{
    json_t *v = json_object_get(body, key);
    if (!v)
        return NULL;
    if (!json_is_string(v)) {
        snprintf(err, errlen, "'%s' must be a string", key);
        return err;
    }
    const char *str = json_string_value(v);
    size_t n = utf8_chars(str, json_string_length(v));
    if (allowed) {
        for (size_t i = 0; allowed[i]; i++) {
            if (strcmp(allowed[i], str) == 0)
                return NULL;
        }
        snprintf(err, errlen, "'%s' is not one of the allowed values", key);
        return err;
    }
    if (n < min || n > max) {
        snprintf(err, errlen, "'%s' must be %zu to %zu characters long, got %zu", key, min, max, n);
        return err;
    }
    return NULL;
}

static const char *validate_body(const struct hcs *s, json_t *body, char *err, size_t errlen)
{
    static const char *const formats[] = {"html", "text", NULL};
    static const char *const colors[] = {"yellow", "green",  "red", "purple",
                                         "gray",   "random", NULL};
    static const char *const known[] = {"message", "message_format", "color", "notify",
                                        "from",    "attach_to",      "card",  NULL};
    if (!json_is_object(body)) {
        snprintf(err, errlen, "the request body must be a JSON object");
        return err;
    }
    json_t *msg = json_object_get(body, "message");
    if (!msg) {
        snprintf(err, errlen, "'message' is required");
        return err;
    }
    if (validate_string(body, "message", 1, HCS_MAX_MESSAGE_CHARS, NULL, err, errlen) ||
        validate_string(body, "message_format", 0, 0, formats, err, errlen) ||
        validate_string(body, "color", 0, 0, colors, err, errlen) ||
        validate_string(body, "from", 0, HCS_MAX_FROM_CHARS, NULL, err, errlen) ||
        validate_string(body, "attach_to", 0, HCS_MAX_ATTACH_TO_CHARS, NULL, err, errlen))
        return err;
    json_t *v = json_object_get(body, "notify");
    if (v && !json_is_boolean(v)) {
        snprintf(err, errlen, "'notify' must be a boolean");
        return err;
    }
    v = json_object_get(body, "card");
    if (v && !json_is_object(v)) {
        snprintf(err, errlen, "'card' must be an object");
        return err;
    }
    if (s->strict_keys) {
        const char *key;
        json_object_foreach(body, key, v)
        {
            size_t i = 0;
            while (known[i] && strcmp(known[i], key) != 0)
                i++;
            if (!known[i]) {
                snprintf(err, errlen, "unknown field '%.64s'", key);
                return err;
            }
        }
    }
    return NULL;
}

static const char *str_or(json_t *body, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(body, key));
    return v ? v : dflt;
}

/* ---------------------------------------------------------------------------------------------
 * POST /v2/room/{id_or_name}/notification
 */
static void schedule(struct conn *c, evhtp_request_t *req, enum pending_kind kind, long ms);

/* Answers a notification request: runs the fault (if any), auth, limits, validation and storage,
 * and fills req's reply.  Returns the status to send. */
static int notification_reply(struct hcs *s, evhtp_request_t *req, const char *key,
                              const struct fault *f)
{
    uint64_t now = now_s();
    char token[HCS_MAX_TOKEN], err[256];
    struct room *room = hmap_get(&s->rooms, key);
    int have = find_token(req, token, sizeof(token));
    struct token_state *ts = have == 1 ? token_get(s, token, 0) : NULL;
    struct window_view tv = window_peek(ts ? &ts->window : NULL, s->token_rate, now);
    struct window_view rv = window_peek(room ? &room->window : NULL, s->room_rate, now);

    if (f && f->status) {
        const char *which = f->reset_headers ? f->reset_headers : "flood";
        if (f->status == 429 && f->reset_in >= 0) {
            if (strcmp(which, "rate") == 0 || strcmp(which, "both") == 0)
                tv.remaining = 0, tv.reset_s = now + (uint64_t)f->reset_in;
            if (strcmp(which, "flood") == 0 || strcmp(which, "both") == 0)
                rv.remaining = 0, rv.reset_s = now + (uint64_t)f->reset_in;
        }
        add_rate_headers(req, tv, rv);
        if (f->retry_after && f->retry_after[0])
            add_header(req, "Retry-After", f->retry_after);
        else if (!f->retry_after && f->status == 429 && f->reset_in >= 0)
            add_header_u64(req, "Retry-After", (uint64_t)f->reset_in);
        if (f->status != 204 && f->status != 304)
            set_error_body(req, f->status, "injected fault");
        return f->status;
    }

    int status = 0;
    const char *msg = NULL;
    if (have < 0) {
        status = 401, msg = "Invalid OAuth session";
    } else if (have == 0) {
        status = 401, msg = "Authenticated requests only.";
    } else if (!ts && !s->any_token && !(room && room_has_token(room, token))) {
        status = 401, msg = "Invalid OAuth session";
    } else if (!room && (!s->any_room || s->nrooms >= s->max_rooms)) {
        status = 404, msg = "Room not found";
    }
    if (!status && !room) {
        room = room_add(s, key, NULL);
        rv = window_peek(&room->window, s->room_rate, now);
    }
    if (!status) {
        int global = 0;
        for (size_t i = 0; i < s->nglobal_tokens; i++)
            global |= strcmp(s->global_tokens[i], token) == 0;
        if (!global && !s->any_token && !room_has_token(room, token))
            status = 401, msg = "This token has no access to this room";
    }
    if (status) {
        add_rate_headers(req, tv, rv);
        set_error_body(req, status, msg);
        return status;
    }
    if (!ts) {
        /* Only --any-token gets here with unbounded token strings: past max_tokens live ones,
         * the newcomers share one window so that memory stays bounded. */
        if (s->tokens.count >= s->max_tokens)
            hmap_filter(&s->tokens, drop_expired_token, &now);
        ts = s->tokens.count >= s->max_tokens ? &s->overflow_token : token_get(s, token, 1);
    }
    if (window_hit(&ts->window, s->token_rate, now) < 0) {
        tv = window_peek(&ts->window, s->token_rate, now);
        add_rate_headers(req, tv, rv);
        add_header_u64(req, "Retry-After", tv.reset_s - now);
        set_error_body(req, 429, "You have exceeded the rate limit.");
        return 429;
    }
    tv = window_peek(&ts->window, s->token_rate, now);

    char flag[16];
    if (query_param(req_query(req), "auth_test", flag, sizeof(flag)) == 1 &&
        strcmp(flag, "true") == 0) {
        add_rate_headers(req, tv, rv);
        set_json_body(req,
                      json_pack("{s:{s:i,s:s,s:s}}", "success", "code", 202, "type", "Accepted",
                                "message", "This auth_token has access to use this method."));
        return 202;
    }

    size_t blen = evbuffer_get_length(req->buffer_in);
    const char *btext = blen ? (const char *)evbuffer_pullup(req->buffer_in, -1) : "";
    json_error_t jerr;
    json_t *body = json_loadb(btext, blen, JSON_REJECT_DUPLICATES, &jerr);
    const char *bad = NULL;
    if (!body) {
        snprintf(err, sizeof(err), "the request body is not valid JSON: %s", jerr.text);
        bad = err;
    } else {
        bad = validate_body(s, body, err, sizeof(err));
    }
    if (bad) {
        json_decref(body);
        add_rate_headers(req, tv, rv);
        set_error_body(req, 400, bad);
        return 400;
    }
    if (window_hit(&room->window, s->room_rate, now) < 0) {
        json_decref(body);
        rv = window_peek(&room->window, s->room_rate, now);
        add_rate_headers(req, tv, rv);
        add_header_u64(req, "Retry-After", rv.reset_s - now);
        set_error_body(req, 429, "You have exceeded the flood control limit for this room.");
        return 429;
    }
    rv = window_peek(&room->window, s->room_rate, now);

    const char *delivery = evhtp_kv_find(req->headers_in, "X-Firebridge-Delivery");
    json_t *rec = json_pack("{s:s,s:I,s:s,s:s,s:b,s:s,s:s,s:I,s:o}", "room", room->id, "seq",
                            (json_int_t)(s->next_seq + 1), "message",
                            json_string_value(json_object_get(body, "message")), "color",
                            str_or(body, "color", "yellow"), "notify",
                            json_is_true(json_object_get(body, "notify")), "message_format",
                            str_or(body, "message_format", "html"), "from",
                            str_or(body, "from", ""), "received_ms", (json_int_t)fbr_wall_ms(),
                            "delivery", delivery ? json_string(delivery) : json_null());
    if (json_object_get(body, "attach_to"))
        json_object_set(rec, "attach_to", json_object_get(body, "attach_to"));
    if (json_object_get(body, "card"))
        json_object_set(rec, "card", json_object_get(body, "card"));
    json_decref(body);
    char *line = json_dumps(rec, JSON_COMPACT);
    size_t size = strlen(line);
    if (!s->quiet) {
        fputs(line, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    json_decref(rec);
    store_message(s, room, line, size);
    s->stats.accepted++;
    add_rate_headers(req, tv, rv);
    return 204;
}

/* Runs the notification after any stall; sends now or after the fault's delay. */
static void notification_finish(struct hcs *s, struct conn *c, evhtp_request_t *req,
                                const char *key, int deferred)
{
    const struct fault *f = c ? c->fault : NULL;
    if (f && f->reset) {
        if (!deferred)
            evhtp_request_pause(req);
        schedule(c, req, PENDING_RESET, 0);
        return;
    }
    int status = notification_reply(s, req, key, f);
    if (f && f->close)
        no_keepalive(req);
    if (f && f->delay_ms) {
        if (!deferred)
            evhtp_request_pause(req);
        c->status = status;
        schedule(c, req, PENDING_REPLY, f->delay_ms);
        return;
    }
    if (c && c->fault) {
        fault_free(c->fault);
        c->fault = NULL;
    }
    send_now(s, req, status);
    if (deferred)
        evhtp_request_resume(req);
}

/* Extracts the decoded room key of /v2/room/{id_or_name}/notification; FBR_OK or FBR_ERROR. */
static int notification_room(const char *path, char *key, size_t keylen)
{
    static const char prefix[] = "/v2/room/", suffix[] = "/notification";
    size_t plen = strlen(path);
    if (plen <= sizeof(prefix) - 1 + sizeof(suffix) - 1 ||
        strncmp(path, prefix, sizeof(prefix) - 1) != 0 ||
        strcmp(path + plen - (sizeof(suffix) - 1), suffix) != 0)
        return FBR_ERROR;
    const char *seg = path + sizeof(prefix) - 1;
    size_t seglen = plen - (sizeof(prefix) - 1) - (sizeof(suffix) - 1);
    if (memchr(seg, '/', seglen))
        return FBR_ERROR;
    return pct_decode(seg, seglen, key, keylen, 0);
}

static void handle_notification(struct hcs *s, evhtp_request_t *req, const char *key)
{
    struct conn *c = conn_of(req);
    s->stats.notifications++;
    struct fault *f = fault_take(s, hmap_get(&s->rooms, key), key);
    if (!c) {
        fault_free(f), f = NULL;
    } else {
        conn_cancel(c);
        c->fault = f;
    }
    if (f && f->stall_ms) {
        evhtp_request_pause(req);
        schedule(c, req, PENDING_PROCESS, f->stall_ms);
        return;
    }
    notification_finish(s, c, req, key, 0);
}

/* ---------------------------------------------------------------------------------------------
 * Deferred work.
 */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    evhtp_request_t *req = c->req;
    enum pending_kind kind = c->pending;
    event_free(c->timer);
    c->timer = NULL;
    c->pending = PENDING_NONE;
    switch (kind) {
    case PENDING_PROCESS: {
        /* A client that gave up during the stall (closed, reset, or sent more while waiting for
         * this answer) gets nothing: the request is dropped unprocessed, as by a hung server. */
        struct bufferevent *bev = evhtp_connection_get_bev(c->ec);
        evutil_socket_t sock = bufferevent_getfd(bev);
        char probe;
        errno = 0;
        ssize_t n = sock >= 0 ? recv(sock, &probe, 1, MSG_PEEK | MSG_DONTWAIT) : 0;
        if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) ||
            evbuffer_get_length(bufferevent_get_input(bev)) > 0) {
            c->srv->stats.abandoned++;
            evhtp_connection_free(c->ec); /* runs on_conn_fini, which frees c */
            break;
        }
        char key[HCS_MAX_ROOM_KEY];
        if (notification_room(req_path(req), key, sizeof(key)) < 0)
            key[0] = '\0';
        c->fault->stall_ms = 0;
        notification_finish(c->srv, c, req, key, 1);
        break;
    }
    case PENDING_REPLY:
        fault_free(c->fault);
        c->fault = NULL;
        send_now(c->srv, req, c->status);
        evhtp_request_resume(req);
        break;
    case PENDING_RESET: {
        /* SO_LINGER 0 makes close() send RST: the peer sees a reset, not an orderly EOF. */
        struct linger lg = {1, 0};
        evutil_socket_t sock = bufferevent_getfd(evhtp_connection_get_bev(c->ec));
        if (sock >= 0)
            setsockopt(sock, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        c->srv->stats.by_status[0]++;
        evhtp_connection_free(c->ec); /* runs on_conn_fini, which frees c */
        break;
    }
    case PENDING_NONE:
        break;
    }
}

static void schedule(struct conn *c, evhtp_request_t *req, enum pending_kind kind, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (c->timer)
        event_free(c->timer);
    c->timer = evtimer_new(c->srv->base, on_timer, c);
    c->pending = kind;
    c->req = req;
    evtimer_add(c->timer, &tv);
}

/* ---------------------------------------------------------------------------------------------
 * Control endpoints.
 */
static json_t *stats_json(const struct hcs *s)
{
    json_t *by = json_object();
    uint64_t rejected = 0;
    for (int i = 100; i < 600; i++) {
        if (!s->stats.by_status[i])
            continue;
        char k[8];
        snprintf(k, sizeof(k), "%d", i);
        json_object_set_new(by, k, json_integer((json_int_t)s->stats.by_status[i]));
        if (i >= 300)
            rejected += s->stats.by_status[i];
    }
    return json_pack(
        "{s:I,s:I,s:I,s:I,s:o,s:I,s:I,s:I,s:{s:I,s:I,s:I},s:I,s:I}", "requests",
        (json_int_t)s->stats.requests, "notifications", (json_int_t)s->stats.notifications,
        "accepted", (json_int_t)s->stats.accepted, "rejected", (json_int_t)rejected, "by_status",
        by, "resets", (json_int_t)s->stats.by_status[0], "abandoned",
        (json_int_t)s->stats.abandoned, "faults_injected", (json_int_t)s->stats.faults_injected,
        "connections", "open", (json_int_t)s->stats.conn_open, "max_open",
        (json_int_t)s->stats.conn_max, "total", (json_int_t)s->stats.conn_total, "messages_stored",
        (json_int_t)s->nmessages, "messages_dropped", (json_int_t)s->stats.messages_dropped);
}

static void reply_json(struct hcs *s, evhtp_request_t *req, int status, json_t *body)
{
    set_json_body(req, body);
    send_now(s, req, status);
}

static void reply_error(struct hcs *s, evhtp_request_t *req, int status, const char *msg)
{
    set_error_body(req, status, msg);
    send_now(s, req, status);
}

static void handle_faults(struct hcs *s, evhtp_request_t *req, htp_method m)
{
    if (m == htp_method_GET) {
        reply_json(s, req, 200, faults_json(s));
        return;
    }
    if (m == htp_method_DELETE) {
        faults_clear(s);
        reply_json(s, req, 200, faults_json(s));
        return;
    }
    if (m != htp_method_POST) {
        reply_error(s, req, 405, "use GET, POST or DELETE");
        return;
    }
    size_t blen = evbuffer_get_length(req->buffer_in);
    const char *btext = blen ? (const char *)evbuffer_pullup(req->buffer_in, -1) : "";
    json_error_t jerr;
    char err[256];
    json_t *j = json_loadb(btext, blen, 0, &jerr);
    if (!j) {
        snprintf(err, sizeof(err), "invalid JSON: %s", jerr.text);
        reply_error(s, req, 400, err);
        return;
    }
    if (json_is_object(j) && json_is_true(json_object_get(j, "clear"))) {
        faults_clear(s);
        json_object_del(j, "clear");
        if (json_object_size(j) == 0) {
            json_decref(j);
            reply_json(s, req, 200, faults_json(s));
            return;
        }
    }
    int rc = faults_add_json(s, j, err, sizeof(err));
    json_decref(j);
    if (rc < 0)
        reply_error(s, req, 400, err);
    else
        reply_json(s, req, 200, faults_json(s));
}

static int reset_window(void *value, void *arg)
{
    struct token_state *t = value;
    t->window = (struct window){0, 0};
    return 0;
}

static void handle_control(struct hcs *s, evhtp_request_t *req, const char *path, htp_method m)
{
    char key[HCS_MAX_ROOM_KEY];
    size_t plen = strlen(path);
    if (strcmp(path, "/healthz") == 0 && m == htp_method_HEAD) {
        send_now(s, req, 200);
    } else if (strcmp(path, "/healthz") == 0 && m == htp_method_GET) {
        reply_json(s, req, 200, json_pack("{s:s}", "status", "ok"));
    } else if (strcmp(path, "/stats") == 0 && m == htp_method_GET) {
        reply_json(s, req, 200, stats_json(s));
    } else if (strcmp(path, "/stats") == 0 && m == htp_method_DELETE) {
        uint64_t open = s->stats.conn_open;
        memset(&s->stats, 0, sizeof(s->stats));
        s->stats.conn_open = s->stats.conn_max = open;
        reply_json(s, req, 200, stats_json(s));
    } else if (strcmp(path, "/faults") == 0) {
        handle_faults(s, req, m);
    } else if (strcmp(path, "/rooms") == 0 && m == htp_method_DELETE) {
        clear_messages(s);
        reply_json(s, req, 200, json_pack("{s:I}", "messages_stored", (json_int_t)s->nmessages));
    } else if (strcmp(path, "/rooms") == 0 && m == htp_method_GET) {
        json_t *a = json_array();
        for (size_t i = 0; i < s->nrooms; i++) {
            struct room *r = s->room_list[i];
            json_array_append_new(a, json_pack("{s:s,s:o,s:I}", "id", r->id, "name",
                                               r->name ? json_string(r->name) : json_null(),
                                               "messages", (json_int_t)r->nmessages));
        }
        reply_json(s, req, 200, a);
    } else if (strcmp(path, "/limits") == 0 && m == htp_method_DELETE) {
        hmap_filter(&s->tokens, reset_window, NULL);
        for (size_t i = 0; i < s->nrooms; i++)
            s->room_list[i]->window = (struct window){0, 0};
        reply_json(s, req, 200, json_pack("{s:s}", "status", "ok"));
    } else if (plen > 16 && strncmp(path, "/rooms/", 7) == 0 &&
               strcmp(path + plen - 9, "/messages") == 0 && !memchr(path + 7, '/', plen - 16) &&
               pct_decode(path + 7, plen - 16, key, sizeof(key), 0) == 0) {
        struct room *r = hmap_get(&s->rooms, key);
        if (!r) {
            reply_error(s, req, 404, "Room not found");
        } else if (m == htp_method_GET) {
            /* Spliced from the stored JSON texts: no tree is rebuilt for 100,000 messages. */
            char since_s[24];
            uint64_t since = 0;
            if (query_param(req_query(req), "since", since_s, sizeof(since_s)) == 1)
                since = strtoull(since_s, NULL, 10);
            const char *sep = "";
            evbuffer_add(req->buffer_out, "[", 1);
            for (struct message *msg = r->head; msg; msg = msg->room_next) {
                if (msg->seq <= since)
                    continue;
                evbuffer_add(req->buffer_out, sep, strlen(sep));
                evbuffer_add(req->buffer_out, msg->json, msg->size);
                sep = ",";
            }
            evbuffer_add(req->buffer_out, "]", 1);
            add_header(req, "Content-Type", "application/json");
            send_now(s, req, 200);
        } else {
            reply_error(s, req, 405, "use GET");
        }
    } else {
        reply_error(s, req, 404, "no such endpoint");
    }
}

static void on_request(evhtp_request_t *req, void *arg)
{
    struct hcs *s = arg;
    struct conn *c = conn_of(req);
    s->stats.requests++;
    if (c && c->too_large) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request body larger than %zu bytes", s->max_body);
        no_keepalive(req);
        reply_error(s, req, 413, msg);
        return;
    }
    const char *path = req_path(req);
    htp_method m = evhtp_request_get_method(req);
    char key[HCS_MAX_ROOM_KEY];
    if (strncmp(path, "/v2/room/", 9) == 0) {
        int bad = notification_room(path, key, sizeof(key)) < 0;
        if (!bad && m == htp_method_POST) {
            handle_notification(s, req, key);
            return;
        }
        /* Every API response carries the rate headers; nothing is counted for these. */
        uint64_t now = now_s();
        add_rate_headers(req, window_peek(NULL, s->token_rate, now),
                         window_peek(NULL, s->room_rate, now));
        reply_error(s, req, bad ? 404 : 405, bad ? "Not found" : "use POST");
        return;
    }
    handle_control(s, req, path, m);
}

/* ---------------------------------------------------------------------------------------------
 * Configuration and start-up.
 */
static int add_room_token_arg(struct hcs *s, const char *arg)
{
    const char *colon = strrchr(arg, ':');
    if (!colon || colon == arg || !colon[1] || (size_t)(colon - arg) >= HCS_MAX_ROOM_KEY)
        return FBR_ERROR;
    char id[HCS_MAX_ROOM_KEY];
    memcpy(id, arg, (size_t)(colon - arg));
    id[colon - arg] = '\0';
    room_add_token(s, room_add(s, id, NULL), colon + 1);
    return FBR_OK;
}

static void add_global_token(struct hcs *s, const char *token)
{
    s->global_tokens =
        fbr_xrealloc(s->global_tokens, (s->nglobal_tokens + 1) * sizeof(*s->global_tokens));
    s->global_tokens[s->nglobal_tokens++] = fbr_xstrdup(token);
    token_get(s, token, 1)->configured = 1;
}

/* Rejects keys of object o that are not in the NULL-terminated list, naming the JSON path. */
static int check_keys(json_t *o, const char *const *known, const char *file, const char *where)
{
    const char *key;
    json_t *v;
    if (!json_is_object(o)) {
        fprintf(stderr, "hipchat-server: %s: %s must be an object\n", file, where);
        return FBR_ERROR;
    }
    json_object_foreach(o, key, v)
    {
        size_t i = 0;
        while (known[i] && strcmp(known[i], key) != 0)
            i++;
        if (!known[i]) {
            fprintf(stderr, "hipchat-server: %s: unknown key %s.%s\n", file, where, key);
            return FBR_ERROR;
        }
    }
    return FBR_OK;
}

/* Loads the JSON config file; see README-hipchat-server.md for its shape. */
static int load_config(struct hcs *s, const char *file)
{
    static const char *const top_keys[] = {"rooms",     "tokens",     "any_token", "any_room",
                                           "room_rate", "token_rate", "faults",    NULL};
    static const char *const room_keys[] = {"id", "name", "tokens", NULL};
    json_error_t jerr;
    char err[256];
    json_t *j = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        fprintf(stderr, "hipchat-server: %s:%d: %s\n", file, jerr.line, jerr.text);
        return FBR_ERROR;
    }
    int rc = -1;
    json_t *rooms = json_object_get(j, "rooms"), *v;
    size_t i;
    if (check_keys(j, top_keys, file, "$") < 0)
        goto out;
    if ((rooms && !json_is_array(rooms)) ||
        (json_object_get(j, "tokens") && !json_is_array(json_object_get(j, "tokens")))) {
        fprintf(stderr, "hipchat-server: %s: $.rooms and $.tokens must be arrays\n", file);
        goto out;
    }
    json_array_foreach(rooms, i, v)
    {
        char where[48];
        snprintf(where, sizeof(where), "$.rooms[%zu]", i);
        if (check_keys(v, room_keys, file, where) < 0)
            goto out;
        json_t *id = json_object_get(v, "id");
        char idbuf[32];
        const char *ids = json_string_value(id);
        if (json_is_integer(id)) {
            snprintf(idbuf, sizeof(idbuf), "%" JSON_INTEGER_FORMAT, json_integer_value(id));
            ids = idbuf;
        }
        if (!ids || !*ids || strlen(ids) >= HCS_MAX_ROOM_KEY) {
            fprintf(stderr, "hipchat-server: %s: rooms[%zu].id must be a string or integer\n", file,
                    i);
            goto out;
        }
        struct room *r = room_add(s, ids, json_string_value(json_object_get(v, "name")));
        size_t k;
        json_t *t;
        json_array_foreach(json_object_get(v, "tokens"), k, t)
        {
            if (json_is_string(t) && json_string_length(t) > 0)
                room_add_token(s, r, json_string_value(t));
        }
    }
    json_array_foreach(json_object_get(j, "tokens"), i, v)
    {
        if (json_is_string(v) && json_string_length(v) > 0)
            add_global_token(s, json_string_value(v));
    }
    s->any_token |= json_is_true(json_object_get(j, "any_token"));
    s->any_room |= json_is_true(json_object_get(j, "any_room"));
    const char *rr = json_string_value(json_object_get(j, "room_rate"));
    const char *tr = json_string_value(json_object_get(j, "token_rate"));
    if ((rr && parse_rate(rr, &s->room_rate) < 0) || (tr && parse_rate(tr, &s->token_rate) < 0)) {
        fprintf(stderr, "hipchat-server: %s: rates look like \"30/60\" or \"off\"\n", file);
        goto out;
    }
    if ((v = json_object_get(j, "faults")) && faults_add_json(s, v, err, sizeof(err)) < 0) {
        fprintf(stderr, "hipchat-server: %s: faults: %s\n", file, err);
        goto out;
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}

static void usage(FILE *out)
{
    fputs("usage: hipchat-server [options]\n"
          "  --listen ADDR:PORT     listen address (default 127.0.0.1:0; port 0 picks one)\n"
          "  --config FILE          JSON config: rooms, tokens, rates, faults\n"
          "  --room ID:TOKEN        a room and a token valid for it (repeatable)\n"
          "  --token TOKEN          a token valid for every room (repeatable)\n"
          "  --any-token            accept any non-empty token\n"
          "  --any-room             create unknown rooms on first use instead of 404\n"
          "  --room-rate N/SEC      flood control per room (default 30/60; 'off' lifts it)\n"
          "  --token-rate N/SEC     rate limit per token (default 500/300; 'off' lifts it)\n"
          "  --no-limits            same as --room-rate off --token-rate off\n"
          "  --strict-keys          reject unknown body fields with 400\n"
          "  --max-messages N       messages kept over all rooms (default 100000)\n"
          "  --max-stored-bytes N   bytes of messages kept, as JSON (default 134217728)\n"
          "  --max-rooms N          rooms --any-room may create (default 100000)\n"
          "  --max-tokens N         tokens --any-token tracks one by one (default 10000)\n"
          "  --quiet                do not print accepted messages on stdout\n"
          "  --max-body BYTES       largest request body (default 1048576)\n"
          "  --idle-timeout SEC     close idle connections (default 60)\n"
          "  --fault JSON           a fault rule, as for POST /faults (repeatable)\n"
          "  --tls-cert FILE --tls-key FILE   serve HTTPS with this certificate\n",
          out);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopexit(arg, NULL);
}

static int parse_listen(const char *addr, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) + 8 >= hostlen)
        return FBR_ERROR;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || p < 0 || p > 65535)
        return FBR_ERROR;
    if (addr[0] == '[' && colon > addr + 1 && colon[-1] == ']')
        snprintf(host, hostlen, "ipv6:%.*s", (int)(colon - addr - 2), addr + 1);
    else
        snprintf(host, hostlen, "%.*s", (int)(colon - addr), addr);
    *port = (int)p;
    return FBR_OK;
}

static int bound_port(evhtp_t *htp)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(evconnlistener_get_fd(htp->server), (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void hcs_free(struct hcs *s)
{
    clear_messages(s);
    faults_clear(s);
    for (size_t i = 0; i < s->nrooms; i++) {
        struct room *r = s->room_list[i];
        for (size_t k = 0; k < r->ntokens; k++)
            free(r->tokens[k]);
        free(r->tokens);
        free(r->id);
        free(r->name);
        free(r);
    }
    free(s->room_list);
    hmap_free(&s->rooms);
    for (size_t i = 0; i < s->tokens.nbuckets; i++) {
        for (struct hmap_entry *e = s->tokens.buckets[i]; e; e = e->next)
            free(e->value);
    }
    hmap_free(&s->tokens);
    for (size_t i = 0; i < s->nglobal_tokens; i++)
        free(s->global_tokens[i]);
    free(s->global_tokens);
}

int main(int argc, char **argv)
{
    enum {
        OPT_LISTEN = 256,
        OPT_CONFIG,
        OPT_ROOM,
        OPT_TOKEN,
        OPT_ANY_TOKEN,
        OPT_ANY_ROOM,
        OPT_ROOM_RATE,
        OPT_TOKEN_RATE,
        OPT_NO_LIMITS,
        OPT_STRICT,
        OPT_MAX_MESSAGES,
        OPT_MAX_BODY,
        OPT_IDLE,
        OPT_FAULT,
        OPT_CERT,
        OPT_KEY,
        OPT_HELP,
        OPT_MAX_STORED,
        OPT_MAX_ROOMS,
        OPT_MAX_TOKENS,
        OPT_QUIET
    };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"room", required_argument, NULL, OPT_ROOM},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"any-token", no_argument, NULL, OPT_ANY_TOKEN},
        {"any-room", no_argument, NULL, OPT_ANY_ROOM},
        {"room-rate", required_argument, NULL, OPT_ROOM_RATE},
        {"token-rate", required_argument, NULL, OPT_TOKEN_RATE},
        {"no-limits", no_argument, NULL, OPT_NO_LIMITS},
        {"strict-keys", no_argument, NULL, OPT_STRICT},
        {"max-messages", required_argument, NULL, OPT_MAX_MESSAGES},
        {"max-body", required_argument, NULL, OPT_MAX_BODY},
        {"idle-timeout", required_argument, NULL, OPT_IDLE},
        {"fault", required_argument, NULL, OPT_FAULT},
        {"tls-cert", required_argument, NULL, OPT_CERT},
        {"tls-key", required_argument, NULL, OPT_KEY},
        {"help", no_argument, NULL, OPT_HELP},
        {"max-stored-bytes", required_argument, NULL, OPT_MAX_STORED},
        {"max-rooms", required_argument, NULL, OPT_MAX_ROOMS},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {NULL, 0, NULL, 0},
    };
    struct hcs s = {0};
    hmap_init(&s.rooms);
    hmap_init(&s.tokens);
    s.room_rate = (struct rate){30, 60};
    s.token_rate = (struct rate){500, 300};
    s.max_messages = 100000;
    s.max_tokens = 10000;
    s.max_rooms = 100000;
    s.max_stored_bytes = (size_t)128 << 20;
    s.max_body = 1u << 20;
    const char *listen = "127.0.0.1:0", *cert = NULL, *key = NULL;
    long idle = 60;
    int rc = 1, opt;
    char err[256];
    struct rate rr_flag = {0, 0}, tr_flag = {0, 0};
    evhtp_ssl_cfg_t cfg = {0}; /* evhtp keeps a pointer to it: it must outlive the server */

    signal(SIGPIPE, SIG_IGN);
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (opt) {
        case OPT_LISTEN:
            listen = optarg;
            break;
        case OPT_CONFIG:
            if (load_config(&s, optarg) < 0)
                goto out;
            break;
        case OPT_ROOM:
            if (add_room_token_arg(&s, optarg) < 0) {
                fprintf(stderr, "hipchat-server: --room wants ID:TOKEN\n");
                goto out;
            }
            break;
        case OPT_TOKEN:
            add_global_token(&s, optarg);
            break;
        case OPT_ANY_TOKEN:
            s.any_token = 1;
            break;
        case OPT_ANY_ROOM:
            s.any_room = 1;
            break;
        case OPT_ROOM_RATE:
        case OPT_TOKEN_RATE:
            if (parse_rate(optarg, opt == OPT_ROOM_RATE ? &rr_flag : &tr_flag) < 0) {
                fprintf(stderr, "hipchat-server: a rate looks like 30/60 or off\n");
                goto out;
            }
            break;
        case OPT_NO_LIMITS:
            rr_flag = tr_flag = (struct rate){HCS_LIFTED_LIMIT, 1};
            break;
        case OPT_STRICT:
            s.strict_keys = 1;
            break;
        case OPT_QUIET:
            s.quiet = 1;
            break;
        case OPT_MAX_MESSAGES:
        case OPT_MAX_BODY:
        case OPT_MAX_STORED:
        case OPT_MAX_ROOMS:
        case OPT_MAX_TOKENS:
        case OPT_IDLE: {
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || v == 0 || v > (1ull << 40)) {
                fprintf(stderr, "hipchat-server: bad number '%s'\n", optarg);
                goto out;
            }
            if (opt == OPT_MAX_MESSAGES)
                s.max_messages = (size_t)v;
            else if (opt == OPT_MAX_BODY)
                s.max_body = (size_t)v;
            else if (opt == OPT_MAX_STORED)
                s.max_stored_bytes = (size_t)v;
            else if (opt == OPT_MAX_ROOMS)
                s.max_rooms = (size_t)v;
            else if (opt == OPT_MAX_TOKENS)
                s.max_tokens = (size_t)v;
            else
                idle = (long)v;
            break;
        }
        case OPT_FAULT: {
            json_error_t jerr;
            json_t *j = json_loads(optarg, 0, &jerr);
            int bad = !j || faults_add_json(&s, j, err, sizeof(err)) < 0;
            if (bad)
                fprintf(stderr, "hipchat-server: --fault: %s\n", j ? err : jerr.text);
            json_decref(j);
            if (bad)
                goto out;
            break;
        }
        case OPT_CERT:
            cert = optarg;
            break;
        case OPT_KEY:
            key = optarg;
            break;
        case OPT_HELP:
            usage(stdout);
            rc = 0;
            goto out;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc || (!cert != !key)) {
        usage(stderr);
        goto out;
    }
    if (rr_flag.limit)
        s.room_rate = rr_flag;
    if (tr_flag.limit)
        s.token_rate = tr_flag;

    char host[128];
    int port;
    if (parse_listen(listen, host, sizeof(host), &port) < 0) {
        fprintf(stderr, "hipchat-server: bad --listen '%s'\n", listen);
        goto out;
    }
    s.base = event_base_new();
    s.htp = evhtp_new(s.base, NULL);
    evhtp_set_gencb(s.htp, on_request, &s);
    evhtp_set_post_accept_cb(s.htp, on_accept, &s);
    struct timeval idle_tv = {idle, 0};
    evhtp_set_timeouts(s.htp, &idle_tv, &idle_tv);
    if (cert) {
        cfg.pemfile = (char *)cert;
        cfg.privfile = (char *)key;
        cfg.ssl_opts = SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1;
        if (access(cert, R_OK) != 0 || access(key, R_OK) != 0 || evhtp_ssl_init(s.htp, &cfg) != 0) {
            fprintf(stderr, "hipchat-server: cannot load the TLS certificate or key\n");
            goto out;
        }
    }
    if (evhtp_bind_socket(s.htp, host, (uint16_t)port, 1024) != 0) {
        fprintf(stderr, "hipchat-server: cannot listen on %s\n", listen);
        goto out;
    }
    /* Signal handlers before the port is announced: whoever reads it may stop us at once. */
    struct event *sigint = evsignal_new(s.base, SIGINT, on_signal, s.base);
    struct event *sigterm = evsignal_new(s.base, SIGTERM, on_signal, s.base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    printf("listening on %d\n", bound_port(s.htp));
    fflush(stdout);
    fprintf(stderr, "hipchat-server: listening on %s (port %d)%s\n", listen, bound_port(s.htp),
            cert ? " with TLS" : "");
    event_base_dispatch(s.base);
    event_free(sigint);
    event_free(sigterm);
    while (s.conns)
        evhtp_connection_free(s.conns->ec); /* its fini hook unlinks it */
    rc = 0;
out:
    if (s.htp) {
        evhtp_unbind_socket(s.htp);
        evhtp_free(s.htp);
    }
    if (s.base)
        event_base_free(s.base);
    hcs_free(&s);
    return rc;
}
