/*
 * server.h - the inbound HTTP(S) server on libevhtp: listeners, limits (body, URI, headers,
 * connections, timeouts), a small route table, JSON replies and the built-in /healthz, /readyz
 * and /metrics endpoints.  It is the first step of the data path: intake handlers are routes.
 */
#ifndef FIREBRIDGE_SERVER_H
#define FIREBRIDGE_SERVER_H

#include <event2/event.h>
#include <jansson.h>
#include <stddef.h>

#include "firebridge/common.h"
#include "firebridge/http.h" /* FBR_M_* */

struct fbr_server;
struct fbr_metrics;


/* One request as a route handler sees it; everything is borrowed for the call's duration. */
struct fbr_http_req {
    void *opaque;             /* the libevhtp request (evhtp_request_t *) */
    const char *id;           /* request id for logs, NUL-terminated */
    unsigned method;          /* one FBR_M_* bit */
    struct fbr_slice path;    /* decoded path, without the query */
    struct fbr_slice query;   /* raw query string, without '?' */
    struct fbr_slice body;    /* whole body (already bounded by max_body) */
    json_t *json;             /* parsed body for routes with json_body (borrowed), else NULL */
    void *conn;               /* server-internal connection state; do not touch */
};

/*
 * Called once the whole request is in.  The handler must answer exactly once, before returning,
 * with fbr_http_reply_json() or fbr_http_reply_error().
 */
typedef void (*fbr_route_fn)(struct fbr_http_req *req, void *arg);

struct fbr_route {
    const char *path;   /* exact path, or prefix when prefix != 0 */
    int prefix;
    unsigned methods;   /* FBR_M_* mask; others get 405 with Allow */
    int json_body;      /* 1: body must be JSON (415 otherwise; 400 when unparsable) */
    const char *metric; /* endpoint label for /metrics */
    int secret_segment; /* 1: the path segment right after a prefix route's `path` is a secret
                           (an API key): logs show it as "***" */
    fbr_route_fn fn;
    /* Optional: the refusals fn would give from the path, the method and the headers alone,
     * asked before the body is read when the client waits for "100 Continue" (HTTP/1.1
     * "Expect: 100-continue"): it answers (fbr_http_reply_*) exactly as fn would, and the
     * connection closes without reading the body; answering nothing lets the body come.
     * req->body is empty and req->json NULL.  NULL: only the route, method and size checks. */
    fbr_route_fn check;
    void *arg;
};

/* Returns a header value of the request (borrowed) or NULL. */
const char *fbr_http_header(struct fbr_http_req *req, const char *name);
/* 1 when content_type (a Content-Type value, or NULL) is application/json or *+json, parameters
 * allowed; 0 otherwise. */
int fbr_http_is_json_type(const char *content_type);

/* Replies with status and a JSON body (steals a reference to body; NULL sends no body). */
void fbr_http_reply_json(struct fbr_http_req *req, int status, json_t *body);
/* Replies {"result":"failure","message":"..."} with status. */
void fbr_http_reply_error(struct fbr_http_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Adds a response header before replying (copied). */
void fbr_http_add_header(struct fbr_http_req *req, const char *name, const char *value);
/* Replies with status and a body of len bytes (copied) of the given Content-Type. */
void fbr_http_reply_raw(struct fbr_http_req *req, int status, const char *content_type,
                        const char *body, size_t len);

/*
 * A reply that cannot be given before the handler returns (the HipChat add-on's install, which
 * first fetches a document and a token).  fbr_http_defer() is called by the handler instead of
 * replying; the request is paused and the handle is the caller's until it calls
 * fbr_http_pending_reply_json() exactly once (which frees it and sets *p to NULL).  If the
 * client disconnected meanwhile, the reply is dropped silently.  The caller must answer within
 * a bounded time (the server's drain waits for the connection).
 */
struct fbr_http_pending;
struct fbr_http_pending *fbr_http_defer(struct fbr_http_req *req);
void fbr_http_pending_reply_json(struct fbr_http_pending **p, int status, json_t *body);
/* Adds a response header (copied) to the deferred reply; nothing when the client went away. */
void fbr_http_pending_add_header(struct fbr_http_pending *p, const char *name, const char *value);
/* The request id, for the owner's log lines (borrowed). */
const char *fbr_http_pending_id(const struct fbr_http_pending *p);

/*
 * Server lifecycle.  fbr_server_new() never fails (aborts on exhaustion).  Zero in a limit
 * selects its default.  Strings are copied; metrics is borrowed (NULL: the server keeps a
 * registry of its own, see fbr_server_metrics()).
 */
struct fbr_server_opts {
    size_t max_body;          /* bytes; larger bodies get 413 */
    uint32_t max_connections; /* open connections at most (0: defaults.h, as max_body) */
    uint32_t read_timeout_ms; /* a whole request must arrive within this (0: defaults.h) */
    uint32_t idle_timeout_ms; /* nothing read or written for this long closes (0: defaults.h) */
    size_t max_uri;           /* request-target bytes (default 8000; libevhtp breaks at 8 KiB) */
    size_t max_header_line;   /* one header line (default 8000) */
    size_t max_header_bytes;  /* the whole header section (default 32 KiB) */
    uint32_t max_headers;     /* header lines (default 100) */
    const char *tls_cert;     /* both set: every listener serves HTTPS */
    const char *tls_key;
    const char *data_dir;     /* /readyz answers 503 when it is not writable; NULL: unchecked */
    struct fbr_metrics *metrics;
};
struct fbr_server *fbr_server_new(struct event_base *base, const struct fbr_server_opts *opts);
/* Applies new limits (reload).  Timeouts apply to connections accepted afterwards; listeners
 * and TLS settings are not changed. */
void fbr_server_update(struct fbr_server *srv, const struct fbr_server_opts *opts);
/* /readyz also asks fn (borrowed arg): a non-NULL string is why the daemon is not ready (503). */
void fbr_server_set_ready_check(struct fbr_server *srv, const char *(*fn)(void *arg), void *arg);
/* Starts a graceful drain: listeners close, idle keep-alive connections close, requests in
 * progress finish with "Connection: close", /readyz answers 503. */
void fbr_server_drain(struct fbr_server *srv);
int fbr_server_draining(const struct fbr_server *srv);
/* Open inbound connections right now. */
size_t fbr_server_connections(const struct fbr_server *srv);
/* The registry /metrics renders (borrowed): other modules register their metrics in it. */
struct fbr_metrics *fbr_server_metrics(struct fbr_server *srv);
/* Port of the i-th listener (in fbr_server_listen() order), or -1. */
int fbr_server_listener_port(const struct fbr_server *srv, size_t i);
/* Binds "ADDR:PORT" or "[IPv6]:PORT".  Returns FBR_OK or FBR_ERROR (logged). Port 0 picks one;
 * fbr_server_port() then tells which (of the first listener). */
int fbr_server_listen(struct fbr_server *srv, const char *addr);
int fbr_server_port(const struct fbr_server *srv);
/* Adds a route (copied).  Routes are matched in the order they were added. */
void fbr_server_add_route(struct fbr_server *srv, const struct fbr_route *route);
void fbr_server_free(struct fbr_server **srv);
#endif
