/*
 * log.c - the line writer behind log.h: level filter, text or JSON lines on stderr, and the URL
 * masker that keeps tokens out of every line.  Used by every module; writes synchronously, which
 * is fine for one line per event at the rates firebridge logs at.  The daemon also routes what
 * libraries print on the C library's stderr stream (libevhtp's coloured log_error lines) through
 * here, as plain lines in firebridge's own format.
 */
#include "firebridge/log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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

/* Appends s to buf as the inside of a JSON string. */
static size_t json_escape(char *buf, size_t pos, size_t cap, const char *s)
{
    for (; *s && pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[pos++] = '\\';
            buf[pos++] = (char)c;
        } else if (c < 0x20) {
            pos += (size_t)snprintf(buf + pos, cap - pos, "\\u%04x", c);
        } else {
            buf[pos++] = (char)c;
        }
    }
    return pos;
}

void fbr_logv(enum fbr_log_level level, const char *id, const char *action, const char *fmt,
              va_list ap)
{
    if (!fbr_log_enabled(level))
        return;
    char msg[2048];
    vsnprintf(msg, sizeof(msg), fmt, ap);

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
        pos = (size_t)snprintf(line, sizeof(line) - 1, "%s %-5s %s%s%s%s%s%s", ts,
                               level_names[level], id ? "[" : "", id ? id : "", id ? "] " : "",
                               msg, action ? " while " : "", action ? action : "");
        if (pos > sizeof(line) - 2)
            pos = sizeof(line) - 2;
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

static int secret_param(const char *name, size_t len)
{
    static const char *const names[] = {"auth_token", "token", "access_token", "signed_request",
                                        "api_key", "key", "password", "secret"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strlen(names[i]) == len && strncasecmp(name, names[i], len) == 0)
            return 1;
    }
    return 0;
}

char *fbr_log_mask_url(const char *url, size_t len, char *out, size_t outlen)
{
    size_t o = 0, i = 0;
    if (outlen == 0)
        return out;
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (o + 1 < outlen)                                                                        \
            out[o++] = (c);                                                                        \
    } while (0)
    /* userinfo: scheme://user:pass@host -> scheme://user:***@host (parts from url.h) */
    struct fbr_url u;
    if (fbr_url_split(url, len, &u) == FBR_OK && u.userinfo.ptr) {
        const char *colon = memchr(u.userinfo.ptr, ':', u.userinfo.len);
        if (colon) {
            for (; url + i <= colon; i++)
                PUT(url[i]);
            PUT('*');
            PUT('*');
            PUT('*');
            i = (size_t)(u.userinfo.ptr + u.userinfo.len - url);
        }
    }
    int in_query = 0;
    while (i < len) {
        char c = url[i];
        PUT(c);
        i++;
        if (c == '?' || (in_query && c == '&')) {
            in_query = 1;
            size_t name = i;
            while (i < len && url[i] != '=' && url[i] != '&')
                i++;
            for (size_t k = name; k < i; k++)
                PUT(url[k]);
            if (i < len && url[i] == '=') {
                PUT('=');
                i++;
                if (secret_param(url + name, i - 1 - name)) {
                    while (i < len && url[i] != '&' && url[i] != '#')
                        i++;
                    PUT('*');
                    PUT('*');
                    PUT('*');
                }
            }
        }
    }
#undef PUT
    out[o] = '\0';
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
