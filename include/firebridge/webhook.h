/*
 * webhook.h - outgoing webhooks: the compiled form of one `webhooks[]` entry of the configuration
 * (event, method, content type, URL / header / payload templates) and the rendered request it
 * yields for one event.  It sits between the events module, which decides which webhooks an event
 * fires, and the delivery module, which queues and sends the rendered requests.
 */
#ifndef FIREBRIDGE_WEBHOOK_H
#define FIREBRIDGE_WEBHOOK_H

#include <jansson.h>
#include <stdint.h>

#include "firebridge/cfgerr.h"
#include "firebridge/common.h"
#include "firebridge/ratelimit.h" /* struct fbr_rate */
#include "firebridge/template.h"
#include "firebridge/url.h"

struct fbr_webhook_header {
    char *name;            /* owned, validated token */
    struct fbr_tpl *value; /* FBR_TPL_HEADER template, owned reference */
};


/*
 * Immutable after compile; reference counted so a delivery in flight survives a reload.
 * room_rate / token_rate are limits of this webhook's deliveries, not of their destination: the
 * engine copies them into each delivery at submit (so they survive compaction and reloads) and a
 * delivery may go when fewer than n sends to its destination (token) by any webhook happened in
 * the last secs seconds; another webhook's deliveries to the same room (token) wait on their own
 * override or the global limit.  Replayed dead letters have no webhook: global limits.
 */
struct fbr_webhook {
    unsigned refs;
    char *name;
    uint32_t events;            /* bit (1u << enum fbr_event) per subscribed event */
    unsigned method;            /* one FBR_M_* bit (http.h) */
    char *content_type;
    struct fbr_tpl *url;        /* FBR_TPL_URL */
    struct fbr_tpl *payload;    /* context from content_type; NULL = no body */
    struct fbr_tpl *rate_key;   /* FBR_TPL_TEXT or NULL: overrides the destination key */
    struct fbr_webhook_header *headers;
    size_t nheaders;
    struct fbr_rate room_rate;  /* overrides --room-rate when n != 0 */
    struct fbr_rate token_rate; /* overrides --token-rate when n != 0 */
    int enabled;
};

struct fbr_webhook *fbr_webhook_ref(struct fbr_webhook *wh);
void fbr_webhook_unref(struct fbr_webhook **wh);

/* The compiled `webhooks` array, in configuration order; each entry one reference. */
struct fbr_webhooks {
    struct fbr_webhook **v;
    size_t n;
};

/*
 * Compiles `webhooks` (borrowed JSON array or NULL) into *out (which must be empty).  Entry:
 * {"name": str, "event": one of the 12 platform events or "Any-Alert", "method": "GET" | "POST" |
 *  "PUT" | "DELETE" | "PATCH" (default POST), "content_type": str = "application/json",
 *  "url": template, "headers": {"Name": template}, "payload": template string or a JSON
 *  object/array (serialised, then compiled), "enabled": bool = true, "rate_key": template,
 *  "room_rate": "N/SECONDS", "token_rate": "N/SECONDS", "description": str}.
 * Every mistake goes to errs with its path ("webhooks[0].method: must be one of ...").  Returns
 * FBR_OK, or FBR_INVALID with *out left empty.
 */
int fbr_webhooks_compile(json_t *webhooks, struct fbr_webhooks *out, struct fbr_cfgerr *errs);
/* Drops every reference and empties the list. */
void fbr_webhooks_clear(struct fbr_webhooks *w);
/*
 * The event namespaces (FBR_NS_BIT()s of template.h) that wh's templates read: URL, payload,
 * rate key and header values.  fbr_webhooks_namespaces() is the union over the enabled webhooks
 * of w (0 for NULL or none): what an event has to carry for them to render the same.
 */
unsigned fbr_webhook_namespaces(const struct fbr_webhook *wh);
unsigned fbr_webhooks_namespaces(const struct fbr_webhooks *w);

/*
 * A rendered request, ready for the delivery engine.  Its slices borrow from the webhook's
 * templates and the event's JSON, both of which it holds a reference to until released.
 * Initialise with fbr_outreq_init(); the render buffers are reused across renders.
 */
struct fbr_outreq {
    struct fbr_webhook *webhook; /* reference held, NULL for a replayed dead letter */
    json_t *event;               /* reference held, NULL for a replayed dead letter */
    unsigned method;
    struct fbr_render url;
    struct fbr_url_pos url_pos;  /* url as fbr_url_parse() accepted it, kept by
                                    fbr_outreq_render(); empty (n 0) when refused, too long to
                                    parse on the stack, or built by hand: the engine parses */
    struct fbr_render body;
    struct fbr_render rate_key;  /* empty when the webhook has none */
    char *content_type;          /* borrowed from the webhook, or owned when webhook is NULL */
    size_t nheaders;
    const char **header_names;   /* array owned; names borrowed from the webhook (or owned when
                                    webhook is NULL) */
    struct fbr_render *headers;  /* one value per header name */
    size_t headers_cap;          /* allocated entries of header_names / headers; code that fills
                                    the arrays by hand may leave it 0 (nheaders is used then) */
};

void fbr_outreq_init(struct fbr_outreq *o);
/*
 * Renders wh for event into o (taking references to both).  Returns FBR_OK; FBR_SKIP when the
 * URL misses a variable (the webhook does not fire for this event); FBR_INVALID when a header
 * value would inject CR/LF/NUL (the failing header's .error says why).  On failure o holds no
 * references.  A URL that url.h refuses still renders (FBR_OK, o->url.error set): the delivery
 * engine refuses it with the same reason and writes it to the dead-letter file, so a webhook
 * that fires is never dropped without a trace.
 */
int fbr_outreq_render(struct fbr_outreq *o, struct fbr_webhook *wh, json_t *event);
/* Moves src's contents and references into dst (uninitialised or freed) and leaves src
 * initialised and empty: how a sink takes a request over. */
void fbr_outreq_move(struct fbr_outreq *dst, struct fbr_outreq *src);
/* Drops the references and empties the buffers (capacity kept). */
void fbr_outreq_release(struct fbr_outreq *o);
/* Frees everything. */
void fbr_outreq_free(struct fbr_outreq *o);

#endif
