/*
 * test_shutdown.c - integration test of the clean-shutdown path of the whole data path (intake ->
 * rules -> events -> webhooks -> delivery -> client) without the write-ahead journal (--journal
 * off; with it, pending deliveries stay in the journal: tests/crash_journal.c restarts on it): it
 * starts the real firebridge binary (path in FBR_DAEMON) with one rule-less webhook on Any-Alert pointing at a scriptable test server
 * (tests/http_testsrv.c, on this process's event loop) that answers 503, posts alerts, sends
 * SIGTERM with a short --drain-timeout and checks that every accepted alert's delivery is in
 * <data-dir>/dead-letters.jsonl (mode 0600, in order, no secret in the log), that intake answers
 * 503 and /readyz 503 to requests still arriving on open connections during the drain, then
 * restarts the daemon with --replay-dead-letters on that same live file and a server answering
 * 204 and checks that all of them arrive, once each, in the original order.
 *
 * With FBR_VALGRIND=1 (meson test --setup=valgrind) the daemon runs under valgrind with
 * --error-exitcode, so the exit-status checks also catch memory errors of the shutdown path.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "firebridge/common.h"
#include "daemon_util.h"
#include "http_testsrv.h"
#include "testsupport.h"

#define API_KEY "shutdown-test-key"
#define URL_SECRET "URLSECRET4242"
#define HDR_SECRET "HDRSECRET7777"
#define N_ALERTS 20

static struct event_base *base;
static struct tsrv *srv;

/* Lets the test server work for ms milliseconds. */
static void pump(int ms)
{
    uint64_t end = fbr_now_ms() + (uint64_t)ms;
    do {
        event_base_loop(base, EVLOOP_NONBLOCK);
        struct timespec ts = {0, 2 * 1000000L};
        nanosleep(&ts, NULL);
    } while (fbr_now_ms() < end);
}

/* Starts the daemon with args, output to log; serves the test server while waiting for its port. */
static void daemon_start(struct dutil_daemon *d, const char *log, const char *const *args)
{
    memset(d, 0, sizeof(*d));
    snprintf(d->log, sizeof(d->log), "%s", log);
    d->pid = dutil_spawn_daemon(d->log, args);
    d->port = dutil_wait_port(&d->pid, d->log, "listening on 127.0.0.1:", 400 * dutil_slow(), 25,
                              pump);
}

static void daemon_kill(struct dutil_daemon *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
    }
}

static int alert_request(char *out, size_t cap, int i)
{
    char body[160];
    int blen = snprintf(body, sizeof(body),
                        "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e-%02d\","
                        "\"state_message\":\"alert %d\"}",
                        i, i);
    return snprintf(out, cap,
                    "POST /integrations/generic/20131114/alert/" API_KEY "/ops HTTP/1.1\r\n"
                    "Host: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                    blen, body);
}

/* A send that must go through whole. */
static void send_all(int fd, const char *buf, size_t len)
{
    ck_assert_int_eq(dutil_send_all(fd, buf, len), 0);
}

START_TEST(sigterm_saves_then_replay_delivers_in_order)
{
    base = event_base_new();
    srv = tsrv_new(base, NULL);
    tsrv_set_default(srv, (struct tsrv_reply){503, NULL, 0});
    char dir[64];
    dutil_tmpdir(dir, sizeof(dir), "fbr-shutdown");
    char cfg_path[128], data[128], log1[128], log2[128], dl[192];
    snprintf(cfg_path, sizeof(cfg_path), "%s/config.json", dir);
    snprintf(data, sizeof(data), "%s/data", dir);
    snprintf(log1, sizeof(log1), "%s/run1.log", dir);
    snprintf(log2, sizeof(log2), "%s/run2.log", dir);
    snprintf(dl, sizeof(dl), "%s/dead-letters.jsonl", data);
    FILE *f = fopen(cfg_path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f,
            "{\"api_keys\":[\"" API_KEY "\"],\"webhooks\":[{\"name\":\"all\","
            "\"event\":\"Any-Alert\",\"content_type\":\"text/plain\","
            "\"url\":\"http://127.0.0.1:%d/v2/room/sd/notification?auth_token=" URL_SECRET "\","
            "\"headers\":{\"Authorization\":\"Bearer " HDR_SECRET "\"},"
            "\"payload\":\"${{ALERT.entity_id}}\"}]}\n",
            tsrv_port(srv));
    fclose(f);

    /* run 1: the destination answers 503; SIGTERM with a 1 s drain */
    struct dutil_daemon d;
    char drain[16]; /* longer than the 200 ms (x slow) the test waits inside the drain */
    snprintf(drain, sizeof(drain), "%d", dutil_slow());
    const char *const args1[] = {"-c", cfg_path, "--journal", "off", "--listen", "127.0.0.1:0",
                                 "--data-dir", data,
                                 "--drain-timeout", drain, "--retry-initial", "100",
                                 "--retry-max-interval", "300", "--log-level", "debug", NULL};
    daemon_start(&d, log1, args1);
    char req[512], buf[4096];
    for (int i = 0; i < N_ALERTS; i++) {
        int fd = dutil_connect(d.port);
        ck_assert_int_ge(fd, 0);
        int n = alert_request(req, sizeof(req), i);
        send_all(fd, req, (size_t)n);
        int status = dutil_read_response(fd, buf, sizeof(buf));
        close(fd);
        ck_assert_msg(status == 200, "alert %d: status %d: %s", i, status, buf);
        pump(5);
    }
    pump(400 * dutil_slow()); /* a few 503s and retries */
    ck_assert_uint_ge(tsrv_nreqs(srv), 2);

    /* requests in progress when the drain begins: headers in, body incomplete */
    int busy_alert = dutil_connect(d.port), busy_ready = dutil_connect(d.port);
    ck_assert_int_ge(busy_alert, 0);
    ck_assert_int_ge(busy_ready, 0);
    int n = alert_request(req, sizeof(req), 99);
    send_all(busy_alert, req, (size_t)n - 5);
    const char *ready = "GET /readyz HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab";
    send_all(busy_ready, ready, strlen(ready));
    pump(150 * dutil_slow());
    kill(d.pid, SIGTERM);
    pump(200 * dutil_slow());
    send_all(busy_alert, req + n - 5, 5);
    ck_assert_int_eq(dutil_read_response(busy_alert, buf, sizeof(buf)), 503);
    ck_assert_ptr_nonnull(strstr(buf, "draining"));
    ck_assert_ptr_nonnull(strcasestr(buf, "Connection: close"));
    ck_assert_ptr_nonnull(strcasestr(buf, "Retry-After:"));
    send_all(busy_ready, "cd", 2);
    ck_assert_int_eq(dutil_read_response(busy_ready, buf, sizeof(buf)), 503);
    ck_assert_ptr_nonnull(strstr(buf, "draining"));
    close(busy_alert);
    close(busy_ready);

    int st = dutil_wait_exit(&d.pid, 8000 * dutil_slow(), pump);
    if (st == -1)
        daemon_kill(&d);
    char *log = dutil_slurp(log1, NULL);
    ck_assert_msg(st != -1, "daemon still running after the drain timeout:\n%s", log);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d:\n%s", st, log);
    ck_assert_ptr_nonnull(strstr(log, "drain timeout"));
    char saved[64];
    snprintf(saved, sizeof(saved), "saved %d undelivered deliveries", N_ALERTS);
    ck_assert_msg(strstr(log, saved) != NULL, "no '%s' in:\n%s", saved, log);
    ck_assert_ptr_nonnull(strstr(log, "--replay-dead-letters"));
    ck_assert_msg(strstr(log, URL_SECRET) == NULL, "URL token in the log");
    ck_assert_msg(strstr(log, HDR_SECRET) == NULL, "Authorization value in the log");
    ck_assert_msg(strstr(log, API_KEY) == NULL, "intake API key (alert path) in the log");
    ck_assert_ptr_nonnull(strstr(log, "/integrations/generic/20131114/alert/***/ops"));
    free(log);

    struct stat sb;
    ck_assert_int_eq(stat(dl, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0600);
    json_t *lines = dutil_read_jsonl(dl);
    ck_assert_uint_eq(json_array_size(lines), N_ALERTS);
    char ids[N_ALERTS][40];
    for (size_t i = 0; i < N_ALERTS; i++) {
        char want[16];
        snprintf(want, sizeof(want), "e-%02zu", i);
        ck_assert_str_eq(dutil_jstr(lines, i, "body"), want);
        ck_assert_ptr_nonnull(strstr(dutil_jstr(lines, i, "url"), URL_SECRET)); /* replayable whole */
        const char *reason = dutil_jstr(lines, i, "reason");
        ck_assert_msg(strncmp(reason, "shutdown: undelivered after drain", 33) == 0, "reason %s",
                      reason);
        snprintf(ids[i], sizeof(ids[i]), "%s", dutil_jstr(lines, i, "id"));
    }
    json_decref(lines);

    /* run 2: the destination works; replay the live file */
    tsrv_set_default(srv, (struct tsrv_reply){204, NULL, 0});
    size_t before = tsrv_nreqs(srv);
    const char *const args2[] = {"-c", cfg_path, "--journal", "off", "--listen", "127.0.0.1:0",
                                 "--data-dir", data,
                                 "--drain-timeout", "5", "--replay-dead-letters", dl, NULL};
    daemon_start(&d, log2, args2);
    uint64_t end = fbr_now_ms() + 10000u * (unsigned)dutil_slow();
    while (tsrv_nreqs(srv) - before < N_ALERTS && fbr_now_ms() < end)
        pump(10);
    ck_assert_uint_eq(tsrv_nreqs(srv) - before, N_ALERTS);
    for (size_t i = 0; i < N_ALERTS; i++) {
        const struct tsrv_req *r = tsrv_req(srv, before + i);
        char want[16];
        snprintf(want, sizeof(want), "e-%02zu", i);
        ck_assert_str_eq(r->body, want);
        ck_assert_str_eq(r->delivery_id, ids[i]);
        ck_assert_str_eq(r->auth, "Bearer " HDR_SECRET);
    }
    kill(d.pid, SIGTERM);
    st = dutil_wait_exit(&d.pid, 8000 * dutil_slow(), pump);
    if (st == -1)
        daemon_kill(&d);
    log = dutil_slurp(log2, NULL);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d:\n%s", st, log);
    ck_assert_ptr_nonnull(strstr(log, "drained"));
    ck_assert_ptr_null(strstr(log, "saved "));
    ck_assert_msg(strstr(log, URL_SECRET) == NULL, "URL token in the log");
    free(log);
    /* the replayed file was moved aside whole; nothing died again */
    ck_assert_int_ne(access(dl, F_OK), 0);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "cat %s/dead-letters.jsonl.replayed-* | wc -l", data);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    int count = -1;
    ck_assert_int_eq(fscanf(p, "%d", &count), 1);
    pclose(p);
    ck_assert_int_eq(count, N_ALERTS);

    tsrv_free(srv);
    srv = NULL;
    event_base_free(base);
    dutil_rm_rf(dir);
}
END_TEST

/* Runs the daemon to its exit (it is expected to fail at start); returns the wait status. */
static int run_to_exit(const char *log, const char *const *args)
{
    const char *exe = getenv("FBR_DAEMON");
    ck_assert_msg(exe != NULL, "FBR_DAEMON not set (run through meson test)");
    const char *argv[24];
    int n = 0;
    argv[n++] = exe;
    for (int i = 0; args[i] && n < 23; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        alarm(20);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return st;
}

static void write_dead_letters(const char *path, int n, const char *extra)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < n; i++)
        fprintf(f,
                "{\"id\":\"seed%02d\",\"method\":\"POST\",\"url\":\"http://127.0.0.1:9/v2/room/r/"
                "notification?auth_token=" URL_SECRET "\",\"headers\":[],\"content_type\":"
                "\"text/plain\",\"body\":\"b%d\"}\n",
                i, i);
    if (extra)
        fputs(extra, f);
    fclose(f);
}

/*
 * A start that fails after a replay queued deliveries (the listen address is taken) writes them
 * back to the live dead-letter file in order, so the same command works once the address is
 * free; a replay that fails on a bad line leaves the file where it was, byte for byte, and
 * queues nothing twice.
 */
START_TEST(failed_start_keeps_dead_letters)
{
    char dir[64];
    dutil_tmpdir(dir, sizeof(dir), "fbr-shutdown");
    char data[128], dl[192], log[128], cmd[400];
    snprintf(data, sizeof(data), "%s/data", dir);
    snprintf(dl, sizeof(dl), "%s/dead-letters.jsonl", data);
    snprintf(log, sizeof(log), "%s/run.log", dir);
    ck_assert_int_eq(mkdir(data, 0700), 0);

    /* the listen address is taken */
    int busy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(busy, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(busy, 4), 0);
    socklen_t sl = sizeof(sa);
    ck_assert_int_eq(getsockname(busy, (struct sockaddr *)&sa, &sl), 0);
    char listen_addr[32];
    snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%d", ntohs(sa.sin_port));
    write_dead_letters(dl, 3, NULL);
    const char *const args[] = {"--journal", "off", "--listen", listen_addr, "--data-dir", data,
                                "--replay-dead-letters", dl, NULL};
    int st = run_to_exit(log, args);
    close(busy);
    char *text = dutil_slurp(log, NULL);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exit status %d:\n%s", st, text);
    ck_assert_ptr_nonnull(strstr(text, "saved 3 undelivered deliveries"));
    ck_assert_msg(strstr(text, URL_SECRET) == NULL, "URL token in the log");
    free(text);
    json_t *lines = dutil_read_jsonl(dl);
    ck_assert_uint_eq(json_array_size(lines), 3);
    for (size_t i = 0; i < 3; i++) {
        char id[16], body[16];
        snprintf(id, sizeof(id), "seed%02zu", i);
        snprintf(body, sizeof(body), "b%zu", i);
        ck_assert_str_eq(dutil_jstr(lines, i, "id"), id);
        ck_assert_str_eq(dutil_jstr(lines, i, "body"), body);
        ck_assert_ptr_nonnull(strstr(dutil_jstr(lines, i, "reason"), "shutdown: the start failed"));
    }
    json_decref(lines);

    /* a bad line: nothing is written back, the file stays as it was */
    snprintf(cmd, sizeof(cmd), "rm -f %s/dead-letters.jsonl*", data);
    ck_assert_int_eq(system(cmd), 0);
    write_dead_letters(dl, 2, "{not json\n");
    char *before = dutil_slurp(dl, NULL);
    const char *const args2[] = {"--journal", "off", "--listen", "127.0.0.1:0", "--data-dir", data,
                                 "--replay-dead-letters", dl, NULL};
    st = run_to_exit(log, args2);
    text = dutil_slurp(log, NULL);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exit status %d:\n%s", st, text);
    ck_assert_ptr_nonnull(strstr(text, "line 3"));
    ck_assert_ptr_null(strstr(text, "saved "));
    free(text);
    char *after = dutil_slurp(dl, NULL);
    ck_assert_str_eq(after, before);
    free(before);
    free(after);
    snprintf(cmd, sizeof(cmd), "test $(ls %s | grep -c replayed) -eq 0", data);
    ck_assert_int_eq(system(cmd), 0);

    dutil_rm_rf(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("shutdown");
    TCase *tc = tcase_create("daemon");
    tcase_set_timeout(tc, 55 * dutil_slow());
    tcase_add_test(tc, sigterm_saves_then_replay_delivers_in_order);
    tcase_add_test(tc, failed_start_keeps_dead_letters);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
