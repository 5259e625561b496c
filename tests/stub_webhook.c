/*
 * stub_webhook.c - stand-in for the fbr_outreq part of src/webhook.c, linked into the delivery
 * tests only while the webhook module is not in this tree (tests/meson.build checks).  Follows
 * webhook.h: with no webhook, content_type, header_names (array and strings) and headers are
 * owned by the outreq.
 */
#include <stdlib.h>
#include <string.h>

#include "firebridge/webhook.h"

void fbr_outreq_init(struct fbr_outreq *o)
{
    memset(o, 0, sizeof(*o));
    fbr_render_init(&o->url);
    fbr_render_init(&o->body);
    fbr_render_init(&o->rate_key);
}

void fbr_outreq_free(struct fbr_outreq *o)
{
    fbr_render_free(&o->url);
    fbr_render_free(&o->body);
    fbr_render_free(&o->rate_key);
    for (size_t i = 0; i < o->nheaders; i++) {
        free((char *)o->header_names[i]);
        fbr_render_free(&o->headers[i]);
    }
    free(o->header_names);
    free(o->headers);
    free(o->content_type);
    memset(o, 0, sizeof(*o));
}
