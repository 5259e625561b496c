/*
 * stub_template.c - stand-in for the render-buffer part of src/template.c, linked into the
 * delivery tests only while the template engine is not in this tree (tests/meson.build checks).
 * One private copy per render, which is all the delivery tests need.
 */
#include <stdlib.h>
#include <string.h>

#include "firebridge/template.h"

void fbr_render_init(struct fbr_render *r)
{
    memset(r, 0, sizeof(*r));
}

void fbr_render_reset(struct fbr_render *r)
{
    free(r->priv);
    r->priv = NULL;
    r->niov = 0;
    r->total = 0;
}

void fbr_render_free(struct fbr_render *r)
{
    free(r->priv);
    free(r->iov);
    memset(r, 0, sizeof(*r));
}

void fbr_render_set_copy(struct fbr_render *r, const char *src, size_t len)
{
    fbr_render_reset(r);
    if (!r->iov) {
        r->iov = fbr_xcalloc(1, sizeof(*r->iov));
        r->iov_cap = 1;
    }
    r->priv = fbr_xmalloc(len + 1);
    memcpy(r->priv, src, len);
    r->iov[0].iov_base = r->priv;
    r->iov[0].iov_len = len;
    r->niov = 1;
    r->total = len;
}
