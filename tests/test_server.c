/*
 * test_server.c - integration tests of the inbound side, the first step of the data path: they
 * start the real firebridge binary (path in FBR_DAEMON) on an ephemeral port and talk real HTTP
 * and HTTPS to it over loopback: built-in endpoints, error statuses, the 413 pattern without
 * descriptor leaks, oversized request lines and headers, the read deadline, 1,000 concurrent
 * keep-alive connections, SIGTERM drain and SIGHUP reload.  Two cases run the server in-process
 * (a forked child) with a JSON route: 415/400, and plain-TCP reads that ask no ioctl(FIONREAD).
 *
 * With FBR_VALGRIND=1 (meson test --setup=valgrind) the daemon itself runs under valgrind with
 * --error-exitcode, every case ends with SIGTERM and asserts exit status 0, and the two load
 * cases run smaller loops (20 bodies of 2 MiB, 200 connections) to stay within the time limit.
 */
#include <arpa/inet.h>
#include <check.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <evhtp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "firebridge/common.h"
#include "firebridge/server.h"
#include "daemon_util.h"
#include "testsupport.h"

/* Returns 1 when the peer closed fd (EOF or reset) within ms, after reading any bytes. */
static int closed_within(int fd, int ms, char *seen, size_t cap)
{
    size_t len = 0;
    for (int waited = 0; waited <= ms; waited += 50) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) == 1) {
            char tmp[1024];
            ssize_t n = recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN))
                return 1;
            if (n > 0 && seen && len + (size_t)n < cap) {
                memcpy(seen + len, tmp, (size_t)n);
                len += (size_t)n;
                seen[len] = '\0';
            }
        }
    }
    return 0;
}

/* ---- cases ---- */

START_TEST(builtin_endpoints_and_errors)
{
    struct dutil_daemon d;
    dutil_daemon_start(&d, "fbr-it", NULL);
    static char buf[65536]; /* /metrics grows with every module's series */
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    ck_assert_ptr_nonnull(strstr(buf, "{\"status\":\"ok\"}"));
    ck_assert_ptr_nonnull(strcasestr(buf, "X-Request-Id: r"));
    ck_assert_int_eq(dutil_get(d.port, "/readyz", buf, sizeof(buf)), 200);
    ck_assert_int_eq(dutil_get(d.port, "/no/such/thing", buf, sizeof(buf)), 404);
    ck_assert_ptr_nonnull(strstr(buf, "{\"result\":\"failure\",\"message\":"));
    ck_assert_int_eq(dutil_http(d.port, "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
                                  "Connection: close\r\n\r\n", buf, sizeof(buf)), 405);
    ck_assert_ptr_nonnull(strstr(buf, "Allow: GET, HEAD"));
    ck_assert_ptr_nonnull(strstr(buf, "\"result\":\"failure\""));
    ck_assert_int_eq(dutil_http(d.port, "DELETE /metrics HTTP/1.1\r\nHost: t\r\n\r\n", buf,
                          sizeof(buf)), 405);
    /* HEAD: the headers of a GET, no body, and the connection stays usable */
    int fd = dutil_connect(d.port);
    const char *head = "HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(dutil_send_all(fd, head, strlen(head)), 0);
    dutil_msleep(100);
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
    ck_assert_int_gt(n, 0);
    buf[n] = '\0';
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0 && strstr(buf, "Content-Length: 16"),
                  "HEAD: %s", buf);
    ck_assert_msg(strstr(buf, "\r\n\r\n")[4] == '\0', "HEAD reply has a body: %s", buf);
    const char *again = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(dutil_send_all(fd, again, strlen(again)), 0);
    ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
    close(fd);

    /* HEAD /metrics as HEAD /healthz: the headers, no body */
    fd = dutil_connect(d.port);
    head = "HEAD /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    ck_assert_int_eq(dutil_send_all(fd, head, strlen(head)), 0);
    size_t got = 0;
    while (got < sizeof(buf) - 1 && (n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(fd);
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0 && strstr(buf, "text/plain; version=0.0.4") &&
                      strstr(buf, "Content-Length: "),
                  "HEAD /metrics: %s", buf);
    ck_assert_msg(strstr(buf, "\r\n\r\n")[4] == '\0', "HEAD /metrics reply has a body: %s", buf);

    ck_assert_int_eq(dutil_get(d.port, "/metrics", buf, sizeof(buf)), 200);
    ck_assert_ptr_nonnull(strstr(buf, "text/plain; version=0.0.4"));
    ck_assert_ptr_nonnull(
        strstr(buf, "firebridge_http_requests_total{endpoint=\"healthz\",status=\"200\"} 3"));
    ck_assert_ptr_nonnull(
        strstr(buf, "firebridge_http_requests_total{endpoint=\"none\",status=\"404\"} 1"));
    ck_assert_ptr_nonnull(strstr(buf, "firebridge_http_open_connections "));
    ck_assert_ptr_nonnull(strstr(buf, "process_start_time_seconds "));
    ck_assert_ptr_nonnull(strstr(buf, "firebridge_http_received_bytes_total "));
    ck_assert_ptr_nonnull(strstr(buf, "firebridge_http_sent_bytes_total "));

    /* /readyz turns 503 when the data directory goes away */
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s/data'", d.dir);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_eq(dutil_get(d.port, "/readyz", buf, sizeof(buf)), 503);
    ck_assert_ptr_nonnull(strstr(buf, "not writable"));
    dutil_daemon_stop(&d);
}
END_TEST

START_TEST(body_413_without_leaks)
{
    struct dutil_daemon d;
    dutil_daemon_start(&d, "fbr-it", NULL);
    char buf[4096];
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    dutil_msleep(100 * dutil_slow());
    int before = dutil_count_fds(d.pid);
    long rss = dutil_rss_kb(d.pid);
    size_t body = 2u << 20;
    char *payload = malloc(body);
    memset(payload, '{', body);
    int rounds = dutil_under_valgrind() ? 20 : 100;
    for (int i = 0; i < rounds; i++) {
        int fd = dutil_connect(d.port);
        ck_assert_int_ge(fd, 0);
        char head[256];
        snprintf(head, sizeof(head),
                 "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n", body);
        ck_assert_int_eq(dutil_send_all(fd, head, strlen(head)), 0);
        dutil_send_all(fd, payload, body); /* the server may close once it has answered */
        ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 413);
        ck_assert_ptr_nonnull(strstr(buf, "\"result\":\"failure\""));
        /* RFC 9110's phrase, as the screener's own 413 (libevhtp says "Entity Too Large") */
        ck_assert_msg(strncmp(buf, "HTTP/1.1 413 Content Too Large\r\n", 32) == 0, "%s", buf);
        ck_assert_ptr_nonnull(strstr(buf, "\r\nConnection: close\r\n"));
        ck_assert_ptr_nonnull(strstr(buf, "\r\nX-Request-Id: r"));
        close(fd);
    }
    free(payload);
    int after = -1;
    for (int i = 0; i < 50 * dutil_slow(); i++) { /* closes may still be in flight */
        after = dutil_count_fds(d.pid);
        if (after <= before)
            break;
        dutil_msleep(50);
    }
    fprintf(stderr, "FIGURES: idle_rss_kb=%ld fds_before_413=%d fds_after_%d_x_413=%d\n", rss,
            before, rounds, after);
    ck_assert_int_eq(after, before);
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    dutil_daemon_stop(&d);
}
END_TEST

/*
 * A chunked body of 1 KiB chunks past --max-body is refused 413 as soon as the announced chunks
 * pass the limit, not read to its end: the client, pausing a little after each chunk, has sent
 * at most max_body + 256 KiB when the 413 arrives, and the connection is then closed.  (Before,
 * every chunk was read and discarded and nothing answered until the last one.)
 */
START_TEST(chunked_body_over_max_body_refused_early)
{
    struct dutil_daemon d;
    const char *const extra[] = {"--max-body", "65536", NULL};
    dutil_daemon_start(&d, "fbr-it", extra);
    const size_t max_body = 65536, bound = max_body + 256 * 1024;
    int fd = dutil_connect(d.port);
    ck_assert_int_ge(fd, 0);
    const char *head = "POST /integrations/generic/20131114/alert/K/devops HTTP/1.1\r\nHost: t\r\n"
                       "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    ck_assert_int_eq(dutil_send_all(fd, head, strlen(head)), 0);
    char chunk[1024 + 16];
    int clen = snprintf(chunk, sizeof(chunk), "400\r\n");
    memset(chunk + clen, ' ', 1024);
    clen += 1024;
    clen += snprintf(chunk + clen, sizeof(chunk) - (size_t)clen, "\r\n");
    size_t sent = 0;
    for (; sent < 2 * bound; sent += 1024) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, dutil_slow()) == 1 || dutil_send_all(fd, chunk, (size_t)clen) != 0)
            break;
    }
    char buf[2048];
    int st = dutil_read_response(fd, buf, sizeof(buf));
    ck_assert_msg(st == 413, "status %d after %zu body bytes sent", st, sent);
    ck_assert_msg(sent <= bound, "413 only after %zu body bytes (--max-body %zu)", sent, max_body);
    ck_assert_ptr_nonnull(strstr(buf, "HTTP/1.1 413 Content Too Large\r\n"));
    ck_assert_ptr_nonnull(strstr(buf, "\"result\":\"failure\""));
    ck_assert_msg(closed_within(fd, 3000 * dutil_slow(), NULL, 0), "connection left open");
    close(fd);
    ck_assert_int_eq(dutil_metric(d.port, "firebridge_http_rejected_total{reason=\"body_too_large\"}"),
                     1);
    dutil_daemon_stop(&d);
}
END_TEST

/*
 * After a 414 or 431 the connection is closed with a lingering close: the client that sends a
 * too-long request line followed by more bytes reads the whole 414 and then the end of the
 * stream, not a reset (closing with its bytes unread made the kernel send an RST).
 */
START_TEST(refusal_then_lingering_close)
{
    struct dutil_daemon d;
    dutil_daemon_start(&d, "fbr-it", NULL);
    for (int round = 0; round < 2; round++) {
        size_t len = 96 * 1024;
        char *req = malloc(len);
        memset(req, round ? 'h' : 'a', len);
        if (round == 0) { /* a 10 KiB request line */
            memcpy(req, "GET /", 5);
            memcpy(req + 10240, " HTTP/1.1\r\nHost: t\r\n\r\n", 23);
        } else { /* a 10 KiB header line */
            static const char h[] = "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ";
            memcpy(req, h, sizeof(h) - 1);
            memcpy(req + 10240, "\r\n\r\n", 4);
        }
        int fd = dutil_connect(d.port);
        ck_assert_int_ge(fd, 0);
        ck_assert_msg(dutil_send_all(fd, req, len) == 0, "send failed: %s", strerror(errno));
        free(req);
        char buf[2048];
        int st = dutil_read_response(fd, buf, sizeof(buf));
        ck_assert_int_eq(st, round ? 431 : 414);
        ck_assert_ptr_nonnull(strstr(buf, "\"result\":\"failure\""));
        char tmp[256];
        ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
        ck_assert_msg(n == 0, "after the %d: recv %zd (%s), not the end of the stream", st, n,
                      n < 0 ? strerror(errno) : "bytes");
        close(fd);
    }
    char buf[256];
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    dutil_daemon_stop(&d);
}
END_TEST

START_TEST(oversized_and_odd_requests)
{
    struct dutil_daemon d;
    dutil_daemon_start(&d, "fbr-it", NULL);
    static char req[64 * 1024];
    char buf[4096];
    int st;

    /* 10 KiB URI */
    int n = snprintf(req, sizeof(req), "GET /");
    memset(req + n, 'a', 10240);
    n += 10240;
    n += snprintf(req + n, sizeof(req) - (size_t)n, " HTTP/1.1\r\nHost: t\r\n\r\n");
    st = dutil_http(d.port, req, buf, sizeof(buf));
    ck_assert_msg(st == 414 || st == -1, "10 KiB URI: status %d", st);

    /* 20 KiB header */
    n = snprintf(req, sizeof(req), "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + n, 'b', 20480);
    n += 20480;
    snprintf(req + n, sizeof(req) - (size_t)n, "\r\n\r\n");
    st = dutil_http(d.port, req, buf, sizeof(buf));
    ck_assert_msg(st == 431 || st == -1, "20 KiB header: status %d", st);

    /* many small headers */
    n = snprintf(req, sizeof(req), "GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 500; i++)
        n += snprintf(req + n, sizeof(req) - (size_t)n, "X-H%d: v\r\n", i);
    snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
    st = dutil_http(d.port, req, buf, sizeof(buf));
    ck_assert_msg(st == 431 || st == -1, "500 headers: status %d", st);

    /* odd request lines: must get an error or a close, never a crash */
    static const char *const odd[] = {
        "\x00\x01\x02\xff\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "GET /%zz%00 HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST /healthz HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET /healthz?a=1&a=2&&&==&%%%% HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        " / HTTP/1.1\r\n\r\n",
        "GET http://[::1 HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(odd); i++) {
        int fd = dutil_connect(d.port);
        ck_assert_int_ge(fd, 0);
        dutil_send_all(fd, odd[i], i == 0 ? 8 : strlen(odd[i]));
        shutdown(fd, SHUT_WR);
        dutil_read_response(fd, buf, sizeof(buf));
        close(fd);
    }
    /* a blank before the method is a malformed request line (400), not an unknown method
     * (libevhtp's 501): found by fuzz_http_screen */
    static const char *const leading[] = {" GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
                                          "  HOST /healthz HTTP/1.1\r\nHost: t\r\n\r\n"};
    for (size_t i = 0; i < FBR_ARRAY_LEN(leading); i++) {
        st = dutil_http(d.port, leading[i], buf, sizeof(buf));
        ck_assert_msg(st == 400, "leading blank %zu: %d %s", i, st, buf);
    }
    /* a request line split over many small writes, and a pipelined request split mid-header:
     * both are held back until their header section is whole, then served */
    int fd = dutil_connect(d.port);
    const char *split = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz HTTP/1.1\r\nHo";
    for (size_t off = 0, len = strlen(split); off < len; off += 7) {
        dutil_send_all(fd, split + off, len - off < 7 ? len - off : 7);
        dutil_msleep(5);
    }
    ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
    dutil_msleep(100);
    dutil_send_all(fd, "st: t\r\n\r\n", 9);
    ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
    ck_assert_ptr_nonnull(strstr(buf, "ready"));
    close(fd);

    int status;
    ck_assert_int_eq(waitpid(d.pid, &status, WNOHANG), 0); /* still running */
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    dutil_daemon_stop(&d);
}
END_TEST

START_TEST(trickling_client_is_closed)
{
    struct dutil_daemon d;
    const char *const extra[] = {"--read-timeout", dutil_under_valgrind() ? "3000" : "1500", NULL};
    dutil_daemon_start(&d, "fbr-it", extra);
    int fd = dutil_connect(d.port);
    ck_assert_int_ge(fd, 0);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: trickle\r\nX-Slow: yes\r\n\r\n";
    char seen[1024] = "";
    int closed = 0;
    time_t start = time(NULL);
    for (size_t i = 0; i < strlen(req) && !closed; i++) {
        if (send(fd, req + i, 1, MSG_NOSIGNAL) != 1) {
            closed = 1;
            break;
        }
        closed = closed_within(fd, 1000, seen, sizeof(seen)); /* one byte per second */
    }
    ck_assert_msg(closed, "a trickling client was never closed");
    long took = (long)(time(NULL) - start);
    ck_assert_int_le(took, dutil_under_valgrind() ? 8 : 4);
    ck_assert_int_ge(took, 1);
    ck_assert_msg(seen[0] == '\0' || strstr(seen, " 408 "), "unexpected reply: %s", seen);
    close(fd);
    char buf[2048];
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    dutil_daemon_stop(&d);
}
END_TEST

/*
 * The read deadline of a later request on a keep-alive connection runs from that request's first
 * byte (server.c arm_deadline: a timer armed for an earlier request and still running is not
 * added again; when it fires it waits out what is left of the current request's time): request
 * 1 answered, then request 2 begun 60 % of the read timeout later and trickled.  It must still be
 * open past request 1's timer (the time the first timer fires), and be answered 408 and closed
 * once its own time is up; a request answered before then keeps the connection.
 */
START_TEST(later_request_has_its_own_deadline)
{
    struct dutil_daemon d;
    int t_ms = dutil_under_valgrind() ? 3000 : 1000;
    char tbuf[16];
    snprintf(tbuf, sizeof(tbuf), "%d", t_ms);
    const char *const extra[] = {"--read-timeout", tbuf, NULL};
    dutil_daemon_start(&d, "fbr-it", extra);
    int fd = dutil_connect(d.port);
    ck_assert_int_ge(fd, 0);
    char buf[2048];
    const char *req = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    /* a quick request, a pause of 60 % of the timeout, a second quick one: answered */
    ck_assert_int_eq(dutil_send_all(fd, req, strlen(req)), 0);
    ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
    dutil_msleep(t_ms * 6 / 10);
    ck_assert_int_eq(dutil_send_all(fd, req, strlen(req)), 0);
    ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
    /* the third begins 60 % of the timeout after the second and trickles: still open when the
     * second's time is up (80 % of the timeout into the third), 408 once the third's is */
    dutil_msleep(t_ms * 6 / 10);
    ck_assert_int_eq(send(fd, "GET", 3, MSG_NOSIGNAL), 3);
    char seen[1024] = "";
    ck_assert_msg(!closed_within(fd, t_ms * 8 / 10, seen, sizeof(seen)),
                  "closed before its own read timeout: %s", seen);
    ck_assert_msg(closed_within(fd, t_ms * 4, seen, sizeof(seen)), "never closed");
    ck_assert_msg(strstr(seen, " 408 "), "unexpected reply: %s", seen);
    close(fd);
    dutil_daemon_stop(&d);
}
END_TEST

START_TEST(many_concurrent_keepalive_connections)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 4096 && rl.rlim_max >= 4096) {
        rl.rlim_cur = 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int nconn = dutil_under_valgrind() ? 200 : 1000;
    ck_assert_msg(rl.rlim_cur > (rlim_t)nconn + 50, "RLIMIT_NOFILE too low: %ld",
                  (long)rl.rlim_cur);
    struct dutil_daemon d;
    const char *const extra[] = {"--max-connections", "2000", NULL};
    dutil_daemon_start(&d, "fbr-it", extra);
    int *fds = calloc((size_t)nconn, sizeof(int));
    for (int i = 0; i < nconn; i++) {
        fds[i] = dutil_connect(d.port);
        ck_assert_msg(fds[i] >= 0, "connect %d failed: %s", i, strerror(errno));
    }
    const char *req = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    char buf[2048];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < nconn; i++)
            ck_assert_int_eq(dutil_send_all(fds[i], req, strlen(req)), 0);
        for (int i = 0; i < nconn; i++) {
            int st = dutil_read_response(fds[i], buf, sizeof(buf));
            ck_assert_msg(st == 200, "round %d conn %d: status %d", round, i, st);
        }
    }
    ck_assert_int_eq(dutil_get(d.port, "/metrics", buf, sizeof(buf)), 200);
    char want[64];
    snprintf(want, sizeof(want), "firebridge_http_open_connections %d\n", nconn + 1);
    ck_assert_msg(strstr(buf, want), "metrics lack '%s'", want);
    for (int i = 0; i < nconn; i++)
        close(fds[i]);
    free(fds);
    dutil_daemon_stop(&d);
}
END_TEST

START_TEST(sigterm_drains_and_exits_zero)
{
    struct dutil_daemon d;
    const char *const extra[] = {"--drain-timeout", "5", NULL};
    dutil_daemon_start(&d, "fbr-it", extra);
    char buf[4096];
    /* an idle keep-alive connection */
    int idle = dutil_connect(d.port);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(dutil_send_all(idle, req, strlen(req)), 0);
    ck_assert_int_eq(dutil_read_response(idle, buf, sizeof(buf)), 200);
    /* a request in flight: headers and half of the body */
    int busy = dutil_connect(d.port);
    const char *part = "GET /readyz HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab";
    ck_assert_int_eq(dutil_send_all(busy, part, strlen(part)), 0);
    dutil_msleep(200 * dutil_slow());

    kill(d.pid, SIGTERM);
    ck_assert_msg(closed_within(idle, 2000 * dutil_slow(), NULL, 0), "idle connection not closed");
    ck_assert_int_eq(dutil_connect(d.port), -1); /* no longer accepting */
    ck_assert_int_eq(dutil_send_all(busy, "cd", 2), 0);
    ck_assert_int_eq(dutil_read_response(busy, buf, sizeof(buf)), 503); /* readyz while draining */
    ck_assert_ptr_nonnull(strstr(buf, "draining"));
    ck_assert_ptr_nonnull(strcasestr(buf, "Connection: close"));
    close(busy);
    close(idle);
    int st = dutil_wait_exit(&d.pid, 5000 * dutil_slow(), NULL);
    ck_assert_msg(st != -1, "daemon still running after the drain");
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
    char *log = dutil_slurp(d.log, NULL);
    ck_assert_ptr_nonnull(strstr(log, "drained"));
    free(log);
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d.dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(drain_timeout_bounds_the_exit)
{
    struct dutil_daemon d;
    const char *const extra[] = {"--drain-timeout", "1", NULL};
    dutil_daemon_start(&d, "fbr-it", extra);
    int busy = dutil_connect(d.port);
    const char *part = "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab";
    ck_assert_int_eq(dutil_send_all(busy, part, strlen(part)), 0);
    dutil_msleep(200 * dutil_slow());
    kill(d.pid, SIGTERM);
    int st = dutil_wait_exit(&d.pid, 4000 * dutil_slow(), NULL);
    ck_assert_msg(st != -1, "drain timeout ignored");
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
    close(busy);
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d.dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(sighup_reload)
{
    char cfgpath[] = "/tmp/fbr-it-cfg-XXXXXX";
    int fd = mkstemp(cfgpath);
    ck_assert_int_ge(fd, 0);
    close(fd);
    dutil_write_file(cfgpath, "{\"max_body\": 2048}");
    struct dutil_daemon d;
    const char *const extra[] = {"--config", cfgpath, NULL};
    dutil_daemon_start(&d, "fbr-it", extra);
    char buf[4096];
    const char *post3k = "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 3000\r\n"
                         "Connection: close\r\n\r\n";
    static char req[4096];
    snprintf(req, sizeof(req), "%s%3000d", post3k, 7);
    ck_assert_int_eq(dutil_http(d.port, req, buf, sizeof(buf)), 413);

    dutil_write_file(cfgpath, "{\"max_body\": 4096, broken");
    kill(d.pid, SIGHUP);
    dutil_msleep(300 * dutil_slow());
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    ck_assert_int_eq(dutil_http(d.port, req, buf, sizeof(buf)), 413); /* old limit kept */
    char *log = dutil_slurp(d.log, NULL);
    ck_assert_msg(strstr(log, "reload failed"), "log: %s", log);
    free(log);

    dutil_write_file(cfgpath, "{\"max_body\": 4096}");
    kill(d.pid, SIGHUP);
    dutil_msleep(300 * dutil_slow());
    ck_assert_int_eq(dutil_http(d.port, req, buf, sizeof(buf)), 405); /* body accepted, POST not */
    log = dutil_slurp(d.log, NULL);
    ck_assert_msg(strstr(log, "configuration reloaded"), "log: %s", log);
    free(log);
    ck_assert_int_eq(dutil_get(d.port, "/metrics", buf, sizeof(buf)), 200);
    ck_assert_ptr_nonnull(strstr(buf, "firebridge_config_reloads_total{result=\"failed\"} 1"));
    ck_assert_ptr_nonnull(strstr(buf, "firebridge_config_reloads_total{result=\"ok\"} 1"));
    dutil_daemon_stop(&d);
    unlink(cfgpath);
}
END_TEST

START_TEST(bad_flags_exit_2_and_check_config)
{
    const char *daemon = getenv("FBR_DAEMON");
    ck_assert_ptr_nonnull(daemon);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "'%s' --max-body nope 2>/dev/null", daemon);
    int st = system(cmd);
    ck_assert_int_eq(WEXITSTATUS(st), 2);
    snprintf(cmd, sizeof(cmd), "'%s' --check-config --max-body 4096 | grep -qx ok", daemon);
    ck_assert_int_eq(WEXITSTATUS(system(cmd)), 0);
    snprintf(cmd, sizeof(cmd), "echo '{\"metod\":1}' > /tmp/fbr-it-bad-$$.json && "
                               "'%s' --check-config -c /tmp/fbr-it-bad-$$.json | "
                               "grep -q 'metod: unknown key'; r=$?; rm -f /tmp/fbr-it-bad-$$.json;"
                               " exit $r", daemon);
    ck_assert_int_eq(WEXITSTATUS(system(cmd)), 0);
    snprintf(cmd, sizeof(cmd), "echo '{\"metod\":1}' > /tmp/fbr-it-bad2-$$.json && "
                               "'%s' --check-config -c /tmp/fbr-it-bad2-$$.json >/dev/null; r=$?;"
                               " rm -f /tmp/fbr-it-bad2-$$.json; exit $r", daemon);
    ck_assert_int_eq(WEXITSTATUS(system(cmd)), 1);
}
END_TEST

/* ---- TLS ---- */

/* A fresh self-signed certificate for localhost: dir (made, /tmp/fbr-it-tls-XXXXXX), cert and
 * key paths (64 bytes each). */
static void make_cert(char *dir, char *cert, char *key)
{
    strcpy(dir, "/tmp/fbr-it-tls-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char cmd[512];
    snprintf(cert, 64, "%s/cert.pem", dir);
    snprintf(key, 64, "%s/key.pem", dir);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
             "-keyout %s -out %s >/dev/null 2>&1", key, cert);
    ck_assert_int_eq(system(cmd), 0);
}

/* A TLS client for fd (connected to the daemon; ctx verifies its certificate as localhost):
 * a new SSL the caller frees, its handshake done when *ok is 1. */
static SSL *tls_client(SSL_CTX *ctx, int fd, int *ok)
{
    SSL *ssl = SSL_new(ctx);
    ck_assert_ptr_nonnull(ssl);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
    *ok = SSL_connect(ssl) == 1;
    return ssl;
}

/* GET path over a new TLS connection (ctx verifies the daemon's certificate); returns the
 * status, -1 when the handshake failed or no reply came. */
static int tls_get(SSL_CTX *ctx, int port, const char *path, char *buf, int cap)
{
    int fd = dutil_connect(port);
    ck_assert_int_ge(fd, 0);
    int ok;
    SSL *ssl = tls_client(ctx, fd, &ok);
    int status = -1;
    if (ok) {
        char req[256];
        int n = snprintf(req, sizeof(req),
                         "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                         path);
        ck_assert_int_eq(SSL_write(ssl, req, n), n);
        int len = 0;
        while ((n = SSL_read(ssl, buf + len, cap - 1 - len)) > 0)
            len += n;
        buf[len] = '\0';
        if (len > 12 && strncmp(buf, "HTTP/1.1 ", 9) == 0)
            status = atoi(buf + 9);
    }
    SSL_free(ssl);
    close(fd);
    return status;
}

/* The daemon serving HTTPS with a fresh certificate (dir, cert and key as make_cert() makes
 * them), more flags (NULL-terminated, at most 10; NULL: none), and a client context that
 * verifies it: a new SSL_CTX, freed by tls_daemon_stop(). */
static SSL_CTX *tls_daemon_start(struct dutil_daemon *d, char *dir, char *cert, char *key,
                                 const char *const *more)
{
    make_cert(dir, cert, key);
    const char *extra[16] = {"--tls-cert", cert, "--tls-key", key};
    for (size_t i = 0; more && more[i]; i++) {
        ck_assert_uint_lt(i, 10);
        extra[4 + i] = more[i];
    }
    dutil_daemon_start(d, "fbr-it", extra);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    ck_assert_ptr_nonnull(ctx);
    ck_assert_int_eq(SSL_CTX_load_verify_locations(ctx, cert, NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

/* Frees ctx, stops the daemon (asserting its exit status) and removes dir. */
static void tls_daemon_stop(struct dutil_daemon *d, SSL_CTX *ctx, const char *dir)
{
    SSL_CTX_free(ctx);
    dutil_daemon_stop(d);
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(tls_inbound)
{
    char dir[64], cmd[512], cert[64], key[64];
    struct dutil_daemon d;
    SSL_CTX *ctx = tls_daemon_start(&d, dir, cert, key, NULL);
    for (int round = 0; round < 2; round++) {
        char buf[2048];
        ck_assert_int_eq(tls_get(ctx, d.port, "/healthz", buf, sizeof(buf)), 200);
        ck_assert_ptr_nonnull(strstr(buf, "{\"status\":\"ok\"}"));
    }
    /* plain HTTP on the TLS port gets no HTTP answer and does not hurt the daemon */
    char buf[1024];
    int st = dutil_get(d.port, "/healthz", buf, sizeof(buf));
    ck_assert_int_ne(st, 200);

    /* an unreadable key: the daemon refuses to start */
    snprintf(cmd, sizeof(cmd), "'%s' -l 127.0.0.1:0 -d %s/data --tls-cert %s --tls-key %s/none "
                               "2>/dev/null", getenv("FBR_DAEMON"), dir, cert, dir);
    ck_assert_int_eq(WEXITSTATUS(system(cmd)), 1);
    tls_daemon_stop(&d, ctx, dir);
}
END_TEST

/*
 * On the TLS listener a socket that never completes the handshake (silent, or half a
 * ClientHello) is closed at --read-timeout, as on plain TCP, not kept until --idle-timeout
 * (there is no channel for the 408 before the handshake): with --max-connections 2 two such
 * sockets are closed well before the idle timeout and a real HTTPS request gets a slot again.
 */
START_TEST(tls_silent_sockets_free_their_slots)
{
    char dir[64], cert[64], key[64];
    struct dutil_daemon d;
    const char *const more[] = {"--read-timeout", "500", "--idle-timeout", "60000",
                                "--max-connections", "2", NULL};
    SSL_CTX *ctx = tls_daemon_start(&d, dir, cert, key, more);
    int silent = dutil_connect(d.port), half = dutil_connect(d.port);
    ck_assert_int_ge(silent, 0);
    ck_assert_int_ge(half, 0);
    static const char hello_start[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00};
    ck_assert_int_eq(dutil_send_all(half, hello_start, sizeof(hello_start)), 0);
    /* 10 x --read-timeout: the old behaviour held them for the 60 s idle timeout */
    ck_assert_msg(closed_within(silent, 5000 * dutil_slow(), NULL, 0),
                  "a silent socket on the TLS listener was kept open");
    ck_assert_msg(closed_within(half, 1000 * dutil_slow(), NULL, 0),
                  "a socket with half a ClientHello was kept open");
    close(silent);
    close(half);
    static char buf[65536];
    ck_assert_int_eq(tls_get(ctx, d.port, "/healthz", buf, sizeof(buf)), 200);
    ck_assert_int_eq(tls_get(ctx, d.port, "/metrics", buf, sizeof(buf)), 200);
    ck_assert_ptr_nonnull(strstr(buf, "firebridge_http_rejected_total{reason=\"no_request\"} 2"));
    tls_daemon_stop(&d, ctx, dir);
}
END_TEST

/* A head the screener refuses 413 at once: a declared body over the default --max-body (1 MiB)
 * with "Expect: 100-continue", the body not waited for. */
static const char big_expect_head[] =
    "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    "Expect: 100-continue\r\nContent-Length: 4194304\r\n\r\n";

/* A TLS client that sends a head the server refuses and then len bytes of body (len 0: none,
 * SIZE_MAX: until a write fails) through a 64 KiB send buffer (far less than len: the upload
 * is still under way when the server answers).  Returns the bytes of body sent; *ssl_out and
 * *fd_out get the connection. */
static size_t tls_refused_upload(SSL_CTX *ctx, int port, size_t len, SSL **ssl_out, int *fd_out)
{
    int fd = dutil_connect_with(port, 0, 5 * dutil_slow(), 10 * dutil_slow());
    ck_assert_int_ge(fd, 0);
    int sndbuf = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    int ok;
    SSL *ssl = tls_client(ctx, fd, &ok);
    ck_assert_msg(ok, "TLS handshake failed");
    int n = (int)strlen(big_expect_head);
    ck_assert_int_eq(SSL_write(ssl, big_expect_head, n), n);
    static char chunk[16 * 1024];
    memset(chunk, '{', sizeof(chunk));
    size_t sent = 0;
    while (sent < len) {
        int want = len - sent < sizeof(chunk) ? (int)(len - sent) : (int)sizeof(chunk);
        int w = SSL_write(ssl, chunk, want);
        if (w <= 0) {
            ck_assert_msg(len == SIZE_MAX, "SSL_write failed after %zu of %zu body bytes: %d, %s",
                          sent, len, SSL_get_error(ssl, w), strerror(errno));
            ERR_clear_error();
            break;
        }
        sent += (size_t)w;
    }
    *ssl_out = ssl;
    *fd_out = fd;
    return sent;
}

/* Reads what the server sends up to its close_notify into buf (cap bytes, NUL-terminated) and
 * asserts it is the screener's 413, whole, followed by the close_notify. */
static void tls_read_413(SSL *ssl, char *buf, int cap)
{
    int len = 0, n;
    while (len < cap - 1 && (n = SSL_read(ssl, buf + len, cap - 1 - len)) > 0)
        len += n;
    int err = SSL_get_error(ssl, n);
    buf[len] = '\0';
    ck_assert_msg(err == SSL_ERROR_ZERO_RETURN, "no close_notify after %d bytes (%s): %d, %s",
                  len, buf, err, strerror(errno));
    ck_assert_msg(strncmp(buf, "HTTP/1.1 413 Content Too Large\r\n", 32) == 0, "%s", buf);
    const char *body = strstr(buf, "\r\n\r\n");
    const char *cl = strcasestr(buf, "\r\nContent-Length: ");
    ck_assert_ptr_nonnull(body);
    ck_assert_ptr_nonnull(cl);
    ck_assert_int_eq(atoi(cl + 18), (int)strlen(body + 4));
    ck_assert_str_eq(body + 4, "{\"result\":\"failure\",\"message\":\"declared body larger than "
                               "--max-body\"}\n");
}

/*
 * A refusal on a TLS connection closes with a lingering close too: a client that sends a head
 * refused at once (413) and keeps uploading its body, 896 KiB (more than the socket buffers
 * hold, less than the 1 MiB the server discards), finishes the upload, then reads the whole 413
 * and the server's close_notify.  The connection was closed at once with the upload unread: the
 * kernel reset it and the client's SSL_write failed before it read a byte of the answer.
 */
START_TEST(tls_refusal_then_lingering_close)
{
    char dir[64], cert[64], key[64];
    struct dutil_daemon d;
    SSL_CTX *ctx = tls_daemon_start(&d, dir, cert, key, NULL);
    for (int round = 0; round < 2; round++) {
        SSL *ssl;
        int fd;
        ck_assert_int_eq(tls_refused_upload(ctx, d.port, 896 * 1024, &ssl, &fd), 896 * 1024);
        char buf[2048];
        tls_read_413(ssl, buf, sizeof(buf));
        SSL_shutdown(ssl); /* the client's close_notify: the server frees the connection */
        SSL_free(ssl);
        close(fd);
    }
    char buf[2048];
    ck_assert_int_eq(tls_get(ctx, d.port, "/healthz", buf, sizeof(buf)), 200);
    tls_daemon_stop(&d, ctx, dir);
}
END_TEST

/*
 * The lingering close of a TLS connection is bounded as on plain TCP: a client that reads the
 * 413 and its close_notify and then neither sends nor closes is closed by the server after the
 * linger time (the end of the TCP stream, awaited 10 s here: the server waits 2 s); one that
 * keeps sending is cut once the server has discarded 1 MiB (its writes fail well before 64 MiB).
 * Neither connection stays open (the /metrics request is the only open one) and the server still
 * answers.
 */
START_TEST(tls_lingering_close_is_bounded)
{
    char dir[64], cert[64], key[64];
    struct dutil_daemon d;
    SSL_CTX *ctx = tls_daemon_start(&d, dir, cert, key, NULL);
    SSL *ssl;
    int fd;
    tls_refused_upload(ctx, d.port, 0, &ssl, &fd);
    char buf[2048];
    tls_read_413(ssl, buf, sizeof(buf));
    ck_assert_msg(closed_within(fd, 10000 * dutil_slow(), NULL, 0),
                  "a silent TLS client was kept open after its 413");
    SSL_free(ssl);
    close(fd);

    size_t sent = tls_refused_upload(ctx, d.port, SIZE_MAX, &ssl, &fd);
    ck_assert_msg(sent < 64u << 20, "a TLS client was let send %zu bytes after its 413", sent);
    SSL_free(ssl);
    close(fd);

    static char metrics[65536];
    int st = -1;
    for (int i = 0; i < 50 * dutil_slow(); i++) { /* the cut connection may still be closing */
        st = tls_get(ctx, d.port, "/metrics", metrics, sizeof(metrics));
        if (st != 200 || strstr(metrics, "\nfirebridge_http_open_connections 1\n"))
            break;
        dutil_msleep(50);
    }
    ck_assert_int_eq(st, 200);
    ck_assert_msg(strstr(metrics, "\nfirebridge_http_open_connections 1\n"),
                  "a lingering TLS connection was left open");
    tls_daemon_stop(&d, ctx, dir);
}
END_TEST

/* ---- in-process server with a JSON route: 415 and 400 ---- */

static void echo_route(struct fbr_http_req *req, void *arg)
{
    fbr_http_reply_json(req, 200, json_incref(req->json));
}

static void quit_route(struct fbr_http_req *req, void *arg)
{
    fbr_http_reply_json(req, 200, NULL);
    struct timeval later = {0, 200000}; /* let the reply go out first */
    event_base_loopexit(arg, &later);
}

START_TEST(idle_timeout_and_connection_cap)
{
    struct dutil_daemon d;
    const char *const extra[] = {"--idle-timeout", dutil_under_valgrind() ? "2000" : "600",
                                 "--max-connections", "3", NULL};
    dutil_daemon_start(&d, "fbr-it", extra);
    char buf[2048];
    const char *req = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    /* an idle connection is closed after the idle timeout */
    int idle = dutil_connect(d.port);
    ck_assert_msg(closed_within(idle, 3000 * dutil_slow(), NULL, 0), "idle connection kept open");
    close(idle);
    dutil_msleep(100);
    /* at the cap, a further connection waits in the backlog until one closes */
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = dutil_connect(d.port);
        ck_assert_int_eq(dutil_send_all(fds[i], req, strlen(req)), 0);
        ck_assert_int_eq(dutil_read_response(fds[i], buf, sizeof(buf)), 200);
    }
    int extra_fd = dutil_connect(d.port);
    ck_assert_int_ge(extra_fd, 0);
    ck_assert_int_eq(dutil_send_all(extra_fd, req, strlen(req)), 0);
    struct pollfd p = {extra_fd, POLLIN, 0};
    ck_assert_int_eq(poll(&p, 1, 300), 0); /* not served while at the cap */
    close(fds[0]);
    ck_assert_int_eq(dutil_read_response(extra_fd, buf, sizeof(buf)), 200);
    close(extra_fd);
    close(fds[1]);
    close(fds[2]);
    dutil_daemon_stop(&d);
}
END_TEST

START_TEST(several_listeners_ipv4_and_ipv6)
{
    struct dutil_daemon d;
    const char *const extra[] = {"--listen", "[::1]:0", NULL};
    dutil_daemon_start(&d, "fbr-it", extra);
    char buf[2048];
    ck_assert_int_eq(dutil_get(d.port, "/healthz", buf, sizeof(buf)), 200);
    char *log = dutil_slurp(d.log, NULL);
    char *p = strstr(log, "listening on [::1]:");
    ck_assert_msg(p != NULL, "no IPv6 listener: %s", log);
    int port6 = atoi(p + strlen("listening on [::1]:"));
    free(log);
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port6)};
    sa.sin6_addr = in6addr_loopback;
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    ck_assert_int_eq(dutil_send_all(fd, req, strlen(req)), 0);
    ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
    close(fd);
    dutil_daemon_stop(&d);
}
END_TEST

/* ---- the server in-process: a forked child serving /echo (JSON) and /quit ---- */

/*
 * The read path's queue-length questions, counted: this definition of ioctl() takes the place of
 * the C library's for every caller in the process (libevent included) and forwards to the
 * kernel.  libevent asks FIONREAD before each of its own reads of a socket.
 */
static unsigned long fionread_calls;

__attribute__((visibility("default"))) int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (request == FIONREAD)
        fionread_calls++;
    return (int)syscall(SYS_ioctl, fd, request, arg);
}

/*
 * The write path, counted the same way: send() (server.c writes a deferred 200 with it) and
 * writev() (libevent's bufferevents write with it).  send_mode makes send() take only part of
 * what it is given (SEND_SHORT: at most 7 bytes) or none (SEND_EAGAIN), as a full socket would.
 */
static unsigned long send_calls, writev_calls;
static enum { SEND_WHOLE, SEND_SHORT, SEND_EAGAIN } send_mode;

__attribute__((visibility("default"))) ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    send_calls++;
    if (send_mode == SEND_EAGAIN) {
        errno = EAGAIN;
        return -1;
    }
    if (send_mode == SEND_SHORT && len > 7)
        len = 7;
    return syscall(SYS_sendto, fd, buf, len, flags, NULL, 0);
}

__attribute__((visibility("default"))) ssize_t writev(int fd, const struct iovec *iov, int n)
{
    writev_calls++;
    return syscall(SYS_writev, fd, iov, n);
}

/*
 * POST /later..., in the child: the reply deferred (fbr_http_defer) and sent from the loop,
 * echoing the posted JSON; /later/short and /later/eagain set send_mode for it.  /later/read
 * answers when the connection's socket next turns readable (or after 2 ms): in the loop
 * iteration that reads those bytes, after the read and before the bufferevent's deferred read
 * callback has screened them, where the daemon's journal commit can answer an alert too.
 */
struct later {
    struct fbr_http_pending *p;
    json_t *body;
    struct event *reply; /* /later/read: activated once the socket is readable */
};

static void later_reply(evutil_socket_t fd, short what, void *arg)
{
    struct later *l = arg;
    fbr_http_pending_reply_json(&l->p, 200, l->body);
    send_mode = SEND_WHOLE;
    if (l->reply)
        event_free(l->reply);
    free(l);
}

/* The socket is readable (or 2 ms passed): the reply runs after the callbacks already active in
 * this iteration, the bufferevent's read among them (event_active() queues it behind them). */
static void later_readable(evutil_socket_t fd, short what, void *arg)
{
    struct later *l = arg;
    event_active(l->reply, EV_TIMEOUT, 1);
}

static void later_route(struct fbr_http_req *req, void *arg)
{
    struct later *l = calloc(1, sizeof(*l));
    l->body = json_incref(req->json);
    l->p = fbr_http_defer(req);
    if (fbr_slice_eq(req->path, FBR_SLICE("/later/short")))
        send_mode = SEND_SHORT;
    else if (fbr_slice_eq(req->path, FBR_SLICE("/later/eagain")))
        send_mode = SEND_EAGAIN;
    if (fbr_slice_eq(req->path, FBR_SLICE("/later/read"))) {
        evhtp_request_t *r = req->opaque;
        l->reply = event_new(arg, -1, 0, later_reply, l);
        struct timeval wait = {0, 2000};
        event_base_once(arg, bufferevent_getfd(r->conn->bev), EV_READ, later_readable, l, &wait);
        return;
    }
    struct timeval now = {0, 0};
    event_base_once(arg, -1, EV_TIMEOUT, later_reply, l, &now);
}

struct inproc {
    pid_t pid;
    int port;
    int pfd[2]; /* child -> test: the port, then at exit the FIONREAD, send and writev counts */
};

static void inproc_start(struct inproc *ip, size_t max_body)
{
    ck_assert_int_eq(pipe(ip->pfd), 0);
    ip->pid = fork();
    ck_assert_int_ge(ip->pid, 0);
    if (ip->pid == 0) {
        struct event_base *base = event_base_new();
        struct fbr_server_opts o = {.max_body = max_body};
        struct fbr_server *srv = fbr_server_new(base, &o);
        fbr_server_add_route(srv, &(struct fbr_route){.path = "/echo", .methods = FBR_M_POST,
                                                       .json_body = 1, .metric = "echo",
                                                       .fn = echo_route});
        fbr_server_add_route(srv, &(struct fbr_route){.path = "/quit", .methods = FBR_M_GET,
                                                       .fn = quit_route, .arg = base});
        fbr_server_add_route(srv, &(struct fbr_route){.path = "/later", .prefix = 1,
                                                       .methods = FBR_M_POST, .json_body = 1,
                                                       .metric = "later", .fn = later_route,
                                                       .arg = base});
        int port = fbr_server_listen(srv, "127.0.0.1:0") == FBR_OK ? fbr_server_port(srv) : -1;
        if (write(ip->pfd[1], &port, sizeof(port)) != sizeof(port))
            _exit(3);
        fionread_calls = send_calls = writev_calls = 0;
        event_base_dispatch(base);
        unsigned long n[3] = {fionread_calls, send_calls, writev_calls};
        fbr_server_free(&srv);
        event_base_free(base);
        _exit(write(ip->pfd[1], &n, sizeof(n)) == sizeof(n) ? 0 : 3);
    }
    ip->port = -1;
    ck_assert_int_eq(read(ip->pfd[0], &ip->port, sizeof(ip->port)), (int)sizeof(ip->port));
    ck_assert_int_gt(ip->port, 0);
}

/* GET /quit, then the child's exit status 0; returns its FIONREAD count, and its send() and
 * writev() counts in sends and writevs (each may be NULL). */
static unsigned long inproc_stop_counts(struct inproc *ip, unsigned long *sends,
                                        unsigned long *writevs)
{
    char buf[1024];
    ck_assert_int_eq(dutil_get(ip->port, "/quit", buf, sizeof(buf)), 200);
    int st;
    ck_assert_int_eq(waitpid(ip->pid, &st, 0), ip->pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    unsigned long n[3] = {0, 0, 0};
    ck_assert_int_eq(read(ip->pfd[0], n, sizeof(n)), (int)sizeof(n));
    close(ip->pfd[0]);
    close(ip->pfd[1]);
    if (sends)
        *sends = n[1];
    if (writevs)
        *writevs = n[2];
    return n[0];
}

static unsigned long inproc_stop(struct inproc *ip)
{
    return inproc_stop_counts(ip, NULL, NULL);
}

START_TEST(json_routes_415_400)
{
    struct inproc ip;
    inproc_start(&ip, 4096);
    int port = ip.port;
    char buf[4096];
    /* The 400's message is fbr_json_loadb's (src/json.c): where the body went wrong. */
    static const struct {
        const char *ct, *body;
        int status;
        const char *message;
    } cases[] = {
        {"application/json", "{\"a\":1}", 200},
        {"application/json; charset=utf-8", "[1,2]", 200},
        {"application/vnd.x+json", "{}", 200},
        {"text/plain", "{\"a\":1}", 415},
        {NULL, "{\"a\":1}", 415},
        {"application/x-www-form-urlencoded", "a=1", 415},
        {"application/json", "{\"a\":", 400, "invalid JSON: premature end of input at byte 5"},
        {"application/json", "{\"a\":1,\"a\":2}", 400,
         "invalid JSON: duplicate object key at byte 7"},
        {"application/json", "", 400, "invalid JSON: '[' or '{' expected at byte 0"},
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(cases); i++) {
        char req[1024], ct[128] = "";
        if (cases[i].ct)
            snprintf(ct, sizeof(ct), "Content-Type: %s\r\n", cases[i].ct);
        snprintf(req, sizeof(req),
                 "POST /echo HTTP/1.1\r\nHost: t\r\n%sContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n%s", ct, strlen(cases[i].body), cases[i].body);
        int st = dutil_http(port, req, buf, sizeof(buf));
        ck_assert_msg(st == cases[i].status, "case %zu: %d", i, st);
        if (st == 200)
            ck_assert_ptr_nonnull(strstr(buf, cases[i].body));
        else
            ck_assert_ptr_nonnull(strstr(buf, "{\"result\":\"failure\",\"message\":"));
        if (cases[i].message)
            ck_assert_msg(strstr(buf, cases[i].message), "case %zu: %s", i, buf);
    }
    inproc_stop(&ip);
}
END_TEST

/* Sends req on a new connection, whole or a byte at a time, and returns the status and the
 * body's message (the part of buf after the blank line). */
static int head_status(int port, const char *req, int bytewise, char *buf, size_t cap)
{
    int fd = dutil_connect(port);
    ck_assert_int_ge(fd, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    size_t n = strlen(req);
    if (!bytewise) {
        dutil_send_all(fd, req, n);
    } else {
        for (size_t i = 0; i < n; i++) {
            if (dutil_send_all(fd, req + i, 1) != 0)
                break; /* refused and closed before the end */
            usleep(200);
        }
    }
    int st = dutil_read_response(fd, buf, cap);
    close(fd);
    return st;
}

/* A NUL byte in a header line (value or name) is refused 400 with the JSON failure body
 * (RFC 9110 5.5), whether the line arrives whole or a byte at a time. */
START_TEST(nul_in_header_refused)
{
    struct inproc ip;
    inproc_start(&ip, 4096);
    static const char value[] = "GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\nConnection: close"
                                "\r\n\r\n",
                      name[] = "GET /echo HTTP/1.1\r\nHost: t\r\nX-\0A: ab\r\nConnection: close"
                               "\r\n\r\n";
    const struct {
        const char *req;
        size_t len;
    } cases[] = {{value, sizeof(value) - 1}, {name, sizeof(name) - 1}};
    for (size_t i = 0; i < FBR_ARRAY_LEN(cases); i++) {
        for (int bytewise = 0; bytewise < 2; bytewise++) {
            int fd = dutil_connect(ip.port);
            ck_assert_int_ge(fd, 0);
            for (size_t at = 0; at < cases[i].len; at += bytewise ? 1 : cases[i].len) {
                if (dutil_send_all(fd, cases[i].req + at, bytewise ? 1 : cases[i].len) != 0)
                    break;
                if (bytewise)
                    usleep(200);
            }
            char buf[2048];
            int st = dutil_read_response(fd, buf, sizeof(buf));
            ck_assert_msg(st == 400 && strstr(buf, "{\"result\":\"failure\"") &&
                              strstr(buf, "NUL"),
                          "case %zu%s: %d %s", i, bytewise ? " (a byte at a time)" : "", st, buf);
            close(fd);
        }
    }
    inproc_stop(&ip);
}
END_TEST

/*
 * The screener takes a whole ordinary header line at once (server.c fast_header_line), a request
 * target's ordinary bytes as a run (fast_target_run), and any other byte by byte: each head
 * below, good or bad, gets the same answer whether it arrives in one write (the fast paths where
 * they apply) or one byte per write (the byte path).
 */
START_TEST(header_lines_whole_or_bytewise_same_answer)
{
    struct inproc ip;
    inproc_start(&ip, 4096);
    static char many[4096], longline[9000];
    size_t at = 0;
    for (int k = 0; k < 101; k++)
        at += (size_t)snprintf(many + at, sizeof(many) - at, "X-%d: v\r\n", k);
    snprintf(longline, sizeof(longline), "X-Long: %08000d\r\n", 0);
    const char *heads[] = {
        "Content-Type: application/json\r\n",
        "content-type:application/json\r\nX-Empty:\r\n",
        "X Bad: v\r\n",              /* blank in a name */
        "X-Bad : v\r\n",             /* blank after a name */
        "X-A: v\r\n folded\r\n",     /* folded line */
        "X-Cr: a\rb\r\n",             /* CR without LF */
        "X-Lf: a\n",                  /* bare LF */
        "NoColon\r\n",
        ": no name\r\n",
        "Content-Length: 1x\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Host: a\r\n",
        many,
        longline,
    };
    static char buf[2][8192];
    for (size_t i = 0; i < FBR_ARRAY_LEN(heads); i++) {
        static char req[16384];
        snprintf(req, sizeof(req),
                 "POST /echo HTTP/1.1\r\nHost: t\r\n%sContent-Type: application/json\r\n"
                 "Content-Length: 2\r\nConnection: close\r\n\r\n{}", heads[i]);
        int whole = head_status(ip.port, req, 0, buf[0], sizeof(buf[0]));
        int bytewise = head_status(ip.port, req, 1, buf[1], sizeof(buf[1]));
        ck_assert_msg(whole == bytewise, "head %zu: %d whole, %d byte by byte", i, whole, bytewise);
        const char *b0 = strstr(buf[0], "\r\n\r\n"), *b1 = strstr(buf[1], "\r\n\r\n");
        ck_assert_msg(b0 && b1 && strcmp(b0, b1) == 0, "head %zu: bodies differ: %s / %s", i,
                      b0 ? b0 : "-", b1 ? b1 : "-");
    }
    /* request lines: odd bytes in the target, blanks, and targets around the line's limit
     * (max_uri 8000 + 24: "POST " + target + " HTTP/1.1" + CR) */
    static char lim[5][8100];
    const size_t lens[5] = {8000, 8009, 8010, 8019, 8020}; /* 8009: the line at its limit */
    for (int k = 0; k < 5; k++) {
        lim[k][0] = '/';
        memset(lim[k] + 1, 'a', lens[k] - 1);
        lim[k][lens[k]] = '\0';
    }
    const char *lines[] = {
        "POST /echo HTTP/1.1",      "POST /echo?q=\x80\xff%41 HTTP/1.1",
        "POST /ec\x7fho HTTP/1.1",  "POST /ec\x01ho HTTP/1.1",
        "POST /ec\tho HTTP/1.1",    "POST /echo  HTTP/1.1",
        "POST  /echo HTTP/1.1",     "POST /echo HTTP/1.1 ",
        "POST /echo\rHTTP/1.1",     "POST /echo",
        "POST /echo HTTP/2.0",      "GET /healthz HTTP/1.0",
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(lines) + 5; i++) {
        static char req[16384], line[8200];
        if (i < FBR_ARRAY_LEN(lines))
            snprintf(line, sizeof(line), "%s", lines[i]);
        else
            snprintf(line, sizeof(line), "POST %s HTTP/1.1", lim[i - FBR_ARRAY_LEN(lines)]);
        snprintf(req, sizeof(req),
                 "%s\r\nHost: t\r\nContent-Type: application/json\r\n"
                 "Content-Length: 2\r\nConnection: close\r\n\r\n{}", line);
        int whole = head_status(ip.port, req, 0, buf[0], sizeof(buf[0]));
        int bytewise = head_status(ip.port, req, 1, buf[1], sizeof(buf[1]));
        ck_assert_msg(whole == bytewise, "line %zu: %d whole, %d byte by byte", i, whole,
                      bytewise);
        const char *b0 = strstr(buf[0], "\r\n\r\n"), *b1 = strstr(buf[1], "\r\n\r\n");
        ck_assert_msg((!b0 && !b1) || (b0 && b1 && strcmp(b0, b1) == 0),
                      "line %zu: bodies differ: %s / %s", i, b0 ? b0 : "-", b1 ? b1 : "-");
    }
    inproc_stop(&ip);
}
END_TEST

/* The head of the response in buf with its X-Request-Id value replaced by "ID". */
static void mask_request_id(char *buf)
{
    char *p = strstr(buf, "X-Request-Id: ");
    ck_assert_ptr_nonnull(p);
    p += strlen("X-Request-Id: ");
    char *e = strstr(p, "\r\n");
    ck_assert_ptr_nonnull(e);
    memmove(p + 2, e, strlen(e) + 1);
    memcpy(p, "ID", 2);
}

/* Asserts that a keep-alive response (fast) and libevhtp's response to the same request with
 * "Connection: close" (slow) are the same bytes once both X-Request-Id values are masked and
 * slow's "Connection: close" line is taken out (both buffers are changed). */
static void assert_same_but_close(char *fast, char *slow)
{
    mask_request_id(fast);
    mask_request_id(slow);
    static const char close_line[] = "Connection: close\r\n";
    char *cc = strstr(slow, close_line);
    ck_assert_ptr_nonnull(cc);
    char *after = cc + sizeof(close_line) - 1;
    memmove(cc, after, strlen(after) + 1);
    ck_assert_str_eq(fast, slow);
}

/*
 * A keep-alive HTTP/1.1 200 has its head written by server.c (plain_200_head) instead of
 * evhtp_send_reply(): it must be byte for byte what libevhtp writes.  The same request with
 * "Connection: close" goes through libevhtp (which adds "Connection: close" after
 * Content-Length); with that line taken out the two responses are identical.
 */
START_TEST(plain_200_written_as_libevhtp_writes_it)
{
    struct inproc ip;
    inproc_start(&ip, 4096);
    static const char body[] = "{\"a\":\"b\\u00e9\",\"n\":1}";
    char req[512];
    static char fast[4096], slow[4096];
    int fd = dutil_connect(ip.port);
    ck_assert_int_ge(fd, 0);
    snprintf(req, sizeof(req),
             "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    ck_assert_int_eq(dutil_send_all(fd, req, strlen(req)), 0);
    ck_assert_int_eq(dutil_read_response(fd, fast, sizeof(fast)), 200);
    close(fd);
    snprintf(req, sizeof(req),
             "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\nConnection: close\r\n\r\n%s", strlen(body), body);
    ck_assert_int_eq(dutil_http(ip.port, req, slow, sizeof(slow)), 200);
    assert_same_but_close(fast, slow);
    ck_assert_ptr_nonnull(strstr(fast, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                       "X-Request-Id: ID\r\nContent-Length: "));
    inproc_stop(&ip);
}
END_TEST

/*
 * Replies are written as jansson writes them: server.c serialises flat objects itself (every
 * alert's 200) and the rest with json_dumpb; each body /echo sends back must be byte for byte
 * json_dumps(JSON_COMPACT) of what was posted (hex digits of \\u escapes in lower case):
 * escapes, extreme integers, an empty object and the fallbacks (a real, a nested object, an
 * array, a member too long for the stack buffer) included.
 */
START_TEST(replies_written_as_jansson_writes_them)
{
    struct inproc ip;
    inproc_start(&ip, 65536);
    static char longv[3000];
    memset(longv, 'x', sizeof(longv) - 1);
    char longdoc[3100];
    snprintf(longdoc, sizeof(longdoc), "{\"long\":\"%s\"}", longv);
    const char *docs[] = {
        "{\"result\":\"success\",\"entity_id\":\"abc-123\"}",
        "{\"s\":\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\\u007f/\u00e9\u20ac\\ud83d\\ude00\","
        "\"i\":-9223372036854775808,\"j\":9223372036854775807,\"z\":0,\"m\":-1,"
        "\"t\":true,\"f\":false,\"n\":null}",
        "{\"\":\"empty key\",\"k\\\"ey\\u00e9\":1}",
        "{}",
        "{\"r\":1.5}",
        "{\"o\":{\"x\":1},\"a\":\"b\"}",
        "[1,\"two\",{\"three\":3}]",
        longdoc,
    };
    static char buf[16384];
    for (size_t i = 0; i < FBR_ARRAY_LEN(docs); i++) {
        json_t *want_doc = json_loads(docs[i], JSON_REJECT_DUPLICATES, NULL);
        ck_assert_msg(want_doc != NULL, "doc %zu does not parse", i);
        char *want = json_dumps(want_doc, JSON_COMPACT);
        json_decref(want_doc);
        for (char *u = want; (u = strstr(u, "\\u")) != NULL; u += 2) /* jansson: \u001F */
            for (int k = 2; k < 6 && u[k]; k++)
                u[k] = (char)tolower((unsigned char)u[k]);
        char req[4096];
        snprintf(req, sizeof(req),
                 "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n\r\n%s", strlen(docs[i]), docs[i]);
        ck_assert_int_eq(dutil_http(ip.port, req, buf, sizeof(buf)), 200);
        const char *body = strstr(buf, "\r\n\r\n");
        ck_assert_ptr_nonnull(body);
        body += 4;
        ck_assert_msg(strncmp(body, want, strlen(want)) == 0 && body[strlen(want)] == '\n',
                      "doc %zu: got %s, want %s", i, body, want);
        free(want);
    }
    inproc_stop(&ip);
}
END_TEST

/*
 * The screener frames a body exactly as libevhtp's parser will, or refuses the head: libevhtp
 * takes a Transfer-Encoding other than "chunked"/"Chunked" with nothing after it as no coding
 * (an empty body, its chunks then read as a next request: "CHUNKED" got the endpoint's "invalid
 * JSON" 400), and drops the connection without a word on a Content-Length after a tab or longer
 * than 20 characters.  Each is now a 400 naming the header; the spellings both read alike work.
 */
START_TEST(framing_headers_read_as_libevhtp_reads_them)
{
    struct inproc ip;
    inproc_start(&ip, 4096);
    static const struct {
        const char *head, *body;
        int status;
        const char *says;
    } cases[] = {
        /* coding names are case-insensitive (RFC 9112 7): rewritten for libevhtp's parser */
        {"Transfer-Encoding: CHUNKED\r\n", "2\r\n{}\r\n0\r\n\r\n", 200, "{}"},
        {"Transfer-Encoding: cHuNkEd\r\n", "2\r\n{}\r\n0\r\n\r\n", 200, "{}"},
        {"Transfer-Encoding: chunked \r\n", "2\r\n{}\r\n0\r\n\r\n", 400, "Transfer-Encoding"},
        {"Transfer-Encoding:\tchunked\r\n", "2\r\n{}\r\n0\r\n\r\n", 400, "Transfer-Encoding"},
        {"Content-Length:\t2\r\n", "{}", 400, "Content-Length"},
        {"Content-Length: 000000000000000000002\r\n", "{}", 400, "Content-Length"},
        {"Transfer-Encoding: Chunked\r\n", "2\r\n{}\r\n0\r\n\r\n", 200, "{}"},
        {"Transfer-Encoding:   chunked\r\n", "2\r\n{}\r\n0\r\n\r\n", 200, "{}"},
        {"Content-Length: 00000000000000000002 \t\r\n", "{}", 200, "{}"},
    };
    static char buf[8192];
    for (size_t i = 0; i < FBR_ARRAY_LEN(cases); i++) {
        char req[1024];
        snprintf(req, sizeof(req),
                 "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s"
                 "Connection: close\r\n\r\n%s",
                 cases[i].head, cases[i].body);
        for (int bytewise = 0; bytewise < 2; bytewise++) {
            int st = head_status(ip.port, req, bytewise, buf, sizeof(buf));
            const char *body = strstr(buf, "\r\n\r\n");
            ck_assert_msg(st == cases[i].status && body && strstr(body, cases[i].says),
                          "case %zu%s: %d %s", i, bytewise ? " (a byte at a time)" : "", st,
                          body ? body : "(no reply)");
        }
    }
    inproc_stop(&ip);
}
END_TEST

/*
 * A plain-TCP connection's requests are read without asking the kernel their length first
 * (server.c plain_read): 50 requests on one keep-alive connection, some of them split over
 * several writes, and a pipelined pair, cost no ioctl(FIONREAD); libevent's own read path asks
 * before every read.  Every answer is still whole and right.
 */
START_TEST(plain_reads_ask_no_queue_length)
{
    struct inproc ip;
    inproc_start(&ip, 4096);
    int fd = dutil_connect(ip.port);
    ck_assert_int_ge(fd, 0);
    char buf[4096];
    for (int i = 0; i < 50; i++) {
        char body[64], req[512];
        snprintf(body, sizeof(body), "{\"n\":%d}", i);
        int n = snprintf(req, sizeof(req),
                         "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
        if (i % 5 == 4) { /* the head in two writes, the body in a third */
            ck_assert_int_eq(dutil_send_all(fd, req, 10), 0);
            usleep(2000);
            ck_assert_int_eq(dutil_send_all(fd, req + 10, (size_t)n - 10 - strlen(body)), 0);
            usleep(2000);
            ck_assert_int_eq(dutil_send_all(fd, body, strlen(body)), 0);
        } else {
            ck_assert_int_eq(dutil_send_all(fd, req, (size_t)n), 0);
        }
        ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
        ck_assert_msg(strstr(buf, body) != NULL, "request %d: %s", i, buf);
    }
    close(fd);
    ck_assert_int_eq(inproc_stop(&ip), 0);
}
END_TEST

/*
 * A deferred 200 with a flat JSON body (every alert's answer) on a plain keep-alive connection is
 * written by server.c itself with one send(), not through libevhtp's buffers and a writev()
 * (server.c reply_json_direct): byte for byte what libevhtp writes (the same request with
 * "Connection: close" goes through libevhtp; its "Connection: close" line taken out, the two are
 * identical), the connection goes on (30 requests, pipelined pairs among them), and what the
 * kernel does not take goes out through the bufferevent whole and in order: a send() that takes
 * 7 bytes, one that takes none.  Without the direct write the child counts no send() at all.
 */
START_TEST(deferred_200_written_with_one_send)
{
    struct inproc ip;
    inproc_start(&ip, 4096);
    static char buf[8192], slow[4096];
    int fd = dutil_connect(ip.port);
    ck_assert_int_ge(fd, 0);
    const char *paths[] = {"/later", "/later/short", "/later/eagain"};
    unsigned direct = 0;
    for (int i = 0; i < 30; i++) {
        char body[64], req[1024];
        const char *path = paths[i % 3 == 0 ? 0 : i % 10 == 1 ? 1 : i % 10 == 2 ? 2 : 0];
        snprintf(body, sizeof(body), "{\"result\":\"success\",\"n\":%d}", i);
        int n = snprintf(req, sizeof(req),
                         "POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n%s",
                         path, strlen(body), body);
        direct++;
        if (i % 7 == 3) { /* a pipelined pair: this request and the next in one write */
            char body2[64];
            snprintf(body2, sizeof(body2), "{\"result\":\"success\",\"n\":%d}", i + 1000);
            n += snprintf(req + n, sizeof(req) - (size_t)n,
                          "POST /later HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\n\r\n%s",
                          strlen(body2), body2);
            direct++;
            ck_assert_int_eq(dutil_send_all(fd, req, (size_t)n), 0);
            ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
            ck_assert_msg(strstr(buf, body) != NULL, "request %d: %s", i, buf);
            ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
            ck_assert_msg(strstr(buf, body2) != NULL, "request %d+1000: %s", i, buf);
            continue;
        }
        ck_assert_int_eq(dutil_send_all(fd, req, (size_t)n), 0);
        ck_assert_int_eq(dutil_read_response(fd, buf, sizeof(buf)), 200);
        ck_assert_msg(strstr(buf, body) != NULL, "request %d (%s): %s", i, path, buf);
        const char *b = strstr(buf, "\r\n\r\n");
        ck_assert_ptr_nonnull(b);
        ck_assert_msg(strncmp(b + 4, body, strlen(body)) == 0 &&
                          strcmp(b + 4 + strlen(body), "\n") == 0,
                      "request %d (%s): body %s", i, path, b + 4);
        if (i == 0) { /* the same through libevhtp */
            char creq[1024];
            snprintf(creq, sizeof(creq),
                     "POST /later HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     strlen(body), body);
            ck_assert_int_eq(dutil_http(ip.port, creq, slow, sizeof(slow)), 200);
            assert_same_but_close(buf, slow);
        }
    }
    close(fd);
    unsigned long sends = 0, writevs = 0;
    inproc_stop_counts(&ip, &sends, &writevs);
    /* one send() per deferred reply on the keep-alive connection (the short and refused ones
     * then finish through the bufferevent's writev) */
    ck_assert_uint_eq(sends, direct);
}
END_TEST

/*
 * Reads up to n Content-Length-framed responses from fd (each at most 4 KiB, until EOF or the
 * socket's receive timeout): their statuses into status[] and their bodies, NUL-terminated, into
 * body[] (n rows of 4 KiB).  Returns how many came whole; *extra gets the bytes that followed the
 * n-th (a response too many).
 */
static size_t read_responses(int fd, size_t n, int *status, char (*body)[4096], size_t *extra)
{
    static char buf[65536];
    size_t len = 0, got = 0;
    while (got < n) {
        char *end = memmem(buf, len, "\r\n\r\n", 4);
        if (end) {
            *end = '\0';
            char *cl = strcasestr(buf, "\r\ncontent-length:");
            size_t hlen = (size_t)(end - buf) + 4, blen = cl ? (size_t)atol(cl + 17) : 0;
            *end = '\r';
            if (len >= hlen + blen) {
                status[got] = strncmp(buf, "HTTP/1.1 ", 9) == 0 ? atoi(buf + 9) : -1;
                size_t keep = blen < 4095 ? blen : 4095;
                memcpy(body[got], buf + hlen, keep);
                body[got][keep] = '\0';
                got++;
                memmove(buf, buf + hlen + blen, len - hlen - blen);
                len -= hlen + blen;
                continue;
            }
        }
        ssize_t r = len < sizeof(buf) ? recv(fd, buf + len, sizeof(buf) - len, 0) : 0;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    *extra = len;
    return got;
}

/*
 * Pipelined keep-alive requests, sent in two writes cut at every byte offset (at once and with
 * 1 ms between the writes), some answered from the handler and some deferred, their replies
 * coming in the loop iteration that reads the second write (/later/read: after the socket read,
 * before the bufferevent's deferred read callback) or later: every request gets exactly one
 * response, in order, with its status and its own body, and the connection then serves one
 * more request.  libevhtp's write callback parses the input by itself once a deferred reply is
 * out; it took bytes the screener had not seen yet, without the beginning of a header section
 * the screener held back: the connection closed silently, or the rest stayed unparsed.
 */
START_TEST(pipelined_requests_cut_at_every_offset)
{
    struct inproc ip;
    inproc_start(&ip, 4096);
    static const struct {
        const char *method, *path;
        int status;
    } seq[] = {
        {"POST", "/later/read", 200}, {"POST", "/later/read", 200}, {"POST", "/echo", 200},
        {"GET", "/nope", 404},        {"POST", "/later", 200},
    };
    enum { N = FBR_ARRAY_LEN(seq) };
    static char all[8192], pad[300];
    memset(pad, 'p', sizeof(pad) - 1);
    size_t len = 0;
    for (size_t i = 0; i < N; i++) {
        char body[512];
        snprintf(body, sizeof(body), "{\"n\":%zu,\"pad\":\"%s\"}", i, i == 1 ? pad : "");
        if (strcmp(seq[i].method, "GET") == 0)
            len += (size_t)snprintf(all + len, sizeof(all) - len, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n",
                                    seq[i].path);
        else
            len += (size_t)snprintf(all + len, sizeof(all) - len,
                                    "POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                    "Content-Length: %zu\r\n\r\n%s",
                                    seq[i].path, strlen(body), body);
    }
    static const char again[] = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    static char body[N][4096];
    int status[N];
    unsigned bad = 0;
    char first_bad[256] = "";
    for (int pause = 0; pause < 2 && bad < 5; pause++) {
        for (size_t k = 1; k < len && bad < 5; k++) { /* a stalled cut costs the 1 s timeout */
            int fd = dutil_connect_with(ip.port, 0, dutil_slow(), 0);
            ck_assert_int_ge(fd, 0);
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            ck_assert_int_eq(dutil_send_all(fd, all, k), 0);
            if (pause)
                usleep(1000);
            ck_assert_int_eq(dutil_send_all(fd, all + k, len - k), 0);
            size_t extra, got = read_responses(fd, N, status, body, &extra);
            const char *why = got < N ? "responses missing" : extra ? "a response too many" : NULL;
            for (size_t i = 0; !why && i < got; i++) {
                char n[16];
                snprintf(n, sizeof(n), "\"n\":%zu,", i);
                if (status[i] != seq[i].status || (status[i] == 200 && !strstr(body[i], n)))
                    why = "wrong status or body";
            }
            if (!why) {
                ck_assert_int_eq(dutil_send_all(fd, again, sizeof(again) - 1), 0);
                got = read_responses(fd, 1, status, body, &extra);
                if (got != 1 || status[0] != 200 || extra)
                    why = "connection not usable after the pipeline";
            }
            if (why && !bad++) {
                int at = snprintf(first_bad, sizeof(first_bad), "cut at %zu of %zu (%s): %s:",
                                  k, len, pause ? "1 ms apart" : "at once", why);
                for (size_t i = 0; i < got && at < (int)sizeof(first_bad) - 8; i++)
                    at += snprintf(first_bad + at, sizeof(first_bad) - (size_t)at, " %d",
                                   status[i]);
            }
            close(fd);
        }
    }
    ck_assert_msg(bad == 0, "%u cut(s) failed (the test stops at 5); the first: %s", bad, first_bad);
    inproc_stop(&ip);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("daemon");
    tcase_set_timeout(tc, dutil_under_valgrind() ? 600 : 60);
    tcase_add_test(tc, builtin_endpoints_and_errors);
    tcase_add_test(tc, body_413_without_leaks);
    tcase_add_test(tc, chunked_body_over_max_body_refused_early);
    tcase_add_test(tc, oversized_and_odd_requests);
    tcase_add_test(tc, refusal_then_lingering_close);
    tcase_add_test(tc, trickling_client_is_closed);
    tcase_add_test(tc, later_request_has_its_own_deadline);
    tcase_add_test(tc, many_concurrent_keepalive_connections);
    tcase_add_test(tc, sigterm_drains_and_exits_zero);
    tcase_add_test(tc, drain_timeout_bounds_the_exit);
    tcase_add_test(tc, sighup_reload);
    tcase_add_test(tc, bad_flags_exit_2_and_check_config);
    tcase_add_test(tc, tls_inbound);
    tcase_add_test(tc, tls_silent_sockets_free_their_slots);
    tcase_add_test(tc, tls_refusal_then_lingering_close);
    tcase_add_test(tc, tls_lingering_close_is_bounded);
    tcase_add_test(tc, idle_timeout_and_connection_cap);
    tcase_add_test(tc, several_listeners_ipv4_and_ipv6);
    tcase_add_test(tc, json_routes_415_400);
    tcase_add_test(tc, plain_reads_ask_no_queue_length);
    tcase_add_test(tc, replies_written_as_jansson_writes_them);
    tcase_add_test(tc, header_lines_whole_or_bytewise_same_answer);
    tcase_add_test(tc, framing_headers_read_as_libevhtp_reads_them);
    tcase_add_test(tc, nul_in_header_refused);
    tcase_add_test(tc, plain_200_written_as_libevhtp_writes_it);
    tcase_add_test(tc, deferred_200_written_with_one_send);
    suite_add_tcase(s, tc);
    /* its own case: CK_RUN_CASE=pipelining runs it alone */
    tc = tcase_create("pipelining");
    tcase_set_timeout(tc, dutil_under_valgrind() ? 600 : 60);
    tcase_add_test(tc, pipelined_requests_cut_at_every_offset);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
