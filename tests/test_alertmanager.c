/*
 * test_alertmanager.c - unit tests for alertmanager.c (the webhook payload's mapping to the
 * platform's alert shape, table-driven; its 400 messages; RFC 3339 times) and for the intake's
 * Alertmanager endpoint on top of it: a group runs through rules, incidents, events and webhook
 * rendering into a queue sink, all or nothing, with Bearer authentication.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/alertmanager.h"
#include "firebridge/intake.h"
#include "testsupport.h"

#define KEY "am-key-1"
#define AM_PATH(rk) FBR_ALERTMANAGER_PREFIX rk

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (!j)
        ck_abort_msg("bad JSON in test: %s: %s", e.text, s);
    return j;
}

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* ---- the mapping, one alert at a time ------------------------------------------------------ */

static const struct {
    const char *what;
    enum fbr_msg_type other; /* the configured type of other severities */
    const char *alert;       /* one element of alerts[] */
    const char *message_type, *entity_id, *display, *state_message; /* NULL: absent */
    long long start;                                                /* 0: absent */
} maps[] = {
    {"critical", FBR_MT_CRITICAL,
     "{\"status\":\"firing\",\"fingerprint\":\"f1\",\"labels\":{\"alertname\":\"DiskFull\","
     "\"severity\":\"critical\"},\"startsAt\":\"2026-11-29T14:00:00Z\"}",
     "CRITICAL", "f1", "DiskFull", NULL, 1795960800},
    {"warning, summary and description", FBR_MT_CRITICAL,
     "{\"status\":\"firing\",\"fingerprint\":\"f2\",\"labels\":{\"alertname\":\"Load\","
     "\"severity\":\"warning\"},\"annotations\":{\"summary\":\"load high on db1\","
     "\"description\":\"5m load 12\"}}",
     "WARNING", "f2", "load high on db1", "5m load 12", 0},
    {"severity case-insensitive", FBR_MT_INFO,
     "{\"status\":\"firing\",\"fingerprint\":\"f3\",\"labels\":{\"severity\":\"Warning\"}}",
     "WARNING", "f3", "f3", NULL, 0},
    {"other severity: configured INFO", FBR_MT_INFO,
     "{\"status\":\"firing\",\"fingerprint\":\"f4\",\"labels\":{\"alertname\":\"A\","
     "\"severity\":\"page\"}}",
     "INFO", "f4", "A", NULL, 0},
    {"no severity: default CRITICAL", FBR_MT_CRITICAL,
     "{\"status\":\"firing\",\"fingerprint\":\"f5\",\"labels\":{\"alertname\":\"A\"}}", "CRITICAL",
     "f5", "A", NULL, 0},
    {"no severity: configured WARNING", FBR_MT_WARNING,
     "{\"status\":\"firing\",\"fingerprint\":\"f6\",\"labels\":{}}", "WARNING", "f6", "f6", NULL,
     0},
    {"resolved, whatever the severity; start from endsAt", FBR_MT_CRITICAL,
     "{\"status\":\"resolved\",\"fingerprint\":\"f7\",\"labels\":{\"alertname\":\"A\","
     "\"severity\":\"critical\"},\"startsAt\":\"2026-11-29T14:00:00Z\","
     "\"endsAt\":\"2026-11-29T15:00:00.5+01:00\"}",
     "RECOVERY", "f7", "A", NULL, 1795960800},
    {"firing with Go's zero endsAt", FBR_MT_CRITICAL,
     "{\"status\":\"firing\",\"fingerprint\":\"f8\",\"labels\":{},"
     "\"startsAt\":\"2026-11-29T14:00:01.123456789Z\",\"endsAt\":\"0001-01-01T00:00:00Z\"}",
     "CRITICAL", "f8", "f8", NULL, 1795960801},
};

START_TEST(map_alert)
{
    char body[2048];
    snprintf(body, sizeof(body),
             "{\"version\":\"4\",\"status\":\"firing\",\"receiver\":\"fb\",\"groupKey\":\"{}:{}\","
             "\"externalURL\":\"http://am:9093\",\"groupLabels\":{},\"commonLabels\":{},"
             "\"commonAnnotations\":{},\"alerts\":[%s]}",
             maps[_i].alert);
    json_t *b = parse(body);
    struct fbr_alertmanager_opts o = {.other_severity = maps[_i].other};
    json_t *out;
    char err[256] = "";
    ck_assert_msg(fbr_alertmanager_map(b, &o, &out, err, sizeof(err)) == FBR_OK, "%s: %s",
                  maps[_i].what, err);
    ck_assert_uint_eq(json_array_size(out), 1);
    json_t *a = json_array_get(out, 0);
    ck_assert_str_eq(str(a, "message_type"), maps[_i].message_type);
    ck_assert_str_eq(str(a, "entity_id"), maps[_i].entity_id);
    ck_assert_str_eq(str(a, "entity_display_name"), maps[_i].display);
    if (maps[_i].state_message)
        ck_assert_str_eq(str(a, "state_message"), maps[_i].state_message);
    else
        ck_assert_ptr_null(json_object_get(a, "state_message"));
    json_t *st = json_object_get(a, "state_start_time");
    if (maps[_i].start)
        ck_assert_int_eq(json_integer_value(st), maps[_i].start);
    else
        ck_assert_ptr_null(st);
    ck_assert_str_eq(str(a, "monitoring_tool"), "alertmanager");
    ck_assert_str_eq(str(a, "externalURL"), "http://am:9093");
    ck_assert_str_eq(str(a, "receiver"), "fb");
    ck_assert_str_eq(str(a, "groupKey"), "{}:{}");
    /* labels and annotations kept whole, as objects */
    json_t *src = json_array_get(json_object_get(b, "alerts"), 0);
    ck_assert(json_equal(json_object_get(a, "labels"), json_object_get(src, "labels")));
    ck_assert(json_is_object(json_object_get(a, "annotations")));
    ck_assert_str_eq(str(a, "status"), str(src, "status"));
    json_decref(out);
    json_decref(b);
}
END_TEST

/* Every alert of a group maps in order; generatorURL and the label values stay as they came. */
START_TEST(map_group_keeps_fields)
{
    json_t *b = parse(
        "{\"alerts\":["
        "{\"status\":\"firing\",\"fingerprint\":\"a\",\"labels\":{\"instance\":\"db1:9100\"},"
        "\"annotations\":{\"runbook\":\"http://wiki/x\"},\"generatorURL\":\"http://prom/g?x=1\"},"
        "{\"status\":\"resolved\",\"fingerprint\":\"b\",\"labels\":{\"instance\":\"db2:9100\"}}]}");
    json_t *out;
    char err[256];
    ck_assert_int_eq(fbr_alertmanager_map(b, NULL, &out, err, sizeof(err)), FBR_OK);
    ck_assert_uint_eq(json_array_size(out), 2);
    json_t *a0 = json_array_get(out, 0), *a1 = json_array_get(out, 1);
    ck_assert_str_eq(str(json_object_get(a0, "labels"), "instance"), "db1:9100");
    ck_assert_str_eq(str(json_object_get(a0, "annotations"), "runbook"), "http://wiki/x");
    ck_assert_str_eq(str(a0, "generatorURL"), "http://prom/g?x=1");
    ck_assert_str_eq(str(a1, "message_type"), "RECOVERY");
    ck_assert_str_eq(str(json_object_get(a1, "labels"), "instance"), "db2:9100");
    ck_assert(json_is_object(json_object_get(a1, "annotations"))); /* {} when absent */
    ck_assert_ptr_null(json_object_get(a1, "externalURL"));
    json_decref(out);
    json_decref(b);
}
END_TEST

/* ---- 400s: every field named ---------------------------------------------------------------- */

#define ONE(alert) "{\"alerts\":[" alert "]}"
#define OK_ALERT "{\"status\":\"firing\",\"fingerprint\":\"f\",\"labels\":{}}"

static char long_text[FBR_INTAKE_STATE_MESSAGE_MAX + 200];

static const struct {
    const char *what;
    const char *body; /* "%s" is replaced by a string of `fill` characters */
    size_t fill;
    const char *message;
} bad[] = {
    {"array body", "[1]", 0, "(body): expected a JSON object"},
    {"version 3", "{\"version\":\"3\",\"alerts\":[" OK_ALERT "]}", 0, "version: expected \"4\""},
    {"no alerts", "{\"status\":\"firing\"}", 0, "alerts: missing"},
    {"alerts not an array", "{\"alerts\":{}}", 0, "alerts: expected an array"},
    {"alerts empty", "{\"alerts\":[]}", 0, "alerts: empty"},
    {"receiver not a string", "{\"receiver\":1,\"alerts\":[" OK_ALERT "]}", 0,
     "receiver: expected a string"},
    {"externalURL too long", "{\"externalURL\":\"%s\",\"alerts\":[" OK_ALERT "]}", 1025,
     "externalURL: longer than 1024 characters"},
    {"commonLabels not an object", "{\"commonLabels\":[],\"alerts\":[" OK_ALERT "]}", 0,
     "commonLabels: expected an object"},
    {"alert not an object", ONE(OK_ALERT ",3"), 0, "alerts[1]: expected an object"},
    {"no status", ONE("{\"fingerprint\":\"f\",\"labels\":{}}"), 0, "alerts[0].status: missing"},
    {"bad status", ONE("{\"status\":\"pending\",\"fingerprint\":\"f\",\"labels\":{}}"), 0,
     "alerts[0].status: expected \"firing\" or \"resolved\""},
    {"no fingerprint", ONE(OK_ALERT ",{\"status\":\"firing\",\"labels\":{}}"), 0,
     "alerts[1].fingerprint: missing"},
    {"empty fingerprint", ONE("{\"status\":\"firing\",\"fingerprint\":\"\",\"labels\":{}}"), 0,
     "alerts[0].fingerprint: expected a non-empty string"},
    {"fingerprint too long", ONE("{\"status\":\"firing\",\"fingerprint\":\"%s\",\"labels\":{}}"),
     513, "alerts[0].fingerprint: longer than 512 characters"},
    {"no labels", ONE("{\"status\":\"firing\",\"fingerprint\":\"f\"}"), 0,
     "alerts[0].labels: missing"},
    {"labels not an object", ONE("{\"status\":\"firing\",\"fingerprint\":\"f\",\"labels\":[]}"), 0,
     "alerts[0].labels: expected an object of strings"},
    {"label not a string",
     ONE("{\"status\":\"firing\",\"fingerprint\":\"f\",\"labels\":{\"severity\":2}}"), 0,
     "alerts[0].labels.severity: expected a string"},
    {"label too long",
     ONE("{\"status\":\"firing\",\"fingerprint\":\"f\",\"labels\":{\"instance\":\"%s\"}}"), 1025,
     "alerts[0].labels.instance: longer than 1024 characters"},
    {"summary too long (it becomes entity_display_name)",
     ONE("{\"status\":\"firing\",\"fingerprint\":\"f\",\"labels\":{},"
         "\"annotations\":{\"summary\":\"%s\"}}"),
     1025, "alerts[0].annotations.summary: longer than 1024 characters"},
    {"description too long (it becomes state_message)",
     ONE("{\"status\":\"firing\",\"fingerprint\":\"f\",\"labels\":{},"
         "\"annotations\":{\"description\":\"%s\"}}"),
     20481, "alerts[0].annotations.description: longer than 20480 characters"},
    {"generatorURL not a string",
     ONE("{\"status\":\"firing\",\"fingerprint\":\"f\",\"labels\":{},\"generatorURL\":[]}"), 0,
     "alerts[0].generatorURL: expected a string"},
    {"startsAt not a time",
     ONE("{\"status\":\"firing\",\"fingerprint\":\"f\",\"labels\":{},\"startsAt\":\"yesterday\"}"),
     0, "alerts[0].startsAt: expected an RFC 3339 time"},
    {"endsAt not a string",
     ONE("{\"status\":\"firing\",\"fingerprint\":\"f\",\"labels\":{},\"endsAt\":5}"), 0,
     "alerts[0].endsAt: expected an RFC 3339 time"},
};

/* Through the endpoint: 400, the message naming the field, nothing processed. */
START_TEST(bad_payload)
{
    memset(long_text, 'x', sizeof(long_text));
    long_text[bad[_i].fill] = '\0';
    const char *t = bad[_i].body, *hole = strstr(t, "%s");
    char *body = malloc(strlen(t) + bad[_i].fill + 1);
    if (hole)
        sprintf(body, "%.*s%s%s", (int)(hole - t), t, long_text, hole + 2);
    else
        strcpy(body, t);
    const char *keys[] = {KEY};
    struct fbr_intake_opts o = {.api_keys = keys, .napi_keys = 1};
    struct fbr_intake *in = fbr_intake_new(&o);
    json_t *b = parse(body);
    struct fbr_intake_reply r;
    fbr_intake_alertmanager(in, FBR_SLICE(AM_PATH("devops")), "Bearer " KEY, b, &r);
    ck_assert_msg(r.status == 400, "%s: %d", bad[_i].what, r.status);
    ck_assert_str_eq(str(r.body, "result"), "failure");
    ck_assert_str_eq(str(r.body, "message"), bad[_i].message);
    ck_assert_uint_eq(fbr_intake_stats(in)->alerts, 0);
    ck_assert_uint_eq(fbr_intake_stats(in)->rejected, 1);
    json_decref(r.body);
    json_decref(b);
    fbr_intake_free(&in);
    free(body);
}
END_TEST

/* Too many alerts, too many labels: bounded. */
START_TEST(group_bounds)
{
    json_t *b = json_pack("{s:[]}", "alerts");
    for (int i = 0; i <= FBR_ALERTMANAGER_MAX_ALERTS; i++)
        json_array_append_new(json_object_get(b, "alerts"), parse(OK_ALERT));
    json_t *out = NULL;
    char err[256];
    ck_assert_int_eq(fbr_alertmanager_map(b, NULL, &out, err, sizeof(err)), FBR_INVALID);
    ck_assert_ptr_null(out);
    ck_assert_str_eq(err, "alerts: more than 1000 (set max_alerts in webhook_configs)");
    json_array_remove(json_object_get(b, "alerts"), 0);
    ck_assert_int_eq(fbr_alertmanager_map(b, NULL, &out, err, sizeof(err)), FBR_OK);
    json_decref(out);
    json_decref(b);

    b = parse(ONE(OK_ALERT));
    json_t *labels = json_object_get(json_array_get(json_object_get(b, "alerts"), 0), "labels");
    for (int i = 0; i <= FBR_ALERTMANAGER_MAX_PAIRS; i++) {
        char k[16];
        snprintf(k, sizeof(k), "l%d", i);
        json_object_set_new(labels, k, json_string("v"));
    }
    ck_assert_int_eq(fbr_alertmanager_map(b, NULL, &out, err, sizeof(err)), FBR_INVALID);
    ck_assert_str_eq(err, "alerts[0].labels: more than 256 members");
    json_decref(b);
}
END_TEST

static const struct {
    const char *s;
    int rc;
    long long secs;
} times[] = {
    {"1970-01-01T00:00:00Z", FBR_OK, 0},
    {"2026-11-29T14:00:00Z", FBR_OK, 1795960800},
    {"2026-11-29T14:00:00.999999999Z", FBR_OK, 1795960800},
    {"2026-11-29t14:00:00z", FBR_OK, 1795960800},
    {"2026-11-29T15:30:00+01:30", FBR_OK, 1795960800},
    {"2026-11-29T12:00:00-02:00", FBR_OK, 1795960800},
    {"0001-01-01T00:00:00Z", FBR_OK, 0},
    {"2026-11-29T14:00:00", FBR_INVALID, 0},
    {"2026-11-29 14:00:00Z", FBR_INVALID, 0},
    {"2026-13-29T14:00:00Z", FBR_INVALID, 0},
    {"2026-11-29T14:00:00.Z", FBR_INVALID, 0},
    {"2026-11-29T14:00:00+0100", FBR_INVALID, 0},
    {"2026-11-29T14:00:00Zjunk", FBR_INVALID, 0},
    {"", FBR_INVALID, 0},
};

START_TEST(rfc3339)
{
    long long secs = -1;
    ck_assert_msg(fbr_alertmanager_time(times[_i].s, &secs) == times[_i].rc, "%s", times[_i].s);
    ck_assert_int_eq(secs, times[_i].secs);
}
END_TEST

/* ---- the endpoint on the intake: a queue sink with a room ------------------------------------ */

struct queue {
    struct fbr_outreq *v[64];
    size_t n, cap;
};

static int queue_submit(void *arg, struct fbr_outreq *o)
{
    struct queue *q = arg;
    if (q->n >= q->cap)
        return FBR_LIMIT;
    q->v[q->n] = fbr_xmalloc(sizeof(struct fbr_outreq));
    fbr_outreq_move(q->v[q->n++], o);
    return FBR_OK;
}

static size_t queue_room(void *arg)
{
    struct queue *q = arg;
    return q->cap > q->n ? q->cap - q->n : 0;
}

static void queue_clear(struct queue *q)
{
    for (size_t i = 0; i < q->n; i++) {
        fbr_outreq_free(q->v[i]);
        free(q->v[i]);
    }
    q->n = 0;
}

static char *queued_body(struct queue *q, size_t i)
{
    return fbr_render_strdup(&q->v[i]->body);
}

/* A rule routes the devops key to a room; one webhook per incident event; ALERT.labels.* in
 * the rule's value and in the payload. */
static const char *cfg_text =
    "{\"rules\":[{\"when\":{\"field\":\"routing_key\",\"pattern\":\"devops\"},"
    "\"set\":{\"room_id\":\"r-${{labels.team}}\"}}],"
    "\"webhooks\":["
    "{\"name\":\"t\",\"event\":\"Incident-Triggered\",\"content_type\":\"text/plain\","
    "\"url\":\"http://127.0.0.1:9/v2/room/${{ALERT.room_id}}/notification\","
    "\"payload\":\"T ${{ALERT.labels.instance}} ${{ALERT.entity_display_name}} "
    "${{ALERT.message_type}} ${{INCIDENT.INCIDENT_NAME}}\"},"
    "{\"name\":\"r\",\"event\":\"Incident-Resolved\",\"content_type\":\"text/plain\","
    "\"url\":\"http://127.0.0.1:9/v2/room/${{ALERT.room_id}}/notification\","
    "\"payload\":\"R ${{ALERT.labels.instance}} ${{ALERT.annotations.summary}}\"}]}";

struct fixture {
    json_t *cfg;
    struct fbr_rules *rules;
    struct fbr_webhooks webhooks;
    struct fbr_incidents *incidents;
    struct fbr_intake *intake;
    struct queue q;
};

static void fixture_init(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    f->cfg = parse(cfg_text);
    struct fbr_cfgerr errs = {0};
    ck_assert_int_eq(fbr_rules_compile(json_object_get(f->cfg, "rules"), NULL, &f->rules, &errs),
                     FBR_OK);
    ck_assert_int_eq(fbr_webhooks_compile(json_object_get(f->cfg, "webhooks"), &f->webhooks, &errs),
                     FBR_OK);
    struct fbr_incidents_opts io = {0};
    ck_assert_int_eq(fbr_incidents_open(&io, &f->incidents), FBR_OK);
    f->q.cap = 64;
    const char *keys[] = {"other", KEY};
    struct fbr_intake_opts o = {.api_keys = keys,
                                .napi_keys = 2,
                                .rules = f->rules,
                                .webhooks = &f->webhooks,
                                .incidents = f->incidents,
                                .sink = {queue_submit, &f->q, queue_room}};
    f->intake = fbr_intake_new(&o);
}

static void fixture_free(struct fixture *f)
{
    queue_clear(&f->q);
    fbr_intake_free(&f->intake);
    fbr_incidents_close(&f->incidents);
    fbr_webhooks_clear(&f->webhooks);
    fbr_rules_free(&f->rules);
    json_decref(f->cfg);
}

/* A group of alerts "fingerprint:status:instance" for the devops key. */
static int post_group(struct fixture *f, const char *authorization, const char *const *alerts,
                      struct fbr_intake_reply *r)
{
    json_t *b =
        json_pack("{s:s,s:s,s:[]}", "version", "4", "externalURL", "http://am:9093", "alerts");
    for (size_t i = 0; alerts[i]; i++) {
        char fp[32], st[16], inst[32];
        ck_assert_int_eq(sscanf(alerts[i], "%31[^:]:%15[^:]:%31s", fp, st, inst), 3);
        json_array_append_new(json_object_get(b, "alerts"),
                              json_pack("{s:s,s:s,s:{s:s,s:s,s:s},s:{s:s}}", "status", st,
                                        "fingerprint", fp, "labels", "alertname", "HostDown",
                                        "instance", inst, "team", "ops", "annotations", "summary",
                                        inst));
    }
    fbr_intake_alertmanager(f->intake, FBR_SLICE(AM_PATH("devops")), authorization, b, r);
    json_decref(b);
    return r->status;
}

static void assert_open(struct fixture *f, size_t open, uint64_t next_number)
{
    struct fbr_incidents_stats st;
    fbr_incidents_get_stats(f->incidents, &st);
    ck_assert_uint_eq(st.open, open);
    ck_assert_uint_eq(st.next_number, next_number);
}

/* A group of 3 gives 3 incidents, the labels reach rules and templates; the resolve of one
 * resolves it (Incident-Resolved, no second trigger); a firing repeat only rolls up. */
START_TEST(group_to_incidents)
{
    struct fixture f;
    fixture_init(&f);
    struct fbr_intake_reply r;
    const char *three[] = {"a:firing:db1", "b:firing:db2", "c:firing:db3", NULL};
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, three, &r), 200);
    ck_assert_int_eq(json_integer_value(json_object_get(r.body, "alerts")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(r.body, "deliveries")), 3);
    json_decref(r.body);
    ck_assert_uint_eq(f.q.n, 3);
    for (size_t i = 0; i < 3; i++) {
        char *b = queued_body(&f.q, i), want[64], *url = fbr_render_strdup(&f.q.v[i]->url);
        snprintf(want, sizeof(want), "T db%zu db%zu CRITICAL #%zu", i + 1, i + 1, i + 1);
        ck_assert_str_eq(b, want);
        ck_assert_str_eq(url, "http://127.0.0.1:9/v2/room/r-ops/notification");
        free(b);
        free(url);
    }
    assert_open(&f, 3, 4);
    queue_clear(&f.q);

    const char *again[] = {"a:firing:db1", "b:resolved:db2", NULL};
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, again, &r), 200);
    json_decref(r.body);
    ck_assert_uint_eq(f.q.n, 1); /* no second trigger for a, one resolve for b */
    char *b = queued_body(&f.q, 0);
    ck_assert_str_eq(b, "R db2 db2");
    free(b);
    assert_open(&f, 2, 4);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->alerts, 5);
    fixture_free(&f);
}
END_TEST

/* All or nothing: a group needing more deliveries than the sink's room gets 503 with
 * Retry-After and changes nothing; its retry is handled as the first post. */
START_TEST(group_all_or_nothing)
{
    struct fixture f;
    fixture_init(&f);
    f.q.cap = 2;
    struct fbr_intake_reply r;
    const char *three[] = {"a:firing:db1", "b:firing:db2", "c:firing:db3", NULL};
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, three, &r), 503);
    ck_assert_uint_eq(r.retry_after, FBR_INTAKE_RETRY_AFTER_S);
    ck_assert_str_eq(str(r.body, "result"), "failure");
    json_decref(r.body);
    ck_assert_uint_eq(f.q.n, 0);
    assert_open(&f, 0, 1);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->unavailable, 1);
    ck_assert_uint_eq(fbr_intake_stats(f.intake)->alerts, 0);

    f.q.cap = 3;
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, three, &r), 200);
    json_decref(r.body);
    ck_assert_uint_eq(f.q.n, 3);
    assert_open(&f, 3, 4);

    /* resolves need one delivery each; a firing alert that only rolls up needs none */
    queue_clear(&f.q);
    f.q.cap = 1;
    const char *mixed[] = {"a:firing:db1", "b:resolved:db2", "c:resolved:db3", NULL};
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, mixed, &r), 503);
    json_decref(r.body);
    assert_open(&f, 3, 4);
    f.q.cap = 2;
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, mixed, &r), 200);
    json_decref(r.body);
    assert_open(&f, 1, 4);
    fixture_free(&f);
}
END_TEST

/* An observer that queues one request of its own per accepted set, after the fact, as the
 * HipChat add-on does for an installed routing key. */
static void observer_posts(void *arg, const struct fbr_event_set *set)
{
    (void)set;
    struct fixture *f = arg;
    struct fbr_outreq o;
    fbr_outreq_init(&o);
    fbr_render_set_copy(&o.url, "http://127.0.0.1:9/x", 20);
    ck_assert_int_eq(queue_submit(&f->q, &o), FBR_OK); /* room was promised */
    fbr_outreq_free(&o);
}

static size_t observer_need_one(void *arg, const struct fbr_event_set *set)
{
    (void)arg, (void)set;
    return 1;
}

/* The observer's posts count in the group's room check: a 503 changes nothing, and once there
 * is room for the webhooks and the observer's posts every one of them is queued. */
START_TEST(group_counts_the_observer)
{
    struct fixture f;
    fixture_init(&f);
    fbr_intake_set_observer(f.intake, observer_posts, observer_need_one, &f);
    struct fbr_intake_reply r;
    const char *three[] = {"a:firing:db1", "b:firing:db2", "c:firing:db3", NULL};
    f.q.cap = 5; /* 3 webhooks fit, 3 + 3 do not */
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, three, &r), 503);
    json_decref(r.body);
    ck_assert_uint_eq(f.q.n, 0);
    assert_open(&f, 0, 1);
    f.q.cap = 6;
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, three, &r), 200);
    json_decref(r.body);
    ck_assert_uint_eq(f.q.n, 6);
    assert_open(&f, 3, 4);
    fbr_intake_set_observer(f.intake, NULL, NULL, NULL);
    fixture_free(&f);
}
END_TEST

/* One incident named twice in a group: the second depends on the first, so the room check
 * counts it with every event an alert can fire (here 2 webhooks), and the result is still
 * right: resolved then fired again opens incident #2. */
START_TEST(group_same_incident_twice)
{
    struct fixture f;
    fixture_init(&f);
    struct fbr_intake_reply r;
    const char *one[] = {"a:firing:db1", NULL};
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, one, &r), 200);
    json_decref(r.body);
    queue_clear(&f.q);
    const char *twice[] = {"a:resolved:db1", "a:firing:db1", NULL};
    f.q.cap = 2; /* needs 1 (the resolve) + 2 (bound): refused although 2 would be sent */
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, twice, &r), 503);
    json_decref(r.body);
    ck_assert_uint_eq(f.q.n, 0);
    assert_open(&f, 1, 2);
    f.q.cap = 3;
    ck_assert_int_eq(post_group(&f, "Bearer " KEY, twice, &r), 200);
    json_decref(r.body);
    ck_assert_uint_eq(f.q.n, 2);
    char *b = queued_body(&f.q, 1);
    ck_assert_str_eq(b, "T db1 db1 CRITICAL #2");
    free(b);
    assert_open(&f, 1, 3);
    fixture_free(&f);
}
END_TEST

static const struct {
    const char *what;
    const char *path;
    const char *authorization;
    int status;
} auth[] = {
    {"no Authorization", AM_PATH("devops"), NULL, 401},
    {"wrong key", AM_PATH("devops"), "Bearer nope", 401},
    {"key prefix", AM_PATH("devops"), "Bearer am-key-", 401},
    {"key plus suffix", AM_PATH("devops"), "Bearer am-key-1x", 401},
    {"Basic", AM_PATH("devops"), "Basic YW06a2V5", 401},
    {"second key", AM_PATH("devops"), "Bearer other", 200},
    {"scheme case-insensitive", AM_PATH("devops"), "bearer " KEY, 200},
    {"no routing key", AM_PATH(""), "Bearer " KEY, 404},
    {"extra segment", AM_PATH("devops/x"), "Bearer " KEY, 404},
    {"bad routing key", AM_PATH("dev ops"), "Bearer " KEY, 404},
    {"other prefix", "/v1/alertmanagers/devops", "Bearer " KEY, 404},
};

START_TEST(authorization)
{
    struct fixture f;
    fixture_init(&f);
    json_t *b = parse(ONE(OK_ALERT));
    struct fbr_intake_reply r;
    fbr_intake_alertmanager(f.intake, fbr_slice_from(auth[_i].path), auth[_i].authorization, b, &r);
    ck_assert_msg(r.status == auth[_i].status, "%s: %d", auth[_i].what, r.status);
    json_decref(r.body);
    json_decref(b);
    /* an unparsable body from an authorised sender */
    if (auth[_i].status == 200) {
        fbr_intake_alertmanager(f.intake, fbr_slice_from(auth[_i].path), auth[_i].authorization,
                                NULL, &r);
        ck_assert_int_eq(r.status, 400);
        ck_assert_str_eq(str(r.body, "message"), "Invalid JSON body");
        json_decref(r.body);
    }
    fixture_free(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("alertmanager");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, map_alert, 0, FBR_ARRAY_LEN(maps));
    tcase_add_test(tc, map_group_keeps_fields);
    tcase_add_loop_test(tc, bad_payload, 0, FBR_ARRAY_LEN(bad));
    tcase_add_test(tc, group_bounds);
    tcase_add_loop_test(tc, rfc3339, 0, FBR_ARRAY_LEN(times));
    tcase_add_test(tc, group_to_incidents);
    tcase_add_test(tc, group_all_or_nothing);
    tcase_add_test(tc, group_counts_the_observer);
    tcase_add_test(tc, group_same_incident_twice);
    tcase_add_loop_test(tc, authorization, 0, FBR_ARRAY_LEN(auth));
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
