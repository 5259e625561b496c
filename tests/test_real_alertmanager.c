/*
 * test_real_alertmanager.c - the Alertmanager receiver against the real Prometheus Alertmanager
 * (Debian's prometheus-alertmanager, path in $ALERTMANAGER or /usr/bin; the test fails, never
 * skips, when it is missing).  Three real processes on loopback: contrib/hipchat-server with one
 * room, the firebridge daemon with the seed's Multi-Room recipe pointed at that room (plus one
 * webhook on Incident-Resolved that shows ${{ALERT.labels.instance}}), and Alertmanager with a
 * webhook_configs receiver posting to /v1/alertmanager/devops with a Bearer credential.  Alerts
 * are posted to Alertmanager's API v2; the room must show: the firing alert once, its resolve
 * (and no second Incident-Triggered), then a group of 3 alerts as 3 incidents.
 */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon_util.h"
#include "testsupport.h"

#define API_KEY "CHANGE-ME-integration-key" /* the seed's */
#define ROOM "4321"
#define ROOM_TOKEN "am-room-token"

static char dir[64];

/* $ALERTMANAGER (meson's find_program), else Debian's path; fails the test when neither is
 * an executable. */
static const char *alertmanager_path(void)
{
    const char *am = getenv("ALERTMANAGER");
    if (!am || !*am)
        am = "/usr/bin/prometheus-alertmanager";
    ck_assert_msg(access(am, X_OK) == 0,
                  "prometheus-alertmanager is not installed (%s): run contrib/deps.sh", am);
    return am;
}

/* The seed config for the room, plus a resolve webhook that renders a label. */
static void write_firebridge_config(const char *path, int hc_port)
{
    char origin[64];
    snprintf(origin, sizeof(origin), "http://127.0.0.1:%d/", hc_port);
    dutil_seed_config(path, origin, ROOM, ROOM_TOKEN);
    json_error_t e;
    json_t *cfg = json_load_file(path, 0, &e);
    ck_assert_msg(cfg != NULL, "%s: %s", path, e.text);
    json_t *hooks = json_object_get(cfg, "webhooks");
    json_t *resolved = json_deep_copy(json_array_get(hooks, 0));
    json_object_set_new(resolved, "name", json_string("resolved"));
    json_object_set_new(resolved, "event", json_string("Incident-Resolved"));
    json_object_set_new(resolved, "payload",
                        json_string("{\"color\": \"green\", \"message\": \"resolved "
                                    "${{ALERT.labels.instance}} (${{ALERT.monitoring_tool}})\", "
                                    "\"message_format\": \"text\"}"));
    json_array_append_new(hooks, resolved);
    ck_assert_int_eq(json_dump_file(cfg, path, JSON_INDENT(2)), 0);
    json_decref(cfg);
}

static pid_t start_alertmanager(const char *exe, int fb_port, int *port, char *log, size_t logcap)
{
    char cfg[128], storage[128], flag_cfg[160], flag_storage[160];
    snprintf(cfg, sizeof(cfg), "%s/alertmanager.yml", dir);
    snprintf(storage, sizeof(storage), "%s/am-data", dir);
    snprintf(log, logcap, "%s/alertmanager.log", dir);
    char yml[1024];
    snprintf(yml, sizeof(yml),
             "route:\n"
             "  receiver: firebridge\n"
             "  group_by: ['alertname']\n"
             "  group_wait: 200ms\n"
             "  group_interval: 1s\n"
             "  repeat_interval: 1h\n"
             "receivers:\n"
             "  - name: firebridge\n"
             "    webhook_configs:\n"
             "      - url: http://127.0.0.1:%d/v1/alertmanager/devops\n"
             "        send_resolved: true\n"
             "        http_config:\n"
             "          authorization:\n"
             "            credentials: " API_KEY "\n",
             fb_port);
    dutil_write_file(cfg, yml);
    snprintf(flag_cfg, sizeof(flag_cfg), "--config.file=%s", cfg);
    snprintf(flag_storage, sizeof(flag_storage), "--storage.path=%s", storage);
    const char *argv[] = {exe,
                          flag_cfg,
                          flag_storage,
                          "--web.listen-address=127.0.0.1:0",
                          "--cluster.listen-address=",
                          NULL};
    pid_t pid = dutil_spawn(argv, log, log, 1);
    *port = dutil_wait_port(
        &pid, log, "msg=\"Listening on\" address=127.0.0.1:", 300 * dutil_slow(), 50, NULL);
    return pid;
}

/* RFC 3339 UTC time offset_s from now. */
static const char *rfc3339(int offset_s, char *buf, size_t cap)
{
    time_t t = time(NULL) + offset_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

/* Posts alerts (a JSON array text) to Alertmanager's API v2; asserts 200. */
static void am_post(int am_port, const char *alerts)
{
    static char buf[65536];
    int st = dutil_post(am_port, "/api/v2/alerts", NULL, alerts, buf, sizeof(buf));
    ck_assert_msg(st == 200, "POST /api/v2/alerts: %d %s", st, buf);
}

/* Waits up to ms for the daemon's series to equal want; returns the last value read. */
static long long wait_metric(int port, const char *series, long long want, int ms)
{
    long long end = dutil_wall_ms() + ms, v;
    while ((v = dutil_metric(port, series)) != want && dutil_wall_ms() < end)
        dutil_msleep(50);
    return v;
}

static const char *msg_text(json_t *msgs, size_t i)
{
    return json_string_value(json_object_get(json_array_get(msgs, i), "message"));
}

/* Counts the messages of msgs whose text is exactly text. */
static int count_text(json_t *msgs, const char *text)
{
    int n = 0;
    for (size_t i = 0; i < json_array_size(msgs); i++)
        n += msg_text(msgs, i) && strcmp(msg_text(msgs, i), text) == 0;
    return n;
}

START_TEST(alertmanager_to_room)
{
    const char *exe = alertmanager_path();
    dutil_tmpdir(dir, sizeof(dir), "fbr-real-am");
    int wait_ms = 20000 * dutil_slow();

    char hc_out[128], hc_err[128];
    snprintf(hc_out, sizeof(hc_out), "%s/hc.out", dir);
    snprintf(hc_err, sizeof(hc_err), "%s/hc.err", dir);
    const char *hflags[] = {"--room", ROOM ":" ROOM_TOKEN, NULL};
    int hc_port;
    pid_t hc = dutil_hipchat_start(hc_out, hc_err, hflags, &hc_port);

    char cfg[128];
    snprintf(cfg, sizeof(cfg), "%s/firebridge.json", dir);
    write_firebridge_config(cfg, hc_port);
    struct dutil_daemon fb;
    const char *extra[] = {"-c", cfg, NULL};
    dutil_daemon_start(&fb, "fbr-real-am-daemon", extra);

    char am_log[128];
    int am_port;
    pid_t am = start_alertmanager(exe, fb.port, &am_port, am_log, sizeof(am_log));

    /* 1. one firing alert: the seed's Incident-Triggered message in the room */
    char t0[32], t1[32], body[2048];
    snprintf(body, sizeof(body),
             "[{\"labels\":{\"alertname\":\"DiskFull\",\"instance\":\"db1:9100\","
             "\"severity\":\"critical\"},\"annotations\":{\"summary\":\"db1: disk full\","
             "\"description\":\"/var at 99%%\"},\"startsAt\":\"%s\","
             "\"generatorURL\":\"http://prometheus:9090/graph\"}]",
             rfc3339(-5, t0, sizeof(t0)));
    am_post(am_port, body);
    json_t *msgs = dutil_room_messages(hc_port, ROOM, 1, wait_ms);
    ck_assert_msg(json_array_size(msgs) == 1, "no message in the room; firebridge:\n%s\nAM:\n%s",
                  dutil_slurp(fb.log, NULL), dutil_slurp(am_log, NULL));
    ck_assert_str_eq(msg_text(msgs, 0), "db1: disk full");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 0), "color")), "red");
    json_decref(msgs);
    ck_assert_int_eq(dutil_metric(fb.port, "firebridge_incidents{phase=\"open\"}"), 1);

    /* 2. the resolve: the incident resolves, the room gets the resolve webhook's message with
     * the label, and no second Incident-Triggered */
    snprintf(body, sizeof(body),
             "[{\"labels\":{\"alertname\":\"DiskFull\",\"instance\":\"db1:9100\","
             "\"severity\":\"critical\"},\"annotations\":{\"summary\":\"db1: disk full\","
             "\"description\":\"/var at 99%%\"},\"startsAt\":\"%s\",\"endsAt\":\"%s\","
             "\"generatorURL\":\"http://prometheus:9090/graph\"}]",
             t0, rfc3339(-1, t1, sizeof(t1)));
    am_post(am_port, body);
    ck_assert_int_eq(wait_metric(fb.port, "firebridge_incidents{phase=\"resolved\"}", 1, wait_ms),
                     1);
    ck_assert_int_eq(dutil_metric(fb.port, "firebridge_incidents{phase=\"open\"}"), 0);
    msgs = dutil_room_messages(hc_port, ROOM, 2, wait_ms);
    ck_assert_int_eq(json_array_size(msgs), 2);
    ck_assert_str_eq(msg_text(msgs, 1), "resolved db1:9100 (alertmanager)");
    json_decref(msgs);

    /* 3. a group of three: one notification, three incidents, three messages */
    snprintf(body, sizeof(body),
             "[{\"labels\":{\"alertname\":\"HostDown\",\"instance\":\"h1\"},"
             "\"annotations\":{\"summary\":\"h1 down\"}},"
             "{\"labels\":{\"alertname\":\"HostDown\",\"instance\":\"h2\"},"
             "\"annotations\":{\"summary\":\"h2 down\"}},"
             "{\"labels\":{\"alertname\":\"HostDown\",\"instance\":\"h3\","
             "\"severity\":\"warning\"},\"annotations\":{\"summary\":\"h3 down\"}}]");
    am_post(am_port, body);
    ck_assert_int_eq(wait_metric(fb.port, "firebridge_incidents{phase=\"open\"}", 3, wait_ms), 3);
    msgs = dutil_room_messages(hc_port, ROOM, 5, wait_ms);
    ck_assert_int_eq(json_array_size(msgs), 5);
    ck_assert_int_eq(count_text(msgs, "h1 down"), 1);
    ck_assert_int_eq(count_text(msgs, "h2 down"), 1);
    ck_assert_int_eq(count_text(msgs, "h3 down"), 1);
    json_decref(msgs);

    /* Settle past two group intervals: nothing more arrives (no duplicate trigger). */
    dutil_msleep(2500);
    msgs = dutil_room_messages(hc_port, ROOM, 6, 0);
    ck_assert_int_eq(json_array_size(msgs), 5);
    ck_assert_int_eq(count_text(msgs, "db1: disk full"), 1);
    long long accepted = dutil_metric(fb.port, "firebridge_intake_alerts_total");
    long long posts =
        dutil_metric(fb.port, "firebridge_http_requests_total{endpoint=\"alertmanager\","
                              "status=\"200\"}");
    ck_assert_int_ge(posts, 3);
    fprintf(stderr,
            "FIGURES real Alertmanager: alerts posted to Alertmanager 5 (1 firing, its resolve, a "
            "group of 3); notifications firebridge answered 200: %lld; alerts accepted: %lld; "
            "messages delivered to the room: %zu (1 trigger, 1 resolve, 3 triggers); "
            "incidents open 3, resolved 1\n",
            posts, accepted, json_array_size(msgs));
    json_decref(msgs);
    char *log = dutil_slurp(fb.log, NULL);
    ck_assert_msg(strstr(log, ROOM_TOKEN) == NULL && strstr(log, API_KEY) == NULL,
                  "a secret in the log: %s", log);
    free(log);

    dutil_stop(&am, 5000, NULL);
    dutil_daemon_stop(&fb);
    dutil_stop(&hc, 5000, NULL);
    dutil_rm_rf(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("real_alertmanager");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 100);
    tcase_add_test(tc, alertmanager_to_room);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
