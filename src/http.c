/*
 * http.c - names and parser of the HTTP methods of http.h's table; shared by the inbound server
 * (route masks, Allow) and the outbound side (a webhook's method, a dead letter's method); and the
 * token rule of field names (a webhook's headers, the response reader's).
 */
#include "firebridge/http.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const struct {
    const char *name;
    unsigned bit;
} methods[] = {
#define FBR_X(name, i) {#name, FBR_M_##name},
    FBR_HTTP_METHOD_MAP(FBR_X)
#undef FBR_X
};

#define NMETHODS (sizeof(methods) / sizeof(methods[0]))

const char *fbr_http_method_name(unsigned bit)
{
    for (size_t i = 0; i < NMETHODS; i++)
        if (methods[i].bit == bit)
            return methods[i].name;
    return NULL;
}

int fbr_http_token(const char *s, size_t len)
{
    if (!len)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr("!#$%&'*+-.^_`|~", c))))
            return 0;
    }
    return 1;
}

unsigned fbr_http_method_parse(const char *s, size_t len, int nocase)
{
    for (size_t i = 0; i < NMETHODS; i++) {
        const char *n = methods[i].name;
        if (strlen(n) == len &&
            (nocase ? strncasecmp(n, s, len) == 0 : memcmp(n, s, len) == 0))
            return methods[i].bit;
    }
    return 0;
}

void fbr_http_method_list(unsigned mask, char *buf, size_t len)
{
    size_t pos = 0;
    if (!len)
        return;
    buf[0] = '\0';
    for (size_t i = 0; i < NMETHODS && pos < len; i++)
        if (mask & methods[i].bit)
            pos += (size_t)snprintf(buf + pos, len - pos, "%s%s", pos ? ", " : "",
                                    methods[i].name);
}
