/*
 * sink.c - the load generator's receiving side: a HipChat-shaped server (libevhtp, in the same
 * event loop as the sender) answering POST /v2/room/{id}/notification with 204, or with 429 / 503
 * for a given fraction of deliveries, optionally after an injected latency.  Every 204 is matched
 * to its alert through the ledger (track.h) by the "lg <seq> <send time>" the sender put in the
 * message; X-Firebridge-Delivery tells a retried delivery from a second one.
 *
 * Limits on what a client controls: a body over SINK_BODY_MAX, more than SINK_HEADERS_MAX header
 * lines or SINK_HEAD_BYTES of them close the connection; when accept() fails (out of descriptors)
 * the listener pauses SINK_ACCEPT_PAUSE_MS instead of spinning on it.
 */
#include <evhtp/evhtp.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h> /* ev_write: see flush_now() */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "firebridge/common.h"
#include "firebridge/rawread.h"
#include "firebridge/log.h"
#include "loadgen.h"

struct sink_conn;

#define SINK_BODY_MAX (1u << 20)
#define SINK_HEADERS_MAX 100
#define SINK_HEAD_BYTES (64u << 10)
#define SINK_ACCEPT_PAUSE_MS 100

struct lg_sink {
    struct lg *lg;
    evhtp_t *htp;
    struct event *accept_resume; /* re-enables the listener after an accept() failure */
    int port;
    uint64_t rng;            /* xorshift64 state for the injected 429 / 503 */
    struct sink_conn *conns; /* open connections, freed with the sink */
};

/* One per accepted connection: the reply waiting for its injected latency. */
struct sink_conn {
    struct lg_sink *k;
    evhtp_connection_t *ec;
    struct sink_conn *prev, *next;
    struct event *timer;
    struct event *flush;   /* made active after an immediate reply: flush_now() */
    struct evbuffer *held; /* replies to pipelined requests, written together: flush_now() */
    evhtp_request_t *req;
    int status;
    int in_flush, dead; /* freed by flush_now() when libevhtp frees the connection under it */
    size_t nheaders, head_bytes; /* of the request being parsed */
};

/* Pipelined requests answered in one write at most (a bound on held). */
#define MAX_BATCH 64

int lg_sink_parse(const char *path, size_t plen, const char *body, size_t blen, uint32_t nrooms,
                  uint64_t *seq, uint64_t *t_ns, uint32_t *room)
{
    static const char prefix[] = "/v2/room/r";
    *room = nrooms;
    if (plen > sizeof(prefix) - 1 && memcmp(path, prefix, sizeof(prefix) - 1) == 0) {
        char *end;
        unsigned long r = strtoul(path + sizeof(prefix) - 1, &end, 10);
        if (end > path + sizeof(prefix) - 1 && *end == '/' && r < nrooms)
            *room = (uint32_t)r;
    }
    const char *p = body ? memmem(body, blen, "lg ", 3) : NULL;
    if (!p)
        return -1;
    /* body is not NUL-terminated: copy the two numbers out */
    char num[48];
    size_t n = (size_t)(body + blen - (p + 3));
    if (n >= sizeof(num))
        n = sizeof(num) - 1;
    memcpy(num, p + 3, n);
    num[n] = '\0';
    char *end;
    if (num[0] < '0' || num[0] > '9')
        return -1;
    *seq = strtoull(num, &end, 10);
    if (*end != ' ' || end[1] < '0' || end[1] > '9')
        return -1;
    *t_ns = strtoull(end + 1, &end, 10);
    return 0;
}

static uint64_t next_rand(struct lg_sink *k)
{
    k->rng ^= k->rng << 13;
    k->rng ^= k->rng >> 7;
    k->rng ^= k->rng << 17;
    return k->rng;
}

/* 1 with probability p. */
static int chance(struct lg_sink *k, double p)
{
    return p > 0 && (double)(next_rand(k) >> 11) * 0x1.0p-53 < p;
}

static void on_delay(evutil_socket_t fd, short what, void *arg)
{
    struct sink_conn *c = arg;
    evhtp_request_t *req = c->req;
    c->req = NULL;
    /* A request that ends the connection ("Connection: close") is its last (RFC 9112 9.6):
     * libevhtp's resume, once the reply is out, parses any pipelined input before it looks at
     * keep-alive, so the requests after it would be answered on a connection left open. */
    struct bufferevent *bev = evhtp_connection_get_bev(c->ec);
    if (bev && !(req->flags & EVHTP_REQ_FLAG_KEEPALIVE)) {
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in));
    }
    evhtp_send_reply(req, (evhtp_res)c->status);
    evhtp_request_resume(req);
}

static void sink_conn_free(struct sink_conn *c);

/*
 * An immediate reply written to the socket from the loop, once libevhtp's parser has returned,
 * instead of by the bufferevent's write event in the next iteration: that event went on with the
 * reply and off once it was written, two epoll_ctl per delivery.  Here it is dropped in the
 * iteration that turned it on (the loop's epoll changelist folds the pair), then libevhtp's
 * write callback runs as the bufferevent would run it (it ends the request; c may be freed).
 * What the kernel does not take goes out through the bufferevent as before.  The daemon does
 * the same for its deferred replies (server.c, reply_now).
 *
 * Pipelined requests (a client with several requests in flight on the connection, as the daemon
 * with --pipeline): libevhtp 1.2.18 parses one request per read callback and never returns to
 * the rest of the input by itself (server.c, enter()).  While the request just answered keeps
 * the connection alive and the next one is already in the input, its reply is set aside, the
 * write callback ends the request (the output is empty) and the read callback parses the next,
 * whose immediate reply joins; then all of them go out with one write.
 */
static void flush_now(evutil_socket_t fd, short what, void *arg)
{
    struct sink_conn *c = arg;
    evhtp_connection_t *ec = c->ec;
    struct bufferevent *bev = evhtp_connection_get_bev(ec);
    struct evbuffer *out = bev ? bufferevent_get_output(bev) : NULL;
    if (!out || evbuffer_get_length(out) == 0)
        return;
    bufferevent_data_cb readcb, writecb;
    void *cbarg;
    bufferevent_getcb(bev, &readcb, &writecb, NULL, &cbarg);
    struct evbuffer *in = bufferevent_get_input(bev);
    c->in_flush = 1;
    for (int n = 1; n < MAX_BATCH && readcb && writecb && evbuffer_get_length(in) && ec->request &&
                    (ec->request->flags & EVHTP_REQ_FLAG_KEEPALIVE) &&
                    (ec->request->flags & EVHTP_REQ_FLAG_FINISHED);
         n++) {
        evbuffer_unfreeze(out, 1);
        evbuffer_add_buffer(c->held, out);
        evbuffer_freeze(out, 1);
        writecb(bev, cbarg); /* ends the request: keep-alive, so the connection stays */
        if (c->dead || ec->request)
            break;
        readcb(bev, cbarg); /* the next request, answered at once unless latency is injected */
        if (c->dead || evbuffer_get_length(out) == 0)
            break;
    }
    c->in_flush = 0;
    if (c->dead) { /* libevhtp closed the connection (a malformed request): nothing to write */
        sink_conn_free(c);
        return;
    }
    evbuffer_unfreeze(out, 1);
    evbuffer_prepend_buffer(out, c->held);
    evbuffer_write(out, bufferevent_getfd(bev));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out)) {
        bufferevent_enable(bev, EV_WRITE);
        return;
    }
    event_del(&bev->ev_write);
    c->in_flush = 1;
    if (writecb && ec->request)
        writecb(bev, cbarg);
    /* A batch cut at MAX_BATCH leaves requests in the input that libevhtp will not return to
     * by itself: the next one is parsed now and its reply starts the next batch (the flush
     * event, after the other connections' turn). */
    if (!c->dead && readcb && !ec->request && evbuffer_get_length(in))
        readcb(bev, cbarg);
    c->in_flush = 0;
    if (c->dead)
        sink_conn_free(c);
}

static void on_request(evhtp_request_t *req, void *arg)
{
    struct lg_sink *k = arg;
    struct lg *lg = k->lg;
    const char *path = req->uri && req->uri->path ? req->uri->path->full : NULL;
    static const char prefix[] = "/v2/room/", suffix[] = "/notification";
    size_t plen = path ? strlen(path) : 0;
    int status = 204;
    if (evhtp_request_get_method(req) != htp_method_POST ||
        plen < sizeof(prefix) + sizeof(suffix) - 2 ||
        memcmp(path, prefix, sizeof(prefix) - 1) != 0 ||
        memcmp(path + plen - (sizeof(suffix) - 1), suffix, sizeof(suffix) - 1) != 0)
        status = 404;
    else if (chance(k, lg->o.sink_429))
        status = 429;
    else if (chance(k, lg->o.sink_5xx))
        status = 503;
    lg->sink_status[lg_status_class(status)]++;
    if (status == 204) {
        uint64_t now = lg_now_ns(), seq, t_ns;
        uint32_t room;
        size_t blen = evbuffer_get_length(req->buffer_in);
        const char *body = (const char *)evbuffer_pullup(req->buffer_in, (ssize_t)blen);
        if (lg_sink_parse(path, plen, body, blen, lg->o.rooms, &seq, &t_ns, &room) != 0) {
            lg->track.unknown++;
        } else {
            const char *id = evhtp_kv_find(req->headers_in, "X-Firebridge-Delivery");
            if (lg_track_delivered(&lg->track, seq, room, id, id ? strlen(id) : 0, now, t_ns) ==
                LG_MATCH_FIRST) {
                if (!lg->first_delivery_ns)
                    lg->first_delivery_ns = now;
                lg->last_delivery_ns = now;
                if (now >= lg->measure_ns && now < lg->stop_ns)
                    lg->delivered_window++;
            }
        }
    }
    if (status == 429)
        evhtp_headers_add_header(req->headers_out, evhtp_header_new("Retry-After", "1", 0, 0));
    evhtp_connection_t *ec = evhtp_request_get_connection(req);
    struct sink_conn *c = ec && ec->hooks ? ec->hooks->on_connection_fini_arg : NULL;
    if (lg->o.sink_latency_ms && c) {
        struct timeval tv = {lg->o.sink_latency_ms / 1000, (lg->o.sink_latency_ms % 1000) * 1000};
        c->req = req;
        c->status = status;
        evhtp_request_pause(req);
        evtimer_add(c->timer, &tv);
        return;
    }
    evhtp_send_reply(req, (evhtp_res)status);
    if (c)
        event_active(c->flush, EV_TIMEOUT, 1);
}

static evhtp_res on_conn_fini(evhtp_connection_t *ec, void *arg)
{
    struct sink_conn *c = arg;
    (void)ec;
    if (c->in_flush)
        c->dead = 1; /* flush_now() frees it once libevhtp has returned */
    else
        sink_conn_free(c);
    return EVHTP_RES_OK;
}

static void sink_conn_free(struct sink_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->k->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->timer);
    event_free(c->flush);
    evbuffer_free(c->held);
    free(c);
}

static evhtp_res on_headers_start(evhtp_request_t *req, void *arg)
{
    struct sink_conn *c = arg;
    (void)req;
    c->nheaders = 0;
    c->head_bytes = 0;
    return EVHTP_RES_OK;
}

/* Each header line as it is parsed: too many, or too large together, end the connection. */
static evhtp_res on_header(evhtp_request_t *req, evhtp_header_t *h, void *arg)
{
    struct sink_conn *c = arg;
    (void)req;
    c->head_bytes += h->klen + h->vlen + 4;
    if (++c->nheaders > SINK_HEADERS_MAX || c->head_bytes > SINK_HEAD_BYTES)
        return EVHTP_RES_ERROR;
    return EVHTP_RES_OK;
}

static evhtp_res on_accept(evhtp_connection_t *ec, void *arg)
{
    struct lg_sink *k = arg;
    struct sink_conn *c = fbr_xcalloc(1, sizeof(*c));
    c->k = k;
    c->ec = ec;
    c->timer = evtimer_new(k->lg->base, on_delay, c);
    c->flush = event_new(k->lg->base, -1, 0, flush_now, c);
    c->held = evbuffer_new();
    c->next = k->conns;
    if (k->conns)
        k->conns->prev = c;
    k->conns = c;
    evhtp_connection_set_hook(ec, evhtp_hook_on_connection_fini, (evhtp_hook)on_conn_fini, c);
    evhtp_connection_set_hook(ec, evhtp_hook_on_headers_start, (evhtp_hook)on_headers_start, c);
    evhtp_connection_set_hook(ec, evhtp_hook_on_header, (evhtp_hook)on_header, c);
    fbr_rawread_start(evhtp_connection_get_bev(ec)); /* no FIONREAD per read (rawread.h) */
    return EVHTP_RES_OK;
}

static void accept_resume(evutil_socket_t fd, short what, void *arg)
{
    struct lg_sink *k = arg;
    evconnlistener_enable(k->htp->server);
}

/* accept() failed (EMFILE, ...): libevent keeps the listener readable, so without a pause the
 * loop would spin on the same failure and log each one; pending clients wait in the backlog. */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    struct lg_sink *k = ((evhtp_t *)arg)->arg;
    if (!k->accept_resume) {
        k->accept_resume = evtimer_new(k->lg->base, accept_resume, k);
        fprintf(fbr_log_stream(),
                "firebridge-loadgen: sink: accepting a connection: %s; pausing %d ms at a time\n",
                evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()), SINK_ACCEPT_PAUSE_MS);
    }
    evconnlistener_disable(lev);
    struct timeval tv = {0, SINK_ACCEPT_PAUSE_MS * 1000};
    evtimer_add(k->accept_resume, &tv);
}

struct lg_sink *lg_sink_new(struct lg *lg)
{
    struct lg_sink *k = fbr_xcalloc(1, sizeof(*k));
    k->lg = lg;
    k->rng = 0x9e3779b97f4a7c15ull ^ lg_now_ns();
    k->htp = evhtp_new(lg->base, k);
    if (!k->htp) {
        free(k);
        return NULL;
    }
    evhtp_set_gencb(k->htp, on_request, k);
    evhtp_set_post_accept_cb(k->htp, on_accept, k);
    evhtp_set_max_body_size(k->htp, SINK_BODY_MAX);
    if (evhtp_bind_socket(k->htp, lg->o.sink_host, (uint16_t)lg->o.sink_port, 1024) != 0) {
        fprintf(fbr_log_stream(), "firebridge-loadgen: sink: cannot listen on %s:%d\n",
                lg->o.sink_host, lg->o.sink_port);
        evhtp_free(k->htp);
        free(k);
        return NULL;
    }
    evconnlistener_set_error_cb(k->htp->server, on_accept_error);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(evconnlistener_get_fd(k->htp->server), (struct sockaddr *)&ss, &sl) == 0)
        k->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return k;
}

int lg_sink_port(const struct lg_sink *k)
{
    return k->port;
}

void lg_sink_free(struct lg_sink **kp)
{
    struct lg_sink *k = *kp;
    if (!k)
        return;
    while (k->conns)
        evhtp_connection_free(k->conns->ec); /* runs on_conn_fini, which unlinks it */
    evhtp_unbind_socket(k->htp);
    evhtp_free(k->htp);
    if (k->accept_resume)
        event_free(k->accept_resume);
    free(k);
    *kp = NULL;
}
