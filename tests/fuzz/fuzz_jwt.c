/*
 * fuzz_jwt.c - libFuzzer target for jwt.c, the signed-request check in front of the add-on's
 * room_message webhook and configuration page.  Arbitrary bytes go in as the query string, the
 * Authorization header and the webhook body; a second pass signs the input's JSON (when it is
 * an object) with the known secret so that the claim checks behind the signature are reached
 * too.  Aborts when a request is accepted that should not be: a token whose header alg is not
 * HS256, or whose signature was not made with the installation's secret.
 *
 * Input: byte 0 picks where the token goes (query, "JWT ", "JWT token="); then the token up to
 * the first NUL byte; the rest is the webhook body (parsed when it is JSON) and, in the second
 * pass, the claims to sign.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/jwt.h"

#define SECRET "fuzz-secret"

static int lookup(void *arg, struct fbr_slice iss, struct fbr_slice *secret)
{
    (void)arg;
    if (iss.len == 0 || iss.ptr[0] != 'i')
        return FBR_NOTFOUND;
    *secret = FBR_SLICE(SECRET);
    return FBR_OK;
}

static enum fbr_jwt_err check(unsigned where, const char *tok, json_t *body)
{
    size_t n = strlen(tok);
    char *buf = malloc(n + 32);
    const char *auth = NULL;
    struct fbr_slice query = {"", 0};
    switch (where % 3) {
    case 0:
        memcpy(buf, "signed_request=", 15);
        memcpy(buf + 15, tok, n + 1);
        query = fbr_slice_from(buf);
        break;
    case 1:
        memcpy(buf, "JWT ", 4);
        memcpy(buf + 4, tok, n + 1);
        auth = buf;
        break;
    default:
        memcpy(buf, "JWT token=", 10);
        memcpy(buf + 10, tok, n + 1);
        auth = buf;
        break;
    }
    struct fbr_jwt_claims c;
    enum fbr_jwt_err rc = fbr_jwt_verify_request(query, auth, body, lookup, NULL, 1700000000, &c);
    if (rc == FBR_JWT_OK && (!c.claims || c.iss.len == 0))
        abort();
    fbr_jwt_claims_clear(&c);
    free(buf);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned where = data[0];
    const char *p = (const char *)data + 1;
    size_t rest = size - 1;
    const char *nul = memchr(p, '\0', rest);
    size_t toklen = nul ? (size_t)(nul - p) : rest;
    char *tok = malloc(toklen + 1);
    memcpy(tok, p, toklen);
    tok[toklen] = '\0';
    json_t *body = NULL;
    if (nul)
        body = json_loadb(nul + 1, rest - toklen - 1, 0, NULL);

    /* Pass 1: the raw token.  Without the secret nobody can be accepted, except by a token
     * that really is HS256-signed with it (the fuzzer will not find one). */
    if (check(where, tok, body) == FBR_JWT_OK)
        abort();

    /* Pass 2: sign the body as claims, with HS256 and with a refused alg. */
    if (json_is_object(body)) {
        char *good = fbr_jwt_sign(body, FBR_SLICE(SECRET), NULL);
        check(where, good, body);
        free(good);
        char *bad = fbr_jwt_sign(body, FBR_SLICE(SECRET), (where & 4) ? "none" : "HS512");
        if (check(where, bad, body) == FBR_JWT_OK)
            abort();
        free(bad);
        char *other = fbr_jwt_sign(body, FBR_SLICE("other"), NULL);
        enum fbr_jwt_err rc = check(where, other, body);
        if (rc == FBR_JWT_OK)
            abort();
        free(other);
    }
    json_decref(body);
    free(tok);
    return 0;
}
