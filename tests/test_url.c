/*
 * test_url.c - the one URL parser (url.c) and every module that uses it.  A table of URLs goes
 * through fbr_url_parse(), the template engine's URL check (a static template and a URL taken
 * whole from a variable), the HTTP client, the delivery engine and the log masker: all give the
 * same verdict, and a refused URL becomes a dead letter with the parser's reason.  Then the two
 * URLs that used to abort the daemon (userinfo, port 0), static and from ${{ALERT.target}}, go
 * through the real daemon: they end as dead letters and the daemon keeps serving.
 */
#include <check.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_util.h"
#include "firebridge/client.h"
#include "firebridge/delivery.h"
#include "firebridge/log.h"
#include "firebridge/http.h"
#include "firebridge/template.h"
#include "firebridge/url.h"
#include "testsupport.h"

static const struct {
    const char *url;
    int ok;
} urls[] = {
    {"http://127.0.0.1:9/x", 1},
    {"https://h.invalid/v2/room/1/notification?auth_token=t", 1},
    {"HTTPS://[::1]:443/", 1},
    {"http://h.invalid", 1},
    {"http://h.invalid:65535/?q=1#frag", 1},
    {"http://h_x~y.invalid/%41?a=b&c=d", 1},
    {"http://1.2.3.4:1", 1},
    /* the two URLs that used to abort the daemon */
    {"http://u:p@example.com/x", 0},
    {"http://127.0.0.1:0/x", 0},
    {"http://u@h.invalid/x", 0},
    {"http://h.invalid:00/x", 0},
    {"http://h.invalid:65536/", 0},
    {"http://h.invalid:99999999999999999999/", 0},
    {"http://h.invalid:/x", 0},
    {"http://h.invalid:8a/", 0},
    {"http:///x", 0},
    {"http://", 0},
    {"http:/h/x", 0},
    {"ftp://h.invalid/x", 0},
    {"file:///etc/passwd", 0},
    {"/relative/path", 0},
    {"not a url", 0},
    {"", 0},
    {"http://[::1/x", 0},
    {"http://[::g]/", 0},
    {"http://[::1]x/", 0},
    {"http://[]/", 0},
    {"http://h.invalid/x y", 0},
    {"http://h.invalid/\x01", 0},
    {"http://h\\x/", 0},
    {"http://h%2e/", 0},
    {"http://h.invalid/caf\xc3\xa9", 0},
    {"http://h.invalid/{x}", 0},
};

/* The parser's own verdict and reason. */
static int parse_verdict(const char *s, const char **why)
{
    struct fbr_url u;
    *why = NULL;
    int rc = fbr_url_parse(s, strlen(s), &u, why);
    ck_assert(rc == FBR_OK || rc == FBR_INVALID);
    ck_assert(rc == FBR_OK ? *why == NULL : *why != NULL);
    return rc == FBR_OK;
}

/* The template engine: the URL as a static template, and taken whole from ${{ALERT.target}}. */
static int template_verdict(const char *tpl_src, const char *target, size_t want_len)
{
    char err[256];
    struct fbr_tpl *t;
    ck_assert_msg(fbr_tpl_compile(tpl_src, strlen(tpl_src), FBR_TPL_URL, &t, err, sizeof(err)) ==
                      FBR_OK,
                  "compile %s: %s", tpl_src, err);
    json_t *ev = json_pack("{s:{s:s}}", "ALERT", "target", target);
    struct fbr_tpl_scope scope = {.event = ev, .alert = json_object_get(ev, "ALERT")};
    struct fbr_render r;
    fbr_render_init(&r);
    int rc = fbr_tpl_render(t, &scope, &r);
    ck_assert(rc == FBR_OK || rc == FBR_INVALID);
    if (rc == FBR_INVALID) { /* a refused URL is still rendered whole, for its dead letter */
        ck_assert_uint_eq(r.total, want_len);
        ck_assert_ptr_nonnull(r.error);
    }
    fbr_render_free(&r);
    json_decref(ev);
    fbr_tpl_unref(&t);
    return rc == FBR_OK;
}

static void never_called(const struct fbr_client_resp *r, void *arg)
{
    (void)r, (void)arg;
    ck_abort_msg("the client called back for a request it was freed with");
}

START_TEST(same_verdict_everywhere)
{
    const char *url = urls[_i].url;
    const char *why;
    int ok = parse_verdict(url, &why);
    ck_assert_msg(ok == urls[_i].ok, "%s: parser says %d (%s)", url, ok, why ? why : "");

    /* template: static (a URL literal holds no "${{") and from a variable */
    ck_assert_msg(template_verdict(url, "", strlen(url)) == ok, "%s: static template differs", url);
    ck_assert_msg(template_verdict("${{ALERT.target}}", url, strlen(url)) == ok, "%s: variable differs", url);

    /* client and delivery engine, on one loop; names resolve through a nameserver nobody runs */
    struct event_base *base = event_base_new();
    char dir[64], err[256];
    dutil_tmpdir(dir, sizeof(dir), "fbr-url");
    struct fbr_client_opts co = {.pool_size = 1, .connect_timeout_ms = 1000,
                                 .request_timeout_ms = 1000, .nameserver = "127.0.0.1:1"};
    struct fbr_client *c;
    ck_assert_int_eq(fbr_client_new(base, &co, &c, err, sizeof(err)), FBR_OK);
    struct fbr_client_req req = {.method = "POST", .url = url, .url_len = strlen(url)};
    int crc = fbr_client_request(c, &req, never_called, NULL);
    ck_assert_msg((crc == FBR_OK) == ok, "%s: client says %s", url, fbr_strerror(crc));
    fbr_client_free(&c);

    struct fbr_delivery_opts o;
    fbr_delivery_opts_init(&o);
    o.data_dir = dir;
    o.nameserver = "127.0.0.1:1";
    struct fbr_delivery_engine *eng;
    ck_assert_int_eq(fbr_delivery_engine_new(base, &o, &eng, err, sizeof(err)), FBR_OK);
    struct fbr_outreq r;
    fbr_outreq_init(&r);
    r.method = FBR_M_POST;
    fbr_render_set_copy(&r.url, url, strlen(url));
    fbr_render_set_copy(&r.body, "{\"b\":1}", 7);
    int drc = fbr_delivery_submit(eng, &r, NULL);
    ck_assert_msg((drc == FBR_OK) == ok, "%s: delivery engine says %s", url, fbr_strerror(drc));
    ck_assert_uint_eq(fbr_delivery_get_metrics(eng)->dead_permanent, ok ? 0 : 1);
    ck_assert_uint_eq(fbr_delivery_pending(eng), ok ? 1 : 0);
    fbr_outreq_free(&r);
    json_t *dead = dutil_read_jsonl(fbr_delivery_dead_letter_path(eng));
    if (ok) {
        ck_assert_uint_eq(json_array_size(dead), 0);
    } else { /* written at once, with the parser's reason and the whole request */
        char want[300];
        snprintf(want, sizeof(want), "unsendable URL: %s", why);
        ck_assert_uint_eq(json_array_size(dead), 1);
        ck_assert_str_eq(dutil_jstr(dead, 0, "reason"), want);
        ck_assert_str_eq(dutil_jstr(dead, 0, "body"), "{\"b\":1}");
        json_t *as_json = json_stringn(url, strlen(url)); /* NULL when the URL is not UTF-8 */
        if (as_json)
            ck_assert_str_eq(dutil_jstr(dead, 0, "url"), url);
        json_decref(as_json);
    }
    json_decref(dead);
    fbr_delivery_shutdown(eng, "test over");
    fbr_delivery_engine_free(&eng);
    event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_free(base);
    dutil_rm_rf(dir);

    /* the log masker reads userinfo from the same split: a password never shows */
    char masked[512];
    fbr_log_mask_url(url, strlen(url), masked, sizeof(masked));
    if (strstr(url, "u:p@"))
        ck_assert_msg(strstr(masked, "u:***@") && !strstr(masked, ":p@"), "masked: %s", masked);
}
END_TEST

/* The slices of a URL the parser accepts, and the lenient split of one it refuses. */
START_TEST(slices)
{
    const char *s = "HTTPS://[::1]:8443/a/b?x=1&y=2#top";
    struct fbr_url u;
    const char *why;
    ck_assert_int_eq(fbr_url_parse(s, strlen(s), &u, &why), FBR_OK);
    ck_assert(fbr_slice_eq(u.scheme, FBR_SLICE("HTTPS")));
    ck_assert(fbr_slice_eq(u.authority, FBR_SLICE("[::1]:8443")));
    ck_assert_ptr_null(u.userinfo.ptr);
    ck_assert(fbr_slice_eq(u.host, FBR_SLICE("::1")));
    ck_assert(fbr_slice_eq(u.port, FBR_SLICE("8443")));
    ck_assert(fbr_slice_eq(u.path, FBR_SLICE("/a/b")));
    ck_assert(fbr_slice_eq(u.query, FBR_SLICE("x=1&y=2")));
    ck_assert(fbr_slice_eq(u.fragment, FBR_SLICE("top")));
    ck_assert(fbr_slice_eq(fbr_url_target(&u), FBR_SLICE("/a/b?x=1&y=2")));
    ck_assert_uint_eq(u.port_num, 8443);
    ck_assert_int_eq(u.tls, 1);
    ck_assert_int_eq(u.ipv6, 1);

    s = "http://h?q";
    ck_assert_int_eq(fbr_url_parse(s, strlen(s), &u, &why), FBR_OK);
    ck_assert_uint_eq(u.port_num, 80);
    ck_assert_ptr_null(u.port.ptr);
    ck_assert_uint_eq(u.path.len, 0);
    ck_assert(fbr_slice_eq(fbr_url_target(&u), FBR_SLICE("?q")));

    s = "http://user:pw@h:0/p";
    ck_assert_int_eq(fbr_url_split(s, strlen(s), &u), FBR_OK);
    ck_assert(fbr_slice_eq(u.userinfo, FBR_SLICE("user:pw")));
    ck_assert(fbr_slice_eq(u.host, FBR_SLICE("h")));
    ck_assert(fbr_slice_eq(u.port, FBR_SLICE("0")));
    ck_assert_int_eq(fbr_url_parse(s, strlen(s), &u, &why), FBR_INVALID);
    ck_assert_ptr_nonnull(strstr(why, "userinfo"));
    s = "http://h:0/p";
    ck_assert_int_eq(fbr_url_parse(s, strlen(s), &u, &why), FBR_INVALID);
    ck_assert_ptr_nonnull(strstr(why, "port 0"));
    s = "/x?auth_token=1";
    ck_assert_int_eq(fbr_url_split(s, strlen(s), &u), FBR_INVALID);
    ck_assert(fbr_slice_eq(u.query, FBR_SLICE("auth_token=1")));

    /* the head of a URL whose rest is not known yet */
    ck_assert_int_eq(fbr_url_parse_head("https://api.", 12, 0, &u, &why), FBR_AGAIN);
    ck_assert_int_eq(fbr_url_parse_head("http", 4, 0, &u, &why), FBR_AGAIN);
    ck_assert_int_eq(fbr_url_parse_head("https://h/", 10, 0, &u, &why), FBR_OK);
    ck_assert_int_eq(fbr_url_parse_head("https://u@h/", 12, 0, &u, &why), FBR_INVALID);
}
END_TEST

/* Two parses are the same slices relative to their own bytes (ptr NULL stays NULL). */
static void assert_same_parts(const struct fbr_url *a, const char *sa, const struct fbr_url *b,
                              const char *sb)
{
    const struct fbr_slice *pa[] = {&a->scheme, &a->authority, &a->userinfo, &a->host,
                                    &a->port,   &a->path,      &a->query,    &a->fragment};
    const struct fbr_slice *pb[] = {&b->scheme, &b->authority, &b->userinfo, &b->host,
                                    &b->port,   &b->path,      &b->query,    &b->fragment};
    for (size_t i = 0; i < FBR_ARRAY_LEN(pa); i++) {
        ck_assert_int_eq(pa[i]->ptr == NULL, pb[i]->ptr == NULL);
        ck_assert_uint_eq(pa[i]->len, pb[i]->len);
        if (pa[i]->ptr)
            ck_assert_int_eq(pa[i]->ptr - sa, pb[i]->ptr - sb);
    }
    ck_assert_uint_eq(a->port_num, b->port_num);
    ck_assert_int_eq(a->tls, b->tls);
    ck_assert_int_eq(a->ipv6, b->ipv6);
}

/*
 * A parse kept as offsets (how a delivery's URL is parsed once) and taken back over a copy of
 * the bytes at another address, the original overwritten (a compacted delivery's store moved):
 * the parts are the copy's, the same as parsing the copy; a parse kept from other bytes, or
 * nothing kept, is refused so that the reader parses.
 */
START_TEST(parse_kept_over_moved_bytes)
{
    static const char *const cases[] = {
        "HTTPS://[::1]:8443/a/b?x=1&y=2#top", "http://h?q", "http://h", "http://h/?",
        "http://127.0.0.1:9/v2/room/r1/notification?auth_token=T#a?b", "http://h#f?g",
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(cases); i++) {
        size_t n = strlen(cases[i]);
        char *a = fbr_xstrdup(cases[i]);
        struct fbr_url u, want, got;
        const char *why;
        ck_assert_int_eq(fbr_url_parse(a, n, &u, &why), FBR_OK);
        struct fbr_url_pos pos;
        fbr_url_pos_keep(&u, a, n, &pos);
        char *b = fbr_xmalloc(n + 64);
        memset(b, 'x', 64);
        memcpy(b + 64, a, n);
        memset(a, '?', n); /* the old place is gone */
        ck_assert_int_eq(fbr_url_pos_load(&pos, b + 64, n, &got), FBR_OK);
        ck_assert_int_eq(fbr_url_parse(b + 64, n, &want, &why), FBR_OK);
        assert_same_parts(&got, b + 64, &want, b + 64);
        ck_assert(fbr_slice_eq(fbr_url_target(&got), fbr_url_target(&want)));
        ck_assert_int_eq(fbr_url_pos_load(&pos, b + 64, n - 1, &got), FBR_NOTFOUND);
        free(a);
        free(b);
    }
    struct fbr_url_pos none;
    struct fbr_url u;
    memset(&none, 0, sizeof(none));
    ck_assert_int_eq(fbr_url_pos_load(&none, "http://h/", 9, &u), FBR_NOTFOUND);
    /* the target split: the first '#' ends path and query, a '?' after it is the fragment's */
    const char *why;
    ck_assert_int_eq(fbr_url_parse("http://h/p#f?g", 14, &u, &why), FBR_OK);
    ck_assert(fbr_slice_eq(u.path, FBR_SLICE("/p")));
    ck_assert_ptr_null(u.query.ptr);
    ck_assert(fbr_slice_eq(u.fragment, FBR_SLICE("f?g")));
    ck_assert_int_eq(fbr_url_parse("http://h/p?q?r#", 15, &u, &why), FBR_OK);
    ck_assert(fbr_slice_eq(u.query, FBR_SLICE("q?r")));
    ck_assert_ptr_nonnull(u.fragment.ptr);
    ck_assert_uint_eq(u.fragment.len, 0);
}
END_TEST

/* ---- through the real daemon ---- */

#define API_KEY "k3y"

static int post_alert(int port, const char *body)
{
    char req[2048], buf[4096];
    snprintf(req, sizeof(req),
             "POST /integrations/generic/20131114/alert/" API_KEY "/ops HTTP/1.1\r\n"
             "Host: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    return dutil_http(port, req, buf, sizeof(buf));
}

/* Counts dead letters whose url is url and whose reason names why. */
static size_t count_dead(json_t *dead, const char *url, const char *why)
{
    size_t n = 0;
    for (size_t i = 0; i < json_array_size(dead); i++) {
        const char *u = dutil_jstr(dead, i, "url"), *r = dutil_jstr(dead, i, "reason");
        n += u && r && strcmp(u, url) == 0 && strstr(r, why) != NULL;
    }
    return n;
}

START_TEST(crash_urls_become_dead_letters)
{
    char dir[64], cfg[128], data[128], log[160], dl[192];
    dutil_tmpdir(dir, sizeof(dir), "fbr-urlcrash");
    snprintf(cfg, sizeof(cfg), "%s/config.json", dir);
    snprintf(data, sizeof(data), "%s/data", dir);
    snprintf(log, sizeof(log), "%s/daemon.log", dir);
    snprintf(dl, sizeof(dl), "%s/dead-letters.jsonl", data);
    ck_assert_int_eq(mkdir(data, 0700), 0);
    dutil_write_file(cfg, "{\"api_keys\":[\"" API_KEY "\"],\"webhooks\":["
                          "{\"name\":\"static-userinfo\",\"event\":\"Any-Alert\","
                          "\"url\":\"http://u:p@example.com/x\"},"
                          "{\"name\":\"static-port0\",\"event\":\"Any-Alert\","
                          "\"url\":\"http://127.0.0.1:0/x\"},"
                          "{\"name\":\"variable\",\"event\":\"Any-Alert\","
                          "\"url\":\"${{ALERT.target}}\"}]}\n");

    /* the static URLs can never be sent to: the configuration check refuses them by name, the
     * password unquoted (issue 8, item 12) */
    const char *const check[] = {"-c", cfg, "--check-config", NULL};
    pid_t pid = dutil_spawn_daemon(log, check);
    int st = dutil_wait_exit(&pid, 10000 * dutil_slow(), NULL);
    char *text = dutil_slurp(log, NULL);
    ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0, "status %d: %s", st, text);
    ck_assert_msg(strstr(text, "webhooks[0].url") && strstr(text, "userinfo") &&
                      strstr(text, "webhooks[1].url") && strstr(text, "port") &&
                      !strstr(text, "webhooks[2]") && !strstr(text, "u:p@"),
                  "%s", text);
    free(text);
    /* the variable URL is checked per alert: accepted now, a dead letter at run time */
    dutil_write_file(cfg, "{\"api_keys\":[\"" API_KEY "\"],\"webhooks\":["
                          "{\"name\":\"variable\",\"event\":\"Any-Alert\","
                          "\"url\":\"${{ALERT.target}}\"}]}\n");
    pid = dutil_spawn_daemon(log, check);
    dutil_assert_exit_zero(dutil_wait_exit(&pid, 10000 * dutil_slow(), NULL), log);

    const char *const run[] = {"-c", cfg, "--listen", "127.0.0.1:0", "--data-dir", data, NULL};
    pid = dutil_spawn_daemon(log, run);
    int port = dutil_wait_port(&pid, log, "listening on 127.0.0.1:", 200 * dutil_slow(), 50, NULL);

    const char *targets[] = {"http://u:p@example.com/x", "http://127.0.0.1:0/x"};
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < 2; i++) {
            char body[256];
            snprintf(body, sizeof(body),
                     "{\"message_type\":\"CRITICAL\",\"entity_id\":\"e%d-%zu\",\"target\":\"%s\"}",
                     round, i, targets[i]);
            ck_assert_int_eq(post_alert(port, body), 200);
        }
    }
    /* still serving, and nothing was queued: every one of them is a dead letter already */
    char buf[4096];
    ck_assert_int_eq(dutil_get(port, "/healthz", buf, sizeof(buf)), 200);
    ck_assert_int_eq(dutil_metric(port, "firebridge_deliveries_pending"), 0);
    ck_assert_int_eq(dutil_metric(port, "firebridge_deliveries_total{outcome=\"dead_permanent\"}"),
                     2 * 3);
    json_t *dead = dutil_read_jsonl(dl);
    ck_assert_uint_eq(json_array_size(dead), 2 * 3);
    ck_assert_uint_eq(count_dead(dead, "http://u:p@example.com/x", "userinfo"), 3);
    ck_assert_uint_eq(count_dead(dead, "http://127.0.0.1:0/x", "port 0"), 3);
    json_decref(dead);
    /* the password stays out of the log */
    text = dutil_slurp(log, NULL);
    ck_assert_ptr_null(strstr(text, "u:p@"));
    ck_assert_ptr_nonnull(strstr(text, "u:***@example.com"));
    free(text);
    dutil_assert_exit_zero(dutil_stop(&pid, 15000 * dutil_slow(), NULL), log);
    dutil_rm_rf(dir);
}
END_TEST

static Suite *url_suite(void)
{
    Suite *s = suite_create("url");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, same_verdict_everywhere, 0, (int)FBR_ARRAY_LEN(urls));
    tcase_add_test(tc, slices);
    tcase_add_test(tc, parse_kept_over_moved_bytes);
    suite_add_tcase(s, tc);
    TCase *ti = tcase_create("daemon");
    tcase_set_timeout(ti, 60);
    tcase_add_test(ti, crash_urls_become_dead_letters);
    suite_add_tcase(s, ti);
    return s;
}

int main(void)
{
    return fbr_test_run(url_suite());
}
