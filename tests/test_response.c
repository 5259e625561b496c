/*
 * test_response.c - response.h's reader against raw answers in evbuffers: bodies by
 * Content-Length, chunked (extensions, trailers), to the close; interim answers; the statuses and
 * the method without a body; the framing flags; and every malformed or oversized form it must
 * refuse (status lines, chunk sizes, Content-Length, long lines, large heads).  Each answer is also
 * fed a byte at a time, once into one growing chain and once as a chain per byte, so that lines and
 * chunks split anywhere across reads and across the buffer's chains give the same result.
 */
#include <check.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/common.h"
#include "firebridge/response.h"
#include "testsupport.h"

/* What one answer came to. */
struct outcome {
    int rc;            /* the last fbr_response_parse() result */
    const char *error; /* after FBR_RESPONSE_ERROR */
    int status, http10, conn_close, keep_alive, until_eof;
    char body[1 << 17];
    size_t body_len;
    char headers[1024]; /* "name=value;" per header the callback saw */
    size_t left;        /* input bytes after the answer */
};

static struct outcome out;
static int reject_header; /* the callback refuses "X-Bad" */

static int on_header(void *arg, const char *name, size_t name_len, char *value)
{
    struct outcome *o = arg;
    if (reject_header && name_len == 5 && memcmp(name, "X-Bad", 5) == 0)
        return -1;
    size_t n = strlen(o->headers);
    snprintf(o->headers + n, sizeof(o->headers) - n, "%.*s=%s;", (int)name_len, name, value);
    return 0;
}

/* Parses what in holds; 0 when the answer is over (done or refused), 1 to wait for more. */
static int step(struct fbr_response *p, struct evbuffer *in)
{
    for (;;) {
        size_t n = 0;
        out.rc = fbr_response_parse(p, in, &n);
        if (out.rc != FBR_RESPONSE_BODY)
            return out.rc == FBR_RESPONSE_MORE;
        ck_assert_uint_gt(n, 0);
        ck_assert_uint_le(n, evbuffer_get_length(in));
        ck_assert_uint_le(out.body_len + n, sizeof(out.body) - 1);
        evbuffer_remove(in, out.body + out.body_len, n);
        out.body_len += n;
    }
}

enum feed { ALL, BYTES, CHAINS };

/*
 * Feeds raw[0..len) to a fresh reader (no_body: a HEAD request's answer): all at once, a byte at
 * a time into one chain, or a byte at a time each in a chain of its own (answers over 4 KiB in
 * pieces of 251 bytes).  Fills out.
 */
static void parse_as(const char *raw, size_t len, int no_body, enum feed how)
{
    memset(&out, 0, sizeof(out));
    struct fbr_response p;
    fbr_response_init(&p, on_header, &out);
    fbr_response_reset(&p, no_body);
    struct evbuffer *in = evbuffer_new();
    ck_assert_ptr_nonnull(in);
    size_t fed = 0;
    int more = 1;
    while (more && fed < len) {
        /* long answers in pieces of a prime size: a byte at a time would be quadratic */
        size_t k = how == ALL ? len : len > 4096 ? 251 : 1;
        k = k < len - fed ? k : len - fed;
        if (how == CHAINS)
            evbuffer_add_reference(in, raw + fed, k, NULL, NULL);
        else
            evbuffer_add(in, raw + fed, k);
        fed += k;
        more = step(&p, in);
    }
    out.error = p.error;
    out.status = p.status;
    out.http10 = p.http10;
    out.conn_close = p.conn_close;
    out.keep_alive = p.keep_alive;
    out.until_eof = fbr_response_until_eof(&p);
    out.body[out.body_len] = '\0';
    out.left = evbuffer_get_length(in) + (len - fed);
    evbuffer_free(in);
}

static void parse_str(const char *raw, int no_body, enum feed how)
{
    parse_as(raw, strlen(raw), no_body, how);
}

/* Asserts raw parses to rc (and body, status) the same way whichever way it is fed. */
static void expect(const char *raw, int no_body, int rc, int status, const char *body,
                   const char *headers, size_t left)
{
    for (enum feed how = ALL; how <= CHAINS; how++) {
        parse_str(raw, no_body, how);
        ck_assert_msg(out.rc == rc, "feed %d: rc %d (%s), want %d for %s", how, out.rc,
                      out.error ? out.error : "-", rc, raw);
        ck_assert_int_eq(out.status, status);
        ck_assert_str_eq(out.body, body);
        ck_assert_str_eq(out.headers, headers);
        ck_assert_msg(out.left == left, "feed %d: %zu bytes left, want %zu", how, out.left, left);
    }
}

/* Asserts raw[0..len) is refused, fed every way, with an error containing why. */
static void refused_n(const char *raw, size_t len, const char *why)
{
    for (enum feed how = ALL; how <= CHAINS; how++) {
        parse_as(raw, len, 0, how);
        ck_assert_msg(out.rc == FBR_RESPONSE_ERROR, "feed %d: rc %d for %s", how, out.rc, raw);
        ck_assert_msg(strstr(out.error, why), "feed %d: '%s' for %s", how, out.error, raw);
    }
}

static void refused(const char *raw, const char *why)
{
    refused_n(raw, strlen(raw), why);
}

START_TEST(content_length_body)
{
    /* the framing headers are the reader's, the others the caller's; what follows is left */
    expect("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b c \r\n\r\nhelloHTTP/1.1", 0,
           FBR_RESPONSE_DONE, 200, "hello", "X-A=b c;", 8);
    /* the same length twice is one length; upper case, blanks around the value */
    expect("HTTP/1.1 201 Created\r\ncontent-LENGTH: 3\r\nContent-Length:\t3 \r\n\r\nabc", 0,
           FBR_RESPONSE_DONE, 201, "abc", "", 0);
    /* Content-Length: 0 and no reason phrase */
    expect("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 0, FBR_RESPONSE_DONE, 200, "", "", 0);
    /* a stray CRLF before the status line is tolerated */
    expect("\r\nHTTP/1.1 202 OK\r\nContent-Length: 1\r\n\r\nx", 0, FBR_RESPONSE_DONE, 202, "x",
           "", 0);
    /* cut short: the reader waits */
    expect("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0, FBR_RESPONSE_MORE, 200, "abc",
           "", 0);
    parse_str("HTTP/1.1 200 OK\r\nConnection: keep-alive, Upgrade\r\nContent-Length: 0\r\n\r\n", 0,
              ALL);
    ck_assert(out.keep_alive && !out.conn_close && !out.http10);
    parse_str("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n", 0, ALL);
    ck_assert(out.conn_close && !out.keep_alive);
}
END_TEST

START_TEST(chunked_with_extensions_and_trailers)
{
    static const char raw[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n"
                              "Content-Length: 99\r\nX-A: 1\r\n\r\n"
                              "5;name=value\r\nhello\r\n"
                              "1 ; ext ; more=\"q\"\r\n \r\n"
                              "A\r\n0123456789\r\n"
                              "000000000000000000005\r\nworld\r\n"
                              "0;last\r\nTrailer-A: 1\r\nTrailer-B: 2\r\n\r\nNEXT";
    /* chunked wins over Content-Length; trailers are read and dropped */
    expect(raw, 0, FBR_RESPONSE_DONE, 200, "hello 0123456789world", "X-A=1;", 4);
    /* no trailers, an upper-case size */
    expect("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nB\r\nhello world\r\n0\r\n\r\n", 0,
           FBR_RESPONSE_DONE, 200, "hello world", "", 0);
    /* data not followed by its CRLF */
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
            "malformed chunk end");
    /* a chunk longer than what came: the reader waits, handing what came */
    expect("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", 0, FBR_RESPONSE_MORE,
           200, "abc", "", 0);
}
END_TEST

/* Every answer of the other tests split at every byte: the same outcome as in one piece (each
 * test's expect() feeds a byte at a time already); here every split point into two reads. */
START_TEST(chunks_split_across_reads)
{
    static const char raw[] = "HTTP/1.1 100 Continue\r\n\r\n"
                              "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
                              "3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n";
    size_t len = sizeof(raw) - 1;
    for (size_t cut = 0; cut <= len; cut++) {
        memset(&out, 0, sizeof(out));
        struct fbr_response p;
        fbr_response_init(&p, on_header, &out);
        struct evbuffer *in = evbuffer_new();
        evbuffer_add(in, raw, cut);
        int more = step(&p, in);
        ck_assert_msg(more || cut == len, "cut %zu: rc %d", cut, out.rc);
        evbuffer_add_reference(in, raw + cut, len - cut, NULL, NULL);
        if (more)
            step(&p, in);
        out.body[out.body_len] = '\0';
        ck_assert_msg(out.rc == FBR_RESPONSE_DONE, "cut %zu: rc %d (%s)", cut, out.rc,
                      p.error ? p.error : "-");
        ck_assert_str_eq(out.body, "abc0123456789abcdef");
        ck_assert_str_eq(out.headers, "X-A=1;");
        ck_assert_uint_eq(evbuffer_get_length(in), 0);
        evbuffer_free(in);
    }
}
END_TEST

START_TEST(body_until_eof)
{
    /* no length, not chunked: the body runs to the close, which the caller sees */
    for (enum feed how = ALL; how <= CHAINS; how++) {
        parse_str("HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil the end", 0, how);
        ck_assert_int_eq(out.rc, FBR_RESPONSE_MORE);
        ck_assert(out.until_eof && out.http10);
        ck_assert_str_eq(out.body, "until the end");
        ck_assert_str_eq(out.headers, "Server=x;");
    }
    /* a Transfer-Encoding without chunked is not a length */
    parse_str("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", 0, ALL);
    ck_assert(out.rc == FBR_RESPONSE_MORE && out.until_eof && !out.http10);
    ck_assert_str_eq(out.body, "zz");
}
END_TEST

START_TEST(interim_then_final)
{
    /* the interim answers' headers are not the final answer's: the callback never sees them */
    expect("HTTP/1.1 100 Continue\r\nX-I: 1\r\n\r\n"
           "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nContent-Length: 7\r\n\r\n"
           "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-F: 2\r\n\r\nok",
           0, FBR_RESPONSE_DONE, 200, "ok", "X-F=2;", 0);
    /* an interim answer then a final one without a length: to the close */
    parse_str("HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nHTTP/1.0 200 OK\r\n\r\nabc", 0,
              ALL);
    ck_assert(out.rc == FBR_RESPONSE_MORE && out.until_eof && out.http10);
    /* a protocol switch nobody asked for */
    refused("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "101");
}
END_TEST

START_TEST(statuses_without_body)
{
    /* 204 and 304 have no body, whatever the headers say: the next bytes are not theirs */
    expect("HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nnext", 0, FBR_RESPONSE_DONE, 204,
           "", "", 4);
    expect("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n", 0,
           FBR_RESPONSE_DONE, 304, "", "", 3);
    /* nor has the answer to a HEAD request */
    expect("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 1, FBR_RESPONSE_DONE, 200, "", "", 0);
    expect("HTTP/1.0 200 OK\r\n\r\n", 1, FBR_RESPONSE_DONE, 200, "", "", 0);
}
END_TEST

START_TEST(malformed_status_line)
{
    static const char *const bad[] = {
        "NOPE\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
        "HTTP/1.1 600 High\r\n\r\n",
        "HTTP/1.x 200 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n",
        "HTTP/1.1 2x0 OK\r\n\r\n",
        " HTTP/1.1 200 OK\r\n\r\n",
        /* the status then anything but a SP or the end */
        "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/1.1 200\tOK\r\n\r\n",
        "HTTP/1.1 200-OK\r\n\r\n",
        /* versions: 1.<one digit> only; statuses 100..599 only */
        "HTTP/1.10 200 OK\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 000 Zero\r\n\r\n",
        "HTTP/1.1 999 High\r\n\r\n",
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(bad); i++)
        refused(bad[i], "malformed status line");
    /* a later minor version is read as 1.1; a status with no reason phrase nor SP is read */
    expect("HTTP/1.9 200 OK\r\nContent-Length: 1\r\n\r\nx", 0, FBR_RESPONSE_DONE, 200, "x", "", 0);
    ck_assert(!out.http10);
    /* a header line without a name or a colon */
    refused("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed response header");
    refused("HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "malformed response header");
    /* the caller refusing a header of its own */
    reject_header = 1;
    refused("HTTP/1.1 200 OK\r\nX-Bad: 1\r\nContent-Length: 0\r\n\r\n",
            "malformed response header");
    reject_header = 0;
}
END_TEST

START_TEST(malformed_chunk_size)
{
    static const char *const bad[] = {
        "-1", "0x10", " 5", "5 5", "", "g", "+5", "5,", "\t5",
        "10000000000000000",            /* 17 hex digits: beyond 64 bits */
        "FFFFFFFFFFFFFFFFF",            /* the same, all F */
        "99999999999999999999999999999" /* far beyond */
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(bad); i++) {
        char raw[256];
        snprintf(raw, sizeof(raw),
                 "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%s\r\nx\r\n0\r\n\r\n",
                 bad[i]);
        refused(raw, "malformed chunk size");
    }
    /* blanks before an extension or the end are allowed (RFC 9112's BWS) */
    expect("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\na\r\n1\t; e\r\nb\r\n0\r\n\r\n",
           0, FBR_RESPONSE_DONE, 200, "ab", "", 0);
    /* the largest size there is: waited for, not refused or wrapped */
    parse_str("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\nab", 0,
              ALL);
    ck_assert_int_eq(out.rc, FBR_RESPONSE_MORE);
    ck_assert_str_eq(out.body, "ab");
}
END_TEST

START_TEST(malformed_content_length)
{
    refused("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "two different Content-Length values");
    refused("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 00\r\nContent-Length: 1\r\n"
            "\r\nx",
            "two different Content-Length values");
    static const char *const bad[] = {"-1", "+5", "5, 5", "5 5", "x", "", "0x10",
                                      "9223372036854775808", "99999999999999999999"};
    for (size_t i = 0; i < FBR_ARRAY_LEN(bad); i++) {
        char raw[128];
        snprintf(raw, sizeof(raw), "HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\n", bad[i]);
        refused(raw, "malformed response header");
    }
    /* the largest length there is: waited for */
    parse_str("HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\nab", 0, ALL);
    ck_assert_int_eq(out.rc, FBR_RESPONSE_MORE);
    ck_assert_str_eq(out.body, "ab");
}
END_TEST

/* A header line of h bytes ("X-Pad: ppp..."), then what follows. */
static char *long_header(size_t h, const char *head, const char *tail)
{
    size_t n = strlen(head) + h + 2 + strlen(tail) + 1;
    char *raw = malloc(n);
    ck_assert_ptr_nonnull(raw);
    strcpy(raw, head);
    char *p = raw + strlen(raw);
    memcpy(p, "X-Pad: ", 7);
    memset(p + 7, 'p', h - 7);
    strcpy(p + h, "\r\n");
    strcat(raw, tail);
    return raw;
}

START_TEST(too_long_line)
{
    /* at the limit: read, across chains too */
    char *raw = long_header(FBR_RESPONSE_MAX_LINE, "HTTP/1.1 200 OK\r\n", "Content-Length: 0\r\n\r\n");
    for (enum feed how = ALL; how <= CHAINS; how++) {
        parse_str(raw, 0, how);
        ck_assert_msg(out.rc == FBR_RESPONSE_DONE, "feed %d: %s", how, out.error);
    }
    free(raw);
    /* one byte over: refused, in the head, a chunk size or a trailer */
    raw = long_header(FBR_RESPONSE_MAX_LINE + 1, "HTTP/1.1 200 OK\r\n", "\r\n");
    refused(raw, "response line too long");
    free(raw);
    raw = long_header(FBR_RESPONSE_MAX_LINE + 1,
                      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", "\r\n");
    refused(raw, "response line too long");
    free(raw);
    char *size = malloc(FBR_RESPONSE_MAX_LINE + 200);
    int n = snprintf(size, 200, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;");
    memset(size + n, 'e', FBR_RESPONSE_MAX_LINE);
    strcpy(size + n + FBR_RESPONSE_MAX_LINE, "\r\nx\r\n0\r\n\r\n");
    refused(size, "response line too long");
    /* a line that never ends: refused once it is over the limit, not waited for */
    size[n + FBR_RESPONSE_MAX_LINE] = '\0';
    refused(size, "response line too long");
    free(size);
}
END_TEST

/* n header lines of 15,000 bytes each (within the line limit) after head, then tail. */
static char *big_lines(const char *head, int n, const char *tail)
{
    size_t len = strlen(head) + (size_t)n * 15002 + strlen(tail) + 1;
    char *raw = malloc(len), *p = raw;
    ck_assert_ptr_nonnull(raw);
    p += sprintf(p, "%s", head);
    for (int i = 0; i < n; i++) {
        memcpy(p, "X-P: ", 5);
        memset(p + 5, 'p', 14995);
        memcpy(p + 15000, "\r\n", 2);
        p += 15002;
    }
    strcpy(p, tail);
    return raw;
}

START_TEST(too_large_head)
{
    /* four lines of 15,000 bytes: within the 64 KiB of a head */
    char *raw = big_lines("HTTP/1.1 200 OK\r\n", 4, "Content-Length: 2\r\n\r\nok");
    for (enum feed how = ALL; how <= CHAINS; how++) {
        parse_str(raw, 0, how);
        ck_assert_msg(out.rc == FBR_RESPONSE_DONE, "feed %d: %s", how, out.error);
        ck_assert_str_eq(out.body, "ok");
    }
    free(raw);
    /* five: over */
    raw = big_lines("HTTP/1.1 200 OK\r\n", 5, "Content-Length: 0\r\n\r\n");
    refused(raw, "response headers too large");
    free(raw);
    /* interim heads count with the final one */
    raw = big_lines("HTTP/1.1 100 Continue\r\n", 3,
                    "\r\nHTTP/1.1 103 Early Hints\r\nX-Pad: 1\r\n\r\n"
                    "HTTP/1.1 200 OK\r\nX-Last: 1\r\n\r\n");
    char *both = malloc(strlen(raw) + 2 * 15002 + 64);
    ck_assert_ptr_nonnull(both);
    char *two = big_lines("", 2, "Content-Length: 0\r\n\r\n");
    strcpy(both, raw);
    strcpy(both + strlen(both) - 2, two); /* the two lines before the final head's end */
    refused(both, "response headers too large");
    free(both);
    free(two);
    free(raw);
    /* and so do trailers */
    raw = big_lines("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n", 5,
                    "\r\n");
    refused(raw, "response headers too large");
    free(raw);
    /* chunk-size lines are body framing, not head: 30,000 chunks (150,000 bytes of sizes and
     * CRLFs) read whole */
    static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    size_t len = sizeof(head) - 1 + 30000 * 6 + 5;
    raw = malloc(len + 1);
    ck_assert_ptr_nonnull(raw);
    char *p = raw + sprintf(raw, "%s", head);
    for (int i = 0; i < 30000; i++)
        p += sprintf(p, "1\r\n%c\r\n", 'a' + i % 26);
    strcpy(p, "0\r\n\r\n");
    for (enum feed how = ALL; how <= CHAINS; how++) {
        parse_str(raw, 0, how);
        ck_assert_msg(out.rc == FBR_RESPONSE_DONE, "feed %d: %s", how, out.error);
        ck_assert_uint_eq(out.body_len, 30000);
        ck_assert_int_eq(out.body[26], 'a');
    }
    free(raw);
}
END_TEST

/* A line at the limit whose CR has come and whose LF has not yet is waited for, not refused:
 * fed in two reads split between them, as one chain and as two. */
START_TEST(line_at_limit_split_between_cr_and_lf)
{
    char *raw =
        long_header(FBR_RESPONSE_MAX_LINE, "HTTP/1.1 200 OK\r\n", "Content-Length: 2\r\n\r\nok");
    size_t len = strlen(raw), cut = strlen("HTTP/1.1 200 OK\r\n") + FBR_RESPONSE_MAX_LINE + 1;
    ck_assert_int_eq(raw[cut - 1], '\r');
    for (int chains = 0; chains < 2; chains++) {
        memset(&out, 0, sizeof(out));
        struct fbr_response p;
        fbr_response_init(&p, on_header, &out);
        struct evbuffer *in = evbuffer_new();
        evbuffer_add(in, raw, cut);
        ck_assert_msg(step(&p, in) == 1, "chains %d: %s", chains, p.error ? p.error : "-");
        if (chains)
            evbuffer_add_reference(in, raw + cut, len - cut, NULL, NULL);
        else
            evbuffer_add(in, raw + cut, len - cut);
        step(&p, in);
        ck_assert_msg(out.rc == FBR_RESPONSE_DONE, "chains %d: %s", chains,
                      p.error ? p.error : "-");
        ck_assert_uint_eq(out.body_len, 2);
        evbuffer_free(in);
    }
    free(raw);
    /* one byte more than a line and its CR, no LF: refused then */
    raw = long_header(FBR_RESPONSE_MAX_LINE + 2, "HTTP/1.1 200 OK\r\n", "");
    raw[strlen(raw) - 2] = '\0';
    refused(raw, "response line too long");
    free(raw);
}
END_TEST

/* RFC 9110 5.5: a NUL or a lone CR in a line is refused, not read up to (a Content-Length of
 * "5\0 6" was 5) nor passed on. */
START_TEST(nul_or_cr_inside_a_line)
{
    static const struct {
        const char *raw;
        size_t len;
    } bad[] = {
#define RAW(s) {s, sizeof(s) - 1}
        RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\0 6\r\n\r\nhello"),
        RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\r6\r\n\r\nhello"),
        RAW("HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n"),
        RAW("HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n"),
        RAW("HTTP/1.1 200 OK\0\r\nContent-Length: 0\r\n\r\n"),
        RAW("HTTP/1.1 200 OK\r\nContent-Length: 0\r\r\n\r\n"),
        RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\0\r\nhello\r\n0\r\n\r\n"),
        RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: \0\r\n\r\n"),
#undef RAW
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(bad); i++)
        refused_n(bad[i].raw, bad[i].len, "NUL or CR inside a response line");
    /* bare LFs end lines, a CR before a LF is part of the end */
    expect("HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 0, FBR_RESPONSE_DONE, 200, "ok", "", 0);
}
END_TEST

/* RFC 9112 5.1, 5.2: a field name is a token right before its colon; a folded line is refused.
 * Before, "Content-Length : 5" went to the callback as another header and the body ran to the
 * close, and " X: y" was a header named " X". */
START_TEST(field_names_and_folded_lines)
{
    refused("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", "malformed response header");
    refused("HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",
            "malformed response header");
    refused("HTTP/1.1 200 OK\r\nX(: x\r\nContent-Length: 0\r\n\r\n", "malformed response header");
    refused("HTTP/1.1 200 OK\r\nX-A: 1\r\n more: text\r\nContent-Length: 0\r\n\r\n",
            "folded response header line");
    refused("HTTP/1.1 200 OK\r\nX-A: 1\r\n\tcontinued\r\nContent-Length: 0\r\n\r\n",
            "folded response header line");
    refused("HTTP/1.1 200 OK\r\n X-A: 1\r\nContent-Length: 0\r\n\r\n",
            "folded response header line");
    /* every tchar is a name's */
    expect("HTTP/1.1 200 OK\r\nX!#$%&'*+-.^_`|~9: v\r\nContent-Length: 0\r\n\r\n", 0,
           FBR_RESPONSE_DONE, 200, "", "X!#$%&'*+-.^_`|~9=v;", 0);
}
END_TEST

/* RFC 9112 6.1, 6.3: the codings of Transfer-Encoding, every such line in order, decide the
 * framing over Content-Length; chunked only when it is the last. */
START_TEST(transfer_codings)
{
    /* chunked not last: the body runs to the close, its chunk framing is body (before: read as
     * chunked, done after "hello") */
    static const char not_last[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                                   "5\r\nhello\r\n0\r\n\r\n";
    for (enum feed how = ALL; how <= CHAINS; how++) {
        parse_str(not_last, 0, how);
        ck_assert_int_eq(out.rc, FBR_RESPONSE_MORE);
        ck_assert(out.until_eof && !out.conn_close);
        ck_assert_str_eq(out.body, "5\r\nhello\r\n0\r\n\r\n");
    }
    /* a coding other than chunked with a Content-Length: to the close, not the length (before:
     * 2 bytes), and the connection ends after it */
    parse_str("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nabcd", 0,
              ALL);
    ck_assert(out.rc == FBR_RESPONSE_MORE && out.until_eof);
    ck_assert_str_eq(out.body, "abcd");
    /* the lines in order: chunked then gzip is not chunked (before: the last line alone) */
    parse_str("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"
              "Content-Length: 3\r\n\r\nabcdef",
              0, ALL);
    ck_assert(out.rc == FBR_RESPONSE_MORE && out.until_eof);
    ck_assert_str_eq(out.body, "abcdef");
    expect("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
           "2\r\nab\r\n0\r\n\r\n",
           0, FBR_RESPONSE_DONE, 200, "ab", "", 0);
    /* parameters and empty list elements */
    expect("HTTP/1.1 200 OK\r\nTransfer-Encoding: , gzip;level=1 ,CHUNKED,\r\n\r\n"
           "2\r\nab\r\n0\r\n\r\n",
           0, FBR_RESPONSE_DONE, 200, "ab", "", 0);
    /* chunked twice, an empty list, a coding that is no token */
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            "chunked applied twice");
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip, chunked"
            "\r\n\r\n0\r\n\r\n",
            "chunked applied twice");
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n", "malformed Transfer-Encoding");
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: , \r\n\r\n", "malformed Transfer-Encoding");
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
            "malformed Transfer-Encoding");
    /* in an HTTP/1.0 answer the framing is faulty, with or without a length */
    refused("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 response");
    refused("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 response");
    /* Transfer-Encoding and Content-Length: chunked wins and the connection must end after */
    parse_str("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
              "2\r\nab\r\n0\r\n\r\n",
              0, ALL);
    ck_assert_int_eq(out.rc, FBR_RESPONSE_DONE);
    ck_assert_str_eq(out.body, "ab");
    struct fbr_response p;
    fbr_response_init(&p, NULL, NULL);
    struct evbuffer *in = evbuffer_new();
    evbuffer_add_printf(in, "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n"
                            "Content-Length: 0\r\n\r\n");
    size_t n;
    ck_assert_int_eq(fbr_response_parse(&p, in, &n), FBR_RESPONSE_DONE);
    ck_assert(p.close_after && !p.conn_close);
    /* either alone leaves the connection usable; an interim answer's do not count */
    fbr_response_reset(&p, 0);
    evbuffer_add_printf(in, "HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    ck_assert_int_eq(fbr_response_parse(&p, in, &n), FBR_RESPONSE_DONE);
    ck_assert(!p.close_after);
    fbr_response_reset(&p, 0);
    evbuffer_add_printf(in, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    ck_assert_int_eq(fbr_response_parse(&p, in, &n), FBR_RESPONSE_DONE);
    ck_assert(!p.close_after);
    evbuffer_free(in);
}
END_TEST

/* A trailer line must be a field line: a chunked body missing its last CRLF does not swallow the
 * next answer as trailers (before: read up to the next empty line and dropped). */
START_TEST(trailer_lines)
{
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "malformed response trailer");
    refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n folded: x\r\n\r\n",
            "malformed response trailer");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("response");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, content_length_body);
    tcase_add_test(tc, chunked_with_extensions_and_trailers);
    tcase_add_test(tc, chunks_split_across_reads);
    tcase_add_test(tc, body_until_eof);
    tcase_add_test(tc, interim_then_final);
    tcase_add_test(tc, statuses_without_body);
    tcase_add_test(tc, malformed_status_line);
    tcase_add_test(tc, malformed_chunk_size);
    tcase_add_test(tc, malformed_content_length);
    tcase_add_test(tc, too_long_line);
    tcase_add_test(tc, too_large_head);
    tcase_add_test(tc, line_at_limit_split_between_cr_and_lf);
    tcase_add_test(tc, nul_or_cr_inside_a_line);
    tcase_add_test(tc, field_names_and_folded_lines);
    tcase_add_test(tc, transfer_codings);
    tcase_add_test(tc, trailer_lines);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
