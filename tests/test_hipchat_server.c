/*
 * test_hipchat_server.c - integration tests for contrib/hipchat-server, the HipChat-compatible
 * stand-in at the far end of the data path (delivery -> client -> this server).  Each test starts
 * the real executable (path in $HIPCHAT_SERVER) on an ephemeral loopback port and talks to it
 * with a small blocking HTTP/1.1 client (plain TCP or OpenSSL) written here: validation rules
 * (table-driven), auth, storage, rate-limit headers and 429s, every fault kind, stats and TLS.
 */
#include <check.h>
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testsupport.h"

/* ---------------------------------------------------------------------------------------------
 * The server process.
 */
static pid_t server_pid = -1;
static int server_port;
static char tmpdir[256];
static char out_path[300];

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void make_tmpdir(void)
{
    if (tmpdir[0])
        return;
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(tmpdir, sizeof(tmpdir), "%s/hcs-test-XXXXXX", base);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
}

/* Starts the server with the given NULL-terminated arguments and waits for "listening on". */
static void start_server_argv(const char *const *args)
{
    const char *exe = getenv("HIPCHAT_SERVER");
    ck_assert_msg(exe != NULL, "HIPCHAT_SERVER is not set");
    make_tmpdir();
    snprintf(out_path, sizeof(out_path), "%s/stdout.%d", tmpdir, (int)getpid());
    unlink(out_path);
    const char *argv[64];
    size_t n = 0;
    argv[n++] = exe;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    for (size_t i = 0; args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        FILE *f = freopen(out_path, "w", stdout);
        if (!f)
            _exit(127);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    server_pid = pid;
    for (int i = 0; i < 500; i++) {
        FILE *f = fopen(out_path, "r");
        if (f) {
            int port = 0;
            int got = fscanf(f, "listening on %d", &port);
            fclose(f);
            if (got == 1 && port > 0) {
                server_port = port;
                return;
            }
        }
        int st;
        ck_assert_msg(waitpid(pid, &st, WNOHANG) == 0, "hipchat-server exited at start");
        usleep(10000);
    }
    ck_abort_msg("hipchat-server did not print its port");
}

#define start_server(...)                                                                          \
    do {                                                                                           \
        const char *const a_[] = {__VA_ARGS__, NULL};                                              \
        start_server_argv(a_);                                                                     \
    } while (0)

/* Stops the server and checks that it shut down cleanly (exit 0: no sanitizer report). */
static void stop_server(void)
{
    if (server_pid <= 0)
        return;
    kill(server_pid, SIGTERM);
    int st = 0;
    ck_assert_int_eq(waitpid(server_pid, &st, 0), server_pid);
    server_pid = -1;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "hipchat-server exit status %d", st);
}

/* ---------------------------------------------------------------------------------------------
 * A small blocking HTTP/1.1 client.
 */
struct tconn {
    int fd;
    SSL *ssl;
    SSL_CTX *ctx;
};

struct resp {
    int status;
    char head[8192];
    char *body;
    size_t body_len;
};

static int tconn_open(struct tconn *c, int port, const char *ca_file)
{
    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(c->fd, 0);
    struct timeval tv = {10, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        return -1;
    if (!ca_file)
        return 0;
    c->ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    ck_assert_int_eq(SSL_CTX_load_verify_locations(c->ctx, ca_file, NULL), 1);
    c->ssl = SSL_new(c->ctx);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    SSL_set1_host(c->ssl, "localhost");
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1 || SSL_get_verify_result(c->ssl) != X509_V_OK)
        return -1;
    return 0;
}

static void tconn_close(struct tconn *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->ssl = NULL;
    c->ctx = NULL;
}

static int tconn_write(struct tconn *c, const char *p, size_t n)
{
    while (n) {
        ssize_t w = c->ssl ? SSL_write(c->ssl, p, (int)n) : send(c->fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Returns bytes read, 0 on EOF, -1 on error (errno kept for resets). */
static ssize_t tconn_read(struct tconn *c, char *p, size_t n)
{
    if (c->ssl) {
        int r = SSL_read(c->ssl, p, (int)n);
        if (r > 0)
            return r;
        return SSL_get_error(c->ssl, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
    }
    return recv(c->fd, p, n, 0);
}

static void resp_free(struct resp *r)
{
    free(r->body);
    r->body = NULL;
}

/* Finds header `name` in the response head; copies its value into out.  Returns 1 or 0. */
static int resp_header(const struct resp *r, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    const char *p = strstr(r->head, "\r\n");
    while (p && p[2]) {
        p += 2;
        if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t vlen = e ? (size_t)(e - v) : strlen(v);
            if (vlen >= outlen)
                vlen = outlen - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return 1;
        }
        p = strstr(p, "\r\n");
    }
    return 0;
}

static long long resp_header_num(const struct resp *r, const char *name)
{
    char v[64];
    ck_assert_msg(resp_header(r, name, v, sizeof(v)), "header %s missing", name);
    return atoll(v);
}

/* Sends one request on c and reads the response.  Returns 0, or -1 when the connection failed
 * (reset, EOF before a complete response). */
static int tconn_request(struct tconn *c, const char *method, const char *path, const char *headers,
                         const char *body, struct resp *r)
{
    memset(r, 0, sizeof(*r));
    size_t blen = body ? strlen(body) : 0;
    size_t cap = 512 + strlen(path) + (headers ? strlen(headers) : 0) + blen;
    char *req = malloc(cap);
    int n = snprintf(
        req, cap, "%s %s HTTP/1.1\r\nHost: localhost\r\n%s%sContent-Length: %zu\r\n\r\n", method,
        path, headers ? headers : "", body ? "Content-Type: application/json\r\n" : "", blen);
    if (body)
        memcpy(req + n, body, blen);
    int w = tconn_write(c, req, (size_t)n + blen);
    free(req);
    if (w < 0)
        return -1;
    size_t have = 0;
    char *end = NULL;
    while (!end) {
        if (have + 1 >= sizeof(r->head))
            return -1;
        ssize_t got = tconn_read(c, r->head + have, sizeof(r->head) - 1 - have);
        if (got <= 0)
            return -1;
        have += (size_t)got;
        r->head[have] = '\0';
        end = strstr(r->head, "\r\n\r\n");
    }
    size_t head_len = (size_t)(end - r->head) + 4;
    size_t extra = have - head_len;
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1)
        return -1;
    char cl[32];
    size_t want = resp_header(r, "Content-Length", cl, sizeof(cl)) ? (size_t)atoll(cl) : 0;
    r->body = calloc(1, want + extra + 1);
    memcpy(r->body, r->head + head_len, extra);
    r->head[head_len] = '\0';
    r->body_len = extra;
    while (r->body_len < want) {
        ssize_t got = tconn_read(c, r->body + r->body_len, want - r->body_len);
        if (got <= 0)
            return -1;
        r->body_len += (size_t)got;
    }
    return 0;
}

/* One request on a fresh connection; returns the status, or -1 when the connection failed. */
static int http(const char *method, const char *path, const char *headers, const char *body,
                struct resp *r)
{
    struct tconn c;
    ck_assert_int_eq(tconn_open(&c, server_port, NULL), 0);
    int rc = tconn_request(&c, method, path, headers, body, r);
    tconn_close(&c);
    return rc < 0 ? -1 : r->status;
}

static int post_note(const char *room_path, const char *headers, const char *body)
{
    struct resp r;
    int st = http("POST", room_path, headers, body, &r);
    resp_free(&r);
    return st;
}

static json_t *get_json(const char *path)
{
    struct resp r;
    ck_assert_int_eq(http("GET", path, NULL, NULL, &r), 200);
    json_error_t e;
    json_t *j = json_loadb(r.body, r.body_len, 0, &e);
    ck_assert_msg(j != NULL, "bad JSON from %s: %s", path, e.text);
    resp_free(&r);
    return j;
}

static void post_faults(const char *json)
{
    struct resp r;
    ck_assert_int_eq(http("POST", "/faults", NULL, json, &r), 200);
    resp_free(&r);
}

/* Checks the documented error shape {"error":{"code":N,"message":"...","type":"..."}}. */
static void assert_error_shape(const struct resp *r, int status, const char *type)
{
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, 0, &e);
    ck_assert_msg(j != NULL, "error body is not JSON: %.*s", (int)r->body_len, r->body);
    json_t *err = json_object_get(j, "error");
    ck_assert(json_is_object(err));
    ck_assert_int_eq(json_integer_value(json_object_get(err, "code")), status);
    ck_assert_str_eq(json_string_value(json_object_get(err, "type")), type);
    ck_assert(json_string_length(json_object_get(err, "message")) > 0);
    json_decref(j);
}

static void assert_rate_headers(const struct resp *r)
{
    static const char *const names[] = {"X-Ratelimit-Limit",        "X-Ratelimit-Remaining",
                                        "X-Ratelimit-Reset",        "X-FloodControl-Limit",
                                        "X-FloodControl-Remaining", "X-FloodControl-Reset"};
    long long now = (long long)time(NULL);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        long long v = resp_header_num(r, names[i]);
        if (strstr(names[i], "Reset"))
            ck_assert_msg(v >= now && v <= now + 400, "%s=%lld now=%lld", names[i], v, now);
    }
}

#define NOTE_PATH "/v2/room/1/notification"
#define AUTH "Authorization: Bearer tok1\r\n"

static void teardown(void)
{
    stop_server();
}

/* ---------------------------------------------------------------------------------------------
 * Validation, table-driven.
 */
static char *repeat(const char *unit, size_t n)
{
    size_t ul = strlen(unit);
    char *s = malloc(ul * n + 1);
    for (size_t i = 0; i < n; i++)
        memcpy(s + i * ul, unit, ul);
    s[ul * n] = '\0';
    return s;
}

static const struct {
    const char *body; /* "%s" is replaced by a long string built below */
    const char *unit;
    size_t n;
    int status;
} validation_cases[] = {
    {"{\"message\":\"hi\"}", NULL, 0, 204},
    {"{}", NULL, 0, 400},
    {"[]", NULL, 0, 400},
    {"not json", NULL, 0, 400},
    {"", NULL, 0, 400},
    {"{\"message\":\"\"}", NULL, 0, 400},
    {"{\"message\":5}", NULL, 0, 400},
    {"{\"message\":null}", NULL, 0, 400},
    {"{\"message\":\"%s\"}", "a", 10000, 204},
    {"{\"message\":\"%s\"}", "a", 10001, 400},
    {"{\"message\":\"%s\"}", "\xc3\xa9", 10000, 204},
    {"{\"message\":\"%s\"}", "\xc3\xa9", 10001, 400},
    {"{\"message\":\"a\",\"message\":\"b\"}", NULL, 0, 400},
    {"{\"message\":\"m\",\"message_format\":\"html\"}", NULL, 0, 204},
    {"{\"message\":\"m\",\"message_format\":\"text\"}", NULL, 0, 204},
    {"{\"message\":\"m\",\"message_format\":\"markdown\"}", NULL, 0, 400},
    {"{\"message\":\"m\",\"message_format\":1}", NULL, 0, 400},
    {"{\"message\":\"m\",\"color\":\"yellow\"}", NULL, 0, 204},
    {"{\"message\":\"m\",\"color\":\"green\"}", NULL, 0, 204},
    {"{\"message\":\"m\",\"color\":\"red\"}", NULL, 0, 204},
    {"{\"message\":\"m\",\"color\":\"purple\"}", NULL, 0, 204},
    {"{\"message\":\"m\",\"color\":\"gray\"}", NULL, 0, 204},
    {"{\"message\":\"m\",\"color\":\"random\"}", NULL, 0, 204},
    {"{\"message\":\"m\",\"color\":\"pink\"}", NULL, 0, 400},
    {"{\"message\":\"m\",\"color\":\"Red\"}", NULL, 0, 400},
    {"{\"message\":\"m\",\"color\":null}", NULL, 0, 400},
    {"{\"message\":\"m\",\"notify\":true}", NULL, 0, 204},
    {"{\"message\":\"m\",\"notify\":false}", NULL, 0, 204},
    {"{\"message\":\"m\",\"notify\":\"true\"}", NULL, 0, 400},
    {"{\"message\":\"m\",\"notify\":1}", NULL, 0, 400},
    {"{\"message\":\"m\",\"from\":\"\"}", NULL, 0, 204},
    {"{\"message\":\"m\",\"from\":\"%s\"}", "f", 64, 204},
    {"{\"message\":\"m\",\"from\":\"%s\"}", "f", 65, 400},
    {"{\"message\":\"m\",\"from\":7}", NULL, 0, 400},
    {"{\"message\":\"m\",\"attach_to\":\"%s\"}", "x", 36, 204},
    {"{\"message\":\"m\",\"attach_to\":\"%s\"}", "x", 37, 400},
    {"{\"message\":\"m\",\"attach_to\":36}", NULL, 0, 400},
    {"{\"message\":\"m\",\"card\":{\"style\":\"application\",\"title\":\"t\"}}", NULL, 0, 204},
    {"{\"message\":\"m\",\"card\":\"x\"}", NULL, 0, 400},
    {"{\"message\":\"m\",\"card\":[]}", NULL, 0, 400},
    {"{\"card\":{\"title\":\"t\"}}", NULL, 0, 400},
    {"{\"message\":\"m\",\"unknown_field\":1}", NULL, 0, 204},
};

static void setup_validation(void)
{
    start_server("--room", "1:tok1", "--no-limits");
}

START_TEST(validation)
{
    char *body;
    if (validation_cases[_i].unit) {
        char *fill = repeat(validation_cases[_i].unit, validation_cases[_i].n);
        const char *tpl = validation_cases[_i].body, *hole = strstr(tpl, "%s");
        size_t cap = strlen(fill) + strlen(tpl) + 1;
        body = malloc(cap);
        memcpy(body, tpl, (size_t)(hole - tpl));
        strcpy(body + (hole - tpl), fill);
        strcat(body, hole + 2);
        free(fill);
    } else {
        body = strdup(validation_cases[_i].body);
    }
    struct resp r;
    int st = http("POST", NOTE_PATH, AUTH, body, &r);
    ck_assert_msg(st == validation_cases[_i].status, "case %d: got %d for %.80s", _i, st, body);
    assert_rate_headers(&r);
    if (st == 400)
        assert_error_shape(&r, 400, "Bad Request");
    else
        ck_assert_uint_eq(r.body_len, 0);
    resp_free(&r);
    json_t *msgs = get_json("/rooms/1/messages");
    ck_assert_uint_eq(json_array_size(msgs), st == 204 ? 1 : 0);
    json_decref(msgs);
    free(body);
}
END_TEST

START_TEST(strict_keys)
{
    stop_server();
    start_server("--room", "1:tok1", "--strict-keys");
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\",\"colour\":\"red\"}"), 400);
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\",\"color\":\"red\"}"), 204);
}
END_TEST

/* ---------------------------------------------------------------------------------------------
 * Auth, rooms, storage.
 */
static void setup_rooms(void)
{
    make_tmpdir();
    char cfg[300];
    snprintf(cfg, sizeof(cfg), "%s/rooms.json", tmpdir);
    FILE *f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"rooms\":[{\"id\":2,\"name\":\"Ops Room\",\"tokens\":[\"tok2\"]}],"
          "\"tokens\":[\"global\"]}",
          f);
    fclose(f);
    start_server("--room", "1:tok1", "--config", cfg);
}

static const struct {
    const char *path, *headers;
    int status;
} auth_cases[] = {
    {NOTE_PATH "?auth_token=tok1", NULL, 204},
    {NOTE_PATH, "Authorization: Bearer tok1\r\n", 204},
    {NOTE_PATH, "authorization: bearer tok1\r\n", 204},
    {NOTE_PATH, "Authorization: Bearer global\r\n", 204},
    {NOTE_PATH, NULL, 401},
    {NOTE_PATH "?auth_token=", NULL, 401},
    {NOTE_PATH "?auth_token=wrong", NULL, 401},
    {NOTE_PATH, "Authorization: Bearer wrong\r\n", 401},
    {NOTE_PATH, "Authorization: Basic dG9rMTo=\r\n", 401},
    {NOTE_PATH, "Authorization: Bearer tok2\r\n", 401},
    {"/v2/room/2/notification", "Authorization: Bearer tok2\r\n", 204},
    {"/v2/room/Ops%20Room/notification", "Authorization: Bearer tok2\r\n", 204},
    {"/v2/room/Ops%20Room/notification", "Authorization: Bearer tok1\r\n", 401},
    {"/v2/room/Ops%2/notification", "Authorization: Bearer tok2\r\n", 404},
    {"/v2/room/3/notification", "Authorization: Bearer tok1\r\n", 404},
    {"/v2/room/3/notification", "Authorization: Bearer wrong\r\n", 401},
    {NOTE_PATH "?auth_token=tok1&auth_test=true", NULL, 202},
    {NOTE_PATH "?auth_test=true", "Authorization: Bearer tok1\r\n", 202},
    {NOTE_PATH "?auth_test=true&auth_token=bad", NULL, 401},
};

START_TEST(auth)
{
    struct resp r;
    int st = http("POST", auth_cases[_i].path, auth_cases[_i].headers, "{\"message\":\"a\"}", &r);
    ck_assert_msg(st == auth_cases[_i].status, "case %d (%s): got %d", _i, auth_cases[_i].path, st);
    assert_rate_headers(&r);
    if (st == 401)
        assert_error_shape(&r, 401, "Unauthorized");
    if (st == 404)
        assert_error_shape(&r, 404, "Not Found");
    resp_free(&r);
    json_t *stats = get_json("/stats");
    ck_assert_int_eq(json_integer_value(json_object_get(stats, "accepted")), st == 204);
    json_decref(stats);
}
END_TEST

START_TEST(stored_messages)
{
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH "X-Firebridge-Delivery: d-42\r\n",
                               "{\"message\":\"disk full\",\"color\":\"red\",\"notify\":true,"
                               "\"message_format\":\"text\",\"from\":\"oncall\"}"),
                     204);
    ck_assert_int_eq(post_note("/v2/room/Ops%20Room/notification", "Authorization: Bearer tok2\r\n",
                               "{\"message\":\"second\"}"),
                     204);
    long long before = (long long)time(NULL) * 1000 - 5000;
    json_t *a = get_json("/rooms/1/messages");
    ck_assert_uint_eq(json_array_size(a), 1);
    json_t *m = json_array_get(a, 0);
    ck_assert_str_eq(json_string_value(json_object_get(m, "message")), "disk full");
    ck_assert_str_eq(json_string_value(json_object_get(m, "color")), "red");
    ck_assert(json_is_true(json_object_get(m, "notify")));
    ck_assert_str_eq(json_string_value(json_object_get(m, "message_format")), "text");
    ck_assert_str_eq(json_string_value(json_object_get(m, "from")), "oncall");
    ck_assert_str_eq(json_string_value(json_object_get(m, "delivery")), "d-42");
    ck_assert(json_integer_value(json_object_get(m, "received_ms")) > before);
    json_decref(a);

    /* Defaults, and the room reachable by its name as well as its id. */
    a = get_json("/rooms/Ops%20Room/messages");
    ck_assert_uint_eq(json_array_size(a), 1);
    m = json_array_get(a, 0);
    ck_assert_str_eq(json_string_value(json_object_get(m, "color")), "yellow");
    ck_assert_str_eq(json_string_value(json_object_get(m, "message_format")), "html");
    ck_assert(json_is_false(json_object_get(m, "notify")));
    ck_assert(json_is_null(json_object_get(m, "delivery")));
    json_decref(a);
    a = get_json("/rooms/2/messages");
    ck_assert_uint_eq(json_array_size(a), 1);
    json_decref(a);
    a = get_json("/rooms/1/messages?since=1");
    ck_assert_uint_eq(json_array_size(a), 0);
    json_decref(a);
    a = get_json("/rooms/2/messages?since=1");
    ck_assert_uint_eq(json_array_size(a), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(a, 0), "seq")), 2);
    json_decref(a);

    /* One line per message on stdout, after the port line. */
    FILE *f = fopen(out_path, "r");
    ck_assert_ptr_nonnull(f);
    char line[4096];
    int lines = 0, found = 0;
    while (fgets(line, sizeof(line), f)) {
        lines++;
        found |= strstr(line, "\"disk full\"") != NULL && strstr(line, "\"d-42\"") != NULL;
    }
    fclose(f);
    ck_assert_int_eq(lines, 3);
    ck_assert(found);

    struct resp r;
    ck_assert_int_eq(http("GET", "/rooms/9/messages", NULL, NULL, &r), 404);
    assert_error_shape(&r, 404, "Not Found");
    resp_free(&r);
    ck_assert_int_eq(http("DELETE", "/rooms", NULL, NULL, &r), 200);
    resp_free(&r);
    a = get_json("/rooms/1/messages");
    ck_assert_uint_eq(json_array_size(a), 0);
    json_decref(a);
    ck_assert_int_eq(http("GET", "/healthz", NULL, NULL, &r), 200);
    resp_free(&r);
}
END_TEST

START_TEST(message_cap)
{
    stop_server();
    start_server("--room", "1:tok1", "--room", "2:tok1", "--no-limits", "--max-messages", "3");
    for (int i = 0; i < 5; i++) {
        char body[64];
        snprintf(body, sizeof(body), "{\"message\":\"m%d\"}", i);
        ck_assert_int_eq(post_note(i % 2 ? "/v2/room/2/notification" : NOTE_PATH, AUTH, body), 204);
    }
    json_t *s = get_json("/stats");
    ck_assert_int_eq(json_integer_value(json_object_get(s, "messages_stored")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "messages_dropped")), 2);
    json_decref(s);
    json_t *a = get_json("/rooms/1/messages"); /* m0, m2, m4 -> m0 dropped */
    ck_assert_uint_eq(json_array_size(a), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(a, 0), "message")), "m2");
    json_decref(a);
}
END_TEST

START_TEST(stored_bytes_cap)
{
    stop_server();
    start_server("--room", "1:tok1", "--no-limits", "--max-stored-bytes", "1000", "--quiet");
    char *fill = repeat("z", 300), body[400];
    snprintf(body, sizeof(body), "{\"message\":\"%s\"}", fill);
    free(fill);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(post_note(NOTE_PATH, AUTH, body), 204);
    json_t *s = get_json("/stats");
    long long kept = json_integer_value(json_object_get(s, "messages_stored"));
    ck_assert_msg(kept >= 1 && kept <= 3, "kept %lld", kept);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "messages_dropped")), 5 - kept);
    json_decref(s);
    /* --quiet: only the port line on stdout. */
    FILE *f = fopen(out_path, "r");
    char line[4096];
    int lines = 0;
    while (fgets(line, sizeof(line), f))
        lines++;
    fclose(f);
    ck_assert_int_eq(lines, 1);
}
END_TEST

START_TEST(any_token_any_room)
{
    stop_server();
    start_server("--any-token", "--any-room", "--max-rooms", "2");
    ck_assert_int_eq(post_note("/v2/room/a/notification?auth_token=x", NULL, "{\"message\":\"m\"}"),
                     204);
    ck_assert_int_eq(
        post_note("/v2/room/b/notification", "Authorization: Bearer y\r\n", "{\"message\":\"m\"}"),
        204);
    ck_assert_int_eq(post_note("/v2/room/c/notification?auth_token=x", NULL, "{\"message\":\"m\"}"),
                     404);
    ck_assert_int_eq(post_note("/v2/room/a/notification?auth_token=", NULL, "{\"message\":\"m\"}"),
                     401);
    json_t *a = get_json("/rooms/a/messages");
    ck_assert_uint_eq(json_array_size(a), 1);
    json_decref(a);
}
END_TEST

START_TEST(body_too_large)
{
    stop_server();
    start_server("--room", "1:tok1", "--max-body", "1000");
    char *big = repeat("a", 2000);
    char body[2100];
    snprintf(body, sizeof(body), "{\"message\":\"%s\"}", big);
    free(big);
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, body), 413);
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"small\"}"), 204);
}
END_TEST

/* ---------------------------------------------------------------------------------------------
 * Rate limits.
 */
START_TEST(room_limit)
{
    start_server("--room", "1:tok1", "--room", "2:tok1", "--room-rate", "5/60", "--token-rate",
                 "100/300");
    struct resp r;
    long long now = (long long)time(NULL);
    /* Responses that count nothing still carry the headers. */
    ck_assert_int_eq(http("POST", "/v2/room/7/notification", AUTH, "{\"message\":\"m\"}", &r), 404);
    ck_assert_int_eq(resp_header_num(&r, "X-FloodControl-Remaining"), 5);
    resp_free(&r);
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(http("POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 204);
        assert_rate_headers(&r);
        ck_assert_int_eq(resp_header_num(&r, "X-FloodControl-Limit"), 5);
        ck_assert_int_eq(resp_header_num(&r, "X-FloodControl-Remaining"), 4 - i);
        ck_assert_int_eq(resp_header_num(&r, "X-Ratelimit-Limit"), 100);
        ck_assert_int_eq(resp_header_num(&r, "X-Ratelimit-Remaining"), 99 - i);
        long long reset = resp_header_num(&r, "X-FloodControl-Reset");
        ck_assert(reset >= now + 59 && reset <= now + 62);
        resp_free(&r);
    }
    ck_assert_int_eq(http("POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 429);
    assert_error_shape(&r, 429, "Too Many Requests");
    ck_assert_int_eq(resp_header_num(&r, "X-FloodControl-Remaining"), 0);
    long long ra = resp_header_num(&r, "Retry-After");
    ck_assert(ra >= 58 && ra <= 61);
    resp_free(&r);
    /* Flood control is per room. */
    ck_assert_int_eq(http("POST", "/v2/room/2/notification", AUTH, "{\"message\":\"m\"}", &r), 204);
    ck_assert_int_eq(resp_header_num(&r, "X-FloodControl-Remaining"), 4);
    resp_free(&r);
    json_t *a = get_json("/rooms/1/messages");
    ck_assert_uint_eq(json_array_size(a), 5);
    json_decref(a);
}
END_TEST

START_TEST(token_limit)
{
    start_server("--room", "1:tok1", "--room", "2:tok1", "--room", "2:other", "--token-rate",
                 "3/300", "--room-rate", "off");
    struct resp r;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(http("POST", i % 2 ? "/v2/room/2/notification" : NOTE_PATH, AUTH,
                              "{\"message\":\"m\"}", &r),
                         204);
        ck_assert_int_eq(resp_header_num(&r, "X-Ratelimit-Remaining"), 2 - i);
        resp_free(&r);
    }
    ck_assert_int_eq(http("POST", "/v2/room/2/notification", AUTH, "{\"message\":\"m\"}", &r), 429);
    assert_error_shape(&r, 429, "Too Many Requests");
    ck_assert_int_eq(resp_header_num(&r, "X-Ratelimit-Remaining"), 0);
    ck_assert(resp_header_num(&r, "Retry-After") >= 298);
    resp_free(&r);
    ck_assert_int_eq(post_note("/v2/room/2/notification", "Authorization: Bearer other\r\n",
                               "{\"message\":\"m\"}"),
                     204);
    /* DELETE /limits reopens every window. */
    ck_assert_int_eq(http("DELETE", "/limits", NULL, NULL, &r), 200);
    resp_free(&r);
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\"}"), 204);
}
END_TEST

/* The wall clock's whole seconds, read precisely (not time(): the coarse clock). */
static long long wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec;
}

START_TEST(window_resets)
{
    start_server("--room", "1:tok1", "--room-rate", "2/1");
    struct resp r;
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\"}"), 204);
    ck_assert_int_eq(http("POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 204);
    long long reset = resp_header_num(&r, "X-FloodControl-Reset");
    resp_free(&r);
    /* Both hits may straddle a second boundary; only a third in the same window must fail.
     * The clock read after the answer is the precise one: time() is the coarse clock, a few
     * milliseconds behind, so the server could already be in the next second while time()
     * still said the last (this failed once in a full run). */
    int st = post_note(NOTE_PATH, AUTH, "{\"message\":\"m\"}");
    if (wall_s() < reset)
        ck_assert_int_eq(st, 429);
    while (wall_s() < reset + 1)
        usleep(20000);
    ck_assert_int_eq(http("POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 204);
    ck_assert_int_eq(resp_header_num(&r, "X-FloodControl-Remaining"), 1);
    ck_assert(resp_header_num(&r, "X-FloodControl-Reset") > reset);
    resp_free(&r);
}
END_TEST

/* ---------------------------------------------------------------------------------------------
 * Faults.
 */
static void setup_faults(void)
{
    start_server("--room", "1:tok1", "--room", "2:tok1", "--fault",
                 "{\"room\":\"2\",\"status\":503,\"count\":1}");
}

START_TEST(fault_status)
{
    /* The start-time fault answers room 2 once. */
    ck_assert_int_eq(post_note("/v2/room/2/notification", AUTH, "{\"message\":\"m\"}"), 503);
    ck_assert_int_eq(post_note("/v2/room/2/notification", AUTH, "{\"message\":\"m\"}"), 204);
    post_faults("{\"room\":\"1\",\"status\":500,\"count\":2}");
    struct resp r;
    ck_assert_int_eq(http("POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 500);
    assert_error_shape(&r, 500, "Internal Server Error");
    assert_rate_headers(&r);
    resp_free(&r);
    /* Another room is not affected, and does not use up the fault. */
    ck_assert_int_eq(post_note("/v2/room/2/notification", AUTH, "{\"message\":\"m\"}"), 204);
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\"}"), 500);
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\"}"), 204);
    json_t *f = get_json("/faults");
    ck_assert_uint_eq(json_array_size(f), 0);
    json_decref(f);
    /* count -1 lasts until DELETE /faults. */
    post_faults("{\"status\":502,\"count\":-1}");
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\"}"), 502);
    ck_assert_int_eq(http("DELETE", "/faults", NULL, NULL, &r), 200);
    resp_free(&r);
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\"}"), 204);
    ck_assert_int_eq(http("POST", "/faults", NULL, "{\"status\":99}", &r), 400);
    resp_free(&r);
    ck_assert_int_eq(http("POST", "/faults", NULL, "{\"bogus\":1}", &r), 400);
    resp_free(&r);
    json_t *s = get_json("/stats");
    ck_assert_int_eq(json_integer_value(json_object_get(s, "faults_injected")), 6);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(s, "by_status"), "500")),
                     2);
    json_decref(s);
}
END_TEST

START_TEST(fault_429_reset)
{
    post_faults("{\"status\":429,\"reset_in\":2}");
    struct resp r;
    long long now = (long long)time(NULL);
    ck_assert_int_eq(http("POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 429);
    assert_error_shape(&r, 429, "Too Many Requests");
    ck_assert_int_eq(resp_header_num(&r, "Retry-After"), 2);
    ck_assert_int_eq(resp_header_num(&r, "X-FloodControl-Remaining"), 0);
    long long reset = resp_header_num(&r, "X-FloodControl-Reset");
    ck_assert(reset >= now + 2 && reset <= now + 3);
    resp_free(&r);
    /* Only the rate-limit headers, and no Retry-After. */
    post_faults("{\"status\":429,\"reset_in\":5,\"reset_headers\":\"rate\",\"retry_after\":false}");
    ck_assert_int_eq(http("POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 429);
    char v[64];
    ck_assert(!resp_header(&r, "Retry-After", v, sizeof(v)));
    ck_assert_int_eq(resp_header_num(&r, "X-Ratelimit-Remaining"), 0);
    ck_assert(resp_header_num(&r, "X-Ratelimit-Reset") >= now + 5);
    resp_free(&r);
    /* An HTTP-date Retry-After is sent verbatim. */
    post_faults("{\"status\":429,\"retry_after\":\"Wed, 21 Oct 2015 07:28:00 GMT\"}");
    ck_assert_int_eq(http("POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 429);
    ck_assert(resp_header(&r, "Retry-After", v, sizeof(v)));
    ck_assert_str_eq(v, "Wed, 21 Oct 2015 07:28:00 GMT");
    resp_free(&r);
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\"}"), 204);
}
END_TEST

START_TEST(fault_reset)
{
    post_faults("{\"room\":\"1\",\"reset\":true}");
    struct tconn c;
    struct resp r;
    ck_assert_int_eq(tconn_open(&c, server_port, NULL), 0);
    errno = 0;
    ck_assert_int_eq(tconn_request(&c, "POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), -1);
    ck_assert_int_eq(errno, ECONNRESET);
    resp_free(&r);
    tconn_close(&c);
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"m\"}"), 204);
    json_t *s = get_json("/stats");
    ck_assert_int_eq(json_integer_value(json_object_get(s, "resets")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "accepted")), 1);
    json_decref(s);
}
END_TEST

START_TEST(fault_stall_and_delay)
{
    ck_assert_int_eq(post_note("/v2/room/2/notification", AUTH, "{\"message\":\"m\"}"), 503);
    post_faults("[{\"room\":\"1\",\"stall_ms\":600},{\"room\":\"1\",\"delay_ms\":300}]");
    long long t0 = now_ms();
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"stalled\"}"), 204);
    long long t1 = now_ms();
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"slow\"}"), 204);
    long long t2 = now_ms();
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"fast\"}"), 204);
    long long t3 = now_ms();
    ck_assert_msg(t1 - t0 >= 600, "stall took %lld ms", t1 - t0);
    ck_assert_msg(t2 - t1 >= 300 && t2 - t1 < 600, "delay took %lld ms", t2 - t1);
    ck_assert_msg(t3 - t2 < 300, "normal request took %lld ms", t3 - t2);

    /* A stalled room does not hold up another one: the server stays responsive. */
    post_faults("{\"room\":\"1\",\"stall_ms\":1500}");
    struct tconn slow;
    ck_assert_int_eq(tconn_open(&slow, server_port, NULL), 0);
    const char req[] = "POST " NOTE_PATH " HTTP/1.1\r\nHost: x\r\n" AUTH
                       "Content-Length: 15\r\n\r\n{\"message\":\"s\"}";
    ck_assert_int_eq(tconn_write(&slow, req, sizeof(req) - 1), 0);
    usleep(100000);
    long long t4 = now_ms();
    ck_assert_int_eq(post_note("/v2/room/2/notification", AUTH, "{\"message\":\"m\"}"), 204);
    ck_assert_msg(now_ms() - t4 < 500, "room 2 was held up");
    /* A client that gives up during a stall gets its request dropped unprocessed. */
    tconn_close(&slow);
    usleep(1600000);
    json_t *a = get_json("/rooms/1/messages");
    ck_assert_uint_eq(json_array_size(a), 3);
    json_decref(a);
    json_t *s = get_json("/stats");
    ck_assert_int_eq(json_integer_value(json_object_get(s, "abandoned")), 1);
    json_decref(s);
    /* A client that leaves during a delayed reply: processed, the late reply goes nowhere. */
    post_faults("{\"room\":\"1\",\"delay_ms\":300}");
    ck_assert_int_eq(tconn_open(&slow, server_port, NULL), 0);
    ck_assert_int_eq(tconn_write(&slow, req, sizeof(req) - 1), 0);
    usleep(100000);
    tconn_close(&slow);
    usleep(400000);
    a = get_json("/rooms/1/messages");
    ck_assert_uint_eq(json_array_size(a), 4);
    json_decref(a);
    /* A client that waits through a stall gets the request processed. */
    post_faults("{\"room\":\"1\",\"stall_ms\":200}");
    ck_assert_int_eq(post_note(NOTE_PATH, AUTH, "{\"message\":\"waited\"}"), 204);
    a = get_json("/rooms/1/messages");
    ck_assert_uint_eq(json_array_size(a), 5);
    json_decref(a);
}
END_TEST

START_TEST(fault_close)
{
    post_faults("{\"close\":true,\"count\":2}");
    struct tconn c;
    struct resp r;
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(tconn_open(&c, server_port, NULL), 0);
        ck_assert_int_eq(tconn_request(&c, "POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 0);
        ck_assert_int_eq(r.status, 204);
        char v[32];
        ck_assert(resp_header(&r, "Connection", v, sizeof(v)));
        ck_assert_str_eq(v, "close");
        resp_free(&r);
        char buf[16];
        ck_assert_int_eq(tconn_read(&c, buf, sizeof(buf)), 0); /* orderly EOF */
        tconn_close(&c);
    }
    /* Without the fault, the connection is kept alive for a second request. */
    ck_assert_int_eq(tconn_open(&c, server_port, NULL), 0);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(tconn_request(&c, "POST", NOTE_PATH, AUTH, "{\"message\":\"m\"}", &r), 0);
        ck_assert_int_eq(r.status, 204);
        resp_free(&r);
    }
    tconn_close(&c);
}
END_TEST

/* ---------------------------------------------------------------------------------------------
 * Connection counts.
 */
/* Reads one connection counter over the kept-alive control connection `ctl`. */
static long long conn_stat(struct tconn *ctl, const char *key)
{
    struct resp r;
    ck_assert_int_eq(tconn_request(ctl, "GET", "/stats", NULL, NULL, &r), 0);
    ck_assert_int_eq(r.status, 200);
    json_t *s = json_loadb(r.body, r.body_len, 0, NULL);
    ck_assert_ptr_nonnull(s);
    long long v = json_integer_value(json_object_get(json_object_get(s, "connections"), key));
    json_decref(s);
    resp_free(&r);
    return v;
}

START_TEST(connection_stats)
{
    struct resp r;
    struct tconn ctl, c[3];
    ck_assert_int_eq(tconn_open(&ctl, server_port, NULL), 0);
    ck_assert_int_eq(tconn_request(&ctl, "DELETE", "/stats", NULL, NULL, &r), 0);
    resp_free(&r);
    ck_assert_int_eq(conn_stat(&ctl, "open"), 1);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(tconn_open(&c[i], server_port, NULL), 0);
        ck_assert_int_eq(tconn_request(&c[i], "GET", "/healthz", NULL, NULL, &r), 0);
        resp_free(&r);
    }
    ck_assert_int_eq(conn_stat(&ctl, "open"), 4);
    ck_assert_int_eq(conn_stat(&ctl, "max_open"), 4);
    ck_assert_int_eq(conn_stat(&ctl, "total"), 3);
    for (int i = 0; i < 3; i++)
        tconn_close(&c[i]);
    long long open = 0;
    for (int i = 0; i < 100; i++) {
        open = conn_stat(&ctl, "open");
        if (open == 1)
            break;
        usleep(10000);
    }
    ck_assert_int_eq(open, 1);
    ck_assert_int_eq(conn_stat(&ctl, "max_open"), 4);
    ck_assert_int_eq(conn_stat(&ctl, "total"), 3);
    tconn_close(&ctl);
}
END_TEST

/* ---------------------------------------------------------------------------------------------
 * TLS with a certificate made at test time.
 */
START_TEST(tls)
{
    make_tmpdir();
    char cert[300], key[300], cmd[1200];
    snprintf(cert, sizeof(cert), "%s/cert.pem", tmpdir);
    snprintf(key, sizeof(key), "%s/key.pem", tmpdir);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
             "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout '%s' -out '%s' "
             ">/dev/null 2>&1",
             key, cert);
    ck_assert_int_eq(system(cmd), 0);
    start_server("--room", "1:tok1", "--tls-cert", cert, "--tls-key", key);
    struct tconn c;
    struct resp r;
    ck_assert_int_eq(tconn_open(&c, server_port, cert), 0);
    ck_assert_int_ge(SSL_version(c.ssl), TLS1_2_VERSION);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(tconn_request(&c, "POST", NOTE_PATH, AUTH, "{\"message\":\"tls\"}", &r),
                         0);
        ck_assert_int_eq(r.status, 204);
        assert_rate_headers(&r);
        resp_free(&r);
    }
    tconn_close(&c);
    /* Plain HTTP to the TLS port gets no HTTP answer. */
    ck_assert_int_eq(tconn_open(&c, server_port, NULL), 0);
    ck_assert_int_eq(tconn_request(&c, "GET", "/healthz", NULL, NULL, &r), -1);
    resp_free(&r);
    tconn_close(&c);
    /* Faults apply over TLS too. */
    ck_assert_int_eq(tconn_open(&c, server_port, cert), 0);
    struct tconn ctl;
    ck_assert_int_eq(tconn_open(&ctl, server_port, cert), 0);
    ck_assert_int_eq(tconn_request(&ctl, "POST", "/faults", NULL, "{\"status\":503}", &r), 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    tconn_close(&ctl);
    ck_assert_int_eq(tconn_request(&c, "POST", NOTE_PATH, AUTH, "{\"message\":\"x\"}", &r), 0);
    ck_assert_int_eq(r.status, 503);
    resp_free(&r);
    tconn_close(&c);
    unlink(cert);
    unlink(key);
}
END_TEST

START_TEST(bad_flags)
{
    const char *exe = getenv("HIPCHAT_SERVER");
    char cmd[600];
    static const char *const bad[] = {"--room-rate 5", "--room nocolon", "--fault '{\"x\":1}'",
                                      "--tls-cert /nonexistent --tls-key /nonexistent",
                                      "--listen nonsense"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(cmd, sizeof(cmd), "'%s' %s >/dev/null 2>&1", exe, bad[i]);
        int st = system(cmd);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0, "accepted: %s", bad[i]);
    }
    /* Config files: unknown keys and wrong types are rejected, wherever they are. */
    static const char *const bad_cfg[] = {"{\"rooms\":[{\"id\":1,\"tokenz\":[\"t\"]}]}",
                                          "{\"room_rate\":\"5\"}",
                                          "{\"extra\":1}",
                                          "[]",
                                          "{\"rooms\":{}}",
                                          "{\"any_token\":\"yes\"}",
                                          "{\"rooms\":[{\"name\":\"no id\"}]}"};
    char cfg[300];
    snprintf(cfg, sizeof(cfg), "%s/bad.json", tmpdir);
    for (size_t i = 0; i < sizeof(bad_cfg) / sizeof(bad_cfg[0]); i++) {
        FILE *f = fopen(cfg, "w");
        fputs(bad_cfg[i], f);
        fclose(f);
        snprintf(cmd, sizeof(cmd), "'%s' --config '%s' >/dev/null 2>&1", exe, cfg);
        int st = system(cmd);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0, "accepted config: %s", bad_cfg[i]);
    }
}
END_TEST

static void setup_default(void)
{
    start_server("--room", "1:tok1", "--room", "2:tok1");
}

int main(void)
{
    Suite *s = suite_create("hipchat_server");

    TCase *tc = tcase_create("validation");
    tcase_add_checked_fixture(tc, setup_validation, teardown);
    tcase_add_loop_test(tc, validation, 0,
                        (int)(sizeof(validation_cases) / sizeof(validation_cases[0])));
    tcase_add_test(tc, strict_keys);
    suite_add_tcase(s, tc);

    tc = tcase_create("rooms");
    tcase_add_checked_fixture(tc, setup_rooms, teardown);
    tcase_add_loop_test(tc, auth, 0, (int)(sizeof(auth_cases) / sizeof(auth_cases[0])));
    tcase_add_test(tc, stored_messages);
    tcase_add_test(tc, message_cap);
    tcase_add_test(tc, body_too_large);
    tcase_add_test(tc, stored_bytes_cap);
    tcase_add_test(tc, any_token_any_room);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, room_limit);
    tcase_add_test(tc, token_limit);
    tcase_add_test(tc, window_resets);
    tcase_add_test(tc, tls);
    tcase_add_test(tc, bad_flags);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);

    tc = tcase_create("faults");
    tcase_add_checked_fixture(tc, setup_faults, teardown);
    tcase_add_test(tc, fault_status);
    tcase_add_test(tc, fault_429_reset);
    tcase_add_test(tc, fault_reset);
    tcase_add_test(tc, fault_stall_and_delay);
    tcase_add_test(tc, fault_close);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);

    tc = tcase_create("connections");
    tcase_add_checked_fixture(tc, setup_default, teardown);
    tcase_add_test(tc, connection_stats);
    suite_add_tcase(s, tc);

    make_tmpdir(); /* before forking, so that every test shares it and it is removed once */
    int rc = fbr_test_run(s);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return rc;
}
