/*
 * server.c - the inbound HTTP(S) server: libevhtp listeners in the one event loop, the route
 * table, limits, JSON replies and the built-in /healthz, /readyz and /metrics endpoints.  Every
 * inbound request enters firebridge here and is handed to a route handler (intake, built-ins)
 * with its body already read and bounded.
 *
 * libevhtp 1.2.18 needs guarding (see the shared notes): its parser misbehaves on tokens over
 * 8 KiB and it has no header count/size limits, so every way into libevhtp's parser on a
 * connection (its bufferevent callbacks and its resume event, see enter()) is wrapped by a small
 * screener that looks at the header bytes before libevhtp's parser does and rejects oversized
 * request lines and header sections itself.  The same wrapper arms the per-request read
 * deadline (bufferevent timeouts only catch silence, not trickling).  Bodies over max_body are
 * discarded by a per-request on_read hook and answered 413 from the final callback with
 * keep-alive off: the pattern that neither resets nor leaks the connection.
 */
#include "firebridge/server.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h> /* ev_write: see reply_now() */
#include <event2/event.h>
#include <event2/listener.h>
#include <evhtp.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "firebridge/config.h"
#include "firebridge/defaults.h"
#include "firebridge/json.h"
#include "firebridge/log.h"
#include "firebridge/metrics.h"
#include "firebridge/rawread.h"

#define DEF_MAX_URI 8000
#define DEF_MAX_HEADER_LINE 8000
#define DEF_MAX_HEADER_BYTES (32 * 1024)
#define DEF_MAX_HEADERS 100
/* Back-pressure on a client that pipelines requests and does not read the replies: no further
 * request of a connection is parsed while this much of its output is unsent, and its input is
 * not read from the socket beyond IN_HIGH (the largest header section the screener lets through
 * fits, with room to spare), so its memory stays below about OUT_HIGH + IN_HIGH + one reply. */
#define OUT_HIGH (256 * 1024)
#define ACCEPT_PAUSE_MS 250
#define IN_HIGH (DEF_MAX_URI + DEF_MAX_HEADER_BYTES + 24 * 1024)
/* Lingering close after a raw error reply (see closing_writecb): what the client sends meanwhile
 * is read and discarded for at most this long and this much, so that the close does not reset
 * the connection under the reply. */
#define LINGER_MS 2000
#define LINGER_BYTES (1024 * 1024)

/* Where the header screener is in the byte stream of one connection. */
enum scan_phase {
    SCAN_HEAD,       /* request line and headers: screened */
    SCAN_BODY,       /* Content-Length body: counted down, not screened */
    SCAN_CHUNK_SIZE, /* chunked body: a chunk-size line (hex digits, CRLF; no extensions) */
    SCAN_CHUNK_DATA, /* chunked body: the chunk's bytes, counted down */
    SCAN_CHUNK_END,  /* chunked body: the CRLF that must follow a chunk's bytes */
    SCAN_TRAILER,    /* chunked body: trailer lines after the last chunk, up to an empty one */
};

/* Where the screener is in a request line: method SP request-target SP HTTP-version CRLF. */
enum rl_part {
    RL_METHOD,  /* upper-case letters */
    RL_TARGET,  /* visible ASCII: a raw space or control byte ends or breaks it */
    RL_VERSION, /* "HTTP/" digits "." digits */
    RL_END,     /* the CR after the version was seen */
};

/* What an Expect header asked for (RFC 9110 10.1.1). */
enum expectation { EXPECT_NONE, EXPECT_CONTINUE, EXPECT_OTHER };

/* How far the screener has seen the current request of a connection. */
enum req_progress {
    REQ_NONE, /* between requests: nothing of the next one seen (stray CRLFs skipped) */
    REQ_HEAD, /* its request line or headers are arriving */
    REQ_BODY, /* its head is complete, its body is still arriving */
};

struct listener {
    evhtp_t *htp;
    int port;
    char addr[80];
};

struct conn {
    struct fbr_server *srv;
    evhtp_connection_t *c;
    struct conn *prev, *next;
    bufferevent_data_cb ev_read; /* libevhtp's callbacks, which the screener wraps */
    bufferevent_data_cb ev_write;
    bufferevent_event_cb ev_event;
    event_callback_fn ev_resume; /* and its resume event's, wrapped too (see enter()) */
    struct event *deadline;      /* read_timeout for the request in progress (see arm_deadline) */
    uint64_t deadline_ms;        /* when it runs out (fbr_now_ms), 0: no deadline running */
    size_t screened;             /* bytes at the head of the input already screened */
    struct evbuffer *held;       /* the beginning of a header section, out of libevhtp's reach */
    int busy, dead;              /* inside libevhtp's read callback / freed meanwhile */
    int closing;                 /* a raw error reply is being flushed */
    int lingering;               /* it went out: input discarded until EOF or the linger limit */
    size_t lingered;             /* bytes discarded meanwhile */
    int out_blocked;             /* parsing held back: more than OUT_HIGH output unsent */
    int first_request;           /* no request answered yet: the deadline runs from accept */
    /* screener state */
    enum scan_phase phase;
    enum req_progress in_request;
    size_t line_len, head_bytes;
    unsigned nlines;
    char line[64];               /* the start of the current header line */
    int in_name;                 /* still before the ':' of the current header line */
    uint64_t content_length;
    int chunked;
    int cl_seen, te_seen;        /* Content-Length / Transfer-Encoding lines in this head */
    unsigned hosts, auths;       /* Host / Authorization lines in this head */
    enum expectation expect;
    enum rl_part rl;             /* request-line syntax, checked byte by byte */
    unsigned ver_at;             /* bytes of "HTTP/" seen */
    int ver_major, ver_minor;    /* as the screener read them: -1 until it has */
    unsigned char last;          /* the previous head byte: a LF must follow a CR */
    uint64_t chunk_left;         /* bytes of the current chunk (or its size being read) */
    uint64_t chunk_total;        /* bytes of the chunks announced so far in this body */
    unsigned chunk_digits;       /* hex digits of the current chunk-size line */
    /* the request in progress */
    int too_large;
    int early;                   /* answered from its head, its body unread (Expect: 100-continue
                                  * and a refusal): the connection closes once the answer is out */
    int major, minor;            /* the version the request line claimed; -1: not parsed yet */
    uint64_t body_seen;
    uint64_t start_ms;
    char id[24];
    const char *endpoint;        /* metric label of the matched route */
    size_t secret_at;            /* > 0: the path segment starting here is masked in logs */
    struct fbr_http_pending *pending; /* a reply the handler deferred (fbr_http_defer) */
};

/* A deferred reply: the request, paused, until its owner answers or the connection goes. */
struct fbr_http_pending {
    evhtp_request_t *r;
    struct conn *fc; /* NULL once the connection is gone */
    unsigned method;
    char id[24];
};

struct fbr_server {
    struct event_base *base;
    const char *(*ready_check)(void *arg);
    void *ready_arg;
    struct fbr_server_opts opts;
    char *tls_cert, *tls_key, *data_dir;
    struct listener *ls;
    size_t nls;
    int listeners_paused;
    /* accept() failing (EMFILE, ENFILE, ...): listeners paused for ACCEPT_PAUSE_MS at a time;
     * one log line when an episode starts and one when a connection is accepted again */
    struct event *accept_retry;
    uint64_t accept_failures; /* in the current episode; 0: none going on */
    uint64_t accept_since_ms;
    struct fbr_route *routes;
    size_t nroutes;
    uint64_t next_id;
    struct conn *conns;
    size_t nconns;
    int draining;
    struct fbr_metrics *metrics;
    int own_metrics;
    int64_t *m_open;
    uint64_t *m_accepted, *m_bytes_in, *m_bytes_out, *m_backpressure;
    struct fbr_histogram *m_duration;
    struct {
        const char *endpoint; /* route's metric label (pointer identity) */
        int status;
        uint64_t *counter;
    } m_req_cache[16];        /* saves the label formatting on the hot path */
};

static void conn_free(struct conn *fc);
static void close_after_reply(struct conn *fc);
static void on_deadline(evutil_socket_t fd, short what, void *arg);

/* ---- small helpers ---- */

/* libevhtp's method as an FBR_M_* bit (http.h's table), 0 for the others. */
static unsigned method_bit(htp_method m)
{
    switch (m) {
#define FBR_X(name, i)                                                                             \
    case htp_method_##name:                                                                        \
        return FBR_M_##name;
        FBR_HTTP_METHOD_MAP(FBR_X)
#undef FBR_X
    default:
        return 0;
    }
}

static const char *status_label(int status, char *buf, size_t len)
{
    snprintf(buf, len, "%d", status);
    return buf;
}

static void count_reject(struct fbr_server *srv, const char *reason)
{
    (*fbr_metrics_counter(srv->metrics, "firebridge_http_rejected_total",
                          "Requests and connections refused by a limit, by reason", "reason",
                          reason))++;
}

static struct conn *req_conn(struct fbr_http_req *req)
{
    return req->conn;
}

/* The path of r's target (borrowed from r), "/" when it has none. */
static struct fbr_slice req_path(const evhtp_request_t *r)
{
    return fbr_slice_from(r->uri && r->uri->path && r->uri->path->full ? r->uri->path->full : "/");
}

/* ---- replies ---- */

const char *fbr_http_header(struct fbr_http_req *req, const char *name)
{
    evhtp_request_t *r = req->opaque;
    return evhtp_kv_find(r->headers_in, name);
}

void fbr_http_add_header(struct fbr_http_req *req, const char *name, const char *value)
{
    evhtp_request_t *r = req->opaque;
    evhtp_headers_add_header(r->headers_out, evhtp_header_new(name, value, 1, 1));
}

static int put_header(evhtp_kv_t *kv, void *arg)
{
    evbuffer_add_printf(arg, "%s: %s\r\n", kv->key, kv->val);
    return 0;
}

static int header_size(evhtp_kv_t *kv, void *arg)
{
    *(size_t *)arg += kv->klen + kv->vlen + 4;
    return 0;
}

/*
 * The head of a keep-alive HTTP/1.1 200 with a Content-Type (ct, ctlen bytes), written into buf
 * as evhtp_send_reply() would write it (status line, Content-Type, X-Request-Id, then the
 * Content-Length libevhtp adds), byte for byte, without the header objects, the header lookups
 * and the scratch buffer libevhtp builds per reply: every alert's 200 is one (bench/README.md).
 * Returns the head's length, or 0 when it would not fit in cap bytes.
 */
static size_t put_200_head(char *buf, size_t cap, const char *ct, size_t ctlen, const char *id,
                           size_t blen)
{
    size_t idlen = strlen(id);
    if (ctlen + idlen + FBR_U64_DIGITS + 96 > cap)
        return 0;
    char *d = buf;
#define PUT(s, n) (memcpy(d, (s), (n)), d += (n))
#define PUT_LIT(lit) PUT(lit, sizeof(lit) - 1)
    PUT_LIT("HTTP/1.1 200 OK\r\nContent-Type: ");
    PUT(ct, ctlen);
    PUT_LIT("\r\nX-Request-Id: ");
    PUT(id, idlen);
    PUT_LIT("\r\nContent-Length: ");
    d += fbr_fmt_u64(d, blen);
    PUT_LIT("\r\n\r\n");
#undef PUT_LIT
#undef PUT
    return (size_t)(d - buf);
}

/* Whether a reply to r (status, its method) can be a plain head from put_200_head(). */
static int plain_200_case(const evhtp_request_t *r, int status, unsigned method)
{
    return status == 200 && method != FBR_M_HEAD && r->proto == EVHTP_PROTO_11 &&
           (r->flags & EVHTP_REQ_FLAG_KEEPALIVE) && !(r->flags & EVHTP_REQ_FLAG_CHUNKED);
}

/* put_200_head() for a reply whose only header so far is its Content-Type and whose body is in
 * r->buffer_out; 0 when the reply is not that case. */
static size_t plain_200_head(const struct fbr_http_req *req, int status, char *buf, size_t cap)
{
    evhtp_request_t *r = req->opaque;
    if (!plain_200_case(r, status, req->method))
        return 0;
    evhtp_kv_t *ct = TAILQ_FIRST(r->headers_out);
    if (!ct || TAILQ_NEXT(ct, next) || strcmp(ct->key, "Content-Type") != 0)
        return 0;
    return put_200_head(buf, cap, ct->val, ct->vlen, req->id, evbuffer_get_length(r->buffer_out));
}

/* The books of one reply on a screened connection (fc, with its server): bytes out, the
 * request counter by endpoint and status, the duration histogram, and the debug log line (a
 * secret path segment masked). */
static void account_reply(const struct fbr_http_req *req, struct conn *fc, int status, size_t bytes)
{
    struct fbr_server *srv = fc->srv;
    char sl[8];
    *srv->m_bytes_out += bytes;
    const char *ep = fc->endpoint ? fc->endpoint : "none";
    size_t slot = ((uintptr_t)ep / 8 + (unsigned)status) % FBR_ARRAY_LEN(srv->m_req_cache);
    if (srv->m_req_cache[slot].endpoint != ep || srv->m_req_cache[slot].status != status) {
        srv->m_req_cache[slot].endpoint = ep;
        srv->m_req_cache[slot].status = status;
        srv->m_req_cache[slot].counter =
            fbr_metrics_counter2(srv->metrics, "firebridge_http_requests_total",
                                 "Requests answered, by endpoint and status", "endpoint", ep,
                                 "status", status_label(status, sl, sizeof(sl)));
    }
    (*srv->m_req_cache[slot].counter)++;
    fbr_histogram_observe(srv->m_duration, (double)(fbr_now_ms() - fc->start_ms) / 1000.0);
    if (fbr_log_enabled(FBR_LOG_DEBUG)) {
        struct fbr_http_req with_path = *req;
        if (!req->path.len) /* a deferred reply: its path from the request */
            with_path.path = req_path(req->opaque);
        req = &with_path;
        size_t at = fc->secret_at < req->path.len ? fc->secret_at : 0;
        if (at) {
            const char *end = memchr(req->path.ptr + at, '/', req->path.len - at);
            size_t rest = end ? req->path.len - (size_t)(end - req->path.ptr) : 0;
            fbr_log(FBR_LOG_DEBUG, req->id, NULL, "%d %.*s***%.*s", status, (int)at, req->path.ptr,
                    (int)rest, end ? end : "");
        } else {
            fbr_log(FBR_LOG_DEBUG, req->id, NULL, "%d %.*s", status, (int)req->path.len,
                    req->path.ptr);
        }
    }
}

static void send_reply(struct fbr_http_req *req, int status)
{
    evhtp_request_t *r = req->opaque;
    struct conn *fc = req_conn(req);
    struct fbr_server *srv = fc ? fc->srv : NULL;
    char head[512];
    int closes = srv && (srv->draining || (fc && (fc->too_large || fc->early)));
    size_t hlen = closes ? 0
                      : plain_200_head(req, status, head, sizeof(head));
    if (!hlen)
        evhtp_headers_add_header(r->headers_out,
                                 evhtp_header_new("X-Request-Id", req->id, 0, 1));
    /* RFC 9110 11.6.1: a 401 names the scheme to use; a handler may have named its own */
    if (status == 401 && !evhtp_kv_find(r->headers_out, "WWW-Authenticate"))
        evhtp_headers_add_header(r->headers_out,
                                 evhtp_header_new("WWW-Authenticate", "Bearer", 0, 0));
    if (closes) {
        /* set_keepalive(r, 0) alone leaves the flag on in 1.2.18: the connection stayed open
         * after "Connection: close" until the client closed it.  With the flag off libevhtp
         * adds "Connection: close" itself and closes once the reply is out. */
        evhtp_request_set_keepalive(r, 0);
        evhtp_request_disable_flag(r, EVHTP_REQ_FLAG_KEEPALIVE);
    }
    if (srv) {
        size_t hbytes = hlen ? hlen : 64;
        if (!hlen)
            evhtp_headers_for_each(r->headers_out, header_size, &hbytes);
        account_reply(req, fc, status, hbytes + evbuffer_get_length(r->buffer_out));
    }
    if (req->method == FBR_M_HEAD) {
        /* the headers of a GET, without its body */
        char cl[24];
        snprintf(cl, sizeof(cl), "%zu", evbuffer_get_length(r->buffer_out));
        evhtp_headers_add_header(r->headers_out, evhtp_header_new("Content-Length", cl, 0, 1));
        evbuffer_drain(r->buffer_out, evbuffer_get_length(r->buffer_out));
    }
    if (status == 413 && req->method != FBR_M_HEAD) {
        /* libevhtp's status line says "Entity Too Large"; RFC 9110 15.5.14 and the screener's
         * own 413 say "Content Too Large".  The head written here as libevhtp would write it,
         * keep-alive off (too_large): its write callback closes once it is out. */
        struct evbuffer *out = bufferevent_get_output(r->conn->bev);
        evbuffer_add_printf(out, "HTTP/1.1 413 Content Too Large\r\n");
        evhtp_headers_for_each(r->headers_out, put_header, out);
        evbuffer_add_printf(out, "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                            evbuffer_get_length(r->buffer_out));
        r->status = (evhtp_res)status;
        r->flags |= EVHTP_REQ_FLAG_FINISHED;
        bufferevent_write_buffer(r->conn->bev, r->buffer_out);
        return;
    }
    if (hlen) {
        /* what evhtp_send_reply() does: the request finished, its reply in the output */
        r->status = (evhtp_res)status;
        r->flags |= EVHTP_REQ_FLAG_FINISHED;
        bufferevent_write(r->conn->bev, head, hlen);
        bufferevent_write_buffer(r->conn->bev, r->buffer_out);
        return;
    }
    evhtp_send_reply(r, (evhtp_res)status);
}

void fbr_http_reply_raw(struct fbr_http_req *req, int status, const char *content_type,
                        const char *body, size_t len)
{
    evhtp_request_t *r = req->opaque;
    if (content_type)
        evhtp_headers_add_header(r->headers_out,
                                 evhtp_header_new("Content-Type", content_type, 0, 1));
    if (len)
        evbuffer_add(r->buffer_out, body, len);
    send_reply(req, status);
}

/*
 * The compact JSON of a flat object (members that are strings, integers, true, false or null),
 * written by hand into buf as json_dumpb(JSON_COMPACT) writes it: jansson's dump guards against
 * cycles with a table keyed by each object's address printed with snprintf, several thousand
 * instructions for every alert's 200 (bench/README.md).  Returns the length, or 0 when body is
 * not such an object or does not fit in cap.
 */
static size_t dump_flat(json_t *body, char *buf, size_t cap)
{
    if (!json_is_object(body))
        return 0;
    size_t n = 0;
    buf[n++] = '{';
    const char *key;
    json_t *v;
    json_object_foreach (body, key, v) {
        size_t klen = strlen(key), vlen = json_is_string(v) ? json_string_length(v) : 0;
        if (n + 6 * (klen + vlen) + FBR_U64_DIGITS + 8 > cap)
            return 0;
        if (n > 1)
            buf[n++] = ',';
        buf[n++] = '"';
        n += fbr_json_escape(buf + n, key, klen);
        buf[n++] = '"';
        buf[n++] = ':';
        switch (json_typeof(v)) {
        case JSON_STRING:
            buf[n++] = '"';
            n += fbr_json_escape(buf + n, json_string_value(v), vlen);
            buf[n++] = '"';
            break;
        case JSON_INTEGER: {
            json_int_t x = json_integer_value(v);
            uint64_t u = (uint64_t)x;
            if (x < 0) {
                buf[n++] = '-';
                u = ~u + 1;
            }
            n += fbr_fmt_u64(buf + n, u);
            break;
        }
        case JSON_TRUE:
            memcpy(buf + n, "true", 4);
            n += 4;
            break;
        case JSON_FALSE:
            memcpy(buf + n, "false", 5);
            n += 5;
            break;
        case JSON_NULL:
            memcpy(buf + n, "null", 4);
            n += 4;
            break;
        default:
            return 0;
        }
    }
    buf[n++] = '}';
    return n;
}

void fbr_http_reply_json(struct fbr_http_req *req, int status, json_t *body)
{
    evhtp_request_t *r = req->opaque;
    if (body) {
        /* A reply that fits is serialised on the stack: no allocation, no strlen (every alert's
         * 200 comes through here, written by dump_flat); a longer one (/metrics-sized) through
         * fbr_json_dumps (whose text is free()d: a json_dumps() text may be a slab block). */
        char buf[2048];
        size_t n = dump_flat(body, buf, sizeof(buf) - 1);
        if (n == 0)
            n = json_dumpb(body, buf, sizeof(buf) - 1, JSON_COMPACT);
        evhtp_headers_add_header(r->headers_out,
                                 evhtp_header_new("Content-Type", "application/json", 0, 0));
        if (n > 0 && n < sizeof(buf)) {
            buf[n] = '\n';
            evbuffer_add(r->buffer_out, buf, n + 1);
        } else {
            char *s = fbr_json_dumps(body, JSON_COMPACT);
            if (s) {
                evbuffer_add(r->buffer_out, s, strlen(s));
                evbuffer_add(r->buffer_out, "\n", 1);
            }
            free(s);
        }
        json_decref(body);
    }
    send_reply(req, status);
}

void fbr_http_reply_error(struct fbr_http_req *req, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (status >= 500)
        fbr_log(FBR_LOG_WARN, req->id, NULL, "%d: %s", status, msg);
    fbr_http_reply_json(req, status, json_pack("{s:s,s:s}", "result", "failure", "message", msg));
}

/* A plain-TCP connection: its bufferevent writes straight to the socket (no TLS, no filter). */
static int plain_tcp(const evhtp_connection_t *c)
{
    return c && c->bev && !c->ssl && !bufferevent_get_underlying(c->bev);
}

static void wrapped_writecb(struct bufferevent *bev, void *arg);

/*
 * A deferred reply written to the socket at once, from the loop (the owner's callback, never
 * inside libevhtp's parser), instead of through evhtp_request_resume(): libevhtp's resume event
 * runs later in the iteration and enables writing, the reply goes out in the next iteration and
 * reading comes back in the one after, two epoll_ctl per request.  Here the write interest the
 * reply added is dropped again within the iteration (the epoll changelist folds the pair), and
 * reading was never turned off (see fbr_http_defer).  This does what libevhtp's resume and write
 * callbacks do, in order: clear the pause, mark the connection waiting for its reply to go out (its
 * write callback then turns reading back on and takes a pipelined request), and run that callback
 * once the output is empty; what the kernel does not take goes out through the bufferevent as
 * before.  Returns 0 when it does not apply (TLS, a connection libevhtp is about to free): resume
 * then.
 */
static void reply_continue(struct conn *fc);

static int reply_now(struct conn *fc)
{
    evhtp_connection_t *c = fc->c;
    if (!plain_tcp(c) || fc->closing || !(c->flags & EVHTP_CONN_FLAG_PAUSED))
        return 0;
    struct bufferevent *bev = c->bev;
    struct evbuffer *out = bufferevent_get_output(bev);
    /* The bufferevent keeps its output's front frozen except while it writes: so do we.  An
     * error (reset, broken pipe) is left for the bufferevent to meet on its own write. */
    evbuffer_unfreeze(out, 1);
    evbuffer_write(out, bufferevent_getfd(bev));
    evbuffer_freeze(out, 1);
    if (c->flags & EVHTP_CONN_FLAG_FREE_CONN)
        return 0; /* the client closed its side meanwhile: the reply went out, the resume frees */
    reply_continue(fc);
    return 1;
}

/* After a deferred reply went to the socket or into the output (reply_now(),
 * reply_json_direct()): what libevhtp's resume and write callbacks do once it is written. */
static void reply_continue(struct conn *fc)
{
    evhtp_connection_t *c = fc->c;
    struct bufferevent *bev = c->bev;
    c->flags &= (uint16_t)~EVHTP_CONN_FLAG_PAUSED;
    if (c->request)
        c->request->status = EVHTP_RES_OK; /* what the resume callback resets */
    c->flags |= EVHTP_CONN_FLAG_WAITING;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        /* nothing left for the write event (pending when the reply was queued in the output) */
        if (event_pending(&bev->ev_write, EV_WRITE, NULL))
            event_del(&bev->ev_write);
        wrapped_writecb(bev, fc);
    } else if (!(bufferevent_get_enabled(bev) & EV_WRITE)) {
        bufferevent_enable(bev, EV_WRITE);
    }
}

/*
 * A deferred 200 with a flat JSON body (every alert's answer) on a plain-TCP keep-alive
 * HTTP/1.1 connection with nothing else waiting to go out: head and body built on the stack and
 * written with one send(), without libevhtp's header objects, its request output buffer, the
 * bufferevent's output and its write event; then the connection goes on as after reply_now().
 * What the kernel does not take (and a failed send, left for the bufferevent to meet again) goes
 * into the bufferevent's output.  Returns 0, having done nothing, when the reply is not that
 * case.
 */
static int reply_json_direct(struct fbr_http_pending *p, int status, json_t *body)
{
    struct conn *fc = p->fc;
    evhtp_request_t *r = p->r;
    evhtp_connection_t *c = r->conn;
    if (!plain_200_case(r, status, p->method) || !plain_tcp(c) || fc->closing || fc->too_large ||
        fc->srv->draining || !(c->flags & EVHTP_CONN_FLAG_PAUSED) ||
        (c->flags & EVHTP_CONN_FLAG_FREE_CONN) || !TAILQ_EMPTY(r->headers_out) ||
        evbuffer_get_length(r->buffer_out) || evbuffer_get_length(bufferevent_get_output(c->bev)))
        return 0;
    static const char ct[] = "application/json";
    char b[1536];
    /* the body first, after room for the longest head; then the head just before it */
    char *bp = b + 512;
    size_t blen = dump_flat(body, bp, sizeof(b) - 512 - 1);
    if (!blen)
        return 0;
    bp[blen++] = '\n';
    size_t hlen = put_200_head(b, 512, ct, sizeof(ct) - 1, p->id, blen);
    if (!hlen)
        return 0;
    char *msg = bp - hlen;
    memmove(msg, b, hlen);
    size_t n = hlen + blen;
    struct fbr_http_req req = {.opaque = r, .id = p->id, .method = p->method, .conn = fc};
    account_reply(&req, fc, status, n);
    r->status = (evhtp_res)status;
    r->flags |= EVHTP_REQ_FLAG_FINISHED;
    ssize_t w = send(bufferevent_getfd(c->bev), msg, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0)
        w = 0;
    if ((size_t)w < n)
        bufferevent_write(c->bev, msg + w, n - (size_t)w);
    reply_continue(fc);
    return 1;
}

struct fbr_http_pending *fbr_http_defer(struct fbr_http_req *req)
{
    struct conn *fc = req_conn(req);
    struct fbr_http_pending *p = fbr_xcalloc(1, sizeof(*p));
    p->r = req->opaque;
    p->fc = fc;
    p->method = req->method;
    size_t idn = strnlen(req->id, sizeof(p->id) - 1);
    memcpy(p->id, req->id, idn);
    p->id[idn] = '\0';
    if (fc)
        fc->pending = p;
    evhtp_connection_t *c = p->r->conn;
    if (fc && plain_tcp(c) && !(c->flags & EVHTP_CONN_FLAG_PAUSED)) {
        /* What evhtp_request_pause() does, except that reading stays on: libevhtp parses nothing
         * while the flag is set (bytes that arrive meanwhile wait in the input, bounded by the
         * read watermark, and are parsed once the reply is out), and turning reading off and on
         * again costs two epoll_ctl per request.  An EOF meanwhile is kept for the resume, as
         * libevhtp does for a paused connection. */
        p->r->status = EVHTP_RES_PAUSE;
        c->flags |= EVHTP_CONN_FLAG_PAUSED;
    } else {
        evhtp_request_pause(p->r);
    }
    return p;
}

void fbr_http_pending_add_header(struct fbr_http_pending *p, const char *name, const char *value)
{
    if (p && p->fc)
        evhtp_headers_add_header(p->r->headers_out, evhtp_header_new(name, value, 1, 1));
}

const char *fbr_http_pending_id(const struct fbr_http_pending *p)
{
    return p->id;
}

void fbr_http_pending_reply_json(struct fbr_http_pending **pp, int status, json_t *body)
{
    struct fbr_http_pending *p = *pp;
    *pp = NULL;
    if (!p) {
        json_decref(body);
        return;
    }
    if (!p->fc) { /* the client went away meanwhile */
        json_decref(body);
        free(p);
        return;
    }
    struct conn *fc = p->fc;
    fc->pending = NULL;
    if (reply_json_direct(p, status, body)) {
        json_decref(body);
        free(p);
        return;
    }
    struct fbr_http_req req = {.opaque = p->r, .id = p->id, .method = p->method, .conn = fc};
    fbr_http_reply_json(&req, status, body);
    if (!reply_now(fc))
        evhtp_request_resume(p->r);
    free(p);
}

/* ---- connection bookkeeping and the screener ---- */

static void listeners_pause(struct fbr_server *srv, int pause)
{
    if (srv->listeners_paused == pause)
        return;
    srv->listeners_paused = pause;
    for (size_t i = 0; i < srv->nls; i++) {
        if (!srv->ls[i].htp->server)
            continue;
        if (pause)
            evconnlistener_disable(srv->ls[i].htp->server);
        else
            evconnlistener_enable(srv->ls[i].htp->server);
    }
}

static void accept_resume(evutil_socket_t fd, short what, void *arg)
{
    struct fbr_server *srv = arg;
    if (!srv->draining && srv->nconns < srv->opts.max_connections)
        listeners_pause(srv, 0);
}

/*
 * accept() failed with something other than EAGAIN/EINTR, typically EMFILE or ENFILE (out of
 * descriptors).  libevent keeps the listener readable, so without a pause the loop would spin on
 * the same failing accept and log each one.  The listeners pause for ACCEPT_PAUSE_MS, or until a
 * connection closes and frees a descriptor; pending clients wait in the listen backlog.  Each
 * failure is counted; the log gets one line per episode.
 */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    struct fbr_server *srv = ((evhtp_t *)arg)->defaults.pre_accept_cbarg;
    const char *name = err == EMFILE   ? "EMFILE"
                       : err == ENFILE ? "ENFILE"
                       : err == ENOBUFS ? "ENOBUFS"
                       : err == ENOMEM  ? "ENOMEM"
                                        : "other";
    (*fbr_metrics_counter(srv->metrics, "firebridge_http_accept_errors_total",
                          "accept() failures (the listeners pause after each), by error",
                          "error", name))++;
    if (srv->accept_failures++ == 0) {
        srv->accept_since_ms = fbr_now_ms();
        fbr_log(FBR_LOG_ERROR, NULL, "accepting a connection",
                "%s (%zu connection(s) open): not accepting for %d ms at a time until it "
                "succeeds; new clients wait in the listen backlog",
                evutil_socket_error_to_string(err), srv->nconns, ACCEPT_PAUSE_MS);
    }
    listeners_pause(srv, 1);
    if (!srv->accept_retry)
        srv->accept_retry = evtimer_new(srv->base, accept_resume, srv);
    struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
    evtimer_add(srv->accept_retry, &tv);
}

static void conn_unlink(struct conn *fc)
{
    struct fbr_server *srv = fc->srv;
    if (fc->prev)
        fc->prev->next = fc->next;
    else
        srv->conns = fc->next;
    if (fc->next)
        fc->next->prev = fc->prev;
    fc->prev = fc->next = NULL;
    srv->nconns--;
    *srv->m_open = (int64_t)srv->nconns;
    if (!srv->draining && srv->nconns < srv->opts.max_connections)
        listeners_pause(srv, 0);
}

static void conn_free(struct conn *fc)
{
    if (fc->pending)
        fc->pending->fc = NULL; /* the owner's reply will go nowhere */
    if (fc->deadline)
        event_free(fc->deadline);
    if (fc->held)
        evbuffer_free(fc->held);
    free(fc);
}

static evhtp_res on_conn_fini(evhtp_connection_t *c, void *arg)
{
    struct conn *fc = arg;
    conn_unlink(fc);
    fc->c = NULL;
    if (fc->busy)
        fc->dead = 1; /* freed by the read wrapper once libevhtp returns to it */
    else
        conn_free(fc);
    return EVHTP_RES_OK;
}

static void closing_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *fc = arg;
    if (fc->c)
        evhtp_connection_free(fc->c);
}

static void lingering_readcb(struct bufferevent *bev, void *arg)
{
    struct conn *fc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    fc->lingered += evbuffer_get_length(in);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (fc->lingered > LINGER_BYTES && fc->c)
        evhtp_connection_free(fc->c);
}

/*
 * The raw error reply of conn_reject() is out.  A close with unread input would make the kernel
 * reset the connection, and the client, still sending the rest of its request, could lose the
 * reply to the reset.  So, as nginx's lingering close does, the connection ends its writing side
 * (the client sees the end of the reply) and reads and discards what still comes until the client
 * closes, LINGER_BYTES or LINGER_MS (the deadline timer), whichever is first.  Plain TCP shuts
 * down its writing side; TLS sends its close_notify (SSL_shutdown: straight to the socket, the
 * bufferevent's output being empty) and its bufferevent goes on reading and decrypting what the
 * client sends, counted as on plain TCP.  libevhtp's own SSL_shutdown when it frees the
 * connection would send a second close_notify: quiet from here on.
 */
static void closing_writecb(struct bufferevent *bev, void *arg)
{
    struct conn *fc = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) != 0 || !fc->c || fc->lingering)
        return;
    if (fc->c->ssl && !bufferevent_get_underlying(bev)) {
        if (SSL_shutdown(fc->c->ssl) < 0) /* the socket took none of it: no close_notify */
            ERR_clear_error();            /* not left for another connection's SSL_get_error */
        SSL_set_quiet_shutdown(fc->c->ssl, 1);
    } else if (plain_tcp(fc->c)) {
        shutdown(bufferevent_getfd(bev), SHUT_WR);
    } else {
        evhtp_connection_free(fc->c);
        return;
    }
    fc->lingering = 1;
    bufferevent_setcb(bev, lingering_readcb, NULL, closing_eventcb, fc);
    bufferevent_disable(bev, EV_WRITE);
    bufferevent_enable(bev, EV_READ);
    if (!fc->deadline)
        fc->deadline = evtimer_new(fc->srv->base, on_deadline, fc);
    struct timeval tv = {LINGER_MS / 1000, (LINGER_MS % 1000) * 1000};
    evtimer_add(fc->deadline, &tv);
}

/*
 * Answers status with a JSON error and closes once it is flushed, taking the connection away
 * from libevhtp's parser.  Used for what must not reach the parser.
 */
static void conn_reject(struct conn *fc, int status, const char *reason, const char *msg)
{
    struct bufferevent *bev = fc->c->bev;
    const char *text = status == 408   ? "Request Timeout"
                       : status == 413 ? "Content Too Large"
                       : status == 414 ? "URI Too Long"
                       : status == 417 ? "Expectation Failed"
                       : status == 431 ? "Request Header Fields Too Large"
                       : status == 501 ? "Not Implemented"
                                       : "Bad Request";
    char body[256];
    int blen = snprintf(body, sizeof(body), "{\"result\":\"failure\",\"message\":\"%s\"}\n", msg);
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                        status, text, blen, body);
    *fc->srv->m_bytes_out += evbuffer_get_length(out);
    char sl[8];
    (*fbr_metrics_counter2(fc->srv->metrics, "firebridge_http_requests_total",
                           "Requests answered, by endpoint and status", "endpoint", "none",
                           "status", status_label(status, sl, sizeof(sl))))++;
    count_reject(fc->srv, reason);
    fbr_log(FBR_LOG_INFO, fc->id[0] ? fc->id : NULL, NULL, "%d: %s; closing the connection",
            status, msg);
    close_after_reply(fc);
}

/* The connection, its answer in the output, is taken from libevhtp: nothing more is read as a
 * request, and it closes (lingering) once the answer is flushed.  Never inside libevhtp's
 * parser: the input it is reading is drained here. */
static void close_after_reply(struct conn *fc)
{
    struct bufferevent *bev = fc->c->bev;
    evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
    fc->closing = 1;
    fc->deadline_ms = 0;
    if (fc->deadline)
        event_del(fc->deadline);
    bufferevent_disable(bev, EV_READ);
    bufferevent_setcb(bev, NULL, closing_writecb, closing_eventcb, fc);
    bufferevent_enable(bev, EV_WRITE);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct conn *fc = arg;
    if (fc->c && fc->lingering) {
        evhtp_connection_free(fc->c); /* the linger time is over */
        return;
    }
    if (!fc->c || fc->closing || !fc->deadline_ms)
        return; /* the request it was armed for was answered meanwhile */
    uint64_t now = fbr_now_ms();
    if (now < fc->deadline_ms) { /* armed for an earlier request: the current one has time left */
        uint64_t left = fc->deadline_ms - now;
        struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
        evtimer_add(fc->deadline, &tv);
        return;
    }
    if (fc->c->ssl && !SSL_is_init_finished(fc->c->ssl)) {
        /* No channel for a 408 before the handshake is done: the bufferevent would hold it
         * until the handshake, and the slot until --idle-timeout.  Closed at once instead. */
        count_reject(fc->srv, "no_request");
        fbr_log(FBR_LOG_INFO, NULL, NULL, "408: TLS handshake not completed within the read "
                                          "timeout; closing the connection");
        evhtp_connection_free(fc->c); /* frees fc (on_conn_fini): not inside libevhtp here */
        return;
    }
    if (fc->in_request == REQ_NONE)
        conn_reject(fc, 408, "no_request", "no request received within the read timeout");
    else
        conn_reject(fc, 408, "read_timeout", "request not received within the read timeout");
}

/*
 * Starts the read deadline of a request.  Lazily, as a keep-alive connection starts one per
 * request: the deadline is a time in the connection (deadline_ms), and its timer is added only
 * when it is not running already; when a timer armed for an earlier request fires, on_deadline()
 * adds it again for what is left of the current one.  Ending a deadline clears the time and
 * leaves the timer to lapse.  A request costs a clock read instead of a timer added and deleted
 * in libevent's heap (bench/README.md, "Sixth pass").
 */
static void arm_deadline(struct conn *fc)
{
    struct fbr_server *srv = fc->srv;
    if (!fc->deadline)
        fc->deadline = evtimer_new(srv->base, on_deadline, fc);
    fc->deadline_ms = fbr_now_ms() + srv->opts.read_timeout_ms;
    if (evtimer_pending(fc->deadline, NULL))
        return;
    struct timeval tv = {srv->opts.read_timeout_ms / 1000,
                         (srv->opts.read_timeout_ms % 1000) * 1000};
    evtimer_add(fc->deadline, &tv);
}

/* The first request of a connection has its deadline from the accept (a client that connects
 * and stays silent holds a slot for --read-timeout, not --idle-timeout); later ones from their
 * first byte. */
static void request_begins(struct conn *fc)
{
    fc->in_request = REQ_HEAD;
    if (fc->first_request)
        return;
    arm_deadline(fc);
}

static int header_is(const struct conn *fc, const char *name)
{
    /* the names asked about are lower case and start with different letters: the first byte,
     * folded, rules out all but one before any compare (exact: only 'X' and 'x' fold to 'x') */
    if ((fc->line[0] | 0x20) != name[0])
        return 0;
    size_t n = strlen(name);
    return fc->line_len > n && strncasecmp(fc->line, name, n) == 0;
}

/* A header section the screener refuses (RFC 9112 6.1, 6.3: the body's length would be
 * ambiguous, which is how a request is smuggled past a proxy): answered, then closed. */
struct refusal {
    int status;
    const char *reason, *msg;
};

/* The value of the header line in fc->line after its `name_len`-byte name and colon, without
 * surrounding blanks, as [*v, *v + return). */
static size_t header_value(const struct conn *fc, size_t name_len, const char **v)
{
    size_t n = fc->line_len < sizeof(fc->line) ? fc->line_len : sizeof(fc->line);
    size_t i = name_len;
    while (i < n && (fc->line[i] == ' ' || fc->line[i] == '\t'))
        i++;
    while (n > i && (fc->line[n - 1] == ' ' || fc->line[n - 1] == '\t' || fc->line[n - 1] == '\r'))
        n--;
    *v = fc->line + i;
    return n - i;
}

/*
 * Ends one header line (raw: its first byte in the input, writable): refuses one without a name
 * and colon, counts Host and Authorization lines, notes Expect, notes the framing headers and
 * checks them.  Content-Length must be digits only and agree with any earlier one;
 * Transfer-Encoding must appear once and be "chunked" in any case (RFC 9112 7: coding names are
 * case-insensitive; another coding before chunked is 501, chunked not last 400).  Both are also
 * held to what libevhtp's parser reads, so that the two never frame a body differently: it skips
 * only spaces before a value, reads a Content-Length of at most 20 characters, and takes "chunked"
 * (or "Chunked") with nothing after it as the chunked coding and any other spelling as no coding
 * at all (an empty body: the chunks would then be read as the next request), so another spelling
 * is rewritten to "chunked" in the input before libevhtp reads it.  Returns 0, or 1 with *r set.
 */
static int header_line_done(struct conn *fc, unsigned char *raw_line, struct refusal *r)
{
    static const char cl_name[] = "content-length:", te_name[] = "transfer-encoding:",
                      expect_name[] = "expect:", continue_value[] = "100-continue";
    if (fc->in_name || fc->line[0] == ':') { /* RFC 9112 5: field-name ":" field-value */
        *r = (struct refusal){400, "bad_header", "header line without a field name and colon"};
        return 1;
    }
    fc->hosts += header_is(fc, "host:");
    fc->auths += header_is(fc, "authorization:");
    if (header_is(fc, expect_name)) {
        const char *v;
        size_t n = header_value(fc, sizeof(expect_name) - 1, &v);
        int cont = n == sizeof(continue_value) - 1 && strncasecmp(v, continue_value, n) == 0;
        if (fc->expect != EXPECT_OTHER)
            fc->expect = cont ? EXPECT_CONTINUE : EXPECT_OTHER;
        return 0;
    }
    int cl = header_is(fc, cl_name), te = header_is(fc, te_name);
    if (!cl && !te)
        return 0;
    *r = (struct refusal){400, "bad_framing", "invalid Content-Length"};
    if (fc->line_len > sizeof(fc->line)) {
        r->msg = "framing header too long";
        return 1;
    }
    const char *v;
    size_t name_len = cl ? sizeof(cl_name) - 1 : sizeof(te_name) - 1;
    size_t n = header_value(fc, name_len, &v);
    const char *raw = fc->line + name_len;
    while (raw < v && *raw == ' ')
        raw++;
    if (raw != v) { /* a tab before the value */
        r->msg = cl ? "invalid Content-Length" : "Transfer-Encoding must be chunked";
        return 1;
    }
    if (cl) {
        uint64_t x = 0;
        if (n == 0 || n > FBR_U64_DIGITS)
            return 1;
        for (size_t i = 0; i < n; i++) {
            if (v[i] < '0' || v[i] > '9' || x > UINT64_MAX / 10 - 10)
                return 1;
            x = x * 10 + (uint64_t)(v[i] - '0');
        }
        if (fc->cl_seen && x != fc->content_length) {
            r->msg = "conflicting Content-Length headers";
            return 1;
        }
        fc->cl_seen = 1;
        fc->content_length = x;
        return 0;
    }
    if (fc->te_seen) {
        r->msg = "more than one Transfer-Encoding header";
        return 1;
    }
    fc->te_seen = 1;
    static const char chunked[] = "chunked";
    size_t cn = sizeof(chunked) - 1;
    if (n == cn && strncasecmp(v, chunked, cn) == 0) {
        /* libevhtp's spelling: nothing after it, lower case */
        size_t tail = (size_t)(fc->line + fc->line_len - 1 - (v + n)); /* before the CR */
        if (tail != 0) {
            r->msg = "Transfer-Encoding must be \"chunked\" with nothing after it";
            return 1;
        }
        memcpy(raw_line + (v - fc->line), chunked, cn);
        fc->chunked = 1;
        return 0;
    }
    int ends_chunked = n > cn && strncasecmp(v + n - cn, chunked, cn) == 0 &&
                       (v[n - cn - 1] == ',' || v[n - cn - 1] == ' ' || v[n - cn - 1] == '\t');
    if (ends_chunked)
        *r = (struct refusal){501, "transfer_coding", "only the chunked transfer coding is "
                                                      "implemented"};
    else
        r->msg = "Transfer-Encoding must end with chunked";
    return 1;
}

/*
 * Checks one byte of a request line (RFC 9112 3): a method of upper-case letters, one space, a
 * target of visible ASCII, one space, "HTTP/" digits "." digits, CR.  libevhtp's parser drops
 * the connection without a word on a lower-case method, a raw space in the target or a missing
 * version.  Returns 0, or 1 when the line is malformed.
 */
static int request_line_byte(struct conn *fc, unsigned char ch)
{
    static const char http[] = "HTTP/";
    switch (fc->rl) {
    case RL_METHOD:
        if (ch == ' ') { /* a blank ends the method; none may come before it (RFC 9112 3) */
            fc->rl = RL_TARGET;
            return fc->line_len == 0;
        }
        return ch < 'A' || ch > 'Z';
    case RL_TARGET:
        if (ch == ' ' && fc->last != ' ') {
            fc->rl = RL_VERSION;
            fc->ver_at = 0;
            return 0;
        }
        return ch <= ' ' || ch == 0x7f;
    case RL_VERSION:
        if (fc->ver_at < sizeof(http) - 1) {
            if (ch != (unsigned char)http[fc->ver_at++])
                return 1;
            fc->ver_major = fc->ver_minor = -1;
            return 0;
        }
        if (ch >= '0' && ch <= '9') {
            /* ver_minor: -1 before the dot, -2 right after it */
            int *v = fc->ver_minor == -1 ? &fc->ver_major : &fc->ver_minor;
            if (*v < 0)
                *v = 0;
            if (*v < 1000)
                *v = *v * 10 + (ch - '0');
            return 0;
        }
        if (ch == '.' && fc->ver_major >= 0 && fc->ver_minor == -1) {
            fc->ver_minor = -2; /* digits of the minor version follow */
            return 0;
        }
        if (ch == '\r' && fc->ver_minor >= 0) {
            fc->rl = RL_END;
            return 0;
        }
        return 1;
    case RL_END:
        return 1;
    }
    return 1;
}

/*
 * Screens one byte of a chunked body (RFC 9112 7.1): chunk-size lines of hex digits and CRLF
 * (chunk extensions are refused: libevhtp's parser drops the connection on them), the chunk's
 * bytes, its CRLF, and after the last chunk any trailer lines up to an empty one.  Consumes as
 * much of buf[*i, len) as it can at once.  A chunk that takes the body past max_body is refused
 * 413 as its size line ends, before its bytes are read (a body of small chunks was otherwise
 * read to its end).  Returns NULL, or the message of a refusal (400 unless *status says 413).
 */
static const char *chunked_bytes(struct conn *fc, const unsigned char *buf, size_t *i, size_t len,
                                 int *status)
{
    if (fc->phase == SCAN_CHUNK_DATA) {
        size_t take = len - *i;
        if (take > fc->chunk_left)
            take = (size_t)fc->chunk_left;
        fc->chunk_left -= take;
        *i += take;
        if (fc->chunk_left == 0) {
            fc->phase = SCAN_CHUNK_END;
            fc->last = 0;
        }
        return NULL;
    }
    unsigned char ch = buf[(*i)++];
    switch (fc->phase) {
    case SCAN_CHUNK_SIZE:
        if (fc->last == '\r') {
            if (ch != '\n' || fc->chunk_digits == 0)
                return "invalid chunk size";
            fc->chunk_total += fc->chunk_left; /* at most 15 digits each: no overflow */
            if (fc->chunk_total > fc->srv->opts.max_body) {
                *status = 413;
                return "chunked body larger than --max-body";
            }
            fc->phase = fc->chunk_left ? SCAN_CHUNK_DATA : SCAN_TRAILER;
            fc->last = 0;
            fc->line_len = 0;
            return NULL;
        }
        fc->last = ch;
        if (ch == '\r')
            return NULL;
        if (ch == ';')
            return "chunk extensions are not supported";
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0 || ++fc->chunk_digits > 15)
            return "invalid chunk size";
        fc->chunk_left = fc->chunk_left * 16 + (uint64_t)d;
        return NULL;
    case SCAN_CHUNK_END:
        if ((fc->last == 0 && ch != '\r') || (fc->last == '\r' && ch != '\n'))
            return "chunk data longer than its chunk size";
        if (ch == '\n') {
            fc->phase = SCAN_CHUNK_SIZE;
            fc->chunk_left = 0;
            fc->chunk_digits = 0;
        }
        fc->last = ch == '\n' ? 0 : ch;
        return NULL;
    case SCAN_TRAILER:
        if (++fc->head_bytes > fc->srv->opts.max_header_bytes)
            return "trailer section too large";
        if (ch == '\n') {
            if (fc->last != '\r')
                return "bare LF in the trailer section";
            if (fc->line_len == 1) { /* the empty line: the request is complete */
                fc->phase = SCAN_HEAD;
                fc->in_request = REQ_NONE;
            }
            fc->line_len = 0;
        } else {
            fc->line_len++;
        }
        fc->last = ch;
        return NULL;
    default:
        return NULL;
    }
}

/*
 * At the end of a header section: what the section as a whole must satisfy (RFC 9112 3.2: one
 * Host in HTTP/1.1; one set of credentials; RFC 9110 10.1.1: an expectation firebridge meets,
 * and no "100 Continue" for a body it would refuse).  Returns 0, or 1 with *r set.
 */
static int head_done(struct conn *fc, struct refusal *r)
{
    int v11 = fc->ver_major == 1 && fc->ver_minor >= 1;
    *r = (struct refusal){400, "bad_header", NULL};
    if (fc->chunked && fc->cl_seen) {
        *r = (struct refusal){400, "bad_framing", "both Content-Length and Transfer-Encoding"};
    } else if (fc->hosts > 1) {
        r->msg = "more than one Host header";
    } else if (fc->hosts == 0 && v11) {
        r->msg = "no Host header (required since HTTP/1.1)";
    } else if (fc->auths > 1) {
        r->msg = "more than one Authorization header";
    } else if (fc->expect == EXPECT_OTHER && v11) {
        *r = (struct refusal){417, "expectation", "only the 100-continue expectation is "
                                                  "supported"};
    } else if (fc->expect == EXPECT_CONTINUE && v11 && fc->cl_seen &&
               fc->content_length > fc->srv->opts.max_body) {
        *r = (struct refusal){413, "body_too_large", "declared body larger than --max-body"};
    }
    return r->msg != NULL;
}

/*
 * A whole, ordinary header line at the start of buf, taken at once instead of byte by byte: a
 * name without blanks, a colon, a value without CR, then CR LF, within every limit.  Whatever is
 * not that (a blank or no colon in the name, a bare CR, no LF yet, the end of the head, a limit
 * reached) is left to the byte-by-byte path, which reports it exactly as before.  On success the
 * state is what that path leaves after the LF and *at is past it.  Returns 1 (taken), 0 (not
 * taken) or -1 (taken and refused by header_line_done(): the connection is rejected).
 */
static int fast_header_line(struct conn *fc, unsigned char *p, size_t avail, size_t *at)
{
    const struct fbr_server_opts *o = &fc->srv->opts;
    const unsigned char *nl = memchr(p, '\n', avail);
    if (!nl || fc->last || fc->nlines > o->max_headers)
        return 0;
    size_t n = (size_t)(nl - p); /* the line with its CR */
    if (n < 2 || p[n - 1] != '\r' || n > o->max_header_line ||
        fc->head_bytes + n + 1 > o->max_header_bytes + o->max_uri)
        return 0;
    size_t k = 0;
    while (k < n && p[k] != ':' && p[k] != ' ' && p[k] != '\t' && p[k] != '\r')
        k++;
    if (k == 0 || k == n || p[k] != ':' || memchr(p + k, '\r', n - 1 - k) || memchr(p, 0, n))
        return 0;
    memcpy(fc->line, p, n < sizeof(fc->line) ? n : sizeof(fc->line));
    fc->line_len = n;
    fc->in_name = 0;
    fc->head_bytes += n + 1;
    *at += n + 1;
    struct refusal r;
    if (header_line_done(fc, p, &r) != 0) {
        conn_reject(fc, r.status, r.reason, r.msg);
        return -1;
    }
    fc->nlines++;
    fc->line_len = 0;
    fc->in_name = 1;
    fc->last = 0;
    return 1;
}

/*
 * The request target's bytes taken as a run instead of byte by byte: while the request line is
 * in its target (after the method's blank), every byte above the blank other than DEL leaves the
 * state as the byte path would (appended to the line, counted), so a run of them is copied at
 * once, stopping before the first other byte and before the byte at which a limit would refuse
 * the line; that byte, and everything else, goes to the byte path, which answers exactly as
 * before.  Returns the bytes taken.
 */
static size_t fast_target_run(struct conn *fc, const unsigned char *p, size_t avail)
{
    const struct fbr_server_opts *o = &fc->srv->opts;
    size_t room_line = o->max_uri + 24 > fc->line_len ? o->max_uri + 24 - fc->line_len : 0;
    size_t cap_head = o->max_header_bytes + o->max_uri;
    size_t room_head = cap_head > fc->head_bytes ? cap_head - fc->head_bytes : 0;
    size_t n = avail < room_line ? avail : room_line;
    if (n > room_head)
        n = room_head;
    size_t k = 0;
    while (k < n && p[k] > ' ' && p[k] != 0x7f)
        k++;
    if (!k || k == avail)
        return 0; /* a run is taken once the byte after it is in: one byte per read is the byte
                   * path's alone (test_server header_lines_whole_or_bytewise_same_answer) */
    if (fc->line_len < sizeof(fc->line)) {
        size_t c = sizeof(fc->line) - fc->line_len;
        memcpy(fc->line + fc->line_len, p, k < c ? k : c);
    }
    fc->line_len += k;
    fc->head_bytes += k;
    fc->last = p[k - 1];
    return k;
}

/*
 * Screens new input bytes [from, len) of buf; *head_at is where a header section still open
 * at `from` began, and is moved to where the one still open at the end begins.  Returns 0, or -1
 * after the connection was rejected.
 */
static int screen(struct conn *fc, unsigned char *buf, size_t from, size_t len,
                  size_t *head_at)
{
    const struct fbr_server_opts *o = &fc->srv->opts;
    size_t i = from;
    while (i < len) {
        if (fc->phase >= SCAN_CHUNK_SIZE) {
            int status = 400;
            const char *bad = chunked_bytes(fc, buf, &i, len, &status);
            if (bad) {
                conn_reject(fc, status, status == 413 ? "body_too_large" : "bad_chunk", bad);
                return -1;
            }
            continue;
        }
        if (fc->phase == SCAN_BODY) {
            size_t take = len - i;
            if (take > fc->content_length)
                take = (size_t)fc->content_length;
            fc->content_length -= take;
            i += take;
            if (fc->content_length == 0) {
                fc->phase = SCAN_HEAD;
                fc->in_request = REQ_NONE;
            }
            continue;
        }
        if (fc->in_request == REQ_HEAD && fc->nlines > 0 && fc->line_len == 0) {
            int taken = fast_header_line(fc, buf + i, len - i, &i);
            if (taken < 0)
                return -1;
            if (taken)
                continue;
        }
        if (fc->in_request == REQ_HEAD && fc->nlines == 0 && fc->rl == RL_TARGET &&
            fc->nlines <= o->max_headers) {
            size_t taken = fast_target_run(fc, buf + i, len - i);
            i += taken;
            if (taken)
                continue;
        }
        unsigned char ch = buf[i++];
        if (fc->in_request == REQ_NONE) {
            if (ch == '\r' || ch == '\n')
                continue; /* stray CRLF between requests */
            request_begins(fc);
            *head_at = i - 1;
            fc->line_len = fc->head_bytes = 0;
            fc->nlines = 0;
            fc->content_length = 0;
            fc->chunked = 0;
            fc->cl_seen = fc->te_seen = 0;
            fc->hosts = fc->auths = 0;
            fc->expect = EXPECT_NONE;
            fc->rl = RL_METHOD;
            fc->ver_major = fc->ver_minor = -1;
            fc->last = 0;
        }
        fc->head_bytes++;
        if (fc->last == '\r' && ch != '\n') {
            conn_reject(fc, 400, "bad_header", "CR without LF in the request head");
            return -1;
        }
        if (ch == '\n') {
            int empty = fc->line_len == 0 || (fc->line_len == 1 && fc->line[0] == '\r');
            struct refusal r;
            if (fc->last != '\r') {
                conn_reject(fc, 400, "bad_header", "bare LF in the request head");
                return -1;
            }
            fc->last = 0;
            if (fc->nlines == 0 && fc->rl != RL_END) {
                conn_reject(fc, 400, "bad_request_line", "invalid request line");
                return -1;
            }
            if (fc->nlines > 0 && !empty &&
                header_line_done(fc, buf + i - 1 - fc->line_len, &r) != 0) {
                conn_reject(fc, r.status, r.reason, r.msg);
                return -1;
            }
            fc->nlines++;
            fc->line_len = 0;
            fc->in_name = 1;
            if (empty && fc->nlines > 1 && head_done(fc, &r) != 0) {
                conn_reject(fc, r.status, r.reason, r.msg);
                return -1;
            }
            if (empty && fc->nlines > 1) {
                if (fc->chunked) {
                    fc->phase = SCAN_CHUNK_SIZE;
                    fc->chunk_left = 0;
                    fc->chunk_digits = 0;
                    fc->chunk_total = 0;
                } else if (fc->content_length)
                    fc->phase = SCAN_BODY;
                fc->in_request = fc->phase != SCAN_HEAD ? REQ_BODY : REQ_NONE;
            }
            continue;
        }
        if (fc->nlines == 0 && request_line_byte(fc, ch) != 0) {
            conn_reject(fc, 400, "bad_request_line", "invalid request line");
            return -1;
        }
        if (ch == 0) { /* RFC 9110 5.5: never valid in a field */
            conn_reject(fc, 400, "bad_header", "NUL byte in a header line");
            return -1;
        }
        fc->last = ch;
        if (fc->nlines > 0 && fc->in_name) {
            /* RFC 9112 5.1, 5.2: no blank inside or after a field name, no folded lines */
            if (ch == ':') {
                fc->in_name = 0;
            } else if (ch == ' ' || ch == '\t') {
                conn_reject(fc, 400, "bad_header", fc->line_len ? "blank in a header name"
                                                                : "folded header line");
                return -1;
            }
        }
        if (fc->line_len < sizeof(fc->line))
            fc->line[fc->line_len] = (char)ch;
        fc->line_len++;
        if (fc->nlines == 0 && fc->line_len > o->max_uri + 24) {
            conn_reject(fc, 414, "uri_too_long", "request line too long");
            return -1;
        }
        if (fc->nlines > 0 && fc->line_len > o->max_header_line) {
            conn_reject(fc, 431, "header_too_large", "header line too long");
            return -1;
        }
        if (fc->nlines > o->max_headers || fc->head_bytes > o->max_header_bytes + o->max_uri) {
            conn_reject(fc, 431, "headers_too_large", "too many or too large headers");
            return -1;
        }
    }
    return 0;
}

/* Moves in[at, end) to the end of out, keeping in[0, at).  A bufferevent's input takes bytes
 * at its end only from the socket (libevent freezes it there), so kept bytes are put back in
 * front. */
static void move_tail(struct evbuffer *in, size_t at, struct evbuffer *out)
{
    struct evbuffer *front = evbuffer_new();
    evbuffer_remove_buffer(in, front, at);
    evbuffer_add_buffer(out, in);
    evbuffer_prepend_buffer(in, front);
    evbuffer_free(front);
}

/*
 * The beginning of a header section is held out of the input (fc->held) until the section is
 * whole: libevhtp 1.2.18's parser reads uninitialised memory when a request line arrives in two
 * reads (valgrind shows it; pipelined paths came out as "/integgrations/..."), and it reads the
 * input by itself, past this wrapper, when a paused request resumes.  unhold() puts the held
 * bytes back between what libevhtp left unparsed (the first fc->screened bytes) and the new ones.
 */
static void unhold(struct conn *fc, struct evbuffer *in)
{
    struct evbuffer *old = evbuffer_new();
    evbuffer_remove_buffer(in, old, fc->screened);
    fc->screened += evbuffer_get_length(fc->held);
    evbuffer_prepend_buffer(in, fc->held);
    evbuffer_prepend_buffer(in, old);
    evbuffer_free(old);
}

/* A plain-TCP connection reads without libevent's FIONREAD per read (rawread.h); the read
 * watermark (IN_HIGH) still suspends reading as libevent does. */
static void plain_read_start(evhtp_connection_t *c)
{
    if (plain_tcp(c))
        fbr_rawread_start(c->bev);
}

/*
 * Brings the input to what libevhtp may parse: the bytes read since the last call screened, the
 * held beginning of a header section put back in front of them, and the beginning of one still
 * incomplete taken out again (into fc->held).  Afterwards the input holds whole header sections
 * only and fc->screened is its length.  Returns 0, or -1 after the connection was rejected.
 */
static int screen_input(struct conn *fc, struct bufferevent *bev)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    if (len < fc->screened)
        fc->screened = 0; /* libevhtp drained more than we saw: start afresh */
    if (len == fc->screened)
        return 0;
    *fc->srv->m_bytes_in += len - fc->screened;
    size_t head_at = fc->in_request == REQ_HEAD ? fc->screened : SIZE_MAX;
    if (fc->held && evbuffer_get_length(fc->held)) {
        unhold(fc, in);
        len = evbuffer_get_length(in);
    }
    unsigned char *buf = evbuffer_pullup(in, -1);
    if (screen(fc, buf, fc->screened, len, &head_at) < 0)
        return -1;
    if (fc->phase == SCAN_HEAD && fc->in_request == REQ_HEAD) {
        if (!fc->held)
            fc->held = evbuffer_new();
        move_tail(in, head_at, fc->held);
        len = head_at;
    }
    fc->screened = len;
    return 0;
}

/* The three ways into libevhtp's parser on a connection. */
enum entry {
    ENTER_READ,   /* its read callback: bytes arrived (or enter() feeds what waits) */
    ENTER_WRITE,  /* its write callback: output flushed; once a reply is out (WAITING) it turns
                   * reading back on and parses the input itself */
    ENTER_RESUME, /* its resume event (evhtp_connection_resume): parses the input itself when
                   * the output is empty */
};

/*
 * The one way into libevhtp on a connection: each of its bufferevent callbacks and its resume
 * event runs through here, and the input is screened before any of them, so that libevhtp's
 * parser never sees a byte the screener has not, nor a header section without its beginning.
 * Its write callback and its resume event read the input by themselves, and the bufferevent's
 * read callback is deferred (BEV_OPT_DEFER_CALLBACKS: the next loop iteration) while a deferred
 * reply can come in the iteration that read the bytes (an alert's 200, after the journal
 * commit): libevhtp parsed them without the held beginning (the connection closed without a
 * word) or with it out of place (405, 400), and the screener then took them for screened and
 * the held bytes were never put back (the rest of a pipeline unanswered).  After libevhtp
 * returns, what is left in the input was screened; fc may be freed meanwhile (not touched then).
 */
static void enter(struct conn *fc, struct bufferevent *bev, enum entry e, short what)
{
    if (fc->closing && e == ENTER_READ)
        return;
    if (!fc->closing && screen_input(fc, bev) < 0)
        return; /* rejected: conn_reject() flushes its answer and frees */
    struct evbuffer *in = bufferevent_get_input(bev);
    if (e == ENTER_READ) {
        if (evbuffer_get_length(in) == 0)
            return; /* nothing whole for the parser yet */
        if (evbuffer_get_length(bufferevent_get_output(bev)) > OUT_HIGH) {
            /* The client is not reading: parse nothing more until the output drains (the write
             * callback feeds the parser again); the read watermark stops reading the socket. */
            if (!fc->out_blocked) {
                fc->out_blocked = 1;
                (*fc->srv->m_backpressure)++;
            }
            return;
        }
        fc->out_blocked = 0;
    }
    fc->busy++;
    switch (e) {
    case ENTER_READ:
        fc->ev_read(bev, fc->c);
        break;
    case ENTER_WRITE:
        fc->ev_write(bev, fc->c);
        break;
    case ENTER_RESUME:
        fc->ev_resume(-1, what, fc->c);
        break;
    }
    fc->busy--;
    if (fc->dead) {
        if (!fc->busy)
            conn_free(fc);
        return;
    }
    if (fc->early && !fc->closing) { /* answered from its head (on_headers): closed unread */
        close_after_reply(fc);
        return;
    }
    fc->screened = evbuffer_get_length(in);
    /* libevhtp 1.2.18 stops parsing after each request and, when the next one came in the same
     * read, never gets back to it until more bytes arrive (bare libevhtp too): pipelined requests
     * hung.  Feed it once a keep-alive reply is out and libevhtp waits for a new request. */
    if (e == ENTER_WRITE && fc->screened && fc->c && !fc->closing && !fc->c->request)
        enter(fc, bev, ENTER_READ, 0);
}

/* libevhtp's callbacks take the connection; ours take fc. */
static void wrapped_readcb(struct bufferevent *bev, void *arg)
{
    enter(arg, bev, ENTER_READ, 0);
}

static void wrapped_writecb(struct bufferevent *bev, void *arg)
{
    enter(arg, bev, ENTER_WRITE, 0);
}

static void wrapped_resumecb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *fc = arg;
    enter(fc, fc->c->bev, ENTER_RESUME, what);
}

static void wrapped_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *fc = arg;
    fc->busy++;
    fc->ev_event(bev, what, fc->c);
    fc->busy--;
    if (fc->dead && !fc->busy)
        conn_free(fc);
}

/* ---- request hooks ---- */

static evhtp_res on_read_body(evhtp_request_t *r, struct evbuffer *buf, void *arg)
{
    struct conn *fc = arg;
    size_t n = evbuffer_get_length(buf);
    fc->body_seen += n;
    if (!fc->too_large && fc->body_seen > fc->srv->opts.max_body) {
        fc->too_large = 1;
        evbuffer_drain(r->buffer_in, evbuffer_get_length(r->buffer_in));
    }
    if (fc->too_large)
        evbuffer_drain(buf, n); /* discard: the 413 goes out from the final callback */
    return EVHTP_RES_OK;
}

static void on_req_error(evhtp_request_t *r, evhtp_error_flags what, void *arg)
{
    struct conn *fc = arg;
    count_reject(fc->srv, "aborted");
    fbr_log(FBR_LOG_DEBUG, fc->id, NULL, "connection error 0x%x while reading the request",
            (unsigned)what);
}

/*
 * Notes the version the request line claimed and makes libevhtp answer as HTTP/1.1 whatever it
 * was: libevhtp echoes the request's version into every status line it writes, its own
 * "100 Continue" included ("HTTP/;.; 200" after "HTTP/11.11", "HTTP/2.1 100" after "HTTP/2.1").
 * 1.x is served as 1.1 (RFC 9110 2.5); the final callback answers other versions 505.
 */
static void claim_version(struct conn *fc, evhtp_request_t *r)
{
    htparser *parser = r->conn->parser;
    fc->major = htparser_get_major(parser);
    fc->minor = htparser_get_minor(parser);
    if (fc->major != 1 || fc->minor > 1) {
        htparser_set_major(parser, 1);
        htparser_set_minor(parser, 1);
        r->proto = EVHTP_PROTO_11;
    }
}

static evhtp_res on_headers_start(evhtp_request_t *r, void *arg)
{
    struct conn *fc = arg;
    struct fbr_server *srv = fc->srv;
    fc->too_large = 0;
    fc->early = 0;
    fc->major = fc->minor = -1;
    fc->body_seen = 0;
    fc->endpoint = NULL;
    fc->secret_at = 0;
    fc->start_ms = fbr_now_ms();
    fc->id[0] = 'r';
    fbr_fmt_u64(fc->id + 1, ++srv->next_id);
    evhtp_request_set_hook(r, evhtp_hook_on_error, (evhtp_hook)(void (*)(void))on_req_error, fc);
    evhtp_request_set_hook(r, evhtp_hook_on_read, (evhtp_hook)on_read_body, fc);
    return EVHTP_RES_OK;
}

static const struct fbr_route *route_request(struct conn *fc, struct fbr_http_req *req,
                                            int major, int minor);
static void req_init(struct conn *fc, evhtp_request_t *r, struct fbr_http_req *req);

/* Whether a client waits for "100 Continue" before it sends the body: "Expect: 100-continue"
 * (the screener refused any other expectation) on a request that is not HTTP/1.0 (RFC 9110
 * 10.1.1: ignored there) and has a body to come. */
static int waits_for_continue(const struct conn *fc, evhtp_headers_t *hdrs)
{
    const char *e = evhtp_kv_find(hdrs, "Expect");
    if (!e || strcasecmp(e, "100-continue") != 0 || (fc->major == 1 && fc->minor == 0))
        return 0;
    const char *cl = evhtp_kv_find(hdrs, "Content-Length");
    return evhtp_kv_find(hdrs, "Transfer-Encoding") || (cl && strtoull(cl, NULL, 10) > 0);
}

/*
 * A client waits for "100 Continue": every answer the request can get from its head (version,
 * declared size, route, method, and the route's own check: its key, its credentials) is given
 * now, before a byte of the body is read; the connection then closes (close_after_reply() from
 * enter(), outside the parser), since the client may still send the body or not.  A head that
 * passes gets its "100 Continue" and the body is read.  Returns the hook's result: PAUSE stops
 * libevhtp's parser after an answer.
 */
static evhtp_res answer_head(struct conn *fc, evhtp_request_t *r)
{
    struct fbr_http_req req;
    req_init(fc, r, &req);
    fc->early = 1; /* an answer given now closes the connection (send_reply) */
    const struct fbr_route *rt = route_request(fc, &req, fc->major, fc->minor);
    if (rt && rt->check)
        rt->check(&req, rt->arg);
    if (r->flags & EVHTP_REQ_FLAG_FINISHED) {
        fbr_log(FBR_LOG_INFO, fc->id, NULL, "%d before the body (the client waits for "
                "100 Continue): body not read, closing the connection", (int)r->status);
        return EVHTP_RES_PAUSE;
    }
    fc->early = 0;
    fc->endpoint = NULL;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    bufferevent_write(r->conn->bev, cont, sizeof(cont) - 1);
    *fc->srv->m_bytes_out += sizeof(cont) - 1;
    return EVHTP_RES_OK;
}

static evhtp_res on_headers(evhtp_request_t *r, evhtp_headers_t *hdrs, void *arg)
{
    struct conn *fc = arg;
    claim_version(fc, r); /* every status line written from here on says HTTP/1.1 */
    const char *cl = evhtp_kv_find(hdrs, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > fc->srv->opts.max_body)
        fc->too_large = 1;
    return waits_for_continue(fc, hdrs) ? answer_head(fc, r) : EVHTP_RES_OK;
}

static evhtp_res pre_accept(evhtp_connection_t *c, void *arg)
{
    struct fbr_server *srv = arg;
    if (srv->draining || srv->nconns >= srv->opts.max_connections) {
        count_reject(srv, "connection_cap");
        return EVHTP_RES_ERROR;
    }
    return EVHTP_RES_OK;
}

static evhtp_res post_accept(evhtp_connection_t *c, void *arg)
{
    struct fbr_server *srv = arg;
    struct conn *fc = fbr_xcalloc(1, sizeof(*fc));
    fc->srv = srv;
    fc->c = c;
    fc->major = fc->minor = -1;
    fc->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = fc;
    srv->conns = fc;
    srv->nconns++;
    *srv->m_open = (int64_t)srv->nconns;
    (*srv->m_accepted)++;
    if (srv->accept_failures) {
        fbr_log_warn("accepting connections again after %llu failed accept(s) over %llu ms",
                     (unsigned long long)srv->accept_failures,
                     (unsigned long long)(fbr_now_ms() - srv->accept_since_ms));
        srv->accept_failures = 0;
    }
    if (srv->nconns >= srv->opts.max_connections)
        listeners_pause(srv, 1);
    fc->first_request = 1;
    arm_deadline(fc);

    void *cbarg;
    bufferevent_getcb(c->bev, &fc->ev_read, &fc->ev_write, &fc->ev_event, &cbarg);
    bufferevent_setcb(c->bev, wrapped_readcb, wrapped_writecb, wrapped_eventcb, fc);
    struct event *resume = c->resume_ev;
    fc->ev_resume = event_get_callback(resume);
    event_del(resume);
    event_assign(resume, srv->base, -1, event_get_events(resume), wrapped_resumecb, fc);
    event_add(resume, NULL);
    bufferevent_setwatermark(c->bev, EV_READ, 0, IN_HIGH);
    plain_read_start(c);
    evhtp_connection_set_hook(c, evhtp_hook_on_connection_fini, (evhtp_hook)on_conn_fini, fc);
    evhtp_connection_set_hook(c, evhtp_hook_on_headers_start, (evhtp_hook)on_headers_start, fc);
    evhtp_connection_set_hook(c, evhtp_hook_on_headers, (evhtp_hook)on_headers, fc);
    return EVHTP_RES_OK;
}

/* ---- routing ---- */

static int route_matches(const struct fbr_route *rt, struct fbr_slice path)
{
    size_t n = strlen(rt->path);
    if (rt->prefix)
        return path.len >= n && memcmp(path.ptr, rt->path, n) == 0;
    return path.len == n && memcmp(path.ptr, rt->path, n) == 0;
}

int fbr_http_is_json_type(const char *ct)
{
    if (!ct)
        return 0;
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
        return 1;
    return n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0;
}

/* Where the secret path segment (an API key) of a route's path starts in path, whatever the
 * method: 0 when path matches no route that has one. */
static size_t secret_segment_at(const struct fbr_server *srv, struct fbr_slice path)
{
    for (size_t i = 0; i < srv->nroutes; i++) {
        const struct fbr_route *rt = &srv->routes[i];
        if (rt->prefix && rt->secret_segment && route_matches(rt, path))
            return strlen(rt->path);
    }
    return 0;
}

/* The request as a route sees it, without its body (borrowed from r). */
static void req_init(struct conn *fc, evhtp_request_t *r, struct fbr_http_req *req)
{
    *req = (struct fbr_http_req){.opaque = r, .id = fc->id, .conn = fc};
    req->method = method_bit(evhtp_request_get_method(r));
    req->path = req_path(r);
    if (r->uri && r->uri->query_raw)
        req->query = fbr_slice_from((const char *)r->uri->query_raw);
    req->body.ptr = "";
    /* before any answer (505, 413, 405 included): the log line of every reply masks it */
    fc->secret_at = secret_segment_at(fc->srv, req->path);
}

/*
 * The answers a request gets from its head alone, whatever its route: 505 for a version other
 * than 1.x, 413 for a declared body over max_body, 404 for no route, 405 (with Allow) for a
 * method its routes do not take.  Returns the route, or NULL after answering.
 */
static const struct fbr_route *route_request(struct conn *fc, struct fbr_http_req *req,
                                            int major, int minor)
{
    struct fbr_server *srv = fc->srv;
    evhtp_request_t *r = req->opaque;
    if (major != 1) {
        fc->endpoint = "none";
        evhtp_request_set_keepalive(r, 0);
        evhtp_request_disable_flag(r, EVHTP_REQ_FLAG_KEEPALIVE);
        count_reject(srv, "http_version");
        if (major > 9 || minor > 9) /* libevhtp keeps 8 bits: HTTP/1000.1000 reads as 232.232 */
            fbr_http_reply_error(req, 505, "HTTP version not supported (HTTP/1.0 and 1.1 are)");
        else
            fbr_http_reply_error(req, 505, "HTTP version %d.%d not supported", major, minor);
        return NULL;
    }
    if (fc->too_large) {
        fc->endpoint = "none";
        count_reject(srv, "body_too_large");
        fbr_http_reply_error(req, 413, "body larger than %zu bytes", srv->opts.max_body);
        return NULL;
    }
    const struct fbr_route *rt = NULL;
    unsigned allowed = 0;
    for (size_t i = 0; i < srv->nroutes; i++) {
        if (route_matches(&srv->routes[i], req->path)) {
            allowed |= srv->routes[i].methods;
            if (srv->routes[i].methods & req->method) {
                rt = &srv->routes[i];
                break;
            }
        }
    }
    if (!rt && !allowed) {
        fc->endpoint = "none";
        fbr_http_reply_error(req, 404, "no such endpoint");
        return NULL;
    }
    if (!rt) {
        char allow[64];
        fbr_http_method_list(allowed, allow, sizeof(allow));
        fc->endpoint = "none";
        fbr_http_add_header(req, "Allow", allow);
        fbr_http_reply_error(req, 405, "method not allowed (allowed: %s)", allow);
        return NULL;
    }
    fc->endpoint = rt->metric ? rt->metric : rt->path;
    return rt;
}

static void on_request(evhtp_request_t *r, void *arg)
{
    struct conn *fc = NULL;
    if (r->conn && r->conn->hooks)
        fc = r->conn->hooks->on_connection_fini_arg;
    if (!fc) { /* not accepted through post_accept: cannot happen, but never crash */
        evhtp_send_reply(r, EVHTP_RES_SERVERR);
        return;
    }
    if (fc->in_request != REQ_HEAD) /* a pipelined request has begun: keep its deadline */
        fc->deadline_ms = 0;
    if (fc->first_request) {
        fc->first_request = 0;
        if (fc->in_request == REQ_HEAD) /* pipelined: its own deadline, from now */
            arm_deadline(fc);
    }

    struct fbr_http_req req;
    if (fc->major < 0) /* no header section was parsed */
        claim_version(fc, r);
    int major = fc->major, minor = fc->minor;
    fc->major = fc->minor = -1; /* the next request on this connection starts unparsed */
    req_init(fc, r, &req);
    const struct fbr_route *rt = route_request(fc, &req, major, minor);
    if (!rt)
        return;
    size_t blen = evbuffer_get_length(r->buffer_in);
    req.body.ptr = blen ? (const char *)evbuffer_pullup(r->buffer_in, -1) : "";
    req.body.len = blen;
    json_t *json = NULL;
    if (rt->json_body) {
        if (!fbr_http_is_json_type(evhtp_kv_find(r->headers_in, "Content-Type"))) {
            fbr_http_reply_error(&req, 415, "Content-Type must be application/json");
            return;
        }
        json_error_t jerr;
        json = fbr_json_loadb(req.body.ptr, blen, &jerr);
        if (!json) {
            fbr_http_reply_error(&req, 400, "invalid JSON: %s", jerr.text);
            return;
        }
        req.json = json;
    }
    rt->fn(&req, rt->arg);
    json_decref(json);
}

/* ---- built-in endpoints ---- */

static void ep_healthz(struct fbr_http_req *req, void *arg)
{
    static const char ok[] = "{\"status\":\"ok\"}\n";
    fbr_http_reply_raw(req, 200, "application/json", ok, sizeof(ok) - 1);
}

static int data_dir_writable(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/.readyz-%ld", dir, (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return 0;
    int ok = write(fd, "1", 1) == 1;
    close(fd);
    unlink(path);
    return ok;
}

static void ep_readyz(struct fbr_http_req *req, void *arg)
{
    struct fbr_server *srv = arg;
    if (srv->draining) {
        fbr_http_reply_error(req, 503, "draining");
        return;
    }
    const char *why = srv->ready_check ? srv->ready_check(srv->ready_arg) : NULL;
    if (why) {
        fbr_http_reply_error(req, 503, "%s", why);
        return;
    }
    if (srv->data_dir && !data_dir_writable(srv->data_dir)) {
        fbr_http_reply_error(req, 503, "data directory %s is not writable", srv->data_dir);
        return;
    }
    fbr_http_reply_json(req, 200, json_pack("{s:s}", "status", "ready"));
}

static void ep_metrics(struct fbr_http_req *req, void *arg)
{
    struct fbr_server *srv = arg;
    size_t len;
    char *text = fbr_metrics_render(srv->metrics, &len);
    fbr_http_reply_raw(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

/* ---- lifecycle ---- */

static void apply_opts(struct fbr_server *srv, const struct fbr_server_opts *in)
{
    struct fbr_server_opts o = *in;
    if (!o.max_body)
        o.max_body = FBR_DEFAULT_MAX_BODY;
    if (!o.max_connections)
        o.max_connections = FBR_DEFAULT_MAX_CONNECTIONS;
    if (!o.read_timeout_ms)
        o.read_timeout_ms = FBR_DEFAULT_READ_TIMEOUT_MS;
    if (!o.idle_timeout_ms)
        o.idle_timeout_ms = FBR_DEFAULT_IDLE_TIMEOUT_MS;
    if (!o.max_uri || o.max_uri > DEF_MAX_URI)
        o.max_uri = DEF_MAX_URI;
    if (!o.max_header_line || o.max_header_line > DEF_MAX_HEADER_LINE)
        o.max_header_line = DEF_MAX_HEADER_LINE;
    if (!o.max_header_bytes)
        o.max_header_bytes = DEF_MAX_HEADER_BYTES;
    if (!o.max_headers)
        o.max_headers = DEF_MAX_HEADERS;
    o.tls_cert = o.tls_key = o.data_dir = NULL; /* kept as owned copies */
    o.metrics = NULL;
    srv->opts = o;
    struct timeval idle = {o.idle_timeout_ms / 1000, (o.idle_timeout_ms % 1000) * 1000};
    for (size_t i = 0; i < srv->nls; i++)
        evhtp_set_timeouts(srv->ls[i].htp, &idle, &idle);
}

struct fbr_server *fbr_server_new(struct event_base *base, const struct fbr_server_opts *opts)
{
    struct fbr_server *srv = fbr_xcalloc(1, sizeof(*srv));
    srv->base = base;
    if (opts->tls_cert && opts->tls_key) {
        srv->tls_cert = fbr_xstrdup(opts->tls_cert);
        srv->tls_key = fbr_xstrdup(opts->tls_key);
    }
    if (opts->data_dir)
        srv->data_dir = fbr_xstrdup(opts->data_dir);
    srv->metrics = opts->metrics;
    if (!srv->metrics) {
        srv->metrics = fbr_metrics_new();
        srv->own_metrics = 1;
    }
    apply_opts(srv, opts);
    srv->m_open = fbr_metrics_gauge(srv->metrics, "firebridge_http_open_connections",
                                    "Inbound connections open now", NULL, NULL);
    srv->m_accepted = fbr_metrics_counter(srv->metrics, "firebridge_http_connections_total",
                                          "Inbound connections accepted", NULL, NULL);
    srv->m_bytes_in = fbr_metrics_counter(srv->metrics, "firebridge_http_received_bytes_total",
                                          "Bytes received on inbound connections", NULL, NULL);
    srv->m_bytes_out = fbr_metrics_counter(srv->metrics, "firebridge_http_sent_bytes_total",
                                           "Bytes sent on inbound connections (headers approx.)",
                                           NULL, NULL);
    srv->m_backpressure = fbr_metrics_counter(
        srv->metrics, "firebridge_http_backpressure_total",
        "Times a connection's requests were held back because its unsent replies exceeded "
        "256 KiB (a client that does not read)",
        NULL, NULL);
    static const double bounds[] = {0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5};
    srv->m_duration = fbr_metrics_histogram(
        srv->metrics, "firebridge_http_request_duration_seconds",
        "Time from the first header byte to the reply", NULL, NULL, bounds, FBR_ARRAY_LEN(bounds));
    *fbr_metrics_gauge(srv->metrics, "process_start_time_seconds",
                       "Start time of the process since the Unix epoch in seconds", NULL, NULL) =
        (int64_t)(fbr_wall_ms() / 1000);

    fbr_server_add_route(srv, &(struct fbr_route){.path = "/healthz",
                                                   .methods = FBR_M_GET | FBR_M_HEAD,
                                                   .metric = "healthz",
                                                   .fn = ep_healthz,
                                                   .arg = srv});
    fbr_server_add_route(srv, &(struct fbr_route){.path = "/readyz",
                                                   .methods = FBR_M_GET | FBR_M_HEAD,
                                                   .metric = "readyz",
                                                   .fn = ep_readyz,
                                                   .arg = srv});
    fbr_server_add_route(srv, &(struct fbr_route){.path = "/metrics",
                                                   .methods = FBR_M_GET | FBR_M_HEAD,
                                                   .metric = "metrics",
                                                   .fn = ep_metrics,
                                                   .arg = srv});
    return srv;
}

void fbr_server_update(struct fbr_server *srv, const struct fbr_server_opts *opts)
{
    apply_opts(srv, opts);
}

static int setup_tls(struct fbr_server *srv, evhtp_t *htp)
{
    evhtp_ssl_cfg_t *cfg = fbr_xcalloc(1, sizeof(*cfg));
    cfg->pemfile = srv->tls_cert;
    cfg->privfile = srv->tls_key;
    cfg->ssl_opts = SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1;
    cfg->scache_type = evhtp_ssl_scache_type_internal;
    cfg->scache_timeout = 300;
    FILE *f = fopen(srv->tls_cert, "r"), *g = fopen(srv->tls_key, "r");
    int readable = f && g;
    if (f)
        fclose(f);
    if (g)
        fclose(g);
    if (!readable || evhtp_ssl_init(htp, cfg) != 0 || !htp->ssl_ctx ||
        SSL_CTX_check_private_key(htp->ssl_ctx) != 1) {
        fbr_log_error("cannot load TLS certificate %s and key %s", srv->tls_cert, srv->tls_key);
        htp->ssl_cfg = NULL;
        free(cfg);
        return FBR_ERROR;
    }
    htp->ssl_cfg = cfg; /* freed with the listener */
    return FBR_OK;
}

int fbr_server_listen(struct fbr_server *srv, const char *addr)
{
    char host[64], bindhost[80];
    int family;
    uint16_t port;
    if (fbr_listen_parse(addr, host, sizeof(host), &family, &port) != FBR_OK) {
        fbr_log_error("bad listen address '%s'", addr);
        return FBR_ERROR;
    }
    snprintf(bindhost, sizeof(bindhost), "%s%s", family == AF_INET6 ? "ipv6:" : "", host);
    evhtp_t *htp = evhtp_new(srv->base, NULL);
    evhtp_set_gencb(htp, on_request, srv);
    /* "100 Continue" is firebridge's to send, once the head passed every check (on_headers):
     * libevhtp's own went out for any Expect header of any version before a check had run */
    htp->flags &= (uint16_t)~EVHTP_FLAG_ENABLE_100_CONT;
    evhtp_set_pre_accept_cb(htp, pre_accept, srv);
    evhtp_set_post_accept_cb(htp, post_accept, srv);
    struct timeval idle = {srv->opts.idle_timeout_ms / 1000,
                           (srv->opts.idle_timeout_ms % 1000) * 1000};
    evhtp_set_timeouts(htp, &idle, &idle);
    if (srv->tls_cert && setup_tls(srv, htp) != FBR_OK) {
        evhtp_free(htp);
        return FBR_ERROR;
    }
    if (evhtp_bind_socket(htp, bindhost, port, 1024) != 0) {
        fbr_log_error("cannot listen on %s: %s", addr, strerror(errno));
        free(htp->ssl_cfg);
        htp->ssl_cfg = NULL;
        evhtp_free(htp);
        return FBR_ERROR;
    }
    struct listener l = {.htp = htp};
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    evconnlistener_set_error_cb(htp->server, on_accept_error);
    evutil_socket_t fd = evconnlistener_get_fd(htp->server);
    evutil_make_socket_closeonexec(fd);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            l.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else
            l.port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    snprintf(l.addr, sizeof(l.addr), "%s%s%s:%d", family == AF_INET6 ? "[" : "", host,
             family == AF_INET6 ? "]" : "", l.port);
    srv->ls = fbr_xrealloc(srv->ls, (srv->nls + 1) * sizeof(*srv->ls));
    srv->ls[srv->nls++] = l;
    if (srv->listeners_paused)
        evconnlistener_disable(htp->server);
    fbr_log_info("listening on %s (%s)", l.addr, srv->tls_cert ? "https" : "http");
    return FBR_OK;
}

int fbr_server_port(const struct fbr_server *srv)
{
    return srv->nls ? srv->ls[0].port : 0;
}

int fbr_server_listener_port(const struct fbr_server *srv, size_t i)
{
    return i < srv->nls ? srv->ls[i].port : -1;
}

void fbr_server_add_route(struct fbr_server *srv, const struct fbr_route *route)
{
    srv->routes = fbr_xrealloc(srv->routes, (srv->nroutes + 1) * sizeof(*srv->routes));
    srv->routes[srv->nroutes++] = *route;
}

struct fbr_metrics *fbr_server_metrics(struct fbr_server *srv)
{
    return srv->metrics;
}

size_t fbr_server_connections(const struct fbr_server *srv)
{
    return srv->nconns;
}

int fbr_server_draining(const struct fbr_server *srv)
{
    return srv->draining;
}

void fbr_server_set_ready_check(struct fbr_server *srv, const char *(*fn)(void *arg), void *arg)
{
    srv->ready_check = fn;
    srv->ready_arg = arg;
}

void fbr_server_drain(struct fbr_server *srv)
{
    if (srv->draining)
        return;
    srv->draining = 1;
    for (size_t i = 0; i < srv->nls; i++) {
        if (srv->ls[i].htp->server) {
            evconnlistener_free(srv->ls[i].htp->server);
            srv->ls[i].htp->server = NULL;
        }
    }
    /* Idle keep-alive connections go now; the others close after their reply. */
    struct conn *next;
    for (struct conn *fc = srv->conns; fc; fc = next) {
        next = fc->next;
        if (fc->in_request == REQ_NONE && !fc->closing && fc->c && !fc->c->request)
            evhtp_connection_free(fc->c);
    }
    fbr_log_info("draining: %zu connection(s) still open", srv->nconns);
}

void fbr_server_free(struct fbr_server **psrv)
{
    struct fbr_server *srv = *psrv;
    if (!srv)
        return;
    srv->draining = 1;
    while (srv->conns)
        evhtp_connection_free(srv->conns->c);
    for (size_t i = 0; i < srv->nls; i++) {
        evhtp_t *htp = srv->ls[i].htp;
        if (htp->server) {
            evconnlistener_free(htp->server);
            htp->server = NULL;
        }
        evhtp_ssl_cfg_t *cfg = htp->ssl_cfg;
        evhtp_free(htp);
        free(cfg);
    }
    if (srv->accept_retry)
        event_free(srv->accept_retry);
    free(srv->ls);
    free(srv->routes);
    free(srv->tls_cert);
    free(srv->tls_key);
    free(srv->data_dir);
    if (srv->own_metrics)
        fbr_metrics_free(&srv->metrics);
    free(srv);
    *psrv = NULL;
}
