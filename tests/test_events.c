/*
 * test_events.c - event derivation (src/events.c, between the incident table and the templates
 * on the data path) on its own: the platform's event names, which events an alert fires for each
 * incident transition and the event object it renders against, and the events of a posted
 * /v1/events body with their umbrellas and the bounds on what the client controls.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/events.h"
#include "testsupport.h"

#define BIT(e) FBR_EV_BIT(FBR_EV_##e)

START_TEST(event_names)
{
    static const char *const names[] = {
        "Incident-Triggered", "Incident-Acknowledged", "Incident-Resolved", "Any-Incident",
        "Incident-Chats",     "All-Chats",             "On-Call",           "Off-Call",
        "Any-On-Call",        "Paging-Start",          "Paging-Stop",       "Any-Paging",
        "Any-Alert"};
    ck_assert_uint_eq(FBR_EV_COUNT, FBR_ARRAY_LEN(names));
    for (unsigned i = 0; i < FBR_EV_COUNT; i++) {
        enum fbr_event ev;
        ck_assert_str_eq(fbr_event_name((enum fbr_event)i), names[i]);
        ck_assert_int_eq(fbr_event_parse(names[i], strlen(names[i]), &ev), FBR_OK);
        ck_assert_int_eq(ev, i);
    }
    enum fbr_event ev;
    ck_assert_int_eq(fbr_event_parse("Incident", 8, &ev), FBR_NOTFOUND);
}
END_TEST

/* One alert per transition: Any-Alert always, the matching Incident-* with Any-Incident. */
START_TEST(derive_by_transition)
{
    static const struct {
        enum fbr_transition tr;
        uint32_t mask;
    } rows[] = {
        {FBR_TR_NONE, BIT(ANY_ALERT)},
        {FBR_TR_ROLLED, BIT(ANY_ALERT)},
        {FBR_TR_TRIGGERED, BIT(ANY_ALERT) | BIT(INCIDENT_TRIGGERED) | BIT(ANY_INCIDENT)},
        {FBR_TR_ACKED, BIT(ANY_ALERT) | BIT(INCIDENT_ACKNOWLEDGED) | BIT(ANY_INCIDENT)},
        {FBR_TR_RESOLVED, BIT(ANY_ALERT) | BIT(INCIDENT_RESOLVED) | BIT(ANY_INCIDENT)},
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(rows); i++) {
        json_t *alert = json_pack("{s:s}", "entity_id", "disk");
        struct fbr_incident_result res = {.transition = rows[i].tr,
                                          .state = json_pack("{s:s}", "CURRENT_STATE", "X"),
                                          .incident = i ? json_pack("{s:i}", "ALERT_COUNT", 1)
                                                        : NULL};
        struct fbr_event_set set;
        fbr_events_derive(alert, &res, &set);
        ck_assert_msg(set.mask == rows[i].mask, "%s: mask %x", fbr_transition_name(rows[i].tr),
                      set.mask);
        ck_assert_ptr_eq(json_object_get(set.event, "ALERT"), alert); /* a reference, no copy */
        ck_assert_ptr_eq(json_object_get(set.event, "STATE"), res.state);
        ck_assert_ptr_eq(json_object_get(set.event, "INCIDENT"), res.incident);
        fbr_incident_result_clear(&res);
        json_decref(alert);
        ck_assert_int_eq(json_object_size(set.event), i ? 3 : 2); /* no INCIDENT without one */
        fbr_event_set_clear(&set);
        ck_assert_uint_eq(set.mask, 0);
        ck_assert_ptr_null(set.event);
    }
}
END_TEST

/* Each posted event name fires itself and its umbrella; the namespaces given are the object. */
START_TEST(body_event_and_umbrella)
{
    static const struct {
        const char *name;
        uint32_t mask;
    } rows[] = {
        {"On-Call", BIT(ON_CALL) | BIT(ANY_ON_CALL)},
        {"off-call", BIT(OFF_CALL) | BIT(ANY_ON_CALL)},
        {"Any-On-Call", BIT(ANY_ON_CALL)},
        {"Paging-Start", BIT(PAGING_START) | BIT(ANY_PAGING)},
        {"Paging-Stop", BIT(PAGING_STOP) | BIT(ANY_PAGING)},
        {"Incident-Chats", BIT(INCIDENT_CHATS) | BIT(ALL_CHATS)},
        {"All-Chats", BIT(ALL_CHATS)},
        {"Incident-Resolved", BIT(INCIDENT_RESOLVED) | BIT(ANY_INCIDENT)},
        {"Any-Alert", BIT(ANY_ALERT)},
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(rows); i++) {
        json_t *body = json_pack("{s:s,s:{s:s},s:{s:s}}", "event", rows[i].name, "CHAT", "TEXT",
                                 "hi", "ONCALL", "USER", "alice");
        struct fbr_event_set set;
        char err[200] = "";
        ck_assert_int_eq(fbr_events_from_body(body, &set, err, sizeof(err)), FBR_OK);
        ck_assert_msg(set.mask == rows[i].mask, "%s: mask %x", rows[i].name, set.mask);
        ck_assert_int_eq(json_object_size(set.event), 2);
        ck_assert_ptr_eq(json_object_get(set.event, "CHAT"), json_object_get(body, "CHAT"));
        ck_assert_ptr_null(json_object_get(set.event, "event"));
        fbr_event_set_clear(&set);
        json_decref(body);
    }
}
END_TEST

/* A refused body: FBR_INVALID, nothing fired, and the 400 message. */
static const struct {
    const char *json; /* NULL: built by the test (sizes) */
    const char *err;  /* expected prefix */
} bad_bodies[] = {
    {"[]", "Invalid body: expected a JSON object"},
    {"{\"CHAT\":{}}", "Missing fields: event"},
    {"{\"event\":\"Incident\"}", "Invalid field: event must be one of the 12"},
    {"{\"event\":7}", "Invalid field: event must be one of the 12"},
    {"{\"event\":\"On-Call\",\"USER\":{}}", "Invalid body: unknown key"},
    {"{\"event\":\"On-Call\",\"CHAT\":\"hi\"}", "Invalid body: namespace CHAT must be a JSON "
                                                "object"},
    {"{\"event\":\"On-Call\",\"CHAT\":{\"a\":[[[[[[[[1]]]]]]]]}}",
     "Invalid body: CHAT.a[0][0][0][0][0][0] nests deeper than 8 levels"},
};

START_TEST(body_refused)
{
    json_t *body = json_loads(bad_bodies[_i].json, 0, NULL);
    ck_assert_ptr_nonnull(body);
    struct fbr_event_set set = {.mask = 1};
    char err[200] = "";
    ck_assert_int_eq(fbr_events_from_body(body, &set, err, sizeof(err)), FBR_INVALID);
    ck_assert_uint_eq(set.mask, 0);
    ck_assert_ptr_null(set.event);
    ck_assert_msg(strncmp(err, bad_bodies[_i].err, strlen(bad_bodies[_i].err)) == 0, "got %s",
                  err);
    json_decref(body);
}
END_TEST

/* The size bounds, at the limit and one past it: strings (CHAT.TEXT has its own), keys, and the
 * number of values in the whole body. */
START_TEST(body_bounds)
{
    static char s[FBR_EVENTS_CHAT_TEXT_MAX + 2];
    struct fbr_event_set set;
    char err[300];
    struct {
        const char *ns, *key;
        size_t len;
        int ok;
        const char *err;
    } rows[] = {
        {"CHAT", "TEXT", FBR_EVENTS_CHAT_TEXT_MAX, 1, NULL},
        {"CHAT", "TEXT", FBR_EVENTS_CHAT_TEXT_MAX + 1, 0, "Field too long: CHAT.TEXT exceeds 20480"},
        {"ALERT", "TEXT", FBR_EVENTS_FIELD_MAX, 1, NULL},
        {"ALERT", "TEXT", FBR_EVENTS_FIELD_MAX + 1, 0, "Field too long: ALERT.TEXT exceeds 1024"},
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(rows); i++) {
        memset(s, 'x', rows[i].len);
        s[rows[i].len] = '\0';
        json_t *body = json_pack("{s:s,s:{s:s}}", "event", "Incident-Chats", rows[i].ns,
                                 rows[i].key, s);
        int rc = fbr_events_from_body(body, &set, err, sizeof(err));
        ck_assert_int_eq(rc, rows[i].ok ? FBR_OK : FBR_INVALID);
        if (!rows[i].ok)
            ck_assert_msg(strncmp(err, rows[i].err, strlen(rows[i].err)) == 0, "got %s", err);
        fbr_event_set_clear(&set);
        json_decref(body);
    }
    /* characters, not bytes: 1024 two-byte characters pass */
    char *u = malloc(2 * FBR_EVENTS_FIELD_MAX + 1);
    for (size_t i = 0; i < FBR_EVENTS_FIELD_MAX; i++)
        memcpy(u + 2 * i, "\xc3\xa9", 2);
    u[2 * FBR_EVENTS_FIELD_MAX] = '\0';
    json_t *body = json_pack("{s:s,s:{s:s}}", "event", "On-Call", "ONCALL", "NOTE", u);
    ck_assert_int_eq(fbr_events_from_body(body, &set, err, sizeof(err)), FBR_OK);
    fbr_event_set_clear(&set);
    json_decref(body);
    free(u);
    /* a key one character too long */
    memset(s, 'k', FBR_EVENTS_FIELD_MAX + 1);
    s[FBR_EVENTS_FIELD_MAX + 1] = '\0';
    body = json_pack("{s:s,s:{s:s}}", "event", "On-Call", "ONCALL", s, "v");
    ck_assert_int_eq(fbr_events_from_body(body, &set, err, sizeof(err)), FBR_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "exceeds 1024 characters"));
    json_decref(body);
    /* values in the whole body: the limit passes, one more is refused */
    for (int extra = 0; extra < 2; extra++) {
        json_t *arr = json_array();
        /* the event key, the PAGE key and the LIST key count too */
        for (size_t i = 0; i < FBR_EVENTS_MAX_VALUES - 3 + (size_t)extra; i++)
            json_array_append_new(arr, json_integer((json_int_t)i));
        body = json_pack("{s:s,s:{s:o}}", "event", "Paging-Start", "PAGE", "LIST", arr);
        int rc = fbr_events_from_body(body, &set, err, sizeof(err));
        ck_assert_msg(rc == (extra ? FBR_INVALID : FBR_OK), "extra %d: %s", extra, err);
        if (extra)
            ck_assert_ptr_nonnull(strstr(err, "more than 1000 keys and values"));
        fbr_event_set_clear(&set);
        json_decref(body);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("events");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, event_names);
    tcase_add_test(tc, derive_by_transition);
    tcase_add_test(tc, body_event_and_umbrella);
    tcase_add_loop_test(tc, body_refused, 0, FBR_ARRAY_LEN(bad_bodies));
    tcase_add_test(tc, body_bounds);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
