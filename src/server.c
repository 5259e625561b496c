/*
 * server.c - the inbound HTTP(S) server: libevhtp listeners in the one event loop, the route
 * table, limits, and JSON replies.  Every inbound request enters firebridge here and is handed to
 * a route handler (intake, built-in endpoints) with its body already read and bounded.
 */
#include "firebridge/server.h"

#include <evhtp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "firebridge/log.h"

struct fbr_server {
    struct event_base *base;
    evhtp_t *htp;
    struct fbr_server_opts opts;
    struct fbr_route *routes;
    size_t nroutes;
    uint64_t next_id;
    int port;
};

static unsigned method_bit(htp_method m)
{
    switch (m) {
    case htp_method_GET:
        return FBR_M_GET;
    case htp_method_POST:
        return FBR_M_POST;
    case htp_method_PUT:
        return FBR_M_PUT;
    case htp_method_DELETE:
        return FBR_M_DELETE;
    case htp_method_PATCH:
        return FBR_M_PATCH;
    case htp_method_HEAD:
        return FBR_M_HEAD;
    default:
        return 0;
    }
}

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

void fbr_http_reply_json(struct fbr_http_req *req, int status, json_t *body)
{
    evhtp_request_t *r = req->opaque;
    if (body) {
        char *s = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        evhtp_headers_add_header(r->headers_out,
                                 evhtp_header_new("Content-Type", "application/json", 0, 0));
        evbuffer_add(r->buffer_out, s, strlen(s));
        evbuffer_add(r->buffer_out, "\n", 1);
        free(s);
    }
    evhtp_send_reply(r, (evhtp_res)status);
}

void fbr_http_reply_error(struct fbr_http_req *req, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fbr_http_reply_json(req, status, json_pack("{s:s,s:s}", "result", "failure", "message", msg));
}

static int route_matches(const struct fbr_route *rt, struct fbr_slice path)
{
    size_t n = strlen(rt->path);
    if (rt->prefix)
        return path.len >= n && memcmp(path.ptr, rt->path, n) == 0;
    return path.len == n && memcmp(path.ptr, rt->path, n) == 0;
}

static void on_request(evhtp_request_t *r, void *arg)
{
    struct fbr_server *srv = arg;
    char id[24];
    snprintf(id, sizeof(id), "r%llu", (unsigned long long)++srv->next_id);

    struct fbr_http_req req = {.opaque = r, .id = id};
    req.method = method_bit(evhtp_request_get_method(r));
    const char *path = r->uri && r->uri->path && r->uri->path->full ? r->uri->path->full : "/";
    req.path = fbr_slice_from(path);

    const struct fbr_route *rt = NULL;
    for (size_t i = 0; i < srv->nroutes; i++) {
        if (route_matches(&srv->routes[i], req.path)) {
            rt = &srv->routes[i];
            break;
        }
    }
    if (!rt) {
        fbr_http_reply_error(&req, 404, "no such endpoint");
        return;
    }
    if (!(rt->methods & req.method)) {
        fbr_http_reply_error(&req, 405, "method not allowed");
        return;
    }
    size_t blen = evbuffer_get_length(r->buffer_in);
    if (blen > srv->opts.max_body) {
        fbr_http_reply_error(&req, 413, "body larger than %zu bytes", srv->opts.max_body);
        return;
    }
    req.body.ptr = (const char *)evbuffer_pullup(r->buffer_in, -1);
    req.body.len = blen;
    json_t *json = NULL;
    if (rt->json_body) {
        json_error_t jerr;
        json = json_loadb(req.body.ptr ? req.body.ptr : "", blen, JSON_REJECT_DUPLICATES, &jerr);
        if (!json) {
            fbr_http_reply_error(&req, 400, "invalid JSON: %s", jerr.text);
            return;
        }
        req.json = json;
    }
    rt->fn(&req, rt->arg);
    json_decref(json);
}

struct fbr_server *fbr_server_new(struct event_base *base, const struct fbr_server_opts *opts)
{
    struct fbr_server *srv = fbr_xcalloc(1, sizeof(*srv));
    srv->base = base;
    srv->opts = *opts;
    srv->htp = evhtp_new(base, NULL);
    evhtp_set_gencb(srv->htp, on_request, srv);
    return srv;
}

int fbr_server_listen(struct fbr_server *srv, const char *addr)
{
    char host[128];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof(host) - 8) {
        fbr_log_error("bad listen address '%s'", addr);
        return FBR_ERROR;
    }
    int port = atoi(colon + 1);
    if (addr[0] == '[') {
        snprintf(host, sizeof(host), "ipv6:%.*s", (int)(colon - addr - 2), addr + 1);
    } else {
        snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
    }
    if (evhtp_bind_socket(srv->htp, host, (uint16_t)port, 1024) != 0) {
        fbr_log_error("cannot listen on %s", addr);
        return FBR_ERROR;
    }
    if (!srv->port) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        evutil_socket_t fd = evconnlistener_get_fd(srv->htp->server);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
            if (ss.ss_family == AF_INET)
                srv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            else
                srv->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    fbr_log_info("listening on %s", addr);
    return FBR_OK;
}

int fbr_server_port(const struct fbr_server *srv)
{
    return srv->port;
}

void fbr_server_add_route(struct fbr_server *srv, const struct fbr_route *route)
{
    srv->routes = fbr_xrealloc(srv->routes, (srv->nroutes + 1) * sizeof(*srv->routes));
    srv->routes[srv->nroutes++] = *route;
}

void fbr_server_free(struct fbr_server **psrv)
{
    struct fbr_server *srv = *psrv;
    if (!srv)
        return;
    evhtp_unbind_socket(srv->htp);
    evhtp_free(srv->htp);
    free(srv->routes);
    free(srv);
    *psrv = NULL;
}
