/*
 * log.c - the line writer behind log.h: level filter, text or JSON lines on stderr, and the URL
 * masker that keeps tokens out of every line.  Used by every module; writes synchronously, which
 * is fine for one line per event at the rates firebridge logs at.  The daemon also routes what
 * libraries print on the C library's stderr stream (libevhtp's coloured log_error lines) through
 * here, as plain lines in firebridge's own format.
 */
#include "firebridge/log.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "firebridge/common.h"
#include "firebridge/url.h"

static enum fbr_log_level g_level = FBR_LOG_INFO;
static enum fbr_log_format g_format = FBR_LOG_TEXT;
static FILE *g_out; /* where lines go; NULL: stderr */

static const char *const level_names[] = {
#define FBR_X(name, text) text,
    FBR_LOG_LEVEL_MAP(FBR_X)
#undef FBR_X
};
static const char *const format_names[] = {
#define FBR_X(name, text) text,
    FBR_LOG_FORMAT_MAP(FBR_X)
#undef FBR_X
};

void fbr_log_setup(enum fbr_log_level level, enum fbr_log_format format)
{
    g_level = level;
    g_format = format;
}

int fbr_log_enabled(enum fbr_log_level level)
{
    return level <= g_level;
}

const char *fbr_log_level_name(enum fbr_log_level level)
{
    return level_names[level];
}

int fbr_log_level_parse(const char *s, enum fbr_log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum fbr_log_level)i;
            return 0;
        }
    }
    return -1;
}

int fbr_log_format_parse(const char *s, enum fbr_log_format *out)
{
    for (size_t i = 0; i < sizeof(format_names) / sizeof(format_names[0]); i++) {
        if (strcasecmp(s, format_names[i]) == 0) {
            *out = (enum fbr_log_format)i;
            return 0;
        }
    }
    return -1;
}

const char *fbr_log_format_name(enum fbr_log_format format)
{
    return (unsigned)format < sizeof(format_names) / sizeof(format_names[0]) ? format_names[format]
                                                                              : "text";
}

/* Appends s to buf as the inside of a JSON string: valid UTF-8 as it is, U+FFFD for each
 * ill-formed sequence (a peer's bytes, or a character a length limit cut), so every line stays
 * valid JSON. */
static size_t json_escape(char *buf, size_t pos, size_t cap, const char *s)
{
    for (; *s && pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[pos++] = '\\';
            buf[pos++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            pos += (size_t)snprintf(buf + pos, cap - pos, "\\u%04x", c);
        } else if (c < 0x80) {
            buf[pos++] = (char)c;
        } else {
            size_t bad = 0, n = fbr_utf8_seq((const unsigned char *)s, 4, &bad);
            if (n == 0) {
                memcpy(buf + pos, "\\ufffd", 6);
                pos += 6;
                n = bad;
            } else {
                memcpy(buf + pos, s, n);
                pos += n;
            }
            s += n - 1;
        }
    }
    return pos;
}

/* Appends s to a text line: CR, LF and tab as \r \n \t, other control bytes (ESC, DEL, the
 * rest of C0, the C1 controls U+0080..U+009F) and the bytes of ill-formed UTF-8 as \xNN, so that
 * nothing a peer sent can end the line, forge another one or drive the terminal that shows it. */
static size_t text_escape(char *buf, size_t pos, size_t cap, const char *s)
{
    for (; *s && pos + 9 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        size_t bad = 0, n = c >= 0x80 ? fbr_utf8_seq((const unsigned char *)s, 4, &bad) : 1;
        if (n > 1 && !(c == 0xc2 && (unsigned char)s[1] < 0xa0)) {
            memcpy(buf + pos, s, n);
            pos += n;
            s += n - 1;
        } else if (c >= 0x20 && c < 0x7f)
            buf[pos++] = (char)c;
        else if (c == '\r' || c == '\n' || c == '\t') {
            buf[pos++] = '\\';
            buf[pos++] = c == '\r' ? 'r' : c == '\n' ? 'n' : 't';
        } else {
            buf[pos++] = '\\';
            buf[pos++] = 'x';
            pos += fbr_fmt_hex(buf + pos, &c, 1); /* room: the loop keeps 9 bytes */
        }
    }
    return pos;
}

static void mask_text(const char *s, size_t len, char *out, size_t outlen);

void fbr_logv(enum fbr_log_level level, const char *id, const char *action, const char *fmt,
              va_list ap)
{
    if (!fbr_log_enabled(level))
        return;
    char raw[2048], msg[2048];
    vsnprintf(raw, sizeof(raw), fmt, ap);
    mask_text(raw, strlen(raw), msg, sizeof(msg)); /* whatever a line quotes, secrets stay out */

    char ts[40];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", now.tv_nsec / 1000000L);

    char line[4096];
    size_t pos = 0;
    /* Every append is clamped (onto the NUL a truncated snprintf leaves): a long message
     * truncates the line, never overruns it. */
#define CLAMP() (pos = pos < sizeof(line) - 4 ? pos : sizeof(line) - 4)
    if (g_format == FBR_LOG_JSON) {
        pos = (size_t)snprintf(line, sizeof(line) - 3, "{\"ts\":\"%s\",\"level\":\"%s\"", ts,
                               level_names[level]);
        CLAMP();
        if (id) {
            pos += (size_t)snprintf(line + pos, sizeof(line) - 3 - pos, ",\"id\":\"");
            CLAMP();
            pos = json_escape(line, pos, sizeof(line) - 3, id);
            line[pos++] = '"';
            CLAMP();
        }
        pos += (size_t)snprintf(line + pos, sizeof(line) - 3 - pos, ",\"msg\":\"");
        CLAMP();
        pos = json_escape(line, pos, sizeof(line) - 3, msg);
        line[pos++] = '"';
        CLAMP();
        if (action) {
            pos += (size_t)snprintf(line + pos, sizeof(line) - 3 - pos, ",\"action\":\"");
            CLAMP();
            pos = json_escape(line, pos, sizeof(line) - 3, action);
            line[pos++] = '"';
            CLAMP();
        }
        line[pos++] = '}';
        line[pos++] = '\n';
    } else {
        size_t cap = sizeof(line) - 8; /* room for "] ", " while " is checked, and the LF */
        pos = (size_t)snprintf(line, cap, "%s %-5s ", ts, level_names[level]);
        if (id) {
            line[pos++] = '[';
            pos = text_escape(line, pos, cap, id);
            line[pos++] = ']';
            line[pos++] = ' ';
        }
        pos = text_escape(line, pos, cap, msg);
        if (action && pos + 8 < cap) {
            memcpy(line + pos, " while ", 7);
            pos = text_escape(line, pos + 7, cap, action);
        }
        line[pos++] = '\n';
    }
#undef CLAMP
    fwrite(line, 1, pos, g_out ? g_out : stderr);
}

void fbr_log(enum fbr_log_level level, const char *id, const char *action, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fbr_logv(level, id, action, fmt, ap);
    va_end(ap);
}

/* ---- masking secrets ---- */

/* Bytes of a parameter or header name, a scheme or an auth scheme. */
static int name_byte(unsigned char c)
{
    return isalnum(c) || c == '_' || c == '-';
}

/* Where a masked value ends: a parameter separator, a quote, a blank, a control byte. */
static int value_end(unsigned char c)
{
    return c <= ' ' || c == 0x7f || c == '&' || c == '#' || c == '"' || c == '\'' || c == ',' ||
           c == ';' || c == '<' || c == '>' || c == ')' || c == ']' || c == '}' || c == '\\';
}

static int name_is(const char *w, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(w, name, n) == 0;
}

static int name_ends(const char *w, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && strncasecmp(w + n - k, suffix, k) == 0;
}

/* Whether a parameter or JSON member of this name carries a secret (auth_token, token,
 * access_token, signed_request, api_key, key, password, secret, and *_token, *_secret, *_key). */
static int secret_name(const char *w, size_t n)
{
    if (name_is(w, n, "routing_key"))
        return 0;
    return name_is(w, n, "key") || name_is(w, n, "apikey") || name_is(w, n, "signed_request") ||
           name_ends(w, n, "token") || name_ends(w, n, "secret") || name_ends(w, n, "password") ||
           name_ends(w, n, "passwd") || name_ends(w, n, "_key") || name_ends(w, n, "-key");
}

/* An HTTP authentication scheme that a credential follows. */
static int auth_scheme(const char *w, size_t n)
{
    return name_is(w, n, "bearer") || name_is(w, n, "basic") || name_is(w, n, "jwt") ||
           name_is(w, n, "token");
}

struct masker {
    const char *s;
    size_t len, i;
    char *out;
    size_t o, cap;
};

static void put(struct masker *m, const char *p, size_t n)
{
    for (size_t k = 0; k < n && m->o + 1 < m->cap; k++)
        m->out[m->o++] = p[k];
}

/* Skips the value at m->i (up to value_end, or to the closing quote when quoted) and writes
 * "***" for it. */
static void mask_value(struct masker *m, int quoted)
{
    while (m->i < m->len) {
        unsigned char c = (unsigned char)m->s[m->i];
        if (quoted ? c == '"' : value_end(c))
            break;
        m->i += quoted && c == '\\' && m->i + 1 < m->len ? 2 : 1;
    }
    put(m, "***", 3);
}

/* At "://": copies the authority, with the password of a userinfo masked. */
static void mask_authority(struct masker *m)
{
    put(m, "://", 3);
    m->i += 3;
    size_t a = m->i, end = a, at = 0;
    while (end < m->len && !value_end((unsigned char)m->s[end]) && m->s[end] != '/' &&
           m->s[end] != '?')
        if (m->s[end++] == '@')
            at = end;
    const char *colon = at ? memchr(m->s + a, ':', at - 1 - a) : NULL;
    if (!colon)
        return; /* no password: the authority is copied as ordinary text */
    put(m, m->s + a, (size_t)(colon - (m->s + a)) + 1);
    put(m, "***", 3);
    m->i = at - 1;
}

/*
 * The one masker of log.c: copies s[0..len) into out with every secret it can recognise in URLs,
 * headers and quoted peer text replaced by "***": the password of a userinfo, the value of a
 * secret-named parameter or JSON member (secret_name), the credential after "Authorization:" (its
 * scheme kept) and after the word "Bearer", and the API-key segment of the on-call platform's REST path
 * (".../20131114/alert/KEY/..."), wherever they stand in the text.
 */
static void mask_text(const char *s, size_t len, char *out, size_t outlen)
{
    static const char rest_path[] = "/20131114/alert/";
    struct masker m = {s, len, 0, out, 0, outlen};
    if (outlen == 0)
        return;
    while (m.i < len) {
        const char *p = s + m.i;
        size_t left = len - m.i;
        if (left >= 3 && memcmp(p, "://", 3) == 0) {
            mask_authority(&m);
            continue;
        }
        if (left > sizeof(rest_path) - 1 && memcmp(p, rest_path, sizeof(rest_path) - 1) == 0) {
            put(&m, p, sizeof(rest_path) - 1);
            m.i += sizeof(rest_path) - 1;
            while (m.i < len && s[m.i] != '/' && s[m.i] != '?' && !value_end((unsigned char)s[m.i]))
                m.i++;
            put(&m, "***", 3);
            continue;
        }
        if (!name_byte((unsigned char)*p)) {
            put(&m, p, 1);
            m.i++;
            continue;
        }
        size_t n = 0;
        while (n < left && name_byte((unsigned char)p[n]))
            n++;
        put(&m, p, n);
        m.i += n;
        size_t j = m.i;
        int quoted_name = m.i > n && s[m.i - n - 1] == '"' && j < len && s[j] == '"';
        if (quoted_name)
            j++;
        while (j < len && s[j] == ' ')
            j++;
        int sep = j < len && (s[j] == '=' || s[j] == ':');
        if (sep && (s[j] == '=' || quoted_name || name_is(p, n, "authorization"))) {
            int auth = name_is(p, n, "authorization");
            if (!auth && !secret_name(p, n))
                continue;
            j++;
            while (j < len && s[j] == ' ')
                j++;
            int quoted = j < len && s[j] == '"';
            j += quoted;
            put(&m, s + m.i, j - m.i);
            m.i = j;
            if (auth) { /* the scheme stays readable: "Authorization: Bearer ***" */
                size_t k = 0;
                while (m.i + k < len && name_byte((unsigned char)s[m.i + k]))
                    k++;
                if (k && m.i + k < len && s[m.i + k] == ' ' && auth_scheme(s + m.i, k)) {
                    put(&m, s + m.i, k + 1);
                    m.i += k + 1;
                }
            }
            mask_value(&m, quoted);
        } else if (name_is(p, n, "bearer") && m.i + 1 < len && s[m.i] == ' ' &&
                   !value_end((unsigned char)s[m.i + 1])) {
            put(&m, " ", 1);
            m.i++;
            mask_value(&m, 0);
        }
    }
    m.out[m.o] = '\0';
}

char *fbr_log_mask_url(const char *url, size_t len, char *out, size_t outlen)
{
    mask_text(url, len, out, outlen);
    return out;
}

/* ---- library output on stderr ---- */

static struct {
    char buf[1024]; /* the line being collected; longer ones are cut */
    size_t len;
    int esc;        /* 1: after ESC, 2: inside an ESC [ ... sequence */
} g_lib;

/* Known-harmless library lines, logged at debug level only. */
static int lib_line_is_benign(const char *line)
{
    /* libevhtp 1.2.18 prints this for every pipelined request */
    return strstr(line, "ODDITY, resuming when not paused") != NULL;
}

static void lib_line_done(void)
{
    while (g_lib.len && (g_lib.buf[g_lib.len - 1] == ' ' || g_lib.buf[g_lib.len - 1] == '\r'))
        g_lib.len--;
    g_lib.buf[g_lib.len] = '\0';
    if (g_lib.len)
        fbr_log(lib_line_is_benign(g_lib.buf) ? FBR_LOG_DEBUG : FBR_LOG_ERROR, NULL, NULL,
                "library: %s", g_lib.buf);
    g_lib.len = 0;
    g_lib.esc = 0;
}

/* The stream's write function: drops terminal escape sequences and control bytes, logs lines. */
static ssize_t lib_write(void *cookie, const char *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)data[i];
        if (g_lib.esc == 1) {
            g_lib.esc = c == '[' ? 2 : 0;
            continue;
        }
        if (g_lib.esc == 2) {
            if (c >= 0x40 && c <= 0x7e)
                g_lib.esc = 0; /* the final byte of a CSI sequence */
            continue;
        }
        if (c == 0x1b) {
            g_lib.esc = 1;
        } else if (c == '\n') {
            lib_line_done();
        } else if (c >= 0x20 && c != 0x7f && g_lib.len < sizeof(g_lib.buf) - 1) {
            g_lib.buf[g_lib.len++] = (char)c;
        } else if (c == '\t' && g_lib.len < sizeof(g_lib.buf) - 1) {
            g_lib.buf[g_lib.len++] = ' ';
        }
    }
    return (ssize_t)n;
}

FILE *fbr_log_stream(void)
{
    return g_out ? g_out : stderr;
}

int fbr_log_capture_stderr(void)
{
    if (g_out)
        return 0;
    cookie_io_functions_t io = {.write = lib_write};
    FILE *f = fopencookie(NULL, "w", io);
    if (!f)
        return -1;
    setvbuf(f, NULL, _IOLBF, 0);
    fflush(stderr);
    g_out = stderr;
    stderr = f;
    return 0;
}
