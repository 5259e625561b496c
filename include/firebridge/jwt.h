/*
 * jwt.h - verification of the JSON Web Tokens HipChat signs its add-on webhooks and UI pages
 * with (hipchat-api.md §5): HS256 keyed with the installation's oauthSecret, claims iss (the
 * oauthId), sub, iat, exp, jti, context{room_id, user_tz}.  It sits at the head of the room ->
 * timeline path: the add-on's room_message webhook and configuration page call
 * fbr_jwt_verify_request() before anything else looks at the request.  Pure functions: no
 * allocation survives a call except the claims handed back as a new reference, no clock read
 * (the caller passes now), no logging.
 *
 * The order of checks is the spec's: find the token (query `signed_request=`, header
 * `Authorization: JWT <jwt>` or `Authorization: JWT token=<jwt>`), bound its size, decode the
 * header and claims unverified only to read `iss`, load that installation's secret through the
 * caller's lookup, verify the signature with the algorithm pinned to HS256 (the header's `alg`
 * must say exactly "HS256": `none`, HS384, RS256 and anything else are refused before any key
 * is used), compare in constant time, then `exp` (required, with FBR_JWT_LEEWAY_S), `iat`
 * (required, not later than now + FBR_JWT_LEEWAY_S), and the body's `oauth_client_id`, when
 * present, equal to `iss`.  A body carrying `oauth_client_id` never replaces a signature.
 */
#ifndef FIREBRIDGE_JWT_H
#define FIREBRIDGE_JWT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "firebridge/common.h"

/* Longest token accepted, bytes (HipChat's are about 400); longer ones are refused unread. */
#define FBR_JWT_MAX_LEN 4096
/* Clock skew allowed on exp and iat, seconds. */
#define FBR_JWT_LEEWAY_S 30

/* Why a request was refused; the names are the `reason` label of the add-on's metrics. */
#define FBR_JWT_ERR_MAP(X)                                                                         \
    X(OK, "ok")                                                                                    \
    X(MISSING, "missing")         /* no token in any of the three places */                        \
    X(OVERSIZE, "oversize")       /* longer than FBR_JWT_MAX_LEN */                                \
    X(MALFORMED, "malformed")     /* not three base64url parts of JSON objects */                  \
    X(ALG, "alg")                 /* alg other than HS256 (none included) */                       \
    X(NO_ISS, "no_iss")           /* iss absent or not a string */                                 \
    X(UNKNOWN_ISS, "unknown_iss") /* no installation with that oauthId */                          \
    X(SIGNATURE, "signature")     /* HMAC mismatch */                                              \
    X(EXPIRED, "expired")         /* exp absent, not a number, or past */                          \
    X(IAT, "iat")                 /* iat absent, not a number, or in the future */                 \
    X(CLIENT_ID, "client_id")     /* body's oauth_client_id differs from iss */

enum fbr_jwt_err {
#define FBR_X(name, text) FBR_JWT_##name,
    FBR_JWT_ERR_MAP(FBR_X)
#undef FBR_X
        FBR_JWT_ERR_COUNT
};

/* Static name of an error ("signature"), for logs and metric labels. */
const char *fbr_jwt_err_name(enum fbr_jwt_err e);

/* Where the token was found. */
enum fbr_jwt_where {
    FBR_JWT_IN_NONE,
    FBR_JWT_IN_QUERY,
    FBR_JWT_IN_HEADER,
    FBR_JWT_IN_HEADER_TOKEN
};

/*
 * Finds the token: the `signed_request` parameter of query (raw query string, no '?'), else the
 * Authorization header value (may be NULL) as "JWT <jwt>" or "JWT token=<jwt>" (scheme
 * case-insensitive).  Returns the location and the token as a slice borrowed from query or
 * authorization; FBR_JWT_IN_NONE when there is none.
 */
enum fbr_jwt_where fbr_jwt_find(struct fbr_slice query, const char *authorization,
                                struct fbr_slice *token);

/*
 * Decodes base64url without padding (RFC 7515 §2) from in into out (room for in.len * 3 / 4 + 1
 * bytes).  Returns the decoded length, or -1 for a character outside the alphabet, a '=', or a
 * length that no encoding has (len % 4 == 1).
 */
long fbr_base64url_decode(struct fbr_slice in, unsigned char *out);

/* Encodes len bytes as base64url without padding into out (room for len * 4 / 3 + 3 bytes,
 * NUL-terminated). */
void fbr_base64url_encode(const unsigned char *in, size_t len, char *out);

/*
 * Looks up the installation named by iss (not NUL-terminated); on success writes its secret
 * (borrowed, valid until the lookup's owner changes) and returns FBR_OK, else FBR_NOTFOUND.
 */
typedef int (*fbr_jwt_lookup_fn)(void *arg, struct fbr_slice iss, struct fbr_slice *secret);

/* A verified token. */
struct fbr_jwt_claims {
    json_t *claims;       /* new reference: the whole claims object */
    struct fbr_slice iss; /* borrowed from claims */
    enum fbr_jwt_where where;
};

/*
 * Verifies one token against the lookup at wall time now_s (seconds).  Returns FBR_JWT_OK and
 * fills *out (release with fbr_jwt_claims_clear), or an error (nothing in *out to release).
 */
enum fbr_jwt_err fbr_jwt_verify(struct fbr_slice token, fbr_jwt_lookup_fn lookup, void *arg,
                                uint64_t now_s, struct fbr_jwt_claims *out);

/*
 * The whole check of a signed request: fbr_jwt_find() on query and authorization,
 * fbr_jwt_verify(), then, when body (borrowed, may be NULL) is an object with
 * `oauth_client_id`, that value must be a string equal to iss.  Same result contract as
 * fbr_jwt_verify().
 */
enum fbr_jwt_err fbr_jwt_verify_request(struct fbr_slice query, const char *authorization,
                                        json_t *body, fbr_jwt_lookup_fn lookup, void *arg,
                                        uint64_t now_s, struct fbr_jwt_claims *out);

/* Drops the claims reference and zeroes *c. */
void fbr_jwt_claims_clear(struct fbr_jwt_claims *c);

/*
 * Signs claims (borrowed object) as an HS256 JWT with secret into a new heap string (caller
 * frees).  For the add-on's own tests and for contrib/hipchat-server; alg may be overridden
 * (NULL: "HS256") to produce the refused variants, which are still HMAC-SHA256 signed.
 */
char *fbr_jwt_sign(json_t *claims, struct fbr_slice secret, const char *alg);

#endif
