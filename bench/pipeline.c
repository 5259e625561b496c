/*
 * pipeline.c - benchmark of the head of the data path: what one REST alert costs from its body
 * to rendered deliveries (json_loadb + intake validation and stamping + Rules Engine + incident
 * table + event derivation + webhook rendering, with a sink that drops each request), printed
 * next to the cost of json_loadb alone on the same body, in the same run.  Four rules and four
 * webhooks, the incident table in memory; entities cycle so that triggers, roll-ups and
 * resolves all occur.
 *
 * A third figure repeats the pipeline with the incident journal on (a temporary data directory,
 * fsync off) to show what persistence adds per alert.
 *
 * Usage: bench_pipeline [alerts]   (default 200000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "firebridge/intake.h"
#include "firebridge/journal.h"
#include "firebridge/log.h"

static const char config[] =
    "{\"rules\":["
    "{\"name\":\"devops room\",\"when\":{\"field\":\"routing_key\",\"pattern\":\"devops\"},"
    " \"set\":{\"room_id\":\"1234\",\"auth_token\":\"secret-token\"}},"
    "{\"name\":\"role from host\",\"when\":{\"field\":\"host_name\",\"match\":\"regex\","
    " \"pattern\":\"(web|db)-(\\\\d+)\\\\.prod\\\\..*\"},\"set\":{\"role\":\"${{\\\\1}}\"}},"
    "{\"name\":\"retitle\",\"when\":[{\"field\":\"monitoring_tool\",\"pattern\":\"nag*\"},"
    " {\"field\":\"entity_display_name\",\"pattern\":\"*disk*\"}],"
    " \"set\":{\"entity_display_name\":\"[${{role}}] ${{entity_display_name}}\"}},"
    "{\"name\":\"runbook\",\"when\":{\"field\":\"role\",\"pattern\":\"db\"},"
    " \"annotations\":[{\"type\":\"url\",\"title\":\"Runbook\","
    " \"value\":\"https://wiki.example/runbooks/${{host_name}}\"}]}],"
    "\"webhooks\":["
    "{\"name\":\"multi-room\",\"event\":\"Incident-Triggered\",\"method\":\"POST\","
    " \"content_type\":\"application/json\","
    " \"url\":\"https://DOMAIN.hipchat.com/v2/room/${{ALERT.room_id}}/notification"
    "?auth_token=${{ALERT.auth_token}}\","
    " \"payload\":\"{ \\\"color\\\": \\\"red\\\", \\\"message\\\": "
    "\\\"${{ALERT.entity_display_name}}\\\", \\\"notify\\\": true, \\\"message_format\\\": "
    "\\\"text\\\" }\"},"
    "{\"name\":\"audit\",\"event\":\"Any-Alert\",\"url\":\"https://audit.example/in\","
    " \"headers\":{\"X-Entity\":\"${{ALERT.entity_id}}\"},"
    " \"payload\":{\"id\":\"${{ALERT.VO_UUID}}\",\"state\":\"${{STATE.CURRENT_STATE}}\","
    "  \"incident\":\"${{STATE.INCIDENT_NAME}}\",\"text\":\"${{ALERT.state_message}}\"}},"
    "{\"name\":\"lifecycle\",\"event\":\"Any-Incident\","
    " \"url\":\"https://ops.example/i/${{INCIDENT.INCIDENT_ID}}\",\"method\":\"PUT\","
    " \"payload\":{\"phase\":\"${{INCIDENT.CURRENT_PHASE}}\","
    "  \"count\":\"${{STATE.ALERT_COUNT}}\"}},"
    "{\"name\":\"oncall\",\"event\":\"On-Call\",\"url\":\"https://ops.example/oncall\"}]}";

static const char body_fmt[] =
    "{\"message_type\":\"%s\",\"entity_id\":\"disk/%s-%03d.prod.example/var\","
    "\"entity_display_name\":\"Low disk space on /var\",\"monitoring_tool\":\"nagios\","
    "\"host_name\":\"%s-%03d.prod.example\",\"state_message\":\"/var is 97%% full (1.2 GB left); "
    "the log rotation job last ran 3 days ago and the archive volume is not mounted.\","
    "\"timestamp\":1583343512,\"state_start_time\":1583343500,\"check\":\"disk_var\"}";

static uint64_t dropped_bytes;

/* Takes the request over and drops it (release leaves o empty, as the contract asks). */
static int drop(void *arg, struct fbr_outreq *o)
{
    (void)arg;
    dropped_bytes += o->url.total + o->body.total;
    fbr_outreq_release(o);
    return FBR_OK;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define NBODIES 256

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    if (n <= 0)
        n = 200000;
    fbr_log_setup(FBR_LOG_ERROR, FBR_LOG_TEXT);

    json_t *cfg = json_loads(config, 0, NULL);
    struct fbr_cfgerr errs = {0};
    struct fbr_rules *rules = NULL;
    struct fbr_webhooks webhooks;
    if (!cfg || fbr_rules_compile(json_object_get(cfg, "rules"), NULL, &rules, &errs) != FBR_OK ||
        fbr_webhooks_compile(json_object_get(cfg, "webhooks"), &webhooks, &errs) != FBR_OK) {
        fprintf(stderr, "bench config: %s\n", errs.n ? errs.msgs[0] : "bad JSON");
        return 1;
    }
    struct fbr_incidents_opts io = {0};
    struct fbr_incidents *incidents = NULL;
    fbr_incidents_open(&io, &incidents);
    const char *keys[] = {"bench-key"};
    struct fbr_intake_opts o = {.api_keys = keys, .napi_keys = 1, .organization_id = "bench",
                                .rules = rules, .webhooks = &webhooks, .incidents = incidents,
                                .sink = {drop, NULL}};
    struct fbr_intake *in = fbr_intake_new(&o);

    /* 256 bodies: 64 entities (web and db hosts) x CRITICAL, CRITICAL, ACK, RECOVERY. */
    static char bodies[NBODIES][640];
    static size_t lens[NBODIES];
    static const char *const mts[] = {"CRITICAL", "CRITICAL", "ACKNOWLEDGEMENT", "RECOVERY"};
    for (int i = 0; i < NBODIES; i++) {
        const char *role = (i / 4) % 2 ? "db" : "web";
        int host = i / 8;
        lens[i] = (size_t)snprintf(bodies[i], sizeof(bodies[i]), body_fmt, mts[i % 4], role, host,
                                   role, host);
    }
    struct fbr_slice path = FBR_SLICE(FBR_INTAKE_ALERT_PREFIX "bench-key/devops");

    size_t total_len = 0;
    for (int i = 0; i < NBODIES; i++)
        total_len += lens[i];

    /* Warm-up, then the two measurements interleaved in rounds to share machine conditions. */
    uint64_t t_parse = 0, t_pipe = 0, deliveries = 0;
    long done = 0;
    for (int round = -1; done < n; round++) {
        long chunk = n - done < 20000 ? n - done : 20000;
        uint64_t t0 = now_ns();
        for (long i = 0; i < chunk; i++) {
            int k = (int)(i % NBODIES);
            json_t *j = json_loadb(bodies[k], lens[k], JSON_REJECT_DUPLICATES, NULL);
            json_decref(j);
        }
        uint64_t t1 = now_ns();
        uint64_t round_deliveries = 0;
        for (long i = 0; i < chunk; i++) {
            int k = (int)(i % NBODIES);
            json_t *j = json_loadb(bodies[k], lens[k], JSON_REJECT_DUPLICATES, NULL);
            struct fbr_intake_reply r;
            fbr_intake_alert(in, path, j, &r);
            round_deliveries += r.deliveries;
            json_decref(r.body);
            json_decref(j);
        }
        uint64_t t2 = now_ns();
        if (round >= 0) {
            t_parse += t1 - t0;
            t_pipe += t2 - t1;
            deliveries += round_deliveries;
            done += chunk;
        }
    }
    double parse_ns = (double)t_parse / (double)n, pipe_ns = (double)t_pipe / (double)n;
    const struct fbr_intake_stats *st = fbr_intake_stats(in);
    printf("alerts: %ld, body %zu bytes on average, %d rules, %zu webhooks\n", n,
           total_len / NBODIES, (int)fbr_rules_count(rules), webhooks.n);
    printf("json_loadb only:                          %8.0f ns/alert\n", parse_ns);
    printf("json_loadb + intake + rules + incidents +\n"
           "  events + rendering (full pipeline):     %8.0f ns/alert\n", pipe_ns);
    printf("pipeline beyond parsing:                  %8.0f ns/alert\n", pipe_ns - parse_ns);
    printf("ratio pipeline / json_loadb:              %8.2f\n", pipe_ns / parse_ns);
    printf("deliveries: %.2f per alert (%llu bytes rendered in all), regex limit hits: %llu\n",
           (double)deliveries / (double)n, (unsigned long long)dropped_bytes,
           (unsigned long long)st->rules.regex_limit);

    fbr_intake_free(&in);
    fbr_incidents_close(&incidents);

    /* Same pipeline with the write-ahead journal written (fsync off: the page-cache cost, not the
     * disk's), one write per 64 alerts as the loop would batch them. */
    char dir[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/fbr-bench-XXXXXX", tmp ? tmp : "/tmp");
    if (mkdtemp(dir)) {
        struct event_base *jb = event_base_new();
        struct fbr_journal *jn = NULL;
        char jdir[300], jerr[512];
        snprintf(jdir, sizeof(jdir), "%s/journal", dir);
        struct fbr_journal_opts jopts = {.dir = jdir, .fsync = FBR_FSYNC_OFF};
        struct fbr_incidents_opts jo = {.journal = NULL};
        if (fbr_journal_open(jb, &jopts, &jn, jerr, sizeof(jerr)) == FBR_OK)
            jo.journal = jn;
        if (jn && fbr_incidents_open(&jo, &incidents) == FBR_OK &&
            fbr_journal_recover(jn, jerr, sizeof(jerr)) == FBR_OK) {
            o.incidents = incidents;
            in = fbr_intake_new(&o);
            uint64_t t0 = now_ns();
            for (long i = 0; i < n; i++) {
                int k = (int)(i % NBODIES);
                json_t *j = json_loadb(bodies[k], lens[k], JSON_REJECT_DUPLICATES, NULL);
                struct fbr_intake_reply r;
                fbr_intake_alert(in, path, j, &r);
                json_decref(r.body);
                json_decref(j);
                if (i % 64 == 63)
                    fbr_journal_flush(jn);
            }
            fbr_journal_flush(jn);
            uint64_t t1 = now_ns();
            printf("full pipeline with the write-ahead journal (fsync off): %.0f ns/alert\n",
                   (double)(t1 - t0) / (double)n);
            fbr_intake_free(&in);
        }
        fbr_incidents_close(&incidents);
        fbr_journal_close(&jn);
        event_base_free(jb);
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", dir);
    }
    fbr_webhooks_clear(&webhooks);
    fbr_rules_free(&rules);
    json_decref(cfg);
    return 0;
}
