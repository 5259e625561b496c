/*
 * test_service.c - service.c and main.c against a real notify socket: the test binds a unix
 * datagram socket, starts the real daemon (FBR_DAEMON) with NOTIFY_SOCKET pointing at it and
 * reads what arrives, as systemd would for a Type=notify unit (contrib/systemd).  Built with
 * libsystemd, READY=1 must come only once the listeners accept connections, STOPPING=1 when a
 * drain starts, and nothing at all when the daemon cannot listen; built without, nothing is ever
 * sent.
 */
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_util.h"
#include "firebridge/service.h"
#include "testsupport.h"

struct notify {
    int fd;
    char dir[64];
    char path[96]; /* fits sun_path */
};

static void notify_open(struct notify *n)
{
    dutil_tmpdir(n->dir, sizeof(n->dir), "fbr-notify");
    snprintf(n->path, sizeof(n->path), "%s/notify.sock", n->dir);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(n->fd, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", n->path);
    ck_assert_int_eq(bind(n->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    setenv("NOTIFY_SOCKET", n->path, 1);
}

static void notify_close(struct notify *n)
{
    unsetenv("NOTIFY_SOCKET");
    close(n->fd);
    dutil_rm_rf(n->dir);
}

/* Waits up to ms for one datagram; returns its length (text NUL-terminated in buf), or -1. */
static int notify_recv(struct notify *n, char *buf, size_t cap, int ms)
{
    struct pollfd p = {.fd = n->fd, .events = POLLIN};
    if (poll(&p, 1, ms) != 1)
        return -1;
    ssize_t got = recv(n->fd, buf, cap - 1, 0);
    ck_assert_int_ge(got, 0);
    buf[got] = '\0';
    return (int)got;
}

START_TEST(ready_only_after_listening)
{
    struct notify n;
    notify_open(&n);
    char dir[64], log[128], data[128];
    dutil_tmpdir(dir, sizeof(dir), "fbr-service");
    snprintf(log, sizeof(log), "%s/daemon.log", dir);
    snprintf(data, sizeof(data), "%s/data", dir);
    const char *args[] = {"--listen", "127.0.0.1:0", "--data-dir", data, NULL};
    pid_t pid = dutil_spawn_daemon(log, args);
    char msg[512];
    if (fbr_service_notify_supported()) {
        ck_assert_msg(notify_recv(&n, msg, sizeof(msg), 20000 * dutil_slow()) > 0,
                      "no notification; log:\n%s", dutil_slurp(log, NULL));
        ck_assert_msg(strstr(msg, "READY=1") != NULL, "first notification: %s", msg);
        /* at READY=1 the listener is already open: its port is logged, a connection succeeds
         * at once and /readyz answers */
        int port = dutil_wait_port(&pid, log, "listening on 127.0.0.1:", 1, 0, NULL);
        int fd = dutil_connect(port);
        ck_assert_int_ge(fd, 0);
        close(fd);
        char buf[2048];
        ck_assert_int_eq(dutil_get(port, "/readyz", buf, sizeof(buf)), 200);
        kill(pid, SIGTERM);
        ck_assert_int_gt(notify_recv(&n, msg, sizeof(msg), 10000 * dutil_slow()), 0);
        ck_assert_msg(strstr(msg, "STOPPING=1") != NULL, "after SIGTERM: %s", msg);
        dutil_assert_exit_zero(dutil_wait_exit(&pid, 15000 * dutil_slow(), NULL), log);
    } else {
        int port =
            dutil_wait_port(&pid, log, "listening on 127.0.0.1:", 200 * dutil_slow(), 50, NULL);
        ck_assert_int_gt(port, 0);
        ck_assert_int_eq(notify_recv(&n, msg, sizeof(msg), 1000), -1);
        dutil_assert_exit_zero(dutil_stop(&pid, 15000 * dutil_slow(), NULL), log);
    }
    notify_close(&n);
    dutil_rm_rf(dir);
}
END_TEST

/* A daemon that cannot open its listener never claims readiness. */
START_TEST(no_ready_when_listen_fails)
{
    int busy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(busy, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(busy, 1), 0);
    socklen_t len = sizeof(sa);
    getsockname(busy, (struct sockaddr *)&sa, &len);
    char listen_at[32];
    snprintf(listen_at, sizeof(listen_at), "127.0.0.1:%d", ntohs(sa.sin_port));

    struct notify n;
    notify_open(&n);
    char dir[64], log[128], data[128];
    dutil_tmpdir(dir, sizeof(dir), "fbr-service");
    snprintf(log, sizeof(log), "%s/daemon.log", dir);
    snprintf(data, sizeof(data), "%s/data", dir);
    const char *args[] = {"--listen", listen_at, "--data-dir", data, NULL};
    pid_t pid = dutil_spawn_daemon(log, args);
    int st = dutil_wait_exit(&pid, 20000 * dutil_slow(), NULL);
    ck_assert_msg(st != -1 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0),
                  "the daemon served although its port was taken; log:\n%s",
                  dutil_slurp(log, NULL));
    char msg[512];
    ck_assert_msg(notify_recv(&n, msg, sizeof(msg), 200) == -1, "notified: %s", msg);
    notify_close(&n);
    close(busy);
    dutil_rm_rf(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("service");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, ready_only_after_listening);
    tcase_add_test(tc, no_ready_when_listen_fails);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
