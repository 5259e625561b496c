/*
 * common.h - vocabulary shared by every firebridge module: length-counted byte slices, the one
 * set of return codes, and the small allocation helpers that abort on exhaustion.  Nothing here
 * knows about HTTP, JSON or the event loop; every other header builds on it.
 */
#ifndef FIREBRIDGE_COMMON_H
#define FIREBRIDGE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A borrowed, length-counted run of bytes; never assumed NUL-terminated. */
struct fbr_slice {
    const char *ptr;
    size_t len;
};

#define FBR_SLICE(s) ((struct fbr_slice){(s), sizeof(s) - 1})

static inline struct fbr_slice fbr_slice_from(const char *s)
{
    return (struct fbr_slice){s, s ? strlen(s) : 0};
}

static inline int fbr_slice_eq(struct fbr_slice a, struct fbr_slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/*
 * Return codes.  Functions return FBR_OK (0) or one of the negative codes below, never errno
 * values; the table yields the names used in logs and metrics.
 */
#define FBR_ERRNO_MAP(X)                                                                           \
    X(ERROR, -1, "error")                                                                          \
    X(AGAIN, -2, "again")                                                                          \
    X(DECLINED, -3, "declined")                                                                    \
    X(NOMEM, -4, "out of memory")                                                                  \
    X(INVALID, -5, "invalid input")                                                                \
    X(NOTFOUND, -6, "not found")                                                                   \
    X(LIMIT, -7, "limit exceeded")                                                                 \
    X(SKIP, -8, "skipped")

enum {
    FBR_OK = 0,
#define FBR_X(name, value, text) FBR_##name = (value),
    FBR_ERRNO_MAP(FBR_X)
#undef FBR_X
};

/* Returns a static string naming a return code, for logs. */
const char *fbr_strerror(int code);

/* Allocation helpers: abort the process with a message when memory is exhausted.  Use plain
 * malloc and check the result only where a client controls the size. */
void *fbr_xmalloc(size_t n);
void *fbr_xcalloc(size_t n, size_t size);
void *fbr_xrealloc(void *p, size_t n);
char *fbr_xstrdup(const char *s);
char *fbr_xstrndup(const char *s, size_t n);

#define FBR_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* How journals (incidents, deliveries) reach the disk (--fsync). */
#define FBR_FSYNC_MAP(X)                                                                           \
    X(ALWAYS, "always") /* fsync after every journal record */                                     \
    X(BATCH, "batch")   /* fsync from the owner's flush timer (about once a second) */             \
    X(OFF, "off")       /* leave it to the kernel */

enum fbr_fsync_mode {
#define FBR_X(name, text) FBR_FSYNC_##name,
    FBR_FSYNC_MAP(FBR_X)
#undef FBR_X
};

/* "always", "batch" or "off". */
const char *fbr_fsync_mode_name(enum fbr_fsync_mode m);
/* Parses "always|batch|off"; FBR_OK or FBR_INVALID. */
int fbr_fsync_mode_parse(const char *s, enum fbr_fsync_mode *out);

/* Number of code points in the UTF-8 text s[0..len): bytes that are not continuation bytes
 * (10xxxxxx).  Validity is the caller's business (jansson strings are valid UTF-8). */
size_t fbr_utf8_chars(const char *s, size_t len);

/* The longest prefix of the UTF-8 text s[0..len) of at most max bytes that does not end inside
 * a character (for quoting a client's key or path in a message that must stay valid UTF-8). */
size_t fbr_utf8_cut(const char *s, size_t len, size_t max);

/* Length of the well-formed UTF-8 sequence at s[0..n) (Unicode table 3-7), or 0 when s starts an
 * ill-formed one; *bad then receives the length of its maximal subpart (what one U+FFFD
 * replaces).  A NUL byte ends any sequence, so n may exceed a C string's end by up to 3. */
size_t fbr_utf8_seq(const unsigned char *s, size_t n, size_t *bad);

/* Writes code point cp (at most U+10FFFF, not a surrogate) as UTF-8 into o (room for 4 bytes);
 * returns the bytes written. */
size_t fbr_utf8_put(char *o, uint32_t cp);

/*
 * JSON strings, one owner for the template engine, the intake's JSON reader, the server's replies
 * and the journal's records.  fbr_json_plain_run() returns the length of the leading run of
 * s[0..n) that a JSON string holds as it is and that needs no UTF-8 check: ASCII other than
 * controls, '"' and '\\'.  fbr_json_clean_prefix() returns n when src[0..n) can go into a JSON
 * string literal as it is, else the offset of the first byte that needs escaping or replacing.
 * fbr_json_escape() writes the escaped form of src (no quotes) to d, which must have room for 6
 * bytes per input byte; ill-formed UTF-8 becomes U+FFFD.  Returns the bytes written.
 */
size_t fbr_json_plain_run(const unsigned char *s, size_t n);
size_t fbr_json_clean_prefix(const char *src, size_t n);
size_t fbr_json_escape(char *d, const char *src, size_t n);

/* Formatting for the per-alert path, where snprintf's format parsing was a measurable cost
 * (bench/README.md).  fbr_fmt_u64 writes v in decimal and a terminating NUL into out (at least
 * FBR_U64_DIGITS + 1 bytes) and returns the length; fbr_fmt_hex writes 2 * n lower-case hex
 * digits of b[0..n) and a NUL, and returns 2 * n. */
#define FBR_U64_DIGITS 20
size_t fbr_fmt_u64(char *out, uint64_t v);
size_t fbr_fmt_hex(char *out, const unsigned char *b, size_t n);

/* Writes the parts one after another into buf and a terminating NUL, cut to cap - 1 bytes (cap
 * >= 1); returns the length written.  What "%.*s%.*s..." with snprintf does, without a format
 * parsed per call (delivery and rate keys are built per alert). */
size_t fbr_join(char *buf, size_t cap, const struct fbr_slice *parts, size_t n);

/* Monotonic and wall clocks in milliseconds. */
uint64_t fbr_now_ms(void);
uint64_t fbr_wall_ms(void);

/*
 * The loop's clock (nginx keeps its time the same way): after fbr_clock_loop(1), fbr_now_ms() and
 * fbr_wall_ms() on the calling thread read their clock at their first call after each
 * fbr_clock_tick() and give that reading until the next tick; the daemon's loop ticks before
 * every iteration (main.c run_loop), so an alert's dozen time stamps and deadlines cost one clock
 * read per iteration, and time does not move inside one.  fbr_clock_loop(0) goes back to a
 * reading per call.  Per thread: other threads read the clocks at every call.
 */
void fbr_clock_loop(int on);
void fbr_clock_tick(void);

#endif
