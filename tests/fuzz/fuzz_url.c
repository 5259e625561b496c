/*
 * fuzz_url.c - libFuzzer target for the one URL parser (url.c).  Arbitrary bytes go through
 * fbr_url_split(), fbr_url_parse(), fbr_url_parse_head() at every complete/incomplete setting and
 * the log masker.  It checks url.h's promises: every slice lies inside the input and in order,
 * a refusal always names a reason, an accepted URL has an http(s) scheme, a host of at most 253
 * bytes, a port 1-65535 and no userinfo, the head check never contradicts the full parse, and
 * the masker never writes past its buffer.  Nothing here may abort() except a broken promise.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/log.h"
#include "firebridge/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_slice(struct fbr_slice s, const char *in, size_t n)
{
    if (s.ptr && (s.ptr < in || s.ptr + s.len > in + n))
        abort();
    if (!s.ptr && s.len)
        abort();
}

static void check_parts(const struct fbr_url *u, const char *in, size_t n)
{
    const struct fbr_slice parts[] = {u->scheme, u->authority, u->userinfo, u->host,
                                      u->port,   u->path,      u->query,    u->fragment};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        check_slice(parts[i], in, n);
    if (u->query.ptr && u->path.ptr && u->query.ptr < u->path.ptr + u->path.len)
        abort();
    if (u->fragment.ptr && u->query.ptr && u->fragment.ptr < u->query.ptr + u->query.len)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    struct fbr_url u;
    const char *why = NULL;

    fbr_url_split(in, size, &u);
    check_parts(&u, in, size);

    int rc = fbr_url_parse(in, size, &u, &why);
    if (rc == FBR_OK) {
        check_parts(&u, in, size);
        if (!u.scheme.ptr || !u.host.len || u.host.len > FBR_URL_HOST_MAX || u.userinfo.ptr)
            abort();
        if (u.port_num < 1 || u.port_num > 65535 || u.tls != (u.scheme.len == 5))
            abort();
        if (!fbr_url_bytes_ok(in, size))
            abort();
        struct fbr_slice t = fbr_url_target(&u);
        check_slice(t, in, size);
    } else if (rc != FBR_INVALID || !why || !*why) {
        abort();
    }

    /* the head check agrees with the full parse on the same bytes */
    struct fbr_url h;
    const char *hwhy = NULL;
    int hrc = fbr_url_parse_head(in, size, 1, &h, &hwhy);
    if (fbr_url_bytes_ok(in, size) && hrc != rc)
        abort();
    for (size_t cut = 0; cut <= size && cut < 64; cut++) {
        int prc = fbr_url_parse_head(in, cut, 0, &h, &hwhy);
        if (prc != FBR_OK && prc != FBR_INVALID && prc != FBR_AGAIN)
            abort();
        /* a verdict on a prefix whose authority is complete holds for the whole URL */
        if (fbr_url_bytes_ok(in, size) && prc != FBR_AGAIN && prc != rc)
            abort();
    }

    char out[64];
    fbr_log_mask_url(in, size, out, sizeof(out));
    if (memchr(out, 0, sizeof(out)) == NULL)
        abort();
    return 0;
}
