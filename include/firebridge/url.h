/*
 * url.h - the one URL parser.  Every module that reads an outbound URL takes its parts from here:
 * the template engine's URL check, the delivery engine's destination and token keys, the HTTP
 * client's host, port and request target, and the log masker.  There is one rule set for what
 * firebridge can send to (fbr_url_parse) and one lenient splitter for reading the parts of any
 * URL-like text (fbr_url_split); the rule set is written once, in url.c.
 *
 * Parts are borrowed slices into the caller's bytes; nothing is allocated or copied, and nothing
 * needs NUL termination.  A part that is absent has ptr NULL and len 0 (an empty but present part,
 * "http://h:/" or "http://h/?", has a non-NULL ptr and len 0).
 */
#ifndef FIREBRIDGE_URL_H
#define FIREBRIDGE_URL_H

#include <stdint.h>

#include "firebridge/common.h"

/* The longest host name a URL may carry (RFC 1035: 253 characters). */
#define FBR_URL_HOST_MAX 253

struct fbr_url {
    struct fbr_slice scheme;    /* "http" / "https", as written (any case) */
    struct fbr_slice authority; /* everything between "//" and the path: [userinfo@]host[:port] */
    struct fbr_slice userinfo;  /* before the last '@' of the authority */
    struct fbr_slice host;      /* an IPv6 literal without its brackets */
    struct fbr_slice port;      /* the digits after ':' */
    struct fbr_slice path;      /* from the '/' after the authority; may be empty */
    struct fbr_slice query;     /* after '?', without it */
    struct fbr_slice fragment;  /* after '#', without it */
    unsigned port_num;          /* the port, or the scheme's default (80, 443); fbr_url_parse */
    int tls;                    /* scheme is https; fbr_url_parse */
    int ipv6;                   /* the host was written in brackets */
};

/*
 * Splits s[0..n) into its parts by syntax alone: "scheme://authority" and the rest.  Nothing is
 * judged except that the scheme is followed by "://".  Returns FBR_OK, or FBR_INVALID when s has
 * no "scheme://" (then only path, query and fragment are set, as if s were a request target).
 */
int fbr_url_split(const char *s, size_t n, struct fbr_url *u);

/*
 * The rule set for a URL firebridge sends to: an absolute http:// or https:// URL (scheme in any
 * case) with a host (a name of letters, digits, '-', '.', '_', '~', or an IPv6 literal in
 * brackets) of at most FBR_URL_HOST_MAX bytes, an optional port 1-65535, no userinfo, and no byte
 * that never stands unencoded in a URL (space, controls, non-ASCII, "<>\^`{|}).  Returns FBR_OK
 * with every part of *u set, or FBR_INVALID with *why set to a static sentence naming the reason.
 */
int fbr_url_parse(const char *s, size_t n, struct fbr_url *u, const char **why);

/*
 * The same rules for the start of a URL whose rest is not known yet (a template whose first
 * literal holds the scheme and the authority, or a rendered URL's first bytes): checks the scheme
 * and the authority only, not the bytes (see fbr_url_bytes_ok()).  complete says that s is the
 * whole URL.  Returns FBR_OK, FBR_INVALID with *why set, or FBR_AGAIN when complete is 0 and the
 * authority does not end within s.
 */
int fbr_url_parse_head(const char *s, size_t n, int complete, struct fbr_url *u, const char **why);

/* Whether s[0..n) holds no byte that never stands unencoded in a URL (see fbr_url_parse()). */
int fbr_url_bytes_ok(const char *s, size_t n);

/* The request target of a parsed URL: the path and the query with its '?', as one slice into the
 * URL (the fragment is never sent).  The caller adds "/" when it does not start with one. */
struct fbr_slice fbr_url_target(const struct fbr_url *u);

/*
 * A parsed URL kept apart from its bytes, so that a URL is parsed once per delivery however often
 * it is read: the parts as offsets from the URL's first byte, valid over any copy of the same
 * bytes (the webhook renders a URL, the delivery engine copies it into its store, which moves
 * when the delivery is compacted, and the client sends it).  A zeroed one holds nothing.
 */
struct fbr_url_pos {
    uint32_t n;              /* the URL's length; 0: nothing kept */
    uint32_t off[8], len[8]; /* per part, in struct fbr_url's order; off UINT32_MAX: absent */
    uint32_t port_num;
    uint8_t tls, ipv6;
};

/* Keeps u, a successful fbr_url_parse() of s[0..n), in *pos.  A URL longer than 4 GiB - 2 is
 * not kept (pos zeroed: its readers parse the bytes themselves). */
void fbr_url_pos_keep(const struct fbr_url *u, const char *s, size_t n, struct fbr_url_pos *pos);

/*
 * The parse kept in pos as slices into s[0..n), a copy of the bytes it was kept from: FBR_OK, or
 * FBR_NOTFOUND when pos holds nothing or was kept from a URL of another length (then parse s).
 */
int fbr_url_pos_load(const struct fbr_url_pos *pos, const char *s, size_t n, struct fbr_url *u);

#endif
