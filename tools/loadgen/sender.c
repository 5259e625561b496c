/*
 * sender.c - the load generator's sending side: a fixed set of keep-alive HTTP/1.1 connections to
 * the target, each with at most one request in flight.  Open loop (--rate): alert i is due at
 * start + i / rate; a due alert goes out on the next idle connection and its latency is measured
 * from when it was due, not from when it went out, so a stalled server is charged for the alerts
 * it kept waiting (coordinated omission corrected, as wrk2 does).  Closed loop: every connection
 * sends again as soon as its answer is in.  One more connection polls the daemon's /metrics.
 * Answers are read by the outbound client's response reader (firebridge/response.h), so the
 * loadgen accepts what the daemon's client accepts, with the same limits: interim 1xx answers
 * skipped, a body delimited by Content-Length, chunked, or the target closing the connection,
 * skipped as it arrives (kept only for /metrics, up to LG_METRICS_BODY_MAX).  A malformed answer
 * (no status line, a bad chunk size, a line or head over the reader's limits) counts as a
 * transport error and the connection is closed.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "firebridge/common.h"
#include "firebridge/rawread.h"
#include "firebridge/log.h"
#include "firebridge/response.h"
#include "loadgen.h"

#define LG_REQ_MAX 2048
#define LG_METRICS_BODY_MAX (4u << 20)

struct lg_conn {
    struct lg_sender *s;
    struct bufferevent *bev;
    int metrics;   /* the /metrics poller */
    int busy;      /* a request is in flight */
    int connected; /* the connect completed: requests are written straight to the socket */
    int cooling;   /* after a transport error: idle again when `cool` fires */
    struct event *cool;
    uint64_t seq, intended_ns, sent_ns;
    struct fbr_response rp; /* the answer being read */
    struct evbuffer *body;  /* the /metrics poller: its answer's body as it comes */
};

struct lg_sender {
    struct lg *lg;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint64_t run_id;
    struct lg_conn *conns; /* o.connections load connections */
    struct lg_conn **idle; /* stack of idle load connections */
    uint32_t nidle, nbusy;
    struct lg_conn metrics;
    struct event *tick; /* open loop: dispatches due alerts */
};

/* ---- requests ---------------------------------------------------------------------------- */

static uint32_t room_of(const struct lg_opts *o, uint64_t seq)
{
    if (o->scenario == LG_SCENARIO_SINGLE_ROOM || o->scenario == LG_SCENARIO_FLOOD)
        return 0;
    return (uint32_t)(seq % o->rooms);
}

/*
 * Requests are put together piece by piece, not with snprintf: parsing two formats per alert
 * was a sixth of the load generator's instructions (bench/README.md).  Numbers go through
 * common.h's fbr_fmt_u64 and fbr_fmt_hex.  A piece that does not fit leaves ok at 0, and the
 * builders then return 0 (no partial request).
 */
struct put {
    char *p;
    size_t len, cap;
    int ok;
};

static void put(struct put *b, const char *s, size_t n)
{
    if (!b->ok || n >= b->cap - b->len) { /* keep a byte for the NUL */
        b->ok = 0;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

#define PUT_LIT(b, lit) put((b), (lit), sizeof(lit) - 1)

static void put_str(struct put *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_u64(struct put *b, uint64_t v)
{
    char d[FBR_U64_DIGITS + 1];
    put(b, d, fbr_fmt_u64(d, v));
}

/* v in lower-case hex without leading zeros, as "%" PRIx64 writes it */
static void put_x64(struct put *b, uint64_t v)
{
    unsigned char be[8];
    char d[17];
    for (int i = 0; i < 8; i++)
        be[i] = (unsigned char)(v >> (56 - 8 * i));
    fbr_fmt_hex(d, be, sizeof(be));
    size_t z = 0;
    while (z < 15 && d[z] == '0')
        z++;
    put(b, d + z, 16 - z);
}

/* The head (up to "Content-Length: ") is in b; appends the body's length and the body. */
static size_t put_body(struct put *b, const struct put *body)
{
    if (!body->ok)
        return 0;
    put_u64(b, body->len);
    PUT_LIT(b, "\r\n\r\n");
    put(b, body->p, body->len);
    return b->ok ? b->len : 0;
}

/* The entity's fields shared by the alert bodies: id, display name (with the sequence number
 * and the send time the sink matches deliveries by), room and token. */
static void put_entity(struct put *b, const struct lg_opts *o, uint64_t run_id, uint64_t entity,
                       uint64_t seq, uint64_t t_ns, uint32_t room)
{
    PUT_LIT(b, "\"entity_id\":\"lg-");
    put_x64(b, run_id);
    PUT_LIT(b, "-");
    put_u64(b, entity);
    PUT_LIT(b, "\",\"entity_display_name\":\"lg ");
    put_u64(b, seq);
    PUT_LIT(b, " ");
    put_u64(b, t_ns);
    PUT_LIT(b, "\",\"room_id\":\"r");
    put_u64(b, room);
    PUT_LIT(b, "\",\"auth_token\":\"");
    put_str(b, o->auth_token);
    PUT_LIT(b, "\"");
}

static size_t build_alert(const struct lg_opts *o, char *buf, size_t cap, const char *type,
                          uint64_t run_id, uint64_t entity, uint64_t seq, uint64_t t_ns,
                          uint32_t room)
{
    char bb[512];
    struct put body = {bb, 0, sizeof(bb), 1}, b = {buf, 0, cap, cap > 0};
    PUT_LIT(&body, "{\"message_type\":\"");
    put_str(&body, type);
    PUT_LIT(&body, "\",");
    put_entity(&body, o, run_id, entity, seq, t_ns, room);
    PUT_LIT(&body, "}");
    PUT_LIT(&b, "POST /integrations/generic/20131114/alert/");
    put_str(&b, o->api_key);
    PUT_LIT(&b, "/");
    put_str(&b, o->routing_keys[seq % o->nrouting_keys]);
    PUT_LIT(&b, " HTTP/1.1\r\nHost: ");
    put_str(&b, o->host);
    PUT_LIT(&b, "\r\nContent-Type: application/json\r\nContent-Length: ");
    return put_body(&b, &body);
}

size_t lg_request_build(const struct lg_opts *o, uint64_t run_id, uint64_t seq, uint64_t t_ns,
                        char *buf, size_t cap, int *expects)
{
    uint32_t room = room_of(o, seq);
    char bb[512];
    struct put body = {bb, 0, sizeof(bb), 1}, b = {buf, 0, cap, cap > 0};
    *expects = 1;
    if (o->format == LG_FORMAT_NOTIFICATION) {
        PUT_LIT(&body, "{\"color\":\"red\",\"message\":\"lg ");
        put_u64(&body, seq);
        PUT_LIT(&body, " ");
        put_u64(&body, t_ns);
        PUT_LIT(&body, "\",\"notify\":true,\"message_format\":\"text\"}");
        PUT_LIT(&b, "POST /v2/room/r");
        put_u64(&b, room);
        PUT_LIT(&b, "/notification?auth_token=");
        put_str(&b, o->auth_token);
        PUT_LIT(&b, " HTTP/1.1\r\nHost: ");
        put_str(&b, o->host);
        PUT_LIT(&b, "\r\nContent-Type: application/json\r\nContent-Length: ");
        return put_body(&b, &body);
    }
    if (o->scenario != LG_SCENARIO_MIXED)
        return build_alert(o, buf, cap, "CRITICAL", run_id, seq, seq, t_ns, room);
    /*
     * mixed, in cycles of four: a CRITICAL (new incident: one delivery), the ACKNOWLEDGEMENT and
     * the RECOVERY of the entity triggered `lag` cycles earlier (no delivery; far enough back
     * that its CRITICAL was answered, as at most `connections` requests are in flight), and a
     * /v1/events Incident-Triggered item (one delivery).
     */
    uint64_t cycle = seq / 4, lag = 4 * (uint64_t)o->connections + 16;
    switch (seq % 4) {
    case 0:
        return build_alert(o, buf, cap, "CRITICAL", run_id, cycle * 4, seq, t_ns, room);
    case 1:
    case 2:
        *expects = 0;
        if (cycle < lag) /* nothing old enough yet: an INFO alert of a fresh entity */
            return build_alert(o, buf, cap, "INFO", run_id, seq, seq, t_ns, room);
        return build_alert(o, buf, cap, seq % 4 == 1 ? "ACKNOWLEDGEMENT" : "RECOVERY", run_id,
                           (cycle - lag) * 4, seq, t_ns, room);
    default:
        break;
    }
    PUT_LIT(&body, "{\"event\":\"Incident-Triggered\",\"ALERT\":{");
    put_entity(&body, o, run_id, seq, seq, t_ns, room);
    PUT_LIT(&body, "}}");
    PUT_LIT(&b, "POST /v1/events HTTP/1.1\r\nHost: ");
    put_str(&b, o->host);
    PUT_LIT(&b, "\r\nAuthorization: Bearer ");
    put_str(&b, o->api_key);
    PUT_LIT(&b, "\r\nContent-Type: application/json\r\nContent-Length: ");
    return put_body(&b, &body);
}

/* ---- connections ------------------------------------------------------------------------- */

static void conn_read(struct bufferevent *bev, void *arg);
static void conn_event(struct bufferevent *bev, short what, void *arg);
static void pump(struct lg_sender *s);

static int conn_open(struct lg_conn *c)
{
    struct lg_sender *s = c->s;
    c->bev = bufferevent_socket_new(s->lg->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev)
        return -1;
    bufferevent_setcb(c->bev, conn_read, NULL, conn_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&s->addr, (int)s->addrlen) != 0) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        return -1;
    }
    c->connected = 0;
    return 0;
}

/* c reads a new answer: the reader reset, a kept body dropped. */
static void answer_reset(struct lg_conn *c)
{
    fbr_response_reset(&c->rp, 0);
    if (c->body)
        evbuffer_drain(c->body, evbuffer_get_length(c->body));
}

static void conn_close(struct lg_conn *c)
{
    if (c->bev)
        bufferevent_free(c->bev);
    c->bev = NULL;
    answer_reset(c);
    c->connected = 0;
}

static void make_idle(struct lg_conn *c)
{
    struct lg_sender *s = c->s;
    if (c->busy) {
        c->busy = 0;
        s->nbusy--;
    }
    if (!c->metrics && !c->cooling)
        s->idle[s->nidle++] = c;
}

/* An answer (status 0: transport error) to the request in flight on c. */
static void answered(struct lg_conn *c, int status, const char *body, size_t blen)
{
    struct lg_sender *s = c->s;
    struct lg *lg = s->lg;
    uint64_t now = lg_now_ns();
    if (c->metrics) {
        static const char name[] = "\nfirebridge_deliveries_pending ";
        const char *p = body ? memmem(body, blen, name, sizeof(name) - 1) : NULL;
        if (status == 200 && p)
            lg->queue_depth = strtoll(p + sizeof(name) - 1, NULL, 10);
        c->busy = 0;
        return;
    }
    lg->status[lg_status_class(status)]++;
    lg->answered++;
    lg_track_answered(&lg->track, c->seq, status);
    if (now >= lg->measure_ns && now < lg->stop_ns)
        lg->answered_window++;
    if (c->intended_ns >= lg->measure_ns && c->intended_ns < lg->stop_ns) {
        lg_hist_add(&lg->intake, now > c->intended_ns ? now - c->intended_ns : 0);
        lg_hist_add(&lg->from_send, now > c->sent_ns ? now - c->sent_ns : 0);
    }
    make_idle(c);
}

static void cool_done(evutil_socket_t fd, short what, void *arg)
{
    struct lg_conn *c = arg;
    c->cooling = 0;
    make_idle(c);
    pump(c->s);
}

static void conn_fail(struct lg_conn *c)
{
    int was_busy = c->busy;
    conn_close(c);
    if (was_busy)
        answered(c, 0, NULL, 0);
    if (c->metrics)
        return;
    /* a refused or dropped connection: wait 10 ms before this one sends again */
    if (!c->cooling) {
        for (uint32_t i = 0; i < c->s->nidle; i++) {
            if (c->s->idle[i] == c) {
                c->s->idle[i] = c->s->idle[--c->s->nidle];
                break;
            }
        }
        c->cooling = 1;
        struct timeval tv = {0, 10000};
        evtimer_add(c->cool, &tv);
    }
}

/* The answer to c's request is complete (its body, when kept, in c->body). */
static void answer_done(struct lg_conn *c)
{
    size_t blen = c->body ? evbuffer_get_length(c->body) : 0;
    const char *body = c->body ? (const char *)evbuffer_pullup(c->body, (ssize_t)blen) : NULL;
    answered(c, c->rp.status, body, blen);
}

static void conn_event(struct bufferevent *bev, short what, void *arg)
{
    struct lg_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->connected = 1;
        fbr_rawread_start(bev); /* answers read without a FIONREAD each (rawread.h) */
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        struct lg_sender *s = c->s;
        if ((what & BEV_EVENT_EOF) && c->busy && fbr_response_until_eof(&c->rp)) {
            answer_done(c); /* its body ended with the connection (no length, not chunked) */
            conn_close(c);
        } else {
            conn_fail(c);
        }
        pump(s);
    }
}

static void conn_read(struct bufferevent *bev, void *arg)
{
    struct lg_conn *c = arg;
    struct lg_sender *s = c->s;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        if (!c->busy) { /* bytes here answer no request */
            if (evbuffer_get_length(in))
                conn_fail(c);
            break;
        }
        size_t n = 0;
        int rc = fbr_response_parse(&c->rp, in, &n);
        if (rc == FBR_RESPONSE_MORE)
            break;
        if (rc == FBR_RESPONSE_ERROR) {
            conn_fail(c);
            break;
        }
        if (rc == FBR_RESPONSE_BODY) {
            if (!c->body) { /* skipped as it comes: a huge body costs no memory */
                evbuffer_drain(in, n);
            } else if (evbuffer_get_length(c->body) + n > LG_METRICS_BODY_MAX ||
                       evbuffer_remove_buffer(in, c->body, n) != (int)n) {
                conn_fail(c);
                break;
            }
            continue;
        }
        /* the answer is complete: the connection goes on unless it says it ends */
        int ends = c->rp.conn_close || c->rp.close_after || (c->rp.http10 && !c->rp.keep_alive);
        answer_done(c);
        answer_reset(c);
        if (ends) {
            conn_close(c);
            break;
        }
    }
    pump(s);
}

static int conn_send(struct lg_conn *c, const char *req, size_t len)
{
    if (!c->bev && conn_open(c) != 0)
        return -1;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (c->connected && evbuffer_get_length(out) == 0) {
        /* Straight to the socket: through the bufferevent, every request would turn its write
         * event on and, once written, off again, two epoll_ctl per alert.  What the kernel does
         * not take now goes through the bufferevent. */
        ssize_t n = send(bufferevent_getfd(c->bev), req, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        if (n > 0) {
            req += n;
            len -= (size_t)n;
        }
    }
    if (len && evbuffer_add(out, req, len) != 0)
        return -1;
    c->busy = 1;
    answer_reset(c);
    return 0;
}

/* ---- dispatch ---------------------------------------------------------------------------- */

/* Sends alert number next_seq on c, intended at t. */
static void send_one(struct lg_sender *s, struct lg_conn *c, uint64_t t)
{
    struct lg *lg = s->lg;
    char req[LG_REQ_MAX];
    int expects;
    uint64_t seq = lg->next_seq++;
    size_t len = lg_request_build(&lg->o, s->run_id, seq, t, req, sizeof(req), &expects);
    lg_track_sent(&lg->track, seq, expects);
    c->seq = seq;
    c->intended_ns = t;
    s->nbusy++;
    c->sent_ns = lg_now_ns();
    if (t >= lg->measure_ns && t < lg->stop_ns)
        lg_hist_add(&lg->send_lag, c->sent_ns > t ? c->sent_ns - t : 0);
    if (len == 0 || conn_send(c, req, len) != 0) {
        c->busy = 1;
        conn_fail(c);
        return;
    }
}

static uint64_t due_time(const struct lg *lg, uint64_t seq)
{
    return lg->start_ns + (uint64_t)((double)seq * 1e9 / lg->o.rate);
}

static void pump(struct lg_sender *s)
{
    struct lg *lg = s->lg;
    if (lg->stopping)
        return;
    uint64_t now = lg_now_ns();
    if (now >= lg->stop_ns) {
        lg->stopping = 1;
        return;
    }
    int open_loop = lg->o.rate > 0;
    while (s->nidle && lg->next_seq < lg->o.max_alerts) {
        uint64_t t = open_loop ? due_time(lg, lg->next_seq) : now;
        if (t > now)
            break;
        send_one(s, s->idle[--s->nidle], t);
    }
    if (!open_loop || lg->next_seq >= lg->o.max_alerts)
        return;
    uint64_t due = (uint64_t)((double)(now - lg->start_ns) * lg->o.rate / 1e9) + 1;
    if (due > lg->next_seq && due - lg->next_seq > lg->backlog_max)
        lg->backlog_max = due - lg->next_seq;
    /* wake up when the next alert is due (an answer wakes us earlier when none is idle) */
    uint64_t t = due_time(lg, lg->next_seq);
    if (s->nidle && t > now) {
        uint64_t us = (t - now + 999) / 1000;
        struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
        evtimer_add(s->tick, &tv);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    pump(arg);
}

/* ---- life cycle -------------------------------------------------------------------------- */

static int resolve(struct lg_sender *s)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    char port[16];
    snprintf(port, sizeof(port), "%d", s->lg->o.port);
    int rc = getaddrinfo(s->lg->o.addr, port, &hints, &res);
    if (rc != 0) {
        fprintf(fbr_log_stream(), "firebridge-loadgen: resolving target %s: %s\n", s->lg->o.addr,
                gai_strerror(rc));
        return -1;
    }
    memcpy(&s->addr, res->ai_addr, res->ai_addrlen);
    s->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

struct lg_sender *lg_sender_new(struct lg *lg)
{
    struct lg_sender *s = fbr_xcalloc(1, sizeof(*s));
    s->lg = lg;
    if (resolve(s) != 0) {
        free(s);
        return NULL;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->run_id = ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40);
    uint32_t n = lg->o.connections;
    s->conns = fbr_xcalloc(n, sizeof(*s->conns));
    s->idle = fbr_xcalloc(n, sizeof(*s->idle));
    for (uint32_t i = 0; i < n; i++) {
        s->conns[i].s = s;
        fbr_response_init(&s->conns[i].rp, NULL, NULL);
        s->conns[i].cool = evtimer_new(lg->base, cool_done, &s->conns[i]);
        s->idle[s->nidle++] = &s->conns[n - 1 - i];
    }
    s->metrics.s = s;
    s->metrics.metrics = 1;
    fbr_response_init(&s->metrics.rp, NULL, NULL);
    s->metrics.body = evbuffer_new();
    s->tick = evtimer_new(lg->base, on_tick, s);
    return s;
}

void lg_sender_start(struct lg_sender *s)
{
    pump(s);
}

uint32_t lg_sender_busy(const struct lg_sender *s)
{
    return s->nbusy;
}

void lg_sender_poll_metrics(struct lg_sender *s)
{
    struct lg_conn *c = &s->metrics;
    if (c->busy)
        return;
    char req[512];
    int n = snprintf(req, sizeof(req), "GET /metrics HTTP/1.1\r\nHost: %s\r\n\r\n", s->lg->o.host);
    if (n > 0 && (size_t)n < sizeof(req) && conn_send(c, req, (size_t)n) != 0)
        conn_close(c);
}

void lg_sender_free(struct lg_sender **sp)
{
    struct lg_sender *s = *sp;
    if (!s)
        return;
    for (uint32_t i = 0; i < s->lg->o.connections; i++) {
        conn_close(&s->conns[i]);
        event_free(s->conns[i].cool);
    }
    conn_close(&s->metrics);
    if (s->metrics.body)
        evbuffer_free(s->metrics.body);
    event_free(s->tick);
    free(s->conns);
    free(s->idle);
    free(s);
    *sp = NULL;
}
