/*
 * test_jwt.c - unit tests for jwt.c, the signed-request check at the head of the room ->
 * timeline path: one table of tokens (valid in each of the three locations; alg none, HS384,
 * RS256; bad signature; tampered claims; expired; iat in the future; unknown iss; mismatched
 * oauth_client_id; truncated; non-base64url; oversize; missing) each with the one reason it must
 * be refused for, plus base64url decoding and the location finder.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/jwt.h"
#include "testsupport.h"

#define NOW 1700000000u
#define ISS "oauth-id-1"
#define SECRET "s3cret-of-install-1"

/* The test's installation store: one oauthId with its secret. */
static int lookup(void *arg, struct fbr_slice iss, struct fbr_slice *secret)
{
    (void)arg;
    if (!fbr_slice_eq(iss, FBR_SLICE(ISS)))
        return FBR_NOTFOUND;
    *secret = FBR_SLICE(SECRET);
    return FBR_OK;
}

static json_t *claims(const char *iss, long iat, long exp)
{
    return json_pack("{s:s, s:s, s:I, s:I, s:s, s:{s:s, s:I}}", "iss", iss, "sub", "42", "iat",
                     (json_int_t)iat, "exp", (json_int_t)exp, "jti", "j-1", "context", "user_tz",
                     "UTC", "room_id", (json_int_t)7);
}

static char *sign(const char *iss, long iat, long exp, const char *secret, const char *alg)
{
    json_t *c = claims(iss, iat, exp);
    char *t = fbr_jwt_sign(c, fbr_slice_from(secret), alg);
    json_decref(c);
    return t;
}

static char *b64url(const char *s)
{
    char *out = malloc(strlen(s) * 4 / 3 + 4);
    fbr_base64url_encode((const unsigned char *)s, strlen(s), out);
    return out;
}

enum kind {
    VALID,
    ALG_NONE,
    ALG_HS384,
    ALG_RS256,
    BAD_SIG,
    TAMPERED,
    EXPIRED,
    NO_EXP,
    IAT_FUTURE,
    UNKNOWN_ISS,
    CLIENT_ID_MISMATCH,
    CLIENT_ID_MATCH,
    CLIENT_ID_NOT_STRING,
    TRUNCATED,
    NON_B64,
    PADDED,
    OVERSIZE,
    MISSING,
    FOUR_PARTS,
    CLAIMS_NOT_OBJECT,
    UNSIGNED_BODY_ONLY,
    EXP_WITHIN_LEEWAY
};

static const struct row {
    const char *name;
    enum kind kind;
    enum fbr_jwt_where where;
    enum fbr_jwt_err want;
} rows[] = {
    {"valid in query", VALID, FBR_JWT_IN_QUERY, FBR_JWT_OK},
    {"valid in Authorization: JWT", VALID, FBR_JWT_IN_HEADER, FBR_JWT_OK},
    {"valid in Authorization: JWT token=", VALID, FBR_JWT_IN_HEADER_TOKEN, FBR_JWT_OK},
    {"alg none", ALG_NONE, FBR_JWT_IN_HEADER, FBR_JWT_ALG},
    {"alg HS384", ALG_HS384, FBR_JWT_IN_HEADER, FBR_JWT_ALG},
    {"alg RS256", ALG_RS256, FBR_JWT_IN_QUERY, FBR_JWT_ALG},
    {"signed with another secret", BAD_SIG, FBR_JWT_IN_HEADER, FBR_JWT_SIGNATURE},
    {"claims changed after signing", TAMPERED, FBR_JWT_IN_HEADER, FBR_JWT_SIGNATURE},
    {"expired", EXPIRED, FBR_JWT_IN_HEADER, FBR_JWT_EXPIRED},
    {"no exp", NO_EXP, FBR_JWT_IN_HEADER, FBR_JWT_EXPIRED},
    {"exp just past, within leeway", EXP_WITHIN_LEEWAY, FBR_JWT_IN_HEADER, FBR_JWT_OK},
    {"iat in the future", IAT_FUTURE, FBR_JWT_IN_HEADER_TOKEN, FBR_JWT_IAT},
    {"unknown iss", UNKNOWN_ISS, FBR_JWT_IN_HEADER, FBR_JWT_UNKNOWN_ISS},
    {"body oauth_client_id differs", CLIENT_ID_MISMATCH, FBR_JWT_IN_HEADER, FBR_JWT_CLIENT_ID},
    {"body oauth_client_id equals iss", CLIENT_ID_MATCH, FBR_JWT_IN_QUERY, FBR_JWT_OK},
    {"body oauth_client_id not a string", CLIENT_ID_NOT_STRING, FBR_JWT_IN_HEADER,
     FBR_JWT_CLIENT_ID},
    {"truncated", TRUNCATED, FBR_JWT_IN_HEADER, FBR_JWT_MALFORMED},
    {"non-base64url character", NON_B64, FBR_JWT_IN_HEADER, FBR_JWT_MALFORMED},
    {"padded base64", PADDED, FBR_JWT_IN_HEADER, FBR_JWT_MALFORMED},
    {"four parts", FOUR_PARTS, FBR_JWT_IN_HEADER, FBR_JWT_MALFORMED},
    {"claims an array", CLAIMS_NOT_OBJECT, FBR_JWT_IN_HEADER, FBR_JWT_MALFORMED},
    {"oversize", OVERSIZE, FBR_JWT_IN_HEADER, FBR_JWT_OVERSIZE},
    {"no token", MISSING, FBR_JWT_IN_NONE, FBR_JWT_MISSING},
    {"body names the installation, no token", UNSIGNED_BODY_ONLY, FBR_JWT_IN_NONE, FBR_JWT_MISSING},
};

static char *make_token(enum kind k)
{
    switch (k) {
    case VALID:
    case CLIENT_ID_MISMATCH:
    case CLIENT_ID_MATCH:
    case CLIENT_ID_NOT_STRING:
        return sign(ISS, NOW - 5, NOW + 300, SECRET, NULL);
    case ALG_NONE: {
        char *h = b64url("{\"alg\":\"none\",\"typ\":\"JWT\"}");
        json_t *c = claims(ISS, NOW - 5, NOW + 300);
        char *cs = json_dumps(c, JSON_COMPACT);
        char *cb = b64url(cs);
        char *t = malloc(strlen(h) + strlen(cb) + 3);
        sprintf(t, "%s.%s.", h, cb);
        free(h), free(cs), free(cb), json_decref(c);
        return t;
    }
    case ALG_HS384:
        return sign(ISS, NOW - 5, NOW + 300, SECRET, "HS384");
    case ALG_RS256:
        return sign(ISS, NOW - 5, NOW + 300, SECRET, "RS256");
    case BAD_SIG:
        return sign(ISS, NOW - 5, NOW + 300, "not-the-secret", NULL);
    case TAMPERED: {
        char *t = sign(ISS, NOW - 5, NOW + 300, SECRET, NULL);
        char *other = sign(ISS, NOW - 5, NOW + 99999, SECRET, NULL);
        /* header and signature of t around the claims of other */
        char *d1 = strchr(t, '.'), *d2 = strchr(d1 + 1, '.');
        char *o1 = strchr(other, '.'), *o2 = strchr(o1 + 1, '.');
        char *r = malloc(strlen(t) + strlen(other) + 1);
        sprintf(r, "%.*s%.*s%s", (int)(d1 - t), t, (int)(o2 - o1), o1, d2);
        free(t), free(other);
        return r;
    }
    case EXPIRED:
        return sign(ISS, NOW - 900, NOW - 600, SECRET, NULL);
    case EXP_WITHIN_LEEWAY:
        return sign(ISS, NOW - 900, NOW - FBR_JWT_LEEWAY_S / 2, SECRET, NULL);
    case NO_EXP: {
        json_t *c = claims(ISS, NOW - 5, NOW + 300);
        json_object_del(c, "exp");
        char *t = fbr_jwt_sign(c, FBR_SLICE(SECRET), NULL);
        json_decref(c);
        return t;
    }
    case IAT_FUTURE:
        return sign(ISS, NOW + 600, NOW + 900, SECRET, NULL);
    case UNKNOWN_ISS:
        return sign("someone-else", NOW - 5, NOW + 300, SECRET, NULL);
    case TRUNCATED: {
        char *t = sign(ISS, NOW - 5, NOW + 300, SECRET, NULL);
        t[strlen(t) - 10] = 0;
        return t;
    }
    case NON_B64: {
        char *t = sign(ISS, NOW - 5, NOW + 300, SECRET, NULL);
        strchr(t, '.')[3] = '*';
        return t;
    }
    case PADDED: {
        char *t = sign(ISS, NOW - 5, NOW + 300, SECRET, NULL);
        char *r = malloc(strlen(t) + 3);
        sprintf(r, "%s==", t);
        free(t);
        return r;
    }
    case FOUR_PARTS: {
        char *t = sign(ISS, NOW - 5, NOW + 300, SECRET, NULL);
        char *r = malloc(strlen(t) + 6);
        sprintf(r, "%s.abcd", t);
        free(t);
        return r;
    }
    case CLAIMS_NOT_OBJECT: {
        json_t *c = json_pack("[s]", ISS);
        char *t = fbr_jwt_sign(c, FBR_SLICE(SECRET), NULL);
        json_decref(c);
        return t;
    }
    case OVERSIZE: {
        json_t *c = claims(ISS, NOW - 5, NOW + 300);
        char *pad = malloc(FBR_JWT_MAX_LEN + 1);
        memset(pad, 'x', FBR_JWT_MAX_LEN);
        pad[FBR_JWT_MAX_LEN] = 0;
        json_object_set_new(c, "pad", json_string(pad));
        char *t = fbr_jwt_sign(c, FBR_SLICE(SECRET), NULL);
        free(pad), json_decref(c);
        return t;
    }
    case MISSING:
    case UNSIGNED_BODY_ONLY:
        return NULL;
    }
    return NULL;
}

static json_t *make_body(enum kind k)
{
    json_t *b = json_pack("{s:s, s:{s:{s:s}}}", "event", "room_message", "item", "message",
                          "message", "hello");
    if (k == CLIENT_ID_MISMATCH)
        json_object_set_new(b, "oauth_client_id", json_string("oauth-id-2"));
    if (k == CLIENT_ID_MATCH || k == UNSIGNED_BODY_ONLY)
        json_object_set_new(b, "oauth_client_id", json_string(ISS));
    if (k == CLIENT_ID_NOT_STRING)
        json_object_set_new(b, "oauth_client_id", json_integer(1));
    return b;
}

START_TEST(table)
{
    const struct row *r = &rows[_i];
    char *tok = make_token(r->kind);
    char query[8192] = "x=1", auth[8192] = "";
    const char *authorization = NULL;
    if (tok && r->where == FBR_JWT_IN_QUERY)
        snprintf(query, sizeof(query), "a=b&signed_request=%s&c=d", tok);
    if (tok && r->where == FBR_JWT_IN_HEADER)
        snprintf(auth, sizeof(auth), "JWT %s", tok), authorization = auth;
    if (tok && r->where == FBR_JWT_IN_HEADER_TOKEN)
        snprintf(auth, sizeof(auth), "JWT token=%s", tok), authorization = auth;
    json_t *body = make_body(r->kind);
    struct fbr_jwt_claims c;
    enum fbr_jwt_err got =
        fbr_jwt_verify_request(fbr_slice_from(query), authorization, body, lookup, NULL, NOW, &c);
    ck_assert_msg(got == r->want, "%s: got %s, want %s", r->name, fbr_jwt_err_name(got),
                  fbr_jwt_err_name(r->want));
    if (got == FBR_JWT_OK) {
        ck_assert(fbr_slice_eq(c.iss, FBR_SLICE(ISS)));
        ck_assert_int_eq(c.where, r->where);
        ck_assert_int_eq(
            json_integer_value(json_object_get(json_object_get(c.claims, "context"), "room_id")),
            7);
    } else {
        ck_assert_ptr_null(c.claims);
    }
    fbr_jwt_claims_clear(&c);
    json_decref(body);
    free(tok);
}
END_TEST

START_TEST(base64url)
{
    unsigned char out[64];
    ck_assert_int_eq(fbr_base64url_decode(FBR_SLICE("aGk"), out), 2);
    ck_assert_int_eq(memcmp(out, "hi", 2), 0);
    ck_assert_int_eq(fbr_base64url_decode(FBR_SLICE("-_8"), out), 2);
    ck_assert_int_eq(out[0], 0xfb);
    ck_assert_int_eq(out[1], 0xff);
    ck_assert_int_eq(fbr_base64url_decode(FBR_SLICE(""), out), 0);
    ck_assert_int_eq(fbr_base64url_decode(FBR_SLICE("a"), out), -1);     /* impossible length */
    ck_assert_int_eq(fbr_base64url_decode(FBR_SLICE("aGk="), out), -1);  /* padding */
    ck_assert_int_eq(fbr_base64url_decode(FBR_SLICE("a+/b"), out), -1);  /* standard alphabet */
    ck_assert_int_eq(fbr_base64url_decode(FBR_SLICE("aG\nk"), out), -1); /* whitespace */
}
END_TEST

START_TEST(find_locations)
{
    struct fbr_slice t;
    ck_assert_int_eq(fbr_jwt_find(FBR_SLICE("signed_request=a.b.c"), NULL, &t), FBR_JWT_IN_QUERY);
    ck_assert(fbr_slice_eq(t, FBR_SLICE("a.b.c")));
    /* a parameter that only ends in the name is not it */
    ck_assert_int_eq(fbr_jwt_find(FBR_SLICE("xsigned_request=a.b.c"), NULL, &t), FBR_JWT_IN_NONE);
    ck_assert_int_eq(fbr_jwt_find(FBR_SLICE(""), "jwt  a.b.c ", &t), FBR_JWT_IN_HEADER);
    ck_assert(fbr_slice_eq(t, FBR_SLICE("a.b.c")));
    ck_assert_int_eq(fbr_jwt_find(FBR_SLICE(""), "JWT token=a.b.c", &t), FBR_JWT_IN_HEADER_TOKEN);
    ck_assert(fbr_slice_eq(t, FBR_SLICE("a.b.c")));
    ck_assert_int_eq(fbr_jwt_find(FBR_SLICE(""), "Bearer a.b.c", &t), FBR_JWT_IN_NONE);
    ck_assert_int_eq(fbr_jwt_find(FBR_SLICE(""), "JWT", &t), FBR_JWT_IN_NONE);
    /* the query wins over the header (UI pages carry only the query) */
    ck_assert_int_eq(fbr_jwt_find(FBR_SLICE("signed_request=q.q.q"), "JWT h.h.h", &t),
                     FBR_JWT_IN_QUERY);
    ck_assert(fbr_slice_eq(t, FBR_SLICE("q.q.q")));
}
END_TEST

START_TEST(names)
{
    ck_assert_str_eq(fbr_jwt_err_name(FBR_JWT_SIGNATURE), "signature");
    ck_assert_str_eq(fbr_jwt_err_name(FBR_JWT_ERR_COUNT), "?");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("jwt");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, table, 0, (int)FBR_ARRAY_LEN(rows));
    tcase_add_test(tc, base64url);
    tcase_add_test(tc, find_locations);
    tcase_add_test(tc, names);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
