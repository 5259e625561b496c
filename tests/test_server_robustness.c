/*
 * test_server_robustness.c - integration tests of the inbound side (the first step of the data
 * path, intake) against hostile and broken clients: they start the real firebridge binary (path
 * in FBR_DAEMON) on an ephemeral port and throw at it what the shared notes on libevhtp 1.2.18
 * say it must survive:
 *  - a bounded, seeded-random stream of ~2,000 odd requests (request lines and header lines
 *    around the 8 KiB parser boundary, odd methods, bare LF, NUL bytes, bad percent escapes,
 *    huge / negative / duplicate Content-Length, chunked bodies with bad sizes, pipelined
 *    garbage, random small writes, abrupt closes and resets mid-header and mid-body); after each
 *    batch the daemon is alive and /healthz answers 200, its stderr never holds an ESC byte
 *    (libevhtp's log_error writes coloured lines), and at the end its descriptor count and open
 *    connection gauge are back at their baseline and it exits 0 on SIGTERM;
 *  - clients that disconnect mid-request in every way (libevhtp never calls on_conn_error): the
 *    open-connection gauge and the descriptor count return to baseline;
 *  - clients that reset while large pipelined replies are being written: SIGPIPE is ignored and
 *    the daemon survives;
 *  - replies that announce "Connection: close" (413, draining) really close the connection;
 *  - the status line says HTTP/1.x whatever version the request line claimed;
 *  - requests pipelined in one write are all answered, in order.
 *
 * FBR_SEED=<n> replays one stream (the seed in use is printed).  Under ASan (the sanitizer
 * build) the daemon aborts on a memory error, which the exit-status checks catch.
 */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "firebridge/common.h"
#include "daemon_util.h"
#include "testsupport.h"

/* ---- the daemon ---- */

static void daemon_assert_alive(struct dutil_daemon *d, const char *when)
{
    int st = 0;
    pid_t r = waitpid(d->pid, &st, WNOHANG);
    if (r == d->pid) {
        size_t len;
        char *log = dutil_slurp(d->log, &len);
        size_t from = len > 3000 ? len - 3000 : 0;
        d->pid = 0;
        ck_abort_msg("daemon died %s: status 0x%x (signal %d); log tail:\n%s", when, st,
                     WIFSIGNALED(st) ? WTERMSIG(st) : 0, log + from);
    }
}

/* Asserts the daemon's stderr holds no ESC byte (no terminal colour codes in the log). */
static void assert_log_has_no_escape(struct dutil_daemon *d)
{
    size_t len;
    char *log = dutil_slurp(d->log, &len);
    const char *esc = memchr(log, 0x1b, len);
    if (esc) {
        size_t at = (size_t)(esc - log);
        size_t from = at > 200 ? at - 200 : 0;
        ck_abort_msg("ESC byte at offset %zu of the daemon's stderr: ...%.400s", at, log + from);
    }
    free(log);
}

/* ---- client side ---- */

/* Every client socket here also has a send timeout: a stalled daemon must not hang the test. */
static int connect_port(int port, int rcvbuf)
{
    return dutil_connect_with(port, rcvbuf, 5 * dutil_slow(), 5 * dutil_slow());
}

/* Closes with a TCP reset instead of a FIN. */
static void close_reset(int fd)
{
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

/* Reads until EOF, reset, timeout or cap; returns the bytes read into buf (NUL-terminated). */
static size_t read_until_close(int fd, char *buf, size_t cap, int ms)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int waited = 0; waited < ms && len + 1 < cap;) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, 50);
        if (r == 0) {
            waited += 50;
            continue;
        }
        ssize_t n = recv(fd, buf + len, cap - 1 - len, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            break;
        if (n > 0) {
            len += (size_t)n;
            buf[len] = '\0';
        }
    }
    return len;
}

/*
 * Waits until the daemon is back at its baseline: fds descriptors and exactly one open
 * connection (the /metrics request asking).  Asserts it within a few seconds.
 */
static void assert_back_to_baseline(struct dutil_daemon *d, int fds, const char *when)
{
    int now = -1;
    long long open = -1;
    for (int i = 0; i < 100 * dutil_slow(); i++) {
        now = dutil_count_fds(d->pid);
        open = dutil_metric(d->port, "firebridge_http_open_connections");
        if (now <= fds && open == 1)
            break;
        dutil_msleep(50);
    }
    ck_assert_msg(now <= fds && open == 1, "%s: %d descriptors (baseline %d), gauge %lld", when,
                  now, fds, open);
}

/* ---- the seeded odd-request stream ---- */

static uint64_t rng_state;

static uint32_t rnd(void)
{
    /* xorshift64*: small, seedable, good enough to pick cases */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

static size_t rnd_in(size_t lo, size_t hi)
{
    return lo + rnd() % (hi - lo + 1);
}

struct out {
    char *p;
    size_t len, cap;
};

static void put(struct out *o, const void *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->p = realloc(o->p, o->cap);
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_fill(struct out *o, char c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        put(o, &c, 1);
}

/* n random bytes, any value when binary, else printable */
static void put_random(struct out *o, size_t n, int binary)
{
    for (size_t i = 0; i < n; i++) {
        char c = binary ? (char)(rnd() & 0xff) : (char)(' ' + rnd() % 95);
        put(o, &c, 1);
    }
}

static const char *const methods[] = {
    "GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND",
    "get", "G ET", "GETT", "", "\x7f", "POST\t", "M-SEARCH", "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
};
static const char *const paths[] = {
    "/healthz", "/readyz", "/metrics", "/", "*", "/%zz", "/%", "/%0", "/a%2", "/%00x",
    "/healthz?%%%", "http://h/healthz", "//", "/..%2f..%2fetc", "/healthz#frag", "/\xc3\x28",
};
static const char *const versions[] = {"HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0",
                                       "HTTP/1.1x", "", "http/1.1", "HTTP/1.", "HTTP/11.11"};
static const char *const lengths[] = {
    "Content-Length: 99999999999999999999999\r\n", "Content-Length: 18446744073709551615\r\n",
    "Content-Length: 18446744073709551616\r\n",    "Content-Length: -1\r\n",
    "Content-Length: 5\r\nContent-Length: 7\r\n",  "Content-Length: 5, 6\r\n",
    "Content-Length: +5\r\n",                      "Content-Length: 0x10\r\n",
    "Content-Length:\r\n",                         "Content-Length: 4\r\nContent-Length: 4\r\n",
    "Content-Length: 2000000\r\n",                 "Content-Length: 3\r\n",
};
static const char *const chunked_bodies[] = {
    "zz\r\nhello\r\n0\r\n\r\n", "ffffffffffffffffffff\r\nab\r\n", "-1\r\nab\r\n0\r\n\r\n",
    "5\r\nab\r\n",             "3;\r\nabc\r\n0\r\n\r\n",        "\r\n\r\n",
    "0\r\n\r\n",               "4\r\nabcd\r\n0\r\nX: y\r\n\r\n", "8000000000000000\r\nx\r\n",
};

enum odd_kind {
    K_LONG_URI,      /* request line of 8,000..8,300 bytes */
    K_LONG_HEADER,   /* one header line of 7,990..8,310 bytes */
    K_MANY_HEADERS,  /* 90..110 headers, some long: around the count and total limits */
    K_ODD_LINE,      /* odd method, path and version */
    K_BARE_LF,       /* LF-only line ends, mixed with CRLF */
    K_NUL,           /* NUL and other control bytes inside the head */
    K_BAD_LENGTH,    /* huge, negative, duplicate or malformed Content-Length */
    K_BAD_CHUNKED,   /* Transfer-Encoding: chunked with bad sizes */
    K_PIPELINED,     /* a good request followed by garbage */
    K_RANDOM,        /* random bytes */
    K_GOOD,          /* a valid request, to keep the good path mixed in */
    K_NKINDS
};

/* Builds one odd request into o. */
static void make_odd(struct out *o, enum odd_kind k)
{
    o->len = 0;
    switch (k) {
    case K_LONG_URI: {
        size_t total = rnd_in(8000, 8300);
        puts_(o, "GET /");
        size_t fill = total > 20 ? total - 20 : 1;
        if (rnd() % 2)
            put_fill(o, 'a', fill);
        else
            for (size_t i = 0; i < fill / 3; i++)
                puts_(o, rnd() % 4 ? "%41" : "%G1");
        puts_(o, " HTTP/1.1\r\nHost: t\r\n\r\n");
        break;
    }
    case K_LONG_HEADER: {
        puts_(o, "GET /healthz HTTP/1.1\r\nHost: t\r\n");
        size_t total = rnd_in(7990, 8310);
        if (rnd() % 3 == 0) { /* a long name */
            put_fill(o, 'N', total - 4);
            puts_(o, ": v\r\n");
        } else {
            puts_(o, "X-Long: ");
            put_fill(o, 'v', total - 8);
            puts_(o, "\r\n");
        }
        puts_(o, "\r\n");
        break;
    }
    case K_MANY_HEADERS: {
        puts_(o, "GET /healthz HTTP/1.1\r\nHost: t\r\n");
        size_t n = rnd_in(90, 110);
        for (size_t i = 0; i < n; i++) {
            char h[32];
            snprintf(h, sizeof(h), "X-H%zu: ", i);
            puts_(o, h);
            put_fill(o, 'h', rnd() % 8 == 0 ? rnd_in(300, 400) : 1);
            puts_(o, "\r\n");
        }
        puts_(o, "\r\n");
        break;
    }
    case K_ODD_LINE:
        puts_(o, methods[rnd() % FBR_ARRAY_LEN(methods)]);
        puts_(o, rnd() % 8 ? " " : "  ");
        puts_(o, paths[rnd() % FBR_ARRAY_LEN(paths)]);
        puts_(o, " ");
        puts_(o, versions[rnd() % FBR_ARRAY_LEN(versions)]);
        puts_(o, "\r\nHost: t\r\n\r\n");
        break;
    case K_BARE_LF:
        puts_(o, rnd() % 2 ? "GET /healthz HTTP/1.1\n" : "GET /healthz HTTP/1.1\r\n");
        puts_(o, rnd() % 2 ? "Host: t\n" : "Host: t\r\n");
        puts_(o, rnd() % 2 ? "X-A: b\n\n" : "X-A: b\n\r\n");
        break;
    case K_NUL: {
        struct out tmp = {0};
        puts_(&tmp, "GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: abc\r\n\r\n");
        size_t at = rnd() % (tmp.len - 1);
        put(o, tmp.p, at);
        static const char ctl[] = {'\0', '\0', '\x01', '\x7f', '\x1b', '\r', '\x80'};
        put(o, &ctl[rnd() % sizeof(ctl)], 1);
        put(o, tmp.p + at, tmp.len - at);
        free(tmp.p);
        break;
    }
    case K_BAD_LENGTH:
        puts_(o, rnd() % 2 ? "POST /healthz HTTP/1.1\r\nHost: t\r\n"
                           : "POST /v1/events HTTP/1.1\r\nHost: t\r\n");
        puts_(o, lengths[rnd() % FBR_ARRAY_LEN(lengths)]);
        puts_(o, "Content-Type: application/json\r\n\r\n");
        put_random(o, rnd_in(0, 16), 0);
        break;
    case K_BAD_CHUNKED:
        puts_(o, "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n");
        if (rnd() % 4 == 0)
            puts_(o, "Content-Length: 4\r\n");
        puts_(o, "\r\n");
        puts_(o, chunked_bodies[rnd() % FBR_ARRAY_LEN(chunked_bodies)]);
        break;
    case K_PIPELINED:
        puts_(o, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        put_random(o, rnd_in(1, 600), rnd() % 2);
        if (rnd() % 2)
            puts_(o, "\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n\r\n");
        break;
    case K_RANDOM:
        put_random(o, rnd_in(1, 9000), rnd() % 2);
        break;
    case K_GOOD:
    case K_NKINDS:
        puts_(o, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        break;
    }
}

enum delivery {
    D_WHOLE_THEN_HALF_CLOSE, /* one write, shutdown(SHUT_WR), read to the close */
    D_SPLIT_THEN_HALF_CLOSE, /* random 1..64-byte writes, then as above */
    D_CUT_CLOSE,             /* a random prefix only, then close (mid-header or mid-body) */
    D_CUT_RESET,             /* a random prefix only, then a TCP reset */
    D_WHOLE_RESET,           /* all of it, then a reset without reading */
    D_NDELIVERY
};

struct stream_stats {
    unsigned sent, replies, closes_without_reply;
    unsigned status[6]; /* by hundreds */
};

static void send_odd(int port, const struct out *o, enum delivery how, struct stream_stats *st)
{
    int fd = connect_port(port, 0);
    ck_assert_msg(fd >= 0, "connect failed: %s", strerror(errno));
    size_t len = o->len;
    if (how == D_CUT_CLOSE || how == D_CUT_RESET)
        len = o->len > 1 ? rnd_in(1, o->len - 1) : o->len;
    if (how == D_SPLIT_THEN_HALF_CLOSE) {
        for (size_t off = 0; off < len;) {
            size_t n = rnd_in(1, 64);
            if (n > len - off)
                n = len - off;
            if (dutil_send_all(fd, o->p + off, n) != 0)
                break;
            off += n;
            if (rnd() % 16 == 0)
                dutil_msleep(1);
        }
    } else {
        dutil_send_all(fd, o->p, len);
    }
    st->sent++;
    if (how == D_CUT_CLOSE) {
        close(fd);
        return;
    }
    if (how == D_CUT_RESET || how == D_WHOLE_RESET) {
        close_reset(fd);
        return;
    }
    shutdown(fd, SHUT_WR);
    static char buf[64 * 1024];
    size_t n = read_until_close(fd, buf, sizeof(buf), 3000 * dutil_slow());
    close(fd);
    if (n == 0) {
        st->closes_without_reply++;
        return;
    }
    /* whatever comes back is HTTP, never echoed garbage */
    ck_assert_msg(n >= 12 && strncmp(buf, "HTTP/1.", 7) == 0, "non-HTTP reply: %.80s", buf);
    int status = atoi(buf + 9);
    ck_assert_msg(status >= 100 && status <= 599, "bad status in %.80s", buf);
    st->replies++;
    st->status[status / 100]++;
}

START_TEST(seeded_odd_request_stream)
{
    const char *seed_env = getenv("FBR_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : 0x5eed2026u;
    rng_state = seed ? seed : 1;
    fprintf(stderr, "seeded_odd_request_stream: FBR_SEED=%llu\n", (unsigned long long)seed);

    struct dutil_daemon d;
    const char *const extra[] = {"--read-timeout", dutil_under_valgrind() ? "3000" : "1000",
                                 "--max-body", "65536", NULL};
    dutil_daemon_start(&d, "fbr-rb", extra);
    char buf[8192];
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    dutil_msleep(100 * dutil_slow());
    int base_fds = dutil_count_fds(d.pid);

    int batches = dutil_under_valgrind() ? 4 : 20, per_batch = 100;
    struct stream_stats st = {0};
    unsigned by_kind[K_NKINDS] = {0};
    struct out o = {0};
    for (int b = 0; b < batches; b++) {
        for (int i = 0; i < per_batch; i++) {
            enum odd_kind k = (enum odd_kind)(rnd() % K_NKINDS);
            enum delivery how = (enum delivery)(rnd() % D_NDELIVERY);
            make_odd(&o, k);
            by_kind[k]++;
            send_odd(d.port, &o, how, &st);
        }
        char when[64];
        snprintf(when, sizeof(when), "after batch %d of odd requests", b + 1);
        daemon_assert_alive(&d, when);
        ck_assert_msg(dutil_get(d.port, "/healthz", buf, sizeof(buf)) == 200, "/healthz %s", when);
        assert_log_has_no_escape(&d);
    }
    free(o.p);
    fprintf(stderr,
            "FIGURES: odd_requests=%u replies=%u (1xx %u, 2xx %u, 4xx %u, 5xx %u) "
            "closed_without_reply=%u\n",
            st.sent, st.replies, st.status[1], st.status[2], st.status[4], st.status[5],
            st.closes_without_reply);
    for (int k = 0; k < K_NKINDS; k++)
        ck_assert_uint_gt(by_kind[k], 0);
    ck_assert_uint_gt(st.status[4], 0); /* the limits did answer some */
    ck_assert_uint_gt(st.status[2], 0);
    assert_back_to_baseline(&d, base_fds, "after the odd-request stream");
    assert_log_has_no_escape(&d);
    dutil_daemon_stop(&d);
}
END_TEST

/* ---- disconnects mid-request ---- */

enum cut {
    CUT_NOTHING_SENT,
    CUT_MID_REQUEST_LINE,
    CUT_MID_HEADERS,
    CUT_AFTER_HEADERS_BEFORE_BODY,
    CUT_MID_BODY,
    CUT_MID_CHUNKED_BODY,
    CUT_MID_OVERSIZED_BODY, /* 413 path: body being discarded */
    CUT_BEFORE_REPLY_READ,  /* a whole request, gone before the reply is read */
    CUT_DURING_REJECT,      /* a 431 being flushed */
    CUT_NCUTS
};

static const char *cut_name(enum cut c)
{
    static const char *const names[] = {
        "nothing sent", "mid request line", "mid headers", "after headers", "mid body",
        "mid chunked body", "mid oversized body", "before the reply is read", "during a 431",
    };
    return names[c];
}

/* Opens a connection and leaves it in the state of cut; returns the descriptor. */
static int open_cut(int port, enum cut c)
{
    int fd = connect_port(port, 0);
    ck_assert_int_ge(fd, 0);
    static char big[70 * 1024];
    const char *s = "";
    switch (c) {
    case CUT_NOTHING_SENT:
        break;
    case CUT_MID_REQUEST_LINE:
        s = "POST /v1/ev";
        break;
    case CUT_MID_HEADERS:
        s = "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Ty";
        break;
    case CUT_AFTER_HEADERS_BEFORE_BODY:
        s = "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n";
        break;
    case CUT_MID_BODY:
        s = "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"a\":";
        break;
    case CUT_MID_CHUNKED_BODY:
        s = "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc";
        break;
    case CUT_MID_OVERSIZED_BODY: {
        int n = snprintf(big, sizeof(big),
                         "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n");
        memset(big + n, 'x', sizeof(big) - 1 - (size_t)n);
        big[sizeof(big) - 1] = '\0';
        s = big;
        break;
    }
    case CUT_BEFORE_REPLY_READ:
        s = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
        break;
    case CUT_DURING_REJECT: {
        int n = snprintf(big, sizeof(big), "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ");
        memset(big + n, 'b', 20000);
        strcpy(big + n + 20000, "\r\n\r\n");
        s = big;
        break;
    }
    case CUT_NCUTS:
        break;
    }
    dutil_send_all(fd, s, strlen(s));
    return fd;
}

START_TEST(disconnects_mid_request_return_to_baseline)
{
    struct dutil_daemon d;
    /* long timeouts: only the disconnects may close these connections */
    const char *const extra[] = {"--read-timeout", "60000", "--idle-timeout", "60000",
                                 "--max-body", "65536", NULL};
    dutil_daemon_start(&d, "fbr-rb", extra);
    char buf[4096];
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    dutil_msleep(100 * dutil_slow());
    int base_fds = dutil_count_fds(d.pid);
    long long aborted0 = dutil_metric(d.port, "firebridge_http_rejected_total{reason=\"aborted\"}");

    enum { PER_CUT = 12 };
    int fds[CUT_NCUTS * PER_CUT];
    for (int reset = 0; reset < 2; reset++) {
        int n = 0;
        for (int c = 0; c < CUT_NCUTS; c++)
            for (int i = 0; i < PER_CUT; i++)
                fds[n++] = open_cut(d.port, (enum cut)c);
        dutil_msleep(200 * dutil_slow());
        /* all of them are open at once: the gauge counts them (plus the asking connection) */
        long long open = dutil_metric(d.port, "firebridge_http_open_connections");
        ck_assert_msg(open >= 1 + (CUT_NCUTS - 1) * PER_CUT && open <= 1 + n,
                      "gauge %lld with %d connections open", open, n);
        for (int i = 0; i < n; i++) {
            if (reset)
                close_reset(fds[i]);
            else
                close(fds[i]);
        }
        assert_back_to_baseline(&d, base_fds, reset ? "after resets" : "after closes");
        daemon_assert_alive(&d, "after the disconnects");
    }
    /* one of each, checked alone, so a leak names its way of disconnecting */
    for (int c = 0; c < CUT_NCUTS; c++) {
        for (int reset = 0; reset < 2; reset++) {
            int fd = open_cut(d.port, (enum cut)c);
            dutil_msleep(20);
            if (reset)
                close_reset(fd);
            else
                close(fd);
            char when[80];
            snprintf(when, sizeof(when), "%s (%s)", cut_name((enum cut)c),
                     reset ? "reset" : "close");
            assert_back_to_baseline(&d, base_fds, when);
        }
    }
    /* the per-request on_error hook fired for the requests cut short */
    long long aborted = dutil_metric(d.port, "firebridge_http_rejected_total{reason=\"aborted\"}");
    if (aborted0 < 0)
        aborted0 = 0;
    fprintf(stderr, "FIGURES: aborted_requests_counted=%lld\n", aborted - aborted0);
    ck_assert_int_gt(aborted, aborted0);
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    assert_log_has_no_escape(&d);
    dutil_daemon_stop(&d);
}
END_TEST

/* ---- SIGPIPE ---- */

START_TEST(reset_while_writing_large_replies)
{
    struct dutil_daemon d;
    dutil_daemon_start(&d, "fbr-rb", NULL);
    char buf[4096];
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    /* the daemon ignores SIGPIPE (bit 13 - 1 of SigIgn in /proc/PID/status) */
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)d.pid);
    size_t len;
    char *status = dutil_slurp(path, &len);
    const char *ign = strstr(status, "SigIgn:");
    ck_assert_ptr_nonnull(ign);
    unsigned long long mask = strtoull(ign + 7, NULL, 16);
    ck_assert_msg(mask & (1ull << (SIGPIPE - 1)), "SIGPIPE not ignored: SigIgn %llx", mask);
    free(status);
    dutil_msleep(100 * dutil_slow());
    int base_fds = dutil_count_fds(d.pid);

    /* 200 pipelined GET /metrics on a small receive window, never read, then a reset: the
     * daemon is still writing replies when the peer is gone */
    static char pipeline[200 * 40];
    size_t plen = 0;
    for (int i = 0; i < 200; i++)
        plen += (size_t)snprintf(pipeline + plen, sizeof(pipeline) - plen,
                                 "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    int rounds = dutil_under_valgrind() ? 5 : 30;
    for (int r = 0; r < rounds; r++) {
        int fd = connect_port(d.port, 2048);
        ck_assert_int_ge(fd, 0);
        dutil_send_all(fd, pipeline, plen);
        dutil_msleep(r % 3 == 0 ? 0 : 20);
        if (r % 2)
            close_reset(fd);
        else
            close(fd); /* FIN with unread data: the kernel answers further writes with RST */
    }
    /* GET /metrics then close at once, many times */
    for (int r = 0; r < rounds * 10; r++) {
        int fd = connect_port(d.port, 0);
        ck_assert_int_ge(fd, 0);
        dutil_send_all(fd, pipeline, 34);
        close_reset(fd);
    }
    dutil_msleep(200 * dutil_slow());
    daemon_assert_alive(&d, "after resets during large replies");
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    assert_back_to_baseline(&d, base_fds, "after resets during large replies");
    dutil_daemon_stop(&d);
}
END_TEST

/* ---- "Connection: close" means closed ---- */

START_TEST(connection_close_replies_close)
{
    struct dutil_daemon d;
    const char *const extra[] = {"--max-body", "1024", "--idle-timeout", "60000", NULL};
    dutil_daemon_start(&d, "fbr-rb", extra);
    static char req[8192];
    int n = snprintf(req, sizeof(req),
                     "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
    memset(req + n, 'x', 5000);
    req[n + 5000] = '\0';
    int fd = connect_port(d.port, 0);
    ck_assert_int_eq(dutil_send_all(fd, req, strlen(req)), 0);
    static char buf[8192];
    size_t len = read_until_close(fd, buf, sizeof(buf), 3000 * dutil_slow());
    ck_assert_msg(len > 0 && strncmp(buf, "HTTP/1.1 413", 12) == 0, "reply: %s", buf);
    ck_assert_msg(strcasestr(buf, "Connection: close"), "no Connection: close: %s", buf);
    ck_assert_msg(!strcasestr(strcasestr(buf, "Connection: close") + 1, "Connection: close"),
                  "Connection: close twice: %s", buf);
    /* read_until_close returned before its deadline only because the server closed */
    struct pollfd p = {fd, POLLIN, 0};
    ck_assert_int_eq(poll(&p, 1, 0), 1);
    ck_assert_int_eq(recv(fd, buf, sizeof(buf), MSG_DONTWAIT), 0);
    close(fd);
    dutil_daemon_stop(&d);
}
END_TEST

/* ---- the status line's version ---- */

START_TEST(status_line_version)
{
    static const struct {
        const char *version;
        const char *status_line; /* expected prefix; NULL: no reply at all */
    } cases[] = {
        {"HTTP/1.1", "HTTP/1.1 200 "},   {"HTTP/1.0", "HTTP/1.0 200 "},
        {"HTTP/1.9", "HTTP/1.1 200 "},   {"HTTP/2.0", "HTTP/1.1 505 "},
        {"HTTP/3.1", "HTTP/1.1 505 "},   {"HTTP/11.11", "HTTP/1.1 505 "},
        {"HTTP/1000.1000", "HTTP/1.1 505 "}, {"HTTP/0.9", NULL},
    };
    struct dutil_daemon d;
    dutil_daemon_start(&d, "fbr-rb", NULL);
    for (size_t i = 0; i < FBR_ARRAY_LEN(cases); i++) {
        char req[160];
        snprintf(req, sizeof(req), "GET /healthz %s\r\nHost: t\r\n\r\n", cases[i].version);
        int fd = connect_port(d.port, 0);
        ck_assert_int_eq(dutil_send_all(fd, req, strlen(req)), 0);
        shutdown(fd, SHUT_WR);
        char buf[2048];
        size_t n = read_until_close(fd, buf, sizeof(buf), 3000 * dutil_slow());
        close(fd);
        if (!cases[i].status_line) {
            ck_assert_msg(n == 0, "%s: reply %s", cases[i].version, buf);
            continue;
        }
        ck_assert_msg(strncmp(buf, cases[i].status_line, strlen(cases[i].status_line)) == 0,
                      "%s: reply %.60s", cases[i].version, buf);
        /* a 505 names the version only when it read it whole (libevhtp keeps 8 bits of each) */
        ck_assert_msg(!strstr(buf, "232"), "%s: wrapped version in %s", cases[i].version, buf);
        /* "100 Continue" says HTTP/1.1 as the final reply does; none for HTTP/1.0, which
         * ignores the expectation (RFC 9110 10.1.1), nor before a 505, which is answered from
         * the head (libevhtp's own 100 echoed the version: "HTTP/2.1 100 Continue") */
        snprintf(req, sizeof(req), "GET /healthz %s\r\nHost: t\r\nExpect: 100-continue\r\n"
                 "Content-Length: 2\r\n\r\nab", cases[i].version);
        fd = connect_port(d.port, 0);
        ck_assert_int_eq(dutil_send_all(fd, req, strlen(req)), 0);
        shutdown(fd, SHUT_WR);
        n = read_until_close(fd, buf, sizeof(buf), 3000 * dutil_slow());
        close(fd);
        char cont[32] = "";
        if (strstr(cases[i].status_line, "HTTP/1.1 200"))
            snprintf(cont, sizeof(cont), "%.9s100 Continue\r\n\r\n", cases[i].status_line);
        ck_assert_msg(cont[0] || !strstr(buf, "100 Continue"), "%s + Expect: %.60s",
                      cases[i].version, buf);
        ck_assert_msg(n > 0 && strncmp(buf, cont, strlen(cont)) == 0, "%s + Expect: %.60s",
                      cases[i].version, buf);
        const char *final = buf + strlen(cont);
        ck_assert_msg(strncmp(final, cases[i].status_line, strlen(cases[i].status_line)) == 0,
                      "%s + Expect: final reply %.60s", cases[i].version, final);
    }
    dutil_daemon_stop(&d);
}
END_TEST

/* ---- library lines on stderr ---- */

/*
 * libevhtp 1.2.18 prints a coloured log_error line for every pipelined request; with JSON logs
 * every stderr line must still be one JSON object, and no line may hold an ESC byte.
 */
START_TEST(library_stderr_lines_are_plain_log_lines)
{
    struct dutil_daemon d;
    const char *const extra[] = {"--log-level", "debug", "--log-format", "json", NULL};
    dutil_daemon_start(&d, "fbr-rb", extra);
    const char *two = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n"
                      "Connection: close\r\n\r\n";
    for (int i = 0; i < 20; i++) {
        int fd = connect_port(d.port, 0);
        ck_assert_int_eq(dutil_send_all(fd, two, strlen(two)), 0);
        char buf[4096];
        size_t n = read_until_close(fd, buf, sizeof(buf), 3000 * dutil_slow());
        close(fd);
        ck_assert_msg(n > 0 && strstr(buf, "\"ok\"") && strstr(buf, "\"ready\""),
                      "pipelined replies: %s", buf);
    }
    assert_log_has_no_escape(&d);
    size_t len;
    char *log = dutil_slurp(d.log, &len);
    unsigned lines = 0, library = 0;
    for (char *line = log, *end; *line; line = end + 1) {
        end = strchr(line, '\n');
        ck_assert_msg(end != NULL, "unterminated log line: %s", line);
        *end = '\0';
        ck_assert_msg(line[0] == '{' && end > line && end[-1] == '}', "not a JSON line: %s", line);
        lines++;
        library += strstr(line, "\"library: ") != NULL;
    }
    fprintf(stderr, "FIGURES: json_log_lines=%u of_them_library_lines=%u\n", lines, library);
    free(log);
    dutil_daemon_stop(&d);
}
END_TEST

/* ---- pipelining ---- */

/*
 * Requests that arrive together in one write are all answered, in order (libevhtp 1.2.18 alone
 * answers only the first and leaves the rest until more bytes arrive).
 */
START_TEST(pipelined_requests_in_one_write)
{
    static const struct {
        const char *req;
        const char *status_line;
    } seq[] = {
        {"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", "HTTP/1.1 200 "},
        {"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", "HTTP/1.1 405 "},
        {"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", "HTTP/1.1 404 "},
        {"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n", "HTTP/1.1 200 "},
        {"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n", "HTTP/1.1 200 "},
        {"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 "},
    };
    struct dutil_daemon d;
    dutil_daemon_start(&d, "fbr-rb", NULL);
    char all[2048] = "";
    for (size_t i = 0; i < FBR_ARRAY_LEN(seq); i++)
        strcat(all, seq[i].req);
    for (int round = 0; round < 20; round++) {
        int fd = connect_port(d.port, 0);
        ck_assert_int_eq(dutil_send_all(fd, all, strlen(all)), 0);
        static char buf[16384];
        size_t n = read_until_close(fd, buf, sizeof(buf), 3000 * dutil_slow());
        close(fd);
        ck_assert_int_gt(n, 0);
        const char *p = buf;
        for (size_t i = 0; i < FBR_ARRAY_LEN(seq); i++) {
            p = strstr(p, "HTTP/1.");
            ck_assert_msg(p != NULL, "round %d: reply %zu of %zu missing: %s", round, i + 1,
                          FBR_ARRAY_LEN(seq), buf);
            ck_assert_msg(strncmp(p, seq[i].status_line, strlen(seq[i].status_line)) == 0,
                          "round %d: reply %zu: %.40s", round, i + 1, p);
            p++;
        }
    }
    assert_log_has_no_escape(&d);
    dutil_daemon_stop(&d);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("server_robustness");
    TCase *tc = tcase_create("daemon");
    tcase_set_timeout(tc, dutil_under_valgrind() ? 600 : 60);
    tcase_add_test(tc, seeded_odd_request_stream);
    tcase_add_test(tc, disconnects_mid_request_return_to_baseline);
    tcase_add_test(tc, reset_while_writing_large_replies);
    tcase_add_test(tc, connection_close_replies_close);
    tcase_add_test(tc, status_line_version);
    tcase_add_test(tc, pipelined_requests_in_one_write);
    tcase_add_test(tc, library_stderr_lines_are_plain_log_lines);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
