/*
 * webhook.c - outgoing webhooks: compiles the `webhooks` configuration array (event, method,
 * content type, URL / header / payload templates, per-webhook rate overrides) and renders one
 * webhook for one event into a request for the delivery engine.  It sits after event derivation
 * (which picks the webhooks an event fires) and before delivery (which sends the slices).
 */
#include "firebridge/webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "firebridge/config.h" /* fbr_config_check_item: the one section checker */
#include "firebridge/events.h"
#include "firebridge/http.h"
#include "firebridge/json.h"
#include "firebridge/url.h"

struct fbr_webhook *fbr_webhook_ref(struct fbr_webhook *wh)
{
    wh->refs++;
    return wh;
}

void fbr_webhook_unref(struct fbr_webhook **whp)
{
    struct fbr_webhook *wh = *whp;
    *whp = NULL;
    if (!wh || --wh->refs > 0)
        return;
    free(wh->name);
    free(wh->content_type);
    fbr_tpl_unref(&wh->url);
    fbr_tpl_unref(&wh->payload);
    fbr_tpl_unref(&wh->rate_key);
    for (size_t i = 0; i < wh->nheaders; i++) {
        free(wh->headers[i].name);
        fbr_tpl_unref(&wh->headers[i].value);
    }
    free(wh->headers);
    free(wh);
}

/* Headers the delivery engine writes itself. */
static const char *const reserved_headers[] = {"Host", "Content-Length", "Transfer-Encoding",
                                               "Connection", "Content-Type", NULL};

static int compile_tpl(json_t *v, enum fbr_tpl_context ctx, struct fbr_tpl **out, const char *path,
                       struct fbr_cfgerr *errs)
{
    char err[200];
    if (!json_is_string(v)) {
        fbr_cfgerr_add(errs, path, "must be a string (a template)");
        return -1;
    }
    if (fbr_tpl_compile(json_string_value(v), json_string_length(v), ctx, out, err,
                        sizeof(err)) != FBR_OK) {
        fbr_cfgerr_add(errs, path, "%s", err);
        return -1;
    }
    return 0;
}

static int compile_rate(json_t *j, const char *key, struct fbr_rate *out, const char *path,
                        struct fbr_cfgerr *errs)
{
    json_t *v = json_object_get(j, key);
    if (!v)
        return 0;
    if (!json_is_string(v) || fbr_rate_parse(json_string_value(v), out) != FBR_OK || !out->n) {
        char p[128];
        snprintf(p, sizeof(p), "%s.%s", path, key);
        fbr_cfgerr_add(errs, p, "must be \"N/SECONDS\" with N and SECONDS > 0");
        return -1;
    }
    return 0;
}

/* The keys of one webhook.  FBR_F_ANY rows are checked for their meaning by compile_one, which
 * words those messages itself. */
static const struct fbr_field webhook_fields[] = {
    {"name", FBR_F_STRING, 0, 0, 0},      {"event", FBR_F_ANY, 0, 0, 0},
    {"method", FBR_F_ANY, 0, 0, 0},       {"content_type", FBR_F_ANY, 0, 0, 0},
    {"url", FBR_F_ANY, 1, 0, 0},          {"headers", FBR_F_OBJECT, 0, 0, 0},
    {"payload", FBR_F_ANY, 0, 0, 0},      {"enabled", FBR_F_BOOL, 0, 0, 0},
    {"rate_key", FBR_F_ANY, 0, 0, 0},     {"room_rate", FBR_F_ANY, 0, 0, 0},
    {"token_rate", FBR_F_ANY, 0, 0, 0},   {"description", FBR_F_ANY, 0, 0, 0},
};

static int compile_one(json_t *j, size_t idx, struct fbr_webhook **out, struct fbr_cfgerr *errs)
{
    char path[64], p[256];
    snprintf(path, sizeof(path), "webhooks[%zu]", idx);
    int bad = fbr_config_check_item(j, path, webhook_fields, FBR_ARRAY_LEN(webhook_fields),
                                    errs) != 0;
    if (!json_is_object(j))
        return -1;
    const char *key;
    json_t *v;
    struct fbr_webhook *wh = fbr_xcalloc(1, sizeof(*wh));
    wh->refs = 1;

    v = json_object_get(j, "name");
    wh->name = fbr_xstrdup(json_is_string(v) ? json_string_value(v) : path);

    v = json_object_get(j, "event");
    enum fbr_event ev;
    snprintf(p, sizeof(p), "%s.event", path);
    if (!json_is_string(v) ||
        fbr_event_parse(json_string_value(v), json_string_length(v), &ev) != FBR_OK) {
        fbr_cfgerr_add(errs, p, "must be one of the 12 platform events or \"Any-Alert\"");
        bad = 1;
    } else {
        wh->events = FBR_EV_BIT(ev);
    }

    v = json_object_get(j, "method");
    wh->method = v ? 0 : FBR_M_POST;
    if (v && json_is_string(v))
        wh->method = fbr_http_method_parse(json_string_value(v), json_string_length(v), 1);
    if (!wh->method || wh->method == FBR_M_HEAD) { /* a webhook sends a body */
        snprintf(p, sizeof(p), "%s.method", path);
        fbr_cfgerr_add(errs, p, "must be GET, POST, PUT, DELETE or PATCH");
        bad = 1;
    }

    v = json_object_get(j, "content_type");
    if (v && (!json_is_string(v) || json_string_length(v) == 0 ||
              strpbrk(json_string_value(v), "\r\n"))) {
        snprintf(p, sizeof(p), "%s.content_type", path);
        fbr_cfgerr_add(errs, p, "must be a non-empty single-line string");
        bad = 1;
    }
    wh->content_type = fbr_xstrdup(json_is_string(v) ? json_string_value(v) : "application/json");

    v = json_object_get(j, "enabled");
    wh->enabled = json_is_boolean(v) ? json_is_true(v) : 1;

    snprintf(p, sizeof(p), "%s.url", path);
    v = json_object_get(j, "url");
    if (v) { /* absent: the table said "missing" */
        bad |= compile_tpl(v, FBR_TPL_URL, &wh->url, p, errs) != 0;
        const char *never = fbr_tpl_url_never_valid(wh->url);
        if (never) {
            fbr_cfgerr_add(errs, p, "%s", never);
            bad = 1;
        }
    }

    v = json_object_get(j, "payload");
    if (v && !json_is_null(v)) {
        snprintf(p, sizeof(p), "%s.payload", path);
        enum fbr_tpl_context ctx = fbr_tpl_context_for_content_type(wh->content_type);
        if (json_is_object(v) || json_is_array(v)) {
            char *src = fbr_json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
            json_t *s = json_string(src);
            bad |= compile_tpl(s, ctx, &wh->payload, p, errs) != 0;
            json_decref(s);
            free(src);
        } else {
            bad |= compile_tpl(v, ctx, &wh->payload, p, errs) != 0;
        }
    }

    v = json_object_get(j, "rate_key");
    if (v) {
        snprintf(p, sizeof(p), "%s.rate_key", path);
        bad |= compile_tpl(v, FBR_TPL_TEXT, &wh->rate_key, p, errs) != 0;
    }
    bad |= compile_rate(j, "room_rate", &wh->room_rate, path, errs) != 0;
    bad |= compile_rate(j, "token_rate", &wh->token_rate, path, errs) != 0;

    v = json_object_get(j, "headers");
    if (json_is_object(v)) {
        wh->headers = fbr_xcalloc(json_object_size(v) + 1, sizeof(*wh->headers));
        json_t *hv;
        json_object_foreach (v, key, hv) {
            snprintf(p, sizeof(p), "%s.headers.%s", path, key);
            int ok = fbr_http_token(key, strlen(key));
            if (!ok) {
                fbr_cfgerr_add(errs, p, "not a valid header name");
                bad = 1;
                continue;
            }
            for (size_t i = 0; reserved_headers[i]; i++) {
                if (strcasecmp(key, reserved_headers[i]) == 0) {
                    fbr_cfgerr_add(errs, p, "set by firebridge itself%s",
                                   i == 4 ? " (use content_type)" : "");
                    ok = 0;
                }
            }
            struct fbr_tpl *tpl = NULL;
            if (!ok || compile_tpl(hv, FBR_TPL_HEADER, &tpl, p, errs) != 0) {
                bad = 1;
                continue;
            }
            wh->headers[wh->nheaders].name = fbr_xstrdup(key);
            wh->headers[wh->nheaders++].value = tpl;
        }
    }
    if (bad) {
        fbr_webhook_unref(&wh);
        return -1;
    }
    *out = wh;
    return 0;
}

int fbr_webhooks_compile(json_t *webhooks, struct fbr_webhooks *out, struct fbr_cfgerr *errs)
{
    out->v = NULL;
    out->n = 0;
    if (!webhooks)
        return FBR_OK;
    if (!json_is_array(webhooks)) {
        fbr_cfgerr_add(errs, "webhooks", "must be an array");
        return FBR_INVALID;
    }
    size_t n = json_array_size(webhooks);
    out->v = fbr_xcalloc(n ? n : 1, sizeof(*out->v));
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        struct fbr_webhook *wh = NULL;
        if (compile_one(json_array_get(webhooks, i), i, &wh, errs) != 0) {
            bad = 1;
            continue;
        }
        out->v[out->n++] = wh;
    }
    if (bad) {
        fbr_webhooks_clear(out);
        return FBR_INVALID;
    }
    return FBR_OK;
}

void fbr_webhooks_clear(struct fbr_webhooks *w)
{
    for (size_t i = 0; i < w->n; i++)
        fbr_webhook_unref(&w->v[i]);
    free(w->v);
    w->v = NULL;
    w->n = 0;
}

unsigned fbr_webhook_namespaces(const struct fbr_webhook *wh)
{
    unsigned bits = fbr_tpl_namespaces(wh->url) | fbr_tpl_namespaces(wh->payload) |
                    fbr_tpl_namespaces(wh->rate_key);
    for (size_t i = 0; i < wh->nheaders; i++)
        bits |= fbr_tpl_namespaces(wh->headers[i].value);
    return bits;
}

unsigned fbr_webhooks_namespaces(const struct fbr_webhooks *w)
{
    unsigned bits = 0;
    for (size_t i = 0; w && i < w->n; i++)
        if (w->v[i]->enabled)
            bits |= fbr_webhook_namespaces(w->v[i]);
    return bits;
}

/* ---- rendering -------------------------------------------------------------------------- */

void fbr_outreq_init(struct fbr_outreq *o)
{
    memset(o, 0, sizeof(*o));
    fbr_render_init(&o->url);
    fbr_render_init(&o->body);
    fbr_render_init(&o->rate_key);
}

/* Header slots allocated: code that fills the arrays by hand (a replayed dead letter) may set
 * nheaders and leave headers_cap 0. */
static size_t header_slots(const struct fbr_outreq *o)
{
    return o->headers_cap > o->nheaders ? o->headers_cap : o->nheaders;
}

static void reserve_headers(struct fbr_outreq *o, size_t n)
{
    if (n <= o->headers_cap)
        return;
    o->header_names = fbr_xrealloc(o->header_names, n * sizeof(*o->header_names));
    o->headers = fbr_xrealloc(o->headers, n * sizeof(*o->headers));
    for (size_t i = o->headers_cap; i < n; i++)
        fbr_render_init(&o->headers[i]);
    o->headers_cap = n;
}

/*
 * Parses the rendered URL once for the whole data path: the parse is kept in o->url_pos, which
 * the delivery engine and the client read instead of parsing again.  A webhook without a rate key
 * of its own gets the default one here: a HipChat room notification URL
 * (/v2/room/{room}/notification) is keyed "room:<authority>/<room>", so that every webhook posting
 * to one room shares the room's limit whatever its query or scheme.  Any other URL (or one
 * longer than the buffer) keeps o->rate_key empty: the engine then keys scheme + host + path.
 */
static void parse_url(struct fbr_outreq *o, int default_key)
{
    static const char pre[] = "/v2/room/", suf[] = "/notification";
    char url[4096], key[1024];
    struct fbr_url u;
    const char *why;
    if (o->url.total > sizeof(url))
        return;
    fbr_render_copy(&o->url, url);
    if (fbr_url_parse(url, o->url.total, &u, &why) == FBR_OK)
        fbr_url_pos_keep(&u, url, o->url.total, &o->url_pos);
    /* the key is taken by syntax alone: the engine refuses an unsendable URL when it is queued
     * (never sent, whatever its rate key) */
    else if (!default_key || fbr_url_split(url, o->url.total, &u) != FBR_OK)
        return;
    if (!default_key)
        return;
    const char *path = u.path.ptr;
    size_t n = u.path.len;
    if (n <= sizeof(pre) - 1 + sizeof(suf) - 1 || strncmp(path, pre, sizeof(pre) - 1) != 0 ||
        memcmp(path + n - (sizeof(suf) - 1), suf, sizeof(suf) - 1) != 0)
        return;
    const char *room = path + sizeof(pre) - 1;
    size_t rlen = n - (sizeof(pre) - 1) - (sizeof(suf) - 1);
    if (memchr(room, '/', rlen))
        return;
    const struct fbr_slice parts[] = {{"room:", 5}, u.authority, {"/", 1}, {room, rlen}};
    fbr_render_set_copy(&o->rate_key, key, fbr_join(key, sizeof(key), parts, FBR_ARRAY_LEN(parts)));
}

int fbr_outreq_render(struct fbr_outreq *o, struct fbr_webhook *wh, json_t *event)
{
    fbr_outreq_release(o);
    struct fbr_tpl_scope scope = {.event = event, .alert = json_object_get(event, "ALERT")};
    int rc = fbr_tpl_render(wh->url, &scope, &o->url);
    if (rc == FBR_INVALID)
        rc = FBR_OK; /* an unsendable URL: the engine dead-letters it (see webhook.h) */
    if (rc == FBR_OK && wh->payload)
        rc = fbr_tpl_render(wh->payload, &scope, &o->body);
    if (rc == FBR_OK && wh->rate_key)
        rc = fbr_tpl_render(wh->rate_key, &scope, &o->rate_key);
    if (rc == FBR_OK)
        parse_url(o, !wh->rate_key);
    if (rc == FBR_OK && wh->nheaders) {
        reserve_headers(o, wh->nheaders);
        for (size_t i = 0; i < wh->nheaders && rc == FBR_OK; i++) {
            fbr_render_reset(&o->headers[i]);
            o->header_names[i] = wh->headers[i].name;
            rc = fbr_tpl_render(wh->headers[i].value, &scope, &o->headers[i]);
        }
    }
    if (rc != FBR_OK)
        return rc;
    o->webhook = fbr_webhook_ref(wh);
    o->event = json_incref(event);
    o->method = wh->method;
    o->content_type = wh->content_type;
    o->nheaders = wh->nheaders;
    return FBR_OK;
}

void fbr_outreq_move(struct fbr_outreq *dst, struct fbr_outreq *src)
{
    *dst = *src;
    fbr_outreq_init(src);
}

void fbr_outreq_release(struct fbr_outreq *o)
{
    o->headers_cap = header_slots(o);
    if (!o->webhook) {
        /* A replayed dead letter owns its strings. */
        free(o->content_type);
        for (size_t i = 0; i < o->nheaders; i++)
            free((char *)o->header_names[i]);
    }
    fbr_webhook_unref(&o->webhook);
    json_decref(o->event);
    o->event = NULL;
    o->content_type = NULL;
    o->nheaders = 0;
    o->method = 0;
    fbr_render_reset(&o->url);
    memset(&o->url_pos, 0, sizeof(o->url_pos));
    fbr_render_reset(&o->body);
    fbr_render_reset(&o->rate_key);
    for (size_t i = 0; i < o->headers_cap; i++)
        fbr_render_reset(&o->headers[i]);
}

void fbr_outreq_free(struct fbr_outreq *o)
{
    fbr_outreq_release(o); /* also folds nheaders into headers_cap */
    fbr_render_free(&o->url);
    fbr_render_free(&o->body);
    fbr_render_free(&o->rate_key);
    for (size_t i = 0; i < o->headers_cap; i++)
        fbr_render_free(&o->headers[i]);
    free(o->headers);
    free(o->header_names);
    o->headers = NULL;
    o->header_names = NULL;
    o->headers_cap = 0;
}
