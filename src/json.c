/*
 * json.c - reads the alert bodies at the head of the data path (intake.c's REST alerts and the
 * JSON routes of server.c) into jansson trees.  jansson's own reader pulls every byte through a
 * stream callback and a saved-token buffer; this one walks the buffer directly, takes strings
 * without escapes straight from it in runs, and builds the tree with jansson's constructors, so
 * everything after the intake keeps working on ordinary json_t values.  The rules it enforces
 * are jansson 2.14's, listed in json.h.  For the intake it can also hand out one json_t for the
 * short string values that repeat from body to body (fbr_json_loadb_shared).
 */
#include "firebridge/json.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/common.h"

#define MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */

/* Short string values read before, for fbr_json_loadb_shared: a direct-mapped table by hash
 * of the text, each slot holding a reference. */
enum { SHARED_SLOTS = 128, SHARED_MAX = 12 };

struct fbr_json_strings {
    struct {
        json_t *v;
        uint32_t hash;
    } slot[SHARED_SLOTS];
};

struct fbr_json_strings *fbr_json_strings_new(void)
{
    return fbr_xcalloc(1, sizeof(struct fbr_json_strings));
}

void fbr_json_strings_free(struct fbr_json_strings **sp)
{
    struct fbr_json_strings *st = *sp;
    if (!st)
        return;
    for (size_t i = 0; i < SHARED_SLOTS; i++)
        json_decref(st->slot[i].v);
    free(st);
    *sp = NULL;
}

/* The string value s[0..n), n <= SHARED_MAX: the table's when it holds the same text, else a
 * new one that takes its slot.  A new reference, or NULL when out of memory. */
static json_t *shared_string(struct fbr_json_strings *st, const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    h ^= (uint32_t)n;
    size_t i = h & (SHARED_SLOTS - 1);
    json_t *v = st->slot[i].v;
    if (v && st->slot[i].hash == h && json_string_length(v) == n &&
        memcmp(json_string_value(v), s, n) == 0)
        return json_incref(v);
    json_t *made = json_stringn_nocheck(s, n);
    if (!made)
        return NULL;
    json_decref(v);
    st->slot[i].v = json_incref(made);
    st->slot[i].hash = h;
    return made;
}

struct reader {
    const unsigned char *start, *p, *end;
    json_error_t *err;
    struct fbr_json_strings *strings; /* may be NULL */
    unsigned depth;
    /* Decoded escaped strings and number texts.  Escaped keys stay here (stacked at
     * [0, top)) while their value is read, so the space is a stack of byte strings. */
    char *buf;
    size_t cap, top;
    int heap; /* buf was malloc'ed (otherwise it is the caller's stack array) */
};

/* Byte classes inside a string, for the byte that ends a run (fbr_json_plain_run finds it). */
enum { B_PLAIN, B_QUOTE, B_ESCAPE, B_CONTROL, B_HIGH };

static const unsigned char str_class[256] = {
    [0x00 ... 0x1f] = B_CONTROL,
    ['"'] = B_QUOTE,
    ['\\'] = B_ESCAPE,
    [0x80 ... 0xff] = B_HIGH,
};

/* What the one-character escapes stand for; 0 for the others. */
static const char unescaped[256] = {
    ['"'] = '"',  ['\\'] = '\\', ['/'] = '/',  ['b'] = '\b',
    ['f'] = '\f', ['n'] = '\n',  ['r'] = '\r', ['t'] = '\t',
};

static json_t *fail(struct reader *r, const char *what)
{
    json_error_t *e = r->err;
    if (!e || e->text[0])
        return NULL;
    size_t pos = (size_t)(r->p - r->start);
    int line = 1, column = 1;
    for (const unsigned char *q = r->start; q < r->p; q++) {
        if (*q == '\n')
            line++, column = 1;
        else
            column++;
    }
    e->line = line;
    e->column = column;
    e->position = (int)(pos > INT_MAX ? INT_MAX : pos);
    snprintf(e->text, sizeof(e->text), "%s at byte %zu", what, pos);
    return NULL;
}

static void skip_ws(struct reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t'))
        r->p++;
}

/* Room for n more bytes above top + used; 0 on success. */
static int reserve(struct reader *r, size_t used, size_t n)
{
    size_t need = r->top + used + n;
    if (need <= r->cap)
        return 0;
    size_t cap = r->cap * 2 > need ? r->cap * 2 : need;
    char *b = r->heap ? realloc(r->buf, cap) : malloc(cap);
    if (!b)
        return -1;
    if (!r->heap)
        memcpy(b, r->buf, r->top + used);
    r->buf = b;
    r->cap = cap;
    r->heap = 1;
    return 0;
}

static int hex4(const unsigned char *s, const unsigned char *end)
{
    if (end - s < 4)
        return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/*
 * Reads the string whose opening quote is at r->p and leaves r->p after its closing quote.
 * Without escapes the text is a slice of the input (*s, *n, *in_buf = 0); otherwise it is
 * decoded into r->buf at r->top (*in_buf = 1; *s is valid until r->buf next grows).
 * Returns 0, or -1 after fail().
 */
static int read_string(struct reader *r, const char **s, size_t *n, int *in_buf)
{
    const unsigned char *p = ++r->p, *end = r->end, *run = p;
    size_t used = 0; /* decoded bytes at r->buf + r->top, once an escape was seen */
    int decoding = 0;
    for (;;) {
        p += fbr_json_plain_run(p, (size_t)(end - p));
        if (p == end) {
            r->p = p;
            fail(r, "premature end of input in a string");
            return -1;
        }
        switch (str_class[*p]) {
        case B_HIGH: {
            size_t bad = 0, k = fbr_utf8_seq(p, (size_t)(end - p), &bad);
            if (!k) {
                r->p = p;
                fail(r, "invalid UTF-8 in a string");
                return -1;
            }
            p += k;
            continue;
        }
        case B_CONTROL:
            r->p = p;
            fail(r, "control character in a string");
            return -1;
        case B_QUOTE:
            if (!decoding) {
                *s = (const char *)run;
                *n = (size_t)(p - run);
                *in_buf = 0;
            } else {
                size_t k = (size_t)(p - run);
                if (reserve(r, used, k)) {
                    fail(r, "out of memory");
                    return -1;
                }
                memcpy(r->buf + r->top + used, run, k);
                used += k;
                *s = r->buf + r->top;
                *n = used;
                *in_buf = 1;
            }
            r->p = p + 1;
            return 0;
        default: /* B_ESCAPE */
            break;
        }
        /* Copy the run before the backslash, then decode one escape (at most 4 bytes). */
        size_t k = (size_t)(p - run);
        if (reserve(r, used, k + 4)) {
            r->p = p;
            fail(r, "out of memory");
            return -1;
        }
        decoding = 1;
        char *o = r->buf + r->top;
        memcpy(o + used, run, k);
        used += k;
        r->p = p;
        if (end - p < 2) {
            fail(r, "premature end of input in a string");
            return -1;
        }
        unsigned char e = p[1];
        p += 2;
        if (unescaped[e]) {
            o[used++] = unescaped[e];
            run = p;
            continue;
        }
        if (e != 'u') {
            fail(r, "invalid escape");
            return -1;
        }
        int hi = hex4(p, end);
        if (hi < 0) {
            fail(r, "invalid \\u escape");
            return -1;
        }
        p += 4;
        uint32_t cp = (uint32_t)hi;
        if (hi >= 0xdc00 && hi <= 0xdfff) {
            fail(r, "lone low surrogate escape");
            return -1;
        }
        if (hi >= 0xd800 && hi <= 0xdbff) {
            int lo = end - p >= 2 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2, end) : -2;
            if (lo == -1) {
                fail(r, "invalid \\u escape");
                return -1;
            }
            if (lo < 0xdc00 || lo > 0xdfff) {
                fail(r, "high surrogate escape without its low surrogate");
                return -1;
            }
            p += 6;
            cp = 0x10000 + ((uint32_t)(hi - 0xd800) << 10) + (uint32_t)(lo - 0xdc00);
        } else if (hi == 0) {
            fail(r, "\\u0000 is not allowed");
            return -1;
        }
        used += fbr_utf8_put(o + used, cp);
        run = p;
    }
}

/* jansson's lexer drops one NUL byte that it reads just after a number or a literal. */
static void skip_pushed_back_nul(struct reader *r)
{
    if (r->p < r->end && *r->p == 0)
        r->p++;
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Past the digits that start at p. */
static const unsigned char *digits(const unsigned char *p, const unsigned char *end)
{
    while (p < end && is_digit(*p))
        p++;
    return p;
}

static json_t *read_number(struct reader *r)
{
    const unsigned char *p = r->p, *end = r->end, *start = p;
    int neg = *p == '-';
    p += neg;
    const unsigned char *d = digits(p, end);
    if (d == p) {
        r->p = p;
        return fail(r, "invalid number");
    }
    if (*p == '0' && d - p > 1) {
        r->p = p;
        return fail(r, "leading zero in a number");
    }
    p = d;
    int real = 0;
    if (p < end && *p == '.') {
        d = digits(++p, end);
        if (d == p) {
            r->p = p;
            return fail(r, "digit expected after '.'");
        }
        p = d;
        real = 1;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        d = digits(p, end);
        if (d == p) {
            r->p = p;
            return fail(r, "digit expected in an exponent");
        }
        p = d;
        real = 1;
    }
    json_t *v;
    if (!real) {
        /* strtoll's range: down to -2^63, up to 2^63 - 1 */
        uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, acc = 0;
        for (const unsigned char *q = start + neg; q < p; q++) {
            unsigned digit = (unsigned)(*q - '0');
            if (acc > (limit - digit) / 10) {
                r->p = start;
                return fail(r, "integer out of range");
            }
            acc = acc * 10 + digit;
        }
        json_int_t i =
            neg ? (acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(json_int_t)acc) : (json_int_t)acc;
        v = json_integer(i);
    } else {
        size_t n = (size_t)(p - start);
        if (reserve(r, 0, n + 1)) {
            r->p = start;
            return fail(r, "out of memory");
        }
        char *t = r->buf + r->top;
        memcpy(t, start, n);
        t[n] = '\0';
        errno = 0;
        double real_value = strtod(t, NULL);
        if ((real_value == HUGE_VAL || real_value == -HUGE_VAL) && errno == ERANGE) {
            r->p = start;
            return fail(r, "real number out of range");
        }
        v = json_real(real_value);
    }
    r->p = p;
    skip_pushed_back_nul(r);
    return v ? v : fail(r, "out of memory");
}

static int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static json_t *read_literal(struct reader *r)
{
    const unsigned char *p = r->p, *start = p;
    while (p < r->end && is_alpha(*p))
        p++;
    size_t n = (size_t)(p - start);
    json_t *v = NULL;
    if (n == 4 && memcmp(start, "true", 4) == 0)
        v = json_true();
    else if (n == 5 && memcmp(start, "false", 5) == 0)
        v = json_false();
    else if (n == 4 && memcmp(start, "null", 4) == 0)
        v = json_null();
    if (!v)
        return fail(r, "invalid literal");
    r->p = p;
    skip_pushed_back_nul(r);
    return v;
}

static json_t *read_value(struct reader *r);

/* Steps over the opening byte at r->p and the whitespace after it; then over the closing byte
 * when it follows at once.  Returns 1 for an empty container, else 0. */
static int open_container(struct reader *r, unsigned char close)
{
    r->p++;
    skip_ws(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        return 1;
    }
    return 0;
}

/* After a member or element: steps over a ',' and the whitespace after it (1: another item
 * follows) or over the closing byte (0: the container ends); anything else is -1 after fail(). */
static int next_item(struct reader *r, unsigned char close, const char *expected)
{
    skip_ws(r);
    if (r->p < r->end && *r->p == ',') {
        r->p++;
        skip_ws(r);
        return 1;
    }
    if (r->p < r->end && *r->p == close) {
        r->p++;
        return 0;
    }
    fail(r, expected);
    return -1;
}

/* The member whose key starts at key_at repeats a key of its object: that error replaces any
 * found later in its value (a reader that stops at the key reports it). */
static void duplicate_key(struct reader *r, const unsigned char *key_at)
{
    if (r->err)
        r->err->text[0] = '\0';
    r->p = key_at;
    fail(r, "duplicate object key");
}

/* One member: the key at r->p, ':' and the value, set into obj.  0, or -1 after fail(). */
static int read_member(struct reader *r, json_t *obj)
{
    if (r->p == r->end || *r->p != '"') {
        fail(r, "string or '}' expected");
        return -1;
    }
    const char *key;
    size_t klen;
    int in_buf;
    const unsigned char *key_at = r->p;
    if (read_string(r, &key, &klen, &in_buf))
        return -1;
    json_t *v = NULL;
    skip_ws(r);
    if (r->p == r->end || *r->p != ':') {
        fail(r, "':' expected");
    } else {
        r->p++;
        skip_ws(r);
        /* An escaped key stays on the decode stack while its value is read (which may move
         * it). */
        size_t key_off = r->top;
        if (in_buf)
            r->top += klen;
        v = read_value(r);
        if (in_buf)
            key = r->buf + key_off;
        r->top = key_off;
    }
    if (!v) {
        /* The key came first: when it repeats one, that is the error to report. */
        if (json_object_getn(obj, key, klen))
            duplicate_key(r, key_at);
        return -1;
    }
    size_t before = json_object_size(obj);
    if (json_object_setn_new_nocheck(obj, key, klen, v)) {
        fail(r, "out of memory");
        return -1;
    }
    /* A repeated key replaces its value instead of adding a member: found without a lookup of
     * its own (one hash per member, not two). */
    if (json_object_size(obj) == before) {
        duplicate_key(r, key_at);
        return -1;
    }
    return 0;
}

/* One element at r->p, appended to arr.  0, or -1 after fail(). */
static int read_element(struct reader *r, json_t *arr)
{
    json_t *v = read_value(r);
    if (!v)
        return -1;
    if (json_array_append_new(arr, v)) {
        fail(r, "out of memory");
        return -1;
    }
    return 0;
}

/* The object or array whose opening byte is at r->p. */
static json_t *read_container(struct reader *r, int object)
{
    json_t *c = object ? json_object() : json_array();
    if (!c)
        return fail(r, "out of memory");
    unsigned char close = object ? '}' : ']';
    if (open_container(r, close))
        return c;
    int more;
    do {
        if (object ? read_member(r, c) : read_element(r, c))
            goto error;
        more = next_item(r, close, object ? "',' or '}' expected" : "',' or ']' expected");
    } while (more > 0);
    if (more == 0)
        return c;
error:
    json_decref(c);
    return NULL;
}

/* The value starting at r->p (after whitespace). */
static json_t *read_value(struct reader *r)
{
    if (r->p == r->end)
        return fail(r, "premature end of input");
    if (++r->depth > MAX_DEPTH)
        return fail(r, "maximum nesting depth reached");
    json_t *v;
    unsigned char c = *r->p;
    if (c == '{' || c == '[')
        v = read_container(r, c == '{');
    else if (c == '"') {
        const char *s;
        size_t n;
        int in_buf;
        if (read_string(r, &s, &n, &in_buf))
            return NULL;
        v = r->strings && n <= SHARED_MAX ? shared_string(r->strings, s, n)
                                          : json_stringn_nocheck(s, n);
        if (!v)
            return fail(r, "out of memory");
    } else if (c == '-' || is_digit(c))
        v = read_number(r);
    else if (is_alpha(c))
        v = read_literal(r);
    else
        return fail(r, "invalid token");
    if (v)
        r->depth--;
    return v;
}

json_t *fbr_json_loadb(const char *buf, size_t len, json_error_t *err)
{
    return fbr_json_loadb_shared(buf, len, err, NULL);
}

json_t *fbr_json_loadb_shared(const char *buf, size_t len, json_error_t *err,
                              struct fbr_json_strings *strings)
{
    char stack[1024];
    struct reader r = {
        .start = (const unsigned char *)buf,
        .p = (const unsigned char *)buf,
        .end = (const unsigned char *)buf + len,
        .err = err,
        .strings = strings,
        .buf = stack,
        .cap = sizeof(stack),
    };
    if (err) {
        memset(err, 0, sizeof(*err));
        snprintf(err->source, sizeof(err->source), "<buffer>");
    }
    if (!buf) {
        r.end = r.p;
        return fail(&r, "no buffer");
    }
    skip_ws(&r);
    json_t *v = NULL;
    if (r.p == r.end || (*r.p != '{' && *r.p != '[')) {
        fail(&r, "'[' or '{' expected");
        goto out;
    }
    v = read_value(&r);
    if (!v)
        goto out;
    skip_ws(&r);
    if (r.p != r.end) {
        fail(&r, "end of input expected");
        json_decref(v);
        v = NULL;
    }
out:
    if (r.heap)
        free(r.buf);
    return v;
}

struct dump_buf {
    char *p;
    size_t n, cap;
};

static int dump_append(const char *s, size_t n, void *arg)
{
    struct dump_buf *b = arg;
    if (b->cap - b->n <= n) { /* room for the text and its final NUL */
        while (b->cap - b->n <= n)
            b->cap = b->cap ? 2 * b->cap : 256;
        b->p = fbr_xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

char *fbr_json_dumps(const json_t *json, size_t flags)
{
    struct dump_buf b = {0};
    if (json_dump_callback(json, dump_append, &b, flags) != 0) {
        free(b.p);
        return NULL;
    }
    if (!b.p)
        b.p = fbr_xmalloc(1);
    b.p[b.n] = '\0';
    return b.p;
}
