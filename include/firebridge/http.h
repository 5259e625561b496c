/*
 * http.h - the HTTP vocabulary shared by the inbound server and the outbound modules (webhooks,
 * delivery, client): the request methods firebridge knows, as one X-macro table that yields the
 * FBR_M_* bits (route masks, a webhook's method), their names and their parser.  The outbound
 * modules include this, not the inbound server's header.
 */
#ifndef FIREBRIDGE_HTTP_H
#define FIREBRIDGE_HTTP_H

#include <stddef.h>

/* X(NAME, bit index): NAME is the method's spelling on the wire. */
#define FBR_HTTP_METHOD_MAP(X)                                                                     \
    X(GET, 0)                                                                                      \
    X(POST, 1)                                                                                     \
    X(PUT, 2)                                                                                      \
    X(DELETE, 3)                                                                                   \
    X(PATCH, 4)                                                                                    \
    X(HEAD, 5)

enum fbr_http_method_bit {
#define FBR_X(name, i) FBR_M_##name = 1u << (i),
    FBR_HTTP_METHOD_MAP(FBR_X)
#undef FBR_X
};

/* The wire name of one FBR_M_* bit ("POST"), or NULL for anything else (a mask, 0). */
const char *fbr_http_method_name(unsigned bit);

/* Whether s[0..len) is a token (RFC 9110 5.6.2: one or more tchar), as a field name or a coding
 * name must be. */
int fbr_http_token(const char *s, size_t len);

/* The FBR_M_* bit of s[0..len) (exact case, or ASCII case-insensitive when nocase), or 0. */
unsigned fbr_http_method_parse(const char *s, size_t len, int nocase);

/* Writes the names of every bit of mask as "GET, HEAD" (an Allow header) into buf. */
void fbr_http_method_list(unsigned mask, char *buf, size_t len);

#endif
