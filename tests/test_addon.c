/*
 * test_addon.c - Single Room mode end to end (issue 10): the real daemon ($FBR_DAEMON), the real
 * contrib/hipchat-server ($HIPCHAT_SERVER) playing HipChat for add-ons, and a recording stand-in
 * of the platform's public API (http_testsrv, pumped on this test's loop).  The first case follows
 * the seed's Single Room steps as written: enable (--print-addon-url), copy the URL, install it
 * into a room, post an alert and see it in the room, type in the room and see it on the timeline
 * (a Multi-Room webhook on All-Chats forwards it to a second room) and at the platform API.  The
 * others: /ack and /resolve by number, uninstall then a webhook signed with the old secret (401),
 * token expiry mid-stream (short TTL: nothing lost, one token request per renewal), a revoked
 * installation (dead letters with the reason, /metrics), a restart that keeps the installation, a
 * capabilitiesUrl host outside the allow-list (403, nothing stored) and a links.self mismatch.
 */
#include <arpa/inet.h>
#include <check.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_util.h"
#include "firebridge/jwt.h"
#include "http_testsrv.h"
#include "testsupport.h"

#define ROOM "7"
#define TIMELINE_ROOM "8"
#define RK "devops"
#define KEY "k3y"
#define BUF (256 * 1024)

static char dir[64];
static struct event_base *base;
static struct tsrv *platform; /* the recording stand-in of the platform's public API */

struct proc {
    pid_t pid;
    int port;
    char out[160];
};
static struct proc hc, fb;
static char *buf;

/* ---- plumbing ----------------------------------------------------------------------------- */

static void pump(int ms)
{
    for (int i = 0; i < ms; i += 5) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        dutil_msleep(5);
    }
}

static void idle(int ms)
{
    pump(ms);
}

/* A request with an optional JSON body to port; returns the status, the response in buf. */
static int http(int port, const char *method, const char *path, const char *extra_head,
                const char *body)
{
    size_t bl = body ? strlen(body) : 0;
    char *req = malloc(bl + 4096);
    snprintf(req, bl + 4096,
             "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s"
             "Content-Length: %zu\r\n\r\n%s",
             method, path, extra_head ? extra_head : "",
             body ? "Content-Type: application/json\r\n" : "", bl, body ? body : "");
    int st = dutil_http(port, req, buf, BUF);
    free(req);
    return st;
}

/* The JSON body of the last response in buf (new reference, asserted to parse). */
static json_t *body_json(void)
{
    const char *b = strstr(buf, "\r\n\r\n");
    ck_assert_ptr_nonnull(b);
    json_t *j = json_loads(b + 4, 0, NULL);
    ck_assert_msg(j != NULL, "not JSON: %s", b + 4);
    return j;
}

static void hc_start(const char *const *flags)
{
    const char *exe = getenv("HIPCHAT_SERVER");
    ck_assert_msg(exe != NULL, "HIPCHAT_SERVER not set (run through meson test)");
    const char *argv[32] = {exe,        "--listen", "127.0.0.1:0",      "--room",
                            ROOM ":t7", "--room",   TIMELINE_ROOM ":t8"};
    int n = 7;
    for (int i = 0; flags && flags[i] && n < 31; i++)
        argv[n++] = flags[i];
    char err[160];
    snprintf(hc.out, sizeof(hc.out), "%s/hc.out", dir);
    snprintf(err, sizeof(err), "%s/hc.err", dir);
    hc.pid = dutil_spawn(argv, hc.out, err, 1);
    hc.port = dutil_wait_port(&hc.pid, hc.out, "listening on ", 200, 25, NULL);
}

/*
 * Writes the daemon's configuration: Single Room with the allow-list, the platform API at the
 * stand-in, and one Multi-Room webhook that forwards every chat to the timeline room, so what is
 * typed in the Single Room becomes visible as a timeline event.
 */
static void write_config(int fb_port, const char *hosts)
{
    char path[128], text[4096];
    snprintf(path, sizeof(path), "%s/fb.json", dir);
    snprintf(text, sizeof(text),
             "{\"api_keys\": [\"" KEY "\"], \"public_url\": \"http://127.0.0.1:%d\",\n"
             " \"room_rate\": \"1000/1\", \"retry_initial\": 50, \"retry_max_interval\": 200,\n"
             " \"hipchat\": {\"capabilities_hosts\": %s},\n"
             " \"oncall_api\": {\"url\": \"http://127.0.0.1:%d\", \"api_id\": \"the-id\",\n"
             "                \"api_key\": \"the-key\", \"username\": \"bridge\"},\n"
             " \"webhooks\": [{\"name\": \"timeline\", \"event\": \"All-Chats\",\n"
             "   \"url\": \"http://127.0.0.1:%d/v2/room/" TIMELINE_ROOM "/notification\",\n"
             "   \"headers\": {\"Authorization\": \"Bearer t8\"},\n"
             "   \"payload\": {\"message\": \"${{CHAT.USER_NAME}} said ${{CHAT.TEXT}} in "
             "${{CHAT.ROUTING_KEY}}/${{CHAT.ROOM_ID}}\", \"message_format\": \"text\"}}]}\n",
             fb_port, hosts ? hosts : "[\"127.0.0.1\"]", tsrv_port(platform), hc.port);
    dutil_write_file(path, text);
}

static void fb_start(int port)
{
    static int runs;
    char cfg[128], data[128], listen[64];
    snprintf(cfg, sizeof(cfg), "%s/fb.json", dir);
    snprintf(data, sizeof(data), "%s/data", dir);
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    snprintf(fb.out, sizeof(fb.out), "%s/fb%d.log", dir, ++runs); /* a restart: a fresh log */
    const char *args[] = {"-c", cfg, "--listen", listen, "--data-dir", data, NULL};
    fb.pid = dutil_spawn_daemon(fb.out, args);
    fb.port =
        dutil_wait_port(&fb.pid, fb.out, "listening on 127.0.0.1:", 200 * dutil_slow(), 50, idle);
}

static void fb_stop(void)
{
    dutil_assert_exit_zero(dutil_stop(&fb.pid, 15000 * dutil_slow(), idle), fb.out);
}

/* Both servers and the stand-in, with the configuration above (hcs flags optional). */
static void start_all(const char *const *hc_flags, const char *hosts)
{
    hc_start(hc_flags);
    int port = dutil_free_port();
    write_config(port, hosts);
    fb_start(port);
}

static void setup(void)
{
    buf = malloc(BUF);
    dutil_tmpdir(dir, sizeof(dir), "fbr-addon");
    base = event_base_new();
    platform = tsrv_new(base, NULL);
    tsrv_set_default(platform, (struct tsrv_reply){.status = 200});
    memset(&hc, 0, sizeof(hc));
    memset(&fb, 0, sizeof(fb));
}

static void teardown(void)
{
    if (fb.pid)
        dutil_stop(&fb.pid, 5000, NULL);
    if (hc.pid)
        dutil_stop(&hc.pid, 5000, NULL);
    tsrv_free(platform);
    event_base_free(base);
    const char *keep = getenv("FBR_ADDON_KEEP");
    if (!(keep && *keep == '1'))
        dutil_rm_rf(dir);
    free(buf);
}

/* The seed's "Enable Integration" + "copy the URL": firebridge --print-addon-url. */
static void print_addon_url(char *url, size_t cap)
{
    char cfg[128], out[160];
    snprintf(cfg, sizeof(cfg), "%s/fb.json", dir);
    snprintf(out, sizeof(out), "%s/url.out", dir);
    const char *argv[] = {getenv("FBR_DAEMON"), "-c", cfg, "--print-addon-url", RK, NULL};
    pid_t p = dutil_spawn(argv, out, out, 1);
    int st = dutil_wait_exit(&p, 10000, NULL);
    ck_assert_int_eq(st, 0);
    char *text = dutil_slurp(out, NULL);
    text[strcspn(text, "\n")] = 0;
    snprintf(url, cap, "%s", text);
    free(text);
}

/* Installs the add-on into room ROOM from url at hipchat-server; returns the answer (new ref). */
static json_t *install(const char *url, int want_status)
{
    char body[1024];
    snprintf(body, sizeof(body), "{\"room\": \"" ROOM "\", \"descriptor_url\": \"%s\"}", url);
    int st = http(hc.port, "POST", "/addons/install", NULL, body);
    ck_assert_msg(st == want_status, "install answered %d: %s", st, buf);
    return body_json();
}

static json_t *install_default(void)
{
    char url[512];
    print_addon_url(url, sizeof(url));
    json_t *a = install(url, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(a, "callback_status")), 200);
    return a;
}

static int post_alert(const char *type, const char *entity, const char *title)
{
    char body[512];
    snprintf(body, sizeof(body),
             "{\"message_type\": \"%s\", \"entity_id\": \"%s\", \"entity_display_name\": \"%s\"}",
             type, entity, title);
    return http(fb.port, "POST", "/integrations/generic/20131114/alert/" KEY "/" RK, NULL, body);
}

/* The messages of a room at hipchat-server (new reference). */
static json_t *room_messages(const char *room)
{
    char path[64];
    snprintf(path, sizeof(path), "/rooms/%s/messages", room);
    ck_assert_int_eq(http(hc.port, "GET", path, NULL, NULL), 200);
    return body_json();
}

/* How many messages of a room contain text (and, with kind, are of that kind). */
static size_t count_in_room(const char *room, const char *kind, const char *text)
{
    json_t *m = room_messages(room);
    size_t n = 0, i;
    json_t *v;
    json_array_foreach(m, i, v)
    {
        const char *k = json_string_value(json_object_get(v, "kind"));
        const char *msg = json_string_value(json_object_get(v, "message"));
        if ((!kind || (k && strcmp(k, kind) == 0)) && msg && strstr(msg, text))
            n++;
    }
    json_decref(m);
    return n;
}

/* Waits (pumping the stand-in) until count_in_room() reaches want; returns the last count. */
static size_t wait_room(const char *room, const char *kind, const char *text, size_t want)
{
    size_t n = 0;
    for (int i = 0; i < 200 * dutil_slow(); i++) {
        n = count_in_room(room, kind, text);
        if (n >= want)
            break;
        pump(50);
    }
    return n;
}

/* "Says" text in the room through hipchat-server (signed room_message webhook); returns the
 * answer (new reference). */
static json_t *say(const char *text, const char *jwt_in)
{
    char body[1024];
    snprintf(body, sizeof(body),
             "{\"message\": \"%s\", \"from\": \"Ann O'Neil\", \"mention_name\": \"ann\", "
             "\"user_id\": 42, \"jwt_in\": \"%s\"}",
             text, jwt_in);
    ck_assert_int_eq(http(hc.port, "POST", "/rooms/" ROOM "/say", NULL, body), 200);
    return body_json();
}

/* The platform request whose path starts with prefix and whose body contains text, or NULL. */
static const struct tsrv_req *platform_req(const char *prefix, const char *text)
{
    for (int i = 0; i < 200 * dutil_slow(); i++) {
        for (size_t k = 0; k < tsrv_nreqs(platform); k++) {
            const struct tsrv_req *r = tsrv_req(platform, k);
            if (strncmp(r->path, prefix, strlen(prefix)) == 0 && r->body && strstr(r->body, text))
                return r;
        }
        pump(50);
    }
    return NULL;
}

static long long metric(const char *series)
{
    return dutil_metric(fb.port, series);
}

static long long hc_stat(const char *key)
{
    ck_assert_int_eq(http(hc.port, "GET", "/stats", NULL, NULL), 200);
    json_t *j = body_json();
    long long v = json_integer_value(json_object_get(j, key));
    json_decref(j);
    return v;
}

/* ---- the seed's Single Room steps ---------------------------------------------------------- */

START_TEST(seed_single_room_steps)
{
    start_all(NULL, NULL);
    /* In Splunk On-Call: enable, replace $routing_key, copy the Add-on Capabilities URL */
    char url[512], want[512];
    print_addon_url(url, sizeof(url));
    snprintf(want, sizeof(want), "http://127.0.0.1:%d/hipchat/" RK "/capabilities", fb.port);
    ck_assert_str_eq(url, want);
    /* In HipChat: install an integration from a descriptor URL, choose the room, Install */
    json_t *a = install(url, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(a, "callback_status")), 200);
    const char *oid = json_string_value(json_object_get(a, "oauth_id"));
    ck_assert_ptr_nonnull(oid);
    /* stored, 0600, secret on disk only there */
    char path[160];
    snprintf(path, sizeof(path), "%s/data/hipchat-installations.json", dir);
    struct stat stt;
    ck_assert_int_eq(stat(path, &stt), 0);
    ck_assert_int_eq(stt.st_mode & 0777, 0600);
    char *file = dutil_slurp(path, NULL);
    ck_assert_ptr_nonnull(strstr(file, oid));
    ck_assert_ptr_nonnull(strstr(file, json_string_value(json_object_get(a, "oauth_secret"))));
    free(file);
    char *log = dutil_slurp(fb.out, NULL);
    ck_assert_ptr_null(strstr(log, json_string_value(json_object_get(a, "oauth_secret"))));
    free(log);

    /* Test the integration: an alert for the routing key appears in the room ... */
    ck_assert_int_eq(post_alert("CRITICAL", "disk/db01", "Disk <full> on db01"), 200);
    ck_assert_uint_eq(wait_room(ROOM, "notification", "Disk &lt;full&gt; on db01", 2), 2);
    json_t *m = room_messages(ROOM);
    json_t *first = json_array_get(m, 0);
    ck_assert_str_eq(json_string_value(json_object_get(first, "color")), "red");
    ck_assert_str_eq(json_string_value(json_object_get(first, "oauth_id")), oid);
    ck_assert_ptr_nonnull(json_string_value(json_object_get(first, "delivery")));
    json_decref(m);
    ck_assert_uint_eq(count_in_room(ROOM, "notification", "Incident <b>#1</b> triggered"), 1);
    /* another routing key does not reach this room */
    ck_assert_int_eq(http(fb.port, "POST", "/integrations/generic/20131114/alert/" KEY "/other",
                          NULL, "{\"message_type\":\"CRITICAL\",\"entity_display_name\":\"nope\"}"),
                     200);

    /* ... and what is typed in the room appears on the timeline and at the platform API */
    json_t *s = say("checking the disk now", "header");
    json_t *d = json_array_get(json_object_get(s, "deliveries"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "status")), 204);
    json_decref(s);
    ck_assert_uint_eq(wait_room(TIMELINE_ROOM, "notification",
                                "Ann O'Neil said checking the disk now in " RK "/" ROOM, 1),
                      1);
    const struct tsrv_req *r = platform_req("/api-public/v1/chat", "checking the disk now");
    ck_assert_ptr_nonnull(r);
    ck_assert_ptr_nonnull(strstr(r->head, "X-VO-Api-Id: the-id"));
    ck_assert_ptr_nonnull(strstr(r->head, "X-VO-Api-Key: the-key"));
    json_t *pb = json_loadb(r->body, r->body_len, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(pb, "username")), "bridge");
    ck_assert_str_eq(json_string_value(json_object_get(pb, "externalUsername")), "Ann O'Neil");
    ck_assert_str_eq(json_string_value(json_object_get(pb, "text")), "checking the disk now");
    json_decref(pb);
    /* the chat is not posted back into the room it came from (no loop) */
    pump(300);
    ck_assert_uint_eq(count_in_room(ROOM, "notification", "checking the disk now"), 0);
    ck_assert_uint_eq(count_in_room(ROOM, NULL, "nope"), 0);
    /* the other two JWT locations work as well */
    json_decref(say("via query", "query"));
    json_decref(say("via token", "header_token"));
    ck_assert_uint_eq(wait_room(TIMELINE_ROOM, NULL, "said via query", 1), 1);
    ck_assert_uint_eq(wait_room(TIMELINE_ROOM, NULL, "said via token", 1), 1);
    ck_assert_int_eq(metric("firebridge_hipchat_room_messages_total{kind=\"chat\"}"), 3);

    /* the configuration page, signed like the webhook */
    json_t *claims =
        json_pack("{s:s, s:I, s:I, s:s}", "iss", oid, "iat", (json_int_t)(fbr_wall_ms() / 1000),
                  "exp", (json_int_t)(fbr_wall_ms() / 1000 + 300), "sub", "42");
    char *secret = strdup(json_string_value(json_object_get(a, "oauth_secret")));
    char *tok = fbr_jwt_sign(claims, fbr_slice_from(secret), NULL);
    char page[2048];
    snprintf(page, sizeof(page), "/hipchat/" RK "/configure?signed_request=%s", tok);
    ck_assert_int_eq(http(fb.port, "GET", page, NULL, NULL), 200);
    ck_assert_ptr_nonnull(strstr(buf, "<dt>Room</dt><dd>7</dd>"));
    ck_assert_ptr_nonnull(strstr(buf, "Disk &lt;full&gt; on db01"));
    ck_assert_ptr_nonnull(strstr(buf, "valid"));
    /* the room's recent notifications with their outcomes (all seen in the room above) */
    ck_assert_ptr_nonnull(strstr(buf, "<th scope=\"col\">Outcome</th>"));
    ck_assert_ptr_nonnull(strstr(buf, "<td>delivered after 1 attempt(s)"));
    ck_assert_int_eq(http(fb.port, "GET", "/hipchat/" RK "/configure", NULL, NULL), 401);
    free(tok);
    free(secret);
    json_decref(claims);
    /* secrets and tokens never reach a log line or /metrics */
    ck_assert_int_eq(http(fb.port, "GET", "/metrics", NULL, NULL), 200);
    ck_assert_ptr_null(strstr(buf, json_string_value(json_object_get(a, "oauth_secret"))));
    ck_assert_ptr_null(strstr(buf, "hcs-oauth2-"));
    log = dutil_slurp(fb.out, NULL);
    ck_assert_ptr_null(strstr(log, json_string_value(json_object_get(a, "oauth_secret"))));
    ck_assert_ptr_null(strstr(log, "hcs-oauth2-"));
    free(log);
    json_decref(a);
    fb_stop();
}
END_TEST

/* ---- commands ----------------------------------------------------------------------------- */

START_TEST(ack_and_resolve_by_number)
{
    start_all(NULL, NULL);
    json_decref(install_default());
    ck_assert_int_eq(post_alert("CRITICAL", "api/latency", "API latency"), 200);
    ck_assert_uint_eq(wait_room(ROOM, "notification", "Incident <b>#1</b> triggered", 1), 1);

    json_t *s = say("/incidents", "header");
    const char *body = json_string_value(
        json_object_get(json_array_get(json_object_get(s, "deliveries"), 0), "body"));
    ck_assert_ptr_nonnull(strstr(body, "#1</b> UNACKED: API latency"));
    json_decref(s);

    s = say("/ack 1 on it", "header");
    json_t *d = json_array_get(json_object_get(s, "deliveries"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "status")), 200);
    ck_assert(json_is_true(json_object_get(d, "posted")));
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(d, "body")),
                                 "Incident <b>#1</b> acknowledged by Ann O&#39;Neil"));
    json_decref(s);
    /* the usual events fired: the room sees the incident change from the timeline too */
    ck_assert_uint_ge(wait_room(ROOM, "notification", "Incident <b>#1</b> acknowledged", 2), 2);
    const struct tsrv_req *r = platform_req("/api-public/v1/incidents/ack", "\"1\"");
    ck_assert_ptr_nonnull(r);
    ck_assert_ptr_nonnull(strstr(r->head, "PATCH "));
    json_t *pb = json_loadb(r->body, r->body_len, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(pb, "userName")), "bridge");
    ck_assert_str_eq(json_string_value(json_object_get(pb, "message")), "on it");
    json_decref(pb);

    s = say("/resolve 1", "query");
    d = json_array_get(json_object_get(s, "deliveries"), 0);
    ck_assert_ptr_nonnull(
        strstr(json_string_value(json_object_get(d, "body")), "Incident <b>#1</b> resolved"));
    json_decref(s);
    ck_assert_ptr_nonnull(platform_req("/api-public/v1/incidents/resolve", "\"1\""));
    ck_assert_uint_ge(wait_room(ROOM, "notification", "Incident <b>#1</b> resolved", 2), 2);

    /* unknown number, resolved one, garbage: a clear answer, never a 500 */
    const char *bad[] = {"/ack 42", "/ack 1", "/resolve", "/ack x7"};
    const char *want[] = {"No open incident #42", "No open incident #1", "Usage: /resolve",
                          "Usage: /ack"};
    for (size_t i = 0; i < 4; i++) {
        s = say(bad[i], "header");
        d = json_array_get(json_object_get(s, "deliveries"), 0);
        ck_assert_int_eq(json_integer_value(json_object_get(d, "status")), 200);
        ck_assert_msg(strstr(json_string_value(json_object_get(d, "body")), want[i]), "%s: %s",
                      bad[i], json_string_value(json_object_get(d, "body")));
        json_decref(s);
    }
    /* timeline events of /v1/events that name the routing key reach the room too */
    ck_assert_int_eq(http(fb.port, "POST", "/v1/events", "Authorization: Bearer " KEY "\r\n",
                          "{\"event\": \"On-Call\", \"ONCALL\": {\"USER_ID\": \"bob\", "
                          "\"TEAM_NAME\": \"Ops\", \"ROUTING_KEY\": \"" RK "\"}}"),
                     200);
    ck_assert_int_eq(http(fb.port, "POST", "/v1/events", "Authorization: Bearer " KEY "\r\n",
                          "{\"event\": \"Paging-Start\", \"PAGE\": {\"USER_ID\": \"carol\", "
                          "\"ROUTING_KEY\": \"elsewhere\"}}"),
                     200);
    ck_assert_uint_eq(wait_room(ROOM, "notification", "bob is now on call for Ops", 1), 1);
    ck_assert_uint_eq(count_in_room(ROOM, NULL, "carol"), 0);

    s = say("/help", "header_token");
    d = json_array_get(json_object_get(s, "deliveries"), 0);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(d, "body")), "/resolve"));
    json_decref(s);
    fb_stop();
}
END_TEST

/* ---- a journal that cannot be written ----------------------------------------------------- */

/* Sets the daemon's soft RLIMIT_FSIZE (prlimit(2) from outside): 0 makes its journal writes fail. */
static void fb_fsize(rlim_t soft)
{
    struct rlimit old, lim;
    ck_assert_int_eq(prlimit(fb.pid, RLIMIT_FSIZE, NULL, &old), 0);
    lim.rlim_cur = soft;
    lim.rlim_max = old.rlim_max;
    ck_assert_int_eq(prlimit(fb.pid, RLIMIT_FSIZE, &lim, NULL), 0);
}

static int readyz_becomes(int want)
{
    int st = 0;
    for (int i = 0; i < 100 * dutil_slow() && st != want; i++) {
        st = http(fb.port, "GET", "/readyz", NULL, NULL);
        if (st != want)
            pump(50);
    }
    return st;
}

/*
 * What is typed in the room changes the incident table and the timeline like an alert does, so
 * while the journal cannot be written it is refused the way an alert is (503 there): the room
 * is told it did not happen, nothing reaches the platform's API, the incident stays as it was,
 * and nothing of it turns up later.  Before, /ack answered "acknowledged" and called the
 * platform with the change only in memory (a kill -9 in the episode forgot it), and a chat got
 * 204 with its timeline delivery held until the disk came back.
 */
START_TEST(commands_refused_while_the_journal_fails)
{
    start_all(NULL, NULL);
    json_decref(install_default());
    ck_assert_int_eq(post_alert("CRITICAL", "api/latency", "API latency"), 200);
    ck_assert_uint_eq(wait_room(ROOM, "notification", "Incident <b>#1</b> triggered", 1), 1);

    fb_fsize(0);
    ck_assert_int_eq(post_alert("CRITICAL", "db/disk", "DB disk"), 503);
    ck_assert_int_eq(readyz_becomes(503), 503);
    json_t *s = say("/ack 1 on it", "header");
    const char *body = json_string_value(
        json_object_get(json_array_get(json_object_get(s, "deliveries"), 0), "body"));
    ck_assert_msg(body && strstr(body, "Could not acknowledge incident #1"), "/ack: %s", body);
    json_decref(s);
    s = say("typed while failing", "header");
    body = json_string_value(
        json_object_get(json_array_get(json_object_get(s, "deliveries"), 0), "body"));
    ck_assert_msg(body && strstr(body, "did not reach the on-call timeline"), "chat: %s", body);
    json_decref(s);

    fb_fsize(RLIM_INFINITY);
    ck_assert_int_eq(readyz_becomes(200), 200);
    s = say("/incidents", "header");
    body = json_string_value(
        json_object_get(json_array_get(json_object_get(s, "deliveries"), 0), "body"));
    ck_assert_msg(body && strstr(body, "#1</b> UNACKED: API latency"), "/incidents: %s", body);
    json_decref(s);
    pump(500);
    for (size_t k = 0; k < tsrv_nreqs(platform); k++) {
        const struct tsrv_req *r = tsrv_req(platform, k);
        ck_assert_msg(strncmp(r->path, "/api-public/v1/incidents/ack", 28) != 0 &&
                          !(r->body && strstr(r->body, "typed while failing")),
                      "the platform got %s %s", r->path, r->body ? r->body : "");
    }
    ck_assert_uint_eq(count_in_room(ROOM, "notification", "acknowledged"), 0);
    ck_assert_uint_eq(count_in_room(TIMELINE_ROOM, NULL, "typed while failing"), 0);

    /* with the disk back the same command works */
    s = say("/ack 1 on it", "header");
    body = json_string_value(
        json_object_get(json_array_get(json_object_get(s, "deliveries"), 0), "body"));
    ck_assert_msg(body && strstr(body, "Incident <b>#1</b> acknowledged"), "/ack: %s", body);
    json_decref(s);
    ck_assert_ptr_nonnull(platform_req("/api-public/v1/incidents/ack", "\"1\""));
    fb_stop();
}
END_TEST

/* ---- uninstall ---------------------------------------------------------------------------- */

START_TEST(uninstall_then_old_secret_is_refused)
{
    start_all(NULL, NULL);
    json_t *a = install_default();
    const char *oid = json_string_value(json_object_get(a, "oauth_id"));
    const char *secret = json_string_value(json_object_get(a, "oauth_secret"));
    char path[256];
    snprintf(path, sizeof(path), "/addons/%s", oid);
    ck_assert_int_eq(http(hc.port, "DELETE", path, NULL, NULL), 200);
    json_t *u = body_json();
    ck_assert_int_eq(json_integer_value(json_object_get(u, "callback_status")), 204);
    json_decref(u);
    /* idempotent: the same DELETE again is fine */
    snprintf(path, sizeof(path), "/hipchat/" RK "/installed/%s", oid);
    ck_assert_int_eq(http(fb.port, "DELETE", path, NULL, NULL), 204);

    /* a webhook signed with the old secret: 401, nothing reaches the timeline */
    json_t *claims = json_pack("{s:s, s:I, s:I, s:s, s:{s:I}}", "iss", oid, "iat",
                               (json_int_t)(fbr_wall_ms() / 1000), "exp",
                               (json_int_t)(fbr_wall_ms() / 1000 + 300), "sub", "42", "context",
                               "room_id", (json_int_t)7);
    char *tok = fbr_jwt_sign(claims, fbr_slice_from(secret), NULL);
    char head[2048], body[1024];
    snprintf(head, sizeof(head), "Authorization: JWT %s\r\n", tok);
    snprintf(body, sizeof(body),
             "{\"event\":\"room_message\",\"oauth_client_id\":\"%s\",\"webhook_id\":1,"
             "\"item\":{\"room\":{\"id\":7},\"message\":{\"message\":\"ghost\","
             "\"from\":{\"id\":42,\"name\":\"Ann\"}}}}",
             oid);
    ck_assert_int_eq(http(fb.port, "POST", "/hipchat/" RK "/webhook", head, body), 401);
    ck_assert_int_eq(metric("firebridge_hipchat_signed_requests_rejected_total{reason=\""
                            "unknown_iss\"}"),
                     1);
    ck_assert_int_eq(metric("firebridge_hipchat_uninstalls_total"), 1);
    char file[160];
    snprintf(file, sizeof(file), "%s/data/hipchat-installations.json", dir);
    char *text = dutil_slurp(file, NULL);
    ck_assert_ptr_null(strstr(text, oid));
    free(text);
    pump(300);
    ck_assert_uint_eq(count_in_room(TIMELINE_ROOM, NULL, "ghost"), 0);
    free(tok);
    json_decref(claims);
    json_decref(a);
    fb_stop();
}
END_TEST

/* ---- tokens ------------------------------------------------------------------------------- */

START_TEST(token_expiry_mid_stream)
{
    /* 4 s tokens: renewed 3 s after issue, never sent after 3.6 s */
    const char *flags[] = {"--token-ttl", "4", "--no-limits", NULL};
    start_all(flags, NULL);
    json_decref(install_default());
    long long issued0 = hc_stat("tokens_issued");
    ck_assert_int_eq(issued0, 1); /* the install's first token */
    uint64_t t0 = fbr_now_ms();
    int n = 0;
    char title[64];
    while (fbr_now_ms() - t0 < 10000u) {
        snprintf(title, sizeof(title), "stream item %03d", n++);
        ck_assert_int_eq(post_alert("INFO", "stream", title), 200);
        pump(200);
    }
    uint64_t elapsed = fbr_now_ms() - t0;
    for (int i = 0; i < n; i++) {
        snprintf(title, sizeof(title), "stream item %03d", i);
        ck_assert_msg(wait_room(ROOM, "notification", title, 1) == 1, "lost: %s", title);
    }
    long long issued = hc_stat("tokens_issued");
    /* renewals happened, each with one request: about one per 3 s, never one per delivery */
    ck_assert_int_ge(issued, 1 + 2);
    ck_assert_int_le(issued, 1 + (long long)(elapsed / 3000) + 1);
    ck_assert_int_eq(metric("firebridge_hipchat_token_requests_total"), issued - 1);
    char dl[160];
    snprintf(dl, sizeof(dl), "%s/data/dead-letters.jsonl", dir);
    json_t *dead = dutil_read_jsonl(dl);
    ck_assert_uint_eq(json_array_size(dead), 0);
    json_decref(dead);
    fb_stop();
}
END_TEST

START_TEST(revoked_installation_dead_letters)
{
    start_all(NULL, NULL);
    json_t *a = install_default();
    char path[256];
    snprintf(path, sizeof(path), "/addons/%s/revoke",
             json_string_value(json_object_get(a, "oauth_id")));
    ck_assert_int_eq(http(hc.port, "POST", path, NULL, "{}"), 200);
    ck_assert_int_eq(post_alert("INFO", "after-revoke", "after revoke"), 200);
    char dl[160];
    snprintf(dl, sizeof(dl), "%s/data/dead-letters.jsonl", dir);
    json_t *dead = NULL;
    for (int i = 0; i < 200 * dutil_slow(); i++) {
        json_decref(dead);
        dead = dutil_read_jsonl(dl);
        if (json_array_size(dead) >= 1)
            break;
        pump(50);
    }
    ck_assert_uint_eq(json_array_size(dead), 1);
    ck_assert_ptr_nonnull(strstr(dutil_jstr(dead, 0, "reason"), "revoked"));
    ck_assert_ptr_nonnull(strstr(
        json_string_value(json_object_get(json_array_get(dead, 0), "body")), "after revoke"));
    /* the dead letter carries no token */
    char *text = dutil_slurp(dl, NULL);
    ck_assert_ptr_null(strstr(text, "Bearer"));
    free(text);
    json_decref(dead);
    ck_assert_int_eq(metric("firebridge_hipchat_revoked_total"), 1);
    ck_assert_int_eq(metric("firebridge_hipchat_dead_revoked_total"), 1);
    ck_assert_int_eq(metric("firebridge_hipchat_installations{token=\"revoked\"}"), 1);
    ck_assert_uint_eq(count_in_room(ROOM, NULL, "after revoke"), 0);
    json_decref(a);
    fb_stop();
}
END_TEST

/* ---- persistence -------------------------------------------------------------------------- */

START_TEST(restart_keeps_installations)
{
    start_all(NULL, NULL);
    json_decref(install_default());
    int port = fb.port;
    fb_stop();
    fb_start(port);
    ck_assert_int_eq(metric("firebridge_hipchat_installations{token=\"empty\"}"), 1);
    ck_assert_int_eq(post_alert("WARNING", "after-restart", "after the restart"), 200);
    ck_assert_uint_eq(wait_room(ROOM, "notification", "after the restart", 2), 2);
    json_decref(say("still connected", "header"));
    ck_assert_uint_eq(wait_room(TIMELINE_ROOM, NULL, "said still connected", 1), 1);
    fb_stop();
}
END_TEST

START_TEST(journal_restores_notifications_with_their_token)
{
    /* A room notification pending when the daemon is killed comes back from the journal and,
     * at send time, asks the installation for its token again (the journal holds none):
     * hipchat-server refuses a notification without a valid token (401), so it arrives only if
     * the restored delivery carried one. */
    start_all(NULL, NULL);
    json_decref(install_default());
    ck_assert_int_eq(http(hc.port, "POST", "/faults", NULL,
                          "{\"room\": \"" ROOM "\", \"status\": 503, \"count\": -1}"),
                     200);
    ck_assert_int_eq(post_alert("INFO", "journaled", "kept in the journal"), 200);
    for (int i = 0; i < 100 * dutil_slow() && hc_stat("faults_injected") < 1; i++)
        pump(50); /* the first attempt got its 503: the delivery backs off, pending */
    ck_assert_int_ge(hc_stat("faults_injected"), 1);
    int port = fb.port;
    kill(fb.pid, SIGKILL);
    dutil_wait_exit(&fb.pid, 5000, idle);
    ck_assert_int_eq(http(hc.port, "DELETE", "/faults", NULL, NULL), 200);
    ck_assert_uint_eq(count_in_room(ROOM, "notification", "kept in the journal"), 0);
    fb_start(port);
    ck_assert_uint_eq(wait_room(ROOM, "notification", "kept in the journal", 1), 1);
    char dl[160];
    snprintf(dl, sizeof(dl), "%s/data/dead-letters.jsonl", dir);
    json_t *dead = dutil_read_jsonl(dl);
    ck_assert_uint_eq(json_array_size(dead), 0);
    json_decref(dead);
    /* the journal never held the token */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "grep -rq Bearer '%s/data/journal'", dir);
    ck_assert_int_ne(system(cmd), 0);
    fb_stop();
}
END_TEST

/* ---- reload ------------------------------------------------------------------------------ */

START_TEST(reload_changes_notify_and_templates)
{
    start_all(NULL, NULL);
    json_decref(install_default());
    /* SIGHUP with notify limited to incidents and a template for them */
    char path[128];
    snprintf(path, sizeof(path), "%s/fb.json", dir);
    char *cfg = dutil_slurp(path, NULL);
    const char *from = "\"hipchat\": {";
    char *at = strstr(cfg, from);
    ck_assert_ptr_nonnull(at);
    char *next = malloc(strlen(cfg) + 512);
    snprintf(next, strlen(cfg) + 512,
             "%.*s%s\"notify\": [\"incident\"], \"templates\": {\"incident\": {\"message\": "
             "\"INC ${{STATE.INCIDENT_NAME}} ${{ALERT.entity_display_name}}\", \"message_format\": "
             "\"text\", \"color\": \"purple\"}}, %s",
             (int)(at - cfg), cfg, from, at + strlen(from));
    dutil_write_file(path, next);
    free(next);
    free(cfg);
    kill(fb.pid, SIGHUP);
    for (int i = 0; i < 100 && metric("firebridge_config_reloads_total{result=\"ok\"}") < 1; i++)
        pump(50);
    ck_assert_int_eq(metric("firebridge_config_reloads_total{result=\"ok\"}"), 1);
    ck_assert_int_eq(post_alert("CRITICAL", "tpl", "a \\\"quoted\\\" title"), 200);
    ck_assert_uint_eq(wait_room(ROOM, "notification", "INC 1 a \"quoted\" title", 1), 1);
    pump(300);
    ck_assert_uint_eq(count_in_room(ROOM, NULL, "CRITICAL"), 0); /* alerts are off now */
    /* a reload without the section turns Single Room mode off: the routes answer 404 */
    write_config(fb.port, NULL);
    cfg = dutil_slurp(path, NULL);
    at = strstr(cfg, " \"hipchat\"");
    ck_assert_ptr_nonnull(at);
    char *end = strstr(at, "},\n");
    ck_assert_ptr_nonnull(end);
    memmove(at, end + 3, strlen(end + 3) + 1);
    at = strstr(cfg, " \"oncall_api\"");
    end = strstr(at, "},\n");
    memmove(at, end + 3, strlen(end + 3) + 1);
    dutil_write_file(path, cfg);
    free(cfg);
    kill(fb.pid, SIGHUP);
    for (int i = 0; i < 100 && metric("firebridge_config_reloads_total{result=\"ok\"}") < 2; i++)
        pump(50);
    ck_assert_int_eq(metric("firebridge_config_reloads_total{result=\"ok\"}"), 2);
    ck_assert_int_eq(http(fb.port, "GET", "/hipchat/" RK "/capabilities", NULL, NULL), 404);
    fb_stop();
}
END_TEST

/* ---- refused installs --------------------------------------------------------------------- */

static void assert_nothing_stored(void)
{
    char file[160];
    snprintf(file, sizeof(file), "%s/data/hipchat-installations.json", dir);
    char *text = dutil_slurp(file, NULL);
    ck_assert_ptr_null(strstr(text, "oauth_id"));
    free(text);
    ck_assert_int_eq(metric("firebridge_hipchat_installations{token=\"valid\"}"), 0);
}

START_TEST(capabilities_host_outside_allow_list)
{
    /* hipchat-server is on 127.0.0.1, which the allow-list does not name */
    start_all(NULL, "[\"api.hipchat.com\"]");
    char url[512];
    print_addon_url(url, sizeof(url));
    json_t *a = install(url, 502);
    ck_assert_int_eq(json_integer_value(json_object_get(a, "callback_status")), 403);
    json_decref(a);
    /* and directly: 403 with the reason, nothing fetched */
    ck_assert_int_eq(http(fb.port, "POST", "/hipchat/" RK "/installed", NULL,
                          "{\"oauthId\":\"o1\",\"oauthSecret\":\"s1\",\"roomId\":7,"
                          "\"groupId\":1,\"capabilitiesUrl\":\"http://evil.example/v2/"
                          "capabilities\"}"),
                     403);
    ck_assert_ptr_nonnull(strstr(buf, "capabilities_hosts"));
    ck_assert_int_eq(metric("firebridge_hipchat_installs_total{result=\"forbidden_host\"}"), 2);
    assert_nothing_stored();
    fb_stop();
}
END_TEST

START_TEST(links_self_mismatch_refused)
{
    start_all(NULL, NULL);
    /* hipchat-server's document says links.self = <base>/v2/capabilities: fetching it under
     * another URL must not be taken as that document */
    char body[512];
    snprintf(body, sizeof(body),
             "{\"oauthId\":\"o1\",\"oauthSecret\":\"s1\",\"roomId\":7,\"groupId\":1,"
             "\"capabilitiesUrl\":\"http://127.0.0.1:%d/v2/capabilities?x=1\"}",
             hc.port);
    ck_assert_int_eq(http(fb.port, "POST", "/hipchat/" RK "/installed", NULL, body), 403);
    ck_assert_ptr_nonnull(strstr(buf, "links.self"));
    ck_assert_int_eq(metric("firebridge_hipchat_installs_total{result=\"links_self_mismatch\"}"),
                     1);
    /* a document that does say the URL but whose credentials HipChat does not know: refused at
     * the token request, nothing stored either */
    snprintf(body, sizeof(body),
             "{\"oauthId\":\"o1\",\"oauthSecret\":\"s1\",\"roomId\":7,\"groupId\":1,"
             "\"capabilitiesUrl\":\"http://127.0.0.1:%d/v2/capabilities\"}",
             hc.port);
    ck_assert_int_eq(http(fb.port, "POST", "/hipchat/" RK "/installed", NULL, body), 401);
    ck_assert_int_eq(metric("firebridge_hipchat_installs_total{result=\"token_refused\"}"), 1);
    /* a global install (no roomId) is not offered: allowGlobal is false */
    snprintf(body, sizeof(body),
             "{\"oauthId\":\"o1\",\"oauthSecret\":\"s1\",\"groupId\":1,"
             "\"capabilitiesUrl\":\"http://127.0.0.1:%d/v2/capabilities\"}",
             hc.port);
    ck_assert_int_eq(http(fb.port, "POST", "/hipchat/" RK "/installed", NULL, body), 400);
    ck_assert_ptr_nonnull(strstr(buf, "allowGlobal"));
    assert_nothing_stored();
    fb_stop();
}
END_TEST

/*
 * A reload that removes the hipchat section while an install waits for its capabilities
 * document: the install gets 503 and the daemon keeps serving (it used to read the freed
 * configuration in the fetch's callback and die).  The document's server is the test's own,
 * which answers only when the test pumps its loop, i.e. after the reload.
 */
START_TEST(reload_removes_hipchat_during_install)
{
    start_all(NULL, NULL);
    char caps[160], doc[1024], raw[1400], body[512];
    snprintf(caps, sizeof(caps), "http://127.0.0.1:%d/slowcaps", tsrv_port(platform));
    snprintf(doc, sizeof(doc),
             "{\"links\":{\"self\":\"%s\"},\"capabilities\":{\"oauth2Provider\":{\"tokenUrl\":"
             "\"http://127.0.0.1:%d/v2/oauth/token\"},\"hipchatApiProvider\":{\"url\":"
             "\"http://127.0.0.1:%d/v2/\"}}}",
             caps, hc.port, hc.port);
    snprintf(raw, sizeof(raw),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(doc), doc);
    struct tsrv_reply r = {.raw = raw};
    tsrv_script(platform, "/slowcaps", &r, 1);
    snprintf(body, sizeof(body),
             "{\"oauthId\":\"o1\",\"oauthSecret\":\"s1\",\"roomId\":7,\"groupId\":1,"
             "\"capabilitiesUrl\":\"%s\"}",
             caps);
    char req[1024];
    snprintf(req, sizeof(req),
             "POST /hipchat/" RK "/installed HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    int fd = dutil_connect(fb.port);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(dutil_send_all(fd, req, strlen(req)), 0);
    dutil_msleep(300 * dutil_slow()); /* the daemon has sent its GET; nobody answers yet */

    char cfg[128], text[256];
    snprintf(cfg, sizeof(cfg), "%s/fb.json", dir);
    snprintf(text, sizeof(text), "{\"api_keys\": [\"" KEY "\"], \"public_url\": "
                                 "\"http://127.0.0.1:%d\"}\n", fb.port);
    dutil_write_file(cfg, text);
    ck_assert_int_eq(kill(fb.pid, SIGHUP), 0);
    for (int i = 0; i < 100; i++) { /* wait for the reload to be applied */
        char *log = dutil_slurp(fb.out, NULL);
        int done = log && strstr(log, "configuration reloaded") != NULL;
        free(log);
        if (done)
            break;
        dutil_msleep(50);
    }
    pump(500); /* now the document arrives */
    ck_assert_int_eq(dutil_read_response(fd, buf, BUF), 503);
    ck_assert_ptr_nonnull(strstr(buf, "turned off by a reload"));
    close(fd);
    ck_assert_int_eq(http(fb.port, "GET", "/healthz", NULL, NULL), 200);
    char file[160];
    snprintf(file, sizeof(file), "%s/data/hipchat-installations.json", dir);
    char *stored = dutil_slurp(file, NULL); /* NULL: never written */
    ck_assert_msg(!stored || !strstr(stored, "oauth_id"), "stored: %s", stored);
    free(stored);
    fb_stop();
}
END_TEST

/*
 * Fields at the intake's limits, all characters that HTML-escaping lengthens: the room
 * notification must still fit HipChat's 10,000 characters (it used to render 14,117 and be
 * refused with 400 by the room, so the alert never showed).
 */
START_TEST(escaped_fields_fit_the_room_limit)
{
    start_all(NULL, NULL);
    json_decref(install_default());
    size_t tl = 1024, sl = 20000;
    char *body = malloc(tl + sl + 256);
    int n = sprintf(body, "{\"message_type\": \"CRITICAL\", \"entity_id\": \"long-1\", "
                          "\"entity_display_name\": \"");
    memset(body + n, '<', tl);
    n += (int)tl;
    n += sprintf(body + n, "\", \"state_message\": \"");
    memset(body + n, '&', sl);
    n += (int)sl;
    sprintf(body + n, "\"}");
    ck_assert_int_eq(
        http(fb.port, "POST", "/integrations/generic/20131114/alert/" KEY "/" RK, NULL, body), 200);
    free(body);
    /* the alert (title and state message) and the incident it triggered (title) */
    ck_assert_uint_ge(wait_room(ROOM, "notification", "&amp;&amp;&amp;", 1), 1);
    ck_assert_uint_ge(wait_room(ROOM, "notification", "&lt;&lt;&lt;", 2), 2);
    json_t *m = room_messages(ROOM);
    size_t i;
    json_t *v;
    json_array_foreach(m, i, v)
    {
        const char *msg = json_string_value(json_object_get(v, "message"));
        if (msg && strstr(msg, "&lt;&lt;"))
            ck_assert_uint_le(strlen(msg), 10000); /* ASCII and one ellipsis: bytes >= chars */
    }
    json_decref(m);
    fb_stop();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("addon");
    TCase *tc = tcase_create("single_room");
    tcase_set_timeout(tc, 90);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, seed_single_room_steps);
    tcase_add_test(tc, ack_and_resolve_by_number);
    tcase_add_test(tc, commands_refused_while_the_journal_fails);
    tcase_add_test(tc, uninstall_then_old_secret_is_refused);
    tcase_add_test(tc, token_expiry_mid_stream);
    tcase_add_test(tc, revoked_installation_dead_letters);
    tcase_add_test(tc, restart_keeps_installations);
    tcase_add_test(tc, journal_restores_notifications_with_their_token);
    tcase_add_test(tc, reload_changes_notify_and_templates);
    tcase_add_test(tc, capabilities_host_outside_allow_list);
    tcase_add_test(tc, links_self_mismatch_refused);
    tcase_add_test(tc, reload_removes_hipchat_during_install);
    tcase_add_test(tc, escaped_fields_fit_the_room_limit);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
