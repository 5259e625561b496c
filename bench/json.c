/*
 * bench/json.c - the intake's JSON reader (src/json.c) against the jansson call it replaced on
 * the hot path, json_loadb(JSON_REJECT_DUPLICATES): each body is parsed and freed N times by one
 * and then the other, alternately for 5 rounds, and the median ns per parse is reported with the
 * ratio.  Bodies: the loadgen's alert (what bench/compare.sh and daemon_ab.sh post), its
 * /v1/events item, and a ~1 KB alert with escapes, numbers and nesting.  Before timing, each
 * body is checked to give the same tree both ways.  The last lines are for scripts:
 *   case=<name> bytes=<n> jansson_ns=<x> fbr_ns=<y> ratio=<fbr/jansson>
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "firebridge/json.h"

static const struct {
    const char *name, *body;
} bodies[] = {
    {"loadgen_alert",
     "{\"message_type\":\"CRITICAL\",\"entity_id\":\"lg-5f3a9c2e-123456\","
     "\"entity_display_name\":\"lg 123456 1732924800123456789\",\"room_id\":\"r17\","
     "\"auth_token\":\"AUTH_TOKEN_HERE\"}"},
    {"loadgen_event",
     "{\"event\":\"Incident-Triggered\",\"ALERT\":{\"entity_id\":\"lg-5f3a9c2e-7\","
     "\"entity_display_name\":\"lg 7 1732924800123456789\",\"room_id\":\"r7\","
     "\"auth_token\":\"tok\"}}"},
    {"alert_1k",
     "{\"entity_id\": \"disk-space/db-prod-17.eu-west-1.internal/var-lib-postgresql\","
     "\"entity_display_name\": \"Disk space critical on db-prod-17\","
     "\"state_message\": \"Filesystem /var/lib/postgresql on db-prod-17.eu-west-1.internal is "
     "at 97% (482.6 GiB of 497.8 GiB used).\\nGrowth over the last hour: 3.1 GiB; projected full "
     "in 4h 52m.\\nTop consumers: base/16384 (401 GiB), pg_wal (61 GiB), log (12 GiB).\\n"
     "Runbook: https:\\/\\/wiki.example.com\\/runbooks\\/disk-space#postgres\","
     "\"message_type\": \"CRITICAL\", \"monitoring_tool\": \"prometheus-alertmanager\","
     "\"routing_key\": \"database-oncall\", \"host_name\": \"db-prod-17.eu-west-1.internal\","
     "\"timestamp\": 1700000000, \"state_start_time\": 1699999700,"
     "\"VO_UUID\": \"5f0c8a52-9d1e-4b7a-8c3f-2e6d9b1a7f40\", \"VO_ALERT_RCV_TIME\": "
     "\"1700000000123\", \"VO_ORGANIZATION_ID\": \"example-org\", \"VO_MONITOR_TYPE\": \"API\","
     "\"monitor_data\": {\"id\": \"mon-7731\", \"region\": \"eu-west-1\", \"load\": [1.5, 2.25, "
     "3.0], \"threshold\": 0.95, \"ok\": false, \"owner\": null},"
     "\"labels\": {\"severity\": \"page\", \"team\": \"dba\", \"caf\\u00e9\": \"na\\u00efve\"}}"},
};

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static volatile size_t sink;

static double run(int fbr, const char *body, size_t len, long n)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        json_t *j = fbr ? fbr_json_loadb(body, len, NULL)
                        : json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
        sink += json_object_size(j);
        json_decref(j);
    }
    return (now_ns() - t0) / (double)n;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    enum { ROUNDS = 5 };
    int bad = 0;
    for (size_t c = 0; c < sizeof(bodies) / sizeof(bodies[0]); c++) {
        const char *body = bodies[c].body;
        size_t len = strlen(body);
        json_t *a = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
        json_t *b = fbr_json_loadb(body, len, NULL);
        if (!a || !b || !json_equal(a, b)) {
            fprintf(stderr, "%s: the two readers disagree\n", bodies[c].name);
            bad = 1;
        }
        json_decref(a);
        json_decref(b);
        double tj[ROUNDS], tf[ROUNDS];
        run(0, body, len, n / 10 + 1); /* warm up */
        run(1, body, len, n / 10 + 1);
        for (int r = 0; r < ROUNDS; r++) {
            tj[r] = run(0, body, len, n);
            tf[r] = run(1, body, len, n);
        }
        qsort(tj, ROUNDS, sizeof(double), cmp);
        qsort(tf, ROUNDS, sizeof(double), cmp);
        printf("case=%s bytes=%zu jansson_ns=%.0f fbr_ns=%.0f ratio=%.2f\n", bodies[c].name, len,
               tj[ROUNDS / 2], tf[ROUNDS / 2], tf[ROUNDS / 2] / tj[ROUNDS / 2]);
    }
    return bad;
}
