/*
 * test_defaults.c - one source of defaults (issue 9 item 3): the daemon started with no
 * configuration file and no flags (asked to print its effective settings), the delivery engine's
 * fbr_delivery_opts_init() and a client made by fbr_client_new() with zero options must agree on
 * every value they share, and the server's zero-option defaults equal the daemon's.  A default
 * written twice with two values fails here.
 */
#include <check.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon_util.h"
#include "firebridge/client.h"
#include "firebridge/defaults.h"
#include "firebridge/delivery.h"
#include "testsupport.h"

/* The daemon's effective settings with no flags but --print-config and, when not NULL,
 * "-c cfg". */
static json_t *daemon_settings_from(const char *cfg)
{
    char dir[64], log[128], out[128];
    dutil_tmpdir(dir, sizeof(dir), "fbr-defaults");
    snprintf(log, sizeof(log), "%s/stderr", dir);
    snprintf(out, sizeof(out), "%s/stdout", dir);
    const char *daemon = getenv("FBR_DAEMON");
    ck_assert_ptr_nonnull(daemon);
    const char *const argv[] = {daemon, "--print-config", cfg ? "-c" : NULL, cfg, NULL};
    pid_t pid = dutil_spawn(argv, out, log, 1);
    dutil_assert_exit_zero(dutil_wait_exit(&pid, 10000 * dutil_slow(), NULL), log);
    char *text = dutil_slurp(out, NULL);
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    ck_assert_msg(json_is_object(j), "not JSON: %s (%s)", text, jerr.text);
    free(text);
    dutil_rm_rf(dir);
    return j;
}

static json_t *daemon_settings(void)
{
    return daemon_settings_from(NULL);
}

static long long num(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    ck_assert_msg(json_is_integer(v), "%s missing", key);
    return json_integer_value(v);
}

static void rate_eq(json_t *j, const char *key, struct fbr_rate r)
{
    char want[64];
    snprintf(want, sizeof(want), "%u/%u", r.n, r.secs);
    ck_assert_str_eq(json_string_value(json_object_get(j, key)), want);
}

START_TEST(daemon_delivery_and_client_agree)
{
    json_t *d = daemon_settings();

    struct fbr_delivery_opts o;
    fbr_delivery_opts_init(&o);
    ck_assert_int_eq(num(d, "pool_size"), o.pool_size);
    ck_assert_int_eq(num(d, "pipeline"), o.pipeline);
    ck_assert_int_eq(num(d, "connect_timeout"), o.connect_timeout_ms);
    ck_assert_int_eq(num(d, "request_timeout"), o.request_timeout_ms);
    rate_eq(d, "room_rate", o.room_rate);
    rate_eq(d, "token_rate", o.token_rate);
    ck_assert_int_eq(num(d, "retry_initial"), o.retry_initial_ms);
    ck_assert_int_eq(num(d, "retry_max_interval"), o.retry_max_interval_ms);
    ck_assert_int_eq(num(d, "retry_max_age"), o.retry_max_age_s);
    ck_assert_int_eq(num(d, "max_pending"), (long long)o.max_pending);

    struct event_base *base = event_base_new();
    struct fbr_client_opts zero = {0};
    struct fbr_client *c;
    char err[256];
    ck_assert_int_eq(fbr_client_new(base, &zero, &c, err, sizeof(err)), FBR_OK);
    const struct fbr_client_opts *co = fbr_client_get_opts(c);
    ck_assert_int_eq(num(d, "pool_size"), co->pool_size);
    ck_assert_int_eq(num(d, "pipeline"), co->pipeline);
    ck_assert_int_eq(num(d, "connect_timeout"), co->connect_timeout_ms);
    ck_assert_int_eq(num(d, "request_timeout"), co->request_timeout_ms);
    fbr_client_free(&c);
    event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_free(base);

    /* the server fills zero options from the same constants */
    ck_assert_int_eq(num(d, "max_body"), FBR_DEFAULT_MAX_BODY);
    ck_assert_int_eq(num(d, "max_connections"), FBR_DEFAULT_MAX_CONNECTIONS);
    ck_assert_int_eq(num(d, "read_timeout"), FBR_DEFAULT_READ_TIMEOUT_MS);
    ck_assert_int_eq(num(d, "idle_timeout"), FBR_DEFAULT_IDLE_TIMEOUT_MS);
    json_decref(d);
}
END_TEST

/* The printed settings, read back as a configuration file, print the same. */
START_TEST(printed_settings_read_back)
{
    json_t *d = daemon_settings();
    ck_assert_ptr_nonnull(json_object_get(d, "listen"));
    ck_assert_ptr_null(json_object_get(d, "webhooks")); /* sections may hold tokens */
    char dir[64], cfg[128];
    dutil_tmpdir(dir, sizeof(dir), "fbr-defaults-rt");
    snprintf(cfg, sizeof(cfg), "%s/config.json", dir);
    char *text = json_dumps(d, JSON_COMPACT);
    dutil_write_file(cfg, text);
    free(text);
    json_t *again = daemon_settings_from(cfg);
    ck_assert_msg(json_equal(d, again), "settings changed when read back");
    json_decref(again);
    json_decref(d);
    dutil_rm_rf(dir);
}
END_TEST

static Suite *defaults_suite(void)
{
    Suite *s = suite_create("defaults");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, daemon_delivery_and_client_agree);
    tcase_add_test(tc, printed_settings_read_back);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return fbr_test_run(defaults_suite());
}
