/*
 * test_webhook.c - webhook.c on its own: rendering a compiled webhook into an fbr_outreq, and the
 * default rate key it gives HipChat room URLs (the delivery engine knows no chat protocol).
 */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/http.h"
#include "firebridge/webhook.h"

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

int main(void)
{
    Suite *s = suite_create("webhook");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, default_rate_key, 0, (int)(sizeof(keys) / sizeof(keys[0])));
    tcase_add_test(tc, own_rate_key_wins);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
