/*
 * url.c - the one URL parser (see url.h): splits outbound URLs into slices and holds the single
 * rule set for what firebridge can send to.  Used by the template engine when a URL renders, by
 * the delivery engine when a request is queued, by the HTTP client before it connects and by the
 * log masker; a URL that one of them accepts, all of them accept.
 */
#include "firebridge/url.h"

#include <stddef.h>
#include <stdint.h>
#include <strings.h>

/* Bytes that never stand unencoded in a URL (RFC 3986 plus the space and controls): every
 * control, the space, '"', '<', '>', '\\', '^', '`', '{', '|', '}', DEL and every byte >= 0x80.
 * A table: every rendered URL is checked, several times per delivery. */
static const uint8_t url_bad[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0,
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

int fbr_url_bytes_ok(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++)
        bad |= url_bad[u[i]];
    return !bad;
}

static int host_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

static int ipv6_char(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
           c == ':' || c == '.';
}

static int scheme_char(unsigned char c, int first)
{
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    return first ? alpha : alpha || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
}

static struct fbr_slice slice(const char *a, const char *b)
{
    return (struct fbr_slice){a, (size_t)(b - a)};
}

/* Splits a request target (path, '?' query, '#' fragment) out of p[0..end): the first '#' ends
 * the path and the query, the first '?' before it ends the path (memchr: the target is most of
 * a URL's bytes). */
static void split_target(const char *p, const char *end, struct fbr_url *u)
{
    size_t n = (size_t)(end - p);
    const char *hash = n ? memchr(p, '#', n) : NULL;
    const char *tend = hash ? hash : end;
    const char *qm = tend > p ? memchr(p, '?', (size_t)(tend - p)) : NULL;
    u->path = slice(p, qm ? qm : tend);
    if (qm)
        u->query = slice(qm + 1, tend);
    if (hash)
        u->fragment = slice(hash + 1, end);
}

/* Splits the authority into userinfo, host and port (by syntax; an unterminated '[' leaves the
 * host empty with ipv6 set). */
static void split_authority(struct fbr_url *u)
{
    const char *a = u->authority.ptr, *end = a + u->authority.len;
    const char *at = NULL;
    for (const char *k = a; k < end; k++)
        if (*k == '@')
            at = k;
    if (at) {
        u->userinfo = slice(a, at);
        a = at + 1;
    }
    const char *hend;
    if (a < end && *a == '[') {
        u->ipv6 = 1;
        const char *rb = memchr(a, ']', (size_t)(end - a));
        if (!rb) {
            u->host = slice(a + 1, a + 1);
            return;
        }
        u->host = slice(a + 1, rb);
        hend = rb + 1;
    } else {
        hend = memchr(a, ':', (size_t)(end - a));
        if (!hend)
            hend = end;
        u->host = slice(a, hend);
    }
    if (hend < end && *hend == ':')
        u->port = slice(hend + 1, end);
}

int fbr_url_split(const char *s, size_t n, struct fbr_url *u)
{
    const char *end = s + n, *p = s;
    memset(u, 0, sizeof(*u));
    while (p < end && scheme_char((unsigned char)*p, p == s))
        p++;
    if (p == s || end - p < 3 || p[0] != ':' || p[1] != '/' || p[2] != '/') {
        split_target(s, end, u);
        return FBR_INVALID;
    }
    u->scheme = slice(s, p);
    const char *a = p + 3, *q = a;
    while (q < end && *q != '/' && *q != '?' && *q != '#')
        q++;
    u->authority = slice(a, q);
    split_authority(u);
    split_target(q, end, u);
    return FBR_OK;
}

/* The rules for the scheme and the authority, on a complete split. */
static int check_head(struct fbr_url *u, const char **why)
{
    const char *a = u->authority.ptr, *aend = a + u->authority.len;
    if (u->scheme.len == 4 && strncasecmp(u->scheme.ptr, "http", 4) == 0) {
        u->tls = 0;
        u->port_num = 80;
    } else if (u->scheme.len == 5 && strncasecmp(u->scheme.ptr, "https", 5) == 0) {
        u->tls = 1;
        u->port_num = 443;
    } else {
        *why = "URL is not an absolute http:// or https:// URL";
        return FBR_INVALID;
    }
    if (u->userinfo.ptr) {
        *why = "URL has userinfo (user:password@host): put credentials in a header instead";
        return FBR_INVALID;
    }
    if (u->ipv6) {
        const char *rb = memchr(a, ']', (size_t)(aend - a));
        if (!rb) {
            *why = "URL has an unterminated IPv6 address";
            return FBR_INVALID;
        }
        if (rb + 1 < aend && rb[1] != ':') {
            *why = "URL has a malformed host";
            return FBR_INVALID;
        }
        for (size_t k = 0; k < u->host.len; k++)
            if (!ipv6_char((unsigned char)u->host.ptr[k])) {
                *why = "URL has a malformed IPv6 address";
                return FBR_INVALID;
            }
    } else {
        for (size_t k = 0; k < u->host.len; k++)
            if (!host_char((unsigned char)u->host.ptr[k])) {
                *why = "URL host contains an invalid character";
                return FBR_INVALID;
            }
    }
    if (u->host.len == 0) {
        *why = "URL has an empty host";
        return FBR_INVALID;
    }
    if (u->host.len > FBR_URL_HOST_MAX) {
        *why = "URL host is longer than 253 bytes";
        return FBR_INVALID;
    }
    if (u->port.ptr) {
        unsigned long port = 0;
        if (u->port.len == 0) {
            *why = "URL has an empty port";
            return FBR_INVALID;
        }
        for (size_t k = 0; k < u->port.len; k++) {
            char c = u->port.ptr[k];
            if (c < '0' || c > '9' || (port = port * 10 + (unsigned long)(c - '0')) > 65535) {
                *why = "URL has an invalid port";
                return FBR_INVALID;
            }
        }
        if (port == 0) {
            *why = "URL has port 0 (ports are 1-65535)";
            return FBR_INVALID;
        }
        u->port_num = (unsigned)port;
    }
    return FBR_OK;
}

int fbr_url_parse_head(const char *s, size_t n, int complete, struct fbr_url *u, const char **why)
{
    if (fbr_url_split(s, n, u) != FBR_OK || u->scheme.len > 5) {
        if (!complete && n < 8)
            return FBR_AGAIN;
        *why = "URL is not an absolute http:// or https:// URL";
        return FBR_INVALID;
    }
    if (!complete && u->authority.ptr + u->authority.len == s + n)
        return FBR_AGAIN; /* the authority may go on in the bytes that follow */
    return check_head(u, why);
}

int fbr_url_parse(const char *s, size_t n, struct fbr_url *u, const char **why)
{
    if (!fbr_url_bytes_ok(s, n)) {
        memset(u, 0, sizeof(*u));
        *why = "URL contains a space, control, non-ASCII or unsafe character";
        return FBR_INVALID;
    }
    return fbr_url_parse_head(s, n, 1, u, why);
}

struct fbr_slice fbr_url_target(const struct fbr_url *u)
{
    const char *end = u->query.ptr ? u->query.ptr + u->query.len : u->path.ptr + u->path.len;
    return slice(u->path.ptr, end);
}

/* The parts of struct fbr_url that struct fbr_url_pos keeps, in its order. */
static const size_t pos_parts[8] = {
    offsetof(struct fbr_url, scheme), offsetof(struct fbr_url, authority),
    offsetof(struct fbr_url, userinfo), offsetof(struct fbr_url, host),
    offsetof(struct fbr_url, port), offsetof(struct fbr_url, path),
    offsetof(struct fbr_url, query), offsetof(struct fbr_url, fragment),
};

void fbr_url_pos_keep(const struct fbr_url *u, const char *s, size_t n, struct fbr_url_pos *pos)
{
    memset(pos, 0, sizeof(*pos));
    if (n == 0 || n >= UINT32_MAX)
        return;
    for (size_t i = 0; i < 8; i++) {
        const struct fbr_slice *part = (const void *)((const char *)u + pos_parts[i]);
        pos->off[i] = part->ptr ? (uint32_t)(part->ptr - s) : UINT32_MAX;
        pos->len[i] = (uint32_t)part->len;
    }
    pos->port_num = u->port_num;
    pos->tls = (uint8_t)u->tls;
    pos->ipv6 = (uint8_t)u->ipv6;
    pos->n = (uint32_t)n;
}

int fbr_url_pos_load(const struct fbr_url_pos *pos, const char *s, size_t n, struct fbr_url *u)
{
    if (pos->n == 0 || pos->n != n)
        return FBR_NOTFOUND;
    for (size_t i = 0; i < 8; i++) {
        struct fbr_slice *part = (void *)((char *)u + pos_parts[i]);
        part->ptr = pos->off[i] == UINT32_MAX ? NULL : s + pos->off[i];
        part->len = pos->len[i];
    }
    u->port_num = pos->port_num;
    u->tls = pos->tls;
    u->ipv6 = pos->ipv6;
    return FBR_OK;
}
