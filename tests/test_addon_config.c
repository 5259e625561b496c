/*
 * test_addon_config.c - unit tests for the pure parts of addon.c: compiling the `hipchat` and
 * `oncall_api` sections (each mistake reported with its JSON path, --public-url required), the
 * Add-on Capabilities URL (--print-addon-url) and the capabilities descriptor's fields
 * (hipchat-api.md §3 and §7: key, name, description, vendor, links.self, scopes, fromName,
 * installable, one jwt-authenticated room_message webhook, configurable).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/addon.h"
#include "testsupport.h"

static const struct {
    const char *hipchat, *oncall, *public_url;
    const char *want; /* substring of the joined errors, NULL: valid */
} cases[] = {
    {"{}", NULL, "https://fb.example.com", NULL},
    {"{\"addon_key\": \"com.example.fb\", \"name\": \"FB\", \"from_name\": \"On-call\", "
     "\"capabilities_hosts\": [\"hipchat.example.com\"], \"notify\": [\"alert\", \"chat\"], "
     "\"templates\": {\"alert\": {\"message\": \"${{ALERT.entity_id}}\"}}}",
     "{\"url\": \"https://api.victorops.com\", \"api_id\": \"i\", \"api_key\": \"k\"}",
     "https://fb.example.com/base/", NULL},
    {"{}", NULL, NULL, "hipchat: needs --public-url"},
    {"{}", NULL, "ftp://fb.example.com", "public_url: "},
    {"{\"notify\": [\"alert\", \"pager\"]}", NULL, "https://fb", "hipchat.notify[1]: must be"},
    {"{\"templates\": {\"alert\": \"${{ALERT.x\"}}", NULL, "https://fb",
     "hipchat.templates.alert: column"},
    {"{\"templates\": {\"bogus\": \"x\"}}", NULL, "https://fb", "hipchat.templates.bogus"},
    {"{\"capabilities_hosts\": [\"\"]}", NULL, "https://fb", "hipchat.capabilities_hosts[0]"},
    {"{\"addon_key\": \"has space\"}", NULL, "https://fb", "hipchat.addon_key"},
    {"{\"from\": \"x\"}", NULL, "https://fb", "hipchat.from: unknown key"},
    {"{}", "{\"url\": \"https://api.victorops.com\"}", "https://fb", "oncall_api.api_id"},
    {"{}", "{\"url\": \"not a url\", \"api_id\": \"i\", \"api_key\": \"k\"}", "https://fb",
     "oncall_api.url"},
    {NULL, "{\"url\": \"https://x\", \"api_id\": \"i\", \"api_key\": \"k\"}", NULL,
     "oncall_api: is only used"},
};

START_TEST(compile_table)
{
    json_t *h = cases[_i].hipchat ? json_loads(cases[_i].hipchat, 0, NULL) : NULL;
    json_t *o = cases[_i].oncall ? json_loads(cases[_i].oncall, 0, NULL) : NULL;
    struct fbr_cfgerr errs = {0};
    struct fbr_addon_config *c = (struct fbr_addon_config *)1;
    int rc = fbr_addon_config_compile(h, o, cases[_i].public_url, &c, &errs);
    char joined[2048] = "";
    for (size_t i = 0; i < errs.n; i++)
        snprintf(joined + strlen(joined), sizeof(joined) - strlen(joined), "%s\n", errs.msgs[i]);
    if (!cases[_i].want) {
        ck_assert_msg(rc == FBR_OK, "case %d: %s", _i, joined);
        ck_assert_ptr_nonnull(c);
    } else {
        ck_assert_int_eq(rc, FBR_INVALID);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(joined, cases[_i].want), "case %d: want '%s' in:\n%s", _i,
                      cases[_i].want, joined);
    }
    fbr_addon_config_unref(&c);
    fbr_cfgerr_clear(&errs);
    json_decref(h);
    json_decref(o);
}
END_TEST

START_TEST(capabilities_url)
{
    char buf[256];
    ck_assert_int_eq(
        fbr_addon_capabilities_url("https://fb.example.com/", "devops", buf, sizeof(buf)), FBR_OK);
    ck_assert_str_eq(buf, "https://fb.example.com/hipchat/devops/capabilities");
    ck_assert_int_eq(
        fbr_addon_capabilities_url("https://fb.example.com/x", "db_1-a", buf, sizeof(buf)), FBR_OK);
    ck_assert_str_eq(buf, "https://fb.example.com/x/hipchat/db_1-a/capabilities");
    ck_assert_int_eq(fbr_addon_capabilities_url(NULL, "devops", buf, sizeof(buf)), FBR_INVALID);
    ck_assert_int_eq(fbr_addon_capabilities_url("https://fb", "$routing_key", buf, sizeof(buf)),
                     FBR_INVALID);
    ck_assert_int_eq(fbr_addon_capabilities_url("https://fb", "", buf, sizeof(buf)), FBR_INVALID);
    ck_assert_int_eq(fbr_addon_capabilities_url("https://fb", "a/b", buf, sizeof(buf)),
                     FBR_INVALID);
    ck_assert_int_eq(fbr_addon_capabilities_url("https://fb.example.com", "devops", buf, 20),
                     FBR_INVALID);
}
END_TEST

static const char *path_str(json_t *d, const char *path)
{
    char p[256];
    snprintf(p, sizeof(p), "%s", path);
    json_t *v = d;
    for (char *seg = strtok(p, "."); seg && v; seg = strtok(NULL, "."))
        v = json_is_array(v) ? json_array_get(v, (size_t)atoi(seg)) : json_object_get(v, seg);
    return json_string_value(v);
}

START_TEST(descriptor)
{
    json_t *h = json_pack("{s:s}", "from_name", "On-call");
    struct fbr_cfgerr errs = {0};
    struct fbr_addon_config *c;
    ck_assert_int_eq(fbr_addon_config_compile(h, NULL, "https://fb.example.com/", &c, &errs),
                     FBR_OK);
    json_t *d = fbr_addon_descriptor(c, FBR_SLICE("devops"));
    ck_assert_str_eq(path_str(d, "key"), "io.firebridge.addon.devops");
    ck_assert_str_eq(path_str(d, "name"), "firebridge");
    ck_assert_ptr_nonnull(path_str(d, "description"));
    ck_assert_str_eq(path_str(d, "vendor.name"), "firebridge");
    ck_assert_str_eq(path_str(d, "vendor.url"), "https://fb.example.com");
    ck_assert_str_eq(path_str(d, "links.self"),
                     "https://fb.example.com/hipchat/devops/capabilities");
    ck_assert_str_eq(path_str(d, "capabilities.hipchatApiConsumer.fromName"), "On-call");
    ck_assert_str_eq(path_str(d, "capabilities.hipchatApiConsumer.scopes.0"), "send_notification");
    ck_assert_str_eq(path_str(d, "capabilities.hipchatApiConsumer.scopes.1"), "view_room");
    ck_assert_str_eq(path_str(d, "capabilities.installable.callbackUrl"),
                     "https://fb.example.com/hipchat/devops/installed");
    json_t *inst = json_object_get(json_object_get(d, "capabilities"), "installable");
    ck_assert(json_is_true(json_object_get(inst, "allowRoom")));
    ck_assert(json_is_false(json_object_get(inst, "allowGlobal")));
    json_t *hooks = json_object_get(json_object_get(d, "capabilities"), "webhook");
    ck_assert_uint_eq(json_array_size(hooks), 1);
    ck_assert_str_eq(path_str(d, "capabilities.webhook.0.event"), "room_message");
    ck_assert_str_eq(path_str(d, "capabilities.webhook.0.authentication"), "jwt");
    ck_assert_str_eq(path_str(d, "capabilities.webhook.0.url"),
                     "https://fb.example.com/hipchat/devops/webhook");
    ck_assert_str_eq(path_str(d, "capabilities.configurable.url"),
                     "https://fb.example.com/hipchat/devops/configure");
    json_decref(d);
    fbr_addon_config_unref(&c);
    ck_assert_ptr_null(c);
    json_decref(h);
}
END_TEST

/* Reading a room_message body: the sender, the text and the commands. */
static const struct {
    const char *body;
    int from_person;
    enum fbr_room_cmd cmd;
    uint64_t number;
    const char *note, *user;
} messages[] = {
    {"{\"event\":\"room_message\",\"item\":{\"room\":{\"id\":7},\"message\":{\"message\":"
     "\"  hello\",\"from\":{\"id\":1,\"name\":\"Ann\"}}}}",
     1, FBR_ROOM_CHAT, 0, "", "Ann"},
    {"{\"event\":\"room_message\",\"item\":{\"room\":{\"id\":7},\"message\":{\"message\":"
     "\"/ack #12 on it\",\"from\":{\"mention_name\":\"ann\"}}}}",
     1, FBR_ROOM_ACK, 12, "on it", "ann"},
    {"{\"event\":\"room_message\",\"item\":{\"room\":{\"id\":7},\"message\":{\"message\":"
     "\"/RESOLVE 3\",\"from\":{}}}}",
     1, FBR_ROOM_RESOLVE, 3, "", "HipChat user"},
    {"{\"event\":\"room_message\",\"item\":{\"room\":{\"id\":7},\"message\":{\"message\":"
     "\"/ack 99999999999999999999999\",\"from\":{}}}}",
     1, FBR_ROOM_USAGE_ACK, 0, "", "HipChat user"},
    {"{\"event\":\"room_message\",\"item\":{\"room\":{\"id\":7},\"message\":{\"message\":"
     "\"/acknowledge 3\",\"from\":{}}}}",
     1, FBR_ROOM_CHAT, 0, "", "HipChat user"},
    {"{\"event\":\"room_message\",\"item\":{\"room\":{\"id\":7},\"message\":{\"message\":"
     "\"/incidents\",\"from\":{}}}}",
     1, FBR_ROOM_INCIDENTS, 0, "", "HipChat user"},
    /* the add-on's own post coming back: from is a string */
    {"{\"event\":\"room_notification\",\"item\":{\"room\":{\"id\":7},\"message\":{"
     "\"message\":\"x\",\"from\":\"firebridge\"}}}",
     0, FBR_ROOM_CHAT, 0, "", NULL},
    {"{\"event\":\"room_message\",\"item\":{\"room\":{\"id\":7},\"message\":{"
     "\"message\":\"x\",\"from\":\"firebridge\"}}}",
     0, FBR_ROOM_CHAT, 0, "", NULL},
    {"[1,2]", 0, FBR_ROOM_CHAT, 0, "", NULL},
};

START_TEST(room_message_table)
{
    json_t *b = json_loads(messages[_i].body, 0, NULL);
    ck_assert_ptr_nonnull(b);
    struct fbr_room_message m;
    fbr_room_message_parse(b, &m);
    ck_assert_int_eq(m.from_person, messages[_i].from_person);
    ck_assert_int_eq(m.cmd, messages[_i].cmd);
    ck_assert_uint_eq(m.number, messages[_i].number);
    ck_assert_str_eq(m.note, messages[_i].note);
    if (messages[_i].user)
        ck_assert_str_eq(m.user, messages[_i].user);
    if (m.from_person)
        ck_assert(m.text[0] != ' ');
    json_decref(b);
}
END_TEST

/* contrib/examples/single-room.json compiles as it is. */
START_TEST(example_single_room)
{
    const char *root = getenv("FBR_SOURCE_ROOT");
    if (!root)
        return; /* run outside meson */
    char path[512];
    snprintf(path, sizeof(path), "%s/contrib/examples/single-room.json", root);
    json_t *cfg = json_load_file(path, 0, NULL);
    ck_assert_ptr_nonnull(cfg);
    struct fbr_cfgerr errs = {0};
    struct fbr_addon_config *c;
    ck_assert_int_eq(fbr_addon_config_compile(
                         json_object_get(cfg, "hipchat"), json_object_get(cfg, "oncall_api"),
                         json_string_value(json_object_get(cfg, "public_url")), &c, &errs),
                     FBR_OK);
    fbr_addon_config_unref(&c);
    json_decref(cfg);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("addon_config");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, compile_table, 0, (int)FBR_ARRAY_LEN(cases));
    tcase_add_test(tc, capabilities_url);
    tcase_add_test(tc, descriptor);
    tcase_add_test(tc, example_single_room);
    tcase_add_loop_test(tc, room_message_table, 0, (int)FBR_ARRAY_LEN(messages));
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
