/*
 * response.c - the one HTTP/1.x response reader of the outbound side (see response.h): status
 * line, framing headers, 1xx answers, bodies by length, chunked or to the close, and the line and
 * head limits, read incrementally from an evbuffer.  The outbound client reads HipChat's answers
 * with it on every delivery, so it allocates nothing and makes no call per byte: a line is found
 * with memchr in the input's first chain and copied once (take_line), a body is handed back to
 * the caller as one count per read.
 */
#include "firebridge/response.h"

#include <event2/buffer.h>
#include <string.h>
#include <strings.h>

#include "firebridge/http.h"

void fbr_response_init(struct fbr_response *p, fbr_response_header_fn on_header, void *arg)
{
    p->on_header = on_header;
    p->arg = arg;
    fbr_response_reset(p, 0);
}

void fbr_response_reset(struct fbr_response *p, int no_body)
{
    p->state = FBR_RESPONSE_STATUS;
    p->status = 0;
    p->http10 = p->conn_close = p->keep_alive = p->chunked = p->has_len = p->close_after = 0;
    p->te = p->te_chunked = 0;
    p->no_body = no_body != 0;
    p->remaining = 0;
    p->head_bytes = 0;
    p->error = NULL;
}

static int fail(struct fbr_response *p, const char *why)
{
    p->error = why;
    return FBR_RESPONSE_ERROR;
}

/*
 * Takes the next line of in (ended by LF, a CR before it dropped) into buf
 * (FBR_RESPONSE_MAX_LINE + 1 bytes), NUL-terminated, n its length: 1; 0 when the line has not
 * ended yet; -1 when it is longer than FBR_RESPONSE_MAX_LINE, known once it ends or once
 * FBR_RESPONSE_MAX_LINE + 2 bytes have come without a LF (not before: a line at the limit may
 * have its CR here and its LF still to come).  A line within the input's first
 * chain (a response almost always is) is found with memchr and copied, with no allocation per
 * line; one that spans chains is searched for across them (evbuffer_search_eol), so no byte is
 * moved more than once.
 */
static int take_line(struct evbuffer *in, char *buf, size_t *n)
{
    enum { MAX = FBR_RESPONSE_MAX_LINE };
    size_t avail = evbuffer_get_length(in), contig = evbuffer_get_contiguous_space(in);
    size_t look = contig < MAX + 2 ? contig : MAX + 2; /* a line, CR and LF */
    const char *p = look ? (const char *)evbuffer_pullup(in, (ev_ssize_t)look) : NULL;
    const char *lf = p ? memchr(p, '\n', look) : NULL;
    size_t len, used;
    if (lf) {
        len = (size_t)(lf - p);
        used = len + 1;
        if (len && p[len - 1] == '\r')
            len--;
        if (len > MAX)
            return -1;
        memcpy(buf, p, len);
    } else if (look == MAX + 2 || look == avail) {
        return look == MAX + 2 ? -1 : 0;
    } else {
        size_t eol = 0;
        struct evbuffer_ptr e = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_CRLF);
        if (e.pos < 0)
            return avail >= MAX + 2 ? -1 : 0;
        if ((size_t)e.pos > MAX)
            return -1;
        len = (size_t)e.pos;
        used = len + eol;
        evbuffer_copyout(in, buf, len);
    }
    buf[len] = '\0';
    *n = len;
    evbuffer_drain(in, used);
    return 1;
}

/* "HTTP/1.<digit> <3 digits>" then the end or a SP (the reason phrase after it): 0 with the
 * minor version and a status in 100..599, else -1.  By hand: no sscanf per response. */
static int status_line(const char *line, size_t n, unsigned *minor, int *status)
{
    if (n < 12 || memcmp(line, "HTTP/1.", 7) != 0 || line[7] < '0' || line[7] > '9' ||
        line[8] != ' ')
        return -1;
    int st = 0;
    for (size_t i = 9; i < 12; i++) {
        if (line[i] < '0' || line[i] > '9')
            return -1;
        st = st * 10 + (line[i] - '0');
    }
    if ((n > 12 && line[12] != ' ') || st < 100 || st > 599)
        return -1;
    *minor = (unsigned)(line[7] - '0');
    *status = st;
    return 0;
}

static int blank(char c)
{
    return c == ' ' || c == '\t';
}

/* s without the blanks around it (the end written as a NUL). */
static char *trim(char *s)
{
    while (blank(*s))
        s++;
    size_t n = strlen(s);
    while (n && blank(s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Whether the comma-separated list v holds tok (ASCII case-insensitive). */
static int has_token(const char *v, const char *tok)
{
    size_t n = strlen(tok);
    for (const char *p = v; *p;) {
        while (*p == ',' || blank(*p))
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        size_t len = (size_t)(e - p);
        while (len && blank(p[len - 1]))
            len--;
        if (len == n && strncasecmp(p, tok, n) == 0)
            return 1;
        p = e;
    }
    return 0;
}

/* Content-Length's value (trimmed): 1*DIGIT up to 2^63 - 1, else -1 (a sign, a list, a blank
 * inside, an overflow). */
static int64_t content_length(const char *v)
{
    uint64_t x = 0;
    const char *d = v;
    for (; *d >= '0' && *d <= '9'; d++) {
        if (x > ((uint64_t)INT64_MAX - (uint64_t)(*d - '0')) / 10)
            return -1;
        x = x * 10 + (uint64_t)(*d - '0');
    }
    return d == v || *d ? -1 : (int64_t)x;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A chunk-size line (RFC 9112 7.1): 1*HEXDIG, then blanks and a ";" extension, or the end; 0
 * with the size, -1 for anything else ("-1", "0x10", " 5", "5 5", more than 64 bits). */
static int chunk_size(const char *s, uint64_t *out)
{
    uint64_t x = 0;
    const char *d = s;
    int v;
    for (; (v = hexval(*d)) >= 0; d++) {
        if (x >> 60)
            return -1;
        x = x << 4 | (uint64_t)v;
    }
    if (d == s)
        return -1;
    while (blank(*d))
        d++;
    if (*d && *d != ';')
        return -1;
    *out = x;
    return 0;
}

/*
 * A Transfer-Encoding value (trimmed), the codings of every such line in order (RFC 9112 6.1):
 * p->chunked while chunked is the last so far, p->te_chunked once it came.  0, or
 * FBR_RESPONSE_ERROR for a coding that is no token, an empty list, chunked twice.
 */
static int transfer_encoding(struct fbr_response *p, const char *v)
{
    int codings = 0;
    for (const char *c = v; *c;) {
        while (*c == ',' || blank(*c)) /* empty list elements are allowed (RFC 9110 5.6.1) */
            c++;
        if (!*c)
            break;
        const char *e = c;
        while (*e && *e != ',' && *e != ';' && !blank(*e))
            e++;
        size_t len = (size_t)(e - c);
        if (!fbr_http_token(c, len))
            return fail(p, "malformed Transfer-Encoding");
        int chunked = len == 7 && strncasecmp(c, "chunked", 7) == 0;
        if (chunked && p->te_chunked)
            return fail(p, "chunked applied twice");
        p->te_chunked |= (unsigned char)chunked;
        p->chunked = (unsigned char)chunked;
        codings++;
        while (*e && *e != ',') /* its parameters */
            e++;
        c = e;
    }
    if (!codings)
        return fail(p, "malformed Transfer-Encoding");
    p->te = 1;
    return 0;
}

/* Where the colon of a field line (len bytes) is, after a name that is a token; NULL for a line
 * that is no field line (no colon, no name, a blank in or before the name: a folded line). */
static char *field_colon(char *line, size_t len)
{
    char *colon = memchr(line, ':', len);
    return colon && fbr_http_token(line, (size_t)(colon - line)) ? colon : NULL;
}

/* One header line (NUL-terminated, len bytes): the framing headers are the parser's, the others
 * of a final answer go to on_header.  0, or FBR_RESPONSE_ERROR. */
static int header(struct fbr_response *p, char *line, size_t len)
{
    char *colon = field_colon(line, len);
    if (!colon)
        return fail(p,
                    blank(line[0]) ? "folded response header line" : "malformed response header");
    size_t nlen = (size_t)(colon - line);
    /* the lengths first: one strncasecmp per line at most */
    if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
        int64_t v = content_length(trim(colon + 1));
        if (v < 0)
            return fail(p, "malformed response header");
        if (p->has_len && p->remaining != (uint64_t)v) /* RFC 9112 6.3 */
            return fail(p, "two different Content-Length values");
        p->has_len = 1;
        p->remaining = (uint64_t)v;
    } else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
        if (transfer_encoding(p, trim(colon + 1)) != 0)
            return FBR_RESPONSE_ERROR;
    } else if (nlen == 10 && strncasecmp(line, "connection", 10) == 0) {
        char *v = trim(colon + 1);
        if (has_token(v, "close"))
            p->conn_close = 1;
        if (has_token(v, "keep-alive"))
            p->keep_alive = 1;
    } else if (p->on_header && p->status >= 200 &&
               p->on_header(p->arg, line, nlen, trim(colon + 1)) != 0) {
        return fail(p, "malformed response header");
    }
    return 0;
}

/* The final head is complete: where its body, if any, is (RFC 9112 6.3).  FBR_RESPONSE_DONE
 * when it has none, FBR_RESPONSE_MORE to read it, FBR_RESPONSE_ERROR. */
static int head_done(struct fbr_response *p)
{
    if (p->te) {
        /* RFC 9112 6.1: an HTTP/1.0 message with a Transfer-Encoding has faulty framing */
        if (p->http10)
            return fail(p, "Transfer-Encoding in an HTTP/1.0 response");
        /* 6.3: the Transfer-Encoding wins, and the connection ends after this answer: the two
         * disagreeing is how responses are split */
        if (p->has_len)
            p->close_after = 1;
    }
    if (p->no_body || p->status == 204 || p->status == 304)
        return FBR_RESPONSE_DONE;
    if (p->chunked) {
        p->state = FBR_RESPONSE_CHUNK_SIZE;
    } else if (p->te) {
        p->state = FBR_RESPONSE_UNTIL_EOF; /* chunked is not the last coding: to the close */
    } else if (p->has_len) {
        p->state = FBR_RESPONSE_LEN;
        if (p->remaining == 0)
            return FBR_RESPONSE_DONE;
    } else {
        p->state = FBR_RESPONSE_UNTIL_EOF; /* RFC 9112 6.3: the close ends it */
    }
    return FBR_RESPONSE_MORE;
}

int fbr_response_parse(struct fbr_response *p, struct evbuffer *in, size_t *n)
{
    char line[FBR_RESPONSE_MAX_LINE + 1];
    for (;;) {
        size_t len = 0, avail;
        switch (p->state) {
        case FBR_RESPONSE_LEN:
            if (p->remaining == 0)
                return FBR_RESPONSE_DONE;
            avail = evbuffer_get_length(in);
            if (!avail)
                return FBR_RESPONSE_MORE;
            *n = avail < p->remaining ? avail : (size_t)p->remaining;
            p->remaining -= *n;
            return FBR_RESPONSE_BODY;
        case FBR_RESPONSE_CHUNK_DATA:
            if (p->remaining == 0) {
                p->state = FBR_RESPONSE_CHUNK_CRLF;
                continue;
            }
            avail = evbuffer_get_length(in);
            if (!avail)
                return FBR_RESPONSE_MORE;
            *n = avail < p->remaining ? avail : (size_t)p->remaining;
            p->remaining -= *n;
            return FBR_RESPONSE_BODY;
        case FBR_RESPONSE_UNTIL_EOF:
            *n = evbuffer_get_length(in);
            return *n ? FBR_RESPONSE_BODY : FBR_RESPONSE_MORE;
        default:
            break;
        }
        /* the line states */
        switch (take_line(in, line, &len)) {
        case 0:
            return FBR_RESPONSE_MORE;
        case -1:
            return fail(p, "response line too long");
        }
        /* RFC 9110 5.5: a NUL or a CR that does not end the line is never valid; LF ended it */
        if (memchr(line, '\0', len) || memchr(line, '\r', len))
            return fail(p, "NUL or CR inside a response line");
        if (p->state != FBR_RESPONSE_CHUNK_SIZE && p->state != FBR_RESPONSE_CHUNK_CRLF) {
            p->head_bytes += len + 2;
            if (p->head_bytes > FBR_RESPONSE_MAX_HEAD)
                return fail(p, "response headers too large");
        }
        switch (p->state) {
        case FBR_RESPONSE_STATUS: {
            unsigned minor;
            if (len == 0) /* tolerate a stray CRLF before the status line */
                continue;
            if (status_line(line, len, &minor, &p->status) != 0)
                return fail(p, "malformed status line");
            if (p->status == 101)
                return fail(p, "unrequested protocol switch (101)");
            p->http10 = minor == 0;
            p->state = FBR_RESPONSE_HEADERS;
            continue;
        }
        case FBR_RESPONSE_HEADERS:
            if (len > 0) {
                if (header(p, line, len) != 0)
                    return FBR_RESPONSE_ERROR;
                continue;
            }
            if (p->status < 200) { /* 1xx: the real response follows */
                p->state = FBR_RESPONSE_STATUS;
                p->has_len = p->chunked = p->te = p->te_chunked = 0;
                p->remaining = 0;
                continue;
            }
            switch (head_done(p)) {
            case FBR_RESPONSE_DONE:
                return FBR_RESPONSE_DONE;
            case FBR_RESPONSE_ERROR:
                return FBR_RESPONSE_ERROR;
            }
            continue;
        case FBR_RESPONSE_CHUNK_SIZE:
            if (chunk_size(line, &p->remaining) != 0)
                return fail(p, "malformed chunk size");
            p->state = p->remaining ? FBR_RESPONSE_CHUNK_DATA : FBR_RESPONSE_TRAILERS;
            continue;
        case FBR_RESPONSE_CHUNK_CRLF:
            if (len != 0)
                return fail(p, "malformed chunk end");
            p->state = FBR_RESPONSE_CHUNK_SIZE;
            continue;
        case FBR_RESPONSE_TRAILERS:
            if (len == 0)
                return FBR_RESPONSE_DONE;
            /* dropped, but a field line: a missing last CRLF does not swallow what follows */
            if (!field_colon(line, len))
                return fail(p, "malformed response trailer");
            continue;
        default:
            return fail(p, "response parser misused"); /* not reached */
        }
    }
}
