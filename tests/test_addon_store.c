/*
 * test_addon_store.c - unit tests for addon_store.c, the HipChat add-on's installations and
 * tokens: the renewal timing table (ahead of expiry, never at it), the persisted file (mode 0600,
 * atomic, read back after a "restart", corrupt file refused), replacing an installation of the
 * same room, idempotent removal, and the credential provider's answers for a removed
 * installation.
 */
#include <check.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "firebridge/addon_store.h"
#include "testsupport.h"

static const struct {
    uint64_t expires_in_s, renew_ms, usable_ms;
} timing[] = {
    {3600, 3300000, 3570000},    /* 1 h: renewed 5 min early, sent until 30 s before */
    {28800, 28500000, 28770000}, /* 8 h */
    {600, 450000, 570000},       /* 10 min: a quarter early */
    {4, 3000, 3600},             /* the tests' short tokens */
    {1, 750, 900},
};

START_TEST(renewal_timing)
{
    uint64_t e = timing[_i].expires_in_s;
    ck_assert_uint_eq(fbr_addon_token_renew_ms(e), timing[_i].renew_ms);
    ck_assert_uint_eq(fbr_addon_token_usable_ms(e), timing[_i].usable_ms);
    /* renewal strictly before the token stops being sent, which is strictly before expiry */
    ck_assert_uint_lt(fbr_addon_token_renew_ms(e), fbr_addon_token_usable_ms(e));
    ck_assert_uint_lt(fbr_addon_token_usable_ms(e), e * 1000);
}
END_TEST

static char dir[64];

static struct fbr_install *make(const char *oid, int64_t room, const char *rk)
{
    struct fbr_install *in = fbr_install_new();
    in->oauth_id = strdup(oid);
    in->oauth_secret = strdup("secret-of-");
    in->routing_key = strdup(rk);
    in->capabilities_url = strdup("https://api.hipchat.com/v2/capabilities");
    in->api_base = strdup("https://api.hipchat.com/v2/");
    in->token_url = strdup("https://api.hipchat.com/v2/oauth/token");
    in->room_id = room;
    in->group_id = 1;
    return in;
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/fbr-addon-store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(persisted_and_read_back)
{
    struct event_base *base = event_base_new();
    struct fbr_addon_store *s;
    char err[256];
    ck_assert_int_eq(fbr_addon_store_open(dir, base, NULL, NULL, &s, err, sizeof(err)), FBR_OK);
    struct fbr_install *a = make("oid-a", 7, "devops"), *b = make("oid-b", 8, "db");
    ck_assert_int_eq(fbr_addon_store_add(s, a), FBR_OK);
    ck_assert_int_eq(fbr_addon_store_add(s, b), FBR_OK);
    fbr_install_unref(&a);
    fbr_install_unref(&b);
    char path[128];
    snprintf(path, sizeof(path), "%s/hipchat-installations.json", dir);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    char tmp[140];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    ck_assert_int_ne(access(tmp, F_OK), 0); /* renamed into place, nothing left behind */
    fbr_addon_store_free(&s);

    /* a restart reads both back, every field */
    ck_assert_int_eq(fbr_addon_store_open(dir, base, NULL, NULL, &s, err, sizeof(err)), FBR_OK);
    size_t n;
    struct fbr_install *const *v = fbr_addon_store_list(s, &n);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(v[0]->oauth_id, "oid-a");
    ck_assert_str_eq(v[0]->routing_key, "devops");
    ck_assert_int_eq(v[0]->room_id, 7);
    ck_assert_str_eq(v[1]->token_url, "https://api.hipchat.com/v2/oauth/token");
    ck_assert_int_eq(v[1]->tstate, FBR_TOKEN_EMPTY);
    ck_assert_ptr_eq(fbr_addon_store_find(s, FBR_SLICE("oid-b")), v[1]);
    ck_assert_ptr_null(fbr_addon_store_find(s, FBR_SLICE("oid-")));

    /* reinstalling into room 7 for devops replaces oid-a */
    struct fbr_install *c = make("oid-c", 7, "devops");
    fbr_install_ref(c); /* like a delivery holding it */
    struct fbr_install *held = c;
    ck_assert_int_eq(fbr_addon_store_add(s, c), FBR_OK);
    fbr_install_unref(&c);
    v = fbr_addon_store_list(s, &n);
    ck_assert_uint_eq(n, 2);
    ck_assert_ptr_null(fbr_addon_store_find(s, FBR_SLICE("oid-a")));

    /* removal is idempotent; a removed installation's credentials are gone for good */
    ck_assert_int_eq(fbr_addon_store_remove(s, FBR_SLICE("oid-c")), FBR_OK);
    ck_assert_int_eq(fbr_addon_store_remove(s, FBR_SLICE("oid-c")), FBR_NOTFOUND);
    char value[256], reason[256];
    ck_assert_int_eq(fbr_install_auth.get(held, value, sizeof(value), reason, sizeof(reason)),
                     FBR_ERROR);
    ck_assert_ptr_nonnull(strstr(reason, "uninstalled"));
    fbr_install_unref(&held);
    fbr_addon_store_free(&s);

    ck_assert_int_eq(fbr_addon_store_open(dir, base, NULL, NULL, &s, err, sizeof(err)), FBR_OK);
    fbr_addon_store_list(s, &n);
    ck_assert_uint_eq(n, 1);
    fbr_addon_store_free(&s);
    event_base_free(base);
}
END_TEST

START_TEST(corrupt_file_refused)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/hipchat-installations.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"installations\": [{\"oauth_id\": \"x\"", f);
    fclose(f);
    struct fbr_addon_store *s = NULL;
    char err[256];
    ck_assert_int_eq(fbr_addon_store_open(dir, NULL, NULL, NULL, &s, err, sizeof(err)), FBR_ERROR);
    ck_assert_ptr_null(s);
    ck_assert_ptr_nonnull(strstr(err, path));
    f = fopen(path, "w");
    fputs("{\"installations\": [{\"oauth_id\": \"x\"}]}", f);
    fclose(f);
    ck_assert_int_eq(fbr_addon_store_open(dir, NULL, NULL, NULL, &s, err, sizeof(err)), FBR_ERROR);
    ck_assert_ptr_nonnull(strstr(err, "incomplete"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("addon_store");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, renewal_timing, 0, (int)FBR_ARRAY_LEN(timing));
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, persisted_and_read_back);
    tcase_add_test(tc, corrupt_file_refused);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
