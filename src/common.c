/*
 * common.c - return-code names, abort-on-exhaustion allocators, UTF-8 counting and clocks: the few
 * helpers every other module in the data path uses.
 */
#include "firebridge/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

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

size_t fbr_fmt_u64(char *out, uint64_t v)
{
    char tmp[FBR_U64_DIGITS];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
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

uint64_t fbr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t fbr_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
