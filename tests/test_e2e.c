/*
 * test_e2e.c - end-to-end integration tests of the whole data path with real processes on
 * loopback: alerts posted to the firebridge daemon (FBR_DAEMON) go through the intake, the Rules
 * Engine, the incident table, the templates and the delivery engine, and land in rooms of the
 * HipChat-compatible server (HIPCHAT_SERVER, contrib/hipchat-server/), whose fault injection
 * drives the failure cases.  The daemon's configuration is derived from the seed's
 * contrib/examples/multi-room.json (under FBR_SOURCE_ROOT) by pointing its URL at the server.
 *
 * Cases (issue 5, item 10): the Multi-Room scenario over TLS with a CA generated at test time;
 * 429 with a reset 2 s ahead; --room-rate 5/2 order and window; 500, 500, 204; 400 -> dead letter
 * -> replay; a stalled room does not delay another; wrong-hostname certificate; connection pool
 * bound over 1,000 deliveries; close after every response; --max-pending -> 503 with bounded RSS.
 * Every port is ephemeral (port 0, read back), so the program can run next to other tests.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon_util.h"
#include "testsupport.h"

#define API_KEY "CHANGE-ME-integration-key"
#define ALERT_PATH "/integrations/generic/20131114/alert/" API_KEY "/"

static char pki[64]; /* test CA and server certificates, made once in main() */

/* ---- small utilities ---- */

static long long wall_ms(void)
{
    return dutil_wall_ms();
}

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int run(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return system(cmd);
}

/* ---- processes ---- */

/* How long a process may take to exit after SIGTERM before it is killed. */
#define STOP_MS 6000

/* Processes die with the test process (PR_SET_PDEATHSIG): a failed assertion leaves nothing. */
struct proc {
    pid_t pid;
    int port;
    char out[160]; /* stdout (hipchat-server) or stdout+stderr (daemon) */
};

/* Stops the daemon and asserts a clean exit: status 0 (under the sanitizers: no error, no leak,
 * which would change the status). */
static void fb_stop(struct proc *f)
{
    dutil_assert_exit_zero(dutil_stop(&f->pid, STOP_MS, NULL), f->out);
}

/* A per-case scratch directory; removed by the case's teardown. */
static char dir[64];

static void setup(void)
{
    dutil_tmpdir(dir, sizeof(dir), "fbr-e2e");
}

static void teardown(void)
{
    const char *keep = getenv("FBR_E2E_KEEP"); /* keep the logs to look at */
    if (dir[0] && !(keep && *keep == '1'))
        run("rm -rf '%s'", dir);
}

/* Starts hipchat-server with --listen 127.0.0.1:0 and the given flags (NULL-terminated). */
static void hc_start(struct proc *h, const char *name, const char *const *flags)
{
    char err[160];
    snprintf(h->out, sizeof(h->out), "%s/%s.out", dir, name);
    snprintf(err, sizeof(err), "%s/%s.err", dir, name);
    h->pid = dutil_hipchat_start(h->out, err, flags, &h->port);
}

/*
 * Writes <dir>/<name>.json from the seed's multi-room.json with DOMAIN.hipchat.com replaced by
 * host:port (scheme https or http), ROOM_ID by room and AUTH_TOKEN_HERE by token.  Returns the
 * path (static buffer).
 */
static const char *config_from_seed(const char *name, const char *scheme, const char *host,
                                    int port, const char *room, const char *token)
{
    char origin[128];
    snprintf(origin, sizeof(origin), "%s://%s:%d/", scheme, host, port);
    static char out[200];
    snprintf(out, sizeof(out), "%s/%s.json", dir, name);
    dutil_seed_config(out, origin, room, token);
    return out;
}

/* Starts the daemon on an ephemeral port with config cfg and the given flags. */
static void fb_start(struct proc *f, const char *name, const char *cfg, const char *const *flags)
{
    const char *exe = getenv("FBR_DAEMON");
    ck_assert_msg(exe != NULL, "FBR_DAEMON not set (run through meson test)");
    static char data[128];
    snprintf(data, sizeof(data), "%s/data", dir);
    const char *argv[40];
    int n = 0;
    argv[n++] = exe;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--data-dir";
    argv[n++] = data;
    argv[n++] = "--drain-timeout";
    argv[n++] = "1";
    argv[n++] = "-c";
    argv[n++] = cfg;
    for (int i = 0; flags && flags[i] && n < 39; i++)
        argv[n++] = flags[i];
    argv[n] = NULL;
    snprintf(f->out, sizeof(f->out), "%s/%s.log", dir, name);
    f->pid = dutil_spawn(argv, f->out, f->out, 1);
    f->port = dutil_wait_port(&f->pid, f->out, "listening on 127.0.0.1:", 200, 25, NULL);
}

/* ---- HTTP over loopback (plain) ---- */

struct e2e_conn {
    int fd;
    int port;
};

struct resp {
    int status;
    char *head; /* status line and headers, NUL-terminated */
    char *body; /* NUL-terminated */
};

static void resp_free(struct resp *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* Reads one Content-Length response from fd.  Returns 0, or -1 when the connection ended first. */
static int read_resp(int fd, struct resp *r)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    memset(r, 0, sizeof(*r));
    for (;;) {
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end) {
            char *cl = strcasestr(buf, "\r\ncontent-length:");
            size_t hl = (size_t)(end + 4 - buf);
            size_t bl = cl && cl < end ? (size_t)atol(cl + 17) : 0;
            if (len >= hl + bl) {
                r->status = atoi(buf + 9);
                r->head = strndup(buf, hl);
                r->body = strndup(buf + hl, bl);
                free(buf);
                return 0;
            }
            if (hl + bl + 1 > cap) {
                cap = hl + bl + 1;
                buf = realloc(buf, cap);
            }
        }
        if (len + 1 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
        if (n <= 0) {
            free(buf);
            return -1;
        }
        len += (size_t)n;
    }
}

/* One request on a keep-alive connection (reconnects once when the old one was closed). */
static int conn_request(struct e2e_conn *c, const char *method, const char *path, const char *body,
                        struct resp *r)
{
    size_t bl = body ? strlen(body) : 0;
    char *msg = malloc(bl + 512);
    int hl = snprintf(msg, 512,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, bl);
    memcpy(msg + hl, body ? body : "", bl); /* one send: no Nagle/delayed-ACK stall */
    size_t len = (size_t)hl + bl;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (c->fd < 0)
            c->fd = dutil_connect_with(c->port, 0, 10, 0);
        ck_assert_int_ge(c->fd, 0);
        if (send(c->fd, msg, len, MSG_NOSIGNAL) == (ssize_t)len && read_resp(c->fd, r) == 0) {
            free(msg);
            return r->status;
        }
        close(c->fd);
        c->fd = -1;
    }
    ck_abort_msg("%s %s: no response", method, path);
    return -1;
}

static void conn_close(struct e2e_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* One request on a fresh connection; returns the status, the reply in *r. */
static int request(int port, const char *method, const char *path, const char *body,
                   struct resp *r)
{
    struct e2e_conn c = {-1, port};
    int st = conn_request(&c, method, path, body, r);
    conn_close(&c);
    return st;
}

/* GET returning the parsed JSON body (new reference). */
static json_t *get_json(int port, const char *path)
{
    struct resp r;
    int st = request(port, "GET", path, NULL, &r);
    ck_assert_msg(st == 200, "GET %s: %d %s", path, st, r.body);
    json_error_t e;
    json_t *j = json_loads(r.body, 0, &e);
    ck_assert_msg(j != NULL, "GET %s: not JSON: %s", path, r.body);
    resp_free(&r);
    return j;
}

static void post_fault(int port, const char *json)
{
    struct resp r;
    int st = request(port, "POST", "/faults", json, &r);
    ck_assert_msg(st >= 200 && st < 300, "POST /faults %s: %d %s", json, st, r.body);
    resp_free(&r);
}

/* Posts an alert over c; room/token NULL: the alert carries no room fields (the rule decides). */
static int post_alert(struct e2e_conn *c, const char *routing_key, const char *type,
                      const char *entity, const char *display, const char *room,
                      const char *token, struct resp *r)
{
    json_t *a = json_pack("{s:s,s:s,s:s}", "message_type", type, "entity_id", entity,
                          "entity_display_name", display);
    if (room)
        json_object_set_new(a, "room_id", json_string(room));
    if (token)
        json_object_set_new(a, "auth_token", json_string(token));
    char *body = json_dumps(a, JSON_COMPACT);
    char path[256];
    snprintf(path, sizeof(path), ALERT_PATH "%s", routing_key);
    int st = conn_request(c, "POST", path, body, r);
    free(body);
    json_decref(a);
    return st;
}

/* Posts one alert that must be accepted. */
static void alert_ok(struct e2e_conn *c, const char *rk, const char *entity, const char *display,
                     const char *room, const char *token)
{
    struct resp r;
    int st = post_alert(c, rk, "CRITICAL", entity, display, room, token, &r);
    ck_assert_msg(st == 200, "alert %s: %d %s", entity, st, r.body);
    resp_free(&r);
}

/* Waits up to ms for room to hold n messages; returns the array (new reference). */
static json_t *wait_messages(int port, const char *room, size_t n, int ms)
{
    return dutil_room_messages(port, room, n, ms);
}

static long long stat_int(json_t *stats, const char *key)
{
    return json_integer_value(json_object_get(stats, key));
}

/* Value of a metric line "name value" in the daemon's /metrics, -1 when absent. */
static long long metric(int port, const char *name)
{
    struct resp r;
    ck_assert_int_eq(request(port, "GET", "/metrics", NULL, &r), 200);
    char key[200];
    snprintf(key, sizeof(key), "\n%s ", name);
    char *p = strstr(r.body, key);
    long long v = p ? atoll(p + strlen(key)) : -1;
    resp_free(&r);
    return v;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Waits up to ms for file to contain needle; returns 1 when it does. */
static int wait_file_has(const char *path, const char *needle, int ms)
{
    long long end = wall_ms() + ms;
    do {
        char *s = dutil_slurp(path, NULL);
        int found = strstr(s, needle) != NULL;
        free(s);
        if (found)
            return 1;
        dutil_msleep(20);
    } while (wall_ms() < end);
    return 0;
}

/* ---- cases ---- */

/* (a) The seed's Multi-Room scenario over TLS, trusting a CA made at test time. */
START_TEST(multi_room_over_tls)
{
    char cert[128], key[128], ca[128];
    snprintf(cert, sizeof(cert), "%s/server.pem", pki);
    snprintf(key, sizeof(key), "%s/server.key", pki);
    snprintf(ca, sizeof(ca), "%s/ca.pem", pki);
    struct proc h, f;
    const char *hflags[] = {"--tls-cert", cert, "--tls-key", key, "--room", "1234:room-token-a",
                            NULL};
    hc_start(&h, "hc", hflags);
    const char *cfg = config_from_seed("a", "https", "localhost", h.port, "1234",
                                       "room-token-a");
    const char *fflags[] = {"--ca-file", ca, NULL};
    fb_start(&f, "fb", cfg, fflags);

    struct e2e_conn c = {-1, f.port};
    alert_ok(&c, "webapp", "web-1", "web frontend slow", NULL, NULL); /* no rule matches */
    alert_ok(&c, "devops", "db-1", "db1: disk full", NULL, NULL);
    conn_close(&c);
    ck_assert_msg(wait_file_has(h.out, "db1: disk full", 5000), "not delivered; daemon log:\n%s",
                  dutil_slurp(f.out, NULL));
    dutil_msleep(300);
    char *out = dutil_slurp(h.out, NULL);
    /* exactly one message: the devops one */
    char *line = strchr(out, '\n') + 1;
    json_t *m = json_loads(line, JSON_DISABLE_EOF_CHECK, NULL);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(json_string_value(json_object_get(m, "room")), "1234");
    ck_assert_str_eq(json_string_value(json_object_get(m, "message")), "db1: disk full");
    ck_assert_str_eq(json_string_value(json_object_get(m, "color")), "red");
    ck_assert(json_is_true(json_object_get(m, "notify")));
    ck_assert_str_eq(json_string_value(json_object_get(m, "message_format")), "text");
    ck_assert(json_is_string(json_object_get(m, "delivery")));
    ck_assert_msg(strstr(out, "web frontend slow") == NULL, "non-devops alert delivered: %s", out);
    ck_assert_int_eq(count_lines(out), 2); /* "listening on PORT" and one message */
    json_decref(m);
    free(out);
    char *log = dutil_slurp(f.out, NULL);
    ck_assert_msg(strstr(log, "room-token-a") == NULL, "token in the log: %s", log);
    free(log);
    fb_stop(&f);
    dutil_stop(&h.pid, STOP_MS, NULL);
}
END_TEST

/* Config for the plain-http cases: the seed pointed at h, default room/token for devops. */
static const char *plain_config(const struct proc *h)
{
    return config_from_seed("cfg", "http", "127.0.0.1", h->port, "devops-room", "tok");
}

/* (b) A 429 with a reset 2 s ahead: the next attempt comes at least 2 s later. */
START_TEST(rate_limited_429_waits_for_reset)
{
    struct proc h, f;
    const char *hflags[] = {"--any-token", "--any-room", NULL};
    hc_start(&h, "hc", hflags);
    post_fault(h.port, "{\"room\":\"r429\",\"status\":429,\"reset_in\":2}");
    fb_start(&f, "fb", plain_config(&h), NULL);
    struct e2e_conn c = {-1, f.port};
    alert_ok(&c, "r", "e-429", "after the 429", "r429", "tok");
    conn_close(&c);
    /* the moment the 429 was certainly answered: when /stats first shows it */
    long long answered = 0;
    for (int i = 0; i < 2000 && !answered; i++) {
        json_t *s = get_json(h.port, "/stats");
        if (stat_int(s, "faults_injected") >= 1)
            answered = wall_ms();
        json_decref(s);
        if (!answered)
            dutil_msleep(2);
    }
    ck_assert_msg(answered, "the 429 was never sent");
    json_t *msgs = wait_messages(h.port, "r429", 1, 8000);
    ck_assert_int_eq(json_array_size(msgs), 1);
    long long got = json_integer_value(json_object_get(json_array_get(msgs, 0), "received_ms"));
    ck_assert_msg(got - answered >= 2000, "retried %lld ms after the 429", got - answered);
    ck_assert_msg(got - answered < 6000, "retried only %lld ms after the 429", got - answered);
    json_decref(msgs);
    json_t *s = get_json(h.port, "/stats");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(s, "by_status"), "429")),
                     1);
    json_decref(s);
    fb_stop(&f);
    dutil_stop(&h.pid, STOP_MS, NULL);
}
END_TEST

/* (c) --room-rate 5/2: twenty alerts to one room arrive in order, never 6 within 2 s. */
START_TEST(room_rate_window_and_order)
{
    struct proc h, f;
    const char *hflags[] = {"--any-token", "--any-room", NULL};
    hc_start(&h, "hc", hflags);
    const char *fflags[] = {"--room-rate", "5/2", NULL};
    fb_start(&f, "fb", plain_config(&h), fflags);
    struct e2e_conn c = {-1, f.port};
    for (int i = 0; i < 20; i++) {
        char eid[32], msg[32];
        snprintf(eid, sizeof(eid), "rate-%d", i);
        snprintf(msg, sizeof(msg), "m-%02d", i);
        alert_ok(&c, "r", eid, msg, "rated", "tok");
    }
    conn_close(&c);
    json_t *msgs = wait_messages(h.port, "rated", 20, 20000);
    ck_assert_int_eq(json_array_size(msgs), 20);
    long long t[20];
    for (int i = 0; i < 20; i++) {
        json_t *m = json_array_get(msgs, (size_t)i);
        char want[32];
        snprintf(want, sizeof(want), "m-%02d", i);
        ck_assert_str_eq(json_string_value(json_object_get(m, "message")), want);
        t[i] = json_integer_value(json_object_get(m, "received_ms"));
    }
    /* The daemon spaces its sends; received_ms adds loopback latency and the receiver's
     * scheduling delay (tens of ms on a loaded 2-core machine running sanitizer builds), and is
     * truncated to the millisecond, so allow 50 ms.  A classic bucket (capacity 5 refilled at
     * 5/2 s) would put 10 messages within the first 2 s. */
    for (int i = 0; i + 5 < 20; i++)
        ck_assert_msg(t[i + 5] - t[i] >= 2000 - 50, "messages %d..%d within %lld ms", i, i + 5,
                      t[i + 5] - t[i]);
    json_decref(msgs);
    fb_stop(&f);
    dutil_stop(&h.pid, STOP_MS, NULL);
}
END_TEST

/* (d) 500, 500, 204: delivered on the third attempt. */
START_TEST(retries_5xx_then_delivers)
{
    struct proc h, f;
    const char *hflags[] = {"--any-token", "--any-room", NULL};
    hc_start(&h, "hc", hflags);
    post_fault(h.port, "{\"room\":\"flaky\",\"status\":500,\"count\":2}");
    const char *fflags[] = {"--retry-initial", "50", "--retry-max-interval", "200", NULL};
    fb_start(&f, "fb", plain_config(&h), fflags);
    struct e2e_conn c = {-1, f.port};
    alert_ok(&c, "r", "e-500", "third time lucky", "flaky", "tok");
    conn_close(&c);
    json_t *msgs = wait_messages(h.port, "flaky", 1, 5000);
    ck_assert_int_eq(json_array_size(msgs), 1);
    json_decref(msgs);
    json_t *s = get_json(h.port, "/stats");
    json_t *by = json_object_get(s, "by_status");
    ck_assert_int_eq(json_integer_value(json_object_get(by, "500")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(by, "204")), 1);
    json_decref(s);
    ck_assert_int_eq(metric(f.port, "firebridge_delivery_attempts_total"), 3);
    ck_assert_int_eq(metric(f.port, "firebridge_deliveries_total{outcome=\"delivered\"}"), 1);
    fb_stop(&f);
    dutil_stop(&h.pid, STOP_MS, NULL);
}
END_TEST

/* (e) A 400 is permanent: one attempt, a 0600 dead letter, no token in the log; replay works. */
START_TEST(dead_letter_then_replay)
{
    struct proc h, f;
    const char *hflags[] = {"--any-token", "--any-room", NULL};
    hc_start(&h, "hc", hflags);
    post_fault(h.port, "{\"room\":\"dead\",\"status\":400}");
    fb_start(&f, "fb", plain_config(&h), NULL);
    struct e2e_conn c = {-1, f.port};
    alert_ok(&c, "r", "e-400", "rejected once", "dead", "secret-token-e");
    conn_close(&c);
    char dl[128];
    snprintf(dl, sizeof(dl), "%s/data/dead-letters.jsonl", dir);
    ck_assert_msg(wait_file_has(dl, "\n", 5000), "no dead letter; log:\n%s",
                  dutil_slurp(f.out, NULL));
    struct stat st;
    ck_assert_int_eq(stat(dl, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    char *text = dutil_slurp(dl, NULL);
    ck_assert_int_eq(count_lines(text), 1);
    json_t *d = json_loads(text, JSON_DISABLE_EOF_CHECK, NULL);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "attempts")), 1);
    ck_assert_msg(strstr(json_string_value(json_object_get(d, "reason")), "400") != NULL,
                  "reason: %s", text);
    json_decref(d);
    free(text);
    json_t *s = get_json(h.port, "/stats");
    ck_assert_int_eq(stat_int(s, "notifications"), 1); /* one attempt only */
    json_decref(s);
    fb_stop(&f);
    char *log = dutil_slurp(f.out, NULL);
    ck_assert_ptr_nonnull(strstr(log, "dead after 1 attempt"));
    ck_assert_msg(strstr(log, "secret-token-e") == NULL, "token in the log: %s", log);
    free(log);

    /* replay from a copy (the daemon appends to its own file) */
    char copy[128];
    snprintf(copy, sizeof(copy), "%s/replay.jsonl", dir);
    ck_assert_int_eq(run("cp '%s' '%s'", dl, copy), 0);
    const char *fflags[] = {"--replay-dead-letters", copy, NULL};
    fb_start(&f, "fb2", plain_config(&h), fflags);
    json_t *msgs = wait_messages(h.port, "dead", 1, 5000);
    ck_assert_int_eq(json_array_size(msgs), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 0), "message")),
                     "rejected once");
    json_decref(msgs);
    log = dutil_slurp(f.out, NULL);
    ck_assert_msg(strstr(log, "secret-token-e") == NULL, "token in the log: %s", log);
    free(log);
    fb_stop(&f);
    dutil_stop(&h.pid, STOP_MS, NULL);
}
END_TEST

/* (f) A room that stalls does not delay another room. */
START_TEST(stalled_room_does_not_block_another)
{
    struct proc h, f;
    const char *hflags[] = {"--any-token", "--any-room", NULL};
    hc_start(&h, "hc", hflags);
    post_fault(h.port, "{\"room\":\"stuck\",\"stall_ms\":3000}");
    fb_start(&f, "fb", plain_config(&h), NULL);
    struct e2e_conn c = {-1, f.port};
    alert_ok(&c, "r", "e-stuck", "stalled", "stuck", "tok");
    dutil_msleep(100); /* the stuck room's request is on the wire first */
    long long t0 = wall_ms();
    alert_ok(&c, "r", "e-free", "flows", "free", "tok");
    conn_close(&c);
    json_t *msgs = wait_messages(h.port, "free", 1, 5000);
    ck_assert_int_eq(json_array_size(msgs), 1);
    long long got = json_integer_value(json_object_get(json_array_get(msgs, 0), "received_ms"));
    ck_assert_msg(got - t0 < 1000, "the free room waited %lld ms", got - t0);
    json_decref(msgs);
    msgs = wait_messages(h.port, "stuck", 1, 0);
    ck_assert_int_eq(json_array_size(msgs), 0); /* still stalled */
    json_decref(msgs);
    msgs = wait_messages(h.port, "stuck", 1, 6000); /* and it gets through afterwards */
    ck_assert_int_eq(json_array_size(msgs), 1);
    json_decref(msgs);
    fb_stop(&f);
    dutil_stop(&h.pid, STOP_MS, NULL);
}
END_TEST

/* (g) A certificate for another hostname fails, and the reason names the hostname mismatch. */
START_TEST(wrong_hostname_certificate)
{
    char cert[128], key[128], ca[128];
    snprintf(cert, sizeof(cert), "%s/wrong.pem", pki);
    snprintf(key, sizeof(key), "%s/wrong.key", pki);
    snprintf(ca, sizeof(ca), "%s/ca.pem", pki);
    struct proc h, f;
    const char *hflags[] = {"--tls-cert", cert, "--tls-key", key, "--any-token", "--any-room",
                            NULL};
    hc_start(&h, "hc", hflags);
    const char *cfg = config_from_seed("g", "https", "localhost", h.port, "1234", "tok-g");
    const char *fflags[] = {"--ca-file", ca, "--retry-initial", "200", "--retry-max-interval",
                            "400", "--retry-max-age", "1", NULL};
    fb_start(&f, "fb", cfg, fflags);
    struct e2e_conn c = {-1, f.port};
    alert_ok(&c, "devops", "e-g", "never shown", NULL, NULL);
    conn_close(&c);
    char dl[128];
    snprintf(dl, sizeof(dl), "%s/data/dead-letters.jsonl", dir);
    ck_assert_msg(wait_file_has(f.out, "hostname mismatch", 8000),
                  "no log line names the hostname mismatch:\n%s", dutil_slurp(f.out, NULL));
    ck_assert(wait_file_has(dl, "hostname mismatch", 2000));
    char *out = dutil_slurp(h.out, NULL);
    ck_assert_msg(strstr(out, "never shown") == NULL, "delivered despite the wrong name");
    free(out);
    char *log = dutil_slurp(f.out, NULL);
    ck_assert_msg(strstr(log, "tok-g") == NULL, "token in the log: %s", log);
    free(log);
    fb_stop(&f);
    dutil_stop(&h.pid, STOP_MS, NULL);
}
END_TEST

/* (h) 1,000 deliveries to one origin (20 rooms) use at most --pool-size connections. */
START_TEST(pool_bounds_connections)
{
    struct proc h, f;
    const char *hflags[] = {"--no-limits", "--any-token", "--any-room", "--quiet", NULL};
    hc_start(&h, "hc", hflags);
    const char *fflags[] = {"--pool-size", "3", "--room-rate", "1000000/1", "--token-rate",
                            "1000000/1", NULL};
    fb_start(&f, "fb", plain_config(&h), fflags);
    int mine = 0; /* connections this test opens to the server after DELETE /stats */
    struct resp r;
    int st = request(h.port, "DELETE", "/stats", NULL, &r);
    ck_assert_msg(st >= 200 && st < 300, "DELETE /stats: %d", st);
    resp_free(&r);
    struct e2e_conn c = {-1, f.port};
    for (int i = 0; i < 1000; i++) {
        char eid[32], room[16], msg[32];
        snprintf(eid, sizeof(eid), "pool-%d", i);
        snprintf(room, sizeof(room), "p%d", i % 20);
        snprintf(msg, sizeof(msg), "n%d", i);
        alert_ok(&c, "r", eid, msg, room, "tok");
    }
    conn_close(&c);
    json_t *s = NULL;
    for (int i = 0; i < 1500; i++) {
        json_decref(s);
        s = get_json(h.port, "/stats");
        mine++;
        if (stat_int(s, "accepted") >= 1000)
            break;
        dutil_msleep(20);
    }
    ck_assert_int_eq(stat_int(s, "accepted"), 1000);
    json_t *conns = json_object_get(s, "connections");
    long long total = stat_int(conns, "total"), max_open = stat_int(conns, "max_open");
    ck_assert_msg(total - mine <= 3, "%lld connections for 1,000 deliveries (pool 3)",
                  total - mine);
    ck_assert_msg(max_open <= 3 + 1, "max_open %lld (pool 3 + this test's one)", max_open);
    json_decref(s);
    fb_stop(&f);
    dutil_stop(&h.pid, STOP_MS, NULL);
}
END_TEST

/* (i) The server closing after every response loses nothing. */
START_TEST(close_after_every_response_loses_nothing)
{
    struct proc h, f;
    const char *hflags[] = {"--no-limits", "--any-token", "--any-room", "--quiet", NULL};
    hc_start(&h, "hc", hflags);
    post_fault(h.port, "{\"close\":true,\"count\":-1}");
    const char *fflags[] = {"--room-rate", "1000000/1", "--token-rate", "1000000/1",
                            "--retry-initial", "20", "--retry-max-interval", "100", NULL};
    fb_start(&f, "fb", plain_config(&h), fflags);
    enum { N = 200, ROOMS = 5 };
    struct e2e_conn c = {-1, f.port};
    for (int i = 0; i < N; i++) {
        char eid[32], room[16], msg[32];
        snprintf(eid, sizeof(eid), "close-%d", i);
        snprintf(room, sizeof(room), "c%d", i % ROOMS);
        snprintf(msg, sizeof(msg), "k%03d", i);
        alert_ok(&c, "r", eid, msg, room, "tok");
    }
    conn_close(&c);
    for (int k = 0; k < ROOMS; k++) {
        char room[16];
        snprintf(room, sizeof(room), "c%d", k);
        json_t *msgs = wait_messages(h.port, room, N / ROOMS, 15000);
        ck_assert_msg(json_array_size(msgs) == N / ROOMS, "room %s got %zu", room,
                      json_array_size(msgs));
        for (size_t j = 0; j < N / ROOMS; j++) {
            char want[16];
            snprintf(want, sizeof(want), "k%03d", (int)(j * ROOMS + (size_t)k));
            ck_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, j),
                                                               "message")), want);
        }
        json_decref(msgs);
    }
    json_t *s = get_json(h.port, "/stats");
    ck_assert_int_eq(stat_int(s, "accepted"), N);
    json_decref(s);
    fb_stop(&f);
    dutil_stop(&h.pid, STOP_MS, NULL);
}
END_TEST

/* (j) --max-pending reached while the server is down: 503 + Retry-After, RSS stays bounded. */
START_TEST(max_pending_backpressure)
{
    /* a loopback port with nobody listening */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sa);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    struct proc down = {.port = ntohs(sa.sin_port)};
    close(fd);
    /* Under AddressSanitizer freed memory sits in a quarantine (256 MB by default), so RSS would
     * grow with any allocation churn; without the quarantine the measure means the same as in a
     * normal build.  The option is ignored by a normal build. */
    const char *asan = getenv("ASAN_OPTIONS");
    char opts[512];
    snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=0", asan ? asan : "",
             asan && *asan ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
    struct proc f;
    const char *fflags[] = {"--max-pending", "50", "--retry-initial", "1000", NULL};
    fb_start(&f, "fb", plain_config(&down), fflags);
    struct e2e_conn c = {-1, f.port};
    int accepted = 0, refused = 0;
    long rss0 = 0;
    for (int i = 0; i < 5000; i++) {
        char eid[32];
        snprintf(eid, sizeof(eid), "bp-%d", i);
        struct resp r;
        int st = post_alert(&c, "devops", "CRITICAL", eid, "queued while down", NULL, NULL, &r);
        if (st == 200) {
            ck_assert_int_eq(refused, 0);
            accepted++;
        } else {
            ck_assert_msg(st == 503, "status %d: %s", st, r.body);
            ck_assert_msg(strcasestr(r.head, "\r\nRetry-After: ") != NULL, "no Retry-After: %s",
                          r.head);
            if (refused++ == 0)
                rss0 = dutil_rss_kb(f.pid);
        }
        resp_free(&r);
    }
    conn_close(&c);
    ck_assert_int_eq(accepted, 50);
    long rss1 = dutil_rss_kb(f.pid);
    ck_assert_msg(rss1 - rss0 < 4096, "RSS grew from %ld to %ld kB over %d refused alerts", rss0,
                  rss1, refused);
    ck_assert_int_eq(metric(f.port, "firebridge_deliveries_pending"), 50);
    ck_assert_int_eq(metric(f.port, "firebridge_intake_unavailable_total"), refused);
    fb_stop(&f);
}
END_TEST

/* Makes the test CA, a server certificate for localhost/127.0.0.1 and one for wrong.example. */
static int make_pki(void)
{
    snprintf(pki, sizeof(pki), "/tmp/fbr-e2e-pki-XXXXXX");
    if (!mkdtemp(pki))
        return -1;
    const char *q = ">/dev/null 2>&1";
    if (run("cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
            "-nodes -days 2 -subj /CN=firebridge-test-ca -addext "
            "basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign "
            "-keyout ca.key -out ca.pem %s",
            pki, q) != 0)
        return -1;
    const char *names[][2] = {{"server", "subjectAltName=DNS:localhost,IP:127.0.0.1"},
                              {"wrong", "subjectAltName=DNS:wrong.example"}};
    for (int i = 0; i < 2; i++) {
        if (run("cd '%s' && printf '%%s\\n' '%s' > %s.ext && "
                "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                "-subj /CN=%s -keyout %s.key -out %s.csr %s && "
                "openssl x509 -req -in %s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
                "-extfile %s.ext -out %s.pem %s",
                pki, names[i][1], names[i][0], i ? "wrong.example" : "localhost", names[i][0],
                names[i][0], q, names[i][0], names[i][0], names[i][0], q) != 0)
            return -1;
    }
    return 0;
}

int main(void)
{
    if (make_pki() != 0) {
        fprintf(stderr, "cannot make the test certificates with openssl\n");
        return 1;
    }
    Suite *s = suite_create("e2e");
    /* one TCase per case, so CK_RUN_CASE=<name> runs one of them */
    const struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"multi_room_over_tls", multi_room_over_tls},
        {"rate_limited_429_waits_for_reset", rate_limited_429_waits_for_reset},
        {"room_rate_window_and_order", room_rate_window_and_order},
        {"retries_5xx_then_delivers", retries_5xx_then_delivers},
        {"dead_letter_then_replay", dead_letter_then_replay},
        {"stalled_room_does_not_block_another", stalled_room_does_not_block_another},
        {"wrong_hostname_certificate", wrong_hostname_certificate},
        {"pool_bounds_connections", pool_bounds_connections},
        {"close_after_every_response_loses_nothing", close_after_every_response_loses_nothing},
        {"max_pending_backpressure", max_pending_backpressure},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 40);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    int rc = fbr_test_run(s);
    run("rm -rf '%s'", pki);
    return rc;
}
