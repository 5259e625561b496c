/*
 * daemon_util.c - the process, file and loopback HTTP helpers shared by the integration tests
 * that run the real daemon and hipchat-server (see daemon_util.h).  Blocking and simple on
 * purpose: the tests talk to another process, never to their own event loop, except through the
 * idle callback a caller passes while it waits.
 */
#include "daemon_util.h"

#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WAIT_STEP_MS 20
#define LOG_TAIL 3000

int dutil_under_valgrind(void)
{
    const char *v = getenv("FBR_VALGRIND");
    return v && *v == '1';
}

int dutil_slow(void)
{
    return dutil_under_valgrind() ? 10 : 1;
}

void dutil_msleep(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

char *dutil_slurp(const char *path, size_t *len)
{
    size_t n = 0, cap = 1;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (f) {
        char tmp[65536];
        size_t got;
        while ((got = fread(tmp, 1, sizeof(tmp), f)) > 0) {
            if (n + got + 1 > cap) {
                cap = (n + got + 1) * 2;
                buf = realloc(buf, cap);
                ck_assert_ptr_nonnull(buf);
            }
            memcpy(buf + n, tmp, got);
            n += got;
            buf[n] = '\0';
        }
        fclose(f);
    }
    if (len)
        *len = n;
    return buf;
}

void dutil_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

void dutil_tmpdir(char *dir, size_t cap, const char *prefix)
{
    snprintf(dir, cap, "/tmp/%s-XXXXXX", prefix);
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

void dutil_rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Forks and execs argv with stdin from in (-1: inherited) and stdout and stderr to out and err;
 * the parent's descriptors are close-on-exec, so the child keeps only these three. */
static pid_t spawn_fds(const char *const *argv, int in, int out, int err, int die_with_parent)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (die_with_parent)
            prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (in >= 0)
            dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

pid_t dutil_spawn(const char *const *argv, const char *out_path, const char *err_path,
                  int die_with_parent)
{
    int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int err = strcmp(out_path, err_path) == 0
                  ? out
                  : open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    pid_t pid = spawn_fds(argv, -1, out, err, die_with_parent);
    if (err != out)
        close(err);
    close(out);
    return pid;
}

/* argv (room for 48) for the daemon with args, wrapped in valgrind under dutil_under_valgrind(). */
static void daemon_argv(const char **argv, const char *const *args)
{
    const char *exe = getenv("FBR_DAEMON");
    ck_assert_msg(exe != NULL, "FBR_DAEMON not set (run through meson test)");
    int n = 0;
    if (dutil_under_valgrind()) {
        argv[n++] = "valgrind";
        argv[n++] = "--error-exitcode=99";
        argv[n++] = "--leak-check=full";
        argv[n++] = "--errors-for-leak-kinds=definite";
        argv[n++] = "--quiet";
    }
    argv[n++] = exe;
    for (int i = 0; args && args[i] && n < 46; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
}

pid_t dutil_spawn_daemon(const char *log, const char *const *args)
{
    const char *argv[48];
    daemon_argv(argv, args);
    return dutil_spawn(argv, log, log, 0);
}

/* The daemon with args, its stdout and stderr through a pipe to a `cat` writing log (its pid in
 * *cat); both die with the test process.  Returns the daemon's pid. */
static pid_t spawn_daemon_piped(const char *log, const char *const *args, pid_t *cat)
{
    const char *argv[48];
    daemon_argv(argv, args);
    int fds[2];
    ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
    int logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ck_assert_int_ge(logfd, 0);
    const char *cat_argv[] = {"cat", NULL};
    *cat = spawn_fds(cat_argv, fds[0], logfd, 2, 1);
    close(logfd);
    pid_t pid = spawn_fds(argv, -1, fds[1], fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    return pid;
}

static void wait_a_while(dutil_idle_fn idle, int ms)
{
    if (idle)
        idle(ms);
    else
        dutil_msleep(ms);
}

/* The last LOG_TAIL bytes of a log, for failure messages (leaked: the test is ending). */
static const char *log_tail(const char *path)
{
    size_t len;
    const char *log = dutil_slurp(path, &len);
    return log + (len > LOG_TAIL ? len - LOG_TAIL : 0);
}

int dutil_wait_port(pid_t *pid, const char *log, const char *marker, int tries, int every_ms,
                    dutil_idle_fn idle)
{
    size_t mlen = strlen(marker);
    for (int i = 0; i < tries; i++) {
        char *text = dutil_slurp(log, NULL);
        char *p = strstr(text, marker);
        int port = p ? atoi(p + mlen) : 0;
        free(text);
        if (port > 0)
            return port;
        int st;
        if (waitpid(*pid, &st, WNOHANG) == *pid) {
            *pid = 0;
            ck_abort_msg("process exited at start (status 0x%x); %s:\n%s", st, log,
                         log_tail(log));
        }
        wait_a_while(idle, every_ms);
    }
    ck_abort_msg("no port reported in %s", log);
    return 0;
}

int dutil_wait_exit(pid_t *pid, int ms, dutil_idle_fn idle)
{
    for (int waited = 0; waited < ms; waited += WAIT_STEP_MS) {
        int st;
        if (waitpid(*pid, &st, WNOHANG) == *pid) {
            *pid = 0;
            return st;
        }
        wait_a_while(idle, WAIT_STEP_MS);
    }
    return -1;
}

int dutil_stop(pid_t *pid, int ms, dutil_idle_fn idle)
{
    if (*pid <= 0)
        return 0;
    kill(*pid, SIGTERM);
    int st = dutil_wait_exit(pid, ms, idle);
    if (st == -1) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
        *pid = 0;
    }
    return st;
}

void dutil_assert_exit_zero(int st, const char *log)
{
    ck_assert_msg(st != -1, "process did not exit after SIGTERM; log tail:\n%s", log_tail(log));
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status 0x%x; log tail:\n%s", st,
                  log_tail(log));
}

void dutil_daemon_start_opts(struct dutil_daemon *d, const char *prefix, const char *const *extra,
                             const struct dutil_daemon_opts *opts)
{
    static const struct dutil_daemon_opts defaults = {0};
    if (!opts)
        opts = &defaults;
    memset(d, 0, sizeof(*d));
    if (opts->dir) {
        snprintf(d->dir, sizeof(d->dir), "%s", opts->dir);
    } else {
        dutil_tmpdir(d->dir, sizeof(d->dir), prefix);
        d->own_dir = 1;
    }
    snprintf(d->log, sizeof(d->log), "%s/%s", d->dir, opts->log_name ? opts->log_name : "log");
    char data[96];
    snprintf(data, sizeof(data), "%s/data", d->dir);
    const char *args[48] = {"--listen", "127.0.0.1:0", "--data-dir", data};
    int n = 4;
    for (int i = 0; extra && extra[i] && n < 40; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    d->pid = opts->log_pipe ? spawn_daemon_piped(d->log, args, &d->log_pid)
                            : dutil_spawn_daemon(d->log, args);
    d->port = dutil_wait_port(&d->pid, d->log, "listening on 127.0.0.1:", 200 * dutil_slow(), 50,
                              NULL);
}

void dutil_daemon_start(struct dutil_daemon *d, const char *prefix, const char *const *extra)
{
    dutil_daemon_start_opts(d, prefix, extra, NULL);
}

void dutil_daemon_stop(struct dutil_daemon *d)
{
    if (d->pid <= 0)
        return;
    int st = dutil_stop(&d->pid, 15000 * dutil_slow(), NULL);
    dutil_assert_exit_zero(st, d->log);
    if (d->log_pid > 0)
        dutil_wait_exit(&d->log_pid, 5000, NULL);
    if (d->own_dir)
        dutil_rm_rf(d->dir);
}

int dutil_count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    ck_assert_ptr_nonnull(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)))
        if (e->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}

long dutil_rss_kb(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    char *s = dutil_slurp(path, NULL);
    char *p = strstr(s, "VmRSS:");
    long kb = p ? atol(p + 6) : -1;
    free(s);
    return kb;
}

int dutil_connect_with(int port, int rcvbuf, int rcv_timeout_s, int snd_timeout_s)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    if (rcv_timeout_s > 0) {
        struct timeval tv = {rcv_timeout_s, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    if (snd_timeout_s > 0) {
        struct timeval tv = {snd_timeout_s, 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    return fd;
}

int dutil_connect(int port)
{
    return dutil_connect_with(port, 0, 5 * dutil_slow(), 0);
}

int dutil_send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int dutil_read_response(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (;;) {
        char *end = strstr(buf, "\r\n\r\n");
        if (end) {
            char *cl = strcasestr(buf, "content-length:");
            size_t body = cl ? (size_t)atol(cl + 15) : 0;
            if (len >= (size_t)(end + 4 - buf) + body)
                break;
        }
        if (len + 1 >= cap)
            break;
        ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
    }
    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0)
        return -1;
    return atoi(buf + 9);
}

int dutil_http(int port, const char *request, char *buf, size_t cap)
{
    int fd = dutil_connect(port);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(dutil_send_all(fd, request, strlen(request)), 0);
    int status = dutil_read_response(fd, buf, cap);
    close(fd);
    return status;
}

int dutil_get(int port, const char *path, char *buf, size_t cap)
{
    char req[512];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
    return dutil_http(port, req, buf, cap);
}

int dutil_post(int port, const char *path, const char *headers, const char *body, char *buf,
               size_t cap)
{
    size_t blen = strlen(body), hlen = strlen(path) + (headers ? strlen(headers) : 0) + 200;
    char *req = malloc(hlen + blen + 1);
    ck_assert_ptr_nonnull(req);
    int n = snprintf(req, hlen,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\n%sContent-Length: %zu\r\n\r\n",
                     path, headers ? headers : "", blen);
    memcpy(req + n, body, blen + 1);
    int status = dutil_http(port, req, buf, cap);
    free(req);
    return status;
}

int dutil_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

long long dutil_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *dutil_replace_all(const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    for (const char *p = strstr(s, from); p; p = strstr(p + fl, from))
        n++;
    char *out = malloc(strlen(s) + n * tl + 1);
    ck_assert_ptr_nonnull(out);
    char *o = out;
    for (const char *p; (p = strstr(s, from)); s = p + fl) {
        memcpy(o, s, (size_t)(p - s));
        o += p - s;
        memcpy(o, to, tl);
        o += tl;
    }
    strcpy(o, s);
    return out;
}

pid_t dutil_hipchat_start(const char *out, const char *err, const char *const *flags, int *port)
{
    const char *exe = getenv("HIPCHAT_SERVER");
    ck_assert_msg(exe != NULL, "HIPCHAT_SERVER not set (run through meson test)");
    const char *argv[32];
    int n = 0;
    argv[n++] = exe;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    for (int i = 0; flags && flags[i] && n < 31; i++)
        argv[n++] = flags[i];
    argv[n] = NULL;
    pid_t pid = dutil_spawn(argv, out, err, 1);
    *port = dutil_wait_port(&pid, out, "listening on ", 200, 25, NULL);
    return pid;
}

void dutil_seed_config(const char *path, const char *origin, const char *room, const char *token)
{
    const char *root = getenv("FBR_SOURCE_ROOT");
    ck_assert_msg(root != NULL, "FBR_SOURCE_ROOT not set");
    char seed_path[512];
    snprintf(seed_path, sizeof(seed_path), "%s/contrib/examples/multi-room.json", root);
    char *seed = dutil_slurp(seed_path, NULL);
    ck_assert_ptr_nonnull(strstr(seed, "https://DOMAIN.hipchat.com/"));
    ck_assert_ptr_nonnull(strstr(seed, "ROOM_ID"));
    ck_assert_ptr_nonnull(strstr(seed, "AUTH_TOKEN_HERE"));
    char *a = dutil_replace_all(seed, "https://DOMAIN.hipchat.com/", origin);
    char *b = dutil_replace_all(a, "ROOM_ID", room);
    char *c = dutil_replace_all(b, "AUTH_TOKEN_HERE", token);
    dutil_write_file(path, c);
    free(seed);
    free(a);
    free(b);
    free(c);
}

json_t *dutil_room_messages(int port, const char *room, size_t n, int ms)
{
    static char buf[4 * 1024 * 1024];
    char path[160];
    snprintf(path, sizeof(path), "/rooms/%s/messages", room);
    long long end = dutil_wall_ms() + ms;
    for (;;) {
        int st = dutil_get(port, path, buf, sizeof(buf));
        const char *body = strstr(buf, "\r\n\r\n");
        json_t *j = st == 200 && body ? json_loads(body + 4, 0, NULL) : NULL;
        if (j && json_array_size(j) >= n)
            return j;
        if (dutil_wall_ms() > end)
            return j ? j : json_array();
        json_decref(j);
        dutil_msleep(20);
    }
}

long long dutil_metric(int port, const char *series)
{
    static char buf[256 * 1024];
    ck_assert_int_eq(dutil_get(port, "/metrics", buf, sizeof(buf)), 200);
    char want[256];
    snprintf(want, sizeof(want), "\n%s ", series);
    const char *p = strstr(buf, want);
    return p ? atoll(p + strlen(want)) : -1;
}

json_t *dutil_read_jsonl(const char *path)
{
    json_t *arr = json_array();
    FILE *f = fopen(path, "r");
    if (!f)
        return arr;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        json_error_t jerr;
        json_t *j = json_loadb(line, (size_t)len, 0, &jerr);
        ck_assert_msg(j != NULL, "bad line in %s: %s", path, jerr.text);
        json_array_append_new(arr, j);
    }
    free(line);
    fclose(f);
    return arr;
}

const char *dutil_jstr(json_t *arr, size_t i, const char *key)
{
    return json_string_value(json_object_get(json_array_get(arr, i), key));
}
