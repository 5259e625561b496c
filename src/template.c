/*
 * template.c - the zero-copy template engine between events and delivery.  fbr_tpl_compile()
 * turns a `${{NS.FIELD}}` template into segments once, at configuration load: literal slices of
 * a private copy of the source, and variable references whose dotted paths are pre-split and
 * whose escaping mode is fixed from where the variable stands (JSON string / bare value / key, URL
 * path / query, form, header, text).  fbr_tpl_render() resolves every distinct variable once, then
 * appends iovec slices to a reusable fbr_render: literals point into the template, clean string
 * values point into the event's jansson storage, and only bytes that escaping changes (or that a
 * number or object has to be formatted into) are written to the render's scratch buffer.
 */
#include "firebridge/template.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "firebridge/url.h"

/* ---------------------------------------------------------------------------------------------
 * Compiled form
 */

/* A variable's namespace: one of enum fbr_tpl_ns, or one of these two of RULE templates. */
enum tpl_ns {
    NS_RULE_FIELD = FBR_NS_COUNT, /* RULE: ${{field}}, a path into scope->alert */
    NS_RULE_CAPTURE,              /* RULE: ${{\N}} */
};

static const struct {
    const char *name;
    size_t len;
} ns_names[] = {
#define FBR_X(name) {#name, sizeof(#name) - 1},
    FBR_TPL_NS_MAP(FBR_X)
#undef FBR_X
};

/* How a value is written, decided at compile time. */
enum tpl_esc {
    ESC_RAW,       /* TEXT and RULE: as is */
    ESC_JSON_STR,  /* inside a JSON string literal: escaped, no quotes */
    ESC_JSON_VAL,  /* bare JSON value: typed JSON, strings quoted */
    ESC_JSON_KEY,  /* bare object key: always a quoted string */
    ESC_URL_HOST,  /* scheme or authority: only unreserved bytes stay (no '@', ':' or '/') */
    ESC_URL_PATH,  /* percent-encoded for a path segment */
    ESC_URL_QUERY, /* percent-encoded for a query component or the fragment */
    ESC_URL_WHOLE, /* the URL is this one variable: taken whole, validated afterwards */
    ESC_FORM,      /* application/x-www-form-urlencoded */
    ESC_HEADER,    /* as is, but CR, LF and NUL fail the render */
};

struct tpl_path {
    const char *key; /* into tpl->src */
    size_t len;
    long index;      /* >= 0 when the segment is all digits (array index), else -1 */
};

struct tpl_var {
    uint8_t ns;
    uint8_t capture;    /* 1..9 for NS_RULE_CAPTURE */
    uint32_t first, npath;
    const char *name;   /* the text between the braces, for r->missing; into tpl->src */
    size_t name_len;
};

struct tpl_seg {
    const char *ptr; /* literal: into tpl->src */
    size_t len;
    int32_t var;     /* -1 for a literal, else index into vars */
    uint8_t esc;
};

struct fbr_tpl {
    unsigned refs;
    enum fbr_tpl_context ctx;
    char *src;
    size_t len;
    struct tpl_seg *segs;
    size_t nsegs;
    struct tpl_var *vars;
    size_t nvars;
    struct tpl_path *path;
    size_t npath;
    int url_static_ok; /* URL whose validity the literals alone guarantee */
};

static uint8_t pct_keep[256]; /* PCT_* bits of the encodings that keep a byte as it is */
static int tables_ready;
static void tables_init(void);
static int url_valid_statically(const struct fbr_tpl *t);

/* ---------------------------------------------------------------------------------------------
 * Content types
 */

enum fbr_tpl_context fbr_tpl_context_for_content_type(const char *ct)
{
    if (!ct)
        return FBR_TPL_TEXT;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
        return FBR_TPL_JSON;
    if (n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0 && memchr(ct, '/', n))
        return FBR_TPL_JSON;
    if (n == 33 && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0)
        return FBR_TPL_FORM;
    return FBR_TPL_TEXT;
}

/* ---------------------------------------------------------------------------------------------
 * Compiler
 */

struct compiler {
    struct fbr_tpl *t;
    size_t segs_cap, vars_cap, path_cap;
    /* JSON position tracking over the literal text */
    int in_string, escape_next;
    int expect_key;      /* in an object, before the key's ':' */
    unsigned depth;
    uint8_t stack[64];   /* 1 = object, 0 = array; deeper nesting is treated as values */
    /* URL component tracking */
    enum { URL_SCHEME, URL_AUTHORITY, URL_PATH, URL_QUERY } url_part;
    char *err;
    size_t errlen;
};

static int compile_error(struct compiler *c, size_t off, const char *reason, const char *name,
                         size_t name_len)
{
    if (c->err && c->errlen) {
        if (name)
            snprintf(c->err, c->errlen, "column %zu: %s '%.*s'", off + 1, reason,
                     (int)(name_len > 64 ? 64 : name_len), name);
        else
            snprintf(c->err, c->errlen, "column %zu: %s", off + 1, reason);
    }
    return FBR_INVALID;
}

static void scan_json_literal(struct compiler *c, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (c->in_string) {
            if (c->escape_next)
                c->escape_next = 0;
            else if (ch == '\\')
                c->escape_next = 1;
            else if (ch == '"')
                c->in_string = 0;
            continue;
        }
        switch (ch) {
        case '"':
            c->in_string = 1;
            break;
        case '{':
            if (c->depth < sizeof(c->stack))
                c->stack[c->depth] = 1;
            c->depth++;
            c->expect_key = 1;
            break;
        case '[':
            if (c->depth < sizeof(c->stack))
                c->stack[c->depth] = 0;
            c->depth++;
            c->expect_key = 0;
            break;
        case '}':
        case ']':
            if (c->depth)
                c->depth--;
            c->expect_key = 0;
            break;
        case ',':
            c->expect_key = c->depth && c->depth <= sizeof(c->stack) && c->stack[c->depth - 1];
            break;
        case ':':
            c->expect_key = 0;
            break;
        default:
            break;
        }
    }
}

static void scan_url_literal(struct compiler *c, const char *p, size_t n)
{
    for (size_t i = 0; i < n && c->url_part != URL_QUERY; i++) {
        if (p[i] == '?' || p[i] == '#')
            c->url_part = URL_QUERY;
        else if (c->url_part == URL_SCHEME && p[i] == ':' && i + 2 < n && p[i + 1] == '/' &&
                 p[i + 2] == '/')
            c->url_part = URL_AUTHORITY, i += 2;
        else if (p[i] == '/' && c->url_part != URL_PATH)
            c->url_part = URL_PATH;
    }
}

static uint8_t esc_for_position(struct compiler *c)
{
    switch (c->t->ctx) {
    case FBR_TPL_JSON:
        if (c->in_string)
            return ESC_JSON_STR;
        return c->expect_key ? ESC_JSON_KEY : ESC_JSON_VAL;
    case FBR_TPL_URL:
        return c->url_part == URL_QUERY  ? ESC_URL_QUERY
               : c->url_part == URL_PATH ? ESC_URL_PATH
                                         : ESC_URL_HOST;
    case FBR_TPL_FORM:
        return ESC_FORM;
    case FBR_TPL_HEADER:
        return ESC_HEADER;
    case FBR_TPL_TEXT:
    case FBR_TPL_RULE:
    default:
        return ESC_RAW;
    }
}

static void push_seg(struct compiler *c, struct tpl_seg s)
{
    struct fbr_tpl *t = c->t;
    if (t->nsegs == c->segs_cap) {
        c->segs_cap = c->segs_cap ? 2 * c->segs_cap : 8;
        t->segs = fbr_xrealloc(t->segs, c->segs_cap * sizeof(*t->segs));
    }
    t->segs[t->nsegs++] = s;
}

static void add_literal(struct compiler *c, const char *p, size_t n)
{
    if (n == 0)
        return;
    if (c->t->ctx == FBR_TPL_JSON)
        scan_json_literal(c, p, n);
    else if (c->t->ctx == FBR_TPL_URL)
        scan_url_literal(c, p, n);
    struct fbr_tpl *t = c->t;
    if (t->nsegs && t->segs[t->nsegs - 1].var < 0 &&
        t->segs[t->nsegs - 1].ptr + t->segs[t->nsegs - 1].len == p) {
        t->segs[t->nsegs - 1].len += n;
        return;
    }
    push_seg(c, (struct tpl_seg){p, n, -1, 0});
}

static int name_char_ok(unsigned char ch)
{
    return ch > 0x20 && ch != 0x7f && ch != '{' && ch != '}' && ch != '\\' && ch != '$';
}

/* Parses the text between `${{` and `}}` at src[off, off+n) into a variable; returns its index. */
static int parse_var(struct compiler *c, size_t off, size_t n, int32_t *out)
{
    struct fbr_tpl *t = c->t;
    const char *s = t->src + off;
    size_t dollar = off - 3;
    /* surrounding blanks are tolerated */
    while (n && (*s == ' ' || *s == '\t')) {
        s++, off++, n--;
    }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 0)
        return compile_error(c, dollar, "empty variable name", NULL, 0);

    struct tpl_var v = {.name = s, .name_len = n};
    if (s[0] == '\\') {
        if (t->ctx != FBR_TPL_RULE)
            return compile_error(c, off, "capture groups are only allowed in rule templates",
                                 s, n);
        if (n != 2 || s[1] < '1' || s[1] > '9')
            return compile_error(c, off, "bad capture index (\\1..\\9)", s, n);
        v.ns = NS_RULE_CAPTURE;
        v.capture = (uint8_t)(s[1] - '0');
    } else {
        size_t i = 0;
        if (t->ctx != FBR_TPL_RULE) {
            size_t dot = 0;
            while (dot < n && s[dot] != '.')
                dot++;
            int ns = -1;
            for (size_t k = 0; k < FBR_ARRAY_LEN(ns_names); k++)
                if (ns_names[k].len == dot && memcmp(ns_names[k].name, s, dot) == 0)
                    ns = (int)k;
            if (dot == 0)
                return compile_error(c, off, "empty namespace", NULL, 0);
            if (ns < 0)
                return compile_error(c, off, "unknown namespace", s, dot);
            v.ns = (uint8_t)ns;
            if (dot == n) {
                i = n; /* the whole namespace object */
            } else {
                i = dot + 1;
                if (i == n)
                    return compile_error(c, off + i, "empty field name", NULL, 0);
            }
        } else {
            v.ns = NS_RULE_FIELD;
            size_t dot = 0;
            while (dot < n && s[dot] != '.')
                dot++;
            for (size_t k = 0; k < FBR_ARRAY_LEN(ns_names); k++)
                if (dot < n && ns_names[k].len == dot && memcmp(ns_names[k].name, s, dot) == 0)
                    return compile_error(c, off, "namespace not allowed in a rule template "
                                                 "(use ${{field}})", s, dot);
        }
        v.first = (uint32_t)t->npath;
        while (i < n) {
            size_t j = i;
            while (j < n && s[j] != '.') {
                if (!name_char_ok((unsigned char)s[j]))
                    return compile_error(c, off + j, "invalid character in variable name",
                                         s + j, 1);
                j++;
            }
            if (j == i || (j + 1 == n && s[j] == '.'))
                return compile_error(c, off + (j == i ? i : j + 1), "empty field name", NULL,
                                     0);
            if (t->npath == c->path_cap) {
                c->path_cap = c->path_cap ? 2 * c->path_cap : 8;
                t->path = fbr_xrealloc(t->path, c->path_cap * sizeof(*t->path));
            }
            long index = -1;
            if (j - i <= 9) {
                index = 0;
                for (size_t k = i; k < j && index >= 0; k++)
                    index = (s[k] >= '0' && s[k] <= '9') ? index * 10 + (s[k] - '0') : -1;
            }
            t->path[t->npath++] = (struct tpl_path){s + i, j - i, index};
            v.npath++;
            i = j + 1;
        }
    }

    /* one resolution per distinct variable per render */
    for (size_t k = 0; k < t->nvars; k++) {
        struct tpl_var *w = &t->vars[k];
        if (w->ns == v.ns && w->capture == v.capture && w->npath == v.npath) {
            int same = 1;
            for (uint32_t p = 0; p < v.npath && same; p++)
                same = t->path[w->first + p].len == t->path[v.first + p].len &&
                       memcmp(t->path[w->first + p].key, t->path[v.first + p].key,
                              t->path[v.first + p].len) == 0;
            if (same) {
                t->npath -= v.npath;
                *out = (int32_t)k;
                return FBR_OK;
            }
        }
    }
    if (t->nvars == c->vars_cap) {
        c->vars_cap = c->vars_cap ? 2 * c->vars_cap : 4;
        t->vars = fbr_xrealloc(t->vars, c->vars_cap * sizeof(*t->vars));
    }
    t->vars[t->nvars] = v;
    *out = (int32_t)t->nvars++;
    return FBR_OK;
}

int fbr_tpl_compile(const char *src, size_t len, enum fbr_tpl_context ctx, struct fbr_tpl **out,
                    char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!tables_ready)
        tables_init();
    struct fbr_tpl *t = fbr_xcalloc(1, sizeof(*t));
    t->refs = 1;
    t->ctx = ctx;
    t->len = len;
    t->src = fbr_xmalloc(len + 1);
    if (len)
        memcpy(t->src, src, len);
    t->src[len] = '\0';

    struct compiler c = {.t = t, .err = err, .errlen = errlen};
    const char *s = t->src;
    size_t lit = 0, i = 0;
    while (i + 2 < len) {
        if (s[i] != '$' || s[i + 1] != '{' || s[i + 2] != '{') {
            i++;
            continue;
        }
        size_t start = i + 3, end = start;
        while (end < len && s[end] != '}')
            end++;
        if (end + 1 >= len || s[end + 1] != '}') {
            if (end < len && end + 1 < len)
                compile_error(&c, end, "expected '}}'", NULL, 0);
            else
                compile_error(&c, i, "unterminated '${{'", NULL, 0);
            goto fail;
        }
        if (ctx == FBR_TPL_HEADER) {
            for (size_t k = lit; k < i; k++)
                if (s[k] == '\r' || s[k] == '\n' || s[k] == '\0') {
                    compile_error(&c, k, "CR, LF or NUL in a header value", NULL, 0);
                    goto fail;
                }
        }
        add_literal(&c, s + lit, i - lit);
        int32_t var = -1;
        if (parse_var(&c, start, end - start, &var) != FBR_OK)
            goto fail;
        push_seg(&c, (struct tpl_seg){NULL, 0, var, esc_for_position(&c)});
        i = lit = end + 2;
    }
    if (ctx == FBR_TPL_HEADER) {
        for (size_t k = lit; k < len; k++)
            if (s[k] == '\r' || s[k] == '\n' || s[k] == '\0') {
                compile_error(&c, k, "CR, LF or NUL in a header value", NULL, 0);
                goto fail;
            }
    }
    add_literal(&c, s + lit, len - lit);
    if (ctx == FBR_TPL_URL && t->nsegs == 1 && t->segs[0].var >= 0)
        t->segs[0].esc = ESC_URL_WHOLE;
    if (ctx == FBR_TPL_URL)
        t->url_static_ok = url_valid_statically(t);
    *out = t;
    return FBR_OK;

fail:
    fbr_tpl_unref(&t);
    return FBR_INVALID;
}

unsigned fbr_tpl_namespaces(const struct fbr_tpl *tpl)
{
    unsigned bits = 0;
    for (size_t i = 0; tpl && i < tpl->nvars; i++) {
        if (tpl->vars[i].ns < FBR_NS_COUNT)
            bits |= FBR_NS_BIT(tpl->vars[i].ns);
        else if (tpl->vars[i].ns == NS_RULE_FIELD)
            bits |= FBR_NS_BIT(FBR_NS_ALERT);
    }
    return bits;
}

unsigned fbr_tpl_max_capture(const struct fbr_tpl *tpl)
{
    unsigned max = 0;
    for (size_t i = 0; tpl && i < tpl->nvars; i++)
        if (tpl->vars[i].ns == NS_RULE_CAPTURE && tpl->vars[i].capture > max)
            max = tpl->vars[i].capture;
    return max;
}

struct fbr_tpl *fbr_tpl_ref(struct fbr_tpl *tpl)
{
    if (tpl)
        tpl->refs++;
    return tpl;
}

void fbr_tpl_unref(struct fbr_tpl **tplp)
{
    struct fbr_tpl *t = *tplp;
    *tplp = NULL;
    if (!t || --t->refs > 0)
        return;
    free(t->segs);
    free(t->vars);
    free(t->path);
    free(t->src);
    free(t);
}

const char *fbr_tpl_source(const struct fbr_tpl *tpl, size_t *len)
{
    if (len)
        *len = tpl->len;
    return tpl->src;
}

int fbr_tpl_has_variables(const struct fbr_tpl *tpl)
{
    return tpl->nvars > 0;
}

/* ---------------------------------------------------------------------------------------------
 * Render buffer.  Scratch is one contiguous block; when it has to grow, the slices that point
 * into the old block are moved to the new one before the old block is freed, so earlier slices
 * stay valid.  Growth happens only until the capacity fits the largest render seen.
 */

struct render_priv {
    char *buf;
    size_t len, cap;
    const json_t **vals; /* per-render variable values, for templates with many variables */
    size_t vals_cap;
    size_t tail_iov;     /* index + 1 of the slice that ends at buf + len, 0 if none */
};

void fbr_render_init(struct fbr_render *r)
{
    memset(r, 0, sizeof(*r));
}

static struct render_priv *priv_of(struct fbr_render *r)
{
    if (!r->priv)
        r->priv = fbr_xcalloc(1, sizeof(struct render_priv));
    return r->priv;
}

void fbr_render_reset(struct fbr_render *r)
{
    r->niov = 0;
    r->total = 0;
    r->missing = NULL;
    r->missing_len = 0;
    r->error = NULL;
    struct render_priv *p = r->priv;
    if (p) {
        p->len = 0;
        p->tail_iov = 0;
    }
}

void fbr_render_free(struct fbr_render *r)
{
    struct render_priv *p = r->priv;
    if (p) {
        free(p->buf);
        free(p->vals);
        free(p);
    }
    free(r->iov);
    memset(r, 0, sizeof(*r));
}

/*
 * Makes room for n bytes past the committed length; returns where they start.  May move the
 * block, keeping its whole content (committed and uncommitted) and fixing up the slices.
 */
static char *scratch_reserve(struct fbr_render *r, struct render_priv *p, size_t n)
{
    if (p->cap - p->len >= n)
        return p->buf + p->len;
    size_t cap = p->cap ? p->cap : 256;
    while (cap - p->len < n)
        cap *= 2;
    char *nb = fbr_xmalloc(cap);
    if (p->cap) /* uncommitted bytes past len (a value being formatted) move too */
        memcpy(nb, p->buf, p->cap);
    uintptr_t lo = (uintptr_t)p->buf, hi = lo + p->len;
    for (size_t i = 0; i < r->niov; i++) {
        uintptr_t b = (uintptr_t)r->iov[i].iov_base;
        if (p->buf && b >= lo && b < hi)
            r->iov[i].iov_base = nb + (b - lo);
    }
    free(p->buf);
    p->buf = nb;
    p->cap = cap;
    return p->buf + p->len;
}

static void push_iov(struct fbr_render *r, const void *ptr, size_t n)
{
    if (n == 0)
        return;
    if (r->niov == r->iov_cap) {
        r->iov_cap = r->iov_cap ? 2 * r->iov_cap : 16;
        r->iov = fbr_xrealloc(r->iov, r->iov_cap * sizeof(*r->iov));
    }
    r->iov[r->niov].iov_base = (void *)(uintptr_t)ptr;
    r->iov[r->niov].iov_len = n;
    r->niov++;
    r->total += n;
}

/* Commits n bytes written at the scratch tail as a slice, merging with a preceding tail slice. */
static void scratch_commit(struct fbr_render *r, struct render_priv *p, size_t n)
{
    if (n == 0)
        return;
    if (p->tail_iov && p->tail_iov == r->niov) {
        r->iov[r->niov - 1].iov_len += n;
        r->total += n;
    } else {
        push_iov(r, p->buf + p->len, n);
        p->tail_iov = r->niov;
    }
    p->len += n;
}

static void scratch_put(struct fbr_render *r, struct render_priv *p, const char *s, size_t n)
{
    if (n == 0) /* nothing to reserve; memcpy must not see the NULL an empty reserve may give */
        return;
    char *d = scratch_reserve(r, p, n);
    memcpy(d, s, n);
    scratch_commit(r, p, n);
}

void fbr_render_set_copy(struct fbr_render *r, const char *src, size_t len)
{
    fbr_render_reset(r);
    struct render_priv *p = priv_of(r);
    scratch_put(r, p, src, len);
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
    char *s = fbr_xmalloc(r->total + 1);
    fbr_render_copy(r, s);
    s[r->total] = '\0';
    return s;
}

/* ---------------------------------------------------------------------------------------------
 * Escapers.  Each has a scan that says whether the bytes can be referenced as they are, and a
 * writer into a destination sized by the worst case (6 bytes per input byte for JSON, 3 for
 * percent-encoding).
 */

static const char hexdig_up[] = "0123456789ABCDEF";

/* Percent-encoding: which bytes stay as they are. */
enum { PCT_PATH = 1, PCT_QUERY = 2, PCT_FORM = 4 };

static void tables_init(void)
{
    for (int c = 0; c < 256; c++) {
        uint8_t m = 0;
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (alnum || c == '-' || c == '.' || c == '_' || c == '~')
            m |= PCT_PATH | PCT_QUERY;
        if (c && strchr("!$&'()*+,;=:@", c))
            m |= PCT_PATH;
        if (alnum || c == '*' || c == '-' || c == '.' || c == '_')
            m |= PCT_FORM;
        pct_keep[c] = m;
    }
    tables_ready = 1;
}

static int pct_clean(const char *src, size_t n, uint8_t mask)
{
    const unsigned char *s = (const unsigned char *)src;
    for (size_t i = 0; i < n; i++)
        if (!(pct_keep[s[i]] & mask))
            return 0;
    return 1;
}

static size_t pct_escape(char *d, const char *src, size_t n, uint8_t mask)
{
    const unsigned char *s = (const unsigned char *)src;
    char *d0 = d;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (pct_keep[c] & mask) {
            *d++ = (char)c;
        } else if (c == ' ' && mask == PCT_FORM) {
            *d++ = '+';
        } else {
            *d++ = '%';
            *d++ = hexdig_up[c >> 4];
            *d++ = hexdig_up[c & 15];
        }
    }
    return (size_t)(d - d0);
}

/* ---------------------------------------------------------------------------------------------
 * Value rendering
 */

static const char lit_quote[] = "\"";
static const char lit_null[] = "null";
static const char lit_true[] = "true";
static const char lit_false[] = "false";

static size_t fmt_integer(char *d, json_int_t v)
{
    char tmp[24];
    size_t n = 0;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t k = 0;
    if (v < 0)
        d[k++] = '-';
    while (n)
        d[k++] = tmp[--n];
    return k;
}

static size_t fmt_real(char *d, double v)
{
    int n = snprintf(d, 32, "%.17g", v);
    if (n < 0)
        n = 0;
    if (!strpbrk(d, ".eEni"))
        d[n++] = '.', d[n++] = '0';
    return (size_t)n;
}

/* Serializes v as compact JSON into the scratch tail (not committed); returns the length. */
static size_t serialize(struct fbr_render *r, struct render_priv *p, const json_t *v, size_t at,
                        unsigned depth);

static size_t ser_put(struct fbr_render *r, struct render_priv *p, size_t at, const char *s,
                      size_t n)
{
    char *d = scratch_reserve(r, p, at + n);
    memcpy(d + at, s, n);
    return n;
}

static size_t ser_string(struct fbr_render *r, struct render_priv *p, size_t at, const char *s,
                         size_t n)
{
    char *d = scratch_reserve(r, p, at + 6 * n + 2);
    size_t k = 0;
    d[at + k++] = '"';
    k += fbr_json_escape(d + at + k, s, n);
    d[at + k++] = '"';
    return k;
}

static size_t serialize(struct fbr_render *r, struct render_priv *p, const json_t *v, size_t at,
                        unsigned depth)
{
    size_t k = 0;
    char *d;
    if (depth > 512)
        return ser_put(r, p, at, lit_null, 4);
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        size_t key_len;
        json_t *val;
        int first = 1;
        k += ser_put(r, p, at, "{", 1);
        json_object_keylen_foreach ((json_t *)v, key, key_len, val) {
            if (!first)
                k += ser_put(r, p, at + k, ",", 1);
            first = 0;
            k += ser_string(r, p, at + k, key, key_len);
            k += ser_put(r, p, at + k, ":", 1);
            k += serialize(r, p, val, at + k, depth + 1);
        }
        k += ser_put(r, p, at + k, "}", 1);
        return k;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *val;
        k += ser_put(r, p, at, "[", 1);
        json_array_foreach ((json_t *)v, i, val) {
            if (i)
                k += ser_put(r, p, at + k, ",", 1);
            k += serialize(r, p, val, at + k, depth + 1);
        }
        k += ser_put(r, p, at + k, "]", 1);
        return k;
    }
    case JSON_STRING:
        return ser_string(r, p, at, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        d = scratch_reserve(r, p, at + 24);
        return fmt_integer(d + at, json_integer_value(v));
    case JSON_REAL:
        d = scratch_reserve(r, p, at + 40);
        return fmt_real(d + at, json_real_value(v));
    case JSON_TRUE:
        return ser_put(r, p, at, lit_true, 4);
    case JSON_FALSE:
        return ser_put(r, p, at, lit_false, 5);
    case JSON_NULL:
    default:
        return ser_put(r, p, at, lit_null, 4);
    }
}

/*
 * Emits n bytes of text for a context, referencing them when escaping leaves them unchanged.
 * `in_scratch` says the bytes sit uncommitted at the scratch tail (formatted numbers, serialized
 * objects); they are then escaped in place or committed.  Returns FBR_OK or FBR_INVALID.
 */
static int emit_text(struct fbr_render *r, struct render_priv *p, uint8_t esc, const char *s,
                     size_t n, int in_scratch)
{
    size_t clean = 0; /* JSON: leading bytes that need no escaping */
    uint8_t mask = 0;
    int quoted = 0;
    switch (esc) {
    case ESC_JSON_STR:
        clean = fbr_json_clean_prefix(s, n);
        if (clean == n)
            goto as_is;
        break;
    case ESC_JSON_VAL:
    case ESC_JSON_KEY:
        quoted = 1;
        clean = fbr_json_clean_prefix(s, n);
        if (clean == n) {
            if (in_scratch) {
                /* quote around the formatted text: shift it right by one */
                char *d = scratch_reserve(r, p, n + 2);
                memmove(d + 1, d, n);
                d[0] = '"';
                d[n + 1] = '"';
                scratch_commit(r, p, n + 2);
            } else {
                push_iov(r, lit_quote, 1);
                push_iov(r, s, n);
                push_iov(r, lit_quote, 1);
            }
            return FBR_OK;
        }
        break;
    case ESC_URL_PATH:
        mask = PCT_PATH;
        goto pct;
    case ESC_URL_HOST:
    case ESC_URL_QUERY:
        mask = PCT_QUERY;
        goto pct;
    case ESC_FORM:
        mask = PCT_FORM;
    pct:
        if (pct_clean(s, n, mask))
            goto as_is;
        break;
    case ESC_HEADER:
        for (size_t i = 0; i < n; i++)
            if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') {
                r->error = "header value contains CR, LF or NUL (header injection)";
                return FBR_INVALID;
            }
        goto as_is;
    case ESC_RAW:
    case ESC_URL_WHOLE:
    default:
        goto as_is;
    }

    /*
     * Escaping changes the bytes.  A clean JSON prefix of an event string is still referenced
     * in place; the rest is escaped into scratch (after the source when that is scratch too).
     */
    {
        size_t gap = 0;
        const char *src;
        if (in_scratch) {
            gap = n;
            clean = 0;
        } else if (clean) {
            if (quoted)
                push_iov(r, lit_quote, 1);
            push_iov(r, s, clean);
        }
        size_t m = n - clean;
        size_t worst = mask ? 3 * m : 6 * m + 2;
        char *d = scratch_reserve(r, p, gap + worst);
        src = in_scratch ? p->buf + p->len : s + clean;
        char *out = d + gap;
        size_t k = 0;
        if (mask) {
            k = pct_escape(out, src, m, mask);
        } else {
            if (quoted && !clean)
                out[k++] = '"';
            k += fbr_json_escape(out + k, src, m);
            if (quoted)
                out[k++] = '"';
        }
        if (gap)
            memmove(d, out, k);
        scratch_commit(r, p, k);
        return FBR_OK;
    }

as_is:
    if (in_scratch)
        scratch_commit(r, p, n);
    else
        push_iov(r, s, n);
    return FBR_OK;
}

static int emit_value(struct fbr_render *r, struct render_priv *p, uint8_t esc, const json_t *v)
{
    char *d;
    size_t n;
    switch (json_typeof(v)) {
    case JSON_STRING:
        return emit_text(r, p, esc, json_string_value(v), json_string_length(v), 0);
    case JSON_INTEGER:
        d = scratch_reserve(r, p, 24);
        n = fmt_integer(d, json_integer_value(v));
        if (esc == ESC_JSON_VAL) {
            scratch_commit(r, p, n);
            return FBR_OK;
        }
        return emit_text(r, p, esc, d, n, 1);
    case JSON_REAL:
        d = scratch_reserve(r, p, 40);
        n = fmt_real(d, json_real_value(v));
        if (esc == ESC_JSON_VAL) {
            scratch_commit(r, p, n);
            return FBR_OK;
        }
        return emit_text(r, p, esc, d, n, 1);
    case JSON_TRUE:
        if (esc == ESC_JSON_VAL) {
            push_iov(r, lit_true, 4);
            return FBR_OK;
        }
        return emit_text(r, p, esc, lit_true, 4, 0);
    case JSON_FALSE:
        if (esc == ESC_JSON_VAL) {
            push_iov(r, lit_false, 5);
            return FBR_OK;
        }
        return emit_text(r, p, esc, lit_false, 5, 0);
    case JSON_NULL:
        if (esc == ESC_JSON_VAL)
            push_iov(r, lit_null, 4);
        else if (esc == ESC_JSON_KEY)
            push_iov(r, "\"\"", 2);
        return FBR_OK;
    case JSON_OBJECT:
    case JSON_ARRAY:
    default:
        n = serialize(r, p, v, 0, 0);
        if (esc == ESC_JSON_VAL) {
            scratch_commit(r, p, n);
            return FBR_OK;
        }
        return emit_text(r, p, esc, p->buf + p->len, n, 1);
    }
}

/* Namespace objects of the event, looked up at most once per render. */
struct ns_cache {
    const json_t *obj[FBR_NS_COUNT];
    unsigned have;
};

static const json_t *resolve(const struct fbr_tpl *t, const struct tpl_var *v,
                             const struct fbr_tpl_scope *scope, struct ns_cache *nc)
{
    const json_t *cur;
    if (v->ns == NS_RULE_FIELD) {
        cur = scope->alert;
    } else if (nc->have & (1u << v->ns)) {
        cur = nc->obj[v->ns];
    } else {
        cur = scope->event ? json_object_getn(scope->event, ns_names[v->ns].name,
                                              ns_names[v->ns].len)
                           : NULL;
        nc->obj[v->ns] = cur;
        nc->have |= 1u << v->ns;
    }
    for (uint32_t i = 0; cur && i < v->npath; i++) {
        const struct tpl_path *seg = &t->path[v->first + i];
        if (json_is_object(cur))
            cur = json_object_getn(cur, seg->key, seg->len);
        else if (json_is_array(cur) && seg->index >= 0)
            cur = json_array_get(cur, (size_t)seg->index);
        else
            cur = NULL;
    }
    return cur;
}

const char *fbr_tpl_url_never_valid(const struct fbr_tpl *t)
{
    const char *why = NULL;
    if (!t || t->ctx != FBR_TPL_URL)
        return NULL;
    struct fbr_url u;
    for (size_t i = 0; i < t->nsegs; i++)
        if (t->segs[i].var < 0 && !fbr_url_bytes_ok(t->segs[i].ptr, t->segs[i].len))
            return "URL contains a space, control, non-ASCII or unsafe character";
    if (t->nsegs > 0 && t->segs[0].var < 0 &&
        fbr_url_parse_head(t->segs[0].ptr, t->segs[0].len, t->nsegs == 1, &u, &why) ==
            FBR_INVALID)
        return why;
    return NULL;
}

/*
 * A URL template whose literal text already holds the scheme and the whole authority, and whose
 * literals are clean, cannot render into an invalid URL: values are percent-encoded.  Such
 * templates skip the check at render time.
 */
static int url_valid_statically(const struct fbr_tpl *t)
{
    const char *why;
    struct fbr_url u;
    if (t->nsegs == 0 || t->segs[0].var >= 0)
        return 0;
    for (size_t i = 0; i < t->nsegs; i++) {
        if (t->segs[i].var >= 0 && t->segs[i].esc == ESC_URL_WHOLE)
            return 0;
        if (t->segs[i].var < 0 &&
            !fbr_url_bytes_ok(t->segs[i].ptr, t->segs[i].len))
            return 0;
    }
    return fbr_url_parse_head(t->segs[0].ptr, t->segs[0].len, t->nsegs == 1, &u, &why) == FBR_OK;
}

/* Checks the URL rendered into iov[first..] against url.h's rules: every byte, then the scheme
 * and the authority, which must end within the first 1024 bytes. */
static int check_url(struct fbr_render *r, size_t first)
{
    char head[1024];
    size_t hn = 0, total = 0;
    for (size_t i = first; i < r->niov; i++) {
        const char *s = r->iov[i].iov_base;
        size_t n = r->iov[i].iov_len;
        if (!fbr_url_bytes_ok(s, n)) {
            r->error = "URL contains a space, control, non-ASCII or unsafe character";
            return FBR_INVALID;
        }
        size_t k = n < sizeof(head) - hn ? n : sizeof(head) - hn;
        memcpy(head + hn, s, k);
        hn += k;
        total += n;
    }
    struct fbr_url u;
    int rc = fbr_url_parse_head(head, hn, total == hn, &u, &r->error);
    if (rc == FBR_AGAIN) {
        r->error = "URL authority too long";
        rc = FBR_INVALID;
    }
    return rc;
}

#define STACK_VALS 32

int fbr_tpl_render(const struct fbr_tpl *t, const struct fbr_tpl_scope *scope,
                   struct fbr_render *r)
{
    struct render_priv *p = priv_of(r);
    const json_t *stack_vals[STACK_VALS];
    const json_t **vals = stack_vals;
    struct ns_cache nc;
    static const struct fbr_tpl_scope empty_scope;
    if (!scope)
        scope = &empty_scope;
    nc.have = 0;
    p->tail_iov = 0; /* slices of an earlier render into r are never extended */

    if (t->nvars > STACK_VALS) {
        if (p->vals_cap < t->nvars) {
            free(p->vals);
            p->vals = fbr_xmalloc(t->nvars * sizeof(*p->vals));
            p->vals_cap = t->nvars;
        }
        vals = p->vals;
    }
    for (size_t i = 0; i < t->nvars; i++) {
        const struct tpl_var *v = &t->vars[i];
        vals[i] = v->ns == NS_RULE_CAPTURE ? NULL : resolve(t, v, scope, &nc);
        if (!vals[i] && t->ctx == FBR_TPL_URL) {
            r->missing = v->name;
            r->missing_len = v->name_len;
            return FBR_SKIP;
        }
    }

    size_t first = r->niov;
    for (size_t i = 0; i < t->nsegs; i++) {
        const struct tpl_seg *s = &t->segs[i];
        if (s->var < 0) {
            push_iov(r, s->ptr, s->len);
            continue;
        }
        const struct tpl_var *v = &t->vars[s->var];
        if (v->ns == NS_RULE_CAPTURE) {
            if (v->capture < scope->ncaptures && scope->captures &&
                scope->captures[v->capture].ptr)
                push_iov(r, scope->captures[v->capture].ptr, scope->captures[v->capture].len);
            continue;
        }
        const json_t *val = vals[s->var];
        if (!val) {
            if (s->esc == ESC_JSON_VAL)
                push_iov(r, lit_null, 4);
            else if (s->esc == ESC_JSON_KEY)
                push_iov(r, "\"\"", 2);
            continue;
        }
        if (emit_value(r, p, s->esc, val) != FBR_OK)
            return FBR_INVALID;
    }
    if (t->ctx == FBR_TPL_URL && !t->url_static_ok)
        return check_url(r, first);
    return FBR_OK;
}
