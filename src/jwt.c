/*
 * jwt.c - HS256 JSON Web Token verification for the HipChat add-on's signed requests (room
 * messages, the configuration page), on OpenSSL's HMAC with a constant-time comparison.  The
 * room -> timeline path starts here: nothing in a webhook body is trusted before this passed.
 * See jwt.h for the order of checks, which follows hipchat-api.md §5.
 */
#include "firebridge/jwt.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "firebridge/json.h"

static const char *const err_names[] = {
#define FBR_X(name, text) text,
    FBR_JWT_ERR_MAP(FBR_X)
#undef FBR_X
};

const char *fbr_jwt_err_name(enum fbr_jwt_err e)
{
    return (unsigned)e < FBR_JWT_ERR_COUNT ? err_names[e] : "?";
}

/* The value of parameter `name` in a raw query string (borrowed slice); 0 when absent. */
static int query_param(struct fbr_slice q, const char *name, struct fbr_slice *out)
{
    size_t nlen = strlen(name);
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > nlen && memcmp(p, name, nlen) == 0 && p[nlen] == '=') {
            *out = (struct fbr_slice){p + nlen + 1, (size_t)(stop - p) - nlen - 1};
            return 1;
        }
        p = amp ? amp + 1 : NULL;
    }
    return 0;
}

enum fbr_jwt_where fbr_jwt_find(struct fbr_slice query, const char *authorization,
                                struct fbr_slice *token)
{
    *token = (struct fbr_slice){NULL, 0};
    if (query.len && query_param(query, "signed_request", token))
        return FBR_JWT_IN_QUERY;
    if (!authorization)
        return FBR_JWT_IN_NONE;
    const char *a = authorization;
    while (*a == ' ')
        a++;
    if (strncasecmp(a, "JWT ", 4) != 0)
        return FBR_JWT_IN_NONE;
    a += 4;
    while (*a == ' ')
        a++;
    enum fbr_jwt_where where = FBR_JWT_IN_HEADER;
    if (strncasecmp(a, "token=", 6) == 0) {
        a += 6;
        where = FBR_JWT_IN_HEADER_TOKEN;
    }
    size_t n = strlen(a);
    while (n && a[n - 1] == ' ')
        n--;
    *token = (struct fbr_slice){a, n};
    return where;
}

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

long fbr_base64url_decode(struct fbr_slice in, unsigned char *out)
{
    if (in.len % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    long n = 0;
    for (size_t i = 0; i < in.len; i++) {
        int v = b64url_value((unsigned char)in.ptr[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return n;
}

void fbr_base64url_encode(const unsigned char *in, size_t len, char *out)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = alpha[(acc >> bits) & 63];
        }
    }
    if (bits)
        out[o++] = alpha[(acc << (6 - bits)) & 63];
    out[o] = '\0';
}

/* Decodes one base64url part into a JSON object (new reference) or NULL. */
static json_t *decode_object(struct fbr_slice part)
{
    unsigned char buf[FBR_JWT_MAX_LEN];
    long n = fbr_base64url_decode(part, buf);
    if (n <= 0)
        return NULL;
    json_t *j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* A NumericDate claim: a JSON integer or real >= 0; returns 0 and *out, or -1. */
static int numeric_date(json_t *claims, const char *name, double *out)
{
    json_t *v = json_object_get(claims, name);
    if (!json_is_number(v))
        return -1;
    *out = json_number_value(v);
    return *out >= 0 ? 0 : -1;
}

enum fbr_jwt_err fbr_jwt_verify(struct fbr_slice token, fbr_jwt_lookup_fn lookup, void *arg,
                                uint64_t now_s, struct fbr_jwt_claims *out)
{
    memset(out, 0, sizeof(*out));
    if (token.len == 0)
        return FBR_JWT_MISSING;
    if (token.len > FBR_JWT_MAX_LEN)
        return FBR_JWT_OVERSIZE;
    const char *d1 = memchr(token.ptr, '.', token.len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', token.len - (size_t)(d1 + 1 - token.ptr)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', token.len - (size_t)(d2 + 1 - token.ptr)))
        return FBR_JWT_MALFORMED;
    struct fbr_slice hpart = {token.ptr, (size_t)(d1 - token.ptr)};
    struct fbr_slice cpart = {d1 + 1, (size_t)(d2 - d1 - 1)};
    struct fbr_slice spart = {d2 + 1, token.len - (size_t)(d2 + 1 - token.ptr)};

    enum fbr_jwt_err rc = FBR_JWT_MALFORMED;
    json_t *header = decode_object(hpart);
    json_t *claims = decode_object(cpart);
    unsigned char sig[FBR_JWT_MAX_LEN];
    long siglen = fbr_base64url_decode(spart, sig);
    if (!header || !claims || siglen < 0)
        goto done;
    /* The algorithm is pinned: the header may only confirm it, never choose it. */
    const char *alg = json_string_value(json_object_get(header, "alg"));
    if (!alg || strcmp(alg, "HS256") != 0) {
        rc = FBR_JWT_ALG;
        goto done;
    }
    json_t *iss = json_object_get(claims, "iss");
    if (!json_is_string(iss) || json_string_length(iss) == 0) {
        rc = FBR_JWT_NO_ISS;
        goto done;
    }
    struct fbr_slice iss_s = {json_string_value(iss), json_string_length(iss)};
    struct fbr_slice secret;
    if (lookup(arg, iss_s, &secret) != FBR_OK || secret.len == 0) {
        rc = FBR_JWT_UNKNOWN_ISS;
        goto done;
    }
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    if (!HMAC(EVP_sha256(), secret.ptr, (int)secret.len, (const unsigned char *)token.ptr,
              hpart.len + 1 + cpart.len, mac, &maclen) ||
        (size_t)siglen != maclen || CRYPTO_memcmp(mac, sig, maclen) != 0) {
        rc = FBR_JWT_SIGNATURE;
        goto done;
    }
    double exp, iat;
    if (numeric_date(claims, "exp", &exp) != 0 || exp + FBR_JWT_LEEWAY_S <= (double)now_s) {
        rc = FBR_JWT_EXPIRED;
        goto done;
    }
    if (numeric_date(claims, "iat", &iat) != 0 || iat > (double)now_s + FBR_JWT_LEEWAY_S) {
        rc = FBR_JWT_IAT;
        goto done;
    }
    out->claims = claims;
    out->iss = iss_s;
    claims = NULL;
    rc = FBR_JWT_OK;
done:
    json_decref(header);
    json_decref(claims);
    return rc;
}

enum fbr_jwt_err fbr_jwt_verify_request(struct fbr_slice query, const char *authorization,
                                        json_t *body, fbr_jwt_lookup_fn lookup, void *arg,
                                        uint64_t now_s, struct fbr_jwt_claims *out)
{
    struct fbr_slice token;
    enum fbr_jwt_where where = fbr_jwt_find(query, authorization, &token);
    if (where == FBR_JWT_IN_NONE) {
        memset(out, 0, sizeof(*out));
        return FBR_JWT_MISSING;
    }
    enum fbr_jwt_err rc = fbr_jwt_verify(token, lookup, arg, now_s, out);
    if (rc != FBR_JWT_OK)
        return rc;
    out->where = where;
    json_t *cid = json_is_object(body) ? json_object_get(body, "oauth_client_id") : NULL;
    if (cid && (!json_is_string(cid) ||
                !fbr_slice_eq((struct fbr_slice){json_string_value(cid), json_string_length(cid)},
                              out->iss))) {
        fbr_jwt_claims_clear(out);
        return FBR_JWT_CLIENT_ID;
    }
    return FBR_JWT_OK;
}

void fbr_jwt_claims_clear(struct fbr_jwt_claims *c)
{
    json_decref(c->claims);
    memset(c, 0, sizeof(*c));
}

char *fbr_jwt_sign(json_t *claims, struct fbr_slice secret, const char *alg)
{
    json_t *h = json_pack("{s:s, s:s}", "alg", alg ? alg : "HS256", "typ", "JWT");
    char *hs = fbr_json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
    char *cs = fbr_json_dumps(claims, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(h);
    size_t hl = strlen(hs), cl = strlen(cs);
    size_t cap = (hl + cl) * 4 / 3 + 4 + 2 + (EVP_MAX_MD_SIZE * 4 / 3 + 4) + 1;
    char *tok = fbr_xmalloc(cap);
    fbr_base64url_encode((const unsigned char *)hs, hl, tok);
    size_t n = strlen(tok);
    tok[n++] = '.';
    fbr_base64url_encode((const unsigned char *)cs, cl, tok + n);
    n += strlen(tok + n);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    HMAC(EVP_sha256(), secret.ptr, (int)secret.len, (const unsigned char *)tok, n, mac, &maclen);
    tok[n++] = '.';
    fbr_base64url_encode(mac, maclen, tok + n);
    free(hs);
    free(cs);
    return tok;
}
