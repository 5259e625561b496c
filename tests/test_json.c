/*
 * test_json.c - the intake's JSON reader (src/json.c) against jansson's json_loadb with
 * JSON_REJECT_DUPLICATES, which it replaces on the hot path: a table of inputs covering every
 * rule of json.h (each accepted or refused as the table says, by both, with the same tree), depth
 * at and past the limit, strings long enough that the decode stack moves while an escaped key
 * waits on it, the fuzz seed corpus, and seeded random mutations of those seeds; the shared
 * reader (fbr_json_loadb_shared) builds the same trees with its short values shared.
 */
#include <check.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/json.h"
#include "json_same.h"
#include "testsupport.h"

struct json_case {
    const char *in;
    size_t len;
    int accept; /* what jansson 2.14 does with it */
};

/* clang-format off */
#define OK(s) {s, sizeof(s) - 1, 1}
#define NO(s) {s, sizeof(s) - 1, 0}

static const struct json_case cases[] = {
    /* top level, whitespace, trailing bytes, empty input */
    OK("{}"), OK("[]"), OK(" \t\r\n{ \t\r\n} \t\r\n"), NO(""), NO(" "), NO("1"), NO("\"a\""),
    NO("true"), NO("null"), NO("{}x"), NO("{} {}"), NO("[]]"), NO("{"), NO("["), NO("}"),
    NO("\f{}"), NO("\v[]"), NO("{}\f"), NO("\xef\xbb\xbf{}"), NO("[1,]"), NO("[,1]"),
    NO("{,}"), NO("{\"a\":1,}"), NO("{\"a\" 1}"), NO("{\"a\":}"), NO("{1:2}"), NO("{a:1}"),
    NO("{'a':1}"), NO("[1 2]"), NO("[1;2]"), NO("{\"a\":1 \"b\":2}"), OK("[[],{},[[]]]"),
    /* literals */
    OK("[true,false,null]"), NO("[True]"), NO("[nul]"), NO("[nulll]"), NO("[truex]"),
    NO("[true1]"), NO("[t]"), OK("[true ]"), NO("[NaN]"), NO("[Infinity]"), NO("[-Infinity]"),
    /* duplicate keys, also when written differently or nested */
    NO("{\"a\":1,\"a\":2}"), NO("{\"a\":1,\"\\u0061\":2}"), OK("{\"a\":{\"a\":1},\"b\":{\"a\":2}}"),
    NO("{\"\":1,\"\":2}"), OK("{\"a\":1,\"A\":2,\"a \":3}"), NO("{\"a\\n\":1,\"a\\u000a\":2}"),
    /* strings: escapes */
    OK("[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"]"), NO("[\"\\a\"]"), NO("[\"\\x41\"]"), NO("[\"\\'\"]"),
    NO("[\"\\U0041\"]"), NO("[\"\\u41\"]"), NO("[\"\\u004g\"]"), NO("[\"\\u\"]"), NO("[\"\\"),
    NO("[\"\\\"]"), OK("[\"\\u0041\\u00e9\\u20AC\\uFFFF\"]"), OK("{\"\\u00e9\\t\":\"k\"}"),
    /* surrogates */
    OK("[\"\\ud83d\\ude00\"]"), OK("[\"\\uD800\\uDC00\\uDBFF\\uDFFF\"]"), NO("[\"\\ud83d\"]"),
    NO("[\"\\ud83dx\"]"), NO("[\"\\ud83d\\n\"]"), NO("[\"\\ud83d\\u0041\"]"),
    NO("[\"\\ud83d\\ud83d\"]"), NO("[\"\\ude00\"]"), NO("[\"\\ude00\\ud83d\"]"),
    NO("[\"\\ud83d\\u00\"]"), NO("{\"\\ud800\":1}"),
    /* \u0000 in values and keys */
    NO("[\"\\u0000\"]"), NO("[\"a\\u0000b\"]"), NO("{\"\\u0000\":1}"), NO("{\"a\\u0000\":1}"),
    OK("[\"\\u0001\\u001f\"]"),
    /* raw control characters and DEL */
    NO("[\"a\nb\"]"), NO("[\"\t\"]"), NO("[\"\x01\"]"), NO("[\"\x1f\"]"), OK("[\"\x7f\"]"),
    NO("{\"\n\":1}"), NO("[\"a\0b\"]"),
    /* UTF-8 in strings (Unicode table 3-7) and outside them */
    OK("[\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xed\x9f\xbf\"]"),
    OK("{\"\xc3\xa9\":\"\xef\xbf\xbd\"}"), NO("[\"\x80\"]"), NO("[\"\xbf\"]"),
    NO("[\"\xc0\xaf\"]"), NO("[\"\xc1\xbf\"]"), NO("[\"\xc2\"]"), NO("[\"\xc2\x41\"]"),
    NO("[\"\xe0\x80\xaf\"]"), NO("[\"\xe0\x9f\xbf\"]"), NO("[\"\xed\xa0\x80\"]"),
    NO("[\"\xed\xbf\xbf\"]"), NO("[\"\xe2\x82\"]"), NO("[\"\xf0\x80\x80\xaf\"]"),
    NO("[\"\xf0\x8f\xbf\xbf\"]"), NO("[\"\xf4\x90\x80\x80\"]"), NO("[\"\xf5\x80\x80\x80\"]"),
    NO("[\"\xff\"]"), NO("[\"\xfe\"]"), NO("[\"\xe2\x82\xac"), NO("{\"\xff\":1}"),
    NO("[\xc3\xa9]"), NO("[1\xff]"), NO("[\"\xf0\x9f\x98\"]"), NO("[\"\xf0\x9f\"]"),
    /* numbers: jansson's grammar */
    OK("[0,-0,1,-1,10,123456789]"), OK("[0.0,-0.0,1.5,-1.5,0.5e1,1e2,1E2,1e+2,1e-2,1E-0]"),
    OK("[1.0]"), OK("[-0.0e0]"), NO("[01]"), NO("[-01]"), NO("[00]"), NO("[+1]"), NO("[.5]"),
    NO("[1.]"), NO("[-.5]"), NO("[1.e5]"), NO("[1e]"), NO("[1e+]"), NO("[1e-]"), NO("[-]"),
    NO("[--1]"), NO("[1.5.5]"), NO("[1e5e5]"), NO("[0x10]"), NO("[1_000]"), NO("[1,2,]"),
    NO("[- 1]"), NO("[1 .5]"), NO("[1e 5]"), OK("[1,-2,3.25e-3]"), NO("[-"), NO("[1"),
    NO("[1."), NO("[1e"), NO("[1e+"), OK("{\"n\":-7}"), NO("[1.5e]"), NO("[0e]"), OK("[0e0]"),
    OK("[0E-000]"), OK("[1e0001]"),
    /* integer range: json_int_t is 64 bits; beyond it is refused, a real is not an integer */
    OK("[9223372036854775807,-9223372036854775808]"), NO("[9223372036854775808]"),
    NO("[-9223372036854775809]"), NO("[99999999999999999999]"), NO("[18446744073709551616]"),
    OK("[9223372036854775808.0]"), OK("[9223372036854775808e0]"),
    NO("[10000000000000000000000000000000000000000000000000000000000000000000000]"),
    /* reals: overflow refused, underflow accepted as strtod gives it */
    OK("[1.7976931348623157e308]"), NO("[1.7976931348623159e308]"), NO("[1e309]"),
    NO("[-1e309]"), NO("[1e99999999999999999999]"), OK("[1e-400]"), OK("[-1e-400]"),
    OK("[4.9e-324]"), OK("[2.2250738585072011e-308]"),
    OK("[1e-99999999999999999999]"), OK("[0.1,0.2,0.30000000000000004]"),
    OK("[123456789012345678901234567890.5]"),
    /* a NUL byte in the input: refused in strings, between tokens and after the top level;
     * jansson skips one right after a number or literal */
    NO("\0{}"), NO("{}\0"), NO("[\0]"), NO("[ \0 1]"), NO("[\"a\"\0]"), NO("{\"a\"\0:1}"),
    OK("[1\0]"), OK("[true\0]"), OK("[1.5\0,2e3\0,null\0]"), OK("{\"a\":false\0}"),
    OK("[-0\0]"), NO("[1\0\0]"), NO("[tru\0e]"), NO("[-\0]"), NO("[1.\0]"), NO("[1e\0]"),
    NO("[1\0x]"), NO("[1\0 2]"), OK("[1\0 ]"), NO("[[]\0]"), NO("[{}\0]"), NO("[1\0"),
    /* shapes of real alerts */
    OK("{\"message_type\":\"CRITICAL\",\"entity_id\":\"disk/db-01\",\"state_message\":"
       "\"Disk 97% full\\n/var at 97%\",\"monitoring_tool\":\"nagios\",\"timestamp\":1700000000,"
       "\"details\":{\"load\":[1.5,2.25,3],\"ok\":false,\"owner\":null}}"),
};
/* clang-format on */

static void check_input(const char *in, size_t len, int accept, const char *label)
{
    const char *why = "";
    int r = fbr_json_parsers_agree(in, len, &why);
    ck_assert_msg(r != 0, "%s: %s", label, why);
    ck_assert_msg(r == (accept ? 2 : 1), "%s: jansson %s it, the table says otherwise", label,
                  r == 2 ? "accepts" : "refuses");
}

START_TEST(table_against_jansson)
{
    const struct json_case *c = &cases[_i];
    char label[96];
    snprintf(label, sizeof(label), "case %d (%.60s)", _i, c->in);
    check_input(c->in, c->len, c->accept, label);
}
END_TEST

START_TEST(error_text_and_position)
{
    json_error_t e;
    ck_assert_ptr_null(fbr_json_loadb("{\"a\":1,\"a\":2}", 13, &e));
    ck_assert_str_eq(e.text, "duplicate object key at byte 7");
    ck_assert_int_eq(e.position, 7);
    /* A repeated key is the error even when what follows it is wrong too, or missing; the
     * first error in the input is the one reported, at any depth. */
    static const struct {
        const char *in, *text;
    } first[] = {
        {"{\"a\":1,\"a\":x}", "duplicate object key at byte 7"},
        {"{\"a\":1,\"a\" 2}", "duplicate object key at byte 7"},
        {"{\"a\":1,\"a\"", "duplicate object key at byte 7"},
        {"{\"a\":1,\"a\":", "duplicate object key at byte 7"},
        {"{\"a\":1,\"a\":{\"b\":1,\"b\":x}}", "duplicate object key at byte 7"},
        {"{\"a\":1,\"\\u0061\":[[[{\"c\":1,\"c\":2}]]]}", "duplicate object key at byte 7"},
        {"{\"a\":{\"b\":1,\"b\":2}}", "duplicate object key at byte 12"},
        {"{\"a\":{\"b\":1,\"b\":2},\"a\":x}", "duplicate object key at byte 12"},
        {"{\"a\":[1,2,x],\"a\":1}", "invalid literal at byte 10"},
        {"{\"a\":1,\"b\":x,\"a\":2}", "invalid literal at byte 11"},
    };
    for (size_t i = 0; i < sizeof(first) / sizeof(first[0]); i++) {
        memset(&e, 0, sizeof(e));
        ck_assert_ptr_null(fbr_json_loadb(first[i].in, strlen(first[i].in), &e));
        ck_assert_msg(strcmp(e.text, first[i].text) == 0, "%s: \"%s\", expected \"%s\"",
                      first[i].in, e.text, first[i].text);
    }
    ck_assert_ptr_null(fbr_json_loadb("[1,\n 2,\n x]", 11, &e));
    ck_assert_str_eq(e.text, "invalid literal at byte 9");
    ck_assert_int_eq(e.line, 3);
    ck_assert_int_eq(e.column, 2);
    ck_assert_ptr_null(fbr_json_loadb("", 0, &e));
    ck_assert_str_eq(e.text, "'[' or '{' expected at byte 0");
    ck_assert_ptr_null(fbr_json_loadb(NULL, 0, &e));
    ck_assert(e.text[0] != '\0');
    ck_assert_ptr_null(fbr_json_loadb("[1", 2, NULL)); /* err is optional */
    /* a value is not read past len: the byte after it would make this valid */
    ck_assert_ptr_null(fbr_json_loadb("[1]", 2, &e));
    ck_assert_ptr_null(fbr_json_loadb("[\"a\"]", 3, &e));
}
END_TEST

/* n nested arrays around an optional scalar; jansson counts the scalar as one more level. */
static char *nested(size_t n, const char *inner, size_t *len)
{
    size_t il = strlen(inner);
    char *s = malloc(2 * n + il);
    memset(s, '[', n);
    memcpy(s + n, inner, il);
    memset(s + n + il, ']', n);
    *len = 2 * n + il;
    return s;
}

START_TEST(depth_limit)
{
    static const struct {
        size_t n;
        const char *inner;
        int accept;
    } d[] = {{2048, "", 1},   {2049, "", 0},          {2047, "1", 1},          {2048, "1", 0},
             {2047, "{}", 1}, {2047, "{\"a\":1}", 0}, {2046, "{\"a\":[]}", 1}, {100000, "", 0}};
    for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
        size_t len;
        char *s = nested(d[i].n, d[i].inner, &len);
        char label[64];
        snprintf(label, sizeof(label), "%zu arrays around '%s'", d[i].n, d[i].inner);
        check_input(s, len, d[i].accept, label);
        free(s);
    }
}
END_TEST

/* Strings and numbers longer than the reader's stack buffer, escaped keys waiting on the decode
 * stack while their values (escaped too) make it grow, many members. */
START_TEST(long_strings_and_escaped_keys)
{
    size_t cap = 1 << 20, n = 0;
    char *s = malloc(cap);
    n += (size_t)sprintf(s + n, "{\"k\\u00e9y\\n\":\"");
    for (int i = 0; i < 3000; i++)
        n += (size_t)sprintf(s + n, "%s", i % 7 ? "ab" : "\\t\\u20ac\\ud83d\\ude00");
    n += (size_t)sprintf(s + n, "\",\"nest\\/ed\":{\"in\\\"ner\":[\"");
    for (int i = 0; i < 5000; i++)
        n += (size_t)sprintf(s + n, "\\\"x");
    n += (size_t)sprintf(s + n, "\"],\"plain\":\"");
    for (int i = 0; i < 4000; i++)
        s[n++] = (char)('a' + i % 26);
    n += (size_t)sprintf(s + n, "\"},\"num\":1.");
    for (int i = 0; i < 2000; i++)
        s[n++] = (char)('0' + i % 10);
    n += (size_t)sprintf(s + n, "e-5,\"int\":");
    for (int i = 0; i < 2000; i++)
        s[n++] = '9';
    n += (size_t)sprintf(s + n, "}");
    check_input(s, n, 0, "a 2000-digit integer"); /* out of range */
    char *cut = strstr(s, ",\"int\":");
    strcpy(cut, "}");
    n = strlen(s);
    check_input(s, n, 1, "long escaped key, values and number");
    /* many members, keys both plain and escaped */
    n = (size_t)sprintf(s, "{");
    for (int i = 0; i < 3000; i++)
        n += (size_t)sprintf(s + n, "%s\"%s%d\":[%d,\"v\\n%d\"]", i ? "," : "",
                             i % 2 ? "k\\t" : "k", i, i, i);
    n += (size_t)sprintf(s + n, "}");
    check_input(s, n, 1, "3000 members");
    /* ...and the same key once more at the end */
    sprintf(s + n - 1, ",\"k\\u0009%d\":0}", 2999);
    check_input(s, strlen(s), 0, "3000 members and a duplicate");
    free(s);
}
END_TEST

static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *b = malloc(1 << 16);
    *len = fread(b, 1, 1 << 16, f);
    fclose(f);
    return b;
}

/* Every seed of the fuzz target, then 20,000 seeded mutations of them: byte flips, insertions of
 * the bytes that matter to the grammar, deletions, cuts. */
START_TEST(seeds_and_mutations)
{
    const char *root = getenv("FBR_SOURCE_ROOT");
    ck_assert_ptr_nonnull(root);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/tests/fuzz/corpus/fuzz_json", root);
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    char *seeds[64];
    size_t lens[64], nseeds = 0;
    for (struct dirent *e; (e = readdir(d)) && nseeds < 64;) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        seeds[nseeds] = read_whole(path, &lens[nseeds]);
        if (seeds[nseeds]) {
            check_input(seeds[nseeds], lens[nseeds], 1, e->d_name);
            nseeds++;
        }
    }
    closedir(d);
    ck_assert_uint_ge(nseeds, 5);
    static const char special[] = "\"\\{}[],:0-.eE+u \t\n\0\x7f\x80\xc3\xed\xf0\xff";
    uint64_t x = 0x9e3779b97f4a7c15ull;
    char buf[1 << 16];
    for (int iter = 0; iter < 20000; iter++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t k = (size_t)(x % nseeds), n = lens[k];
        memcpy(buf, seeds[k], n);
        for (int m = 0; m < 1 + (int)(x >> 60) % 3; m++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = n ? (size_t)(x >> 8) % n : 0;
            char c = special[(x >> 40) % (sizeof(special) - 1)];
            switch (x % 4) {
            case 0:
                if (n)
                    buf[at] = c;
                break;
            case 1:
                memmove(buf + at + 1, buf + at, n - at);
                buf[at] = c;
                n++;
                break;
            case 2:
                if (n) {
                    memmove(buf + at, buf + at + 1, n - at - 1);
                    n--;
                }
                break;
            default:
                n = at;
                break;
            }
        }
        const char *why = "";
        char label[32];
        snprintf(label, sizeof(label), "mutation %d", iter);
        ck_assert_msg(fbr_json_parsers_agree(buf, n, &why) != 0, "%s: %s", label, why);
    }
    for (size_t i = 0; i < nseeds; i++)
        free(seeds[i]);
}
END_TEST

/* ---- fbr_json_loadb_shared: the same trees, short string values shared ---------------------- */

/* The shared reader with table st gives what fbr_json_loadb gives: an equal tree, or the same
 * refusal with the same error. */
static void check_shared(struct fbr_json_strings *st, const char *in, size_t len, const char *label)
{
    json_error_t e1, e2;
    json_t *plain = fbr_json_loadb(in, len, &e1);
    json_t *shared = fbr_json_loadb_shared(in, len, &e2, st);
    ck_assert_msg(!plain == !shared, "%s: one reader accepts, the other refuses", label);
    if (plain)
        ck_assert_msg(fbr_json_trees_same(plain, shared), "%s: different trees", label);
    else
        ck_assert_msg(strcmp(e1.text, e2.text) == 0, "%s: %s vs %s", label, e1.text, e2.text);
    json_decref(plain);
    json_decref(shared);
}

START_TEST(shared_reader_same_trees)
{
    struct fbr_json_strings *st = fbr_json_strings_new();
    for (int pass = 0; pass < 2; pass++) { /* the second finds the first's values in the table */
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            char label[96];
            snprintf(label, sizeof(label), "pass %d, case %zu (%.60s)", pass, i, cases[i].in);
            check_shared(st, cases[i].in, cases[i].len, label);
        }
    }
    fbr_json_strings_free(&st);
    ck_assert_ptr_null(st);
    fbr_json_strings_free(&st); /* NULL is fine */
}
END_TEST

START_TEST(shared_reader_shares_short_values)
{
    struct fbr_json_strings *st = fbr_json_strings_new();
    static const char a_in[] = "{\"t\":\"CRITICAL\",\"long\":\"0123456789abcdefghijklmn\","
                               "\"e\":\"A\\u00e9\",\"k\":\"x\"}";
    static const char b_in[] = "[\"CRITICAL\",\"0123456789abcdefghijklmn\",\"A\xc3\xa9\",1]";
    json_t *a = fbr_json_loadb_shared(a_in, sizeof(a_in) - 1, NULL, st);
    json_t *b = fbr_json_loadb_shared(b_in, sizeof(b_in) - 1, NULL, st);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    /* at most 12 bytes: one value, also when one body escapes it; longer: one each */
    ck_assert_ptr_eq(json_object_get(a, "t"), json_array_get(b, 0));
    ck_assert_ptr_eq(json_object_get(a, "e"), json_array_get(b, 2));
    ck_assert_ptr_ne(json_object_get(a, "long"), json_array_get(b, 1));
    /* A member replaced in one tree leaves the other as it was. */
    json_object_set_new(a, "t", json_string("WARNING"));
    ck_assert_str_eq(json_string_value(json_array_get(b, 0)), "CRITICAL");
    /* Many texts taking each other's slots: every value read is its own text. */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 2000; i++) {
            int k = round == 1 ? 1999 - i : (i * 7919) % 2000;
            char in[64], want[16];
            snprintf(want, sizeof(want), "v%d", k);
            snprintf(in, sizeof(in), "{\"x\":\"%s\",\"y\":[\"%s\"]}", want, want);
            json_t *j = fbr_json_loadb_shared(in, strlen(in), NULL, st);
            ck_assert_str_eq(json_string_value(json_object_get(j, "x")), want);
            ck_assert_ptr_eq(json_object_get(j, "x"), json_array_get(json_object_get(j, "y"), 0));
            json_decref(j);
        }
    }
    /* The trees outlive the table. */
    fbr_json_strings_free(&st);
    ck_assert_str_eq(json_string_value(json_array_get(b, 0)), "CRITICAL");
    ck_assert_str_eq(json_string_value(json_object_get(a, "e")), "A\xc3\xa9");
    json_decref(a);
    json_decref(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, table_against_jansson, 0, (int)(sizeof(cases) / sizeof(cases[0])));
    tcase_add_test(tc, error_text_and_position);
    tcase_add_test(tc, depth_limit);
    tcase_add_test(tc, long_strings_and_escaped_keys);
    tcase_add_test(tc, seeds_and_mutations);
    tcase_add_test(tc, shared_reader_same_trees);
    tcase_add_test(tc, shared_reader_shares_short_values);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
