/*
 * bench/template.c - benchmark of the template engine, the hot path between events and delivery.
 * Renders the seed's Multi-Room URL, the seed payload and a larger payload (14 ALERT and STATE
 * variables) against a realistic ~1 KB alert, and measures in the same run the baselines that
 * produce the same output: building the document as a jansson object and dumping it, snprintf
 * into a buffer (values looked up and escaped per render), and memcpy of the output bytes as the
 * floor.  Heap allocations are counted by interposing malloc/calloc/realloc in this binary.
 * The last lines, one per case, are meant for scripts:
 *   case=<name> ns_per_render=<x> allocs_per_render=<y> vs_jansson=<r>x vs_memcpy=<m>x
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "firebridge/template.h"

/* ---- allocation counting ------------------------------------------------------------------ */

#if defined(__SANITIZE_ADDRESS__)
#define FBR_BENCH_COUNT_ALLOCS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define FBR_BENCH_COUNT_ALLOCS 0
#endif
#endif
#ifndef FBR_BENCH_COUNT_ALLOCS
#define FBR_BENCH_COUNT_ALLOCS 1
#endif

static unsigned long long alloc_count;

#if FBR_BENCH_COUNT_ALLOCS
/* glibc's own entry points; the definitions below replace malloc & co for the whole process
 * (jansson included), which is how the allocations of every contender are counted. */
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);

__attribute__((visibility("default"))) void *malloc(size_t n);
__attribute__((visibility("default"))) void *calloc(size_t n, size_t size);
__attribute__((visibility("default"))) void *realloc(void *p, size_t n);

void *malloc(size_t n)
{
    alloc_count++;
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    alloc_count++;
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    alloc_count++;
    return __libc_realloc(p, n);
}
#endif

/* ---- fixtures ----------------------------------------------------------------------------- */

static const char *event_text =
    "{\"ALERT\": {"
    "\"entity_id\": \"disk-space/db-prod-17.eu-west-1.internal/var-lib-postgresql\","
    "\"entity_display_name\": \"Disk space critical on db-prod-17\","
    "\"state_message\": \"Filesystem /var/lib/postgresql on db-prod-17.eu-west-1.internal is at "
    "97% (482.6 GiB of 497.8 GiB used).\\nGrowth over the last hour: 3.1 GiB; projected full in "
    "4h 52m.\\nTop consumers: base/16384 (401 GiB), pg_wal (61 GiB), log (12 GiB).\\nRunbook: "
    "https://wiki.example.com/runbooks/disk-space#postgres\","
    "\"message_type\": \"CRITICAL\", \"monitoring_tool\": \"prometheus-alertmanager\","
    "\"routing_key\": \"database-oncall\", \"host_name\": \"db-prod-17.eu-west-1.internal\","
    "\"timestamp\": 1700000000, \"state_start_time\": 1699999700,"
    "\"room_id\": \"4812736\", \"auth_token\": \"Xq3fT9vLmZ8pW2rKc7Yh1BnD4sGj6uEa0oRiNt5w\","
    "\"VO_UUID\": \"5f0c8a52-9d1e-4b7a-8c3f-2e6d9b1a7f40\", \"VO_ALERT_RCV_TIME\": "
    "\"1700000000123\", \"VO_ORGANIZATION_ID\": \"example-org\", \"VO_MONITOR_TYPE\": \"API\","
    "\"monitor_data\": {\"id\": \"mon-7731\", \"region\": \"eu-west-1\"},"
    "\"team\": \"storage\", \"severity\": \"P1\", \"service\": \"postgresql\"},"
    "\"STATE\": {\"INCIDENT_NAME\": \"10342\", \"CURRENT_ALERT_PHASE\": \"UNACKED\","
    "\"CURRENT_STATE\": \"CRITICAL\", \"ALERT_COUNT\": 3, \"ACK_USER\": \"SYSTEM\","
    "\"ACK_MSG\": \"\", \"ACK_TIMESTAMP\": 0, \"ENTITY_ID\": \"disk-space/db-prod-17\","
    "\"HOST\": \"db-prod-17\", \"SERVICE\": \"postgresql\", \"STATE_START_TIME\": 1699999700000,"
    "\"INCIDENT_TIMESTAMP\": 1700000000456, \"LAST_UUID\": \"5f0c8a52-9d1e-4b7a-8c3f-2e6d9b1a7f40\""
    "}}";

static const char *seed_url = "https://DOMAIN.hipchat.com/v2/room/${{ALERT.room_id}}/notification"
                              "?auth_token=${{ALERT.auth_token}}";
static const char *seed_payload = "{ \"color\": \"red\", \"message\": "
                                  "\"${{ALERT.entity_display_name}}\", \"notify\": true, "
                                  "\"message_format\": \"text\" }";
/* Written in jansson's default dump layout so that its baseline yields identical bytes. */
static const char *large_payload =
    "{\"title\": \"${{ALERT.entity_display_name}}\", \"entity\": \"${{ALERT.entity_id}}\", "
    "\"host\": \"${{ALERT.host_name}}\", \"tool\": \"${{ALERT.monitoring_tool}}\", "
    "\"type\": \"${{ALERT.message_type}}\", \"routing\": \"${{ALERT.routing_key}}\", "
    "\"details\": \"${{ALERT.state_message}}\", \"uuid\": \"${{ALERT.VO_UUID}}\", "
    "\"monitor\": \"${{ALERT.monitor_data.id}}\", \"incident\": \"${{STATE.INCIDENT_NAME}}\", "
    "\"phase\": \"${{STATE.CURRENT_ALERT_PHASE}}\", \"state\": \"${{STATE.CURRENT_STATE}}\", "
    "\"count\": ${{STATE.ALERT_COUNT}}, \"ack_user\": \"${{STATE.ACK_USER}}\"}";

static json_t *event;

static const char *get_str(const char *ns, const char *field)
{
    return json_string_value(json_object_get(json_object_get(event, ns), field));
}

/* ---- baselines ---------------------------------------------------------------------------- */

/* JSON string escaping as a hand-written baseline would do it (values here are valid UTF-8). */
static size_t naive_json_escape(char *d, const char *s)
{
    char *d0 = d;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            *d++ = '\\';
            *d++ = (char)c;
        } else if (c == '\n') {
            *d++ = '\\';
            *d++ = 'n';
        } else if (c < 0x20) {
            d += sprintf(d, "\\u%04x", c);
        } else {
            *d++ = (char)c;
        }
    }
    *d = '\0';
    return (size_t)(d - d0);
}

static size_t naive_pct(char *d, const char *s)
{
    char *d0 = d;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~')
            *d++ = (char)c;
        else
            d += sprintf(d, "%%%02X", c);
    }
    *d = '\0';
    return (size_t)(d - d0);
}

static char out_buf[8192];
static size_t out_len;

static void snprintf_seed_url(void)
{
    char room[256], tok[256];
    naive_pct(room, get_str("ALERT", "room_id"));
    naive_pct(tok, get_str("ALERT", "auth_token"));
    out_len = (size_t)snprintf(out_buf, sizeof(out_buf),
                               "https://DOMAIN.hipchat.com/v2/room/%s/notification?auth_token=%s",
                               room, tok);
}

static void snprintf_seed_payload(void)
{
    char msg[2048];
    naive_json_escape(msg, get_str("ALERT", "entity_display_name"));
    out_len = (size_t)snprintf(out_buf, sizeof(out_buf),
                               "{ \"color\": \"red\", \"message\": \"%s\", \"notify\": true, "
                               "\"message_format\": \"text\" }",
                               msg);
}

static const struct {
    const char *key, *ns, *field;
} large_fields[] = {
    {"title", "ALERT", "entity_display_name"}, {"entity", "ALERT", "entity_id"},
    {"host", "ALERT", "host_name"},            {"tool", "ALERT", "monitoring_tool"},
    {"type", "ALERT", "message_type"},         {"routing", "ALERT", "routing_key"},
    {"details", "ALERT", "state_message"},     {"uuid", "ALERT", "VO_UUID"},
    {"monitor", "ALERT", NULL},                {"incident", "STATE", "INCIDENT_NAME"},
    {"phase", "STATE", "CURRENT_ALERT_PHASE"}, {"state", "STATE", "CURRENT_STATE"},
    {"count", "STATE", "ALERT_COUNT"},         {"ack_user", "STATE", "ACK_USER"},
};

static const char *large_value(size_t i)
{
    if (!large_fields[i].field) /* the nested ALERT.monitor_data.id */
        return json_string_value(
            json_object_get(json_object_get(json_object_get(event, "ALERT"), "monitor_data"),
                            "id"));
    return get_str(large_fields[i].ns, large_fields[i].field);
}

static void snprintf_large_payload(void)
{
    char esc[FBR_ARRAY_LEN(large_fields)][1024];
    for (size_t i = 0; i < FBR_ARRAY_LEN(large_fields); i++)
        if (i != 12)
            naive_json_escape(esc[i], large_value(i));
    long long count = (long long)json_integer_value(
        json_object_get(json_object_get(event, "STATE"), "ALERT_COUNT"));
    out_len = (size_t)snprintf(
        out_buf, sizeof(out_buf),
        "{\"title\": \"%s\", \"entity\": \"%s\", \"host\": \"%s\", \"tool\": \"%s\", "
        "\"type\": \"%s\", \"routing\": \"%s\", \"details\": \"%s\", \"uuid\": \"%s\", "
        "\"monitor\": \"%s\", \"incident\": \"%s\", \"phase\": \"%s\", \"state\": \"%s\", "
        "\"count\": %lld, \"ack_user\": \"%s\"}",
        esc[0], esc[1], esc[2], esc[3], esc[4], esc[5], esc[6], esc[7], esc[8], esc[9], esc[10],
        esc[11], count, esc[13]);
}

static char *jansson_out;

static void jansson_done(char *s)
{
    out_len = strlen(s);
    memcpy(out_buf, s, out_len < sizeof(out_buf) ? out_len : sizeof(out_buf));
    free(jansson_out);
    jansson_out = s;
}

/* The URL is not JSON: the jansson baseline builds it as a jansson string (json_sprintf). */
static void jansson_seed_url(void)
{
    char room[256], tok[256];
    naive_pct(room, get_str("ALERT", "room_id"));
    naive_pct(tok, get_str("ALERT", "auth_token"));
    json_t *s = json_sprintf("https://DOMAIN.hipchat.com/v2/room/%s/notification?auth_token=%s",
                             room, tok);
    jansson_done(strdup(json_string_value(s)));
    json_decref(s);
}

static void jansson_seed_payload(void)
{
    json_t *o = json_object();
    json_object_set_new(o, "color", json_string("red"));
    json_object_set_new(o, "message", json_string(get_str("ALERT", "entity_display_name")));
    json_object_set_new(o, "notify", json_true());
    json_object_set_new(o, "message_format", json_string("text"));
    jansson_done(json_dumps(o, 0));
    json_decref(o);
}

static void jansson_large_payload(void)
{
    json_t *o = json_object();
    for (size_t i = 0; i < FBR_ARRAY_LEN(large_fields); i++) {
        if (i == 12)
            json_object_set(o, "count", json_object_get(json_object_get(event, "STATE"),
                                                        "ALERT_COUNT"));
        else
            json_object_set_new(o, large_fields[i].key, json_string(large_value(i)));
    }
    jansson_done(json_dumps(o, 0));
    json_decref(o);
}

/* ---- engine ------------------------------------------------------------------------------- */

static struct fbr_tpl *cur_tpl;
static struct fbr_render cur_render;
static struct fbr_tpl_scope cur_scope;

static void engine_render(void)
{
    fbr_render_reset(&cur_render);
    if (fbr_tpl_render(cur_tpl, &cur_scope, &cur_render) != FBR_OK)
        abort();
}

static char flat[8192], floor_dst[8192];
static size_t flat_len;

static void floor_memcpy(void)
{
    memcpy(floor_dst, flat, flat_len);
    __asm__ volatile("" : : "r"(floor_dst) : "memory");
}

/* ---- measurement -------------------------------------------------------------------------- */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

struct result {
    double ns;
    double allocs;
    unsigned long iters;
};

/* Iterations that take about target_ns. */
static unsigned long calibrate(void (*fn)(void), double target_ns)
{
    unsigned long iters = 1;
    for (;;) {
        double t0 = now_ns();
        for (unsigned long i = 0; i < iters; i++)
            fn();
        double dt = now_ns() - t0;
        if (dt > target_ns / 4 || iters > (1ul << 30))
            return iters * 4;
        iters *= 2;
    }
}

#define ROUNDS 15

/*
 * The contenders run interleaved, one timed run each per round, and each keeps its best round:
 * the machine is shared, and interleaving exposes all of them to the same background load.
 */
static void measure(void (*const fns[])(void), struct result *res, int n, double target_ns)
{
    for (int k = 0; k < n; k++) {
        res[k].iters = calibrate(fns[k], target_ns);
        res[k].ns = 1e30;
    }
    for (int round = 0; round < ROUNDS; round++) {
        for (int k = 0; k < n; k++) {
            unsigned long long a0 = alloc_count;
            double t0 = now_ns();
            for (unsigned long i = 0; i < res[k].iters; i++)
                fns[k]();
            double ns = (now_ns() - t0) / (double)res[k].iters;
            if (ns < res[k].ns)
                res[k].ns = ns;
            res[k].allocs = (double)(alloc_count - a0) / (double)res[k].iters;
        }
    }
}

struct bench_case {
    const char *name;
    enum fbr_tpl_context ctx;
    void (*jansson)(void);
    void (*snprintf_fn)(void);
};

static const struct bench_case cases[] = {
    {"seed_url", FBR_TPL_URL, jansson_seed_url, snprintf_seed_url},
    {"seed_payload", FBR_TPL_JSON, jansson_seed_payload, snprintf_seed_payload},
    {"large_payload", FBR_TPL_JSON, jansson_large_payload, snprintf_large_payload},
};

/* Compares a baseline's bytes with the engine's; the seed payload differs from jansson's dump
 * only by jansson's fixed whitespace, so that one is compared as a JSON document. */
static int same_output(const char *who, const char *name, int as_json)
{
    if (out_len == flat_len && memcmp(out_buf, flat, flat_len) == 0)
        return 1;
    if (as_json) {
        json_t *a = json_loadb(out_buf, out_len, 0, NULL);
        json_t *b = json_loadb(flat, flat_len, 0, NULL);
        int eq = a && b && json_equal(a, b);
        json_decref(a);
        json_decref(b);
        if (eq)
            return 2;
    }
    fprintf(stderr, "%s: %s output differs from the engine's:\n%.*s\n%.*s\n", name, who,
            (int)out_len, out_buf, (int)flat_len, flat);
    return 0;
}

int main(int argc, char **argv)
{
    double target = 10e6; /* ns per timed run; argv[1] overrides, in ms */
    if (argc > 1)
        target = atof(argv[1]) * 1e6;
    json_error_t e;
    event = json_loads(event_text, 0, &e);
    if (!event) {
        fprintf(stderr, "fixture: %s\n", e.text);
        return 1;
    }
    const char *srcs[] = {seed_url, seed_payload, large_payload};
    char *alert_text = json_dumps(json_object_get(event, "ALERT"), JSON_COMPACT);
    printf("template benchmark: alert of %zu bytes, best of %d interleaved runs of ~%.0f ms"
           " each%s\n",
           strlen(alert_text), ROUNDS, target / 1e6,
           FBR_BENCH_COUNT_ALLOCS ? "" : " (allocations not counted: sanitizer build)");
    free(alert_text);
    printf("%-14s %-9s %10s %12s %8s %s\n", "case", "contender", "ns/render", "renders/s",
           "allocs", "output");

    char lines[3][256];
    int failed = 0;
    for (size_t c = 0; c < FBR_ARRAY_LEN(cases); c++) {
        char err[128];
        fbr_render_init(&cur_render);
        if (fbr_tpl_compile(srcs[c], strlen(srcs[c]), cases[c].ctx, &cur_tpl, err,
                            sizeof(err)) != FBR_OK) {
            fprintf(stderr, "%s: %s\n", cases[c].name, err);
            return 1;
        }
        cur_scope = (struct fbr_tpl_scope){.event = event};
        engine_render();
        flat_len = cur_render.total;
        fbr_render_copy(&cur_render, flat);

        cases[c].jansson();
        int jsame = same_output("jansson", cases[c].name, cases[c].ctx == FBR_TPL_JSON);
        cases[c].snprintf_fn();
        int ssame = same_output("snprintf", cases[c].name, 0);
        if (!jsame || !ssame)
            failed = 1;

        void (*const fns[4])(void) = {engine_render, cases[c].jansson, cases[c].snprintf_fn,
                                      floor_memcpy};
        struct result res[4];
        measure(fns, res, 4, target);
        const struct result eng = res[0], jan = res[1], mem = res[3];
        const struct result snp = res[2];
        const char *who[] = {"engine", "jansson", "snprintf", "memcpy"};
        for (int k = 0; k < 4; k++)
            printf("%-14s %-9s %10.1f %12.0f %8.2f %zu bytes%s\n", cases[c].name, who[k],
                   res[k].ns, 1e9 / res[k].ns, FBR_BENCH_COUNT_ALLOCS ? res[k].allocs : -1.0,
                   flat_len, k == 1 && jsame == 2 ? " (same document, jansson's whitespace)" : "");
        printf("%-14s ratios: jansson/engine %.1fx, snprintf/engine %.1fx, engine/memcpy %.1fx,"
               " %zu slices\n",
               cases[c].name, jan.ns / eng.ns, snp.ns / eng.ns, eng.ns / mem.ns, cur_render.niov);
        snprintf(lines[c], sizeof(lines[c]),
                 "case=%s ns_per_render=%.1f allocs_per_render=%.2f vs_jansson=%.1fx "
                 "vs_memcpy=%.1fx",
                 cases[c].name, eng.ns, FBR_BENCH_COUNT_ALLOCS ? eng.allocs : -1.0,
                 jan.ns / eng.ns, eng.ns / mem.ns);
        fbr_render_free(&cur_render);
        fbr_tpl_unref(&cur_tpl);
    }
    for (size_t c = 0; c < FBR_ARRAY_LEN(cases); c++)
        printf("%s\n", lines[c]);
    free(jansson_out);
    json_decref(event);
    return failed;
}
