/*
 * intake.c - the head of the data path.  Validates and stamps an alert posted to the
 * platform-compatible REST endpoint, runs the Rules Engine on it, applies it to the incident
 * table, derives the events and renders every subscribed webhook into a request for the sink;
 * timeline events from POST /v1/events skip the first three steps.  The HTTP glue at the end only
 * adapts fbr_http_req to these functions.
 */
#include "firebridge/intake.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "firebridge/events.h"
#include "firebridge/json.h"
#include "firebridge/log.h"
#include "firebridge/metrics.h"
#include "firebridge/strmap.h"

#define MT_ONE(name) +1
enum { MT_COUNT = 0 FBR_MSG_TYPE_MAP(MT_ONE) }; /* message types */
#undef MT_ONE

enum { RK_CACHE = 16 }; /* routing keys whose value is kept for the next alert (a power of 2) */

struct fbr_intake {
    char **keys;
    size_t *key_lens;
    size_t nkeys;
    char *org;
    struct fbr_rules *rules;
    struct fbr_webhooks *webhooks;
    struct fbr_incidents *incidents;
    struct fbr_sink sink;
    uint64_t (*clock_ms)(void);
    struct fbr_intake_stats stats;
    struct fbr_outreq *outs; /* one per rendered webhook of a request, reused */
    size_t nouts_cap;
    /* The stamps alerts share, made once: per second, per millisecond, per routing key or for
     * good (jansson strings are never changed in place: a rule replaces a value, so one string
     * can be in many alerts, in the incident table and in queued deliveries) */
    int64_t stamp_secs;        /* second the two time strings below were made for, -1: none */
    json_t *week_time, *time_utc;
    int64_t rcv_ms;            /* millisecond rcv_time was made for, -1: none */
    json_t *rcv_time;          /* VO_ALERT_RCV_TIME */
    json_t *rk_json[RK_CACHE]; /* routing_key values, by slot (routing_key_json) */
    json_t *org_json;          /* VO_ORGANIZATION_ID; NULL when org is not UTF-8 (no such field) */
    json_t *mt_json[MT_COUNT]; /* message_type in the platform's spelling, by type */
    json_t *success;           /* "success", the result of every accepted alert */
    struct fbr_json_strings *strings; /* short string values of bodies, shared (json.h) */
    struct fbr_server *srv; /* borrowed, set by fbr_intake_register: draining means refusing */
    struct fbr_journal *journal; /* borrowed, may be NULL: a 200 waits for its commit */
    fbr_intake_observer_fn observer;
    fbr_intake_observer_need_fn observer_need;
    void *observer_arg;
    struct fbr_alertmanager_opts alertmanager;
    unsigned observer_ns; /* FBR_NS_BIT()s the observer reads (fbr_intake_observer_namespaces) */
    unsigned namespaces;  /* FBR_NS_BIT()s an alert's event object needs (see want_namespaces) */
    struct commit_wait *waits; /* requests waiting for the journal (detached on free) */
};

/*
 * Decided whenever the webhooks or the observer change, never per alert: the namespaces the
 * enabled webhooks' templates read and those the observer reads.  The incident table builds
 * STATE and INCIDENT only when they are in it: the seed recipe reads neither.
 */
static void want_namespaces(struct fbr_intake *in)
{
    in->namespaces =
        fbr_webhooks_namespaces(in->webhooks) | (in->observer ? in->observer_ns : 0);
}

struct fbr_intake *fbr_intake_new(const struct fbr_intake_opts *opts)
{
    struct fbr_intake *in = fbr_xcalloc(1, sizeof(*in));
    in->nkeys = opts->napi_keys;
    in->keys = fbr_xcalloc(in->nkeys + 1, sizeof(*in->keys));
    in->key_lens = fbr_xcalloc(in->nkeys + 1, sizeof(*in->key_lens));
    for (size_t i = 0; i < in->nkeys; i++) {
        in->keys[i] = fbr_xstrdup(opts->api_keys[i]);
        in->key_lens[i] = strlen(in->keys[i]);
    }
    in->org = fbr_xstrdup(opts->organization_id ? opts->organization_id : "");
    in->rules = opts->rules;
    in->webhooks = opts->webhooks;
    in->incidents = opts->incidents;
    in->sink = opts->sink;
    in->journal = opts->journal;
    in->clock_ms = opts->clock_ms ? opts->clock_ms : fbr_wall_ms;
    in->stamp_secs = -1;
    in->rcv_ms = -1;
    in->success = json_string_nocheck("success");
    in->strings = fbr_json_strings_new();
    in->org_json = json_string(in->org);
    for (size_t i = 0; i < FBR_ARRAY_LEN(in->mt_json); i++)
        in->mt_json[i] = json_string_nocheck(fbr_msg_type_name((enum fbr_msg_type)i));
    in->alertmanager = opts->alertmanager;
    want_namespaces(in);
    return in;
}

static void detach_waits(struct fbr_intake *in);

void fbr_intake_free(struct fbr_intake **inp)
{
    struct fbr_intake *in = *inp;
    if (!in)
        return;
    detach_waits(in);
    for (size_t i = 0; i < in->nkeys; i++)
        free(in->keys[i]);
    free(in->keys);
    free(in->key_lens);
    free(in->org);
    json_decref(in->org_json);
    json_decref(in->week_time);
    json_decref(in->time_utc);
    json_decref(in->rcv_time);
    json_decref(in->success);
    fbr_json_strings_free(&in->strings);
    for (size_t i = 0; i < FBR_ARRAY_LEN(in->rk_json); i++)
        json_decref(in->rk_json[i]);
    for (size_t i = 0; i < FBR_ARRAY_LEN(in->mt_json); i++)
        json_decref(in->mt_json[i]);
    for (size_t i = 0; i < in->nouts_cap; i++)
        fbr_outreq_free(&in->outs[i]);
    free(in->outs);
    free(in);
    *inp = NULL;
}

void fbr_intake_set_config(struct fbr_intake *in, struct fbr_rules *rules,
                           struct fbr_webhooks *webhooks)
{
    in->rules = rules;
    in->webhooks = webhooks;
    want_namespaces(in);
}

void fbr_intake_set_alertmanager(struct fbr_intake *in, const struct fbr_alertmanager_opts *o)
{
    in->alertmanager = *o;
}

const struct fbr_intake_stats *fbr_intake_stats(const struct fbr_intake *in)
{
    return &in->stats;
}

void fbr_intake_metrics_collect(struct fbr_metrics_samples *s, void *arg)
{
    const struct fbr_intake_stats *st = &((const struct fbr_intake *)arg)->stats;
    static const char *const renders = "firebridge_webhook_renders_total";
    const char *h = "Webhook renders by outcome";
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_intake_alerts_total",
                       "Alerts accepted by the REST endpoint", NULL, NULL, st->alerts);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_intake_events_total",
                       "Timeline events accepted by /v1/events", NULL, NULL, st->events);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_intake_rejected_total",
                       "Intake requests answered with 4xx/5xx", NULL, NULL, st->rejected);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_intake_unavailable_total",
                       "Intake requests refused with 503 because the delivery queue was full "
                       "(nothing was processed)",
                       NULL, NULL, st->unavailable);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, renders, h, "outcome", "submitted", st->deliveries);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, renders, h, "outcome",
                       "skipped_missing_url_variable", st->skipped);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, renders, h, "outcome", "invalid", st->invalid);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, renders, h, "outcome", "refused", st->sink_errors);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_rules_matched_total",
                       "Rules whose conditions held", NULL, NULL, st->rules.matched);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "firebridge_rules_regex_limit_total",
                       "Rules skipped: regex hit its effort bound", NULL, NULL,
                       st->rules.regex_limit);
}

/* Compares against every configured key without an early exit, so the time taken depends on
 * neither where a key differs nor which key matched. */
static int key_ok(const struct fbr_intake *in, const char *key, size_t len)
{
    unsigned ok = 0;
    for (size_t k = 0; k < in->nkeys; k++) {
        const char *want = in->keys[k];
        size_t wlen = in->key_lens[k];
        unsigned char diff = (unsigned char)(wlen != len);
        for (size_t i = 0; i < wlen; i++)
            diff |= (unsigned char)want[i] ^ (unsigned char)(i < len ? key[i] : 0);
        ok |= diff == 0;
    }
    return ok != 0 && in->nkeys > 0;
}

static void reply_failure(struct fbr_intake *in, struct fbr_intake_reply *out, int status,
                          const char *msg)
{
    in->stats.rejected++;
    out->status = status;
    out->body = json_pack("{s:s,s:s}", "result", "failure", "message", msg);
}

/* UUIDs need unpredictability, not secrecy: kernel randomness fetched 4 KiB at a time keeps the
 * syscall off the per-alert path. */
static void random_bytes(unsigned char *out, size_t n)
{
    static unsigned char pool[4096];
    static size_t left;
    while (n) {
        if (left == 0) {
            size_t got = 0;
            while (got < sizeof(pool)) {
                ssize_t r = getrandom(pool + got, sizeof(pool) - got, 0);
                if (r > 0)
                    got += (size_t)r;
            }
            left = sizeof(pool);
        }
        size_t take = n < left ? n : left;
        memcpy(out, pool + sizeof(pool) - left, take);
        memset(pool + sizeof(pool) - left, 0, take);
        left -= take;
        out += take;
        n -= take;
    }
}

static void random_uuid(char out[37])
{
    unsigned char b[16];
    random_bytes(b, sizeof(b));
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    /* 8-4-4-4-12 hex digits */
    char *p = out;
    p += fbr_fmt_hex(p, b, 4);
    *p++ = '-';
    p += fbr_fmt_hex(p, b + 4, 2);
    *p++ = '-';
    p += fbr_fmt_hex(p, b + 6, 2);
    *p++ = '-';
    p += fbr_fmt_hex(p, b + 8, 2);
    *p++ = '-';
    fbr_fmt_hex(p, b + 10, 6);
}

int fbr_routing_key_ok(const char *s, size_t len)
{
    if (len > FBR_ROUTING_KEY_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* Renders every enabled webhook subscribed to set into in->outs; returns how many are ready.
 * Nothing is submitted yet, so the request can still be refused as a whole. */
static size_t render_all(struct fbr_intake *in, const struct fbr_event_set *set)
{
    size_t n = 0;
    if (!in->webhooks)
        return 0;
    for (size_t i = 0; i < in->webhooks->n; i++) {
        struct fbr_webhook *wh = in->webhooks->v[i];
        if (!wh->enabled || !(wh->events & set->mask))
            continue;
        if (n == in->nouts_cap) {
            size_t cap = in->nouts_cap ? in->nouts_cap * 2 : 4;
            in->outs = fbr_xrealloc(in->outs, cap * sizeof(*in->outs));
            for (size_t k = in->nouts_cap; k < cap; k++)
                fbr_outreq_init(&in->outs[k]);
            in->nouts_cap = cap;
        }
        struct fbr_outreq *o = &in->outs[n];
        int rc = fbr_outreq_render(o, wh, set->event);
        if (rc == FBR_OK) {
            n++;
        } else if (rc == FBR_SKIP) {
            in->stats.skipped++;
            fbr_log_debug("webhook \"%s\" skipped: URL variable %.*s is missing", wh->name,
                          (int)o->url.missing_len, o->url.missing ? o->url.missing : "");
        } else {
            in->stats.invalid++;
            fbr_log_warn("webhook \"%s\" not delivered: unsafe rendering (%s)", wh->name,
                         o->url.error ? o->url.error : "header value");
        }
    }
    return n;
}

static void release_outs(struct fbr_intake *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fbr_outreq_release(&in->outs[i]);
}

/* How many deliveries the observer will queue after set is accepted (0 without one). */
static size_t observer_need(const struct fbr_intake *in, const struct fbr_event_set *set)
{
    return in->observer_need ? in->observer_need(in->observer_arg, set) : 0;
}

/* Hands the n rendered requests of set to the sink.  Returns the number accepted, or -1 when the
 * sink has no room for them and the observer's (see observer_need) or refused the first one as
 * temporary: then nothing was submitted. */
static long submit_all(struct fbr_intake *in, size_t n, const struct fbr_event_set *set)
{
    if (in->sink.room && in->sink.submit &&
        in->sink.room(in->sink.arg) < n + observer_need(in, set)) {
        release_outs(in, n);
        return -1;
    }
    if (n == 0)
        return 0;
    if (!in->sink.submit) { /* no delivery engine at all (tests, benchmarks) */
        in->stats.sink_errors += n;
        release_outs(in, n);
        return 0;
    }
    size_t accepted = 0, lost = 0;
    for (size_t i = 0; i < n; i++) {
        struct fbr_outreq *o = &in->outs[i];
        int rc = in->sink.submit(in->sink.arg, o);
        if (rc == FBR_OK) {
            accepted++;
        } else if (rc == FBR_INVALID) {
            in->stats.invalid++;
            fbr_log_warn("webhook \"%s\" not delivered: unsendable URL (%s), written to the "
                         "dead-letter file",
                         o->webhook ? o->webhook->name : "?",
                         o->url.error ? o->url.error : "refused by the delivery engine");
        } else if (accepted == 0 && lost == 0) {
            release_outs(in, n);
            return -1;
        } else {
            lost++;
            in->stats.sink_errors++;
            fbr_log_error("webhook \"%s\" not delivered: delivery engine refused it (%s) after "
                          "accepting %zu of this request's deliveries",
                          o->webhook ? o->webhook->name : "?", fbr_strerror(rc), accepted);
        }
        fbr_outreq_release(o);
    }
    in->stats.deliveries += accepted;
    return (long)accepted;
}

static void reply_unavailable(struct fbr_intake *in, struct fbr_intake_reply *out)
{
    in->stats.unavailable++;
    out->status = 503;
    out->retry_after = FBR_INTAKE_RETRY_AFTER_S;
    out->deliveries = 0;
    out->body = json_pack("{s:s,s:s}", "result", "failure", "message",
                          "Delivery queue full: nothing was processed, retry later");
}

/* The journal cannot take a change now (a write or fdatasync failed, or recovery is not done):
 * *out is a 503 naming the trouble and 1 is returned, else 0.  The HTTP endpoints refuse before
 * parsing (refuse_journal); the calls of the HipChat add-on (room commands, chats) reach the
 * intake directly and are refused here, so what is typed in a room never changes anything that
 * a 200 could not be given for. */
static int journal_unavailable(struct fbr_intake *in, struct fbr_intake_reply *out)
{
    if (!in->journal || fbr_journal_writable(in->journal))
        return 0;
    in->stats.rejected++;
    in->stats.unavailable++;
    out->status = 503;
    out->retry_after = FBR_INTAKE_RETRY_AFTER_S;
    out->deliveries = 0;
    char msg[400];
    snprintf(msg, sizeof(msg), "%s: nothing was processed, retry later",
             fbr_journal_trouble(in->journal));
    out->body = json_pack("{s:s,s:s}", "result", "failure", "message", msg);
    return 1;
}

/* Whether v, a field's value, is or holds (in an array or an object, keys included) a string of
 * more than max characters. */
static int holds_too_long(json_t *v, size_t max)
{
    if (json_is_string(v)) {
        size_t len = json_string_length(v);
        return len > max && fbr_utf8_chars(json_string_value(v), len) > max;
    }
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (holds_too_long(json_array_get(v, i), max))
                return 1;
    } else if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach (v, k, x) {
            size_t klen = strlen(k);
            if ((klen > max && fbr_utf8_chars(k, klen) > max) || holds_too_long(x, max))
                return 1;
        }
    }
    return 0;
}

/* Checks the length limits of every string field, and of every string inside a field that is
 * an array or an object (the limit of most fields); returns the offending key or NULL. */
static const char *too_long(json_t *body, size_t *limit)
{
    const char *key;
    json_t *v;
    _Static_assert(FBR_INTAKE_ENTITY_ID_MAX <= FBR_INTAKE_FIELD_MAX &&
                       FBR_INTAKE_ENTITY_ID_MAX <= FBR_INTAKE_STATE_MESSAGE_MAX,
                   "the shortest limit is entity_id's");
    json_object_foreach (body, key, v) {
        if (json_is_object(v) || json_is_array(v)) {
            if (holds_too_long(v, FBR_INTAKE_FIELD_MAX)) {
                *limit = FBR_INTAKE_FIELD_MAX;
                return key;
            }
            continue;
        }
        /* no more bytes than the shortest limit has characters: within every limit, whatever
         * the key (the common case, decided without comparing keys) */
        if (!json_is_string(v) || json_string_length(v) <= FBR_INTAKE_ENTITY_ID_MAX)
            continue;
        size_t max = FBR_INTAKE_FIELD_MAX;
        if (strcmp(key, "state_message") == 0)
            max = FBR_INTAKE_STATE_MESSAGE_MAX;
        else if (strcmp(key, "entity_id") == 0)
            max = FBR_INTAKE_ENTITY_ID_MAX;
        size_t len = json_string_length(v);
        if (len > max && fbr_utf8_chars(json_string_value(v), len) > max) {
            *limit = max;
            return key;
        }
    }
    return NULL;
}

/* The string of routing key rk, not empty (borrowed from the cache; NULL when rk is not UTF-8:
 * no such field).  Routing keys are few and repeat, so each stays in a slot until another
 * takes it. */
static json_t *routing_key_json(struct fbr_intake *in, struct fbr_slice rk)
{
    const unsigned char *k = (const unsigned char *)rk.ptr;
    size_t slot = (rk.len * 31 + k[0] * 7u + k[rk.len - 1]) & (RK_CACHE - 1);
    json_t *v = in->rk_json[slot];
    if (v && json_string_length(v) == rk.len && memcmp(json_string_value(v), rk.ptr, rk.len) == 0)
        return v;
    /* the addon's room commands pass a routing key no route checked: jansson checks it */
    json_t *made = json_stringn(rk.ptr, rk.len);
    if (!made)
        return NULL;
    json_decref(v);
    in->rk_json[slot] = made;
    return made;
}

static void stamp(struct fbr_intake *in, json_t *alert, uint64_t now_ms)
{
    char buf[64];
    char uuid[37];
    random_uuid(uuid);
    /* ASCII values and keys made here: the setters skip jansson's UTF-8 checks */
    json_object_set_new_nocheck(alert, "VO_UUID", json_stringn_nocheck(uuid, 36));
    if ((int64_t)now_ms != in->rcv_ms) {
        json_decref(in->rcv_time);
        in->rcv_time = json_stringn_nocheck(buf, fbr_fmt_u64(buf, now_ms));
        in->rcv_ms = (int64_t)now_ms;
    }
    json_object_set_nocheck(alert, "VO_ALERT_RCV_TIME", in->rcv_time);
    if (in->org_json)
        json_object_set_nocheck(alert, "VO_ORGANIZATION_ID", in->org_json);
    /* Made once per second: alerts arrive in bursts. */
    time_t secs = (time_t)(now_ms / 1000);
    if ((int64_t)secs != in->stamp_secs) {
        struct tm tm;
        char week[40], utc[40];
        gmtime_r(&secs, &tm);
        strftime(week, sizeof(week), "%G-W%V-%uT%H:%M:%SZ", &tm);
        strftime(utc, sizeof(utc), "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_decref(in->week_time);
        json_decref(in->time_utc);
        in->week_time = json_string_nocheck(week);
        in->time_utc = json_string_nocheck(utc);
        in->stamp_secs = (int64_t)secs;
    }
    json_object_set_nocheck(alert, "alert_received_week_time_utc", in->week_time);
    json_object_set_nocheck(alert, "Alert_received_time_utc", in->time_utc);
}

/* The two fields of an alert that its check and its stamps read (borrowed from the alert). */
struct alert_fields {
    json_t *mt, *eid; /* message_type, entity_id; NULL when absent */
};

static void alert_fields(json_t *body, struct alert_fields *f)
{
    f->mt = json_object_get(body, "message_type");
    f->eid = json_object_get(body, "entity_id");
}

/* Checks an alert of the platform's shape as the REST endpoint does.  Returns FBR_OK with its
 * fields in *f, or FBR_INVALID with the 400 in *out; `where` ("alerts[2]: " in a group, else
 * "") leads the message. */
static int alert_check(struct fbr_intake *in, json_t *body, const char *where,
                       struct alert_fields *f, struct fbr_intake_reply *out)
{
    char msg[360];
    alert_fields(body, f);
    json_t *mt = f->mt, *eid = f->eid;
    size_t limit = 0;
    const char *bad = NULL;
    if (!json_is_object(body)) {
        snprintf(msg, sizeof(msg), "Invalid body: %sexpected a JSON object", where);
    } else if (!mt) {
        snprintf(msg, sizeof(msg), "Missing fields: %smessage_type", where);
    } else if (!json_is_string(mt)) {
        snprintf(msg, sizeof(msg), "Invalid field: %smessage_type must be a string", where);
    } else if (eid && !json_is_string(eid) && !json_is_null(eid)) {
        snprintf(msg, sizeof(msg), "Invalid field: %sentity_id must be a string", where);
    } else if ((bad = too_long(body, &limit))) {
        /* The key is quoted whole up to 200 bytes, cut on a UTF-8 boundary: jansson refuses to
         * pack a message that is not valid UTF-8. */
        size_t klen = fbr_utf8_cut(bad, strlen(bad), 200);
        snprintf(msg, sizeof(msg), "Field too long: %s%.*s exceeds %zu characters", where,
                 (int)klen, bad, limit);
    } else {
        return FBR_OK;
    }
    reply_failure(in, out, 400, msg);
    return FBR_INVALID;
}

/* Completes a checked alert (its fields f from alert_check) for routing key rk: message_type
 * spelled upper-case when known, an entity_id when it has none, routing_key and the stamps.
 * Returns its entity_id (borrowed from body).  The Rules Engine comes next. */
static json_t *alert_stamp(struct fbr_intake *in, json_t *body, const struct alert_fields *f,
                           struct fbr_slice rk, uint64_t now_ms)
{
    const char *mts = json_string_value(f->mt);
    size_t mtlen = json_string_length(f->mt);
    enum fbr_msg_type t;
    /* already spelled so (the common case): the alert keeps its own equal string */
    if (fbr_msg_type_parse(mts, mtlen, &t) == FBR_OK &&
        memcmp(mts, fbr_msg_type_name(t), mtlen) != 0)
        json_object_set_nocheck(body, "message_type", in->mt_json[t]);
    json_t *eid = f->eid;
    if (!json_is_string(eid) || json_string_length(eid) == 0) {
        char uuid[37];
        random_uuid(uuid);
        eid = json_stringn_nocheck(uuid, 36);
        json_object_set_new_nocheck(body, "entity_id", eid);
    }
    if (rk.len) {
        json_t *v = routing_key_json(in, rk);
        if (v)
            json_object_set_nocheck(body, "routing_key", v);
    }
    stamp(in, body, now_ms);
    return eid;
}

/* What the incident table would make of a stamped alert, and the events that follow.  With
 * commit, the change is made only if its deliveries are then accepted; without, nothing
 * changes (the prediction for a group). */
static void alert_events(struct fbr_intake *in, json_t *body, uint64_t now_ms,
                         struct fbr_event_set *set)
{
    struct fbr_incident_result res = {.transition = FBR_TR_NONE};
    if (in->incidents) {
        fbr_incidents_prepare_for(in->incidents, body, now_ms, in->namespaces, &res);
    } else {
        json_t *m = json_object_get(body, "message_type");
        fbr_msg_type_parse(json_string_value(m), json_string_length(m), &res.msg_type);
    }
    fbr_events_derive(body, &res, set);
    fbr_incident_result_clear(&res);
}

/* Applies a stamped alert to the incident table and hands its deliveries to the sink.  Returns
 * the number accepted, or -1 when the sink had no room: then nothing changed. */
static long alert_process(struct fbr_intake *in, json_t *body, uint64_t now_ms)
{
    struct fbr_event_set set;
    alert_events(in, body, now_ms, &set);
    long accepted = submit_all(in, render_all(in, &set), &set);
    if (in->incidents) {
        if (accepted < 0)
            fbr_incidents_abort(in->incidents);
        else
            fbr_incidents_commit(in->incidents);
    }
    if (accepted >= 0 && in->observer)
        in->observer(in->observer_arg, &set);
    fbr_event_set_clear(&set);
    return accepted;
}

/*
 * The path of one REST alert names a known API key and a valid routing key (else 404).  Returns
 * FBR_OK with the routing key in *rk (borrowed from path), or FBR_INVALID with the answer in
 * *out.
 */
static int alert_path(struct fbr_intake *in, struct fbr_slice path, struct fbr_slice *rk,
                      struct fbr_intake_reply *out)
{
    static const size_t plen = sizeof(FBR_INTAKE_ALERT_PREFIX) - 1;
    if (path.len <= plen || memcmp(path.ptr, FBR_INTAKE_ALERT_PREFIX, plen) != 0) {
        reply_failure(in, out, 404, "Not found");
        return FBR_INVALID;
    }
    const char *key = path.ptr + plen;
    const char *end = path.ptr + path.len;
    const char *slash = memchr(key, '/', (size_t)(end - key));
    size_t key_len = slash ? (size_t)(slash - key) : (size_t)(end - key);
    rk->ptr = slash ? slash + 1 : end;
    rk->len = (size_t)(end - rk->ptr);
    if (key_len == 0 || !key_ok(in, key, key_len) || memchr(rk->ptr, '/', rk->len) ||
        !fbr_routing_key_ok(rk->ptr, rk->len)) {
        reply_failure(in, out, 404, "Not found");
        return FBR_INVALID;
    }
    return FBR_OK;
}

/*
 * The checks of one REST alert before anything happens: its path (alert_path()), the body is a
 * JSON object of the platform's shape (else 400).  Returns FBR_OK with the routing key in *rk
 * (borrowed from path), or FBR_INVALID with the answer in *out.
 */
static int alert_validate(struct fbr_intake *in, struct fbr_slice path, json_t *body,
                          struct fbr_slice *rk, struct alert_fields *f,
                          struct fbr_intake_reply *out)
{
    if (alert_path(in, path, rk, out) != FBR_OK)
        return FBR_INVALID;
    if (!body) {
        reply_failure(in, out, 400, "Invalid JSON body");
        return FBR_INVALID;
    }
    return alert_check(in, body, "", f, out);
}

/* The pipeline of one validated alert: stamps, the Rules Engine, the incident table, events,
 * rendering and the sink; the answer (200, or 503 with nothing changed) in *out. */
static void alert_pipeline(struct fbr_intake *in, struct fbr_slice rk, json_t *body,
                           const struct alert_fields *f, struct fbr_intake_reply *out)
{
    uint64_t now_ms = in->clock_ms();
    json_t *eid = alert_stamp(in, body, f, rk, now_ms);
    /* the entity_id the sender gave or was given, before any rule rewrites it (built with plain
     * setters: no format string parsed per alert) */
    json_t *reply = json_object();
    json_object_set_nocheck(reply, "result", in->success);
    json_object_set_nocheck(reply, "entity_id", eid);
    fbr_rules_apply(in->rules, body, &in->stats.rules);
    long accepted = alert_process(in, body, now_ms);
    if (accepted < 0) {
        json_decref(reply);
        reply_unavailable(in, out);
        return;
    }
    out->deliveries = (size_t)accepted;
    in->stats.alerts++;
    out->status = 200;
    out->body = reply;
}

void fbr_intake_alert(struct fbr_intake *in, struct fbr_slice path, json_t *body,
                      struct fbr_intake_reply *out)
{
    memset(out, 0, sizeof(*out));
    struct fbr_slice rk;
    struct alert_fields f;
    if (alert_validate(in, path, body, &rk, &f, out) == FBR_OK)
        alert_pipeline(in, rk, body, &f, out);
}

/* The events any alert can fire: a bound on what a webhook list will render for it. */
#define ALERT_EVENTS                                                                               \
    (FBR_EV_BIT(FBR_EV_ANY_ALERT) | FBR_EV_BIT(FBR_EV_INCIDENT_TRIGGERED) |                        \
     FBR_EV_BIT(FBR_EV_INCIDENT_ACKNOWLEDGED) | FBR_EV_BIT(FBR_EV_INCIDENT_RESOLVED) |             \
     FBR_EV_BIT(FBR_EV_ANY_INCIDENT))

static size_t subscribed(const struct fbr_intake *in, uint32_t mask)
{
    size_t n = 0;
    for (size_t i = 0; in->webhooks && i < in->webhooks->n; i++)
        n += in->webhooks->v[i]->enabled && (in->webhooks->v[i]->events & mask);
    return n;
}

/*
 * At most how many deliveries the stamped alerts of a group will submit, changing nothing: each
 * alert's events as the incident table now predicts them.  An alert whose incident an earlier
 * alert of the group also names depends on that one's outcome, so it counts with every event
 * an alert can fire.
 */
static size_t group_need(struct fbr_intake *in, json_t *alerts, uint64_t now_ms)
{
    struct fbr_strmap seen;
    fbr_strmap_init(&seen);
    size_t need = 0, i;
    json_t *a;
    json_array_foreach (alerts, i, a) {
        const char *rk = json_string_value(json_object_get(a, "routing_key"));
        const char *eid = json_string_value(json_object_get(a, "entity_id"));
        char key[FBR_INTAKE_FIELD_MAX * 4 + FBR_INTAKE_ENTITY_ID_MAX * 4 + 2];
        int klen = snprintf(key, sizeof(key), "%s\x1f%s", rk ? rk : "", eid ? eid : "");
        for (char *p = key; *p && *p != '\x1f'; p++)
            *p = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p);
        size_t kl = klen < 0 ? 0 : (size_t)klen < sizeof(key) ? (size_t)klen : sizeof(key) - 1;
        if (fbr_strmap_get(&seen, key, kl)) {
            struct fbr_event_set any = {.mask = ALERT_EVENTS, .event = NULL};
            json_t *ev = json_pack("{s:O}", "ALERT", a);
            any.event = ev;
            need += subscribed(in, ALERT_EVENTS) + observer_need(in, &any);
            json_decref(ev);
            continue;
        }
        fbr_strmap_put(&seen, key, kl, a);
        struct fbr_event_set set;
        alert_events(in, a, now_ms, &set);
        if (in->incidents)
            fbr_incidents_abort(in->incidents);
        need += subscribed(in, set.mask) + observer_need(in, &set);
        fbr_event_set_clear(&set);
    }
    fbr_strmap_clear(&seen);
    return need;
}

void fbr_intake_alert_group(struct fbr_intake *in, struct fbr_slice rk, json_t *alerts,
                            struct fbr_intake_reply *out)
{
    memset(out, 0, sizeof(*out));
    if (journal_unavailable(in, out))
        return;
    size_t n = json_array_size(alerts), i;
    json_t *a;
    struct alert_fields f;
    json_array_foreach (alerts, i, a) {
        char where[40];
        snprintf(where, sizeof(where), "alerts[%zu]: ", i);
        if (alert_check(in, a, where, &f, out) != FBR_OK)
            return;
    }
    uint64_t now_ms = in->clock_ms();
    json_array_foreach (alerts, i, a) {
        alert_fields(a, &f);
        alert_stamp(in, a, &f, rk, now_ms);
        fbr_rules_apply(in->rules, a, &in->stats.rules);
    }
    if (in->sink.room && in->sink.room(in->sink.arg) < group_need(in, alerts, now_ms)) {
        reply_unavailable(in, out);
        return;
    }
    size_t total = 0;
    json_array_foreach (alerts, i, a) {
        long accepted = alert_process(in, a, now_ms);
        if (accepted < 0) {
            /* Only when a full incident table evicted an incident a later alert rolls into
             * (or the sink cannot tell its room): the retry rolls the first i alerts into their
             * open incidents again and finds the resolved ones resolved. */
            fbr_log_warn("alert group for routing key %.*s: the delivery queue filled after %zu "
                         "of %zu alerts; answering 503 so the sender retries the group",
                         (int)rk.len, rk.ptr, i, n);
            in->stats.alerts += i;
            reply_unavailable(in, out);
            return;
        }
        total += (size_t)accepted;
    }
    in->stats.alerts += n;
    out->deliveries = total;
    out->status = 200;
    out->body = json_pack("{s:s,s:I,s:I}", "result", "success", "alerts", (json_int_t)n,
                          "deliveries", (json_int_t)total);
}

int fbr_intake_authorized(const struct fbr_intake *in, const char *authorization)
{
    static const char bearer[] = "Bearer ";
    size_t blen = sizeof(bearer) - 1;
    return authorization && strncasecmp(authorization, bearer, blen) == 0 &&
           key_ok(in, authorization + blen, strlen(authorization + blen));
}

/* An Alertmanager post's path names a valid routing key (else 404) and its credentials are a
 * known key (else 401).  Returns FBR_OK with the routing key in *rk (borrowed from path), or
 * FBR_INVALID with the answer in *out. */
static int alertmanager_head(struct fbr_intake *in, struct fbr_slice path,
                             const char *authorization, struct fbr_slice *rk,
                             struct fbr_intake_reply *out)
{
    static const size_t plen = sizeof(FBR_ALERTMANAGER_PREFIX) - 1;
    *rk = (struct fbr_slice){path.ptr + plen, path.len > plen ? path.len - plen : 0};
    if (rk->len == 0 || memcmp(path.ptr, FBR_ALERTMANAGER_PREFIX, plen) != 0 ||
        !fbr_routing_key_ok(rk->ptr, rk->len)) {
        reply_failure(in, out, 404, "Not found");
        return FBR_INVALID;
    }
    if (!fbr_intake_authorized(in, authorization)) {
        reply_failure(in, out, 401, "Unauthorized");
        return FBR_INVALID;
    }
    return FBR_OK;
}

void fbr_intake_alertmanager(struct fbr_intake *in, struct fbr_slice path,
                             const char *authorization, json_t *body,
                             struct fbr_intake_reply *out)
{
    memset(out, 0, sizeof(*out));
    struct fbr_slice rk;
    if (alertmanager_head(in, path, authorization, &rk, out) != FBR_OK)
        return;
    if (!body) {
        reply_failure(in, out, 400, "Invalid JSON body");
        return;
    }
    json_t *alerts;
    char err[400];
    if (fbr_alertmanager_map(body, &in->alertmanager, &alerts, err, sizeof(err)) != FBR_OK) {
        reply_failure(in, out, 400, err);
        return;
    }
    fbr_intake_alert_group(in, rk, alerts, out);
    json_decref(alerts);
}

void fbr_intake_event(struct fbr_intake *in, const char *authorization, json_t *body,
                      struct fbr_intake_reply *out)
{
    memset(out, 0, sizeof(*out));
    if (!fbr_intake_authorized(in, authorization)) {
        reply_failure(in, out, 401, "Unauthorized");
        return;
    }
    fbr_intake_event_trusted(in, body, out);
}

void fbr_intake_event_trusted(struct fbr_intake *in, json_t *body, struct fbr_intake_reply *out)
{
    memset(out, 0, sizeof(*out));
    if (journal_unavailable(in, out))
        return;
    if (!body) {
        reply_failure(in, out, 400, "Invalid JSON body");
        return;
    }
    struct fbr_event_set set;
    char err[256];
    if (fbr_events_from_body(body, &set, err, sizeof(err)) != FBR_OK) {
        reply_failure(in, out, 400, err);
        return;
    }
    long accepted = submit_all(in, render_all(in, &set), &set);
    if (accepted >= 0 && in->observer)
        in->observer(in->observer_arg, &set);
    fbr_event_set_clear(&set);
    if (accepted < 0) {
        reply_unavailable(in, out);
        return;
    }
    out->deliveries = (size_t)accepted;
    in->stats.events++;
    out->status = 200;
    out->body = json_pack("{s:s,s:I}", "result", "success", "deliveries",
                          (json_int_t)out->deliveries);
}

/* ---- HTTP glue ---------------------------------------------------------------------------- */

/* The body as JSON (new reference), or NULL when it is not JSON or its Content-Type, when
 * given, is not a JSON type (then *bad_type is 1). */
static json_t *parse_body(struct fbr_intake *in, struct fbr_http_req *req, int *bad_type,
                          json_error_t *err)
{
    const char *ct = fbr_http_header(req, "Content-Type");
    *bad_type = ct && !fbr_http_is_json_type(ct);
    err->text[0] = '\0';
    if (!req->body.ptr || *bad_type)
        return NULL;
    return fbr_json_loadb_shared(req->body.ptr, req->body.len, err, in->strings);
}

/*
 * The endpoint refused the request for having no JSON body ("Invalid JSON body", after its key
 * check, so a wrong key stays 404): says why.  A Content-Type that is not JSON makes it 415; a
 * body that did not parse gets the parser's reason and place (a sender does not retry a 400, so
 * it should say what to fix: a number beyond 64-bit integers, a duplicate key, bytes that are not
 * UTF-8).
 */
static void explain_no_body(struct fbr_intake_reply *r, int bad_type, const json_error_t *err)
{
    json_t *m = json_object_get(r->body, "message");
    if (r->status != 400 || !json_is_string(m) ||
        strcmp(json_string_value(m), "Invalid JSON body") != 0)
        return;
    if (bad_type) {
        r->status = 415;
        json_object_set_new(r->body, "message",
                            json_string("Unsupported Content-Type: the body must be "
                                        "application/json"));
    } else if (err->text[0]) {
        json_object_set_new(r->body, "message",
                            json_sprintf("Invalid JSON body: %s (line %d, column %d)", err->text,
                                         err->line, err->column));
    }
}

/* While the server drains, a request that still arrives (one in progress on a connection when
 * the drain began) is refused with 503 so the sender retries elsewhere or later: accepting it
 * would start work the drain is trying to finish.  Returns 1 when refused. */
static int refuse_draining(struct fbr_intake *in, struct fbr_http_req *req)
{
    if (!in->srv || !fbr_server_draining(in->srv))
        return 0;
    in->stats.rejected++;
    fbr_http_add_header(req, "Retry-After", "5");
    fbr_http_reply_error(req, 503, "draining: not accepting new work, retry later");
    return 1;
}

/* Refuses (503) while the journal cannot be written: nothing is processed, so the retry is
 * handled as if it were the first post.  Returns 1 when refused. */
static int refuse_journal(struct fbr_intake *in, struct fbr_http_req *req)
{
    struct fbr_intake_reply r;
    memset(&r, 0, sizeof(r));
    if (!journal_unavailable(in, &r))
        return 0;
    char secs[16];
    snprintf(secs, sizeof(secs), "%u", r.retry_after);
    fbr_http_add_header(req, "Retry-After", secs);
    fbr_http_reply_json(req, r.status, r.body);
    return 1;
}

/* Where the sink and the incident table stood before a request: what it changed lies after. */
struct marks {
    uint64_t seq;     /* the sink's newest submission (0 without last_seq) */
    uint64_t changes; /* the incident table's change count */
};

/* The sink's newest submission (0 when the sink does not number them). */
static uint64_t sink_seq(const struct fbr_intake *in)
{
    return in->sink.last_seq ? in->sink.last_seq(in->sink.arg) : 0;
}

static void take_marks(const struct fbr_intake *in, struct marks *m)
{
    m->seq = sink_seq(in);
    m->changes = in->incidents ? fbr_incidents_changes(in->incidents) : 0;
}

/* A 200 waiting for the journal to commit what the request appended. */
struct commit_wait {
    struct fbr_intake *in; /* NULL once the intake is gone */
    struct commit_wait *prev, *next;
    struct fbr_http_pending *later;
    json_t *body;
    struct marks before;
    uint64_t seq_upto; /* the sink's newest submission when the request was done */
};

static void detach_waits(struct fbr_intake *in)
{
    for (struct commit_wait *w = in->waits; w; w = w->next)
        w->in = NULL;
    in->waits = NULL;
}

/*
 * The journal could not commit what the request appended: it is taken back before the 503, so
 * that nothing of it is ever sent or replayed and the sender's retry is processed as a first
 * post.  Its deliveries are still held by the engine (a delivery is sent only after its record
 * is committed), so cancelling them means they are never sent; the cancelled records follow
 * the accepted ones in the journal's buffer, so a restart does not send them either.  Its
 * incident changes are undone (with the requests after it, which fail with it: waiters fail
 * together), so the retry triggers, acknowledges or resolves as the first post would have.
 */
static void take_back(struct fbr_intake *in, const struct commit_wait *w)
{
    if (in->sink.cancel && w->seq_upto > w->before.seq)
        in->sink.cancel(in->sink.arg, w->before.seq, w->seq_upto);
    if (in->incidents)
        fbr_incidents_undo(in->incidents, w->before.changes);
}

static void on_committed(void *arg, int status)
{
    struct commit_wait *w = arg;
    struct fbr_intake *in = w->in;
    if (in) {
        if (w->prev)
            w->prev->next = w->next;
        else
            in->waits = w->next;
        if (w->next)
            w->next->prev = w->prev;
    }
    if (status == FBR_OK) {
        fbr_http_pending_reply_json(&w->later, 200, w->body);
    } else {
        /* Never a 200 for what may not be on disk, and nothing of it stays. */
        json_decref(w->body);
        if (in) {
            take_back(in, w);
            in->stats.unavailable++;
        }
        char secs[16];
        snprintf(secs, sizeof(secs), "%u", FBR_INTAKE_RETRY_AFTER_S);
        fbr_http_pending_add_header(w->later, "Retry-After", secs);
        fbr_http_pending_reply_json(
            &w->later, 503,
            json_pack("{s:s,s:s}", "result", "failure", "message",
                      "the journal could not be written (disk full or failing): retry later"));
    }
    free(w);
}

static void send_reply(struct fbr_intake *in, struct fbr_http_req *req,
                       struct fbr_intake_reply *r, const struct marks *before)
{
    if (in->journal && r->status == 200) {
        struct commit_wait *w = fbr_xmalloc(sizeof(*w));
        w->in = in;
        w->body = r->body;
        w->before = *before;
        w->seq_upto = sink_seq(in);
        w->prev = NULL;
        w->next = in->waits;
        if (w->next)
            w->next->prev = w;
        in->waits = w;
        w->later = fbr_http_defer(req);
        fbr_journal_wait(in->journal, fbr_journal_position(in->journal), on_committed, w);
        return;
    }
    if (r->retry_after) {
        char secs[16];
        snprintf(secs, sizeof(secs), "%u", r->retry_after);
        fbr_http_add_header(req, "Retry-After", secs);
    }
    fbr_http_reply_json(req, r->status, r->body);
}

/* The three POST endpoints share one shape: the refusals, the body parsed, the marks that a
 * failed journal commit takes the request back to, the endpoint's own work, the answer. */
enum endpoint { EP_ALERT, EP_ALERTMANAGER, EP_EVENT };

static void handle(struct fbr_http_req *req, struct fbr_intake *in, enum endpoint ep)
{
    if (refuse_draining(in, req) || refuse_journal(in, req))
        return;
    struct fbr_intake_reply r;
    int bad_type;
    json_error_t err;
    json_t *body = parse_body(in, req, &bad_type, &err);
    struct marks before;
    take_marks(in, &before);
    switch (ep) {
    case EP_ALERT:
        fbr_intake_alert(in, req->path, body, &r);
        break;
    case EP_ALERTMANAGER:
        fbr_intake_alertmanager(in, req->path, fbr_http_header(req, "Authorization"), body, &r);
        break;
    case EP_EVENT:
        fbr_intake_event(in, fbr_http_header(req, "Authorization"), body, &r);
        break;
    }
    json_decref(body);
    explain_no_body(&r, bad_type, &err);
    send_reply(in, req, &r, &before);
}

/*
 * What an endpoint refuses before its body is read (the server asks when the client waits for
 * "100 Continue"): the same answers, in the same order, as handle() and the endpoint give before
 * they look at the body (draining, the journal, then the path's keys and the credentials).
 */
static void check_head(struct fbr_http_req *req, struct fbr_intake *in, enum endpoint ep)
{
    if (refuse_draining(in, req) || refuse_journal(in, req))
        return;
    struct fbr_intake_reply r;
    memset(&r, 0, sizeof(r));
    struct fbr_slice rk;
    switch (ep) {
    case EP_ALERT:
        alert_path(in, req->path, &rk, &r);
        break;
    case EP_ALERTMANAGER:
        alertmanager_head(in, req->path, fbr_http_header(req, "Authorization"), &rk, &r);
        break;
    case EP_EVENT:
        if (!fbr_intake_authorized(in, fbr_http_header(req, "Authorization")))
            reply_failure(in, &r, 401, "Unauthorized");
        break;
    }
    if (r.status)
        send_reply(in, req, &r, NULL);
}

static void check_alert(struct fbr_http_req *req, void *arg)
{
    check_head(req, arg, EP_ALERT);
}

static void check_alertmanager(struct fbr_http_req *req, void *arg)
{
    check_head(req, arg, EP_ALERTMANAGER);
}

static void check_event(struct fbr_http_req *req, void *arg)
{
    check_head(req, arg, EP_EVENT);
}

static void on_alert(struct fbr_http_req *req, void *arg)
{
    handle(req, arg, EP_ALERT);
}

static void on_alertmanager(struct fbr_http_req *req, void *arg)
{
    handle(req, arg, EP_ALERTMANAGER);
}

static void on_event(struct fbr_http_req *req, void *arg)
{
    handle(req, arg, EP_EVENT);
}

void fbr_intake_set_observer(struct fbr_intake *in, fbr_intake_observer_fn fn,
                             fbr_intake_observer_need_fn need, void *arg)
{
    in->observer = fn;
    in->observer_need = need;
    in->observer_arg = arg;
    in->observer_ns = ~0u;
    want_namespaces(in);
}

void fbr_intake_observer_namespaces(struct fbr_intake *in, unsigned namespaces)
{
    in->observer_ns = namespaces;
    want_namespaces(in);
}

void fbr_intake_register(struct fbr_intake *in, struct fbr_server *srv)
{
    in->srv = srv;
    struct fbr_route alert = {.path = FBR_INTAKE_ALERT_PREFIX, .prefix = 1,
                              .methods = FBR_M_POST, .json_body = 0, .metric = "alert",
                              .secret_segment = 1, .fn = on_alert, .check = check_alert,
                              .arg = in};
    struct fbr_route events = {.path = FBR_INTAKE_EVENTS_PATH, .prefix = 0,
                               .methods = FBR_M_POST, .json_body = 0, .metric = "events",
                               .fn = on_event, .check = check_event, .arg = in};
    struct fbr_route am = {.path = FBR_ALERTMANAGER_PREFIX, .prefix = 1, .methods = FBR_M_POST,
                           .json_body = 0, .metric = "alertmanager", .fn = on_alertmanager,
                           .check = check_alertmanager, .arg = in};
    fbr_server_add_route(srv, &alert);
    fbr_server_add_route(srv, &events);
    fbr_server_add_route(srv, &am);
}
