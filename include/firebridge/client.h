/*
 * client.h - the outbound HTTP/1.1 client at the end of the data path (delivery -> client):
 * non-blocking over plain TCP and TLS on the one event loop.  Names resolve through evdns (IP
 * literals skip it), TLS verifies the certificate chain and the host name by default (TLS 1.2
 * minimum, SNI, system trust store or a CA file), connections are kept alive and pooled per origin
 * (scheme, host, port) with at most pool_size of them, each carrying up to pipeline requests in
 * flight once it has shown it persists (HTTP/1.1 pipelining; 1, the default, pipelines nothing)
 * and none more once the answer being read says the connection ends with it.  Every attempt has
 * its own deadline timer, and request bodies are written from the caller's iovec slices without
 * copying.
 *
 * Sending again: a request counts as sent once a byte of it has left the client's buffers (it
 * may have reached the server).  When a server closes a kept-alive connection just as it is
 * reused (no response byte seen), the request is sent once more on another connection, and so
 * are sent requests pipelined behind a response that failed or ended the connection: each at
 * most once (stats.requeued), the second time reported as the failure.  A request that was never
 * sent when its connection ended, or was queued behind an answer saying the server processes
 * nothing more on the connection ("Connection: close", HTTP/1.0 without keep-alive: RFC 9112
 * 9.6), is moved to another connection instead (stats.moved), which does not use its one resend;
 * moves are bounded by the attempt's deadline (the connect and request timeouts from when the call
 * began or was last sent again), after which it fails as FBR_CLIENT_ERR_TIMEOUT.  Bytes arriving
 * on a connection with nothing written and unanswered (a server's idle-timeout 408 crossing a
 * request queued in the same loop iteration) answer no request: the connection is closed and
 * what was queued on it moved.  A 408 answer to the first request written on a reused (idle)
 * connection is taken, as browsers do, for the server's idle timeout: the request is sent once
 * more (its one resend) on a new connection.  Any other failure is reported, never retried here.
 *
 * Response bodies are read only as far as the call keeps them (max_body): a longer one is cut
 * there (body_cut) and its connection closed instead of drained, whatever its length says, so a
 * server streaming a never-ending body costs one read.  Once a 2xx status line and the whole
 * header section have arrived the server has accepted the request: a body that then times out,
 * is closed early, resets or breaks its framing still completes the call as that 2xx answer
 * (err NONE, body_cut set, reason saying what happened to the body), on a connection that is
 * closed, never reused.  Any other status followed by such a failure is reported as the failure.
 *
 * Callback contract: if fbr_client_request() returns an error the callback is never called;
 * otherwise it is called exactly once, never from inside fbr_client_request() itself, unless the
 * client is freed first (fbr_client_free() drops pending calls without calling them).
 */
#ifndef FIREBRIDGE_CLIENT_H
#define FIREBRIDGE_CLIENT_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "firebridge/common.h"

struct fbr_client;
struct fbr_url;

/* Why an attempt produced no response; the names go to logs and the retries metric. */
#define FBR_CLIENT_ERR_MAP(X)                                                                      \
    X(NONE, "none")                                                                                \
    X(DNS, "dns")                                                                                  \
    X(CONNECT, "connect")                                                                          \
    X(TLS, "tls")                                                                                  \
    X(TIMEOUT, "timeout")                                                                          \
    X(EOF, "eof")                                                                                  \
    X(PROTOCOL, "protocol")                                                                        \
    X(IO, "io")

enum fbr_client_err {
#define FBR_X(name, text) FBR_CLIENT_ERR_##name,
    FBR_CLIENT_ERR_MAP(FBR_X)
#undef FBR_X
        FBR_CLIENT_ERR_COUNT
};

const char *fbr_client_err_name(enum fbr_client_err e);

struct fbr_client_opts {
    /* A zero value takes the daemon's default from defaults.h (FBR_DEFAULT_POOL_SIZE, ...). */
    unsigned pool_size;          /* connections per origin */
    unsigned connect_timeout_ms; /* DNS + TCP + TLS handshake, and waiting for a pooled slot */
    unsigned request_timeout_ms; /* from writing the request to the end of the response */
    const char *ca_file;         /* NULL: system trust store */
    int insecure;                /* tests only: no certificate verification */
    const char *nameserver;      /* tests: "IP[:port]" of the only nameserver (hosts file still
                                    read); NULL: /etc/resolv.conf (borrowed during _new) */
    unsigned pipeline;           /* requests in flight per persistent connection (1: none
                                    pipelined) */
    unsigned max_pools;          /* origins with a pool at once (FBR_DEFAULT_MAX_POOLS): a new
                                    origin beyond it takes the least recently used unused pool's
                                    place, or fails its call (connect) when every one is in use */
    unsigned pool_idle_ms;       /* a pool with no call waiting and no connection busy for this
                                    long is freed, its idle connections closed
                                    (FBR_DEFAULT_IDLE_TIMEOUT_MS) */
};

/* One request.  Everything is borrowed until the callback has been called. */
struct fbr_client_req {
    const char *method; /* "POST", ... */
    const char *url;    /* absolute http:// or https:// URL */
    size_t url_len;
    const char *head; /* extra header lines, each "Name: value\r\n" (may be NULL) */
    size_t head_len;
    const struct iovec *body; /* body slices, written by reference */
    size_t nbody;
    const char *log_id; /* delivery id for log lines (may be NULL) */
    size_t max_body;    /* response body bytes to keep and read (0: the first 512, enough for
                           a reason; at most FBR_CLIENT_MAX_BODY); a longer body is cut */
    const struct fbr_url *parsed; /* url as fbr_url_parse() accepted it (its slices into url),
                                     borrowed for the call only; NULL: the client parses url */
};

/* The most response body a request may ask to keep (fbr_client_req.max_body). */
#define FBR_CLIENT_MAX_BODY (256u * 1024u)

/* What came back.  Borrowed for the duration of the callback. */
struct fbr_client_resp {
    int status; /* HTTP status, 0 when err != NONE */
    enum fbr_client_err err;
    const char *reason; /* human text for err ("TLS certificate verification failed ...") */
    const char *body;   /* the first bytes of the response body (bounded), NUL-terminated */
    size_t body_len;
    int body_cut;       /* the body was not read whole: longer than what is kept, or cut
                           short after a 2xx head (reason says how) */
    int reused; /* the attempt ran on a kept-alive connection */
    /* rate-limit hints, -1 when absent; resets and retry_after_wall_ms are wall-clock; the
     * resets and a delta-seconds Retry-After are capped at FBR_CLIENT_MAX_SECONDS, so that the
     * receiver's digits always make a valid number of milliseconds */
    int64_t retry_after_wall_ms;
    int64_t ratelimit_limit, ratelimit_remaining, ratelimit_reset;
    int64_t flood_limit, flood_remaining, flood_reset;
};

/* The largest number of seconds a response's header is taken for (about 31,700 years). */
#define FBR_CLIENT_MAX_SECONDS INT64_C(1000000000000)

typedef void (*fbr_client_cb)(const struct fbr_client_resp *resp, void *arg);

/*
 * Creates a client on base (borrowed, must outlive the client).  Returns FBR_OK and *out, or
 * FBR_ERROR with a reason in err (e.g. an unreadable CA file).  Ignores SIGPIPE process-wide.
 */
int fbr_client_new(struct event_base *base, const struct fbr_client_opts *opts,
                   struct fbr_client **out, char *err, size_t errlen);
/* Closes every connection; pending callbacks are dropped, not called.  Sets *c to NULL.
 * Name lookups still running are failed by libevent from the loop: run it once more
 * (EVLOOP_NONBLOCK) before event_base_free() so they can release their memory. */
void fbr_client_free(struct fbr_client **c);
/* The options c runs with, defaults filled in (borrowed; ca_file and nameserver are NULL). */
const struct fbr_client_opts *fbr_client_get_opts(const struct fbr_client *c);

/*
 * Starts one attempt.  Returns FBR_OK (cb will be called exactly once) or FBR_INVALID for a URL
 * that url.h's fbr_url_parse() refuses, or a req->parsed whose host or request target is not
 * inside url (a parse of other bytes; cb never called).
 */
int fbr_client_request(struct fbr_client *c, const struct fbr_client_req *req, fbr_client_cb cb,
                       void *arg);

/* Parses an HTTP date (RFC 7231 IMF-fixdate) or delta-seconds relative to now_wall_ms into wall
 * ms; returns -1 when unparsable. */
int64_t fbr_client_parse_retry_after(const char *v, uint64_t now_wall_ms);

struct fbr_client_stats {
    uint64_t connections_opened; /* TCP connections attempted */
    uint64_t connections_reused; /* requests sent on a kept-alive connection */
    uint64_t open_now;           /* connections currently open or opening */
    uint64_t requeued;           /* requests sent again (at most once each) because the
                                    connection they may have reached ended before any response
                                    byte of theirs */
    uint64_t moved;              /* requests put on another connection without counting as a
                                    resend: never sent, or ignored by the server (queued behind
                                    an answer that closed the connection, or on a connection
                                    that answered what it was not asked) */
    uint64_t pipelined;          /* requests written while another response was awaited on
                                    their connection */
    uint64_t pools_now;          /* origins with a pool right now (at most max_pools) */
    uint64_t pools_refused;      /* calls failed because max_pools origins were all in use */
};
void fbr_client_get_stats(const struct fbr_client *c, struct fbr_client_stats *out);

#endif
