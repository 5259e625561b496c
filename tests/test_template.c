/*
 * test_template.c - unit tests for template.c, the engine between events and delivery: every
 * compile error with its column, rendering in every context (JSON string / value / key, URL path /
 * query / whole, form, header, text, rule), missing variables, zero-copy and scratch stability,
 * and the property test that renders thousands of random values (quotes, controls, U+0000, lone
 * surrogates, invalid UTF-8, 10,000-byte strings, numbers, nested objects) into the seed payload
 * and checks that jansson reads back exactly the original value.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/template.h"
#include "testsupport.h"

static const char *event_json =
    "{\"ALERT\": {\"entity_display_name\": \"Disk full on db-1\", \"room_id\": \"42\","
    " \"auth_token\": \"t0k/en+=&?\", \"quote\": \"say \\\"hi\\\"\\n\", \"count\": 7,"
    " \"ratio\": 0.5, \"flag\": true, \"off\": false, \"nothing\": null, \"neg\": -12,"
    " \"big\": 1e300, \"monitor_data\": {\"id\": \"m-1\", \"tags\": [\"a\", \"b\"]},"
    " \"obj\": {\"k\": [1, \"x\"]}, \"host\": \"example.com\","
    " \"url\": \"https://h.example/x?y=1\","
    " \"crlf\": \"a\\r\\nX-Evil: 1\", \"nul\": \"a\\u0000b\", \"space\": \"a b\","
    " \"utf\": \"caf\\u00e9\", \"some-field\": \"dash\", \"under_score\": \"u\"},"
    " \"STATE\": {\"ALERT_COUNT\": 3, \"CURRENT_STATE\": \"CRITICAL\", \"ACK_USER\": \"SYSTEM\"},"
    " \"PAGE\": {\"METHODS\": [{\"TYPE\": \"sms\"}, {\"TYPE\": \"push\"}]},"
    " \"CHAT\": {\"TEXT\": \"hello\"}}";

static json_t *load_event(void)
{
    json_error_t e;
    json_t *ev = json_loads(event_json, JSON_ALLOW_NUL, &e);
    ck_assert_msg(ev != NULL, "fixture: %s", e.text);
    return ev;
}

/* ------------------------------------------------------------------------------------------- */

static const struct {
    enum fbr_tpl_context ctx;
    const char *src;
    const char *err;
} compile_errors[] = {
    {FBR_TPL_TEXT, "abc ${{ALERT.x", "column 5: unterminated '${{'"},
    {FBR_TPL_TEXT, "${{", "column 1: unterminated '${{'"},
    {FBR_TPL_JSON, "{\"a\": \"${{ALERT.x}\"}", "column 18: expected '}}'"},
    {FBR_TPL_TEXT, "x${{}}", "column 2: empty variable name"},
    {FBR_TPL_TEXT, "x${{   }}", "column 2: empty variable name"},
    {FBR_TPL_TEXT, "${{FOO.bar}}", "column 4: unknown namespace 'FOO'"},
    {FBR_TPL_TEXT, "${{alert.bar}}", "column 4: unknown namespace 'alert'"},
    {FBR_TPL_TEXT, "${{.bar}}", "column 4: empty namespace"},
    {FBR_TPL_URL, "http://h/${{ALERT.}}", "column 19: empty field name"},
    {FBR_TPL_URL, "http://h/${{ALERT.a..b}}", "column 21: empty field name"},
    {FBR_TPL_TEXT, "${{ALERT.a b}}", "column 11: invalid character in variable name ' '"},
    {FBR_TPL_RULE, "${{\\0}}", "column 4: bad capture index (\\1..\\9) '\\0'"},
    {FBR_TPL_RULE, "${{\\10}}", "column 4: bad capture index (\\1..\\9) '\\10'"},
    {FBR_TPL_RULE, "${{\\x}}", "column 4: bad capture index (\\1..\\9) '\\x'"},
    {FBR_TPL_TEXT, "${{\\1}}", "column 4: capture groups are only allowed in rule templates '\\1'"},
    {FBR_TPL_RULE, "a ${{ALERT.x}}",
     "column 6: namespace not allowed in a rule template (use ${{field}}) 'ALERT'"},
    {FBR_TPL_HEADER, "a\r\nb ${{ALERT.x}}", "column 2: CR, LF or NUL in a header value"},
    {FBR_TPL_HEADER, "${{ALERT.x}}\n", "column 13: CR, LF or NUL in a header value"},
};

START_TEST(compile_error_columns)
{
    char err[256];
    struct fbr_tpl *t = (struct fbr_tpl *)&err; /* must be reset to NULL */
    const char *src = compile_errors[_i].src;
    int rc = fbr_tpl_compile(src, strlen(src), compile_errors[_i].ctx, &t, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_INVALID);
    ck_assert_ptr_null(t);
    ck_assert_str_eq(err, compile_errors[_i].err);
}
END_TEST

/* ------------------------------------------------------------------------------------------- */

static const struct {
    enum fbr_tpl_context ctx;
    const char *src;
    int rc;
    const char *out; /* expected bytes, or r->missing for FBR_SKIP */
} renders[] = {
    /* TEXT: as is; missing and null are empty; typed values as text */
    {FBR_TPL_TEXT, "plain", FBR_OK, "plain"},
    {FBR_TPL_TEXT, "", FBR_OK, ""},
    {FBR_TPL_TEXT, "$ {{ ${ $${{ALERT.room_id}}", FBR_OK, "$ {{ ${ $42"},
    {FBR_TPL_TEXT, "[${{ALERT.quote}}]", FBR_OK, "[say \"hi\"\n]"},
    {FBR_TPL_TEXT, "[${{ALERT.missing}}|${{ALERT.nothing}}]", FBR_OK, "[|]"},
    {FBR_TPL_TEXT, "${{ALERT.count}} ${{ALERT.ratio}} ${{ALERT.flag}} ${{ALERT.off}}", FBR_OK,
     "7 0.5 true false"},
    {FBR_TPL_TEXT, "${{ALERT.neg}} ${{ALERT.big}}", FBR_OK, "-12 1.0000000000000001e+300"},
    {FBR_TPL_TEXT, "${{ALERT.monitor_data.id}} ${{ALERT.monitor_data.tags.1}}", FBR_OK, "m-1 b"},
    {FBR_TPL_TEXT, "${{PAGE.METHODS.0.TYPE}},${{PAGE.METHODS.1.TYPE}},${{PAGE.METHODS.2.TYPE}}",
     FBR_OK, "sms,push,"},
    {FBR_TPL_TEXT, "${{ALERT.some-field}}/${{ALERT.under_score}}", FBR_OK, "dash/u"},
    {FBR_TPL_TEXT, "${{ ALERT.room_id }}", FBR_OK, "42"},
    {FBR_TPL_TEXT, "${{ALERT.obj}}", FBR_OK, "{\"k\":[1,\"x\"]}"},
    {FBR_TPL_TEXT, "${{STATE.ALERT_COUNT}}${{INCIDENT.X}}${{ONCALL.X}}${{CHAT.TEXT}}", FBR_OK,
     "3hello"},
    {FBR_TPL_TEXT, "${{ALERT.room_id.x}}|${{ALERT.monitor_data.tags.x}}", FBR_OK, "|"},

    /* JSON string position */
    {FBR_TPL_JSON, "{\"m\": \"${{ALERT.quote}}\"}", FBR_OK, "{\"m\": \"say \\\"hi\\\"\\n\"}"},
    {FBR_TPL_JSON, "{\"m\": \"<${{ALERT.nul}}>\"}", FBR_OK, "{\"m\": \"<a\\u0000b>\"}"},
    {FBR_TPL_JSON, "{\"m\": \"${{ALERT.count}} ${{ALERT.flag}} ${{ALERT.nothing}}\"}", FBR_OK,
     "{\"m\": \"7 true \"}"},
    {FBR_TPL_JSON, "{\"m\": \"${{ALERT.missing}}\"}", FBR_OK, "{\"m\": \"\"}"},
    {FBR_TPL_JSON, "{\"m\": \"${{ALERT.obj}}\"}", FBR_OK, "{\"m\": \"{\\\"k\\\":[1,\\\"x\\\"]}\"}"},
    {FBR_TPL_JSON, "{\"m\": \"a\\\"${{ALERT.room_id}}\\\\\", \"n\": ${{ALERT.room_id}}}", FBR_OK,
     "{\"m\": \"a\\\"42\\\\\", \"n\": \"42\"}"},
    {FBR_TPL_JSON, "{\"m\": \"${{ALERT.utf}}\"}", FBR_OK, "{\"m\": \"caf\xc3\xa9\"}"},
    /* JSON bare value position */
    {FBR_TPL_JSON, "{\"count\": ${{STATE.ALERT_COUNT}}, \"s\": ${{STATE.CURRENT_STATE}}}", FBR_OK,
     "{\"count\": 3, \"s\": \"CRITICAL\"}"},
    {FBR_TPL_JSON, "[${{ALERT.flag}},${{ALERT.off}},${{ALERT.nothing}},${{ALERT.missing}}]",
     FBR_OK, "[true,false,null,null]"},
    {FBR_TPL_JSON, "{\"o\": ${{ALERT.obj}}, \"r\": ${{ALERT.ratio}}, \"q\": ${{ALERT.quote}}}",
     FBR_OK, "{\"o\": {\"k\":[1,\"x\"]}, \"r\": 0.5, \"q\": \"say \\\"hi\\\"\\n\"}"},
    {FBR_TPL_JSON, "${{ALERT.monitor_data}}", FBR_OK, "{\"id\":\"m-1\",\"tags\":[\"a\",\"b\"]}"},
    {FBR_TPL_JSON, "[{\"a\": [1, ${{ALERT.count}}]}, ${{ALERT.neg}}]", FBR_OK,
     "[{\"a\": [1, 7]}, -12]"},
    /* JSON object key position, quoted or bare */
    {FBR_TPL_JSON, "{\"${{ALERT.quote}}\": 1}", FBR_OK, "{\"say \\\"hi\\\"\\n\": 1}"},
    {FBR_TPL_JSON, "{${{ALERT.room_id}}: 1, ${{ALERT.count}}: ${{ALERT.count}}}", FBR_OK,
     "{\"42\": 1, \"7\": 7}"},
    {FBR_TPL_JSON, "{\"a\": [${{ALERT.count}}], ${{ALERT.missing}}: ${{ALERT.quote}}}", FBR_OK,
     "{\"a\": [7], \"\": \"say \\\"hi\\\"\\n\"}"},
    {FBR_TPL_JSON, "{${{ALERT.quote}}: ${{ALERT.nothing}}}", FBR_OK,
     "{\"say \\\"hi\\\"\\n\": null}"},
    {FBR_TPL_JSON, "{${{ALERT.nothing}}: 1, \"state\": ${{STATE}}}", FBR_OK,
     "{\"\": 1, \"state\": {\"ALERT_COUNT\":3,\"CURRENT_STATE\":\"CRITICAL\","
     "\"ACK_USER\":\"SYSTEM\"}}"},

    /* URL: path segment vs query component, single variable taken whole */
    {FBR_TPL_URL,
     "https://DOMAIN.hipchat.com/v2/room/${{ALERT.room_id}}/notification?auth_token="
     "${{ALERT.auth_token}}",
     FBR_OK, "https://DOMAIN.hipchat.com/v2/room/42/notification?auth_token=t0k%2Fen%2B%3D%26%3F"},
    {FBR_TPL_URL, "http://h/${{ALERT.auth_token}}/${{ALERT.space}}?q=${{ALERT.space}}", FBR_OK,
     "http://h/t0k%2Fen+=&%3F/a%20b?q=a%20b"},
    {FBR_TPL_URL, "http://h/p#${{ALERT.auth_token}}", FBR_OK, "http://h/p#t0k%2Fen%2B%3D%26%3F"},
    {FBR_TPL_URL, "http://h/${{ALERT.utf}}?n=${{ALERT.count}}&x=${{ALERT.big}}", FBR_OK,
     "http://h/caf%C3%A9?n=7&x=1.0000000000000001e%2B300"},
    {FBR_TPL_URL, "https://${{ALERT.host}}:8443/x", FBR_OK, "https://example.com:8443/x"},
    {FBR_TPL_URL, "${{ALERT.url}}", FBR_OK, "https://h.example/x?y=1"},
    {FBR_TPL_URL, "HTTPS://[::1]:80/", FBR_OK, "HTTPS://[::1]:80/"},
    {FBR_TPL_URL, "http://h/${{ALERT.nothing}}x", FBR_OK, "http://h/x"},
    /* URL: a missing variable skips the webhook */
    {FBR_TPL_URL, "https://${{ALERT.some-other}}.example/x", FBR_SKIP, "ALERT.some-other"},
    {FBR_TPL_URL, "http://h/${{ALERT.room_id}}?a=${{ PAGE.METHODS.5.TYPE }}", FBR_SKIP,
     "PAGE.METHODS.5.TYPE"},
    {FBR_TPL_URL, "${{ONCALL.USER_ID}}", FBR_SKIP, "ONCALL.USER_ID"},
    /* URL: the result must be an absolute http(s) URL */
    {FBR_TPL_URL, "ftp://h/x", FBR_INVALID, NULL},
    {FBR_TPL_URL, "/relative/${{ALERT.room_id}}", FBR_INVALID, NULL},
    {FBR_TPL_URL, "${{ALERT.space}}", FBR_INVALID, NULL},
    {FBR_TPL_URL, "${{ALERT.quote}}", FBR_INVALID, NULL},
    {FBR_TPL_URL, "${{ALERT.count}}", FBR_INVALID, NULL},
    {FBR_TPL_URL, "http:///x", FBR_INVALID, NULL},
    {FBR_TPL_URL, "http://h:/x", FBR_INVALID, NULL},
    {FBR_TPL_URL, "http://h:99999/x", FBR_INVALID, NULL},
    {FBR_TPL_URL, "http://${{ALERT.auth_token}}/x", FBR_INVALID, NULL},
    {FBR_TPL_URL, "http://[::1/x", FBR_INVALID, NULL},
    /* URL: userinfo is refused (url.h), credentials go in a header */
    {FBR_TPL_URL, "http://u:p%40@h", FBR_INVALID, NULL},
    /* URL: a value in the authority cannot add userinfo, a port or a path */
    {FBR_TPL_URL, "https://${{ALERT.url}}/x", FBR_INVALID, NULL},
    {FBR_TPL_URL, "https://${{ALERT.host}}${{ALERT.quote}}.x/", FBR_INVALID, NULL},
    {FBR_TPL_URL, "https://api.${{ALERT.host}}/${{ALERT.url}}", FBR_OK,
     "https://api.example.com/https:%2F%2Fh.example%2Fx%3Fy=1"},
    {FBR_TPL_URL, "http://h/x y", FBR_INVALID, NULL},

    /* FORM */
    {FBR_TPL_FORM,
     "a=${{ALERT.space}}&t=${{ALERT.auth_token}}&m=${{ALERT.missing}}&u=${{ALERT.utf}}",
     FBR_OK, "a=a+b&t=t0k%2Fen%2B%3D%26%3F&m=&u=caf%C3%A9"},
    {FBR_TPL_FORM, "q=${{ALERT.quote}}&c=${{ALERT.count}}", FBR_OK, "q=say+%22hi%22%0A&c=7"},

    /* HEADER: as is, CR/LF/NUL fail */
    {FBR_TPL_HEADER, "Bearer ${{ALERT.auth_token}} ${{ALERT.quote.x}}${{ALERT.count}}", FBR_OK,
     "Bearer t0k/en+=&? 7"},
    {FBR_TPL_HEADER, "x ${{ALERT.crlf}}", FBR_INVALID, NULL},
    {FBR_TPL_HEADER, "x ${{ALERT.nul}}", FBR_INVALID, NULL},
    {FBR_TPL_HEADER, "x ${{ALERT.quote}}", FBR_INVALID, NULL},

    /* RULE: ${{field}} into the alert */
    {FBR_TPL_RULE, "${{entity_display_name}} (${{monitor_data.id}}) ${{missing}}${{count}}",
     FBR_OK, "Disk full on db-1 (m-1) 7"},
    {FBR_TPL_RULE, "${{some-field}}${{ALERT}}", FBR_OK, "dash"},
};

static void render_case(enum fbr_tpl_context ctx, const char *src, int want_rc, const char *want)
{
    char err[256];
    struct fbr_tpl *t;
    json_t *ev = load_event();
    int rc = fbr_tpl_compile(src, strlen(src), ctx, &t, err, sizeof(err));
    ck_assert_msg(rc == FBR_OK, "compile %s: %s", src, err);
    struct fbr_tpl_scope scope = {.event = ev, .alert = json_object_get(ev, "ALERT")};
    struct fbr_render r;
    fbr_render_init(&r);
    /* twice: the second render reuses the buffers */
    for (int round = 0; round < 2; round++) {
        fbr_render_reset(&r);
        rc = fbr_tpl_render(t, &scope, &r);
        ck_assert_msg(rc == want_rc, "%s: rc %d, want %d (%s)", src, rc, want_rc,
                      r.error ? r.error : "");
        if (rc == FBR_OK) {
            char *out = fbr_render_strdup(&r);
            ck_assert_uint_eq(r.total, strlen(want));
            ck_assert_msg(memcmp(out, want, r.total) == 0, "%s: got [%s] want [%s]", src, out,
                          want);
            free(out);
        } else if (rc == FBR_SKIP) {
            ck_assert_ptr_nonnull(r.missing);
            ck_assert_uint_eq(r.missing_len, strlen(want));
            ck_assert(memcmp(r.missing, want, r.missing_len) == 0);
        } else {
            ck_assert_ptr_nonnull(r.error);
        }
    }
    fbr_render_free(&r);
    fbr_tpl_unref(&t);
    ck_assert_ptr_null(t);
    json_decref(ev);
}

START_TEST(render_table)
{
    render_case(renders[_i].ctx, renders[_i].src, renders[_i].rc, renders[_i].out);
}
END_TEST

START_TEST(rule_captures)
{
    char err[128];
    struct fbr_tpl *t;
    const char *src = "${{\\2}}-${{\\1}}-${{\\3}}-${{\\9}}-${{host}}";
    ck_assert_int_eq(fbr_tpl_compile(src, strlen(src), FBR_TPL_RULE, &t, err, sizeof(err)), 0);
    json_t *alert = json_pack("{s:s}", "host", "db-1");
    struct fbr_slice caps[4] = {{"whole", 5}, {"one", 3}, {"two", 3}, {NULL, 0}};
    struct fbr_tpl_scope scope = {.alert = alert, .captures = caps, .ncaptures = 4};
    struct fbr_render r;
    fbr_render_init(&r);
    ck_assert_int_eq(fbr_tpl_render(t, &scope, &r), FBR_OK);
    char *out = fbr_render_strdup(&r);
    ck_assert_str_eq(out, "two-one---db-1");
    free(out);
    /* the capture slices are referenced, not copied */
    ck_assert_ptr_eq(r.iov[0].iov_base, caps[2].ptr);
    fbr_render_free(&r);
    fbr_tpl_unref(&t);
    json_decref(alert);
}
END_TEST

/* The namespaces a template reads, known at compile time: what the intake builds per alert. */
static const struct {
    enum fbr_tpl_context ctx;
    const char *src;
    unsigned want;
} ns_cases[] = {
    {FBR_TPL_JSON, "{\"m\": \"no variables\"}", 0},
    {FBR_TPL_URL, "http://h/v2/room/${{ALERT.room_id}}/notification", FBR_NS_BIT(FBR_NS_ALERT)},
    {FBR_TPL_TEXT, "#${{STATE.INCIDENT_NAME}} ${{ALERT.entity_id}} ${{STATE.ACK_USER}}",
     FBR_NS_BIT(FBR_NS_ALERT) | FBR_NS_BIT(FBR_NS_STATE)},
    {FBR_TPL_HEADER, "${{INCIDENT.CURRENT_PHASE}}", FBR_NS_BIT(FBR_NS_INCIDENT)},
    {FBR_TPL_JSON, "{\"all\": ${{INCIDENT}}, \"c\": \"${{CHAT.TEXT}}\"}",
     FBR_NS_BIT(FBR_NS_INCIDENT) | FBR_NS_BIT(FBR_NS_CHAT)},
    {FBR_TPL_TEXT, "${{ONCALL.user}} ${{PAGE.x}}", FBR_NS_BIT(FBR_NS_ONCALL) | FBR_NS_BIT(FBR_NS_PAGE)},
    {FBR_TPL_RULE, "${{host}}-${{\\1}}", FBR_NS_BIT(FBR_NS_ALERT)},
    {FBR_TPL_RULE, "${{\\1}}", 0},
};

START_TEST(namespaces_read)
{
    char err[128];
    struct fbr_tpl *t;
    const char *src = ns_cases[_i].src;
    ck_assert_int_eq(fbr_tpl_compile(src, strlen(src), ns_cases[_i].ctx, &t, err, sizeof(err)),
                     FBR_OK);
    ck_assert_msg(fbr_tpl_namespaces(t) == ns_cases[_i].want, "%s: 0x%x", src,
                  fbr_tpl_namespaces(t));
    fbr_tpl_unref(&t);
    ck_assert_uint_eq(fbr_tpl_namespaces(NULL), 0);
}
END_TEST

START_TEST(zero_copy_and_refs)
{
    char err[128];
    struct fbr_tpl *t;
    const char *src = "{ \"color\": \"red\", \"message\": \"${{ALERT.entity_display_name}}\", "
                      "\"notify\": true, \"message_format\": \"text\" }";
    ck_assert_int_eq(fbr_tpl_compile(src, strlen(src), FBR_TPL_JSON, &t, err, sizeof(err)), 0);
    ck_assert(fbr_tpl_has_variables(t));
    size_t len;
    const char *tsrc = fbr_tpl_source(t, &len);
    ck_assert_uint_eq(len, strlen(src));
    ck_assert(memcmp(tsrc, src, len) == 0);
    json_t *ev = load_event();
    struct fbr_tpl_scope scope = {.event = ev};
    struct fbr_render r;
    fbr_render_init(&r);
    ck_assert_int_eq(fbr_tpl_render(t, &scope, &r), FBR_OK);
    ck_assert_uint_eq(r.niov, 3);
    ck_assert_ptr_eq(r.iov[0].iov_base, tsrc);
    const char *v = json_string_value(json_object_get(json_object_get(ev, "ALERT"),
                                                      "entity_display_name"));
    ck_assert_ptr_eq(r.iov[1].iov_base, v);
    /* a second reference keeps the template alive after the first is dropped */
    struct fbr_tpl *t2 = fbr_tpl_ref(t);
    fbr_tpl_unref(&t);
    ck_assert_ptr_null(t);
    char *out = fbr_render_strdup(&r);
    ck_assert_str_eq(out, "{ \"color\": \"red\", \"message\": \"Disk full on db-1\", "
                          "\"notify\": true, \"message_format\": \"text\" }");
    free(out);
    ck_assert(fbr_tpl_has_variables(t2));
    fbr_tpl_unref(&t2);

    /* set_copy replaces the content with a private copy */
    char buf[] = "replayed body";
    fbr_render_set_copy(&r, buf, strlen(buf));
    buf[0] = 'X';
    ck_assert_uint_eq(r.niov, 1);
    ck_assert_uint_eq(r.total, 13);
    char dst[13];
    fbr_render_copy(&r, dst);
    ck_assert(memcmp(dst, "replayed body", 13) == 0);
    fbr_render_free(&r);
    json_decref(ev);
}
END_TEST

/* Many escaped values in one render: scratch grows several times, earlier slices stay valid. */
START_TEST(scratch_growth_keeps_slices)
{
    char err[128];
    struct fbr_tpl *t[3];
    const char *srcs[3] = {"[\"${{ALERT.s}}\", ${{ALERT.n}}, ${{ALERT.o}}, \"${{ALERT.t}}\"]",
                           "|${{ALERT.s}}|", "x${{ALERT.n}}"};
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(fbr_tpl_compile(srcs[i], strlen(srcs[i]), i ? FBR_TPL_FORM : FBR_TPL_JSON,
                                         &t[i], err, sizeof(err)), 0);
    struct fbr_render r;
    fbr_render_init(&r);
    for (size_t size = 1; size < 40000; size = size * 3 + 1) {
        char *s = malloc(size);
        for (size_t k = 0; k < size; k++)
            s[k] = "a\"\\\n \x01\xff/"[k % 8];
        json_t *alert = json_object();
        json_object_set_new(alert, "s", json_stringn_nocheck(s, size));
        json_object_set_new(alert, "t", json_stringn_nocheck(s, size / 2));
        json_object_set_new(alert, "n", json_integer((json_int_t)size));
        json_object_set_new(alert, "o", json_pack("{s:[s,i]}", "k", "v\"", 1));
        json_t *ev = json_pack("{s:o}", "ALERT", alert);
        struct fbr_tpl_scope scope = {.event = ev};
        fbr_render_reset(&r);
        for (int round = 0; round < 20; round++)
            for (int i = 0; i < 3; i++)
                ck_assert_int_eq(fbr_tpl_render(t[i], &scope, &r), FBR_OK);
        /* every round produced the same bytes: compare all of them with the first round */
        char *out = fbr_render_strdup(&r);
        ck_assert_uint_eq(r.total % 20, 0);
        size_t per = r.total / 20;
        for (int round = 1; round < 20; round++)
            ck_assert(memcmp(out, out + round * per, per) == 0);
        json_error_t e;
        size_t jlen = strchr(out, '|') - out;
        json_t *back = json_loadb(out, jlen, JSON_ALLOW_NUL, &e);
        ck_assert_msg(back != NULL, "size %zu: %s", size, e.text);
        ck_assert_int_eq(json_integer_value(json_array_get(back, 1)), (json_int_t)size);
        ck_assert(json_equal(json_array_get(back, 2), json_object_get(alert, "o")));
        json_decref(back);
        free(out);
        free(s);
        json_decref(ev);
    }
    fbr_render_free(&r);
    for (int i = 0; i < 3; i++)
        fbr_tpl_unref(&t[i]);
}
END_TEST

static const struct {
    const char *ct;
    enum fbr_tpl_context ctx;
} content_types[] = {
    {"application/json", FBR_TPL_JSON},
    {"Application/JSON; charset=utf-8", FBR_TPL_JSON},
    {" application/vnd.api+json ", FBR_TPL_JSON},
    {"application/x-www-form-urlencoded", FBR_TPL_FORM},
    {"application/x-www-form-urlencoded;charset=UTF-8", FBR_TPL_FORM},
    {"text/plain", FBR_TPL_TEXT},
    {"text/html; charset=utf-8", FBR_TPL_TEXT},
    {"application/xml", FBR_TPL_TEXT},
    {"+json", FBR_TPL_TEXT},
    {"", FBR_TPL_TEXT},
    {NULL, FBR_TPL_TEXT},
};

START_TEST(content_type_map)
{
    ck_assert_int_eq(fbr_tpl_context_for_content_type(content_types[_i].ct),
                     content_types[_i].ctx);
}
END_TEST

/* ------------------------------------------------------------------------------------------- *
 * Property test.  The generator builds each random string together with what a correct engine
 * must give back: valid code points map to themselves, each ill-formed piece maps to a known
 * number of U+FFFD (one per maximal subpart, the Unicode / WHATWG practice).
 */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

struct gbuf {
    char *p;
    size_t n, cap;
};

static void gput(struct gbuf *b, const void *s, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 16;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static size_t utf8_encode(uint32_t cp, char *d)
{
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xc0 | cp >> 6);
        d[1] = (char)(0x80 | (cp & 63));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xe0 | cp >> 12);
        d[1] = (char)(0x80 | ((cp >> 6) & 63));
        d[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    d[0] = (char)(0xf0 | cp >> 18);
    d[1] = (char)(0x80 | ((cp >> 12) & 63));
    d[2] = (char)(0x80 | ((cp >> 6) & 63));
    d[3] = (char)(0x80 | (cp & 63));
    return 4;
}

static const char fffd[] = "\xef\xbf\xbd";

/* Appends one random unit to raw and its expected decoding to want. */
static void gen_unit(struct gbuf *raw, struct gbuf *want, int *after_truncated, int allow_nul)
{
    char enc[4];
    unsigned kind = (unsigned)(rnd() % 16);
    if (*after_truncated && kind >= 8)
        kind = 0; /* a truncated sequence must not be followed by a continuation byte */
    *after_truncated = 0;
    switch (kind) {
    case 0:
    case 1:
    case 2: { /* printable ASCII */
        char c = (char)(0x20 + rnd() % 95);
        gput(raw, &c, 1);
        gput(want, &c, 1);
        break;
    }
    case 3: { /* the characters JSON must escape, U+0000 included */
        static const char special[] = {'"', '\\', '\n', '\r', '\t', '\b', '\f', '\0', 0x01, 0x1f,
                                       0x7f, '/'};
        char c = special[rnd() % sizeof(special)];
        if (c == '\0' && !allow_nul)
            c = '"';
        gput(raw, &c, 1);
        gput(want, &c, 1);
        break;
    }
    case 4:
    case 5:
    case 6: { /* a valid code point of any length, never a surrogate */
        uint32_t cp;
        switch (rnd() % 3) {
        case 0:
            cp = 0x80 + (uint32_t)(rnd() % 0x780);
            break;
        case 1:
            cp = 0x800 + (uint32_t)(rnd() % 0xf800);
            if (cp >= 0xd800 && cp <= 0xdfff)
                cp = 0xfffd;
            break;
        default:
            cp = 0x10000 + (uint32_t)(rnd() % 0x100000);
            break;
        }
        size_t n = utf8_encode(cp, enc);
        gput(raw, enc, n);
        gput(want, enc, n);
        break;
    }
    case 7: { /* truncated multi-byte sequence: one U+FFFD */
        static const char *tr[] = {"\xc3", "\xe2\x82", "\xf0\x9f\x98", "\xe1", "\xf4\x8f"};
        const char *s = tr[rnd() % 5];
        gput(raw, s, strlen(s));
        gput(want, fffd, 3);
        *after_truncated = 1;
        break;
    }
    case 8:
    case 9: { /* lone surrogate, UTF-8 encoded (CESU): three U+FFFD */
        uint32_t cp = 0xd800 + (uint32_t)(rnd() % 0x800);
        enc[0] = (char)0xed;
        enc[1] = (char)(0x80 | ((cp >> 6) & 63));
        enc[2] = (char)(0x80 | (cp & 63));
        gput(raw, enc, 3);
        for (int k = 0; k < 3; k++)
            gput(want, fffd, 3);
        break;
    }
    case 10: { /* stray continuation byte */
        char c = (char)(0x80 + rnd() % 64);
        gput(raw, &c, 1);
        gput(want, fffd, 3);
        break;
    }
    case 11: { /* bytes that never appear in UTF-8 */
        static const unsigned char never[] = {0xc0, 0xc1, 0xf5, 0xf8, 0xfe, 0xff};
        char c = (char)never[rnd() % sizeof(never)];
        gput(raw, &c, 1);
        gput(want, fffd, 3);
        break;
    }
    case 12: { /* overlong encodings and code points past U+10FFFF */
        static const struct {
            const char *s;
            int n;
        } bad[] = {{"\xe0\x80\x80", 3}, {"\xf0\x80\x80\x80", 4}, {"\xf4\x90\x80\x80", 4},
                   {"\xc0\xaf", 2}};
        unsigned k = (unsigned)(rnd() % 4);
        gput(raw, bad[k].s, strlen(bad[k].s));
        for (int i = 0; i < bad[k].n; i++)
            gput(want, fffd, 3);
        break;
    }
    default: { /* plain letters, the common case */
        char c = (char)('a' + rnd() % 26);
        gput(raw, &c, 1);
        gput(want, &c, 1);
        break;
    }
    }
}

/*
 * Random string (raw bytes, possibly ill-formed) and its expected decoding; sometimes long.
 * Object keys get no U+0000: jansson's parser does not support it in keys.
 */
static void gen_string(json_t **raw_out, json_t **want_out, int allow_long, int allow_nul)
{
    struct gbuf raw = {0}, want = {0};
    size_t units;
    unsigned pick = (unsigned)(rnd() % 20);
    if (pick == 0 && allow_long)
        units = 10000;
    else if (pick < 3)
        units = 0;
    else
        units = 1 + rnd() % 60;
    int trunc = 0;
    for (size_t i = 0; i < units; i++)
        gen_unit(&raw, &want, &trunc, allow_nul);
    *raw_out = json_stringn_nocheck(raw.p ? raw.p : "", raw.n);
    *want_out = json_stringn(want.p ? want.p : "", want.n);
    ck_assert_ptr_nonnull(*want_out);
    free(raw.p);
    free(want.p);
}

static void gen_value(json_t **raw, json_t **want, unsigned depth)
{
    unsigned kind = (unsigned)(rnd() % (depth < 4 ? 10 : 7));
    switch (kind) {
    case 0:
    case 1:
    case 2:
        gen_string(raw, want, depth == 0, 1);
        return;
    case 3: {
        json_int_t v = (json_int_t)rnd();
        if (rnd() % 2)
            v %= 1000;
        *raw = json_integer(v);
        break;
    }
    case 4: {
        double d;
        uint64_t bits = rnd();
        memcpy(&d, &bits, sizeof(d));
        if (d != d || d - d != 0) /* NaN and infinities are not JSON */
            d = (double)(int64_t)bits / 3.0;
        if (rnd() % 2)
            d = (double)(rnd() % 100000) / 100.0;
        *raw = json_real(d);
        break;
    }
    case 5:
        *raw = json_boolean(rnd() % 2);
        break;
    case 6:
        *raw = json_null();
        break;
    case 7:
    case 8: {
        *raw = json_object();
        *want = json_object();
        unsigned n = (unsigned)(rnd() % 5);
        for (unsigned i = 0; i < n; i++) {
            json_t *kr, *kw, *vr, *vw;
            gen_string(&kr, &kw, 0, 0);
            gen_value(&vr, &vw, depth + 1);
            if (!json_object_getn(*want, json_string_value(kw), json_string_length(kw))) {
                json_object_setn_new_nocheck(*raw, json_string_value(kr), json_string_length(kr),
                                             vr);
                json_object_setn_new(*want, json_string_value(kw), json_string_length(kw), vw);
            } else {
                json_decref(vr);
                json_decref(vw);
            }
            json_decref(kr);
            json_decref(kw);
        }
        return;
    }
    default: {
        *raw = json_array();
        *want = json_array();
        unsigned n = (unsigned)(rnd() % 5);
        for (unsigned i = 0; i < n; i++) {
            json_t *vr, *vw;
            gen_value(&vr, &vw, depth + 1);
            json_array_append_new(*raw, vr);
            json_array_append_new(*want, vw);
        }
        return;
    }
    }
    *want = json_incref(*raw);
}

static json_t *render_and_parse(struct fbr_tpl *t, json_t *ev, struct fbr_render *r)
{
    struct fbr_tpl_scope scope = {.event = ev};
    fbr_render_reset(r);
    ck_assert_int_eq(fbr_tpl_render(t, &scope, r), FBR_OK);
    char *out = fbr_render_strdup(r);
    json_error_t e;
    json_t *back = json_loadb(out, r->total, JSON_ALLOW_NUL, &e);
    ck_assert_msg(back != NULL, "seed %llu: rendered JSON does not parse: %s",
                  (unsigned long long)rng_state, e.text);
    free(out);
    return back;
}

START_TEST(property_seed_payload)
{
    const char *seed = "{ \"color\": \"red\", \"message\": \"${{ALERT.entity_display_name}}\", "
                       "\"notify\": true, \"message_format\": \"text\" }";
    const char *bare = "{ \"color\": \"red\", \"message\": ${{ALERT.entity_display_name}}, "
                       "\"notify\": true }";
    const char *key = "{ ${{ALERT.entity_display_name}}: 1 }";
    char err[128];
    struct fbr_tpl *ts, *tb, *tk;
    ck_assert_int_eq(fbr_tpl_compile(seed, strlen(seed), FBR_TPL_JSON, &ts, err, sizeof(err)), 0);
    ck_assert_int_eq(fbr_tpl_compile(bare, strlen(bare), FBR_TPL_JSON, &tb, err, sizeof(err)), 0);
    ck_assert_int_eq(fbr_tpl_compile(key, strlen(key), FBR_TPL_JSON, &tk, err, sizeof(err)), 0);
    struct fbr_render r;
    fbr_render_init(&r);
    rng_state = 0x9e3779b97f4a7c15ull;
    for (int iter = 0; iter < 4000; iter++) {
        json_t *raw, *want;
        gen_value(&raw, &want, 0);
        json_t *ev = json_pack("{s:{s:O}}", "ALERT", "entity_display_name", raw);

        /* inside the string literal: strings come back exactly, anything else as its text */
        json_t *back = render_and_parse(ts, ev, &r);
        json_t *msg = json_object_get(back, "message");
        ck_assert(json_is_string(msg));
        ck_assert_str_eq(json_string_value(json_object_get(back, "color")), "red");
        ck_assert(json_is_true(json_object_get(back, "notify")));
        if (json_is_string(want)) {
            ck_assert_msg(json_equal(msg, want), "iter %d: string value differs", iter);
        } else if (json_is_null(want)) {
            ck_assert_str_eq(json_string_value(msg), "");
        } else {
            json_t *inner = json_loadb(json_string_value(msg), json_string_length(msg),
                                       JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
            ck_assert_msg(inner && json_equal(inner, want), "iter %d: value text differs: [%s] %s",
                          iter, json_string_value(msg), json_dumps(want, JSON_ENCODE_ANY));
            json_decref(inner);
        }
        json_decref(back);

        /* bare value: the value itself comes back */
        back = render_and_parse(tb, ev, &r);
        ck_assert_msg(json_equal(json_object_get(back, "message"), want),
                      "iter %d: bare value differs", iter);
        ck_assert_int_eq(json_object_size(back), 3);
        json_decref(back);

        /* bare key: a string key holding the value's text (jansson cannot load U+0000 there) */
        if (!json_is_string(want) ||
            !memchr(json_string_value(want), 0, json_string_length(want))) {
            back = render_and_parse(tk, ev, &r);
            ck_assert_int_eq(json_object_size(back), 1);
            const char *k = json_object_iter_key(json_object_iter(back));
            size_t klen = json_object_iter_key_len(json_object_iter(back));
            if (json_is_string(want)) {
                ck_assert_uint_eq(klen, json_string_length(want));
                ck_assert(memcmp(k, json_string_value(want), klen) == 0);
            } else if (json_is_null(want)) {
                ck_assert_uint_eq(klen, 0);
            } else {
                json_t *inner = json_loadb(k, klen, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
                ck_assert_msg(inner && json_equal(inner, want), "iter %d: key text differs", iter);
                json_decref(inner);
            }
            json_decref(back);
        }
        json_decref(ev);
        json_decref(raw);
        json_decref(want);
    }
    fbr_render_free(&r);
    fbr_tpl_unref(&ts);
    fbr_tpl_unref(&tb);
    fbr_tpl_unref(&tk);
}
END_TEST

static int unhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* URL query and form values percent-decode back to the exact original bytes. */
START_TEST(property_url_and_form)
{
    static const struct {
        enum fbr_tpl_context ctx;
        const char *src;
        size_t prefix;
        const char *reserved; /* bytes that must not appear unencoded */
    } cases[] = {{FBR_TPL_URL, "https://h.example/p?v=${{ALERT.v}}", 22, "?&=+#/ "},
                 {FBR_TPL_URL, "https://h.example/${{ALERT.v}}", 18, "?#/ "},
                 {FBR_TPL_FORM, "v=${{ALERT.v}}", 2, "&=%/?# "}};
    rng_state = 0x2545f4914f6cdd1dull;
    for (size_t c = 0; c < FBR_ARRAY_LEN(cases); c++) {
        char err[128];
        struct fbr_tpl *t;
        ck_assert_int_eq(fbr_tpl_compile(cases[c].src, strlen(cases[c].src), cases[c].ctx, &t,
                                         err, sizeof(err)), 0);
        struct fbr_render r;
        fbr_render_init(&r);
        for (int iter = 0; iter < 1000; iter++) {
            json_t *raw, *want;
            gen_string(&raw, &want, 1, 1);
            json_t *ev = json_pack("{s:{s:O}}", "ALERT", "v", raw);
            struct fbr_tpl_scope scope = {.event = ev};
            fbr_render_reset(&r);
            ck_assert_int_eq(fbr_tpl_render(t, &scope, &r), FBR_OK);
            char *out = fbr_render_strdup(&r);
            char *dec = malloc(r.total + 1);
            size_t n = 0;
            for (size_t i = cases[c].prefix; i < r.total; i++) {
                if (out[i] == '%') {
                    ck_assert(unhex(out[i + 1]) >= 0 && unhex(out[i + 2]) >= 0);
                    dec[n++] = (char)(unhex(out[i + 1]) * 16 + unhex(out[i + 2]));
                    i += 2;
                } else {
                    ck_assert_msg(!strchr(cases[c].reserved, out[i]), "reserved byte in %s",
                                  out);
                    dec[n++] = (cases[c].ctx == FBR_TPL_FORM && out[i] == '+') ? ' ' : out[i];
                }
            }
            ck_assert_uint_eq(n, json_string_length(raw));
            ck_assert(memcmp(dec, json_string_value(raw), n) == 0);
            free(dec);
            free(out);
            json_decref(ev);
            json_decref(raw);
            json_decref(want);
        }
        fbr_render_free(&r);
        fbr_tpl_unref(&t);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("template");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, compile_error_columns, 0, FBR_ARRAY_LEN(compile_errors));
    tcase_add_loop_test(tc, render_table, 0, FBR_ARRAY_LEN(renders));
    tcase_add_loop_test(tc, content_type_map, 0, FBR_ARRAY_LEN(content_types));
    tcase_add_test(tc, rule_captures);
    tcase_add_loop_test(tc, namespaces_read, 0, FBR_ARRAY_LEN(ns_cases));
    tcase_add_test(tc, zero_copy_and_refs);
    tcase_add_test(tc, scratch_growth_keeps_slices);
    tcase_add_test(tc, property_seed_payload);
    tcase_add_test(tc, property_url_and_form);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
