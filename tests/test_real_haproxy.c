/*
 * test_real_haproxy.c - two firebridge instances behind the real HAProxy (Debian's haproxy,
 * path in $HAPROXY; the test fails, never skips, when it is missing) running the shipped
 * contrib/haproxy/firebridge.cfg with only its ports rewritten, delivering to
 * contrib/hipchat-server through the seed's Multi-Room recipe.  Checks, with real processes on
 * loopback:
 *   - affinity: all alerts of one routing key land on one instance (each instance's /metrics),
 *     whatever the API key, the key's case or the endpoint (REST or Alertmanager), and the keys
 *     are spread over both instances;
 *   - draining: a sender keeps posting alerts of one routing key while the instance that owns it
 *     gets SIGTERM; the sender sees no error (HAProxy retried everything on the other instance)
 *     and every alert answered 200 reaches the room.
 * The figures (sent, answered 200, delivered, errors) are printed as a FIGURES line.
 */
#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_util.h"
#include "firebridge/common.h"
#include "testsupport.h"

#define KEY1 "CHANGE-ME-integration-key" /* the seed's */
#define KEY2 "second-sender-key"
#define ROOM "7777"
#define ROOM_TOKEN "ha-room-token"
#define REST "/integrations/generic/20131114/alert/"

static char dir[64];

/* $HAPROXY (meson's find_program), else Debian's path; fails the test when neither is an
 * executable. */
static const char *haproxy_path(void)
{
    const char *p = getenv("HAPROXY");
    if (!p || !*p)
        p = "/usr/sbin/haproxy";
    ck_assert_msg(access(p, X_OK) == 0, "haproxy is not installed (%s): run contrib/deps.sh", p);
    return p;
}

/* Writes the shipped HAProxy config with its three ports replaced; returns HAProxy's port. */
static int write_haproxy_config(const char *path, int p1, int p2)
{
    const char *root = getenv("FBR_SOURCE_ROOT");
    ck_assert_ptr_nonnull(root);
    char src[512], from[3][64], to[3][64];
    snprintf(src, sizeof(src), "%s/contrib/haproxy/firebridge.cfg", root);
    char *text = dutil_slurp(src, NULL);
    int port = dutil_free_port();
    snprintf(from[0], sizeof(from[0]), "bind 127.0.0.1:8080\n");
    snprintf(to[0], sizeof(to[0]), "bind 127.0.0.1:%d\n", port);
    snprintf(from[1], sizeof(from[1]), "server fb1 127.0.0.1:8081\n");
    snprintf(to[1], sizeof(to[1]), "server fb1 127.0.0.1:%d\n", p1);
    snprintf(from[2], sizeof(from[2]), "server fb2 127.0.0.1:8082\n");
    snprintf(to[2], sizeof(to[2]), "server fb2 127.0.0.1:%d\n", p2);
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(strstr(text, from[i]) != NULL, "%s lacks \"%s\"", src, from[i]);
        char *next = dutil_replace_all(text, from[i], to[i]);
        free(text);
        text = next;
    }
    dutil_write_file(path, text);
    free(text);
    return port;
}

/* One request on a new connection.  Returns the status, or -1 when no response came. */
static int send_once(int port, const char *path, const char *auth, const char *body)
{
    char req[2048], buf[4096];
    snprintf(req, sizeof(req),
             "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
             "Content-Type: application/json\r\n%s%s%sContent-Length: %zu\r\n\r\n%s",
             path, auth ? "Authorization: Bearer " : "", auth ? auth : "", auth ? "\r\n" : "",
             strlen(body), body);
    int fd = dutil_connect_with(port, 0, 10, 10);
    if (fd < 0)
        return -1;
    int st =
        dutil_send_all(fd, req, strlen(req)) == 0 ? dutil_read_response(fd, buf, sizeof(buf)) : -1;
    close(fd);
    return st;
}

static int post_alert(int port, const char *key, const char *rk, const char *entity)
{
    char path[256], body[256];
    snprintf(path, sizeof(path), REST "%s/%s", key, rk);
    snprintf(body, sizeof(body),
             "{\"message_type\":\"CRITICAL\",\"entity_id\":\"%s\",\"entity_display_name\":\"%s\"}",
             entity, entity);
    return send_once(port, path, NULL, body);
}

static int post_alertmanager(int port, const char *rk, const char *fingerprint)
{
    char path[128], body[256];
    snprintf(path, sizeof(path), "/v1/alertmanager/%s", rk);
    snprintf(body, sizeof(body),
             "{\"version\":\"4\",\"alerts\":[{\"status\":\"firing\",\"fingerprint\":\"%s\","
             "\"labels\":{\"alertname\":\"%s\"}}]}",
             fingerprint, fingerprint);
    return send_once(port, path, KEY1, body);
}

static long long alerts_total(const struct dutil_daemon *d)
{
    return dutil_metric(d->port, "firebridge_intake_alerts_total");
}

START_TEST(two_instances_behind_haproxy)
{
    const char *haproxy = haproxy_path();
    dutil_tmpdir(dir, sizeof(dir), "fbr-real-ha");

    char hc_out[128], hc_err[128];
    snprintf(hc_out, sizeof(hc_out), "%s/hc.out", dir);
    snprintf(hc_err, sizeof(hc_err), "%s/hc.err", dir);
    const char *hflags[] = {"--room", ROOM ":" ROOM_TOKEN, "--no-limits", "--quiet", NULL};
    int hc_port;
    pid_t hc = dutil_hipchat_start(hc_out, hc_err, hflags, &hc_port);

    char cfg[128], origin[64];
    snprintf(cfg, sizeof(cfg), "%s/firebridge.json", dir);
    snprintf(origin, sizeof(origin), "http://127.0.0.1:%d/", hc_port);
    dutil_seed_config(cfg, origin, ROOM, ROOM_TOKEN);
    const char *extra[] = {
        "-c",          cfg,         "--api-key",    KEY1,        "--api-key",       KEY2,
        "--room-rate", "1000000/1", "--token-rate", "1000000/1", "--drain-timeout", "20",
        NULL};
    struct dutil_daemon fb[2];
    dutil_daemon_start(&fb[0], "fbr-real-ha-1", extra);
    dutil_daemon_start(&fb[1], "fbr-real-ha-2", extra);

    char ha_cfg[128], ha_log[128];
    snprintf(ha_cfg, sizeof(ha_cfg), "%s/haproxy.cfg", dir);
    snprintf(ha_log, sizeof(ha_log), "%s/haproxy.log", dir);
    /* up when it answers and both servers passed their first checks; its port was free a
     * moment before it bound it, so an exit at start (the port taken meanwhile) gets another */
    int hp = 0, up = 0;
    pid_t ha = 0;
    for (int attempt = 0; attempt < 3 && !up; attempt++) {
        hp = write_haproxy_config(ha_cfg, fb[0].port, fb[1].port);
        const char *hargv[] = {haproxy, "-db", "-f", ha_cfg, NULL};
        ha = dutil_spawn(hargv, ha_log, ha_log, 1);
        for (int i = 0; i < 200 && !up && ha; i++) {
            char buf[2048];
            int fd = dutil_connect(hp);
            if (fd >= 0) {
                close(fd);
                up = dutil_get(hp, "/healthz", buf, sizeof(buf)) == 200;
            }
            if (!up)
                dutil_wait_exit(&ha, 60, NULL); /* sets ha to 0 when HAProxy gave up */
        }
    }
    ck_assert_msg(up, "haproxy did not come up:\n%s", dutil_slurp(ha_log, NULL));
    dutil_msleep(1500);

    /* 1. affinity: 5 alerts per routing key, every one on the same instance */
    static const char *const keys[] = {"devops", "db",    "web",   "payments", "search",
                                       "mail",   "queue", "cache", "auth",     "storage"};
    int owner[FBR_ARRAY_LEN(keys)], owned[2] = {0, 0};
    for (size_t k = 0; k < FBR_ARRAY_LEN(keys); k++) {
        long long a0 = alerts_total(&fb[0]), b0 = alerts_total(&fb[1]);
        for (int i = 0; i < 5; i++) {
            char entity[64];
            snprintf(entity, sizeof(entity), "aff-%s-%d", keys[k], i);
            ck_assert_int_eq(post_alert(hp, i % 2 ? KEY2 : KEY1, keys[k], entity), 200);
        }
        long long da = alerts_total(&fb[0]) - a0, db = alerts_total(&fb[1]) - b0;
        ck_assert_msg((da == 5 && db == 0) || (da == 0 && db == 5),
                      "routing key %s split: %lld on fb1, %lld on fb2", keys[k], da, db);
        owner[k] = da ? 0 : 1;
        owned[owner[k]]++;
    }
    ck_assert_msg(owned[0] > 0 && owned[1] > 0, "every key on one instance: %d / %d", owned[0],
                  owned[1]);
    /* the same key in another case, and through the Alertmanager endpoint: same instance */
    int o = owner[0];
    long long before = alerts_total(&fb[o]);
    ck_assert_int_eq(post_alert(hp, KEY1, "DevOps", "aff-case"), 200);
    ck_assert_int_eq(post_alertmanager(hp, "devops", "aff-am"), 200);
    ck_assert_int_eq(alerts_total(&fb[o]) - before, 2);
    json_t *msgs = dutil_room_messages(hc_port, ROOM, 8, 10000);
    size_t delivered_before = json_array_size(msgs); /* devops: 5 + 1 + 1 */
    ck_assert_int_eq(delivered_before, 7);
    json_decref(msgs);

    /* 2. drain the instance that owns "devops" while a sender keeps posting its alerts */
    long long other_before = alerts_total(&fb[1 - o]);
    enum { MAX = 5000 };
    static char ok[MAX];
    int sent = 0, answered_200 = 0, errors = 0, other_status = 0;
    long long start = dutil_wall_ms(), stop_at = 0;
    int signalled = 0, drained_status = -1;
    while (sent < MAX && (!stop_at || dutil_wall_ms() < stop_at)) {
        if (!signalled && dutil_wall_ms() - start >= 1000) {
            ck_assert_int_eq(kill(fb[o].pid, SIGTERM), 0);
            signalled = 1;
        }
        if (signalled && !stop_at) {
            drained_status = dutil_wait_exit(&fb[o].pid, 20, NULL);
            if (drained_status != -1)
                stop_at = dutil_wall_ms() + 1000; /* and a second more after it left */
        }
        char entity[32];
        snprintf(entity, sizeof(entity), "drain-%d", sent);
        int st = post_alert(hp, sent % 2 ? KEY2 : KEY1, "devops", entity);
        ok[sent] = st == 200;
        answered_200 += st == 200;
        errors += st != 200;
        other_status += st > 0 && st != 200;
        if (st != 200 && errors <= 5)
            fprintf(stderr, "alert %d: %s %d\n", sent, st < 0 ? "no response" : "status", st);
        sent++;
        dutil_msleep(2);
    }
    ck_assert_msg(stop_at, "the drained instance did not exit within the run; its log:\n%s",
                  dutil_slurp(fb[o].log, NULL));
    dutil_assert_exit_zero(drained_status, fb[o].log);
    long long failover = alerts_total(&fb[1 - o]) - other_before;

    /* every alert answered 200 reaches the room, from either instance */
    msgs = dutil_room_messages(hc_port, ROOM, delivered_before + (size_t)answered_200, 30000);
    int delivered = 0, missing = 0;
    for (int i = 0; i < sent; i++) {
        char name[32];
        snprintf(name, sizeof(name), "drain-%d", i);
        int seen = 0;
        for (size_t m = 0; m < json_array_size(msgs) && !seen; m++) {
            const char *t = json_string_value(json_object_get(json_array_get(msgs, m), "message"));
            seen = t && strcmp(t, name) == 0;
        }
        delivered += seen;
        if (ok[i] && !seen && ++missing <= 5)
            fprintf(stderr, "alert %s answered 200, never delivered\n", name);
    }
    size_t total_msgs = json_array_size(msgs);
    json_decref(msgs);
    char *halog = dutil_slurp(ha_log, NULL);
    int retried = 0;
    for (const char *p = strstr(halog, "/+"); p; p = strstr(p + 2, "/+"))
        retried++;
    free(halog);
    fprintf(stderr,
            "FIGURES HAProxy drain: sent %d, answered 200 %d, delivered %d, errors seen by the "
            "sender %d (other statuses %d), answered 200 but not delivered %d, taken by the "
            "other instance %lld, requests HAProxy redispatched %d, room messages %zu\n",
            sent, answered_200, delivered, errors, other_status, missing, failover, retried,
            total_msgs);
    ck_assert_int_eq(errors, 0);
    ck_assert_int_eq(missing, 0);
    ck_assert_int_eq(delivered, answered_200);
    ck_assert_msg(failover > 0, "the other instance took none of the alerts after the drain");
    ck_assert_int_eq(total_msgs, delivered_before + (size_t)answered_200); /* no duplicate */

    dutil_stop(&ha, 5000, NULL);
    dutil_daemon_stop(&fb[1 - o]);
    dutil_rm_rf(fb[o].dir);
    dutil_stop(&hc, 5000, NULL);
    dutil_rm_rf(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("real_haproxy");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 110);
    tcase_add_test(tc, two_instances_behind_haproxy);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
