/*
 * http_testsrv.c - the scriptable loopback HTTP(S) server of the delivery tests (see
 * http_testsrv.h).  Deliberately simple: requests of a connection taken and answered in order,
 * Content-Length bodies only, which is all firebridge's client sends.
 */
#include "http_testsrv.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "firebridge/common.h"

#define MAX_SCRIPTS 16

struct script {
    char prefix[128];
    struct tsrv_reply *replies;
    size_t n, next;
};

struct tsrv {
    struct event_base *base;
    SSL_CTX *ssl_ctx;
    struct evconnlistener *lis;
    int port;
    struct script scripts[MAX_SCRIPTS];
    size_t nscripts;
    struct tsrv_reply *conn_script; /* tsrv_script_conn() */
    size_t conn_script_n;
    struct tsrv_reply def;
    enum tsrv_close close_mode;
    struct tsrv_req *reqs;
    size_t nreqs, cap;
    unsigned accepted, open, max_open;
    unsigned reads; /* read callbacks run, for tsrv_req.read_no */
    uint64_t streamed;
    struct sconn *conns;
};

struct sconn {
    struct tsrv *s;
    struct bufferevent *bev;
    unsigned no;
    int closing;
    int streaming; /* TSRV_THEN_STREAM: refilled from write_cb */
    int resetting; /* TSRV_THEN_RESET: reset once the output is flushed */
    int lingering; /* TSRV_THEN_LINGER: requests are recorded, not answered */
    int shut;      /* lingering and the writing side shut */
    unsigned nth;  /* requests taken on it */
    int held;      /* an answer waits (tsrv_reply.hold_ms): held_rep for request held_idx */
    struct tsrv_reply held_rep;
    size_t held_idx;
    struct event *hold_ev;
    struct sconn *next, *prev;
};

static void sconn_free(struct sconn *c)
{
    struct tsrv *s = c->s;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->hold_ev)
        event_free(c->hold_ev);
    bufferevent_free(c->bev);
    s->open--;
    free(c);
}

static struct tsrv_reply pick(struct tsrv *s, const char *path, unsigned nth)
{
    if (nth <= s->conn_script_n)
        return s->conn_script[nth - 1];
    for (size_t i = 0; i < s->nscripts; i++) {
        struct script *sc = &s->scripts[i];
        if (strncmp(path, sc->prefix, strlen(sc->prefix)) == 0 && sc->next < sc->n)
            return sc->replies[sc->next++];
    }
    return s->def;
}

static void hold_cb(evutil_socket_t fd, short what, void *arg);

#define STREAM_FILL 65536

static void stream_fill(struct sconn *c)
{
    static char fill[STREAM_FILL];
    if (!fill[0])
        memset(fill, 'x', sizeof(fill));
    evbuffer_add(bufferevent_get_output(c->bev), fill, sizeof(fill));
    c->s->streamed += sizeof(fill);
}

/* Closes c with a TCP reset instead of a FIN. */
static void sconn_reset(struct sconn *c)
{
    struct linger lg = {1, 0};
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    sconn_free(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    struct sconn *c = arg;
    if (c->streaming) {
        stream_fill(c);
        return;
    }
    if (c->lingering && !c->shut && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        c->shut = 1;
        shutdown(bufferevent_getfd(bev), SHUT_WR);
        return;
    }
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        if (c->resetting)
            sconn_reset(c);
        else
            sconn_free(c);
    }
}

/* The length of the whole request at the front of in (head and Content-Length body), or 0 while
 * it has not all arrived; *hlen gets its head's length. */
static size_t whole_request(struct evbuffer *in, size_t *hlen)
{
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0)
        return 0;
    *hlen = (size_t)end.pos + 4;
    char *head = fbr_xmalloc(*hlen + 1);
    evbuffer_copyout(in, head, *hlen);
    head[*hlen] = '\0';
    size_t clen = 0;
    char *cl = strcasestr(head, "\r\ncontent-length:");
    if (cl)
        clen = strtoul(cl + 17, NULL, 10);
    free(head);
    return evbuffer_get_length(in) < *hlen + clen ? 0 : *hlen + clen;
}

/* Takes the whole request at the front of c's input into s->reqs; returns 0 while none has all
 * arrived, else 1 with its index in *idx. */
static int take_request(struct sconn *c, size_t *idx)
{
    struct tsrv *s = c->s;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t hlen = 0, total = whole_request(in, &hlen);
    if (!total)
        return 0;
    size_t clen = total - hlen;
    if (s->nreqs == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->reqs = fbr_xrealloc(s->reqs, s->cap * sizeof(*s->reqs));
    }
    struct tsrv_req *r = &s->reqs[s->nreqs];
    *idx = s->nreqs++;
    memset(r, 0, sizeof(*r));
    char *head = fbr_xmalloc(hlen + 1);
    evbuffer_remove(in, head, hlen);
    head[hlen] = '\0';
    sscanf(head, "%*s %255s", r->path);
    char *id = strcasestr(head, "\r\nx-firebridge-delivery: ");
    if (id)
        sscanf(id + 25, "%63[^\r]", r->delivery_id);
    char *au = strcasestr(head, "\r\nauthorization: ");
    if (au)
        sscanf(au + 17, "%127[^\r]", r->auth);
    r->body = fbr_xmalloc(clen + 1);
    evbuffer_remove(in, r->body, clen);
    r->body[clen] = '\0';
    r->body_len = clen;
    r->at_mono_ms = fbr_now_ms();
    r->at_wall_ms = fbr_wall_ms();
    r->conn_no = c->no;
    r->read_no = s->reads;
    r->nth = ++c->nth;
    r->head = head;
    r->head_len = hlen;
    return 1;
}

/* Writes rep as the answer to request idx on c; returns 1 when c reads on, 0 when it stops
 * (closing, streaming, or freed already). */
static int answer(struct sconn *c, size_t idx, struct tsrv_reply rep)
{
    struct tsrv *s = c->s;
    struct bufferevent *bev = c->bev;
    struct evbuffer *out = bufferevent_get_output(bev);
    if (rep.raw) {
        s->reqs[idx].answered = strncmp(rep.raw, "HTTP/1.", 7) == 0 ? atoi(rep.raw + 9) : 0;
        evbuffer_add(out, rep.raw, strlen(rep.raw));
        if (rep.then == TSRV_THEN_STREAM) {
            c->streaming = 1;
            stream_fill(c);
            return 0;
        }
        if (rep.then == TSRV_THEN_RESET) {
            c->closing = c->resetting = 1;
            bufferevent_disable(bev, EV_READ);
            return 0; /* write_cb resets once the reply is out */
        }
        if (rep.then == TSRV_THEN_LINGER) {
            c->lingering = 1;
            return 1;
        }
        if (rep.close_after) {
            c->closing = 1;
            bufferevent_disable(bev, EV_READ);
            if (evbuffer_get_length(out) == 0) {
                sconn_free(c); /* nothing to flush: close now */
                return 0;
            }
            return 0;
        }
        return 1;
    }
    s->reqs[idx].answered = rep.status;
    evbuffer_add_printf(out, "HTTP/1.1 %d Scripted\r\nContent-Length: 0\r\n", rep.status);
    if (rep.headers)
        evbuffer_add(out, rep.headers, strlen(rep.headers));
    if (rep.flood_reset_in_s > 0) {
        uint64_t reset = (fbr_wall_ms() + (uint64_t)rep.flood_reset_in_s * 1000 + 999) / 1000;
        evbuffer_add_printf(out, "X-FloodControl-Remaining: 0\r\nX-FloodControl-Reset: %llu\r\n",
                            (unsigned long long)reset);
    }
    if (rep.token_reset_in_s > 0) {
        uint64_t reset = (fbr_wall_ms() + (uint64_t)rep.token_reset_in_s * 1000 + 999) / 1000;
        evbuffer_add_printf(out, "X-Ratelimit-Remaining: 0\r\nX-Ratelimit-Reset: %llu\r\n",
                            (unsigned long long)reset);
    }
    int linger = rep.then == TSRV_THEN_LINGER;
    if (s->close_mode == TSRV_CLOSE_SAYING || rep.close_after || linger)
        evbuffer_add_printf(out, "Connection: close\r\n");
    evbuffer_add(out, "\r\n", 2);
    if (linger) {
        c->lingering = 1;
        return 1;
    }
    if (s->close_mode != TSRV_KEEP || rep.close_after) {
        c->closing = 1;
        bufferevent_disable(bev, EV_READ);
        return 0;
    }
    return 1;
}

/* The held answer goes out; returns answer()'s result. */
static int release(struct sconn *c)
{
    c->held = 0;
    evtimer_del(c->hold_ev);
    return answer(c, c->held_idx, c->held_rep);
}

/* Takes and answers the requests in c's input, in order, as far as it can. */
static void serve(struct sconn *c)
{
    struct tsrv *s = c->s;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    for (;;) {
        if (c->closing || c->streaming)
            return;
        if (c->held) {
            size_t hlen;
            if (!c->held_rep.hold_for_next || !whole_request(in, &hlen))
                return; /* hold_cb or the next read */
            if (!release(c))
                return;
            continue;
        }
        size_t idx;
        if (!take_request(c, &idx))
            return;
        if (c->lingering)
            continue; /* recorded, never answered */
        struct tsrv_reply rep = pick(s, s->reqs[idx].path, s->reqs[idx].nth);
        if (rep.status == 0 && !rep.raw)
            return; /* stall: keep the connection, never answer */
        if (rep.hold_ms) {
            if (!c->hold_ev)
                c->hold_ev = evtimer_new(s->base, hold_cb, c);
            c->held = 1;
            c->held_rep = rep;
            c->held_idx = idx;
            struct timeval tv = {rep.hold_ms / 1000, (rep.hold_ms % 1000) * 1000};
            evtimer_add(c->hold_ev, &tv);
            continue;
        }
        if (!answer(c, idx, rep))
            return;
    }
}

static void hold_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sconn *c = arg;
    (void)fd, (void)what;
    if (c->held && release(c))
        serve(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct sconn *c = arg;
    (void)bev;
    c->s->reads++;
    serve(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        sconn_free(arg);
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    struct tsrv *s = arg;
    (void)lis, (void)sa, (void)len;
    struct bufferevent *bev;
    if (s->ssl_ctx) {
        SSL *ssl = SSL_new(s->ssl_ctx);
        bev = bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                             BEV_OPT_CLOSE_ON_FREE);
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    } else {
        bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    struct sconn *c = fbr_xcalloc(1, sizeof(*c));
    c->s = s;
    c->bev = bev;
    c->no = ++s->accepted;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    if (++s->open > s->max_open)
        s->max_open = s->open;
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

struct tsrv *tsrv_new(struct event_base *base, SSL_CTX *ssl_ctx)
{
    struct tsrv *s = fbr_xcalloc(1, sizeof(*s));
    s->base = base;
    s->ssl_ctx = ssl_ctx;
    s->def.status = 204;
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->lis = evconnlistener_new_bind(base, accept_cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                     256, (struct sockaddr *)&sin, sizeof(sin));
    if (!s->lis)
        abort();
    socklen_t sl = sizeof(sin);
    getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&sin, &sl);
    s->port = ntohs(sin.sin_port);
    return s;
}

int tsrv_port(const struct tsrv *s)
{
    return s->port;
}

void tsrv_script(struct tsrv *s, const char *prefix, const struct tsrv_reply *replies, size_t n)
{
    struct script *sc = &s->scripts[s->nscripts++];
    snprintf(sc->prefix, sizeof(sc->prefix), "%s", prefix);
    sc->replies = fbr_xmalloc(n * sizeof(*replies));
    memcpy(sc->replies, replies, n * sizeof(*replies));
    sc->n = n;
    sc->next = 0;
}

void tsrv_script_conn(struct tsrv *s, const struct tsrv_reply *replies, size_t n)
{
    free(s->conn_script);
    s->conn_script = fbr_xmalloc(n * sizeof(*replies));
    memcpy(s->conn_script, replies, n * sizeof(*replies));
    s->conn_script_n = n;
}

void tsrv_set_default(struct tsrv *s, struct tsrv_reply r)
{
    s->def = r;
}

void tsrv_set_close(struct tsrv *s, enum tsrv_close mode)
{
    s->close_mode = mode;
}

size_t tsrv_nreqs(const struct tsrv *s)
{
    return s->nreqs;
}

const struct tsrv_req *tsrv_req(const struct tsrv *s, size_t i)
{
    return &s->reqs[i];
}

unsigned tsrv_accepted(const struct tsrv *s)
{
    return s->accepted;
}

uint64_t tsrv_streamed(const struct tsrv *s)
{
    return s->streamed;
}

unsigned tsrv_max_open(const struct tsrv *s)
{
    return s->max_open;
}

void tsrv_free(struct tsrv *s)
{
    while (s->conns)
        sconn_free(s->conns);
    evconnlistener_free(s->lis);
    for (size_t i = 0; i < s->nscripts; i++)
        free(s->scripts[i].replies);
    free(s->conn_script);
    for (size_t i = 0; i < s->nreqs; i++) {
        free(s->reqs[i].body);
        free(s->reqs[i].head);
    }
    free(s->reqs);
    free(s);
}

int tsrv_make_certs(const char *dir)
{
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "set -e; cd '%s'; "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout ca.key -out ca.pem -days 2 -subj /CN=firebridge-test-ca "
             "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign,cRLSign; "
             "for n in good wrong; do "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout $n.key -out $n.csr -subj /CN=$n; done; "
             "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > good.ext; "
             "printf 'subjectAltName=DNS:wrong.example\\n' > wrong.ext; "
             "for n in good wrong; do "
             "openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
             "-extfile $n.ext -out $n.pem; done",
             dir);
    char full[4200];
    snprintf(full, sizeof(full), "(%s) >/dev/null 2>&1", cmd);
    return system(full) == 0 ? 0 : -1;
}

SSL_CTX *tsrv_ssl_ctx(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        abort();
    return ctx;
}

SSL_CTX *tsrv_ssl_ctx_made(const char *dir, const char *which)
{
    char cert[300], key[300];
    snprintf(cert, sizeof(cert), "%s/%s.pem", dir, which);
    snprintf(key, sizeof(key), "%s/%s.key", dir, which);
    return tsrv_ssl_ctx(cert, key);
}

static void loop_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
}

struct event_base *tsrv_loop_new(void)
{
    struct event_base *base = event_base_new();
    struct event *tick = event_new(base, -1, EV_PERSIST, loop_tick_cb, NULL);
    event_add(tick, &(struct timeval){0, 20000});
    return base;
}

/* event_base_foreach_event() callback: finds the tick of tsrv_loop_new(). */
static int find_tick(const struct event_base *base, const struct event *ev, void *arg)
{
    (void)base;
    if (event_get_callback(ev) != loop_tick_cb)
        return 0;
    *(struct event **)arg = (struct event *)ev;
    return 1;
}

void tsrv_loop_free(struct event_base *base)
{
    struct event *tick = NULL;
    event_base_foreach_event(base, find_tick, &tick);
    if (tick)
        event_free(tick);
    event_base_free(base);
}

int tsrv_run_until(struct event_base *base, int (*cond)(void), unsigned ms)
{
    uint64_t end = fbr_now_ms() + ms;
    while (!cond() && fbr_now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    return cond();
}

const char *tsrv_room_url(const struct tsrv *s, const char *scheme, const char *host,
                          const char *room)
{
    static char buf[256];
    snprintf(buf, sizeof(buf), "%s://%s:%d/v2/room/%s/notification?auth_token=SECRET", scheme, host,
             tsrv_port(s), room);
    return buf;
}
