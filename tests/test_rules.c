/*
 * test_rules.c - unit tests for rules.c, the Rules Engine between intake and the incident table:
 * the platform's documented recipes as a table (re-route, mute, aggregate, retitle, Multi-Room,
 * AND by chaining, stop, disabled), wildcard corner cases, regex whole-match and captures, a
 * catastrophic regex bounded by the retry limit, and compile errors with their JSON paths.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/rules.h"
#include "testsupport.h"

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (!j)
        ck_abort_msg("bad JSON in test: %s: %s", e.text, s);
    return j;
}

/* ---- recipes ---------------------------------------------------------------------------- */

struct expect {
    const char *field;
    const char *value; /* NULL: field must be absent */
};

static const struct {
    const char *what;
    const char *rules;
    const char *alert;
    struct expect expect[4];
} recipes[] = {
    {"re-route db03* to a new routing key",
     "[{\"name\":\"db03\",\"when\":{\"field\":\"host_name\",\"pattern\":\"db03*\"},"
     "\"set\":{\"routing_key\":\"database\"}}]",
     "{\"host_name\":\"db03.prod.example\",\"routing_key\":\"ops\"}",
     {{"routing_key", "database"}}},
    {"re-route leaves other hosts alone",
     "[{\"when\":{\"field\":\"host_name\",\"pattern\":\"db03*\"},"
     "\"set\":{\"routing_key\":\"database\"}}]",
     "{\"host_name\":\"db04.prod\",\"routing_key\":\"ops\"}", {{"routing_key", "ops"}}},
    {"mute with message_type = INFO",
     "[{\"when\":{\"field\":\"entity_display_name\",\"match\":\"wildcard\","
     "\"pattern\":\"*disk space*\"},\"set\":{\"message_type\":\"INFO\"}}]",
     "{\"entity_display_name\":\"Low DISK SPACE on /var\",\"message_type\":\"CRITICAL\"}",
     {{"message_type", "INFO"}}},
    {"aggregate with a fixed entity_id",
     "[{\"when\":{\"field\":\"hostname\",\"pattern\":\"web-??\"},"
     "\"set\":{\"entity_id\":\"web-fleet\"}}]",
     "{\"hostname\":\"web-07\",\"entity_id\":\"web-07/cpu\"}", {{"entity_id", "web-fleet"}}},
    {"retitle with ${{other}}",
     "[{\"when\":{\"field\":\"monitoring_tool\",\"pattern\":\"nagios\"},"
     "\"set\":{\"entity_display_name\":\"${{host_name}}: ${{service}}\"}}]",
     "{\"monitoring_tool\":\"Nagios\",\"host_name\":\"db1\",\"service\":\"load\","
     "\"entity_display_name\":\"x\"}",
     {{"entity_display_name", "db1: load"}}},
    {"Multi-Room room_id and auth_token",
     "[{\"when\":{\"field\":\"routing_key\",\"match\":\"wildcard\",\"pattern\":\"devops\"},"
     "\"set\":{\"room_id\":\"1234\",\"auth_token\":\"tok\"}}]",
     "{\"routing_key\":\"DevOps\"}", {{"room_id", "1234"}, {"auth_token", "tok"}}},
    {"Multi-Room rule does not fire for another key",
     "[{\"when\":{\"field\":\"routing_key\",\"pattern\":\"devops\"},"
     "\"set\":{\"room_id\":\"1234\"}}]",
     "{\"routing_key\":\"devops2\"}", {{"room_id", NULL}}},
    {"AND by chaining through a helper field (both hold)",
     "[{\"when\":{\"field\":\"routing_key\",\"pattern\":\"devops\"},\"set\":{\"_and\":\"a\"}},"
     "{\"when\":{\"field\":\"host_name\",\"pattern\":\"db*\"},\"set\":{\"_and\":\"${{_and}}b\"}},"
     "{\"when\":{\"field\":\"_and\",\"pattern\":\"ab\"},\"set\":{\"room_id\":\"db-room\"}}]",
     "{\"routing_key\":\"devops\",\"host_name\":\"db9\"}", {{"room_id", "db-room"}}},
    {"AND by chaining through a helper field (one holds)",
     "[{\"when\":{\"field\":\"routing_key\",\"pattern\":\"devops\"},\"set\":{\"_and\":\"a\"}},"
     "{\"when\":{\"field\":\"host_name\",\"pattern\":\"db*\"},\"set\":{\"_and\":\"${{_and}}b\"}},"
     "{\"when\":{\"field\":\"_and\",\"pattern\":\"ab\"},\"set\":{\"room_id\":\"db-room\"}}]",
     "{\"routing_key\":\"devops\",\"host_name\":\"web1\"}", {{"room_id", NULL}, {"_and", "a"}}},
    {"AND as an array of conditions",
     "[{\"when\":[{\"field\":\"routing_key\",\"pattern\":\"devops\"},"
     "{\"field\":\"host_name\",\"pattern\":\"db*\"}],\"set\":{\"room_id\":\"r\"}}]",
     "{\"routing_key\":\"devops\",\"host_name\":\"web1\"}", {{"room_id", NULL}}},
    {"stop flag ends the evaluation",
     "[{\"when\":{\"field\":\"a\",\"pattern\":\"*\"},\"set\":{\"x\":\"1\"},\"stop\":true},"
     "{\"when\":{\"field\":\"a\",\"pattern\":\"*\"},\"set\":{\"y\":\"2\"}}]",
     "{\"a\":\"v\"}", {{"x", "1"}, {"y", NULL}}},
    {"top to bottom: a later rule sees an earlier one's output",
     "[{\"when\":{\"field\":\"a\",\"pattern\":\"v\"},\"set\":{\"a\":\"w\"}},"
     "{\"when\":{\"field\":\"a\",\"pattern\":\"w\"},\"set\":{\"b\":\"seen ${{a}}\"}}]",
     "{\"a\":\"v\"}", {{"a", "w"}, {"b", "seen w"}}},
    {"disabled rule has no effect",
     "[{\"enabled\":false,\"when\":{\"field\":\"a\",\"pattern\":\"*\"},\"set\":{\"x\":\"1\"}}]",
     "{\"a\":\"v\"}", {{"x", NULL}}},
    {"values render against the alert before the rule",
     "[{\"when\":{\"field\":\"a\",\"pattern\":\"*\"},\"set\":{\"a\":\"new\",\"b\":\"${{a}}\"}}]",
     "{\"a\":\"old\"}", {{"a", "new"}, {"b", "old"}}},
    {"regex captures ${{\\1}} ${{\\2}}",
     "[{\"when\":{\"field\":\"host_name\",\"match\":\"regex\",\"pattern\":\"(web|db)-(\\\\d+)\"},"
     "\"set\":{\"role\":\"${{\\\\1}}\",\"num\":\"#${{\\\\2}}\"}}]",
     "{\"host_name\":\"db-42\"}", {{"role", "db"}, {"num", "#42"}}},
    {"regex must match the whole value",
     "[{\"when\":{\"field\":\"host_name\",\"match\":\"regex\",\"pattern\":\"web\"},"
     "\"set\":{\"x\":\"1\"}}]",
     "{\"host_name\":\"web-01\"}", {{"x", NULL}}},
    {"regex alternation still anchored at the end",
     "[{\"when\":{\"field\":\"h\",\"match\":\"regex\",\"pattern\":\"a|ab\"},\"set\":{\"x\":\"1\"}}]",
     "{\"h\":\"ab\"}", {{"x", "1"}}},
    {"regex is case-sensitive unless (?i)",
     "[{\"when\":{\"field\":\"h\",\"match\":\"regex\",\"pattern\":\"WEB.*\"},\"set\":{\"x\":\"1\"}},"
     "{\"when\":{\"field\":\"h\",\"match\":\"regex\",\"pattern\":\"(?si)WEB.*\"},"
     "\"set\":{\"y\":\"1\"}}]",
     "{\"h\":\"web-1\\nline2\"}", {{"x", NULL}, {"y", "1"}}},
    {"dotted field reaches nested objects and numbers",
     "[{\"when\":[{\"field\":\"monitor_data.id\",\"pattern\":\"42\"},"
     "{\"field\":\"monitor_data.tags.1\",\"pattern\":\"prod\"}],"
     "\"set\":{\"monitor_data.owner\":\"team-${{monitor_data.id}}\"}}]",
     "{\"monitor_data\":{\"id\":42,\"tags\":[\"x\",\"prod\"]}}", {{"monitor_data.owner", "team-42"}}},
    {"absent field never matches, not even *",
     "[{\"when\":{\"field\":\"nope\",\"pattern\":\"*\"},\"set\":{\"x\":\"1\"}}]", "{\"a\":\"v\"}",
     {{"x", NULL}}},
    {"annotations url/image/note",
     "[{\"when\":{\"field\":\"h\",\"pattern\":\"*\"},\"annotations\":["
     "{\"type\":\"url\",\"title\":\"Runbook\",\"value\":\"https://wiki/${{h}}\"},"
     "{\"type\":\"image\",\"title\":\"Graph\",\"value\":\"https://g/${{h}}.png\"},"
     "{\"type\":\"note\",\"title\":\"Owner\",\"value\":\"team db\"}]}]",
     "{\"h\":\"db1\"}",
     {{"vo_annotate.u.Runbook", "https://wiki/db1"},
      {"vo_annotate.i.Graph", "https://g/db1.png"},
      {"vo_annotate.s.Owner", "team db"}}},
};

static const char *field_value(json_t *alert, const char *field)
{
    json_t *v = fbr_alert_lookup(alert, field, strlen(field));
    return json_string_value(v);
}

START_TEST(recipe)
{
    struct fbr_cfgerr errs = {0};
    struct fbr_rules *rules = NULL;
    json_t *rj = parse(recipes[_i].rules);
    int rc = fbr_rules_compile(rj, NULL, &rules, &errs);
    ck_assert_msg(rc == FBR_OK, "%s: compile failed: %s", recipes[_i].what,
                  errs.n ? errs.msgs[0] : "?");
    json_t *alert = parse(recipes[_i].alert);
    struct fbr_rules_stats st = {0};
    fbr_rules_apply(rules, alert, &st);
    for (size_t k = 0; k < 4 && recipes[_i].expect[k].field; k++) {
        const struct expect *e = &recipes[_i].expect[k];
        json_t *v = fbr_alert_lookup(alert, e->field, strlen(e->field));
        if (!e->value)
            ck_assert_msg(v == NULL, "%s: %s should be absent", recipes[_i].what, e->field);
        else
            ck_assert_msg(v && field_value(alert, e->field) &&
                              strcmp(field_value(alert, e->field), e->value) == 0,
                          "%s: %s = %s, want %s", recipes[_i].what, e->field,
                          v ? json_string_value(v) : "(absent)", e->value);
    }
    ck_assert_uint_eq(st.alerts, 1);
    json_decref(alert);
    json_decref(rj);
    fbr_rules_free(&rules);
    ck_assert_ptr_null(rules);
    fbr_cfgerr_clear(&errs);
}
END_TEST

START_TEST(annotation_capped)
{
    struct fbr_cfgerr errs = {0};
    struct fbr_rules *rules = NULL;
    json_t *rj = parse("[{\"when\":{\"field\":\"h\",\"pattern\":\"*\"},\"annotations\":["
                       "{\"type\":\"note\",\"title\":\"Long\",\"value\":\"${{h}}\"}]}]");
    ck_assert_int_eq(fbr_rules_compile(rj, NULL, &rules, &errs), FBR_OK);
    /* 2,000 two-byte characters: the cut must land on a character boundary at 1,124. */
    char *big = malloc(4001);
    for (int i = 0; i < 2000; i++)
        memcpy(big + 2 * i, "\xc3\xa9", 2);
    big[4000] = 0;
    json_t *alert = json_pack("{s:s}", "h", big);
    fbr_rules_apply(rules, alert, NULL);
    json_t *v = json_object_get(alert, "vo_annotate.s.Long");
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(json_string_length(v), 2 * FBR_RULES_ANNOTATION_MAX);
    free(big);
    json_decref(alert);
    json_decref(rj);
    fbr_rules_free(&rules);
}
END_TEST

/* ---- wildcard ---------------------------------------------------------------------------- */

static const struct {
    const char *pat, *s;
    int match;
} wild[] = {
    {"*.mydomain.tld", "mydomain.tld", 0},
    {"*.mydomain.tld", "www.mydomain.tld", 1},
    {"*.mydomain.tld", "www.MyDomain.TLD", 1},
    {"db-*.*", "db-123", 0},
    {"db-*.*", "db-123.eu", 1},
    {"DB03*", "db03.prod", 1},
    {"devops", "devops-2", 0},
    {"devops", "DevOps", 1},
    {"a?c", "abc", 1},
    {"a?c", "ac", 0},
    {"a?c", "abbc", 0},
    {"a?c", "a\xc3\xa9" "c", 1},
    {"*", "", 1},
    {"", "", 1},
    {"", "a", 0},
    {"a*", "", 0},
    {"*a*b*c*", "xaybzc", 1},
    {"*a*b*c*", "xaybz", 0},
    {"**x**", "x", 1},
    {"abc", "abcd", 0},
    {"*abc", "ababc", 1},
    {"a*b?d", "aXXbcd", 1},
};

START_TEST(wildcard)
{
    const char *p = wild[_i].pat, *s = wild[_i].s;
    ck_assert_msg(fbr_wildcard_match(p, strlen(p), s, strlen(s)) == wild[_i].match,
                  "\"%s\" vs \"%s\" should %s", p, s, wild[_i].match ? "match" : "not match");
}
END_TEST

/* Many stars against a long non-matching value: must not explode (no recursion). */
START_TEST(wildcard_pathological)
{
    size_t n = 20000;
    char *s = malloc(n + 1);
    memset(s, 'a', n);
    s[n] = 0;
    const char *p = "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
    ck_assert_int_eq(fbr_wildcard_match(p, strlen(p), s, n), 0);
    free(s);
}
END_TEST

/* ---- regex limits ---------------------------------------------------------------------------- */

START_TEST(regex_catastrophic)
{
    struct fbr_cfgerr errs = {0};
    struct fbr_rules *rules = NULL;
    json_t *rj = parse("[{\"name\":\"evil\",\"when\":{\"field\":\"h\",\"match\":\"regex\","
                       "\"pattern\":\"(a|aa)+\"},\"set\":{\"x\":\"1\"}},"
                       "{\"when\":{\"field\":\"h\",\"pattern\":\"a*\"},\"set\":{\"y\":\"1\"}}]");
    ck_assert_int_eq(fbr_rules_compile(rj, NULL, &rules, &errs), FBR_OK);
    char s[80];
    memset(s, 'a', 70);
    s[70] = '!';
    s[71] = 0;
    json_t *alert = json_pack("{s:s}", "h", s);
    struct fbr_rules_stats st = {0};
    fbr_rules_apply(rules, alert, &st);
    ck_assert_uint_eq(st.regex_limit, 1);
    ck_assert_ptr_null(json_object_get(alert, "x"));
    /* The next rule still ran. */
    ck_assert_str_eq(json_string_value(json_object_get(alert, "y")), "1");
    json_decref(alert);
    json_decref(rj);
    fbr_rules_free(&rules);
}
END_TEST

/* ---- compile errors ------------------------------------------------------------------------ */

static const struct {
    const char *rules;
    const char *error; /* expected prefix of one message */
} bad[] = {
    {"{}", "rules: must be an array"},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\"}},"
     "{\"when\":{\"field\":\"a\",\"match\":\"glob\",\"pattern\":\"x\"}}]",
     "rules[1].when.match: must be \"wildcard\" or \"regex\""},
    {"[{\"when\":{\"field\":\"a\",\"match\":\"regex\",\"pattern\":\"(\"}}]",
     "rules[0].when.pattern: invalid regex"},
    {"[{\"when\":{\"field\":\"a\",\"match\":\"regex\",\"pattern\":\"a)|(b\"}}]",
     "rules[0].when.pattern: invalid regex"},
    {"[{\"when\":{\"field\":\"a\",\"match\":\"regex\",\"pattern\":\""
     "0123456789012345678901234567890123456789012345678901234567890123" /* 64 */
     "0123456789012345678901234567890123456789012345678901234567890123" /* 128 */
     "x\"}}]",
     "rules[0].when.pattern: longer than 128 characters"},
    {"[{\"when\":[{\"field\":\"a\",\"pattern\":\"x\"},{\"pattern\":\"x\"}]}]",
     "rules[0].when[1].field: must be a non-empty string"},
    {"[{\"set\":{\"a\":\"b\"}}]", "rules[0].when: missing"},
    {"[{\"when\":[]}]", "rules[0].when: missing"},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\"},\"sett\":{}}]",
     "rules[0]: unknown key \"sett\""},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\",\"case\":1}}]",
     "rules[0].when: unknown key \"case\""},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\"},\"set\":{\"b\":1}}]",
     "rules[0].set.b: must be a string"},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\"},\"set\":{\"b\":\"${{oops\"}}]",
     "rules[0].set.b: column"},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\"},\"enabled\":\"yes\"}]",
     "rules[0].enabled: must be true or false"},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\"},\"annotations\":[{\"type\":\"link\","
     "\"title\":\"t\",\"value\":\"v\"}]}]",
     "rules[0].annotations[0].type: must be \"url\", \"image\" or \"note\""},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\"},\"annotations\":[{\"type\":\"url\","
     "\"value\":\"v\"}]}]",
     "rules[0].annotations[0].title: must be a non-empty string"},
    {"[3]", "rules[0]: must be an object"},
    /* the keys named come from the rule's table in rules.c, checked by config.c's one checker */
    {"[{\"when\":[7]}]", "rules[0].when[0]: must be an object {field, match, pattern}"},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\"},\"stop\":0}]",
     "rules[0].stop: must be true or false"},
    {"[{\"when\":{\"field\":\"a\",\"pattern\":\"x\"},\"annotations\":{}}]",
     "rules[0].annotations: must be an array"},
};

START_TEST(compile_error)
{
    struct fbr_cfgerr errs = {0};
    struct fbr_rules *rules = (struct fbr_rules *)&errs; /* must be reset to NULL */
    json_t *rj = parse(bad[_i].rules);
    ck_assert_int_eq(fbr_rules_compile(rj, NULL, &rules, &errs), FBR_INVALID);
    ck_assert_ptr_null(rules);
    int found = 0;
    for (size_t k = 0; k < errs.n; k++)
        found |= strncmp(errs.msgs[k], bad[_i].error, strlen(bad[_i].error)) == 0;
    ck_assert_msg(found, "want \"%s\", got \"%s\" (%zu messages)", bad[_i].error,
                  errs.n ? errs.msgs[0] : "", errs.n);
    json_decref(rj);
    fbr_cfgerr_clear(&errs);
}
END_TEST

START_TEST(pattern_limit_configurable)
{
    struct fbr_cfgerr errs = {0};
    struct fbr_rules *rules = NULL;
    json_t *rj = parse("[{\"when\":{\"field\":\"a\",\"match\":\"regex\",\"pattern\":\"abcdef\"}}]");
    struct fbr_rules_opts o = {.max_pattern_len = 5};
    ck_assert_int_eq(fbr_rules_compile(rj, &o, &rules, &errs), FBR_INVALID);
    fbr_cfgerr_clear(&errs);
    o.max_pattern_len = 6;
    ck_assert_int_eq(fbr_rules_compile(rj, &o, &rules, &errs), FBR_OK);
    ck_assert_uint_eq(fbr_rules_count(rules), 1);
    fbr_rules_free(&rules);
    json_decref(rj);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rules");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, recipe, 0, FBR_ARRAY_LEN(recipes));
    tcase_add_test(tc, annotation_capped);
    tcase_add_loop_test(tc, wildcard, 0, FBR_ARRAY_LEN(wild));
    tcase_add_test(tc, wildcard_pathological);
    tcase_add_test(tc, regex_catastrophic);
    tcase_add_loop_test(tc, compile_error, 0, FBR_ARRAY_LEN(bad));
    tcase_add_test(tc, pattern_limit_configurable);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
