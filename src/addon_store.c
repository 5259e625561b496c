/*
 * addon_store.c - the HipChat add-on's installations, persisted in the data directory, and the
 * OAuth2 client-credentials token of each, lent to the delivery engine per attempt.  It sits
 * beside the delivery step of the timeline -> room path: the add-on (addon.c) renders a room
 * notification and submits it with an installation as its credential provider; the engine asks
 * the installation for a token right before sending.  See addon_store.h for the token states.
 */
#include "firebridge/addon_store.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "firebridge/json.h"
#include "firebridge/log.h"

#define FILE_NAME "hipchat-installations.json"
#define TOKEN_RETRY_INITIAL_MS 1000
#define TOKEN_RETRY_MAX_MS 60000
#define TOKEN_SCOPE "send_notification+view_room"

struct fbr_addon_store {
    struct event_base *base;
    struct fbr_client *client;
    struct fbr_delivery_engine *engine;
    char *path, *dir;
    struct fbr_install **v;
    size_t n;
    struct fbr_addon_store_stats st;
};

static const char *const token_state_names[] = {
#define FBR_X(name, text) text,
    FBR_TOKEN_STATE_MAP(FBR_X)
#undef FBR_X
};

const char *fbr_token_state_name(enum fbr_token_state s)
{
    return (unsigned)s < FBR_TOKEN_STATE_COUNT ? token_state_names[s] : "?";
}

uint64_t fbr_addon_token_renew_ms(uint64_t expires_in_s)
{
    uint64_t life = expires_in_s * 1000u, margin = life / 4;
    if (margin > 300000u)
        margin = 300000u;
    return life - margin;
}

uint64_t fbr_addon_token_usable_ms(uint64_t expires_in_s)
{
    uint64_t life = expires_in_s * 1000u, margin = life / 10;
    if (margin > 30000u)
        margin = 30000u;
    return life - margin;
}

/* ---- installations ------------------------------------------------------------------------ */

struct fbr_install *fbr_install_new(void)
{
    struct fbr_install *in = fbr_xcalloc(1, sizeof(*in));
    in->refs = 1;
    return in;
}

void fbr_install_ref(struct fbr_install *in)
{
    in->refs++;
}

static void drop_token(struct fbr_install *in)
{
    if (in->token) {
        OPENSSL_cleanse(in->token, strlen(in->token));
        free(in->token);
        in->token = NULL;
    }
}

void fbr_install_unref(struct fbr_install **inp)
{
    struct fbr_install *in = *inp;
    *inp = NULL;
    if (!in || --in->refs > 0)
        return;
    drop_token(in);
    if (in->retry)
        event_free(in->retry);
    if (in->oauth_secret)
        OPENSSL_cleanse(in->oauth_secret, strlen(in->oauth_secret));
    free(in->oauth_id);
    free(in->oauth_secret);
    free(in->routing_key);
    free(in->capabilities_url);
    free(in->api_base);
    free(in->token_url);
    free(in);
}

/* ---- persistence -------------------------------------------------------------------------- */

static json_t *install_json(const struct fbr_install *in)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "oauth_id", in->oauth_id,
                     "oauth_secret", in->oauth_secret, "routing_key", in->routing_key,
                     "capabilities_url", in->capabilities_url, "api_base", in->api_base,
                     "token_url", in->token_url, "room_id", (json_int_t)in->room_id, "group_id",
                     (json_int_t)in->group_id, "installed_ms", (json_int_t)in->installed_wall_ms);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes the set atomically: temporary file (0600), fsync, rename, fsync of the directory. */
static int persist(struct fbr_addon_store *s)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < s->n; i++)
        json_array_append_new(arr, install_json(s->v[i]));
    json_t *doc = json_pack("{s:i, s:o}", "version", 1, "installations", arr);
    char *text = fbr_json_dumps(doc, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(doc);
    size_t plen = strlen(s->path);
    char *tmp = fbr_xmalloc(plen + 5);
    memcpy(tmp, s->path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        if (fchmod(fd, 0600) == 0 && write_all(fd, text, strlen(text)) == 0 &&
            write_all(fd, "\n", 1) == 0 && fsync(fd) == 0)
            rc = 0;
        if (close(fd) != 0)
            rc = -1;
    }
    if (rc == 0 && rename(tmp, s->path) != 0)
        rc = -1;
    if (rc == 0) {
        int dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    } else {
        s->st.persist_errors++;
        fbr_log(FBR_LOG_ERROR, NULL, "saving the HipChat installations", "%s: %s", s->path,
                strerror(errno));
        unlink(tmp);
    }
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    free(tmp);
    return rc;
}

static char *jdup(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? fbr_xstrdup(v) : NULL;
}

static int load(struct fbr_addon_store *s, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *doc = json_load_file(s->path, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        if (access(s->path, F_OK) != 0 && errno == ENOENT)
            return FBR_OK; /* nothing installed yet */
        snprintf(err, errlen, "%s: %s (line %d)", s->path, jerr.text, jerr.line);
        return FBR_ERROR;
    }
    json_t *arr = json_object_get(doc, "installations");
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        struct fbr_install *in = fbr_install_new();
        in->oauth_id = jdup(o, "oauth_id");
        in->oauth_secret = jdup(o, "oauth_secret");
        in->routing_key = jdup(o, "routing_key");
        in->capabilities_url = jdup(o, "capabilities_url");
        in->api_base = jdup(o, "api_base");
        in->token_url = jdup(o, "token_url");
        in->room_id = json_integer_value(json_object_get(o, "room_id"));
        in->group_id = json_integer_value(json_object_get(o, "group_id"));
        in->installed_wall_ms = (uint64_t)json_integer_value(json_object_get(o, "installed_ms"));
        if (!in->oauth_id || !in->oauth_secret || !in->routing_key || !in->capabilities_url ||
            !in->api_base || !in->token_url || s->n >= FBR_ADDON_MAX_INSTALLS) {
            snprintf(err, errlen, "%s: installations[%zu] is incomplete", s->path, i);
            fbr_install_unref(&in);
            json_decref(doc);
            return FBR_ERROR;
        }
        in->store = s;
        s->v = fbr_xrealloc(s->v, (s->n + 1) * sizeof(*s->v));
        s->v[s->n++] = in;
    }
    json_decref(doc);
    return FBR_OK;
}

int fbr_addon_store_open(const char *data_dir, struct event_base *base, struct fbr_client *client,
                         struct fbr_delivery_engine *engine, struct fbr_addon_store **out,
                         char *err, size_t errlen)
{
    struct fbr_addon_store *s = fbr_xcalloc(1, sizeof(*s));
    s->base = base;
    s->client = client;
    s->engine = engine;
    s->dir = fbr_xstrdup(data_dir);
    size_t n = strlen(data_dir) + sizeof(FILE_NAME) + 2;
    s->path = fbr_xmalloc(n);
    snprintf(s->path, n, "%s/%s", data_dir, FILE_NAME);
    if (load(s, err, errlen) != FBR_OK) {
        fbr_addon_store_free(&s);
        return FBR_ERROR;
    }
    if (s->n)
        fbr_log_info("HipChat add-on: %zu installation(s) restored from %s", s->n, s->path);
    *out = s;
    return FBR_OK;
}

static void detach(struct fbr_install *in)
{
    in->store = NULL;
    if (in->retry)
        event_del(in->retry);
}

void fbr_addon_store_free(struct fbr_addon_store **sp)
{
    struct fbr_addon_store *s = *sp;
    *sp = NULL;
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        detach(s->v[i]);
        fbr_install_unref(&s->v[i]);
    }
    free(s->v);
    free(s->path);
    free(s->dir);
    free(s);
}

struct fbr_install *fbr_addon_store_find(struct fbr_addon_store *s, struct fbr_slice oauth_id)
{
    for (size_t i = 0; i < s->n; i++)
        if (fbr_slice_eq(fbr_slice_from(s->v[i]->oauth_id), oauth_id))
            return s->v[i];
    return NULL;
}

struct fbr_install *const *fbr_addon_store_list(struct fbr_addon_store *s, size_t *n)
{
    *n = s->n;
    return s->v;
}

static void remove_at(struct fbr_addon_store *s, size_t i)
{
    struct fbr_install *in = s->v[i];
    memmove(s->v + i, s->v + i + 1, (s->n - i - 1) * sizeof(*s->v));
    s->n--;
    detach(in);
    fbr_install_unref(&in);
}

int fbr_addon_store_add(struct fbr_addon_store *s, struct fbr_install *tmpl)
{
    /* Replacing: the older installations of this room and routing key go (their deliveries die
     * with the reason "uninstalled"). */
    struct fbr_install **keep = fbr_xcalloc(s->n + 1, sizeof(*keep));
    size_t nkeep = 0, replaced = 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct fbr_install *o = s->v[i];
        int same = (o->room_id == tmpl->room_id && strcmp(o->routing_key, tmpl->routing_key) == 0 &&
                    strcmp(o->api_base, tmpl->api_base) == 0) ||
                   strcmp(o->oauth_id, tmpl->oauth_id) == 0;
        if (same)
            replaced++;
        else
            keep[nkeep++] = s->v[i];
    }
    if (nkeep >= FBR_ADDON_MAX_INSTALLS) {
        free(keep);
        return FBR_LIMIT;
    }
    fbr_install_ref(tmpl);
    keep[nkeep++] = tmpl;
    struct fbr_install **old = s->v;
    size_t nold = s->n;
    s->v = keep;
    s->n = nkeep;
    if (persist(s) != 0) {
        s->v = old;
        s->n = nold;
        free(keep);
        fbr_install_unref(&tmpl);
        return FBR_ERROR;
    }
    tmpl->store = s;
    for (size_t i = 0; i < nold; i++) {
        int kept = 0;
        for (size_t j = 0; j < nkeep; j++)
            kept |= keep[j] == old[i];
        if (!kept) {
            fbr_log_info("HipChat add-on: installation %s (room %lld) replaced by %s",
                         old[i]->oauth_id, (long long)old[i]->room_id, tmpl->oauth_id);
            detach(old[i]);
            fbr_install_unref(&old[i]);
        }
    }
    free(old);
    (void)replaced;
    if (s->engine)
        fbr_delivery_auth_ready(s->engine); /* the replaced ones' deliveries may die now */
    return FBR_OK;
}

int fbr_addon_store_remove(struct fbr_addon_store *s, struct fbr_slice oauth_id)
{
    for (size_t i = 0; i < s->n; i++) {
        if (fbr_slice_eq(fbr_slice_from(s->v[i]->oauth_id), oauth_id)) {
            remove_at(s, i);
            int rc = persist(s) == 0 ? FBR_OK : FBR_ERROR;
            if (s->engine)
                fbr_delivery_auth_ready(s->engine);
            return rc;
        }
    }
    return FBR_NOTFOUND;
}

const struct fbr_addon_store_stats *fbr_addon_store_stats(const struct fbr_addon_store *s)
{
    return &s->st;
}

/* ---- tokens ------------------------------------------------------------------------------- */

struct token_call {
    struct fbr_install *in; /* reference */
    fbr_install_token_cb cb;
    void *arg;
    char *head, *body;
    struct iovec iov; /* the client borrows it until the callback */
};

static void token_start(struct fbr_install *in);

/* The one place a token changes state. */
static void token_transition(struct fbr_install *in, enum fbr_token_state to, const char *why)
{
    enum fbr_token_state from = in->tstate;
    in->tstate = to;
    if (fbr_log_enabled(FBR_LOG_DEBUG))
        fbr_log(FBR_LOG_DEBUG, NULL, NULL, "HipChat token of installation %s: %s -> %s%s%s",
                in->oauth_id, fbr_token_state_name(from), fbr_token_state_name(to), why ? ": " : "",
                why ? why : "");
    switch (to) {
    case FBR_TOKEN_FETCHING:
        drop_token(in);
        if (from != FBR_TOKEN_RENEWING) /* a renewal's request is already running */
            token_start(in);
        break;
    case FBR_TOKEN_RENEWING:
        token_start(in);
        break;
    case FBR_TOKEN_REVOKED:
        drop_token(in);
        if (in->store) {
            in->store->st.revoked++;
            fbr_log(FBR_LOG_WARN, NULL, "renewing a HipChat token",
                    "installation %s (room %lld, routing key %s) is revoked: %s; its queued "
                    "room notifications go to the dead-letter file",
                    in->oauth_id, (long long)in->room_id, in->routing_key, in->last_error);
        }
        break;
    default:
        break;
    }
    if (in->store && in->store->engine && (to == FBR_TOKEN_VALID || to == FBR_TOKEN_REVOKED))
        fbr_delivery_auth_ready(in->store->engine);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct fbr_install *in = arg;
    (void)fd, (void)what;
    if (in->store && in->tstate == FBR_TOKEN_EMPTY)
        token_transition(in, FBR_TOKEN_FETCHING, "retrying");
}

/* The store's own requests: the answer moves the token's state. */
static void on_store_token(struct fbr_install *in, int rc, const char *reason, void *arg)
{
    (void)arg;
    if (!in->store) /* uninstalled meanwhile */
        return;
    if (rc == FBR_OK) {
        token_transition(in, FBR_TOKEN_VALID, NULL);
        return;
    }
    in->store->st.token_failures++;
    if (rc == FBR_DECLINED) {
        token_transition(in, FBR_TOKEN_REVOKED, reason);
        return;
    }
    in->failures++;
    uint64_t delay = TOKEN_RETRY_INITIAL_MS << (in->failures < 7 ? in->failures - 1 : 6);
    if (delay > TOKEN_RETRY_MAX_MS)
        delay = TOKEN_RETRY_MAX_MS;
    fbr_log(FBR_LOG_WARN, NULL, "renewing a HipChat token",
            "installation %s: %s; retrying in %llu ms", in->oauth_id, reason,
            (unsigned long long)delay);
    uint64_t now = fbr_now_ms();
    if (in->tstate == FBR_TOKEN_RENEWING && in->token && now < in->usable_mono) {
        in->renew_mono = now + delay; /* keep the old token meanwhile */
        token_transition(in, FBR_TOKEN_VALID, "renewal failed, old token kept");
        return;
    }
    token_transition(in, FBR_TOKEN_EMPTY, reason);
    if (!in->retry)
        in->retry = evtimer_new(in->store->base, on_retry, in);
    struct timeval tv = {(time_t)(delay / 1000), (suseconds_t)(delay % 1000) * 1000};
    evtimer_add(in->retry, &tv);
}

static void token_call_free(struct token_call *tc)
{
    if (tc->head)
        OPENSSL_cleanse(tc->head, strlen(tc->head));
    free(tc->head);
    free(tc->body);
    fbr_install_unref(&tc->in);
    free(tc);
}

static void on_token_response(const struct fbr_client_resp *r, void *arg)
{
    struct token_call *tc = arg;
    struct fbr_install *in = tc->in;
    char why[200];
    int rc = FBR_ERROR;
    if (r->err != FBR_CLIENT_ERR_NONE) {
        snprintf(why, sizeof(why), "token request failed: %s", r->reason);
    } else if (r->status == 401 || r->status == 400) {
        snprintf(why, sizeof(why), "token endpoint answered %d", r->status);
        rc = FBR_DECLINED;
    } else if (r->status != 200) {
        snprintf(why, sizeof(why), "token endpoint answered %d", r->status);
    } else {
        /* a cut body (over 8 KiB, or cut short after the head) is not a token answer */
        json_t *j = r->body_cut ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
        const char *tok = json_string_value(json_object_get(j, "access_token"));
        json_t *exp = json_object_get(j, "expires_in");
        json_int_t secs = json_is_integer(exp) ? json_integer_value(exp) : 0;
        size_t tlen = tok ? strlen(tok) : 0;
        int tok_ok = tlen > 0 && tlen < FBR_DELIVERY_AUTH_MAX - 16;
        for (size_t i = 0; tok_ok && i < tlen; i++)
            tok_ok = tok[i] > 0x20 && tok[i] < 0x7f;
        if (!tok_ok || secs <= 0 || secs > 30 * 86400) {
            snprintf(why, sizeof(why),
                     "token endpoint answered 200 without a usable "
                     "access_token and expires_in");
        } else {
            uint64_t now = fbr_now_ms();
            drop_token(in);
            in->token = fbr_xstrdup(tok);
            in->renew_mono = now + fbr_addon_token_renew_ms((uint64_t)secs);
            in->usable_mono = now + fbr_addon_token_usable_ms((uint64_t)secs);
            in->failures = 0;
            why[0] = '\0';
            rc = FBR_OK;
        }
        json_decref(j);
    }
    /* a longer reason is cut, never inside a character (the page and /metrics need UTF-8) */
    size_t wl = fbr_utf8_cut(why, strlen(why), sizeof(in->last_error) - 1);
    memcpy(in->last_error, why, wl);
    in->last_error[wl] = '\0';
    tc->cb(in, rc, why, tc->arg);
    token_call_free(tc);
}

int fbr_install_fetch_token(struct fbr_install *in, struct fbr_client *client,
                            fbr_install_token_cb cb, void *arg)
{
    struct token_call *tc = fbr_xcalloc(1, sizeof(*tc));
    /* Basic base64(oauthId:oauthSecret) */
    size_t il = strlen(in->oauth_id), sl = strlen(in->oauth_secret);
    unsigned char *cred = fbr_xmalloc(il + 1 + sl);
    memcpy(cred, in->oauth_id, il);
    cred[il] = ':';
    memcpy(cred + il + 1, in->oauth_secret, sl);
    char *b64 = fbr_xmalloc(4 * ((il + 1 + sl + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)b64, cred, (int)(il + 1 + sl));
    OPENSSL_cleanse(cred, il + 1 + sl);
    free(cred);
    size_t hl = strlen(b64) + 128;
    tc->head = fbr_xmalloc(hl);
    snprintf(tc->head, hl,
             "Authorization: Basic %s\r\nContent-Type: application/x-www-form-urlencoded\r\n", b64);
    OPENSSL_cleanse(b64, strlen(b64));
    free(b64);
    tc->body = fbr_xstrdup("grant_type=client_credentials&scope=" TOKEN_SCOPE);
    fbr_install_ref(in);
    tc->in = in;
    tc->cb = cb;
    tc->arg = arg;
    tc->iov = (struct iovec){tc->body, strlen(tc->body)};
    struct fbr_client_req req = {.method = "POST",
                                 .url = in->token_url,
                                 .url_len = strlen(in->token_url),
                                 .head = tc->head,
                                 .head_len = strlen(tc->head),
                                 .body = &tc->iov,
                                 .nbody = 1,
                                 .log_id = in->oauth_id,
                                 .max_body = 8192};
    in->token_requests++;
    if (in->store)
        in->store->st.token_requests++;
    if (fbr_client_request(client, &req, on_token_response, tc) != FBR_OK) {
        token_call_free(tc);
        return FBR_INVALID;
    }
    return FBR_OK;
}

static void token_start(struct fbr_install *in)
{
    if (fbr_install_fetch_token(in, in->store->client, on_store_token, NULL) != FBR_OK) {
        snprintf(in->last_error, sizeof(in->last_error), "token URL is not usable");
        token_transition(in, FBR_TOKEN_REVOKED, in->last_error);
    }
}

/* ---- the credential provider -------------------------------------------------------------- */

static int auth_get(void *arg, char *value, size_t cap, char *reason, size_t rcap)
{
    struct fbr_install *in = arg;
    if (!in->store) {
        snprintf(reason, rcap, "the HipChat add-on was uninstalled from room %lld",
                 (long long)in->room_id);
        return FBR_ERROR;
    }
    if (in->tstate == FBR_TOKEN_REVOKED) {
        in->store->st.deliveries_dead_revoked++;
        snprintf(reason, rcap, "HipChat installation %s revoked: %s", in->oauth_id, in->last_error);
        return FBR_ERROR;
    }
    uint64_t now = fbr_now_ms();
    if ((in->tstate == FBR_TOKEN_VALID || in->tstate == FBR_TOKEN_RENEWING) &&
        now >= in->usable_mono)
        token_transition(in, FBR_TOKEN_FETCHING, "expired");
    if (in->tstate == FBR_TOKEN_VALID && now >= in->renew_mono)
        token_transition(in, FBR_TOKEN_RENEWING, "renewal due");
    if (in->tstate == FBR_TOKEN_EMPTY && !(in->retry && evtimer_pending(in->retry, NULL)))
        token_transition(in, FBR_TOKEN_FETCHING, "first use");
    if (in->tstate == FBR_TOKEN_REVOKED) { /* the URL was unusable */
        snprintf(reason, rcap, "HipChat installation %s: %s", in->oauth_id, in->last_error);
        return FBR_ERROR;
    }
    if (!in->token)
        return FBR_AGAIN;
    snprintf(value, cap, "Bearer %s", in->token);
    return FBR_OK;
}

static void auth_rejected(void *arg, const char *value)
{
    struct fbr_install *in = arg;
    if (!in->store || !in->token || strncmp(value, "Bearer ", 7) != 0 ||
        strcmp(value + 7, in->token) != 0)
        return; /* already renewed since that attempt */
    token_transition(in, FBR_TOKEN_FETCHING, "refused by the API (401)");
}

static void auth_ref(void *arg)
{
    fbr_install_ref(arg);
}

static void auth_unref(void *arg)
{
    struct fbr_install *in = arg;
    fbr_install_unref(&in);
}

const struct fbr_delivery_auth fbr_install_auth = {auth_get, auth_rejected, auth_ref, auth_unref};
