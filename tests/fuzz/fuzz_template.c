/*
 * fuzz_template.c - libFuzzer target for template.c, the engine between events and delivery:
 * compiles arbitrary bytes as a template in any context and renders it against an arbitrary (or
 * a built-in) event, then checks the engine's promises: the slices add up, a second render into
 * the same buffer leaves the first one intact, a JSON template whose literal text is valid JSON
 * stays valid JSON whatever the values, a rendered URL is an absolute http(s) URL made of safe
 * bytes, and a rendered header value holds no CR, LF or NUL.
 *
 * Input: byte 0 picks the context; then the template up to the first NUL byte; the rest, when
 * it parses, is the event (else a built-in event full of awkward values is used).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/template.h"

static json_t *default_event;

static const char *default_event_text =
    "{\"ALERT\": {\"a\": \"x\\\"y\\\\z\\n\\u0000\", \"b\": 12, \"c\": -1.5e300, \"d\": true,"
    " \"e\": null, \"f\": {\"g\": [1, \"h\", {\"i\": \"\\ud83d\\ude00\"}]},"
    " \"host\": \"h.example\","
    " \"url\": \"https://h.example/p?q=1\", \"crlf\": \"a\\r\\nb\", \"sp\": \"a b/c?d&e=f#g%\"},"
    " \"STATE\": {\"ALERT_COUNT\": 3, \"CURRENT_STATE\": \"CRITICAL\"},"
    " \"PAGE\": {\"METHODS\": [{\"TYPE\": \"sms\"}]}, \"CHAT\": {\"TEXT\": \"\\u00e9\"}}";

static char *flatten(const struct fbr_render *r, size_t from_iov, size_t *len)
{
    size_t n = 0;
    for (size_t i = from_iov; i < r->niov; i++)
        n += r->iov[i].iov_len;
    char *s = malloc(n + 1);
    size_t k = 0;
    for (size_t i = from_iov; i < r->niov; i++) {
        memcpy(s + k, r->iov[i].iov_base, r->iov[i].iov_len);
        k += r->iov[i].iov_len;
    }
    s[n] = '\0';
    *len = n;
    return s;
}

static int parses(const char *s, size_t n, int *ignorable)
{
    json_error_t e;
    json_t *j = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (j) {
        json_decref(j);
        return 1;
    }
    /* limits of jansson's parser, not errors of the renderer */
    *ignorable = strstr(e.text, "NUL byte in object key") || strstr(e.text, "depth") ||
                 strstr(e.text, "overflow");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!default_event)
        default_event = json_loads(default_event_text, JSON_ALLOW_NUL, NULL);
    enum fbr_tpl_context ctx = (enum fbr_tpl_context)(data[0] % 6);
    const char *src = (const char *)data + 1;
    size_t rest = size - 1;
    const char *nul = memchr(src, 0, rest);
    size_t tlen = nul ? (size_t)(nul - src) : rest;

    char err[128];
    struct fbr_tpl *t;
    if (fbr_tpl_compile(src, tlen, ctx, &t, err, sizeof(err)) != FBR_OK) {
        if (t || strncmp(err, "column ", 7) != 0)
            abort();
        return 0;
    }

    json_t *ev = NULL;
    if (nul)
        ev = json_loadb(nul + 1, rest - tlen - 1, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!ev)
        ev = json_incref(default_event);
    json_t *alert = json_object_get(ev, "ALERT");
    struct fbr_slice caps[4] = {{"zero", 4}, {src, tlen}, {NULL, 0}, {"\r\n\"", 3}};
    struct fbr_tpl_scope scope = {.event = ev, .alert = alert ? alert : ev, .captures = caps,
                                  .ncaptures = 4};
    struct fbr_render r, empty;
    fbr_render_init(&r);
    fbr_render_init(&empty);

    int rc = fbr_tpl_render(t, &scope, &r);
    if (rc == FBR_OK) {
        size_t n1, n2, sum = 0;
        for (size_t i = 0; i < r.niov; i++)
            sum += r.iov[i].iov_len;
        if (sum != r.total)
            abort();
        size_t first_niov = r.niov;
        char *one = flatten(&r, 0, &n1);
        /* a second render appends without disturbing the first (scratch may move) */
        if (fbr_tpl_render(t, &scope, &r) != FBR_OK)
            abort();
        char *again = flatten(&r, 0, &n2);
        char *second = flatten(&r, first_niov, &n2);
        if (n2 != n1 || memcmp(second, one, n1) != 0 || memcmp(again, one, n1) != 0)
            abort();

        if (ctx == FBR_TPL_JSON) {
            struct fbr_tpl_scope none = {0};
            size_t ne;
            int ign = 0;
            if (fbr_tpl_render(t, &none, &empty) != FBR_OK)
                abort();
            char *skeleton = flatten(&empty, 0, &ne);
            if (parses(skeleton, ne, &ign) && !parses(one, n1, &ign) && !ign)
                abort();
            free(skeleton);
        } else if (ctx == FBR_TPL_URL) {
            if (strncasecmp(one, "http://", 7) != 0 && strncasecmp(one, "https://", 8) != 0)
                abort();
            for (size_t i = 0; i < n1; i++)
                if ((unsigned char)one[i] <= 0x20 || (unsigned char)one[i] >= 0x7f)
                    abort();
        } else if (ctx == FBR_TPL_HEADER) {
            for (size_t i = 0; i < n1; i++)
                if (one[i] == '\r' || one[i] == '\n' || one[i] == '\0')
                    abort();
        }
        free(one);
        free(again);
        free(second);
    } else if (rc == FBR_SKIP) {
        if (ctx != FBR_TPL_URL || !r.missing)
            abort();
    } else if (rc == FBR_INVALID) {
        if (!r.error || (ctx != FBR_TPL_URL && ctx != FBR_TPL_HEADER))
            abort();
    } else {
        abort();
    }

    fbr_render_free(&r);
    fbr_render_free(&empty);
    json_decref(ev);
    fbr_tpl_unref(&t);
    return 0;
}
