/*
 * client.c - the outbound HTTP/1.1 client under the delivery engine (delivery -> client -> the
 * chat service).  Built from libevent bufferevents (OpenSSL ones for https), evdns for names and
 * the shared response reader (response.h: status line, framing, Content-Length, chunked or
 * close-delimited bodies, the limits); the client reads the rate-limit headers and keeps the
 * body (take_body(), cut at the request's max_body).  libevent's own evhttp client was not used: it has one combined
 * timeout, loses requests on kept-alive TLS connections the server closes, and resolves with a
 * blocking getaddrinfo without an evdns base (see the shared notes on libevent).
 *
 * Pooling: one pool per origin holds idle connections and a FIFO of calls waiting for one; at
 * most pool_size connections (idle, busy or opening) exist per origin.  Webhook URLs are
 * templates, so origins are not a fixed set: a pool unused (no call waiting, no connection
 * busy) for opts.pool_idle_ms is freed by a sweep timer, its idle connections closed, and at
 * most opts.max_pools exist; a new origin beyond that takes the place of the least recently
 * used unused pool, or its call fails when every pool is in use.  Each TCP connection gets a
 * fresh SSL object and bufferevent.  A connection is reused only after a complete response that
 * allows it (HTTP/1.1, no "Connection: close", nothing left in either buffer); an idle one that
 * gets data or EOF is closed.  A plain-TCP connection, once connected, reads the socket with its
 * own read event into the bufferevent's input (raw_read_cb): libevent's read path asks the
 * kernel how many bytes are queued (ioctl FIONREAD) before every read, one more system call per
 * response.
 *
 * Pipelining (opts.pipeline > 1): a connection that has shown it persists (one complete
 * HTTP/1.1 keep-alive response) may carry up to opts.pipeline requests in flight, answered in
 * order (conn->inflight, its head being the call whose response is parsed).  Over plain TCP a
 * request is not sent when it is started but appended to its connection's pending bytes, and one
 * flush event, made active for the loop iteration, sends each connection's pending bytes with one
 * send(): requests started in the same iteration share a connection and a system call, and their
 * responses come back in as few reads.  A call finds a connection in this order: one already
 * written to in this iteration with room, an idle one, a new one while the pool has room, a busy
 * persistent one with room, else it waits.  When a connection fails or closes, the call whose
 * response was being read gets the failure as without pipelining; the calls behind it have seen
 * no response byte and go to another connection (requeue_inflight()): sent once more if their
 * bytes may have reached the server, at most once, then failed; moved, without using that one
 * resend, if they were never sent (still corked when the connection ended) or the answer before
 * them said "Connection: close" (the server processed nothing after it).  Once the answer being
 * read says the connection ends with it, nothing more is queued on it (conn_ending()).  Bytes
 * that arrive while the head's request has not left the client answer nothing (read_cb()), and a
 * 408 to the first request on a reused connection is its idle timeout (response_done()).  With the
 * default of 1 nothing is pipelined (each connection carries one request at a time) and the corked
 * send costs nothing more: the one send() moves to the end of the iteration's callbacks.
 */
#include "firebridge/client.h"
#include "firebridge/rawread.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fbr_build.h"
#include "firebridge/defaults.h"
#include "firebridge/log.h"
#include "firebridge/response.h"
#include "firebridge/strmap.h"
#include "firebridge/url.h"

#define BODY_SAMPLE 512        /* bytes of a response body kept for error reasons */
#define COPY_BODY_MAX 4096    /* request bodies up to this size are copied, larger referenced */

struct call;

enum conn_state { CS_RESOLVING, CS_CONNECTING, CS_IDLE, CS_BUSY };

struct pool {
    struct fbr_client *client;
    int tls;
    int host_is_ip;
    char *host;     /* without IPv6 brackets */
    char *host_hdr; /* Host header value */
    char port[8];
    TAILQ_HEAD(conn_list, upstream_conn) idle; /* the last used first */
    TAILQ_HEAD(, upstream_conn) room; /* busy, persistent, fewer than opts.pipeline in flight;
                                         those written to in this iteration first */
    TAILQ_HEAD(, call) waiting;
    unsigned nconns; /* open or opening */
    int kicking;     /* pool_kick() is running: nested calls leave the work to it */
    char *key;       /* its key in client->pools */
    size_t key_len;
    int used;                   /* a call came since the last sweep */
    unsigned unused_sweeps;     /* sweeps in a row that found it unused */
    TAILQ_ENTRY(pool) all_link; /* client->pool_list, least recently called first */
};

struct upstream_conn {
    struct pool *pool;
    struct bufferevent *bev;
    struct event *rd; /* plain TCP once connected: our read event (the bufferevent's is off) */
    enum conn_state state;
    int dead; /* abandoned while its DNS lookup runs; freed by the lookup */
    struct evutil_addrinfo *ai, *ai_next;
    struct call *call;                /* the head of inflight: its response is parsed */
    TAILQ_HEAD(, call) inflight;      /* written (or pending), in order; connecting: the one call */
    unsigned ninflight;
    int persistent;                   /* a keep-alive response completed on it */
    int in_room, corked;
    TAILQ_ENTRY(upstream_conn) link;  /* in pool->idle while idle */
    TAILQ_ENTRY(upstream_conn) room_link;  /* pool->room */
    TAILQ_ENTRY(upstream_conn) cork_link;  /* client->corked */
    char *pend;                       /* requests not yet sent (plain TCP), flushed by flush_cb */
    size_t pend_len, pend_cap;
    uint64_t queued;                  /* request bytes ever put in pend or the output */
    /* the head call's response (response.h): rp.http10, an HTTP/1.0 answer, is not kept
     * whatever it says; rp.keep_alive, "Connection: keep-alive", says an HTTP/1.0 server may
     * go on */
    struct fbr_response rp;
    int got_bytes;
    int abandon;    /* the client stops reading it (need_more()): the connection closes */
    int last_errno;
};

struct call {
    struct fbr_client *client;
    struct pool *pool;
    struct upstream_conn *conn;
    fbr_client_cb cb;
    void *arg;
    struct fbr_client_req req;
    const char *path;
    size_t path_len;
    int head_method;
    struct event *timer;
    int deferred;           /* completion scheduled on the timer */
    int requeued;           /* already sent again after its bytes may have reached a server
                               that then gave no answer: its one resend is used */
    int waiting;            /* in pool->waiting */
    int after_idle;         /* the first request written on its connection since it was idle */
    int fresh;              /* waiting for a new connection: pool_kick() reuses none for it */
    uint64_t deadline_ms;   /* fbr_now_ms() after which a move (requeue_inflight()) fails it */
    uint64_t req_start;     /* conn->queued before its request was queued: request_started() */
    uint64_t req_end;       /* conn->queued once its request was queued: request_sent() */
    TAILQ_ENTRY(call) link; /* pool->waiting */
    TAILQ_ENTRY(call) conn_link; /* conn->inflight */
    TAILQ_ENTRY(call) all_link; /* client->calls */
    struct fbr_client_resp resp;
    char reason[320];
    size_t body_cap; /* bytes of the response body kept: BODY_SAMPLE or the request's max_body */
    char body[];     /* body_cap + 1 */
};

struct fbr_client {
    struct event_base *base;
    struct evdns_base *dns;
    SSL_CTX *ssl_ctx;
    struct fbr_client_opts opts;
    struct fbr_strmap pools;
    TAILQ_HEAD(, call) calls;
    struct fbr_client_stats stats;
    TAILQ_HEAD(, upstream_conn) corked; /* connections with pending bytes this iteration */
    struct event *flush;                /* made active when the first one is corked */
    TAILQ_HEAD(pool_head, pool) pool_list; /* every pool, least recently called first */
    struct event *sweep;                /* frees unused pools; pending while any exists */
};

static const char *const err_names[] = {
#define FBR_X(name, text) text,
    FBR_CLIENT_ERR_MAP(FBR_X)
#undef FBR_X
};

const char *fbr_client_err_name(enum fbr_client_err e)
{
    return (unsigned)e < FBR_CLIENT_ERR_COUNT ? err_names[e] : "unknown";
}

static void noop_cleanup(const void *data, size_t len, void *arg)
{
    (void)data, (void)len, (void)arg;
}

/* ---- calls ---- */

static void call_deliver(struct call *call)
{
    struct fbr_client *c = call->client;
    TAILQ_REMOVE(&c->calls, call, all_link);
    event_del(call->timer); /* in the call's allocation: freed with it */
    call->resp.reason = call->reason;
    call->resp.body = call->body;
    if (call->resp.err != FBR_CLIENT_ERR_NONE && fbr_log_enabled(FBR_LOG_DEBUG))
        fbr_log(FBR_LOG_DEBUG, call->req.log_id, NULL, "attempt failed (%s): %s",
                fbr_client_err_name(call->resp.err), call->reason);
    call->cb(&call->resp, call->arg);
    free(call);
}

/* Completes a call that is no longer attached to a connection or a pool queue.  Its callback
 * runs from the call's timer event, made active. */
static void call_complete(struct call *call)
{
    /* Never from inside fbr_client_request(), and never nested in the connection callbacks that
     * are still updating the pool: the loop runs an active event after the callback that made
     * it active returns, in the same iteration.  A zero timeout would do the same one epoll_wait
     * later: one more system call per delivery wherever the loop is not busy. */
    call->conn = NULL;
    call->deferred = 1;
    evtimer_del(call->timer);
    event_active(call->timer, EV_TIMEOUT, 1);
}

static void call_set_errorv(struct call *call, enum fbr_client_err err, const char *fmt,
                            va_list ap) __attribute__((format(printf, 3, 0)));
static void call_set_errorv(struct call *call, enum fbr_client_err err, const char *fmt,
                            va_list ap)
{
    vsnprintf(call->reason, sizeof(call->reason), fmt, ap);
    call->resp.err = err;
    call->resp.status = 0;
}

static void call_set_error(struct call *call, enum fbr_client_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void call_set_error(struct call *call, enum fbr_client_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    call_set_errorv(call, err, fmt, ap);
    va_end(ap);
}

static void arm_timer(struct call *call, unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(call->timer, &tv);
}

/* ---- connections ---- */

static void conn_destroy(struct upstream_conn *conn)
{
    struct pool *pool = conn->pool;
    if (conn->state == CS_IDLE)
        TAILQ_REMOVE(&pool->idle, conn, link);
    if (conn->in_room)
        TAILQ_REMOVE(&pool->room, conn, room_link);
    if (conn->corked)
        TAILQ_REMOVE(&pool->client->corked, conn, cork_link);
    if (!conn->dead) {
        pool->nconns--;
        pool->client->stats.open_now--;
    }
    if (conn->rd)
        event_free(conn->rd);
    if (conn->bev) {
        /* drop references to the caller's body slices before they may go away */
        struct evbuffer *out = bufferevent_get_output(conn->bev);
        evbuffer_drain(out, evbuffer_get_length(out));
        bufferevent_free(conn->bev);
    }
    if (conn->ai)
        evutil_freeaddrinfo(conn->ai);
    free(conn->pend);
    free(conn);
}

/* call joins the end of conn's in-flight calls (the head when it is the first). */
static void conn_attach(struct upstream_conn *conn, struct call *call)
{
    TAILQ_INSERT_TAIL(&conn->inflight, call, conn_link);
    conn->ninflight++;
    call->conn = conn;
    if (!conn->call)
        conn->call = call;
}

/* call leaves conn's in-flight calls; the next one, if any, becomes the head. */
static void conn_detach(struct upstream_conn *conn, struct call *call)
{
    TAILQ_REMOVE(&conn->inflight, call, conn_link);
    conn->ninflight--;
    call->conn = NULL;
    conn->call = TAILQ_FIRST(&conn->inflight);
}

/* The parser's state for a new response (the head's). */
static void parser_reset(struct upstream_conn *conn)
{
    fbr_response_reset(&conn->rp, conn->call->head_method);
    conn->got_bytes = conn->abandon = 0;
}

/* Whether the answer being read ends conn: it says so (close, HTTP/1.0), its framing was doubtful
 * (close_after), its body runs to the close, or the client stops reading it.  Nothing more may be
 * queued on conn from then on. */
static int conn_ending(const struct upstream_conn *conn)
{
    return conn->rp.conn_close || conn->rp.http10 || conn->rp.close_after || conn->abandon ||
           fbr_response_until_eof(&conn->rp);
}

/* Whether the server said, with the answer being read, that it processes no request after it on
 * conn (RFC 9112 9.6: "Connection: close"; an HTTP/1.0 answer without keep-alive, once its
 * header section is complete, head_done): the requests queued behind were not processed,
 * whatever of them was sent. */
static int server_ignores_rest(const struct upstream_conn *conn, int head_done)
{
    return conn->rp.conn_close || (conn->rp.http10 && !conn->rp.keep_alive && head_done);
}

/* Keeps conn in its pool's list of busy connections that can take one more request
 * (pipelining) exactly when it can: persistent, busy, fewer than opts.pipeline in flight, and
 * not ending with the answer being read (conn_ending()).  One written to in this iteration goes
 * to the front, so that the next call joins its send. */
static void room_update(struct upstream_conn *conn)
{
    struct pool *pool = conn->pool;
    int want = conn->state == CS_BUSY && conn->persistent &&
               conn->ninflight < pool->client->opts.pipeline && !conn_ending(conn);
    if (conn->in_room && (!want || conn->corked)) {
        TAILQ_REMOVE(&pool->room, conn, room_link);
        conn->in_room = 0;
    }
    if (want && !conn->in_room) {
        if (conn->corked)
            TAILQ_INSERT_HEAD(&pool->room, conn, room_link);
        else
            TAILQ_INSERT_TAIL(&pool->room, conn, room_link);
        conn->in_room = 1;
    }
}

/* Where a call starting now goes: a connection with room already written to in this iteration
 * (its send is shared), else an idle one, else (the pool full) a busy one with room; NULL: open
 * one or wait. */
static struct upstream_conn *pick_conn(struct pool *pool)
{
    struct upstream_conn *room = TAILQ_FIRST(&pool->room);
    if (room && room->corked)
        return room;
    struct upstream_conn *idle = TAILQ_FIRST(&pool->idle);
    if (idle)
        return idle;
    /* a new connection while the pool has room, rather than a wait behind another answer (a
     * slow one would hold every request pipelined behind it) */
    return pool->nconns < pool->client->opts.pool_size ? NULL : room;
}

static void reset_resp(struct fbr_client_resp *r);

/* Request bytes of conn that have left its buffers: the kernel or OpenSSL has them. */
static uint64_t bytes_out(const struct upstream_conn *conn)
{
    size_t unsent = conn->pend_len;
    if (conn->bev)
        unsent += evbuffer_get_length(bufferevent_get_output(conn->bev));
    return conn->queued - unsent;
}

/* Whether a byte of call's request has left conn's buffers: from then on the request may have
 * reached the server, and sending it again may duplicate it.  Until then (corked in pend, or
 * behind other bytes in the output) nothing of it was sent. */
static int request_started(const struct upstream_conn *conn, const struct call *call)
{
    return bytes_out(conn) > call->req_start;
}

/* Whether every byte of call's request has left conn's buffers; until then the rest of a large
 * body is still read from the caller's slices. */
static int request_sent(const struct upstream_conn *conn, const struct call *call)
{
    return bytes_out(conn) >= call->req_end;
}

/* call, off its connection, waits at the front of pool's queue (after after, when not NULL) as
 * requeue_inflight() says, sent again (resend) or moved; returns 0 when it failed instead (its
 * completion scheduled). */
static int requeue_call(struct pool *pool, struct call *call, struct call *after, int resend,
                        enum fbr_client_err err, const char *reason)
{
    struct fbr_client *c = pool->client;
    uint64_t now = fbr_now_ms();
    unsigned wait_ms = c->opts.connect_timeout_ms;
    evtimer_del(call->timer);
    if (resend && call->requeued) {
        call_set_error(call, err, "%s", reason);
        call_complete(call);
        return 0;
    }
    if (!resend && now >= call->deadline_ms) {
        call_set_error(call, FBR_CLIENT_ERR_TIMEOUT,
                       "not sent to %s:%s within %u ms: each connection it was queued on "
                       "ended first (the last: %s)",
                       pool->host, pool->port,
                       c->opts.connect_timeout_ms + c->opts.request_timeout_ms, reason);
        call_complete(call);
        return 0;
    }
    if (resend) {
        call->requeued = 1;
        call->deadline_ms = now + c->opts.connect_timeout_ms + c->opts.request_timeout_ms;
        c->stats.requeued++;
    } else {
        if (call->deadline_ms - now < wait_ms)
            wait_ms = (unsigned)(call->deadline_ms - now);
        c->stats.moved++;
    }
    reset_resp(&call->resp);
    call->resp.reused = 0;
    call->after_idle = 0;
    call->waiting = 1;
    if (after)
        TAILQ_INSERT_AFTER(&pool->waiting, after, call, link);
    else
        TAILQ_INSERT_HEAD(&pool->waiting, call, link);
    arm_timer(call, wait_ms);
    return 1;
}

/*
 * conn is about to close with calls in flight on it that have no answer (the head already taken
 * off by the caller, or not): each goes back to the front of the pool's queue, in order, for
 * another connection.  Two kinds:
 *  - sent: a byte of its request may have reached the server (request_started()) and nothing
 *    says the server ignored it.  It is sent once more (requeued, stats.requeued); one already
 *    sent again fails with err and reason instead: a server that takes a request and closes
 *    without an answer twice is not tried a third time here.
 *  - moved: never sent (still corked, or behind unsent bytes in the output), or unprocessed (the
 *    server said it processes nothing more on conn: a "Connection: close" answer or an unsolicited
 *    one, RFC 9112 9.6).  No copy can exist, so it is no resend and does not use the call's one
 *    (stats.moved), however often it happens; what bounds it is the attempt's deadline
 *    (deadline_ms: the connect and request timeouts after the call began or was last sent
 *    again): a call moved after it fails as timed out, and one moved before waits for a
 *    connection only until then.
 */
static void requeue_inflight(struct upstream_conn *conn, enum fbr_client_err err,
                             const char *reason, int unprocessed)
{
    struct call *call, *after = NULL;
    while ((call = TAILQ_FIRST(&conn->inflight))) {
        int resend = !unprocessed && request_started(conn, call);
        conn_detach(conn, call);
        if (requeue_call(conn->pool, call, after, resend, err, reason))
            after = call;
    }
}

static void pool_kick(struct pool *pool);
static void conn_start_call(struct upstream_conn *conn, struct call *call);

/* Whether call's response has a complete 2xx status line and header section on conn: the
 * server has accepted the request, whatever becomes of the body. */
static int accepted_2xx(const struct upstream_conn *conn, const struct call *call)
{
    return fbr_response_head_done(&conn->rp) && call->resp.status >= 200 && call->resp.status < 300;
}

/* Closes conn and fails its call (if any) with err; a call whose 2xx head has arrived completes
 * as answered instead (accepted_2xx), its body marked cut. */
static void conn_fail(struct upstream_conn *conn, enum fbr_client_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_fail(struct upstream_conn *conn, enum fbr_client_err err, const char *fmt, ...)
{
    struct pool *pool = conn->pool;
    struct call *call = conn->call;
    char reason[sizeof(call->reason)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (call) {
        if (accepted_2xx(conn, call)) {
            /* The server took the request: what fails is only a body nobody needs.  The
             * response stands as answered (err NONE, its status), the body is marked cut and
             * the reason says what happened to it; the connection is closed below. */
            memcpy(call->reason, reason, sizeof(reason));
            call->resp.body_cut = 1;
        } else {
            call_set_error(call, err, "%s", reason);
        }
        conn_detach(conn, call);
        evtimer_del(call->timer);
    }
    /* the calls pipelined behind it */
    requeue_inflight(conn, err, reason, call && server_ignores_rest(conn, fbr_response_head_done(&conn->rp)));
    conn_destroy(conn);
    if (call)
        call_complete(call);
    pool_kick(pool);
}

static char *put(char *p, const void *src, size_t n)
{
    memcpy(p, src, n);
    return p + n;
}

/* A connection keeps a request buffer (pend) this large between requests; a longer request's
 * is freed once it is sent or queued. */
#define PEND_KEEP 65536

/* Room for n more bytes at the end of conn's pending bytes; returns where they go. */
static char *pend_reserve(struct upstream_conn *conn, size_t n)
{
    if (conn->pend_len + n > conn->pend_cap) {
        size_t cap = conn->pend_cap ? conn->pend_cap * 2 : 1024;
        while (cap < conn->pend_len + n)
            cap *= 2;
        conn->pend = fbr_xrealloc(conn->pend, cap);
        conn->pend_cap = cap;
    }
    return conn->pend + conn->pend_len;
}

/* conn's pending bytes are gone (sent or queued in the output): a large buffer is not kept. */
static void pend_clear(struct upstream_conn *conn)
{
    conn->pend_len = 0;
    if (conn->pend_cap > PEND_KEEP) {
        free(conn->pend);
        conn->pend = NULL;
        conn->pend_cap = 0;
    }
}

/* conn's pending requests to its socket with one send(); what the kernel does not take, or
 * everything when the bufferevent still has output of its own, goes to the bufferevent, and so
 * does an error (a reset, a broken pipe), which the bufferevent then meets on its own write. */
static void send_pending(struct upstream_conn *conn)
{
    struct pool *pool = conn->pool;
    if (conn->corked) {
        TAILQ_REMOVE(&pool->client->corked, conn, cork_link);
        conn->corked = 0;
        if (conn->in_room) { /* no longer first choice */
            TAILQ_REMOVE(&pool->room, conn, room_link);
            TAILQ_INSERT_TAIL(&pool->room, conn, room_link);
        }
    }
    if (!conn->pend_len)
        return;
    struct evbuffer *out = bufferevent_get_output(conn->bev);
    size_t sent = 0;
    if (evbuffer_get_length(out) == 0) {
        ssize_t k = send(bufferevent_getfd(conn->bev), conn->pend, conn->pend_len, MSG_NOSIGNAL);
        sent = k > 0 ? (size_t)k : 0;
    }
    if (sent < conn->pend_len)
        evbuffer_add(out, conn->pend + sent, conn->pend_len - sent);
    pend_clear(conn);
}

/* The client's flush event: every connection written to in this loop iteration sends. */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fbr_client *c = arg;
    struct upstream_conn *conn;
    (void)fd, (void)what;
    while ((conn = TAILQ_FIRST(&c->corked)))
        send_pending(conn);
}

static void write_request(struct upstream_conn *conn, struct call *call)
{
    struct fbr_client *client = conn->pool->client;
    struct evbuffer *out = bufferevent_get_output(conn->bev);
    size_t body_len = 0;
    for (size_t i = 0; i < call->req.nbody; i++)
        body_len += call->req.body[i].iov_len;
    /*
     * The head and a small body (a chat notification) are built in one buffer, piece by piece (no
     * printf, no evbuffer chain per piece: bench/README.md), and go to the kernel as one write; a
     * large body is referenced where it lies.
     */
    static const char ua[] = "\r\nUser-Agent: firebridge/" FBR_VERSION "\r\n";
    static const char cl[] = "Content-Length: ";
    int slash = !(call->path_len && call->path[0] == '/');
    int has_cl = body_len || !(call->head_method || strcmp(call->req.method, "GET") == 0);
    char num[FBR_U64_DIGITS + 1];
    size_t num_len = has_cl ? fbr_fmt_u64(num, body_len) : 0;
    int copy = body_len <= COPY_BODY_MAX;
    size_t mlen = strlen(call->req.method), hlen = strlen(conn->pool->host_hdr);
    size_t total = mlen + 1 + (size_t)slash + call->path_len + 17 + hlen + sizeof(ua) - 1 +
                   (has_cl ? sizeof(cl) - 1 + num_len + 2 : 0) + call->req.head_len + 2 +
                   (copy ? body_len : 0);
    /*
     * Over plain TCP the request joins the connection's pending bytes and the client's flush
     * event sends them once the loop has run this iteration's other callbacks: requests started
     * together on one connection (pipelining) share one send(), and appending to the
     * bufferevent's output instead would register write interest with epoll and remove it after
     * the write, two system calls per delivery for a socket that is almost always writable.  TLS
     * and a large body referenced in place go through the bufferevent's output, after anything
     * pending.
     */
    int cork = !conn->pool->tls && copy;
    if (!cork)
        send_pending(conn); /* what is pending goes first; pend is then empty */
    char *buf = pend_reserve(conn, total), *p = buf;
    p = put(p, call->req.method, mlen);
    p = put(p, " /", 1 + (size_t)slash);
    p = put(p, call->path, call->path_len);
    p = put(p, " HTTP/1.1\r\nHost: ", 17);
    p = put(p, conn->pool->host_hdr, hlen);
    p = put(p, ua, sizeof(ua) - 1);
    if (has_cl) {
        p = put(p, cl, sizeof(cl) - 1);
        p = put(p, num, num_len);
        p = put(p, "\r\n", 2);
    }
    if (call->req.head_len)
        p = put(p, call->req.head, call->req.head_len);
    p = put(p, "\r\n", 2);
    for (size_t i = 0; copy && i < call->req.nbody; i++)
        if (call->req.body[i].iov_len)
            p = put(p, call->req.body[i].iov_base, call->req.body[i].iov_len);
    if (cork) {
        conn->pend_len += total;
        if (!conn->corked) {
            conn->corked = 1;
            TAILQ_INSERT_TAIL(&client->corked, conn, cork_link);
            event_active(client->flush, EV_TIMEOUT, 1);
        }
    } else {
        evbuffer_add(out, buf, total);
        for (size_t i = 0; !copy && i < call->req.nbody; i++)
            if (call->req.body[i].iov_len)
                evbuffer_add_reference(out, call->req.body[i].iov_base,
                                       call->req.body[i].iov_len, noop_cleanup, NULL);
        pend_clear(conn);
    }
    call->req_start = conn->queued;
    conn->queued += total + (copy ? 0 : body_len);
    call->req_end = conn->queued;
    if (call == conn->call)
        parser_reset(conn);
    else
        client->stats.pipelined++;
    arm_timer(call, client->opts.request_timeout_ms);
}

static int64_t parse_int(const char *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    while (*end == ' ' || *end == '\t')
        end++;
    if (end == v || *end || errno || x < 0)
        return -1;
    return x;
}

/* A header counting seconds (Retry-After, the limits' resets), or -1: at most
 * FBR_CLIENT_MAX_SECONDS, which times 1000 plus any clock still fits in an int64_t. */
static int64_t parse_seconds(const char *v)
{
    int64_t s = parse_int(v);
    return s > FBR_CLIENT_MAX_SECONDS ? FBR_CLIENT_MAX_SECONDS : s;
}

/* The response headers the client reads beyond the framing (response.h's): X(ID, name). */
#define RESP_HEADER_MAP(X)                                                                         \
    X(RETRY_AFTER, "retry-after")                                                                  \
    X(RL_LIMIT, "x-ratelimit-limit")                                                               \
    X(RL_REMAINING, "x-ratelimit-remaining")                                                       \
    X(RL_RESET, "x-ratelimit-reset")                                                               \
    X(FLOOD_LIMIT, "x-floodcontrol-limit")                                                         \
    X(FLOOD_REMAINING, "x-floodcontrol-remaining")                                                 \
    X(FLOOD_RESET, "x-floodcontrol-reset")

enum resp_header {
#define FBR_X(id, name) RH_##id,
    RESP_HEADER_MAP(FBR_X)
#undef FBR_X
        RH_OTHER
};

static const struct {
    const char *name;
    size_t len;
} resp_headers[] = {
#define FBR_X(id, name) {name, sizeof(name) - 1},
    RESP_HEADER_MAP(FBR_X)
#undef FBR_X
};

/* Which header name[0..len) is (lengths compared first: one strncasecmp per header line). */
static enum resp_header resp_header_id(const char *name, size_t len)
{
    for (size_t i = 0; i < RH_OTHER; i++)
        if (resp_headers[i].len == len && strncasecmp(name, resp_headers[i].name, len) == 0)
            return (enum resp_header)i;
    return RH_OTHER;
}

/* A header of the head call's final answer (fbr_response_header_fn; arg: the connection). */
static int on_header(void *arg, const char *name, size_t name_len, char *v)
{
    struct upstream_conn *conn = arg;
    struct fbr_client_resp *r = &conn->call->resp;
    switch (resp_header_id(name, name_len)) {
    case RH_RETRY_AFTER:
        r->retry_after_wall_ms = fbr_client_parse_retry_after(v, fbr_wall_ms());
        break;
    case RH_RL_LIMIT:
        r->ratelimit_limit = parse_int(v);
        break;
    case RH_RL_REMAINING:
        r->ratelimit_remaining = parse_int(v);
        break;
    case RH_RL_RESET:
        r->ratelimit_reset = parse_seconds(v);
        break;
    case RH_FLOOD_LIMIT:
        r->flood_limit = parse_int(v);
        break;
    case RH_FLOOD_REMAINING:
        r->flood_remaining = parse_int(v);
        break;
    case RH_FLOOD_RESET:
        r->flood_reset = parse_seconds(v);
        break;
    case RH_OTHER:
        break;
    }
    return 0;
}

static void reset_resp(struct fbr_client_resp *r)
{
    r->status = 0;
    r->err = FBR_CLIENT_ERR_NONE;
    r->body_len = 0;
    r->body_cut = 0;
    r->retry_after_wall_ms = -1;
    r->ratelimit_limit = r->ratelimit_remaining = r->ratelimit_reset = -1;
    r->flood_limit = r->flood_remaining = r->flood_reset = -1;
}

static void take_body(struct upstream_conn *conn, size_t n)
{
    struct call *call = conn->call;
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    size_t room = call->body_cap - call->resp.body_len;
    size_t k = n < room ? n : room;
    if (k) {
        evbuffer_remove(in, call->body + call->resp.body_len, k);
        call->resp.body_len += k;
        call->body[call->resp.body_len] = '\0';
    }
    if (n > k)
        call->resp.body_cut = 1;
    evbuffer_drain(in, n - k);
}

/*
 * The head call's response is complete.  The connection goes on with the next call in flight
 * when the response lets it persist (HTTP/1.1, no "Connection: close", not delimited by the
 * close) and the server answered after taking the whole request; with none in flight it becomes
 * idle if nothing is left in either buffer; otherwise it closes and the calls pipelined behind
 * are sent again elsewhere.  An answer that came before the request was all written (a server
 * answering early) closes it too: the callback gives the body slices back to the caller, so the
 * rest of the request can no longer be sent, and the requests behind it were not sent at all.
 * Returns 1 when conn goes on and input is already waiting for the next response (the caller
 * parses on), else 0.
 */
static int response_done(struct upstream_conn *conn)
{
    struct pool *pool = conn->pool;
    struct call *call = conn->call;
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    int persists = !conn_ending(conn) && request_sent(conn, call);
    int ignored = server_ignores_rest(conn, 1);
    int more = 0;
    conn_detach(conn, call); /* call_complete() stops its timer */
    if (call->resp.status == 408 && call->after_idle && !call->requeued) {
        /* A 408 to the first request on a connection that had been idle is the server's idle
         * timeout crossing our reuse, not an answer to the request: as browsers do, the
         * connection is dropped and the request sent once more (its one resend) on a new
         * connection, ahead of the calls that were behind it. */
        char reason[200];
        snprintf(reason, sizeof(reason), "%s:%s answered 408 on a reused connection", pool->host,
                 pool->port);
        requeue_inflight(conn, FBR_CLIENT_ERR_EOF, reason, ignored);
        conn_destroy(conn);
        requeue_call(pool, call, NULL, 1, FBR_CLIENT_ERR_EOF, reason);
        call->fresh = 1;
        pool_kick(pool);
        return 0;
    }
    if (persists && conn->ninflight) {
        conn->persistent = 1;
        parser_reset(conn);
        room_update(conn);
        more = evbuffer_get_length(in) > 0;
    } else if (persists && evbuffer_get_length(in) == 0 &&
               evbuffer_get_length(bufferevent_get_output(conn->bev)) == 0) {
        conn->persistent = 1;
        conn->state = CS_IDLE;
        room_update(conn);
        TAILQ_INSERT_HEAD(&pool->idle, conn, link);
    } else {
        char reason[200];
        snprintf(reason, sizeof(reason),
                 "%s:%s ended the connection with an earlier response, before responding",
                 pool->host, pool->port);
        requeue_inflight(conn, FBR_CLIENT_ERR_EOF, reason, ignored);
        conn_destroy(conn);
    }
    call_complete(call);
    pool_kick(pool);
    return more;
}

/*
 * The parser has used up the input: 0 to wait for more.  A body already longer than the call
 * keeps (body_cut) is not read any further, whatever its framing says is left (a never-ending
 * body, a Content-Length of 10 GB): 1, the response is complete with what was kept, and the
 * connection is closed rather than drained for reuse.  A longer body that has arrived whole is
 * still taken to its end, so a server's moderately long answers keep their connection.
 */
static int need_more(struct upstream_conn *conn)
{
    if (conn->call->resp.body_cut && fbr_response_head_done(&conn->rp)) {
        conn->abandon = 1;
        return 1;
    }
    return 0;
}

/* Runs the parser over the input; returns 1 when the response is complete, 0 to wait, -1 on a
 * protocol error (reason set in the call). */
static int parse(struct upstream_conn *conn)
{
    struct call *call = conn->call;
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    for (;;) {
        size_t n = 0;
        int rc = fbr_response_parse(&conn->rp, in, &n);
        call->resp.status = conn->rp.status; /* an interim one's until the final line */
        switch (rc) {
        case FBR_RESPONSE_BODY:
            take_body(conn, n);
            continue;
        case FBR_RESPONSE_MORE:
            return need_more(conn);
        case FBR_RESPONSE_DONE:
            return 1;
        default:
            call_set_error(call, FBR_CLIENT_ERR_PROTOCOL, "%s", conn->rp.error);
            return -1;
        }
    }
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct upstream_conn *conn = arg;
    (void)bev;
    if (conn->state != CS_BUSY || !conn->call) {
        /* data on an idle connection: nothing can be waiting for it */
        struct pool *pool = conn->pool;
        conn_destroy(conn);
        pool_kick(pool);
        return;
    }
    for (;;) {
        if (!request_started(conn, conn->call)) {
            /* Nothing written is unanswered: these bytes answer no request of ours (a server's
             * 408 as its idle timeout closes the connection, sent as we queued a request on
             * it).  The connection is finished; what is queued on it goes elsewhere, moved. */
            struct pool *pool = conn->pool;
            char reason[200];
            snprintf(reason, sizeof(reason), "%s:%s sent bytes that answer no request", pool->host,
                     pool->port);
            requeue_inflight(conn, FBR_CLIENT_ERR_PROTOCOL, reason, 1);
            conn_destroy(conn);
            pool_kick(pool);
            return;
        }
        conn->got_bytes = 1;
        int rc = parse(conn);
        if (rc == 0) {
            room_update(conn); /* an answer that ends conn takes it out of the room list */
            return;
        }
        if (rc < 0) {
            struct call *call = conn->call;
            char reason[sizeof(call->reason)];
            memcpy(reason, call->reason, sizeof(reason));
            conn_fail(conn, FBR_CLIENT_ERR_PROTOCOL, "%s", reason);
            return;
        }
        if (!response_done(conn))
            return; /* pipelined: the next response is parsed when its bytes are here */
    }
}

static int connect_next(struct upstream_conn *conn);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/*
 * One read of a connected plain-TCP socket into the bufferevent's input (fbr_rawread_into: no
 * FIONREAD), then the parser as read_cb runs it; end of file and errors go to event_cb as the
 * bufferevent reports them.  A response almost always fits one read, and a longer one keeps the
 * level-triggered event ready for the next loop iteration.  (The input's end is not frozen here:
 * libevent unfreezes it when the connect sets the socket.)
 */
static void raw_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_conn *conn = arg;
    (void)what;
    ssize_t n = fbr_rawread_into(fd, bufferevent_get_input(conn->bev));
    if (n > 0) {
        read_cb(conn->bev, conn);
    } else if (n == -2) {
        conn_fail(conn, FBR_CLIENT_ERR_IO, "out of memory reading from %s:%s", conn->pool->host,
                  conn->pool->port);
    } else if (n == 0) {
        event_cb(conn->bev, BEV_EVENT_READING | BEV_EVENT_EOF, conn);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        event_cb(conn->bev, BEV_EVENT_READING | BEV_EVENT_ERROR, conn);
    }
}

/* A plain-TCP connection just connected: reads move from the bufferevent to raw_read_cb (the
 * bufferevent keeps writing what the kernel did not take at once).  Returns 0, or -1 when the
 * event could not be made (the bufferevent then keeps reading). */
static int raw_read_start(struct upstream_conn *conn)
{
    evutil_socket_t fd = bufferevent_getfd(conn->bev);
    struct event_base *base = bufferevent_get_base(conn->bev);
    conn->rd = fd >= 0 ? event_new(base, fd, EV_READ | EV_PERSIST, raw_read_cb, conn) : NULL;
    if (!conn->rd || event_add(conn->rd, NULL) != 0) {
        if (conn->rd)
            event_free(conn->rd);
        conn->rd = NULL;
        return -1;
    }
    bufferevent_disable(conn->bev, EV_READ);
    return 0;
}

static void tls_reason(struct upstream_conn *conn, char *buf, size_t len)
{
    SSL *ssl = bufferevent_openssl_get_ssl(conn->bev);
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (v != X509_V_OK) {
        snprintf(buf, len, "TLS certificate verification failed for host %s: %s", conn->pool->host,
                 X509_verify_cert_error_string(v));
        return;
    }
    unsigned long e = bufferevent_get_openssl_error(conn->bev);
    if (e) {
        char es[200];
        ERR_error_string_n(e, es, sizeof(es));
        snprintf(buf, len, "TLS handshake with %s failed: %s", conn->pool->host, es);
        return;
    }
    buf[0] = '\0';
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct upstream_conn *conn = arg;
    struct pool *pool = conn->pool;
    char reason[300];
    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        if (conn->state != CS_CONNECTING || !conn->call) {
            conn_destroy(conn);
            pool_kick(pool);
            return;
        }
        conn->state = CS_BUSY;
        evtimer_del(conn->call->timer);
        if (!pool->tls)
            raw_read_start(conn);
        write_request(conn, conn->call);
        return;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)))
        return;
    int sock_err = EVUTIL_SOCKET_ERROR();
    switch (conn->state) {
    case CS_IDLE:
    case CS_RESOLVING:
        conn_destroy(conn);
        pool_kick(pool);
        return;
    case CS_CONNECTING:
        if (pool->tls) {
            tls_reason(conn, reason, sizeof(reason));
            if (reason[0]) {
                conn_fail(conn, FBR_CLIENT_ERR_TLS, "%s", reason);
                return;
            }
        }
        if ((what & BEV_EVENT_ERROR) && sock_err) {
            conn->last_errno = sock_err;
            if (conn->ai_next && connect_next(conn) == 0)
                return;
            conn_fail(conn, FBR_CLIENT_ERR_CONNECT, "connecting to %s:%s failed: %s", pool->host,
                      pool->port, evutil_socket_error_to_string(conn->last_errno));
            return;
        }
        if (pool->tls)
            conn_fail(conn, FBR_CLIENT_ERR_TLS,
                      "connection to %s:%s closed during the TLS handshake", pool->host,
                      pool->port);
        else
            conn_fail(conn, FBR_CLIENT_ERR_CONNECT, "connecting to %s:%s failed", pool->host,
                      pool->port);
        return;
    case CS_BUSY:
        if ((what & BEV_EVENT_EOF) && conn->call && fbr_response_until_eof(&conn->rp)) {
            take_body(conn, evbuffer_get_length(bufferevent_get_input(conn->bev)));
            response_done(conn);
            return;
        }
        if (pool->tls) {
            tls_reason(conn, reason, sizeof(reason));
            if (reason[0]) {
                conn_fail(conn, FBR_CLIENT_ERR_TLS, "%s", reason);
                return;
            }
        }
        if (conn->call && !conn->got_bytes &&
            (!request_started(conn, conn->call) ||
             (conn->call->resp.reused && !conn->call->requeued))) {
            /* The connection ended before its first unanswered request was sent (a move, see
             * requeue_inflight()), or the server closed a kept-alive connection as we reused it
             * (the usual idle-close race): that request goes out once more on another
             * connection, with whatever was pipelined behind.  The receiver can drop a
             * duplicate by its delivery id should the first copy have been processed after
             * all. */
            snprintf(reason, sizeof(reason), "%s:%s closed the connection before responding",
                     pool->host, pool->port);
            requeue_inflight(conn, FBR_CLIENT_ERR_EOF, reason, 0);
            conn_destroy(conn);
            pool_kick(pool);
            return;
        }
        if (what & BEV_EVENT_EOF)
            conn_fail(conn, FBR_CLIENT_ERR_EOF, "%s:%s closed the connection %s", pool->host,
                      pool->port,
                      conn->got_bytes ? "in the middle of the response" : "before responding");
        else
            conn_fail(conn, FBR_CLIENT_ERR_IO, "I/O error with %s:%s: %s", pool->host, pool->port,
                      evutil_socket_error_to_string(sock_err));
        return;
    }
}

static struct bufferevent *make_bev(struct upstream_conn *conn)
{
    struct pool *pool = conn->pool;
    struct fbr_client *c = pool->client;
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    struct bufferevent *bev;
    if (pool->tls) {
        SSL *ssl = SSL_new(c->ssl_ctx);
        if (!ssl)
            return NULL;
        if (!pool->host_is_ip) {
            SSL_set_tlsext_host_name(ssl, pool->host);
            SSL_set1_host(ssl, pool->host);
        } else {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), pool->host);
        }
        bev = bufferevent_openssl_socket_new(c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, opts);
        if (!bev) {
            SSL_free(ssl);
            return NULL;
        }
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    } else {
        bev = bufferevent_socket_new(c->base, -1, opts);
        if (!bev)
            return NULL;
    }
    bufferevent_setcb(bev, read_cb, NULL, event_cb, conn);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return bev;
}

/* Tries the next resolved address; returns 0 when a connect is under way, -1 when none is left
 * (conn->last_errno says why the last one failed). */
static int connect_next(struct upstream_conn *conn)
{
    while (conn->ai_next) {
        struct evutil_addrinfo *ai = conn->ai_next;
        conn->ai_next = ai->ai_next;
        if (conn->bev) {
            bufferevent_free(conn->bev);
            conn->bev = NULL;
        }
        conn->bev = make_bev(conn);
        if (!conn->bev) {
            conn->last_errno = ENOMEM;
            return -1;
        }
        conn->pool->client->stats.connections_opened++;
        if (bufferevent_socket_connect(conn->bev, ai->ai_addr, (int)ai->ai_addrlen) == 0) {
            /* A request goes out as several writes (TLS: one record per buffer chain); with
             * Nagle on, the later ones wait for the peer's delayed ACK, about 40 ms each. */
            int one = 1;
            evutil_socket_t fd = bufferevent_getfd(conn->bev);
            if (fd >= 0)
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            return 0;
        }
        conn->last_errno = EVUTIL_SOCKET_ERROR();
    }
    return -1;
}

static void start_connect(struct upstream_conn *conn)
{
    conn->state = CS_CONNECTING;
    if (connect_next(conn) < 0)
        conn_fail(conn, FBR_CLIENT_ERR_CONNECT, "connecting to %s:%s failed: %s", conn->pool->host,
                  conn->pool->port, evutil_socket_error_to_string(conn->last_errno));
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    struct upstream_conn *conn = arg;
    if (conn->dead) {
        if (res)
            evutil_freeaddrinfo(res);
        conn_destroy(conn);
        return;
    }
    if (result != 0 || !res) {
        if (res)
            evutil_freeaddrinfo(res);
        conn_fail(conn, FBR_CLIENT_ERR_DNS, "resolving %s failed: %s", conn->pool->host,
                  evutil_gai_strerror(result));
        return;
    }
    conn->ai = conn->ai_next = res;
    start_connect(conn);
}

static void conn_open(struct pool *pool, struct call *call)
{
    struct fbr_client *c = pool->client;
    struct upstream_conn *conn = fbr_xcalloc(1, sizeof(*conn));
    conn->pool = pool;
    fbr_response_init(&conn->rp, on_header, conn);
    TAILQ_INIT(&conn->inflight);
    conn_attach(conn, call);
    pool->nconns++;
    c->stats.open_now++;
    arm_timer(call, c->opts.connect_timeout_ms);
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    if (pool->host_is_ip) {
        hints.ai_flags = EVUTIL_AI_NUMERICHOST | EVUTIL_AI_NUMERICSERV;
        struct evutil_addrinfo *res = NULL;
        int rc = evutil_getaddrinfo(pool->host, pool->port, &hints, &res);
        if (rc != 0) {
            conn_fail(conn, FBR_CLIENT_ERR_DNS, "bad address %s: %s", pool->host,
                      evutil_gai_strerror(rc));
            return;
        }
        conn->ai = conn->ai_next = res;
        start_connect(conn);
        return;
    }
    conn->state = CS_RESOLVING;
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
    /* the callback may run before evdns_getaddrinfo() returns (hosts file, cached names) */
    evdns_getaddrinfo(c->dns, pool->host, pool->port, &hints, dns_cb, conn);
}

/* call goes out on conn, an idle or a persistent busy connection with room (pick_conn()). */
static void conn_start_call(struct upstream_conn *conn, struct call *call)
{
    call->after_idle = conn->state == CS_IDLE;
    if (call->after_idle)
        TAILQ_REMOVE(&conn->pool->idle, conn, link);
    conn_attach(conn, call);
    call->resp.reused = 1;
    conn->state = CS_BUSY;
    conn->pool->client->stats.connections_reused++;
    write_request(conn, call);
    room_update(conn);
}

static void pool_kick(struct pool *pool)
{
    /* iterative, never nested: a connect that fails at once must not recurse per waiting call */
    if (pool->kicking)
        return;
    pool->kicking = 1;
    while (!TAILQ_EMPTY(&pool->waiting)) {
        struct call *call = TAILQ_FIRST(&pool->waiting);
        struct upstream_conn *conn = call->fresh ? NULL : pick_conn(pool);
        if (!conn && pool->nconns >= pool->client->opts.pool_size) {
            /* a call owed a new connection takes the place of the idle one used longest ago
             * (as likely as the one that failed it to be timed out by the server), else waits */
            struct upstream_conn *stale = TAILQ_LAST(&pool->idle, conn_list);
            if (!call->fresh || !stale)
                break;
            conn_destroy(stale);
        }
        TAILQ_REMOVE(&pool->waiting, call, link);
        call->waiting = 0;
        call->fresh = 0;
        evtimer_del(call->timer);
        if (conn)
            conn_start_call(conn, call);
        else
            conn_open(pool, call);
    }
    pool->kicking = 0;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct call *call = arg;
    struct fbr_client *c = call->client;
    (void)fd, (void)what;
    if (call->deferred) {
        call_deliver(call);
        return;
    }
    if (call->waiting) {
        TAILQ_REMOVE(&call->pool->waiting, call, link);
        call->waiting = 0;
        call_set_error(call, FBR_CLIENT_ERR_TIMEOUT,
                       "no free connection to %s within %u ms (pool of %u busy)", call->pool->host,
                       c->opts.connect_timeout_ms, c->opts.pool_size);
        call_complete(call);
        return;
    }
    struct upstream_conn *conn = call->conn;
    if (!conn)
        return;
    struct pool *pool = conn->pool;
    if (conn->state == CS_RESOLVING) {
        /* cancelling a pending evdns lookup can assert: abandon the connection instead */
        conn->dead = 1;
        conn_detach(conn, call);
        pool->nconns--;
        c->stats.open_now--;
        call_set_error(call, FBR_CLIENT_ERR_TIMEOUT, "resolving %s timed out after %u ms",
                       pool->host, c->opts.connect_timeout_ms);
        call_complete(call);
        pool_kick(pool);
        return;
    }
    if (conn->state == CS_CONNECTING) {
        conn_fail(conn, FBR_CLIENT_ERR_TIMEOUT, "connecting to %s:%s timed out after %u ms",
                  pool->host, pool->port, c->opts.connect_timeout_ms);
        return;
    }
    /* The head has waited at least as long as any call pipelined behind it (the same deadline,
     * armed earlier): whichever timer fires, the head fails and the calls behind it are sent
     * again elsewhere (requeue_inflight()), so the outcome does not hang on the timers' order. */
    conn_fail(conn, FBR_CLIENT_ERR_TIMEOUT, "no complete response from %s:%s within %u ms",
              pool->host, pool->port, c->opts.request_timeout_ms);
}

/* ---- pools (URLs are parsed by url.h) ---- */

/* Whether pool has a call waiting or a connection that is not idle (opening or busy). */
static int pool_in_use(const struct pool *pool)
{
    if (!TAILQ_EMPTY(&pool->waiting))
        return 1;
    unsigned idle = 0;
    const struct upstream_conn *conn;
    TAILQ_FOREACH (conn, &pool->idle, link)
        idle++;
    return idle != pool->nconns;
}

/* Frees a pool not in use: its idle connections closed, its origin forgotten. */
static void pool_free(struct fbr_client *c, struct pool *pool)
{
    struct upstream_conn *conn;
    while ((conn = TAILQ_FIRST(&pool->idle)))
        conn_destroy(conn);
    fbr_strmap_del(&c->pools, pool->key, pool->key_len);
    TAILQ_REMOVE(&c->pool_list, pool, all_link);
    c->stats.pools_now--;
    free(pool->key);
    free(pool->host);
    free(pool->host_hdr);
    free(pool);
}

/* The sweep runs every half pool_idle_ms while a pool exists: a pool found unused twice in a
 * row, with no call since, has been unused for at least pool_idle_ms and is freed. */
static void sweep_arm(struct fbr_client *c)
{
    unsigned ms = c->opts.pool_idle_ms / 2 ? c->opts.pool_idle_ms / 2 : 1;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->sweep, &tv);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    struct fbr_client *c = arg;
    (void)fd, (void)what;
    struct pool *pool, *next;
    for (pool = TAILQ_FIRST(&c->pool_list); pool; pool = next) {
        next = TAILQ_NEXT(pool, all_link);
        if (pool->used || pool_in_use(pool)) {
            pool->used = 0;
            pool->unused_sweeps = 0;
        } else if (++pool->unused_sweeps >= 2) {
            pool_free(c, pool);
        }
    }
    if (!TAILQ_EMPTY(&c->pool_list))
        sweep_arm(c);
}

/* Makes room for one more pool at max_pools: the least recently called pool not in use is
 * freed.  Returns 0 when every pool is in use. */
static int pool_evict(struct fbr_client *c)
{
    struct pool *pool;
    TAILQ_FOREACH (pool, &c->pool_list, all_link) {
        if (!pool_in_use(pool)) {
            pool_free(c, pool);
            return 1;
        }
    }
    return 0;
}

/* The pool of u's origin, made when there is none (NULL: max_pools are all in use). */
static struct pool *get_pool(struct fbr_client *c, const struct fbr_url *u)
{
    /* scheme://host:port, built by hand: this runs once per request (url.h caps the host at
     * FBR_URL_HOST_MAX bytes, so it fits) */
    char key[sizeof("https://:") + FBR_URL_HOST_MAX + FBR_U64_DIGITS];
    const char *scheme = u->tls ? "https://" : "http://";
    size_t n = strlen(scheme);
    size_t hlen = u->host.len < FBR_URL_HOST_MAX ? u->host.len : FBR_URL_HOST_MAX;
    memcpy(key, scheme, n);
    memcpy(key + n, u->host.ptr, hlen);
    n += hlen;
    key[n++] = ':';
    n += fbr_fmt_u64(key + n, u->port_num);
    struct pool *pool = fbr_strmap_get(&c->pools, key, n);
    if (pool) {
        pool->used = 1;
        if (pool != TAILQ_LAST(&c->pool_list, pool_head)) {
            TAILQ_REMOVE(&c->pool_list, pool, all_link);
            TAILQ_INSERT_TAIL(&c->pool_list, pool, all_link);
        }
        return pool;
    }
    if (c->stats.pools_now >= c->opts.max_pools && !pool_evict(c))
        return NULL;
    pool = fbr_xcalloc(1, sizeof(*pool));
    pool->client = c;
    pool->tls = u->tls;
    pool->host = fbr_xstrndup(u->host.ptr, u->host.len);
    unsigned char buf[sizeof(struct in6_addr)];
    pool->host_is_ip = evutil_inet_pton(AF_INET, pool->host, buf) == 1 ||
                       evutil_inet_pton(AF_INET6, pool->host, buf) == 1;
    char hh[300];
    int def = u->port_num == (u->tls ? 443u : 80u);
    if (def)
        snprintf(hh, sizeof(hh), u->ipv6 ? "[%s]" : "%s", pool->host);
    else
        snprintf(hh, sizeof(hh), u->ipv6 ? "[%s]:%u" : "%s:%u", pool->host, u->port_num);
    pool->host_hdr = fbr_xstrdup(hh);
    snprintf(pool->port, sizeof(pool->port), "%u", u->port_num);
    TAILQ_INIT(&pool->idle);
    TAILQ_INIT(&pool->room);
    TAILQ_INIT(&pool->waiting);
    pool->key = fbr_xstrndup(key, n);
    pool->key_len = n;
    pool->used = 1;
    fbr_strmap_put(&c->pools, key, (size_t)n, pool);
    TAILQ_INSERT_TAIL(&c->pool_list, pool, all_link);
    c->stats.pools_now++;
    if (!evtimer_pending(c->sweep, NULL))
        sweep_arm(c);
    return pool;
}

/* Whether part lies inside req's URL: a parse handed in (req->parsed) is of these bytes. */
static int within(const struct fbr_client_req *req, struct fbr_slice part)
{
    uintptr_t a = (uintptr_t)req->url, p = (uintptr_t)part.ptr;
    return part.ptr && p >= a && part.len <= req->url_len && p - a <= req->url_len - part.len;
}

int fbr_client_request(struct fbr_client *c, const struct fbr_client_req *req, fbr_client_cb cb,
                       void *arg)
{
    struct fbr_url own;
    const struct fbr_url *u = req->parsed;
    const char *why;
    if (!u) {
        if (fbr_url_parse(req->url, req->url_len, &own, &why) != FBR_OK)
            return FBR_INVALID;
        u = &own;
    }
    struct fbr_slice target = fbr_url_target(u);
    if (!within(req, u->host) || !within(req, target))
        return FBR_INVALID;
    struct pool *pool = get_pool(c, u);
    size_t cap = req->max_body > BODY_SAMPLE ? req->max_body : BODY_SAMPLE;
    if (cap > FBR_CLIENT_MAX_BODY)
        cap = FBR_CLIENT_MAX_BODY;
    /* the call's timer event sits in the call's own allocation, after the body: no allocation
     * of its own per request (event_get_struct_event_size() keeps this independent of
     * libevent's layout) */
    size_t timer_at = (sizeof(struct call) + cap + 1 + 15) & ~(size_t)15;
    struct call *call = fbr_xcalloc(1, timer_at + event_get_struct_event_size());
    call->body_cap = cap;
    call->client = c;
    call->pool = pool;
    call->cb = cb;
    call->arg = arg;
    call->req = *req;
    call->req.parsed = NULL; /* borrowed for the call only */
    call->path = target.ptr;
    call->path_len = target.len;
    call->head_method = strcmp(req->method, "HEAD") == 0;
    call->deadline_ms = fbr_now_ms() + c->opts.connect_timeout_ms + c->opts.request_timeout_ms;
    call->timer = (struct event *)(void *)((char *)call + timer_at);
    evtimer_assign(call->timer, c->base, timer_cb, call);
    reset_resp(&call->resp);
    TAILQ_INSERT_TAIL(&c->calls, call, all_link);
    if (!pool) {
        c->stats.pools_refused++;
        call_set_error(call, FBR_CLIENT_ERR_CONNECT,
                       "not connecting to %.*s:%u: %u origins have connections in use "
                       "(the most kept at once)",
                       (int)u->host.len, u->host.ptr, u->port_num, c->opts.max_pools);
        call_complete(call);
        return FBR_OK;
    }
    struct upstream_conn *conn = TAILQ_EMPTY(&pool->waiting) && !pool->kicking ? pick_conn(pool)
                                                                               : NULL;
    if (conn) {
        /* a kept-alive connection can take it and no call waits for one: the request goes out
         * now, without a connect deadline set here and cleared by pool_kick() at once */
        conn_start_call(conn, call);
        return FBR_OK;
    }
    call->waiting = 1;
    TAILQ_INSERT_TAIL(&pool->waiting, call, link);
    arm_timer(call, c->opts.connect_timeout_ms);
    pool_kick(pool);
    return FBR_OK;
}

int64_t fbr_client_parse_retry_after(const char *v, uint64_t now_wall_ms)
{
    while (*v == ' ')
        v++;
    if (*v >= '0' && *v <= '9') {
        int64_t s = parse_seconds(v);
        return s < 0 ? -1 : (int64_t)now_wall_ms + s * 1000;
    }
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end || *end)
        return -1;
    time_t t = timegm(&tm);
    return t < 0 ? -1 : (int64_t)t * 1000;
}

void fbr_client_get_stats(const struct fbr_client *c, struct fbr_client_stats *out)
{
    *out = c->stats;
}

/* ---- lifecycle ---- */

int fbr_client_new(struct event_base *base, const struct fbr_client_opts *opts,
                   struct fbr_client **out, char *err, size_t errlen)
{
    *out = NULL;
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "cannot create a TLS context");
        return FBR_ERROR;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (opts->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, opts->ca_file, NULL) != 1) {
            char es[200];
            ERR_error_string_n(ERR_get_error(), es, sizeof(es));
            snprintf(err, errlen, "cannot load CA file %s: %s", opts->ca_file, es);
            SSL_CTX_free(ctx);
            return FBR_ERROR;
        }
    } else {
        SSL_CTX_set_default_verify_paths(ctx);
    }
    SSL_CTX_set_verify(ctx, opts->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    struct evdns_base *dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (dns && opts->nameserver) {
        evdns_base_load_hosts(dns, NULL); /* the system hosts file, as resolv.conf mode does */
        if (evdns_base_nameserver_ip_add(dns, opts->nameserver) != 0) {
            snprintf(err, errlen, "bad nameserver address %s", opts->nameserver);
            evdns_base_free(dns, 0);
            SSL_CTX_free(ctx);
            return FBR_ERROR;
        }
    }
    if (!dns) {
        snprintf(err, errlen, "cannot create a DNS resolver");
        SSL_CTX_free(ctx);
        return FBR_ERROR;
    }
    /* a missing or odd resolv.conf leaves hosts-file lookups working; not fatal */
    if (!opts->nameserver)
        evdns_base_resolv_conf_parse(dns, DNS_OPTIONS_ALL, "/etc/resolv.conf");
    struct fbr_client *c = fbr_xcalloc(1, sizeof(*c));
    c->base = base;
    c->dns = dns;
    c->ssl_ctx = ctx;
    c->opts = *opts;
    if (!c->opts.pool_size)
        c->opts.pool_size = FBR_DEFAULT_POOL_SIZE;
    if (!c->opts.connect_timeout_ms)
        c->opts.connect_timeout_ms = FBR_DEFAULT_CONNECT_TIMEOUT_MS;
    if (!c->opts.request_timeout_ms)
        c->opts.request_timeout_ms = FBR_DEFAULT_REQUEST_TIMEOUT_MS;
    if (!c->opts.pipeline)
        c->opts.pipeline = FBR_DEFAULT_PIPELINE;
    if (!c->opts.max_pools)
        c->opts.max_pools = FBR_DEFAULT_MAX_POOLS;
    if (!c->opts.pool_idle_ms)
        c->opts.pool_idle_ms = FBR_DEFAULT_IDLE_TIMEOUT_MS;
    c->opts.ca_file = NULL; /* not kept: the string is the caller's */
    c->opts.nameserver = NULL;
    fbr_strmap_init(&c->pools);
    TAILQ_INIT(&c->calls);
    TAILQ_INIT(&c->corked);
    TAILQ_INIT(&c->pool_list);
    c->flush = event_new(base, -1, 0, flush_cb, c);
    c->sweep = evtimer_new(base, sweep_cb, c);
    if (!c->flush || !c->sweep) {
        if (c->flush)
            event_free(c->flush);
        if (c->sweep)
            event_free(c->sweep);
        snprintf(err, errlen, "cannot create the client's events");
        evdns_base_free(dns, 0);
        SSL_CTX_free(ctx);
        free(c);
        return FBR_ERROR;
    }
    *out = c;
    return FBR_OK;
}

const struct fbr_client_opts *fbr_client_get_opts(const struct fbr_client *c)
{
    return &c->opts;
}

static void free_pool(const char *key, void *value, void *arg)
{
    struct pool *pool = value;
    (void)key, (void)arg;
    struct upstream_conn *conn;
    while ((conn = TAILQ_FIRST(&pool->idle)))
        conn_destroy(conn);
    free(pool->key);
    free(pool->host);
    free(pool->host_hdr);
    free(pool);
}

void fbr_client_free(struct fbr_client **cp)
{
    struct fbr_client *c = *cp;
    if (!c)
        return;
    struct call *call;
    while ((call = TAILQ_FIRST(&c->calls))) {
        TAILQ_REMOVE(&c->calls, call, all_link);
        if (call->waiting)
            TAILQ_REMOVE(&call->pool->waiting, call, link);
        if (call->conn) {
            struct upstream_conn *conn = call->conn;
            conn_detach(conn, call);
            if (conn->state == CS_RESOLVING) {
                conn->dead = 1; /* freed by the lookup's callback below */
                conn->pool->nconns--;
                c->stats.open_now--;
            } else if (!conn->ninflight) {
                conn_destroy(conn);
            }
        }
        event_del(call->timer);
        free(call);
    }
    evdns_base_free(c->dns, 1);
    fbr_strmap_each(&c->pools, free_pool, NULL);
    fbr_strmap_clear(&c->pools);
    SSL_CTX_free(c->ssl_ctx);
    event_free(c->flush);
    event_free(c->sweep);
    free(c);
    *cp = NULL;
}
