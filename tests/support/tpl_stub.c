/*
 * tpl_stub.c - a minimal stand-in for src/template.c, linked into the tests and benchmarks of the
 * rules/intake modules only while the real template engine is not in the tree (see
 * src/meson.build).  It implements the template.h contract plainly (one heap copy per escaped
 * value, JSON values escaped as if inside a string); it is not the engine and is never linked
 * into the daemon.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "firebridge/template.h"

struct seg {
    int var;         /* 0 literal, 1 variable, 2 capture */
    const char *ptr; /* into src */
    size_t len;
    unsigned cap;
};

struct fbr_tpl {
    unsigned refs;
    enum fbr_tpl_context ctx;
    char *src;
    size_t len;
    struct seg *segs;
    size_t nsegs;
    int has_vars;
};

struct scratch {
    char **bufs;
    size_t n, cap;
};

static const char *const namespaces[] = {"ALERT", "STATE", "INCIDENT", "CHAT", "ONCALL", "PAGE"};

enum fbr_tpl_context fbr_tpl_context_for_content_type(const char *ct)
{
    if (!ct)
        return FBR_TPL_TEXT;
    if (strncasecmp(ct, "application/json", 16) == 0 || strstr(ct, "+json"))
        return FBR_TPL_JSON;
    if (strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0)
        return FBR_TPL_FORM;
    return FBR_TPL_TEXT;
}

int fbr_tpl_compile(const char *src, size_t len, enum fbr_tpl_context ctx, struct fbr_tpl **out,
                    char *err, size_t errlen)
{
    struct fbr_tpl *t = calloc(1, sizeof(*t));
    t->refs = 1;
    t->ctx = ctx;
    t->src = malloc(len + 1);
    memcpy(t->src, src, len);
    t->src[len] = 0;
    t->len = len;
    t->segs = calloc(len + 1, sizeof(*t->segs));
    *out = NULL;
    size_t i = 0;
    while (i < len) {
        const char *open = strstr(t->src + i, "${{");
        size_t lit_end = open ? (size_t)(open - t->src) : len;
        if (lit_end > i)
            t->segs[t->nsegs++] = (struct seg){0, t->src + i, lit_end - i, 0};
        if (!open)
            break;
        const char *name = open + 3;
        const char *close = strstr(name, "}}");
        if (!close) {
            snprintf(err, errlen, "column %zu: unterminated ${{", lit_end + 1);
            goto fail;
        }
        size_t nlen = (size_t)(close - name);
        if (nlen == 0) {
            snprintf(err, errlen, "column %zu: empty name", lit_end + 1);
            goto fail;
        }
        struct seg s = {1, name, nlen, 0};
        if (name[0] == '\\') {
            if (ctx != FBR_TPL_RULE || nlen != 2 || name[1] < '0' || name[1] > '9') {
                snprintf(err, errlen, "column %zu: bad capture index", lit_end + 1);
                goto fail;
            }
            s.var = 2;
            s.cap = (unsigned)(name[1] - '0');
        } else if (ctx != FBR_TPL_RULE) {
            int ok = 0;
            for (size_t k = 0; k < 6; k++) {
                size_t nl = strlen(namespaces[k]);
                ok |= nlen > nl + 1 && memcmp(name, namespaces[k], nl) == 0 && name[nl] == '.';
            }
            if (!ok) {
                snprintf(err, errlen, "column %zu: unknown namespace", lit_end + 1);
                goto fail;
            }
        }
        t->segs[t->nsegs++] = s;
        t->has_vars = 1;
        i = (size_t)(close - t->src) + 2;
    }
    *out = t;
    return FBR_OK;
fail:
    free(t->segs);
    free(t->src);
    free(t);
    return FBR_INVALID;
}

struct fbr_tpl *fbr_tpl_ref(struct fbr_tpl *tpl)
{
    tpl->refs++;
    return tpl;
}

void fbr_tpl_unref(struct fbr_tpl **tp)
{
    struct fbr_tpl *t = *tp;
    *tp = NULL;
    if (!t || --t->refs)
        return;
    free(t->segs);
    free(t->src);
    free(t);
}

const char *fbr_tpl_source(const struct fbr_tpl *tpl, size_t *len)
{
    *len = tpl->len;
    return tpl->src;
}

int fbr_tpl_has_variables(const struct fbr_tpl *tpl)
{
    return tpl->has_vars;
}

void fbr_render_init(struct fbr_render *r)
{
    memset(r, 0, sizeof(*r));
    r->priv = calloc(1, sizeof(struct scratch));
}

void fbr_render_reset(struct fbr_render *r)
{
    struct scratch *s = r->priv;
    for (size_t i = 0; i < s->n; i++)
        free(s->bufs[i]);
    s->n = 0;
    r->niov = 0;
    r->total = 0;
    r->missing = NULL;
    r->missing_len = 0;
    r->error = NULL;
}

void fbr_render_free(struct fbr_render *r)
{
    if (!r->priv)
        return;
    fbr_render_reset(r);
    struct scratch *s = r->priv;
    free(s->bufs);
    free(s);
    free(r->iov);
    memset(r, 0, sizeof(*r));
}

static void push(struct fbr_render *r, const char *p, size_t n)
{
    if (r->niov == r->iov_cap) {
        r->iov_cap = r->iov_cap ? r->iov_cap * 2 : 8;
        r->iov = realloc(r->iov, r->iov_cap * sizeof(*r->iov));
    }
    r->iov[r->niov++] = (struct iovec){(void *)p, n};
    r->total += n;
}

static char *keep(struct fbr_render *r, size_t n)
{
    struct scratch *s = r->priv;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->bufs = realloc(s->bufs, s->cap * sizeof(*s->bufs));
    }
    return s->bufs[s->n++] = malloc(n + 1);
}

static json_t *lookup(json_t *root, const char *name, size_t len)
{
    json_t *v = json_object_getn(root, name, len);
    if (v)
        return v;
    const char *dot = memchr(name, '.', len);
    if (!dot)
        return NULL;
    json_t *sub = json_object_getn(root, name, (size_t)(dot - name));
    if (json_is_object(sub))
        return lookup(sub, dot + 1, len - (size_t)(dot - name) - 1);
    if (json_is_array(sub)) {
        const char *rest = dot + 1;
        size_t rl = len - (size_t)(dot - name) - 1;
        const char *d2 = memchr(rest, '.', rl);
        size_t il = d2 ? (size_t)(d2 - rest) : rl;
        json_t *el = json_array_get(sub, strtoul(rest, NULL, 10));
        (void)il;
        if (!d2)
            return el;
        return json_is_object(el) ? lookup(el, d2 + 1, rl - il - 1) : NULL;
    }
    return NULL;
}

static void emit(struct fbr_render *r, enum fbr_tpl_context ctx, const char *p, size_t n)
{
    if (ctx == FBR_TPL_JSON) {
        char *o = keep(r, n * 6);
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)p[i];
            if (c == '"' || c == '\\') {
                o[k++] = '\\';
                o[k++] = (char)c;
            } else if (c < 0x20) {
                k += (size_t)sprintf(o + k, "\\u%04x", c);
            } else {
                o[k++] = (char)c;
            }
        }
        push(r, o, k);
    } else if (ctx == FBR_TPL_URL || ctx == FBR_TPL_FORM) {
        char *o = keep(r, n * 3);
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)p[i];
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                strchr("-._~", c))
                o[k++] = (char)c;
            else
                k += (size_t)sprintf(o + k, "%%%02X", c);
        }
        push(r, o, k);
    } else {
        push(r, p, n);
    }
}

int fbr_tpl_render(const struct fbr_tpl *tpl, const struct fbr_tpl_scope *scope,
                   struct fbr_render *r)
{
    size_t start = r->total;
    for (size_t i = 0; i < tpl->nsegs; i++) {
        const struct seg *s = &tpl->segs[i];
        if (s->var == 0) {
            push(r, s->ptr, s->len);
            continue;
        }
        if (s->var == 2) {
            if (s->cap < scope->ncaptures)
                emit(r, tpl->ctx, scope->captures[s->cap].ptr, scope->captures[s->cap].len);
            continue;
        }
        json_t *v = tpl->ctx == FBR_TPL_RULE ? lookup(scope->alert, s->ptr, s->len)
                                             : lookup(scope->event, s->ptr, s->len);
        if (!v || json_is_null(v)) {
            if (tpl->ctx == FBR_TPL_URL) {
                r->missing = s->ptr;
                r->missing_len = s->len;
                return FBR_SKIP;
            }
            continue;
        }
        if (json_is_string(v)) {
            const char *str = json_string_value(v);
            size_t n = json_string_length(v);
            if (tpl->ctx == FBR_TPL_HEADER && strpbrk(str, "\r\n")) {
                r->error = "header value contains CR or LF";
                return FBR_INVALID;
            }
            emit(r, tpl->ctx, str, n);
        } else {
            char *d = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            size_t n = strlen(d);
            char *o = keep(r, n);
            memcpy(o, d, n);
            free(d);
            push(r, o, n);
        }
    }
    if (tpl->ctx == FBR_TPL_URL) {
        char head[9] = {0};
        size_t k = 0;
        for (size_t i = 0; i < r->niov && k < 8; i++) {
            const char *p = r->iov[i].iov_base;
            for (size_t j = 0; j < r->iov[i].iov_len && k < 8; j++)
                head[k++] = p[j];
        }
        if (start != 0 || (strncmp(head, "http://", 7) != 0 && strncmp(head, "https://", 8) != 0)) {
            r->error = "not an absolute http(s) URL";
            return FBR_INVALID;
        }
    }
    return FBR_OK;
}

void fbr_render_set_copy(struct fbr_render *r, const char *src, size_t len)
{
    fbr_render_reset(r);
    char *o = keep(r, len);
    memcpy(o, src, len);
    push(r, o, len);
}

void fbr_render_copy(const struct fbr_render *r, char *dst)
{
    for (size_t i = 0; i < r->niov; i++) {
        memcpy(dst, r->iov[i].iov_base, r->iov[i].iov_len);
        dst += r->iov[i].iov_len;
    }
}

char *fbr_render_strdup(const struct fbr_render *r)
{
    char *s = malloc(r->total + 1);
    fbr_render_copy(r, s);
    s[r->total] = 0;
    return s;
}
