/*
 * fuzz_http_screen.c - libFuzzer target for the inbound side, the first step of the data path:
 * the header screener of src/server.c together with libevhtp 1.2.18's request parser behind it.
 * The screener is not a pure function over bytes (it keeps per-connection state, arms the read
 * deadline and writes reject replies into the bufferevent), so each input goes through the real
 * thing: an fbr_server with its built-in routes listens on loopback inside this process, and the
 * input is written to one fresh connection, split into writes of a size chosen by its first byte,
 * with the event loop run between writes; then the client half-closes and reads to EOF.
 *
 * Checks beyond the sanitizers: every reply starts with "HTTP/1.", and after each input the
 * server is back to zero open connections (a connection leaked by any path aborts).  When the
 * input's first header section has ambiguous framing (RFC 9112 6.1, 6.3: Content-Length together
 * with Transfer-Encoding, Content-Length values that are not digits or disagree, a blank before
 * the colon of a field name), it gets at most one reply, an error, and nothing after it is
 * answered: a second reply would mean a request was smuggled.  A malformed first request line
 * (lower-case method, a raw space in the target, no version, a bare LF) is answered one 400.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "firebridge/log.h"
#include "firebridge/server.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;
static struct fbr_server *srv;
static int port;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fbr_log_setup(FBR_LOG_ERROR, FBR_LOG_TEXT);
    fbr_log_capture_stderr(); /* libevhtp's log_error lines, as in the daemon */
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    struct fbr_server_opts o = {.max_body = 4096, .read_timeout_ms = 2000,
                                .idle_timeout_ms = 2000};
    srv = fbr_server_new(base, &o);
    if (fbr_server_listen(srv, "127.0.0.1:0") != FBR_OK)
        abort();
    port = fbr_server_port(srv);
    return 0;
}

/* A Content-Length value (after the colon, blanks around): 1 when digits only, its value in *v. */
static int cl_digits(const char *p, size_t n, unsigned long long *v)
{
    while (n && (*p == ' ' || *p == '\t'))
        p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r'))
        n--;
    *v = 0;
    if (n == 0 || n > 18)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        *v = *v * 10 + (unsigned long long)(p[i] - '0');
    }
    return 1;
}

/* 1 when the first header section of d (lines split at LF, as the screener splits them) frames
 * its body ambiguously. */
static int ambiguous_framing(const uint8_t *d, size_t n)
{
    size_t i = 0;
    while (i < n && (d[i] == '\r' || d[i] == '\n'))
        i++;
    const uint8_t *nl = memchr(d + i, '\n', n - i);
    if (!nl)
        return 0;
    i = (size_t)(nl - d) + 1;
    int cl = 0, te = 0, bad = 0;
    unsigned long long first = 0;
    while (i < n) {
        nl = memchr(d + i, '\n', n - i);
        if (!nl)
            return 0; /* the section is not complete */
        const char *line = (const char *)d + i;
        size_t len = (size_t)(nl - d) - i;
        i += len + 1;
        if (len == 0 || (len == 1 && line[0] == '\r'))
            return bad || (cl && te);
        const char *colon = memchr(line, ':', len);
        size_t name = colon ? (size_t)(colon - line) : len;
        if (memchr(line, ' ', name) || memchr(line, '\t', name))
            bad = 1;
        if (colon && name == 14 && strncasecmp(line, "content-length", 14) == 0) {
            unsigned long long v;
            if (!cl_digits(colon + 1, len - name - 1, &v) || (cl && v != first))
                bad = 1;
            first = v;
            cl = 1;
        } else if (colon && name == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
            te = 1;
        }
    }
    return 0;
}

/* 1 when the first request line of d is complete and malformed (RFC 9112 3: upper-case method,
 * one space, a target of visible ASCII, one space, "HTTP/" digits "." digits, CRLF). */
static int bad_request_line(const uint8_t *d, size_t n)
{
    size_t i = 0;
    while (i < n && (d[i] == '\r' || d[i] == '\n'))
        i++;
    const uint8_t *nl = memchr(d + i, '\n', n - i);
    if (!nl)
        return 0;
    size_t end = (size_t)(nl - d), m = i;
    while (m < end && d[m] >= 'A' && d[m] <= 'Z')
        m++;
    if (m == i || m == end || d[m] != ' ')
        return 1;
    size_t t = ++m;
    while (m < end && d[m] > ' ' && d[m] != 0x7f)
        m++;
    if (m == t || m == end || d[m] != ' ' || end - m < 10 || d[end - 1] != '\r')
        return 1;
    const uint8_t *v = d + m + 1, *stop = d + end - 1;
    if (memcmp(v, "HTTP/", 5) != 0)
        return 1;
    v += 5;
    const uint8_t *dig = v;
    while (v < stop && *v >= '0' && *v <= '9')
        v++;
    if (v == dig || v == stop || *v++ != '.')
        return 1;
    dig = v;
    while (v < stop && *v >= '0' && *v <= '9')
        v++;
    return v == dig || v != stop;
}

/* Reads what the server sent so far; returns 1 at EOF or a reset. */
static int drain(int fd, char *head, size_t *headlen, size_t cap)
{
    for (;;) {
        char tmp[16384];
        ssize_t n = recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT);
        if (n == 0)
            return 1;
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : 1;
        size_t take = (size_t)n < cap - *headlen ? (size_t)n : cap - *headlen;
        memcpy(head + *headlen, tmp, take);
        *headlen += take;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    size_t chunk = data[0] == 0 ? size : (size_t)data[0];
    data++;
    size--;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = -1;
    /* thousands of connections a second can run out of local ports (TIME_WAIT), and libFuzzer's
     * -timeout alarm interrupts connect(): retry a little, then skip the input rather than
     * report the machine's limit as a bug */
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            abort();
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
            if (errno != EADDRNOTAVAIL && errno != EAGAIN && errno != EINTR) {
                dprintf(2, "connect: %s\n", strerror(errno)); /* stderr is captured */
                abort();
            }
            close(fd);
            fd = -1;
            usleep(10000);
        }
    }
    if (fd < 0)
        return 0;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    static char head[65536];
    size_t headlen = 0;
    int eof = 0;
    size_t off = 0;
    /* bounded: each pass either sends, or the loop makes progress on the server side */
    for (int pass = 0; pass < 20000 && off < size && !eof; pass++) {
        size_t n = size - off < chunk ? size - off : chunk;
        ssize_t w = send(fd, data + off, n, MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN)
            break; /* the server closed (a reject): fine */
        event_base_loop(base, EVLOOP_NONBLOCK);
        eof = drain(fd, head, &headlen, sizeof(head));
    }
    shutdown(fd, SHUT_WR);
    for (int pass = 0; pass < 20000 && !eof; pass++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        eof = drain(fd, head, &headlen, sizeof(head));
    }
    if (headlen >= 7 && memcmp(head, "HTTP/1.", 7) != 0) {
        dprintf(2, "non-HTTP reply: %.*s\n", (int)(headlen < 16 ? headlen : 16), head);
        abort();
    }
    if (ambiguous_framing(data, size) && headlen >= 12) {
        int replies = 0;
        for (size_t i = 0; i + 9 <= headlen; i++)
            replies += memcmp(head + i, "HTTP/1.1 ", 9) == 0;
        if (replies > 1 || head[9] < '4') {
            dprintf(2, "ambiguous framing answered %d time(s), first %.12s\n", replies, head);
            abort();
        }
    }
    if (bad_request_line(data, size) && headlen >= 12) {
        int replies = 0;
        for (size_t i = 0; i + 9 <= headlen; i++)
            replies += memcmp(head + i, "HTTP/1.1 ", 9) == 0;
        /* 414: a long line can reach the length limit before its flaw */
        int ok = memcmp(head + 9, "400", 3) == 0 || memcmp(head + 9, "414", 3) == 0;
        if (replies != 1 || !ok) {
            dprintf(2, "malformed request line answered %d time(s), first %.12s\n", replies,
                    head);
            abort();
        }
    }
    struct linger lg = {1, 0}; /* a reset: no TIME_WAIT left on this side */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    for (int pass = 0; pass < 20000 && fbr_server_connections(srv) > 0; pass++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    if (fbr_server_connections(srv) != 0) {
        dprintf(2, "%zu connection(s) still open after the client left\n",
                fbr_server_connections(srv));
        abort();
    }
    return 0;
}
