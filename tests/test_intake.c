/*
 * test_intake.c - unit tests for intake.c with events.c and webhook.c behind it: the head of the
 * data path from a posted alert to rendered deliveries in a queue sink.  Covers every intake
 * error, the stamped fields, the seed's Multi-Room configuration loaded from contrib/examples, the
 * incident events through webhooks, timeline events from /v1/events, and the HTTP glue on a real
 * loopback server (events.c and webhook.c alone: test_events, test_webhook).
 */
#include <arpa/inet.h>
#include <check.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "firebridge/events.h"
#include "firebridge/intake.h"
#include "firebridge/journal.h"
#include "firebridge/json.h"
#include "firebridge/server.h"
#include "testsupport.h"

#define KEY "k3y-123"
#define ALERT_PATH(rk) FBR_INTAKE_ALERT_PREFIX KEY "/" rk

/* ---- fixture: a configuration, an intake and a queue sink ----------------------------------- */

struct queue {
    struct fbr_outreq *v[64];
    size_t n;
};

static int queue_submit(void *arg, struct fbr_outreq *o)
{
    struct queue *q = arg;
    if (q->n == FBR_ARRAY_LEN(q->v))
        return FBR_LIMIT;
    q->v[q->n] = fbr_xmalloc(sizeof(struct fbr_outreq));
    fbr_outreq_move(q->v[q->n++], o);
    return FBR_OK;
}

static void queue_clear(struct queue *q)
{
    for (size_t i = 0; i < q->n; i++) {
        fbr_outreq_free(q->v[i]);
        free(q->v[i]);
    }
    q->n = 0;
}

struct fixture {
    struct fbr_rules *rules;
    struct fbr_webhooks webhooks;
    struct fbr_incidents *incidents;
    struct fbr_intake *intake;
    struct queue q;
    char key[64];
};

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (!j)
        ck_abort_msg("bad JSON in test: %s", e.text);
    return j;
}

/* The intake's clock in fixture_init (NULL: the wall clock). */
static uint64_t (*fixture_clock)(void);

static void fixture_init(struct fixture *f, json_t *cfg)
{
    memset(f, 0, sizeof(*f));
    struct fbr_cfgerr errs = {0};
    ck_assert_int_eq(fbr_rules_compile(json_object_get(cfg, "rules"), NULL, &f->rules, &errs),
                     FBR_OK);
    int rc = fbr_webhooks_compile(json_object_get(cfg, "webhooks"), &f->webhooks, &errs);
    ck_assert_msg(rc == FBR_OK, "webhooks: %s", errs.n ? errs.msgs[0] : "?");
    struct fbr_incidents_opts io = {0};
    ck_assert_int_eq(fbr_incidents_open(&io, &f->incidents), FBR_OK);
    const char *key = json_string_value(json_array_get(json_object_get(cfg, "api_keys"), 0));
    snprintf(f->key, sizeof(f->key), "%s", key ? key : KEY);
    const char *keys[] = {"another-key", f->key};
    struct fbr_intake_opts o = {
        .api_keys = keys,
        .napi_keys = 2,
        .organization_id = json_string_value(json_object_get(cfg, "organization_id")),
        .rules = f->rules,
        .webhooks = &f->webhooks,
        .incidents = f->incidents,
        .sink = {queue_submit, &f->q},
        .clock_ms = fixture_clock,
    };
    f->intake = fbr_intake_new(&o);
}

static void fixture_free(struct fixture *f)
{
    queue_clear(&f->q);
    fbr_intake_free(&f->intake);
    fbr_incidents_close(&f->incidents);
    fbr_webhooks_clear(&f->webhooks);
    fbr_rules_free(&f->rules);
}

/* Posts body (JSON text, or NULL for an unparsable body) to path; returns the status. */
static int post(struct fixture *f, const char *path, const char *body, json_t **reply,
                size_t *deliveries)
{
    json_t *b = body ? parse(body) : NULL;
    struct fbr_intake_reply r;
    fbr_intake_alert(f->intake, fbr_slice_from(path), b, &r);
    json_decref(b);
    ck_assert_ptr_nonnull(r.body);
    if (reply)
        *reply = r.body;
    else
        json_decref(r.body);
    if (deliveries)
        *deliveries = r.deliveries;
    return r.status;
}

static char *flat(const struct fbr_render *r)
{
    return fbr_render_strdup(r);
}

/* ---- intake errors ---------------------------------------------------------------------------- */

static const struct {
    const char *what;
    const char *path;
    const char *body;
    int status;
    const char *message;
} errors[] = {
    {"wrong key", FBR_INTAKE_ALERT_PREFIX "nope/devops", "{\"message_type\":\"CRITICAL\"}", 404,
     "Not found"},
    {"wrong key, bad body", FBR_INTAKE_ALERT_PREFIX "nope/devops", NULL, 404, "Not found"},
    {"key prefix only", FBR_INTAKE_ALERT_PREFIX "k3y/devops", "{\"message_type\":\"INFO\"}", 404,
     "Not found"},
    {"key plus suffix", FBR_INTAKE_ALERT_PREFIX KEY "x/devops", "{\"message_type\":\"INFO\"}",
     404, "Not found"},
    {"no key", FBR_INTAKE_ALERT_PREFIX, "{\"message_type\":\"INFO\"}", 404, "Not found"},
    {"other version literal", "/integrations/generic/20131115/alert/" KEY "/devops",
     "{\"message_type\":\"INFO\"}", 404, "Not found"},
    {"extra segment", ALERT_PATH("devops/x"), "{\"message_type\":\"INFO\"}", 404, "Not found"},
    {"bad routing key", ALERT_PATH("dev ops"), "{\"message_type\":\"INFO\"}", 404, "Not found"},
    {"unparsable body", ALERT_PATH("devops"), NULL, 400, "Invalid JSON body"},
    {"array body", ALERT_PATH("devops"), "[1]", 400, "Invalid body: expected a JSON object"},
    {"missing message_type", ALERT_PATH("devops"), "{\"entity_id\":\"x\"}", 400,
     "Missing fields: message_type"},
    {"message_type not a string", ALERT_PATH("devops"), "{\"message_type\":3}", 400,
     "Invalid field: message_type must be a string"},
    {"entity_id not a string", ALERT_PATH("devops"),
     "{\"message_type\":\"INFO\",\"entity_id\":{}}", 400,
     "Invalid field: entity_id must be a string"},
};

START_TEST(intake_error)
{
    struct fixture f;
    json_t *cfg = parse("{}");
    fixture_init(&f, cfg);
    json_t *reply;
    int status = post(&f, errors[_i].path, errors[_i].body, &reply, NULL);
    ck_assert_msg(status == errors[_i].status, "%s: status %d", errors[_i].what, status);
    ck_assert_str_eq(json_string_value(json_object_get(reply, "result")), "failure");
    ck_assert_str_eq(json_string_value(json_object_get(reply, "message")), errors[_i].message);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->rejected, 1);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->alerts, 0);
    json_decref(reply);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* Field limits: at the limit passes, one character more fails (multi-byte counts as one). */
static const struct {
    const char *field;
    size_t limit;
    const char *unit; /* one character */
} limits[] = {
    {"entity_display_name", FBR_INTAKE_FIELD_MAX, "x"},
    {"custom_field", FBR_INTAKE_FIELD_MAX, "\xc3\xa9"},
    {"state_message", FBR_INTAKE_STATE_MESSAGE_MAX, "y"},
    {"entity_id", FBR_INTAKE_ENTITY_ID_MAX, "z"},
    {"entity_id", FBR_INTAKE_ENTITY_ID_MAX, "\xe2\x82\xac"},
    {"state_message", FBR_INTAKE_STATE_MESSAGE_MAX, "\xc3\xa9"},
};

START_TEST(field_limit)
{
    struct fixture f;
    json_t *cfg = parse("{}");
    fixture_init(&f, cfg);
    size_t ulen = strlen(limits[_i].unit);
    for (int over = 0; over <= 1; over++) {
        size_t n = limits[_i].limit + (size_t)over;
        char *v = malloc(n * ulen + 1);
        for (size_t k = 0; k < n; k++)
            memcpy(v + k * ulen, limits[_i].unit, ulen);
        v[n * ulen] = 0;
        json_t *b = json_pack("{s:s,s:s}", "message_type", "INFO", limits[_i].field, v);
        struct fbr_intake_reply r;
        fbr_intake_alert(f.intake, fbr_slice_from(ALERT_PATH("devops")), b, &r);
        ck_assert_int_eq(r.status, over ? 400 : 200);
        if (over) {
            char want[128];
            snprintf(want, sizeof(want), "Field too long: %s exceeds %zu characters",
                     limits[_i].field, limits[_i].limit);
            ck_assert_str_eq(json_string_value(json_object_get(r.body, "message")), want);
        }
        json_decref(r.body);
        json_decref(b);
        free(v);
    }
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* A field that is an array or an object: every string in it, keys included, at most
 * FBR_INTAKE_FIELD_MAX characters (probe 4, defect 10: nesting went around the limit). */
START_TEST(nested_field_limit)
{
    struct fixture f;
    json_t *cfg = parse("{}");
    fixture_init(&f, cfg);
    for (int over = 0; over <= 1; over++) {
        size_t n = FBR_INTAKE_FIELD_MAX + (size_t)over;
        char *v = malloc(n + 1);
        memset(v, 'x', n);
        v[n] = 0;
        json_t *bodies[] = {
            json_pack("{s:s,s:{s:[i,s]}}", "message_type", "INFO", "custom", "a", 1, v),
            json_pack("{s:s,s:[{s:s}]}", "message_type", "INFO", "custom", "k", v),
            json_pack("{s:s,s:{s:i}}", "message_type", "INFO", "custom", v, 1),
        };
        for (size_t k = 0; k < FBR_ARRAY_LEN(bodies); k++) {
            struct fbr_intake_reply r;
            fbr_intake_alert(f.intake, fbr_slice_from(ALERT_PATH("devops")), bodies[k], &r);
            ck_assert_msg(r.status == (over ? 400 : 200), "body %zu, over %d: %d", k, over,
                          r.status);
            if (over)
                ck_assert_str_eq(json_string_value(json_object_get(r.body, "message")),
                                 "Field too long: custom exceeds 1024 characters");
            json_decref(r.body);
            json_decref(bodies[k]);
        }
        free(v);
    }
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* A routing key of FBR_ROUTING_KEY_MAX bytes is taken, one more is 404 like any bad key. */
START_TEST(routing_key_length)
{
    struct fixture f;
    json_t *cfg = parse("{}");
    fixture_init(&f, cfg);
    for (int over = 0; over <= 1; over++) {
        char path[sizeof(FBR_INTAKE_ALERT_PREFIX) + 64 + FBR_ROUTING_KEY_MAX + 2];
        int n = snprintf(path, sizeof(path), "%s", ALERT_PATH(""));
        memset(path + n, 'r', FBR_ROUTING_KEY_MAX + (size_t)over);
        path[n + FBR_ROUTING_KEY_MAX + over] = 0;
        ck_assert_int_eq(post(&f, path, "{\"message_type\":\"INFO\"}", NULL, NULL),
                         over ? 404 : 200);
    }
    ck_assert(fbr_routing_key_ok("a-b_C9", 6));
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

START_TEST(stamped_fields)
{
    struct fixture f;
    json_t *cfg = parse("{\"organization_id\":\"acme\",\"webhooks\":[{\"event\":\"Any-Alert\","
                        "\"url\":\"http://127.0.0.1/x\",\"payload\":\"${{ALERT.routing_key}}\"}]}");
    fixture_init(&f, cfg);
    json_t *reply;
    size_t n;
    ck_assert_int_eq(post(&f, ALERT_PATH("DevOps_2"), "{\"message_type\":\"critical\"}", &reply,
                          &n),
                     200);
    ck_assert_str_eq(json_string_value(json_object_get(reply, "result")), "success");
    const char *eid = json_string_value(json_object_get(reply, "entity_id"));
    ck_assert_ptr_nonnull(eid);
    ck_assert_uint_eq(strlen(eid), 36); /* a random UUID */
    ck_assert_uint_eq(n, 1);
    json_t *alert = json_object_get(f.q.v[0]->event, "ALERT");
    ck_assert_str_eq(json_string_value(json_object_get(alert, "routing_key")), "DevOps_2");
    ck_assert_str_eq(json_string_value(json_object_get(alert, "message_type")), "CRITICAL");
    ck_assert_str_eq(json_string_value(json_object_get(alert, "entity_id")), eid);
    ck_assert_str_eq(json_string_value(json_object_get(alert, "VO_ORGANIZATION_ID")), "acme");
    ck_assert_uint_eq(json_string_length(json_object_get(alert, "VO_UUID")), 36);
    /* a version 4 UUID: 8-4-4-4-12 lower-case hex digits, '4' and one of 8, 9, a, b in place */
    const char *uuid = json_string_value(json_object_get(alert, "VO_UUID"));
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            ck_assert_int_eq(uuid[i], '-');
        else
            ck_assert_ptr_nonnull(strchr("0123456789abcdef", uuid[i]));
    }
    ck_assert_int_eq(uuid[14], '4');
    ck_assert_ptr_nonnull(strchr("89ab", uuid[19]));
    const char *rcv = json_string_value(json_object_get(alert, "VO_ALERT_RCV_TIME"));
    ck_assert_ptr_nonnull(rcv);
    uint64_t ms = strtoull(rcv, NULL, 10);
    ck_assert_uint_le(ms, fbr_wall_ms());
    ck_assert_uint_gt(ms + 60000, fbr_wall_ms());
    /* Shapes: '9' stands for any digit. */
    static const struct {
        const char *field, *shape;
    } fmt[] = {
        {"alert_received_week_time_utc", "9999-W99-9T99:99:99Z"},
        {"Alert_received_time_utc", "9999-99-99T99:99:99Z"},
    };
    for (size_t i = 0; i < 2; i++) {
        const char *v = json_string_value(json_object_get(alert, fmt[i].field));
        ck_assert_ptr_nonnull(v);
        ck_assert_uint_eq(strlen(v), strlen(fmt[i].shape));
        for (size_t k = 0; v[k]; k++) {
            char want = fmt[i].shape[k];
            ck_assert_msg(want == '9' ? (v[k] >= '0' && v[k] <= '9') : v[k] == want, "%s = %s",
                          fmt[i].field, v);
        }
    }
    /* ISO week date of the receive time, computed independently of strftime's %G/%V. */
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    int wday = tm.tm_wday ? tm.tm_wday : 7;
    int week = (tm.tm_yday + 1 - wday + 10) / 7;
    const char *wk = json_string_value(json_object_get(alert, "alert_received_week_time_utc"));
    if (week >= 1 && week <= 52) {
        char want[48];
        snprintf(want, sizeof(want), "%04d-W%02d-%d", tm.tm_year + 1900, week, wday);
        ck_assert_msg(strncmp(wk, want, strlen(want)) == 0, "%s, want %s", wk, want);
    }
    char *body = flat(&f.q.v[0]->body);
    ck_assert_str_eq(body, "\"DevOps_2\""); /* a bare variable in a JSON payload is a JSON value */
    free(body);
    json_decref(reply);

    /* A given entity_id comes back as given; an unknown message_type acts as INFO. */
    ck_assert_int_eq(post(&f, ALERT_PATH("devops"),
                          "{\"message_type\":\"SOMETHING\",\"entity_id\":\"e-1\"}", &reply, &n),
                     200);
    ck_assert_str_eq(json_string_value(json_object_get(reply, "entity_id")), "e-1");
    ck_assert_uint_eq(n, 1); /* only Any-Alert */
    json_decref(reply);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* ---- stamps: the same fields for every kind of alert, shared values never changed ---------- */

static uint64_t test_now_ms;

static uint64_t test_clock(void)
{
    return test_now_ms;
}

static int is_uuid(const char *s)
{
    if (!s || strlen(s) != 36 || s[14] != '4' || !strchr("89ab", s[19]))
        return 0;
    for (size_t i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !strchr("0123456789abcdef", s[i]))
            return 0;
    }
    return 1;
}

/*
 * What stamping makes of input for routing key rk at now_ms with organization "acme", written
 * out independently of intake.c: message_type upper-cased when it names a type, an entity_id
 * when it has none (the random parts, entity_id and VO_UUID, are taken from got after their
 * shape is checked), then routing_key and the stamps.  An existing key keeps its place.
 */
static json_t *expected_stamps(const char *input, const char *rk, uint64_t now_ms, json_t *got)
{
    static const char *const types[] = {"CRITICAL", "WARNING", "ACKNOWLEDGEMENT",
                                        "INFO",     "RECOVERY", "OK"};
    json_t *want = parse(input);
    const char *mt = json_string_value(json_object_get(want, "message_type"));
    for (size_t i = 0; mt && i < FBR_ARRAY_LEN(types); i++) {
        if (strcasecmp(mt, types[i]) == 0) {
            json_object_set_new(want, "message_type", json_string(types[i]));
            break;
        }
    }
    json_t *eid = json_object_get(want, "entity_id");
    if (!json_is_string(eid) || json_string_length(eid) == 0) {
        const char *made = json_string_value(json_object_get(got, "entity_id"));
        ck_assert_msg(is_uuid(made), "entity_id %s", made ? made : "(none)");
        json_object_set_new(want, "entity_id", json_string(made));
    }
    if (rk[0])
        json_object_set_new(want, "routing_key", json_string(rk));
    const char *uuid = json_string_value(json_object_get(got, "VO_UUID"));
    ck_assert_msg(is_uuid(uuid), "VO_UUID %s", uuid ? uuid : "(none)");
    json_object_set_new(want, "VO_UUID", json_string(uuid));
    char buf[64];
    snprintf(buf, sizeof(buf), "%" PRIu64, now_ms);
    json_object_set_new(want, "VO_ALERT_RCV_TIME", json_string(buf));
    json_object_set_new(want, "VO_ORGANIZATION_ID", json_string("acme"));
    time_t secs = (time_t)(now_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(buf, sizeof(buf), "%G-W%V-%uT%H:%M:%SZ", &tm);
    json_object_set_new(want, "alert_received_week_time_utc", json_string(buf));
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_set_new(want, "Alert_received_time_utc", json_string(buf));
    return want;
}

/* got equals want, members in the same order (what a template dumping ALERT would show). */
static void assert_same_alert(json_t *want, json_t *got, const char *label)
{
    char *w = json_dumps(want, JSON_COMPACT), *g = json_dumps(got, JSON_COMPACT);
    ck_assert_msg(strcmp(w, g) == 0, "%s:\n got  %s\n want %s", label, g, w);
    free(w);
    free(g);
}

static const struct {
    const char *rk, *body;
    uint64_t now_ms;
} stamp_cases[] = {
    {"DevOps_2", "{\"message_type\":\"critical\"}", 1700000000123},
    {"DevOps_2", "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e-1\"}", 1700000000123},
    {"team-b", "{\"message_type\":\"Recovery\",\"entity_id\":\"\",\"state_message\":\"x\"}",
     1700000000124},
    {"team-b", "{\"message_type\":\"SOMETHING\",\"entity_id\":null}", 1700000000999},
    {"team-b", "{\"message_type\":\"ok\",\"entity_id\":\"e-2\"}", 1700000001000},
    {"", "{\"entity_id\":\"e\",\"message_type\":\"acknowledgement\",\"a\":1,\"b\":{\"c\":[1,2]},"
         "\"c\":\"d\",\"d\":true,\"e\":null,\"f\":1.5,\"g\":\"\\u00e9\"}",
     1700000001000},
    {"x", "{\"VO_UUID\":\"mine\",\"routing_key\":\"other\",\"message_type\":\"Warning\","
          "\"VO_ALERT_RCV_TIME\":\"1\",\"VO_ORGANIZATION_ID\":\"o\",\"entity_id\":\"e-3\"}",
     1704067199999}, /* 2023-12-31T23:59:59.999Z: ISO week 2023-W52-7 */
    {"x", "{\"message_type\":\"info\",\"entity_id\":\"e-4\"}", 1704067200000},
    {"DevOps_2", "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e-1\"}", 1704067200000},
};

START_TEST(stamps_as_specified)
{
    struct fixture f;
    json_t *cfg = parse("{\"organization_id\":\"acme\",\"webhooks\":[{\"event\":\"Any-Alert\","
                        "\"url\":\"http://127.0.0.1/x\",\"payload\":\"p\"}]}");
    fixture_clock = test_clock;
    fixture_init(&f, cfg);
    fixture_clock = NULL;
    json_t *kept[FBR_ARRAY_LEN(stamp_cases)], *want[FBR_ARRAY_LEN(stamp_cases)];
    for (size_t i = 0; i < FBR_ARRAY_LEN(stamp_cases); i++) {
        char path[128], label[64];
        snprintf(path, sizeof(path), "%s%s%s%s", FBR_INTAKE_ALERT_PREFIX, f.key,
                 stamp_cases[i].rk[0] ? "/" : "", stamp_cases[i].rk);
        snprintf(label, sizeof(label), "case %zu", i);
        test_now_ms = stamp_cases[i].now_ms;
        json_t *reply;
        ck_assert_int_eq(post(&f, path, stamp_cases[i].body, &reply, NULL), 200);
        ck_assert_uint_eq(f.q.n, 1);
        kept[i] = json_incref(json_object_get(f.q.v[0]->event, "ALERT"));
        want[i] = expected_stamps(stamp_cases[i].body, stamp_cases[i].rk, test_now_ms, kept[i]);
        assert_same_alert(want[i], kept[i], label);
        ck_assert_str_eq(json_string_value(json_object_get(reply, "entity_id")),
                         json_string_value(json_object_get(want[i], "entity_id")));
        json_decref(reply);
        queue_clear(&f.q);
    }
    /* Alerts stamped earlier still hold what they were given (values shared between alerts are
     * never changed by a later one), and a group is stamped as single alerts are. */
    for (size_t i = 0; i < FBR_ARRAY_LEN(stamp_cases); i++) {
        char label[64];
        snprintf(label, sizeof(label), "case %zu, kept", i);
        assert_same_alert(want[i], kept[i], label);
    }
    test_now_ms = 1700000000123;
    json_t *group = json_array();
    for (size_t i = 0; i < 4; i++)
        json_array_append_new(group, parse(stamp_cases[i].body));
    struct fbr_intake_reply r;
    fbr_intake_alert_group(f.intake, fbr_slice_from("DevOps_2"), group, &r);
    ck_assert_int_eq(r.status, 200);
    json_decref(r.body);
    for (size_t i = 0; i < 4; i++) {
        char label[64];
        snprintf(label, sizeof(label), "group alert %zu", i);
        json_t *a = json_array_get(group, i);
        json_t *w = expected_stamps(stamp_cases[i].body, "DevOps_2", test_now_ms, a);
        assert_same_alert(w, a, label);
        json_decref(w);
    }
    json_decref(group);
    for (size_t i = 0; i < FBR_ARRAY_LEN(stamp_cases); i++) {
        json_decref(kept[i]);
        json_decref(want[i]);
    }
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* The routing key every alert gets is its own, for many keys in turn (more than are kept). */
START_TEST(routing_keys_in_turn)
{
    struct fixture f;
    json_t *cfg = parse("{\"webhooks\":[{\"event\":\"Any-Alert\",\"url\":\"http://127.0.0.1/x\","
                        "\"payload\":\"${{ALERT.routing_key}}\"}]}");
    fixture_init(&f, cfg);
    for (size_t round = 0; round < 3; round++) {
        for (size_t i = 0; i < 80; i++) {
            /* keys of one length and first letter, and keys that differ in one middle byte */
            char rk[32], path[160], want[40];
            size_t k = round == 1 ? 79 - i : i;
            snprintf(rk, sizeof(rk), k % 2 ? "k%02zu" : "rk-%zu-x", k);
            snprintf(path, sizeof(path), "%s%s/%s", FBR_INTAKE_ALERT_PREFIX, f.key, rk);
            ck_assert_int_eq(post(&f, path, "{\"message_type\":\"INFO\"}", NULL, NULL), 200);
            ck_assert_uint_eq(f.q.n, 1);
            char *body = flat(&f.q.v[0]->body);
            snprintf(want, sizeof(want), "\"%s\"", rk);
            ck_assert_str_eq(body, want);
            free(body);
            queue_clear(&f.q);
        }
    }
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* A rule that rewrites stamped fields of one alert replaces that alert's values: the next alert,
 * stamped in the same millisecond for the same routing key, gets the stamps unchanged, and the
 * rewritten alert (still held by its delivery) keeps its rewrite; so does a value the intake's
 * reader shares between bodies (message_type). */
START_TEST(rules_rewrite_only_their_alert)
{
    struct fixture f;
    json_t *cfg = parse(
        "{\"organization_id\":\"acme\",\"rules\":[{\"when\":{\"field\":\"entity_id\","
        "\"pattern\":\"rewrite\"},\"set\":{\"routing_key\":\"${{routing_key}}-moved\","
        "\"message_type\":\"${{message_type}}!\",\"VO_ALERT_RCV_TIME\":\"0\","
        "\"VO_ORGANIZATION_ID\":\"${{VO_ORGANIZATION_ID}}+\","
        "\"Alert_received_time_utc\":\"never\"}}],"
        "\"webhooks\":[{\"event\":\"Any-Alert\",\"url\":\"http://127.0.0.1/x\","
        "\"payload\":\"${{ALERT.routing_key}} ${{ALERT.message_type}} ${{ALERT.VO_ALERT_RCV_TIME}} "
        "${{ALERT.VO_ORGANIZATION_ID}} ${{ALERT.Alert_received_time_utc}}\","
        "\"content_type\":\"text/plain\"}]}");
    fixture_clock = test_clock;
    fixture_init(&f, cfg);
    fixture_clock = NULL;
    test_now_ms = 1700000000123;
    static const char *const bodies[] = {
        "{\"message_type\":\"CRITICAL\",\"entity_id\":\"plain-1\"}",
        "{\"message_type\":\"CRITICAL\",\"entity_id\":\"rewrite\"}",
        "{\"message_type\":\"CRITICAL\",\"entity_id\":\"plain-2\"}",
        "{\"message_type\":\"critical\",\"entity_id\":\"plain-3\"}",
    };
    static const char *const want[] = {
        "team CRITICAL 1700000000123 acme 2023-11-14T22:13:20Z",
        "team-moved CRITICAL! 0 acme+ never",
        "team CRITICAL 1700000000123 acme 2023-11-14T22:13:20Z",
        "team CRITICAL 1700000000123 acme 2023-11-14T22:13:20Z",
    };
    /* read as the intake reads a posted body: "CRITICAL" is one value in the first three */
    struct fbr_json_strings *st = fbr_json_strings_new();
    for (size_t i = 0; i < 4; i++) {
        char path[128];
        snprintf(path, sizeof(path), "%s%s/team", FBR_INTAKE_ALERT_PREFIX, f.key);
        json_t *b = fbr_json_loadb_shared(bodies[i], strlen(bodies[i]), NULL, st);
        struct fbr_intake_reply r;
        fbr_intake_alert(f.intake, fbr_slice_from(path), b, &r);
        json_decref(b);
        json_decref(r.body);
        ck_assert_int_eq(r.status, 200);
        ck_assert_uint_eq(f.q.n, i + 1);
    }
    fbr_json_strings_free(&st);
    ck_assert_ptr_eq(json_object_get(json_object_get(f.q.v[0]->event, "ALERT"), "message_type"),
                     json_object_get(json_object_get(f.q.v[2]->event, "ALERT"), "message_type"));
    for (size_t i = 0; i < 4; i++) {
        char *body = flat(&f.q.v[i]->body);
        ck_assert_str_eq(body, want[i]);
        free(body);
    }
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* ---- the seed's Multi-Room configuration --------------------------------------------------------- */

static json_t *load_example(const char *name)
{
    const char *root = getenv("FBR_SOURCE_ROOT");
    char path[1024];
    snprintf(path, sizeof(path), "%s/contrib/examples/%s", root ? root : "..", name);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j)
        ck_abort_msg("%s: %s", path, e.text);
    return j;
}

/* The per-alert number and hex formatting (common.h) against snprintf's. */
START_TEST(fmt_helpers)
{
    static const uint64_t v[] = {0,    7,     10,    11,   99, 100, 101, 999, 1000, 12345, 99999,
                                 1764432000123ULL, 10000000000000000000ULL, UINT64_MAX};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char got[FBR_U64_DIGITS + 1], want[32];
        size_t n = fbr_fmt_u64(got, v[i]);
        snprintf(want, sizeof(want), "%" PRIu64, v[i]);
        ck_assert_str_eq(got, want);
        ck_assert_uint_eq(n, strlen(want));
    }
    const unsigned char b[] = {0x00, 0x0f, 0xa5, 0xff};
    char hex[9];
    ck_assert_uint_eq(fbr_fmt_hex(hex, b, sizeof(b)), 8);
    ck_assert_str_eq(hex, "000fa5ff");
    /* fbr_join: the parts in order, cut to cap - 1 and NUL-terminated, as snprintf would */
    const struct fbr_slice parts[] = {{"http", 4}, {"://", 3}, {NULL, 0}, {"h:1", 3}, {"/p", 2}};
    char j[32];
    ck_assert_uint_eq(fbr_join(j, sizeof(j), parts, 5), 12);
    ck_assert_str_eq(j, "http://h:1/p");
    ck_assert_uint_eq(fbr_join(j, 6, parts, 5), 5);
    ck_assert_str_eq(j, "http:");
    ck_assert_uint_eq(fbr_join(j, 1, parts, 5), 0);
    ck_assert_str_eq(j, "");
    ck_assert_uint_eq(fbr_join(j, sizeof(j), parts, 0), 0);
    ck_assert_str_eq(j, "");
}
END_TEST

START_TEST(seed_multi_room)
{
    struct fixture f;
    json_t *cfg = load_example("multi-room.json");
    fixture_init(&f, cfg);
    char path[256];
    size_t n;
    json_t *reply;

    snprintf(path, sizeof(path), FBR_INTAKE_ALERT_PREFIX "%s/devops", f.key);
    ck_assert_int_eq(post(&f, path,
                          "{\"message_type\":\"CRITICAL\",\"entity_id\":\"disk/db01\","
                          "\"entity_display_name\":\"Disk \\\"/var\\\" full on db01\"}",
                          &reply, &n),
                     200);
    json_decref(reply);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(f.q.n, 1);
    struct fbr_outreq *o = f.q.v[0];
    char *url = flat(&o->url), *body = flat(&o->body);
    ck_assert_str_eq(url, "https://DOMAIN.hipchat.com/v2/room/ROOM_ID/notification"
                          "?auth_token=AUTH_TOKEN_HERE");
    ck_assert_str_eq(body, "{ \"color\": \"red\", \"message\": \"Disk \\\"/var\\\" full on db01\", "
                           "\"notify\": true, \"message_format\": \"text\" }");
    json_t *parsed = json_loads(body, 0, NULL);
    ck_assert_ptr_nonnull(parsed); /* escaping kept the body valid JSON */
    json_decref(parsed);
    ck_assert_uint_eq(o->method, FBR_M_POST);
    ck_assert_str_eq(o->content_type, "application/json");
    free(url);
    free(body);

    /* The same entity again rolls into the open incident: no new trigger, no delivery. */
    ck_assert_int_eq(post(&f, path, "{\"message_type\":\"CRITICAL\",\"entity_id\":\"disk/db01\"}",
                          NULL, &n),
                     200);
    ck_assert_uint_eq(n, 0);

    /* Another routing key: the rule does not fire, the URL misses room_id, nothing is sent. */
    snprintf(path, sizeof(path), FBR_INTAKE_ALERT_PREFIX "%s/webteam", f.key);
    ck_assert_int_eq(post(&f, path, "{\"message_type\":\"CRITICAL\",\"entity_id\":\"x\"}", NULL,
                          &n),
                     200);
    ck_assert_uint_eq(n, 0);
    ck_assert_uint_eq(f.q.n, 1);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->skipped, 1);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* ---- incident events through webhooks ------------------------------------------------------------ */

START_TEST(incident_events)
{
    struct fixture f;
    json_t *cfg = parse(
        "{\"webhooks\":["
        "{\"name\":\"t\",\"event\":\"Incident-Triggered\",\"url\":\"http://127.0.0.1/t\","
        "\"payload\":\"#${{STATE.INCIDENT_NAME}} ${{STATE.CURRENT_ALERT_PHASE}}\","
        "\"content_type\":\"text/plain\"},"
        "{\"name\":\"a\",\"event\":\"Incident-Acknowledged\",\"url\":\"http://127.0.0.1/a\","
        "\"payload\":\"${{STATE.ACK_USER}}: ${{STATE.ACK_MSG}}\",\"content_type\":\"text/plain\"},"
        "{\"name\":\"r\",\"event\":\"Incident-Resolved\",\"method\":\"PUT\","
        "\"url\":\"http://127.0.0.1/r/${{INCIDENT.INCIDENT_ID}}\"},"
        "{\"name\":\"any\",\"event\":\"Any-Incident\",\"url\":\"http://127.0.0.1/any\","
        "\"headers\":{\"X-Phase\":\"${{INCIDENT.CURRENT_PHASE}}\"}},"
        "{\"name\":\"off\",\"event\":\"Any-Incident\",\"enabled\":false,"
        "\"url\":\"http://127.0.0.1/off\"},"
        "{\"name\":\"all\",\"event\":\"Any-Alert\",\"method\":\"GET\","
        "\"url\":\"http://127.0.0.1/all?m=${{ALERT.message_type}}\"}]}");
    fixture_init(&f, cfg);
    static const struct {
        const char *body;
        size_t deliveries;
        const char *first_url;
    } steps[] = {
        {"{\"message_type\":\"CRITICAL\",\"entity_id\":\"e\"}", 3, "http://127.0.0.1/t"},
        {"{\"message_type\":\"WARNING\",\"entity_id\":\"e\"}", 1, "http://127.0.0.1/all?m=WARNING"},
        {"{\"message_type\":\"ACKNOWLEDGEMENT\",\"entity_id\":\"e\",\"ack_author\":\"bob\","
         "\"ack_msg\":\"looking\"}",
         3, "http://127.0.0.1/a"},
        {"{\"message_type\":\"INFO\",\"entity_id\":\"e\"}", 1, "http://127.0.0.1/all?m=INFO"},
        {"{\"message_type\":\"recovery\",\"entity_id\":\"e\"}", 3, "http://127.0.0.1/r/1"},
        {"{\"message_type\":\"OK\",\"entity_id\":\"e\"}", 1, "http://127.0.0.1/all?m=OK"},
        {"{\"message_type\":\"CRITICAL\",\"entity_id\":\"e\"}", 3, "http://127.0.0.1/t"},
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(steps); i++) {
        size_t n;
        queue_clear(&f.q);
        ck_assert_int_eq(post(&f, ALERT_PATH("ops"), steps[i].body, NULL, &n), 200);
        ck_assert_msg(n == steps[i].deliveries, "step %zu: %zu deliveries", i, n);
        char *url = flat(&f.q.v[0]->url);
        ck_assert_msg(strcmp(url, steps[i].first_url) == 0, "step %zu: %s", i, url);
        free(url);
        if (i == 0 || i == 6) {
            char *b = flat(&f.q.v[0]->body);
            ck_assert_str_eq(b, i == 0 ? "#1 UNACKED" : "#2 UNACKED");
            free(b);
        }
        if (i == 2) {
            char *b = flat(&f.q.v[0]->body);
            ck_assert_str_eq(b, "bob: looking");
            free(b);
            ck_assert_uint_eq(f.q.v[1]->nheaders, 1);
            ck_assert_str_eq(f.q.v[1]->header_names[0], "X-Phase");
            char *h = flat(&f.q.v[1]->headers[0]);
            ck_assert_str_eq(h, "ACKED");
            free(h);
        }
        if (i == 4)
            ck_assert_uint_eq(f.q.v[0]->method, FBR_M_PUT);
    }
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* STATE and INCIDENT are built per alert only when something reads them: an enabled webhook's
 * template (decided at configuration load and reload) or the observer (all, unless it says
 * which); the incident lifecycle is the same either way. */
static void ignore_events(void *arg, const struct fbr_event_set *set)
{
    (void)set;
    ++*(int *)arg;
}

static void assert_event_has(struct fixture *f, const char *body, int state, int incident)
{
    size_t n;
    queue_clear(&f->q);
    ck_assert_int_eq(post(f, ALERT_PATH("ops"), body, NULL, &n), 200);
    ck_assert_uint_eq(n, 1);
    json_t *ev = f->q.v[0]->event;
    ck_assert_ptr_nonnull(json_object_get(ev, "ALERT"));
    ck_assert_msg((json_object_get(ev, "STATE") != NULL) == state, "STATE %s",
                  state ? "missing" : "built though nothing reads it");
    ck_assert_msg((json_object_get(ev, "INCIDENT") != NULL) == incident, "INCIDENT %s",
                  incident ? "missing" : "built though nothing reads it");
}

START_TEST(namespaces_built_only_when_read)
{
    struct fixture f;
    json_t *cfg = parse(
        "{\"webhooks\":["
        "{\"name\":\"plain\",\"event\":\"Incident-Triggered\","
        "\"url\":\"http://127.0.0.1/t/${{ALERT.entity_id}}\",\"payload\":\"fixed\","
        "\"content_type\":\"text/plain\"},"
        "{\"name\":\"off\",\"event\":\"Any-Alert\",\"enabled\":false,"
        "\"url\":\"http://127.0.0.1/off/${{INCIDENT.INCIDENT_ID}}?s=${{STATE.ACK_USER}}\"}]}");
    fixture_init(&f, cfg);
    ck_assert_uint_eq(fbr_webhooks_namespaces(&f.webhooks), FBR_NS_BIT(FBR_NS_ALERT));
    assert_event_has(&f, "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e1\"}", 0, 0);
    char *url = flat(&f.q.v[0]->url);
    ck_assert_str_eq(url, "http://127.0.0.1/t/e1");
    free(url);
    /* the lifecycle did not change: the same entity rolls, a new one opens incident #2 */
    size_t n;
    ck_assert_int_eq(post(&f, ALERT_PATH("ops"), "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e1\"}",
                          NULL, &n), 200);
    ck_assert_uint_eq(n, 0);

    /* A reload to webhooks that read STATE (in a header) and INCIDENT (in the payload). */
    json_t *cfg2 = parse(
        "{\"webhooks\":["
        "{\"name\":\"s\",\"event\":\"Incident-Triggered\",\"url\":\"http://127.0.0.1/s\","
        "\"headers\":{\"X-Name\":\"${{STATE.INCIDENT_NAME}}\"},"
        "\"payload\":\"${{INCIDENT.INCIDENT_NAME}} ${{INCIDENT.CURRENT_PHASE}}\","
        "\"content_type\":\"text/plain\"}]}");
    struct fbr_webhooks wh2;
    struct fbr_cfgerr errs = {0};
    ck_assert_int_eq(fbr_webhooks_compile(json_object_get(cfg2, "webhooks"), &wh2, &errs), FBR_OK);
    ck_assert_uint_eq(fbr_webhooks_namespaces(&wh2),
                      FBR_NS_BIT(FBR_NS_STATE) | FBR_NS_BIT(FBR_NS_INCIDENT));
    fbr_intake_set_config(f.intake, f.rules, &wh2);
    assert_event_has(&f, "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e2\"}", 1, 1);
    char *b = flat(&f.q.v[0]->body), *h = flat(&f.q.v[0]->headers[0]);
    ck_assert_str_eq(b, "#2 UNACKED");
    ck_assert_str_eq(h, "2");
    free(b);
    free(h);

    /* Back to the plain webhooks, then an observer (the add-on reads the event object): all. */
    fbr_intake_set_config(f.intake, f.rules, &f.webhooks);
    assert_event_has(&f, "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e3\"}", 0, 0);
    int seen = 0;
    fbr_intake_set_observer(f.intake, ignore_events, NULL, &seen);
    assert_event_has(&f, "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e4\"}", 1, 1);
    ck_assert_int_eq(seen, 1);
    /* an observer that reads nothing of the event (the add-on without its `hipchat` section) */
    fbr_intake_observer_namespaces(f.intake, 0);
    assert_event_has(&f, "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e6\"}", 0, 0);
    ck_assert_int_eq(seen, 2);
    fbr_intake_observer_namespaces(f.intake, FBR_NS_BIT(FBR_NS_INCIDENT));
    assert_event_has(&f, "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e7\"}", 0, 1);
    fbr_intake_set_observer(f.intake, NULL, NULL, NULL);
    assert_event_has(&f, "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e5\"}", 0, 0);

    queue_clear(&f.q);
    fbr_webhooks_clear(&wh2);
    json_decref(cfg2);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* An unsafe rendering (header injection) and a refusing sink: nothing delivered, nothing leaked. */
static int refuse(void *arg, struct fbr_outreq *o)
{
    (void)o;
    ++*(int *)arg;
    return FBR_AGAIN;
}

START_TEST(unsafe_render_and_refusing_sink)
{
    struct fixture f;
    json_t *cfg = parse("{\"webhooks\":[{\"event\":\"Any-Alert\",\"url\":\"http://127.0.0.1/h\","
                        "\"headers\":{\"X-Host\":\"${{ALERT.host_name}}\"}}]}");
    fixture_init(&f, cfg);
    size_t n;
    ck_assert_int_eq(post(&f, ALERT_PATH("ops"),
                          "{\"message_type\":\"INFO\",\"host_name\":\"a\\r\\nX-Evil: 1\"}",
                          NULL, &n),
                     200);
    ck_assert_uint_eq(n, 0);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->invalid, 1);
    fbr_intake_free(&f.intake);
    int refused = 0;
    const char *keys[] = {KEY};
    struct fbr_intake_opts o = {.api_keys = keys, .napi_keys = 1, .webhooks = &f.webhooks,
                                .incidents = f.incidents, .sink = {refuse, &refused}};
    f.intake = fbr_intake_new(&o);
    /* a temporary refusal of the first delivery: 503, nothing lost, the client retries */
    ck_assert_int_eq(post(&f, ALERT_PATH("ops"), "{\"message_type\":\"INFO\",\"host_name\":\"a\"}",
                          NULL, &n),
                     503);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(refused, 1);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->sink_errors, 0);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->unavailable, 1);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->alerts, 0);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* ---- a full delivery sink: 503 + Retry-After, and nothing changed ---------------------------- */

/* A sink with a fixed capacity; with `room` it tells how much is left, without it it just refuses
 * with FBR_LIMIT (as fbr_delivery_submit at --max-pending).  accept_only > 0 refuses after that
 * many acceptances (a refusal in the middle of a request). */
struct bounded {
    struct queue q;
    size_t cap;
    size_t accept_only;
    size_t accepted;
};

static int bounded_submit(void *arg, struct fbr_outreq *o)
{
    struct bounded *b = arg;
    if (b->q.n >= b->cap || (b->accept_only && b->accepted >= b->accept_only))
        return FBR_LIMIT;
    b->accepted++;
    return queue_submit(&b->q, o);
}

static size_t bounded_room(void *arg)
{
    struct bounded *b = arg;
    return b->q.n < b->cap ? b->cap - b->q.n : 0;
}

/* Opens (or reopens: a restart) the incident table on a journal in dir. */
static void open_journaled(const char *dir, struct event_base **b, struct fbr_journal **j,
                           struct fbr_incidents **t)
{
    char jdir[128], err[512];
    snprintf(jdir, sizeof(jdir), "%s/journal", dir);
    fbr_journal_close(j);
    if (!*b)
        *b = event_base_new();
    struct fbr_journal_opts jo = {.dir = jdir, .fsync = FBR_FSYNC_OFF};
    ck_assert_int_eq(fbr_journal_open(*b, &jo, j, err, sizeof(err)), FBR_OK);
    struct fbr_incidents_opts io = {.journal = *j};
    ck_assert_int_eq(fbr_incidents_open(&io, t), FBR_OK);
    ck_assert_int_eq(fbr_journal_recover(*j, err, sizeof(err)), FBR_OK);
}

static const char full_cfg[] =
    "{\"webhooks\":["
    "{\"event\":\"Incident-Triggered\",\"url\":\"http://127.0.0.1/t1\","
    "\"payload\":\"#${{STATE.INCIDENT_NAME}}\",\"content_type\":\"text/plain\"},"
    "{\"event\":\"Incident-Triggered\",\"url\":\"http://127.0.0.1/t2\"},"
    "{\"event\":\"Incident-Acknowledged\",\"url\":\"http://127.0.0.1/ack\","
    "\"payload\":\"${{STATE.ACK_USER}}\",\"content_type\":\"text/plain\"},"
    "{\"event\":\"Incident-Resolved\",\"url\":\"http://127.0.0.1/res\"},"
    "{\"event\":\"Any-Alert\",\"url\":\"http://127.0.0.1/any\","
    "\"payload\":\"${{STATE.ALERT_COUNT}}\",\"content_type\":\"text/plain\"},"
    "{\"event\":\"On-Call\",\"url\":\"http://127.0.0.1/on\"}]}";

static struct fbr_intake *bounded_intake(struct fixture *f, struct bounded *b, int with_room)
{
    const char *keys[] = {KEY};
    struct fbr_intake_opts o = {.api_keys = keys, .napi_keys = 1, .webhooks = &f->webhooks,
                                .incidents = f->incidents,
                                .sink = {bounded_submit, b, with_room ? bounded_room : NULL}};
    return fbr_intake_new(&o);
}

static int post_full(struct fbr_intake *in, const char *body, size_t *n, unsigned *retry_after)
{
    json_t *b = parse(body);
    struct fbr_intake_reply r;
    fbr_intake_alert(in, fbr_slice_from(ALERT_PATH("ops")), b, &r);
    json_decref(b);
    ck_assert_ptr_nonnull(r.body);
    if (r.status == 503) {
        ck_assert_str_eq(json_string_value(json_object_get(r.body, "result")), "failure");
        ck_assert_ptr_nonnull(json_string_value(json_object_get(r.body, "message")));
    }
    *n = r.deliveries;
    *retry_after = r.retry_after;
    json_decref(r.body);
    return r.status;
}

static void assert_incidents(struct fbr_incidents *t, size_t count, size_t open, uint64_t next)
{
    struct fbr_incidents_stats st;
    fbr_incidents_get_stats(t, &st);
    ck_assert_uint_eq(st.count, count);
    ck_assert_uint_eq(st.open, open);
    ck_assert_uint_eq(st.next_number, next);
}

static const char crit[] = "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e\"}";
static const char ack[] = "{\"message_type\":\"ACKNOWLEDGEMENT\",\"entity_id\":\"e\","
                          "\"ack_author\":\"bob\"}";
static const char rec[] = "{\"message_type\":\"RECOVERY\",\"entity_id\":\"e\"}";

/* With `room`: an alert whose deliveries do not all fit is refused before anything is submitted;
 * the incident table, its counter and its journal are untouched, and the retry is processed as
 * the first post would have been. */
START_TEST(sink_full_with_room)
{
    struct fixture f;
    json_t *cfg = parse(full_cfg);
    fixture_init(&f, cfg);
    char dir[] = "/tmp/fbr-intake-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    struct event_base *jb = NULL;
    struct fbr_journal *jn = NULL;
    fbr_incidents_close(&f.incidents);
    open_journaled(dir, &jb, &jn, &f.incidents);
    struct bounded b = {.cap = 2};
    struct fbr_intake *in = bounded_intake(&f, &b, 1);
    size_t n;
    unsigned ra;

    /* a trigger needs 3 deliveries (t1, t2, any); room for 2 */
    uint64_t size0 = fbr_journal_position(jn);
    ck_assert_int_eq(post_full(in, crit, &n, &ra), 503);
    ck_assert_uint_eq(ra, FBR_INTAKE_RETRY_AFTER_S);
    ck_assert_uint_eq(n, 0);
    ck_assert_uint_eq(b.q.n, 0);
    ck_assert_uint_eq(b.accepted, 0);
    assert_incidents(f.incidents, 0, 0, 1);
    ck_assert_uint_eq(fbr_journal_position(jn), size0);
    ck_assert_uint_eq(fbr_intake_stats(in)->unavailable, 1);
    ck_assert_uint_eq(fbr_intake_stats(in)->alerts, 0);

    /* the retry, with room: the trigger happens exactly once, incident #1 */
    b.cap = 3;
    ck_assert_int_eq(post_full(in, crit, &n, &ra), 200);
    ck_assert_uint_eq(ra, 0);
    ck_assert_uint_eq(n, 3);
    char *p = flat(&b.q.v[0]->body);
    ck_assert_str_eq(p, "#1");
    free(p);
    assert_incidents(f.incidents, 1, 1, 2);
    ck_assert_uint_gt(fbr_journal_position(jn), size0);

    /* the queue is full again: an ack is refused and the incident stays UNACKED */
    uint64_t size1 = fbr_journal_position(jn);
    ck_assert_int_eq(post_full(in, ack, &n, &ra), 503);
    ck_assert_uint_eq(fbr_journal_position(jn), size1);
    queue_clear(&b.q);
    ck_assert_int_eq(post_full(in, ack, &n, &ra), 200);
    ck_assert_uint_eq(n, 2); /* ack + any: the ack was not lost */
    p = flat(&b.q.v[0]->body);
    ck_assert_str_eq(p, "bob");
    free(p);

    /* a roll-up refused does not count the alert: the next CRITICAL shows ALERT_COUNT 2 */
    b.cap = b.q.n;
    ck_assert_int_eq(post_full(in, crit, &n, &ra), 503);
    b.cap = 64;
    ck_assert_int_eq(post_full(in, crit, &n, &ra), 200);
    ck_assert_uint_eq(n, 1);
    p = flat(&b.q.v[b.q.n - 1]->body);
    ck_assert_str_eq(p, "2");
    free(p);
    assert_incidents(f.incidents, 1, 1, 2);

    /* a restart sees exactly what was committed */
    fbr_intake_free(&in);
    fbr_incidents_close(&f.incidents);
    open_journaled(dir, &jb, &jn, &f.incidents);
    assert_incidents(f.incidents, 1, 1, 2);
    queue_clear(&b.q);
    fbr_incidents_close(&f.incidents);
    fbr_journal_close(&jn);
    event_base_free(jb);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* Without `room` (the sink only answers FBR_LIMIT): a refusal of the first delivery still leaves
 * everything as it was; a refusal after some were accepted keeps the change (those deliveries
 * already carry it) and counts the lost ones. */
START_TEST(sink_full_without_room)
{
    struct fixture f;
    json_t *cfg = parse(full_cfg);
    fixture_init(&f, cfg);
    struct bounded b = {.cap = 0};
    struct fbr_intake *in = bounded_intake(&f, &b, 0);
    size_t n;
    unsigned ra;
    ck_assert_int_eq(post_full(in, crit, &n, &ra), 503);
    ck_assert_uint_eq(ra, FBR_INTAKE_RETRY_AFTER_S);
    assert_incidents(f.incidents, 0, 0, 1);
    b.cap = 64;
    ck_assert_int_eq(post_full(in, crit, &n, &ra), 200);
    ck_assert_uint_eq(n, 3);
    assert_incidents(f.incidents, 1, 1, 2);

    b.cap = b.q.n;
    ck_assert_int_eq(post_full(in, rec, &n, &ra), 503);
    assert_incidents(f.incidents, 1, 1, 2); /* still open */
    b.cap = 64;
    ck_assert_int_eq(post_full(in, rec, &n, &ra), 200);
    ck_assert_uint_eq(n, 2); /* resolved + any */
    assert_incidents(f.incidents, 1, 0, 2);

    /* refused in the middle: the first delivery went out, the change stays, the rest is counted */
    b.accept_only = b.accepted + 1;
    ck_assert_int_eq(post_full(in, crit, &n, &ra), 200);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(fbr_intake_stats(in)->sink_errors, 2);
    assert_incidents(f.incidents, 1, 1, 3);

    /* /v1/events: the same 503 */
    b.cap = b.q.n;
    b.accept_only = 0;
    json_t *ev = parse("{\"event\":\"On-Call\"}");
    struct fbr_intake_reply r;
    fbr_intake_event(in, "Bearer " KEY, ev, &r);
    ck_assert_int_eq(r.status, 503);
    ck_assert_uint_eq(r.retry_after, FBR_INTAKE_RETRY_AFTER_S);
    ck_assert_str_eq(json_string_value(json_object_get(r.body, "result")), "failure");
    ck_assert_uint_eq(fbr_intake_stats(in)->events, 0);
    json_decref(r.body);
    json_decref(ev);

    queue_clear(&b.q);
    fbr_intake_free(&in);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* ---- /v1/events ------------------------------------------------------------------------------ */

static const char events_cfg[] =
    "{\"webhooks\":["
    "{\"event\":\"On-Call\",\"url\":\"http://127.0.0.1/on\"},"
    "{\"event\":\"Any-On-Call\",\"url\":\"http://127.0.0.1/anyoncall\"},"
    "{\"event\":\"Paging-Stop\",\"url\":\"http://127.0.0.1/pstop\"},"
    "{\"event\":\"Any-Paging\",\"url\":\"http://127.0.0.1/anypaging\"},"
    "{\"event\":\"Incident-Chats\",\"url\":\"http://127.0.0.1/ichat\"},"
    "{\"event\":\"All-Chats\",\"url\":\"http://127.0.0.1/chat/${{CHAT.USER_ID}}\","
    "\"payload\":{\"text\":\"${{CHAT.TEXT}}\"}}]}";

static const struct {
    const char *auth;
    const char *body;
    int status;
    size_t deliveries;
    const char *message;
} event_cases[] = {
    {NULL, "{\"event\":\"On-Call\"}", 401, 0, "Unauthorized"},
    {"Bearer wrong", "{\"event\":\"On-Call\"}", 401, 0, "Unauthorized"},
    {"Basic " KEY, "{\"event\":\"On-Call\"}", 401, 0, "Unauthorized"},
    {"Bearer " KEY, NULL, 400, 0, "Invalid JSON body"},
    {"Bearer " KEY, "{\"ONCALL\":{}}", 400, 0, "Missing fields: event"},
    {"Bearer " KEY, "{\"event\":\"Lunch-Break\"}", 400, 0,
     "Invalid field: event must be one of the 12 platform events or Any-Alert"},
    {"Bearer " KEY, "{\"event\":\"On-Call\",\"ONCALL\":3}", 400, 0,
     "Invalid body: namespace ONCALL must be a JSON object"},
    {"Bearer " KEY, "{\"event\":\"On-Call\",\"ONCALL\":{\"USER_ID\":\"amy\"}}", 200, 2, NULL},
    {"bearer " KEY, "{\"event\":\"Off-Call\",\"ONCALL\":{\"USER_ID\":\"amy\"}}", 200, 1, NULL},
    {"Bearer " KEY, "{\"event\":\"Any-On-Call\"}", 200, 1, NULL},
    {"Bearer " KEY, "{\"event\":\"Paging-Stop\",\"PAGE\":{\"USER_ID\":\"amy\"}}", 200, 2, NULL},
    {"Bearer " KEY, "{\"event\":\"Paging-Start\",\"PAGE\":{\"USER_ID\":\"amy\"}}", 200, 1, NULL},
    {"Bearer " KEY, "{\"event\":\"Incident-Chats\",\"CHAT\":{\"USER_ID\":\"amy\",\"TEXT\":\"hi\"}}",
     200, 2, NULL},
    {"Bearer " KEY, "{\"event\":\"All-Chats\",\"CHAT\":{\"USER_ID\":\"amy\",\"TEXT\":\"a\\\"b\"}}",
     200, 1, NULL},
    {"Bearer " KEY, "{\"event\":\"All-Chats\",\"CHAT\":{\"TEXT\":\"no user\"}}", 200, 0, NULL},
};

START_TEST(timeline_event)
{
    struct fixture f;
    json_t *cfg = parse(events_cfg);
    fixture_init(&f, cfg);
    json_t *body = event_cases[_i].body ? parse(event_cases[_i].body) : NULL;
    struct fbr_intake_reply r;
    fbr_intake_event(f.intake, event_cases[_i].auth, body, &r);
    ck_assert_int_eq(r.status, event_cases[_i].status);
    ck_assert_uint_eq(r.deliveries, event_cases[_i].deliveries);
    ck_assert_uint_eq(f.q.n, event_cases[_i].deliveries);
    if (event_cases[_i].message)
        ck_assert_str_eq(json_string_value(json_object_get(r.body, "message")),
                         event_cases[_i].message);
    if (_i == 13) {
        char *url = flat(&f.q.v[0]->url), *b = flat(&f.q.v[0]->body);
        ck_assert_str_eq(url, "http://127.0.0.1/chat/amy");
        ck_assert_str_eq(b, "{\"text\":\"a\\\"b\"}");
        free(url);
        free(b);
    }
    json_decref(r.body);
    json_decref(body);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* Unconfirmed CHAT fields (CHAT.ROOM_ID, CHAT.IS_ONCALL): passed through when the event carries
 * them; absent, they render as "" inside a string and null as a bare JSON value. */
START_TEST(chat_unconfirmed_fields)
{
    static const struct {
        const char *body, *want;
    } cases[] = {
        {"{\"event\":\"All-Chats\",\"CHAT\":{\"TEXT\":\"hi\",\"ROOM_ID\":\"r1\","
         "\"IS_ONCALL\":true}}",
         "{\"room\":\"r1\",\"oncall\":true,\"text\":\"hi\"}"},
        {"{\"event\":\"All-Chats\",\"CHAT\":{\"TEXT\":\"hi\"}}",
         "{\"room\":\"\",\"oncall\":null,\"text\":\"hi\"}"},
    };
    json_t *cfg = parse("{\"webhooks\":[{\"event\":\"All-Chats\",\"url\":\"http://127.0.0.1/c\","
                        "\"payload\":\"{\\\"room\\\":\\\"${{CHAT.ROOM_ID}}\\\","
                        "\\\"oncall\\\":${{CHAT.IS_ONCALL}},\\\"text\\\":\\\"${{CHAT.TEXT}}\\\"}\"}]}");
    for (size_t i = 0; i < FBR_ARRAY_LEN(cases); i++) {
        struct fixture f;
        fixture_init(&f, cfg);
        json_t *body = parse(cases[i].body);
        struct fbr_intake_reply r;
        fbr_intake_event(f.intake, "Bearer " KEY, body, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_uint_eq(f.q.n, 1);
        char *b = flat(&f.q.v[0]->body);
        ck_assert_str_eq(b, cases[i].want);
        free(b);
        json_decref(r.body);
        json_decref(body);
        fixture_free(&f);
    }
    json_decref(cfg);
}
END_TEST

/* Bounds on a /v1/events body: each row builds a body at the limit (accepted) and one step over
 * it (400 with the message).  A multi-byte character counts as one. */
static char *repeat(const char *unit, size_t n)
{
    size_t ulen = strlen(unit);
    char *s = fbr_xmalloc(n * ulen + 1);
    for (size_t i = 0; i < n; i++)
        memcpy(s + i * ulen, unit, ulen);
    s[n * ulen] = '\0';
    return s;
}

static json_t *ev_body(const char *ns, json_t *nsv)
{
    json_t *b = json_pack("{s:s}", "event", "Any-On-Call");
    json_object_set_new(b, ns, nsv);
    return b;
}

static json_t *b_oncall_field(int over)
{
    char *v = repeat("x", FBR_EVENTS_FIELD_MAX + (size_t)over);
    json_t *b = ev_body("ONCALL", json_pack("{s:s}", "USER_ID", v));
    free(v);
    return b;
}

static json_t *b_chat_text(int over)
{
    char *v = repeat("\xc3\xa9", FBR_EVENTS_CHAT_TEXT_MAX + (size_t)over);
    json_t *b = ev_body("CHAT", json_pack("{s:s,s:s}", "USER_ID", "amy", "TEXT", v));
    free(v);
    return b;
}

static json_t *b_chat_other(int over)
{
    char *v = repeat("x", FBR_EVENTS_FIELD_MAX + (size_t)over);
    json_t *b = ev_body("CHAT", json_pack("{s:s,s:s}", "TEXT", "hi", "USER_ID", v));
    free(v);
    return b;
}

static json_t *b_nested_string(int over)
{
    char *v = repeat("x", FBR_EVENTS_FIELD_MAX + (size_t)over);
    json_t *b = ev_body("ALERT", json_pack("{s:{s:[i,s,s]}}", "a", "b", 1, "s", v));
    free(v);
    return b;
}

static json_t *b_long_key(int over)
{
    char *k = repeat("k", FBR_EVENTS_FIELD_MAX + (size_t)over);
    json_t *ns = json_object();
    json_object_set_new(ns, k, json_string("v"));
    free(k);
    return ev_body("PAGE", ns);
}

/* The deepest container at depth FBR_EVENTS_MAX_DEPTH (+1): body 1, ALERT 2, then objects. */
static json_t *b_deep_object(int over)
{
    json_t *inner = json_object();
    for (int d = 3; d <= FBR_EVENTS_MAX_DEPTH + over; d++)
        inner = json_pack("{s:o}", "a", inner);
    return ev_body("ALERT", inner);
}

static json_t *b_deep_array(int over)
{
    json_t *inner = json_array();
    for (int d = 4; d <= FBR_EVENTS_MAX_DEPTH + over; d++)
        inner = json_pack("[o]", inner);
    return ev_body("STATE", json_pack("{s:o}", "x", inner));
}

/* FBR_EVENTS_MAX_VALUES (+1) values in all: "event", "INCIDENT" and the namespace's members. */
static json_t *b_many_values(int over)
{
    json_t *ns = json_object();
    for (int i = 0; i < FBR_EVENTS_MAX_VALUES - 2 + over; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        json_object_set_new(ns, k, json_integer(i));
    }
    return ev_body("INCIDENT", ns);
}

static json_t *b_many_elements(int over)
{
    json_t *a = json_array();
    for (int i = 0; i < FBR_EVENTS_MAX_VALUES - 3 + over; i++)
        json_array_append_new(a, json_true());
    return ev_body("INCIDENT", json_pack("{s:o}", "list", a));
}

static json_t *b_ns_not_object(int over)
{
    return ev_body("PAGE", over ? json_pack("[s]", "x") : json_object());
}

static json_t *b_ns_string(int over)
{
    return ev_body("CHAT", over ? json_string("hi") : json_object());
}

static const struct {
    const char *what;
    json_t *(*build)(int over);
    const char *prefix, *suffix; /* of the 400 message */
} event_bounds[] = {
    {"oncall field", b_oncall_field, "Field too long: ONCALL.USER_ID exceeds 1024 characters",
     ""},
    {"chat text", b_chat_text, "Field too long: CHAT.TEXT exceeds 20480 characters", ""},
    {"other chat field", b_chat_other, "Field too long: CHAT.USER_ID exceeds 1024 characters",
     ""},
    {"nested string", b_nested_string, "Field too long: ALERT.a.b[2] exceeds 1024 characters",
     ""},
    {"long key", b_long_key, "Invalid body: key PAGE.kkkk", "k exceeds 1024 characters"},
    {"deep objects", b_deep_object,
     "Invalid body: ALERT.a.a.a.a.a.a.a nests deeper than 8 levels", ""},
    {"deep arrays", b_deep_array,
     "Invalid body: STATE.x[0][0][0][0][0][0] nests deeper than 8 levels", ""},
    {"many keys", b_many_values, "Invalid body: more than 1000 keys and values", ""},
    {"many elements", b_many_elements, "Invalid body: more than 1000 keys and values", ""},
    {"namespace array", b_ns_not_object, "Invalid body: namespace PAGE must be a JSON object", ""},
    {"namespace string", b_ns_string, "Invalid body: namespace CHAT must be a JSON object", ""},
};

START_TEST(timeline_event_bounds)
{
    struct fixture f;
    json_t *cfg = parse(events_cfg);
    fixture_init(&f, cfg);
    for (int over = 0; over <= 1; over++) {
        json_t *body = event_bounds[_i].build(over);
        struct fbr_intake_reply r;
        fbr_intake_event(f.intake, "Bearer " KEY, body, &r);
        ck_assert_ptr_nonnull(r.body);
        const char *msg = json_string_value(json_object_get(r.body, "message"));
        ck_assert_msg(r.status == (over ? 400 : 200), "%s over=%d: %d %s", event_bounds[_i].what,
                      over, r.status, msg ? msg : "");
        if (over) {
            ck_assert_str_eq(json_string_value(json_object_get(r.body, "result")), "failure");
            size_t pl = strlen(event_bounds[_i].prefix), sl = strlen(event_bounds[_i].suffix);
            ck_assert_msg(msg && strncmp(msg, event_bounds[_i].prefix, pl) == 0 &&
                              strlen(msg) >= pl + sl &&
                              strcmp(msg + strlen(msg) - sl, event_bounds[_i].suffix) == 0,
                          "%s: \"%s\"", event_bounds[_i].what, msg ? msg : "(none)");
            ck_assert_uint_eq(r.deliveries, 0);
        }
        json_decref(r.body);
        json_decref(body);
    }
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->rejected, 1);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->events, 1);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* A long key cut for the 400 message must stay valid UTF-8 (or jansson refuses the reply). */
START_TEST(long_key_messages_stay_utf8)
{
    struct fixture f;
    json_t *cfg = parse(events_cfg);
    fixture_init(&f, cfg);
    for (size_t shift = 0; shift < 3; shift++) {
        char *k = repeat("\xe2\x82\xac", 1100); /* euro sign, 3 bytes */
        char *key = fbr_xmalloc(strlen(k) + 4);
        snprintf(key, strlen(k) + 4, "%.*s%s", (int)shift, "ab", k);
        json_t *ns = json_object();
        json_object_set_new(ns, key, json_string("v"));
        json_t *body = ev_body("ALERT", ns);
        struct fbr_intake_reply r;
        fbr_intake_event(f.intake, "Bearer " KEY, body, &r);
        ck_assert_int_eq(r.status, 400);
        ck_assert_ptr_nonnull(r.body);
        json_decref(r.body);
        json_decref(body);
        /* the alert endpoint: a long top-level string under a long multi-byte key */
        json_t *a = json_pack("{s:s}", "message_type", "INFO");
        char *v = repeat("x", FBR_INTAKE_FIELD_MAX + 1);
        json_object_set_new(a, key, json_string(v));
        fbr_intake_alert(f.intake, fbr_slice_from(ALERT_PATH("ops")), a, &r);
        ck_assert_int_eq(r.status, 400);
        ck_assert_ptr_nonnull(r.body);
        json_decref(r.body);
        json_decref(a);
        free(v);
        free(key);
        free(k);
    }
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* ---- HTTP glue on a real loopback server -------------------------------------------------------- */

struct client {
    int port;
    char replies[4][512];
    atomic_int done;
};

static void http_post(int port, const char *path, const char *extra, const char *body, char *out,
                      size_t outlen)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    out[0] = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return;
    }
    char req[2048];
    int n = snprintf(req, sizeof(req),
                     "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     path, extra, strlen(body), body);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return;
    }
    size_t got = 0;
    ssize_t r;
    while (got + 1 < outlen && (r = read(fd, out + got, outlen - 1 - got)) > 0)
        got += (size_t)r;
    out[got] = 0;
    close(fd);
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    http_post(c->port, ALERT_PATH("devops"), "", "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e\"}",
              c->replies[0], sizeof(c->replies[0]));
    http_post(c->port, FBR_INTAKE_ALERT_PREFIX "bad/devops", "", "not json", c->replies[1],
              sizeof(c->replies[1]));
    http_post(c->port, ALERT_PATH("devops"), "", "{}", c->replies[2], sizeof(c->replies[2]));
    http_post(c->port, FBR_INTAKE_EVENTS_PATH, "Authorization: Bearer " KEY "\r\n",
              "{\"event\":\"On-Call\"}", c->replies[3], sizeof(c->replies[3]));
    atomic_store(&c->done, 1);
    return NULL;
}

/* A periodic no-op so that each EVLOOP_ONCE iteration returns and the client flag is seen. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

START_TEST(http_glue)
{
    struct fixture f;
    json_t *cfg = parse("{\"webhooks\":[{\"event\":\"Incident-Triggered\","
                        "\"url\":\"http://127.0.0.1/t\"},"
                        "{\"event\":\"On-Call\",\"url\":\"http://127.0.0.1/o\"}]}");
    fixture_init(&f, cfg);
    struct event_base *base = event_base_new();
    struct fbr_server_opts so = {.max_body = 65536};
    struct fbr_server *srv = fbr_server_new(base, &so);
    ck_assert_int_eq(fbr_server_listen(srv, "127.0.0.1:0"), FBR_OK);
    fbr_intake_register(f.intake, srv);
    struct client c = {.port = fbr_server_port(srv)};
    ck_assert_int_gt(c.port, 0);
    pthread_t th;
    pthread_create(&th, NULL, client_main, &c);
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 5000};
    event_add(tick, &tv);
    uint64_t deadline = fbr_now_ms() + 20000;
    while (!atomic_load(&c.done) && fbr_now_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    pthread_join(th, NULL);
    event_free(tick);
    ck_assert_msg(strstr(c.replies[0], " 200 ") && strstr(c.replies[0], "\"entity_id\":\"e\""),
                  "reply 0: %s", c.replies[0]);
    ck_assert_msg(strstr(c.replies[1], " 404 "), "reply 1: %s", c.replies[1]);
    ck_assert_msg(strstr(c.replies[2], " 400 ") &&
                      strstr(c.replies[2], "Missing fields: message_type"),
                  "reply 2: %s", c.replies[2]);
    ck_assert_msg(strstr(c.replies[3], " 200 "), "reply 3: %s", c.replies[3]);
    ck_assert_uint_eq(f.q.n, 2);
    fbr_server_free(&srv);
    event_base_free(base);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

/* A full sink over HTTP: 503 with Retry-After and a JSON body, on both endpoints. */
struct client503 {
    int port;
    char replies[2][1024];
    atomic_int done;
};

static void *client503_main(void *arg)
{
    struct client503 *c = arg;
    http_post(c->port, ALERT_PATH("devops"), "",
              "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e\"}", c->replies[0],
              sizeof(c->replies[0]));
    http_post(c->port, FBR_INTAKE_EVENTS_PATH, "Authorization: Bearer " KEY "\r\n",
              "{\"event\":\"On-Call\"}", c->replies[1], sizeof(c->replies[1]));
    atomic_store(&c->done, 1);
    return NULL;
}

START_TEST(http_503_retry_after)
{
    struct fixture f;
    json_t *cfg = parse(full_cfg);
    fixture_init(&f, cfg);
    struct bounded b = {.cap = 0};
    struct fbr_intake *in = bounded_intake(&f, &b, 1);
    struct event_base *base = event_base_new();
    struct fbr_server_opts so = {.max_body = 65536};
    struct fbr_server *srv = fbr_server_new(base, &so);
    ck_assert_int_eq(fbr_server_listen(srv, "127.0.0.1:0"), FBR_OK);
    fbr_intake_register(in, srv);
    struct client503 c = {.port = fbr_server_port(srv)};
    pthread_t th;
    pthread_create(&th, NULL, client503_main, &c);
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 5000};
    event_add(tick, &tv);
    uint64_t deadline = fbr_now_ms() + 20000;
    while (!atomic_load(&c.done) && fbr_now_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    pthread_join(th, NULL);
    event_free(tick);
    for (size_t i = 0; i < 2; i++) {
        const char *rep = c.replies[i];
        ck_assert_msg(strncmp(rep, "HTTP/1.1 503 ", 13) == 0, "reply %zu: %s", i, rep);
        ck_assert_msg(strcasestr(rep, "\r\nRetry-After: 5\r\n"), "reply %zu: %s", i, rep);
        ck_assert_msg(strcasestr(rep, "\r\nContent-Type: application/json"), "reply %zu: %s", i,
                      rep);
        const char *body = strstr(rep, "\r\n\r\n");
        ck_assert_ptr_nonnull(body);
        json_t *j = json_loads(body + 4, JSON_DISABLE_EOF_CHECK, NULL);
        ck_assert_ptr_nonnull(j);
        ck_assert_str_eq(json_string_value(json_object_get(j, "result")), "failure");
        json_decref(j);
    }
    assert_incidents(f.incidents, 0, 0, 1);
    fbr_server_free(&srv);
    event_base_free(base);
    fbr_intake_free(&in);
    json_decref(cfg);
    fixture_free(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("intake");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, intake_error, 0, FBR_ARRAY_LEN(errors));
    tcase_add_loop_test(tc, field_limit, 0, FBR_ARRAY_LEN(limits));
    tcase_add_test(tc, nested_field_limit);
    tcase_add_test(tc, routing_key_length);
    tcase_add_test(tc, stamped_fields);
    tcase_add_test(tc, stamps_as_specified);
    tcase_add_test(tc, routing_keys_in_turn);
    tcase_add_test(tc, rules_rewrite_only_their_alert);
    tcase_add_test(tc, fmt_helpers);
    tcase_add_test(tc, seed_multi_room);
    tcase_add_test(tc, incident_events);
    tcase_add_test(tc, namespaces_built_only_when_read);
    tcase_add_test(tc, unsafe_render_and_refusing_sink);
    tcase_add_test(tc, sink_full_with_room);
    tcase_add_test(tc, sink_full_without_room);
    tcase_add_loop_test(tc, timeline_event, 0, FBR_ARRAY_LEN(event_cases));
    tcase_add_loop_test(tc, timeline_event_bounds, 0, FBR_ARRAY_LEN(event_bounds));
    tcase_add_test(tc, long_key_messages_stay_utf8);
    tcase_add_test(tc, chat_unconfirmed_fields);
    tcase_add_test(tc, http_glue);
    tcase_add_test(tc, http_503_retry_after);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
