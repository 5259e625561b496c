/*
 * oauth.c - hipchat-server as the OAuth2 provider of Connect add-ons (hipchat-api.md section 4):
 * GET /v2/capabilities names the token endpoint and the API base, POST /v2/oauth/token grants
 * client-credentials tokens to installed add-ons (Basic oauthId:oauthSecret, form body, scopes
 * a subset of the descriptor's), and api.c asks here whether a Bearer token is one of those
 * grants and may post into the room.  Tokens expire after --token-ttl seconds; revoking or
 * uninstalling an add-on ends them at once.
 */
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hcs.h"

#define MAX_FORM 4096

void hcs_oauth_capabilities(struct hcs *s, evhtp_request_t *req, htp_method m)
{
    if (m != htp_method_GET) {
        hcs_reply_error(s, req, 405, "use GET");
        return;
    }
    const char *b = s->public_url;
    char self[600], api[600], token[600], authz[600], provider[600];
    snprintf(self, sizeof(self), "%s/v2/capabilities", b);
    snprintf(api, sizeof(api), "%s/v2", b);
    snprintf(token, sizeof(token), "%s/v2/oauth/token", b);
    snprintf(authz, sizeof(authz), "%s/users/authorize", b);
    snprintf(provider, sizeof(provider), "%s/v2/", b);
    hcs_reply_json(s, req, 200,
                   json_pack("{s:s,s:s,s:s,s:{s:s,s:s},s:{s:{s:s,s:s},s:{s:s}}}", "key", "hipchat",
                             "name", "HipChat", "description",
                             "hipchat-server, a HipChat-compatible stand-in", "links", "self", self,
                             "api", api, "capabilities", "oauth2Provider", "tokenUrl", token,
                             "authorizationUrl", authz, "hipchatApiProvider", "url", provider));
}

static int has_scope(const struct hcs_addon *a, const char *scope, size_t len)
{
    for (size_t i = 0; i < a->nscopes; i++) {
        if (strlen(a->scopes[i]) == len && memcmp(a->scopes[i], scope, len) == 0)
            return 1;
    }
    return 0;
}

/* Checks the requested scopes (space-separated after form decoding) against the descriptor's
 * and writes the granted list into out; empty or absent asks for all of them.  Returns FBR_OK or
 * FBR_INVALID with err filled. */
static int grant_scopes(const struct hcs_addon *a, const char *want, char *out, size_t outlen,
                        char *err, size_t errlen)
{
    size_t o = 0;
    out[0] = '\0';
    const char *p = want;
    while (p && *p) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (n == 0)
            break;
        if (!has_scope(a, p, n)) {
            snprintf(err, errlen, "scope '%.*s' is not in the add-on's descriptor",
                     (int)n > 64 ? 64 : (int)n, p);
            return FBR_INVALID;
        }
        if (o + n + 2 > outlen) {
            snprintf(err, errlen, "too many scopes");
            return FBR_INVALID;
        }
        o += (size_t)snprintf(out + o, outlen - o, "%s%.*s", o ? " " : "", (int)n, p);
        p += n;
    }
    for (size_t i = 0; o == 0 && i < a->nscopes; i++) {
        size_t n = strlen(a->scopes[i]);
        if (o + n + 2 > outlen)
            break;
        o += (size_t)snprintf(out + o, outlen - o, "%s%s", i ? " " : "", a->scopes[i]);
    }
    return FBR_OK;
}

struct expired {
    uint64_t now_ms;
    const struct hcs_addon *addon; /* non-NULL: every grant of this add-on */
    char **keys;
    size_t n;
};

static void collect(const char *key, void *value, void *arg)
{
    const struct hcs_grant *g = value;
    struct expired *x = arg;
    if (x->addon ? g->addon != x->addon : g->expires_ms > x->now_ms)
        return;
    x->keys = fbr_xrealloc(x->keys, (x->n + 1) * sizeof(*x->keys));
    x->keys[x->n++] = fbr_xstrdup(key);
}

static void drop_grants(struct hcs *s, uint64_t now_ms, const struct hcs_addon *addon)
{
    struct expired x = {now_ms, addon, NULL, 0};
    fbr_strmap_each(&s->grants, collect, &x);
    for (size_t i = 0; i < x.n; i++) {
        struct hcs_grant *g = fbr_strmap_del(&s->grants, x.keys[i], strlen(x.keys[i]));
        free(g->scope);
        free(g);
        free(x.keys[i]);
    }
    free(x.keys);
}

void hcs_oauth_forget(struct hcs *s, const struct hcs_addon *a)
{
    drop_grants(s, 0, a);
}

static void token_error(struct hcs *s, evhtp_request_t *req, int status, const char *msg)
{
    if (status == 401)
        hcs_add_header(req, "WWW-Authenticate", "Basic realm=\"hipchat-server\"");
    hcs_reply_error(s, req, status, msg);
}

void hcs_oauth_token(struct hcs *s, evhtp_request_t *req, htp_method m)
{
    if (m != htp_method_POST) {
        hcs_reply_error(s, req, 405, "use POST");
        return;
    }
    /* Client authentication: Basic base64(oauthId:oauthSecret). */
    const char *auth = evhtp_kv_find(req->headers_in, "Authorization");
    if (!auth || strncasecmp(auth, "Basic ", 6) != 0) {
        token_error(s, req, 401, "client authentication (Basic oauthId:oauthSecret) required");
        return;
    }
    const char *b64 = auth + 6;
    while (*b64 == ' ')
        b64++;
    char cred[256];
    char *colon;
    if (hcs_b64_decode(b64, strlen(b64), cred, sizeof(cred)) < 0 || !(colon = strchr(cred, ':'))) {
        token_error(s, req, 400, "malformed Basic credentials");
        return;
    }
    *colon = '\0';
    const char *id = cred, *secret = colon + 1;

    /* The body: a form, as the spec has it (a JSON body is refused). */
    const char *ctype = evhtp_kv_find(req->headers_in, "Content-Type");
    if (!ctype || strncasecmp(ctype, "application/x-www-form-urlencoded", 33) != 0) {
        token_error(s, req, 400, "the body must be application/x-www-form-urlencoded");
        return;
    }
    size_t blen;
    const char *btext = hcs_req_body(req, &blen);
    char form[MAX_FORM], grant_type[64], scope[1024];
    if (blen >= sizeof(form)) {
        token_error(s, req, 400, "form body too long");
        return;
    }
    memcpy(form, btext, blen);
    form[blen] = '\0';
    int g = hcs_query_param(form, "grant_type", grant_type, sizeof(grant_type));
    int sc = hcs_query_param(form, "scope", scope, sizeof(scope));
    if (g < 0 || sc < 0) {
        token_error(s, req, 400, "malformed form body");
        return;
    }
    if (g == 0 || strcmp(grant_type, "client_credentials") != 0) {
        token_error(s, req, 400, "grant_type must be client_credentials");
        return;
    }

    struct hcs_addon *a = hcs_addon_find(s, id);
    if (!a || strlen(secret) != strlen(a->oauth_secret) ||
        CRYPTO_memcmp(secret, a->oauth_secret, strlen(secret)) != 0) {
        token_error(s, req, 401, "invalid client credentials");
        return;
    }
    if (a->revoked) {
        token_error(s, req, 401, "this client has been revoked");
        return;
    }
    char granted[1024], err[160];
    if (grant_scopes(a, sc == 1 ? scope : NULL, granted, sizeof(granted), err, sizeof(err)) !=
        FBR_OK) {
        token_error(s, req, 400, err);
        return;
    }
    uint64_t now = fbr_wall_ms();
    if (s->grants.count >= s->max_tokens)
        drop_grants(s, now, NULL);
    if (s->grants.count >= s->max_tokens) {
        token_error(s, req, 503, "too many live tokens (--max-tokens)");
        return;
    }
    char token[sizeof(HCS_GRANT_PREFIX) + 40];
    memcpy(token, HCS_GRANT_PREFIX, sizeof(HCS_GRANT_PREFIX) - 1);
    hcs_random_hex(token + sizeof(HCS_GRANT_PREFIX) - 1, 20);
    struct hcs_grant *gr = fbr_xcalloc(1, sizeof(*gr));
    gr->addon = a;
    gr->expires_ms = now + (uint64_t)s->token_ttl_s * 1000u;
    gr->scope = fbr_xstrdup(granted);
    fbr_strmap_put(&s->grants, token, strlen(token), gr);
    a->tokens_issued++;
    s->stats.tokens_issued++;
    char group_name[48];
    snprintf(group_name, sizeof(group_name), "Group %ld", a->group_id);
    hcs_add_header(req, "Cache-Control", "no-store");
    hcs_reply_json(s, req, 200,
                   json_pack("{s:s,s:s,s:s,s:I,s:I,s:s}", "access_token", token, "token_type",
                             "bearer", "scope", granted, "expires_in", (json_int_t)s->token_ttl_s,
                             "group_id", (json_int_t)a->group_id, "group_name", group_name));
}

static int scope_listed(const char *list, const char *scope)
{
    size_t n = strlen(scope);
    for (const char *p = list; (p = strstr(p, scope)); p += n) {
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return 1;
    }
    return 0;
}

int hcs_oauth_check(struct hcs *s, const char *token, const struct hcs_room *room,
                    struct hcs_addon **addon, const char **msg)
{
    if (strncmp(token, HCS_GRANT_PREFIX, sizeof(HCS_GRANT_PREFIX) - 1) != 0)
        return FBR_DECLINED;
    const struct hcs_grant *g = fbr_strmap_get(&s->grants, token, strlen(token));
    if (!g) {
        *msg = "Invalid OAuth session";
        return FBR_INVALID;
    }
    if (g->expires_ms <= fbr_wall_ms()) {
        *msg = "OAuth token expired";
        return FBR_INVALID;
    }
    if (g->addon->revoked) {
        *msg = "This add-on's access has been revoked";
        return FBR_INVALID;
    }
    if (!room)
        return FBR_NOTFOUND;
    if (room != g->addon->room) {
        *msg = "This token has no access to this room";
        return FBR_INVALID;
    }
    if (!scope_listed(g->scope, "send_notification")) {
        *msg = "This token lacks the send_notification scope";
        return FBR_INVALID;
    }
    *addon = g->addon;
    return FBR_OK;
}

void hcs_oauth_free(struct hcs *s)
{
    drop_grants(s, UINT64_MAX, NULL);
    fbr_strmap_clear(&s->grants);
}
