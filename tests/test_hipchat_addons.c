/*
 * test_hipchat_addons.c - integration tests of contrib/hipchat-server playing HipChat for Connect
 * add-ons (issue 10 item 9; hipchat-api.md sections 3 to 5), the far end of firebridge's Single
 * Room mode.  Each test starts the real executable ($HIPCHAT_SERVER) on an ephemeral loopback
 * port and a small add-on written here: a libevent HTTP server on its own thread that serves a
 * descriptor, records the install POST and, from inside that callback, asks the server for a
 * token before it answers (as real add-ons do), records the uninstall DELETE, and records and
 * answers room_message webhooks.  The test thread drives the server with a blocking client and
 * verifies webhook JWTs itself with OpenSSL's HMAC.
 */
#include <check.h>
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <jansson.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "daemon_util.h"
#include "http_testsrv.h"
#include "testsupport.h"

/* ---------------------------------------------------------------------------------------------
 * The server under test.
 */
static pid_t hs_pid;
static int hs_port;
static char dir[64], hs_out[128];

static void hs_start(const char *const *extra)
{
    const char *exe = getenv("HIPCHAT_SERVER");
    ck_assert_msg(exe != NULL, "HIPCHAT_SERVER not set (run through meson test)");
    dutil_tmpdir(dir, sizeof(dir), "hcs-addons");
    snprintf(hs_out, sizeof(hs_out), "%s/hipchat.out", dir);
    const char *argv[32] = {exe,      "--listen", "127.0.0.1:0",        "--room", "1:tok1",
                            "--room", "2:tok2",   "--outbound-timeout", "5"};
    size_t n = 9;
    for (size_t i = 0; extra && extra[i] && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    hs_pid = dutil_spawn(argv, hs_out, hs_out, 1);
    hs_port = dutil_wait_port(&hs_pid, hs_out, "listening on ", 200, 25, NULL);
}

static void hs_stop(void)
{
    int st = dutil_stop(&hs_pid, 10000 * dutil_slow(), NULL);
    dutil_assert_exit_zero(st, hs_out);
    dutil_rm_rf(dir);
}

/* One request to the server; returns the status and the body (new, caller frees) in *body. */
static int hs_call(const char *method, const char *path, const char *headers, const char *body,
                   char **out)
{
    size_t blen = body ? strlen(body) : 0;
    size_t cap = 1024 + strlen(path) + (headers ? strlen(headers) : 0) + blen;
    char *req = malloc(cap);
    snprintf(req, cap,
             "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%sContent-Length: "
             "%zu\r\n\r\n%s",
             method, path, headers ? headers : "",
             body && !(headers && strstr(headers, "Content-Type"))
                 ? "Content-Type: application/json\r\n"
                 : "",
             blen, body ? body : "");
    size_t rcap = 1 << 20;
    char *resp = malloc(rcap);
    int st = dutil_http(hs_port, req, resp, rcap);
    free(req);
    const char *b = strstr(resp, "\r\n\r\n");
    if (out)
        *out = strdup(b ? b + 4 : "");
    free(resp);
    return st;
}

/* A JSON request; asserts the status and returns the parsed body (new reference). */
static json_t *hs_json(const char *method, const char *path, const char *body, int want)
{
    char *text;
    int st = hs_call(method, path, NULL, body, &text);
    ck_assert_msg(st == want, "%s %s: %d, wanted %d: %s", method, path, st, want, text);
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    ck_assert_msg(j != NULL, "%s %s: not JSON: %s", method, path, text);
    free(text);
    return j;
}

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* ---------------------------------------------------------------------------------------------
 * The add-on: a libevent HTTP server on its own thread.
 */
#define MAX_SEEN 32

struct seen {
    char method[8];
    char path[1024];
    char auth[1024];
    char *body;
};

static struct addon {
    pthread_t thread;
    struct event_base *base;
    struct evhttp *http;
    struct event *tick;
    atomic_int stop;
    int port;
    pthread_mutex_t mu;
    /* script (set before an install) */
    const char *descriptor; /* "PORT" stands for the add-on's port */
    int install_status;     /* what the install callback answers */
    int fetch_token;        /* ask for a token inside the install callback */
    const char *hook_reply; /* body of webhook replies (200), NULL: 204 */
    /* records */
    struct seen seen[MAX_SEEN];
    int nseen;
    int token_status; /* status the in-callback token request got */
    char token[128];
} ad;

static void record(struct evhttp_request *req, const char *method)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    pthread_mutex_lock(&ad.mu);
    if (ad.nseen < MAX_SEEN) {
        struct seen *s = &ad.seen[ad.nseen++];
        snprintf(s->method, sizeof(s->method), "%s", method);
        snprintf(s->path, sizeof(s->path), "%s", evhttp_request_get_uri(req));
        const char *a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
        snprintf(s->auth, sizeof(s->auth), "%s", a ? a : "");
        s->body = calloc(1, len + 1);
        evbuffer_copyout(in, s->body, len);
    }
    pthread_mutex_unlock(&ad.mu);
}

static void reply(struct evhttp_request *req, int status, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    if (body) {
        evbuffer_add(b, body, strlen(body));
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "application/json");
    }
    evhttp_send_reply(req, status, "X", b);
    evbuffer_free(b);
}

struct pending_install {
    struct evhttp_request *req;
};

static void on_token(struct evhttp_request *resp, void *arg)
{
    struct pending_install *p = arg;
    pthread_mutex_lock(&ad.mu);
    ad.token_status = resp ? evhttp_request_get_response_code(resp) : -1;
    if (resp) {
        struct evbuffer *in = evhttp_request_get_input_buffer(resp);
        char buf[2048] = {0};
        evbuffer_copyout(in, buf, sizeof(buf) - 1);
        json_t *j = json_loads(buf, 0, NULL);
        snprintf(ad.token, sizeof(ad.token), "%s",
                 j && jstr(j, "access_token") ? jstr(j, "access_token") : "");
        json_decref(j);
    }
    pthread_mutex_unlock(&ad.mu);
    reply(p->req, ad.install_status, "{}");
    free(p);
}

/* Asks the server for a token with the credentials of the install POST, then answers it. */
static void install_with_token(struct evhttp_request *req, const char *body)
{
    json_t *j = json_loads(body, 0, NULL);
    char cred[256], b64[400], auth[420];
    snprintf(cred, sizeof(cred), "%s:%s", jstr(j, "oauthId") ? jstr(j, "oauthId") : "",
             jstr(j, "oauthSecret") ? jstr(j, "oauthSecret") : "");
    json_decref(j);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)cred, (int)strlen(cred));
    snprintf(auth, sizeof(auth), "Basic %s", b64);
    struct pending_install *p = calloc(1, sizeof(*p));
    p->req = req;
    struct evhttp_connection *c =
        evhttp_connection_base_new(ad.base, NULL, "127.0.0.1", (unsigned short)hs_port);
    evhttp_connection_free_on_completion(c);
    struct evhttp_request *r = evhttp_request_new(on_token, p);
    struct evkeyvalq *h = evhttp_request_get_output_headers(r);
    evhttp_add_header(h, "Host", "127.0.0.1");
    evhttp_add_header(h, "Authorization", auth);
    evhttp_add_header(h, "Content-Type", "application/x-www-form-urlencoded");
    const char *form = "grant_type=client_credentials&scope=send_notification+view_room";
    evbuffer_add(evhttp_request_get_output_buffer(r), form, strlen(form));
    evhttp_make_request(c, r, EVHTTP_REQ_POST, "/v2/oauth/token");
}

static void on_addon_request(struct evhttp_request *req, void *arg)
{
    const char *uri = evhttp_request_get_uri(req);
    enum evhttp_cmd_type t = evhttp_request_get_command(req);
    const char *method = t == EVHTTP_REQ_GET      ? "GET"
                         : t == EVHTTP_REQ_POST   ? "POST"
                         : t == EVHTTP_REQ_DELETE ? "DELETE"
                                                  : "OTHER";
    record(req, method);
    if (t == EVHTTP_REQ_GET && strcmp(uri, "/descriptor") == 0) {
        char buf[4096], port[8];
        size_t o = 0;
        snprintf(port, sizeof(port), "%d", ad.port);
        for (const char *d = ad.descriptor; *d && o + 8 < sizeof(buf);) {
            if (strncmp(d, "PORT", 4) == 0) {
                o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s", port);
                d += 4;
            } else {
                buf[o++] = *d++;
            }
        }
        buf[o] = '\0';
        reply(req, 200, buf);
    } else if (t == EVHTTP_REQ_POST && strcmp(uri, "/installed") == 0) {
        if (ad.fetch_token) {
            pthread_mutex_lock(&ad.mu);
            char *body = strdup(ad.seen[ad.nseen - 1].body);
            pthread_mutex_unlock(&ad.mu);
            install_with_token(req, body);
            free(body);
        } else {
            reply(req, ad.install_status, ad.install_status >= 300 ? "{\"why\":\"nope\"}" : "{}");
        }
    } else if (t == EVHTTP_REQ_DELETE && strncmp(uri, "/installed/", 11) == 0) {
        reply(req, 204, NULL);
    } else if (t == EVHTTP_REQ_POST && strncmp(uri, "/hook", 5) == 0) {
        reply(req, ad.hook_reply ? 200 : 204, ad.hook_reply);
    } else {
        reply(req, 404, "{}");
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    if (atomic_load(&ad.stop))
        event_base_loopbreak(ad.base);
}

static void *addon_main(void *arg)
{
    event_base_dispatch(ad.base);
    return NULL;
}

#define DESCRIPTOR_HEAD                                                                            \
    "{\"key\":\"test.addon\",\"name\":\"Test add-on\",\"description\":\"d\","                      \
    "\"links\":{\"self\":\"http://127.0.0.1:PORT/descriptor\"},\"capabilities\":{"                 \
    "\"hipchatApiConsumer\":{\"scopes\":[\"send_notification\",\"view_room\"],"                    \
    "\"fromName\":\"Addon\"},"                                                                     \
    "\"installable\":{\"callbackUrl\":\"http://127.0.0.1:PORT/installed\",\"allowRoom\":true},"

static const char descriptor_default[] =
    DESCRIPTOR_HEAD "\"webhook\":[{\"url\":\"http://127.0.0.1:PORT/hook/ack\","
                    "\"event\":\"room_message\",\"pattern\":\"^/(ack|resolve) [0-9]+\","
                    "\"authentication\":\"jwt\",\"name\":\"commands\"},"
                    "{\"url\":\"http://127.0.0.1:PORT/hook/enter\",\"event\":\"room_enter\"}]}}";

/* HTTPS stand-ins for the descriptor (tls_case): one with a certificate for localhost and
 * 127.0.0.1, one for wrong.example, both from the test CA (tsrv_make_certs). */
static struct tsrv *tls_good, *tls_wrong;
static SSL_CTX *tls_good_ctx, *tls_wrong_ctx;
static char tls_raw[4096];

static void tls_servers_start(const char *certdir)
{
    char cert[160], key[160], body[2048];
    snprintf(body, sizeof(body),
             "{\"key\":\"tls.addon\",\"links\":{\"self\":\"https://localhost/descriptor\"},"
             "\"capabilities\":{\"hipchatApiConsumer\":{\"scopes\":[\"send_notification\"]},"
             "\"installable\":{\"callbackUrl\":\"http://127.0.0.1:%d/installed\"}}}",
             ad.port);
    snprintf(tls_raw, sizeof(tls_raw),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n%s",
             strlen(body), body);
    struct tsrv_reply r = {.status = 200, .raw = tls_raw, .close_after = 1};
    snprintf(cert, sizeof(cert), "%s/good.pem", certdir);
    snprintf(key, sizeof(key), "%s/good.key", certdir);
    tls_good_ctx = tsrv_ssl_ctx(cert, key);
    tls_good = tsrv_new(ad.base, tls_good_ctx);
    tsrv_set_default(tls_good, r);
    snprintf(cert, sizeof(cert), "%s/wrong.pem", certdir);
    snprintf(key, sizeof(key), "%s/wrong.key", certdir);
    tls_wrong_ctx = tsrv_ssl_ctx(cert, key);
    tls_wrong = tsrv_new(ad.base, tls_wrong_ctx);
    tsrv_set_default(tls_wrong, r);
}

/* Starts the add-on; with certdir, also the HTTPS descriptor servers on its loop. */
static void addon_start_with(const char *certdir)
{
    memset(&ad, 0, sizeof(ad));
    pthread_mutex_init(&ad.mu, NULL);
    ad.descriptor = descriptor_default;
    ad.install_status = 200;
    ad.fetch_token = 1;
    ad.base = event_base_new();
    ad.http = evhttp_new(ad.base);
    evhttp_set_allowed_methods(ad.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(ad.http, on_addon_request, NULL);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(ad.http, "127.0.0.1", 0);
    ck_assert_ptr_nonnull(bs);
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl);
    ad.port = ntohs(sa.sin_port);
    if (certdir)
        tls_servers_start(certdir);
    ad.tick = event_new(ad.base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 20000};
    event_add(ad.tick, &tv);
    pthread_create(&ad.thread, NULL, addon_main, NULL);
}

static void addon_start(void)
{
    addon_start_with(NULL);
}

static void addon_stop(void)
{
    atomic_store(&ad.stop, 1);
    pthread_join(ad.thread, NULL);
    if (tls_good) {
        tsrv_free(tls_good);
        tsrv_free(tls_wrong);
        SSL_CTX_free(tls_good_ctx);
        SSL_CTX_free(tls_wrong_ctx);
        tls_good = tls_wrong = NULL;
    }
    event_free(ad.tick);
    evhttp_free(ad.http);
    event_base_free(ad.base);
    for (int i = 0; i < ad.nseen; i++)
        free(ad.seen[i].body);
    pthread_mutex_destroy(&ad.mu);
}

/* Copies the i-th recorded request (the body is a new string). */
static struct seen seen_at(int i)
{
    pthread_mutex_lock(&ad.mu);
    ck_assert_msg(i < ad.nseen, "the add-on saw %d requests, wanted #%d", ad.nseen, i);
    struct seen s = ad.seen[i];
    s.body = strdup(s.body);
    pthread_mutex_unlock(&ad.mu);
    return s;
}

static int seen_count(void)
{
    pthread_mutex_lock(&ad.mu);
    int n = ad.nseen;
    pthread_mutex_unlock(&ad.mu);
    return n;
}

/* ---------------------------------------------------------------------------------------------
 * Helpers over both.
 */
static void setup(void)
{
    addon_start();
    hs_start(NULL);
}

static void teardown(void)
{
    hs_stop();
    addon_stop();
}

struct installed {
    char oauth_id[64];
    char secret[64];
};

/* Installs the add-on into room; asserts 200 and returns its credentials. */
static struct installed install(const char *room)
{
    char body[300];
    snprintf(body, sizeof(body),
             "{\"room\":\"%s\",\"descriptor_url\":\"http://127.0.0.1:%d/descriptor\"}", room,
             ad.port);
    json_t *j = hs_json("POST", "/addons/install", body, 200);
    struct installed in;
    snprintf(in.oauth_id, sizeof(in.oauth_id), "%s", jstr(j, "oauth_id"));
    snprintf(in.secret, sizeof(in.secret), "%s", jstr(j, "oauth_secret"));
    json_decref(j);
    return in;
}

static void basic(char *out, size_t outlen, const char *id, const char *secret)
{
    char cred[256], b64[400];
    snprintf(cred, sizeof(cred), "%s:%s", id, secret);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)cred, (int)strlen(cred));
    snprintf(out, outlen,
             "Authorization: Basic %s\r\nContent-Type: application/x-www-form-urlencoded\r\n", b64);
}

/* POST /v2/oauth/token; returns the status, the token (if any) into token. */
static int get_token(const char *id, const char *secret, const char *form, char *token,
                     size_t toklen)
{
    char hdr[600], *out;
    basic(hdr, sizeof(hdr), id, secret);
    int st = hs_call("POST", "/v2/oauth/token", hdr, form, &out);
    json_t *j = json_loads(out, 0, NULL);
    if (token)
        snprintf(token, toklen, "%s", j && jstr(j, "access_token") ? jstr(j, "access_token") : "");
    json_decref(j);
    free(out);
    return st;
}

static int notify(const char *room, const char *token, const char *message)
{
    char path[128], hdr[300], body[300];
    snprintf(path, sizeof(path), "/v2/room/%s/notification", room);
    snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s\r\n", token);
    snprintf(body, sizeof(body), "{\"message\":\"%s\"}", message);
    return hs_call("POST", path, hdr, body, NULL);
}

/* base64url -> bytes; returns the length. */
static size_t b64url_decode(const char *in, size_t n, unsigned char *out)
{
    char buf[4096] = {0};
    size_t k = 0;
    for (size_t i = 0; i < n && k < sizeof(buf) - 4; i++)
        buf[k++] = in[i] == '-' ? '+' : in[i] == '_' ? '/' : in[i];
    while (k % 4)
        buf[k++] = '=';
    int len = EVP_DecodeBlock(out, (unsigned char *)buf, (int)k);
    ck_assert_int_ge(len, 0);
    return (size_t)len - (k >= 1 && buf[k - 1] == '=') - (k >= 2 && buf[k - 2] == '=');
}

/* Splits a JWT, checks its HS256 signature with secret (when secret is not NULL) and returns
 * its header and claims (new references). */
static int jwt_open(const char *jwt, const char *secret, json_t **header, json_t **claims)
{
    const char *d1 = strchr(jwt, '.');
    const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    ck_assert_msg(d1 && d2, "not a JWT: %s", jwt);
    unsigned char buf[4096];
    size_t n = b64url_decode(jwt, (size_t)(d1 - jwt), buf);
    *header = json_loadb((char *)buf, n, 0, NULL);
    n = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), buf);
    *claims = json_loadb((char *)buf, n, 0, NULL);
    ck_assert(*header && *claims);
    if (!secret)
        return 0;
    unsigned char mac[64], sig[128];
    unsigned int maclen;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)jwt, (size_t)(d2 - jwt),
         mac, &maclen);
    size_t slen = b64url_decode(d2 + 1, strlen(d2 + 1), sig);
    return slen == maclen && memcmp(sig, mac, maclen) == 0;
}

/* The JWT of a recorded webhook, by where it travelled. */
static const char *jwt_of(const struct seen *s, const char *where)
{
    if (strcmp(where, "query") == 0) {
        const char *q = strstr(s->path, "signed_request=");
        ck_assert_msg(q != NULL, "no signed_request in %s", s->path);
        ck_assert_str_eq(s->auth, "");
        return q + strlen("signed_request=");
    }
    ck_assert_msg(strstr(s->path, "signed_request") == NULL, "JWT also in %s", s->path);
    if (strcmp(where, "header_token") == 0) {
        ck_assert_msg(strncmp(s->auth, "JWT token=", 10) == 0, "Authorization: %s", s->auth);
        return s->auth + 10;
    }
    ck_assert_msg(strncmp(s->auth, "JWT ", 4) == 0 && strncmp(s->auth, "JWT token=", 10) != 0,
                  "Authorization: %s", s->auth);
    return s->auth + 4;
}

/* ---------------------------------------------------------------------------------------------
 * Tests.
 */
START_TEST(capabilities)
{
    json_t *c = hs_json("GET", "/v2/capabilities", NULL, 200);
    char want[128];
    snprintf(want, sizeof(want), "http://127.0.0.1:%d/v2/capabilities", hs_port);
    ck_assert_str_eq(jstr(json_object_get(c, "links"), "self"), want);
    snprintf(want, sizeof(want), "http://127.0.0.1:%d/v2", hs_port);
    ck_assert_str_eq(jstr(json_object_get(c, "links"), "api"), want);
    json_t *caps = json_object_get(c, "capabilities");
    snprintf(want, sizeof(want), "http://127.0.0.1:%d/v2/oauth/token", hs_port);
    ck_assert_str_eq(jstr(json_object_get(caps, "oauth2Provider"), "tokenUrl"), want);
    snprintf(want, sizeof(want), "http://127.0.0.1:%d/users/authorize", hs_port);
    ck_assert_str_eq(jstr(json_object_get(caps, "oauth2Provider"), "authorizationUrl"), want);
    snprintf(want, sizeof(want), "http://127.0.0.1:%d/v2/", hs_port);
    ck_assert_str_eq(jstr(json_object_get(caps, "hipchatApiProvider"), "url"), want);
    json_decref(c);
    ck_assert_int_eq(hs_call("POST", "/v2/capabilities", NULL, "{}", NULL), 405);

    /* --public-url replaces the base everywhere, and reaches the install callback. */
    hs_stop();
    const char *const extra[] = {"--public-url", "https://hipchat.example:8443/", NULL};
    hs_start(extra);
    c = hs_json("GET", "/v2/capabilities", NULL, 200);
    ck_assert_str_eq(jstr(json_object_get(c, "links"), "self"),
                     "https://hipchat.example:8443/v2/capabilities");
    ck_assert_str_eq(
        jstr(json_object_get(json_object_get(c, "capabilities"), "oauth2Provider"), "tokenUrl"),
        "https://hipchat.example:8443/v2/oauth/token");
    json_decref(c);
    ad.fetch_token = 0;
    install("1");
    struct seen s = seen_at(1);
    json_t *cb = json_loads(s.body, 0, NULL);
    ck_assert_str_eq(jstr(cb, "capabilitiesUrl"), "https://hipchat.example:8443/v2/capabilities");
    json_decref(cb);
    free(s.body);
}
END_TEST

START_TEST(install_flow)
{
    struct installed in = install("1");
    /* The add-on saw the descriptor fetch, then the install POST. */
    ck_assert_int_eq(seen_count(), 2);
    struct seen d = seen_at(0), p = seen_at(1);
    ck_assert_str_eq(d.method, "GET");
    ck_assert_str_eq(d.path, "/descriptor");
    ck_assert_str_eq(p.method, "POST");
    ck_assert_str_eq(p.path, "/installed");
    json_t *cb = json_loads(p.body, 0, NULL);
    char caps[128];
    snprintf(caps, sizeof(caps), "http://127.0.0.1:%d/v2/capabilities", hs_port);
    ck_assert_str_eq(jstr(cb, "capabilitiesUrl"), caps);
    ck_assert_str_eq(jstr(cb, "oauthId"), in.oauth_id);
    ck_assert_str_eq(jstr(cb, "oauthSecret"), in.secret);
    ck_assert_int_eq(json_integer_value(json_object_get(cb, "groupId")), 1);
    ck_assert(json_is_integer(json_object_get(cb, "roomId")));
    ck_assert_int_eq(json_integer_value(json_object_get(cb, "roomId")), 1);
    json_decref(cb);
    free(d.body);
    free(p.body);

    /* Inside its callback the add-on got a token (the server kept serving while it waited). */
    ck_assert_int_eq(ad.token_status, 200);
    ck_assert_msg(strncmp(ad.token, "hcs-oauth2-", 11) == 0, "token %s", ad.token);

    /* The listing has everything but the secret. */
    char *text;
    ck_assert_int_eq(hs_call("GET", "/addons", NULL, NULL, &text), 200);
    ck_assert_msg(strstr(text, in.secret) == NULL, "secret listed: %s", text);
    json_t *list = json_loads(text, 0, NULL);
    free(text);
    ck_assert_uint_eq(json_array_size(list), 1);
    json_t *a = json_array_get(list, 0);
    ck_assert_str_eq(jstr(a, "oauth_id"), in.oauth_id);
    ck_assert_str_eq(jstr(a, "key"), "test.addon");
    ck_assert_str_eq(jstr(a, "state"), "installed");
    ck_assert(json_is_false(json_object_get(a, "revoked")));
    ck_assert_uint_eq(json_array_size(json_object_get(a, "webhooks")), 2);
    char cbu[128];
    snprintf(cbu, sizeof(cbu), "http://127.0.0.1:%d/installed", ad.port);
    ck_assert_str_eq(jstr(a, "callback_url"), cbu);
    json_decref(list);

    /* Its token posts into its room only, and the record names the add-on. */
    ck_assert_int_eq(notify("1", ad.token, "from the add-on"), 204);
    ck_assert_int_eq(notify("2", ad.token, "elsewhere"), 401);
    ck_assert_int_eq(notify("9", ad.token, "nowhere"), 404);
    json_t *msgs = hs_json("GET", "/rooms/1/messages", NULL, 200);
    ck_assert_uint_eq(json_array_size(msgs), 1);
    json_t *m = json_array_get(msgs, 0);
    ck_assert_str_eq(jstr(m, "kind"), "notification");
    ck_assert_str_eq(jstr(m, "oauth_id"), in.oauth_id);
    json_decref(msgs);
    /* The room's configured token still works, and its records carry no oauth_id. */
    ck_assert_int_eq(notify("1", "tok1", "plain"), 204);
    msgs = hs_json("GET", "/rooms/1/messages", NULL, 200);
    ck_assert_ptr_null(json_object_get(json_array_get(msgs, 1), "oauth_id"));
    json_decref(msgs);
}
END_TEST

START_TEST(token_grant)
{
    struct installed in = install("1");
    char tok[128];
    const char *form = "grant_type=client_credentials&scope=send_notification";
    ck_assert_int_eq(get_token(in.oauth_id, in.secret, form, tok, sizeof(tok)), 200);
    /* The reply's fields. */
    char hdr[600], *out;
    basic(hdr, sizeof(hdr), in.oauth_id, in.secret);
    ck_assert_int_eq(hs_call("POST", "/v2/oauth/token", hdr,
                             "grant_type=client_credentials&scope=view_room+send_notification",
                             &out),
                     200);
    json_t *j = json_loads(out, 0, NULL);
    free(out);
    ck_assert_str_eq(jstr(j, "token_type"), "bearer");
    ck_assert_str_eq(jstr(j, "scope"), "view_room send_notification");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "expires_in")), 3600);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "group_id")), 1);
    ck_assert(json_string_length(json_object_get(j, "group_name")) > 0);
    ck_assert(json_string_length(json_object_get(j, "access_token")) > 20);
    json_decref(j);

    /* Refusals: 401 for who is asking, 400 for how. */
    static const struct {
        const char *id, *secret, *form;
        int status;
    } cases[] = {
        {NULL, "wrong-secret", "grant_type=client_credentials", 401},
        {"00000000-0000-4000-8000-000000000000", NULL, "grant_type=client_credentials", 401},
        {NULL, NULL, "grant_type=password", 400},
        {NULL, NULL, "scope=send_notification", 400},
        {NULL, NULL, "grant_type=client_credentials&scope=admin_room", 400},
        {NULL, NULL, "grant_type=client_credentials&scope=%zz", 400},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int st = get_token(cases[i].id ? cases[i].id : in.oauth_id,
                           cases[i].secret ? cases[i].secret : in.secret, cases[i].form, NULL, 0);
        ck_assert_msg(st == cases[i].status, "case %zu: %d", i, st);
    }
    /* Without Basic credentials, undecodable ones, a JSON body, the wrong method. */
    ck_assert_int_eq(hs_call("POST", "/v2/oauth/token",
                             "Content-Type: application/x-www-form-urlencoded\r\n",
                             "grant_type=client_credentials", NULL),
                     401);
    ck_assert_int_eq(hs_call("POST", "/v2/oauth/token",
                             "Authorization: Basic !!!\r\nContent-Type: "
                             "application/x-www-form-urlencoded\r\n",
                             "grant_type=client_credentials", NULL),
                     400);
    char jhdr[600];
    basic(jhdr, sizeof(jhdr), in.oauth_id, in.secret);
    *strstr(jhdr, "Content-Type") = '\0';
    ck_assert_int_eq(
        hs_call("POST", "/v2/oauth/token", jhdr, "{\"grant_type\":\"client_credentials\"}", NULL),
        400);
    ck_assert_int_eq(hs_call("GET", "/v2/oauth/token", NULL, NULL, NULL), 405);

    /* A token-shaped string that was never issued is refused even under --any-token. */
    hs_stop();
    const char *const extra[] = {"--any-token", NULL};
    hs_start(extra);
    ck_assert_int_eq(notify("1", "hcs-oauth2-0123456789abcdef", "forged"), 401);
    ck_assert_int_eq(notify("1", "anything-else", "any token"), 204);
}
END_TEST

START_TEST(token_stats)
{
    struct installed in = install("1");
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(
            get_token(in.oauth_id, in.secret, "grant_type=client_credentials", NULL, 0), 200);
    get_token(in.oauth_id, "bad", "grant_type=client_credentials", NULL, 0);
    json_t *s = hs_json("GET", "/stats", NULL, 200);
    /* one inside the install callback, three here; the refused one is not counted */
    ck_assert_int_eq(json_integer_value(json_object_get(s, "tokens_issued")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_object_get(s, "tokens_issued_by_client"), in.oauth_id)),
                     4);
    json_decref(s);
}
END_TEST

START_TEST(token_ttl)
{
    hs_stop();
    const char *const extra[] = {"--token-ttl", "1", NULL};
    hs_start(extra);
    struct installed in = install("1");
    char tok[128];
    ck_assert_int_eq(
        get_token(in.oauth_id, in.secret, "grant_type=client_credentials", tok, sizeof(tok)), 200);
    char *out;
    char hdr[600];
    basic(hdr, sizeof(hdr), in.oauth_id, in.secret);
    hs_call("POST", "/v2/oauth/token", hdr, "grant_type=client_credentials", &out);
    json_t *j = json_loads(out, 0, NULL);
    free(out);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "expires_in")), 1);
    json_decref(j);
    ck_assert_int_eq(notify("1", tok, "fresh"), 204);
    dutil_msleep(1100);
    ck_assert_int_eq(notify("1", tok, "stale"), 401);
    /* A new token works again. */
    ck_assert_int_eq(
        get_token(in.oauth_id, in.secret, "grant_type=client_credentials", tok, sizeof(tok)), 200);
    ck_assert_int_eq(notify("1", tok, "renewed"), 204);
}
END_TEST

START_TEST(revoke_client)
{
    struct installed in = install("1");
    char tok[128], path[128];
    ck_assert_int_eq(
        get_token(in.oauth_id, in.secret, "grant_type=client_credentials", tok, sizeof(tok)), 200);
    ck_assert_int_eq(notify("1", tok, "before"), 204);
    snprintf(path, sizeof(path), "/addons/%s/revoke", in.oauth_id);
    json_t *r = hs_json("POST", path, NULL, 200);
    ck_assert(json_is_true(json_object_get(r, "revoked")));
    json_decref(r);
    ck_assert_int_eq(notify("1", tok, "after"), 401);
    ck_assert_int_eq(get_token(in.oauth_id, in.secret, "grant_type=client_credentials", NULL, 0),
                     401);
    json_t *list = hs_json("GET", "/addons", NULL, 200);
    ck_assert_uint_eq(json_array_size(list), 1);
    ck_assert(json_is_true(json_object_get(json_array_get(list, 0), "revoked")));
    json_decref(list);
    /* A revoked installation gets no webhooks. */
    ad.hook_reply = NULL;
    json_t *say = hs_json("POST", "/rooms/1/say", "{\"message\":\"/ack 1\"}", 200);
    ck_assert_uint_eq(json_array_size(json_object_get(say, "deliveries")), 0);
    json_decref(say);
    ck_assert_int_eq(hs_call("POST", "/addons/nope/revoke", NULL, NULL, NULL), 404);
}
END_TEST

START_TEST(uninstall)
{
    struct installed in = install("1");
    char tok[128], path[128];
    ck_assert_int_eq(
        get_token(in.oauth_id, in.secret, "grant_type=client_credentials", tok, sizeof(tok)), 200);
    snprintf(path, sizeof(path), "/addons/%s", in.oauth_id);
    json_t *r = hs_json("DELETE", path, NULL, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "callback_status")), 204);
    json_decref(r);
    int n = seen_count();
    struct seen d = seen_at(n - 1);
    ck_assert_str_eq(d.method, "DELETE");
    char want[128];
    snprintf(want, sizeof(want), "/installed/%s", in.oauth_id);
    ck_assert_str_eq(d.path, want);
    free(d.body);
    /* Gone: its credentials and tokens stop working, the listing is empty, a second DELETE 404s. */
    ck_assert_int_eq(notify("1", tok, "after"), 401);
    ck_assert_int_eq(get_token(in.oauth_id, in.secret, "grant_type=client_credentials", NULL, 0),
                     401);
    json_t *list = hs_json("GET", "/addons", NULL, 200);
    ck_assert_uint_eq(json_array_size(list), 0);
    json_decref(list);
    ck_assert_int_eq(hs_call("DELETE", path, NULL, NULL, NULL), 404);
}
END_TEST

START_TEST(install_failures)
{
    char body[300], *out;
    /* The callback answers 500: nothing is kept, the credentials it was given are dead. */
    ad.install_status = 500;
    ad.fetch_token = 0;
    snprintf(body, sizeof(body),
             "{\"room\":\"1\",\"descriptor_url\":\"http://127.0.0.1:%d/descriptor\"}", ad.port);
    json_t *j = hs_json("POST", "/addons/install", body, 502);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "callback_status")), 500);
    ck_assert_str_eq(jstr(j, "callback_body"), "{\"why\":\"nope\"}");
    json_decref(j);
    struct seen p = seen_at(1);
    json_t *cb = json_loads(p.body, 0, NULL);
    free(p.body);
    ck_assert_int_eq(get_token(jstr(cb, "oauthId"), jstr(cb, "oauthSecret"),
                               "grant_type=client_credentials", NULL, 0),
                     401);
    json_decref(cb);
    json_t *list = hs_json("GET", "/addons", NULL, 200);
    ck_assert_uint_eq(json_array_size(list), 0);
    json_decref(list);

    /* Descriptors that cannot be installed into a room. */
    static const char *const bad[] = {
        "not json",
        "{\"name\":\"no key\"}",
        DESCRIPTOR_HEAD "\"webhook\":[{\"url\":\"http://x/PORT\",\"event\":\"room_message\","
                        "\"pattern\":\"(unclosed\"}]}}",
        "{\"key\":\"k\",\"links\":{\"self\":\"http://x/PORT\"},\"capabilities\":{"
        "\"hipchatApiConsumer\":{\"scopes\":[\"send_notification\"]},"
        "\"installable\":{\"callbackUrl\":\"http://127.0.0.1:PORT/"
        "installed\",\"allowRoom\":false}}}",
        "{\"key\":\"k\",\"links\":{\"self\":\"http://x/PORT\"},\"capabilities\":{"
        "\"installable\":{\"callbackUrl\":\"http://127.0.0.1:PORT/installed\"}}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ad.descriptor = bad[i];
        ck_assert_int_eq(hs_call("POST", "/addons/install", NULL, body, &out), 502);
        ck_assert_msg(strstr(out, "descriptor") != NULL, "case %zu: %s", i, out);
        free(out);
    }
    /* Nobody listening at the descriptor URL; bad requests; unknown room. */
    j = hs_json("POST", "/addons/install",
                "{\"room\":\"1\",\"descriptor_url\":\"http://127.0.0.1:1/d\"}", 502);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "descriptor_status")), 0);
    json_decref(j);
    ck_assert_int_eq(hs_call("POST", "/addons/install", NULL, "{\"room\":\"1\"}", NULL), 400);
    ck_assert_int_eq(hs_call("POST", "/addons/install", NULL,
                             "{\"room\":\"1\",\"descriptor_url\":\"http://x/\",\"x\":1}", NULL),
                     400);
    ck_assert_int_eq(hs_call("POST", "/addons/install", NULL,
                             "{\"room\":\"77\",\"descriptor_url\":\"http://x/\"}", NULL),
                     404);
    list = hs_json("GET", "/addons", NULL, 200);
    ck_assert_uint_eq(json_array_size(list), 0);
    json_decref(list);
}
END_TEST

static const char *const where_cases[] = {"header", "header_token", "query"};

START_TEST(say_signed)
{
    const char *where = where_cases[_i];
    struct installed in = install("1");
    ad.hook_reply = "{\"message\":\"Incident 7 acknowledged\",\"color\":\"green\"}";
    char body[200];
    snprintf(body, sizeof(body),
             "{\"message\":\"/ack 7 on it\",\"from\":\"Ann Oncall\",\"mention_name\":\"ann\","
             "\"user_id\":42,\"jwt_in\":\"%s\"}",
             where);
    int before = seen_count();
    json_t *r = hs_json("POST", "/rooms/1/say", body, 200);
    json_t *dl = json_object_get(r, "deliveries");
    ck_assert_uint_eq(json_array_size(dl), 1); /* the room_enter webhook is not called */
    json_t *d0 = json_array_get(dl, 0);
    ck_assert_str_eq(jstr(d0, "oauth_id"), in.oauth_id);
    ck_assert_int_eq(json_integer_value(json_object_get(d0, "status")), 200);
    ck_assert(json_is_true(json_object_get(d0, "posted")));
    ck_assert_int_eq(seen_count(), before + 1);

    struct seen h = seen_at(before);
    ck_assert_str_eq(h.method, "POST");
    ck_assert_msg(strncmp(h.path, "/hook/ack", 9) == 0, "path %s", h.path);
    json_t *hdr, *claims;
    ck_assert_msg(jwt_open(jwt_of(&h, where), in.secret, &hdr, &claims),
                  "signature does not verify with the installation's secret");
    ck_assert_str_eq(jstr(hdr, "alg"), "HS256");
    ck_assert_str_eq(jstr(claims, "iss"), in.oauth_id);
    ck_assert_str_eq(jstr(claims, "sub"), "42");
    json_int_t iat = json_integer_value(json_object_get(claims, "iat"));
    ck_assert(llabs((long long)iat - (long long)time(NULL)) <= 5);
    ck_assert_int_eq(json_integer_value(json_object_get(claims, "exp")) - iat, 300);
    ck_assert(json_string_length(json_object_get(claims, "jti")) > 0);
    json_t *ctx = json_object_get(claims, "context");
    ck_assert_int_eq(json_integer_value(json_object_get(ctx, "room_id")), 1);
    ck_assert_str_eq(jstr(ctx, "user_tz"), "UTC");
    json_decref(hdr);
    json_decref(claims);

    /* The webhook body. */
    json_t *w = json_loads(h.body, 0, NULL);
    free(h.body);
    ck_assert_str_eq(jstr(w, "event"), "room_message");
    ck_assert_str_eq(jstr(w, "oauth_client_id"), in.oauth_id);
    ck_assert_int_eq(json_integer_value(json_object_get(w, "webhook_id")),
                     json_integer_value(json_object_get(d0, "webhook_id")));
    json_t *msg = json_object_get(json_object_get(w, "item"), "message");
    ck_assert_str_eq(jstr(msg, "message"), "/ack 7 on it");
    ck_assert_str_eq(jstr(msg, "type"), "message");
    ck_assert_str_eq(jstr(msg, "id"), jstr(r, "message_id"));
    ck_assert(json_string_length(json_object_get(msg, "date")) > 0);
    ck_assert(json_is_array(json_object_get(msg, "mentions")));
    json_t *from = json_object_get(msg, "from");
    ck_assert_int_eq(json_integer_value(json_object_get(from, "id")), 42);
    ck_assert_str_eq(jstr(from, "name"), "Ann Oncall");
    ck_assert_str_eq(jstr(from, "mention_name"), "ann");
    json_t *room = json_object_get(json_object_get(w, "item"), "room");
    ck_assert_int_eq(json_integer_value(json_object_get(room, "id")), 1);
    json_decref(w);
    json_decref(r);

    /* The room has the user's message, then the add-on's reply as its notification. */
    json_t *msgs = hs_json("GET", "/rooms/1/messages", NULL, 200);
    ck_assert_uint_eq(json_array_size(msgs), 2);
    json_t *u = json_array_get(msgs, 0), *n = json_array_get(msgs, 1);
    ck_assert_str_eq(jstr(u, "kind"), "user");
    ck_assert_str_eq(jstr(u, "message"), "/ack 7 on it");
    ck_assert_str_eq(jstr(u, "from"), "Ann Oncall");
    ck_assert_str_eq(jstr(n, "kind"), "notification");
    ck_assert_str_eq(jstr(n, "message"), "Incident 7 acknowledged");
    ck_assert_str_eq(jstr(n, "color"), "green");
    ck_assert_str_eq(jstr(n, "from"), "Addon");
    ck_assert_str_eq(jstr(n, "oauth_id"), in.oauth_id);
    json_decref(msgs);
}
END_TEST

START_TEST(say_pattern_and_replies)
{
    install("1");
    int before = seen_count();
    /* The pattern (POSIX ERE "^/(ack|resolve) [0-9]+") filters. */
    static const struct {
        const char *text;
        size_t calls;
    } cases[] = {
        {"hello", 0}, {"please /ack 3", 0}, {"/ack x", 0}, {"/resolve 12", 1}, {"/ack 3", 1}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char body[200];
        snprintf(body, sizeof(body), "{\"message\":\"%s\"}", cases[i].text);
        json_t *r = hs_json("POST", "/rooms/1/say", body, 200);
        ck_assert_msg(json_array_size(json_object_get(r, "deliveries")) == cases[i].calls, "'%s'",
                      cases[i].text);
        json_decref(r);
    }
    ck_assert_int_eq(seen_count(), before + 2);
    /* Another room hears nothing; every message is stored as the user's. */
    json_t *r = hs_json("POST", "/rooms/2/say", "{\"message\":\"/ack 3\"}", 200);
    ck_assert_uint_eq(json_array_size(json_object_get(r, "deliveries")), 0);
    json_decref(r);
    json_t *msgs = hs_json("GET", "/rooms/1/messages", NULL, 200);
    ck_assert_uint_eq(json_array_size(msgs), 5);
    json_decref(msgs);

    /* A 204 posts nothing; an invalid notification body is reported, not posted. */
    ad.hook_reply = "{\"message\":\"x\",\"color\":\"pink\"}";
    r = hs_json("POST", "/rooms/1/say", "{\"message\":\"/ack 4\"}", 200);
    json_t *d0 = json_array_get(json_object_get(r, "deliveries"), 0);
    ck_assert(json_is_false(json_object_get(d0, "posted")));
    ck_assert(json_string_length(json_object_get(d0, "post_error")) > 0);
    json_decref(r);
    msgs = hs_json("GET", "/rooms/1/messages", NULL, 200);
    ck_assert_uint_eq(json_array_size(msgs), 6);
    json_decref(msgs);

    /* Bad say requests. */
    ck_assert_int_eq(hs_call("POST", "/rooms/1/say", NULL, "{}", NULL), 400);
    ck_assert_int_eq(
        hs_call("POST", "/rooms/1/say", NULL, "{\"message\":\"m\",\"jwt_in\":\"cookie\"}", NULL),
        400);
    ck_assert_int_eq(hs_call("POST", "/rooms/9/say", NULL, "{\"message\":\"m\"}", NULL), 404);
    ck_assert_int_eq(hs_call("GET", "/rooms/1/say", NULL, NULL, NULL), 405);
}
END_TEST

START_TEST(say_negative_signatures)
{
    struct installed in = install("1");
    json_t *hdr, *claims;
    /* alg none: no signature at all. */
    int before = seen_count();
    json_decref(hs_json("POST", "/rooms/1/say", "{\"message\":\"/ack 1\",\"alg\":\"none\"}", 200));
    struct seen h = seen_at(before);
    const char *jwt = jwt_of(&h, "header");
    ck_assert_msg(jwt[strlen(jwt) - 1] == '.', "alg none JWT has a signature: %s", jwt);
    ck_assert(!jwt_open(jwt, in.secret, &hdr, &claims));
    ck_assert_str_eq(jstr(hdr, "alg"), "none");
    json_decref(hdr);
    json_decref(claims);
    free(h.body);
    /* Another secret: the signature does not verify with the installation's. */
    json_decref(hs_json("POST", "/rooms/1/say",
                        "{\"message\":\"/ack 1\",\"secret\":\"not-the-secret\"}", 200));
    h = seen_at(before + 1);
    jwt = jwt_of(&h, "header");
    ck_assert(!jwt_open(jwt, in.secret, &hdr, &claims));
    json_decref(hdr);
    json_decref(claims);
    ck_assert(jwt_open(jwt, "not-the-secret", &hdr, &claims));
    json_decref(hdr);
    json_decref(claims);
    free(h.body);
}
END_TEST

/* Descriptors over HTTPS: verified against --ca-file (chain, then the host name or IP). */
START_TEST(tls_descriptor)
{
    hs_stop();
    addon_stop();
    char certdir[64], ca[128], body[300];
    dutil_tmpdir(certdir, sizeof(certdir), "hcs-addons-tls");
    ck_assert_int_eq(tsrv_make_certs(certdir), 0);
    addon_start_with(certdir);
    snprintf(ca, sizeof(ca), "%s/ca.pem", certdir);
    const char *const extra[] = {"--ca-file", ca, NULL};
    hs_start(extra);
    ad.fetch_token = 0;
    const char *const hosts[] = {"127.0.0.1", "localhost"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(body, sizeof(body), "{\"room\":\"1\",\"descriptor_url\":\"https://%s:%d/d\"}",
                 hosts[i], tsrv_port(tls_good));
        json_t *j = hs_json("POST", "/addons/install", body, 200);
        ck_assert_int_eq(json_integer_value(json_object_get(j, "callback_status")), 200);
        json_decref(j);
    }
    ck_assert_uint_eq(tsrv_nreqs(tls_good), 2);
    /* A certificate for another name: refused, nothing fetched. */
    snprintf(body, sizeof(body), "{\"room\":\"1\",\"descriptor_url\":\"https://127.0.0.1:%d/d\"}",
             tsrv_port(tls_wrong));
    json_t *j = hs_json("POST", "/addons/install", body, 502);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "descriptor_status")), 0);
    json_decref(j);
    ck_assert_uint_eq(tsrv_nreqs(tls_wrong), 0);
    /* Without --ca-file the test CA is unknown (system store): refused too. */
    hs_stop();
    hs_start(NULL);
    snprintf(body, sizeof(body), "{\"room\":\"1\",\"descriptor_url\":\"https://127.0.0.1:%d/d\"}",
             tsrv_port(tls_good));
    j = hs_json("POST", "/addons/install", body, 502);
    json_decref(j);
    ck_assert_uint_eq(tsrv_nreqs(tls_good), 2);
    dutil_rm_rf(certdir);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("hipchat_addons");
    TCase *tc = tcase_create("addons");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, capabilities);
    tcase_add_test(tc, install_flow);
    tcase_add_test(tc, token_grant);
    tcase_add_test(tc, token_stats);
    tcase_add_test(tc, token_ttl);
    tcase_add_test(tc, revoke_client);
    tcase_add_test(tc, uninstall);
    tcase_add_test(tc, install_failures);
    tcase_add_loop_test(tc, say_signed, 0, 3);
    tcase_add_test(tc, say_pattern_and_replies);
    tcase_add_test(tc, say_negative_signatures);
    tcase_add_test(tc, tls_descriptor);
    tcase_set_timeout(tc, 30 * dutil_slow());
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
