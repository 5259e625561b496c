/*
 * test_client_e2e.c - the outbound client's resend rules through the real daemon: the firebridge
 * binary delivers alerts to a hostile chat server (http_testsrv on a thread of this test,
 * scripted by each request's place on its connection) and the test reads what the server
 * received and answered (every request with its X-Firebridge-Delivery id) and the daemon's
 * /metrics.  test_client checks the same rules on the client alone; here they hold end to end:
 *  - a request queued behind an answer that closes its connection was not processed: it is moved
 *    to another connection (firebridge_client_requests_moved_total) and delivered exactly once;
 *  - a 408 to the first request on a reused connection (the server's idle timeout) is sent once
 *    more on a new connection; a 408 on a fresh connection is the answer (retried with backoff,
 *    retries_total{reason="http_408"}, README "Retries");
 *  - moves end at the attempt's deadline (connect plus request timeout): a request moved after
 *    it fails as timed out and the delivery engine retries it.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "daemon_util.h"
#include "http_testsrv.h"
#include "testsupport.h"

#define KEY "client-e2e-key"
#define ALERT_PATH "/integrations/generic/20131114/alert/" KEY "/rk"

#define DELIVERED "firebridge_deliveries_total{outcome=\"delivered\"}"
#define ATTEMPTS "firebridge_delivery_attempts_total"
#define MOVED "firebridge_client_requests_moved_total"
#define REQUEUED "firebridge_client_requests_requeued_total"
#define RETRIED(reason) "firebridge_delivery_retries_total{reason=\"" reason "\"}"

/* The client's counters the tests assert on, read from the daemon's /metrics before it stops;
 * retried counts the retries of one reason (a RETRIED(...) name), 0 when retry is NULL. */
struct counts {
    long long moved, requeued, attempts, retried;
};

static struct counts read_counts(const struct dutil_daemon *d, const char *retry)
{
    return (struct counts){dutil_metric(d->port, MOVED), dutil_metric(d->port, REQUEUED),
                           dutil_metric(d->port, ATTEMPTS),
                           retry ? dutil_metric(d->port, retry) : 0};
}

static const char r408[] =
    "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/* ---- the chat server, on a thread of its own ---------------------------------------------- */

struct sink {
    struct event_base *base;
    struct tsrv *srv;
    pthread_t thread;
    atomic_int stop;
};

static void *sink_main(void *arg)
{
    struct sink *k = arg;
    while (!atomic_load(&k->stop))
        event_base_loop(k->base, EVLOOP_ONCE); /* the loop's 20 ms tick bounds each pass */
    return NULL;
}

/* A new server answering 204 (keep-alive) unless scripted: conn (n replies, may be 0) by a
 * request's place on its connection, then the path scripts the caller adds before sink_run(). */
static void sink_new(struct sink *k, const struct tsrv_reply *conn, size_t n)
{
    memset(k, 0, sizeof(*k));
    k->base = tsrv_loop_new();
    k->srv = tsrv_new(k->base, NULL);
    if (n)
        tsrv_script_conn(k->srv, conn, n);
}

static void sink_run(struct sink *k)
{
    ck_assert_int_eq(pthread_create(&k->thread, NULL, sink_main, k), 0);
}

/* Stops the server's thread: its records can be read from here on. */
static void sink_stop(struct sink *k)
{
    atomic_store(&k->stop, 1);
    pthread_join(k->thread, NULL);
}

static void sink_free(struct sink *k)
{
    tsrv_free(k->srv);
    tsrv_loop_free(k->base);
}

/* Every request the server received, one line each, for failure messages (static buffer). */
static const char *sink_dump(const struct sink *k)
{
    static char buf[16384];
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < tsrv_nreqs(k->srv) && len + 200 < sizeof(buf); i++) {
        const struct tsrv_req *r = tsrv_req(k->srv, i);
        len += (size_t)snprintf(buf + len, sizeof(buf) - len, "\n  conn %u #%u %s id %s: %d",
                                r->conn_no, r->nth, r->path, r->delivery_id, r->answered);
    }
    return buf;
}

/* The requests for room, in the order received: up to cap into out; returns how many. */
static size_t room_reqs(const struct sink *k, const char *room, const struct tsrv_req **out,
                        size_t cap)
{
    char path[64];
    snprintf(path, sizeof(path), "/v2/room/%s/notification", room);
    size_t n = 0;
    for (size_t i = 0; i < tsrv_nreqs(k->srv); i++) {
        const struct tsrv_req *r = tsrv_req(k->srv, i);
        if (strncmp(r->path, path, strlen(path)) == 0 && r->path[strlen(path)] == '?') {
            if (n < cap)
                out[n] = r;
            n++;
        }
    }
    return n;
}

/* ---- the daemon ------------------------------------------------------------------------- */

/* Starts the daemon with one webhook per alert, to room <entity_id> on the sink, and flags. */
static void daemon_start(struct dutil_daemon *d, char *cfg, const struct sink *k,
                         const char *const *flags)
{
    char text[512];
    snprintf(text, sizeof(text),
             "{\"webhooks\":[{\"name\":\"room\",\"event\":\"Any-Alert\","
             "\"url\":\"http://127.0.0.1:%d/v2/room/${{ALERT.entity_id}}/notification"
             "?auth_token=tok\",\"payload\":{\"message\":\"${{ALERT.entity_id}}\"}}]}",
             tsrv_port(k->srv));
    int fd = mkstemp(cfg);
    ck_assert_int_ge(fd, 0);
    close(fd);
    dutil_write_file(cfg, text);
    const char *args[40] = {"--api-key", KEY, "--config", cfg};
    int n = 4;
    for (int i = 0; flags[i] && n < 39; i++)
        args[n++] = flags[i];
    args[n] = NULL;
    dutil_daemon_start(d, "fbr-client-e2e", args);
}

/* Posts one alert whose entity (and so room) is room; asserts the daemon took it. */
static void post_alert(const struct dutil_daemon *d, const char *room)
{
    char body[256], buf[4096];
    snprintf(body, sizeof(body), "{\"message_type\":\"CRITICAL\",\"entity_id\":\"%s\"}", room);
    ck_assert_int_eq(dutil_post(d->port, ALERT_PATH, NULL, body, buf, sizeof(buf)), 200);
}

/* Waits (a generous bound, no timing asserted) until series reaches want; returns its value. */
static long long wait_metric(const struct dutil_daemon *d, const char *series, long long want)
{
    long long v = -1;
    for (int i = 0; i < 1500 * dutil_slow(); i++) {
        v = dutil_metric(d->port, series);
        if (v >= want)
            break;
        dutil_msleep(20);
    }
    return v;
}

/* ---- (a) requests behind a closing answer are moved, delivered once ------------------------ */

/*
 * --pool-size 1 --pipeline 4: every connection's first request is answered 204 (keep-alive, the
 * connection may now carry pipelined requests); its second is held until a request has arrived
 * behind it, then answered 204 with "Connection: close", and the server shuts its side and reads
 * on without answering anything more.  Each of 12 alerts (12 rooms) is answered 2xx exactly once,
 * every request of a room carries one delivery id, requests were moved (and nothing sent again
 * or retried), and every unanswered request sat behind the closing answer.
 */
START_TEST(requests_behind_a_closing_answer_moved_and_delivered_once)
{
    const struct tsrv_reply script[] = {
        {.status = 204},
        {.status = 204, .then = TSRV_THEN_LINGER, .hold_ms = 2000, .hold_for_next = 1},
    };
    struct sink k;
    sink_new(&k, script, 2);
    sink_run(&k);
    struct dutil_daemon d;
    char cfg[] = "/tmp/fbr-client-e2e-cfg-XXXXXX";
    const char *const flags[] = {"--pool-size", "1", "--pipeline", "4", NULL};
    daemon_start(&d, cfg, &k, flags);
    enum { N = 12 };
    char rooms[N][8];
    for (int i = 0; i < N; i++) {
        snprintf(rooms[i], sizeof(rooms[i]), "r%d", i);
        post_alert(&d, rooms[i]);
    }
    long long delivered = wait_metric(&d, DELIVERED, N);
    struct counts c = read_counts(&d, NULL);
    dutil_daemon_stop(&d);
    sink_stop(&k);
    const char *dump = sink_dump(&k);
    ck_assert_msg(delivered == N, "delivered %lld of %d; sink:%s", delivered, N, dump);
    ck_assert_msg(c.moved > 0, "nothing moved; sink:%s", dump);
    ck_assert_msg(c.requeued == 0 && c.attempts == N, "requeued %lld, attempts %lld; sink:%s",
                  c.requeued, c.attempts, dump);
    const char *ids[N];
    for (int i = 0; i < N; i++) {
        const struct tsrv_req *r[8];
        size_t n = room_reqs(&k, rooms[i], r, 8);
        ck_assert_msg(n >= 1 && n <= 8, "room %s: %zu requests; sink:%s", rooms[i], n, dump);
        int answered = 0;
        for (size_t j = 0; j < n; j++) {
            ck_assert_msg(r[j]->delivery_id[0] && strcmp(r[j]->delivery_id, r[0]->delivery_id) == 0,
                          "room %s: delivery ids differ; sink:%s", rooms[i], dump);
            answered += r[j]->answered != 0;
            ck_assert_msg(r[j]->answered == 0 || r[j]->answered == 204, "sink:%s", dump);
        }
        ck_assert_msg(answered == 1, "room %s answered %d times; sink:%s", rooms[i], answered,
                      dump);
        ids[i] = r[0]->delivery_id;
        for (int j = 0; j < i; j++)
            ck_assert_str_ne(ids[i], ids[j]);
    }
    /* what the server read and left unanswered was behind the closing answer, and moved */
    long long unanswered = 0;
    for (size_t i = 0; i < tsrv_nreqs(k.srv); i++) {
        const struct tsrv_req *r = tsrv_req(k.srv, i);
        if (!r->answered) {
            unanswered++;
            ck_assert_msg(r->nth >= 3, "sink:%s", dump);
        }
    }
    ck_assert_msg(unanswered >= 1 && unanswered <= c.moved, "unanswered %lld, moved %lld; sink:%s",
                  unanswered, c.moved, dump);
    sink_free(&k);
    unlink(cfg);
}
END_TEST

/* ---- (b) a 408 on a reused connection is retried once; on a fresh one it is the answer ----- */

/*
 * Default --pipeline 1.  The first alert is answered 204 on a new connection, which stays open;
 * the second goes out on it and gets "408 Request Timeout" with "Connection: close" (the
 * server's idle timeout crossing the reuse): the client sends it once more on a new connection
 * (requests_requeued_total 1), where it is answered 204.  The delivery engine never sees the 408:
 * two attempts in all, no http_408 retry.
 */
START_TEST(answer_408_on_reused_connection_sent_again)
{
    const struct tsrv_reply script[] = {
        {.status = 204},
        {.raw = r408, .then = TSRV_THEN_LINGER},
    };
    struct sink k;
    sink_new(&k, script, 2);
    sink_run(&k);
    struct dutil_daemon d;
    char cfg[] = "/tmp/fbr-client-e2e-cfg-XXXXXX";
    const char *const flags[] = {"--retry-initial", "100", NULL};
    daemon_start(&d, cfg, &k, flags);
    post_alert(&d, "first");
    ck_assert_int_eq(wait_metric(&d, DELIVERED, 1), 1);
    post_alert(&d, "second");
    long long delivered = wait_metric(&d, DELIVERED, 2);
    struct counts c = read_counts(&d, RETRIED("http_408"));
    dutil_daemon_stop(&d);
    sink_stop(&k);
    const char *dump = sink_dump(&k);
    ck_assert_msg(delivered == 2, "delivered %lld; sink:%s", delivered, dump);
    ck_assert_msg(c.requeued == 1 && c.retried == 0 && c.attempts == 2 && c.moved == 0,
                  "requeued %lld, http_408 retries %lld, attempts %lld, moved %lld; sink:%s",
                  c.requeued, c.retried, c.attempts, c.moved, dump);
    const struct tsrv_req *r[4];
    ck_assert_msg(room_reqs(&k, "first", r, 4) == 1, "sink:%s", dump);
    ck_assert_int_eq(r[0]->answered, 204);
    unsigned first_conn = r[0]->conn_no;
    ck_assert_msg(room_reqs(&k, "second", r, 4) == 2, "sink:%s", dump);
    /* the same delivery twice: 408 as the second request of the reused connection, then 204 as
     * the first of a new one */
    ck_assert_str_eq(r[0]->delivery_id, r[1]->delivery_id);
    ck_assert_msg(r[0]->conn_no == first_conn && r[0]->nth == 2 && r[0]->answered == 408,
                  "sink:%s", dump);
    ck_assert_msg(r[1]->conn_no != first_conn && r[1]->nth == 1 && r[1]->answered == 204,
                  "sink:%s", dump);
    sink_free(&k);
    unlink(cfg);
}
END_TEST

/*
 * The first request of a fresh connection is answered 408: no idle timeout can have crossed it,
 * so it is the answer, and README's "Retries" applies: the delivery engine retries it with
 * backoff (retries_total{reason="http_408"} 1, a warn line naming "http 408"), the client sends
 * nothing again by itself (requests_requeued_total 0); the second attempt, on a new connection,
 * is answered 204.
 */
START_TEST(answer_408_on_fresh_connection_is_the_answer)
{
    const struct tsrv_reply first[] = {{.raw = r408, .then = TSRV_THEN_LINGER}};
    struct sink k;
    sink_new(&k, NULL, 0);
    tsrv_script(k.srv, "/", first, 1);
    sink_run(&k);
    struct dutil_daemon d;
    char cfg[] = "/tmp/fbr-client-e2e-cfg-XXXXXX";
    const char *const flags[] = {"--retry-initial", "100", NULL};
    daemon_start(&d, cfg, &k, flags);
    post_alert(&d, "one");
    long long delivered = wait_metric(&d, DELIVERED, 1);
    struct counts c = read_counts(&d, RETRIED("http_408"));
    dutil_assert_exit_zero(dutil_stop(&d.pid, 15000 * dutil_slow(), NULL), d.log);
    sink_stop(&k);
    const char *dump = sink_dump(&k);
    ck_assert_msg(delivered == 1, "delivered %lld; sink:%s", delivered, dump);
    ck_assert_msg(c.requeued == 0 && c.retried == 1 && c.attempts == 2 && c.moved == 0,
                  "requeued %lld, http_408 retries %lld, attempts %lld, moved %lld; sink:%s",
                  c.requeued, c.retried, c.attempts, c.moved, dump);
    const struct tsrv_req *r[4];
    ck_assert_msg(room_reqs(&k, "one", r, 4) == 2, "sink:%s", dump);
    ck_assert_str_eq(r[0]->delivery_id, r[1]->delivery_id);
    ck_assert_msg(r[0]->nth == 1 && r[0]->answered == 408, "sink:%s", dump);
    ck_assert_msg(r[1]->nth == 1 && r[1]->answered == 204 && r[1]->conn_no != r[0]->conn_no,
                  "sink:%s", dump);
    char *log = dutil_slurp(d.log, NULL);
    ck_assert_msg(strstr(log, "is failing: attempt 1 of this delivery failed: http 408"), "%s",
                  log);
    free(log);
    dutil_rm_rf(d.dir);
    sink_free(&k);
    unlink(cfg);
}
END_TEST

/* ---- (c) moves end at the attempt's deadline ----------------------------------------------- */

/*
 * --pool-size 1 --pipeline 4, --connect-timeout C, --request-timeout R: a request may be moved
 * until C + R after it began; a move after that fails it as timed out.  Each connection's first
 * request is answered 204 at once, its second is held 0.75 R (within every request timeout) and
 * answered 204 with "Connection: close".  After a warm-up alert (w) on connection 1, alerts h, a,
 * b, v go out on it pipelined: h is held, then a, b and v are moved (3 moves).  On connection 2, a
 * is answered, b held, v pipelined behind it: when b's answer closes the connection v is
 * 1.5 R old, past C + R = 1.125 R, and fails ("not sent ... within C+R ms") instead of a fourth
 * move; the delivery engine retries it (retries_total{reason="timeout"} 1) and the retry, on
 * connection 3, is answered 204: every alert delivered once.
 */
START_TEST(moves_end_at_the_attempt_deadline)
{
    unsigned req_ms = 4000 * (unsigned)dutil_slow(), conn_ms = req_ms / 8;
    const struct tsrv_reply script[] = {
        {.status = 204},
        {.status = 204, .then = TSRV_THEN_LINGER, .hold_ms = req_ms * 3 / 4},
    };
    struct sink k;
    sink_new(&k, script, 2);
    sink_run(&k);
    struct dutil_daemon d;
    char cfg[] = "/tmp/fbr-client-e2e-cfg-XXXXXX", conn_arg[16], req_arg[16];
    snprintf(conn_arg, sizeof(conn_arg), "%u", conn_ms);
    snprintf(req_arg, sizeof(req_arg), "%u", req_ms);
    const char *const flags[] = {"--pool-size", "1", "--pipeline", "4", "--connect-timeout",
                                 conn_arg, "--request-timeout", req_arg, "--retry-initial", "100",
                                 NULL};
    daemon_start(&d, cfg, &k, flags);
    post_alert(&d, "w");
    ck_assert_int_eq(wait_metric(&d, DELIVERED, 1), 1);
    static const char *const rooms[] = {"h", "a", "b", "v"};
    for (int i = 0; i < 4; i++)
        post_alert(&d, rooms[i]);
    long long delivered = wait_metric(&d, DELIVERED, 5);
    struct counts c = read_counts(&d, RETRIED("timeout"));
    dutil_assert_exit_zero(dutil_stop(&d.pid, 15000 * dutil_slow(), NULL), d.log);
    sink_stop(&k);
    const char *dump = sink_dump(&k);
    ck_assert_msg(delivered == 5, "delivered %lld; sink:%s", delivered, dump);
    ck_assert_msg(c.moved == 3 && c.retried == 1 && c.attempts == 6 && c.requeued == 0,
                  "moved %lld, timeout retries %lld, attempts %lld, requeued %lld; sink:%s",
                  c.moved, c.retried, c.attempts, c.requeued, dump);
    const struct tsrv_req *r[4];
    ck_assert_msg(room_reqs(&k, "v", r, 4) == 3, "sink:%s", dump);
    ck_assert_msg(r[0]->nth == 5 && !r[0]->answered && r[1]->nth == 3 && !r[1]->answered &&
                      r[2]->nth == 1 && r[2]->answered == 204,
                  "sink:%s", dump);
    ck_assert_str_eq(r[0]->delivery_id, r[2]->delivery_id);
    ck_assert_str_eq(r[1]->delivery_id, r[2]->delivery_id);
    for (int i = 0; i < 3; i++) { /* h, a, b: answered once */
        size_t n = room_reqs(&k, rooms[i], r, 4), answered = 0;
        for (size_t j = 0; j < n && j < 4; j++)
            answered += r[j]->answered == 204;
        ck_assert_msg(answered == 1, "room %s; sink:%s", rooms[i], dump);
    }
    char want[160];
    snprintf(want, sizeof(want),
             "failed: not sent to 127.0.0.1:%d within %u ms: each connection it was queued on "
             "ended first",
             tsrv_port(k.srv), conn_ms + req_ms);
    char *log = dutil_slurp(d.log, NULL);
    ck_assert_msg(strstr(log, want), "no \"%s\" in the log:\n%s", want, log);
    free(log);
    dutil_rm_rf(d.dir);
    sink_free(&k);
    unlink(cfg);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("client_e2e");
    TCase *tc = tcase_create("daemon");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, requests_behind_a_closing_answer_moved_and_delivered_once);
    tcase_add_test(tc, answer_408_on_reused_connection_sent_again);
    tcase_add_test(tc, answer_408_on_fresh_connection_is_the_answer);
    tcase_add_test(tc, moves_end_at_the_attempt_deadline);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
