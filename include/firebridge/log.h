/*
 * log.h - one line per event worth knowing, as text or JSON lines, filtered by level.  Every line
 * may carry the action in progress ("while delivering 42 to api.hipchat.com") and a request or
 * delivery id.  Callers pass secrets only through fbr_log_mask_url(), never raw.
 */
#ifndef FIREBRIDGE_LOG_H
#define FIREBRIDGE_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

/* X(NAME, spelling in flags and log lines) */
#define FBR_LOG_LEVEL_MAP(X) X(ERROR, "error") X(WARN, "warn") X(INFO, "info") X(DEBUG, "debug")
#define FBR_LOG_FORMAT_MAP(X) X(TEXT, "text") X(JSON, "json")

enum fbr_log_level {
#define FBR_X(name, text) FBR_LOG_##name,
    FBR_LOG_LEVEL_MAP(FBR_X)
#undef FBR_X
};
enum fbr_log_format {
#define FBR_X(name, text) FBR_LOG_##name,
    FBR_LOG_FORMAT_MAP(FBR_X)
#undef FBR_X
};

/* Sets the threshold and format; lines go to stderr. */
void fbr_log_setup(enum fbr_log_level level, enum fbr_log_format format);
int fbr_log_enabled(enum fbr_log_level level);

/* Parses "error|warn|info|debug" / "text|json"; returns 0 or -1. */
int fbr_log_level_parse(const char *s, enum fbr_log_level *out);
int fbr_log_format_parse(const char *s, enum fbr_log_format *out);
const char *fbr_log_level_name(enum fbr_log_level level);
const char *fbr_log_format_name(enum fbr_log_format format);

/*
 * Writes one line.  `id` (may be NULL) is a request or delivery id; `action` (may be NULL) says
 * what was being done and is appended as "while <action>".
 */
void fbr_log(enum fbr_log_level level, const char *id, const char *action, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void fbr_logv(enum fbr_log_level level, const char *id, const char *action, const char *fmt,
              va_list ap) __attribute__((format(printf, 4, 0)));

#define fbr_log_error(...) fbr_log(FBR_LOG_ERROR, NULL, NULL, __VA_ARGS__)
#define fbr_log_warn(...) fbr_log(FBR_LOG_WARN, NULL, NULL, __VA_ARGS__)
#define fbr_log_info(...) fbr_log(FBR_LOG_INFO, NULL, NULL, __VA_ARGS__)
#define fbr_log_debug(...)                                                                         \
    do {                                                                                           \
        if (fbr_log_enabled(FBR_LOG_DEBUG))                                                        \
            fbr_log(FBR_LOG_DEBUG, NULL, NULL, __VA_ARGS__);                                       \
    } while (0)

/*
 * Points the C library's `stderr` stream at a filter and keeps writing firebridge's own lines to
 * the original stream.  What libraries print through stdio on stderr (libevhtp 1.2.18's
 * log_error writes ANSI-coloured lines even in release builds) comes out as firebridge lines,
 * "library: <text>", terminal escapes and control bytes removed, at error level so that no
 * level setting hides them (known-harmless ones at debug).  Raw writes to descriptor 2
 * (sanitizer reports) are untouched.  Call once at start-up, single-threaded; a second call does
 * nothing.  Returns 0 or -1 (nothing changed).
 */
int fbr_log_capture_stderr(void);

/* Borrowed: the stream firebridge's own lines go to (the original stderr once it is captured),
 * for programs that print lines of their own next to the log (the load generator). */
FILE *fbr_log_stream(void);

/*
 * Copies `url` (len bytes) into `out` (at most outlen-1 bytes, always terminated) with every
 * secret masked: userinfo passwords, the values of secret-named parameters and JSON members
 * (auth_token, token, access_token, signed_request, api_key, key, password, secret, *_token,
 * *_secret, *_key), the credential after "Authorization:" or "Bearer", and the API-key segment of
 * the on-call platform's REST path become "***".  Any text may be passed, not only a URL: every
 * log line goes through this masker before it is written, and text-format lines then escape CR,
 * LF, tab and every other control byte (\r \n \t \xNN), as JSON-format lines escape them.
 * Returns out.
 */
char *fbr_log_mask_url(const char *url, size_t len, char *out, size_t outlen);

#endif
