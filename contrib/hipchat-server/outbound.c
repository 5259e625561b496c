/*
 * outbound.c - hipchat-server's HTTP client towards add-ons (see outbound.h): libevent's evhttp
 * client over plain sockets or OpenSSL bufferevents, one connection per request, freed by us on
 * the loop turn after its request ended.  Not with evhttp_connection_free_on_completion():
 * libevent 2.1 frees such a connection after a response or a failed request, but not after a
 * failed connect (refused, connect timeout), where it calls back with a request instead of NULL
 * (measured: LeakSanitizer reported the connection).
 */
#include "outbound.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "firebridge/common.h"

struct out_call {
    struct hcs_outbound *o;
    struct out_call *prev, *next;
    struct evhttp_connection *evcon; /* NULL once libevent owns its end (completed) */
    struct evhttp_request *req;      /* until it is handed to evcon */
    enum evhttp_cmd_type type;
    char *target;
    struct event *start; /* the request is made on the next loop turn */
    hcs_out_cb cb;
    void *arg;
    const char *error;
};

struct hcs_outbound {
    struct event_base *base;
    struct evdns_base *dns;
    SSL_CTX *ctx;
    unsigned timeout_s;
    struct out_call *calls;
    struct evhttp_connection **dead; /* connections whose request ended, freed by reaper */
    size_t ndead;
    struct event *reaper;
};

static void reap(evutil_socket_t fd, short what, void *arg);

/* A verifying client context: TLS 1.2 minimum, ca_file or (NULL) the system store. */
static SSL_CTX *tls_ctx(const char *ca_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

struct hcs_outbound *hcs_outbound_new(struct event_base *base, const char *ca_file,
                                      unsigned timeout_s)
{
    struct hcs_outbound *o = fbr_xcalloc(1, sizeof(*o));
    o->base = base;
    o->timeout_s = timeout_s;
    o->reaper = evtimer_new(base, reap, o);
    o->dns =
        evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    /* The system store is loaded on first use: OpenSSL 3 parses the whole bundle (measured with
     * callgrind: 236 M instructions, more than a thousand notifications cost), and most runs of
     * this server never make an HTTPS request. */
    if ((ca_file && !(o->ctx = tls_ctx(ca_file))) || !o->dns) {
        fprintf(stderr, "hipchat-server: cannot load the CA file %s\n", ca_file ? ca_file : "");
        hcs_outbound_free(&o);
        return NULL;
    }
    return o;
}

static void unlink_call(struct out_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->o->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void finish(struct out_call *c, const struct hcs_out_resp *resp)
{
    unlink_call(c);
    if (c->start)
        event_free(c->start);
    c->cb(resp, c->arg);
    free(c->target);
    free(c);
}

static void reap(evutil_socket_t fd, short what, void *arg)
{
    struct hcs_outbound *o = arg;
    for (size_t i = 0; i < o->ndead; i++)
        evhttp_connection_free(o->dead[i]);
    free(o->dead);
    o->dead = NULL;
    o->ndead = 0;
}

/* A connection must not be freed inside its own callback: it goes on the next loop turn. */
static void bury(struct hcs_outbound *o, struct evhttp_connection *evcon)
{
    o->dead = fbr_xrealloc(o->dead, (o->ndead + 1) * sizeof(*o->dead));
    o->dead[o->ndead++] = evcon;
    struct timeval now = {0, 0};
    evtimer_add(o->reaper, &now);
}

void hcs_outbound_free(struct hcs_outbound **op)
{
    struct hcs_outbound *o = *op;
    if (!o)
        return;
    if (o->reaper) {
        reap(-1, 0, o);
        event_free(o->reaper);
    }
    while (o->calls) {
        struct out_call *c = o->calls;
        if (c->req)
            evhttp_request_free(c->req); /* not made yet */
        if (c->evcon)
            evhttp_connection_free(c->evcon); /* frees its request without calling back */
        struct hcs_out_resp r = {0, "cancelled", "", 0, 1};
        finish(c, &r);
    }
    if (o->dns)
        evdns_base_free(o->dns, 0);
    SSL_CTX_free(o->ctx);
    free(o);
    *op = NULL;
}

static const char *error_name(enum evhttp_request_error e)
{
    switch (e) {
    case EVREQ_HTTP_TIMEOUT:
        return "timeout";
    case EVREQ_HTTP_EOF:
        return "connection closed before a response (refused, reset or TLS failure)";
    case EVREQ_HTTP_INVALID_HEADER:
        return "invalid response header";
    case EVREQ_HTTP_BUFFER_ERROR:
        return "connection error";
    case EVREQ_HTTP_REQUEST_CANCEL:
        return "cancelled";
    case EVREQ_HTTP_DATA_TOO_LONG:
        return "response body too large";
    }
    return "error";
}

static void on_error(enum evhttp_request_error e, void *arg)
{
    struct out_call *c = arg;
    c->error = error_name(e);
}

static void on_done(struct evhttp_request *req, void *arg)
{
    struct out_call *c = arg;
    bury(c->o, c->evcon);
    c->evcon = NULL;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (code <= 0) {
        struct hcs_out_resp r = {
            0, c->error ? c->error : "connection failed (refused, reset, DNS or TLS)", "", 0, 0};
        finish(c, &r);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char *body = fbr_xmalloc(len + 1);
    evbuffer_copyout(in, body, len);
    body[len] = '\0';
    struct hcs_out_resp r = {code, NULL, body, len, 0};
    finish(c, &r);
    free(body);
}

/* Makes the request on a fresh loop turn, so that no callback, not even libevent's immediate
 * failure report, runs inside hcs_out_request(). */
static void on_start(evutil_socket_t fd, short what, void *arg)
{
    struct out_call *c = arg;
    struct evhttp_request *req = c->req;
    event_free(c->start);
    c->start = NULL;
    c->req = NULL;
    if (evhttp_make_request(c->evcon, req, c->type, c->target) != 0) {
        /* libevent has dropped the request and will not call back. */
        evhttp_connection_free(c->evcon);
        c->evcon = NULL;
        struct hcs_out_resp r = {0, "cannot connect", "", 0, 0};
        finish(c, &r);
    }
}

static int method_type(const char *m, enum evhttp_cmd_type *t)
{
    static const struct {
        const char *name;
        enum evhttp_cmd_type type;
    } map[] = {{"GET", EVHTTP_REQ_GET},
               {"POST", EVHTTP_REQ_POST},
               {"DELETE", EVHTTP_REQ_DELETE},
               {"PUT", EVHTTP_REQ_PUT}};
    for (size_t i = 0; i < FBR_ARRAY_LEN(map); i++) {
        if (strcmp(map[i].name, m) == 0) {
            *t = map[i].type;
            return 0;
        }
    }
    return -1;
}

/* A TLS bufferevent for host: SNI for names, and a certificate check against the name or the
 * IP address. */
static struct bufferevent *tls_bev(struct hcs_outbound *o, const char *host)
{
    if (!o->ctx && !(o->ctx = tls_ctx(NULL)))
        return NULL;
    SSL *ssl = SSL_new(o->ctx);
    unsigned char ip[16];
    if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    } else {
        SSL_set_tlsext_host_name(ssl, host);
        SSL_set1_host(ssl, host);
    }
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(o->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                       BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (bev)
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    else
        SSL_free(ssl);
    return bev;
}

int hcs_out_request(struct hcs_outbound *o, const char *method, const char *url,
                    const char *const *headers, const char *body, size_t body_len, hcs_out_cb cb,
                    void *arg, char *err, size_t errlen)
{
    enum evhttp_cmd_type type;
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    int tls = scheme && strcasecmp(scheme, "https") == 0;
    if (!scheme || (!tls && strcasecmp(scheme, "http") != 0) || !host || !*host ||
        evhttp_uri_get_userinfo(uri) || method_type(method, &type) < 0) {
        snprintf(err, errlen, "not an absolute http(s) URL without userinfo: %.200s", url);
        evhttp_uri_free(uri);
        return -1;
    }
    int port = evhttp_uri_get_port(uri);
    if (port < 0)
        port = tls ? 443 : 80;
    char hostbuf[256];
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2 && hl < sizeof(hostbuf) && host[hl - 1] == ']')
        snprintf(hostbuf, sizeof(hostbuf), "%.*s", (int)(hl - 2), host + 1);
    else
        snprintf(hostbuf, sizeof(hostbuf), "%s", host);
    if (port == 0 || port > 65535) {
        snprintf(err, errlen, "bad port in %.200s", url);
        evhttp_uri_free(uri);
        return -1;
    }

    struct out_call *c = fbr_xcalloc(1, sizeof(*c));
    c->o = o;
    c->cb = cb;
    c->arg = arg;
    struct bufferevent *bev = tls ? tls_bev(o, hostbuf) : NULL;
    if (tls && !bev) {
        snprintf(err, errlen, "cannot set up TLS towards %.200s", hostbuf);
        evhttp_uri_free(uri);
        free(c);
        return -1;
    }
    c->evcon = bev ? evhttp_connection_base_bufferevent_new(o->base, o->dns, bev, hostbuf,
                                                            (unsigned short)port)
                   : evhttp_connection_base_new(o->base, o->dns, hostbuf, (unsigned short)port);
    evhttp_connection_set_timeout(c->evcon, (int)o->timeout_s);
    evhttp_connection_set_max_body_size(c->evcon, HCS_OUT_MAX_BODY);
    evhttp_connection_set_retries(c->evcon, 0);

    struct evhttp_request *req = evhttp_request_new(on_done, c);
    evhttp_request_set_error_cb(req, on_error);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char hosthdr[300], len[24];
    if (strchr(hostbuf, ':'))
        snprintf(hosthdr, sizeof(hosthdr), "[%s]:%d", hostbuf, port);
    else
        snprintf(hosthdr, sizeof(hosthdr), "%s:%d", hostbuf, port);
    evhttp_add_header(h, "Host", hosthdr);
    evhttp_add_header(h, "Connection", "close");
    evhttp_add_header(h, "User-Agent", "hipchat-server");
    for (size_t i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        evhttp_add_header(h, headers[i], headers[i + 1]);
    if (body) {
        snprintf(len, sizeof(len), "%zu", body_len);
        evhttp_add_header(h, "Content-Length", len);
        evbuffer_add(evhttp_request_get_output_buffer(req), body, body_len);
    }
    const char *path = evhttp_uri_get_path(uri), *query = evhttp_uri_get_query(uri);
    size_t tlen = strlen(path ? path : "") + (query ? strlen(query) + 1 : 0) + 2;
    char *target = fbr_xmalloc(tlen);
    snprintf(target, tlen, "%s%s%s", path && *path ? path : "/", query ? "?" : "",
             query ? query : "");
    evhttp_uri_free(uri);

    c->req = req;
    c->type = type;
    c->target = target;
    c->next = o->calls;
    if (o->calls)
        o->calls->prev = c;
    o->calls = c;
    c->start = evtimer_new(o->base, on_start, c);
    struct timeval now = {0, 0};
    evtimer_add(c->start, &now);
    return 0;
}
