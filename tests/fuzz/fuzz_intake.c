/*
 * fuzz_intake.c - libFuzzer target for the head of the data path (intake.c with rules.c,
 * incidents.c, events.c, webhook.c and template.c behind it): arbitrary bytes are posted as an
 * alert body on one of several paths, or as a /v1/events body, against the seed's Multi-Room
 * configuration plus a regex rule and a few more webhooks, into a sink that accepts or refuses.
 * It checks the promises of intake.h: every request gets exactly one status from the documented
 * set and a JSON reply of the documented shape, deliveries never exceed the subscribed webhooks,
 * every delivered request has an absolute http(s) URL and single-line headers, and a refused
 * alert leaves the incident table as it was.
 *
 * Input: byte 0 picks the path (low 3 bits) and the sink's behaviour (next 2 bits); the rest is
 * the body.  Path variant 6 takes the path from the input up to the first newline.  Sink mode 3
 * posts twice: into a full sink, then (as a client honouring the 503 would) into an empty one,
 * which must then succeed with at least one delivery.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "firebridge/intake.h"
#include "firebridge/log.h"

#define KEY "fuzz-key"

static const char config_text[] =
    "{\"rules\": ["
    " {\"name\": \"devops alerts go to the devops HipChat room\","
    "  \"when\": {\"field\": \"routing_key\", \"match\": \"wildcard\", \"pattern\": \"devops\"},"
    "  \"set\": {\"room_id\": \"ROOM_ID\", \"auth_token\": \"AUTH_TOKEN_HERE\"}},"
    " {\"name\": \"regex\","
    "  \"when\": [{\"field\": \"entity_id\", \"match\": \"regex\","
    "             \"pattern\": \"(db|web)-([0-9]+)\\\\.(.*)\"},"
    "            {\"field\": \"monitor.tool\", \"pattern\": \"*\"}],"
    "  \"set\": {\"host_name\": \"${{\\\\2}}.${{routing_key}}\", \"room_id\": \"${{\\\\1}}\","
    "           \"entity_display_name\": \"${{entity_display_name}} on ${{\\\\3}}\"},"
    "  \"annotations\": [{\"type\": \"note\", \"title\": \"Tool\","
    "                    \"value\": \"${{monitor.tool}}\"},"
    "                   {\"type\": \"url\", \"title\": \"Runbook\","
    "                    \"value\": \"https://wiki/${{\\\\1}}?h=${{host_name}}\"}]},"
    " {\"name\": \"mute\", \"when\": {\"field\": \"state_message\", \"pattern\": \"*ignore*\"},"
    "  \"set\": {\"message_type\": \"INFO\"}, \"stop\": true}"
    "],"
    "\"webhooks\": ["
    " {\"name\": \"hipchat multi-room: incident triggered\", \"event\": \"Incident-Triggered\","
    "  \"method\": \"POST\", \"content_type\": \"application/json\","
    "  \"url\": \"https://DOMAIN.hipchat.com/v2/room/${{ALERT.room_id}}/notification"
    "?auth_token=${{ALERT.auth_token}}\","
    "  \"payload\": \"{ \\\"color\\\": \\\"red\\\", \\\"message\\\": "
    "\\\"${{ALERT.entity_display_name}}\\\", \\\"notify\\\": true, \\\"message_format\\\": "
    "\\\"text\\\" }\"},"
    " {\"event\": \"Any-Alert\", \"method\": \"PUT\","
    "  \"url\": \"http://127.0.0.1/a/${{ALERT.host_name}}\","
    "  \"headers\": {\"X-Phase\": \"${{STATE.CURRENT_ALERT_PHASE}}\","
    "              \"X-Id\": \"${{ALERT.entity_id}}\"},"
    "  \"payload\": {\"alert\": \"${{ALERT}}\", \"n\": \"${{STATE.ALERT_COUNT}}\"}},"
    " {\"event\": \"Any-Incident\", \"method\": \"GET\","
    "  \"url\": \"http://127.0.0.1/i?n=${{INCIDENT.INCIDENT_NAME}}&k=${{ALERT.routing_key}}\"},"
    " {\"event\": \"All-Chats\", \"url\": \"http://127.0.0.1/chat/${{CHAT.USER_ID}}\","
    "  \"content_type\": \"text/plain\", \"payload\": \"${{CHAT.TEXT}}\"},"
    " {\"event\": \"Any-On-Call\", \"url\": \"http://127.0.0.1/oncall\","
    "  \"payload\": {\"who\": \"${{ONCALL.USER_ID}}\", \"page\": \"${{PAGE}}\"}}"
    "]}";

static struct fbr_rules *rules;
static struct fbr_webhooks webhooks;
static struct fbr_incidents *incidents;
static struct fbr_intake *intake;
static int sink_mode;
static size_t sink_calls;
static uint64_t clock_now = 1700000000000ull;

static uint64_t fuzz_clock(void)
{
    return clock_now += 7919; /* resolved incidents expire as time goes by */
}

static int check_render(const struct fbr_render *r, int url)
{
    char *s = fbr_render_strdup(r);
    size_t n = strlen(s);
    int ok = n == r->total;
    if (url)
        ok &= strncasecmp(s, "http://", 7) == 0 || strncasecmp(s, "https://", 8) == 0;
    else
        ok &= strpbrk(s, "\r\n") == NULL;
    free(s);
    return ok;
}

/* Accepts (mode 0), refuses everything with FBR_LIMIT (1 and 3: the first post of mode 3 is
 * refused, then retried into an accepting sink), or accepts one then refuses (2). */
static int sink_submit(void *arg, struct fbr_outreq *o)
{
    (void)arg;
    sink_calls++;
    if (sink_mode == 1 || sink_mode == 3 || (sink_mode == 2 && sink_calls > 1))
        return FBR_LIMIT;
    if (!check_render(&o->url, 1))
        abort();
    for (size_t i = 0; i < o->nheaders; i++)
        if (!check_render(&o->headers[i], 0))
            abort();
    struct fbr_outreq taken;
    fbr_outreq_move(&taken, o);
    fbr_outreq_free(&taken);
    return FBR_OK;
}

static void setup(void)
{
    fbr_log_setup(FBR_LOG_ERROR, FBR_LOG_TEXT);
    json_error_t e;
    json_t *cfg = json_loads(config_text, 0, &e);
    struct fbr_cfgerr errs = {0};
    if (!cfg || fbr_rules_compile(json_object_get(cfg, "rules"), NULL, &rules, &errs) != FBR_OK ||
        fbr_webhooks_compile(json_object_get(cfg, "webhooks"), &webhooks, &errs) != FBR_OK)
        abort();
    json_decref(cfg);
    struct fbr_incidents_opts io = {.max_incidents = 32, .resolved_ttl_ms = 600000};
    if (fbr_incidents_open(&io, &incidents) != FBR_OK)
        abort();
    static const char *const keys[] = {"other-key", KEY};
    struct fbr_intake_opts o = {.api_keys = keys, .napi_keys = 2, .organization_id = "fuzz-org",
                                .rules = rules, .webhooks = &webhooks, .incidents = incidents,
                                .sink = {sink_submit, NULL}, .clock_ms = fuzz_clock};
    intake = fbr_intake_new(&o);
}

static void check_reply(const struct fbr_intake_reply *r, int events)
{
    if (!r->body || !json_is_object(r->body))
        abort();
    const char *result = json_string_value(json_object_get(r->body, "result"));
    if (!result)
        abort();
    if (r->deliveries > webhooks.n)
        abort();
    switch (r->status) {
    case 200:
        if (strcmp(result, "success") != 0)
            abort();
        if (!events && json_string_length(json_object_get(r->body, "entity_id")) == 0)
            abort();
        if (events && json_integer_value(json_object_get(r->body, "deliveries")) !=
                          (json_int_t)r->deliveries)
            abort();
        break;
    case 400:
    case 401:
    case 404:
    case 503:
        if (strcmp(result, "failure") != 0 || !json_is_string(json_object_get(r->body, "message")))
            abort();
        if (r->deliveries != 0 && r->status != 503)
            abort();
        break;
    default:
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!intake)
        setup();
    static const char *const paths[] = {
        FBR_INTAKE_ALERT_PREFIX KEY "/devops",   FBR_INTAKE_ALERT_PREFIX KEY "/webteam",
        FBR_INTAKE_ALERT_PREFIX KEY,             FBR_INTAKE_ALERT_PREFIX KEY "/",
        FBR_INTAKE_ALERT_PREFIX "nope/devops",   FBR_INTAKE_ALERT_PREFIX KEY "/devops/x",
    };
    unsigned variant = data[0] & 7u;
    sink_mode = (data[0] >> 3) & 3;
    sink_calls = 0;
    const char *body = (const char *)data + 1;
    size_t blen = size - 1;
    struct fbr_slice path = {NULL, 0};
    if (variant < FBR_ARRAY_LEN(paths)) {
        path = fbr_slice_from(paths[variant]);
    } else if (variant == 6) {
        const char *nl = memchr(body, '\n', blen);
        size_t plen = nl ? (size_t)(nl - body) : blen;
        path = (struct fbr_slice){body, plen};
        body += nl ? plen + 1 : plen;
        blen -= nl ? plen + 1 : plen;
    }
    json_t *j = json_loadb(body, blen, JSON_REJECT_DUPLICATES, NULL);
    struct fbr_incidents_stats before, after;
    fbr_incidents_get_stats(incidents, &before);
    struct fbr_intake_reply r;
    if (variant == 7) {
        fbr_intake_event(intake, "Bearer " KEY, j, &r);
        check_reply(&r, 1);
    } else {
        fbr_intake_alert(intake, path, j, &r);
        check_reply(&r, 0);
        fbr_incidents_get_stats(incidents, &after);
        /* anything but a success leaves the incident table alone */
        if (r.status != 200 &&
            (after.count != before.count || after.open != before.open ||
             after.next_number != before.next_number))
            abort();
    }
    if (sink_mode == 3 && r.status == 503) {
        /* the retry: the body parsed afresh (the intake stamps it in place) */
        json_t *again = json_loadb(body, blen, JSON_REJECT_DUPLICATES, NULL);
        struct fbr_intake_reply r2;
        sink_mode = 0;
        sink_calls = 0;
        if (variant == 7)
            fbr_intake_event(intake, "Bearer " KEY, again, &r2);
        else
            fbr_intake_alert(intake, path, again, &r2);
        check_reply(&r2, variant == 7);
        if (r2.status != 200 || r2.deliveries == 0)
            abort();
        json_decref(r2.body);
        json_decref(again);
    }
    json_decref(r.body);
    json_decref(j);
    return 0;
}
