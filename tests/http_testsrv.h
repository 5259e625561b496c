/*
 * http_testsrv.h - a scriptable HTTP/1.1 server for the delivery and client tests, running on the
 * test's own event loop (plain TCP or TLS).  It stands in for the chat service at the far end of
 * the data path: answers scripted statuses and headers per path prefix or by a request's place
 * on its connection, can stall, hold an answer while requests pipeline behind it, close after
 * each response (with or without saying so, or shutting its side and reading on), stream a body
 * that never ends, reset the connection after a reply, and records every request (with what it
 * was answered) and connection.
 */
#ifndef FBR_TEST_HTTP_TESTSRV_H
#define FBR_TEST_HTTP_TESTSRV_H

#include <event2/event.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

struct tsrv_reply {
    int status;           /* 0 = stall: never answer */
    const char *headers;  /* extra header lines "Name: v\r\n", may be NULL */
    int flood_reset_in_s; /* > 0: add X-FloodControl-Remaining: 0 and a Reset this far ahead */
    int token_reset_in_s; /* > 0: add X-Ratelimit-Remaining: 0 and a Reset this far ahead */
    const char *raw;      /* non-NULL: write exactly these bytes instead (status ignored) */
    int close_after;      /* close the connection after this reply */
    enum tsrv_then {
        TSRV_THEN_NEXT,   /* after raw: read the next request */
        TSRV_THEN_STREAM, /* after raw: write filler bytes until the peer goes away */
        TSRV_THEN_RESET,  /* after raw has been written: close with a TCP reset (SO_LINGER 0) */
        TSRV_THEN_LINGER, /* after the reply (raw or status, which then says "Connection: close"):
                             shut the writing side once it is out, then read and record every
                             further request, unanswered, until the peer closes */
    } then;
    /* > 0: the answer waits this long after the request has arrived, later requests on the
     * connection behind it, unread (pipelined requests keep their order) */
    unsigned hold_ms;
    /* with hold_ms: the answer goes as soon as a whole request has arrived behind this one (or
     * after hold_ms at most): a server answering with requests pipelined behind its answer */
    int hold_for_next;
};

struct tsrv_req {
    char path[256];
    char delivery_id[64];
    char auth[128];
    char *body;
    size_t body_len;
    char *head; /* the request line and header lines as received, NUL-terminated */
    size_t head_len;
    uint64_t at_mono_ms, at_wall_ms;
    unsigned conn_no;
    unsigned read_no; /* which of the server's read callbacks took it (pipelined: the same) */
    unsigned nth;     /* its place on its connection: 1 for the first request */
    int answered;     /* the status it was answered with; 0: never answered (a stall, a hold
                         cut by the close, or read while lingering: TSRV_THEN_LINGER) */
};

enum tsrv_close { TSRV_KEEP, TSRV_CLOSE_SAYING, TSRV_CLOSE_SILENT };

struct tsrv;

/* ssl_ctx NULL: plain HTTP.  Listens on 127.0.0.1, port 0. */
struct tsrv *tsrv_new(struct event_base *base, SSL_CTX *ssl_ctx);
int tsrv_port(const struct tsrv *s);
/* Replies for requests whose path starts with prefix, used in order; afterwards the default. */
void tsrv_script(struct tsrv *s, const char *prefix, const struct tsrv_reply *replies, size_t n);
/* The k-th request on every connection (k <= n) gets replies[k - 1], ahead of the path scripts:
 * what a server does by a connection's history (its idle timeout on a reused one, a close after
 * so many requests). */
void tsrv_script_conn(struct tsrv *s, const struct tsrv_reply *replies, size_t n);
void tsrv_set_default(struct tsrv *s, struct tsrv_reply r);
void tsrv_set_close(struct tsrv *s, enum tsrv_close mode);
size_t tsrv_nreqs(const struct tsrv *s);
const struct tsrv_req *tsrv_req(const struct tsrv *s, size_t i);
unsigned tsrv_accepted(const struct tsrv *s);
unsigned tsrv_max_open(const struct tsrv *s);
/* Filler bytes written by TSRV_THEN_STREAM replies so far (all connections). */
uint64_t tsrv_streamed(const struct tsrv *s);
void tsrv_free(struct tsrv *s);

/* Creates ca.pem, good.pem/good.key (localhost, 127.0.0.1) and wrong.pem/wrong.key
 * (wrong.example) under dir with the openssl CLI; returns 0 on success. */
int tsrv_make_certs(const char *dir);
SSL_CTX *tsrv_ssl_ctx(const char *cert, const char *key);
/* The server context for one of the pairs tsrv_make_certs() made in dir: which is "good" or
 * "wrong". */
SSL_CTX *tsrv_ssl_ctx_made(const char *dir, const char *which);

/* ---- the test's own event loop around a tsrv (test_client, test_delivery) ---- */

/* A new event base with a 20 ms no-op timer on it, so that each EVLOOP_ONCE pass returns within
 * 20 ms and tsrv_run_until() looks at its condition that often.  Free with tsrv_loop_free(). */
struct event_base *tsrv_loop_new(void);
/* Frees the timer of tsrv_loop_new() and base (the caller's own events freed before). */
void tsrv_loop_free(struct event_base *base);
/* Runs base until cond() holds or ms pass; returns cond(). */
int tsrv_run_until(struct event_base *base, int (*cond)(void), unsigned ms);
/* "<scheme>://<host>:<s's port>/v2/room/<room>/notification?auth_token=SECRET", a room
 * notification URL on s, in a static buffer that the next call overwrites. */
const char *tsrv_room_url(const struct tsrv *s, const char *scheme, const char *host,
                          const char *room);

#endif
