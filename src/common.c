/*
 * common.c - return-code names, abort-on-exhaustion allocators, UTF-8 counting, JSON string
 * escaping and clocks: the few helpers every other module in the data path uses.
 */
#include "firebridge/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

const char *fbr_strerror(int code)
{
    switch (code) {
    case FBR_OK:
        return "ok";
#define FBR_X(name, value, text)                                                                   \
    case FBR_##name:                                                                               \
        return text;
        FBR_ERRNO_MAP(FBR_X)
#undef FBR_X
    }
    return "unknown error";
}

static void oom(size_t n)
{
    fprintf(stderr, "firebridge: out of memory allocating %zu bytes\n", n);
    abort();
}

void *fbr_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *fbr_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *fbr_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *fbr_xstrndup(const char *s, size_t n)
{
    char *p = fbr_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *fbr_xstrdup(const char *s)
{
    return fbr_xstrndup(s, strlen(s));
}

size_t fbr_utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static const char *const fsync_names[] = {
#define FBR_X(name, text) text,
    FBR_FSYNC_MAP(FBR_X)
#undef FBR_X
};

const char *fbr_fsync_mode_name(enum fbr_fsync_mode m)
{
    return (unsigned)m < FBR_ARRAY_LEN(fsync_names) ? fsync_names[m] : "batch";
}

int fbr_fsync_mode_parse(const char *s, enum fbr_fsync_mode *out)
{
    for (size_t i = 0; i < FBR_ARRAY_LEN(fsync_names); i++) {
        if (s && strcmp(s, fsync_names[i]) == 0) {
            *out = (enum fbr_fsync_mode)i;
            return FBR_OK;
        }
    }
    return FBR_INVALID;
}

size_t fbr_utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/*
 * Length of the well-formed UTF-8 sequence at s[0..n) (Unicode table 3-7), or 0 when s starts
 * an ill-formed one; *bad then receives the length of its maximal subpart (what one U+FFFD
 * replaces, as the WHATWG decoder does).
 */
size_t fbr_utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        need = 1;
    else if (c >= 0xe0 && c <= 0xef) {
        need = 2;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        *bad = 1;
        return 0;
    }
    size_t i = 1;
    for (; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80, hi = 0xbf;
    }
    return need + 1;
}

size_t fbr_utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

size_t fbr_fmt_u64(char *out, uint64_t v)
{
    /* two digits per division: a millisecond timestamp is 13 digits */
    static const char pairs[] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    char tmp[FBR_U64_DIGITS];
    size_t i = sizeof(tmp);
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        i -= 2;
        memcpy(tmp + i, pairs + 2 * r, 2);
    }
    if (v >= 10) {
        i -= 2;
        memcpy(tmp + i, pairs + 2 * v, 2);
    } else {
        tmp[--i] = (char)('0' + v);
    }
    size_t n = sizeof(tmp) - i;
    memcpy(out, tmp + i, n);
    out[n] = '\0';
    return n;
}

size_t fbr_join(char *buf, size_t cap, const struct fbr_slice *parts, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n && len < cap - 1; i++) {
        size_t k = parts[i].len < cap - 1 - len ? parts[i].len : cap - 1 - len;
        if (k)
            memcpy(buf + len, parts[i].ptr, k);
        len += k;
    }
    buf[len] = '\0';
    return len;
}

size_t fbr_fmt_hex(char *out, const unsigned char *b, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 0x0F];
    }
    out[2 * n] = '\0';
    return 2 * n;
}

/* The loop's clock (fbr_clock_loop): readings kept until the next tick while `on`. */
struct kept_ms {
    int have;
    uint64_t v;
};
static __thread struct {
    int on;
    struct kept_ms mono, wall;
} loop_clock;

/* Clock id in milliseconds: the reading kept in *k since the last tick, or a new one (kept
 * while the loop's clock is on). */
static uint64_t read_ms(clockid_t id, struct kept_ms *k)
{
    if (k->have)
        return k->v;
    struct timespec ts;
    clock_gettime(id, &ts);
    uint64_t v = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    if (loop_clock.on)
        *k = (struct kept_ms){1, v};
    return v;
}

uint64_t fbr_now_ms(void)
{
    return read_ms(CLOCK_MONOTONIC, &loop_clock.mono);
}

uint64_t fbr_wall_ms(void)
{
    return read_ms(CLOCK_REALTIME, &loop_clock.wall);
}

void fbr_clock_tick(void)
{
    loop_clock.mono.have = loop_clock.wall.have = 0;
}

void fbr_clock_loop(int on)
{
    loop_clock.on = on;
    fbr_clock_tick();
}

/* ---- JSON string escaping (the template engine, replies, journal records) ---- */

/* Byte classes for the JSON scan: 0 plain ASCII, 1 needs an escape, 2 starts/continues UTF-8. */
static const uint8_t json_class[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};

/* Eight bytes at a time (sixteen with SSE2): a word is plain when no byte is below 0x20, equal
 * to '"' or '\\', or has its top bit. */
size_t fbr_json_plain_run(const unsigned char *s, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    size_t i = 0;
#ifdef __SSE2__
    /* as signed bytes, controls and every byte >= 0x80 are below 0x20: one compare covers both */
    const __m128i lim = _mm_set1_epi8(0x20), quote = _mm_set1_epi8('"');
    const __m128i bslash = _mm_set1_epi8('\\');
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        __m128i m = _mm_or_si128(_mm_cmplt_epi8(v, lim),
                                 _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)));
        int bits = _mm_movemask_epi8(m);
        if (bits)
            return i + (size_t)__builtin_ctz((unsigned)bits);
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
        /* (x - ones * n) & ~x & high is non-zero iff some byte of x is below n (n <= 0x80) */
        uint64_t special = ((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((b - ones) & ~b) | w;
        if (special & high)
            break;
    }
    while (i < n && json_class[s[i]] == 0)
        i++;
    return i;
}

/* Returns n when s can go into a JSON string literal as it is, else the offset of the first
 * byte that needs escaping or replacing. */
size_t fbr_json_clean_prefix(const char *src, size_t n)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0;
    while (i < n) {
        i += fbr_json_plain_run(s + i, n - i);
        if (i == n)
            break;
        if (json_class[s[i]] == 1)
            return i;
        size_t bad, l = fbr_utf8_seq(s + i, n - i, &bad);
        if (l == 0)
            return i;
        i += l;
    }
    return n;
}

/* Writes the JSON-string-escaped form of src (no quotes) to d; returns the bytes written. */
size_t fbr_json_escape(char *d, const char *src, size_t n)
{
    const unsigned char *s = (const unsigned char *)src;
    char *d0 = d;
    size_t i = 0;
    while (i < n) {
        size_t run = fbr_json_plain_run(s + i, n - i);
        memcpy(d, s + i, run);
        d += run;
        i += run;
        if (i == n)
            break;
        unsigned char c = s[i];
        uint8_t k = json_class[c];
        if (k == 1) {
            *d++ = '\\';
            switch (c) {
            case '"':
            case '\\':
                *d++ = (char)c;
                break;
            case '\b':
                *d++ = 'b';
                break;
            case '\f':
                *d++ = 'f';
                break;
            case '\n':
                *d++ = 'n';
                break;
            case '\r':
                *d++ = 'r';
                break;
            case '\t':
                *d++ = 't';
                break;
            default:
                *d++ = 'u';
                *d++ = '0';
                *d++ = '0';
                *d++ = "0123456789abcdef"[c >> 4];
                *d++ = "0123456789abcdef"[c & 15];
                break;
            }
            i++;
        } else {
            size_t bad = 0, l = fbr_utf8_seq(s + i, n - i, &bad);
            if (l) {
                memcpy(d, s + i, l);
                d += l;
                i += l;
            } else {
                *d++ = (char)0xef; /* U+FFFD */
                *d++ = (char)0xbf;
                *d++ = (char)0xbd;
                i += bad;
            }
        }
    }
    return (size_t)(d - d0);
}
