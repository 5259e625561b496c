/*
 * test_webhook.c - webhook.c on its own: compiling the `webhooks` section (every error with its
 * JSON path, the options of a valid one, references outliving the list), rendering a compiled
 * webhook into an fbr_outreq and one built by hand, and the default rate key it gives HipChat
 * room URLs (the delivery engine knows no chat protocol).
 */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/events.h"
#include "firebridge/http.h"
#include "firebridge/webhook.h"
#include "testsupport.h"

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (!j)
        ck_abort_msg("bad JSON in test: %s", e.text);
    return j;
}

/* ---- webhook compile errors ------------------------------------------------------------------ */

static const struct {
    const char *webhooks;
    const char *error;
} wh_bad[] = {
    {"{}", "webhooks: must be an array"},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\"},{\"event\":\"Incident-Opened\","
     "\"url\":\"http://h/\"}]",
     "webhooks[1].event: must be one of the 12 platform events or \"Any-Alert\""},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"method\":\"FETCH\"}]",
     "webhooks[0].method: must be GET, POST, PUT, DELETE or PATCH"},
    {"[{\"event\":\"On-Call\"}]", "webhooks[0].url: missing"},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/${{NOPE.x}}\"}]", "webhooks[0].url: column"},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"payload\":\"${{ALERT.x\"}]",
     "webhooks[0].payload: column"},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"headers\":{\"Bad Name\":\"v\"}}]",
     "webhooks[0].headers.Bad Name: not a valid header name"},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"headers\":{\"content-type\":\"v\"}}]",
     "webhooks[0].headers.content-type: set by firebridge itself (use content_type)"},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"headers\":[]}]",
     "webhooks[0].headers: must be an object"},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"room_rate\":\"5\"}]",
     "webhooks[0].room_rate: must be \"N/SECONDS\""},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"token_rate\":\"0/10\"}]",
     "webhooks[0].token_rate: must be \"N/SECONDS\""},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"enabled\":1}]",
     "webhooks[0].enabled: must be true or false"},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"to\":\"x\"}]",
     "webhooks[0]: unknown key \"to\""},
    {"[{\"event\":\"On-Call\",\"url\":\"http://h/\",\"content_type\":\"a\\r\\nb\"}]",
     "webhooks[0].content_type: must be a non-empty single-line string"},
};

START_TEST(webhook_compile_error)
{
    struct fbr_cfgerr errs = {0};
    struct fbr_webhooks w;
    json_t *j = parse(wh_bad[_i].webhooks);
    ck_assert_int_eq(fbr_webhooks_compile(j, &w, &errs), FBR_INVALID);
    ck_assert_uint_eq(w.n, 0);
    int found = 0;
    for (size_t k = 0; k < errs.n; k++)
        found |= strncmp(errs.msgs[k], wh_bad[_i].error, strlen(wh_bad[_i].error)) == 0;
    ck_assert_msg(found, "want \"%s\", got \"%s\"", wh_bad[_i].error, errs.n ? errs.msgs[0] : "");
    json_decref(j);
    fbr_cfgerr_clear(&errs);
}
END_TEST

START_TEST(webhook_compile_ok)
{
    struct fbr_cfgerr errs = {0};
    struct fbr_webhooks w;
    json_t *j = parse("[{\"name\":\"n\",\"event\":\"any-alert\",\"method\":\"patch\","
                      "\"url\":\"https://h/x\",\"room_rate\":\"30/10\",\"token_rate\":\"500/300\","
                      "\"rate_key\":\"${{ALERT.room_id}}\",\"description\":\"d\"}]");
    ck_assert_int_eq(fbr_webhooks_compile(j, &w, &errs), FBR_OK);
    ck_assert_uint_eq(w.n, 1);
    ck_assert_uint_eq(w.v[0]->events, FBR_EV_BIT(FBR_EV_ANY_ALERT));
    ck_assert_uint_eq(w.v[0]->method, FBR_M_PATCH);
    ck_assert_str_eq(w.v[0]->content_type, "application/json");
    ck_assert_uint_eq(w.v[0]->room_rate.n, 30);
    ck_assert_uint_eq(w.v[0]->room_rate.secs, 10);
    ck_assert_uint_eq(w.v[0]->token_rate.n, 500);
    ck_assert_ptr_null(w.v[0]->payload);
    ck_assert_int_eq(w.v[0]->enabled, 1);
    /* A reference held by an in-flight delivery survives the list being dropped. */
    struct fbr_webhook *held = fbr_webhook_ref(w.v[0]);
    fbr_webhooks_clear(&w);
    ck_assert_str_eq(held->name, "n");
    fbr_webhook_unref(&held);
    ck_assert_ptr_null(held);
    json_decref(j);
}
END_TEST

/* A request built by hand, as the delivery engine does for a replayed dead letter: no webhook,
 * owned strings, header arrays sized by nheaders with headers_cap left 0.  Freed without leaks
 * (valgrind / ASan setups), and reusable for a rendering afterwards. */
START_TEST(outreq_by_hand)
{
    struct fbr_outreq o;
    fbr_outreq_init(&o);
    o.method = FBR_M_POST;
    fbr_render_set_copy(&o.url, "http://127.0.0.1/x", 18);
    fbr_render_set_copy(&o.body, "{}", 2);
    o.content_type = fbr_xstrdup("application/json");
    o.nheaders = 2;
    o.header_names = fbr_xcalloc(2, sizeof(*o.header_names));
    o.headers = fbr_xcalloc(2, sizeof(*o.headers));
    for (size_t i = 0; i < 2; i++) {
        o.header_names[i] = fbr_xstrdup(i ? "X-B" : "X-A");
        fbr_render_init(&o.headers[i]);
        fbr_render_set_copy(&o.headers[i], "v", 1);
    }
    fbr_outreq_release(&o);
    ck_assert_uint_eq(o.nheaders, 0);
    ck_assert_uint_eq(o.headers_cap, 2);

    struct fbr_cfgerr errs = {0};
    struct fbr_webhooks w;
    json_t *j = parse("[{\"event\":\"Any-Alert\",\"url\":\"http://127.0.0.1/${{ALERT.a}}\","
                      "\"headers\":{\"X-1\":\"1\",\"X-2\":\"2\",\"X-3\":\"${{ALERT.a}}\"}}]");
    ck_assert_int_eq(fbr_webhooks_compile(j, &w, &errs), FBR_OK);
    json_t *ev = parse("{\"ALERT\":{\"a\":\"b\"}}");
    ck_assert_int_eq(fbr_outreq_render(&o, w.v[0], ev), FBR_OK);
    char *url = fbr_render_strdup(&o.url), *h = fbr_render_strdup(&o.headers[2]);
    ck_assert_str_eq(url, "http://127.0.0.1/b");
    ck_assert_str_eq(h, "b");
    free(url);
    free(h);
    struct fbr_outreq moved;
    fbr_outreq_move(&moved, &o);
    ck_assert_ptr_null(o.webhook);
    ck_assert_uint_eq(moved.nheaders, 3);
    fbr_outreq_free(&moved);
    fbr_outreq_free(&o);
    fbr_webhooks_clear(&w);
    json_decref(ev);
    json_decref(j);
}
END_TEST

static const struct {
    const char *url;
    const char *key; /* "" : none (the engine keys scheme + host + path) */
} keys[] = {
    {"https://h.example/v2/room/42/notification?auth_token=t", "room:h.example/42"},
    {"http://127.0.0.1:8080/v2/room/${{ALERT.room}}/notification", "room:127.0.0.1:8080/ops%20a"},
    {"https://h.example/v2/room/42/notification/x", ""},
    {"https://h.example/v2/room/4/2/notification", ""},
    {"https://h.example/v2/room//notification", ""},
    {"https://h.example/hooks/x", ""},
};

START_TEST(default_rate_key)
{
    char cfg[512];
    snprintf(cfg, sizeof(cfg),
             "[{\"name\":\"w\",\"event\":\"Any-Alert\",\"method\":\"put\",\"url\":\"%s\"}]",
             keys[_i].url);
    json_t *j = json_loads(cfg, 0, NULL);
    ck_assert_ptr_nonnull(j);
    struct fbr_webhooks whs = {0};
    struct fbr_cfgerr errs = {0};
    ck_assert_int_eq(fbr_webhooks_compile(j, &whs, &errs), FBR_OK);
    ck_assert_uint_eq(whs.v[0]->method, FBR_M_PUT);
    json_t *ev = json_pack("{s:{s:s}}", "ALERT", "room", "ops a");
    struct fbr_outreq o;
    fbr_outreq_init(&o);
    ck_assert_int_eq(fbr_outreq_render(&o, whs.v[0], ev), FBR_OK);
    char *key = fbr_render_strdup(&o.rate_key);
    ck_assert_str_eq(key, keys[_i].key);
    free(key);
    fbr_outreq_free(&o);
    json_decref(ev);
    json_decref(j);
    fbr_webhooks_clear(&whs);
}
END_TEST

/* A rate_key of the webhook's own wins over the default. */
START_TEST(own_rate_key_wins)
{
    json_t *j = json_loads("[{\"event\":\"Any-Alert\",\"rate_key\":\"k-${{ALERT.room}}\","
                           "\"url\":\"https://h/v2/room/1/notification\"}]",
                           0, NULL);
    struct fbr_webhooks whs = {0};
    struct fbr_cfgerr errs = {0};
    ck_assert_int_eq(fbr_webhooks_compile(j, &whs, &errs), FBR_OK);
    json_t *ev = json_pack("{s:{s:s}}", "ALERT", "room", "r");
    struct fbr_outreq o;
    fbr_outreq_init(&o);
    ck_assert_int_eq(fbr_outreq_render(&o, whs.v[0], ev), FBR_OK);
    char *key = fbr_render_strdup(&o.rate_key);
    ck_assert_str_eq(key, "k-r");
    free(key);
    fbr_outreq_free(&o);
    json_decref(ev);
    json_decref(j);
    fbr_webhooks_clear(&whs);
}
END_TEST

/*
 * The rendered URL is parsed once, here, for the delivery engine and the client (o->url_pos): the
 * kept parse is the parse of the rendered bytes, it is reset with the outreq (a render buffer
 * reused for the next alert never carries the last URL's parse), and an unsendable URL keeps
 * none (the engine parses it and dead-letters it with the reason) yet still gets its default
 * room key, as the lenient split always gave it.
 */
START_TEST(url_parsed_once)
{
    json_t *j = json_loads("[{\"event\":\"Any-Alert\",\"url\":\"${{ALERT.u}}\"}]", 0, NULL);
    struct fbr_webhooks whs = {0};
    struct fbr_cfgerr errs = {0};
    ck_assert_int_eq(fbr_webhooks_compile(j, &whs, &errs), FBR_OK);
    static const char *const urls[] = {"https://chat.example:8443/v2/room/r-7/notification?a=b",
                                       "http://u:p@h/v2/room/9/notification",
                                       "http://[::1]/v2/room/long-room-name/notification#x"};
    struct fbr_outreq o;
    fbr_outreq_init(&o);
    for (size_t i = 0; i < FBR_ARRAY_LEN(urls); i++) {
        json_t *ev = json_pack("{s:{s:s}}", "ALERT", "u", urls[i]);
        ck_assert_int_eq(fbr_outreq_render(&o, whs.v[0], ev), FBR_OK);
        char *url = fbr_render_strdup(&o.url);
        ck_assert_str_eq(url, urls[i]);
        struct fbr_url got, want;
        const char *why;
        if (i == 1) { /* userinfo: refused, nothing kept, the key from the split */
            ck_assert_uint_eq(o.url_pos.n, 0);
            ck_assert_int_eq(fbr_url_pos_load(&o.url_pos, url, strlen(url), &got),
                             FBR_NOTFOUND);
            char *key = fbr_render_strdup(&o.rate_key);
            ck_assert_str_eq(key, "room:u:p@h/9");
            free(key);
        } else {
            ck_assert_int_eq(fbr_url_pos_load(&o.url_pos, url, strlen(url), &got), FBR_OK);
            ck_assert_int_eq(fbr_url_parse(url, strlen(url), &want, &why), FBR_OK);
            ck_assert(fbr_slice_eq(got.host, want.host));
            ck_assert_ptr_eq(got.host.ptr, want.host.ptr);
            ck_assert(fbr_slice_eq(fbr_url_target(&got), fbr_url_target(&want)));
            ck_assert_ptr_eq(fbr_url_target(&got).ptr, fbr_url_target(&want).ptr);
            ck_assert_uint_eq(got.port_num, want.port_num);
            ck_assert_int_eq(got.tls, want.tls);
            ck_assert_int_eq(got.ipv6, want.ipv6);
        }
        free(url);
        json_decref(ev);
    }
    fbr_outreq_release(&o);
    ck_assert_uint_eq(o.url_pos.n, 0);
    fbr_outreq_free(&o);
    json_decref(j);
    fbr_webhooks_clear(&whs);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("webhook");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, default_rate_key, 0, (int)(sizeof(keys) / sizeof(keys[0])));
    tcase_add_test(tc, own_rate_key_wins);
    tcase_add_loop_test(tc, webhook_compile_error, 0, FBR_ARRAY_LEN(wh_bad));
    tcase_add_test(tc, webhook_compile_ok);
    tcase_add_test(tc, outreq_by_hand);
    tcase_add_test(tc, url_parsed_once);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
