/*
 * template.h - the zero-copy template engine: `${{NS.FIELD}}` templates compiled once at
 * configuration load into segments (literal slice | variable reference), rendered per event into
 * a list of iovec slices.  Literal slices point into the compiled template, value slices point
 * into the event's JSON strings; bytes are copied only where escaping changes them, into scratch
 * space owned by the render buffer.  This is the benchmarked hot path between the events module
 * (which picks the webhooks to fire) and the delivery module (which writes the slices out).
 */
#ifndef FIREBRIDGE_TEMPLATE_H
#define FIREBRIDGE_TEMPLATE_H

#include <jansson.h>
#include <stddef.h>
#include <sys/uio.h>

#include "firebridge/common.h"

/* Where a template stands decides how values are escaped (fixed at compile time). */
enum fbr_tpl_context {
    FBR_TPL_TEXT,   /* text/ *: values as they are */
    FBR_TPL_JSON,   /* application/json, *+json: escaped by JSON position */
    FBR_TPL_FORM,   /* application/x-www-form-urlencoded: form-encoded */
    FBR_TPL_URL,    /* percent-encoded per component; a missing variable skips the webhook */
    FBR_TPL_HEADER, /* header value: CR, LF or NUL in a value fails the delivery */
    FBR_TPL_RULE,   /* Rules Engine value: ${{field}} (an ALERT field) and ${{\1}}..${{\9}} */
};

/* Maps a Content-Type value to the payload context (JSON, FORM or TEXT). */
enum fbr_tpl_context fbr_tpl_context_for_content_type(const char *content_type);

/* The namespaces of an event object, X(NAME): what `${{NAME.field}}` reads. */
#define FBR_TPL_NS_MAP(X) X(ALERT) X(STATE) X(INCIDENT) X(CHAT) X(ONCALL) X(PAGE)
enum fbr_tpl_ns {
#define FBR_X(name) FBR_NS_##name,
    FBR_TPL_NS_MAP(FBR_X)
#undef FBR_X
        FBR_NS_COUNT
};
#define FBR_NS_BIT(ns) (1u << (ns))

/* A compiled template: immutable, reference counted. */
struct fbr_tpl;

/*
 * Compiles `len` bytes of `src`.  On success returns FBR_OK and a new reference in *out.  On
 * failure returns FBR_INVALID, leaves *out NULL and writes "column N: <reason>" into err (the
 * caller prefixes the configuration path).  Errors: unterminated `${{`, empty name, unknown
 * namespace, bad capture index, a namespace in a RULE template.
 */
int fbr_tpl_compile(const char *src, size_t len, enum fbr_tpl_context ctx, struct fbr_tpl **out,
                    char *err, size_t errlen);
struct fbr_tpl *fbr_tpl_ref(struct fbr_tpl *tpl);  /* returns tpl with one more reference */
void fbr_tpl_unref(struct fbr_tpl **tpl);          /* drops one reference, sets *tpl to NULL */
const char *fbr_tpl_source(const struct fbr_tpl *tpl, size_t *len); /* borrowed */
int fbr_tpl_has_variables(const struct fbr_tpl *tpl);
/*
 * Why no value can turn URL template tpl into a URL firebridge sends to, judged by url.h's rules
 * on its literal text alone: a literal byte that never stands unencoded in a URL, or a literal
 * start that is already not "http(s)://host[:port]" (`ftp://x`, `http:///x`, `not a url`,
 * userinfo, port 0).  Returns a static sentence, or NULL when some value could (and for templates
 * of other contexts).  Configuration compilers refuse such templates before start; rendering one
 * fails the same way for every event.
 */
const char *fbr_tpl_url_never_valid(const struct fbr_tpl *tpl);
/*
 * The namespaces tpl reads, as FBR_NS_BIT()s (0 for NULL and for a template without variables;
 * a RULE template's `${{field}}` reads the alert: ALERT).  Fixed at compile time, so a caller can
 * decide at configuration load which parts of an event it needs to build at all.
 */
unsigned fbr_tpl_namespaces(const struct fbr_tpl *tpl);
/* The highest capture group a RULE template refers to (`${{\5}}`: 5), 0 when none. */
unsigned fbr_tpl_max_capture(const struct fbr_tpl *tpl);

/*
 * What a template is rendered against.  `event` is a JSON object with the namespaces as keys
 * (ALERT, STATE, INCIDENT, CHAT, ONCALL, PAGE); for RULE templates `alert` is the alert object and
 * `captures[1..ncaptures-1]` the regex groups.  All pointers are borrowed for the duration of the
 * render; the caller keeps `event` alive (json_incref) for as long as the rendered slices live.
 */
struct fbr_tpl_scope {
    json_t *event;
    json_t *alert;
    const struct fbr_slice *captures;
    unsigned ncaptures;
};

/*
 * Reusable render output.  Initialise once, reset between renders: capacity is kept so that a
 * steady state renders with no heap allocation.  iov[] slices stay valid until the next reset or
 * free (scratch-backed slices point into the render's own storage).
 */
struct fbr_render {
    struct iovec *iov;
    size_t niov, iov_cap;
    size_t total;        /* sum of iov[i].iov_len */
    const char *missing; /* after FBR_SKIP: the missing variable's name (borrowed from the tpl) */
    size_t missing_len;
    const char *error;   /* after FBR_INVALID: a static reason */
    void *priv;          /* scratch storage, owned */
};

void fbr_render_init(struct fbr_render *r);
void fbr_render_reset(struct fbr_render *r);
void fbr_render_free(struct fbr_render *r);

/*
 * Appends the rendering of tpl to r (several templates may be rendered into one buffer).
 * Returns FBR_OK; FBR_SKIP when a URL template misses a variable (r->missing names it);
 * FBR_INVALID when the output would be unsafe (header injection, a URL that url.h's rules
 * refuse), with r->error set.  On failure r's content is unspecified until reset, except for a
 * refused URL: it is then rendered whole (so that it can be written to a dead letter).
 */
int fbr_tpl_render(const struct fbr_tpl *tpl, const struct fbr_tpl_scope *scope,
                   struct fbr_render *r);

/* Replaces r's content with one slice holding a private copy of len bytes of src (used when a
 * request comes back from a dead-letter file rather than from a template). */
void fbr_render_set_copy(struct fbr_render *r, const char *src, size_t len);

/* Copies the rendered bytes into dst (r->total bytes, not terminated). */
void fbr_render_copy(const struct fbr_render *r, char *dst);
/* Returns a new NUL-terminated heap copy of the rendered bytes (caller frees). */
char *fbr_render_strdup(const struct fbr_render *r);

#endif
