/*
 * crash_journal.c - the write-ahead journal against kill -9 (issue 11): the real daemon delivers
 * to the real HipChat-compatible server (contrib/hipchat-server) on loopback; this program posts
 * alerts to four rooms and kills the daemon with SIGKILL 20 times at random moments, restarting
 * it each time on the same data directory.  The cycles rotate through: a healthy sink; the sink
 * down (every notification answered 503); deliveries in flight (the sink stores each of 40
 * messages at once but answers 100 ms later, so a kill catches them sent and unanswered); and a growing
 * backlog with 16 KiB journal segments, where checkpoints run every few alerts.  With the sink
 * up, a run goes on until a new segment has started in a dead segment's file (reused: the test
 * requires such kills).  Each kill comes right after one more alert was sent, 0-2 ms into its
 * processing.
 *
 * At the end the sink is healthy, the daemon starts once more and every alert answered 200 must
 * reach its room at least once.  Printed: alerts answered 200, delivered, lost (must be 0),
 * duplicate deliveries (same X-Firebridge-Delivery seen twice), order violations per room (an
 * alert first seen after a later one of its room; must be 0), and how many kills hit each kind
 * of cycle.  FBR_CRASH_SEED fixes the random choices (default: the time).
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "daemon_util.h"
#include "testsupport.h"

#define KILLS 20
#define ROOMS 4
#define MAX_ALERTS 20000
#define API_KEY "crash-key"

static char dir[64], cfg[128];
static int hc_port;
static unsigned seed;       /* the generator's state, advanced by rnd() */
static unsigned start_seed; /* what it started from: FBR_CRASH_SEED=start_seed repeats the run */

static unsigned rnd(void)
{
    seed = seed * 1103515245u + 12345u;
    return (seed >> 16) & 0x7fff;
}

static void sink_faults(const char *json)
{
    char buf[4096];
    if (json) {
        ck_assert_int_lt(dutil_post(hc_port, "/faults", NULL, json, buf, sizeof(buf)), 300);
    } else {
        ck_assert_int_lt(dutil_http(hc_port,
                                    "DELETE /faults HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                    "Content-Length: 0\r\n\r\n",
                                    buf, sizeof(buf)),
                         300);
    }
}

/* The daemon on the test's directory (so <dir>/data survives each kill), one log per cycle. */
static pid_t start_daemon(int cycle, int *port)
{
    char log[32];
    snprintf(log, sizeof(log), "run-%02d.log", cycle);
    const char *args[] = {"-c", cfg, "--fsync", "batch", "--fsync-interval", "10",
                          "--journal-segment-size", "16K",
                          "--room-rate", "100000/1", "--token-rate", "100000/1",
                          "--retry-initial", "50", "--retry-max-interval", "200",
                          "--max-pending", "100000", "--drain-timeout", "1", NULL};
    struct dutil_daemon_opts opts = {.dir = dir, .log_name = log};
    struct dutil_daemon d;
    dutil_daemon_start_opts(&d, NULL, args, &opts);
    *port = d.port;
    return d.pid;
}

static void alert_body(int i, char *body, size_t n)
{
    snprintf(body, n,
             "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e-%d\","
             "\"entity_display_name\":\"a-%d\"}",
             i, i);
}

static void alert_path(int i, char *path, size_t n)
{
    snprintf(path, n, "/integrations/generic/20131114/alert/" API_KEY "/r%d", i % ROOMS);
}

START_TEST(kill9_loses_nothing_answered_200)
{
    const char *s = getenv("FBR_CRASH_SEED");
    seed = start_seed = s ? (unsigned)strtoul(s, NULL, 10) : (unsigned)time(NULL);
    printf("crash test: seed %u (FBR_CRASH_SEED=%u repeats these choices)\n", start_seed,
           start_seed);
    fflush(stdout);
    dutil_tmpdir(dir, sizeof(dir), "fbr-crash");
    snprintf(cfg, sizeof(cfg), "%s/config.json", dir);
    char out[160], err[160];
    snprintf(out, sizeof(out), "%s/hc.out", dir);
    snprintf(err, sizeof(err), "%s/hc.err", dir);
    const char *hflags[] = {"--any-token", "--any-room", "--no-limits", "--quiet",
                            "--max-messages", "1000000", NULL};
    pid_t hc = dutil_hipchat_start(out, err, hflags, &hc_port);
    FILE *f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f,
            "{\"api_keys\":[\"" API_KEY "\"],\"webhooks\":[{\"name\":\"rooms\","
            "\"event\":\"Any-Alert\",\"content_type\":\"application/json\","
            "\"url\":\"http://127.0.0.1:%d/v2/room/${{ALERT.routing_key}}/notification"
            "?auth_token=tok\","
            "\"payload\":\"{\\\"message\\\":\\\"${{ALERT.entity_display_name}}\\\","
            "\\\"message_format\\\":\\\"text\\\"}\"}]}\n",
            hc_port);
    fclose(f);

    static char answered[MAX_ALERTS]; /* 1: answered 200 */
    int next = 0, n200 = 0, other = 0;
    int kinds[4] = {0}, with_checkpoint = 0, with_pending = 0, with_reused = 0;
    static const char *const kind_names[] = {"sink up", "sink down (503)",
                                             "deliveries in flight", "backlog + checkpoints"};
    char buf[8192], body[256], path[128];
    for (int cycle = 0; cycle < KILLS; cycle++) {
        int kind = cycle % 4;
        kinds[kind]++;
        sink_faults(NULL);
        if (kind == 1 || kind == 3)
            sink_faults("{\"status\":503,\"count\":-1}");
        else if (kind == 2)
            sink_faults("{\"delay_ms\":100,\"count\":40}");
        int port;
        pid_t pid = start_daemon(cycle, &port);
        int n = 20 + (int)(rnd() % (kind == 3 ? 300 : 80));
        for (int k = 0; k < n && next < MAX_ALERTS - 1; k++, next++) {
            /* with the sink up, the run goes on until a new segment has started in a dead
             * one's file, so that the kill hits reused files (at most 3,000 more alerts) */
            if (kind == 0 && k == n - 1 && n < 3000 &&
                dutil_metric(port, "firebridge_journal_segments_recycled_total") == 0)
                n += 50;
            alert_body(next, body, sizeof(body));
            alert_path(next, path, sizeof(path));
            int st = dutil_post(port, path, NULL, body, buf, sizeof(buf));
            if (st == 200) {
                answered[next] = 1;
                n200++;
            } else {
                other++;
            }
        }
        if (dutil_metric(port, "firebridge_journal_checkpoints_total") > 0)
            with_checkpoint++;
        if (dutil_metric(port, "firebridge_journal_segments_recycled_total") > 0)
            with_reused++;
        if (dutil_metric(port, "firebridge_deliveries_pending") > 0)
            with_pending++;
        /* one more alert, and the kill 0-2 ms into it: its answer is never read */
        alert_body(next, body, sizeof(body));
        alert_path(next, path, sizeof(path));
        next++;
        char req[512];
        snprintf(req, sizeof(req),
                 "POST %s HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s",
                 path, strlen(body), body);
        int fd = dutil_connect(port);
        ck_assert_int_eq(dutil_send_all(fd, req, strlen(req)), 0);
        usleep(rnd() % 2000);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        int status;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        close(fd);
    }

    /* The last start: a healthy sink; everything answered 200 must arrive. */
    sink_faults(NULL);
    int port;
    pid_t pid = start_daemon(KILLS, &port);
    int delivered = 0, dup_ids = 0, violations = 0, lost = 0;
    static char seen[MAX_ALERTS];
    long long deadline = dutil_wall_ms() + 90000LL * dutil_slow();
    for (;;) {
        memset(seen, 0, sizeof(seen));
        delivered = dup_ids = violations = 0;
        for (int r = 0; r < ROOMS; r++) {
            char room[8];
            snprintf(room, sizeof(room), "r%d", r);
            json_t *msgs = dutil_room_messages(hc_port, room, 0, 0);
            json_t *ids = json_object();
            int last = -1;
            size_t i;
            json_t *m;
            json_array_foreach(msgs, i, m)
            {
                const char *text = json_string_value(json_object_get(m, "message"));
                const char *id = json_string_value(json_object_get(m, "delivery"));
                int a = text && strncmp(text, "a-", 2) == 0 ? atoi(text + 2) : -1;
                if (a < 0 || a >= MAX_ALERTS)
                    continue;
                if (id && json_object_get(ids, id))
                    dup_ids++;
                else if (id)
                    json_object_set_new(ids, id, json_true());
                if (seen[a])
                    continue;
                seen[a] = 1;
                if (a < last)
                    violations++;
                last = a;
            }
            json_decref(ids);
            json_decref(msgs);
        }
        lost = 0;
        for (int a = 0; a < next; a++) {
            delivered += seen[a] && answered[a];
            lost += answered[a] && !seen[a];
        }
        if (!lost || dutil_wall_ms() > deadline)
            break;
        usleep(200000);
    }
    int st = dutil_stop(&pid, 15000, NULL);
    printf("crash test (seed %u): %d kill -9 (%d %s, %d %s, %d %s, %d %s; %d with deliveries "
           "pending, %d after checkpoints in that run, %d with segments in reused files)\n",
           start_seed, KILLS, kinds[0], kind_names[0], kinds[1], kind_names[1], kinds[2], kind_names[2],
           kinds[3], kind_names[3], with_pending, with_checkpoint, with_reused);
    printf("alerts answered 200: %d, delivered: %d, lost: %d, duplicate deliveries (same "
           "X-Firebridge-Delivery): %d, order violations: %d (other answers: %d)\n",
           n200, delivered, lost, dup_ids, violations, other);
    fflush(stdout);
    dutil_stop(&hc, 5000, NULL);
    ck_assert_msg(lost == 0,
                  "%d alerts answered 200 were never delivered (logs in %s; FBR_CRASH_SEED=%u)",
                  lost, dir, start_seed);
    ck_assert_msg(violations == 0, "%d order violations (logs in %s; FBR_CRASH_SEED=%u)",
                  violations, dir, start_seed);
    ck_assert_int_eq(delivered, n200);
    ck_assert_msg(with_reused > 0, "no kill hit a run whose segments reused dead ones' files");
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the last run exited with %d", st);
    dutil_rm_rf(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("crash");
    TCase *tc = tcase_create("journal");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, kill9_loses_nothing_answered_200);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
