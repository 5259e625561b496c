/*
 * addon.c - Single Room mode, the HipChat Connect add-on (addon.h): the `hipchat`/`oncall_api`
 * configuration, the capabilities descriptor, install and uninstall, the timeline -> room
 * notifications (an intake observer submitting to the delivery engine with the installation's
 * token), the room -> timeline webhook with its commands, and the configuration page.  It hangs
 * off both ends of the data path: its routes sit beside the intake's, its notifications enter
 * the delivery step like rendered webhooks.
 */
#include "firebridge/addon.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "firebridge/addon_store.h"
#include "firebridge/config.h"
#include "firebridge/delivery.h"
#include "firebridge/events.h"
#include "firebridge/incidents.h"
#include "firebridge/intake.h"
#include "firebridge/json.h"
#include "firebridge/jwt.h"
#include "firebridge/log.h"
#include "firebridge/metrics.h"
#include "firebridge/server.h"
#include "firebridge/template.h"
#include "firebridge/url.h"

#define CAPS_MAX_BODY (64u * 1024u) /* a capabilities document larger than this is refused */
#define MESSAGE_MAX 9000            /* characters of a room notification (HipChat: 10,000) */
#define LIST_MAX 20                 /* /incidents lists at most this many */
#define RECENT_MAX 20               /* notifications remembered per add-on for the page */

/* ---- configuration ------------------------------------------------------------------------ */

static const char *const item_names[] = {
#define FBR_X(name, text) text,
    FBR_ADDON_ITEM_MAP(FBR_X)
#undef FBR_X
};

struct fbr_addon_config {
    unsigned refs;
    char *public_url; /* without a trailing '/' */
    char *addon_key, *name, *description, *from_name;
    char **hosts;
    size_t nhosts;
    unsigned notify;                                 /* bit per enum fbr_addon_item */
    struct fbr_tpl *templates[FBR_ADDON_ITEM_COUNT]; /* JSON body templates, or NULL */
    struct {
        char *url, *api_id, *api_key, *username; /* url NULL: no platform API */
    } oncall;
};

/* One row per key: the checker's field and the README reference's text. */
struct key_doc {
    struct fbr_field f;
    const char *value, *def, *help;
};

static const struct key_doc hipchat_keys[] = {
    {{"addon_key", FBR_F_STRING, 0, 0, 0},
     "string",
     "io.firebridge.addon",
     "descriptor `key`; the routing key is appended (`io.firebridge.addon.devops`)"},
    {{"name", FBR_F_STRING, 0, 0, 0}, "string", "firebridge", "descriptor `name`"},
    {{"description", FBR_F_STRING, 0, 0, 0},
     "string",
     "On-call timeline in this room",
     "descriptor `description`"},
    {{"from_name", FBR_F_STRING, 0, 0, 0},
     "string",
     "firebridge",
     "`hipchatApiConsumer.fromName` and the `from` label of room notifications"},
    {{"capabilities_hosts", FBR_F_ARRAY, 0, 0, 0},
     "array of host names",
     "[\"api.hipchat.com\"]",
     "hosts an install's `capabilitiesUrl` (and the token and API URLs it names) may be on; "
     "others are refused 403"},
    {{"notify", FBR_F_ARRAY, 0, 0, 0},
     "array of alert/incident/chat/oncall/paging",
     "all",
     "which timeline items are posted to the room"},
    {{"templates", FBR_F_OBJECT, 0, 0, 0},
     "object",
     "(built-in)",
     "per item (`alert`, `incident`, ...): a room-notification body template (string or JSON "
     "object, `${{NS.FIELD}}` as in webhooks, JSON-escaped) replacing the built-in message"},
};

static const struct key_doc oncall_keys[] = {
    {{"url", FBR_F_STRING, 1, 0, 0},
     "URL",
     "(required)",
     "the platform's public API base (`https://api.victorops.com`)"},
    {{"api_id", FBR_F_STRING, 1, 0, 0}, "string", "(required)", "`X-VO-Api-Id`"},
    {{"api_key", FBR_F_STRING, 1, 0, 0}, "string", "(required)", "`X-VO-Api-Key` (never logged)"},
    {{"username", FBR_F_STRING, 0, 0, 0},
     "string",
     "firebridge",
     "platform user the chats, acks and resolves are posted as"},
};

void fbr_addon_print_reference(FILE *out)
{
    fprintf(out, "| Section key | Value | Default | Meaning |\n");
    fprintf(out, "|-------------|-------|---------|---------|\n");
    for (size_t i = 0; i < FBR_ARRAY_LEN(hipchat_keys); i++)
        fprintf(out, "| `hipchat.%s` | %s | %s | %s |\n", hipchat_keys[i].f.key,
                hipchat_keys[i].value, hipchat_keys[i].def, hipchat_keys[i].help);
    for (size_t i = 0; i < FBR_ARRAY_LEN(oncall_keys); i++)
        fprintf(out, "| `oncall_api.%s` | %s | %s | %s |\n", oncall_keys[i].f.key,
                oncall_keys[i].value, oncall_keys[i].def, oncall_keys[i].help);
}

/* Runs the shared object checker over a key_doc table; its lines go to errs. */
static void check_keys(json_t *obj, const char *path, const struct key_doc *docs, size_t n,
                       struct fbr_cfgerr *errs)
{
    struct fbr_field fields[16];
    for (size_t i = 0; i < n; i++)
        fields[i] = docs[i].f;
    fbr_config_check_fields(obj, path, fields, n, errs);
}

static char *str_or(json_t *o, const char *k, const char *def)
{
    const char *v = json_string_value(json_object_get(o, k));
    return fbr_xstrdup(v ? v : def);
}

void fbr_addon_config_unref(struct fbr_addon_config **cp)
{
    struct fbr_addon_config *c = *cp;
    *cp = NULL;
    if (!c || --c->refs > 0)
        return;
    free(c->public_url);
    free(c->addon_key);
    free(c->name);
    free(c->description);
    free(c->from_name);
    for (size_t i = 0; i < c->nhosts; i++)
        free(c->hosts[i]);
    free(c->hosts);
    for (size_t i = 0; i < FBR_ADDON_ITEM_COUNT; i++)
        fbr_tpl_unref(&c->templates[i]);
    free(c->oncall.url);
    free(c->oncall.api_id);
    free(c->oncall.api_key);
    free(c->oncall.username);
    free(c);
}

static int item_parse(const char *s, enum fbr_addon_item *out)
{
    for (size_t i = 0; i < FBR_ADDON_ITEM_COUNT; i++)
        if (strcmp(s, item_names[i]) == 0) {
            *out = (enum fbr_addon_item)i;
            return FBR_OK;
        }
    return FBR_NOTFOUND;
}

int fbr_addon_config_compile(json_t *hipchat, json_t *oncall_api, const char *public_url,
                             struct fbr_addon_config **out, struct fbr_cfgerr *errs)
{
    *out = NULL;
    size_t before = errs->n;
    if (!hipchat) {
        if (oncall_api)
            fbr_cfgerr_add(errs, "oncall_api",
                           "is only used by the `hipchat` section (Single "
                           "Room mode), which is missing");
        return errs->n == before ? FBR_OK : FBR_INVALID;
    }
    struct fbr_addon_config *c = fbr_xcalloc(1, sizeof(*c));
    c->refs = 1;
    check_keys(hipchat, "hipchat", hipchat_keys, FBR_ARRAY_LEN(hipchat_keys), errs);
    struct fbr_url u;
    const char *why = NULL;
    if (!public_url) {
        fbr_cfgerr_add(errs, "hipchat",
                       "needs --public-url (`public_url`): the URL under which "
                       "HipChat reaches firebridge");
    } else if (fbr_url_parse(public_url, strlen(public_url), &u, &why) != FBR_OK || u.query.ptr ||
               u.fragment.ptr) {
        fbr_cfgerr_add(errs, "public_url", "must be an absolute http(s) URL without query: %s",
                       why ? why : "has a query or fragment");
    } else {
        size_t n = strlen(public_url);
        while (n && public_url[n - 1] == '/')
            n--;
        c->public_url = fbr_xstrndup(public_url, n);
    }
    c->addon_key = str_or(hipchat, "addon_key", "io.firebridge.addon");
    for (const char *p = c->addon_key; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.')) {
            fbr_cfgerr_add(errs, "hipchat.addon_key", "may hold letters, digits, '-', '_', '.'");
            break;
        }
    c->name = str_or(hipchat, "name", "firebridge");
    c->description = str_or(hipchat, "description", "On-call timeline in this room");
    c->from_name = str_or(hipchat, "from_name", "firebridge");
    if (strlen(c->from_name) > 64)
        fbr_cfgerr_add(errs, "hipchat.from_name", "at most 64 characters (HipChat's `from`)");
    json_t *hosts = json_object_get(hipchat, "capabilities_hosts");
    if (json_is_array(hosts)) {
        size_t i;
        json_t *h;
        c->hosts = fbr_xcalloc(json_array_size(hosts) + 1, sizeof(*c->hosts));
        json_array_foreach(hosts, i, h)
        {
            if (!json_is_string(h) || json_string_length(h) == 0 ||
                json_string_length(h) > FBR_URL_HOST_MAX) {
                char path[64];
                snprintf(path, sizeof(path), "hipchat.capabilities_hosts[%zu]", i);
                fbr_cfgerr_add(errs, path, "expected a host name");
                continue;
            }
            c->hosts[c->nhosts++] = fbr_xstrdup(json_string_value(h));
        }
    } else {
        c->hosts = fbr_xcalloc(1, sizeof(*c->hosts));
        c->hosts[c->nhosts++] = fbr_xstrdup("api.hipchat.com");
    }
    json_t *notify = json_object_get(hipchat, "notify");
    c->notify = (1u << FBR_ADDON_ITEM_COUNT) - 1;
    if (json_is_array(notify)) {
        c->notify = 0;
        size_t i;
        json_t *v;
        json_array_foreach(notify, i, v)
        {
            enum fbr_addon_item it;
            if (!json_is_string(v) || item_parse(json_string_value(v), &it) != FBR_OK) {
                char path[64];
                snprintf(path, sizeof(path), "hipchat.notify[%zu]", i);
                fbr_cfgerr_add(errs, path,
                               "must be one of \"alert\", \"incident\", \"chat\", \"oncall\", "
                               "\"paging\"");
                continue;
            }
            c->notify |= 1u << it;
        }
    }
    json_t *tpls = json_object_get(hipchat, "templates");
    if (json_is_object(tpls)) {
        const char *k;
        json_t *v;
        json_object_foreach(tpls, k, v)
        {
            char path[128];
            snprintf(path, sizeof(path), "hipchat.templates.%.60s", k);
            enum fbr_addon_item it;
            if (item_parse(k, &it) != FBR_OK) {
                fbr_cfgerr_add(errs, path, "unknown item (alert, incident, chat, oncall, paging)");
                continue;
            }
            char *src = json_is_string(v)   ? fbr_xstrdup(json_string_value(v))
                        : json_is_object(v) ? fbr_json_dumps(v, JSON_COMPACT)
                                            : NULL;
            if (!src) {
                fbr_cfgerr_add(errs, path, "expected a template string or a JSON object");
                continue;
            }
            char err[256];
            if (fbr_tpl_compile(src, strlen(src), FBR_TPL_JSON, &c->templates[it], err,
                                sizeof(err)) != FBR_OK)
                fbr_cfgerr_add(errs, path, "%s", err);
            free(src);
        }
    }
    if (oncall_api) {
        check_keys(oncall_api, "oncall_api", oncall_keys, FBR_ARRAY_LEN(oncall_keys), errs);
        const char *url = json_string_value(json_object_get(oncall_api, "url"));
        if (url && fbr_url_parse(url, strlen(url), &u, &why) != FBR_OK)
            fbr_cfgerr_add(errs, "oncall_api.url", "%s", why);
        if (url) {
            size_t n = strlen(url);
            while (n && url[n - 1] == '/')
                n--;
            c->oncall.url = fbr_xstrndup(url, n);
        }
        c->oncall.api_id = str_or(oncall_api, "api_id", "");
        c->oncall.api_key = str_or(oncall_api, "api_key", "");
        c->oncall.username = str_or(oncall_api, "username", "firebridge");
    }
    if (errs->n != before) {
        fbr_addon_config_unref(&c);
        return FBR_INVALID;
    }
    *out = c;
    return FBR_OK;
}

/* ---- URLs and the descriptor -------------------------------------------------------------- */

int fbr_addon_capabilities_url(const char *public_url, const char *routing_key, char *buf,
                               size_t len)
{
    struct fbr_url u;
    const char *why;
    size_t rl = strlen(routing_key);
    if (!public_url || fbr_url_parse(public_url, strlen(public_url), &u, &why) != FBR_OK ||
        rl == 0 || !fbr_routing_key_ok(routing_key, rl))
        return FBR_INVALID;
    size_t n = strlen(public_url);
    while (n && public_url[n - 1] == '/')
        n--;
    int w = snprintf(buf, len, "%.*s" FBR_ADDON_PREFIX "%s/capabilities", (int)n, public_url,
                     routing_key);
    return w > 0 && (size_t)w < len ? FBR_OK : FBR_INVALID;
}

/* "<public>/hipchat/<rk>/<tail>" as a new heap string. */
static char *addon_url(const struct fbr_addon_config *c, struct fbr_slice rk, const char *tail)
{
    size_t n = strlen(c->public_url) + sizeof(FBR_ADDON_PREFIX) + rk.len + strlen(tail) + 2;
    char *s = fbr_xmalloc(n);
    snprintf(s, n, "%s" FBR_ADDON_PREFIX "%.*s/%s", c->public_url, (int)rk.len, rk.ptr, tail);
    return s;
}

json_t *fbr_addon_descriptor(const struct fbr_addon_config *c, struct fbr_slice rk)
{
    char *self = addon_url(c, rk, "capabilities");
    char *installed = addon_url(c, rk, "installed");
    char *hook = addon_url(c, rk, "webhook");
    char *page = addon_url(c, rk, "configure");
    char key[512];
    snprintf(key, sizeof(key), "%s.%.*s", c->addon_key, (int)rk.len, rk.ptr);
    json_t *d = json_pack(
        "{s:s, s:s, s:s, s:{s:s, s:s}, s:{s:s, s:s},"
        " s:{s:{s:[s,s], s:s}, s:{s:s, s:b, s:b}, s:[{s:s, s:s, s:s, s:s, s:s, s:s}],"
        " s:{s:s}}}",
        "key", key, "name", c->name, "description", c->description, "vendor", "name", "firebridge",
        "url", c->public_url, "links", "self", self, "homepage", c->public_url, "capabilities",
        "hipchatApiConsumer", "scopes", "send_notification", "view_room", "fromName", c->from_name,
        "installable", "callbackUrl", installed, "allowRoom", 1, "allowGlobal", 0, "webhook", "url",
        hook, "event", "room_message", "pattern", ".*", "name", "firebridge timeline", "key",
        "firebridge-room-message", "authentication", "jwt", "configurable", "url", page);
    free(self);
    free(installed);
    free(hook);
    free(page);
    return d;
}

/* ---- the add-on --------------------------------------------------------------------------- */

struct recent {
    uint64_t wall_ms;
    int64_t room_id;
    char item[12];
    char id[40];
    char outcome[96]; /* the delivery's last state, from the engine's transitions */
};

struct fbr_addon {
    struct fbr_addon_opts o;
    struct fbr_addon_config *cfg;
    struct fbr_addon_store *store;
    struct fbr_client *client;
    struct recent recent[RECENT_MAX];
    size_t nrecent;
    /* metrics (the registry's) */
    uint64_t *m_install[8];
    uint64_t *m_uninstall, *m_notify_ok, *m_notify_refused, *m_chats, *m_commands, *m_ignored;
    uint64_t *m_api_ok, *m_api_refused;
    uint64_t *m_webhook_rejected[FBR_JWT_ERR_COUNT + 2];
};

enum install_result {
    IR_OK,
    IR_BAD_REQUEST,
    IR_FORBIDDEN_HOST,
    IR_CAPABILITIES,
    IR_LINKS_SELF,
    IR_TOKEN_REFUSED,
    IR_ERROR,
    IR_COUNT
};
static const char *const install_result_names[] = {"ok",
                                                   "bad_request",
                                                   "forbidden_host",
                                                   "bad_capabilities",
                                                   "links_self_mismatch",
                                                   "token_refused",
                                                   "error"};

static uint64_t real_clock_s(void)
{
    return fbr_wall_ms() / 1000u;
}

static int host_allowed(const struct fbr_addon_config *c, struct fbr_slice host)
{
    for (size_t i = 0; i < c->nhosts; i++)
        if (strlen(c->hosts[i]) == host.len && strncasecmp(c->hosts[i], host.ptr, host.len) == 0)
            return 1;
    return 0;
}

/* An http(s) URL on an allow-listed host; 0 otherwise (why set). */
static int url_allowed(const struct fbr_addon_config *c, const char *url, const char **why)
{
    struct fbr_url u;
    if (fbr_url_parse(url, strlen(url), &u, why) != FBR_OK)
        return 0;
    if (!host_allowed(c, u.host)) {
        *why = "host is not in hipchat.capabilities_hosts";
        return 0;
    }
    return 1;
}

/* ---- submitting requests ------------------------------------------------------------------ */

/* Queues one request made here (no webhook) through fbr_delivery_queue(): url, body and headers
 * copied into an outreq the engine owns; auth NULL: no credentials. */
static int submit(struct fbr_addon *a, unsigned method, const char *url, const char *body,
                  const char *const *hnames, const char *const *hvals, size_t nh,
                  struct fbr_install *auth, char *id)
{
    struct fbr_outreq o;
    fbr_outreq_init(&o);
    fbr_render_set_copy(&o.url, url, strlen(url));
    fbr_render_set_copy(&o.body, body, strlen(body));
    o.method = method;
    o.content_type = fbr_xstrdup("application/json");
    if (nh) {
        o.header_names = fbr_xcalloc(nh, sizeof(*o.header_names));
        o.headers = fbr_xcalloc(nh, sizeof(*o.headers));
        o.headers_cap = nh;
        for (size_t i = 0; i < nh; i++) {
            o.header_names[i] = fbr_xstrdup(hnames[i]);
            fbr_render_init(&o.headers[i]);
            fbr_render_set_copy(&o.headers[i], hvals[i], strlen(hvals[i]));
        }
        o.nheaders = nh;
    }
    struct fbr_delivery_auth_ref ref = {&fbr_install_auth, auth, auth ? auth->oauth_id : NULL};
    /* the intake has answered 200 for what this posts: never drop it, dead-letter it */
    struct fbr_delivery_queue_opts qo = {
        .auth = auth ? &ref : NULL, .id_out = id, .dead_letter_if_full = 1};
    int rc = fbr_delivery_queue(a->o.engine, &o, &qo);
    fbr_outreq_free(&o);
    return rc;
}

/* POST/PATCH to the platform's public API, when oncall_api is configured. */
static void platform_call(struct fbr_addon *a, unsigned method, const char *path, json_t *body)
{
    const struct fbr_addon_config *c = a->cfg;
    if (!c || !c->oncall.url) {
        json_decref(body);
        return;
    }
    size_t n = strlen(c->oncall.url) + strlen(path) + 1;
    char *url = fbr_xmalloc(n);
    snprintf(url, n, "%s%s", c->oncall.url, path);
    char *text = fbr_json_dumps(body, JSON_COMPACT);
    json_decref(body);
    const char *names[] = {"X-VO-Api-Id", "X-VO-Api-Key"};
    const char *vals[] = {c->oncall.api_id, c->oncall.api_key};
    if (submit(a, method, url, text, names, vals, 2, NULL, NULL) == FBR_OK) {
        (*a->m_api_ok)++;
    } else {
        (*a->m_api_refused)++;
        fbr_log(FBR_LOG_WARN, NULL, "posting to the on-call platform's API",
                "%s %s refused by the delivery queue", method == FBR_M_PATCH ? "PATCH" : "POST",
                path);
    }
    free(text);
    free(url);
}

/* ---- timeline -> room --------------------------------------------------------------------- */

/* A small growable string for messages. */
struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = fbr_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Appends s HTML-escaped, at most max bytes of output, escapes included (cut before a whole
 * character or entity, then an ellipsis): each field's bound is its share of HipChat's
 * 10,000-character message limit, which the escaping could otherwise push a message over. */
static void sb_html(struct sbuf *b, const char *s, size_t max)
{
    if (!s)
        return;
    size_t out = 0;
    for (size_t i = 0; s[i];) {
        const char *esc = NULL;
        switch (s[i]) {
        case '<':
            esc = "&lt;";
            break;
        case '>':
            esc = "&gt;";
            break;
        case '&':
            esc = "&amp;";
            break;
        case '"':
            esc = "&quot;";
            break;
        case '\'':
            esc = "&#39;";
            break;
        default:
            break;
        }
        size_t in = 1, k;
        if (esc) {
            k = strlen(esc);
        } else {
            while (((unsigned char)s[i + in] & 0xC0) == 0x80)
                in++;
            k = in;
        }
        if (out + k > max) { /* never half a character or half an entity */
            sb_str(b, "\xe2\x80\xa6");
            return;
        }
        if (esc)
            sb_str(b, esc);
        else
            sb_add(b, s + i, k);
        out += k;
        i += in;
    }
}

static const char *ns_str(json_t *ev, const char *ns, const char *k)
{
    json_t *v = json_object_get(json_object_get(ev, ns), k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* A namespace value as text: strings as they are, numbers printed. */
static const char *ns_text(json_t *ev, const char *ns, const char *k, char *buf, size_t len)
{
    json_t *v = json_object_get(json_object_get(ev, ns), k);
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    if (json_is_boolean(v))
        return json_is_true(v) ? "true" : "false";
    return NULL;
}

/* The routing key a timeline item names: ALERT.routing_key, else ROUTING_KEY (or routing_key)
 * in CHAT, ONCALL or PAGE. */
static const char *event_routing_key(json_t *ev)
{
    static const char *const ns[] = {"CHAT", "ONCALL", "PAGE", "STATE"};
    const char *rk = ns_str(ev, "ALERT", "routing_key");
    for (size_t i = 0; !rk && i < FBR_ARRAY_LEN(ns); i++) {
        rk = ns_str(ev, ns[i], "ROUTING_KEY");
        if (!rk)
            rk = ns_str(ev, ns[i], "routing_key");
    }
    return rk;
}

/* The built-in notification for one item (new reference). */
static json_t *builtin_message(const struct fbr_addon_config *c, enum fbr_addon_item item,
                               json_t *ev, uint32_t mask)
{
    struct sbuf b = {0};
    const char *color = "gray";
    int notify = 0;
    char nbuf[32];
    switch (item) {
    case FBR_ADDON_ITEM_ALERT: {
        const char *mt = ns_str(ev, "ALERT", "message_type");
        const char *title = ns_str(ev, "ALERT", "entity_display_name");
        if (!title)
            title = ns_str(ev, "ALERT", "entity_id");
        mt = mt ? mt : "INFO";
        if (strcmp(mt, "CRITICAL") == 0) {
            color = "red";
            notify = 1;
        } else if (strcmp(mt, "WARNING") == 0) {
            color = "yellow";
        } else if (strcmp(mt, "RECOVERY") == 0 || strcmp(mt, "OK") == 0) {
            color = "green";
        }
        sb_str(&b, "<b>");
        sb_html(&b, mt, 64);
        sb_str(&b, "</b>: ");
        sb_html(&b, title, 1024);
        const char *sm = ns_str(ev, "ALERT", "state_message");
        if (sm && *sm) {
            sb_str(&b, "<br>");
            sb_html(&b, sm, 2000);
        }
        break;
    }
    case FBR_ADDON_ITEM_INCIDENT: {
        const char *n = ns_text(ev, "STATE", "INCIDENT_NAME", nbuf, sizeof(nbuf));
        const char *title = ns_str(ev, "ALERT", "entity_display_name");
        if (!title)
            title = ns_str(ev, "STATE", "ENTITY_ID");
        const char *what = "triggered";
        color = "red";
        notify = 1;
        if (mask & FBR_EV_BIT(FBR_EV_INCIDENT_ACKNOWLEDGED)) {
            what = "acknowledged";
            color = "gray";
            notify = 0;
        } else if (mask & FBR_EV_BIT(FBR_EV_INCIDENT_RESOLVED)) {
            what = "resolved";
            color = "green";
            notify = 0;
        }
        sb_str(&b, "Incident <b>#");
        sb_html(&b, n ? n : "?", 32);
        sb_printf(&b, "</b> %s", what);
        const char *by = ns_str(ev, "STATE", "ACK_USER");
        if (strcmp(what, "triggered") != 0 && by && *by) {
            sb_str(&b, " by ");
            sb_html(&b, by, 256);
        }
        sb_str(&b, ": ");
        sb_html(&b, title, 1024);
        break;
    }
    case FBR_ADDON_ITEM_CHAT: {
        const char *who = ns_str(ev, "CHAT", "USER_NAME");
        if (!who)
            who = ns_text(ev, "CHAT", "USER_ID", nbuf, sizeof(nbuf));
        sb_str(&b, "<b>");
        sb_html(&b, who ? who : "someone", 256);
        sb_str(&b, "</b>: ");
        sb_html(&b, ns_str(ev, "CHAT", "TEXT"), 4000);
        break;
    }
    case FBR_ADDON_ITEM_ONCALL: {
        color = "purple";
        sb_html(&b, ns_text(ev, "ONCALL", "USER_ID", nbuf, sizeof(nbuf)), 256);
        sb_str(&b, (mask & FBR_EV_BIT(FBR_EV_OFF_CALL)) ? " is now off call" : " is now on call");
        const char *team = ns_str(ev, "ONCALL", "TEAM_NAME");
        if (team) {
            sb_str(&b, " for ");
            sb_html(&b, team, 256);
        }
        break;
    }
    case FBR_ADDON_ITEM_PAGING: {
        color = "yellow";
        int stop = (mask & FBR_EV_BIT(FBR_EV_PAGING_STOP)) != 0;
        sb_str(&b, stop ? "Paging stopped: " : "Paging ");
        sb_html(&b, ns_text(ev, "PAGE", "USER_ID", nbuf, sizeof(nbuf)), 256);
        break;
    }
    default:
        break;
    }
    json_t *m =
        json_pack("{s:s, s:s, s:s, s:b, s:s}", "message", b.p ? b.p : "(empty)", "message_format",
                  "html", "color", color, "notify", notify, "from", c->from_name);
    free(b.p);
    return m;
}

/* The request body for one item: the operator's template, else the built-in message.  Returns
 * a new heap string, or NULL when the template rendered nothing usable. */
static char *notification_body(const struct fbr_addon_config *c, enum fbr_addon_item item,
                               json_t *ev, uint32_t mask)
{
    if (c->templates[item]) {
        struct fbr_render r;
        fbr_render_init(&r);
        struct fbr_tpl_scope scope = {.event = ev, .alert = json_object_get(ev, "ALERT")};
        char *s = NULL;
        if (fbr_tpl_render(c->templates[item], &scope, &r) == FBR_OK)
            s = fbr_render_strdup(&r);
        fbr_render_free(&r);
        return s;
    }
    json_t *m = builtin_message(c, item, ev, mask);
    char *s = fbr_json_dumps(m, JSON_COMPACT);
    json_decref(m);
    return s;
}

static void remember(struct fbr_addon *a, const struct fbr_install *in, enum fbr_addon_item item,
                     const char *id)
{
    if (a->nrecent == RECENT_MAX) {
        memmove(a->recent, a->recent + 1, (RECENT_MAX - 1) * sizeof(a->recent[0]));
        a->nrecent--;
    }
    struct recent *r = &a->recent[a->nrecent++];
    r->wall_ms = fbr_wall_ms();
    r->room_id = in->room_id;
    snprintf(r->item, sizeof(r->item), "%s", item_names[item]);
    snprintf(r->id, sizeof(r->id), "%s", id);
    snprintf(r->outcome, sizeof(r->outcome), "queued");
}

/* The engine's transitions: the outcome of each remembered notification, for the page. */
static void on_delivery(const struct fbr_delivery_info *d, enum fbr_delivery_state from,
                        enum fbr_delivery_state to, void *arg)
{
    (void)from;
    struct fbr_addon *a = arg;
    for (size_t i = 0; i < a->nrecent; i++) {
        struct recent *r = &a->recent[i];
        if (strcmp(r->id, d->id) != 0)
            continue;
        if (to == FBR_DS_DELIVERED || to == FBR_DS_DEAD || to == FBR_DS_BACKING_OFF)
            snprintf(r->outcome, sizeof(r->outcome), "%s after %u attempt(s)%s%.60s",
                     fbr_delivery_state_name(to), d->attempts,
                     d->reason && *d->reason ? ": " : "", d->reason ? d->reason : "");
        else
            snprintf(r->outcome, sizeof(r->outcome), "%s", fbr_delivery_state_name(to));
        return;
    }
}

static void notify_room(struct fbr_addon *a, struct fbr_install *in, enum fbr_addon_item item,
                        json_t *ev, uint32_t mask)
{
    char *body = notification_body(a->cfg, item, ev, mask);
    if (!body) {
        (*a->m_notify_refused)++;
        return;
    }
    size_t bl = strlen(in->api_base);
    size_t n = bl + 64;
    char *url = fbr_xmalloc(n);
    snprintf(url, n, "%s%sroom/%lld/notification", in->api_base,
             bl && in->api_base[bl - 1] == '/' ? "" : "/", (long long)in->room_id);
    char id[64] = "";
    if (submit(a, FBR_M_POST, url, body, NULL, NULL, 0, in, id) == FBR_OK) {
        (*a->m_notify_ok)++;
        remember(a, in, item, id);
    } else {
        (*a->m_notify_refused)++;
        fbr_log(FBR_LOG_WARN, NULL, "posting a timeline item to a HipChat room",
                "room %lld: the delivery queue was full, so it went to the dead-letter file",
                (long long)in->room_id);
    }
    free(url);
    free(body);
}

/* Posts set's items to every installation of its routing key (post), or only counts them;
 * returns the count. */
static size_t timeline_walk(struct fbr_addon *a, const struct fbr_event_set *set, int post)
{
    if (!a->cfg || !set->event)
        return 0;
    const char *rk = event_routing_key(set->event);
    if (!rk)
        return 0;
    uint32_t m = set->mask;
    unsigned items = 0;
    if (m & FBR_EV_BIT(FBR_EV_ANY_ALERT))
        items |= 1u << FBR_ADDON_ITEM_ALERT;
    if (m & (FBR_EV_BIT(FBR_EV_INCIDENT_TRIGGERED) | FBR_EV_BIT(FBR_EV_INCIDENT_ACKNOWLEDGED) |
             FBR_EV_BIT(FBR_EV_INCIDENT_RESOLVED)))
        items |= 1u << FBR_ADDON_ITEM_INCIDENT;
    if (m & FBR_EV_BIT(FBR_EV_ALL_CHATS))
        items |= 1u << FBR_ADDON_ITEM_CHAT;
    if (m & FBR_EV_BIT(FBR_EV_ANY_ON_CALL))
        items |= 1u << FBR_ADDON_ITEM_ONCALL;
    if (m & FBR_EV_BIT(FBR_EV_ANY_PAGING))
        items |= 1u << FBR_ADDON_ITEM_PAGING;
    items &= a->cfg->notify;
    if (!items)
        return 0;
    /* a chat that came from a room is not posted back into that room */
    const char *src = ns_str(set->event, "CHAT", "SOURCE");
    json_t *src_room = json_object_get(json_object_get(set->event, "CHAT"), "ROOM_ID");
    size_t n, count = 0;
    struct fbr_install *const *v = fbr_addon_store_list(a->store, &n);
    for (size_t i = 0; i < n; i++) {
        struct fbr_install *in = v[i];
        if (strcasecmp(in->routing_key, rk) != 0)
            continue;
        for (unsigned it = 0; it < FBR_ADDON_ITEM_COUNT; it++) {
            if (!(items & (1u << it)))
                continue;
            if (it == FBR_ADDON_ITEM_CHAT && src && strcmp(src, "hipchat") == 0 &&
                json_is_integer(src_room) && json_integer_value(src_room) == in->room_id)
                continue;
            count++;
            if (post)
                notify_room(a, in, (enum fbr_addon_item)it, set->event, m);
        }
    }
    return count;
}

/* The intake observer: every accepted timeline item of an installed routing key. */
static void on_timeline(void *arg, const struct fbr_event_set *set)
{
    timeline_walk(arg, set, 1);
}

/* What on_timeline will queue for set, for the intake's all-or-nothing room check. */
static size_t on_timeline_need(void *arg, const struct fbr_event_set *set)
{
    return timeline_walk(arg, set, 0);
}

/* ---- HTTP: routing ------------------------------------------------------------------------ */

static void on_install(struct fbr_addon *a, struct fbr_http_req *req, struct fbr_slice rk);
static void on_uninstall(struct fbr_addon *a, struct fbr_http_req *req, struct fbr_slice rk,
                         struct fbr_slice oauth_id);
static void on_webhook(struct fbr_addon *a, struct fbr_http_req *req, struct fbr_slice rk);
static void on_configure(struct fbr_addon *a, struct fbr_http_req *req, struct fbr_slice rk);

static int seg_is(struct fbr_slice s, const char *lit)
{
    return fbr_slice_eq(s, fbr_slice_from(lit));
}

/* /hipchat/{rk}/{capabilities|installed[/{oauthId}]|webhook|configure} */
static void on_request(struct fbr_http_req *req, void *arg)
{
    struct fbr_addon *a = arg;
    static const size_t plen = sizeof(FBR_ADDON_PREFIX) - 1;
    if (!a->cfg) {
        fbr_http_reply_error(req, 404, "Single Room mode is off (no `hipchat` section)");
        return;
    }
    const char *p = req->path.ptr + plen, *end = req->path.ptr + req->path.len;
    const char *s1 = memchr(p, '/', (size_t)(end - p));
    struct fbr_slice rk = {p, s1 ? (size_t)(s1 - p) : 0};
    if (!s1 || rk.len == 0 || !fbr_routing_key_ok(rk.ptr, rk.len)) {
        fbr_http_reply_error(req, 404, "no such endpoint");
        return;
    }
    const char *t = s1 + 1;
    const char *s2 = memchr(t, '/', (size_t)(end - t));
    struct fbr_slice what = {t, s2 ? (size_t)(s2 - t) : (size_t)(end - t)};
    struct fbr_slice rest = {s2 ? s2 + 1 : end, s2 ? (size_t)(end - s2 - 1) : 0};
    unsigned allowed = 0;
    if (seg_is(what, "capabilities") && !s2) {
        allowed = FBR_M_GET | FBR_M_HEAD;
        if (req->method & allowed) {
            fbr_http_reply_json(req, 200, fbr_addon_descriptor(a->cfg, rk));
            return;
        }
    } else if (seg_is(what, "installed") && !s2) {
        allowed = FBR_M_POST;
        if (req->method == FBR_M_POST) {
            on_install(a, req, rk);
            return;
        }
    } else if (seg_is(what, "installed") && s2 && rest.len && !memchr(rest.ptr, '/', rest.len)) {
        allowed = FBR_M_DELETE;
        if (req->method == FBR_M_DELETE) {
            on_uninstall(a, req, rk, rest);
            return;
        }
    } else if (seg_is(what, "webhook") && !s2) {
        allowed = FBR_M_POST;
        if (req->method == FBR_M_POST) {
            on_webhook(a, req, rk);
            return;
        }
    } else if (seg_is(what, "configure") && !s2) {
        allowed = FBR_M_GET | FBR_M_HEAD;
        if (req->method & allowed) {
            on_configure(a, req, rk);
            return;
        }
    }
    if (!allowed) {
        fbr_http_reply_error(req, 404, "no such endpoint");
        return;
    }
    fbr_http_add_header(req, "Allow",
                        allowed == FBR_M_POST     ? "POST"
                        : allowed == FBR_M_DELETE ? "DELETE"
                                                  : "GET, HEAD");
    fbr_http_reply_error(req, 405, "method not allowed");
}

/* ---- install ------------------------------------------------------------------------------ */

struct install_op {
    struct fbr_addon *a;
    struct fbr_http_pending *pending;
    struct fbr_install *in; /* detached until stored */
};

static void install_done(struct install_op *op, enum install_result r, int status, const char *fmt,
                         ...) __attribute__((format(printf, 4, 5)));
static void install_done(struct install_op *op, enum install_result r, int status, const char *fmt,
                         ...)
{
    struct fbr_addon *a = op->a;
    (*a->m_install[r])++;
    if (r == IR_OK) {
        fbr_log(FBR_LOG_INFO, fbr_http_pending_id(op->pending), NULL,
                "HipChat add-on installed: routing key %s, room %lld, group %lld, "
                "installation %.4s... (the oauthId is the uninstall URL's key: not logged whole)",
                op->in->routing_key, (long long)op->in->room_id, (long long)op->in->group_id,
                op->in->oauth_id);
        fbr_http_pending_reply_json(&op->pending, 200, json_pack("{s:s}", "result", "success"));
    } else {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        fbr_log(FBR_LOG_WARN, fbr_http_pending_id(op->pending), "installing the HipChat add-on",
                "refused (%d) for routing key %s, room %lld: %s", status, op->in->routing_key,
                (long long)op->in->room_id, msg);
        fbr_http_pending_reply_json(&op->pending, status,
                                    json_pack("{s:s,s:s}", "result", "failure", "message", msg));
    }
    fbr_install_unref(&op->in);
    free(op);
}

static void on_first_token(struct fbr_install *in, int rc, const char *reason, void *arg)
{
    struct install_op *op = arg;
    struct fbr_addon *a = op->a;
    if (rc == FBR_DECLINED) {
        install_done(op, IR_TOKEN_REFUSED, 401, "the token endpoint refused the credentials: %s",
                     reason);
        return;
    }
    if (rc != FBR_OK) {
        install_done(op, IR_ERROR, 502, "no token: %s", reason);
        return;
    }
    in->tstate = FBR_TOKEN_VALID;
    if (!a->store) {
        install_done(op, IR_ERROR, 503, "shutting down");
        return;
    }
    int s = fbr_addon_store_add(a->store, in);
    if (s == FBR_LIMIT)
        install_done(op, IR_ERROR, 507, "too many installations (%d)", FBR_ADDON_MAX_INSTALLS);
    else if (s != FBR_OK)
        install_done(op, IR_ERROR, 500, "the installation could not be saved");
    else
        install_done(op, IR_OK, 200, "ok");
}

static void on_capabilities(const struct fbr_client_resp *r, void *arg)
{
    struct install_op *op = arg;
    struct fbr_addon *a = op->a;
    struct fbr_install *in = op->in;
    if (!a->cfg) { /* a reload removed the hipchat section while the document was on its way */
        install_done(op, IR_ERROR, 503, "Single Room mode was turned off by a reload");
        return;
    }
    if (r->err != FBR_CLIENT_ERR_NONE) {
        install_done(op, IR_CAPABILITIES, 502, "fetching capabilitiesUrl failed: %s", r->reason);
        return;
    }
    if (r->status != 200) {
        install_done(op, IR_CAPABILITIES, 502, "capabilitiesUrl answered %d", r->status);
        return;
    }
    json_t *doc = r->body_cut ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
    const char *self = json_string_value(json_object_get(json_object_get(doc, "links"), "self"));
    json_t *caps = json_object_get(doc, "capabilities");
    const char *token_url =
        json_string_value(json_object_get(json_object_get(caps, "oauth2Provider"), "tokenUrl"));
    const char *api =
        json_string_value(json_object_get(json_object_get(caps, "hipchatApiProvider"), "url"));
    const char *why = NULL;
    if (!doc) {
        install_done(op, IR_CAPABILITIES, 502,
                     "the capabilities document is not JSON (or over "
                     "%u bytes)",
                     CAPS_MAX_BODY);
    } else if (!self || strcmp(self, in->capabilities_url) != 0) {
        install_done(op, IR_LINKS_SELF, 403,
                     "the capabilities document's links.self is not the capabilitiesUrl fetched");
    } else if (!token_url || !api) {
        install_done(op, IR_CAPABILITIES, 502,
                     "the capabilities document lacks "
                     "oauth2Provider.tokenUrl or hipchatApiProvider.url");
    } else if (!url_allowed(a->cfg, token_url, &why) || !url_allowed(a->cfg, api, &why)) {
        install_done(op, IR_FORBIDDEN_HOST, 403, "tokenUrl or the API URL: %s", why);
    } else {
        in->token_url = fbr_xstrdup(token_url);
        in->api_base = fbr_xstrdup(api);
        if (fbr_install_fetch_token(in, a->client, on_first_token, op) != FBR_OK)
            install_done(op, IR_CAPABILITIES, 502, "tokenUrl is not a usable URL");
    }
    json_decref(doc);
}

static const char *jstr_bounded(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > FBR_ADDON_FIELD_MAX)
        return NULL;
    return json_string_value(v);
}

static void on_install(struct fbr_addon *a, struct fbr_http_req *req, struct fbr_slice rk)
{
    json_t *body = json_loadb(req->body.ptr, req->body.len, JSON_REJECT_DUPLICATES, NULL);
    const char *oid = jstr_bounded(body, "oauthId"), *secret = jstr_bounded(body, "oauthSecret");
    const char *caps = jstr_bounded(body, "capabilitiesUrl");
    json_t *room = json_object_get(body, "roomId"), *group = json_object_get(body, "groupId");
    const char *why = NULL;
    int bad_oid = 0;
    for (const char *p = oid; p && *p; p++)
        bad_oid |= *p <= 0x20 || *p == '/' || *p == 0x7f;
    if (!json_is_object(body) || !oid || !secret || !caps || bad_oid) {
        (*a->m_install[IR_BAD_REQUEST])++;
        fbr_http_reply_error(req, 400,
                             "expected {oauthId, oauthSecret, capabilitiesUrl, roomId, "
                             "groupId} with strings of 1 to %d characters",
                             FBR_ADDON_FIELD_MAX);
    } else if (!json_is_integer(room) || (group && !json_is_integer(group))) {
        (*a->m_install[IR_BAD_REQUEST])++;
        fbr_http_reply_error(req, 400,
                             "roomId (and groupId) must be integers: this add-on "
                             "installs into one room (allowGlobal is false)");
    } else if (!url_allowed(a->cfg, caps, &why)) {
        (*a->m_install[IR_FORBIDDEN_HOST])++;
        fbr_log(FBR_LOG_WARN, req->id, "installing the HipChat add-on",
                "refused: capabilitiesUrl: %s", why);
        fbr_http_reply_error(req, 403, "capabilitiesUrl refused: %s", why);
    } else {
        struct install_op *op = fbr_xcalloc(1, sizeof(*op));
        op->a = a;
        op->in = fbr_install_new();
        op->in->oauth_id = fbr_xstrdup(oid);
        op->in->oauth_secret = fbr_xstrdup(secret);
        op->in->capabilities_url = fbr_xstrdup(caps);
        op->in->routing_key = fbr_xstrndup(rk.ptr, rk.len);
        op->in->room_id = json_integer_value(room);
        op->in->group_id = group ? json_integer_value(group) : 0;
        op->in->installed_wall_ms = fbr_wall_ms();
        struct fbr_client_req creq = {.method = "GET",
                                      .url = op->in->capabilities_url,
                                      .url_len = strlen(op->in->capabilities_url),
                                      .head = "Accept: application/json\r\n",
                                      .head_len = 26,
                                      .log_id = req->id,
                                      .max_body = CAPS_MAX_BODY};
        op->pending = fbr_http_defer(req);
        if (fbr_client_request(a->client, &creq, on_capabilities, op) != FBR_OK)
            install_done(op, IR_CAPABILITIES, 400, "capabilitiesUrl is not a usable URL");
    }
    json_decref(body);
}

static void on_uninstall(struct fbr_addon *a, struct fbr_http_req *req, struct fbr_slice rk,
                         struct fbr_slice oauth_id)
{
    struct fbr_install *in = fbr_addon_store_find(a->store, oauth_id);
    if (in && strcasecmp(in->routing_key, "") != 0 &&
        !(strlen(in->routing_key) == rk.len && strncasecmp(in->routing_key, rk.ptr, rk.len) == 0))
        in = NULL; /* another routing key's installation: not this callback's to remove */
    if (in) {
        fbr_log(FBR_LOG_INFO, req->id, NULL,
                "HipChat add-on uninstalled: routing key %s, room %lld, installation %.4s...",
                in->routing_key, (long long)in->room_id, in->oauth_id);
        (*a->m_uninstall)++;
        if (fbr_addon_store_remove(a->store, oauth_id) == FBR_ERROR) {
            fbr_http_reply_error(req, 500,
                                 "removed, but the installations file could not be "
                                 "written");
            return;
        }
    }
    fbr_http_reply_json(req, 204, NULL); /* idempotent: an unknown id is already gone */
}

/* ---- room -> timeline ----------------------------------------------------------------------*/

struct lookup_ctx {
    struct fbr_addon *a;
    struct fbr_slice rk;
    struct fbr_install *found;
};

static int lookup_secret(void *arg, struct fbr_slice iss, struct fbr_slice *secret)
{
    struct lookup_ctx *lc = arg;
    struct fbr_install *in = fbr_addon_store_find(lc->a->store, iss);
    if (!in || strlen(in->routing_key) != lc->rk.len ||
        strncasecmp(in->routing_key, lc->rk.ptr, lc->rk.len) != 0)
        return FBR_NOTFOUND;
    lc->found = in;
    *secret = fbr_slice_from(in->oauth_secret);
    return FBR_OK;
}

/* The webhook's reply: a room notification HipChat posts into the room. */
static void reply_notification(struct fbr_http_req *req, const char *color, const char *fmt,
                               const char *text)
{
    fbr_http_reply_json(req, 200,
                        json_pack("{s:s, s:s, s:s, s:b}", "message", text, "message_format", fmt,
                                  "color", color, "notify", 0));
}

struct find_ctx {
    uint64_t number;
    struct fbr_slice rk;
    char entity_id[600];
    char title[300];
    enum fbr_incident_phase phase;
    int found;
};

static int find_open(const struct fbr_incident_view *v, void *arg)
{
    struct find_ctx *f = arg;
    if (v->number != f->number || strlen(v->routing_key) != f->rk.len ||
        strncasecmp(v->routing_key, f->rk.ptr, f->rk.len) != 0)
        return 0;
    snprintf(f->entity_id, sizeof(f->entity_id), "%s", v->entity_id);
    snprintf(f->title, sizeof(f->title), "%s", v->service[0] ? v->service : v->entity_id);
    f->phase = v->phase;
    f->found = 1;
    return 1;
}

struct list_ctx {
    struct fbr_slice rk;
    struct sbuf b;
    size_t n, more;
};

static int list_open(const struct fbr_incident_view *v, void *arg)
{
    struct list_ctx *l = arg;
    if (strlen(v->routing_key) != l->rk.len ||
        strncasecmp(v->routing_key, l->rk.ptr, l->rk.len) != 0)
        return 0;
    if (l->n == LIST_MAX) {
        l->more++;
        return 0;
    }
    sb_printf(&l->b, "%s<b>#%" PRIu64 "</b> %s: ", l->n ? "<br>" : "", v->number,
              fbr_incident_phase_name(v->phase));
    sb_html(&l->b, v->service[0] ? v->service : v->entity_id, 200);
    l->n++;
    return 0;
}

static const char help_text[] =
    "firebridge commands: /ack &lt;incident number&gt; [note], /resolve &lt;incident number&gt; "
    "[note], /incidents (open incidents of this routing key), /help. Anything else you type "
    "goes to the on-call timeline.";

/* /ack and /resolve: through the intake like an alert of the platform's shape, so the incident
 * table changes and every webhook and room sees the usual events. */
static void command_ack(struct fbr_addon *a, struct fbr_http_req *req, struct fbr_install *in,
                        int resolve, uint64_t number, const char *note, const char *user)
{
    unsigned long long n = number;
    struct sbuf msg = {0};
    struct fbr_slice rk = fbr_slice_from(in->routing_key);
    struct find_ctx f = {.number = n, .rk = rk};
    if (a->o.incidents)
        fbr_incidents_each_open(a->o.incidents, find_open, &f);
    if (!f.found) {
        sb_printf(&msg, "No open incident #%llu for routing key ", n);
        sb_html(&msg, in->routing_key, 256);
        reply_notification(req, "yellow", "html", msg.p);
        free(msg.p);
        return;
    }
    json_t *alert = json_pack("{s:s, s:s, s:s, s:s, s:s}", "message_type",
                              resolve ? "RECOVERY" : "ACKNOWLEDGEMENT", "entity_id", f.entity_id,
                              "monitoring_tool", "HipChat", "ack_author", user, "ack_msg", note);
    json_t *alerts = json_pack("[o]", alert);
    struct fbr_intake_reply r;
    fbr_intake_alert_group(a->o.intake, rk, alerts, &r);
    json_decref(alerts);
    if (r.status != 200) {
        const char *m = json_string_value(json_object_get(r.body, "message"));
        sb_printf(&msg, "Could not %s incident #%llu: ", resolve ? "resolve" : "acknowledge", n);
        sb_html(&msg, m ? m : "error", 300);
        json_decref(r.body);
        reply_notification(req, "red", "html", msg.p);
        free(msg.p);
        return;
    }
    json_decref(r.body);
    (*a->m_commands)++;
    char num[32];
    snprintf(num, sizeof(num), "%llu", n);
    char dflt[300];
    snprintf(dflt, sizeof(dflt), "%s from HipChat by %.200s", resolve ? "Resolved" : "Acknowledged",
             user);
    platform_call(a, FBR_M_PATCH,
                  resolve ? "/api-public/v1/incidents/resolve" : "/api-public/v1/incidents/ack",
                  json_pack("{s:s, s:[s], s:s}", "userName",
                            a->cfg->oncall.username ? a->cfg->oncall.username : "firebridge",
                            "incidentNames", num, "message", *note ? note : dflt));
    sb_printf(&msg, "Incident <b>#%llu</b> %s by ", n, resolve ? "resolved" : "acknowledged");
    sb_html(&msg, user, 256);
    sb_str(&msg, ": ");
    sb_html(&msg, f.title, 300);
    reply_notification(req, resolve ? "green" : "gray", "html", msg.p);
    free(msg.p);
}

static int command_is(const char *text, const char *cmd, const char **args)
{
    size_t n = strlen(cmd);
    if (strncasecmp(text, cmd, n) != 0 || (text[n] && text[n] != ' '))
        return 0;
    *args = text + n;
    return 1;
}

/* "<number> [note]" after /ack or /resolve; 0 with *number and *note, or -1. */
static int command_number(const char *args, uint64_t *number, const char **note)
{
    while (*args == ' ')
        args++;
    if (*args == '#')
        args++;
    if (*args < '0' || *args > '9')
        return -1;
    uint64_t n = 0;
    for (; *args >= '0' && *args <= '9'; args++) {
        if (n > (UINT64_MAX - 9) / 10)
            return -1;
        n = n * 10 + (uint64_t)(*args - '0');
    }
    if (*args && *args != ' ')
        return -1;
    while (*args == ' ')
        args++;
    *number = n;
    *note = args;
    return 0;
}

void fbr_room_message_parse(json_t *body, struct fbr_room_message *m)
{
    memset(m, 0, sizeof(*m));
    m->note = "";
    json_t *item = json_object_get(body, "item");
    json_t *rid = json_object_get(json_object_get(item, "room"), "id");
    json_t *msg = json_object_get(item, "message");
    json_t *from = json_object_get(msg, "from");
    const char *event = json_string_value(json_object_get(body, "event"));
    if (json_is_integer(rid)) {
        m->has_room = 1;
        m->room_id = json_integer_value(rid);
    }
    const char *text = json_string_value(json_object_get(msg, "message"));
    /* only people's messages: the add-on's own posts come back as room_notification (with a
     * string `from`), and are never chats */
    if (!event || strcmp(event, "room_message") != 0 || !json_is_object(from) || !text)
        return;
    m->from_person = 1;
    m->mention = json_string_value(json_object_get(from, "mention_name"));
    m->user = json_string_value(json_object_get(from, "name"));
    if (!m->user)
        m->user = m->mention ? m->mention : "HipChat user";
    json_t *uid = json_object_get(from, "id");
    m->user_id = json_is_integer(uid) || json_is_string(uid) ? uid : NULL;
    while (*text == ' ')
        text++;
    m->text = text;
    m->text_len = strlen(text);
    if (m->text_len > FBR_ROOM_TEXT_MAX) {
        m->text_len = FBR_ROOM_TEXT_MAX;
        while (m->text_len && ((unsigned char)text[m->text_len] & 0xC0) == 0x80)
            m->text_len--;
    }
    const char *args;
    m->cmd = FBR_ROOM_CHAT;
    if (command_is(text, "/ack", &args))
        m->cmd =
            command_number(args, &m->number, &m->note) == 0 ? FBR_ROOM_ACK : FBR_ROOM_USAGE_ACK;
    else if (command_is(text, "/resolve", &args))
        m->cmd = command_number(args, &m->number, &m->note) == 0 ? FBR_ROOM_RESOLVE
                                                                 : FBR_ROOM_USAGE_RESOLVE;
    else if (command_is(text, "/incidents", &args))
        m->cmd = FBR_ROOM_INCIDENTS;
    else if (command_is(text, "/help", &args))
        m->cmd = FBR_ROOM_HELP;
}

static void reject_webhook(struct fbr_addon *a, struct fbr_http_req *req, size_t reason_idx,
                           const char *reason)
{
    (*a->m_webhook_rejected[reason_idx])++;
    fbr_log(FBR_LOG_WARN, req->id, "verifying a HipChat room_message webhook", "refused: %s",
            reason);
    fbr_http_reply_error(req, 401, "%s", reason);
}

static void on_webhook(struct fbr_addon *a, struct fbr_http_req *req, struct fbr_slice rk)
{
    json_t *body = json_loadb(req->body.ptr, req->body.len, JSON_REJECT_DUPLICATES, NULL);
    struct lookup_ctx lc = {a, rk, NULL};
    struct fbr_jwt_claims claims;
    uint64_t now = a->o.clock_s ? a->o.clock_s() : real_clock_s();
    enum fbr_jwt_err je = fbr_jwt_verify_request(req->query, fbr_http_header(req, "Authorization"),
                                                 body, lookup_secret, &lc, now, &claims);
    if (je != FBR_JWT_OK) {
        char why[80];
        snprintf(why, sizeof(why), "invalid signature (%s)", fbr_jwt_err_name(je));
        reject_webhook(a, req, je, why);
        json_decref(body);
        return;
    }
    struct fbr_install *in = lc.found;
    struct fbr_room_message m;
    fbr_room_message_parse(body, &m);
    if (!m.has_room || m.room_id != in->room_id) {
        reject_webhook(a, req, FBR_JWT_ERR_COUNT, "the message's room is not the installation's");
        goto out;
    }
    if (!m.from_person) {
        (*a->m_ignored)++;
        fbr_http_reply_json(req, 204, NULL);
        goto out;
    }
    const char *user = m.user;
    const char *text = m.text;
    size_t tl = m.text_len;
    char cut[64];
    if (m.cmd == FBR_ROOM_ACK || m.cmd == FBR_ROOM_RESOLVE) {
        command_ack(a, req, in, m.cmd == FBR_ROOM_RESOLVE, m.number, m.note, user);
    } else if (m.cmd == FBR_ROOM_USAGE_ACK || m.cmd == FBR_ROOM_USAGE_RESOLVE) {
        reply_notification(req, "yellow", "text",
                           m.cmd == FBR_ROOM_USAGE_RESOLVE
                               ? "Usage: /resolve <incident number> [note]"
                               : "Usage: /ack <incident number> [note]");
    } else if (m.cmd == FBR_ROOM_INCIDENTS) {
        struct list_ctx l = {.rk = fbr_slice_from(in->routing_key)};
        if (a->o.incidents)
            fbr_incidents_each_open(a->o.incidents, list_open, &l);
        if (!l.n) {
            sb_str(&l.b, "No open incidents for routing key ");
            sb_html(&l.b, in->routing_key, 256);
        } else if (l.more) {
            sb_printf(&l.b, "<br>... and %zu more", l.more);
        }
        (*a->m_commands)++;
        reply_notification(req, "gray", "html", l.b.p);
        free(l.b.p);
    } else if (m.cmd == FBR_ROOM_HELP) {
        (*a->m_commands)++;
        reply_notification(req, "gray", "html", help_text);
    } else {
        json_t *chat = json_pack("{s:s, s:s%, s:I, s:s, s:b, s:s}", "USER_NAME", user, "TEXT", text,
                                 tl, "ROOM_ID", (json_int_t)in->room_id, "ROUTING_KEY",
                                 in->routing_key, "IS_ROBOT", 0, "SOURCE", "hipchat");
        if (json_is_integer(m.user_id)) {
            snprintf(cut, sizeof(cut), "%" JSON_INTEGER_FORMAT, json_integer_value(m.user_id));
            json_object_set_new(chat, "USER_ID", json_string(cut));
        } else if (json_is_string(m.user_id)) {
            json_object_set_new(chat, "USER_ID", json_copy(m.user_id));
        } else if (m.mention) {
            json_object_set_new(chat, "USER_ID", json_string(m.mention));
        }
        json_t *ev = json_pack("{s:s, s:o}", "event", "All-Chats", "CHAT", chat);
        struct fbr_intake_reply r;
        fbr_intake_event_trusted(a->o.intake, ev, &r);
        if (r.status != 200) {
            /* the timeline is full: HipChat does not retry webhooks, so say so in the room */
            json_decref(r.body);
            json_decref(ev);
            reply_notification(req, "red", "text",
                               "firebridge is overloaded: this message did not reach the "
                               "on-call timeline, please repeat it later");
            goto out;
        }
        json_decref(r.body);
        (*a->m_chats)++;
        fbr_log(FBR_LOG_INFO, req->id, NULL,
                "HipChat room %lld (routing key %s): chat from %s went to the timeline",
                (long long)in->room_id, in->routing_key, user);
        platform_call(a, FBR_M_POST, "/api-public/v1/chat",
                      json_pack("{s:s, s:s%, s:s, s:s}", "username",
                                a->cfg->oncall.username ? a->cfg->oncall.username : "firebridge",
                                "text", text, tl, "monitoringTool", "HipChat", "externalUsername",
                                user));
        json_decref(ev);
        fbr_http_reply_json(req, 204, NULL);
    }
out:
    fbr_jwt_claims_clear(&claims);
    json_decref(body);
}

/* ---- configuration page ------------------------------------------------------------------- */

static void on_configure(struct fbr_addon *a, struct fbr_http_req *req, struct fbr_slice rk)
{
    struct lookup_ctx lc = {a, rk, NULL};
    struct fbr_jwt_claims claims;
    uint64_t now = a->o.clock_s ? a->o.clock_s() : real_clock_s();
    enum fbr_jwt_err je = fbr_jwt_verify_request(req->query, fbr_http_header(req, "Authorization"),
                                                 NULL, lookup_secret, &lc, now, &claims);
    if (je != FBR_JWT_OK) {
        (*a->m_webhook_rejected[je])++;
        static const char page[] = "<!DOCTYPE html><html lang=\"en\"><meta charset=\"utf-8\">"
                                   "<title>firebridge</title><p>This page must be opened from "
                                   "HipChat (signed request missing or invalid).</p></html>\n";
        fbr_http_reply_raw(req, 401, "text/html; charset=utf-8", page, sizeof(page) - 1);
        return;
    }
    fbr_jwt_claims_clear(&claims);
    struct fbr_install *in = lc.found;
    struct sbuf b = {0};
    sb_str(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               "<title>firebridge: ");
    sb_html(&b, in->routing_key, 256);
    sb_str(&b, "</title><style>body{font:14px sans-serif;margin:1em}table{border-collapse:collapse}"
               "th,td{border:1px solid #888;padding:.2em .5em;text-align:left}</style></head>"
               "<body><main><h1>firebridge</h1><dl><dt>Routing key</dt><dd>");
    sb_html(&b, in->routing_key, 256);
    sb_printf(&b, "</dd><dt>Room</dt><dd>%lld</dd><dt>Group</dt><dd>%lld</dd>",
              (long long)in->room_id, (long long)in->group_id);
    sb_str(&b, "<dt>Token</dt><dd>");
    sb_html(&b, fbr_token_state_name(in->tstate), 32);
    if (in->last_error[0]) {
        sb_str(&b, " (last error: ");
        sb_html(&b, in->last_error, 200);
        sb_str(&b, ")");
    }
    sb_printf(&b, ", %" PRIu64 " request(s)</dd></dl>", in->token_requests);
    struct list_ctx l = {.rk = fbr_slice_from(in->routing_key)};
    if (a->o.incidents)
        fbr_incidents_each_open(a->o.incidents, list_open, &l);
    sb_str(&b, "<h2>Open incidents</h2><p>");
    if (l.n)
        sb_add(&b, l.b.p, l.b.len);
    else
        sb_str(&b, "none");
    free(l.b.p);
    sb_str(&b, "</p><h2>Recent notifications to this room</h2><table><thead><tr><th scope=\"col\">"
               "Queued (UTC ms)</th><th scope=\"col\">Item</th><th scope=\"col\">Delivery id</th>"
               "<th scope=\"col\">Outcome</th></tr></thead><tbody>");
    for (size_t i = a->nrecent; i-- > 0;) {
        const struct recent *r = &a->recent[i];
        if (r->room_id != in->room_id)
            continue;
        sb_printf(&b, "<tr><td>%" PRIu64 "</td><td>", r->wall_ms);
        sb_html(&b, r->item, 16);
        sb_str(&b, "</td><td>");
        sb_html(&b, r->id, 40);
        sb_str(&b, "</td><td>");
        sb_html(&b, r->outcome, 600);
        sb_str(&b, "</td></tr>");
    }
    sb_str(&b, "</tbody></table></main></body></html>\n");
    fbr_http_reply_raw(req, 200, "text/html; charset=utf-8", b.p, b.len);
    free(b.p);
}

/* ---- lifecycle and metrics ---------------------------------------------------------------- */

static void addon_metrics(struct fbr_metrics_samples *s, void *arg)
{
    struct fbr_addon *a = arg;
    size_t n;
    struct fbr_install *const *v = fbr_addon_store_list(a->store, &n);
    size_t by_state[FBR_TOKEN_STATE_COUNT] = {0};
    for (size_t i = 0; i < n; i++)
        by_state[v[i]->tstate]++;
    const struct fbr_addon_store_stats *st = fbr_addon_store_stats(a->store);
    for (size_t k = 0; k < FBR_TOKEN_STATE_COUNT; k++)
        fbr_metrics_sample(s, FBR_METRIC_GAUGE, "firebridge_hipchat_installations",
                           "HipChat add-on installations, by token state", "token",
                           fbr_token_state_name((enum fbr_token_state)k), by_state[k]);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_hipchat_token_requests_total",
                       "OAuth token requests started", NULL, NULL, st->token_requests);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_hipchat_token_failures_total",
                       "OAuth token requests that failed", NULL, NULL, st->token_failures);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_hipchat_revoked_total",
                       "Installations whose credentials the token endpoint refused", NULL, NULL,
                       st->revoked);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_hipchat_dead_revoked_total",
                       "Room notifications dead-lettered because their installation was revoked",
                       NULL, NULL, st->deliveries_dead_revoked);
}

static void register_metrics(struct fbr_addon *a)
{
    struct fbr_metrics *m = a->o.metrics;
    for (size_t i = 0; i < IR_COUNT; i++)
        a->m_install[i] = fbr_metrics_counter(m, "firebridge_hipchat_installs_total",
                                              "HipChat add-on install requests, by result",
                                              "result", install_result_names[i]);
    a->m_uninstall = fbr_metrics_counter(m, "firebridge_hipchat_uninstalls_total",
                                         "HipChat add-on installations removed", NULL, NULL);
    a->m_notify_ok = fbr_metrics_counter(m, "firebridge_hipchat_notifications_total",
                                         "Timeline items queued for HipChat rooms, by outcome",
                                         "outcome", "queued");
    a->m_notify_refused = fbr_metrics_counter(m, "firebridge_hipchat_notifications_total", NULL,
                                              "outcome", "refused");
    a->m_chats = fbr_metrics_counter(m, "firebridge_hipchat_room_messages_total",
                                     "Verified room messages, by what they became", "kind", "chat");
    a->m_commands =
        fbr_metrics_counter(m, "firebridge_hipchat_room_messages_total", NULL, "kind", "command");
    a->m_ignored =
        fbr_metrics_counter(m, "firebridge_hipchat_room_messages_total", NULL, "kind", "ignored");
    a->m_api_ok = fbr_metrics_counter(m, "firebridge_oncall_api_requests_total",
                                      "Requests queued for the platform's public API, by outcome",
                                      "outcome", "queued");
    a->m_api_refused =
        fbr_metrics_counter(m, "firebridge_oncall_api_requests_total", NULL, "outcome", "refused");
    for (size_t i = 0; i < FBR_JWT_ERR_COUNT; i++)
        a->m_webhook_rejected[i] =
            fbr_metrics_counter(m, "firebridge_hipchat_signed_requests_rejected_total",
                                "HipChat webhooks and page loads refused with 401, by reason",
                                "reason", fbr_jwt_err_name((enum fbr_jwt_err)i));
    a->m_webhook_rejected[FBR_JWT_ERR_COUNT] = fbr_metrics_counter(
        m, "firebridge_hipchat_signed_requests_rejected_total", NULL, "reason", "room_mismatch");
    a->m_webhook_rejected[FBR_JWT_ERR_COUNT + 1] = a->m_webhook_rejected[FBR_JWT_ERR_COUNT];
}

int fbr_addon_new(const struct fbr_addon_opts *opts, struct fbr_addon_config *cfg,
                  struct fbr_addon **out, char *err, size_t errlen)
{
    struct fbr_addon *a = fbr_xcalloc(1, sizeof(*a));
    a->o = *opts;
    a->client = fbr_delivery_client(opts->engine);
    if (fbr_addon_store_open(opts->data_dir, opts->base, a->client, opts->engine, &a->store, err,
                             errlen) != FBR_OK) {
        free(a);
        return FBR_ERROR;
    }
    if (cfg) {
        cfg->refs++;
        a->cfg = cfg;
    }
    register_metrics(a);
    fbr_metrics_add_collector(opts->metrics, addon_metrics, a);
    struct fbr_route r = {.path = FBR_ADDON_PREFIX,
                          .prefix = 1,
                          .methods = FBR_M_GET | FBR_M_HEAD | FBR_M_POST | FBR_M_DELETE,
                          .json_body = 0,
                          .metric = "hipchat",
                          .fn = on_request,
                          .arg = a};
    fbr_server_add_route(opts->srv, &r);
    fbr_intake_set_observer(opts->intake, on_timeline, on_timeline_need, a);
    fbr_intake_observer_namespaces(opts->intake, cfg ? ~0u : 0);
    if (opts->engine)
        fbr_delivery_watch(opts->engine, on_delivery, a);
    *out = a;
    return FBR_OK;
}

void fbr_addon_set_config(struct fbr_addon *a, struct fbr_addon_config *cfg)
{
    if (cfg)
        cfg->refs++;
    fbr_addon_config_unref(&a->cfg);
    a->cfg = cfg;
    /* without the `hipchat` section the timeline walk reads nothing of an event */
    if (a->o.intake)
        fbr_intake_observer_namespaces(a->o.intake, cfg ? ~0u : 0);
}

int fbr_addon_auth_lookup(void *arg, const char *key, struct fbr_delivery_auth_ref *out)
{
    struct fbr_addon *a = arg;
    struct fbr_install *in =
        a && a->store ? fbr_addon_store_find(a->store, fbr_slice_from(key)) : NULL;
    if (!in)
        return FBR_NOTFOUND;
    *out = (struct fbr_delivery_auth_ref){&fbr_install_auth, in, in->oauth_id};
    return FBR_OK;
}

void fbr_addon_free(struct fbr_addon **ap)
{
    struct fbr_addon *a = *ap;
    *ap = NULL;
    if (!a)
        return;
    fbr_intake_set_observer(a->o.intake, NULL, NULL, NULL);
    if (a->o.engine)
        fbr_delivery_watch(a->o.engine, NULL, a);
    fbr_metrics_remove_collector(a->o.metrics, addon_metrics, a);
    fbr_addon_store_free(&a->store);
    fbr_addon_config_unref(&a->cfg);
    free(a);
}
